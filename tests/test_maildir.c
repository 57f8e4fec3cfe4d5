/*
 * test_maildir.c — Maildir primitives (node/maildir.c) and mail_location templates
 * (node/mailloc.c) on real files in a temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/lock_check.h"

#include "node/maildir.h"
#include "node/mailloc.h"

#include <errno.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[256];

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st; (void)flag; (void)f;
	return remove(p);
}

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof tmpdir, "/tmp/mm-test-maildir-XXXXXX");
	assert_non_null(mkdtemp(tmpdir));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

static void write_file(const char *path, const char *content)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	static char buf[8192];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	buf[n] = 0;
	fclose(f);
	return buf;
}

static void test_name_parse(void **state)
{
	(void)state;
	struct mm_md_name n;
	assert_int_equal(mm_md_name_parse("1035478339.27041_118.foo.org,S=1000,W=1030:2,S", &n), 0);
	assert_int_equal(n.base_len, strlen("1035478339.27041_118.foo.org,S=1000,W=1030"));
	assert_true(n.has_size);
	assert_int_equal(n.size, 1000);
	assert_true(n.has_vsize);
	assert_int_equal(n.vsize, 1030);
	assert_true(n.has_info);
	assert_int_equal(n.letters, MM_MD_UPPER('S'));
	assert_int_equal(mm_md_letters_to_flags(n.letters), 1u << 4);

	/* no info, no size: a file in new/ */
	assert_int_equal(mm_md_name_parse("1700000000.M1P2.host", &n), 0);
	assert_false(n.has_info);
	assert_false(n.has_size);
	assert_false(n.has_vsize);
	assert_int_equal(n.base_len, strlen("1700000000.M1P2.host"));

	/* escaped hostname: the ':' inside is \072, so the first real ':' is the info */
	const char *esc = "1700000000.M1P2.my\\057host\\072x,S=12:2,FRab";
	assert_int_equal(mm_md_name_parse(esc, &n), 0);
	assert_int_equal(n.size, 12);
	assert_int_equal(n.letters, MM_MD_UPPER('F') | MM_MD_UPPER('R') | MM_MD_LOWER('a') | MM_MD_LOWER('b'));
	char un[256];
	assert_int_equal(mm_md_unescape(n.base, n.base_len, un, sizeof un),
	                 (int)strlen("1700000000.M1P2.my/host:x,S=12"));
	assert_string_equal(un, "1700000000.M1P2.my/host:x,S=12");

	/* empty info ":2," */
	assert_int_equal(mm_md_name_parse("abc:2,", &n), 0);
	assert_true(n.has_info);
	assert_int_equal(n.letters, 0);

	/* S= not a number: ignored, W= still read */
	assert_int_equal(mm_md_name_parse("abc,S=x,W=5", &n), 0);
	assert_false(n.has_size);
	assert_true(n.has_vsize);
	assert_int_equal(n.vsize, 5);
}

static void test_name_odd(void **state)
{
	(void)state;
	struct mm_md_name n;
	assert_int_equal(mm_md_name_parse("", &n), -EINVAL);
	assert_int_equal(mm_md_name_parse(".hidden", &n), -EINVAL);
	assert_int_equal(mm_md_name_parse("a/b", &n), -EINVAL);
	assert_int_equal(mm_md_name_parse(":2,S", &n), -EINVAL);
	/* names Dovecot shows as messages (maildir_filename_flags_get: the info after the
	 * last ':', flags after "2," up to another ',', unknown characters ignored), with
	 * the flags it shows */
	assert_int_equal(mm_md_name_parse("abc:1,S", &n), 0);
	assert_int_equal(n.base_len, 3);
	assert_false(n.has_info);
	assert_int_equal(n.letters, 0);
	assert_int_equal(mm_md_name_parse("abc:2,S1", &n), 0);
	assert_true(n.has_info);
	assert_int_equal(n.letters, MM_MD_UPPER('S'));
	assert_int_equal(mm_md_name_parse("abc:2,S:", &n), 0);
	assert_int_equal(n.base_len, 3);
	assert_int_equal(n.letters, 0);
	assert_int_equal(mm_md_name_parse("abc,S=5:2,FS,Xtra", &n), 0);
	assert_int_equal(n.base_len, strlen("abc,S=5"));
	assert_true(n.has_info);
	assert_int_equal(n.letters, MM_MD_UPPER('F') | MM_MD_UPPER('S'));
	assert_int_equal(n.size, 5);
	/* a control character is still a message name (a file indexed so must not be
	 * taken for gone); mm_md_uidlist_add refuses to list it (test_uidlist_index) */
	assert_int_equal(mm_md_name_parse("1700000000.M1P2.ho\tst,S=5:2,S", &n), 0);
	assert_int_equal(n.base_len, strlen("1700000000.M1P2.ho\tst,S=5"));
	char big[400];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = 0;
	assert_int_equal(mm_md_name_parse(big, &n), -EINVAL);
	/* a huge S= value saturates to a parse failure, not an overflow */
	assert_int_equal(mm_md_name_parse("a,S=99999999999999999999999", &n), 0);
	assert_false(n.has_size);
}

