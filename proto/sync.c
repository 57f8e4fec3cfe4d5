/*
 * sync.c — the per-peer replication session of proto/sync.h: digest exchange, Merkle
 * descent batched by level, record streaming both ways, live push with inline bodies,
 * and verified body transfer.
 *
 * Descent, in short (docs/protocol.md has the full picture).  A *summary* of a tree
 * node is either EXPAND (16 salted, truncated child hashes: 32 bytes) or LEAVES (for
 * each record/user under the node the first 8 bytes of its key/position and a salted,
 * truncated leaf hash: 12 bytes each; told apart by length); a side sends LEAVES when
 * it holds at most LEAF_MAX entries there.  Wanted/differing bitmaps over a LEAVES
 * list are a uint16 element for up to 16 entries, else a bin.  Each
 * DESCENT message answers, in order, every summary of the peer's previous message:
 *   to EXPAND of node N:          bitmap of differing children, then my summary of each
 *   to LEAVES in a user tree:     bitmap of the listed keys I want (lack or differ);
 *                                 my records the list lacks or holds differently are
 *                                 queued to be sent
 *   to LEAVES in the users tree:  bitmap of the listed users that differ, then my
 *                                 summary of each such user's root; users the list
 *                                 lacks are queued to be sent whole
 * Nodes are never named on the wire: both sides know the order of the summaries they
 * sent (the "pending" list).  A message carrying no new summary ends the descent: its
 * receiver sends the records asked for and then END.
 */
#include "proto/sync.h"
#include "proto/lead.h"
#include "proto/wire.h"
#include "proto/fetch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#define HT 2          /* bytes of a salted inner-node hash */
#define LT 4          /* bytes of a salted leaf hash */
#define LEAF_MAX 3    /* a side sends LEAVES when it holds at most this many entries */
#define KP 8          /* bytes of a key / user position in a LEAVES entry */
#define LEAF_ENTRY (KP + LT)
#define EXPAND_LEN (MM_FANOUT * HT)
_Static_assert(EXPAND_LEN % LEAF_ENTRY != 0, "EXPAND and LEAVES told apart by length");
#define PART_MAX 60000          /* split a DESCENT beyond this many element bytes */
#define DESCENT_ACC_MAX (16u << 20) /* cap of a multi-part DESCENT, bytes */
#define KEYS_JOB_MAX 256        /* above this many records, send a subtree by walking it */
#define SUBTREE_BATCH 32        /* records emitted per walk step */
#define RECBUF_LIMIT (MM_WIRE_MAX - MM_WIRE_RECORDS_HDR - MM_NAME_MAX)
/* GET_BODY requests queued at once (the peer's fetch scheduler keeps at most
 * max_inflight, 64 by default, out per peer); beyond: BODY_ERR -EBUSY, so a peer
 * that asks and stops reading cannot make the queue grow without bound. */
#define BODY_JOBS_MAX 256

enum tree { TREE_USERS = 0, TREE_USER = 1 };

/* A summary this side sent and whose answer it expects. */
struct pend {
	uint8_t tree;
	uint8_t kind;       /* 'E' or 'L' */
	uint8_t depth;
	uint8_t prefix[MM_KEY_LEN];
	const char *user;   /* TREE_USER: the user (arena), NULL if unknown here */
	size_t n;           /* 'L': entries */
	uint8_t *keys;      /* 'L': n x 16 (record keys / user positions), arena */
	const char **names; /* 'L' in TREE_USERS: user names, arena */
};

struct plist {
	struct pend *v;
	size_t n, cap;
	struct mm_arena a;
};

enum round_state {
	RS_IDLE = 0,
	RS_AWAIT_DESCENT, /* I sent summaries: the peer's answers come next */
	RS_AWAIT_END,     /* I sent a message without summaries: the peer closes */
	RS_CLOSING,       /* my END is queued behind the round's records */
};

enum job_type { JOB_KEYS, JOB_SUBTREE, JOB_END, JOB_BODY };

struct frame {
	uint8_t prefix[MM_KEY_LEN];
	uint8_t depth;
	int8_t child; /* -1: not looked at yet */
};

struct job {
	struct job *next;
	enum job_type t;
	char *user;
	uint64_t round;
	/* KEYS */
	uint8_t *keys;
	size_t n, pos;
	/* SUBTREE */
	struct frame stack[MM_MAX_DEPTH + 1];
	int sp;
	/* BODY */
	uint64_t req, off, total;
	uint8_t id[MM_ID_LEN];
};

/* A body this side is fetching. */
struct breq {
	struct breq *next;
	uint64_t req;
	char *user;
	uint8_t id[MM_ID_LEN];
	uint64_t size, got;
	void *handle;
	crypto_generichash_state h;
	uint64_t deadline;
};

struct mm_sync {
	bool merging_inline;    /* the record being merged brought its body inline */
	struct mm_sync_config cfg;
	bool connected;
	bool blocked;
	uint64_t now;
	struct mm_sync_stats st;
	/* What holds mail here is wiped before it is freed (docs/protocol.md, "What is
	 * wiped"): out (struct mm_wbuf), rx (records' keywords and names), chunk. */
	struct mm_wbuf out;     /* message being encoded */
	struct mm_arena rx;     /* decoded incoming message */
	uint8_t *chunk;         /* body chunk / inline body buffer */
	size_t chunk_cap;
	size_t chunk_used;      /* the most bytes of chunk handed to body.read: wiped */
	uint64_t digest_seq;
	uint64_t lead_sent;     /* when a DIGEST last carried the lead view (0 = never) */
	uint64_t gc_bound;      /* this node's GC bound, for the peer (0 = none yet) */
	uint64_t gc_members;    /* ... and the hash of the nodes it counts */
	uint64_t gc_bound_sent; /* the bound the last DIGEST that carried one carried ... */
	uint64_t gc_bound_at;   /* ... and when (0 = never) */
	bool digest_heard;      /* a DIGEST came from the peer on this connection */
	uint64_t round_ctr;
	uint64_t req_ctr;
	struct {
		enum round_state st;
		uint64_t id;
		bool mine;
		uint8_t nonce[MM_WIRE_NONCE_LEN];
		uint64_t deadline;
		struct plist p, q;
		/* a DESCENT arriving in parts */
		struct mm_wire_elem *acc;
		size_t nacc, cap_acc, acc_bytes;
		size_t acc_elems_max; /* elements an answer to my summaries can hold */
		struct mm_arena acca;
		uint64_t legs, dbytes, rbytes, diffs;
		uint64_t inline_bytes; /* body bytes sent inline with this round's records */
	} r;
	struct job *jobs, *jobs_tail;
	size_t body_jobs;       /* queued JOB_BODY */
	size_t round_jobs;      /* queued JOB_KEYS / JOB_SUBTREE / JOB_END */
	struct breq *breqs;
	/* When the peer last answered a GET_BODY of ours (a BODY chunk or a BODY_ERR,
	 * for any request, even one given up): it answers them one after the other, so
	 * while it does, the requests queued behind are not stalled (0 = never). */
	uint64_t body_in_at;
	struct mm_delta *relay_delta;
	bool in_push;
	int depth_guard; /* pump re-entrancy */
};

static void reset_stream(struct mm_sync *s, int why);
static void pump(struct mm_sync *s);

/* ---- small helpers ------------------------------------------------------------ */

static void event(struct mm_sync *s, enum mm_sync_event_type t, int err, const char *user,
                  const uint8_t *id, uint64_t round)
{
	if (!s->cfg.event)
		return;
	struct mm_sync_event ev = { t, err, user, id, round };
	s->cfg.event(s->cfg.event_arg, s, &ev);
}

static void set_nibble(uint8_t *prefix, unsigned depth, unsigned v)
{
	if (depth & 1)
		prefix[depth / 2] = (uint8_t)((prefix[depth / 2] & 0xf0) | (v & 0x0f));
	else
		prefix[depth / 2] = (uint8_t)((prefix[depth / 2] & 0x0f) | (v << 4));
}

static bool has_prefix(const uint8_t *key, const uint8_t *prefix, unsigned depth)
{
	for (unsigned i = 0; i < depth; i++) {
		unsigned a = (i & 1) ? key[i / 2] & 0x0f : key[i / 2] >> 4;
		unsigned b = (i & 1) ? prefix[i / 2] & 0x0f : prefix[i / 2] >> 4;
		if (a != b)
			return false;
	}
	return true;
}

/* Salted, truncated hash: keyed BLAKE2b with the round's nonce. */
static void salted(const struct mm_sync *s, const uint8_t *a, size_t alen, const uint8_t *b,
                   size_t blen, uint8_t *out, size_t outlen)
{
	crypto_generichash_state st;
	uint8_t h[16];
	crypto_generichash_init(&st, s->r.nonce, MM_WIRE_NONCE_LEN, sizeof h);
	crypto_generichash_update(&st, a, alen);
	if (blen)
		crypto_generichash_update(&st, b, blen);
	crypto_generichash_final(&st, h, sizeof h);
	memcpy(out, h, outlen);
}

static unsigned popcount16(uint16_t v)
{
	unsigned n = 0;
	for (; v; v &= (uint16_t)(v - 1))
		n++;
	return n;
}

static char *xstrdup(const char *p)
{
	size_t n = strlen(p) + 1;
	char *d = malloc(n);
	if (d)
		memcpy(d, p, n);
	return d;
}

static char *arena_strdup(struct mm_arena *a, const char *p)
{
	size_t n = strlen(p) + 1;
	char *d = mm_arena_alloc(a, n);
	if (d)
		memcpy(d, p, n);
	return d;
}

/* ---- sending -------------------------------------------------------------------- */

static bool is_descent_type(int t)
{
	return t == MM_MSG_START || t == MM_MSG_DESCENT || t == MM_MSG_END;
}

