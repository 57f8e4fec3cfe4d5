/*
 * sim.h — internals of the deterministic cluster simulator (build/mailmesh-sim).
 *
 * One process runs N nodes.  Each node is the real crdt/ state and the real proto/
 * replication sessions (mm_sync per peer, one mm_gossip, one mm_fetch), driven by a
 * virtual clock and a virtual network that carries the MM_CHAN_DATAGRAM and
 * MM_CHAN_STREAM messages of struct mm_sync_io, sealed and framed by the real Noise
 * channel (proto/channel.c), with faults (loss, delay, reordering, duplication,
 * partitions, stream resets, crashes, clock skew, slow nodes, a replaying and forging
 * attacker).
 * Everything random comes from one seeded PRNG owned by the run (struct sim_rng), the
 * event queue is ordered by (time, sequence number), and nothing reads the real clock,
 * so one seed gives byte-identical output.  docs/simulation.md explains the model.
 *
 * Files: rng.c (PRNG), map.c (deterministic hash table), net.c (event queue, links,
 * faults), chan.c (the Noise channel on every connection, the attacker), node.c (one
 * node: state, sessions, body store, mailbox view, durability),
 * uid.c (each node's model of Dovecot's UID listing and the UID rule of crdt/uid.h),
 * workload.c (operations and the oracle log), check.c (invariants), run.c (phases of
 * a run), json.c (output), main.c (CLI, sweep, measurements).
 */
#ifndef MM_SIM_H
#define MM_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crdt/crdt.h"
#include "proto/fetch.h"
#include "proto/gossip.h"
#include "proto/sync.h"

/* ---- PRNG: xoshiro256** seeded with splitmix64 ------------------------------ */

struct sim_rng {
	uint64_t s[4];
};

/* Seeds the generator; the same seed always gives the same sequence. */
void sim_rng_seed(struct sim_rng *r, uint64_t seed);
uint64_t sim_rng_next(struct sim_rng *r);
/* Uniform in [0, n); 0 when n == 0. */
uint64_t sim_rng_below(struct sim_rng *r, uint64_t n);
/* Uniform in [lo, hi] (hi >= lo). */
uint64_t sim_rng_range(struct sim_rng *r, uint64_t lo, uint64_t hi);
/* Uniform double in [0, 1). */
double sim_rng_unit(struct sim_rng *r);
/* True with probability p. */
bool sim_rng_chance(struct sim_rng *r, double p);
void sim_rng_bytes(struct sim_rng *r, uint8_t *buf, size_t n);
/* splitmix64 step of x: a good 64-bit mix, used to derive independent values. */
uint64_t sim_mix64(uint64_t x);

/* ---- deterministic open-addressing hash table ----------------------------------
 * Fixed key length and value size per table; entries are never removed (only the whole
 * table is cleared); iteration order depends only on the sequence of insertions. */

struct sim_map {
	size_t klen, vlen, slot;  /* slot = 1 (used) + klen + vlen, rounded */
	size_t cap, n;            /* cap is a power of two */
	uint8_t *slots;
};

void sim_map_init(struct sim_map *m, size_t klen, size_t vlen);
void sim_map_free(struct sim_map *m);
void sim_map_clear(struct sim_map *m);
/* The value of key, or NULL. */
void *sim_map_get(const struct sim_map *m, const void *key);
/* The value of key, inserted zero-filled when absent (*created_r says which, may be
 * NULL).  Aborts the program on allocation failure (the simulator cannot go on). */
void *sim_map_put(struct sim_map *m, const void *key, bool *created_r);
/* Iteration: *pos starts at 0; returns the next used slot's key (value in *val_r), or
 * NULL at the end. */
const void *sim_map_next(const struct sim_map *m, size_t *pos, void **val_r);

/* ---- configuration and results ------------------------------------------------ */

#define SIM_MAX_VIOLATIONS 16
#define SIM_TRACE_LINES 24
#define SIM_TRACE_LEN 200
#define SIM_EPOCH_MS 1700000000000ULL /* virtual wall clock at time 0 (Nov 2023) */

