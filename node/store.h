/*
 * store.h — the glue between real Maildirs (as Dovecot writes them) and the CRDT
 * state: local changes on disk become CRDT changes (scan), merged remote records
 * become file operations (effect), message bodies travel in and out (body_*), and
 * everything is persisted in one LMDB transaction per commit (statedb.h).
 *
 * Plain POSIX, no libuv: the daemon calls these from its loop or a worker thread,
 * one call at a time per store (not thread-safe), and watches mm_store_watch_dirs().
 *
 * Identity of files: a file is known by (user, folder, base name) in a persisted file
 * index holding its record key, body id, size, mtime and flag letters, so a restart
 * never re-reads unchanged files.  Files the store writes are self-describing:
 * "<internaldate>.M<usec>P<pid>.mm_<32 hex record key>,S=<size>[:2,<letters>]", so a
 * rescan after a crash between the file's rename and the next commit links the file
 * to its record instead of taking it for a new local delivery.  The store commits a
 * record before the first file carrying its key appears (body_commit and flush do so
 * themselves, flush once for a whole batch of staged bodies), so such a file always
 * finds its record after a crash.  Base names embed the record
 * key, and an expunged key never comes back, so a base name is never reused.
 *
 * Safety: the store never deletes or alters a user file except to mirror a CRDT
 * change (flag rename, expunge unlink, removal of an empty folder).  A user whose
 * whole Maildir disappears is left alone (logged): an unmounted disk must not
 * expunge everything; no scan acts on it, no merged change touches it, its Maildir is
 * not made again, and once it is back what it lacks is fetched again, not expunged
 * (docs/maildir.md, "A user's Maildir gone").  Unreadable or odd files are logged
 * once and skipped.
 */
#ifndef MM_STORE_H
#define MM_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crdt/crdt.h"

/* log levels for the logging callback (syslog numbers) */
#define MM_STORE_LOG_ERR 3
#define MM_STORE_LOG_WARNING 4
#define MM_STORE_LOG_INFO 6

struct mm_store_config {
	const char *mail_location; /* e.g. "maildir:/var/mail/vhosts/%d/%n" (mailloc.h) */
	const char *state_dir;     /* holds state.mdb */
	/* Replicate IMAP UIDs and UIDVALIDITY through dovecot-uidlist (issue 7; the
	 * daemon's default: docs/design.md, "IMAP UIDs").  Off, each node's Dovecot
	 * numbers the messages it finds, as it does without mailmesh. */
	bool imap_uids;
	/* The most state.mdb may grow to (0: 16 GiB); beyond it a commit fails with
	 * -EFBIG. */
	uint64_t max_bytes;
	/* Where mm_store_open logs (NULL: nowhere), e.g. that it converts an old database
	 * (a long start); mm_store_set_log may change it later. */
	void (*log)(void *arg, int level, const char *fmt, ...);
	void *log_arg;
};

struct mm_store;
struct mm_body_writer;

/* Opens/creates <state_dir>/state.mdb, merges every persisted record into `state`
 * (without effects), restores the clock so it never issues a stamp <= the persisted
 * one (clock->node must be set; clock is re-initialised with it), loads the file
 * index and works out which messages still miss their body.  `state` and `clock` are
 * borrowed and must outlive the store.  Returns 0, or a negative errno with a message
 * in err naming the path and what to do. */
int mm_store_open(struct mm_store **sp, const struct mm_store_config *cfg,
                  struct mm_state *state, struct mm_clock *clock, char *err, size_t errlen);

/* Closes the database (uncommitted changes are lost, as after a crash).  NULL-safe. */
void mm_store_free(struct mm_store **sp);

/* Logging callback for errors and notable events; each distinct problem (message
 * with its path) is logged once.  Without one, nothing is logged. */
void mm_store_set_log(struct mm_store *s, void (*fn)(void *arg, int level, const char *fmt, ...),
                      void *arg);

