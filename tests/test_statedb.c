/*
 * test_statedb.c — node/statedb: key-range reads (the file index's folders, messages
 * and bodies are ranges), a read made from inside a range's callback, and a batch big
 * enough to make the environment close and open again (LMDB's page buffers freed)
 * with every entry still there and the next batch working; the count of commits that
 * `mailmesh status` reports.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "node/statedb.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char top[64];

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	return remove(p);
}

static int setup(void **state)
{
	(void)state;
	snprintf(top, sizeof top, "/tmp/mm-test-statedb-XXXXXX");
	return mkdtemp(top) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	nftw(top, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

static struct mm_statedb *db_open(void)
{
	struct mm_statedb *db;
	char err[256];
	int r = mm_statedb_open(&db, top, 0, err, sizeof err);
	if (r)
		fprintf(stderr, "open: %s\n", err);
	assert_int_equal(r, 0);
	return db;
}

static void put_kv(struct mm_statedb *db, const char *k, const char *v)
{
	assert_int_equal(mm_statedb_put(db, MM_DB_FIDX, k, strlen(k), v, strlen(v)), 0);
}

struct seen {
	struct mm_statedb *db;
	char keys[8][32];
	size_t n;
	int nested; /* values read back by key from inside the callback */
};

static int seen_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	struct seen *c = arg;
	assert_true(c->n < 8 && kl < 32);
	memcpy(c->keys[c->n], k, kl);
	c->keys[c->n++][kl] = 0;
	if (c->db) {
		char buf[32];
		int n = mm_statedb_get(c->db, MM_DB_FIDX, k, kl, buf, sizeof buf);
		assert_int_equal(n, (int)vl);
		assert_memory_equal(buf, v, vl);
		c->nested++;
	}
	return 0;
}

static void test_range(void **state)
{
	(void)state;
	struct mm_statedb *db = db_open();
	assert_int_equal(mm_statedb_begin(db), 0);
	put_kv(db, "Bb", "2");
	put_kv(db, "A1", "x");
	put_kv(db, "Ba", "1");
	put_kv(db, "B", "0");
	put_kv(db, "C", "y");
	/* inside the batch, a range sees the batch's own puts */
	struct seen c = {0};
	assert_int_equal(mm_statedb_range(db, MM_DB_FIDX, "B", 1, seen_cb, &c), 0);
	assert_int_equal(c.n, 3);
	assert_int_equal(mm_statedb_commit(db), 0);

	memset(&c, 0, sizeof c);
	assert_int_equal(mm_statedb_range(db, MM_DB_FIDX, "B", 1, seen_cb, &c), 0);
	assert_int_equal(c.n, 3);
	assert_string_equal(c.keys[0], "B"); /* key order */
	assert_string_equal(c.keys[1], "Ba");
	assert_string_equal(c.keys[2], "Bb");
	memset(&c, 0, sizeof c);
	assert_int_equal(mm_statedb_range(db, MM_DB_FIDX, "Bc", 2, seen_cb, &c), 0);
	assert_int_equal(c.n, 0);
	assert_int_equal(mm_statedb_range(db, MM_DB_FIDX, "Z", 1, seen_cb, &c), 0);
	assert_int_equal(c.n, 0);
	assert_int_equal(mm_statedb_range(db, MM_DB_FIDX, "", 0, seen_cb, &c), -EINVAL);

	/* a read by key from inside the callback has its own snapshot */
	memset(&c, 0, sizeof c);
	c.db = db;
	assert_int_equal(mm_statedb_range(db, MM_DB_FIDX, "B", 1, seen_cb, &c), 0);
	assert_int_equal(c.nested, 3);
	char buf[8];
	assert_int_equal(mm_statedb_get(db, MM_DB_FIDX, "C", 1, buf, sizeof buf), 1);
	assert_int_equal(mm_statedb_get(db, MM_DB_FIDX, "D", 1, buf, sizeof buf), -ENOENT);
	mm_statedb_free(&db);
	assert_null(db);
}

