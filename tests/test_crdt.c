/*
 * test_crdt.c — unit tests of crdt/: the hybrid logical clock, the merge laws on
 * random records, the flag/expunge/folder/GC rules, the Merkle summary (incremental
 * root vs recomputed, tree queries vs foreach, descent to the differing keys), and
 * the canonical codec (round trip, truncated and garbled input).
 * Random records come from a seeded splitmix64 (MM_SEED reproduces a run).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt/crdt.h"
#include "tests/crdt_check.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static unsigned rn(unsigned n)
{
	return (unsigned)(rnd() % n);
}

static mm_hlc H(uint64_t t, uint64_t node)
{
	return (mm_hlc){ t, node };
}

/* ---- helpers: compare users record by record ---------------------------------------- */

struct enc_list {
	uint8_t **e;
	size_t *len;
	size_t n, cap;
};

static int collect(void *arg, const struct mm_rec *r)
{
	struct enc_list *l = arg;
	ssize_t n = mm_rec_encode(r, NULL, 0);
	assert_true(n > 0);
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->e = realloc(l->e, l->cap * sizeof *l->e);
		l->len = realloc(l->len, l->cap * sizeof *l->len);
	}
	l->e[l->n] = malloc((size_t)n);
	assert_int_equal(mm_rec_encode(r, l->e[l->n], (size_t)n), n);
	l->len[l->n++] = (size_t)n;
	return 0;
}

static void enc_free(struct enc_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->e[i]);
	free(l->e);
	free(l->len);
	memset(l, 0, sizeof *l);
}

static void assert_users_equal(const struct mm_user *a, const struct mm_user *b)
{
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	struct enc_list la = { 0 }, lb = { 0 };
	mm_user_root(a, ra);
	mm_user_root(b, rb);
	mm_user_foreach(a, NULL, 0, collect, &la);
	mm_user_foreach(b, NULL, 0, collect, &lb);
	assert_int_equal(la.n, lb.n);
	assert_int_equal(mm_user_count(a), la.n);
	for (size_t i = 0; i < la.n; i++) {
		assert_int_equal(la.len[i], lb.len[i]);
		assert_memory_equal(la.e[i], lb.e[i], la.len[i]);
	}
	assert_memory_equal(ra, rb, MM_HASH_LEN);
	enc_free(&la);
	enc_free(&lb);
}

/* Root recomputed from scratch: XOR of mm_rec_hash over foreach. */
static int xor_leaf(void *arg, const struct mm_rec *r)
{
	uint8_t *acc = arg, h[MM_HASH_LEN];
	mm_rec_hash(r, h);
	for (int i = 0; i < MM_HASH_LEN; i++)
		acc[i] ^= h[i];
	return 0;
}

static void assert_root_fresh(const struct mm_user *u)
{
	uint8_t acc[MM_HASH_LEN] = { 0 }, root[MM_HASH_LEN];
	mm_user_foreach(u, NULL, 0, xor_leaf, acc);
	mm_user_root(u, root);
	assert_memory_equal(acc, root, MM_HASH_LEN);
}

/* ---- effects recorder ---------------------------------------------------------------- */

struct effs {
	int n[MM_EFF_GC + 1];
	int total;
};

static void on_eff(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	struct effs *e = arg;
	assert_non_null(user);
	assert_non_null(rec);
	assert_true(eff >= MM_EFF_MSG_NEW && eff <= MM_EFF_GC);
	e->n[eff]++;
	e->total++;
}

/* ---- random records -------------------------------------------------------------------- */

static const char *kw_pool[] = { "$Junk", "$NotJunk", "$label1", "work", "zz" };
static const char *folder_pool[] = { "INBOX", "Sent", "Archive.2024", "Trash" };

struct recbuf {
	struct mm_rec r;
	struct mm_kwreg kw[5];
};

static struct mm_reg rreg(void)
{
	if (rn(3) == 0)
		return (struct mm_reg){ 0 };
	/* small stamp space so equal stamps and node ties happen */
	return (struct mm_reg){ (uint8_t)rn(2), H(1 + rn(4), 1 + rn(3)) };
}

/* A random record for one of `nkeys` message keys or 2 folder keys. */
static void rand_rec(struct recbuf *b, unsigned nkeys)
{
	struct mm_rec *r = &b->r;
	memset(b, 0, sizeof *b);
	unsigned k = rn(nkeys + 2);
	if (k >= nkeys) {
		r->type = MM_REC_FOLDER;
		r->folder.name = folder_pool[k - nkeys];
		mm_key_folder(r->folder.name, r->key);
		r->folder.exists = rreg();
		r->folder.subscribed = rreg();
		return;
	}
	mm_hlc created = H(1000 + k, 7);
	mm_key_message(&created, r->key);
	if (rn(4) == 0) {
		r->type = MM_REC_EXPUNGED;
		r->tomb.stamp = H(1 + rn(5), 1 + rn(3));
		return;
	}
	r->type = MM_REC_MESSAGE;
	r->msg.created = created;
	memset(r->msg.body, (int)k, MM_ID_LEN);
	/* rarely, disagreeing immutable fields (forged/buggy record) */
	if (rn(10) == 0)
		r->msg.body[0] ^= 0x55;
	r->msg.folder = folder_pool[k % 4];
	r->msg.size = 100 + k;
	r->msg.internaldate = 1700000000 + k;
	for (int f = 0; f < MM_FLAG_COUNT; f++)
		r->msg.flags[f] = rreg();
	struct mm_reg u = rreg();
	r->msg.uid.stamp = u.stamp;
	r->msg.uid_value = (u.stamp.t || u.stamp.node) ? 1 + rn(3) : 0;
	size_t n = 0;
	for (int i = 0; i < 5; i++) {
		if (rn(2))
			continue;
		struct mm_reg g = rreg();
		if (!g.stamp.t)
			g = (struct mm_reg){ 1, H(2, 2) };
		b->kw[n++] = (struct mm_kwreg){ kw_pool[i], g };
	}
	r->msg.n_keywords = n;
	r->msg.keywords = n ? b->kw : NULL;
}

static int add_all(void *arg, const struct mm_rec *r)
{
	return mm_delta_add(arg, "d/u", r);
}

/* ---- HLC ------------------------------------------------------------------------------- */

static void test_hlc(void **state)
{
	(void)state;
	struct mm_clock c;
	mm_clock_init(&c, 42, 0);
	mm_hlc a = mm_clock_tick(&c, 1000);
	assert_int_equal(MM_HLC_MS(a), 1000);
	assert_int_equal(a.node, 42);
	mm_hlc b = mm_clock_tick(&c, 1000);
	assert_true(mm_hlc_cmp(b, a) > 0);
	mm_hlc d = mm_clock_tick(&c, 500); /* wall clock went back */
	assert_true(mm_hlc_cmp(d, b) > 0);
	assert_int_equal(MM_HLC_MS(d), 1000);
	mm_hlc e = mm_clock_tick(&c, 2000);
	assert_true(mm_hlc_cmp(e, d) > 0);
	assert_int_equal(MM_HLC_MS(e), 2000);
	/* many ticks within one ms stay strictly increasing */
	mm_hlc prev = e;
	for (int i = 0; i < 100000; i++) {
		mm_hlc x = mm_clock_tick(&c, 2000);
		assert_true(mm_hlc_cmp(x, prev) > 0);
		prev = x;
	}
	/* observe: a remote stamp ahead (within skew) is followed */
	mm_clock_init(&c, 1, 0);
	mm_hlc remote = { (uint64_t)5000 << MM_HLC_LOGICAL_BITS | 7, 9 };
	assert_int_equal(mm_clock_observe(&c, remote, 4000, 2000), 0);
	mm_hlc f = mm_clock_tick(&c, 4000);
	assert_true(f.t > remote.t);
	assert_true(mm_hlc_cmp(f, remote) > 0);
	/* too far ahead: -ERANGE and not followed */
	mm_hlc far = { (uint64_t)100000 << MM_HLC_LOGICAL_BITS, 9 };
	assert_int_equal(mm_clock_observe(&c, far, 4000, 2000), -ERANGE);
	mm_hlc g = mm_clock_tick(&c, 4000);
	assert_true(g.t < far.t);
	assert_true(mm_hlc_cmp(g, f) > 0);
	/* observing an older stamp changes nothing */
	assert_int_equal(mm_clock_observe(&c, H(1, 1), 4000, 2000), 0);
	assert_true(mm_hlc_cmp(mm_clock_tick(&c, 4000), g) > 0);
	/* init with last from the state db */
	mm_clock_init(&c, 3, (uint64_t)9000 << MM_HLC_LOGICAL_BITS);
	assert_true(mm_clock_tick(&c, 10).t > (uint64_t)9000 << MM_HLC_LOGICAL_BITS);
	/* order: t first, then node */
	assert_true(mm_hlc_cmp(H(1, 9), H(2, 1)) < 0);
	assert_true(mm_hlc_cmp(H(2, 1), H(2, 2)) < 0);
	assert_int_equal(mm_hlc_cmp(H(2, 2), H(2, 2)), 0);
}

