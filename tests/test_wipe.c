/*
 * test_wipe.c — checks that mail data and keys do not outlive their buffers: no block
 * the transport code frees (proto/channel.c's frame buffers, proto/sync.c's body and
 * message buffers) still holds a marker the test sent through it, nor a private key.
 *
 * How: this program is linked with `-Wl,--wrap=free` (Makefile), so every free() of
 * our own objects (libmm.a, this file) goes through __wrap_free, which looks for the
 * marker in the whole block before it is released.  Libraries' own frees (libsodium,
 * cmocka, msgpack's realloc) are not seen; that is what the tests aim at anyway: the
 * buffers our code owns.  Works under ASan too (malloc_usable_size is intercepted).
 */
#include <errno.h>
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "proto/channel.h"

/* ---- the free() hook ------------------------------------------------------------ */

void __real_free(void *p);
void __wrap_free(void *p);

static const uint8_t *watch;  /* bytes that must not be in a freed block */
static size_t watch_len;
static volatile int watch_hits; /* freed blocks that held them (volatile: the compiler
                                * takes free() for one that touches no global) */

void __wrap_free(void *p)
{
	if (p && watch_len) {
		size_t n = malloc_usable_size(p);
		if (n >= watch_len && memmem(p, n, watch, watch_len))
			watch_hits++;
	}
	__real_free(p);
}

static void watch_for(const uint8_t *bytes, size_t len)
{
	watch = bytes;
	watch_len = len;
	watch_hits = 0;
}

/* ---- a channel pair in memory ----------------------------------------------------- */

struct end {
	struct mm_ch *ch;
	uint8_t *out;         /* emitted stream bytes (ciphertext only) */
	size_t out_len, out_cap;
	int fail_emit;        /* emit fails (a closed socket, a full queue) */
	int n_msgs;
};

