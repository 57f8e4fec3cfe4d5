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
 * when it knows none lower) and that node's latest heartbeat (now_ms for itself). */
void mm_lead_view(const struct mm_lead *l, uint64_t now_ms, uint64_t *id_r, uint64_t *beat_r);

/* A peer advertised (id, beat).  Ignored when id is 0, this node or above it, or when
 * beat is not above the last heartbeat seen from id; otherwise id counts as alive
 * until now_ms + expire_ms.  Returns true when the leader changed. */
bool mm_lead_observe(struct mm_lead *l, uint64_t id, uint64_t beat, uint64_t now_ms);

/* The lowest node id believed alive at now_ms (self when none lower). */
uint64_t mm_lead_leader(const struct mm_lead *l, uint64_t now_ms);

/* This node is the authority: it is the leader and its start-up grace is over. */
bool mm_lead_is_self(const struct mm_lead *l, uint64_t now_ms);

#endif
