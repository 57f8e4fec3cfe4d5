/*
 * gossip.c — peer choice for anti-entropy and push fanout (proto/gossip.h).
 *
 * The PRNG is splitmix64 over a state seeded by the driver and stirred with the
 * driver's random bytes at every tick: deterministic for the simulator, unpredictable
 * enough for the daemon (which feeds it from randombytes_buf).
 */
#include "proto/gossip.h"
#include "proto/sync.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct mm_gossip {
	struct mm_gossip_config cfg;
	struct mm_sync **v;
	size_t n, cap;
	uint64_t rng;
};

static uint64_t next(struct mm_gossip *g)
{
	uint64_t z = (g->rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [0, n) without modulo bias. */
static size_t below(struct mm_gossip *g, size_t n)
{
	uint64_t lim = UINT64_MAX - UINT64_MAX % n;
	uint64_t x;
	do
		x = next(g);
	while (x >= lim);
	return (size_t)(x % n);
}

int mm_gossip_new(const struct mm_gossip_config *cfg, struct mm_gossip **g_r)
{
	*g_r = NULL;
	struct mm_gossip *g = calloc(1, sizeof *g);
	if (!g)
		return -ENOMEM;
	if (cfg)
		g->cfg = *cfg;
	if (!g->cfg.fanout)
		g->cfg.fanout = 3;
	if (!g->cfg.push_all_max)
		g->cfg.push_all_max = 8;
	g->rng = g->cfg.seed;
	*g_r = g;
	return 0;
}

void mm_gossip_free(struct mm_gossip **gp)
{
	if (!gp || !*gp)
		return;
	free((*gp)->v);
	free(*gp);
	*gp = NULL;
}

int mm_gossip_add(struct mm_gossip *g, struct mm_sync *s)
{
	for (size_t i = 0; i < g->n; i++)
		if (g->v[i] == s)
			return -EEXIST;
	if (g->n == g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 8;
		struct mm_sync **v = realloc(g->v, cap * sizeof *v);
		if (!v)
			return -ENOMEM;
		g->v = v;
		g->cap = cap;
	}
	g->v[g->n++] = s;
	return 0;
}

int mm_gossip_remove(struct mm_gossip *g, struct mm_sync *s)
{
	for (size_t i = 0; i < g->n; i++)
		if (g->v[i] == s) {
			memmove(&g->v[i], &g->v[i + 1], (g->n - i - 1) * sizeof *g->v);
			g->n--;
			return 0;
		}
	return -ENOENT;
}

size_t mm_gossip_count(const struct mm_gossip *g)
{
	return g->n;
}

int mm_gossip_tick(struct mm_gossip *g, uint64_t now_ms, const uint8_t *rnd, size_t rnd_len)
{
	for (size_t i = 0; i < rnd_len; i++) {
		g->rng = (g->rng ^ rnd[i]) * 0x100000001b3ull;
	}
	for (size_t i = 0; i < g->n; i++)
		mm_sync_tick(g->v[i], now_ms);
	if (!g->n)
		return -ENOENT;
	size_t k = below(g, g->n);
	mm_sync_gossip(g->v[k], now_ms);
	return (int)k;
}

/* Pushes d to up to `want` random connected peers other than except. */
static int push_some(struct mm_gossip *g, const struct mm_delta *d, struct mm_sync *except,
                     size_t want, uint64_t now_ms)
{
	size_t *idx = malloc((g->n + 1) * sizeof *idx);
	if (!idx)
		return -ENOMEM;
	size_t m = 0;
	for (size_t i = 0; i < g->n; i++)
		if (g->v[i] != except && mm_sync_is_connected(g->v[i]))
			idx[m++] = i;
	int pushed = 0;
	/* partial Fisher-Yates: the first `want` of a random permutation */
	for (size_t i = 0; i < m && (size_t)pushed < want; i++) {
		size_t j = i + below(g, m - i);
		size_t t = idx[i];
		idx[i] = idx[j];
		idx[j] = t;
		if (mm_sync_push(g->v[idx[i]], d, now_ms) >= 0)
			pushed++;
	}
	free(idx);
	return pushed;
}

int mm_gossip_push(struct mm_gossip *g, const struct mm_delta *d, struct mm_sync *except,
                   uint64_t now_ms)
{
	size_t want = g->n <= g->cfg.push_all_max ? g->n : g->cfg.fanout;
	return push_some(g, d, except, want, now_ms);
}

void mm_gossip_relay(void *arg, struct mm_sync *from, const struct mm_delta *d, uint64_t now_ms)
{
	struct mm_gossip *g = arg;
	if (g->n <= g->cfg.push_all_max)
		return;
	push_some(g, d, from, g->cfg.fanout, now_ms);
}
