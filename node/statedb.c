/*
 * statedb.c — LMDB behind the small batch API of statedb.h.  One environment file
 * (MDB_NOSUBDIR: state.mdb + state.mdb-lock), five named databases, one write
 * transaction per batch.  LMDB's copy-on-write B-tree with its default sync makes a
 * committed batch durable and an interrupted one invisible.
 */
#include "node/statedb.h"

#include <errno.h>
#include <stdbool.h>
#include <lmdb.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <sys/sysmacros.h>

static const char *const table_names[MM_DB_TABLES] = {"recs", "files", "folders", "meta", "fidx"};

struct mm_statedb {
	MDB_env *env;
	MDB_dbi dbi[MM_DB_TABLES];
	MDB_txn *txn; /* open write batch, or NULL */
	MDB_txn *rtxn; /* a reset read transaction, renewed for each read outside a batch
	                * (a lookup by key at every remote change: begin costs more) */
	bool ractive;  /* rtxn is in use (a read inside a range callback gets its own) */
	size_t batch_ops; /* puts and deletes in the open batch */
	uint64_t commits; /* batches committed since open (mm_statedb_commits) */
	uint64_t map_bytes;
	uint64_t format;  /* meta "format" when opened (0: none) */
	char path[4096];
};

/* LMDB keeps, until the environment is closed, as many page buffers as its biggest
 * write transaction dirtied (a first indexing of a million files left 160 MB or more
 * behind).  After a batch of this many puts and deletes, the environment is closed and
 * opened again, which frees them. */
#define REOPEN_OPS 8192

/* A filesystem with less free space than this for its users is full for a commit
 * (a batch writes a few dozen pages at least). */
#define FULL_BYTES (1u << 20)

static int lmdb_err(int rc)
{
	if (rc == 0)
		return 0;
	if (rc == MDB_MAP_FULL)
		return -EFBIG; /* state_max_size reached, however much disk is free */
	if (rc == ENOSPC)
		return -ENOSPC;
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	if (rc > 0)
		return -rc; /* LMDB passes errno values through */
	return -EIO;
}

/* The layout number under meta "format" (8 bytes, big-endian): 0 when there is none
 * (a new database, or one written before the key was), or -EBADMSG.  Read-only: a
 * database of a later layout must be refused before anything is created in it. */
static int64_t format_read(MDB_env *env)
{
	MDB_txn *txn;
	MDB_dbi dbi;
	if (mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0)
		return 0; /* the table creation below reports what is wrong */
	int64_t r = 0;
	MDB_val key = {6, (void *)"format"}, val;
	if (mdb_dbi_open(txn, table_names[MM_DB_META], 0, &dbi) == 0 && mdb_get(txn, dbi, &key, &val) == 0) {
		if (val.mv_size != 8) {
			r = -EBADMSG;
		} else {
			uint64_t f = 0;
			for (int i = 0; i < 8; i++)
				f = f << 8 | ((const uint8_t *)val.mv_data)[i];
			r = f > INT64_MAX ? INT64_MAX : (int64_t)f;
		}
	}
	mdb_txn_abort(txn);
	return r;
}

/* Opens db->env on db->path with its tables; on failure db->env is NULL and err says
 * why. */
