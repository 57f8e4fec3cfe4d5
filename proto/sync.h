/*
 * sync.h — one replication session with one peer: gossip digests, Merkle descent
 * (reconciliation), record exchange both ways, live push and body transfer.
 *
 * Sans-I/O: the session never touches sockets, files, clocks or random numbers.  The
 * driver (node/ with libuv + the Noise channel, sim/ with a virtual network and clock)
 * hands it incoming messages and the time, and gives it three vtables: a transport
 * (struct mm_sync_io), a body store (struct mm_body_ops) and an effect callback for
 * merges (crdt.h mm_effect_fn).  Everything it sends goes through io.send; everything
 * it learns goes into the shared struct mm_state with mm_state_merge().
 *
 * Two channels (enum mm_chan):
 *   DATAGRAM  small, unreliable (lost, duplicated, reordered): DIGEST messages only.
 *   STREAM    reliable and ordered while it lasts, may be reset: everything else.
 * The driver reports the stream's life with mm_sync_connected() / mm_sync_reset().
 *
 * Protocol (docs/protocol.md, "Wire messages and sync", has the schema):
 *   gossip     mm_sync_gossip() sends DIGEST{root}; the peer answers with its DIGEST.
 *              In sync = one small datagram each way.  When the answer's root differs
 *              and the session is idle and connected, this side starts a round.
 *   round      START / DESCENT messages walk the users tree and then each differing
 *              user's tree, one level per message, all differing nodes of a level
 *              batched; hashes are truncated and salted with the round's nonce (so a
 *              collision cannot hide a difference twice); small subtrees are sent as
 *              leaves (key + salted leaf hash).  Records each side lacks or holds
 *              differently travel both ways in RECORDS messages; END closes the round.
 *   push       mm_sync_push() sends new local records at once; bodies of new
 *              messages up to cfg.inline_max travel inline in the same message.
 *   bodies     GET_BODY / BODY (chunks <= MM_SYNC_CHUNK) / BODY_ERR; every received
 *              body is verified against its id (BLAKE2b-256) while it streams.
 *
 * Re-entrancy: io.send, the body ops and the callbacks must not call back into any
 * mm_sync_* / mm_fetch_* / mm_gossip_* function synchronously (queue the message and
 * deliver it later: the sim's network and the daemon's event loop both do).
 * Exception: the effect callback may read the state.
 */
#ifndef MM_PROTO_SYNC_H
#define MM_PROTO_SYNC_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>

#include "crdt/crdt.h"

struct mm_fetch;
struct mm_lead;
struct mm_sync;

enum mm_chan {
	MM_CHAN_DATAGRAM = 0,
	MM_CHAN_STREAM = 1,
};

#define MM_SYNC_CHUNK (48 * 1024)         /* body bytes per BODY message */
#define MM_SYNC_INLINE_MAX (40 * 1024)    /* default cfg.inline_max */
#define MM_SYNC_ROUND_INLINE (1024 * 1024) /* default cfg.round_inline_bytes */
#define MM_SYNC_ROUND_TIMEOUT_MS 10000    /* default cfg.round_timeout_ms */
#define MM_SYNC_BODY_TIMEOUT_MS 30000     /* default cfg.body_timeout_ms */

/* Transport.  send() transmits one whole message (msg borrowed for the call).
 *   DATAGRAM: returns 0 whether or not the datagram arrives (it may be dropped).
 *   STREAM:   returns 0 = accepted; 1 = accepted, but the send buffer is above its
 *             high-water mark: the session sends no more bulk data (record streams,
 *             body chunks) until the driver calls mm_sync_writable(); control
 *             messages may still be sent.  Negative errno = the stream is broken: the
 *             session then behaves as after mm_sync_reset().
 * Every message is at most MM_WIRE_MAX bytes (proto/wire.h), so it fits one Noise
 * transport message. */
struct mm_sync_io {
	int (*send)(void *arg, enum mm_chan chan, const uint8_t *msg, size_t len);
	void *arg;
};