static void test_name_format_order(void **state)
{
	(void)state;
	char buf[300];
	/* flags given in any order come out in ASCII order: uppercase, then keywords */
	uint64_t l = MM_MD_UPPER('T') | MM_MD_UPPER('D') | MM_MD_UPPER('S') | MM_MD_LOWER('c') |
	             MM_MD_LOWER('a') | MM_MD_UPPER('F');
	assert_int_equal(mm_md_name_format(buf, sizeof buf, "base,S=3", 8, l, false),
	                 (int)strlen("base,S=3:2,DFSTac"));
	assert_string_equal(buf, "base,S=3:2,DFSTac");
	assert_int_equal(mm_md_name_format(buf, sizeof buf, "b", 1, 0, false), 1);
	assert_string_equal(buf, "b");
	assert_int_equal(mm_md_name_format(buf, sizeof buf, "b", 1, 0, true), 4);
	assert_string_equal(buf, "b:2,");
	assert_int_equal(mm_md_name_format(buf, 4, "b", 1, 0, true), -ENAMETOOLONG);
	/* round trip of every system flag combination */
	for (unsigned f = 0; f < 64; f++) {
		uint64_t lt = mm_md_flags_to_letters(f);
		assert_true(mm_md_name_format(buf, sizeof buf, "x", 1, lt, true) > 0);
		struct mm_md_name n;
		assert_int_equal(mm_md_name_parse(buf, &n), 0);
		assert_int_equal(mm_md_letters_to_flags(n.letters), f);
	}
	assert_int_equal(mm_md_flags_to_letters(1u << 0 | 1u << 5), MM_MD_UPPER('D') | MM_MD_UPPER('T'));
}

static void test_keywords(void **state)
{
	(void)state;
	char p[512];
	struct mm_md_keywords kw;
	/* missing file: empty table */
	assert_int_equal(mm_md_keywords_read(tmpdir, &kw), 0);
	for (int i = 0; i < MM_MD_KEYWORDS_MAX; i++)
		assert_null(kw.names[i]);
	/* Dovecot's format, with junk lines that must be skipped */
	snprintf(p, sizeof p, "%s/dovecot-keywords", tmpdir);
	write_file(p, "0 $Junk\n2 work\nx bad\n30 toolarge\n1\n3 two words\n");
	assert_int_equal(mm_md_keywords_read(tmpdir, &kw), 0);
	assert_string_equal(kw.names[0], "$Junk");
	assert_null(kw.names[1]);
	assert_string_equal(kw.names[2], "work");
	assert_null(kw.names[3]); /* a name with a space is not one */
	assert_int_equal(mm_md_keywords_find(&kw, "work"), 2);
	assert_int_equal(mm_md_keywords_find(&kw, "none"), -1);
	/* adding takes the first free index, writes the file, keeps the others */
	assert_int_equal(mm_md_keywords_add(tmpdir, &kw, "home", 0), 1);
	assert_int_equal(mm_md_keywords_add(tmpdir, &kw, "home", 0), 1);
	assert_int_equal(mm_md_keywords_add(tmpdir, &kw, "bad name", 0), -EINVAL);
	mm_md_keywords_clear(&kw);
	assert_int_equal(mm_md_keywords_read(tmpdir, &kw), 0);
	assert_string_equal(kw.names[1], "home");
	assert_string_equal(kw.names[2], "work");
	/* no lock files left behind */
	snprintf(p, sizeof p, "%s/dovecot-uidlist.lock", tmpdir);
	assert_int_equal(access(p, F_OK), -1);
	snprintf(p, sizeof p, "%s/dovecot-keywords.lock", tmpdir);
	assert_int_equal(access(p, F_OK), -1);
	/* a keywords lock left by a writer killed a moment ago (under the uidlist lock,
	 * which we now hold, nobody else may be writing): broken, the add goes through */
	write_file(p, "0 half written\n");
	assert_int_equal(mm_md_keywords_add(tmpdir, &kw, "after-crash", 0), 3);
	assert_int_equal(access(p, F_OK), -1);
	/* another writer added one behind our back: add re-reads under the lock */
	snprintf(p, sizeof p, "%s/dovecot-keywords", tmpdir);
	write_file(p, "0 $Junk\n1 home\n2 work\n3 after-crash\n4 other\n");
	assert_int_equal(mm_md_keywords_add(tmpdir, &kw, "new", 1u << 5), 6); /* f: unnamed on a file */
	assert_int_equal(mm_md_keywords_add(tmpdir, &kw, "newer", 0), 5);
	assert_string_equal(kw.names[4], "other");
	/* fill all 26 letters, then the 27th does not fit */
	char name[16];
	for (int i = 0; i < 30; i++) {
		snprintf(name, sizeof name, "k%d", i);
		int r = mm_md_keywords_add(tmpdir, &kw, name, 0);
		if (i < 19)
			assert_true(r >= 7 && r < 26);
		else
			assert_int_equal(r, -ENOSPC);
	}
	/* a uidlist lock another live process holds makes a take wait then give up
	 * (this process's own lock is re-entrant: test_store) */
	{
		char lp[512];
		foreign_uidlist_lock(tmpdir, lp, sizeof lp);
		assert_int_equal(mm_md_uidlist_lock(tmpdir, 20), -EAGAIN);
		assert_int_equal(unlink(lp), 0);
	}
	/* a lock whose holder died (kill -9) is taken over at once, ours or Dovecot's
	 * ("PID:HOSTNAME"); one of a live process, or of another host, is not */
	pid_t dead = fork();
	assert_true(dead >= 0);
	if (dead == 0)
		_exit(0);
	assert_int_equal(waitpid(dead, NULL, 0), dead);
	char lp[600], host[128] = "";
	snprintf(lp, sizeof lp, "%s/dovecot-uidlist.lock", tmpdir);
	assert_int_equal(gethostname(host, sizeof host - 1), 0);
	const char *forms[] = { "%ld:mailmesh\n", "%ld:%s" };
	for (int i = 0; i < 2; i++) {
		FILE *f = fopen(lp, "w");
		assert_non_null(f);
		fprintf(f, forms[i], (long)dead, host);
		fclose(f);
		assert_int_equal(mm_md_uidlist_lock(tmpdir, 0), 0);
		mm_md_uidlist_unlock(tmpdir);
	}
	FILE *f = fopen(lp, "w");
	assert_non_null(f);
	fprintf(f, "%ld:mailmesh\n", (long)getpid());
	fclose(f);
	assert_int_equal(mm_md_uidlist_lock(tmpdir, 20), -EAGAIN);
	assert_non_null(f = fopen(lp, "w"));
	fprintf(f, "%ld:some-other-host.example", (long)dead);
	fclose(f);
	assert_int_equal(mm_md_uidlist_lock(tmpdir, 20), -EAGAIN);
	unlink(lp);
	mm_md_keywords_clear(&kw);
}

