/*
 * channel.c — mailmesh's channel over Noise (see channel.h) and the key helpers.
 */
#include "proto/channel.h"

#include <errno.h>
#include <string.h>

#include <sodium.h>

/* ---- keys ---------------------------------------------------------------------- */

void mm_key_generate(uint8_t priv_r[32], const uint8_t random32[32])
{
	memmove(priv_r, random32, 32);
	priv_r[0] &= 248;
	priv_r[31] &= 127;
	priv_r[31] |= 64;
}

int mm_key_public(const uint8_t priv[32], uint8_t pub_r[32])
{
	if (crypto_scalarmult_base(pub_r, priv) != 0)
		return -EINVAL;
	return 0;
}

void mm_key_to_base64(const uint8_t key[32], char out_r[MM_KEY_B64_LEN + 1])
{
	sodium_bin2base64(out_r, MM_KEY_B64_LEN + 1, key, 32, sodium_base64_VARIANT_ORIGINAL);
}

int mm_key_from_base64(const char *text, size_t len, uint8_t key_r[32])
{
	uint8_t buf[33];
	size_t n = 0;
	const char *end = NULL;
	char canon[MM_KEY_B64_LEN + 1];

	memset(key_r, 0, 32);
	if (text == NULL || len != MM_KEY_B64_LEN)
		return -EINVAL;
	if (sodium_base642bin(buf, sizeof buf, text, len, NULL, &n, &end,
	                      sodium_base64_VARIANT_ORIGINAL) != 0 ||
	    n != 32 || end != text + len)
		goto bad;
	/* Canonical form only: the unused low bits of the last character must be zero, so
	 * one key has exactly one text (duplicate-key detection compares texts too). */
	mm_key_to_base64(buf, canon);
	if (memcmp(canon, text, MM_KEY_B64_LEN) != 0)
		goto bad;
	memcpy(key_r, buf, 32);
	sodium_memzero(buf, sizeof buf);
	return 0;
bad:
	sodium_memzero(buf, sizeof buf);
	return -EINVAL;
}

uint64_t mm_node_id(const uint8_t pub[32])
{
	uint8_t h[32];
	uint64_t id = 0;

	crypto_generichash(h, sizeof h, pub, 32, NULL, 0);
	for (int i = 0; i < 8; i++)
		id = (id << 8) | h[i];
	return id;
}

/* ---- the channel ----------------------------------------------------------------- */

#include <stdlib.h>

enum { F_FULL = 1, F_FIRST = 2, F_MORE = 3, F_REKEY = 4 };

#define PLAIN_MAX (MM_NOISE_MAX_MSG - MM_NOISE_TAGLEN) /* transport plaintext per frame */
#define WORDS (MM_CH_REPLAY_BITS / 64)
#define WINDOW (MM_CH_REPLAY_BITS - 64) /* RFC 6479: one word of redundancy */
#define HELLO_LEN (1 + MM_CH_TAI64N_LEN)

struct mm_ch {
	enum mm_ch_state state;
	int initiator;
	struct mm_noise_hs hs;
	struct mm_ch_config cfg;     /* pointers in it are not kept: see keys below */
	uint8_t remote[32];
	int has_remote;
	uint8_t hhash[MM_NOISE_HASHLEN];
	struct mm_noise_cipher tx, rx;       /* stream */
	struct mm_noise_cipher dtx, drx;     /* datagrams */
	uint64_t dtx_n;                       /* next datagram counter */
	uint64_t dwin_top;                    /* highest counter seen + 1 (0: none) */
	uint64_t dwin[WORDS];
	uint64_t tx_bytes, tx_rekey_ms;       /* since last send rekey */
	uint64_t send_left;                   /* bytes of the open outgoing message */
	int send_open, send_first;
	uint64_t send_total;
	uint64_t recv_left, recv_total, recv_off; /* incoming multi-frame message */
	int recv_open;
	struct mm_ch_stats stats;
	uint8_t *sbuf; /* send frame: 2 + MM_NOISE_MAX_MSG */
	size_t sbuf_used; /* bytes of sbuf that ever held plaintext (see mm_ch_free) */
	uint8_t *rbuf; /* received plaintext: MM_NOISE_MAX_MSG */
	size_t rbuf_used; /* bytes of rbuf ever written (at most the largest frame fed) */
};

