/*
 * internal.h — the simulator's shared internal structures: the run (struct sim), its
 * nodes and links, the event queue and the oracle.  Only the files of sim/ include it.
 */
#ifndef MM_SIM_INTERNAL_H
#define MM_SIM_INTERNAL_H

#include "proto/channel.h"
#include "proto/link.h"
#include "crdt/uid.h"
#include "proto/lead.h"
#include "sim/sim.h"

#define SIM_MAX_USERS 16
#define SIM_MAX_PARTS 4
#define SIM_BW_BYTES_PER_MS 10000   /* 80 Mbit/s links */
#define SIM_HWM (256 * 1024)        /* stream send buffer high-water mark */
#define SIM_LWM (64 * 1024)         /* ... and low-water mark */
#define SIM_RTO_MS 200              /* a lost stream segment costs one retransmit */
#define SIM_RECONNECT_MIN_MS 500
#define SIM_RECONNECT_MAX_MS 2500
#define SIM_BODY_MAX (64u << 20)
#define SIM_CAPTURE 64              /* datagrams the attacker remembers to replay */
#define SIM_MAX_SKEW_MS 60000       /* the daemon's default max_skew (node/config.h) */
#define SIM_CAPTURE_HS 16           /* handshake messages 1 it remembers */
#define SIM_NFOLDERS 5              /* sim_folders[] */
#define SIM_UID_ROUNDS 3            /* plan rounds per node and pass (uid.c) */
#define SIM_UID_DELAY_MS 20         /* effects -> UID pass (daemon's COMMIT_DELAY_MS) */
#define SIM_QUIET_ROUNDS 10         /* gossip intervals after convergence that
                                     * must be quiet: no record changes, no DIGEST
                                     * that finds different roots ... */
#define SIM_QUIET_FETCH_MS 30000     /* ... plus the fetch scheduler's longest backoff
                                     * (proto/fetch.h backoff_max_ms default): a body
                                     * whose message was expunged goes at the next try */
#define SIM_HOLD_MS 10000           /* a held body waits at most this for progress
                                     * (node/store.c HOLD_MS) */

enum sim_ev_type {
	EV_DGRAM = 1,      /* datagram arrives at node, from peers[slot] */
	EV_STREAM,         /* stream message arrives (tag = link epoch) */
	EV_WRITABLE,       /* node's stream to peers[slot] drained (tag = epoch) */
	EV_TICK,           /* gossip interval of node (tag = node incarnation) */
	EV_COMMIT,         /* periodic durable commit of node (tag = incarnation) */
	EV_OP,             /* next workload operation */
	EV_FAULT_RESET,    /* next random stream reset */
	EV_FAULT_PART,     /* next random partition */
	EV_FAULT_CRASH,    /* next random crash */
	EV_PART_HEAL,      /* partition `slot` heals */
	EV_RESTART,        /* node comes back (tag = incarnation that crashed) */
	EV_RECONNECT,      /* link node/peers[slot] tries to connect (tag = epoch) */
	EV_STREAM_TIMEOUT, /* a stalled stream gives up (tag = epoch) */
	EV_HEAL,           /* end of the fault phase */
	EV_CHECK,          /* convergence check */
	EV_HOOK,           /* measurement callback */
	EV_ATTACK,         /* next attacker action (forged / replayed bytes) */
	EV_UIDPASS,        /* node plans its dirty folders' UIDs (tag = incarnation) */
	EV_UIDHOLD,        /* held bodies or re-files of (user, folder) = slot may time out
	                    * (tag = incarnation) */
};

struct sim_ev {
	uint64_t t, seq;
	uint8_t type, chan;
	uint32_t node, slot, tag, len;
	uint8_t *data;
};

struct sim_node;

