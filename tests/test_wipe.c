/*
 * test_wipe.c — checks that mail data and keys do not outlive their buffers: no block
 * the transport code frees (proto/channel.c's frame buffers, proto/sync.c's body and
 * message buffers) still holds a marker the test sent through it, nor a private key.
 *
 * How: this program is linked with `-Wl,--wrap=free -Wl,--wrap=realloc` (Makefile), so
 * every free() of our own objects (libmm.a, libmmnode.a, this file, and msgpack-c's
 * inline helpers compiled into them) goes through __wrap_free, which looks for the
 * marker in the whole block before it is released, and every realloc() through
 * __wrap_realloc, which looks into the old block and counts it when the block moved
 * (the old one was freed as it was: how a growing buffer leaks).  Libraries' own frees
 * (libsodium, cmocka) are not seen; that is what the tests aim at anyway: the buffers
 * our code owns.  The harness's own copies of mail (its message queue, its body store)
 * are released with __real_free, unseen.  Works under ASan too (malloc_usable_size is
 * intercepted; ASan's realloc always moves, which only makes the check stricter).
 * A hit prints the stack of the free that leaked.
 */
#include <errno.h>
#include <execinfo.h>
#include <malloc.h>
#include <stdio.h>
#include <unistd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "crdt/crdt.h"
#include "proto/channel.h"
#include "proto/fetch.h"
#include "proto/sync.h"
#include "tests/ch_pair.h"

#define T0 1700000000000ULL /* the channels' clock (ms) */

/* ---- the free() hook ------------------------------------------------------------ */

void __real_free(void *p);
void __wrap_free(void *p);
void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);

static const uint8_t *watch;  /* bytes that must not be in a freed block */
static size_t watch_len;
static volatile int watch_hits; /* freed blocks that held them (volatile: the compiler
                                * takes free() for one that touches no global) */

static bool holds_watch(void *p)
{
	if (!p || !watch_len)
		return false;
	size_t n = malloc_usable_size(p);
	return n >= watch_len && memmem(p, n, watch, watch_len);
}

static bool hits_expected; /* test_hook_sees_marker: no stacks to print */

static void hit(const char *how)
{
	void *bt[16];
	watch_hits++;
	if (hits_expected)
		return;
	fprintf(stderr, "test_wipe: a block %s still held the marker, at:\n", how);
	backtrace_symbols_fd(bt, backtrace(bt, 16), STDERR_FILENO);
}

void __wrap_free(void *p)
{
	if (holds_watch(p))
		hit("freed");
	__real_free(p);
}

void *__wrap_realloc(void *p, size_t n)
{
	bool held = holds_watch(p);
	void *q = __real_realloc(p, n);
	/* moved: the old block went back to the allocator as it was (a failed realloc
	 * keeps it, and n == 0 frees it) */
	if (held && (q ? q != p : n == 0))
		hit("left behind by realloc");
	return q;
}

static void watch_for(const uint8_t *bytes, size_t len)
{
	watch = bytes;
	watch_len = len;
	watch_hits = 0;
}

/* A message of `len` bytes with the marker at its start, middle and end. */
static const uint8_t MARKER[] = "MAILMESH-WIPE-MARKER-7d1f";
/* A keyword that is in no body (test_sync_keyword_wiped looks for the keyword alone) */
static const uint8_t MARKER_KW[] = "MAILMESH-WIPE-KEYWORD-c0e2";

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
	struct chp_pair p;
	chp_init(&p, T0, 0);
	chp_handshake(&p, T0);
	for (size_t len = 100; len <= 150000; len += 149900) {
		assert_int_equal(mm_ch_send(p.a.ch, marked(len), len, 1700000000000ULL), 0);
		chp_flow(&p.a, &p.b, T0);
	}
	assert_int_equal(p.b.n_msgs, 2);
	watch_for(MARKER, sizeof MARKER - 1);
	chp_end_free(&p.a);
	chp_end_free(&p.b);
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
	struct chp_pair p;
	chp_init(&p, T0, 64); /* a rekey before every frame once 64 bytes went */
	chp_handshake(&p, T0);
	assert_int_equal(mm_ch_send(p.a.ch, marked(1000), 1000, 1700000000000ULL), 0);
	p.a.fail_emit = 1;
	assert_true(mm_ch_send(p.a.ch, marked(1000), 1000, 1700000000000ULL) < 0);
	assert_int_equal(mm_ch_state(p.a.ch), MM_CH_FAILED);
	watch_for(MARKER, sizeof MARKER - 1);
	chp_end_free(&p.a);
	chp_end_free(&p.b);
	assert_int_equal(watch_hits, 0);
	watch_for(NULL, 0);
}