/* ---- merge laws --------------------------------------------------------------------------- */

static void test_merge_laws(void **state)
{
	(void)state;
	for (int iter = 0; iter < 3000; iter++) {
		struct recbuf a, b, c;
		rand_rec(&a, 2);
		rand_rec(&b, 2);
		rand_rec(&c, 2);
		const struct mm_rec *v[3] = { &a.r, &b.r, &c.r };
		/* commutativity over all 6 orders of a triple */
		static const int perm[6][3] = { { 0, 1, 2 }, { 0, 2, 1 }, { 1, 0, 2 }, { 1, 2, 0 }, { 2, 0, 1 }, { 2, 1, 0 } };
		struct mm_user *ref = mm_user_new("d/u");
		for (int i = 0; i < 3; i++)
			assert_true(mm_user_merge(ref, v[i], NULL, NULL) >= 0);
		assert_root_fresh(ref);
		for (int p = 1; p < 6; p++) {
			struct mm_user *u = mm_user_new("d/u");
			for (int i = 0; i < 3; i++)
				assert_true(mm_user_merge(u, v[perm[p][i]], NULL, NULL) >= 0);
			assert_users_equal(ref, u);
			mm_user_free(&u);
		}
		/* associativity: a + (b + c) with (b + c) joined first in its own state */
		struct mm_user *bc = mm_user_new("d/u"), *u = mm_user_new("d/u");
		assert_true(mm_user_merge(bc, &b.r, NULL, NULL) >= 0);
		assert_true(mm_user_merge(bc, &c.r, NULL, NULL) >= 0);
		assert_true(mm_user_merge(u, &a.r, NULL, NULL) >= 0);
		struct mm_delta *d = mm_delta_new(); /* copies of bc's (borrowed) records */
		mm_user_foreach(bc, NULL, 0, add_all, d);
		for (size_t i = 0; i < mm_delta_count(d); i++)
			assert_true(mm_user_merge(u, mm_delta_get(d, i, NULL), NULL, NULL) >= 0);
		assert_users_equal(ref, u);
		/* idempotence: merging everything again changes nothing, no effects */
		struct effs e = { 0 };
		for (int i = 0; i < 3; i++)
			assert_int_equal(mm_user_merge(ref, v[i], on_eff, &e), 0);
		for (size_t i = 0; i < mm_delta_count(d); i++)
			assert_int_equal(mm_user_merge(u, mm_delta_get(d, i, NULL), on_eff, &e), 0);
		assert_int_equal(e.total, 0);
		mm_delta_free(&d);
		mm_user_free(&bc);
		mm_user_free(&u);
		mm_user_free(&ref);
	}
}


/* ---- flags ------------------------------------------------------------------------------ */

static const uint8_t BODY[MM_ID_LEN] = { 1, 2, 3 };

/* Two replicas holding one delivered message; returns its key. */
static void two_replicas(struct mm_user **a, struct mm_user **b, uint8_t key[MM_KEY_LEN])
{
	struct mm_delta *d = mm_delta_new();
	*a = mm_user_new("d/u");
	*b = mm_user_new("d/u");
	assert_int_equal(mm_user_deliver(*a, "INBOX", BODY, 10, 1700000000, 0, NULL, 0, 0, H(100, 1), key, NULL, NULL, d), 1);
	assert_int_equal(mm_delta_count(d), 2); /* folder + message */
	for (size_t i = 0; i < mm_delta_count(d); i++)
		assert_int_equal(mm_user_merge(*b, mm_delta_get(d, i, NULL), NULL, NULL), 1);
	assert_users_equal(*a, *b);
	mm_delta_free(&d);
}

static void exchange(struct mm_user *a, struct mm_delta *da, struct mm_user *b, struct mm_delta *db)
{
	for (size_t i = 0; i < mm_delta_count(da); i++)
		assert_true(mm_user_merge(b, mm_delta_get(da, i, NULL), NULL, NULL) >= 0);
	for (size_t i = 0; i < mm_delta_count(db); i++)
		assert_true(mm_user_merge(a, mm_delta_get(db, i, NULL), NULL, NULL) >= 0);
}

static void test_concurrent_flags(void **state)
{
	(void)state;
	struct mm_user *a, *b;
	uint8_t key[MM_KEY_LEN];
	two_replicas(&a, &b, key);
	struct mm_delta *da = mm_delta_new(), *db = mm_delta_new();
	/* different flags, concurrently: both survive (dsync would keep one set) */
	assert_int_equal(mm_user_set_flag(a, key, MM_FLAG_SEEN, true, H(200, 1), NULL, NULL, da), 1);
	assert_int_equal(mm_user_set_flag(b, key, MM_FLAG_REPLIED, true, H(150, 2), NULL, NULL, db), 1);
	assert_int_equal(mm_user_set_keyword(b, key, "work", true, H(151, 2), NULL, NULL, db), 1);
	assert_int_equal(mm_delta_count(db), 1); /* same key: the later record replaced */
	struct effs ea = { 0 };
	assert_int_equal(mm_user_merge(a, mm_delta_get(db, 0, NULL), on_eff, &ea), 1);
	assert_int_equal(ea.n[MM_EFF_MSG_FLAGS], 1);
	assert_int_equal(ea.total, 1);
	assert_int_equal(mm_user_merge(b, mm_delta_get(da, 0, NULL), NULL, NULL), 1);
	assert_users_equal(a, b);
	const struct mm_rec *r = mm_user_get(a, key);
	assert_non_null(r);
	assert_int_equal(r->msg.flags[MM_FLAG_SEEN].value, 1);
	assert_int_equal(r->msg.flags[MM_FLAG_REPLIED].value, 1);
	assert_int_equal(r->msg.flags[MM_FLAG_FLAGGED].value, 0);
	assert_int_equal(r->msg.n_keywords, 1);
	assert_string_equal(r->msg.keywords[0].name, "work");
	assert_int_equal(r->msg.keywords[0].reg.value, 1);
	/* setting a flag to the value it has is a no-op: no delta, no effect */
	mm_delta_clear(da);
	assert_int_equal(mm_user_set_flag(a, key, MM_FLAG_SEEN, true, H(300, 1), on_eff, &ea, da), 0);
	assert_int_equal(mm_delta_count(da), 0);
	/* errors */
	uint8_t nokey[MM_KEY_LEN] = { 9 };
	assert_int_equal(mm_user_set_flag(a, nokey, MM_FLAG_SEEN, true, H(300, 1), NULL, NULL, NULL), -ENOENT);
	assert_int_equal(mm_user_set_flag(a, key, MM_FLAG_COUNT, true, H(300, 1), NULL, NULL, NULL), -EINVAL);
	assert_int_equal(mm_user_set_keyword(a, key, "has space", true, H(300, 1), NULL, NULL, NULL), -EINVAL);
	assert_int_equal(mm_user_set_keyword(a, key, "", true, H(300, 1), NULL, NULL, NULL), -EINVAL);
	assert_int_equal(mm_user_set_keyword(a, key, "a/b", true, H(300, 1), NULL, NULL, NULL), 1);
	assert_int_equal(mm_user_folder_create(a, "a/b", H(301, 1), NULL, NULL, NULL), -EINVAL);
	mm_delta_free(&da);
	mm_delta_free(&db);
	mm_user_free(&a);
	mm_user_free(&b);
}

/* Same flag, set on one node and cleared on the other: the later stamp wins; with
 * equal time, the larger node id. */