/* Sends s->out and clears it.  Returns 0 or a negative errno (the stream was reset). */
static int send_out(struct mm_sync *s, enum mm_chan chan)
{
	size_t len = s->out.size;
	int type = mm_wire_peek_type((const uint8_t *)s->out.data, len);
	int rc = s->cfg.io.send(s->cfg.io.arg, chan, (const uint8_t *)s->out.data, len);
	s->out.size = 0;
	s->st.msgs_out++;
	s->st.bytes_out += len;
	if (chan == MM_CHAN_DATAGRAM) {
		s->st.datagrams_out++;
		return 0;
	}
	if (s->r.st != RS_IDLE) {
		if (is_descent_type(type)) {
			s->r.dbytes += len;
			s->r.legs++;
		} else if (type == MM_MSG_RECORDS && !s->in_push) {
			s->r.rbytes += len;
		}
	}
	if (rc < 0) {
		reset_stream(s, rc);
		return rc;
	}
	if (rc == 1)
		s->blocked = true;
	return 0;
}

/* ---- records batches -------------------------------------------------------------- */

struct recbuf {
	struct mm_wbuf body;
	size_t n;
	const char *user;
	uint32_t flags;
	size_t sent;
};

static int rb_flush(struct mm_sync *s, struct recbuf *rb)
{
	if (!rb->n)
		return 0;
	int rc = mm_wire_enc_records_begin(&s->out, rb->flags, rb->user, rb->n);
	if (rc == 0 && mm_wbuf_write(&s->out, rb->body.data, rb->body.size) != 0)
		rc = -ENOMEM;
	rb->body.size = 0;
	size_t n = rb->n;
	rb->n = 0;
	if (rc < 0) {
		s->out.size = 0;
		return rc;
	}
	s->st.records_out += n;
	rb->sent += n;
	if (rb->flags & MM_RECORDS_PUSH)
		s->st.pushes_out++;
	return send_out(s, MM_CHAN_STREAM);
}

/* Reads a whole body of `size` bytes into s->chunk if it fits; returns true if so. */
static bool read_inline(struct mm_sync *s, const char *user, const struct mm_rec *r)
{
	if (r->type != MM_REC_MESSAGE || r->msg.size > s->cfg.inline_max)
		return false;
	if (s->cfg.body.have(s->cfg.body.arg, user, r->msg.body) != 1)
		return false;
	uint64_t got = 0;
	if (r->msg.size > s->chunk_used)
		s->chunk_used = (size_t)r->msg.size;
	while (got < r->msg.size) {
		ssize_t n = s->cfg.body.read(s->cfg.body.arg, user, r->msg.body, got, s->chunk + got,
		                             (size_t)(r->msg.size - got));
		if (n <= 0)
			return false;
		got += (uint64_t)n;
	}
	return true;
}

static int rb_add(struct mm_sync *s, struct recbuf *rb, const struct mm_rec *r, bool try_inline)
{
	bool inl = try_inline && read_inline(s, rb->user, r);
	size_t blen = inl ? (size_t)r->msg.size : 0;
	ssize_t need = mm_wire_rec_size(r, blen);
	if (need < 0)
		return (int)need;
	if ((size_t)need > RECBUF_LIMIT) {
		if (!inl)
			return -EMSGSIZE;
		inl = false;
		blen = 0;
		need = mm_wire_rec_size(r, 0);
	}
	if (rb->n && (rb->body.size + (size_t)need > RECBUF_LIMIT || rb->n >= MM_WIRE_MAX_RECS)) {
		int rc = rb_flush(s, rb);
		if (rc < 0)
			return rc;
	}
	int rc = mm_wire_enc_rec(&rb->body, r, inl ? s->chunk : NULL, blen);
	if (rc < 0)
		return rc;
	rb->n++;
	if (inl) {
		s->st.bodies_out++;
		s->st.body_bytes_out += blen;
	}
	return 0;
}

/* ---- jobs ------------------------------------------------------------------------ */

static void job_free(struct job *j)
{
	if (!j)
		return;
	free(j->user);
	free(j->keys);
	free(j);
}

static struct job *job_new(struct mm_sync *s, enum job_type t, const char *user)
{
	struct job *j = calloc(1, sizeof *j);
	if (!j)
		return NULL;
	j->t = t;
	j->round = s->r.id;
	if (user && !(j->user = xstrdup(user))) {
		free(j);
		return NULL;
	}
	return j;
}

static void job_count(struct mm_sync *s, const struct job *j, int d)
{
	if (j->t == JOB_BODY)
		s->body_jobs += (size_t)d;
	else
		s->round_jobs += (size_t)d;
}

static void job_push(struct mm_sync *s, struct job *j)
{
	job_count(s, j, 1);
	j->next = NULL;
	if (s->jobs_tail)
		s->jobs_tail->next = j;
	else
		s->jobs = j;
	s->jobs_tail = j;
}

static void jobs_clear(struct mm_sync *s)
{
	while (s->jobs) {
		struct job *j = s->jobs;
		s->jobs = j->next;
		job_count(s, j, -1);
		job_free(j);
	}
	s->jobs_tail = NULL;
}

/* Drops the queued record streams and END of round `id` (abandoned: the next round
 * finds what they would have sent).  Not while pump() is stepping a job: then the
 * stream was reset, and pump() clears every job once the step is over. */
static void jobs_drop_round(struct mm_sync *s, uint64_t id)
{
	if (s->depth_guard)
		return;
	struct job **pp = &s->jobs, *last = NULL;
	while (*pp) {
		struct job *j = *pp;
		if (j->t != JOB_BODY && j->round == id) {
			*pp = j->next;
			job_count(s, j, -1);
			job_free(j);
		} else {
			last = j;
			pp = &j->next;
		}
	}
	s->jobs_tail = last;
}

static int queue_subtree(struct mm_sync *s, const char *user, const uint8_t *prefix, unsigned depth)
{
	struct job *j = job_new(s, JOB_SUBTREE, user);
	if (!j)
		return -ENOMEM;
	memset(j->stack[0].prefix, 0, MM_KEY_LEN);
	if (depth)
		memcpy(j->stack[0].prefix, prefix, (depth + 1) / 2);
	j->stack[0].depth = (uint8_t)depth;
	j->stack[0].child = -1;
	j->sp = 1;
	job_push(s, j);
	return 0;
}

static int queue_keys(struct mm_sync *s, const char *user, const uint8_t *keys, size_t n)
{
	if (!n)
		return 0;
	struct job *j = job_new(s, JOB_KEYS, user);
	if (!j || !(j->keys = malloc(n * MM_KEY_LEN))) {
		job_free(j);
		return -ENOMEM;
	}
	memcpy(j->keys, keys, n * MM_KEY_LEN);
	j->n = n;
	job_push(s, j);
	return 0;
}

struct emit_ctx {
	struct mm_sync *s;
	struct recbuf *rb;
	int rc;
};

static int emit_cb(void *arg, const struct mm_rec *r)
{
	struct emit_ctx *c = arg;
	struct mm_sync *s = c->s;
	bool inl = s->r.inline_bytes < s->cfg.round_inline_bytes;
	uint64_t before = s->st.body_bytes_out;
	int rc = rb_add(s, c->rb, r, inl);
	s->r.inline_bytes += s->st.body_bytes_out - before;
	if (rc < 0 && rc != -EMSGSIZE) {
		c->rc = rc;
		return 1;
	}
	return 0;
}

static void round_finish(struct mm_sync *s);

/* One step of the head job; returns 1 when the job is finished, 0 if not, <0 error. */
static int job_step(struct mm_sync *s, struct job *j)
{
	struct recbuf rb = { .user = j->user, .flags = 0 };
	int rc = 0;
	mm_wbuf_init(&rb.body);
	switch (j->t) {
	case JOB_END:
		if (s->r.st == RS_CLOSING && s->r.id == j->round) {
			if ((rc = mm_wire_enc_end(&s->out, j->round)) == 0 &&
			    (rc = send_out(s, MM_CHAN_STREAM)) == 0 && s->r.st == RS_CLOSING)
				round_finish(s);
		}
		rc = rc < 0 ? rc : 1;
		break;
	case JOB_KEYS: {
		struct mm_user *u = mm_state_user(s->cfg.state, j->user, false);
		size_t stop = j->pos + SUBTREE_BATCH * 4;
		while (u && j->pos < j->n && j->pos < stop && rc == 0) {
			const struct mm_rec *r = mm_user_get(u, j->keys + j->pos * MM_KEY_LEN);
			j->pos++;
			if (r && (rc = rb_add(s, &rb, r, false)) == -EMSGSIZE)
				rc = 0;
		}
		if (rc == 0)
			rc = rb_flush(s, &rb);
		if (rc == 0 && (!u || j->pos >= j->n))
			rc = 1;
		break;
	}
	case JOB_SUBTREE: {
		struct mm_user *u = mm_state_user(s->cfg.state, j->user, false);
		if (!u) {
			rc = 1;
			break;
		}
		/* walk down until a node small enough to emit whole */
		while (j->sp > 0) {
			struct frame *f = &j->stack[j->sp - 1];
			if (f->child < 0) {
				uint8_t h[MM_HASH_LEN];
				uint32_t count = 0;
				mm_user_node(u, f->prefix, f->depth, h, &count);
				if (count <= SUBTREE_BATCH || f->depth >= MM_MAX_DEPTH - 1) {
					struct emit_ctx c = { s, &rb, 0 };
					mm_user_foreach(u, f->prefix, f->depth, emit_cb, &c);
					j->sp--;
					rc = c.rc;
					if (rc == 0)
						rc = rb_flush(s, &rb);
					break;
				}
				f->child = 0;
			}
			if (f->child >= MM_FANOUT) {
				j->sp--;
				continue;
			}
			struct frame *c = &j->stack[j->sp++];
			memcpy(c->prefix, f->prefix, MM_KEY_LEN);
			set_nibble(c->prefix, f->depth, (unsigned)f->child);
			c->depth = (uint8_t)(f->depth + 1);
			c->child = -1;
			f->child++;
		}
		if (rc == 0 && j->sp == 0)
			rc = 1;
		break;
	}
	case JOB_BODY: {
		size_t want = j->total - j->off < s->chunk_cap ? (size_t)(j->total - j->off) : s->chunk_cap;
		ssize_t n = 0;
		if (want > s->chunk_used)
			s->chunk_used = want;
		if (want)
			n = s->cfg.body.read(s->cfg.body.arg, j->user, j->id, j->off, s->chunk, want);
		if (n < 0 || (want && n == 0)) {
			rc = mm_wire_enc_body_err(&s->out, j->req, n < 0 && n >= -4095 ? (int)n : -EIO);
			if (rc == 0)
				rc = send_out(s, MM_CHAN_STREAM);
			rc = rc < 0 ? rc : 1;
			break;
		}
		rc = mm_wire_enc_body(&s->out, j->req, j->off, j->total, s->chunk, (size_t)n);
		if (rc == 0) {
			j->off += (uint64_t)n;
			s->st.body_bytes_out += (uint64_t)n;
			rc = send_out(s, MM_CHAN_STREAM);
		}
		if (rc == 0 && j->off >= j->total) {
			s->st.bodies_out++;
			rc = 1;
		}
		break;
	}
	}
	mm_wbuf_free(&rb.body);
	return rc;
}

