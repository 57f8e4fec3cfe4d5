/*
 * test_crdt_prop.c — a randomized property test of crdt/ over the rarer record kinds
 * and interactions: moves and copies (new instance + tombstone), folder delete racing
 * with moves/copies into the folder, subscriptions, explicit UIDVALIDITY (renew), UID
 * registers, moves (mm_user_uid_move) and needs, adopted messages whose creation
 * stamp is derived (the same key made on two nodes with different flags/UIDs), more
 * than 26 keywords, sizes and dates that do not fit the compact slot, node ids of any
 * width, and GC horizons every replica is past.
 *
 * 2-4 replicas, deltas through the codec over a network that loses, duplicates and
 * reorders, then a full exchange.  Checked for every seed:
 *   - equal state roots and byte-equal records everywhere; equal visible state
 *     (folder visibility, subscriptions, UIDVALIDITY, removed, uid_top);
 *   - the Merkle cache equals a recomputation from the records (root and children);
 *   - no expunged key is live anywhere;
 *   - a mirror kept from effects only equals the live messages (flags, keywords,
 *     UID, need);
 *   - every record merged into a fresh user in random orders, with duplicates, gives
 *     the state the replicas reached (the GC horizon applied last), and merging a
 *     state into itself changes nothing (idempotence);
 *   - decode(encode(r)) re-encodes to the same bytes for every record seen.
 * Deterministic: fixed seeds (MM_PROP_SEED=n runs one seed, MM_PROP_SEEDS=n that many).
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
#include "crdt/uid.h"
#include "tests/crdt_check.h"

#define MAXREP 4
#define USER "example.org/alice"
#define NKW 40
#define NFOLD 6
#define NADOPT 24

static const char *folders[NFOLD] = { "INBOX", "Sent", "Lists.dev", "Trash", "Archive", "a b" };
static char kwnames[NKW][16];

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
	return n ? (unsigned)(rnd() % n) : 0;
}

/* ---- encoded record log ---------------------------------------------------------- */

struct blob {
	uint8_t *b;
	size_t n;
};

static struct blob *logv;
static size_t nlog, caplog;

static void log_rec(const struct mm_rec *r)
{
	ssize_t n = mm_rec_encode(r, NULL, 0);
	assert_true(n > 0);
	uint8_t *b = malloc((size_t)n);
	assert_int_equal(mm_rec_encode(r, b, (size_t)n), n);
	if (nlog == caplog) {
		caplog = caplog ? caplog * 2 : 1024;
		logv = realloc(logv, caplog * sizeof *logv);
	}
	logv[nlog++] = (struct blob){ b, (size_t)n };
}

/* decode(encode(r)) must encode to the same bytes, and keep every field */
static void codec_roundtrip(const struct mm_rec *r, struct mm_rec *out, struct mm_arena *a)
{
	uint8_t buf[16384], buf2[16384];
	ssize_t n = mm_rec_encode(r, buf, sizeof buf);
	assert_true(n > 0);
	assert_int_equal(mm_rec_decode(buf, (size_t)n, out, a), 0);
	ssize_t n2 = mm_rec_encode(out, buf2, sizeof buf2);
	assert_int_equal(n, n2);
	assert_memory_equal(buf, buf2, (size_t)n);
	assert_int_equal(out->type, r->type);
	if (r->type == MM_REC_MESSAGE) {
		assert_int_equal(out->msg.size, r->msg.size);
		assert_true(out->msg.internaldate == r->msg.internaldate);
		assert_int_equal(out->msg.uid_value, r->msg.uid_value);
		assert_int_equal(out->msg.uid_need, r->msg.uid_need);
		assert_int_equal(out->msg.n_keywords, r->msg.n_keywords);
		assert_string_equal(out->msg.folder, r->msg.folder);
	} else if (r->type == MM_REC_FOLDER) {
		uint32_t uv = r->folder.uidvalidity ? r->folder.uidvalidity : mm_folder_uidvalidity(r->folder.exists.stamp);
		if (!(r->folder.exists.stamp.t == 0 && r->folder.exists.stamp.node == 0))
			assert_int_equal(out->folder.uidvalidity, uv);
		assert_string_equal(out->folder.name, r->folder.name);
	}
}

