/*
 * store.c — Maildir <-> CRDT glue (see store.h for the contract).
 *
 * In memory: users and folders, indexed by small chained hash maps with byte-string
 * keys ("user\0folder", "user\0<16-byte key>", ...), and the message files in use:
 * the file index itself is in LMDB ("the file index in the database" below), and
 * the entries read from it or changed since the last commit sit in open-addressing
 * tables of file entries that do not store their keys (struct fxmap).  The file index
 * and folder index mirror what was last seen on disk; comparing a fresh readdir with
 * them yields the local changes.  Dirty sets say what the next commit
 * writes to LMDB.  Remote effects change files at once (rename/unlink/mkdir) but
 * defer what needs the record durable first (body copies) or needs to read the
 * user's state (folder visibility, subscriptions) to commit time, because effect
 * callbacks run inside a merge and must not look at the user being changed.
 */
#include "node/store.h"
#include "node/maildir.h"
#include "node/mailloc.h"
#include "node/statedb.h"
#include "crdt/uid.h"

#include <dirent.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PATHBUF 4096
#define KBUF 1024 /* composite map keys: user(255) + folder(255) + base(255) + seps */
/* A scan commits after so many new files (scan_files): the dirty maps and LMDB's
 * write transaction stay small.  Each new file adds three entries at random places
 * ('K', 'B', its record), so a commit dirties pages all over the database; at a
 * million files, chunks of 4,096 peaked at 1.3 GB and took 90 s, chunks of 16,384 at
 * 1.9 GB and 128 s (statedb.c reopens LMDB after each, to free its page buffers). */
#ifndef SCAN_COMMIT_FILES
#define SCAN_COMMIT_FILES 4096
#endif

/* ---- a small hash map with byte-string keys ------------------------------------- */

struct hent {
	struct hent *next;
	uint64_t h;
	void *val;
	size_t kl;
	unsigned char k[];
};

struct hmap {
	struct hent **b;
	size_t nb, n;
};

static uint64_t hm_hash(const void *k, size_t kl)
{
	const unsigned char *p = k;
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < kl; i++)
		h = (h ^ p[i]) * 1099511628211ULL;
	return h ^ (h >> 29);
}

static void *hm_get(const struct hmap *m, const void *k, size_t kl)
{
	if (!m->nb)
		return NULL;
	uint64_t h = hm_hash(k, kl);
	for (struct hent *e = m->b[h & (m->nb - 1)]; e; e = e->next)
		if (e->h == h && e->kl == kl && memcmp(e->k, k, kl) == 0)
			return e->val;
	return NULL;
}

static int hm_put(struct hmap *m, const void *k, size_t kl, void *val)
{
	if (m->n + 1 > m->nb) {
		size_t nb = m->nb ? m->nb * 2 : 64;
		struct hent **b = calloc(nb, sizeof(*b));
		if (!b)
			return -ENOMEM;
		for (size_t i = 0; i < m->nb; i++)
			for (struct hent *e = m->b[i], *nx; e; e = nx) {
				nx = e->next;
				e->next = b[e->h & (nb - 1)];
				b[e->h & (nb - 1)] = e;
			}
		free(m->b);
		m->b = b;
		m->nb = nb;
	}
	uint64_t h = hm_hash(k, kl);
	for (struct hent *e = m->b[h & (m->nb - 1)]; e; e = e->next)
		if (e->h == h && e->kl == kl && memcmp(e->k, k, kl) == 0) {
			e->val = val;
			return 0;
		}
	struct hent *e = malloc(sizeof(*e) + kl);
	if (!e)
		return -ENOMEM;
	e->h = h;
	e->kl = kl;
	e->val = val;
	memcpy(e->k, k, kl);
	e->next = m->b[h & (m->nb - 1)];
	m->b[h & (m->nb - 1)] = e;
	m->n++;
	return 0;
}

static void *hm_del(struct hmap *m, const void *k, size_t kl)
{
	if (!m->nb)
		return NULL;
	uint64_t h = hm_hash(k, kl);
	for (struct hent **pp = &m->b[h & (m->nb - 1)]; *pp; pp = &(*pp)->next) {
		struct hent *e = *pp;
		if (e->h == h && e->kl == kl && memcmp(e->k, k, kl) == 0) {
			void *v = e->val;
			*pp = e->next;
			free(e);
			m->n--;
			return v;
		}
	}
	return NULL;
}

static void hm_clear(struct hmap *m)
{
	for (size_t i = 0; i < m->nb; i++)
		for (struct hent *e = m->b[i], *nx; e; e = nx) {
			nx = e->next;
			free(e);
		}
	free(m->b);
	memset(m, 0, sizeof(*m));
}

/* Snapshot of a map's keys (so callers may change the map while walking it). */
struct keylist {
	size_t n;
	struct hent **v; /* copies: next unused, val kept */
};

static int hm_keys(const struct hmap *m, struct keylist *kl_r)
{
	kl_r->n = 0;
	kl_r->v = calloc(m->n ? m->n : 1, sizeof(struct hent *));
	if (!kl_r->v)
		return -ENOMEM;
	for (size_t i = 0; i < m->nb; i++)
		for (struct hent *e = m->b[i]; e; e = e->next) {
			struct hent *c = malloc(sizeof(*c) + e->kl);
			if (!c)
				return -ENOMEM; /* caller frees what was copied */
			memcpy(c, e, sizeof(*c) + e->kl);
			kl_r->v[kl_r->n++] = c;
		}
	return 0;
}

static void keylist_free(struct keylist *kl)
{
	for (size_t i = 0; i < kl->n; i++)
		free(kl->v[i]);
	free(kl->v);
	kl->v = NULL;
	kl->n = 0;
}

/* ---- model ----------------------------------------------------------------------- */

struct user;
struct folder;

/* One message file on disk, in one allocation of about 150 bytes with its base name
 * inline (a million files: each byte here is a megabyte).  The file's full name is not
 * stored: it is base + ":2," + the letters it carries (dletters) in ASCII order, the way
 * Dovecot and mm_md_name_format write it; the rare name written otherwise (letters
 * unsorted or repeated) is kept whole in the store's odd_names map (odd set).  The
 * file's size and mtime are not kept: nothing decides by them (the record has the
 * size).  Nor is the body id: it is the record's (fent_body), which by_body reads
 * when a probe's 16-bit tag matches, so a million files save 32 MB. */
struct fent {
	struct fent *fnext, *fprev; /* in its folder */
	struct fent *bnext;         /* same (user, body) chain */
	struct folder *fo;
	uint8_t key[MM_KEY_LEN];
	uint64_t letters;  /* as the index knows them (may lag dletters: see sync_file_flags) */
	uint64_t dletters; /* letters in the name on disk */
	uint32_t bh;       /* its hash in by_body (the key there is the record's body id,
	                    * costly to read back); by_base and by_key rebuild theirs */
	bool in_cur : 1;
	bool seen : 1;
	bool info : 1;     /* the name has ":2," (with or without letters) */
	bool odd : 1;      /* the name is in odd_names */
	bool in_body : 1;  /* linked in by_body (its record's body was known) */
	char base[];       /* the name up to its first ':', NUL-terminated */
};

struct folder {
	struct folder *unext; /* in its user */
	struct user *u;
	char *name;
	char dir[PATHBUF - 512];
	struct fent *files;
	bool files_all;  /* files is the whole folder (folder_files), not only entries in use */
	bool on_disk;    /* the directory existed when last looked at */
	uint64_t ensured_ms; /* when mm_store_body_begin last made sure it exists */
	bool subscribed; /* listed in the subscriptions file when last looked at */
	bool check;      /* re-check visibility at commit */
	bool remove_failed; /* deleted elsewhere, kept here (not empty): its scans retry */
	bool kw_retry;      /* a keyword could not get its letter: files re-synced at commit */
	uint64_t half_since; /* first scan that found cur/ or new/ missing under messages */
	size_t half_n;       /* how many files that scan saw */
	bool uid_check;  /* bring dovecot-uidlist in line with the CRDT's UIDs (uid_pass) */
	bool uid_busy;   /* its lock was busy in this pass */
	uint64_t uid_sig; /* dovecot-uidlist's (inode, size, mtime) when last synced */
	bool uid_settled; /* its last uid_sync_folder found every message listed under its
	                   * UID, no need above it: an authority would have done the same */
	uint32_t uid_next; /* N of dovecot-uidlist when last read (floor for new UIDs) */
	struct mm_uid_hold uid_hold; /* re-files waiting for lower moves (crdt/uid.h; memory) */
	/* what the database holds of the three above (folder_uid_dirty): a start skips
	 * reading a uidlist whose signature is still the one of a completed pass */
	uint64_t db_uid_sig; /* uid_sig when no check was pending, else 0 */
	uint32_t db_uid_next;
	bool db_uid_settled;
	uint64_t dir_sig; /* new/ and cur/ (inode, mtime) when the index last matched them, 0 = unknown */
	bool sig_unsure;  /* the last scan left files to a placement job: the index does not match yet */
	uint64_t root_id; /* INBOX: the user's Maildir's dir_identity() when last scanned (0 = unknown) */
	struct mm_md_keywords kw;
	uint32_t miss_n;  /* messages of this folder whose body is missing here */
	/* its tmp/ was looked at (or is queued to be, on tmp_queue) for bodies a previous
	 * run left there (recover_folder_tmp): once per run, when it first misses a body */
	bool tmp_looked;
	struct folder *tmp_next; /* on s->tmp_queue */
	uint32_t batch_n; /* place_list's scratch: bodies of this folder in the batch */
	bool batch_next;  /* ... and one of them carries the folder's NEXTUID */
	uint64_t deferred_since; /* first scan that left it for Dovecot to number (0 = none) */
	uint64_t lockwait_since; /* first scan that left a file to Dovecot's uidlist lock (0 = none) */
	uint64_t passwait_since; /* first uid_sync_folder left to that lock (0 = none) */
	bool job_locked; /* its uidlist lock is a placement job's (place_prepare to place_finish):
	                  * the pool thread writes the list under it, so the loop's scans and
	                  * passes must find it busy, not take it again (held locks are the
	                  * process's, re-entrant) */
	struct mm_body_writer **held; /* imap_uids: bodies waiting for lower UIDs (hold_body) */
	size_t n_held, cap_held;
	/* imap_uids: base names of files that left the folder here (expunged: unlinked by
	 * the store, or found gone by a scan), whose dovecot-uidlist entries the next UID
	 * pass drops (uid_drop_gone) */
	char **gone;
	size_t n_gone, cap_gone;
	size_t gone_trigger; /* n_gone that asks for a pass of its own (folder_note_gone) */
};

struct user {
	struct user *next;
	char *name;
	char path[PATHBUF - 1024];
	struct folder *folders;
	struct mm_md_owner owner;
	bool owner_known;
	bool subs_dirty; /* rewrite the subscriptions file at commit */
	bool subs_crdt;  /* ... from the CRDT alone (just reconciled: the file is not current) */
	bool gone_logged;
	bool absent_logged; /* user_absent said so since this process started */
	/* Its Maildir was not there at the last look although this node had made or
	 * found it (user_known): the disk unmounted, or the directory removed.  Nothing
	 * of the user is scanned, written, renamed or removed until it is back
	 * (user_present), and then what the index lists and the disk lacks is fetched
	 * again, never expunged. */
	bool absent;
	/* INBOX is no longer visible (the user was removed from the cluster): the
	 * commit removes the whole Maildir once every folder is gone (users_retire) */
	bool retire;
	uint64_t walk_gen; /* the last full scan's walk that found it */
	/* Maildir++ quota: what this store's own placements and removals changed, not yet
	 * appended to the user's maildirsize (quota_flush) */
	int64_t quota_bytes, quota_count;
	bool quota_queued;
	bool quota_warned; /* its maildirsize could not be appended to (logged once) */
};

struct pending { /* a remote message to give a body from a local copy at commit */
	struct pending *next;
	char *user;
	uint8_t key[MM_KEY_LEN];
	unsigned tries; /* commits that found its source file moving (copy_local) */
};

/* The file index (by_base, by_key, by_body): open-addressing tables of fent pointers
 * with the same composite keys as the hash maps above, but an entry's key is not
 * stored: it is compared piece by piece with the fent (user, folder, base name /
 * record key / the record's body id) when the entry's tag (below) matches.  Three
 * such entries cost about 34 bytes a file, where three chained nodes with copied keys
 * cost about 250 and a malloc each.  Linear probing, deletion by backward shift (no
 * tombstones), at most 70 % full; the hash an entry was placed by is rebuilt from
 * the fent when a resize or a shift needs it (by_body keeps it: see fent.bh).
 *
 * Each entry carries 16 bits of its hash above the pointer's 48 (user-space addresses
 * fit in 48 bits on x86-64 and arm64), so a probe skips the other entries of its run
 * without reading their fents: at a million files every read of an fent is a cache
 * miss, and they were most of a restart's time.  A table that meets a pointer with any
 * of those bits set drops the tags for good (untagged) and compares every entry. */
enum fx_kind { FX_BASE, FX_KEY, FX_BODY };

#define FX_TAG_SHIFT 48
#define FX_PTR_MASK ((UINT64_C(1) << FX_TAG_SHIFT) - 1)

struct fxmap {
	struct mm_state *state; /* by_body: where an entry's body id is read (fent_body) */
	uint64_t *t;   /* 0 = empty, else pointer | tag << FX_TAG_SHIFT */
	size_t cap, n; /* cap: 0 or >= 64 (below 2^32) */
	enum fx_kind kind;
	bool untagged;
};

/* A value of the daemon's own waiting for the next commit (mm_store_meta_set). */
struct meta_kv {
	char key[MM_STORE_META_KEY_MAX + 3]; /* "d:" + key */
	uint64_t v;
};

struct namelist { /* a list of names (folders), small enough to search in turn */
	char **v;
	size_t n, cap;
};

struct mm_store {
	bool imap_uids;              /* cfg.imap_uids */
	struct user **quota_q;       /* users with a quota change to append (quota_note) */
	size_t n_quota_q, cap_quota_q;
	bool format_saved;           /* meta "format" = MM_STATEDB_FORMAT is in state.mdb */
	struct meta_kv *meta;        /* staged by mm_store_meta_set */
	size_t n_meta, cap_meta;
	bool uid_authority;          /* mm_store_set_uid_authority */
	bool catching_up;            /* mm_store_set_catching_up: no needs raised */
	bool index_in_folder;        /* mail_location has no INDEX=: Dovecot's index of a
	                              * folder, once it has one, is in the folder */
	struct mm_statedb *db;
	struct mm_mailloc *loc;
	struct mm_state *state;
	struct mm_clock *clock;
	void (*log)(void *, int, const char *, ...);
	void *log_arg;
	struct user *users;
	struct hmap users_by_name;  /* name -> user */
	struct hmap folders;        /* user\0folder -> folder */
	struct fxmap by_base;       /* user\0folder\0base -> fent */
	struct fxmap by_key;        /* user\0key -> fent */
	struct fxmap by_body;       /* user\0body -> fent chain */
	struct hmap odd_names;      /* fent pointer -> its file name, when not canonical */
	struct hmap missing;        /* user\0key -> struct miss */
	struct hmap missing_body;   /* user\0body -> struct miss chain */
	struct hmap dirty_recs;     /* user\0key */
	struct hmap dirty_files;    /* user\0folder\0base */
	struct hmap dirty_folders;  /* user\0folder */
	struct hmap logged;         /* messages already logged */
	struct hmap staged_keys;    /* user\0key -> staged body writer */
	struct hmap placed;         /* paths of files place_list put into new/ or cur/ whose
	                             * watch event has not come yet (mm_store_own_event) */
	struct mm_body_writer *staged; /* bodies verified in tmp/, not yet placed (FIFO) */
	struct mm_body_writer **staged_tail;
	size_t n_staged;
	uint64_t staged_since_ms; /* wall clock when the oldest staged body was staged */
	bool gather;              /* mm_store_gather: staged bodies wait for more */
	size_t n_held;               /* bodies held back in folders' held arrays */
	uint64_t progress_ms;        /* when a body last arrived (holding waits while they do) */
	uint64_t uid_hold_due;       /* earliest end of a folder's wait for lower UID moves
	                              * (wall ms, 0 = none; may be early: see uid_hold_check) */
	struct mm_delta *commit_out; /* UID changes of the last commit (mm_store_commit_delta) */
	bool deferred;               /* a scan left a new folder for later (mm_store_take_deferred) */
	bool lock_waits;             /* a scan left files to Dovecot's uidlist lock (mm_store_take_lock_waits) */
	uint64_t new_folder_wait_ms; /* mm_store_set_new_folder_wait */
	struct pending *pending;
	/* Files of messages expunged by merges since the last commit, kept aside (each
	 * user's tmp/) rather than unlinked, by (user, body id): a folder renamed
	 * elsewhere arrives as its messages expunged and the same bytes filed under the
	 * new name, and the commit's local copies read them here instead of every peer
	 * sending the folder again.  Removed at the end of each commit. */
	struct hmap spares;
	struct spare *spare_list;
	uint64_t spare_seq;
	uint64_t hashed;
	uint64_t uidlists_read;      /* mm_store_uidlists_read */
	size_t unsaved_new;          /* files indexed by scans since the last commit_batch */
	size_t scan_commit_files;    /* mm_store_set_scan_commit */
	uint64_t now_ms;
	struct mm_delta *out;
	int changes;
	bool in_commit;
	bool placing;                /* a placement job is out (mm_store_place_begin) */
	struct mm_store_place *job;  /* that job (mm_store_place_begin to _end) */
	uint64_t job_seq;            /* jobs begun: the current one's number */
	/* Letters of files being placed, written by commits made while their job was
	 * out (see placing_marks_put): (user, key) -> the job's number, until a commit
	 * after the job deletes them; and, read at open, those a crash left:
	 * (user, key) -> malloc'd uint64_t letters, until the rescan takes them. */
	struct hmap pl_marks, pl_old;
	bool loading;                /* mm_store_open is reading the database */
	struct folder *tmp_queue;    /* folders whose tmp/ recover_tmp_queued looks at next */
	struct timespec opened;      /* CLOCK_REALTIME_COARSE at mm_store_open: a tmp/ file
	                              * changed since is this run's (recover_folder_tmp) */
	bool materializing;          /* fidx_take: an entry comes from the database */
	size_t file_cache;           /* mm_store_set_file_cache */
	bool trust_dirs;             /* first scan after open: skip folders whose dir_sig held */
	uint64_t walk_gen;           /* full scans run (struct user.walk_gen) */
	bool trim_due;               /* big scratch was freed: give the pages back (trim_heap) */
	uint64_t max_skew_ms;
	struct namelist quota_ignore; /* mm_store_set_quota_ignore */
	bool removing; /* mm_store_user_remove runs: expunged files need no spare */
	/* (user, record key) of files whose message was expunged and whose unlink failed:
	 * kept indexed (found again, a file would be new mail) and retried by the scans;
	 * rebuilt at open from index entries whose record is a tombstone */
	struct hmap dead;
	bool wants_commit; /* mm_store_wants_commit */
};

struct spare {
	struct spare *next;
	char path[];
};

struct mm_body_writer {
	struct mm_store *s;
	struct mm_body_writer *snext; /* in the store's staged list */
	char *user;
	uint8_t key[MM_KEY_LEN];
	struct folder *fo;
	char base[160];
	int fd;
	int err;
	bool tmp_gone; /* tmp/<base> was linked into place or removed */
	bool held;     /* in its folder's held array */
	bool synced;   /* sealed and durable (staged bodies are sealed, closed, not synced) */
	bool placing;  /* in a placement job, place_prepare to place_finish (store thread only) */
	/* deferred writers (begun by id with MM_STORE_BODY_DEFER): the body in memory until
	 * written out */
	uint8_t *buf;
	uint64_t cap;
	bool prepared; /* verified by mm_store_body_prepare; what follows is w's own */
	char *dir;     /* prepared: the folder's directory, owner and the file's mtime */
	struct mm_md_owner owner;
	int64_t mtime;
	uint32_t uid;  /* the record's UID when placing (imap_uids) */
	uint64_t first_wait_ms; /* held since then for its first UID (FIRST_UID_WAIT_MS), 0 = not */
	dev_t dev;     /* filesystem of the file (place_list: which syncfs covers it) */
	uint64_t n;
	bool verified; /* MM_STORE_BODY_VERIFIED: the caller checks the bytes, h is unused */
	crypto_generichash_state h;
};

/* ---- helpers ------------------------------------------------------------------------ */

/* Reading a big folder or dovecot-uidlist takes tens of megabytes for a moment (a
 * million names); freed, they stay in malloc's free lists and in the daemon's RSS for
 * good.  Such reads call note_scratch; the commit after them hands the free pages back
 * to the kernel (malloc_trim walks the free chunks: not worth it after small work). */
static void note_scratch(struct mm_store *s, size_t entries)
{
	if (entries >= 4096)
		s->trim_due = true;
}

static void trim_heap(struct mm_store *s)
{
	if (!s->trim_due)
		return;
	s->trim_due = false;
#ifdef __GLIBC__
	malloc_trim(0);
#endif
	/* and the database pages a big commit or read touched: they stay in the page
	 * cache, not in this process's resident set (no read's data is held here) */
	mm_statedb_release_pages(s->db);
}

static void logmsg(struct mm_store *s, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void logmsg(struct mm_store *s, int level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	size_t ml = strlen(msg);
	if (hm_get(&s->logged, msg, ml))
		return;
	if (s->logged.n < 100000)
		hm_put(&s->logged, msg, ml, (void *)1);
	if (s->log)
		s->log(s->log_arg, level, "%s", msg);
}

/* ---- Maildir++ quota ----------------------------------------------------------------- */

/* Dovecot's quota backend "maildir" (and Courier, maildrop, Exim) keeps a user's usage
 * in <Maildir>/maildirsize: a limits line, then "<bytes> <count>" lines that every
 * writer appends for the mail it adds (positive) or removes (negative), which readers
 * sum.  Dovecot does not notice files others add or remove until it recalculates, so
 * mail that this store places or removes is appended here, as a delivery agent does:
 * otherwise a replica would count only what was delivered to it.  Only an existing
 * regular file is appended to (no quota, no file: nothing to do); its limits line is
 * never touched.  A sum that goes over quota is not trusted by Dovecot while the file
 * has more than one such line: it recalculates then (quota-maildir.c), so a line too
 * many only costs a recount. */
static bool namelist_has(const struct namelist *l, const char *name);

/* Notes a file placed (count 1) or removed (-1) in folder fo for the user's
 * maildirsize, unless Dovecot's quota does not count that folder (quota_ignore). */
static void quota_note(struct mm_store *s, struct folder *fo, int64_t bytes, int64_t count)
{
	struct user *u = fo ? fo->u : NULL;
	if (!u || namelist_has(&s->quota_ignore, fo->name))
		return;
	if (!u->quota_queued) {
		if (s->n_quota_q == s->cap_quota_q) {
			size_t nc = s->cap_quota_q ? 2 * s->cap_quota_q : 16;
			struct user **nq = realloc(s->quota_q, nc * sizeof(*nq));
			if (!nq)
				return; /* (the usage is recounted by Dovecot in time) */
			s->quota_q = nq;
			s->cap_quota_q = nc;
		}
		s->quota_q[s->n_quota_q++] = u;
		u->quota_queued = true;
	}
	u->quota_bytes += bytes;
	u->quota_count += count;
}

/* A message file's size as Dovecot's quota counts it: its name's S= if given, else the
 * file's own; -1 if neither can be had. */
static int64_t quota_file_size(const char *path)
{
	const char *base = strrchr(path, '/');
	struct mm_md_name n;
	if (mm_md_name_parse(base ? base + 1 : path, &n) == 0 && n.has_size && n.size < INT64_MAX)
		return (int64_t)n.size;
	struct stat st;
	return lstat(path, &st) == 0 && S_ISREG(st.st_mode) ? (int64_t)st.st_size : -1;
}

/* Dovecot reads at most this much of maildirsize and recounts a bigger one. */
#define MAILDIRSIZE_RECOUNT 5120

/* Appends each queued user's change to its maildirsize, in one write a user. */
static void quota_flush(struct mm_store *s)
{
	for (size_t i = 0; i < s->n_quota_q; i++) {
		struct user *u = s->quota_q[i];
		int64_t bytes = u->quota_bytes, count = u->quota_count;
		u->quota_bytes = u->quota_count = 0;
		u->quota_queued = false;
		if (!bytes && !count)
			continue;
		char p[PATHBUF], line[64];
		if (snprintf(p, sizeof p, "%s/maildirsize", u->path) >= (int)sizeof p)
			continue;
		int fd = open(p, O_WRONLY | O_APPEND | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
		const char *why = NULL;
		if (fd < 0) {
			if (errno != ENOENT)
				why = strerror(errno);
		} else {
			struct stat st;
			int n = snprintf(line, sizeof line, "%lld %lld\n", (long long)bytes, (long long)count);
			errno = 0;
			if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
				why = "not a regular file";
			else if (st.st_size >= MAILDIRSIZE_RECOUNT)
				; /* Dovecot recounts a file this big anyway: no need to grow it */
			else if (write(fd, line, (size_t)n) != n)
				why = errno ? strerror(errno) : "short write";
			close(fd);
		}
		if (why && !u->quota_warned) {
			u->quota_warned = true;
			logmsg(s, MM_STORE_LOG_WARNING, "cannot update quota file %s: %s (Dovecot's quota may count "
			       "less than this node holds until it recounts; said once a user)", p, why);
		}
	}
	s->n_quota_q = 0;
}

/* What a failed read of a Maildir file tells the admin: open_message's and
 * mm_md_*_read's refusals in words, other errors as strerror. */
static const char *read_err(int r)
{
	if (r == -EINVAL)
		return "not a regular file (a FIFO, device or directory): skipped";
	if (r == -ELOOP)
		return "a symbolic link, not followed: skipped";
	return strerror(-r);
}

static size_t k_uf(char *buf, const char *user, const char *folder)
{
	size_t ul = strlen(user), fl = strlen(folder);
	memcpy(buf, user, ul + 1);
	memcpy(buf + ul + 1, folder, fl);
	return ul + 1 + fl;
}

static size_t k_ufb(char *buf, const char *user, const char *folder, const char *base)
{
	size_t n = k_uf(buf, user, folder);
	size_t bl = strlen(base);
	buf[n] = 0;
	memcpy(buf + n + 1, base, bl);
	return n + 1 + bl;
}

static size_t k_ub(char *buf, const char *user, const uint8_t *bytes, size_t bl)
{
	size_t ul = strlen(user);
	memcpy(buf, user, ul + 1);
	memcpy(buf + ul + 1, bytes, bl);
	return ul + 1 + bl;
}

static bool name_ok(const char *n)
{
	return n && n[0] && strlen(n) <= MM_NAME_MAX;
}

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static mm_hlc tick(struct mm_store *s)
{
	return mm_clock_tick(s->clock, s->now_ms);
}

static void mark_rec(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN])
{
	char k[KBUF];
	size_t kl = k_ub(k, user, key, MM_KEY_LEN);
	if (hm_put(&s->dirty_recs, k, kl, (void *)1) < 0)
		logmsg(s, MM_STORE_LOG_ERR, "out of memory marking a record of %s", user);
}

static void mark_file(struct mm_store *s, struct folder *fo, const char *base)
{
	if (s->loading || s->materializing)
		return; /* entries read from the database are written there already */
	char k[KBUF];
	size_t kl = k_ufb(k, fo->u->name, fo->name, base);
	hm_put(&s->dirty_files, k, kl, (void *)1);
}

static void mark_folder(struct mm_store *s, struct folder *fo)
{
	char k[KBUF];
	size_t kl = k_uf(k, fo->u->name, fo->name);
	hm_put(&s->dirty_folders, k, kl, (void *)1);
}

/* A message whose body this node lacks; also chained by (user, body) so a body that
 * arrives once serves every instance that needs it. */
struct miss {
	struct miss *bnext;
	struct folder *fo; /* counted in its miss_n (NULL if the folder is unknown) */
	uint8_t key[MM_KEY_LEN];
	uint8_t body[MM_ID_LEN];
	char *listed; /* the name dovecot-uidlist lists it under, or NULL: see place_finish */
};

static struct user *user_get(struct mm_store *s, const char *name, bool create);
static struct folder *folder_get(struct mm_store *s, struct user *u, const char *name, bool create);

/* Marks a message's body missing here (on: body and folder given) or not. */
static void set_missing(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN],
                        const uint8_t *body, const char *folder, bool on)
{
	char k[KBUF], kb[KBUF];
	size_t kl = k_ub(k, user, key, MM_KEY_LEN);
	struct miss *m = hm_get(&s->missing, k, kl);
	if (on) {
		if (m || !body)
			return;
		m = calloc(1, sizeof(*m));
		if (!m)
			return;
		memcpy(m->key, key, MM_KEY_LEN);
		memcpy(m->body, body, MM_ID_LEN);
		struct user *u = folder ? user_get(s, user, true) : NULL;
		m->fo = u ? folder_get(s, u, folder, true) : NULL;
		if (m->fo) {
			m->fo->miss_n++;
			if (!m->fo->tmp_looked) {
				/* a body a previous run left in its tmp/ may be this one: the start
				 * looked only in folders missing bodies then, and a body staged
				 * before its record was ever committed (a kill before the flush)
				 * has a record the restarted node learns only now */
				m->fo->tmp_looked = true;
				m->fo->tmp_next = s->tmp_queue;
				s->tmp_queue = m->fo;
			}
		}
		size_t bl = k_ub(kb, user, body, MM_ID_LEN);
		m->bnext = hm_get(&s->missing_body, kb, bl);
		if (hm_put(&s->missing, k, kl, m) < 0 || hm_put(&s->missing_body, kb, bl, m) < 0) {
			hm_del(&s->missing, k, kl);
			if (m->bnext)
				hm_put(&s->missing_body, kb, bl, m->bnext);
			free(m);
		}
		return;
	}
	if (!m)
		return;
	hm_del(&s->missing, k, kl);
	if (m->fo)
		m->fo->miss_n--;
	free(m->listed);
	size_t bl = k_ub(kb, user, m->body, MM_ID_LEN);
	struct miss *h = hm_get(&s->missing_body, kb, bl);
	if (h == m) {
		if (m->bnext)
			hm_put(&s->missing_body, kb, bl, m->bnext);
		else
			hm_del(&s->missing_body, kb, bl);
	} else {
		for (; h; h = h->bnext)
			if (h->bnext == m) {
				h->bnext = m->bnext;
				break;
			}
	}
	free(m);
}

/* ---- users and folders ------------------------------------------------------------- */

static struct user *user_get(struct mm_store *s, const char *name, bool create)
{
	struct user *u = hm_get(&s->users_by_name, name, strlen(name));
	if (u || !create)
		return u;
	if (!name_ok(name))
		return NULL;
	u = calloc(1, sizeof(*u));
	if (!u || !(u->name = strdup(name))) {
		free(u);
		return NULL;
	}
	if (mm_mailloc_expand(s->loc, name, u->path, sizeof u->path) < 0 ||
	    hm_put(&s->users_by_name, name, strlen(name), u) < 0) {
		logmsg(s, MM_STORE_LOG_WARNING, "user %s cannot be stored under the mail_location template", name);
		free(u->name);
		free(u);
		return NULL;
	}
	u->next = s->users;
	s->users = u;
	if (mm_md_owner_of(u->path, &u->owner) == 0)
		u->owner_known = true;
	return u;
}

static struct folder *folder_get(struct mm_store *s, struct user *u, const char *name, bool create)
{
	char k[KBUF];
	size_t kl = k_uf(k, u->name, name);
	struct folder *fo = hm_get(&s->folders, k, kl);
	if (fo || !create)
		return fo;
	if (!name_ok(name))
		return NULL;
	fo = calloc(1, sizeof(*fo));
	if (!fo || !(fo->name = strdup(name))) {
		free(fo);
		return NULL;
	}
	fo->u = u;
	if (mm_md_folder_path(fo->dir, sizeof fo->dir, u->path, name) < 0 ||
	    hm_put(&s->folders, k, kl, fo) < 0) {
		logmsg(s, MM_STORE_LOG_WARNING, "folder \"%s\" of %s cannot be a Maildir++ folder", name, u->name);
		free(fo->name);
		free(fo);
		return NULL;
	}
	fo->unext = u->folders;
	u->folders = fo;
	return fo;
}

/* Ownership for a user's new files: its Maildir's, else a sibling's (same domain
 * first), else the nearest existing parent directory's. */
static void user_owner(struct mm_store *s, struct user *u)
{
	if (u->owner_known)
		return;
	if (mm_md_owner_of(u->path, &u->owner) == 0) {
		u->owner_known = true;
		return;
	}
	const char *slash = strchr(u->name, '/');
	size_t dl = slash ? (size_t)(slash - u->name) : 0;
	struct user *best = NULL;
	for (struct user *o = s->users; o; o = o->next) {
		if (o == u || !o->owner_known)
			continue;
		if (!best || (dl && strncmp(o->name, u->name, dl + 1) == 0))
			best = o;
	}
	if (best) {
		u->owner = best->owner;
		return;
	}
	char p[PATHBUF];
	snprintf(p, sizeof p, "%s", u->path);
	for (;;) {
		char *sl = strrchr(p, '/');
		if (!sl || sl == p)
			break;
		*sl = 0;
		if (mm_md_owner_of(p, &u->owner) == 0) {
			u->owner.dir_mode = 0700;
			u->owner.file_mode = 0600;
			return;
		}
	}
	u->owner = (struct mm_md_owner){(uid_t)-1, (gid_t)-1, 0700, 0600};
}

/* Whether this node has had the user's Maildir: it made it, or a scan found it (a
 * folder of it on disk, a state kept in the database).  Such a Maildir that is not
 * there is absent, not new: see struct user.absent. */
/* Whether the user was removed from the cluster (mm_store_user_remove, here or
 * elsewhere): INBOX deleted by an explicit FOLDER record and holding no live message.
 * An INBOX merely without a record yet (a user new here, its messages arriving before
 * the folder's record) is not. */
static bool user_removed(const struct mm_user *mu)
{
	return mu && mm_user_removed(mu);
}

static void local_effect(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec);

/* INBOX's record says deleted (a removal) while mail comes for it: mail the removal
 * did not take.  Who may say the user goes on, with INBOX made again: a scan about to
 * record a delivery into it here (local = true: new mail for the user, whatever the
 * removal knew), or the node that made the removal (its stamp's node) for any live
 * message in INBOX, since its delete took every message it knew.  Any other node
 * cannot tell such mail from messages whose tombstones have not reached it yet.
 * INBOX keeps the UIDVALIDITY the deleted record carries (the one survivors show
 * already), so two nodes doing this at once agree.  0 or the number of changes,
 * negative errno. */
static int inbox_revive(struct mm_store *s, struct mm_user *mu, bool local, struct mm_delta *out)
{
	uint8_t key[MM_KEY_LEN];
	mm_key_folder("INBOX", key);
	const struct mm_rec *r = mm_user_get(mu, key);
	if (!r || r->type != MM_REC_FOLDER || r->folder.exists.value || !r->folder.exists.stamp.t)
		return 0; /* (exists never written: a record a subscription made, not a delete) */
	if (!local && (r->folder.exists.stamp.node != s->clock->node || !mm_user_folder_visible(mu, "INBOX")))
		return 0;
	uint32_t uv = r->folder.uidvalidity;
	logmsg(s, MM_STORE_LOG_INFO, "%s was removed from the cluster, but mail came for it %s: "
	       "it goes on, its INBOX made again", mm_user_name(mu), local ? "here" : "that the removal did not take");
	return mm_user_folder_renew(mu, "INBOX", tick(s), uv, local_effect, s, out);
}

static bool user_known(const struct user *u)
{
	for (struct folder *fo = u->folders; fo; fo = fo->unext)
		if (fo->on_disk)
			return true;
	return false;
}

