/*
 * test_link.c — unit tests of proto/link: who dials, the datagram's node-id header
 * (round trip, the UDP size limit, short and forged packets), reassembly of stream
 * messages from hostile chunks, and when an incoming connection counts as confirmed.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "proto/link.h"
#include "proto/wire.h"
#include "tests/ch_pair.h"

/* ---- who dials ---------------------------------------------------------------------- */

static void test_dials(void **state)
{
	(void)state;
	uint8_t lo[32] = { 0 }, hi[32] = { 0 };
	lo[31] = 1;
	hi[0] = 1; /* byte order, not a number's: hi sorts above lo */
	assert_true(mm_link_dials(lo, hi));
	assert_false(mm_link_dials(hi, lo));
	assert_false(mm_link_dials(lo, lo));
}

/* ---- datagrams ---------------------------------------------------------------------- */

static void test_dgram_round_trip(void **state)
{
	(void)state;
	struct chp_pair p;
	chp_init(&p, 1000, 0);
	chp_handshake(&p, 1000);
	static uint8_t pkt[MM_CH_UDP_MAX], plain[MM_CH_UDP_MAX];
	const uint8_t msg[] = "digest";
	size_t n = 0, m = 0;
	uint64_t id = 0;
	assert_int_equal(mm_link_dgram_seal(p.a.ch, 0x0102030405060708ULL, msg, sizeof msg, pkt, sizeof pkt, &n), 0);
	assert_int_equal(n, MM_CH_DGRAM_PREFIX + sizeof msg + MM_CH_DGRAM_OVERHEAD);
	const uint8_t want[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	assert_memory_equal(pkt, want, 8);
	assert_int_equal(mm_link_dgram_sender(pkt, n, &id), 0);
	assert_true(id == 0x0102030405060708ULL);
	assert_int_equal(mm_link_dgram_open(p.b.ch, pkt, n, plain, sizeof plain, &m), 0);
	assert_int_equal(m, sizeof msg);
	assert_memory_equal(plain, msg, sizeof msg);
	/* the same again: a replay */
	assert_int_equal(mm_link_dgram_open(p.b.ch, pkt, n, plain, sizeof plain, &m), -EALREADY);
	/* the id is not authenticated, but the rest is: a flipped byte after it fails */
	assert_int_equal(mm_link_dgram_seal(p.a.ch, 1, msg, sizeof msg, pkt, sizeof pkt, &n), 0);
	pkt[n - 1] ^= 1;
	assert_int_equal(mm_link_dgram_open(p.b.ch, pkt, n, plain, sizeof plain, &m), -EBADMSG);
	/* nothing after the id, or not even the id */
	assert_int_equal(mm_link_dgram_sender(pkt, MM_CH_DGRAM_PREFIX, &id), -EBADMSG);
	assert_int_equal(mm_link_dgram_sender(pkt, 3, &id), -EBADMSG);
	assert_int_equal(mm_link_dgram_open(p.b.ch, pkt, MM_CH_DGRAM_PREFIX, plain, sizeof plain, &m), -EBADMSG);
	chp_free(&p);
}

static void test_dgram_limits(void **state)
{
	(void)state;
	struct chp_pair p;
	chp_init(&p, 1000, 0);
	chp_handshake(&p, 1000);
	static uint8_t msg[MM_CH_DGRAM_MAX_PLAIN + 1], pkt[MM_CH_UDP_MAX + 64], plain[MM_CH_UDP_MAX];
	size_t n = 0, m = 0;
	/* one byte over the payload limit: refused, no counter spent */
	assert_int_equal(mm_link_dgram_seal(p.a.ch, 9, msg, sizeof msg, pkt, sizeof pkt, &n), -EMSGSIZE);
	/* the largest fits UDP exactly */
	assert_int_equal(mm_link_dgram_seal(p.a.ch, 9, msg, MM_CH_DGRAM_MAX_PLAIN, pkt, sizeof pkt, &n), 0);
	assert_int_equal(n, MM_CH_UDP_MAX);
	assert_int_equal(mm_link_dgram_open(p.b.ch, pkt, n, plain, sizeof plain, &m), 0);
	assert_int_equal(m, MM_CH_DGRAM_MAX_PLAIN);
	assert_int_equal(mm_ch_stats(p.b.ch)->dgram_ok, 1);
	/* an output buffer one byte short */
	assert_int_equal(mm_link_dgram_seal(p.a.ch, 9, msg, 10, pkt, MM_CH_DGRAM_PREFIX + 10 + MM_CH_DGRAM_OVERHEAD - 1, &n),
	                 -EMSGSIZE);
	/* a channel not established yet */
	assert_int_equal(mm_link_dgram_seal(NULL, 9, msg, 10, pkt, sizeof pkt, &n), -EINVAL);
	chp_free(&p);
}

/* ---- reassembly ---------------------------------------------------------------------- */

static struct mm_ch_chunk chunk(const uint8_t *d, size_t len, uint64_t off, uint64_t total, int first, int last)
{
	struct mm_ch_chunk k = { d, len, off, total, first, last };
	return k;
}

static void test_rx_messages(void **state)
{
	(void)state;
	struct mm_link_rx rx;
	assert_int_equal(mm_link_rx_init(&rx, 0), 0);
	const uint8_t *msg = NULL;
	size_t len = 0;
	uint8_t data[300];
	for (size_t i = 0; i < sizeof data; i++)
		data[i] = (uint8_t)i;
	/* one chunk: handed over as it is, nothing allocated */
	struct mm_ch_chunk k = chunk(data, 10, 0, 10, 1, 1);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 1);
	assert_ptr_equal(msg, data);
	assert_int_equal(len, 10);
	assert_null(rx.buf);
	/* three chunks */
	k = chunk(data, 100, 0, 300, 1, 0);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 0);
	k = chunk(data + 100, 150, 100, 300, 0, 0);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 0);
	k = chunk(data + 250, 50, 250, 300, 0, 1);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 1);
	assert_int_equal(len, 300);
	assert_memory_equal(msg, data, 300);
	assert_int_equal(rx.used, 300);
	/* an empty message */
	k = chunk(data, 0, 0, 0, 1, 1);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 1);
	assert_int_equal(len, 0);
	mm_link_rx_release(&rx);
	assert_null(rx.buf);
	assert_int_equal(rx.cap, 0);
	mm_link_rx_release(NULL);
	mm_link_rx_reset(NULL);
	/* reserved up front (the daemon's way) */
	assert_int_equal(mm_link_rx_init(&rx, MM_WIRE_MAX), 0);
	assert_non_null(rx.buf);
	k = chunk(data, 100, 0, 200, 1, 0);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 0);
	k = chunk(data + 100, 100, 100, 200, 0, 1);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 1);
	assert_int_equal(len, 200);
	assert_memory_equal(msg, data, 200);
	mm_link_rx_release(&rx);
}

