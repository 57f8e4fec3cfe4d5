/*
 * link.c — the decisions around a channel that node/peer.c and sim/chan.c share (see
 * link.h): who dials, the datagram's node-id header, reassembly of stream messages,
 * and when an incoming connection counts as confirmed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "proto/link.h"
#include "proto/wire.h"

bool mm_link_dials(const uint8_t local_pub[32], const uint8_t remote_pub[32])
{
	return memcmp(local_pub, remote_pub, 32) < 0;
}

/* ---- datagrams ------------------------------------------------------------------------ */

int mm_link_dgram_seal(struct mm_ch *ch, uint64_t self_id, const uint8_t *msg, size_t len,
                       uint8_t *out, size_t cap, size_t *outlen_r)
{
	if (!ch || !out || !outlen_r || (!msg && len))
		return -EINVAL;
	if (len > MM_CH_DGRAM_MAX_PLAIN || cap < MM_CH_DGRAM_PREFIX + len + MM_CH_DGRAM_OVERHEAD)
		return -EMSGSIZE;
	size_t n = 0;
	int rc = mm_ch_dgram_seal(ch, msg, len, out + MM_CH_DGRAM_PREFIX, cap - MM_CH_DGRAM_PREFIX, &n);
	if (rc < 0)
		return rc;
	for (int i = 0; i < MM_CH_DGRAM_PREFIX; i++)
		out[i] = (uint8_t)(self_id >> (56 - 8 * i));
	*outlen_r = MM_CH_DGRAM_PREFIX + n;
	return 0;
}

int mm_link_dgram_sender(const uint8_t *pkt, size_t len, uint64_t *id_r)
{
	if (!pkt || len <= MM_CH_DGRAM_PREFIX)
		return -EBADMSG;
	uint64_t id = 0;
	for (int i = 0; i < MM_CH_DGRAM_PREFIX; i++)
		id = id << 8 | pkt[i];
	*id_r = id;
	return 0;
}

int mm_link_dgram_open(struct mm_ch *ch, const uint8_t *pkt, size_t len, uint8_t *out,
                       size_t cap, size_t *outlen_r)
{
	if (!pkt || len <= MM_CH_DGRAM_PREFIX)
		return -EBADMSG;
	return mm_ch_dgram_open(ch, pkt + MM_CH_DGRAM_PREFIX, len - MM_CH_DGRAM_PREFIX, out, cap, outlen_r);
}

/* ---- reassembly -------------------------------------------------------------------------- */

int mm_link_rx_init(struct mm_link_rx *rx, size_t reserve)
{
	memset(rx, 0, sizeof *rx);
	if (!reserve)
		return 0;
	rx->buf = malloc(reserve);
	if (!rx->buf)
		return -ENOMEM;
	rx->cap = reserve;
	return 0;
}

/* Makes room for need bytes (need <= MM_WIRE_MAX), keeping what the message holds. */
static int rx_grow(struct mm_link_rx *rx, size_t need)
{
	if (rx->cap >= need)
		return 0;
	uint8_t *b = malloc(need);
	if (!b)
		return -ENOMEM;
	if (rx->len)
		memcpy(b, rx->buf, rx->len);
	if (rx->buf) {
		sodium_memzero(rx->buf, rx->used);
		free(rx->buf);
	}
	rx->buf = b;
	rx->cap = need;
	rx->used = rx->len;
	return 0;
}

static int rx_fail(struct mm_link_rx *rx, int err)
{
	rx->len = 0;
	rx->open = false;
	return err;
}

int mm_link_rx_chunk(struct mm_link_rx *rx, const struct mm_ch_chunk *k, const uint8_t **msg_r,
                     size_t *len_r)
{
	if (!rx || !k || !msg_r || !len_r || (!k->data && k->len))
		return -EINVAL;
	if (k->total > MM_WIRE_MAX)
		return rx_fail(rx, -EMSGSIZE);
	if (k->first) {
		rx->len = 0;
		rx->open = false;
		rx->total = k->total;
		if (k->offset != 0 || k->len > k->total)
			return rx_fail(rx, -EPROTO);
		if (k->last) {
			if (k->len != k->total)
				return rx_fail(rx, -EPROTO);
			*msg_r = k->data;
			*len_r = k->len;
			return 1; /* the common case: a message in one frame, not copied */
		}
		int rc = rx_grow(rx, (size_t)k->total);
		if (rc < 0)
			return rx_fail(rx, rc);
		rx->open = true;
	} else if (!rx->open || k->total != rx->total || k->offset != rx->len ||
	           k->len > rx->total - rx->len) {
		return rx_fail(rx, -EPROTO);
	}
	/* (rx->len + k->len <= total <= MM_WIRE_MAX <= cap) */
	if (k->len)
		memcpy(rx->buf + rx->len, k->data, k->len);
	rx->len += k->len;
	if (rx->len > rx->used)
		rx->used = rx->len;
	bool full = rx->len == rx->total;
	if (full != !!k->last)
		return rx_fail(rx, -EPROTO);
	if (!full)
		return 0;
	rx->open = false;
	*msg_r = rx->buf;
	*len_r = rx->len;
	rx->len = 0;
	return 1;
}

void mm_link_rx_reset(struct mm_link_rx *rx)
{
	if (!rx)
		return;
	rx->len = 0;
	rx->open = false;
}

void mm_link_rx_release(struct mm_link_rx *rx)
{
	if (!rx)
		return;
	if (rx->buf) {
		sodium_memzero(rx->buf, rx->used);
		free(rx->buf);
	}
	memset(rx, 0, sizeof *rx);
}

/* ---- confirmation ------------------------------------------------------------------------- */

bool mm_link_confirmed(const struct mm_ch *ch, bool incoming)
{
	if (!ch || mm_ch_state(ch) != MM_CH_ESTABLISHED)
		return false;
	return !incoming || mm_ch_stats(ch)->frames_in > 0;
}

bool mm_link_ts_confirm(uint8_t last_ts[MM_CH_TAI64N_LEN], const uint8_t hs_ts[MM_CH_TAI64N_LEN])
{
	if (memcmp(hs_ts, last_ts, MM_CH_TAI64N_LEN) <= 0)
		return false;
	memcpy(last_ts, hs_ts, MM_CH_TAI64N_LEN);
	return true;
}

int mm_link_ts_restore(uint8_t last_ts[MM_CH_TAI64N_LEN], uint64_t saved_ms, uint64_t now_ms,
                       uint64_t max_skew_ms)
{
	memset(last_ts, 0, MM_CH_TAI64N_LEN);
	if (!saved_ms)
		return 0;
	uint64_t bound = max_skew_ms > UINT64_MAX - now_ms ? UINT64_MAX : now_ms + max_skew_ms;
	if (saved_ms > bound)
		return -ERANGE;
	mm_ch_tai64n(saved_ms, last_ts);
	return 0;
}