/* ---- effect mirror ------------------------------------------------------------------ */

struct mmsg {
	uint8_t key[MM_KEY_LEN];
	bool live;
	uint8_t flags;
	uint64_t kw;     /* bit i: kwnames[i] */
	uint32_t uid, need;
};

struct replica {
	struct mm_state *st;
	struct mm_clock clk;
	int64_t skew_ms;
	struct mmsg *m;
	size_t nm, capm;
};

static struct replica reps[MAXREP];
static int nrep;
static uint64_t now_ms;

/* global knowledge */
static uint8_t (*allkeys)[MM_KEY_LEN];
static size_t nall, capall;
static uint8_t (*gone)[MM_KEY_LEN]; /* keys expunged somewhere */
static size_t ngone, capgone;

static bool in_set(uint8_t (*set)[MM_KEY_LEN], size_t n, const uint8_t *k)
{
	for (size_t i = 0; i < n; i++)
		if (!memcmp(set[i], k, MM_KEY_LEN))
			return true;
	return false;
}

static void add_set(uint8_t (**set)[MM_KEY_LEN], size_t *n, size_t *cap, const uint8_t *k)
{
	if (in_set(*set, *n, k))
		return;
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 256;
		*set = realloc(*set, *cap * MM_KEY_LEN);
	}
	memcpy((*set)[(*n)++], k, MM_KEY_LEN);
}

static struct mmsg *mfind(struct replica *rp, const uint8_t *k, bool add)
{
	for (size_t i = 0; i < rp->nm; i++)
		if (!memcmp(rp->m[i].key, k, MM_KEY_LEN))
			return &rp->m[i];
	if (!add)
		return NULL;
	if (rp->nm == rp->capm) {
		rp->capm = rp->capm ? rp->capm * 2 : 256;
		rp->m = realloc(rp->m, rp->capm * sizeof *rp->m);
	}
	struct mmsg *m = &rp->m[rp->nm++];
	memset(m, 0, sizeof *m);
	memcpy(m->key, k, MM_KEY_LEN);
	return m;
}

static int kw_index(const char *name)
{
	for (int i = 0; i < NKW; i++)
		if (!strcmp(kwnames[i], name))
			return i;
	fail_msg("unknown keyword %s", name);
	return -1;
}

static uint8_t flag_bits(const struct mm_rec *r)
{
	uint8_t b = 0;
	for (int f = 0; f < MM_FLAG_COUNT; f++)
		b |= (uint8_t)(r->msg.flags[f].value << f);
	return b;
}

static uint64_t kw_bits(const struct mm_rec *r)
{
	uint64_t b = 0;
	for (size_t i = 0; i < r->msg.n_keywords; i++)
		if (r->msg.keywords[i].reg.value)
			b |= 1ull << kw_index(r->msg.keywords[i].name);
	return b;
}

static void mirror_set(struct mmsg *m, const struct mm_rec *r)
{
	m->flags = flag_bits(r);
	m->kw = kw_bits(r);
	m->uid = r->msg.uid_value;
	m->need = r->msg.uid_need;
}

static void on_eff(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	struct replica *rp = arg;
	struct mmsg *m;
	assert_string_equal(user, USER);
	switch (eff) {
	case MM_EFF_MSG_NEW:
		assert_int_equal(rec->type, MM_REC_MESSAGE);
		m = mfind(rp, rec->key, true);
		assert_false(m->live);
		m->live = true;
		mirror_set(m, rec);
		break;
	case MM_EFF_MSG_FLAGS:
	case MM_EFF_MSG_UID:
		assert_int_equal(rec->type, MM_REC_MESSAGE);
		m = mfind(rp, rec->key, false);
		assert_non_null(m);
		assert_true(m->live);
		mirror_set(m, rec);
		break;
	case MM_EFF_MSG_EXPUNGED:
		assert_int_equal(rec->type, MM_REC_MESSAGE);
		m = mfind(rp, rec->key, false);
		assert_non_null(m);
		assert_true(m->live);
		m->live = false;
		break;
	case MM_EFF_TOMB_NEW:
	case MM_EFF_GC:
		assert_int_equal(rec->type, MM_REC_EXPUNGED);
		break;
	case MM_EFF_FOLDER:
		assert_int_equal(rec->type, MM_REC_FOLDER);
		break;
	}
}

