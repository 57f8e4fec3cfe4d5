/*
 * fuzz_datagram.c — libFuzzer target for mm_ch_dgram_open.  One channel pair is
 * established once (genuine handshake between two mm_ch); each input is a list of
 * records [1-byte mode][1-byte length L][L bytes]:
 *   mode even  the L bytes are opened as a raw datagram
 *   mode odd   the first 8 bytes (zero-padded) are a counter and the rest a plaintext;
 *              the harness seals a genuine datagram with that counter (keys derived as
 *              the channel documents) so the replay window sees arbitrary counters
 * Invariant checked: a datagram opens at most once (no replay gets through).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <sodium.h>

#include "proto/channel.h"
#include "proto/noise.h"

static uint8_t a_priv[32], a_pub[32], b_priv[32], b_pub[32], ra[32], rb[32];
static uint8_t wire[1 << 12];
static size_t wire_len;
static struct mm_ch *ca, *cb;
static struct mm_noise_cipher d1; /* initiator -> responder datagram key */

static int emit(void *arg, const uint8_t *b, size_t n)
{
	(void)arg;
	if (n > sizeof wire - wire_len)
		__builtin_trap();
	memcpy(wire + wire_len, b, n);
	wire_len += n;
	return 0;
}
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
	size_t used;
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
	struct mm_ch_config c = {
		.initiator = 1, .local_priv = a_priv, .remote_pub = b_pub, .random32 = ra,
		.now_ms = 1700000000000ULL, .io = { emit, deliver, NULL },
	};
	if (mm_ch_new(&ca, &c))
		__builtin_trap();
	c.initiator = 0;
	c.local_priv = b_priv;
	c.remote_pub = NULL;
	c.random32 = rb;
	c.peers = (struct mm_ch_peers){ lookup, accepted, NULL };
	if (mm_ch_new(&cb, &c))
		__builtin_trap();
	wire_len = 0;
	if (mm_ch_start(ca) || mm_ch_feed(cb, wire, wire_len, &used, 0) != MM_CH_OK)
		__builtin_trap();
	size_t l1 = wire_len - used;
	memmove(wire, wire + used, l1);
	wire_len = l1;
	if (mm_ch_feed(ca, wire, wire_len, &used, 0) != MM_CH_OK || mm_ch_state(ca) != MM_CH_ESTABLISHED)
		__builtin_trap();
	/* the datagram key as documented in channel.h: (d1, d2) = HKDF(h, k1 || k2).
	 * Re-derived by a third mm_noise handshake identical to ca's. */
	static const uint8_t zero[1][32];
	struct mm_noise_hs hi, hr;
	struct mm_noise_config ci = {
		.protocol = MM_CH_PROTOCOL, .initiator = 1,
		.prologue = (const uint8_t *)MM_CH_PROLOGUE, .prologue_len = sizeof MM_CH_PROLOGUE - 1,
		.s = a_priv, .e = ra, .rs = b_pub, .psks = zero, .n_psks = 1,
	};
	struct mm_noise_config cr = ci;
	cr.initiator = 0;
	cr.s = b_priv;
	cr.e = rb;
	cr.rs = NULL;
	uint8_t m[256], p[64], h[64], ikm[64], k1[64], k2[64];
	size_t n, pn;
	struct mm_noise_cipher c1, c2;
	uint8_t hello[1 + MM_CH_TAI64N_LEN] = { MM_CH_VERSION };
	mm_ch_tai64n(1700000000000ULL, hello + 1);
	uint8_t v = MM_CH_VERSION;
	if (mm_noise_hs_init(&hi, &ci) || mm_noise_hs_init(&hr, &cr) ||
	    mm_noise_hs_write(&hi, hello, sizeof hello, m, sizeof m, &n) ||
	    mm_noise_hs_read(&hr, m, n, p, sizeof p, &pn) ||
	    mm_noise_hs_write(&hr, &v, 1, m, sizeof m, &n) ||
	    mm_noise_hs_read(&hi, m, n, p, sizeof p, &pn) ||
	    mm_noise_hs_split(&hi, &c1, &c2, h))
		__builtin_trap();
	memcpy(ikm, c1.k, 32);
	memcpy(ikm + 32, c2.k, 32);
	mm_noise_hkdf(h, ikm, 64, k1, k2, NULL);
	mm_noise_cipher_init(&d1, k1);
	mm_noise_hs_wipe(&hr);
	/* sanity: a datagram sealed by ca opens with d1 */
	uint8_t dg[64], pt[64];
	size_t dl;
	if (mm_ch_dgram_seal(ca, (const uint8_t *)"x", 1, dg, sizeof dg, &dl) ||
	    mm_noise_cipher_decrypt_at(&d1, 0, dg, 8, dg + 8, dl - 8, pt, sizeof pt, &n) || n != 1)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	static uint8_t dg[8 + 256 + 16], pt[300];
	if (!ready) {
		setup();
		ready = 1;
	}
	size_t pos = 0;
	while (size - pos >= 2) {
		uint8_t mode = data[pos], l = data[pos + 1];
		pos += 2;
		if (l > size - pos)
			l = (uint8_t)(size - pos);
		const uint8_t *d = data + pos;
		pos += l;
		size_t n;
		if ((mode & 1) == 0) {
			mm_ch_dgram_open(cb, d, l, pt, sizeof pt, &n);
			continue;
		}
		uint8_t ctr[8] = { 0 };
		size_t cl = l < 8 ? l : 8;
		memcpy(ctr, d, cl);
		uint64_t c = 0;
		for (int i = 0; i < 8; i++)
			c = (c << 8) | ctr[i];
		if (mode & 2)
			c &= 0xffff; /* keep many counters near each other */
		for (int i = 0; i < 8; i++)
			dg[i] = (uint8_t)(c >> (56 - 8 * i));
		size_t cn;
		if (mm_noise_cipher_encrypt_at(&d1, c, dg, 8, d + cl, l - cl, dg + 8, sizeof dg - 8, &cn) != 0)
			continue;
		uint64_t ok0 = mm_ch_stats(cb)->dgram_ok;
		int rc = mm_ch_dgram_open(cb, dg, cn + 8, pt, sizeof pt, &n);
		if (rc == 0 && (n != l - cl || memcmp(pt, d + cl, n) != 0))
			__builtin_trap();
		/* the same datagram again never opens */
		if (rc == 0 && mm_ch_dgram_open(cb, dg, cn + 8, pt, sizeof pt, &n) == 0)
			__builtin_trap();
		if (rc == 0 && mm_ch_stats(cb)->dgram_ok != ok0 + 1)
			__builtin_trap();
	}
	return 0;
}