/* The static private keys (copied into the handshake state) leave nothing behind,
 * whether the handshake completed or the channel was freed half-way. */
static void test_channel_keys_wiped(void **state)
{
	(void)state;
	struct chp_pair p;
	for (int done = 0; done < 2; done++) {
		chp_init(&p, T0, 0);
		if (done)
			chp_handshake(&p, T0);
		else
			assert_int_equal(mm_ch_start(p.a.ch), 0);
		uint8_t keys[2][32];
		memcpy(keys[0], p.a_priv, 32);
		memcpy(keys[1], p.b_priv, 32);
		/* one end at a time, each watched for its own key */
		watch_for(keys[0], 32);
		chp_end_free(&p.a);
		assert_int_equal(watch_hits, 0);
		watch_for(keys[1], 32);
		chp_end_free(&p.b);
		assert_int_equal(watch_hits, 0);
		watch_for(NULL, 0);
		sodium_memzero(keys, sizeof keys);
		sodium_memzero(&p, sizeof p);
	}
}

/* ---- a sync session pair in memory -------------------------------------------------- */

/* Two nodes (0 = A, 1 = B), each with its state, body store and fetch scheduler, and
 * one real proto/sync session with the other, over an in-memory ordered transport.
 * What the harness itself keeps of the mail (queued messages, stored bodies, bodies
 * being received) it releases with __real_free: only the sessions' frees are judged. */

struct sbody {
	struct sbody *next;
	uint8_t id[MM_ID_LEN];
	uint8_t *data;
	size_t len;
};

struct snode {
	struct mm_state *st;
	struct mm_clock clk;
	struct mm_fetch *fetch;
	struct mm_sync *sess;
	struct sbody *bodies;
	int to;
};

struct smsg {
	struct smsg *next;
	int to;
	enum mm_chan ch;
	size_t len;
	uint8_t p[];
};

static struct snode sn[2];
static struct smsg *sq_head, *sq_tail;
static uint64_t s_now = 1000000;

static struct sbody *sbody_find(struct snode *nd, const uint8_t *id)
{
	for (struct sbody *b = nd->bodies; b; b = b->next)
		if (!memcmp(b->id, id, MM_ID_LEN))
			return b;
	return NULL;
}

static void sbody_put(struct snode *nd, const uint8_t *id, const uint8_t *data, size_t len)
{
	if (sbody_find(nd, id))
		return;
	struct sbody *b = calloc(1, sizeof *b);
	assert_non_null(b);
	memcpy(b->id, id, MM_ID_LEN);
	assert_non_null(b->data = malloc(len ? len : 1));
	memcpy(b->data, data, len);
	b->len = len;
	b->next = nd->bodies;
	nd->bodies = b;
}

static ssize_t s_read(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t off,
                      uint8_t *buf, size_t cap)
{
	(void)user;
	struct sbody *b = sbody_find(arg, id);
	if (!b)
		return -ENOENT;
	if (off >= b->len)
		return 0;
	size_t n = b->len - off < cap ? (size_t)(b->len - off) : cap;
	memcpy(buf, b->data + off, n);
	return (ssize_t)n;
}

struct swr {
	struct snode *nd;
	uint8_t id[MM_ID_LEN];
	uint8_t *buf;
	size_t len, size;
};

static int s_begin(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size, void **h_r)
{
	(void)user;
	struct swr *w = calloc(1, sizeof *w);
	assert_non_null(w);
	assert_non_null(w->buf = malloc(size ? size : 1));
	w->nd = arg;
	memcpy(w->id, id, MM_ID_LEN);
	w->size = size;
	*h_r = w;
	return 0;
}