void mm_ch_tai64n(uint64_t now_ms, uint8_t out_r[MM_CH_TAI64N_LEN])
{
	uint64_t secs = (1ULL << 62) + now_ms / 1000;
	uint32_t nanos = (uint32_t)(now_ms % 1000) * 1000000u;
	for (int i = 0; i < 8; i++)
		out_r[i] = (uint8_t)(secs >> (56 - 8 * i));
	for (int i = 0; i < 4; i++)
		out_r[8 + i] = (uint8_t)(nanos >> (24 - 8 * i));
}

uint64_t mm_ch_tai64n_ms(const uint8_t ts[MM_CH_TAI64N_LEN])
{
	uint64_t secs = 0;
	uint32_t nanos = 0;
	for (int i = 0; i < 8; i++)
		secs = secs << 8 | ts[i];
	for (int i = 0; i < 4; i++)
		nanos = nanos << 8 | ts[8 + i];
	if (secs < (1ULL << 62) || nanos >= 1000000000u)
		return 0;
	secs -= 1ULL << 62;
	uint64_t ms = nanos / 1000000u + (nanos % 1000000u != 0);
	if (secs > (UINT64_MAX - ms) / 1000)
		return 0;
	return secs * 1000 + ms;
}

int mm_ch_new(struct mm_ch **ch_r, const struct mm_ch_config *cfg)
{
	static const uint8_t zero_psk[32];
	struct mm_ch *ch = NULL;
	int rc;

	*ch_r = NULL;
	if (!cfg || !cfg->local_priv || !cfg->random32 || !cfg->io.emit ||
	    (cfg->initiator && !cfg->remote_pub) ||
	    (!cfg->initiator && (!cfg->peers.lookup || !cfg->peers.accepted)))
		return -EINVAL;
	ch = calloc(1, sizeof *ch);
	if (!ch)
		return -ENOMEM;
	ch->sbuf = malloc(MM_CH_FRAME_MAX);
	ch->rbuf = malloc(MM_NOISE_MAX_MSG);
	if (!ch->sbuf || !ch->rbuf) {
		rc = -ENOMEM;
		goto fail;
	}
	ch->cfg = *cfg;
	ch->cfg.local_priv = ch->cfg.remote_pub = ch->cfg.psk = ch->cfg.random32 = NULL;
	if (!ch->cfg.rekey_bytes)
		ch->cfg.rekey_bytes = MM_CH_REKEY_BYTES_DEFAULT;
	if (!ch->cfg.rekey_ms)
		ch->cfg.rekey_ms = MM_CH_REKEY_MS_DEFAULT;
	ch->initiator = cfg->initiator ? 1 : 0;

	const uint8_t(*psks)[32] = (const uint8_t(*)[32])(cfg->psk ? cfg->psk : zero_psk);
	struct mm_noise_config nc = {
		.protocol = MM_CH_PROTOCOL,
		.initiator = ch->initiator,
		.prologue = (const uint8_t *)MM_CH_PROLOGUE,
		.prologue_len = sizeof MM_CH_PROLOGUE - 1,
		.s = cfg->local_priv,
		.e = cfg->random32,
		.rs = cfg->initiator ? cfg->remote_pub : NULL,
		.psks = psks,
		.n_psks = 1,
	};
	rc = mm_noise_hs_init(&ch->hs, &nc);
	if (rc < 0)
		goto fail;
	if (ch->initiator) {
		memcpy(ch->remote, cfg->remote_pub, 32);
		ch->has_remote = 1;
	}
	ch->state = ch->initiator ? MM_CH_START : MM_CH_AWAIT_HELLO;
	*ch_r = ch;
	return 0;
fail:
	mm_ch_free(&ch);
	return rc;
}

void mm_ch_free(struct mm_ch **chp)
{
	struct mm_ch *ch = chp ? *chp : NULL;
	if (!ch)
		return;
	if (ch->sbuf) {
		/* frames are encrypted in place, but a send that failed before its frame was
		 * sealed (the rekey frame due before it could not be emitted, the nonce ran
		 * out) left its plaintext here; as for rbuf, only the bytes ever used */
		sodium_memzero(ch->sbuf, ch->sbuf_used);
		free(ch->sbuf);
	}
	if (ch->rbuf) {
		/* only what was written holds secrets: wiping (touching) all 64 KiB of a
		 * channel that only saw small frames would cost a page fault per 4 KiB */
		sodium_memzero(ch->rbuf, ch->rbuf_used);
		free(ch->rbuf);
	}
	sodium_memzero(ch, sizeof *ch);
	free(ch);
	*chp = NULL;
}

