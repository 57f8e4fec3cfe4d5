/*
 * crdt.h — mailmesh's replicated mailbox state: the one data model every other part
 * (wire encoding, sync sessions, Maildir store, simulator) works on.
 *
 * Pure code: no I/O, no clock, no randomness.  Every timestamp comes in from the caller
 * (node/ reads the wall clock, sim/ its virtual one).  BLAKE2b comes from libsodium,
 * which is computation only.
 *
 * Model (docs/design.md has the why):
 *   state  = map user name ("domain/user") -> user state
 *   user   = map 16-byte key -> record, plus a Merkle summary of all its records
 *   record = one of
 *     MESSAGE   one message instance in one folder: body id (BLAKE2b-256 of the exact
 *               bytes), folder, size, INTERNALDATE, creation stamp, one LWW register per
 *               system flag and per keyword, and a UID register (IMAP identity).
 *               Key = BLAKE2b-128("msg" || creation stamp), unique per delivery/copy:
 *               the same bytes delivered twice, or moved out and back, are two instances.
 *     EXPUNGED  tombstone of a MESSAGE key.  Expunge is permanent: a tombstone beats any
 *               MESSAGE record under its key, whatever the stamps.
 *     FOLDER    a folder by name (key = BLAKE2b-128("folder" || name)): LWW "exists"
 *               register and LWW "subscribed" register.
 *     HORIZON   one per user (key = BLAKE2b-128("horizon")): the tombstone GC horizon;
 *               merge takes the max and drops tombstones stamped before it.
 *
 * Registers are last-writer-wins by (stamp.t, stamp.node): concurrent changes of
 * *different* flags all survive; set vs clear of the *same* flag: the later hybrid
 * logical clock stamp wins, ties broken by the larger node id.  Merge of two records
 * with the same key is register-wise and is commutative, associative and idempotent
 * (with the GC horizon caveat documented in docs/design.md).
 *
 * Merkle summary: every record has a leaf hash (BLAKE2b-256 of its canonical
 * encoding, see mm_rec_hash()); the hash of a node of the tree is the XOR of the leaf
 * hashes below it.  The tree is the 16-ary trie over the record keys' nibbles (keys
 * are uniformly distributed hashes), so any prefix of any depth has a hash regardless
 * of how much of the tree an implementation caches, and two replicas compare by
 * descending from the root.  Equal roots <=> equal states (up to hash collisions).
 * The state's users are summarised the same way: leaf = BLAKE2b-256(name || user root),
 * position = BLAKE2b-128(name).
 *
 * Conventions: functions return 0 or a negative errno value (-ENOMEM, -EINVAL, ...);
 * the library never prints.  Pointers inside a `struct mm_rec` handed out by the
 * library are borrowed and stay valid until the next change to that user.  Records
 * handed *to* the library are copied; the caller keeps ownership.
 */
#ifndef MM_CRDT_H
#define MM_CRDT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define MM_ID_LEN 32   /* message body id: BLAKE2b-256 of the message bytes */
#define MM_KEY_LEN 16  /* record key */
#define MM_HASH_LEN 32 /* Merkle node hash */
#define MM_FANOUT 16   /* Merkle tree fanout: one nibble of the key per level */
#define MM_MAX_DEPTH 32 /* nibbles in a key */
#define MM_NAME_MAX 255 /* longest user, folder or keyword name in bytes */

/* ---- hybrid logical clock ----------------------------------------------------- */

/* A stamp: t = (wall milliseconds << 16) | logical counter; node breaks ties.
 * The zero stamp {0,0} means "never written" and loses to every other stamp. */
typedef struct mm_hlc {
	uint64_t t;
	uint64_t node;
} mm_hlc;

#define MM_HLC_LOGICAL_BITS 16
#define MM_HLC_MS(stamp) ((stamp).t >> MM_HLC_LOGICAL_BITS)