/* One end of a link: this node's session with peer `idx`. */
struct sim_peer {
	struct sim_node *owner;
	uint32_t idx;          /* peer node */
	uint32_t back;         /* our slot in the peer's peers[] */
	struct mm_sync *sync;  /* NULL while the owner is down */
	uint32_t epoch;        /* stream incarnation, equal on both ends */
	bool up;               /* stream connected (equal on both ends) */
	bool reconnecting;     /* an EV_RECONNECT is pending (both ends) */
	bool want_writable;
	uint64_t tx_free;      /* when the sender's link is free again (bandwidth) */
	uint64_t stream_last;  /* last delivery time scheduled (keeps order) */
	uint64_t inflight;     /* bytes sent, not yet delivered */
	/* The Noise channel of the current connection (NULL while the link is down), as
	 * node/peer.c keeps one per TCP connection; the session is connected only once
	 * it is established (attached). */
	struct mm_ch *ch;
	bool attached;
	struct mm_link_rx rx;  /* application message being reassembled (proto/link.h) */
	/* responder: message 1's timestamp of the current connection, the peer's last_ts
	 * once the connection is confirmed (node/peer.c's mm_conn.hs_ts) */
	uint8_t hs_ts[MM_CH_TAI64N_LEN];
	/* responder memory (node/peer.c's mm_dpeer.last_ts): newest handshake timestamp
	 * accepted from this peer; kept as the daemon's state database keeps it
	 * (saved_hs_ms, written at confirmation) and restored at start by the daemon's
	 * rule, proto/link.h mm_link_ts_restore */
	uint8_t last_ts[MM_CH_TAI64N_LEN];
	uint64_t saved_hs_ms;
	/* The tombstone GC's view of this peer (crdt.h), as node/daemon.c gc_cb: synced_ms
	 * and known_ms (the owner's first start) survive a crash, as in the daemon's state
	 * database; the sample does not */
	struct mm_gc_peer gc;
};

/* Mailbox view entry, maintained from the effect callbacks only. */
enum { VIEW_LIVE = 1, VIEW_TOMB = 2, VIEW_FOLDER = 3, VIEW_GONE = 4 /* tombstone collected */ };
struct sim_view {
	uint8_t state;
	uint8_t flags;         /* message: flag bits; folder: exists | subscribed << 1 */
	uint64_t kwhash;       /* XOR of hashes of the set keywords */
	uint64_t folder;       /* hash of the folder name */
	uint8_t body[MM_ID_LEN];
};

struct sim_body {
	uint8_t *bytes;
	uint64_t len;
};

/* The model of Dovecot's dovecot-uidlist (uid.c).  One listing per (user, folder):
 * its UIDVALIDITY, NEXTUID (a new entry may only take a UID >= next; next never goes
 * down under one UIDVALIDITY) and how many entries it has; the entries themselves
 * live in the node's `listed` map, [user][key] -> sim_lent (uid 0 = not listed,
 * entries are never removed from the map, only zeroed).  Written under the lock
 * with fsync by Dovecot and by mailmesh, so durable as soon as written: a crash
 * keeps it. */
struct sim_listing {
	uint32_t uv, next, count;
};
struct sim_lent {
	uint32_t uid;
	uint8_t folder;
	uint8_t placed;        /* its file is in the folder (durable; listed or not) */
	uint8_t held;          /* its body is here, held back (uid.c; memory only) */
};

struct sim_node {
	struct sim *sim;
	uint32_t idx;
	uint64_t id;
	bool alive;
	uint32_t gen;          /* incarnation: events of an older one are ignored */
	int64_t skew;          /* ms added to the global clock */
	unsigned slow;         /* 1 or cfg.slow_factor */
	struct mm_state *state;
	struct mm_clock clock;
	struct mm_gossip *gossip;
	struct mm_fetch *fetch;
	struct mm_lead *lead;   /* UID-authority election (proto/lead.h) */
	struct sim_peer *peers;
	uint32_t npeers, cap_peers;
	/* durable snapshot (last commit) */
	uint8_t *snap;
	size_t snap_len, snap_cap;
	uint64_t snap_clock;
	bool has_snap;
	struct sim_map bodies; /* [user idx][id] -> struct sim_body */
	struct sim_map view;   /* [user idx][key] -> struct sim_view */
	uint64_t writes_open;  /* body write handles open */
	/* IMAP UIDs (uid.c) */
	struct sim_map listed; /* [user idx][key] -> struct sim_lent */
	struct sim_listing lists[SIM_MAX_USERS][SIM_NFOLDERS];
	uint8_t uid_dirty[SIM_MAX_USERS]; /* folders (bits) whose plan must run */
	bool uid_queued;       /* an EV_UIDPASS is pending */
	bool uid_auth;         /* this node is the UID authority now */
	bool catching_up;      /* missing many bodies: no UID needs raised (store.c) */
	/* virtual time a body of (user, folder) was last placed or arrived (0 = never;
	 * memory only, as node/store.c folder.progress_ms): held bodies wait for it */
	uint64_t hold_progress[SIM_MAX_USERS][SIM_NFOLDERS];
	/* re-files waiting for lower moves (crdt/uid.h mm_uid_hold_*; memory only, as
	 * node/store.c folder.uid_hold) */
	struct mm_uid_hold refile_hold[SIM_MAX_USERS][SIM_NFOLDERS];
	uint64_t started;      /* virtual time of the last start (authority grace) */
	uint8_t priv[32], pub[32]; /* static X25519 key pair (id = mm_node_id(pub)) */
};

