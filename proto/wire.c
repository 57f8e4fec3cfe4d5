/*
 * wire.c — msgpack encoding (msgpack-c packer) and strict decoding (own bounds-checked
 * cursor) of the replication messages described in proto/wire.h.
 *
 * The decoder reads only the msgpack forms the encoder writes (positive ints, nil,
 * bool, str, bin, array; negative ints for reasons), checks every length against the
 * bytes left before touching or allocating anything, and rejects trailing bytes.
 * Elements a later version appends to a message's array (or to a record's pair) are
 * skipped whatever their msgpack type, and a message of a type this version does not
 * know is reported as such (-EOPNOTSUPP) once its array is found well formed: that is
 * what lets a cluster be upgraded one node at a time (docs/protocol.md,
 * "Compatibility").
 */
#include "proto/wire.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

/* ---- bounds-checked reader ---------------------------------------------------- */

struct rd {
	const uint8_t *p;
	const uint8_t *end;
};

static size_t rd_left(const struct rd *r)
{
	return (size_t)(r->end - r->p);
}

static int rd_be(struct rd *r, unsigned n, uint64_t *v_r)
{
	if (rd_left(r) < n)
		return -EBADMSG;
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | r->p[i];
	r->p += n;
	*v_r = v;
	return 0;
}

static int rd_u64(struct rd *r, uint64_t *v_r)
{
	if (rd_left(r) < 1)
		return -EBADMSG;
	uint8_t b = *r->p++;
	if (b <= 0x7f) {
		*v_r = b;
		return 0;
	}
	switch (b) {
	case 0xcc: return rd_be(r, 1, v_r);
	case 0xcd: return rd_be(r, 2, v_r);
	case 0xce: return rd_be(r, 4, v_r);
	case 0xcf: return rd_be(r, 8, v_r);
	default: return -EBADMSG;
	}
}

static int rd_uint_max(struct rd *r, uint64_t max, uint64_t *v_r)
{
	int rc = rd_u64(r, v_r);
	if (rc < 0)
		return rc;
	return *v_r > max ? -EBADMSG : 0;
}

/* A small signed int (reason codes): -4095..4095. */
static int rd_reason(struct rd *r, int *v_r)
{
	if (rd_left(r) < 1)
		return -EBADMSG;
	uint8_t b = *r->p;
	int64_t v;
	if (b <= 0x7f) {
		r->p++;
		v = b;
	} else if (b >= 0xe0) {
		r->p++;
		v = (int8_t)b;
	} else if (b == 0xd0 || b == 0xd1 || b == 0xd2) {
		r->p++;
		unsigned n = b == 0xd0 ? 1 : b == 0xd1 ? 2 : 4;
		uint64_t u;
		if (rd_be(r, n, &u) < 0)
			return -EBADMSG;
		v = n == 1 ? (int8_t)u : n == 2 ? (int16_t)u : (int32_t)u;
	} else {
		uint64_t u;
		if (rd_uint_max(r, 4095, &u) < 0)
			return -EBADMSG;
		v = (int64_t)u;
	}
	if (v < -4095 || v > 4095)
		return -EBADMSG;
	*v_r = (int)v;
	return 0;
}

static int rd_bool(struct rd *r, bool *v_r)
{
	if (rd_left(r) < 1)
		return -EBADMSG;
	uint8_t b = *r->p++;
	if (b == 0xc2 || b == 0xc3) {
		*v_r = b == 0xc3;
		return 0;
	}
	return -EBADMSG;
}

static bool rd_nil(struct rd *r)
{
	if (rd_left(r) >= 1 && *r->p == 0xc0) {
		r->p++;
		return true;
	}
	return false;
}

