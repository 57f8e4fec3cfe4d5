/*
 * bodies.c — the sync sessions' body store (proto/sync.h struct mm_body_ops) on top of
 * the Maildir store.  Sessions name bodies by (user, body id), because bodies are
 * content-addressed; the store keeps files per record key, and its by-id functions
 * map between the two.  Reads open the file per chunk (no descriptor is held across
 * loop turns, so an expunge in between is harmless); writes go through the store's
 * atomic tmp/ -> fsync -> rename path: a body is checked against its id by the
 * session on the loop thread, written to tmp/ on libuv's thread pool, then staged,
 * and staged bodies are placed together (once per loop turn, or gathered while more
 * are coming), their syncs and renames on the thread pool too.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "node/daemon.h"
#include "node/log.h"
#include "node/store.h"
#include "proto/fetch.h"
#include "proto/lead.h"
#include "proto/sync.h"

static ssize_t body_read(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t offset,
                         uint8_t *buf, size_t cap)
{
	struct mm_daemon *d = arg;
	int fd;
	uint64_t size;
	int r = mm_store_body_open_id(d->store, user, id, &fd, &size);
	if (r < 0)
		return r;
	ssize_t n = 0;
	if (offset < size) {
		n = pread(fd, buf, cap, (off_t)offset);
		if (n < 0)
			n = -errno;
	}
	close(fd);
	return n;
}

/* A body the store no longer needs (the user has these bytes already: the store
 * copies them locally; or no live message wants them any more) is taken and dropped,
 * so the session counts the transfer as done and the fetch scheduler stops asking. */
static char discard_handle;

/* A body being received, and then written out on libuv's thread pool.  The loop
 * thread decrypts, hashes and checks each body; creating and writing its file (the
 * larger part of a joining node's work, measured) happens beside it, on the other
 * cores.  Bodies above DEFER_MAX, any while DEFER_INFLIGHT_MAX bytes wait to be
 * written, and a body that arrives alone are written on the loop thread as they
 * arrive. */
#define DEFER_MAX (1u << 20)
#define DEFER_INFLIGHT_MAX (64u << 20)

struct body_job {
	uv_work_t req;
	struct mm_daemon *d;
	struct mm_body_writer *w;
	uint64_t size;
};

static int body_begin(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size,
                      void **handle_r)
{
	struct mm_daemon *d = arg;
	struct body_job *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	/* only while bodies stream (others in flight or being written): a lone pushed
	 * message gains nothing from another thread and would wait for the hand-over */
	struct mm_fetch_stats fs;
	mm_fetch_get_stats(d->fetch, &fs);
	bool stream = fs.inflight > 1 || d->write_jobs > 0;
	bool defer = stream && size <= DEFER_MAX && d->write_bytes < DEFER_INFLIGHT_MAX;
	/* the session hashes every body and commits only one that matched its id
	 * (proto/sync.h, struct mm_body_ops): the store need not hash it a second time */
	unsigned flags = MM_STORE_BODY_VERIFIED | (defer ? MM_STORE_BODY_DEFER : 0);
	int r = mm_store_body_begin_id(d->store, user, id, size, flags, &j->w);
	if (r == -EEXIST || r == -ENOENT) {
		free(j);
		if (r == -EEXIST)
			mm_daemon_commit_soon(d); /* the local copy happens at the commit */
		*handle_r = &discard_handle;
		return 0;
	}
	if (r < 0) {
		free(j);
		return r;
	}
	j->d = d;
	j->size = size;
	*handle_r = j;
	return 0;
}

static int body_write(void *handle, const uint8_t *data, size_t len)
{
	if (handle == &discard_handle)
		return 0;
	struct body_job *j = handle;
	return mm_store_body_write(j->w, data, len);
}

/* The thread pool's work (writing bodies out, placing them) runs below the loop
 * thread's priority.  The loop is a join's critical path: it receives, decrypts and
 * checks every byte, and hands the files on.  With the writers at the same priority,
 * a join on two cores had the loop runnable but preempted by them for 150 of 1050 ms
 * (measured, perf sched_switch); lowered, they take what the loop leaves. */
#define POOL_NICE 10

static void pool_thread_lower(void)
{
	static _Thread_local bool lowered;
	if (!lowered) {
		lowered = true;
		(void)setpriority(PRIO_PROCESS, (id_t)gettid(), POOL_NICE); /* (a failure: as before) */
	}
}

static void write_work(uv_work_t *req)
{
	struct body_job *j = req->data;
	pool_thread_lower();
	mm_store_body_write_out(j->w);
}