static void pump(struct mm_sync *s)
{
	if (s->depth_guard)
		return;
	s->depth_guard++;
	while (s->connected && !s->blocked && s->jobs) {
		struct job *j = s->jobs;
		bool this_round = j->t != JOB_BODY && s->r.st != RS_IDLE && j->round == s->r.id;
		int rc = job_step(s, j);
		if (!s->connected)
			break; /* reset during the step */
		/* my records going out are progress too (steps run as the stream drains, so
		 * a peer that stopped reading does not count): the peer's END or DESCENT
		 * comes after them on the same stream (test_round_slow_link) */
		if (rc >= 0 && this_round && s->r.st != RS_IDLE)
			s->r.deadline = s->now + s->cfg.round_timeout_ms;
		if (rc != 0) {
			s->jobs = j->next;
			if (!s->jobs)
				s->jobs_tail = NULL;
			job_count(s, j, -1);
			job_free(j);
		}
	}
	s->depth_guard--;
	if (!s->connected)
		jobs_clear(s);
}

/* ---- rounds ------------------------------------------------------------------- */

static void plist_clear(struct plist *l)
{
	l->n = 0;
	mm_arena_reset(&l->a);
}

static struct pend *plist_add(struct plist *l)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct pend *v = realloc(l->v, cap * sizeof *v);
		if (!v)
			return NULL;
		l->v = v;
		l->cap = cap;
	}
	struct pend *p = &l->v[l->n++];
	memset(p, 0, sizeof *p);
	return p;
}

static void round_clear(struct mm_sync *s)
{
	s->r.st = RS_IDLE;
	plist_clear(&s->r.p);
	plist_clear(&s->r.q);
	s->r.nacc = 0;
	s->r.acc_bytes = 0;
	mm_arena_reset(&s->r.acca);
}

static void round_begin(struct mm_sync *s, uint64_t id, bool mine)
{
	round_clear(s);
	s->r.id = id;
	s->r.mine = mine;
	s->r.legs = s->r.dbytes = s->r.rbytes = s->r.diffs = 0;
	s->r.inline_bytes = 0;
	s->r.deadline = s->now + s->cfg.round_timeout_ms;
	s->st.rounds_started++;
	event(s, MM_SYNC_EV_ROUND_START, 0, NULL, NULL, id);
}

static void round_finish(struct mm_sync *s)
{
	uint64_t id = s->r.id;
	s->st.rounds_done++;
	s->st.last_sync_ms = s->now;
	s->st.last_differences = s->r.diffs;
	s->st.last_descent_bytes = s->r.dbytes;
	s->st.last_record_bytes = s->r.rbytes;
	s->st.last_legs = s->r.legs;
	s->st.last_round_trips = 1 + (s->r.legs + 1) / 2;
	round_clear(s);
	event(s, MM_SYNC_EV_ROUND_DONE, 0, NULL, NULL, id);
}

static void round_abort(struct mm_sync *s, int why, bool tell_peer)
{
	if (s->r.st == RS_IDLE)
		return;
	uint64_t id = s->r.id;
	s->st.rounds_aborted++;
	round_clear(s);
	jobs_drop_round(s, id);
	if (tell_peer && s->connected && mm_wire_enc_abort(&s->out, id, why) == 0)
		send_out(s, MM_CHAN_STREAM);
	event(s, MM_SYNC_EV_ROUND_ABORT, why, NULL, NULL, id);
}

/* DESCENT output being built: elements in parts of at most PART_MAX bytes. */
struct dout {
	struct mm_wbuf el;
	size_t n;
	size_t summaries;
	size_t total;
};

static int dout_flush(struct mm_sync *s, struct dout *o, bool more)
{
	int rc = mm_wire_enc_descent_begin(&s->out, s->r.id, more, o->n);
	if (rc == 0 && o->el.size && mm_wbuf_write(&s->out, o->el.data, o->el.size) != 0)
		rc = -ENOMEM;
	o->el.size = 0;
	o->n = 0;
	if (rc < 0) {
		s->out.size = 0;
		return rc;
	}
	return send_out(s, MM_CHAN_STREAM);
}

static int dout_elem(struct mm_sync *s, struct dout *o, bool bin, uint16_t bitmap,
                     const uint8_t *p, size_t len)
{
	if (o->el.size > PART_MAX || o->n >= MM_WIRE_MAX_ELEMS) {
		int rc = dout_flush(s, o, true);
		if (rc < 0)
			return rc;
	}
	int rc = bin ? mm_wire_enc_elem_bin(&o->el, p, len) : mm_wire_enc_elem_bitmap(&o->el, bitmap);
	if (rc < 0)
		return rc;
	o->n++;
	o->total++;
	return 0;
}

struct ucollect {
	struct mm_user **v;
	size_t n, cap;
	int rc;
};

static int ucollect_cb(void *arg, struct mm_user *u)
{
	struct ucollect *c = arg;
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 16;
		struct mm_user **v = realloc(c->v, cap * sizeof *v);
		if (!v) {
			c->rc = -ENOMEM;
			return 1;
		}
		c->v = v;
		c->cap = cap;
	}
	c->v[c->n++] = u;
	return 0;
}

struct rcollect {
	uint8_t *keys;    /* n x 16 */
	uint8_t *hashes;  /* n x LT */
	size_t n, cap;
	const struct mm_sync *s;
	int rc;
};

static int rcollect_cb(void *arg, const struct mm_rec *r)
{
	struct rcollect *c = arg;
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 8;
		uint8_t *k = realloc(c->keys, cap * MM_KEY_LEN);
		if (!k) {
			c->rc = -ENOMEM;
			return 1;
		}
		c->keys = k;
		uint8_t *h = realloc(c->hashes, cap * LT);
		if (!h) {
			c->rc = -ENOMEM;
			return 1;
		}
		c->hashes = h;
		c->cap = cap;
	}
	uint8_t full[MM_HASH_LEN];
	mm_rec_hash(r, full);
	memcpy(c->keys + c->n * MM_KEY_LEN, r->key, MM_KEY_LEN);
	salted(c->s, full, sizeof full, NULL, 0, c->hashes + c->n * LT, LT);
	c->n++;
	return 0;
}

static void user_leaf(const struct mm_sync *s, const struct mm_user *u, uint8_t out[LT])
{
	uint8_t root[MM_HASH_LEN];
	const char *name = mm_user_name(u);
	mm_user_root(u, root);
	salted(s, (const uint8_t *)name, strlen(name), root, sizeof root, out, LT);
}

/* A bitmap over m LEAVES entries: uint16 element up to 16 entries, else bin. */
static int dout_bitmap(struct mm_sync *s, struct dout *o, const uint8_t *bm, size_t m)
{
	if (m <= 16)
		return dout_elem(s, o, false, (uint16_t)(bm[0] | (m > 8 ? bm[1] << 8 : 0)), NULL, 0);
	return dout_elem(s, o, true, 0, bm, (m + 7) / 8);
}

static int first_cb(void *arg, const struct mm_rec *r)
{
	memcpy(arg, r->key, MM_KEY_LEN); /* r itself is only valid during the call */
	return 1;
}

/* The record whose key starts with these KP bytes (keys are uniform hashes: at most
 * one in practice), or NULL. */
static const struct mm_rec *rec_by_prefix(struct mm_user *u, const uint8_t *kp)
{
	uint8_t prefix[MM_KEY_LEN] = { 0 };
	uint8_t key[MM_KEY_LEN];
	memcpy(prefix, kp, KP);
	if (!mm_user_foreach(u, prefix, 2 * KP, first_cb, key))
		return NULL;
	return mm_user_get(u, key);
}

