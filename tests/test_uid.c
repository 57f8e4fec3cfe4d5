/*
 * test_uid.c — IMAP identity across replicas (issue 7): the replica rule of
 * crdt/uid.c (keep, list provisionally and ask, authority moves), the need register,
 * the rule settling over 500 random schedules of 4 replicas with a model of Dovecot's
 * listing, folder renew (new UIDVALIDITY), dovecot-uidlist load/edit/save, and two
 * real stores on temporary Maildirs: UIDs given at the origin are listed under the
 * same numbers on the replica, UIDVALIDITY agrees, concurrent deliveries that took
 * the same UID both move and both nodes end with one UID -> message map, a damaged
 * uidlist changes UIDVALIDITY everywhere, a restart changes nothing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/lock_check.h"

#include "crdt/crdt.h"
#include "crdt/uid.h"
#include "node/maildir.h"
#include "node/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char top[256];

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st; (void)flag; (void)f;
	return remove(p);
}

static int setup(void **state)
{
	(void)state;
	snprintf(top, sizeof top, "/tmp/mm-test-uid-XXXXXX");
	assert_non_null(mkdtemp(top));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	nftw(top, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

/* ---- crdt ------------------------------------------------------------------------ */

static const uint8_t body0[MM_ID_LEN] = {1};

static void deliver_uid(struct mm_user *u, const char *folder, uint64_t t, uint64_t node, uint32_t uid,
                        uint8_t key[MM_KEY_LEN])
{
	int r = mm_user_deliver(u, folder, body0, 10, 1, 0, NULL, 0, uid, (mm_hlc){t, node}, key, NULL, NULL, NULL);
	assert_int_equal(r, 1);
}

static int n_uid_eff;
static void count_eff(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	(void)arg; (void)user; (void)rec;
	if (eff == MM_EFF_MSG_UID)
		n_uid_eff++;
}

/* ---- the replica rule (crdt/uid.c) ---------------------------------------------- */

static struct mm_uid_item item(uint8_t id, uint32_t want, uint32_t need, uint32_t have)
{
	struct mm_uid_item it;
	memset(&it, 0, sizeof it);
	it.key[0] = id;
	it.want = want;
	it.need = need;
	it.have = have;
	return it;
}

static const struct mm_uid_item *find_item(const struct mm_uid_item *v, size_t n, uint8_t id)
{
	for (size_t i = 0; i < n; i++)
		if (v[i].key[0] == id)
			return &v[i];
	fail_msg("item %u lost", id);
	return NULL;
}

static void test_plan_rule(void **state)
{
	(void)state;
	/* replica, NEXTUID 6: 1..5 listed as wanted; 7 can still be taken; 4 is wanted
	 * by two messages (the listed one keeps it); 3 is below NEXTUID and unlisted */
	struct mm_uid_item v[] = {
		item(1, 1, 0, 1), item(2, 2, 0, 2), item(4, 4, 0, 4), item(9, 4, 0, 0),
		item(3, 3, 0, 0), item(7, 7, 0, 0), item(8, 0, 0, 5), item(10, 0, 0, 0),
	};
	size_t n = sizeof v / sizeof v[0];
	uint32_t next = 6;
	mm_uid_plan(v, n, &next, 7, false, false);
	for (size_t i = 1; i < n; i++)
		assert_true(v[i - 1].target < v[i].target); /* ascending, no number twice */
	assert_int_equal(find_item(v, n, 1)->target, 1);
	assert_int_equal(find_item(v, n, 4)->target, 4);
	assert_int_equal(find_item(v, n, 7)->target, 7);
	assert_int_equal(find_item(v, n, 7)->set_uid, 0);
	/* a file listed before its record had a UID: that is its first UID */
	assert_int_equal(find_item(v, n, 8)->target, 5);
	assert_int_equal(find_item(v, n, 8)->set_uid, 5);
	/* cannot be shown under 3 / the second 4: provisional above everything (7),
	 * and a need for the authority; the replica never writes a UID */
	const struct mm_uid_item *p3 = find_item(v, n, 3), *p9 = find_item(v, n, 9);
	assert_true(p3->target > 7 && p9->target > 7);
	assert_int_equal(p3->set_uid, 0);
	assert_int_equal(p3->set_need, p3->target);
	assert_int_equal(p9->set_need, p9->target);
	/* a new file: above them */
	assert_int_equal(find_item(v, n, 10)->target, 10);
	assert_int_equal(find_item(v, n, 10)->set_uid, 10);
	assert_int_equal(next, 11);

	/* the same listing on the authority: it moves what it cannot show */
	struct mm_uid_item w[] = { item(1, 1, 0, 1), item(4, 4, 0, 4), item(9, 4, 0, 0), item(3, 3, 12, 0) };
	n = sizeof w / sizeof w[0];
	next = 6;
	mm_uid_plan(w, n, &next, 12, true, false);
	assert_int_equal(find_item(w, n, 4)->target, 4);
	assert_int_equal(find_item(w, n, 9)->set_uid, find_item(w, n, 9)->target);
	assert_int_equal(find_item(w, n, 3)->set_uid, find_item(w, n, 3)->target);
	assert_true(find_item(w, n, 9)->target > 12 && find_item(w, n, 3)->target > 12);
	assert_int_equal(find_item(w, n, 3)->set_need, 0);

	/* a need above a listed UID: the authority moves it (the contested number is
	 * retired), a replica keeps showing it until then */
	struct mm_uid_item x = item(5, 6, 8, 6);
	next = 7;
	mm_uid_plan(&x, 1, &next, 8, true, false);
	assert_true(x.target >= 8 && x.set_uid == x.target);
	x = item(5, 6, 8, 6);
	next = 7;
	mm_uid_plan(&x, 1, &next, 8, false, false);
	assert_int_equal(x.target, 6);
	assert_int_equal(x.set_uid, 0);
	/* listed provisionally above its UID: kept there and that very number asked for
	 * (it does not grow with what this node lists meanwhile) */
	x = item(5, 3, 0, 9);
	next = 10;
	mm_uid_plan(&x, 1, &next, 9, false, false);
	assert_int_equal(x.target, 9);
	assert_int_equal(x.set_need, 9);
	x = item(5, 3, 9, 9);
	next = 30;
	mm_uid_plan(&x, 1, &next, 29, false, false);
	assert_int_equal(x.target, 9);
	assert_int_equal(x.set_need, 0);
	/* the authority moves above every UID and need it knows */
	x = item(5, 3, 9, 0);
	next = 4;
	mm_uid_plan(&x, 1, &next, 9, true, false);
	assert_int_equal(x.set_uid, 10);
	x = item(5, 12, 0, 9); /* moved while this node listed others above 12 */
	next = 14;
	mm_uid_plan(&x, 1, &next, 13, false, false);
	assert_int_equal(x.target, 9);
	assert_int_equal(x.set_need, 14);
}

static int copy_cb(void *arg, const struct mm_rec *r)
{
	return mm_user_merge(arg, r, NULL, NULL) < 0;
}

/* Plans a replica's listing of two messages (have[] indexed like keys), applies it as
 * srep_plan does; returns how many needs it raised. */
static unsigned plan2(struct mm_user *u, const uint8_t keys[2][MM_KEY_LEN], uint32_t have[2], uint32_t *next,
                      bool authority, bool hold, uint64_t *clock)
{
	struct mm_uid_item it[2];
	for (size_t i = 0; i < 2; i++) {
		const struct mm_rec *rec = mm_user_get(u, keys[i]);
		it[i] = item(0, rec->msg.uid_value, rec->msg.uid_need, have[i]);
		memcpy(it[i].key, keys[i], MM_KEY_LEN);
		it[i].arg = (void *)(uintptr_t)i;
	}
	uint32_t n0 = *next;
	mm_uid_plan(it, 2, next, mm_user_uid_top(u, "INBOX"), authority, hold);
	unsigned needs = 0;
	for (size_t i = 0; i < 2; i++) {
		size_t j = (size_t)(uintptr_t)it[i].arg;
		if (it[i].set_uid)
			assert_true(mm_user_uid_move(u, keys[j], it[i].set_uid, (mm_hlc){ ++*clock, 1 }, NULL, NULL,
			                             NULL) >= 0);
		if (it[i].set_need && mm_user_uid_need(u, keys[j], it[i].set_need, NULL, NULL, NULL) > 0)
			needs++;
		if (it[i].target != have[j]) {
			assert_true(it[i].target >= n0); /* Dovecot's rule */
			have[j] = it[i].target;
			n0 = it[i].target + 1;
		}
	}
	assert_true(have[0] != have[1]);
	return needs;
}