static void test_rx_hostile(void **state)
{
	(void)state;
	struct mm_link_rx rx;
	assert_int_equal(mm_link_rx_init(&rx, 0), 0);
	const uint8_t *msg = NULL;
	size_t len = 0;
	uint8_t data[64] = { 0 };
	/* a length from the wire beyond the largest message: refused before any allocation */
	struct mm_ch_chunk k = chunk(data, 10, 0, UINT64_MAX, 1, 0);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), -EMSGSIZE);
	k = chunk(data, 10, 0, (uint64_t)MM_WIRE_MAX + 1, 1, 0);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), -EMSGSIZE);
	assert_null(rx.buf);
	/* a continuation with no message open */
	k = chunk(data, 10, 0, 20, 0, 0);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), -EPROTO);
	/* a first chunk claiming more than its total, or one that does not start at 0 */
	k = chunk(data, 30, 0, 20, 1, 0);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), -EPROTO);
	k = chunk(data, 5, 3, 20, 1, 0);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), -EPROTO);
	/* a one-chunk message whose length is not its total */
	k = chunk(data, 5, 0, 20, 1, 1);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), -EPROTO);
	/* each bad continuation of an open message, after a good start */
	struct mm_ch_chunk bad[] = {
		chunk(data, 10, 5, 40, 0, 0),  /* a gap */
		chunk(data, 10, 10, 41, 0, 0), /* another total */
		chunk(data, 31, 10, 40, 0, 1), /* beyond the total */
		chunk(data, 10, 10, 40, 0, 1), /* last before the total */
		chunk(data, 30, 10, 40, 0, 0), /* the total reached but not last */
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		k = chunk(data, 10, 0, 40, 1, 0);
		assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 0);
		assert_int_equal(mm_link_rx_chunk(&rx, &bad[i], &msg, &len), -EPROTO);
		/* the message was dropped: a continuation now has nothing to continue */
		k = chunk(data, 10, 10, 40, 0, 0);
		assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), -EPROTO);
	}
	/* a reset (new connection) drops a partial message too */
	k = chunk(data, 10, 0, 40, 1, 0);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 0);
	mm_link_rx_reset(&rx);
	k = chunk(data, 30, 10, 40, 0, 1);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), -EPROTO);
	/* a new first chunk starts over cleanly after all that */
	k = chunk(data, 4, 0, 4, 1, 1);
	assert_int_equal(mm_link_rx_chunk(&rx, &k, &msg, &len), 1);
	assert_int_equal(mm_link_rx_chunk(NULL, &k, &msg, &len), -EINVAL);
	assert_int_equal(mm_link_rx_chunk(&rx, NULL, &msg, &len), -EINVAL);
	mm_link_rx_release(&rx);
}

