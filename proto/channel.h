/*
 * channel.h — mailmesh's encrypted, mutually authenticated channel between two nodes,
 * built on proto/noise.h, plus the key helpers the CLI and the peers file use.
 *
 * Key helpers: X25519 keys, WireGuard-style 44-character base64, and the node id
 * derived from a public key.  Everything here is sans-I/O: random bytes and the clock
 * come from the caller; nothing reads a socket, a clock or a random source.
 */
#ifndef MM_CHANNEL_H
#define MM_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "proto/noise.h"

#define MM_KEY_LEN_X25519 32 /* private and public key length */
#define MM_KEY_B64_LEN 44    /* base64 text of a 32-byte key, without the NUL */

/* ---- keys ---------------------------------------------------------------------- */

/* Makes an X25519 private key from 32 caller-supplied random bytes: copies them and
 * clamps (clears bits 0-2 of byte 0 and bit 7 of byte 31, sets bit 6 of byte 31), as
 * `wg genkey`.  priv_r may alias random32.  Cannot fail. */
void mm_key_generate(uint8_t priv_r[32], const uint8_t random32[32]);

/* Computes the public key of an X25519 private key (clamping is applied by X25519
 * itself, so an unclamped key gives the same result as its clamped form).
 * Returns 0, or -EINVAL if the result is the all-zero point (never for a clamped key). */
int mm_key_public(const uint8_t priv[32], uint8_t pub_r[32]);

/* Writes the standard (RFC 4648, padded) base64 of a 32-byte key: 44 characters and a
 * NUL into out_r (45 bytes).  Cannot fail. */
void mm_key_to_base64(const uint8_t key[32], char out_r[MM_KEY_B64_LEN + 1]);

/* Decodes a key from exactly `len` characters of standard padded base64.  len must be
 * 44 (no whitespace, no newline: the caller trims); the text must decode to exactly 32
 * bytes with canonical padding bits.  Returns 0 and fills key_r, or -EINVAL (key_r is
 * then zeroed). */
int mm_key_from_base64(const char *text, size_t len, uint8_t key_r[32]);

/* A node's id from its public key: the first 8 bytes of BLAKE2b-256(pub) (libsodium
 * crypto_generichash, 32-byte output, no key) read as a big-endian integer, so the
 * id printed as %016llx is the hex of those 8 bytes.  Same on every node. */
uint64_t mm_node_id(const uint8_t pub[32]);

/* ---- the channel ----------------------------------------------------------------- *
 *
 * Handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b, prologue "mailmesh channel v1".
 * IK because every node knows its peers' static keys (peers file): one round trip, and
 * the responder learns who calls from message 1 and checks the key before answering.
 * psk2 with the cluster's pre-shared key (32 zero bytes when none is configured) so
 * one protocol name serves both setups, and a configured psk adds a second factor: a
 * stolen node key alone cannot join, and it hedges against a future break of X25519
 * (as WireGuard).  psk2 is mixed in at the end of message 2, so a psk mismatch is seen
 * by the initiator when it reads message 2 (the responder cannot tell at message 1).
 * Message 1 payload: version byte 1 + TAI64N timestamp (12 bytes: 8
 * bytes 2^62 + unix seconds, 4 bytes nanoseconds, big-endian) made from the caller's
 * clock in milliseconds; message 2 payload: version byte 1.
 *
 * Stream (TCP): every message, handshake included, is a frame: 2-byte big-endian length
 * + Noise message (<= 65535 bytes).  A transport message's plaintext is a type byte and
 * data: FULL (a whole application message), FIRST (8-byte big-endian total length,
 * then the first chunk), MORE (next chunk; the message ends when total is reached) and
 * REKEY (empty: the sender has switched its sending key with Noise Rekey() after this
 * frame; the receiver does the same with its receiving key).  A sender rekeys when the
 * bytes or the time since its last rekey reach the budget (default 1 GiB / 120 s).
 * Rekey() (not a new handshake) keeps the stream going without a round trip and erases
 * old keys; a fresh DH is a new connection's job.
 *
 * Datagrams (UDP): separate keys from the session: (d1, d2) = HKDF(h, k1 || k2) with h
 * the handshake hash and k1, k2 the Split() keys (secret input, h binds them to the
 * handshake); d1 initiator -> responder, d2 responder -> initiator.  Datagram =
 * 8-byte big-endian counter + ChaChaPoly(key, nonce = counter, ad = the 8 counter
 * bytes, plaintext) (spec section 11.4).  The receiver keeps a sliding window of 8192
 * bits (RFC 6479, as WireGuard): replayed, too old, truncated and tampered datagrams
 * are dropped and counted in struct mm_ch_stats.
 *
 * Sans-I/O: bytes come in through mm_ch_feed() and mm_ch_dgram_open(); stream bytes to
 * send go out through the emit callback, received application data through deliver.
 * The clock (milliseconds, any epoch but the same for all calls and increasing across
 * restarts, e.g. unix time) and the ephemeral key's random bytes come from the caller.
 */

