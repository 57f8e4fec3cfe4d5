/*
 * mailloc.h — Dovecot-style mail_location templates: expand one for a user, and find
 * the users that exist on disk by walking the template (no userdb needed).
 *
 * Template: "[maildir:]<path>[:OPTION=...]" where <path> is absolute and may use %d
 * (domain), %n (local part), %u (n@d, or n without a domain) and %% (a '%').  Each
 * variable must sit inside one path component (e.g. "/var/mail/vhosts/%d/%n" or
 * "/srv/mail/%u/Maildir").  Dovecot's options after the path are checked: those that
 * leave INBOX, the folders and the control files in the Maildir++ layout where
 * mailmesh looks for them (INDEX=, VOLATILEDIR=, LAYOUT=maildir++ ...) are accepted
 * and otherwise ignored; CONTROL=, INBOX=, LAYOUT=fs and the like, and unknown ones,
 * are refused.
 *
 * User names are mailmesh's: "domain/user" when the user has a domain, "user" without
 * (the CRDT's state key, crdt.h).  A template that uses %d only finds and expands users
 * with a domain; a template with neither %n nor %u is rejected.
 */
#ifndef MM_MAILLOC_H
#define MM_MAILLOC_H

#include <stddef.h>

struct mm_mailloc;

/* Parses a template.  Returns 0 and *loc_r, -EINVAL (with a message in err) for a
 * template that is not an absolute Maildir path with %n or %u or that has an option
 * mailmesh cannot follow, or -ENOMEM. */
int mm_mailloc_new(struct mm_mailloc **loc_r, const char *tmpl, char *err, size_t errlen);
void mm_mailloc_free(struct mm_mailloc **locp);

/* The template's fixed base: its leading path components that hold no variable
 * ("/var/vmail" for /var/vmail/%d/%n, "/" for /%d/%n), into buf.  Returns the length
 * or -ENAMETOOLONG. */
int mm_mailloc_base(const struct mm_mailloc *loc, char *buf, size_t buflen);

/* Maildir path of `user` ("domain/user" or "user") into buf.  Returns the length,
 * -EINVAL for a name the template cannot hold (empty parts, '/' or NUL inside a part,
 * "." or "..", missing domain when %d is used), or -ENAMETOOLONG. */
int mm_mailloc_expand(const struct mm_mailloc *loc, const char *user, char *buf, size_t buflen);

/* Walks the template on disk.  For every directory the walk reads (the fixed prefix
 * and each partly expanded level above the users' Maildirs) calls dir_cb(arg, path)
 * (may be NULL); for every path matching the whole template that is a Maildir (has
 * cur/ or new/) calls user_cb(arg, user, path); for a match that is not a Maildir calls
 * odd_cb(arg, path) (may be NULL).  A callback returning non-zero stops the walk and
 * its value is returned.  Unreadable directories are skipped (reported via odd_cb).
 * Returns 0 or that value. */
int mm_mailloc_walk(const struct mm_mailloc *loc,
                    int (*user_cb)(void *arg, const char *user, const char *path),
                    int (*dir_cb)(void *arg, const char *path),
                    int (*odd_cb)(void *arg, const char *path), void *arg);

/* The same, and pend_cb(arg, dir, name) (may be NULL) for every place where a Maildir
 * may yet appear: a directory `dir` that lacks `name`, the next fixed part of the
 * template (a home without its Maildir yet, for ~/Maildir), and a match that is not a
 * Maildir yet (dir = that match, name "cur": its cur/ or new/ is awaited). */
int mm_mailloc_walk_watch(const struct mm_mailloc *loc,
                          int (*user_cb)(void *arg, const char *user, const char *path),
                          int (*dir_cb)(void *arg, const char *path),
                          int (*pend_cb)(void *arg, const char *dir, const char *name),
                          int (*odd_cb)(void *arg, const char *path), void *arg);

#endif
