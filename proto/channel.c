/*
 * channel.c — mailmesh's channel over Noise (see channel.h) and the key helpers.
 */
#include "proto/channel.h"

#include <errno.h>
#include <string.h>

#include <sodium.h>

/* ---- keys ---------------------------------------------------------------------- */

void mm_key_generate(uint8_t priv_r[32], const uint8_t random32[32])
{
	memmove(priv_r, random32, 32);
	priv_r[0] &= 248;
	priv_r[31] &= 127;
	priv_r[31] |= 64;
}

int mm_key_public(const uint8_t priv[32], uint8_t pub_r[32])
{
	if (crypto_scalarmult_base(pub_r, priv) != 0)
		return -EINVAL;
	return 0;
}

void mm_key_to_base64(const uint8_t key[32], char out_r[MM_KEY_B64_LEN + 1])
{
	sodium_bin2base64(out_r, MM_KEY_B64_LEN + 1, key, 32, sodium_base64_VARIANT_ORIGINAL);
}

int mm_key_from_base64(const char *text, size_t len, uint8_t key_r[32])
{
	uint8_t buf[33];
	size_t n = 0;
	const char *end = NULL;
	char canon[MM_KEY_B64_LEN + 1];

	memset(key_r, 0, 32);
	if (text == NULL || len != MM_KEY_B64_LEN)
		return -EINVAL;
	if (sodium_base642bin(buf, sizeof buf, text, len, NULL, &n, &end,
	                      sodium_base64_VARIANT_ORIGINAL) != 0 ||
	    n != 32 || end != text + len)
		goto bad;
	/* Canonical form only: the unused low bits of the last character must be zero, so
	 * one key has exactly one text (duplicate-key detection compares texts too). */
	mm_key_to_base64(buf, canon);
	if (memcmp(canon, text, MM_KEY_B64_LEN) != 0)
		goto bad;
	memcpy(key_r, buf, 32);
	sodium_memzero(buf, sizeof buf);
	return 0;
bad:
	sodium_memzero(buf, sizeof buf);
	return -EINVAL;
}

uint64_t mm_node_id(const uint8_t pub[32])
{
	uint8_t h[32];
	uint64_t id = 0;

	crypto_generichash(h, sizeof h, pub, 32, NULL, 0);
	for (int i = 0; i < 8; i++)
		id = (id << 8) | h[i];
	return id;
}
