/*
 * watch.c — sees local changes as they happen: a uv_fs_event watcher on every
 * directory the store lists (each folder's new/ and cur/, each user's Maildir, the
 * template directories above the users).  Events mark (user, folder) dirty; a short
 * timer coalesces bursts (Dovecot renames a file and rewrites its index files in quick
 * succession) into one rescan, then the changes are committed to the state database
 * and only then pushed to peers, so a crash can never have shipped what it forgot.
 * The periodic full rescan in daemon.c is the safety net for missed events.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>


#include "node/daemon.h"
#include "node/log.h"
#include "node/store.h"

#define SCAN_DELAY_MS 2 /* coalescing window: short, delivery latency matters */
/* A scan left files to Dovecot's uidlist lock (store.h, mm_store_take_lock_waits):
 * its release raises an event here; this is in case none comes. */
#define LOCKWAIT_RETRY_MS 50

struct mm_watch {
	uv_fs_event_t h;
	struct mm_daemon *d;
	char *path;
	char *user;   /* NULL: a template directory (users appear there) */
	char *folder; /* NULL: a user's Maildir or a template directory */
	bool folder_root; /* a folder's own directory (.Name): only dovecot-keywords matters */
	bool seen;
	struct mm_watch *next;
};

struct mm_dirty {
	char *user;
	char *folder;
	struct mm_dirty *next;
};

static void watch_free_cb(uv_handle_t *h)
{
	struct mm_watch *w = h->data;
	mm_daemon_handle_closed(h);
	free(w->path);
	free(w->user);
	free(w->folder);
	free(w);
}

static void scan_timer_cb(uv_timer_t *t)
{
	mm_scan_run(t->data);
}

static void settle_cb(uv_timer_t *t)
{
	struct mm_daemon *d = t->data;
	if (d->stopping)
		return;
	mm_scan_request(d, NULL, NULL);
	if (--d->settle_left > 0)
		uv_timer_start(&d->settle_timer, settle_cb, 400 << (2 * (2 - d->settle_left)), 0);
}

static void lockwait_request(void *arg, const char *user, const char *folder)
{
	mm_scan_request(arg, user, folder);
}

static void lockwait_cb(uv_timer_t *t)
{
	struct mm_daemon *d = t->data;
	if (!d->stopping)
		mm_store_lock_waits(d->store, lockwait_request, d);
}

void mm_watch_lock_waits(struct mm_daemon *d)
{
	if (mm_store_take_lock_waits(d->store) && !d->stopping)
		uv_timer_start(&d->lockwait_timer, lockwait_cb, LOCKWAIT_RETRY_MS, 0);
}

/* Dovecot renamed its new dovecot-uidlist into place, or dropped the lock: files a
 * scan left to that lock can be taken in now, with the UIDs Dovecot gave them. */
static bool uidlist_event(struct mm_daemon *d, const char *filename, const char *user, const char *folder)
{
	if (!filename || strncmp(filename, "dovecot-uidlist", 15) ||
	    (filename[15] && strcmp(filename + 15, ".lock")))
		return false;
	if (mm_store_lock_waiting(d->store, user, folder))
		mm_scan_request(d, user, folder);
	return true;
}

