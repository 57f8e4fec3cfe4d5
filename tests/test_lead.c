/*
 * test_lead.c — the gossiped UID-authority election (proto/lead.h): who leads, how a
 * dead node's heartbeat stops counting and cannot circulate forever, the start-up
 * grace, and that every node of a sparsely connected cluster agrees on one leader
 * (the case "no connected lower peer" got wrong), also after the leader dies.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "proto/lead.h"
#include "proto/wire.h"

static struct mm_lead *mk(uint64_t self, uint32_t expire, uint32_t grace, uint64_t now)
{
	struct mm_lead_config c = { .self = self, .expire_ms = expire, .grace_ms = grace };
	struct mm_lead *l = NULL;
	assert_int_equal(mm_lead_new(&c, now, &l), 0);
	return l;
}

static void test_basics(void **state)
{
	(void)state;
	struct mm_lead *l = NULL;
	struct mm_lead_config bad = { .self = 0 };
	assert_int_equal(mm_lead_new(&bad, 0, &l), -EINVAL);
	assert_null(l);

	l = mk(5, 1000, 0, 100);
	uint64_t id, beat;
	mm_lead_view(l, 200, &id, &beat);
	assert_int_equal(id, 5);
	assert_int_equal(beat, 200);
	/* not before it has heard a peer (or expire_ms passed alone) */
	assert_false(mm_lead_is_self(l, 200));
	assert_true(mm_lead_is_self(l, 1100));
	assert_false(mm_lead_observe(l, 0, 500, 200));
	assert_false(mm_lead_is_self(l, 200));
	/* higher ids, ourselves and 0 are ignored (but count as a peer heard) */
	assert_false(mm_lead_observe(l, 9, 500, 200));
	assert_true(mm_lead_is_self(l, 200));
	assert_false(mm_lead_observe(l, 5, 500, 200));
	assert_false(mm_lead_observe(l, 0, 500, 200));
	assert_true(mm_lead_is_self(l, 200));
	/* a lower node with a heartbeat leads */
	assert_true(mm_lead_observe(l, 3, 50, 200));
	assert_int_equal(mm_lead_leader(l, 200), 3);
	assert_false(mm_lead_is_self(l, 200));
	mm_lead_view(l, 300, &id, &beat);
	assert_int_equal(id, 3);
	assert_int_equal(beat, 50);
	/* a still lower one takes over; the view names the lowest */
	assert_true(mm_lead_observe(l, 2, 7, 300));
	assert_int_equal(mm_lead_leader(l, 300), 2);
	/* node 2 stops beating: after expire_ms node 3 (still beating) leads */
	assert_false(mm_lead_observe(l, 3, 60, 1200));
	assert_int_equal(mm_lead_leader(l, 1299), 2);
	assert_int_equal(mm_lead_leader(l, 1300), 3);
	/* node 2's old heartbeat, relayed by a peer that has not expired it, does not
	 * revive it; a newer one does */
	assert_false(mm_lead_observe(l, 2, 7, 1400));
	assert_int_equal(mm_lead_leader(l, 1400), 3);
	assert_true(mm_lead_observe(l, 2, 8, 1500));
	assert_int_equal(mm_lead_leader(l, 1500), 2);
	/* everybody lower gone: this node again */
	assert_true(mm_lead_is_self(l, 5000));
	/* catching up: not the authority, and it stops advertising itself */
	mm_lead_set_eligible(l, false);
	assert_false(mm_lead_is_self(l, 5000));
	mm_lead_view(l, 5000, &id, &beat);
	assert_int_equal(id, 0);
	assert_int_equal(beat, 0);
	mm_lead_set_eligible(l, true);
	assert_true(mm_lead_is_self(l, 5000));
	/* restarted (mm_lead_start): it waits to hear a peer again */
	mm_lead_start(l, 6000);
	assert_false(mm_lead_is_self(l, 6500));
	mm_lead_observe(l, 7, 1, 6500);
	assert_true(mm_lead_is_self(l, 6500));
	/* a clock that goes back keeps the known leader */
	assert_int_equal(mm_lead_leader(l, 10), 2);
	mm_lead_free(&l);
	assert_null(l);
	mm_lead_free(&l);
}

