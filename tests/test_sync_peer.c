/*
 * test_sync_peer.c — one proto/sync session fed by a hand-written authenticated but
 * buggy or hostile peer (messages encoded with proto/wire directly), checking the
 * project rule that what a peer sends cannot make a node's memory or queues grow
 * without bound, nor make it lose or resurrect mail:
 *   - a DESCENT split into endless parts of bitmap elements (no bin bytes) is capped;
 *   - GET_BODY requests piled up while the stream is blocked are capped;
 *   - START/ABORT and START/END loops cannot queue the whole state once per loop;
 *   - a HORIZON record far in the future is not taken (it would drop every
 *     tombstone and make every later local expunge undurable).
 * Heap numbers (glibc mallinfo2) are printed where they show the growth.
 */
#include <errno.h>
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "crdt/crdt.h"
#include "proto/sync.h"
#include "proto/wire.h"

/* ---- the victim's world: one body, an output counter -------------------------- */

static uint8_t body_data[10] = "0123456789";
static uint8_t body_id[MM_ID_LEN];

struct out {
	bool blocked;              /* io.send returns 1 (above the high-water mark) */
	uint64_t msgs[MM_MSG_TYPE_MAX + 1];
	uint64_t bytes;
	uint64_t last_start_round;
	struct mm_arena a;
};

static int o_send(void *arg, enum mm_chan ch, const uint8_t *p, size_t len)
{
	struct out *o = arg;
	(void)ch;
	int t = mm_wire_peek_type(p, len);
	assert_true(t > 0);
	o->msgs[t]++;
	o->bytes += len;
	if (t == MM_MSG_START) {
		struct mm_wire_msg m;
		mm_arena_reset(&o->a);
		assert_int_equal(mm_wire_decode(p, len, &m, &o->a), 0);
		o->last_start_round = m.start.round;
	}
	return ch == MM_CHAN_STREAM && o->blocked ? 1 : 0;
}

static ssize_t b_read(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t off,
                      uint8_t *buf, size_t cap)
{
	(void)arg;
	(void)user;
	if (memcmp(id, body_id, MM_ID_LEN))
		return -ENOENT;
	if (off >= sizeof body_data)
		return 0;
	size_t n = sizeof body_data - off < cap ? sizeof body_data - off : cap;
	memcpy(buf, body_data + off, n);
	return (ssize_t)n;
}

static int b_begin(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size, void **h_r)
{
	(void)arg, (void)user, (void)id, (void)size;
	static char h;
	*h_r = &h;
	return 0;
}
static int b_write(void *h, const uint8_t *d, size_t len) { (void)h, (void)d, (void)len; return 0; }
static int b_commit(void *h) { (void)h; return 0; }
static void b_abort(void *h) { (void)h; }
static int b_have(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	(void)arg, (void)user;
	return !memcmp(id, body_id, MM_ID_LEN);
}

static int n_gc, n_msg_new;
static void eff_count(void *arg, const char *user, enum mm_effect e, const struct mm_rec *r)
{
	(void)arg, (void)user, (void)r;
	n_gc += e == MM_EFF_GC;
	n_msg_new += e == MM_EFF_MSG_NEW;
}

struct victim {
	struct mm_state *st;
	struct mm_clock clk;
	struct mm_sync *s;
	struct out o;
	struct mm_wbuf sb;
};

#define NOW 1800000000000ull /* wall ms of the tests (2027) */

static void victim_init(struct victim *v, size_t users, size_t msgs_each)
{
	memset(v, 0, sizeof *v);
	mm_body_id(body_data, sizeof body_data, body_id);
	v->st = mm_state_new();
	assert_non_null(v->st);
	mm_clock_init(&v->clk, 7, 0);
	mm_arena_init(&v->o.a);
	for (size_t i = 0; i < users; i++) {
		char name[64];
		snprintf(name, sizeof name, "ex.com/u%zu", i);
		struct mm_user *u = mm_state_user(v->st, name, true);
		for (size_t k = 0; k < msgs_each; k++)
			assert_true(mm_user_deliver(u, "INBOX", body_id, sizeof body_data, 1700000000, 0, NULL, 0, 0,
			                            mm_clock_tick(&v->clk, NOW), NULL, NULL, NULL, NULL) >= 0);
	}
	struct mm_sync_config c = {
		.state = v->st, .local_node = 7, .peer_node = 3, /* the peer's round wins ties */
		.io = { o_send, &v->o },
		.body = { b_read, b_begin, b_write, b_commit, b_abort, b_have, NULL },
		.clock = &v->clk,
		.eff = eff_count,
	};
	assert_int_equal(mm_sync_new(&c, &v->s), 0);
	mm_sync_connected(v->s, NOW);
	mm_wbuf_init(&v->sb);
}

static void victim_free(struct victim *v)
{
	mm_sync_free(&v->s);
	mm_state_free(&v->st);
	mm_arena_free(&v->o.a);
	mm_wbuf_free(&v->sb);
}