/* Body store of the driver, per (user, body id).  Bodies are content-addressed: the
 * id is BLAKE2b-256 of the bytes.
 *   read:   copies up to cap bytes from `offset` into buf; returns the number of bytes
 *           (0 at the end), -ENOENT if the body is not here, other negative errno.
 *   begin:  starts writing a body of `size` bytes; *handle_r gets a handle. 0 or -errno.
 *   write:  appends len bytes. 0 or -errno.
 *   commit: makes the complete body visible (atomically); 0, -EBADMSG if the driver's
 *           own check fails, other -errno.  The handle is gone after commit.
 *   abort:  discards a begun body; the handle is gone.
 *   have:   1 if the body is present, 0 if not.
 * The session verifies BLAKE2b of every body it writes before calling commit, and
 * calls abort (never commit) on a mismatch, a short body, a reset or a failure. */
struct mm_body_ops {
	ssize_t (*read)(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t offset,
	                uint8_t *buf, size_t cap);
	int (*begin)(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size,
	             void **handle_r);
	int (*write)(void *handle, const uint8_t *data, size_t len);
	int (*commit)(void *handle);
	void (*abort)(void *handle);
	int (*have)(void *arg, const char *user, const uint8_t id[MM_ID_LEN]);
	void *arg;
};

/* What the session tells its driver (logs, status, tests).  Pointers are borrowed for
 * the duration of the callback. */
enum mm_sync_event_type {
	MM_SYNC_EV_IN_SYNC = 1,    /* a DIGEST exchange found equal roots */
	MM_SYNC_EV_DIFFERS,        /* a DIGEST showed different roots */
	MM_SYNC_EV_ROUND_START,    /* a reconciliation round began (either side started it) */
	MM_SYNC_EV_ROUND_DONE,     /* a round finished; stats.last_* describe it */
	MM_SYNC_EV_ROUND_ABORT,    /* a round was abandoned (err: -ETIMEDOUT, -ECONNRESET,
	                            * -ECANCELED for a tie-break, -EPROTO/-EBADMSG) */
	MM_SYNC_EV_PROTO_ERROR,    /* a message was rejected (err: -EBADMSG, -EPROTO,
	                            * -EPROTONOSUPPORT for an unknown version) */
	MM_SYNC_EV_BODY_OK,        /* a body was received, verified and committed */
	MM_SYNC_EV_BODY_BAD,       /* a received body did not match its id (err -EBADMSG) or
	                            * could not be stored (err from the body ops) */
	MM_SYNC_EV_BODY_MISSING,   /* a merged MESSAGE's body is absent (no fetch scheduler
	                            * configured, so only reported) */
	MM_SYNC_EV_RECORD_REJECTED,/* a received record failed validation (err) */
};

struct mm_sync_event {
	enum mm_sync_event_type type;
	int err;                     /* negative errno where the type says, else 0 */
	const char *user;            /* user concerned, or NULL */
	const uint8_t *id;           /* body id (BODY_*) or NULL */
	uint64_t round;              /* round id (ROUND_*), else 0 */
};

/* Counters for status and benchmarks.  "descent bytes" are the bytes of START,
 * DESCENT and END messages (finding the differences); "record bytes" those of the
 * RECORDS messages of a round (the differing records themselves, which any method
 * has to ship).  Round trips of a round = 1 (the digest exchange that found the
 * difference) + ceil(descent legs / 2), a leg being one START, DESCENT or END. */