/* Dovecot caches dovecot-keywords by its whole-second mtime (maildir-keywords.c,
 * maildir_keywords_sync: "st.st_mtime == mk->synced_mtime -> hasn't changed"), so
 * every writer must make that mtime grow (maildir_keywords_write_fd: "mtime must grow
 * every time").  A second add within the second Dovecot read the file in was never
 * seen by that Dovecot process: it took the new letter for a lost name and wrote
 * "unknown-N" over ours (checked with Dovecot 2.3.19). */
static void test_keywords_mtime_grows(void **state)
{
	(void)state;
	char p[512];
	snprintf(p, sizeof p, "%s/dovecot-keywords", tmpdir);
	write_file(p, "0 one\n");
	/* the mtime Dovecot may have read (or set itself, a second ahead when it bumps) */
	time_t t = time(NULL) + 100;
	struct timespec ts[2] = {{t, 0}, {t, 0}};
	assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
	struct mm_md_keywords kw;
	assert_int_equal(mm_md_keywords_read(tmpdir, &kw), 0);
	assert_int_equal(mm_md_keywords_add(tmpdir, &kw, "two", 0), 1);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_true(st.st_mtime > t);
	/* and an add in the same second as the last one grows it again */
	time_t t2 = st.st_mtime;
	assert_int_equal(mm_md_keywords_add(tmpdir, &kw, "three", 0), 2);
	assert_int_equal(stat(p, &st), 0);
	assert_true(st.st_mtime > t2);
	mm_md_keywords_clear(&kw);
}

/* Dovecot judges a dotlock's holder dead at once only when the lock reads
 * "PID:HOSTNAME" with its own hostname (lib/file-dotlock.c, read_local_pid: "host must
 * be ours"); any other text is waited on until the lock is stale (120 s for
 * dovecot-uidlist.lock).  A lock a killed mailmesh left as "PID:mailmesh" held every
 * IMAP session of that folder for up to two minutes (checked with Dovecot 2.3.19). */
static void test_lock_names_host(void **state)
{
	(void)state;
	char lp[600], host[256] = "", want[300];
	assert_int_equal(gethostname(host, sizeof host - 1), 0);
	snprintf(want, sizeof want, "%ld:%s\n", (long)getpid(), host);
	assert_int_equal(mm_md_uidlist_lock(tmpdir, 0), 0);
	snprintf(lp, sizeof lp, "%s/dovecot-uidlist.lock", tmpdir);
	const char *got = slurp(lp);
	assert_non_null(got);
	assert_string_equal(got, want);
	mm_md_uidlist_unlock(tmpdir);
	assert_int_equal(mm_md_subs_lock(tmpdir, 0), 0);
	snprintf(lp, sizeof lp, "%s/subscriptions.lock", tmpdir);
	assert_non_null(got = slurp(lp));
	assert_string_equal(got, want);
	mm_md_subs_unlock(tmpdir);
}

struct uidl {
	int n;
	uint32_t uids[8];
	char bases[8][64];
};

static int uid_cb(void *arg, uint32_t uid, const char *base, size_t len)
{
	struct uidl *u = arg;
	u->uids[u->n] = uid;
	snprintf(u->bases[u->n], 64, "%.*s", (int)len, base);
	u->n++;
	return 0;
}

static void test_uidlist(void **state)
{
	(void)state;
	char p[512];
	struct uidl u = {0};
	assert_int_equal(mm_md_uidlist_read(tmpdir, uid_cb, &u), 0);
	assert_int_equal(u.n, 0);
	snprintf(p, sizeof p, "%s/dovecot-uidlist", tmpdir);
	write_file(p, "3 V1700000000 N5 G0123456789abcdef\n"
	              "1 :1700000000.M1P2.host,S=10\n"
	              "2 W120 :1700000001.M1P2.host,S=110:2,S\n"
	              "junk line\n"
	              "0 :zero\n"
	              "4 W5 S4 :1700000002.x\n");
	assert_int_equal(mm_md_uidlist_read(tmpdir, uid_cb, &u), 0);
	assert_int_equal(u.n, 3);
	assert_int_equal(u.uids[0], 1);
	assert_string_equal(u.bases[0], "1700000000.M1P2.host,S=10");
	assert_int_equal(u.uids[1], 2);
	assert_string_equal(u.bases[1], "1700000001.M1P2.host,S=110");
	assert_int_equal(u.uids[2], 4);
	assert_string_equal(u.bases[2], "1700000002.x");
}

