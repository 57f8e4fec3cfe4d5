/*
 * test_sync.c — proto/sync, fetch and gossip driven through an in-memory network:
 * 2 and 3 nodes with random local changes converge (equal roots, equal records, every
 * body present and verified) under datagram loss and duplication, stream resets and
 * back-pressure; a corrupted body is rejected and fetched from another peer; a push
 * delivers a new message and its body in one stream message; the reconciliation cost
 * for n = 100,000 records and d = 1, 10, 100 differences is printed and checked
 * against the goal (descent bytes <= 4*d*32 + 1024, round trips <= log16(n) + 2).
 * Randomness from a seeded splitmix64 (MM_SEED=... reproduces a run).
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "crdt/crdt.h"
#include "proto/fetch.h"
#include "proto/gossip.h"
#include "proto/sync.h"
#include "proto/wire.h"

#define MAXN 3

static uint64_t rng_state;

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static unsigned rn(unsigned n)
{
	return (unsigned)(rnd() % n);
}

/* ---- in-memory body store ------------------------------------------------------ */

struct body {
	struct body *next;
	char user[MM_NAME_MAX + 1];
	uint8_t id[MM_ID_LEN];
	uint8_t *data;
	size_t len;
};

struct net;

struct node {
	struct net *net;
	int idx;
	struct mm_state *st;
	struct mm_clock clk;
	struct mm_fetch *fetch;
	struct mm_gossip *g;
	struct mm_sync *sess[MAXN];
	struct body *bodies;
	bool corrupt_serve;   /* serve bodies with one byte flipped */
	bool all_present;     /* pretend every body is here (cost test) */
	uint8_t (*keys)[MM_KEY_LEN]; /* messages delivered here, for flag changes */
	char (*key_users)[32];
	size_t n_keys, cap_keys;
	struct mm_delta *delta;
};

struct link {
	struct net *net;
	int from, to;
	bool blocked;
};

struct msg {
	struct msg *next;
	int from, to;
	enum mm_chan ch;
	uint32_t epoch;
	uint8_t *p;
	size_t len;
};

struct net {
	int n;
	struct node nodes[MAXN];
	struct link links[MAXN][MAXN];
	uint32_t epoch[MAXN][MAXN];
	struct msg *head, *tail;
	size_t queued;
	uint64_t now;
	unsigned loss_pct, dup_pct, reset_permille, block_queue;
	uint64_t bytes_by_type[MM_MSG_TYPE_MAX + 1];
	uint64_t msgs_by_type[MM_MSG_TYPE_MAX + 1];
	uint64_t resets;
	unsigned later_mask; /* bit i: node i talks like a later version (net_send) */
};

static struct body *body_find(struct node *nd, const char *user, const uint8_t *id)
{
	for (struct body *b = nd->bodies; b; b = b->next)
		if (!memcmp(b->id, id, MM_ID_LEN) && !strcmp(b->user, user))
			return b;
	return NULL;
}

static void body_put(struct node *nd, const char *user, const uint8_t *id, const uint8_t *data, size_t len)
{
	if (body_find(nd, user, id))
		return;
	struct body *b = calloc(1, sizeof *b);
	assert_non_null(b);
	snprintf(b->user, sizeof b->user, "%s", user);
	memcpy(b->id, id, MM_ID_LEN);
	b->data = malloc(len ? len : 1);
	memcpy(b->data, data, len);
	b->len = len;
	b->next = nd->bodies;
	nd->bodies = b;
}

static ssize_t b_read(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t off,
                      uint8_t *buf, size_t cap)
{
	struct node *nd = arg;
	struct body *b = body_find(nd, user, id);
	if (!b)
		return -ENOENT;
	if (off >= b->len)
		return 0;
	size_t n = b->len - off < cap ? b->len - off : cap;
	memcpy(buf, b->data + off, n);
	if (nd->corrupt_serve && n)
		buf[0] ^= 0x55;
	return (ssize_t)n;
}

struct wr {
	struct node *nd;
	char user[MM_NAME_MAX + 1];
	uint8_t id[MM_ID_LEN];
	uint64_t size;
	uint8_t *buf;
	size_t len;
};