enum mm_ch_state mm_ch_state(const struct mm_ch *ch)
{
	return ch->state;
}

const uint8_t *mm_ch_remote_key(const struct mm_ch *ch)
{
	return ch->has_remote ? ch->remote : NULL;
}

const uint8_t *mm_ch_handshake_hash(const struct mm_ch *ch)
{
	return ch->state == MM_CH_ESTABLISHED ? ch->hhash : NULL;
}

const struct mm_ch_stats *mm_ch_stats(const struct mm_ch *ch)
{
	return &ch->stats;
}

static int fail(struct mm_ch *ch, int rc)
{
	ch->state = MM_CH_FAILED;
	mm_noise_hs_wipe(&ch->hs);
	mm_noise_cipher_wipe(&ch->tx);
	mm_noise_cipher_wipe(&ch->rx);
	mm_noise_cipher_wipe(&ch->dtx);
	mm_noise_cipher_wipe(&ch->drx);
	return rc;
}

/* Emits sbuf[2..2+n) as one frame. */
static int emit_frame(struct mm_ch *ch, size_t n)
{
	ch->sbuf[0] = (uint8_t)(n >> 8);
	ch->sbuf[1] = (uint8_t)n;
	return ch->cfg.io.emit(ch->cfg.io.arg, ch->sbuf, n + 2);
}

/* After the last handshake message: stream and datagram keys. */
static int establish(struct mm_ch *ch)
{
	struct mm_noise_cipher c1, c2;
	uint8_t ikm[64], d1[MM_NOISE_HASHLEN], d2[MM_NOISE_HASHLEN];
	int rc;

	rc = mm_noise_hs_split(&ch->hs, &c1, &c2, ch->hhash);
	if (rc < 0)
		goto out;
	memcpy(ikm, c1.k, 32);
	memcpy(ikm + 32, c2.k, 32);
	mm_noise_hkdf(ch->hhash, ikm, sizeof ikm, d1, d2, NULL);
	ch->tx = ch->initiator ? c1 : c2;
	ch->rx = ch->initiator ? c2 : c1;
	mm_noise_cipher_init(&ch->dtx, ch->initiator ? d1 : d2);
	mm_noise_cipher_init(&ch->drx, ch->initiator ? d2 : d1);
	ch->state = MM_CH_ESTABLISHED;
	rc = 0;
out:
	mm_noise_cipher_wipe(&c1);
	mm_noise_cipher_wipe(&c2);
	sodium_memzero(ikm, sizeof ikm);
	sodium_memzero(d1, sizeof d1);
	sodium_memzero(d2, sizeof d2);
	return rc;
}

int mm_ch_start(struct mm_ch *ch)
{
	uint8_t hello[HELLO_LEN];
	size_t n;
	int rc;

	if (ch->state != MM_CH_START)
		return -EPROTO;
	hello[0] = MM_CH_VERSION;
	mm_ch_tai64n(ch->cfg.now_ms, hello + 1);
	rc = mm_noise_hs_write(&ch->hs, hello, sizeof hello, ch->sbuf + 2, MM_NOISE_MAX_MSG, &n);
	if (rc < 0)
		return fail(ch, rc);
	ch->tx_rekey_ms = ch->cfg.now_ms;
	ch->state = MM_CH_AWAIT_RESPONSE;
	rc = emit_frame(ch, n);
	if (rc < 0)
		return fail(ch, rc);
	return 0;
}

/* Responder: message 1. */
static int on_hello(struct mm_ch *ch, const uint8_t *msg, size_t len, uint64_t now_ms)
{
	uint8_t last[MM_CH_TAI64N_LEN];
	uint8_t reply = MM_CH_VERSION;
	size_t n;
	int rc;

	rc = mm_noise_hs_read(&ch->hs, msg, len, ch->rbuf, MM_NOISE_MAX_MSG, &n);
	if (rc < 0)
		return rc == -EMSGSIZE ? -EBADMSG : rc;
	/* bytes after the timestamp are a later version's (docs/protocol.md,
	 * "Compatibility"): ignored */
	if (n < HELLO_LEN || ch->rbuf[0] != MM_CH_VERSION)
		return -EPROTO;
	const uint8_t *rs = mm_noise_hs_remote_static(&ch->hs);
	memcpy(ch->remote, rs, 32);
	ch->has_remote = 1;
	memset(last, 0, sizeof last);
	if (ch->cfg.peers.lookup(ch->cfg.peers.arg, ch->remote, last) != 0)
		return -EACCES;
	if (memcmp(ch->rbuf + 1, last, MM_CH_TAI64N_LEN) <= 0)
		return -EALREADY;
	ch->cfg.peers.accepted(ch->cfg.peers.arg, ch->remote, ch->rbuf + 1);
	rc = mm_noise_hs_write(&ch->hs, &reply, 1, ch->sbuf + 2, MM_NOISE_MAX_MSG, &n);
	if (rc < 0)
		return rc;
	rc = establish(ch);
	if (rc < 0)
		return rc;
	ch->tx_rekey_ms = now_ms;
	return emit_frame(ch, n);
}