/* Brings the CRDT up to date with disk for every user found via mail_location:
 * folders created/removed, new files (read and hashed: deliver), renames (flags and
 * keywords), deleted files (expunge), subscriptions.  Each change is stamped by the
 * clock at now_ms and its records appended to out (may be NULL).  Returns the number
 * of CRDT changes made (>= 0) or a negative errno (-ENOMEM).  The first scan after
 * mm_store_open does not read a folder whose new/ and cur/ have the inode and mtime
 * they had when the index last matched them (and were not changed in the 2 s before
 * that), so a restart does not read every file name again; every later scan reads
 * all folders. */
int mm_store_scan(struct mm_store *s, uint64_t now_ms, struct mm_delta *out);

/* The same for one folder of one user ("INBOX" or Maildir++ name); a folder that
 * vanished is deleted, an unknown one created.  Returns the number of changes,
 * -EINVAL for a name the template/folder rules reject, or negative errno. */
int mm_store_scan_folder(struct mm_store *s, const char *user, const char *folder,
                         uint64_t now_ms, struct mm_delta *out);

/* Calls cb for every directory to watch: each known folder's new/ and cur/ (user and
 * folder set), each user's Maildir (user set, folder NULL: folders appear there), the
 * template directories above the users (user and folder NULL: users appear there),
 * and the directories where a user's Maildir is awaited (user NULL, folder = the name
 * whose appearance there matters: the next fixed part of mail_location, such as
 * "Maildir" in a home, or "cur" for a match not yet a Maildir, standing for cur/ or
 * new/), in that order of importance: the folders first.  Stops with cb's non-zero
 * value; returns 0 otherwise. */
int mm_store_watch_dirs(struct mm_store *s,
                        int (*cb)(void *arg, const char *path, const char *user, const char *folder),
                        void *arg);

/* An mm_effect_fn (arg = the store) to pass to merges of remote records: mirrors
 * the change into the Maildir.  MSG_NEW: folder directory created; the body is noted
 * missing (a body already present for the user is copied at the next commit, no
 * network needed).  MSG_FLAGS: rename.  MSG_EXPUNGED: unlink.  FOLDER: create now;
 * removal (only when no longer visible and empty) and the subscriptions file at the
 * next commit.  Users known only from peers get a Maildir with the ownership of a
 * sibling.  Every touched record is marked for the next commit.  Never fails: errors
 * are logged once with the path. */
void mm_store_effect(void *store, const char *user, enum mm_effect eff, const struct mm_rec *rec);

/* Merges one remote record (mm_state_merge with mm_store_effect) and marks it for the
 * next commit even when the change had no visible effect.  The clock observes the
 * record's stamps first (mm_clock_observe against the wall clock, bound set by
 * mm_store_set_max_skew: default 10 minutes),
 * so later local changes follow it.  Same returns as
 * mm_state_merge.  mm_store_merge_delta does it for every record of d and returns the
 * number of changed records or the first error. */
int mm_store_merge(struct mm_store *s, const char *user, const struct mm_rec *rec);
int mm_store_merge_delta(struct mm_store *s, const struct mm_delta *d);
void mm_store_set_max_skew(struct mm_store *s, uint64_t max_skew_ms);

/* With imap_uids: whether this node is the UID authority of its folders (crdt/uid.h:
 * the only node that moves a message to a new UID).  The daemon makes the live node
 * with the lowest id the authority.  Becoming it re-checks, at the next commit, every
 * folder whose last check left something an authority would do differently (crdt/uid.h:
 * a message not listed under its UID here, or with a need above it).  Default false. */
void mm_store_set_uid_authority(struct mm_store *s, bool authority);
/* While this node catches up (joining, or back after a long absence: the daemon says so
 * when it misses many bodies), the UID passes do not raise needs: a message it cannot
 * show under its UID yet stays listed provisionally, because asking the authority to
 * move it now would renumber it on every node while the bodies still arriving change
 * what this node can show.  When catching up ends, every folder whose last pass did
 * not show each message under its UID is planned again, and needs are raised for what
 * still cannot be shown. */
void mm_store_set_catching_up(struct mm_store *s, bool catching_up);

/* Marks (user, key) for the next commit (for callers that merge by other means). */
int mm_store_mark(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN]);

