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

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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

/* ---- two endpoints in memory ----------------------------------------------------- */

struct buf {
	uint8_t *d;
	size_t len, cap;
};

static int buf_put(struct buf *b, const uint8_t *d, size_t n)
{
	if (b->len + n > b->cap) {
		size_t nc = (b->len + n) * 2;
		uint8_t *nd = realloc(b->d, nc);
		if (!nd)
			return -ENOMEM;
		b->d = nd;
		b->cap = nc;
	}
	memcpy(b->d + b->len, d, n);
	b->len += n;
	return 0;
}

static void buf_drop(struct buf *b, size_t n)
{
	memmove(b->d, b->d + n, b->len - n);
	b->len -= n;
}

/* one endpoint: its outgoing bytes and what it received */
struct end {
	struct mm_ch *ch;
	struct buf out;       /* emitted stream bytes */
	struct buf msg;       /* reassembled current message (small messages only) */
	int n_msgs;           /* complete messages received */
	struct buf last;      /* last complete message */
	int keep;             /* 0: do not store data (50 MB test checks on the fly) */
	uint64_t got_bytes;
	int (*check)(struct end *e, const struct mm_ch_chunk *c);
};

static int emit_cb(void *arg, const uint8_t *b, size_t n)
{
	return buf_put(&((struct end *)arg)->out, b, n);
}

static int deliver_cb(void *arg, const struct mm_ch_chunk *c)
{
	struct end *e = arg;
	if (c->first)
		e->msg.len = 0;
	if (e->msg.len != c->offset && e->keep)
		return -EPROTO;
	e->got_bytes += c->len;
	if (e->check && e->check(e, c) < 0)
		return -EPROTO;
	if (e->keep && buf_put(&e->msg, c->data, c->len) < 0)
		return -ENOMEM;
	if (c->last) {
		e->n_msgs++;
		e->last.len = 0;
		if (e->keep && buf_put(&e->last, e->msg.d ? e->msg.d : (const uint8_t *)"", e->msg.len) < 0)
			return -ENOMEM;
	}
	return 0;
}

/* the responder's peers: one known key and its last timestamp */
struct peers {
	uint8_t pub[32];
	uint8_t last[MM_CH_TAI64N_LEN];
	int known;
	int accepted;
};

static int lookup_cb(void *arg, const uint8_t pub[32], uint8_t last_r[MM_CH_TAI64N_LEN])
{
	struct peers *p = arg;
	if (!p->known || memcmp(pub, p->pub, 32) != 0)
		return -ENOENT;
	memcpy(last_r, p->last, MM_CH_TAI64N_LEN);
	return 0;
}

static void accepted_cb(void *arg, const uint8_t pub[32], const uint8_t ts[MM_CH_TAI64N_LEN])
{
	struct peers *p = arg;
	assert_memory_equal(pub, p->pub, 32);
	memcpy(p->last, ts, MM_CH_TAI64N_LEN);
	p->accepted++;
}

struct pair {
	struct end a, b; /* a initiator, b responder */
	struct peers peers;
	uint8_t a_priv[32], a_pub[32], b_priv[32], b_pub[32];
	uint64_t now;
};

static void det_bytes(uint8_t *out, size_t n, uint32_t seed)
{
	uint8_t key[crypto_stream_chacha20_KEYBYTES] = { 0 };
	uint8_t nonce[crypto_stream_chacha20_NONCEBYTES] = { 0 };
	memcpy(key, &seed, sizeof seed);
	crypto_stream_chacha20(out, n, nonce, key);
}

static void make_end(struct pair *p, struct end *e, int initiator, uint32_t eseed,
                     const uint8_t *psk, uint64_t rekey_bytes)
{
	uint8_t r[32];
	det_bytes(r, 32, eseed);
	struct mm_ch_config cfg = {
		.initiator = initiator,
		.local_priv = initiator ? p->a_priv : p->b_priv,
		.remote_pub = initiator ? p->b_pub : NULL,
		.psk = psk,
		.random32 = r,
		.now_ms = p->now,
		.rekey_bytes = rekey_bytes,
		.peers = { lookup_cb, accepted_cb, &p->peers },
		.io = { emit_cb, deliver_cb, e },
	};
	e->keep = 1;
	assert_int_equal(mm_ch_new(&e->ch, &cfg), 0);
}

static void pair_init(struct pair *p, uint64_t rekey_bytes)
{
	uint8_t r[32];
	memset(p, 0, sizeof *p);
	p->now = 1700000000000ULL;
	det_bytes(r, 32, 1);
	mm_key_generate(p->a_priv, r);
	det_bytes(r, 32, 2);
	mm_key_generate(p->b_priv, r);
	assert_int_equal(mm_key_public(p->a_priv, p->a_pub), 0);
	assert_int_equal(mm_key_public(p->b_priv, p->b_pub), 0);
	memcpy(p->peers.pub, p->a_pub, 32);
	p->peers.known = 1;
	make_end(p, &p->a, 1, 3, NULL, rekey_bytes);
	make_end(p, &p->b, 0, 4, NULL, rekey_bytes);
}

static void end_free(struct end *e)
{
	mm_ch_free(&e->ch);
	free(e->out.d);
	free(e->msg.d);
	free(e->last.d);
	memset(e, 0, sizeof *e);
}

static void pair_free(struct pair *p)
{
	end_free(&p->a);
	end_free(&p->b);
}

/* Moves everything `from` emitted into `to`, fed in pieces of `step` bytes (0: all at
 * once), keeping unconsumed bytes as a real driver does.  Returns feed's last result. */
