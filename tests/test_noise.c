/*
 * test_noise.c — unit tests of proto/noise: handshake pieces (init errors, turns,
 * transactional reads, low-order keys, psk modifiers), CipherState nonce exhaustion,
 * Rekey, and the 65535-byte message limit.  The spec vectors run in it_noise_vectors.sh.
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

#include "proto/noise.h"

static uint8_t si[32], sr[32], ei[32], er[32], pub_r[32];
static uint8_t buf[MM_NOISE_MAX_MSG + 64], pl[MM_NOISE_MAX_MSG + 64];

static void keys(void)
{
	for (int i = 0; i < 32; i++) {
		si[i] = (uint8_t)(i + 1);
		sr[i] = (uint8_t)(i + 50);
		ei[i] = (uint8_t)(i + 100);
		er[i] = (uint8_t)(i + 150);
	}
	crypto_scalarmult_base(pub_r, sr);
}

static void ik_pair(struct mm_noise_hs *a, struct mm_noise_hs *b, const char *proto,
                    const uint8_t (*psks)[32], size_t n_psks)
{
	struct mm_noise_config ca = { .protocol = proto, .initiator = 1, .s = si, .e = ei,
	                              .rs = pub_r, .psks = psks, .n_psks = n_psks };
	struct mm_noise_config cb = { .protocol = proto, .initiator = 0, .s = sr, .e = er,
	                              .psks = psks, .n_psks = n_psks };
	assert_int_equal(mm_noise_hs_init(a, &ca), 0);
	assert_int_equal(mm_noise_hs_init(b, &cb), 0);
}

static void test_init_errors(void **state)
{
	(void)state;
	struct mm_noise_hs hs;
	uint8_t psk[1][32] = { { 0 } };
	keys();
	struct mm_noise_config c = { .protocol = "Noise_IK_25519_ChaChaPoly_BLAKE2b", .initiator = 1,
	                             .s = si, .e = ei, .rs = pub_r };
	assert_int_equal(mm_noise_hs_init(&hs, &c), 0);
	c.protocol = "Noise_IK_25519_AESGCM_SHA256";
	assert_int_equal(mm_noise_hs_init(&hs, &c), -EPROTONOSUPPORT);
	c.protocol = "Noise_QQ_25519_ChaChaPoly_BLAKE2b";
	assert_int_equal(mm_noise_hs_init(&hs, &c), -EINVAL);
	c.protocol = "Noise_IKpsk3_25519_ChaChaPoly_BLAKE2b"; /* IK has 2 messages */
	c.psks = psk;
	c.n_psks = 1;
	assert_int_equal(mm_noise_hs_init(&hs, &c), -EINVAL);
	c.protocol = "Noise_IKpsk_25519_ChaChaPoly_BLAKE2b";
	assert_int_equal(mm_noise_hs_init(&hs, &c), -EINVAL);
	c.protocol = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b";
	c.n_psks = 0; /* psk count must match */
	assert_int_equal(mm_noise_hs_init(&hs, &c), -EINVAL);
	c.n_psks = 1;
	assert_int_equal(mm_noise_hs_init(&hs, &c), 0);
	c.protocol = "Noise_IK_25519_ChaChaPoly_BLAKE2b";
	c.n_psks = 0;
	c.rs = NULL; /* IK initiator needs the responder's static key */
	assert_int_equal(mm_noise_hs_init(&hs, &c), -EINVAL);
	c.rs = pub_r;
	c.s = NULL; /* and its own */
	assert_int_equal(mm_noise_hs_init(&hs, &c), -EINVAL);
	c.s = si;
	c.e = NULL;
	assert_int_equal(mm_noise_hs_init(&hs, &c), -EINVAL);
	c.protocol = "Nois_IK_25519_ChaChaPoly_BLAKE2b";
	c.e = ei;
	assert_int_equal(mm_noise_hs_init(&hs, &c), -EINVAL);
	assert_int_equal(mm_noise_hs_init(&hs, NULL), -EINVAL);
}