static void test_deliver_mtime(void **state)
{
	(void)state;
	char p[512];
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(tmpdir, "INBOX", &o), 0);
	assert_true(mm_md_is_maildir(tmpdir));
	const char *body = "Subject: hi\r\n\r\nhello\r\n";
	assert_int_equal(mm_md_deliver(tmpdir, "1600000000.M5P6.h,S=22", body, strlen(body),
	                               1600000000, "cur", "1600000000.M5P6.h,S=22:2,S", &o), 0);
	snprintf(p, sizeof p, "%s/cur/1600000000.M5P6.h,S=22:2,S", tmpdir);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mtime, 1600000000);
	assert_int_equal(st.st_size, (off_t)strlen(body));
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_string_equal(slurp(p), body);
	/* tmp/ is empty again */
	snprintf(p, sizeof p, "%s/tmp/1600000000.M5P6.h,S=22", tmpdir);
	assert_int_equal(access(p, F_OK), -1);
	/* never replaces an existing name */
	assert_int_equal(mm_md_deliver(tmpdir, "other", "x", 1, 1, "cur",
	                               "1600000000.M5P6.h,S=22:2,S", &o), -EEXIST);
	snprintf(p, sizeof p, "%s/cur/1600000000.M5P6.h,S=22:2,S", tmpdir);
	assert_string_equal(slurp(p), body);
	snprintf(p, sizeof p, "%s/tmp/other", tmpdir);
	assert_int_equal(access(p, F_OK), -1);
	/* rename for a flag change, then unlink */
	assert_int_equal(mm_md_rename(tmpdir, "cur", "1600000000.M5P6.h,S=22:2,S", "cur",
	                              "1600000000.M5P6.h,S=22:2,FS"), 0);
	snprintf(p, sizeof p, "%s/cur/1600000000.M5P6.h,S=22:2,FS", tmpdir);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mtime, 1600000000); /* rename keeps INTERNALDATE */
	assert_int_equal(mm_md_rename(tmpdir, "cur", "gone", "cur", "x"), -ENOENT);
	assert_int_equal(mm_md_unlink(tmpdir, "cur", "1600000000.M5P6.h,S=22:2,FS"), 0);
	assert_int_equal(mm_md_unlink(tmpdir, "cur", "1600000000.M5P6.h,S=22:2,FS"), -ENOENT);
}

struct names {
	int n;
	char v[8][64];
};

static int name_cb(void *arg, const char *folder)
{
	struct names *nm = arg;
	if (nm->n < 8)
		snprintf(nm->v[nm->n++], 64, "%s", folder);
	return 0;
}

static bool has_name(const struct names *nm, const char *s)
{
	for (int i = 0; i < nm->n; i++)
		if (!strcmp(nm->v[i], s))
			return true;
	return false;
}

/* The name index of a large list: every lookup right after adds and removes in any
 * order, and after a save and load. */
static void test_uidlist_index(void **state)
{
	(void)state;
	struct mm_md_uidlist ul;
	memset(&ul, 0, sizeof ul);
	ul.next_uid = 1;
	ul.uidvalidity = 7;
	char name[64];
	for (uint32_t i = 1; i <= 3000; i++) {
		uint32_t uid = (i * 7919u) % 3001u; /* all of 1..3000, out of order */
		snprintf(name, sizeof name, "%u.M%uP1.host:2,S", 1700000000u + uid, uid);
		assert_int_equal(mm_md_uidlist_add(&ul, uid, name), 0);
	}
	for (uint32_t uid = 2; uid <= 3000; uid += 2)
		mm_md_uidlist_remove(&ul, uid);
	for (uint32_t uid = 1; uid <= 3000; uid++) {
		snprintf(name, sizeof name, "%u.M%uP1.host", 1700000000u + uid, uid);
		assert_int_equal(mm_md_uidlist_find(&ul, name, strlen(name)), uid % 2 ? uid : 0);
	}
	/* a removed name can be listed again under a new UID */
	snprintf(name, sizeof name, "%u.M%uP1.host", 1700000000u + 4, 4u);
	assert_int_equal(mm_md_uidlist_add(&ul, 3001, name), 0);
	assert_int_equal(mm_md_uidlist_find(&ul, name, strlen(name)), 3001);
	char d[300];
	snprintf(d, sizeof d, "%s/idx", tmpdir);
	assert_int_equal(mkdir(d, 0700), 0);
	assert_int_equal(mm_md_uidlist_save(d, &ul), 0);
	mm_md_uidlist_clear(&ul);
	assert_int_equal(mm_md_uidlist_load(d, &ul), 0);
	assert_int_equal(ul.n, 1501);
	for (uint32_t uid = 1; uid <= 3000; uid += 2) {
		snprintf(name, sizeof name, "%u.M%uP1.host", 1700000000u + uid, uid);
		assert_int_equal(mm_md_uidlist_find(&ul, name, strlen(name)), uid);
	}
	/* many removed at once: UIDs not listed (even ones, 5000) and twice-given ones are
	 * ignored; order, lookups and NEXTUID stay right */
	uint32_t next = ul.next_uid, drop[] = {1, 1, 2, 7, 999, 1000, 2999, 3001, 5000};
	assert_int_equal(mm_md_uidlist_remove_many(&ul, drop, sizeof drop / sizeof drop[0]), 5);
	assert_int_equal(ul.n, 1496);
	assert_int_equal(ul.next_uid, next);
	for (size_t i = 1; i < ul.n; i++)
		assert_true(ul.v[i - 1].uid < ul.v[i].uid);
	for (uint32_t uid = 1; uid <= 3000; uid += 2) {
		snprintf(name, sizeof name, "%u.M%uP1.host", 1700000000u + uid, uid);
		bool gone = uid == 1 || uid == 7 || uid == 999 || uid == 2999;
		assert_int_equal(mm_md_uidlist_find(&ul, name, strlen(name)), gone ? 0 : uid);
	}
	snprintf(name, sizeof name, "%u.M%uP1.host", 1700000000u + 4, 4u);
	assert_int_equal(mm_md_uidlist_find(&ul, name, strlen(name)), 0);
	assert_int_equal(mm_md_uidlist_remove_many(&ul, drop, 0), 0);
	/* names that would not read back the same are refused; nothing changes */
	next = ul.next_uid;
	assert_int_equal(mm_md_uidlist_add(&ul, next, "1700000000.M9P9.host\r"), -EINVAL);
	assert_int_equal(mm_md_uidlist_add(&ul, next, "1700000000.M9P9.\nhost"), -EINVAL);
	assert_int_equal(mm_md_uidlist_add(&ul, next, ""), -EINVAL);
	assert_int_equal(ul.n, 1496);
	assert_int_equal(ul.next_uid, next);
	mm_md_uidlist_clear(&ul);
}

/* The text parsers behind the loads (fuzz_maildir feeds them any bytes): a damaged
 * dovecot-uidlist is told apart, and a good one formats back to the same text. */
