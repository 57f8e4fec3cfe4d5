/*
 * mailloc.c — mail_location templates (see mailloc.h): parse, expand for a user, and
 * walk the directories to discover users, matching each templated path component
 * against directory entries with a small backtracking matcher.
 */
#include "node/mailloc.h"
#include "node/maildir.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define PATHBUF 4096
#define MAXCOMP 64

enum { V_D = 1, V_N = 2, V_U = 3 };

/* A component is a sequence of tokens: literal bytes (tok = 0, ch) or a variable. */
struct tok {
	int var; /* 0 = literal */
	char ch;
	bool lower; /* %Ld, %Ln, %Lu: Dovecot lowercases the value */
};

struct comp {
	struct tok *toks;
	size_t n;
	bool has_var;
};

struct mm_mailloc {
	struct comp comps[MAXCOMP];
	size_t n;
	bool uses_d;
	bool lower; /* a %L variable: user names hold no capital letter */
};

static bool has_upper(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] >= 'A' && s[i] <= 'Z')
			return true;
	return false;
}

static void set_err(char *err, size_t errlen, const char *msg, const char *tmpl)
{
	if (err && errlen)
		snprintf(err, errlen, "mail_location \"%s\": %s", tmpl, msg);
}

void mm_mailloc_free(struct mm_mailloc **locp)
{
	if (!locp || !*locp)
		return;
	for (size_t i = 0; i < (*locp)->n; i++)
		free((*locp)->comps[i].toks);
	free(*locp);
	*locp = NULL;
}

int mm_mailloc_base(const struct mm_mailloc *loc, char *buf, size_t buflen)
{
	size_t len = 0;
	for (size_t i = 0; i < loc->n && !loc->comps[i].has_var; i++) {
		const struct comp *c = &loc->comps[i];
		if (len + 1 + c->n + 1 > buflen)
			return -ENAMETOOLONG;
		buf[len++] = '/';
		for (size_t j = 0; j < c->n; j++)
			buf[len++] = c->toks[j].ch;
	}
	if (len + 2 > buflen)
		return -ENAMETOOLONG;
	if (!len)
		buf[len++] = '/';
	buf[len] = '\0';
	return (int)len;
}

/* Dovecot's options after the path.  Those that only move Dovecot's own index or
 * change how it lists or names folders leave the files mailmesh reads and writes where
 * it looks for them; the others put INBOX, the folders, dovecot-uidlist,
 * dovecot-keywords or subscriptions elsewhere, where mailmesh would not see them and
 * would write its own copies that Dovecot ignores: refused, not ignored. */
static const char *const opt_ok[] = {"INDEX", "INDEXPVT", "INDEXCACHE", "VOLATILEDIR", "LISTINDEX",
                                     "NO-NOSELECT", "KEEP-NOSELECT", "NO-FS-VALIDATION", "UTF-8",
                                     "BROKENCHAR", "ALTNOCHECK"};
static const struct {
	const char *key;
	const char *why;
} opt_bad[] = {
	{"CONTROL", "moves dovecot-uidlist, dovecot-keywords and subscriptions out of the Maildir"},
	{"INBOX", "puts INBOX outside the Maildir"},
	{"SUBSCRIPTIONS", "renames the subscriptions file"},
	{"DIRNAME", "puts each folder's mail in a subdirectory"},
	{"FULLDIRNAME", "puts each folder's mail in a subdirectory"},
	{"MAILBOXDIR", "puts the folders in a subdirectory"},
	{"ALT", "keeps mail in a second storage"},
	{"ITERINDEX", "lists the folders from INDEX=, which has none for the folders mailmesh makes"},
};