/* Emits my summary of node (tree, user, prefix, depth) and records it as pending. */
static int emit_summary(struct mm_sync *s, struct dout *o, enum tree tree, const char *user,
                        const uint8_t *prefix, unsigned depth)
{
	struct mm_user *u = NULL;
	uint8_t h[MM_HASH_LEN];
	uint32_t count = 0;
	if (tree == TREE_USERS) {
		mm_state_node(s->cfg.state, prefix, depth, h, &count);
	} else if (user && (u = mm_state_user(s->cfg.state, user, false))) {
		mm_user_node(u, prefix, depth, h, &count);
	}
	struct pend *p = plist_add(&s->r.q);
	if (!p)
		return -ENOMEM;
	p->tree = (uint8_t)tree;
	p->depth = (uint8_t)depth;
	memcpy(p->prefix, prefix, MM_KEY_LEN);
	if (user && !(p->user = arena_strdup(&s->r.q.a, user)))
		return -ENOMEM;
	int rc = 0;
	uint8_t *buf = NULL;
	size_t len;
	if (count > LEAF_MAX && depth < MM_MAX_DEPTH - 1) {
		uint8_t hs[MM_FANOUT][MM_HASH_LEN];
		uint8_t e[EXPAND_LEN];
		if (tree == TREE_USERS)
			mm_state_children(s->cfg.state, prefix, depth, hs, NULL);
		else
			mm_user_children(u, prefix, depth, hs, NULL);
		for (unsigned i = 0; i < MM_FANOUT; i++)
			salted(s, hs[i], MM_HASH_LEN, NULL, 0, e + i * HT, HT);
		p->kind = 'E';
		rc = dout_elem(s, o, true, 0, e, sizeof e);
	} else if (tree == TREE_USERS) {
		struct ucollect c = { 0 };
		mm_state_foreach(s->cfg.state, prefix, depth, ucollect_cb, &c);
		rc = c.rc;
		len = c.n * LEAF_ENTRY;
		p->kind = 'L';
		p->n = c.n;
		if (rc == 0 && (!(buf = malloc(len + 1)) ||
		                !(p->keys = mm_arena_alloc(&s->r.q.a, c.n * MM_KEY_LEN + 1)) ||
		                !(p->names = mm_arena_alloc(&s->r.q.a, (c.n + 1) * sizeof *p->names))))
			rc = -ENOMEM;
		for (size_t i = 0; rc == 0 && i < c.n; i++) {
			const char *name = mm_user_name(c.v[i]);
			mm_user_position(name, p->keys + i * MM_KEY_LEN);
			memcpy(buf + i * LEAF_ENTRY, p->keys + i * MM_KEY_LEN, KP);
			user_leaf(s, c.v[i], buf + i * LEAF_ENTRY + KP);
			if (!(p->names[i] = arena_strdup(&s->r.q.a, name)))
				rc = -ENOMEM;
		}
		if (rc == 0) {
			rc = dout_elem(s, o, true, 0, buf, len);
		}
		free(c.v);
	} else {
		struct rcollect c = { .s = s };
		if (u)
			mm_user_foreach(u, prefix, depth, rcollect_cb, &c);
		rc = c.rc;
		len = c.n * LEAF_ENTRY;
		p->kind = 'L';
		p->n = c.n;
		if (rc == 0 && (!(buf = malloc(len + 1)) ||
		                !(p->keys = mm_arena_alloc(&s->r.q.a, c.n * MM_KEY_LEN + 1))))
			rc = -ENOMEM;
		for (size_t i = 0; rc == 0 && i < c.n; i++) {
			memcpy(p->keys + i * MM_KEY_LEN, c.keys + i * MM_KEY_LEN, MM_KEY_LEN);
			memcpy(buf + i * LEAF_ENTRY, c.keys + i * MM_KEY_LEN, KP);
			memcpy(buf + i * LEAF_ENTRY + KP, c.hashes + i * LT, LT);
		}
		if (rc == 0) {
			rc = dout_elem(s, o, true, 0, buf, len);
		}
		free(c.keys);
		free(c.hashes);
	}
	free(buf);
	if (rc == 0)
		o->summaries++;
	return rc;
}

static int check_summary(const uint8_t *b, size_t len, unsigned depth, const uint8_t *prefix)
{
	if (len == EXPAND_LEN)
		return depth < MM_MAX_DEPTH - 1 ? 0 : -EPROTO;
	if (len % LEAF_ENTRY)
		return -EPROTO;
	unsigned d = depth < 2 * KP ? depth : 2 * KP; /* nibbles an entry carries */
	for (size_t i = 0; i < len / LEAF_ENTRY; i++)
		if (!has_prefix(b + i * LEAF_ENTRY, prefix, d))
			return -EPROTO;
	return 0;
}

static int set_bit(uint8_t *bm, size_t i)
{
	bm[i / 8] |= (uint8_t)(1u << (i % 8));
	return 0;
}

static bool get_bit(const uint8_t *bm, size_t i)
{
	return bm[i / 8] & (1u << (i % 8));
}

/* Answers the peer's summary of node (tree, user, prefix, depth). */
static int answer_summary(struct mm_sync *s, struct dout *o, enum tree tree, const char *user,
                          const uint8_t *prefix, unsigned depth, const uint8_t *b, size_t len)
{
	int rc = check_summary(b, len, depth, prefix);
	if (rc < 0)
		return rc;
	struct mm_user *u = NULL;
	if (tree == TREE_USER && user)
		u = mm_state_user(s->cfg.state, user, false);

	if (len == EXPAND_LEN) {
		uint8_t hs[MM_FANOUT][MM_HASH_LEN];
		if (tree == TREE_USERS)
			mm_state_children(s->cfg.state, prefix, depth, hs, NULL);
		else if (u)
			mm_user_children(u, prefix, depth, hs, NULL);
		else
			memset(hs, 0, sizeof hs);
		uint16_t bm = 0;
		for (unsigned i = 0; i < MM_FANOUT; i++) {
			uint8_t t[HT];
			salted(s, hs[i], MM_HASH_LEN, NULL, 0, t, HT);
			if (memcmp(t, b + i * HT, HT))
				bm |= (uint16_t)(1u << i);
		}
		if ((rc = dout_elem(s, o, false, bm, NULL, 0)) < 0)
			return rc;
		for (unsigned i = 0; i < MM_FANOUT && rc == 0; i++) {
			if (!(bm & (1u << i)))
				continue;
			uint8_t cp[MM_KEY_LEN];
			memcpy(cp, prefix, MM_KEY_LEN);
			set_nibble(cp, depth, i);
			rc = emit_summary(s, o, tree, user, cp, depth + 1);
		}
		return rc;
	}

	size_t m = len / LEAF_ENTRY;
	const uint8_t *ent = b;
	uint8_t *bm = calloc(1, m / 8 + 1);
	if (!bm)
		return -ENOMEM;

	if (tree == TREE_USERS) {
		struct ucollect c = { 0 };
		mm_state_foreach(s->cfg.state, prefix, depth, ucollect_cb, &c);
		rc = c.rc;
		bool *matched = calloc(c.n + 1, 1);
		struct mm_user **theirs = calloc(m + 1, sizeof *theirs);
		if (!matched || !theirs)
			rc = -ENOMEM;
		for (size_t j = 0; rc == 0 && j < m; j++) {
			struct mm_user *mine = NULL;
			for (size_t i = 0; i < c.n; i++) {
				uint8_t pos[MM_KEY_LEN];
				mm_user_position(mm_user_name(c.v[i]), pos);
				if (!memcmp(pos, ent + j * LEAF_ENTRY, KP)) {
					mine = c.v[i];
					matched[i] = true;
					break;
				}
			}
			uint8_t lh[LT];
			if (mine)
				user_leaf(s, mine, lh);
			if (!mine || memcmp(lh, ent + j * LEAF_ENTRY + KP, LT)) {
				set_bit(bm, j);
				theirs[j] = mine;
				s->r.diffs++;
			}
		}
		for (size_t i = 0; rc == 0 && i < c.n; i++)
			if (!matched[i]) {
				rc = queue_subtree(s, mm_user_name(c.v[i]), prefix, 0);
				s->r.diffs++;
			}
		if (rc == 0)
			rc = dout_bitmap(s, o, bm, m);
		static const uint8_t zero[MM_KEY_LEN];
		for (size_t j = 0; rc == 0 && j < m; j++)
			if (get_bit(bm, j))
				rc = emit_summary(s, o, TREE_USER, theirs[j] ? mm_user_name(theirs[j]) : NULL,
				                  zero, 0);
		free(matched);
		free(theirs);
		free(c.v);
		free(bm);
		return rc;
	}

	/* LEAVES in a user tree */
	uint8_t h[MM_HASH_LEN];
	uint32_t count = 0;
	if (u)
		mm_user_node(u, prefix, depth, h, &count);
	if (count > KEYS_JOB_MAX) {
		/* The peer holds at most a few records here and we hold many: send the
		 * whole subtree (a few duplicates at most) and look up its few entries. */
		for (size_t j = 0; j < m; j++) {
			const struct mm_rec *r = rec_by_prefix(u, ent + j * LEAF_ENTRY);
			uint8_t full[MM_HASH_LEN], lh[LT];
			if (r) {
				mm_rec_hash(r, full);
				salted(s, full, sizeof full, NULL, 0, lh, LT);
			}
			if (!r || memcmp(lh, ent + j * LEAF_ENTRY + KP, LT)) {
				set_bit(bm, j);
				s->r.diffs++;
			}
		}
		s->r.diffs += count;
		rc = queue_subtree(s, user, prefix, depth);
	} else {
		struct rcollect c = { .s = s };
		if (u)
			mm_user_foreach(u, prefix, depth, rcollect_cb, &c);
		rc = c.rc;
		uint8_t *push = malloc((c.n + 1) * MM_KEY_LEN);
		size_t np = 0;
		if (!push)
			rc = -ENOMEM;
		for (size_t i = 0; rc == 0 && i < c.n; i++) {
			bool same = false;
			for (size_t j = 0; j < m; j++)
				if (!memcmp(c.keys + i * MM_KEY_LEN, ent + j * LEAF_ENTRY, KP)) {
					same = !memcmp(c.hashes + i * LT, ent + j * LEAF_ENTRY + KP, LT);
					break;
				}
			if (!same)
				memcpy(push + np++ * MM_KEY_LEN, c.keys + i * MM_KEY_LEN, MM_KEY_LEN);
		}
		for (size_t j = 0; rc == 0 && j < m; j++) {
			bool same = false;
			for (size_t i = 0; i < c.n; i++)
				if (!memcmp(c.keys + i * MM_KEY_LEN, ent + j * LEAF_ENTRY, KP)) {
					same = !memcmp(c.hashes + i * LT, ent + j * LEAF_ENTRY + KP, LT);
					break;
				}
			if (!same) {
				set_bit(bm, j);
				s->r.diffs++;
			}
		}
		s->r.diffs += np;
		if (rc == 0 && np)
			rc = queue_keys(s, user, push, np);
		free(push);
		free(c.keys);
		free(c.hashes);
	}
	if (rc == 0)
		rc = dout_bitmap(s, o, bm, m);
	free(bm);
	return rc;
}