static void same_flag_case(mm_hlc set_at, mm_hlc clear_at, int expect)
{
	struct mm_user *a, *b;
	uint8_t key[MM_KEY_LEN];
	two_replicas(&a, &b, key);
	struct mm_delta *da = mm_delta_new(), *db = mm_delta_new();
	/* both start with Flagged set */
	assert_int_equal(mm_user_set_flag(a, key, MM_FLAG_FLAGGED, true, H(110, 1), NULL, NULL, da), 1);
	assert_int_equal(mm_user_merge(b, mm_delta_get(da, 0, NULL), NULL, NULL), 1);
	mm_delta_clear(da);
	assert_int_equal(mm_user_set_flag(a, key, MM_FLAG_FLAGGED, false, clear_at, NULL, NULL, da), 1);
	assert_int_equal(mm_user_set_flag(b, key, MM_FLAG_DRAFT, true, set_at, NULL, NULL, db), 1);
	/* b re-sets Flagged: it is already set, so b writes a clear then a set */
	assert_int_equal(mm_user_set_flag(b, key, MM_FLAG_FLAGGED, false, H(set_at.t - 1, set_at.node), NULL, NULL, db), 1);
	assert_int_equal(mm_user_set_flag(b, key, MM_FLAG_FLAGGED, true, set_at, NULL, NULL, db), 1);
	exchange(a, da, b, db);
	assert_users_equal(a, b);
	const struct mm_rec *r = mm_user_get(a, key);
	assert_int_equal(r->msg.flags[MM_FLAG_FLAGGED].value, expect);
	assert_int_equal(r->msg.flags[MM_FLAG_DRAFT].value, 1);
	mm_delta_free(&da);
	mm_delta_free(&db);
	mm_user_free(&a);
	mm_user_free(&b);
}

static void test_same_flag(void **state)
{
	(void)state;
	same_flag_case(H(300, 2), H(200, 1), 1); /* set later: set */
	same_flag_case(H(200, 2), H(300, 1), 0); /* clear later: clear */
	same_flag_case(H(300, 2), H(300, 1), 1); /* tie: node 2 (set) wins */
	same_flag_case(H(300, 1), H(300, 2), 0); /* tie: node 2 (clear) wins */
}

/* ---- expunge ---------------------------------------------------------------------------------- */

static void test_expunge_wins(void **state)
{
	(void)state;
	struct mm_user *src = mm_user_new("d/u");
	uint8_t key[MM_KEY_LEN];
	struct mm_delta *d = mm_delta_new();
	assert_int_equal(mm_user_deliver(src, "Work", BODY, 10, 1, (1u << MM_FLAG_SEEN), NULL, 0, 5, H(100, 1), key, NULL, NULL, d), 1);
	assert_int_equal(mm_user_set_flag(src, key, MM_FLAG_FLAGGED, true, H(110, 1), NULL, NULL, d), 1);
	/* versions of the message record before and after the expunge */
	struct mm_delta *all = mm_delta_new();
	for (size_t i = 0; i < mm_delta_count(d); i++)
		mm_delta_add(all, "d/u", mm_delta_get(d, i, NULL));
	struct mm_delta *late = mm_delta_new();
	assert_int_equal(mm_user_expunge(src, key, H(120, 1), NULL, NULL, late), 1);
	assert_int_equal(mm_user_expunge(src, key, H(130, 1), NULL, NULL, late), 0);
	assert_int_equal(mm_delta_count(late), 1);
	const struct mm_rec *tomb = mm_delta_get(late, 0, NULL);
	assert_int_equal(tomb->type, MM_REC_EXPUNGED);
	/* a message record with a register stamped after the tombstone still loses */
	struct mm_rec newer = *mm_user_get(src, key) ;
	assert_int_equal(newer.type, MM_REC_EXPUNGED);
	const struct mm_rec *msgrec = NULL;
	for (size_t i = 0; i < mm_delta_count(all); i++)
		if (mm_delta_get(all, i, NULL)->type == MM_REC_MESSAGE)
			msgrec = mm_delta_get(all, i, NULL);
	assert_non_null(msgrec);
	struct mm_rec later_msg = *msgrec;
	later_msg.msg.flags[MM_FLAG_SEEN] = (struct mm_reg){ 0, H(999, 9) };
	const struct mm_rec *recs[4] = { msgrec, tomb, &later_msg, mm_delta_get(all, 0, NULL) };
	/* every order of 4 records, each delivered 1-2 times: never live at the end, and
	 * never live after the tombstone was seen */
	for (int iter = 0; iter < 200; iter++) {
		struct mm_user *u = mm_user_new("d/u");
		int order[8], n = 0;
		for (int i = 0; i < 4; i++) {
			order[n++] = i;
			if (rn(2))
				order[n++] = i;
		}
		for (int i = n - 1; i > 0; i--) {
			int j = (int)rn((unsigned)i + 1), t = order[i];
			order[i] = order[j];
			order[j] = t;
		}
		bool seen_tomb = false;
		struct effs e = { 0 };
		for (int i = 0; i < n; i++) {
			assert_true(mm_user_merge(u, recs[order[i]], on_eff, &e) >= 0);
			seen_tomb |= order[i] == 1;
			const struct mm_rec *r = mm_user_get(u, key);
			if (seen_tomb)
				assert_int_equal(r->type, MM_REC_EXPUNGED);
		}
		assert_int_equal(mm_user_get(u, key)->type, MM_REC_EXPUNGED);
		assert_false(mm_user_folder_visible(u, "Work") && mm_user_count(u) == 1);
		assert_int_equal(e.n[MM_EFF_MSG_NEW], e.n[MM_EFF_MSG_EXPUNGED]);
		assert_int_equal(e.n[MM_EFF_MSG_EXPUNGED] + e.n[MM_EFF_TOMB_NEW], 1);
		/* expunged: local changes refuse it */
		assert_int_equal(mm_user_set_flag(u, key, MM_FLAG_SEEN, true, H(2000, 3), NULL, NULL, NULL), -ENOENT);
		assert_int_equal(mm_user_expunge(u, key, H(2000, 3), NULL, NULL, NULL), 0);
		mm_user_free(&u);
	}
	mm_delta_free(&d);
	mm_delta_free(&all);
	mm_delta_free(&late);
	mm_user_free(&src);
}

/* ---- folders ------------------------------------------------------------------------------------ */

/* mm_user_removed: only an INBOX deleted by its own record and empty of live mail. */
static void test_user_removed(void **state)
{
	(void)state;
	struct mm_user *u = mm_user_new("d/u");
	uint8_t k[MM_KEY_LEN];
	assert_false(mm_user_removed(u)); /* nothing at all */
	assert_int_equal(mm_user_folder_subscribe(u, "INBOX", true, H(9, 1), NULL, NULL, NULL), 1);
	assert_false(mm_user_removed(u)); /* a record a subscription made: exists never written */
	assert_int_equal(mm_user_deliver(u, "INBOX", BODY, 1, 1, 0, NULL, 0, 0, H(10, 1), k, NULL, NULL, NULL), 1);
	assert_int_equal(mm_user_expunge(u, k, H(11, 1), NULL, NULL, NULL), 1);
	assert_false(mm_user_removed(u)); /* empty, but INBOX exists */
	assert_int_equal(mm_user_deliver(u, "INBOX", BODY, 1, 1, 0, NULL, 0, 0, H(13, 1), k, NULL, NULL, NULL), 1);
	assert_int_equal(mm_user_folder_delete(u, "INBOX", H(14, 1), NULL, NULL, NULL), 1);
	assert_true(mm_user_removed(u));
	/* a message the delete did not know (a concurrent delivery) keeps the user */
	assert_int_equal(mm_user_deliver(u, "INBOX", BODY, 1, 1, 0, NULL, 0, 0, H(13, 2), k, NULL, NULL, NULL), 1);
	assert_false(mm_user_removed(u));
	assert_int_equal(mm_user_expunge(u, k, H(15, 1), NULL, NULL, NULL), 1);
	assert_true(mm_user_removed(u));
	assert_int_equal(mm_user_folder_create(u, "INBOX", H(16, 1), NULL, NULL, NULL), 1);
	assert_false(mm_user_removed(u));
	mm_user_free(&u);
}