/* Notes that a known user's Maildir is not there (logged once, until it is back). */
static void user_absent(struct mm_store *s, struct user *u)
{
	if (!u->absent) {
		/* kept in INBOX's folder entry: a restart while it is away must not take
		 * the Maildir, when back, for one that missed nothing (user_present) */
		u->absent = true;
		struct folder *inbox = folder_get(s, u, "INBOX", false);
		if (inbox)
			mark_folder(s, inbox);
		s->wants_commit = true;
	}
	if (u->absent_logged)
		return;
	u->absent_logged = true;
	struct mm_user *mu = mm_state_user(s->state, u->name, false);
	if (user_removed(mu)) {
		logmsg(s, MM_STORE_LOG_INFO, "Maildir %s of %s, a user removed from the cluster, is not here: "
		       "if it comes back (a disk mounted again), it is removed then", u->path, u->name);
		return;
	}
	logmsg(s, MM_STORE_LOG_WARNING,
	       "Maildir %s of %s is gone: nothing of %s is expunged, here or on the peers, and this "
	       "node writes nothing for it until the Maildir is back.  If its disk is unmounted, mount "
	       "it again.  To fetch this user's mail from the peers, make an empty Maildir there "
	       "(mkdir -p %s/cur %s/new %s/tmp, owned by the mail user) or let Dovecot make one (a "
	       "login or a delivery)", u->path, u->name, u->name, u->path, u->path, u->path);
}

/* Whether the user is known here and its Maildir is not there now: then it is
 * absent (user_absent) and nothing may be done for it. */
static bool user_gone(struct mm_store *s, struct user *u)
{
	if (!user_known(u) || mm_md_is_maildir(u->path))
		return false;
	user_absent(s, u);
	return true;
}

/* Identity of a directory: its inode number and birth time (statx), so a Maildir
 * removed and made again is told apart from the one the index describes, even when
 * the new directory reuses the inode number.  The inode alone where the filesystem
 * keeps no birth time; 0 when it cannot be read. */
static uint64_t dir_identity(const char *path)
{
	struct statx sx;
	if (statx(AT_FDCWD, path, 0, STATX_INO | STATX_BTIME, &sx) < 0 || !(sx.stx_mask & STATX_INO))
		return 0;
	uint64_t id = sx.stx_ino;
	if (sx.stx_mask & STATX_BTIME) {
		uint64_t b = (uint64_t)sx.stx_btime.tv_sec * 1000000000u + sx.stx_btime.tv_nsec;
		id ^= b * 0x9e3779b97f4a7c15ull;
	}
	return id ? id : 1;
}

/* Whether the user's Maildir is still the one the scan began with.  Asked after
 * reading what says mail is gone (a folder's directory missing, files not listed, no
 * subscriptions file) and before acting on it: a disk unmounted, or the Maildir moved
 * away, in the middle of a scan makes everything not read yet look deleted, and the
 * scan must then expunge nothing (it once deleted a user's Archive on every node).
 * Asked after the reading, so that what was read was read while the Maildir was
 * there.  A Maildir not there makes the user absent (user_gone). */
static bool user_still_here(struct mm_store *s, struct user *u)
{
	if (!mm_md_is_maildir(u->path)) {
		user_gone(s, u);
		return false;
	}
	struct folder *inbox = folder_get(s, u, "INBOX", false);
	uint64_t id = inbox && inbox->root_id ? dir_identity(u->path) : 0;
	return !id || id == inbox->root_id; /* (another directory: user_present, next scan) */
}

/* Makes sure the folder directory exists (and the user's Maildir). */
static bool uid_header(struct mm_md_uidlist *ul, const char *user, const struct mm_rec *frec);

/* Makes the folder's Maildir (and the user's) if missing.  frec (may be NULL): the
 * folder's FOLDER record; with imap_uids its dovecot-uidlist header (UIDVALIDITY) is
 * in place before Dovecot can see the new folder. */
static int folder_ensure(struct mm_store *s, struct folder *fo, const struct mm_rec *frec)
{
	struct user *u = fo->u;
	bool new_user = !mm_md_is_maildir(u->path);
	if (new_user && user_gone(s, u))
		return -ENOENT; /* not new: made again, it could fill a bare mount point, and
		                 * the scan of it would take every message for expunged */
	if (u->absent)
		return -ENOENT; /* back, but not scanned yet (user_present) */
	user_owner(s, u);
	int r;
	struct mm_md_uidlist ul = {0};
	bool with_ul = s->imap_uids && frec && frec->type == MM_REC_FOLDER && !strcmp(frec->folder.name, fo->name);
	if (with_ul) {
		ul.exists = true;
		ul.next_uid = 1;
		uid_header(&ul, u->name, frec);
	}
	if (new_user && (r = mm_md_folder_create_listed(u->path, "INBOX", &u->owner,
	                                                with_ul && !strcmp(fo->name, "INBOX") ? &ul : NULL)) < 0) {
		mm_md_uidlist_clear(&ul);
		logmsg(s, MM_STORE_LOG_ERR, "cannot create Maildir %s: %s", u->path, strerror(-r));
		return r;
	}
	if (new_user) {
		struct folder *inbox = folder_get(s, u, "INBOX", true);
		if (inbox) {
			inbox->on_disk = true;
			inbox->root_id = dir_identity(u->path); /* (user_present) */
			mark_folder(s, inbox);
		}
		logmsg(s, MM_STORE_LOG_INFO, "created Maildir %s for %s", u->path, u->name);
	}
	if (!fo->on_disk || !mm_md_is_maildir(fo->dir)) {
		r = mm_md_folder_create_listed(u->path, fo->name, &u->owner, with_ul ? &ul : NULL);
		if (r < 0) {
			mm_md_uidlist_clear(&ul);
			logmsg(s, MM_STORE_LOG_ERR, "cannot create folder %s: %s", fo->dir, strerror(-r));
			return r;
		}
		if (!fo->on_disk) {
			fo->on_disk = true;
			mark_folder(s, fo);
		}
	}
	mm_md_uidlist_clear(&ul);
	return 0;
}

/* A folder's directories are made at its FOLDER effect, normally; a stream of records
 * or bodies looks at them again at most once a second (a stat or two each would add
 * up), and body_begin whenever tmp/ turns out to be missing. */
#define ENSURE_EVERY_MS 1000

static int folder_ensure_recent(struct mm_store *s, struct folder *fo)
{
	uint64_t now = wall_ms();
	if (fo->on_disk && now - fo->ensured_ms < ENSURE_EVERY_MS)
		return 0;
	int r = folder_ensure(s, fo, NULL);
	if (r == 0)
		fo->ensured_ms = now;
	return r;
}

/* ---- the file index tables (struct fxmap) ---------------------------------------------- */

static uint32_t fx_hash(const void *k, size_t kl)
{
	return (uint32_t)hm_hash(k, kl); /* hm_hash folds the high bits into the low ones */
}

/* The body id of fe's message, read from the state: from the first message of fe's
 * body chain that is still live (fe's own record may have been expunged, its file not
 * yet removed).  False when none is. */
static bool fent_body(struct mm_state *st, const struct fent *fe, uint8_t body_r[MM_ID_LEN])
{
	struct mm_user *mu = mm_state_user(st, fe->fo->u->name, false);
	for (; mu && fe; fe = fe->bnext)
		if (mm_user_msg_body(mu, fe->key, body_r))
			return true;
	return false;
}

/* Whether k is fe's key for this table: compared piece by piece where the key is
 * laid out (user \0 folder \0 base, or user \0 bytes), not rebuilt (a load probes a
 * million times). */
static bool fx_match(const struct fxmap *m, const struct fent *fe, uint32_t h, const void *k, size_t kl)
{
	enum fx_kind kind = m->kind;
	if (kind == FX_BODY && fe->bh != h)
		return false;
	const char *p = k, *end = p + kl;
	const char *user = fe->fo->u->name;
	size_t ul = strlen(user);
	if (kl <= ul || memcmp(p, user, ul + 1) != 0)
		return false;
	p += ul + 1;
	if (kind == FX_KEY)
		return end - p == MM_KEY_LEN && memcmp(p, fe->key, MM_KEY_LEN) == 0;
	if (kind == FX_BODY) {
		uint8_t body[MM_ID_LEN];
		return end - p == MM_ID_LEN && fent_body(m->state, fe, body) && memcmp(p, body, MM_ID_LEN) == 0;
	}
	size_t fl = strlen(fe->fo->name), bl = strlen(fe->base);
	return (size_t)(end - p) == fl + 1 + bl && memcmp(p, fe->fo->name, fl + 1) == 0 &&
	       memcmp(p + fl + 1, fe->base, bl) == 0;
}

/* fe's hash in table m: kept for by_body, rebuilt from the entry for the others
 * (only a resize and a removal's backward shift ask). */
static uint32_t fent_hash(const struct fxmap *m, const struct fent *fe)
{
	if (m->kind == FX_BODY)
		return fe->bh;
	char k[KBUF];
	size_t kl = m->kind == FX_KEY ? k_ub(k, fe->fo->u->name, fe->key, MM_KEY_LEN)
	                              : k_ufb(k, fe->fo->u->name, fe->fo->name, fe->base);
	return fx_hash(k, kl);
}

/* An entry's home slot: the hash's high bits scaled to the capacity (any capacity,
 * so a table is sized to its load, not to the next power of two: at a million
 * files, 34 MB for the three tables instead of 50). */
static size_t fx_home(const struct fxmap *m, uint32_t h)
{
	return (size_t)(((uint64_t)h * m->cap) >> 32);
}

static size_t fx_next(const struct fxmap *m, size_t i)
{
	return i + 1 == m->cap ? 0 : i + 1;
}

/* The tag: the hash's low bits (the home slot comes from the high ones). */
static uint64_t fx_tag(const struct fxmap *m, uint32_t h)
{
	return m->untagged ? 0 : (uint64_t)(h & 0xffff) << FX_TAG_SHIFT;
}

static struct fent *fx_ptr(const struct fxmap *m, uint64_t v)
{
	return (struct fent *)(uintptr_t)(m->untagged ? v : v & FX_PTR_MASK);
}

/* Slot holding key k (hash h), or the empty slot where it would go. */
static size_t fx_slot(const struct fxmap *m, uint32_t h, const void *k, size_t kl)
{
	size_t i = fx_home(m, h);
	uint64_t tag = fx_tag(m, h);
	for (; m->t[i]; i = fx_next(m, i))
		if ((m->untagged || (m->t[i] & ~FX_PTR_MASK) == tag) && fx_match(m, fx_ptr(m, m->t[i]), h, k, kl))
			break;
	return i;
}

static struct fent *fx_get(const struct fxmap *m, const void *k, size_t kl)
{
	if (!m->cap)
		return NULL;
	uint64_t v = m->t[fx_slot(m, fx_hash(k, kl), k, kl)];
	return v ? fx_ptr(m, v) : NULL;
}

static int fx_resize(struct fxmap *m, size_t cap)
{
	uint64_t *t = calloc(cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	struct fxmap nm = *m;
	nm.t = t;
	nm.cap = cap;
	for (size_t i = 0; i < m->cap; i++) {
		if (!m->t[i])
			continue;
		size_t j = fx_home(&nm, fent_hash(m, fx_ptr(m, m->t[i])));
		while (t[j])
			j = fx_next(&nm, j);
		t[j] = m->t[i];
	}
	free(m->t);
	m->t = t;
	m->cap = cap;
	return 0;
}

/* k must be fe's own key for this table.  Replaces the entry of an equal key. */
static int fx_put(struct fxmap *m, const void *k, size_t kl, struct fent *fe)
{
	if ((m->n + 1) * 10 > m->cap * 7) {
		int r = fx_resize(m, m->cap ? m->cap + m->cap / 2 : 64);
		if (r < 0)
			return r;
	}
	uint64_t p = (uint64_t)(uintptr_t)fe;
	if (!m->untagged && (p & ~FX_PTR_MASK)) {
		/* an address above 48 bits: this table compares without tags from now on */
		for (size_t i = 0; i < m->cap; i++)
			m->t[i] &= FX_PTR_MASK;
		m->untagged = true;
	}
	uint32_t h = fx_hash(k, kl);
	if (m->kind == FX_BODY)
		fe->bh = h;
	size_t i = fx_slot(m, h, k, kl);
	if (!m->t[i])
		m->n++;
	m->t[i] = p | fx_tag(m, h);
	return 0;
}

/* Empties slot i, then moves up every later entry of the run whose home slot is not
 * cyclically in (i, j], so no lookup stops early at the hole (backward shift). */
static void fx_del_at(struct fxmap *m, size_t i)
{
	m->t[i] = 0;
	m->n--;
	for (size_t j = fx_next(m, i); m->t[j]; j = fx_next(m, j)) {
		size_t home = fx_home(m, fent_hash(m, fx_ptr(m, m->t[j])));
		bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (stays)
			continue;
		m->t[i] = m->t[j];
		m->t[j] = 0;
		i = j;
	}
}

static struct fent *fx_del(struct fxmap *m, const void *k, size_t kl)
{
	if (!m->cap)
		return NULL;
	size_t i = fx_slot(m, fx_hash(k, kl), k, kl);
	if (!m->t[i])
		return NULL;
	struct fent *v = fx_ptr(m, m->t[i]);
	fx_del_at(m, i);
	return v;
}

static void fx_clear(struct fxmap *m)
{
	free(m->t);
	m->t = NULL;
	m->cap = m->n = 0;
}

/* ---- file entries ------------------------------------------------------------------- */

/* Links fe into by_body under `body` (its record's body id). */
static void body_link(struct mm_store *s, struct fent *fe, const uint8_t body[MM_ID_LEN])
{
	char k[KBUF];
	size_t kl = k_ub(k, fe->fo->u->name, body, MM_ID_LEN);
	fe->bnext = fx_get(&s->by_body, k, kl);
	if (fx_put(&s->by_body, k, kl, fe) == 0)
		fe->in_body = true;
	else
		fe->bnext = NULL;
}

/* Takes fe out of by_body, found by pointer from its stored hash: its record (and so
 * its body id) may already be gone. */
static void body_unlink(struct mm_store *s, struct fent *fe)
{
	struct fxmap *m = &s->by_body;
	if (!fe->in_body || !m->cap)
		return;
	fe->in_body = false;
	uint64_t tag = fx_tag(m, fe->bh);
	for (size_t i = fx_home(m, fe->bh); m->t[i]; i = fx_next(m, i)) {
		if (!m->untagged && (m->t[i] & ~FX_PTR_MASK) != tag)
			continue; /* another body's chain: not read */
		struct fent *h = fx_ptr(m, m->t[i]);
		if (h == fe) {
			if (fe->bnext)
				m->t[i] = (uint64_t)(uintptr_t)fe->bnext | (m->untagged ? 0 : m->t[i] & ~FX_PTR_MASK);
			else
				fx_del_at(m, i);
			return;
		}
		if (h->bh != fe->bh)
			continue;
		for (; h->bnext; h = h->bnext)
			if (h->bnext == fe) {
				h->bnext = fe->bnext;
				return;
			}
	}
}

/* fe's file name (new/ or cur/ per fe->in_cur): in buf (MM_MD_NAME_MAX + 1 bytes)
 * or, for an odd name, in odd_names.  Valid until the name changes. */
static const char *fent_name(const struct mm_store *s, const struct fent *fe, char *buf)
{
	if (fe->odd) {
		const struct fent *p = fe;
		const char *n = hm_get(&s->odd_names, &p, sizeof p);
		if (n)
			return n;
	}
	/* cannot fail: the name had this base and these letters when it was set */
	if (mm_md_name_format(buf, MM_MD_NAME_MAX + 1, fe->base, strlen(fe->base), fe->dletters, fe->info) < 0)
		buf[0] = 0;
	return buf;
}

/* Records that fe's file is now called `name` (a message name with fe's base).  0,
 * -EINVAL for a name that does not parse, or -ENOMEM (the entry is unchanged). */
static int fent_set_name(struct mm_store *s, struct fent *fe, const char *name)
{
	struct mm_md_name n;
	if (mm_md_name_parse(name, &n) < 0)
		return -EINVAL;
	char buf[MM_MD_NAME_MAX + 1];
	bool odd = mm_md_name_format(buf, sizeof buf, n.base, n.base_len, n.letters, n.has_info) < 0 ||
	           strcmp(buf, name) != 0;
	const struct fent *p = fe;
	char *old = fe->odd ? hm_get(&s->odd_names, &p, sizeof p) : NULL;
	if (odd) {
		char *dup = strdup(name);
		if (!dup || hm_put(&s->odd_names, &p, sizeof p, dup) < 0) {
			free(dup);
			return -ENOMEM;
		}
	} else if (fe->odd) {
		hm_del(&s->odd_names, &p, sizeof p);
	}
	free(old);
	fe->odd = odd;
	fe->dletters = n.letters;
	fe->info = n.has_info;
	return 0;
}

static void fent_free(struct mm_store *s, struct fent *fe)
{
	if (fe->odd) {
		const struct fent *p = fe;
		free(hm_del(&s->odd_names, &p, sizeof p));
	}
	free(fe);
}

/* Indexes a file: `name` in new/ or cur/ of fo, whose base (up to ':') is `base`.
 * body: its record's body id, to link it in by_body; NULL when not known (a load
 * links entries later, in the missing list's pass). */
static struct fent *fent_add(struct mm_store *s, struct folder *fo, const char *base,
                             const char *name, bool in_cur, const uint8_t key[MM_KEY_LEN],
                             const uint8_t body[MM_ID_LEN], uint64_t letters)
{
	size_t bl = strlen(base);
	if (strncmp(name, base, bl) || (name[bl] && name[bl] != ':'))
		return NULL;
	struct fent *fe = calloc(1, offsetof(struct fent, base) + bl + 1);
	if (!fe)
		return NULL;
	memcpy(fe->base, base, bl + 1);
	if (fent_set_name(s, fe, name) < 0) {
		free(fe);
		return NULL;
	}
	fe->fo = fo;
	memcpy(fe->key, key, MM_KEY_LEN);
	fe->letters = letters;
	fe->in_cur = in_cur;
	fe->seen = true;
	char k[KBUF];
	size_t kl = k_ufb(k, fo->u->name, fo->name, base);
	if (fx_put(&s->by_base, k, kl, fe) < 0)
		goto fail;
	kl = k_ub(k, fo->u->name, key, MM_KEY_LEN);
	if (fx_put(&s->by_key, k, kl, fe) < 0) {
		kl = k_ufb(k, fo->u->name, fo->name, base);
		fx_del(&s->by_base, k, kl);
		goto fail;
	}
	if (body)
		body_link(s, fe, body);
	fe->fnext = fo->files;
	if (fo->files)
		fo->files->fprev = fe;
	fo->files = fe;
	mark_file(s, fo, base);
	return fe;
fail:
	fent_free(s, fe);
	return NULL;
}

/* Dovecot drops the uidlist entry of a file that is gone only at a full sync of the
 * folder, which it does when a client opens the folder on this node.  On a node where
 * none does (a standby) every expunged message would stay listed for ever, and every
 * UID pass reads the whole list.  So a file this store saw leave is noted, and the next
 * pass drops its entry.  Only files seen leaving: an entry whose file the index does
 * not know may name a delivery not scanned yet.  Past GONE_MAX names a folder's
 * entries stay for Dovecot to drop (memory stays bounded in a mass expunge).
 * A delivery into the folder runs a pass anyway; the expunges alone ask for one once
 * they are an eighth of the list (as Dovecot, which rewrites it when a quarter is
 * gone): one expunge in a folder of a million does not rewrite 60 MB. */
#define GONE_MAX 100000
#define GONE_LINE_BYTES 64 /* about one dovecot-uidlist line */

static void folder_gone_clear(struct folder *fo)
{
	for (size_t i = 0; i < fo->n_gone; i++)
		free(fo->gone[i]);
	free(fo->gone);
	fo->gone = NULL;
	fo->n_gone = fo->cap_gone = 0;
}

static void folder_note_gone(struct mm_store *s, struct folder *fo, const char *base)
{
	if (!s->imap_uids || fo->n_gone >= GONE_MAX)
		return;
	if (fo->n_gone == fo->cap_gone) {
		size_t nc = fo->cap_gone ? fo->cap_gone * 2 : 16;
		char **nv = realloc(fo->gone, nc * sizeof(*nv));
		if (!nv)
			return; /* (the entry stays, as before: Dovecot drops it) */
		fo->gone = nv;
		fo->cap_gone = nc;
	}
	if (!(fo->gone[fo->n_gone] = strdup(base)))
		return;
	if (fo->n_gone++ == 0) {
		char p[PATHBUF];
		struct stat st;
		size_t lines = snprintf(p, sizeof p, "%s/dovecot-uidlist", fo->dir) < (int)sizeof p && stat(p, &st) == 0
		                       ? (size_t)st.st_size / GONE_LINE_BYTES
		                       : 0;
		fo->gone_trigger = lines / 8 ? lines / 8 : 1;
	}
	if (fo->n_gone >= fo->gone_trigger)
		fo->uid_check = true;
}

static void fent_remove(struct mm_store *s, struct fent *fe)
{
	struct folder *fo = fe->fo;
	char k[KBUF];
	size_t kl = k_ufb(k, fo->u->name, fo->name, fe->base);
	if (fx_get(&s->by_base, k, kl) == fe)
		fx_del(&s->by_base, k, kl);
	kl = k_ub(k, fo->u->name, fe->key, MM_KEY_LEN);
	if (fx_get(&s->by_key, k, kl) == fe)
		fx_del(&s->by_key, k, kl);
	if (s->dead.n)
		hm_del(&s->dead, k, kl); /* (the file is out of the index: nothing to retry) */
	body_unlink(s, fe);
	if (fe->fprev)
		fe->fprev->fnext = fe->fnext;
	else
		fo->files = fe->fnext;
	if (fe->fnext)
		fe->fnext->fprev = fe->fprev;
	mark_file(s, fo, fe->base);
	fent_free(s, fe);
}

static struct fent *fent_by_key_ram(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN])
{
	char k[KBUF];
	size_t kl = k_ub(k, user, key, MM_KEY_LEN);
	return fx_get(&s->by_key, k, kl);
}

/* Lookups that bring entries in from the database (see "the file index in the
 * database" below). */
static struct fent *fent_by_key(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN]);
static struct fent *fent_by_body(struct mm_store *s, const char *user, const uint8_t body[MM_ID_LEN]);
static int folder_files(struct mm_store *s, struct folder *fo);

/* The body staged for (user, key) (mm_store_body_stage), or NULL. */
static struct mm_body_writer *staged_get(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN])
{
	char k[KBUF];
	size_t kl = k_ub(k, user, key, MM_KEY_LEN);
	return hm_get(&s->staged_keys, k, kl);
}

static int fent_path(const struct mm_store *s, const struct fent *fe, char *buf, size_t len)
{
	char nb[MM_MD_NAME_MAX + 1];
	int n = snprintf(buf, len, "%s/%s/%s", fe->fo->dir, fe->in_cur ? "cur" : "new", fent_name(s, fe, nb));
	return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : 0;
}

/* The file was not where the index says (renamed by someone else): look for its base
 * in new/ and cur/ and update the entry.  0 when found. */
static int fent_relocate(struct mm_store *s, struct fent *fe)
{
	static const char *const subs[2] = {"new", "cur"};
	size_t bl = strlen(fe->base);
	for (int i = 1; i >= 0; i--) {
		char p[PATHBUF];
		snprintf(p, sizeof p, "%s/%s", fe->fo->dir, subs[i]);
		DIR *d = opendir(p);
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d))) {
			if (strncmp(e->d_name, fe->base, bl) || (e->d_name[bl] && e->d_name[bl] != ':'))
				continue;
			int r = fent_set_name(s, fe, e->d_name);
			if (r == -EINVAL)
				continue;
			if (r < 0)
				break;
			fe->in_cur = i == 1;
			/* fe->letters stays what we last knew: the next scan sees the change */
			closedir(d);
			mark_file(s, fe->fo, fe->base);
			return 0;
		}
		closedir(d);
	}
	return -ENOENT;
}

/* ---- letters <-> CRDT flags ---------------------------------------------------------- */

static bool is_sys_upper(int i)
{
	return i == 'D' - 'A' || i == 'F' - 'A' || i == 'P' - 'A' || i == 'R' - 'A' ||
	       i == 'S' - 'A' || i == 'T' - 'A';
}

/* fo->kw: the folder's dovecot-keywords as it is now. */
static void folder_kw_read(struct mm_store *s, struct folder *fo)
{
	mm_md_keywords_clear(&fo->kw);
	int rr = mm_md_keywords_read(fo->dir, &fo->kw);
	if (rr < 0)
		logmsg(s, MM_STORE_LOG_WARNING, "cannot read %s/dovecot-keywords: %s", fo->dir, read_err(rr));
}

/* Letters a file should carry for record r: system flags and keyword letters from the
 * CRDT, plus whatever `keep` has that the CRDT does not speak about (unknown
 * uppercase letters, lowercase letters without a name).  Keywords that need a letter
 * get one in dovecot-keywords; beyond 26 they stay in the CRDT only. */
static uint64_t wanted_letters(struct mm_store *s, struct folder *fo, const struct mm_rec *r,
                               uint64_t keep)
{
	uint64_t kwbits = 0;
	for (int i = 0; i < 26; i++)
		kwbits |= MM_MD_KWBIT(i);
	/* the keyword names matter only to a message with keywords or keyword letters (a
	 * body written per message must not cost a failed open of a file most folders lack) */
	if (r->msg.n_keywords || (keep & kwbits))
		folder_kw_read(s, fo);
	uint64_t l = 0;
	for (int i = 0; i < 26; i++)
		if ((keep & MM_MD_UPPER('A' + i)) && !is_sys_upper(i))
			l |= MM_MD_UPPER('A' + i);
	for (int i = 0; i < 26; i++) {
		if (!(keep & MM_MD_KWBIT(i)))
			continue;
		bool known = false;
		if (fo->kw.names[i])
			for (size_t j = 0; j < r->msg.n_keywords; j++)
				if (!strcasecmp(r->msg.keywords[j].name, fo->kw.names[i]))
					known = true;
		if (!known)
			l |= MM_MD_KWBIT(i);
	}
	for (int f = 0; f < MM_FLAG_COUNT; f++)
		if (r->msg.flags[f].value)
			l |= MM_MD_UPPER(mm_flag_letters[f]);
	/* Keywords that differ only in case are one letter (mm_md_keywords_find): it is
	 * set when any of them is, so removals first (the CRDT may hold "Work" set and
	 * "work" removed, made on two nodes). */
	for (size_t j = 0; j < r->msg.n_keywords; j++) {
		int idx = r->msg.keywords[j].reg.value ? -1 : mm_md_keywords_find(&fo->kw, r->msg.keywords[j].name);
		if (idx >= 0)
			l &= ~MM_MD_KWBIT(idx);
	}
	for (size_t j = 0; j < r->msg.n_keywords; j++) {
		const struct mm_kwreg *kw = &r->msg.keywords[j];
		if (!kw->reg.value)
			continue;
		int idx = mm_md_keywords_find(&fo->kw, kw->name);
		if (idx < 0) {
			/* not the index of a letter the file carries unnamed (Dovecot may be
			 * about to name it): that letter would come to mean this keyword */
			uint32_t avoid = 0;
			for (int i = 0; i < 26; i++)
				if ((keep & MM_MD_KWBIT(i)) && !fo->kw.names[i])
					avoid |= 1u << i;
			idx = mm_md_keywords_add(fo->dir, &fo->kw, kw->name, avoid);
		}
		if (idx >= 0)
			l |= MM_MD_KWBIT(idx);
		else if (idx == -ENOSPC)
			logmsg(s, MM_STORE_LOG_WARNING, "%s: more than 26 keywords, \"%s\" stays in mailmesh only",
			       fo->dir, kw->name);
		else {
			logmsg(s, MM_STORE_LOG_WARNING, "%s/dovecot-keywords: cannot add \"%s\": %s", fo->dir,
			       kw->name, strerror(-idx));
			/* the lock busy, say: the folder's files are synced again at a commit (a
			 * name Dovecot cannot store is not retried: it never will) */
			if (idx != -EINVAL)
				fo->kw_retry = true;
		}
	}
	return l;
}

/* Keyword letters of `letters` that no line of the folder's dovecot-keywords names. */
static uint64_t unnamed_letters(struct mm_store *s, struct folder *fo, uint64_t letters)
{
	if (!(letters & MM_MD_KW_MASK))
		return 0;
	folder_kw_read(s, fo);
	uint64_t un = 0;
	for (int i = 0; i < 26; i++)
		if ((letters & MM_MD_KWBIT(i)) && !fo->kw.names[i])
			un |= MM_MD_KWBIT(i);
	return un;
}

static void sync_file_flags_at(struct mm_store *s, struct fent *fe, const struct mm_rec *r, int depth);

/* Renames fe's file to carry the letters record r asks for. */
static void sync_file_flags(struct mm_store *s, struct fent *fe, const struct mm_rec *r)
{
	sync_file_flags_at(s, fe, r, 0);
}

static void sync_file_flags_at(struct mm_store *s, struct fent *fe, const struct mm_rec *r, int depth)
{
	/* Start from the letters the file carries, not the index's: a keyword letter
	 * Dovecot set before naming it in dovecot-keywords is on disk but deliberately not
	 * in fe->letters yet (pending), and must survive this rename and stay pending.
	 * Any other difference is a change made here that no scan has taken in yet (the
	 * name was learned by fent_relocate): renaming now would lose it.  The scan that
	 * change's rename causes takes it in, then brings the file in line. */
	uint64_t disk = fe->dletters;
	uint64_t pending = disk ^ fe->letters;
	if (pending & ~unnamed_letters(s, fe->fo, pending))
		return;
	uint64_t want = wanted_letters(s, fe->fo, r, disk);
	bool to_cur = fe->in_cur || want;
	if (want == disk && to_cur == fe->in_cur)
		return;
	char nn[MM_MD_NAME_MAX + 1];
	if (mm_md_name_format(nn, sizeof nn, fe->base, strlen(fe->base), want, to_cur) < 0) {
		logmsg(s, MM_STORE_LOG_WARNING, "%s/cur/%s: name too long for its flags", fe->fo->dir, fe->base);
		return;
	}
	char ob[MM_MD_NAME_MAX + 1], oldn[MM_MD_NAME_MAX + 1];
	snprintf(oldn, sizeof oldn, "%s", fent_name(s, fe, ob)); /* fent_relocate may free it */
	int rr = mm_md_rename(fe->fo->dir, fe->in_cur ? "cur" : "new", oldn, to_cur ? "cur" : "new", nn);
	if (rr == 0) {
		fent_set_name(s, fe, nn); /* cannot fail: nn is canonical (no allocation) */
		fe->in_cur = to_cur;
		fe->letters = (want & ~pending) | (fe->letters & pending);
		mark_file(s, fe->fo, fe->base);
		return;
	}
	/* Renamed by someone else since the last scan: a local flag change not yet in the
	 * CRDT.  Renaming now would overwrite it; the scan that rename triggers takes the
	 * local change in and then brings the file in line with the merged record.  (The
	 * rename's inotify event is still queued: the scan has not seen the new name.) */
	bool was_cur = fe->in_cur;
	if (rr == -ENOENT && fent_relocate(s, fe) == 0 && depth < 2) {
		if ((fe->dletters ^ fe->letters) & ~pending)
			return;
		/* only moved (new/ -> cur/, same letters): nothing to lose, rename now.  Found
		 * where the index said: the target directory is what is missing (a folder
		 * delete racing a delivery here left half a Maildir): restore it, retry once */
		if (strcmp(fent_name(s, fe, nn), oldn) || fe->in_cur != was_cur || mm_md_folder_repair(fe->fo->dir) > 0) {
			sync_file_flags_at(s, fe, r, depth + 1);
			return;
		}
	}
	if (rr == -ENOENT && user_gone(s, fe->fo->u))
		return; /* renamed when it is back (user_reconcile) */
	char p[PATHBUF];
	fent_path(s, fe, p, sizeof p);
	logmsg(s, MM_STORE_LOG_WARNING, "cannot rename %s for new flags: %s", p, strerror(-rr));
}

static struct pending *add_pending(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN])
{
	struct pending *p = calloc(1, sizeof(*p));
	if (p && (p->user = strdup(user))) {
		memcpy(p->key, key, MM_KEY_LEN);
		p->next = s->pending;
		s->pending = p;
		return p;
	}
	free(p);
	return NULL;
}

/* ---- spare files (struct mm_store.spares) ------------------------------------------------ */

#define SPARE_PREFIX "mm-spare."

/* Notes the file of an expunged message kept at `path`.  0 (the file is unlinked at
 * once when it cannot be noted). */
static int spare_add(struct mm_store *s, const char *user, const uint8_t body[MM_ID_LEN], const char *path)
{
	size_t pl = strlen(path) + 1;
	struct spare *sp = malloc(sizeof(*sp) + pl);
	char k[KBUF];
	if (!sp || hm_put(&s->spares, k, k_ub(k, user, body, MM_ID_LEN), sp) < 0) {
		free(sp);
		unlink(path);
		return 0;
	}
	memcpy(sp->path, path, pl);
	sp->next = s->spare_list;
	s->spare_list = sp;
	return 0;
}

/* Removes every spare file (the commit's local copies are made). */
static void spares_drop(struct mm_store *s)
{
	for (struct spare *sp = s->spare_list, *nx; sp; sp = nx) {
		nx = sp->next;
		if (unlink(sp->path) < 0 && errno != ENOENT)
			logmsg(s, MM_STORE_LOG_WARNING, "cannot remove %s: %s", sp->path, strerror(errno));
		free(sp);
	}
	s->spare_list = NULL;
	hm_clear(&s->spares);
}

/* Takes an expunged message's file out of its folder: kept at `keep` (1) when given
 * and possible, else unlinked (0); -ENOENT if it is not where the index says. */
static void dead_note(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN])
{
	char k[KBUF];
	(void)hm_put(&s->dead, k, k_ub(k, user, key, MM_KEY_LEN), s); /* (out of memory: a restart finds it) */
}

static bool dead_has(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN])
{
	char k[KBUF];
	return hm_get(&s->dead, k, k_ub(k, user, key, MM_KEY_LEN)) != NULL;
}

static int expunged_file_remove(struct mm_store *s, struct fent *fe, const char *keep)
{
	char nb[MM_MD_NAME_MAX + 1];
	const char *sub = fe->in_cur ? "cur" : "new";
	return keep ? mm_md_unlink_keep(fe->fo->dir, sub, fent_name(s, fe, nb), keep)
	            : mm_md_unlink(fe->fo->dir, sub, fent_name(s, fe, nb));
}

/* Spare files a crash left in a user's tmp/. */
static void spares_recover(const struct user *u)
{
	char dir[PATHBUF];
	if (snprintf(dir, sizeof dir, "%s/tmp", u->path) >= (int)sizeof dir)
		return;
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		char p[PATHBUF];
		if (!strncmp(de->d_name, SPARE_PREFIX, strlen(SPARE_PREFIX)) &&
		    snprintf(p, sizeof p, "%s/%s", dir, de->d_name) < (int)sizeof p)
			unlink(p);
	}
	closedir(d);
}

/* ---- effects --------------------------------------------------------------------------- */

/* Effects of our own local changes: only bookkeeping (the disk already shows them). */
static void local_effect(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	struct mm_store *s = arg;
	mark_rec(s, user, rec->key);
	if (eff == MM_EFF_MSG_EXPUNGED || eff == MM_EFF_TOMB_NEW || eff == MM_EFF_GC) {
		set_missing(s, user, rec->key, NULL, NULL, false);
		struct fent *fe = fent_by_key(s, user, rec->key);
		if (fe)
			fent_remove(s, fe); /* its file is gone already (that is the change) */
		/* the last message of a folder deleted elsewhere (kept visible for it): the
		 * empty folder goes at the commit, or the next scan would make it anew */
		struct user *u = eff == MM_EFF_MSG_EXPUNGED ? user_get(s, user, false) : NULL;
		struct folder *fo = u ? folder_get(s, u, rec->msg.folder, false) : NULL;
		if (fo)
			fo->check = true;
	}
}

