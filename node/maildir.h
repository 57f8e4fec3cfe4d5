/*
 * maildir.h — Maildir primitives, as Dovecot writes and reads them: message file names
 * (base, `,S=`/`,W=`, `:2,<letters>`), flag and keyword letters, dovecot-keywords
 * (read, and add a name under Dovecot's lock-and-rename rule), dovecot-uidlist (read),
 * atomic delivery (tmp/ -> fsync -> rename -> directory fsync, mtime = INTERNALDATE),
 * flag renames and unlinks under the uidlist lock, Maildir++ folder directories and the
 * subscriptions file.  Plain POSIX, no crdt/ dependency, no printing: errors are
 * returned as negative errno values and callers log them.
 *
 * Letters: a file's info letters are kept as one 64-bit mask: bit (c - 'A') for an
 * uppercase letter A..Z, bit 26 + (c - 'a') for a lowercase letter a..z.  The system
 * flags D F P R S T are uppercase letters; keywords are lowercase letters whose names
 * dovecot-keywords gives (a = index 0).  Unknown uppercase letters are kept as they are
 * so a rename never drops something another program put there.
 */
#ifndef MM_MAILDIR_H
#define MM_MAILDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MM_MD_KEYWORDS_MAX 26 /* letters a..z */
#define MM_MD_NAME_MAX 255    /* longest file name component */

#define MM_MD_UPPER(c) (UINT64_C(1) << ((c) - 'A'))
#define MM_MD_LOWER(c) (UINT64_C(1) << (26 + ((c) - 'a')))
#define MM_MD_KWBIT(i) (UINT64_C(1) << (26 + (i)))
#define MM_MD_KW_MASK (((UINT64_C(1) << 26) - 1) << 26)

/* A parsed message file name; pointers point into the parsed string. */
struct mm_md_name {
	const char *base;  /* unique part (up to the first ':'), not NUL-terminated */
	size_t base_len;
	bool has_size;     /* ",S=<size>" present in the base */
	uint64_t size;
	bool has_vsize;    /* ",W=<vsize>" present in the base */
	uint64_t vsize;
	bool has_info;     /* ":2," present */
	uint64_t letters;  /* letters after ":2," (see above) */
};

/* Parses a file name found in new/ or cur/, as Dovecot does: the base is the name up
 * to its first ':', the letters are those after the last ':' when it is followed by
 * "2," (up to a further ',', other characters ignored); a name with another info part
 * is a message without letters (has_info false).  Returns 0, or -EINVAL for a name
 * that is not a message file: empty, starting with '.' or ':', containing '/', or
 * longer than MM_MD_NAME_MAX. */
int mm_md_name_parse(const char *name, struct mm_md_name *n_r);

/* Writes `base` + (letters ? ":2," + letters in ASCII order : "") into buf (NUL
 * terminated).  `with_info` forces ":2," even with no letters (files in cur/).
 * Returns the length, or -ENAMETOOLONG if it does not fit in buflen or MM_MD_NAME_MAX. */
int mm_md_name_format(char *buf, size_t buflen, const char *base, size_t base_len,
                      uint64_t letters, bool with_info);

/* System flag bitmask (1 << i for "DFPRST"[i]) <-> letter mask. */
uint64_t mm_md_flags_to_letters(unsigned flags);
unsigned mm_md_letters_to_flags(uint64_t letters);

/* Removes backslash escapes \057 ('/') and \072 (':') that Dovecot puts in hostnames of
 * a base; writes at most buflen-1 bytes + NUL.  Returns the length or -ENAMETOOLONG. */
int mm_md_unescape(const char *in, size_t len, char *buf, size_t buflen);

/* ---- dovecot-keywords ------------------------------------------------------------ */

/* A folder's keyword table: names[i] is the keyword of letter 'a' + i, or NULL. */
struct mm_md_keywords {
	char *names[MM_MD_KEYWORDS_MAX];
};

/* Reads <folder_dir>/dovecot-keywords ("<index> <name>" lines).  A missing file gives
 * an empty table (0).  Lines with a bad index or name are skipped.  Returns 0, -ENOMEM,
 * or another negative errno when the file exists but cannot be read.  The table must
 * be released with mm_md_keywords_clear() (also after an error). */