static void test_folder_delete_vs_delivery(void **state)
{
	(void)state;
	struct mm_user *a = mm_user_new("d/u"), *b = mm_user_new("d/u");
	struct mm_delta *da = mm_delta_new(), *db = mm_delta_new();
	uint8_t k1[MM_KEY_LEN], k2[MM_KEY_LEN];
	struct effs e = { 0 };
	assert_int_equal(mm_user_folder_create(a, "Lists", H(10, 1), on_eff, &e, da), 1);
	assert_int_equal(e.n[MM_EFF_FOLDER], 1);
	assert_int_equal(mm_user_folder_create(a, "Lists", H(11, 1), NULL, NULL, da), 0);
	assert_int_equal(mm_user_folder_subscribe(a, "Lists", true, H(12, 1), NULL, NULL, da), 1);
	assert_int_equal(mm_user_deliver(a, "Lists", BODY, 1, 1, 0, NULL, 0, 0, H(20, 1), k1, NULL, NULL, da), 1);
	exchange(a, da, b, db);
	assert_users_equal(a, b);
	assert_true(mm_user_folder_visible(b, "Lists"));
	mm_delta_clear(da);
	/* a deletes the folder while b delivers into it */
	e = (struct effs){ 0 };
	assert_int_equal(mm_user_folder_delete(a, "Lists", H(30, 1), on_eff, &e, da), 1);
	assert_int_equal(e.n[MM_EFF_FOLDER], 1);
	assert_int_equal(e.n[MM_EFF_MSG_EXPUNGED], 1);
	assert_false(mm_user_folder_visible(a, "Lists"));
	assert_int_equal(mm_user_deliver(b, "Lists", BODY, 2, 2, 0, NULL, 0, 0, H(25, 2), k2, NULL, NULL, db), 1);
	exchange(a, da, b, db);
	assert_users_equal(a, b);
	/* the concurrent delivery survives and keeps the folder visible; the old one is gone */
	assert_int_equal(mm_user_get(a, k1)->type, MM_REC_EXPUNGED);
	assert_int_equal(mm_user_get(a, k2)->type, MM_REC_MESSAGE);
	assert_true(mm_user_folder_visible(a, "Lists"));
	assert_true(mm_user_folder_visible(b, "Lists"));
	uint8_t fk[MM_KEY_LEN];
	mm_key_folder("Lists", fk);
	assert_int_equal(mm_user_get(a, fk)->folder.exists.value, 0);
	/* once that message is expunged too, the folder disappears */
	assert_int_equal(mm_user_expunge(a, k2, H(40, 1), NULL, NULL, NULL), 1);
	assert_false(mm_user_folder_visible(a, "Lists"));
	assert_int_equal(mm_user_folder_delete(a, "Nope", H(41, 1), NULL, NULL, NULL), -ENOENT);
	assert_false(mm_user_folder_visible(a, "Nope"));
	/* re-creating gives a new UIDVALIDITY (stamp-derived), never 0 */
	const struct mm_rec *f1 = mm_user_get(b, fk);
	uint32_t v1 = f1->folder.uidvalidity;
	assert_int_not_equal(v1, 0);
	assert_int_equal(mm_user_folder_create(b, "Lists", H((uint64_t)1700000000000 << 16, 2), NULL, NULL, NULL), 1);
	uint32_t v2 = mm_user_get(b, fk)->folder.uidvalidity;
	assert_int_not_equal(v2, v1);
	assert_true(v2 >= 1700000000 - 255 && v2 <= 1700000000 + 255);
	/* same second, different nodes: different values (fixed stamps, checked once) */
	assert_int_not_equal(mm_folder_uidvalidity(H((uint64_t)1700000000000 << 16, 1)),
	                     mm_folder_uidvalidity(H((uint64_t)1700000000000 << 16, 2)));
	assert_int_not_equal(mm_folder_uidvalidity(H(0, 0)), 0);
	mm_delta_free(&da);
	mm_delta_free(&db);
	mm_user_free(&a);
	mm_user_free(&b);
}

/* ---- GC ------------------------------------------------------------------------------------------ */

/* A node is stale once it has been in sync with none of its peers for max less the
 * margin, the time after which they may stop waiting for it; never in sync with any:
 * it holds nothing they dropped tombstones of; a clock before the last sync: not. */
static void test_gc_stale(void **state)
{
	(void)state;
	const uint64_t day = 86400000ULL, m = 2 * MM_GC_SYNC_MARGIN_MS;
	const uint64_t now = 1000 * day, max = 180 * day;
	uint64_t last = 1;
	assert_false(mm_gc_stale(now, max, m, NULL, 0, &last));
	assert_true(last == 0);
	uint64_t never[2] = {0, 0};
	assert_false(mm_gc_stale(now, max, m, never, 2, NULL));
	uint64_t t[3] = {now - 200 * day, 0, now - 190 * day};
	assert_true(mm_gc_stale(now, max, m, t, 3, &last)); /* both in sync peers long ago */
	assert_true(last == now - 190 * day);
	t[1] = now - 10 * day; /* one recent sync is enough: that peer held back its tombstones */
	assert_false(mm_gc_stale(now, max, m, t, 3, &last));
	assert_true(last == now - 10 * day);
	t[1] = 0;
	t[2] = now - max + m; /* exactly at the limit: stale */
	assert_true(mm_gc_stale(now, max, m, t, 3, NULL));
	t[2] = now - max + m + 1; /* a millisecond short of it */
	assert_false(mm_gc_stale(now, max, m, t, 3, NULL));
	t[0] = t[2] = now + day; /* a clock that went back: not stale */
	assert_false(mm_gc_stale(now, max, m, t, 3, NULL));
	uint64_t one[1] = {now - 6000};
	assert_true(mm_gc_stale(now, 10000, 5000, one, 1, NULL)); /* (it_daemon_stale's figures) */
	assert_true(mm_gc_stale(now, 10000, 20000, one, 1, NULL)); /* margin above max: any time out counts */
}

/* The horizon waits for peers that were in sync before it (a peer away with an old
 * copy of an expunged message finds its tombstone still there when it returns), but
 * not for one never in sync, nor for one away longer than max. */
static void test_gc_horizon(void **state)
{
	(void)state;
	const uint64_t day = 86400000ULL, hour = MM_GC_SYNC_MARGIN_MS;
	const uint64_t now = 1000 * day, grace = 30 * day, max = 180 * day;
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, NULL, NULL, 0) == now - grace);
	assert_true(mm_gc_horizon_ms(grace, grace, max, hour, NULL, NULL, 0) == 0); /* nothing old enough yet */
	uint64_t peers[3] = {now - 1000, 0, now - 5 * day};
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, peers, NULL, 3) == now - grace); /* recent, or not waited for */
	peers[2] = now - 40 * day; /* away 40 days: its tombstones wait */
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, peers, NULL, 3) == now - 40 * day - hour);
	peers[1] = now - 100 * day; /* the oldest one sets it */
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, peers, NULL, 3) == now - 100 * day - hour);
	peers[1] = now - 180 * day; /* away gc_max or longer: no longer waited for */
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, peers, NULL, 3) == now - 40 * day - hour);
	peers[1] = now - 180 * day + 1;
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, peers, NULL, 3) == now - 180 * day + 1 - hour);
	/* in sync less than the margin after the start of time: nothing goes yet */
	uint64_t early[1] = {hour / 2};
	assert_true(mm_gc_horizon_ms(2 * hour, hour, 10 * hour, hour, early, NULL, 1) == 0);

	/* the bounds peers sent: the horizon is no later than any of them (every node's
	 * view of every other); none received from a peer yet: no GC; a peer not waited
	 * for is not */
	uint64_t sy[3] = {now - 1000, now - 2000, now - 3000};
	uint64_t bd[3] = {0, now - grace, now - grace};
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, sy, bd, 3) == 0);
	bd[0] = now - grace;
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, sy, bd, 3) == now - grace);
	bd[1] = now - 50 * day; /* peer 1 waits for a node it last saw 50 days ago */
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, sy, bd, 3) == now - 50 * day);
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, sy, NULL, 3) == now - grace); /* own bound */
	bd[0] = now - 60 * day;
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, sy, bd, 3) == now - 60 * day);
	bd[0] = now - 10 * day; /* later than now - grace: grace rules */
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, sy, bd, 3) == now - 50 * day);
	sy[1] = now - 180 * day; /* peer 1 away gc_max: neither its time nor its bound count */
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, sy, bd, 3) == now - grace);
	bd[1] = 0; /* (nor its lack of one) */
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, sy, bd, 3) == now - grace);
	bd[1] = now - 50 * day;
	sy[1] = now - 170 * day; /* away 170 days: its own time is the earlier limit */
	assert_true(mm_gc_horizon_ms(now, grace, max, hour, sy, bd, 3) == now - 170 * day - hour);

	/* the nodes a GC counts: the same set in any order hashes alike, another set
	 * not; a peer's bound counts only with our hash */
	uint64_t m1[3] = {7, 3, 5}, m2[3] = {5, 7, 3}, m3[2] = {3, 5};
	uint64_t h1 = mm_gc_members_hash(m1, 3), h2 = mm_gc_members_hash(m2, 3), h3 = mm_gc_members_hash(m3, 2);
	assert_true(h1 == h2 && h1 != h3 && h1 && h3);
	struct mm_gc_peer gp = {.bound_ms = 1234, .members = h1};
	assert_true(mm_gc_peer_bound(&gp, h1) == 1234);
	assert_true(mm_gc_peer_bound(&gp, h3) == 0);

	/* a peer's in-sync time counts once it stayed connected until the next GC */
	struct mm_gc_peer g = {.known_ms = 50};
	assert_true(mm_gc_peer_tick(&g, 0, 1, true) == 50);     /* never in sync: since known */
	assert_true(mm_gc_peer_tick(&g, 100, 1, true) == 50);   /* sampled, not yet kept */
	assert_true(mm_gc_peer_tick(&g, 200, 1, true) == 100);  /* same connection since: kept */
	assert_true(mm_gc_peer_tick(&g, 300, 2, true) == 100);  /* reconnected: 200 not kept */
	assert_true(mm_gc_peer_tick(&g, 300, 2, false) == 100); /* 300 sampled, but down now */
	assert_true(mm_gc_peer_tick(&g, 400, 2, true) == 100);  /* down at the sample: not kept */
	assert_true(mm_gc_peer_tick(&g, 400, 2, true) == 400);
	assert_true(mm_gc_peer_tick(&g, 350, 2, true) == 400);  /* never goes back */
}

