/*
 * test_crdt_slot.c — records whose fields do not fit crdt/user.c's compact slot
 * come back unchanged: message sizes and INTERNALDATEs at and past 32 bits, negative
 * and extreme dates, stamp node ids 0 and UINT64_MAX, and more distinct node ids
 * than the per-user node table indexes (70,000).  Every record is checked through
 * each way it can be read back (mm_user_get, foreach, the canonical encoding, the
 * Merkle root and children) against the record that went in, built independently
 * of the state: a slot that lost or changed a bit would change a leaf hash, and
 * replicas with different slot layouts would no longer converge.
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
#include "crdt/uid.h"

static mm_hlc H(uint64_t t, uint64_t node)
{
	return (mm_hlc){ t, node };
}

static const uint64_t sizes[] = {
	0, 1, 1000, 0xfffffffeull, 0xffffffffull, 0x100000000ull, 0x100000001ull,
	1ull << 63, UINT64_MAX,
};

static const int64_t idates[] = {
	INT64_MIN, INT64_MIN + 1, -(1ll << 31) - 1, -(1ll << 31), -1, 0, 1, 1700000000,
	(1ll << 31) - 1, 1ll << 31, 0xfffffffell, 0xffffffffll, 1ll << 32, INT64_MAX - 1, INT64_MAX,
};

static const uint64_t nodes[] = {
	0, 1, 2, 0xfffe, 0xffff, 0x10000, 0xffffffffull, 1ull << 63, UINT64_MAX - 1, UINT64_MAX,
};

#define N_SIZES (sizeof sizes / sizeof sizes[0])
#define N_IDATES (sizeof idates / sizeof idates[0])
#define N_NODES (sizeof nodes / sizeof nodes[0])

/* ---- checking a user against the records that should be in it ------------------- */

/* Encoding of r: must equal, byte for byte, the encoding of what went in. */
static void assert_same_rec(const struct mm_rec *got, const struct mm_rec *want)
{
	uint8_t a[4096], b[4096];
	ssize_t na = mm_rec_encode(got, a, sizeof a), nb = mm_rec_encode(want, b, sizeof b);
	assert_true(na > 0);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, (size_t)na);
	assert_true(mm_rec_equal(got, want));
	uint8_t ha[MM_HASH_LEN], hb[MM_HASH_LEN];
	mm_rec_hash(got, ha);
	mm_rec_hash(want, hb);
	assert_memory_equal(ha, hb, MM_HASH_LEN);
	/* the fields the encoding carries, one by one, so a failure says which */
	assert_int_equal(got->type, want->type);
	if (want->type == MM_REC_MESSAGE) {
		assert_true(got->msg.size == want->msg.size);
		assert_true(got->msg.internaldate == want->msg.internaldate);
		assert_true(got->msg.created.t == want->msg.created.t);
		assert_true(got->msg.created.node == want->msg.created.node);
		assert_true(got->msg.uid_value == want->msg.uid_value);
		assert_true(got->msg.uid_need == want->msg.uid_need);
		/* a decoded copy is the same record again */
		struct mm_arena ar;
		struct mm_rec d;
		mm_arena_init(&ar);
		assert_int_equal(mm_rec_decode(a, (size_t)na, &d, &ar), 0);
		assert_true(d.msg.size == want->msg.size && d.msg.internaldate == want->msg.internaldate);
		assert_true(mm_rec_equal(&d, want));
		mm_arena_free(&ar);
	}
}

struct fe {
	const struct mm_user *u;
	size_t n;
	uint8_t x[MM_HASH_LEN];
};

/* Every record foreach hands out is the one mm_user_get gives for its key. */
static int fe_one(void *arg, const struct mm_rec *r)
{
	struct fe *f = arg;
	const struct mm_rec *g = mm_user_get(f->u, r->key);
	uint8_t h[MM_HASH_LEN];
	assert_non_null(g);
	assert_same_rec(r, g);
	mm_rec_hash(r, h);
	for (int i = 0; i < MM_HASH_LEN; i++)
		f->x[i] ^= h[i];
	f->n++;
	return 0;
}

/* Expected content of a user: a generator of its n records (gen(i, buf) fills a
 * record that may point into buf). */
struct want {
	size_t n;
	void (*gen)(size_t i, struct mm_rec *r, struct mm_kwreg *kw, void *ctx);
	void *ctx;
};

