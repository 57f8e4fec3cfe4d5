/*
 * uid.c — the replica-side UID rule (uid.h): which messages keep the UID the state
 * gives them, which this node lists provisionally and asks to move (need), and, on
 * the folder's authority, which it moves.  Pure: no I/O, the caller applies the plan.
 */
#include "crdt/uid.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Order of listing: ascending UID wanted (new entries must go in ascending order),
 * among messages wanting one UID the one already listed under it first (it keeps
 * it), then by key; messages with no UID yet last. */
static int item_cmp(const void *a, const void *b)
{
	const struct mm_uid_item *x = a, *y = b;
	uint32_t wx = x->want ? x->want : UINT32_MAX, wy = y->want ? y->want : UINT32_MAX;
	if (wx != wy)
		return wx < wy ? -1 : 1;
	bool kx = x->want && x->have == x->want, ky = y->want && y->have == y->want;
	if (kx != ky)
		return kx ? -1 : 1;
	return memcmp(x->key, y->key, MM_KEY_LEN);
}

static uint32_t max3(uint32_t a, uint32_t b, uint32_t c)
{
	uint32_t m = a > b ? a : b;
	return m > c ? m : c;
}

static int target_cmp(const void *a, const void *b)
{
	const struct mm_uid_item *x = a, *y = b;
	return x->target < y->target ? -1 : x->target > y->target;
}

/* Which re-files wait (mm_uid_plan's `hold`; docs/design.md "IMAP UIDs", "Re-files
 * wait for lower moves").  The authority moves several messages in one pass to
 * ascending new UIDs, and every replica that cannot show one asks for a move (a need
 * above the UID).  Those records reach a replica in hash order, a few per sync round
 * and from peers that hold only some of them: re-filing a message moved to b2 before
 * the move of another one to b1 < b2 has arrived takes NEXTUID past b1, so that one
 * cannot be shown there, its need is raised and the authority moves it again (the
 * chase: sweep seed 100383 with 9 nodes and no pushes, 13,012 needs and 2,938
 * re-files for 81 deliveries).  So on a replica, while a message Y of the folder
 * still waits for a move (its need is above its UID, or this node cannot show its
 * UID and is about to ask), a re-file of X to a UID at or above Y's need waits:
 * Y's move lands at or above its need, maybe below X's new UID.  X keeps the UID it
 * is listed under meanwhile (clients see the old UID a little longer, and no UID
 * twice), and nothing is added below NEXTUID.  A held X whose own need is above its
 * UID waits for the move that need asks for instead of being re-filed twice.  Not
 * held: first listings (the file is in the folder: Dovecot would list it), and
 * re-files below a number this pass lists a new file at anyway (waiting would only
 * let that file's entry pass them).  The authority never holds: it moves every
 * message that waits for a move in the same plan, above all the others.  The caller
 * bounds the wait (mm_uid_hold_*), so the folder settles as without it. */
static size_t plan_holds(struct mm_uid_item *items, size_t n, uint32_t next)
{
	uint32_t bound = UINT32_MAX; /* lowest need of a message waiting for a move */
	uint32_t listed_new = 0;     /* highest number a first listing takes here */
	for (size_t i = 0; i < n; i++) {
		const struct mm_uid_item *it = &items[i];
		if (!it->have) {
			/* a first listing: at its UID if it can take it, else above
			 * everything (provisional, or no UID yet) */
			uint32_t at = it->want && it->want >= next ? it->want : UINT32_MAX;
			if (at > listed_new)
				listed_new = at;
		}
		if (!it->want)
			continue;
		uint32_t b = 0;
		if (it->need > it->want)
			b = it->need;
		else if (it->want < next && it->have != it->want)
			b = next; /* this plan asks for a move to NEXTUID or above */
		if (b && b < bound)
			bound = b;
	}
	size_t held = 0;
	for (size_t i = 0; i < n; i++) {
		struct mm_uid_item *it = &items[i];
		if (!it->want || !it->have || it->have == it->want || it->want < next || it->want < listed_new)
			continue;
		if (it->need > it->want || bound <= it->want) {
			it->held = true;
			it->target = it->have;
			held++;
		}
	}
	return held;
}