static void test_gc(void **state)
{
	(void)state;
	struct mm_user *a = mm_user_new("d/u"), *b = mm_user_new("d/u");
	struct mm_delta *dm = mm_delta_new(), *dt = mm_delta_new(); /* messages, tombstones */
	uint8_t k[4][MM_KEY_LEN];
	for (int i = 0; i < 4; i++)
		assert_int_equal(mm_user_deliver(a, "INBOX", BODY, 1, 1, 0, NULL, 0, 0, H(100 + i, 1), k[i], NULL, NULL, dm), 1);
	/* k0, k1 expunged early; k2 late; k3 stays */
	assert_int_equal(mm_user_expunge(a, k[0], H(200, 1), NULL, NULL, dt), 1);
	assert_int_equal(mm_user_expunge(a, k[1], H(210, 1), NULL, NULL, dt), 1);
	assert_int_equal(mm_user_expunge(a, k[2], H(400, 1), NULL, NULL, dt), 1);
	assert_int_equal(mm_user_count(a), 5); /* folder + 4 */
	struct effs e = { 0 };
	struct mm_delta *g = mm_delta_new();
	assert_int_equal(mm_user_gc(a, H(300, 0), on_eff, &e, g), 2);
	assert_int_equal(e.n[MM_EFF_GC], 2);
	assert_int_equal(e.total, 2);
	assert_int_equal(mm_delta_count(g), 1);
	assert_int_equal(mm_delta_get(g, 0, NULL)->type, MM_REC_HORIZON);
	assert_null(mm_user_get(a, k[0]));
	assert_null(mm_user_get(a, k[1]));
	assert_int_equal(mm_user_get(a, k[2])->type, MM_REC_EXPUNGED);
	assert_int_equal(mm_user_get(a, k[3])->type, MM_REC_MESSAGE);
	assert_int_equal(mm_user_count(a), 4); /* folder, tomb k2, k3, horizon */
	assert_root_fresh(a);
	/* not higher: no-op */
	assert_int_equal(mm_user_gc(a, H(250, 0), NULL, NULL, NULL), 0);
	assert_int_equal(mm_user_gc(a, H(300, 0), NULL, NULL, NULL), 0);
	/* b: the horizon first, then tombstones, then messages: the same state */
	e = (struct effs){ 0 };
	assert_int_equal(mm_user_merge(b, mm_delta_get(g, 0, NULL), on_eff, &e), 1);
	for (size_t i = 0; i < mm_delta_count(dt); i++)
		assert_true(mm_user_merge(b, mm_delta_get(dt, i, NULL), on_eff, &e) >= 0);
	assert_int_equal(e.n[MM_EFF_TOMB_NEW], 1); /* k0, k1 were already collected */
	/* (messages k0/k1 would now come back: the documented resurrection case) */
	for (size_t i = 0; i < mm_delta_count(dm); i++) {
		const struct mm_rec *r = mm_delta_get(dm, i, NULL);
		if (r->type != MM_REC_MESSAGE || (memcmp(r->key, k[0], MM_KEY_LEN) && memcmp(r->key, k[1], MM_KEY_LEN)))
			assert_true(mm_user_merge(b, r, on_eff, &e) >= 0);
	}
	assert_users_equal(a, b);
	/* an old tombstone arriving after the horizon is dropped, but it still kills the
	 * message it names when that message is live here */
	struct mm_user *c = mm_user_new("d/u");
	for (size_t i = 0; i < mm_delta_count(dm); i++)
		assert_int_equal(mm_user_merge(c, mm_delta_get(dm, i, NULL), NULL, NULL), 1);
	assert_int_equal(mm_user_get(c, k[0])->type, MM_REC_MESSAGE);
	assert_int_equal(mm_user_merge(c, mm_delta_get(g, 0, NULL), NULL, NULL), 1);
	e = (struct effs){ 0 };
	for (size_t i = 0; i < mm_delta_count(dt); i++)
		assert_int_equal(mm_user_merge(c, mm_delta_get(dt, i, NULL), on_eff, &e), 1);
	assert_int_equal(e.n[MM_EFF_MSG_EXPUNGED], 3);
	assert_users_equal(a, c);
	/* horizon merges by max */
	struct mm_rec h1 = *mm_delta_get(g, 0, NULL), h2 = h1;
	h2.horizon.stamp = H(500, 0);
	struct mm_user *x = mm_user_new("d/u"), *y = mm_user_new("d/u");
	assert_int_equal(mm_user_merge(x, &h1, NULL, NULL), 1);
	assert_int_equal(mm_user_merge(x, &h2, NULL, NULL), 1);
	assert_int_equal(mm_user_merge(y, &h2, NULL, NULL), 1);
	assert_int_equal(mm_user_merge(y, &h1, NULL, NULL), 0);
	assert_users_equal(x, y);
	/* documented resurrection: a MESSAGE arriving after its tombstone was collected */
	const struct mm_rec *m0 = NULL;
	for (size_t i = 0; i < mm_delta_count(dm); i++) {
		const struct mm_rec *r = mm_delta_get(dm, i, NULL);
		if (r->type == MM_REC_MESSAGE && !memcmp(r->key, k[0], MM_KEY_LEN))
			m0 = r;
	}
	assert_non_null(m0);
	assert_int_equal(mm_user_merge(a, m0, NULL, NULL), 1);
	assert_int_equal(mm_user_get(a, k[0])->type, MM_REC_MESSAGE);
	/* but not while its tombstone is still held (k2, stamped after the horizon) */
	for (size_t i = 0; i < mm_delta_count(dm); i++) {
		const struct mm_rec *r = mm_delta_get(dm, i, NULL);
		if (r->type == MM_REC_MESSAGE && !memcmp(r->key, k[2], MM_KEY_LEN))
			assert_int_equal(mm_user_merge(a, r, NULL, NULL), 0);
	}
	mm_user_free(&x);
	mm_user_free(&y);
	mm_user_free(&c);
	mm_delta_free(&g);
	mm_delta_free(&dm);
	mm_delta_free(&dt);
	mm_user_free(&a);
	mm_user_free(&b);
}

/* ---- Merkle ----------------------------------------------------------------------------------------- */

/* Random local operations on u (n of them); keys remembered in keys. */
static void random_ops(struct mm_user *u, int n, uint8_t (*keys)[MM_KEY_LEN], size_t *nkeys, uint64_t node, uint64_t *t)
{
	for (int i = 0; i < n; i++) {
		mm_hlc st = H(++*t, node);
		unsigned op = rn(10);
		if (op < 5 || *nkeys == 0) {
			uint8_t body[MM_ID_LEN] = { 0 };
			body[0] = (uint8_t)rn(256);
			const char *kws[2] = { kw_pool[rn(5)], kw_pool[rn(5)] };
			assert_int_equal(mm_user_deliver(u, folder_pool[rn(4)], body, rn(1000), 5, rn(64), kws, rn(3), rn(2) ? 0 : 1 + rn(100),
			                                 st, keys[*nkeys], NULL, NULL, NULL), 1);
			++*nkeys;
			continue;
		}
		const uint8_t *k = keys[rn((unsigned)*nkeys)];
		int rc;
		switch (op) {
		case 5:
		case 6:
			rc = mm_user_set_flag(u, k, (enum mm_flag)rn(MM_FLAG_COUNT), rn(2), st, NULL, NULL, NULL);
			break;
		case 7:
			rc = mm_user_set_keyword(u, k, kw_pool[rn(5)], rn(2), st, NULL, NULL, NULL);
			break;
		case 8:
			rc = mm_user_expunge(u, k, st, NULL, NULL, NULL);
			break;
		default:
			rc = mm_user_set_uid(u, k, rn(50), st, NULL, NULL, NULL);
			break;
		}
		assert_true(rc >= 0 || rc == -ENOENT);
	}
}