/* ---- network ---------------------------------------------------------------------------- */

struct packet {
	int dest;
	struct blob *recs;
	size_t n;
};

static struct packet *net;
static size_t nnet, capnet;
static unsigned loss_pct, dup_pct;

static void send_delta(int from, const struct mm_delta *d)
{
	size_t n = mm_delta_count(d);
	for (size_t i = 0; i < n; i++)
		log_rec(mm_delta_get(d, i, NULL));
	if (!n)
		return;
	for (int to = 0; to < nrep; to++) {
		if (to == from)
			continue;
		int copies = rn(100) < loss_pct ? 0 : rn(100) < dup_pct ? 2 : 1;
		for (int c = 0; c < copies; c++) {
			struct packet p = { to, calloc(n, sizeof(struct blob)), n };
			for (size_t i = 0; i < n; i++) {
				const struct mm_rec *r = mm_delta_get(d, i, NULL);
				ssize_t k = mm_rec_encode(r, NULL, 0);
				p.recs[i].b = malloc((size_t)k);
				p.recs[i].n = (size_t)k;
				assert_int_equal(mm_rec_encode(r, p.recs[i].b, (size_t)k), k);
			}
			if (nnet == capnet) {
				capnet = capnet ? capnet * 2 : 256;
				net = realloc(net, capnet * sizeof *net);
			}
			net[nnet++] = p;
		}
	}
}

static void merge_blob(struct replica *rp, const struct blob *b)
{
	struct mm_arena a;
	struct mm_rec r;
	mm_arena_init(&a);
	assert_int_equal(mm_rec_decode(b->b, b->n, &r, &a), 0);
	mm_hlc s = r.type == MM_REC_MESSAGE ? r.msg.created : r.type == MM_REC_EXPUNGED ? r.tomb.stamp
	         : r.type == MM_REC_FOLDER ? r.folder.exists.stamp : r.horizon.stamp;
	mm_clock_observe(&rp->clk, s, (uint64_t)((int64_t)now_ms + rp->skew_ms), 60000);
	assert_true(mm_state_merge(rp->st, USER, &r, on_eff, rp) >= 0);
	mm_arena_free(&a);
}

static void packet_free(struct packet *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->recs[i].b);
	free(p->recs);
}

static void deliver_one(void)
{
	size_t i = rn((unsigned)nnet);
	struct packet p = net[i];
	net[i] = net[--nnet];
	for (size_t k = 0; k < p.n; k++)
		merge_blob(&reps[p.dest], &p.recs[k]);
	packet_free(&p);
}

static void drop_all(void)
{
	for (size_t i = 0; i < nnet; i++)
		packet_free(&net[i]);
	nnet = 0;
}

/* ---- full exchange (through the codec) ------------------------------------------------- */

struct push_ctx {
	struct replica *to;
};

static int push_rec(void *arg, const struct mm_rec *r)
{
	struct push_ctx *c = arg;
	struct mm_arena a;
	struct mm_rec copy;
	mm_arena_init(&a);
	codec_roundtrip(r, &copy, &a);
	assert_true(mm_state_merge(c->to->st, USER, &copy, on_eff, c->to) >= 0);
	mm_arena_free(&a);
	return 0;
}

static struct mm_user *U(struct replica *rp)
{
	return mm_state_user(rp->st, USER, true);
}

