/*
 * test_store.c — node/store.c on real Maildirs in temporary directories: local
 * changes seen exactly once, remote effects mirrored, body transfer checked, no echo,
 * restart without re-hashing, crash between a body's rename and the commit, batched
 * bodies (staged, flushed, crashes between the batch's LMDB commit and its renames),
 * and two stores converging by exchanging deltas and bodies in memory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/lock_check.h"

#include "crdt/crdt.h"
#include "node/maildir.h"
#include "node/store.h"
#include "node/statedb.h"

#include <dirent.h>
#include <dlfcn.h>
#include <lmdb.h>
#include <sodium.h>
#include <errno.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char top[256];

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st; (void)flag; (void)f;
	return remove(p);
}

/* the race tests' interposers (below), off between tests even when one fails */
static const char *readdir_fail_at; /* readdir(3) of a directory holding it: EIO */
static DIR *readdir_fail_dir;
static const char *stat_fail;
static int stat_errno;
static const char *open_fail_suffix; /* open(2) of a path ending so: EIO, open_fail_n times */
static int open_fail_n;

static int setup(void **state)
{
	(void)state;
	readdir_fail_at = NULL;
	readdir_fail_dir = NULL;
	stat_fail = NULL;
	open_fail_n = 0;
	snprintf(top, sizeof top, "/tmp/mm-test-store-XXXXXX");
	assert_non_null(mkdtemp(top));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	nftw(top, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

/* One node: its state, clock, store, and Maildir root. */
struct node {
	char root[300], sdir[300], loc[320];
	struct mm_state *st;
	struct mm_clock clock;
	struct mm_store *s;
	uint64_t now;
};

static void node_open_cfg(struct node *n, const char *name, uint64_t id, bool imap_uids)
{
	snprintf(n->root, sizeof n->root, "%s/%s/mail", top, name);
	snprintf(n->sdir, sizeof n->sdir, "%s/%s/state", top, name);
	snprintf(n->loc, sizeof n->loc, "maildir:%s/%%d/%%n", n->root);
	mkdir(n->root, 0700) == 0 || errno == EEXIST ? (void)0 : (void)0;
	char p[300];
	snprintf(p, sizeof p, "%s/%s", top, name);
	mkdir(p, 0700);
	mkdir(n->root, 0700);
	n->st = mm_state_new();
	assert_non_null(n->st);
	mm_clock_init(&n->clock, id, 0);
	struct mm_store_config cfg = {.mail_location = n->loc, .state_dir = n->sdir, .imap_uids = imap_uids};
	char err[512];
	int r = mm_store_open(&n->s, &cfg, n->st, &n->clock, err, sizeof err);
	if (r)
		fprintf(stderr, "open: %s\n", err);
	assert_int_equal(r, 0);
	/* MM_TEST_FILE_CACHE=0 (tests/run.sh runs this program a second time so): every
	 * commit drops the file index from memory, every lookup reads the database */
	if (getenv("MM_TEST_FILE_CACHE"))
		mm_store_set_file_cache(n->s, (size_t)strtoul(getenv("MM_TEST_FILE_CACHE"), NULL, 10));
	if (imap_uids)
		mm_store_set_new_folder_wait(n->s, 0); /* no Dovecot here */
	if (!n->now)
		n->now = 1700000000000ULL;
}

static void node_open(struct node *n, const char *name, uint64_t id)
{
	node_open_cfg(n, name, id, false);
}

static void node_close(struct node *n)
{
	mm_store_free(&n->s);
	assert_null(n->s);
	mm_state_free(&n->st);
}

static int scan(struct node *n, struct mm_delta *out)
{
	n->now += 1000;
	int r = mm_store_scan(n->s, n->now, out);
	assert_true(r >= 0);
	assert_int_equal(mm_store_commit(n->s), 0);
	return r;
}

static void udir(const struct node *n, const char *folder, char *buf, size_t len)
{
	if (!strcmp(folder, "INBOX"))
		snprintf(buf, len, "%s/ex.org/alice", n->root);
	else
		snprintf(buf, len, "%s/ex.org/alice/.%s", n->root, folder);
}

/* A delivery the way Dovecot/LMTP does it: tmp/, then new/. */
static void deliver(struct node *n, const char *folder, const char *base, const char *body,
                    int64_t mtime)
{
	char d[600];
	udir(n, folder, d, sizeof d);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	char md[600];
	snprintf(md, sizeof md, "%s/ex.org/alice", n->root);
	assert_int_equal(mm_md_folder_create(md, folder, &o), 0);
	assert_int_equal(mm_md_deliver(d, base, body, strlen(body), mtime, "new", base, &o), 0);
}

/* Path of the one file whose base starts with `prefix` (in new/ or cur/), or NULL. */
static const char *find(const struct node *n, const char *folder, const char *prefix)
{
	static char out[1200];
	char d[600], p[700];
	udir(n, folder, d, sizeof d);
	const char *subs[] = {"new", "cur"};
	for (int i = 0; i < 2; i++) {
		snprintf(p, sizeof p, "%s/%s", d, subs[i]);
		DIR *dd = opendir(p);
		if (!dd)
			continue;
		struct dirent *e;
		while ((e = readdir(dd)))
			if (!strncmp(e->d_name, prefix, strlen(prefix))) {
				snprintf(out, sizeof out, "%s/%s", p, e->d_name);
				closedir(dd);
				return out;
			}
		closedir(dd);
	}
	return NULL;
}

static int count_files(const struct node *n, const char *folder, const char *sub)
{
	char d[600], p[700];
	udir(n, folder, d, sizeof d);
	snprintf(p, sizeof p, "%s/%s", d, sub);
	DIR *dd = opendir(p);
	if (!dd)
		return -1;
	int c = 0;
	struct dirent *e;
	while ((e = readdir(dd)))
		if (e->d_name[0] != '.')
			c++;
	closedir(dd);
	return c;
}

static void rename_to(const char *from, const char *suffix_letters)
{
	char to[1000];
	snprintf(to, sizeof to, "%s", from);
	char *colon = strrchr(to, ':');
	char *slash = strrchr(to, '/');
	if (colon && colon > slash)
		*colon = 0;
	/* new/ -> cur/ when needed */
	char *nw = strstr(to, "/new/");
	if (nw)
		memcpy(nw, "/cur/", 5);
	strcat(to, ":2,");
	strcat(to, suffix_letters);
	assert_int_equal(rename(from, to), 0);
}

static const struct mm_rec *msg_of(struct node *n, const struct mm_delta *d, size_t *idx)
{
	(void)n;
	for (size_t i = 0; i < mm_delta_count(d); i++) {
		const char *u;
		const struct mm_rec *r = mm_delta_get(d, i, &u);
		if (r->type == MM_REC_MESSAGE) {
			if (idx)
				*idx = i;
			return r;
		}
	}
	return NULL;
}

static void test_scan_local_changes(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	struct mm_delta *d = mm_delta_new();
	assert_int_equal(scan(&a, d), 0);

	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: one\r\n\r\nbody one\r\n", 1600000000);
	mm_delta_clear(d);
	int c = scan(&a, d);
	assert_true(c >= 1);
	const struct mm_rec *m = msg_of(&a, d, NULL);
	assert_non_null(m);
	assert_string_equal(m->msg.folder, "INBOX");
	assert_int_equal(m->msg.internaldate, 1600000000);
	assert_int_equal(m->msg.size, strlen("Subject: one\r\n\r\nbody one\r\n"));
	uint8_t id[MM_ID_LEN];
	mm_body_id("Subject: one\r\n\r\nbody one\r\n", m->msg.size, id);
	assert_memory_equal(id, m->msg.body, MM_ID_LEN);
	uint8_t key[MM_KEY_LEN];
	memcpy(key, m->key, MM_KEY_LEN);
	assert_int_equal(mm_store_files_hashed(a.s), 1);
	/* exactly once */
	assert_int_equal(scan(&a, NULL), 0);

	/* new -> cur with \Seen and \Flagged; then keyword $Junk (letter a) */
	rename_to(find(&a, "INBOX", "1700000000.M1P1.mx"), "FS");
	mm_delta_clear(d);
	assert_int_equal(scan(&a, d), 2);
	struct mm_user *u = mm_state_user(a.st, "ex.org/alice", false);
	assert_non_null(u);
	const struct mm_rec *r = mm_user_get(u, key);
	assert_int_equal(r->msg.flags[MM_FLAG_SEEN].value, 1);
	assert_int_equal(r->msg.flags[MM_FLAG_FLAGGED].value, 1);
	assert_int_equal(r->msg.flags[MM_FLAG_REPLIED].value, 0);
	assert_int_equal(scan(&a, NULL), 0);
	char kwp[700], d0[600];
	udir(&a, "INBOX", d0, sizeof d0);
	snprintf(kwp, sizeof kwp, "%s/dovecot-keywords", d0);
	FILE *f = fopen(kwp, "w");
	fputs("0 $Junk\n", f);
	fclose(f);
	rename_to(find(&a, "INBOX", "1700000000.M1P1.mx"), "Sa");
	assert_int_equal(scan(&a, NULL), 2); /* F cleared, $Junk set */
	r = mm_user_get(u, key);
	assert_int_equal(r->msg.flags[MM_FLAG_FLAGGED].value, 0);
	assert_int_equal(r->msg.n_keywords, 1);
	assert_string_equal(r->msg.keywords[0].name, "$Junk");
	assert_int_equal(r->msg.keywords[0].reg.value, 1);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 1); /* renames never re-hash */

	/* a folder appears with a message; odd files are skipped, tmp/ ignored */
	deliver(&a, "Archive.2024", "1700000001.M2P1.mx", "Subject: two\r\n\r\n2\r\n", 1600000100);
	char p[700];
	udir(&a, "Archive.2024", d0, sizeof d0);
	snprintf(p, sizeof p, "%s/tmp/halfwritten", d0);
	f = fopen(p, "w");
	fputs("Subj", f);
	fclose(f);
	snprintf(p, sizeof p, "%s/cur/.bad:1,X", d0); /* Dovecot skips dot files too */
	f = fopen(p, "w");
	fputs("x", f);
	fclose(f);
	c = scan(&a, NULL);
	assert_int_equal(c, 2); /* folder create + deliver */
	assert_true(mm_user_folder_visible(u, "Archive.2024"));
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(unlink(p), 0);

	/* expunge */
	assert_int_equal(unlink(find(&a, "INBOX", "1700000000.M1P1.mx")), 0);
	assert_int_equal(scan(&a, NULL), 1);
	r = mm_user_get(u, key);
	assert_int_equal(r->type, MM_REC_EXPUNGED);
	assert_int_equal(scan(&a, NULL), 0);

	/* folder removed (with its message) */
	char cmd[800];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", d0);
	assert_int_equal(system(cmd), 0);
	c = scan(&a, NULL);
	assert_true(c >= 2);
	assert_false(mm_user_folder_visible(u, "Archive.2024"));
	assert_int_equal(scan(&a, NULL), 0);

	/* subscriptions */
	udir(&a, "INBOX", d0, sizeof d0);
	const char *subs[] = {"INBOX"};
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_subs_write(d0, subs, 1, &o), 0);
	assert_int_equal(scan(&a, NULL), 1);
	assert_int_equal(scan(&a, NULL), 0);

	/* restart: nothing re-read, nothing changes, same state */
	uint8_t root1[MM_HASH_LEN], root2[MM_HASH_LEN];
	mm_state_root(a.st, root1);
	uint64_t last = a.clock.last;
	deliver(&a, "INBOX", "1700000002.M3P1.mx", "Subject: three\r\n\r\n3\r\n", 1600000200);
	assert_int_equal(scan(&a, NULL), 1);
	mm_state_root(a.st, root1);
	last = a.clock.last;
	node_close(&a);
	node_open(&a, "a", 1);
	assert_true(a.clock.last >= last);
	mm_state_root(a.st, root2);
	assert_memory_equal(root1, root2, MM_HASH_LEN);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	mm_delta_free(&d);
	node_close(&a);
}

/* Names Dovecot shows as messages though their info part is not "2,<letters>"
 * (maildir-filename-flags.c, maildir_filename_flags_get: flags after the last ':' when
 * it is "2,", up to another ',', other characters ignored; anything else: no flags).
 * Checked with Dovecot 2.3.19: "x:2,S,X" and "x:2,S2" are \Seen messages, "x:1,foo"
 * one without flags.  The scan skipped them as "not a Maildir message name": mail IMAP
 * showed on this server never reached any other. */
static void test_odd_info_names_replicated(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: one\r\n\r\n1\r\n", 1600000000);
	assert_true(scan(&a, NULL) >= 1);
	char d0[600], p[800];
	udir(&a, "INBOX", d0, sizeof d0);
	const char *names[] = {"1700000001.M2P1.mx,S=21:2,S,X", "1700000002.M3P1.mx:2,S2",
	                       "1700000003.M4P1.mx:1,foo"};
	for (int i = 0; i < 3; i++) {
		snprintf(p, sizeof p, "%s/cur/%s", d0, names[i]);
		FILE *f = fopen(p, "w");
		assert_non_null(f);
		fprintf(f, "Subject: odd %d\r\n\r\nx\r\n", i);
		fclose(f);
	}
	struct mm_delta *d = mm_delta_new();
	assert_int_equal(scan(&a, d), 3);
	int msgs = 0, seen = 0;
	for (size_t i = 0; i < mm_delta_count(d); i++) {
		const char *u;
		const struct mm_rec *r = mm_delta_get(d, i, &u);
		if (r->type == MM_REC_MESSAGE) {
			msgs++;
			seen += r->msg.flags[MM_FLAG_SEEN].value;
		}
	}
	assert_int_equal(msgs, 3);
	assert_int_equal(seen, 2);
	assert_int_equal(scan(&a, NULL), 0);
	/* a restart reads the odd names back from the index: nothing changes */
	node_close(&a);
	node_open(&a, "a", 1);
	assert_int_equal(scan(&a, NULL), 0);
	/* and one is expunged like any other */
	snprintf(p, sizeof p, "%s/cur/%s", d0, names[0]);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(scan(&a, NULL), 1);
	mm_delta_free(&d);
	node_close(&a);
}

/* ---- two nodes ------------------------------------------------------------------- */

struct xfer {
	struct node *from, *to;
	int n, bad;
};

static int fetch_cb(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                    const uint8_t body[MM_ID_LEN], uint64_t size)
{
	(void)body;
	struct xfer *x = arg;
	int fd;
	uint64_t sz;
	if (mm_store_body_open(x->from->s, user, key, &fd, &sz) < 0)
		return 0;
	assert_int_equal(sz, size);
	struct mm_body_writer *w;
	assert_int_equal(mm_store_body_begin(x->to->s, user, key, &w), 0);
	char buf[7]; /* small chunks on purpose */
	ssize_t r;
	while ((r = read(fd, buf, sizeof buf)) > 0)
		assert_int_equal(mm_store_body_write(w, buf, (size_t)r), 0);
	close(fd);
	if (x->bad)
		assert_int_equal(mm_store_body_write(w, "X", 1), 0);
	int c = mm_store_body_commit(&w);
	assert_null(w);
	if (x->bad) {
		assert_int_equal(c, -EBADMSG);
	} else {
		assert_int_equal(c, 1);
		x->n++;
	}
	return 0;
}

/* Ships a delta from -> to, then the bodies `to` misses. */
static void sync_to(struct node *from, struct node *to, struct mm_delta *d)
{
	assert_true(mm_store_merge_delta(to->s, d) >= 0);
	assert_int_equal(mm_store_commit(to->s), 0);
	struct xfer x = {from, to, 0, 0};
	assert_int_equal(mm_store_missing(to->s, fetch_cb, &x), 0);
	assert_int_equal(mm_store_commit(to->s), 0);
}

static int full_cb(void *arg, const struct mm_rec *r)
{
	return mm_delta_add(arg, "ex.org/alice", r) < 0;
}

static struct mm_delta *full_delta(struct node *n)
{
	struct mm_delta *d = mm_delta_new();
	struct mm_user *u = mm_state_user(n->st, "ex.org/alice", false);
	if (u)
		assert_int_equal(mm_user_foreach(u, NULL, 0, full_cb, d), 0);
	return d;
}

/* Listing of a Maildir: folder, flags letters and content of each message, sorted. */
/* The MESSAGE record of d with this INTERNALDATE (the last one), or NULL. */
static const struct mm_rec *msg_by_idate(const struct mm_delta *d, int64_t idate)
{
	const struct mm_rec *m = NULL;
	for (size_t i = 0; i < mm_delta_count(d); i++) {
		const struct mm_rec *r = mm_delta_get(d, i, NULL);
		if (r->type == MM_REC_MESSAGE && r->msg.internaldate == idate)
			m = r;
	}
	return m;
}

static void listing(const struct node *n, char *out, size_t len)
{
	char cmd[1200];
	snprintf(cmd, sizeof cmd,
	         "cd '%s/ex.org/alice' && for f in $(find . -path '*/new/*' -o -path '*/cur/*' | sort); do "
	         "d=$(dirname $(dirname $f)); fl=$(echo $f | sed -n 's/.*:2,//p'); "
	         "echo \"$d $fl $(stat -c %%Y $f) $(md5sum < $f | cut -c1-32)\"; done | sort; "
	         "cat subscriptions 2>/dev/null; ls -a | grep '^\\.[A-Za-z]' | sort",
	         n->root);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t k = fread(out, 1, len - 1, p);
	out[k] = 0;
	pclose(p);
}

/* a and b show the same messages (listing) */
static void assert_same_listing(const struct node *a, const struct node *b)
{
	char la[8192], lb[8192];
	listing(a, la, sizeof la);
	listing(b, lb, sizeof lb);
	assert_string_equal(la, lb);
}

static void test_two_nodes(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();

	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: one\r\n\r\nbody one\r\n", 1600000000);
	deliver(&a, "Sent", "1700000001.M1P1.mx", "Subject: sent\r\n\r\nsent body\r\n", 1600000050);
	assert_true(scan(&a, d) >= 3);
	/* B has no Maildir for alice at all: it is created */
	sync_to(&a, &b, d);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	const char *f = find(&b, "INBOX", "1600000000.");
	assert_non_null(f);
	assert_non_null(strstr(f, "/new/"));
	struct stat st;
	assert_int_equal(stat(f, &st), 0);
	assert_int_equal(st.st_mtime, 1600000000);
	assert_non_null(find(&b, "Sent", "1600000050."));
	/* no echo: B's own writes are not local changes */
	assert_int_equal(scan(&b, NULL), 0);
	assert_int_equal(mm_store_files_hashed(b.s), 0);

	/* a bad body is refused and leaves nothing behind */
	deliver(&a, "INBOX", "1700000003.M1P1.mx", "Subject: three\r\n\r\n3\r\n", 1600000300);
	mm_delta_clear(d);
	assert_int_equal(scan(&a, d), 1);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	struct xfer x = {&a, &b, 0, 1};
	assert_int_equal(mm_store_missing(b.s, fetch_cb, &x), 0);
	assert_int_equal(mm_store_missing_count(b.s), 1);
	assert_null(find(&b, "INBOX", "1600000300."));
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	x.bad = 0;
	assert_int_equal(mm_store_missing(b.s, fetch_cb, &x), 0);
	assert_int_equal(x.n, 1);
	assert_int_equal(mm_store_missing_count(b.s), 0);

	/* flags on B (Dovecot-style rename) reach A as a rename */
	rename_to(find(&b, "INBOX", "1600000000."), "RS");
	mm_delta_clear(d);
	assert_int_equal(scan(&b, d), 2);
	sync_to(&b, &a, d);
	const char *fa = find(&a, "INBOX", "1700000000.M1P1.mx");
	assert_non_null(fa);
	assert_non_null(strstr(fa, "/cur/1700000000.M1P1.mx:2,RS"));
	assert_int_equal(scan(&a, NULL), 0); /* no echo of the rename */

	/* a keyword set remotely gets a letter in A's dovecot-keywords */
	struct mm_user *ub = mm_state_user(b.st, "ex.org/alice", false);
	uint8_t key[MM_KEY_LEN];
	{
		struct mm_delta *fd = full_delta(&a);
		size_t i;
		const struct mm_rec *m = NULL;
		for (i = 0; i < mm_delta_count(fd); i++) {
			const char *un;
			const struct mm_rec *r = mm_delta_get(fd, i, &un);
			if (r->type == MM_REC_MESSAGE && r->msg.internaldate == 1600000000)
				m = r;
		}
		assert_non_null(m);
		memcpy(key, m->key, MM_KEY_LEN);
		mm_delta_free(&fd);
	}
	mm_delta_clear(d);
	b.now += 1000;
	assert_int_equal(mm_user_set_keyword(ub, key, "work", true, mm_clock_tick(&b.clock, b.now),
	                                     mm_store_effect, b.s, d), 1);
	assert_non_null(strstr(find(&b, "INBOX", "1600000000."), ":2,RSa"));
	assert_int_equal(scan(&b, NULL), 0);
	sync_to(&b, &a, d);
	fa = find(&a, "INBOX", "1700000000.M1P1.mx");
	assert_non_null(strstr(fa, ":2,RSa"));
	char kwp[700], d0[600];
	udir(&a, "INBOX", d0, sizeof d0);
	snprintf(kwp, sizeof kwp, "%s/dovecot-keywords", d0);
	FILE *kf = fopen(kwp, "r");
	assert_non_null(kf);
	char line[64] = {0};
	assert_non_null(fgets(line, sizeof line, kf));
	fclose(kf);
	assert_string_equal(line, "0 work\n");
	assert_int_equal(scan(&a, NULL), 0);

	/* a copy into another folder on A: B links its local copy, no network */
	char fromp[900];
	snprintf(fromp, sizeof fromp, "%s", find(&a, "INBOX", "1700000003.M1P1.mx"));
	char dst[900];
	udir(&a, "Sent", d0, sizeof d0);
	snprintf(dst, sizeof dst, "%s/cur/1700000009.M9P9.mx:2,S", d0);
	assert_int_equal(link(fromp, dst), 0);
	mm_delta_clear(d);
	assert_int_equal(scan(&a, d), 1);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_non_null(find(&b, "Sent", "1600000300."));

	/* expunge on A, folder created and subscribed on A */
	assert_int_equal(unlink(find(&a, "Sent", "1700000001.M1P1.mx")), 0);
	char md[600];
	snprintf(md, sizeof md, "%s/ex.org/alice", a.root);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(md, "Lists.dev", &o), 0);
	const char *subs[] = {"INBOX", "Lists.dev"};
	assert_int_equal(mm_md_subs_write(md, subs, 2, &o), 0);
	mm_delta_clear(d);
	assert_true(scan(&a, d) >= 4);
	sync_to(&a, &b, d);
	assert_null(find(&b, "Sent", "1600000050."));
	char bl[8192], al[8192];
	listing(&a, al, sizeof al);
	listing(&b, bl, sizeof bl);
	assert_string_equal(al, bl);
	assert_non_null(strstr(al, "Lists\tdev"));

	/* the folder deleted on B goes away on A */
	snprintf(md, sizeof md, "%s/ex.org/alice", b.root);
	assert_int_equal(mm_md_folder_remove(md, "Lists.dev"), 0);
	mm_delta_clear(d);
	assert_true(scan(&b, d) >= 1);
	sync_to(&b, &a, d);
	udir(&a, "Lists.dev", d0, sizeof d0);
	assert_int_equal(access(d0, F_OK), -1);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(scan(&b, NULL), 0);

	/* full state both ways: identical roots and Maildirs */
	struct mm_delta *fd = full_delta(&a);
	sync_to(&a, &b, fd);
	mm_delta_free(&fd);
	fd = full_delta(&b);
	sync_to(&b, &a, fd);
	mm_delta_free(&fd);
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	mm_state_root(a.st, ra);
	mm_state_root(b.st, rb);
	assert_memory_equal(ra, rb, MM_HASH_LEN);
	listing(&a, al, sizeof al);
	listing(&b, bl, sizeof bl);
	assert_string_equal(al, bl);

	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