struct sim_config {
	uint64_t seed;
	unsigned nodes;
	unsigned degree;          /* peers per node; 0 = everybody up to 64 nodes, else 32 */
	unsigned users;           /* distinct users of the workload */
	uint32_t gossip_ms;       /* gossip interval (one "round") */
	uint32_t commit_ms;       /* periodic durable commit of each node */
	bool push;                /* live push + relay (false: anti-entropy only) */
	unsigned fanout;          /* mm_gossip fanout (0 = its default) */
	/* workload (during [0, phase_ms)) */
	double ops_per_s;         /* operations per simulated second, cluster-wide */
	double large_p;           /* share of deliveries with a body above the inline size */
	double conflict_p;        /* share of concurrent same-message flag changes */
	/* faults (during [0, phase_ms); afterwards the network heals) */
	uint64_t phase_ms;
	double loss;              /* datagram loss; stream segments lost cost a retransmit */
	uint32_t delay_min_ms, delay_max_ms; /* one-way delay, uniform */
	double tail_p;            /* share of messages with an extra tail delay */
	uint32_t tail_ms;         /* up to this much extra (exponential-ish) */
	double reorder;           /* share of datagrams held back up to reorder_ms */
	uint32_t reorder_ms;
	double dup;               /* share of datagrams delivered twice */
	double resets_per_s;      /* stream resets, cluster-wide rate */
	double partitions_per_s;  /* partitions starting, cluster-wide rate */
	uint32_t partition_ms;    /* mean partition duration */
	double oneway_p;          /* share of partitions that are one-way */
	double crashes_per_s;     /* node crashes, cluster-wide rate */
	uint32_t down_ms;         /* mean downtime of a crashed node */
	uint32_t skew_ms;         /* each node's clock off by up to +-skew_ms */
	double slow_p;            /* share of slow nodes */
	unsigned slow_factor;     /* their delays x factor, bandwidth / factor */
	uint32_t stream_timeout_ms; /* a stalled (partitioned) stream resets after this */
	uint64_t rekey_bytes;     /* channel: a sender rekeys after this many bytes ... */
	uint64_t rekey_ms;        /* ... or this long (low, so that runs rekey often) */
	double attacks_per_s;     /* attacker actions (forged/replayed datagrams and
	                           * handshakes, garbage streams), cluster-wide rate */
	uint64_t bound_ms;        /* convergence must happen within this after healing */
	bool trace;               /* print the trace ring at the end even on success */
	/* IMAP UIDs (sim/uid.c): each node models Dovecot's listing per folder and runs
	 * the replica rule of crdt/uid.h; the lowest connected node id is the authority */
	bool uids;                /* the model on (default) */
	bool uid_push;            /* push the plan's register changes at once (default, as
	                           * the daemon's commit_cb pushes mm_store_commit_delta;
	                           * off: they travel by anti-entropy, the old daemon) */
	bool uid_hold;            /* replicas list arriving bodies in UID order, holding
	                           * back those above NEXTUID while others of the folder
	                           * are missing (default, node/store.c hold_body) */
	bool uid_refile_hold;     /* replicas hold re-files while a lower move may still
	                           * come (default, mm_uid_plan's hold, as node/store.c) */
	uint32_t uid_grace_ms;    /* a started node is no authority this long while a
	                           * lower-id peer is configured (daemon: 5000) */
	/* tombstone GC (crdt mm_gc_horizon_ms, as node/daemon.c gc_cb), at each periodic
	 * commit: 0 = off (default).  The horizon is rounded down to gc_margin_ms, as the
	 * daemon rounds it to the hour it uses as margin. */
	uint64_t gc_grace_ms;
	uint64_t gc_max_ms;       /* a peer not in sync this long is not waited for */
	uint64_t gc_margin_ms;    /* before a peer's last in-sync time (daemon: 1 h); must
	                           * cover a peer's commit delay (it held the tombstones
	                           * in memory then), clock skew and transit */
	bool gc_no_wait;          /* the old rule, now - gc_grace only (to show what the
	                           * peers' wait prevents: resurrections) */
	bool gc_no_bounds;        /* the rule before the peers' bounds: this node's own view
	                           * only (to show what they prevent under partitions) */
	unsigned sabotage;        /* self-test of the checker: 1 corrupts a stored body,
	                           * 2 hides a flag effect from a node's view (at healing),
	                           * 3 the last node never raises a UID need,
	                           * 4 the last node lists re-filed messages one UID off */
};

/* Defaults for every field (seed 1, 5 nodes, mild faults). */
void sim_config_defaults(struct sim_config *c);