static void full_push(struct replica *from, struct replica *to)
{
	/* records of `from` are borrowed while merged into another user: fine */
	struct push_ctx c = { to };
	mm_user_foreach(U(from), NULL, 0, push_rec, &c);
}

static void full_exchange(void)
{
	for (int round = 0; round < 2; round++)
		for (int a = 0; a < nrep; a++)
			for (int b = 0; b < nrep; b++)
				if ((a + round) % nrep != b)
					full_push(&reps[(a + round) % nrep], &reps[b]);
}

/* Anti-entropy by Merkle descent: only the subtrees whose hashes differ are exchanged. */
static void descend(struct replica *ra, struct replica *rb, const uint8_t *prefix, unsigned depth)
{
	uint8_t ha[MM_FANOUT][MM_HASH_LEN], hb[MM_FANOUT][MM_HASH_LEN];
	uint32_t ca[MM_FANOUT], cb[MM_FANOUT];
	mm_user_children(U(ra), prefix, depth, ha, ca);
	mm_user_children(U(rb), prefix, depth, hb, cb);
	for (unsigned i = 0; i < MM_FANOUT; i++) {
		if (!memcmp(ha[i], hb[i], MM_HASH_LEN))
			continue;
		uint8_t p[MM_KEY_LEN];
		memcpy(p, prefix, MM_KEY_LEN);
		p[depth / 2] = (uint8_t)((depth & 1) ? (p[depth / 2] & 0xf0) | i : i << 4);
		if (ca[i] + cb[i] <= 6 || depth + 1 >= MM_MAX_DEPTH) {
			struct push_ctx to_b = { rb }, to_a = { ra };
			mm_user_foreach(U(ra), p, depth + 1, push_rec, &to_b);
			mm_user_foreach(U(rb), p, depth + 1, push_rec, &to_a);
		} else {
			descend(ra, rb, p, depth + 1);
		}
	}
}

static void merkle_exchange(void)
{
	uint8_t zero[MM_KEY_LEN] = { 0 };
	for (int r = 1; r < nrep; r++)
		descend(&reps[r - 1], &reps[r], zero, 0);
	for (int r = nrep - 1; r > 0; r--)
		descend(&reps[r - 1], &reps[r], zero, 0);
}

/* ---- checks -------------------------------------------------------------------------------- */

static int cmp_other(void *arg, const struct mm_rec *r)
{
	const struct mm_user *o = arg;
	const struct mm_rec *x = mm_user_get(o, r->key);
	assert_non_null(x);
	uint8_t a[16384], b[16384];
	ssize_t na = mm_rec_encode(r, a, sizeof a), nb = mm_rec_encode(x, b, sizeof b);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, (size_t)na);
	if (r->type == MM_REC_FOLDER)
		assert_int_equal(r->folder.uidvalidity, x->folder.uidvalidity);
	return 0;
}

struct chk {
	struct replica *rp;
	uint8_t root[MM_HASH_LEN];
	size_t live;
};

static int check_rec(void *arg, const struct mm_rec *r)
{
	struct chk *c = arg;
	uint8_t h[MM_HASH_LEN];
	mm_rec_hash(r, h);
	for (int i = 0; i < MM_HASH_LEN; i++)
		c->root[i] ^= h[i];
	assert_int_equal(mm_rec_validate(r), 0);
	struct mm_arena a;
	struct mm_rec copy;
	mm_arena_init(&a);
	codec_roundtrip(r, &copy, &a);
	mm_arena_free(&a);
	if (r->type != MM_REC_MESSAGE)
		return 0;
	c->live++;
	assert_false(in_set(gone, ngone, r->key)); /* never resurrected */
	if (c->rp) {
		struct mmsg *m = mfind(c->rp, r->key, false);
		assert_non_null(m);
		assert_true(m->live);
		assert_int_equal(m->flags, flag_bits(r));
		assert_true(m->kw == kw_bits(r));
		assert_int_equal(m->uid, r->msg.uid_value);
		assert_int_equal(m->need, r->msg.uid_need);
	}
	return 0;
}

