/*
 * daemon.h — the running node's objects, shared by the files that make up the daemon:
 *   daemon.c   start-up, privilege drop, timers, signals, local changes -> push
 *   peer.c     TCP connections, the Noise channel, datagrams, the sync io backend
 *   watch.c    inotify watches on the Maildirs and the rescans they trigger
 *   bodies.c   the sync body vtable on top of the Maildir store
 *   control.c  the control socket (`mailmesh status`)
 * Only node/ sees this header; proto/ and crdt/ know nothing of libuv.
 */
#ifndef MM_DAEMON_H
#define MM_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "crdt/crdt.h"
#include "node/config.h"
#include "proto/channel.h"

struct mm_store;
struct mm_sync;
struct mm_gossip;
struct mm_fetch;
struct mm_lead;
struct mm_conn;
struct mm_watchset;

/* What a peer's connection slot expects next. */
enum mm_peer_state {
	MM_PEER_IDLE = 0,      /* no connection; waits for its retry timer or for the peer */
	MM_PEER_RESOLVING,     /* dialer: resolving the host name */
	MM_PEER_CONNECTING,    /* dialer: TCP connect in progress */
	MM_PEER_HANDSHAKE,     /* TCP up, Noise handshake in progress */
	MM_PEER_ESTABLISHED,   /* channel up, sync session connected */
};

struct mm_dpeer {
	struct mm_daemon *d;
	const struct mm_peer *conf;        /* line of the peers file (borrowed from cfg) */
	struct mm_sync *sync;              /* one replication session for the daemon's life */
	struct mm_conn *conn;              /* the connection carrying the channel, or NULL */
	enum mm_peer_state state;
	bool dialer;                       /* we connect to it (our key sorts lower) */
	uv_timer_t retry;                  /* reconnect with backoff and jitter */
	uint32_t backoff_ms;
	uint8_t last_ts[MM_CH_TAI64N_LEN]; /* newest handshake timestamp accepted from it
	                                    * (kept in the state database: "hs:") */
	uint64_t saved_hs_ms;              /* last_ts as last handed to the database (ms) */
	struct sockaddr_storage udp_addr;  /* where its datagrams go (resolved) */
	bool udp_addr_ok;
	uint64_t connected_since_ms;
	uint64_t connects, disconnects;
	uint8_t knock_key[32];             /* proto/knock.h: this pair's wake-up key */
	bool knock_ok;                     /* the key could be derived */
	bool future_horizon_logged;        /* its tombstone horizon ahead of our clock: said once */
	bool foreign_id_logged;            /* a knock from its address with another id: said
	                                    * once per connection */
	unsigned handshake_fails;          /* our dials it answered and then closed before the
	                                    * handshake completed, since the last connection */
	uint64_t knock_ts;                 /* newest knock timestamp taken from it */
	uint64_t knock_sent_ms;            /* when we last knocked on it */
	/* The tombstone GC's view of the peer (daemon.c gc_cb), kept in the state database */
	struct mm_gc_peer gc;              /* what the GC waits for (crdt.h) */
	uint64_t seen_ms;                  /* last in sync before this run (status; 0 = never) */
	uint64_t saved_seen_ms, saved_synced_ms, saved_bound_ms, saved_members; /* the values last handed to
	                                                                         * the database */
	/* Taken out of the peers file by a reload (mm_peers_reload): no longer in d->peers,
	 * freed once its timer is closed and no name lookup for it is under way. */
	bool removed;
	bool retry_closed;
	unsigned resolving;                /* uv_getaddrinfo requests not yet answered */
	unsigned addr_gen;                 /* counts changes of its address (a lookup of the
	                                    * old one is then dropped) */
};

struct mm_daemon {
	uv_loop_t loop;
	struct mm_config cfg;
	struct mm_state *state;
	struct mm_clock clock;
	struct mm_store *store;
	struct mm_gossip *gossip;
	struct mm_fetch *fetch;
	struct mm_lead *lead;       /* who is the UID authority (proto/lead.h) */
	struct mm_dpeer **peers;           /* every peer of the peers file but us (each stays
	                                    * where it is: it holds a timer handle) */
	size_t n_peers;
	uint64_t gc_members;               /* crdt mm_gc_members_hash of us and our peers */

