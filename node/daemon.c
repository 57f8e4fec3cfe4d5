/*
 * daemon.c — `mailmesh run`: starts the node and runs its event loop.
 *
 * Start-up order matters: sockets and the control socket are bound first (a port
 * below 1024 needs root), then privileges are dropped to the configured mail user,
 * and only then the state database is opened and the Maildirs are read, so every file
 * the daemon creates belongs to the mail user.  Shutdown (SIGTERM/SIGINT) stops
 * taking work, aborts bodies being received (nothing half-written becomes visible),
 * commits the state, closes every handle and checks that none leaked.
 */
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <sodium.h>

#include "node/cmds.h"
#include "node/daemon.h"
#include "node/log.h"
#include "node/store.h"
#include "proto/fetch.h"
#include "proto/gossip.h"
#include "proto/lead.h"
#include "proto/link.h"
#include "proto/sync.h"

#define COMMIT_DELAY_MS 20          /* merged remote changes are committed in batches */
#define RESCAN_INTERVAL_MS 60000    /* full rescan: the safety net behind the watchers */
#define GC_INTERVAL_MS 3600000      /* tombstone GC horizon check */
#define GC_QUANTUM_MS 3600000ULL    /* horizons are whole hours so nodes agree on them */

uint64_t mm_daemon_now(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

void mm_daemon_handle_closed(uv_handle_t *h)
{
	struct mm_daemon *d = h->loop->data;
	d->open_handles--;
}

/* ---- effects, commits, pushes ---------------------------------------------------- */

void mm_daemon_effect(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	struct mm_daemon *d = arg;
	mm_store_effect(d->store, user, eff, rec);
	d->remote_changes++;
	mm_daemon_commit_soon(d);
}

/* -EFBIG from a commit: LMDB's map is full, whatever the disk holds */
static const char state_full_hint[] = " (the database has reached state_max_size: raise it in mailmesh.conf "
                                      "and restart; docs/configuration.md)";

static void commit_cb(uv_timer_t *t)
{
	struct mm_daemon *d = t->data;
	d->commit_pending = false;
	d->placed_uncommitted = 0;
	int r = mm_store_commit(d->store);
	if (r < 0) {
		mm_log(MM_LOG_ERROR, "%s: cannot commit the state database: %s; retrying in 1 s%s",
		       d->cfg.state_dir, strerror(-r), r == -EFBIG ? state_full_hint : "");
		mm_bodies_store_failed(d, r); /* what it would fetch could not be kept either */
		d->commit_pending = true;
		uv_timer_start(&d->commit_timer, commit_cb, 1000, 0);
		return;
	}
	mm_bodies_store_kept(d, true); /* a full disk that had paused fetching has room again */
	/* UID moves and needs the commit made: peers should not wait for anti-entropy */
	mm_daemon_push(d, mm_store_commit_delta(d->store));
	mm_bodies_catchup_note(d); /* records a round brought are committed first */
	mm_watch_lock_waits(d); /* its UID pass may have left a folder to Dovecot's lock */
	/* Remote changes may have created folders or users: watch them too. */
	mm_watch_refresh(d);
}

void mm_daemon_commit_soon(struct mm_daemon *d)
{
	if (d->commit_pending || d->stopping)
		return;
	d->commit_pending = true;
	uv_timer_start(&d->commit_timer, commit_cb, COMMIT_DELAY_MS, 0);
}

void mm_daemon_push(struct mm_daemon *d, const struct mm_delta *delta)
{
	if (mm_delta_count(delta) == 0)
		return;
	int r = mm_gossip_push(d->gossip, delta, NULL, mm_daemon_now());
	if (r < 0)
		mm_log(MM_LOG_WARN, "push failed: %s (anti-entropy will carry the change)", strerror(-r));
}

/* ---- timers -------------------------------------------------------------------- */

static int want_missing(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                        const uint8_t body[MM_ID_LEN], uint64_t size)
{
	struct mm_daemon *d = arg;
	if (mm_store_body_have_id(d->store, user, body) != 1) {
		struct mm_user *u = mm_state_user(d->state, user, false);
		const struct mm_rec *r = u ? mm_user_get(u, key) : NULL;
		uint32_t uid = r && r->type == MM_REC_MESSAGE ? r->msg.uid_value : 0;
		mm_fetch_want(d->fetch, user, body, size, uid, NULL, mm_daemon_now());
	}
	return 0;
}

/* The fetch scheduler's cfg.needed. */
static bool body_needed(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	struct mm_daemon *d = arg;
	return !d->store || mm_store_body_needed_id(d->store, user, id);
}

/* Hands every missing body to the scheduler, which asks for them in UID order once
 * it knows them all. */
static void want_all_missing(struct mm_daemon *d)
{
	mm_fetch_batch_begin(d->fetch);
	mm_store_missing(d->store, want_missing, d);
	mm_fetch_batch_end(d->fetch, mm_daemon_now());
}

/* The UID authority (crdt/uid.h) is the live node with the lowest id that is not
 * catching up, as the gossiped heartbeats tell (proto/lead.h: it also holds when not
 * every node talks to every other).  A daemon that started less than
 * UID_AUTHORITY_GRACE_MS ago, or has not heard a peer yet, is not the authority (a
 * restarted node must not move UIDs before it knows who else is up); nor is one
 * missing more than MM_LEAD_CATCHUP_MISSING bodies (joining or restarted after a long
 * absence: it would move every message it cannot list in order yet, on every node). */
#define UID_AUTHORITY_GRACE_MS 5000

/* Whether the node is catching up: missing more bodies than a live node would. */
bool mm_daemon_catching_up(const struct mm_daemon *d)
{
	return mm_lead_catching_up(mm_store_missing_count(d->store));
}

static void uid_authority_update(struct mm_daemon *d, uint64_t now)
{
	if (!d->cfg.imap_uids)
		return;
	bool catching_up = mm_daemon_catching_up(d);
	mm_lead_set_eligible(d->lead, !catching_up);
	mm_store_set_catching_up(d->store, catching_up);
	bool auth = mm_lead_is_self(d->lead, now);
	if (auth != d->uid_authority) {
		mm_log(MM_LOG_INFO, "%s the IMAP UID authority", auth ? "now" : "no longer");
		d->uid_authority = auth;
		mm_store_set_uid_authority(d->store, auth);
		if (auth)
			mm_daemon_commit_soon(d);
	}
}

static void gossip_cb(uv_timer_t *t)
{
	struct mm_daemon *d = t->data;
	uint8_t rnd[16];
	randombytes_buf(rnd, sizeof rnd);
	uint64_t now = mm_daemon_now();
	mm_gossip_tick(d->gossip, now, rnd, sizeof rnd);
	/* A body the store expected to copy locally can lose its source to a concurrent
	 * expunge; whatever is missing but not being fetched is handed to the scheduler. */
	if (now - d->missing_check_ms >= 1000) {
		struct mm_fetch_stats fs;
		mm_fetch_get_stats(d->fetch, &fs);
		d->missing_check_ms = now;
		if (mm_store_missing_count(d->store) > fs.wanted)
			want_all_missing(d);
	}
	mm_fetch_tick(d->fetch, now);
	/* since when some message has lacked its body here without a break (mailmesh
	 * check: mail this server's IMAP does not show) */
	if (!mm_store_missing_count(d->store))
		d->missing_since_ms = 0;
	else if (!d->missing_since_ms)
		d->missing_since_ms = now ? now : 1;
	mm_bodies_catchup_note(d);
	mm_bodies_commit_check(d); /* placed files' index entries left by a stream that stopped */
	mm_peer_dial_all(d);
	mm_peers_check_stalled(d, now);
	uid_authority_update(d, now);
}

static void uidhold_cb(uv_timer_t *t)
{
	/* (uidhold_armed stays: the same due time is not armed again; the commit's pass
	 * moves it on) */
	mm_daemon_commit_soon(t->data); /* its UID pass plans the folders whose wait is over */
}

/* Re-files waiting for lower UID moves (node/store.c, crdt/uid.h "hold"): a commit
 * when the first wait ends.  Looked at after every loop turn: any pass may start one. */
static void uidhold_arm(struct mm_daemon *d)
{
	uint64_t due = d->store && !d->stopping ? mm_store_uid_hold_due(d->store) : 0;
	if (due == d->uidhold_armed)
		return;
	d->uidhold_armed = due;
	if (!due) {
		uv_timer_stop(&d->uidhold_timer);
		return;
	}
	uint64_t now = mm_daemon_now();
	uv_timer_start(&d->uidhold_timer, uidhold_cb, due > now ? due - now : 0, 0);
}

static void body_flush_cb(uv_check_t *c)
{
	mm_peers_flush(c->data); /* (requests and answers go out before the placement) */
	mm_bodies_flush(c->data);
	uidhold_arm(c->data);
}

static void out_flush_cb(uv_prepare_t *p)
{
	mm_peers_flush(p->data);
}

static void rescan_cb(uv_timer_t *t)
{
	struct mm_daemon *d = t->data;
	mm_scan_request(d, NULL, NULL);
}

struct gc_walk {
	struct mm_daemon *d;
	mm_hlc horizon;
	struct mm_delta *delta;
	int dropped;
};

static int gc_user(void *arg, struct mm_user *u)
{
	struct gc_walk *w = arg;
	int r = mm_user_gc(u, w->horizon, mm_daemon_effect, w->d, w->delta);
	if (r > 0)
		w->dropped += r;
	return 0;
}

uint64_t mm_peer_synced_ms(const struct mm_dpeer *p)
{
	uint64_t now = mm_sync_stats(p->sync)->last_equal_ms;
	return now > p->seen_ms ? now : p->seen_ms;
}

static void daemon_stop(struct mm_daemon *d, int status);

/* A node out of sync with every peer for gc_max is stale (docs/design.md, "Tombstone
 * GC"): the peers stop waiting for it gc_max after their last sync with it, which they
 * may have seen up to a GC interval (an hour) and a sync margin before this node
 * last did; so it counts as stale that much earlier, and at most half of gc_max. */
static uint64_t stale_margin_ms(const struct mm_daemon *d)
{
	uint64_t m = GC_INTERVAL_MS + MM_GC_SYNC_MARGIN_MS;
	return m < d->cfg.gc_max_ms / 2 ? m : d->cfg.gc_max_ms / 2;
}

bool mm_daemon_stale(struct mm_daemon *d, uint64_t *last_r)
{
	*last_r = 0;
	if (!d->n_peers || !d->state || mm_state_user_count(d->state) == 0)
		return false; /* (nothing to bring back) */
	uint64_t last = 0; /* (the rule looks at the latest only) */
	for (size_t i = 0; i < d->n_peers; i++) {
		const struct mm_dpeer *p = d->peers[i];
		uint64_t t = mm_peer_synced_ms(p);
		if (p->gc.synced_ms > t)
			t = p->gc.synced_ms;
		if (t > last)
			last = t;
	}
	return mm_gc_stale(mm_daemon_now(), d->cfg.gc_max_ms, stale_margin_ms(d), &last, 1, last_r);
}

/* A duration (ms) in words for the stale messages: "N days" or "N s". */
static void ago_text(uint64_t ms, char buf[32])
{
	if (ms >= 2ULL * 86400000)
		snprintf(buf, 32, "%llu days", (unsigned long long)(ms / 86400000));
	else
		snprintf(buf, 32, "%llu s", (unsigned long long)(ms / 1000));
}

/* mm_daemon_stale, with how long since the last sync and gc_max in words. */
static bool stale_texts(struct mm_daemon *d, char ago[32], char max[32])
{
	uint64_t last, now = mm_daemon_now();
	if (!mm_daemon_stale(d, &last))
		return false;
	ago_text(now > last ? now - last : 0, ago);
	ago_text(d->cfg.gc_max_ms, max);
	return true;
}

/* The state database's keys of a peer's times: "seen:", "synced:", "known:", "bound:", "members:" or "hs:"
 * and its public key, so renaming it in the peers file keeps them (and a new key starts
 * with no handshake timestamp). */
#define PEER_KEY_MAX (8 + 64 + 1) /* (the longest word has 7 letters and its colon) */
static void peer_key(const struct mm_dpeer *p, const char *what, char key[PEER_KEY_MAX])
{
	size_t n = (size_t)snprintf(key, PEER_KEY_MAX, "%s:", what);
	sodium_bin2hex(key + n, PEER_KEY_MAX - n, p->conf->pub, sizeof p->conf->pub);
}

static void peer_time_load(struct mm_daemon *d, struct mm_dpeer *p, const char *what, uint64_t *v_r)
{
	char key[PEER_KEY_MAX];
	peer_key(p, what, key);
	int r = mm_store_meta_get(d->store, key, v_r);
	if (r < 0 && r != -ENOENT)
		mm_log(MM_LOG_WARN, "%s: cannot read when peer %s was last in sync: %s (taken as never)",
		       d->cfg.state_dir, p->conf->name, strerror(-r));
}

/* The GC's hash of the cluster's members as this node sees them: us and our peers. */
static void members_update(struct mm_daemon *d)
{
	uint64_t *ids = calloc(d->n_peers + 1, sizeof(*ids));
	d->gc_members = 0; /* (if short of memory: 0, which no peer sends: no GC) */
	if (ids) {
		ids[0] = d->cfg.node_id;
		for (size_t i = 0; i < d->n_peers; i++)
			ids[i + 1] = d->peers[i]->conf->node_id;
		d->gc_members = mm_gc_members_hash(ids, d->n_peers + 1);
		free(ids);
	}
}

/* A peer never seen in sync may still hold records it had from other nodes, so the
 * GC waits for it from the time this node first had it in its peers file. */
void mm_daemon_peer_times_load(struct mm_daemon *d, struct mm_dpeer *p)
{
	peer_time_load(d, p, "seen", &p->seen_ms);
	peer_time_load(d, p, "synced", &p->gc.synced_ms);
	peer_time_load(d, p, "known", &p->gc.known_ms);
	peer_time_load(d, p, "bound", &p->gc.bound_ms);
	peer_time_load(d, p, "members", &p->gc.members);
	/* The newest handshake timestamp taken from it before the restart: a message 1
	 * recorded earlier is then refused at once, not answered (docs/protocol.md,
	 * "Handshake"); one more than max_skew ahead of our clock is dropped, so a kept
	 * lockout lasts at most max_skew after a restart (proto/link.h
	 * mm_link_ts_restore, which the simulator calls too). */
	uint64_t hs_ms = 0;
	peer_time_load(d, p, "hs", &hs_ms);
	if (mm_link_ts_restore(p->last_ts, hs_ms, mm_daemon_now(), d->cfg.max_skew_ms) < 0)
		mm_log(MM_LOG_WARN, "peer %s: its last handshake here is dated %llu s ahead of this node's clock, "
		       "more than max_skew: not kept (check both nodes' time sync)", p->conf->name,
		       (unsigned long long)((hs_ms - mm_daemon_now()) / 1000));
	p->saved_hs_ms = hs_ms;
	p->saved_seen_ms = p->seen_ms;
	p->saved_synced_ms = p->gc.synced_ms;
	p->saved_bound_ms = p->gc.bound_ms;
	p->saved_members = p->gc.members;
	if (!p->gc.known_ms) {
		char key[PEER_KEY_MAX];
		peer_key(p, "known", key);
		p->gc.known_ms = mm_daemon_now();
		(void)mm_store_meta_set(d->store, key, p->gc.known_ms); /* (written by the next commit) */
	}
}

static void peers_synced_load(struct mm_daemon *d)
{
	members_update(d);
	for (size_t i = 0; i < d->n_peers; i++)
		mm_daemon_peer_times_load(d, d->peers[i]);
}

/* Stages the peer's times that changed for the next commit (hourly and at shutdown:
 * after a crash they are at most an hour old, which only makes the GC wait longer). */
void mm_daemon_peer_times_save(struct mm_daemon *d, struct mm_dpeer *p)
{
	char key[PEER_KEY_MAX];
	uint64_t seen = mm_peer_synced_ms(p);
	peer_key(p, "seen", key);
	if (seen > p->saved_seen_ms && mm_store_meta_set(d->store, key, seen) == 0)
		p->saved_seen_ms = seen;
	peer_key(p, "synced", key);
	if (p->gc.synced_ms > p->saved_synced_ms && mm_store_meta_set(d->store, key, p->gc.synced_ms) == 0)
		p->saved_synced_ms = p->gc.synced_ms;
	if (mm_sync_stats(p->sync)->peer_gc_bound_ms) {
		p->gc.bound_ms = mm_sync_stats(p->sync)->peer_gc_bound_ms;
		p->gc.members = mm_sync_stats(p->sync)->peer_gc_members;
	}
	peer_key(p, "bound", key); /* (the latest, even if lower: a lower one is safe) */
	if (p->gc.bound_ms != p->saved_bound_ms && mm_store_meta_set(d->store, key, p->gc.bound_ms) == 0)
		p->saved_bound_ms = p->gc.bound_ms;
	peer_key(p, "members", key);
	if (p->gc.members != p->saved_members && mm_store_meta_set(d->store, key, p->gc.members) == 0)
		p->saved_members = p->gc.members;
}

void mm_daemon_peer_hs_save(struct mm_daemon *d, struct mm_dpeer *p)
{
	uint64_t ms = mm_ch_tai64n_ms(p->last_ts);
	char key[PEER_KEY_MAX];
	if (!d->store || ms <= p->saved_hs_ms)
		return;
	peer_key(p, "hs", key);
	if (mm_store_meta_set(d->store, key, ms) == 0) {
		p->saved_hs_ms = ms;
		mm_daemon_commit_soon(d); /* (one commit per confirmed incoming connection) */
	}
}

static void peers_synced_save(struct mm_daemon *d)
{
	for (size_t i = 0; i < d->n_peers; i++)
		mm_daemon_peer_times_save(d, d->peers[i]);
}

/* Sends every peer this node's GC bound for its current peers without running the GC:
 * the times the last GC took (a peer never in sync: since it was first listed), no new
 * sample, no horizon raised.  For a reload that changed the members. */
static void gc_bound_send(struct mm_daemon *d)
{
	uint64_t now = mm_daemon_now();
	size_t n = d->n_peers ? d->n_peers : 1;
	uint64_t *synced = calloc(n, sizeof(*synced));
	if (!synced)
		return; /* (the hourly GC sends it) */
	for (size_t i = 0; i < d->n_peers; i++) {
		const struct mm_dpeer *p = d->peers[i];
		synced[i] = p->gc.synced_ms ? p->gc.synced_ms : p->gc.known_ms;
	}
	uint64_t own = mm_gc_horizon_ms(now, d->cfg.gc_grace_ms, d->cfg.gc_max_ms, MM_GC_SYNC_MARGIN_MS, synced,
	                                NULL, d->n_peers);
	free(synced);
	for (size_t i = 0; i < d->n_peers; i++)
		mm_sync_gc_bound_set(d->peers[i]->sync, own, d->gc_members);
}

/* Tombstones go once they are gc_grace old and every peer has been in sync since
 * (mm_gc_horizon_ms, mm_gc_peer_tick: equal roots that the peer kept, connected until
 * this hourly GC): a peer that comes back after a long absence then still finds the
 * tombstones of what was expunged meanwhile, instead of bringing those messages back
 * on every node.  A peer not in sync for gc_max is no longer waited for. */
static void gc_cb(uv_timer_t *t)
{
	struct mm_daemon *d = t->data;
	uint64_t now = mm_daemon_now();
	char ago[32], max[32];
	if (stale_texts(d, ago, max)) {
		/* Cut off from every peer for that long while running (or the clock jumped
		 * ahead): as at start, it must not merge what it holds once back in touch. */
		if (!d->accept_stale) {
			mm_log(MM_LOG_ERROR, "this node has been in sync with none of its peers for %s, at or past gc_max "
			       "(%s): they may have dropped the tombstones of mail expunged meanwhile, which it would "
			       "bring back on every node once in touch again; stopping.  Rebuild it, or take the peers "
			       "gone for good out of the peers file (docs/operations.md, \"A node away longer than "
			       "gc_max\")", ago, max);
			daemon_stop(d, MM_EXIT_STALE);
			return;
		}
		mm_log(MM_LOG_WARN, "in sync with none of its peers for %s, at or past gc_max (%s); running anyway "
		       "(--accept-stale)", ago, max);
	}
	size_t n = d->n_peers ? d->n_peers : 1;
	uint64_t *synced = calloc(2 * n, sizeof(*synced)), *bounds = synced + n;
	if (!synced)
		return;
	const struct mm_dpeer *oldest = NULL, *lowest = NULL, *silent = NULL;
	size_t oldest_i = 0, lowest_i = 0;
	for (size_t i = 0; i < d->n_peers; i++) {
		struct mm_dpeer *p = d->peers[i];
		synced[i] = mm_gc_peer_tick(&p->gc, mm_sync_stats(p->sync)->last_equal_ms, p->disconnects,
		                            p->state == MM_PEER_ESTABLISHED);
	}
	peers_synced_save(d); /* (also takes the bounds the peers sent) */
	for (size_t i = 0; i < d->n_peers; i++) {
		struct mm_dpeer *p = d->peers[i];
		bounds[i] = mm_gc_peer_bound(&p->gc, d->gc_members);
		bool waited = synced[i] && (now <= d->cfg.gc_max_ms || synced[i] > now - d->cfg.gc_max_ms);
		if (waited && (!oldest || synced[i] < synced[oldest_i])) {
			oldest = p;
			oldest_i = i;
		}
		if (waited && !bounds[i] && !silent)
			silent = p;
		if (waited && bounds[i] && (!lowest || bounds[i] < bounds[lowest_i])) {
			lowest = p;
			lowest_i = i;
		}
	}
	/* this node's own bound goes to every peer (their GC waits for it too); the
	 * horizon also waits for each peer's */
	uint64_t own = mm_gc_horizon_ms(now, d->cfg.gc_grace_ms, d->cfg.gc_max_ms, MM_GC_SYNC_MARGIN_MS, synced,
	                                NULL, d->n_peers);
	for (size_t i = 0; i < d->n_peers; i++)
		mm_sync_gc_bound_set(d->peers[i]->sync, own, d->gc_members);
	uint64_t h = mm_gc_horizon_ms(now, d->cfg.gc_grace_ms, d->cfg.gc_max_ms, MM_GC_SYNC_MARGIN_MS, synced,
	                              bounds, d->n_peers);
	free(synced);
	if (silent && silent->gc.bound_ms) {
		mm_log(MM_LOG_WARN, "tombstone gc: peer %s counts other nodes than this one (the peers files differ); "
		       "no tombstone is dropped until every node lists every other", silent->conf->name);
	} else if (silent) {
		mm_log(MM_LOG_INFO, "tombstone gc waits for peer %s, which has sent no gc bound yet", silent->conf->name);
	} else if (now > d->cfg.gc_grace_ms && own < now - d->cfg.gc_grace_ms && oldest) {
		uint64_t last = mm_peer_synced_ms(oldest);
		char ago[48] = "never";
		if (last)
			snprintf(ago, sizeof ago, "%llu s ago", (unsigned long long)((now - last) / 1000));
		mm_log(MM_LOG_INFO, "tombstone gc waits for peer %s, last in sync %s (tombstones are kept for it up "
		       "to gc_max, %llu s)", oldest->conf->name, ago, (unsigned long long)(d->cfg.gc_max_ms / 1000));
	} else if (h < own && lowest) {
		mm_log(MM_LOG_INFO, "tombstone gc waits for peer %s, whose own bound is %llu s ago (its gc_grace, or one "
		       "of its peers not in sync with it since)", lowest->conf->name,
		       (unsigned long long)(now > h ? (now - h) / 1000 : 0));
	}
	h = h / GC_QUANTUM_MS * GC_QUANTUM_MS;
	struct gc_walk w = {d, {h << MM_HLC_LOGICAL_BITS, 0}, h ? mm_delta_new() : NULL, 0};
	if (w.delta)
		mm_state_foreach(d->state, NULL, 0, gc_user, &w);
	/* (also writes the peers' times staged above) */
	int r = mm_store_commit(d->store);
	if (r == 0 && w.delta && mm_delta_count(w.delta) > 0) {
		mm_log(MM_LOG_INFO, "tombstone gc horizon=%llu dropped=%d", (unsigned long long)h, w.dropped);
		mm_daemon_push(d, w.delta);
	}
	mm_delta_free(&w.delta);
}

/* ---- shutdown ------------------------------------------------------------------- */

static void close_if(uv_handle_t *h)
{
	if (h->type != UV_UNKNOWN_HANDLE && !uv_is_closing(h))
		uv_close(h, mm_daemon_handle_closed);
}

static void daemon_stop(struct mm_daemon *d, int status)
{
	if (d->stopping)
		return;
	d->stopping = true;
	d->exit_status = status;
	mm_log(MM_LOG_INFO, "shutting down");
	/* Bodies being written are aborted by the sessions (mm_sync_reset/free) before
	 * the final commit, so nothing half-received becomes visible. */
	mm_peers_stop(d);
	for (size_t i = 0; i < d->n_peers; i++)
		mm_sync_reset(d->peers[i]->sync, mm_daemon_now());
	if (d->store)
		peers_synced_save(d);
	if (d->store && mm_store_commit(d->store) < 0)
		mm_log(MM_LOG_ERROR, "%s: final commit failed; changes since the last commit will be "
		       "found again by the next start's rescan or from peers", d->cfg.state_dir);
	mm_watch_stop(d);
	mm_control_stop(d);
	close_if((uv_handle_t *)&d->gossip_timer);
	close_if((uv_handle_t *)&d->scan_timer);
	close_if((uv_handle_t *)&d->rescan_timer);
	close_if((uv_handle_t *)&d->commit_timer);
	close_if((uv_handle_t *)&d->gc_timer);
	close_if((uv_handle_t *)&d->settle_timer);
	close_if((uv_handle_t *)&d->lockwait_timer);
	close_if((uv_handle_t *)&d->body_flush);
	close_if((uv_handle_t *)&d->out_flush);
	close_if((uv_handle_t *)&d->gather_timer);
	close_if((uv_handle_t *)&d->uidhold_timer);
	close_if((uv_handle_t *)&d->sigterm);
	close_if((uv_handle_t *)&d->sigint);
	close_if((uv_handle_t *)&d->sighup);
}

static void signal_cb(uv_signal_t *s, int signum)
{
	struct mm_daemon *d = s->data;
	mm_log(MM_LOG_INFO, "signal %d received", signum);
	daemon_stop(d, 0);
}

/* mailmesh.conf read again on SIGHUP: log_level is taken at once; any other setting
 * that changed is named in the log as waiting for a restart.  A file that does not
 * parse changes nothing (logged, and shown by `mailmesh status`). */
static void reload_settings(struct mm_daemon *d, char *name_r, size_t name_cap)
{
	char err[MM_CONFIG_ERR_MAX];
	struct mm_config nc;
	name_r[0] = '\0';
	int r = mm_config_reread(&d->cfg, &nc, err, sizeof err);
	if (r < 0) {
		mm_log(MM_LOG_ERROR, "reload: %s; the settings are kept", err);
		snprintf(d->config_reload_error, sizeof d->config_reload_error, "%s", err);
		mm_config_free(&nc);
		return;
	}
	d->config_reload_error[0] = '\0';
	if (nc.log_level != d->cfg.log_level) {
		enum mm_log_level was = d->cfg.log_level;
		d->cfg.log_level = nc.log_level;
		mm_log_set_level(nc.log_level);
		/* (after the change, and as a warning: shown at any level but error) */
		mm_log(MM_LOG_WARN, "reload: log_level %s -> %s", mm_log_level_name(was), mm_log_level_name(nc.log_level));
	}
	if (nc.name && strcmp(nc.name, d->cfg.name) != 0)
		snprintf(name_r, name_cap, "%s", nc.name); /* (the peers file is checked against the old) */
	char keys[256];
	if (mm_config_restart_keys(&d->cfg, &nc, keys, sizeof keys) > 0)
		mm_log(MM_LOG_WARN, "reload: %s: %s changed; taken at the next restart (a reload takes log_level "
		       "and the peers file only)", d->cfg.path, keys);
	mm_config_free(&nc);
}

/* SIGHUP (`systemctl reload mailmesh`): reads mailmesh.conf's log_level and the peers
 * file again, so servers can be added, retired or moved without a restart.  A peers
 * file that does not load changes nothing: the error is logged (and shown by
 * `mailmesh status`) and the daemon goes on with the peers it had. */
static void reload_cb(uv_signal_t *s, int signum)
{
	(void)signum;
	(void)mm_daemon_reload(s->data);
}

int mm_daemon_reload(struct mm_daemon *d)
{
	if (d->stopping || !d->store)
		return -EAGAIN;
	char new_name[MM_PEER_NAME_MAX + 1];
	reload_settings(d, new_name, sizeof new_name);
	char err[MM_CONFIG_ERR_MAX];
	struct mm_peers *peers = NULL;
	const struct mm_peer *self = NULL;
	int r = mm_config_peers_load(&d->cfg, &peers, &self, err, sizeof err);
	if (r == 0 && d->n_peers > 0 && peers->n == (self ? 1u : 0u)) {
		/* most likely a file cut short; alone, this node's GC would wait for nobody
		 * and drop tombstones that nodes now away still need */
		snprintf(err, sizeof err, "%s lists no other node, so every peer would be dropped; to run this node "
		         "alone, restart it", d->cfg.peers_path);
		mm_peers_free(&peers);
		r = -EINVAL;
	}
	if (r == 0 && (r = mm_peers_reload(d, peers, self)) < 0)
		snprintf(err, sizeof err, "%s: cannot take the new peers: %s", d->cfg.peers_path, strerror(-r));
	if (r < 0 && new_name[0]) {
		/* the error above quotes the name this daemon started with, which the admin
		 * may just have changed in mailmesh.conf too */
		size_t l = strlen(err);
		snprintf(err + l, sizeof err - l, " (this daemon runs as name = %s until it is restarted; mailmesh.conf "
		         "now says name = %s: restart it to take the new name)", d->cfg.name, new_name);
	}
	if (r < 0) {
		mm_log(MM_LOG_ERROR, "reload: %s; going on with the %zu peers loaded before", err, d->n_peers);
		snprintf(d->reload_error, sizeof d->reload_error, "%s", err);
		return r;
	}
	d->reload_error[0] = '\0';
	d->reloads++;
	uint64_t before = d->gc_members;
	members_update(d);
	/* the GC's view of the cluster changed: the peers hear the new members hash (and
	 * our bound for it) with the next DIGESTs, not within the hour.  The hourly GC is
	 * not run early: its "stayed connected until the next GC" needs the hour. */
	if (d->gc_members != before)
		gc_bound_send(d);
	mm_daemon_commit_soon(d); /* (new peers' "known" times, removed peers' last times) */
	return 0;
}

/* ---- privileges ---------------------------------------------------------------- */

/* Whether dir holds nothing but what mailmesh puts in a state_dir (or cannot be read:
 * then the chown below is not the problem).  lost+found: a filesystem of its own
 * mounted there. */
static bool state_dir_own(const char *dir)
{
	DIR *dp = opendir(dir);
	if (!dp)
		return true;
	bool own = true;
	struct dirent *e;
	while (own && (e = readdir(dp)) != NULL)
		own = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strncmp(e->d_name, "state.mdb", 9) ||
		      !strcmp(e->d_name, "control.sock") || !strcmp(e->d_name, "lost+found");
	closedir(dp);
	return own;
}

static int prepare_state_dir(struct mm_daemon *d)
{
	const char *dir = d->cfg.state_dir;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		mm_log(MM_LOG_ERROR, "%s: cannot create state_dir %s: %s", d->cfg.path, dir, strerror(errno));
		return -errno;
	}
	struct stat st;
	/* A state_dir that is some other directory (`state_dir = /var/lib` for
	 * /var/lib/mailmesh) must not be handed to the mail user as root. */
	if (d->cfg.drop_privileges && geteuid() == 0 && stat(dir, &st) == 0 &&
	    (st.st_uid != d->cfg.uid || st.st_gid != d->cfg.gid) && !state_dir_own(dir)) {
		mm_log(MM_LOG_ERROR, "%s: state_dir %s belongs to uid %u gid %u and holds other files than mailmesh's: "
		       "not giving it to uid %u gid %u; set state_dir to a directory of mailmesh's own (e.g. "
		       "/var/lib/mailmesh), or chown it yourself if it is meant to be", d->cfg.path, dir,
		       (unsigned)st.st_uid, (unsigned)st.st_gid, (unsigned)d->cfg.uid, (unsigned)d->cfg.gid);
		return -EPERM;
	}
	if (d->cfg.drop_privileges && geteuid() == 0 && chown(dir, d->cfg.uid, d->cfg.gid) < 0) {
		mm_log(MM_LOG_ERROR, "cannot chown %s to uid %u: %s", dir, (unsigned)d->cfg.uid, strerror(errno));
		return -errno;
	}
	/* the database of a start without `user` (as root): the mail user opens it next */
	for (int i = 0; d->cfg.drop_privileges && geteuid() == 0 && i < 2; i++) {
		char path[4200];
		snprintf(path, sizeof path, "%s/%s", dir, i ? "state.mdb-lock" : "state.mdb");
		if (lchown(path, d->cfg.uid, d->cfg.gid) < 0 && errno != ENOENT) {
			mm_log(MM_LOG_ERROR, "cannot chown %s to uid %u: %s", path, (unsigned)d->cfg.uid, strerror(errno));
			return -errno;
		}
	}
	return 0;
}