static void check_user(const struct mm_user *u, const struct want *w)
{
	uint8_t x[MM_HASH_LEN] = { 0 }, root[MM_HASH_LEN];
	for (size_t i = 0; i < w->n; i++) {
		struct mm_rec r;
		struct mm_kwreg kw[8];
		w->gen(i, &r, kw, w->ctx);
		const struct mm_rec *g = mm_user_get(u, r.key);
		assert_non_null(g);
		assert_same_rec(g, &r);
		uint8_t h[MM_HASH_LEN];
		mm_rec_hash(&r, h);
		for (int j = 0; j < MM_HASH_LEN; j++)
			x[j] ^= h[j];
	}
	assert_int_equal(mm_user_count(u), w->n);
	/* the incremental root is the XOR of the leaf hashes of what went in */
	mm_user_root(u, root);
	assert_memory_equal(root, x, MM_HASH_LEN);
	struct fe f = { u, 0, { 0 } };
	assert_int_equal(mm_user_foreach(u, NULL, 0, fe_one, &f), 0);
	assert_int_equal(f.n, w->n);
	assert_memory_equal(f.x, x, MM_HASH_LEN);
	/* cached and computed tree nodes agree with foreach */
	uint8_t p[MM_KEY_LEN] = { 0x5a, 0xa5, 0x3c };
	for (unsigned d = 0; d < 7; d++)
		check_children(u, p, d);
}

static void merge_all(struct mm_user *u, const struct want *w)
{
	for (size_t i = 0; i < w->n; i++) {
		struct mm_rec r;
		struct mm_kwreg kw[8];
		w->gen(i, &r, kw, w->ctx);
		assert_int_equal(mm_user_merge(u, &r, NULL, NULL), 1);
	}
}

/* ---- every extreme, with every kind of register beside it ------------------------ */

static const char *kwn[] = { "$Junk", "$NotJunk", "work" };

/* Message i: one (size, internaldate) pair of the tables, created by one of the
 * extreme nodes, with registers of every kind: written at creation (kept as bits),
 * written later by other extreme nodes (kept as entries), uid, need, keywords. */
static void gen_msg(size_t i, struct mm_rec *r, struct mm_kwreg *kw, void *ctx)
{
	(void)ctx;
	memset(r, 0, sizeof *r);
	r->type = MM_REC_MESSAGE;
	/* the zero stamp, and t at the extremes too */
	uint64_t t = i == 0 ? 0 : i == 1 ? UINT64_MAX : 1000 + i;
	r->msg.created = H(t, nodes[i % N_NODES]);
	mm_key_message(&r->msg.created, r->key);
	memset(r->msg.body, (int)(i * 7), MM_ID_LEN);
	r->msg.body[0] = (uint8_t)i;
	r->msg.folder = i % 3 ? "INBOX" : "Archive.2024";
	r->msg.size = sizes[i % N_SIZES];
	r->msg.internaldate = idates[(i / N_SIZES) % N_IDATES];
	unsigned v = (unsigned)(i * 2654435761u >> 8);
	if (t) { /* a register stamped {0,0} is "never written" */
		for (int f = 0; f < MM_FLAG_COUNT; f++) {
			switch ((v >> (2 * f)) & 3) {
			case 0: break;
			case 1: r->msg.flags[f] = (struct mm_reg){ 1, r->msg.created }; break;
			case 2: r->msg.flags[f] = (struct mm_reg){ (uint8_t)(f & 1), H(5 + f, nodes[(i + f) % N_NODES]) }; break;
			case 3: r->msg.flags[f] = (struct mm_reg){ 0, r->msg.created }; break;
			}
		}
		if (v & (1u << 12)) {
			r->msg.uid = (struct mm_reg){ 0, (v & (1u << 13)) ? r->msg.created : H(77, nodes[(i + 3) % N_NODES]) };
			r->msg.uid_value = (v & (1u << 14)) ? UINT32_MAX : 1 + (uint32_t)i;
		}
	}
	if (v & (1u << 15))
		r->msg.uid_need = (v & (1u << 16)) ? UINT32_MAX : 2 + (uint32_t)i;
	size_t n = 0;
	for (unsigned k = 0; k < 3; k++)
		if (v & (1u << (17 + k)))
			kw[n++] = (struct mm_kwreg){ kwn[k], { (uint8_t)(k != 1), k == 2 && t ? r->msg.created : H(9, nodes[(i + k) % N_NODES]) } };
	r->msg.n_keywords = n;
	r->msg.keywords = n ? kw : NULL;
}

#define N_MSG (N_SIZES * N_IDATES * 2)

/* Tombstones, folders and the horizon stamped by the extreme nodes, after the
 * messages. */
