/*
 * maildir.c — Maildir primitives (see maildir.h): names, letters, dovecot-keywords,
 * dovecot-uidlist, atomic delivery, renames, folders and subscriptions.  Every write
 * that replaces a file goes through a temp file, fsync and rename so a crash leaves
 * either the old or the new content, never a half-written one.
 */
#include "node/maildir.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PATHBUF 4096

static int path2(char *buf, size_t len, const char *a, const char *b)
{
	int n = snprintf(buf, len, "%s/%s", a, b);
	return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : n;
}

static int path3(char *buf, size_t len, const char *a, const char *b, const char *c)
{
	int n = snprintf(buf, len, "%s/%s/%s", a, b, c);
	return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : n;
}

/* ---- names ------------------------------------------------------------------ */

static int parse_num(const char *p, const char *end, uint64_t *v_r)
{
	uint64_t v = 0;
	const char *s = p;
	while (p < end && *p >= '0' && *p <= '9') {
		if (v > (UINT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*p - '0');
		p++;
	}
	if (p == s)
		return -1;
	*v_r = v;
	return (int)(p - s);
}

/* A control character (a line break above all) in a name would not survive a line of
 * dovecot-uidlist: the name read back would differ, and the file would get a new UID
 * on every pass.  Dovecot never makes such names.  mm_md_name_parse still takes them:
 * a file so named is mail, and refusing it in the scan would expunge, on every node,
 * a message indexed before; only listing it is refused. */
static bool has_ctl(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < ' ' || *s == 0x7f)
			return true;
	return false;
}

int mm_md_name_parse(const char *name, struct mm_md_name *n_r)
{
	memset(n_r, 0, sizeof(*n_r));
	size_t len = strlen(name);
	if (len == 0 || len > MM_MD_NAME_MAX || name[0] == '.' || strchr(name, '/'))
		return -EINVAL;
	const char *colon = strchr(name, ':');
	const char *bend = colon ? colon : name + len;
	if (bend == name)
		return -EINVAL;
	n_r->base = name;
	n_r->base_len = (size_t)(bend - name);
	/* ,S= and ,W= fields: anywhere after a comma in the base; the first of each wins */
	for (const char *p = name; p < bend; p++) {
		if (*p != ',' || p + 3 > bend || p[2] != '=')
			continue;
		uint64_t v;
		if (p[1] == 'S' && !n_r->has_size && parse_num(p + 3, bend, &v) > 0) {
			n_r->has_size = true;
			n_r->size = v;
		} else if (p[1] == 'W' && !n_r->has_vsize && parse_num(p + 3, bend, &v) > 0) {
			n_r->has_vsize = true;
			n_r->vsize = v;
		}
	}
	/* The info part as Dovecot reads it (maildir-filename-flags.c,
	 * maildir_filename_flags_get): from the last ':', flags only after "2,", up to
	 * another ',' ("another flag separator - we don't know what it's for"), characters
	 * that are no flag letter ignored.  Any other name is still a message to Dovecot
	 * (without flags), so it is one here too: refusing it left mail that IMAP shows on
	 * this server out of every other.  Such a name is not the canonical form of its
	 * base and letters: the store keeps it whole (odd_names). */
	const char *info = colon ? strrchr(colon, ':') : NULL;
	if (info && info[1] == '2' && info[2] == ',') {
		n_r->has_info = true;
		for (const char *p = info + 3; *p && *p != ','; p++) {
			if (*p >= 'A' && *p <= 'Z')
				n_r->letters |= MM_MD_UPPER(*p);
			else if (*p >= 'a' && *p <= 'z')
				n_r->letters |= MM_MD_LOWER(*p);
		}
	}
	return 0;
}

int mm_md_name_format(char *buf, size_t buflen, const char *base, size_t base_len,
                      uint64_t letters, bool with_info)
{
	size_t need = base_len + 1;
	if (letters || with_info)
		need += 3 + (size_t)__builtin_popcountll(letters);
	if (need > buflen || need - 1 > MM_MD_NAME_MAX)
		return -ENAMETOOLONG;
	memcpy(buf, base, base_len);
	size_t o = base_len;
	if (letters || with_info) {
		memcpy(buf + o, ":2,", 3);
		o += 3;
		for (int i = 0; i < 52; i++)
			if (letters & (UINT64_C(1) << i))
				buf[o++] = (char)(i < 26 ? 'A' + i : 'a' + (i - 26));
	}
	buf[o] = 0;
	return (int)o;
}

static const char sysflags[] = "DFPRST";

uint64_t mm_md_flags_to_letters(unsigned flags)
{
	uint64_t l = 0;
	for (int i = 0; i < 6; i++)
		if (flags & (1u << i))
			l |= MM_MD_UPPER(sysflags[i]);
	return l;
}

unsigned mm_md_letters_to_flags(uint64_t letters)
{
	unsigned f = 0;
	for (int i = 0; i < 6; i++)
		if (letters & MM_MD_UPPER(sysflags[i]))
			f |= 1u << i;
	return f;
}

int mm_md_unescape(const char *in, size_t len, char *buf, size_t buflen)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (c == '\\' && i + 4 <= len &&
		    (memcmp(in + i + 1, "057", 3) == 0 || memcmp(in + i + 1, "072", 3) == 0)) {
			c = in[i + 2] == '5' ? '/' : ':';
			i += 3;
		}
		if (o + 1 >= buflen)
			return -ENAMETOOLONG;
		buf[o++] = c;
	}
	if (buflen == 0)
		return -ENAMETOOLONG;
	buf[o] = 0;
	return (int)o;
}

/* ---- small file helpers ------------------------------------------------------- */

static int read_all(const char *path, char **data_r, size_t *len_r)
{
	*data_r = NULL;
	*len_r = 0;
	/* O_NONBLOCK: a FIFO in the place of a Dovecot file must not hold the open (and
	 * the daemon) until a writer comes; only a regular file is read */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	struct stat st;
	int e = fstat(fd, &st) < 0 ? -errno : !S_ISREG(st.st_mode) ? -EINVAL : 0;
	if (e) {
		close(fd);
		return e;
	}
	size_t cap = 4096, len = 0;
	char *d = malloc(cap + 1);
	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	for (;;) {
		if (len == cap) {
			if (cap > (64u << 20)) { /* a control file this big is not one */
				free(d);
				close(fd);
				return -EFBIG;
			}
			char *nd = realloc(d, cap * 2 + 1);
			if (!nd) {
				free(d);
				close(fd);
				return -ENOMEM;
			}
			d = nd;
			cap *= 2;
		}
		ssize_t r = read(fd, d + len, cap - len);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			int e = -errno;
			free(d);
			close(fd);
			return e;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	d[len] = 0;
	*data_r = d;
	*len_r = len;
	return 0;
}

/* Reads dir/name whole as text (NUL-terminated; the parsers need no length): 1 and
 * *text_r (caller frees) when read, 0 when the file does not exist (an absent Dovecot
 * file means "empty"), or a negative errno. */
static int read_text_in(const char *dir, const char *name, char **text_r)
{
	char p[PATHBUF];
	size_t len;
	*text_r = NULL;
	if (path2(p, sizeof p, dir, name) < 0)
		return -ENAMETOOLONG;
	int r = read_all(p, text_r, &len);
	if (r == -ENOENT)
		return 0;
	return r < 0 ? r : 1;
}

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Opens path (read-only, with `flags`), calls sync on it (fsync, fdatasync, syncfs),
 * closes it.  0 or negative errno. */
static int sync_path(const char *path, int flags, int (*sync)(int))
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | flags); /* a FIFO: no wait */
	if (fd < 0)
		return -errno;
	int r = sync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

