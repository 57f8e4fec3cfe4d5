/*
 * lead.h — which node is the cluster's IMAP UID authority (crdt/uid.h), agreed by
 * gossip rather than by who happens to be connected.
 *
 * The authority is the live node with the lowest id.  "Connected to no lower peer"
 * is not enough: when not every node talks to every other (a peers file that lists
 * only some nodes, a link that stays cut while the nodes behind it are up), several
 * nodes would each see no lower peer and move the same messages against each other
 * forever (the 1000-node simulation did).  So every DIGEST carries the lowest live
 * node id the sender knows and that node's latest heartbeat (its own clock in ms,
 * which only it advances); a node believes a lower node alive while that node's
 * heartbeat keeps rising, and forgets it expire_ms after the last rise.  Heartbeats
 * are compared per node only, so clocks need not agree; a dead node's last
 * heartbeat is accepted once per receiver (it must rise to count again), so it
 * cannot circulate forever.
 *
 * Sans-I/O and deterministic: time is passed in; nothing is sent from here (the sync
 * sessions put mm_lead_view() into their DIGESTs and hand received ones to
 * mm_lead_observe()).
 */
#ifndef MM_PROTO_LEAD_H
#define MM_PROTO_LEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mm_lead;

#define MM_LEAD_EXPIRE_MS 30000  /* default cfg.expire_ms */
#define MM_LEAD_MAX_KNOWN 64     /* lower nodes remembered (the lowest ones are kept) */
#define MM_LEAD_CATCHUP_MISSING 64 /* a node missing more bodies than this is catching up:
                                    * drivers make it not eligible (mm_lead_set_eligible) */

/* Whether a node missing `missing` bodies is catching up (the daemon and the simulator
 * both ask this, so they cannot drift apart). */
static inline bool mm_lead_catching_up(size_t missing)
{
	return missing > MM_LEAD_CATCHUP_MISSING;
}

struct mm_lead_config {
	uint64_t self;          /* this node's id (node ids are unique in the cluster) */
	uint32_t expire_ms;     /* a lower node whose heartbeat has not risen this long is
	                         * taken for dead; 0 = MM_LEAD_EXPIRE_MS.  It must exceed
	                         * the time a heartbeat takes to cross the cluster (a few
	                         * dozen gossip intervals for a thousand nodes) */
	uint32_t grace_ms;      /* after start, this node is no authority for this long (it
	                         * has not heard the others yet); 0 = none */
};

/* The expire_ms for a cluster gossiping every interval_ms: 40 intervals (a heartbeat
 * crosses a thousand nodes in a few dozen), at least 10 s, at most 10 min. */
uint32_t mm_lead_expire_for(uint32_t interval_ms);

/* New election state, started at now_ms (cfg copied).  0, -EINVAL (self 0), -ENOMEM. */
int mm_lead_new(const struct mm_lead_config *cfg, uint64_t now_ms, struct mm_lead **l_r);
/* Frees it; NULLs *lp; NULL-safe. */
void mm_lead_free(struct mm_lead **lp);

/* What this node advertises in a DIGEST: the lowest node id it believes alive (itself
 * when it knows none lower and is eligible) and that node's latest heartbeat (now_ms
 * for itself); (0, 0) when it knows none and is not eligible. */
void mm_lead_view(const struct mm_lead *l, uint64_t now_ms, uint64_t *id_r, uint64_t *beat_r);

/* A peer advertised (id, beat).  Any id but 0 counts as having heard a peer.  Then
 * ignored when id is this node or above it, or when beat is not above the last
 * heartbeat seen from id; otherwise id counts as alive until now_ms + expire_ms.
 * Returns true when the leader changed. */
bool mm_lead_observe(struct mm_lead *l, uint64_t id, uint64_t beat, uint64_t now_ms);

/* The lowest node id believed alive at now_ms (self when none lower). */
uint64_t mm_lead_leader(const struct mm_lead *l, uint64_t now_ms);

/* Whether this node may be the authority.  A node catching up (a joining or restarted
 * node still missing many bodies) should not be: it cannot list the folder's messages
 * in UID order yet, and as the authority it would move every one it could not show,
 * on every node, where a caught-up node would move none.  While not eligible it does
 * not advertise itself (peers take it for gone after expire_ms and the next lowest
 * node decides); eligible again, it takes over as its heartbeat spreads.  Default:
 * eligible. */
void mm_lead_set_eligible(struct mm_lead *l, bool eligible);

/* The node is up from now_ms (its grace counts from here: a daemon starts its grace
 * when its network starts, not before a slow store open). */
void mm_lead_start(struct mm_lead *l, uint64_t now_ms);

/* This node is the authority: it is eligible and the leader, its start-up grace is over, and it has
 * heard some peer's view since it started (or expire_ms passed without any: it is
 * alone).  A node just restarted knows no heartbeat yet and would otherwise take
 * itself for the lowest live node until its peers reconnect, moving UIDs that the
 * real authority is moving too. */
bool mm_lead_is_self(const struct mm_lead *l, uint64_t now_ms);

#endif