static void gen_all(size_t i, struct mm_rec *r, struct mm_kwreg *kw, void *ctx)
{
	static const char *fnames[] = { "INBOX", "Archive.2024", "Sent", "Drafts", "Trash", "Junk", "Lists.a", "Lists.b",
	                                "Lists.c", "Lists.d", "Lists.e" };
	if (i < N_MSG)
		return gen_msg(i, r, kw, ctx);
	i -= N_MSG;
	memset(r, 0, sizeof *r);
	if (i < 2 * N_NODES) { /* tombstones of keys never seen as messages */
		mm_hlc c = H(500000 + i, nodes[(i + 1) % N_NODES]);
		r->type = MM_REC_EXPUNGED;
		mm_key_message(&c, r->key);
		r->tomb.stamp = i < N_NODES ? H(i == 0 ? 0 : 1000 + i, nodes[i]) : H(UINT64_MAX - i, nodes[i - N_NODES]);
		return;
	}
	i -= 2 * N_NODES;
	if (i < N_NODES + 1) { /* folders: exists, subscribed, explicit UIDVALIDITY */
		r->type = MM_REC_FOLDER;
		r->folder.name = fnames[i];
		mm_key_folder(r->folder.name, r->key);
		if (i != 3) /* Drafts: only subscribed, so the exists stamp is {0,0} */
			r->folder.exists = (struct mm_reg){ (uint8_t)(i & 1), H(i == 4 ? UINT64_MAX : 20 + i, nodes[i % N_NODES]) };
		if (i % 3)
			r->folder.subscribed = (struct mm_reg){ (uint8_t)(i & 2) >> 1, H(30 + i, nodes[(N_NODES - 1 - i) % N_NODES]) };
		r->folder.uidvalidity = mm_folder_uidvalidity(r->folder.exists.stamp);
		if (i % 4 == 2 && i != 3) /* a Dovecot-made UIDVALIDITY */
			r->folder.uidvalidity ^= 0x5a5a5a5a;
		return;
	}
	/* the horizon: below every tombstone above (t 0 ones are equal, node decides) */
	r->type = MM_REC_HORIZON;
	mm_key_horizon(r->key);
	r->horizon.stamp = H(0, 0);
}

#define N_ALL (N_MSG + 3 * N_NODES + 2)

static void test_extremes(void **state)
{
	(void)state;
	struct want w = { N_ALL, gen_all, NULL };
	struct mm_user *u = mm_user_new("example.org/x");
	assert_non_null(u);
	merge_all(u, &w);
	check_user(u, &w);
	/* merging everything again changes nothing */
	for (size_t i = 0; i < w.n; i++) {
		struct mm_rec r;
		struct mm_kwreg kw[8];
		gen_all(i, &r, kw, NULL);
		assert_int_equal(mm_user_merge(u, &r, NULL, NULL), 0);
	}
	check_user(u, &w);
	/* enough records to split the buckets (the tree grows, slots are copied) */
	assert_true(N_ALL > 32);
	mm_user_free(&u);
}

/* ---- a state built in another order is the same state ----------------------------- */

static void test_extremes_reversed(void **state)
{
	(void)state;
	struct want w = { N_ALL, gen_all, NULL };
	struct mm_user *a = mm_user_new("example.org/x"), *b = mm_user_new("example.org/x");
	merge_all(a, &w);
	for (size_t i = w.n; i-- > 0;) {
		struct mm_rec r;
		struct mm_kwreg kw[8];
		gen_all(i, &r, kw, NULL);
		assert_int_equal(mm_user_merge(b, &r, NULL, NULL), 1);
	}
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	mm_user_root(a, ra);
	mm_user_root(b, rb);
	assert_memory_equal(ra, rb, MM_HASH_LEN);
	check_user(b, &w);
	mm_user_free(&a);
	mm_user_free(&b);
}

/* ---- changes to a record whose fields are kept outside its slot -------------------- */

struct effs {
	int n[MM_EFF_GC + 1];
	uint64_t last_size;
	int64_t last_idate;
	uint64_t last_node;
};

static void on_eff(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	struct effs *e = arg;
	(void)user;
	e->n[eff]++;
	if (rec->type == MM_REC_MESSAGE) {
		e->last_size = rec->msg.size;
		e->last_idate = rec->msg.internaldate;
		e->last_node = rec->msg.created.node;
	}
}