#define MM_CH_PROLOGUE "mailmesh channel v1"
#define MM_CH_PROTOCOL "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b"
#define MM_CH_VERSION 1
#define MM_CH_TAI64N_LEN 12
#define MM_CH_FRAME_MAX (2 + MM_NOISE_MAX_MSG)            /* bytes of one stream frame */
#define MM_CH_DGRAM_OVERHEAD (8 + MM_NOISE_TAGLEN)         /* counter + tag */
/* The largest UDP payload over IPv4: 65535 less the IP (20) and UDP (8) headers; IPv6
 * allows 65527, so this one holds on both.  A datagram on the wire is the sender's
 * node id (MM_CH_DGRAM_PREFIX bytes, put there by node/peer.c) and then the sealed
 * datagram, so the channel seals at most MM_CH_DGRAM_MAX bytes.  (It was once the
 * Noise message limit, 65535 + 8: a datagram no socket could send.) */
#define MM_CH_UDP_MAX 65507
#define MM_CH_DGRAM_PREFIX 8
#define MM_CH_DGRAM_MAX (MM_CH_UDP_MAX - MM_CH_DGRAM_PREFIX)              /* 65499 */
#define MM_CH_DGRAM_MAX_PLAIN (MM_CH_DGRAM_MAX - MM_CH_DGRAM_OVERHEAD)    /* 65475 */
#define MM_CH_REKEY_BYTES_DEFAULT (1ULL << 30)
#define MM_CH_REKEY_MS_DEFAULT 120000ULL
#define MM_CH_REPLAY_BITS 8192

/* What the channel expects next. */
enum mm_ch_state {
	MM_CH_START = 1,       /* initiator: call mm_ch_start() */
	MM_CH_AWAIT_HELLO,     /* responder: waits for handshake message 1 */
	MM_CH_AWAIT_RESPONSE,  /* initiator: message 1 sent, waits for message 2 */
	MM_CH_ESTABLISHED,     /* transport: data both ways, datagrams */
	MM_CH_FAILED,          /* refused or broken: drop the connection */
};

/* Results of mm_ch_feed() besides negative errno. */
#define MM_CH_OK 0
#define MM_CH_NEED_MORE 1

/* A piece of a received application message.  A message of total bytes arrives as
 * one or more chunks in order: offset is where data goes, first/last mark its ends
 * (both set for a message in one frame).  data is borrowed for the callback only. */
struct mm_ch_chunk {
	const uint8_t *data;
	size_t len;
	uint64_t offset, total;
	int first, last;
};

struct mm_ch_io {
	/* Stream bytes to transmit, in order (a whole frame per call).  Returns 0 or a
	 * negative errno, which the channel function then returns. */
	int (*emit)(void *arg, const uint8_t *bytes, size_t len);
	/* Received application data.  Returns 0 or a negative errno, which stops
	 * mm_ch_feed() and is returned by it.  May call mm_ch_send*() on the channel. */
	int (*deliver)(void *arg, const struct mm_ch_chunk *chunk);
	void *arg;
};

