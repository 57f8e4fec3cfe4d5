/*
 * control.c — the daemon's local control socket and `mailmesh status`.
 *
 * The socket (config `control_socket`, mode 0600, owned by the daemon's user, so only
 * that user and root can reach it) takes one request line, "status", "status json",
 * "reload", "check LAG_MS", "remove-user USER" or "remove-user-preview USER", and
 * answers with a report, then closes.  The daemon
 * renders every form so the client stays a few lines of plain POSIX.  A reload's answer
 * starts with "ok:" or "error:", which `mailmesh reload` turns into its exit status; a
 * check's with "OK:", "WARNING:" or "CRITICAL:", which `mailmesh check` turns into a
 * monitoring plugin's (0, 1, 2; 3 when it cannot tell).  `mailmesh remove-user` asks
 * for a preview without --yes, and the removal with it.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "node/cmds.h"
#include "node/daemon.h"
#include "node/log.h"
#include "node/store.h"
#include "proto/fetch.h"
#include "proto/sync.h"

#define MAX_USERS_LISTED 1000

/* A control connection is closed this long after it was accepted, answered or not: a
 * client that never sends its line (or never reads the answer) must not hold a file
 * descriptor, nor the daemon's shutdown, for ever. */
#define CTL_CLIENT_TIMEOUT_MS 30000
/* How long `mailmesh status` and `reload` wait for the answer (remove-user waits as
 * long as the removal takes; check has -t). */
#define CTL_WAIT_S 60

struct ctl_client {
	uv_pipe_t h;
	uv_timer_t timer;            /* CTL_CLIENT_TIMEOUT_MS */
	int open;                    /* of h and timer, handles not yet closed */
	struct ctl_client *next, **prevp; /* in d->ctl_clients while not closing */
	struct mm_daemon *d;
	char line[64 + MM_NAME_MAX]; /* (the longest request: "remove-user-preview USER") */
	size_t len;
	char *out;
	size_t out_len, out_cap;
	uv_write_t wr;
};

/* ---- a growable text buffer ------------------------------------------------------ */

static void out_printf(struct ctl_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(struct ctl_client *c, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(c->out ? c->out + c->out_len : NULL, c->out ? c->out_cap - c->out_len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if (c->out && c->out_len + (size_t)n < c->out_cap) {
			c->out_len += (size_t)n;
			return;
		}
		size_t cap = (c->out_cap + (size_t)n + 1) * 2;
		char *p = realloc(c->out, cap);
		if (!p)
			return;
		c->out = p;
		c->out_cap = cap;
	}
}

static void hex(const uint8_t *b, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[b[i] >> 4];
		out[2 * i + 1] = digits[b[i] & 15];
	}
	out[2 * n] = 0;
}

static const char *peer_state_name(enum mm_peer_state s)
{
	switch (s) {
	case MM_PEER_IDLE: return "disconnected";
	case MM_PEER_RESOLVING: return "resolving";
	case MM_PEER_CONNECTING: return "connecting";
	case MM_PEER_HANDSHAKE: return "handshake";
	case MM_PEER_ESTABLISHED: return "connected";
	}
	return "?";
}

/* JSON strings here are names checked by the config and crdt validators (no quotes,
 * backslashes or control characters), but escape anyway: the report must parse. */
static void out_json_str(struct ctl_client *c, const char *s)
{
	out_printf(c, "\"");
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			out_printf(c, "\\%c", ch);
		else if (ch < 0x20)
			out_printf(c, "\\u%04x", ch);
		else
			out_printf(c, "%c", ch);
	}
	out_printf(c, "\"");
}

struct user_walk {
	struct ctl_client *c;
	bool json;
	size_t n;
	uint64_t records;
};

static int user_cb(void *arg, struct mm_user *u)
{
	struct user_walk *w = arg;
	w->records += mm_user_count(u);
	if (w->n++ >= MAX_USERS_LISTED)
		return 0;
	uint8_t root[MM_HASH_LEN];
	char rh[2 * MM_HASH_LEN + 1];
	mm_user_root(u, root);
	hex(root, 16, rh);
	if (w->json) {
		out_printf(w->c, "%s{\"user\":", w->n > 1 ? "," : "");
		out_json_str(w->c, mm_user_name(u));
		out_printf(w->c, ",\"records\":%zu,\"root\":\"%s\",\"removed\":%s}", mm_user_count(u), rh,
		           mm_user_removed(u) ? "true" : "false");
	} else {
		out_printf(w->c, "  %-40s records %-8zu root %s%s\n", mm_user_name(u), mm_user_count(u), rh,
		           mm_user_removed(u) ? "  (removed)" : "");
	}
	return 0;
}

