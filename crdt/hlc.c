/*
 * hlc.c — hybrid logical clock, the LWW register join, and the derived identifiers
 * (record keys, body ids, folder UIDVALIDITY).  Everything here is a pure function of
 * its inputs: time comes in from the caller, hashes are BLAKE2b from libsodium.
 */
#include "crdt/crdt.h"

#include <errno.h>
#include <string.h>
#include <sodium.h>

const char mm_flag_letters[MM_FLAG_COUNT + 1] = "DFPRST";

int mm_hlc_cmp(mm_hlc a, mm_hlc b)
{
	if (a.t != b.t)
		return a.t < b.t ? -1 : 1;
	if (a.node != b.node)
		return a.node < b.node ? -1 : 1;
	return 0;
}

void mm_clock_init(struct mm_clock *c, uint64_t node, uint64_t last)
{
	c->node = node;
	c->last = last;
}

mm_hlc mm_clock_tick(struct mm_clock *c, uint64_t wall_ms)
{
	/* Physical part from the wall clock when it is ahead; otherwise count up from
	 * the last stamp (a carry out of the logical bits just borrows the next ms,
	 * which keeps the order total and strictly increasing). */
	uint64_t pt = wall_ms << MM_HLC_LOGICAL_BITS;
	if (pt > c->last)
		c->last = pt;
	else
		c->last++;
	return (mm_hlc){ .t = c->last, .node = c->node };
}

int mm_clock_observe(struct mm_clock *c, mm_hlc remote, uint64_t wall_ms, uint64_t max_skew_ms)
{
	uint64_t rms = MM_HLC_MS(remote);
	if (rms > wall_ms && rms - wall_ms > max_skew_ms)
		return -ERANGE;
	if (remote.t > c->last)
		c->last = remote.t;
	return 0;
}

struct mm_reg mm_reg_join(struct mm_reg a, struct mm_reg b)
{
	int c = mm_hlc_cmp(a.stamp, b.stamp);
	if (c > 0)
		return a;
	if (c < 0)
		return b;
	/* Same stamp, different value: only a bug or a forged record can do this, but
	 * the join must still be deterministic so replicas converge. */
	return a.value >= b.value ? a : b;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

void mm_key_message(const mm_hlc *created, uint8_t key_r[MM_KEY_LEN])
{
	uint8_t in[3 + 16];
	memcpy(in, "msg", 3);
	put_be64(in + 3, created->t);
	put_be64(in + 11, created->node);
	crypto_generichash(key_r, MM_KEY_LEN, in, sizeof in, NULL, 0);
}

void mm_key_folder(const char *name, uint8_t key_r[MM_KEY_LEN])
{
	crypto_generichash_state st;
	crypto_generichash_init(&st, NULL, 0, MM_KEY_LEN);
	crypto_generichash_update(&st, (const uint8_t *)"folder", 6);
	crypto_generichash_update(&st, (const uint8_t *)name, strlen(name));
	crypto_generichash_final(&st, key_r, MM_KEY_LEN);
}

void mm_key_horizon(uint8_t key_r[MM_KEY_LEN])
{
	crypto_generichash(key_r, MM_KEY_LEN, (const uint8_t *)"horizon", 7, NULL, 0);
}

void mm_body_id(const void *bytes, size_t len, uint8_t id_r[MM_ID_LEN])
{
	crypto_generichash(id_r, MM_ID_LEN, bytes, len, NULL, 0);
}

void mm_user_position(const char *name, uint8_t pos_r[MM_KEY_LEN])
{
	crypto_generichash(pos_r, MM_KEY_LEN, (const uint8_t *)name, strlen(name), NULL, 0);
}

uint32_t mm_folder_uidvalidity(mm_hlc exists_stamp)
{
	/* Seconds of the creation's wall time, so a folder re-created later usually
	 * gets a larger value (what IMAP clients expect), with the low 8 bits mixed
	 * with a hash of the whole stamp (node and logical counter): two nodes that
	 * create the same folder in the same second get different values (unless the
	 * 8-bit hashes collide, 1 in 256), and the loser of the LWW race sees its
	 * clients resynchronise rather than silently mixing UIDs. */
	uint8_t in[16], h[8];
	put_be64(in, exists_stamp.t);
	put_be64(in + 8, exists_stamp.node);
	crypto_generichash(h, sizeof h, in, sizeof in, NULL, 0);
	uint32_t secs = (uint32_t)(MM_HLC_MS(exists_stamp) / 1000);
	uint32_t v = secs ^ h[0];
	return v ? v : 1;
}