/* Reads the peer's answers to my pending summaries (s->r.p), answering the summaries
 * they contain into o. */
static int take_answers(struct mm_sync *s, struct dout *o, const struct mm_wire_elem *e, size_t n)
{
	size_t k = 0;
	int rc = 0;
	for (size_t pi = 0; pi < s->r.p.n && rc == 0; pi++) {
		const struct pend *p = &s->r.p.v[pi];
		if (k >= n)
			return -EPROTO;
		if (p->kind == 'E') {
			if (e[k].is_bin)
				return -EPROTO;
			uint16_t bm = e[k++].bitmap;
			if (popcount16(bm) > n - k)
				return -EPROTO;
			for (unsigned i = 0; i < MM_FANOUT && rc == 0; i++) {
				if (!(bm & (1u << i)))
					continue;
				if (!e[k].is_bin)
					return -EPROTO;
				uint8_t cp[MM_KEY_LEN];
				memcpy(cp, p->prefix, MM_KEY_LEN);
				set_nibble(cp, p->depth, i);
				rc = answer_summary(s, o, p->tree, p->user, cp, p->depth + 1u, e[k].bin,
				                    e[k].bin_len);
				k++;
			}
			continue;
		}
		/* my LEAVES: a wanted bitmap */
		uint8_t small[2];
		const uint8_t *bm;
		if (p->n <= 16) {
			if (e[k].is_bin || (p->n < 16 && e[k].bitmap >> p->n))
				return -EPROTO;
			small[0] = (uint8_t)e[k].bitmap;
			small[1] = (uint8_t)(e[k].bitmap >> 8);
			bm = small;
			k++;
		} else {
			if (!e[k].is_bin || e[k].bin_len != (p->n + 7) / 8)
				return -EPROTO;
			bm = e[k++].bin;
		}
		if (p->tree == TREE_USER) {
			uint8_t *want = malloc(p->n * MM_KEY_LEN + 1);
			size_t nw = 0;
			if (!want)
				return -ENOMEM;
			for (size_t i = 0; i < p->n; i++)
				if (get_bit(bm, i))
					memcpy(want + nw++ * MM_KEY_LEN, p->keys + i * MM_KEY_LEN, MM_KEY_LEN);
			s->r.diffs += nw;
			if (nw && p->user)
				rc = queue_keys(s, p->user, want, nw);
			free(want);
			continue;
		}
		static const uint8_t zero[MM_KEY_LEN];
		for (size_t i = 0; i < p->n && rc == 0; i++) {
			if (!get_bit(bm, i))
				continue;
			if (k >= n || !e[k].is_bin)
				return -EPROTO;
			rc = answer_summary(s, o, TREE_USER, p->names[i], zero, 0, e[k].bin, e[k].bin_len);
			k++;
		}
	}
	if (rc == 0 && k != n)
		rc = -EPROTO;
	return rc;
}

/* Sends my answer message built in o, and moves to the next state. */
static int finish_message(struct mm_sync *s, struct dout *o)
{
	int rc = 0;
	/* the pending list becomes the summaries just emitted */
	struct plist t = s->r.p;
	s->r.p = s->r.q;
	s->r.q = t;
	plist_clear(&s->r.q);
	if (o->total == 0) {
		/* nothing to answer: I close the round after the records asked for */
		struct job *j = job_new(s, JOB_END, NULL);
		if (!j)
			return -ENOMEM;
		job_push(s, j);
		s->r.st = RS_CLOSING;
		return 0;
	}
	rc = dout_flush(s, o, false);
	if (rc < 0)
		return rc;
	s->r.st = o->summaries ? RS_AWAIT_DESCENT : RS_AWAIT_END;
	return 0;
}

static int handle_round_msg(struct mm_sync *s, const struct mm_wire_elem *e, size_t n,
                            const uint8_t *start_summary, size_t start_len)
{
	struct dout o = { .n = 0 };
	int rc;
	mm_wbuf_init(&o.el);
	plist_clear(&s->r.q);
	if (start_summary) {
		static const uint8_t zero[MM_KEY_LEN];
		rc = answer_summary(s, &o, TREE_USERS, NULL, zero, 0, start_summary, start_len);
	} else {
		rc = take_answers(s, &o, e, n);
	}
	if (rc == 0 && s->connected)
		rc = finish_message(s, &o);
	mm_wbuf_free(&o.el);
	return rc;
}

static void nonce_for(struct mm_sync *s, uint64_t id)
{
	uint8_t root[MM_HASH_LEN];
	uint64_t in[3] = { id, s->cfg.local_node, s->cfg.peer_node };
	crypto_generichash_state st;
	mm_state_root(s->cfg.state, root);
	crypto_generichash_init(&st, NULL, 0, MM_WIRE_NONCE_LEN);
	crypto_generichash_update(&st, (const uint8_t *)in, sizeof in);
	crypto_generichash_update(&st, root, sizeof root);
	crypto_generichash_final(&st, s->r.nonce, MM_WIRE_NONCE_LEN);
}

int mm_sync_start(struct mm_sync *s, uint64_t now_ms)
{
	s->now = now_ms;
	if (!s->connected)
		return -ENOTCONN;
	if (s->r.st != RS_IDLE || s->round_jobs)
		return -EBUSY; /* (an earlier round's records still wait for the stream) */
	uint64_t id = (++s->round_ctr << 1) | (s->cfg.local_node < s->cfg.peer_node ? 1 : 0);
	round_begin(s, id, true);
	nonce_for(s, id);
	/* my summary of the users root, sent in START */
	struct dout o = { .n = 0 };
	mm_wbuf_init(&o.el);
	static const uint8_t zero[MM_KEY_LEN];
	int rc = emit_summary(s, &o, TREE_USERS, NULL, zero, 0);
	if (rc == 0) {
		/* o.el holds one msgpack bin: re-read it to put it in START */
		const uint8_t *p = (const uint8_t *)o.el.data;
		size_t hl = p[0] == 0xc4 ? 2 : p[0] == 0xc5 ? 3 : 5;
		rc = mm_wire_enc_start(&s->out, id, s->r.nonce, p + hl, o.el.size - hl);
		struct plist t = s->r.p;
		s->r.p = s->r.q;
		s->r.q = t;
		plist_clear(&s->r.q);
		if (rc == 0) {
			s->r.st = RS_AWAIT_DESCENT;
			rc = send_out(s, MM_CHAN_STREAM);
		}
	}
	mm_wbuf_free(&o.el);
	if (rc < 0 && s->r.st != RS_IDLE)
		round_abort(s, rc, false);
	return rc;
}

/* ---- bodies --------------------------------------------------------------------- */

static void breq_free(struct mm_sync *s, struct breq *b, int result)
{
	if (b->handle)
		s->cfg.body.abort(b->handle);
	b->handle = NULL;
	if (s->cfg.fetch)
		mm_fetch_done(s->cfg.fetch, s, b->user, b->id, result, s->now);
	/* the hash state buffers up to a block (128 bytes) of the body not yet hashed */
	sodium_memzero(&b->h, sizeof b->h);
	free(b->user);
	free(b);
}

static void breq_unlink(struct mm_sync *s, struct breq *b)
{
	for (struct breq **pp = &s->breqs; *pp; pp = &(*pp)->next)
		if (*pp == b) {
			*pp = b->next;
			return;
		}
}

int mm_sync_fetch(struct mm_sync *s, const char *user, const uint8_t id[MM_ID_LEN],
                  uint64_t size, uint64_t now_ms)
{
	s->now = now_ms;
	if (!s->connected)
		return -ENOTCONN;
	if (!user || !*user || strlen(user) > MM_NAME_MAX)
		return -EINVAL;
	for (struct breq *b = s->breqs; b; b = b->next)
		if (!memcmp(b->id, id, MM_ID_LEN) && !strcmp(b->user, user))
			return -EALREADY;
	struct breq *b = calloc(1, sizeof *b);
	if (!b || !(b->user = xstrdup(user))) {
		free(b);
		return -ENOMEM;
	}
	b->req = ++s->req_ctr;
	memcpy(b->id, id, MM_ID_LEN);
	b->size = size;
	b->deadline = now_ms + s->cfg.body_timeout_ms;
	crypto_generichash_init(&b->h, NULL, 0, MM_ID_LEN);
	int rc = mm_wire_enc_get_body(&s->out, b->req, user, id, 0, size);
	if (rc < 0) {
		s->out.size = 0;
		free(b->user);
		free(b);
		return rc;
	}
	b->next = s->breqs;
	s->breqs = b;
	rc = send_out(s, MM_CHAN_STREAM);
	return rc < 0 ? rc : 0;
}

static void body_fail(struct mm_sync *s, struct breq *b, int err)
{
	breq_unlink(s, b);
	s->st.bodies_bad += err == -EBADMSG;
	event(s, MM_SYNC_EV_BODY_BAD, err, b->user, b->id, 0);
	breq_free(s, b, err);
}