static int s_write(void *h, const uint8_t *data, size_t len)
{
	struct swr *w = h;
	if (w->len + len > w->size)
		return -EFBIG;
	memcpy(w->buf + w->len, data, len);
	w->len += len;
	return 0;
}

static int s_commit(void *h)
{
	struct swr *w = h;
	sbody_put(w->nd, w->id, w->buf, w->len);
	__real_free(w->buf);
	__real_free(w);
	return 0;
}

static void s_abort(void *h)
{
	struct swr *w = h;
	__real_free(w->buf);
	__real_free(w);
}

static int s_have(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	(void)user;
	return sbody_find(arg, id) ? 1 : 0;
}

static bool s_needed(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	(void)arg, (void)user, (void)id;
	return true;
}

static int s_send(void *arg, enum mm_chan ch, const uint8_t *p, size_t len)
{
	struct smsg *m = malloc(sizeof *m + len);
	assert_non_null(m);
	memcpy(m->p, p, len);
	m->len = len;
	m->to = *(int *)arg;
	m->ch = ch;
	m->next = NULL;
	if (sq_tail)
		sq_tail->next = m;
	else
		sq_head = m;
	sq_tail = m;
	return 0;
}

/* Delivers what is queued, ticking the schedulers, until nothing moves. */
static void s_run(void)
{
	for (int quiet = 0; quiet < 3;) {
		if (!sq_head)
			quiet++;
		while (sq_head) {
			struct smsg *m = sq_head;
			sq_head = m->next;
			if (!sq_head)
				sq_tail = NULL;
			assert_int_equal(mm_sync_recv(sn[m->to].sess, m->ch, m->p, m->len, s_now), 0);
			__real_free(m);
			quiet = 0;
		}
		s_now += 100;
		for (int i = 0; i < 2; i++) {
			mm_fetch_tick(sn[i].fetch, s_now);
			mm_sync_tick(sn[i].sess, s_now);
		}
	}
}

static void s_init(void)
{
	for (int i = 0; i < 2; i++) {
		struct snode *nd = &sn[i];
		memset(nd, 0, sizeof *nd);
		nd->to = 1 - i;
		assert_non_null(nd->st = mm_state_new());
		mm_clock_init(&nd->clk, (uint64_t)i + 1, 0);
		struct mm_fetch_config fc = { .needed = s_needed, .needed_arg = nd };
		assert_int_equal(mm_fetch_new(&fc, &nd->fetch), 0);
	}
	for (int i = 0; i < 2; i++) {
		struct snode *nd = &sn[i];
		struct mm_sync_config c = {
			.state = nd->st,
			.local_node = (uint64_t)i + 1,
			.peer_node = (uint64_t)(1 - i) + 1,
			.io = { s_send, &nd->to },
			.body = { s_read, s_begin, s_write, s_commit, s_abort, s_have, nd },
			.fetch = nd->fetch,
			.clock = &nd->clk,
		};
		assert_int_equal(mm_sync_new(&c, &nd->sess), 0);
		mm_sync_connected(nd->sess, s_now);
	}
}

/* The states and stores go with the sessions already freed and unwatched: they hold
 * the mail on purpose (a node's index, its Maildir). */
static void s_free_rest(void)
{
	for (int i = 0; i < 2; i++) {
		struct snode *nd = &sn[i];
		mm_fetch_free(&nd->fetch);
		mm_state_free(&nd->st);
		while (nd->bodies) {
			struct sbody *b = nd->bodies;
			nd->bodies = b->next;
			__real_free(b->data);
			__real_free(b);
		}
	}
}

/* A message on node i: a body of `len` bytes with the marker at its start, middle
 * and end, and the marker as a keyword.  Its record goes to `out` (may be NULL). */
static void s_deliver(int i, const char *folder, size_t len, struct mm_delta *out)
{
	uint8_t *body = marked(len);
	body[len / 3] = (uint8_t)('a' + (len & 15)); /* every body its own id */
	uint8_t id[MM_ID_LEN];
	mm_body_id(body, len, id);
	sbody_put(&sn[i], id, body, len);
	const char *kw[] = { (const char *)MARKER_KW };
	struct mm_user *u = mm_state_user(sn[i].st, "ex.com/alice", true);
	assert_non_null(u);
	assert_true(mm_user_deliver(u, folder, id, len, 1700000000, 0, kw, 1, 0,
	                            mm_clock_tick(&sn[i].clk, s_now), NULL, NULL, NULL, out) >= 0);
}

