/*
 * state.c — all users of a node: a map from user name to user state, summarised by
 * a Merkle tree over users (leaf = BLAKE2b-256(name || user root), placed at
 * BLAKE2b-128(name)) the same way a user summarises its records.
 *
 * Users change behind the state's back (callers merge into the mm_user directly), so
 * each user's leaf is cached with the user's change counter and recomputed lazily
 * when the counter moved.  Users are kept sorted by position; tree queries walk the
 * matching range (node counts are small: one entry per user).
 */
#include "crdt/crdt.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>


struct uent {
	uint8_t pos[MM_KEY_LEN];
	struct mm_user *u;
	uint8_t leaf[MM_HASH_LEN];
	uint64_t leaf_ver; /* user version + 1 the leaf was computed at; 0 = never */
};

struct mm_state {
	struct uent *e;
	size_t n, cap;
};

struct mm_state *mm_state_new(void)
{
	return calloc(1, sizeof(struct mm_state));
}

void mm_state_free(struct mm_state **sp)
{
	struct mm_state *s = sp ? *sp : NULL;
	if (!s)
		return;
	for (size_t i = 0; i < s->n; i++)
		mm_user_free(&s->e[i].u);
	free(s->e);
	free(s);
	*sp = NULL;
}

/* Order: position, then name (two names with one position only by collision). */
static int ent_cmp(const uint8_t *pos, const char *name, const struct uent *e)
{
	int c = memcmp(pos, e->pos, MM_KEY_LEN);
	return c ? c : strcmp(name, mm_user_name(e->u));
}

static size_t lower(const struct mm_state *s, const uint8_t *pos, const char *name)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ent_cmp(pos, name, &s->e[mid]) > 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct mm_user *mm_state_user(struct mm_state *s, const char *name, bool create)
{
	uint8_t pos[MM_KEY_LEN];
	if (!s || !name)
		return NULL;
	mm_user_position(name, pos);
	size_t i = lower(s, pos, name);
	if (i < s->n && ent_cmp(pos, name, &s->e[i]) == 0)
		return s->e[i].u;
	if (!create)
		return NULL;
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 8;
		struct uent *p = realloc(s->e, nc * sizeof *p);
		if (!p)
			return NULL;
		s->e = p;
		s->cap = nc;
	}
	struct mm_user *u = mm_user_new(name);
	if (!u)
		return NULL;
	memmove(&s->e[i + 1], &s->e[i], (s->n - i) * sizeof *s->e);
	memset(&s->e[i], 0, sizeof s->e[i]);
	memcpy(s->e[i].pos, pos, MM_KEY_LEN);
	s->e[i].u = u;
	s->n++;
	return u;
}

size_t mm_state_user_count(const struct mm_state *s)
{
	return s ? s->n : 0;
}

static bool pos_match(const uint8_t *pos, const uint8_t *prefix, unsigned depth)
{
	if (depth > MM_MAX_DEPTH)
		depth = MM_MAX_DEPTH;
	if (!depth)
		return true;
	if (!prefix)
		return false;
	if (memcmp(pos, prefix, depth / 2))
		return false;
	return !(depth & 1) || (pos[depth / 2] & 0xf0) == (prefix[depth / 2] & 0xf0);
}

int mm_state_foreach(const struct mm_state *s, const uint8_t *prefix, unsigned depth,
                     int (*cb)(void *arg, struct mm_user *u), void *arg)
{
	for (size_t i = 0; i < s->n; i++) {
		if (!pos_match(s->e[i].pos, prefix, depth))
			continue;
		int rc = cb(arg, s->e[i].u);
		if (rc)
			return rc;
	}
	return 0;
}

/* The user's leaf, recomputed if the user changed since it was cached. */
static const uint8_t *leaf(struct uent *e)
{
	uint64_t v = mm_user_version(e->u) + 1;
	if (e->leaf_ver != v) {
		uint8_t root[MM_HASH_LEN];
		const char *name = mm_user_name(e->u);
		crypto_generichash_state st;
		mm_user_root(e->u, root);
		crypto_generichash_init(&st, NULL, 0, MM_HASH_LEN);
		crypto_generichash_update(&st, (const uint8_t *)name, strlen(name));
		crypto_generichash_update(&st, root, MM_HASH_LEN);
		crypto_generichash_final(&st, e->leaf, MM_HASH_LEN);
		e->leaf_ver = v;
	}
	return e->leaf;
}

static void xor_into(uint8_t *a, const uint8_t *b)
{
	for (int i = 0; i < MM_HASH_LEN; i++)
		a[i] ^= b[i];
}

static unsigned nib(const uint8_t *pos, unsigned i)
{
	return (pos[i / 2] >> ((i & 1) ? 0 : 4)) & 0xf;
}

void mm_state_node(const struct mm_state *s, const uint8_t *prefix, unsigned depth,
                   uint8_t hash_r[MM_HASH_LEN], uint32_t *count_r)
{
	uint8_t h[MM_HASH_LEN] = { 0 };
	uint32_t c = 0;
	for (size_t i = 0; i < s->n; i++) {
		/* A user without records is absent from the tree: it has nothing a peer
		 * could send, so counting it would keep two equal states' roots apart. */
		if (!pos_match(s->e[i].pos, prefix, depth) || mm_user_count(s->e[i].u) == 0)
			continue;
		xor_into(h, leaf(&s->e[i]));
		c++;
	}
	if (hash_r)
		memcpy(hash_r, h, MM_HASH_LEN);
	if (count_r)
		*count_r = c;
}

void mm_state_root(const struct mm_state *s, uint8_t root_r[MM_HASH_LEN])
{
	mm_state_node(s, NULL, 0, root_r, NULL);
}

void mm_state_children(const struct mm_state *s, const uint8_t *prefix, unsigned depth,
                       uint8_t hashes_r[MM_FANOUT][MM_HASH_LEN], uint32_t counts_r[MM_FANOUT])
{
	uint8_t h[MM_FANOUT][MM_HASH_LEN];
	uint32_t c[MM_FANOUT];
	memset(h, 0, sizeof h);
	memset(c, 0, sizeof c);
	for (size_t i = 0; depth < MM_MAX_DEPTH && i < s->n; i++) {
		if (!pos_match(s->e[i].pos, prefix, depth) || mm_user_count(s->e[i].u) == 0)
			continue;
		unsigned k = nib(s->e[i].pos, depth);
		xor_into(h[k], leaf(&s->e[i]));
		c[k]++;
	}
	if (hashes_r)
		memcpy(hashes_r, h, sizeof h);
	if (counts_r)
		memcpy(counts_r, c, sizeof c);
}

int mm_state_merge(struct mm_state *s, const char *user, const struct mm_rec *r,
                   mm_effect_fn *eff, void *arg)
{
	if (!s || !user || !*user || mm_rec_validate(r))
		return -EINVAL;
	return mm_state_merge_valid(s, user, r, eff, arg);
}

int mm_state_merge_valid(struct mm_state *s, const char *user, const struct mm_rec *r,
                         mm_effect_fn *eff, void *arg)
{
	if (!s || !user || !*user || !r)
		return -EINVAL;
	struct mm_user *u = mm_state_user(s, user, true);
	if (!u)
		return -ENOMEM;
	return mm_user_merge_valid(u, r, eff, arg);
}