int mm_md_keywords_read(const char *folder_dir, struct mm_md_keywords *kw);
/* The same for the file's text (NUL-terminated, cut into lines in place; the parsers
 * below work on text alike, so that libFuzzer can feed them any bytes: fuzz_maildir). */
int mm_md_keywords_parse(char *text, struct mm_md_keywords *kw);
void mm_md_keywords_clear(struct mm_md_keywords *kw);

/* Index (0..25) of `name` in the table, without regard to ASCII case as Dovecot
 * (the first such line), or -1. */
int mm_md_keywords_find(const struct mm_md_keywords *kw, const char *name);

/* Makes sure `name` has a letter in <folder_dir>/dovecot-keywords, following Dovecot:
 * with dovecot-uidlist.lock held, re-read the file, take the first free index that is
 * not in `avoid` (bit i = index i: letters a file carries that no line names yet,
 * which Dovecot is about to name), write
 * dovecot-keywords.lock (O_EXCL), fsync, rename it over dovecot-keywords.  `kw` is
 * refreshed from disk.  New files get the mode/owner of folder_dir (minus x bits).
 * Returns the index (0..25), -ENOSPC when all 26 letters are taken, -EINVAL for a
 * name Dovecot could not store (empty, space, control character), -EAGAIN when the
 * lock stays busy, or another negative errno. */
int mm_md_keywords_add(const char *folder_dir, struct mm_md_keywords *kw, const char *name,
                       uint32_t avoid);

/* ---- dovecot-uidlist ----------------------------------------------------------- */

/* Reads <folder_dir>/dovecot-uidlist and calls cb(arg, uid, base, base_len) for each
 * listed file (base = file name up to its ':' info part).  Returns 0 (also when the
 * file does not exist), cb's non-zero value if it stopped, or a negative errno. */
int mm_md_uidlist_read(const char *folder_dir,
                       int (*cb)(void *arg, uint32_t uid, const char *base, size_t base_len),
                       void *arg);
/* The same for the file's text (NUL-terminated, changed in place). */
int mm_md_uidlist_parse_each(char *text,
                             int (*cb)(void *arg, uint32_t uid, const char *base, size_t base_len),
                             void *arg);

/* dovecot-uidlist.lock: Dovecot's dotlock (O_EXCL create), waiting up to
 * timeout_ms and breaking a lock older than 120 s (Dovecot's own stale limit).
 * Returns 0 or -EAGAIN (timeout) or another negative errno. */
int mm_md_uidlist_lock(const char *folder_dir, unsigned timeout_ms);
void mm_md_uidlist_unlock(const char *folder_dir);

/* ---- dovecot-uidlist writing (issue 7: UIDs that agree across nodes) -------------
 * The whole file in memory: header "3 V<uidvalidity> N<nextuid> G<guid> ..." (other
 * header fields kept as they are) and the records in ascending UID order, each with
 * the text Dovecot put between the UID and the file name (e.g. "W1234") kept.
 * Every change goes through load -> edit -> save while the caller holds
 * dovecot-uidlist.lock (mm_md_uidlist_lock), which is what Dovecot itself does. */
struct mm_md_uident {
	uint32_t uid;
	char *ext;  /* fields between the UID and " :" (may be ""), owned */
	char *name; /* file name as listed (base, maybe with ":2,..."), owned */
	size_t base_len; /* length of the base part of name */
};

struct mm_md_uidlist {
	bool exists;          /* the file was there when loaded */
	uint32_t uidvalidity; /* 0 = none in the header */
	uint32_t next_uid;    /* N: UIDs below it were handed out (>= 1) */
	char *hdr_rest;       /* header fields other than V and N, e.g. "G<guid>" (owned) */
	struct mm_md_uident *v;
	size_t n, cap;
	struct mm_md_uidx *idx; /* base name -> UID, kept by maildir.c (owned) */
};