static int b_begin(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size, void **h_r)
{
	struct wr *w = calloc(1, sizeof *w);
	if (!w)
		return -ENOMEM;
	w->nd = arg;
	snprintf(w->user, sizeof w->user, "%s", user);
	memcpy(w->id, id, MM_ID_LEN);
	w->size = size;
	w->buf = malloc(size ? size : 1);
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

/* When set, b_commit appends each committed body id here (test_fetch_uid_order). */
static uint8_t (*commit_log)[MM_ID_LEN];
static size_t commit_log_n;

static int b_commit(void *h)
{
	struct wr *w = h;
	int rc = 0;
	if (commit_log)
		memcpy(commit_log[commit_log_n++], w->id, MM_ID_LEN);
	uint8_t id[MM_ID_LEN];
	mm_body_id(w->buf, w->len, id);
	if (w->len != w->size || memcmp(id, w->id, MM_ID_LEN))
		rc = -EBADMSG; /* the session must never commit a bad body */
	else
		body_put(w->nd, w->user, w->id, w->buf, w->len);
	free(w->buf);
	free(w);
	assert_int_equal(rc, 0);
	return rc;
}

static void b_abort(void *h)
{
	struct wr *w = h;
	free(w->buf);
	free(w);
}

static int b_have(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	struct node *nd = arg;
	return nd->all_present || body_find(nd, user, id) ? 1 : 0;
}

/* ---- network ------------------------------------------------------------------ */

/* What a later version might append to a message: 4 msgpack objects of kinds this
 * version never sends (a map holding an array, a float, an ext, a str8). */
static const uint8_t later_fields[] = {
	0x81, 0xa1, 'k', 0x93, 0x01, 0xff, 0xc0,
	0xcb, 0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18,
	0xc7, 0x02, 0x05, 0xaa, 0xbb,
	0xd9, 0x03, 'n', 'e', 'w',
};
#define LATER_N 4

static void net_queue(struct net *net, struct link *l, enum mm_chan ch, const uint8_t *p, size_t len,
                      const uint8_t *tail, size_t tail_len)
{
	struct msg *m = calloc(1, sizeof *m);
	assert_non_null(m);
	m->from = l->from;
	m->to = l->to;
	m->ch = ch;
	m->epoch = net->epoch[l->from][l->to];
	m->p = malloc(len + tail_len);
	assert_non_null(m->p);
	memcpy(m->p, p, len);
	if (tail_len)
		memcpy(m->p + len, tail, tail_len);
	m->len = len + tail_len;
	if (net->tail)
		net->tail->next = m;
	else
		net->head = m;
	net->tail = m;
	net->queued++;
}

/* A node of net->later_mask sends each message with later_fields appended (its array
 * rewritten as an array16 of LATER_N more elements) and then a message of a type this
 * version does not know, as a later version could (docs/protocol.md, "Compatibility"). */
static void net_queue_later(struct net *net, struct link *l, enum mm_chan ch, const uint8_t *p, size_t len)
{
	size_t n, hdr;
	if ((p[0] & 0xf0) == 0x90) {
		n = p[0] & 0x0f;
		hdr = 1;
	} else {
		assert_int_equal(p[0], 0xdc);
		n = (size_t)p[1] << 8 | p[2];
		hdr = 3;
	}
	/* a DIGEST's short forms (6 or 8 elements) must first be padded to 10 */
	static const uint8_t pad[4] = { 0, 0, 0, 0 };
	size_t npad = mm_wire_peek_type(p, len) == MM_MSG_DIGEST ? 10 - n : 0;
	size_t total = n + npad + LATER_N;
	uint8_t *q = malloc(3 + len - hdr + npad + sizeof later_fields);
	assert_non_null(q);
	q[0] = 0xdc;
	q[1] = (uint8_t)(total >> 8);
	q[2] = (uint8_t)total;
	memcpy(q + 3, p + hdr, len - hdr);
	memcpy(q + 3 + len - hdr, pad, npad);
	net_queue(net, l, ch, q, 3 + len - hdr + npad, later_fields, sizeof later_fields);
	free(q);
	const uint8_t unknown[] = { 0x90 | (2 + LATER_N), MM_WIRE_VERSION, 0xcc, 200 };
	net_queue(net, l, ch, unknown, sizeof unknown, later_fields, sizeof later_fields);
}

static int net_send(void *arg, enum mm_chan ch, const uint8_t *p, size_t len)
{
	struct link *l = arg;
	struct net *net = l->net;
	assert_true(len <= MM_WIRE_MAX);
	int t = mm_wire_peek_type(p, len);
	assert_true(t > 0);
	net->bytes_by_type[t] += len;
	net->msgs_by_type[t]++;
	if (ch == MM_CHAN_DATAGRAM) {
		assert_int_equal(t, MM_MSG_DIGEST);
		if (rn(100) < net->loss_pct)
			return 0;
	}
	int copies = ch == MM_CHAN_DATAGRAM && rn(100) < net->dup_pct ? 2 : 1;
	for (int c = 0; c < copies; c++) {
		if (net->later_mask >> l->from & 1)
			net_queue_later(net, l, ch, p, len);
		else
			net_queue(net, l, ch, p, len, NULL, 0);
	}
	if (ch == MM_CHAN_STREAM && net->block_queue && net->queued > net->block_queue) {
		l->blocked = true;
		return 1;
	}
	return 0;
}

static void reset_link(struct net *net, int a, int b)
{
	net->epoch[a][b]++;
	net->epoch[b][a]++;
	net->resets++;
	mm_sync_reset(net->nodes[a].sess[b], net->now);
	mm_sync_reset(net->nodes[b].sess[a], net->now);
	mm_sync_connected(net->nodes[a].sess[b], net->now);
	mm_sync_connected(net->nodes[b].sess[a], net->now);
}

/* Delivers queued messages until none is left. */
static void net_run(struct net *net)
{
	for (;;) {
		while (net->head) {
			struct msg *m = net->head;
			net->head = m->next;
			if (!net->head)
				net->tail = NULL;
			net->queued--;
			struct node *to = &net->nodes[m->to];
			bool stale = m->ch == MM_CHAN_STREAM && m->epoch != net->epoch[m->from][m->to];
			if (!stale) {
				int rc = mm_sync_recv(to->sess[m->from], m->ch, m->p, m->len, net->now);
				assert_int_equal(rc, 0);
				if (m->ch == MM_CHAN_STREAM && rn(1000) < net->reset_permille)
					reset_link(net, m->from, m->to);
			}
			free(m->p);
			free(m);
		}
		bool any = false;
		for (int i = 0; i < net->n; i++)
			for (int j = 0; j < net->n; j++)
				if (i != j && net->links[i][j].blocked) {
					net->links[i][j].blocked = false;
					mm_sync_writable(net->nodes[i].sess[j], net->now);
					any = true;
				}
		if (!any && !net->head)
			return;
	}
}

/* The scheduler's cfg.needed: a live message of the user has this body. */
struct needs_ctx {
	const uint8_t *id;
	bool found;
};

static int needs_cb(void *arg, const struct mm_rec *r)
{
	struct needs_ctx *c = arg;
	if (r->type == MM_REC_MESSAGE && !memcmp(r->msg.body, c->id, MM_ID_LEN))
		c->found = true;
	return 0;
}

static bool node_needs_body(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	struct node *nd = arg;
	struct mm_user *u = mm_state_user(nd->st, user, false);
	static const uint8_t zero[MM_KEY_LEN];
	struct needs_ctx c = { id, false };
	if (u)
		mm_user_foreach(u, zero, 0, needs_cb, &c);
	return c.found;
}

static uint64_t net_round_inline; /* cfg.round_inline_bytes of the next net_init */

static void net_init(struct net *net, int n, unsigned inline_max)
{
	memset(net, 0, sizeof *net);
	net->n = n;
	net->now = 1000000;
	for (int i = 0; i < n; i++) {
		struct node *nd = &net->nodes[i];
		nd->net = net;
		nd->idx = i;
		nd->st = mm_state_new();
		assert_non_null(nd->st);
		mm_clock_init(&nd->clk, (uint64_t)i + 1, 0);
		struct mm_fetch_config fc = { .needed = node_needs_body, .needed_arg = nd };
		assert_int_equal(mm_fetch_new(&fc, &nd->fetch), 0);
		struct mm_gossip_config gc = { .seed = rnd() };
		assert_int_equal(mm_gossip_new(&gc, &nd->g), 0);
		nd->delta = mm_delta_new();
	}
	for (int i = 0; i < n; i++)
		for (int j = 0; j < n; j++) {
			if (i == j)
				continue;
			struct node *nd = &net->nodes[i];
			net->links[i][j] = (struct link){ net, i, j, false };
			struct mm_sync_config c = {
				.state = nd->st,
				.local_node = (uint64_t)i + 1,
				.peer_node = (uint64_t)j + 1,
				.io = { net_send, &net->links[i][j] },
				.body = { b_read, b_begin, b_write, b_commit, b_abort, b_have, nd },
				.fetch = nd->fetch,
				.clock = &nd->clk,
				.relay = mm_gossip_relay,
				.relay_arg = nd->g,
				.inline_max = inline_max,
				.round_inline_bytes = net_round_inline,
			};
			assert_int_equal(mm_sync_new(&c, &nd->sess[j]), 0);
			assert_int_equal(mm_gossip_add(nd->g, nd->sess[j]), 0);
			mm_sync_connected(nd->sess[j], net->now);
		}
}

static void net_free(struct net *net)
{
	while (net->head) {
		struct msg *m = net->head;
		net->head = m->next;
		free(m->p);
		free(m);
	}
	for (int i = 0; i < net->n; i++) {
		struct node *nd = &net->nodes[i];
		for (int j = 0; j < net->n; j++)
			mm_sync_free(&nd->sess[j]);
		mm_gossip_free(&nd->g);
		mm_fetch_free(&nd->fetch);
		mm_state_free(&nd->st);
		mm_delta_free(&nd->delta);
		while (nd->bodies) {
			struct body *b = nd->bodies;
			nd->bodies = b->next;
			free(b->data);
			free(b);
		}
		free(nd->keys);
		free(nd->key_users);
	}
}

/* ---- workload --------------------------------------------------------------------- */

static const char *users[] = { "ex.com/alice", "ex.com/bob", "ex.org/carol" };
static const char *folders[] = { "INBOX", "Archive", "Sent" };

static void remember_key(struct node *nd, const char *user, const uint8_t *key)
{
	if (nd->n_keys == nd->cap_keys) {
		nd->cap_keys = nd->cap_keys ? nd->cap_keys * 2 : 64;
		nd->keys = realloc(nd->keys, nd->cap_keys * sizeof *nd->keys);
		nd->key_users = realloc(nd->key_users, nd->cap_keys * sizeof *nd->key_users);
	}
	memcpy(nd->keys[nd->n_keys], key, MM_KEY_LEN);
	snprintf(nd->key_users[nd->n_keys], sizeof nd->key_users[0], "%s", user);
	nd->n_keys++;
}

static void deliver(struct node *nd, const char *user, size_t size, struct mm_delta *out)
{
	uint8_t *data = malloc(size ? size : 1);
	for (size_t i = 0; i < size; i++)
		data[i] = (uint8_t)rnd();
	uint8_t id[MM_ID_LEN], key[MM_KEY_LEN];
	mm_body_id(data, size, id);
	body_put(nd, user, id, data, size);
	free(data);
	struct mm_user *u = mm_state_user(nd->st, user, true);
	mm_hlc stamp = mm_clock_tick(&nd->clk, nd->net->now);
	int rc = mm_user_deliver(u, folders[rn(3)], id, size, 1700000000 + (int64_t)rn(1000000),
	                         rn(64), NULL, 0, 0, stamp, key, NULL, NULL, out);
	assert_true(rc >= 0);
	remember_key(nd, user, key);
}

/* One random local change; returns through `out` the records it changed. */
static void random_change(struct node *nd, struct mm_delta *out)
{
	unsigned what = rn(10);
	if (what < 5 || nd->n_keys == 0) {
		size_t size = rn(10) == 0 ? 60000 + rn(80000) : 10 + rn(3000);
		deliver(nd, users[rn(3)], size, out);
		return;
	}
	size_t k = rn((unsigned)nd->n_keys);
	struct mm_user *u = mm_state_user(nd->st, nd->key_users[k], true);
	mm_hlc stamp = mm_clock_tick(&nd->clk, nd->net->now);
	int rc;
	if (what < 8)
		rc = mm_user_set_flag(u, nd->keys[k], (enum mm_flag)rn(MM_FLAG_COUNT), rn(2), stamp,
		                      NULL, NULL, out);
	else if (what < 9)
		rc = mm_user_set_keyword(u, nd->keys[k], rn(2) ? "$Junk" : "work", rn(2), stamp, NULL,
		                         NULL, out);
	else
		rc = mm_user_expunge(u, nd->keys[k], stamp, NULL, NULL, out);
	assert_true(rc >= 0 || rc == -ENOENT);
}

/* ---- checks ---------------------------------------------------------------------- */

struct cmp_ctx {
	struct node *other, *self;
	const char *user;
	size_t n;
};

static int cmp_cb(void *arg, const struct mm_rec *r)
{
	struct cmp_ctx *c = arg;
	struct mm_user *ou = mm_state_user(c->other->st, c->user, false);
	assert_non_null(ou);
	const struct mm_rec *o = mm_user_get(ou, r->key);
	assert_non_null(o);
	assert_true(mm_rec_equal(r, o));
	if (r->type == MM_REC_MESSAGE && !c->self->all_present) {
		struct body *b = body_find(c->self, c->user, r->msg.body);
		assert_non_null(b);
		uint8_t id[MM_ID_LEN];
		mm_body_id(b->data, b->len, id);
		assert_memory_equal(id, r->msg.body, MM_ID_LEN);
		assert_int_equal(b->len, r->msg.size);
	}
	c->n++;
	return 0;
}

struct ucb_ctx {
	struct node *self, *other;
	size_t n;
};

static int user_cb(void *arg, struct mm_user *u)
{
	struct ucb_ctx *c = arg;
	struct cmp_ctx cc = { c->other, c->self, mm_user_name(u), 0 };
	mm_user_foreach(u, NULL, 0, cmp_cb, &cc);
	c->n += cc.n;
	return 0;
}

/* Every record of a equals b's and every body is present and verified on a. */
static size_t check_same(struct node *a, struct node *b)
{
	struct ucb_ctx c = { a, b, 0 };
	mm_state_foreach(a->st, NULL, 0, user_cb, &c);
	assert_int_equal(mm_state_user_count(a->st), mm_state_user_count(b->st));
	return c.n;
}

static bool converged(struct net *net)
{
	uint8_t r0[MM_HASH_LEN], r[MM_HASH_LEN];
	mm_state_root(net->nodes[0].st, r0);
	for (int i = 0; i < net->n; i++) {
		struct node *nd = &net->nodes[i];
		mm_state_root(nd->st, r);
		if (memcmp(r, r0, MM_HASH_LEN))
			return false;
		struct mm_fetch_stats fs;
		mm_fetch_get_stats(nd->fetch, &fs);
		if (fs.wanted)
			return false;
		for (int j = 0; j < net->n; j++)
			if (j != i && !mm_sync_idle(nd->sess[j]))
				return false;
	}
	return true;
}

/* Gossip intervals until converged; returns how many it took (fails after max). */
static int run_until_converged(struct net *net, int max)
{
	for (int it = 1; it <= max; it++) {
		for (int i = 0; i < net->n; i++) {
			uint8_t r[8];
			for (int k = 0; k < 8; k++)
				r[k] = (uint8_t)rnd();
			mm_gossip_tick(net->nodes[i].g, net->now, r, sizeof r);
			mm_fetch_tick(net->nodes[i].fetch, net->now);
		}
		net_run(net);
		net->now += 200;
		if (converged(net))
			return it;
	}
	fail_msg("no convergence after %d intervals", max);
	return -1;
}

static void seed(void)
{
	const char *s = getenv("MM_SEED");
	rng_state = s ? strtoull(s, NULL, 0) : 0x5eed;
}

/* ---- tests ------------------------------------------------------------------------- */

static unsigned converge_later_mask; /* net.later_mask of the next converge_n */

static void converge_n(int n, unsigned loss, unsigned dup, unsigned resets, unsigned block)
{
	struct net net;
	seed();
	net_init(&net, n, 0);
	net.later_mask = converge_later_mask;
	net.loss_pct = loss;
	net.dup_pct = dup;
	net.reset_permille = resets;
	net.block_queue = block;
	/* changes while disconnected from each other (no push): anti-entropy only */
	for (int i = 0; i < n; i++)
		for (int k = 0; k < 120; k++)
			random_change(&net.nodes[i], NULL);
	int rounds = run_until_converged(&net, 400);
	/* more changes with live push, interleaved with gossip */
	for (int k = 0; k < 60; k++) {
		struct node *nd = &net.nodes[rn((unsigned)n)];
		mm_delta_clear(nd->delta);
		random_change(nd, nd->delta);
		mm_gossip_push(nd->g, nd->delta, NULL, net.now);
		if (k % 10 == 0)
			net_run(&net);
	}
	int rounds2 = run_until_converged(&net, 400);
	/* in sync, a gossip exchange is one small datagram each way and nothing else */
	memset(net.msgs_by_type, 0, sizeof net.msgs_by_type);
	memset(net.bytes_by_type, 0, sizeof net.bytes_by_type);
	unsigned saved_loss = net.loss_pct, saved_dup = net.dup_pct;
	net.loss_pct = net.dup_pct = 0;
	assert_int_equal(mm_sync_gossip(net.nodes[0].sess[1], net.now), 0);
	net_run(&net);
	uint64_t others = 0;
	for (int t = 0; t <= MM_MSG_TYPE_MAX; t++)
		if (t != MM_MSG_DIGEST)
			others += net.msgs_by_type[t];
	assert_int_equal(net.msgs_by_type[MM_MSG_DIGEST], 2);
	assert_int_equal(others, 0);
	assert_true(net.bytes_by_type[MM_MSG_DIGEST] < 2 * 200);
	assert_true(mm_sync_stats(net.nodes[0].sess[1])->roots_equal);
	net.loss_pct = saved_loss;
	net.dup_pct = saved_dup;
	size_t recs = 0;
	for (int i = 0; i < n; i++)
		for (int j = 0; j < n; j++)
			if (i != j)
				recs = check_same(&net.nodes[i], &net.nodes[j]);
	uint64_t bad = 0, done = 0;
	for (int i = 0; i < n; i++)
		for (int j = 0; j < n; j++)
			if (i != j) {
				bad += mm_sync_stats(net.nodes[i].sess[j])->proto_errors;
				done += mm_sync_stats(net.nodes[i].sess[j])->rounds_done;
			}
	assert_int_equal(bad, 0);
	assert_true(done > 0);
	assert_true(recs > 0);
	/* every message of a later version's type was counted and ignored */
	for (int i = 0; i < n; i++)
		for (int j = 0; j < n; j++)
			if (i != j)
				assert_true((mm_sync_stats(net.nodes[i].sess[j])->unknown_in > 0) ==
				            (bool)(net.later_mask >> j & 1));
	printf("  %d nodes, loss %u%%, dup %u%%, resets %u/1000 (%llu), block %u: %zu records, "
	       "converged in %d + %d intervals, %llu rounds\n", n, loss, dup, resets,
	       (unsigned long long)net.resets, block, recs, rounds, rounds2, (unsigned long long)done);
	net_free(&net);
}

static void test_two_nodes(void **state)
{
	(void)state;
	converge_n(2, 0, 0, 0, 0);
}

static void test_three_nodes_faults(void **state)
{
	(void)state;
	converge_n(3, 20, 20, 3, 0);
}

/* Node 0 talks like a later version: more fields in every message and messages of an
 * unknown type.  The others ignore what they do not know and converge with it,
 * under loss, duplicates and resets: a cluster can be upgraded one node at a time. */
static void test_later_version_peer(void **state)
{
	(void)state;
	converge_later_mask = 1;
	converge_n(3, 10, 10, 3, 0);
	converge_later_mask = 0;
}

static void test_three_nodes_backpressure(void **state)
{
	(void)state;
	converge_n(3, 10, 10, 0, 4);
}

/* A corrupted body from one peer is rejected and fetched from another. */
static void test_corrupt_body(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 3, 0);
	struct node *a = &net.nodes[0], *b = &net.nodes[1], *c = &net.nodes[2];
	/* a large message on b, copied with its body to c, then pushed by b to a */
	mm_delta_clear(b->delta);
	deliver(b, "ex.com/alice", 100000, b->delta);
	assert_int_equal(mm_delta_apply(b->delta, c->st, NULL, NULL), 2); /* folder + message */
	const char *u;
	const struct mm_rec *r = NULL;
	for (size_t i = 0; i < mm_delta_count(b->delta); i++) {
		const struct mm_rec *x = mm_delta_get(b->delta, i, &u);
		if (x->type == MM_REC_MESSAGE)
			r = x;
	}
	assert_non_null(r);
	struct body *bb = body_find(b, "ex.com/alice", r->msg.body);
	body_put(c, "ex.com/alice", r->msg.body, bb->data, bb->len);
	b->corrupt_serve = true;
	assert_true(mm_sync_push(b->sess[0], b->delta, net.now) > 0);
	net_run(&net);
	assert_non_null(body_find(a, "ex.com/alice", r->msg.body));
	const struct mm_sync_stats *sab = mm_sync_stats(a->sess[1]);
	const struct mm_sync_stats *sac = mm_sync_stats(a->sess[2]);
	assert_int_equal(sab->bodies_bad, 1);  /* from b: rejected */
	assert_int_equal(sac->bodies_in, 1);   /* from c: accepted */
	struct mm_fetch_stats fs;
	mm_fetch_get_stats(a->fetch, &fs);
	assert_int_equal(fs.mismatches, 1);
	assert_int_equal(fs.done, 1);
	assert_int_equal(fs.wanted, 0);
	check_same(a, c);
	net_free(&net);
}