static void test_grace_and_table(void **state)
{
	(void)state;
	struct mm_lead *l = mk(1000, 1000, 500, 100);
	mm_lead_observe(l, 2000, 1, 100);
	assert_false(mm_lead_is_self(l, 100));
	assert_false(mm_lead_is_self(l, 599));
	assert_true(mm_lead_is_self(l, 600));
	/* more lower nodes than the table holds: the lowest are kept */
	for (uint64_t id = 999; id >= 900; id--)
		mm_lead_observe(l, id, 1, 700);
	assert_int_equal(mm_lead_leader(l, 700), 900);
	mm_lead_observe(l, 1, 1, 700);
	assert_int_equal(mm_lead_leader(l, 700), 1);
	assert_int_equal(mm_lead_expire_for(200), 10000);
	assert_int_equal(mm_lead_expire_for(1000), 40000);
	assert_int_equal(mm_lead_expire_for(60000), 600000);
	mm_lead_free(&l);
}

/* ---- a sparse cluster gossiping its views ------------------------------------------- */

#define N 200
#define DEG 6

static uint64_t rng = 0x1ead;
static unsigned rn(unsigned n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned)(rng % n);
}

/* A ring plus random chords: node i's neighbours are not all lower or all higher. */
static unsigned nb[N][DEG];

static void exchange(struct mm_lead **l, bool *up, unsigned a, unsigned b, uint64_t now)
{
	if (!up[a] || !up[b])
		return;
	uint64_t id, beat;
	mm_lead_view(l[a], now, &id, &beat);
	mm_lead_observe(l[b], id, beat, now);
	mm_lead_view(l[b], now, &id, &beat);
	mm_lead_observe(l[a], id, beat, now);
}

static unsigned agree(struct mm_lead **l, bool *up, uint64_t now, uint64_t *leader_r)
{
	unsigned selves = 0;
	*leader_r = 0;
	for (unsigned i = 0; i < N; i++) {
		if (!up[i])
			continue;
		uint64_t x = mm_lead_leader(l[i], now);
		if (*leader_r && x != *leader_r)
			return 0;
		*leader_r = x;
		selves += mm_lead_is_self(l[i], now);
	}
	return selves;
}

static void test_sparse_cluster(void **state)
{
	(void)state;
	struct mm_lead *l[N];
	bool up[N];
	const uint32_t interval = 100, expire = mm_lead_expire_for(interval);
	for (unsigned i = 0; i < N; i++) {
		/* ids in shuffled order around the ring */
		l[i] = mk(1 + (uint64_t)((i * 7919u) % N), expire, 0, 0);
		up[i] = true;
		nb[i][0] = (i + 1) % N;
		nb[i][1] = (i + N - 1) % N;
		for (unsigned k = 2; k < DEG; k++)
			nb[i][k] = rn(N);
	}
	uint64_t now = 0, leader;
	/* within a few dozen intervals every node names node id 1, and only it leads */
	unsigned ticks = 0;
	for (; ticks < 100; ticks++) {
		now += interval;
		for (unsigned i = 0; i < N; i++)
			exchange(l, up, i, nb[i][rn(DEG)], now);
		if (agree(l, up, now, &leader) == 1 && leader == 1)
			break;
	}
	print_message("agreed on the leader after %u intervals\n", ticks + 1);
	assert_true(ticks < 40);
	/* stays so */
	for (unsigned t = 0; t < 200; t++) {
		now += interval;
		for (unsigned i = 0; i < N; i++)
			exchange(l, up, i, nb[i][rn(DEG)], now);
		assert_int_equal(agree(l, up, now, &leader), 1);
		assert_int_equal(leader, 1);
	}
	/* the leader dies: after expire_ms the next lowest leads, alone */
	unsigned dead = 0;
	for (unsigned i = 0; i < N; i++)
		if (mm_lead_is_self(l[i], now))
			dead = i;
	up[dead] = false;
	uint64_t died = now;
	for (unsigned t = 0; t < 3 * expire / interval; t++) {
		now += interval;
		for (unsigned i = 0; i < N; i++)
			exchange(l, up, i, nb[i][rn(DEG)], now);
		unsigned selves = agree(l, up, now, &leader);
		assert_true(selves <= 1 || leader == 0); /* never two authorities that agree */
		if (now - died > expire + 40 * interval) {
			assert_int_equal(selves, 1);
			assert_int_equal(leader, 2);
		}
	}
	for (unsigned i = 0; i < N; i++)
		mm_lead_free(&l[i]);
}

/* A DIGEST of n elements in the wire's form, the first 6 as every version sends them,
 * then n - 6 more integers. */