/* Loads <folder_dir>/dovecot-uidlist into ul (initialised here; release with
 * mm_md_uidlist_clear, also after an error).  A missing file gives an empty list with
 * exists = false, next_uid 1.  Returns 0, -EBADMSG for a damaged file (ul then holds
 * the records that could be read): a header that is neither a version 3 one (V or N
 * not a number) nor a version 1 one ("1 <uidvalidity> <nextuid>", records "<uid>
 * <name>", which Dovecot 2.3 still reads and keeps the UIDs of), or a record that is not "<uid>[ <ext>] :<name>" with a UID from
 * 1 to 2^32-1 (a space right after the UID, " :" before the name), or that is not
 * above the one before; -ENOMEM, or another negative errno.  The store gives a folder
 * whose dovecot-uidlist is damaged a new UIDVALIDITY on every node. */
int mm_md_uidlist_load(const char *folder_dir, struct mm_md_uidlist *ul);
/* The same for the file's text (NUL-terminated, changed in place): exists = true. */
int mm_md_uidlist_parse(char *text, struct mm_md_uidlist *ul);
void mm_md_uidlist_clear(struct mm_md_uidlist *ul);

/* UID listed for file base `base` (base_len bytes, no ":2," part), or 0. */
uint32_t mm_md_uidlist_find(const struct mm_md_uidlist *ul, const char *base, size_t base_len);

/* Index of the record with this UID, or -1. */
ssize_t mm_md_uidlist_index(const struct mm_md_uidlist *ul, uint32_t uid);

/* Adds record (uid, name) in UID order and raises next_uid to uid + 1 if below.
 * Returns 0, -EEXIST if uid is listed already (nothing changed), -EINVAL for uid 0,
 * an empty name, a name with a control character (it would not read back the same),
 * or a name whose base is listed already, -ENOMEM. */
int mm_md_uidlist_add(struct mm_md_uidlist *ul, uint32_t uid, const char *name);

/* Removes the record with this UID (no-op when absent).  next_uid is never lowered:
 * Dovecot must never hand the UID out again. */
void mm_md_uidlist_remove(struct mm_md_uidlist *ul, uint32_t uid);

/* Removes the records whose UIDs are in uids[0..n) (ascending; UIDs not listed are
 * ignored) in one pass, however many: removing them one by one would move the rest of
 * the list each time.  next_uid is never lowered.  Returns how many were removed. */
size_t mm_md_uidlist_remove_many(struct mm_md_uidlist *ul, const uint32_t *uids, size_t n);

/* Writes ul as <folder_dir>/dovecot-uidlist (temp file, fsync, rename; the lock stays
 * held by the caller), owner/mode of folder_dir minus x bits.  uidvalidity must be
 * set (else -EINVAL).  0 or negative errno. */
int mm_md_uidlist_save(const char *folder_dir, const struct mm_md_uidlist *ul);
/* The text mm_md_uidlist_save writes: *text_r (caller frees) of *len_r bytes, NUL
 * terminated.  Returns 0, -EINVAL without a uidvalidity, or -ENOMEM.  Parsing it gives
 * the same list back (fuzz_maildir checks that). */
int mm_md_uidlist_format(const struct mm_md_uidlist *ul, char **text_r, size_t *len_r);

/* ---- files ---------------------------------------------------------------------- */

/* Ownership and mode to give created files and directories; uid/gid (uid_t)-1 = keep
 * the creator's. */
struct mm_md_owner {
	uid_t uid;
	gid_t gid;
	mode_t dir_mode;  /* e.g. 0700 */
	mode_t file_mode; /* e.g. 0600 */
};

/* Owner of an existing directory: its uid/gid, its mode for dirs, and that mode without
 * execute bits for files. 0 or negative errno. */
int mm_md_owner_of(const char *dir, struct mm_md_owner *o_r);

/* Creates <folder_dir>/tmp/<base> (O_EXCL, owner/mode applied) for writing.  Returns
 * the fd (>= 0) or a negative errno (-EEXIST if that name exists).  Like
 * mm_md_tmp_seal below, it touches only its arguments and the filesystem: the store
 * calls both from libuv's thread pool (mm_store_body_write_out). */
int mm_md_tmp_open(const char *folder_dir, const char *base, const struct mm_md_owner *o);

