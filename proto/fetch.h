/*
 * fetch.h — the node's scheduler of missing message bodies across its peers.
 *
 * A record can arrive before its body (bodies above the inline size, records found by
 * anti-entropy, a node catching up).  The scheduler keeps the set of wanted bodies and
 * spreads them over the connected sessions: several peers at once, at most
 * max_inflight bodies and max_bytes outstanding bytes per peer (so a joining node
 * streams with bounded memory), the peer that announced a record first.  A failure
 * (peer does not have it, hash mismatch, stream reset, timeout) retries on another
 * peer; when every connected peer failed, the body waits with exponential backoff and
 * then tries them all again.
 *
 * Sans-I/O and deterministic: no clock (now_ms passed in), no randomness (peers tried
 * in a fixed rotation).  Sessions register themselves (mm_sync_config.fetch) and call
 * mm_fetch_want / mm_fetch_done; the driver only calls mm_fetch_tick regularly.
 */
#ifndef MM_PROTO_FETCH_H
#define MM_PROTO_FETCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "crdt/crdt.h"

struct mm_sync;
struct mm_fetch;

struct mm_fetch_config {
	unsigned max_inflight;      /* bodies in flight per peer; 0 = 64 */
	uint64_t max_bytes;         /* outstanding body bytes per peer; 0 = 32 MiB (a single
	                             * larger body is still allowed when the peer is idle) */
	uint32_t backoff_ms;        /* first backoff after all peers failed; 0 = 500 */
	uint32_t backoff_max_ms;    /* cap of the doubling backoff; 0 = 30000 */
	/* Called when a body could not be fetched from any connected peer (err = the
	 * last failure) and is put to wait; may be NULL. */
	void (*event)(void *arg, const char *user, const uint8_t id[MM_ID_LEN], int err);
	void *event_arg;
	/* Does the node still need body (user, id), some live message of its lacking it?
	 * Asked when every connected peer failed a body, before it waits out a backoff:
	 * false drops it (its message was expunged before it could be fetched; no peer
	 * may have it any more, and it was asked for again every backoff for as long as
	 * the node ran).  NULL: always needed.  Must not call back into the scheduler. */
	bool (*needed)(void *arg, const char *user, const uint8_t id[MM_ID_LEN]);
	void *needed_arg;
};

struct mm_fetch_stats {
	uint64_t wanted;            /* bodies currently wanted (waiting or in flight) */
	uint64_t inflight;          /* of which in flight */
	uint64_t inflight_bytes;
	uint64_t done;              /* fetched and verified */
	uint64_t failures;          /* attempts that failed (any reason) */
	uint64_t mismatches;        /* attempts that failed with -EBADMSG */
	uint64_t retries;           /* attempts after the first one of a body */
};

/* New scheduler (cfg copied; NULL = defaults).  0, -ENOMEM. */
int mm_fetch_new(const struct mm_fetch_config *cfg, struct mm_fetch **f_r);
/* Frees it; NULLs *fp; NULL-safe.  Sessions must have been freed or detached first. */
void mm_fetch_free(struct mm_fetch **fp);

/* A session can serve bodies now (called by mm_sync_connected).  0, -ENOMEM. */
int mm_fetch_peer_up(struct mm_fetch *f, struct mm_sync *s, uint64_t now_ms);
/* The session is gone or its stream is down: its in-flight bodies go back to the queue
 * and are retried elsewhere (called by mm_sync_reset and mm_sync_free).  Idempotent. */
void mm_fetch_peer_down(struct mm_fetch *f, struct mm_sync *s, uint64_t now_ms);

/* Wants body `id` of `user` (size bytes); `hint` (may be NULL) is a peer that should
 * have it (the one that sent the record), tried first.  Wanted bodies start in
 * ascending `order`, then in the order they were wanted (the sessions pass the
 * message's IMAP UID, 0 if none yet: a replica places a folder's bodies in UID order,
 * so they can be placed as they come).  Duplicates are merged (the first order
 * stays).  The caller should check the body is not already present.  Starts fetches
 * at once when peers have room.  Returns 1 if newly wanted, 0 if already wanted,
 * -ENOMEM/-EINVAL. */
int mm_fetch_want(struct mm_fetch *f, const char *user, const uint8_t id[MM_ID_LEN],
                  uint64_t size, uint64_t order, struct mm_sync *hint, uint64_t now_ms);

/* The outcome of a fetch the scheduler started on session s (called by the session):
 * 0 = body verified and committed (also when it arrived another way while in flight);
 * -ENOENT the peer does not have it; -EBADMSG hash mismatch; -ECONNRESET / -ETIMEDOUT
 * / other errno: failure.  Failures retry on another peer.  Unknown (s, id) pairs are
 * ignored.  Starts further fetches. */
void mm_fetch_done(struct mm_fetch *f, struct mm_sync *s, const char *user,
                   const uint8_t id[MM_ID_LEN], int result, uint64_t now_ms);

/* Between begin and end (they nest), wanted bodies are only queued; end starts them,
 * in order.  A session wraps the merge of one RECORDS message in them, so its bodies
 * are asked for in order, not in the order the records came. */
void mm_fetch_batch_begin(struct mm_fetch *f);
void mm_fetch_batch_end(struct mm_fetch *f, uint64_t now_ms);

/* A body became present by another path (inline push, another session): forget it. */
void mm_fetch_have(struct mm_fetch *f, const char *user, const uint8_t id[MM_ID_LEN],
                   uint64_t now_ms);

/* Retries bodies whose backoff expired and fills free peer capacity.  Returns the
 * number of fetches started. */
int mm_fetch_tick(struct mm_fetch *f, uint64_t now_ms);

/* Starts no fetch from now_ms until until_ms (until_ms 0: from now on again); fetches
 * in flight go on.  For a driver whose store cannot keep what arrives (its state
 * database's disk is full, say): without it, every body that could not be placed was
 * asked for again at once, and the two nodes passed the same bodies back and forth as
 * fast as they could.  The first mm_fetch_tick at or after until_ms starts fetching
 * again, and so does one before now_ms (a clock stepped back must not stretch it). */
void mm_fetch_hold(struct mm_fetch *f, uint64_t now_ms, uint64_t until_ms);

/* Is body (user, id) wanted? */
bool mm_fetch_wanted(const struct mm_fetch *f, const char *user, const uint8_t id[MM_ID_LEN]);

void mm_fetch_get_stats(const struct mm_fetch *f, struct mm_fetch_stats *st_r);

#endif