static void check_user(const struct mm_user *u, struct replica *rp)
{
	struct chk c = { .rp = rp };
	mm_user_foreach(u, NULL, 0, check_rec, &c);
	uint8_t root[MM_HASH_LEN];
	mm_user_root(u, root);
	assert_memory_equal(root, c.root, MM_HASH_LEN);
	uint8_t p[MM_KEY_LEN] = { 0 };
	for (unsigned d = 0; d < 4; d++) {
		p[0] = (uint8_t)rnd();
		p[1] = (uint8_t)rnd();
		check_children(u, p, d);
	}
	if (rp) {
		size_t live = 0;
		for (size_t i = 0; i < rp->nm; i++)
			live += rp->m[i].live;
		assert_int_equal(live, c.live);
	}
}

static void check_same(const struct mm_user *a, const struct mm_user *b)
{
	uint8_t x[MM_HASH_LEN], y[MM_HASH_LEN];
	assert_string_equal(mm_user_name(a), mm_user_name(b));
	mm_user_root(a, x);
	mm_user_root(b, y);
	assert_memory_equal(x, y, MM_HASH_LEN);
	assert_int_equal(mm_user_count(a), mm_user_count(b));
	mm_user_foreach(a, NULL, 0, cmp_other, (void *)b);
	mm_user_foreach(b, NULL, 0, cmp_other, (void *)a);
	for (int f = 0; f < NFOLD; f++) {
		assert_int_equal(mm_user_folder_visible(a, folders[f]), mm_user_folder_visible(b, folders[f]));
		assert_int_equal(mm_user_uid_top(a, folders[f]), mm_user_uid_top(b, folders[f]));
	}
	assert_int_equal(mm_user_removed(a), mm_user_removed(b));
}

/* ---- workload -------------------------------------------------------------------------------- */

static const uint64_t wide_sizes[] = { 0, 0xffffffffull, 0x100000000ull, UINT64_MAX };
static const int64_t wide_dates[] = { -1, INT64_MIN, 0xffffffffll, 1ll << 40, INT64_MAX };

static unsigned op_counts[20];

static const uint8_t *pick_key(struct replica *rp, bool live_only)
{
	if (!nall)
		return NULL;
	for (int t = 0; t < 12; t++) {
		const uint8_t *k = allkeys[rn((unsigned)nall)];
		const struct mm_rec *r = mm_user_get(U(rp), k);
		if (!live_only || (r && r->type == MM_REC_MESSAGE))
			return k;
	}
	return allkeys[rn((unsigned)nall)];
}

static void pick_kws(const char **kws, size_t *n)
{
	*n = rn(4) ? rn(3) : rn(NKW);
	for (size_t i = 0; i < *n; i++)
		kws[i] = kwnames[rn(NKW)];
}

static mm_hlc adopt_stamp(unsigned i)
{
	/* like node/store.c adopt_stamp: derived, in the past, one of few node ids */
	return (mm_hlc){ ((1700000000000ull - 1000 * (i + 1)) << MM_HLC_LOGICAL_BITS) | (i & 3), 0xad0b000000000000ull | (i % 16) };
}

static int do_deliver(struct replica *rp, const char *folder, const uint8_t *body, uint64_t size, int64_t idate,
                      mm_hlc st, uint8_t *k, struct mm_delta *out)
{
	const char *kws[NKW];
	size_t nk;
	pick_kws(kws, &nk);
	int rc = mm_user_deliver(U(rp), folder, body, size, idate, rn(64), kws, nk, rn(3) ? 0 : 1 + rn(50), st, k,
	                         on_eff, rp, out);
	if (rc == 1)
		add_set(&allkeys, &nall, &capall, k);
	return rc;
}