static int options_check(const char *o, const char *tmpl, char *err, size_t errlen)
{
	while (*o == ':') {
		o++;
		if (!*o)
			break; /* a trailing ':', which Dovecot ignores too */
		size_t n = 0; /* the option ends at a ':' that is not "::" (an escaped colon) */
		while (o[n] && !(o[n] == ':' && o[n + 1] != ':'))
			n += o[n] == ':' ? 2 : 1;
		size_t klen = strcspn(o, "=:");
		if (klen > n)
			klen = n;
		char key[32], msg[256];
		snprintf(key, sizeof key, "%.*s", (int)(klen < sizeof key ? klen : sizeof key - 1), o);
		const char *val = klen < n && o[klen] == '=' ? o + klen + 1 : "";
		size_t vlen = klen < n && o[klen] == '=' ? n - klen - 1 : 0;
		bool ok = false;
		for (size_t i = 0; i < sizeof opt_ok / sizeof opt_ok[0]; i++)
			ok |= klen == strlen(opt_ok[i]) && !strncmp(o, opt_ok[i], klen);
		if (klen == 6 && !strncmp(o, "LAYOUT", 6)) {
			ok = vlen == 9 && !strncasecmp(val, "maildir++", 9);
			if (!ok) {
				snprintf(msg, sizeof msg, "LAYOUT=%.*s is not supported: mailmesh reads and writes the "
				         "Maildir++ layout (folders as .Name directories), Dovecot's default; remove the option",
				         (int)(vlen < 40 ? vlen : 40), val);
				set_err(err, errlen, msg, tmpl);
				return -EINVAL;
			}
		}
		for (size_t i = 0; !ok && i < sizeof opt_bad / sizeof opt_bad[0]; i++)
			if (klen == strlen(opt_bad[i].key) && !strncmp(o, opt_bad[i].key, klen)) {
				snprintf(msg, sizeof msg, "%s= is not supported: it %s, where mailmesh does not look; "
				         "remove it (mailmesh follows Dovecot's default there)", key, opt_bad[i].why);
				set_err(err, errlen, msg, tmpl);
				return -EINVAL;
			}
		if (!ok) {
			snprintf(msg, sizeof msg, "unknown option '%s' (accepted: INDEX=, INDEXPVT=, INDEXCACHE=, "
			         "VOLATILEDIR=, LISTINDEX=, NO-NOSELECT, KEEP-NOSELECT, NO-FS-VALIDATION, UTF-8, "
			         "BROKENCHAR=, ALTNOCHECK, LAYOUT=maildir++)", key);
			set_err(err, errlen, msg, tmpl);
			return -EINVAL;
		}
		o += n;
	}
	return 0;
}

int mm_mailloc_new(struct mm_mailloc **loc_r, const char *tmpl, char *err, size_t errlen)
{
	*loc_r = NULL;
	const char *p = tmpl;
	if (strncmp(p, "maildir:", 8) == 0)
		p += 8;
	else if (strchr(p, ':') && p[0] != '/') {
		set_err(err, errlen, "only maildir: locations are supported", tmpl);
		return -EINVAL;
	}
	size_t plen = strcspn(p, ":");
	if (plen == 0 || p[0] != '/') {
		set_err(err, errlen, "the path must be absolute (e.g. maildir:/var/mail/vhosts/%d/%n)", tmpl);
		return -EINVAL;
	}
	int r = options_check(p + plen, tmpl, err, errlen);
	if (r < 0)
		return r;
	struct mm_mailloc *loc = calloc(1, sizeof(*loc));
	if (!loc)
		return -ENOMEM;
	bool has_n = false;
	size_t i = 0;
	while (i < plen) {
		while (i < plen && p[i] == '/')
			i++;
		if (i >= plen)
			break;
		size_t s = i;
		while (i < plen && p[i] != '/')
			i++;
		if (loc->n == MAXCOMP) {
			set_err(err, errlen, "too many path components", tmpl);
			mm_mailloc_free(&loc);
			return -EINVAL;
		}
		struct comp *c = &loc->comps[loc->n++];
		c->toks = calloc(i - s, sizeof(struct tok));
		if (!c->toks) {
			mm_mailloc_free(&loc);
			return -ENOMEM;
		}
		for (size_t j = s; j < i; j++) {
			struct tok t = {0, p[j], false};
			if (p[j] == '%') {
				if (j + 1 >= i) {
					set_err(err, errlen, "a '%' ends a path component", tmpl);
					mm_mailloc_free(&loc);
					return -EINVAL;
				}
				char v = p[++j];
				/* %L: Dovecot lowercases the value, so its directories have no capital
				 * letter: the walk takes no name with one, and expand makes none */
				if (v == 'L' && j + 1 < i && (p[j + 1] == 'd' || p[j + 1] == 'n' || p[j + 1] == 'u')) {
					v = p[++j];
					t.lower = true;
					loc->lower = true;
				}
				if (v == '%')
					t.ch = '%';
				else if (v == 'd')
					t.var = V_D, loc->uses_d = true;
				else if (v == 'n')
					t.var = V_N, has_n = true;
				else if (v == 'u')
					t.var = V_U, has_n = true;
				else {
					set_err(err, errlen, "only %d, %n, %u (also as %Ld, %Ln, %Lu) and %% are supported", tmpl);
					mm_mailloc_free(&loc);
					return -EINVAL;
				}
				if (t.var)
					c->has_var = true;
			}
			c->toks[c->n++] = t;
		}
		if (!c->has_var && c->n <= 2 && c->toks[0].ch == '.' &&
		    (c->n == 1 || c->toks[1].ch == '.')) {
			set_err(err, errlen, "'.' and '..' are not allowed in the path", tmpl);
			mm_mailloc_free(&loc);
			return -EINVAL;
		}
	}
	if (!has_n) {
		set_err(err, errlen, "the path must contain %n or %u to tell users apart", tmpl);
		mm_mailloc_free(&loc);
		return -EINVAL;
	}
	*loc_r = loc;
	return 0;
}