/* Tree queries at random prefixes agree with hashing what foreach yields. */
static void check_tree(const struct mm_user *u, uint8_t (*keys)[MM_KEY_LEN], size_t nkeys)
{
	for (int i = 0; i < 60; i++) {
		unsigned depth = rn(7);
		uint8_t prefix[MM_KEY_LEN];
		memcpy(prefix, keys[rn((unsigned)nkeys)], MM_KEY_LEN);
		check_children(u, prefix, depth);
		uint8_t h[MM_FANOUT][MM_HASH_LEN], nh[MM_HASH_LEN], acc[MM_HASH_LEN] = { 0 };
		uint32_t cnt[MM_FANOUT], ncnt, total = 0;
		mm_user_children(u, prefix, depth, h, cnt);
		for (int j = 0; j < MM_FANOUT; j++) {
			total += cnt[j];
			for (int b = 0; b < MM_HASH_LEN; b++)
				acc[b] ^= h[j][b];
		}
		mm_user_node(u, prefix, depth, nh, &ncnt);
		assert_int_equal(ncnt, total);
		assert_memory_equal(nh, acc, MM_HASH_LEN);
	}
}

static void test_merkle(void **state)
{
	(void)state;
	uint8_t (*keys)[MM_KEY_LEN] = malloc(20000 * MM_KEY_LEN);
	size_t nkeys = 0;
	uint64_t t = 1;
	struct mm_user *u = mm_user_new("d/u");
	uint8_t root[MM_HASH_LEN], zero[MM_HASH_LEN] = { 0 };
	mm_user_root(u, root);
	assert_memory_equal(root, zero, MM_HASH_LEN);
	/* grow through several bucket levels, checking along the way */
	int steps[] = { 10, 30, 200, 600, 2000, 9000 };
	for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
		random_ops(u, steps[s], keys, &nkeys, 1, &t);
		assert_root_fresh(u);
		check_tree(u, keys, nkeys);
	}
	/* the same records merged in another order (full state) give the same tree */
	struct mm_delta *d = mm_delta_new();
	mm_user_foreach(u, NULL, 0, add_all, d);
	struct mm_user *v = mm_user_new("d/u");
	for (size_t i = mm_delta_count(d); i-- > 0;)
		assert_int_equal(mm_user_merge(v, mm_delta_get(d, i, NULL), NULL, NULL), 1);
	assert_users_equal(u, v);
	check_tree(v, keys, nkeys);
	mm_delta_free(&d);
	mm_user_free(&v);
	mm_user_free(&u);
	free(keys);
}

/* Descends from the root of a and b collecting the keys whose leaves differ. */
struct diffset {
	uint8_t (*k)[MM_KEY_LEN];
	size_t n;
};

static int add_key(void *arg, const struct mm_rec *r)
{
	struct diffset *d = arg;
	for (size_t i = 0; i < d->n; i++)
		if (!memcmp(d->k[i], r->key, MM_KEY_LEN))
			return 0;
	memcpy(d->k[d->n++], r->key, MM_KEY_LEN);
	return 0;
}

static void descend(const struct mm_user *a, const struct mm_user *b, uint8_t *prefix, unsigned depth, struct diffset *out)
{
	uint8_t ha[MM_FANOUT][MM_HASH_LEN], hb[MM_FANOUT][MM_HASH_LEN];
	uint32_t ca[MM_FANOUT], cb[MM_FANOUT];
	mm_user_children(a, prefix, depth, ha, ca);
	mm_user_children(b, prefix, depth, hb, cb);
	for (unsigned i = 0; i < MM_FANOUT; i++) {
		if (!memcmp(ha[i], hb[i], MM_HASH_LEN))
			continue;
		uint8_t p[MM_KEY_LEN];
		memcpy(p, prefix, MM_KEY_LEN);
		p[depth / 2] = (uint8_t)((depth & 1) ? (p[depth / 2] & 0xf0) | i : i << 4);
		if (ca[i] + cb[i] <= 2 || depth + 1 == MM_MAX_DEPTH) {
			/* small enough: list both sides' records there */
			mm_user_foreach(a, p, depth + 1, add_key, out);
			mm_user_foreach(b, p, depth + 1, add_key, out);
		} else {
			descend(a, b, p, depth + 1, out);
		}
	}
}

static void test_descent(void **state)
{
	(void)state;
	uint8_t (*keys)[MM_KEY_LEN] = malloc(4000 * MM_KEY_LEN);
	size_t nkeys = 0;
	uint64_t t = 1;
	struct mm_user *a = mm_user_new("d/u");
	random_ops(a, 3000, keys, &nkeys, 1, &t);
	struct mm_delta *d = mm_delta_new();
	mm_user_foreach(a, NULL, 0, add_all, d);
	struct mm_user *b = mm_user_new("d/u");
	for (size_t i = 0; i < mm_delta_count(d); i++)
		assert_int_equal(mm_user_merge(b, mm_delta_get(d, i, NULL), NULL, NULL), 1);
	/* now change a few records on each side */
	uint8_t changed[40][MM_KEY_LEN];
	size_t nch = 0;
	for (int i = 0; i < 10; i++) {
		uint8_t k[MM_KEY_LEN];
		assert_int_equal(mm_user_deliver(a, "INBOX", BODY, 1, 1, 0, NULL, 0, 0, H(++t, 1), k, NULL, NULL, NULL), 1);
		memcpy(changed[nch++], k, MM_KEY_LEN);
		assert_int_equal(mm_user_deliver(b, "INBOX", BODY, 1, 1, 0, NULL, 0, 0, H(++t, 2), k, NULL, NULL, NULL), 1);
		memcpy(changed[nch++], k, MM_KEY_LEN);
	}
	for (int i = 0; i < 10; i++) {
		const uint8_t *k = keys[rn((unsigned)nkeys)];
		const struct mm_rec *r = mm_user_get(b, k);
		if (r->type != MM_REC_MESSAGE)
			continue;
		int rc = mm_user_set_keyword(b, k, "fresh", true, H(++t, 2), NULL, NULL, NULL);
		assert_true(rc == 1 || rc == 0);
		bool dup = false;
		for (size_t j = 0; j < nch; j++)
			dup |= !memcmp(changed[j], k, MM_KEY_LEN);
		if (rc == 1 && !dup)
			memcpy(changed[nch++], k, MM_KEY_LEN);
	}
	struct diffset ds = { malloc(5000 * MM_KEY_LEN), 0 };
	uint8_t prefix[MM_KEY_LEN] = { 0 };
	descend(a, b, prefix, 0, &ds);
	/* descent found every changed key; anything else it listed is a record equal on
	 * both sides that shared a small differing leaf bucket */
	for (size_t i = 0; i < nch; i++) {
		bool found = false;
		for (size_t j = 0; j < ds.n; j++)
			found |= !memcmp(ds.k[j], changed[i], MM_KEY_LEN);
		assert_true(found);
	}
	size_t exact = 0;
	for (size_t j = 0; j < ds.n; j++) {
		const struct mm_rec *ra = mm_user_get(a, ds.k[j]), *rb = mm_user_get(b, ds.k[j]);
		if (!ra || !rb || !mm_rec_equal(ra, rb))
			exact++;
	}
	assert_int_equal(exact, nch);
	free(ds.k);
	mm_delta_free(&d);
	mm_user_free(&a);
	mm_user_free(&b);
	free(keys);
}

/* ---- effects and borrowed records ------------------------------------------------------------------ */

static int count_nested(void *arg, const struct mm_rec *r)
{
	(void)r;
	++*(int *)arg;
	return 0;
}

struct nest_ctx {
	const struct mm_user *u;
	int outer, inner;
};

static int nested(void *arg, const struct mm_rec *r)
{
	struct nest_ctx *c = arg;
	uint8_t key[MM_KEY_LEN];
	memcpy(key, r->key, MM_KEY_LEN);
	c->outer++;
	assert_int_equal(mm_user_foreach(c->u, NULL, 0, count_nested, &c->inner), 0);
	assert_memory_equal(key, r->key, MM_KEY_LEN); /* the outer record is intact */
	return 0;
}

