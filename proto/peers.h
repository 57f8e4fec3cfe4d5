/*
 * peers.h — the static peers file: who is in the cluster, where to reach each node and
 * the public key it must prove.  One peer a line:
 *
 *     NAME HOST:PORT PUBLIC_KEY      # comment
 *
 * NAME is 1..MM_PEER_NAME_MAX characters of [A-Za-z0-9._-]; HOST is an IPv4 address,
 * an IPv6 address in brackets ([::1]:4000) or a host name; PUBLIC_KEY is the 44-character
 * base64 of `mailmesh pubkey`.  `#` starts a comment; blank lines are ignored.  The same
 * file is shared by every node, so a node finds its own line in it (mm_peers_find_key()
 * with its own public key) and skips it.
 *
 * Pure code: the parser works on a memory buffer (the caller reads the file), so it can
 * be fuzzed; it never prints.  Errors are reported as text "FILE:LINE: what" in the
 * caller's buffer.
 */
#ifndef MM_PEERS_H
#define MM_PEERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MM_PEER_NAME_MAX 63  /* longest peer name in bytes */
#define MM_PEER_HOST_MAX 253 /* longest host (DNS name limit; IPv6 text fits) */
#define MM_PEERS_MAX 4096    /* most peers one file may list */

struct mm_peer {
	char name[MM_PEER_NAME_MAX + 1];
	char host[MM_PEER_HOST_MAX + 1]; /* IPv4, IPv6 (without brackets) or host name */
	uint16_t port;                   /* 1..65535 */
	uint8_t pub[32];                 /* X25519 public key */
	uint64_t node_id;                /* mm_node_id(pub) */
	unsigned line;                   /* line of the peers file it came from */
};

struct mm_peers {
	size_t n;            /* number of peers, in file order */
	struct mm_peer *v;   /* n entries */
};

/* Parses a peers file held in buf[0..len) (need not be NUL-terminated; NUL bytes in it
 * are an error).  `fname` is only used in error messages (NULL -> "peers").
 * Returns 0 and a new list in *peers_r (free with mm_peers_free(); an empty file gives
 * an empty list), or:
 *   -EINVAL  a malformed line, a duplicate name or key, or too many peers: *peers_r is
 *            NULL and err holds "FILE:LINE: what is wrong and how to fix it"
 *   -ENOMEM  out of memory
 * err (errlen bytes, may be 0) is always NUL-terminated when errlen > 0. */
int mm_peers_parse(const char *buf, size_t len, const char *fname,
                   struct mm_peers **peers_r, char *err, size_t errlen);

/* Frees a list and NULLs *pp.  NULL-safe (pp or *pp may be NULL). */
void mm_peers_free(struct mm_peers **pp);

/* Lookups: the entry with that name / public key / node id, or NULL.  The pointer is
 * borrowed from the list and valid until it is freed.  NULL-safe in `peers`. */
const struct mm_peer *mm_peers_find_name(const struct mm_peers *peers, const char *name);
const struct mm_peer *mm_peers_find_key(const struct mm_peers *peers, const uint8_t pub[32]);
const struct mm_peer *mm_peers_find_node(const struct mm_peers *peers, uint64_t node_id);

/* Parses "HOST:PORT" (IPv4, [IPv6] or host name; the same syntax as the peers file and
 * the config's `listen`) from s[0..len).  On success returns 0, copies the host (without
 * brackets, NUL-terminated) into host_r (hostlen bytes) and the port into *port_r.
 * Returns -EINVAL for bad syntax, a bad address or host name, a port outside 1..65535,
 * or a host that does not fit host_r. */
int mm_hostport_parse(const char *s, size_t len, char *host_r, size_t hostlen, uint16_t *port_r);

/* True if s[0..len) is a valid peer name (1..MM_PEER_NAME_MAX of [A-Za-z0-9._-]). */
bool mm_peer_name_valid(const char *s, size_t len);

#endif