static int fsync_dir(const char *dir)
{
	return sync_path(dir, O_DIRECTORY, fsync);
}

static void apply_owner(int fd, const struct mm_md_owner *o, bool dir)
{
	if (!o)
		return;
	/* Only what differs is set (each change is an inode update, on a journaled
	 * filesystem a journal entry): a daemon running as the mail owner under a
	 * usual umask creates files as they should be. */
	struct stat st;
	bool known = fstat(fd, &st) == 0;
	mode_t mode = dir ? o->dir_mode : o->file_mode;
	if ((o->uid != (uid_t)-1 && (!known || st.st_uid != o->uid)) ||
	    (o->gid != (gid_t)-1 && (!known || st.st_gid != o->gid)))
		if (fchown(fd, o->uid, o->gid) < 0) {
			/* not root: keep the creator's owner; the mode still applies */
		}
	if (!known || (st.st_mode & 07777) != mode)
		(void)!fchmod(fd, mode);
}

/* Writes `data` to <dir>/<tmpname> (O_EXCL), fsyncs, renames it over <dir>/<name>.
 * With grow_mtime, the new file's mtime is above the replaced file's (see
 * mm_md_keywords_add). */
static int replace_file_ex(const char *dir, const char *tmpname, const char *name,
                           const void *data, size_t len, const struct mm_md_owner *o, bool grow_mtime)
{
	char tp[PATHBUF], fp[PATHBUF];
	if (path2(tp, sizeof tp, dir, tmpname) < 0 || path2(fp, sizeof fp, dir, name) < 0)
		return -ENAMETOOLONG;
	struct stat old;
	bool had_old = grow_mtime && stat(fp, &old) == 0;
	int fd = open(tp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, o ? o->file_mode : 0600);
	if (fd < 0)
		return -errno;
	apply_owner(fd, o, false);
	int r = write_all(fd, data, len);
	struct stat st;
	if (r == 0 && had_old && fstat(fd, &st) == 0 && st.st_mtime <= old.st_mtime) {
		/* Dovecot re-reads such a file only when its whole-second mtime changed */
		struct timespec ts[2] = {{0, UTIME_OMIT}, {old.st_mtime + 1, 0}};
		if (futimens(fd, ts) < 0)
			r = -errno;
	}
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tp, fp) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tp);
		return r;
	}
	fsync_dir(dir);
	return 0;
}

static int replace_file(const char *dir, const char *tmpname, const char *name,
                        const void *data, size_t len, const struct mm_md_owner *o)
{
	return replace_file_ex(dir, tmpname, name, data, len, o, false);
}

/* ---- dovecot-keywords ----------------------------------------------------------- */

void mm_md_keywords_clear(struct mm_md_keywords *kw)
{
	for (int i = 0; i < MM_MD_KEYWORDS_MAX; i++) {
		free(kw->names[i]);
		kw->names[i] = NULL;
	}
}

static bool kw_name_ok(const char *s, size_t len)
{
	if (len == 0 || len > 255)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == 0x7f)
			return false;
	}
	return true;
}

int mm_md_keywords_parse(char *text, struct mm_md_keywords *kw)
{
	memset(kw, 0, sizeof(*kw));
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *sp = strchr(line, ' ');
		if (!sp)
			continue;
		char *end;
		errno = 0;
		long idx = strtol(line, &end, 10);
		if (end != sp || end == line || errno || idx < 0 || idx >= MM_MD_KEYWORDS_MAX)
			continue;
		const char *name = sp + 1;
		size_t nl = strlen(name);
		if (nl && name[nl - 1] == '\r')
			nl--;
		if (!kw_name_ok(name, nl) || kw->names[idx])
			continue;
		kw->names[idx] = strndup(name, nl);
		if (!kw->names[idx])
			return -ENOMEM;
	}
	return 0;
}

int mm_md_keywords_read(const char *folder_dir, struct mm_md_keywords *kw)
{
	memset(kw, 0, sizeof(*kw));
	char *d;
	int r = read_text_in(folder_dir, "dovecot-keywords", &d);
	if (r <= 0)
		return r;
	r = mm_md_keywords_parse(d, kw);
	free(d);
	return r;
}

int mm_md_keywords_find(const struct mm_md_keywords *kw, const char *name)
{
	/* Without regard to case, the first line first: Dovecot's keyword names are one
	 * keyword whatever their case (its index hashes them with strcasecmp), and a
	 * second line naming one again in another case it takes for a lost name, which
	 * it writes over as "unknown-N" (checked with Dovecot 2.3.19). */
	for (int i = 0; i < MM_MD_KEYWORDS_MAX; i++)
		if (kw->names[i] && strcasecmp(kw->names[i], name) == 0)
			return i;
	return -1;
}

int mm_md_keywords_add(const char *folder_dir, struct mm_md_keywords *kw, const char *name,
                       uint32_t avoid)
{
	if (!kw_name_ok(name, strlen(name)))
		return -EINVAL;
	int i = mm_md_keywords_find(kw, name);
	if (i >= 0)
		return i;
	int r = mm_md_uidlist_lock(folder_dir, 5000);
	if (r < 0)
		return r;
	struct mm_md_keywords fresh;
	r = mm_md_keywords_read(folder_dir, &fresh);
	if (r < 0) {
		mm_md_keywords_clear(&fresh);
		goto out;
	}
	mm_md_keywords_clear(kw);
	*kw = fresh;
	i = mm_md_keywords_find(kw, name);
	if (i >= 0) {
		r = i;
		goto out;
	}
	for (i = 0; i < MM_MD_KEYWORDS_MAX && (kw->names[i] || (avoid >> i & 1)); i++)
		;
	if (i == MM_MD_KEYWORDS_MAX) {
		r = -ENOSPC;
		goto out;
	}
	kw->names[i] = strdup(name);
	if (!kw->names[i]) {
		r = -ENOMEM;
		goto out;
	}
	/* the new content: every known index, in order */
	size_t cap = 64;
	for (int j = 0; j < MM_MD_KEYWORDS_MAX; j++)
		if (kw->names[j])
			cap += strlen(kw->names[j]) + 8;
	char *buf = malloc(cap);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	size_t len = 0;
	for (int j = 0; j < MM_MD_KEYWORDS_MAX; j++)
		if (kw->names[j])
			len += (size_t)snprintf(buf + len, cap - len, "%d %s\n", j, kw->names[j]);
	struct mm_md_owner o;
	int ro = mm_md_owner_of(folder_dir, &o);
	char lockp[PATHBUF];
	/* A keywords dotlock present now was left by a writer that died (a kill -9 of
	 * ours or of Dovecot's): Dovecot writes dovecot-keywords only with the uidlist
	 * lock held, as we do, and we hold it.  Left there, it made every later keyword
	 * add fail (files kept without their keyword letters for good). */
	if (path2(lockp, sizeof lockp, folder_dir, "dovecot-keywords.lock") >= 0)
		unlink(lockp);
	/* Dovecot caches the file by its mtime in whole seconds (maildir-keywords.c,
	 * maildir_keywords_sync) and makes it grow on each write of its own
	 * (maildir_keywords_write_fd); so must we: a Dovecot process that read the file in
	 * this second would never see our name, take the letter for a lost one and write
	 * "unknown-<i>" over it. */
	r = replace_file_ex(folder_dir, "dovecot-keywords.lock", "dovecot-keywords", buf, len,
	                    ro == 0 ? &o : NULL, true);
	free(buf);
	if (r == 0)
		r = i;
	else {
		free(kw->names[i]);
		kw->names[i] = NULL;
	}
out:
	mm_md_uidlist_unlock(folder_dir);
	return r;
}