struct mm_clock {
	uint64_t node; /* this node's id (from its public key) */
	uint64_t last; /* last t issued or observed */
};

/* Total order: <0, 0, >0 as a is before, equal to, after b (t first, then node). */
int mm_hlc_cmp(mm_hlc a, mm_hlc b);

/* Starts a clock for `node`, never issuing t <= last (restored from the state db). */
void mm_clock_init(struct mm_clock *c, uint64_t node, uint64_t last);

/* A fresh stamp for a local event at wall time `wall_ms`; strictly greater than every
 * stamp this clock issued or observed before, even if the wall clock went back. */
mm_hlc mm_clock_tick(struct mm_clock *c, uint64_t wall_ms);

/* Takes a remote stamp into account so later local stamps follow it.  A stamp more
 * than max_skew_ms ahead of wall_ms is not followed (returns -ERANGE; the data it came
 * with is still merged), so one node's broken clock cannot drag the cluster forward. */
int mm_clock_observe(struct mm_clock *c, mm_hlc remote, uint64_t wall_ms, uint64_t max_skew_ms);

/* ---- records ---------------------------------------------------------------- */

enum mm_flag {
	MM_FLAG_DRAFT = 0, /* D */
	MM_FLAG_FLAGGED,   /* F */
	MM_FLAG_PASSED,    /* P */
	MM_FLAG_REPLIED,   /* R */
	MM_FLAG_SEEN,      /* S */
	MM_FLAG_TRASHED,   /* T */
	MM_FLAG_COUNT
};

/* Maildir suffix letter of a flag ("DFPRST"[flag]). */
extern const char mm_flag_letters[MM_FLAG_COUNT + 1];

enum mm_rec_type {
	MM_REC_MESSAGE = 1,
	MM_REC_EXPUNGED = 2,
	MM_REC_FOLDER = 3,
	MM_REC_HORIZON = 4,
};

/* One last-writer-wins register.  stamp {0,0} = never written (value must be 0). */
struct mm_reg {
	uint8_t value;
	mm_hlc stamp;
};

struct mm_kwreg {
	const char *name; /* keyword, 1..MM_NAME_MAX bytes, no spaces or control chars */
	struct mm_reg reg;
};

struct mm_rec {
	enum mm_rec_type type;
	uint8_t key[MM_KEY_LEN];
	union {
		struct {
			uint8_t body[MM_ID_LEN];
			const char *folder;      /* "INBOX" or Maildir++ name without the dot */
			uint64_t size;           /* bytes */
			int64_t internaldate;    /* unix seconds: the file's mtime */
			mm_hlc created;          /* stamp of the delivery/copy; key derives from it */
			struct mm_reg flags[MM_FLAG_COUNT];
			size_t n_keywords;       /* sorted by name, no duplicates */
			const struct mm_kwreg *keywords;
			struct mm_reg uid;       /* value unused: see uid_value */
			uint32_t uid_value;      /* IMAP UID (0 = none yet), LWW by uid.stamp */
			uint32_t uid_need;       /* max register: the lowest UID some replica can
			                          * still show this message under (0 = no such
			                          * request); only the UID authority acts on it */
		} msg;
		struct {
			mm_hlc stamp; /* when expunged; merge keeps the max */
		} tomb;
		struct {
			const char *name;
			struct mm_reg exists;
			struct mm_reg subscribed;
			uint32_t uidvalidity;    /* travels with the winning `exists` register:
			                          * explicit (a Dovecot-made folder's, adopted),
			                          * or 0 in a record built for merging = the one
			                          * mm_folder_uidvalidity() gives the stamp;
			                          * records read from a state never hold 0 */
		} folder;
		struct {
			mm_hlc stamp; /* tombstones stamped before this are dropped */
		} horizon;
	};
};