/* Feeds v->sb as one stream message and clears it. */
static int feed(struct victim *v)
{
	int rc = mm_sync_recv(v->s, MM_CHAN_STREAM, (const uint8_t *)v->sb.data, v->sb.size, NOW);
	v->sb.size = 0;
	return rc;
}

static size_t heap_used(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}

/* ---- DESCENT in endless parts of bitmaps ----------------------------------------- */

/* The receiver caps a multi-part DESCENT at 16 MiB (docs/protocol.md), but counted
 * only bin bytes: a part of 64,000 one-byte bitmap elements (65 KB on the wire) cost
 * 1.5 MB of accumulated elements, and parts with more = true could come for ever
 * (each one also pushed the round's deadline back). */
static void test_descent_bitmap_parts_capped(void **state)
{
	(void)state;
	struct victim v;
	victim_init(&v, 8, 4);
	assert_int_equal(mm_sync_start(v.s, NOW), 0); /* the victim awaits a DESCENT */
	uint64_t round = v.o.last_start_round;
	const size_t per = 64000, parts = 40;
	size_t before = heap_used(), peak = before;
	int rejected = 0;
	size_t at = 0;
	for (size_t i = 0; i < parts && !rejected; i++) {
		assert_int_equal(mm_wire_enc_descent_begin(&v.sb, round, true, per), 0);
		for (size_t k = 0; k < per; k++)
			assert_int_equal(mm_wire_enc_elem_bitmap(&v.sb, 0), 0); /* 1 byte each */
		assert_true(v.sb.size <= MM_WIRE_MAX);
		int rc = feed(&v);
		size_t h = heap_used();
		if (h > peak)
			peak = h;
		if (rc < 0) {
			rejected = rc;
			at = i + 1;
		}
	}
	printf("  %zu parts of %zu bitmap elements (%zu KB in): heap +%zu KB, %s\n", at ? at : parts, per,
	       (at ? at : parts) * 65, (peak - before) / 1024,
	       rejected ? "rejected" : "all accumulated, none rejected");
	assert_true(rejected < 0);              /* the cap applies to every element */
	assert_true(at * per * sizeof(struct mm_wire_elem) <= (16u << 20) + 2 * per * sizeof(struct mm_wire_elem));
	victim_free(&v);
}

/* ---- GET_BODY while the stream is blocked ----------------------------------------- */

/* A peer that asks for bodies and stops reading: every GET_BODY became a queued job
 * (about 700 bytes for a 60-byte request), for as long as the peer kept asking.  The
 * fetch scheduler never has more than max_inflight (64) requests out per peer. */
static void test_get_body_flood_capped(void **state)
{
	(void)state;
	struct victim v;
	victim_init(&v, 1, 1);
	v.o.blocked = true;
	/* one first request so the session sees the stream blocked */
	const size_t n = 100000;
	size_t before = heap_used();
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(mm_wire_enc_get_body(&v.sb, i + 1, "ex.com/u0", body_id, 0, sizeof body_data), 0);
		(void)feed(&v);
	}
	size_t grown = heap_used() - before;
	v.o.blocked = false;
	mm_sync_writable(v.s, NOW);
	printf("  %zu GET_BODY while blocked: heap +%zu KB, then %llu BODY and %llu BODY_ERR sent\n", n,
	       grown / 1024, (unsigned long long)v.o.msgs[MM_MSG_BODY],
	       (unsigned long long)v.o.msgs[MM_MSG_BODY_ERR]);
	/* every request gets an answer, but at most a bounded number were held */
	assert_int_equal(v.o.msgs[MM_MSG_BODY] + v.o.msgs[MM_MSG_BODY_ERR], n);
	assert_true(v.o.msgs[MM_MSG_BODY] <= 4096);
	victim_free(&v);
}

/* ---- round restarts while the stream is blocked ----------------------------------- */

/* START with an empty users summary ("I have no user") makes the victim queue every
 * user's whole tree.  A round aborted (or ended) while those jobs waited behind a
 * blocked stream left them queued, and the next START queued the whole state again:
 * a 40-byte START cost a job per user, and all of it was sent once per loop. */
static void round_loop(bool with_end)
{
	struct victim v;
	const size_t users = 200, loops = 300;
	victim_init(&v, users, 1);
	v.o.blocked = true;
	size_t before = heap_used();
	static const uint8_t nonce[MM_WIRE_NONCE_LEN];
	for (size_t i = 0; i < loops; i++) {
		uint64_t round = 2 * i + 2;
		assert_int_equal(mm_wire_enc_start(&v.sb, round, nonce, NULL, 0), 0);
		(void)feed(&v);
		if (with_end)
			assert_int_equal(mm_wire_enc_end(&v.sb, round), 0);
		else
			assert_int_equal(mm_wire_enc_abort(&v.sb, round, -ECANCELED), 0);
		(void)feed(&v);
	}
	size_t grown = heap_used() - before;
	v.o.blocked = false;
	mm_sync_writable(v.s, NOW);
	const struct mm_sync_stats *st = mm_sync_stats(v.s);
	printf("  %zu START/%s loops while blocked: heap +%zu KB, then %llu records sent (state: %zu)\n",
	       loops, with_end ? "END" : "ABORT", grown / 1024, (unsigned long long)st->records_out, 2 * users);
	/* each user holds a folder and a message: the whole state is 2 * users records */
	assert_true(st->records_out <= 2 * 2 * users);
	victim_free(&v);
}