static void test_crash_between_rename_and_commit(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: one\r\n\r\nbody one\r\n", 1600000000);
	assert_true(scan(&a, d) >= 1);
	/* B merges without committing; body_commit must make the record durable itself */
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	struct xfer x = {&a, &b, 0, 0};
	assert_int_equal(mm_store_missing(b.s, fetch_cb, &x), 0);
	assert_int_equal(x.n, 1);
	/* "kill -9": no commit after the rename */
	uint8_t r1[MM_HASH_LEN], r2[MM_HASH_LEN];
	mm_state_root(b.st, r1);
	node_close(&b);
	node_open(&b, "b", 2);
	mm_state_root(b.st, r2);
	assert_memory_equal(r1, r2, MM_HASH_LEN); /* the record survived */
	assert_int_equal(mm_store_missing_count(b.s), 1); /* index entry was lost... */
	assert_int_equal(scan(&b, NULL), 0);              /* ...the rescan links the file */
	assert_int_equal(mm_store_files_hashed(b.s), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	mm_state_root(b.st, r2);
	assert_memory_equal(r1, r2, MM_HASH_LEN);
	/* and a state change that was not committed is simply redone by the scan */
	rename_to(find(&b, "INBOX", "1600000000."), "S");
	b.now += 1000;
	assert_int_equal(mm_store_scan(b.s, b.now, NULL), 1);
	node_close(&b); /* no commit */
	node_open(&b, "b", 2);
	assert_int_equal(scan(&b, NULL), 1);
	assert_int_equal(scan(&b, NULL), 0);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* ---- batched bodies: stage, flush, crashes in between -------------------------------- */

/* Like fetch_cb, but the body is staged (mm_store_body_stage), as sync sessions do. */
static int stage_cb(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                    const uint8_t body[MM_ID_LEN], uint64_t size)
{
	(void)body;
	struct xfer *x = arg;
	int fd;
	uint64_t sz;
	if (mm_store_body_open(x->from->s, user, key, &fd, &sz) < 0)
		return 0;
	if (sz != size) {
		close(fd);
		return -EIO;
	}
	struct mm_body_writer *w;
	int r = mm_store_body_begin(x->to->s, user, key, &w);
	char buf[4096];
	ssize_t n;
	while (r == 0 && (n = read(fd, buf, sizeof buf)) > 0)
		r = mm_store_body_write(w, buf, (size_t)n);
	close(fd);
	if (r < 0) {
		mm_store_body_abort(&w);
		return r;
	}
	r = mm_store_body_stage(&w);
	if (r < 0 || w)
		return r < 0 ? r : -EINVAL;
	x->n++;
	return 0;
}

static int count_cb(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                    const uint8_t body[MM_ID_LEN], uint64_t size)
{
	(void)user; (void)key; (void)body; (void)size;
	(*(int *)arg)++;
	return 0;
}

static int first_key_cb(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                        const uint8_t body[MM_ID_LEN], uint64_t size)
{
	(void)user; (void)size;
	uint8_t *out = arg;
	memcpy(out, key, MM_KEY_LEN);
	memcpy(out + MM_KEY_LEN, body, MM_ID_LEN);
	return 1;
}

static void three_messages(struct node *a, struct mm_delta *d)
{
	deliver(a, "INBOX", "1700000000.M1P1.mx", "Subject: one\r\n\r\nbody one\r\n", 1600000000);
	deliver(a, "INBOX", "1700000001.M1P1.mx", "Subject: two\r\n\r\nbody two\r\n", 1600000001);
	deliver(a, "INBOX", "1700000002.M1P1.mx", "Subject: three\r\n\r\nbody three\r\n", 1600000002);
	assert_true(scan(a, d) >= 3); /* and the folder */
}

/* Nodes a and b opened, three messages delivered on a and their records merged into b
 * but not committed (as a batch of a sync has them before its flush); returns the
 * delta (the caller frees it). */
static struct mm_delta *three_merged(struct node *a, struct node *b)
{
	node_open(a, "a", 1);
	node_open(b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	three_messages(a, d);
	assert_true(mm_store_merge_delta(b->s, d) >= 0);
	return d;
}

/* Staged bodies are invisible and not missing until the flush, which commits their
 * records first (they were merged, not committed) and places them all; a kill -9
 * after the flush but before the file index is committed loses nothing and
 * duplicates nothing: the rescan links the files by their keys. */
static void test_stage_flush(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = three_merged(&a, &b); /* not committed */
	uint8_t kb[MM_KEY_LEN + MM_ID_LEN];
	assert_int_equal(mm_store_missing(b.s, first_key_cb, kb), 1);
	struct xfer x = {&a, &b, 0, 0};
	assert_int_equal(mm_store_missing(b.s, stage_cb, &x), 0);
	assert_int_equal(x.n, 3);
	assert_int_equal(mm_store_staged_count(b.s), 3);
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 0);
	/* received already: not offered to the fetcher, not written twice */
	int c = 0;
	assert_int_equal(mm_store_missing(b.s, count_cb, &c), 0);
	assert_int_equal(c, 0);
	struct mm_body_writer *w = NULL;
	assert_int_equal(mm_store_body_begin(b.s, "ex.org/alice", kb, &w), -EEXIST);
	assert_int_equal(mm_store_body_begin_id(b.s, "ex.org/alice", kb + MM_KEY_LEN, 100, 0, &w), -ENOENT);
	assert_null(w);

	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_staged_count(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 3);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_int_equal(mm_store_flush(b.s), 0); /* nothing left: a no-op */

	/* "kill -9" now: records durable (the flush committed them), index not */
	uint8_t r1[MM_HASH_LEN], r2[MM_HASH_LEN];
	mm_state_root(b.st, r1);
	node_close(&b);
	node_open(&b, "b", 2);
	mm_state_root(b.st, r2);
	assert_memory_equal(r1, r2, MM_HASH_LEN);
	assert_int_equal(scan(&b, NULL), 0);
	assert_int_equal(mm_store_files_hashed(b.s), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 3);
	assert_same_listing(&a, &b);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Merges three of a's messages into b, places their bodies and "kill -9"s b: its
 * records are durable (the flush committed them), the placements' file index entries
 * are not.  Returns the merged delta (the caller's). */
static struct mm_delta *placed_then_killed(struct node *a, struct node *b)
{
	struct mm_delta *d = three_merged(a, b);
	struct xfer x = {a, b, 0, 0};
	assert_int_equal(mm_store_missing(b->s, stage_cb, &x), 0);
	assert_int_equal(mm_store_flush(b->s), 0);
	assert_int_equal(count_files(b, "INBOX", "new"), 3);
	node_close(b); /* kill -9: index not committed */
	return d;
}

/* A kill -9 after the flush placed three bodies but before their file index was
 * committed; while the node is down two of them get flags elsewhere.  At the restart
 * the scan links the files by their keys, and the merge that follows renames them: no
 * file keeps the flags it was placed with (it_daemon_crash once ended with 11 such
 * files, under file_cache = 0; tests/run.sh runs this with it too). */
static void test_flags_changed_while_down(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = placed_then_killed(&a, &b);
	rename_to(find(&a, "INBOX", "1700000000.M1P1"), "FS");
	rename_to(find(&a, "INBOX", "1700000001.M1P1"), "S");
	mm_delta_clear(d);
	assert_true(scan(&a, d) >= 2);
	node_open(&b, "b", 2);
	assert_int_equal(scan(&b, NULL), 0);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_same_listing(&a, &b);
	node_close(&b);
	node_open(&b, "b", 2);
	assert_int_equal(scan(&b, NULL), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The same kill -9 (bodies placed, their file index not committed), and while the node
 * is down a client on it (Dovecot still serves the Maildir) flags one of the placed
 * files.  At the restart the scan links the files by their keys; the one whose letters
 * are not the record's was renamed by the client since the placement: a local change,
 * kept and sent to the peers.  It used to be renamed back to the record's letters, the
 * client's \Seen lost on every node (found by it_daemon_torture). */
static void test_flags_changed_here_while_down(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = placed_then_killed(&a, &b);
	const char *f = find(&b, "INBOX", "1600000001.");
	assert_non_null(f);
	rename_to(f, "S");
	node_open(&b, "b", 2);
	mm_delta_clear(d);
	assert_int_equal(scan(&b, d), 1); /* the client's \Seen */
	f = find(&b, "INBOX", "1600000001.");
	assert_non_null(f);
	assert_string_equal(strrchr(f, ':'), ":2,S");
	assert_true(mm_store_merge_delta(a.s, d) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	f = find(&a, "INBOX", "1700000001.");
	assert_non_null(f);
	assert_string_equal(strrchr(f, ':'), ":2,S");
	assert_same_listing(&a, &b);
	/* and a restart sees nothing more to do */
	node_close(&b);
	node_open(&b, "b", 2);
	assert_int_equal(scan(&b, NULL), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* ---- a user's Maildir gone and back (store.c user_present) ----------------------- */

static int tomb_cb(void *arg, const struct mm_rec *r)
{
	if (r->type == MM_REC_EXPUNGED)
		(*(int *)arg)++;
	return 0;
}

/* Expunge tombstones of alice in n's state. */
static int tombstones(struct node *n)
{
	int c = 0;
	struct mm_user *u = mm_state_user(n->st, "ex.org/alice", false);
	if (u)
		mm_user_foreach(u, NULL, 0, tomb_cb, &c);
	return c;
}

static void alice_dir(const struct node *n, char *buf, size_t len)
{
	snprintf(buf, len, "%s/ex.org/alice", n->root);
}

/* Whether n's Maildir of alice has folder fname's directory, and its subscriptions
 * file names Archive. */
static bool has_folder_dir(const struct node *n, const char *fname)
{
	char p[600];
	struct stat st;
	snprintf(p, sizeof p, "%s/ex.org/alice/.%s", n->root, fname);
	return stat(p, &st) == 0;
}

/* name is a line of alice's subscriptions file on n */
static bool subs_has(const struct node *n, const char *name)
{
	char p[600], text[256] = "", line[80];
	snprintf(p, sizeof p, "%s/ex.org/alice/subscriptions", n->root);
	FILE *f = fopen(p, "r");
	if (!f)
		return false;
	size_t k = fread(text, 1, sizeof text - 1, f);
	text[k] = 0;
	fclose(f);
	snprintf(line, sizeof line, "\n%s\n", name);
	return strstr(text, line) != NULL;
}

/* a holds 2 messages in INBOX and 1 in Archive (subscribed), and an empty Drafts; b
 * has them all from a. */
static bool alice_imap_uids; /* alice_on_two's nodes list IMAP UIDs */

static struct mm_delta *alice_on_two(struct node *a, struct node *b)
{
	node_open_cfg(a, "a", 1, alice_imap_uids);
	node_open_cfg(b, "b", 2, alice_imap_uids);
	deliver(a, "INBOX", "1700000000.M1P1.a", "Subject: one\r\n\r\n1\r\n", 1700000000);
	deliver(a, "INBOX", "1700000001.M1P1.a", "Subject: two\r\n\r\n2\r\n", 1700000001);
	deliver(a, "Archive", "1700000002.M1P1.a", "Subject: old\r\n\r\n3\r\n", 1700000002);
	char md[400];
	alice_dir(a, md, sizeof md);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(md, "Drafts", &o), 0);
	const char *const subs[] = {"Archive"};
	assert_int_equal(mm_md_subs_write(md, subs, 1, &o), 0);
	struct mm_delta *d = mm_delta_new();
	assert_true(scan(a, d) > 0);
	sync_to(a, b, d);
	assert_same_listing(a, b);
	mm_delta_clear(d);
	return d;
}

/* Stops b and removes alice's Maildir (its path in dir). */
static void remove_alice_while_down(struct node *b, char *dir, size_t len)
{
	char cmd[1000];
	alice_dir(b, dir, len);
	node_close(b);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

/* Everything a holds to b, b's changes (db) to a: then both show the same mail. */
static void exchange_all(struct node *a, struct node *b, struct mm_delta *db)
{
	struct mm_delta *all = full_delta(a);
	sync_to(a, b, all);
	mm_delta_free(&all);
	sync_to(b, a, db);
	assert_same_listing(a, b);
}

/* What a delivery by Dovecot does to a user without a Maildir: makes one. */
static void dovecot_makes_alice(struct node *n, const char *base, const char *body)
{
	deliver(n, "INBOX", base, body, 1700000100);
}

/* rm -rf of a user's Maildir while the daemon is stopped: nothing of the user is
 * expunged, on this node or (through its deltas) on any other, and nothing is made
 * for it until the Maildir is back; then everything is fetched again.  Before
 * user_present, the first delivery made the Maildir again and the scan after it took
 * all the old mail for expunged, on every node. */
static void test_user_gone_while_down(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	char dir[400];
	remove_alice_while_down(&b, dir, sizeof dir);
	node_open(&b, "b", 2);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&b, db), 0);
	/* a peer's new message: merged, but the Maildir is not made again */
	deliver(&a, "INBOX", "1700000003.M1P1.a", "Subject: new\r\n\r\n4\r\n", 1700000003);
	assert_true(scan(&a, d) > 0);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	struct stat st;
	assert_int_equal(stat(dir, &st), -1);
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "INBOX", b.now, db), 0);
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "Archive", b.now, db), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_int_equal(tombstones(&b), 0);
	/* Dovecot makes the Maildir again with a delivery: the old mail comes back */
	dovecot_makes_alice(&b, "1700000100.M1P1.b", "Subject: here\r\n\r\n5\r\n");
	assert_int_equal(scan(&b, db), 1);
	assert_int_equal(tombstones(&b), 0);
	sync_to(&a, &b, d);
	exchange_all(&a, &b, db);
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 4);
	assert_int_equal(count_files(&b, "Archive", "new") + count_files(&b, "Archive", "cur"), 1);
	assert_int_equal(tombstones(&a), 0);
	/* the empty folder made again, the subscriptions kept (not read from the new
	 * Maildir, which has none: that would unsubscribe everywhere) */
	assert_true(has_folder_dir(&b, "Drafts"));
	assert_true(subs_has(&b, "Archive") && subs_has(&a, "Archive"));
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* rm -rf and a new Maildir (Dovecot's, on a delivery) both while the daemon is
 * stopped: at start the Maildir is another directory than the indexed one, so what
 * it lacks is fetched again rather than expunged (a user who deleted every message
 * over IMAP while the daemon was down keeps the same directory: expunged, as ever). */
static void test_user_made_again_while_down(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	char dir[400], cmd[1000];
	remove_alice_while_down(&b, dir, sizeof dir);
	dovecot_makes_alice(&b, "1700000100.M1P1.b", "Subject: here\r\n\r\n5\r\n");
	node_open(&b, "b", 2);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&b, db), 1); /* the new delivery, and no expunge */
	assert_int_equal(tombstones(&b), 0);
	exchange_all(&a, &b, db);
	assert_int_equal(tombstones(&a), 0);
	/* the same directory emptied while down: expunges */
	node_close(&b);
	snprintf(cmd, sizeof cmd, "rm -f '%s'/.Archive/cur/* '%s'/.Archive/new/*", dir, dir);
	assert_int_equal(system(cmd), 0);
	node_open(&b, "b", 2);
	mm_delta_clear(db);
	assert_int_equal(scan(&b, db), 1);
	assert_int_equal(tombstones(&b), 1);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The mail root unmounted under a running node (an empty mount point left): folder
 * scans and full scans expunge nothing, merged changes make nothing under the mount
 * point, and when it is mounted again the changes made elsewhere meanwhile are
 * mirrored: an expunged message's file removed (not taken for a new delivery), new
 * flags written, a new message fetched. */
static void test_user_away_and_back(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	char away[400], cmd[1500];
	snprintf(away, sizeof away, "%s.away", b.root);
	snprintf(cmd, sizeof cmd, "mv '%s' '%s' && mkdir '%s'", b.root, away, b.root);
	assert_int_equal(system(cmd), 0);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "Archive", b.now, db), 0);
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "INBOX", b.now, db), 0);
	/* meanwhile on a: an empty folder deleted, a COPY (bytes b holds), one expunge,
	 * one flag change, one delivery */
	snprintf(cmd, sizeof cmd, "rm -rf '%s/ex.org/alice/.Drafts' && cp -p '%s' '%s/ex.org/alice/.Archive/new/1700000001.M2P2.a'",
	         a.root, find(&a, "INBOX", "1700000001.M1P1.a"), a.root);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(unlink(find(&a, "INBOX", "1700000000.M1P1.a")), 0);
	rename_to(find(&a, "Archive", "1700000002.M1P1.a"), "S");
	deliver(&a, "INBOX", "1700000003.M1P1.a", "Subject: new\r\n\r\n4\r\n", 1700000003);
	assert_true(scan(&a, d) >= 3);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	snprintf(cmd, sizeof cmd, "rmdir '%s'", b.root); /* nothing was made there */
	assert_int_equal(system(cmd), 0);
	snprintf(cmd, sizeof cmd, "mv '%s' '%s'", away, b.root);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(scan(&b, db), 0);
	/* the copy made from the bytes b holds at that commit; only the new message is
	 * left to fetch (a daemon asks no peer for bytes it holds) */
	assert_int_equal(mm_store_missing_count(b.s), 1);
	sync_to(&a, &b, d);
	assert_same_listing(&a, &b);
	assert_int_equal(tombstones(&b), 1);
	assert_false(has_folder_dir(&b, "Drafts")); /* not made again, nor sent back */
	assert_int_equal(count_files(&b, "Archive", "new") + count_files(&b, "Archive", "cur"), 2);
	assert_true(subs_has(&b, "Archive"));
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* n's mail root "unmounted": moved to <root>.away, an empty directory in its place. */
static void root_away(struct node *n)
{
	char cmd[1500];
	snprintf(cmd, sizeof cmd, "mv '%s' '%s.away' && mkdir '%s'", n->root, n->root, n->root);
	assert_int_equal(system(cmd), 0);
}

/* ... and mounted again. */
static void root_back(struct node *n)
{
	char cmd[1500];
	snprintf(cmd, sizeof cmd, "rmdir '%s' && mv '%s.away' '%s'", n->root, n->root, n->root);
	assert_int_equal(system(cmd), 0);
}

static bool alice_maildir_there(const struct node *n)
{
	char p[600];
	struct stat st;
	snprintf(p, sizeof p, "%s/ex.org/alice", n->root);
	return stat(p, &st) == 0;
}

/* The UIDVALIDITY alice's folder name has in b's state, 0 without a record. */
static uint32_t folder_uv_of(struct node *n, const char *name)
{
	uint8_t key[MM_KEY_LEN];
	mm_key_folder(name, key);
	const struct mm_rec *r = mm_user_get(mm_state_user(n->st, "ex.org/alice", false), key);
	return r && r->type == MM_REC_FOLDER && r->folder.exists.value ? r->folder.uidvalidity : 0;
}

/* What Dovecot does at an IMAP CREATE of folder name: the directories now, the
 * dovecot-uidlist (with its own UIDVALIDITY) a moment later. */
static void dovecot_creates(struct node *n, const char *name)
{
	char md[400];
	alice_dir(n, md, sizeof md);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(md, name, &o), 0);
}

static void dovecot_numbers(struct node *n, const char *name, uint32_t uv)
{
	char p[700];
	snprintf(p, sizeof p, "%s/ex.org/alice/.%s/dovecot-uidlist", n->root, name);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fprintf(f, "3 V%u N1 G0123456789abcdef0123456789abcdef\n", uv);
	fclose(f);
}

/* A folder Dovecot has just made and not numbered yet is left for a moment, so that
 * its record carries Dovecot's UIDVALIDITY, not one of its own that every client of
 * this server would see change.  Also when the folder is deleted and made again:
 * the wait once counted from the first time the name was waited for, so a folder
 * made again later got a UIDVALIDITY of mailmesh's, and Dovecot logged "UIDVALIDITY
 * changed" (it_dovecot_cluster saw it once for a user removed and made again). */
static void test_new_folder_waits_for_dovecot(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, true);
	deliver(&a, "INBOX", "1700000000.M1P1.a", "Subject: one\r\n\r\n1\r\n", 1700000000);
	struct mm_delta *d = mm_delta_new();
	assert_true(scan(&a, d) > 0);
	mm_store_set_new_folder_wait(a.s, 200);
	for (int round = 0; round < 2; round++) {
		uint32_t uv = 1790000000u + (uint32_t)round;
		mm_delta_clear(d);
		dovecot_creates(&a, "Foo");
		scan(&a, d);
		assert_int_equal(folder_uv_of(&a, "Foo"), 0); /* left for Dovecot */
		dovecot_numbers(&a, "Foo", uv);
		scan(&a, d);
		assert_int_equal(folder_uv_of(&a, "Foo"), uv);
		/* deleted over IMAP, and made again a while later */
		char cmd[1000];
		snprintf(cmd, sizeof cmd, "rm -rf '%s/ex.org/alice/.Foo'", a.root);
		assert_int_equal(system(cmd), 0);
		scan(&a, d);
		assert_int_equal(folder_uv_of(&a, "Foo"), 0);
		usleep(700 * 1000); /* (past three waits) */
	}
	mm_delta_free(&d);
	node_close(&a);
}

/* The mail root "unmounted" in the middle of a scan: the store's opendir(3) of a path
 * holding move_at, the move_nth time, first moves move_node's root away (root_away,
 * done here with system calls).  This program's own opendir: the store is linked in. */
static const char *move_at;
static int move_nth;
static struct node *move_node;
DIR *opendir(const char *p)
{
	static DIR *(*real)(const char *);
	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "opendir");
	if (move_at && strstr(p, move_at) && --move_nth == 0) {
		char away[400];
		snprintf(away, sizeof away, "%s.away", move_node->root);
		move_at = NULL;
		if (syscall(SYS_rename, move_node->root, away) < 0 || mkdir(move_node->root, 0700) < 0)
			abort();
	}
	DIR *d = real(p);
	if (d && readdir_fail_at && strstr(p, readdir_fail_at))
		readdir_fail_dir = d; /* (see readdir below) */
	return d;
}

static void move_root_at(struct node *n, const char *path_part, int nth)
{
	move_node = n;
	move_nth = nth;
	move_at = path_part;
}

/* The mail root goes away after a full scan listed alice's folders, as it reads
 * Archive: Archive's directory looks deleted, and the subscriptions file gone (which
 * would unsubscribe Archive).  Nothing is deleted, expunged or unsubscribed, here or
 * in the delta; mounted again, nothing changed.  Before user_still_here the scan
 * deleted Archive on every node (it_daemon_absent saw it once under ASan). */
static void test_unmounted_during_scan(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	struct mm_delta *db = mm_delta_new();
	move_root_at(&b, "/b/mail/ex.org/alice/.Archive/new", 1);
	b.now += 1000;
	int r = mm_store_scan(b.s, b.now, db); /* (without scan(): the same full reading) */
	assert_null(move_at);
	assert_true(r >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_int_equal(tombstones(&b), 0);
	/* a folder scan after it: nothing either (the user is absent now) */
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "Archive", b.now, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	root_back(&b);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_same_listing(&a, &b);
	assert_true(has_folder_dir(&b, "Archive") && subs_has(&b, "Archive"));
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The same during a folder scan (an inotify event's): the folder's directory looks
 * deleted once the root has gone between the check of the user and the reading. */
static void test_unmounted_during_folder_scan(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	struct mm_delta *db = mm_delta_new();
	move_root_at(&b, "/b/mail/ex.org/alice/.Archive/new", 1);
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "Archive", b.now + 1000, db), 0);
	assert_null(move_at);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_int_equal(tombstones(&b), 0);
	root_back(&b);
	assert_int_equal(scan(&b, db), 0);
	assert_same_listing(&a, &b);
	assert_true(has_folder_dir(&b, "Archive"));
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The root goes away while a scan reads INBOX a second time (after a file was not
 * listed: one unlinked here): the second reading lists new/, then finds cur/ gone.
 * The message in cur/ is not expunged.  The user is absent then, so once the root is
 * back the unlinked one is fetched again too: a rare race, and nothing is lost. */
static void test_unmounted_during_second_reading(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	struct mm_delta *db = mm_delta_new();
	const char *f = find(&b, "INBOX", "17"); /* (b's own names) */
	assert_true(f && strstr(f, "/new/"));
	rename_to(f, "S"); /* into cur/ */
	assert_int_equal(scan(&b, db), 1);
	sync_to(&b, &a, db);
	mm_delta_clear(db);
	assert_true((f = find(&b, "INBOX", "17")) && strstr(f, "/new/"));
	assert_int_equal(unlink(f), 0);
	move_root_at(&b, "/b/mail/ex.org/alice/cur", 2); /* the first reading, then the second */
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "INBOX", b.now + 1000, db), 0);
	assert_null(move_at);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(tombstones(&b), 0);
	root_back(&b);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(tombstones(&b), 0);
	assert_int_equal(count_files(&b, "INBOX", "cur"), 1);
	/* the user was absent meanwhile: what its Maildir lacks when back is fetched
	 * again, not expunged (it may be a backup restored), this file too */
	assert_int_equal(mm_store_missing_count(b.s), 1);
	sync_to(&a, &b, d);
	assert_same_listing(&a, &b);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* stat(2) of paths holding stat_fail fails with stat_errno (an I/O error on the
 * directory that holds them, or a permission: this program's own stat, the store is
 * linked in). */
int stat(const char *restrict p, struct stat *restrict st)
{
	if (stat_fail && strstr(p, stat_fail)) {
		errno = stat_errno;
		return -1;
	}
	return (int)syscall(SYS_newfstatat, AT_FDCWD, p, st, 0);
}

/* readdir(3) of the directory readdir_fail_at names (opened by the store's opendir,
 * above) fails at once with EIO, as getdents(2) does on a directory block the disk
 * cannot read. */
struct dirent *readdir(DIR *d)
{
	static struct dirent *(*real)(DIR *);
	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "readdir");
	if (readdir_fail_at && d == readdir_fail_dir) {
		errno = EIO;
		return NULL;
	}
	return real(d);
}

/* Archive's directory is there but its cur/ and new/ cannot be looked at (EIO on the
 * directory's blocks, or EACCES for a daemon not running as root: a chmod/chown
 * going on).  docs/maildir.md: "A folder directory that cannot be looked at
 * (permissions, I/O errors) is left alone too; only one that is gone (ENOENT) is a
 * deleted folder."  The scan deleted Archive, and expunged its message, on every
 * node (scan_one_folder: mm_md_is_maildir() is false on any error, and only the
 * folder directory's own stat is checked for ENOENT). */
static void test_folder_unreadable_not_deleted(void **state)
{
	(void)state;
	for (int e = 0; e < 2; e++) {
		struct node a = {0}, b = {0};
		struct mm_delta *d = alice_on_two(&a, &b);
		struct mm_delta *db = mm_delta_new();
		stat_fail = "/b/mail/ex.org/alice/.Archive/"; /* (not .Archive itself) */
		stat_errno = e ? EACCES : EIO;
		b.now += 1000;
		assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "Archive", b.now, db), 0);
		assert_true(mm_store_scan(b.s, b.now, db) >= 0);
		stat_fail = NULL;
		assert_int_equal(mm_store_commit(b.s), 0);
		assert_int_equal(tombstones(&b), 0);
		assert_int_equal(mm_delta_count(db), 0);
		assert_true(has_folder_dir(&b, "Archive"));
		/* readable again: nothing to do */
		assert_int_equal(scan(&b, db), 0);
		assert_int_equal(mm_delta_count(db), 0);
		assert_same_listing(&a, &b);
		mm_delta_free(&db);
		mm_delta_free(&d);
		node_close(&a);
		node_close(&b);
		teardown(state);
		setup(state);
	}
}

/* A folder's new/ whose listing fails (getdents: EIO, on both readings): the files
 * it holds are not listed, and were taken for expunged on every node (read_folder
 * took readdir's NULL for the end of the directory). */