struct sim_part {
	bool active, oneway;
	uint64_t heal;
	uint8_t *side;         /* side[i] = 1: node i is in group A */
};

/* Oracle register write: the latest write of one register by (t, node). */
struct sim_oreg {
	uint64_t t, node;
	uint8_t value;
};
/* Oracle: a delivered message. */
struct sim_odel {
	uint8_t body[MM_ID_LEN];
	uint32_t origin;
};
struct sim_dkey {
	uint8_t user;
	uint8_t key[MM_KEY_LEN];
};

struct sim {
	struct sim_config cfg;
	struct sim_result *res;
	struct sim_rng rng;
	uint64_t now, seq;
	struct sim_ev *heap;
	size_t nheap, capheap;
	struct sim_node *nodes;
	unsigned n;
	char users[SIM_MAX_USERS][64];
	unsigned nusers;
	bool faults_on, workload_on, healed, stop;
	/* after convergence: a quiet window (SIM_QUIET_ROUNDS gossip intervals and
	 * SIM_QUIET_FETCH_MS) that must change nothing, then the run stops (check.c
	 * sim_quiet_begin / sim_quiet_check) */
	uint64_t quiet_until;
	uint64_t quiet_changed, quiet_differs;
	uint64_t differs;          /* DIGESTs that showed different roots (all sessions) */
	struct sim_part parts[SIM_MAX_PARTS];
	struct mm_delta *delta;    /* scratch for local changes */
	/* oracle */
	struct sim_map delivered;  /* [user][key] -> sim_odel */
	struct sim_map expunged;   /* [user][key] -> uint8_t */
	struct sim_map regs;       /* [user][key][regid u16] -> sim_oreg */
	struct sim_dkey *dkeys;    /* delivered keys in order, to pick from */
	size_t ndkeys, capdkeys;
	uint64_t next_msg;
	bool plain;                /* deliveries: INBOX, no flags, no keywords */
	/* what an on-path attacker recorded: sealed datagrams (with their destination)
	 * and handshake messages 1, to replay later (EV_ATTACK) */
	struct sim_capture {
		uint32_t to, len;
		uint8_t *bytes;
	} cap_dgram[SIM_CAPTURE], cap_hs[SIM_CAPTURE_HS];
	unsigned ncap_dgram, ncap_hs;
	uint8_t attacker_priv[32]; /* a key no node trusts */
	/* IMAP UIDs (uid.c): the first message every (user, folder, UIDVALIDITY, UID)
	 * named on any node, the last register change */
	struct sim_map uid_seen;   /* [user][folder][uv u32][uid u32] -> sim_useen */
	uint64_t uid_last_change;  /* virtual time of the last UID register change */
	uint64_t folder_hash[SIM_NFOLDERS];
	/* trace ring */
	unsigned trace_head;
	/* measurement hooks */
	void (*on_new)(struct sim *s, struct sim_node *n, unsigned user, const uint8_t key[MM_KEY_LEN]);
	void (*on_round)(struct sim *s, struct sim_node *n, const struct mm_sync_stats *st);
	void (*on_hook)(struct sim *s);
	void *hook_arg;
};

/* Regids of the oracle: 0..5 flags, 16 + i keyword i, 32 exists, 33 subscribed. */
#define SIM_REG_KW 16
#define SIM_REG_EXISTS 32
#define SIM_REG_SUBSCRIBED 33