static void one_op(int ri)
{
	struct replica *rp = &reps[ri];
	struct mm_user *u = U(rp);
	mm_hlc st = mm_clock_tick(&rp->clk, (uint64_t)((int64_t)now_ms + rp->skew_ms));
	struct mm_delta *out = mm_delta_new();
	unsigned op = rn(100);
	const uint8_t *key = pick_key(rp, rn(4) != 0);
	uint8_t k[MM_KEY_LEN], body[MM_ID_LEN];
	int rc = 0;
	if (op < 22 || !key) {
		uint32_t x = (uint32_t)rnd();
		mm_body_id(&x, sizeof x, body);
		uint64_t size = rn(10) ? 100 + rn(100000) : wide_sizes[rn(4)];
		int64_t idate = rn(10) ? 1700000000 + rn(1000000) : wide_dates[rn(5)];
		rc = do_deliver(rp, folders[rn(NFOLD)], body, size, idate, st, k, out);
		assert_int_equal(rc, 1);
		op_counts[0]++;
	} else if (op < 27) {
		/* adopted: the same derived stamp on whichever node finds the file */
		unsigned i = rn(NADOPT);
		mm_hlc as = adopt_stamp(i);
		mm_key_message(&as, k);
		if (!in_set(gone, ngone, k)) { /* node/ never derives an expunged key again */
			mm_body_id(&i, sizeof i, body);
			rc = do_deliver(rp, folders[i % NFOLD], body, 1000 + i, 1700000000 + i, as, k, out);
			assert_true(rc == 1 || rc == -EEXIST);
		}
		op_counts[1]++;
	} else if (op < 40) {
		rc = mm_user_set_flag(u, key, (enum mm_flag)rn(MM_FLAG_COUNT), rn(2), st, on_eff, rp, out);
		op_counts[2]++;
	} else if (op < 48) {
		rc = mm_user_set_keyword(u, key, kwnames[rn(NKW)], rn(2), st, on_eff, rp, out);
		op_counts[3]++;
	} else if (op < 52) {
		rc = mm_user_set_uid(u, key, rn(8) ? 1 + rn(60) : 0, st, on_eff, rp, out);
		op_counts[4]++;
	} else if (op < 56) {
		rc = mm_user_uid_move(u, key, 1 + rn(80), st, on_eff, rp, out);
		op_counts[5]++;
	} else if (op < 60) {
		rc = mm_user_uid_need(u, key, 1 + rn(80), on_eff, rp, out);
		op_counts[6]++;
	} else if (op < 66) {
		rc = mm_user_expunge(u, key, st, on_eff, rp, out);
		if (rc == 1)
			add_set(&gone, &ngone, &capgone, key);
		op_counts[7]++;
	} else if (op < 74) {
		/* move or copy: a new instance in another folder (+ a tombstone for a move) */
		const struct mm_rec *r = mm_user_get(u, key);
		if (r && r->type == MM_REC_MESSAGE) {
			uint8_t src[MM_KEY_LEN];
			memcpy(src, key, MM_KEY_LEN);
			memcpy(body, r->msg.body, MM_ID_LEN);
			uint64_t size = r->msg.size;
			int64_t idate = r->msg.internaldate;
			bool move = rn(2);
			rc = do_deliver(rp, folders[rn(NFOLD)], body, size, idate, st, k, out);
			assert_int_equal(rc, 1);
			if (move) {
				mm_hlc st2 = mm_clock_tick(&rp->clk, (uint64_t)((int64_t)now_ms + rp->skew_ms));
				rc = mm_user_expunge(u, src, st2, on_eff, rp, out);
				assert_int_equal(rc, 1);
				add_set(&gone, &ngone, &capgone, src);
			}
		}
		op_counts[8]++;
	} else if (op < 80) {
		rc = mm_user_folder_create(u, folders[rn(NFOLD)], st, on_eff, rp, out);
		op_counts[9]++;
	} else if (op < 86) {
		/* deleting expunges the folder's messages known here */
		const char *f = folders[rn(NFOLD)];
		struct mm_delta *d2 = mm_delta_new();
		rc = mm_user_folder_delete(u, f, st, on_eff, rp, d2);
		for (size_t i = 0; i < mm_delta_count(d2); i++) {
			const struct mm_rec *r = mm_delta_get(d2, i, NULL);
			if (r->type == MM_REC_EXPUNGED)
				add_set(&gone, &ngone, &capgone, r->key);
			assert_int_equal(mm_delta_add(out, USER, r), 0);
		}
		mm_delta_free(&d2);
		op_counts[10]++;
	} else if (op < 93) {
		rc = mm_user_folder_subscribe(u, folders[rn(NFOLD)], rn(2), st, on_eff, rp, out);
		op_counts[11]++;
	} else {
		uint32_t uv = rn(2) ? 0 : 1 + (uint32_t)rn(1000000);
		rc = mm_user_folder_renew(u, folders[rn(NFOLD)], st, uv, on_eff, rp, out);
		op_counts[12]++;
	}
	assert_true(rc >= 0 || rc == -ENOENT || rc == -EEXIST);
	send_delta(ri, out);
	mm_delta_free(&out);
}

