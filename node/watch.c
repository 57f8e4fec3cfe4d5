/*
 * watch.c — sees local changes as they happen: an inotify watch on every directory
 * the store lists (each folder's new/ and cur/ and its own directory, each user's
 * Maildir, the template directories above the users, the places where a Maildir is
 * awaited) and on each directory in a Maildir that may become a folder.  Events mark
 * (user, folder) dirty; a short timer coalesces bursts (Dovecot renames a file and
 * rewrites its index files in quick succession) into one rescan, then the changes are
 * committed to the state database and only then pushed to peers, so a crash can never
 * have shipped what it forgot.  The periodic full rescan in daemon.c is the safety
 * net for missed events.
 *
 * inotify itself, not uv_fs_event: libuv drops IN_Q_OVERFLOW (events lost: only a
 * full scan finds what they said) and does not tell a watch the kernel removed
 * (IN_IGNORED) from one that still works.  A watch follows its directory's inode, not
 * its path: a directory moved away or deleted (and maybe made again under the same
 * name) leaves its watch, and the watches below it, on the old inode.  Such watches
 * are marked stale and added again from their path by the refresh that follows the
 * full scan their event asks for; so is a watch that could not be added (directory
 * away, max_user_watches reached).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>


#include "node/daemon.h"
#include "node/log.h"
#include "node/store.h"

#define SCAN_DELAY_MS 2 /* coalescing window: short, delivery latency matters */
/* A scan left files to Dovecot's uidlist lock (store.h, mm_store_take_lock_waits):
 * its release raises an event here; this is in case none comes. */
#define LOCKWAIT_RETRY_MS 50
#define WATCH_MASK (IN_ATTRIB | IN_CREATE | IN_MODIFY | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | \
                    IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR)

enum watch_kind {
	W_USERS,       /* a template directory: users (or domains) appear there */
	W_USER,        /* a user's Maildir: folders, subscriptions, INBOX's keywords */
	W_FOLDER,      /* a folder's new/ or cur/ */
	W_FOLDER_ROOT, /* a folder's own directory (.Name): only dovecot-keywords matters */
	W_PENDING,     /* a directory where a Maildir or a folder is awaited (expect) */
};

struct mm_watch {
	char *path;
	char *user;   /* W_USER, W_FOLDER, W_FOLDER_ROOT; W_PENDING in a Maildir */
	char *folder; /* W_FOLDER, W_FOLDER_ROOT */
	char *expect; /* W_PENDING: the name whose appearance matters ("cur": cur/ or new/) */
	enum watch_kind kind;
	int wd;       /* -1: not watched (could not be added, or removed by the kernel) */
	bool seen;    /* listed by this refresh */
	bool stale;   /* the directory moved or went away: add again from the path */
	bool warned;  /* its failure to be added was logged */
	struct mm_watch *next;  /* every watch */
	struct mm_watch *pnext; /* same path bucket */
	struct mm_watch *wnext; /* same wd bucket */
};

struct mm_watchset {
	uv_poll_t poll;
	int fd;
	struct mm_watch *all;
	size_t n, nb;            /* watches, buckets (a power of two) */
	struct mm_watch **bypath, **bywd;
	size_t nospc;            /* watches the last refresh could not add: limit reached */
	bool nospc_warned;       /* ... said once, until a refresh adds them all */
};

struct mm_dirty {
	char *user;
	char *folder;
	struct mm_dirty *next;
};

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

/* A full scan now, and again a few times over two seconds: what appeared may still be
 * half made (mkdir of the user, then cur/ new/ tmp/). */