static void test_ik_roundtrip_and_turns(void **state)
{
	(void)state;
	struct mm_noise_hs a, b;
	struct mm_noise_cipher a1, a2, b1, b2;
	uint8_t ha[64], hb[64];
	size_t n, m;
	keys();
	ik_pair(&a, &b, "Noise_IK_25519_ChaChaPoly_BLAKE2b", NULL, 0);
	assert_int_equal(mm_noise_hs_state(&a), MM_NOISE_HS_WRITE);
	assert_int_equal(mm_noise_hs_state(&b), MM_NOISE_HS_READ);
	assert_int_equal(mm_noise_hs_write(&b, NULL, 0, buf, sizeof buf, &n), -EPROTO);
	assert_null(mm_noise_hs_remote_static(&b));
	assert_int_equal(mm_noise_hs_read(&a, buf, 100, pl, sizeof pl, &m), -EPROTO);
	assert_int_equal(mm_noise_hs_write(&a, (const uint8_t *)"hi", 2, buf, sizeof buf, &n), 0);
	assert_int_equal(n, 32 + 48 + 2 + 16);
	assert_int_equal(mm_noise_hs_write(&a, NULL, 0, buf + 200, 200, &m), -EPROTO);
	assert_int_equal(mm_noise_hs_split(&a, &a1, &a2, NULL), -EPROTO);

	/* transactional read: a corrupted message fails and leaves b unchanged */
	struct mm_noise_hs before = b;
	buf[40] ^= 1;
	assert_int_equal(mm_noise_hs_read(&b, buf, n, pl, sizeof pl, &m), -EBADMSG);
	assert_memory_equal(&before, &b, sizeof b);
	assert_int_equal(mm_noise_hs_read(&b, buf, n - 1, pl, sizeof pl, &m), -EBADMSG);
	assert_int_equal(mm_noise_hs_read(&b, buf, 31, pl, sizeof pl, &m), -EBADMSG);
	assert_memory_equal(&before, &b, sizeof b);
	buf[40] ^= 1;
	assert_int_equal(mm_noise_hs_read(&b, buf, n, pl, 1, &m), -EMSGSIZE); /* payload too big for cap */
	assert_int_equal(mm_noise_hs_read(&b, buf, n, pl, sizeof pl, &m), 0);
	assert_int_equal(m, 2);
	assert_memory_equal(pl, "hi", 2);
	uint8_t pub_i[32];
	crypto_scalarmult_base(pub_i, si);
	assert_memory_equal(mm_noise_hs_remote_static(&b), pub_i, 32);

	assert_int_equal(mm_noise_hs_write(&b, NULL, 0, buf, sizeof buf, &n), 0);
	assert_int_equal(n, 48);
	assert_int_equal(mm_noise_hs_read(&a, buf, n, pl, sizeof pl, &m), 0);
	assert_int_equal(m, 0);
	assert_int_equal(mm_noise_hs_state(&a), MM_NOISE_HS_SPLIT);
	assert_memory_equal(mm_noise_hs_hash(&a), mm_noise_hs_hash(&b), 64);
	assert_int_equal(mm_noise_hs_split(&a, &a1, &a2, ha), 0);
	assert_int_equal(mm_noise_hs_split(&b, &b1, &b2, hb), 0);
	assert_memory_equal(ha, hb, 64);
	assert_memory_equal(a1.k, b1.k, 32);
	assert_memory_equal(a2.k, b2.k, 32);
	assert_memory_not_equal(a1.k, a2.k, 32);

	/* transport both ways, in place */
	memcpy(buf, "ping", 4);
	assert_int_equal(mm_noise_cipher_encrypt(&a1, NULL, 0, buf, 4, buf, sizeof buf, &n), 0);
	assert_int_equal(mm_noise_cipher_decrypt(&b1, NULL, 0, buf, n, buf, sizeof buf, &m), 0);
	assert_memory_equal(buf, "ping", 4);
	/* replay of the same ciphertext fails (the nonce moved on) */
	assert_int_equal(mm_noise_cipher_encrypt(&b2, NULL, 0, (const uint8_t *)"pong", 4, buf, sizeof buf, &n), 0);
	memcpy(pl, buf, n);
	assert_int_equal(mm_noise_cipher_decrypt(&a2, NULL, 0, buf, n, buf, sizeof buf, &m), 0);
	assert_int_equal(mm_noise_cipher_decrypt(&a2, NULL, 0, pl, n, buf, sizeof buf, &m), -EBADMSG);
	assert_true(a2.n == 1);
}

