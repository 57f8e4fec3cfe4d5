/*
 * tool_bench_crypto.c — benchmark item 1 (issue 6): the cryptography an initial sync
 * cannot avoid, timed on this machine with the real code.
 *
 * A joining node receives every byte of the sender's mail through the Noise transport
 * (proto/noise.c's ChaCha20-Poly1305 cipher, in BODY messages of MM_SYNC_CHUNK bytes)
 * and checks each body against its id (BLAKE2b-256, as proto/sync.c does while a body
 * streams).  This tool times those three steps over BYTES of random data cut into
 * BODIES bodies of equal size: seal (the sender's encryption), open (the receiver's
 * decryption and authentication) and the id check.  Each step runs REPEAT times and the
 * fastest is printed, since on a shared machine the fastest is the one least disturbed.
 * Together with `cp -a`'s CPU they are a floor under the CPU time of a join: bench.py
 * prints it beside doveadm sync's time.
 *
 * Usage: bench_crypto BYTES BODIES [REPEAT]   (REPEAT defaults to 3)
 * Output: CRYPTO bytes=N bodies=M chunk=C seal_ms=X open_ms=Y blake2b_ms=Z
 * Exit status 0, 1 if a step failed (a decryption that does not authenticate), 2 on a
 * usage error or when memory is short.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "crdt/crdt.h"
#include "proto/noise.h"
#include "proto/sync.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Seals (or opens) buf's bodies chunk by chunk into out, as the channel does; each body
 * starts a new chunk.  0, or the first error. */
static int run_cipher(bool seal, const uint8_t *key, const uint8_t *in, size_t n, size_t bodies,
                      uint8_t *out)
{
	struct mm_noise_cipher c;
	mm_noise_cipher_init(&c, key);
	size_t body = n / bodies, step = seal ? MM_SYNC_CHUNK : MM_SYNC_CHUNK + MM_NOISE_TAGLEN;
	size_t sealed_body = body + ((body + MM_SYNC_CHUNK - 1) / MM_SYNC_CHUNK) * MM_NOISE_TAGLEN;
	size_t in_body = seal ? body : sealed_body, out_body = seal ? sealed_body : body;
	for (size_t b = 0; b < bodies; b++) {
		const uint8_t *p = in + b * in_body;
		uint8_t *o = out + b * out_body;
		for (size_t off = 0; off < in_body;) {
			size_t len = in_body - off < step ? in_body - off : step, got = 0;
			int r = seal ? mm_noise_cipher_encrypt(&c, NULL, 0, p + off, len, o, MM_NOISE_MAX_MSG, &got)
			             : mm_noise_cipher_decrypt(&c, NULL, 0, p + off, len, o, MM_NOISE_MAX_MSG, &got);
			if (r < 0)
				return r;
			off += len;
			o += got;
		}
	}
	return 0;
}

static void run_hash(const uint8_t *buf, size_t n, size_t bodies, uint8_t *ids)
{
	size_t body = n / bodies;
	for (size_t b = 0; b < bodies; b++) {
		crypto_generichash_state h;
		crypto_generichash_init(&h, NULL, 0, MM_ID_LEN);
		const uint8_t *p = buf + b * body;
		for (size_t off = 0; off < body; off += MM_SYNC_CHUNK)
			crypto_generichash_update(&h, p + off, body - off < MM_SYNC_CHUNK ? body - off : MM_SYNC_CHUNK);
		crypto_generichash_final(&h, ids + b * MM_ID_LEN, MM_ID_LEN);
	}
}

int main(int argc, char **argv)
{
	char *end1 = NULL, *end2 = NULL, *end3 = NULL;
	unsigned long long bytes = argc >= 3 ? strtoull(argv[1], &end1, 10) : 0;
	unsigned long long bodies = argc >= 3 ? strtoull(argv[2], &end2, 10) : 0;
	unsigned long long repeat = argc >= 4 ? strtoull(argv[3], &end3, 10) : 3;
	if (argc < 3 || argc > 4 || *end1 || *end2 || (argc == 4 && *end3) || !bodies || bytes < bodies ||
	    bytes > (1ULL << 34) || !repeat || repeat > 100) {
		fprintf(stderr, "usage: bench_crypto BYTES BODIES [REPEAT]  (BODIES <= BYTES <= 16 GiB)\n");
		return 2;
	}
	if (sodium_init() < 0) {
		fprintf(stderr, "bench_crypto: libsodium cannot start\n");
		return 2;
	}
	uint8_t key[MM_NOISE_KEYLEN];
	size_t body = (size_t)(bytes / bodies), n = body * (size_t)bodies;
	size_t sealed = n + (size_t)bodies * ((body + MM_SYNC_CHUNK - 1) / MM_SYNC_CHUNK) * MM_NOISE_TAGLEN;
	uint8_t *plain = malloc(n), *wire = malloc(sealed), *back = malloc(n), *ids = malloc(bodies * MM_ID_LEN);
	int rc = 2;
	if (!plain || !wire || !back || !ids) {
		fprintf(stderr, "bench_crypto: out of memory for %zu bytes\n", n);
		goto out;
	}
	randombytes_buf(key, sizeof key);
	randombytes_buf(plain, n);
	double best[3] = {1e30, 1e30, 1e30};
	rc = 1;
	for (unsigned long long i = 0; i < repeat; i++) {
		double t0 = now_ms();
		if (run_cipher(true, key, plain, n, (size_t)bodies, wire) < 0)
			goto out;
		double t1 = now_ms();
		if (run_cipher(false, key, wire, n, (size_t)bodies, back) < 0 || memcmp(back, plain, n) != 0) {
			fprintf(stderr, "bench_crypto: a sealed chunk did not open to its plaintext\n");
			goto out;
		}
		double t2 = now_ms();
		run_hash(back, n, (size_t)bodies, ids);
		double t3 = now_ms();
		best[0] = t1 - t0 < best[0] ? t1 - t0 : best[0];
		best[1] = t2 - t1 < best[1] ? t2 - t1 : best[1];
		best[2] = t3 - t2 < best[2] ? t3 - t2 : best[2];
	}
	printf("CRYPTO bytes=%zu bodies=%llu chunk=%u seal_ms=%.1f open_ms=%.1f blake2b_ms=%.1f\n", n, bodies,
	       (unsigned)MM_SYNC_CHUNK, best[0], best[1], best[2]);
	rc = 0;
out:
	sodium_memzero(key, sizeof key);
	free(plain);
	free(wire);
	free(back);
	free(ids);
	return rc;
}