/* "reload": as SIGHUP, answered with what came of it. */
static void reload(struct ctl_client *c)
{
	struct mm_daemon *d = c->d;
	int r = mm_daemon_reload(d);
	if (r == -EAGAIN)
		out_printf(c, "error: the daemon is starting or stopping; try again\n");
	else if (r < 0)
		out_printf(c, "error: %s; the daemon goes on with the %zu peers it had\n", d->reload_error, d->n_peers);
	else
		out_printf(c, "ok: peers file %s taken: %zu peers\n", d->cfg.peers_path, d->n_peers);
	if (r != -EAGAIN && d->config_reload_error[0])
		out_printf(c, "warning: mailmesh.conf was not read again: %s\n", d->config_reload_error);
}

/* "check LAG_MS": one line for monitoring (Nagios/Icinga plugin conventions).  A peer
 * counts as in sync when its roots equalled ours at most lag_ms ago.  CRITICAL: no
 * peer in sync (this node's mail is on no other server), a stale state, a store that
 * cannot keep bodies; WARNING: some peer not in sync, messages without their body here
 * for lag_ms and more (this server's IMAP does not show them), a reload refused; else
 * OK. */
/* Appends "; "-separated findings to a check's buffer (cut short if it is full: the
 * level is decided all the same). */
static void finding_add(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void finding_add(char *buf, size_t cap, const char *fmt, ...)
{
	size_t l = strlen(buf);
	if (l && l + 2 < cap) {
		memcpy(buf + l, "; ", 3);
		l += 2;
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + l, cap - l, fmt, ap);
	va_end(ap);
}

static void check(struct ctl_client *c, uint64_t lag_ms)
{
	struct mm_daemon *d = c->d;
	uint64_t now = mm_daemon_now();
	char crit[512] = "", warn[1024] = "";
	size_t ok = 0;
	uint64_t newest = 0;
	for (size_t i = 0; i < d->n_peers; i++) {
		const struct mm_dpeer *p = d->peers[i];
		uint64_t last = mm_peer_synced_ms(p);
		if (last && last + lag_ms >= now) {
			ok++;
			newest = last > newest ? last : newest;
			continue;
		}
		if (last)
			finding_add(warn, sizeof warn, "peer %s not in sync for %llu s", p->conf->name,
			            (unsigned long long)((now - last) / 1000));
		else
			finding_add(warn, sizeof warn, "peer %s never in sync", p->conf->name);
	}
	uint64_t last_sync;
	if (mm_daemon_stale(d, &last_sync))
		snprintf(crit, sizeof crit, "stale: in sync with no peer for %llu s, beyond gc_max (docs/operations.md)",
		         (unsigned long long)((now - last_sync) / 1000));
	else if (d->store_err)
		snprintf(crit, sizeof crit, "the store cannot keep received bodies: %s", strerror(-d->store_err));
	else if (!d->n_peers)
		snprintf(crit, sizeof crit, "no peer in the peers file: this node's mail is on no other server");
	else if (!ok)
		snprintf(crit, sizeof crit, "no peer in sync within %llu s", (unsigned long long)(lag_ms / 1000));
	size_t missing = mm_store_missing_count(d->store);
	if (missing && d->missing_since_ms && d->missing_since_ms + lag_ms <= now)
		finding_add(warn, sizeof warn, "%zu messages missing their body here, some for %llu s", missing,
		            (unsigned long long)((now - d->missing_since_ms) / 1000));
	if (d->reload_error[0] || d->config_reload_error[0])
		finding_add(warn, sizeof warn, "the last reload was refused (mailmesh status says why)");
	const char *level = crit[0] ? "CRITICAL" : warn[0] ? "WARNING" : "OK";
	out_printf(c, "%s: %zu of %zu peers in sync", level, ok, d->n_peers);
	if (ok)
		out_printf(c, " (the last %.1f s ago)", now > newest ? (double)(now - newest) / 1000.0 : 0.0);
	out_printf(c, ", users: %zu, messages missing a body: %zu", mm_state_user_count(d->state), missing);
	if (crit[0])
		out_printf(c, "; %s", crit);
	if (warn[0])
		out_printf(c, "; %s", warn);
	out_printf(c, " | peers_in_sync=%zu;;;0;%zu missing_bodies=%zu\n", ok, d->n_peers, missing);
}

static void render(struct ctl_client *c, bool json)
{
	struct mm_daemon *d = c->d;
	uint64_t now = mm_daemon_now();
	uint8_t root[MM_HASH_LEN];
	char rh[2 * MM_HASH_LEN + 1];
	mm_state_root(d->state, root);
	hex(root, MM_HASH_LEN, rh);
	struct mm_fetch_stats fs;
	mm_fetch_get_stats(d->fetch, &fs);
	size_t missing = mm_store_missing_count(d->store);
	uint64_t commits = mm_store_commits(d->store);
	/* fetching paused because the store could not keep bodies (bodies.c) */
	uint64_t paused = d->store_hold_until > now ? d->store_hold_until - now : 0;
	const char *why = d->store_err ? strerror(-d->store_err) : "";

	if (json) {
		out_printf(c, "{\"name\":");
		out_json_str(c, d->cfg.name);
		out_printf(c, ",\"node_id\":\"%016llx\",\"listen\":", (unsigned long long)d->cfg.node_id);
		out_json_str(c, d->cfg.listen_host);
		out_printf(c, ",\"port\":%u,\"uptime_ms\":%llu,\"root\":\"%s\",\"users\":%zu,"
		           "\"missing_bodies\":%zu,\"fetching\":%llu,\"fetching_bytes\":%llu,"
		           "\"local_changes\":%llu,\"remote_changes\":%llu,\"state_commits\":%llu,"
		           "\"uid_authority\":%s,\"fetch_paused_ms\":%llu,\"store_error\":",
		           d->cfg.listen_port, (unsigned long long)(now - d->started_ms), rh,
		           mm_state_user_count(d->state), missing, (unsigned long long)fs.wanted,
		           (unsigned long long)fs.inflight_bytes, (unsigned long long)d->local_changes,
		           (unsigned long long)d->remote_changes, (unsigned long long)commits,
		           d->uid_authority ? "true" : "false", (unsigned long long)paused);
		out_json_str(c, why);
		out_printf(c, ",\"peers_reloads\":%llu,\"peers_reload_error\":", (unsigned long long)d->reloads);
		out_json_str(c, d->reload_error);
		out_printf(c, ",\"config_reload_error\":");
		out_json_str(c, d->config_reload_error);
		uint64_t last_sync;
		bool stale = mm_daemon_stale(d, &last_sync);
		out_printf(c, ",\"stale\":%s,\"accept_stale\":%s,\"peers\":[", stale ? "true" : "false",
		           d->accept_stale ? "true" : "false");
	} else {
		out_printf(c, "node %s (id %016llx) listening on %s:%u, up %llus\n", d->cfg.name,
		           (unsigned long long)d->cfg.node_id, d->cfg.listen_host, d->cfg.listen_port,
		           (unsigned long long)((now - d->started_ms) / 1000));
		out_printf(c, "root %s\nusers %zu, messages missing a body here %zu (fetching %llu, %llu bytes)\n",
		           rh, mm_state_user_count(d->state), missing, (unsigned long long)fs.wanted,
		           (unsigned long long)fs.inflight_bytes);
		out_printf(c, "local changes %llu, remote changes %llu, state database commits %llu\n",
		           (unsigned long long)d->local_changes, (unsigned long long)d->remote_changes,
		           (unsigned long long)commits);
		if (d->uid_authority)
			out_printf(c, "this node is the IMAP UID authority (it decides UID moves)\n");
		uint64_t last_sync;
		if (mm_daemon_stale(d, &last_sync))
			out_printf(c, "STALE: in sync with no peer for %llu s, longer than gc_max allows (%s); "
			           "docs/operations.md\n", (unsigned long long)((now - last_sync) / 1000),
			           d->accept_stale ? "running with --accept-stale" : "it stops at its next hourly check");
		if (paused)
			out_printf(c, "fetching bodies paused for %llu s more: the store cannot keep them (%s)\n",
			           (unsigned long long)(paused + 999) / 1000, why);
		else if (d->store_err)
			out_printf(c, "the store could not keep bodies (%s): fetching them again\n", why);
		if (d->config_reload_error[0])
			out_printf(c, "at the last reload mailmesh.conf could not be read or parsed, its settings are kept: %s\n",
			           d->config_reload_error);
		if (d->reload_error[0])
			out_printf(c, "the last reload of the peers file failed, the peers before it are kept: %s\n",
			           d->reload_error);
		out_printf(c, "peers:\n");
	}
	for (size_t i = 0; i < d->n_peers; i++) {
		struct mm_dpeer *p = d->peers[i];
		const struct mm_sync_stats *st = mm_sync_stats(p->sync);
		char ph[2 * MM_HASH_LEN + 1];
		hex(st->peer_root, MM_HASH_LEN, ph);
		uint64_t synced = mm_peer_synced_ms(p); /* (also from before a restart) */
		long long ago = synced ? (long long)(now - synced) : -1;
		bool in_sync = st->roots_equal && !memcmp(st->peer_root, root, MM_HASH_LEN);
		uint64_t bound = st->peer_gc_bound_ms ? st->peer_gc_bound_ms : p->gc.bound_ms;
		uint64_t members = st->peer_gc_bound_ms ? st->peer_gc_members : p->gc.members;
		long long bound_ago = !bound ? -1 : bound < now ? (long long)(now - bound) : 0;
		if (json) {
			out_printf(c, "%s{\"name\":", i ? "," : "");
			out_json_str(c, p->conf->name);
			out_printf(c, ",\"address\":");
			out_json_str(c, p->conf->host);
			out_printf(c, ",\"port\":%u,\"state\":\"%s\",\"connected\":%s,\"in_sync\":%s,"
			           "\"last_sync_ms_ago\":%lld,\"peer_root\":\"%s\",\"last_differences\":%llu,"
			           "\"behind_records\":%llu,\"behind_bytes\":%llu,"
			           "\"records_in\":%llu,\"records_out\":%llu,\"bodies_in\":%llu,\"bodies_out\":%llu,"
			           "\"bytes_in\":%llu,\"bytes_out\":%llu,\"rounds\":%llu,\"connects\":%llu,"
			           "\"protocol_errors\":%llu,\"later_messages\":%llu,"
			           "\"gc_bound_ms_ago\":%lld,\"gc_same_peers\":%s}",
			           p->conf->port, peer_state_name(p->state),
			           p->state == MM_PEER_ESTABLISHED ? "true" : "false", in_sync ? "true" : "false",
			           ago, ph, (unsigned long long)st->last_differences,
			           (unsigned long long)(in_sync ? 0 : st->last_differences),
			           (unsigned long long)(in_sync ? 0 : st->last_record_bytes),
			           (unsigned long long)st->records_in, (unsigned long long)st->records_out,
			           (unsigned long long)st->bodies_in, (unsigned long long)st->bodies_out,
			           (unsigned long long)st->bytes_in, (unsigned long long)st->bytes_out,
			           (unsigned long long)st->rounds_done, (unsigned long long)p->connects,
			           (unsigned long long)st->proto_errors, (unsigned long long)st->unknown_in, bound_ago,
			           bound && members == d->gc_members ? "true" : "false");
		} else {
			char agos[32] = "never";
			if (ago >= 0)
				snprintf(agos, sizeof agos, "%lld ms ago", ago);
			out_printf(c, "  %-16s %-13s %s, last sync %s, last round %llu differences (%llu bytes), "
			           "in %llu records/%llu bodies, out %llu records/%llu bodies\n",
			           p->conf->name, peer_state_name(p->state), in_sync ? "in sync" : "differs",
			           agos, (unsigned long long)st->last_differences,
			           (unsigned long long)st->last_record_bytes,
			           (unsigned long long)st->records_in, (unsigned long long)st->bodies_in,
			           (unsigned long long)st->records_out, (unsigned long long)st->bodies_out);
		}
	}
	struct user_walk w = {c, json, 0, 0};
	if (json)
		out_printf(c, "],\"user_roots\":[");
	else
		out_printf(c, "users:\n");
	mm_state_foreach(d->state, NULL, 0, user_cb, &w);
	if (json)
		out_printf(c, "],\"records\":%llu,\"user_roots_truncated\":%s}\n", (unsigned long long)w.records,
		           w.n > MAX_USERS_LISTED ? "true" : "false");
	else if (w.n > MAX_USERS_LISTED)
		out_printf(c, "  ... %zu more users\n", w.n - MAX_USERS_LISTED);
}

/* "remove-user USER" (apply) or "remove-user-preview USER": a user removed from
 * the cluster, starting here (store.h mm_store_user_remove), or what that would do. */
static void remove_user(struct ctl_client *c, const char *user, bool apply)
{
	struct mm_daemon *d = c->d;
	struct mm_store_removal rm = {0};
	int r = mm_store_user_describe(d->store, user, &rm);
	if (r == -ENOENT) {
		/* an address as the admin knows it: the state names users DOMAIN/USER */
		const char *at = strchr(user, '@');
		char alt[2 * MM_NAME_MAX + 2];
		struct mm_store_removal rm2 = {0};
		if (at && at != user && at[1] && !strchr(user, '/') &&
		    snprintf(alt, sizeof alt, "%s/%.*s", at + 1, (int)(at - user), user) < (int)sizeof alt &&
		    (r = mm_store_user_describe(d->store, alt, &rm2)) != -ENOENT && r != -ENOMEM) {
			out_printf(c, "error: this node's state has no user '%s'; the address's user is %s here "
			           "(mailmesh remove-user %s)\n", user, alt, alt);
			return;
		}
		out_printf(c, "error: this node's state has no user '%s' (mailmesh status lists them, as "
		           "DOMAIN/USER or USER as mail_location names them)\n", user);
		return;
	}
	if (r == -EALREADY) {
		out_printf(c, "error: %s was removed from the cluster already (mailmesh status says removed)\n", user);
		return;
	}
	if (r < 0) {
		out_printf(c, "error: %s\n", strerror(-r));
		return;
	}
	if (!apply) {
		out_printf(c, "preview: not removed: this would remove %s from every node: %zu message%s in "
		           "%zu folder%s, and each node's Maildir of it%s.  There is no undo; to do it, add --yes\n",
		           user, rm.messages, rm.messages == 1 ? "" : "s", rm.folders, rm.folders == 1 ? "" : "s",
		           rm.absent ? " (absent here now: removed when back)" : "");
		return;
	}
	struct mm_delta *delta = mm_delta_new();
	if (!delta) {
		out_printf(c, "error: out of memory; nothing was removed\n");
		return;
	}
	r = mm_store_user_remove(d->store, user, mm_daemon_now(), delta, &rm);
	if (r < 0) { /* (not -EALREADY: the description just above said what is left) */
		out_printf(c, "error: %s; what was done is kept, run it again to complete it\n", strerror(-r));
		if (mm_delta_count(delta))
			mm_daemon_commit_soon(d);
		mm_delta_free(&delta);
		return;
	}
	mm_log(MM_LOG_INFO, "user %s removed from the cluster (mailmesh remove-user): %zu message%s in %zu "
	       "folder%s", user, rm.messages, rm.messages == 1 ? "" : "s", rm.folders, rm.folders == 1 ? "" : "s");
	int cr = mm_delta_count(delta) ? mm_store_commit(d->store) : 0;
	if (cr < 0) {
		/* not durable, so not shipped yet: as for a scan's changes, anti-entropy
		 * sends them once a commit works */
		mm_log(MM_LOG_ERROR, "%s: cannot commit the state database: %s; local changes are kept in "
		       "memory and retried", d->cfg.state_dir, strerror(-cr));
		mm_daemon_commit_soon(d);
	} else if (mm_delta_count(delta)) {
		d->local_changes += (uint64_t)mm_delta_count(delta);
		mm_daemon_push(d, delta);
		mm_daemon_push(d, mm_store_commit_delta(d->store));
	}
	out_printf(c, "ok: %s removed: %zu message%s in %zu folder%s expunged on every node as they sync "
	           "(mailmesh status shows when each peer is in sync)%s%s%s\n", user, rm.messages,
	           rm.messages == 1 ? "" : "s", rm.folders, rm.folders == 1 ? "" : "s",
	           rm.absent ? "; its Maildir is not here now and is removed when it is back" : "",
	           cr < 0 ? "; the state database cannot be written now (" : "", cr < 0 ? strerror(-cr) : "");
	if (cr < 0)
		out_printf(c, "): retried, and sent to the peers once written\n");
	mm_delta_free(&delta);
}

/* ---- server ------------------------------------------------------------------- */

static void client_closed(uv_handle_t *h)
{
	struct ctl_client *c = h->data;
	mm_daemon_handle_closed(h);
	if (--c->open > 0)
		return;
	free(c->out);
	free(c);
}

/* Closes both handles of a connection, once (a write cancelled by the close calls
 * back here again). */
static void client_close(struct ctl_client *c)
{
	if (c->prevp == NULL)
		return;
	if (c->next)
		c->next->prevp = c->prevp;
	*c->prevp = c->next;
	c->prevp = NULL;
	c->next = NULL;
	uv_close((uv_handle_t *)&c->timer, client_closed);
	uv_close((uv_handle_t *)&c->h, client_closed);
}

static void client_timeout(uv_timer_t *t)
{
	client_close(t->data);
}

static void client_written(uv_write_t *req, int status)
{
	(void)status;
	client_close(req->data);
}

static void client_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	(void)hint;
	struct ctl_client *c = h->data;
	*buf = uv_buf_init(c->line + c->len, (unsigned)(sizeof c->line - 1 - c->len));
}