static void write_done(uv_work_t *req, int status)
{
	(void)status; /* never cancelled: the work always ran */
	struct body_job *j = req->data;
	struct mm_daemon *d = j->d;
	d->write_jobs--;
	d->write_bytes -= j->size;
	mm_store_body_stage(&j->w); /* a failure is logged; the body stays missing */
	free(j);
}

/* Bodies are staged, not placed one by one: mm_bodies_flush places them in batches
 * (after a loop turn's reads, or gathered while more are coming), so a stream of
 * bodies costs one LMDB commit and one directory fsync per batch, and a single pushed
 * message waits for no timer. */
static int body_commit(void *handle)
{
	if (handle == &discard_handle)
		return 0;
	struct body_job *j = handle;
	struct mm_daemon *d = j->d;
	int r = 0;
	if (!mm_store_body_deferred(j->w) || (r = mm_store_body_prepare(&j->w)) < 0 || !j->w) {
		r = j->w ? mm_store_body_stage(&j->w) : r; /* (prepare freed it: r says why) */
		free(j);
		return r;
	}
	j->req.data = j;
	d->write_jobs++;
	d->write_bytes += j->size;
	if ((r = uv_queue_work(&d->loop, &j->req, write_work, write_done)) < 0) {
		write_work(&j->req); /* cannot happen with a live loop; stay correct anyway */
		write_done(&j->req, r);
	}
	return 0;
}

static void body_abort(void *handle)
{
	if (handle == &discard_handle)
		return;
	struct body_job *j = handle;
	mm_store_body_abort(&j->w);
	free(j);
}

static int body_have(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	struct mm_daemon *d = arg;
	return mm_store_body_have_id(d->store, user, id);
}

/* While bodies stream in (fetches in flight), a loop turn stages only a handful, and
 * placing each handful costs a syncfs, a uidlist write and a directory fsync: a
 * joining node measured 7 ms a batch of ten on a journaled ext4.  So staged bodies
 * wait up to GATHER_MS for the ones in flight and are placed together; a body that
 * arrives with nothing else under way (a pushed message) is placed in the same turn. */
#define GATHER_MS 100

static void gather_cb(uv_timer_t *t)
{
	mm_bodies_flush(t->data);
}

/* A batch being placed on the thread pool (mm_store_place_begin): the syncs and
 * renames of a batch of 800 bodies in a join held the loop thread 25-40 ms,
 * measured, during which nothing was received, requested or handed to the writers. */
struct place_job {
	uv_work_t req;
	struct mm_daemon *d;
	struct mm_store_place *job;
};

static void place_work(uv_work_t *req)
{
	struct place_job *p = req->data;
	pool_thread_lower();
	mm_store_place_run(p->job);
}

/* The store could not keep what was fetched (its state database could not commit, or
 * a disk is full).  What it dropped is wanted again at once, so fetching pauses:
 * 1 s after the first failure, twice as long after each failure once fetching
 * resumed, up to STORE_BACKOFF_MAX_MS.  Bodies placed, or a commit once a pause is
 * over, end the pauses (mm_bodies_store_kept).  Without them a node whose state
 * database could not grow fetched the same bodies 760 times a second and threw them
 * away (it_daemon_diskfull), its peer sending them as fast. */
#define STORE_BACKOFF_MAX_MS 30000

void mm_bodies_store_failed(struct mm_daemon *d, int err)
{
	uint64_t now = mm_daemon_now();
	if (now < d->store_hold_until && now + STORE_BACKOFF_MAX_MS >= d->store_hold_until)
		return; /* a failure of what came before the pause (a commit retried each second) */
	uint64_t was = d->store_backoff_ms;
	d->store_backoff_ms = was ? was * 2 : 1000;
	if (d->store_backoff_ms > STORE_BACKOFF_MAX_MS)
		d->store_backoff_ms = STORE_BACKOFF_MAX_MS;
	d->store_hold_until = now + d->store_backoff_ms;
	d->store_err = err;
	mm_fetch_hold(d->fetch, now, d->store_hold_until);
	if (d->store_backoff_ms != was) /* at its longest: the failures' own lines say enough */
		mm_log(MM_LOG_WARN, "fetching bodies paused for %llu s: the store cannot keep them (%s)%s",
		       (unsigned long long)(d->store_backoff_ms / 1000), strerror(-err),
		       err == -ENOSPC || err == -EDQUOT
		       ? "; is the disk (or quota) of the Maildirs or of state_dir full?"
		       : err == -EFBIG ? "; has the state database reached state_max_size (raise it in mailmesh.conf "
		                         "and restart), or a file the size limit of the daemon's user?" : "");
}