/* Responder's view of the peers file and of the last timestamps accepted. */
struct mm_ch_peers {
	/* Is pub a peer?  Returns 0 and fills last_ts_r with the last timestamp accepted
	 * from it (12 zero bytes if none), or -ENOENT if pub is not a peer. */
	int (*lookup)(void *arg, const uint8_t pub[32], uint8_t last_ts_r[MM_CH_TAI64N_LEN]);
	/* Message 1 from pub with timestamp ts was accepted: remember ts (at least as long
	 * as the peer's key is trusted) so a replay of that message is refused. */
	void (*accepted)(void *arg, const uint8_t pub[32], const uint8_t ts[MM_CH_TAI64N_LEN]);
	void *arg;
};

struct mm_ch_config {
	int initiator;              /* 1: we call (remote_pub needed); 0: we answer */
	const uint8_t *local_priv;  /* our static private key (32), copied */
	const uint8_t *remote_pub;  /* initiator: the peer's public key (32); else NULL */
	const uint8_t *psk;         /* cluster pre-shared key (32) or NULL = 32 zero bytes */
	const uint8_t *random32;    /* 32 random bytes: the ephemeral private key */
	uint64_t now_ms;            /* the clock now (the initiator's timestamp) */
	uint64_t rekey_bytes;       /* 0: MM_CH_REKEY_BYTES_DEFAULT */
	uint64_t rekey_ms;          /* 0: MM_CH_REKEY_MS_DEFAULT */
	struct mm_ch_peers peers;   /* responder: required; initiator: unused */
	struct mm_ch_io io;         /* emit required; deliver required to receive data */
};

/* Counters (drops never crash; each is counted once). */
struct mm_ch_stats {
	uint64_t frames_in, frames_out;        /* stream transport frames */
	uint64_t bytes_in, bytes_out;          /* application bytes */
	uint64_t rekeys_sent, rekeys_received;
	uint64_t dgram_ok, dgram_replayed, dgram_too_old, dgram_truncated, dgram_tampered;
};

struct mm_ch;

/* Makes a channel in state MM_CH_START (initiator) or MM_CH_AWAIT_HELLO (responder).
 * Copies the keys.  Returns 0 and sets *ch_r, -EINVAL if a required key or callback is
 * missing, -ENOMEM. */
int mm_ch_new(struct mm_ch **ch_r, const struct mm_ch_config *cfg);

/* Frees the channel, wiping all keys; NULLs *chp; NULL-safe. */
void mm_ch_free(struct mm_ch **chp);

enum mm_ch_state mm_ch_state(const struct mm_ch *ch);

/* Initiator: emits handshake message 1 (timestamp from cfg.now_ms) -> AWAIT_RESPONSE.
 * Returns 0, -EPROTO if not in MM_CH_START, or emit's error (then FAILED). */
int mm_ch_start(struct mm_ch *ch);

/* Consumes stream bytes: every complete frame in in[0..len) is processed, in order.
 * *consumed_r = bytes used; the caller keeps the rest and presents it again with more.
 * Returns MM_CH_OK (all consumed), MM_CH_NEED_MORE (a partial frame remains), or a
 * negative errno, after which the channel is FAILED (drop the connection):
 *   -EBADMSG  a frame fails authentication or is malformed (handshake or transport)
 *   -EACCES   responder: message 1 is from a key that is not a peer; nothing was sent
 *   -EALREADY responder: message 1's timestamp is not newer than the last accepted
 *   -EPROTO   a frame out of place (e.g. MORE without FIRST, wrong version)
 *   -ENOTCONN the channel had already failed
 *   or an error returned by emit or deliver.
 * The responder's message 2 is emitted from inside this call.  now_ms feeds the
 * rekey budget only. */
int mm_ch_feed(struct mm_ch *ch, const uint8_t *in, size_t len, size_t *consumed_r,
               uint64_t now_ms);