/* ---- dovecot-uidlist ------------------------------------------------------------ */

int mm_md_uidlist_parse_each(char *text,
                             int (*cb)(void *arg, uint32_t uid, const char *base, size_t base_len),
                             void *arg)
{
	char *save = NULL;
	bool first = true, v1 = false;
	int r = 0;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (first) { /* header: "3 V<uidvalidity> N<next> G<guid>" (or version 1's) */
			first = false;
			v1 = strncmp(line, "1 ", 2) == 0;
			continue;
		}
		char *end;
		errno = 0;
		unsigned long uid = strtoul(line, &end, 10);
		if (end == line || *end != ' ' || errno || uid == 0 || uid > UINT32_MAX)
			continue;
		char *fn;
		if (v1) { /* "<uid> <name>" */
			for (fn = end; *fn == ' '; fn++)
				;
		} else {
			fn = strstr(end, " :");
			if (!fn)
				continue;
			fn += 2;
		}
		size_t bl = strcspn(fn, ":\r");
		if (bl == 0)
			continue;
		r = cb(arg, (uint32_t)uid, fn, bl);
		if (r)
			break;
	}
	return r;
}

int mm_md_uidlist_read(const char *folder_dir,
                       int (*cb)(void *arg, uint32_t uid, const char *base, size_t base_len),
                       void *arg)
{
	char *d;
	int r = read_text_in(folder_dir, "dovecot-uidlist", &d);
	if (r <= 0)
		return r;
	r = mm_md_uidlist_parse_each(d, cb, arg);
	free(d);
	return r;
}

/* A dovecot-uidlist.lock whose holder is gone: it names a process of this host
 * ("PID:HOSTNAME", written by Dovecot and by us; "PID:mailmesh" by older mailmesh) that no longer exists, as
 * Dovecot's own dotlock code checks; so a lock left by a kill -9 (ours or Dovecot's)
 * does not hold every UID pass for two minutes.  The lock must still be the one that
 * was read (same inode and mtime as `st`), so a lock just retaken is not removed. */
static bool lock_holder_dead(const char *path, const struct stat *st)
{
	char buf[128], host[128];
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK); /* a FIFO: no wait */
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	struct stat st2;
	bool same = fstat(fd, &st2) == 0 && st2.st_ino == st->st_ino && st2.st_mtime == st->st_mtime;
	close(fd);
	if (n <= 0 || !same)
		return false;
	buf[n] = 0;
	char *end;
	long pid = strtol(buf, &end, 10);
	if (pid <= 0 || end == buf || *end != ':')
		return false;
	char *who = end + 1;
	who[strcspn(who, "\r\n")] = 0;
	if (strcmp(who, "mailmesh") != 0 &&
	    (gethostname(host, sizeof host) != 0 || (host[sizeof host - 1] = 0, strcmp(who, host) != 0)))
		return false; /* another host's (shared storage): only the age rule applies */
	return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

/* The locks this process holds, by lock file path.  A flag rename or a keyword write
 * may come while one of the loop's own passes holds the folder's lock (a UID pass
 * writing flags merged meanwhile, a scan numbering files): that nested take must not
 * wait for itself (2 s a file, then go on unlocked; 5 s and fail for a keyword).  A
 * placement job takes a folder's lock on the loop and drops it on a pool thread (the
 * store keeps the loop off that folder meanwhile: folder.job_locked), so the table
 * itself is guarded. */
#define HELD_LOCKS_MAX 16
static struct {
	char path[PATHBUF];
	unsigned depth;
} held_locks[HELD_LOCKS_MAX];
static pthread_mutex_t held_mutex = PTHREAD_MUTEX_INITIALIZER;

/* (held_mutex held) */
static int held_lock_find(const char *lock_path)
{
	for (int i = 0; i < HELD_LOCKS_MAX; i++)
		if (held_locks[i].depth && !strcmp(held_locks[i].path, lock_path))
			return i;
	return -1;
}

/* Counts one more take of lock_path if this process holds it: true. */
static bool held_lock_again(const char *lock_path)
{
	pthread_mutex_lock(&held_mutex);
	int h = held_lock_find(lock_path);
	if (h >= 0)
		held_locks[h].depth++;
	pthread_mutex_unlock(&held_mutex);
	return h >= 0;
}

static void held_lock_add(const char *lock_path)
{
	pthread_mutex_lock(&held_mutex);
	for (int i = 0; i < HELD_LOCKS_MAX; i++)
		if (!held_locks[i].depth && strlen(lock_path) < PATHBUF) {
			strcpy(held_locks[i].path, lock_path);
			held_locks[i].depth = 1;
			break;
		}
	/* more than HELD_LOCKS_MAX locks held at once: this one is not re-entrant */
	pthread_mutex_unlock(&held_mutex);
}

/* Counts one release of lock_path: true when it is to be removed now (the last, or
 * one this process did not note). */
static bool held_lock_release(const char *lock_path)
{
	pthread_mutex_lock(&held_mutex);
	int h = held_lock_find(lock_path);
	bool last = h < 0 || --held_locks[h].depth == 0;
	if (h >= 0 && last)
		held_locks[h].path[0] = 0;
	pthread_mutex_unlock(&held_mutex);
	return last;
}