void mm_store_effect(void *store, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	struct mm_store *s = store;
	mark_rec(s, user, rec->key);
	struct user *u = user_get(s, user, true);
	if (!u)
		return;
	struct fent *fe;
	struct folder *fo;
	switch (eff) {
	case MM_EFF_MSG_NEW:
		fo = folder_get(s, u, rec->msg.folder, true);
		if (!fo)
			return;
		folder_ensure_recent(s, fo);
		if (!strcmp(fo->name, "INBOX"))
			fo->check = true; /* (mail a removal here did not take: inbox_revive) */
		fe = fent_by_key(s, user, rec->key);
		if (fe) {
			sync_file_flags(s, fe, rec);
			return;
		}
		set_missing(s, user, rec->key, rec->msg.body, rec->msg.folder, true);
		add_pending(s, user, rec->key);
		return;
	case MM_EFF_MSG_FLAGS:
		fe = fent_by_key(s, user, rec->key);
		if (fe)
			sync_file_flags(s, fe, rec);
		return;
	case MM_EFF_MSG_EXPUNGED:
		set_missing(s, user, rec->key, NULL, NULL, false);
		fe = fent_by_key(s, user, rec->key);
		if (fe) {
			char keep[PATHBUF];
			/* (a user removed here: every message goes, none can be copied from) */
			bool spare = !s->removing && snprintf(keep, sizeof keep, "%s/tmp/" SPARE_PREFIX "%ld.%" PRIu64,
			                                      u->path, (long)getpid(), ++s->spare_seq) < (int)sizeof keep;
			char fp[PATHBUF];
			int64_t fsz = fent_path(s, fe, fp, sizeof fp) == 0 ? quota_file_size(fp) : -1;
			int r = expunged_file_remove(s, fe, spare ? keep : NULL);
			if (r == -ENOENT && fent_relocate(s, fe) == 0) {
				fsz = fent_path(s, fe, fp, sizeof fp) == 0 ? quota_file_size(fp) : -1;
				r = expunged_file_remove(s, fe, spare ? keep : NULL);
			}
			if (r == -ENOENT && user_gone(s, u))
				return; /* away, not gone: the entry stays, and the file is removed
				         * when the Maildir is back (user_reconcile); dropped now, the
				         * file would be a new delivery then and bring the message
				         * back everywhere */
			if ((r == 0 || r == 1) && fsz >= 0)
				quota_note(s, fe->fo, -fsz, -1); /* (a spare in tmp/ is out of the quota too) */
			if (r == 1)
				r = spare_add(s, user, rec->msg.body, keep);
			if (r < 0 && r != -ENOENT) {
				char pth[PATHBUF];
				fent_path(s, fe, pth, sizeof pth);
				logmsg(s, MM_STORE_LOG_WARNING, "cannot unlink expunged %s: %s (retried at the next scan)",
				       pth, strerror(-r));
				dead_note(s, user, fe->key); /* indexed still: found again, it would be new mail */
				fe->fo->check = true;
				return;
			}
			fo = fe->fo;
			if (r == 0 || r == -ENOENT)
				folder_note_gone(s, fo, fe->base);
			fent_remove(s, fe);
			fo->check = true;
		}
		fo = folder_get(s, u, rec->msg.folder, false);
		if (fo)
			fo->check = true;
		return;
	case MM_EFF_TOMB_NEW:
	case MM_EFF_GC:
		set_missing(s, user, rec->key, NULL, NULL, false);
		return;
	case MM_EFF_FOLDER:
		fo = folder_get(s, u, rec->folder.name, true);
		if (!fo)
			return;
		if (rec->folder.exists.value)
			folder_ensure(s, fo, rec);
		else
			fo->check = true;
		fo->uid_check = true; /* UIDVALIDITY follows the exists stamp */
		if ((bool)rec->folder.subscribed.value != fo->subscribed)
			u->subs_dirty = true;
		return;
	case MM_EFF_MSG_UID:
		/* the file is re-listed (or re-filed) under the new UID at the next commit */
		fo = folder_get(s, u, rec->msg.folder, false);
		if (fo)
			fo->uid_check = true;
		return;
	}
}

/* Local stamps must follow every stamp merged, or a local change made after a remote
 * one (e.g. deleting a folder a peer just created) would lose to it. */
static void observe(struct mm_store *s, mm_hlc st)
{
	if (!st.t)
		return;
	struct timeval tv;
	gettimeofday(&tv, NULL);
	uint64_t wall = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
	if (s->now_ms > wall)
		wall = s->now_ms;
	mm_clock_observe(s->clock, st, wall, s->max_skew_ms);
}

static void observe_rec(struct mm_store *s, const struct mm_rec *r)
{
	switch (r->type) {
	case MM_REC_MESSAGE:
		observe(s, r->msg.created);
		for (int f = 0; f < MM_FLAG_COUNT; f++)
			observe(s, r->msg.flags[f].stamp);
		for (size_t i = 0; i < r->msg.n_keywords; i++)
			observe(s, r->msg.keywords[i].reg.stamp);
		observe(s, r->msg.uid.stamp);
		break;
	case MM_REC_EXPUNGED:
		observe(s, r->tomb.stamp);
		break;
	case MM_REC_FOLDER:
		observe(s, r->folder.exists.stamp);
		observe(s, r->folder.subscribed.stamp);
		break;
	case MM_REC_HORIZON:
		break;
	}
}

int mm_store_merge(struct mm_store *s, const char *user, const struct mm_rec *rec)
{
	observe_rec(s, rec);
	int r = mm_state_merge(s->state, user, rec, mm_store_effect, s);
	if (r > 0)
		mark_rec(s, user, rec->key);
	return r;
}

int mm_store_merge_delta(struct mm_store *s, const struct mm_delta *d)
{
	int changed = 0;
	for (size_t i = 0; i < mm_delta_count(d); i++) {
		const char *user;
		const struct mm_rec *r = mm_delta_get(d, i, &user);
		int rr = mm_store_merge(s, user, r);
		if (rr < 0)
			return rr;
		changed += rr;
	}
	return changed;
}

void mm_store_set_max_skew(struct mm_store *s, uint64_t max_skew_ms)
{
	s->max_skew_ms = max_skew_ms;
}

void mm_store_set_catching_up(struct mm_store *s, bool catching_up)
{
	/* a folder whose last pass showed every message under its UID raised no need and
	 * held none back: only the others are planned again */
	if (!catching_up && s->catching_up)
		for (struct user *u = s->users; u; u = u->next)
			for (struct folder *fo = u->folders; fo; fo = fo->unext)
				if (!fo->uid_settled)
					fo->uid_check = true;
	s->catching_up = catching_up;
}

void mm_store_set_uid_authority(struct mm_store *s, bool authority)
{
	/* a folder whose last pass found nothing only an authority would do is left alone
	 * (at a start with a million messages: a second read of the whole listing); any
	 * change since that pass has set uid_check already */
	if (authority && !s->uid_authority)
		for (struct user *u = s->users; u; u = u->next)
			for (struct folder *fo = u->folders; fo; fo = fo->unext)
				if (!fo->uid_settled)
					fo->uid_check = true;
	s->uid_authority = authority;
}

int mm_store_mark(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN])
{
	char k[KBUF];
	size_t kl = k_ub(k, user, key, MM_KEY_LEN);
	return hm_put(&s->dirty_recs, k, kl, (void *)1);
}

/* ---- scanning ------------------------------------------------------------------------------ */

struct dentry {
	char *name;
	bool in_cur;
};

static int dentry_name_cmp(const void *a, const void *b)
{
	return strcmp((*(struct dentry *const *)a)->name, (*(struct dentry *const *)b)->name);
}

struct dlist {
	struct dentry *v;
	size_t n, cap;
};

static void dlist_free(struct dlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].name);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

/* How long a commit waits for Dovecot's subscriptions.lock (Dovecot holds it for the
 * moment of a rewrite; a dead holder's lock is broken at once) */
#define SUBS_LOCK_MS 500

/* Reads new/ then cur/ (that order: a file moving new -> cur meanwhile is seen at
 * least once).  Returns 0, -ENOENT when the folder is gone, other errno when it
 * cannot be read (then nothing may be concluded about missing files). */
#define HALF_REPAIR_MS 1500

/* Lists new/ and cur/ of a folder into l.  Returns 0, 1 when one of the two is
 * missing (half a Maildir), -ENOENT when both are, or another negative errno. */
static int read_folder(const char *dir, struct dlist *l)
{
	static const char *const subs[2] = {"new", "cur"};
	int gone = 0;
	for (int i = 0; i < 2; i++) {
		char p[PATHBUF];
		snprintf(p, sizeof p, "%s/%s", dir, subs[i]);
		DIR *d = opendir(p);
		if (!d) {
			if (errno == ENOENT) {
				gone++;
				continue;
			}
			return -errno;
		}
		struct dirent *e;
		while ((errno = 0, e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			if (e->d_type != DT_REG && e->d_type != DT_UNKNOWN)
				continue;
			if (l->n == l->cap) {
				size_t nc = l->cap ? l->cap * 2 : 64;
				struct dentry *nv = realloc(l->v, nc * sizeof(*nv));
				if (!nv) {
					closedir(d);
					return -ENOMEM;
				}
				l->v = nv;
				l->cap = nc;
			}
			if (!(l->v[l->n].name = strdup(e->d_name))) {
				closedir(d);
				return -ENOMEM;
			}
			l->v[l->n++].in_cur = i == 1;
		}
		if (errno) { /* not the end: a listing cut short (EIO) says nothing is gone */
			int e2 = errno == ENOENT ? EIO : errno;
			closedir(d);
			return -e2;
		}
		closedir(d);
	}
	return gone == 2 ? -ENOENT : gone;
}

/* Opens a message file for reading: the descriptor, or -ELOOP for a symbolic link
 * (never followed out of the Maildir), -EINVAL for anything but a regular file, or
 * another negative errno.  O_NONBLOCK: a FIFO put where mail is would otherwise hold
 * the open until some writer came, and the daemon with it; on a regular file it
 * changes nothing.  *st_r is the file's status. */
static int open_message(const char *path, struct stat *st_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	int e = 0;
	if (fstat(fd, st_r) < 0)
		e = -errno;
	else if (!S_ISREG(st_r->st_mode))
		e = -EINVAL;
	if (e) {
		close(fd);
		return e;
	}
	return fd;
}

/* Hashes a file: body id, size, mtime.  0 or negative errno. */
static int hash_file(struct mm_store *s, const char *path, uint8_t body[MM_ID_LEN],
                     uint64_t *size_r, int64_t *mtime_r)
{
	struct stat st;
	int fd = open_message(path, &st);
	if (fd < 0)
		return fd;
	crypto_generichash_state h;
	crypto_generichash_init(&h, NULL, 0, MM_ID_LEN);
	static __thread unsigned char buf[65536];
	uint64_t n = 0;
	for (;;) {
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			int e = -errno;
			close(fd);
			return e;
		}
		if (r == 0)
			break;
		crypto_generichash_update(&h, buf, (size_t)r);
		n += (uint64_t)r;
	}
	close(fd);
	crypto_generichash_final(&h, body, MM_ID_LEN);
	*size_r = n;
	*mtime_r = (int64_t)st.st_mtime;
	s->hashed++;
	return 0;
}

/* "mm_<32 hex>" in a base: the record key of a file this store wrote. */
static bool base_key(const char *base, uint8_t key[MM_KEY_LEN])
{
	const char *p = strstr(base, ".mm_");
	if (!p)
		return false;
	p += 4;
	for (int i = 0; i < MM_KEY_LEN; i++) {
		unsigned v = 0;
		for (int j = 0; j < 2; j++) {
			char c = p[2 * i + j];
			v <<= 4;
			if (c >= '0' && c <= '9')
				v |= (unsigned)(c - '0');
			else if (c >= 'a' && c <= 'f')
				v |= (unsigned)(c - 'a' + 10);
			else
				return false;
		}
		key[i] = (uint8_t)v;
	}
	return p[32] == ',' || p[32] == 0 || p[32] == ':';
}

struct uidmap {
	struct hmap m; /* base -> uid */
	bool loaded;
};

static int uid_cb(void *arg, uint32_t uid, const char *base, size_t len)
{
	struct uidmap *um = arg;
	hm_put(&um->m, base, len, (void *)(uintptr_t)uid);
	return 0;
}

/* Applies a local letter change of a known file to the CRDT. */
/* Returns the letters it could not apply (keyword letters dovecot-keywords does not
 * name yet): the caller keeps their old state so a later scan applies them. */
static uint64_t local_letters(struct mm_store *s, struct mm_user *mu, struct fent *fe,
                              uint64_t oldl, uint64_t newl, bool *kw_loaded)
{
	uint64_t unapplied = 0;
	const struct mm_rec *r = mm_user_get(mu, fe->key);
	if (!r || r->type != MM_REC_MESSAGE)
		return 0;
	uint64_t diff = oldl ^ newl;
	for (int f = 0; f < MM_FLAG_COUNT; f++) {
		uint64_t bit = MM_MD_UPPER(mm_flag_letters[f]);
		if (!(diff & bit))
			continue;
		int rr = mm_user_set_flag(mu, fe->key, (enum mm_flag)f, (newl & bit) != 0, tick(s),
		                          local_effect, s, s->out);
		if (rr > 0)
			s->changes++;
	}
	if (!(diff & MM_MD_KW_MASK))
		return 0;
	if (!*kw_loaded) {
		folder_kw_read(s, fe->fo);
		*kw_loaded = true;
	}
	for (int i = 0; i < 26; i++) {
		uint64_t bit = MM_MD_KWBIT(i);
		if (!(diff & bit))
			continue;
		const char *name = fe->fo->kw.names[i];
		if (!name) {
			/* Dovecot renames the file before it writes the letter's name into
			 * dovecot-keywords: not an error, the name comes in a moment. */
			unapplied |= bit;
			continue;
		}
		int rr = mm_user_set_keyword(mu, fe->key, name, (newl & bit) != 0, tick(s), local_effect,
		                             s, s->out);
		if (rr > 0)
			s->changes++;
		if (newl & bit)
			continue;
		/* the letter is every keyword of that name whatever its case (wanted_letters):
		 * a removal removes them all, or the letter would be written back */
		for (size_t j = 0; (r = mm_user_get(mu, fe->key)) && r->type == MM_REC_MESSAGE && j < r->msg.n_keywords;
		     j++) {
			const struct mm_kwreg *kw = &r->msg.keywords[j];
			if (kw->reg.value && strcmp(kw->name, name) && !strcasecmp(kw->name, name)) {
				char other[MM_NAME_MAX + 1];
				snprintf(other, sizeof other, "%s", kw->name); /* (the record changes under us) */
				rr = mm_user_set_keyword(mu, fe->key, other, false, tick(s), local_effect, s, s->out);
				/* again from the start only if the record was rewritten: a removal
				 * that loses to a newer set (a peer's clock ahead beyond max_skew,
				 * which ours does not follow) changes nothing, and would be tried
				 * again for ever; that spelling stays set, as the CRDT says */
				if (rr > 0) {
					s->changes++;
					j = (size_t)-1;
				}
			}
		}
	}
	return unapplied;
}

static const struct mm_rec *uid_folder_rec(struct mm_user *mu, const char *folder);
static bool uid_header(struct mm_md_uidlist *ul, const char *user, const struct mm_rec *frec);
static const struct mm_rec *uid_adopt(struct mm_store *s, struct mm_user *mu, struct folder *fo,
                                      const struct mm_md_uidlist *ul);

/* UIDs for new local files Dovecot has not listed: the folder's N, written into
 * dovecot-uidlist (lock taken at the first such file, held until the end of the
 * folder's scan, one write).
 *
 * Dovecot lists what it delivers itself: it takes the uidlist lock, moves the file
 * into new/, then writes the list and lets go.  A scan that sees the file in that
 * window finds the lock busy.  Waiting for it (in 10 ms sleeps, loop stalled) cost a
 * 1,000-message LMTP burst a third of node 1's time, so the scan leaves such files
 * unindexed instead: the lock's release (an event on the folder's directory, watch.c)
 * or a short timer scans the folder again, and the file then has Dovecot's UID.  A
 * lock held for LOCK_DEFER_MS (a process stuck on it) is waited for as before. */
#define LOCK_DEFER_MS 1000

struct assign {
	bool tried, usable, dirty;
	bool busy; /* the lock is someone else's: unlisted files wait for the next scan */
	struct mm_md_uidlist ul;
};

/* Takes fo's uidlist lock, or leaves the work for the lock's release (see above):
 * 0 locked; 1 left (*since stamped at the first time, mm_store_take_lock_waits set);
 * < 0 not locked after waiting for it. */
static int lock_or_leave(struct mm_store *s, struct folder *fo, uint64_t *since)
{
	uint64_t now = wall_ms();
	if (fo->job_locked) { /* busy until place_finish (mm_store_place_end): the daemon
	                       * retries what was left then (mm_watch_lock_waits) */
		if (!*since)
			*since = now ? now : 1;
		s->lock_waits = true;
		return 1;
	}
	bool may_defer = !*since || now - *since < LOCK_DEFER_MS;
	int r = mm_md_uidlist_lock(fo->dir, may_defer ? 0 : 2000);
	if (r == -EAGAIN && may_defer) {
		if (!*since)
			*since = now ? now : 1;
		s->lock_waits = true;
		return 1;
	}
	return r;
}

/* Takes the uidlist lock and loads the list, once per scan (see above).  Returns
 * whether numbering is possible; as->busy says the files are to be left for now. */
static bool assign_begin(struct mm_store *s, struct mm_user *mu, struct folder *fo, struct assign *as)
{
	if (!as->tried) {
		as->tried = true;
		mm_md_uidlist_clear(&as->ul);
		const struct mm_rec *frec = uid_folder_rec(mu, fo->name);
		int lk = frec ? lock_or_leave(s, fo, &fo->lockwait_since) : -ENOENT;
		as->busy = lk == 1;
		if (lk == 0) {
			int lr = mm_md_uidlist_load(fo->dir, &as->ul);
			note_scratch(s, as->ul.n);
			if (lr == 0 &&
			    (frec = uid_adopt(s, mu, fo, &as->ul)) != NULL &&
			    (as->ul.uidvalidity == frec->folder.uidvalidity || !as->ul.exists)) {
				as->usable = true;
				as->dirty = uid_header(&as->ul, fo->u->name, frec);
			} else {
				mm_md_uidlist_unlock(fo->dir); /* the uid pass sorts it out */
			}
		}
	}
	return as->usable;
}

static uint32_t assign_uid(struct mm_store *s, struct mm_user *mu, struct folder *fo, struct assign *as,
                           const char *base, const char *name)
{
	if (!assign_begin(s, mu, fo, as))
		return 0;
	uint32_t uid = mm_md_uidlist_find(&as->ul, base, strlen(base));
	if (uid)
		return uid;
	uid = as->ul.next_uid;
	if (!uid || mm_md_uidlist_add(&as->ul, uid, name) < 0)
		return 0;
	as->dirty = true;
	(void)s;
	return uid;
}

static void assign_done(struct mm_store *s, struct folder *fo, struct assign *as)
{
	if (as->usable) {
		if (as->dirty) {
			int r = mm_md_uidlist_save(fo->dir, &as->ul);
			if (r < 0) {
				logmsg(s, MM_STORE_LOG_ERR, "cannot write %s/dovecot-uidlist: %s", fo->dir, strerror(-r));
				fo->uid_check = true;
			}
		}
		fo->uid_next = as->ul.next_uid;
		mm_md_uidlist_unlock(fo->dir);
	}
	if (as->tried)
		mm_md_uidlist_clear(&as->ul);
	memset(as, 0, sizeof(*as));
}

static int commit_batch(struct mm_store *s);
static bool placed_letters_take(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN],
                                uint64_t *letters_r);
static void pmark_taken(struct mm_store *s, const char *mk, size_t mkl);
static void recover_tmp_queued(struct mm_store *s, bool running);

/* The scan found, under a new name, a message the index knows as `old` in the same
 * folder: a re-file under a new UID (link, then unlink of the old name) or a rename
 * whose index entry a crash lost before its commit.  `st` is the new file's stat.
 * The new name is the message's: the old entry goes, and the old name too when it
 * is still there as a link to the same file.  Returns false, leaving everything as
 * it is, when the old name is another file (two files claim one message: taking the
 * new one as a new delivery would give the message a second record, and after an
 * expunge bring it back on every node). */
static bool refile_adopt(struct mm_store *s, struct fent *old, const struct stat *st)
{
	char op[PATHBUF];
	struct stat ost;
	if (fent_path(s, old, op, sizeof op) == 0 && stat(op, &ost) == 0) {
		if (ost.st_ino != st->st_ino || ost.st_dev != st->st_dev) {
			logmsg(s, MM_STORE_LOG_WARNING, "%s and another file both carry the key of one message: "
			       "the other is not indexed", op);
			return false;
		}
		unlink(op);
	}
	fent_remove(s, old);
	return true;
}

/* The creation stamp of a message file found here (not one this store wrote), derived
 * from what every copy of that message carries, so that nodes which already hold the
 * same mail when mailmesh first runs (a server seeded with rsync or cp -a, from a node
 * that ran mailmesh for months or not at all; replicas Dovecot's dsync kept; a node
 * whose state database was wiped) index it as one message, instead of each minting
 * its own and every node getting every message twice.  The identity is the user, the
 * folder, the bytes and the file's mtime (the INTERNALDATE: rsync -a, cp -a and dsync
 * keep it; file names and UIDs may differ, and whether a UID was listed yet depends on
 * timing).  The stamp falls in the second before that mtime, so a live delivery's is
 * at most two seconds old.  False when the mtime is in the future (its stamp would
 * outrank later changes).  `copy` numbers the files with those bytes and that mtime in
 * the folder (Dovecot keeps both: so does mailmesh; adopt_identity).  A message
 * expunged before gets no derived identity again: a file restored from a backup is
 * mail again, a new instance. */
#define ADOPT_NODE 0x6d6d61646f707400ULL /* "mmadopt": the node part of derived stamps */
#define ADOPT_NODES 16

static bool adopt_stamp(const char *user, const char *folder, const uint8_t body[MM_ID_LEN], int64_t mtime,
                        uint64_t copy, mm_hlc *st_r)
{
	if (mtime < 2 || (uint64_t)mtime * 1000 > wall_ms()) /* (a stamp of 0 means none) */
		return false;
	crypto_generichash_state h;
	crypto_generichash_init(&h, NULL, 0, 8);
	crypto_generichash_update(&h, (const uint8_t *)"mm-adopt", 8);
	crypto_generichash_update(&h, (const uint8_t *)user, strlen(user) + 1);
	crypto_generichash_update(&h, (const uint8_t *)folder, strlen(folder) + 1);
	crypto_generichash_update(&h, body, MM_ID_LEN);
	uint8_t c = (uint8_t)copy;
	if (copy)
		crypto_generichash_update(&h, &c, 1);
	uint8_t out[8];
	crypto_generichash_final(&h, out, sizeof out);
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | out[i];
	/* The hash goes into the stamp's millisecond (in the second before the mtime:
	 * never later than now), its logical counter and one of ADOPT_NODES node ids:
	 * 30 bits, so two messages of a user with the same mtime second rarely meet
	 * (adopt_identity gives the second a new instance when they do).  Few node ids:
	 * each user's state interns the node ids of its stamps (crdt/user.c), and one id
	 * per message cost 30-50 bytes a message (item 6 of make bench). */
	uint64_t ms = (uint64_t)mtime * 1000 - 1 - (v & 0x3ff) % 1000;
	st_r->t = ms << MM_HLC_LOGICAL_BITS | (v >> 10 & 0xffff);
	st_r->node = ADOPT_NODE | (v >> 26 & (ADOPT_NODES - 1));
	return true;
}

/* The index entry of fo's file with the parsed name n (its base into base_r), or NULL. */
static struct fent *fent_by_name(struct mm_store *s, struct folder *fo, const struct mm_md_name *n,
                                 char base_r[MM_MD_NAME_MAX + 1])
{
	char k[KBUF];
	memcpy(base_r, n->base, n->base_len);
	base_r[n->base_len] = 0;
	return fx_get(&s->by_base, k, k_ufb(k, fo->u->name, fo->name, base_r));
}

/* Most files with the same bytes and mtime in one folder that get derived identities
 * (the n-th such file is the n-th copy on every node); more are new instances. */
#define ADOPT_COPIES 16

/* The identity of a new file here (adopt_stamp): the first of its copies' identities
 * whose key no file here has yet.  0: created_r is the stamp to record it under (a
 * new message); 1: key_r names a message a peer sent already, without a file here
 * yet: this file is it; -1: none (an identity expunged before, or no derived stamp):
 * the caller stamps a new instance now. */
static int adopt_identity(struct mm_store *s, struct mm_user *mu, struct folder *fo, const uint8_t body[MM_ID_LEN],
                          int64_t mtime, mm_hlc *created_r, uint8_t key_r[MM_KEY_LEN])
{
	for (uint64_t copy = 0; copy < ADOPT_COPIES; copy++) {
		if (!adopt_stamp(fo->u->name, fo->name, body, mtime, copy, created_r))
			return -1;
		mm_key_message(created_r, key_r);
		const struct mm_rec *rec = mm_user_get(mu, key_r);
		if (!rec)
			return 0;
		if (rec->type != MM_REC_MESSAGE || strcmp(rec->msg.folder, fo->name) || memcmp(rec->msg.body, body, MM_ID_LEN))
			return -1;
		if (!fent_by_key(s, fo->u->name, key_r))
			return 1;
	}
	return -1;
}

static int scan_files(struct mm_store *s, struct folder *fo, struct mm_user *mu)
{
	struct dlist l = {0};
	int r = folder_files(s, fo);
	if (r < 0)
		return r;
	r = read_folder(fo->dir, &l);
	note_scratch(s, l.n);
	if (r < 0) {
		dlist_free(&l);
		if (r != -ENOENT)
			logmsg(s, MM_STORE_LOG_WARNING, "cannot read folder %s: %s", fo->dir, strerror(-r));
		return r;
	}
	if (r > 0 && l.n) {
		/* new/ or cur/ gone under messages: Dovecot and clients see no folder
		 * without cur/, while this node counts its messages as present.  Either a
		 * delete is running (an rm -rf: files keep going; making the folder whole
		 * now would leave it behind, empty) or one was cut short by a delivery
		 * racing it: made whole once it has stayed so, with no file gone, for
		 * HALF_REPAIR_MS (the scans a deferral asks for look again meanwhile). */
		uint64_t now = wall_ms();
		if (!fo->half_since || l.n < fo->half_n) {
			fo->half_since = now ? now : 1;
			fo->half_n = l.n;
			s->deferred = true;
		} else if (now - fo->half_since < HALF_REPAIR_MS) {
			s->deferred = true;
		} else {
			int rr = mm_md_folder_repair(fo->dir);
			if (rr > 0)
				logmsg(s, MM_STORE_LOG_INFO, "%s: restored its missing cur/, new/ or tmp/ (it holds messages)",
				       fo->dir);
			else if (rr < 0)
				logmsg(s, MM_STORE_LOG_WARNING, "%s lacks cur/ or new/ and cannot get it back: %s", fo->dir,
				       strerror(-rr));
			fo->half_since = 0;
		}
	} else {
		fo->half_since = 0;
	}
	r = 0;
	for (struct fent *fe = fo->files; fe; fe = fe->fnext)
		fe->seen = false;
	bool kw_loaded = false;
	struct uidmap um = {{0}, false};
	struct assign as = {0};
	bool lock_left = false;
	char path[PATHBUF];
	/* Files the index knows first, in directory order; then the others in name order,
	 * so that copies of one message (adopt_identity) are numbered alike on every node
	 * that holds the same names (directory order differs between two directories). */
	struct dentry **fresh = NULL;
	size_t n_fresh = 0, cap_fresh = 0;
	for (int pass = 0; pass < 2; pass++) {
		if (pass && n_fresh > 1)
			qsort(fresh, n_fresh, sizeof(*fresh), dentry_name_cmp);
		for (size_t i = 0; i < (pass ? n_fresh : l.n); i++) {
			const char *name = pass ? fresh[i]->name : l.v[i].name;
			bool in_cur = pass ? fresh[i]->in_cur : l.v[i].in_cur;
			snprintf(path, sizeof path, "%s/%s/%s", fo->dir, in_cur ? "cur" : "new", name);
			struct mm_md_name n;
			char base[MM_MD_NAME_MAX + 1];
			if (mm_md_name_parse(name, &n) < 0) {
				logmsg(s, MM_STORE_LOG_WARNING, "skipping %s: not a Maildir message name", path);
				continue;
			}
			struct fent *fe = fent_by_name(s, fo, &n, base);
			const struct mm_rec *drec;
			if (fe && s->dead.n && dead_has(s, fo->u->name, fe->key) &&
			    (!(drec = mm_user_get(mu, fe->key)) || drec->type != MM_REC_MESSAGE)) {
				/* expunged, and its unlink failed: try again, by the name found now
				 * (Dovecot may have moved it to cur/ meanwhile) */
				fe->seen = true;
				if (fent_set_name(s, fe, name) < 0)
					continue;
				fe->in_cur = in_cur;
				int64_t fsz = quota_file_size(path);
				int rr = expunged_file_remove(s, fe, NULL);
				if (rr == 0) {
					if (fsz >= 0)
						quota_note(s, fo, -fsz, -1);
					folder_note_gone(s, fo, fe->base);
					fent_remove(s, fe); /* (drops it from s->dead) */
					fo->check = true;
					s->wants_commit = true;
				}
				continue; /* (gone meanwhile: the next scan finds it renamed, or gone) */
			}
			if (fe) {
				fe->seen = true;
				/* letters too: fent_relocate() may already know the new name of a file
				 * renamed here, but not what the rename changed */
				char nb[MM_MD_NAME_MAX + 1];
				if (strcmp(fent_name(s, fe, nb), name) || fe->in_cur != in_cur || fe->letters != n.letters) {
					uint64_t oldl = fe->letters;
					if (fent_set_name(s, fe, name) < 0)
						continue;
					fe->in_cur = in_cur;
					fe->letters = n.letters;
					mark_file(s, fo, base);
					uint64_t un = local_letters(s, mu, fe, oldl, n.letters, &kw_loaded);
					fe->letters = (n.letters & ~un) | (oldl & un);
					/* Remote changes that arrived meanwhile were not written to this
					 * file (see sync_file_flags): write the merged result now. */
					const struct mm_rec *cur = mm_user_get(mu, fe->key);
					if (cur && cur->type == MM_REC_MESSAGE)
						sync_file_flags(s, fe, cur); /* keeps unnamed letters as they are */
				}
				continue;
			}
			if (!pass) {
				if (n_fresh == cap_fresh) { /* usually a few: not one slot per file */
					size_t nc = cap_fresh ? cap_fresh * 2 : 64;
					struct dentry **nv = realloc(fresh, nc * sizeof(*nv));
					if (!nv) {
						free(fresh);
						dlist_free(&l);
						return -ENOMEM;
					}
					fresh = nv;
					cap_fresh = nc;
				}
				fresh[n_fresh++] = &l.v[i];
				continue;
			}
			/* a file this store wrote, whose index entry a crash lost? */
			uint8_t key[MM_KEY_LEN];
			struct fent *old = NULL;
			if (base_key(base, key) && (!(old = fent_by_key(s, fo->u->name, key)) || old->fo == fo)) {
				const struct mm_rec *rec = mm_user_get(mu, key);
				if (rec && rec->type == MM_REC_MESSAGE && !strcmp(rec->msg.folder, fo->name)) {
					struct mm_body_writer *sw = staged_get(s, fo->u->name, key);
					if (sw && sw->placing) {
						/* a placement job's file, renamed in before its
						 * place_finish: the job indexes it.  Taken in here,
						 * its letters (the record's when the job began) were
						 * compared with the record's now, and a peer's
						 * change merged meanwhile looked like a client's
						 * rename of the old letters (it_daemon_crash) */
						fo->sig_unsure = true;
						continue;
					}
					struct stat st;
					if (stat(path, &st) < 0)
						continue;
					if (old && !refile_adopt(s, old, &st))
						continue; /* two different files name one message: leave this one */
					fe = fent_add(s, fo, base, name, in_cur, key, rec->msg.body, n.letters);
					if (fe) {
						set_missing(s, fo->u->name, key, NULL, NULL, false);
						/* It was placed with the record's letters (what the
						 * record said at the last commit, which came before
						 * the placement).  Other letters are a rename made
						 * here since, by a client while the daemon was down:
						 * a local change, taken in as for a known file.
						 * Renaming it back to the record's lost it on every
						 * node (it_daemon_torture).  (A remote change renamed
						 * in after the placement and lost with it is taken in
						 * too: the same values, stamped again.) */
						uint64_t placed = wanted_letters(s, fo, rec, n.letters & ~MM_MD_KW_MASK), pl;
						/* unless a commit made while it was being placed
						 * changed the record (placing_marks_put): it was
						 * placed with the letters marked then (and the
						 * unnamed ones it carries, kept above) */
						if (placed_letters_take(s, fo->u->name, key, &pl))
							placed = pl | (placed ^ wanted_letters(s, fo, rec, 0));
						if (placed != n.letters) {
							mark_file(s, fo, base);
							uint64_t un = local_letters(s, mu, fe, placed, n.letters, &kw_loaded);
							fe->letters = (n.letters & ~un) | (placed & un);
						}
						rec = mm_user_get(mu, key); /* (local_letters rewrote it) */
						if (rec && rec->type == MM_REC_MESSAGE)
							sync_file_flags(s, fe, rec);
					}
					continue;
				}
				/* Expunged here, by this node, and in a folder that shows: a file of
				 * ours moved here from another folder under its name (mv, or
				 * Dovecot's maildir_copy_preserve_filename), whose source folder a
				 * scan has just found without it: a move, so a new message here.
				 * (The crash this removes files for is a placement that raced an
				 * expunge merged from a peer, or a removal of the user's folder.) */
				bool moved = !old && rec && rec->type == MM_REC_EXPUNGED &&
				             rec->tomb.stamp.node == s->clock->node && mm_user_folder_visible(mu, fo->name);
				if (!old && rec && rec->type == MM_REC_EXPUNGED && !moved) {
					/* ours, for a message expunged before the crash: finish the expunge */
					int64_t fsz = quota_file_size(path);
					if (mm_md_unlink(fo->dir, in_cur ? "cur" : "new", name) == 0 && fsz >= 0)
						quota_note(s, fo, -fsz, -1);
					logmsg(s, MM_STORE_LOG_INFO, "removed %s: its message was expunged", path);
					continue;
				}
			}
			/* a new local delivery */
			uint32_t uid = 0;
			if (s->imap_uids) {
				if (!um.loaded) {
					um.loaded = true;
					mm_md_uidlist_read(fo->dir, uid_cb, &um);
				}
				uid = (uint32_t)(uintptr_t)hm_get(&um.m, base, strlen(base));
				if (!uid && (assign_begin(s, mu, fo, &as), as.busy)) {
					lock_left = true; /* Dovecot is listing it: see LOCK_DEFER_MS */
					continue;
				}
			}
			uint8_t body[MM_ID_LEN];
			uint64_t size = 0;
			int64_t mtime = 0;
			r = hash_file(s, path, body, &size, &mtime);
			if (r < 0) {
				if (r != -ENOENT) /* vanished meanwhile: the next scan settles it */
					logmsg(s, MM_STORE_LOG_WARNING, "cannot read %s: %s (will retry)", path, read_err(r));
				continue;
			}
			const char *kws[26];
			size_t nkw = 0;
			uint64_t unnamed = 0;
			if (n.letters & MM_MD_KW_MASK) {
				if (!kw_loaded) {
					folder_kw_read(s, fo);
					kw_loaded = true;
				}
				for (int j = 0; j < 26; j++) {
					if ((n.letters & MM_MD_KWBIT(j)) && !fo->kw.names[j])
						unnamed |= MM_MD_KWBIT(j); /* named in a moment: next scan */
					if ((n.letters & MM_MD_KWBIT(j)) && fo->kw.names[j]) {
						/* sorted insert: the CRDT wants keywords sorted and unique */
						size_t at = nkw;
						while (at > 0 && strcmp(kws[at - 1], fo->kw.names[j]) > 0) {
							kws[at] = kws[at - 1];
							at--;
						}
						kws[at] = fo->kw.names[j];
						nkw++;
					}
				}
			}
			mm_hlc created;
			int adopt = adopt_identity(s, mu, fo, body, mtime, &created, key);
			if (adopt > 0) {
				/* the same message, come from a peer before this scan: this is its file */
				const struct mm_rec *rec = mm_user_get(mu, key);
				if ((fe = fent_add(s, fo, base, name, in_cur, key, body, n.letters & ~unnamed))) {
					set_missing(s, fo->u->name, key, NULL, NULL, false);
					sync_file_flags(s, fe, rec);
				}
				continue;
			}
			if (adopt < 0)
				created = tick(s);
			if (s->imap_uids) {
				if (!uid) /* not listed by Dovecot: this node (the record's creator) lists it */
					uid = assign_uid(s, mu, fo, &as, base, name);
				if (!uid)
					fo->uid_check = true; /* listed by the next uid_pass */
			}
			uint8_t nkey[MM_KEY_LEN];
			/* into the INBOX of a user removed from the cluster: the user goes on */
			if (!strcmp(fo->name, "INBOX") && inbox_revive(s, mu, true, s->out) > 0)
				s->changes++;
			r = mm_user_deliver(mu, fo->name, body, size, mtime, mm_md_letters_to_flags(n.letters),
			                    kws, nkw, uid, created, nkey, local_effect, s, s->out);
			if (r < 0) {
				logmsg(s, MM_STORE_LOG_ERR, "cannot record delivery of %s: %s", path, strerror(-r));
				continue;
			}
			s->changes++;
			if (!fent_add(s, fo, base, name, in_cur, nkey, body, n.letters & ~unnamed)) {
				free(fresh);
				dlist_free(&l);
				hm_clear(&um.m);
				assign_done(s, fo, &as);
				return -ENOMEM;
			}
			if (++s->unsaved_new >= s->scan_commit_files && !s->in_commit) {
				/* A first scan of a big Maildir: make what is indexed so far durable
				 * now, so the dirty maps and LMDB's write transaction stay small (a
				 * million files in one commit peaked at 1.4 GB).  The folder's UID pass
				 * is still to come: its database entry must say a pass is due. */
				fo->uid_check = s->imap_uids;
				if (commit_batch(s) == 0) {
					note_scratch(s, SCAN_COMMIT_FILES);
					trim_heap(s);
				}
			}
		}
	}
	free(fresh);
	hm_clear(&um.m);
	assign_done(s, fo, &as);
	if (!lock_left)
		fo->lockwait_since = 0;
	/* files we knew that were not listed: check again (a rename during readdir can
	 * hide a file from it) before taking them as expunged */
	bool any = false;
	for (struct fent *fe = fo->files; fe; fe = fe->fnext)
		if (!fe->seen)
			any = true;
	if (any) {
		struct dlist l2 = {0};
		r = read_folder(fo->dir, &l2);
		if (r < 0) {
			dlist_free(&l2);
			dlist_free(&l);
			return r == -ENOENT ? r : 0;
		}
		for (size_t i = 0; i < l2.n; i++) {
			struct mm_md_name n;
			char base[MM_MD_NAME_MAX + 1];
			if (mm_md_name_parse(l2.v[i].name, &n) < 0)
				continue;
			struct fent *fe = fent_by_name(s, fo, &n, base);
			if (fe)
				fe->seen = true; /* moved meanwhile: the next scan reads its flags */
		}
		dlist_free(&l2);
		if (!user_still_here(s, fo->u)) {
			dlist_free(&l);
			return -ENOENT; /* unmounted during the reading: nothing was expunged */
		}
		for (struct fent *fe = fo->files, *nx; fe; fe = nx) {
			nx = fe->fnext;
			if (fe->seen)
				continue;
			uint8_t key[MM_KEY_LEN];
			memcpy(key, fe->key, MM_KEY_LEN);
			folder_note_gone(s, fo, fe->base);
			fent_remove(s, fe);
			int rr = mm_user_expunge(mu, key, tick(s), local_effect, s, s->out);
			if (rr > 0)
				s->changes++;
		}
	}
	dlist_free(&l);
	return 0;
}

