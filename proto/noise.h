/*
 * noise.h — the Noise Protocol Framework, revision 34, for the one suite mailmesh uses:
 * 25519_ChaChaPoly_BLAKE2b (libsodium: X25519, IETF ChaCha20-Poly1305, BLAKE2b with
 * HMAC/HKDF built on it, block length 128, HASHLEN 64).
 *
 * Generic over handshake patterns: the pattern is parsed from the protocol name
 * ("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b") and run from a token table.  Every
 * fundamental one-way and interactive pattern, every deferred pattern of the spec
 * (section 18) and any combination of psk0..pskN modifiers ("XXpsk0+psk3") is known.
 *
 * Sans-I/O: no sockets, no clock, no randomness.  The caller passes the local
 * ephemeral private key (32 random bytes) at init, so test vectors inject fixed keys.
 * All state lives in caller-owned structs (no allocation); mm_noise_hs_wipe() and
 * mm_noise_cipher_wipe() zero them.
 */
#ifndef MM_NOISE_H
#define MM_NOISE_H

#include <stddef.h>
#include <stdint.h>

#define MM_NOISE_DHLEN 32
#define MM_NOISE_HASHLEN 64
#define MM_NOISE_KEYLEN 32
#define MM_NOISE_TAGLEN 16
#define MM_NOISE_MAX_MSG 65535          /* largest Noise message, spec section 3 */
#define MM_NOISE_MAX_MSGS 8             /* handshake messages in one pattern */
#define MM_NOISE_MAX_TOKENS 12          /* tokens in one handshake message */
#define MM_NOISE_MAX_PSKS 4
#define MM_NOISE_NONCE_MAX UINT64_MAX   /* reserved: never used to encrypt (section 5.1) */

/* ---- CipherState ---------------------------------------------------------------- */

struct mm_noise_cipher {
	uint8_t k[MM_NOISE_KEYLEN];
	uint64_t n;
	int has_key;
};

/* InitializeKey(key): sets k, n = 0.  key NULL empties the cipher (then encrypt and
 * decrypt copy bytes unchanged, as the spec says for an empty key). */
void mm_noise_cipher_init(struct mm_noise_cipher *c, const uint8_t *key);

/* EncryptWithAd(ad, plaintext) with nonce n, then n++.  Writes ptlen + 16 bytes (ptlen
 * if no key) to out, which may be exactly pt (in place) or must not overlap it; cap is
 * its size.  Returns 0 and sets *outlen_r, or -EMSGSIZE if the result would exceed
 * 65535 bytes or cap, or -EOVERFLOW if n has reached 2^64-1 (the cipher is then
 * unusable: the caller must rekey by a new handshake). */
int mm_noise_cipher_encrypt(struct mm_noise_cipher *c, const uint8_t *ad, size_t adlen,
                            const uint8_t *pt, size_t ptlen, uint8_t *out, size_t cap,
                            size_t *outlen_r);

/* DecryptWithAd(ad, ciphertext) with nonce n; n++ only on success.  out may be exactly
 * ct or must not overlap it.  Returns 0 and sets *outlen_r (ctlen - 16), -EBADMSG if
 * authentication fails or ct is shorter than a tag, -EMSGSIZE if ctlen > 65535 or the
 * plaintext would not fit cap, -EOVERFLOW if n has reached 2^64-1. */
int mm_noise_cipher_decrypt(struct mm_noise_cipher *c, const uint8_t *ad, size_t adlen,
                            const uint8_t *ct, size_t ctlen, uint8_t *out, size_t cap,
                            size_t *outlen_r);

/* The same with an explicit nonce n (spec section 11.4, out-of-order transport such as
 * datagrams): c->n is neither used nor changed.  n = 2^64-1 is refused (-EOVERFLOW). */
int mm_noise_cipher_encrypt_at(const struct mm_noise_cipher *c, uint64_t n,
                               const uint8_t *ad, size_t adlen, const uint8_t *pt,
                               size_t ptlen, uint8_t *out, size_t cap, size_t *outlen_r);
int mm_noise_cipher_decrypt_at(const struct mm_noise_cipher *c, uint64_t n,
                               const uint8_t *ad, size_t adlen, const uint8_t *ct,
                               size_t ctlen, uint8_t *out, size_t cap, size_t *outlen_r);

/* Rekey(): k = first 32 bytes of ENCRYPT(k, 2^64-1, empty ad, 32 zero bytes); n is
 * kept (spec section 11.3).  No-op on an empty cipher. */
void mm_noise_cipher_rekey(struct mm_noise_cipher *c);

/* Zeroes the cipher (key included). */
void mm_noise_cipher_wipe(struct mm_noise_cipher *c);

/* ---- HandshakeState ------------------------------------------------------------- */

/* What the handshake expects next. */
enum mm_noise_hs_state {
	MM_NOISE_HS_WRITE = 1, /* our turn: call mm_noise_hs_write() */
	MM_NOISE_HS_READ,      /* peer's turn: call mm_noise_hs_read() */
	MM_NOISE_HS_SPLIT,     /* handshake complete: call mm_noise_hs_split() */
};

