/*
 * map.c — a small deterministic hash table for the simulator: fixed-length byte keys,
 * fixed-size values stored inline, linear probing, no removal.  Its iteration order
 * depends only on what was inserted, never on addresses, so output stays reproducible.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/sim.h"

static size_t round8(size_t x)
{
	return (x + 7) & ~(size_t)7;
}

void sim_map_init(struct sim_map *m, size_t klen, size_t vlen)
{
	memset(m, 0, sizeof(*m));
	m->klen = klen;
	m->vlen = vlen;
	m->slot = 8 + round8(klen) + round8(vlen);
}

void sim_map_free(struct sim_map *m)
{
	free(m->slots);
	m->slots = NULL;
	m->cap = m->n = 0;
}

void sim_map_clear(struct sim_map *m)
{
	if (m->slots)
		memset(m->slots, 0, m->cap * m->slot);
	m->n = 0;
}

static uint64_t hash_key(const void *key, size_t len)
{
	const uint8_t *p = key;
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return sim_mix64(h);
}

static uint8_t *slot_at(const struct sim_map *m, size_t i)
{
	return m->slots + i * m->slot;
}

static void *find(const struct sim_map *m, const void *key, bool *found_r)
{
	size_t mask = m->cap - 1;
	size_t i = hash_key(key, m->klen) & mask;
	for (;;) {
		uint8_t *s = slot_at(m, i);
		if (!s[0]) {
			*found_r = false;
			return s;
		}
		if (memcmp(s + 8, key, m->klen) == 0) {
			*found_r = true;
			return s;
		}
		i = (i + 1) & mask;
	}
}

void *sim_map_get(const struct sim_map *m, const void *key)
{
	if (!m->n)
		return NULL;
	bool found;
	uint8_t *s = find(m, key, &found);
	return found ? s + 8 + round8(m->klen) : NULL;
}

static void grow(struct sim_map *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 16;
	struct sim_map nm = *m;
	nm.cap = ncap;
	nm.n = 0;
	nm.slots = calloc(ncap, m->slot);
	if (!nm.slots) {
		fprintf(stderr, "mailmesh-sim: out of memory\n");
		abort();
	}
	for (size_t i = 0; i < m->cap; i++) {
		uint8_t *s = slot_at(m, i);
		if (!s[0])
			continue;
		bool found;
		uint8_t *d = find(&nm, s + 8, &found);
		memcpy(d, s, m->slot);
		nm.n++;
	}
	free(m->slots);
	*m = nm;
}

void *sim_map_put(struct sim_map *m, const void *key, bool *created_r)
{
	if ((m->n + 1) * 4 > m->cap * 3)
		grow(m);
	bool found;
	uint8_t *s = find(m, key, &found);
	if (!found) {
		s[0] = 1;
		memcpy(s + 8, key, m->klen);
		memset(s + 8 + round8(m->klen), 0, round8(m->vlen));
		m->n++;
	}
	if (created_r)
		*created_r = !found;
	return s + 8 + round8(m->klen);
}

const void *sim_map_next(const struct sim_map *m, size_t *pos, void **val_r)
{
	while (*pos < m->cap) {
		uint8_t *s = slot_at(m, (*pos)++);
		if (s[0]) {
			if (val_r)
				*val_r = s + 8 + round8(m->klen);
			return s + 8;
		}
	}
	return NULL;
}