/* A push carries the record and its body in one stream message. */
static void test_push_inline(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 2, 0);
	struct node *a = &net.nodes[0], *b = &net.nodes[1];
	mm_delta_clear(a->delta);
	deliver(a, "ex.com/bob", 3000, a->delta);
	assert_int_equal(mm_gossip_push(a->g, a->delta, NULL, net.now), 1);
	assert_int_equal(net.queued, 1);
	assert_int_equal(net.msgs_by_type[MM_MSG_RECORDS], 1);
	/* deliver exactly that message */
	struct msg *m = net.head;
	net.head = net.tail = NULL;
	net.queued = 0;
	assert_int_equal(mm_sync_recv(b->sess[0], m->ch, m->p, m->len, net.now), 0);
	free(m->p);
	free(m);
	assert_int_equal(net.queued, 0); /* nothing asked back: no fetch */
	check_same(b, a);
	check_same(a, b);
	assert_int_equal(mm_sync_stats(b->sess[0])->bodies_in, 1);

	/* A change to a message the peer has (a flag) is pushed without its body. */
	mm_delta_clear(a->delta);
	struct mm_user *u = mm_state_user(a->st, "ex.com/bob", false);
	mm_hlc stamp = mm_clock_tick(&a->clk, net.now);
	assert_int_equal(mm_user_set_flag(u, a->keys[0], MM_FLAG_FLAGGED, !mm_user_get(u, a->keys[0])->msg.flags[MM_FLAG_FLAGGED].value,
	                                  stamp, NULL, NULL, a->delta), 1);
	assert_false(mm_delta_fresh(a->delta, 0));
	uint64_t before = net.bytes_by_type[MM_MSG_RECORDS];
	assert_int_equal(mm_gossip_push(a->g, a->delta, NULL, net.now), 1);
	assert_true(net.bytes_by_type[MM_MSG_RECORDS] - before < 1000);
	net_run(&net);
	check_same(b, a);
	assert_int_equal(mm_sync_stats(a->sess[1])->bodies_out, 1);
	assert_int_equal(mm_sync_stats(b->sess[0])->bodies_in, 1);
	net_free(&net);
}