/* Sim sweep seed 100383 (9 nodes, no pushes): the authority moves two messages in one
 * pass, to b1 < b2; a replica gets the move to b2 first (records arrive in hash
 * order, from peers that hold only some).  Re-filing it at once takes NEXTUID past
 * b1: the other move cannot be shown there, a need is raised, the authority moves
 * that message again (and every replica re-files it twice).  With the hold, the
 * re-file waits until the lower move is there; both are re-filed in order, no need. */
static void test_plan_holds_refile(void **state)
{
	(void)state;
	for (int hold = 0; hold <= 1; hold++) {
		struct mm_user *auth = mm_user_new("ex.org/alice"), *rep = mm_user_new("ex.org/alice");
		uint8_t k[2][MM_KEY_LEN];
		deliver_uid(auth, "INBOX", 100 << 16, 3, 1, k[0]);
		uint8_t b1[MM_ID_LEN] = { 2 };
		assert_int_equal(mm_user_deliver(auth, "INBOX", b1, 10, 1, 0, NULL, 0, 2, (mm_hlc){ 101 << 16, 3 },
		                                 k[1], NULL, NULL, NULL), 1);
		/* a third replica showed other messages under 1 and 2: it asks for moves */
		assert_int_equal(mm_user_uid_need(auth, k[0], 5, NULL, NULL, NULL), 1);
		assert_int_equal(mm_user_uid_need(auth, k[1], 5, NULL, NULL, NULL), 1);
		assert_int_equal(mm_user_foreach(auth, NULL, 0, copy_cb, rep), 0);
		uint64_t clock = 200 << 16;
		/* the authority lists both under 1, 2 and moves both in one pass */
		uint32_t ahave[2] = { 1, 2 }, anext = 3;
		assert_int_equal(plan2(auth, k, ahave, &anext, true, true, &clock), 0);
		uint32_t w0 = mm_user_get(auth, k[0])->msg.uid_value, w1 = mm_user_get(auth, k[1])->msg.uid_value;
		assert_true(w0 >= 5 && w1 >= 5 && w0 != w1);
		int lo = w0 < w1 ? 0 : 1, hi = 1 - lo;
		/* the replica lists both under 1, 2; the higher move arrives first */
		uint32_t rhave[2] = { 1, 2 }, rnext = 3;
		assert_int_equal(mm_user_merge(rep, mm_user_get(auth, k[hi]), NULL, NULL) >= 0, 1);
		unsigned needs = plan2(rep, k, rhave, &rnext, false, hold, &clock);
		assert_int_equal(needs, 0);
		if (hold) {
			assert_int_equal(rhave[hi], hi + 1); /* waits, under its old UID */
			assert_int_equal(rnext, 3);
		} else {
			assert_int_equal(rhave[hi], w0 > w1 ? w0 : w1);
		}
		/* then the lower one */
		assert_int_equal(mm_user_merge(rep, mm_user_get(auth, k[lo]), NULL, NULL) >= 0, 1);
		needs = plan2(rep, k, rhave, &rnext, false, hold, &clock);
		if (hold) {
			/* both shown under the authority's numbers, nothing asked */
			assert_int_equal(needs, 0);
			assert_int_equal(rhave[0], w0);
			assert_int_equal(rhave[1], w1);
		} else {
			/* the rule before the hold: the lower move cannot be shown here */
			assert_int_equal(needs, 1);
			assert_int_equal(rhave[lo], lo + 1);
		}
		mm_user_free(&auth);
		mm_user_free(&rep);
	}
	/* the authority never holds; a first listing above a waiting re-file releases it
	 * (the file's entry would pass it anyway); a message whose own need is above
	 * its UID waits for the move that need asks for */
	struct mm_uid_item v[] = { item(1, 1, 9, 1), item(2, 8, 0, 2), item(3, 4, 0, 3) };
	uint32_t next = 4;
	assert_int_equal(mm_uid_plan(v, 3, &next, 9, true, true), 0);
	struct mm_uid_item w[] = { item(1, 1, 9, 1), item(2, 12, 0, 2), item(3, 13, 0, 0) };
	next = 4;
	assert_int_equal(mm_uid_plan(w, 3, &next, 13, false, true), 0);
	assert_int_equal(find_item(w, 3, 2)->target, 12);
	struct mm_uid_item x[] = { item(1, 1, 9, 1), item(2, 12, 0, 2), item(3, 8, 0, 0), item(4, 10, 11, 4) };
	next = 5;
	assert_int_equal(mm_uid_plan(x, 4, &next, 12, false, true), 2);
	assert_true(find_item(x, 4, 2)->held && find_item(x, 4, 2)->target == 2);
	assert_true(find_item(x, 4, 4)->held && find_item(x, 4, 4)->target == 4);
	assert_int_equal(find_item(x, 4, 3)->target, 8);
	assert_int_equal(next, 9);
	/* the wait is bounded: MM_UID_HOLD_MS from the first plan that held */
	struct mm_uid_hold h = { 0 };
	assert_true(mm_uid_hold_may(&h, 1000));
	assert_int_equal(mm_uid_hold_note(&h, 1000, 2), 1000 + MM_UID_HOLD_MS);
	assert_int_equal(mm_uid_hold_note(&h, 2000, 1), 1000 + MM_UID_HOLD_MS);
	assert_true(mm_uid_hold_may(&h, 1000 + MM_UID_HOLD_MS - 1));
	assert_false(mm_uid_hold_may(&h, 1000 + MM_UID_HOLD_MS));
	assert_false(mm_uid_hold_may(&h, 999)); /* a clock stepped back ends it */
	assert_int_equal(mm_uid_hold_note(&h, 1000 + MM_UID_HOLD_MS, 0), 0);
	assert_true(mm_uid_hold_may(&h, 1000 + MM_UID_HOLD_MS));
}

/* The need is a max register: merges keep the larger, survives the codec, and
 * replicas exchanging records agree. */