static void settle_start(struct mm_daemon *d)
{
	mm_scan_request(d, NULL, NULL);
	d->settle_left = 3;
	uv_timer_start(&d->settle_timer, settle_cb, 100, 0);
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

/* ---- the watch tables ----------------------------------------------------------- */

static size_t path_hash(const char *p)
{
	size_t h = 1469598103934665603ULL;
	for (; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	return h;
}

static struct mm_watch *by_path(const struct mm_watchset *ws, const char *path)
{
	for (struct mm_watch *w = ws->bypath[path_hash(path) & (ws->nb - 1)]; w; w = w->pnext)
		if (!strcmp(w->path, path))
			return w;
	return NULL;
}

static void wd_link(struct mm_watchset *ws, struct mm_watch *w)
{
	struct mm_watch **b = &ws->bywd[(unsigned)w->wd & (ws->nb - 1)];
	w->wnext = *b;
	*b = w;
}

static void wd_unlink(struct mm_watchset *ws, struct mm_watch *w)
{
	for (struct mm_watch **pp = &ws->bywd[(unsigned)w->wd & (ws->nb - 1)]; *pp; pp = &(*pp)->wnext)
		if (*pp == w) {
			*pp = w->wnext;
			break;
		}
	w->wnext = NULL;
}

static bool wd_shared(const struct mm_watchset *ws, int wd)
{
	for (struct mm_watch *w = ws->bywd[(unsigned)wd & (ws->nb - 1)]; w; w = w->wnext)
		if (w->wd == wd)
			return true;
	return false;
}

/* Its inotify watch let go (several paths can share one: the same inode). */
static void wd_drop(struct mm_watchset *ws, struct mm_watch *w)
{
	if (w->wd < 0)
		return;
	int wd = w->wd;
	wd_unlink(ws, w);
	w->wd = -1;
	if (!wd_shared(ws, wd))
		inotify_rm_watch(ws->fd, wd);
}

static int tables_grow(struct mm_watchset *ws)
{
	size_t nb = ws->nb ? ws->nb * 2 : 256;
	struct mm_watch **bp = calloc(nb, sizeof *bp), **bw = calloc(nb, sizeof *bw);
	if (!bp || !bw) {
		free(bp);
		free(bw);
		return -ENOMEM;
	}
	free(ws->bypath);
	free(ws->bywd);
	ws->bypath = bp;
	ws->bywd = bw;
	ws->nb = nb;
	for (struct mm_watch *w = ws->all; w; w = w->next) {
		struct mm_watch **b = &bp[path_hash(w->path) & (nb - 1)];
		w->pnext = *b;
		*b = w;
		if (w->wd >= 0)
			wd_link(ws, w);
	}
	return 0;
}

static void watch_free(struct mm_watchset *ws, struct mm_watch *w)
{
	wd_drop(ws, w);
	for (struct mm_watch **pp = &ws->bypath[path_hash(w->path) & (ws->nb - 1)]; *pp; pp = &(*pp)->pnext)
		if (*pp == w) {
			*pp = w->pnext;
			break;
		}
	ws->n--;
	free(w->path);
	free(w->user);
	free(w->folder);
	free(w->expect);
	free(w);
}

static int set_str(char **dst, const char *v)
{
	if ((!*dst && !v) || (*dst && v && !strcmp(*dst, v)))
		return 0;
	char *c = v ? strdup(v) : NULL;
	if (v && !c)
		return -ENOMEM;
	free(*dst);
	*dst = c;
	return 0;
}

/* (Re)adds w's inotify watch from its path; the failure is logged once a watch. */
static void watch_start(struct mm_watchset *ws, struct mm_watch *w)
{
	wd_drop(ws, w);
	w->stale = false;
	int wd = inotify_add_watch(ws->fd, w->path, WATCH_MASK);
	if (wd < 0) {
		int e = errno;
		/* max_user_watches reached: said once, not for each of the (maybe
		 * thousands of) directories left unwatched */
		if (e == ENOSPC) {
			ws->nospc++;
			if (ws->nospc_warned)
				w->warned = true;
			ws->nospc_warned = true;
		}
		/* (a directory awaited that is not there, or went: nothing to say) */
		if (!w->warned && !(e == ENOENT && w->kind == W_PENDING))
			mm_log(MM_LOG_WARN, "cannot watch %s: %s (changes there are seen by the periodic rescan "
			       "until a later one can add it; raise fs.inotify.max_user_watches if it is exhausted)",
			       w->path, strerror(e));
		w->warned = true;
		return;
	}
	w->warned = false;
	w->wd = wd;
	wd_link(ws, w);
}

static void ws_closed_cb(uv_handle_t *h)
{
	struct mm_watchset *ws = h->data;
	mm_daemon_handle_closed(h);
	close(ws->fd);
	free(ws->bypath);
	free(ws->bywd);
	free(ws);
}

static void inotify_cb(uv_poll_t *h, int status, int events);

static struct mm_watchset *ws_get(struct mm_daemon *d)
{
	static bool warned;
	if (d->ws)
		return d->ws;
	struct mm_watchset *ws = calloc(1, sizeof *ws);
	if (!ws || tables_grow(ws) < 0) {
		free(ws);
		return NULL;
	}
	ws->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	int err = ws->fd < 0 ? -errno : uv_poll_init(&d->loop, &ws->poll, ws->fd);
	if (err < 0) {
		if (!warned)
			mm_log(MM_LOG_WARN, "cannot watch the Maildirs: %s (changes are seen by the periodic "
			       "rescan; raise fs.inotify.max_user_instances if it is exhausted)", uv_strerror(err));
		warned = true;
		if (ws->fd >= 0)
			close(ws->fd);
		free(ws->bypath);
		free(ws->bywd);
		free(ws);
		return NULL;
	}
	d->open_handles++;
	ws->poll.data = ws;
	uv_poll_start(&ws->poll, UV_READABLE, inotify_cb);
	d->ws = ws;
	return ws;
}

/* Marks stale every watch at or below dir (it moved, or went away). */
static bool stale_below(struct mm_watchset *ws, const char *dir, size_t dl)
{
	bool any = false;
	for (struct mm_watch *w = ws->all; w; w = w->next)
		if (!strncmp(w->path, dir, dl) && (w->path[dl] == '/' || !w->path[dl])) {
			w->stale = true;
			any = true;
		}
	return any;
}

static int add_watch_ex(struct mm_daemon *d, const char *path, enum watch_kind kind, const char *user,
                        const char *folder, const char *expect);

/* ---- events ----------------------------------------------------------------------- */

static bool names_dir(const char *name)
{
	return name && name[0] == '.' && strcmp(name, ".") && strcmp(name, "..");
}

static void watch_event(struct mm_daemon *d, struct mm_watch *w, const char *filename, uint32_t mask)
{
	switch (w->kind) {
	case W_FOLDER_ROOT:
		if (uidlist_event(d, filename, w->user, w->folder))
			return;
		/* Dovecot names a new keyword letter after renaming the file that uses it:
		 * the folder's scan then takes in what the earlier scan had to leave. */
		if (filename && !strcmp(filename, "dovecot-keywords"))
			mm_scan_request(d, w->user, w->folder);
		/* its cur/ or new/ made again (the watch of the old one is stale) */
		else if (filename && (mask & IN_ISDIR) && (!strcmp(filename, "cur") || !strcmp(filename, "new")))
			mm_scan_request(d, NULL, NULL);
		return;
	case W_FOLDER:
		/* the event of a body this node placed itself needs no scan */
		if (!(filename && d->store && mm_store_own_event(d->store, w->path, filename)))
			mm_scan_request(d, w->user, w->folder);
		return;
	case W_USER:
		if (uidlist_event(d, filename, w->user, "INBOX"))
			return;
		if (filename && !strcmp(filename, "dovecot-keywords")) {
			mm_scan_request(d, w->user, "INBOX");
			return;
		}
		/* A directory that may become a folder: watched until it is one, so that its
		 * cur/ or new/, made after the scan this event brings, is not missed. */
		if (names_dir(filename) && (mask & IN_ISDIR) && (mask & (IN_CREATE | IN_MOVED_TO)) &&
		    strcmp(filename + 1, "DOVECOT-TRASHED") && strcmp(filename, "..DOVECOT-TRASHED")) {
			char *p = NULL;
			if (asprintf(&p, "%s/%s", w->path, filename) >= 0)
				add_watch_ex(d, p, W_PENDING, w->user, NULL, "cur");
			else
				p = NULL;
			free(p);
		}
		/* In a user's Maildir only folder directories (.Name) and the subscriptions
		 * file matter; Dovecot's index, uidlist and keywords files change all the time. */
		if (!filename || names_dir(filename) || !strcmp(filename, "subscriptions") ||
		    !strcmp(filename, "cur") || !strcmp(filename, "new"))
			mm_scan_request(d, NULL, NULL);
		return;
	case W_PENDING:
		/* what was awaited was made: the scan finds it, or (a part of it only) the
		 * refresh after it watches the next place where the rest is awaited */
		if ((mask & (IN_CREATE | IN_MOVED_TO)) && filename &&
		    (!strcmp(filename, w->expect) || (!strcmp(w->expect, "cur") && !strcmp(filename, "new"))))
			mm_scan_request(d, NULL, NULL);
		return;
	case W_USERS:
		/* A user or domain directory appeared: its Maildir may still be half made,
		 * and a directory the store skipped as "not a Maildir" is watched as a place
		 * where one is awaited only from the refresh after the next full scan. */
		settle_start(d);
		return;
	}
}

static void inotify_cb(uv_poll_t *h, int status, int events)
{
	(void)events;
	struct mm_watchset *ws = h->data;
	struct mm_daemon *d = h->loop->data;
	if (status < 0) {
		/* libuv stopped polling the descriptor: without a new instance nothing would
		 * be seen until a restart but by the periodic rescan */
		mm_log(MM_LOG_WARN, "reading inotify events: %s (watching anew, rescanning everything)",
		       uv_strerror(status));
		mm_watch_restart(d);
		return;
	}
	char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (int reads = 0; reads < 16; reads++) { /* (the rest at the next turn: others may run) */
		ssize_t n = read(ws->fd, buf, sizeof buf);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
				mm_log(MM_LOG_WARN, "reading inotify events: %s (watching anew, rescanning "
				       "everything)", strerror(errno));
				mm_watch_restart(d);
			}
			return;
		}
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *e = (const struct inotify_event *)p;
			p += sizeof *e + e->len;
			if (d->stopping)
				continue;
			if (e->mask & IN_Q_OVERFLOW) {
				/* events were lost: only a full scan knows what they said */
				mm_log(MM_LOG_WARN, "inotify queue overflow: rescanning everything (raise "
				       "fs.inotify.max_queued_events if it happens often)");
				mm_scan_request(d, NULL, NULL);
				continue;
			}
			/* the watches of this wd (several paths of one inode), taken first: an
			 * event may add a watch, which may grow the tables */
			struct mm_watch *hit[16];
			size_t nh = 0;
			for (struct mm_watch *w = ws->bywd[(unsigned)e->wd & (ws->nb - 1)]; w && nh < 16; w = w->wnext)
				if (w->wd == e->wd)
					hit[nh++] = w;
			const char *name = e->len && e->name[0] ? e->name : NULL;
			for (size_t i = 0; i < nh; i++) {
				struct mm_watch *w = hit[i];
				if (e->mask & IN_IGNORED) {
					/* the kernel dropped the watch (directory gone, unmounted) */
					wd_unlink(ws, w);
					w->wd = -1;
					w->stale = true;
					mm_scan_request(d, NULL, NULL);
					continue;
				}
				if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
					stale_below(ws, w->path, strlen(w->path));
					mm_scan_request(d, NULL, NULL);
					continue;
				}
				/* a directory moved out of, or deleted from, a watched one: the watches
				 * there followed it (or are gone); the same name made again is another
				 * directory, to watch anew */
				if (name && w->kind != W_FOLDER && (e->mask & IN_ISDIR) &&
				    (e->mask & (IN_MOVED_FROM | IN_DELETE | IN_MOVED_TO | IN_CREATE))) {
					size_t pl = strlen(w->path), nl = strlen(name);
					if (pl + 1 + nl < 4096) {
						char q[4096];
						memcpy(q, w->path, pl);
						q[pl] = '/';
						memcpy(q + pl + 1, name, nl + 1);
						if (stale_below(ws, q, pl + 1 + nl))
							mm_scan_request(d, NULL, NULL);
					}
				}
				watch_event(d, w, name, e->mask);
			}
		}
	}
}