void mm_bodies_store_kept(struct mm_daemon *d, bool commit_only)
{
	if (!d->store_backoff_ms)
		return;
	/* a commit alone says the store works again only once a pause is over: during
	 * one, a small commit may still fit where a batch of bodies did not */
	if (commit_only && mm_daemon_now() < d->store_hold_until)
		return;
	d->store_backoff_ms = 0;
	d->store_hold_until = 0;
	d->store_err = 0;
	mm_fetch_hold(d->fetch, 0, 0);
	mm_log(MM_LOG_INFO, "fetching bodies again: the store keeps them");
}

/* Errors of placing that mean the store cannot keep anything now; others (a folder
 * removed meanwhile, one user's Maildir not writable) concern some bodies only, which
 * the fetch scheduler's own backoff retries: they must not slow everyone's. */
static bool store_cannot_keep(int r)
{
	return r == -ENOSPC || r == -EDQUOT || r == -EFBIG || r == -EIO || r == -EROFS || r == -ENOMEM;
}

static void place_done(uv_work_t *req, int status)
{
	(void)status; /* never cancelled: the work always ran */
	struct place_job *p = req->data;
	struct mm_daemon *d = p->d;
	int r = mm_store_place_end(d->store, &p->job);
	free(p);
	if (r < 0) {
		mm_log(MM_LOG_ERROR, "cannot place received bodies: %s (they will be fetched again)", strerror(-r));
		if (!d->stopping && store_cannot_keep(r))
			mm_bodies_store_failed(d, r);
	} else if (r > 0) {
		mm_bodies_store_kept(d, false);
	}
	if (d->stopping) {
		/* the shutdown's final commit came first: the placed files' index entries */
		if (mm_store_commit(d->store) < 0)
			mm_log(MM_LOG_ERROR, "%s: commit after the last placement failed; the next start's "
			       "rescan finds the files", d->cfg.state_dir);
		return;
	}
	if (r > 0) {
		if (!d->placed_uncommitted)
			d->placed_since_ms = mm_daemon_now();
		d->placed_uncommitted += (size_t)r;
	}
	/* a UID pass that a commit left to this job's uidlist lock (or to Dovecot's) is
	 * retried as any pass left to a lock is (mm_store_take_lock_waits) */
	mm_watch_lock_waits(d);
	mm_bodies_catchup_note(d);
	mm_bodies_commit_check(d);
	mm_bodies_flush(d); /* what was staged meanwhile */
}

/* While bodies stream in, the placed files' index entries wait for the stream's end
 * (or PLACED_COMMIT_MAX of them, or PLACED_COMMIT_MS after the first): a commit's
 * fdatasync blocks the loop (63 ms over a 5,000-message join, measured), and the
 * index is a cache that the rescan after a crash rebuilds by key.  Local copies of
 * placed bodies and held bodies' release wait with it; records are committed before
 * their bodies are placed, as always.  The time bound is for what the rescan cannot
 * tell: a file a client removes after its placement, before a crash that lost the
 * placement's entry, looks like one whose placement failed, and is fetched again
 * (docs/maildir.md, Known limits); a long join kept that window open for minutes. */
#define PLACED_COMMIT_MAX 20000
#define PLACED_COMMIT_MS 2000

/* Bodies are on their way: being fetched or written out. */
static bool bodies_coming(struct mm_daemon *d)
{
	struct mm_fetch_stats fs;
	mm_fetch_get_stats(d->fetch, &fs);
	return fs.inflight > 0 || d->write_jobs > 0;
}

static bool streaming(struct mm_daemon *d)
{
	return bodies_coming(d) || mm_store_placing(d->store) || mm_store_staged_count(d->store) > 0;
}

void mm_bodies_commit_check(struct mm_daemon *d)
{
	if (d->placed_uncommitted && (d->placed_uncommitted >= PLACED_COMMIT_MAX || !streaming(d) ||
	                              mm_daemon_now() - d->placed_since_ms >= PLACED_COMMIT_MS))
		mm_daemon_commit_soon(d);
}

/* A node missing many bodies (joining, or back after a long absence: the threshold is
 * the one that keeps it from being the UID authority) says so in its log, and says
 * again when it has every one: the line an admin watching a node join waits for.
 * Checked where the missing count changes in bulk: after a placement, a commit (the
 * records a round brought) and at each gossip tick. */