/* Delta entries: a delivery is fresh (and stays so when a later change to the same
 * message replaces its record in the delta); other changes are not. */
static void test_delta_fresh(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 2, 0);
	struct node *a = &net.nodes[0];
	struct mm_delta *d = mm_delta_new();
	deliver(a, "ex.com/bob", 100, d);
	deliver(a, "ex.com/bob", 100, NULL);
	/* the delivery's delta holds the new FOLDER record and the message */
	size_t msg_i = SIZE_MAX;
	for (size_t i = 0; i < mm_delta_count(d); i++) {
		const struct mm_rec *r = mm_delta_get(d, i, NULL);
		assert_int_equal(mm_delta_fresh(d, i), r->type == MM_REC_MESSAGE);
		if (r->type == MM_REC_MESSAGE)
			msg_i = i;
	}
	assert_true(msg_i != SIZE_MAX);
	struct mm_user *u = mm_state_user(a->st, "ex.com/bob", false);
	mm_hlc stamp = mm_clock_tick(&a->clk, net.now);
	assert_true(mm_user_set_keyword(u, a->keys[0], "work", true, stamp, NULL, NULL, d) >= 0);
	assert_true(mm_delta_fresh(d, msg_i));
	stamp = mm_clock_tick(&a->clk, net.now);
	assert_true(mm_user_set_keyword(u, a->keys[1], "work", true, stamp, NULL, NULL, d) >= 0);
	assert_false(mm_delta_fresh(d, mm_delta_count(d) - 1));
	assert_false(mm_delta_fresh(d, mm_delta_count(d)));
	assert_int_equal(mm_delta_set_fresh(d, "ex.com/nobody", a->keys[0]), -ENOENT);
	mm_delta_clear(d);
	assert_int_equal(mm_delta_set_fresh(d, "ex.com/bob", a->keys[0]), -ENOENT);
	mm_delta_free(&d);
	net_free(&net);
}

