/*
 * peers.c — parser and lookups of the static peers file (see peers.h).  Works on a
 * memory buffer only, so the fuzzer (fuzz/fuzz_peers.c) can feed it anything: every
 * byte is checked against the line's end before it is read, and nothing is allocated
 * from a length found in the input beyond the growing peer array (bounded by
 * MM_PEERS_MAX).
 */
#include "proto/peers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/channel.h"

#define SHOW_MAX 48 /* longest piece of the input quoted in an error message */

static void seterr(char *err, size_t errlen, const char *fname, unsigned line, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static void seterr(char *err, size_t errlen, const char *fname, unsigned line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (err == NULL || errlen == 0)
		return;
	n = snprintf(err, errlen, "%s:%u: ", fname, line);
	if (n < 0 || (size_t)n >= errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

static bool is_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-';
}

bool mm_peer_name_valid(const char *s, size_t len)
{
	if (s == NULL || len == 0 || len > MM_PEER_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!is_name_char(s[i]))
			return false;
	return true;
}

/* A DNS host name: dot-separated labels of 1..63 [A-Za-z0-9_-] not starting or ending
 * with '-', at most 253 bytes.  An all-digits-and-dots name must be a valid IPv4
 * address instead (so 10.0.0.300 is an error, not a host name). */
static bool hostname_valid(const char *s, size_t len)
{
	size_t label = 0;
	bool only_digits = true;

	if (len == 0 || len > MM_PEER_HOST_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return false;
		if (!(c >= '0' && c <= '9'))
			only_digits = false;
		if (label == 0 && c == '-')
			return false;
		if (++label > 63)
			return false;
	}
	if (label == 0 || s[len - 1] == '-')
		return false;
	return !only_digits;
}

int mm_hostport_parse(const char *s, size_t len, char *host_r, size_t hostlen, uint16_t *port_r)
{
	const char *host, *colon, *p;
	size_t hlen;
	char tmp[MM_PEER_HOST_MAX + 1];
	unsigned char addr[16];
	unsigned long port = 0;

	if (s == NULL || host_r == NULL || port_r == NULL || len == 0)
		return -EINVAL;
	if (s[0] == '[') {
		const char *close = memchr(s, ']', len);
		if (close == NULL || close + 1 >= s + len || close[1] != ':')
			return -EINVAL;
		host = s + 1;
		hlen = (size_t)(close - host);
		colon = close + 1;
		if (hlen == 0 || hlen >= sizeof tmp)
			return -EINVAL;
		memcpy(tmp, host, hlen);
		tmp[hlen] = '\0';
		if (memchr(tmp, '\0', hlen) != NULL || inet_pton(AF_INET6, tmp, addr) != 1)
			return -EINVAL;
	} else {
		colon = NULL;
		for (p = s; p < s + len; p++) {
			if (*p == ':') {
				if (colon != NULL) /* an IPv6 address must be in brackets */
					return -EINVAL;
				colon = p;
			}
		}
		if (colon == NULL)
			return -EINVAL;
		host = s;
		hlen = (size_t)(colon - s);
		if (hlen == 0 || hlen >= sizeof tmp)
			return -EINVAL;
		memcpy(tmp, host, hlen);
		tmp[hlen] = '\0';
		if (memchr(tmp, '\0', hlen) != NULL ||
		    (inet_pton(AF_INET, tmp, addr) != 1 && !hostname_valid(host, hlen)))
			return -EINVAL;
	}
	/* Port: 1..5 decimal digits, no sign, no leading zero, 1..65535. */
	p = colon + 1;
	if (p >= s + len || (size_t)(s + len - p) > 5 || *p == '0')
		return -EINVAL;
	for (; p < s + len; p++) {
		if (*p < '0' || *p > '9')
			return -EINVAL;
		port = port * 10 + (unsigned long)(*p - '0');
	}
	if (port == 0 || port > 65535)
		return -EINVAL;
	if (hlen + 1 > hostlen)
		return -EINVAL;
	memcpy(host_r, tmp, hlen + 1);
	*port_r = (uint16_t)port;
	return 0;
}

/* Writes a printable, shortened copy of s[0..len) for an error message. */
static const char *show(char out[SHOW_MAX + 4], const char *s, size_t len)
{
	size_t n = len > SHOW_MAX ? SHOW_MAX : len;
	for (size_t i = 0; i < n; i++)
		out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	if (n < len) {
		memcpy(out + n, "...", 4);
	} else {
		out[n] = '\0';
	}
	return out;
}

struct field {
	const char *s;
	size_t len;
};

/* Parses one line (without its newline).  Returns 1 and fills *peer for a peer line,
 * 0 for a blank or comment line, -EINVAL with err set for a bad one. */
static int parse_line(const char *s, size_t len, const char *fname, unsigned line,
                      struct mm_peer *peer, char *err, size_t errlen)
{
	struct field f[3];
	size_t nf = 0, i = 0;
	char shown[SHOW_MAX + 4];

	if (len > 0 && s[len - 1] == '\r') /* tolerate CRLF files */
		len--;
	for (size_t k = 0; k < len; k++) {
		unsigned char c = (unsigned char)s[k];
		if (c == '#') {
			len = k;
			break;
		}
		if ((c < 0x20 && c != '\t') || c >= 0x7f) {
			seterr(err, errlen, fname, line,
			       "unexpected byte 0x%02x at column %zu; the peers file is plain ASCII text",
			       c, k + 1);
			return -EINVAL;
		}
	}
	while (i < len) {
		while (i < len && (s[i] == ' ' || s[i] == '\t'))
			i++;
		if (i >= len)
			break;
		size_t start = i;
		while (i < len && s[i] != ' ' && s[i] != '\t')
			i++;
		if (nf == 3) {
			seterr(err, errlen, fname, line,
			       "too many fields (extra '%s'); expected `NAME HOST:PORT PUBLIC_KEY`",
			       show(shown, s + start, i - start));
			return -EINVAL;
		}
		f[nf].s = s + start;
		f[nf].len = i - start;
		nf++;
	}
	if (nf == 0)
		return 0;
	if (nf < 3) {
		seterr(err, errlen, fname, line,
		       "expected `NAME HOST:PORT PUBLIC_KEY`, found %zu field%s", nf, nf == 1 ? "" : "s");
		return -EINVAL;
	}
	memset(peer, 0, sizeof *peer);
	if (!mm_peer_name_valid(f[0].s, f[0].len)) {
		seterr(err, errlen, fname, line,
		       "bad peer name '%s': use 1 to %d characters of letters, digits, '.', '_' and '-'",
		       show(shown, f[0].s, f[0].len), MM_PEER_NAME_MAX);
		return -EINVAL;
	}
	memcpy(peer->name, f[0].s, f[0].len);
	peer->name[f[0].len] = '\0';
	if (mm_hostport_parse(f[1].s, f[1].len, peer->host, sizeof peer->host, &peer->port) != 0) {
		seterr(err, errlen, fname, line,
		       "bad address '%s': expected HOST:PORT with an IPv4 address, a host name or "
		       "an IPv6 address in brackets ([::1]:4000), port 1-65535",
		       show(shown, f[1].s, f[1].len));
		return -EINVAL;
	}
	if (mm_key_from_base64(f[2].s, f[2].len, peer->pub) != 0) {
		seterr(err, errlen, fname, line,
		       "bad public key '%s': expected the 44-character base64 printed by "
		       "`mailmesh pubkey`", show(shown, f[2].s, f[2].len));
		return -EINVAL;
	}
	peer->node_id = mm_node_id(peer->pub);
	peer->line = line;
	return 1;
}

static int check_duplicate(const struct mm_peers *p, const struct mm_peer *np, const char *fname,
                           char *err, size_t errlen)
{
	for (size_t k = 0; k < p->n; k++) {
		const struct mm_peer *o = &p->v[k];
		if (strcmp(o->name, np->name) == 0) {
			seterr(err, errlen, fname, np->line,
			       "duplicate peer name '%s' (first on line %u); give each node its own name",
			       np->name, o->line);
			return -EINVAL;
		}
		if (memcmp(o->pub, np->pub, 32) == 0) {
			seterr(err, errlen, fname, np->line,
			       "duplicate public key (already used by '%s' on line %u); each node needs "
			       "its own key (`mailmesh genkey`)", o->name, o->line);
			return -EINVAL;
		}
		if (o->node_id == np->node_id) { /* different keys, same 64-bit id: ~never */
			seterr(err, errlen, fname, np->line,
			       "node id of this key collides with '%s' on line %u; generate a new key",
			       o->name, o->line);
			return -EINVAL;
		}
	}
	return 0;
}

int mm_peers_parse(const char *buf, size_t len, const char *fname,
                   struct mm_peers **peers_r, char *err, size_t errlen)
{
	struct mm_peers *p;
	size_t cap = 0, pos = 0;
	unsigned line = 0;
	int rc;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (peers_r == NULL)
		return -EINVAL;
	*peers_r = NULL;
	if (fname == NULL)
		fname = "peers";
	if (buf == NULL && len > 0)
		return -EINVAL;
	p = calloc(1, sizeof *p);
	if (p == NULL)
		return -ENOMEM;
	while (pos < len) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		size_t llen = nl != NULL ? (size_t)(nl - (buf + pos)) : len - pos;
		struct mm_peer peer;

		line++;
		rc = parse_line(buf + pos, llen, fname, line, &peer, err, errlen);
		pos += llen + (nl != NULL ? 1 : 0);
		if (rc < 0)
			goto fail;
		if (rc == 0)
			continue;
		rc = check_duplicate(p, &peer, fname, err, errlen);
		if (rc < 0)
			goto fail;
		if (p->n == MM_PEERS_MAX) {
			seterr(err, errlen, fname, line, "too many peers (at most %d)", MM_PEERS_MAX);
			rc = -EINVAL;
			goto fail;
		}
		if (p->n == cap) {
			size_t ncap = cap ? cap * 2 : 8;
			struct mm_peer *nv = realloc(p->v, ncap * sizeof *nv);
			if (nv == NULL) {
				seterr(err, errlen, fname, line, "out of memory");
				rc = -ENOMEM;
				goto fail;
			}
			p->v = nv;
			cap = ncap;
		}
		p->v[p->n++] = peer;
	}
	*peers_r = p;
	return 0;
fail:
	mm_peers_free(&p);
	return rc;
}

void mm_peers_free(struct mm_peers **pp)
{
	if (pp == NULL || *pp == NULL)
		return;
	free((*pp)->v);
	free(*pp);
	*pp = NULL;
}

const struct mm_peer *mm_peers_find_name(const struct mm_peers *peers, const char *name)
{
	if (peers == NULL || name == NULL)
		return NULL;
	for (size_t i = 0; i < peers->n; i++)
		if (strcmp(peers->v[i].name, name) == 0)
			return &peers->v[i];
	return NULL;
}

const struct mm_peer *mm_peers_find_key(const struct mm_peers *peers, const uint8_t pub[32])
{
	if (peers == NULL || pub == NULL)
		return NULL;
	for (size_t i = 0; i < peers->n; i++)
		if (memcmp(peers->v[i].pub, pub, 32) == 0)
			return &peers->v[i];
	return NULL;
}

const struct mm_peer *mm_peers_find_node(const struct mm_peers *peers, uint64_t node_id)
{
	if (peers == NULL)
		return NULL;
	for (size_t i = 0; i < peers->n; i++)
		if (peers->v[i].node_id == node_id)
			return &peers->v[i];
	return NULL;
}