/* ---- the watch list ------------------------------------------------------------------- */

static bool child_exists(const char *dir, const char *name)
{
	char *p = NULL;
	struct stat st;
	if (asprintf(&p, "%s/%s", dir, name) < 0)
		return false;
	bool r = stat(p, &st) == 0;
	free(p);
	return r;
}

static int add_watch_ex(struct mm_daemon *d, const char *path, enum watch_kind kind, const char *user,
                        const char *folder, const char *expect)
{
	struct mm_watchset *ws = ws_get(d);
	if (!ws)
		return 0;
	struct mm_watch *w = by_path(ws, path);
	if (w) {
		w->seen = true;
		/* a place awaited that became a Maildir or a folder: watched as what it is
		 * now (a listing of what it is wins over an awaited place) */
		if (w->kind != kind && !(kind == W_PENDING && w->kind != W_PENDING)) {
			if (set_str(&w->user, user) < 0 || set_str(&w->folder, folder) < 0 ||
			    set_str(&w->expect, expect) < 0)
				mm_scan_request(d, NULL, NULL);
			w->kind = kind;
		}
		if (w->wd >= 0 && !w->stale)
			return 0;
		/* moved, gone and back, or never added: from the path again, and a look at
		 * what arrived meanwhile */
		watch_start(ws, w);
		if (w->wd >= 0)
			mm_scan_request(d, w->kind == W_FOLDER ? w->user : NULL, w->kind == W_FOLDER ? w->folder : NULL);
		return 0;
	}
	if (ws->n >= ws->nb && tables_grow(ws) < 0)
		return 0;
	w = calloc(1, sizeof *w);
	if (!w)
		return 0;
	w->path = strdup(path);
	w->user = user ? strdup(user) : NULL;
	w->folder = folder ? strdup(folder) : NULL;
	w->expect = expect ? strdup(expect) : NULL;
	if (!w->path || (user && !w->user) || (folder && !w->folder) || (expect && !w->expect)) {
		free(w->path);
		free(w->user);
		free(w->folder);
		free(w->expect);
		free(w);
		return 0;
	}
	w->kind = kind;
	w->wd = -1;
	w->seen = true;
	w->next = ws->all;
	ws->all = w;
	struct mm_watch **b = &ws->bypath[path_hash(path) & (ws->nb - 1)];
	w->pnext = *b;
	*b = w;
	ws->n++;
	watch_start(ws, w);
	/* Whatever arrived between the scan that found this directory and now raised no
	 * event: look at the directory once more. */
	if (kind == W_FOLDER || kind == W_USER || kind == W_USERS)
		mm_scan_request(d, user, folder);
	else if (kind == W_PENDING && w->wd >= 0 && expect) {
		/* made before the watch was: no event came for it */
		bool cur = !strcmp(expect, "cur");
		if (child_exists(path, expect) || (cur && child_exists(path, "new")))
			mm_scan_request(d, NULL, NULL);
	}
	return 0;
}

