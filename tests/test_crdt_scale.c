/*
 * test_crdt_scale.c — one user with a million messages: delivers, flag changes and
 * expunges at that size, the incremental Merkle root against a full recomputation,
 * tree queries against foreach, and the memory used per message (printed, not
 * asserted: it depends on the allocator).  MM_SCALE_N changes the size (default
 * 1,000,000; 200,000 under AddressSanitizer to stay fast).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt/crdt.h"
#include "tests/crdt_check.h"

#if defined(__SANITIZE_ADDRESS__)
#define DEFAULT_N 200000
#else
#define DEFAULT_N 1000000
#endif

static uint64_t rng = 12345;
static uint64_t rnd(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int xor_leaf(void *arg, const struct mm_rec *r)
{
	uint8_t *acc = arg, h[MM_HASH_LEN];
	mm_rec_hash(r, h);
	for (int i = 0; i < MM_HASH_LEN; i++)
		acc[i] ^= h[i];
	return 0;
}

static void test_million(void **state)
{
	(void)state;
	const char *e = getenv("MM_SCALE_N");
	size_t n = e ? strtoul(e, NULL, 0) : DEFAULT_N;
	static const char *folders[] = { "INBOX", "Sent", "Archive.2023", "Archive.2024", "Lists.dev" };
	static const char *kws[] = { "$Junk", "$NotJunk", "work" };
	uint8_t (*keys)[MM_KEY_LEN] = malloc(n * MM_KEY_LEN);
	assert_non_null(keys);
	struct mallinfo2 m0 = mallinfo2();
	struct mm_user *u = mm_user_new("example.org/big");
	uint64_t t = (uint64_t)1700000000000 << MM_HLC_LOGICAL_BITS;
	for (size_t i = 0; i < n; i++) {
		uint8_t body[MM_ID_LEN];
		uint64_t x = rnd();
		memcpy(body, &x, 8);
		memset(body + 8, (int)i, MM_ID_LEN - 8);
		unsigned flags = (x & 3) ? (1u << MM_FLAG_SEEN) : 0;
		const char *kw = kws[(x >> 8) % 3];
		size_t nkw = ((x >> 16) % 20) == 0; /* 5% with a keyword */
		assert_int_equal(mm_user_deliver(u, folders[(x >> 24) % 5], body, 1000 + (x >> 32) % 100000,
		                                 1600000000 + (int64_t)(i / 10), flags, &kw, nkw, (uint32_t)(i + 1),
		                                 (mm_hlc){ t += 17, 1 + (x >> 40) % 3 }, keys[i], NULL, NULL, NULL),
		                 1);
	}
	struct mallinfo2 m1 = mallinfo2();
	size_t heap = m1.uordblks - m0.uordblks + (m1.hblkhd - m0.hblkhd);
	printf("test_crdt_scale: %zu messages: %.1f bytes/message by mm_user_mem, %.1f by malloc statistics\n", n,
	       (double)mm_user_mem(u) / (double)n, (double)heap / (double)n);
	assert_int_equal(mm_user_count(u), n + 5);
	/* later changes: 10% get a flag, 2% expunged */
	for (size_t i = 0; i < n / 10; i++)
		assert_true(mm_user_set_flag(u, keys[rnd() % n], MM_FLAG_FLAGGED, true, (mm_hlc){ t += 17, 2 }, NULL, NULL, NULL) >= 0);
	for (size_t i = 0; i < n / 50; i++)
		assert_true(mm_user_expunge(u, keys[rnd() % n], (mm_hlc){ t += 17, 2 }, NULL, NULL, NULL) >= 0);
	struct mallinfo2 m2 = mallinfo2();
	heap = m2.uordblks - m0.uordblks + (m2.hblkhd - m0.hblkhd);
	printf("test_crdt_scale: after %zu flag changes and %zu expunges: %.1f bytes/record (mm_user_mem), %.1f (malloc)\n",
	       n / 10, n / 50, (double)mm_user_mem(u) / (double)mm_user_count(u), (double)heap / (double)mm_user_count(u));
	/* incremental root == recomputed */
	uint8_t acc[MM_HASH_LEN] = { 0 }, root[MM_HASH_LEN];
	mm_user_foreach(u, NULL, 0, xor_leaf, acc);
	mm_user_root(u, root);
	assert_memory_equal(acc, root, MM_HASH_LEN);
	/* tree queries at every depth along a few keys agree with foreach */
	for (int j = 0; j < 3; j++) {
		const uint8_t *p = keys[rnd() % n];
		for (unsigned d = 1; d < 8; d++)
			check_children(u, p, d);
	}
	mm_user_free(&u);
	free(keys);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_million),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