static int flow(struct end *from, struct end *to, size_t step, uint64_t now)
{
	struct buf pend = { 0 };
	size_t off = 0;
	int rc = MM_CH_OK;
	while (off < from->out.len) {
		size_t n = step ? step : from->out.len - off;
		if (n > from->out.len - off)
			n = from->out.len - off;
		assert_int_equal(buf_put(&pend, from->out.d + off, n), 0);
		off += n;
		size_t used = 0;
		rc = mm_ch_feed(to->ch, pend.d, pend.len, &used, now);
		if (rc < 0)
			break;
		assert_true(used <= pend.len);
		buf_drop(&pend, used);
		assert_int_equal(rc, pend.len ? MM_CH_NEED_MORE : MM_CH_OK);
	}
	from->out.len = 0;
	free(pend.d);
	return rc;
}

static void handshake(struct pair *p)
{
	assert_int_equal(mm_ch_state(p->a.ch), MM_CH_START);
	assert_int_equal(mm_ch_state(p->b.ch), MM_CH_AWAIT_HELLO);
	assert_int_equal(mm_ch_start(p->a.ch), 0);
	assert_int_equal(mm_ch_state(p->a.ch), MM_CH_AWAIT_RESPONSE);
	assert_int_equal(flow(&p->a, &p->b, 0, p->now), MM_CH_OK);
	assert_int_equal(mm_ch_state(p->b.ch), MM_CH_ESTABLISHED);
	assert_int_equal(flow(&p->b, &p->a, 0, p->now), MM_CH_OK);
	assert_int_equal(mm_ch_state(p->a.ch), MM_CH_ESTABLISHED);
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_handshake_and_data(void **state)
{
	(void)state;
	struct pair p;
	pair_init(&p, 0);
	handshake(&p);
	assert_int_equal(p.peers.accepted, 1);
	assert_memory_equal(mm_ch_remote_key(p.b.ch), p.a_pub, 32);
	assert_memory_equal(mm_ch_remote_key(p.a.ch), p.b_pub, 32);
	assert_memory_equal(mm_ch_handshake_hash(p.a.ch), mm_ch_handshake_hash(p.b.ch), 64);

	/* both ways, fed in odd-sized pieces */
	const char *m1 = "hello from a", *m2 = "and from b";
	assert_int_equal(mm_ch_send(p.a.ch, (const uint8_t *)m1, strlen(m1), p.now), 0);
	assert_int_equal(mm_ch_send(p.a.ch, (const uint8_t *)"", 0, p.now), 0);
	assert_int_equal(flow(&p.a, &p.b, 7, p.now), MM_CH_OK);
	assert_int_equal(p.b.n_msgs, 2);
	assert_int_equal(p.b.last.len, 0);
	assert_int_equal(mm_ch_send(p.b.ch, (const uint8_t *)m2, strlen(m2), p.now), 0);
	assert_int_equal(flow(&p.b, &p.a, 1, p.now), MM_CH_OK);
	assert_int_equal(p.a.n_msgs, 1);
	assert_int_equal(p.a.last.len, strlen(m2));
	assert_memory_equal(p.a.last.d, m2, strlen(m2));

	/* a message of several frames, given in one call */
	size_t big = 200000;
	uint8_t *d = malloc(big);
	det_bytes(d, big, 9);
	assert_int_equal(mm_ch_send(p.b.ch, d, big, p.now), 0);
	assert_int_equal(flow(&p.b, &p.a, 4096, p.now), MM_CH_OK);
	assert_int_equal(p.a.n_msgs, 2);
	assert_int_equal(p.a.last.len, big);
	assert_memory_equal(p.a.last.d, d, big);
	free(d);

	/* datagrams both ways */
	uint8_t dg[256], pt[256];
	size_t n, m;
	assert_int_equal(mm_ch_dgram_seal(p.a.ch, (const uint8_t *)m1, strlen(m1), dg, sizeof dg, &n), 0);
	assert_int_equal(n, strlen(m1) + MM_CH_DGRAM_OVERHEAD);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg, n, pt, sizeof pt, &m), 0);
	assert_int_equal(m, strlen(m1));
	assert_memory_equal(pt, m1, m);
	assert_int_equal(mm_ch_dgram_seal(p.b.ch, (const uint8_t *)m2, strlen(m2), dg, sizeof dg, &n), 0);
	assert_int_equal(mm_ch_dgram_open(p.a.ch, dg, n, pt, sizeof pt, &m), 0);
	assert_memory_equal(pt, m2, m);
	/* a datagram sealed by a cannot be opened by a itself (direction keys differ) */
	assert_int_equal(mm_ch_dgram_seal(p.a.ch, (const uint8_t *)m1, strlen(m1), dg, sizeof dg, &n), 0);
	assert_int_equal(mm_ch_dgram_open(p.a.ch, dg, n, pt, sizeof pt, &m), -EBADMSG);
	pair_free(&p);
}