static void test_folder_listing_fails(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(count_files(&b, "Archive", "new"), 1);
	readdir_fail_at = "/b/mail/ex.org/alice/.Archive/new";
	b.now += 1000;
	assert_true(mm_store_scan_folder(b.s, "ex.org/alice", "Archive", b.now, db) >= 0);
	assert_true(mm_store_scan(b.s, b.now, db) >= 0);
	readdir_fail_at = NULL;
	readdir_fail_dir = NULL;
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(tombstones(&b), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Dovecot on b subscribes Drafts (IMAP SUBSCRIBE: subscriptions rewritten, temp file
 * + rename) and, before b's scan reads the file, a subscription change made on a
 * (INBOX subscribed) is merged: the commit rewrote the file from the CRDT alone, so
 * Drafts' subscription was thrown away on b and never reached any node.  The same
 * rule as for flags (docs/maildir.md, MSG_FLAGS: "Renaming it first would throw the
 * client's change away") should hold for the subscriptions file. */
static void test_subscribe_then_remote_subscribe(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	struct mm_delta *db = mm_delta_new();
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	char md[400];
	alice_dir(&a, md, sizeof md);
	const char *const on_a[] = {"Archive", "INBOX"};
	assert_int_equal(mm_md_subs_write(md, on_a, 2, &o), 0);
	assert_int_equal(scan(&a, d), 1);
	alice_dir(&b, md, sizeof md);
	const char *const on_b[] = {"Archive", "Drafts"}; /* Dovecot's SUBSCRIBE Drafts */
	assert_int_equal(mm_md_subs_write(md, on_b, 2, &o), 0);
	/* the merge's commit, before b's scan of the change; what that commit changed
	 * itself is pushed (mm_store_commit_delta) */
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_true(mm_store_merge_delta(a.s, mm_store_commit_delta(b.s)) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	scan(&b, db);
	sync_to(&b, &a, db); /* Drafts subscribed, here and on a */
	assert_true(subs_has(&a, "Drafts") && subs_has(&a, "INBOX") && subs_has(&a, "Archive"));
	assert_true(subs_has(&b, "Drafts") && subs_has(&b, "INBOX") && subs_has(&b, "Archive"));
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Dovecot rewrites the subscriptions file under its dotlock: it reads the file,
 * writes the new one into subscriptions.lock and renames that over the file.  A
 * commit that wrote the file meanwhile (a remote SUBSCRIBE INBOX merged) was undone
 * by that rename, and the next scan took INBOX's absence for an UNSUBSCRIBE, on every
 * node.  The commit now takes the same lock: while Dovecot holds it the file waits,
 * and then both changes are kept. */
static void test_subscriptions_lock_held(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	struct mm_delta *db = mm_delta_new();
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	char md[400], lock[600], host[256] = "";
	alice_dir(&a, md, sizeof md);
	const char *const on_a[] = {"Archive", "INBOX"};
	assert_int_equal(mm_md_subs_write(md, on_a, 2, &o), 0);
	assert_int_equal(scan(&a, d), 1);
	/* Dovecot on b, a live process of this host, holds the lock (SUBSCRIBE Drafts) */
	snprintf(lock, sizeof lock, "%s/ex.org/alice/subscriptions.lock", b.root);
	gethostname(host, sizeof host - 1);
	FILE *f = fopen(lock, "w");
	assert_non_null(f);
	fprintf(f, "%ld:%s\n", (long)getpid(), host);
	fclose(f);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_false(subs_has(&b, "INBOX")); /* waits */
	assert_true(mm_store_wants_commit(b.s));
	/* Dovecot's new file, renamed over the old one: its lock is gone with it */
	f = fopen(lock, "w");
	assert_non_null(f);
	fputs("V\t2\n\nArchive\nDrafts\n", f);
	fclose(f);
	char subs[600];
	snprintf(subs, sizeof subs, "%s/ex.org/alice/subscriptions", b.root);
	assert_int_equal(rename(lock, subs), 0);
	scan(&b, db);
	assert_true(subs_has(&b, "INBOX") && subs_has(&b, "Drafts") && subs_has(&b, "Archive"));
	sync_to(&b, &a, db);
	assert_true(subs_has(&a, "INBOX") && subs_has(&a, "Drafts") && subs_has(&a, "Archive"));
	/* the lock is not left behind */
	struct stat st;
	assert_int_equal(stat(lock, &st), -1);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* mailmesh remove-user: a removes alice; both Maildirs go, scans bring nothing back,
 * and a Maildir made later for alice is a new user that gets none of the old mail. */
static void test_user_removed(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	char dir[600];
	udir(&a, "INBOX", dir, sizeof dir);
	struct mm_md_uidlist ul;
	assert_int_equal(mm_md_uidlist_load(dir, &ul), 0);
	uint32_t old_uv = ul.uidvalidity;
	assert_int_equal(ul.exists, alice_imap_uids);
	mm_md_uidlist_clear(&ul);
	struct mm_store_removal rm = {0};
	assert_int_equal(mm_store_user_remove(a.s, "ex.org/nobody", a.now, d, &rm), -ENOENT);
	assert_int_equal(mm_store_user_describe(a.s, "ex.org/alice", &rm), 0);
	assert_int_equal(rm.messages, 3);
	assert_int_equal(rm.folders, 3); /* INBOX, Archive, Drafts */
	assert_int_equal(mm_delta_count(d), 0);
	a.now += 1000;
	assert_true(mm_store_user_remove(a.s, "ex.org/alice", a.now, d, &rm) > 0);
	assert_int_equal(rm.messages, 3);
	assert_false(rm.absent);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_false(alice_maildir_there(&a));
	sync_to(&a, &b, d);
	assert_false(alice_maildir_there(&b));
	assert_int_equal(mm_store_missing_count(b.s), 0);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&a, db), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	/* reopened: the index says the Maildir is gone by design, not absent */
	node_close(&b);
	node_open_cfg(&b, "b", 2, alice_imap_uids);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	/* a new alice, on b */
	dovecot_makes_alice(&b, "1700000200.M1P1.b", "Subject: hello\r\n\r\nnew alice\r\n");
	assert_int_equal(scan(&b, db), 2); /* INBOX made again, one delivery */
	sync_to(&b, &a, db);
	assert_same_listing(&a, &b);
	assert_int_equal(count_files(&a, "INBOX", "new") + count_files(&a, "INBOX", "cur"), 1);
	assert_false(has_folder_dir(&a, "Archive"));
	assert_false(has_folder_dir(&a, "Drafts"));
	assert_int_equal(mm_store_missing_count(a.s), 0);
	if (alice_imap_uids) {
		/* the same new UIDVALIDITY on both, not the old one */
		uint32_t uv[2];
		for (int k = 0; k < 2; k++) {
			udir(k ? &b : &a, "INBOX", dir, sizeof dir);
			assert_int_equal(mm_md_uidlist_load(dir, &ul), 0);
			assert_int_equal(ul.n, 1);
			uv[k] = ul.uidvalidity;
			mm_md_uidlist_clear(&ul);
		}
		assert_int_equal(uv[0], uv[1]);
		assert_int_not_equal(uv[0], old_uv);
	}
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The same with IMAP UIDs listed in dovecot-uidlist: the new alice's INBOX gets a new
 * UIDVALIDITY and none of the old UIDs. */
static void test_user_removed_uids(void **state)
{
	alice_imap_uids = true;
	test_user_removed(state);
	alice_imap_uids = false;
}

/* a removes alice while b delivers into `folder` (b's scan of it in *db_r, not yet
 * sent); the removal is merged on b.  Returns a's removal delta. */
static struct mm_delta *removal_raced(struct node *a, struct node *b, const char *folder, struct mm_delta **db_r)
{
	struct mm_delta *d = alice_on_two(a, b);
	*db_r = mm_delta_new();
	deliver(b, folder, "1700000300.M1P1.b", "Subject: late\r\n\r\nraced the removal\r\n", 1700000300);
	assert_int_equal(scan(b, *db_r), 1);
	a->now += 1000;
	assert_true(mm_store_user_remove(a->s, "ex.org/alice", a->now, d, NULL) > 0);
	assert_int_equal(mm_store_commit(a->s), 0);
	assert_false(alice_maildir_there(a));
	sync_to(a, b, d);
	return d;
}

/* A delivery on b that b had not sent when a removed alice survives, with INBOX and
 * the user, on both; the rest is gone. */
static void test_user_removed_concurrent_delivery(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *db, *d = removal_raced(&a, &b, "INBOX", &db);
	sync_to(&b, &a, db);
	assert_true(alice_maildir_there(&a));
	assert_true(alice_maildir_there(&b));
	/* (b's subscriptions file was written empty, a's Maildir was made without one) */
	assert_false(subs_has(&b, "Archive"));
	assert_int_equal(count_files(&a, "INBOX", "new") + count_files(&a, "INBOX", "cur"), 1);
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 1);
	assert_false(has_folder_dir(&b, "Archive"));
	assert_false(has_folder_dir(&a, "Archive"));
	assert_false(has_folder_dir(&b, "Drafts"));
	mm_delta_clear(db);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(scan(&a, db), 0);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Removed while b's copy is away (an unmounted disk): nothing is touched there, and
 * when the Maildir is back its files and then the Maildir go, with nothing sent
 * back. */
static void test_user_removed_while_absent(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	root_away(&b);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&b, db), 0);
	a.now += 1000;
	assert_true(mm_store_user_remove(a.s, "ex.org/alice", a.now, d, NULL) > 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	sync_to(&a, &b, d);
	assert_false(alice_maildir_there(&b)); /* not made again */
	root_back(&b);
	assert_true(alice_maildir_there(&b));
	assert_int_equal(scan(&b, db), 0);
	assert_false(alice_maildir_there(&b));
	assert_int_equal(mm_delta_count(db), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A Maildir holding a file mailmesh does not own (a home directory used as the
 * Maildir: a Sieve script) is kept, INBOX is not made again by the scans, and it goes
 * once that file does. */
static void test_user_removed_kept_while_foreign(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	char p[600];
	snprintf(p, sizeof p, "%s/ex.org/alice/.dovecot.sieve", b.root);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs("keep;\n", f);
	fclose(f);
	a.now += 1000;
	assert_true(mm_store_user_remove(a.s, "ex.org/alice", a.now, d, NULL) > 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	sync_to(&a, &b, d);
	assert_true(alice_maildir_there(&b));
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 0);
	assert_false(has_folder_dir(&b, "Archive"));
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_true(alice_maildir_there(&b));
	assert_int_equal(unlink(p), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_false(alice_maildir_there(&b));
	assert_int_equal(mm_delta_count(db), 0);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

static bool inbox_visible(const struct node *n)
{
	struct mm_user *u = mm_state_user(n->st, "ex.org/alice", false);
	return u && mm_user_folder_visible(u, "INBOX");
}

/* Kept (a file mailmesh does not own), then b restarts: its first scan must not make
 * INBOX again (that would bring alice back on every node), and the Maildir goes once
 * the file does. */
static void test_user_removed_kept_then_restart(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	char p[600];
	snprintf(p, sizeof p, "%s/ex.org/alice/.dovecot.sieve", b.root);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs("keep;\n", f);
	fclose(f);
	a.now += 1000;
	assert_true(mm_store_user_remove(a.s, "ex.org/alice", a.now, d, NULL) > 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	sync_to(&a, &b, d);
	assert_true(alice_maildir_there(&b));
	node_close(&b);
	node_open_cfg(&b, "b", 2, alice_imap_uids);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_false(inbox_visible(&b));
	assert_int_equal(unlink(p), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_false(alice_maildir_there(&b));
	assert_int_equal(mm_delta_count(db), 0);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The survivor of a delivery racing the removal: the node that removed alice makes
 * INBOX again when it learns of it, so that expunging it later (over IMAP, on b) does
 * not take the Maildir with it, on either node. */
static void test_user_removed_survivor_goes_on(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *db, *d = removal_raced(&a, &b, "INBOX", &db);
	assert_true(mm_store_merge_delta(a.s, db) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	/* a made INBOX again in that commit, for the daemon to push */
	assert_int_equal(mm_delta_count(mm_store_commit_delta(a.s)), 1);
	assert_true(inbox_visible(&a));
	struct mm_delta *dr = full_delta(&a);
	sync_to(&a, &b, dr);
	mm_delta_clear(db);
	assert_int_equal(unlink(find(&b, "INBOX", "1700000300.")), 0);
	assert_int_equal(scan(&b, db), 1);
	sync_to(&b, &a, db);
	assert_true(alice_maildir_there(&a));
	assert_true(alice_maildir_there(&b));
	assert_true(inbox_visible(&a));
	assert_true(inbox_visible(&b));
	mm_delta_free(&dr);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Removed while b's Maildir was away, which never comes back (a disk replaced): the
 * Maildir Dovecot makes for a new alice at a login is hers, not removed, and her first
 * delivery there makes her INBOX on every node. */
static void test_user_removed_away_then_new_user(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	root_away(&b);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&b, db), 0);
	a.now += 1000;
	assert_true(mm_store_user_remove(a.s, "ex.org/alice", a.now, d, NULL) > 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	sync_to(&a, &b, d);
	char md[600], p[700];
	alice_dir(&b, md, sizeof md);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(md, "INBOX", &o), 0);
	snprintf(p, sizeof p, "%s/dovecot.index.log", md);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs("log", f);
	fclose(f);
	assert_int_equal(scan(&b, db), 1); /* INBOX made */
	assert_true(alice_maildir_there(&b));
	assert_int_equal(access(p, F_OK), 0);
	assert_true(inbox_visible(&b));
	deliver(&b, "INBOX", "1700000400.M1P1.b", "Subject: hi\r\n\r\nnew alice\r\n", 1700000400);
	assert_int_equal(scan(&b, db), 1);
	sync_to(&b, &a, db);
	assert_true(alice_maildir_there(&a));
	assert_int_equal(count_files(&a, "INBOX", "new") + count_files(&a, "INBOX", "cur"), 1);
	char cmd[1500];
	snprintf(cmd, sizeof cmd, "rm -rf '%s.away'", b.root);
	assert_int_equal(system(cmd), 0);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* b's Maildir away while a deletes Archive (an IMAP DELETE), and b restarted before the
 * Maildir is back: b must still know the user was away (its index says so), so the
 * Maildir back is reconciled and Archive stays deleted, on both. */
static void test_folder_deleted_while_away_then_restart(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	root_away(&b);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&b, db), 0);
	char cmd[1500];
	snprintf(cmd, sizeof cmd, "rm -rf '%s/ex.org/alice/.Archive'", a.root);
	assert_int_equal(system(cmd), 0);
	assert_true(scan(&a, d) > 0);
	sync_to(&a, &b, d);
	node_close(&b);
	root_back(&b);
	node_open_cfg(&b, "b", 2, alice_imap_uids);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_false(has_folder_dir(&b, "Archive"));
	assert_false(has_folder_dir(&a, "Archive"));
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The same for a removal: b restarted while alice's Maildir was away, then it is back:
 * removed, nothing made again. */
static void test_user_removed_while_away_then_restart(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	root_away(&b);
	struct mm_delta *db = mm_delta_new();
	assert_int_equal(scan(&b, db), 0);
	a.now += 1000;
	assert_true(mm_store_user_remove(a.s, "ex.org/alice", a.now, d, NULL) > 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	sync_to(&a, &b, d);
	node_close(&b);
	root_back(&b);
	node_open_cfg(&b, "b", 2, alice_imap_uids);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_int_equal(mm_delta_count(db), 0);
	assert_false(alice_maildir_there(&b));
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* unlink(2) and rename(2) of paths holding fail_path fail with EIO (this program's
 * own: the store is linked in statically). */
static const char *fail_path;
int unlink(const char *p)
{
	if (fail_path && strstr(p, fail_path)) {
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_unlink, p);
}
int rename(const char *a, const char *b)
{
	if (fail_path && strstr(a, fail_path)) {
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_rename, a, b);
}

/* An expunged file that cannot be unlinked (EIO once) stays indexed, so the next scan
 * does not take it for new mail (which would bring it back, and here undo a
 * removal): it retries, and then the Maildir goes. */
static void test_user_removed_unlink_fails(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	a.now += 1000;
	fail_path = "1700000000.M1P1.a";
	assert_true(mm_store_user_remove(a.s, "ex.org/alice", a.now, d, NULL) > 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_true(alice_maildir_there(&a)); /* kept: the file is there */
	sync_to(&a, &b, d);
	assert_false(alice_maildir_there(&b));
	struct mm_delta *da = mm_delta_new();
	assert_int_equal(scan(&a, da), 0); /* fails again */
	assert_int_equal(mm_delta_count(da), 0);
	assert_false(inbox_visible(&a));
	assert_true(alice_maildir_there(&a));
	/* after a restart too (the index says which file it was) */
	fail_path = NULL;
	node_close(&a);
	node_open_cfg(&a, "a", 1, alice_imap_uids);
	assert_int_equal(scan(&a, da), 0);
	assert_int_equal(mm_delta_count(da), 0);
	assert_false(alice_maildir_there(&a));
	mm_delta_free(&da);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A remote expunge whose unlink fails here, then Dovecot renames the file (new/ to
 * cur/ with \Seen): the retry follows the new name, and the message does not come
 * back as new mail. */
static void test_expunged_unlink_fails_then_renamed(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	struct mm_delta *db = mm_delta_new();
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "rm %s/ex.org/alice/new/1700000000.*", b.root);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(scan(&b, db), 1);
	fail_path = "1700000000.M1P1.a";
	sync_to(&b, &a, db);
	fail_path = NULL;
	assert_non_null(find(&a, "INBOX", "1700000000.M1P1.a"));
	rename_to(find(&a, "INBOX", "1700000000.M1P1.a"), "S");
	assert_int_equal(scan(&a, d), 0);
	assert_null(find(&a, "INBOX", "1700000000.M1P1.a"));
	assert_int_equal(scan(&a, d), 0);
	assert_int_equal(mm_delta_count(d), 0);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A delivery racing the removal that lands in another folder than INBOX: the user
 * counts as removed, but that folder keeps the Maildir; remove-user again takes it. */
static void test_user_removed_survivor_elsewhere(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *db, *d = removal_raced(&a, &b, "Archive", &db);
	sync_to(&b, &a, db);
	assert_true(alice_maildir_there(&a));
	assert_true(alice_maildir_there(&b));
	mm_delta_clear(d);
	a.now += 1000;
	assert_true(mm_store_user_remove(a.s, "ex.org/alice", a.now, d, NULL) > 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	sync_to(&a, &b, d);
	assert_false(alice_maildir_there(&a));
	assert_false(alice_maildir_there(&b));
	mm_delta_clear(d);
	assert_int_equal(mm_store_user_remove(a.s, "ex.org/alice", a.now, d, NULL), -EALREADY);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Receives `msg` on n by its id and stages it. */
static void stage_bytes(struct node *n, const char *msg)
{
	uint8_t id[MM_ID_LEN];
	mm_body_id(msg, strlen(msg), id);
	struct mm_body_writer *w = NULL;
	assert_int_equal(mm_store_body_begin_id(n->s, "ex.org/alice", id, strlen(msg), 0, &w), 0);
	assert_int_equal(mm_store_body_write(w, msg, strlen(msg)), 0);
	assert_int_equal(mm_store_body_stage(&w), 0);
}

static void place_job(struct node *n, int placed)
{
	struct mm_store_place *job = NULL;
	assert_int_equal(mm_store_place_begin(n->s, &job), 1);
	mm_store_place_run(job);
	assert_int_equal(mm_store_place_end(n->s, &job), placed);
}

static const char copied_msg[] = "Subject: copied\r\n\r\nsame bytes in two folders\r\n";

/* Nodes a and b; a holds copied_msg in INBOX and Work (an IMAP COPY), delivered with
 * the messages `more` (NULL-terminated) into INBOX, scanned into d and merged into b. */
static void copied_pair(struct node *a, struct node *b, struct mm_delta *d, const char *const *more)
{
	node_open(a, "a", 1);
	node_open(b, "b", 2);
	deliver(a, "INBOX", "1700000000.M1P1.mx", copied_msg, 1600000000);
	deliver(a, "Work", "1700000001.M1P1.mx", copied_msg, 1600000000);
	int n = 2;
	for (; more && more[n - 2]; n++) {
		char base[64];
		snprintf(base, sizeof base, "17000000%02d.M1P1.mx", n);
		deliver(a, "INBOX", base, more[n - 2], 1600000000 + n);
	}
	assert_true(scan(a, d) >= n);
	assert_true(mm_store_merge_delta(b->s, d) >= 0);
	assert_int_equal(mm_store_commit(b->s), 0);
}

/* Two messages with the same bytes (an IMAP COPY into another folder): one body
 * received places both in the same commit (the second from a local copy of the first),
 * instead of leaving the copy to a later commit a quiet node might not make. */
static void test_copy_placed_with_original(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = mm_delta_new();
	copied_pair(&a, &b, d, NULL);
	assert_int_equal(mm_store_missing_count(b.s), 2);
	stage_bytes(&b, copied_msg);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 1);
	assert_int_equal(count_files(&b, "Work", "new") + count_files(&b, "Work", "cur"), 1);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The same with placements off the store's thread: the local copy a commit makes
 * while a batch is out is staged, not placed beside it, and goes with the next. */
static void test_copy_while_placing(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = mm_delta_new();
	const char *one = "Subject: one\r\n\r\nbody one\r\n", *two = "Subject: two\r\n\r\nbody two\r\n";
	const char *const more[] = {one, two, NULL};
	copied_pair(&a, &b, d, more);
	stage_bytes(&b, copied_msg);
	stage_bytes(&b, one);
	place_job(&b, 2); /* the copy for the other folder waits for a commit */
	stage_bytes(&b, two);
	struct mm_store_place *job = NULL;
	assert_int_equal(mm_store_place_begin(b.s, &job), 1);
	assert_int_equal(mm_store_commit(b.s), 0); /* makes the copy: staged */
	assert_int_equal(mm_store_staged_count(b.s), 1);
	mm_store_place_run(job);
	assert_int_equal(mm_store_place_end(b.s, &job), 1);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_staged_count(b.s), 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 3);
	assert_int_equal(count_files(&b, "Work", "new") + count_files(&b, "Work", "cur"), 1);
	assert_int_equal(count_files(&b, "Work", "tmp") + count_files(&b, "INBOX", "tmp"), 0);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* (test_crash_between_commit_and_rename, below, also covers recover_tmp: bodies a
 * killed run left in tmp/ are taken back at the next open.) */

/* n small messages in a's INBOX (INTERNALDATE 1600000000 + i), scanned into d. */
static void small_messages(struct node *a, int n, struct mm_delta *d)
{
	char base[64], body[64];
	for (int i = 0; i < n; i++) {
		snprintf(base, sizeof base, "17000000%02d.M1P1.mx", i);
		snprintf(body, sizeof body, "Subject: %d\r\n\r\nbody %d\r\n", i, i);
		deliver(a, "INBOX", base, body, 1600000000 + i);
	}
	assert_true(scan(a, d) >= n);
}

/* Nodes a and b, n small messages on a whose records b has committed but whose
 * bodies it lacks.  Returns the delta (the caller frees it). */
static struct mm_delta *known_not_received(struct node *a, struct node *b, int n)
{
	node_open(a, "a", 1);
	node_open(b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	small_messages(a, n, d);
	assert_true(mm_store_merge_delta(b->s, d) >= 0);
	assert_int_equal(mm_store_commit(b->s), 0);
	return d;
}

/* A batch large enough for the one-syncfs path: every file placed with its contents
 * and INTERNALDATE, as a copy of the source Maildir. */
static void test_stage_batch(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	small_messages(&a, 20, d);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	struct xfer x = {&a, &b, 0, 0};
	assert_int_equal(mm_store_missing(b.s, stage_cb, &x), 0);
	assert_int_equal(x.n, 20);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 20);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

static int open_fds(void)
{
	int n = 0;
	DIR *dir = opendir("/proc/self/fd");
	assert_non_null(dir);
	while (readdir(dir))
		n++;
	closedir(dir);
	return n;
}

/* While the daemon gathers (bodies still streaming in), staged bodies wait: neither a
 * flush nor a commit places them, and they hold no descriptors (sealed and closed when
 * staged), so a batch is not bounded by the open-file limit.  A kill -9 while they wait
 * loses nothing (the next open takes them back from tmp/); once the gathering ends, one
 * flush places them all, each with its INTERNALDATE as mtime. */
static void test_stage_gather(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = known_not_received(&a, &b, 40);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* the process that is killed while it gathers */
		mm_store_gather(b.s, true);
		int fds = open_fds(), bad = 0;
		bad |= mm_store_staged_since(b.s) != 0;
		struct xfer x = {&a, &b, 0, 0};
		bad |= (mm_store_missing(b.s, stage_cb, &x) != 0 || x.n != 40) << 1;
		bad |= (open_fds() != fds) << 2;
		bad |= (mm_store_staged_since(b.s) == 0) << 3;
		bad |= (mm_store_flush(b.s) != 0 || mm_store_commit(b.s) != 0) << 4;
		bad |= (mm_store_staged_count(b.s) != 40) << 5;
		bad |= (count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur") != 0) << 6;
		_exit(bad);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	node_close(&b);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 40);
	/* taken back from tmp/, not fetched again */
	node_open(&b, "b", 2);
	assert_int_equal(mm_store_staged_count(b.s), 40);
	mm_store_gather(b.s, true);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 0);
	mm_store_gather(b.s, false);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_staged_count(b.s), 0);
	assert_int_equal(mm_store_staged_since(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 40);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_same_listing(&a, &b);

	node_close(&b);
	mm_delta_free(&d);
	node_close(&a);
}

struct wanted {
	int n;
	uint8_t key[3][MM_KEY_LEN], id[3][MM_ID_LEN];
	uint64_t size[3];
};

static int collect_cb(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                      const uint8_t body[MM_ID_LEN], uint64_t size)
{
	(void)user;
	struct wanted *wa = arg;
	if (wa->n < 3) {
		memcpy(wa->key[wa->n], key, MM_KEY_LEN);
		memcpy(wa->id[wa->n], body, MM_ID_LEN);
		wa->size[wa->n++] = size;
	}
	return 0;
}

/* known_not_received with three messages, whose bodies b lacks, listed in *wa. */
static struct mm_delta *three_wanted(struct node *a, struct node *b, struct wanted *wa)
{
	struct mm_delta *d = known_not_received(a, b, 3);
	assert_int_equal(mm_store_missing(b->s, collect_cb, wa), 0);
	assert_int_equal(wa->n, 3);
	return d;
}

/* Receives a's body for wa entry i into a writer begun by id on b. */
enum damage { INTACT, FLIPPED, SHORT }; /* what receive_by_id does to the bytes */

static struct mm_body_writer *receive_by_id(struct node *a, struct node *b, const struct wanted *wa, int i,
                                            enum damage dmg, unsigned flags)
{
	struct mm_body_writer *w = NULL;
	assert_int_equal(mm_store_body_begin_id(b->s, "ex.org/alice", wa->id[i], wa->size[i], flags, &w), 0);
	assert_int_equal(mm_store_body_deferred(w), (flags & MM_STORE_BODY_DEFER) != 0);
	int fd;
	uint64_t sz;
	char buf[4096];
	assert_int_equal(mm_store_body_open(a->s, "ex.org/alice", wa->key[i], &fd, &sz), 0);
	ssize_t n = read(fd, buf, sizeof buf);
	close(fd);
	assert_int_equal(n, (ssize_t)sz);
	if (dmg == FLIPPED)
		buf[n - 1] ^= 1;
	assert_int_equal(mm_store_body_write(w, buf, (size_t)(dmg == SHORT ? n - 1 : n)), 0);
	return w;
}

/* The three bodies of wa, received intact from a and staged on b. */
static void stage_three(struct node *a, struct node *b, const struct wanted *wa)
{
	for (int i = 0; i < 3; i++) {
		struct mm_body_writer *w = receive_by_id(a, b, wa, i, INTACT, MM_STORE_BODY_VERIFIED);
		assert_int_equal(mm_store_body_stage(&w), 0);
	}
}

static struct mm_body_writer *receive_deferred(struct node *a, struct node *b, const struct wanted *wa, int i,
                                               bool corrupt)
{
	return receive_by_id(a, b, wa, i, corrupt ? FLIPPED : INTACT, MM_STORE_BODY_DEFER);
}

/* Bodies received by id can be kept in memory and written out apart (the daemon does
 * that on its thread pool).  A body is checked before anything is written: a wrong
 * one leaves no file.  While it is being written it counts as staged: it is not
 * begun again nor offered to the fetcher.  A deferred body staged without the
 * separate steps is written there and then. */
static void test_deferred_writer(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_wanted(&a, &b, &wa);

	struct mm_body_writer *w = receive_deferred(&a, &b, &wa, 0, false), *w2 = NULL;
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0); /* in memory */
	assert_int_equal(mm_store_body_prepare(&w), 1);
	assert_int_equal(mm_store_body_begin_id(b.s, "ex.org/alice", wa.id[0], wa.size[0], MM_STORE_BODY_DEFER, &w2), -ENOENT);
	int c = 0;
	assert_int_equal(mm_store_missing(b.s, count_cb, &c), 0);
	assert_int_equal(c, 2);
	assert_int_equal(mm_store_body_write_out(w), 0);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 1);
	assert_int_equal(mm_store_body_stage(&w), 0);
	assert_null(w);

	w = receive_deferred(&a, &b, &wa, 1, true);
	assert_int_equal(mm_store_body_prepare(&w), -EBADMSG);
	assert_null(w);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 1);

	w = receive_deferred(&a, &b, &wa, 2, false);
	assert_int_equal(mm_store_body_stage(&w), 0);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 2);

	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 2);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_int_equal(mm_store_missing_count(b.s), 1); /* the wrong one: asked for again */
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A body whose caller verifies it (MM_STORE_BODY_VERIFIED, as the sync sessions do)
 * is not hashed again by the store, whose check is then its size: a short one is
 * refused and leaves no file, deferred or written as it comes; one of the right size
 * is taken as the caller vouches for it (a wrong byte in it is the caller's to find). */
static void test_verified_writer(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_wanted(&a, &b, &wa);
	const unsigned v = MM_STORE_BODY_VERIFIED;

	struct mm_body_writer *w = receive_by_id(&a, &b, &wa, 0, SHORT, v | MM_STORE_BODY_DEFER);
	assert_int_equal(mm_store_body_prepare(&w), -EBADMSG);
	assert_null(w);
	w = receive_by_id(&a, &b, &wa, 1, SHORT, v);
	assert_int_equal(mm_store_body_stage(&w), -EBADMSG);
	assert_null(w);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);

	w = receive_by_id(&a, &b, &wa, 0, INTACT, v | MM_STORE_BODY_DEFER);
	assert_int_equal(mm_store_body_prepare(&w), 1);
	assert_int_equal(mm_store_body_write_out(w), 0);
	assert_int_equal(mm_store_body_stage(&w), 0);
	w = receive_by_id(&a, &b, &wa, 1, INTACT, v);
	assert_int_equal(mm_store_body_stage(&w), 0);
	w = receive_by_id(&a, &b, &wa, 2, FLIPPED, v); /* not hashed: taken */
	assert_int_equal(mm_store_body_stage(&w), 0);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 3);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* three_wanted, and the three bodies received (verified) and staged on b. */
static struct mm_delta *three_staged(struct node *a, struct node *b, struct wanted *wa)
{
	struct mm_delta *d = three_wanted(a, b, wa);
	stage_three(a, b, wa);
	return d;
}

/* The watch event of a file the store placed itself is recognised once (no scan of
 * the folder for it); a file moved away before its event came is not. */
static void test_own_event(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_staged(&a, &b, &wa);
	assert_int_equal(mm_store_flush(b.s), 0);
	char dir[600], newd[700], names[3][300];
	udir(&b, "INBOX", dir, sizeof dir);
	snprintf(newd, sizeof newd, "%s/new", dir);
	DIR *dd = opendir(newd);
	assert_non_null(dd);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(dd)))
		if (e->d_name[0] != '.' && n < 3)
			snprintf(names[n++], sizeof names[0], "%s", e->d_name);
	closedir(dd);
	assert_int_equal(n, 3);

	assert_true(mm_store_own_event(b.s, newd, names[0]));
	assert_false(mm_store_own_event(b.s, newd, names[0])); /* once */
	char from[1000], to[1000];
	snprintf(from, sizeof from, "%s/%s", newd, names[1]);
	snprintf(to, sizeof to, "%s/cur/%s:2,S", dir, names[1]);
	assert_int_equal(rename(from, to), 0); /* a client read it before the event came */
	assert_false(mm_store_own_event(b.s, newd, names[1]));
	assert_false(mm_store_own_event(b.s, newd, "1700000000.M1P1.elsewhere,S=10"));
	assert_true(mm_store_own_event(b.s, newd, names[2]));
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A placement whose file work runs apart (the daemon's thread pool): while it is out
 * its bodies count as staged (not begun again, not missing), other placements wait,
 * and what changed meanwhile is applied when it ends: a message expunged loses the
 * file just placed, one whose flags changed gets them. */
static void test_place_async(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_staged(&a, &b, &wa);
	struct mm_store_place *job = NULL;
	assert_int_equal(mm_store_place_begin(b.s, &job), 1);
	assert_non_null(job);
	assert_true(mm_store_placing(b.s));
	assert_int_equal(mm_store_staged_count(b.s), 0);
	struct mm_store_place *job2 = NULL;
	assert_int_equal(mm_store_place_begin(b.s, &job2), 0); /* one at a time */
	assert_null(job2);
	struct mm_body_writer *w2 = NULL;
	assert_int_equal(mm_store_body_begin_id(b.s, "ex.org/alice", wa.id[0], wa.size[0], 0, &w2), -ENOENT);
	int c = 0;
	assert_int_equal(mm_store_missing(b.s, count_cb, &c), 0);
	assert_int_equal(c, 0); /* not offered to the fetcher */

	/* meanwhile a expunges one message and flags another, and b merges both */
	struct mm_delta *e = mm_delta_new();
	unlink(find(&a, "INBOX", "1700000001."));
	rename_to(find(&a, "INBOX", "1700000002."), "S");
	assert_int_equal(scan(&a, e), 2);
	assert_true(mm_store_merge_delta(b.s, e) >= 0);
	assert_int_equal(mm_store_flush(b.s), 0);  /* waits for the job */
	assert_int_equal(mm_store_commit(b.s), 0); /* places nothing either */
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 0);

	mm_store_place_run(job);
	assert_int_equal(mm_store_place_end(b.s, &job), 2);
	assert_null(job);
	assert_false(mm_store_placing(b.s));
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_non_null(find(&b, "INBOX", "1600000000."));
	assert_null(find(&b, "INBOX", "1600000001."));
	const char *f2 = find(&b, "INBOX", "1600000002.");
	assert_non_null(f2);
	assert_non_null(strstr(f2, "/cur/"));
	assert_string_equal(strrchr(f2, ':'), ":2,S");
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&e);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

static bool lock_held(const struct node *n)
{
	char d[600], p[700];
	udir(n, "INBOX", d, sizeof d);
	snprintf(p, sizeof p, "%s/dovecot-uidlist.lock", d);
	return access(p, F_OK) == 0;
}

/* With IMAP UIDs, the job lists its files in dovecot-uidlist under Dovecot's lock and
 * lets the lock go once they are in place, in place_run: a UID pass on the store's
 * thread that waited for it would otherwise keep the job from ending. */
static void test_place_async_uids(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open_cfg(&a, "a", 1, true);
	node_open_cfg(&b, "b", 2, true);
	struct mm_delta *d = mm_delta_new();
	small_messages(&a, 3, d);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	struct wanted wa = {0};
	assert_int_equal(mm_store_missing(b.s, collect_cb, &wa), 0);
	assert_int_equal(wa.n, 3);
	stage_three(&a, &b, &wa);
	struct mm_store_place *job = NULL;
	assert_int_equal(mm_store_place_begin(b.s, &job), 1);
	assert_true(lock_held(&b));
	mm_store_place_run(job);
	assert_false(lock_held(&b));
	assert_int_equal(mm_store_place_end(b.s, &job), 3);
	assert_int_equal(mm_store_commit(b.s), 0);
	for (int i = 0; i < 3; i++) {
		char prefix[32];
		snprintf(prefix, sizeof prefix, "16000000%02d.", i);
		assert_non_null(find(&b, "INBOX", prefix));
	}
	char dir[600];
	udir(&b, "INBOX", dir, sizeof dir);
	struct mm_md_uidlist ul;
	assert_int_equal(mm_md_uidlist_load(dir, &ul), 0);
	assert_int_equal(ul.n, 3);
	mm_md_uidlist_clear(&ul);
	assert_same_listing(&a, &b);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A child process stages b's missing bodies (from a) and exits without placing
 * them: what a kill -9 right after staging leaves (n bodies staged, in tmp/). */
static void stage_and_die(struct node *a, struct node *b, int n)
{
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct xfer x = {a, b, 0, 0};
		int r = mm_store_missing(b->s, stage_cb, &x);
		_exit(r == 0 && x.n == n && mm_store_staged_count(b->s) == (size_t)n ? 0 : 1);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* kill -9 between the LMDB commit and the renames of a batch: the records are durable,
 * the bodies only in tmp/.  After the restart the messages are missing (fetched again),
 * the tmp/ leftovers are not taken for messages, and once the bodies come again each
 * message has exactly one file. */
static void test_crash_between_commit_and_rename(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = three_merged(&a, &b);
	assert_int_equal(mm_store_commit(b.s), 0); /* the batch's LMDB commit */
	uint8_t r1[MM_HASH_LEN], r2[MM_HASH_LEN];
	mm_state_root(b.st, r1);
	stage_and_die(&a, &b, 3); /* stages the batch and is gone before placing it */
	node_close(&b);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 3); /* what the crash left */
	/* beside them: a copy of one of ours cut short by the crash, and Dovecot's own */
	char tdir[512], src[1024], dst[1024];
	udir(&b, "INBOX", tdir, sizeof tdir);
	strcat(tdir, "/tmp");
	DIR *dd = opendir(tdir);
	assert_non_null(dd);
	struct dirent *de;
	while ((de = readdir(dd)) && !strstr(de->d_name, ".mm_"))
		;
	assert_non_null(de);
	const char *mm = strstr(de->d_name, ".mm_");
	snprintf(src, sizeof src, "%s/%s", tdir, de->d_name);
	snprintf(dst, sizeof dst, "%s/1.M999P999%s", tdir, mm);
	closedir(dd);
	FILE *f = fopen(dst, "w");
	assert_non_null(f);
	fputs("Subject: cut", f);
	fclose(f);
	snprintf(dst, sizeof dst, "%s/1700000009.M5P5.mx", tdir);
	assert_non_null(f = fopen(dst, "w"));
	fputs("Subject: Dovecot's\r\n\r\nbeing delivered\r\n", f);
	fclose(f);
	snprintf(dst, sizeof dst, "%s/1.M6P6.mm_ab", tdir); /* looks like ours, too short: left */
	assert_non_null(f = fopen(dst, "w"));
	fclose(f);
	node_open(&b, "b", 2);
	mm_state_root(b.st, r2);
	assert_memory_equal(r1, r2, MM_HASH_LEN);
	/* the three complete bodies are taken back from tmp/ (not fetched again), the cut
	 * one removed, Dovecot's left alone */
	assert_int_equal(mm_store_staged_count(b.s), 3);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 5);
	struct xfer x = {&a, &b, 0, 0};
	assert_int_equal(mm_store_missing(b.s, stage_cb, &x), 0);
	assert_int_equal(x.n, 0);
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 0);
	assert_int_equal(scan(&b, NULL), 0); /* tmp/ is not a message; the commit places them */
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_staged_count(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 2);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 3);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	mm_state_root(b.st, r2);
	assert_memory_equal(r1, r2, MM_HASH_LEN);
	/* and a restart sees the same: no duplicate, nothing missing, no local change */
	node_close(&b);
	node_open(&b, "b", 2);
	assert_int_equal(scan(&b, NULL), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 3);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* kill -9 after bodies were staged and before their records were ever committed (a
 * sync session stages what it receives; the flush commits the records first): the
 * restarted node knows neither the records nor, so, the bodies missing, and its start
 * does not look in that tmp/.  Once the records come again and the bodies with them,
 * the leftovers must not stay in tmp/ for good (found by it_daemon_torture: a 400 KB
 * body left in tmp/ after a kill during a transfer; Dovecot removes such files only
 * after 36 hours).  Either taken back or removed: tmp/ ends empty, each message once. */
static void test_crash_staged_before_records_durable(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = three_merged(&a, &b); /* merged, not committed */
	stage_and_die(&a, &b, 3); /* stages the bodies and is gone before any commit */
	node_close(&b); /* (no commit: the parent never made one either) */
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 3); /* what the crash left */
	usleep(20000); /* (a restart takes longer than a tick of the files' ctime clock) */
	node_open(&b, "b", 2);
	assert_int_equal(mm_store_missing_count(b.s), 0); /* nothing known: nothing missing */
	assert_int_equal(mm_store_staged_count(b.s), 0);
	/* the records come again, then their bodies */
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0); /* takes them back from tmp/ and places them */
	assert_int_equal(count_files(&b, "INBOX", "new"), 3);
	struct xfer x = {&a, &b, 0, 0};
	assert_int_equal(mm_store_missing(b.s, stage_cb, &x), 0);
	assert_int_equal(x.n, 0); /* not fetched again */
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 3);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A staged body whose message is expunged before the flush is dropped, not placed;
 * a store freed with staged bodies (a stop without commit) leaves no tmp/ file. */
static void test_stage_then_expunge(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	three_messages(&a, d);
	sync_to(&a, &b, d); /* b has all three */
	mm_delta_free(&d);
	d = mm_delta_new();
	deliver(&a, "INBOX", "1700000003.M1P1.mx", "Subject: four\r\n\r\nbody four\r\n", 1600000003);
	deliver(&a, "INBOX", "1700000004.M1P1.mx", "Subject: five\r\n\r\nbody five\r\n", 1600000004);
	assert_int_equal(scan(&a, d), 2);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	struct xfer x = {&a, &b, 0, 0};
	assert_int_equal(mm_store_missing(b.s, stage_cb, &x), 0);
	assert_int_equal(x.n, 2);
	/* a expunges "four"; b merges that before its flush */
	struct mm_delta *e = mm_delta_new();
	unlink(find(&a, "INBOX", "1700000003."));
	assert_int_equal(scan(&a, e), 1);
	assert_true(mm_store_merge_delta(b.s, e) >= 0);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 4);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_null(find(&b, "INBOX", "1600000003."));
	assert_non_null(find(&b, "INBOX", "1600000004."));
	assert_int_equal(mm_store_commit(b.s), 0);
	mm_delta_free(&e);
	mm_delta_free(&d);
	/* staged, then the store is freed without a flush: nothing placed, tmp/ clean */
	d = mm_delta_new();
	deliver(&a, "INBOX", "1700000005.M1P1.mx", "Subject: six\r\n\r\nbody six\r\n", 1600000005);
	assert_int_equal(scan(&a, d), 1);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	x.n = 0;
	assert_int_equal(mm_store_missing(b.s, stage_cb, &x), 0);
	assert_int_equal(x.n, 1);
	node_close(&b);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_int_equal(count_files(&b, "INBOX", "new"), 4);
	node_open(&b, "b", 2);
	assert_int_equal(scan(&b, NULL), 0);
	assert_int_equal(mm_store_missing_count(b.s), 1);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* ---- restart: folders whose directories did not change are not read again -------- */

static void set_dir_mtimes(const struct node *n, const char *folder, time_t t)
{
	char d[600], p[700];
	udir(n, folder, d, sizeof d);
	const char *subs[] = {"new", "cur"};
	struct timespec ts[2] = {{t, 0}, {t, 0}};
	for (int i = 0; i < 2; i++) {
		snprintf(p, sizeof p, "%s/%s", d, subs[i]);
		assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
	}
}

/* The first scan after open trusts new/ and cur/ whose inode and mtime are what they
 * were when the index last matched them: shown by a file slipped in with the
 * directory's mtime put back, which only a later scan finds.  A directory changed
 * normally while the store was closed is read at once. */
static void test_restart_skips_unchanged_folders(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: one\r\n\r\nbody one\r\n", 1600000000);
	deliver(&a, "INBOX", "1700000001.M1P1.mx", "Subject: two\r\n\r\nbody two\r\n", 1600000001);
	time_t old = time(NULL) - 100;
	set_dir_mtimes(&a, "INBOX", old);
	assert_true(scan(&a, NULL) >= 2);
	node_close(&a);

	/* the forged change: a file appears but new/ keeps its mtime */
	char d[600];
	udir(&a, "INBOX", d, sizeof d);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	const char *b3 = "1700000002.M1P1.mx";
	const char *m3 = "Subject: three\r\n\r\nbody three\r\n";
	assert_int_equal(mm_md_deliver(d, b3, m3, strlen(m3), 1600000002, "new", b3, &o), 0);
	set_dir_mtimes(&a, "INBOX", old);
	node_open(&a, "a", 1);
	assert_int_equal(scan(&a, NULL), 0);           /* not read: trusted */
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	assert_int_equal(scan(&a, NULL), 1);           /* later scans read everything */
	set_dir_mtimes(&a, "INBOX", old);
	assert_int_equal(scan(&a, NULL), 0);           /* stores the signature again */
	node_close(&a);

	/* a normal change while closed: the directory's mtime moves, the folder is read */
	deliver(&a, "INBOX", "1700000003.M1P1.mx", "Subject: four\r\n\r\nbody four\r\n", 1600000003);
	node_open(&a, "a", 1);
	assert_int_equal(scan(&a, NULL), 1);
	node_close(&a);
	/* and a restart with nothing changed finds nothing, whether it reads or not */
	node_open(&a, "a", 1);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_missing_count(a.s), 0);
	node_close(&a);
}

/* ---- the file index under many insertions and removals ---------------------------- */

/* 3,000 files, a third removed, some renamed, bodies shared by several files: every
 * remaining file must still be found by its name (no file taken for a new delivery,
 * nothing re-read), by its key (expunge) and by its body (have_id) while the index
 * tables grow and shift entries back on removal. */
static void test_many_files_index(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	deliver(&a, "INBOX", "1700000000.M0P1.mx", "first\r\n", 1600000000);
	char d[600], p[800];
	udir(&a, "INBOX", d, sizeof d);
	enum { N = 3000 };
	for (int i = 1; i < N; i++) {
		snprintf(p, sizeof p, "%s/new/1700000000.M%dP1.mx", d, i);
		FILE *f = fopen(p, "w");
		assert_non_null(f);
		if (i % 10 == 0)
			fputs("same 7\n", f); /* 7 bytes, the same body for 300 files */
		else
			fprintf(f, "Subject: %d\r\n\r\nbody %d\r\n", i, i);
		fclose(f);
	}
	assert_true(scan(&a, NULL) >= N);
	assert_int_equal(mm_store_files_hashed(a.s), N);
	uint8_t same[1][MM_ID_LEN];
	mm_body_id("same 7\n", 7, same[0]); /* ("first\r\n" is 7 bytes too) */
	/* a third of the files go, among them most holders of the shared body */
	int gone = 0;
	for (int i = 1; i < N; i += 3) {
		snprintf(p, sizeof p, "%s/new/1700000000.M%dP1.mx", d, i);
		assert_int_equal(unlink(p), 0);
		gone++;
	}
	for (int i = 10; i < N; i += 10)
		if (i % 3 != 1 && i != 20) {
			snprintf(p, sizeof p, "%s/new/1700000000.M%dP1.mx", d, i);
			assert_int_equal(unlink(p), 0);
			gone++;
		}
	assert_int_equal(scan(&a, NULL), gone);
	assert_int_equal(mm_store_files_hashed(a.s), N); /* nothing taken for new */
	assert_int_equal(mm_store_body_have_id(a.s, "ex.org/alice", same[0]), 1); /* file 20 */
	/* flags on every 7th remaining file */
	int renamed = 0;
	for (int i = 2; i < N; i += 7) {
		if (i % 3 == 1 || i % 10 == 0)
			continue;
		snprintf(p, sizeof p, "%s/new/1700000000.M%dP1.mx", d, i);
		rename_to(p, "S");
		renamed++;
	}
	assert_int_equal(scan(&a, NULL), renamed);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), N);
	node_close(&a);
	node_open(&a, "a", 1);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	assert_int_equal(mm_store_body_have_id(a.s, "ex.org/alice", same[0]), 1);
	snprintf(p, sizeof p, "%s/new/1700000000.M20P1.mx", d);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(scan(&a, NULL), 1);
	assert_int_equal(mm_store_body_have_id(a.s, "ex.org/alice", same[0]), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	node_close(&a);
}

/* Dovecot renames a file to carry a new keyword's letter before it names the letter in
 * dovecot-keywords.  The letter must stay pending (not recorded as applied), survive a
 * remote flag change that renames the file meanwhile, and be replicated once named. */
static void test_keyword_named_late(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	deliver(&a, "INBOX", "kw1", "Subject: kw\r\n\r\nbody\r\n", 1700000000);
	struct mm_delta *d = mm_delta_new();
	assert_int_equal(scan(&a, d), 2); /* folder INBOX + the message */
	const struct mm_rec *r0 = msg_of(&a, d, NULL);
	assert_non_null(r0);
	uint8_t key[MM_KEY_LEN];
	memcpy(key, r0->key, MM_KEY_LEN);
	mm_delta_clear(d);

	/* \Seen and letter a, named nowhere yet */
	rename_to(find(&a, "INBOX", "kw1"), "Sa");
	scan(&a, d);
	struct mm_user *u = mm_state_user(a.st, "ex.org/alice", false);
	const struct mm_rec *r = mm_user_get(u, key);
	assert_int_equal(r->msg.flags[MM_FLAG_SEEN].value, 1);
	assert_int_equal(r->msg.n_keywords, 0);

	/* a peer sets \Flagged meanwhile: the file is renamed, and keeps its letter a */
	struct mm_rec remote = *r;
	remote.msg.flags[MM_FLAG_FLAGGED].value = 1;
	remote.msg.flags[MM_FLAG_FLAGGED].stamp = (mm_hlc){(a.now + 5000) << MM_HLC_LOGICAL_BITS, 99};
	assert_int_equal(mm_store_merge(a.s, "ex.org/alice", &remote), 1);
	assert_int_equal(mm_store_commit(a.s), 0);
	const char *f = find(&a, "INBOX", "kw1");
	assert_non_null(f);
	assert_non_null(strstr(f, ":2,FSa"));

	/* Dovecot names the letter: the next scan replicates the keyword */
	char kwf[700], dir[600];
	udir(&a, "INBOX", dir, sizeof dir);
	snprintf(kwf, sizeof kwf, "%s/dovecot-keywords", dir);
	FILE *kf = fopen(kwf, "w");
	assert_non_null(kf);
	fputs("0 $Work\n", kf);
	fclose(kf);
	scan(&a, d);
	r = mm_user_get(u, key);
	assert_int_equal(r->msg.n_keywords, 1);
	assert_string_equal(r->msg.keywords[0].name, "$Work");
	assert_int_equal(r->msg.keywords[0].reg.value, 1);
	assert_int_equal(r->msg.flags[MM_FLAG_FLAGGED].value, 1);
	assert_int_equal(r->msg.flags[MM_FLAG_SEEN].value, 1);
	mm_delta_free(&d);
	node_close(&a);
}

/* ---- file names written otherwise than Dovecot writes them -------------------------- */

/* With name: the UID INBOX's dovecot-uidlist lists for exactly this file name, or 0.
 * Without: `uid` if the listing has an entry under it, else 0. */
static uint32_t inbox_listing(const struct node *n, const char *name, uint32_t uid)
{
	char d[600];
	udir(n, "INBOX", d, sizeof d);
	struct mm_md_uidlist ul;
	assert_int_equal(mm_md_uidlist_load(d, &ul), 0);
	uint32_t found = 0;
	for (size_t i = 0; i < ul.n; i++)
		if (name ? !strcmp(ul.v[i].name, name) : ul.v[i].uid == uid)
			found = ul.v[i].uid;
	mm_md_uidlist_clear(&ul);
	return found;
}

static uint32_t listed_uid(const struct node *n, const char *name)
{
	return inbox_listing(n, name, 0);
}

/* The index keeps a file's name as base + letters and only the odd ones whole
 * (letters unsorted, ":2," with no letters in new/, none in cur/): every name must
 * come back exactly, from memory and from the database after a restart, which
 * dovecot-uidlist shows (it lists the names the store gives it); a remote flag change
 * then renames such a file to the name Dovecot would write. */
static void test_odd_names(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, true);
	mm_store_set_uid_authority(a.s, true);
	char d[600], md[600];
	udir(&a, "INBOX", d, sizeof d);
	snprintf(md, sizeof md, "%s/ex.org/alice", a.root);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(md, "INBOX", &o), 0);
	static const struct { const char *base, *sub, *name; } f[] = {
		{"odd1", "cur", "odd1:2,SR"}, {"odd2", "cur", "odd2"}, {"odd3", "new", "odd3:2,"},
		{"even4", "cur", "even4:2,RS"}, {"even5", "new", "even5"},
	};
	enum { NF = sizeof f / sizeof f[0] };
	for (int i = 0; i < NF; i++) {
		char body[64];
		snprintf(body, sizeof body, "Subject: %d\r\n\r\nbody %d\r\n", i, i);
		assert_int_equal(mm_md_deliver(d, f[i].base, body, strlen(body), 1600000000 + i, f[i].sub,
		                               f[i].name, &o), 0);
	}
	assert_true(scan(&a, NULL) >= NF);
	uint32_t uids[NF];
	for (int i = 0; i < NF; i++) {
		uids[i] = listed_uid(&a, f[i].name);
		assert_true(uids[i] > 0);
	}
	assert_int_equal(scan(&a, NULL), 0);
	node_close(&a);

	/* names read back from the database: listed again the same, nothing re-read */
	char ulp[700];
	snprintf(ulp, sizeof ulp, "%s/dovecot-uidlist", d);
	assert_int_equal(unlink(ulp), 0);
	node_open_cfg(&a, "a", 1, true);
	mm_store_set_uid_authority(a.s, true);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	for (int i = 0; i < NF; i++)
		assert_int_equal(listed_uid(&a, f[i].name), uids[i]);

	/* a peer flags odd1: renamed from its odd name to the canonical one */
	struct mm_user *u = mm_state_user(a.st, "ex.org/alice", false);
	struct mm_delta *full = full_delta(&a);
	const struct mm_rec *m = msg_by_idate(full, 1600000000);
	assert_non_null(m);
	struct mm_rec remote = *mm_user_get(u, m->key);
	remote.msg.flags[MM_FLAG_FLAGGED].value = 1;
	remote.msg.flags[MM_FLAG_FLAGGED].stamp = (mm_hlc){(a.now + 5000) << MM_HLC_LOGICAL_BITS, 99};
	assert_int_equal(mm_store_merge(a.s, "ex.org/alice", &remote), 1);
	assert_int_equal(mm_store_commit(a.s), 0);
	mm_delta_free(&full);
	const char *p = find(&a, "INBOX", "odd1");
	assert_non_null(p);
	assert_non_null(strstr(p, "/cur/odd1:2,FRS"));
	assert_int_equal(scan(&a, NULL), 0);
	node_close(&a);
}

/* What a Maildir may hold besides mail, made by hand or by a user with a shell: the
 * scan must neither block (a FIFO opened for reading waits for a writer for ever: the
 * whole daemon stopped), nor follow a link out of the Maildir, nor list in
 * dovecot-uidlist a name that would not read back the same; the mail beside them is
 * indexed as always.  SIGALRM ends the test if anything blocks. */
static void test_hostile_maildir(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, true);
	mm_store_set_uid_authority(a.s, true);
	deliver(&a, "INBOX", "good1", "Subject: 1\r\n\r\nbody 1\r\n", 1600000000);
	char d[600], md[600], p[800], t[800];
	udir(&a, "INBOX", d, sizeof d);
	snprintf(md, sizeof md, "%s/ex.org/alice", a.root);
	static const char *const odd[] = {"fifo1.M1P1.host:2,S", "link1.M1P1.host:2,S",
	                                  "dir1.M1P1.host:2,S", "cr1.M1P1.host\r", "lf1.M1P1\n.host:2,S"};
	snprintf(p, sizeof p, "%s/cur/%s", d, odd[0]);
	assert_int_equal(mkfifo(p, 0600), 0);
	snprintf(p, sizeof p, "%s/cur/%s", d, odd[1]);
	snprintf(t, sizeof t, "%s/a/secret", top); /* out of the Maildir */
	FILE *sf = fopen(t, "w");
	assert_non_null(sf);
	fputs("Subject: not mail\r\n\r\nsecret\r\n", sf);
	fclose(sf);
	assert_int_equal(symlink(t, p), 0);
	snprintf(p, sizeof p, "%s/cur/%s", d, odd[2]);
	assert_int_equal(mkdir(p, 0700), 0);
	for (int i = 3; i < 5; i++) {
		snprintf(p, sizeof p, "%s/cur/%s", d, odd[i]);
		FILE *f = fopen(p, "w");
		assert_non_null(f);
		fputs("Subject: odd\r\n\r\nodd\r\n", f);
		fclose(f);
	}
	/* Dovecot's own files, as FIFOs */
	snprintf(p, sizeof p, "%s/subscriptions", md);
	assert_int_equal(mkfifo(p, 0600), 0);
	snprintf(p, sizeof p, "%s/dovecot-keywords", d);
	assert_int_equal(mkfifo(p, 0600), 0);
	/* and a lock: its holder is read from it (is it a dead process's?) */
	deliver(&a, "Work", "work1", "Subject: w\r\n\r\nwork\r\n", 1600000001);
	char wd[600];
	udir(&a, "Work", wd, sizeof wd);
	snprintf(p, sizeof p, "%s/dovecot-uidlist.lock", wd);
	assert_int_equal(mkfifo(p, 0600), 0);

	alarm(60);
	assert_true(scan(&a, NULL) >= 1);
	assert_true(listed_uid(&a, "good1") > 0);
	for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++)
		assert_int_equal(listed_uid(&a, odd[i]), 0);
	/* the links, the FIFO and the directory are skipped; the names with a control
	 * character are mail (indexed, as before) that is never listed under its name;
	 * Work's message waits, as files do while Dovecot's lock is held */
	assert_int_equal(mm_store_files_hashed(a.s), 3);
	/* a flag change on the good message still goes through */
	const char *g = find(&a, "INBOX", "good1");
	assert_non_null(g);
	rename_to(g, "S");
	assert_int_equal(scan(&a, NULL), 1);
	assert_int_equal(scan(&a, NULL), 0);
	alarm(0);
	node_close(&a);
}

/* Becoming the UID authority re-checks only folders whose last pass left something
 * for an authority: here a replica's need above a message's UID, which a
 * non-authority keeps showing and the authority must move. */
static void test_authority_recheck(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, true); /* not the authority yet */
	deliver(&a, "INBOX", "m1", "Subject: 1\r\n\r\nbody 1\r\n", 1600000000);
	deliver(&a, "INBOX", "m2", "Subject: 2\r\n\r\nbody 2\r\n", 1600000001);
	assert_true(scan(&a, NULL) >= 2);
	uint32_t u1 = listed_uid(&a, "m1"), u2 = listed_uid(&a, "m2");
	assert_true(u1 >= 1 && u1 <= 2 && u2 >= 1 && u2 <= 2 && u1 != u2);
	/* a replica could not show m1 under 1: it asks for 7 */
	struct mm_delta *full = full_delta(&a);
	const struct mm_rec *m = msg_by_idate(full, 1600000000);
	assert_non_null(m);
	struct mm_rec remote = *m;
	remote.msg.uid_need = 7;
	assert_int_equal(mm_store_merge(a.s, "ex.org/alice", &remote), 1);
	assert_int_equal(mm_store_commit(a.s), 0);
	mm_delta_free(&full);
	assert_int_equal(listed_uid(&a, "m1"), u1); /* a non-authority keeps it */
	assert_int_equal(scan(&a, NULL), 0);
	mm_store_set_uid_authority(a.s, true);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_int_equal(listed_uid(&a, "m1"), 0);
	const char *p = find(&a, "INBOX", "m1");
	assert_null(p); /* re-filed under a new base */
	struct mm_user *u = mm_state_user(a.st, "ex.org/alice", false);
	const struct mm_rec *now = mm_user_get(u, remote.key);
	assert_non_null(now);
	assert_true(now->msg.uid_value >= 7); /* moved at or above the need */
	assert_int_equal(listed_uid(&a, "m2"), u2);
	node_close(&a);
}

/* A node catching up raises no needs: a message it cannot show under its UID stays
 * where it is listed, without asking for a move; once caught up, the folder is planned
 * again and the need is raised. */
static void test_catching_up_raises_no_needs(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, true);
	deliver(&a, "INBOX", "m1", "Subject: 1\r\n\r\nbody 1\r\n", 1600000000);
	deliver(&a, "INBOX", "m2", "Subject: 2\r\n\r\nbody 2\r\n", 1600000001);
	assert_true(scan(&a, NULL) >= 2);
	uint32_t u1 = listed_uid(&a, "m1"), u2 = listed_uid(&a, "m2");
	assert_true(u1 && u2 && u1 != u2);
	mm_store_set_catching_up(a.s, true);
	/* the authority gave m1 the number m2 shows here */
	struct mm_delta *full = full_delta(&a);
	const struct mm_rec *m = msg_by_idate(full, 1600000000);
	assert_non_null(m);
	struct mm_rec remote = *m;
	remote.msg.uid_value = u2;
	remote.msg.uid.stamp = (mm_hlc){(a.now + 5000) << MM_HLC_LOGICAL_BITS, 99};
	assert_int_equal(mm_store_merge(a.s, "ex.org/alice", &remote), 1);
	assert_int_equal(mm_store_commit(a.s), 0);
	mm_delta_free(&full);
	struct mm_user *u = mm_state_user(a.st, "ex.org/alice", false);
	assert_int_equal(mm_user_get(u, remote.key)->msg.uid_need, 0);
	assert_int_equal(listed_uid(&a, "m1"), u1); /* kept where it is listed */
	assert_int_equal(listed_uid(&a, "m2"), u2);
	mm_store_set_catching_up(a.s, false);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_true(mm_user_get(u, remote.key)->msg.uid_need > u2);
	node_close(&a);
}

/* The records of d as they go out before their origin's UID pass: no UID yet. */
static struct mm_delta *without_uids(const struct mm_delta *d)
{
	struct mm_delta *e = mm_delta_new();
	for (size_t i = 0; i < mm_delta_count(d); i++) {
		const char *un;
		struct mm_rec r = *mm_delta_get(d, i, &un);
		if (r.type == MM_REC_MESSAGE) {
			r.msg.uid_value = r.msg.uid_need = 0;
			r.msg.uid.stamp = (mm_hlc){0, 0};
		}
		assert_true(mm_delta_add(e, un, &r) >= 0);
	}
	return e;
}

/* Stages the body of a's message with this INTERNALDATE on b, then commits b. */
static void stage_from(struct node *a, struct node *b, const struct mm_delta *full, int64_t idate)
{
	const struct mm_rec *m = msg_by_idate(full, idate);
	assert_non_null(m);
	int fd;
	uint64_t sz;
	assert_int_equal(mm_store_body_open(a->s, "ex.org/alice", m->key, &fd, &sz), 0);
	struct mm_body_writer *w;
	assert_int_equal(mm_store_body_begin(b->s, "ex.org/alice", m->key, &w), 0);
	char buf[4096];
	ssize_t r;
	while ((r = read(fd, buf, sizeof buf)) > 0)
		assert_int_equal(mm_store_body_write(w, buf, (size_t)r), 0);
	close(fd);
	assert_int_equal(mm_store_body_stage(&w), 0);
	assert_int_equal(mm_store_commit(b->s), 0);
}

static uint32_t rec_uid(struct node *n, const uint8_t key[MM_KEY_LEN])
{
	const struct mm_rec *r = mm_user_get(mm_state_user(n->st, "ex.org/alice", false), key);
	assert_non_null(r);
	return r->msg.uid_value;
}

/* A message's first UID is its origin's: a replica holds a body whose record has no
 * UID yet and was created on another node until that UID comes (numbering it itself
 * would write a later UID that wins over the origin's, and the origin's IMAP clients
 * would see the message change UID); it numbers it itself only when none came for
 * FIRST_UID_WAIT_MS (2 s). */
static void test_first_uid_from_origin(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open_cfg(&a, "a", 1, true);
	node_open_cfg(&b, "b", 2, true);
	deliver(&a, "INBOX", "m1", "Subject: 1\r\n\r\nbody 1\r\n", 1600000000);
	deliver(&a, "INBOX", "m2", "Subject: 2\r\n\r\nbody 2\r\n", 1600000001);
	assert_true(scan(&a, NULL) >= 2);
	struct mm_delta *full = full_delta(&a), *early = without_uids(full);
	const struct mm_rec *m1 = msg_by_idate(full, 1600000000), *m2 = msg_by_idate(full, 1600000001);
	assert_true(m1->msg.uid_value && m2->msg.uid_value);
	uint32_t uid2 = m2->msg.uid_value; /* m1 and m2 live only as long as `full` */
	assert_true(mm_store_merge_delta(b.s, early) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	stage_from(&a, &b, full, 1600000000);
	stage_from(&a, &b, full, 1600000001);
	assert_int_equal(mm_store_held_count(b.s), 2);
	assert_null(find(&b, "INBOX", "1600000000."));
	assert_int_equal(rec_uid(&b, m1->key), 0);
	/* the origin's UIDs come: the bodies are listed under them */
	assert_true(mm_store_merge_delta(b.s, full) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(mm_store_held_count(b.s), 0);
	const char *p = find(&b, "INBOX", "1600000000.");
	assert_non_null(p);
	assert_int_equal(listed_uid(&b, strrchr(p, '/') + 1), m1->msg.uid_value);
	p = find(&b, "INBOX", "1600000001.");
	assert_non_null(p);
	assert_int_equal(listed_uid(&b, strrchr(p, '/') + 1), m2->msg.uid_value);
	assert_int_equal(scan(&b, NULL), 0);
	assert_int_equal(rec_uid(&b, m1->key), m1->msg.uid_value);
	mm_delta_free(&early);
	mm_delta_free(&full);

	/* no UID comes (say the origin does not run imap_uids): numbered here after 2 s */
	deliver(&a, "INBOX", "m3", "Subject: 3\r\n\r\nbody 3\r\n", 1600000002);
	assert_int_equal(scan(&a, NULL), 1);
	full = full_delta(&a);
	early = without_uids(full);
	const struct mm_rec *m3 = msg_by_idate(full, 1600000002);
	assert_true(mm_store_merge_delta(b.s, early) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	stage_from(&a, &b, full, 1600000002);
	assert_int_equal(mm_store_held_count(b.s), 1);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_held_count(b.s), 1);
	usleep(2100 * 1000);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_held_count(b.s), 0);
	scan(&b, NULL);
	p = find(&b, "INBOX", "1600000002.");
	assert_non_null(p);
	assert_true(listed_uid(&b, strrchr(p, '/') + 1) > uid2);
	assert_true(rec_uid(&b, m3->key) > uid2);
	mm_delta_free(&early);
	mm_delta_free(&full);
	node_close(&a);
	node_close(&b);
}

static bool uid_in_list(const struct node *n, uint32_t uid)
{
	return inbox_listing(n, NULL, uid) == uid;
}

/* Removes (as a user's rm would) the INBOX file whose name starts with prefix, scans and
 * commits; returns the UID dovecot-uidlist listed it under. */
static uint32_t remove_listed(struct node *n, const char *prefix)
{
	const char *f = find(n, "INBOX", prefix);
	assert_non_null(f);
	uint32_t uid = listed_uid(n, strrchr(f, '/') + 1);
	assert_true(uid != 0);
	assert_int_equal(unlink(f), 0);
	assert_int_equal(scan(n, NULL), 1);
	assert_int_equal(mm_store_commit(n->s), 0);
	return uid;
}

/* Entries of files that leave a folder here are dropped from its dovecot-uidlist by
 * the next UID pass: Dovecot drops them only when a client opens the folder, and on a
 * node where none does (a standby) they would stay for ever, each pass reading them.
 * Both ways a file leaves: removed here (the scan's expunge), and unlinked for a
 * remote expunge.  An entry whose file this node never indexed stays: a delivery not
 * scanned yet looks the same. */
static void test_uidlist_drops_gone_entries(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open_cfg(&a, "a", 1, true);
	node_open_cfg(&b, "b", 2, true);
	mm_store_set_uid_authority(a.s, true);
	deliver(&a, "INBOX", "m1", "Subject: 1\r\n\r\nbody 1\r\n", 1600000000);
	deliver(&a, "INBOX", "m2", "Subject: 2\r\n\r\nbody 2\r\n", 1600000001);
	deliver(&a, "INBOX", "m3", "Subject: 3\r\n\r\nbody 3\r\n", 1600000002);
	struct mm_delta *d = mm_delta_new();
	assert_true(scan(&a, d) >= 3);
	assert_int_equal(mm_store_commit(a.s), 0);
	uint32_t u1 = listed_uid(&a, "m1"), u2 = listed_uid(&a, "m2"), u3 = listed_uid(&a, "m3");
	assert_true(u1 && u2 && u3);
	sync_to(&a, &b, d);
	assert_true(uid_in_list(&b, u1) && uid_in_list(&b, u2) && uid_in_list(&b, u3));

	/* an entry for a file this node never saw (Dovecot listed a delivery the scan has
	 * not reached): it must stay */
	char dir[600], ul_path[700];
	udir(&a, "INBOX", dir, sizeof dir);
	snprintf(ul_path, sizeof ul_path, "%s/dovecot-uidlist", dir);
	FILE *f = fopen(ul_path, "a");
	assert_non_null(f);
	fprintf(f, "%u :ghost\n", u3 + 10);
	fclose(f);

	/* removed on a: a's scan expunges it and drops its entry; b unlinks its file for
	 * the remote expunge and drops its entry too */
	assert_int_equal(unlink(find(&a, "INBOX", "m2")), 0);
	mm_delta_clear(d);
	assert_int_equal(scan(&a, d), 1);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_false(uid_in_list(&a, u2));
	assert_true(uid_in_list(&a, u1) && uid_in_list(&a, u3) && uid_in_list(&a, u3 + 10));
	sync_to(&a, &b, d);
	assert_false(uid_in_list(&b, u2));
	assert_true(uid_in_list(&b, u1) && uid_in_list(&b, u3));

	/* NEXTUID stays where it was: Dovecot must never hand those UIDs out again */
	struct mm_md_uidlist ul;
	assert_int_equal(mm_md_uidlist_load(dir, &ul), 0);
	assert_true(ul.next_uid > u3 + 10);
	mm_md_uidlist_clear(&ul);

	/* and after a restart, a further expunge still leaves the other entries alone */
	node_close(&a);
	node_open_cfg(&a, "a", 1, true);
	mm_store_set_uid_authority(a.s, true);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(remove_listed(&a, "m1"), u1);
	assert_false(uid_in_list(&a, u1));
	assert_true(uid_in_list(&a, u3) && uid_in_list(&a, u3 + 10));
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Expunges alone rewrite a big folder's dovecot-uidlist only once they are an eighth
 * of it (a single expunge in a folder of a million would rewrite it whole); a pass
 * that runs anyway (here: a delivery) drops what is noted at once. */
static void test_uidlist_gone_batched(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, true);
	mm_store_set_uid_authority(a.s, true);
	char base[128], body[128];
	for (int i = 0; i < 64; i++) { /* names of about Dovecot's length: 64 lines of ~70 bytes */
		snprintf(base, sizeof base, "1700000000.M%06dP12345.mx-long-host-name.example.org,S=%d", i, 30 + i / 10);
		snprintf(body, sizeof body, "Subject: %d\r\n\r\nb %d\r\n", i, i);
		deliver(&a, "INBOX", base, body, 1600000000 + i);
	}
	assert_true(scan(&a, NULL) >= 64);
	assert_int_equal(mm_store_commit(a.s), 0);
	uint32_t uids[8];
	for (int i = 0; i < 8; i++) {
		snprintf(base, sizeof base, "1700000000.M%06dP", i);
		uids[i] = remove_listed(&a, base);
		if (i < 6) /* not yet an eighth (the trigger counts ~64-byte lines: 8 here) */
			assert_true(uid_in_list(&a, uids[i]));
	}
	for (int i = 0; i < 8; i++)
		assert_false(uid_in_list(&a, uids[i])); /* the eighth expunge asked for the pass */
	/* one more expunge: noted; then a delivery's pass drops it */
	snprintf(base, sizeof base, "1700000000.M%06dP", 8);
	uint32_t u8 = remove_listed(&a, base);
	assert_true(uid_in_list(&a, u8));
	deliver(&a, "INBOX", "1700000001.M999999P1.mx", "Subject: new\r\n\r\nnew\r\n", 1600001000);
	assert_true(scan(&a, NULL) >= 1);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_false(uid_in_list(&a, u8));
	node_close(&a);
}

/* imap_uids: a start reads a folder's dovecot-uidlist only when it changed since the
 * last completed UID pass, or when a pass was due as the node stopped (a million-line
 * uidlist was most of a restart's time); the record of the pass is in the database. */
static void test_restart_skips_unchanged_uidlist(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, true);
	mm_store_set_uid_authority(a.s, true);
	deliver(&a, "INBOX", "m1", "Subject: 1\r\n\r\nbody 1\r\n", 1600000000);
	deliver(&a, "INBOX", "m2", "Subject: 2\r\n\r\nbody 2\r\n", 1600000001);
	/* Dovecot has opened the folder (its clients may have seen the UIDs): a UID move
	 * re-files the message (a listing no Dovecot has read is simply redone) */
	char ixp[700];
	udir(&a, "INBOX", ixp, 600);
	strcat(ixp, "/dovecot.index.log");
	int ixfd = open(ixp, O_WRONLY | O_CREAT, 0600);
	assert_true(ixfd >= 0);
	close(ixfd);
	assert_true(scan(&a, NULL) >= 2);
	assert_true(listed_uid(&a, "m1") && listed_uid(&a, "m2"));
	node_close(&a);

	node_open_cfg(&a, "a", 1, true);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_uidlists_read(a.s), 0);
	node_close(&a);

	/* Dovecot rewrote it while the node was stopped (here: same lines, new inode) */
	char d[600], p1[700], p2[700];
	udir(&a, "INBOX", d, sizeof d);
	snprintf(p1, sizeof p1, "%s/dovecot-uidlist", d);
	snprintf(p2, sizeof p2, "%s/dovecot-uidlist.new", d);
	char cmd[3000];
	snprintf(cmd, sizeof cmd, "cp -p '%s' '%s' && mv '%s' '%s'", p1, p2, p2, p1);
	assert_int_equal(system(cmd), 0);
	node_open_cfg(&a, "a", 1, true);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_uidlists_read(a.s), 1);

	/* a pass is due when the node stops (a UID move merged while Dovecot held the
	 * lock): the next start reads the uidlist even though it did not change */
	struct mm_delta *full = full_delta(&a);
	struct mm_rec remote = *msg_by_idate(full, 1600000000);
	remote.msg.uid_value = 9;
	remote.msg.uid.stamp = (mm_hlc){(a.now + 5000) << MM_HLC_LOGICAL_BITS, 99};
	char lk[700];
	snprintf(lk, sizeof lk, "%s/dovecot-uidlist.lock", d);
	FILE *f = fopen(lk, "w");
	assert_non_null(f);
	fprintf(f, "%ld:mailmesh\n", (long)getpid());
	fclose(f);
	assert_int_equal(mm_store_merge(a.s, "ex.org/alice", &remote), 1);
	assert_int_equal(mm_store_commit(a.s), 0); /* the pass waits 2 s for the lock */
	assert_false(uid_in_list(&a, 9));
	mm_delta_free(&full);
	node_close(&a);
	assert_int_equal(unlink(lk), 0);
	node_open_cfg(&a, "a", 1, true); /* not the authority: any replica lists it under 9 */
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_uidlists_read(a.s), 1);
	assert_true(uid_in_list(&a, 9));
	assert_int_equal(listed_uid(&a, "m1"), 0); /* re-filed under its new UID */
	node_close(&a);
}