static void test_effects(void **state)
{
	(void)state;
	struct mm_user *a = mm_user_new("d/u"), *b = mm_user_new("d/u");
	struct mm_delta *da = mm_delta_new(), *db = mm_delta_new();
	struct effs ea = { 0 }, eb = { 0 };
	/* concurrent creation of one folder: the loser sees its UIDVALIDITY change */
	assert_int_equal(mm_user_folder_create(a, "Proj", H(100, 1), NULL, NULL, da), 1);
	assert_int_equal(mm_user_folder_create(b, "Proj", H(100, 2), NULL, NULL, db), 1);
	assert_int_equal(mm_user_merge(a, mm_delta_get(db, 0, NULL), on_eff, &ea), 1);
	assert_int_equal(mm_user_merge(b, mm_delta_get(da, 0, NULL), on_eff, &eb), 0);
	assert_int_equal(ea.n[MM_EFF_FOLDER], 1);
	assert_int_equal(eb.total, 0);
	assert_users_equal(a, b);
	/* a subscription arriving: FOLDER; a stamp-only change of a register: nothing */
	mm_delta_clear(da);
	assert_int_equal(mm_user_folder_subscribe(a, "Proj", true, H(110, 1), NULL, NULL, da), 1);
	eb = (struct effs){ 0 };
	assert_int_equal(mm_user_merge(b, mm_delta_get(da, 0, NULL), on_eff, &eb), 1);
	assert_int_equal(eb.n[MM_EFF_FOLDER], 1);
	struct mm_rec f = *mm_delta_get(da, 0, NULL);
	f.folder.subscribed.stamp = H(120, 1); /* same value, later stamp */
	eb = (struct effs){ 0 };
	assert_int_equal(mm_user_merge(b, &f, on_eff, &eb), 1);
	assert_int_equal(eb.total, 0);
	assert_int_equal(mm_user_merge(a, &f, on_eff, &eb), 1);
	assert_int_equal(eb.total, 0);
	/* UID and flags effects */
	uint8_t key[MM_KEY_LEN];
	mm_delta_clear(da);
	assert_int_equal(mm_user_deliver(a, "Proj", BODY, 5, 5, 0, NULL, 0, 0, H(130, 1), key, NULL, NULL, da), 1);
	assert_int_equal(mm_delta_count(da), 1); /* folder exists already */
	eb = (struct effs){ 0 };
	assert_int_equal(mm_user_merge(b, mm_delta_get(da, 0, NULL), on_eff, &eb), 1);
	assert_int_equal(eb.n[MM_EFF_MSG_NEW], 1);
	mm_delta_clear(da);
	assert_int_equal(mm_user_set_uid(a, key, 77, H(140, 1), NULL, NULL, da), 1);
	assert_int_equal(mm_user_set_uid(a, key, 77, H(141, 1), NULL, NULL, da), 0);
	eb = (struct effs){ 0 };
	assert_int_equal(mm_user_merge(b, mm_delta_get(da, 0, NULL), on_eff, &eb), 1);
	assert_int_equal(eb.n[MM_EFF_MSG_UID], 1);
	assert_int_equal(eb.total, 1);
	assert_int_equal(mm_user_get(b, key)->msg.uid_value, 77);
	/* a record disagreeing on immutable fields: the larger wins everywhere, reported
	 * as expunge + new */
	struct mm_rec forged = *mm_user_get(a, key);
	forged.msg.body[0] = 0xff;
	forged.msg.n_keywords = 0;
	eb = (struct effs){ 0 };
	assert_int_equal(mm_user_merge(b, &forged, on_eff, &eb), 1);
	assert_int_equal(eb.n[MM_EFF_MSG_EXPUNGED], 1);
	assert_int_equal(eb.n[MM_EFF_MSG_NEW], 1);
	assert_int_equal(mm_user_get(b, key)->msg.body[0], 0xff);
	assert_int_equal(mm_user_get(b, key)->msg.uid_value, 77);
	assert_int_equal(mm_user_merge(a, &forged, NULL, NULL), 1);
	assert_users_equal(a, b);
	/* records from mm_user_get stay valid across gets until the next change */
	uint8_t fk[MM_KEY_LEN];
	mm_key_folder("Proj", fk);
	const struct mm_rec *r1 = mm_user_get(b, key), *r2 = mm_user_get(b, fk);
	assert_int_equal(r1->type, MM_REC_MESSAGE);
	assert_int_equal(r2->type, MM_REC_FOLDER);
	assert_string_equal(r1->msg.folder, "Proj");
	assert_string_equal(r2->folder.name, "Proj");
	/* nested foreach on one user */
	struct nest_ctx c = { b, 0, 0 };
	assert_int_equal(mm_user_foreach(b, NULL, 0, nested, &c), 0);
	assert_int_equal(c.outer, (int)mm_user_count(b));
	assert_int_equal(c.inner, c.outer * c.outer);
	mm_delta_free(&da);
	mm_delta_free(&db);
	mm_user_free(&a);
	mm_user_free(&b);
}

/* ---- codec -------------------------------------------------------------------------------------------- */

static void roundtrip(const struct mm_rec *r)
{
	uint8_t buf[4096], buf2[4096];
	ssize_t n = mm_rec_encode(r, NULL, 0);
	assert_true(n > 0 && n <= (ssize_t)sizeof buf);
	assert_int_equal(mm_rec_encode(r, buf, sizeof buf), n);
	if (n > 1)
		assert_int_equal(mm_rec_encode(r, buf2, (size_t)n - 1), -ENOSPC);
	struct mm_arena a;
	mm_arena_init(&a);
	struct mm_rec d;
	assert_int_equal(mm_rec_decode(buf, (size_t)n, &d, &a), 0);
	assert_true(mm_rec_equal(r, &d));
	assert_int_equal(mm_rec_encode(&d, buf2, sizeof buf2), n);
	assert_memory_equal(buf, buf2, (size_t)n);
	uint8_t h1[MM_HASH_LEN], h2[MM_HASH_LEN];
	mm_rec_hash(r, h1);
	mm_rec_hash(&d, h2);
	assert_memory_equal(h1, h2, MM_HASH_LEN);
	/* every truncation fails cleanly; so does a trailing byte */
	for (ssize_t i = 0; i < n; i++)
		assert_int_equal(mm_rec_decode(buf, (size_t)i, &d, &a), -EBADMSG);
	buf[n] = 0;
	assert_int_equal(mm_rec_decode(buf, (size_t)n + 1, &d, &a), -EBADMSG);
	/* garbled bytes: either rejected, or a valid record that re-encodes to itself */
	for (int i = 0; i < 200; i++) {
		memcpy(buf2, buf, (size_t)n);
		buf2[rn((unsigned)n)] ^= (uint8_t)(1 + rn(255));
		if (mm_rec_decode(buf2, (size_t)n, &d, &a) == 0) {
			uint8_t buf3[4096];
			assert_int_equal(mm_rec_validate(&d), 0);
			assert_int_equal(mm_rec_encode(&d, buf3, sizeof buf3), n);
			assert_memory_equal(buf2, buf3, (size_t)n);
		}
	}
	mm_arena_free(&a);
}

static void test_codec(void **state)
{
	(void)state;
	for (int i = 0; i < 300; i++) {
		struct recbuf b;
		rand_rec(&b, 3);
		assert_int_equal(mm_rec_validate(&b.r), 0);
		roundtrip(&b.r);
	}
	struct mm_rec h = { .type = MM_REC_HORIZON, .horizon.stamp = H(5, 6) };
	mm_key_horizon(h.key);
	roundtrip(&h);
	/* equal iff same hash; different records hash differently */
	struct recbuf x, y;
	rand_rec(&x, 1);
	while (x.r.type != MM_REC_MESSAGE)
		rand_rec(&x, 1);
	y = x;
	y.r.msg.flags[MM_FLAG_SEEN].stamp.t += 1;
	if (!y.r.msg.flags[MM_FLAG_SEEN].stamp.node)
		y.r.msg.flags[MM_FLAG_SEEN].stamp.node = 1;
	assert_false(mm_rec_equal(&x.r, &y.r));
	/* validation */
	struct mm_rec bad = x.r;
	bad.msg.folder = "a/b";
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	bad.msg.folder = "";
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	bad.msg.folder = "tab\there";
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	char longname[300];
	memset(longname, 'a', 299);
	longname[299] = 0;
	bad.msg.folder = longname;
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	assert_true(mm_rec_encode(&bad, NULL, 0) == -EINVAL);
	longname[MM_NAME_MAX] = 0;
	assert_int_equal(mm_rec_validate(&bad), 0);
	roundtrip(&bad);
	bad = x.r;
	bad.key[0] ^= 1; /* key not derived from created */
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	bad = x.r;
	bad.msg.flags[0] = (struct mm_reg){ 1, { 0, 0 } }; /* value without a write */
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	bad.msg.flags[0] = (struct mm_reg){ 2, { 1, 1 } };
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	struct mm_kwreg kws[2] = { { "b", { 1, { 1, 1 } } }, { "a", { 1, { 1, 1 } } } };
	bad = x.r;
	bad.msg.keywords = kws;
	bad.msg.n_keywords = 2; /* unsorted */
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	kws[0].name = "a"; /* duplicate */
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	bad.type = 9;
	assert_int_equal(mm_rec_validate(&bad), -EINVAL);
	struct mm_user *u = mm_user_new("d/u");
	assert_int_equal(mm_user_merge(u, &bad, NULL, NULL), -EINVAL);
	assert_int_equal(mm_user_count(u), 0);
	mm_user_free(&u);
	/* garbage of every short length */
	struct mm_arena a;
	mm_arena_init(&a);
	for (int i = 0; i < 20000; i++) {
		uint8_t g[64];
		size_t n = rn(sizeof g);
		for (size_t j = 0; j < n; j++)
			g[j] = (uint8_t)rnd();
		if (n)
			g[0] = (uint8_t)(1 + rn(4));
		struct mm_rec d;
		int rc = mm_rec_decode(g, n, &d, &a);
		assert_true(rc == 0 || rc == -EBADMSG);
		if (i % 100 == 0)
			mm_arena_reset(&a);
	}
	assert_int_equal(mm_rec_decode(NULL, 0, &(struct mm_rec){ 0 }, &a), -EBADMSG);
	mm_arena_free(&a);
}