static void test_api_misuse(void **state)
{
	(void)state;
	struct pair p;
	uint8_t dg[64];
	size_t n;
	pair_init(&p, 0);
	assert_int_equal(mm_ch_send(p.a.ch, (const uint8_t *)"x", 1, p.now), -ENOTCONN);
	assert_int_equal(mm_ch_dgram_seal(p.a.ch, (const uint8_t *)"x", 1, dg, sizeof dg, &n), -ENOTCONN);
	assert_int_equal(mm_ch_start(p.b.ch), -EPROTO);
	handshake(&p);
	assert_int_equal(mm_ch_start(p.a.ch), -EPROTO);
	assert_int_equal(mm_ch_send_chunk(p.a.ch, (const uint8_t *)"x", 1, p.now), -EINVAL);
	assert_int_equal(mm_ch_send_begin(p.a.ch, 3), 0);
	assert_int_equal(mm_ch_send_begin(p.a.ch, 3), -EBUSY);
	assert_int_equal(mm_ch_send(p.a.ch, (const uint8_t *)"x", 1, p.now), -EBUSY);
	assert_int_equal(mm_ch_send_chunk(p.a.ch, (const uint8_t *)"abcd", 4, p.now), -EINVAL);
	assert_int_equal(mm_ch_send_chunk(p.a.ch, (const uint8_t *)"ab", 2, p.now), 0);
	assert_int_equal(mm_ch_send_chunk(p.a.ch, (const uint8_t *)"c", 1, p.now), 0);
	assert_int_equal(flow(&p.a, &p.b, 0, p.now), MM_CH_OK);
	assert_int_equal(p.b.n_msgs, 1);
	assert_int_equal(p.b.last.len, 3);
	assert_memory_equal(p.b.last.d, "abc", 3);
	assert_int_equal(mm_ch_dgram_seal(p.a.ch, dg, sizeof dg, dg, sizeof dg, &n), -EMSGSIZE);
	struct mm_ch *none = NULL;
	mm_ch_free(&none);
	struct mm_ch_config bad = { 0 };
	assert_int_equal(mm_ch_new(&none, &bad), -EINVAL);
	assert_null(none);
	pair_free(&p);
}

/* 50 MB streamed chunk by chunk: neither side holds the body; the receiver checks
 * each chunk against the generator at its offset.  A small rekey budget makes the
 * stream rekey many times on the way. */
#define BIG (50u * 1024 * 1024)
#define PIECE (1u << 20)

static int check_big(struct end *e, const struct mm_ch_chunk *c)
{
	static uint8_t *want;
	static size_t wcap;
	if (c->total != BIG || c->offset + c->len > BIG)
		return -1;
	/* generator: piece i is det_bytes(PIECE, 100 + i); a chunk may span two pieces */
	size_t done = 0;
	while (done < c->len) {
		uint64_t off = c->offset + done;
		uint32_t piece = (uint32_t)(off / PIECE);
		size_t in_piece = (size_t)(off % PIECE);
		size_t take = PIECE - in_piece;
		if (take > c->len - done)
			take = c->len - done;
		if (wcap < PIECE) {
			want = realloc(want, PIECE);
			wcap = PIECE;
		}
		det_bytes(want, PIECE, 100 + piece);
		if (memcmp(want + in_piece, c->data + done, take) != 0)
			return -1;
		done += take;
	}
	(void)e;
	if (c->last) {
		free(want);
		want = NULL;
		wcap = 0;
	}
	return 0;
}

static void test_stream_50mb(void **state)
{
	(void)state;
	struct pair p;
	pair_init(&p, 4u << 20);
	handshake(&p);
	p.b.keep = 0;
	p.b.check = check_big;
	uint8_t *piece = malloc(PIECE);
	assert_int_equal(mm_ch_send_begin(p.a.ch, BIG), 0);
	for (uint32_t i = 0; i < BIG / PIECE; i++) {
		det_bytes(piece, PIECE, 100 + i);
		/* uneven chunks so frame and chunk boundaries do not line up */
		size_t half = PIECE / 3;
		assert_int_equal(mm_ch_send_chunk(p.a.ch, piece, half, p.now), 0);
		assert_int_equal(mm_ch_send_chunk(p.a.ch, piece + half, PIECE - half, p.now), 0);
		assert_int_equal(flow(&p.a, &p.b, 50000, p.now), MM_CH_OK);
		assert_true(p.a.out.cap < 4 * PIECE); /* nothing piles up */
	}
	free(piece);
	assert_int_equal(p.b.n_msgs, 1);
	assert_true(p.b.got_bytes == BIG);
	const struct mm_ch_stats *sa = mm_ch_stats(p.a.ch), *sb = mm_ch_stats(p.b.ch);
	assert_true(sa->rekeys_sent >= 10);
	assert_true(sa->rekeys_sent == sb->rekeys_received);
	assert_true(sa->bytes_out == BIG && sb->bytes_in == BIG);
	/* the stream still works after all the rekeys, in both directions */
	p.b.keep = 1;
	p.b.check = NULL;
	assert_int_equal(mm_ch_send(p.a.ch, (const uint8_t *)"end", 3, p.now), 0);
	assert_int_equal(flow(&p.a, &p.b, 0, p.now), MM_CH_OK);
	assert_int_equal(p.b.n_msgs, 2);
	assert_memory_equal(p.b.last.d, "end", 3);
	pair_free(&p);
}

static void test_rekey_by_time(void **state)
{
	(void)state;
	struct pair p;
	pair_init(&p, 0);
	handshake(&p);
	for (int i = 0; i < 5; i++) {
		p.now += 60000; /* every other message crosses the 120 s budget */
		assert_int_equal(mm_ch_send(p.b.ch, (const uint8_t *)"tick", 4, p.now), 0);
		assert_int_equal(flow(&p.b, &p.a, 0, p.now), MM_CH_OK);
	}
	assert_int_equal(p.a.n_msgs, 5);
	assert_true(mm_ch_stats(p.b.ch)->rekeys_sent == 2);
	assert_true(mm_ch_stats(p.a.ch)->rekeys_received == 2);
	pair_free(&p);
}