/* A first scan of many files commits as it goes (mm_store_set_scan_commit): killed in
 * the middle (here: freed without its final commit), the next start knows what the
 * chunks made durable, hashes only the rest, and runs the folder's UID pass. */
static void test_scan_commits_in_chunks(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, true);
	mm_store_set_scan_commit(a.s, 100);
	char base[64], body[128];
	for (int i = 0; i < 250; i++) {
		snprintf(base, sizeof base, "17000%05d.M%dP1.mx", i, i);
		snprintf(body, sizeof body, "Subject: %d\r\n\r\nbody %d\r\n", i, i);
		deliver(&a, "INBOX", base, body, 1600000000 + i);
	}
	a.now += 1000;
	assert_true(mm_store_scan(a.s, a.now, NULL) >= 250); /* and the folder */
	assert_int_equal(mm_store_files_hashed(a.s), 250);
	node_close(&a); /* no commit: as if killed */
	node_open_cfg(&a, "a", 1, true);
	assert_int_equal(scan(&a, NULL), 50);
	assert_int_equal(mm_store_files_hashed(a.s), 50);
	assert_int_equal(mm_store_uidlists_read(a.s), 1);
	struct mm_user *u = mm_state_user(a.st, "ex.org/alice", false);
	assert_non_null(u);
	assert_int_equal(mm_store_missing_count(a.s), 0);
	node_close(&a);
	node_open_cfg(&a, "a", 1, true);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	node_close(&a);
}