size_t mm_uid_plan(struct mm_uid_item *items, size_t n, uint32_t *next_uid_io, uint32_t top,
                   bool authority, bool hold)
{
	uint32_t next = *next_uid_io ? *next_uid_io : 1;
	/* items may be NULL when n is 0 (a folder with no files): qsort must not see it */
	if (n > 1)
		qsort(items, n, sizeof *items, item_cmp);
	for (size_t i = 0; i < n; i++) {
		struct mm_uid_item *it = &items[i];
		it->target = it->set_uid = it->set_need = 0;
		it->held = false;
		if (it->have > top)
			top = it->have;
	}
	size_t held = hold && !authority ? plan_holds(items, n, next) : 0;
	/* 1. messages that keep their UID here, or can still take it (ascending, so
	 *    each new entry is at or above NEXTUID when it is listed); of messages
	 *    wanting one UID, the one listed under it keeps it */
	uint32_t prev_kept = 0;
	for (size_t i = 0; i < n; i++) {
		struct mm_uid_item *it = &items[i];
		if (!it->want || it->held)
			continue;
		/* a need above the UID: some replica cannot show it there (another message
		 * had that number there): the authority moves it, so the contested number
		 * names nothing in the end */
		if (authority && it->need > it->want)
			continue;
		if ((it->want == it->have || it->want >= next) && it->want != prev_kept) {
			it->target = it->want;
			prev_kept = it->want;
			if (it->want >= next)
				next = it->want + 1;
		}
	}
	/* 2. files this node listed before the state had a UID for them: the UID the
	 *    listing has is the message's first UID */
	for (size_t i = 0; i < n; i++) {
		struct mm_uid_item *it = &items[i];
		if (!it->want && it->have)
			it->target = it->set_uid = it->have;
	}
	/* 3. messages that cannot be shown under their UID here */
	for (size_t i = 0; i < n; i++) {
		struct mm_uid_item *it = &items[i];
		if (!it->want || it->target)
			continue;
		uint32_t t;
		if (authority) {
			/* the authority moves it above every UID and need of the folder, and
			 * at least where replicas asked */
			t = max3(next, top + 1, it->need);
			it->set_uid = t;
		} else if (it->have > it->want) {
			/* listed here provisionally above its UID: keep showing it there
			 * (listing it anew would take yet another number, which the
			 * authority may be handing out at the same time) and ask for that
			 * number, which stays the same however many other messages this node
			 * lists meanwhile */
			t = it->have;
			if (it->need < t)
				it->set_need = t;
		} else if (it->have) {
			/* listed under an old UID the authority moved it away from, and this
			 * node's NEXTUID passed the new one: ask for any UID from here on */
			t = it->have;
			if (it->need < next)
				it->set_need = next;
		} else {
			/* not listed: list it provisionally above every number known for
			 * the folder, and ask the authority to move it there (or higher) */
			t = next > top + 1 ? next : top + 1;
			if (it->need < t)
				it->set_need = t;
		}
		it->target = t;
		if (t >= next)
			next = t + 1;
		if (t > top)
			top = t;
	}
	/* 4. new files nobody listed yet: the next numbers */
	for (size_t i = 0; i < n; i++) {
		struct mm_uid_item *it = &items[i];
		if (!it->target) {
			it->target = it->set_uid = next > top + 1 ? next : top + 1;
			next = it->target + 1;
			top = it->target;
		}
	}
	if (n > 1)
		qsort(items, n, sizeof *items, target_cmp);
	*next_uid_io = next;
	return held;
}

bool mm_uid_hold_may(const struct mm_uid_hold *h, uint64_t now_ms)
{
	return !h->since_ms || (now_ms >= h->since_ms && now_ms - h->since_ms < MM_UID_HOLD_MS);
}

uint64_t mm_uid_hold_note(struct mm_uid_hold *h, uint64_t now_ms, size_t held)
{
	if (!held) {
		/* nothing waits (or the wait was over and this plan held nothing): a
		 * later plan may hold again, for a new period */
		h->since_ms = 0;
		return 0;
	}
	if (!h->since_ms)
		h->since_ms = now_ms ? now_ms : 1;
	return h->since_ms + MM_UID_HOLD_MS;
}

int mm_user_uid_move(struct mm_user *u, const uint8_t key[MM_KEY_LEN], uint32_t uid, mm_hlc stamp,
                     mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	if (!u || (!stamp.t && !stamp.node))
		return -EINVAL;
	const struct mm_rec *r = mm_user_get(u, key);
	if (!r || r->type != MM_REC_MESSAGE)
		return -ENOENT;
	/* last writer wins: take the slot just after the register's stamp when the local
	 * clock is not past it (the node's clock itself is not moved: the skew bound
	 * stays in force for everything else) */
	if (mm_hlc_cmp(stamp, r->msg.uid.stamp) <= 0)
		stamp = (mm_hlc){ .t = r->msg.uid.stamp.t + 1, .node = stamp.node };
	return mm_user_set_uid(u, key, uid, stamp, eff, arg, out);
}