/* The initiator's key confirmation (mm_ch_rekey right after the handshake): the
 * responder authenticates a transport frame from the initiator (frames_in), rekeys,
 * and data goes on both ways; before the handshake it is refused. */
static void test_key_confirmation(void **state)
{
	(void)state;
	struct pair p;
	pair_init(&p, 0);
	assert_int_equal(mm_ch_rekey(p.a.ch, p.now), -ENOTCONN);
	assert_int_equal(mm_ch_state(p.a.ch), MM_CH_START);
	handshake(&p);
	assert_true(mm_ch_stats(p.b.ch)->frames_in == 0);
	assert_int_equal(mm_ch_rekey(p.a.ch, p.now), 0);
	assert_int_equal(flow(&p.a, &p.b, 3, p.now), MM_CH_OK);
	assert_true(mm_ch_stats(p.b.ch)->frames_in == 1);
	assert_true(mm_ch_stats(p.b.ch)->rekeys_received == 1);
	assert_true(mm_ch_stats(p.a.ch)->rekeys_sent == 1);
	assert_int_equal(p.b.n_msgs, 0);
	assert_int_equal(mm_ch_send(p.a.ch, (const uint8_t *)"after", 5, p.now), 0);
	assert_int_equal(flow(&p.a, &p.b, 0, p.now), MM_CH_OK);
	assert_int_equal(p.b.n_msgs, 1);
	assert_memory_equal(p.b.last.d, "after", 5);
	assert_int_equal(mm_ch_send(p.b.ch, (const uint8_t *)"back", 4, p.now), 0);
	assert_int_equal(flow(&p.b, &p.a, 0, p.now), MM_CH_OK);
	assert_int_equal(p.a.n_msgs, 1);
	pair_free(&p);
}

static void test_unknown_key_refused(void **state)
{
	(void)state;
	struct pair p;
	size_t used;
	pair_init(&p, 0);
	p.peers.known = 0;
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	assert_int_equal(mm_ch_feed(p.b.ch, p.a.out.d, p.a.out.len, &used, p.now), -EACCES);
	assert_int_equal(p.b.out.len, 0); /* nothing sent */
	assert_int_equal(p.peers.accepted, 0);
	assert_int_equal(mm_ch_state(p.b.ch), MM_CH_FAILED);
	assert_memory_equal(mm_ch_remote_key(p.b.ch), p.a_pub, 32); /* for the log */
	assert_int_equal(mm_ch_feed(p.b.ch, p.a.out.d, p.a.out.len, &used, p.now), -ENOTCONN);
	pair_free(&p);

	/* a different key than the one in the peers table is refused too */
	pair_init(&p, 0);
	p.peers.pub[0] ^= 1;
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	assert_int_equal(mm_ch_feed(p.b.ch, p.a.out.d, p.a.out.len, &used, p.now), -EACCES);
	assert_int_equal(p.b.out.len, 0);
	pair_free(&p);
}

static void test_psk_mismatch(void **state)
{
	(void)state;
	struct pair p;
	uint8_t psk[32];
	size_t used;
	memset(psk, 7, sizeof psk);
	pair_init(&p, 0);
	/* same psk on both sides works */
	end_free(&p.a);
	end_free(&p.b);
	make_end(&p, &p.a, 1, 3, psk, 0);
	make_end(&p, &p.b, 0, 4, psk, 0);
	handshake(&p);
	pair_free(&p);
	/* initiator without the cluster psk: psk2 is mixed in at the end of message 2, so
	 * the responder cannot tell at message 1; the initiator refuses message 2, and the
	 * responder refuses anything sent with the initiator's wrong keys */
	pair_init(&p, 0);
	end_free(&p.b);
	make_end(&p, &p.b, 0, 4, psk, 0);
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	assert_int_equal(mm_ch_feed(p.b.ch, p.a.out.d, p.a.out.len, &used, p.now), MM_CH_OK);
	assert_int_equal(mm_ch_feed(p.a.ch, p.b.out.d, p.b.out.len, &used, p.now), -EBADMSG);
	assert_int_equal(mm_ch_state(p.a.ch), MM_CH_FAILED);
	pair_free(&p);
	/* and the other way round: responder without, initiator with */
	pair_init(&p, 0);
	end_free(&p.a);
	make_end(&p, &p.a, 1, 3, psk, 0);
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	assert_int_equal(flow(&p.a, &p.b, 0, p.now), MM_CH_OK);
	assert_int_equal(flow(&p.b, &p.a, 0, p.now), -EBADMSG);
	pair_free(&p);
}

/* A raw Noise end of the channel's protocol, to play a later version. */
static void raw_init(struct mm_noise_hs *hs, struct pair *p, int initiator)
{
	static const uint8_t zero_psk[1][32];
	uint8_t r[32];
	det_bytes(r, 32, initiator ? 31 : 32);
	struct mm_noise_config nc = {
		.protocol = MM_CH_PROTOCOL,
		.initiator = initiator,
		.prologue = (const uint8_t *)MM_CH_PROLOGUE,
		.prologue_len = sizeof MM_CH_PROLOGUE - 1,
		.s = initiator ? p->a_priv : p->b_priv,
		.e = r,
		.rs = initiator ? p->b_pub : NULL,
		.psks = zero_psk,
		.n_psks = 1,
	};
	assert_int_equal(mm_noise_hs_init(hs, &nc), 0);
}