struct sim_result {
	uint64_t seed;
	unsigned nodes;
	bool converged;
	uint64_t heal_ms;            /* when faults stopped */
	uint64_t converge_ms;        /* when all nodes were found converged (0 = never) */
	uint64_t rounds_to_converge; /* gossip intervals from healing to convergence */
	uint64_t sim_time_ms;
	uint64_t messages, bytes_sent, datagrams_sent, stream_msgs;
	uint64_t dropped, duplicated;
	uint64_t resets, partitions, crashes;
	uint64_t ops, deliveries, expunges, flag_ops, folder_ops, conflicts;
	uint64_t rounds_done, rounds_aborted, bodies_fetched, records_rejected, proto_errors;
	/* the Noise channel (proto/channel.c) under every message */
	uint64_t handshakes;          /* channels established (both ends) */
	uint64_t rekeys;              /* Rekey() frames sent, all channels */
	uint64_t datagrams_rejected;  /* replayed, too old, truncated or not authentic */
	uint64_t dgram_replayed, dgram_too_old, dgram_forged; /* ... by kind */
	uint64_t handshakes_rejected; /* message 1 refused: replay, unknown key, garbage */
	uint64_t attacks;             /* attacker actions */
	uint64_t hs_replays_accepted; /* replayed message 1 accepted (the responder
	                               * had restarted and forgotten the timestamp) */
	uint64_t gc_dropped;          /* tombstones dropped by the GC, all nodes */
	/* IMAP UIDs (sim/uid.c) */
	uint64_t uid_listed;          /* listing entries added (deliveries, replicas) */
	uint64_t uid_refiled;         /* entries moved to another UID (re-filed) */
	uint64_t uid_held;            /* bodies held back for lower UIDs (not listed yet) */
	uint64_t uid_refiles_held;    /* re-files that waited for a lower move (per plan) */
	uint64_t uid_moves;           /* set_uid by an authority of a message with a UID */
	uint64_t uid_firsts;          /* set_uid of a message's first UID by a replica */
	uint64_t uid_needs;           /* needs raised (set_need that grew the register) */
	uint64_t uid_resets;          /* listings started over under a new UIDVALIDITY */
	uint64_t uid_conflicts_seen;  /* (user, folder, UIDVALIDITY, UID) shown for two
	                               * different messages (on two nodes) during the run */
	uint64_t uid_settle_rounds;   /* gossip intervals from healing to the last UID
	                               * register change (0: none after healing) */
	uint64_t uid_max_authorities; /* most nodes that were authority at one time */
	unsigned uid_authorities;     /* authorities at the end */
	unsigned n_violations;
	char violations[SIM_MAX_VIOLATIONS][SIM_TRACE_LEN];
	unsigned n_trace;
	char trace[SIM_TRACE_LINES][SIM_TRACE_LEN]; /* oldest first */
};

/* ---- the run ------------------------------------------------------------------ */

struct sim;
struct sim_node;

/* Runs one simulation with cfg and fills *res.  Returns 0 when every invariant held
 * and the cluster converged within the bound, 1 when not (res says why), negative
 * errno when the run could not be set up (e.g. -ENOMEM, -EINVAL for a bad config). */
int sim_run(const struct sim_config *cfg, struct sim_result *res);

/* Draws a VOPR-style random configuration for `seed`: node count in [2, max_nodes],
 * fault rates and workload from the seed's own PRNG. */
void sim_config_random(struct sim_config *c, uint64_t seed, unsigned max_nodes);

/* Measurements (docs/simulation.md).  spread: one message delivered at a node, time
 * until all nodes hold it, `trials` times; writes mean/min/max rounds (gossip
 * intervals) and mean ms.  Returns 0 or negative errno / 1 on a violation. */
struct sim_spread {
	double mean_rounds, min_rounds, max_rounds, mean_ms;
	unsigned trials;
};
int sim_measure_spread(const struct sim_config *cfg, unsigned trials, struct sim_spread *r);

/* recon: two nodes share `base` messages, one gets d more with push off; the rounds
 * that reconcile them are measured. */
struct sim_recon {
	uint64_t d, base;
	uint64_t descent_bytes, record_bytes, round_trips, rounds, total_bytes;
};
int sim_measure_recon(const struct sim_config *cfg, uint64_t base, uint64_t d, struct sim_recon *r);

/* ---- output (json.c) ---------------------------------------------------------- */
#include <stdio.h>
void sim_print_human(FILE *f, const struct sim_config *c, const struct sim_result *r);
void sim_print_json(FILE *f, const struct sim_config *c, const struct sim_result *r);

#endif