/* Keys: derived, never random, so every node computes the same key. */
void mm_key_message(const mm_hlc *created, uint8_t key_r[MM_KEY_LEN]);
void mm_key_folder(const char *name, uint8_t key_r[MM_KEY_LEN]);
void mm_key_horizon(uint8_t key_r[MM_KEY_LEN]);

/* Body id of message bytes: BLAKE2b-256. */
void mm_body_id(const void *bytes, size_t len, uint8_t id_r[MM_ID_LEN]);

/* Leaf hash of a record: BLAKE2b-256 over its canonical encoding (type, key and every
 * field in a fixed order, keywords sorted).  Two records hash equal iff they are equal. */
void mm_rec_hash(const struct mm_rec *r, uint8_t hash_r[MM_HASH_LEN]);

/* Checks a record from outside (wire, disk) before it is merged: names valid UTF-8-free
 * bytes of 1..MM_NAME_MAX without '/', NUL or control characters, keywords sorted and
 * unique, key consistent with its type (message key derived from `created`, folder key
 * from the name).  Returns 0 or -EINVAL. */
int mm_rec_validate(const struct mm_rec *r);

/* UIDVALIDITY of a folder, from its exists stamp: same on every node. Never 0. */
uint32_t mm_folder_uidvalidity(mm_hlc exists_stamp);


/* ---- effects of a merge ------------------------------------------------------- */

/* What a merge or a local change did to a user's visible state, so node/ can mirror
 * it into Maildir and sim/ into its in-memory store.  `rec` is the record after the
 * change (for MSG_EXPUNGED the MESSAGE record as it was before), borrowed for the
 * duration of the call. */
enum mm_effect {
	MM_EFF_MSG_NEW = 1,    /* a MESSAGE record appeared (body may still be missing) */
	MM_EFF_MSG_FLAGS,      /* a flag or keyword register changed value */
	MM_EFF_MSG_UID,        /* the UID register changed */
	MM_EFF_MSG_EXPUNGED,   /* a MESSAGE became a tombstone */
	MM_EFF_TOMB_NEW,       /* a tombstone arrived for a key never seen as a message */
	MM_EFF_FOLDER,         /* a folder register changed (exists/subscribed) */
	MM_EFF_GC,             /* a tombstone was dropped by the GC horizon */
};

typedef void mm_effect_fn(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec);

/* ---- user state -------------------------------------------------------------- */

struct mm_user;

/* New empty user state (name copied).  NULL on allocation failure. */
struct mm_user *mm_user_new(const char *name);
void mm_user_free(struct mm_user **up); /* NULLs *up; NULL-safe */
const char *mm_user_name(const struct mm_user *u);

/* Merges one record.  Calls `eff` (may be NULL) for each visible change.
 * Returns 1 if the state changed, 0 if the record added nothing (duplicate or
 * older), -EINVAL for an invalid record (state unchanged), -ENOMEM. */
int mm_user_merge(struct mm_user *u, const struct mm_rec *r, mm_effect_fn *eff, void *arg);
/* The same for a record that passed mm_rec_validate() (mm_rec_decode() validates what
 * it returns), without checking it again: a start loads every record of the state
 * database, and the check's key hash, once per layer, was a quarter of a restart. */
int mm_user_merge_valid(struct mm_user *u, const struct mm_rec *r, mm_effect_fn *eff, void *arg);

/* The record under `key`, or NULL.  Borrowed. */
const struct mm_rec *mm_user_get(const struct mm_user *u, const uint8_t key[MM_KEY_LEN]);

/* The body id of the MESSAGE under `key` into body_r, without materialising the
 * record (a lookup, no allocation: callers that only need the id, often).  Returns
 * true, or false when `key` names no live message (body_r untouched). */
bool mm_user_msg_body(const struct mm_user *u, const uint8_t key[MM_KEY_LEN], uint8_t body_r[MM_ID_LEN]);

/* Number of records (messages, tombstones, folders, horizon). */
size_t mm_user_count(const struct mm_user *u);

