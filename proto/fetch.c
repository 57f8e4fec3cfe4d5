/*
 * fetch.c — the node's body scheduler (proto/fetch.h): wanted bodies, per-peer limits,
 * retry on another peer, backoff when no peer could serve a body.
 *
 * Wanted bodies live in a vector (swap-remove) indexed by an open-addressing hash table
 * on BLAKE2b(user || id), so want/done/have are O(1) with a million wanted bodies.
 * Peers are few (the sessions of this node); they are kept in a small vector.
 */
#include "proto/fetch.h"
#include "proto/sync.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

struct want {
	char *user;
	uint8_t id[MM_ID_LEN];
	uint64_t size;
	uint64_t hkey;
	struct mm_sync *hint;
	struct mm_sync *on;       /* session fetching it now, or NULL */
	struct mm_sync **tried;   /* sessions that failed it in this cycle */
	size_t n_tried;
	uint64_t not_before;
	uint32_t backoff;
	int last_err;
	bool attempted;
};

struct peer {
	struct mm_sync *s;
	unsigned inflight;
	uint64_t bytes;
};

struct mm_fetch {
	struct mm_fetch_config cfg;
	struct want **v;
	size_t n, cap;
	uint32_t *tab;  /* index+1 into v, 0 = empty, UINT32_MAX = deleted */
	size_t tab_cap; /* power of two */
	size_t tab_used;
	struct peer *peers;
	size_t n_peers, cap_peers;
	size_t rr;      /* rotation over peers */
	size_t scan;    /* rotation over wanted bodies */
	struct mm_fetch_stats st;
	bool filling;
};

#define TAB_DEL UINT32_MAX

static uint64_t hkey(const char *user, const uint8_t id[MM_ID_LEN])
{
	uint8_t h[8];
	crypto_generichash_state st;
	crypto_generichash_init(&st, NULL, 0, sizeof h);
	crypto_generichash_update(&st, (const uint8_t *)user, strlen(user) + 1);
	crypto_generichash_update(&st, id, MM_ID_LEN);
	crypto_generichash_final(&st, h, sizeof h);
	uint64_t k;
	memcpy(&k, h, sizeof k);
	return k;
}

static size_t find_slot(const struct mm_fetch *f, const char *user, const uint8_t *id, uint64_t k)
{
	if (!f->tab_cap)
		return SIZE_MAX;
	size_t mask = f->tab_cap - 1;
	for (size_t i = k & mask, probes = 0; probes < f->tab_cap; i = (i + 1) & mask, probes++) {
		uint32_t t = f->tab[i];
		if (t == 0)
			return SIZE_MAX;
		if (t == TAB_DEL)
			continue;
		const struct want *w = f->v[t - 1];
		if (w->hkey == k && !memcmp(w->id, id, MM_ID_LEN) && !strcmp(w->user, user))
			return i;
	}
	return SIZE_MAX;
}

static int tab_insert(struct mm_fetch *f, uint64_t k, uint32_t idx1);

static int tab_grow(struct mm_fetch *f)
{
	/* sized from the live entries: rehashing also drops the deleted slots */
	size_t cap = 64;
	while (cap < (f->n + 1) * 4)
		cap *= 2;
	uint32_t *t = calloc(cap, sizeof *t);
	if (!t)
		return -ENOMEM;
	free(f->tab);
	f->tab = t;
	f->tab_cap = cap;
	f->tab_used = 0;
	for (size_t i = 0; i < f->n; i++)
		tab_insert(f, f->v[i]->hkey, (uint32_t)(i + 1));
	return 0;
}

static int tab_insert(struct mm_fetch *f, uint64_t k, uint32_t idx1)
{
	size_t mask = f->tab_cap - 1;
	size_t i = k & mask;
	while (f->tab[i] != 0 && f->tab[i] != TAB_DEL)
		i = (i + 1) & mask;
	if (f->tab[i] == 0)
		f->tab_used++;
	f->tab[i] = idx1;
	return 0;
}

static size_t tab_find_idx(const struct mm_fetch *f, uint64_t k, uint32_t idx1)
{
	size_t mask = f->tab_cap - 1;
	for (size_t i = k & mask;; i = (i + 1) & mask)
		if (f->tab[i] == idx1)
			return i;
}

static struct want *lookup(const struct mm_fetch *f, const char *user, const uint8_t *id)
{
	size_t slot = find_slot(f, user, id, hkey(user, id));
	return slot == SIZE_MAX ? NULL : f->v[f->tab[slot] - 1];
}

static struct peer *peer_of(struct mm_fetch *f, const struct mm_sync *s)
{
	for (size_t i = 0; i < f->n_peers; i++)
		if (f->peers[i].s == s)
			return &f->peers[i];
	return NULL;
}