static void fs_event_cb(uv_fs_event_t *h, const char *filename, int events, int status)
{
	(void)events;
	struct mm_watch *w = h->data;
	struct mm_daemon *d = w->d;
	if (d->stopping)
		return;
	if (status < 0) {
		/* The directory went away or the watch broke: the full rescan sorts it out. */
		d->full_scan_wanted = true;
		uv_timer_start(&d->scan_timer, scan_timer_cb, SCAN_DELAY_MS, 0);
		return;
	}
	if (w->folder_root) {
		if (uidlist_event(d, filename, w->user, w->folder))
			return;
		/* Dovecot names a new keyword letter after renaming the file that uses it:
		 * the folder's scan then takes in what the earlier scan had to leave. */
		if (filename && !strcmp(filename, "dovecot-keywords"))
			mm_scan_request(d, w->user, w->folder);
		return;
	}
	if (w->folder) {
		/* the event of a body this node placed itself needs no scan */
		if (!(filename && d->store && mm_store_own_event(d->store, w->path, filename)))
			mm_scan_request(d, w->user, w->folder);
		return;
	}
	if (w->user) {
		if (uidlist_event(d, filename, w->user, "INBOX"))
			return;
		if (filename && !strcmp(filename, "dovecot-keywords")) {
			mm_scan_request(d, w->user, "INBOX");
			return;
		}
		/* In a user's Maildir only folder directories (.Name) and the subscriptions
		 * file matter; Dovecot's index, uidlist and keywords files change all the time. */
		if (!filename || (filename[0] == '.' && strcmp(filename, ".") && strcmp(filename, "..")) ||
		    !strcmp(filename, "subscriptions") || !strcmp(filename, "cur") || !strcmp(filename, "new"))
			mm_scan_request(d, NULL, NULL);
		return;
	}
	/* A user or domain directory appeared: its Maildir may still be half made
	 * (mkdir of the user, then cur/ new/ tmp/), and a directory the store skipped as
	 * "not a Maildir" is not watched, so look again a few times over two seconds. */
	mm_scan_request(d, NULL, NULL);
	d->settle_left = 3;
	uv_timer_start(&d->settle_timer, settle_cb, 100, 0);
}

static int add_watch_ex(struct mm_daemon *d, const char *path, const char *user, const char *folder,
                        bool folder_root);

static int add_watch(void *arg, const char *path, const char *user, const char *folder)
{
	struct mm_daemon *d = arg;
	add_watch_ex(d, path, user, folder, false);
	/* ".../.Name/cur": also the folder's directory, where dovecot-keywords lives
	 * (INBOX's is the user's Maildir, watched already). */
	size_t n = strlen(path);
	if (user && folder && strcmp(folder, "INBOX") && n > 4 && !strcmp(path + n - 4, "/cur")) {
		char *parent = strndup(path, n - 4);
		if (parent) {
			add_watch_ex(d, parent, user, folder, true);
			free(parent);
		}
	}
	return 0;
}

static int add_watch_ex(struct mm_daemon *d, const char *path, const char *user, const char *folder,
                        bool folder_root)
{
	for (struct mm_watch *w = d->watches; w; w = w->next)
		if (!strcmp(w->path, path)) {
			w->seen = true;
			return 0;
		}
	struct mm_watch *w = calloc(1, sizeof *w);
	if (!w)
		return 0;
	w->d = d;
	w->path = strdup(path);
	w->user = user ? strdup(user) : NULL;
	w->folder = folder ? strdup(folder) : NULL;
	if (!w->path || (user && !w->user) || (folder && !w->folder) ||
	    uv_fs_event_init(&d->loop, &w->h) < 0) {
		free(w->path);
		free(w->user);
		free(w->folder);
		free(w);
		return 0;
	}
	d->open_handles++;
	w->h.data = w;
	w->seen = true;
	w->folder_root = folder_root;
	w->next = d->watches;
	d->watches = w;
	int r = uv_fs_event_start(&w->h, fs_event_cb, path, 0);
	/* Whatever arrived between the scan that found this directory and now raised no
	 * event: look at the directory once more. */
	if (!folder_root)
		mm_scan_request(d, user, folder);
	if (r < 0)
		mm_log(MM_LOG_WARN, "cannot watch %s: %s (changes there are seen by the periodic rescan; "
		       "raise fs.inotify.max_user_watches if it is exhausted)", path, uv_strerror(r));
	return 0;
}