static int rd_array(struct rd *r, size_t *n_r)
{
	if (rd_left(r) < 1)
		return -EBADMSG;
	uint8_t b = *r->p++;
	uint64_t n;
	if ((b & 0xf0) == 0x90)
		n = b & 0x0f;
	else if (b == 0xdc) {
		if (rd_be(r, 2, &n) < 0)
			return -EBADMSG;
	} else if (b == 0xdd) {
		if (rd_be(r, 4, &n) < 0)
			return -EBADMSG;
	} else
		return -EBADMSG;
	/* every element takes at least one byte: caps the count by the input */
	if (n > rd_left(r))
		return -EBADMSG;
	*n_r = (size_t)n;
	return 0;
}

static int rd_bytes(struct rd *r, bool str, const uint8_t **p_r, size_t *len_r)
{
	if (rd_left(r) < 1)
		return -EBADMSG;
	uint8_t b = *r->p++;
	uint64_t n;
	if (str && (b & 0xe0) == 0xa0)
		n = b & 0x1f;
	else if (b == (str ? 0xd9 : 0xc4)) {
		if (rd_be(r, 1, &n) < 0)
			return -EBADMSG;
	} else if (b == (str ? 0xda : 0xc5)) {
		if (rd_be(r, 2, &n) < 0)
			return -EBADMSG;
	} else if (b == (str ? 0xdb : 0xc6)) {
		if (rd_be(r, 4, &n) < 0)
			return -EBADMSG;
	} else
		return -EBADMSG;
	if (n > rd_left(r))
		return -EBADMSG;
	*p_r = r->p;
	*len_r = (size_t)n;
	r->p += n;
	return 0;
}

static int rd_bin(struct rd *r, const uint8_t **p_r, size_t *len_r)
{
	return rd_bytes(r, false, p_r, len_r);
}

static int rd_bin_exact(struct rd *r, size_t want, const uint8_t **p_r)
{
	size_t len;
	int rc = rd_bin(r, p_r, &len);
	if (rc < 0)
		return rc;
	return len == want ? 0 : -EBADMSG;
}

/* Skips n whole msgpack objects of any type (the fields a later version appended).
 * Iterative, so nesting costs no stack; every object takes at least one byte, so a
 * count of objects still to skip above the bytes left is malformed, which also bounds
 * the count.  0xc1 (never used by msgpack) is malformed. */
static int rd_skip(struct rd *r, uint64_t n)
{
	while (n > 0) {
		if (n > rd_left(r))
			return -EBADMSG;
		uint8_t b = *r->p++;
		uint64_t len = 0, items = 0, v;
		unsigned lb = 0; /* bytes of a big-endian length that follows */
		n--;
		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
			continue;
		if (b <= 0x8f)
			items = 2u * (b & 0x0f);         /* fixmap: keys and values */
		else if (b <= 0x9f)
			items = b & 0x0f;                /* fixarray */
		else if (b <= 0xbf)
			len = b & 0x1f;                  /* fixstr */
		else {
			switch (b) {
			case 0xc4: case 0xd9: lb = 1; break;            /* bin8, str8 */
			case 0xc5: case 0xda: lb = 2; break;            /* bin16, str16 */
			case 0xc6: case 0xdb: lb = 4; break;            /* bin32, str32 */
			case 0xc7: lb = 1; len = 1; break;              /* ext8: + its type */
			case 0xc8: lb = 2; len = 1; break;              /* ext16 */
			case 0xc9: lb = 4; len = 1; break;              /* ext32 */
			case 0xca: len = 4; break;                      /* float32 */
			case 0xcb: len = 8; break;                      /* float64 */
			case 0xcc: case 0xd0: len = 1; break;           /* (u)int8 */
			case 0xcd: case 0xd1: len = 2; break;
			case 0xce: case 0xd2: len = 4; break;
			case 0xcf: case 0xd3: len = 8; break;
			case 0xd4: len = 2; break;                      /* fixext1 + type */
			case 0xd5: len = 3; break;
			case 0xd6: len = 5; break;
			case 0xd7: len = 9; break;
			case 0xd8: len = 17; break;
			case 0xdc: case 0xde:                           /* array16, map16 */
			case 0xdd: case 0xdf:                           /* array32, map32 */
				if (rd_be(r, b == 0xdc || b == 0xde ? 2 : 4, &v) < 0)
					return -EBADMSG;
				items = b >= 0xde ? 2 * v : v;
				break;
			default:
				return -EBADMSG;
			}
		}
		if (lb) {
			if (rd_be(r, lb, &v) < 0)
				return -EBADMSG;
			len += v;
		}
		if (len > rd_left(r))
			return -EBADMSG;
		r->p += len;
		n += items;
	}
	return 0;
}