struct mm_sync_stats {
	uint64_t bytes_out, bytes_in;          /* every message, both channels */
	uint64_t msgs_out, msgs_in;
	uint64_t datagrams_out, datagrams_in;
	uint64_t records_out, records_in;      /* records sent / received (push + rounds) */
	uint64_t records_changed;              /* received records that changed the state */
	uint64_t bodies_out, bodies_in;        /* whole bodies sent / verified+committed */
	uint64_t bodies_bad;                   /* rejected: hash mismatch or store failure */
	uint64_t body_bytes_out, body_bytes_in;
	uint64_t pushes_out, pushes_in;        /* push messages */
	uint64_t rounds_started, rounds_done, rounds_aborted;
	uint64_t proto_errors;
	uint64_t unknown_in;                   /* messages of a later version's type, ignored */
	uint64_t last_digest_ms;               /* time of the last DIGEST from the peer */
	uint64_t last_sync_ms;                 /* time roots were last seen equal, or a
	                                        * round last completed */
	uint64_t last_equal_ms;                /* time a DIGEST last showed the peer's root
	                                        * equal to ours: it then held every record we
	                                        * held (a completed round says less: it ships
	                                        * the differences found when it began, and a
	                                        * truncated hash may hide one) */
	bool roots_equal;                      /* at the last DIGEST exchange */
	uint8_t peer_root[MM_HASH_LEN];        /* root in the peer's last DIGEST */
	uint64_t peer_users;                   /* user count in the peer's last DIGEST */
	uint64_t peer_gc_bound_ms;             /* the GC bound the peer last sent (its
	                                        * DIGESTs carry it now and then), 0 = none */
	uint64_t peer_gc_members;              /* the members hash sent with it */
	/* the last completed round */
	uint64_t last_differences;             /* leaves found different (both sides' view
	                                        * of this side: records sent + requested) */
	uint64_t last_descent_bytes;           /* both directions */
	uint64_t last_record_bytes;            /* both directions */
	uint64_t last_legs;
	uint64_t last_round_trips;
};

struct mm_sync_config {
	struct mm_state *state;      /* shared with the other sessions of the node; not owned */
	uint64_t local_node;         /* this node's id (tie-break between concurrent rounds) */
	uint64_t peer_node;          /* the peer's id; must differ from local_node */
	mm_effect_fn *eff;           /* driver's effects of merges (may be NULL) */
	void *eff_arg;
	struct mm_sync_io io;        /* required */
	struct mm_body_ops body;     /* required: read, begin, write, commit, abort, have */
	struct mm_fetch *fetch;      /* node's body scheduler, or NULL: the session registers
	                              * itself (mm_fetch_peer_up/down) and reports missing
	                              * bodies to it */
	struct mm_lead *lead;        /* node's UID-authority election (proto/lead.h), or NULL:
	                              * its view goes into every DIGEST, and the peer's is
	                              * observed into it */
	struct mm_clock *clock;      /* when not NULL, remote stamps are observed into it */
	uint64_t max_skew_ms;        /* for mm_clock_observe (0 = 60000) */
	void (*event)(void *arg, struct mm_sync *s, const struct mm_sync_event *ev);
	void *event_arg;             /* event may be NULL */
	/* Called with the records a PUSH from this peer brought that changed the state
	 * (so the driver can relay them to other peers: mm_gossip_relay()).  May be NULL. */
	void (*relay)(void *arg, struct mm_sync *from, const struct mm_delta *d, uint64_t now_ms);
	void *relay_arg;
	uint32_t round_timeout_ms;   /* 0 = MM_SYNC_ROUND_TIMEOUT_MS */
	uint32_t body_timeout_ms;    /* 0 = MM_SYNC_BODY_TIMEOUT_MS */
	uint32_t inline_max;         /* 0 = MM_SYNC_INLINE_MAX; larger values are clamped so a
	                              * record and its body fit one message */
	/* Body bytes one round may send inline with the records the peer lacks; beyond
	 * them records go alone and the peer's fetch scheduler pulls the bodies from every
	 * peer that has them (a joining node then draws from several peers at once instead
	 * of from whichever round descended first, and overlapping rounds do not ship the
	 * same bodies twice).  0 = MM_SYNC_ROUND_INLINE; UINT64_MAX = no limit.  Pushes
	 * are not limited by it. */
	uint64_t round_inline_bytes;
	void *user_data;             /* for the driver: mm_sync_user_data() */
};

/* Creates a session (stream not yet connected).  cfg is copied.  Returns 0, -EINVAL
 * (missing state, io.send or body op; equal node ids), -ENOMEM. */
