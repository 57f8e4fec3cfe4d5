/*
 * tool_bench_sync.c — times the sync layer's own work in an initial sync: node A holds
 * N messages with bodies, node B holds nothing, and two real proto/sync sessions (with
 * B's real fetch scheduler) run over an in-memory, reliable, ordered transport until B
 * holds every record and every body.  No disk, no sockets, no encryption: what is
 * timed is encoding, decoding, merging, hashing and copying of the bodies by
 * proto/sync.c and proto/wire.c (and the harness's memcpy of each message), which is
 * what a change to those buffers (wiping, tests/test_wipe.c) costs.
 *
 * Body sizes are drawn from a fixed pseudo-random sequence with a mean of SIZE bytes
 * (uniform in [SIZE/8, 2*SIZE - SIZE/8]), so bodies above the 40 KiB inline limit
 * come by GET_BODY/BODY and smaller ones inline (up to the round's 1 MiB budget) or
 * by GET_BODY too, as in a daemon's join.
 *
 * Usage: bench_sync N SIZE [REPEAT]     e.g. bench_sync 5000 18800 5  (94 MB)
 * Output: one line per repeat,
 *   SYNC n=N bytes=B records=R bodies=K ms=T cpu_ms=C MB/s=X ok=1
 * (ms wall clock, cpu_ms this process's CPU time over the same span: steadier on a
 * shared machine).  Setup (making and hashing the bodies) is not timed.  Exit 0 when every run
 * converged, 1 otherwise, 2 on a usage error.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crdt/crdt.h"
#include "proto/fetch.h"
#include "proto/sync.h"
#include "proto/wire.h"

static const char *USER = "ex.com/bench";

static void die(const char *what)
{
	fprintf(stderr, "bench_sync: %s\n", what);
	exit(1);
}

/* ---- bodies: an open-addressed table by id --------------------------------------- */

struct body {
	uint8_t id[MM_ID_LEN];
	uint8_t *data;
	size_t len;
	bool used;
};

struct store {
	struct body *t;
	size_t cap, n;
	uint64_t bytes;
};

static struct body *st_slot(struct store *s, const uint8_t id[MM_ID_LEN])
{
	uint64_t h;
	memcpy(&h, id, sizeof h);
	for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1))
		if (!s->t[i].used || !memcmp(s->t[i].id, id, MM_ID_LEN))
			return &s->t[i];
}

static void st_init(struct store *s, size_t n)
{
	s->cap = 16;
	while (s->cap < n * 2)
		s->cap <<= 1;
	if (!(s->t = calloc(s->cap, sizeof *s->t)))
		die("out of memory");
	s->n = 0;
	s->bytes = 0;
}

static void st_free(struct store *s)
{
	for (size_t i = 0; i < s->cap; i++)
		free(s->t[i].data);
	free(s->t);
	s->t = NULL;
}

struct node {
	struct mm_state *st;
	struct mm_clock clk;
	struct store bodies;
	struct mm_fetch *fetch;
	struct mm_sync *sess;
};

static struct node nodes[2];

static ssize_t b_read(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t off,
                      uint8_t *buf, size_t cap)
{
	(void)user;
	struct node *nd = arg;
	struct body *b = st_slot(&nd->bodies, id);
	if (!b->used)
		return -ENOENT;
	if (off >= b->len)
		return 0;
	size_t n = b->len - off < cap ? (size_t)(b->len - off) : cap;
	memcpy(buf, b->data + off, n);
	return (ssize_t)n;
}

struct wr {
	struct node *nd;
	uint8_t id[MM_ID_LEN];
	uint8_t *buf;
	size_t len, size;
};

static int b_begin(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size, void **h_r)
{
	(void)user;
	struct wr *w = calloc(1, sizeof *w);
	if (!w || !(w->buf = malloc(size ? size : 1)))
		die("out of memory");
	w->nd = arg;
	memcpy(w->id, id, MM_ID_LEN);
	w->size = size;
	*h_r = w;
	return 0;
}

static int b_write(void *h, const uint8_t *data, size_t len)
{
	struct wr *w = h;
	if (w->len + len > w->size)
		return -EFBIG;
	memcpy(w->buf + w->len, data, len);
	w->len += len;
	return 0;
}

static int b_commit(void *h)
{
	struct wr *w = h;
	struct body *b = st_slot(&w->nd->bodies, w->id);
	if (!b->used) {
		memcpy(b->id, w->id, MM_ID_LEN);
		b->data = w->buf;
		b->len = w->len;
		b->used = true;
		w->nd->bodies.n++;
		w->nd->bodies.bytes += w->len;
	} else {
		free(w->buf);
	}
	free(w);
	return 0;
}

static void b_abort(void *h)
{
	struct wr *w = h;
	free(w->buf);
	free(w);
}

static int b_have(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	(void)user;
	struct node *nd = arg;
	return st_slot(&nd->bodies, id)->used ? 1 : 0;
}

static bool b_needed(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	(void)arg, (void)user, (void)id;
	return true;
}

/* ---- transport -------------------------------------------------------------------- */

struct msg {
	struct msg *next;
	int to;
	enum mm_chan ch;
	size_t len;
	uint8_t p[];
};

static struct msg *head, *tail;
static bool failed;
static int link_to[2] = { 1, 0 };

static int net_send(void *arg, enum mm_chan ch, const uint8_t *p, size_t len)
{
	struct msg *m = malloc(sizeof *m + len);
	if (!m)
		die("out of memory");
	memcpy(m->p, p, len);
	m->len = len;
	m->to = *(int *)arg;
	m->ch = ch;
	m->next = NULL;
	if (tail)
		tail->next = m;
	else
		head = m;
	tail = m;
	return 0;
}