/* A user name: str of 1..MM_NAME_MAX bytes without NUL, copied NUL-terminated. */
static int rd_name(struct rd *r, struct mm_arena *a, const char **s_r)
{
	const uint8_t *p;
	size_t len;
	int rc = rd_bytes(r, true, &p, &len);
	if (rc < 0)
		return rc;
	if (len == 0 || len > MM_NAME_MAX || memchr(p, 0, len))
		return -EBADMSG;
	char *s = mm_arena_alloc(a, len + 1);
	if (!s)
		return -ENOMEM;
	memcpy(s, p, len);
	s[len] = 0;
	*s_r = s;
	return 0;
}

/* ---- decoder -------------------------------------------------------------------- */

static int dec_header(struct rd *r, struct mm_wire_msg *m, size_t *n_r)
{
	size_t n;
	uint64_t v, t;
	if (rd_array(r, &n) < 0 || n < 2)
		return -EBADMSG;
	if (rd_u64(r, &v) < 0)
		return -EBADMSG;
	m->version = v > 0xffff ? 0xffff : (unsigned)v;
	if (v != MM_WIRE_VERSION)
		return -EPROTONOSUPPORT;
	if (rd_u64(r, &t) < 0 || t == 0)
		return -EBADMSG;
	*n_r = n;
	if (t > MM_MSG_TYPE_MAX) {
		/* a later version's message: well formed if its fields are, and then
		 * nothing more than unknown */
		m->type = 0;
		return rd_skip(r, n - 2) < 0 || r->p != r->end ? -EBADMSG : -EOPNOTSUPP;
	}
	m->type = (enum mm_msg_type)t;
	return 0;
}

static int dec_records(struct rd *r, struct mm_wire_msg *m, struct mm_arena *a)
{
	uint64_t flags;
	size_t n;
	int rc;
	if (rd_uint_max(r, UINT32_MAX, &flags) < 0)
		return -EBADMSG;
	m->records.flags = (uint32_t)flags;
	if ((rc = rd_name(r, a, &m->records.user)) < 0)
		return rc;
	if (rd_array(r, &n) < 0 || n > MM_WIRE_MAX_RECS)
		return -EBADMSG;
	m->records.n = n;
	m->records.recs = NULL;
	if (n) {
		m->records.recs = mm_arena_alloc(a, n * sizeof *m->records.recs);
		if (!m->records.recs)
			return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		struct mm_wire_rec *w = &m->records.recs[i];
		size_t k, len;
		const uint8_t *p;
		if (rd_array(r, &k) < 0 || k < 2)
			return -EBADMSG;
		if (rd_bin(r, &p, &len) < 0)
			return -EBADMSG;
		rc = mm_rec_decode(p, len, &w->rec, a);
		if (rc < 0)
			return rc == -ENOMEM ? rc : -EBADMSG;
		if (rd_nil(r)) {
			w->body = NULL;
			w->body_len = 0;
		} else {
			if (rd_bin(r, &w->body, &w->body_len) < 0)
				return -EBADMSG;
			if (w->rec.type != MM_REC_MESSAGE || w->body_len != w->rec.msg.size)
				return -EBADMSG;
		}
		if (rd_skip(r, k - 2) < 0)
			return -EBADMSG;
	}
	return 0;
}