static void want_unassign(struct mm_fetch *f, struct want *w)
{
	if (!w->on)
		return;
	struct peer *p = peer_of(f, w->on);
	if (p) {
		p->inflight--;
		p->bytes -= w->size;
	}
	f->st.inflight--;
	f->st.inflight_bytes -= w->size;
	w->on = NULL;
}

/* Removes wanted body at index i (swap with the last). */
static void want_remove(struct mm_fetch *f, struct want *w)
{
	size_t slot = find_slot(f, w->user, w->id, w->hkey);
	uint32_t idx1 = f->tab[slot];
	size_t i = idx1 - 1;
	want_unassign(f, w);
	f->tab[slot] = TAB_DEL;
	size_t last = f->n - 1;
	if (i != last) {
		struct want *m = f->v[last];
		f->tab[tab_find_idx(f, m->hkey, (uint32_t)(last + 1))] = (uint32_t)(i + 1);
		f->v[i] = m;
	}
	f->n--;
	f->st.wanted = f->n;
	free(w->user);
	free(w->tried);
	free(w);
}

static bool tried(const struct want *w, const struct mm_sync *s)
{
	for (size_t i = 0; i < w->n_tried; i++)
		if (w->tried[i] == s)
			return true;
	return false;
}

static bool has_room(const struct mm_fetch *f, const struct peer *p, uint64_t size)
{
	if (p->inflight >= f->cfg.max_inflight)
		return false;
	return p->inflight == 0 || p->bytes + size <= f->cfg.max_bytes;
}

static bool any_room(const struct mm_fetch *f)
{
	for (size_t i = 0; i < f->n_peers; i++)
		if (f->peers[i].inflight < f->cfg.max_inflight)
			return true;
	return false;
}

/* Tries to start wanted body w; returns 1 if started. */
static int try_start(struct mm_fetch *f, struct want *w, uint64_t now)
{
	if (w->on || w->not_before > now || !f->n_peers)
		return 0;
	/* every connected peer failed it: wait, then try them all again */
	size_t untried = 0;
	for (size_t i = 0; i < f->n_peers; i++)
		untried += !tried(w, f->peers[i].s);
	if (!untried) {
		w->n_tried = 0;
		w->not_before = now + w->backoff;
		w->backoff = w->backoff * 2 > f->cfg.backoff_max_ms ? f->cfg.backoff_max_ms : w->backoff * 2;
		if (f->cfg.event)
			f->cfg.event(f->cfg.event_arg, w->user, w->id, w->last_err);
		return 0;
	}
	struct peer *p = NULL;
	struct peer *h = w->hint ? peer_of(f, w->hint) : NULL;
	if (h && !tried(w, h->s) && has_room(f, h, w->size))
		p = h;
	for (size_t k = 0; !p && k < f->n_peers; k++) {
		struct peer *c = &f->peers[(f->rr + k) % f->n_peers];
		if (!tried(w, c->s) && has_room(f, c, w->size)) {
			p = c;
			f->rr = (f->rr + k + 1) % f->n_peers;
		}
	}
	if (!p)
		return 0;
	struct mm_sync *s = p->s;
	w->on = s;
	p->inflight++;
	p->bytes += w->size;
	f->st.inflight++;
	f->st.inflight_bytes += w->size;
	if (w->attempted)
		f->st.retries++;
	w->attempted = true;
	int rc = mm_sync_fetch(s, w->user, w->id, w->size, now);
	if (rc < 0 && rc != -EALREADY) {
		/* w may have been resolved through a reset callback: look it up again */
		struct want *again = lookup(f, w->user, w->id);
		if (again == w && w->on == s) {
			want_unassign(f, w);
			struct mm_sync **t = realloc(w->tried, (w->n_tried + 1) * sizeof *t);
			if (t) {
				w->tried = t;
				w->tried[w->n_tried++] = s;
			}
			w->last_err = rc;
		}
		return 0;
	}
	return 1;
}

static int fill(struct mm_fetch *f, uint64_t now)
{
	if (f->filling)
		return 0;
	f->filling = true;
	int started = 0;
	size_t n = f->n;
	for (size_t k = 0; k < n && f->n && any_room(f); k++) {
		size_t i = (f->scan + k) % f->n;
		started += try_start(f, f->v[i], now);
	}
	if (f->n)
		f->scan = (f->scan + 1) % f->n;
	f->filling = false;
	return started;
}

int mm_fetch_new(const struct mm_fetch_config *cfg, struct mm_fetch **f_r)
{
	*f_r = NULL;
	if (sodium_init() < 0)
		return -ENOMEM;
	struct mm_fetch *f = calloc(1, sizeof *f);
	if (!f)
		return -ENOMEM;
	if (cfg)
		f->cfg = *cfg;
	if (!f->cfg.max_inflight)
		f->cfg.max_inflight = 64;
	if (!f->cfg.max_bytes)
		f->cfg.max_bytes = 32u << 20;
	if (!f->cfg.backoff_ms)
		f->cfg.backoff_ms = 500;
	if (!f->cfg.backoff_max_ms)
		f->cfg.backoff_max_ms = 30000;
	*f_r = f;
	return 0;
}

