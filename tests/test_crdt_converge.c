/*
 * test_crdt_converge.c — convergence of crdt/ under a hostile network.  Four
 * replicas, two users each, run a seeded random workload (deliver, flags, keywords,
 * UIDs, expunge, folder create/delete/subscribe, GC) with their own skewed clocks;
 * every local change's delta is sent to every other replica through a network that
 * loses, duplicates and reorders.  Halfway, an anti-entropy round (full state) lets
 * one replica raise the GC horizon; at the end, anti-entropy by Merkle descent.
 * Checked: equal roots and equal records everywhere, no expunged key live anywhere,
 * and a mirror kept only from the effect callbacks equals each replica's live
 * messages (what node/ and sim/ rely on).
 * MM_SEED=n reproduces a run (the seed is printed); MM_OPS=n changes the length.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crdt/crdt.h"

#define NREP 4
#define NUSERS 2
static const char *users[NUSERS] = { "example.org/alice", "example.net/bob" };
static const char *folders[] = { "INBOX", "Sent", "Lists.dev", "Trash", "Archive" };
static const char *kwords[] = { "$Junk", "$NotJunk", "$Forwarded", "work", "later", "x1" };

static uint64_t rng;
static uint64_t rnd(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}
static unsigned rn(unsigned n)
{
	return (unsigned)(rnd() % n);
}

/* ---- a key set (open addressing) --------------------------------------------------- */

struct kent {
	uint8_t key[MM_KEY_LEN];
	uint8_t used;
	uint8_t flags;
	uint32_t uid;
	int user;
};

struct kset {
	struct kent *e;
	size_t cap, n;
};

static struct kent *kset_find(struct kset *s, const uint8_t *key, int user, bool add)
{
	if (add && (s->n + 1) * 2 > s->cap) {
		struct kset ns = { calloc(s->cap ? s->cap * 2 : 1024, sizeof(struct kent)), s->cap ? s->cap * 2 : 1024, 0 };
		for (size_t i = 0; i < s->cap; i++)
			if (s->e[i].used)
				*kset_find(&ns, s->e[i].key, s->e[i].user, true) = s->e[i];
		free(s->e);
		*s = ns;
	}
	if (!s->cap)
		return NULL;
	uint64_t h;
	memcpy(&h, key, 8);
	h ^= (uint64_t)user * 0x9e3779b97f4a7c15ull;
	for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (!s->e[i].used) {
			if (!add)
				return NULL;
			memset(&s->e[i], 0, sizeof s->e[i]);
			memcpy(s->e[i].key, key, MM_KEY_LEN);
			s->e[i].used = 1;
			s->e[i].user = user;
			s->n++;
			return &s->e[i];
		}
		if (s->e[i].user == user && !memcmp(s->e[i].key, key, MM_KEY_LEN))
			return &s->e[i];
	}
}

/* Removal by tombstoning the slot would break probing; mirrors mark instead. */
#define GONE 0x80

/* ---- replicas ------------------------------------------------------------------------- */

struct replica {
	struct mm_state *st;
	struct mm_clock clk;
	int64_t skew_ms;
	struct kset mirror; /* live messages as seen through effects only */
	int idx;
};

static struct replica reps[NREP];
static struct kset expunged;       /* keys with a tombstone somewhere */
static uint8_t (*allkeys)[MM_KEY_LEN];
static int *allkeys_user;
static size_t nallkeys, capkeys;
static uint64_t now_ms = 1700000000000ull;
static size_t gc_count; /* tombstones collected, all replicas */

static int user_index(const char *name)
{
	for (int i = 0; i < NUSERS; i++)
		if (!strcmp(users[i], name))
			return i;
	fail_msg("unknown user %s", name);
	return -1;
}

static uint8_t flag_bits(const struct mm_rec *r)
{
	uint8_t b = 0;
	for (int f = 0; f < MM_FLAG_COUNT; f++)
		b |= (uint8_t)(r->msg.flags[f].value << f);
	return b;
}

