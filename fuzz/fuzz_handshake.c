/*
 * fuzz_handshake.c — libFuzzer target for the channel handshake (proto/channel.c over
 * proto/noise.c).  First input byte picks the mode:
 *   0  a responder channel is fed the rest as stream bytes (arbitrary message 1)
 *   1  an initiator channel sends message 1, then is fed the rest (arbitrary message 2)
 *   2  a genuine IKpsk2 initiator (mm_noise) sends the rest as message 1's payload, so
 *      the responder's payload checks (version, timestamp) see arbitrary plaintext
 *   3  raw mm_noise_hs_read of the rest by an IK responder
 * Keys are fixed so every run is reproducible.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <sodium.h>

#include "proto/channel.h"
#include "proto/noise.h"

static uint8_t a_priv[32], a_pub[32], b_priv[32], b_pub[32], ra[32], rb[32];

static int emit(void *arg, const uint8_t *b, size_t n) { (void)arg; (void)b; (void)n; return 0; }
static int deliver(void *arg, const struct mm_ch_chunk *c) { (void)arg; (void)c; return 0; }
static int lookup(void *arg, const uint8_t pub[32], uint8_t last[MM_CH_TAI64N_LEN])
{
	(void)arg;
	memset(last, 0, MM_CH_TAI64N_LEN);
	return memcmp(pub, a_pub, 32) == 0 ? 0 : -2;
}
static void accepted(void *arg, const uint8_t pub[32], const uint8_t ts[MM_CH_TAI64N_LEN]) { (void)arg; (void)pub; (void)ts; }

static void setup(void)
{
	static int done;
	if (done)
		return;
	done = 1;
	if (sodium_init() < 0)
		__builtin_trap();
	for (int i = 0; i < 32; i++) {
		a_priv[i] = (uint8_t)(i + 1);
		b_priv[i] = (uint8_t)(i + 2);
		ra[i] = (uint8_t)(i + 3);
		rb[i] = (uint8_t)(i + 4);
	}
	mm_key_generate(a_priv, a_priv);
	mm_key_generate(b_priv, b_priv);
	mm_key_public(a_priv, a_pub);
	mm_key_public(b_priv, b_pub);
}

static struct mm_ch *make(int initiator)
{
	struct mm_ch *ch = NULL;
	struct mm_ch_config cfg = {
		.initiator = initiator,
		.local_priv = initiator ? a_priv : b_priv,
		.remote_pub = initiator ? b_pub : NULL,
		.random32 = initiator ? ra : rb,
		.now_ms = 1700000000000ULL,
		.peers = { lookup, accepted, NULL },
		.io = { emit, deliver, NULL },
	};
	if (mm_ch_new(&ch, &cfg) != 0)
		__builtin_trap();
	return ch;
}

static void feed_all(struct mm_ch *ch, const uint8_t *d, size_t n)
{
	size_t used = 0;
	int rc = mm_ch_feed(ch, d, n, &used, 1700000000000ULL);
	if (used > n || (rc == MM_CH_OK && used != n))
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t buf[MM_CH_FRAME_MAX], pl[MM_NOISE_MAX_MSG];
	setup();
	if (size < 1)
		return 0;
	uint8_t mode = data[0] % 4;
	data++;
	size--;
	if (mode == 0) {
		struct mm_ch *ch = make(0);
		feed_all(ch, data, size);
		mm_ch_free(&ch);
	} else if (mode == 1) {
		struct mm_ch *ch = make(1);
		if (mm_ch_start(ch) != 0)
			__builtin_trap();
		feed_all(ch, data, size);
		mm_ch_free(&ch);
	} else if (mode == 2) {
		struct mm_noise_hs hs;
		static const uint8_t zero[1][32];
		struct mm_noise_config c = {
			.protocol = MM_CH_PROTOCOL, .initiator = 1,
			.prologue = (const uint8_t *)MM_CH_PROLOGUE, .prologue_len = sizeof MM_CH_PROLOGUE - 1,
			.s = a_priv, .e = ra, .rs = b_pub, .psks = zero, .n_psks = 1,
		};
		size_t n;
		if (mm_noise_hs_init(&hs, &c) != 0)
			__builtin_trap();
		if (mm_noise_hs_write(&hs, data, size, buf + 2, MM_NOISE_MAX_MSG, &n) == 0) {
			buf[0] = (uint8_t)(n >> 8);
			buf[1] = (uint8_t)n;
			struct mm_ch *ch = make(0);
			feed_all(ch, buf, n + 2);
			mm_ch_free(&ch);
		}
		mm_noise_hs_wipe(&hs);
	} else {
		struct mm_noise_hs hs;
		struct mm_noise_config c = {
			.protocol = "Noise_IK_25519_ChaChaPoly_BLAKE2b", .initiator = 0,
			.s = b_priv, .e = rb,
		};
		size_t n;
		if (mm_noise_hs_init(&hs, &c) != 0)
			__builtin_trap();
		mm_noise_hs_read(&hs, data, size, pl, sizeof pl, &n);
		mm_noise_hs_wipe(&hs);
	}
	return 0;
}
