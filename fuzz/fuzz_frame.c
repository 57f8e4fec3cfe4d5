/*
 * fuzz_frame.c — libFuzzer target for the channel's stream decoder (mm_ch_feed on an
 * established responder).  The harness completes a genuine IKpsk2 handshake with the
 * responder using mm_noise directly, so it holds the key the responder receives with.
 * First input byte picks the mode:
 *   0  the rest is fed as raw stream bytes, cut in two at a point the input chooses
 *   1  the rest is a list of records [1-byte length L][L bytes]: each is encrypted as a
 *      transport plaintext (type byte + data: FULL/FIRST/MORE/REKEY or garbage) and
 *      framed, so the frame-type logic and chunk accounting see arbitrary plaintexts
 * The chunks delivered go through proto/link.c's reassembly (mm_link_rx_chunk), as
 * the daemon and the simulator hand them on: a whole message is never longer than
 * its announced total nor MM_WIRE_MAX.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <sodium.h>

#include "proto/channel.h"
#include "proto/link.h"
#include "proto/noise.h"
#include "proto/wire.h"

static uint8_t a_priv[32], a_pub[32], b_priv[32], b_pub[32], ra[32], rb[32];
static uint8_t out[2 * MM_CH_FRAME_MAX];
static size_t out_len;

static int emit(void *arg, const uint8_t *b, size_t n)
{
	(void)arg;
	if (n <= sizeof out - out_len) {
		memcpy(out + out_len, b, n);
		out_len += n;
	}
	return 0;
}
static struct mm_link_rx rx;

static int deliver(void *arg, const struct mm_ch_chunk *c)
{
	(void)arg;
	if (c->offset + c->len > c->total && c->total != 0)
		__builtin_trap();
	const uint8_t *msg;
	size_t len;
	int r = mm_link_rx_chunk(&rx, c, &msg, &len);
	if (r == 1 && (len != c->total || len > MM_WIRE_MAX || !msg))
		__builtin_trap();
	return r < 0 ? r : 0;
}
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

/* An established responder channel and the harness's sending cipher towards it. */
static struct mm_ch *establish(struct mm_noise_cipher *tx)
{
	static const uint8_t zero[1][32];
	struct mm_noise_hs hs;
	struct mm_noise_cipher rx;
	struct mm_ch *ch = NULL;
	uint8_t frame[256], pl[64];
	size_t n, m, used;
	struct mm_noise_config c = {
		.protocol = MM_CH_PROTOCOL, .initiator = 1,
		.prologue = (const uint8_t *)MM_CH_PROLOGUE, .prologue_len = sizeof MM_CH_PROLOGUE - 1,
		.s = a_priv, .e = ra, .rs = b_pub, .psks = zero, .n_psks = 1,
	};
	struct mm_ch_config cfg = {
		.initiator = 0, .local_priv = b_priv, .random32 = rb, .now_ms = 1700000000000ULL,
		.peers = { lookup, accepted, NULL }, .io = { emit, deliver, NULL },
	};
	uint8_t hello[1 + MM_CH_TAI64N_LEN];
	hello[0] = MM_CH_VERSION;
	mm_ch_tai64n(1700000000000ULL, hello + 1);
	if (mm_noise_hs_init(&hs, &c) || mm_noise_hs_write(&hs, hello, sizeof hello, frame + 2, sizeof frame - 2, &n))
		__builtin_trap();
	frame[0] = (uint8_t)(n >> 8);
	frame[1] = (uint8_t)n;
	if (mm_ch_new(&ch, &cfg))
		__builtin_trap();
	out_len = 0;
	if (mm_ch_feed(ch, frame, n + 2, &used, 1700000000000ULL) != MM_CH_OK || out_len < 2)
		__builtin_trap();
	if (mm_noise_hs_read(&hs, out + 2, out_len - 2, pl, sizeof pl, &m) ||
	    mm_noise_hs_split(&hs, tx, &rx, NULL))
		__builtin_trap();
	mm_noise_cipher_wipe(&rx);
	return ch;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t stream[1 << 17];
	struct mm_noise_cipher tx;
	size_t used;
	setup();
	if (size < 2)
		return 0;
	struct mm_ch *ch = establish(&tx);
	if (mm_link_rx_init(&rx, 0) < 0)
		__builtin_trap();
	uint8_t mode = data[0] & 1;
	if (mode == 0) {
		size_t cut = data[1] % (size - 1);
		const uint8_t *d = data + 2;
		size_t n = size - 2;
		if (cut > n)
			cut = n;
		int rc = mm_ch_feed(ch, d, cut, &used, 1700000000000ULL);
		if (rc >= 0) {
			if (used > cut)
				__builtin_trap();
			/* present the unconsumed rest again with the remaining bytes */
			memcpy(stream, d + used, n - used);
			mm_ch_feed(ch, stream, n - used, &used, 1700000000000ULL);
		}
	} else {
		size_t pos = 1, slen = 0;
		while (pos < size && slen + 2 + MM_NOISE_MAX_MSG <= sizeof stream) {
			size_t l = data[pos++];
			if (l > size - pos)
				l = size - pos;
			size_t n;
			if (mm_noise_cipher_encrypt(&tx, NULL, 0, data + pos, l, stream + slen + 2,
			                            MM_NOISE_MAX_MSG, &n) != 0)
				break;
			stream[slen] = (uint8_t)(n >> 8);
			stream[slen + 1] = (uint8_t)n;
			slen += n + 2;
			pos += l;
		}
		mm_ch_feed(ch, stream, slen, &used, 1700000000000ULL);
	}
	mm_noise_cipher_wipe(&tx);
	mm_ch_free(&ch);
	mm_link_rx_release(&rx); /* (grown on demand: mm_link_rx_init with no reserve) */
	return 0;
}
