/*
 * wire.h — encoding and decoding of every replication message (msgpack).
 *
 * Every message is one msgpack array [version, type, ...fields] (docs/protocol.md,
 * "Wire messages and sync", lists them).  Encoders append to a struct mm_wbuf with
 * msgpack-c's packer.  The decoder does not use msgpack-c's allocating unpacker: it
 * walks the bytes with bounds-checked (cursor, end) helpers, checks every type and
 * length, caps every count by the bytes left, and never allocates from a length read
 * off the wire.  Decoded strings/arrays live in a caller-provided arena; byte fields
 * (hashes, bodies, blobs) point into the input buffer (zero copy), so the input must
 * outlive the decoded message.  Records travel as their crdt canonical encoding
 * (mm_rec_encode) in a msgpack bin and are validated (mm_rec_decode runs
 * mm_rec_validate) before anyone merges them.
 */
#ifndef MM_PROTO_WIRE_H
#define MM_PROTO_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>
#include <msgpack.h>

#include "crdt/crdt.h"

#define MM_WIRE_VERSION 1
#define MM_WIRE_MAX 65000          /* largest message: fits one Noise message (65535) */
#define MM_WIRE_NONCE_LEN 16       /* round salt */
#define MM_WIRE_MAX_ELEMS 65536    /* DESCENT elements per message */
#define MM_WIRE_MAX_RECS 4096      /* records per RECORDS message */

enum mm_msg_type {
	MM_MSG_DIGEST = 1,    /* datagram: [v, t, seq, reply, root(bin32), n_users
	                       * (, lead_id, lead_beat (, gc_bound, gc_members))] */
	MM_MSG_START = 2,     /* [v, t, round, nonce(bin16), summary(bin)] */
	MM_MSG_DESCENT = 3,   /* [v, t, round, more(bool), [elem...]] elem = uint16 | bin */
	MM_MSG_END = 4,       /* [v, t, round] */
	MM_MSG_ABORT = 5,     /* [v, t, round, reason(int, negative errno)] */
	MM_MSG_RECORDS = 6,   /* [v, t, flags, user(str), [[rec(bin), body(bin|nil)]...]] */
	MM_MSG_GET_BODY = 7,  /* [v, t, req, user(str), id(bin32), offset, size] */
	MM_MSG_BODY = 8,      /* [v, t, req, offset, total, data(bin)] */
	MM_MSG_BODY_ERR = 9,  /* [v, t, req, reason(int, negative errno)] */
};
#define MM_MSG_TYPE_MAX 9

#define MM_RECORDS_PUSH 1u   /* RECORDS flag: live push (relay it if new) */

/* One element of a DESCENT message: a 16-bit bitmap or a byte blob (summaries and
 * wanted-leaf bitmaps; their meaning depends on the round's context, proto/sync.c). */
struct mm_wire_elem {
	bool is_bin;
	uint16_t bitmap;          /* when !is_bin */
	const uint8_t *bin;       /* when is_bin: points into the input */
	size_t bin_len;
};

struct mm_wire_rec {
	struct mm_rec rec;        /* strings in the arena */
	const uint8_t *body;      /* inline body (points into the input) or NULL */
	size_t body_len;
};

struct mm_wire_msg {
	unsigned version;
	enum mm_msg_type type;
	union {
		struct {
			uint64_t seq;
			bool reply;
			const uint8_t *root; /* MM_HASH_LEN bytes */
			uint64_t n_users;
			/* the lowest live node the sender knows and its heartbeat
			 * (proto/lead.h); both 0 when the sender sent none */
			uint64_t lead_id, lead_beat;
			/* the sender's own tombstone GC bound (wall ms, crdt
			 * mm_gc_horizon_ms without peer bounds) and a hash of the nodes
			 * it counts (itself and its peers); both 0 when it sent none */
			uint64_t gc_bound, gc_members;
		} digest;
		struct {
			uint64_t round;
			const uint8_t *nonce; /* MM_WIRE_NONCE_LEN bytes */
			const uint8_t *summary;
			size_t summary_len;
		} start;
		struct {
			uint64_t round;
			bool more;   /* more parts of the same DESCENT follow */
			size_t n;
			struct mm_wire_elem *elems; /* in the arena */
		} descent;
		struct {
			uint64_t round;
			int reason;
		} end; /* END (reason 0) and ABORT */
		struct {
			uint32_t flags;
			const char *user; /* NUL-terminated, in the arena, 1..MM_NAME_MAX bytes */
			size_t n;
			struct mm_wire_rec *recs; /* in the arena */
		} records;
		struct {
			uint64_t req;
			const char *user;
			const uint8_t *id; /* MM_ID_LEN bytes */
			uint64_t offset;
			uint64_t size;     /* whole body size the asker expects */
		} get_body;
		struct {
			uint64_t req;
			uint64_t offset;
			uint64_t total;
			const uint8_t *data;
			size_t len;
		} body;
		struct {
			uint64_t req;
			int reason;
		} body_err;
	};
};

