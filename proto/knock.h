/*
 * knock.h — the wake-up datagram.  Of two peers only the one whose key sorts lower
 * dials (node/peer.c); when the other one starts, the dialer may be waiting out a
 * reconnect backoff of up to 10 s, and replication to and from the new node waits
 * with it.  So a node that is dialed, while it has no connection to such a peer,
 * sends it a knock: "I am up, dial now".
 *
 * A knock is MM_KNOCK_LEN bytes on the UDP port:
 *
 *     [8 sender node id, big-endian][8 "mmKNOCK1"][8 sender's wall clock, ms, big-endian]
 *     [16 MAC: BLAKE2b-128 keyed with K over the 24 bytes before it]
 *
 *     K = BLAKE2b-256(key = cluster PSK or none, "mailmesh knock v1" || X25519(s, rs))
 *
 * Both ends compute K from their own private key and the other's public key of the
 * peers file, so a valid MAC proves the sender holds its static key.  A receiver takes
 * a knock only if its timestamp is newer than the last one it took from that peer and
 * within MM_KNOCK_SKEW_MS of its own clock.  A knock carries nothing else and can only
 * make its receiver dial, sooner, a peer it would dial anyway.  It never opens a
 * channel datagram's format by mistake: those are [8 id][8 counter]..., and no
 * channel reaches the counter "mmKNOCK1" (about 7.9e18).
 *
 * Pure code: no I/O, clock passed in.
 */
#ifndef MM_KNOCK_H
#define MM_KNOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MM_KNOCK_LEN 40
#define MM_KNOCK_SKEW_MS (5 * 60 * 1000)

/* Derives the pair's knock key into key_r.  psk: the cluster PSK (32 bytes) or NULL.
 * Returns 0, or -EINVAL when the public key is a low-order point (no shared secret). */
int mm_knock_key(const uint8_t priv[32], const uint8_t peer_pub[32], const uint8_t *psk, uint8_t key_r[32]);

/* Writes a knock from node `sender` at wall-clock time now_ms into out. */
void mm_knock_seal(const uint8_t key[32], uint64_t sender, uint64_t now_ms, uint8_t out[MM_KNOCK_LEN]);

/* Whether the n bytes at b have a knock's shape (length and magic); no MAC check.
 * Reads the sender id into *sender_r when they do. */
bool mm_knock_is(const uint8_t *b, size_t n, uint64_t *sender_r);

/* Checks a knock with the sender's key: 0 and its timestamp in *ts_r, -EBADMSG when
 * it is not a knock or the MAC does not match, -ESTALE when the timestamp is not
 * newer than last_ts or further than MM_KNOCK_SKEW_MS from now_ms. */
int mm_knock_open(const uint8_t key[32], const uint8_t *b, size_t n, uint64_t last_ts, uint64_t now_ms,
                  uint64_t *ts_r);

#endif