static void test_psk_modifiers(void **state)
{
	(void)state;
	static const char *protos[] = {
		"Noise_XXpsk0+psk3_25519_ChaChaPoly_BLAKE2b",
		"Noise_NNpsk0+psk1+psk2_25519_ChaChaPoly_BLAKE2b",
		"Noise_X1X1psk4_25519_ChaChaPoly_BLAKE2b",
	};
	uint8_t psks[3][32];
	size_t counts[] = { 2, 3, 1 };
	keys();
	memset(psks, 0x42, sizeof psks);
	psks[1][0] = 1;
	for (size_t t = 0; t < 3; t++) {
		struct mm_noise_hs a, b;
		struct mm_noise_config ca = { .protocol = protos[t], .initiator = 1, .s = si, .e = ei,
		                              .psks = (const uint8_t(*)[32])psks, .n_psks = counts[t] };
		struct mm_noise_config cb = { .protocol = protos[t], .initiator = 0, .s = sr, .e = er,
		                              .psks = (const uint8_t(*)[32])psks, .n_psks = counts[t] };
		assert_int_equal(mm_noise_hs_init(&a, &ca), 0);
		assert_int_equal(mm_noise_hs_init(&b, &cb), 0);
		int turns = 0;
		while (mm_noise_hs_state(&a) != MM_NOISE_HS_SPLIT) {
			struct mm_noise_hs *w = mm_noise_hs_state(&a) == MM_NOISE_HS_WRITE ? &a : &b;
			struct mm_noise_hs *r = w == &a ? &b : &a;
			size_t n, m;
			assert_int_equal(mm_noise_hs_write(w, (const uint8_t *)"p", 1, buf, sizeof buf, &n), 0);
			assert_int_equal(mm_noise_hs_read(r, buf, n, pl, sizeof pl, &m), 0);
			assert_int_equal(m, 1);
			turns++;
		}
		assert_int_equal(mm_noise_hs_state(&b), MM_NOISE_HS_SPLIT);
		assert_memory_equal(mm_noise_hs_hash(&a), mm_noise_hs_hash(&b), 64);
		assert_true(turns >= 2);
		/* a different psk on one side breaks it */
		struct mm_noise_hs c;
		uint8_t other[3][32];
		memset(other, 0x43, sizeof other);
		cb.psks = (const uint8_t(*)[32])other;
		assert_int_equal(mm_noise_hs_init(&a, &ca), 0);
		assert_int_equal(mm_noise_hs_init(&c, &cb), 0);
		int failed = 0;
		while (!failed && mm_noise_hs_state(&a) != MM_NOISE_HS_SPLIT) {
			struct mm_noise_hs *w = mm_noise_hs_state(&a) == MM_NOISE_HS_WRITE ? &a : &c;
			struct mm_noise_hs *r = w == &a ? &c : &a;
			size_t n, m;
			assert_int_equal(mm_noise_hs_write(w, (const uint8_t *)"p", 1, buf, sizeof buf, &n), 0);
			failed = mm_noise_hs_read(r, buf, n, pl, sizeof pl, &m) == -EBADMSG;
		}
		assert_true(failed);
	}
}