/* Calls cb for every record whose key starts with the `depth` nibbles of `prefix`
 * (high nibble of prefix[0] first; depth 0 = every record), in key order.  Stops and
 * returns cb's value when cb returns non-zero; 0 otherwise.  cb must not change u
 * (no merge into it, not even of a record it already holds): the walk keeps pointers
 * into u's storage, which a merge may move. */
int mm_user_foreach(const struct mm_user *u, const uint8_t *prefix, unsigned depth,
                    int (*cb)(void *arg, const struct mm_rec *r), void *arg);

/* Merkle root (XOR of every leaf hash; all-zero for an empty user). */
void mm_user_root(const struct mm_user *u, uint8_t root_r[MM_HASH_LEN]);

/* The 16 children of the tree node at (prefix, depth): child i covers keys whose
 * next nibble is i.  hashes_r[i] is its hash, counts_r[i] its number of records
 * (either output may be NULL).  depth < MM_MAX_DEPTH. */
void mm_user_children(const struct mm_user *u, const uint8_t *prefix, unsigned depth,
                      uint8_t hashes_r[MM_FANOUT][MM_HASH_LEN], uint32_t counts_r[MM_FANOUT]);

/* Hash and record count of the tree node at (prefix, depth). */
void mm_user_node(const struct mm_user *u, const uint8_t *prefix, unsigned depth,
                  uint8_t hash_r[MM_HASH_LEN], uint32_t *count_r);

/* ---- local changes ------------------------------------------------------------
 * Each applies a change made on this node with the stamp the caller's clock issued,
 * calls `eff` like a merge would, and, when `out` is not NULL, appends the records
 * that changed (the delta to ship to peers) to `out`. */

struct mm_delta;

/* A message instance appears in `folder` (created if unknown).  flags is a bitmask
 * of (1 << enum mm_flag); keywords an array of names.  key_r (may be NULL) gets the
 * new record's key. */
int mm_user_deliver(struct mm_user *u, const char *folder, const uint8_t body[MM_ID_LEN],
                    uint64_t size, int64_t internaldate, unsigned flags,
                    const char *const *keywords, size_t n_keywords, uint32_t uid,
                    mm_hlc stamp, uint8_t key_r[MM_KEY_LEN],
                    mm_effect_fn *eff, void *arg, struct mm_delta *out);

/* Sets (value 1) or clears (0) a system flag / a keyword of a live message.
 * -ENOENT if the key is not a live message. */
int mm_user_set_flag(struct mm_user *u, const uint8_t key[MM_KEY_LEN], enum mm_flag flag,
                     bool value, mm_hlc stamp, mm_effect_fn *eff, void *arg, struct mm_delta *out);
int mm_user_set_keyword(struct mm_user *u, const uint8_t key[MM_KEY_LEN], const char *kw,
                        bool value, mm_hlc stamp, mm_effect_fn *eff, void *arg, struct mm_delta *out);

/* Sets the IMAP UID of a live message (LWW). */
int mm_user_set_uid(struct mm_user *u, const uint8_t key[MM_KEY_LEN], uint32_t uid,
                    mm_hlc stamp, mm_effect_fn *eff, void *arg, struct mm_delta *out);

/* Expunges a message for good.  -ENOENT if the key is unknown; 0 if already expunged. */
int mm_user_expunge(struct mm_user *u, const uint8_t key[MM_KEY_LEN], mm_hlc stamp,
                    mm_effect_fn *eff, void *arg, struct mm_delta *out);

/* Creates or deletes a folder; deleting expunges every live message the folder holds
 * here (a message delivered into it concurrently elsewhere survives and keeps the
 * folder visible: see mm_user_folder_visible()). */
int mm_user_folder_create(struct mm_user *u, const char *name, mm_hlc stamp,
                          mm_effect_fn *eff, void *arg, struct mm_delta *out);
