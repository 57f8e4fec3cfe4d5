/*
 * codec.c — the canonical binary encoding of one record (hashed for the Merkle
 * leaves, persisted by node/), its bounds-checked decoder for untrusted bytes, the
 * record validator, and the bump arena decoded strings live in.
 *
 * Layout (big-endian, no padding; see docs/design.md):
 *   type u8 | key[16] | body by type:
 *   MESSAGE  body[32] | folder: len u8, bytes | size u64 | internaldate u64 |
 *            created: t u64, node u64 | mask u8 (bit f < 6: flag f written, bit 6:
 *            uid written, bit 7: uid need present) | per written flag, ascending:
 *            value u8, t, node | if uid written: uid u32, t, node | if need: need u32
 *            (non-zero) | n u16 | n x (len u8, name, value u8, t, node)
 *   EXPUNGED t, node
 *   FOLDER   name: len u8, bytes | mask u8 (bit 0 exists, bit 1 subscribed, bit 2
 *            explicit UIDVALIDITY) | regs | if bit 2: uidvalidity u32 (non-zero, not the
 *            one the exists stamp gives)
 *   HORIZON  t, node
 * A register is "written" when its stamp is not {0,0}; only written ones are encoded,
 * so one record has exactly one encoding.
 */
#include "crdt/crdt.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

/* ---- arena ------------------------------------------------------------------- */

struct mm_arena_chunk {
	struct mm_arena_chunk *next;
	size_t cap, used;
	size_t used_max; /* the most bytes handed out before a reset: what is wiped */
	_Alignas(16) uint8_t data[];
};

void mm_arena_init(struct mm_arena *a)
{
	a->head = NULL;
	a->wipe = false;
}

void mm_arena_init_wiped(struct mm_arena *a)
{
	a->head = NULL;
	a->wipe = true;
}

static void chunk_free(const struct mm_arena *a, struct mm_arena_chunk *c)
{
	if (a->wipe)
		sodium_memzero(c->data, c->used > c->used_max ? c->used : c->used_max);
	free(c);
}

void *mm_arena_alloc(struct mm_arena *a, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	if (n == 0)
		n = 16;
	struct mm_arena_chunk *c = a->head;
	if (!c || c->cap - c->used < n) {
		size_t cap = n > 4000 ? n : 4000;
		c = malloc(sizeof *c + cap);
		if (!c)
			return NULL;
		c->cap = cap;
		c->used = 0;
		c->used_max = 0;
		c->next = a->head;
		a->head = c;
	}
	void *p = c->data + c->used;
	c->used += n;
	return p;
}

void mm_arena_reset(struct mm_arena *a)
{
	struct mm_arena_chunk *c = a->head;
	if (!c)
		return;
	struct mm_arena_chunk *keep = c;
	c = c->next;
	while (c) {
		struct mm_arena_chunk *n = c->next;
		chunk_free(a, c);
		c = n;
	}
	keep->next = NULL;
	if (keep->used > keep->used_max)
		keep->used_max = keep->used;
	keep->used = 0;
	a->head = keep;
}

void mm_arena_free(struct mm_arena *a)
{
	struct mm_arena_chunk *c = a->head;
	while (c) {
		struct mm_arena_chunk *n = c->next;
		chunk_free(a, c);
		c = n;
	}
	a->head = NULL;
}

/* ---- validation -------------------------------------------------------------- */

static bool stamp_zero(mm_hlc s)
{
	return s.t == 0 && s.node == 0;
}

/* 1..MM_NAME_MAX bytes, no control characters; folder names no '/' (a path
 * separator on disk), keywords no space (IMAP atoms; '/' is a valid atom char). */
static bool name_ok(const char *s, bool keyword)
{
	if (!s)
		return false;
	size_t n = 0;
	for (; s[n]; n++) {
		unsigned char ch = (unsigned char)s[n];
		if (n >= MM_NAME_MAX || ch < 0x20 || ch == 0x7f || (keyword ? ch == ' ' : ch == '/'))
			return false;
	}
	return n > 0;
}

static bool reg_ok(const struct mm_reg *r)
{
	if (r->value > 1)
		return false;
	return !stamp_zero(r->stamp) || r->value == 0;
}