static void client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	(void)buf;
	struct ctl_client *c = s->data;
	if (n < 0 || (n == 0 && c->len >= sizeof c->line - 1)) {
		client_close(c);
		return;
	}
	/* a NUL byte would hide the newline after it from strchr: the request is bad */
	bool nul = memchr(c->line + c->len, '\0', (size_t)n) != NULL;
	c->len += (size_t)n;
	c->line[c->len] = 0;
	char *nl = nul ? NULL : strchr(c->line, '\n');
	if (!nl && !nul) {
		if (c->len >= sizeof c->line - 1)
			client_close(c);
		return;
	}
	if (nl)
		*nl = 0;
	uv_read_stop(s);
	if (nul)
		out_printf(c, "error: the request holds a NUL byte; send one line of text, e.g. 'status'\n");
	else if (!strcmp(c->line, "status json"))
		render(c, true);
	else if (!strcmp(c->line, "status"))
		render(c, false);
	else if (!strcmp(c->line, "reload"))
		reload(c);
	else if (!strncmp(c->line, "check ", 6) && strspn(c->line + 6, "0123456789") == strlen(c->line + 6) &&
	         c->line[6] && strlen(c->line + 6) <= 13) /* (100 years of ms) */
		check(c, strtoull(c->line + 6, NULL, 10));
	else if (!strncmp(c->line, "remove-user ", 12) && c->line[12])
		remove_user(c, c->line + 12, true);
	else if (!strncmp(c->line, "remove-user-preview ", 20) && c->line[20])
		remove_user(c, c->line + 20, false);
	else
		out_printf(c, "error: unknown request '%s' (expected 'status', 'status json', 'reload', "
		           "'check LAG_MS' or 'remove-user USER')\n", c->line);
	if (!c->out) {
		client_close(c);
		return;
	}
	/* the answer gets its own 30 s: a request that took long (remove-user of a big
	 * user blocks the loop meanwhile) must not have its answer cut by the timer */
	uv_timer_start(&c->timer, client_timeout, CTL_CLIENT_TIMEOUT_MS, 0);
	uv_buf_t b = uv_buf_init(c->out, (unsigned)c->out_len);
	c->wr.data = c;
	if (uv_write(&c->wr, s, &b, 1, client_written) < 0)
		client_close(c);
}