static void net_run(uint64_t now)
{
	while (head) {
		struct msg *m = head;
		head = m->next;
		if (!head)
			tail = NULL;
		int rc = mm_sync_recv(nodes[m->to].sess, m->ch, m->p, m->len, now);
		if (rc != 0 && !failed) {
			fprintf(stderr, "bench_sync: mm_sync_recv: %s\n", strerror(-rc));
			failed = true;
		}
		free(m);
	}
}

/* ---- setup -------------------------------------------------------------------------- */

static uint64_t rng = 0x5eedb0d1e5ULL;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static double ms_since(clockid_t clk, const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(clk, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static int run_once(size_t n, size_t size)
{
	uint64_t now = 1000000;
	rng = 0x5eedb0d1e5ULL;
	failed = false;
	for (int i = 0; i < 2; i++) {
		struct node *nd = &nodes[i];
		if (!(nd->st = mm_state_new()))
			die("out of memory");
		mm_clock_init(&nd->clk, (uint64_t)i + 1, 0);
		st_init(&nd->bodies, n);
		struct mm_fetch_config fc = { .needed = b_needed, .needed_arg = nd };
		if (mm_fetch_new(&fc, &nd->fetch) != 0)
			die("mm_fetch_new failed");
	}
	/* A's mail */
	struct mm_user *ua = mm_state_user(nodes[0].st, USER, true);
	if (!ua)
		die("out of memory");
	size_t lo = size / 8, span = 2 * size - 2 * lo;
	for (size_t i = 0; i < n; i++) {
		size_t len = lo + (size_t)(rnd() % (span + 1));
		uint8_t *data = malloc(len);
		if (!data)
			die("out of memory");
		for (size_t k = 0; k < len; k += 8) {
			uint64_t v = rnd();
			memcpy(data + k, &v, len - k < 8 ? len - k : 8);
		}
		uint8_t id[MM_ID_LEN];
		mm_body_id(data, len, id);
		struct body *b = st_slot(&nodes[0].bodies, id);
		if (b->used)
			die("duplicate body");
		memcpy(b->id, id, MM_ID_LEN);
		b->data = data;
		b->len = len;
		b->used = true;
		nodes[0].bodies.n++;
		nodes[0].bodies.bytes += len;
		mm_hlc stamp = mm_clock_tick(&nodes[0].clk, now);
		if (mm_user_deliver(ua, "INBOX", id, len, 1700000000 + (int64_t)i, 0, NULL, 0, 0, stamp,
		                    NULL, NULL, NULL, NULL) < 0)
			die("deliver failed");
	}
	for (int i = 0; i < 2; i++) {
		struct node *nd = &nodes[i];
		struct mm_sync_config c = {
			.state = nd->st,
			.local_node = (uint64_t)i + 1,
			.peer_node = (uint64_t)(1 - i) + 1,
			.io = { net_send, &link_to[i] },
			.body = { b_read, b_begin, b_write, b_commit, b_abort, b_have, nd },
			.fetch = nd->fetch,
			.clock = &nd->clk,
		};
		if (mm_sync_new(&c, &nd->sess) != 0)
			die("mm_sync_new failed");
	}
	/* timed: from B's first digest until B holds every body */
	struct timespec t0, c0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	for (int i = 0; i < 2; i++)
		mm_sync_connected(nodes[i].sess, now);
	if (mm_sync_gossip(nodes[1].sess, now) != 0)
		die("mm_sync_gossip failed");
	int it = 0;
	while (!failed && nodes[1].bodies.n < n && it++ < 100000) {
		net_run(now);
		now += 10;
		mm_fetch_tick(nodes[1].fetch, now);
		mm_sync_tick(nodes[1].sess, now);
		mm_sync_tick(nodes[0].sess, now);
	}
	net_run(now);
	double ms = ms_since(CLOCK_MONOTONIC, &t0);
	double cpu = ms_since(CLOCK_PROCESS_CPUTIME_ID, &c0);
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	mm_state_root(nodes[0].st, ra);
	mm_state_root(nodes[1].st, rb);
	bool ok = !failed && !memcmp(ra, rb, MM_HASH_LEN) && nodes[1].bodies.n == n &&
	          nodes[1].bodies.bytes == nodes[0].bodies.bytes;
	const struct mm_sync_stats *sb = mm_sync_stats(nodes[1].sess);
	printf("SYNC n=%zu bytes=%llu records=%llu bodies=%zu ms=%.1f cpu_ms=%.1f MB/s=%.0f ok=%d\n",
	       n, (unsigned long long)nodes[0].bodies.bytes, (unsigned long long)sb->records_in,
	       nodes[1].bodies.n, ms, cpu, (double)nodes[0].bodies.bytes / 1e3 / ms, ok ? 1 : 0);
	fflush(stdout);
	for (int i = 0; i < 2; i++) {
		struct node *nd = &nodes[i];
		mm_sync_free(&nd->sess);
		mm_fetch_free(&nd->fetch);
		mm_state_free(&nd->st);
		st_free(&nd->bodies);
	}
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: bench_sync N SIZE [REPEAT]\n");
		return 2;
	}
	size_t n = strtoull(argv[1], NULL, 0), size = strtoull(argv[2], NULL, 0);
	int rep = argc > 3 ? atoi(argv[3]) : 1;
	if (n == 0 || size < 16 || rep < 1) {
		fprintf(stderr, "bench_sync: N >= 1, SIZE >= 16, REPEAT >= 1\n");
		return 2;
	}
	int status = 0;
	for (int r = 0; r < rep; r++)
		status |= run_once(n, size);
	return status;
}