int mm_user_folder_delete(struct mm_user *u, const char *name, mm_hlc stamp,
                          mm_effect_fn *eff, void *arg, struct mm_delta *out);
int mm_user_folder_subscribe(struct mm_user *u, const char *name, bool value, mm_hlc stamp,
                             mm_effect_fn *eff, void *arg, struct mm_delta *out);

/* A folder is visible when its exists register is set or it holds a live message. */
bool mm_user_folder_visible(const struct mm_user *u, const char *name);

/* The user was removed from the cluster (`mailmesh remove-user`): INBOX deleted by an
 * explicit FOLDER record (its exists register written as 0) and holding no live
 * message.  An INBOX without a record yet (a user whose records are still arriving),
 * or with a record only a subscription wrote, is not. */
bool mm_user_removed(const struct mm_user *u);

/* Raises the GC horizon to `horizon` (no-op if not higher) and drops every tombstone
 * stamped before it.  Returns the number of tombstones dropped, or -ENOMEM.
 * Appends the HORIZON record to out when it changed. */
int mm_user_gc(struct mm_user *u, mm_hlc horizon, mm_effect_fn *eff, void *arg, struct mm_delta *out);

/* The wall time (ms) before which a node may drop tombstones, 0 = none yet.  A peer
 * that comes back holding a message whose tombstone the others dropped would bring it
 * back everywhere (docs/design.md, "Tombstone GC"), so tombstones wait for the peers:
 * now - grace_ms, but no later than margin_ms before the last time each peer was seen
 * in sync with this node (peer_synced_ms[i], wall ms; for a peer never seen in sync,
 * pass when this node first knew of it: it may hold records from other nodes; 0 = not
 * waited for).  A peer not in sync for max_ms or longer no longer holds them back (it
 * must be rebuilt).  The margin covers a tombstone still
 * on its way between two other nodes at that moment, and clock skew: the daemon uses
 * MM_GC_SYNC_MARGIN_MS. */
#define MM_GC_SYNC_MARGIN_MS 3600000ULL
/* That alone is this node's own *bound*, which it sends its peers (peer_bound_ms =
 * NULL).  The horizon it may raise is also no later than the bound each peer last
 * sent (peer_bound_ms[i]; 0 = none received yet, which allows no GC at all), except a
 * peer not waited for (away max_ms): the horizon is a max-register that every node
 * adopts, so it must be safe by every node's view of every other, not only by this
 * node's.  Without that, a node that last synced with the absent one lets the
 * horizon pass a tombstone another node made while cut off from both (docs/design.md,
 * "Tombstone GC"). */
uint64_t mm_gc_horizon_ms(uint64_t now_ms, uint64_t grace_ms, uint64_t max_ms, uint64_t margin_ms,
                          const uint64_t *peer_synced_ms, const uint64_t *peer_bound_ms, size_t n);

/* Whether this node's own state is too old to be merged into its peers': it has been
 * in sync with some of them (last_in_sync_ms[i], wall ms, 0 = never) but with none
 * since max_ms - margin_ms ago.  Each peer stops waiting for a node max_ms after its
 * last sync with it (above) and may then drop tombstones of messages this node still
 * holds: merged, they would come back on every node.  margin_ms covers a peer that
 * saw the last sync a little earlier than this node did.  A node never in sync with
 * any peer holds only what it was given or found itself: not stale.  A last sync
 * later than now_ms (the clock went back) is not stale until now_ms passes it.
 * margin_ms is meant to be well below max_ms (at or above it, any time out of sync
 * counts).  *last_r (may be NULL) = the latest time in sync, 0 if none. */
bool mm_gc_stale(uint64_t now_ms, uint64_t max_ms, uint64_t margin_ms, const uint64_t *last_in_sync_ms,
                 size_t n, uint64_t *last_r);