static void on_eff(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	struct replica *rp = arg;
	int ui = user_index(user);
	struct kent *m;
	switch (eff) {
	case MM_EFF_MSG_NEW:
		assert_int_equal(rec->type, MM_REC_MESSAGE);
		m = kset_find(&rp->mirror, rec->key, ui, false);
		assert_true(!m || (m->flags & GONE)); /* no second NEW for a live message */
		m = kset_find(&rp->mirror, rec->key, ui, true);
		m->flags = flag_bits(rec);
		m->uid = rec->msg.uid_value;
		break;
	case MM_EFF_MSG_FLAGS:
	case MM_EFF_MSG_UID:
		m = kset_find(&rp->mirror, rec->key, ui, false);
		assert_non_null(m);
		assert_false(m->flags & GONE);
		m->flags = flag_bits(rec);
		m->uid = rec->msg.uid_value;
		break;
	case MM_EFF_MSG_EXPUNGED:
		assert_int_equal(rec->type, MM_REC_MESSAGE);
		m = kset_find(&rp->mirror, rec->key, ui, false);
		assert_non_null(m);
		assert_false(m->flags & GONE);
		m->flags = GONE;
		kset_find(&expunged, rec->key, ui, true);
		break;
	case MM_EFF_TOMB_NEW:
		assert_int_equal(rec->type, MM_REC_EXPUNGED);
		kset_find(&expunged, rec->key, ui, true);
		break;
	case MM_EFF_FOLDER:
		assert_int_equal(rec->type, MM_REC_FOLDER);
		break;
	case MM_EFF_GC:
		assert_int_equal(rec->type, MM_REC_EXPUNGED);
		gc_count++;
		break;
	}
}

/* ---- network: deltas in flight ------------------------------------------------------- */

struct packet {
	int dest;
	struct mm_delta *d;
};

static struct packet *net;
static size_t nnet, capnet;
static unsigned loss_pct, dup_pct;

static void send_all(int from, const struct mm_delta *d)
{
	if (!mm_delta_count(d))
		return;
	for (int to = 0; to < NREP; to++) {
		if (to == from)
			continue;
		int copies = rn(100) < loss_pct ? 0 : rn(100) < dup_pct ? 2 : 1;
		for (int c = 0; c < copies; c++) {
			struct mm_delta *x = mm_delta_new();
			for (size_t i = 0; i < mm_delta_count(d); i++) {
				const char *u;
				const struct mm_rec *r = mm_delta_get(d, i, &u);
				assert_int_equal(mm_delta_add(x, u, r), 0);
			}
			if (nnet == capnet) {
				capnet = capnet ? capnet * 2 : 256;
				net = realloc(net, capnet * sizeof *net);
			}
			net[nnet++] = (struct packet){ to, x };
		}
	}
}

/* Delivers one packet chosen at random (reordering). */
static void deliver_one(void)
{
	size_t i = rn((unsigned)nnet);
	struct packet p = net[i];
	net[i] = net[--nnet];
	struct replica *rp = &reps[p.dest];
	/* observe stamps like node/ does; a stamp too far ahead is not followed */
	for (size_t k = 0; k < mm_delta_count(p.d); k++) {
		const struct mm_rec *r = mm_delta_get(p.d, k, NULL);
		mm_hlc s = r->type == MM_REC_MESSAGE ? r->msg.created : r->type == MM_REC_EXPUNGED ? r->tomb.stamp
		         : r->type == MM_REC_FOLDER ? r->folder.exists.stamp : r->horizon.stamp;
		mm_clock_observe(&rp->clk, s, (uint64_t)((int64_t)now_ms + rp->skew_ms), 60000);
	}
	assert_true(mm_delta_apply(p.d, rp->st, on_eff, rp) >= 0);
	mm_delta_free(&p.d);
}

static void drop_in_flight(void)
{
	for (size_t i = 0; i < nnet; i++)
		mm_delta_free(&net[i].d);
	nnet = 0;
}

/* ---- workload --------------------------------------------------------------------------- */

static unsigned op_counts[12];