static int add_watch(void *arg, const char *path, const char *user, const char *folder)
{
	struct mm_daemon *d = arg;
	if (!user) {
		add_watch_ex(d, path, folder ? W_PENDING : W_USERS, NULL, NULL, folder);
		return 0;
	}
	add_watch_ex(d, path, folder ? W_FOLDER : W_USER, user, folder, NULL);
	/* ".../.Name/cur": also the folder's directory, where dovecot-keywords lives
	 * (INBOX's is the user's Maildir, watched already). */
	size_t n = strlen(path);
	if (folder && strcmp(folder, "INBOX") && n > 4 && !strcmp(path + n - 4, "/cur")) {
		char *parent = strndup(path, n - 4);
		if (parent) {
			add_watch_ex(d, parent, W_FOLDER_ROOT, user, folder, NULL);
			free(parent);
		}
	}
	return 0;
}

static bool is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int mm_watch_refresh(struct mm_daemon *d)
{
	struct mm_watchset *ws = ws_get(d);
	if (!ws)
		return 0;
	for (struct mm_watch *w = ws->all; w; w = w->next)
		w->seen = false;
	ws->nospc = 0;
	int r = mm_store_watch_dirs(d->store, add_watch, d);
	if (!ws->nospc)
		ws->nospc_warned = false;
	for (struct mm_watch **pp = &ws->all; *pp;) {
		struct mm_watch *w = *pp;
		/* a directory in a Maildir that may become a folder (again: a folder's
		 * directory left half made or half deleted): kept while it is there; the
		 * store lists it once it is one */
		if (!w->seen && r == 0 && w->user && (w->kind == W_PENDING || w->kind == W_FOLDER_ROOT) &&
		    is_dir(w->path)) {
			if (w->kind != W_PENDING && set_str(&w->expect, "cur") == 0) {
				free(w->folder);
				w->folder = NULL;
				w->kind = W_PENDING;
			}
			if (w->kind == W_PENDING) {
				if (w->wd < 0 || w->stale)
					watch_start(ws, w);
				w->seen = true;
			}
		}
		if (w->seen) {
			pp = &w->next;
			continue;
		}
		if (r != 0 && w->wd >= 0 && !w->stale) { /* (a listing cut short keeps what it did not reach) */
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		watch_free(ws, w);
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

/* Drops every watch and closes the inotify instance (its descriptor goes in the
 * close callback); the next mm_watch_refresh makes a new one. */
static void ws_drop(struct mm_daemon *d)
{
	struct mm_watchset *ws = d->ws;
	if (!ws)
		return;
	d->ws = NULL;
	while (ws->all) {
		struct mm_watch *w = ws->all;
		ws->all = w->next;
		w->wd = -1; /* (closing the inotify descriptor drops them all) */
		watch_free(ws, w);
	}
	uv_close((uv_handle_t *)&ws->poll, ws_closed_cb);
}

void mm_watch_restart(struct mm_daemon *d)
{
	ws_drop(d);
	mm_scan_request(d, NULL, NULL); /* (its refresh watches everything anew) */
}

void mm_watch_stop(struct mm_daemon *d)
{
	ws_drop(d);
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

bool mm_scan_requested(const struct mm_daemon *d, const char *user, const char *folder)
{
	if (d->full_scan_wanted)
		return true;
	for (const struct mm_dirty *x = d->dirty; x && user && folder; x = x->next)
		if (!strcmp(x->user, user) && !strcmp(x->folder, folder))
			return true;
	return false;
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
