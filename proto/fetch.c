/*
 * fetch.c — the node's body scheduler (proto/fetch.h): wanted bodies, per-peer limits,
 * retry on another peer, backoff when no peer could serve a body.
 *
 * Wanted bodies live in a vector (swap-remove) indexed by an open-addressing hash table
 * on BLAKE2b(user || id), so want/done/have are O(1) with a million wanted bodies.
 * Those that may start now wait in a binary min-heap on (order, arrival), so bodies
 * are asked for in the order the caller gave (a replica lists a folder's bodies in
 * UID order: fetched in that order, they can be placed as they come); those waiting
 * out a backoff sleep in a separate vector, so the heap's top is always startable.
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
	uint64_t order, seq;      /* heap key: the caller's order, then arrival */
	size_t qpos;              /* 1 + index in the ready heap, 0 = not in it */
	size_t spos;              /* 1 + index in the sleeping vector, 0 = not in it */
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
	struct want **q; /* ready: not in flight, not backing off; min-heap on (order, seq) */
	size_t qn, qcap;
	struct want **sl; /* sleeping: backing off until their not_before */
	size_t sn, scap;
	uint64_t wake_ms; /* no sleeper is due before this */
	uint64_t seq;
	struct mm_fetch_stats st;
	unsigned batch;   /* mm_fetch_batch_begin depth: no fetch starts while > 0 */
	uint64_t hold_from, hold_until; /* mm_fetch_hold: no fetch starts in between */
	bool filling;
};

/* How many wanted bodies one fill may look at and put back (no peer has room for
 * their size, say) before it stops: a fill stays cheap however many wait. */
#define FILL_SKIP_MAX 256

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

/* ---- the ready heap and the sleepers ------------------------------------------------ */

static bool q_less(const struct want *a, const struct want *b)
{
	return a->order != b->order ? a->order < b->order : a->seq < b->seq;
}

static void q_set(struct mm_fetch *f, size_t i, struct want *w)
{
	f->q[i] = w;
	w->qpos = i + 1;
}