static void on_control(uv_stream_t *server, int status)
{
	struct mm_daemon *d = server->data;
	if (status < 0 || d->stopping)
		return;
	struct ctl_client *c = calloc(1, sizeof *c);
	if (!c)
		return;
	c->d = d;
	uv_pipe_init(&d->loop, &c->h, 0);
	uv_timer_init(&d->loop, &c->timer);
	d->open_handles += 2;
	c->open = 2;
	c->h.data = c->timer.data = c;
	c->next = d->ctl_clients;
	if (c->next)
		c->next->prevp = &c->next;
	c->prevp = &d->ctl_clients;
	d->ctl_clients = c;
	uv_timer_start(&c->timer, client_timeout, CTL_CLIENT_TIMEOUT_MS, 0);
	if (uv_accept(server, (uv_stream_t *)&c->h) < 0 ||
	    uv_read_start((uv_stream_t *)&c->h, client_alloc, client_read) < 0)
		client_close(c);
}

int mm_control_start(struct mm_daemon *d)
{
	const char *path = d->cfg.control_socket;
	struct stat st;
	/* A socket left by a daemon that died: connectable means one is running. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			mm_log(MM_LOG_ERROR, "%s: control_socket %s exists and is not a socket; remove it or "
			       "choose another path", d->cfg.path, path);
			return -EEXIST;
		}
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);
		struct sockaddr_un a = {.sun_family = AF_UNIX};
		snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
			close(fd);
			mm_log(MM_LOG_ERROR, "%s: another mailmesh daemon is running (control socket %s "
			       "answers); stop it first", d->cfg.path, path);
			return -EADDRINUSE;
		}
		if (fd >= 0)
			close(fd);
		unlink(path);
	}
	uv_pipe_init(&d->loop, &d->control, 0);
	d->open_handles++;
	d->control.data = d;
	mode_t old = umask(0177);
	int r = uv_pipe_bind(&d->control, path);
	umask(old);
	if (r < 0) {
		mm_log(MM_LOG_ERROR, "%s: cannot create control_socket %s: %s", d->cfg.path, path, uv_strerror(r));
		return r;
	}
	chmod(path, 0600);
	if (d->cfg.drop_privileges && geteuid() == 0 && chown(path, d->cfg.uid, d->cfg.gid) < 0)
		mm_log(MM_LOG_WARN, "cannot chown %s: %s", path, strerror(errno));
	if ((r = uv_listen((uv_stream_t *)&d->control, 8, on_control)) < 0) {
		mm_log(MM_LOG_ERROR, "cannot listen on %s: %s", path, uv_strerror(r));
		return r;
	}
	return 0;
}

void mm_control_stop(struct mm_daemon *d)
{
	if (d->control.type == UV_NAMED_PIPE) {
		uv_close((uv_handle_t *)&d->control, mm_daemon_handle_closed);
		unlink(d->cfg.control_socket);
	}
	/* a connection left open (a client that sends nothing) would keep the loop, and
	 * so the daemon, running after SIGTERM */
	while (d->ctl_clients)
		client_close(d->ctl_clients);
}