int mm_wire_decode(const uint8_t *buf, size_t len, struct mm_wire_msg *m, struct mm_arena *a)
{
	struct rd r = { buf, buf + len };
	size_t n, known = 0;
	int rc;
	m->version = 0;
	if (!buf && len)
		return -EBADMSG;
	if ((rc = dec_header(&r, m, &n)) < 0)
		return rc;
	switch (m->type) {
	case MM_MSG_DIGEST:
		/* 6 elements: a sender without the lead fields (they came later); 10: with
		 * the GC bound; more: a later version's fields after those, skipped */
		m->digest.lead_id = m->digest.lead_beat = m->digest.gc_bound = m->digest.gc_members = 0;
		if (n < 6 || n == 7 || n == 9 || rd_u64(&r, &m->digest.seq) < 0 ||
		    rd_bool(&r, &m->digest.reply) < 0 ||
		    rd_bin_exact(&r, MM_HASH_LEN, &m->digest.root) < 0 ||
		    rd_u64(&r, &m->digest.n_users) < 0)
			return -EBADMSG;
		if (n >= 8 && (rd_u64(&r, &m->digest.lead_id) < 0 || rd_u64(&r, &m->digest.lead_beat) < 0))
			return -EBADMSG;
		if (n >= 10 && (rd_u64(&r, &m->digest.gc_bound) < 0 || rd_u64(&r, &m->digest.gc_members) < 0))
			return -EBADMSG;
		known = n < 10 ? n : 10;
		break;
	case MM_MSG_START:
		known = 5;
		if (n < known || rd_u64(&r, &m->start.round) < 0 ||
		    rd_bin_exact(&r, MM_WIRE_NONCE_LEN, &m->start.nonce) < 0 ||
		    rd_bin(&r, &m->start.summary, &m->start.summary_len) < 0)
			return -EBADMSG;
		break;
	case MM_MSG_DESCENT: {
		size_t k;
		known = 5;
		if (n < known || rd_u64(&r, &m->descent.round) < 0 || rd_bool(&r, &m->descent.more) < 0 ||
		    rd_array(&r, &k) < 0 ||
		    k > MM_WIRE_MAX_ELEMS)
			return -EBADMSG;
		m->descent.n = k;
		m->descent.elems = NULL;
		if (k) {
			m->descent.elems = mm_arena_alloc(a, k * sizeof *m->descent.elems);
			if (!m->descent.elems)
				return -ENOMEM;
		}
		for (size_t i = 0; i < k; i++) {
			struct mm_wire_elem *e = &m->descent.elems[i];
			uint8_t b = r.p < r.end ? *r.p : 0xc1;
			if (b == 0xc4 || b == 0xc5 || b == 0xc6) {
				e->is_bin = true;
				e->bitmap = 0;
				if (rd_bin(&r, &e->bin, &e->bin_len) < 0)
					return -EBADMSG;
			} else {
				uint64_t v;
				if (rd_uint_max(&r, 0xffff, &v) < 0)
					return -EBADMSG;
				e->is_bin = false;
				e->bitmap = (uint16_t)v;
				e->bin = NULL;
				e->bin_len = 0;
			}
		}
		break;
	}
	case MM_MSG_END:
		known = 3;
		if (n < known || rd_u64(&r, &m->end.round) < 0)
			return -EBADMSG;
		m->end.reason = 0;
		break;
	case MM_MSG_ABORT:
		known = 4;
		if (n < known || rd_u64(&r, &m->end.round) < 0 || rd_reason(&r, &m->end.reason) < 0)
			return -EBADMSG;
		break;
	case MM_MSG_RECORDS:
		known = 5;
		if (n < known)
			return -EBADMSG;
		if ((rc = dec_records(&r, m, a)) < 0)
			return rc;
		break;
	case MM_MSG_GET_BODY:
		known = 7;
		if (n < known || rd_u64(&r, &m->get_body.req) < 0)
			return -EBADMSG;
		if ((rc = rd_name(&r, a, &m->get_body.user)) < 0)
			return rc;
		if (rd_bin_exact(&r, MM_ID_LEN, &m->get_body.id) < 0 || rd_u64(&r, &m->get_body.offset) < 0 ||
		    rd_u64(&r, &m->get_body.size) < 0 || m->get_body.offset > m->get_body.size)
			return -EBADMSG;
		break;
	case MM_MSG_BODY:
		known = 6;
		if (n < known || rd_u64(&r, &m->body.req) < 0 || rd_u64(&r, &m->body.offset) < 0 ||
		    rd_u64(&r, &m->body.total) < 0 || rd_bin(&r, &m->body.data, &m->body.len) < 0)
			return -EBADMSG;
		if (m->body.offset > m->body.total || m->body.len > m->body.total - m->body.offset)
			return -EBADMSG;
		break;
	case MM_MSG_BODY_ERR:
		known = 4;
		if (n < known || rd_u64(&r, &m->body_err.req) < 0 || rd_reason(&r, &m->body_err.reason) < 0)
			return -EBADMSG;
		break;
	default:
		return -EBADMSG;
	}
	if (rd_skip(&r, n - known) < 0)
		return -EBADMSG;
	return r.p == r.end ? 0 : -EBADMSG;
}