static int env_open(struct mm_statedb *db, char *err, size_t errlen)
{
	int rc = mdb_env_create(&db->env);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(db->env, MM_DB_TABLES);
	if (rc == 0)
		rc = mdb_env_set_mapsize(db->env, db->map_bytes ? (size_t)db->map_bytes : ((size_t)16 << 30));
	if (rc == 0)
		rc = mdb_env_open(db->env, db->path, MDB_NOSUBDIR | MDB_NOTLS, 0600);
	if (rc) {
		snprintf(err, errlen, "cannot open state database %s: %s (check the path, its "
		         "permissions and free disk space)", db->path, mdb_strerror(rc));
		if (db->env)
			mdb_env_close(db->env);
		db->env = NULL;
		return lmdb_err(rc) ? lmdb_err(rc) : -EIO;
	}
	int64_t format = format_read(db->env);
	if (format < 0 || format > MM_STATEDB_FORMAT) {
		if (format < 0)
			snprintf(err, errlen, "%s: its format entry is damaged: move the state directory "
			         "away to have this node rebuild it from its Maildirs and peers", db->path);
		else
			snprintf(err, errlen, "%s was written by a newer mailmesh (state format %lld; this one "
			         "reads format %d): run that version again, or move the state directory away "
			         "to have this node rebuild it from its Maildirs and peers",
			         db->path, (long long)format, MM_STATEDB_FORMAT);
		mdb_env_close(db->env);
		db->env = NULL;
		return format < 0 ? -EBADMSG : -EPROTONOSUPPORT;
	}
	db->format = (uint64_t)format;
	MDB_txn *txn;
	rc = mdb_txn_begin(db->env, NULL, 0, &txn);
	for (int i = 0; rc == 0 && i < MM_DB_TABLES; i++)
		rc = mdb_dbi_open(txn, table_names[i], MDB_CREATE, &db->dbi[i]);
	if (rc == 0)
		rc = mdb_txn_commit(txn);
	else
		mdb_txn_abort(txn);
	if (rc) {
		snprintf(err, errlen, "state database %s: %s (is it a mailmesh state file? move it "
		         "aside to start over)", db->path, mdb_strerror(rc));
		mdb_env_close(db->env);
		db->env = NULL;
		return lmdb_err(rc) ? lmdb_err(rc) : -EIO;
	}
	return 0;
}

/* The environment, opened again if a reopen after a big batch failed: 0 or -EIO. */
static int env_ready(struct mm_statedb *db)
{
	char err[256];
	return db->env || env_open(db, err, sizeof err) == 0 ? 0 : -EIO;
}

static void env_reopen(struct mm_statedb *db)
{
	if (db->rtxn)
		mdb_txn_abort(db->rtxn);
	db->rtxn = NULL;
	db->ractive = false;
	mdb_env_close(db->env);
	db->env = NULL;
	env_ready(db); /* on failure the next call tries again */
}

int mm_statedb_open(struct mm_statedb **db_r, const char *state_dir, uint64_t map_bytes,
                    char *err, size_t errlen)
{
	*db_r = NULL;
	char path[4096];
	if (snprintf(path, sizeof path, "%s/state.mdb", state_dir) >= (int)sizeof path) {
		snprintf(err, errlen, "state_dir \"%s\": path too long", state_dir);
		return -ENAMETOOLONG;
	}
	if (mkdir(state_dir, 0700) < 0 && errno != EEXIST) {
		int e = errno;
		snprintf(err, errlen, "cannot create state_dir %s: %s (create it, writable by mailmesh)",
		         state_dir, strerror(e));
		return -e;
	}
	struct mm_statedb *db = calloc(1, sizeof(*db));
	if (!db)
		return -ENOMEM;
	memcpy(db->path, path, sizeof db->path);
	db->map_bytes = map_bytes;
	int r = env_open(db, err, errlen);
	if (r < 0) {
		free(db);
		return r;
	}
	*db_r = db;
	return 0;
}

void mm_statedb_free(struct mm_statedb **dbp)
{
	if (!dbp || !*dbp)
		return;
	struct mm_statedb *db = *dbp;
	if (db->txn)
		mdb_txn_abort(db->txn);
	if (db->rtxn)
		mdb_txn_abort(db->rtxn);
	if (db->env)
		mdb_env_close(db->env);
	free(db);
	*dbp = NULL;
}

size_t mm_statedb_count(struct mm_statedb *db, enum mm_statedb_table t)
{
	MDB_txn *txn;
	MDB_stat st;
	if (env_ready(db) < 0 || mdb_txn_begin(db->env, NULL, MDB_RDONLY, &txn))
		return 0;
	int rc = mdb_stat(txn, db->dbi[t], &st);
	mdb_txn_abort(txn);
	return rc ? 0 : st.ms_entries;
}