/* ---- state and delta ------------------------------------------------------------------------------------ */

static void test_state(void **state)
{
	(void)state;
	struct mm_state *s = mm_state_new(), *t = mm_state_new();
	struct mm_delta *d = mm_delta_new();
	const char *names[] = { "a.org/ann", "a.org/bob", "b.net/cy", "b.net/dee", "c.com/eve" };
	for (int i = 0; i < 5; i++) {
		struct mm_user *u = mm_state_user(s, names[i], true);
		assert_non_null(u);
		assert_ptr_equal(mm_state_user(s, names[i], false), u);
		for (int j = 0; j <= i; j++)
			assert_int_equal(mm_user_deliver(u, "INBOX", BODY, 1, 1, 0, NULL, 0, 0, H(10 + j, 1), NULL, NULL, NULL, d), 1);
	}
	assert_null(mm_state_user(s, "x/y", false));
	assert_int_equal(mm_state_user_count(s), 5);
	uint8_t r1[MM_HASH_LEN], r2[MM_HASH_LEN];
	mm_state_root(s, r1);
	mm_state_root(t, r2);
	assert_memory_not_equal(r1, r2, MM_HASH_LEN);
	struct effs e = { 0 };
	assert_int_equal(mm_delta_apply(d, t, on_eff, &e), (int)mm_delta_count(d));
	assert_int_equal(e.n[MM_EFF_MSG_NEW], 15);
	mm_state_root(t, r2);
	assert_memory_equal(r1, r2, MM_HASH_LEN);
	assert_int_equal(mm_delta_apply(d, t, NULL, NULL), 0);
	/* a change to one user moves the root (leaf cache invalidated) */
	struct mm_user *u = mm_state_user(t, "b.net/cy", false);
	assert_int_equal(mm_user_folder_create(u, "X", H(99, 2), NULL, NULL, NULL), 1);
	mm_state_root(t, r2);
	assert_memory_not_equal(r1, r2, MM_HASH_LEN);
	/* children/node consistent with the root */
	uint8_t h[MM_FANOUT][MM_HASH_LEN], acc[MM_HASH_LEN] = { 0 }, nh[MM_HASH_LEN];
	uint32_t c[MM_FANOUT], total = 0, nc;
	mm_state_children(t, NULL, 0, h, c);
	for (int i = 0; i < MM_FANOUT; i++) {
		total += c[i];
		for (int j = 0; j < MM_HASH_LEN; j++)
			acc[j] ^= h[i][j];
	}
	assert_int_equal(total, 5);
	assert_memory_equal(acc, r2, MM_HASH_LEN);
	mm_state_node(t, NULL, 0, nh, &nc);
	assert_int_equal(nc, 5);
	assert_memory_equal(nh, r2, MM_HASH_LEN);
	uint8_t pos[MM_KEY_LEN];
	mm_user_position("b.net/cy", pos);
	mm_state_node(t, pos, 32, NULL, &nc);
	assert_int_equal(nc, 1);
	/* invalid records and names */
	struct mm_rec bad = { .type = MM_REC_HORIZON };
	assert_int_equal(mm_state_merge(t, "a.org/ann", &bad, NULL, NULL), -EINVAL);
	mm_delta_free(&d);
	mm_state_free(&s);
	mm_state_free(&t);
	assert_null(s);
	mm_state_free(&t); /* NULL-safe */
}

/* A user that exists without records (looked up with create, never written) has
 * nothing a peer could send, so it must not make two otherwise equal states differ:
 * the simulator found states whose roots stayed apart forever that way. */
static void test_empty_user(void **state)
{
	(void)state;
	struct mm_state *s = mm_state_new(), *t = mm_state_new();
	uint8_t r1[MM_HASH_LEN], r2[MM_HASH_LEN], zero[MM_HASH_LEN] = { 0 };
	assert_non_null(mm_state_user(s, "a.org/ann", true));
	mm_state_root(s, r1);
	assert_memory_equal(r1, zero, MM_HASH_LEN);
	uint32_t counts[MM_FANOUT], total = 0;
	mm_state_children(s, NULL, 0, NULL, counts);
	for (int i = 0; i < MM_FANOUT; i++)
		total += counts[i];
	assert_int_equal(total, 0);
	/* with records on both sides, the empty user still changes nothing */
	struct mm_user *us = mm_state_user(s, "b.net/bob", true), *ut = mm_state_user(t, "b.net/bob", true);
	assert_int_equal(mm_user_folder_create(us, "X", H(5, 1), NULL, NULL, NULL), 1);
	assert_int_equal(mm_user_folder_create(ut, "X", H(5, 1), NULL, NULL, NULL), 1);
	mm_state_root(s, r1);
	mm_state_root(t, r2);
	assert_memory_equal(r1, r2, MM_HASH_LEN);
	assert_memory_not_equal(r1, zero, MM_HASH_LEN);
	mm_state_free(&s);
	mm_state_free(&t);
}

static void test_delta(void **state)
{
	(void)state;
	struct mm_delta *d = mm_delta_new();
	struct recbuf b;
	for (int i = 0; i < 1000; i++) {
		rand_rec(&b, 50);
		char user[16];
		snprintf(user, sizeof user, "d/u%u", rn(3));
		assert_int_equal(mm_delta_add(d, user, &b.r), 0);
	}
	assert_true(mm_delta_count(d) <= 3 * 52);
	/* every (user, key) once, each entry a deep copy */
	for (size_t i = 0; i < mm_delta_count(d); i++) {
		const char *ui, *uj;
		const struct mm_rec *ri = mm_delta_get(d, i, &ui);
		assert_int_equal(mm_rec_validate(ri), 0);
		for (size_t j = i + 1; j < mm_delta_count(d); j++) {
			const struct mm_rec *rj = mm_delta_get(d, j, &uj);
			assert_false(!strcmp(ui, uj) && !memcmp(ri->key, rj->key, MM_KEY_LEN));
		}
	}
	/* the later record replaces */
	rand_rec(&b, 1);
	assert_int_equal(mm_delta_add(d, "solo", &b.r), 0);
	size_t n = mm_delta_count(d);
	struct recbuf c = b;
	c.r.type = MM_REC_EXPUNGED;
	c.r.tomb.stamp = H(77, 7);
	assert_int_equal(mm_delta_add(d, "solo", &c.r), 0);
	assert_int_equal(mm_delta_count(d), n);
	assert_true(mm_rec_equal(mm_delta_get(d, n - 1, NULL), &c.r));
	assert_null(mm_delta_get(d, n, NULL));
	mm_delta_clear(d);
	assert_int_equal(mm_delta_count(d), 0);
	mm_delta_free(&d);
	assert_null(d);
	mm_delta_free(&d);
}

int main(void)
{
	const char *seed = getenv("MM_SEED");
	uint64_t s = seed ? strtoull(seed, NULL, 0) : 0x5eed;
	rng_state = s;
	printf("test_crdt: MM_SEED=%llu\n", (unsigned long long)s);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hlc),
		cmocka_unit_test(test_merge_laws),
		cmocka_unit_test(test_concurrent_flags),
		cmocka_unit_test(test_same_flag),
		cmocka_unit_test(test_expunge_wins),
		cmocka_unit_test(test_user_removed),
		cmocka_unit_test(test_folder_delete_vs_delivery),
		cmocka_unit_test(test_gc),
		cmocka_unit_test(test_gc_horizon),
		cmocka_unit_test(test_gc_stale),
		cmocka_unit_test(test_merkle),
		cmocka_unit_test(test_descent),
		cmocka_unit_test(test_effects),
		cmocka_unit_test(test_codec),
		cmocka_unit_test(test_state),
		cmocka_unit_test(test_empty_user),
		cmocka_unit_test(test_delta),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