/* Opens the file holding the body of message `key` for reading: *fd_r (caller
 * closes; opened O_NONBLOCK, which changes nothing for a regular file) and *size_r.
 * -ENOENT if this node has no file for it, -ELOOP if a symbolic link is in its
 * place, -EINVAL if something else than a regular file is, or another negative errno. */
int mm_store_body_open(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN],
                       int *fd_r, uint64_t *size_r);

/* Writing a body received from a peer: begin (the record must be a live MESSAGE
 * without a local file: else -ENOENT / -EEXIST), write the bytes in order, then
 * commit or abort.  write returns 0 or negative errno (-ENOSPC: abort and retry later;
 * -EFBIG: more bytes than the record's size).  commit checks size and BLAKE2b
 * against the record (-EBADMSG, nothing left behind), commits the record first if it
 * is not yet durable, then tmp/ -> fsync -> mtime = INTERNALDATE -> rename into new/
 * (no flags) or cur/ (flags as in the CRDT now), owner/mode of the Maildir; the file
 * index is updated so the write is never seen as a local change.  Returns 1 when
 * written, 0 when the message was expunged (or got a file) meanwhile and nothing was
 * written, negative errno otherwise.  commit and abort free the writer and NULL *wp. */
int mm_store_body_begin(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN],
                        struct mm_body_writer **w_r);
int mm_store_body_write(struct mm_body_writer *w, const void *data, size_t len);
int mm_store_body_commit(struct mm_body_writer **wp);
void mm_store_body_abort(struct mm_body_writer **wp);

/* Batched variant of commit, for a stream of bodies (sync sessions): checks size and
 * BLAKE2b like commit (-EBADMSG, nothing left behind; 0 and nothing kept if the
 * message was expunged or got its file meanwhile), starts the file's writeback and
 * keeps the file in tmp/ (its descriptor open) until mm_store_flush or the next
 * mm_store_commit places it.  Returns 0 (*wp is NULLed and the store owns the body).
 * A staged message is not missing for mm_store_missing, and begin/begin_id refuse it
 * (-EEXIST / -ENOENT).  After STAGE_MAX_FILES (2048) staged bodies it flushes itself.
 * If the body cannot be placed later, the message stays missing (the caller's missing
 * check asks for it again); a store freed or a process killed before the placement
 * leaves at most tmp/ files, which are never read as messages. */
int mm_store_body_stage(struct mm_body_writer **wp);

/* Places every staged body: commits first if any of their records is not durable
 * yet (one LMDB transaction for the batch: a record is durable before a file carrying
 * its key appears), fsyncs each file, links each into new/ or cur/, fsyncs each
 * touched directory once.  The placed files' index entries are written by the next
 * mm_store_commit (a crash before it is repaired by the rescan, by key).  0, or the
 * commit's negative errno (then the staged bodies are dropped and stay missing);
 * a body that cannot be placed is logged and stays missing. */
int mm_store_flush(struct mm_store *s);

/* Placing off the store's thread.  A placement's file work (the sync that makes a
 * batch durable, a rename per file, the directory syncs) is most of its time; the
 * daemon has it done on its thread pool while the loop goes on receiving:
 *   mm_store_place_begin (store thread): takes every staged body (committing their
 *     records first, as mm_store_flush does), holds what must wait for its UID and
 *     lists the rest in dovecot-uidlist, whose lock it keeps until
 *     mm_store_place_run has put the files in place.  1 and *job_r: a job to run;
 *     0: nothing to place now (no staged body, gathering, or a job is out); negative
 *     errno: the commit failed (the staged bodies were dropped and stay missing).
 *   mm_store_place_run (any thread): the file work.  It touches only the job, its
 *     files and the filesystem, so the store may be used meanwhile.
 *   mm_store_place_end (store thread): applies the outcome, frees the job and NULLs
 *     *jobp.  A message expunged, moved or given another file while the job was out
 *     loses the file just placed; one whose flags changed gets its file renamed.
 *     Returns the number placed, or the first error when none was.
 * While a job is out (mm_store_placing), mm_store_flush, commits and
 * mm_store_body_commit place nothing: their bodies stay staged for the next job.
 * Every begun job must be ended before mm_store_free. */