/* Finishes a file opened by mm_md_tmp_open: fsync, mtime (and atime) = mtime, close,
 * rename tmp/<base> to <sub>/<name> (sub "new" or "cur"), fsync of <sub>/.  Never
 * replaces an existing file (link + unlink: -EEXIST if the name is taken).  On any
 * failure the tmp file is removed and fd closed.  0 or negative errno. */
int mm_md_tmp_finish(const char *folder_dir, const char *base, int fd, int64_t mtime,
                     const char *sub, const char *name);

/* The same in three steps, for callers that finish many files at once and sync each
 * directory once (the store's batched body path):
 *   seal:  mtime (and atime) = mtime, fdatasync if `sync` (contents and size durable;
 *          a caller that passes false makes them durable by other means, e.g. one
 *          syncfs for many files), close.  fd is closed in any case.
 *   place: move tmp/<base> to <sub>/<name> (never replacing: -EEXIST; a rename with
 *          RENAME_NOREPLACE, or link + unlink where the filesystem has none); tmp/<base>
 *          is removed also on failure; <sub>/ is recreated if it vanished.  No
 *          directory fsync.
 *   sync_sub: fsync of <folder_dir>/<sub>/, which makes the placed names durable.
 * Each returns 0 or negative errno. */
int mm_md_tmp_seal(int fd, int64_t mtime, bool sync);
int mm_md_tmp_place(const char *folder_dir, const char *base, const char *sub, const char *name);

/* For files sealed without sync and closed: tmp_sync fdatasyncs tmp/<base> (opened
 * again by name); syncfs writes back the whole filesystem that holds folder_dir (one
 * pass and one disk cache flush for a batch of files).  0 or negative errno. */
int mm_md_tmp_sync(const char *folder_dir, const char *base);
int mm_md_syncfs(const char *folder_dir);
int mm_md_sync_sub(const char *folder_dir, const char *sub);

/* Convenience: delivers `len` bytes as <sub>/<name> through tmp/<base>. */
int mm_md_deliver(const char *folder_dir, const char *base, const void *data, size_t len,
                  int64_t mtime, const char *sub, const char *name, const struct mm_md_owner *o);

/* Renames <from_sub>/<from> to <to_sub>/<to> in the folder under the uidlist lock
 * (best effort: if the lock cannot be taken within 2 s the rename is done anyway,
 * as Dovecot recovers from it).  0 or negative errno (-ENOENT if the file is gone). */
int mm_md_rename(const char *folder_dir, const char *from_sub, const char *from,
                 const char *to_sub, const char *to);

/* Unlinks <sub>/<name> under the uidlist lock (best effort as above).  0, -ENOENT,
 * or negative errno. */
int mm_md_unlink(const char *folder_dir, const char *sub, const char *name);

/* Takes <sub>/<name> out of the folder as mm_md_unlink does, but by renaming it to the
 * path `keep` (on the same filesystem), so its bytes stay readable there for a while.
 * Where that rename cannot be made (another filesystem, keep's directory missing), the
 * file is unlinked.  1 when kept at `keep`, 0 when unlinked, -ENOENT if the file is
 * gone, or negative errno. */
int mm_md_unlink_keep(const char *folder_dir, const char *sub, const char *name, const char *keep);

/* ---- folders -------------------------------------------------------------------- */

/* Directory of `folder` inside a user's Maildir: the Maildir itself for "INBOX",
 * <maildir>/.<folder> otherwise.  Returns the length or -ENAMETOOLONG / -EINVAL for
 * a folder name that is empty, ".", "..", starts with '.', or contains '/'. */
int mm_md_folder_path(char *buf, size_t buflen, const char *maildir, const char *folder);

/* True when dir holds a cur/ or new/ directory. */
bool mm_md_is_maildir(const char *dir);

/* Splits a config's list of folder names ("Trash, Junk": separated by commas, spaces
 * around each name ignored) and calls cb (may be NULL: only checks) for each.  Returns
 * 0, cb's non-zero value, or -EINVAL with the first name that is not a folder name
 * (mm_md_folder_path's rules, at most MM_MD_NAME_MAX bytes) in *bad_r (size bad_len). */
int mm_md_folder_names_parse(const char *list, int (*cb)(void *arg, const char *folder), void *arg,
                             char *bad_r, size_t bad_len);