/* Dovecot's dotlock <dir>/<lock_name> (dovecot-uidlist.lock, subscriptions.lock). */
static int dotlock_take(const char *dir, const char *lock_name, unsigned timeout_ms)
{
	char p[PATHBUF];
	if (path2(p, sizeof p, dir, lock_name) < 0)
		return -ENAMETOOLONG;
	if (held_lock_again(p))
		return 0;
	/* The lock is made complete (owner, mode, contents) under a temporary name and
	 * then linked into place, which fails if it exists: Dovecot, running as the mail
	 * user, watches another holder's lock with inotify, and a lock that appeared
	 * before its chown would make that fail with EACCES. */
	char t[PATHBUF];
	if (snprintf(t, sizeof t, "%s.mm%ld", p, (long)getpid()) >= (int)sizeof t)
		return -ENAMETOOLONG;
	unlink(t);
	int fd = open(t, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	struct mm_md_owner o = {0};
	if (mm_md_owner_of(dir, &o) == 0)
		apply_owner(fd, &o, false);
	/* "PID:HOSTNAME", as Dovecot writes it: Dovecot takes over at once a lock whose
	 * process of this host is gone (lib/file-dotlock.c, read_local_pid), but waits
	 * out the whole stale timeout (120 s) on any other text, so a lock we left when
	 * killed would hold the folder's IMAP sessions that long.  (lock_holder_dead still
	 * reads the "PID:mailmesh" of older versions.) */
	char host[256], pid[320];
	if (gethostname(host, sizeof host - 1) != 0)
		snprintf(host, sizeof host, "mailmesh");
	host[sizeof host - 1] = 0;
	int pn = snprintf(pid, sizeof pid, "%ld:%s\n", (long)getpid(), host);
	if (pn < 0 || (size_t)pn >= sizeof pid)
		pn = snprintf(pid, sizeof pid, "%ld:mailmesh\n", (long)getpid());
	(void)!write(fd, pid, (size_t)pn);
	close(fd);
	unsigned waited = 0;
	for (;;) {
		if (link(t, p) == 0) {
			unlink(t);
			held_lock_add(p);
			return 0;
		}
		if (errno != EEXIST) {
			int e = -errno;
			unlink(t);
			return e;
		}
		struct stat st;
		if (stat(p, &st) == 0 && (time(NULL) - st.st_mtime > 120 || lock_holder_dead(p, &st))) {
			unlink(p); /* stale: the holder died */
			continue;
		}
		if (waited >= timeout_ms) {
			unlink(t);
			return -EAGAIN;
		}
		struct timespec ts = {0, 10 * 1000000L};
		nanosleep(&ts, NULL);
		waited += 10;
	}
}

static void dotlock_drop(const char *dir, const char *lock_name)
{
	char p[PATHBUF];
	if (path2(p, sizeof p, dir, lock_name) < 0)
		return;
	if (held_lock_release(p)) /* (else an outer take still holds it) */
		unlink(p);
}

int mm_md_uidlist_lock(const char *folder_dir, unsigned timeout_ms)
{
	return dotlock_take(folder_dir, "dovecot-uidlist.lock", timeout_ms);
}

void mm_md_uidlist_unlock(const char *folder_dir)
{
	dotlock_drop(folder_dir, "dovecot-uidlist.lock");
}

int mm_md_subs_lock(const char *maildir, unsigned timeout_ms)
{
	return dotlock_take(maildir, "subscriptions.lock", timeout_ms);
}

void mm_md_subs_unlock(const char *maildir)
{
	dotlock_drop(maildir, "subscriptions.lock");
}

/* ---- files ----------------------------------------------------------------------- */

int mm_md_owner_of(const char *dir, struct mm_md_owner *o_r)
{
	struct stat st;
	if (stat(dir, &st) < 0)
		return -errno;
	o_r->uid = st.st_uid;
	o_r->gid = st.st_gid;
	o_r->dir_mode = st.st_mode & 07777;
	o_r->file_mode = st.st_mode & 0666;
	return 0;
}

static int mkdir_owned(const char *p, const struct mm_md_owner *o);

int mm_md_tmp_open(const char *folder_dir, const char *base, const struct mm_md_owner *o)
{
	char p[PATHBUF];
	if (path3(p, sizeof p, folder_dir, "tmp", base) < 0)
		return -ENAMETOOLONG;
	int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, o ? o->file_mode : 0600);
	if (fd < 0 && errno == ENOENT && mm_md_is_maildir(folder_dir)) {
		/* A Maildir missing its tmp/ (a folder removed by hand while it was being
		 * recreated, say): restore it, as any careful MDA would, and try again. */
		char t[PATHBUF];
		if (path2(t, sizeof t, folder_dir, "tmp") < 0)
			return -ENAMETOOLONG;
		if (mkdir_owned(t, o) < 0)
			return -ENOENT;
		fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, o ? o->file_mode : 0600);
	}
	if (fd < 0)
		return -errno;
	apply_owner(fd, o, false);
	return fd;
}

int mm_md_tmp_seal(int fd, int64_t mtime, bool sync)
{
	/* mtime first, so that the one inode write of the fdatasync carries it too */
	struct timespec ts[2] = {{(time_t)mtime, 0}, {(time_t)mtime, 0}};
	int r = futimens(fd, ts) < 0 ? -errno : 0;
	if (r == 0 && sync && fdatasync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	return r;
}

/* Moves tp to dp unless dp exists (-EEXIST).  tp is gone on success only. */
static int move_noreplace(const char *tp, const char *dp)
{
#ifdef RENAME_NOREPLACE
	if (renameat2(AT_FDCWD, tp, AT_FDCWD, dp, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
		return -errno;
#endif
	if (link(tp, dp) < 0)
		return -errno;
	unlink(tp);
	return 0;
}

int mm_md_tmp_place(const char *folder_dir, const char *base, const char *sub, const char *name)
{
	char tp[PATHBUF], dp[PATHBUF], sd[PATHBUF];
	if (path3(tp, sizeof tp, folder_dir, "tmp", base) < 0)
		return -ENAMETOOLONG;
	int r = 0;
	if (path3(dp, sizeof dp, folder_dir, sub, name) < 0 || path2(sd, sizeof sd, folder_dir, sub) < 0)
		r = -ENAMETOOLONG;
	/* never replace a file that holds that name: a rename that refuses to, or where
	 * the filesystem does not offer one, link + unlink */
	if (r == 0 && (r = move_noreplace(tp, dp)) == -ENOENT) {
		/* the target subdirectory vanished (a delete racing this delivery): restore
		 * the folder's three, so it is a whole Maildir again, and retry */
		struct stat st;
		if (stat(sd, &st) < 0 && errno == ENOENT && mm_md_folder_repair(folder_dir) > 0)
			r = move_noreplace(tp, dp);
	}
	if (r < 0)
		unlink(tp);
	return r;
}

int mm_md_tmp_sync(const char *folder_dir, const char *base)
{
	char tp[PATHBUF];
	if (path3(tp, sizeof tp, folder_dir, "tmp", base) < 0)
		return -ENAMETOOLONG;
	return sync_path(tp, O_NOFOLLOW, fdatasync);
}

int mm_md_syncfs(const char *folder_dir)
{
	return sync_path(folder_dir, O_DIRECTORY, syncfs);
}

int mm_md_sync_sub(const char *folder_dir, const char *sub)
{
	char sd[PATHBUF];
	if (path2(sd, sizeof sd, folder_dir, sub) < 0)
		return -ENAMETOOLONG;
	return fsync_dir(sd);
}

int mm_md_tmp_finish(const char *folder_dir, const char *base, int fd, int64_t mtime,
                     const char *sub, const char *name)
{
	int r = mm_md_tmp_seal(fd, mtime, true);
	if (r < 0) {
		char tp[PATHBUF];
		if (path3(tp, sizeof tp, folder_dir, "tmp", base) >= 0)
			unlink(tp);
		return r;
	}
	r = mm_md_tmp_place(folder_dir, base, sub, name);
	if (r == 0)
		mm_md_sync_sub(folder_dir, sub);
	return r;
}

int mm_md_deliver(const char *folder_dir, const char *base, const void *data, size_t len,
                  int64_t mtime, const char *sub, const char *name, const struct mm_md_owner *o)
{
	int fd = mm_md_tmp_open(folder_dir, base, o);
	if (fd < 0)
		return fd;
	int r = write_all(fd, data, len);
	if (r < 0) {
		char tp[PATHBUF];
		close(fd);
		if (path3(tp, sizeof tp, folder_dir, "tmp", base) >= 0)
			unlink(tp);
		return r;
	}
	return mm_md_tmp_finish(folder_dir, base, fd, mtime, sub, name);
}

int mm_md_rename(const char *folder_dir, const char *from_sub, const char *from,
                 const char *to_sub, const char *to)
{
	char a[PATHBUF], b[PATHBUF];
	if (path3(a, sizeof a, folder_dir, from_sub, from) < 0 ||
	    path3(b, sizeof b, folder_dir, to_sub, to) < 0)
		return -ENAMETOOLONG;
	int lk = mm_md_uidlist_lock(folder_dir, 2000);
	int r = rename(a, b) < 0 ? -errno : 0;
	if (lk == 0)
		mm_md_uidlist_unlock(folder_dir);
	return r;
}

int mm_md_unlink(const char *folder_dir, const char *sub, const char *name)
{
	char a[PATHBUF];
	if (path3(a, sizeof a, folder_dir, sub, name) < 0)
		return -ENAMETOOLONG;
	int lk = mm_md_uidlist_lock(folder_dir, 2000);
	int r = unlink(a) < 0 ? -errno : 0;
	if (lk == 0)
		mm_md_uidlist_unlock(folder_dir);
	return r;
}

int mm_md_unlink_keep(const char *folder_dir, const char *sub, const char *name, const char *keep)
{
	char a[PATHBUF];
	if (path3(a, sizeof a, folder_dir, sub, name) < 0)
		return -ENAMETOOLONG;
	int lk = mm_md_uidlist_lock(folder_dir, 2000);
	int r = rename(a, keep) == 0 ? 1 : -errno;
	if (r < 0 && (r != -ENOENT || access(a, F_OK) == 0)) /* ENOENT: keep's directory */
		r = unlink(a) < 0 ? -errno : 0;
	if (lk == 0)
		mm_md_uidlist_unlock(folder_dir);
	return r;
}

/* ---- folders --------------------------------------------------------------------- */

int mm_md_folder_path(char *buf, size_t buflen, const char *maildir, const char *folder)
{
	int n;
	if (strcmp(folder, "INBOX") == 0) {
		n = snprintf(buf, buflen, "%s", maildir);
	} else {
		if (!folder[0] || folder[0] == '.' || strchr(folder, '/'))
			return -EINVAL;
		n = snprintf(buf, buflen, "%s/.%s", maildir, folder);
	}
	return (n < 0 || (size_t)n >= buflen) ? -ENAMETOOLONG : n;
}

int mm_md_folder_repair(const char *dir)
{
	if (!mm_md_is_maildir(dir))
		return 0;
	struct mm_md_owner o;
	int r = mm_md_owner_of(dir, &o);
	if (r < 0)
		return r;
	static const char *const subs[] = {"cur", "new", "tmp"};
	int made = 0;
	for (int i = 0; i < 3; i++) {
		char p[PATHBUF];
		struct stat st;
		if (path2(p, sizeof p, dir, subs[i]) < 0)
			return -ENAMETOOLONG;
		if (stat(p, &st) == 0)
			continue;
		if (errno != ENOENT)
			return -errno;
		r = mkdir_owned(p, &o);
		if (r < 0)
			return r;
		made += r;
	}
	return made;
}

bool mm_md_is_maildir(const char *dir)
{
	char p[PATHBUF];
	struct stat st;
	if (path2(p, sizeof p, dir, "cur") >= 0 && stat(p, &st) == 0 && S_ISDIR(st.st_mode))
		return true;
	if (path2(p, sizeof p, dir, "new") >= 0 && stat(p, &st) == 0 && S_ISDIR(st.st_mode))
		return true;
	return false;
}

static int mkdir_owned(const char *p, const struct mm_md_owner *o)
{
	if (mkdir(p, o ? o->dir_mode : 0700) < 0) {
		if (errno == EEXIST) {
			struct stat st;
			if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
				return 0;
			return -ENOTDIR;
		}
		return -errno;
	}
	int fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		apply_owner(fd, o, true);
		close(fd);
	}
	return 1;
}

static int mkdir_parents(const char *path, const struct mm_md_owner *o)
{
	char p[PATHBUF];
	if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p)
		return -ENAMETOOLONG;
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		int r = mkdir_owned(p, o);
		*s = '/';
		if (r < 0)
			return r;
	}
	int r = mkdir_owned(p, o);
	return r < 0 ? r : 0;
}