static int handle_body(struct mm_sync *s, const struct mm_wire_msg *m)
{
	s->body_in_at = s->now;
	struct breq *b = s->breqs;
	while (b && b->req != m->body.req)
		b = b->next;
	if (!b)
		return 0; /* timed out or reset: ignore */
	if (m->body.total != b->size || m->body.offset != b->got) {
		body_fail(s, b, -EBADMSG);
		return 0;
	}
	int rc = 0;
	if (!b->handle)
		rc = s->cfg.body.begin(s->cfg.body.arg, b->user, b->id, b->size, &b->handle);
	if (rc == 0 && m->body.len)
		rc = s->cfg.body.write(b->handle, m->body.data, m->body.len);
	if (rc < 0) {
		body_fail(s, b, rc);
		return 0;
	}
	crypto_generichash_update(&b->h, m->body.data, m->body.len);
	b->got += m->body.len;
	s->st.body_bytes_in += m->body.len;
	b->deadline = s->now + s->cfg.body_timeout_ms;
	if (b->got < b->size)
		return 0;
	uint8_t id[MM_ID_LEN];
	crypto_generichash_final(&b->h, id, sizeof id);
	if (memcmp(id, b->id, MM_ID_LEN)) {
		body_fail(s, b, -EBADMSG);
		return 0;
	}
	void *h = b->handle;
	b->handle = NULL;
	rc = s->cfg.body.commit(h);
	if (rc < 0) {
		body_fail(s, b, rc);
		return 0;
	}
	breq_unlink(s, b);
	s->st.bodies_in++;
	event(s, MM_SYNC_EV_BODY_OK, 0, b->user, b->id, 0);
	breq_free(s, b, 0);
	return 0;
}

static int handle_get_body(struct mm_sync *s, const struct mm_wire_msg *m)
{
	bool busy = s->body_jobs >= BODY_JOBS_MAX;
	if (busy || s->cfg.body.have(s->cfg.body.arg, m->get_body.user, m->get_body.id) != 1) {
		int rc = mm_wire_enc_body_err(&s->out, m->get_body.req, busy ? -EBUSY : -ENOENT);
		return rc < 0 ? rc : send_out(s, MM_CHAN_STREAM);
	}
	struct job *j = job_new(s, JOB_BODY, m->get_body.user);
	if (!j)
		return -ENOMEM;
	j->req = m->get_body.req;
	j->off = m->get_body.offset;
	j->total = m->get_body.size;
	memcpy(j->id, m->get_body.id, MM_ID_LEN);
	job_push(s, j);
	return 0;
}

/* Writes an inline body (already checked against its id) unless present. */
/* An inline body that could not be written: the merge did not ask for a fetch (the
 * body was right there), so ask now, as for any missing body. */
static void inline_failed(struct mm_sync *s, const char *user, const struct mm_wire_rec *w,
                          struct mm_sync *hint)
{
	if (w->rec.type != MM_REC_MESSAGE)
		return;
	if (s->cfg.fetch)
		mm_fetch_want(s->cfg.fetch, user, w->rec.msg.body, w->rec.msg.size, w->rec.msg.uid_value, hint,
		              s->now);
	else
		event(s, MM_SYNC_EV_BODY_MISSING, 0, user, w->rec.msg.body, 0);
}

static void store_inline(struct mm_sync *s, const char *user, const struct mm_wire_rec *w)
{
	const uint8_t *id = w->rec.msg.body;
	uint8_t got[MM_ID_LEN];
	if (s->cfg.body.have(s->cfg.body.arg, user, id) == 1)
		return;
	mm_body_id(w->body, w->body_len, got);
	if (memcmp(got, id, MM_ID_LEN)) {
		s->st.bodies_bad++;
		event(s, MM_SYNC_EV_BODY_BAD, -EBADMSG, user, id, 0);
		inline_failed(s, user, w, NULL); /* not from the peer that sent it wrong */
		return;
	}
	void *h = NULL;
	int rc = s->cfg.body.begin(s->cfg.body.arg, user, id, w->body_len, &h);
	if (rc == 0 && w->body_len)
		rc = s->cfg.body.write(h, w->body, w->body_len);
	if (rc < 0) {
		if (h)
			s->cfg.body.abort(h);
		event(s, MM_SYNC_EV_BODY_BAD, rc, user, id, 0);
		inline_failed(s, user, w, s);
		return;
	}
	rc = s->cfg.body.commit(h);
	if (rc < 0) {
		event(s, MM_SYNC_EV_BODY_BAD, rc, user, id, 0);
		inline_failed(s, user, w, s);
		return;
	}
	s->st.bodies_in++;
	s->st.body_bytes_in += w->body_len;
	event(s, MM_SYNC_EV_BODY_OK, 0, user, id, 0);
	if (s->cfg.fetch)
		mm_fetch_have(s->cfg.fetch, user, id, s->now);
}

/* ---- records in ----------------------------------------------------------------- */

static void eff_wrap(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *r)
{
	struct mm_sync *s = arg;
	if (s->cfg.eff)
		s->cfg.eff(s->cfg.eff_arg, user, eff, r);
	if (eff == MM_EFF_MSG_NEW && !s->merging_inline &&
	    s->cfg.body.have(s->cfg.body.arg, user, r->msg.body) != 1) {
		if (s->cfg.fetch)
			mm_fetch_want(s->cfg.fetch, user, r->msg.body, r->msg.size, r->msg.uid_value, s, s->now);
		else
			event(s, MM_SYNC_EV_BODY_MISSING, 0, user, r->msg.body, 0);
	}
}

static mm_hlc max_stamp(const struct mm_rec *r)
{
	mm_hlc m = { 0, 0 };
#define TAKE(x) do { if (mm_hlc_cmp((x), m) > 0) m = (x); } while (0)
	switch (r->type) {
	case MM_REC_MESSAGE:
		TAKE(r->msg.created);
		for (unsigned i = 0; i < MM_FLAG_COUNT; i++)
			TAKE(r->msg.flags[i].stamp);
		for (size_t i = 0; i < r->msg.n_keywords; i++)
			TAKE(r->msg.keywords[i].reg.stamp);
		TAKE(r->msg.uid.stamp);
		break;
	case MM_REC_EXPUNGED: TAKE(r->tomb.stamp); break;
	case MM_REC_FOLDER: TAKE(r->folder.exists.stamp); TAKE(r->folder.subscribed.stamp); break;
	case MM_REC_HORIZON: TAKE(r->horizon.stamp); break;
	}
#undef TAKE
	return m;
}

static int handle_records_in(struct mm_sync *s, const struct mm_wire_msg *m, bool push, const char *user);

static int handle_records(struct mm_sync *s, const struct mm_wire_msg *m, size_t len)
{
	bool push = m->records.flags & MM_RECORDS_PUSH;
	const char *user = m->records.user;
	if (push)
		s->st.pushes_in++;
	else if (s->r.st != RS_IDLE) {
		s->r.rbytes += len;
		/* records coming are progress: over a slow link a round's records may take
		 * longer than round_timeout to cross (test_round_slow_link) */
		s->r.deadline = s->now + s->cfg.round_timeout_ms;
	}
	if (push && s->cfg.relay)
		mm_delta_clear(s->relay_delta);
	/* the bodies this message's records want are asked for in their order (UIDs),
	 * once all are known, not one by one in the records' (key) order */
	if (s->cfg.fetch)
		mm_fetch_batch_begin(s->cfg.fetch);
	int rc = handle_records_in(s, m, push, user);
	if (s->cfg.fetch)
		mm_fetch_batch_end(s->cfg.fetch, s->now);
	return rc;
}

static int handle_records_in(struct mm_sync *s, const struct mm_wire_msg *m, bool push, const char *user)
{
	for (size_t i = 0; i < m->records.n; i++) {
		const struct mm_wire_rec *w = &m->records.recs[i];
		s->st.records_in++;
		if (w->rec.type == MM_REC_HORIZON && MM_HLC_MS(w->rec.horizon.stamp) > s->now) {
			/* A horizon ahead of our clock (a peer's clock years ahead, a bug):
			 * taken, it would drop every tombstone here at once and keep every
			 * expunge made here before it from being stored, so the message comes
			 * back from any replica that missed the push.  A correct node's
			 * horizon is gc_grace behind its clock; taken once our clock passes
			 * it (the next round brings it again). */
			event(s, MM_SYNC_EV_RECORD_REJECTED, -ERANGE, user, NULL, 0);
			continue;
		}
		if (s->cfg.clock) {
			mm_hlc st = max_stamp(&w->rec);
			if (st.t)
				mm_clock_observe(s->cfg.clock, st, s->now, s->cfg.max_skew_ms);
		}
		/* Merge first, write inline bodies after the whole message is merged: the
		 * driver's store keeps bodies only for messages it knows, no fetch is
		 * started for a body that is right here, and a store that makes records
		 * durable before their files does so once for the batch, not per body. */
		s->merging_inline = w->body != NULL;
		int rc = mm_state_merge(s->cfg.state, user, &w->rec, eff_wrap, s);
		s->merging_inline = false;
		if (rc < 0) {
			if (rc == -ENOMEM)
				return rc;
			event(s, MM_SYNC_EV_RECORD_REJECTED, rc, user, NULL, 0);
			continue;
		}
		if (rc > 0) {
			s->st.records_changed++;
			if (push && s->cfg.relay &&
			    (mm_delta_add(s->relay_delta, user, &w->rec) < 0 ||
			     (w->body && mm_delta_set_fresh(s->relay_delta, user, w->rec.key) < 0)))
				return -ENOMEM;
		}
	}
	for (size_t i = 0; i < m->records.n; i++)
		if (m->records.recs[i].body)
			store_inline(s, user, &m->records.recs[i]);
	if (push && s->cfg.relay && mm_delta_count(s->relay_delta))
		s->cfg.relay(s->cfg.relay_arg, s, s->relay_delta, s->now);
	return 0;
}