static void pack_digest(msgpack_packer *pk, unsigned n)
{
	uint8_t root[MM_HASH_LEN] = { 1, 2, 3 };
	msgpack_pack_array(pk, n);
	msgpack_pack_uint8(pk, MM_WIRE_VERSION);
	msgpack_pack_uint8(pk, MM_MSG_DIGEST);
	msgpack_pack_uint64(pk, 9);
	msgpack_pack_false(pk);
	msgpack_pack_bin(pk, MM_HASH_LEN);
	msgpack_pack_bin_body(pk, root, MM_HASH_LEN);
	msgpack_pack_uint64(pk, 2);
	for (unsigned i = 6; i < n; i++)
		msgpack_pack_uint64(pk, i);
}

/* Packs a DIGEST of n elements into the emptied sb and decodes it: mm_wire_decode's
 * return value. */
static int decode_packed(struct mm_wbuf *sb, msgpack_packer *pk, unsigned n, struct mm_wire_msg *m,
                         struct mm_arena *a)
{
	sb->size = 0;
	pack_digest(pk, n);
	return mm_wire_decode((const uint8_t *)sb->data, sb->size, m, a);
}

/* A DIGEST from a sender without the lead fields still decodes (lead 0). */
static void test_digest_without_lead(void **state)
{
	(void)state;
	struct mm_wbuf sb;
	mm_wbuf_init(&sb);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &sb, mm_wbuf_write);
	struct mm_wire_msg m;
	struct mm_arena a;
	mm_arena_init(&a);
	assert_int_equal(decode_packed(&sb, &pk, 6, &m, &a), 0);
	assert_int_equal(m.type, MM_MSG_DIGEST);
	assert_int_equal(m.digest.seq, 9);
	assert_int_equal(m.digest.lead_id, 0);
	assert_int_equal(m.digest.lead_beat, 0);
	assert_int_equal(m.digest.gc_bound, 0);
	/* 8 elements carry them, 10 also the GC bound and members; 7 or 9 is malformed;
	 * more than 10: a later version's fields after those, skipped */
	assert_int_equal(decode_packed(&sb, &pk, 8, &m, &a), 0);
	assert_int_equal(m.digest.lead_id, 6);
	assert_int_equal(m.digest.lead_beat, 7);
	assert_int_equal(m.digest.gc_bound, 0);
	assert_int_equal(decode_packed(&sb, &pk, 10, &m, &a), 0);
	assert_int_equal(m.digest.lead_beat, 7);
	assert_int_equal(m.digest.gc_bound, 8);
	assert_int_equal(m.digest.gc_members, 9);
	assert_int_equal(decode_packed(&sb, &pk, 7, &m, &a), -EBADMSG);
	assert_int_equal(decode_packed(&sb, &pk, 9, &m, &a), -EBADMSG);
	assert_int_equal(decode_packed(&sb, &pk, 11, &m, &a), 0);
	assert_int_equal(m.digest.gc_bound, 8);
	assert_int_equal(m.digest.gc_members, 9);
	/* the encoder writes the short form when it has no view to send */
	sb.size = 0;
	uint8_t root[MM_HASH_LEN] = { 0 };
	assert_int_equal(mm_wire_enc_digest(&sb, 3, true, root, 1, 0, 0, 0, 0), 0);
	size_t short_len = sb.size;
	assert_int_equal(mm_wire_decode((const uint8_t *)sb.data, sb.size, &m, &a), 0);
	assert_int_equal(m.digest.lead_id, 0);
	sb.size = 0;
	assert_int_equal(mm_wire_enc_digest(&sb, 3, true, root, 1, 0x1234567890abcdefull, 1700000000000ull, 0, 0), 0);
	assert_true(sb.size > short_len);
	assert_int_equal(mm_wire_decode((const uint8_t *)sb.data, sb.size, &m, &a), 0);
	assert_int_equal(m.digest.lead_id, 0x1234567890abcdefull);
	assert_int_equal(m.digest.lead_beat, 1700000000000ull);
	assert_int_equal(m.digest.gc_bound, 0);
	/* a GC bound without a lead view: the lead fields go as 0 (none) */
	sb.size = 0;
	assert_int_equal(mm_wire_enc_digest(&sb, 3, true, root, 1, 0, 0, 1690000000000ull, 77), 0);
	assert_int_equal(mm_wire_decode((const uint8_t *)sb.data, sb.size, &m, &a), 0);
	assert_int_equal(m.digest.lead_id, 0);
	assert_int_equal(m.digest.lead_beat, 0);
	assert_int_equal(m.digest.gc_bound, 1690000000000ull);
	assert_int_equal(m.digest.gc_members, 77);
	mm_arena_free(&a);
	mm_wbuf_free(&sb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_basics),
		cmocka_unit_test(test_grace_and_table),
		cmocka_unit_test(test_sparse_cluster),
		cmocka_unit_test(test_digest_without_lead),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
