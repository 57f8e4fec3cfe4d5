/*
 * test_wire.c — proto/wire: every message type round-trips, also with fields a later
 * version may append; every truncation, many corruptions and an unknown version are
 * rejected cleanly.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto/wire.h"

static struct mm_rec msg_rec(uint64_t t, struct mm_kwreg *kws, size_t nkw)
{
	struct mm_rec r;
	memset(&r, 0, sizeof r);
	r.type = MM_REC_MESSAGE;
	r.msg.created = (mm_hlc){ t << 16, 7 };
	mm_key_message(&r.msg.created, r.key);
	memset(r.msg.body, 0xab, MM_ID_LEN);
	r.msg.folder = "INBOX";
	r.msg.size = 5;
	r.msg.internaldate = 1700000000;
	r.msg.flags[MM_FLAG_SEEN] = (struct mm_reg){ 1, { (t + 1) << 16, 7 } };
	r.msg.keywords = kws;
	r.msg.n_keywords = nkw;
	r.msg.uid = (struct mm_reg){ 0, { (t + 2) << 16, 7 } };
	r.msg.uid_value = 42;
	return r;
}

/* Every encoded test message, with a checker for its decoded form. */
struct sample {
	struct mm_wbuf sb;
	enum mm_msg_type type;
};

static const uint8_t root[MM_HASH_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
static const uint8_t nonce[MM_WIRE_NONCE_LEN] = { 9, 9, 9 };
static const uint8_t summary[] = { 'E', 1, 2, 3, 4 };
static const uint8_t body[] = "hello";

static size_t make_samples(struct sample *s)
{
	size_t n = 0;
	struct mm_kwreg kws[2] = { { "$Junk", { 1, { 5 << 16, 7 } } }, { "work", { 0, { 6 << 16, 8 } } } };
	for (size_t i = 0; i < 9; i++)
		mm_wbuf_init(&s[i].sb);
	assert_int_equal(mm_wire_enc_digest(&s[n].sb, 77, true, root, 3, 5, 1234567, 88, 99), 0);
	s[n++].type = MM_MSG_DIGEST;
	assert_int_equal(mm_wire_enc_start(&s[n].sb, 1234567, nonce, summary, sizeof summary), 0);
	s[n++].type = MM_MSG_START;
	assert_int_equal(mm_wire_enc_descent_begin(&s[n].sb, 99, true, 3), 0);
	assert_int_equal(mm_wire_enc_elem_bitmap(&s[n].sb, 0x8001), 0);
	assert_int_equal(mm_wire_enc_elem_bin(&s[n].sb, summary, sizeof summary), 0);
	assert_int_equal(mm_wire_enc_elem_bitmap(&s[n].sb, 3), 0);
	s[n++].type = MM_MSG_DESCENT;
	assert_int_equal(mm_wire_enc_end(&s[n].sb, 99), 0);
	s[n++].type = MM_MSG_END;
	assert_int_equal(mm_wire_enc_abort(&s[n].sb, 99, -ETIMEDOUT), 0);
	s[n++].type = MM_MSG_ABORT;
	struct mm_rec r1 = msg_rec(100, kws, 2);
	struct mm_rec r2;
	memset(&r2, 0, sizeof r2);
	r2.type = MM_REC_FOLDER;
	r2.folder.name = "Archive";
	mm_key_folder("Archive", r2.key);
	r2.folder.exists = (struct mm_reg){ 1, { 9 << 16, 3 } };
	assert_int_equal(mm_wire_enc_records_begin(&s[n].sb, MM_RECORDS_PUSH, "example.com/alice", 2), 0);
	assert_int_equal(mm_wire_enc_rec(&s[n].sb, &r1, body, 5), 0);
	assert_int_equal(mm_wire_enc_rec(&s[n].sb, &r2, NULL, 0), 0);
	s[n++].type = MM_MSG_RECORDS;
	assert_int_equal(mm_wire_enc_get_body(&s[n].sb, 5, "example.com/alice", root, 0, 70000), 0);
	s[n++].type = MM_MSG_GET_BODY;
	assert_int_equal(mm_wire_enc_body(&s[n].sb, 5, 3, 8, body, 5), 0);
	s[n++].type = MM_MSG_BODY;
	assert_int_equal(mm_wire_enc_body_err(&s[n].sb, 5, -ENOENT), 0);
	s[n++].type = MM_MSG_BODY_ERR;
	return n;
}

static void free_samples(struct sample *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		mm_wbuf_free(&s[i].sb);
}

/* Asserts that m is sample sm decoded. */
static void check_sample(const struct sample *sm, const struct mm_wire_msg *m_)
{
	struct mm_wire_msg m = *m_;
	assert_int_equal(m.type, sm->type);
	switch (m.type) {
	case MM_MSG_DIGEST:
		assert_int_equal(m.digest.seq, 77);
		assert_true(m.digest.reply);
		assert_memory_equal(m.digest.root, root, MM_HASH_LEN);
		assert_int_equal(m.digest.n_users, 3);
		assert_int_equal(m.digest.lead_id, 5);
		assert_int_equal(m.digest.lead_beat, 1234567);
		assert_int_equal(m.digest.gc_bound, 88);
		assert_int_equal(m.digest.gc_members, 99);
		assert_true(sm->sb.size < 200); /* the in-sync round costs < 200 bytes */
		break;
	case MM_MSG_START:
		assert_int_equal(m.start.round, 1234567);
		assert_memory_equal(m.start.nonce, nonce, MM_WIRE_NONCE_LEN);
		assert_int_equal(m.start.summary_len, sizeof summary);
		assert_memory_equal(m.start.summary, summary, sizeof summary);
		break;
	case MM_MSG_DESCENT:
		assert_int_equal(m.descent.round, 99);
		assert_true(m.descent.more);
		assert_int_equal(m.descent.n, 3);
		assert_false(m.descent.elems[0].is_bin);
		assert_int_equal(m.descent.elems[0].bitmap, 0x8001);
		assert_true(m.descent.elems[1].is_bin);
		assert_int_equal(m.descent.elems[1].bin_len, sizeof summary);
		assert_memory_equal(m.descent.elems[1].bin, summary, sizeof summary);
		assert_int_equal(m.descent.elems[2].bitmap, 3);
		break;
	case MM_MSG_END:
		assert_int_equal(m.end.round, 99);
		assert_int_equal(m.end.reason, 0);
		break;
	case MM_MSG_ABORT:
		assert_int_equal(m.end.round, 99);
		assert_int_equal(m.end.reason, -ETIMEDOUT);
		break;
	case MM_MSG_RECORDS: {
		struct mm_kwreg kws[2] = { { "$Junk", { 1, { 5 << 16, 7 } } }, { "work", { 0, { 6 << 16, 8 } } } };
		struct mm_rec r1 = msg_rec(100, kws, 2);
		assert_int_equal(m.records.flags, MM_RECORDS_PUSH);
		assert_string_equal(m.records.user, "example.com/alice");
		assert_int_equal(m.records.n, 2);
		assert_true(mm_rec_equal(&m.records.recs[0].rec, &r1));
		assert_int_equal(m.records.recs[0].body_len, 5);
		assert_memory_equal(m.records.recs[0].body, body, 5);
		assert_int_equal(m.records.recs[1].rec.type, MM_REC_FOLDER);
		assert_string_equal(m.records.recs[1].rec.folder.name, "Archive");
		assert_null(m.records.recs[1].body);
		break;
	}
	case MM_MSG_GET_BODY:
		assert_int_equal(m.get_body.req, 5);
		assert_string_equal(m.get_body.user, "example.com/alice");
		assert_memory_equal(m.get_body.id, root, MM_ID_LEN);
		assert_int_equal(m.get_body.offset, 0);
		assert_int_equal(m.get_body.size, 70000);
		break;
	case MM_MSG_BODY:
		assert_int_equal(m.body.req, 5);
		assert_int_equal(m.body.offset, 3);
		assert_int_equal(m.body.total, 8);
		assert_int_equal(m.body.len, 5);
		assert_memory_equal(m.body.data, body, 5);
		break;
	case MM_MSG_BODY_ERR:
		assert_int_equal(m.body_err.req, 5);
		assert_int_equal(m.body_err.reason, -ENOENT);
		break;
	}
}

static void test_roundtrip(void **state)
{
	(void)state;
	struct sample s[9];
	size_t n = make_samples(s);
	struct mm_arena a;
	mm_arena_init(&a);
	for (size_t i = 0; i < n; i++) {
		struct mm_wire_msg m;
		const uint8_t *p = (const uint8_t *)s[i].sb.data;
		assert_int_equal(mm_wire_decode(p, s[i].sb.size, &m, &a), 0);
		assert_int_equal(m.type, s[i].type);
		assert_int_equal(m.version, MM_WIRE_VERSION);
		assert_int_equal(mm_wire_peek_type(p, s[i].sb.size), (int)s[i].type);
		check_sample(&s[i], &m);
		mm_arena_reset(&a);
	}
	free_samples(s, n);
	mm_arena_free(&a);
}

/* Every proper prefix of msg (len bytes) is rejected, each decoded from a fresh heap
 * copy of exactly its size so ASan sees any over-read. */
static void truncations_fail(const uint8_t *msg, size_t len, struct mm_arena *a)
{
	for (size_t cut = 0; cut < len; cut++) {
		uint8_t *p = malloc(cut ? cut : 1);
		memcpy(p, msg, cut);
		struct mm_wire_msg m;
		assert_int_equal(mm_wire_decode(p, cut, &m, a), -EBADMSG);
		free(p);
		mm_arena_reset(a);
	}
}

static void test_truncated_and_trailing(void **state)
{
	(void)state;
	struct sample s[9];
	size_t n = make_samples(s);
	struct mm_arena a;
	mm_arena_init(&a);
	for (size_t i = 0; i < n; i++) {
		size_t len = s[i].sb.size;
		truncations_fail((const uint8_t *)s[i].sb.data, len, &a);
		uint8_t *p = malloc(len + 1);
		memcpy(p, s[i].sb.data, len);
		p[len] = 0;
		struct mm_wire_msg m;
		assert_int_equal(mm_wire_decode(p, len + 1, &m, &a), -EBADMSG);
		free(p);
		mm_arena_reset(&a);
	}
	free_samples(s, n);
	mm_arena_free(&a);
}

/* Flipping any bit or setting any byte to special values never crashes, and a message
 * that still decodes is internally consistent (lengths within the input). */
static void test_corrupted(void **state)
{
	(void)state;
	struct sample s[9];
	size_t n = make_samples(s);
	struct mm_arena a;
	mm_arena_init(&a);
	static const uint8_t specials[] = { 0x00, 0x7f, 0x80, 0x90, 0x9f, 0xc0, 0xc1, 0xc4,
	                                    0xcc, 0xcf, 0xd9, 0xdc, 0xdd, 0xff };
	size_t rejected = 0, total = 0;
	for (size_t i = 0; i < n; i++) {
		size_t len = s[i].sb.size;
		uint8_t *p = malloc(len);
		for (size_t pos = 0; pos < len; pos++) {
			for (unsigned v = 0; v < 8 + sizeof specials; v++) {
				memcpy(p, s[i].sb.data, len);
				if (v < 8)
					p[pos] ^= (uint8_t)(1u << v);
				else
					p[pos] = specials[v - 8];
				if (!memcmp(p, s[i].sb.data, len))
					continue;
				struct mm_wire_msg m;
				int rc = mm_wire_decode(p, len, &m, &a);
				total++;
				if (rc < 0) {
					assert_true(rc == -EBADMSG || rc == -EPROTONOSUPPORT || rc == -EOPNOTSUPP ||
					            rc == -ENOMEM);
					rejected++;
				} else if (m.type == MM_MSG_BODY) {
					assert_true(m.body.data >= p && m.body.data + m.body.len <= p + len);
				} else if (m.type == MM_MSG_RECORDS) {
					for (size_t k = 0; k < m.records.n; k++)
						assert_int_equal(mm_rec_validate(&m.records.recs[k].rec), 0);
				}
				mm_arena_reset(&a);
			}
		}
		free(p);
	}
	/* most corruptions break the structure; some (a value byte) legitimately decode */
	assert_true(rejected > total / 3);
	free_samples(s, n);
	mm_arena_free(&a);
}

/* Later versions append fields (docs/protocol.md, "Compatibility"): every message,
 * and every RECORDS entry, decodes the same with well-formed objects of any msgpack
 * kind after the fields this version knows, and is rejected if one of them is not
 * well formed. */
static const uint8_t extras[] = {
	0x81, 0xa1, 'k', 0x93, 0x01, 0xff, 0xc0,                 /* {"k": [1, -1, nil]} */
	0xca, 0x3f, 0x80, 0x00, 0x00,                            /* float32 */
	0xcb, 0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18,    /* float64 */
	0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0,                         /* int64 */
	0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,    /* uint64 */
	0xd9, 0x03, 'a', 'b', 'c',                               /* str8 */
	0xc5, 0x00, 0x02, 0x01, 0x02,                            /* bin16 */
	0xc7, 0x02, 0x05, 0xaa, 0xbb,                            /* ext8 */
	0xd6, 0x01, 1, 2, 3, 4,                                  /* fixext4 */
	0xdc, 0x00, 0x02, 0xc2, 0xc3,                            /* array16 [false, true] */
	0xdf, 0x00, 0x00, 0x00, 0x01, 0x01, 0x02,                /* map32 {1: 2} */
	0xc9, 0x00, 0x00, 0x00, 0x01, 0x07, 0x00,                /* ext32 */
	0xde, 0x00, 0x00,                                        /* map16 {} */
	0xd8, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, /* fixext16 */
};
#define EXTRAS_N 14

/* sm's message with the k objects of x (len bytes) appended to its array */
static uint8_t *with_extras(const struct sample *sm, const uint8_t *x, size_t xlen, size_t k,
                            size_t *len_r)
{
	const uint8_t *p = (const uint8_t *)sm->sb.data;
	assert_int_equal(p[0] & 0xf0, 0x90);
	size_t n = (p[0] & 0x0f) + k;
	uint8_t *q = malloc(3 + sm->sb.size - 1 + xlen);
	assert_non_null(q);
	q[0] = 0xdc;
	q[1] = (uint8_t)(n >> 8);
	q[2] = (uint8_t)n;
	memcpy(q + 3, p + 1, sm->sb.size - 1);
	memcpy(q + 3 + sm->sb.size - 1, x, xlen);
	*len_r = 3 + sm->sb.size - 1 + xlen;
	return q;
}

static void test_later_fields(void **state)
{
	(void)state;
	struct sample s[9];
	size_t n = make_samples(s);
	struct mm_arena a;
	mm_arena_init(&a);
	for (size_t i = 0; i < n; i++) {
		struct mm_wire_msg m;
		size_t len;
		uint8_t *q = with_extras(&s[i], extras, sizeof extras, EXTRAS_N, &len);
		assert_int_equal(mm_wire_decode(q, len, &m, &a), 0);
		check_sample(&s[i], &m);
		assert_int_equal(mm_wire_peek_type(q, len), (int)s[i].type);
		truncations_fail(q, len, &a);
		free(q);
		/* one object more announced than there is */
		q = with_extras(&s[i], extras, sizeof extras, EXTRAS_N + 1, &len);
		assert_int_equal(mm_wire_decode(q, len, &m, &a), -EBADMSG);
		free(q);
		/* 0xc1, never used, and a str8 running past the end */
		static const uint8_t bad1[] = { 0xc1 }, bad2[] = { 0xd9, 0x05, 'a' };
		q = with_extras(&s[i], bad1, sizeof bad1, 1, &len);
		assert_int_equal(mm_wire_decode(q, len, &m, &a), -EBADMSG);
		free(q);
		q = with_extras(&s[i], bad2, sizeof bad2, 1, &len);
		assert_int_equal(mm_wire_decode(q, len, &m, &a), -EBADMSG);
		free(q);
		/* an array32 announcing 2^32-1 elements, and 30,000 nested arrays (skipped
		 * without recursion) */
		static const uint8_t huge[] = { 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0 };
		q = with_extras(&s[i], huge, sizeof huge, 1, &len);
		assert_int_equal(mm_wire_decode(q, len, &m, &a), -EBADMSG);
		free(q);
		uint8_t *deep = malloc(30001);
		memset(deep, 0x91, 30000);
		deep[30000] = 0xc0;
		q = with_extras(&s[i], deep, 30001, 1, &len);
		assert_int_equal(mm_wire_decode(q, len, &m, &a), 0);
		check_sample(&s[i], &m);
		free(q);
		free(deep);
		mm_arena_reset(&a);
	}

	/* a RECORDS entry with more than [record, body] */
	struct mm_rec r = msg_rec(100, NULL, 0);
	struct mm_wbuf one, three;
	mm_wbuf_init(&one);
	mm_wbuf_init(&three);
	assert_int_equal(mm_wire_enc_records_begin(&one, 0, "bob", 1), 0);
	assert_int_equal(mm_wire_enc_rec(&one, &r, body, 5), 0);
	assert_int_equal(mm_wire_enc_records_begin(&three, 0, "bob", 1), 0);
	size_t at = three.size;
	assert_int_equal(mm_wire_enc_rec(&three, &r, body, 5), 0);
	assert_int_equal((uint8_t)three.data[at], 0x92);
	three.data[at] = (char)0x94;
	mm_wbuf_write(&three, (const char *)extras, 7 + 5); /* the map, the float32 */
	struct mm_wire_msg m1, m3;
	assert_int_equal(mm_wire_decode((const uint8_t *)one.data, one.size, &m1, &a), 0);
	assert_int_equal(mm_wire_decode((const uint8_t *)three.data, three.size, &m3, &a), 0);
	assert_int_equal(m3.records.n, 1);
	assert_true(mm_rec_equal(&m1.records.recs[0].rec, &m3.records.recs[0].rec));
	assert_int_equal(m3.records.recs[0].body_len, 5);
	assert_memory_equal(m3.records.recs[0].body, body, 5);
	three.data[at] = (char)0x95; /* one more than there is */
	assert_int_equal(mm_wire_decode((const uint8_t *)three.data, three.size, &m3, &a), -EBADMSG);
	three.data[at] = (char)0x91; /* fewer than two */
	assert_int_equal(mm_wire_decode((const uint8_t *)three.data, three.size, &m3, &a), -EBADMSG);
	mm_wbuf_free(&one);
	mm_wbuf_free(&three);
	free_samples(s, n);
	mm_arena_free(&a);
}

/* The encoders' buffer keeps what was written across its growth (it copies and wipes
 * instead of realloc; tests/test_wipe.c checks the wiping), and is reusable. */
static void test_wbuf(void **state)
{
	(void)state;
	struct mm_wbuf b;
	mm_wbuf_init(&b);
	static char src[200000];
	for (size_t i = 0; i < sizeof src; i++)
		src[i] = (char)(i * 131 + (i >> 9));
	size_t off = 0;
	for (size_t step = 1; off < sizeof src; step = step * 3 + 1) {
		size_t n = step < sizeof src - off ? step : sizeof src - off;
		assert_int_equal(mm_wbuf_write(&b, src + off, n), 0);
		off += n;
		assert_int_equal(b.size, off);
		assert_true(b.alloc >= b.size && b.used >= b.size);
		assert_memory_equal(b.data, src, off);
	}
	assert_int_equal(mm_wbuf_write(&b, NULL, 0), 0);
	assert_int_equal(b.size, sizeof src);
	size_t alloc = b.alloc;
	b.size = 0; /* reused: no new block, the most used remembered */
	assert_int_equal(mm_wbuf_write(&b, "abc", 3), 0);
	assert_int_equal(b.alloc, alloc);
	assert_int_equal(b.used, sizeof src);
	assert_memory_equal(b.data, "abc", 3);
	mm_wbuf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.size + b.alloc + b.used, 0);
	mm_wbuf_free(&b); /* twice: nothing */
}