/* ---- public: lifecycle ------------------------------------------------------------ */

int mm_sync_new(const struct mm_sync_config *cfg, struct mm_sync **s_r)
{
	*s_r = NULL;
	if (!cfg || !cfg->state || !cfg->io.send || !cfg->body.read || !cfg->body.begin ||
	    !cfg->body.write || !cfg->body.commit || !cfg->body.abort || !cfg->body.have ||
	    cfg->local_node == cfg->peer_node)
		return -EINVAL;
	if (sodium_init() < 0)
		return -ENOMEM;
	struct mm_sync *s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	s->cfg = *cfg;
	if (!s->cfg.round_timeout_ms)
		s->cfg.round_timeout_ms = MM_SYNC_ROUND_TIMEOUT_MS;
	if (!s->cfg.body_timeout_ms)
		s->cfg.body_timeout_ms = MM_SYNC_BODY_TIMEOUT_MS;
	if (!s->cfg.inline_max)
		s->cfg.inline_max = MM_SYNC_INLINE_MAX;
	if (s->cfg.inline_max > MM_WIRE_MAX - 4096)
		s->cfg.inline_max = MM_WIRE_MAX - 4096;
	if (!s->cfg.round_inline_bytes)
		s->cfg.round_inline_bytes = MM_SYNC_ROUND_INLINE;
	if (!s->cfg.max_skew_ms)
		s->cfg.max_skew_ms = 60000;
	s->chunk_cap = MM_SYNC_CHUNK > s->cfg.inline_max ? MM_SYNC_CHUNK : s->cfg.inline_max;
	mm_wbuf_init(&s->out);
	mm_arena_init_wiped(&s->rx); /* keywords, folder names of received records */
	mm_arena_init(&s->r.p.a);
	mm_arena_init(&s->r.q.a);
	mm_arena_init(&s->r.acca);
	if (!(s->chunk = malloc(s->chunk_cap)) || !(s->relay_delta = mm_delta_new())) {
		mm_sync_free(&s);
		return -ENOMEM;
	}
	*s_r = s;
	return 0;
}

static void drop_transfers(struct mm_sync *s)
{
	if (!s->depth_guard)
		jobs_clear(s); /* else pump() clears them once the current step is over */
	while (s->breqs) {
		struct breq *b = s->breqs;
		s->breqs = b->next;
		breq_free(s, b, -ECONNRESET);
	}
}

void mm_sync_free(struct mm_sync **sp)
{
	if (!sp || !*sp)
		return;
	struct mm_sync *s = *sp;
	*sp = NULL;
	s->connected = false;
	struct mm_fetch *f = s->cfg.fetch;
	s->cfg.fetch = NULL; /* in-flight fetches: the scheduler is told once, below */
	drop_transfers(s);
	if (f)
		mm_fetch_peer_down(f, s, s->now);
	mm_wbuf_free(&s->out);
	mm_arena_free(&s->rx);
	mm_arena_free(&s->r.p.a);
	mm_arena_free(&s->r.q.a);
	mm_arena_free(&s->r.acca);
	free(s->r.p.v);
	free(s->r.q.v);
	free(s->r.acc);
	if (s->chunk)
		sodium_memzero(s->chunk, s->chunk_used);
	free(s->chunk);
	mm_delta_free(&s->relay_delta);
	free(s);
}

void mm_sync_connected(struct mm_sync *s, uint64_t now_ms)
{
	s->now = now_ms;
	if (s->connected)
		return;
	s->connected = true;
	s->blocked = false;
	/* the first DIGEST of a connection carries our GC bound: one "sent" while there
	 * was none went nowhere, and a peer just added to the peers file has none yet */
	s->gc_bound_at = 0;
	s->digest_heard = false;
	if (s->cfg.fetch)
		mm_fetch_peer_up(s->cfg.fetch, s, now_ms);
}

static void reset_stream(struct mm_sync *s, int why)
{
	if (!s->connected)
		return;
	s->connected = false;
	s->blocked = false;
	round_abort(s, why, false);
	drop_transfers(s);
	if (s->cfg.fetch)
		mm_fetch_peer_down(s->cfg.fetch, s, s->now);
}

void mm_sync_reset(struct mm_sync *s, uint64_t now_ms)
{
	s->now = now_ms;
	reset_stream(s, -ECONNRESET);
}

bool mm_sync_is_connected(const struct mm_sync *s)
{
	return s->connected;
}

bool mm_sync_idle(const struct mm_sync *s)
{
	return s->r.st == RS_IDLE && !s->jobs && !s->breqs;
}

const struct mm_sync_stats *mm_sync_stats(const struct mm_sync *s)
{
	return &s->st;
}

uint64_t mm_sync_peer_node(const struct mm_sync *s)
{
	return s->cfg.peer_node;
}

void *mm_sync_user_data(const struct mm_sync *s)
{
	return s->cfg.user_data;
}

void mm_sync_writable(struct mm_sync *s, uint64_t now_ms)
{
	s->now = now_ms;
	s->blocked = false;
	pump(s);
}

void mm_sync_tick(struct mm_sync *s, uint64_t now_ms)
{
	s->now = now_ms;
	if (s->r.st != RS_IDLE && s->r.st != RS_CLOSING && now_ms >= s->r.deadline)
		round_abort(s, -ETIMEDOUT, true);
	/* A request times out when neither it nor any other request of this session
	 * progressed for body_timeout_ms: the peer answers GET_BODYs one after the other,
	 * so the last of a full window waits its turn for as long as the link takes to
	 * carry the ones before it (64 bodies, up to 32 MiB), which over a slow link is
	 * longer than the timeout.  Timed out while waiting, they were still sent, and
	 * each one asked again waited behind those: the link carried bodies nobody waited
	 * for (test_fetch_slow_peer).  Each failure may start another fetch, whose send may
	 * reset the stream and free every request: the walk starts over after each one
	 * (requests started meanwhile have a later deadline). */
	for (;;) {
		struct breq *b = s->breqs;
		while (b && !(now_ms >= b->deadline &&
		              (now_ms < s->body_in_at || now_ms - s->body_in_at >= s->cfg.body_timeout_ms)))
			b = b->next;
		if (!b)
			break;
		body_fail(s, b, -ETIMEDOUT);
	}
	pump(s);
}

/* ---- public: gossip and push ------------------------------------------------------ */

/* The lead view for a DIGEST to this peer, at most once per MM_SYNC_LEAD_EVERY_MS (a
 * heartbeat need only rise well within the election's expire time, and the fields are
 * most of an idle node's traffic growth otherwise); (0, 0) = none this time. */
#define MM_SYNC_LEAD_EVERY_MS 1000

static void lead_fields(struct mm_sync *s, uint64_t *id_r, uint64_t *beat_r)
{
	*id_r = *beat_r = 0;
	if (!s->cfg.lead || (s->lead_sent && s->now >= s->lead_sent &&
	                     s->now - s->lead_sent < MM_SYNC_LEAD_EVERY_MS))
		return;
	mm_lead_view(s->cfg.lead, s->now, id_r, beat_r);
	s->lead_sent = s->now ? s->now : 1;
}

/* The GC bound for a DIGEST to this peer: when it changed since the last one that
 * carried it, else once per MM_SYNC_GC_BOUND_EVERY_MS (a datagram may be lost; the
 * bound changes once per GC, hourly in the daemon); 0 = none this time. */
#define MM_SYNC_GC_BOUND_EVERY_MS 60000

static uint64_t gc_bound_field(struct mm_sync *s)
{
	if (!s->gc_bound || (s->gc_bound == s->gc_bound_sent && s->gc_bound_at && s->now >= s->gc_bound_at &&
	                     s->now - s->gc_bound_at < MM_SYNC_GC_BOUND_EVERY_MS))
		return 0;
	s->gc_bound_sent = s->gc_bound;
	s->gc_bound_at = s->now ? s->now : 1;
	return s->gc_bound;
}

/* A DIGEST that carried the bound was not sent: the next one carries it again. */
static int gc_bound_unsent(struct mm_sync *s, uint64_t bound, int rc)
{
	if (rc < 0 && bound)
		s->gc_bound_at = 0;
	return rc;
}

void mm_sync_gc_bound_set(struct mm_sync *s, uint64_t bound_ms, uint64_t members)
{
	s->gc_bound = bound_ms;
	if (members != s->gc_members)
		s->gc_bound_at = 0; /* (sent at once) */
	s->gc_members = members;
}

int mm_sync_gossip(struct mm_sync *s, uint64_t now_ms)
{
	uint8_t root[MM_HASH_LEN];
	s->now = now_ms;
	mm_state_root(s->cfg.state, root);
	uint64_t lid, lbeat, bound;
	lead_fields(s, &lid, &lbeat);
	bound = gc_bound_field(s);
	int rc = mm_wire_enc_digest(&s->out, ++s->digest_seq, false, root,
	                            mm_state_user_count(s->cfg.state), lid, lbeat, bound, s->gc_members);
	if (rc < 0) {
		s->out.size = 0;
		return gc_bound_unsent(s, bound, rc);
	}
	return gc_bound_unsent(s, bound, send_out(s, MM_CHAN_DATAGRAM));
}

