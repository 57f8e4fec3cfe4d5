/*
 * uid.h — how one replica brings its IMAP UID listing of a folder in line with the
 * replicated state (issue 7, docs/design.md "IMAP UIDs").
 *
 * Each message has a UID register (LWW) and a need (max register).  The node whose
 * Dovecot first listed a message writes the UID it got; every replica lists the
 * message under that UID if it still can (the UID is at or above its NEXTUID: IMAP
 * UIDs only ever grow in a folder).  A replica that cannot (another message took the
 * number there, or its NEXTUID passed it) lists the message provisionally at its own
 * NEXTUID and raises the need to that number.  Only one node, the folder's UID
 * authority (the live node with the lowest id, decided by the caller), ever moves a
 * message that already has a UID: when it cannot list it under that UID itself, or
 * when the need is above the UID (a replica could not), to max(its need, the
 * folder's highest UID or need + 1, its own NEXTUID).  So when two messages got one
 * UID on two nodes, the one the authority showed keeps it only if no replica showed
 * the other there; otherwise both move and the contested number is retired.  Needs only grow and moves only come from one place, so
 * proposals stop competing and the folder settles once deliveries stop (two
 * authorities during a partition may disagree; the one left after healing decides).
 *
 * A replica holds a re-file back while a lower move may still be on its way (records
 * arrive in hash order, not UID order): see mm_uid_plan's `hold`, bounded in time by
 * mm_uid_hold_may / mm_uid_hold_note.
 *
 * Pure logic: the caller (node/store.c for dovecot-uidlist, sim/ for its model of it)
 * reads the listing, calls mm_uid_plan, then writes what it says (set_uid with
 * mm_user_uid_move, set_need with mm_user_uid_need).
 */
#ifndef MM_CRDT_UID_H
#define MM_CRDT_UID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crdt/crdt.h"

/* One message of a folder that this replica holds a file for. */
struct mm_uid_item {
	uint8_t key[MM_KEY_LEN];
	uint32_t want;      /* in: the record's UID (0 = none yet) */
	uint32_t need;      /* in: the record's need (0 = none) */
	uint32_t have;      /* in: UID this replica lists it under (0 = not listed) */
	uint32_t target;    /* out: UID to list it under (never 0) */
	uint32_t set_uid;   /* out: non-zero: write this as the record's UID */
	uint32_t set_need;  /* out: non-zero: raise the record's need to this */
	bool held;          /* out: could be re-filed under want, but waits for a lower
	                     * move (target == have meanwhile) */
	void *arg;          /* caller's, untouched */
};

/* Plans one folder.  items: the folder's messages this replica has files for (any
 * order; reordered by the call).  *next_uid_io: the folder's NEXTUID here (the
 * lowest UID a new entry may take), updated to the NEXTUID after the plan.  top: the
 * highest UID or need of any live message of the folder in the state (0 if none),
 * files here or not.  authority: this node moves messages whose UID it cannot list.
 * hold (ignored on the authority): a message already listed here that could be
 * re-filed under its UID waits, listed where it is (held, target == have, no need
 * raised), while another message of the folder waits for a move that may land
 * below that UID (its need is at or below it, above its own UID; or this node cannot
 * show its UID), or while its own need is above its UID; not when a first listing
 * in this plan takes a higher number anyway.  The caller passes hold = false once
 * the folder has waited MM_UID_HOLD_MS (mm_uid_hold_may), so it settles as without.
 * Every item gets a target; items whose target differs from `have` must be listed
 * (have 0) or re-filed (have != 0) under target, in array order, which is ascending
 * target order for the new entries.  Returns the number of held items.  Never
 * fails. */
size_t mm_uid_plan(struct mm_uid_item *items, size_t n, uint32_t *next_uid_io, uint32_t top,
                   bool authority, bool hold);

/* How long a folder's re-files may wait for lower moves, from the first plan that
 * held one.  Moves travel by anti-entropy in a few gossip intervals (1 s each by
 * default), or at once when pushed; the wait only delays what clients would see. */
#define MM_UID_HOLD_MS 5000

/* One folder's wait on one replica (zeroed: none). */
struct mm_uid_hold {
	uint64_t since_ms; /* the first plan that held a re-file (0 = none) */
};

/* Whether the plan of the folder at now_ms (the caller's clock, ms) may hold: it
 * has not waited MM_UID_HOLD_MS yet (a clock stepped back ends the wait). */
bool mm_uid_hold_may(const struct mm_uid_hold *h, uint64_t now_ms);

/* After the plan: `held` is what mm_uid_plan returned.  Returns the time at which
 * the folder must be planned again, with no hold if it still waits then (0 = none:
 * nothing held). */
uint64_t mm_uid_hold_note(struct mm_uid_hold *h, uint64_t now_ms, size_t held);

/* Highest UID or need of a live message of `folder` in u (0 if none). */
uint32_t mm_user_uid_top(const struct mm_user *u, const char *folder);

/* Writes the plan's set_uid: uid into the UID register of a live message, with
 * `stamp` (the caller's fresh HLC tick) if that is later than the register's stamp,
 * else with (register stamp + 1, stamp.node).  A move must win: an authority whose
 * clock is behind the stamp a message got on a node whose clock is ahead (beyond
 * mm_clock_observe's bound, so the HLC never caught up) would otherwise lose to it,
 * and, having re-filed the message as the plan says, show it under another UID than
 * every other node until its clock passes that stamp (and a later pass runs).
 * Returns 1 when the register changed, 0 when it already held uid, -ENOENT (no live
 * message), -EINVAL (stamp zero), -ENOMEM.  Effect: MSG_UID. */
int mm_user_uid_move(struct mm_user *u, const uint8_t key[MM_KEY_LEN], uint32_t uid, mm_hlc stamp,
                     mm_effect_fn *eff, void *arg, struct mm_delta *out);

/* Raises the need of a live message (max register; no stamp).  Returns 1 when it
 * grew, 0 when it already was >= need, -ENOENT, -EINVAL (need 0), -ENOMEM.
 * Effect: MSG_UID. */
int mm_user_uid_need(struct mm_user *u, const uint8_t key[MM_KEY_LEN], uint32_t need,
                     mm_effect_fn *eff, void *arg, struct mm_delta *out);

#endif
