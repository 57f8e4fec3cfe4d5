/*
 * test_knock.c — the wake-up datagram (proto/knock.h): both ends derive one key, a
 * knock opens only with it, any changed byte, a replay, an old or far-future
 * timestamp and a wrong shape are refused, and a low-order public key gives no key.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#include "proto/knock.h"

static const uint64_t now = 1800000000000ULL;

static void keys(uint8_t a_priv[32], uint8_t a_pub[32], uint8_t b_priv[32], uint8_t b_pub[32])
{
	crypto_box_keypair(a_pub, a_priv);
	crypto_box_keypair(b_pub, b_priv);
}

static void test_roundtrip(void **state)
{
	(void)state;
	uint8_t ap[32], aP[32], bp[32], bP[32], ka[32], kb[32], pkt[MM_KNOCK_LEN];
	keys(ap, aP, bp, bP);
	assert_int_equal(mm_knock_key(ap, bP, NULL, ka), 0);
	assert_int_equal(mm_knock_key(bp, aP, NULL, kb), 0);
	assert_memory_equal(ka, kb, 32);
	mm_knock_seal(ka, 0x0102030405060708ULL, now, pkt);
	uint64_t id = 0, ts = 0;
	assert_true(mm_knock_is(pkt, sizeof pkt, &id));
	assert_true(id == 0x0102030405060708ULL);
	assert_int_equal(mm_knock_open(kb, pkt, sizeof pkt, 0, now + 1000, &ts), 0);
	assert_true(ts == now);
	/* replay: not newer than the last one taken */
	assert_int_equal(mm_knock_open(kb, pkt, sizeof pkt, ts, now + 1000, &ts), -ESTALE);
	/* too old, too far ahead */
	assert_int_equal(mm_knock_open(kb, pkt, sizeof pkt, 0, now + MM_KNOCK_SKEW_MS + 1, &ts), -ESTALE);
	assert_int_equal(mm_knock_open(kb, pkt, sizeof pkt, 0, now - MM_KNOCK_SKEW_MS - 1, &ts), -ESTALE);
	assert_int_equal(mm_knock_open(kb, pkt, sizeof pkt, 0, now + MM_KNOCK_SKEW_MS, &ts), 0);
}

static void test_forgery(void **state)
{
	(void)state;
	uint8_t ap[32], aP[32], bp[32], bP[32], cp[32], cP[32], ka[32], kc[32], pkt[MM_KNOCK_LEN];
	keys(ap, aP, bp, bP);
	crypto_box_keypair(cP, cp);
	assert_int_equal(mm_knock_key(ap, bP, NULL, ka), 0);
	mm_knock_seal(ka, 7, now, pkt);
	uint64_t ts;
	/* every changed bit is refused (id, magic, timestamp or MAC) */
	for (size_t i = 0; i < sizeof pkt; i++)
		for (int bit = 0; bit < 8; bit++) {
			pkt[i] ^= (uint8_t)(1u << bit);
			assert_int_not_equal(mm_knock_open(ka, pkt, sizeof pkt, 0, now, &ts), 0);
			pkt[i] ^= (uint8_t)(1u << bit);
		}
	assert_int_equal(mm_knock_open(ka, pkt, sizeof pkt, 0, now, &ts), 0);
	/* a third node's key, or the same pair under another cluster PSK */
	assert_int_equal(mm_knock_key(cp, bP, NULL, kc), 0);
	assert_int_equal(mm_knock_open(kc, pkt, sizeof pkt, 0, now, &ts), -EBADMSG);
	uint8_t psk[32] = {1};
	assert_int_equal(mm_knock_key(ap, bP, psk, kc), 0);
	assert_int_equal(mm_knock_open(kc, pkt, sizeof pkt, 0, now, &ts), -EBADMSG);
	/* shape */
	uint64_t id;
	assert_false(mm_knock_is(pkt, sizeof pkt - 1, &id));
	assert_int_equal(mm_knock_open(ka, pkt, sizeof pkt - 1, 0, now, &ts), -EBADMSG);
	uint8_t longer[MM_KNOCK_LEN + 1] = {0};
	memcpy(longer, pkt, sizeof pkt);
	assert_false(mm_knock_is(longer, sizeof longer, &id));
	/* no shared secret with a low-order point */
	uint8_t zero[32] = {0};
	assert_int_equal(mm_knock_key(ap, zero, NULL, kc), -EINVAL);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_forgery),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