int mm_rec_validate(const struct mm_rec *r)
{
	uint8_t k[MM_KEY_LEN];
	if (!r)
		return -EINVAL;
	switch (r->type) {
	case MM_REC_MESSAGE:
		if (!name_ok(r->msg.folder, false))
			return -EINVAL;
		mm_key_message(&r->msg.created, k);
		if (memcmp(k, r->key, MM_KEY_LEN))
			return -EINVAL;
		for (int f = 0; f < MM_FLAG_COUNT; f++)
			if (!reg_ok(&r->msg.flags[f]))
				return -EINVAL;
		if (r->msg.uid.value != 0 || (stamp_zero(r->msg.uid.stamp) && r->msg.uid_value))
			return -EINVAL;
		if (r->msg.n_keywords > 65535 || (r->msg.n_keywords && !r->msg.keywords))
			return -EINVAL;
		for (size_t i = 0; i < r->msg.n_keywords; i++) {
			const struct mm_kwreg *kw = &r->msg.keywords[i];
			if (!name_ok(kw->name, true) || !reg_ok(&kw->reg) || stamp_zero(kw->reg.stamp))
				return -EINVAL;
			if (i && strcmp(r->msg.keywords[i - 1].name, kw->name) >= 0)
				return -EINVAL;
		}
		return 0;
	case MM_REC_EXPUNGED:
		return 0;
	case MM_REC_FOLDER:
		if (!name_ok(r->folder.name, false))
			return -EINVAL;
		mm_key_folder(r->folder.name, k);
		if (memcmp(k, r->key, MM_KEY_LEN))
			return -EINVAL;
		if (!reg_ok(&r->folder.exists) || !reg_ok(&r->folder.subscribed))
			return -EINVAL;
		return 0;
	case MM_REC_HORIZON:
		mm_key_horizon(k);
		return memcmp(k, r->key, MM_KEY_LEN) ? -EINVAL : 0;
	}
	return -EINVAL;
}

/* ---- encoder ------------------------------------------------------------------
 * One encoder writes to a bounded buffer or streams into a BLAKE2b state, so
 * hashing needs no allocation whatever the record's size. */

struct sink {
	uint8_t *buf;
	size_t cap, len; /* len counts every byte, even past cap */
	crypto_generichash_state *h;
	uint8_t tmp[512];
	size_t tlen;
};

static void put(struct sink *s, const void *p, size_t n)
{
	if (s->h) {
		if (s->tlen + n > sizeof s->tmp) {
			crypto_generichash_update(s->h, s->tmp, s->tlen);
			s->tlen = 0;
		}
		if (n > sizeof s->tmp) {
			crypto_generichash_update(s->h, p, n);
		} else {
			memcpy(s->tmp + s->tlen, p, n);
			s->tlen += n;
		}
	} else if (s->buf && s->len + n <= s->cap) {
		memcpy(s->buf + s->len, p, n);
	}
	s->len += n;
}

static void put_u8(struct sink *s, uint8_t v)
{
	put(s, &v, 1);
}

static void put_u16(struct sink *s, uint16_t v)
{
	uint8_t b[2] = { (uint8_t)(v >> 8), (uint8_t)v };
	put(s, b, 2);
}

static void put_u32(struct sink *s, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
	put(s, b, 4);
}

static void put_u64(struct sink *s, uint64_t v)
{
	uint8_t b[8];
	for (int i = 7; i >= 0; i--) {
		b[i] = (uint8_t)v;
		v >>= 8;
	}
	put(s, b, 8);
}

static void put_hlc(struct sink *s, mm_hlc h)
{
	put_u64(s, h.t);
	put_u64(s, h.node);
}

static int put_name(struct sink *s, const char *name)
{
	if (!name)
		return -EINVAL;
	size_t n = strnlen(name, MM_NAME_MAX + 1);
	if (n > MM_NAME_MAX)
		return -EINVAL;
	put_u8(s, (uint8_t)n);
	put(s, name, n);
	return 0;
}

