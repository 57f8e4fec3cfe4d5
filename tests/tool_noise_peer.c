/*
 * tool_noise_peer.c — build/tests/noise_peer: one side of a Noise handshake driven over
 * stdin/stdout, for the interop test against another implementation
 * (tests/it_noise_interop.py with dissononce).
 *
 * usage: noise_peer initiator|responder PROTOCOL S_PRIV E_PRIV [RS_PUB|-] [PSK|-]
 *   (keys in hex; E_PRIV is the ephemeral private key: the caller's randomness).
 * Frames both ways: 2-byte big-endian length + Noise message.  Handshake: writes the
 * payload "from C" in each of its messages and prints "hs-payload HEX" on stderr for
 * each payload it reads; after Split() prints "hash HEX" on stderr.  Transport: reads
 * a message, answers "echo:" + its plaintext, until end of input.
 * Exit 0 at a clean end of input; 1 on any failure (the reason on stderr).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "proto/noise.h"

static uint8_t msg[MM_NOISE_MAX_MSG], pt[MM_NOISE_MAX_MSG];

static int hex32(const char *h, uint8_t out[32])
{
	if (strlen(h) != 64)
		return -1;
	return sodium_hex2bin(out, 32, h, 64, NULL, NULL, NULL) == 0 ? 0 : -1;
}

static void put_hex(const char *tag, const uint8_t *b, size_t n)
{
	fprintf(stderr, "%s ", tag);
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, "%02x", b[i]);
	fprintf(stderr, "\n");
}

/* 1 read, 0 clean EOF before any byte, -1 error */
static int read_frame(uint8_t *buf, size_t *len_r)
{
	uint8_t h[2];
	size_t got = fread(h, 1, 2, stdin);
	if (got == 0 && feof(stdin))
		return 0;
	if (got != 2)
		return -1;
	size_t n = ((size_t)h[0] << 8) | h[1];
	if (fread(buf, 1, n, stdin) != n)
		return -1;
	*len_r = n;
	return 1;
}

static int write_frame(const uint8_t *buf, size_t n)
{
	uint8_t h[2] = { (uint8_t)(n >> 8), (uint8_t)n };
	if (fwrite(h, 1, 2, stdout) != 2 || fwrite(buf, 1, n, stdout) != n || fflush(stdout) != 0)
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	uint8_t s[32], e[32], rs[32], psk[1][32];
	struct mm_noise_hs hs;
	struct mm_noise_cipher c1, c2, *tx, *rx;
	uint8_t h[MM_NOISE_HASHLEN];
	size_t n, m;
	int rc, status = 1;

	if (argc < 5 || sodium_init() < 0) {
		fprintf(stderr, "usage: noise_peer initiator|responder PROTOCOL S_PRIV E_PRIV [RS_PUB|-] [PSK|-]\n");
		return 2;
	}
	int initiator = !strcmp(argv[1], "initiator");
	int has_rs = argc > 5 && strcmp(argv[5], "-") != 0;
	int has_psk = argc > 6 && strcmp(argv[6], "-") != 0;
	if (hex32(argv[3], s) || hex32(argv[4], e) || (has_rs && hex32(argv[5], rs)) ||
	    (has_psk && hex32(argv[6], psk[0]))) {
		fprintf(stderr, "bad key\n");
		return 2;
	}
	struct mm_noise_config cfg = {
		.protocol = argv[2], .initiator = initiator, .s = s, .e = e,
		.rs = has_rs ? rs : NULL, .psks = has_psk ? (const uint8_t(*)[32])psk : NULL,
		.n_psks = has_psk ? 1 : 0,
	};
	if ((rc = mm_noise_hs_init(&hs, &cfg)) < 0) {
		fprintf(stderr, "init: %s\n", strerror(-rc));
		goto out;
	}
	while (mm_noise_hs_state(&hs) != MM_NOISE_HS_SPLIT) {
		if (mm_noise_hs_state(&hs) == MM_NOISE_HS_WRITE) {
			if ((rc = mm_noise_hs_write(&hs, (const uint8_t *)"from C", 6, msg, sizeof msg, &n)) < 0) {
				fprintf(stderr, "write: %s\n", strerror(-rc));
				goto out;
			}
			if (write_frame(msg, n) < 0)
				goto out;
		} else {
			if (read_frame(msg, &n) != 1) {
				fprintf(stderr, "short handshake input\n");
				goto out;
			}
			if ((rc = mm_noise_hs_read(&hs, msg, n, pt, sizeof pt, &m)) < 0) {
				fprintf(stderr, "read: %s\n", strerror(-rc));
				goto out;
			}
			put_hex("hs-payload", pt, m);
		}
	}
	mm_noise_hs_split(&hs, &c1, &c2, h);
	put_hex("hash", h, sizeof h);
	tx = initiator ? &c1 : &c2;
	rx = initiator ? &c2 : &c1;
	for (;;) {
		rc = read_frame(msg, &n);
		if (rc == 0)
			break;
		if (rc < 0) {
			fprintf(stderr, "short transport input\n");
			goto out;
		}
		memcpy(pt, "echo:", 5);
		if ((rc = mm_noise_cipher_decrypt(rx, NULL, 0, msg, n, pt + 5, sizeof pt - 5, &m)) < 0) {
			fprintf(stderr, "decrypt: %s\n", strerror(-rc));
			goto out;
		}
		if ((rc = mm_noise_cipher_encrypt(tx, NULL, 0, pt, m + 5, msg, sizeof msg, &n)) < 0) {
			fprintf(stderr, "encrypt: %s\n", strerror(-rc));
			goto out;
		}
		if (write_frame(msg, n) < 0)
			goto out;
	}
	status = 0;
out:
	mm_noise_hs_wipe(&hs);
	mm_noise_cipher_wipe(&c1);
	mm_noise_cipher_wipe(&c2);
	sodium_memzero(s, sizeof s);
	sodium_memzero(e, sizeof e);
	sodium_memzero(psk, sizeof psk);
	return status;
}