int mm_watch_refresh(struct mm_daemon *d)
{
	for (struct mm_watch *w = d->watches; w; w = w->next)
		w->seen = false;
	int r = mm_store_watch_dirs(d->store, add_watch, d);
	for (struct mm_watch **pp = &d->watches; *pp;) {
		struct mm_watch *w = *pp;
		if (w->seen) {
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		uv_close((uv_handle_t *)&w->h, watch_free_cb);
	}
	return r;
}

void mm_scan_forget(struct mm_daemon *d)
{
	uv_timer_stop(&d->scan_timer);
	d->full_scan_wanted = false;
	while (d->dirty) {
		struct mm_dirty *x = d->dirty;
		d->dirty = x->next;
		free(x->user);
		free(x->folder);
		free(x);
	}
}

void mm_watch_stop(struct mm_daemon *d)
{
	while (d->watches) {
		struct mm_watch *w = d->watches;
		d->watches = w->next;
		uv_close((uv_handle_t *)&w->h, watch_free_cb);
	}
	while (d->dirty) {
		struct mm_dirty *x = d->dirty;
		d->dirty = x->next;
		free(x->user);
		free(x->folder);
		free(x);
	}
}

void mm_scan_request(struct mm_daemon *d, const char *user, const char *folder)
{
	if (!user || !folder) {
		d->full_scan_wanted = true;
	} else if (!d->full_scan_wanted) {
		bool known = false;
		for (struct mm_dirty *x = d->dirty; x && !known; x = x->next)
			known = !strcmp(x->user, user) && !strcmp(x->folder, folder);
		if (!known) {
			struct mm_dirty *x = calloc(1, sizeof *x);
			if (x && (x->user = strdup(user)) && (x->folder = strdup(folder))) {
				x->next = d->dirty;
				d->dirty = x;
			} else {
				if (x) {
					free(x->user);
					free(x);
				}
				d->full_scan_wanted = true;
			}
		}
	}
	if (!uv_is_active((uv_handle_t *)&d->scan_timer))
		uv_timer_start(&d->scan_timer, scan_timer_cb, SCAN_DELAY_MS, 0);
}

void mm_scan_run(struct mm_daemon *d)
{
	if (d->stopping)
		return;
	struct mm_delta *delta = mm_delta_new();
	if (!delta) {
		uv_timer_start(&d->scan_timer, scan_timer_cb, 100, 0);
		return;
	}
	uint64_t now = mm_daemon_now();
	int changes = 0;
	bool full = d->full_scan_wanted;
	d->full_scan_wanted = false;
	if (full) {
		changes = mm_store_scan(d->store, now, delta);
	} else {
		for (struct mm_dirty *x = d->dirty; x; x = x->next) {
			int r = mm_store_scan_folder(d->store, x->user, x->folder, now, delta);
			if (r > 0)
				changes += r;
		}
	}
	while (d->dirty) {
		struct mm_dirty *x = d->dirty;
		d->dirty = x->next;
		free(x->user);
		free(x->folder);
		free(x);
	}
	if (changes < 0)
		mm_log(MM_LOG_WARN, "rescan failed: %s (retrying)", strerror(-changes));
	if (mm_delta_count(delta) > 0) {
		int r = mm_store_commit(d->store);
		if (r < 0) {
			/* Not durable, so not shipped: anti-entropy sends it once a commit works. */
			mm_log(MM_LOG_ERROR, "%s: cannot commit the state database: %s; local changes "
			       "are kept in memory and retried", d->cfg.state_dir, strerror(-r));
			mm_daemon_commit_soon(d);
		} else {
			d->local_changes += (uint64_t)mm_delta_count(delta);
			mm_log(MM_LOG_DEBUG, "local changes=%zu", mm_delta_count(delta));
			mm_daemon_push(d, delta);
			mm_daemon_push(d, mm_store_commit_delta(d->store));
		}
	} else if (mm_store_wants_commit(d->store)) {
		mm_daemon_commit_soon(d); /* (an index change alone: a user absent or back, a retried unlink) */
	}
	mm_delta_free(&delta);
	mm_watch_lock_waits(d);
	/* a new folder waits for Dovecot's UIDVALIDITY: look again over two seconds */
	if (mm_store_take_deferred(d->store)) {
		d->settle_left = 3;
		uv_timer_start(&d->settle_timer, settle_cb, 100, 0);
	}
	if (full)
		mm_watch_refresh(d);
}