/* ---- confirmation -------------------------------------------------------------------------- */

static void test_confirmed(void **state)
{
	(void)state;
	struct chp_pair p;
	chp_init(&p, 1000, 0);
	chp_handshake(&p, 1000);
	/* the dialer knows after message 2; the acceptor only has message 1, which a
	 * stolen key or a replay could have made */
	assert_true(mm_link_confirmed(p.a.ch, false));
	assert_false(mm_link_confirmed(p.b.ch, true));
	assert_true(mm_link_confirmed(p.b.ch, false)); /* (as an outgoing one it would be) */
	/* the dialer's REKEY frame, sealed with the final keys, confirms it */
	assert_int_equal(mm_ch_rekey(p.a.ch, 2000), 0);
	chp_flow(&p.a, &p.b, 2000);
	assert_int_equal(p.b.chunks, 0);
	assert_true(mm_link_confirmed(p.b.ch, true));
	assert_false(mm_link_confirmed(NULL, false));
	chp_free(&p);
}

static void test_ts_confirm(void **state)
{
	(void)state;
	uint8_t last[MM_CH_TAI64N_LEN], t1[MM_CH_TAI64N_LEN], t2[MM_CH_TAI64N_LEN];
	memset(last, 0, sizeof last);
	mm_ch_tai64n(1000, t1);
	mm_ch_tai64n(2000, t2);
	assert_true(mm_link_ts_confirm(last, t1));
	assert_memory_equal(last, t1, sizeof last);
	assert_false(mm_link_ts_confirm(last, t1)); /* equal: unchanged */
	assert_true(mm_link_ts_confirm(last, t2));
	assert_false(mm_link_ts_confirm(last, t1)); /* older: unchanged */
	assert_memory_equal(last, t2, sizeof last);
}

/* At start: a kept timestamp comes back unless it is more than max_skew ahead. */
static void test_ts_restore(void **state)
{
	(void)state;
	uint8_t last[MM_CH_TAI64N_LEN], want[MM_CH_TAI64N_LEN], zero[MM_CH_TAI64N_LEN] = {0};
	uint64_t now = 1700000000000ULL, skew = 60000;
	memset(last, 0xaa, sizeof last);
	assert_int_equal(mm_link_ts_restore(last, 0, now, skew), 0); /* none kept */
	assert_memory_equal(last, zero, sizeof last);
	mm_ch_tai64n(now - 5000, want);
	assert_int_equal(mm_link_ts_restore(last, now - 5000, now, skew), 0);
	assert_memory_equal(last, want, sizeof last);
	/* a message 1 recorded before it is refused after the restart: older */
	uint8_t old[MM_CH_TAI64N_LEN];
	mm_ch_tai64n(now - 6000, old);
	assert_false(mm_link_ts_confirm(last, old));
	mm_ch_tai64n(now + skew, want); /* at the bound: kept */
	assert_int_equal(mm_link_ts_restore(last, now + skew, now, skew), 0);
	assert_memory_equal(last, want, sizeof last);
	/* past it (a clock set back, or dated ahead by a stolen key): dropped */
	assert_int_equal(mm_link_ts_restore(last, now + skew + 1, now, skew), -ERANGE);
	assert_memory_equal(last, zero, sizeof last);
	/* no overflow with a huge max_skew */
	assert_int_equal(mm_link_ts_restore(last, UINT64_MAX - 1, now, UINT64_MAX), 0);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dials),
		cmocka_unit_test(test_dgram_round_trip),
		cmocka_unit_test(test_dgram_limits),
		cmocka_unit_test(test_rx_messages),
		cmocka_unit_test(test_rx_hostile),
		cmocka_unit_test(test_confirmed),
		cmocka_unit_test(test_ts_confirm),
		cmocka_unit_test(test_ts_restore),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