struct mm_store_place;
int mm_store_place_begin(struct mm_store *s, struct mm_store_place **job_r);
void mm_store_place_run(struct mm_store_place *job);
int mm_store_place_end(struct mm_store *s, struct mm_store_place **jobp);
bool mm_store_placing(const struct mm_store *s);

/* A watch event for file `name` in directory `dir` (a folder's new/ or cur/): true if
 * it is the event of a file this store placed there itself, still in place, so the
 * folder need not be scanned for it.  Each placement answers true once. */
bool mm_store_own_event(struct mm_store *s, const char *dir, const char *name);

/* Small values of the daemon's own in the state database (when each peer was last in
 * sync, for the tombstone GC).  mm_store_meta_set stages key = v for the next
 * mm_store_commit (the last value set wins; a failed commit keeps it for the next);
 * mm_store_meta_get reads the value staged for the next commit if any, else the durable
 * one (0 in *v_r when absent).  Keys are 1 to
 * MM_STORE_META_KEY_MAX bytes.  Both return 0, -EINVAL (key), -ENOMEM (set), -ENOENT
 * (get: never written), -EBADMSG (get: not a value of this kind) or another negative
 * errno. */
#define MM_STORE_META_KEY_MAX 100
int mm_store_meta_set(struct mm_store *s, const char *key, uint64_t v);
int mm_store_meta_get(struct mm_store *s, const char *key, uint64_t *v_r);

/* State database commits since the store was opened (mm_statedb_commits). */
uint64_t mm_store_commits(const struct mm_store *s);

/* Number of staged bodies (mm_store_body_stage) waiting for mm_store_flush. */
size_t mm_store_staged_count(const struct mm_store *s);

/* A body begun by id with MM_STORE_BODY_DEFER (mm_store_body_begin_id) is kept in memory by its
 * writer rather than written to tmp/ as it arrives.  The daemon writes such bodies
 * out on libuv's thread pool:
 *   mm_store_body_prepare (store thread): verifies the body as mm_store_body_stage
 *     would; 1 = go on, 0 = nothing to do, negative errno; on anything but 1 *wp is
 *     freed and NULL.  From then on the body counts as staged: it is not begun again
 *     nor offered to the fetcher.
 *   mm_store_body_write_out (any thread): creates its tmp/ file, writes and seals it
 *     (no sync).  It touches only the writer and the filesystem, so it may run while
 *     the store is used elsewhere.  0 or negative errno (kept in the writer).
 *   mm_store_body_stage (store thread): as for any writer; a write-out failure is
 *     logged and returned, and the body stays missing.
 * A deferred writer staged or committed without the first two steps gets them there
 * and then.  mm_store_body_deferred tells whether a writer is deferred. */
bool mm_store_body_deferred(const struct mm_body_writer *w);
int mm_store_body_prepare(struct mm_body_writer **wp);
int mm_store_body_write_out(struct mm_body_writer *w);

/* Wall-clock ms at which the oldest staged body was staged; 0 when none is. */
uint64_t mm_store_staged_since(const struct mm_store *s);

/* While `on`, staged bodies wait for more instead of being placed by mm_store_flush
 * or a commit, until the batch reaches its cap (then it is placed anyway).  The
 * daemon sets it while a stream of bodies is under way, so that a joining node
 * places them in a few large batches: each placement costs a syncfs (on a journaled
 * filesystem, a journal commit), a uidlist write and a directory fsync, whatever its
 * size.  Clearing it does not place them: the next mm_store_flush does. */
void mm_store_gather(struct mm_store *s, bool on);

/* imap_uids: number of bodies held back so that a folder's UIDs are listed in order
 * (a body above the folder's NEXTUID waits for the lower ones still missing, at most
 * 30 s without any body arriving).  mm_store_flush places those whose time has come; call it
 * while this is non-zero. */
size_t mm_store_held_count(const struct mm_store *s);