/* A signature of dovecot-uidlist (0 when missing): a change made by someone else
 * (Dovecot, or a damaged or removed file) makes the next pass check the folder. */
static uint64_t uidlist_sig(const struct folder *fo)
{
	char p[PATHBUF];
	struct stat st;
	snprintf(p, sizeof p, "%s/dovecot-uidlist", fo->dir);
	if (stat(p, &st) < 0)
		return 0;
	return ((uint64_t)st.st_ino * 1000003u) ^ ((uint64_t)st.st_size << 20) ^ (uint64_t)st.st_mtim.tv_sec ^
	       ((uint64_t)st.st_mtim.tv_nsec << 32);
}

/* A folder whose cur/ changed in the last wait_ms (a new folder is deferred: see
 * scan_one_folder, at most three times that long). */
static bool folder_young(const struct folder *fo, uint64_t wait_ms)
{
	char p[PATHBUF];
	struct stat st;
	snprintf(p, sizeof p, "%s/cur", fo->dir);
	if (stat(p, &st) < 0)
		return false;
	uint64_t ct = (uint64_t)st.st_ctim.tv_sec * 1000 + (uint64_t)st.st_ctim.tv_nsec / 1000000;
	return ct + wait_ms > wall_ms();
}

void mm_store_set_new_folder_wait(struct mm_store *s, uint64_t wait_ms)
{
	s->new_folder_wait_ms = wait_ms;
}

/* A folder with at most a few messages: what Dovecot makes at a first delivery or an
 * IMAP CREATE + COPY.  A new folder full of mail (a restored backup, an import) has
 * nobody to wait for. */
static bool folder_small(const struct folder *fo)
{
	static const char *const subs[2] = {"new", "cur"};
	int n = 0;
	for (int i = 0; i < 2; i++) {
		char p[PATHBUF];
		snprintf(p, sizeof p, "%s/%s", fo->dir, subs[i]);
		DIR *d = opendir(p);
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d)) && n <= 16)
			n += e->d_name[0] != '.';
		closedir(d);
	}
	return n <= 16;
}

bool mm_store_take_lock_waits(struct mm_store *s)
{
	bool w = s->lock_waits;
	s->lock_waits = false;
	return w;
}

void mm_store_lock_waits(struct mm_store *s, void (*cb)(void *arg, const char *user, const char *folder),
                         void *arg)
{
	for (struct user *u = s->users; u; u = u->next)
		for (struct folder *fo = u->folders; fo; fo = fo->unext)
			if (fo->lockwait_since || fo->passwait_since)
				cb(arg, u->name, fo->name);
}

bool mm_store_lock_waiting(struct mm_store *s, const char *user, const char *folder)
{
	struct user *u = user_get(s, user, false);
	struct folder *fo = u ? folder_get(s, u, folder, false) : NULL;
	return fo && (fo->lockwait_since || fo->passwait_since);
}

bool mm_store_take_deferred(struct mm_store *s)
{
	bool d = s->deferred;
	s->deferred = false;
	return d;
}

/* The UIDVALIDITY Dovecot gave a folder (its dovecot-uidlist header), 0 if none. */
static uint32_t dovecot_uidvalidity(const struct folder *fo)
{
	struct mm_md_uidlist ul;
	uint32_t uv = 0;
	if (mm_md_uidlist_load(fo->dir, &ul) == 0 && ul.exists)
		uv = ul.uidvalidity;
	mm_md_uidlist_clear(&ul);
	return uv;
}

/* What new/ and cur/ look like (inode and mtime of each), taken before they are read,
 * so any change during or after the read makes a different value; 0 when unknown or
 * not to be trusted: a directory changed in the last 2 s may change again within the
 * same timestamp tick (the way Dovecot treats "dirty" maildir mtimes). */
static uint64_t dir_sig(const struct folder *fo)
{
	static const char *const subs[2] = {"new", "cur"};
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	uint64_t sig = 1469598103934665603ULL;
	for (int i = 0; i < 2; i++) {
		char p[PATHBUF];
		struct stat st;
		snprintf(p, sizeof p, "%s/%s", fo->dir, subs[i]);
		if (stat(p, &st) < 0 || st.st_mtim.tv_sec + 2 > now.tv_sec)
			return 0;
		uint64_t v[3] = {(uint64_t)st.st_ino, (uint64_t)st.st_mtim.tv_sec, (uint64_t)st.st_mtim.tv_nsec};
		for (int j = 0; j < 3; j++)
			sig = (sig ^ v[j]) * 1099511628211ULL;
	}
	return sig ? sig : 1;
}

/* 0 when the folder has both cur/ and new/; else 1 when the one it has holds an
 * entry, 2 when that one is empty (see scan_one_folder). */
static int folder_half(const struct folder *fo)
{
	static const char *const subs[2] = {"cur", "new"};
	int missing = -1;
	for (int i = 0; i < 2; i++) {
		char p[PATHBUF];
		struct stat st;
		snprintf(p, sizeof p, "%s/%s", fo->dir, subs[i]);
		if (stat(p, &st) < 0 && errno == ENOENT)
			missing = i;
	}
	if (missing < 0)
		return 0;
	char p[PATHBUF];
	snprintf(p, sizeof p, "%s/%s", fo->dir, subs[!missing]);
	DIR *d = opendir(p);
	if (!d)
		return 1;
	struct dirent *e;
	int held = 0;
	while (!held && (e = readdir(d)))
		held = strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return held ? 1 : 2;
}

/* One folder of a user: creation, removal, files.  `listed` = the directory exists. */
/* ---- a user's Maildir gone and back ----------------------------------------------------- */

/* The user's Maildir is back after an absence, or is another directory than the one
 * the index describes (removed and made again while the daemon was stopped): brings
 * the index and the disk in line with the CRDT without a single expunge or local
 * change.  Each folder's directory is read once:
 * - a file the index lists and the disk lacks is not held here any more: its message
 *   is missing, and fetched again from the peers (or copied from a file here);
 * - a file found under another name (other flags: a restored copy) is indexed under
 *   it, and then renamed to the record's flags, as is one whose flags changed
 *   elsewhere meanwhile;
 * - a file whose message was expunged elsewhere meanwhile is removed;
 * - folders visible in the CRDT are made again where missing (empty ones too), and
 *   ones deleted elsewhere meanwhile are removed at the commit.
 * Scans that follow find nothing gone. */
static void user_reconcile(struct mm_store *s, struct user *u, struct mm_user *mu)
{
	size_t gone = 0, removed = 0;
	for (struct folder *fo = u->folders; fo; fo = fo->unext) {
		if (folder_files(s, fo) < 0)
			continue; /* (out of memory: the entries stay as they are) */
		struct dlist l = {0};
		int r = read_folder(fo->dir, &l);
		if (r < 0 && r != -ENOENT) {
			dlist_free(&l); /* cannot be read: nothing may be concluded */
			continue;
		}
		for (struct fent *fe = fo->files; fe; fe = fe->fnext)
			fe->seen = false;
		for (size_t i = 0; i < l.n; i++) {
			struct mm_md_name n;
			char base[MM_MD_NAME_MAX + 1], nb[MM_MD_NAME_MAX + 1];
			struct fent *fe = mm_md_name_parse(l.v[i].name, &n) == 0 ? fent_by_name(s, fo, &n, base) : NULL;
			if (!fe)
				continue; /* not indexed: the scan's business (a delivery) */
			fe->seen = true;
			if (!strcmp(fent_name(s, fe, nb), l.v[i].name) && fe->in_cur == l.v[i].in_cur)
				continue;
			if (fent_set_name(s, fe, l.v[i].name) < 0)
				continue;
			fe->in_cur = l.v[i].in_cur;
			fe->letters = n.letters; /* what the disk shows, not a change made here */
			mark_file(s, fo, base);
		}
		dlist_free(&l);
		for (struct fent *fe = fo->files, *nx; fe; fe = nx) {
			nx = fe->fnext;
			const struct mm_rec *rec = mm_user_get(mu, fe->key);
			bool live = rec && rec->type == MM_REC_MESSAGE;
			if (fe->seen && live) {
				sync_file_flags(s, fe, rec);
				continue;
			}
			if (fe->seen) {
				char p[PATHBUF];
				int64_t fsz = fent_path(s, fe, p, sizeof p) == 0 ? quota_file_size(p) : -1;
				int rr = expunged_file_remove(s, fe, NULL);
				if (rr == 0) {
					removed++;
					if (fsz >= 0)
						quota_note(s, fe->fo, -fsz, -1);
				} else if (rr != -ENOENT) {
					logmsg(s, MM_STORE_LOG_WARNING, "cannot unlink expunged %s: %s (retried)", p, strerror(-rr));
					dead_note(s, u->name, fe->key);
					continue;
				}
			} else {
				gone++;
			}
			uint8_t key[MM_KEY_LEN];
			memcpy(key, fe->key, MM_KEY_LEN);
			folder_note_gone(s, fo, fe->base);
			fent_remove(s, fe);
			if (live)
				set_missing(s, u->name, key, rec->msg.body, rec->msg.folder, true);
		}
		bool visible = mm_user_folder_visible(mu, fo->name), there = mm_md_is_maildir(fo->dir);
		if (visible && !there) {
			uint8_t fk[MM_KEY_LEN];
			mm_key_folder(fo->name, fk);
			fo->on_disk = false; /* (folder_ensure makes it whatever it was) */
			folder_ensure(s, fo, mm_user_get(mu, fk));
		} else if (!visible && there) {
			/* deleted elsewhere meanwhile (INBOX: the user removed from the cluster):
			 * removed at the commit */
			fo->on_disk = true;
			fo->check = true;
			mark_folder(s, fo);
		} else if (!there && fo->on_disk && strcmp(fo->name, "INBOX")) {
			fo->on_disk = false;
			mark_folder(s, fo);
		}
		fo->uid_check = s->imap_uids;
	}
	/* a removal that came meanwhile: retired, or revived for mail it did not take
	 * (mirror_deferred) */
	struct folder *inbox = folder_get(s, u, "INBOX", false);
	if (inbox)
		inbox->check = true;
	/* Messages that came while it was away, and those just found gone: a file here
	 * may hold their bytes (a COPY elsewhere), copied at the commit; else fetched. */
	struct keylist kl;
	if (hm_keys(&s->missing, &kl) == 0) {
		size_t ul = strlen(u->name);
		for (size_t i = 0; i < kl.n; i++)
			if (kl.v[i]->kl == ul + 1 + MM_KEY_LEN && !memcmp(kl.v[i]->k, u->name, ul + 1))
				add_pending(s, u->name, (const uint8_t *)kl.v[i]->k + ul + 1);
		keylist_free(&kl);
	}
	u->subs_dirty = true; /* its subscriptions file, from the CRDT */
	u->subs_crdt = true;
	logmsg(s, MM_STORE_LOG_INFO,
	       "Maildir %s of %s is back: %zu messages it lacks are fetched again from the peers, "
	       "%zu files of messages expunged meanwhile removed", u->path, u->name, gone, removed);
}

/* Whether the user's Maildir is there for a scan to act on: 0 no, 1 yes, 2 yes and
 * just reconciled (then its subscriptions file is the CRDT's to write, not a change
 * to read).  A known user's Maildir that is not there makes the user absent (nothing
 * done: an unmounted disk or an rm -rf must not expunge everything, here and on every
 * peer).  One that is back, or is another directory than the index's, is reconciled
 * first (user_reconcile). */
static int user_present(struct mm_store *s, struct user *u, struct mm_user *mu)
{
	struct folder *inbox = folder_get(s, u, "INBOX", false);
	if (!mm_md_is_maildir(u->path)) {
		if (user_known(u))
			user_absent(s, u);
		return 0;
	}
	uint64_t id = dir_identity(u->path);
	bool anew = inbox && inbox->on_disk && inbox->root_id && id && id != inbox->root_id;
	int ret = 1;
	if (u->absent || anew) {
		/* a user removed from the cluster while its Maildir was away: the same
		 * directory back is removed (user_reconcile, then users_retire); another one
		 * is a new user of that name (its old files, a backup restored, still go) */
		bool fresh = anew && user_removed(mu);
		if (anew && !fresh)
			logmsg(s, MM_STORE_LOG_WARNING, "Maildir %s of %s is not the directory this node "
			       "indexed (removed and made again?): what it lacks is fetched again, not expunged",
			       u->path, u->name);
		u->absent = false; /* (before: folder_ensure writes for present users only) */
		u->absent_logged = false;
		if (inbox)
			mark_folder(s, inbox);
		s->wants_commit = true;
		user_reconcile(s, u, mu);
		if (fresh) {
			inbox->on_disk = false; /* a new INBOX for the scan to make */
			inbox->check = false;
			inbox->remove_failed = false;
			mark_folder(s, inbox);
		}
		ret = 2;
	}
	if (inbox && id && inbox->root_id != id) {
		inbox->root_id = id;
		mark_folder(s, inbox);
	}
	return ret;
}

static int scan_one_folder(struct mm_store *s, struct user *u, struct mm_user *mu, const char *name,
                           bool listed)
{
	struct folder *fo = folder_get(s, u, name, listed);
	if (!fo)
		return listed ? -ENOMEM : 0;
	if (listed) {
		uint64_t now = wall_ms();
		if (s->imap_uids && s->new_folder_wait_ms && !mm_user_folder_visible(mu, name) &&
		    (!fo->deferred_since || now < fo->deferred_since + 3 * s->new_folder_wait_ms) &&
		    folder_young(fo, s->new_folder_wait_ms) && folder_small(fo) && !dovecot_uidvalidity(fo)) {
			/* Just made, holding a few messages at most, not numbered yet:
			 * Dovecot may be about to write its uidlist (an IMAP CREATE followed by
			 * a COPY, a first delivery).  Its
			 * UIDVALIDITY is the one to replicate; a record made now would carry
			 * another and one of the two would have to reset its index. */
			s->deferred = true;
			if (!fo->deferred_since)
				fo->deferred_since = now;
			return 0;
		}
		fo->deferred_since = 0; /* (waited for, or not to wait for: made again later, it waits again) */
		/* Half a Maildir (cur/ or new/ missing) that holds nothing: a delete cut
		 * short or running, or a folder being made one directory at a time.  Not a
		 * folder of the mailbox: left alone until it is whole or gone (made one now,
		 * it would bring a deleted folder back everywhere).  One holding messages:
		 * scan_files.  A folder deleted elsewhere and kept here because it is not
		 * empty (a file in tmp/): not made again, its removal is retried (a message
		 * file found in it is a delivery, which makes the folder visible again).
		 * Nor one deleted elsewhere whose directory the next commit removes
		 * (fo->check): the merge unlinked its files at once, and their watch events
		 * bring this scan before that commit, which once took the emptied directory
		 * for a folder made here and brought a folder deleted or renamed over IMAP
		 * back, empty, on every node. */
		bool visible = mm_user_folder_visible(mu, name);
		if (!visible && strcmp(name, "INBOX") && folder_half(fo) == 2)
			return 0;
		/* (INBOX of a removed user: kept until users_retire removes it, also after a
		 * restart, or the scan would make it again on every node) */
		bool kept = !visible && fo->on_disk &&
		            (fo->remove_failed || fo->check || (!strcmp(name, "INBOX") && user_removed(mu)));
		if (visible)
			fo->remove_failed = false;
		if (kept)
			fo->check = true;
		if (!fo->on_disk) {
			fo->on_disk = true;
			mark_folder(s, fo);
		}
		if (!visible && !kept) {
			/* a folder Dovecot made and numbered before we saw it: every replica
			 * shows the UIDVALIDITY its clients here already know */
			uint32_t uv = s->imap_uids ? dovecot_uidvalidity(fo) : 0;
			int r = uv ? mm_user_folder_renew(mu, name, tick(s), uv, local_effect, s, s->out)
			           : mm_user_folder_create(mu, name, tick(s), local_effect, s, s->out);
			if (r > 0)
				s->changes++;
		}
		/* At a start, a folder whose directories are as they were when the index last
		 * matched them is not read again (a million file names); later scans read
		 * everything, so what mtimes cannot show (a touched file) is caught by the
		 * periodic rescan. */
		uint64_t sig = dir_sig(fo);
		int r = 0;
		if (!(s->trust_dirs && sig && sig == fo->dir_sig)) {
			fo->sig_unsure = false;
			r = scan_files(s, fo, mu);
			if (fo->sig_unsure)
				sig = 0; /* (unknown: the job's files are not in the index yet) */
			if (r == 0 && sig != fo->dir_sig) {
				fo->dir_sig = sig;
				mark_folder(s, fo);
			}
		}
		/* a changed uidlist, or none yet (a new folder: its header must carry the
		 * replicated UIDVALIDITY before Dovecot writes one from its clock) */
		if (r == 0 && (uidlist_sig(fo) != fo->uid_sig || !fo->uid_sig))
			fo->uid_check = true;
		if (r != -ENOENT)
			return r == -ENOMEM ? r : 0;
		/* vanished between listing and reading: fall through to removal */
	}
	if (!fo->on_disk || mm_md_is_maildir(fo->dir) || !strcmp(name, "INBOX"))
		return 0;
	/* cannot be looked at (permissions, I/O), the directory or its cur/ or new/: not
	 * gone (mm_md_is_maildir says no on any error) */
	static const char *const parts[3] = {"", "/cur", "/new"};
	for (int i = 0; i < 3; i++) {
		char p[PATHBUF];
		struct stat st;
		snprintf(p, sizeof p, "%s%s", fo->dir, parts[i]);
		if (stat(p, &st) < 0 && errno != ENOENT && errno != ENOTDIR)
			return 0;
	}
	if (!user_still_here(s, u))
		return 0; /* the whole Maildir gone meanwhile (unmounted): not a delete */
	/* the folder's directory is gone: a local delete */
	if (folder_files(s, fo) < 0)
		return 0; /* the next scan tries again */
	for (struct fent *fe = fo->files, *nx; fe; fe = nx) {
		nx = fe->fnext;
		uint8_t key[MM_KEY_LEN];
		memcpy(key, fe->key, MM_KEY_LEN);
		fent_remove(s, fe);
		if (mm_user_expunge(mu, key, tick(s), local_effect, s, s->out) > 0)
			s->changes++;
	}
	fo->on_disk = false;
	mark_folder(s, fo);
	if (mm_user_folder_delete(mu, name, tick(s), local_effect, s, s->out) > 0)
		s->changes++;
	return 0;
}

static int namelist_add(void *arg, const char *name)
{
	struct namelist *l = arg;
	if (!name_ok(name))
		return 0;
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 16;
		char **nv = realloc(l->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = nc;
	}
	if (!(l->v[l->n] = strdup(name)))
		return -ENOMEM;
	l->n++;
	return 0;
}

static void namelist_free(struct namelist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static bool namelist_has(const struct namelist *l, const char *name)
{
	for (size_t i = 0; i < l->n; i++)
		if (!strcmp(l->v[i], name))
			return true;
	return false;
}

/* Returns 0, or < 0 when the file could not be read (nothing was taken in). */
static int scan_subscriptions(struct mm_store *s, struct user *u, struct mm_user *mu)
{
	struct namelist subs = {0};
	int r = mm_md_subs_read(u->path, namelist_add, &subs);
	if (r < 0) {
		logmsg(s, MM_STORE_LOG_WARNING, "cannot read %s/subscriptions: %s", u->path, read_err(r));
		namelist_free(&subs);
		return r;
	}
	bool unsub = false;
	for (struct folder *fo = u->folders; fo; fo = fo->unext)
		if (fo->subscribed && !namelist_has(&subs, fo->name))
			unsub = true;
	if (unsub && !user_still_here(s, u)) {
		namelist_free(&subs); /* read while the Maildir was going away: no file */
		return -ENOENT;
	}
	for (size_t i = 0; i < subs.n; i++) {
		struct folder *fo = folder_get(s, u, subs.v[i], true);
		if (fo && !fo->subscribed) {
			fo->subscribed = true;
			mark_folder(s, fo);
			if (mm_user_folder_subscribe(mu, fo->name, true, tick(s), local_effect, s, s->out) > 0)
				s->changes++;
		}
	}
	for (struct folder *fo = u->folders; fo; fo = fo->unext)
		if (fo->subscribed && !namelist_has(&subs, fo->name)) {
			fo->subscribed = false;
			mark_folder(s, fo);
			if (mm_user_folder_subscribe(mu, fo->name, false, tick(s), local_effect, s, s->out) > 0)
				s->changes++;
		}
	namelist_free(&subs);
	return 0;
}

static int scan_user(struct mm_store *s, struct user *u)
{
	struct mm_user *mu = mm_state_user(s->state, u->name, true);
	if (!mu)
		return -ENOMEM;
	int present = user_present(s, u, mu);
	if (!present)
		return 0;
	if (!u->owner_known && mm_md_owner_of(u->path, &u->owner) == 0)
		u->owner_known = true;
	struct namelist disk = {0};
	int r = mm_md_folder_list(u->path, namelist_add, &disk);
	if (r < 0) {
		namelist_free(&disk);
		if (!u->gone_logged)
			logmsg(s, MM_STORE_LOG_WARNING, "Maildir %s of %s cannot be read (%s): left alone",
			       u->path, u->name, strerror(-r));
		u->gone_logged = true;
		return r == -ENOMEM ? r : 0;
	}
	u->gone_logged = false;
	for (size_t i = 0; i < disk.n && r >= 0; i++)
		r = scan_one_folder(s, u, mu, disk.v[i], true);
	/* folders we saw before that are not listed now */
	struct namelist gone = {0};
	for (struct folder *fo = u->folders; fo; fo = fo->unext)
		if (fo->on_disk && !namelist_has(&disk, fo->name))
			namelist_add(&gone, fo->name);
	for (size_t i = 0; i < gone.n && r >= 0; i++)
		r = scan_one_folder(s, u, mu, gone.v[i], false);
	namelist_free(&gone);
	namelist_free(&disk);
	if (r >= 0 && present == 1)
		scan_subscriptions(s, u, mu);
	struct folder *inbox = folder_get(s, u, "INBOX", false);
	if (inbox && inbox->on_disk && !inbox->root_id && (inbox->root_id = dir_identity(u->path)))
		mark_folder(s, inbox); /* a user new here: what user_present compares with */
	return r < 0 ? r : 0;
}

static int walk_user_cb(void *arg, const char *name, const char *path)
{
	struct mm_store *s = arg;
	(void)path;
	struct user *u = user_get(s, name, true);
	if (!u)
		return 0;
	u->walk_gen = s->walk_gen;
	int r = scan_user(s, u);
	return r == -ENOMEM ? r : 0;
}

static int walk_odd_cb(void *arg, const char *path)
{
	logmsg(arg, MM_STORE_LOG_WARNING, "%s matches mail_location but is not a readable Maildir: skipped", path);
	return 0;
}

static void uid_pass(struct mm_store *s);
static void fidx_idle(struct mm_store *s);

int mm_store_scan(struct mm_store *s, uint64_t now_ms, struct mm_delta *out)
{
	s->now_ms = now_ms;
	s->out = out;
	s->changes = 0;
	s->walk_gen++;
	int r = mm_mailloc_walk(s->loc, walk_user_cb, NULL, walk_odd_cb, s);
	/* known users the walk did not find: gone (an unmounted disk shows none) */
	for (struct user *u = s->users; r >= 0 && u; u = u->next)
		if (u->walk_gen != s->walk_gen && (!u->absent || !u->absent_logged))
			user_gone(s, u); /* (absent from the index at a start: said once again) */
	s->trust_dirs = false; /* only the first scan after open */
	if (r >= 0)
		uid_pass(s);
	s->out = NULL;
	fidx_idle(s);
	return r < 0 ? r : s->changes;
}

int mm_store_scan_folder(struct mm_store *s, const char *user, const char *folder,
                         uint64_t now_ms, struct mm_delta *out)
{
	struct user *u = user_get(s, user, true);
	if (!u || !name_ok(folder))
		return -EINVAL;
	struct mm_user *mu = mm_state_user(s->state, user, true);
	if (!mu)
		return -ENOMEM;
	char dir[PATHBUF];
	if (mm_md_folder_path(dir, sizeof dir, u->path, folder) < 0)
		return -EINVAL;
	s->now_ms = now_ms;
	s->out = out;
	s->changes = 0;
	if (!user_present(s, u, mu)) { /* a folder scan must not act on an absent user */
		s->out = NULL;
		return 0;
	}
	int r = scan_one_folder(s, u, mu, folder, mm_md_is_maildir(dir));
	if (r >= 0)
		uid_pass(s);
	s->out = NULL;
	fidx_idle(s);
	return r < 0 ? r : s->changes;
}

/* ---- watch list ------------------------------------------------------------------------------ */

struct watch_ctx {
	int (*cb)(void *, const char *, const char *, const char *);
	void *arg;
};

static int watch_dir_cb(void *arg, const char *path)
{
	struct watch_ctx *w = arg;
	return w->cb(w->arg, path, NULL, NULL);
}

static int watch_pend_cb(void *arg, const char *dir, const char *name)
{
	struct watch_ctx *w = arg;
	return w->cb(w->arg, dir, NULL, name);
}

int mm_store_watch_dirs(struct mm_store *s,
                        int (*cb)(void *arg, const char *path, const char *user, const char *folder),
                        void *arg)
{
	/* The users' Maildirs and folders first, the places where one is awaited (every
	 * home without a Maildir, for ~/Maildir) after them: if fs.inotify's watch limit
	 * is reached, the directories where mail is lose their watches last. */
	struct watch_ctx w = {cb, arg};
	int r;
	char p[PATHBUF];
	for (struct user *u = s->users; u; u = u->next) {
		if (!mm_md_is_maildir(u->path))
			continue;
		if ((r = cb(arg, u->path, u->name, NULL)))
			return r;
		for (struct folder *fo = u->folders; fo; fo = fo->unext) {
			if (!fo->on_disk)
				continue;
			snprintf(p, sizeof p, "%s/new", fo->dir);
			if ((r = cb(arg, p, u->name, fo->name)))
				return r;
			snprintf(p, sizeof p, "%s/cur", fo->dir);
			if ((r = cb(arg, p, u->name, fo->name)))
				return r;
		}
	}
	return mm_mailloc_walk_watch(s->loc, NULL, watch_dir_cb, watch_pend_cb, NULL, &w);
}

/* ---- bodies ------------------------------------------------------------------------------------- */

int mm_store_body_open(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN],
                       int *fd_r, uint64_t *size_r)
{
	fidx_idle(s); /* serving a joiner reads every entry, with no commit in between */
	struct fent *fe = fent_by_key(s, user, key);
	if (!fe)
		return -ENOENT;
	char p[PATHBUF];
	for (int attempt = 0; attempt < 2; attempt++) {
		if (fent_path(s, fe, p, sizeof p) < 0)
			return -ENAMETOOLONG;
		struct stat st;
		int fd = open_message(p, &st);
		if (fd >= 0) {
			*fd_r = fd;
			*size_r = (uint64_t)st.st_size;
			return 0;
		}
		if (fd != -ENOENT || attempt || fent_relocate(s, fe) < 0)
			return fd;
	}
	return -ENOENT;
}

int mm_store_body_have_id(struct mm_store *s, const char *user, const uint8_t id[MM_ID_LEN])
{
	fidx_idle(s);
	return fent_by_body(s, user, id) != NULL;
}

int mm_store_body_open_id(struct mm_store *s, const char *user, const uint8_t id[MM_ID_LEN],
                          int *fd_r, uint64_t *size_r)
{
	struct fent *fe = fent_by_body(s, user, id);
	if (!fe)
		return -ENOENT;
	uint8_t key[MM_KEY_LEN];
	memcpy(key, fe->key, MM_KEY_LEN);
	return mm_store_body_open(s, user, key, fd_r, size_r);
}

static int body_begin(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN], unsigned flags,
                      struct mm_body_writer **w_r);

int mm_store_body_begin_id(struct mm_store *s, const char *user, const uint8_t id[MM_ID_LEN],
                           uint64_t size, unsigned flags, struct mm_body_writer **w_r)
{
	*w_r = NULL;
	char k[KBUF];
	size_t kl = k_ub(k, user, id, MM_ID_LEN);
	if (mm_store_body_have_id(s, user, id)) {
		/* Messages still waiting for bytes the user has (their copy was never
		 * queued, e.g. missing since before a restart): copy them at the commit. */
		for (struct miss *m = hm_get(&s->missing_body, k, kl); m; m = m->bnext)
			add_pending(s, user, m->key);
		return -EEXIST;
	}
	struct mm_user *mu = mm_state_user(s->state, user, false);
	for (struct miss *m = hm_get(&s->missing_body, k, kl); m && mu; m = m->bnext) {
		const struct mm_rec *r = mm_user_get(mu, m->key);
		if (!r || r->type != MM_REC_MESSAGE || staged_get(s, user, m->key))
			continue;
		if (r->msg.size != size)
			return -EINVAL;
		uint8_t key[MM_KEY_LEN];
		memcpy(key, m->key, MM_KEY_LEN);
		return body_begin(s, user, key, flags, w_r);
	}
	return -ENOENT;
}

bool mm_store_body_needed_id(struct mm_store *s, const char *user, const uint8_t id[MM_ID_LEN])
{
	if (mm_store_body_have_id(s, user, id))
		return false;
	char k[KBUF];
	size_t kl = k_ub(k, user, id, MM_ID_LEN);
	struct mm_user *mu = mm_state_user(s->state, user, false);
	for (struct miss *m = hm_get(&s->missing_body, k, kl); m && mu; m = m->bnext) {
		const struct mm_rec *r = mm_user_get(mu, m->key);
		if (r && r->type == MM_REC_MESSAGE && !staged_get(s, user, m->key))
			return true;
	}
	return false;
}

static void make_base(char *buf, size_t len, const struct mm_rec *r)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	char hex[2 * MM_KEY_LEN + 1];
	sodium_bin2hex(hex, sizeof hex, r->key, MM_KEY_LEN);
	snprintf(buf, len, "%lld.M%ldP%ld.mm_%s,S=%llu", (long long)r->msg.internaldate,
	         (long)tv.tv_usec, (long)getpid(), hex, (unsigned long long)r->msg.size);
}

int mm_store_body_begin(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN],
                        struct mm_body_writer **w_r)
{
	return body_begin(s, user, key, 0, w_r);
}

static int body_begin(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN], unsigned flags,
                      struct mm_body_writer **w_r)
{
	*w_r = NULL;
	struct mm_user *mu = mm_state_user(s->state, user, false);
	const struct mm_rec *r = mu ? mm_user_get(mu, key) : NULL;
	if (!r || r->type != MM_REC_MESSAGE)
		return -ENOENT;
	if (fent_by_key(s, user, key) || staged_get(s, user, key))
		return -EEXIST;
	struct user *u = user_get(s, user, true);
	if (!u)
		return -EINVAL;
	struct folder *fo = folder_get(s, u, r->msg.folder, true);
	if (!fo)
		return -EINVAL;
	int rr = folder_ensure_recent(s, fo);
	if (rr < 0)
		return rr;
	struct mm_body_writer *w = calloc(1, sizeof(*w));
	if (!w || !(w->user = strdup(user))) {
		free(w);
		return -ENOMEM;
	}
	w->s = s;
	w->fo = fo;
	memcpy(w->key, key, MM_KEY_LEN);
	char mk[KBUF];
	struct miss *m = hm_get(&s->missing, mk, k_ub(mk, user, key, MM_KEY_LEN));
	if (m && m->listed) /* listed under its UID already: that name, or the UID is lost */
		snprintf(w->base, sizeof w->base, "%s", m->listed);
	else
		make_base(w->base, sizeof w->base, r);
	w->verified = (flags & MM_STORE_BODY_VERIFIED) != 0;
	if (!w->verified)
		crypto_generichash_init(&w->h, NULL, 0, MM_ID_LEN);
	if ((flags & MM_STORE_BODY_DEFER) && (w->buf = malloc(r->msg.size ? r->msg.size : 1))) {
		w->cap = r->msg.size;
		w->fd = -1;
		*w_r = w;
		return 0;
	}
	w->fd = mm_md_tmp_open(fo->dir, w->base, &u->owner);
	if (w->fd == -ENOENT && folder_ensure(s, fo, NULL) == 0)
		w->fd = mm_md_tmp_open(fo->dir, w->base, &u->owner); /* removed by hand meanwhile */
	if (w->fd < 0) {
		rr = w->fd;
		logmsg(s, MM_STORE_LOG_ERR, "cannot create %s/tmp/%s: %s", fo->dir, w->base, strerror(-rr));
		free(w->user);
		free(w);
		return rr;
	}
	*w_r = w;
	return 0;
}