static void test_unknown_version(void **state)
{
	(void)state;
	struct sample s[9];
	size_t n = make_samples(s);
	struct mm_arena a;
	mm_arena_init(&a);
	for (size_t i = 0; i < n; i++) {
		uint8_t *p = (uint8_t *)s[i].sb.data;
		assert_int_equal(p[1], MM_WIRE_VERSION); /* [fixarray, version, ...] */
		p[1] = 2;
		struct mm_wire_msg m;
		assert_int_equal(mm_wire_decode(p, s[i].sb.size, &m, &a), -EPROTONOSUPPORT);
		assert_int_equal(m.version, 2);
		assert_int_equal(mm_wire_peek_type(p, s[i].sb.size), -EPROTONOSUPPORT);
		mm_arena_reset(&a);
	}
	free_samples(s, n);
	mm_arena_free(&a);
}

static void test_bad_fields(void **state)
{
	(void)state;
	struct mm_arena a;
	mm_arena_init(&a);
	struct mm_wire_msg m;
	struct mm_wbuf sb;
	mm_wbuf_init(&sb);
	/* a name over MM_NAME_MAX cannot be encoded */
	char longname[MM_NAME_MAX + 2];
	memset(longname, 'x', sizeof longname - 1);
	longname[sizeof longname - 1] = 0;
	assert_int_equal(mm_wire_enc_records_begin(&sb, 0, longname, 0), -EINVAL);
	assert_int_equal(mm_wire_enc_records_begin(&sb, 0, "", 0), -EINVAL);
	sb.size = 0;
	/* an inline body whose length differs from the record's size */
	struct mm_rec r = msg_rec(5, NULL, 0);
	assert_int_equal(mm_wire_enc_rec(&sb, &r, body, 4), -EINVAL);
	sb.size = 0;
	/* an invalid record (key not derived from its stamp) is rejected at decode */
	assert_int_equal(mm_wire_enc_records_begin(&sb, 0, "u", 1), 0);
	r.key[0] ^= 1;
	int rc = mm_wire_enc_rec(&sb, &r, NULL, 0);
	if (rc == 0)
		assert_int_equal(mm_wire_decode((const uint8_t *)sb.data, sb.size, &m, &a), -EBADMSG);
	sb.size = 0;
	/* BODY whose chunk runs past its total */
	assert_int_equal(mm_wire_enc_body(&sb, 1, 6, 8, body, 5), -EINVAL);
	/* a huge array count with nothing behind it */
	const uint8_t huge[] = { 0x95, 0x01, 0x03, 0x01, 0xc2, 0xdd, 0xff, 0xff, 0xff, 0xff };
	assert_int_equal(mm_wire_decode(huge, sizeof huge, &m, &a), -EBADMSG);
	/* a later version's type: -EOPNOTSUPP when well formed; type 0 is malformed */
	const uint8_t unk[] = { 0x93, 0x01, 0x0a, 0x00 };
	assert_int_equal(mm_wire_decode(unk, sizeof unk, &m, &a), -EOPNOTSUPP);
	assert_int_equal(mm_wire_peek_type(unk, sizeof unk), -EOPNOTSUPP);
	const uint8_t unk_bad[] = { 0x93, 0x01, 0x0a, 0xc1 };
	assert_int_equal(mm_wire_decode(unk_bad, sizeof unk_bad, &m, &a), -EBADMSG);
	const uint8_t unk_short[] = { 0x93, 0x01, 0x0a };
	assert_int_equal(mm_wire_decode(unk_short, sizeof unk_short, &m, &a), -EBADMSG);
	const uint8_t unk_trail[] = { 0x93, 0x01, 0x0a, 0x00, 0x00 };
	assert_int_equal(mm_wire_decode(unk_trail, sizeof unk_trail, &m, &a), -EBADMSG);
	const uint8_t type0[] = { 0x93, 0x01, 0x00, 0x00 };
	assert_int_equal(mm_wire_decode(type0, sizeof type0, &m, &a), -EBADMSG);
	/* an END with one element too few */
	const uint8_t end_short[] = { 0x92, 0x01, 0x04 };
	assert_int_equal(mm_wire_decode(end_short, sizeof end_short, &m, &a), -EBADMSG);
	/* a DIGEST on the wrong hash length */
	const uint8_t dig[] = { 0x96, 0x01, 0x01, 0x01, 0xc3, 0xc4, 0x01, 0x00, 0x00 };
	assert_int_equal(mm_wire_decode(dig, sizeof dig, &m, &a), -EBADMSG);
	assert_int_equal(mm_wire_decode(NULL, 0, &m, &a), -EBADMSG);
	mm_wbuf_free(&sb);
	mm_arena_free(&a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_truncated_and_trailing),
		cmocka_unit_test(test_corrupted),
		cmocka_unit_test(test_later_fields),
		cmocka_unit_test(test_wbuf),
		cmocka_unit_test(test_unknown_version),
		cmocka_unit_test(test_bad_fields),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