/* ---- client: mailmesh status, reload, check ------------------------------------ */

/* What a command makes of the daemon's answer (ctl_talk's exit status). */
enum ctl_mode {
	CTL_REPORT, /* status: 0 once it answered */
	CTL_OK,     /* reload: 0 if the answer starts with "ok:", else 1 */
	CTL_CHECK,  /* check: the plugin convention, OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3 */
};

/* A failure of the client's own: for status and reload 1 (runtime) or 2 (usage or
 * configuration), for a check UNKNOWN (3): the daemon's state is not known. */
static int ctl_fail(enum ctl_mode mode, int rc)
{
	return mode == CTL_CHECK ? 3 : rc;
}

/* An error of the client's own: on stderr after "mailmesh: ", or for a check on stdout
 * after "UNKNOWN: " (a monitoring system shows a plugin's stdout). */
static void ctl_error(enum ctl_mode mode, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ctl_error(enum ctl_mode mode, const char *fmt, ...)
{
	FILE *f = mode == CTL_CHECK ? stdout : stderr;
	va_list ap;
	va_start(ap, fmt);
	fputs(mode == CTL_CHECK ? "UNKNOWN: " : "mailmesh: ", f);
	vfprintf(f, fmt, ap);
	va_end(ap);
}

/* A check's answer: printed if it is one (its first word one of the plugin levels),
 * and its exit status; anything else (no answer, a daemon too old to know "check")
 * is UNKNOWN, said as such. */
static int check_answer(const char *ans, size_t len, int read_err)
{
	static const char *const level[] = {"OK: ", "WARNING: ", "CRITICAL: "};
	for (int i = 0; i < 3 && !read_err; i++)
		if (len > strlen(level[i]) && !strncmp(ans, level[i], strlen(level[i]))) {
			fwrite(ans, 1, len, stdout);
			return i;
		}
	const char *nl = memchr(ans, '\n', len);
	int shown = (int)(nl ? (size_t)(nl - ans) : len < 200 ? len : 200);
	if (read_err == EAGAIN || read_err == EWOULDBLOCK)
		printf("UNKNOWN: no answer from the daemon in time (starting, or busy?)\n");
	else if (read_err)
		printf("UNKNOWN: reading the daemon's answer: %s\n", strerror(read_err));
	else if (!len)
		printf("UNKNOWN: the daemon closed the connection without an answer\n");
	else
		printf("UNKNOWN: unexpected answer from the daemon: %.*s\n", shown, ans);
	return 3;
}

/* Sends req to the daemon of config conf and copies its answer to stdout (a check's
 * once whole, see check_answer).  Exit status by mode (above); otherwise 1 if the
 * daemon cannot be reached, 2 for a config that does not parse; a check says
 * CRITICAL (2) for a daemon not running and UNKNOWN (3) for the rest.  timeout_s > 0:
 * at most that long for each of the request and each read of the answer. */
static int ctl_talk(const char *conf, const char *req, enum ctl_mode mode, unsigned timeout_s)
{
	FILE *f = fopen(conf, "r");
	if (!f) {
		ctl_error(mode, "cannot read %s: %s\n", conf, strerror(errno));
		return ctl_fail(mode, 2);
	}
	char *text = NULL;
	size_t cap = 0, len = 0;
	for (;;) {
		if (len + 4096 > cap) {
			char *p = realloc(text, cap = len + 65536);
			if (!p) {
				free(text);
				fclose(f);
				ctl_error(mode, "out of memory\n");
				return ctl_fail(mode, 1);
			}
			text = p;
		}
		size_t n = fread(text + len, 1, cap - len, f);
		if (n == 0)
			break;
		len += n;
	}
	fclose(f);
	struct mm_config cfg;
	char err[MM_CONFIG_ERR_MAX];
	int r = mm_config_parse(conf, text ? text : "", len, &cfg, err, sizeof err);
	free(text);
	if (r < 0) {
		ctl_error(mode, "%s\n", err);
		return ctl_fail(mode, 2);
	}
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(cfg.control_socket) >= sizeof a.sun_path) {
		ctl_error(mode, "%s: control_socket path too long\n", conf);
		mm_config_free(&cfg);
		return ctl_fail(mode, 2);
	}
	strcpy(a.sun_path, cfg.control_socket);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		ctl_error(mode, "cannot make a socket: %s\n", strerror(errno));
		mm_config_free(&cfg);
		return ctl_fail(mode, 1);
	}
	if (timeout_s) {
		struct timeval tv = {.tv_sec = (time_t)timeout_s};
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	}
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		int e = errno;
		bool denied = e == EACCES || e == EPERM, absent = e == ENOENT || e == ECONNREFUSED;
		if (mode == CTL_CHECK && absent) /* (a monitoring plugin's one line, on stdout) */
			printf("CRITICAL: the daemon is not running (%s)\n", cfg.control_socket);
		else if (denied)
			ctl_error(mode, "permission denied on %s: the control socket is for the daemon's user and "
			          "root only; run this as one of them\n", cfg.control_socket);
		else if (absent)
			ctl_error(mode, "the daemon is not running (cannot connect to %s: %s); start it with: "
			          "mailmesh run -c %s\n", cfg.control_socket, strerror(e), conf);
		else
			ctl_error(mode, "cannot connect to %s: %s\n", cfg.control_socket, strerror(e));
		close(fd);
		mm_config_free(&cfg);
		return mode == CTL_CHECK && absent ? 2 : ctl_fail(mode, 1);
	}
	mm_config_free(&cfg);
	if (write(fd, req, strlen(req)) < 0) {
		ctl_error(mode, "cannot talk to the daemon: %s\n", strerror(errno));
		close(fd);
		return ctl_fail(mode, 1);
	}
	ssize_t n = 0;
	if (mode == CTL_CHECK) {
		/* kept whole, then judged: one line for a monitoring system (what does not
		 * fit is not a check's answer) */
		char ans[65536];
		size_t len = 0;
		while (len < sizeof ans && (n = read(fd, ans + len, sizeof ans - len)) > 0)
			len += (size_t)n;
		int read_err = len < sizeof ans && n < 0 ? errno : 0;
		close(fd);
		return check_answer(ans, len, read_err);
	}
	char buf[65536], head[4] = "";
	size_t got = 0; /* the answer's first bytes, however the reads split it */
	while ((n = read(fd, buf, sizeof buf)) > 0) {
		for (ssize_t i = 0; i < n && got < sizeof head - 1; i++)
			head[got++] = buf[i];
		fwrite(buf, 1, (size_t)n, stdout);
	}
	int e = errno;
	close(fd);
	if (n < 0) {
		if (e == EAGAIN || e == EWOULDBLOCK)
			ctl_error(mode, "no answer from the daemon within %u s: it may be busy or stuck; see its log\n",
			          timeout_s);
		else
			ctl_error(mode, "reading the daemon's answer: %s\n", strerror(e));
	}
	return n < 0 || (mode == CTL_OK && strcmp(head, "ok:") != 0) ? 1 : 0;
}