/* A message re-filed under a new name (a UID move: the new name is linked, the old one
 * removed) whose index entry a crash lost before its commit: the next start finds the
 * new name, carrying the message's key, while the index still knows the old one.  It
 * is the same message, not a new delivery: a new record would duplicate it, and bring
 * it back on every node after an expunge (it_daemon_crash saw that). */
static void test_refile_lost_by_crash(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	deliver(&a, "INBOX", "m1", "Subject: 1\r\n\r\nbody 1\r\n", 1600000000);
	deliver(&a, "INBOX", "m2", "Subject: 2\r\n\r\nbody 2\r\n", 1600000001);
	assert_true(scan(&a, NULL) >= 2);
	struct mm_delta *full = full_delta(&a);
	const struct mm_rec *m1 = msg_by_idate(full, 1600000000);
	char hex[2 * MM_KEY_LEN + 1];
	sodium_bin2hex(hex, sizeof hex, m1->key, MM_KEY_LEN);
	size_t n_before = mm_user_count(mm_state_user(a.st, "ex.org/alice", false));
	node_close(&a);
	char d[600], from[800], to[900];
	udir(&a, "INBOX", d, sizeof d);
	snprintf(from, sizeof from, "%s/new/m1", d);
	snprintf(to, sizeof to, "%s/new/1600000000.M1P1.mm_%s,S=22", d, hex);
	/* both names (killed between link and unlink), then only the new one */
	assert_int_equal(link(from, to), 0);
	node_open(&a, "a", 1);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	assert_int_equal(mm_user_count(mm_state_user(a.st, "ex.org/alice", false)), n_before);
	assert_null(find(&a, "INBOX", "m1"));
	assert_non_null(find(&a, "INBOX", "1600000000.M1P1.mm_"));
	assert_int_equal(scan(&a, NULL), 0);
	node_close(&a);
	/* the new name again under another new name, the old one gone (killed after the
	 * unlink, before the commit) */
	char to2[900];
	snprintf(to2, sizeof to2, "%s/new/1600000000.M2P1.mm_%s,S=22", d, hex);
	assert_int_equal(rename(to, to2), 0);
	node_open(&a, "a", 1);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	assert_int_equal(mm_user_count(mm_state_user(a.st, "ex.org/alice", false)), n_before);
	const struct mm_rec *r = mm_user_get(mm_state_user(a.st, "ex.org/alice", false), m1->key);
	assert_non_null(r);
	assert_int_equal(r->type, MM_REC_MESSAGE); /* not taken as expunged either */
	assert_int_equal(mm_store_missing_count(a.s), 0);
	mm_delta_free(&full);
	node_close(&a);
}

