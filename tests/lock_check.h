/*
 * lock_check.h — what the Maildir tests share to stand in for Dovecot holding a folder's
 * uidlist lock: dovecot-uidlist.lock written as another live process (the test's
 * parent) holds it, so the daemon's code neither takes it nor breaks it as stale.
 * Include after <cmocka.h>.
 */
#ifndef MM_TESTS_LOCK_CHECK_H
#define MM_TESTS_LOCK_CHECK_H

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

/* Creates folder_dir/dovecot-uidlist.lock (it must not exist); its path in path_r. */
static void foreign_uidlist_lock(const char *folder_dir, char *path_r, size_t len)
{
	char who[64];
	assert_true((size_t)snprintf(path_r, len, "%s/dovecot-uidlist.lock", folder_dir) < len);
	int fd = open(path_r, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	int wn = snprintf(who, sizeof who, "%ld:mailmesh\n", (long)getppid());
	assert_int_equal(write(fd, who, (size_t)wn), wn);
	close(fd);
}

#endif