static void test_uidlist_text(void **state)
{
	(void)state;
	struct mm_md_uidlist ul;
	char good[] = "3 V7 N10 Gabc\n1 W5 :a,S=5:2,S\n3 :b :c\n";
	assert_int_equal(mm_md_uidlist_parse(good, &ul), 0);
	assert_true(ul.exists);
	assert_int_equal(ul.uidvalidity, 7);
	assert_int_equal(ul.next_uid, 10);
	assert_string_equal(ul.hdr_rest, "Gabc");
	assert_int_equal(ul.n, 2);
	assert_string_equal(ul.v[0].ext, "W5");
	assert_string_equal(ul.v[0].name, "a,S=5:2,S");
	assert_int_equal(ul.v[0].base_len, 5);
	assert_string_equal(ul.v[1].ext, "");
	assert_string_equal(ul.v[1].name, "b :c");
	char *text;
	size_t len;
	assert_int_equal(mm_md_uidlist_format(&ul, &text, &len), 0);
	assert_string_equal(text, "3 V7 N10 Gabc\n1 W5 :a,S=5:2,S\n3 :b :c\n");
	assert_int_equal(len, strlen(text));
	free(text);
	mm_md_uidlist_clear(&ul);

	/* version 1 ("1 <uidvalidity> <nextuid>", then "<uid> <name>"), which Dovecot 2.3
	 * still reads (maildir-uidlist.c, maildir_uidlist_read_header "case 1") and keeps
	 * the UIDs of (checked with 2.3.19: UIDVALIDITY and UIDs as listed); taken for a
	 * damaged list, it gave the folder a new UIDVALIDITY on every node */
	char v1[] = "1 1100000000 9\n3 1600000000.M1P1.old:2,S\n7 1600000001.M2P1.old:2,\n";
	assert_int_equal(mm_md_uidlist_parse(v1, &ul), 0);
	assert_int_equal(ul.uidvalidity, 1100000000u);
	assert_int_equal(ul.next_uid, 9);
	assert_int_equal(ul.n, 2);
	assert_int_equal(mm_md_uidlist_find(&ul, "1600000000.M1P1.old", 19), 3);
	assert_int_equal(mm_md_uidlist_find(&ul, "1600000001.M2P1.old", 19), 7);
	assert_string_equal(ul.v[1].name, "1600000001.M2P1.old:2,");
	assert_string_equal(ul.v[1].ext, "");
	assert_int_equal(mm_md_uidlist_format(&ul, &text, &len), 0); /* written back as version 3 */
	assert_string_equal(text, "3 V1100000000 N9\n3 :1600000000.M1P1.old:2,S\n7 :1600000001.M2P1.old:2,\n");
	free(text);
	mm_md_uidlist_clear(&ul);
	{
		char v1b[] = "1 1100000000 9\n3 1600000000.M1P1.old:2,S\n7 1600000001.M2P1.old:2,\n";
		struct uidl u = {0};
		assert_int_equal(mm_md_uidlist_parse_each(v1b, uid_cb, &u), 0);
		assert_int_equal(u.n, 2);
		assert_int_equal(u.uids[1], 7);
		assert_string_equal(u.bases[1], "1600000001.M2P1.old");
	}

	const char *damaged[] = {
		"1 1100000000\n1 a\n",     /* version 1 without its NEXTUID */
		"3 V7 N10\n3 :b\n1 :a\n", /* out of UID order */
		"3 V7 N10\n5:x :y\n",     /* no space after the UID: it read back as "x :y" */
		"3 V7 N10\n0 :a\n",       /* UID 0 */
		"3 V7 N10\n4294967296 :a\n",
		"3 V7 N10\nfive :a\n",
		"3 V7 N10\n5 a\n",        /* no " :" before the name */
		"2 V7 N10\n1 :a\n",       /* another version */
		"3 Vx N10\n1 :a\n",
	};
	for (size_t i = 0; i < sizeof damaged / sizeof damaged[0]; i++) {
		char *t = strdup(damaged[i]);
		assert_non_null(t);
		assert_int_equal(mm_md_uidlist_parse(t, &ul), -EBADMSG);
		mm_md_uidlist_clear(&ul);
		free(t);
	}
	assert_int_equal(mm_md_uidlist_format(&ul, &text, &len), -EINVAL); /* no UIDVALIDITY */
	assert_null(text);
}

/* mm_md_unlink_keep: the file leaves the folder, kept at the path given; unlinked when
 * that path cannot be had; -ENOENT when the file is gone. */
static void test_unlink_keep(void **state)
{
	(void)state;
	char md[512], p[700], keep[700], nokeep[700];
	snprintf(md, sizeof md, "%s/dom/user", tmpdir);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(md, "INBOX", &o), 0);
	snprintf(p, sizeof p, "%s/cur/1700000000.M1P1.mx:2,S", md);
	write_file(p, "Subject: a\r\n\r\nbody\r\n");
	snprintf(keep, sizeof keep, "%s/tmp/mm-spare.1.1", md);
	assert_int_equal(mm_md_unlink_keep(md, "cur", "1700000000.M1P1.mx:2,S", keep), 1);
	assert_int_equal(access(p, F_OK), -1);
	assert_string_equal(slurp(keep), "Subject: a\r\n\r\nbody\r\n");
	write_file(p, "Subject: b\r\n\r\nbody\r\n");
	snprintf(nokeep, sizeof nokeep, "%s/no-such-dir/x", md);
	assert_int_equal(mm_md_unlink_keep(md, "cur", "1700000000.M1P1.mx:2,S", nokeep), 0);
	assert_int_equal(access(p, F_OK), -1);
	assert_int_equal(mm_md_unlink_keep(md, "cur", "1700000000.M1P1.mx:2,S", keep), -ENOENT);
	assert_int_equal(access(keep, F_OK), 0); /* what was kept stays */
}