int mm_cmd_status(int argc, char **argv)
{
	const char *conf = NULL;
	bool json = false;
	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
			conf = argv[++i];
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else
			return mm_cmd_usage("status", argv[i], "mailmesh status -c FILE [--json]");
	}
	if (!conf)
		return mm_cmd_usage("status", NULL, "mailmesh status -c FILE [--json]");
	return ctl_talk(conf, json ? "status json\n" : "status\n", CTL_REPORT, CTL_WAIT_S);
}

int mm_cmd_reload(int argc, char **argv)
{
	const char *conf = NULL;
	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc && !conf)
			conf = argv[++i];
		else
			return mm_cmd_usage("reload", argv[i], "mailmesh reload -c FILE");
	}
	if (!conf)
		return mm_cmd_usage("reload", NULL, "mailmesh reload -c FILE");
	return ctl_talk(conf, "reload\n", CTL_OK, CTL_WAIT_S);
}

int mm_cmd_remove_user(int argc, char **argv)
{
	const char *conf = NULL, *user = NULL;
	bool yes = false;
	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
			conf = argv[++i];
		else if (!strcmp(argv[i], "--yes"))
			yes = true;
		else if (!user && argv[i][0] != '-')
			user = argv[i];
		else
			return mm_cmd_usage("remove-user", argv[i], "mailmesh remove-user -c FILE USER [--yes]");
	}
	if (!conf || !user)
		return mm_cmd_usage("remove-user", NULL, "mailmesh remove-user -c FILE USER [--yes]");
	size_t n = strlen(user);
	bool ok = n > 0 && n <= MM_NAME_MAX;
	for (size_t i = 0; i < n && ok; i++)
		ok = (unsigned char)user[i] > ' ' && user[i] != 0x7f;
	if (!ok) {
		fprintf(stderr, "mailmesh: '%s' is not a user name (as mailmesh status lists them: no spaces "
		        "or control characters, at most %d bytes)\n", user, MM_NAME_MAX);
		return 2;
	}
	char req[64 + MM_NAME_MAX];
	snprintf(req, sizeof req, "%s %s\n", yes ? "remove-user" : "remove-user-preview", user);
	return ctl_talk(conf, req, CTL_OK, 0);
}