static void q_up(struct mm_fetch *f, size_t i)
{
	struct want *w = f->q[i];
	while (i > 0 && q_less(w, f->q[(i - 1) / 2])) {
		q_set(f, i, f->q[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	q_set(f, i, w);
}

static void q_down(struct mm_fetch *f, size_t i)
{
	struct want *w = f->q[i];
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= f->qn)
			break;
		if (c + 1 < f->qn && q_less(f->q[c + 1], f->q[c]))
			c++;
		if (!q_less(f->q[c], w))
			break;
		q_set(f, i, f->q[c]);
		i = c;
	}
	q_set(f, i, w);
}

/* Makes *v (capacity *cap) hold at least n + 1 pointers.  0 or -ENOMEM. */
static int room_for(struct want ***v, size_t *cap, size_t n)
{
	if (*cap > n)
		return 0;
	size_t nc = *cap ? *cap * 2 : 64;
	struct want **nv = realloc(*v, nc * sizeof *nv);
	if (!nv)
		return -ENOMEM;
	*v = nv;
	*cap = nc;
	return 0;
}

/* Out of the heap or the sleepers, wherever it is. */
static void q_take(struct mm_fetch *f, struct want *w)
{
	if (w->qpos) {
		size_t i = w->qpos - 1;
		w->qpos = 0;
		struct want *last = f->q[--f->qn];
		if (i < f->qn) {
			q_set(f, i, last);
			q_up(f, i);
			q_down(f, last->qpos - 1);
		}
	}
	if (w->spos) {
		size_t i = w->spos - 1;
		w->spos = 0;
		struct want *last = f->sl[--f->sn];
		if (i < f->sn) {
			f->sl[i] = last;
			last->spos = i + 1;
		}
	}
}

/* A want that is not in flight waits: in the heap, or asleep while it backs off.
 * Idempotent (a want already waiting stays where it is). */
static void q_put(struct mm_fetch *f, struct want *w, uint64_t now)
{
	if (w->on || w->qpos || w->spos)
		return;
	if (w->not_before > now) {
		f->sl[f->sn++] = w;
		w->spos = f->sn;
		if (!f->wake_ms || w->not_before < f->wake_ms)
			f->wake_ms = w->not_before;
		return;
	}
	f->q[f->qn] = w;
	w->qpos = ++f->qn;
	q_up(f, f->qn - 1);
}

/* Sleepers whose backoff is over go back to the heap. */
static void q_wake(struct mm_fetch *f, uint64_t now)
{
	if (!f->sn || now < f->wake_ms)
		return;
	f->wake_ms = 0;
	for (size_t i = f->sn; i-- > 0;) {
		struct want *w = f->sl[i];
		if (w->not_before <= now) {
			q_take(f, w);
			q_put(f, w, now);
		} else if (!f->wake_ms || w->not_before < f->wake_ms) {
			f->wake_ms = w->not_before;
		}
	}
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
	q_take(f, w);
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

/* Tries to start wanted body w; returns 1 if started, 0 if not, -1 if it was dropped
 * (freed: no longer needed). */
static int try_start(struct mm_fetch *f, struct want *w, uint64_t now)
{
	if (w->on || w->not_before > now || !f->n_peers)
		return 0;
	/* every connected peer failed it: wait, then try them all again */
	size_t untried = 0;
	for (size_t i = 0; i < f->n_peers; i++)
		untried += !tried(w, f->peers[i].s);
	if (!untried) {
		if (f->cfg.needed && !f->cfg.needed(f->cfg.needed_arg, w->user, w->id)) {
			want_remove(f, w);
			return -1;
		}
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
	if (f->filling || f->batch || (now < f->hold_until && now >= f->hold_from))
		return 0;
	f->filling = true;
	q_wake(f, now);
	int started = 0;
	/* in order; one that cannot start now (no peer it may try has room for its size,
	 * or every peer failed it: then it sleeps) is put back after the others had
	 * their turn (a want is removed only by a body or by have, never by a start) */
	struct want *skipped[FILL_SKIP_MAX];
	size_t ns = 0;
	while (f->qn && ns < FILL_SKIP_MAX && any_room(f)) {
		struct want *w = f->q[0];
		q_take(f, w);
		int rc = try_start(f, w, now);
		if (rc > 0)
			started++;
		else if (rc == 0)
			skipped[ns++] = w;
	}
	for (size_t i = 0; i < ns; i++)
		q_put(f, skipped[i], now);
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
	free(f->q);
	free(f->sl);
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
			q_put(f, w, now_ms);
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
                  uint64_t size, uint64_t order, struct mm_sync *hint, uint64_t now_ms)
{
	if (!user || !*user || strlen(user) > MM_NAME_MAX)
		return -EINVAL;
	if (lookup(f, user, id))
		return 0;
	if (f->n >= UINT32_MAX - 2)
		return -ENOMEM;
	/* room for it in the heap and the sleepers too, so putting it back never fails */
	if (room_for(&f->v, &f->cap, f->n) < 0 || room_for(&f->q, &f->qcap, f->n) < 0 ||
	    room_for(&f->sl, &f->scap, f->n) < 0)
		return -ENOMEM;
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
	w->order = order;
	w->seq = f->seq++;
	f->v[f->n++] = w;
	tab_insert(f, w->hkey, (uint32_t)f->n);
	f->st.wanted = f->n;
	q_put(f, w, now_ms);
	fill(f, now_ms);
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
		q_put(f, w, now_ms);
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

void mm_fetch_batch_begin(struct mm_fetch *f)
{
	f->batch++;
}

void mm_fetch_batch_end(struct mm_fetch *f, uint64_t now_ms)
{
	if (f->batch && --f->batch == 0)
		fill(f, now_ms);
}

int mm_fetch_tick(struct mm_fetch *f, uint64_t now_ms)
{
	return fill(f, now_ms);
}

void mm_fetch_hold(struct mm_fetch *f, uint64_t now_ms, uint64_t until_ms)
{
	f->hold_from = now_ms;
	f->hold_until = until_ms;
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
