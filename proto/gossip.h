/*
 * gossip.h — the node-level part of replication: which peer to gossip with each
 * interval, and which peers get a live push.
 *
 * Each node holds one mm_sync session per peer and one mm_gossip that knows them all.
 * Every gossip interval the driver calls mm_gossip_tick(): it sends a DIGEST to one
 * peer chosen at random (anti-entropy: any difference is found within a few rounds)
 * and runs every session's timers.  A local change goes to mm_gossip_push(): to every
 * connected peer in a small cluster (<= push_all_max peers), else to `fanout` random
 * connected peers, which relay what was new to them (mm_gossip_relay, Plumtree-style
 * eager push) so a change reaches everybody in O(log N) hops without waiting for the
 * anti-entropy rounds.
 *
 * Sans-I/O and deterministic: randomness comes from the driver (seed at creation and
 * bytes at every tick, mixed into a small PRNG), time from now_ms.
 */
#ifndef MM_PROTO_GOSSIP_H
#define MM_PROTO_GOSSIP_H

#include <stddef.h>
#include <stdint.h>

#include "crdt/crdt.h"

struct mm_sync;
struct mm_gossip;

struct mm_gossip_config {
	unsigned fanout;            /* push targets in a large cluster; 0 = 3 */
	unsigned push_all_max;      /* push to every peer up to this many peers; 0 = 8 */
	uint64_t seed;              /* PRNG seed (driver's randomness) */
};

/* New gossip (cfg copied; NULL = defaults, seed 0).  0, -ENOMEM. */
int mm_gossip_new(const struct mm_gossip_config *cfg, struct mm_gossip **g_r);
/* Frees it (not the sessions); NULLs *gp; NULL-safe. */
void mm_gossip_free(struct mm_gossip **gp);

/* Adds / removes a peer session (not owned).  add: 0, -EEXIST, -ENOMEM.
 * remove: 0 or -ENOENT. */
int mm_gossip_add(struct mm_gossip *g, struct mm_sync *s);
int mm_gossip_remove(struct mm_gossip *g, struct mm_sync *s);
size_t mm_gossip_count(const struct mm_gossip *g);

/* One gossip interval: mixes rnd (may be NULL/0) into the PRNG, runs mm_sync_tick on
 * every session, and sends a DIGEST to one peer chosen uniformly at random.  Returns
 * the index (order of addition, after removals compact) of that peer, or -ENOENT when
 * there are no peers. */
int mm_gossip_tick(struct mm_gossip *g, uint64_t now_ms, const uint8_t *rnd, size_t rnd_len);

/* Pushes a local change to peers as described above (except `except`, may be NULL).
 * Sessions whose stream is down are skipped (anti-entropy repairs them).  Returns the
 * number of sessions the delta was pushed to, or a negative errno. */
int mm_gossip_push(struct mm_gossip *g, const struct mm_delta *d, struct mm_sync *except,
                   uint64_t now_ms);

/* Relay callback for mm_sync_config.relay (arg = the struct mm_gossip *): in a large
 * cluster (more than push_all_max peers) forwards what a push made new here to
 * `fanout` random peers other than `from`; in a small cluster the originator pushed to
 * everyone, so it does nothing. */
void mm_gossip_relay(void *arg, struct mm_sync *from, const struct mm_delta *d, uint64_t now_ms);

#endif