static void test_need_register(void **state)
{
	(void)state;
	struct mm_user *a = mm_user_new("ex.org/alice"), *b = mm_user_new("ex.org/alice");
	uint8_t k[MM_KEY_LEN];
	deliver_uid(a, "INBOX", 100 << 16, 1, 3, k);
	assert_int_equal(mm_user_foreach(a, NULL, 0, copy_cb, b), 0);
	n_uid_eff = 0;
	assert_int_equal(mm_user_uid_need(a, k, 7, count_eff, NULL, NULL), 1);
	assert_int_equal(n_uid_eff, 1);
	assert_int_equal(mm_user_uid_need(a, k, 5, NULL, NULL, NULL), 0);
	assert_int_equal(mm_user_uid_need(b, k, 9, NULL, NULL, NULL), 1);
	assert_int_equal(mm_user_uid_need(a, k, 0, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(mm_user_uid_top(a, "INBOX"), 7);
	const struct mm_rec *r = mm_user_get(a, k);
	uint8_t buf[1024];
	ssize_t len = mm_rec_encode(r, buf, sizeof buf);
	assert_true(len > 0);
	struct mm_arena ar;
	mm_arena_init(&ar);
	struct mm_rec back;
	assert_int_equal(mm_rec_decode(buf, (size_t)len, &back, &ar), 0);
	assert_int_equal(back.msg.uid_need, 7);
	assert_int_equal(back.msg.uid_value, 3);
	assert_true(mm_rec_equal(r, &back));
	mm_arena_free(&ar);
	assert_int_equal(mm_user_foreach(a, NULL, 0, copy_cb, b), 0);
	assert_int_equal(mm_user_foreach(b, NULL, 0, copy_cb, a), 0);
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	mm_user_root(a, ra);
	mm_user_root(b, rb);
	assert_memory_equal(ra, rb, MM_HASH_LEN);
	assert_int_equal(mm_user_get(a, k)->msg.uid_need, 9);
	assert_int_equal(mm_user_get(a, k)->msg.uid_value, 3);
	assert_int_equal(mm_user_uid_top(b, "INBOX"), 9);
	assert_int_equal(mm_user_uid_top(b, "Other"), 0);
	mm_user_free(&a);
	mm_user_free(&b);
}

/* ---- the rule settles: replicas with a model of dovecot-uidlist -------------------
 * R replicas of one folder; each has a state and a listing (key -> UID, NEXTUID)
 * that only grows the way Dovecot's does.  Random concurrent deliveries (each
 * replica's "Dovecot" lists its own at its NEXTUID), random partial exchanges and
 * plan runs; replica 0 is the authority (in half the seeds replica 1 too, as during
 * a partition).  Then full exchanges and plan runs until nothing changes: every
 * listing must equal the state's UIDs, no UID twice, within a bounded number of
 * rounds. */

#define SR 4
#define SMAX 64

struct srep {
	struct mm_user *u;
	uint8_t key[SMAX][MM_KEY_LEN];
	uint32_t have[SMAX];
	size_t n;
	uint32_t next;
	bool changed;
	struct mm_uid_hold hold; /* re-files waiting for lower moves (mm_uid_hold_*) */
};

static uint64_t rng_state;
static uint32_t rnd(uint32_t n)
{
	rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
	return (uint32_t)((rng_state >> 33) % n);
}

static int srep_find(struct srep *r, const uint8_t *key)
{
	for (size_t i = 0; i < r->n; i++)
		if (!memcmp(r->key[i], key, MM_KEY_LEN))
			return (int)i;
	return -1;
}

static int s_coll(void *arg, const struct mm_rec *rec)
{
	struct srep *r = arg;
	if (rec->type == MM_REC_MESSAGE && srep_find(r, rec->key) < 0 && r->n < SMAX) {
		memcpy(r->key[r->n], rec->key, MM_KEY_LEN);
		r->have[r->n++] = 0;
	}
	return 0;
}

static void srep_plan(struct srep *r, bool authority, uint64_t *clock, uint64_t now_ms)
{
	mm_user_foreach(r->u, NULL, 0, s_coll, r); /* every message has its file here */
	struct mm_uid_item it[SMAX];
	for (size_t i = 0; i < r->n; i++) {
		const struct mm_rec *rec = mm_user_get(r->u, r->key[i]);
		it[i] = item(0, rec->msg.uid_value, rec->msg.uid_need, r->have[i]);
		memcpy(it[i].key, r->key[i], MM_KEY_LEN);
		it[i].arg = (void *)(uintptr_t)i;
	}
	uint32_t next = r->next;
	size_t held = mm_uid_plan(it, r->n, &next, mm_user_uid_top(r->u, "INBOX"), authority,
	                          mm_uid_hold_may(&r->hold, now_ms));
	if (mm_uid_hold_note(&r->hold, now_ms, held))
		r->changed = true; /* (it must be planned again: not quiet yet) */
	for (size_t i = 0; i < r->n; i++) {
		size_t j = (size_t)(uintptr_t)it[i].arg;
		assert_true(!it[i].held || (it[i].have && it[i].target == it[i].have && !it[i].set_need));
		if (it[i].set_uid) {
			assert_true(authority || !it[i].want);
			if (mm_user_uid_move(r->u, r->key[j], it[i].set_uid, (mm_hlc){ ++*clock, 1 }, NULL, NULL, NULL) > 0)
				r->changed = true;
		}
		if (it[i].set_need && mm_user_uid_need(r->u, r->key[j], it[i].set_need, NULL, NULL, NULL) > 0)
			r->changed = true;
		if (it[i].target != r->have[j]) {
			/* Dovecot's rule: a new entry only at or above NEXTUID */
			assert_true(it[i].target >= r->next);
			r->have[j] = it[i].target;
			r->next = it[i].target + 1;
			r->changed = true;
		}
	}
	assert_true(next >= r->next);
	r->next = next;
	/* no UID names two messages in one listing */
	for (size_t i = 0; i < r->n; i++)
		for (size_t j = i + 1; j < r->n; j++)
			assert_true(!r->have[i] || r->have[i] != r->have[j]);
}

static void s_exchange(struct srep *from, struct srep *to)
{
	assert_int_equal(mm_user_foreach(from->u, NULL, 0, copy_cb, to->u), 0);
}

static void test_plan_settles(void **state)
{
	(void)state;
	unsigned max_rounds = 0;
	for (unsigned seed = 1; seed <= 500; seed++) {
		rng_state = seed;
		struct srep r[SR];
		memset(r, 0, sizeof r);
		for (int i = 0; i < SR; i++) {
			r[i].u = mm_user_new("ex.org/alice");
			r[i].next = 1;
		}
		uint64_t clock = 1000;
		unsigned deliveries = 10 + rnd(30);
		bool split = rnd(2);
		for (unsigned step = 0; step < 160; step++) {
			unsigned i = rnd(SR), j = rnd(SR);
			switch (rnd(4)) {
			case 0:
				if (deliveries && r[i].n < SMAX - SR) { /* a local delivery, listed by Dovecot */
					uint8_t body[MM_ID_LEN] = { (uint8_t)step, (uint8_t)i, (uint8_t)seed };
					uint8_t k[MM_KEY_LEN];
					assert_int_equal(mm_user_deliver(r[i].u, "INBOX", body, 1, 1, 0, NULL, 0, r[i].next,
					                                 (mm_hlc){ ++clock, i + 1 }, k, NULL, NULL, NULL), 1);
					memcpy(r[i].key[r[i].n], k, MM_KEY_LEN);
					r[i].have[r[i].n++] = r[i].next++;
					deliveries--;
					break;
				}
				/* fall through */
			case 1:
			case 2:
				s_exchange(&r[i], &r[j]);
				break;
			case 3:
				srep_plan(&r[i], i == 0 || (split && i == 1), &clock, 100 * step);
				break;
			}
		}
		/* healed: one authority; exchange and plan until quiet */
		unsigned rounds = 0;
		for (bool changed = true; changed; rounds++) {
			if (rounds >= 27 && getenv("TEST_UID_DEBUG"))
				for (int i = 0; i < SR; i++) {
					fprintf(stderr, "r%d next %u:", i, r[i].next);
					for (size_t m = 0; m < r[i].n; m++) {
						const struct mm_rec *q = mm_user_get(r[i].u, r[i].key[m]);
						fprintf(stderr, " %02x:%u/%u/%u", r[i].key[m][0], q->msg.uid_value,
						        q->msg.uid_need, r[i].have[m]);
					}
					fprintf(stderr, "\n");
				}
			if (rounds >= 30)
				fail_msg("seed %u: UIDs still moving after %u rounds", seed, rounds);
			changed = false;
			for (int i = 0; i < SR; i++)
				for (int j = 0; j < SR; j++)
					if (i != j)
						s_exchange(&r[i], &r[j]);
			for (int i = 0; i < SR; i++) {
				r[i].changed = false;
				srep_plan(&r[i], i == 0, &clock, 16000 + 1000 * rounds); /* (a gossip interval each) */
				changed |= r[i].changed;
			}
		}
		if (rounds > max_rounds)
			max_rounds = rounds;
		/* every listing shows every message under the state's UID */
		for (int i = 0; i < SR; i++) {
			assert_int_equal(r[i].n, r[0].n);
			for (size_t m = 0; m < r[i].n; m++) {
				uint32_t want = mm_user_get(r[i].u, r[i].key[m])->msg.uid_value;
				assert_true(want != 0);
				assert_int_equal(r[i].have[m], want);
				int o = srep_find(&r[0], r[i].key[m]);
				assert_true(o >= 0);
				assert_int_equal(r[0].have[o], want);
			}
		}
		for (int i = 0; i < SR; i++)
			mm_user_free(&r[i].u);
	}
	print_message("settled within %u rounds of exchange\n", max_rounds);
}

/* Regression (sim sweep seeds 1, 18, 67 with 120 s clock skew): a message listed on
 * a node whose clock is ahead beyond mm_clock_observe's bound got a UID stamp the
 * authority's own ticks could not beat; mm_user_set_uid lost, the authority re-filed
 * it anyway and showed another UID than every other node.  mm_user_uid_move wins. */
static void test_uid_move_beats_clock_ahead(void **state)
{
	(void)state;
	struct mm_user *a = mm_user_new("ex.org/alice"), *b = mm_user_new("ex.org/alice");
	struct mm_user *c = mm_user_new("ex.org/alice");
	uint8_t k[MM_KEY_LEN], other[MM_KEY_LEN] = { 0xee };
	const uint64_t ahead = 200000ULL << 16, behind = 80000ULL << 16;
	deliver_uid(a, "INBOX", ahead, 2, 1, k); /* listed at UID 1 by the fast node */
	assert_int_equal(mm_user_foreach(a, NULL, 0, copy_cb, b), 0);
	assert_int_equal(mm_user_foreach(a, NULL, 0, copy_cb, c), 0);
	/* the authority (node 1) is 120 s behind: a plain set_uid loses the LWW */
	mm_user_set_uid(a, k, 5, (mm_hlc){ behind, 1 }, NULL, NULL, NULL);
	assert_int_equal(mm_user_get(a, k)->msg.uid_value, 1);
	n_uid_eff = 0;
	assert_int_equal(mm_user_uid_move(a, k, 5, (mm_hlc){ behind, 1 }, count_eff, NULL, NULL), 1);
	assert_int_equal(n_uid_eff, 1);
	const struct mm_rec *r = mm_user_get(a, k);
	assert_int_equal(r->msg.uid_value, 5);
	assert_true(r->msg.uid.stamp.t == ahead + 1 && r->msg.uid.stamp.node == 1);
	assert_int_equal(mm_user_uid_move(a, k, 5, (mm_hlc){ behind + 1, 1 }, NULL, NULL, NULL), 0);
	/* a later local tick is used as is */
	assert_int_equal(mm_user_uid_move(a, k, 6, (mm_hlc){ ahead + 7, 1 }, NULL, NULL, NULL), 1);
	assert_true(mm_user_get(a, k)->msg.uid.stamp.t == ahead + 7);
	/* a second authority (a partition) moving from the same register: ties on t are
	 * broken by node, the same way on every replica */
	assert_int_equal(mm_user_uid_move(c, k, 9, (mm_hlc){ behind, 3 }, NULL, NULL, NULL), 1);
	assert_int_equal(mm_user_uid_move(b, k, 8, (mm_hlc){ behind, 1 }, NULL, NULL, NULL), 1);
	assert_int_equal(mm_user_foreach(b, NULL, 0, copy_cb, c), 0);
	assert_int_equal(mm_user_foreach(c, NULL, 0, copy_cb, b), 0);
	assert_int_equal(mm_user_get(b, k)->msg.uid_value, 9);
	assert_int_equal(mm_user_get(c, k)->msg.uid_value, 9);
	/* the replica that only had the original record takes the move */
	assert_int_equal(mm_user_foreach(a, NULL, 0, copy_cb, b), 0);
	assert_int_equal(mm_user_get(b, k)->msg.uid_value, 6);
	assert_int_equal(mm_user_uid_move(a, other, 3, (mm_hlc){ behind, 1 }, NULL, NULL, NULL), -ENOENT);
	assert_int_equal(mm_user_uid_move(a, k, 3, (mm_hlc){ 0, 0 }, NULL, NULL, NULL), -EINVAL);
	mm_user_free(&a);
	mm_user_free(&b);
	mm_user_free(&c);
}

static int n_folder_eff;
static void folder_eff(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	(void)arg; (void)user; (void)rec;
	if (eff == MM_EFF_FOLDER)
		n_folder_eff++;
}

static void test_folder_renew(void **state)
{
	(void)state;
	struct mm_user *u = mm_user_new("ex.org/alice");
	assert_int_equal(mm_user_folder_create(u, "Sent", (mm_hlc){1000ULL << 16, 1}, NULL, NULL, NULL), 1);
	uint8_t fk[MM_KEY_LEN];
	mm_key_folder("Sent", fk);
	uint32_t v1 = mm_user_get(u, fk)->folder.uidvalidity;
	n_folder_eff = 0;
	assert_int_equal(mm_user_folder_renew(u, "Sent", (mm_hlc){5000000ULL << 16, 1}, 0, folder_eff, NULL, NULL), 1);
	assert_int_equal(n_folder_eff, 1);
	uint32_t v2 = mm_user_get(u, fk)->folder.uidvalidity;
	assert_int_not_equal(v1, v2);
	assert_true(mm_user_get(u, fk)->folder.exists.value);
	/* an older renew loses */
	assert_int_equal(mm_user_folder_renew(u, "Sent", (mm_hlc){2000ULL << 16, 1}, 0, NULL, NULL, NULL), 0);
	assert_int_equal(mm_user_folder_renew(u, "bad/name", (mm_hlc){1, 1}, 0, NULL, NULL, NULL), -EINVAL);

	/* an explicit UIDVALIDITY (Dovecot's, adopted) travels with its exists register:
	 * through the codec, and whichever order replicas merge in */
	assert_int_equal(mm_user_folder_renew(u, "Sent", (mm_hlc){6000000ULL << 16, 2}, 1234567, NULL, NULL, NULL), 1);
	assert_int_equal(mm_user_get(u, fk)->folder.uidvalidity, 1234567);
	struct mm_rec adopted = *mm_user_get(u, fk);
	uint8_t buf[512];
	ssize_t len = mm_rec_encode(&adopted, buf, sizeof buf);
	assert_true(len > 0);
	struct mm_arena ar;
	mm_arena_init(&ar);
	struct mm_rec back;
	assert_int_equal(mm_rec_decode(buf, (size_t)len, &back, &ar), 0);
	assert_int_equal(back.folder.uidvalidity, 1234567);
	assert_true(mm_rec_equal(&adopted, &back));
	struct mm_user *a = mm_user_new("ex.org/alice"), *b = mm_user_new("ex.org/alice");
	struct mm_rec older;
	memset(&older, 0, sizeof older);
	older.type = MM_REC_FOLDER;
	older.folder.name = "Sent";
	memcpy(older.key, fk, MM_KEY_LEN);
	older.folder.exists = (struct mm_reg){ 1, { 5500000ULL << 16, 3 } };
	older.folder.uidvalidity = 7654321;
	assert_int_equal(mm_user_merge(a, &back, NULL, NULL), 1);
	assert_int_equal(mm_user_merge(a, &older, NULL, NULL), 0);
	assert_int_equal(mm_user_merge(b, &older, NULL, NULL), 1);
	assert_int_equal(mm_user_get(b, fk)->folder.uidvalidity, 7654321);
	assert_int_equal(mm_user_merge(b, &back, NULL, NULL), 1);
	assert_int_equal(mm_user_get(a, fk)->folder.uidvalidity, 1234567);
	assert_int_equal(mm_user_get(b, fk)->folder.uidvalidity, 1234567);
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	mm_user_root(a, ra);
	mm_user_root(b, rb);
	assert_memory_equal(ra, rb, MM_HASH_LEN);
	/* a record whose explicit value is the one its stamp gives encodes as derived */
	struct mm_rec plain = older;
	plain.folder.uidvalidity = mm_folder_uidvalidity(plain.folder.exists.stamp);
	struct mm_rec zero = older;
	zero.folder.uidvalidity = 0;
	assert_true(mm_rec_equal(&plain, &zero));
	mm_arena_free(&ar);
	mm_user_free(&a);
	mm_user_free(&b);
	mm_user_free(&u);
}

/* ---- dovecot-uidlist ---------------------------------------------------------------- */

static void write_file(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(s, f);
	fclose(f);
}

static char *read_file(const char *path)
{
	static char buf[8192];
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	buf[n] = 0;
	fclose(f);
	return buf;
}

static void test_uidlist_edit(void **state)
{
	(void)state;
	char d[300], p[400];
	snprintf(d, sizeof d, "%s/ul", top);
	mkdir(d, 0700);
	struct mm_md_uidlist ul;
	assert_int_equal(mm_md_uidlist_load(d, &ul), 0);
	assert_false(ul.exists);
	assert_int_equal(ul.next_uid, 1);
	assert_int_equal(mm_md_uidlist_save(d, &ul), -EINVAL); /* no UIDVALIDITY */
	mm_md_uidlist_clear(&ul);

	snprintf(p, sizeof p, "%s/dovecot-uidlist", d);
	write_file(p, "3 V1700000000 N5 G0123456789abcdef0123456789abcdef\n"
	              "1 W120 :a.host,S=100:2,S\n"
	              "3 :b.host,S=5\n");
	assert_int_equal(mm_md_uidlist_load(d, &ul), 0);
	assert_true(ul.exists);
	assert_int_equal(ul.uidvalidity, 1700000000);
	assert_int_equal(ul.next_uid, 5);
	assert_int_equal(ul.n, 2);
	assert_int_equal(mm_md_uidlist_find(&ul, "a.host,S=100", 12), 1);
	assert_int_equal(mm_md_uidlist_find(&ul, "b.host,S=5", 10), 3);
	assert_int_equal(mm_md_uidlist_find(&ul, "c", 1), 0);
	assert_int_equal(mm_md_uidlist_add(&ul, 3, "c"), -EEXIST);
	assert_int_equal(mm_md_uidlist_add(&ul, 9, "b.host,S=5:2,"), -EINVAL); /* base listed */
	assert_int_equal(mm_md_uidlist_add(&ul, 0, "c"), -EINVAL);
	assert_int_equal(mm_md_uidlist_add(&ul, 2, "c"), 0); /* in order, N unchanged */
	assert_int_equal(ul.next_uid, 5);
	assert_int_equal(mm_md_uidlist_add(&ul, 7, "d"), 0);
	assert_int_equal(ul.next_uid, 8);
	mm_md_uidlist_remove(&ul, 7);
	assert_int_equal(ul.next_uid, 8); /* never lowered */
	assert_int_equal(mm_md_uidlist_index(&ul, 2), 1);
	assert_int_equal(mm_md_uidlist_save(d, &ul), 0);
	mm_md_uidlist_clear(&ul);
	assert_string_equal(read_file(p), "3 V1700000000 N8 G0123456789abcdef0123456789abcdef\n"
	                                  "1 W120 :a.host,S=100:2,S\n"
	                                  "2 :c\n"
	                                  "3 :b.host,S=5\n");
	/* the reader used when scanning agrees */
	/* damaged files */
	write_file(p, "garbage\n1 :a\n");
	assert_int_equal(mm_md_uidlist_load(d, &ul), -EBADMSG);
	mm_md_uidlist_clear(&ul);
	write_file(p, "3 V1 N9\n4 :a\n2 :b\n");
	assert_int_equal(mm_md_uidlist_load(d, &ul), -EBADMSG);
	mm_md_uidlist_clear(&ul);
}

/* ---- two stores ------------------------------------------------------------------------- */

struct node {
	char root[300], sdir[300], loc[320];
	struct mm_state *st;
	struct mm_clock clock;
	struct mm_store *s;
	uint64_t now;
	bool dovecot; /* a Dovecot serves these Maildirs: deliver() leaves its index */
};

static void store_log(void *arg, int level, const char *fmt, ...)
{
	(void)arg;
	if (level > (getenv("TEST_UID_LOG_ALL") ? 99 : MM_STORE_LOG_WARNING) || !getenv("TEST_UID_LOG"))
		return;
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void node_open(struct node *n, const char *name, uint64_t id)
{
	snprintf(n->root, sizeof n->root, "%s/%s/mail", top, name);
	snprintf(n->sdir, sizeof n->sdir, "%s/%s/state", top, name);
	snprintf(n->loc, sizeof n->loc, "maildir:%s/%%d/%%n", n->root);
	char p[300];
	snprintf(p, sizeof p, "%s/%s", top, name);
	mkdir(p, 0700);
	mkdir(n->root, 0700);
	n->st = mm_state_new();
	assert_non_null(n->st);
	mm_clock_init(&n->clock, id, 0);
	struct mm_store_config cfg = {.mail_location = n->loc, .state_dir = n->sdir, .imap_uids = true};
	char err[512];
	int r = mm_store_open(&n->s, &cfg, n->st, &n->clock, err, sizeof err);
	if (r)
		fprintf(stderr, "open: %s\n", err);
	assert_int_equal(r, 0);
	/* MM_TEST_FILE_CACHE=0 (tests/run.sh runs this program a second time so): every
	 * commit drops the file index from memory, every lookup reads the database */
	if (getenv("MM_TEST_FILE_CACHE"))
		mm_store_set_file_cache(n->s, (size_t)strtoul(getenv("MM_TEST_FILE_CACHE"), NULL, 10));
	mm_store_set_log(n->s, store_log, NULL);
	mm_store_set_uid_authority(n->s, id == 1); /* the lowest id, as the daemon decides */
	mm_store_set_new_folder_wait(n->s, 0);     /* no Dovecot here: folders are made at once */
	if (!n->now)
		n->now = 1700000000000ULL;
}

static void node_close(struct node *n)
{
	mm_store_free(&n->s);
	mm_state_free(&n->st);
}

static void scan(struct node *n, struct mm_delta *out)
{
	n->now += 1000;
	assert_true(mm_store_scan(n->s, n->now, out) >= 0);
	assert_int_equal(mm_store_commit(n->s), 0);
}

static void udir(const struct node *n, const char *folder, char *buf, size_t len)
{
	if (!strcmp(folder, "INBOX"))
		snprintf(buf, len, "%s/ex.org/alice", n->root);
	else
		snprintf(buf, len, "%s/ex.org/alice/.%s", n->root, folder);
}

/* What Dovecot leaves in a folder it has opened: its index (node/store.c then keeps
 * every UID this node listed, as clients may have seen them). */
static void dovecot_index(const struct node *n, const char *folder)
{
	char d[600], p[700];
	udir(n, folder, d, sizeof d);
	snprintf(p, sizeof p, "%s/dovecot.index.log", d);
	int fd = open(p, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	close(fd);
}

static void deliver(struct node *n, const char *folder, const char *base, const char *body)
{
	char d[600], md[600];
	udir(n, folder, d, sizeof d);
	snprintf(md, sizeof md, "%s/ex.org/alice", n->root);
	struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
	assert_int_equal(mm_md_folder_create(md, folder, &o), 0);
	assert_int_equal(mm_md_deliver(d, base, body, strlen(body), 1600000000, "new", base, &o), 0);
	if (n->dovecot)
		dovecot_index(n, folder);
}

struct xfer {
	struct node *from, *to;
	uint32_t min_uid; /* bodies of messages with a lower UID are not sent (yet) */
};

static int fetch_cb(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                    const uint8_t body[MM_ID_LEN], uint64_t size)
{
	(void)body;
	(void)size;
	struct xfer *x = arg;
	int fd;
	uint64_t sz;
	const struct mm_rec *rec = mm_user_get(mm_state_user(x->from->st, user, false), key);
	if (x->min_uid && (!rec || rec->type != MM_REC_MESSAGE || rec->msg.uid_value < x->min_uid))
		return 0;
	if (mm_store_body_open(x->from->s, user, key, &fd, &sz) < 0)
		return 0;
	struct mm_body_writer *w;
	if (mm_store_body_begin(x->to->s, user, key, &w) < 0) {
		close(fd);
		return 0;
	}
	char buf[4096];
	ssize_t r;
	while ((r = read(fd, buf, sizeof buf)) > 0)
		assert_int_equal(mm_store_body_write(w, buf, (size_t)r), 0);
	close(fd);
	/* 0: held back until lower-numbered bodies of its folder arrive (imap_uids) */
	assert_true(mm_store_body_commit(&w) >= 0);
	return 0;
}

static int full_cb(void *arg, const struct mm_rec *r)
{
	return mm_delta_add(arg, "ex.org/alice", r) < 0;
}

/* Full state from -> to (as anti-entropy would), then the bodies `to` misses. */
static void sync_to(struct node *from, struct node *to)
{
	struct mm_delta *d = mm_delta_new();
	struct mm_user *u = mm_state_user(from->st, "ex.org/alice", false);
	if (u)
		assert_int_equal(mm_user_foreach(u, NULL, 0, full_cb, d), 0);
	assert_true(mm_store_merge_delta(to->s, d) >= 0);
	assert_int_equal(mm_store_commit(to->s), 0);
	struct xfer x = {from, to, 0};
	assert_int_equal(mm_store_missing(to->s, fetch_cb, &x), 0);
	assert_int_equal(mm_store_commit(to->s), 0);
	mm_delta_free(&d);
}

/* Until both have the same state (a few anti-entropy rounds). */
static struct mm_user *dbg_other;
static int dbg_cb(void *arg, const struct mm_rec *r)
{
	(void)arg;
	const struct mm_rec *o = mm_user_get(dbg_other, r->key);
	if (!o || !mm_rec_equal(o, r))
		fprintf(stderr, "diff type %d/%d uid %u/%u st %llx/%llx\n", r->type, o ? (int)o->type : -1,
		        r->type == MM_REC_MESSAGE ? r->msg.uid_value : 0,
		        o && o->type == MM_REC_MESSAGE ? o->msg.uid_value : 0,
		        r->type == MM_REC_MESSAGE ? (unsigned long long)r->msg.uid.stamp.t : 0,
		        o && o->type == MM_REC_MESSAGE ? (unsigned long long)o->msg.uid.stamp.t : 0);
	return 0;
}
#define converge(a, b) converge_at(a, b, __LINE__)
static void converge_at(struct node *a, struct node *b, int line)
{
	for (int i = 0; i < 6; i++) {
		sync_to(a, b);
		sync_to(b, a);
		uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
		mm_state_root(a->st, ra);
		mm_state_root(b->st, rb);
		if (!memcmp(ra, rb, MM_HASH_LEN) && mm_store_missing_count(a->s) == 0 &&
		    mm_store_missing_count(b->s) == 0)
			return;
	}
	dbg_other = mm_state_user(b->st, "ex.org/alice", false);
	mm_user_foreach(mm_state_user(a->st, "ex.org/alice", false), NULL, 0, dbg_cb, NULL);
	fail_msg("stores did not converge (line %d, missing %zu %zu)", line, mm_store_missing_count(a->s),
	         mm_store_missing_count(b->s));
}

/* "V<uidvalidity>" then "uid=content" per listed file, in UID order; checks that
 * every listed file exists, every file is listed, no UID is >= N. */
#define uid_map(n, f, o, l) (uid_map_line = __LINE__, uid_map_(n, f, o, l))
static int uid_map_line;
static void uid_map_(const struct node *n, const char *folder, char *out, size_t len)
{
	char d[600];
	udir(n, folder, d, sizeof d);
	struct mm_md_uidlist ul;
	if (mm_md_uidlist_load(d, &ul) < 0)
		fail_msg("%s/dovecot-uidlist cannot be loaded (line %d)", d, uid_map_line);
	size_t o = (size_t)snprintf(out, len, "V%u", ul.uidvalidity);
	size_t files = 0;
	const char *subs[] = {"new", "cur"};
	for (int i = 0; i < 2; i++) {
		char p[700];
		snprintf(p, sizeof p, "%s/%s", d, subs[i]);
		DIR *dd = opendir(p);
		assert_non_null(dd);
		struct dirent *e;
		while ((e = readdir(dd))) {
			if (e->d_name[0] == '.')
				continue;
			files++;
			size_t bl = strcspn(e->d_name, ":");
			uint32_t uid = mm_md_uidlist_find(&ul, e->d_name, bl);
			if (!uid)
				fail_msg("%s/%s is not listed in dovecot-uidlist (line %d)", p, e->d_name, uid_map_line);
			assert_true(uid < ul.next_uid);
		}
		closedir(dd);
	}
	assert_int_equal(files, ul.n);
	for (size_t i = 0; i < ul.n; i++) {
		char p[1200];
		char *c = NULL;
		for (int j = 0; j < 2 && !c; j++) {
			snprintf(p, sizeof p, "%s/%s/%s", d, subs[j], ul.v[i].name);
			c = read_file(p);
			if (!c) { /* listed under an older name: same base, other flags */
				DIR *dd;
				snprintf(p, sizeof p, "%s/%s", d, subs[j]);
				if ((dd = opendir(p))) {
					struct dirent *e;
					while ((e = readdir(dd)))
						if (!strncmp(e->d_name, ul.v[i].name, ul.v[i].base_len) &&
						    strcspn(e->d_name, ":") == ul.v[i].base_len) {
							snprintf(p, sizeof p, "%s/%s/%s", d, subs[j], e->d_name);
							c = read_file(p);
							break;
						}
					closedir(dd);
				}
			}
		}
		assert_non_null(c);
		o += (size_t)snprintf(out + o, len - o, " %u=%s", ul.v[i].uid, c);
	}
	mm_md_uidlist_clear(&ul);
}

/* Both converge, and list the folder alike: ma and mb get the two listings. */
#define agree(a, b, f, ma, mb) agree_at(a, b, f, ma, mb, sizeof(ma), __LINE__)
static void agree_at(struct node *a, struct node *b, const char *folder, char *ma, char *mb, size_t len,
                     int line)
{
	converge_at(a, b, line);
	uid_map_line = line;
	uid_map_(a, folder, ma, len);
	uid_map_line = line;
	uid_map_(b, folder, mb, len);
	assert_string_equal(ma, mb);
}

static void test_stores_agree(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	a.dovecot = b.dovecot = true; /* UIDs listed here may have been seen by clients */
	char ma[4096], mb[4096];

	/* deliveries on one node: the store lists them (no Dovecot here) */
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "one");
	deliver(&a, "INBOX", "1700000000.M2P1.mx", "two");
	scan(&a, NULL);
	agree(&a, &b, "INBOX", ma, mb);
	if (!strstr(ma, " 1=one 2=two") && !strstr(ma, " 1=two 2=one"))
		fail_msg("map %s", ma);
	uint8_t fk[MM_KEY_LEN];
	mm_key_folder("INBOX", fk);
	char v[32];
	snprintf(v, sizeof v, "V%u ", mm_user_get(mm_state_user(a.st, "ex.org/alice", false), fk)->folder.uidvalidity);
	assert_memory_equal(ma, v, strlen(v));

	/* a UID Dovecot gave (listed before the scan) is the one replicated */
	char d[600], p[700];
	udir(&a, "INBOX", d, sizeof d);
	deliver(&a, "INBOX", "1700000001.M1P1.mx", "three");
	assert_int_equal(mm_md_uidlist_lock(d, 1000), 0);
	struct mm_md_uidlist ul;
	assert_int_equal(mm_md_uidlist_load(d, &ul), 0);
	assert_int_equal(mm_md_uidlist_add(&ul, 5, "1700000001.M1P1.mx"), 0);
	assert_int_equal(mm_md_uidlist_save(d, &ul), 0);
	mm_md_uidlist_clear(&ul);
	mm_md_uidlist_unlock(d);
	scan(&a, NULL);
	agree(&a, &b, "INBOX", ma, mb);
	assert_non_null(strstr(ma, " 5=three"));

	/* concurrent deliveries took the same UID (6) on both nodes: b cannot show a's
	 * there, so both move (the authority a moves b's because it shows its own at 6,
	 * and its own because b asked) and 6 is retired on both */
	deliver(&a, "INBOX", "1700000002.M1P1.mx", "four-a");
	deliver(&b, "INBOX", "1700000002.M1P2.mx", "four-b");
	scan(&a, NULL);
	scan(&b, NULL);
	uid_map(&a, "INBOX", ma, sizeof ma);
	uid_map(&b, "INBOX", mb, sizeof mb);
	assert_non_null(strstr(ma, " 6=four-a"));
	assert_non_null(strstr(mb, " 6=four-b"));
	agree(&a, &b, "INBOX", ma, mb);
	assert_null(strstr(ma, " 6="));  /* retired for good */
	/* both moved above every UID either node had used */
	const char *fa = strstr(ma, "=four-a"), *fb = strstr(ma, "=four-b");
	if (!fa || !fb)
		fail_msg("map %s", ma);
	while (fa[-1] != ' ')
		fa--;
	while (fb[-1] != ' ')
		fb--;
	assert_true(atoi(fa) > 6 && atoi(fb) > 6 && atoi(fa) != atoi(fb));

	/* a folder created on one node: same UIDVALIDITY and UIDs on the other */
	deliver(&b, "Work", "1700000003.M1P2.mx", "work");
	scan(&b, NULL);
	agree(&a, &b, "Work", ma, mb);

	/* restart: nothing changes */
	uid_map(&b, "INBOX", mb, sizeof mb);
	node_close(&b);
	node_open(&b, "b", 2);
	scan(&b, NULL);
	char mb2[4096];
	uid_map(&b, "INBOX", mb2, sizeof mb2);
	assert_string_equal(mb, mb2);

	/* a damaged uidlist on b: the folder gets a new UIDVALIDITY on both */
	uid_map(&a, "Work", ma, sizeof ma);
	char olda[64];
	snprintf(olda, sizeof olda, "%.*s", (int)strcspn(ma, " "), ma);
	udir(&b, "Work", d, sizeof d);
	snprintf(p, sizeof p, "%s/dovecot-uidlist", d);
	write_file(p, "this is not a uidlist\n");
	b.now += 5000000; /* much later, so its new stamp's UIDVALIDITY differs */
	scan(&b, NULL);
	agree(&a, &b, "Work", ma, mb);
	assert_memory_not_equal(ma, olda, strlen(olda) + 1);

	node_close(&a);
	node_close(&b);
}

struct late_ctx {
	struct mm_delta *d;
	uint32_t min_uid; /* messages below it are left out */
};

static int late_cb(void *arg, const struct mm_rec *r)
{
	struct late_ctx *c = arg;
	if (r->type == MM_REC_MESSAGE && r->msg.uid_value < c->min_uid)
		return 0;
	return mm_delta_add(c->d, "ex.org/alice", r) < 0;
}

static const char *const six_bases[] = {"1700000000.M1P1.mx", "1700000000.M2P1.mx", "1700000000.M3P1.mx",
                                        "1700000000.M4P1.mx", "1700000000.M5P1.mx", "1700000000.M6P1.mx"};

/* Messages m1..m6 delivered on a one at a time: UIDs 1..6 in this order. */
static void deliver_six(struct node *a)
{
	for (size_t i = 0; i < 6; i++) {
		char body[16];
		snprintf(body, sizeof body, "m%zu", i + 1);
		deliver(a, "INBOX", six_bases[i], body);
		scan(a, NULL);
	}
}

/* Ships a's records (those of messages with a UID below min_uid left out), then the
 * bodies b misses, as one anti-entropy round would. */
static void ship_late(struct node *a, struct node *b, uint32_t min_uid)
{
	struct mm_delta *d = mm_delta_new();
	struct late_ctx lc = {d, min_uid};
	assert_int_equal(mm_user_foreach(mm_state_user(a->st, "ex.org/alice", false), NULL, 0, late_cb, &lc), 0);
	assert_true(mm_store_merge_delta(b->s, d) >= 0);
	mm_delta_free(&d);
	assert_int_equal(mm_store_commit(b->s), 0);
	struct xfer x = {a, b, 0};
	assert_int_equal(mm_store_missing(b->s, fetch_cb, &x), 0);
	assert_int_equal(mm_store_commit(b->s), 0);
}

/* A node joining receives bodies in any order.  Where no Dovecot has opened the
 * folder yet, the ones that land after higher-numbered ones are listed again under
 * their own UIDs: nothing moves on any node.  Where one has (clients may have seen
 * the provisional UIDs), they are moved, as before. */
static void join_out_of_order(bool joiner_indexed, bool *moved_r)
{
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	a.dovecot = true;
	char ma[4096], mb[4096], before[4096];
	deliver_six(&a);
	uid_map(&a, "INBOX", before, sizeof before);
	assert_non_null(strstr(before, " 1=m1 2=m2 3=m3 4=m4 5=m5 6=m6"));
	if (joiner_indexed) {
		char md[600];
		snprintf(md, sizeof md, "%s/ex.org/alice", b.root);
		struct mm_md_owner o = {(uid_t)-1, (gid_t)-1, 0700, 0600};
		assert_int_equal(mm_md_folder_create(md, "INBOX", &o), 0);
		dovecot_index(&b, "INBOX");
	}
	/* the records of UIDs 4..6 and their bodies first, those of 1..3 later (anti-
	 * entropy finds records in hash order, not UID order: bodies held back until
	 * the lower ones of their folder arrive cannot wait for records not seen yet) */
	for (int round = 0; round < 2; round++) {
		ship_late(&a, &b, round == 0 ? 4 : 0);
		assert_int_equal(mm_store_missing_count(b.s), 0);
		if (round == 0) {
			uid_map(&b, "INBOX", mb, sizeof mb);
			assert_non_null(strstr(mb, " 4=m4 5=m5 6=m6"));
		}
	}
	agree(&a, &b, "INBOX", ma, mb);
	*moved_r = strcmp(ma, before) != 0;
	node_close(&a);
	node_close(&b);
}

static int need_sum_cb(void *arg, const struct mm_rec *r)
{
	if (r->type == MM_REC_MESSAGE)
		*(uint64_t *)arg += r->msg.uid_need;
	return 0;
}

/* The joiner also holds the entry of a message expunged after it was listed (UID 6;
 * with no Dovecot here, nothing drops it): relisting would leave 1-5 provisional
 * below it, so it is not done, and no pass raises needs again and again; the
 * messages listed under their own UIDs (4, 5) are never moved. */
static void test_join_stale_entry(void **state)
{
	(void)state;
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	a.dovecot = true;
	deliver_six(&a);
	for (int round = 0; round < 3; round++) {
		if (round == 1) { /* a client of a expunges UID 6 */
			char d[600], p[1400];
			udir(&a, "INBOX", d, sizeof d);
			snprintf(p, sizeof p, "%s/new/%s", d, six_bases[5]);
			assert_int_equal(unlink(p), 0);
			scan(&a, NULL);
		}
		ship_late(&a, &b, round < 2 ? 4 : 0);
	}
	uint64_t n0 = 0, n1 = 0;
	assert_int_equal(mm_user_foreach(mm_state_user(b.st, "ex.org/alice", false), NULL, 0, need_sum_cb, &n0), 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(mm_store_commit(b.s), 0);
	assert_int_equal(mm_user_foreach(mm_state_user(b.st, "ex.org/alice", false), NULL, 0, need_sum_cb, &n1), 0);
	assert_int_equal(n0, n1);
	converge(&a, &b);
	/* (uid_map() would object to the entry of 6, which only a Dovecot drops) */
	char d[600];
	struct mm_md_uidlist ua, ub;
	udir(&a, "INBOX", d, sizeof d);
	assert_int_equal(mm_md_uidlist_load(d, &ua), 0);
	udir(&b, "INBOX", d, sizeof d);
	assert_int_equal(mm_md_uidlist_load(d, &ub), 0);
	assert_int_equal(mm_md_uidlist_find(&ua, six_bases[3], strlen(six_bases[3])), 4);
	assert_int_equal(mm_md_uidlist_find(&ua, six_bases[4], strlen(six_bases[4])), 5);
	assert_int_equal(ua.n, ub.n);
	for (size_t i = 0; i < ua.n; i++)
		assert_int_equal(ua.v[i].uid, ub.v[i].uid);
	mm_md_uidlist_clear(&ua);
	mm_md_uidlist_clear(&ub);
	node_close(&a);
	node_close(&b);
}

static void test_join_relists(void **state)
{
	(void)state;
	bool moved = true;
	join_out_of_order(false, &moved);
	assert_false(moved);
}

static void test_join_indexed_moves(void **state)
{
	(void)state;
	bool moved = false;
	join_out_of_order(true, &moved);
	assert_true(moved);
}

/* The UIDs of the user's messages, in a bit set (and how many messages). */
struct uidset {
	size_t n;
	uint64_t bits; /* UIDs 0..63 */
};

static int uidset_cb(void *arg, const struct mm_rec *r)
{
	struct uidset *u = arg;
	if (r->type == MM_REC_MESSAGE) {
		u->n++;
		if (r->msg.uid_value < 64)
			u->bits |= 1ull << r->msg.uid_value;
	}
	return 0;
}

static struct uidset uids_of(struct node *n)
{
	struct uidset u = {0, 0};
	struct mm_user *mu = mm_state_user(n->st, "ex.org/alice", false);
	if (mu)
		assert_int_equal(mm_user_foreach(mu, NULL, 0, uidset_cb, &u), 0);
	return u;
}

/* Dovecot holds dovecot-uidlist.lock from before it moves a delivered file into new/
 * until it has listed it: a scan in between leaves the file (no wait on the lock),
 * says so, and takes it in under Dovecot's UID once the lock is gone.  A lock that
 * stays held past the deferral (1 s) is waited for, then given up on, as before: the
 * file is indexed without a UID for the uid pass to list, not left out. */
static void test_lock_left_to_dovecot(void **state)
{
	(void)state;
	struct node a = {0};
	node_open(&a, "a", 1);
	deliver(&a, "INBOX", "1700000000.M1P1.mx", "one\n");
	struct mm_delta *d = mm_delta_new();
	scan(&a, d);
	assert_int_equal(uids_of(&a).n, 1);
	assert_false(mm_store_take_lock_waits(a.s));

	char dir[600], lock[700];
	udir(&a, "INBOX", dir, sizeof dir);
	foreign_uidlist_lock(dir, lock, sizeof lock);
	deliver(&a, "INBOX", "1700000000.M2P1.mx", "two\n");
	scan(&a, d);
	assert_int_equal(uids_of(&a).n, 1); /* left to Dovecot */
	assert_true(mm_store_take_lock_waits(a.s));
	assert_false(mm_store_take_lock_waits(a.s)); /* once */
	assert_true(mm_store_lock_waiting(a.s, "ex.org/alice", "INBOX"));
	assert_false(mm_store_lock_waiting(a.s, "ex.org/alice", "Sent"));

	/* Dovecot lists it under a UID of its own choosing and lets go */
	struct mm_md_uidlist ul;
	assert_int_equal(mm_md_uidlist_load(dir, &ul), 0);
	ul.next_uid = 7;
	assert_int_equal(mm_md_uidlist_add(&ul, 7, "1700000000.M2P1.mx"), 0);
	assert_int_equal(mm_md_uidlist_save(dir, &ul), 0);
	mm_md_uidlist_clear(&ul);
	unlink(lock);
	scan(&a, d);
	struct uidset u = uids_of(&a);
	assert_int_equal(u.n, 2);
	assert_true(u.bits & (1ull << 7));
	assert_false(mm_store_lock_waiting(a.s, "ex.org/alice", "INBOX"));

	/* a lock nobody lets go of: deferred for 1 s, then waited for (2 s) and given up */
	foreign_uidlist_lock(dir, lock, sizeof lock);
	deliver(&a, "INBOX", "1700000000.M3P1.mx", "three\n");
	scan(&a, d);
	assert_int_equal(uids_of(&a).n, 2);
	usleep(1100 * 1000);
	scan(&a, d);
	u = uids_of(&a);
	assert_int_equal(u.n, 3);
	assert_true(u.bits & 1); /* no UID yet: the uid pass lists it when it can */
	unlink(lock);
	scan(&a, d);
	u = uids_of(&a);
	assert_false(u.bits & 1);
	assert_int_equal(__builtin_popcountll(u.bits), 3);
	mm_delta_free(&d);
	node_close(&a);
}

/* ---- re-files wait for lower moves, in the store ------------------------------------- */

/* The record of a's message m<i> (body "m<i>"), for shipping one record at a time. */
struct pick_ctx {
	const char *body; /* unused: records carry no body; matched by UID below */
	uint32_t uid;
	struct mm_rec rec;
	bool found;
};

static int pick_cb(void *arg, const struct mm_rec *r)
{
	struct pick_ctx *c = arg;
	if (r->type == MM_REC_MESSAGE && r->msg.uid_value == c->uid) {
		c->rec = *r;
		c->found = true;
	}
	return 0;
}

/* Copy of the record of n's message listed under uid (the test's own, by value). */
static struct mm_rec rec_of(struct node *n, uint32_t uid)
{
	struct pick_ctx c = {NULL, uid, {0}, false};
	assert_int_equal(mm_user_foreach(mm_state_user(n->st, "ex.org/alice", false), NULL, 0, pick_cb, &c), 0);
	assert_true(c.found);
	return c.rec;
}

/* Merges these records into `to`'s store, as one anti-entropy round that brought
 * only them, and commits (the commit runs the UID pass). */
static void ship_recs(struct node *to, const struct mm_rec *recs, size_t n)
{
	struct mm_delta *d = mm_delta_new();
	for (size_t i = 0; i < n; i++)
		assert_true(mm_delta_add(d, "ex.org/alice", &recs[i]) >= 0);
	assert_true(mm_store_merge_delta(to->s, d) >= 0);
	mm_delta_free(&d);
	assert_int_equal(mm_store_commit(to->s), 0);
}

/* Need register of b's copy of the message whose key is k. */
static uint32_t need_of(struct node *n, const uint8_t k[MM_KEY_LEN])
{
	const struct mm_rec *r = mm_user_get(mm_state_user(n->st, "ex.org/alice", false), k);
	assert_non_null(r);
	return r->msg.uid_need;
}

/* The authority moves two messages in one pass (a third replica asked for both: their
 * needs); a replica gets the move of the higher one first.  It keeps that message
 * where it is listed instead of re-filing it (which would take its NEXTUID past the
 * lower move and make it ask for that one to be moved again), until the lower move
 * comes: then both are re-filed in order, and no new need is raised.  When the lower
 * move does not come, the re-file goes ahead after MM_UID_HOLD_MS (the daemon's
 * commit at mm_store_uid_hold_due). */
static void refile_hold(bool lower_comes)
{
	struct node a = {0}, b = {0};
	node_open(&a, "a", 1);
	node_open(&b, "b", 2);
	a.dovecot = b.dovecot = true; /* clients may have seen the UIDs: no relist */
	char ma[4096], mb[4096];
	deliver_six(&a);
	converge(&a, &b);
	dovecot_index(&b, "INBOX"); /* b's Dovecot has opened it (else b relists freely) */
	uid_map(&b, "INBOX", mb, sizeof mb);
	assert_non_null(strstr(mb, " 1=m1 2=m2 3=m3 4=m4 5=m5 6=m6"));
	/* some replica could show neither m1 nor m2 under its UID and asked for 7 */
	struct mm_rec needs[2] = {rec_of(&a, 1), rec_of(&a, 2)};
	needs[0].msg.uid_need = needs[1].msg.uid_need = 7;
	ship_recs(&b, needs, 2);
	ship_recs(&a, needs, 2); /* the authority moves both, above every UID and need */
	const struct mm_user *ua = mm_state_user(a.st, "ex.org/alice", false);
	struct mm_rec m1 = *mm_user_get(ua, needs[0].key), m2 = *mm_user_get(ua, needs[1].key);
	uint32_t u1 = m1.msg.uid_value, u2 = m2.msg.uid_value;
	assert_true(u1 >= 7 && u2 == u1 + 1);
	/* b learns the move of m2 alone: m1 still waits for its move, which may land
	 * below u2, so m2 stays under 2 */
	ship_recs(&b, &m2, 1);
	uid_map(&b, "INBOX", mb, sizeof mb);
	assert_non_null(strstr(mb, " 1=m1 2=m2 3=m3"));
	assert_true(mm_store_uid_hold_due(b.s) > 0);
	if (lower_comes) {
		ship_recs(&b, &m1, 1);
	} else {
		/* the wait is over: the next commit re-files m2 without it */
		usleep((MM_UID_HOLD_MS + 100) * 1000);
		assert_int_equal(mm_store_commit(b.s), 0);
		uid_map(&b, "INBOX", mb, sizeof mb);
		char at[32];
		snprintf(at, sizeof at, " %u=m2", u2);
		assert_non_null(strstr(mb, at));
		assert_null(strstr(mb, " 2=m2"));
		ship_recs(&b, &m1, 1);
	}
	uid_map(&b, "INBOX", mb, sizeof mb);
	assert_non_null(strstr(mb, " 3=m3 4=m4 5=m5 6=m6"));
	if (lower_comes) {
		/* in order: u1 then u2, nothing asked again */
		char at[64];
		snprintf(at, sizeof at, " %u=m1 %u=m2", u1, u2);
		assert_non_null(strstr(mb, at));
		assert_int_equal(need_of(&b, m1.key), 7);
		assert_int_equal(need_of(&b, m2.key), 7);
	}
	agree(&a, &b, "INBOX", ma, mb);
	node_close(&a);
	node_close(&b);
}

static void test_store_refile_waits(void **state)
{
	(void)state;
	refile_hold(true);
}

static void test_store_refile_wait_ends(void **state)
{
	(void)state;
	refile_hold(false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plan_rule),
		cmocka_unit_test(test_plan_holds_refile),
		cmocka_unit_test(test_need_register),
		cmocka_unit_test(test_plan_settles),
		cmocka_unit_test(test_uid_move_beats_clock_ahead),
		cmocka_unit_test(test_folder_renew),
		cmocka_unit_test_setup_teardown(test_uidlist_edit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stores_agree, setup, teardown),
		cmocka_unit_test_setup_teardown(test_join_relists, setup, teardown),
		cmocka_unit_test_setup_teardown(test_join_indexed_moves, setup, teardown),
		cmocka_unit_test_setup_teardown(test_join_stale_entry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_left_to_dovecot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_refile_waits, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_refile_wait_ends, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
