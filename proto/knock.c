/*
 * knock.c — the wake-up datagram of knock.h: key derivation, sealing, checking.
 */
#include "proto/knock.h"

#include <errno.h>
#include <string.h>

#include <sodium.h>

static const uint8_t magic[8] = {'m', 'm', 'K', 'N', 'O', 'C', 'K', '1'};
static const char label[] = "mailmesh knock v1";

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

int mm_knock_key(const uint8_t priv[32], const uint8_t peer_pub[32], const uint8_t *psk, uint8_t key_r[32])
{
	uint8_t dh[32];
	int r = 0;
	if (crypto_scalarmult(dh, priv, peer_pub) != 0) {
		r = -EINVAL;
		goto out;
	}
	crypto_generichash_state st;
	crypto_generichash_init(&st, psk, psk ? 32 : 0, 32);
	crypto_generichash_update(&st, (const uint8_t *)label, sizeof label - 1);
	crypto_generichash_update(&st, dh, sizeof dh);
	crypto_generichash_final(&st, key_r, 32);
	sodium_memzero(&st, sizeof st);
out:
	sodium_memzero(dh, sizeof dh);
	return r;
}

static void knock_mac(const uint8_t key[32], const uint8_t *b, uint8_t mac_r[16])
{
	crypto_generichash(mac_r, 16, b, 24, key, 32);
}

void mm_knock_seal(const uint8_t key[32], uint64_t sender, uint64_t now_ms, uint8_t out[MM_KNOCK_LEN])
{
	put_be64(out, sender);
	memcpy(out + 8, magic, sizeof magic);
	put_be64(out + 16, now_ms);
	knock_mac(key, out, out + 24);
}

bool mm_knock_is(const uint8_t *b, size_t n, uint64_t *sender_r)
{
	if (n != MM_KNOCK_LEN || memcmp(b + 8, magic, sizeof magic) != 0)
		return false;
	*sender_r = get_be64(b);
	return true;
}

int mm_knock_open(const uint8_t key[32], const uint8_t *b, size_t n, uint64_t last_ts, uint64_t now_ms,
                  uint64_t *ts_r)
{
	uint64_t sender;
	if (!mm_knock_is(b, n, &sender))
		return -EBADMSG;
	uint8_t mac[16];
	knock_mac(key, b, mac);
	if (sodium_memcmp(mac, b + 24, sizeof mac) != 0)
		return -EBADMSG;
	uint64_t ts = get_be64(b + 16);
	if (ts <= last_ts || ts > now_ms + MM_KNOCK_SKEW_MS || ts + MM_KNOCK_SKEW_MS < now_ms)
		return -ESTALE;
	*ts_r = ts;
	return 0;
}
