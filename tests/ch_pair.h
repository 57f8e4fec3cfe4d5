/*
 * ch_pair.h — two Noise channels (proto/channel.h) talking in memory, for unit tests
 * that need an established channel without a socket (test_link.c, test_wipe.c).  End
 * `a` dials, `b` answers and accepts only a's key; what an end emits stays in its
 * `out` until chp_flow() feeds it to the other end.  Keys are random.  Header-only
 * (static inline functions: a program need not use them all), as lock_check.h.
 */
#ifndef MAILMESH_TESTS_CH_PAIR_H
#define MAILMESH_TESTS_CH_PAIR_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "proto/channel.h"
#include "proto/noise.h"

struct chp_end {
	struct mm_ch *ch;
	uint8_t *out;         /* emitted stream bytes (ciphertext only) */
	size_t out_len, out_cap;
	int fail_emit;        /* emit fails (a closed socket, a full queue) */
	int chunks;           /* chunks delivered */
	int n_msgs;           /* messages delivered (their last chunk) */
};

struct chp_pair {
	struct chp_end a, b; /* a initiator, b responder */
	uint8_t a_priv[32], b_priv[32];
	uint8_t a_pub[32], b_pub[32];
};

static inline int chp_emit(void *arg, const uint8_t *b, size_t n)
{
	struct chp_end *e = arg;
	if (e->fail_emit)
		return -ENOBUFS;
	if (e->out_len + n > e->out_cap) {
		size_t cap = (e->out_len + n) * 2;
		uint8_t *o = realloc(e->out, cap);
		if (!o)
			return -ENOMEM;
		e->out = o;
		e->out_cap = cap;
	}
	memcpy(e->out + e->out_len, b, n);
	e->out_len += n;
	return 0;
}

static inline int chp_deliver(void *arg, const struct mm_ch_chunk *c)
{
	struct chp_end *e = arg;
	e->chunks++;
	if (c->last)
		e->n_msgs++;
	return 0;
}

/* b's peers: a's key only, never heard before */
static inline int chp_lookup(void *arg, const uint8_t pub[32], uint8_t last_r[MM_CH_TAI64N_LEN])
{
	const struct chp_pair *p = arg;
	if (memcmp(pub, p->a_pub, 32) != 0)
		return -ENOENT;
	memset(last_r, 0, MM_CH_TAI64N_LEN);
	return 0;
}

static inline void chp_accepted(void *arg, const uint8_t pub[32], const uint8_t ts[MM_CH_TAI64N_LEN])
{
	(void)arg;
	(void)pub;
	(void)ts;
}

/* Both ends made at now_ms (rekey_bytes 0: the channel's default), nothing sent yet. */
static inline void chp_init(struct chp_pair *p, uint64_t now_ms, uint64_t rekey_bytes)
{
	uint8_t r[32];
	memset(p, 0, sizeof *p);
	randombytes_buf(r, sizeof r);
	mm_key_generate(p->a_priv, r);
	randombytes_buf(r, sizeof r);
	mm_key_generate(p->b_priv, r);
	assert_int_equal(mm_key_public(p->a_priv, p->a_pub), 0);
	assert_int_equal(mm_key_public(p->b_priv, p->b_pub), 0);
	for (int i = 0; i < 2; i++) {
		struct chp_end *e = i ? &p->b : &p->a;
		randombytes_buf(r, sizeof r);
		struct mm_ch_config cfg = {
			.initiator = !i,
			.local_priv = i ? p->b_priv : p->a_priv,
			.remote_pub = i ? NULL : p->b_pub,
			.random32 = r,
			.now_ms = now_ms,
			.rekey_bytes = rekey_bytes,
			.peers = { chp_lookup, chp_accepted, p },
			.io = { chp_emit, chp_deliver, e },
		};
		assert_int_equal(mm_ch_new(&e->ch, &cfg), 0);
	}
	sodium_memzero(r, sizeof r);
}

/* Feeds what `from` emitted to `to` at now_ms: all of it must be taken. */
static inline void chp_flow(struct chp_end *from, struct chp_end *to, uint64_t now_ms)
{
	size_t used = 0;
	assert_int_equal(mm_ch_feed(to->ch, from->out, from->out_len, &used, now_ms), MM_CH_OK);
	assert_int_equal(used, from->out_len);
	from->out_len = 0;
}

/* Messages 1 and 2: both ends established (b not confirmed yet: no frame from a). */
static inline void chp_handshake(struct chp_pair *p, uint64_t now_ms)
{
	assert_int_equal(mm_ch_start(p->a.ch), 0);
	chp_flow(&p->a, &p->b, now_ms);
	chp_flow(&p->b, &p->a, now_ms);
	assert_int_equal(mm_ch_state(p->a.ch), MM_CH_ESTABLISHED);
	assert_int_equal(mm_ch_state(p->b.ch), MM_CH_ESTABLISHED);
}

static inline void chp_end_free(struct chp_end *e)
{
	mm_ch_free(&e->ch);
	free(e->out);
	e->out = NULL;
	e->out_len = e->out_cap = 0;
}

static inline void chp_free(struct chp_pair *p)
{
	chp_end_free(&p->a);
	chp_end_free(&p->b);
}

#endif