static int emit_cb(void *arg, const uint8_t *b, size_t n)
{
	struct end *e = arg;
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

static int deliver_cb(void *arg, const struct mm_ch_chunk *c)
{
	struct end *e = arg;
	if (c->last)
		e->n_msgs++;
	return 0;
}

static uint8_t peer_pub[32];

static int lookup_cb(void *arg, const uint8_t pub[32], uint8_t last_r[MM_CH_TAI64N_LEN])
{
	(void)arg;
	if (memcmp(pub, peer_pub, 32) != 0)
		return -ENOENT;
	memset(last_r, 0, MM_CH_TAI64N_LEN);
	return 0;
}

static void accepted_cb(void *arg, const uint8_t pub[32], const uint8_t ts[MM_CH_TAI64N_LEN])
{
	(void)arg;
	(void)pub;
	(void)ts;
}

struct pair {
	struct end a, b; /* a initiator, b responder */
	uint8_t a_priv[32], b_priv[32];
};

static void pair_init(struct pair *p, uint64_t rekey_bytes)
{
	uint8_t r[32], b_pub[32];
	memset(p, 0, sizeof *p);
	randombytes_buf(r, sizeof r);
	mm_key_generate(p->a_priv, r);
	randombytes_buf(r, sizeof r);
	mm_key_generate(p->b_priv, r);
	assert_int_equal(mm_key_public(p->a_priv, peer_pub), 0);
	assert_int_equal(mm_key_public(p->b_priv, b_pub), 0);
	for (int i = 0; i < 2; i++) {
		struct end *e = i ? &p->b : &p->a;
		randombytes_buf(r, sizeof r);
		struct mm_ch_config cfg = {
			.initiator = !i,
			.local_priv = i ? p->b_priv : p->a_priv,
			.remote_pub = i ? NULL : b_pub,
			.random32 = r,
			.now_ms = 1700000000000ULL,
			.rekey_bytes = rekey_bytes,
			.peers = { lookup_cb, accepted_cb, NULL },
			.io = { emit_cb, deliver_cb, e },
		};
		assert_int_equal(mm_ch_new(&e->ch, &cfg), 0);
	}
	sodium_memzero(r, sizeof r);
}

static void flow(struct end *from, struct end *to)
{
	size_t used = 0;
	assert_int_equal(mm_ch_feed(to->ch, from->out, from->out_len, &used, 1700000000000ULL), MM_CH_OK);
	assert_int_equal(used, from->out_len);
	from->out_len = 0;
}

static void handshake(struct pair *p)
{
	assert_int_equal(mm_ch_start(p->a.ch), 0);
	flow(&p->a, &p->b);
	flow(&p->b, &p->a);
	assert_int_equal(mm_ch_state(p->a.ch), MM_CH_ESTABLISHED);
	assert_int_equal(mm_ch_state(p->b.ch), MM_CH_ESTABLISHED);
}

static void end_free(struct end *e)
{
	mm_ch_free(&e->ch);
	free(e->out);
	e->out = NULL;
}

/* A message of `len` bytes with the marker at its start, middle and end. */
static const uint8_t MARKER[] = "MAILMESH-WIPE-MARKER-7d1f";

static uint8_t *marked(size_t len)
{
	static uint8_t buf[200000];
	assert_true(len <= sizeof buf && len >= 3 * sizeof MARKER);
	memset(buf, 'x', len);
	memcpy(buf, MARKER, sizeof MARKER - 1);
	memcpy(buf + len / 2, MARKER, sizeof MARKER - 1);
	memcpy(buf + len - (sizeof MARKER - 1), MARKER, sizeof MARKER - 1);
	return buf;
}

/* ---- tests ------------------------------------------------------------------------ */

/* What the receiver decrypted (one-frame and multi-frame messages) is gone once the
 * channels are freed, and so is what the sender framed. */
static void test_channel_data_wiped(void **state)
{
	(void)state;
	struct pair p;
	pair_init(&p, 0);
	handshake(&p);
	for (size_t len = 100; len <= 150000; len += 149900) {
		assert_int_equal(mm_ch_send(p.a.ch, marked(len), len, 1700000000000ULL), 0);
		flow(&p.a, &p.b);
	}
	assert_int_equal(p.b.n_msgs, 2);
	watch_for(MARKER, sizeof MARKER - 1);
	end_free(&p.a);
	end_free(&p.b);
	assert_int_equal(watch_hits, 0);
	watch_for(NULL, 0);
	sodium_memzero(marked(200), 200);
}

/* A send that fails before its frame is encrypted (here: the rekey frame due before
 * it cannot be emitted) leaves the plaintext in the channel's send buffer: it must
 * not go back to the allocator as it is. */
static void test_channel_failed_send_wiped(void **state)
{
	(void)state;
	struct pair p;
	pair_init(&p, 64); /* a rekey before every frame once 64 bytes went */
	handshake(&p);
	assert_int_equal(mm_ch_send(p.a.ch, marked(1000), 1000, 1700000000000ULL), 0);
	p.a.fail_emit = 1;
	assert_true(mm_ch_send(p.a.ch, marked(1000), 1000, 1700000000000ULL) < 0);
	assert_int_equal(mm_ch_state(p.a.ch), MM_CH_FAILED);
	watch_for(MARKER, sizeof MARKER - 1);
	end_free(&p.a);
	end_free(&p.b);
	assert_int_equal(watch_hits, 0);
	watch_for(NULL, 0);
}

/* The static private keys (copied into the handshake state) leave nothing behind,
 * whether the handshake completed or the channel was freed half-way. */
static void test_channel_keys_wiped(void **state)
{
	(void)state;
	struct pair p;
	for (int done = 0; done < 2; done++) {
		pair_init(&p, 0);
		if (done)
			handshake(&p);
		else
			assert_int_equal(mm_ch_start(p.a.ch), 0);
		uint8_t keys[2][32];
		memcpy(keys[0], p.a_priv, 32);
		memcpy(keys[1], p.b_priv, 32);
		/* one end at a time, each watched for its own key */
		watch_for(keys[0], 32);
		end_free(&p.a);
		assert_int_equal(watch_hits, 0);
		watch_for(keys[1], 32);
		end_free(&p.b);
		assert_int_equal(watch_hits, 0);
		watch_for(NULL, 0);
		sodium_memzero(keys, sizeof keys);
		sodium_memzero(&p, sizeof p);
	}
}

/* The hook itself: a block that holds the marker when freed is seen. */
static void test_hook_sees_marker(void **state)
{
	(void)state;
	uint8_t *b = malloc(4096);
	assert_non_null(b);
	memset(b, 0, 4096);
	memcpy(b + 1000, MARKER, sizeof MARKER - 1);
	__asm__ volatile("" : : "r"(b) : "memory"); /* (the stores are not dead) */
	watch_for(MARKER, sizeof MARKER - 1);
	free(b);
	assert_int_equal(watch_hits, 1);
	watch_for(NULL, 0);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hook_sees_marker),
		cmocka_unit_test(test_channel_keys_wiped),
		cmocka_unit_test(test_channel_data_wiped),
		cmocka_unit_test(test_channel_failed_send_wiped),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