static int encode(const struct mm_rec *r, struct sink *s)
{
	put_u8(s, (uint8_t)r->type);
	put(s, r->key, MM_KEY_LEN);
	switch (r->type) {
	case MM_REC_MESSAGE: {
		put(s, r->msg.body, MM_ID_LEN);
		if (put_name(s, r->msg.folder))
			return -EINVAL;
		put_u64(s, r->msg.size);
		put_u64(s, (uint64_t)r->msg.internaldate);
		put_hlc(s, r->msg.created);
		uint8_t mask = 0;
		for (int f = 0; f < MM_FLAG_COUNT; f++)
			if (!stamp_zero(r->msg.flags[f].stamp))
				mask |= (uint8_t)(1u << f);
		if (!stamp_zero(r->msg.uid.stamp))
			mask |= 1u << 6;
		if (r->msg.uid_need)
			mask |= 1u << 7;
		put_u8(s, mask);
		for (int f = 0; f < MM_FLAG_COUNT; f++) {
			if (mask & (1u << f)) {
				put_u8(s, r->msg.flags[f].value);
				put_hlc(s, r->msg.flags[f].stamp);
			}
		}
		if (mask & (1u << 6)) {
			put_u32(s, r->msg.uid_value);
			put_hlc(s, r->msg.uid.stamp);
		}
		if (mask & (1u << 7))
			put_u32(s, r->msg.uid_need);
		if (r->msg.n_keywords > 65535 || (r->msg.n_keywords && !r->msg.keywords))
			return -EINVAL;
		put_u16(s, (uint16_t)r->msg.n_keywords);
		for (size_t i = 0; i < r->msg.n_keywords; i++) {
			if (put_name(s, r->msg.keywords[i].name))
				return -EINVAL;
			put_u8(s, r->msg.keywords[i].reg.value);
			put_hlc(s, r->msg.keywords[i].reg.stamp);
		}
		return 0;
	}
	case MM_REC_EXPUNGED:
		put_hlc(s, r->tomb.stamp);
		return 0;
	case MM_REC_FOLDER: {
		if (put_name(s, r->folder.name))
			return -EINVAL;
		/* an explicit UIDVALIDITY only when it is not the one the stamp gives, so a
		 * record has one encoding whichever way it was built */
		uint32_t uv = r->folder.uidvalidity;
		bool uv_x = uv && !stamp_zero(r->folder.exists.stamp) && uv != mm_folder_uidvalidity(r->folder.exists.stamp);
		uint8_t mask = (uint8_t)((stamp_zero(r->folder.exists.stamp) ? 0 : 1) |
		                         (stamp_zero(r->folder.subscribed.stamp) ? 0 : 2) | (uv_x ? 4 : 0));
		put_u8(s, mask);
		if (mask & 1) {
			put_u8(s, r->folder.exists.value);
			put_hlc(s, r->folder.exists.stamp);
		}
		if (mask & 2) {
			put_u8(s, r->folder.subscribed.value);
			put_hlc(s, r->folder.subscribed.stamp);
		}
		if (mask & 4)
			put_u32(s, uv);
		return 0;
	}
	case MM_REC_HORIZON:
		put_hlc(s, r->horizon.stamp);
		return 0;
	}
	return -EINVAL;
}

ssize_t mm_rec_encode(const struct mm_rec *r, uint8_t *buf, size_t cap)
{
	if (!r)
		return -EINVAL;
	if (!buf)
		cap = 0;
	struct sink s = { .buf = buf, .cap = cap };
	int rc = encode(r, &s);
	if (rc)
		return rc;
	if (s.len > (size_t)SSIZE_MAX)
		return -EINVAL;
	if (cap && s.len > cap)
		return -ENOSPC;
	return (ssize_t)s.len; /* written, or the size when asked with cap 0 */
}

void mm_rec_hash(const struct mm_rec *r, uint8_t hash_r[MM_HASH_LEN])
{
	crypto_generichash_state st;
	struct sink s = { .h = &st };
	crypto_generichash_init(&st, NULL, 0, MM_HASH_LEN);
	if (encode(r, &s)) {
		/* Not encodable (never the case for a validated record): hash a marker so
		 * the result is still deterministic. */
		crypto_generichash(hash_r, MM_HASH_LEN, (const uint8_t *)"invalid", 7, NULL, 0);
		return;
	}
	if (s.tlen)
		crypto_generichash_update(&st, s.tmp, s.tlen);
	crypto_generichash_final(&st, hash_r, MM_HASH_LEN);
}

bool mm_rec_equal(const struct mm_rec *a, const struct mm_rec *b)
{
	if (a->type != b->type || memcmp(a->key, b->key, MM_KEY_LEN))
		return false;
	uint8_t ha[MM_HASH_LEN], hb[MM_HASH_LEN];
	mm_rec_hash(a, ha);
	mm_rec_hash(b, hb);
	return memcmp(ha, hb, MM_HASH_LEN) == 0;
}

/* ---- decoder ------------------------------------------------------------------
 * (cursor, end) helpers: each checks the bytes are there before reading. */

struct cur {
	const uint8_t *p, *end;
};

static bool get(struct cur *c, void *out, size_t n)
{
	if ((size_t)(c->end - c->p) < n)
		return false;
	memcpy(out, c->p, n);
	c->p += n;
	return true;
}

static bool get_u8(struct cur *c, uint8_t *v)
{
	return get(c, v, 1);
}

static bool get_u16(struct cur *c, uint16_t *v)
{
	uint8_t b[2];
	if (!get(c, b, 2))
		return false;
	*v = (uint16_t)(b[0] << 8 | b[1]);
	return true;
}

static bool get_u32(struct cur *c, uint32_t *v)
{
	uint8_t b[4];
	if (!get(c, b, 4))
		return false;
	*v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
	return true;
}

static bool get_u64(struct cur *c, uint64_t *v)
{
	uint8_t b[8];
	if (!get(c, b, 8))
		return false;
	uint64_t x = 0;
	for (int i = 0; i < 8; i++)
		x = x << 8 | b[i];
	*v = x;
	return true;
}

static bool get_hlc(struct cur *c, mm_hlc *h)
{
	return get_u64(c, &h->t) && get_u64(c, &h->node);
}

