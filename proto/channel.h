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

#endif