/* A frame of the raw end's next handshake message, payload pl, into e->out. */
static void raw_write(struct mm_noise_hs *hs, struct end *e, const uint8_t *pl, size_t len)
{
	uint8_t f[MM_CH_FRAME_MAX];
	size_t n;
	assert_int_equal(mm_noise_hs_write(hs, pl, len, f + 2, MM_NOISE_MAX_MSG, &n), 0);
	f[0] = (uint8_t)(n >> 8);
	f[1] = (uint8_t)n;
	assert_int_equal(buf_put(&e->out, f, n + 2), 0);
}

/* A later version may send more in its handshake payloads than the version byte (and
 * message 1's timestamp); this version takes the connection and ignores them
 * (docs/protocol.md, "Compatibility").  Shorter payloads stay refused. */
static void test_later_hello(void **state)
{
	(void)state;
	struct pair p;
	struct mm_noise_hs hs;
	uint8_t pl[1 + MM_CH_TAI64N_LEN + 40], got[MM_NOISE_MAX_MSG];
	size_t n;

	/* message 1 from a later initiator */
	pair_init(&p, 0);
	raw_init(&hs, &p, 1);
	pl[0] = MM_CH_VERSION;
	mm_ch_tai64n(p.now, pl + 1);
	memset(pl + 1 + MM_CH_TAI64N_LEN, 0xee, 40);
	raw_write(&hs, &p.a, pl, sizeof pl);
	assert_int_equal(flow(&p.a, &p.b, 0, p.now), MM_CH_OK);
	assert_int_equal(mm_ch_state(p.b.ch), MM_CH_ESTABLISHED);
	assert_int_equal(p.peers.accepted, 1);
	assert_int_equal(mm_noise_hs_read(&hs, p.b.out.d + 2, p.b.out.len - 2, got, sizeof got, &n), 0);
	assert_int_equal(n, 1);
	mm_noise_hs_wipe(&hs);
	pair_free(&p);

	/* message 1 one byte short of its timestamp: refused */
	pair_init(&p, 0);
	raw_init(&hs, &p, 1);
	raw_write(&hs, &p.a, pl, MM_CH_TAI64N_LEN);
	assert_true(flow(&p.a, &p.b, 0, p.now) < 0);
	assert_int_equal(p.peers.accepted, 0);
	mm_noise_hs_wipe(&hs);
	pair_free(&p);

	/* message 2 from a later responder: taken; with an empty payload: refused */
	for (size_t len = 5; ; len = 0) {
		pair_init(&p, 0);
		raw_init(&hs, &p, 0);
		assert_int_equal(mm_ch_start(p.a.ch), 0);
		assert_int_equal(mm_noise_hs_read(&hs, p.a.out.d + 2, p.a.out.len - 2, got, sizeof got, &n), 0);
		assert_int_equal(n, 1 + MM_CH_TAI64N_LEN);
		p.a.out.len = 0;
		raw_write(&hs, &p.b, pl, len);
		if (len) {
			assert_int_equal(flow(&p.b, &p.a, 0, p.now), MM_CH_OK);
			assert_int_equal(mm_ch_state(p.a.ch), MM_CH_ESTABLISHED);
		} else {
			assert_true(flow(&p.b, &p.a, 0, p.now) < 0);
			assert_int_not_equal(mm_ch_state(p.a.ch), MM_CH_ESTABLISHED);
		}
		mm_noise_hs_wipe(&hs);
		pair_free(&p);
		if (!len)
			break;
	}
}

static void test_replayed_hello(void **state)
{
	(void)state;
	struct pair p;
	struct buf hello = { 0 };
	size_t used;
	pair_init(&p, 0);
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	assert_int_equal(buf_put(&hello, p.a.out.d, p.a.out.len), 0);
	assert_int_equal(flow(&p.a, &p.b, 0, p.now), MM_CH_OK);
	assert_int_equal(mm_ch_state(p.b.ch), MM_CH_ESTABLISHED);
	/* the same message 1 to a fresh responder (same peers table): refused, silent */
	end_free(&p.b);
	make_end(&p, &p.b, 0, 5, NULL, 0);
	assert_int_equal(mm_ch_feed(p.b.ch, hello.d, hello.len, &used, p.now), -EALREADY);
	assert_int_equal(p.b.out.len, 0);
	assert_int_equal(p.peers.accepted, 1);
	/* a new handshake with the same clock reading is not newer either */
	end_free(&p.a);
	end_free(&p.b);
	make_end(&p, &p.a, 1, 6, NULL, 0);
	make_end(&p, &p.b, 0, 7, NULL, 0);
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	assert_int_equal(flow(&p.a, &p.b, 0, p.now), -EALREADY);
	/* one millisecond later it is */
	end_free(&p.a);
	end_free(&p.b);
	p.now += 1;
	make_end(&p, &p.a, 1, 8, NULL, 0);
	make_end(&p, &p.b, 0, 9, NULL, 0);
	handshake(&p);
	assert_int_equal(p.peers.accepted, 2);
	free(hello.d);
	pair_free(&p);
}

/* After a failed or partial feed: the frame must not have been accepted.  If the
 * flipped bit made the length longer, the receiver waits; more bytes then fail. */