/* Mail that went through a session pair, both ways, by every path (a push with its
 * body inline and one whose body is fetched in BODY chunks, a round's records with
 * inline bodies, and a body fetched in a round), leaves nothing in what the sessions
 * free: not while they run (message buffers growing, batches done) nor when they are
 * freed. */
static void test_sync_data_wiped(void **state)
{
	(void)state;
	s_init();
	watch_for(MARKER, sizeof MARKER - 1);
	/* pushes from A: a small body (inline) and a large one (GET_BODY / BODY) */
	struct mm_delta *d = mm_delta_new();
	assert_non_null(d);
	s_deliver(0, "INBOX", 2000, d);
	s_deliver(0, "INBOX", 150000, d);
	assert_true(mm_sync_push(sn[0].sess, d, s_now) > 0);
	mm_delta_free(&d);
	s_run();
	/* a round from B to A: records with an inline body and a fetched one */
	s_deliver(1, "Archive", 5000, NULL);
	s_deliver(1, "Archive", 120000, NULL);
	assert_int_equal(mm_sync_gossip(sn[0].sess, s_now), 0);
	s_run();
	for (int i = 0; i < 2; i++) {
		const struct mm_sync_stats *st = mm_sync_stats(sn[i].sess);
		assert_int_equal(st->bodies_in, 2);
		assert_int_equal(st->records_in >= 2, 1);
	}
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	mm_state_root(sn[0].st, ra);
	mm_state_root(sn[1].st, rb);
	assert_memory_equal(ra, rb, MM_HASH_LEN);
	int running = watch_hits;
	mm_sync_free(&sn[0].sess);
	mm_sync_free(&sn[1].sess);
	int at_free = watch_hits - running;
	watch_for(NULL, 0);
	s_free_rest();
	assert_int_equal(running, 0);
	assert_int_equal(at_free, 0);
}

/* The same for the keyword alone (records without bodies: a round that finds the
 * bodies present, and a push of a keyword change). */
static void test_sync_keyword_wiped(void **state)
{
	(void)state;
	s_init();
	watch_for(MARKER_KW, sizeof MARKER_KW - 1);
	s_deliver(0, "INBOX", 300, NULL);
	/* the body is on B already: only the record goes */
	sbody_put(&sn[1], sn[0].bodies->id, sn[0].bodies->data, sn[0].bodies->len);
	assert_int_equal(mm_sync_gossip(sn[1].sess, s_now), 0);
	s_run();
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	mm_state_root(sn[0].st, ra);
	mm_state_root(sn[1].st, rb);
	assert_memory_equal(ra, rb, MM_HASH_LEN);
	assert_int_equal(mm_sync_stats(sn[1].sess)->bodies_in, 0);
	mm_sync_free(&sn[0].sess);
	mm_sync_free(&sn[1].sess);
	int hits = watch_hits;
	watch_for(NULL, 0);
	s_free_rest();
	assert_int_equal(hits, 0);
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
	hits_expected = true;
	free(b);
	assert_int_equal(watch_hits, 1);
	/* and a realloc that moves a block (grown past the heap into its own mapping) */
	b = malloc(4096);
	assert_non_null(b);
	memset(b, 0, 4096);
	memcpy(b + 1000, MARKER, sizeof MARKER - 1);
	__asm__ volatile("" : : "r"(b) : "memory");
	uint8_t *c = realloc(b, 8u << 20);
	assert_non_null(c);
	assert_int_equal(watch_hits, c != b ? 2 : 1);
	watch_for(NULL, 0);
	hits_expected = false;
	free(c);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	void *bt[1];
	backtrace(bt, 1); /* (loads what backtrace() needs now, not inside a free) */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hook_sees_marker),
		cmocka_unit_test(test_channel_keys_wiped),
		cmocka_unit_test(test_channel_data_wiped),
		cmocka_unit_test(test_channel_failed_send_wiped),
		cmocka_unit_test(test_sync_keyword_wiped),
		cmocka_unit_test(test_sync_data_wiped),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