/* A folder holding cur/ or new/ but not all of cur/ new/ tmp/ (a delete that raced a
 * delivery, or an rm -rf cut short) gets the missing ones back, with the folder's
 * owner and mode: Dovecot and clients see a folder only when it has cur/.  Returns
 * how many it made (0 also when dir is no Maildir at all), or a negative errno. */
int mm_md_folder_repair(const char *dir);

/* Creates the folder with cur/ new/ tmp/ (and the empty `maildirfolder` marker for
 * Maildir++ subfolders), parents of the Maildir too, all with owner o.  Existing
 * parts are kept.  0 or negative errno. */
int mm_md_folder_create(const char *maildir, const char *folder, const struct mm_md_owner *o);

/* The same, and writes `ul` as the new folder's dovecot-uidlist (when it has none)
 * before Dovecot can see the folder: a folder other than INBOX is made under a
 * temporary name and renamed into place (if it appeared meanwhile, that one stands).
 * ul may be NULL.  0 or negative errno. */
struct mm_md_uidlist;
int mm_md_folder_create_listed(const char *maildir, const char *folder, const struct mm_md_owner *o,
                               const struct mm_md_uidlist *ul);

/* True when the folder has a dovecot-uidlist. */
bool mm_md_uidlist_exists(const char *folder_dir);

/* Removes a Maildir++ folder if it holds no message (new/, cur/ and tmp/ empty): its
 * Dovecot files (dovecot*, maildirfolder) then the directories.  Returns 0 when
 * removed or already gone, -ENOTEMPTY when it still holds files (nothing removed),
 * -EINVAL for INBOX, or negative errno. */
int mm_md_folder_remove(const char *maildir, const char *folder);

/* Removes a user's whole Maildir (a user removed from the cluster) if it holds no
 * message and no folder: INBOX's new/, cur/ and tmp/ empty, and besides them only the
 * files Dovecot and mailmesh keep there (dovecot*, subscriptions, maildirsize,
 * maildirfolder).  Those files go first, then the three directories, then the Maildir.
 * Returns 0 when removed or already gone, -ENOTEMPTY with *left_r (size left_len, may
 * be NULL) naming the first entry that keeps it (nothing removed), or negative errno. */
int mm_md_maildir_remove(const char *maildir, char *left_r, size_t left_len);

/* Lists the folders of a Maildir: "INBOX" when the Maildir itself is one, then every
 * `.Name` sub-directory that is a Maildir, as cb(arg, "Name").  Returns 0, cb's
 * non-zero value, or negative errno if the Maildir cannot be read. */
int mm_md_folder_list(const char *maildir, int (*cb)(void *arg, const char *folder), void *arg);

/* ---- subscriptions ------------------------------------------------------------- */

/* Reads <maildir>/subscriptions (Dovecot 2.3 "V\t2" format with tab-separated
 * hierarchy, or the old one-name-a-line format) and calls cb for each folder name
 * (hierarchy joined with '.').  Missing file: 0 with no call.  0, cb's value, or
 * negative errno. */
int mm_md_subs_read(const char *maildir, int (*cb)(void *arg, const char *folder), void *arg);
/* The same for the file's text (NUL-terminated, changed in place). */
int mm_md_subs_parse(char *text, int (*cb)(void *arg, const char *folder), void *arg);

/* subscriptions.lock: the dotlock Dovecot takes to rewrite the subscriptions file
 * (IMAP SUBSCRIBE / UNSUBSCRIBE: it reads the file, writes the new one into the lock,
 * renames it over).  Held around a read of the file and mm_md_subs_write, so that a
 * change Dovecot is making is either read first or waits.  The same waits, stale rule
 * and re-entrancy as mm_md_uidlist_lock: 0, -EAGAIN (timeout), -ENOENT (no Maildir)
 * or another negative errno. */
int mm_md_subs_lock(const char *maildir, unsigned timeout_ms);
void mm_md_subs_unlock(const char *maildir);

/* Writes the subscriptions file (Dovecot 2.3 format) atomically (temp + fsync + rename)
 * with the `n` names given, owner o.  0 or negative errno. */
int mm_md_subs_write(const char *maildir, const char *const *names, size_t n,
                     const struct mm_md_owner *o);

#endif