/* What a node's GC knows of one peer.  synced_ms, known_ms and bound_ms are durable (the caller
 * stores them); the sample is memory.  "In sync" is a DIGEST that showed equal roots
 * (proto mm_sync_stats.last_equal_ms): the peer then held every record we held.  It
 * counts only once the peer stayed connected until the next GC: one that crashed before
 * committing would come back without those records, and a push of its old copy may
 * still be in a stream behind the DIGEST. */
struct mm_gc_peer {
	uint64_t synced_ms;  /* last in sync and then connected until the next GC (0 = never) */
	uint64_t known_ms;   /* when this node first had the peer in its peers file */
	uint64_t bound_ms;   /* the GC bound the peer last sent (0 = none yet) ... */
	uint64_t members;    /* ... and the members hash sent with it */
	uint64_t sample_ms;  /* last_equal_ms at the previous GC ... */
	uint64_t sample_conn; /* ... the connection's incarnation then ... */
	bool sample_up;      /* ... and whether it was connected then */
};

/* One GC's look at a peer: confirms the previous sample when the same connection (conn:
 * any number that changes when the peer reconnects) stayed up since, takes a new one,
 * and returns what the GC waits for (mm_gc_horizon_ms's peer_synced_ms): synced_ms, or
 * known_ms for a peer never in sync. */
uint64_t mm_gc_peer_tick(struct mm_gc_peer *g, uint64_t last_equal_ms, uint64_t conn, bool up);

/* A hash of the nodes a node's GC counts: itself and its peers (node ids; sorted here,
 * in place).  Never 0.  Each node's bound speaks for its own peers only, so the rule
 * above needs every node to count the same nodes (every node a peer of every other):
 * a peer whose hash differs from ours gives no bound (mm_gc_peer_bound), and there is
 * no GC until the peers files agree. */
uint64_t mm_gc_members_hash(uint64_t *ids, size_t n);

/* The bound to pass for a peer (mm_gc_horizon_ms's peer_bound_ms[i]): the one it last
 * sent if it counts the same nodes (members = ours), else 0 (none: no GC). */
uint64_t mm_gc_peer_bound(const struct mm_gc_peer *g, uint64_t members);

/* ---- whole state: all users -------------------------------------------------- */

struct mm_state;

struct mm_state *mm_state_new(void);
void mm_state_free(struct mm_state **sp);

/* The user's state, created empty when `create` and unknown (NULL if not, or ENOMEM). */
struct mm_user *mm_state_user(struct mm_state *s, const char *name, bool create);
size_t mm_state_user_count(const struct mm_state *s);

/* Calls cb for each user in order of position (BLAKE2b-128 of the name) restricted to
 * positions starting with prefix/depth, as mm_user_foreach. */
int mm_state_foreach(const struct mm_state *s, const uint8_t *prefix, unsigned depth,
                     int (*cb)(void *arg, struct mm_user *u), void *arg);

/* Root over users and the same tree queries as for a user, over user leaves. */
void mm_state_root(const struct mm_state *s, uint8_t root_r[MM_HASH_LEN]);
void mm_state_children(const struct mm_state *s, const uint8_t *prefix, unsigned depth,
                       uint8_t hashes_r[MM_FANOUT][MM_HASH_LEN], uint32_t counts_r[MM_FANOUT]);
void mm_state_node(const struct mm_state *s, const uint8_t *prefix, unsigned depth,
                   uint8_t hash_r[MM_HASH_LEN], uint32_t *count_r);
/* Position of a user in the users tree: BLAKE2b-128(name). */
void mm_user_position(const char *name, uint8_t pos_r[MM_KEY_LEN]);

/* Merges a record into user `user` (created if needed).  Same returns as mm_user_merge. */
int mm_state_merge(struct mm_state *s, const char *user, const struct mm_rec *r,
                   mm_effect_fn *eff, void *arg);