/* imap_uids: when (wall-clock ms, 0 = none) a folder's re-files stop waiting for lower
 * UID moves (crdt/uid.h mm_uid_plan's hold, MM_UID_HOLD_MS at most): the caller runs
 * a commit (whose UID pass plans such folders again) at or after that time.  It may
 * be early (the wait ended sooner): the commit then finds nothing to do. */
uint64_t mm_store_uid_hold_due(const struct mm_store *s);

/* The records mm_store_commit changed itself (IMAP UID moves and needs), durable once
 * it returned 0: for the caller to push.  Owned by the store, valid until the next
 * commit. */
const struct mm_delta *mm_store_commit_delta(const struct mm_store *s);

/* With imap_uids: true (once) when a scan left a just-made folder for later, waiting
 * for Dovecot to number it (its cur/ changed less than the wait ago, default 1000 ms,
 * it holds 16 messages at most, and it has no dovecot-uidlist; never longer than 3
 * waits): the caller scans again
 * a little later.  A wait of 0 turns this off (tests that scan at once). */
bool mm_store_take_deferred(struct mm_store *s);

/* With imap_uids: true (once) when a scan left new files unindexed because another
 * process (Dovecot, delivering them) held the folder's dovecot-uidlist lock; the
 * caller scans those folders again when the lock goes (mm_store_lock_waiting says
 * whether a folder is one of them) or a little later (mm_store_lock_waits calls cb
 * for each).  After 1 s of a busy lock a scan waits for it instead. */
bool mm_store_take_lock_waits(struct mm_store *s);
bool mm_store_lock_waiting(struct mm_store *s, const char *user, const char *folder);
void mm_store_lock_waits(struct mm_store *s, void (*cb)(void *arg, const char *user, const char *folder),
                         void *arg);
void mm_store_set_new_folder_wait(struct mm_store *s, uint64_t wait_ms);

/* The same by body id, for sync sessions that name bodies by content:
 * have_id: 1 if a file with these bytes exists for the user, else 0.
 * open_id: opens one such file (-ENOENT if none).
 * begin_id: starts writing the body for a live message that lacks it and has this
 *   id (-EEXIST if the user already has these bytes, -ENOENT if no message needs
 *   them, -EINVAL if `size` is not the record's size).  Other messages waiting for
 *   the same bytes get a local copy at the next mm_store_commit.  flags: any of
 *   MM_STORE_BODY_DEFER, MM_STORE_BODY_VERIFIED (below). */
int mm_store_body_have_id(struct mm_store *s, const char *user, const uint8_t id[MM_ID_LEN]);
/* needed_id: true if some live message of the user lacks this body (none has the
 * bytes, none is staged): the fetch scheduler's cfg.needed. */
bool mm_store_body_needed_id(struct mm_store *s, const char *user, const uint8_t id[MM_ID_LEN]);
int mm_store_body_open_id(struct mm_store *s, const char *user, const uint8_t id[MM_ID_LEN],
                          int *fd_r, uint64_t *size_r);
int mm_store_body_begin_id(struct mm_store *s, const char *user, const uint8_t id[MM_ID_LEN],
                           uint64_t size, unsigned flags, struct mm_body_writer **w_r);

/* flags of mm_store_body_begin_id */
#define MM_STORE_BODY_DEFER 1u    /* keep the body in memory for mm_store_body_write_out */
#define MM_STORE_BODY_VERIFIED 2u /* the caller checks the bytes against `id` and stages
                                   * or commits only a body that matched (a sync session
                                   * does, proto/sync.h): the store does not hash them
                                   * again, it only checks the size */

/* Calls cb for every live message whose body this node lacks.  Stops with cb's
 * non-zero value; 0 otherwise. */
int mm_store_missing(struct mm_store *s,
                     int (*cb)(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                               const uint8_t body[MM_ID_LEN], uint64_t size),
                     void *arg);
size_t mm_store_missing_count(const struct mm_store *s);

