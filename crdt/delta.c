/*
 * delta.c — a batch of records to ship to peers: what local changes produced (delta
 * state), or any set of records a sync session wants to send.  Each entry is a deep
 * copy in one allocation, so the batch owns everything it hands out; a later record
 * for the same (user, key) replaces the earlier one in place (an open-addressing
 * index finds it).
 */
#include "crdt/crdt.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct dent {
	char *user;         /* inside blk */
	struct mm_rec *rec; /* inside blk */
	void *blk;
	uint32_t hash;
	bool fresh;         /* a new message: pushes carry its body */
};

struct mm_delta {
	struct dent *e;
	size_t n, cap;
	uint32_t *tab; /* entry index + 1, 0 = empty */
	size_t tcap;   /* power of two */
};

struct mm_delta *mm_delta_new(void)
{
	return calloc(1, sizeof(struct mm_delta));
}

void mm_delta_clear(struct mm_delta *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++)
		free(d->e[i].blk);
	d->n = 0;
	if (d->tab)
		memset(d->tab, 0, d->tcap * sizeof *d->tab);
}

void mm_delta_free(struct mm_delta **dp)
{
	struct mm_delta *d = dp ? *dp : NULL;
	if (!d)
		return;
	mm_delta_clear(d);
	free(d->e);
	free(d->tab);
	free(d);
	*dp = NULL;
}

size_t mm_delta_count(const struct mm_delta *d)
{
	return d ? d->n : 0;
}

const struct mm_rec *mm_delta_get(const struct mm_delta *d, size_t i, const char **user_r)
{
	if (!d || i >= d->n)
		return NULL;
	if (user_r)
		*user_r = d->e[i].user;
	return d->e[i].rec;
}

bool mm_delta_fresh(const struct mm_delta *d, size_t i)
{
	return d && i < d->n && d->e[i].fresh;
}

static uint32_t ent_hash(const char *user, const uint8_t *key)
{
	uint32_t h = 2166136261u;
	for (const char *p = user; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	for (int i = 0; i < MM_KEY_LEN; i++)
		h = (h ^ key[i]) * 16777619u;
	return h;
}

/* One block: the record, the user name, the record's strings and keyword array. */
static void *clone(const char *user, const struct mm_rec *r, char **user_r, struct mm_rec **rec_r)
{
	size_t ulen = strlen(user) + 1, n = sizeof(struct mm_rec) + ulen;
	const char *str = r->type == MM_REC_MESSAGE ? r->msg.folder : r->type == MM_REC_FOLDER ? r->folder.name : NULL;
	size_t nk = r->type == MM_REC_MESSAGE ? r->msg.n_keywords : 0;
	if (str)
		n += strlen(str) + 1;
	n += nk * sizeof(struct mm_kwreg);
	for (size_t i = 0; i < nk; i++)
		n += strlen(r->msg.keywords[i].name) + 1;
	uint8_t *blk = malloc(n);
	if (!blk)
		return NULL;
	struct mm_rec *c = (struct mm_rec *)blk;
	*c = *r;
	struct mm_kwreg *kw = (struct mm_kwreg *)(blk + sizeof *c);
	char *p = (char *)(kw + nk);
	memcpy(p, user, ulen);
	*user_r = p;
	p += ulen;
	if (str) {
		size_t l = strlen(str) + 1;
		memcpy(p, str, l);
		if (r->type == MM_REC_MESSAGE)
			c->msg.folder = p;
		else
			c->folder.name = p;
		p += l;
	}
	for (size_t i = 0; i < nk; i++) {
		size_t l = strlen(r->msg.keywords[i].name) + 1;
		memcpy(p, r->msg.keywords[i].name, l);
		kw[i] = (struct mm_kwreg){ p, r->msg.keywords[i].reg };
		p += l;
	}
	if (r->type == MM_REC_MESSAGE)
		c->msg.keywords = nk ? kw : NULL;
	*rec_r = c;
	return blk;
}

static int reindex(struct mm_delta *d, size_t tcap)
{
	uint32_t *tab = calloc(tcap, sizeof *tab);
	if (!tab)
		return -ENOMEM;
	for (size_t i = 0; i < d->n; i++) {
		size_t j = d->e[i].hash & (tcap - 1);
		while (tab[j])
			j = (j + 1) & (tcap - 1);
		tab[j] = (uint32_t)i + 1;
	}
	free(d->tab);
	d->tab = tab;
	d->tcap = tcap;
	return 0;
}

int mm_delta_add(struct mm_delta *d, const char *user, const struct mm_rec *r)
{
	if (!d || !user || !r)
		return -EINVAL;
	if (r->type == MM_REC_MESSAGE && (!r->msg.folder || (r->msg.n_keywords && !r->msg.keywords)))
		return -EINVAL;
	if (r->type == MM_REC_FOLDER && !r->folder.name)
		return -EINVAL;
	if (d->n >= UINT32_MAX - 1)
		return -ENOMEM;
	if ((d->n + 1) * 2 > d->tcap && reindex(d, d->tcap ? d->tcap * 2 : 64))
		return -ENOMEM;
	uint32_t h = ent_hash(user, r->key);
	size_t j = h & (d->tcap - 1);
	for (; d->tab[j]; j = (j + 1) & (d->tcap - 1)) {
		struct dent *e = &d->e[d->tab[j] - 1];
		if (e->hash == h && !memcmp(e->rec->key, r->key, MM_KEY_LEN) && !strcmp(e->user, user)) {
			char *nu;
			struct mm_rec *nr;
			void *blk = clone(user, r, &nu, &nr);
			if (!blk)
				return -ENOMEM;
			free(e->blk);
			e->blk = blk;
			e->user = nu;
			e->rec = nr;
			return 0;
		}
	}
	if (d->n == d->cap) {
		size_t nc = d->cap ? d->cap * 2 : 16;
		struct dent *p = realloc(d->e, nc * sizeof *p);
		if (!p)
			return -ENOMEM;
		d->e = p;
		d->cap = nc;
	}
	struct dent *e = &d->e[d->n];
	e->blk = clone(user, r, &e->user, &e->rec);
	if (!e->blk)
		return -ENOMEM;
	e->hash = h;
	e->fresh = false;
	d->tab[j] = (uint32_t)d->n + 1;
	d->n++;
	return 0;
}

int mm_delta_set_fresh(struct mm_delta *d, const char *user, const uint8_t key[MM_KEY_LEN])
{
	if (!d || !user || !key)
		return -EINVAL;
	if (!d->tcap)
		return -ENOENT;
	uint32_t h = ent_hash(user, key);
	for (size_t j = h & (d->tcap - 1); d->tab[j]; j = (j + 1) & (d->tcap - 1)) {
		struct dent *e = &d->e[d->tab[j] - 1];
		if (e->hash == h && !memcmp(e->rec->key, key, MM_KEY_LEN) && !strcmp(e->user, user)) {
			e->fresh = true;
			return 0;
		}
	}
	return -ENOENT;
}

int mm_delta_apply(const struct mm_delta *d, struct mm_state *s, mm_effect_fn *eff, void *arg)
{
	int changed = 0;
	if (!d || !s)
		return -EINVAL;
	for (size_t i = 0; i < d->n; i++) {
		int rc = mm_state_merge(s, d->e[i].user, d->e[i].rec, eff, arg);
		if (rc < 0)
			return rc;
		changed += rc;
	}
	return changed;
}