int mm_md_folder_create(const char *maildir, const char *folder, const struct mm_md_owner *o)
{
	return mm_md_folder_create_listed(maildir, folder, o, NULL);
}

int mm_md_folder_create_listed(const char *maildir, const char *folder, const struct mm_md_owner *o,
                               const struct mm_md_uidlist *ul)
{
	char fd_[PATHBUF], p[PATHBUF], final_[PATHBUF];
	int r = mm_md_folder_path(fd_, sizeof fd_, maildir, folder);
	if (r < 0)
		return r;
	/* With a uidlist, a new folder other than INBOX is made complete under a
	 * temporary name and renamed into place: Dovecot never sees it without the
	 * uidlist (it would number it itself, under another UIDVALIDITY). */
	bool staged = ul && strcmp(folder, "INBOX") != 0 && access(fd_, F_OK) != 0 && mm_md_is_maildir(maildir);
	if (staged) {
		/* under the user's tmp/: not a folder to Dovecot or to our scan meanwhile,
		 * nor after a crash (Dovecot ages tmp/ out); same filesystem for rename */
		memcpy(final_, fd_, sizeof final_);
		if (snprintf(fd_, sizeof fd_, "%s/tmp/mailmesh-folder.%ld", maildir, (long)getpid()) >= (int)sizeof fd_)
			return -ENAMETOOLONG;
		char t[PATHBUF];
		static const char *const old[] = {"tmp", "new", "cur", "maildirfolder", "dovecot-uidlist"};
		for (int i = 0; i < 5; i++) /* left by a crash of ours */
			if (path2(t, sizeof t, fd_, old[i]) >= 0)
				(void)remove(t);
		rmdir(fd_);
	}
	if ((r = mkdir_parents(maildir, o)) < 0)
		return r;
	if (strcmp(folder, "INBOX") != 0 && (r = mkdir_owned(fd_, o)) < 0)
		return r;
	static const char *const subs[] = {"tmp", "new", "cur"};
	for (int i = 0; i < 3; i++) {
		if (path2(p, sizeof p, fd_, subs[i]) < 0)
			return -ENAMETOOLONG;
		if ((r = mkdir_owned(p, o)) < 0)
			return r;
	}
	if (strcmp(folder, "INBOX") != 0) {
		if (path2(p, sizeof p, fd_, "maildirfolder") < 0)
			return -ENAMETOOLONG;
		/* O_NONBLOCK | O_NOFOLLOW: a FIFO or a link in its place is not waited on or
		 * followed (open then fails, and the marker is only a hint to Dovecot) */
		int f = open(p, O_WRONLY | O_CREAT | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW, o ? o->file_mode : 0600);
		if (f < 0)
			return -errno;
		apply_owner(f, o, false);
		close(f);
	}
	if (ul && staged) {
		if ((r = mm_md_uidlist_save(fd_, ul)) < 0)
			return r;
	} else if (ul && !mm_md_uidlist_exists(fd_) && mm_md_uidlist_lock(fd_, 2000) == 0) {
		/* visible already (INBOX, or a folder that existed): under the lock, and
		 * only if Dovecot has not written one meanwhile */
		if (!mm_md_uidlist_exists(fd_))
			r = mm_md_uidlist_save(fd_, ul);
		mm_md_uidlist_unlock(fd_);
		if (r < 0)
			return r;
	}
	if (staged && rename(fd_, final_) < 0) {
		r = -errno;
		if (r != -EEXIST && r != -ENOTEMPTY)
			return r;
		/* made meanwhile by someone else (Dovecot): theirs stands */
		char t[PATHBUF];
		static const char *const all[] = {"tmp", "new", "cur", "maildirfolder", "dovecot-uidlist"};
		for (int i = 0; i < 5; i++)
			if (path2(t, sizeof t, fd_, all[i]) >= 0 && remove(t) < 0 && errno != ENOENT)
				break;
		rmdir(fd_);
	}
	fsync_dir(maildir);
	return 0;
}

