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

void mm_uid_plan(struct mm_uid_item *items, size_t n, uint32_t *next_uid_io, uint32_t top,
                 bool authority)
{
	uint32_t next = *next_uid_io ? *next_uid_io : 1;
	/* items may be NULL when n is 0 (a folder with no files): qsort must not see it */
	if (n > 1)
		qsort(items, n, sizeof *items, item_cmp);
	for (size_t i = 0; i < n; i++) {
		struct mm_uid_item *it = &items[i];
		it->target = it->set_uid = it->set_need = 0;
		if (it->have > top)
			top = it->have;
	}
	/* 1. messages that keep their UID here, or can still take it (ascending, so
	 *    each new entry is at or above NEXTUID when it is listed); of messages
	 *    wanting one UID, the one listed under it keeps it */
	uint32_t prev_kept = 0;
	for (size_t i = 0; i < n; i++) {
		struct mm_uid_item *it = &items[i];
		if (!it->want)
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
