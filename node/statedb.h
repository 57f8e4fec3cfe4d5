/*
 * statedb.h — the node's durable state in LMDB (state_dir/state.mdb): CRDT records,
 * the file index, the folder index and small meta values (the clock).  A thin,
 * generic layer: keys and values are bytes chosen by node/store.c; this file only
 * guarantees that a batch of puts/deletes becomes durable all at once (one LMDB write
 * transaction, synced on commit with LMDB's default durability), so a kill -9 leaves
 * either the old or the new batch, never a mix.
 *
 * Keys are at most MM_STATEDB_KEY_MAX bytes (LMDB's limit is 511); values any size.
 * Not thread-safe: one caller at a time (the store serialises its calls).
 */
#ifndef MM_STATEDB_H
#define MM_STATEDB_H

#include <stddef.h>
#include <stdint.h>

#define MM_STATEDB_KEY_MAX 480

enum mm_statedb_table {
	MM_DB_RECS = 0,   /* CRDT records */
	MM_DB_FILES,      /* message file index as written before the key-ordered one
	                   * below: read once to convert it, then empty */
	MM_DB_FOLDERS,    /* folder index (on disk / subscribed as last seen) */
	MM_DB_META,       /* "clock", "format", and the daemon's own ("d:...") */
	MM_DB_FIDX,       /* message file index, keyed so a folder's files, a message's
	                   * file and a body's files are key ranges (node/store.c) */
	MM_DB_TABLES
};

struct mm_statedb;

/* The layout of state.mdb this code reads and writes.  The store writes it under
 * meta "format" (8 bytes, big-endian) with its first commit; a later layout gets a
 * higher number, which this code refuses. */
#define MM_STATEDB_FORMAT 1

/* Opens or creates <state_dir>/state.mdb (state_dir is created with mode 0700 if
 * missing).  map_bytes is the most the database may grow to (0 = 16 GiB; the file is
 * sparse).  Returns 0, or a negative errno with a message in err that names the path
 * and what to do: -EPROTONOSUPPORT for a database whose meta "format" is above
 * MM_STATEDB_FORMAT, -EBADMSG for a damaged one, checked before anything is written
 * to it. */
int mm_statedb_open(struct mm_statedb **db_r, const char *state_dir, uint64_t map_bytes,
                    char *err, size_t errlen);
void mm_statedb_free(struct mm_statedb **dbp); /* NULLs *dbp; aborts an open batch */

/* Meta "format" as it was when the database was opened; 0 when it had none. */
uint64_t mm_statedb_format(const struct mm_statedb *db);

/* Calls cb for every entry of a table in key order (data valid during the call).
 * Stops and returns cb's non-zero value; 0 at the end; negative errno on a read error. */
int mm_statedb_foreach(struct mm_statedb *db, enum mm_statedb_table t,
                       int (*cb)(void *arg, const void *k, size_t kl, const void *v, size_t vl),
                       void *arg);

/* Like mm_statedb_foreach, for the entries whose key starts with prefix (plen bytes,
 * 1..MM_STATEDB_KEY_MAX), in key order.  Reads through the open batch if there is
 * one (so it sees the batch's own puts), else through a fresh read snapshot. */
int mm_statedb_range(struct mm_statedb *db, enum mm_statedb_table t, const void *prefix, size_t plen,
                     int (*cb)(void *arg, const void *k, size_t kl, const void *v, size_t vl),
                     void *arg);

/* Number of entries in a table (0 on error): lets a loader size its indexes once. */
size_t mm_statedb_count(struct mm_statedb *db, enum mm_statedb_table t);

/* Drops this process's mappings of the database pages it has read (after a full load,
 * which touched every page): they stay in the kernel's page cache, and are mapped
 * again on the next access.  Resident memory then counts only what is used later.
 * Must not be called while data returned by a read is still in use. */
void mm_statedb_release_pages(struct mm_statedb *db);

/* One value into buf: returns its length (copying min(len, buflen) bytes), -ENOENT
 * if absent, or negative errno. */
int mm_statedb_get(struct mm_statedb *db, enum mm_statedb_table t, const void *k, size_t kl,
                   void *buf, size_t buflen);

/* A batch: begin, any number of put/del, then commit (durable, all or nothing) or
 * abort.  put replaces; del of an absent key is not an error.  Each returns 0 or a
 * negative errno (-ENOSPC when the disk is full, -EFBIG when the database has reached
 * map_bytes: abort and retry later). */
int mm_statedb_begin(struct mm_statedb *db);
int mm_statedb_put(struct mm_statedb *db, enum mm_statedb_table t, const void *k, size_t kl,
                   const void *v, size_t vl);
int mm_statedb_del(struct mm_statedb *db, enum mm_statedb_table t, const void *k, size_t kl);
int mm_statedb_commit(struct mm_statedb *db);
void mm_statedb_abort(struct mm_statedb *db);

/* Batches committed since the database was opened: each one a durable write (LMDB's
 * syncs) that holds the caller.  `mailmesh status` shows it, so a test can tell that a
 * stream of bodies is not committed body by body. */
uint64_t mm_statedb_commits(const struct mm_statedb *db);

#endif