/* A node joining two peers that hold the same mailbox draws its bodies from both: a
 * round inlines at most round_inline_bytes, the rest goes through the fetch
 * scheduler, which spreads it over every connected peer; and no body comes twice
 * beyond the rounds' inline budgets. */
static void test_join_from_several(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_round_inline = 64 * 1024;
	net_init(&net, 3, 0);
	net_round_inline = 0;
	struct node *a = &net.nodes[0], *b = &net.nodes[1], *c = &net.nodes[2];
	struct mm_delta *d = mm_delta_new();
	const size_t N = 300, SIZE = 8000;
	uint8_t *data = malloc(SIZE);
	for (size_t k = 0; k < N; k++) {
		for (size_t i = 0; i < SIZE; i++)
			data[i] = (uint8_t)rnd();
		uint8_t id[MM_ID_LEN], key[MM_KEY_LEN];
		mm_body_id(data, SIZE, id);
		body_put(a, "ex.com/alice", id, data, SIZE);
		body_put(b, "ex.com/alice", id, data, SIZE);
		mm_hlc stamp = mm_clock_tick(&a->clk, net.now);
		assert_int_equal(mm_user_deliver(mm_state_user(a->st, "ex.com/alice", true), "INBOX", id, SIZE,
		                                 1700000000, 0, NULL, 0, 0, stamp, key, NULL, NULL, d), 1);
	}
	free(data);
	assert_true(mm_delta_apply(d, b->st, NULL, NULL) > 0);
	mm_delta_free(&d);
	run_until_converged(&net, 200);
	check_same(c, a);
	uint64_t from_a = mm_sync_stats(c->sess[0])->bodies_in, from_b = mm_sync_stats(c->sess[1])->bodies_in;
	print_message("joiner: %llu bodies from a, %llu from b\n", (unsigned long long)from_a,
	              (unsigned long long)from_b);
	assert_true(from_a > N / 5);
	assert_true(from_b > N / 5);
	/* at most one inline budget per round twice over: a few dozen extra at most */
	assert_true(from_a + from_b <= N + 2 * (64 * 1024 / SIZE + 1) * 2);
	net_free(&net);
}

/* n bodies of `size` random bytes on node 0, delivered there under uid_of[k], with
 * their records (not their bodies) merged into node 1; ids_r[k] their ids. */
static void bodies_on_a(struct net *net, size_t n, size_t size, const uint32_t *uid_of,
                        uint8_t (*ids_r)[MM_ID_LEN])
{
	struct node *a = &net->nodes[0], *b = &net->nodes[1];
	struct mm_delta *d = mm_delta_new();
	uint8_t *data = malloc(size);
	assert_non_null(data);
	for (size_t k = 0; k < n; k++) {
		for (size_t i = 0; i < size; i++)
			data[i] = (uint8_t)rnd();
		uint8_t key[MM_KEY_LEN];
		mm_body_id(data, size, ids_r[k]);
		body_put(a, "ex.com/alice", ids_r[k], data, size);
		mm_hlc stamp = mm_clock_tick(&a->clk, net->now);
		assert_int_equal(mm_user_deliver(mm_state_user(a->st, "ex.com/alice", true), "INBOX", ids_r[k], size,
		                                 1700000000, 0, NULL, 0, uid_of[k], stamp, key, NULL, NULL, d), 1);
	}
	free(data);
	assert_true(mm_delta_apply(d, b->st, NULL, NULL) > 0);
	mm_delta_free(&d);
}

/* b wants the n bodies of bodies_on_a; none may start yet (a batch or a hold is open). */
static void want_none_started(struct node *b, size_t n, size_t size, const uint32_t *uid_of,
                              uint8_t (*ids)[MM_ID_LEN], uint64_t now)
{
	for (size_t k = 0; k < n; k++)
		assert_int_equal(mm_fetch_want(b->fetch, "ex.com/alice", ids[k], size, uid_of[k], NULL, now), 1);
	struct mm_fetch_stats fs;
	mm_fetch_get_stats(b->fetch, &fs);
	assert_int_equal(fs.inflight, 0);
	assert_int_equal(fs.wanted, n);
}

/* Bodies are asked for in the order of their UIDs, not in the order they were wanted
 * (records come in key order), so that a replica's store can place them as they
 * come.  b knows every record (as after a round, or a restart that finds them
 * missing) and wants the bodies in key order, in one batch. */
static void test_fetch_uid_order(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 2, 1000); /* 8000-byte bodies: none inline, all fetched */
	struct node *a = &net.nodes[0], *b = &net.nodes[1];
	enum { N = 300, SIZE = 8000 };
	uint32_t uid_of[N];
	uint8_t ids[N][MM_ID_LEN];
	for (size_t k = 0; k < N; k++)
		uid_of[k] = (uint32_t)k + 1;
	for (size_t k = N - 1; k > 0; k--) { /* UIDs in no relation to the keys */
		size_t j = rn((unsigned)k + 1);
		uint32_t t = uid_of[k];
		uid_of[k] = uid_of[j];
		uid_of[j] = t;
	}
	bodies_on_a(&net, N, SIZE, uid_of, ids);
	mm_fetch_batch_begin(b->fetch);
	want_none_started(b, N, SIZE, uid_of, ids, net.now); /* only queued until the batch ends */
	struct mm_fetch_stats fs;
	mm_fetch_batch_end(b->fetch, net.now);
	mm_fetch_get_stats(b->fetch, &fs);
	assert_true(fs.inflight > 0);
	uint8_t(*log)[MM_ID_LEN] = calloc(N, MM_ID_LEN);
	commit_log = log;
	commit_log_n = 0;
	run_until_converged(&net, 200);
	commit_log = NULL;
	check_same(b, a);
	assert_int_equal(commit_log_n, N);
	uint32_t last = 0;
	for (size_t i = 0; i < N; i++) {
		size_t k = 0;
		while (k < N && memcmp(ids[k], log[i], MM_ID_LEN))
			k++;
		assert_true(k < N);
		assert_true(uid_of[k] > last);
		last = uid_of[k];
	}
	free(log);
	net_free(&net);
}

/* mm_fetch_hold: while a driver's store cannot keep bodies (its disk is full), no
 * fetch starts, however many are wanted and however often it ticks; the first tick at
 * the hold's end (or, stepped_back, with the clock stepped back before its start)
 * starts them, and they all arrive. */
static void fetch_hold_case(bool stepped_back)
{
	struct net net;
	seed();
	net_init(&net, 2, 1000); /* 8000-byte bodies: none inline, all fetched */
	struct node *a = &net.nodes[0], *b = &net.nodes[1];
	enum { N = 40, SIZE = 8000 };
	uint32_t uid_of[N];
	uint8_t ids[N][MM_ID_LEN];
	for (size_t k = 0; k < N; k++)
		uid_of[k] = (uint32_t)k + 1;
	bodies_on_a(&net, N, SIZE, uid_of, ids);
	uint64_t until = net.now + 5000;
	mm_fetch_hold(b->fetch, net.now, until);
	want_none_started(b, N, SIZE, uid_of, ids, net.now);
	struct mm_fetch_stats fs;
	assert_int_equal(mm_fetch_tick(b->fetch, until - 1), 0);
	mm_fetch_get_stats(b->fetch, &fs);
	assert_int_equal(fs.inflight, 0);
	if (stepped_back)
		net.now -= 1;
	else
		net.now = until;
	assert_true(mm_fetch_tick(b->fetch, net.now) > 0);
	run_until_converged(&net, 200);
	check_same(b, a);
	mm_fetch_get_stats(b->fetch, &fs);
	assert_int_equal(fs.wanted, 0);
	net_free(&net);
}