static void test_changes_keep_wide(void **state)
{
	(void)state;
	const uint64_t wide_node = UINT64_MAX;
	uint8_t body[MM_ID_LEN], key[MM_KEY_LEN];
	const char *kws[] = { "work" };
	memset(body, 0xab, sizeof body);
	struct mm_user *u = mm_user_new("example.org/w");
	struct effs e = { 0 };
	mm_hlc c = H(100, wide_node);
	assert_int_equal(mm_user_deliver(u, "INBOX", body, 1ull << 32, -5, 1u << MM_FLAG_SEEN, kws, 1, 7, c, key,
	                                 on_eff, &e, NULL),
	                 1);
	assert_int_equal(e.n[MM_EFF_MSG_NEW], 1);
	assert_true(e.last_size == 1ull << 32 && e.last_idate == -5 && e.last_node == wide_node);

	/* the record as it should be after each change, built by hand */
	struct mm_kwreg kw[2] = { { "flagged2", { 1, H(103, 0) } }, { "work", { 1, c } } };
	struct mm_rec want;
	memset(&want, 0, sizeof want);
	want.type = MM_REC_MESSAGE;
	memcpy(want.key, key, MM_KEY_LEN);
	memcpy(want.msg.body, body, MM_ID_LEN);
	want.msg.folder = "INBOX";
	want.msg.size = 1ull << 32;
	want.msg.internaldate = -5;
	want.msg.created = c;
	want.msg.flags[MM_FLAG_SEEN] = (struct mm_reg){ 1, c };
	want.msg.uid = (struct mm_reg){ 0, c };
	want.msg.uid_value = 7;
	want.msg.n_keywords = 1;
	want.msg.keywords = &kw[1];
	assert_same_rec(mm_user_get(u, key), &want);

	assert_int_equal(mm_user_set_flag(u, key, MM_FLAG_FLAGGED, true, H(101, 1), on_eff, &e, NULL), 1);
	want.msg.flags[MM_FLAG_FLAGGED] = (struct mm_reg){ 1, H(101, 1) };
	assert_same_rec(mm_user_get(u, key), &want);
	assert_true(e.last_size == 1ull << 32 && e.last_idate == -5 && e.last_node == wide_node);

	assert_int_equal(mm_user_set_flag(u, key, MM_FLAG_SEEN, false, H(102, UINT64_MAX - 1), on_eff, &e, NULL), 1);
	want.msg.flags[MM_FLAG_SEEN] = (struct mm_reg){ 0, H(102, UINT64_MAX - 1) };
	assert_same_rec(mm_user_get(u, key), &want);

	assert_int_equal(mm_user_set_keyword(u, key, "flagged2", true, H(103, 0), on_eff, &e, NULL), 1);
	want.msg.n_keywords = 2;
	want.msg.keywords = kw;
	assert_same_rec(mm_user_get(u, key), &want);

	assert_int_equal(mm_user_set_uid(u, key, UINT32_MAX, H(104, 5), on_eff, &e, NULL), 1);
	want.msg.uid = (struct mm_reg){ 0, H(104, 5) };
	want.msg.uid_value = UINT32_MAX;
	assert_same_rec(mm_user_get(u, key), &want);

	assert_int_equal(mm_user_uid_need(u, key, 9, on_eff, &e, NULL), 1);
	want.msg.uid_need = 9;
	assert_same_rec(mm_user_get(u, key), &want);
	assert_int_equal(mm_user_uid_top(u, "INBOX"), UINT32_MAX);
	assert_true(mm_user_folder_visible(u, "INBOX"));

	/* the same key with disagreeing immutable fields (a forged or buggy record): the
	 * larger tuple wins, so a size just below 2^32 loses and 2^63 wins, whatever the
	 * order they come in */
	struct mm_rec other = want;
	other.msg.size = 0xffffffffull;
	assert_int_equal(mm_user_merge(u, &other, on_eff, &e), 0);
	assert_same_rec(mm_user_get(u, key), &want);
	other.msg.size = 1ull << 63;
	other.msg.internaldate = INT64_MIN;
	int ex = e.n[MM_EFF_MSG_EXPUNGED];
	assert_int_equal(mm_user_merge(u, &other, on_eff, &e), 1);
	assert_int_equal(e.n[MM_EFF_MSG_EXPUNGED], ex + 1);
	assert_true(e.last_size == 1ull << 63 && e.last_idate == INT64_MIN && e.last_node == wide_node);
	assert_same_rec(mm_user_get(u, key), &other);
	/* and the older one, merged again, changes nothing */
	assert_int_equal(mm_user_merge(u, &want, on_eff, &e), 0);
	assert_same_rec(mm_user_get(u, key), &other);

	/* the expunge keeps the creator's node out of the slot too */
	assert_int_equal(mm_user_expunge(u, key, H(200, wide_node), on_eff, &e, NULL), 1);
	const struct mm_rec *t = mm_user_get(u, key);
	assert_int_equal(t->type, MM_REC_EXPUNGED);
	assert_true(t->tomb.stamp.t == 200 && t->tomb.stamp.node == wide_node);
	/* GC: the horizon's node decides at an equal t */
	assert_int_equal(mm_user_gc(u, H(200, wide_node - 1), NULL, NULL, NULL), 0);
	assert_non_null(mm_user_get(u, key));
	assert_int_equal(mm_user_gc(u, H(200, wide_node), NULL, NULL, NULL), 0);
	assert_non_null(mm_user_get(u, key));
	assert_int_equal(mm_user_gc(u, H(201, 0), NULL, NULL, NULL), 1);
	assert_null(mm_user_get(u, key));
	mm_user_free(&u);
}