extern const char *const sim_keywords[];
extern const unsigned sim_nkeywords;
extern const char *const sim_folders[];
extern const unsigned sim_nfolders;

/* net.c */
void sim_ev_push(struct sim *s, const struct sim_ev *ev);
bool sim_ev_pop(struct sim *s, struct sim_ev *ev_r);
void sim_schedule(struct sim *s, uint64_t t, uint8_t type, uint32_t node, uint32_t slot, uint32_t tag);
int sim_net_send(void *arg, enum mm_chan chan, const uint8_t *msg, size_t len);
void sim_net_event(struct sim *s, struct sim_ev *ev);
void sim_link_reset(struct sim *s, struct sim_node *a, uint32_t slot, const char *why);
void sim_link_schedule_reconnect(struct sim *s, struct sim_node *a, uint32_t slot, uint64_t delay);
bool sim_blocked(const struct sim *s, uint32_t from, uint32_t to);
void sim_fault_event(struct sim *s, struct sim_ev *ev);
void sim_heal_all(struct sim *s);
/* Sends stream bytes (whole channel frames) from p's owner to its peer over the
 * current connection: bandwidth, loss (retransmits), stalls.  Returns 0, or -ENOTCONN
 * when the link is down or the peer is dead. */
int sim_net_stream(struct sim_peer *p, const uint8_t *bytes, size_t len);
/* Sends one datagram (already sealed, with its id header) from a to b: loss,
 * duplication, reordering, partitions.  Returns 0 or -ENOMEM. */
int sim_net_dgram(struct sim *s, struct sim_node *a, struct sim_node *b, const uint8_t *bytes,
                  size_t len);

/* chan.c: the real Noise channel (proto/channel.c) on every simulated connection */
/* The link a <-> a->peers[slot] has just connected: gives both ends a new channel; the
 * end whose public key sorts lower is the initiator and sends message 1 (as
 * node/peer.c: the lower key dials).  Returns 0 or a negative errno. */
int sim_chan_open(struct sim *s, struct sim_node *a, uint32_t slot);
/* Frees p's channel (counting its rekeys) and forgets a partial message; the
 * session is no longer attached.  NULL-channel safe. */
void sim_chan_close(struct sim *s, struct sim_peer *p);
/* Stream bytes of q's connection arrived at q's owner: feeds the channel (handshake,
 * transport frames -> mm_sync_recv).  A channel error on a real link is a violation
 * (the network never alters bytes) and resets the link. */
void sim_chan_stream_recv(struct sim *s, struct sim_peer *q, const uint8_t *bytes, size_t len);
/* Application stream message from p's session: 0, -ENOTCONN, or the channel's error. */
int sim_chan_stream_send(struct sim_peer *p, const uint8_t *msg, size_t len);
/* Datagram from p's session: sealed with p's channel behind the sender's node id,
 * as node/peer.c.  Dropped (0) while the channel is not established. */
int sim_chan_dgram_send(struct sim_peer *p, const uint8_t *msg, size_t len);
/* A datagram arrived at node b: the id picks the session, the channel opens it
 * (replay window, AEAD), mm_sync_recv gets it.  Rejections are counted. */
void sim_chan_dgram_recv(struct sim *s, struct sim_node *b, const uint8_t *bytes, size_t len);
/* One attacker action (EV_ATTACK): forged or replayed datagram, replayed handshake
 * message 1, a handshake from an unknown key, or garbage on a new connection. */
void sim_attack_event(struct sim *s);
/* Frees what the attacker captured. */
void sim_chan_free_captures(struct sim *s);

/* node.c */
uint64_t sim_node_now(const struct sim_node *n);
/* Live messages of n whose body n lacks. */
uint64_t sim_node_missing_bodies(struct sim_node *n);
int sim_node_start(struct sim *s, struct sim_node *n);
void sim_node_crash(struct sim *s, struct sim_node *n);
int sim_node_commit(struct sim_node *n);
/* The periodic tombstone GC (cfg.gc_grace_ms), before the periodic commit. */
void sim_node_gc(struct sim_node *n);
void sim_node_free(struct sim_node *n);
void sim_node_eff(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec);
int sim_user_index(const struct sim *s, const char *user);
uint64_t sim_kwhash(const struct mm_rec *r);
uint64_t sim_strhash(const char *str);
int sim_node_store_body(struct sim_node *n, unsigned user, const uint8_t id[MM_ID_LEN],
                        const uint8_t *bytes, size_t len);