bool mm_md_uidlist_exists(const char *folder_dir)
{
	char p[PATHBUF];
	return path2(p, sizeof p, folder_dir, "dovecot-uidlist") >= 0 && access(p, F_OK) == 0;
}

static int dir_is_empty(const char *p)
{
	DIR *d = opendir(p);
	if (!d)
		return errno == ENOENT ? 1 : -errno;
	struct dirent *e;
	int empty = 1;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			empty = 0;
			break;
		}
	}
	closedir(d);
	return empty;
}

static const char *const md_subs[] = {"new", "cur", "tmp"};

/* 0 when a Maildir's new/, cur/ and tmp/ are empty (or missing), -ENOTEMPTY with the
 * first that is not in *left_r ("new/"; left_r may be NULL), or negative errno. */
static int subdirs_empty(const char *dir, char *left_r, size_t left_len)
{
	char p[PATHBUF];
	for (int i = 0; i < 3; i++) {
		if (path2(p, sizeof p, dir, md_subs[i]) < 0)
			return -ENAMETOOLONG;
		int r = dir_is_empty(p);
		if (r < 0)
			return r;
		if (r == 0) {
			if (left_r && left_len)
				snprintf(left_r, left_len, "%s/", md_subs[i]);
			return -ENOTEMPTY;
		}
	}
	return 0;
}

static bool folder_own_file(const char *n)
{
	return !strcmp(n, "maildirfolder") || !strncmp(n, "dovecot", 7);
}

/* What a removed user's Maildir may still hold besides new/, cur/ and tmp/ and be
 * removed with it: Dovecot's indexes, uidlist, keywords and mailbox log (dovecot*),
 * the subscriptions file, the Maildir++ quota file. */
static bool maildir_own_file(const char *n)
{
	return folder_own_file(n) || !strcmp(n, "subscriptions") || !strcmp(n, "maildirsize");
}

/* Removes the Maildir dir if new/, cur/ and tmp/ are empty and every other entry is
 * one of own(): those first, then the three directories, then dir.  0, -ENOTEMPTY
 * with the first entry in the way in *left_r (may be NULL; nothing removed), or
 * negative errno. */
static int maildir_dir_remove(const char *dir, bool (*own)(const char *), char *left_r, size_t left_len)
{
	char p[PATHBUF];
	int r = subdirs_empty(dir, left_r, left_len);
	if (r < 0)
		return r;
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	struct dirent *e;
	while ((e = readdir(d))) {
		const char *n = e->d_name;
		if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, "new") || !strcmp(n, "cur") ||
		    !strcmp(n, "tmp") || own(n))
			continue;
		if (left_r && left_len)
			snprintf(left_r, left_len, "%s", n);
		closedir(d);
		return -ENOTEMPTY;
	}
	rewinddir(d);
	while ((e = readdir(d))) {
		if (own(e->d_name) && path2(p, sizeof p, dir, e->d_name) >= 0 && unlink(p) < 0 && errno != ENOENT &&
		    !r)
			r = -errno; /* (a directory named dovecot-something: rmdir below says so) */
	}
	closedir(d);
	for (int i = 0; i < 3; i++)
		if (path2(p, sizeof p, dir, md_subs[i]) >= 0 && rmdir(p) < 0 && errno != ENOENT)
			return -errno;
	if (rmdir(dir) < 0 && errno != ENOENT)
		return r ? r : -errno;
	return 0;
}

int mm_md_folder_remove(const char *maildir, const char *folder)
{
	if (strcmp(folder, "INBOX") == 0)
		return -EINVAL;
	char fdir[PATHBUF];
	int r = mm_md_folder_path(fdir, sizeof fdir, maildir, folder);
	if (r < 0)
		return r;
	struct stat st;
	if (stat(fdir, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	/* only Dovecot's own files may remain besides the three directories */
	if ((r = maildir_dir_remove(fdir, folder_own_file, NULL, 0)) < 0)
		return r;
	fsync_dir(maildir);
	return 0;
}

int mm_md_maildir_remove(const char *maildir, char *left_r, size_t left_len)
{
	struct stat st;
	if (left_r && left_len)
		left_r[0] = '\0';
	if (lstat(maildir, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	/* a folder, a home directory's own files (Sieve scripts, .dovecot.lda-dupes),
	 * anything else: not ours to remove, so nothing is */
	int r = maildir_dir_remove(maildir, maildir_own_file, left_r, left_len);
	if (r < 0)
		return r;
	char parent[PATHBUF];
	if (snprintf(parent, sizeof parent, "%s", maildir) < (int)sizeof parent) {
		char *slash = strrchr(parent, '/');
		if (slash && slash != parent) {
			*slash = '\0';
			fsync_dir(parent);
		}
	}
	return 0;
}

int mm_md_folder_names_parse(const char *list, int (*cb)(void *arg, const char *folder), void *arg,
                             char *bad_r, size_t bad_len)
{
	const char *p = list;
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		char name[256], dir[PATHBUF];
		bool ok = n > 0 && n < sizeof name;
		if (ok) {
			memcpy(name, p, n);
			name[n] = '\0';
			ok = mm_md_folder_path(dir, sizeof dir, "/m", name) >= 0;
		}
		if (!ok) {
			if (bad_r && bad_len)
				snprintf(bad_r, bad_len, "%.*s", (int)n, p);
			return -EINVAL;
		}
		int r = cb ? cb(arg, name) : 0;
		if (r)
			return r;
		if (!end)
			return 0;
		p = end + 1;
	}
}

int mm_md_folder_list(const char *maildir, int (*cb)(void *arg, const char *folder), void *arg)
{
	DIR *d = opendir(maildir);
	if (!d)
		return -errno;
	int r = 0;
	if (mm_md_is_maildir(maildir))
		r = cb(arg, "INBOX");
	struct dirent *e;
	char p[PATHBUF];
	while (!r && (e = readdir(d))) {
		const char *n = e->d_name;
		if (n[0] != '.' || !n[1] || n[1] == '.')
			continue;
		/* Dovecot renames a folder it deletes to ..DOVECOT-TRASHED (.DOVECOT-TRASHED
		 * before 2.0) and then empties it; a scan meanwhile would take its messages
		 * for new mail in a new folder, on every node.  Dovecot does not list it
		 * either; no Maildir++ name starts with the separator. */
		if (!strcmp(n + 1, "DOVECOT-TRASHED"))
			continue;
		if (e->d_type != DT_DIR && e->d_type != DT_UNKNOWN)
			continue;
		if (path2(p, sizeof p, maildir, n) < 0 || !mm_md_is_maildir(p))
			continue;
		r = cb(arg, n + 1);
	}
	closedir(d);
	return r;
}

/* ---- subscriptions -------------------------------------------------------------- */

int mm_md_subs_parse(char *text, int (*cb)(void *arg, const char *folder), void *arg)
{
	char *save = NULL;
	bool first = true, v2 = false;
	int r = 0;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (first) {
			first = false;
			if (strncmp(line, "V\t", 2) == 0) {
				v2 = true;
				continue;
			}
		}
		size_t l = strlen(line);
		if (l && line[l - 1] == '\r')
			line[--l] = 0;
		if (!l)
			continue;
		if (v2)
			for (char *c = line; *c; c++)
				if (*c == '\t')
					*c = '.';
		r = cb(arg, line);
		if (r)
			break;
	}
	return r;
}

int mm_md_subs_read(const char *maildir, int (*cb)(void *arg, const char *folder), void *arg)
{
	char *d;
	int r = read_text_in(maildir, "subscriptions", &d);
	if (r <= 0)
		return r;
	r = mm_md_subs_parse(d, cb, arg);
	free(d);
	return r;
}

int mm_md_subs_write(const char *maildir, const char *const *names, size_t n,
                     const struct mm_md_owner *o)
{
	size_t cap = 16;
	for (size_t i = 0; i < n; i++)
		cap += strlen(names[i]) + 1;
	char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	size_t len = (size_t)snprintf(buf, cap, "V\t2\n\n");
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(names[i]);
		memcpy(buf + len, names[i], l);
		for (size_t j = 0; j < l; j++)
			if (buf[len + j] == '.')
				buf[len + j] = '\t';
		len += l;
		buf[len++] = '\n';
	}
	char tmpname[64];
	snprintf(tmpname, sizeof tmpname, "subscriptions.mm%ld.tmp", (long)getpid());
	char tp[PATHBUF];
	if (path2(tp, sizeof tp, maildir, tmpname) >= 0)
		unlink(tp); /* our own leftover from a crash */
	int r = replace_file(maildir, tmpname, "subscriptions", buf, len, o);
	free(buf);
	return r;
}

/* ---- dovecot-uidlist writing -------------------------------------------------------- */

/* A hash index of the listed base names, so looking a file up in a list of 100,000
 * costs one probe instead of a scan (the store looks up every file of a folder).
 * Slots point at the entries' name strings, which do not move when entries do. */
struct uidx_slot {
	const char *name; /* NULL: empty; UIDX_TOMB: deleted */
	size_t bl;
	uint32_t uid;
};
struct mm_md_uidx {
	struct uidx_slot *t;
	size_t cap, used; /* used counts tombstones too */
};
static const char uidx_tomb[1];
#define UIDX_TOMB uidx_tomb

static size_t uidx_hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
	return (size_t)(h ^ (h >> 29));
}