static void test_round_abort_loop_capped(void **state)
{
	(void)state;
	round_loop(false);
}

static void test_round_end_loop_capped(void **state)
{
	(void)state;
	round_loop(true);
}

/* ---- a HORIZON from the future ---------------------------------------------------- */

/* The horizon is a max register that every node adopts, and tombstones stamped
 * before it are dropped (and, arriving or made later, not stored).  One peer that
 * sends a HORIZON in the future (a clock years ahead, a bug) made the victim drop
 * every tombstone at once and made each expunge it did afterwards undurable: the
 * message came back from any replica that had missed the push. */
static void test_future_horizon_refused(void **state)
{
	(void)state;
	struct victim v;
	victim_init(&v, 0, 0);
	const char *user = "ex.com/alice";
	struct mm_user *u = mm_state_user(v.st, user, true);
	uint8_t k_old[MM_KEY_LEN], k_new[MM_KEY_LEN];
	struct mm_delta *d = mm_delta_new();
	/* an old message expunged a week ago: its tombstone must stay (30-day grace) */
	assert_true(mm_user_deliver(u, "INBOX", body_id, sizeof body_data, 1700000000, 0, NULL, 0, 0,
	                            mm_clock_tick(&v.clk, NOW - 8 * 86400000ull), k_old, NULL, NULL, NULL) >= 0);
	assert_int_equal(mm_user_expunge(u, k_old, mm_clock_tick(&v.clk, NOW - 7 * 86400000ull), NULL, NULL, NULL), 1);
	/* a live message, as some other replica holds it too */
	assert_true(mm_user_deliver(u, "INBOX", body_id, sizeof body_data, 1700000000, 0, NULL, 0, 0,
	                            mm_clock_tick(&v.clk, NOW), k_new, NULL, NULL, d) >= 0);
	const struct mm_rec *live = NULL;
	for (size_t i = 0; i < mm_delta_count(d); i++) {
		const char *un;
		const struct mm_rec *r = mm_delta_get(d, i, &un);
		if (r->type == MM_REC_MESSAGE)
			live = r;
	}
	assert_non_null(live);

	/* the peer pushes a HORIZON ten years ahead */
	struct mm_rec h;
	memset(&h, 0, sizeof h);
	h.type = MM_REC_HORIZON;
	mm_key_horizon(h.key);
	h.horizon.stamp = (mm_hlc){ (NOW + 3650 * 86400000ull) << MM_HLC_LOGICAL_BITS, 3 };
	n_gc = 0;
	assert_int_equal(mm_wire_enc_records_begin(&v.sb, MM_RECORDS_PUSH, user, 1), 0);
	assert_int_equal(mm_wire_enc_rec(&v.sb, &h, NULL, 0), 0);
	assert_int_equal(feed(&v), 0);
	int gc_at_once = n_gc;

	/* the user expunges the live message here; a replica that missed the push then
	 * sends its copy of the message (anti-entropy) */
	assert_int_equal(mm_user_expunge(u, k_new, mm_clock_tick(&v.clk, NOW + 1000), NULL, NULL, NULL), 1);
	n_msg_new = 0;
	assert_int_equal(mm_wire_enc_records_begin(&v.sb, 0, user, 1), 0);
	assert_int_equal(mm_wire_enc_rec(&v.sb, live, NULL, 0), 0);
	assert_int_equal(feed(&v), 0);
	const struct mm_rec *r = mm_user_get(u, k_new);
	int now_type = r ? (int)r->type : 0;
	bool old_kept = mm_user_get(u, k_old) != NULL;
	printf("  future HORIZON: %d tombstone(s) dropped at once; old tombstone %s; expunged message %s\n",
	       gc_at_once, old_kept ? "kept" : "gone", now_type == MM_REC_MESSAGE ? "came back" : "stays expunged");
	assert_int_equal(gc_at_once, 0);
	assert_true(old_kept);
	assert_int_equal(n_msg_new, 0);
	assert_int_equal(now_type, MM_REC_EXPUNGED);
	mm_delta_free(&d);
	victim_free(&v);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_descent_bitmap_parts_capped),
		cmocka_unit_test(test_get_body_flood_capped),
		cmocka_unit_test(test_round_abort_loop_capped),
		cmocka_unit_test(test_round_end_loop_capped),
		cmocka_unit_test(test_future_horizon_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