int mm_store_body_write(struct mm_body_writer *w, const void *data, size_t len)
{
	if (w->err)
		return w->err;
	const char *p = data;
	if (!w->verified)
		crypto_generichash_update(&w->h, data, len);
	if (w->buf) {
		if (w->n + len <= w->cap) /* more than the record says: the check refuses it */
			memcpy(w->buf + w->n, data, len);
		w->n += len;
		return 0;
	}
	w->n += len;
	while (len) {
		ssize_t n = write(w->fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			w->err = -errno;
			logmsg(w->s, MM_STORE_LOG_ERR, "writing %s/tmp/%s: %s (will retry)", w->fo->dir, w->base,
			       strerror(errno));
			return w->err;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* A deferred writer's buffer holds a whole body as it came off the network: wiped
 * before it goes back to the allocator, as the transport's buffers are (only the bytes
 * written; w->n may pass cap, and then nothing past cap was copied). */
static void writer_buf_free(struct mm_body_writer *w)
{
	if (w->buf)
		sodium_memzero(w->buf, (size_t)(w->n < w->cap ? w->n : w->cap));
	free(w->buf);
	w->buf = NULL;
}

static void writer_free(struct mm_body_writer **wp, bool unlink_tmp)
{
	struct mm_body_writer *w = *wp;
	if (w->fd >= 0)
		close(w->fd);
	if (unlink_tmp) {
		char p[PATHBUF];
		snprintf(p, sizeof p, "%s/tmp/%s", w->fo->dir, w->base);
		unlink(p);
	}
	free(w->user);
	writer_buf_free(w);
	free(w->dir);
	sodium_memzero(&w->h, sizeof w->h);
	free(w);
	*wp = NULL;
}

void mm_store_body_abort(struct mm_body_writer **wp)
{
	if (wp && *wp)
		writer_free(wp, true);
}

static bool rec_dirty(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN])
{
	char k[KBUF];
	size_t kl = k_ub(k, user, key, MM_KEY_LEN);
	return hm_get(&s->dirty_recs, k, kl) != NULL;
}


/* Staged bodies: complete, verified files in tmp/ that wait for mm_store_flush (or the
 * next commit) to be placed, so that a batch of bodies costs one LMDB commit, one
 * syncfs (or an fdatasync per file, their writeback started together), one uidlist
 * write and one fsync per directory, instead of all of them per body.  A staged file
 * is sealed (its mtime set, writeback started) and closed at once, so a batch holds
 * no descriptors; STAGE_MAX_FILES bounds its memory and the time one placement takes. */
#define STAGE_MAX_FILES 2048
#define SYNCFS_MIN_FILES 8

/* Checks a complete body against its record.  1: it matches and the message still
 * wants it; 0: nothing to do (expunged or written meanwhile); negative errno.  On
 * anything but 1 the writer is freed and its tmp file removed. */
static int writer_check(struct mm_body_writer **wp)
{
	struct mm_body_writer *w = *wp;
	struct mm_store *s = w->s;
	if (w->err) {
		int e = w->err;
		writer_free(wp, true);
		return e;
	}
	struct mm_user *mu = mm_state_user(s->state, w->user, false);
	const struct mm_rec *r = mu ? mm_user_get(mu, w->key) : NULL;
	if (!r || r->type != MM_REC_MESSAGE || fent_by_key(s, w->user, w->key)) {
		writer_free(wp, true); /* expunged (or written) meanwhile: nothing to do */
		return 0;
	}
	if (w->prepared)
		return 1; /* verified before it was written out */
	uint8_t id[MM_ID_LEN];
	if (w->verified) /* the caller matched the bytes to r->msg.body (begin_id's id) */
		memcpy(id, r->msg.body, MM_ID_LEN);
	else
		crypto_generichash_final(&w->h, id, MM_ID_LEN);
	if (w->n != r->msg.size || sodium_memcmp(id, r->msg.body, MM_ID_LEN) != 0) {
		logmsg(s, MM_STORE_LOG_WARNING, "body received for %s in %s does not match its id: dropped",
		       w->user, w->fo->dir);
		writer_free(wp, true);
		return -EBADMSG;
	}
	return 1;
}

static void drop_list(struct mm_body_writer *list)
{
	for (struct mm_body_writer *w = list, *nx; w; w = nx) {
		nx = w->snext;
		writer_free(&w, true);
	}
}

/* imap_uids: a replica lists bodies in the order of their UIDs, because an IMAP UID
 * can only be added at or above the folder's NEXTUID: a body whose UID is above the
 * folder's NEXTUID here, while other bodies of the folder are still missing (one may
 * carry a lower UID), is held in tmp/ (sealed, its record durable) until they have
 * arrived or no body at all arrived for HOLD_MS (a join fetches folder after folder);
 * then the folder's held bodies are placed in UID order.  Without this, a node joining with a full mailbox would
 * list bodies in arrival order and ask the authority to move most of them. */
#define HOLD_MS 30000

/* imap_uids: a message's first UID is the one its origin's Dovecot gives it (the
 * origin lists the file, then records the UID: a few milliseconds after the record
 * itself went out).  A replica that placed such a body at once would have to number
 * it itself, and its number, written later, would win over the origin's: the
 * origin's IMAP clients would see the message change UID.  So a replica holds a body
 * whose record has no UID yet and was created on another node, until the UID comes
 * or for FIRST_UID_WAIT_MS (an origin without imap_uids, or one that went away,
 * never sends one: then this node numbers it). */
#define FIRST_UID_WAIT_MS 2000

/* Whether w, not yet listed, should wait for its record's first UID (see above);
 * starts its wait on first call. */
static bool wait_first_uid(struct mm_store *s, struct mm_body_writer *w, const struct mm_rec *r, uint64_t now)
{
	if (!s->imap_uids || r->msg.uid_value || r->msg.created.node == s->clock->node)
		return false;
	if (!w->first_wait_ms)
		w->first_wait_ms = now ? now : 1;
	return now - w->first_wait_ms < FIRST_UID_WAIT_MS;
}

static int w_order_cmp(const void *a, const void *b)
{
	const struct mm_body_writer *x = *(const struct mm_body_writer *const *)a;
	const struct mm_body_writer *y = *(const struct mm_body_writer *const *)b;
	if (x->fo != y->fo)
		return (uintptr_t)x->fo < (uintptr_t)y->fo ? -1 : 1;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

static int hold_body(struct mm_store *s, struct mm_body_writer *w)
{
	struct folder *fo = w->fo;
	if (fo->n_held == fo->cap_held) {
		size_t nc = fo->cap_held ? fo->cap_held * 2 : 16;
		struct mm_body_writer **nv = realloc(fo->held, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		fo->held = nv;
		fo->cap_held = nc;
	}
	char k[KBUF];
	size_t kl = k_ub(k, w->user, w->key, MM_KEY_LEN);
	if (hm_put(&s->staged_keys, k, kl, w) < 0)
		return -ENOMEM;
	fo->held[fo->n_held++] = w;
	s->n_held++;
	w->held = true;
	return 0;
}

/* Lists the group's bodies under their UIDs in *ul (lock held by the caller), for one
 * dovecot-uidlist write: each UID at or above NEXTUID and free.  listed[i] says which.
 * Returns whether *ul is to be written (by place_run, before the renames); the caller
 * clears *ul either way. */
static bool uid_preinstall_group(struct mm_user *mu, struct folder *fo,
                                 struct mm_body_writer **v, const char (*names)[MM_MD_NAME_MAX + 1],
                                 size_t n, bool *listed, struct mm_md_uidlist *ul)
{
	memset(ul, 0, sizeof(*ul));
	const struct mm_rec *frec = uid_folder_rec(mu, fo->name);
	if (!frec)
		return false;
	bool dirty = false;
	if (mm_md_uidlist_load(fo->dir, ul) == 0 && (ul->uidvalidity == frec->folder.uidvalidity || !ul->exists)) {
		dirty = uid_header(ul, fo->u->name, frec);
		for (size_t i = 0; i < n; i++) {
			uint32_t uid = v[i]->uid;
			if (!v[i]->err && !v[i]->held && uid && uid >= ul->next_uid && mm_md_uidlist_index(ul, uid) < 0 &&
			    mm_md_uidlist_add(ul, uid, names[i]) == 0)
				listed[i] = dirty = true;
		}
	}
	fo->uid_next = ul->next_uid;
	return dirty;
}

/* Places the checked bodies of `list`, whose records the caller made durable: every
 * file's contents and mtime are made durable first (their writeback was started when
 * they were staged), then each is linked into new/ or cur/ (with imap_uids: per
 * folder in UID order, listed in one uidlist write, some held back: see HOLD_MS;
 * force places them all), then each directory that got a name is synced once.  A
 * body that cannot be placed stays missing (the daemon asks for it again).  Frees
 * the writers it does not hold.  Returns the number placed, or the first error when
 * none was. */
static struct mm_body_writer *unhold_folder(struct mm_store *s, struct folder *fo, struct mm_body_writer *list)
{
	for (size_t i = fo->n_held; i-- > 0;) {
		struct mm_body_writer *w = fo->held[i];
		char k[KBUF];
		size_t kl = k_ub(k, w->user, w->key, MM_KEY_LEN);
		hm_del(&s->staged_keys, k, kl);
		w->held = false;
		w->snext = list;
		list = w;
	}
	s->n_held -= fo->n_held;
	fo->n_held = 0;
	return list;
}

/* A placed file raises a watch event that would have its folder scanned (reading the
 * whole directory, then a UID pass over every file of the folder): during a join,
 * once per batch, work that grows with the folder (a profile of a 40,000-message join
 * found 31 % of the loop thread there).  Its path is remembered until that event
 * comes (mm_store_own_event).  The set is bounded: past PLACED_MAX it is emptied,
 * and the events of what it forgot just cause scans, as before. */
#define PLACED_MAX 65536

static void note_placed(struct mm_store *s, struct folder *fo, const char *sub, const char *name)
{
	char p[PATHBUF];
	int n = snprintf(p, sizeof p, "%s/%s/%s", fo->dir, sub, name);
	if (n < 0 || (size_t)n >= sizeof p)
		return;
	if (s->placed.n >= PLACED_MAX)
		hm_clear(&s->placed);
	(void)hm_put(&s->placed, p, (size_t)n, fo); /* (no memory: its event scans) */
}

bool mm_store_own_event(struct mm_store *s, const char *dir, const char *name)
{
	char p[PATHBUF];
	int n = snprintf(p, sizeof p, "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= sizeof p || !hm_del(&s->placed, p, (size_t)n))
		return false;
	/* still there: nothing but the placement happened to it (a move or an unlink by
	 * Dovecot meanwhile raises its own events, and this check fails) */
	struct stat st;
	return lstat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* A batch of bodies being placed.  place_prepare builds it on the store's thread
 * (holds, names, UIDs listed in dovecot-uidlist under its lock); place_run does the
 * file work, most of a placement's time (the sync that makes the files durable, a
 * rename each, the directory syncs), and touches only the job, its writers' names and
 * the filesystem, so the daemon runs it on its thread pool while the loop goes on
 * receiving; place_finish applies the outcome on the store's thread again.  One job
 * at a time (s->placing): another placement meanwhile would wait for the uidlist lock
 * this one holds.  (A folder's dir never changes, and folders live as long as the
 * store: place_run may read it.) */
struct place_file {
	struct mm_body_writer *w;
	struct folder *fo;
	int sync;       /* index in the job's syncs, or -1: durable already */
	bool in_cur;
	bool listed;    /* listed under its UID by place_prepare */
	uint64_t letters;
	int result;     /* place_run: 0, or negative errno */
	char name[MM_MD_NAME_MAX + 1];
};

struct place_dir {
	struct folder *fo;
	size_t f0, f1;  /* its files: the job's f[f0 .. f1) */
	bool locked;    /* its uidlist lock is held until its files are in place */
	bool save_ul;   /* ul is written before the renames */
	int ul_result;  /* place_run: 0, or negative errno */
	struct mm_md_uidlist ul;
	bool sync_new, sync_cur;
};

struct place_sync {
	struct mm_body_writer *w; /* a file made durable before any rename (held ones too) */
	int result;
};

struct mm_store_place {
	struct place_file *f;
	size_t n;
	struct place_dir *dirs;
	size_t n_dirs;
	struct place_sync *sync;
	size_t n_sync;
	const char *fs_dir; /* a folder on the filesystem most files are on: one syncfs there */
	dev_t fs_dev;
	size_t live;        /* files to sync on fs_dev */
	struct mm_body_writer *drop; /* writers to free at the end: not placed, not held */
	uint64_t seq;       /* mm_store_place_begin's job number (0: placed at once) */
};

static void place_job_free(struct mm_store_place **jp)
{
	struct mm_store_place *j = *jp;
	if (!j)
		return;
	for (size_t d = 0; d < j->n_dirs; d++)
		mm_md_uidlist_clear(&j->dirs[d].ul);
	free(j->f);
	free(j->dirs);
	free(j->sync);
	free(j);
	*jp = NULL;
}

/* Puts list back at the head of the staged list: a placement is under way. */
static void restage(struct mm_store *s, struct mm_body_writer *list)
{
	if (!list)
		return;
	struct mm_body_writer *w = list, *last = NULL;
	for (; w; last = w, w = w->snext) {
		char k[KBUF];
		size_t kl = k_ub(k, w->user, w->key, MM_KEY_LEN);
		(void)hm_put(&s->staged_keys, k, kl, w); /* (no memory: a second copy is dropped at placing) */
		s->n_staged++;
	}
	last->snext = s->staged;
	if (!s->staged) {
		s->staged_tail = &last->snext;
		s->staged_since_ms = wall_ms();
	}
	s->staged = list;
}

static void job_drop(struct mm_store_place *j, struct mm_body_writer *w)
{
	w->snext = j->drop;
	j->drop = w;
}

/* Builds the job for `list` (whose records are durable).  0 and *job_r (NULL when
 * nothing is left to do), or -ENOMEM (list dropped: its bodies stay missing). */
static int place_prepare(struct mm_store *s, struct mm_body_writer *list, bool force, struct mm_store_place **job_r)
{
	*job_r = NULL;
	size_t n = 0;
	struct mm_body_writer *w;
	/* a folder whose held bodies wait for nothing once this batch is placed, or may
	 * follow the body with the NEXTUID they waited for (bodies are fetched in UID
	 * order, so that is how a join goes): they join the batch, and the sort below
	 * places the run that follows NEXTUID and holds the rest again */
	if (s->n_held) {
		for (w = list; w; w = w->snext) {
			struct folder *fo = w->fo;
			fo->batch_n++;
			if (fo->n_held && !fo->batch_next) {
				struct mm_user *mu = mm_state_user(s->state, w->user, false);
				const struct mm_rec *r = mu ? mm_user_get(mu, w->key) : NULL;
				fo->batch_next = r && r->type == MM_REC_MESSAGE && r->msg.uid_value &&
				                 r->msg.uid_value == (fo->uid_next ? fo->uid_next : 1);
			}
		}
		struct mm_body_writer *extra = NULL;
		for (w = list; w; w = w->snext) {
			struct folder *fo = w->fo;
			if (fo->batch_n && fo->n_held &&
			    (force || fo->batch_next || fo->miss_n <= fo->batch_n + fo->n_held))
				extra = unhold_folder(s, fo, extra);
			fo->batch_n = 0;
			fo->batch_next = false;
		}
		if (extra) {
			for (w = extra; w->snext; w = w->snext)
				;
			w->snext = list;
			list = extra;
		}
	}
	if (!list)
		return 0;
	for (w = list; w; w = w->snext)
		n++;
	struct mm_store_place *j = calloc(1, sizeof(*j));
	struct mm_body_writer **v = malloc(n * sizeof(*v));
	bool *listed = malloc(n * sizeof(*listed));
	char (*names)[MM_MD_NAME_MAX + 1] = malloc(n * sizeof(*names));
	if (!j || !v || !listed || !names || !(j->f = calloc(n, sizeof(*j->f))) ||
	    !(j->dirs = calloc(n, sizeof(*j->dirs))) || !(j->sync = calloc(n, sizeof(*j->sync)))) {
		place_job_free(&j);
		free(v);
		free(listed);
		free(names);
		drop_list(list);
		return -ENOMEM;
	}
	size_t i = 0;
	for (w = list; w; w = w->snext)
		v[i++] = w;
	/* from here on each writer is the job's (placed or dropped) or held */
	for (i = 0; i < n; i++) {
		w = v[i];
		w->snext = NULL;
		struct mm_user *mu = mm_state_user(s->state, w->user, false);
		const struct mm_rec *r = mu ? mm_user_get(mu, w->key) : NULL;
		if (!r || r->type != MM_REC_MESSAGE || fent_by_key(s, w->user, w->key))
			w->err = -ECANCELED; /* expunged (or written) meanwhile */
		else
			w->uid = r->msg.uid_value;
	}
	if (s->imap_uids)
		qsort(v, n, sizeof(*v), w_order_cmp);
	uint64_t now = wall_ms();
	for (size_t g = 0; g < n;) {
		struct folder *fo = v[g]->fo;
		size_t e = g, b = 0;
		for (; e < n && v[e]->fo == fo; e++)
			b += !v[e]->err;
		bool may_hold = s->imap_uids && !force && fo->miss_n > b + fo->n_held;
		uint32_t next = fo->uid_next ? fo->uid_next : 1; /* no uidlist read yet: a new folder */
		size_t f0 = j->n;
		for (size_t k = g; k < e; k++) {
			w = v[k];
			listed[k] = false;
			if (w->err) {
				job_drop(j, w);
				continue;
			}
			const struct mm_rec *r = mm_user_get(mm_state_user(s->state, w->user, false), w->key);
			uint64_t letters = wanted_letters(s, w->fo, r, 0);
			int rr = mm_md_name_format(names[k], sizeof names[k], w->base, strlen(w->base), letters, letters != 0);
			if (rr < 0) {
				w->err = rr;
				job_drop(j, w);
				continue;
			}
			int sync = -1;
			if (!w->synced && w->dev) { /* placed or held, it is made durable first */
				sync = (int)j->n_sync;
				j->sync[j->n_sync++].w = w;
				if (!j->fs_dir) {
					j->fs_dir = fo->dir;
					j->fs_dev = w->dev;
				}
				j->live += w->dev == j->fs_dev;
			}
			if (!w->uid && wait_first_uid(s, w, r, now) && hold_body(s, w) == 0)
				continue;
			if (may_hold && w->uid && w->uid > next && hold_body(s, w) == 0)
				continue;
			if (w->uid >= next)
				next = w->uid + 1;
			struct place_file *pf = &j->f[j->n++];
			/* placed anew: what a crash left of an earlier placement is past */
			char ok[KBUF];
			size_t okl = k_ub(ok, w->user, w->key, MM_KEY_LEN);
			uint64_t *ol = hm_del(&s->pl_old, ok, okl);
			if (ol) {
				free(ol);
				pmark_taken(s, ok, okl);
			}
			w->placing = true;
			pf->w = w;
			pf->fo = fo;
			pf->sync = sync;
			pf->letters = letters;
			pf->in_cur = strchr(names[k], ':') != NULL;
			pf->result = -EAGAIN; /* until place_run says */
			memcpy(pf->name, names[k], sizeof pf->name);
			/* until place_finish it counts as staged: not begun again, not missing */
			char sk[KBUF];
			(void)hm_put(&s->staged_keys, sk, k_ub(sk, w->user, w->key, MM_KEY_LEN), w);
		}
		/* the group's files are listed under their UIDs in one uidlist write, under
		 * the lock until they are in place (Dovecot would take a listed name that is
		 * not there yet for an expunged message) */
		struct mm_user *mu = mm_state_user(s->state, fo->u->name, false);
		struct place_dir *pd = &j->dirs[j->n_dirs];
		if (b && s->imap_uids && mu && mm_md_uidlist_lock(fo->dir, 2000) == 0) {
			pd->save_ul = uid_preinstall_group(mu, fo, v + g, (const char (*)[MM_MD_NAME_MAX + 1])(names + g), e - g,
			                                   listed + g, &pd->ul);
			pd->locked = true;
			fo->job_locked = true;
			if (j->n == f0) { /* all held: only the header may have changed */
				if (pd->save_ul && (pd->ul_result = mm_md_uidlist_save(fo->dir, &pd->ul)) < 0)
					logmsg(s, MM_STORE_LOG_ERR, "cannot write %s/dovecot-uidlist: %s", fo->dir,
					       strerror(-pd->ul_result));
				mm_md_uidlist_clear(&pd->ul);
				mm_md_uidlist_unlock(fo->dir);
				fo->job_locked = false;
				memset(pd, 0, sizeof(*pd));
			}
		}
		if (j->n > f0) {
			j->n_dirs++;
			pd->fo = fo;
			pd->f0 = f0;
			pd->f1 = j->n;
			for (size_t k = g, q = f0; k < e && q < j->n; k++) {
				if (v[k] != j->f[q].w)
					continue;
				struct place_file *pf = &j->f[q++];
				pf->listed = listed[k];
				*(pf->in_cur ? &pd->sync_cur : &pd->sync_new) = true;
				/* now: its watch event may come before place_finish */
				note_placed(s, fo, pf->in_cur ? "cur" : "new", pf->name);
			}
		}
		g = e;
	}
	if (j->n_sync)
		s->progress_ms = now;
	free(v);
	free(listed);
	free(names);
	*job_r = j;
	return 0;
}

/* The job's file work (any thread): every file made durable (one syncfs for the
 * files on fs_dev when there are enough of them, an fdatasync each otherwise), then
 * each renamed into new/ or cur/, then each directory that got a name synced once. */
static void place_run(struct mm_store_place *j)
{
	/* Many files: one syncfs writes them all back in one pass and flushes the disk
	 * cache once, where an fdatasync each costs an inode write and a cache flush per
	 * file.  (It also writes back whatever else is dirty on that filesystem: worth it
	 * only for a batch.)  Files on another filesystem (users on other mounts) get
	 * their own fdatasync. */
	bool one_sync = j->live >= SYNCFS_MIN_FILES && mm_md_syncfs(j->fs_dir) == 0;
	for (size_t i = 0; i < j->n_sync; i++) {
		struct mm_body_writer *w = j->sync[i].w;
		j->sync[i].result = one_sync && w->dev == j->fs_dev ? 0 : mm_md_tmp_sync(w->fo->dir, w->base);
	}
	for (size_t d = 0; d < j->n_dirs; d++) {
		struct place_dir *pd = &j->dirs[d];
		/* the UIDs first: Dovecot, once it may lock, must not take a new file for
		 * one it should number itself */
		if (pd->save_ul)
			pd->ul_result = mm_md_uidlist_save(pd->fo->dir, &pd->ul);
		for (size_t i = pd->f0; i < pd->f1; i++) {
			struct place_file *pf = &j->f[i];
			pf->result = pf->sync >= 0 ? j->sync[pf->sync].result : 0;
			if (pf->result == 0)
				pf->result = mm_md_tmp_place(pd->fo->dir, pf->w->base, pf->in_cur ? "cur" : "new", pf->name);
		}
		if (pd->sync_new)
			mm_md_sync_sub(pd->fo->dir, "new");
		if (pd->sync_cur)
			mm_md_sync_sub(pd->fo->dir, "cur");
		/* here, not in place_finish: a UID pass on the store's thread that waits
		 * for this lock would otherwise keep place_finish from running */
		if (pd->locked)
			mm_md_uidlist_unlock(pd->fo->dir);
	}
}

/* Applies the job's outcome (store thread) and frees it with the writers it owns.
 * Records may have changed while the files were being placed: a message expunged
 * or moved meanwhile loses its new file, one placed otherwise keeps the other file,
 * one whose flags changed gets its file renamed.  Returns the number placed, or the
 * first error when none was. */
static int place_finish(struct mm_store *s, struct mm_store_place **jp)
{
	struct mm_store_place *j = *jp;
	int placed = 0, err = 0;
	for (size_t d = 0; d < j->n_dirs; d++) {
		struct place_dir *pd = &j->dirs[d];
		if (pd->locked)
			pd->fo->job_locked = false; /* (released by place_run) */
		if (pd->ul_result < 0) {
			logmsg(s, MM_STORE_LOG_ERR, "cannot write %s/dovecot-uidlist: %s", pd->fo->dir,
			       strerror(-pd->ul_result));
			for (size_t i = pd->f0; i < pd->f1; i++)
				j->f[i].listed = false; /* listed by the next UID pass */
		}
	}
	for (size_t i = 0; i < j->n_sync; i++) {
		struct mm_body_writer *w = j->sync[i].w;
		if (j->sync[i].result == 0) {
			w->synced = true;
			continue;
		}
		logmsg(s, MM_STORE_LOG_ERR, "writing %s/tmp/%s: %s (will retry)", w->fo->dir, w->base,
		       strerror(-j->sync[i].result));
		if (!w->held)
			w->err = err = j->sync[i].result;
	}
	for (size_t i = 0; i < j->n; i++) {
		struct place_file *pf = &j->f[i];
		struct mm_body_writer *w = pf->w;
		struct folder *fo = pf->fo;
		const char *sub = pf->in_cur ? "cur" : "new";
		char sk[KBUF];
		hm_del(&s->staged_keys, sk, k_ub(sk, w->user, w->key, MM_KEY_LEN));
		w->placing = false;
		job_drop(j, w);
		if (pf->result < 0 && pf->listed) {
			/* listed under its UID, and NEXTUID passed it, but not in place (its
			 * sync or rename failed: a full disk): the body, fetched again, goes
			 * under that name, or it could not be shown under its UID here and the
			 * message would be moved to a new UID on every node */
			char mk[KBUF];
			struct miss *m = hm_get(&s->missing, mk, k_ub(mk, w->user, w->key, MM_KEY_LEN));
			if (m && !m->listed)
				m->listed = strdup(w->base); /* (no memory: as before, a move) */
		}
		if (pf->result < 0 && w->err)
			continue; /* not synced: not renamed, logged above */
		w->tmp_gone = true; /* place removes tmp/<base> whatever happens */
		if ((!pf->listed || pf->result < 0) && s->imap_uids)
			fo->uid_check = true;
		if (pf->result < 0) {
			logmsg(s, MM_STORE_LOG_ERR, "cannot deliver %s/%s/%s: %s (will retry)", fo->dir, sub, pf->name,
			       strerror(-pf->result));
			w->err = err = pf->result;
			continue;
		}
		struct mm_user *mu = mm_state_user(s->state, w->user, false);
		const struct mm_rec *r = mu ? mm_user_get(mu, w->key) : NULL;
		struct fent *fe = fent_by_key(s, w->user, w->key);
		if (fe && fe->fo == fo && !strcmp(fe->base, w->base)) {
			quota_note(s, fo, (int64_t)w->n, 1); /* ours, placed: it counts */
			continue; /* a scan took it in meanwhile, by its key */
		}
		if (!r || r->type != MM_REC_MESSAGE || strcmp(r->msg.folder, fo->name) || fe) {
			mm_md_unlink(fo->dir, sub, pf->name); /* expunged, moved or placed otherwise meanwhile */
			fo->check = true;
			continue;
		}
		quota_note(s, fo, (int64_t)w->n, 1); /* the file stays: it counts */
		uint8_t body[MM_ID_LEN];
		memcpy(body, r->msg.body, MM_ID_LEN);
		set_missing(s, w->user, w->key, NULL, NULL, false);
		if (!(fe = fent_add(s, fo, w->base, pf->name, pf->in_cur, w->key, body, pf->letters))) {
			err = -ENOMEM; /* the rescan will link the file by its key */
			continue;
		}
		placed++;
		if (wanted_letters(s, fo, r, 0) != pf->letters)
			sync_file_flags(s, fe, r); /* flags changed meanwhile */
		/* other instances waiting for the same bytes get a local copy at the next commit */
		char kb[KBUF];
		size_t bl = k_ub(kb, w->user, body, MM_ID_LEN);
		for (struct miss *m = hm_get(&s->missing_body, kb, bl); m; m = m->bnext)
			add_pending(s, w->user, m->key);
	}
	for (struct mm_body_writer *w = j->drop, *nx; w; w = nx) {
		nx = w->snext;
		w->snext = NULL;
		writer_free(&w, !w->tmp_gone);
	}
	j->drop = NULL;
	place_job_free(jp);
	quota_flush(s);
	return placed ? placed : err;
}

/* Places the checked bodies of `list`, whose records the caller made durable: every
 * file's contents and mtime are made durable first (their writeback was started when
 * they were staged), then each is linked into new/ or cur/ (with imap_uids: per
 * folder in UID order, listed in one uidlist write, some held back: see HOLD_MS;
 * force places them all), then each directory that got a name is synced once.  A
 * body that cannot be placed stays missing (the daemon asks for it again).  Frees
 * the writers it does not hold.  Returns the number placed, or the first error when
 * none was.  While a job is out (mm_store_place_begin), the bodies go back to the
 * staged list, for the next placement. */
static int place_list(struct mm_store *s, struct mm_body_writer *list, bool force)
{
	if (s->placing) {
		restage(s, list);
		return 0;
	}
	struct mm_store_place *j;
	int r = place_prepare(s, list, force, &j);
	if (r < 0 || !j)
		return r;
	place_run(j);
	return place_finish(s, &j);
}

/* Folders whose held bodies may go now (nothing else missing there, or no progress
 * for HOLD_MS): placed in UID order.  Returns the number placed. */
static int release_held(struct mm_store *s)
{
	if (!s->n_held || s->placing)
		return 0;
	uint64_t now = wall_ms();
	int placed = 0;
	for (struct user *u = s->users; u; u = u->next)
		for (struct folder *fo = u->folders; fo; fo = fo->unext) {
			if (!fo->n_held)
				continue;
			/* held for order: go when nothing else is missing, or nothing arrived
			 * for HOLD_MS; held for a first UID: go when it came or the wait is over
			 * (place_list holds again whatever must still wait) */
			bool order_go = !(fo->miss_n > fo->n_held && now - s->progress_ms < HOLD_MS), go = false;
			struct mm_user *mu = mm_state_user(s->state, u->name, false);
			for (size_t i = 0; i < fo->n_held && !go; i++) {
				struct mm_body_writer *w = fo->held[i];
				if (!w->first_wait_ms) {
					go = order_go;
					continue;
				}
				const struct mm_rec *r = mu ? mm_user_get(mu, w->key) : NULL;
				go = !r || r->type != MM_REC_MESSAGE || r->msg.uid_value ||
				     now - w->first_wait_ms >= FIRST_UID_WAIT_MS;
			}
			if (!go)
				continue;
			int r = place_list(s, unhold_folder(s, fo, NULL), order_go);
			if (r > 0)
				placed += r;
		}
	return placed;
}

size_t mm_store_held_count(const struct mm_store *s)
{
	return s->n_held;
}

const struct mm_delta *mm_store_commit_delta(const struct mm_store *s)
{
	return s->commit_out;
}

/* Takes the whole staged list out of the store (the caller places or drops it). */
static struct mm_body_writer *unstage_all(struct mm_store *s)
{
	struct mm_body_writer *list = s->staged;
	for (struct mm_body_writer *w = list; w; w = w->snext) {
		char k[KBUF];
		size_t kl = k_ub(k, w->user, w->key, MM_KEY_LEN);
		hm_del(&s->staged_keys, k, kl);
	}
	s->staged = NULL;
	s->staged_tail = &s->staged;
	s->n_staged = 0;
	return list;
}

/* Seals a checked writer's file without syncing it: mtime = the INTERNALDATE, its
 * writeback started (the sync at placement then mostly waits for I/O already under
 * way, for all the files of a batch at once), closed.  Recovered writers come sealed
 * and synced.  Frees the writer on failure. */
static int writer_seal(struct mm_body_writer **wp)
{
	struct mm_body_writer *w = *wp;
	if (w->fd < 0)
		return 0;
	struct stat st;
	w->dev = fstat(w->fd, &st) == 0 ? st.st_dev : 0;
	sync_file_range(w->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
	const struct mm_rec *r = mm_user_get(mm_state_user(w->s->state, w->user, false), w->key);
	int rr = mm_md_tmp_seal(w->fd, r->msg.internaldate, false);
	w->fd = -1;
	if (rr < 0) {
		logmsg(w->s, MM_STORE_LOG_ERR, "writing %s/tmp/%s: %s (will retry)", w->fo->dir, w->base,
		       strerror(-rr));
		writer_free(wp, true);
	}
	return rr;
}

bool mm_store_body_deferred(const struct mm_body_writer *w)
{
	return w->buf != NULL;
}

int mm_store_body_prepare(struct mm_body_writer **wp)
{
	struct mm_body_writer *w = *wp;
	struct mm_store *s = w->s;
	int r = writer_check(wp);
	if (r <= 0)
		return r;
	const struct mm_rec *rec = mm_user_get(mm_state_user(s->state, w->user, false), w->key);
	char k[KBUF];
	size_t kl = k_ub(k, w->user, w->key, MM_KEY_LEN);
	/* being written: counts as staged, so it is neither begun again nor offered to
	 * the fetcher (mm_store_body_stage takes the entry over) */
	if (!(w->dir = strdup(w->fo->dir)) || hm_put(&s->staged_keys, k, kl, w) < 0) {
		writer_free(wp, true);
		return -ENOMEM;
	}
	w->owner = w->fo->u->owner;
	w->mtime = rec->msg.internaldate;
	w->prepared = true;
	return 1;
}

int mm_store_body_write_out(struct mm_body_writer *w)
{
	/* only w's own fields and the filesystem: this may run on another thread */
	int fd = mm_md_tmp_open(w->dir, w->base, &w->owner);
	int r = fd < 0 ? fd : 0;
	for (uint64_t off = 0; r == 0 && off < w->n;) {
		ssize_t n = write(fd, w->buf + off, w->n - off);
		if (n < 0 && errno != EINTR)
			r = -errno;
		else if (n > 0)
			off += (uint64_t)n;
	}
	if (fd >= 0) {
		struct stat st;
		w->dev = fstat(fd, &st) == 0 ? st.st_dev : 0;
		if (r == 0)
			sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
		int sr = mm_md_tmp_seal(fd, w->mtime, false);
		if (r == 0)
			r = sr;
	}
	writer_buf_free(w);
	return w->err = r;
}

/* A deferred writer on its way to staging or placing: written out here if nobody
 * did, its entry as a body being written dropped, a failure to write it logged.
 * 1: go on (writer_check follows); 0 or negative errno: *wp freed. */
static int deferred_finish(struct mm_body_writer **wp)
{
	struct mm_body_writer *w = *wp;
	int r;
	if (w->buf && !w->prepared) {
		if ((r = mm_store_body_prepare(wp)) <= 0)
			return r;
		mm_store_body_write_out(w);
	}
	if (w->prepared) {
		char k[KBUF];
		size_t kl = k_ub(k, w->user, w->key, MM_KEY_LEN);
		hm_del(&w->s->staged_keys, k, kl);
		if (w->err)
			logmsg(w->s, MM_STORE_LOG_ERR, "writing %s/tmp/%s: %s (will retry)", w->dir, w->base,
			       strerror(-w->err));
	}
	return 1;
}

int mm_store_body_stage(struct mm_body_writer **wp)
{
	struct mm_body_writer *w = *wp;
	struct mm_store *s = w->s;
	int r;
	if ((r = deferred_finish(wp)) <= 0)
		return r;
	bool fresh = w->fd >= 0 || w->prepared; /* recover_tmp's are sealed, synced, closed */
	if ((r = writer_check(wp)) <= 0)
		return r;
	if ((r = writer_seal(wp)) < 0)
		return r;
	char k[KBUF];
	size_t kl = k_ub(k, w->user, w->key, MM_KEY_LEN);
	if (staged_get(s, w->user, w->key)) {
		/* staged already: a body taken back from tmp/ (recover_tmp_queued) while a
		 * fetch of it was under way; two in the batch would place it twice */
		writer_free(wp, true);
		return 0;
	}
	if (hm_put(&s->staged_keys, k, kl, w) < 0) {
		writer_free(wp, true);
		return -ENOMEM;
	}
	w->snext = NULL;
	if (!s->staged)
		s->staged_since_ms = wall_ms();
	*s->staged_tail = w; /* in arrival order: bodies fetched in UID order keep it */
	s->staged_tail = &w->snext;
	s->n_staged++;
	*wp = NULL;
	if (s->n_staged >= STAGE_MAX_FILES && fresh)
		mm_store_flush(s); /* a failure leaves the bodies missing: asked for again */
	return 0;
}

uint64_t mm_store_commits(const struct mm_store *s)
{
	return mm_statedb_commits(s->db);
}

size_t mm_store_staged_count(const struct mm_store *s)
{
	return s->n_staged;
}

uint64_t mm_store_staged_since(const struct mm_store *s)
{
	return s->staged ? s->staged_since_ms : 0;
}

void mm_store_gather(struct mm_store *s, bool on)
{
	s->gather = on;
}

/* Whether the staged bodies wait for more (mm_store_gather) rather than be placed. */
static bool gathering(const struct mm_store *s)
{
	return s->gather && s->n_staged < STAGE_MAX_FILES;
}

int mm_store_flush(struct mm_store *s)
{
	if (s->in_commit || s->placing)
		return 0; /* in a commit: it places them when its transaction is durable */
	if (!s->staged || gathering(s)) {
		release_held(s);
		return 0;
	}
	for (struct mm_body_writer *w = s->staged; w; w = w->snext)
		if (rec_dirty(s, w->user, w->key))
			return mm_store_commit(s); /* the records first: it places the bodies */
	int r = place_list(s, unstage_all(s), false);
	release_held(s);
	return r < 0 ? r : 0;
}

int mm_store_place_begin(struct mm_store *s, struct mm_store_place **job_r)
{
	*job_r = NULL;
	if (s->in_commit || s->placing || !s->staged || gathering(s))
		return 0;
	int r = 0;
	/* the records first (a commit places nothing while s->placing: what it makes,
	 * local copies, is staged and joins this job) */
	s->placing = true;
	for (struct mm_body_writer *w = s->staged; w; w = w->snext)
		if (rec_dirty(s, w->user, w->key)) {
			/* one commit writes every record; a failed one has freed the staged
			 * writers, w among them (a full disk: it_daemon_diskfull under ASan) */
			r = mm_store_commit(s);
			break;
		}
	s->placing = false;
	if (r < 0) {
		if (s->staged)
			drop_list(unstage_all(s)); /* they stay missing: asked for again */
		return r;
	}
	struct mm_store_place *j;
	if ((r = place_prepare(s, unstage_all(s), false, &j)) < 0 || !j)
		return r;
	if (!j->n && !j->n_sync) {
		place_finish(s, &j); /* nothing but writers to drop */
		return 0;
	}
	s->placing = true;
	j->seq = ++s->job_seq;
	s->job = j;
	*job_r = j;
	return 1;
}

void mm_store_place_run(struct mm_store_place *job)
{
	place_run(job);
}

int mm_store_place_end(struct mm_store *s, struct mm_store_place **jobp)
{
	s->job = NULL;
	int r = place_finish(s, jobp);
	s->placing = false;
	return r;
}

bool mm_store_placing(const struct mm_store *s)
{
	return s->placing;
}

int mm_store_body_commit(struct mm_body_writer **wp)
{
	struct mm_body_writer *w = *wp;
	struct mm_store *s = w->s;
	int r = deferred_finish(wp);
	if (r <= 0 || (r = writer_check(wp)) <= 0)
		return r;
	if ((r = writer_seal(wp)) < 0)
		return r;
	*wp = NULL;
	/* the record must be durable before a file carrying its key appears */
	if (rec_dirty(s, w->user, w->key) && !s->in_commit) {
		int rr = mm_store_commit(s);
		if (rr < 0) {
			writer_free(&w, true);
			return rr;
		}
	}
	w->snext = NULL;
	return place_list(s, w, false);
}

/* A body present locally under another key: copy it for a remote record (no network).
 * Hard link when the INTERNALDATE matches (they share the inode's mtime), else copy. */
#define COPY_LOCAL_TRIES 5

static int copy_local(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN], unsigned tries)
{
	struct mm_user *mu = mm_state_user(s->state, user, false);
	const struct mm_rec *r = mu ? mm_user_get(mu, key) : NULL;
	if (!r || r->type != MM_REC_MESSAGE || fent_by_key(s, user, key))
		return 0;
	struct fent *src = fent_by_body(s, user, r->msg.body);
	char sp[PATHBUF];
	if (src) {
		if (fent_path(s, src, sp, sizeof sp) < 0)
			return 0;
	} else {
		/* the file of a message expunged by this commit's merges (a folder renamed
		 * elsewhere: the same bytes under the new name) */
		char k[KBUF];
		struct spare *spf = hm_get(&s->spares, k, k_ub(k, user, r->msg.body, MM_ID_LEN));
		if (!spf || snprintf(sp, sizeof sp, "%s", spf->path) >= (int)sizeof sp)
			return 0;
	}
	struct mm_body_writer *w;
	int rr = mm_store_body_begin(s, user, key, &w);
	if (rr < 0)
		return rr;
	struct stat sst;
	int fd = open_message(sp, &sst);
	int e = fd < 0 ? -fd : 0;
	if (e == ENOENT && src && fent_relocate(s, src) == 0 && fent_path(s, src, sp, sizeof sp) == 0) {
		fd = open_message(sp, &sst); /* renamed here (a flag change not scanned yet) */
		e = fd < 0 ? -fd : 0;
	}
	if (fd < 0) {
		mm_store_body_abort(&w);
		/* Moving under us: try again at a later commit, a few times (the scan the
		 * move causes brings the index up to date).  Not left to the network: while
		 * this node indexes a file with these bytes, it asks no peer for them. */
		struct pending *p = e == ENOENT && tries + 1 < COPY_LOCAL_TRIES ? add_pending(s, user, key) : NULL;
		if (p)
			p->tries = tries + 1;
		return e == ENOENT ? 0 : -e;
	}
	char buf[65536];
	ssize_t n;
	while ((n = read(fd, buf, sizeof buf)) > 0)
		if ((rr = mm_store_body_write(w, buf, (size_t)n)) < 0)
			break;
	close(fd);
	if (n < 0 || rr < 0) {
		mm_store_body_abort(&w);
		return rr < 0 ? rr : -EIO;
	}
	return mm_store_body_commit(&w);
}

struct miss_ord {
	uint32_t uid;
	struct hent *e;
};

static int miss_ord_cmp(const void *a, const void *b)
{
	const struct miss_ord *x = a, *y = b;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

int mm_store_missing(struct mm_store *s,
                     int (*cb)(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                               const uint8_t body[MM_ID_LEN], uint64_t size),
                     void *arg)
{
	struct keylist kl;
	int r = hm_keys(&s->missing, &kl);
	/* in UID order: a replica can list a UID in dovecot-uidlist only above the UIDs
	 * it already shows, so bodies fetched in UID order keep the origin's UIDs */
	struct miss_ord *ord = r == 0 ? calloc(kl.n ? kl.n : 1, sizeof(*ord)) : NULL;
	if (r == 0 && !ord)
		r = -ENOMEM;
	for (size_t i = 0; r == 0 && i < kl.n; i++) {
		const char *user = (const char *)kl.v[i]->k;
		size_t ul = strlen(user);
		struct mm_user *mu = mm_state_user(s->state, user, false);
		const struct mm_rec *rec = mu && ul + 1 + MM_KEY_LEN == kl.v[i]->kl ?
		                           mm_user_get(mu, kl.v[i]->k + ul + 1) : NULL;
		ord[i].uid = rec && rec->type == MM_REC_MESSAGE && rec->msg.uid_value ? rec->msg.uid_value : UINT32_MAX;
		ord[i].e = kl.v[i];
	}
	if (r == 0) {
		qsort(ord, kl.n, sizeof(*ord), miss_ord_cmp);
		for (size_t i = 0; i < kl.n; i++)
			kl.v[i] = ord[i].e;
	}
	free(ord);
	for (size_t i = 0; r == 0 && i < kl.n; i++) {
		const char *user = (const char *)kl.v[i]->k;
		size_t ul = strlen(user);
		if (ul + 1 + MM_KEY_LEN != kl.v[i]->kl)
			continue;
		const uint8_t *key = kl.v[i]->k + ul + 1;
		struct mm_user *mu = mm_state_user(s->state, user, false);
		const struct mm_rec *rec = mu ? mm_user_get(mu, key) : NULL;
		if (!rec || rec->type != MM_REC_MESSAGE) {
			set_missing(s, user, key, NULL, NULL, false);
			continue;
		}
		if (staged_get(s, user, key))
			continue; /* received, placed at the next flush */
		struct user *u = user_get(s, user, false);
		if (u && u->absent)
			continue; /* nowhere to put it: asked for once the Maildir is back */
		uint8_t body[MM_ID_LEN];
		memcpy(body, rec->msg.body, MM_ID_LEN);
		r = cb(arg, user, key, body, rec->msg.size);
	}
	keylist_free(&kl);
	return r;
}

size_t mm_store_missing_count(const struct mm_store *s)
{
	return s->missing.n;
}

void mm_store_set_scan_commit(struct mm_store *s, size_t files)
{
	s->scan_commit_files = files ? files : SCAN_COMMIT_FILES;
}

uint64_t mm_store_uidlists_read(const struct mm_store *s)
{
	return s->uidlists_read;
}

uint64_t mm_store_files_hashed(const struct mm_store *s)
{
	return s->hashed;
}

/* ---- IMAP UIDs: dovecot-uidlist <-> the CRDT's UID registers (issue 7) ---------------
 *
 * The UID register of a message is the truth; each node's dovecot-uidlist is made to
 * list every message file under it, always with dovecot-uidlist.lock held and never
 * below the file's N (Dovecot would take a UID under its NEXTUID that its index does
 * not know as an expunged message "reappearing" and give it a new one).  Files with no
 * UID yet get the folder's N (and the register is written: this node created the
 * record or its Dovecot never listed it).  A message whose UID this node cannot show
 * is listed provisionally and asks for a move (need); only the authority moves
 * (crdt/uid.h has the whole rule).  A message that must change UID here is
 * re-filed: a hard link under a new base name listed at the new UID, then the old
 * name unlinked, which Dovecot sees as an expunge plus a new message (it caches per
 * UID, so one file name must never change its UID).  The folder's UIDVALIDITY is
 * mm_folder_uidvalidity() of its FOLDER record and written into the header. */

static void uid_effect(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	struct mm_store *s = arg;
	mark_rec(s, user, rec->key);
	if (eff == MM_EFF_MSG_UID) {
		struct user *u = user_get(s, user, false);
		struct folder *fo = u ? folder_get(s, u, rec->msg.folder, false) : NULL;
		if (fo)
			fo->uid_check = true;
	}
}

/* Mailbox GUID for a header mailmesh writes: the same on every node (derived from the
 * user, the folder and its exists stamp), 32 hex digits as Dovecot writes it. */
static void uid_guid(char hex[33], const char *user, const struct mm_rec *frec)
{
	uint8_t h[16], st[16];
	for (int i = 0; i < 8; i++) {
		st[i] = (uint8_t)(frec->folder.exists.stamp.t >> (56 - 8 * i));
		st[8 + i] = (uint8_t)(frec->folder.exists.stamp.node >> (56 - 8 * i));
	}
	crypto_generichash_state g;
	crypto_generichash_init(&g, NULL, 0, sizeof h);
	crypto_generichash_update(&g, (const uint8_t *)user, strlen(user) + 1);
	crypto_generichash_update(&g, (const uint8_t *)frec->folder.name, strlen(frec->folder.name) + 1);
	crypto_generichash_update(&g, st, sizeof st);
	crypto_generichash_final(&g, h, sizeof h);
	sodium_bin2hex(hex, 33, h, sizeof h);
}

/* The folder's FOLDER record (NULL when unknown, or deleted with no live message). */
static const struct mm_rec *uid_folder_rec(struct mm_user *mu, const char *folder)
{
	uint8_t fk[MM_KEY_LEN];
	mm_key_folder(folder, fk);
	const struct mm_rec *fr = mm_user_get(mu, fk);
	/* a folder deleted on one node while mail went into it elsewhere stays visible
	 * (crdt: delivery revives it); its record's stamp still names it everywhere */
	return fr && fr->type == MM_REC_FOLDER && (fr->folder.exists.value || mm_user_folder_visible(mu, folder))
	       ? fr : NULL;
}

/* The folder's record, when this node's dovecot-uidlist may disagree with it on the
 * UIDVALIDITY.  A folder whose record this node wrote in the last minute and that its
 * Dovecot has numbered already (an index exists: Dovecot won the race to the uidlist,
 * e.g. the first LMTP delivery to a new user): the record adopts Dovecot's value, the
 * one this node's clients know; replicas learn it before their Dovecot indexes the
 * folder.  Otherwise the record's value wins: uid_header rewrites the header, and
 * Dovecot logs "UIDVALIDITY changed" once and resets its index of the folder (its
 * clients resynchronise): two nodes showing two UIDVALIDITYs would be worse. */
#define UID_ADOPT_MS 60000

/* Whether Dovecot's index of the folder is in it (any of its files, or one that
 * cannot be checked). */
static bool folder_index_file(const struct folder *fo)
{
	static const char *const names[] = {"dovecot.index", "dovecot.index.log", "dovecot.index.cache"};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		char p[PATHBUF];
		snprintf(p, sizeof p, "%s/%s", fo->dir, names[i]);
		if (access(p, F_OK) == 0 || errno != ENOENT)
			return true;
	}
	return false;
}

static const struct mm_rec *uid_adopt(struct mm_store *s, struct mm_user *mu, struct folder *fo,
                                      const struct mm_md_uidlist *ul)
{
	const struct mm_rec *frec = uid_folder_rec(mu, fo->name);
	if (!frec || !ul->exists || !ul->uidvalidity || ul->uidvalidity == frec->folder.uidvalidity)
		return frec;
	if (!folder_index_file(fo))
		return frec;
	mm_hlc st = frec->folder.exists.stamp;
	if (st.node == s->clock->node && MM_HLC_MS(st) + UID_ADOPT_MS >= s->now_ms) {
		uint32_t uv = ul->uidvalidity;
		if (mm_user_folder_renew(mu, fo->name, tick(s), uv, uid_effect, s, s->out) > 0)
			s->changes++;
		logmsg(s, MM_STORE_LOG_INFO, "%s: UIDVALIDITY %u from Dovecot, for every replica", fo->dir, uv);
		return uid_folder_rec(mu, fo->name);
	}
	logmsg(s, MM_STORE_LOG_WARNING,
	       "%s: Dovecot numbered it under UIDVALIDITY %u, the cluster under %u: it follows the cluster "
	       "(Dovecot resets its index of the folder once)", fo->dir, ul->uidvalidity, frec->folder.uidvalidity);
	return frec;
}

/* Header of a list: UIDVALIDITY of the folder's record; a GUID when there is none. */
static bool uid_header(struct mm_md_uidlist *ul, const char *user, const struct mm_rec *frec)
{
	bool changed = false;
	if (ul->uidvalidity != frec->folder.uidvalidity) {
		ul->uidvalidity = frec->folder.uidvalidity;
		changed = true;
	}
	if (!ul->hdr_rest || !ul->hdr_rest[0]) {
		char g[33];
		uid_guid(g, user, frec);
		char *h = malloc(34);
		if (h) {
			snprintf(h, 34, "G%s", g);
			free(ul->hdr_rest);
			ul->hdr_rest = h;
			changed = true;
		}
	}
	return changed;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Whether Dovecot has ever opened the folder on this node: it keeps its index of a
 * folder (with the UIDs its clients saw) in dovecot.index and dovecot.index.log.
 * Unknown with INDEX= elsewhere in mail_location: then taken as opened. */
static bool uid_folder_indexed(const struct mm_store *s, const struct folder *fo)
{
	return !s->index_in_folder || folder_index_file(fo);
}

/* A node that joins (or comes back after long) receives bodies in any order, several
 * peers at once, and lists each as it lands: one whose UID is below the folder's
 * NEXTUID here by then is listed provisionally, and would ask the authority to move
 * it on every node, where clients would see it expunged and back under a new UID.
 * While no Dovecot has opened the folder here, no client has seen any UID of this
 * listing: the messages are simply listed again, each under its own UID, and NEXTUID
 * falls back to the highest one.  Returns true when it did so (every item's `have`
 * is then 0: the plan lists them all afresh). */
static bool uid_relist_unseen(struct mm_store *s, struct folder *fo, struct mm_md_uidlist *ul,
                              struct mm_uid_item *it, size_t nit)
{
	bool out_of_order = false;
	for (size_t i = 0; i < nit && !out_of_order; i++)
		out_of_order = it[i].want && (it[i].have ? it[i].have != it[i].want : it[i].want < ul->next_uid);
	if (!out_of_order || uid_folder_indexed(s, fo))
		return false;
	/* Only when that gives every message its own UID: each has one, no two share it,
	 * and each is above every entry that stays (files the index does not know, such
	 * as the entry of a message expunged here).  Otherwise the plan's rule applies as
	 * it would with Dovecot here; a relist that still left messages provisional
	 * would be redone, and their needs raised, at every pass. */
	uint32_t *wants = malloc((nit ? nit : 1) * sizeof(*wants)), *haves = malloc((nit ? nit : 1) * sizeof(*haves));
	bool ok = wants && haves;
	for (size_t i = 0; ok && i < nit; i++) {
		wants[i] = it[i].want;
		haves[i] = it[i].have;
		ok = it[i].want != 0;
	}
	if (ok) {
		qsort(wants, nit, sizeof(*wants), cmp_u32);
		qsort(haves, nit, sizeof(*haves), cmp_u32);
		for (size_t i = 1; ok && i < nit; i++)
			ok = wants[i] != wants[i - 1];
		for (size_t k = 0; ok && k < ul->n; k++)
			if (!bsearch(&ul->v[k].uid, haves, nit, sizeof(*haves), cmp_u32))
				ok = nit && ul->v[k].uid < wants[0];
	}
	free(wants);
	free(haves);
	if (!ok)
		return false;
	for (size_t i = 0; i < nit; i++) {
		if (it[i].have)
			mm_md_uidlist_remove(ul, it[i].have);
		it[i].have = 0;
	}
	/* what remains lists files the index does not know (yet): their UIDs stay taken */
	if (!ul->n)
		ul->next_uid = 1;
	else if (ul->v[ul->n - 1].uid < UINT32_MAX)
		ul->next_uid = ul->v[ul->n - 1].uid + 1;
	return true;
}

struct refile {
	struct fent *fe;
	uint32_t have, target;
	char base[160];
	char name[MM_MD_NAME_MAX + 1];
};

/* Drops from ul the entries of the files noted gone (folder_note_gone), except one
 * whose name a file of the index carries again (listed under it[].have).  Returns how
 * many it dropped, or -ENOMEM (nothing dropped). */
static ssize_t uid_drop_gone(const struct folder *fo, struct mm_md_uidlist *ul, const struct mm_uid_item *it,
                             size_t nit)
{
	uint32_t *haves = malloc((nit ? nit : 1) * sizeof(*haves));
	uint32_t *drop = malloc(fo->n_gone * sizeof(*drop));
	if (!haves || !drop) {
		free(haves);
		free(drop);
		return -ENOMEM;
	}
	for (size_t i = 0; i < nit; i++)
		haves[i] = it[i].have;
	qsort(haves, nit, sizeof(*haves), cmp_u32);
	size_t nd = 0;
	for (size_t i = 0; i < fo->n_gone; i++) {
		uint32_t uid = mm_md_uidlist_find(ul, fo->gone[i], strlen(fo->gone[i]));
		if (uid && !bsearch(&uid, haves, nit, sizeof(*haves), cmp_u32))
			drop[nd++] = uid;
	}
	qsort(drop, nd, sizeof(*drop), cmp_u32);
	size_t n = mm_md_uidlist_remove_many(ul, drop, nd);
	free(haves);
	free(drop);
	return (ssize_t)n;
}

/* Brings one folder's dovecot-uidlist in line with the CRDT.  Returns 0, or -EAGAIN
 * when the lock stays busy (uid_check stays set: retried at the next pass). */
static int uid_sync_folder(struct mm_store *s, struct user *u, struct mm_user *mu, struct folder *fo)
{
	fo->uid_settled = false;
	if (!fo->on_disk || !mm_md_is_maildir(fo->dir)) {
		folder_gone_clear(fo);
		return 0;
	}
	int r = folder_files(s, fo); /* the plan walks every file of the folder */
	if (r < 0)
		return r;
	/* Dovecot changed the list and may hold its lock still: as in a scan (see
	 * LOCK_DEFER_MS), the pass is left for the lock's release rather than waited for */
	r = lock_or_leave(s, fo, &fo->passwait_since);
	if (r == 1)
		return -EAGAIN;
	if (r < 0) {
		logmsg(s, MM_STORE_LOG_WARNING, "%s/dovecot-uidlist.lock stays busy: UIDs synced later", fo->dir);
		return r;
	}
	fo->passwait_since = 0;
	struct mm_md_uidlist ul;
	r = mm_md_uidlist_load(fo->dir, &ul);
	s->uidlists_read++;
	note_scratch(s, ul.n);
	bool dirty = false, renew = false;
	if (r == -EBADMSG) {
		/* damaged: the UIDs this node showed are unknown, so agreement for this folder
		 * cannot be kept under the old UIDVALIDITY: change it on purpose everywhere */
		logmsg(s, MM_STORE_LOG_WARNING, "%s/dovecot-uidlist is damaged: the folder gets a new UIDVALIDITY",
		       fo->dir);
		renew = true;
		uint32_t keep_next = ul.next_uid;
		mm_md_uidlist_clear(&ul);
		ul.exists = true;
		ul.next_uid = keep_next;
		dirty = true;
	} else if (r < 0) {
		mm_md_uidlist_clear(&ul);
		mm_md_uidlist_unlock(fo->dir);
		logmsg(s, MM_STORE_LOG_WARNING, "cannot read %s/dovecot-uidlist: %s", fo->dir, read_err(r));
		return r;
	}
	if (renew) {
		if (mm_user_folder_renew(mu, fo->name, tick(s), 0, uid_effect, s, s->out) > 0)
			s->changes++;
	}
	const struct mm_rec *frec = renew ? uid_folder_rec(mu, fo->name) : uid_adopt(s, mu, fo, &ul);
	if (!frec) { /* no UIDVALIDITY known yet (the FOLDER record comes later) */
		mm_md_uidlist_clear(&ul);
		mm_md_uidlist_unlock(fo->dir);
		return 0;
	}
	if (uid_header(&ul, u->name, frec))
		dirty = true;
	/* the plan (crdt/uid.h): which messages keep their UID, which are listed
	 * provisionally and ask for a move, which this node moves as the authority */
	size_t nit = 0, capit = 0;
	struct mm_uid_item *it = NULL;
	bool settled = !dirty;
	for (struct fent *fe = fo->files; fe; fe = fe->fnext) {
		const struct mm_rec *rec = mm_user_get(mu, fe->key);
		if (!rec || rec->type != MM_REC_MESSAGE)
			continue;
		if (nit == capit) {
			size_t nc = capit ? capit * 2 : 16;
			struct mm_uid_item *nv = realloc(it, nc * sizeof(*nv));
			if (!nv) {
				settled = false;
				break;
			}
			it = nv;
			capit = nc;
		}
		struct mm_uid_item *x = &it[nit++];
		memset(x, 0, sizeof(*x));
		memcpy(x->key, fe->key, MM_KEY_LEN);
		x->want = rec->msg.uid_value;
		x->need = rec->msg.uid_need;
		x->have = mm_md_uidlist_find(&ul, fe->base, strlen(fe->base));
		x->arg = fe;
	}
	ssize_t dropped = fo->n_gone ? uid_drop_gone(fo, &ul, it, nit) : 0;
	if (dropped > 0)
		dirty = true;
	if (uid_relist_unseen(s, fo, &ul, it, nit)) {
		dirty = true;
		settled = false;
	}
	uint32_t next = ul.next_uid;
	/* a re-file waits while a lower move may still be on its way (crdt/uid.h, "hold"),
	 * MM_UID_HOLD_MS at most: then the folder is planned with no hold (uid_hold_check) */
	uint64_t hnow = wall_ms();
	bool was_waiting = fo->uid_hold.since_ms != 0;
	size_t held = mm_uid_plan(it, nit, &next, mm_user_uid_top(mu, fo->name), s->uid_authority,
	                          mm_uid_hold_may(&fo->uid_hold, hnow));
	uint64_t due = mm_uid_hold_note(&fo->uid_hold, hnow, held);
	if (due && (!s->uid_hold_due || due < s->uid_hold_due))
		s->uid_hold_due = due;
	if (held && !was_waiting)
		logmsg(s, MM_STORE_LOG_INFO, "%s: %zu re-file%s wait%s for lower UID moves (at most %d s)", fo->dir,
		       held, held == 1 ? "" : "s", held == 1 ? "s" : "", MM_UID_HOLD_MS / 1000);
	/* nothing to list, move or ask for, and no need above a UID: the plan of an
	 * authority (crdt/uid.c) is the same, so becoming one need not re-check */
	for (size_t i = 0; i < nit && settled; i++)
		settled = it[i].want && it[i].want == it[i].have && it[i].need <= it[i].want &&
		          it[i].target == it[i].have && !it[i].set_uid && !it[i].set_need;
	size_t nref = 0, capref = 0;
	struct refile *ref = NULL;
	for (size_t i = 0; i < nit; i++) {
		struct fent *fe = it[i].arg;
		uint32_t target = it[i].target, have = it[i].have;
		if (it[i].set_uid &&
		    mm_user_uid_move(mu, fe->key, it[i].set_uid, tick(s), uid_effect, s, s->out) > 0) {
			s->changes++;
			if (it[i].want)
				logmsg(s, MM_STORE_LOG_INFO, "%s: %s moves from UID %u to %u (need %u, NEXTUID here %u)",
				       fo->dir, fe->base, it[i].want, it[i].set_uid, it[i].need, ul.next_uid);
		}
		if (it[i].set_need && !s->catching_up &&
		    mm_user_uid_need(mu, fe->key, it[i].set_need, uid_effect, s, s->out) > 0) {
			s->changes++;
			logmsg(s, MM_STORE_LOG_INFO, "%s: %s cannot be shown under UID %u here (listed under %u, "
			       "NEXTUID %u): asks for a move to %u or above", fo->dir, fe->base, it[i].want, have,
			       ul.next_uid, it[i].set_need);
		}
		if (target == have)
			continue;
		dirty = true;
		if (!have) {
			char nb[MM_MD_NAME_MAX + 1];
			const char *fname = fent_name(s, fe, nb);
			if (mm_md_uidlist_add(&ul, target, fname) < 0)
				logmsg(s, MM_STORE_LOG_WARNING, "%s: cannot list %s under UID %u", fo->dir, fname, target);
			continue;
		}
		/* listed under another UID: re-file under a new name */
		if (nref == capref) {
			size_t nc = capref ? capref * 2 : 8;
			struct refile *nv = realloc(ref, nc * sizeof(*nv));
			if (!nv)
				break;
			ref = nv;
			capref = nc;
		}
		struct refile *rf = &ref[nref];
		const struct mm_rec *cur = mm_user_get(mu, fe->key);
		if (!cur)
			continue;
		do
			make_base(rf->base, sizeof rf->base, cur);
		while (!strcmp(rf->base, fe->base));
		/* the letters on disk: a change not scanned yet, an unnamed keyword letter */
		if (mm_md_name_format(rf->name, sizeof rf->name, rf->base, strlen(rf->base), fe->dletters,
		                      fe->in_cur) < 0)
			continue;
		/* Renamed here since the last scan (a local flag change on its way): the
		 * scan takes that in first, the next pass re-files with the right letters. */
		char src[PATHBUF];
		struct stat sst;
		if (fent_path(s, fe, src, sizeof src) < 0 || stat(src, &sst) < 0) {
			fo->uid_check = true;
			continue;
		}
		mm_md_uidlist_remove(&ul, have);
		if (mm_md_uidlist_add(&ul, target, rf->name) < 0)
			continue;
		rf->fe = fe;
		rf->have = have;
		rf->target = target;
		nref++;
	}
	free(it);
	fo->uid_next = ul.next_uid;
	if (dirty) {
		r = mm_md_uidlist_save(fo->dir, &ul);
		if (r < 0) {
			logmsg(s, MM_STORE_LOG_ERR, "cannot write %s/dovecot-uidlist: %s", fo->dir, strerror(-r));
			nref = 0;
		}
	}
	/* re-filed messages: new name listed, now link it and drop the old one */
	bool undone = false;
	for (size_t i = 0; i < nref; i++) {
		struct fent *fe = ref[i].fe;
		const char *sub = fe->in_cur ? "cur" : "new";
		char from[PATHBUF], to[PATHBUF];
		char nb[MM_MD_NAME_MAX + 1];
		snprintf(from, sizeof from, "%s/%s/%s", fo->dir, sub, fent_name(s, fe, nb));
		snprintf(to, sizeof to, "%s/%s/%s", fo->dir, sub, ref[i].name);
		bool linked = link(from, to) == 0;
		int e = linked ? 0 : errno;
		if (linked && unlink(from) < 0) {
			/* renamed by a client (a flag change) between the link and the unlink: the
			 * message would stay under two names, the old base carrying the client's
			 * change, which the scan took for a new delivery (a duplicate on every
			 * node): the new name goes again, and the next pass re-files */
			e = errno;
			linked = false;
			unlink(to);
		}
		if (!linked) {
			/* renamed by a client between the check above and now: the old UID stays
			 * listed (by base, as Dovecot matches it), the next pass re-files */
			if (e != ENOENT)
				logmsg(s, MM_STORE_LOG_WARNING, "cannot re-file %s under a new UID: %s", from,
				       strerror(e));
			mm_md_uidlist_remove(&ul, ref[i].target);
			if (mm_md_uidlist_add(&ul, ref[i].have, nb) == 0)
				undone = true;
			fo->uid_check = true;
			continue;
		}
		uint8_t key[MM_KEY_LEN], body[MM_ID_LEN];
		memcpy(key, fe->key, MM_KEY_LEN);
		bool known = fent_body(s->state, fe, body);
		uint64_t letters = fe->letters;
		bool in_cur = fe->in_cur;
		fent_remove(s, fe);
		struct fent *nf = fent_add(s, fo, ref[i].base, ref[i].name, in_cur, key, known ? body : NULL, letters);
		if (!nf) {
			logmsg(s, MM_STORE_LOG_ERR, "out of memory indexing %s", to);
			continue;
		}
		/* flags merged while the message waited for its new name */
		const struct mm_rec *now = mm_user_get(mu, key);
		if (now && now->type == MM_REC_MESSAGE)
			sync_file_flags(s, nf, now);
	}
	free(ref);
	if (undone && (r = mm_md_uidlist_save(fo->dir, &ul)) < 0)
		logmsg(s, MM_STORE_LOG_ERR, "cannot write %s/dovecot-uidlist: %s", fo->dir, strerror(-r));
	mm_md_uidlist_clear(&ul);
	if (dropped >= 0 && r >= 0)
		folder_gone_clear(fo); /* (else the next pass tries again) */
	fo->uid_sig = uidlist_sig(fo);
	fo->uid_settled = settled && r >= 0;
	mm_md_uidlist_unlock(fo->dir);
	return r < 0 ? r : 0;
}

/* Folders whose re-files waited MM_UID_HOLD_MS for lower moves: planned again, with
 * no hold (mm_uid_hold_may says no now).  s->uid_hold_due is the earliest end of a
 * wait when it was set; a wait that ended sooner leaves it early, which costs one
 * look here. */
static void uid_hold_check(struct mm_store *s, uint64_t now)
{
	/* (a clock stepped back ends the waits rather than stretch them) */
	if (!s->uid_hold_due || (now < s->uid_hold_due && s->uid_hold_due - now <= MM_UID_HOLD_MS))
		return;
	s->uid_hold_due = 0;
	for (struct user *u = s->users; u; u = u->next)
		for (struct folder *fo = u->folders; fo; fo = fo->unext) {
			if (!fo->uid_hold.since_ms)
				continue;
			if (!mm_uid_hold_may(&fo->uid_hold, now)) {
				fo->uid_check = true;
				continue;
			}
			uint64_t due = fo->uid_hold.since_ms + MM_UID_HOLD_MS;
			if (!s->uid_hold_due || due < s->uid_hold_due)
				s->uid_hold_due = due;
		}
}

uint64_t mm_store_uid_hold_due(const struct mm_store *s)
{
	return s->uid_hold_due;
}

/* Every folder flagged since the last pass: conflicts resolved (the deterministic
 * rule, crdt.h), then dovecot-uidlist synced. */
static void uid_pass(struct mm_store *s)
{
	if (!s->imap_uids)
		return;
	struct timeval tv;
	gettimeofday(&tv, NULL);
	uint64_t wall = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
	if (wall > s->now_ms)
		s->now_ms = wall;
	uid_hold_check(s, wall_ms());
	for (struct user *u = s->users; u; u = u->next) {
		bool any = false;
		for (struct folder *fo = u->folders; fo; fo = fo->unext)
			any |= fo->uid_check;
		if (!any || u->absent)
			continue; /* (an absent user's checks wait for its return) */
		struct mm_user *mu = mm_state_user(s->state, u->name, false);
		if (!mu)
			continue;
		/* a second round when the first changed registers or re-filed */
		for (int round = 0; round < 2; round++) {
			bool again = false;
			for (struct folder *fo = u->folders; fo; fo = fo->unext) {
				if (!fo->uid_check)
					continue;
				fo->uid_check = false;
				if (uid_sync_folder(s, u, mu, fo) == -EAGAIN)
					fo->uid_busy = true;
			}
			for (struct folder *fo = u->folders; fo; fo = fo->unext)
				again |= fo->uid_check;
			if (!again)
				break;
		}
		for (struct folder *fo = u->folders; fo; fo = fo->unext)
			if (fo->uid_busy) { /* lock busy: next pass */
				fo->uid_busy = false;
				fo->uid_check = true;
			}
	}
}

/* ---- persistence ------------------------------------------------------------------------------------- */

/* LMDB keys: a 16-byte BLAKE2b of the logical key (user/folder/base can exceed LMDB's
 * key limit); the logical key is repeated in the value. */
static void dbkey(uint8_t out[16], char tag, const void *k, size_t kl)
{
	crypto_generichash_state h;
	crypto_generichash_init(&h, NULL, 0, 16);
	crypto_generichash_update(&h, (const unsigned char *)&tag, 1);
	crypto_generichash_update(&h, k, kl);
	crypto_generichash_final(&h, out, 16);
}

struct wbuf {
	uint8_t *p;
	size_t n, cap;
	bool oom;
};

static void wb_put(struct wbuf *b, const void *d, size_t n)
{
	if (b->oom)
		return;
	if (b->n + n > b->cap) {
		size_t nc = b->cap ? b->cap : 256;
		while (nc < b->n + n)
			nc *= 2;
		uint8_t *np = realloc(b->p, nc);
		if (!np) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = nc;
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
}

static void wb_u64(struct wbuf *b, uint64_t v)
{
	uint8_t x[8];
	for (int i = 0; i < 8; i++)
		x[i] = (uint8_t)(v >> (56 - 8 * i));
	wb_put(b, x, 8);
}

static void wb_str(struct wbuf *b, const char *s)
{
	size_t l = strlen(s);
	uint8_t x[2] = {(uint8_t)(l >> 8), (uint8_t)l};
	wb_put(b, x, 2);
	wb_put(b, s, l);
}

struct rbuf {
	const uint8_t *p, *end;
	bool bad;
};

static void rb_get(struct rbuf *b, void *d, size_t n)
{
	if (b->bad || (size_t)(b->end - b->p) < n) {
		b->bad = true;
		memset(d, 0, n);
		return;
	}
	memcpy(d, b->p, n);
	b->p += n;
}

static uint64_t rb_u64(struct rbuf *b)
{
	uint8_t x[8];
	rb_get(b, x, 8);
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | x[i];
	return v;
}

/* A length-prefixed string into buf (NUL-terminated); false when malformed. */
static bool rb_str(struct rbuf *b, char *buf, size_t buflen)
{
	uint8_t x[2];
	rb_get(b, x, 2);
	size_t l = (size_t)x[0] << 8 | x[1];
	if (b->bad || l >= buflen || (size_t)(b->end - b->p) < l) {
		b->bad = true;
		return false;
	}
	memcpy(buf, b->p, l);
	buf[l] = 0;
	b->p += l;
	return memchr(buf, 0, l) == NULL;
}

/* ---- the file index in the database (MM_DB_FIDX) ------------------------------------- */

/* The file index lives in the database, and memory holds only the entries in use:
 * those read since the last commit that dropped them (fidx_evict), and every entry
 * changed since the last commit (dirty_files; the database has their old state).  At
 * a million files the index in memory cost about 150 bytes a file; it now costs what
 * the folders being worked on hold.  Three kinds of entries make every lookup the
 * store makes one key or one key range:
 *
 *   'F' fh base                  -> the file (fval: key, body, letters, names)
 *   'K' uh key                   -> fh base: the file of a message
 *   'B' uh body fh base          -> (empty): the files of a body
 *
 * uh and fh are 64-bit hashes (big-endian) of "user" and "user\0folder", so a
 * folder's files are one range.  The value names its user and folder in full and a
 * read checks them, so folders whose hashes collide share a range, not entries.
 *
 * An entry read from the database is used only if memory does not know better: when
 * by_base has its (user, folder, base), memory's entry is the file; when dirty_files
 * has it and by_base not, the file is gone since the last commit. */

#define FIDX_HASH_LEN 8
#define FIDX_KEY_MAX (1 + FIDX_HASH_LEN + MM_ID_LEN + FIDX_HASH_LEN + MM_MD_NAME_MAX)
#define FVAL_MAX 2048

struct fval { /* one 'F' entry's value */
	uint8_t key[MM_KEY_LEN], body[MM_ID_LEN];
	uint64_t letters;
	bool in_cur;
	char user[MM_NAME_MAX * 2 + 2], folder[MM_NAME_MAX + 1], base[MM_MD_NAME_MAX + 1],
	    name[MM_MD_NAME_MAX + 1];
};

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static size_t fidx_fkey(uint8_t *k, const char *user, const char *folder, const char *base)
{
	char uf[KBUF];
	size_t ufl = k_uf(uf, user, folder), bl = strlen(base);
	k[0] = 'F';
	put_be64(k + 1, hm_hash(uf, ufl));
	memcpy(k + 1 + FIDX_HASH_LEN, base, bl);
	return 1 + FIDX_HASH_LEN + bl;
}

static size_t fidx_kkey(uint8_t *k, const char *user, const uint8_t key[MM_KEY_LEN])
{
	k[0] = 'K';
	put_be64(k + 1, hm_hash(user, strlen(user)));
	memcpy(k + 1 + FIDX_HASH_LEN, key, MM_KEY_LEN);
	return 1 + FIDX_HASH_LEN + MM_KEY_LEN;
}

/* 'B' uh body, then (when fk is given) the 'F' key's fh base. */
static size_t fidx_bkey(uint8_t *k, const char *user, const uint8_t body[MM_ID_LEN], const uint8_t *fk,
                        size_t fkl)
{
	k[0] = 'B';
	put_be64(k + 1, hm_hash(user, strlen(user)));
	memcpy(k + 1 + FIDX_HASH_LEN, body, MM_ID_LEN);
	size_t n = 1 + FIDX_HASH_LEN + MM_ID_LEN;
	if (fk) {
		memcpy(k + n, fk + 1, fkl - 1);
		n += fkl - 1;
	}
	return n;
}

static bool body_zero(const uint8_t body[MM_ID_LEN])
{
	for (size_t i = 0; i < MM_ID_LEN; i++)
		if (body[i])
			return false;
	return true;
}

/* Decodes an 'F' value (also the layout of the index before MM_DB_FIDX). */
static bool fval_parse(const void *v, size_t vl, struct fval *f)
{
	struct rbuf b = {v, (const uint8_t *)v + vl, false};
	uint8_t c;
	rb_get(&b, f->key, sizeof f->key);
	rb_get(&b, f->body, sizeof f->body);
	rb_u64(&b); /* formerly the file's size and mtime: nothing read them */
	rb_u64(&b);
	f->letters = rb_u64(&b);
	rb_get(&b, &c, 1);
	f->in_cur = c != 0;
	return rb_str(&b, f->user, sizeof f->user) && rb_str(&b, f->folder, sizeof f->folder) &&
	       rb_str(&b, f->base, sizeof f->base) && rb_str(&b, f->name, sizeof f->name) && !b.bad &&
	       f->base[0];
}

static void fval_encode(struct wbuf *wb, const struct fval *f)
{
	wb->n = 0;
	wb_put(wb, f->key, MM_KEY_LEN);
	wb_put(wb, f->body, MM_ID_LEN); /* all zero when unknown */
	wb_u64(wb, 0);
	wb_u64(wb, 0);
	wb_u64(wb, f->letters);
	uint8_t c = f->in_cur;
	wb_put(wb, &c, 1);
	wb_str(wb, f->user);
	wb_str(wb, f->folder);
	wb_str(wb, f->base);
	wb_str(wb, f->name);
}

/* Reads the 'F' entry fk into f: 1, 0 when absent or unreadable, negative errno. */
static int fidx_get(struct mm_store *s, const uint8_t *fk, size_t fkl, struct fval *f)
{
	uint8_t v[FVAL_MAX];
	int n = mm_statedb_get(s->db, MM_DB_FIDX, fk, fkl, v, sizeof v);
	if (n == -ENOENT)
		return 0;
	if (n < 0)
		return n;
	return (size_t)n <= sizeof v && fval_parse(v, (size_t)n, f);
}

/* Writes f's three entries (in the open batch), then drops those of `old` (the
 * entry's previous value, or NULL) that f no longer has.  'K' is dropped only while
 * it still names this file: a re-filed message's 'K' names its new file. */
static int fidx_write(struct mm_store *s, const struct fval *f, const struct fval *old, struct wbuf *wb)
{
	uint8_t fk[FIDX_KEY_MAX], k[FIDX_KEY_MAX];
	const struct fval *id = f ? f : old;
	size_t fkl = fidx_fkey(fk, id->user, id->folder, id->base), kl;
	int r = 0;
	if (f) {
		fval_encode(wb, f);
		if (wb->oom)
			return -ENOMEM;
		r = mm_statedb_put(s->db, MM_DB_FIDX, fk, fkl, wb->p, wb->n);
		kl = fidx_kkey(k, f->user, f->key);
		if (r == 0)
			r = mm_statedb_put(s->db, MM_DB_FIDX, k, kl, fk + 1, fkl - 1);
		kl = fidx_bkey(k, f->user, f->body, fk, fkl);
		if (r == 0 && !body_zero(f->body))
			r = mm_statedb_put(s->db, MM_DB_FIDX, k, kl, "", 0);
	} else {
		r = mm_statedb_del(s->db, MM_DB_FIDX, fk, fkl);
	}
	if (r < 0 || !old)
		return r;
	if (!f || memcmp(f->key, old->key, MM_KEY_LEN) != 0) {
		uint8_t v[FIDX_KEY_MAX];
		kl = fidx_kkey(k, old->user, old->key);
		int n = mm_statedb_get(s->db, MM_DB_FIDX, k, kl, v, sizeof v);
		if (n == (int)fkl - 1 && memcmp(v, fk + 1, fkl - 1) == 0)
			r = mm_statedb_del(s->db, MM_DB_FIDX, k, kl);
	}
	if (r == 0 && !body_zero(old->body) && (!f || memcmp(f->body, old->body, MM_ID_LEN) != 0)) {
		kl = fidx_bkey(k, old->user, old->body, fk, fkl);
		r = mm_statedb_del(s->db, MM_DB_FIDX, k, kl);
	}
	return r;
}

/* Splits a dirty_files key (user \0 folder \0 base). */
static bool split_ufb(const char *lk, size_t lkl, char *user, char *folder, char *base)
{
	const char *end = lk + lkl, *f = memchr(lk, 0, lkl);
	const char *b = f ? memchr(f + 1, 0, (size_t)(end - f - 1)) : NULL;
	if (!b || (size_t)(f - lk) > MM_NAME_MAX * 2 + 1 || (size_t)(b - f - 1) > MM_NAME_MAX ||
	    (size_t)(end - b - 1) > MM_MD_NAME_MAX)
		return false;
	memcpy(user, lk, (size_t)(f - lk) + 1);
	memcpy(folder, f + 1, (size_t)(b - f));
	memcpy(base, b + 1, (size_t)(end - b - 1));
	base[end - b - 1] = 0;
	return true;
}

/* The database's entry for (user, folder, base) made like memory's (by_base). */
static int put_file(struct mm_store *s, const void *lk, size_t lkl, struct wbuf *wb)
{
	struct fval ov, fv, *old = &ov, *f = &fv; /* on the stack: one per changed file */
	int r = 0;
	if (!split_ufb(lk, lkl, old->user, old->folder, old->base))
		goto out;
	uint8_t fk[FIDX_KEY_MAX];
	size_t fkl = fidx_fkey(fk, old->user, old->folder, old->base);
	int had = fidx_get(s, fk, fkl, old);
	if (had < 0) {
		r = had;
		goto out;
	}
	struct fent *fe = fx_get(&s->by_base, lk, lkl);
	if (!fe) {
		r = had ? fidx_write(s, NULL, old, wb) : 0;
		goto out;
	}
	memcpy(f->key, fe->key, MM_KEY_LEN);
	memset(f->body, 0, MM_ID_LEN);
	/* the body id: from the record while the entry is linked by body, else the one
	 * the database had for the same message (an entry read back is linked only when
	 * a lookup by body wants it) */
	if (!(fe->in_body && fent_body(s->state, fe, f->body)) && had &&
	    memcmp(old->key, fe->key, MM_KEY_LEN) == 0)
		memcpy(f->body, old->body, MM_ID_LEN);
	f->letters = fe->letters;
	f->in_cur = fe->in_cur;
	snprintf(f->user, sizeof f->user, "%s", fe->fo->u->name);
	snprintf(f->folder, sizeof f->folder, "%s", fe->fo->name);
	snprintf(f->base, sizeof f->base, "%s", fe->base);
	char nb[MM_MD_NAME_MAX + 1];
	snprintf(f->name, sizeof f->name, "%s", fent_name(s, fe, nb)); /* an odd name is not in nb */
	r = fidx_write(s, f, had ? old : NULL, wb);
out:
	return r;
}

/* ---- letters of files being placed (MM_DB_FIDX 'P') ----------------------------------
 *
 * A placement job computes each file's letters from the records at place_prepare,
 * right after the commit that made them durable, and the file's index entry is
 * written by the first commit after place_finish.  A commit made while the job is out
 * (every merge from a peer asks for one) may make a record's new flags durable while
 * its file is placed with the old ones; a kill -9 before the entry's commit then
 * leaves a file without an entry whose letters differ from the record's, which the
 * rescan would take for a client's rename made while the daemon was down, and stamp
 * anew: the old flags would win on every node.  So such a commit also writes, for
 * each file of the job whose record it writes,
 *
 *   'P' uh key  -> letters (8 bytes, big-endian), user
 *
 * and the first commit after the job deletes them (the one that writes the files'
 * entries).  Open reads what a crash left into pl_old; the rescan compares a file it
 * adopts with those letters (placed_letters_take).  A mark stays in the database
 * until the commit that writes what replaced it (the adopted file's entry, or a
 * placement anew: pmark_taken), not deleted at open: a second kill -9 before the
 * start's scan is committed must find it again.  No commit is added: the marks ride
 * on commits made anyway. */

/* pl_marks value of a crash's mark that was taken (pl_old): deleted at the next commit,
 * whatever job is out (no job's number) */
#define PMARK_TAKEN ((void *)UINTPTR_MAX)

static size_t pmark_key(uint8_t *k, const char *user, const uint8_t key[MM_KEY_LEN])
{
	k[0] = 'P';
	put_be64(k + 1, hm_hash(user, strlen(user)));
	memcpy(k + 1 + FIDX_HASH_LEN, key, MM_KEY_LEN);
	return 1 + FIDX_HASH_LEN + MM_KEY_LEN;
}

/* In commit_batch's transaction: the marks of the job out (s->job) whose records
 * this commit writes, and the deletion of those of jobs that ended.  (place_run may
 * be running: only what place_prepare set and place_run does not touch is read.) */
static int placing_marks_put(struct mm_store *s)
{
	int r = 0;
	uint64_t cur = s->job ? s->job->seq : 0;
	if (s->pl_marks.n) {
		struct keylist ks;
		r = hm_keys(&s->pl_marks, &ks);
		for (size_t i = 0; r == 0 && i < ks.n; i++) {
			if ((uintptr_t)ks.v[i]->val == cur)
				continue;
			const char *user = (const char *)ks.v[i]->k;
			size_t ul = strlen(user);
			uint8_t k[1 + FIDX_HASH_LEN + MM_KEY_LEN];
			r = mm_statedb_del(s->db, MM_DB_FIDX, k, pmark_key(k, user, ks.v[i]->k + ul + 1));
			if (r == -ENOENT)
				r = 0;
		}
		keylist_free(&ks);
	}
	struct mm_store_place *j = s->job;
	for (size_t i = 0; r == 0 && j && i < j->n; i++) {
		struct mm_body_writer *w = j->f[i].w;
		char dk[KBUF];
		size_t dkl = k_ub(dk, w->user, w->key, MM_KEY_LEN);
		if (!hm_get(&s->dirty_recs, dk, dkl))
			continue; /* durable as it was at place_prepare */
		size_t ul = strlen(w->user);
		uint8_t k[1 + FIDX_HASH_LEN + MM_KEY_LEN], v[8 + MM_NAME_MAX * 2 + 2];
		put_be64(v, j->f[i].letters);
		memcpy(v + 8, w->user, ul);
		r = mm_statedb_put(s->db, MM_DB_FIDX, k, pmark_key(k, w->user, w->key), v, 8 + ul);
		if (r == 0)
			r = hm_put(&s->pl_marks, dk, dkl, (void *)(uintptr_t)cur);
	}
	return r;
}

/* After commit_batch's transaction is durable: forgets the marks it deleted. */
static void placing_marks_done(struct mm_store *s)
{
	if (!s->pl_marks.n)
		return;
	uint64_t cur = s->job ? s->job->seq : 0;
	struct keylist ks;
	if (hm_keys(&s->pl_marks, &ks) == 0) /* (no memory: deleted again by the next commit) */
		for (size_t i = 0; i < ks.n; i++)
			if ((uintptr_t)ks.v[i]->val != cur)
				hm_del(&s->pl_marks, ks.v[i]->k, ks.v[i]->kl);
	keylist_free(&ks);
}

struct pmark_ctx {
	struct mm_store *s;
	struct keylist del; /* database keys to delete */
	int bad;
};

/* A mark deleted at open: unreadable (bad), or of a message gone. */
static int pmark_drop(struct pmark_ctx *c, const void *k, size_t kl, bool bad)
{
	struct hent *e = malloc(sizeof(*e) + kl);
	struct hent **nv = realloc(c->del.v, (c->del.n + 1) * sizeof(*nv));
	if (nv)
		c->del.v = nv;
	if (!e || !nv) {
		free(e);
		return -ENOMEM;
	}
	e->kl = kl;
	memcpy(e->k, k, kl);
	c->del.v[c->del.n++] = e;
	c->bad += bad;
	return 0;
}

static int pmark_load_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	struct pmark_ctx *c = arg;
	size_t ul = vl >= 8 ? vl - 8 : 0;
	if (kl != 1 + FIDX_HASH_LEN + MM_KEY_LEN || ul == 0 || ul > MM_NAME_MAX * 2 + 1)
		return pmark_drop(c, k, kl, true);
	char user[MM_NAME_MAX * 2 + 2];
	memcpy(user, (const uint8_t *)v + 8, ul);
	user[ul] = 0;
	if (strlen(user) != ul)
		return pmark_drop(c, k, kl, true);
	struct mm_user *mu = mm_state_user(c->s->state, user, false);
	const struct mm_rec *rec = mu ? mm_user_get(mu, (const uint8_t *)k + 1 + FIDX_HASH_LEN) : NULL;
	if (!rec || rec->type != MM_REC_MESSAGE)
		return pmark_drop(c, k, kl, false); /* expunged: no file of it is adopted */
	uint64_t *l = malloc(sizeof(*l));
	if (!l)
		return -ENOMEM;
	struct rbuf b = {v, (const uint8_t *)v + 8, false}; /* (vl > 8: checked above) */
	*l = rb_u64(&b);
	char mk[KBUF];
	size_t mkl = k_ub(mk, user, (const uint8_t *)k + 1 + FIDX_HASH_LEN, MM_KEY_LEN);
	free(hm_del(&c->s->pl_old, mk, mkl));
	int r = hm_put(&c->s->pl_old, mk, mkl, l);
	if (r < 0)
		free(l);
	return r;
}

/* At open: the marks a crash left, into pl_old (they stay in the database until a
 * file of theirs is placed anew or adopted by a scan, and that is committed:
 * pmark_taken). */
static int placing_marks_load(struct mm_store *s)
{
	struct pmark_ctx c = {.s = s};
	int r = mm_statedb_range(s->db, MM_DB_FIDX, "P", 1, pmark_load_cb, &c);
	if (r == 0 && c.del.n) {
		r = mm_statedb_begin(s->db);
		for (size_t i = 0; r == 0 && i < c.del.n; i++)
			r = mm_statedb_del(s->db, MM_DB_FIDX, c.del.v[i]->k, c.del.v[i]->kl);
		if (r == 0)
			r = mm_statedb_commit(s->db);
		else
			mm_statedb_abort(s->db);
	}
	if (c.bad)
		logmsg(s, MM_STORE_LOG_WARNING, "state.mdb: %d unreadable placement marks skipped", c.bad);
	keylist_free(&c.del);
	return r;
}

/* A crash's mark (key mk in pl_old) is past: its database entry goes with the next
 * commit, the one that writes what replaced it.  (No memory: it stays, and is read
 * again at the next open, where a file of its key has an index entry by then.) */
static void pmark_taken(struct mm_store *s, const char *mk, size_t mkl)
{
	(void)hm_put(&s->pl_marks, mk, mkl, PMARK_TAKEN);
}

/* The letters a crash left for (user, key)'s file (taken: the caller adopts it). */
static bool placed_letters_take(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN],
                                uint64_t *letters_r)
{
	char mk[KBUF];
	size_t mkl = k_ub(mk, user, key, MM_KEY_LEN);
	uint64_t *l = hm_del(&s->pl_old, mk, mkl);
	if (!l)
		return false;
	*letters_r = *l;
	free(l);
	pmark_taken(s, mk, mkl);
	return true;
}

/* The entry f (read from the database) in memory, or NULL when memory knows better
 * (see above) or f is not user's (in folder fo, when given). */
static struct fent *fidx_take(struct mm_store *s, const struct fval *f, const char *user, struct folder *fo)
{
	if (strcmp(f->user, user) != 0 || (fo && strcmp(f->folder, fo->name) != 0))
		return NULL;
	if (!fo) {
		struct user *u = user_get(s, user, true);
		fo = u ? folder_get(s, u, f->folder, true) : NULL;
		if (!fo)
			return NULL;
	}
	char k[KBUF];
	size_t kl = k_ufb(k, user, fo->name, f->base);
	struct fent *fe = fx_get(&s->by_base, k, kl);
	if (fe)
		return fe;
	if (fo->files_all || hm_get(&s->dirty_files, k, kl))
		return NULL; /* removed since the last commit */
	s->materializing = true; /* fent_add marks nothing dirty: the database has it */
	fe = fent_add(s, fo, f->base, f->name, f->in_cur, f->key, NULL, f->letters);
	s->materializing = false;
	return fe;
}

static struct fent *fidx_load(struct mm_store *s, const uint8_t *fk, size_t fkl, const char *user,
                              struct folder *fo)
{
	struct fval f; /* on the stack: a lookup per remote change */
	struct fent *fe = NULL;
	int r = fidx_get(s, fk, fkl, &f);
	if (r > 0)
		fe = fidx_take(s, &f, user, fo);
	else if (r < 0)
		logmsg(s, MM_STORE_LOG_ERR, "cannot read the file index: %s", strerror(-r));
	return fe;
}

/* The entry of the message (user, key), or NULL when no file of it is indexed. */
static struct fent *fent_by_key(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN])
{
	struct fent *fe = fent_by_key_ram(s, user, key);
	if (fe)
		return fe;
	uint8_t k[FIDX_KEY_MAX], v[FIDX_KEY_MAX];
	size_t kl = fidx_kkey(k, user, key);
	int n = mm_statedb_get(s->db, MM_DB_FIDX, k, kl, v + 1, sizeof v - 1);
	if (n <= FIDX_HASH_LEN || n >= (int)sizeof v - 1)
		return NULL;
	v[0] = 'F';
	fe = fidx_load(s, v, (size_t)n + 1, user, NULL);
	return fe && memcmp(fe->key, key, MM_KEY_LEN) == 0 ? fe : NULL;
}

struct fidx_range {
	struct mm_store *s;
	const char *user;             /* folder_cb */
	struct folder *fo;            /* folder_cb */
	uint8_t (*fks)[FIDX_KEY_MAX]; /* body_cb: 'F' keys, read after the range */
	size_t *fkls, n, cap;
};

static int folder_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	struct fidx_range *c = arg;
	(void)k;
	(void)kl;
	struct fval f;
	if (fval_parse(v, vl, &f) && !fidx_take(c->s, &f, c->user, c->fo) &&
	    strcmp(f.folder, c->fo->name) == 0 && strcmp(f.user, c->user) == 0) {
		char mk[KBUF];
		size_t mkl = k_ufb(mk, c->user, f.folder, f.base);
		if (!fx_get(&c->s->by_base, mk, mkl) && !hm_get(&c->s->dirty_files, mk, mkl))
			return -ENOMEM; /* fent_add failed */
	}
	return 0;
}

/* Brings every file entry of fo into memory (fo->files is then the whole folder,
 * until fidx_evict).  0 or negative errno: a scan must not go on without them (it
 * would take every file it does not know for a new delivery). */
static int folder_files(struct mm_store *s, struct folder *fo)
{
	if (fo->files_all)
		return 0;
	uint8_t p[1 + FIDX_HASH_LEN];
	char uf[KBUF];
	size_t ufl = k_uf(uf, fo->u->name, fo->name);
	p[0] = 'F';
	put_be64(p + 1, hm_hash(uf, ufl));
	struct fidx_range c = {.s = s, .user = fo->u->name, .fo = fo};
	int r = mm_statedb_range(s->db, MM_DB_FIDX, p, sizeof p, folder_cb, &c);
	if (r < 0) {
		logmsg(s, MM_STORE_LOG_ERR, "cannot read the file index of %s: %s", fo->dir, strerror(-r));
		return r;
	}
	fo->files_all = true;
	return 0;
}

static int body_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	struct fidx_range *c = arg;
	(void)v;
	(void)vl;
	size_t at = 1 + FIDX_HASH_LEN + MM_ID_LEN;
	if (kl <= at + FIDX_HASH_LEN || kl - at + 1 > FIDX_KEY_MAX)
		return 0;
	if (c->n == c->cap) {
		size_t nc = c->cap ? c->cap * 2 : 4;
		uint8_t(*nf)[FIDX_KEY_MAX] = realloc(c->fks, nc * sizeof(*nf));
		if (nf)
			c->fks = nf;
		size_t *nl = nf ? realloc(c->fkls, nc * sizeof(*nl)) : NULL;
		if (!nl)
			return -ENOMEM;
		c->fkls = nl;
		c->cap = nc;
	}
	c->fks[c->n][0] = 'F';
	memcpy(c->fks[c->n] + 1, (const uint8_t *)k + at, kl - at);
	c->fkls[c->n++] = kl - at + 1;
	return 0;
}

/* The first entry of the files holding `body` for user (the chain goes on by bnext),
 * or NULL.  The database's files of that body are brought in and linked first. */
static struct fent *fent_by_body(struct mm_store *s, const char *user, const uint8_t body[MM_ID_LEN])
{
	uint8_t p[FIDX_KEY_MAX];
	size_t pl = fidx_bkey(p, user, body, NULL, 0);
	struct fidx_range c = {.s = s};
	int r = mm_statedb_range(s->db, MM_DB_FIDX, p, pl, body_cb, &c);
	for (size_t i = 0; r == 0 && i < c.n; i++) {
		struct fent *fe = fidx_load(s, c.fks[i], c.fkls[i], user, NULL);
		if (fe && !fe->in_body)
			body_link(s, fe, body);
	}
	free(c.fks);
	free(c.fkls);
	char k[KBUF];
	size_t kl = k_ub(k, user, body, MM_ID_LEN);
	return fx_get(&s->by_body, k, kl);
}

/* After a commit that left nothing dirty: when more than file_cache entries are in
 * memory, all go (the database has them all). */
static void fidx_evict(struct mm_store *s)
{
	if (s->dirty_files.n || s->by_base.n <= s->file_cache)
		return;
	for (struct user *u = s->users; u; u = u->next)
		for (struct folder *fo = u->folders; fo; fo = fo->unext) {
			for (struct fent *fe = fo->files, *nx; fe; fe = nx) {
				nx = fe->fnext;
				fent_free(s, fe);
			}
			fo->files = NULL;
			fo->files_all = false;
		}
	fx_clear(&s->by_base);
	fx_clear(&s->by_key);
	fx_clear(&s->by_body);
	s->trim_due = true;
}

/* At the end of a scan, and before a lookup made from outside the store: entries a
 * pass read without changing anything (a UID pass over a big folder, bodies served
 * to a joining peer) are not followed by a commit, so they would stay. */
static void fidx_idle(struct mm_store *s)
{
	if (s->in_commit)
		return;
	fidx_evict(s);
	trim_heap(s);
}

struct keys_col {
	uint8_t (*v)[MM_KEY_LEN];
	size_t n, cap;
};

static int keys_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	struct keys_col *c = arg;
	(void)v;
	(void)vl;
	if (kl != 1 + FIDX_HASH_LEN + MM_KEY_LEN)
		return 0;
	if (c->n == c->cap) {
		size_t nc = c->cap ? c->cap * 2 : 1024;
		uint8_t(*nv)[MM_KEY_LEN] = realloc(c->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		c->v = nv;
		c->cap = nc;
	}
	memcpy(c->v[c->n++], (const uint8_t *)k + 1 + FIDX_HASH_LEN, MM_KEY_LEN);
	return 0;
}

static int cmp_key16(const void *a, const void *b)
{
	return memcmp(a, b, MM_KEY_LEN);
}

/* Converts a file index written before MM_DB_FIDX (MM_DB_FILES, keyed by hashes),
 * a chunk per transaction: a kill leaves each entry in one table or the other, and
 * the next start goes on. */
struct conv {
	uint8_t (*k)[16];
	uint8_t **v;
	size_t *vl, n;
};

#define CONV_CHUNK 8192

static int conv_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	struct conv *c = arg;
	if (kl != 16)
		return 0;
	if (!(c->v[c->n] = malloc(vl ? vl : 1)))
		return -ENOMEM;
	memcpy(c->k[c->n], k, 16);
	memcpy(c->v[c->n], v, vl);
	c->vl[c->n] = vl;
	return ++c->n == CONV_CHUNK;
}