/* ---- order independence ---------------------------------------------------------------------- */

static struct mm_user *replay(const uint8_t *skip_horizon_key, mm_hlc *max_h)
{
	struct mm_user *v = mm_user_new(USER);
	size_t n = nlog + nlog / 3;
	for (size_t j = 0; j < n; j++) {
		const struct blob *b = &logv[j < nlog ? j : rn((unsigned)nlog)];
		struct mm_arena a;
		struct mm_rec r;
		mm_arena_init(&a);
		assert_int_equal(mm_rec_decode(b->b, b->n, &r, &a), 0);
		if (r.type == MM_REC_HORIZON && !memcmp(r.key, skip_horizon_key, MM_KEY_LEN)) {
			if (mm_hlc_cmp(r.horizon.stamp, *max_h) > 0)
				*max_h = r.horizon.stamp;
		} else {
			assert_true(mm_user_merge(v, &r, NULL, NULL) >= 0);
		}
		mm_arena_free(&a);
	}
	if (max_h->t || max_h->node)
		assert_true(mm_user_gc(v, *max_h, NULL, NULL, NULL) >= 0);
	return v;
}

static void shuffle_log(void)
{
	for (size_t i = nlog; i > 1; i--) {
		size_t j = rn((unsigned)i);
		struct blob t = logv[i - 1];
		logv[i - 1] = logv[j];
		logv[j] = t;
	}
}

/* collects the encodings of a user's records (merging into the user being walked
 * is not allowed) */
struct coll {
	struct blob *b;
	size_t n, cap;
};

static int coll_cb(void *arg, const struct mm_rec *r)
{
	struct coll *c = arg;
	ssize_t k = mm_rec_encode(r, NULL, 0);
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 256;
		c->b = realloc(c->b, c->cap * sizeof *c->b);
	}
	c->b[c->n].b = malloc((size_t)k);
	c->b[c->n].n = (size_t)k;
	assert_int_equal(mm_rec_encode(r, c->b[c->n].b, (size_t)k), k);
	c->n++;
	return 0;
}

static void check_idempotent(struct mm_user *u)
{
	struct coll c = { 0 };
	mm_user_foreach(u, NULL, 0, coll_cb, &c);
	for (size_t i = 0; i < c.n; i++) {
		struct mm_arena a;
		struct mm_rec r;
		mm_arena_init(&a);
		assert_int_equal(mm_rec_decode(c.b[i].b, c.b[i].n, &r, &a), 0);
		assert_int_equal(mm_user_merge(u, &r, NULL, NULL), 0);
		mm_arena_free(&a);
		free(c.b[i].b);
	}
	free(c.b);
}

/* ---- one run ------------------------------------------------------------------------------------ */