static void test_low_order_ephemeral(void **state)
{
	(void)state;
	struct mm_noise_hs a, b;
	size_t n, m;
	keys();
	ik_pair(&a, &b, "Noise_IK_25519_ChaChaPoly_BLAKE2b", NULL, 0);
	assert_int_equal(mm_noise_hs_write(&a, NULL, 0, buf, sizeof buf, &n), 0);
	memset(buf, 0, 32); /* e = the zero point: es gives an all-zero DH */
	assert_int_equal(mm_noise_hs_read(&b, buf, n, pl, sizeof pl, &m), -EBADMSG);
	assert_int_equal(mm_noise_hs_state(&b), MM_NOISE_HS_READ);
}

static void test_nonce_exhaustion(void **state)
{
	(void)state;
	struct mm_noise_cipher c, d;
	uint8_t key[32];
	size_t n, m;
	memset(key, 9, sizeof key);
	mm_noise_cipher_init(&c, key);
	mm_noise_cipher_init(&d, key);
	c.n = d.n = UINT64_MAX - 2;
	for (int i = 0; i < 2; i++) {
		assert_int_equal(mm_noise_cipher_encrypt(&c, NULL, 0, (const uint8_t *)"x", 1, buf, sizeof buf, &n), 0);
		assert_int_equal(mm_noise_cipher_decrypt(&d, NULL, 0, buf, n, pl, sizeof pl, &m), 0);
	}
	assert_true(c.n == UINT64_MAX && d.n == UINT64_MAX);
	/* 2^64-1 is reserved: no more messages either way */
	assert_int_equal(mm_noise_cipher_encrypt(&c, NULL, 0, (const uint8_t *)"x", 1, buf, sizeof buf, &n), -EOVERFLOW);
	assert_int_equal(mm_noise_cipher_decrypt(&d, NULL, 0, buf, 17, pl, sizeof pl, &m), -EOVERFLOW);
	assert_int_equal(mm_noise_cipher_encrypt_at(&c, UINT64_MAX, NULL, 0, buf, 1, buf, sizeof buf, &n), -EOVERFLOW);
	assert_int_equal(mm_noise_cipher_decrypt_at(&c, UINT64_MAX, NULL, 0, buf, 17, buf, sizeof buf, &n), -EOVERFLOW);
	assert_true(c.n == UINT64_MAX);
}

static void test_max_size(void **state)
{
	(void)state;
	struct mm_noise_cipher c, d;
	uint8_t key[32];
	size_t n, m;
	memset(key, 3, sizeof key);
	mm_noise_cipher_init(&c, key);
	mm_noise_cipher_init(&d, key);
	memset(pl, 0x5a, sizeof pl);
	assert_int_equal(mm_noise_cipher_encrypt(&c, NULL, 0, pl, 65520, buf, sizeof buf, &n), -EMSGSIZE);
	assert_true(c.n == 0);
	assert_int_equal(mm_noise_cipher_encrypt(&c, NULL, 0, pl, 65519, buf, 65534, &n), -EMSGSIZE);
	assert_int_equal(mm_noise_cipher_encrypt(&c, NULL, 0, pl, 65519, buf, sizeof buf, &n), 0);
	assert_int_equal(n, 65535);
	assert_int_equal(mm_noise_cipher_decrypt(&d, NULL, 0, buf, 65536, pl, sizeof pl, &m), -EMSGSIZE);
	assert_int_equal(mm_noise_cipher_decrypt(&d, NULL, 0, buf, 15, pl, sizeof pl, &m), -EBADMSG);
	assert_int_equal(mm_noise_cipher_decrypt(&d, NULL, 0, buf, 65535, pl, 100, &m), -EMSGSIZE);
	assert_true(d.n == 0);
	assert_int_equal(mm_noise_cipher_decrypt(&d, NULL, 0, buf, 65535, pl, sizeof pl, &m), 0);
	assert_int_equal(m, 65519);

	/* handshake messages: the whole message is limited, payload included */
	struct mm_noise_hs a, b;
	keys();
	ik_pair(&a, &b, "Noise_IK_25519_ChaChaPoly_BLAKE2b", NULL, 0);
	size_t room = 65535 - 32 - 48 - 16;
	assert_int_equal(mm_noise_hs_write(&a, pl, room + 1, buf, sizeof buf, &n), -EMSGSIZE);
	assert_int_equal(mm_noise_hs_state(&a), MM_NOISE_HS_WRITE);
	assert_int_equal(mm_noise_hs_write(&a, pl, room, buf, sizeof buf, &n), 0);
	assert_int_equal(n, 65535);
	assert_int_equal(mm_noise_hs_read(&b, buf, 65536, pl, sizeof pl, &m), -EMSGSIZE);
	assert_int_equal(mm_noise_hs_read(&b, buf, n, pl, sizeof pl, &m), 0);
	assert_int_equal(m, room);
}