	uv_tcp_t listener;
	uv_udp_t udp;
	uv_pipe_t control;
	struct ctl_client *ctl_clients;    /* control connections open (control.c): closed at stop */
	uv_timer_t gossip_timer;           /* gossip_interval: digest, sync timers, fetches */
	uv_timer_t scan_timer;             /* coalesces watcher events into rescans */
	uv_timer_t rescan_timer;           /* periodic full rescan: the safety net */
	uv_timer_t commit_timer;           /* commits merged remote changes in batches */
	uv_timer_t gc_timer;               /* raises the tombstone GC horizon */
	uv_timer_t settle_timer;           /* follow-up scans after a user or domain appears */
	uv_timer_t lockwait_timer;         /* rescans of files left to Dovecot's uidlist lock */
	uv_check_t body_flush;             /* after each loop turn's I/O: send the gathered
	                                    * output, place staged bodies */
	uv_prepare_t out_flush;            /* before the loop waits: send the gathered output */
	uv_timer_t gather_timer;           /* places gathered bodies when their wait is over */
	uv_timer_t uidhold_timer;          /* a commit when re-files stop waiting for lower UID
	                                    * moves (mm_store_uid_hold_due) */
	uint64_t uidhold_armed;            /* the due time it was started for (0 = none) */
	unsigned write_jobs;               /* bodies being written out on the thread pool */
	size_t placed_uncommitted;         /* files placed whose index entries wait for a commit */
	uint64_t placed_since_ms;          /* when the first of them was placed */
	uint64_t write_bytes;              /* and their bytes (bodies.c) */
	int settle_left;
	uv_signal_t sigterm, sigint;
	uv_signal_t sighup;                /* reloads the peers file (daemon.c reload_cb) */
	uint64_t reloads;                  /* peers file reloads taken (status) */
	char reload_error[512];            /* why the last reload failed, "" = it did not */
	char config_reload_error[512];     /* why mailmesh.conf did not parse at the last reload */
	int open_handles;                  /* handles not yet closed (leak check at exit) */

	struct mm_watchset *ws;            /* the inotify instance and its watched directories (watch.c) */
	struct mm_dirty *dirty;            /* (user, folder) to rescan, NULL folder = all */
	bool full_scan_wanted;
	bool uid_authority;                /* see uid_authority_update (daemon.c) */
	bool commit_pending;
	bool stopping;
	int exit_status;
	bool accept_stale;                 /* run --accept-stale: run even if mm_daemon_stale */
	struct mm_conn *conns;             /* every open connection (for shutdown) */
	uint64_t started_ms;
	uint64_t missing_check_ms;         /* last time missing bodies were re-wanted */
	uint64_t missing_since_ms;         /* some body missing here since (gossip ticks), 0 = none */
	uint64_t catchup_since_ms;         /* catching up since (bodies.c), 0 = not */
	uint64_t catchup_done0;            /* fetches done by then */
	uint64_t store_backoff_ms;         /* fetch hold after the store failed to keep bodies
	                                    * (bodies.c, mm_bodies_store_failed), 0 = none */
	uint64_t store_hold_until;         /* and when that hold ends */
	int store_err;                     /* the failure behind it (status), 0 = none */
	uint64_t local_changes, remote_changes;
};

/* Milliseconds since the unix epoch (the HLC's wall clock). */
uint64_t mm_daemon_now(void);

/* The tombstone GC's times of peer p (daemon.c): loaded from the state database for a
 * peer new to this run (a reload), and staged for the next commit (before a reload
 * forgets p). */
void mm_daemon_peer_times_load(struct mm_daemon *d, struct mm_dpeer *p);
void mm_daemon_peer_times_save(struct mm_daemon *d, struct mm_dpeer *p);
/* p->last_ts has a newer handshake timestamp: written to the state database at once
 * (mm_daemon_commit_soon), so that a message 1 recorded before a restart is refused
 * after it too (mm_daemon_peer_times_load reads it back). */
void mm_daemon_peer_hs_save(struct mm_daemon *d, struct mm_dpeer *p);

/* When the peer was last in sync with this node (wall ms, 0 = never), this run or
 * before: what the tombstone GC waits for (daemon.c gc_cb). */