/* workload.c */
void sim_workload_op(struct sim *s);
/* Delivers one generated message at node n for user u (size 0 = random); key_r gets
 * its key.  Returns 1, or a negative errno. */
int sim_deliver(struct sim *s, struct sim_node *n, unsigned u, size_t size, uint8_t key_r[MM_KEY_LEN]);

/* uid.c: the model of Dovecot's listing and the replica-side UID rule (crdt/uid.h) */
struct sim_useen {
	uint8_t key[MM_KEY_LEN];
	uint8_t contested;
};
/* Index of a folder name in sim_folders[], or -1. */
int sim_folder_index(const char *name);
/* Index of the folder whose name hashes to h (sim_view.folder), or -1. */
int sim_folder_of_hash(const struct sim *s, uint64_t h);
/* The folder record that gives (user, folder) its UIDVALIDITY on n: present and the
 * folder exists or deliveries keep it visible (as node/store.c); else NULL. */
const struct mm_rec *sim_uid_folder_rec(struct sim_node *n, unsigned u, unsigned f);
/* Effect hook (from sim_node_eff): marks the folder of rec dirty, takes expunged
 * messages out of the listing, notes UID register changes. */
void sim_uid_effect(struct sim_node *n, unsigned u, enum mm_effect eff, const struct mm_rec *rec);
/* A body arrived at n for user u: every folder of u is planned again. */
void sim_uid_body(struct sim_node *n, unsigned u);
/* Local delivery: the UID the node's "Dovecot" gives a new message of folder f
 * delivered with `stamp` (its NEXTUID, under the UIDVALIDITY the delivery leaves the
 * folder with); sim_uid_delivered lists it once its key is known. */
uint32_t sim_uid_for_delivery(struct sim_node *n, unsigned u, unsigned f, mm_hlc stamp);
void sim_uid_delivered(struct sim_node *n, unsigned u, unsigned f, const uint8_t key[MM_KEY_LEN],
                       uint32_t uid);
/* The daemon's rule (node/daemon.c uid_authority_update), at each gossip tick. */
void sim_uid_authority(struct sim *s, struct sim_node *n);
/* EV_UIDPASS: n plans every dirty folder and applies the plans. */
void sim_uid_pass(struct sim *s, struct sim_node *n);
/* EV_UIDHOLD: SIM_HOLD_MS after a body of (user u, folder f) arrived at n, or
 * MM_UID_HOLD_MS after a plan first held a re-file there: the folder
 * is planned again, which releases its held bodies if nothing arrived meanwhile. */
void sim_uid_hold_timeout(struct sim_node *n, unsigned u, unsigned f);
/* n stops (crash): held bodies and their progress times are forgotten (memory); the
 * bodies stay in the store and are placed anew after the restart. */
void sim_uid_stop(struct sim_node *n);
/* Number of nodes that are UID authorities now. */
unsigned sim_uid_authorities(const struct sim *s);

/* check.c */
void sim_violation(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sim_trace(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool sim_converged(struct sim *s);
void sim_check_final(struct sim *s);
void sim_explain_divergence(struct sim *s);
/* Converged: notes the records the sessions changed so far (sim_quiet_check
 * compares)... */
void sim_quiet_begin(struct sim *s);
/* ... and, once the DIGEST answers sent before convergence have landed, the DIGESTs
 * that showed different roots so far. */
void sim_quiet_rounds(struct sim *s);
/* End of the quiet window: still converged, UIDs settled and no UID register changed
 * since convergence, no body still wanted, and (without the tombstone GC, whose
 * horizons are new records) no record changed since sim_quiet_begin and no DIGEST
 * showed different roots since sim_quiet_rounds.  A livelock fails here. */
void sim_quiet_check(struct sim *s);
void sim_trace_finish(struct sim *s);
/* IMAP UIDs settled: every node lists every live message it holds under the state's
 * UID, no need above a UID, no entry for anything else.  violations: report the
 * first differences as violations (else silent). */
bool sim_uids_settled(struct sim *s, bool violations);

#endif