static int drop_privileges(struct mm_daemon *d)
{
	if (!d->cfg.drop_privileges) {
		/* (as check-config says too) root's Maildirs are unreadable to Dovecot */
		if (geteuid() == 0)
			mm_log(MM_LOG_WARN, "%s sets no `user`: running as root, the Maildirs this node creates "
			       "are root's, which Dovecot cannot read; add `user = vmail` (the owner of the Maildirs)",
			       d->cfg.path);
		return 0;
	}
	if (geteuid() != 0) {
		if (geteuid() == d->cfg.uid)
			return 0;
		mm_log(MM_LOG_ERROR, "%s: user = %s but the daemon runs as uid %u, not root: start it as "
		       "root or as that user", d->cfg.path, d->cfg.user ? d->cfg.user : "?", (unsigned)geteuid());
		return -EPERM;
	}
	if (setgroups(0, NULL) < 0 || setgid(d->cfg.gid) < 0 || setuid(d->cfg.uid) < 0) {
		mm_log(MM_LOG_ERROR, "cannot drop privileges to uid %u gid %u: %s", (unsigned)d->cfg.uid,
		       (unsigned)d->cfg.gid, strerror(errno));
		return -errno;
	}
	/* (`group` alone, or `user = root`, keeps uid 0 by design: only the group changes,
	 * so regaining root proves nothing there) */
	if (d->cfg.uid != 0 && setuid(0) == 0) {
		mm_log(MM_LOG_ERROR, "privileges could be regained after dropping them; refusing to run");
		return -EPERM;
	}
	mm_log(MM_LOG_INFO, "running as uid %u gid %u", (unsigned)d->cfg.uid, (unsigned)d->cfg.gid);
	return 0;
}