int mm_sync_push(struct mm_sync *s, const struct mm_delta *d, uint64_t now_ms)
{
	s->now = now_ms;
	if (!s->connected)
		return -ENOTCONN;
	size_t n = mm_delta_count(d);
	int rc = 0, sent = 0;
	struct recbuf rb = { .flags = MM_RECORDS_PUSH };
	mm_wbuf_init(&rb.body);
	s->in_push = true;
	for (size_t i = 0; i < n && rc == 0; i++) {
		const char *user;
		const struct mm_rec *r = mm_delta_get(d, i, &user);
		if (rb.user && strcmp(rb.user, user)) {
			rc = rb_flush(s, &rb);
			if (rc < 0)
				break;
		}
		rb.user = user;
		rc = rb_add(s, &rb, r, mm_delta_fresh(d, i));
		if (rc == -EMSGSIZE)
			rc = 0;
	}
	if (rc == 0)
		rc = rb_flush(s, &rb);
	sent = (int)rb.sent;
	s->in_push = false;
	mm_wbuf_free(&rb.body);
	return rc < 0 ? rc : sent;
}

/* ---- public: receive -------------------------------------------------------------- */

static int handle_digest(struct mm_sync *s, const struct mm_wire_msg *m)
{
	uint8_t root[MM_HASH_LEN];
	mm_state_root(s->cfg.state, root);
	memcpy(s->st.peer_root, m->digest.root, MM_HASH_LEN);
	s->st.peer_users = m->digest.n_users;
	s->st.last_digest_ms = s->now;
	bool eq = !memcmp(root, m->digest.root, MM_HASH_LEN);
	if (s->cfg.lead)
		mm_lead_observe(s->cfg.lead, m->digest.lead_id, m->digest.lead_beat, s->now);
	if (m->digest.gc_bound) {
		s->st.peer_gc_bound_ms = m->digest.gc_bound;
		s->st.peer_gc_members = m->digest.gc_members;
	}
	if (!s->digest_heard) {
		/* Our first DIGEST of this connection can reach the peer before its end of
		 * the channel is up (it is a datagram; the handshake's last message goes by
		 * TCP) and be dropped there.  The peer's first DIGEST shows that it opens
		 * ours now: the next one we send carries the bound again. */
		s->digest_heard = true;
		s->gc_bound_at = 0;
	}
	if (!m->digest.reply) {
		uint64_t lid, lbeat, bound;
		lead_fields(s, &lid, &lbeat);
		bound = gc_bound_field(s);
		int rc = mm_wire_enc_digest(&s->out, m->digest.seq, true, root,
		                            mm_state_user_count(s->cfg.state), lid, lbeat, bound, s->gc_members);
		if (rc < 0) {
			s->out.size = 0;
			return gc_bound_unsent(s, bound, rc);
		}
		gc_bound_unsent(s, bound, send_out(s, MM_CHAN_DATAGRAM));
	} else if (m->digest.seq != s->digest_seq) {
		return 0; /* an old or duplicated answer */
	}
	s->st.roots_equal = eq;
	if (eq) {
		s->st.last_sync_ms = s->st.last_equal_ms = s->now;
		event(s, MM_SYNC_EV_IN_SYNC, 0, NULL, NULL, 0);
		return 0;
	}
	event(s, MM_SYNC_EV_DIFFERS, 0, NULL, NULL, 0);
	/* the side that asked starts the round (one side only, so they do not collide) */
	if (m->digest.reply && s->connected && s->r.st == RS_IDLE)
		mm_sync_start(s, s->now);
	return 0;
}

/* Accumulates a DESCENT part; returns 1 when the message is complete. */
static int descent_accumulate(struct mm_sync *s, const struct mm_wire_msg *m)
{
	if (s->r.acc_bytes > DESCENT_ACC_MAX || m->descent.n > SIZE_MAX / 2 - s->r.nacc)
		return -EMSGSIZE;
	/* Elements count too, not only bin bytes (a part of 64,000 one-byte bitmaps
	 * held 1.5 MB of them): an answer has one bitmap per summary I sent and at most
	 * one summary per child or listed user it marks, so more elements than that
	 * can only be refused later anyway. */
	if (!s->r.nacc) {
		size_t max = 0;
		for (size_t i = 0; i < s->r.p.n; i++) {
			const struct pend *p = &s->r.p.v[i];
			max += 1 + (p->kind == 'E' ? MM_FANOUT : p->tree == TREE_USERS ? p->n : 0);
		}
		s->r.acc_elems_max = max;
	}
	if (m->descent.n > s->r.acc_elems_max - s->r.nacc)
		return -EMSGSIZE;
	if (s->r.nacc + m->descent.n > s->r.cap_acc) {
		size_t cap = (s->r.nacc + m->descent.n) * 2;
		struct mm_wire_elem *v = realloc(s->r.acc, cap * sizeof *v);
		if (!v)
			return -ENOMEM;
		s->r.acc = v;
		s->r.cap_acc = cap;
	}
	for (size_t i = 0; i < m->descent.n; i++) {
		struct mm_wire_elem e = m->descent.elems[i];
		if (e.is_bin && e.bin_len) {
			uint8_t *c = mm_arena_alloc(&s->r.acca, e.bin_len);
			if (!c)
				return -ENOMEM;
			memcpy(c, e.bin, e.bin_len);
			e.bin = c;
			s->r.acc_bytes += e.bin_len;
		}
		s->r.acc[s->r.nacc++] = e;
	}
	return m->descent.more ? 0 : 1;
}

static int handle_stream(struct mm_sync *s, const struct mm_wire_msg *m, size_t len)
{
	int rc = 0;
	switch (m->type) {
	case MM_MSG_START:
		if (s->r.st != RS_IDLE && s->r.id != m->start.round) {
			/* both sides started: the lower node id's round goes on */
			if (s->cfg.local_node < s->cfg.peer_node)
				return 0;
			round_abort(s, -ECANCELED, false);
		} else if (s->r.st != RS_IDLE) {
			return -EPROTO;
		}
		if (s->round_jobs) {
			/* An earlier round's records still wait behind a blocked stream: a new
			 * round now would queue its differences again (a peer restarting
			 * rounds could queue the whole state once per START).  The peer
			 * retries at its next digest. */
			rc = mm_wire_enc_abort(&s->out, m->start.round, -EBUSY);
			if (rc < 0) {
				s->out.size = 0;
				return rc;
			}
			send_out(s, MM_CHAN_STREAM);
			return 0;
		}
		round_begin(s, m->start.round, false);
		memcpy(s->r.nonce, m->start.nonce, MM_WIRE_NONCE_LEN);
		s->r.legs++;
		s->r.dbytes += len;
		rc = handle_round_msg(s, NULL, 0, m->start.summary, m->start.summary_len);
		break;
	case MM_MSG_DESCENT:
		if (s->r.st == RS_IDLE || m->descent.round != s->r.id)
			return 0; /* a round already abandoned */
		if (s->r.st != RS_AWAIT_DESCENT)
			return -EPROTO;
		s->r.dbytes += len;
		s->r.deadline = s->now + s->cfg.round_timeout_ms;
		rc = descent_accumulate(s, m);
		if (rc <= 0)
			break;
		s->r.legs++;
		rc = handle_round_msg(s, s->r.acc, s->r.nacc, NULL, 0);
		s->r.nacc = 0;
		s->r.acc_bytes = 0;
		mm_arena_reset(&s->r.acca);
		break;
	case MM_MSG_END:
		if (s->r.st == RS_IDLE || m->end.round != s->r.id)
			return 0;
		if (s->r.st != RS_AWAIT_END)
			return -EPROTO;
		s->r.legs++;
		s->r.dbytes += len;
		round_finish(s);
		break;
	case MM_MSG_ABORT:
		if (s->r.st != RS_IDLE && m->end.round == s->r.id)
			round_abort(s, m->end.reason < 0 ? m->end.reason : -ECANCELED, false);
		break;
	case MM_MSG_RECORDS:
		rc = handle_records(s, m, len);
		break;
	case MM_MSG_GET_BODY:
		rc = handle_get_body(s, m);
		break;
	case MM_MSG_BODY:
		rc = handle_body(s, m);
		break;
	case MM_MSG_BODY_ERR: {
		s->body_in_at = s->now;
		struct breq *b = s->breqs;
		while (b && b->req != m->body_err.req)
			b = b->next;
		if (b) {
			breq_unlink(s, b);
			breq_free(s, b, m->body_err.reason < 0 ? m->body_err.reason : -EIO);
		}
		break;
	}
	default:
		rc = -EPROTO; /* DIGEST on the stream */
	}
	return rc;
}

int mm_sync_recv(struct mm_sync *s, enum mm_chan chan, const uint8_t *msg, size_t len,
                 uint64_t now_ms)
{
	struct mm_wire_msg m;
	s->now = now_ms;
	s->st.msgs_in++;
	s->st.bytes_in += len;
	if (chan == MM_CHAN_DATAGRAM)
		s->st.datagrams_in++;
	mm_arena_reset(&s->rx);
	int rc = mm_wire_decode(msg, len, &m, &s->rx);
	if (rc == -EOPNOTSUPP) {
		/* A later version's message type: that version sends it only to peers that
		 * take it, or as something a peer may ignore (docs/protocol.md,
		 * "Compatibility"), so ignoring it keeps a mixed cluster working. */
		s->st.unknown_in++;
		rc = 0;
	} else if (rc == 0) {
		if (chan == MM_CHAN_DATAGRAM)
			rc = m.type == MM_MSG_DIGEST ? handle_digest(s, &m) : -EPROTO;
		else if (!s->connected)
			rc = 0; /* a late message of a stream already reset */
		else
			rc = handle_stream(s, &m, len);
	}
	if (rc < 0) {
		s->st.proto_errors++;
		event(s, MM_SYNC_EV_PROTO_ERROR, rc, NULL, NULL, 0);
		if (chan == MM_CHAN_STREAM && s->connected)
			round_abort(s, rc == -ENOMEM ? -ENOMEM : -EPROTO, true);
	}
	pump(s);
	return rc;
}