/* Opens the body of every message of `full` by its key and finds it by its body id;
 * the file entries in memory must stay at most max_mem meanwhile.  Returns the number
 * of messages. */
static size_t open_bodies(struct node *n, const struct mm_delta *full, size_t max_mem)
{
	size_t got = 0;
	for (size_t i = 0; i < mm_delta_count(full); i++) {
		const struct mm_rec *r = mm_delta_get(full, i, NULL);
		if (r->type != MM_REC_MESSAGE)
			continue;
		int fd;
		uint64_t size;
		assert_int_equal(mm_store_body_open(n->s, "ex.org/alice", r->key, &fd, &size), 0);
		close(fd);
		assert_int_equal(size, r->msg.size);
		assert_true(mm_store_files_in_memory(n->s) <= max_mem);
		assert_int_equal(mm_store_body_have_id(n->s, "ex.org/alice", r->msg.body), 1);
		assert_true(mm_store_files_in_memory(n->s) <= max_mem);
		got++;
	}
	return got;
}

/* A state database written before the key-ordered file index (MM_DB_FILES, keyed by
 * hashes) is converted at open: every file is known again by name (nothing re-hashed,
 * no new record), by key (its body opens) and by body, and the old table is empty. */
struct fidx_copy {
	size_t n;
	uint8_t k[16][512];
	size_t kl[16];
	uint8_t v[16][2048];
	size_t vl[16];
};

static int fidx_copy_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	struct fidx_copy *c = arg;
	assert_true(c->n < 16 && kl <= 512 && vl <= 2048);
	memcpy(c->k[c->n], k, kl);
	c->kl[c->n] = kl;
	memcpy(c->v[c->n], v, vl);
	c->vl[c->n++] = vl;
	return 0;
}

static void test_file_index_converted(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: 1\r\n\r\none\r\n", 1600000000);
	deliver(&a, "INBOX", "1700000000.M2P1.mx", "Subject: 2\r\n\r\ntwo\r\n", 1600000001);
	deliver(&a, "Work", "1700000000.M3P1.mx", "Subject: 1\r\n\r\none\r\n", 1600000002); /* a copy */
	assert_true(scan(&a, NULL) >= 3);
	struct mm_delta *full = full_delta(&a);
	size_t nrec = mm_delta_count(full);
	node_close(&a);

	/* back to the old layout: each file's value under a 16-byte key in MM_DB_FILES */
	struct mm_statedb *db;
	char err[256];
	assert_int_equal(mm_statedb_open(&db, a.sdir, 0, err, sizeof err), 0);
	struct fidx_copy *c = calloc(1, sizeof(*c));
	assert_non_null(c);
	assert_int_equal(mm_statedb_foreach(db, MM_DB_FIDX, fidx_copy_cb, c), 0);
	assert_int_equal(c->n, 9); /* 'F', 'K' and 'B' for each of the 3 files */
	assert_int_equal(mm_statedb_begin(db), 0);
	int nf = 0;
	for (size_t i = 0; i < c->n; i++) {
		if (c->k[i][0] == 'F') {
			uint8_t ok[16];
			crypto_generichash(ok, sizeof ok, c->k[i], c->kl[i], NULL, 0);
			assert_int_equal(mm_statedb_put(db, MM_DB_FILES, ok, sizeof ok, c->v[i], c->vl[i]), 0);
			nf++;
		}
		assert_int_equal(mm_statedb_del(db, MM_DB_FIDX, c->k[i], c->kl[i]), 0);
	}
	assert_int_equal(mm_statedb_commit(db), 0);
	assert_int_equal(nf, 3);
	assert_int_equal(mm_statedb_count(db, MM_DB_FIDX), 0);
	mm_statedb_free(&db);

	node_open(&a, "a", 1);
	assert_int_equal(mm_store_missing_count(a.s), 0);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	assert_int_equal(open_bodies(&a, full, SIZE_MAX), 3);
	struct mm_delta *full2 = full_delta(&a);
	assert_int_equal(mm_delta_count(full2), nrec); /* no second record for any file */
	mm_delta_free(&full2);
	mm_delta_free(&full);
	node_close(&a);
	assert_int_equal(mm_statedb_open(&db, a.sdir, 0, err, sizeof err), 0);
	assert_int_equal(mm_statedb_count(db, MM_DB_FILES), 0);
	assert_int_equal(mm_statedb_count(db, MM_DB_FIDX), 9);
	mm_statedb_free(&db);
	free(c);
}

/* Puts meta "format" = the given bytes into a's closed state database, through LMDB
 * itself (mm_statedb_open refuses a later format); drop_table: also removes that
 * table, as a later layout might have.  Returns whether the table `probe` exists
 * afterwards (NULL: not asked). */
static bool put_format(const struct node *a, const uint8_t *v, size_t vl, const char *drop_table,
                       const char *probe)
{
	char path[400];
	snprintf(path, sizeof path, "%s/state.mdb", a->sdir);
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
	assert_int_equal(mdb_env_set_mapsize(env, (size_t)1 << 30), 0);
	assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	if (v) {
		assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
		MDB_val k = {6, (void *)"format"}, val = {vl, (void *)v};
		assert_int_equal(mdb_put(txn, dbi, &k, &val, 0), 0);
	}
	if (drop_table) {
		assert_int_equal(mdb_dbi_open(txn, drop_table, 0, &dbi), 0);
		assert_int_equal(mdb_drop(txn, dbi, 1), 0);
	}
	bool exists = probe && mdb_dbi_open(txn, probe, 0, &dbi) == 0;
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	return exists;
}

/* state.mdb says which layout it has: the first commit writes it, and a database of a
 * later layout (a newer mailmesh ran, then this one again) or with a damaged entry is
 * refused with an error naming it and what to do, before anything is written to it
 * (a table the later layout dropped is not made again). */
static void test_state_format(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: 1\r\n\r\none\r\n", 1600000000);
	assert_true(scan(&a, NULL) >= 1);
	node_close(&a);
	struct mm_statedb *db;
	char err[512];
	uint8_t v[16];
	assert_int_equal(mm_statedb_open(&db, a.sdir, 0, err, sizeof err), 0);
	assert_int_equal(mm_statedb_format(db), MM_STATEDB_FORMAT);
	assert_int_equal(mm_statedb_get(db, MM_DB_META, "format", 6, v, sizeof v), 8);
	mm_statedb_free(&db);
	static const uint8_t one[8] = {0, 0, 0, 0, 0, 0, 0, 1}, later[8] = {0, 0, 0, 0, 0, 0, 0, 99};
	assert_memory_equal(v, one, 8);

	put_format(&a, later, sizeof later, NULL, NULL);
	struct mm_state *st = mm_state_new();
	struct mm_clock clock;
	mm_clock_init(&clock, 1, 0);
	struct mm_store_config cfg = {.mail_location = a.loc, .state_dir = a.sdir};
	struct mm_store *s = NULL;
	assert_int_equal(mm_store_open(&s, &cfg, st, &clock, err, sizeof err), -EPROTONOSUPPORT);
	assert_null(s);
	assert_non_null(strstr(err, "state.mdb was written by a newer mailmesh (state format 99;"));
	assert_non_null(strstr(err, "move the state directory away"));
	static const uint8_t damaged[3] = {0, 0, 1};
	put_format(&a, damaged, sizeof damaged, NULL, NULL);
	assert_int_equal(mm_store_open(&s, &cfg, st, &clock, err, sizeof err), -EBADMSG);
	assert_non_null(strstr(err, "format entry is damaged"));

	/* refused, not changed: with the entry back, everything is there */
	put_format(&a, one, sizeof one, NULL, NULL);
	node_open(&a, "a", 1);
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(mm_store_files_hashed(a.s), 0);
	struct mm_delta *full = full_delta(&a);
	assert_true(mm_delta_count(full) >= 1);
	mm_delta_free(&full);
	node_close(&a);

	/* a later layout without one of this one's tables: refused, and not made again */
	assert_false(put_format(&a, later, sizeof later, "folders", "folders"));
	assert_int_equal(mm_store_open(&s, &cfg, st, &clock, err, sizeof err), -EPROTONOSUPPORT);
	assert_false(put_format(&a, NULL, 0, NULL, "folders"));
	mm_state_free(&st);
}

/* The file index in memory stays within file_cache: dropped after a commit, and after
 * a scan or a body lookup that changed nothing (no commit follows those). */
static void test_file_cache_bounded(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	mm_store_set_file_cache(a.s, 2);
	char base[64], body[64];
	for (int i = 0; i < 5; i++) {
		snprintf(base, sizeof base, "1700000000.M%dP1.mx", i);
		snprintf(body, sizeof body, "Subject: %d\r\n\r\nbody %d\r\n", i, i);
		deliver(&a, "INBOX", base, body, 1600000000 + i);
	}
	assert_true(scan(&a, NULL) >= 5);
	assert_int_equal(mm_store_files_in_memory(a.s), 0); /* 5 > 2: dropped at the commit */
	/* a scan that reads the whole folder (its directory changed) and finds nothing */
	char d[600], p[800];
	udir(&a, "INBOX", d, sizeof d);
	snprintf(p, sizeof p, "%s/new/junk", d);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fclose(f);
	assert_int_equal(unlink(p), 0);
	a.now += 1000;
	assert_int_equal(mm_store_scan(a.s, a.now, NULL), 0);
	assert_int_equal(mm_store_files_in_memory(a.s), 0);
	/* bodies served one by one: at most file_cache + 1 in memory at any time */
	struct mm_delta *full = full_delta(&a);
	assert_int_equal(open_bodies(&a, full, 3), 5); /* file_cache 2, one more read in */
	mm_delta_free(&full);
	assert_int_equal(mm_store_files_hashed(a.s), 5);
	node_close(&a);
}

static void test_open_errors(void **state)
{
	(void)state;
	struct mm_state *st = mm_state_new();
	struct mm_clock c;
	mm_clock_init(&c, 1, 0);
	struct mm_store *s;
	char err[512], sd[300];
	snprintf(sd, sizeof sd, "%s/state", top);
	struct mm_store_config cfg = {.mail_location = "maildir:relative/%n", .state_dir = sd};
	assert_int_equal(mm_store_open(&s, &cfg, st, &c, err, sizeof err), -EINVAL);
	assert_null(s);
	assert_non_null(strstr(err, "relative/%n"));
	char f[300];
	snprintf(f, sizeof f, "%s/file", top);
	FILE *fp = fopen(f, "w");
	fclose(fp);
	snprintf(sd, sizeof sd, "%s/file/state", top);
	cfg.mail_location = "maildir:/nonexistent/%d/%n";
	cfg.state_dir = sd;
	assert_true(mm_store_open(&s, &cfg, st, &c, err, sizeof err) < 0);
	assert_non_null(strstr(err, sd));
	mm_store_free(&s);
	mm_state_free(&st);
}

/* ---- races between the daemon and what else writes the Maildir (found by review
 * of a cluster run under ASan that never converged; each scenario is one interleaving
 * made deterministic) ---- */

/* A folder delete on B raced a delivery into it: B is left with new/ holding the
 * message and no cur/.  B's scan makes the folder whole again (Dovecot sees no folder
 * without cur/), and a remote flag change, whose rename into cur/ failed, no longer
 * recursed until the stack overflowed. */
static void test_half_maildir_restored(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	deliver(&a, "INBOX", "1700000000.M0P1.mx", "Subject: zero\r\n\r\nbody\r\n", 1600000000);
	deliver(&a, "Archive", "1700000000.M1P1.mx", "Subject: one\r\n\r\nbody\r\n", 1600000000);
	assert_true(scan(&a, d) >= 2);
	sync_to(&a, &b, d);
	const char *f = find(&b, "Archive", "1600000000.");
	assert_non_null(f);
	assert_non_null(strstr(f, "/new/"));
	char bd[600], cur[700];
	udir(&b, "Archive", bd, sizeof bd);
	snprintf(cur, sizeof cur, "%s/cur", bd);
	assert_int_equal(rmdir(cur), 0); /* what the race leaves */
	/* a flag change on A reaches B before B's scan has run */
	rename_to(find(&a, "Archive", "1700000000.M1P1.mx"), "S");
	mm_delta_clear(d);
	assert_int_equal(scan(&a, d), 1);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(access(cur, F_OK), 0);
	f = find(&b, "Archive", "1600000000.");
	assert_non_null(f);
	assert_non_null(strstr(f, "/cur/"));
	assert_non_null(strstr(f, ":2,S"));
	/* the same half Maildir found by a scan: made whole once it has stayed so for
	 * HALF_REPAIR_MS (1.5 s), not at once (an rm -rf may be running); nothing
	 * changes in the CRDT */
	char nw[700];
	snprintf(nw, sizeof nw, "%s/new", bd);
	assert_int_equal(rmdir(nw), 0);
	assert_int_equal(scan(&b, NULL), 0);
	assert_int_equal(access(nw, F_OK), -1);
	usleep(1600 * 1000);
	assert_int_equal(scan(&b, NULL), 0);
	assert_int_equal(access(nw, F_OK), 0);
	/* a delete that runs: files go between the looks, so it is not undone */
	assert_int_equal(rmdir(nw), 0);
	assert_int_equal(scan(&b, NULL), 0);
	usleep(1600 * 1000);
	assert_int_equal(unlink(find(&b, "Archive", "1600000000.")), 0);
	assert_int_equal(scan(&b, NULL), 1); /* the expunge */
	assert_int_equal(access(nw, F_OK), -1);
	/* an empty half Maildir of no folder (a delete cut short): left alone, not made a
	 * folder of the mailbox */
	char ghost[600], gcur[700];
	snprintf(ghost, sizeof ghost, "%s/ex.org/alice/.Ghost", b.root);
	snprintf(gcur, sizeof gcur, "%s/new", ghost);
	assert_int_equal(mkdir(ghost, 0700), 0);
	assert_int_equal(mkdir(gcur, 0700), 0);
	assert_int_equal(scan(&b, NULL), 0);
	assert_false(mm_user_folder_visible(mm_state_user(b.st, "ex.org/alice", false), "Ghost"));
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A COPY on A reaches B, whose original was just renamed by a client (not scanned
 * yet): the local copy finds the file where it went, instead of leaving the message
 * missing for good (B asks no peer for bytes it indexes a file of). */
static void test_copy_source_renamed(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	const char *body = "Subject: copied\r\n\r\nsame bytes\r\n";
	deliver(&a, "INBOX", "1700000000.M1P1.mx", body, 1600000000);
	assert_true(scan(&a, d) >= 2);
	sync_to(&a, &b, d);
	assert_non_null(find(&b, "INBOX", "1600000000."));
	char md[600], dst[900], src[900];
	snprintf(md, sizeof md, "%s/ex.org/alice", a.root);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(md, "Sent", &o), 0);
	snprintf(src, sizeof src, "%s", find(&a, "INBOX", "1700000000.M1P1.mx"));
	snprintf(dst, sizeof dst, "%s/.Sent/cur/1700000009.M9P9.mx:2,S", md);
	assert_int_equal(link(src, dst), 0);
	mm_delta_clear(d);
	assert_true(scan(&a, d) >= 2);
	rename_to(find(&b, "INBOX", "1600000000."), "S"); /* B's client; no scan yet */
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_non_null(find(&b, "Sent", "1600000000."));
	assert_int_equal(scan(&b, NULL), 1); /* the client's \Seen, taken in */
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Folder F deleted on A while B still had a live message in it (F stays visible).
 * B's client expunges that message: B removes the now empty F at the commit, and
 * B's next full scan does not bring F back everywhere. */
static void test_local_last_expunge_removes_folder(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new(), *db = mm_delta_new();
	char md[600], fa[600], fb[600];
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	deliver(&a, "INBOX", "1700000000.M0P1.mx", "Subject: zero\r\n\r\nbody\r\n", 1600000000);
	snprintf(md, sizeof md, "%s/ex.org/alice", a.root);
	assert_int_equal(mm_md_folder_create(md, "F", &o), 0);
	assert_true(scan(&a, d) >= 3);
	sync_to(&a, &b, d);
	udir(&a, "F", fa, sizeof fa);
	udir(&b, "F", fb, sizeof fb);
	assert_true(mm_md_is_maildir(fb));
	deliver(&b, "F", "1700000001.M1P2.mx", "Subject: in F\r\n\r\nbody F\r\n", 1600000001);
	assert_int_equal(scan(&b, db), 1); /* not yet shipped to A */
	char cmd[800];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", fa);
	assert_int_equal(system(cmd), 0);
	mm_delta_clear(d);
	assert_true(scan(&a, d) >= 1); /* F deleted on A */
	sync_to(&a, &b, d);
	assert_true(mm_md_is_maildir(fb)); /* kept: its message is live */
	sync_to(&b, &a, db);
	assert_true(mm_md_is_maildir(fa)); /* made again on A for the message */
	assert_int_equal(unlink(find(&b, "F", "1700000001.M1P2.mx")), 0);
	mm_delta_clear(db);
	b.now += 1000;
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "F", b.now, db), 1);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_false(mm_md_is_maildir(fb)); /* B removed the empty F */
	sync_to(&b, &a, db);
	assert_false(mm_md_is_maildir(fa));
	struct mm_user *ub = mm_state_user(b.st, "ex.org/alice", false);
	assert_int_equal(scan(&b, NULL), 0);
	assert_false(mm_user_folder_visible(ub, "F"));
	mm_delta_free(&d);
	mm_delta_free(&db);
	node_close(&a);
	node_close(&b);
}

/* A folder renamed on A (Dovecot renames .W to .P): B merges the delta, which moves
 * the messages to P and deletes W.  The merge takes W's files out at once; their watch
 * events bring a scan of W (and a full one) before the commit that removes W's
 * directory.  Those scans must not take the emptied directory for a folder made on
 * B: that brought W back, empty, on every node.  And B files the messages under P
 * from the bytes it had, not from A (they were fetched again). */
static void test_remote_rename_scan_before_commit(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	char md[600], wa[600], pa[600], wb[600], pb[600];
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	deliver(&a, "INBOX", "1700000000.M0P1.mx", "Subject: zero\r\n\r\nbody\r\n", 1600000000);
	snprintf(md, sizeof md, "%s/ex.org/alice", a.root);
	assert_int_equal(mm_md_folder_create(md, "W", &o), 0);
	deliver(&a, "W", "1700000001.M1P1.mx", "Subject: one\r\n\r\nbody one\r\n", 1600000001);
	deliver(&a, "W", "1700000002.M2P1.mx", "Subject: two\r\n\r\nbody two\r\n", 1600000002);
	assert_true(scan(&a, d) >= 4);
	sync_to(&a, &b, d);
	udir(&a, "W", wa, sizeof wa);
	udir(&a, "P", pa, sizeof pa);
	udir(&b, "W", wb, sizeof wb);
	udir(&b, "P", pb, sizeof pb);
	assert_int_equal(count_files(&b, "W", "new") + count_files(&b, "W", "cur"), 2);
	assert_int_equal(rename(wa, pa), 0);
	mm_delta_clear(d);
	assert_true(scan(&a, d) >= 3);
	struct mm_user *ub = mm_state_user(b.st, "ex.org/alice", false);
	assert_true(mm_store_merge_delta(b.s, d) > 0);
	assert_false(mm_user_folder_visible(ub, "W"));
	assert_true(mm_md_is_maildir(wb)); /* removed at the commit */
	b.now += 1000;
	struct mm_delta *db = mm_delta_new();
	assert_true(mm_store_scan_folder(b.s, "ex.org/alice", "W", b.now, db) >= 0);
	assert_true(mm_store_scan(b.s, b.now, db) >= 0);
	assert_false(mm_user_folder_visible(ub, "W"));
	assert_int_equal(mm_delta_count(db), 0); /* nothing to ship: no folder made here */
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_false(mm_md_is_maildir(wb));
	/* the commit copied W's files to P from where the merge kept them: nothing is
	 * missing, nothing is left in tmp/ */
	struct xfer x = {&a, &b, 0, 0};
	assert_int_equal(mm_store_missing(b.s, fetch_cb, &x), 0);
	assert_int_equal(x.n, 0);
	assert_int_equal(count_files(&b, "P", "new") + count_files(&b, "P", "cur"), 2);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_int_equal(scan(&b, db), 0);
	assert_false(mm_user_folder_visible(ub, "W"));
	assert_true(mm_user_folder_visible(ub, "P"));
	/* one a crash left behind goes at the next start; Dovecot's file stays */
	char sp[700];
	snprintf(sp, sizeof sp, "%s/ex.org/alice/tmp/mm-spare.1.1", b.root);
	FILE *f = fopen(sp, "w");
	assert_non_null(f);
	fclose(f);
	snprintf(sp, sizeof sp, "%s/ex.org/alice/tmp/1700000009.M9P9.mx", b.root);
	assert_non_null(f = fopen(sp, "w"));
	fclose(f);
	node_close(&b);
	node_open(&b, "b", 2);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 1);
	mm_delta_free(&d);
	mm_delta_free(&db);
	node_close(&a);
	node_close(&b);
}

/* Two servers that already hold the same mail when mailmesh first runs on them: one
 * seeded from the other with cp -a (the same file names), or kept by Dovecot's dsync
 * (other file names, the same UIDs, with imap_uids).  Each indexes its own files;
 * they must agree on every message (same records, same roots), so a sync moves no
 * body and makes no duplicate.  A file restored from a backup after its message was
 * expunged is a new message, not expunged again. */