static void expect_rejected(struct end *to, const uint8_t *bytes, size_t len, uint64_t now)
{
	size_t used = 0;
	int rc = mm_ch_feed(to->ch, bytes, len, &used, now);
	if (rc == MM_CH_NEED_MORE) {
		assert_int_equal(used, 0);
		uint8_t *more = calloc(1, len + MM_CH_FRAME_MAX);
		memcpy(more, bytes, len);
		rc = mm_ch_feed(to->ch, more, len + MM_CH_FRAME_MAX, &used, now);
		free(more);
	}
	assert_true(rc < 0);
	assert_int_equal(mm_ch_state(to->ch), MM_CH_FAILED);
	assert_int_equal(to->n_msgs, 0);
}

static void test_bitflip_hello(void **state)
{
	(void)state;
	struct pair p;
	struct buf hello = { 0 };
	pair_init(&p, 0);
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	assert_int_equal(buf_put(&hello, p.a.out.d, p.a.out.len), 0);
	pair_free(&p);
	for (size_t bit = 0; bit < hello.len * 8; bit++) {
		pair_init(&p, 0);
		hello.d[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		expect_rejected(&p.b, hello.d, hello.len, p.now);
		hello.d[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_int_equal(p.b.out.len, 0);
		assert_int_equal(p.peers.accepted, 0);
		pair_free(&p);
	}
	/* and unflipped it works (the loop above tested the real message) */
	pair_init(&p, 0);
	size_t used;
	assert_int_equal(mm_ch_feed(p.b.ch, hello.d, hello.len, &used, p.now), MM_CH_OK);
	assert_int_equal(mm_ch_state(p.b.ch), MM_CH_ESTABLISHED);
	pair_free(&p);
	free(hello.d);
}

static void test_bitflip_response(void **state)
{
	(void)state;
	struct pair p;
	pair_init(&p, 0);
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	assert_int_equal(flow(&p.a, &p.b, 0, p.now), MM_CH_OK);
	struct buf resp = { 0 };
	assert_int_equal(buf_put(&resp, p.b.out.d, p.b.out.len), 0);
	pair_free(&p);
	for (size_t bit = 0; bit < resp.len * 8; bit++) {
		/* the same keys and clock give the same message 1, and so the same response */
		pair_init(&p, 0);
		assert_int_equal(mm_ch_start(p.a.ch), 0);
		p.a.out.len = 0;
		resp.d[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		expect_rejected(&p.a, resp.d, resp.len, p.now);
		resp.d[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		pair_free(&p);
	}
	pair_init(&p, 0);
	size_t used;
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	assert_int_equal(mm_ch_feed(p.a.ch, resp.d, resp.len, &used, p.now), MM_CH_OK);
	assert_int_equal(mm_ch_state(p.a.ch), MM_CH_ESTABLISHED);
	pair_free(&p);
	free(resp.d);
}

static void test_bitflip_transport(void **state)
{
	(void)state;
	struct pair p;
	const char *m = "a transport message";
	struct buf frame = { 0 };
	pair_init(&p, 0);
	handshake(&p);
	assert_int_equal(mm_ch_send(p.a.ch, (const uint8_t *)m, strlen(m), p.now), 0);
	assert_int_equal(buf_put(&frame, p.a.out.d, p.a.out.len), 0);
	pair_free(&p);
	for (size_t bit = 0; bit < frame.len * 8; bit++) {
		pair_init(&p, 0);
		handshake(&p);
		frame.d[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		expect_rejected(&p.b, frame.d, frame.len, p.now);
		frame.d[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		pair_free(&p);
	}
	pair_init(&p, 0);
	handshake(&p);
	size_t used;
	assert_int_equal(mm_ch_feed(p.b.ch, frame.d, frame.len, &used, p.now), MM_CH_OK);
	assert_int_equal(p.b.n_msgs, 1);
	assert_memory_equal(p.b.last.d, m, strlen(m));
	pair_free(&p);
	free(frame.d);
}

/* Every prefix of a frame: NEED_MORE, nothing consumed, nothing changed. */
static void test_truncated_stream(void **state)
{
	(void)state;
	struct pair p;
	size_t used;
	pair_init(&p, 0);
	assert_int_equal(mm_ch_start(p.a.ch), 0);
	for (size_t k = 0; k < p.a.out.len; k++) {
		int rc = mm_ch_feed(p.b.ch, p.a.out.d, k, &used, p.now);
		assert_int_equal(rc, k ? MM_CH_NEED_MORE : MM_CH_OK);
		assert_int_equal(used, 0);
		assert_int_equal(mm_ch_state(p.b.ch), MM_CH_AWAIT_HELLO);
		assert_int_equal(p.b.out.len, 0);
	}
	assert_int_equal(flow(&p.a, &p.b, 0, p.now), MM_CH_OK);
	for (size_t k = 0; k < p.b.out.len; k++) {
		assert_int_equal(mm_ch_feed(p.a.ch, p.b.out.d, k, &used, p.now), k ? MM_CH_NEED_MORE : MM_CH_OK);
		assert_int_equal(used, 0);
		assert_int_equal(mm_ch_state(p.a.ch), MM_CH_AWAIT_RESPONSE);
	}
	assert_int_equal(flow(&p.b, &p.a, 0, p.now), MM_CH_OK);
	/* two frames back to back, cut at every length: the first is consumed once whole */
	assert_int_equal(mm_ch_send(p.a.ch, (const uint8_t *)"one", 3, p.now), 0);
	size_t first = p.a.out.len;
	assert_int_equal(mm_ch_send(p.a.ch, (const uint8_t *)"two", 3, p.now), 0);
	for (size_t k = 0; k < p.a.out.len; k++) {
		struct pair q;
		pair_init(&q, 0);
		handshake(&q);
		int rc = mm_ch_feed(q.b.ch, p.a.out.d, k, &used, q.now);
		assert_int_equal(rc, k == 0 || k == first ? MM_CH_OK : MM_CH_NEED_MORE);
		assert_int_equal(used, k >= first ? first : 0);
		assert_int_equal(q.b.n_msgs, k >= first ? 1 : 0);
		assert_int_equal(mm_ch_feed(q.b.ch, p.a.out.d + used, p.a.out.len - used, &used, q.now), MM_CH_OK);
		assert_int_equal(q.b.n_msgs, 2);
		assert_memory_equal(q.b.last.d, "two", 3);
		pair_free(&q);
	}
	pair_free(&p);
}

static void test_datagram_replay_window(void **state)
{
	(void)state;
	struct pair p;
	enum { N = 9000 };
	uint8_t (*dg)[64] = malloc(sizeof(*dg) * N);
	size_t len[N], n;
	uint8_t pt[64];
	pair_init(&p, 0);
	handshake(&p);
	for (int i = 0; i < N; i++) {
		uint8_t msg[8];
		memcpy(msg, &i, sizeof i);
		memset(msg + sizeof i, 0xab, sizeof msg - sizeof i);
		assert_int_equal(mm_ch_dgram_seal(p.a.ch, msg, sizeof msg, dg[i], 64, &len[i]), 0);
	}
	const struct mm_ch_stats *s = mm_ch_stats(p.b.ch);
	/* in order, and each replayed once */
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg[0], len[0], pt, sizeof pt, &n), 0);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg[0], len[0], pt, sizeof pt, &n), -EALREADY);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg[2], len[2], pt, sizeof pt, &n), 0);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg[1], len[1], pt, sizeof pt, &n), 0); /* reordered */
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg[1], len[1], pt, sizeof pt, &n), -EALREADY);
	assert_true(s->dgram_ok == 3 && s->dgram_replayed == 2);
	/* jump ahead: 8999 opens; 8999 - 8128 + 1 .. still in the window; older too old */
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg[N - 1], len[N - 1], pt, sizeof pt, &n), 0);
	int old = 0, fresh = 0;
	for (int i = 3; i < N - 1; i++) {
		int rc = mm_ch_dgram_open(p.b.ch, dg[i], len[i], pt, sizeof pt, &n);
		if (rc == 0) {
			fresh++;
			assert_int_equal(memcmp(pt, &i, sizeof i), 0);
		} else {
			assert_int_equal(rc, -ESTALE);
			old++;
		}
	}
	/* window: counters within 8128 (8192 - 64) of the highest are accepted */
	assert_true(fresh >= 8000 && fresh <= 8191);
	assert_true(old + fresh == N - 4);
	assert_true(s->dgram_too_old == (uint64_t)old);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg[0], len[0], pt, sizeof pt, &n), -ESTALE);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg[N - 1], len[N - 1], pt, sizeof pt, &n), -EALREADY);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg[N - 2], len[N - 2], pt, sizeof pt, &n), -EALREADY);
	free(dg);
	pair_free(&p);
}