static void one_op(void)
{
	int ri = (int)rn(NREP), ui = (int)rn(NUSERS);
	struct replica *rp = &reps[ri];
	struct mm_user *u = mm_state_user(rp->st, users[ui], true);
	mm_hlc st = mm_clock_tick(&rp->clk, (uint64_t)((int64_t)now_ms + rp->skew_ms));
	struct mm_delta *out = mm_delta_new();
	unsigned op = rn(100);
	const uint8_t *key = NULL;
	if (nallkeys) {
		size_t i = rn((unsigned)nallkeys);
		for (int tries = 0; tries < 8 && allkeys_user[i] != ui; tries++)
			i = rn((unsigned)nallkeys);
		if (allkeys_user[i] == ui)
			key = allkeys[i];
	}
	int rc;
	if (op < 35 || !key) {
		uint8_t body[MM_ID_LEN], k[MM_KEY_LEN];
		uint32_t x = (uint32_t)rnd();
		mm_body_id(&x, sizeof x, body);
		const char *kws[3] = { kwords[rn(6)], kwords[rn(6)], kwords[rn(6)] };
		rc = mm_user_deliver(u, folders[rn(5)], body, 100 + rn(100000), 1700000000 + rn(1000000), rn(64),
		                     kws, rn(4), rn(3) ? 0 : 1 + rn(1000), st, k, on_eff, rp, out);
		assert_int_equal(rc, 1);
		if (nallkeys == capkeys) {
			capkeys = capkeys ? capkeys * 2 : 1024;
			allkeys = realloc(allkeys, capkeys * MM_KEY_LEN);
			allkeys_user = realloc(allkeys_user, capkeys * sizeof *allkeys_user);
		}
		memcpy(allkeys[nallkeys], k, MM_KEY_LEN);
		allkeys_user[nallkeys++] = ui;
		op_counts[0]++;
	} else if (op < 55) {
		rc = mm_user_set_flag(u, key, (enum mm_flag)rn(MM_FLAG_COUNT), rn(2), st, on_eff, rp, out);
		op_counts[1]++;
	} else if (op < 65) {
		rc = mm_user_set_keyword(u, key, kwords[rn(6)], rn(2), st, on_eff, rp, out);
		op_counts[2]++;
	} else if (op < 73) {
		rc = mm_user_expunge(u, key, st, on_eff, rp, out);
		op_counts[3]++;
	} else if (op < 80) {
		rc = mm_user_set_uid(u, key, 1 + rn(2000), st, on_eff, rp, out);
		op_counts[4]++;
	} else if (op < 88) {
		rc = mm_user_folder_create(u, folders[1 + rn(4)], st, on_eff, rp, out);
		op_counts[5]++;
	} else if (op < 92) {
		rc = mm_user_folder_delete(u, folders[1 + rn(4)], st, on_eff, rp, out);
		op_counts[6]++;
	} else {
		rc = mm_user_folder_subscribe(u, folders[rn(5)], rn(2), st, on_eff, rp, out);
		op_counts[7]++;
	}
	assert_true(rc >= 0 || rc == -ENOENT);
	assert_true(rc == 1 || mm_delta_count(out) == 0);
	send_all(ri, out);
	mm_delta_free(&out);
}

/* ---- anti-entropy -------------------------------------------------------------------------- */

struct push_ctx {
	struct replica *to;
	const char *user;
};

static int push_rec(void *arg, const struct mm_rec *r)
{
	struct push_ctx *c = arg;
	struct mm_rec copy;
	struct mm_arena a;
	uint8_t buf[8192];
	/* through the codec, like records crossing a wire or a disk */
	ssize_t n = mm_rec_encode(r, buf, sizeof buf);
	assert_true(n > 0);
	mm_arena_init(&a);
	assert_int_equal(mm_rec_decode(buf, (size_t)n, &copy, &a), 0);
	assert_true(mm_state_merge(c->to->st, c->user, &copy, on_eff, c->to) >= 0);
	mm_arena_free(&a);
	return 0;
}

/* Full state of every user of `from` into `to`. */
static void full_push(struct replica *from, struct replica *to)
{
	for (int ui = 0; ui < NUSERS; ui++) {
		struct mm_user *u = mm_state_user(from->st, users[ui], false);
		if (!u)
			continue;
		struct push_ctx c = { to, users[ui] };
		mm_user_foreach(u, NULL, 0, push_rec, &c);
	}
}