/* A positive whole number of seconds, at most max; 0 if argument is not one. */
static unsigned long long seconds_arg(const char *arg, unsigned long long max)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(arg, &end, 10);
	return errno || *end || !*arg || arg[0] < '0' || arg[0] > '9' || v > max ? 0 : v;
}

int mm_cmd_check(int argc, char **argv)
{
	const char *conf = NULL;
	unsigned long long lag = 300, timeout = 10;
	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
			conf = argv[++i];
		else if (!strcmp(argv[i], "--max-lag") && i + 1 < argc) {
			if (!(lag = seconds_arg(argv[++i], 100ULL * 365 * 86400))) {
				printf("UNKNOWN: --max-lag takes a number of seconds (1 to 100 years), not '%s'\n", argv[i]);
				return 3;
			}
		} else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
			if (!(timeout = seconds_arg(argv[++i], 3600))) {
				printf("UNKNOWN: -t takes a number of seconds (1 to 3600), not '%s'\n", argv[i]);
				return 3;
			}
		} else {
			/* (a plugin's --help is UNKNOWN too, as the monitoring plugins' are) */
			bool help = !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help");
			printf("UNKNOWN: %s%s%susage: mailmesh check -c FILE [--max-lag SECONDS] [-t SECONDS]\n",
			       help ? "" : "unknown argument '", help ? "" : argv[i], help ? "" : "'; ");
			return 3;
		}
	}
	if (!conf) {
		printf("UNKNOWN: usage: mailmesh check -c FILE [--max-lag SECONDS] [-t SECONDS]\n");
		return 3;
	}
	char req[48];
	snprintf(req, sizeof req, "check %llu\n", lag * 1000);
	return ctl_talk(conf, req, CTL_CHECK, (unsigned)timeout);
}