void mm_fetch_free(struct mm_fetch **fp)
{
	if (!fp || !*fp)
		return;
	struct mm_fetch *f = *fp;
	*fp = NULL;
	for (size_t i = 0; i < f->n; i++) {
		free(f->v[i]->user);
		free(f->v[i]->tried);
		free(f->v[i]);
	}
	free(f->v);
	free(f->tab);
	free(f->peers);
	free(f);
}

int mm_fetch_peer_up(struct mm_fetch *f, struct mm_sync *s, uint64_t now_ms)
{
	if (peer_of(f, s))
		return 0;
	if (f->n_peers == f->cap_peers) {
		size_t cap = f->cap_peers ? f->cap_peers * 2 : 8;
		struct peer *p = realloc(f->peers, cap * sizeof *p);
		if (!p)
			return -ENOMEM;
		f->peers = p;
		f->cap_peers = cap;
	}
	f->peers[f->n_peers++] = (struct peer){ s, 0, 0 };
	fill(f, now_ms);
	return 0;
}

void mm_fetch_peer_down(struct mm_fetch *f, struct mm_sync *s, uint64_t now_ms)
{
	struct peer *p = peer_of(f, s);
	if (!p)
		return;
	for (size_t i = 0; i < f->n; i++) {
		struct want *w = f->v[i];
		if (w->on == s) {
			want_unassign(f, w);
			f->st.failures++;
		}
		if (w->hint == s)
			w->hint = NULL;
		/* forget it in tried lists: the pointer may be freed and reused */
		for (size_t k = 0; k < w->n_tried; k++)
			if (w->tried[k] == s)
				w->tried[k--] = w->tried[--w->n_tried];
	}
	*p = f->peers[--f->n_peers];
	f->rr = 0;
	fill(f, now_ms);
}

int mm_fetch_want(struct mm_fetch *f, const char *user, const uint8_t id[MM_ID_LEN],
                  uint64_t size, struct mm_sync *hint, uint64_t now_ms)
{
	if (!user || !*user || strlen(user) > MM_NAME_MAX)
		return -EINVAL;
	if (lookup(f, user, id))
		return 0;
	if (f->n >= UINT32_MAX - 2)
		return -ENOMEM;
	if (f->n == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 64;
		struct want **v = realloc(f->v, cap * sizeof *v);
		if (!v)
			return -ENOMEM;
		f->v = v;
		f->cap = cap;
	}
	if ((f->tab_used + 1) * 2 > f->tab_cap && tab_grow(f) < 0)
		return -ENOMEM;
	struct want *w = calloc(1, sizeof *w);
	if (!w || !(w->user = strdup(user))) {
		free(w);
		return -ENOMEM;
	}
	memcpy(w->id, id, MM_ID_LEN);
	w->size = size;
	w->hint = hint && peer_of(f, hint) ? hint : NULL;
	w->hkey = hkey(user, id);
	w->backoff = f->cfg.backoff_ms;
	f->v[f->n++] = w;
	tab_insert(f, w->hkey, (uint32_t)f->n);
	f->st.wanted = f->n;
	try_start(f, w, now_ms);
	return 1;
}

void mm_fetch_done(struct mm_fetch *f, struct mm_sync *s, const char *user,
                   const uint8_t id[MM_ID_LEN], int result, uint64_t now_ms)
{
	struct want *w = lookup(f, user, id);
	if (!w || w->on != s)
		return;
	if (result == 0) {
		f->st.done++;
		want_remove(f, w);
	} else {
		want_unassign(f, w);
		f->st.failures++;
		f->st.mismatches += result == -EBADMSG;
		w->last_err = result;
		struct mm_sync **t = realloc(w->tried, (w->n_tried + 1) * sizeof *t);
		if (t) {
			w->tried = t;
			w->tried[w->n_tried++] = s;
		}
	}
	fill(f, now_ms);
}

void mm_fetch_have(struct mm_fetch *f, const char *user, const uint8_t id[MM_ID_LEN],
                   uint64_t now_ms)
{
	struct want *w = lookup(f, user, id);
	if (!w || w->on)
		return; /* in flight: mm_fetch_done will come from its session */
	want_remove(f, w);
	fill(f, now_ms);
}

int mm_fetch_tick(struct mm_fetch *f, uint64_t now_ms)
{
	return fill(f, now_ms);
}

bool mm_fetch_wanted(const struct mm_fetch *f, const char *user, const uint8_t id[MM_ID_LEN])
{
	return lookup(f, user, id) != NULL;
}

void mm_fetch_get_stats(const struct mm_fetch *f, struct mm_fetch_stats *st_r)
{
	*st_r = f->st;
	st_r->wanted = f->n;
}