static int fidx_convert(struct mm_store *s, size_t *done_r)
{
	struct conv c = {malloc(CONV_CHUNK * 16), calloc(CONV_CHUNK, sizeof(uint8_t *)),
	                 malloc(CONV_CHUNK * sizeof(size_t)), 0};
	struct fval *f = malloc(sizeof(*f));
	struct wbuf wb = {0};
	int r = c.k && c.v && c.vl && f ? 0 : -ENOMEM;
	*done_r = 0;
	while (r == 0) {
		c.n = 0;
		r = mm_statedb_foreach(s->db, MM_DB_FILES, conv_cb, &c);
		if (r > 0)
			r = 0;
		if (r < 0 || c.n == 0)
			break;
		if (*done_r == 0) /* about 40 s at a million files: say why the start is slow */
			logmsg(s, MM_STORE_LOG_INFO, "converting the file index of %zu files to the key-ordered "
			       "layout (once, after an upgrade)", mm_statedb_count(s->db, MM_DB_FILES));
		r = mm_statedb_begin(s->db);
		for (size_t i = 0; r == 0 && i < c.n; i++) {
			if (fval_parse(c.v[i], c.vl[i], f))
				r = fidx_write(s, f, NULL, &wb);
			if (r == 0)
				r = mm_statedb_del(s->db, MM_DB_FILES, c.k[i], 16);
		}
		if (r == 0)
			r = mm_statedb_commit(s->db);
		else
			mm_statedb_abort(s->db);
		for (size_t i = 0; i < c.n; i++) {
			free(c.v[i]);
			c.v[i] = NULL;
		}
		if (r == 0)
			*done_r += c.n;
	}
	free(c.k);
	free(c.v);
	free(c.vl);
	free(f);
	free(wb.p);
	return r;
}