void mm_statedb_release_pages(struct mm_statedb *db)
{
	/* LMDB does not tell where it mapped the file (me_mapaddr is set only with
	 * MDB_FIXEDMAP): find the mapping of the file's inode in /proc/self/maps */
	mdb_filehandle_t fd;
	struct stat st;
	if (!db->env || mdb_env_get_fd(db->env, &fd) || fstat(fd, &st) < 0)
		return;
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return;
	char line[512];
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi, ino;
		unsigned maj, min;
		char perms[8];
		if (sscanf(line, "%lx-%lx %7s %*s %x:%x %lu", &lo, &hi, perms, &maj, &min, &ino) != 6 ||
		    ino != st.st_ino || maj != major(st.st_dev) || min != minor(st.st_dev) || perms[1] == 'w')
			continue;
		/* a read-only shared file mapping (no MDB_WRITEMAP): nothing can be lost */
		madvise((void *)lo, hi - lo, MADV_DONTNEED);
	}
	fclose(f);
}

/* A read transaction for one read: the open batch's, or the cached read one renewed
 * (a fresh snapshot).  read_end gives it back. */
static int read_begin(struct mm_statedb *db, MDB_txn **txn_r)
{
	if (db->txn) {
		*txn_r = db->txn;
		return 0;
	}
	if (env_ready(db) < 0)
		return -EIO;
	if (db->ractive) /* a read from inside a range's callback */
		return lmdb_err(mdb_txn_begin(db->env, NULL, MDB_RDONLY, txn_r));
	int rc = db->rtxn ? mdb_txn_renew(db->rtxn) : mdb_txn_begin(db->env, NULL, MDB_RDONLY, &db->rtxn);
	if (rc) {
		if (db->rtxn) {
			mdb_txn_abort(db->rtxn);
			db->rtxn = NULL;
		}
		return lmdb_err(rc);
	}
	*txn_r = db->rtxn;
	db->ractive = true;
	return 0;
}

static void read_end(struct mm_statedb *db, MDB_txn *txn)
{
	if (txn == db->txn)
		return;
	if (txn == db->rtxn) {
		mdb_txn_reset(txn); /* releases the snapshot: a long-held one pins old pages */
		db->ractive = false;
	} else {
		mdb_txn_abort(txn);
	}
}

int mm_statedb_range(struct mm_statedb *db, enum mm_statedb_table t, const void *prefix, size_t plen,
                     int (*cb)(void *arg, const void *k, size_t kl, const void *v, size_t vl),
                     void *arg)
{
	if (t >= MM_DB_TABLES || plen == 0 || plen > MM_STATEDB_KEY_MAX)
		return -EINVAL;
	MDB_txn *txn;
	MDB_cursor *cur;
	int r = read_begin(db, &txn);
	if (r < 0)
		return r;
	int rc = mdb_cursor_open(txn, db->dbi[t], &cur);
	if (rc) {
		read_end(db, txn);
		return lmdb_err(rc);
	}
	MDB_val k = {plen, (void *)prefix}, v;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)
			break;
		r = cb(arg, k.mv_data, k.mv_size, v.mv_data, v.mv_size);
		if (r)
			break;
	}
	if (!r && rc != 0 && rc != MDB_NOTFOUND)
		r = lmdb_err(rc);
	mdb_cursor_close(cur);
	read_end(db, txn);
	return r;
}

int mm_statedb_foreach(struct mm_statedb *db, enum mm_statedb_table t,
                       int (*cb)(void *arg, const void *k, size_t kl, const void *v, size_t vl),
                       void *arg)
{
	if (t >= MM_DB_TABLES)
		return -EINVAL;
	MDB_txn *txn;
	MDB_cursor *cur;
	if (env_ready(db) < 0)
		return -EIO;
	int rc = mdb_txn_begin(db->env, NULL, MDB_RDONLY, &txn);
	if (rc)
		return lmdb_err(rc);
	rc = mdb_cursor_open(txn, db->dbi[t], &cur);
	if (rc) {
		mdb_txn_abort(txn);
		return lmdb_err(rc);
	}
	MDB_val k, v;
	int r = 0;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		r = cb(arg, k.mv_data, k.mv_size, v.mv_data, v.mv_size);
		if (r)
			break;
	}
	if (!r && rc != MDB_NOTFOUND)
		r = lmdb_err(rc);
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	return r;
}