static bool part_ok(const char *s, size_t len)
{
	if (len == 0 || (len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] == '/' || s[i] == 0)
			return false;
	return true;
}

int mm_mailloc_expand(const struct mm_mailloc *loc, const char *user, char *buf, size_t buflen)
{
	const char *slash = strchr(user, '/');
	const char *d = NULL, *n = user;
	size_t dl = 0, nl = strlen(user);
	if (slash) {
		d = user;
		dl = (size_t)(slash - user);
		n = slash + 1;
		nl = strlen(n);
		if (!part_ok(d, dl) || memchr(d, '@', dl))
			return -EINVAL;
	}
	if (!part_ok(n, nl) || memchr(n, '@', nl))
		return -EINVAL;
	if (loc->uses_d && !d)
		return -EINVAL;
	if (loc->lower && has_upper(user, strlen(user)))
		return -EINVAL; /* (Dovecot would look for it in lowercase) */
	size_t o = 0;
#define PUT(ptr, len)                                       \
	do {                                                \
		if (o + (len) + 1 > buflen)                 \
			return -ENAMETOOLONG;               \
		memcpy(buf + o, (ptr), (len));              \
		o += (len);                                 \
	} while (0)
	for (size_t i = 0; i < loc->n; i++) {
		PUT("/", 1);
		const struct comp *c = &loc->comps[i];
		for (size_t j = 0; j < c->n; j++) {
			const struct tok *t = &c->toks[j];
			if (t->var == V_D) {
				PUT(d ? d : "", d ? dl : 0);
			} else if (t->var == V_N) {
				PUT(n, nl);
			} else if (t->var == V_U) {
				PUT(n, nl);
				if (d) {
					PUT("@", 1);
					PUT(d, dl);
				}
			} else {
				PUT(&t->ch, 1);
			}
		}
	}
#undef PUT
	buf[o] = 0;
	return (int)o;
}

/* ---- walk ------------------------------------------------------------------------ */

struct bind {
	char d[256], n[256];
	bool has_d, has_n;
};

struct walk {
	const struct mm_mailloc *loc;
	int (*user_cb)(void *, const char *, const char *);
	int (*dir_cb)(void *, const char *);
	int (*odd_cb)(void *, const char *);
	void *arg;
	int (*pend_cb)(void *, const char *, const char *);
};

static bool bind_var(struct bind *b, int var, const char *s, size_t len)
{
	if (len == 0 || len >= 256 || !part_ok(s, len))
		return false;
	if (var == V_D) {
		if (memchr(s, '@', len))
			return false;
		if (b->has_d)
			return strlen(b->d) == len && memcmp(b->d, s, len) == 0;
		memcpy(b->d, s, len);
		b->d[len] = 0;
		b->has_d = true;
		return true;
	}
	if (var == V_N) {
		if (memchr(s, '@', len))
			return false;
		if (b->has_n)
			return strlen(b->n) == len && memcmp(b->n, s, len) == 0;
		memcpy(b->n, s, len);
		b->n[len] = 0;
		b->has_n = true;
		return true;
	}
	/* %u: n@d (split at the last '@') or n */
	const char *at = NULL;
	for (size_t i = 0; i < len; i++)
		if (s[i] == '@')
			at = s + i;
	if (at) {
		size_t nl = (size_t)(at - s);
		return nl > 0 && bind_var(b, V_N, s, nl) &&
		       bind_var(b, V_D, at + 1, len - nl - 1);
	}
	return bind_var(b, V_N, s, len);
}