static void uidx_insert(struct mm_md_uidx *x, const char *name, size_t bl, uint32_t uid)
{
	size_t m = x->cap - 1;
	for (size_t i = uidx_hash(name, bl) & m;; i = (i + 1) & m)
		if (!x->t[i].name || x->t[i].name == UIDX_TOMB) {
			if (!x->t[i].name)
				x->used++;
			x->t[i] = (struct uidx_slot){ name, bl, uid };
			return;
		}
}

/* (Re)builds the index from the entries; false when out of memory (lookups then
 * scan). */
static bool uidx_rebuild(struct mm_md_uidlist *ul, size_t want)
{
	size_t cap = 64;
	while (cap < 2 * want)
		cap *= 2;
	struct mm_md_uidx *x = ul->idx;
	if (!x && !(x = ul->idx = calloc(1, sizeof(*x))))
		return false;
	struct uidx_slot *t = calloc(cap, sizeof(*t));
	if (!t) {
		free(x->t);
		free(x);
		ul->idx = NULL;
		return false;
	}
	free(x->t);
	x->t = t;
	x->cap = cap;
	x->used = 0;
	for (size_t i = 0; i < ul->n; i++)
		uidx_insert(x, ul->v[i].name, ul->v[i].base_len, ul->v[i].uid);
	return true;
}

static void uidx_add(struct mm_md_uidlist *ul, const struct mm_md_uident *e)
{
	if (!ul->idx || 2 * (ul->idx->used + 1) > ul->idx->cap)
		uidx_rebuild(ul, ul->n + 1); /* includes e when it is in v already */
	else
		uidx_insert(ul->idx, e->name, e->base_len, e->uid);
}

static struct uidx_slot *uidx_find(const struct mm_md_uidx *x, const char *base, size_t bl)
{
	size_t m = x->cap - 1;
	for (size_t i = uidx_hash(base, bl) & m;; i = (i + 1) & m) {
		struct uidx_slot *sl = &x->t[i];
		if (!sl->name)
			return NULL;
		if (sl->name != UIDX_TOMB && sl->bl == bl && memcmp(sl->name, base, bl) == 0)
			return sl;
	}
}

void mm_md_uidlist_clear(struct mm_md_uidlist *ul)
{
	if (ul->idx) {
		free(ul->idx->t);
		free(ul->idx);
	}
	for (size_t i = 0; i < ul->n; i++) {
		free(ul->v[i].ext);
		free(ul->v[i].name);
	}
	free(ul->v);
	free(ul->hdr_rest);
	memset(ul, 0, sizeof(*ul));
	ul->next_uid = 1;
}

static size_t name_base_len(const char *name)
{
	return strcspn(name, ":");
}