/* A written register: canonical only with a non-zero stamp. */
static bool get_reg(struct cur *c, struct mm_reg *r)
{
	return get_u8(c, &r->value) && get_hlc(c, &r->stamp) && !stamp_zero(r->stamp);
}

/* Name of 1..255 bytes copied NUL-terminated into the arena; the length byte is
 * checked against what is left before anything is allocated. */
static int get_name(struct cur *c, struct mm_arena *a, const char **out)
{
	uint8_t n;
	if (!get_u8(c, &n) || n == 0 || (size_t)(c->end - c->p) < n)
		return -EBADMSG;
	if (memchr(c->p, 0, n))
		return -EBADMSG;
	char *s = mm_arena_alloc(a, (size_t)n + 1);
	if (!s)
		return -ENOMEM;
	memcpy(s, c->p, n);
	s[n] = 0;
	c->p += n;
	*out = s;
	return 0;
}

int mm_rec_decode(const uint8_t *buf, size_t len, struct mm_rec *r_r, struct mm_arena *a)
{
	struct cur c = { buf, buf + len };
	struct mm_rec r;
	uint8_t type, mask;
	int rc;
	memset(&r, 0, sizeof r);
	if (!buf || !get_u8(&c, &type) || !get(&c, r.key, MM_KEY_LEN))
		return -EBADMSG;
	r.type = (enum mm_rec_type)type;
	switch (type) {
	case MM_REC_MESSAGE: {
		uint64_t idate;
		uint16_t nkw;
		if (!get(&c, r.msg.body, MM_ID_LEN))
			return -EBADMSG;
		if ((rc = get_name(&c, a, &r.msg.folder)))
			return rc;
		if (!get_u64(&c, &r.msg.size) || !get_u64(&c, &idate) || !get_hlc(&c, &r.msg.created) ||
		    !get_u8(&c, &mask))
			return -EBADMSG;
		r.msg.internaldate = (int64_t)idate;
		for (int f = 0; f < MM_FLAG_COUNT; f++)
			if ((mask & (1u << f)) && !get_reg(&c, &r.msg.flags[f]))
				return -EBADMSG;
		if (mask & (1u << 6)) {
			if (!get_u32(&c, &r.msg.uid_value) || !get_hlc(&c, &r.msg.uid.stamp) ||
			    stamp_zero(r.msg.uid.stamp))
				return -EBADMSG;
		}
		if ((mask & (1u << 7)) && (!get_u32(&c, &r.msg.uid_need) || !r.msg.uid_need))
			return -EBADMSG;
		if (!get_u16(&c, &nkw))
			return -EBADMSG;
		/* Each keyword takes at least 1 + 1 + 1 + 16 bytes: bound the count by
		 * what is left before allocating for it. */
		if ((size_t)nkw > (size_t)(c.end - c.p) / 19)
			return -EBADMSG;
		if (nkw) {
			struct mm_kwreg *kws = mm_arena_alloc(a, nkw * sizeof *kws);
			if (!kws)
				return -ENOMEM;
			for (size_t i = 0; i < nkw; i++) {
				if ((rc = get_name(&c, a, &kws[i].name)))
					return rc;
				if (!get_reg(&c, &kws[i].reg))
					return -EBADMSG;
			}
			r.msg.keywords = kws;
		}
		r.msg.n_keywords = nkw;
		break;
	}
	case MM_REC_EXPUNGED:
		if (!get_hlc(&c, &r.tomb.stamp))
			return -EBADMSG;
		break;
	case MM_REC_FOLDER:
		if ((rc = get_name(&c, a, &r.folder.name)))
			return rc;
		if (!get_u8(&c, &mask) || (mask & ~7u) || (mask & 5) == 4)
			return -EBADMSG;
		if ((mask & 1) && !get_reg(&c, &r.folder.exists))
			return -EBADMSG;
		if ((mask & 2) && !get_reg(&c, &r.folder.subscribed))
			return -EBADMSG;
		if (mask & 4) {
			/* canonical: present only when it differs from the value the exists
			 * stamp gives, and the encoder writes it only for a non-zero stamp */
			if (!get_u32(&c, &r.folder.uidvalidity) || !r.folder.uidvalidity ||
			    stamp_zero(r.folder.exists.stamp) ||
			    r.folder.uidvalidity == mm_folder_uidvalidity(r.folder.exists.stamp))
				return -EBADMSG;
		} else {
			r.folder.uidvalidity = mm_folder_uidvalidity(r.folder.exists.stamp);
		}
		break;
	case MM_REC_HORIZON:
		if (!get_hlc(&c, &r.horizon.stamp))
			return -EBADMSG;
		break;
	default:
		return -EBADMSG;
	}
	if (c.p != c.end)
		return -EBADMSG;
	if (mm_rec_validate(&r))
		return -EBADMSG;
	*r_r = r;
	return 0;
}