static void test_folders(void **state)
{
	(void)state;
	char md[512], p[600], sub_gone[600];
	snprintf(md, sizeof md, "%s/dom/user", tmpdir);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0750, 0640};
	assert_int_equal(mm_md_folder_create(md, "Archive.2024", &o), 0);
	assert_int_equal(mm_md_folder_create(md, "INBOX", &o), 0);
	assert_int_equal(mm_md_folder_create(md, "Sent", &o), 0);
	assert_int_equal(mm_md_folder_create(md, "Sent", &o), 0); /* idempotent */
	assert_int_equal(mm_md_folder_create(md, "../x", &o), -EINVAL);
	assert_int_equal(mm_md_folder_create(md, ".x", &o), -EINVAL);
	snprintf(p, sizeof p, "%s/.Archive.2024/maildirfolder", md);
	assert_int_equal(access(p, F_OK), 0);
	struct stat st;
	snprintf(p, sizeof p, "%s/.Sent/cur", md);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0750);
	/* a dot-directory that is not a Maildir is not a folder */
	snprintf(p, sizeof p, "%s/.notes", md);
	assert_int_equal(mkdir(p, 0700), 0);
	/* nor a folder Dovecot is deleting (renamed to ..DOVECOT-TRASHED, or
	 * .DOVECOT-TRASHED before Dovecot 2.0), whole as it is */
	assert_int_equal(mm_md_folder_create(md, "DOVECOT-TRASHED", &o), 0);
	char trashed[600];
	snprintf(trashed, sizeof trashed, "%s/..DOVECOT-TRASHED", md);
	assert_int_equal(mm_md_folder_create(md, "Gone", &o), 0);
	snprintf(sub_gone, sizeof sub_gone, "%s/.Gone", md);
	assert_int_equal(rename(sub_gone, trashed), 0);
	snprintf(p, sizeof p, "%s/.notes", md);
	struct names nm = {0};
	assert_int_equal(mm_md_folder_list(md, name_cb, &nm), 0);
	assert_int_equal(nm.n, 3);
	assert_true(has_name(&nm, "INBOX"));
	assert_true(has_name(&nm, "Sent"));
	assert_true(has_name(&nm, "Archive.2024"));
	/* removal: refused while a message is there, done when only Dovecot files remain */
	struct mm_md_owner o2 = o;
	assert_int_equal(mm_md_deliver(p, "b", "x", 1, 5, "new", "b", &o2), -ENOENT);
	snprintf(p, sizeof p, "%s/.Sent", md);
	assert_int_equal(mm_md_deliver(p, "b", "x", 1, 5, "new", "b", &o2), 0);
	/* a Maildir that lost tmp/ and cur/ (removed by hand mid-way): restored, not refused */
	char sub[4096];
	snprintf(sub, sizeof sub, "%s/tmp", p);
	assert_int_equal(rmdir(sub), 0);
	snprintf(sub, sizeof sub, "%s/cur", p);
	assert_int_equal(rmdir(sub), 0);
	assert_int_equal(mm_md_deliver(p, "c", "y", 1, 5, "cur", "c:2,S", &o2), 0);
	snprintf(sub, sizeof sub, "%s/tmp", p);
	assert_int_equal(access(sub, F_OK), 0);
	assert_int_equal(mm_md_unlink(p, "cur", "c:2,S"), 0);
	assert_int_equal(mm_md_folder_remove(md, "Sent"), -ENOTEMPTY);
	assert_int_equal(access(p, F_OK), 0);
	assert_int_equal(mm_md_unlink(p, "new", "b"), 0);
	snprintf(p, sizeof p, "%s/.Sent/dovecot.index.log", md);
	write_file(p, "x");
	snprintf(p, sizeof p, "%s/.Sent/notes.txt", md);
	write_file(p, "user data");
	assert_int_equal(mm_md_folder_remove(md, "Sent"), -ENOTEMPTY);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(mm_md_folder_remove(md, "Sent"), 0);
	snprintf(p, sizeof p, "%s/.Sent", md);
	assert_int_equal(access(p, F_OK), -1);
	assert_int_equal(mm_md_folder_remove(md, "Sent"), 0);
	assert_int_equal(mm_md_folder_remove(md, "INBOX"), -EINVAL);
}

/* A removed user's whole Maildir: refused (nothing removed, the first thing in the
 * way named) while it holds a message, a folder or a file of its own, removed once
 * only Dovecot's and mailmesh's files are left. */
static void test_maildir_remove(void **state)
{
	(void)state;
	char md[512], p[600], left[64];
	snprintf(md, sizeof md, "%s/user", tmpdir);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(md, "INBOX", &o), 0);
	assert_int_equal(mm_md_folder_create(md, "Sent", &o), 0);
	assert_int_equal(mm_md_deliver(md, "a", "x", 1, 5, "new", "a", &o), 0);
	assert_int_equal(mm_md_maildir_remove(md, left, sizeof left), -ENOTEMPTY);
	assert_string_equal(left, "new/");
	assert_int_equal(mm_md_unlink(md, "new", "a"), 0);
	assert_int_equal(mm_md_maildir_remove(md, left, sizeof left), -ENOTEMPTY);
	assert_string_equal(left, ".Sent");
	assert_int_equal(mm_md_folder_remove(md, "Sent"), 0);
	const char *const own[] = {"dovecot-uidlist", "dovecot.index.log", "dovecot-keywords", "subscriptions",
	                           "maildirsize"};
	for (size_t i = 0; i < sizeof own / sizeof *own; i++) {
		snprintf(p, sizeof p, "%s/%s", md, own[i]);
		write_file(p, "x");
	}
	snprintf(p, sizeof p, "%s/.dovecot.sieve", md);
	write_file(p, "keep;");
	assert_int_equal(mm_md_maildir_remove(md, left, sizeof left), -ENOTEMPTY);
	assert_string_equal(left, ".dovecot.sieve");
	snprintf(p, sizeof p, "%s/dovecot-uidlist", md);
	assert_int_equal(access(p, F_OK), 0); /* nothing removed */
	snprintf(p, sizeof p, "%s/.dovecot.sieve", md);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(mm_md_maildir_remove(md, NULL, 0), 0);
	assert_int_equal(access(md, F_OK), -1);
	assert_int_equal(mm_md_maildir_remove(md, left, sizeof left), 0); /* gone already */
	write_file(md, "a file");
	assert_int_equal(mm_md_maildir_remove(md, left, sizeof left), -ENOTDIR);
	assert_int_equal(unlink(md), 0);
}

