/*
 * bodies.c — the sync sessions' body store (proto/sync.h struct mm_body_ops) on top of
 * the Maildir store.  Sessions name bodies by (user, body id), because bodies are
 * content-addressed; the store keeps files per record key, and its by-id functions
 * map between the two.  Reads open the file per chunk (no descriptor is held across
 * loop turns, so an expunge in between is harmless); writes go through the store's
 * atomic tmp/ -> fsync -> rename path, which verifies the bytes against the id again,
 * batched: bodies are staged as they complete and placed together once per loop turn.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "node/daemon.h"
#include "node/log.h"
#include "node/store.h"
#include "proto/fetch.h"
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

static int body_begin(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size,
                      void **handle_r)
{
	struct mm_daemon *d = arg;
	struct mm_body_writer *w = NULL;
	int r = mm_store_body_begin_id(d->store, user, id, size, &w);
	if (r == -EEXIST || r == -ENOENT) {
		if (r == -EEXIST)
			mm_daemon_commit_soon(d); /* the local copy happens at the commit */
		*handle_r = &discard_handle;
		return 0;
	}
	if (r < 0)
		return r;
	*handle_r = w;
	return 0;
}

static int body_write(void *handle, const uint8_t *data, size_t len)
{
	if (handle == &discard_handle)
		return 0;
	return mm_store_body_write(handle, data, len);
}

/* Bodies are staged, not placed one by one: mm_bodies_flush places the batch once per
 * loop turn (after the turn's reads), so a stream of bodies costs one LMDB commit and
 * one directory fsync per batch, and a single pushed message waits for no timer. */
static int body_commit(void *handle)
{
	if (handle == &discard_handle)
		return 0;
	struct mm_body_writer *w = handle;
	return mm_store_body_stage(&w);
}

static void body_abort(void *handle)
{
	if (handle == &discard_handle)
		return;
	struct mm_body_writer *w = handle;
	mm_store_body_abort(&w);
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

void mm_bodies_flush(struct mm_daemon *d)
{
	if (!d->store)
		return;
	size_t staged = mm_store_staged_count(d->store), held = mm_store_held_count(d->store);
	if (!staged && !held)
		return;
	bool gather = false;
	if (staged) {
		struct mm_fetch_stats fs;
		mm_fetch_get_stats(d->fetch, &fs);
		uint64_t now = mm_daemon_now(), since = mm_store_staged_since(d->store);
		/* (a clock stepped back ends the wait rather than stretch it) */
		gather = fs.inflight > 0 && !d->stopping && since <= now && now - since < GATHER_MS;
		if (gather && !uv_is_active((uv_handle_t *)&d->gather_timer))
			uv_timer_start(&d->gather_timer, gather_cb, since + GATHER_MS - now, 0);
	}
	mm_store_gather(d->store, gather);
	int r = mm_store_flush(d->store);
	if (r < 0)
		mm_log(MM_LOG_ERROR, "cannot place received bodies: %s (they will be fetched again)",
		       strerror(-r));
	if (staged || mm_store_held_count(d->store) != held)
		mm_daemon_commit_soon(d); /* the placed files' index entries */
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