static void test_datagram_tampered_truncated(void **state)
{
	(void)state;
	struct pair p;
	uint8_t dg[64], pt[64];
	size_t len, n;
	pair_init(&p, 0);
	handshake(&p);
	assert_int_equal(mm_ch_dgram_seal(p.a.ch, (const uint8_t *)"gossip digest", 13, dg, sizeof dg, &len), 0);
	const struct mm_ch_stats *s = mm_ch_stats(p.b.ch);
	uint64_t tampered = 0, truncated = 0;
	for (size_t bit = 0; bit < len * 8; bit++) {
		dg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		int rc = mm_ch_dgram_open(p.b.ch, dg, len, pt, sizeof pt, &n);
		dg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_int_equal(rc, -EBADMSG);
		tampered++;
	}
	for (size_t k = 0; k < len; k++) {
		int rc = mm_ch_dgram_open(p.b.ch, dg, k, pt, sizeof pt, &n);
		assert_int_equal(rc, -EBADMSG);
		if (k < MM_CH_DGRAM_OVERHEAD)
			truncated++;
		else
			tampered++;
	}
	assert_true(s->dgram_tampered == tampered);
	assert_true(s->dgram_truncated == truncated);
	assert_true(s->dgram_ok == 0);
	/* forgeries did not move the window: the real one still opens, once */
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg, len, pt, sizeof pt, &n), 0);
	assert_int_equal(n, 13);
	assert_memory_equal(pt, "gossip digest", 13);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg, len, pt, sizeof pt, &n), -EALREADY);
	/* the reserved counter 2^64-1 is refused */
	memset(dg, 0xff, 8);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, dg, len, pt, sizeof pt, &n), -EBADMSG);
	pair_free(&p);
}

/* The largest datagram the channel seals, with the node id the daemon puts before it,
 * is one UDP can carry over IPv4 (65,507 bytes of payload): sent through a real
 * loopback socket it arrives whole and opens.  One byte more is refused before
 * sealing (no counter spent), and the receiver drops anything longer. */