static void test_fetch_hold(void **state)
{
	(void)state;
	fetch_hold_case(false);
	fetch_hold_case(true);
}

/* A message of an unknown version is rejected with -EPROTONOSUPPORT and an event. */
static int ev_version;
static void on_event(void *arg, struct mm_sync *s, const struct mm_sync_event *ev)
{
	(void)arg;
	(void)s;
	if (ev->type == MM_SYNC_EV_PROTO_ERROR && ev->err == -EPROTONOSUPPORT)
		ev_version++;
}

static void test_unknown_version(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 2, 0);
	struct mm_state *st = mm_state_new();
	struct mm_sync *s;
	struct mm_sync_config c = {
		.state = st, .local_node = 10, .peer_node = 11,
		.io = { net_send, &net.links[0][1] },
		.body = { b_read, b_begin, b_write, b_commit, b_abort, b_have, &net.nodes[0] },
		.event = on_event,
	};
	assert_int_equal(mm_sync_new(&c, &s), 0);
	mm_sync_connected(s, 0);
	struct mm_wbuf sb;
	mm_wbuf_init(&sb);
	assert_int_equal(mm_wire_enc_end(&sb, 1), 0);
	((uint8_t *)sb.data)[1] = 7;
	ev_version = 0;
	assert_int_equal(mm_sync_recv(s, MM_CHAN_STREAM, (uint8_t *)sb.data, sb.size, 0), -EPROTONOSUPPORT);
	assert_int_equal(ev_version, 1);
	/* a DESCENT for no round is ignored; garbage is -EBADMSG */
	const uint8_t junk[] = { 0x93, 0x01, 0x03 };
	assert_int_equal(mm_sync_recv(s, MM_CHAN_STREAM, junk, sizeof junk, 0), -EBADMSG);
	assert_int_equal(mm_sync_stats(s)->proto_errors, 2);
	mm_wbuf_free(&sb);
	mm_sync_free(&s);
	mm_state_free(&st);
	net_free(&net);
}

/* ---- the tombstone GC's bound --------------------------------------------------- */

/* Each side's GC bound (and members hash) reaches the other in the DIGEST exchange
 * (request and reply), again at once when either changes, and otherwise only once a
 * minute. */
static void test_gc_bound(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 2, 0);
	struct mm_sync *a = net.nodes[0].sess[1], *b = net.nodes[1].sess[0];
	net.now = 1000;
	assert_int_equal(mm_sync_gossip(a, net.now), 0); /* none set yet: none sent */
	net_run(&net);
	uint64_t plain = net.bytes_by_type[MM_MSG_DIGEST];
	assert_int_equal(mm_sync_stats(b)->peer_gc_bound_ms, 0);
	mm_sync_gc_bound_set(a, 1700000000000ull, 42);
	mm_sync_gc_bound_set(b, 1690000000000ull, 42);
	assert_int_equal(mm_sync_gossip(a, net.now), 0);
	net_run(&net);
	uint64_t with = net.bytes_by_type[MM_MSG_DIGEST] - plain;
	assert_int_equal(mm_sync_stats(b)->peer_gc_bound_ms, 1700000000000ull);
	assert_int_equal(mm_sync_stats(b)->peer_gc_members, 42);
	assert_int_equal(mm_sync_stats(a)->peer_gc_bound_ms, 1690000000000ull);
	assert_true(with > plain);
	uint64_t one = (with - plain) / 2; /* what one DIGEST's bound and members add */
	assert_true(one > 0);
	/* unchanged and sent a moment ago: the exchange is as short as without */
	uint64_t before = net.bytes_by_type[MM_MSG_DIGEST];
	net.now += 59000;
	assert_int_equal(mm_sync_gossip(a, net.now), 0);
	net_run(&net);
	assert_int_equal(net.bytes_by_type[MM_MSG_DIGEST] - before, plain);
	/* a's changed: sent at once; b's reply, unchanged, does not carry its own */
	before = net.bytes_by_type[MM_MSG_DIGEST];
	mm_sync_gc_bound_set(a, 1700000001000ull, 42);
	assert_int_equal(mm_sync_gossip(a, net.now), 0);
	net_run(&net);
	assert_int_equal(mm_sync_stats(b)->peer_gc_bound_ms, 1700000001000ull);
	assert_int_equal(net.bytes_by_type[MM_MSG_DIGEST] - before, plain + one);
	/* b's members changed (its peers file did), its bound not: sent at once */
	before = net.bytes_by_type[MM_MSG_DIGEST];
	mm_sync_gc_bound_set(b, 1690000000000ull, 43);
	assert_int_equal(mm_sync_gossip(a, net.now), 0);
	net_run(&net);
	assert_int_equal(mm_sync_stats(a)->peer_gc_members, 43);
	assert_int_equal(net.bytes_by_type[MM_MSG_DIGEST] - before, plain + one);
	/* a minute after a's was last sent: a's again */
	before = net.bytes_by_type[MM_MSG_DIGEST];
	net.now += 60000;
	assert_int_equal(mm_sync_gossip(a, net.now), 0);
	net_run(&net);
	assert_int_equal(net.bytes_by_type[MM_MSG_DIGEST] - before, plain + 2 * one);
	net_free(&net);
}

/* ---- reconciliation cost ---------------------------------------------------------- */

static int copy_cb(void *arg, const struct mm_rec *r)
{
	struct mm_user *dst = arg;
	assert_true(mm_user_merge(dst, r, NULL, NULL) >= 0);
	return 0;
}

static void cost_once(size_t n, size_t d)
{
	struct net net;
	net_init(&net, 2, 0);
	struct node *a = &net.nodes[0], *b = &net.nodes[1];
	a->all_present = b->all_present = true;
	const char *user = "ex.com/big";
	struct mm_user *ua = mm_state_user(a->st, user, true);
	uint8_t id[MM_ID_LEN] = { 1 };
	for (size_t i = 0; i < n; i++) {
		mm_hlc stamp = { ((uint64_t)1700000000000 + i) << 16, 1 };
		uint8_t key[MM_KEY_LEN];
		id[1] = (uint8_t)i;
		id[2] = (uint8_t)(i >> 8);
		id[3] = (uint8_t)(i >> 16);
		assert_true(mm_user_deliver(ua, "INBOX", id, 1000, 1700000000, 0, NULL, 0, 0, stamp, key,
		                            NULL, NULL, NULL) >= 0);
		if (i < d)
			remember_key(b, user, key);
	}
	struct mm_user *ub = mm_state_user(b->st, user, true);
	mm_user_foreach(ua, NULL, 0, copy_cb, ub);
	/* d differences: new messages on a, flag changes on b */
	for (size_t i = 0; i < d; i++) {
		mm_hlc stamp = { ((uint64_t)1800000000000 + i) << 16, 2 };
		if (i % 2 == 0) {
			id[0] = 2;
			id[1] = (uint8_t)i;
			assert_true(mm_user_deliver(ua, "INBOX", id, 1000, 1700000000, 0, NULL, 0, 0,
			                            (mm_hlc){ stamp.t, 1 }, NULL, NULL, NULL, NULL) >= 0);
		} else {
			assert_int_equal(mm_user_set_flag(ub, b->keys[i], MM_FLAG_SEEN, true, stamp, NULL,
			                                  NULL, NULL), 1);
		}
	}
	memset(net.bytes_by_type, 0, sizeof net.bytes_by_type);
	/* one gossip exchange finds the difference, the round fixes it */
	assert_int_equal(mm_sync_gossip(a->sess[1], net.now), 0);
	net_run(&net);
	uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
	mm_state_root(a->st, ra);
	mm_state_root(b->st, rb);
	assert_memory_equal(ra, rb, MM_HASH_LEN);
	const struct mm_sync_stats *st = mm_sync_stats(a->sess[1]);
	assert_int_equal(st->rounds_done, 1);
	uint64_t find = net.bytes_by_type[MM_MSG_DIGEST] + net.bytes_by_type[MM_MSG_START] +
	                net.bytes_by_type[MM_MSG_DESCENT] + net.bytes_by_type[MM_MSG_END];
	uint64_t recs = net.bytes_by_type[MM_MSG_RECORDS];
	uint64_t goal = 4 * d * 32 + 1024;
	double rt_goal = log((double)n) / log(16.0) + 2;
	printf("  n=%zu d=%zu: descent %llu B (goal %llu, bound d*32 = %zu), records %llu B, "
	       "total %llu B, round trips %llu (goal %.2f), differences seen %llu\n", n, d,
	       (unsigned long long)find, (unsigned long long)goal, d * 32, (unsigned long long)recs,
	       (unsigned long long)(find + recs), (unsigned long long)st->last_round_trips, rt_goal,
	       (unsigned long long)st->last_differences);
	assert_true(find <= goal);
	assert_true((double)st->last_round_trips <= rt_goal);
	net_free(&net);
}