/* Commits are counted; an aborted batch and a commit without a batch are not. */
static void test_commit_count(void **state)
{
	(void)state;
	struct mm_statedb *db = db_open();
	assert_int_equal(mm_statedb_commits(db), 0);
	assert_int_equal(mm_statedb_begin(db), 0);
	put_kv(db, "A", "1");
	assert_int_equal(mm_statedb_commit(db), 0);
	assert_int_equal(mm_statedb_commits(db), 1);
	assert_int_equal(mm_statedb_begin(db), 0);
	put_kv(db, "B", "2");
	mm_statedb_abort(db);
	assert_int_equal(mm_statedb_commits(db), 1);
	assert_int_equal(mm_statedb_commit(db), -EINVAL);
	assert_int_equal(mm_statedb_commits(db), 1);
	assert_int_equal(mm_statedb_begin(db), 0);
	assert_int_equal(mm_statedb_commit(db), 0);
	assert_int_equal(mm_statedb_commits(db), 2);
	mm_statedb_free(&db);
}

/* A batch of 20,000 puts closes and reopens the environment at its commit: every entry
 * is there, reads and the next batch work, and a reopen of the file sees them too. */
static void test_big_batch(void **state)
{
	(void)state;
	struct mm_statedb *db = db_open();
	enum { N = 20000 };
	char k[32], v[32];
	for (int round = 0; round < 2; round++) {
		assert_int_equal(mm_statedb_begin(db), 0);
		for (int i = 0; i < N; i++) {
			snprintf(k, sizeof k, "K%d.%07d", round, i);
			snprintf(v, sizeof v, "value %d", i);
			put_kv(db, k, v);
		}
		assert_int_equal(mm_statedb_commit(db), 0);
		assert_int_equal(mm_statedb_count(db, MM_DB_FIDX), (size_t)N * (round + 1));
		snprintf(k, sizeof k, "K%d.%07d", round, N - 1);
		char buf[32];
		int n = mm_statedb_get(db, MM_DB_FIDX, k, strlen(k), buf, sizeof buf);
		assert_int_equal(n, (int)strlen("value 19999"));
		assert_memory_equal(buf, "value 19999", (size_t)n);
	}
	/* a small batch after them */
	assert_int_equal(mm_statedb_begin(db), 0);
	put_kv(db, "small", "1");
	assert_int_equal(mm_statedb_commit(db), 0);
	mm_statedb_free(&db);
	db = db_open();
	assert_int_equal(mm_statedb_count(db, MM_DB_FIDX), (size_t)2 * N + 1);
	mm_statedb_free(&db);
}

/* A database that has reached its map size (state_max_size) fails with -EFBIG, not
 * -ENOSPC: the disk may have room, and the log must say what to raise.  Opened again
 * with a larger size it takes the writes (LMDB grows the file). */
static void test_map_full(void **state)
{
	(void)state;
	struct mm_statedb *db;
	char err[256], k[16], v[1024];
	memset(v, 'x', sizeof v);
	assert_int_equal(mm_statedb_open(&db, top, 1u << 20, err, sizeof err), 0);
	int r = 0;
	for (int i = 0; i < 4096 && r == 0; i++) {
		assert_int_equal(mm_statedb_begin(db), 0);
		snprintf(k, sizeof k, "k%06d", i);
		r = mm_statedb_put(db, MM_DB_FIDX, k, strlen(k), v, sizeof v);
		if (r == 0)
			r = mm_statedb_commit(db);
		else
			mm_statedb_abort(db);
	}
	assert_int_equal(r, -EFBIG);
	size_t had = mm_statedb_count(db, MM_DB_FIDX);
	assert_true(had > 100);
	mm_statedb_free(&db);
	assert_int_equal(mm_statedb_open(&db, top, 64u << 20, err, sizeof err), 0);
	assert_int_equal(mm_statedb_count(db, MM_DB_FIDX), had);
	for (int i = 0; i < 2048; i++) {
		assert_int_equal(mm_statedb_begin(db), 0);
		snprintf(k, sizeof k, "n%06d", i);
		assert_int_equal(mm_statedb_put(db, MM_DB_FIDX, k, strlen(k), v, sizeof v), 0);
		assert_int_equal(mm_statedb_commit(db), 0);
	}
	assert_int_equal(mm_statedb_count(db, MM_DB_FIDX), had + 2048);
	mm_statedb_free(&db);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_range, setup, teardown),
		cmocka_unit_test_setup_teardown(test_big_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_count, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