int mm_statedb_get(struct mm_statedb *db, enum mm_statedb_table t, const void *k, size_t kl,
                   void *buf, size_t buflen)
{
	if (t >= MM_DB_TABLES || kl == 0 || kl > MM_STATEDB_KEY_MAX)
		return -EINVAL;
	MDB_txn *txn;
	int r0 = read_begin(db, &txn);
	if (r0 < 0)
		return r0;
	MDB_val key = {kl, (void *)k}, val;
	int rc = mdb_get(txn, db->dbi[t], &key, &val);
	int r;
	if (rc == 0) {
		memcpy(buf, val.mv_data, val.mv_size < buflen ? val.mv_size : buflen);
		r = val.mv_size > INT32_MAX ? -EFBIG : (int)val.mv_size;
	} else {
		r = lmdb_err(rc);
	}
	read_end(db, txn);
	return r;
}

int mm_statedb_begin(struct mm_statedb *db)
{
	if (db->txn)
		return -EBUSY;
	if (env_ready(db) < 0)
		return -EIO;
	db->batch_ops = 0;
	return lmdb_err(mdb_txn_begin(db->env, NULL, 0, &db->txn));
}

int mm_statedb_put(struct mm_statedb *db, enum mm_statedb_table t, const void *k, size_t kl,
                   const void *v, size_t vl)
{
	if (!db->txn || t >= MM_DB_TABLES || kl == 0 || kl > MM_STATEDB_KEY_MAX)
		return -EINVAL;
	MDB_val key = {kl, (void *)k}, val = {vl, (void *)v};
	db->batch_ops++;
	return lmdb_err(mdb_put(db->txn, db->dbi[t], &key, &val, 0));
}

int mm_statedb_del(struct mm_statedb *db, enum mm_statedb_table t, const void *k, size_t kl)
{
	if (!db->txn || t >= MM_DB_TABLES || kl == 0 || kl > MM_STATEDB_KEY_MAX)
		return -EINVAL;
	MDB_val key = {kl, (void *)k};
	db->batch_ops++;
	int rc = mdb_del(db->txn, db->dbi[t], &key, NULL);
	return rc == MDB_NOTFOUND ? 0 : lmdb_err(rc);
}

int mm_statedb_commit(struct mm_statedb *db)
{
	if (!db->txn)
		return -EINVAL;
	int rc = mdb_txn_commit(db->txn); /* frees the txn even on failure */
	db->txn = NULL;
	db->commits += rc == 0;
	if (db->batch_ops >= REOPEN_OPS)
		env_reopen(db); /* no read is in progress: they copy out or call back */
	db->batch_ops = 0;
	/* LMDB reports a write cut short as EIO, and that is how a full disk shows: the
	 * pages written up to the last free block.  Say so when the filesystem is full. */
	struct statvfs fs;
	if (rc == EIO && statvfs(db->path, &fs) == 0 &&
	    (uint64_t)(geteuid() == 0 ? fs.f_bfree : fs.f_bavail) * fs.f_frsize < FULL_BYTES)
		return -ENOSPC; /* (root may write into the blocks reserved for it) */
	return lmdb_err(rc);
}

uint64_t mm_statedb_format(const struct mm_statedb *db)
{
	return db->format;
}

uint64_t mm_statedb_commits(const struct mm_statedb *db)
{
	return db->commits;
}

void mm_statedb_abort(struct mm_statedb *db)
{
	if (db->txn)
		mdb_txn_abort(db->txn);
	db->txn = NULL;
}