/* Initiator: message 2. */
static int on_response(struct mm_ch *ch, const uint8_t *msg, size_t len, uint64_t now_ms)
{
	size_t n;
	int rc = mm_noise_hs_read(&ch->hs, msg, len, ch->rbuf, MM_NOISE_MAX_MSG, &n);
	if (rc < 0)
		return rc == -EMSGSIZE ? -EBADMSG : rc;
	if (n < 1 || ch->rbuf[0] != MM_CH_VERSION) /* later bytes: as in on_hello */
		return -EPROTO;
	(void)now_ms;
	return establish(ch);
}

static int deliver(struct mm_ch *ch, const uint8_t *d, size_t len, uint64_t off,
                   uint64_t total, int first, int last)
{
	struct mm_ch_chunk c = { d, len, off, total, first, last };
	ch->stats.bytes_in += len;
	if (!ch->cfg.io.deliver)
		return -EPROTO;
	return ch->cfg.io.deliver(ch->cfg.io.arg, &c);
}

/* Established: one transport frame. */
static int on_transport(struct mm_ch *ch, const uint8_t *msg, size_t len)
{
	size_t n;
	int rc = mm_noise_cipher_decrypt(&ch->rx, NULL, 0, msg, len, ch->rbuf, MM_NOISE_MAX_MSG, &n);
	if (rc < 0)
		return rc == -EOVERFLOW ? rc : -EBADMSG;
	if (n < 1)
		return -EPROTO;
	ch->stats.frames_in++;
	const uint8_t *d = ch->rbuf + 1;
	size_t dl = n - 1;
	switch (ch->rbuf[0]) {
	case F_FULL:
		if (ch->recv_open)
			return -EPROTO;
		return deliver(ch, d, dl, 0, dl, 1, 1);
	case F_FIRST: {
		if (ch->recv_open || dl < 8)
			return -EPROTO;
		uint64_t total = 0;
		for (int i = 0; i < 8; i++)
			total = (total << 8) | d[i];
		d += 8;
		dl -= 8;
		if (dl > total)
			return -EPROTO;
		ch->recv_total = total;
		ch->recv_left = total - dl;
		ch->recv_off = dl;
		ch->recv_open = ch->recv_left > 0;
		return deliver(ch, d, dl, 0, total, 1, !ch->recv_open);
	}
	case F_MORE: {
		if (!ch->recv_open || dl > ch->recv_left || dl == 0)
			return -EPROTO;
		uint64_t off = ch->recv_off;
		ch->recv_left -= dl;
		ch->recv_off += dl;
		ch->recv_open = ch->recv_left > 0;
		return deliver(ch, d, dl, off, ch->recv_total, 0, !ch->recv_open);
	}
	case F_REKEY:
		if (dl != 0)
			return -EPROTO;
		mm_noise_cipher_rekey(&ch->rx);
		ch->stats.rekeys_received++;
		return 0;
	default:
		return -EPROTO;
	}
}