/* Appends a record without order checks (load) */
static int uid_push(struct mm_md_uidlist *ul, uint32_t uid, const char *ext, size_t el,
                    const char *name, size_t nl)
{
	if (ul->n == ul->cap) {
		size_t nc = ul->cap ? ul->cap * 2 : 64;
		struct mm_md_uident *nv = realloc(ul->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		ul->v = nv;
		ul->cap = nc;
	}
	struct mm_md_uident *e = &ul->v[ul->n];
	e->uid = uid;
	e->ext = strndup(ext, el);
	e->name = strndup(name, nl);
	if (!e->ext || !e->name) {
		free(e->ext);
		free(e->name);
		return -ENOMEM;
	}
	e->base_len = name_base_len(e->name);
	ul->n++;
	uidx_add(ul, e);
	return 0;
}

int mm_md_uidlist_parse(char *text, struct mm_md_uidlist *ul)
{
	memset(ul, 0, sizeof(*ul));
	ul->next_uid = 1;
	ul->exists = true;
	int r;
	char *save = NULL;
	char *line = strtok_r(text, "\n", &save);
	bool bad = false, v1 = false;
	if (line && strncmp(line, "1 ", 2) == 0) {
		/* version 1 (Dovecot 1.0, Courier's courierimapuiddb): "1 <uidvalidity>
		 * <nextuid>", records "<uid> <name>".  Dovecot 2.3 still reads it
		 * (maildir_uidlist_read_header) and keeps its UIDs; it is written back as
		 * version 3, as Dovecot does. */
		unsigned long v, nx;
		char *end, *end2;
		errno = 0;
		v = strtoul(line + 2, &end, 10);
		nx = end > line + 2 && *end == ' ' ? strtoul(end + 1, &end2, 10) : 0;
		if (errno || end == line + 2 || *end != ' ' || end2 == end + 1 || !v || !nx || v > UINT32_MAX ||
		    nx > UINT32_MAX) {
			bad = true;
		} else {
			v1 = true;
			ul->uidvalidity = (uint32_t)v;
			ul->next_uid = (uint32_t)nx;
			if (!(ul->hdr_rest = strdup("")))
				return -ENOMEM;
		}
	} else if (!line || strncmp(line, "3 ", 2) != 0) {
		bad = true;
	} else {
		/* header fields: V<uidvalidity> N<next> and others kept verbatim */
		char rest[1024];
		size_t rl = 0;
		rest[0] = 0;
		char *fs = NULL;
		for (char *f = strtok_r(line + 2, " ", &fs); f; f = strtok_r(NULL, " ", &fs)) {
			char *end;
			errno = 0;
			if (f[0] == 'V' || f[0] == 'N') {
				unsigned long v = strtoul(f + 1, &end, 10);
				if (end == f + 1 || *end || errno || v > UINT32_MAX) {
					bad = true;
					continue;
				}
				if (f[0] == 'V')
					ul->uidvalidity = (uint32_t)v;
				else
					ul->next_uid = v ? (uint32_t)v : 1;
				continue;
			}
			size_t fl = strlen(f);
			if (rl + fl + 2 < sizeof rest) {
				if (rl)
					rest[rl++] = ' ';
				memcpy(rest + rl, f, fl + 1);
				rl += fl;
			}
		}
		if (!(ul->hdr_rest = strdup(rest)))
			return -ENOMEM;
	}
	uint32_t prev = 0;
	for (line = bad ? NULL : strtok_r(NULL, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *end;
		errno = 0;
		unsigned long uid = strtoul(line, &end, 10);
		const char *ext = end;
		while (*ext == ' ')
			ext++;
		/* version 3: "<uid>[ <ext>] :<name>"; version 1: "<uid> <name>" */
		const char *fn = v1 ? NULL : strstr(end, " :");
		const char *nm = v1 ? (*ext ? ext : NULL) : fn ? fn + 2 : NULL;
		/* a record without the space after its UID ("5:x :y") is damaged, and would
		 * not be written back as it was read */
		if (end == line || *end != ' ' || errno || uid == 0 || uid > UINT32_MAX || !nm || uid <= prev) {
			bad = true;
			continue;
		}
		prev = (uint32_t)uid;
		size_t el = !v1 && fn > ext ? (size_t)(fn - ext) : 0;
		size_t nl = strcspn(nm, "\r");
		if ((r = uid_push(ul, (uint32_t)uid, ext, el, nm, nl)) < 0)
			return r;
		if (uid >= ul->next_uid)
			ul->next_uid = (uint32_t)uid + 1 ? (uint32_t)uid + 1 : UINT32_MAX;
	}
	return bad ? -EBADMSG : 0;
}

int mm_md_uidlist_load(const char *folder_dir, struct mm_md_uidlist *ul)
{
	memset(ul, 0, sizeof(*ul));
	ul->next_uid = 1;
	char *d;
	int r = read_text_in(folder_dir, "dovecot-uidlist", &d);
	if (r <= 0)
		return r;
	r = mm_md_uidlist_parse(d, ul);
	free(d);
	return r;
}

uint32_t mm_md_uidlist_find(const struct mm_md_uidlist *ul, const char *base, size_t base_len)
{
	if (ul->idx) {
		const struct uidx_slot *sl = uidx_find(ul->idx, base, base_len);
		return sl ? sl->uid : 0;
	}
	for (size_t i = 0; i < ul->n; i++)
		if (ul->v[i].base_len == base_len && memcmp(ul->v[i].name, base, base_len) == 0)
			return ul->v[i].uid;
	return 0;
}

ssize_t mm_md_uidlist_index(const struct mm_md_uidlist *ul, uint32_t uid)
{
	size_t lo = 0, hi = ul->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ul->v[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < ul->n && ul->v[lo].uid == uid ? (ssize_t)lo : -1;
}

int mm_md_uidlist_add(struct mm_md_uidlist *ul, uint32_t uid, const char *name)
{
	if (!uid || !name[0] || has_ctl(name))
		return -EINVAL;
	if (mm_md_uidlist_index(ul, uid) >= 0)
		return -EEXIST;
	size_t bl = name_base_len(name);
	if (mm_md_uidlist_find(ul, name, bl))
		return -EINVAL;
	int r = uid_push(ul, uid, "", 0, name, strlen(name));
	if (r < 0)
		return r;
	/* move it into place (records stay in ascending UID order) */
	struct mm_md_uident e = ul->v[ul->n - 1];
	size_t at = ul->n - 1;
	while (at > 0 && ul->v[at - 1].uid > uid) {
		ul->v[at] = ul->v[at - 1];
		at--;
	}
	ul->v[at] = e;
	if (uid >= ul->next_uid)
		ul->next_uid = uid + 1 ? uid + 1 : UINT32_MAX;
	return 0;
}

void mm_md_uidlist_remove(struct mm_md_uidlist *ul, uint32_t uid)
{
	ssize_t i = mm_md_uidlist_index(ul, uid);
	if (i < 0)
		return;
	if (ul->idx) {
		struct uidx_slot *sl = uidx_find(ul->idx, ul->v[i].name, ul->v[i].base_len);
		if (sl && sl->name == ul->v[i].name)
			sl->name = UIDX_TOMB;
		else { /* not where expected (never seen): drop the index, lookups scan */
			free(ul->idx->t);
			free(ul->idx);
			ul->idx = NULL;
		}
	}
	free(ul->v[i].ext);
	free(ul->v[i].name);
	memmove(&ul->v[i], &ul->v[i + 1], (ul->n - (size_t)i - 1) * sizeof(ul->v[0]));
	ul->n--;
}

size_t mm_md_uidlist_remove_many(struct mm_md_uidlist *ul, const uint32_t *uids, size_t n)
{
	size_t out = 0, k = 0;
	for (size_t i = 0; i < ul->n; i++) {
		while (k < n && uids[k] < ul->v[i].uid)
			k++;
		if (k < n && uids[k] == ul->v[i].uid) {
			free(ul->v[i].ext);
			free(ul->v[i].name);
			continue;
		}
		ul->v[out++] = ul->v[i];
	}
	size_t removed = ul->n - out;
	ul->n = out;
	if (removed && ul->idx)
		(void)uidx_rebuild(ul, ul->n); /* false: out of memory, the index is dropped and lookups scan */
	return removed;
}

int mm_md_uidlist_format(const struct mm_md_uidlist *ul, char **text_r, size_t *len_r)
{
	*text_r = NULL;
	*len_r = 0;
	if (!ul->uidvalidity)
		return -EINVAL;
	size_t cap = 128 + (ul->hdr_rest ? strlen(ul->hdr_rest) : 0), len = 0;
	for (size_t i = 0; i < ul->n; i++)
		cap += 16 + strlen(ul->v[i].ext) + strlen(ul->v[i].name);
	char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	len += (size_t)snprintf(buf, cap, "3 V%u N%u%s%s\n", ul->uidvalidity, ul->next_uid,
	                        ul->hdr_rest && ul->hdr_rest[0] ? " " : "", ul->hdr_rest ? ul->hdr_rest : "");
	for (size_t i = 0; i < ul->n; i++)
		len += (size_t)snprintf(buf + len, cap - len, "%u%s%s :%s\n", ul->v[i].uid,
		                        ul->v[i].ext[0] ? " " : "", ul->v[i].ext, ul->v[i].name);
	*text_r = buf;
	*len_r = len;
	return 0;
}

int mm_md_uidlist_save(const char *folder_dir, const struct mm_md_uidlist *ul)
{
	char *buf;
	size_t len;
	int r = mm_md_uidlist_format(ul, &buf, &len);
	if (r < 0)
		return r;
	struct mm_md_owner o;
	r = mm_md_owner_of(folder_dir, &o);
	r = replace_file(folder_dir, "dovecot-uidlist.mailmesh", "dovecot-uidlist", buf, len, r == 0 ? &o : NULL);
	if (r == -EEXIST) { /* a temp file left by a crash of ours (we hold the lock) */
		char tp[PATHBUF];
		if (path2(tp, sizeof tp, folder_dir, "dovecot-uidlist.mailmesh") >= 0)
			unlink(tp);
		r = replace_file(folder_dir, "dovecot-uidlist.mailmesh", "dovecot-uidlist", buf, len,
		                 mm_md_owner_of(folder_dir, &o) == 0 ? &o : NULL);
	}
	free(buf);
	return r;
}