/* Matches tokens [ti..] of c against name[ni..]; on success *b holds the bindings. */
static bool match(const struct comp *c, size_t ti, const char *name, size_t ni, size_t nlen,
                  struct bind *b)
{
	if (ti == c->n)
		return ni == nlen;
	const struct tok *t = &c->toks[ti];
	if (!t->var)
		return ni < nlen && name[ni] == t->ch && match(c, ti + 1, name, ni + 1, nlen, b);
	for (size_t l = 1; ni + l <= nlen; l++) {
		struct bind save = *b;
		if ((!t->lower || !has_upper(name + ni, l)) && bind_var(b, t->var, name + ni, l) &&
		    match(c, ti + 1, name, ni + l, nlen, b))
			return true;
		*b = save;
	}
	return false;
}

static int walk_level(struct walk *w, size_t ci, char *path, size_t plen, struct bind *b)
{
	const struct mm_mailloc *loc = w->loc;
	if (ci == loc->n) {
		if (!b->has_n || (loc->uses_d && !b->has_d))
			return 0;
		if (!mm_md_is_maildir(path)) {
			int r = w->pend_cb ? w->pend_cb(w->arg, path, "cur") : 0;
			return r ? r : w->odd_cb ? w->odd_cb(w->arg, path) : 0;
		}
		char user[520];
		if (b->has_d)
			snprintf(user, sizeof user, "%s/%s", b->d, b->n);
		else
			snprintf(user, sizeof user, "%s", b->n);
		return w->user_cb ? w->user_cb(w->arg, user, path) : 0;
	}
	const struct comp *c = &loc->comps[ci];
	if (!c->has_var) {
		if (plen + 1 + c->n + 1 > PATHBUF)
			return 0;
		path[plen] = '/';
		for (size_t j = 0; j < c->n; j++)
			path[plen + 1 + j] = c->toks[j].ch;
		path[plen + 1 + c->n] = 0;
		struct stat st;
		int r = 0;
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			r = walk_level(w, ci + 1, path, plen + 1 + c->n, b);
		} else if (w->pend_cb && plen) {
			/* (e.g. ~/Maildir: a home without one yet, where Dovecot makes it) */
			char name[PATHBUF];
			memcpy(name, path + plen + 1, c->n + 1);
			path[plen] = 0;
			r = w->pend_cb(w->arg, path, name);
		}
		path[plen] = 0;
		return r;
	}
	/* a templated component: the directory above it is where new users appear */
	const char *dirpath = plen ? path : "/";
	if (w->dir_cb) {
		int r = w->dir_cb(w->arg, dirpath);
		if (r)
			return r;
	}
	DIR *d = opendir(dirpath);
	if (!d)
		return w->odd_cb ? w->odd_cb(w->arg, dirpath) : 0;
	struct dirent *e;
	int r = 0;
	while (!r && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		if (e->d_type != DT_DIR && e->d_type != DT_UNKNOWN && e->d_type != DT_LNK)
			continue;
		size_t nl = strlen(e->d_name);
		struct bind nb = *b;
		if (!match(c, 0, e->d_name, 0, nl, &nb))
			continue;
		if (plen + 1 + nl + 1 > PATHBUF)
			continue;
		path[plen] = '/';
		memcpy(path + plen + 1, e->d_name, nl + 1);
		struct stat st;
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
			r = walk_level(w, ci + 1, path, plen + 1 + nl, &nb);
		path[plen] = 0;
	}
	closedir(d);
	return r;
}

int mm_mailloc_walk(const struct mm_mailloc *loc,
                    int (*user_cb)(void *arg, const char *user, const char *path),
                    int (*dir_cb)(void *arg, const char *path),
                    int (*odd_cb)(void *arg, const char *path), void *arg)
{
	return mm_mailloc_walk_watch(loc, user_cb, dir_cb, NULL, odd_cb, arg);
}

int mm_mailloc_walk_watch(const struct mm_mailloc *loc,
                          int (*user_cb)(void *arg, const char *user, const char *path),
                          int (*dir_cb)(void *arg, const char *path),
                          int (*pend_cb)(void *arg, const char *dir, const char *name),
                          int (*odd_cb)(void *arg, const char *path), void *arg)
{
	struct walk w = {loc, user_cb, dir_cb, odd_cb, arg, pend_cb};
	char *path = malloc(PATHBUF);
	if (!path)
		return -ENOMEM;
	path[0] = 0;
	struct bind b;
	memset(&b, 0, sizeof b);
	int r = walk_level(&w, 0, path, 0, &b);
	free(path);
	return r;
}