int mm_wire_peek_type(const uint8_t *buf, size_t len)
{
	struct rd r = { buf, buf + len };
	struct mm_wire_msg m;
	size_t n;
	if (!buf)
		return -EBADMSG;
	int rc = dec_header(&r, &m, &n);
	return rc < 0 ? rc : (int)m.type;
}

/* ---- output buffer ------------------------------------------------------------- */

#define WBUF_FIRST 8192 /* msgpack-c's sbuffer's first size: the same growth as before */

void mm_wbuf_init(struct mm_wbuf *b)
{
	memset(b, 0, sizeof *b);
}

int mm_wbuf_write(void *arg, const char *p, size_t len)
{
	struct mm_wbuf *b = arg;
	if (!p || !len)
		return 0;
	if (b->alloc - b->size < len) {
		size_t cap = b->alloc ? b->alloc : WBUF_FIRST;
		while (cap - b->size < len) {
			if (cap > SIZE_MAX / 2)
				return -1;
			cap *= 2;
		}
		/* malloc + copy + wipe instead of realloc: realloc would free the old
		 * block, with the messages it held, as it was */
		char *d = malloc(cap);
		if (!d)
			return -1;
		if (b->size)
			memcpy(d, b->data, b->size);
		if (b->data) {
			sodium_memzero(b->data, b->used > b->size ? b->used : b->size);
			free(b->data);
		}
		b->data = d;
		b->alloc = cap;
		b->used = b->size;
	}
	memcpy(b->data + b->size, p, len);
	b->size += len;
	if (b->size > b->used)
		b->used = b->size;
	return 0;
}

void mm_wbuf_free(struct mm_wbuf *b)
{
	if (b->data) {
		sodium_memzero(b->data, b->used > b->size ? b->used : b->size);
		free(b->data);
	}
	memset(b, 0, sizeof *b);
}

/* ---- encoders ----------------------------------------------------------------- */

/* msgpack-c's packer reports allocation failure through the write callback's return. */
#define PK(expr) do { if ((expr) != 0) return -ENOMEM; } while (0)

static int enc_head(msgpack_packer *pk, size_t n, enum mm_msg_type t)
{
	PK(msgpack_pack_array(pk, n));
	PK(msgpack_pack_uint8(pk, MM_WIRE_VERSION));
	PK(msgpack_pack_uint8(pk, (uint8_t)t));
	return 0;
}

static int pk_bin(msgpack_packer *pk, const void *p, size_t len)
{
	PK(msgpack_pack_bin(pk, len));
	if (len)
		PK(msgpack_pack_bin_body(pk, p, len));
	return 0;
}