static void store_log(void *arg, int level, const char *fmt, ...)
{
	(void)arg;
	char line[MM_LOG_LINE_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	mm_log(level <= MM_STORE_LOG_ERR ? MM_LOG_ERROR : level <= MM_STORE_LOG_WARNING ? MM_LOG_WARN : MM_LOG_INFO,
	       "store: %s", line);
}

/* ---- run ----------------------------------------------------------------------- */

static int daemon_start(struct mm_daemon *d)
{
	int r;
	char err[512];
	uv_loop_init(&d->loop);
	d->loop.data = d;
	d->started_ms = mm_daemon_now();
	mm_clock_init(&d->clock, d->cfg.node_id, 0);
	if (!(d->state = mm_state_new()))
		return -ENOMEM;
	struct mm_gossip_config gc = {.fanout = d->cfg.push_fanout, .push_all_max = d->cfg.push_fanout ? 0 : 1024};
	randombytes_buf(&gc.seed, sizeof gc.seed);
	/* a body whose message was expunged before it could be fetched is dropped */
	struct mm_fetch_config fc = { .needed = body_needed, .needed_arg = d };
	if ((r = mm_gossip_new(&gc, &d->gossip)) < 0 || (r = mm_fetch_new(&fc, &d->fetch)) < 0)
		return r;
	struct mm_lead_config lc = { .self = d->cfg.node_id, .expire_ms = mm_lead_expire_for(d->cfg.gossip_interval_ms),
	                             .grace_ms = UID_AUTHORITY_GRACE_MS };
	if ((r = mm_lead_new(&lc, d->started_ms, &d->lead)) < 0)
		return r;

	uv_timer_init(&d->loop, &d->gossip_timer);
	uv_timer_init(&d->loop, &d->scan_timer);
	uv_timer_init(&d->loop, &d->rescan_timer);
	uv_timer_init(&d->loop, &d->commit_timer);
	uv_timer_init(&d->loop, &d->gc_timer);
	uv_timer_init(&d->loop, &d->settle_timer);
	uv_timer_init(&d->loop, &d->lockwait_timer);
	uv_signal_init(&d->loop, &d->sigterm);
	uv_signal_init(&d->loop, &d->sigint);
	uv_signal_init(&d->loop, &d->sighup);
	uv_check_init(&d->loop, &d->body_flush);
	uv_prepare_init(&d->loop, &d->out_flush);
	uv_timer_init(&d->loop, &d->gather_timer);
	uv_timer_init(&d->loop, &d->uidhold_timer);
	d->open_handles += 14;
	d->body_flush.data = d->out_flush.data = d->gather_timer.data = d->uidhold_timer.data = d;
	d->settle_timer.data = d->lockwait_timer.data = d;
	d->gossip_timer.data = d->scan_timer.data = d->rescan_timer.data = d;
	d->commit_timer.data = d->gc_timer.data = d->sigterm.data = d->sigint.data = d->sighup.data = d;
	uv_signal_start(&d->sigterm, signal_cb, SIGTERM);
	uv_signal_start(&d->sigint, signal_cb, SIGINT);
	uv_signal_start(&d->sighup, reload_cb, SIGHUP);
	signal(SIGPIPE, SIG_IGN);

	if ((r = prepare_state_dir(d)) < 0)
		return r;
	if ((r = mm_peers_start(d)) < 0)
		return r;
	if ((r = mm_control_start(d)) < 0)
		return r;
	if ((r = drop_privileges(d)) < 0)
		return r;

	/* (as the mail user: what it cannot see, the store could not use either) */
	if ((r = mm_config_mail_base_check(&d->cfg, err, sizeof err)) < 0) {
		mm_log(MM_LOG_ERROR, "%s", err);
		return r;
	}
	struct mm_store_config sc = {.mail_location = d->cfg.mail_location, .state_dir = d->cfg.state_dir,
	                             .imap_uids = d->cfg.imap_uids, .max_bytes = d->cfg.state_max_bytes,
	                             .log = store_log, .log_arg = d};
	if ((r = mm_store_open(&d->store, &sc, d->state, &d->clock, err, sizeof err)) < 0) {
		mm_log(MM_LOG_ERROR, "%s", err);
		return r;
	}
	mm_store_set_log(d->store, store_log, d);
	mm_store_set_file_cache(d->store, d->cfg.file_cache);
	if (mm_store_set_quota_ignore(d->store, d->cfg.quota_ignore) < 0) /* (the parser checked the names) */
		mm_log(MM_LOG_WARN, "out of memory for quota_ignore: those folders count in maildirsize");
	peers_synced_load(d);
	/* before the first scan's UID pass: a node back with many bodies missing asks for
	 * no moves until it has them (uid_authority_update keeps this up to date) */
	mm_store_set_catching_up(d->store, mm_daemon_catching_up(d));
	uint64_t t0 = mm_daemon_now();
	/* Watches first, on every directory the state database knows, then the scan: it
	 * sees whatever arrived before they were added, so the re-read each new watch asks
	 * for (every file name again, the scan's own skip of unchanged folders aside) is
	 * not needed for them.  The refresh after the scan adds the directories it found. */
	mm_watch_refresh(d);
	mm_scan_forget(d);
	/* no delta: nothing is pushed before the peers are up (anti-entropy finds what
	 * this scan indexed), and a first scan of a million files would hold a million
	 * records in it */
	int changes = r = mm_store_scan(d->store, mm_daemon_now(), NULL);
	if (r >= 0 && (r = mm_store_commit(d->store)) < 0) {
		if (r == -ENOSPC || r == -EDQUOT || r == -EFBIG) {
			/* a full state disk (or LMDB map) is waited out as while running: a
			 * node restarted then must not stay down until the admin frees space */
			mm_log(MM_LOG_ERROR, "%s: cannot commit the state database: %s; starting anyway, retrying "
			       "every second%s", d->cfg.state_dir, strerror(-r),
			       r == -EFBIG ? state_full_hint : " (free space there)");
			d->commit_pending = true;
			uv_timer_start(&d->commit_timer, commit_cb, 1000, 0);
			r = 0;
		} else {
			mm_log(MM_LOG_ERROR, "%s: cannot commit the state database: %s", d->cfg.state_dir, strerror(-r));
		}
	}
	mm_log(MM_LOG_INFO, "store ready users=%zu local_changes=%d scan_ms=%llu", mm_state_user_count(d->state),
	       changes > 0 ? changes : 0, (unsigned long long)(mm_daemon_now() - t0));
	if (r < 0)
		return r;
	char ago[32], max[32];
	if (stale_texts(d, ago, max)) {
		if (!d->accept_stale) {
			mm_log(MM_LOG_ERROR, "%s: this node was last in sync with a peer %s ago, at or past gc_max (%s): "
			       "its peers may have dropped the tombstones of mail expunged since, and its copies would "
			       "bring that mail back on every node.  Rebuild it (stop it, move its state_dir and mail "
			       "root aside, start it empty: it fetches everything; then deliver again what only it "
			       "had).  If the peers it was in sync with are gone for good, take them out of the peers "
			       "file instead; if every node was down as long (none dropped anything), start it once "
			       "with `mailmesh run --accept-stale` (docs/operations.md, \"A node away longer than "
			       "gc_max\")", d->cfg.state_dir, ago, max);
			return -ESTALE;
		}
		mm_log(MM_LOG_WARN, "last in sync with a peer %s ago, at or past gc_max (%s); starting anyway "
		       "(--accept-stale): mail expunged meanwhile may come back", ago, max);
	}
	want_all_missing(d);
	mm_watch_refresh(d);

	uv_timer_start(&d->gossip_timer, gossip_cb, d->cfg.gossip_interval_ms, d->cfg.gossip_interval_ms);
	uv_timer_start(&d->rescan_timer, rescan_cb, RESCAN_INTERVAL_MS, RESCAN_INTERVAL_MS);
	uv_timer_start(&d->gc_timer, gc_cb, 1000, GC_INTERVAL_MS);
	uv_check_start(&d->body_flush, body_flush_cb);
	uv_prepare_start(&d->out_flush, out_flush_cb);
	mm_log(MM_LOG_INFO, "mailmesh node %s (%016llx) started", d->cfg.name, (unsigned long long)d->cfg.node_id);
	return 0;
}

static void daemon_free(struct mm_daemon *d)
{
	for (size_t i = 0; i < d->n_peers; i++) {
		mm_gossip_remove(d->gossip, d->peers[i]->sync);
		mm_sync_free(&d->peers[i]->sync);
		sodium_memzero(d->peers[i]->knock_key, sizeof d->peers[i]->knock_key);
		free(d->peers[i]);
	}
	free(d->peers);
	mm_gossip_free(&d->gossip);
	mm_fetch_free(&d->fetch);
	mm_lead_free(&d->lead);
	mm_store_free(&d->store);
	mm_state_free(&d->state);
	mm_config_free(&d->cfg);
}

int mm_cmd_run(int argc, char **argv)
{
	const char *conf = NULL;
	bool accept_stale = false;
	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
			conf = argv[++i];
		else if (!strcmp(argv[i], "--accept-stale"))
			accept_stale = true;
		else
			return mm_cmd_usage("run", argv[i], "mailmesh run -c FILE [--accept-stale]");
	}
	if (!conf)
		return mm_cmd_usage("run", NULL, "mailmesh run -c FILE [--accept-stale]");
	if (sodium_init() < 0) {
		fprintf(stderr, "mailmesh: libsodium failed to initialise\n");
		return 1;
	}
	/* a reload asked for while starting (systemctl reload right after start) must not
	 * kill the daemon, SIGHUP's default: until its handler is in place it is ignored,
	 * and the peers file read at start is the newest anyway */
	signal(SIGHUP, SIG_IGN);
	struct mm_daemon *d = calloc(1, sizeof *d);
	if (!d)
		return 1;
	char err[MM_CONFIG_ERR_MAX];
	if (mm_config_load(conf, &d->cfg, err, sizeof err) < 0) {
		fprintf(stderr, "mailmesh: %s\n", err);
		free(d);
		return 2;
	}
	mm_log_set_level(d->cfg.log_level);
	d->accept_stale = accept_stale;
	int r = daemon_start(d);
	if (r < 0) {
		if (r == -ESTALE)
			mm_log(MM_LOG_ERROR, "start-up refused: this node's state is stale (above)");
		else
			mm_log(MM_LOG_ERROR, "start-up failed: %s", strerror(-r));
		daemon_stop(d, r == -ESTALE ? MM_EXIT_STALE : 1);
	}
	if (d->lead)
		mm_lead_start(d->lead, mm_daemon_now()); /* the UID authority grace starts now */
	uv_run(&d->loop, UV_RUN_DEFAULT);
	int status = d->exit_status;
	/* Everything was closed by daemon_stop; a handle still open is a leak. */
	if (d->open_handles != 0 || uv_loop_close(&d->loop) != 0) {
		mm_log(MM_LOG_ERROR, "internal error: %d libuv handles leaked at exit", d->open_handles);
		status = 1;
	}
	daemon_free(d);
	free(d);
	mm_log(MM_LOG_INFO, "stopped");
	return status;
}