/* Sends a whole application message of any size (split into frames as needed).
 * Returns 0, -ENOTCONN if not ESTABLISHED, -EBUSY if a message started with
 * mm_ch_send_begin() is unfinished, or emit's error (then FAILED). */
int mm_ch_send(struct mm_ch *ch, const uint8_t *msg, size_t len, uint64_t now_ms);

/* Streams one application message of `total` bytes in pieces of any size, so a large
 * body goes out without being held whole: begin, then chunk until total bytes have been
 * given.  begin: 0, -ENOTCONN, -EBUSY (a message is unfinished).  chunk: 0, -EINVAL if
 * no message is open or len exceeds what is left, -ENOTCONN, or emit's error. */
int mm_ch_send_begin(struct mm_ch *ch, uint64_t total);
int mm_ch_send_chunk(struct mm_ch *ch, const uint8_t *data, size_t len, uint64_t now_ms);

/* Sends a REKEY frame now and switches the sending key (as the budget does).  The
 * initiator calls it right after the handshake, as key confirmation: in IK a message 1
 * proves only the static key (or is a replay), and psk2 is first checked by whoever
 * reads a frame sealed with the final keys, so the responder should not let a new
 * session replace an older one before an authentic transport frame (or datagram)
 * arrives; this frame arrives one round trip after message 2.  Nodes that do not know
 * this just rekey.  Returns 0, -ENOTCONN if not ESTABLISHED, or emit's error (then
 * FAILED). */
int mm_ch_rekey(struct mm_ch *ch, uint64_t now_ms);

/* The peer's static public key (known from the start for the initiator, from
 * message 1 for the responder), or NULL.  Borrowed. */
const uint8_t *mm_ch_remote_key(const struct mm_ch *ch);

/* The handshake hash (64 bytes) once ESTABLISHED (channel binding), else NULL. */
const uint8_t *mm_ch_handshake_hash(const struct mm_ch *ch);

const struct mm_ch_stats *mm_ch_stats(const struct mm_ch *ch);

/* Seals one datagram: writes len + MM_CH_DGRAM_OVERHEAD bytes (at most
 * MM_CH_DGRAM_MAX) to out (cap bytes).  Returns 0 and sets *outlen_r, -ENOTCONN if not
 * ESTABLISHED, -EMSGSIZE if len > MM_CH_DGRAM_MAX_PLAIN or out is too small (no
 * counter spent), -EOVERFLOW if the counter is exhausted. */
int mm_ch_dgram_seal(struct mm_ch *ch, const uint8_t *msg, size_t len, uint8_t *out,
                     size_t cap, size_t *outlen_r);

/* Opens one received datagram into out (cap bytes; len - MM_CH_DGRAM_OVERHEAD
 * needed).  Returns 0 and sets *outlen_r, or drops it, counts it and returns:
 * -EBADMSG shorter than MM_CH_DGRAM_OVERHEAD or longer than MM_CH_DGRAM_MAX
 * (dgram_truncated: no sender of ours makes it) or failing authentication (dgram_tampered),
 * -EALREADY already received (dgram_replayed), -ESTALE older than the window
 * (dgram_too_old), -ENOTCONN if not ESTABLISHED, -EMSGSIZE if out is too small.
 * The window moves only for authentic datagrams; the channel state never changes. */
int mm_ch_dgram_open(struct mm_ch *ch, const uint8_t *in, size_t len, uint8_t *out,
                     size_t cap, size_t *outlen_r);

/* TAI64N label (12 bytes) of a time in milliseconds since the unix epoch. */
void mm_ch_tai64n(uint64_t now_ms, uint8_t out_r[MM_CH_TAI64N_LEN]);

/* The time of a TAI64N label in milliseconds since the unix epoch, rounded up, so that
 * mm_ch_tai64n() of it is never older than the label (a label of ours, made from
 * milliseconds, comes back exactly).  0 for a label before the epoch or beyond what 64
 * bits of milliseconds hold: a caller keeping it then keeps nothing. */
uint64_t mm_ch_tai64n_ms(const uint8_t ts[MM_CH_TAI64N_LEN]);

#endif