static int pk_name(msgpack_packer *pk, const char *s)
{
	size_t len = s ? strlen(s) : 0;
	if (len == 0 || len > MM_NAME_MAX)
		return -EINVAL;
	PK(msgpack_pack_str(pk, len));
	PK(msgpack_pack_str_body(pk, s, len));
	return 0;
}

#define PACKER(sb) msgpack_packer pk_; msgpack_packer *pk = &pk_; \
	msgpack_packer_init(pk, (sb), mm_wbuf_write)
#define TRY(expr) do { int rc_ = (expr); if (rc_ < 0) return rc_; } while (0)

int mm_wire_enc_digest(struct mm_wbuf *sb, uint64_t seq, bool reply,
                       const uint8_t root[MM_HASH_LEN], uint64_t n_users, uint64_t lead_id,
                       uint64_t lead_beat, uint64_t gc_bound, uint64_t gc_members)
{
	PACKER(sb);
	/* none: the 6-element form, 18 bytes less; the bound needs the lead fields */
	bool lead = lead_id || lead_beat || gc_bound;
	TRY(enc_head(pk, gc_bound ? 10 : lead ? 8 : 6, MM_MSG_DIGEST));
	PK(msgpack_pack_uint64(pk, seq));
	PK(reply ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
	TRY(pk_bin(pk, root, MM_HASH_LEN));
	PK(msgpack_pack_uint64(pk, n_users));
	if (lead) {
		PK(msgpack_pack_uint64(pk, lead_id));
		PK(msgpack_pack_uint64(pk, lead_beat));
	}
	if (gc_bound) {
		PK(msgpack_pack_uint64(pk, gc_bound));
		PK(msgpack_pack_uint64(pk, gc_members));
	}
	return 0;
}

int mm_wire_enc_start(struct mm_wbuf *sb, uint64_t round, const uint8_t nonce[MM_WIRE_NONCE_LEN],
                      const uint8_t *summary, size_t summary_len)
{
	PACKER(sb);
	TRY(enc_head(pk, 5, MM_MSG_START));
	PK(msgpack_pack_uint64(pk, round));
	TRY(pk_bin(pk, nonce, MM_WIRE_NONCE_LEN));
	TRY(pk_bin(pk, summary, summary_len));
	return 0;
}

int mm_wire_enc_descent_begin(struct mm_wbuf *sb, uint64_t round, bool more, size_t n)
{
	if (n > MM_WIRE_MAX_ELEMS)
		return -EINVAL;
	PACKER(sb);
	TRY(enc_head(pk, 5, MM_MSG_DESCENT));
	PK(msgpack_pack_uint64(pk, round));
	PK(more ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
	PK(msgpack_pack_array(pk, n));
	return 0;
}

int mm_wire_enc_elem_bitmap(struct mm_wbuf *sb, uint16_t bitmap)
{
	PACKER(sb);
	PK(msgpack_pack_uint16(pk, bitmap));
	return 0;
}

int mm_wire_enc_elem_bin(struct mm_wbuf *sb, const uint8_t *bin, size_t len)
{
	PACKER(sb);
	return pk_bin(pk, bin, len);
}

int mm_wire_enc_end(struct mm_wbuf *sb, uint64_t round)
{
	PACKER(sb);
	TRY(enc_head(pk, 3, MM_MSG_END));
	PK(msgpack_pack_uint64(pk, round));
	return 0;
}

int mm_wire_enc_abort(struct mm_wbuf *sb, uint64_t round, int reason)
{
	if (reason < -4095 || reason > 4095)
		return -EINVAL;
	PACKER(sb);
	TRY(enc_head(pk, 4, MM_MSG_ABORT));
	PK(msgpack_pack_uint64(pk, round));
	PK(msgpack_pack_int(pk, reason));
	return 0;
}

int mm_wire_enc_records_begin(struct mm_wbuf *sb, uint32_t flags, const char *user, size_t n)
{
	if (n > MM_WIRE_MAX_RECS)
		return -EINVAL;
	PACKER(sb);
	TRY(enc_head(pk, 5, MM_MSG_RECORDS));
	PK(msgpack_pack_uint32(pk, flags));
	TRY(pk_name(pk, user));
	PK(msgpack_pack_array(pk, n));
	return 0;
}

int mm_wire_enc_rec(struct mm_wbuf *sb, const struct mm_rec *r, const uint8_t *body, size_t body_len)
{
	uint8_t stack[1024];
	ssize_t need = mm_rec_encode(r, NULL, 0);
	if (need < 0)
		return need == -ENOSPC ? -EINVAL : (int)need;
	if (body && (r->type != MM_REC_MESSAGE || body_len != r->msg.size))
		return -EINVAL;
	uint8_t *buf = stack;
	if ((size_t)need > sizeof stack) {
		buf = malloc((size_t)need);
		if (!buf)
			return -ENOMEM;
	}
	ssize_t got = mm_rec_encode(r, buf, (size_t)need);
	int rc = 0;
	if (got != need) {
		rc = got < 0 ? (int)got : -EINVAL;
		goto out;
	}
	PACKER(sb);
	if (msgpack_pack_array(pk, 2) != 0 || pk_bin(pk, buf, (size_t)need) < 0) {
		rc = -ENOMEM;
		goto out;
	}
	if (body)
		rc = pk_bin(pk, body, body_len);
	else if (msgpack_pack_nil(pk) != 0)
		rc = -ENOMEM;
out:
	/* the record's encoding holds its keywords and folder name: a heap copy (a
	 * record of many keywords) is wiped before it goes (the stack one is reused) */
	if (buf != stack) {
		sodium_memzero(buf, (size_t)need);
		free(buf);
	}
	return rc;
}

ssize_t mm_wire_rec_size(const struct mm_rec *r, size_t body_len)
{
	ssize_t need = mm_rec_encode(r, NULL, 0);
	if (need < 0)
		return need == -ENOSPC ? -EINVAL : need;
	return 1 + 5 + need + 5 + (ssize_t)body_len;
}

int mm_wire_enc_get_body(struct mm_wbuf *sb, uint64_t req, const char *user,
                         const uint8_t id[MM_ID_LEN], uint64_t offset, uint64_t size)
{
	if (offset > size)
		return -EINVAL;
	PACKER(sb);
	TRY(enc_head(pk, 7, MM_MSG_GET_BODY));
	PK(msgpack_pack_uint64(pk, req));
	TRY(pk_name(pk, user));
	TRY(pk_bin(pk, id, MM_ID_LEN));
	PK(msgpack_pack_uint64(pk, offset));
	PK(msgpack_pack_uint64(pk, size));
	return 0;
}

int mm_wire_enc_body(struct mm_wbuf *sb, uint64_t req, uint64_t offset, uint64_t total,
                     const uint8_t *data, size_t len)
{
	if (offset > total || len > total - offset)
		return -EINVAL;
	PACKER(sb);
	TRY(enc_head(pk, 6, MM_MSG_BODY));
	PK(msgpack_pack_uint64(pk, req));
	PK(msgpack_pack_uint64(pk, offset));
	PK(msgpack_pack_uint64(pk, total));
	TRY(pk_bin(pk, data, len));
	return 0;
}

int mm_wire_enc_body_err(struct mm_wbuf *sb, uint64_t req, int reason)
{
	if (reason < -4095 || reason > 4095)
		return -EINVAL;
	PACKER(sb);
	TRY(enc_head(pk, 4, MM_MSG_BODY_ERR));
	PK(msgpack_pack_uint64(pk, req));
	PK(msgpack_pack_int(pk, reason));
	return 0;
}