static int put_rec(struct mm_store *s, const char *user, const uint8_t key[MM_KEY_LEN], struct wbuf *wb)
{
	uint8_t k[32];
	uint8_t pos[MM_KEY_LEN];
	mm_user_position(user, pos);
	memcpy(k, pos, MM_KEY_LEN);
	memcpy(k + MM_KEY_LEN, key, MM_KEY_LEN);
	struct mm_user *mu = mm_state_user(s->state, user, false);
	const struct mm_rec *r = mu ? mm_user_get(mu, key) : NULL;
	if (!r)
		return mm_statedb_del(s->db, MM_DB_RECS, k, sizeof k);
	wb->n = 0;
	wb_str(wb, user);
	size_t at = wb->n;
	ssize_t need = mm_rec_encode(r, NULL, 0);
	if (need == -ENOSPC || need <= 0)
		need = 512;
	for (;;) {
		if (at + (size_t)need > wb->cap) {
			size_t nc = at + (size_t)need;
			uint8_t *np = realloc(wb->p, nc);
			if (!np)
				return -ENOMEM;
			wb->p = np;
			wb->cap = nc;
		}
		ssize_t n = mm_rec_encode(r, wb->p + at, wb->cap - at);
		if (n == -ENOSPC) {
			need = (ssize_t)(wb->cap - at) * 2;
			continue;
		}
		if (n < 0)
			return (int)n;
		if ((size_t)n > wb->cap - at) {
			need = n;
			continue;
		}
		wb->n = at + (size_t)n;
		break;
	}
	return mm_statedb_put(s->db, MM_DB_RECS, k, sizeof k, wb->p, wb->n);
}

static int put_folder(struct mm_store *s, const void *lk, size_t lkl, struct wbuf *wb)
{
	uint8_t k[16];
	dbkey(k, 'd', lk, lkl);
	struct folder *fo = hm_get(&s->folders, lk, lkl);
	if (!fo || (!fo->on_disk && !fo->subscribed))
		return mm_statedb_del(s->db, MM_DB_FOLDERS, k, sizeof k);
	wb->n = 0;
	/* bit 2: INBOX's entry, the user absent (user_absent; versions before ignore it) */
	uint8_t f = (uint8_t)(fo->on_disk | fo->subscribed << 1 | (fo->u->absent && !strcmp(fo->name, "INBOX")) << 2);
	wb_put(wb, &f, 1);
	wb_str(wb, fo->u->name);
	wb_str(wb, fo->name);
	wb_u64(wb, fo->dir_sig); /* optional trailer: entries written before it lack it */
	/* second optional trailer: the uidlist as the last completed UID pass left it
	 * (signature 0 while a pass is due: the next start reads the uidlist) */
	fo->db_uid_sig = fo->uid_check ? 0 : fo->uid_sig;
	fo->db_uid_next = fo->uid_next;
	fo->db_uid_settled = fo->uid_settled;
	wb_u64(wb, fo->db_uid_sig);
	wb_u64(wb, (uint64_t)fo->db_uid_next | (uint64_t)fo->db_uid_settled << 32);
	wb_u64(wb, fo->root_id); /* third optional trailer (user_present) */
	if (wb->oom)
		return -ENOMEM;
	return mm_statedb_put(s->db, MM_DB_FOLDERS, k, sizeof k, wb->p, wb->n);
}

/* Writes the dirty sets in one transaction; clears them only when it committed. */
/* Marks the folders whose UID-pass record (db_uid_*) no longer says what the folder
 * does, so commit_batch writes them. */
static void folder_uid_dirty(struct mm_store *s)
{
	if (!s->imap_uids)
		return;
	for (struct user *u = s->users; u; u = u->next)
		for (struct folder *fo = u->folders; fo; fo = fo->unext)
			if ((fo->uid_check ? 0 : fo->uid_sig) != fo->db_uid_sig || fo->uid_next != fo->db_uid_next ||
			    fo->uid_settled != fo->db_uid_settled)
				mark_folder(s, fo);
}

static int commit_batch(struct mm_store *s)
{
	s->unsaved_new = 0;
	folder_uid_dirty(s);
	struct keylist recs = {0}, files = {0}, folders = {0};
	int r = hm_keys(&s->dirty_recs, &recs);
	if (r == 0)
		r = hm_keys(&s->dirty_files, &files);
	if (r == 0)
		r = hm_keys(&s->dirty_folders, &folders);
	if (r == 0)
		r = mm_statedb_begin(s->db);
	if (r < 0)
		goto out;
	struct wbuf wb = {0};
	for (size_t i = 0; r == 0 && i < recs.n; i++) {
		const char *user = (const char *)recs.v[i]->k;
		size_t ul = strlen(user);
		if (ul + 1 + MM_KEY_LEN == recs.v[i]->kl)
			r = put_rec(s, user, recs.v[i]->k + ul + 1, &wb);
	}
	for (size_t i = 0; r == 0 && i < files.n; i++)
		r = put_file(s, files.v[i]->k, files.v[i]->kl, &wb);
	for (size_t i = 0; r == 0 && i < folders.n; i++)
		r = put_folder(s, folders.v[i]->k, folders.v[i]->kl, &wb);
	if (r == 0 && (s->job || s->pl_marks.n))
		r = placing_marks_put(s);
	if (r == 0) {
		uint8_t c[8];
		for (int i = 0; i < 8; i++)
			c[i] = (uint8_t)(s->clock->last >> (56 - 8 * i));
		r = mm_statedb_put(s->db, MM_DB_META, "clock", 5, c, 8);
	}
	if (r == 0 && !s->format_saved) {
		uint8_t c[8] = {0, 0, 0, 0, 0, 0, 0, MM_STATEDB_FORMAT};
		r = mm_statedb_put(s->db, MM_DB_META, "format", 6, c, 8);
	}
	for (size_t i = 0; r == 0 && i < s->n_meta; i++) {
		uint8_t c[8];
		for (int j = 0; j < 8; j++)
			c[j] = (uint8_t)(s->meta[i].v >> (56 - 8 * j));
		r = mm_statedb_put(s->db, MM_DB_META, s->meta[i].key, strlen(s->meta[i].key), c, 8);
	}
	free(wb.p);
	if (r == 0)
		r = mm_statedb_commit(s->db);
	else
		mm_statedb_abort(s->db);
	if (r == 0) {
		s->n_meta = 0;
		s->format_saved = true;
		placing_marks_done(s);
		/* only what was written: effects may not add during a commit, but be exact */
		for (size_t i = 0; i < recs.n; i++)
			hm_del(&s->dirty_recs, recs.v[i]->k, recs.v[i]->kl);
		for (size_t i = 0; i < files.n; i++)
			hm_del(&s->dirty_files, files.v[i]->k, files.v[i]->kl);
		for (size_t i = 0; i < folders.n; i++)
			hm_del(&s->dirty_folders, folders.v[i]->k, folders.v[i]->kl);
	} else {
		logmsg(s, MM_STORE_LOG_ERR, "cannot commit the state database: %s (will retry)", strerror(-r));
	}
out:
	keylist_free(&recs);
	keylist_free(&files);
	keylist_free(&folders);
	return r;
}

struct subs_ctx {
	struct namelist names;
	struct user *u;
	struct mm_store *s;
};