/* Decodes one whole message of len bytes (trailing bytes are an error).  Elements
 * after the ones this version knows, in the message's array or in a RECORDS entry, are
 * skipped whatever their (well-formed) msgpack type: later versions append fields
 * there.  Returns 0, -EPROTONOSUPPORT if the version is not MM_WIRE_VERSION
 * (msg_r->version set), -EOPNOTSUPP for a well-formed message of a type above
 * MM_MSG_TYPE_MAX (a later version's; the caller ignores it), -EBADMSG for anything
 * malformed (wrong types, lengths, too few elements, invalid record, type 0),
 * -ENOMEM if the arena cannot allocate.  On error *msg_r is undefined except version. */
int mm_wire_decode(const uint8_t *buf, size_t len, struct mm_wire_msg *msg_r, struct mm_arena *a);

/* The encoders' output buffer.  Messages carry mail (records with their keywords,
 * inline bodies, BODY chunks), and a daemon runs for months: a freed block that still
 * held them could turn up in a core dump or a heap disclosure.  So, unlike msgpack-c's
 * sbuffer (whose realloc frees the old block as it was), a growing mm_wbuf wipes the
 * old block before freeing it, and mm_wbuf_free wipes it too.  Only bytes ever used
 * are wiped (`used`, the most the block has held), so a buffer reused for messages
 * of a few hundred bytes costs a few hundred bytes of wiping when it goes.  The
 * caller reuses it by setting size = 0: the last message stays in it, live memory of
 * its owner, until overwritten or freed. */
struct mm_wbuf {
	char *data;
	size_t size;  /* bytes written since the caller last set size = 0 */
	size_t alloc; /* bytes of data */
	size_t used;  /* the most bytes data has held: what is wiped */
};
void mm_wbuf_init(struct mm_wbuf *b);
/* Appends len bytes; 0 or -1 (out of memory).  The signature of msgpack-c's
 * msgpack_packer_write, so a packer writes through it (b is a struct mm_wbuf). */
int mm_wbuf_write(void *b, const char *p, size_t len);
/* Wipes the bytes used and frees; b may be initialised again. */
void mm_wbuf_free(struct mm_wbuf *b);

/* Encoders: append one whole message to sb (which the caller may reuse after clearing
 * sb->size).  Return 0, -EINVAL (bad argument: name too long, bad record), -ENOMEM.
 * They do not check MM_WIRE_MAX; callers size their batches (mm_wire_rec_size). */
/* DIGEST: lead_id, lead_beat and gc_bound all 0 = the short form without them;
 * gc_bound 0 = the form without it and gc_members. */
int mm_wire_enc_digest(struct mm_wbuf *sb, uint64_t seq, bool reply,
                       const uint8_t root[MM_HASH_LEN], uint64_t n_users, uint64_t lead_id,
                       uint64_t lead_beat, uint64_t gc_bound, uint64_t gc_members);
int mm_wire_enc_start(struct mm_wbuf *sb, uint64_t round, const uint8_t nonce[MM_WIRE_NONCE_LEN],
                      const uint8_t *summary, size_t summary_len);
/* DESCENT is built incrementally: begin (n elements announced), then exactly n
 * elem_bitmap/elem_bin calls.  A long DESCENT is split into parts: more = true on
 * every part but the last. */
int mm_wire_enc_descent_begin(struct mm_wbuf *sb, uint64_t round, bool more, size_t n);
int mm_wire_enc_elem_bitmap(struct mm_wbuf *sb, uint16_t bitmap);
int mm_wire_enc_elem_bin(struct mm_wbuf *sb, const uint8_t *bin, size_t len);
int mm_wire_enc_end(struct mm_wbuf *sb, uint64_t round);
int mm_wire_enc_abort(struct mm_wbuf *sb, uint64_t round, int reason);
/* RECORDS likewise: begin with the count, then n mm_wire_enc_rec calls. */
int mm_wire_enc_records_begin(struct mm_wbuf *sb, uint32_t flags, const char *user, size_t n);
int mm_wire_enc_rec(struct mm_wbuf *sb, const struct mm_rec *r, const uint8_t *body, size_t body_len);
int mm_wire_enc_get_body(struct mm_wbuf *sb, uint64_t req, const char *user,
                         const uint8_t id[MM_ID_LEN], uint64_t offset, uint64_t size);
int mm_wire_enc_body(struct mm_wbuf *sb, uint64_t req, uint64_t offset, uint64_t total,
                     const uint8_t *data, size_t len);
int mm_wire_enc_body_err(struct mm_wbuf *sb, uint64_t req, int reason);

/* Upper bound of the bytes mm_wire_enc_rec adds for r with a body of body_len bytes
 * (negative errno if r cannot be encoded); the RECORDS header takes at most
 * MM_WIRE_RECORDS_HDR + strlen(user) bytes. */
ssize_t mm_wire_rec_size(const struct mm_rec *r, size_t body_len);
#define MM_WIRE_RECORDS_HDR 32

/* Peeks the type of an encoded message without decoding it (for counters): the type,
 * or -EBADMSG / -EPROTONOSUPPORT / -EOPNOTSUPP. */
int mm_wire_peek_type(const uint8_t *buf, size_t len);

#endif
