/*
 * crdt_check.h — a check the CRDT tests share: a user's Merkle children of any prefix
 * (mm_user_children, cached or computed) must equal what foreach over that prefix
 * gives.  Include after <cmocka.h> and "crdt/crdt.h".
 */
#ifndef MM_TESTS_CRDT_CHECK_H
#define MM_TESTS_CRDT_CHECK_H

#include <string.h>

struct kid {
	unsigned depth;
	uint8_t h[MM_FANOUT][MM_HASH_LEN];
	uint32_t c[MM_FANOUT];
};

static int by_child(void *arg, const struct mm_rec *r)
{
	struct kid *k = arg;
	unsigned i = (r->key[k->depth / 2] >> ((k->depth & 1) ? 0 : 4)) & 0xf;
	uint8_t h[MM_HASH_LEN];
	mm_rec_hash(r, h);
	for (int j = 0; j < MM_HASH_LEN; j++)
		k->h[i][j] ^= h[j];
	k->c[i]++;
	return 0;
}

/* The 16 children of the node at `depth` nibbles of prefix p agree with foreach. */
static void check_children(const struct mm_user *u, const uint8_t *p, unsigned depth)
{
	struct kid k = { .depth = depth };
	uint8_t h[MM_FANOUT][MM_HASH_LEN];
	uint32_t c[MM_FANOUT];
	mm_user_foreach(u, p, depth, by_child, &k);
	mm_user_children(u, p, depth, h, c);
	assert_memory_equal(h, k.h, sizeof h);
	assert_memory_equal(c, k.c, sizeof c);
}

#endif
