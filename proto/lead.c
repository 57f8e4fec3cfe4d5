/*
 * lead.c — the UID authority agreed by gossip (proto/lead.h): a small table of the
 * lower nodes this node has heard of, each with its highest heartbeat and when that
 * heartbeat last rose here.
 */
#include "proto/lead.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct known {
	uint64_t id;
	uint64_t beat;      /* highest heartbeat seen from id */
	uint64_t seen;      /* local time it last rose */
};

struct mm_lead {
	struct mm_lead_config cfg;
	uint64_t started;
	bool heard;         /* some peer's view arrived since the start */
	bool ineligible;    /* mm_lead_set_eligible(false) */
	struct known k[MM_LEAD_MAX_KNOWN];
	size_t n;
};

uint32_t mm_lead_expire_for(uint32_t interval_ms)
{
	uint64_t ms = (uint64_t)interval_ms * 40;
	return ms < 10000 ? 10000 : ms > 600000 ? 600000 : (uint32_t)ms;
}

int mm_lead_new(const struct mm_lead_config *cfg, uint64_t now_ms, struct mm_lead **l_r)
{
	*l_r = NULL;
	if (!cfg || !cfg->self)
		return -EINVAL;
	struct mm_lead *l = calloc(1, sizeof *l);
	if (!l)
		return -ENOMEM;
	l->cfg = *cfg;
	if (!l->cfg.expire_ms)
		l->cfg.expire_ms = MM_LEAD_EXPIRE_MS;
	l->started = now_ms;
	*l_r = l;
	return 0;
}

void mm_lead_free(struct mm_lead **lp)
{
	if (!lp || !*lp)
		return;
	free(*lp);
	*lp = NULL;
}

static bool alive(const struct mm_lead *l, const struct known *k, uint64_t now)
{
	/* a time that went backwards (the daemon's wall clock) keeps the node alive
	 * rather than dropping it early */
	return now < k->seen || now - k->seen < l->cfg.expire_ms;
}

static const struct known *lowest_alive(const struct mm_lead *l, uint64_t now)
{
	const struct known *best = NULL;
	for (size_t i = 0; i < l->n; i++)
		if (alive(l, &l->k[i], now) && (!best || l->k[i].id < best->id))
			best = &l->k[i];
	return best;
}

uint64_t mm_lead_leader(const struct mm_lead *l, uint64_t now_ms)
{
	const struct known *b = lowest_alive(l, now_ms);
	return b ? b->id : l->cfg.self;
}

void mm_lead_set_eligible(struct mm_lead *l, bool eligible)
{
	l->ineligible = !eligible;
}

void mm_lead_start(struct mm_lead *l, uint64_t now_ms)
{
	l->started = now_ms;
	l->heard = false;
}

bool mm_lead_is_self(const struct mm_lead *l, uint64_t now_ms)
{
	uint64_t up = now_ms >= l->started ? now_ms - l->started : 0;
	if (l->ineligible || up < l->cfg.grace_ms || (!l->heard && up < l->cfg.expire_ms))
		return false;
	return lowest_alive(l, now_ms) == NULL;
}

void mm_lead_view(const struct mm_lead *l, uint64_t now_ms, uint64_t *id_r, uint64_t *beat_r)
{
	const struct known *b = lowest_alive(l, now_ms);
	*id_r = b ? b->id : l->ineligible ? 0 : l->cfg.self;
	*beat_r = b ? b->beat : l->ineligible ? 0 : now_ms;
}

bool mm_lead_observe(struct mm_lead *l, uint64_t id, uint64_t beat, uint64_t now_ms)
{
	if (!id)
		return false;
	l->heard = true;
	if (id >= l->cfg.self)
		return false;
	uint64_t before = mm_lead_leader(l, now_ms);
	struct known *k = NULL;
	for (size_t i = 0; i < l->n && !k; i++)
		if (l->k[i].id == id)
			k = &l->k[i];
	if (k) {
		if (beat <= k->beat)
			return false;
	} else {
		if (l->n == MM_LEAD_MAX_KNOWN) {
			/* full: forget the highest id, if the new one is lower (the lowest
			 * nodes are the ones that decide) */
			size_t hi = 0;
			for (size_t i = 1; i < l->n; i++)
				if (l->k[i].id > l->k[hi].id)
					hi = i;
			if (l->k[hi].id < id)
				return false;
			k = &l->k[hi];
		} else {
			k = &l->k[l->n++];
		}
		k->id = id;
	}
	k->beat = beat;
	k->seen = now_ms;
	return mm_lead_leader(l, now_ms) != before;
}