static int subs_rec_cb(void *arg, const struct mm_rec *r)
{
	struct subs_ctx *c = arg;
	if (r->type == MM_REC_FOLDER && r->folder.subscribed.value)
		return namelist_add(&c->names, r->folder.name);
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Deferred mirror work that reads users' states (not allowed inside effects). */
static void mirror_deferred(struct mm_store *s)
{
	/* UID moves and needs made here are pushed after this commit makes them durable */
	if (!s->out && s->commit_out) {
		s->out = s->commit_out;
		uid_pass(s);
		s->out = NULL;
	} else {
		uid_pass(s);
	}
	for (struct user *u = s->users; u; u = u->next) {
		struct mm_user *mu = mm_state_user(s->state, u->name, false);
		if (!mu || u->absent)
			continue; /* (an absent user's folder checks and subscriptions wait) */
		for (struct folder *fo = u->folders; fo; fo = fo->unext) {
			if (fo->kw_retry && folder_files(s, fo) == 0) {
				/* a keyword add failed: every file gets the letters its record asks
				 * for (sync_file_flags does nothing where they are right already) */
				fo->kw_retry = false;
				for (struct fent *fe = fo->files; fe; fe = fe->fnext) {
					const struct mm_rec *r = mm_user_get(mu, fe->key);
					if (r && r->type == MM_REC_MESSAGE)
						sync_file_flags(s, fe, r);
				}
			}
			if (!fo->check)
				continue;
			fo->check = false;
			if (!strcmp(fo->name, "INBOX")) {
				/* the user removed: its Maildir goes after the folders, once the
				 * commit's spare files are out of its tmp/ */
				if (fo->on_disk && user_removed(mu))
					u->retire = true;
				else
					inbox_revive(s, mu, false, s->commit_out);
				continue;
			}
			if (!fo->on_disk || mm_user_folder_visible(mu, fo->name))
				continue;
			int r = mm_md_folder_remove(u->path, fo->name);
			if (r == 0) {
				fo->on_disk = false;
				fo->remove_failed = false;
				mark_folder(s, fo);
				if (user_removed(mu))
					u->retire = true; /* the last folder that kept a removed user's Maildir? */
			} else {
				logmsg(s, MM_STORE_LOG_WARNING, "folder %s was deleted elsewhere but is kept here: %s",
				       fo->dir, strerror(-r));
				/* a file in its tmp/, one not scanned yet: each scan of the folder
				 * tries again, and does not take it for a folder made here */
				fo->remove_failed = r == -ENOTEMPTY;
			}
		}
		if (!u->subs_dirty)
			continue;
		/* Dovecot's lock on the file, from the read below to the rename: a SUBSCRIBE
		 * or UNSUBSCRIBE it makes meanwhile waits for us */
		int lk = mm_md_is_maildir(u->path) ? mm_md_subs_lock(u->path, SUBS_LOCK_MS) : -ENOENT;
		if (lk == -EAGAIN) {
			logmsg(s, MM_STORE_LOG_WARNING, "%s/subscriptions.lock is held by another process: "
			       "the subscriptions file is written at a later commit", u->path);
			s->wants_commit = true;
			continue;
		}
		if (!u->subs_crdt) {
			/* a SUBSCRIBE or UNSUBSCRIBE Dovecot wrote since the last scan: taken in
			 * first (pushed with this commit's delta), or the file written from the
			 * CRDT would throw it away on every node */
			struct mm_delta *o = s->out;
			if (!s->out)
				s->out = s->commit_out;
			int sr = scan_subscriptions(s, u, mu);
			s->out = o;
			if (u->absent) {
				if (lk == 0)
					mm_md_subs_unlock(u->path);
				continue; /* (gone meanwhile: written when it is back) */
			}
			if (sr < 0) {
				/* not read (EIO, EACCES): written over, a SUBSCRIBE or UNSUBSCRIBE
				 * Dovecot made since the last scan would be lost on every node */
				if (lk == 0)
					mm_md_subs_unlock(u->path);
				s->wants_commit = true;
				continue;
			}
		}
		u->subs_dirty = false;
		u->subs_crdt = false;
		struct subs_ctx c = {{0}, u, s};
		if (mm_user_foreach(mu, NULL, 0, subs_rec_cb, &c) == 0 && mm_md_is_maildir(u->path)) {
			user_owner(s, u);
			if (c.names.n > 1)
				qsort(c.names.v, c.names.n, sizeof(char *), cmp_str); /* stable file content */
			int r = mm_md_subs_write(u->path, (const char *const *)c.names.v, c.names.n, &u->owner);
			if (r < 0) {
				logmsg(s, MM_STORE_LOG_ERR, "cannot write %s/subscriptions: %s", u->path, strerror(-r));
				u->subs_dirty = true;
			} else {
				for (struct folder *fo = u->folders; fo; fo = fo->unext) {
					bool sub = namelist_has(&c.names, fo->name);
					if (sub != fo->subscribed) {
						fo->subscribed = sub;
						mark_folder(s, fo);
					}
				}
				for (size_t i = 0; i < c.names.n; i++) {
					struct folder *fo = folder_get(s, u, c.names.v[i], true);
					if (fo && !fo->subscribed) {
						fo->subscribed = true;
						mark_folder(s, fo);
					}
				}
			}
		}
		if (lk == 0)
			mm_md_subs_unlock(u->path);
		namelist_free(&c.names);
	}
}

/* Removes the Maildir of each user whose INBOX is no longer visible (mirror_deferred
 * set u->retire: the user was removed from the cluster, here or elsewhere) once no
 * other folder of it is on disk.  A Maildir that still holds something mailmesh does
 * not own (a delivery in tmp/, a Sieve script in a home directory used as the
 * Maildir) is kept and logged once; each scan of its INBOX tries again, and a message
 * delivered into it makes the user visible again.  Returns whether the file index
 * changed. */
static bool users_retire(struct mm_store *s)
{
	bool changed = false;
	for (struct user *u = s->users; u; u = u->next) {
		if (!u->retire)
			continue;
		u->retire = false;
		struct mm_user *mu = mm_state_user(s->state, u->name, false);
		struct folder *inbox = folder_get(s, u, "INBOX", false);
		if (!mu || u->absent || !inbox || !inbox->on_disk || !user_removed(mu))
			continue;
		const char *kept_by = NULL;
		for (struct folder *fo = u->folders; fo && !kept_by; fo = fo->unext)
			if (fo != inbox && fo->on_disk)
				kept_by = fo->name;
		char left[256] = "";
		int r = kept_by ? -ENOTEMPTY : folder_files(s, inbox) < 0 ? -ENOMEM : inbox->files ? -ENOTEMPTY : 0;
		if (r == 0)
			r = mm_md_maildir_remove(u->path, left, sizeof left);
		if (r == 0) {
			inbox->on_disk = false;
			inbox->root_id = 0;
			inbox->remove_failed = false;
			inbox->dir_sig = 0;
			inbox->uid_sig = 0;
			mark_folder(s, inbox);
			changed = true;
			logmsg(s, MM_STORE_LOG_INFO, "Maildir %s of %s removed: the user was removed from the cluster",
			       u->path, u->name);
			continue;
		}
		if (!inbox->remove_failed)
			logmsg(s, MM_STORE_LOG_WARNING,
			       "%s was removed from the cluster but its Maildir %s is kept here: %s%s%s%s; remove "
			       "what is left by hand, or deliver to the user to keep it", u->name, u->path,
			       kept_by ? "folder " : "", kept_by ? kept_by : left, kept_by || left[0] ? " is left: " : "",
			       kept_by ? "not removed yet" : strerror(-r));
		inbox->remove_failed = true;
	}
	return changed;
}

struct remove_ctx {
	struct namelist names; /* every folder with a record or a live message */
	struct hmap seen;      /* the same names, to look up (a user may have many) */
	uint8_t (*keys)[MM_KEY_LEN]; /* the live messages (want_keys) */
	size_t messages, cap;
	bool want_keys;
};

static int remove_rec_cb(void *arg, const struct mm_rec *r)
{
	struct remove_ctx *c = arg;
	const char *name = NULL;
	if (r->type == MM_REC_FOLDER && (r->folder.exists.value || r->folder.subscribed.value))
		name = r->folder.name;
	else if (r->type == MM_REC_MESSAGE) {
		if (c->want_keys) {
			if (c->messages == c->cap) {
				size_t nc = c->cap ? 2 * c->cap : 256;
				uint8_t(*nk)[MM_KEY_LEN] = realloc(c->keys, nc * sizeof(*nk));
				if (!nk)
					return -ENOMEM;
				c->keys = nk;
				c->cap = nc;
			}
			memcpy(c->keys[c->messages], r->key, MM_KEY_LEN);
		}
		c->messages++;
		name = r->msg.folder;
	}
	if (!name || hm_get(&c->seen, name, strlen(name)))
		return 0;
	int e = hm_put(&c->seen, name, strlen(name), c);
	return e < 0 ? e : namelist_add(&c->names, name);
}

/* Removed already, and nothing of the user left: a second run would only race the
 * first's revives (inbox_revive). */
static bool removal_done(const struct mm_user *mu, const struct remove_ctx *c)
{
	return mm_user_removed(mu) && !c->messages && !c->names.n;
}

static void remove_ctx_free(struct remove_ctx *c)
{
	namelist_free(&c->names);
	hm_clear(&c->seen);
	free(c->keys);
	memset(c, 0, sizeof(*c));
}

int mm_store_user_describe(struct mm_store *s, const char *user, struct mm_store_removal *removal_r)
{
	struct mm_user *mu = user ? mm_state_user(s->state, user, false) : NULL;
	if (!mu)
		return -ENOENT;
	struct remove_ctx c = {0};
	int r = mm_user_foreach(mu, NULL, 0, remove_rec_cb, &c);
	struct user *u = user_get(s, user, false);
	struct mm_store_removal res = {c.messages, c.names.n, u && u->absent};
	if (r >= 0 && removal_done(mu, &c))
		r = -EALREADY;
	remove_ctx_free(&c);
	if (r < 0)
		return r;
	*removal_r = res;
	return 0;
}

int mm_store_user_remove(struct mm_store *s, const char *user, uint64_t now_ms, struct mm_delta *out,
                         struct mm_store_removal *removal_r)
{
	struct mm_store_removal res = {0};
	struct mm_user *mu = user ? mm_state_user(s->state, user, false) : NULL;
	if (!mu)
		return -ENOENT;
	struct user *u = user_get(s, user, true);
	if (!u)
		return -ENOMEM;
	struct remove_ctx c = {.want_keys = true};
	int r = mm_user_foreach(mu, NULL, 0, remove_rec_cb, &c);
	if (r >= 0 && removal_done(mu, &c))
		r = -EALREADY;
	if (r < 0) {
		remove_ctx_free(&c);
		return r;
	}
	s->now_ms = now_ms;
	s->out = out;
	s->changes = 0;
	/* INBOX's delete is what says "removed" to every node (user_removed): it needs a
	 * record to delete, which a user new here may not have yet */
	if (!namelist_has(&c.names, "INBOX")) {
		uint8_t key[MM_KEY_LEN];
		mm_key_folder("INBOX", key);
		if (!mm_user_get(mu, key) && (r = mm_user_folder_create(mu, "INBOX", tick(s), mm_store_effect, s, out)) < 0) {
			remove_ctx_free(&c);
			return r;
		}
		if ((r = namelist_add(&c.names, "INBOX")) < 0) {
			remove_ctx_free(&c);
			return r;
		}
	}
	/* Each folder deleted, INBOX too, with its messages, as an IMAP DELETE of every
	 * folder would: the records every node merges, and mirrors like any other
	 * (mm_store_effect): files unlinked now, folders and then the Maildir removed at
	 * the commit.  A message delivered concurrently elsewhere survives, and with it
	 * its folder and the user.  The messages first, in one pass (a folder's delete
	 * would walk every record of the user for its own), then the folders. */
	/* each folder's dovecot-uidlist lock held once for all its unlinks, not taken
	 * and dropped for each file (the lock is re-entrant in this process) */
	struct namelist locked = {0};
	for (struct folder *fo = u->folders; fo && !u->absent; fo = fo->unext)
		if (fo->on_disk && mm_md_uidlist_lock(fo->dir, 2000) == 0 && namelist_add(&locked, fo->dir) < 0)
			mm_md_uidlist_unlock(fo->dir);
	s->removing = true;
	for (size_t i = 0; i < c.messages && r >= 0; i++)
		if ((r = mm_user_expunge(mu, c.keys[i], tick(s), mm_store_effect, s, out)) > 0)
			s->changes++;
	s->removing = false;
	for (size_t i = 0; i < locked.n; i++)
		mm_md_uidlist_unlock(locked.v[i]);
	namelist_free(&locked);
	for (size_t i = 0; i < c.names.n && r >= 0; i++) {
		r = mm_user_folder_subscribe(mu, c.names.v[i], false, tick(s), mm_store_effect, s, out);
		if (r > 0)
			s->changes++;
		if (r >= 0 || r == -ENOENT)
			r = mm_user_folder_delete(mu, c.names.v[i], tick(s), mm_store_effect, s, out);
		if (r > 0) {
			s->changes++;
			res.folders++;
		}
		if (r == -ENOENT)
			r = 0;
	}
	res.messages = c.messages;
	res.absent = u->absent || user_gone(s, u);
	s->out = NULL;
	remove_ctx_free(&c);
	if (r < 0)
		return r;
	if (removal_r)
		*removal_r = res;
	return s->changes;
}

bool mm_store_wants_commit(const struct mm_store *s)
{
	return s->wants_commit;
}

int mm_store_commit(struct mm_store *s)
{
	if (s->in_commit)
		return 0;
	s->in_commit = true;
	s->wants_commit = false;
	if (s->commit_out)
		mm_delta_clear(s->commit_out);
	mirror_deferred(s);
	int r = commit_batch(s);
	if (r == 0 && s->tmp_queue && !s->loading)
		recover_tmp_queued(s, true); /* (their records are durable now) */
	/* Placing a body queues local copies for the other messages with the same bytes
	 * (a COPY into another folder): their source file exists only now, so go round
	 * again rather than leave them for a commit that a quiet node may not make soon
	 * (a joining node once kept one message of a copied folder missing). */
	for (int round = 0; round < 3 && r == 0 && (s->pending || (s->staged && !gathering(s) && !s->placing));
	     round++) {
		if (s->pending) {
			/* the records are durable now: local copies may carry their keys */
			struct pending *p = s->pending;
			s->pending = NULL;
			while (p) {
				struct pending *nx = p->next;
				int cr = p->tries && round ? 0 : copy_local(s, p->user, p->key, p->tries);
				if (p->tries && round) { /* re-queued this commit: wait for the next */
					struct pending *q = add_pending(s, p->user, p->key);
					if (q)
						q->tries = p->tries;
				}
				if (cr < 0 && cr != -EEXIST && cr != -ENOENT)
					logmsg(s, MM_STORE_LOG_WARNING, "local copy of a message for %s failed: %s",
					       p->user, strerror(-cr));
				free(p->user);
				free(p);
				p = nx;
			}
			if (s->dirty_files.n || s->dirty_folders.n || s->dirty_recs.n)
				r = commit_batch(s);
		}
		/* every staged body's record is durable now (or the commit failed: drop
		 * them, they stay missing and are asked for again, rather than retry on
		 * every flush) */
		if (s->staged && !gathering(s) && !s->placing) {
			struct mm_body_writer *list = unstage_all(s);
			if (r == 0)
				place_list(s, list, false);
			else
				drop_list(list);
		}
	}
	if (r < 0 && s->staged)
		drop_list(unstage_all(s));
	spares_drop(s);
	if (r == 0 && users_retire(s))
		r = commit_batch(s); /* (a restart must not take the Maildir for absent) */
	if (r == 0 && s->n_held) {
		s->in_commit = false; /* placing may list UIDs; the records are durable */
		release_held(s);
	}
	s->in_commit = false;
	quota_flush(s); /* (expunges merged since the last flush) */
	if (r == 0)
		fidx_evict(s);
	trim_heap(s);
	return r;
}

/* ---- open / free ---------------------------------------------------------------------------------------- */

struct load_ctx {
	struct mm_store *s;
	struct mm_arena arena;
	int bad;
	/* the user of the last record: the database keeps a user's records together, and
	 * finding a user by name hashes the name (mm_state_user), which was a tenth of a
	 * restart with 1,000,000 messages */
	char user[MM_NAME_MAX * 2 + 2];
	struct mm_user *u;
};

static int load_rec_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	struct load_ctx *c = arg;
	(void)k;
	(void)kl;
	struct rbuf b = {v, (const uint8_t *)v + vl, false};
	char user[MM_NAME_MAX * 2 + 2];
	if (!rb_str(&b, user, sizeof user)) {
		c->bad++;
		return 0;
	}
	struct mm_rec r;
	mm_arena_reset(&c->arena);
	if (mm_rec_decode(b.p, (size_t)(b.end - b.p), &r, &c->arena) < 0) {
		c->bad++;
		return 0;
	}
	/* (mm_rec_decode validated it) */
	if (!c->u || strcmp(user, c->user) != 0) {
		if (!*user) {
			c->bad++;
			return 0;
		}
		c->u = mm_state_user(c->s->state, user, true); /* (users are never freed here) */
		if (!c->u)
			return -ENOMEM;
		memcpy(c->user, user, sizeof c->user);
	}
	int rr = mm_user_merge_valid(c->u, &r, NULL, NULL);
	return rr == -ENOMEM ? rr : 0;
}

static int load_folder_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	struct load_ctx *c = arg;
	(void)k;
	(void)kl;
	struct rbuf b = {v, (const uint8_t *)v + vl, false};
	uint8_t f;
	rb_get(&b, &f, 1);
	char user[MM_NAME_MAX * 2 + 2], folder[MM_NAME_MAX + 1];
	if (!rb_str(&b, user, sizeof user) || !rb_str(&b, folder, sizeof folder) || b.bad) {
		c->bad++;
		return 0;
	}
	struct user *u = user_get(c->s, user, true);
	struct folder *fo = u ? folder_get(c->s, u, folder, true) : NULL;
	if (!fo) {
		c->bad++;
		return 0;
	}
	fo->on_disk = f & 1;
	fo->subscribed = (f & 2) != 0;
	if ((f & 4) && !strcmp(folder, "INBOX"))
		u->absent = true; /* (logged again at its first scan) */
	fo->dir_sig = b.p < b.end ? rb_u64(&b) : 0;
	if (b.bad)
		fo->dir_sig = 0;
	uint64_t usig = b.p < b.end ? rb_u64(&b) : 0, unext = b.p < b.end ? rb_u64(&b) : 0;
	if (b.bad)
		usig = unext = 0;
	fo->root_id = b.p < b.end ? rb_u64(&b) : 0;
	if (b.bad)
		fo->root_id = 0;
	fo->uid_sig = fo->db_uid_sig = usig;
	fo->uid_next = fo->db_uid_next = (uint32_t)unext;
	fo->uid_settled = fo->db_uid_settled = usig && (unext >> 32 & 1);
	/* the first scan checks every uidlist that changed since its last completed pass,
	 * or has none on record (a pass was due, or a database from before the trailer) */
	fo->uid_check = fo->on_disk && !usig;
	return 0;
}

struct miss_ctx {
	struct mm_store *s;
	const char *user;
	struct keys_col keys; /* the user's messages with a file here, sorted */
	size_t at;
};

/* After a load: each message without a file here is missing.  The records come in
 * key order, and the database lists the keys with a file ('K' entries) in the same
 * order: one pass over each, no lookup per message. */
static int miss_rec_cb(void *arg, const struct mm_rec *r)
{
	struct miss_ctx *c = arg;
	if (r->type != MM_REC_MESSAGE && r->type != MM_REC_EXPUNGED)
		return 0;
	while (c->at < c->keys.n && memcmp(c->keys.v[c->at], r->key, MM_KEY_LEN) < 0)
		c->at++;
	bool have = c->at < c->keys.n && memcmp(c->keys.v[c->at], r->key, MM_KEY_LEN) == 0;
	if (r->type == MM_REC_EXPUNGED) {
		if (have) /* a file of an expunged message still indexed: its unlink failed */
			dead_note(c->s, c->user, r->key);
		return 0; /* (no search below for each tombstone: most have no file) */
	}
	if (!have && c->keys.n) /* in case the two orders ever differ: the one answer that counts */
		have = bsearch(r->key, c->keys.v, c->keys.n, MM_KEY_LEN, cmp_key16) != NULL;
	if (!have)
		set_missing(c->s, c->user, r->key, r->msg.body, r->msg.folder, true);
	return 0;
}

static int miss_user_cb(void *arg, struct mm_user *u)
{
	struct miss_ctx c = {.s = arg, .user = mm_user_name(u)};
	uint8_t p[1 + FIDX_HASH_LEN];
	p[0] = 'K';
	put_be64(p + 1, hm_hash(c.user, strlen(c.user)));
	int r = mm_statedb_range(c.s->db, MM_DB_FIDX, p, sizeof p, keys_cb, &c.keys);
	if (r == 0) {
		/* sorted already (the database's order); a user-hash collision mixes in
		 * another user's keys, which no record of this user has */
		note_scratch(c.s, c.keys.n);
		r = mm_user_foreach(u, NULL, 0, miss_rec_cb, &c);
	}
	free(c.keys.v);
	return r;
}

/* Bodies a previous run left in a folder's tmp/: held back for UID order, staged when
 * it stopped, or written when it was killed.  Each file we write there is named
 * "...mm_<record key in hex>,S=<size>", so one whose record is still live, still
 * missing its file here, and whose bytes are complete and match the id is taken as if
 * it had just arrived (placed at the next flush, in UID order) instead of being
 * fetched again; ours that no longer serve are removed.  Other files (Dovecot's, a
 * folder being assembled) are left alone.  Returns the number of bodies recovered. */
static size_t recover_folder_tmp(struct mm_store *s, struct user *u, struct folder *fo, bool running)
{
	char dir[PATHBUF], mine[32];
	snprintf(mine, sizeof mine, "P%ld.mm_", (long)getpid());
	if (snprintf(dir, sizeof dir, "%s/tmp", fo->dir) >= (int)sizeof dir)
		return 0;
	DIR *d = opendir(dir);
	if (!d)
		return 0;
	size_t got = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		const char *m = strstr(de->d_name, ".mm_");
		uint8_t key[MM_KEY_LEN];
		size_t bin_len = 0;
		if (!m || strlen(de->d_name) >= sizeof(((struct mm_body_writer *)0)->base) ||
		    strlen(m) < 4 + 2 * MM_KEY_LEN + 3 || strncmp(m + 4 + 2 * MM_KEY_LEN, ",S=", 3) != 0 ||
		    sodium_hex2bin(key, sizeof key, m + 4, 2 * MM_KEY_LEN, NULL, &bin_len, NULL) != 0 ||
		    bin_len != MM_KEY_LEN)
			continue;
		char path[PATHBUF];
		if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path)
			continue;
		if (running) {
			/* after the start, tmp/ also holds this run's files: bodies being
			 * written, staged, held for UID order (also under a name a previous
			 * run gave, place_finish's listed names).  Only files older than this
			 * run, not named by this process, are a previous run's. */
			struct stat ts;
			if (strstr(de->d_name, mine) || lstat(path, &ts) < 0 ||
			    ts.st_ctim.tv_sec > s->opened.tv_sec ||
			    (ts.st_ctim.tv_sec == s->opened.tv_sec && ts.st_ctim.tv_nsec >= s->opened.tv_nsec))
				continue;
		}
		struct mm_user *mu = mm_state_user(s->state, u->name, false);
		const struct mm_rec *r = mu ? mm_user_get(mu, key) : NULL;
		char k[KBUF];
		size_t kl = k_ub(k, u->name, key, MM_KEY_LEN);
		if (!r || r->type != MM_REC_MESSAGE || strcmp(r->msg.folder, fo->name) != 0 ||
		    !hm_get(&s->missing, k, kl) || fent_by_key(s, u->name, key) || staged_get(s, u->name, key)) {
			unlink(path); /* ours, and no longer wanted here */
			continue;
		}
		uint64_t size = r->msg.size;
		int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != size) {
			if (fd >= 0)
				close(fd);
			unlink(path); /* cut short by a crash: fetched again */
			continue;
		}
		struct mm_body_writer *w = calloc(1, sizeof(*w));
		if (!w || !(w->user = strdup(u->name))) {
			free(w);
			close(fd);
			break;
		}
		w->s = s;
		w->fo = fo;
		w->fd = fd;
		memcpy(w->key, key, MM_KEY_LEN);
		snprintf(w->base, sizeof w->base, "%s", de->d_name);
		crypto_generichash_init(&w->h, NULL, 0, MM_ID_LEN);
		uint8_t buf[65536];
		for (;;) {
			ssize_t n = pread(fd, buf, sizeof buf, (off_t)w->n);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				if (n < 0)
					w->err = -errno;
				break;
			}
			crypto_generichash_update(&w->h, buf, (size_t)n);
			w->n += (uint64_t)n;
		}
		/* complete and what the record says: sealed now (durable, its mtime the
		 * INTERNALDATE) and closed, so recovering thousands holds no descriptors
		 * and needs no flush before the daemon is up; place_list takes a writer
		 * without a descriptor as sealed */
		uint8_t id[MM_ID_LEN];
		crypto_generichash_state h2 = w->h;
		crypto_generichash_final(&h2, id, MM_ID_LEN);
		bool mismatch = !w->err && w->n == size && sodium_memcmp(id, r->msg.body, MM_ID_LEN) != 0;
		bool bad = w->err || w->n != size || mismatch;
		if (!bad) {
			bad = mm_md_tmp_seal(w->fd, r->msg.internaldate, true) < 0;
			w->fd = -1; /* closed by the seal in any case */
			w->synced = true;
		}
		if (bad) {
			if (mismatch)
				logmsg(s, MM_STORE_LOG_WARNING, "%s: does not match its id: removed", path);
			writer_free(&w, true);
			continue;
		}
		if (mm_store_body_stage(&w) == 0 && !w)
			got++;
	}
	closedir(d);
	return got;
}

/* A missing message of ours that dovecot-uidlist lists already (a placement whose
 * rename failed, a full disk, before the last stop): its body goes under that name
 * (place_finish), or NEXTUID has passed its UID here and it would be moved. */
struct listed_ctx {
	struct mm_store *s;
	const char *user;
};

static int listed_cb(void *arg, uint32_t uid, const char *base, size_t len)
{
	struct listed_ctx *c = arg;
	(void)uid;
	char b[MM_MD_NAME_MAX + 1], k[KBUF];
	uint8_t key[MM_KEY_LEN];
	/* it becomes tmp/<base> and the file's base (body_begin): one that would not fit
	 * w->base whole, or that is no file name of a folder, is not taken (as before: a
	 * move to a new UID) */
	if (len >= sizeof(((struct mm_body_writer *)0)->base) || memchr(base, '/', len) || base[0] == '.')
		return 0;
	memcpy(b, base, len);
	b[len] = 0;
	struct miss *m = base_key(b, key) ? hm_get(&c->s->missing, k, k_ub(k, c->user, key, MM_KEY_LEN)) : NULL;
	if (m && !m->listed)
		m->listed = strdup(b);
	return 0;
}

/* The tmp/ of each folder queued by set_missing since the last call: at the start,
 * every folder missing bodies; later, a folder that misses a body for the first time
 * in this run.  That second look is for bodies a run killed before its flush staged
 * with records it had not committed: the restarted node knows neither record nor
 * missing body at its start, and without it fetched the body again and left the old
 * file in tmp/ (Dovecot removes it after 36 hours; found by it_daemon_torture, test_store
 * test_crash_staged_before_records_durable). */
static void recover_tmp_queued(struct mm_store *s, bool running)
{
	size_t got = 0;
	struct folder *fo;
	while ((fo = s->tmp_queue) != NULL) {
		s->tmp_queue = fo->tmp_next;
		fo->tmp_next = NULL;
		if (!fo->miss_n)
			continue; /* placed meanwhile: nothing of a previous run is wanted */
		if (s->imap_uids && !running) {
			struct listed_ctx c = {s, fo->u->name};
			mm_md_uidlist_read(fo->dir, listed_cb, &c);
		}
		got += recover_folder_tmp(s, fo->u, fo, running);
	}
	if (got)
		logmsg(s, MM_STORE_LOG_INFO, "%zu bodies recovered from tmp/ (left by the last run), not fetched again",
		       got);
}

static void recover_tmp(struct mm_store *s)
{
	for (struct user *u = s->users; u; u = u->next)
		spares_recover(u);
	recover_tmp_queued(s, false);
}

int mm_store_open(struct mm_store **sp, const struct mm_store_config *cfg,
                  struct mm_state *state, struct mm_clock *clock, char *err, size_t errlen)
{
	*sp = NULL;
	if (sodium_init() < 0) {
		snprintf(err, errlen, "libsodium failed to initialise");
		return -EIO;
	}
	struct mm_store *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->state = state;
	s->clock = clock;
	s->imap_uids = cfg->imap_uids;
	{
		/* the options follow the path: "[maildir:]PATH[:OPT=...]" */
		const char *ml = cfg->mail_location, *opts;
		if (!strncmp(ml, "maildir:", 8))
			ml += 8;
		opts = strchr(ml, ':');
		s->index_in_folder = !opts || !strstr(opts, ":INDEX=");
	}
	s->log = cfg->log;
	s->log_arg = cfg->log_arg;
	s->max_skew_ms = 10 * 60 * 1000;
	s->staged_tail = &s->staged;
	clock_gettime(CLOCK_REALTIME_COARSE, &s->opened);
	s->trust_dirs = true;
	s->new_folder_wait_ms = 1000;
	s->scan_commit_files = SCAN_COMMIT_FILES;
	s->file_cache = MM_STORE_FILE_CACHE;
	s->by_base.kind = FX_BASE;
	s->by_key.kind = FX_KEY;
	s->by_body.kind = FX_BODY;
	s->by_body.state = state;
	if (!(s->commit_out = mm_delta_new())) {
		mm_store_free(&s);
		return -ENOMEM;
	}
	int r = mm_mailloc_new(&s->loc, cfg->mail_location, err, errlen);
	if (r == 0)
		r = mm_statedb_open(&s->db, cfg->state_dir, cfg->max_bytes, err, errlen);
	if (r < 0) {
		mm_store_free(&s);
		return r;
	}
	s->format_saved = mm_statedb_format(s->db) == MM_STATEDB_FORMAT;
	struct load_ctx c = {.s = s};
	mm_arena_init(&c.arena);
	s->loading = true;
	size_t converted = 0;
	r = fidx_convert(s, &converted);
	if (converted)
		logmsg(s, MM_STORE_LOG_INFO, "%s/state.mdb: %zu file index entries converted to the key-ordered index",
		       cfg->state_dir, converted);
	if (r == 0)
		r = mm_statedb_foreach(s->db, MM_DB_RECS, load_rec_cb, &c);
	mm_arena_free(&c.arena);
	if (r == 0)
		r = mm_statedb_foreach(s->db, MM_DB_FOLDERS, load_folder_cb, &c);
	if (r < 0) {
		snprintf(err, errlen, "cannot load %s/state.mdb: %s", cfg->state_dir, strerror(-r));
		mm_store_free(&s);
		return r;
	}
	s->loading = false;
	mm_statedb_release_pages(s->db); /* the load touched every page; later reads are by key */
	if (c.bad)
		logmsg(s, MM_STORE_LOG_WARNING, "%s/state.mdb: %d unreadable entries skipped", cfg->state_dir, c.bad);
	/* loading may have marked folders dirty (created before their entry was read) */
	hm_clear(&s->dirty_folders);
	uint8_t cb[8];
	uint64_t last = 0;
	if (mm_statedb_get(s->db, MM_DB_META, "clock", 5, cb, 8) == 8)
		for (int i = 0; i < 8; i++)
			last = last << 8 | cb[i];
	mm_clock_init(clock, clock->node, last > clock->last ? last : clock->last);
	r = mm_state_foreach(state, NULL, 0, miss_user_cb, s);
	if (r < 0) {
		snprintf(err, errlen, "out of memory loading %s/state.mdb", cfg->state_dir);
		mm_store_free(&s);
		return r;
	}
	if ((r = placing_marks_load(s)) < 0) {
		snprintf(err, errlen, "cannot read the placement marks in %s/state.mdb: %s", cfg->state_dir,
		         strerror(-r));
		mm_store_free(&s);
		return r;
	}
	recover_tmp(s);
	note_scratch(s, mm_statedb_count(s->db, MM_DB_RECS)); /* the load's and the missing list's scratch */
	trim_heap(s);
	*sp = s;
	return 0;
}

void mm_store_set_file_cache(struct mm_store *s, size_t entries)
{
	s->file_cache = entries;
}

int mm_store_set_quota_ignore(struct mm_store *s, const char *list)
{
	struct namelist l = {0};
	int r = list ? mm_md_folder_names_parse(list, namelist_add, &l, NULL, 0) : 0;
	if (r < 0) {
		namelist_free(&l);
		return r;
	}
	namelist_free(&s->quota_ignore);
	s->quota_ignore = l;
	return 0;
}

size_t mm_store_files_in_memory(const struct mm_store *s)
{
	return s->by_base.n;
}

void mm_store_set_log(struct mm_store *s, void (*fn)(void *arg, int level, const char *fmt, ...),
                      void *arg)
{
	s->log = fn;
	s->log_arg = arg;
}

int mm_store_meta_set(struct mm_store *s, const char *key, uint64_t v)
{
	size_t kl = strlen(key);
	if (!kl || kl > MM_STORE_META_KEY_MAX)
		return -EINVAL;
	char k[MM_STORE_META_KEY_MAX + 3];
	snprintf(k, sizeof k, "d:%s", key);
	for (size_t i = 0; i < s->n_meta; i++)
		if (!strcmp(s->meta[i].key, k)) {
			s->meta[i].v = v;
			return 0;
		}
	if (s->n_meta == s->cap_meta) {
		size_t nc = s->cap_meta ? s->cap_meta * 2 : 8;
		struct meta_kv *nv = realloc(s->meta, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		s->meta = nv;
		s->cap_meta = nc;
	}
	memcpy(s->meta[s->n_meta].key, k, sizeof k);
	s->meta[s->n_meta++].v = v;
	return 0;
}

int mm_store_meta_get(struct mm_store *s, const char *key, uint64_t *v_r)
{
	*v_r = 0;
	size_t kl = strlen(key);
	if (!kl || kl > MM_STORE_META_KEY_MAX)
		return -EINVAL;
	char k[MM_STORE_META_KEY_MAX + 3];
	snprintf(k, sizeof k, "d:%s", key);
	for (size_t i = 0; i < s->n_meta; i++)
		if (!strcmp(s->meta[i].key, k)) { /* staged: newer than the durable one */
			*v_r = s->meta[i].v;
			return 0;
		}
	uint8_t c[8];
	int r = mm_statedb_get(s->db, MM_DB_META, k, strlen(k), c, sizeof c);
	if (r < 0)
		return r;
	if (r != 8)
		return -EBADMSG;
	for (int i = 0; i < 8; i++)
		*v_r = *v_r << 8 | c[i];
	return 0;
}

void mm_store_free(struct mm_store **sp)
{
	if (!sp || !*sp)
		return;
	struct mm_store *s = *sp;
	quota_flush(s); /* (what was placed or removed since the last commit) */
	free(s->quota_q);
	free(s->meta);
	spares_drop(s); /* merged, not committed: the next start rescans those folders */
	drop_list(unstage_all(s)); /* before the folders their writers point to */
	for (struct user *u = s->users, *un; u; u = un) {
		un = u->next;
		for (struct folder *fo = u->folders, *fn; fo; fo = fn) {
			fn = fo->unext;
			for (struct fent *fe = fo->files, *nx; fe; fe = nx) {
				nx = fe->fnext;
				fent_free(s, fe);
			}
			/* held bodies stay missing, and their files in tmp/: the next
			 * start takes them back (recover_tmp) */
			for (size_t i = 0; i < fo->n_held; i++)
				writer_free(&fo->held[i], false);
			free(fo->held);
			folder_gone_clear(fo);
			mm_md_keywords_clear(&fo->kw);
			free(fo->name);
			free(fo);
		}
		free(u->name);
		free(u);
	}
	for (struct pending *p = s->pending, *nx; p; p = nx) {
		nx = p->next;
		free(p->user);
		free(p);
	}
	hm_clear(&s->staged_keys);
	hm_clear(&s->placed);
	hm_clear(&s->users_by_name);
	hm_clear(&s->folders);
	fx_clear(&s->by_base);
	fx_clear(&s->by_key);
	fx_clear(&s->by_body);
	hm_clear(&s->odd_names); /* emptied by fent_free */
	struct keylist ml;
	if (hm_keys(&s->missing, &ml) == 0)
		for (size_t i = 0; i < ml.n; i++) {
			free(((struct miss *)ml.v[i]->val)->listed);
			free(ml.v[i]->val);
		}
	keylist_free(&ml);
	hm_clear(&s->missing);
	hm_clear(&s->missing_body);
	hm_clear(&s->dirty_recs);
	hm_clear(&s->dirty_files);
	hm_clear(&s->dirty_folders);
	hm_clear(&s->logged);
	mm_statedb_free(&s->db);
	mm_mailloc_free(&s->loc);
	mm_delta_free(&s->commit_out);
	namelist_free(&s->quota_ignore);
	hm_clear(&s->dead);
	hm_clear(&s->pl_marks);
	struct keylist pl;
	if (hm_keys(&s->pl_old, &pl) == 0)
		for (size_t i = 0; i < pl.n; i++)
			free(pl.v[i]->val);
	keylist_free(&pl);
	hm_clear(&s->pl_old);
	free(s);
	*sp = NULL;
}