/* Both directions of the records under (prefix, depth), found by descending the
 * two Merkle trees from the root; returns the number of subtrees exchanged. */
static int descend_sync(struct replica *ra, struct mm_user *a, struct replica *rb, struct mm_user *b,
                        const uint8_t *prefix, unsigned depth)
{
	uint8_t ha[MM_FANOUT][MM_HASH_LEN], hb[MM_FANOUT][MM_HASH_LEN];
	uint32_t ca[MM_FANOUT], cb[MM_FANOUT];
	int n = 0;
	mm_user_children(a, prefix, depth, ha, ca);
	mm_user_children(b, prefix, depth, hb, cb);
	for (unsigned i = 0; i < MM_FANOUT; i++) {
		if (!memcmp(ha[i], hb[i], MM_HASH_LEN))
			continue;
		uint8_t p[MM_KEY_LEN];
		memcpy(p, prefix, MM_KEY_LEN);
		p[depth / 2] = (uint8_t)((depth & 1) ? (p[depth / 2] & 0xf0) | i : i << 4);
		if (ca[i] + cb[i] <= 8) {
			struct push_ctx to_b = { rb, mm_user_name(a) }, to_a = { ra, mm_user_name(b) };
			/* records handed out by foreach are borrowed from a: merging into b is fine */
			mm_user_foreach(a, p, depth + 1, push_rec, &to_b);
			mm_user_foreach(b, p, depth + 1, push_rec, &to_a);
			n++;
		} else {
			n += descend_sync(ra, a, rb, b, p, depth + 1);
		}
	}
	return n;
}

static void merkle_sync(struct replica *ra, struct replica *rb)
{
	for (int ui = 0; ui < NUSERS; ui++) {
		struct mm_user *a = mm_state_user(ra->st, users[ui], true);
		struct mm_user *b = mm_state_user(rb->st, users[ui], true);
		uint8_t zero[MM_KEY_LEN] = { 0 };
		descend_sync(ra, a, rb, b, zero, 0);
		uint8_t x[MM_HASH_LEN], y[MM_HASH_LEN];
		mm_user_root(a, x);
		mm_user_root(b, y);
		assert_memory_equal(x, y, MM_HASH_LEN);
	}
}

/* ---- checks ----------------------------------------------------------------------------------- */

struct live_ctx {
	struct replica *rp;
	int ui;
	size_t live;
};

static int check_live(void *arg, const struct mm_rec *r)
{
	struct live_ctx *c = arg;
	if (r->type != MM_REC_MESSAGE)
		return 0;
	c->live++;
	assert_null(kset_find(&expunged, r->key, c->ui, false)); /* never resurrected */
	struct kent *m = kset_find(&c->rp->mirror, r->key, c->ui, false);
	assert_non_null(m);
	assert_false(m->flags & GONE);
	assert_int_equal(m->flags, flag_bits(r));
	assert_int_equal(m->uid, r->msg.uid_value);
	return 0;
}

static void check_replica(struct replica *rp)
{
	for (int ui = 0; ui < NUSERS; ui++) {
		struct mm_user *u = mm_state_user(rp->st, users[ui], true);
		struct live_ctx c = { rp, ui, 0 };
		mm_user_foreach(u, NULL, 0, check_live, &c);
		size_t mirrored = 0;
		for (size_t i = 0; i < rp->mirror.cap; i++)
			if (rp->mirror.e[i].used && rp->mirror.e[i].user == ui && !(rp->mirror.e[i].flags & GONE))
				mirrored++;
		assert_int_equal(mirrored, c.live);
	}
}

static int enc_cmp_cb(void *arg, const struct mm_rec *r)
{
	const struct mm_user *other = arg;
	const struct mm_rec *o = mm_user_get(other, r->key);
	assert_non_null(o);
	assert_true(mm_rec_equal(r, o));
	return 0;
}