/* The same for a record that passed mm_rec_validate() (as mm_user_merge_valid). */
int mm_state_merge_valid(struct mm_state *s, const char *user, const struct mm_rec *r,
                         mm_effect_fn *eff, void *arg);

/* ---- deltas: records to ship ------------------------------------------------- */

struct mm_delta *mm_delta_new(void);
void mm_delta_free(struct mm_delta **dp);
void mm_delta_clear(struct mm_delta *d);
/* Appends a deep copy of r for `user`; a later record with the same (user, key)
 * replaces the earlier one. -ENOMEM. */
int mm_delta_add(struct mm_delta *d, const char *user, const struct mm_rec *r);
size_t mm_delta_count(const struct mm_delta *d);
/* The i-th entry (0 <= i < count): user name and record, borrowed until the next add/clear. */
const struct mm_rec *mm_delta_get(const struct mm_delta *d, size_t i, const char **user_r);
/* A delta entry is "fresh" when it carries a message that did not exist before this
 * delta (mm_user_deliver marks it; a later record for the same key keeps the mark): a
 * push sends the body of fresh messages inline, and only theirs, because a peer that
 * already holds the message has its body too (a flag change, a UID move or need must
 * not resend kilobytes to every peer).  set_fresh: 0, or -ENOENT when (user, key) has
 * no entry.  fresh: false for i out of range. */
int mm_delta_set_fresh(struct mm_delta *d, const char *user, const uint8_t key[MM_KEY_LEN]);
bool mm_delta_fresh(const struct mm_delta *d, size_t i);
/* Merges every record of d into s; returns the number of records that changed s, or
 * a negative errno (records before the failing one stay merged). */
int mm_delta_apply(const struct mm_delta *d, struct mm_state *s, mm_effect_fn *eff, void *arg);


/* ---- additions (crdt engineer): canonical codec, arena, helpers ----------------
 *
 * Return values of the local changes above (mm_user_deliver ... folder_subscribe):
 * 1 if the state changed, 0 if the call changed nothing (e.g. setting a flag to the
 * value it already has, expunging a tombstone), negative errno on failure (-EINVAL
 * for a bad name/flag, -ENOENT as documented, -EEXIST if deliver's stamp was already
 * used for a message, -ENOMEM).  A local change that writes nothing adds nothing to
 * `out`.
 *
 * Effects, precisely: MSG_NEW is also the signal that the message's folder is in use
 * (the store creates the folder directory if needed).  After MSG_EXPUNGED the folder
 * may have become invisible: check mm_user_folder_visible().  FOLDER is called when
 * `exists` or `subscribed` changes value, and when `exists` stays 1 but its stamp
 * changes (the folder's UIDVALIDITY changed: concurrent creations on two nodes).  If
 * a MESSAGE arrives whose immutable fields (body, folder, size, internaldate) differ
 * from the stored instance under the same key (only possible after a bug or a forged
 * record), the larger encoding wins on every replica; that is reported as
 * MSG_EXPUNGED (old) followed by MSG_NEW (new).
 * Callbacks must not modify the user they are called for.
 *
 * Names (mm_rec_validate): folder names exclude '/'; keyword names exclude space but
 * may contain '/' (a valid IMAP atom character); neither may hold control characters.
 *
 * GC: pass mm_user_gc a horizon well behind every node's clock (now - grace period),
 * so no node can still stamp a tombstone below it (docs/design.md).
 *
 * Records returned by mm_user_get() are materialised into memory owned by the user
 * and released at the first mm_user_get() after the user's next change (or at
 * mm_user_free), so such a record may itself be merged back into the same user.  A
 * read-only scan reuses that memory: a record also stays valid only until records of
 * at least 256 KiB (some hundreds) have been handed out after it, so hold a few, not
 * a whole scan's worth (copy what must outlive that); the
 * record passed to a foreach callback or an effect callback is valid for the
 * duration of that call only. */

#include <sys/types.h> /* ssize_t */

