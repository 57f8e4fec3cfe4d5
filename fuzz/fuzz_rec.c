/*
 * fuzz_rec.c — libFuzzer target for the record decoder (crdt/codec.c), which reads
 * bytes from disk and, through the sync protocol, from peers.  Any input must either
 * be rejected cleanly or decode to a valid record whose encoding is exactly the
 * input (the encoding is canonical); decoding that encoding again gives an equal
 * record with the same hash, and merging it into a user must succeed.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crdt/crdt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mm_arena a;
	struct mm_rec r, r2;
	mm_arena_init(&a);
	int rc = mm_rec_decode(data, size, &r, &a);
	if (rc) {
		if (rc != -EBADMSG && rc != -ENOMEM)
			abort();
		mm_arena_free(&a);
		return 0;
	}
	if (mm_rec_validate(&r))
		abort();
	ssize_t n = mm_rec_encode(&r, NULL, 0);
	if (n < 0 || (size_t)n != size)
		abort();
	uint8_t *buf = malloc((size_t)n);
	if (!buf)
		abort();
	if (mm_rec_encode(&r, buf, (size_t)n) != n || memcmp(buf, data, size))
		abort();
	if (mm_rec_decode(buf, (size_t)n, &r2, &a) || !mm_rec_equal(&r, &r2))
		abort();
	uint8_t h1[MM_HASH_LEN], h2[MM_HASH_LEN];
	mm_rec_hash(&r, h1);
	mm_rec_hash(&r2, h2);
	if (memcmp(h1, h2, MM_HASH_LEN))
		abort();
	struct mm_user *u = mm_user_new("fuzz/user");
	if (!u || mm_user_merge(u, &r, NULL, NULL) != 1 || mm_user_merge(u, &r2, NULL, NULL) != 0)
		abort();
	mm_user_free(&u);
	free(buf);
	mm_arena_free(&a);
	return 0;
}
