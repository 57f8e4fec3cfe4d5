/*
 * config.h — the daemon's configuration: the `key = value` file (`#` comments; parsed
 * with inih), plus what it points to: the private key, the optional cluster pre-shared
 * key and the peers file.  docs/configuration.md describes every key.
 *
 * mm_config_load() does all of it and checks that it fits together, so the daemon and
 * `mailmesh check-config` see exactly the same thing.  Relative paths in the file are
 * taken relative to the directory of the config file; every path in a loaded
 * struct mm_config is absolute.
 */
#ifndef MM_CONFIG_H
#define MM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "node/log.h"
#include "proto/peers.h"

#define MM_CONFIG_ERR_MAX 512 /* a good size for the err buffer of mm_config_load() */

/* Defaults of the optional keys. */
#define MM_DEFAULT_MAIL_LOCATION "/var/mail/vhosts/%d/%n"
#define MM_DEFAULT_STATE_DIR "/var/lib/mailmesh"
#define MM_DEFAULT_GOSSIP_INTERVAL_MS 200
#define MM_DEFAULT_GC_GRACE_MS (30ULL * 24 * 3600 * 1000)
#define MM_DEFAULT_GC_MAX_MS (180ULL * 24 * 3600 * 1000)
#define MM_DEFAULT_MAX_SKEW_MS (60ULL * 1000)

/* state_max_size's default: about 12 million messages at the 1.4 KB a message
 * state.mdb holds (measured with 100,000; docs/configuration.md). */
#define MM_STATE_MAX_BYTES (16ULL << 30)

struct mm_config {
	char *path;            /* the config file, absolute */

	/* keys of the config file */
	char *name;            /* this node's name (as in the peers file) */
	char *listen_host;     /* address to bind, TCP and UDP (IPv6 without brackets) */
	uint16_t listen_port;
	char *private_key_path;
	char *peers_path;
	char *mail_location;   /* template as written ([maildir:]PATH[:OPTIONS], %d %n %u %%),
	                        * a relative PATH made absolute: give it to mm_mailloc_new() */
	unsigned mail_location_line; /* its line in the config file, for messages */
	char *state_dir;
	uint32_t gossip_interval_ms;
	enum mm_log_level log_level;
	char *control_socket;  /* default <state_dir>/control.sock */
	char *user;            /* NULL = don't change user */
	char *group;           /* NULL = the user's primary group (or don't change) */
	bool drop_privileges;  /* true if `user` or `group` was given */
	uid_t uid;             /* resolved `user` (valid if user != NULL) */
	gid_t gid;             /* resolved `group`, else the user's primary group */
	char *cluster_psk_path; /* NULL = no pre-shared key */
	uint32_t push_fanout;  /* 0 = push to all peers */
	uint64_t gc_grace_ms;  /* tombstone grace period */
	uint64_t gc_max_ms;    /* how long tombstones wait for a peer not in sync (>= gc_grace_ms) */
	uint64_t max_skew_ms;  /* clock skew tolerated in remote stamps */
	bool imap_uids;        /* replicate IMAP UIDs and UIDVALIDITY (default yes) */
	size_t file_cache;     /* file index entries kept in memory (mm_store_set_file_cache) */
	char *quota_ignore;    /* folders Dovecot's quota does not count, as written (comma-
	                        * separated Maildir++ names; NULL = none): mm_store_set_quota_ignore */
	uint64_t state_max_bytes; /* the most state.mdb may grow to (LMDB's map size) */

	/* loaded from the files above */
	uint8_t private_key[32];
	uint8_t public_key[32];
	uint64_t node_id;      /* mm_node_id(public_key) */
	bool has_psk;
	uint8_t psk[32];
	struct mm_peers *peers;     /* every line of the peers file, own line included */
	const struct mm_peer *self; /* the peers entry with our public key, or NULL */
};

/* Loads the config file at `path`, then its private key (with the permission check),
 * the cluster PSK if any, and the peers file; resolves user/group; checks that this
 * node's line in the peers file, if any, has our name and key (and that no other line
 * uses our name).  On success returns 0 and fills *cfg_r (which the caller owns and
 * must release with mm_config_free()).  On failure returns a negative errno, leaves
 * *cfg_r zeroed (nothing to free; freeing is harmless) and writes into err (errlen
 * bytes; MM_CONFIG_ERR_MAX is enough) one line:
 *   "FILE:LINE: what is wrong and what to do"  for a bad line of the config or peers file
 *   "FILE: what is wrong and what to do"       for a missing key, unreadable file, bad key file
 * -EINVAL for content errors, -EPERM for a key file readable by others, -ENOENT etc. for
 * files that cannot be read, -ENOMEM. */
int mm_config_load(const char *path, struct mm_config *cfg_r, char *err, size_t errlen);

/* Reads cfg's peers file again (cfg->peers_path) and makes the same checks as
 * mm_config_load() against cfg's name and key: what the daemon does on SIGHUP.  On
 * success returns 0, *peers_r (the caller's, mm_peers_free()) and *self_r (our line in
 * it, or NULL).  On failure returns a negative errno as mm_config_load() does, writes
 * err and leaves *peers_r and *self_r unchanged; cfg is never modified. */
int mm_config_peers_load(const struct mm_config *cfg, struct mm_peers **peers_r, const struct mm_peer **self_r,
                         char *err, size_t errlen);

/* Parses cfg's config file (cfg->path) again into *new_r, settings only, as
 * mm_config_parse() does (no key, PSK or peers file is read: a daemon that dropped its
 * privileges may no longer read its private key).  Same returns as mm_config_parse();
 * *new_r is the caller's to mm_config_free() either way. */
int mm_config_reread(const struct mm_config *cfg, struct mm_config *new_r, char *err, size_t errlen);

/* The settings that differ between a and b and that a running daemon takes only at a
 * restart (every key but log_level): how many, and their names, comma-separated, in
 * out (cap bytes, truncated to fit). */
size_t mm_config_restart_keys(const struct mm_config *a, const struct mm_config *b, char *out, size_t cap);

/* Parses a config held in memory as if it were the file `path` (which names the file
 * in errors and anchors relative paths; nothing is read from it).  Sets only the
 * config-file keys and defaults: no key, PSK or peers file is read and user/group are
 * not resolved (uid/gid stay 0).  Same return and error conventions as
 * mm_config_load().  For tests and for tools that only need the settings. */
int mm_config_parse(const char *path, const char *text, size_t len, struct mm_config *cfg_r,
                    char *err, size_t errlen);

/* Checks that mail_location's fixed base (the directories before its first variable:
 * /var/vmail for /var/vmail/%d/%n) is an existing directory.  A typo there, or a disk
 * not mounted where the base itself is the mount, would otherwise have the daemon
 * make a tree of its own that Dovecot never reads and fill it with the peers' mail.
 * Returns 0, or -ENOENT / -ENOTDIR / another negative errno from stat() with one line
 * "FILE:LINE: what is wrong and what to do" in err. */
int mm_config_mail_base_check(const struct mm_config *cfg, char *err, size_t errlen);

/* Frees everything a loaded or parsed config owns, wipes the secrets and zeroes *cfg.
 * NULL-safe; safe on a zeroed struct and to call twice. */
void mm_config_free(struct mm_config *cfg);

/* Parses a duration: a decimal number with an optional suffix ms, s, m, h or d
 * (no suffix = `default_unit_ms` milliseconds per unit).  Returns 0 and sets *ms_r,
 * or -EINVAL (syntax) / -ERANGE (overflow of uint64 milliseconds). */
int mm_duration_parse(const char *s, uint64_t default_unit_ms, uint64_t *ms_r);

#endif