struct mm_noise_config {
	const char *protocol;      /* full name, e.g. "Noise_IK_25519_ChaChaPoly_BLAKE2b" */
	int initiator;             /* 1 initiator, 0 responder */
	const uint8_t *prologue;   /* may be NULL when prologue_len is 0 */
	size_t prologue_len;
	const uint8_t *s;          /* local static private key (32) or NULL */
	const uint8_t *e;          /* local ephemeral private key: 32 random bytes from the
	                            * caller, or NULL if this side sends no e */
	const uint8_t *rs;         /* remote static public key known in advance, or NULL */
	const uint8_t *re;         /* remote ephemeral public key (pre-message e), or NULL */
	const uint8_t (*psks)[32]; /* pre-shared keys, used in the order of psk tokens */
	size_t n_psks;             /* must equal the number of psk modifiers */
};

struct mm_noise_symmetric {
	struct mm_noise_cipher cs;
	uint8_t ck[MM_NOISE_HASHLEN];
	uint8_t h[MM_NOISE_HASHLEN];
};

struct mm_noise_hs {
	struct mm_noise_symmetric ss;
	uint8_t tokens[MM_NOISE_MAX_MSGS][MM_NOISE_MAX_TOKENS];
	uint8_t n_tokens[MM_NOISE_MAX_MSGS];
	uint8_t n_msgs, msg_idx;
	uint8_t initiator, one_way, psk_mode;
	uint8_t has_s, has_e, has_rs, has_re;
	uint8_t s_priv[32], s_pub[32], e_priv[32], e_pub[32], rs[32], re[32];
	uint8_t psks[MM_NOISE_MAX_PSKS][32];
	uint8_t n_psks, psk_idx;
};

/* Initialize(): parses cfg->protocol, runs the pre-messages and mixes the prologue.
 * Returns 0; -EPROTONOSUPPORT if the suite is not 25519_ChaChaPoly_BLAKE2b; -EINVAL if
 * the name or pattern is malformed or unknown, a key the pattern needs is missing
 * (s for a side that sends or pre-shares s, rs/re the pattern's pre-messages give us,
 * e for a side that sends e) or n_psks does not match.  On error *hs is wiped. */
int mm_noise_hs_init(struct mm_noise_hs *hs, const struct mm_noise_config *cfg);

enum mm_noise_hs_state mm_noise_hs_state(const struct mm_noise_hs *hs);

/* WriteMessage(payload): writes the next handshake message to out (cap bytes).
 * Returns 0 and sets *outlen_r; -EPROTO if it is not our turn; -EMSGSIZE if the
 * message would exceed 65535 bytes or cap; -EINVAL on a DH failure (low-order point).
 * On error the state is unchanged. */
int mm_noise_hs_write(struct mm_noise_hs *hs, const uint8_t *payload, size_t plen,
                      uint8_t *out, size_t cap, size_t *outlen_r);

/* ReadMessage(msg): processes the peer's next handshake message and writes its
 * payload to payload_r (cap bytes).  Returns 0 and sets *plen_r; -EPROTO if it is not
 * the peer's turn; -EBADMSG if msg is truncated, fails authentication or gives a
 * low-order DH result; -EMSGSIZE if len > 65535 or the payload does not fit cap.
 * Transactional: on any error the state is exactly as before the call, so a forged
 * message can be ignored. */
int mm_noise_hs_read(struct mm_noise_hs *hs, const uint8_t *msg, size_t len,
                     uint8_t *payload_r, size_t cap, size_t *plen_r);

/* The remote static public key once known (pre-message or received), else NULL.
 * Borrowed from hs. */
const uint8_t *mm_noise_hs_remote_static(const struct mm_noise_hs *hs);

/* The handshake hash h (64 bytes, valid any time; final after the last message). */
const uint8_t *mm_noise_hs_hash(const struct mm_noise_hs *hs);

/* Split(): in state MM_NOISE_HS_SPLIT, fills c1 (initiator -> responder) and c2
 * (responder -> initiator) and, if h_r is not NULL, copies the handshake hash there.
 * Then wipes hs (keys, chaining key).  Returns 0 or -EPROTO if not complete. */
int mm_noise_hs_split(struct mm_noise_hs *hs, struct mm_noise_cipher *c1,
                      struct mm_noise_cipher *c2, uint8_t h_r[MM_NOISE_HASHLEN]);

/* Zeroes hs. */
void mm_noise_hs_wipe(struct mm_noise_hs *hs);

/* HKDF(chaining_key, ikm, 2 or 3) of the spec over HMAC-BLAKE2b; out2/out3 may be NULL.
 * Exposed for the channel's key derivation and tests. */
void mm_noise_hkdf(const uint8_t ck[MM_NOISE_HASHLEN], const uint8_t *ikm, size_t ikm_len,
                   uint8_t out1[MM_NOISE_HASHLEN], uint8_t out2[MM_NOISE_HASHLEN],
                   uint8_t out3[MM_NOISE_HASHLEN]);

#endif