static void test_datagram_size_limit(void **state)
{
	(void)state;
	struct pair p;
	size_t max = MM_CH_DGRAM_MAX_PLAIN, len = 0, n = 0;
	uint8_t *msg = malloc(max + 1), *pkt = malloc(MM_CH_DGRAM_PREFIX + max + 64),
	        *got = malloc(70000), *pt = malloc(70000);
	assert_true(msg && pkt && got && pt);
	det_bytes(msg, max + 1, 9);
	pair_init(&p, 0);
	handshake(&p);
	assert_int_equal(MM_CH_DGRAM_PREFIX + MM_CH_DGRAM_MAX, 65507);
	assert_int_equal(mm_ch_dgram_seal(p.a.ch, msg, max + 1, pkt + MM_CH_DGRAM_PREFIX,
	                                  max + 64, &len), -EMSGSIZE);
	assert_int_equal(mm_ch_dgram_seal(p.a.ch, msg, max, pkt + MM_CH_DGRAM_PREFIX, max + 64, &len), 0);
	assert_int_equal(len, MM_CH_DGRAM_MAX);
	memset(pkt, 0x42, MM_CH_DGRAM_PREFIX);

	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof sa;
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	ssize_t sent = sendto(fd, pkt, MM_CH_DGRAM_PREFIX + len, 0, (struct sockaddr *)&sa, sizeof sa);
	assert_int_equal(sent, (ssize_t)(MM_CH_DGRAM_PREFIX + len));
	ssize_t r = recv(fd, got, 70000, 0);
	assert_int_equal(r, sent);
	/* one byte more than UDP carries over IPv4 is refused by the kernel: the limit is
	 * the real one, not one below it */
	assert_int_equal(sendto(fd, pkt, 65508, 0, (struct sockaddr *)&sa, sizeof sa), -1);
	close(fd);

	assert_int_equal(mm_ch_dgram_open(p.b.ch, got + MM_CH_DGRAM_PREFIX, (size_t)r - MM_CH_DGRAM_PREFIX,
	                                  pt, 70000, &n), 0);
	assert_int_equal(n, max);
	assert_memory_equal(pt, msg, max);
	/* the refused seal spent no counter: the next datagram is counter 1 */
	assert_int_equal(mm_ch_dgram_seal(p.a.ch, msg, 10, pkt, 64, &len), 0);
	assert_int_equal(pkt[7], 1);
	/* longer than any datagram we send: dropped as malformed before any crypto */
	const struct mm_ch_stats *s = mm_ch_stats(p.b.ch);
	uint64_t truncated = s->dgram_truncated;
	memset(got, 0, 70000);
	assert_int_equal(mm_ch_dgram_open(p.b.ch, got, MM_CH_DGRAM_MAX + 1, pt, 70000, &n), -EBADMSG);
	assert_int_equal(s->dgram_truncated, truncated + 1);
	free(msg);
	free(pkt);
	free(got);
	free(pt);
	pair_free(&p);
}

static void test_tai64n(void **state)
{
	(void)state;
	uint8_t t[12], u[12];
	mm_ch_tai64n(1500, t);
	static const uint8_t want[12] = { 0x40, 0, 0, 0, 0, 0, 0, 1, 0x1d, 0xcd, 0x65, 0x00 };
	assert_memory_equal(t, want, 12);
	mm_ch_tai64n(1501, u);
	assert_true(memcmp(t, u, 12) < 0);
	mm_ch_tai64n(2000, u);
	assert_true(memcmp(t, u, 12) < 0);
}

/* TAI64N back to milliseconds (what the daemon keeps of a peer's last handshake):
 * exact for a label of ours, rounded up otherwise, 0 when out of range. */
static void test_tai64n_ms(void **state)
{
	(void)state;
	uint8_t ts[MM_CH_TAI64N_LEN];
	for (uint64_t ms = 0; ms < 4000000000000ULL; ms = ms * 3 + 7) {
		mm_ch_tai64n(ms, ts);
		assert_true(mm_ch_tai64n_ms(ts) == ms);
	}
	mm_ch_tai64n(1700000000123ULL, ts);
	ts[11] ^= 1; /* 123 ms and 1 ns (nanos 123000001) */
	assert_true(mm_ch_tai64n_ms(ts) == 1700000000124ULL);
	uint8_t back[MM_CH_TAI64N_LEN];
	mm_ch_tai64n(mm_ch_tai64n_ms(ts), back);
	assert_true(memcmp(back, ts, sizeof ts) > 0); /* never older than the label */
	memset(ts, 0, sizeof ts); /* before 1970 */
	assert_true(mm_ch_tai64n_ms(ts) == 0);
	memset(ts, 0xff, sizeof ts); /* nanos >= 10^9, and too far ahead */
	assert_true(mm_ch_tai64n_ms(ts) == 0);
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
		cmocka_unit_test(test_tai64n),
		cmocka_unit_test(test_tai64n_ms),
		cmocka_unit_test(test_handshake_and_data),
		cmocka_unit_test(test_api_misuse),
		cmocka_unit_test(test_unknown_key_refused),
		cmocka_unit_test(test_psk_mismatch),
		cmocka_unit_test(test_later_hello),
		cmocka_unit_test(test_replayed_hello),
		cmocka_unit_test(test_bitflip_hello),
		cmocka_unit_test(test_bitflip_response),
		cmocka_unit_test(test_bitflip_transport),
		cmocka_unit_test(test_truncated_stream),
		cmocka_unit_test(test_datagram_replay_window),
		cmocka_unit_test(test_datagram_tampered_truncated),
		cmocka_unit_test(test_datagram_size_limit),
		cmocka_unit_test(test_rekey_by_time),
		cmocka_unit_test(test_key_confirmation),
		cmocka_unit_test(test_stream_50mb),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