static void test_reconcile_cost(void **state)
{
	(void)state;
	seed();
	size_t n = 100000;
	const char *e = getenv("MM_COST_N");
	if (e)
		n = strtoul(e, NULL, 0);
	cost_once(n, 1);
	cost_once(n, 10);
	cost_once(n, 100);
	if (getenv("MM_COST_D1000"))
		cost_once(n, 1000);
}

/* A new, empty node catches up with everything (bodies inline or fetched). */
static void test_empty_join(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 3, 0);
	for (int k = 0; k < 300; k++)
		random_change(&net.nodes[rn(2)], NULL);
	run_until_converged(&net, 200);
	size_t recs = check_same(&net.nodes[2], &net.nodes[0]);
	check_same(&net.nodes[0], &net.nodes[2]);
	assert_true(recs > 100);
	net_free(&net);
}

/* ---- review: fetching bodies ----------------------------------------------------- */

/* Delivers queued messages one at a time over a link of `rate` bytes per ms (both
 * directions share it, as the tests' single queue does), ticking every node's sessions
 * and scheduler every 200 ms of link time, until `until` or until nothing is wanted. */
static void net_run_slow(struct net *net, uint64_t rate, uint64_t until)
{
	uint64_t next_tick = net->now;
	for (;;) {
		if (net->now >= next_tick) {
			for (int i = 0; i < net->n; i++) {
				for (int j = 0; j < net->n; j++)
					if (j != i)
						mm_sync_tick(net->nodes[i].sess[j], net->now);
				mm_fetch_tick(net->nodes[i].fetch, net->now);
			}
			next_tick = net->now + 200;
		}
		struct mm_fetch_stats fs;
		mm_fetch_get_stats(net->nodes[1].fetch, &fs);
		if (net->now >= until || (!fs.wanted && !net->head))
			return;
		if (!net->head) {
			net->now = next_tick;
			continue;
		}
		struct msg *m = net->head;
		net->head = m->next;
		if (!net->head)
			net->tail = NULL;
		net->queued--;
		net->now += m->len / rate + 1;
		struct node *to = &net->nodes[m->to];
		if (m->ch != MM_CHAN_STREAM || m->epoch == net->epoch[m->from][m->to])
			assert_int_equal(mm_sync_recv(to->sess[m->from], m->ch, m->p, m->len, net->now), 0);
		free(m->p);
		free(m);
		/* back-pressure (block_queue): a blocked sender may go on once its queue is
		 * half drained, as a socket's would */
		for (int i = 0; i < net->n && net->queued <= net->block_queue / 2; i++)
			for (int j = 0; j < net->n; j++)
				if (i != j && net->links[i][j].blocked) {
					net->links[i][j].blocked = false;
					mm_sync_writable(net->nodes[i].sess[j], net->now);
				}
	}
}

/* A slow peer: a joining node pulls 200 bodies of 100 kB over a 200 kB/s link (100 s of
 * transfer).  The scheduler keeps 64 bodies (6.4 MB, 32 s of link) asked for at once
 * and the peer answers them one after the other; a body's 30 s timeout runs from the
 * moment it was asked for, so the last ones of every window time out while they wait
 * their turn at the peer, which still sends them (nothing cancels a GET_BODY).  Each
 * one asked again waits behind those stale ones: the link fills with bodies nobody
 * waits for any more.  They must all arrive within a few times the transfer time. */
static void test_fetch_slow_peer(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 2, 1000);
	struct node *a = &net.nodes[0], *b = &net.nodes[1];
	enum { N = 200, SIZE = 100000 };
	uint32_t uid_of[N];
	uint8_t ids[N][MM_ID_LEN];
	for (size_t k = 0; k < N; k++)
		uid_of[k] = (uint32_t)k + 1;
	bodies_on_a(&net, N, SIZE, uid_of, ids);
	uint64_t t0 = net.now;
	mm_fetch_batch_begin(b->fetch);
	want_none_started(b, N, SIZE, uid_of, ids, net.now);
	mm_fetch_batch_end(b->fetch, net.now);
	net_run_slow(&net, 200, t0 + 600000); /* 10 minutes for 100 s of transfer */
	struct mm_fetch_stats fs;
	mm_fetch_get_stats(b->fetch, &fs);
	const struct mm_sync_stats *sa = mm_sync_stats(a->sess[1]);
	printf("  slow peer: %llu of %d bodies in %llu s, %llu timeouts/failures, %llu body bytes sent "
	       "(%d needed)\n", (unsigned long long)fs.done, N, (unsigned long long)((net.now - t0) / 1000),
	       (unsigned long long)fs.failures, (unsigned long long)sa->body_bytes_out, N * SIZE);
	assert_int_equal(fs.wanted, 0);
	assert_true(sa->body_bytes_out < 2ull * N * SIZE);
	net_free(&net);
}

/* A round whose records take longer than the round timeout to cross a slow link (a
 * node joining a big cluster over a WAN): the records already in the stream's buffer
 * are ahead of the message the waiting side waits for (its peer's DESCENT or END
 * comes after them on the same stream), so records arriving, and one's own records
 * leaving as the stream drains, are progress.  Without that the side waiting timed
 * out 10 s after the descent and aborted the round, and the other then drops the
 * aborted round's queued records: the transfer was cut into 10 s pieces, each after a
 * new descent (here: nothing more, no gossip runs). */