int mm_ch_feed(struct mm_ch *ch, const uint8_t *in, size_t len, size_t *consumed_r,
               uint64_t now_ms)
{
	size_t pos = 0;
	int rc = 0;

	*consumed_r = 0;
	if (ch->state == MM_CH_FAILED)
		return -ENOTCONN;
	while (len - pos >= 2) {
		size_t flen = ((size_t)in[pos] << 8) | in[pos + 1];
		if (len - pos - 2 < flen)
			break;
		const uint8_t *f = in + pos + 2;
		/* a frame's plaintext (handshake payload or transport data) is shorter than it */
		if (flen > ch->rbuf_used)
			ch->rbuf_used = flen;
		switch (ch->state) {
		case MM_CH_AWAIT_HELLO:
			rc = on_hello(ch, f, flen, now_ms);
			break;
		case MM_CH_AWAIT_RESPONSE:
			rc = on_response(ch, f, flen, now_ms);
			break;
		case MM_CH_ESTABLISHED:
			rc = on_transport(ch, f, flen);
			break;
		default:
			rc = -EPROTO;
			break;
		}
		if (rc < 0) {
			*consumed_r = pos;
			return fail(ch, rc);
		}
		/* deliver may have failed the channel through a send error */
		if (ch->state == MM_CH_FAILED) {
			*consumed_r = pos + 2 + flen;
			return -ENOTCONN;
		}
		pos += 2 + flen;
	}
	*consumed_r = pos;
	return pos == len ? MM_CH_OK : MM_CH_NEED_MORE;
}

/* Emits a REKEY frame and switches the sending key. */
static int send_rekey(struct mm_ch *ch, uint64_t now_ms)
{
	uint8_t f[1 + MM_NOISE_TAGLEN + 2];
	uint8_t t = F_REKEY;
	size_t n;
	int rc;

	rc = mm_noise_cipher_encrypt(&ch->tx, NULL, 0, &t, 1, f + 2, sizeof f - 2, &n);
	if (rc < 0)
		return fail(ch, rc);
	f[0] = (uint8_t)(n >> 8);
	f[1] = (uint8_t)n;
	rc = ch->cfg.io.emit(ch->cfg.io.arg, f, n + 2);
	if (rc < 0)
		return fail(ch, rc);
	mm_noise_cipher_rekey(&ch->tx);
	ch->stats.rekeys_sent++;
	ch->tx_bytes = 0;
	ch->tx_rekey_ms = now_ms;
	return 0;
}

int mm_ch_rekey(struct mm_ch *ch, uint64_t now_ms)
{
	if (ch->state != MM_CH_ESTABLISHED)
		return -ENOTCONN;
	return send_rekey(ch, now_ms);
}

/* Encrypts sbuf[2..2+plen) (type byte first) in place and emits it; rekeys first when
 * the budget is spent. */
static int send_frame(struct mm_ch *ch, size_t plen, size_t data_len, uint64_t now_ms)
{
	size_t n;
	int rc;

	if (ch->tx_bytes >= ch->cfg.rekey_bytes || now_ms - ch->tx_rekey_ms >= ch->cfg.rekey_ms) {
		rc = send_rekey(ch, now_ms);
		if (rc < 0)
			return rc;
	}
	rc = mm_noise_cipher_encrypt(&ch->tx, NULL, 0, ch->sbuf + 2, plen, ch->sbuf + 2,
	                             MM_NOISE_MAX_MSG, &n);
	if (rc < 0)
		return fail(ch, rc);
	rc = emit_frame(ch, n);
	if (rc < 0)
		return fail(ch, rc);
	ch->tx_bytes += n;
	ch->stats.frames_out++;
	ch->stats.bytes_out += data_len;
	return 0;
}

int mm_ch_send_begin(struct mm_ch *ch, uint64_t total)
{
	if (ch->state != MM_CH_ESTABLISHED)
		return -ENOTCONN;
	if (ch->send_open)
		return -EBUSY;
	ch->send_open = 1;
	ch->send_first = 1;
	ch->send_total = total;
	ch->send_left = total;
	return 0;
}

int mm_ch_send_chunk(struct mm_ch *ch, const uint8_t *data, size_t len, uint64_t now_ms)
{
	int rc;

	if (ch->state != MM_CH_ESTABLISHED)
		return -ENOTCONN;
	if (!ch->send_open || len > ch->send_left)
		return -EINVAL;
	/* a zero-length message still needs its (empty) FULL frame */
	while (len > 0 || (ch->send_first && ch->send_total == 0)) {
		uint8_t *p = ch->sbuf + 2;
		size_t hdr, room, take;
		if (ch->send_first && len == ch->send_left && len <= PLAIN_MAX - 1) {
			p[0] = F_FULL;
			hdr = 1;
		} else if (ch->send_first) {
			p[0] = F_FIRST;
			for (int i = 0; i < 8; i++)
				p[1 + i] = (uint8_t)(ch->send_total >> (56 - 8 * i));
			hdr = 9;
		} else {
			p[0] = F_MORE;
			hdr = 1;
		}
		room = PLAIN_MAX - hdr;
		take = len < room ? len : room;
		memcpy(p + hdr, data, take);
		if (2 + hdr + take > ch->sbuf_used)
			ch->sbuf_used = 2 + hdr + take;
		rc = send_frame(ch, hdr + take, take, now_ms);
		if (rc < 0)
			return rc;
		ch->send_first = 0;
		ch->send_left -= take;
		data += take;
		len -= take;
	}
	if (ch->send_left == 0)
		ch->send_open = 0;
	return 0;
}