static void test_subscriptions(void **state)
{
	(void)state;
	char p[512];
	struct names nm = {0};
	assert_int_equal(mm_md_subs_read(tmpdir, name_cb, &nm), 0);
	assert_int_equal(nm.n, 0);
	const char *names[] = {"INBOX", "Archive.2024", "Sent"};
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_subs_write(tmpdir, names, 3, &o), 0);
	snprintf(p, sizeof p, "%s/subscriptions", tmpdir);
	assert_string_equal(slurp(p), "V\t2\n\nINBOX\nArchive\t2024\nSent\n");
	assert_int_equal(mm_md_subs_read(tmpdir, name_cb, &nm), 0);
	assert_int_equal(nm.n, 3);
	assert_string_equal(nm.v[1], "Archive.2024");
	/* the old one-a-line format */
	write_file(p, "Sent\nDrafts\n");
	nm.n = 0;
	assert_int_equal(mm_md_subs_read(tmpdir, name_cb, &nm), 0);
	assert_int_equal(nm.n, 2);
	assert_string_equal(nm.v[1], "Drafts");
}

/* ---- mail_location ----------------------------------------------------------------- */

struct users {
	int n, dirs, odd;
	char v[8][256];
	char paths[8][512];
};

static int user_cb(void *arg, const char *user, const char *path)
{
	struct users *u = arg;
	snprintf(u->v[u->n], 256, "%s", user);
	snprintf(u->paths[u->n], 512, "%s", path);
	u->n++;
	return 0;
}

static int dir_cb(void *arg, const char *path)
{
	(void)path;
	((struct users *)arg)->dirs++;
	return 0;
}

static int odd_cb(void *arg, const char *path)
{
	(void)path;
	((struct users *)arg)->odd++;
	return 0;
}

static int find_user(const struct users *u, const char *name)
{
	for (int i = 0; i < u->n; i++)
		if (!strcmp(u->v[i], name))
			return i;
	return -1;
}