static void test_converge(void **state)
{
	(void)state;
	const char *s = getenv("MM_SEED");
	uint64_t seed = s ? strtoull(s, NULL, 0) : ((uint64_t)time(NULL) << 20 ^ (uint64_t)getpid());
	const char *o = getenv("MM_OPS");
	unsigned ops = o ? (unsigned)strtoul(o, NULL, 0) : 30000;
	rng = seed;
	printf("test_crdt_converge: MM_SEED=%llu ops=%u\n", (unsigned long long)seed, ops);
	loss_pct = 5 + rn(25);
	dup_pct = rn(20);
	for (int i = 0; i < NREP; i++) {
		reps[i].st = mm_state_new();
		reps[i].idx = i;
		reps[i].skew_ms = (int64_t)rn(4000) - 2000;
		mm_clock_init(&reps[i].clk, 0x1000 + (uint64_t)i, 0);
	}
	for (unsigned i = 0; i < ops; i++) {
		now_ms += rn(20);
		one_op();
		/* deliver some of what is in flight, at random */
		while (nnet && rn(100) < 55)
			deliver_one();
		if (i == ops / 2) {
			/* anti-entropy with the network flushed, then a GC horizon that every
			 * replica is past: tombstones older than it can be collected safely */
			drop_in_flight();
			for (int r = 1; r < NREP; r++)
				full_push(&reps[r], &reps[0]);
			for (int r = 1; r < NREP; r++)
				full_push(&reps[0], &reps[r]);
			/* like node/'s "now - grace period": far enough back that no replica's
			 * clock (skew within +-2 s here) can still stamp a tombstone below it */
			mm_hlc h = { (now_ms - 10000) << MM_HLC_LOGICAL_BITS, 0 };
			for (int ui = 0; ui < NUSERS; ui++) {
				struct mm_delta *d = mm_delta_new();
				int n = mm_user_gc(mm_state_user(reps[0].st, users[ui], true), h, on_eff, &reps[0], d);
				assert_true(n >= 0);
				send_all(0, d);
				mm_delta_free(&d);
			}
		}
	}
	/* drain what is left (some of it), then anti-entropy by Merkle descent along a
	 * chain and back, which must leave every pair equal */
	while (nnet > 0 && rn(4))
		deliver_one();
	drop_in_flight();
	for (int r = 1; r < NREP; r++)
		merkle_sync(&reps[r - 1], &reps[r]);
	for (int r = NREP - 1; r > 0; r--)
		merkle_sync(&reps[r - 1], &reps[r]);
	uint8_t root0[MM_HASH_LEN], root[MM_HASH_LEN];
	mm_state_root(reps[0].st, root0);
	size_t live_total = 0;
	for (int r = 0; r < NREP; r++) {
		mm_state_root(reps[r].st, root);
		assert_memory_equal(root0, root, MM_HASH_LEN);
		for (int ui = 0; ui < NUSERS; ui++) {
			struct mm_user *a = mm_state_user(reps[0].st, users[ui], false);
			struct mm_user *b = mm_state_user(reps[r].st, users[ui], false);
			assert_int_equal(mm_user_count(a), mm_user_count(b));
			mm_user_foreach(a, NULL, 0, enc_cmp_cb, b);
		}
		check_replica(&reps[r]);
	}
	for (int ui = 0; ui < NUSERS; ui++) {
		struct live_ctx c = { &reps[0], ui, 0 };
		mm_user_foreach(mm_state_user(reps[0].st, users[ui], false), NULL, 0, check_live, &c);
		live_total += c.live;
	}
	printf("test_crdt_converge: loss %u%% dup %u%%, ops deliver %u flag %u kw %u expunge %u uid %u "
	       "fcreate %u fdelete %u subscribe %u; %zu keys, %zu expunged (%zu collected), %zu live at the end\n",
	       loss_pct, dup_pct, op_counts[0], op_counts[1], op_counts[2], op_counts[3], op_counts[4],
	       op_counts[5], op_counts[6], op_counts[7], nallkeys, expunged.n, gc_count, live_total);
	assert_true(live_total > 0 && expunged.n > 0 && gc_count > 0);
	for (int i = 0; i < NREP; i++) {
		mm_state_free(&reps[i].st);
		free(reps[i].mirror.e);
	}
	free(expunged.e);
	free(allkeys);
	free(allkeys_user);
	free(net);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_converge),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