/* ---- more node ids than a small index holds ------------------------------------------ */

#define MANY 70000

/* Distinct node ids: 0, UINT64_MAX, and 69,998 spread over the whole range. */
static uint64_t many_node(size_t i)
{
	if (i == 0)
		return 0;
	if (i == 1)
		return UINT64_MAX;
	return (uint64_t)i * 0x9e3779b97f4a7c15ull;
}

/* Phase 0: message i created by node i.  Phase 1: a flag of each set by node i+1,
 * every 7th expunged by node i+2, and a folder per 1000 created by node i. */
static void gen_many(size_t i, struct mm_rec *r, struct mm_kwreg *kw, void *ctx)
{
	int phase = *(int *)ctx;
	(void)kw;
	memset(r, 0, sizeof *r);
	if (i >= MANY) {
		static char fname[MANY / 1000][24];
		size_t f = i - MANY;
		snprintf(fname[f], sizeof fname[f], "F%zu", f);
		r->type = MM_REC_FOLDER;
		r->folder.name = fname[f];
		mm_key_folder(r->folder.name, r->key);
		r->folder.exists = (struct mm_reg){ 1, H(3, many_node(f * 1000 + 999)) };
		r->folder.subscribed = (struct mm_reg){ 1, H(4, many_node(f * 1000 + 998)) };
		r->folder.uidvalidity = mm_folder_uidvalidity(r->folder.exists.stamp);
		return;
	}
	mm_hlc c = H(1000 + i, many_node(i));
	if (phase && i % 7 == 0) {
		r->type = MM_REC_EXPUNGED;
		mm_key_message(&c, r->key);
		r->tomb.stamp = H(2000000 + i, many_node((i + 2) % MANY));
		return;
	}
	r->type = MM_REC_MESSAGE;
	r->msg.created = c;
	mm_key_message(&c, r->key);
	memset(r->msg.body, (int)i, MM_ID_LEN);
	memcpy(r->msg.body, &i, sizeof i);
	r->msg.folder = "INBOX";
	r->msg.size = i % 2 ? 1000 + i : (1ull << 32) + i;
	r->msg.internaldate = i % 3 ? 1600000000 + (int64_t)i : -(int64_t)i;
	r->msg.flags[MM_FLAG_SEEN] = (struct mm_reg){ 1, c };
	r->msg.uid = (struct mm_reg){ 0, c };
	r->msg.uid_value = (uint32_t)i + 1;
	if (phase)
		r->msg.flags[MM_FLAG_FLAGGED] = (struct mm_reg){ 1, H(1000000 + i, many_node((i + 1) % MANY)) };
}

static void test_many_nodes(void **state)
{
	(void)state;
	int phase = 0;
	struct want w = { MANY + MANY / 1000, gen_many, &phase };
	struct mm_user *u = mm_user_new("example.org/many");
	assert_non_null(u);
	merge_all(u, &w);
	check_user(u, &w);
	/* later changes stamped by other nodes; merged as records, like from a peer */
	phase = 1;
	for (size_t i = 0; i < MANY; i++) {
		struct mm_rec r;
		gen_many(i, &r, NULL, &phase);
		assert_int_equal(mm_user_merge(u, &r, NULL, NULL), 1);
	}
	check_user(u, &w);
	/* a second user holding the same records in another order has the same root */
	struct mm_user *v = mm_user_new("example.org/many");
	for (size_t i = w.n; i-- > 0;) {
		struct mm_rec r;
		gen_many(i, &r, NULL, &phase);
		assert_int_equal(mm_user_merge(v, &r, NULL, NULL), 1);
	}
	check_user(v, &w);
	mm_user_free(&v);
	mm_user_free(&u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_extremes),
		cmocka_unit_test(test_extremes_reversed),
		cmocka_unit_test(test_changes_keep_wide),
		cmocka_unit_test(test_many_nodes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