uint64_t mm_peer_synced_ms(const struct mm_dpeer *p);

/* Whether this node's state is too old to merge (crdt mm_gc_stale): it holds users
 * and has been in sync with none of its peers for gc_max (less a margin), though with
 * some before.  *last_r = its last time in sync with any (0 = never). */
bool mm_daemon_stale(struct mm_daemon *d, uint64_t *last_r);

/* `mailmesh run`'s exit status when it refuses to start on a stale state. */
#define MM_EXIT_STALE 3

/* peer.c */
int mm_peers_start(struct mm_daemon *d);       /* listener, UDP socket, sessions, dials */
void mm_peers_stop(struct mm_daemon *d);       /* closes every connection and socket */
void mm_peers_flush(struct mm_daemon *d);      /* writes each connection's gathered output */
void mm_peer_dial_all(struct mm_daemon *d);
/* Closes each connection whose peer has taken none of its waiting output for two
 * minutes (peer.c, WRITE_STALL_MS); run from the gossip timer. */
void mm_peers_check_stalled(struct mm_daemon *d, uint64_t now_ms);
/* Takes a new peers file (from mm_config_peers_load(), with our own line self or NULL)
 * into the running daemon: peers no longer listed are disconnected and forgotten, new
 * ones are set up and dialled, and a peer whose host or port changed is connected to
 * again; the others keep their connections.  Takes ownership of peers (the old list
 * is freed).  Logs what changed; 0, or -ENOMEM with the daemon's peers as before. */
int mm_peers_reload(struct mm_daemon *d, struct mm_peers *peers, const struct mm_peer *self);
struct mm_dpeer *mm_peer_by_sync(struct mm_daemon *d, const struct mm_sync *s);

/* watch.c */
int mm_watch_refresh(struct mm_daemon *d);     /* watches every dir the store lists */
void mm_watch_stop(struct mm_daemon *d);
/* Drops every watch and the inotify instance and asks for a full scan, whose refresh
 * watches everything with a new instance: what an error reading the events does. */
void mm_watch_restart(struct mm_daemon *d);
void mm_scan_request(struct mm_daemon *d, const char *user, const char *folder);
void mm_scan_run(struct mm_daemon *d);         /* rescans what is dirty, commits, pushes */
void mm_scan_forget(struct mm_daemon *d);      /* drops the rescans asked for so far */
/* Whether a scan of (user, folder) is asked for and not yet run (a full scan counts). */
bool mm_scan_requested(const struct mm_daemon *d, const char *user, const char *folder);
void mm_watch_lock_waits(struct mm_daemon *d); /* rescans soon what a scan left to Dovecot's uidlist lock */

/* bodies.c */
struct mm_body_ops;
void mm_bodies_ops(struct mm_daemon *d, struct mm_body_ops *ops_r);
void mm_bodies_flush(struct mm_daemon *d);     /* places staged bodies (each loop turn) */
void mm_bodies_commit_check(struct mm_daemon *d); /* commits placed files' index once bodies stop */
void mm_bodies_catchup_note(struct mm_daemon *d); /* logs the start and end of a catch-up */
void mm_bodies_store_failed(struct mm_daemon *d, int err); /* holds fetches, backing off */
void mm_bodies_store_kept(struct mm_daemon *d, bool commit_only); /* ends that */

/* control.c */
int mm_control_start(struct mm_daemon *d);
void mm_control_stop(struct mm_daemon *d);

/* daemon.c */
/* What SIGHUP does (and the control socket's "reload"): mailmesh.conf's log_level and
 * the peers file read again (docs/operations.md).  0, or a negative errno when the
 * peers file was not taken (d->reload_error says why), -EAGAIN while starting or
 * stopping.  A mailmesh.conf that does not parse is only noted in
 * d->config_reload_error. */
int mm_daemon_reload(struct mm_daemon *d);
void mm_daemon_commit_soon(struct mm_daemon *d);
void mm_daemon_push(struct mm_daemon *d, const struct mm_delta *delta);
void mm_daemon_handle_closed(uv_handle_t *h);  /* counts closed handles; frees nothing */
void mm_daemon_effect(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec);
bool mm_daemon_catching_up(const struct mm_daemon *d); /* missing more bodies than a live node would */

#endif
