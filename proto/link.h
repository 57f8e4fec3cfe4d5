/*
 * link.h — what a driver of a channel decides around it, for node/peer.c (TCP and UDP
 * over libuv) and sim/chan.c (the simulator's virtual network) alike: which of two
 * peers dials, the shape of a datagram on the wire (sender node id + sealed datagram),
 * the reassembly of stream messages from the channel's chunks, and when an incoming
 * connection is confirmed, so that it may replace the peer's live one and its message
 * 1 timestamp may become the peer's last.  Pure functions: no sockets, no clock, no
 * randomness; the callers do the I/O.  Kept here so that the simulator runs the
 * daemon's rules instead of a copy of them.
 */
#ifndef MM_LINK_H
#define MM_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/channel.h"

/* ---- who dials ------------------------------------------------------------------- */

/* Of two peers, the one whose public key sorts lower (memcmp, byte order) dials and
 * the other only accepts, so a pair never holds two connections.  Returns true when
 * the node with key local dials the node with key remote; false otherwise (also for
 * equal keys: a node never dials itself). */
bool mm_link_dials(const uint8_t local_pub[32], const uint8_t remote_pub[32]);

/* ---- datagrams --------------------------------------------------------------------- *
 *
 * On the wire: MM_CH_DGRAM_PREFIX (8) bytes of the sender's node id, big-endian, then
 * the channel's sealed datagram (mm_ch_dgram_seal): at most MM_CH_UDP_MAX bytes in
 * all.  The id only picks the session whose keys open it; nothing is trusted before
 * the channel's AEAD check and replay window. */

/* Writes the datagram carrying msg[0..len) from the node self_id, sealed with ch, to
 * out (cap bytes; MM_CH_DGRAM_PREFIX + len + MM_CH_DGRAM_OVERHEAD needed, never more
 * than MM_CH_UDP_MAX).  Returns 0 and sets *outlen_r; -EMSGSIZE if len >
 * MM_CH_DGRAM_MAX_PLAIN or out is too small (nothing written, no counter spent);
 * -EINVAL if ch or out is NULL; or mm_ch_dgram_seal's error (-ENOTCONN, -EOVERFLOW). */
int mm_link_dgram_seal(struct mm_ch *ch, uint64_t self_id, const uint8_t *msg, size_t len,
                       uint8_t *out, size_t cap, size_t *outlen_r);

/* Reads the sender's node id of a received datagram (unauthenticated: it only says
 * which channel to try).  Returns 0 and sets *id_r, or -EBADMSG if pkt holds no more
 * than the id (len <= MM_CH_DGRAM_PREFIX). */
int mm_link_dgram_sender(const uint8_t *pkt, size_t len, uint64_t *id_r);

/* Opens a received datagram (id included) with ch into out (cap bytes).  Returns 0
 * and sets *outlen_r, -EBADMSG if len <= MM_CH_DGRAM_PREFIX, or mm_ch_dgram_open's
 * error (-EBADMSG, -EALREADY, -ESTALE, -ENOTCONN, -EMSGSIZE; counted by the channel). */
int mm_link_dgram_open(struct mm_ch *ch, const uint8_t *pkt, size_t len, uint8_t *out,
                       size_t cap, size_t *outlen_r);

/* ---- reassembly of stream messages ------------------------------------------------- */

/* One connection's message being reassembled from mm_ch_chunk pieces.  Zero it, or
 * mm_link_rx_init() it; the buffer is owned by it and released by
 * mm_link_rx_release().  The bytes are mail (records, bodies): a grown or released
 * buffer is wiped first, as far as it was ever written. */
struct mm_link_rx {
	uint8_t *buf;
	size_t cap;
	size_t len;       /* bytes of the current message so far */
	size_t used;      /* bytes of buf ever written (wiped at growth and release) */
	uint64_t total;   /* the current message's length, from its first chunk */
	bool open;        /* a message was begun and not finished */
};

/* Sets rx up with a buffer of reserve bytes at once (0: none until a message needs
 * one; at most MM_WIRE_MAX is useful).  Returns 0, or -ENOMEM (rx is then empty and
 * still usable). */
int mm_link_rx_init(struct mm_link_rx *rx, size_t reserve);

/* Takes one chunk handed to the channel's deliver callback.  Nothing in it is trusted:
 * a message longer than MM_WIRE_MAX is refused before anything is allocated, and a
 * chunk must continue the open message exactly (its offset where the message stands,
 * the same total, no byte beyond total, last exactly at total).  Returns:
 *   1  a message is complete: *msg_r and *len_r give it, borrowed until the next call
 *      (the chunk's own bytes for a message in one chunk, else rx's buffer);
 *   0  the chunk was taken, more is to come;
 *   -EMSGSIZE total > MM_WIRE_MAX;  -EPROTO a chunk out of place;  -ENOMEM;
 *   -EINVAL a NULL argument.
 * After an error the partial message is dropped. */
int mm_link_rx_chunk(struct mm_link_rx *rx, const struct mm_ch_chunk *k, const uint8_t **msg_r,
                     size_t *len_r);

/* Drops a partial message (a new connection starts clean).  NULL-safe. */
void mm_link_rx_reset(struct mm_link_rx *rx);

/* Wipes the bytes ever written, frees the buffer and zeroes rx.  NULL-safe. */
void mm_link_rx_release(struct mm_link_rx *rx);

/* ---- confirmation of an incoming connection ----------------------------------------- *
 *
 * In Noise IK, message 1 proves only that its sender holds the static key (or is a
 * replay of one recorded earlier), and the cluster psk is checked first by whoever
 * reads something sealed with the final keys.  So an incoming connection may become
 * the peer's (replacing a live one) only once a transport frame, or a datagram opened
 * with its keys, has come from it; the dialer sends a REKEY frame at once for this
 * (mm_ch_rekey).  Until then its message 1 timestamp is held with the connection, and
 * becomes the peer's last only at confirmation: a stolen key without the psk could
 * otherwise date one far ahead and lock the real peer out. */

/* Whether a connection with channel ch is confirmed by the stream: established and,
 * for an incoming one, at least one authentic transport frame received.  (A datagram
 * that mm_link_dgram_open() opened with ch confirms it too: the caller knows that.)
 * false for a NULL ch. */
bool mm_link_confirmed(const struct mm_ch *ch, bool incoming);

/* At the confirmation of an incoming connection: its message 1 timestamp hs_ts
 * becomes the peer's last_ts if it is newer (TAI64N is big-endian: byte order is time
 * order).  Returns true when last_ts changed (the caller keeps it, e.g. in its state
 * database), false otherwise. */
bool mm_link_ts_confirm(uint8_t last_ts[MM_CH_TAI64N_LEN], const uint8_t hs_ts[MM_CH_TAI64N_LEN]);

/* At start: the peer's newest confirmed handshake timestamp kept from before the
 * restart (saved_ms, wall-clock ms as mm_ch_tai64n_ms gives it; 0 = none) becomes
 * last_ts, so a message 1 recorded earlier is refused at once.  Unless it is more
 * than max_skew_ms ahead of now_ms: a peer whose clock ran ahead and was set back, or
 * a stolen key and psk that dated a confirmed handshake far ahead, would otherwise be
 * refused until its clock passed that time, and a restart of this node, which ends
 * such a lockout, would no longer help.  Returns 0 (last_ts set, or zeroed when
 * there is none) or -ERANGE (dropped: last_ts zeroed; the caller says so). */
int mm_link_ts_restore(uint8_t last_ts[MM_CH_TAI64N_LEN], uint64_t saved_ms, uint64_t now_ms,
                       uint64_t max_skew_ms);

#endif