int mm_sync_new(const struct mm_sync_config *cfg, struct mm_sync **s_r);

/* Frees the session (aborting any body being written and unregistering from the fetch
 * scheduler); NULLs *sp; NULL-safe. */
void mm_sync_free(struct mm_sync **sp);

/* The stream to the peer is up (again).  Registers with the fetch scheduler. */
void mm_sync_connected(struct mm_sync *s, uint64_t now_ms);

/* The stream is lost: the round in progress, queued bulk data and bodies in flight are
 * abandoned (bodies being written aborted, fetches reported to the scheduler as
 * -ECONNRESET); the next gossip exchange starts over. */
void mm_sync_reset(struct mm_sync *s, uint64_t now_ms);

bool mm_sync_is_connected(const struct mm_sync *s);

/* True when no round, bulk transfer or body transfer is in progress. */
bool mm_sync_idle(const struct mm_sync *s);

/* One incoming message.  Returns 0 when handled (including stale or duplicate
 * messages, which are ignored), or a negative errno when it was rejected:
 * -EPROTONOSUPPORT (unknown version), -EBADMSG (malformed), -EPROTO (a message not
 * valid in the current state), -ENOMEM.  A rejected STREAM message also abandons the
 * round; the driver may log it and keep or reset the stream. */
int mm_sync_recv(struct mm_sync *s, enum mm_chan chan, const uint8_t *msg, size_t len,
                 uint64_t now_ms);

/* This node's own tombstone GC bound (crdt mm_gc_horizon_ms without peer bounds) and
 * the hash of the nodes it counts (crdt mm_gc_members_hash), for the peer: DIGESTs
 * carry them when they changed and once a minute otherwise, and the peer's show in
 * stats.peer_gc_bound_ms and peer_gc_members.  A node's GC waits for every peer's
 * bound as well as its own (docs/design.md, "Tombstone GC").  bound 0 = none to send. */
void mm_sync_gc_bound_set(struct mm_sync *s, uint64_t bound_ms, uint64_t members);

/* Sends a DIGEST request datagram (the driver or mm_gossip_tick picks the peer).
 * Returns 0 or negative errno from encoding/sending. */
int mm_sync_gossip(struct mm_sync *s, uint64_t now_ms);

/* Starts a reconciliation round now.  0 = started, -ENOTCONN (stream down), -EBUSY
 * (a round is in progress), other negative errno. */
int mm_sync_start(struct mm_sync *s, uint64_t now_ms);

/* Live push of local changes (d as produced by the crdt local-change functions, or a
 * relayed delta): sends the records on the stream at once, one message per user (or
 * more if large), with the body of each fresh MESSAGE (mm_delta_fresh: a new message,
 * not a change to one the peer has) inline when it is present and at most inline_max
 * bytes.  Returns the number of records sent, -ENOTCONN (stream down: the
 * changes will reach the peer through anti-entropy), other negative errno. */
int mm_sync_push(struct mm_sync *s, const struct mm_delta *d, uint64_t now_ms);

/* Asks the peer for a body (normally called by the fetch scheduler).  The outcome is
 * reported to the scheduler with mm_fetch_done(), and by an event.  Returns 0,
 * -ENOTCONN, -EALREADY (this body is already being fetched on this session), -ENOMEM. */
int mm_sync_fetch(struct mm_sync *s, const char *user, const uint8_t id[MM_ID_LEN],
                  uint64_t size, uint64_t now_ms);

/* Timers: round and body timeouts.  Call it regularly (e.g. every gossip interval). */
void mm_sync_tick(struct mm_sync *s, uint64_t now_ms);

/* The stream's send buffer drained below its low-water mark: resume bulk sending. */
void mm_sync_writable(struct mm_sync *s, uint64_t now_ms);

const struct mm_sync_stats *mm_sync_stats(const struct mm_sync *s);
uint64_t mm_sync_peer_node(const struct mm_sync *s);
void *mm_sync_user_data(const struct mm_sync *s);

#endif