void mm_bodies_catchup_note(struct mm_daemon *d)
{
	/* (called every loop turn of a stream: only the two changes cost more) */
	if (d->catchup_since_ms ? mm_store_missing_count(d->store) != 0 : !mm_daemon_catching_up(d))
		return;
	struct mm_fetch_stats fs;
	mm_fetch_get_stats(d->fetch, &fs);
	uint64_t now = mm_daemon_now();
	if (!d->catchup_since_ms) {
		d->catchup_since_ms = now ? now : 1;
		d->catchup_done0 = fs.done;
		mm_log(MM_LOG_INFO, "catching up: more than %d messages are missing their body here; fetching them",
		       MM_LEAD_CATCHUP_MISSING);
		return;
	}
	mm_log(MM_LOG_INFO, "caught up: every message has its body here (%llu bodies fetched in %llu ms)",
	       (unsigned long long)(fs.done - d->catchup_done0),
	       (unsigned long long)(now >= d->catchup_since_ms ? now - d->catchup_since_ms : 0));
	d->catchup_since_ms = 0;
}

#define PLACE_ASYNC_MIN 64 /* staged bodies placed off the loop even when nothing streams */

/* Starts placing the staged bodies on the thread pool.  True if a job is out. */
static bool place_async(struct mm_daemon *d)
{
	struct place_job *p = calloc(1, sizeof(*p));
	if (!p)
		return false; /* mm_store_flush places them here */
	int r = mm_store_place_begin(d->store, &p->job);
	if (r <= 0) {
		free(p);
		if (r < 0) {
			mm_log(MM_LOG_ERROR, "cannot place received bodies: %s (they will be fetched again)",
			       strerror(-r));
			if (store_cannot_keep(r))
				mm_bodies_store_failed(d, r);
		}
		return false;
	}
	p->d = d;
	p->req.data = p;
	if ((r = uv_queue_work(&d->loop, &p->req, place_work, place_done)) < 0) {
		place_work(&p->req); /* cannot happen with a live loop; stay correct anyway */
		place_done(&p->req, r);
	}
	return true;
}

void mm_bodies_flush(struct mm_daemon *d)
{
	if (!d->store || mm_store_placing(d->store))
		return; /* place_done flushes again */
	size_t staged = mm_store_staged_count(d->store), held = mm_store_held_count(d->store);
	if (!staged && !held)
		return;
	bool gather = false, stream = false;
	if (staged) {
		uint64_t now = mm_daemon_now(), since = mm_store_staged_since(d->store);
		stream = bodies_coming(d);
		/* (a clock stepped back ends the wait rather than stretch it) */
		gather = stream && !d->stopping && since <= now && now - since < GATHER_MS;
		if (gather && !uv_is_active((uv_handle_t *)&d->gather_timer))
			uv_timer_start(&d->gather_timer, gather_cb, since + GATHER_MS - now, 0);
	}
	mm_store_gather(d->store, gather);
	/* A batch while bodies stream (or a large one) is placed off the loop; a message
	 * pushed alone is placed here and now, in the turn it arrived, rather than wait
	 * for a pool thread that runs below the loop's priority (item 2 alone, one run
	 * each: p50/p99 5.0/6.8 ms so, 5.4/7.2 ms through the pool). */
	if (staged && !gather && !d->stopping && (stream || staged >= PLACE_ASYNC_MIN) && place_async(d))
		return; /* (held bodies whose time has come: after it) */
	size_t before = mm_store_staged_count(d->store);
	int r = mm_store_flush(d->store);
	mm_watch_lock_waits(d); /* its commit (records first) may have left a UID pass to a lock */
	if (r < 0) {
		mm_log(MM_LOG_ERROR, "cannot place received bodies: %s (they will be fetched again)",
		       strerror(-r));
		if (store_cannot_keep(r))
			mm_bodies_store_failed(d, r);
	} else if (mm_store_staged_count(d->store) < before) {
		mm_bodies_store_kept(d, false);
	}
	mm_bodies_catchup_note(d);
	/* the placed files' index entries; nothing to commit while the staged bodies
	 * gather (a commit per loop turn of a stream, asked for here, blocked the loop
	 * 4-29 ms each in LMDB's syncs: measured, a 5,000-message join) */
	if (mm_store_staged_count(d->store) != staged || mm_store_held_count(d->store) != held)
		mm_daemon_commit_soon(d);
}

void mm_bodies_ops(struct mm_daemon *d, struct mm_body_ops *ops_r)
{
	ops_r->read = body_read;
	ops_r->begin = body_begin;
	ops_r->write = body_write;
	ops_r->commit = body_commit;
	ops_r->abort = body_abort;
	ops_r->have = body_have;
	ops_r->arg = d;
}