static void test_mailloc(void **state)
{
	(void)state;
	char err[256], t[512], buf[512], exp[512];
	struct mm_mailloc *loc;
	assert_int_equal(mm_mailloc_new(&loc, "maildir:relative/%n", err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "absolute"));
	assert_int_equal(mm_mailloc_new(&loc, "maildir:/var/mail/%d", err, sizeof err), -EINVAL);
	assert_int_equal(mm_mailloc_new(&loc, "mbox:/var/mail/%n", err, sizeof err), -EINVAL);
	assert_int_equal(mm_mailloc_new(&loc, "maildir:/var/%x/%n", err, sizeof err), -EINVAL);
	/* Dovecot's options: those that move what mailmesh reads are refused, by name */
	static const char *const refused[] = {
		"maildir:/m/%d/%n:CONTROL=/var/ctl/%u", "maildir:/m/%d/%n:INDEX=/i/%u:LAYOUT=fs",
		"maildir:/m/%d/%n:INBOX=/var/mail/%u", "maildir:/m/%d/%n:SUBSCRIPTIONS=subs",
		"maildir:/m/%d/%n:DIRNAME=mail", "maildir:/m/%d/%n:MAILBOXDIR=folders", "maildir:/m/%d/%n:FOO=1",
		"maildir:/m/%d/%n:INDEX=/i::x:ALT=/alt", "maildir:/m/%d/%n:layout=fs",
		"maildir:/m/%d/%n:INDEX=/i/%u:ITERINDEX"};
	static const char *const named[] = {"CONTROL=", "LAYOUT=fs", "INBOX=", "SUBSCRIPTIONS=", "DIRNAME=",
	                                    "MAILBOXDIR=", "unknown option 'FOO'", "ALT=", "unknown option 'layout'",
	                                    "ITERINDEX= is not supported"};
	for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
		assert_int_equal(mm_mailloc_new(&loc, refused[i], err, sizeof err), -EINVAL);
		if (!strstr(err, named[i]))
			fail_msg("%s: %s", refused[i], err);
	}
	static const char *const accepted[] = {
		"maildir:/m/%d/%n:INDEX=/var/idx/%u", "maildir:/m/%d/%n:LAYOUT=maildir++:VOLATILEDIR=/v/%u",
		"maildir:/m/%d/%n:INDEX=MEMORY:NO-NOSELECT:UTF-8:", "maildir:/m/%d/%n:INDEX=/a::b:BROKENCHAR=~",
		"maildir:/m/%d/%n:INDEX=/i/%u:INDEXCACHE=/c/%u",
		"/m/%d/%n:LAYOUT=Maildir++", "maildir:/var/vmail/%Ld/%Ln"};
	for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++) {
		if (mm_mailloc_new(&loc, accepted[i], err, sizeof err) != 0)
			fail_msg("%s: %s", accepted[i], err);
		mm_mailloc_free(&loc);
	}

	assert_int_equal(mm_mailloc_new(&loc, "maildir:/var/%Lx/%n", err, sizeof err), -EINVAL);
	snprintf(t, sizeof t, "maildir:%s/vhosts/%%Ld/%%Ln:LAYOUT=maildir++", tmpdir);
	assert_int_equal(mm_mailloc_new(&loc, t, err, sizeof err), 0);
	assert_true(mm_mailloc_expand(loc, "example.com/alice", buf, sizeof buf) > 0);
	snprintf(exp, sizeof exp, "%s/vhosts/example.com/alice", tmpdir);
	assert_string_equal(buf, exp);
	assert_int_equal(mm_mailloc_expand(loc, "alice", buf, sizeof buf), -EINVAL);
	assert_int_equal(mm_mailloc_expand(loc, "../alice", buf, sizeof buf), -EINVAL);
	assert_int_equal(mm_mailloc_expand(loc, "ex/a/b", buf, sizeof buf), -EINVAL);
	assert_int_equal(mm_mailloc_expand(loc, "ex/..", buf, sizeof buf), -EINVAL);
	assert_int_equal(mm_mailloc_expand(loc, "ex/alice", buf, 10), -ENAMETOOLONG);
	/* %Ld/%Ln: Dovecot looks in lowercase only, so no name with a capital is made */
	assert_int_equal(mm_mailloc_expand(loc, "example.com/Bob", buf, sizeof buf), -EINVAL);
	assert_int_equal(mm_mailloc_expand(loc, "Example.com/bob", buf, sizeof buf), -EINVAL);

	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	snprintf(buf, sizeof buf, "%s/vhosts/example.com/alice", tmpdir);
	assert_int_equal(mm_md_folder_create(buf, "INBOX", &o), 0);
	snprintf(buf, sizeof buf, "%s/vhosts/example.com/bob", tmpdir);
	assert_int_equal(mm_md_folder_create(buf, "INBOX", &o), 0);
	snprintf(buf, sizeof buf, "%s/vhosts/example.org/carol", tmpdir);
	assert_int_equal(mm_md_folder_create(buf, "INBOX", &o), 0);
	snprintf(buf, sizeof buf, "%s/vhosts/example.org/notamaildir", tmpdir);
	assert_int_equal(mkdir(buf, 0700), 0);
	snprintf(buf, sizeof buf, "%s/vhosts/example.org/file", tmpdir);
	write_file(buf, "x");
	snprintf(buf, sizeof buf, "%s/vhosts/example.org/Dave", tmpdir); /* not Dovecot's: %Ln */
	assert_int_equal(mm_md_folder_create(buf, "INBOX", &o), 0);
	struct users u = {0};
	assert_int_equal(mm_mailloc_walk(loc, user_cb, dir_cb, odd_cb, &u), 0);
	assert_int_equal(u.n, 3);
	assert_true(find_user(&u, "example.org/Dave") < 0);
	int i = find_user(&u, "example.com/alice");
	assert_true(i >= 0);
	snprintf(exp, sizeof exp, "%s/vhosts/example.com/alice", tmpdir);
	assert_string_equal(u.paths[i], exp);
	assert_true(find_user(&u, "example.com/bob") >= 0);
	assert_true(find_user(&u, "example.org/carol") >= 0);
	assert_int_equal(u.dirs, 3); /* vhosts, example.com, example.org */
	assert_int_equal(u.odd, 1); /* (Dave does not match %Ln: not a user, as any other name) */
	mm_mailloc_free(&loc);
	assert_null(loc);

	/* %u: user@domain in one component, with a fixed suffix */
	snprintf(t, sizeof t, "%s/u/%%u/Maildir", tmpdir);
	assert_int_equal(mm_mailloc_new(&loc, t, err, sizeof err), 0);
	assert_true(mm_mailloc_expand(loc, "ex.net/dave", buf, sizeof buf) > 0);
	snprintf(exp, sizeof exp, "%s/u/dave@ex.net/Maildir", tmpdir);
	assert_string_equal(buf, exp);
	assert_int_equal(mm_md_folder_create(buf, "INBOX", &o), 0);
	assert_true(mm_mailloc_expand(loc, "erin", buf, sizeof buf) > 0);
	assert_int_equal(mm_md_folder_create(buf, "INBOX", &o), 0);
	memset(&u, 0, sizeof u);
	assert_int_equal(mm_mailloc_walk(loc, user_cb, NULL, NULL, &u), 0);
	assert_int_equal(u.n, 2);
	assert_true(find_user(&u, "ex.net/dave") >= 0);
	assert_true(find_user(&u, "erin") >= 0);
	mm_mailloc_free(&loc);

	/* %n.%d in one component with a literal between: backtracking */
	snprintf(t, sizeof t, "%s/m/%%n-at-%%d", tmpdir);
	assert_int_equal(mm_mailloc_new(&loc, t, err, sizeof err), 0);
	snprintf(buf, sizeof buf, "%s/m/a-at-b-at-c", tmpdir);
	assert_int_equal(mm_md_folder_create(buf, "INBOX", &o), 0);
	memset(&u, 0, sizeof u);
	assert_int_equal(mm_mailloc_walk(loc, user_cb, NULL, NULL, &u), 0);
	assert_int_equal(u.n, 1);
	assert_true(find_user(&u, "b-at-c/a") >= 0 || find_user(&u, "c/a-at-b") >= 0);
	mm_mailloc_free(&loc);
	mm_mailloc_free(&loc); /* NULL-safe */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_name_parse),
		cmocka_unit_test(test_name_odd),
		cmocka_unit_test(test_name_format_order),
		cmocka_unit_test_setup_teardown(test_keywords, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keywords_mtime_grows, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_names_host, setup, teardown),
		cmocka_unit_test_setup_teardown(test_uidlist, setup, teardown),
		cmocka_unit_test_setup_teardown(test_uidlist_index, setup, teardown),
		cmocka_unit_test(test_uidlist_text),
		cmocka_unit_test_setup_teardown(test_deliver_mtime, setup, teardown),
		cmocka_unit_test_setup_teardown(test_folders, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unlink_keep, setup, teardown),
		cmocka_unit_test_setup_teardown(test_maildir_remove, setup, teardown),
		cmocka_unit_test_setup_teardown(test_subscriptions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mailloc, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