static void test_rekey_and_empty_key(void **state)
{
	(void)state;
	struct mm_noise_cipher c, d, e;
	uint8_t key[32];
	size_t n, m;
	memset(key, 1, sizeof key);
	mm_noise_cipher_init(&c, key);
	mm_noise_cipher_init(&d, key);
	mm_noise_cipher_init(&e, key);
	assert_int_equal(mm_noise_cipher_encrypt(&c, NULL, 0, (const uint8_t *)"a", 1, buf, sizeof buf, &n), 0);
	assert_int_equal(mm_noise_cipher_decrypt(&d, NULL, 0, buf, n, pl, sizeof pl, &m), 0);
	mm_noise_cipher_rekey(&c);
	mm_noise_cipher_rekey(&d);
	assert_memory_not_equal(c.k, key, 32);
	assert_memory_equal(c.k, d.k, 32);
	assert_true(c.n == 1); /* Rekey keeps n */
	assert_int_equal(mm_noise_cipher_encrypt(&c, NULL, 0, (const uint8_t *)"b", 1, buf, sizeof buf, &n), 0);
	assert_int_equal(mm_noise_cipher_decrypt(&d, NULL, 0, buf, n, pl, sizeof pl, &m), 0);
	/* the old key no longer decrypts */
	e.n = 1;
	assert_int_equal(mm_noise_cipher_decrypt(&e, NULL, 0, buf, n, pl, sizeof pl, &m), -EBADMSG);
	/* the new key is ENCRYPT(k, 2^64-1, "", zeros)[0..32] */
	uint8_t zeros[32] = { 0 }, out[48], nonce[12];
	unsigned long long ol;
	memset(nonce, 0xff, sizeof nonce);
	memset(nonce, 0, 4);
	crypto_aead_chacha20poly1305_ietf_encrypt(out, &ol, zeros, 32, NULL, 0, NULL, nonce, key);
	assert_memory_equal(out, c.k, 32);
	/* empty key: passthrough, n unchanged, rekey a no-op */
	mm_noise_cipher_init(&c, NULL);
	assert_int_equal(mm_noise_cipher_encrypt(&c, NULL, 0, (const uint8_t *)"plain", 5, buf, sizeof buf, &n), 0);
	assert_int_equal(n, 5);
	assert_memory_equal(buf, "plain", 5);
	mm_noise_cipher_rekey(&c);
	assert_true(c.n == 0 && !c.has_key);
	mm_noise_cipher_wipe(&d);
	assert_false(d.has_key);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_errors),
		cmocka_unit_test(test_ik_roundtrip_and_turns),
		cmocka_unit_test(test_psk_modifiers),
		cmocka_unit_test(test_low_order_ephemeral),
		cmocka_unit_test(test_nonce_exhaustion),
		cmocka_unit_test(test_max_size),
		cmocka_unit_test(test_rekey_and_empty_key),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