int mm_ch_send(struct mm_ch *ch, const uint8_t *msg, size_t len, uint64_t now_ms)
{
	int rc = mm_ch_send_begin(ch, len);
	if (rc < 0)
		return rc;
	return mm_ch_send_chunk(ch, msg, len, now_ms);
}

/* ---- datagrams ------------------------------------------------------------------ */

int mm_ch_dgram_seal(struct mm_ch *ch, const uint8_t *msg, size_t len, uint8_t *out,
                     size_t cap, size_t *outlen_r)
{
	size_t n;
	int rc;

	if (ch->state != MM_CH_ESTABLISHED)
		return -ENOTCONN;
	if (len > MM_CH_DGRAM_MAX_PLAIN || cap < len + MM_CH_DGRAM_OVERHEAD)
		return -EMSGSIZE;
	uint64_t c = ch->dtx_n;
	if (c == MM_NOISE_NONCE_MAX)
		return -EOVERFLOW;
	for (int i = 0; i < 8; i++)
		out[i] = (uint8_t)(c >> (56 - 8 * i));
	rc = mm_noise_cipher_encrypt_at(&ch->dtx, c, out, 8, msg, len, out + 8, cap - 8, &n);
	if (rc < 0)
		return rc;
	ch->dtx_n++;
	*outlen_r = n + 8;
	return 0;
}

/* RFC 6479 window, WireGuard's layout: counters are stored +1 so 0 means "none". */
static int window_check(const struct mm_ch *ch, uint64_t c1)
{
	if (c1 < ch->dwin_top && ch->dwin_top - c1 > WINDOW)
		return -ESTALE;
	if (c1 > ch->dwin_top)
		return 0;
	uint64_t idx = (c1 >> 6) & (WORDS - 1);
	if (ch->dwin[idx] & (1ULL << (c1 & 63)))
		return -EALREADY;
	return 0;
}

static void window_update(struct mm_ch *ch, uint64_t c1)
{
	uint64_t idx = c1 >> 6;
	if (c1 > ch->dwin_top) {
		uint64_t cur = ch->dwin_top >> 6;
		uint64_t top = idx - cur < WORDS ? idx - cur : WORDS;
		for (uint64_t i = 1; i <= top; i++)
			ch->dwin[(i + cur) & (WORDS - 1)] = 0;
		ch->dwin_top = c1;
	}
	ch->dwin[idx & (WORDS - 1)] |= 1ULL << (c1 & 63);
}

int mm_ch_dgram_open(struct mm_ch *ch, const uint8_t *in, size_t len, uint8_t *out,
                     size_t cap, size_t *outlen_r)
{
	size_t n;
	int rc;

	if (ch->state != MM_CH_ESTABLISHED)
		return -ENOTCONN;
	if (len < MM_CH_DGRAM_OVERHEAD || len > MM_CH_DGRAM_MAX) {
		ch->stats.dgram_truncated++;
		return -EBADMSG;
	}
	if (cap < len - MM_CH_DGRAM_OVERHEAD)
		return -EMSGSIZE;
	uint64_t c = 0;
	for (int i = 0; i < 8; i++)
		c = (c << 8) | in[i];
	if (c == MM_NOISE_NONCE_MAX) {
		ch->stats.dgram_tampered++;
		return -EBADMSG;
	}
	rc = window_check(ch, c + 1);
	if (rc == -ESTALE) {
		ch->stats.dgram_too_old++;
		return rc;
	}
	if (rc == -EALREADY) {
		ch->stats.dgram_replayed++;
		return rc;
	}
	rc = mm_noise_cipher_decrypt_at(&ch->drx, c, in, 8, in + 8, len - 8, out, cap, &n);
	if (rc < 0) {
		ch->stats.dgram_tampered++;
		return -EBADMSG;
	}
	window_update(ch, c + 1);
	ch->stats.dgram_ok++;
	*outlen_r = n;
	return 0;
}