/* Removes a user from the cluster, starting here: every folder the user's state knows,
 * INBOX included, is unsubscribed and deleted with the messages it holds (stamped by
 * the clock at now_ms, records appended to out for the peers).  Every node, this one
 * at the next mm_store_commit, unlinks the files, removes the folders and then the
 * whole Maildir (mm_md_maildir_remove: kept, and logged, while it holds anything
 * mailmesh does not own).  A message delivered concurrently on a node that has not
 * merged the removal yet survives with its folder, and keeps the user.  A Maildir
 * made later for the same name is a new user: nothing of the old one comes back.
 * On a node where the user is absent (store.c user_present) the files are removed
 * when the Maildir is back.  Returns the number of CRDT changes (>= 0) with
 * *removal_r (may be NULL) filled, -ENOENT if the state has no such user, -EALREADY if
 * it was removed already and nothing of it is left (crdt mm_user_removed, no live
 * message, no folder), or negative
 * errno (-ENOMEM: some of the changes may be made; running it again completes them). */
struct mm_store_removal {
	size_t messages; /* live messages expunged */
	size_t folders;  /* folders deleted */
	bool absent;     /* the user's Maildir is not here now */
};
int mm_store_user_remove(struct mm_store *s, const char *user, uint64_t now_ms, struct mm_delta *out,
                         struct mm_store_removal *removal_r);
/* What mm_store_user_remove would do now (folders: those it would delete), changing
 * nothing: 0, -ENOENT, -EALREADY (as mm_store_user_remove), or -ENOMEM. */
int mm_store_user_describe(struct mm_store *s, const char *user, struct mm_store_removal *removal_r);

/* Persists every record changed since the last commit (local and merged), the file
 * and folder index and the clock in one durable LMDB transaction; then does the
 * deferred mirror work (local body copies, removal of folders no longer visible,
 * subscriptions files) and persists what that changed the same way; then places the
 * staged bodies (mm_store_body_stage), whose records are durable now.  The daemon
 * commits before it ships deltas to peers.  0, or negative errno (-ENOSPC: nothing
 * was lost, retry later; staged bodies are dropped and stay missing). */
int mm_store_commit(struct mm_store *s);

/* True when a scan that changed no record still changed what should not wait for the
 * next commit that a record brings: a user's Maildir found gone or back (the absent
 * bit), an expunged file finally unlinked.  Cleared by mm_store_commit. */
bool mm_store_wants_commit(const struct mm_store *s);

/* Number of message files read and hashed since open (tests check that a restart
 * does not re-hash). */
uint64_t mm_store_files_hashed(const struct mm_store *s);

/* A scan makes what it indexed durable after every `files` new files (0 = the default,
 * 4,096), so a first scan of a big Maildir keeps the dirty maps and the database's
 * write transaction small; a crash in the middle costs only the files since the last
 * such commit (hashed again at the next start). */
void mm_store_set_scan_commit(struct mm_store *s, size_t files);

/* How many times a folder's dovecot-uidlist was read by a UID pass since open (a
 * start reads only those changed since their last completed pass). */
uint64_t mm_store_uidlists_read(const struct mm_store *s);

/* The message file index is kept in the state database; memory holds the entries in
 * use since the last commit.  After a commit, when more than `entries` are in memory
 * and none is waiting to be written, all are dropped (read again as needed: a folder's
 * whole list when it is scanned, one entry per message otherwise).  0 drops them at
 * every commit (tests use it to run everything through the database).
 *
 * The default keeps a folder of up to 200,000 messages in memory between the scans
 * each delivery causes, and costs at most about 30 MB (about 150 bytes an entry): at
 * a million messages, the CRDT's ~94 bytes a message plus that stays under 150. */
#define MM_STORE_FILE_CACHE 200000
void mm_store_set_file_cache(struct mm_store *s, size_t entries);

/* Folders whose files Dovecot's quota does not count (its quota_rule FOLDER:ignore),
 * as a config's list (mm_md_folder_names_parse: "Trash, Junk"; NULL = none): the
 * files mailmesh places in or removes from them are left out of maildirsize.  0 or
 * -EINVAL (the list kept before stays) / -ENOMEM. */
int mm_store_set_quota_ignore(struct mm_store *s, const char *list);

/* Number of file index entries in memory now (tests, status). */
size_t mm_store_files_in_memory(const struct mm_store *s);

#endif