static void test_round_slow_link(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 2, 1000);
	net.block_queue = 64; /* a stream buffer that takes longer than the round timeout to drain */
	struct node *a = &net.nodes[0], *b = &net.nodes[1];
	for (int k = 0; k < 4000; k++)
		deliver(a, "ex.com/alice", 100, NULL);
	assert_int_equal(mm_sync_start(b->sess[0], net.now), 0);
	uint64_t t0 = net.now;
	net_run_slow(&net, 20, t0 + 600000); /* 20 bytes/ms: about 50 s of records */
	const struct mm_sync_stats *sb = mm_sync_stats(b->sess[0]), *sa = mm_sync_stats(a->sess[1]);
	printf("  slow link: round over after %llu s; rounds done %llu / %llu, aborted %llu / %llu\n",
	       (unsigned long long)((net.now - t0) / 1000), (unsigned long long)sb->rounds_done,
	       (unsigned long long)sa->rounds_done, (unsigned long long)sb->rounds_aborted,
	       (unsigned long long)sa->rounds_aborted);
	assert_true(net.now - t0 > 20000); /* the link was slower than the round timeout */
	assert_int_equal(sb->rounds_aborted + sa->rounds_aborted, 0);
	assert_true(converged(&net));
	net_free(&net);
}

/* A body wanted for a message that is then expunged everywhere before it could be
 * fetched: no peer has it any more, and no live message here needs it.  The scheduler
 * must stop asking for it; it kept it for ever and asked every peer for it again after
 * each backoff (every 30 s) for as long as the node ran. */
static void test_fetch_expunged_before_fetch(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 2, 1000); /* an 8000-byte body: not inline, fetched */
	struct node *a = &net.nodes[0], *b = &net.nodes[1];
	mm_delta_clear(a->delta);
	deliver(a, "ex.com/alice", 8000, a->delta);
	uint8_t key[MM_KEY_LEN], body[MM_ID_LEN];
	memcpy(key, a->keys[a->n_keys - 1], MM_KEY_LEN);
	assert_true(mm_user_msg_body(mm_state_user(a->st, "ex.com/alice", false), key, body));
	assert_true(mm_sync_push(a->sess[1], a->delta, net.now) > 0);
	/* the push reaches b, whose GET_BODY is on its way to a ... */
	struct msg *m = net.head;
	net.head = m->next;
	if (!net.head)
		net.tail = NULL;
	net.queued--;
	assert_int_equal(mm_sync_recv(b->sess[0], m->ch, m->p, m->len, net.now), 0);
	free(m->p);
	free(m);
	assert_true(mm_fetch_wanted(b->fetch, "ex.com/alice", body));
	/* ... when the user expunges the message on a: its file is gone with it */
	mm_delta_clear(a->delta);
	mm_hlc stamp = mm_clock_tick(&a->clk, net.now);
	assert_int_equal(mm_user_expunge(mm_state_user(a->st, "ex.com/alice", false), key, stamp, NULL, NULL,
	                                 a->delta), 1);
	for (struct body **pp = &a->bodies; *pp; pp = &(*pp)->next)
		if (!memcmp((*pp)->id, body, MM_ID_LEN)) {
			struct body *x = *pp;
			*pp = x->next;
			free(x->data);
			free(x);
			break;
		}
	assert_true(mm_sync_push(a->sess[1], a->delta, net.now) > 0);
	net_run(&net);
	uint8_t tmp[MM_ID_LEN];
	assert_false(mm_user_msg_body(mm_state_user(b->st, "ex.com/alice", false), key, tmp));
	/* an hour of gossip intervals */
	struct mm_fetch_stats fs0, fs;
	mm_fetch_get_stats(b->fetch, &fs0);
	for (int it = 0; it < 3600 * 5; it++) {
		for (int i = 0; i < net.n; i++) {
			uint8_t r[8];
			for (int k = 0; k < 8; k++)
				r[k] = (uint8_t)rnd();
			mm_gossip_tick(net.nodes[i].g, net.now, r, sizeof r);
			mm_fetch_tick(net.nodes[i].fetch, net.now);
		}
		net_run(&net);
		net.now += 200;
	}
	mm_fetch_get_stats(b->fetch, &fs);
	printf("  expunged before fetched: still wanted %llu, %llu failed attempts in an hour\n",
	       (unsigned long long)fs.wanted, (unsigned long long)(fs.failures - fs0.failures));
	assert_int_equal(fs.wanted, 0);
	assert_true(fs.failures - fs0.failures <= 2);
	net_free(&net);
}

/* Several bodies time out on one session at the same tick; the first one's failure
 * starts another fetch on that session, whose send fails (the daemon's transport
 * returns an error once its connection is closing): the stream is reset and every
 * other request of the session freed while mm_sync_tick still walks them. */
static int fail_sends;
static int failing_send(void *arg, enum mm_chan ch, const uint8_t *p, size_t len)
{
	if (fail_sends && ch == MM_CHAN_STREAM)
		return -EPIPE;
	return net_send(arg, ch, p, len);
}

static void test_fetch_timeout_send_fails(void **state)
{
	(void)state;
	struct net net;
	seed();
	net_init(&net, 2, 1000);
	struct node *b = &net.nodes[1];
	/* b's session to a: a scheduler of 3 in flight at most, a failing transport */
	mm_sync_free(&b->sess[0]);
	mm_fetch_free(&b->fetch);
	struct mm_fetch_config fc = { .max_inflight = 3 };
	assert_int_equal(mm_fetch_new(&fc, &b->fetch), 0);
	struct mm_sync_config c = {
		.state = b->st, .local_node = 2, .peer_node = 1,
		.io = { failing_send, &net.links[1][0] },
		.body = { b_read, b_begin, b_write, b_commit, b_abort, b_have, b },
		.fetch = b->fetch, .clock = &b->clk,
	};
	assert_int_equal(mm_sync_new(&c, &b->sess[0]), 0);
	mm_sync_connected(b->sess[0], net.now);
	enum { N = 6, SIZE = 8000 };
	uint32_t uid_of[N];
	uint8_t ids[N][MM_ID_LEN];
	for (size_t k = 0; k < N; k++)
		uid_of[k] = (uint32_t)k + 1;
	bodies_on_a(&net, N, SIZE, uid_of, ids);
	for (size_t k = 0; k < N; k++)
		mm_fetch_want(b->fetch, "ex.com/alice", ids[k], SIZE, uid_of[k], NULL, net.now);
	struct mm_fetch_stats fs;
	mm_fetch_get_stats(b->fetch, &fs);
	assert_int_equal(fs.inflight, 3);
	/* a never answers (its GET_BODYs are lost); the connection is closing */
	while (net.head) {
		struct msg *m = net.head;
		net.head = m->next;
		free(m->p);
		free(m);
	}
	net.tail = NULL;
	net.queued = 0;
	fail_sends = 1;
	mm_sync_tick(b->sess[0], net.now + MM_SYNC_BODY_TIMEOUT_MS);
	fail_sends = 0;
	assert_false(mm_sync_is_connected(b->sess[0]));
	mm_fetch_get_stats(b->fetch, &fs);
	assert_int_equal(fs.inflight, 0);
	assert_int_equal(fs.wanted, N);
	net_free(&net);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_push_inline),
		cmocka_unit_test(test_delta_fresh),
		cmocka_unit_test(test_join_from_several),
		cmocka_unit_test(test_fetch_uid_order),
		cmocka_unit_test(test_fetch_hold),
		cmocka_unit_test(test_fetch_slow_peer),
		cmocka_unit_test(test_round_slow_link),
		cmocka_unit_test(test_fetch_expunged_before_fetch),
		cmocka_unit_test(test_fetch_timeout_send_fails),
		cmocka_unit_test(test_unknown_version),
		cmocka_unit_test(test_gc_bound),
		cmocka_unit_test(test_corrupt_body),
		cmocka_unit_test(test_two_nodes),
		cmocka_unit_test(test_three_nodes_faults),
		cmocka_unit_test(test_three_nodes_backpressure),
		cmocka_unit_test(test_later_version_peer),
		cmocka_unit_test(test_empty_join),
		cmocka_unit_test(test_reconcile_cost),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