static void run(uint64_t seed, unsigned ops)
{
	rng = seed;
	nrep = 2 + (int)rn(3);
	loss_pct = rn(30);
	dup_pct = rn(30);
	now_ms = 1700000000000ull;
	for (int i = 0; i < nrep; i++) {
		memset(&reps[i], 0, sizeof reps[i]);
		reps[i].st = mm_state_new();
		reps[i].skew_ms = (int64_t)rn(4000) - 2000;
		/* node ids of any width, some close together */
		uint64_t id = rn(2) ? 0x1000 + (uint64_t)i : rnd();
		mm_clock_init(&reps[i].clk, id, 0);
	}
	bool did_gc = false;
	for (unsigned i = 0; i < ops; i++) {
		now_ms += rn(30);
		one_op((int)rn((unsigned)nrep));
		while (nnet && rn(100) < 50)
			deliver_one();
		if (rn(400) == 0 || (i == ops / 2 && !did_gc)) {
			/* flush, full exchange, then a horizon every replica is past */
			while (nnet)
				deliver_one();
			full_exchange();
			for (int r = 1; r < nrep; r++)
				check_same(U(&reps[0]), U(&reps[r]));
			uint64_t minlast = UINT64_MAX;
			for (int r = 0; r < nrep; r++)
				if (reps[r].clk.last < minlast)
					minlast = reps[r].clk.last;
			mm_hlc h = { minlast - 1, 0 };
			int g = (int)rn((unsigned)nrep);
			struct mm_delta *d = mm_delta_new();
			assert_true(mm_user_gc(U(&reps[g]), h, on_eff, &reps[g], d) >= 0);
			send_delta(g, d);
			mm_delta_free(&d);
			did_gc = true;
		}
	}
	while (nnet && rn(3))
		deliver_one();
	drop_all();
	if (rn(2))
		merkle_exchange();
	else
		full_exchange();
	uint8_t sr0[MM_HASH_LEN], sr[MM_HASH_LEN];
	mm_state_root(reps[0].st, sr0);
	for (int r = 0; r < nrep; r++) {
		mm_state_root(reps[r].st, sr);
		assert_memory_equal(sr0, sr, MM_HASH_LEN);
		check_user(U(&reps[r]), &reps[r]);
		check_same(U(&reps[0]), U(&reps[r]));
	}
	/* idempotence: the state merged into itself changes nothing */
	check_idempotent(U(&reps[0]));
	/* order independence: every record ever shipped, in random orders, duplicated */
	uint8_t hk[MM_KEY_LEN];
	mm_key_horizon(hk);
	for (int t = 0; t < 3; t++) {
		shuffle_log();
		mm_hlc mh = { 0, 0 };
		struct mm_user *v = replay(hk, &mh);
		check_user(v, NULL);
		check_same(U(&reps[0]), v);
		mm_user_free(&v);
	}
	for (int i = 0; i < nrep; i++) {
		mm_state_free(&reps[i].st);
		free(reps[i].m);
	}
	for (size_t i = 0; i < nlog; i++)
		free(logv[i].b);
	nlog = nall = ngone = 0;
}

static void test_prop(void **state)
{
	(void)state;
	for (int i = 0; i < NKW; i++)
		snprintf(kwnames[i], sizeof kwnames[i], i < 3 ? "$kw%02d" : "kw%02d", i);
	const char *s = getenv("MM_PROP_SEED"), *ns = getenv("MM_PROP_SEEDS"), *o = getenv("MM_PROP_OPS");
	unsigned ops = o ? (unsigned)strtoul(o, NULL, 0) : 600;
	if (s) {
		uint64_t seed = strtoull(s, NULL, 0);
		printf("test_crdt_prop: seed %llu\n", (unsigned long long)seed);
		run(seed, ops);
	} else {
		unsigned n = ns ? (unsigned)strtoul(ns, NULL, 0) : 40;
		for (unsigned i = 1; i <= n; i++) {
			printf("test_crdt_prop: seed %u\n", i);
			run(i, ops);
		}
	}
	free(logv);
	free(allkeys);
	free(gone);
	free(net);
	logv = NULL;
	allkeys = gone = NULL;
	net = NULL;
	caplog = capall = capgone = capnet = 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_prop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