static void adopt_pair(bool imap_uids, bool renamed)
{
	struct node a = {0}, b = {0};
	node_open_cfg(&a, "a", 1, imap_uids);
	node_open_cfg(&b, "b", 2, imap_uids);
	/* INBOX: one, two, and one again with the same mtime (an APPEND made twice:
	 * Dovecot shows two messages, so must every node); Work: a copy of one */
	const char *one = "Subject: one\r\n\r\nbody one\r\n", *two = "Subject: two\r\n\r\nbody two\r\n";
	const char *bodies[4] = {one, two, one, one};
	const char *folders[4] = {"INBOX", "INBOX", "Work", "INBOX"};
	const int64_t mtimes[4] = {1600000000, 1600000001, 1600000002, 1600000000};
	char base[64], md[600], uidl[1024];
	int ul = snprintf(uidl, sizeof uidl, "3 V1600000000 N5\n");
	for (int i = 0; i < 4; i++) {
		snprintf(base, sizeof base, "16000000%02d.M%dP1.mx", i, i);
		deliver(&a, folders[i], base, bodies[i], mtimes[i]);
		if (i != 2)
			ul += snprintf(uidl + ul, sizeof uidl - (size_t)ul, "%d :%s\n", i + 1, base);
	}
	rename_to(find(&a, "INBOX", "1600000001.M1P1"), "S");
	char cmd[1500];
	snprintf(cmd, sizeof cmd, "mkdir -p '%s/ex.org' && cp -a '%s/ex.org/alice' '%s/ex.org/'", b.root, a.root, b.root);
	assert_int_equal(system(cmd), 0);
	if (renamed) { /* what dsync makes: its own names, the UIDs kept */
		for (int i = 0; i < 4; i += 1 + (i == 1)) {
			snprintf(base, sizeof base, "16000000%02d.M%dP1.mx", i, i);
			const char *f = find(&b, "INBOX", base);
			assert_non_null(f);
			char to[1300];
			snprintf(to, sizeof to, "%s", f);
			char *m = strstr(to, ".M");
			memcpy(m, ".Q", 2); /* another name, same length */
			assert_int_equal(rename(f, to), 0);
		}
	}
	if (imap_uids) {
		FILE *f;
		udir(&a, "INBOX", md, sizeof md);
		strcat(md, "/dovecot-uidlist");
		assert_non_null(f = fopen(md, "w"));
		fputs(uidl, f);
		fclose(f);
		udir(&b, "INBOX", md, sizeof md);
		strcat(md, "/dovecot-uidlist");
		assert_non_null(f = fopen(md, "w"));
		if (renamed)
			for (char *q = uidl; (q = strstr(q, ".M")); q += 2)
				memcpy(q, ".Q", 2);
		fputs(uidl, f);
		fclose(f);
	}
	struct mm_delta *da = mm_delta_new(), *db = mm_delta_new();
	assert_true(scan(&a, da) >= 4);
	assert_true(scan(&b, db) >= 4);
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	struct mm_user *ua = mm_state_user(a.st, "ex.org/alice", false);
	struct mm_user *ub = mm_state_user(b.st, "ex.org/alice", false);
	/* the messages agree already; the folders' exists stamps are each node's own */
	sync_to(&a, &b, da);
	struct xfer x = {&b, &a, 0, 0};
	assert_true(mm_store_merge_delta(a.s, db) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_int_equal(mm_store_missing(a.s, fetch_cb, &x), 0);
	assert_int_equal(x.n, 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	mm_user_root(ua, ra);
	mm_user_root(ub, rb);
	assert_memory_equal(ra, rb, MM_HASH_LEN);
	for (int i = 0; i < 2; i++) {
		struct node *n = i ? &b : &a;
		assert_int_equal(count_files(n, "INBOX", "new") + count_files(n, "INBOX", "cur"), 3);
		assert_int_equal(count_files(n, "Work", "new") + count_files(n, "Work", "cur"), 1);
	}
	/* expunged on a, then the file restored from a backup */
	snprintf(md, sizeof md, "%s", find(&a, "Work", "1600000002.M2P1"));
	char keep[700];
	snprintf(keep, sizeof keep, "%s/backup", a.root);
	assert_int_equal(link(md, keep), 0);
	assert_int_equal(unlink(md), 0);
	mm_delta_clear(da);
	assert_int_equal(scan(&a, da), 1);
	sync_to(&a, &b, da);
	assert_int_equal(count_files(&b, "Work", "new") + count_files(&b, "Work", "cur"), 0);
	assert_int_equal(rename(keep, md), 0);
	mm_delta_clear(da);
	assert_int_equal(scan(&a, da), 1);
	sync_to(&a, &b, da);
	assert_int_equal(count_files(&a, "Work", "new") + count_files(&a, "Work", "cur"), 1);
	assert_int_equal(count_files(&b, "Work", "new") + count_files(&b, "Work", "cur"), 1);
	mm_delta_free(&da);
	mm_delta_free(&db);
	node_close(&a);
	node_close(&b);
}

static void test_adopt_seeded_copy(void **state)
{
	(void)state;
	adopt_pair(false, false);
}

static void test_adopt_seeded_copy_uids(void **state)
{
	(void)state;
	adopt_pair(true, false);
}

static void test_adopt_dsync_replica(void **state)
{
	(void)state;
	adopt_pair(true, true);
}

/* Merges into a's state a remote change setting `flag` on message `key`, stamped
 * dt ms after a's clock (a newer change than any made here). */
static void remote_flag(struct node *a, const uint8_t key[MM_KEY_LEN], int flag, uint64_t dt)
{
	struct mm_user *u = mm_state_user(a->st, "ex.org/alice", false);
	struct mm_rec rem = *mm_user_get(u, key);
	rem.msg.flags[flag].value = 1;
	rem.msg.flags[flag].stamp = (mm_hlc){(a->now + dt) << MM_HLC_LOGICAL_BITS, 99};
	assert_int_equal(mm_store_merge(a->s, "ex.org/alice", &rem), 1);
}

/* A client sets \Seen (rename, not scanned yet); two remote changes arrive before
 * the scan.  The first finds the file renamed and leaves it to the scan; the second
 * must do the same, not count the client's letter as one to keep aside and rename
 * it away: \Seen survives, with both remote flags. */
static void test_local_flag_kept_over_two_remote(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	struct mm_delta *d = mm_delta_new();
	deliver(&a, "INBOX", "m1", "Subject: x\r\n\r\nbody\r\n", 1700000000);
	assert_int_equal(scan(&a, d), 2);
	uint8_t key[MM_KEY_LEN];
	memcpy(key, msg_of(&a, d, NULL)->key, MM_KEY_LEN);
	rename_to(find(&a, "INBOX", "m1"), "S"); /* the client's change */
	struct mm_user *u = mm_state_user(a.st, "ex.org/alice", false);
	remote_flag(&a, key, MM_FLAG_FLAGGED, 5000);
	remote_flag(&a, key, MM_FLAG_DRAFT, 6000);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_int_equal(scan(&a, NULL), 1);
	assert_non_null(strstr(find(&a, "INBOX", "m1"), ":2,DFS"));
	assert_int_equal(mm_user_get(u, key)->msg.flags[MM_FLAG_SEEN].value, 1);
	mm_delta_free(&d);
	node_close(&a);
}

/* A client's rename carries a keyword letter no dovecot-keywords line names, and a
 * remote \Flagged arrived meanwhile: the scan takes \Seen in and still writes the
 * remote flag (keeping the unnamed letter as it is). */
static void test_unnamed_letter_lets_remote_through(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	struct mm_delta *d = mm_delta_new();
	deliver(&a, "INBOX", "m1", "Subject: x\r\n\r\nbody\r\n", 1700000000);
	assert_int_equal(scan(&a, d), 2);
	uint8_t key[MM_KEY_LEN];
	memcpy(key, msg_of(&a, d, NULL)->key, MM_KEY_LEN);
	rename_to(find(&a, "INBOX", "m1"), "Sz"); /* z: named nowhere */
	struct mm_user *u = mm_state_user(a.st, "ex.org/alice", false);
	remote_flag(&a, key, MM_FLAG_FLAGGED, 5000);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_int_equal(scan(&a, NULL), 1); /* \Seen taken in */
	assert_int_equal(mm_user_get(u, key)->msg.flags[MM_FLAG_FLAGGED].value, 1);
	assert_non_null(strstr(find(&a, "INBOX", "m1"), ":2,FSz"));
	mm_delta_free(&d);
	node_close(&a);
}

/* A process holding a folder's dovecot-uidlist.lock takes it again at once (a flag
 * rename while its own UID pass holds it used to wait 2 s a file). */
static void test_uidlist_lock_reentrant(void **state)
{
	(void)state;
	char d[600], lk[700];
	snprintf(d, sizeof d, "%s/f", top);
	assert_int_equal(mkdir(d, 0700), 0);
	snprintf(lk, sizeof lk, "%s/dovecot-uidlist.lock", d);
	assert_int_equal(mm_md_uidlist_lock(d, 0), 0);
	assert_int_equal(mm_md_uidlist_lock(d, 0), 0); /* nested: no wait, no -EAGAIN */
	mm_md_uidlist_unlock(d);
	assert_int_equal(access(lk, F_OK), 0); /* the outer take still holds it */
	mm_md_uidlist_unlock(d);
	assert_int_equal(access(lk, F_OK), -1);
}

/* A remote keyword arrives while another process holds the folder's uidlist lock for
 * longer than a keyword add waits (5 s): the file cannot get the letter then, and
 * gets it at a later commit (it used to stay without it for good). */
static void test_keyword_add_retried(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: kw\r\n\r\nbody\r\n", 1600000000);
	assert_true(scan(&a, d) >= 2);
	sync_to(&a, &b, d);
	char bd[600], p[700];
	udir(&b, "INBOX", bd, sizeof bd);
	snprintf(p, sizeof p, "%s/dovecot-keywords", bd);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs("0 $Work\n", f);
	fclose(f);
	rename_to(find(&b, "INBOX", "1600000000."), "a");
	mm_delta_clear(d);
	assert_int_equal(scan(&b, d), 1);
	/* a's uidlist lock held by another live process */
	char ad[600], lk[700];
	udir(&a, "INBOX", ad, sizeof ad);
	foreign_uidlist_lock(ad, lk, sizeof lk);
	assert_true(mm_store_merge_delta(a.s, d) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_null(strstr(find(&a, "INBOX", "1700000000.M1P1.mx"), ":2,a"));
	assert_int_equal(unlink(lk), 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_non_null(strstr(find(&a, "INBOX", "1700000000.M1P1.mx"), ":2,a"));
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Keywords that differ only in case: Dovecot's are one keyword (its index compares
 * names with strcasecmp), and a second line of dovecot-keywords naming one again in
 * another case it takes for a lost name, written over as "unknown-1" (checked with
 * Dovecot 2.3.19), which the next scan would have replicated to every node as a new
 * keyword.  "Work" set on b, where dovecot-keywords says "Work", reaches a, where it
 * says "work": a uses that letter, adds no line, and a client removing the letter
 * there removes both spellings (or the letter would be written back). */
static void test_keyword_case_variants(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: one\r\n\r\n1\r\n", 1600000000);
	deliver(&a, "INBOX", "1700000001.M2P1.mx", "Subject: two\r\n\r\n2\r\n", 1600000100);
	assert_true(scan(&a, d) >= 2);
	sync_to(&a, &b, d);
	char ad[600], bd[600], p[700], text[256];
	udir(&a, "INBOX", ad, sizeof ad);
	udir(&b, "INBOX", bd, sizeof bd);
	snprintf(p, sizeof p, "%s/dovecot-keywords", ad);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs("0 work\n", f);
	fclose(f);
	rename_to(find(&a, "INBOX", "1700000000.M1P1.mx"), "a");
	assert_int_equal(scan(&a, NULL), 1);
	snprintf(p, sizeof p, "%s/dovecot-keywords", bd);
	f = fopen(p, "w");
	assert_non_null(f);
	fputs("0 Work\n", f);
	fclose(f);
	rename_to(find(&b, "INBOX", "1600000100."), "a");
	mm_delta_clear(d);
	assert_int_equal(scan(&b, d), 1);
	assert_true(mm_store_merge_delta(a.s, d) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_non_null(strstr(find(&a, "INBOX", "1700000001.M2P1.mx"), ":2,a"));
	snprintf(p, sizeof p, "%s/dovecot-keywords", ad);
	f = fopen(p, "r");
	assert_non_null(f);
	size_t k = fread(text, 1, sizeof text - 1, f);
	text[k] = 0;
	fclose(f);
	assert_string_equal(text, "0 work\n");
	/* a client on a takes the keyword off: gone in both spellings, not written back */
	rename_to(find(&a, "INBOX", "1700000001.M2P1.mx"), "");
	mm_delta_clear(d);
	assert_true(scan(&a, d) >= 1);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_null(strstr(find(&a, "INBOX", "1700000001.M2P1.mx"), ":2,a"));
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_null(strstr(find(&b, "INBOX", "1600000100."), ":2,a"));
	assert_int_equal(scan(&a, NULL), 0);
	assert_int_equal(scan(&b, NULL), 0);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The same with b's clock ahead of a's by more than max_skew (a's clock does not
 * follow it: mm_clock_observe): "Work" set on b wins over any stamp a can make, so
 * a's removal of that spelling changes nothing; local_letters then started its walk
 * of the keywords over and over (the daemon hung in the scan).  A removal that
 * loses to a newer set is the CRDT's answer: the letter comes back on a. */
static void hang_alarm(int sig)
{
	(void)sig;
	static const char m[] = "test_keyword_case_variant_future_stamp: scan hung (local_letters loop)\n";
	if (write(2, m, sizeof m - 1) < 0) {}
	_exit(3);
}

static void test_keyword_case_variant_future_stamp(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	/* b's clock a day ahead of the wall clock: beyond a's max_skew */
	b.now = (uint64_t)ts.tv_sec * 1000 + 86400ULL * 1000;
	struct mm_delta *d = mm_delta_new();
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "Subject: one\r\n\r\n1\r\n", 1600000000);
	deliver(&a, "INBOX", "1700000001.M2P1.mx", "Subject: two\r\n\r\n2\r\n", 1600000100);
	assert_true(scan(&a, d) >= 2);
	sync_to(&a, &b, d);
	char ad[600], bd[600], p[700];
	udir(&a, "INBOX", ad, sizeof ad);
	udir(&b, "INBOX", bd, sizeof bd);
	snprintf(p, sizeof p, "%s/dovecot-keywords", ad);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs("0 work\n", f);
	fclose(f);
	rename_to(find(&a, "INBOX", "1700000001.M2P1.mx"), "a"); /* "work" set on a */
	assert_int_equal(scan(&a, NULL), 1);
	snprintf(p, sizeof p, "%s/dovecot-keywords", bd);
	f = fopen(p, "w");
	assert_non_null(f);
	fputs("0 Work\n", f);
	fclose(f);
	rename_to(find(&b, "INBOX", "1600000100."), "a"); /* "Work" set on b, far ahead */
	mm_delta_clear(d);
	assert_int_equal(scan(&b, d), 1);
	assert_true(mm_store_merge_delta(a.s, d) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	/* a client on a takes the letter off */
	rename_to(find(&a, "INBOX", "1700000001.M2P1.mx"), "");
	signal(SIGALRM, hang_alarm);
	alarm(20);
	a.now += 1000;
	assert_true(mm_store_scan(a.s, a.now, NULL) >= 0);
	alarm(0);
	assert_int_equal(mm_store_commit(a.s), 0);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* Sums a maildirsize file's "<bytes> <count>" lines (after its limits line). */
static void maildirsize_sum(const struct node *n, long long *bytes_r, long long *count_r, int *lines_r,
                            char *limits, size_t cap)
{
	char p[600], line[128];
	snprintf(p, sizeof p, "%s/ex.org/alice/maildirsize", n->root);
	FILE *f = fopen(p, "r");
	assert_non_null(f);
	*bytes_r = *count_r = 0;
	*lines_r = 0;
	assert_non_null(fgets(limits, (int)cap, f));
	while (fgets(line, sizeof line, f)) {
		long long b, c;
		assert_int_equal(sscanf(line, "%lld %lld", &b, &c), 2);
		*bytes_r += b;
		*count_r += c;
		(*lines_r)++;
	}
	fclose(f);
}

/* Maildir++ quota (Dovecot's quota backend "maildir"): mail a replica places or removes
 * is appended to the user's maildirsize as a delivery agent does, so its usage counts
 * the replicated mail too; the limits line stays; no file, no quota: none is made. */
static void test_maildirsize(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	struct mm_delta *d = mm_delta_new();
	deliver(&a, "INBOX", "first", "Subject: 0\r\n\r\nfirst\r\n", 1600000000);
	assert_true(scan(&a, d) >= 1);
	sync_to(&a, &b, d); /* b's Maildir exists now, without a maildirsize */
	char p[600], limits[64];
	snprintf(p, sizeof p, "%s/ex.org/alice/maildirsize", b.root);
	assert_int_equal(access(p, F_OK), -1); /* none made */
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs("1000000S,100C\n21 1\n", f); /* as Dovecot writes it: its usage so far */
	fclose(f);

	mm_delta_clear(d);
	three_messages(&a, d);
	sync_to(&a, &b, d);
	long long bytes, count;
	int lines;
	maildirsize_sum(&b, &bytes, &count, &lines, limits, sizeof limits);
	assert_string_equal(limits, "1000000S,100C\n");
	long long three = (long long)(strlen("Subject: one\r\n\r\nbody one\r\n") + strlen("Subject: two\r\n\r\nbody two\r\n") +
	                              strlen("Subject: three\r\n\r\nbody three\r\n"));
	assert_int_equal(count, 4);
	assert_int_equal(bytes, 21 + three);
	assert_true(lines >= 2 && lines <= 4); /* a line per placement (here a body each) */

	/* an expunge on a: removed on b, and counted out */
	mm_delta_clear(d);
	assert_int_equal(unlink(find(&a, "INBOX", "1700000001.M1P1.mx")), 0);
	assert_true(scan(&a, d) >= 1);
	sync_to(&a, &b, d);
	assert_null(find(&b, "INBOX", "1600000001."));
	maildirsize_sum(&b, &bytes, &count, &lines, limits, sizeof limits);
	assert_int_equal(count, 3);
	assert_int_equal(bytes, 21 + three - (long long)strlen("Subject: two\r\n\r\nbody two\r\n"));
	/* what b's files hold */
	char cmd[800], out[64] = "";
	snprintf(cmd, sizeof cmd, "cat %s/ex.org/alice/cur/* %s/ex.org/alice/new/* 2>/dev/null | wc -c", b.root, b.root);
	FILE *pp = popen(cmd, "r");
	assert_non_null(pp);
	assert_non_null(fgets(out, sizeof out, pp));
	pclose(pp);
	assert_int_equal(atoll(out), bytes);

	/* a file past what Dovecot reads (5,120 bytes) is recounted by Dovecot: not grown */
	snprintf(p, sizeof p, "%s/ex.org/alice/maildirsize", b.root);
	f = fopen(p, "a");
	assert_non_null(f);
	for (int i = 0; i < 1300; i++)
		fputs("0 0\n", f);
	fclose(f);
	struct stat st0, st1;
	assert_int_equal(stat(p, &st0), 0);
	assert_true(st0.st_size >= 5120);
	mm_delta_clear(d);
	deliver(&a, "INBOX", "late", "Subject: late\r\n\r\nlate\r\n", 1600000009);
	assert_true(scan(&a, d) >= 1);
	sync_to(&a, &b, d);
	assert_non_null(find(&b, "INBOX", "1600000009."));
	assert_int_equal(stat(p, &st1), 0);
	assert_int_equal(st1.st_size, st0.st_size);

	/* a's changes of its own mail are Dovecot's to count: a's file stays as it is */
	snprintf(p, sizeof p, "%s/ex.org/alice/maildirsize", a.root);
	assert_int_equal(access(p, F_OK), -1);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* quota_ignore = Trash (Dovecot's quota_rule Trash:ignore): what b places in or removes
 * from Trash is left out of maildirsize, INBOX's still counts. */
static void test_maildirsize_ignored_folder(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	assert_int_equal(mm_store_set_quota_ignore(b.s, "Junk, Trash"), 0);
	assert_int_equal(mm_store_set_quota_ignore(b.s, "Trash,,Junk"), -EINVAL); /* (kept as it was) */
	struct mm_delta *d = mm_delta_new();
	deliver(&a, "INBOX", "first", "Subject: 0\r\n\r\nfirst\r\n", 1600000000);
	assert_true(scan(&a, d) >= 1);
	sync_to(&a, &b, d);
	char p[600], limits[64];
	snprintf(p, sizeof p, "%s/ex.org/alice/maildirsize", b.root);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs("1000000S,100C\n21 1\n", f);
	fclose(f);
	mm_delta_clear(d);
	const char *in = "Subject: in\r\n\r\ncounted\r\n", *junk = "Subject: junk\r\n\r\nnot counted\r\n";
	deliver(&a, "INBOX", "1600000001.M1P1.a", in, 1600000001);
	deliver(&a, "Trash", "1600000002.M1P1.a", junk, 1600000002);
	deliver(&a, "Trash", "1600000003.M1P1.a", junk, 1600000003);
	assert_true(scan(&a, d) >= 3);
	sync_to(&a, &b, d);
	assert_int_equal(count_files(&b, "Trash", "new") + count_files(&b, "Trash", "cur"), 2);
	long long bytes, count;
	int lines;
	maildirsize_sum(&b, &bytes, &count, &lines, limits, sizeof limits);
	assert_int_equal(count, 2);
	assert_int_equal(bytes, 21 + (long long)strlen(in));
	/* emptied on a: nothing counted out on b */
	mm_delta_clear(d);
	assert_int_equal(unlink(find(&a, "Trash", "1600000002.")), 0);
	assert_int_equal(unlink(find(&a, "Trash", "1600000003.")), 0);
	assert_true(scan(&a, d) >= 2);
	sync_to(&a, &b, d);
	assert_int_equal(count_files(&b, "Trash", "new") + count_files(&b, "Trash", "cur"), 0);
	maildirsize_sum(&b, &bytes, &count, &lines, limits, sizeof limits);
	assert_int_equal(count, 2);
	assert_int_equal(bytes, 21 + (long long)strlen(in));
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The daemon's small values (peers' GC times): a get sees what was set for the next
 * commit (a peer removed by a reload and listed again before that commit gets its
 * times back, not older ones), then the durable value, also after a reopen. */
static void test_meta_staged(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, false);
	uint64_t v = 99;
	assert_int_equal(mm_store_meta_get(a.s, "synced:ab", &v), -ENOENT);
	assert_int_equal(v, 0);
	assert_int_equal(mm_store_meta_set(a.s, "synced:ab", 5), 0);
	assert_int_equal(mm_store_meta_get(a.s, "synced:ab", &v), 0);
	assert_int_equal(v, 5);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_int_equal(mm_store_meta_get(a.s, "synced:ab", &v), 0);
	assert_int_equal(v, 5);
	assert_int_equal(mm_store_meta_set(a.s, "synced:ab", 7), 0);
	assert_int_equal(mm_store_meta_get(a.s, "synced:ab", &v), 0);
	assert_int_equal(v, 7);
	assert_int_equal(mm_store_commit(a.s), 0);
	node_close(&a);
	node_open_cfg(&a, "a", 1, false);
	assert_int_equal(mm_store_meta_get(a.s, "synced:ab", &v), 0);
	assert_int_equal(v, 7);
	assert_int_equal(mm_store_meta_get(a.s, "", &v), -EINVAL);
	node_close(&a);
}


/* ---- the apply side racing Dovecot (review of 2026-12-02) ------------------------- */

/* link(2) of a source path holding link_race_from, once: after the link is made, the
 * source is renamed to link_race_to (a client's flag change by rename, between the
 * store's link and its unlink of the old name). */
static const char *link_race_from;
static char link_race_to[1000];
int link(const char *a, const char *b)
{
	int r = (int)syscall(SYS_link, a, b);
	if (r == 0 && link_race_from && strstr(a, link_race_from)) {
		link_race_from = NULL;
		if (syscall(SYS_rename, a, link_race_to) < 0)
			abort();
	}
	return r;
}

/* A UID re-file (uid_sync_folder: link the new name, unlink the old) while a client
 * sets \Seen on the message (rename new/m1 -> cur/m1:2,S) between the link and the
 * unlink.  The unlink fails, and the message is left under two names: the new one
 * with the old flags, the old base with the client's.  The scan then took the old
 * base for a new delivery: a second record of the message (a duplicate on every
 * node), with the client's \Seen on the duplicate only. */
static void test_refile_races_flag_change(void **state)
{
	(void)state;
	struct node a = {0};
	node_open_cfg(&a, "a", 1, true);
	deliver(&a, "INBOX", "m1", "Subject: 1\r\n\r\nbody 1\r\n", 1600000000);
	deliver(&a, "INBOX", "m2", "Subject: 2\r\n\r\nbody 2\r\n", 1600000001);
	assert_true(scan(&a, NULL) >= 2);
	struct mm_delta *full = full_delta(&a);
	const struct mm_rec *m = msg_by_idate(full, 1600000000);
	assert_non_null(m);
	struct mm_rec remote = *m;
	remote.msg.uid_need = 7; /* a replica asks for a move: the authority re-files m1 */
	assert_int_equal(mm_store_merge(a.s, "ex.org/alice", &remote), 1);
	struct mm_user *u = mm_state_user(a.st, "ex.org/alice", false);
	size_t n_before = mm_user_count(u);
	char d[600];
	udir(&a, "INBOX", d, sizeof d);
	snprintf(link_race_to, sizeof link_race_to, "%s/cur/m1:2,S", d);
	link_race_from = "/new/m1";
	mm_store_set_uid_authority(a.s, true);
	assert_int_equal(mm_store_commit(a.s), 0);
	assert_null(link_race_from); /* the race happened */
	struct mm_delta *out = mm_delta_new();
	scan(&a, out);
	scan(&a, out);
	u = mm_state_user(a.st, "ex.org/alice", false);
	assert_int_equal(mm_user_count(u), n_before); /* no second record */
	const struct mm_rec *r = mm_user_get(u, remote.key);
	assert_non_null(r);
	assert_int_equal(r->type, MM_REC_MESSAGE);
	assert_int_equal(r->msg.flags[MM_FLAG_SEEN].value, 1); /* the client's change */
	assert_int_equal(count_files(&a, "INBOX", "new") + count_files(&a, "INBOX", "cur"), 2);
	/* the next pass moves it, \Seen kept, listed under the record's UID */
	assert_int_equal(mm_store_commit(a.s), 0);
	r = mm_user_get(u, remote.key);
	assert_true(r->msg.uid_value >= 7);
	const char *f = find(&a, "INBOX", "1600000000.");
	if (!f) /* (listed again under its own name: no Dovecot has read this listing) */
		f = find(&a, "INBOX", "m1");
	assert_non_null(f);
	assert_non_null(strstr(f, "/cur/"));
	char base[300];
	snprintf(base, sizeof base, "%s", strrchr(f, '/') + 1);
	*strchr(base, ':') = 0; /* (listed by base, as Dovecot matches it) */
	assert_true(listed_uid(&a, base) == r->msg.uid_value || inbox_listing(&a, strrchr(f, '/') + 1, 0) ==
	            r->msg.uid_value);
	assert_int_equal(count_files(&a, "INBOX", "new") + count_files(&a, "INBOX", "cur"), 2);
	mm_delta_free(&out);
	mm_delta_free(&full);
	node_close(&a);
}


/* UIDs of INBOX's files that dovecot-uidlist lists (by base, as Dovecot matches them),
 * each checked against the file's record: returns how many files are listed under
 * their record's UID; *files_r: how many files there are. */
struct listed_ctx {
	struct node *n;
	int files, right;
	uint32_t uids[64];
};

static int listed_cb(void *arg, const struct mm_rec *r)
{
	struct listed_ctx *c = arg;
	if (r->type != MM_REC_MESSAGE || strcmp(r->msg.folder, "INBOX"))
		return 0;
	c->uids[c->files++ % 64] = r->msg.uid_value;
	return 0;
}

/* While a placement job is out (its files listed in dovecot-uidlist under the lock
 * place_prepare took, the write and the renames on the daemon's pool thread), the
 * loop thread scans INBOX (a file delivered there by an MDA that does not list it,
 * or by Dovecot once it could not get the lock): the lock is taken "again" (held
 * locks are the process's, re-entrant), the listing read before the job wrote its
 * own, and the delivery numbered with the UID of one of the job's messages.  The
 * job's write then drops the delivery's line.  Two records claim one UID, and the
 * file is listed under none. */
static void test_place_job_lock_not_reentered(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open_cfg(&a, "a", 1, true);
	node_open_cfg(&b, "b", 2, true);
	mm_store_set_uid_authority(a.s, true);
	struct mm_delta *d = mm_delta_new();
	small_messages(&a, 3, d);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	struct wanted wa = {0};
	assert_int_equal(mm_store_missing(b.s, collect_cb, &wa), 0);
	assert_int_equal(wa.n, 3);
	stage_three(&a, &b, &wa);
	struct mm_store_place *job = NULL;
	assert_int_equal(mm_store_place_begin(b.s, &job), 1);
	assert_true(lock_held(&b));
	/* the loop goes on while the pool thread works: a delivery, its scan, a commit */
	deliver(&b, "INBOX", "m9", "Subject: 9\r\n\r\nbody 9\r\n", 1600000009);
	struct mm_delta *db = mm_delta_new();
	b.now += 1000;
	assert_true(mm_store_scan_folder(b.s, "ex.org/alice", "INBOX", b.now, db) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	mm_store_place_run(job); /* (the pool thread) */
	assert_int_equal(mm_store_place_end(b.s, &job), 3);
	assert_false(lock_held(&b));
	/* what the daemon does next: the scans the lock's release and the files' events
	 * ask for, and commits */
	for (int i = 0; i < 3; i++) {
		b.now += 1000;
		assert_true(mm_store_scan_folder(b.s, "ex.org/alice", "INBOX", b.now, db) >= 0);
		assert_int_equal(mm_store_commit(b.s), 0);
	}
	struct listed_ctx c = {&b, 0, 0, {0}};
	struct mm_user *u = mm_state_user(b.st, "ex.org/alice", false);
	assert_int_equal(mm_user_foreach(u, NULL, 0, listed_cb, &c), 0);
	assert_int_equal(c.files, 4);
	for (int i = 0; i < 4; i++) {
		assert_true(c.uids[i] != 0);
		for (int j = 0; j < i; j++)
			assert_true(c.uids[i] != c.uids[j]); /* no two records under one UID */
	}
	/* m9 listed, under its record's UID */
	const char *f = find(&b, "INBOX", "m9");
	assert_non_null(f);
	uint32_t l9 = listed_uid(&b, "m9");
	assert_true(l9 != 0);
	bool found = false;
	for (int i = 0; i < 4; i++)
		found |= c.uids[i] == l9;
	assert_true(found);
	char dir[600];
	udir(&b, "INBOX", dir, sizeof dir);
	struct mm_md_uidlist ul;
	assert_int_equal(mm_md_uidlist_load(dir, &ul), 0);
	assert_int_equal(ul.n, 4);
	mm_md_uidlist_clear(&ul);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}


/* open(2) of a path ending in open_fail_suffix fails with EIO, open_fail_n times
 * (this program's own: the store is linked in). */
int open(const char *p, int flags, ...)
{
	mode_t mode = 0;
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	size_t pl = strlen(p), sl = open_fail_suffix ? strlen(open_fail_suffix) : 0;
	if (open_fail_n > 0 && pl >= sl && !strcmp(p + pl - sl, open_fail_suffix)) {
		open_fail_n--;
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_openat, AT_FDCWD, p, flags, mode);
}

/* Dovecot on b subscribes Drafts, and the commit of a remote subscription change
 * cannot read the subscriptions file (EIO, once): it wrote the CRDT's list over
 * Dovecot's all the same, and Drafts' subscription was lost, here and on every node
 * (mirror_deferred: scan_subscriptions fails quietly, the file is written anyway). */
static void test_subscriptions_unreadable_at_commit(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	struct mm_delta *db = mm_delta_new();
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	char md[400];
	alice_dir(&a, md, sizeof md);
	const char *const on_a[] = {"Archive", "INBOX"};
	assert_int_equal(mm_md_subs_write(md, on_a, 2, &o), 0);
	assert_int_equal(scan(&a, d), 1);
	alice_dir(&b, md, sizeof md);
	const char *const on_b[] = {"Archive", "Drafts"}; /* Dovecot's SUBSCRIBE Drafts */
	assert_int_equal(mm_md_subs_write(md, on_b, 2, &o), 0);
	open_fail_suffix = "/b/mail/ex.org/alice/subscriptions";
	open_fail_n = 1;
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(open_fail_n, 0); /* the read failed */
	open_fail_suffix = NULL;
	assert_true(mm_store_merge_delta(a.s, mm_store_commit_delta(b.s)) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	for (int i = 0; i < 2; i++) {
		scan(&b, db);
		assert_int_equal(mm_store_commit(b.s), 0);
	}
	sync_to(&b, &a, db);
	assert_true(subs_has(&b, "Drafts") && subs_has(&b, "INBOX") && subs_has(&b, "Archive"));
	assert_true(subs_has(&a, "Drafts") && subs_has(&a, "INBOX") && subs_has(&a, "Archive"));
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* renameat2(2) of a file whose destination holds rename_fail_at fails with
 * rename_errno, rename_fail_n times (a full disk growing new/ or cur/: ENOSPC; this
 * program's own, the store is linked in). */
static const char *rename_fail_at;
static int rename_errno, rename_fail_n;

int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)
{
	if (rename_fail_n > 0 && rename_fail_at && strstr(newpath, rename_fail_at)) {
		rename_fail_n--;
		errno = rename_errno;
		return -1;
	}
	return (int)syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
}

/* A batch is listed in dovecot-uidlist before its renames (under the lock).  When the
 * rename of one of its bodies fails (ENOSPC: new/ cannot grow), its name stays listed
 * under the message's UID and NEXTUID has passed it; the body is fetched again under
 * a new name, which cannot be listed under that UID any more: the message was listed
 * provisionally elsewhere and asked for a move, i.e. renumbered on every node. */
static void place_rename_fails(bool restart)
{
	struct node a = {0}, b = {0};
	node_open_cfg(&a, "a", 1, true);
	node_open_cfg(&b, "b", 2, true);
	struct mm_delta *d = mm_delta_new();
	small_messages(&a, 3, d);
	assert_true(mm_store_merge_delta(b.s, d) >= 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	struct wanted wa = {0};
	assert_int_equal(mm_store_missing(b.s, collect_cb, &wa), 0);
	assert_int_equal(wa.n, 3);
	rename_fail_at = "/b/mail/ex.org/alice/new/1600000000.";
	rename_errno = ENOSPC;
	rename_fail_n = 1;
	stage_three(&a, &b, &wa);
	mm_store_flush(b.s);
	assert_int_equal(rename_fail_n, 0); /* the first message's rename failed */
	rename_fail_at = NULL;
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_null(find(&b, "INBOX", "1600000000."));
	assert_int_equal(mm_store_missing_count(b.s), 1);
	if (restart) { /* (a kill or a stop before the body came again) */
		node_close(&b);
		node_open_cfg(&b, "b", 2, true);
	}
	/* space again: the body comes again */
	struct xfer x = {&a, &b, 0, 0};
	assert_int_equal(mm_store_missing(b.s, stage_cb, &x), 0);
	assert_int_equal(x.n, 1);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	scan(&b, NULL);
	scan(&b, NULL);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	const char *p = find(&a, "INBOX", "1700000000.");
	assert_non_null(p);
	uint32_t uid_a = listed_uid(&a, strrchr(p, '/') + 1);
	assert_true(uid_a > 0);
	p = find(&b, "INBOX", "1600000000.");
	assert_non_null(p);
	/* shown under the UID it has on a (and in its record), not moved */
	assert_int_equal(listed_uid(&b, strrchr(p, '/') + 1), uid_a);
	for (int i = 0; i < 3; i++)
		assert_int_equal(rec_uid(&b, wa.key[i]), rec_uid(&a, wa.key[i]));
	/* and nothing listed that is not there */
	char dir[600];
	udir(&b, "INBOX", dir, sizeof dir);
	struct mm_md_uidlist ul;
	assert_int_equal(mm_md_uidlist_load(dir, &ul), 0);
	assert_int_equal(ul.n, 3);
	mm_md_uidlist_clear(&ul);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

static void test_place_rename_fails_keeps_uid(void **state)
{
	(void)state;
	place_rename_fails(false);
}

static void test_place_rename_fails_keeps_uid_restart(void **state)
{
	(void)state;
	place_rename_fails(true);
}

/* A file this store placed (its name carries its record's key, ".mm_<key>") moved by
 * hand (or by Dovecot with maildir_copy_preserve_filename) into another folder, under
 * the same name: a move, i.e. the old message expunged and a new one in the target
 * (docs/design.md).  When the source folder is scanned first, the key is expunged;
 * the scan of the target then took the file for "ours, for a message expunged before
 * the crash" and unlinked it: the moved mail was lost, on every node. */
static void test_moved_own_file_kept(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = alice_on_two(&a, &b);
	const char *p = find(&b, "INBOX", "1700000000.");
	assert_non_null(p);
	assert_non_null(strstr(p, ".mm_")); /* placed by b's store */
	char from[1200], to[1200], md[400];
	snprintf(from, sizeof from, "%s", p);
	alice_dir(&b, md, sizeof md);
	snprintf(to, sizeof to, "%s/.Archive/cur/%s", md, strrchr(p, '/') + 1);
	if (!strchr(strrchr(to, '/'), ':'))
		strcat(to, ":2,");
	assert_int_equal(rename(from, to), 0);
	struct mm_delta *db = mm_delta_new();
	b.now += 1000;
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "INBOX", b.now, db), 1); /* the expunge */
	assert_int_equal(mm_store_commit(b.s), 0);
	b.now += 1000;
	mm_store_scan_folder(b.s, "ex.org/alice", "Archive", b.now, db);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(access(to, F_OK), 0); /* the moved message is still there */
	assert_int_equal(count_files(&b, "Archive", "new") + count_files(&b, "Archive", "cur"), 2);
	/* and it reaches a as a message in Archive */
	sync_to(&b, &a, db);
	assert_int_equal(count_files(&a, "Archive", "new") + count_files(&a, "Archive", "cur"), 2);
	assert_int_equal(count_files(&a, "INBOX", "new") + count_files(&a, "INBOX", "cur"), 1);
	mm_delta_free(&db);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* kill -9 between a placement's renames (place_run) and place_finish, with an expunge
 * from a peer merged and committed meanwhile: the file carries the key of a message
 * expunged before the crash, and no index entry; the rescan finishes the expunge
 * (test_moved_own_file_kept must not make it keep such files). */
static void test_crash_placed_then_expunged_remotely(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_staged(&a, &b, &wa);
	char dir[600], p[800];
	udir(&a, "INBOX", dir, sizeof dir);
	snprintf(p, sizeof p, "%s/new/1700000000.M1P1.mx", dir);
	assert_int_equal(unlink(p), 0);
	struct mm_delta *dt = mm_delta_new();
	assert_int_equal(scan(&a, dt), 1);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct mm_store_place *job = NULL;
		int bad = mm_store_place_begin(b.s, &job) != 1;
		mm_store_place_run(job);
		bad |= (mm_store_merge_delta(b.s, dt) < 0) << 1;
		bad |= (mm_store_commit(b.s) != 0) << 2;
		_exit(bad); /* killed before place_end */
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	node_close(&b);
	assert_non_null(find(&b, "INBOX", "1600000000."));
	node_open(&b, "b", 2);
	scan(&b, NULL);
	assert_null(find(&b, "INBOX", "1600000000.")); /* the expunge finished */
	assert_non_null(find(&b, "INBOX", "1600000001."));
	assert_non_null(find(&b, "INBOX", "1600000002."));
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 2);
	mm_delta_free(&dt);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* a flags its first message FS (and its second S when `two`): the delta of that. */
static struct mm_delta *flags_on_a(struct node *a, bool two)
{
	rename_to(find(a, "INBOX", "1700000000.M1P1"), "FS");
	if (two)
		rename_to(find(a, "INBOX", "1700000001.M1P1"), "S");
	struct mm_delta *dt = mm_delta_new();
	assert_true(scan(a, dt) >= (two ? 2 : 1));
	return dt;
}

/* b begins placing what it staged, merges and commits dt meanwhile, and runs the
 * job's file work (its files are in new/): the job, place_end not run. */
static struct mm_store_place *merged_while_placing(struct node *b, struct mm_delta *dt)
{
	struct mm_store_place *job = NULL;
	assert_int_equal(mm_store_place_begin(b->s, &job), 1);
	assert_true(mm_store_merge_delta(b->s, dt) >= 0);
	assert_int_equal(mm_store_commit(b->s), 0);
	mm_store_place_run(job);
	return job;
}

/* kill -9 while a placement job is out, after a flag change from a peer was merged
 * and committed meanwhile: the job places the file with the letters it computed
 * before the merge, and its index entry is never committed.  At the restart the file's
 * letters differ from the record's, and the rescan took the difference for a change
 * made here while the daemon was down: the old flags, stamped anew, won on every node
 * (it_daemon_crash under ASan, MM_SEED=435567150).  The commit records the letters of
 * the files being placed; the rescan compares with those. */
static int count_mark_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	(void)k, (void)kl, (void)v, (void)vl;
	++*(int *)arg;
	return 0;
}

/* The placement marks ('P' entries of the file index) in n's closed database. */
static int count_marks(const struct node *n)
{
	struct mm_statedb *db = NULL;
	char err[256];
	assert_int_equal(mm_statedb_open(&db, n->sdir, 0, err, sizeof err), 0);
	int c = 0;
	assert_int_equal(mm_statedb_range(db, MM_DB_FIDX, "P", 1, count_mark_cb, &c), 0);
	mm_statedb_free(&db);
	return c;
}

/* In a child process, b begins placing what it staged, merges and commits dt
 * meanwhile, runs the job's file work and dies before place_end (a kill -9); then b,
 * in this process, is closed without a commit: what is on disk is what the kill left. */
static void killed_while_placing(struct node *b, struct mm_delta *dt)
{
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct mm_store_place *job = NULL;
		int bad = mm_store_place_begin(b->s, &job) != 1;
		bad |= (mm_store_merge_delta(b->s, dt) < 0) << 1; /* while the job is out */
		bad |= (mm_store_commit(b->s) != 0) << 2;
		mm_store_place_run(job);
		_exit(bad); /* killed before place_end */
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	node_close(b);
}

static void test_crash_placing_flags_merged(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_staged(&a, &b, &wa);
	struct mm_delta *dt = flags_on_a(&a, true);
	killed_while_placing(&b, dt);
	const char *f = find(&b, "INBOX", "1600000000.");
	assert_non_null(f);
	assert_null(strchr(f, ':')); /* placed with the old (no) letters */
	assert_int_equal(count_marks(&b), 2); /* the two whose flags the commit changed */
	node_open(&b, "b", 2);
	mm_delta_clear(dt);
	assert_int_equal(scan(&b, dt), 0); /* nothing changed here */
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_same_listing(&a, &b);
	/* and nothing b could send changes a */
	assert_true(mm_store_merge_delta(a.s, dt) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	f = find(&a, "INBOX", "1700000000.");
	assert_non_null(f);
	assert_string_equal(strrchr(f, ':'), ":2,FS");
	assert_same_listing(&a, &b);
	node_close(&b);
	assert_int_equal(count_marks(&b), 0); /* taken by the scan, deleted by its commit */
	node_open(&b, "b", 2);
	assert_int_equal(scan(&b, NULL), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&dt);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The same merge while a job is out, with no crash: the job's end renames the files
 * to the merged letters, and the commit after it deletes the marks. */
static void test_placing_flags_merged_marks_go(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_staged(&a, &b, &wa);
	struct mm_delta *dt = flags_on_a(&a, false);
	struct mm_store_place *job = merged_while_placing(&b, dt);
	assert_int_equal(mm_store_place_end(b.s, &job), 3);
	assert_int_equal(mm_store_commit(b.s), 0);
	node_close(&b);
	assert_int_equal(count_marks(&b), 0);
	node_open(&b, "b", 2);
	assert_int_equal(scan(&b, NULL), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&dt);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A scan while a placement job is out, after the job's renames: it finds the job's
 * files without index entries.  With a peer's flag change merged (and committed)
 * since the job began, a file's letters are not the record's; the scan took that for
 * a client's rename and stamped the old letters anew, which then won on every node
 * (it_daemon_crash, with no kill in that phase).  The job's files are the job's. */
static void test_scan_during_placing_flags_merged(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_staged(&a, &b, &wa);
	struct mm_delta *dt = flags_on_a(&a, false);
	struct mm_store_place *job = merged_while_placing(&b, dt);
	mm_delta_clear(dt);
	b.now += 1000;
	assert_int_equal(mm_store_scan_folder(b.s, "ex.org/alice", "INBOX", b.now, dt), 0); /* nothing changed here */
	assert_int_equal(mm_store_place_end(b.s, &job), 3);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(mm_delta_count(dt), 0);
	assert_same_listing(&a, &b);
	mm_delta_clear(dt);
	assert_int_equal(scan(&b, dt), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&dt);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A placement by link + unlink (a filesystem without a no-replace rename) cut by a
 * kill -9 between the two leaves the body under both names, tmp/ and new/, with no
 * index entry.  The start takes the tmp/ one back (staged); the scan must still take
 * the new/ one in by key (it is no job's file), and the staged copy then goes. */
static void test_crash_between_link_and_unlink(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct mm_delta *d = placed_then_killed(&a, &b);
	const char *f = find(&b, "INBOX", "1600000001.");
	assert_non_null(f);
	char from[800], to[1000], dir[600];
	snprintf(from, sizeof from, "%s", f);
	udir(&b, "INBOX", dir, sizeof dir);
	char base[300];
	snprintf(base, sizeof base, "%s", strrchr(from, '/') + 1);
	if (strchr(base, ':'))
		*strchr(base, ':') = 0;
	snprintf(to, sizeof to, "%s/tmp/%s", dir, base);
	assert_int_equal(link(from, to), 0);
	node_open(&b, "b", 2);
	assert_int_equal(scan(&b, NULL), 0);
	assert_int_equal(mm_store_flush(b.s), 0);
	assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 3);
	assert_int_equal(count_files(&b, "INBOX", "tmp"), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_same_listing(&a, &b);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* The crash of test_crash_placing_flags_merged, then a second kill -9 at the start,
 * before the rescan that takes the marks in is committed (a start scan of a big
 * Maildir takes long, or the Maildir is unmounted).  The marks must outlive that
 * start: open deleted them in a commit of their own, so the next start compared the
 * file with the record's letters again and the old flags, stamped anew, won on
 * every node. */
static void test_crash_placing_flags_merged_twice(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_staged(&a, &b, &wa);
	struct mm_delta *dt = flags_on_a(&a, true);
	killed_while_placing(&b, dt);
	assert_int_equal(count_marks(&b), 2);
	/* the start: opened, killed before its scan reached the folder (another user's
	 * Maildir, say; a scan that took the files in renames them to the record's
	 * letters, which hides the bug) */
	node_open(&b, "b", 2);
	node_close(&b);
	assert_int_equal(count_marks(&b), 2); /* nothing that took them in is durable */
	node_open(&b, "b", 2);
	mm_delta_clear(dt);
	assert_int_equal(scan(&b, dt), 0); /* nothing changed here */
	assert_same_listing(&a, &b);
	assert_true(mm_store_merge_delta(a.s, dt) >= 0);
	assert_int_equal(mm_store_commit(a.s), 0);
	const char *f = find(&a, "INBOX", "1700000000.");
	assert_non_null(f);
	assert_string_equal(strrchr(f, ':'), ":2,FS");
	assert_same_listing(&a, &b);
	node_close(&b);
	assert_int_equal(count_marks(&b), 0); /* taken, and that commit deleted them */
	mm_delta_free(&dt);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

/* A scan while a job is out, its files renamed in, with new/ and cur/ last changed
 * more than the 2 s dir_sig distrusts: the scan leaves the job's files to the job
 * and must not record the directories' signature (sig_unsure).  A kill -9 after a
 * commit, before place_end: the start must read the folder again (not skip it as
 * unchanged) and take the files in. */
static void test_crash_scan_during_placing_old_dirs(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	struct wanted wa = {0};
	struct mm_delta *d = three_staged(&a, &b, &wa);
	rename_to(find(&a, "INBOX", "1700000000.M1P1"), "FS");
	struct mm_delta *dt = mm_delta_new();
	assert_true(scan(&a, dt) >= 1);
	char dir[600], sub[700];
	udir(&b, "INBOX", dir, sizeof dir);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct mm_store_place *job = NULL;
		int bad = mm_store_place_begin(b.s, &job) != 1;
		bad |= (mm_store_merge_delta(b.s, dt) < 0) << 1;
		bad |= (mm_store_commit(b.s) != 0) << 2;
		mm_store_place_run(job); /* the files are in new/ */
		struct timespec ts[2];
		clock_gettime(CLOCK_REALTIME, &ts[0]);
		ts[0].tv_sec -= 10;
		ts[1] = ts[0];
		const char *subs[2] = {"new", "cur"};
		for (int i = 0; i < 2; i++) {
			snprintf(sub, sizeof sub, "%s/%s", dir, subs[i]);
			bad |= (utimensat(AT_FDCWD, sub, ts, 0) != 0) << 3;
		}
		b.now += 1000;
		bad |= (mm_store_scan_folder(b.s, "ex.org/alice", "INBOX", b.now, NULL) != 0) << 4;
		bad |= (mm_store_commit(b.s) != 0) << 5;
		_exit(bad); /* killed before place_end */
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	node_close(&b);
	node_open(&b, "b", 2);
	mm_delta_clear(dt);
	assert_int_equal(scan(&b, dt), 0);
	assert_int_equal(mm_store_missing_count(b.s), 0);
	assert_int_equal(count_files(&b, "INBOX", "new") + count_files(&b, "INBOX", "cur"), 3);
	assert_same_listing(&a, &b);
	mm_delta_free(&dt);
	mm_delta_free(&d);
	node_close(&a);
	node_close(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_place_rename_fails_keeps_uid_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_placed_then_expunged_remotely, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_placing_flags_merged, setup, teardown),
		cmocka_unit_test_setup_teardown(test_placing_flags_merged_marks_go, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_during_placing_flags_merged, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_between_link_and_unlink, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_placing_flags_merged_twice, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_scan_during_placing_old_dirs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_moved_own_file_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_place_rename_fails_keeps_uid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_local_changes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_odd_info_names_replicated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_two_nodes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_between_rename_and_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stage_flush, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stage_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stage_gather, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deferred_writer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verified_writer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_own_event, setup, teardown),
		cmocka_unit_test_setup_teardown(test_place_async, setup, teardown),
		cmocka_unit_test_setup_teardown(test_place_async_uids, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_while_placing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_placed_with_original, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_between_commit_and_rename, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_staged_before_records_durable, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stage_then_expunge, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_skips_unchanged_folders, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_files_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keyword_named_late, setup, teardown),
		cmocka_unit_test_setup_teardown(test_odd_names, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_maildir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_state_format, setup, teardown),
		cmocka_unit_test_setup_teardown(test_authority_recheck, setup, teardown),
		cmocka_unit_test_setup_teardown(test_catching_up_raises_no_needs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_first_uid_from_origin, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_skips_unchanged_uidlist, setup, teardown),
		cmocka_unit_test_setup_teardown(test_uidlist_drops_gone_entries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_uidlist_gone_batched, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_commits_in_chunks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refile_lost_by_crash, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_index_converted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_cache_bounded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_half_maildir_restored, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_source_renamed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_local_last_expunge_removes_folder, setup, teardown),
		cmocka_unit_test_setup_teardown(test_remote_rename_scan_before_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_seeded_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_seeded_copy_uids, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_dsync_replica, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flags_changed_while_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flags_changed_here_while_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_gone_while_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_made_again_while_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_away_and_back, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_uids, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_concurrent_delivery, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_while_absent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_kept_while_foreign, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_kept_then_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_survivor_goes_on, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_away_then_new_user, setup, teardown),
		cmocka_unit_test_setup_teardown(test_folder_deleted_while_away_then_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_new_folder_waits_for_dovecot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmounted_during_scan, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmounted_during_folder_scan, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmounted_during_second_reading, setup, teardown),
		cmocka_unit_test_setup_teardown(test_folder_unreadable_not_deleted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_folder_listing_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(test_subscribe_then_remote_subscribe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_subscriptions_lock_held, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_while_away_then_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_unlink_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expunged_unlink_fails_then_renamed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_removed_survivor_elsewhere, setup, teardown),
		cmocka_unit_test_setup_teardown(test_local_flag_kept_over_two_remote, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unnamed_letter_lets_remote_through, setup, teardown),
		cmocka_unit_test_setup_teardown(test_uidlist_lock_reentrant, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keyword_add_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keyword_case_variants, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keyword_case_variant_future_stamp, setup, teardown),
		cmocka_unit_test_setup_teardown(test_meta_staged, setup, teardown),
		cmocka_unit_test_setup_teardown(test_maildirsize, setup, teardown),
		cmocka_unit_test_setup_teardown(test_maildirsize_ignored_folder, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refile_races_flag_change, setup, teardown),
		cmocka_unit_test_setup_teardown(test_place_job_lock_not_reentered, setup, teardown),
		cmocka_unit_test_setup_teardown(test_subscriptions_unreadable_at_commit, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