/* Bump allocator for decoded records: many small allocations, freed all at once. */
struct mm_arena_chunk;
struct mm_arena {
	struct mm_arena_chunk *head;
	bool wipe; /* mm_arena_init_wiped */
};
void mm_arena_init(struct mm_arena *a);
/* The same, for an arena that holds what came off the network (proto/sync.c decodes
 * received records into one: keywords, folder names): the bytes a chunk handed out are
 * wiped before the chunk is freed (by reset or free; only bytes handed out, so an
 * arena of small messages costs little).  A reset keeps the first chunk as it is,
 * live memory of its owner, until it is reused or freed. */
void mm_arena_init_wiped(struct mm_arena *a);
/* n bytes aligned to 16, valid until reset/free; NULL on allocation failure. */
void *mm_arena_alloc(struct mm_arena *a, size_t n);
/* Releases every allocation (keeps one chunk for reuse). */
void mm_arena_reset(struct mm_arena *a);
/* Releases everything; the arena may be initialised again. */
void mm_arena_free(struct mm_arena *a);

/* Canonical binary encoding of one record (what mm_rec_hash hashes, what node/
 * persists).  Big-endian fixed-width integers; registers never written are left out
 * (a bitmask says which are present); keywords in name order.  FOLDER's uidvalidity
 * is derived, so it is not encoded.  Returns the number of bytes the encoding takes
 * (writing them when it fits in cap), -ENOSPC if cap is too small (buf NULL / cap 0
 * to learn the size), -EINVAL if r cannot be encoded (bad type, name longer than
 * MM_NAME_MAX, more than 65535 keywords). */
ssize_t mm_rec_encode(const struct mm_rec *r, uint8_t *buf, size_t cap);

/* Decodes exactly len bytes into *r_r.  Strings and the keyword array are allocated
 * in arena a (valid until it is reset).  The input is untrusted: every length is
 * bounds-checked, trailing bytes and non-canonical encodings are rejected, and the
 * result must pass mm_rec_validate.  Returns 0 or -EBADMSG (-ENOMEM if the arena
 * cannot allocate).  Property: encode(decode(x)) == x for every accepted x. */
int mm_rec_decode(const uint8_t *buf, size_t len, struct mm_rec *r_r, struct mm_arena *a);

/* True when a and b are the same record (same canonical encoding). */
bool mm_rec_equal(const struct mm_rec *a, const struct mm_rec *b);

/* Deterministic merge rules, exposed for tests and tools: the register that wins
 * between a and b (later stamp, then larger node, then larger value). */
struct mm_reg mm_reg_join(struct mm_reg a, struct mm_reg b);

/* Approximate heap bytes used by a user's state (records, index, Merkle cache,
 * interned names), for memory measurements. */
size_t mm_user_mem(const struct mm_user *u);

/* A counter that increases with every change to the user's records (for caches
 * keyed on "has this user changed since"). */
uint64_t mm_user_version(const struct mm_user *u);

/* ---- IMAP UIDs (issue 7, docs/design.md "IMAP UIDs"; the rule: crdt/uid.h) ---- */

/* Writes the folder's exists register as 1 with `stamp` even when it is already 1:
 * the folder gets a new UIDVALIDITY on every replica: `uidvalidity` if non-zero (the
 * one a node's Dovecot already gave the folder, adopted by the node that created the
 * record), else mm_folder_uidvalidity of the new stamp (used when a node can no longer
 * keep the folder's UIDs in agreement, e.g. a damaged dovecot-uidlist: clients
 * resynchronise instead of trusting wrong UIDs).  Returns 1 when the register
 * changed, 0 if a later stamp already holds it, -EINVAL, -ENOMEM.  Effect: FOLDER. */
int mm_user_folder_renew(struct mm_user *u, const char *name, mm_hlc stamp, uint32_t uidvalidity,
                         mm_effect_fn *eff, void *arg, struct mm_delta *out);

#endif
