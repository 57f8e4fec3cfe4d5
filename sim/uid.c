/*
 * uid.c — IMAP UIDs in the simulator (issues 5 and 7): each node's model of Dovecot's
 * dovecot-uidlist per (user, folder), and the replica side of the UID rule, which is
 * crdt/uid.c's mm_uid_plan (called, never re-implemented here).
 *
 * The listing (struct sim_listing + the node's `listed` map) follows Dovecot: an entry
 * is added only at or above NEXTUID, NEXTUID never goes down, an expunged message
 * leaves the listing and its number is never reused, and a new UIDVALIDITY (the
 * folder record's exists stamp changed: delete + re-create, concurrent creations)
 * starts the listing over.  It is written under the lock with fsync, so it survives a
 * crash whole.
 *
 * What the node does, as node/store.c does it: a local delivery is listed at the
 * folder's NEXTUID by "Dovecot" and that number goes into mm_user_deliver as the
 * message's first UID (scan_files/assign_uid).  When merges, arriving bodies or a new
 * authority touch a folder, the node, 20 ms later (the daemon's commit, which places
 * the bodies staged meanwhile and runs the deferred pass), first places the bodies
 * that arrived: in UID order, holding back (not placed, not listed) those above the
 * folder's NEXTUID while other bodies of the folder are still missing, until those
 * arrive or none arrived for SIM_HOLD_MS (place_list / hold_body / release_held).
 * Then it plans the folder's placed messages (uid_sync_folder): it writes the plan's
 * set_uid (mm_user_uid_move, from a fresh HLC tick) and set_need, lists or re-files
 * each message at its target, and pushes the changes at once (node/daemon.c commit_cb;
 * --no-uid-push leaves them to anti-entropy).  A re-file the plan holds (a lower move
 * may still be on its way: crdt/uid.h mm_uid_plan's hold) waits at most
 * MM_UID_HOLD_MS on the node's clock, as node/store.c's uid_hold; an EV_UIDHOLD at
 * the end of the wait plans the folder again with no hold (--no-uid-refile-hold:
 * re-filed at once, the daemon before the change).  The authority is decided as
 * node/daemon.c uid_authority_update: the gossiped election of proto/lead.h names
 * this node (its start-up grace over, a peer heard, not catching up).
 *
 * Every addition checks Dovecot's rule (a violation if the plan asked for a UID below
 * NEXTUID, or for one UID twice in one listing); every (user, folder, UIDVALIDITY,
 * UID) ever shown is remembered, to count how often two nodes showed two different
 * messages under one (uid_conflicts_seen: inherent to concurrent deliveries).  The
 * convergence checks are in check.c (sim_uids_settled).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "crdt/uid.h"
#include "sim/internal.h"

int sim_folder_index(const char *name)
{
	for (unsigned i = 0; i < SIM_NFOLDERS; i++)
		if (strcmp(sim_folders[i], name) == 0)
			return (int)i;
	return -1;
}

int sim_folder_of_hash(const struct sim *s, uint64_t h)
{
	for (unsigned i = 0; i < SIM_NFOLDERS; i++)
		if (s->folder_hash[i] == h)
			return (int)i;
	return -1;
}

const struct mm_rec *sim_uid_folder_rec(struct sim_node *n, unsigned u, unsigned f)
{
	struct mm_user *usr = mm_state_user(n->state, n->sim->users[u], false);
	if (!usr)
		return NULL;
	uint8_t fk[MM_KEY_LEN];
	mm_key_folder(sim_folders[f], fk);
	const struct mm_rec *fr = mm_user_get(usr, fk);
	/* node/store.c uid_folder_rec: a folder deleted on one node while mail went into
	 * it elsewhere stays visible, under the UIDVALIDITY of its record's stamp */
	return fr && fr->type == MM_REC_FOLDER &&
	                       (fr->folder.exists.value || mm_user_folder_visible(usr, sim_folders[f]))
	               ? fr
	               : NULL;
}

/* Marks folders of user u to be planned: the pass runs SIM_UID_DELAY_MS later, as
 * the daemon's deferred mirror work runs at the commit that follows effects
 * (node/daemon.c COMMIT_DELAY_MS), so a burst of merged records is planned once. */
static void mark(struct sim_node *n, unsigned u, uint8_t folders)
{
	struct sim *s = n->sim;
	n->uid_dirty[u] |= folders;
	if (!n->uid_queued && n->alive && folders) {
		n->uid_queued = true;
		sim_schedule(s, s->now + SIM_UID_DELAY_MS, EV_UIDPASS, n->idx, 0, n->gen);
	}
}

static struct sim_lent *lent_of(struct sim_node *n, unsigned u, const uint8_t key[MM_KEY_LEN], bool create)
{
	uint8_t k[1 + MM_KEY_LEN];
	k[0] = (uint8_t)u;
	memcpy(k + 1, key, MM_KEY_LEN);
	return create ? sim_map_put(&n->listed, k, NULL) : sim_map_get(&n->listed, k);
}

/* Takes a message out of its listing (expunged, or re-filed); NEXTUID stays. */
static void unlist(struct sim_node *n, unsigned u, struct sim_lent *e)
{
	if (!e || !e->uid)
		return;
	n->lists[u][e->folder].count--;
	e->uid = 0;
}

/* Adds an entry: only at or above NEXTUID (Dovecot), and a number never names two
 * messages in one listing (guaranteed by NEXTUID, re-checked by check.c at the end). */
static void list_add(struct sim_node *n, unsigned u, unsigned f, const uint8_t key[MM_KEY_LEN], uint32_t uid)
{
	struct sim *s = n->sim;
	struct sim_listing *l = &n->lists[u][f];
	if (uid < l->next || !uid) {
		sim_violation(s, "node %u: %02x%02x%02x%02x listed under UID %u below NEXTUID %u of %s/%s "
		              "(Dovecot's rule)", n->idx, key[0], key[1], key[2], key[3], uid, l->next,
		              s->users[u], sim_folders[f]);
		return;
	}
	struct sim_lent *e = lent_of(n, u, key, true);
	unlist(n, u, e);
	e->uid = uid;
	e->folder = (uint8_t)f;
	e->placed = 1;
	e->held = 0;
	l->count++;
	l->next = uid + 1;
	s->res->uid_listed++;
	/* who else showed another message under this (UIDVALIDITY, UID)? */
	uint8_t sk[2 + 4 + 4];
	sk[0] = (uint8_t)u;
	sk[1] = (uint8_t)f;
	memcpy(sk + 2, &l->uv, 4);
	memcpy(sk + 6, &uid, 4);
	bool created;
	struct sim_useen *seen = sim_map_put(&s->uid_seen, sk, &created);
	if (created) {
		memcpy(seen->key, key, MM_KEY_LEN);
	} else if (memcmp(seen->key, key, MM_KEY_LEN) != 0 && !seen->contested) {
		seen->contested = 1;
		s->res->uid_conflicts_seen++;
		sim_trace(s, "t=%llu node %u shows %02x%02x%02x%02x under %s/%s UID %u, another node showed "
		          "%02x%02x%02x%02x there", (unsigned long long)s->now, n->idx, key[0], key[1], key[2],
		          key[3], s->users[u], sim_folders[f], uid, seen->key[0], seen->key[1], seen->key[2],
		          seen->key[3]);
	}
}

/* Brings the listing to UIDVALIDITY uv: a new one starts it over (Dovecot). */
static void listing_uv(struct sim_node *n, unsigned u, unsigned f, uint32_t uv)
{
	struct sim_listing *l = &n->lists[u][f];
	if (l->uv == uv)
		return;
	if (l->uv) {
		n->sim->res->uid_resets++;
		size_t pos = 0;
		void *val;
		const uint8_t *k;
		while ((k = sim_map_next(&n->listed, &pos, &val))) {
			struct sim_lent *e = val;
			if (k[0] == u && e->folder == f)
				e->uid = 0;
		}
	}
	l->uv = uv;
	l->next = 1;
	l->count = 0;
}

void sim_uid_effect(struct sim_node *n, unsigned u, enum mm_effect eff, const struct mm_rec *rec)
{
	struct sim *s = n->sim;
	int f;
	switch (eff) {
	case MM_EFF_MSG_NEW:
	case MM_EFF_MSG_UID:
		f = sim_folder_index(rec->msg.folder);
		if (f < 0) {
			sim_violation(s, "node %u: a message in unknown folder %s", n->idx, rec->msg.folder);
			return;
		}
		if (eff == MM_EFF_MSG_UID && s->healed)
			s->uid_last_change = s->now;
		mark(n, u, (uint8_t)(1u << f));
		return;
	case MM_EFF_MSG_EXPUNGED:
	case MM_EFF_TOMB_NEW: {
		/* the file goes, and Dovecot drops its entry; the number is not reused */
		struct sim_lent *e = lent_of(n, u, rec->key, false);
		if (e && e->uid) {
			f = e->folder;
			unlist(n, u, e);
			mark(n, u, (uint8_t)(1u << f));
		}
		return;
	}
	case MM_EFF_FOLDER:
		f = sim_folder_index(rec->folder.name);
		if (f >= 0)
			mark(n, u, (uint8_t)(1u << f));
		return;
	default:
		return;
	}
}

void sim_uid_body(struct sim_node *n, unsigned u)
{
	mark(n, u, (uint8_t)((1u << SIM_NFOLDERS) - 1));
}

uint32_t sim_uid_for_delivery(struct sim_node *n, unsigned u, unsigned f, mm_hlc stamp)
{
	/* the delivery creates or revives the folder unless it exists: then its record's
	 * stamp, hence its UIDVALIDITY, is the delivery's -- unless a delete stamped
	 * later than the delivery (a clock behind) keeps the folder's (deleted, but
	 * visible through this message) */
	struct mm_user *usr = mm_state_user(n->state, n->sim->users[u], false);
	uint8_t fk[MM_KEY_LEN];
	mm_key_folder(sim_folders[f], fk);
	const struct mm_rec *fr = usr ? mm_user_get(usr, fk) : NULL;
	if (fr && fr->type != MM_REC_FOLDER)
		fr = NULL;
	uint32_t uv = fr && (fr->folder.exists.value || mm_hlc_cmp(fr->folder.exists.stamp, stamp) > 0)
	                      ? fr->folder.uidvalidity
	                      : mm_folder_uidvalidity(stamp);
	listing_uv(n, u, f, uv);
	return n->lists[u][f].next;
}

void sim_uid_delivered(struct sim_node *n, unsigned u, unsigned f, const uint8_t key[MM_KEY_LEN],
                       uint32_t uid)
{
	const struct mm_rec *fr = sim_uid_folder_rec(n, u, f);
	if (!fr || fr->folder.uidvalidity != n->lists[u][f].uv) {
		sim_violation(n->sim, "node %u: delivery into %s left UIDVALIDITY %u, listed under %u", n->idx,
		              sim_folders[f], fr ? fr->folder.uidvalidity : 0, n->lists[u][f].uv);
		return;
	}
	list_add(n, u, f, key, uid);
}

void sim_uid_authority(struct sim *s, struct sim_node *n)
{
	/* as node/daemon.c: a node catching up neither decides nor asks for moves; when it
	 * has caught up, every folder is planned again (mm_store_set_catching_up) */
	bool catching_up = mm_lead_catching_up(sim_node_missing_bodies(n));
	if (n->catching_up && !catching_up)
		for (unsigned u = 0; u < s->nusers; u++)
			mark(n, u, (uint8_t)((1u << SIM_NFOLDERS) - 1));
	n->catching_up = catching_up;
	mm_lead_set_eligible(n->lead, !catching_up);
	bool auth = mm_lead_is_self(n->lead, sim_node_now(n));
	if (auth == n->uid_auth)
		return;
	n->uid_auth = auth;
	sim_trace(s, "t=%llu node %u %s the UID authority", (unsigned long long)s->now, n->idx,
	          auth ? "now" : "no longer");
	if (auth) /* as mm_store_set_uid_authority: every folder is checked again */
		for (unsigned u = 0; u < s->nusers; u++)
			mark(n, u, (uint8_t)((1u << SIM_NFOLDERS) - 1));
	unsigned a = sim_uid_authorities(s);
	if (a > s->res->uid_max_authorities)
		s->res->uid_max_authorities = a;
}

unsigned sim_uid_authorities(const struct sim *s)
{
	unsigned a = 0;
	for (unsigned i = 0; i < s->n; i++)
		a += s->nodes[i].alive && s->nodes[i].uid_auth;
	return a;
}

/* ---- the plan of one folder ---------------------------------------------------------- */

struct plan_buf {
	struct mm_uid_item *it;
	size_t n, cap;
};

/* Places the bodies of (u, f) that arrived since the last pass (items with no placed
 * entry), as node/store.c place_list and release_held: with the hold on, while
 * `missing` other bodies of the folder are still missing and one arrived less than
 * SIM_HOLD_MS ago, those whose UID is above NEXTUID (counting the ones placed before
 * them in UID order) are held; once nothing else is missing or the folder saw no
 * progress for SIM_HOLD_MS, the held ones go too.  Leaves in b only the placed
 * items, for the plan. */
static int want_cmp(const void *a, const void *b)
{
	const struct mm_uid_item *x = a, *y = b;
	/* node/store.c w_order_cmp: ascending UID, no UID (0) first */
	if (x->want != y->want)
		return x->want < y->want ? -1 : 1;
	return memcmp(x->key, y->key, MM_KEY_LEN);
}

static void place_bodies(struct sim_node *n, unsigned u, unsigned f, struct plan_buf *b, size_t n_held,
                         size_t n_batch, size_t missing)
{
	struct sim *s = n->sim;
	if (!n_held && !n_batch)
		return;
	uint64_t *progress = &n->hold_progress[u][f];
	/* nothing else missing, or no progress for HOLD_MS: everything goes (force) */
	bool force = !s->cfg.uid_hold || !missing || (*progress && s->now - *progress >= SIM_HOLD_MS);
	if (n_batch)
		*progress = s->now;
	qsort(b->it, b->n, sizeof *b->it, want_cmp);
	uint32_t next = n->lists[u][f].next;
	size_t keep = 0, still_held = 0;
	for (size_t i = 0; i < b->n; i++) {
		struct mm_uid_item *it = &b->it[i];
		/* the map may grow below: look the entry up afresh, keep no pointer */
		struct sim_lent *e = lent_of(n, u, it->key, false);
		if (!e || !e->placed) {
			bool hold = !force && ((e && e->held) || (it->want && it->want > next));
			e = lent_of(n, u, it->key, true);
			if (hold) {
				if (!e->held)
					s->res->uid_held++;
				e->held = 1;
				still_held++;
				continue;
			}
			e->placed = 1;
			e->held = 0;
			e->folder = (uint8_t)f;
			if (it->want >= next)
				next = it->want + 1;
		}
		b->it[keep++] = *it;
	}
	b->n = keep;
	if (still_held && n_batch) /* the daemon's flush after HOLD_MS releases them if nothing came */
		sim_schedule(s, *progress + SIM_HOLD_MS, EV_UIDHOLD, n->idx, u * SIM_NFOLDERS + f, n->gen);
}

/* Plans (user u, folder f) on n, applies the result.  Returns how many registers it
 * changed. */
static unsigned plan_folder(struct sim_node *n, unsigned u, unsigned f, struct plan_buf *b)
{
	struct sim *s = n->sim;
	const struct mm_rec *fr = sim_uid_folder_rec(n, u, f);
	if (!fr) /* no UIDVALIDITY known yet (the FOLDER record comes later) */
		return 0;
	struct mm_user *usr = mm_state_user(n->state, s->users[u], false);
	listing_uv(n, u, f, fr->folder.uidvalidity);
	struct sim_listing *l = &n->lists[u][f];
	/* the folder's messages whose body is here (live): placed ones (their file is in
	 * the folder) go to the plan; the others arrived since the last pass, or are held */
	b->n = 0;
	size_t pos = 0, n_held = 0, n_batch = 0, missing = 0;
	void *val;
	const uint8_t *k;
	while ((k = sim_map_next(&n->view, &pos, &val))) {
		struct sim_view *v = val;
		if (k[0] != u || v->state != VIEW_LIVE || v->folder != s->folder_hash[f])
			continue;
		uint8_t bk[1 + MM_ID_LEN];
		bk[0] = (uint8_t)u;
		memcpy(bk + 1, v->body, MM_ID_LEN);
		struct sim_body *body = sim_map_get(&n->bodies, bk);
		const struct mm_rec *r = mm_user_get(usr, k + 1);
		if (!r || r->type != MM_REC_MESSAGE)
			continue;
		if (!body || !body->bytes) {
			missing++;
			continue;
		}
		if (b->n == b->cap) {
			size_t nc = b->cap ? 2 * b->cap : 64;
			struct mm_uid_item *ni = realloc(b->it, nc * sizeof(*ni));
			if (!ni) {
				sim_violation(s, "out of memory");
				return 0;
			}
			b->it = ni;
			b->cap = nc;
		}
		struct mm_uid_item *it = &b->it[b->n++];
		memset(it, 0, sizeof(*it));
		memcpy(it->key, k + 1, MM_KEY_LEN);
		it->want = r->msg.uid_value;
		it->need = r->msg.uid_need;
		const struct sim_lent *e = lent_of(n, u, it->key, false);
		it->have = e && e->uid && e->folder == f ? e->uid : 0;
		if (!e || !e->placed) {
			n_held += e && e->held;
			n_batch += !e || !e->held;
		}
	}
	place_bodies(n, u, f, b, n_held, n_batch, missing);
	uint32_t next = l->next;
	/* re-files wait for lower moves, for MM_UID_HOLD_MS at most (on the node's clock,
	 * as node/store.c; the timer is on the virtual one) */
	struct mm_uid_hold *hold = &n->refile_hold[u][f];
	uint64_t node_now = sim_node_now(n);
	size_t held = mm_uid_plan(b->it, b->n, &next, mm_user_uid_top(usr, sim_folders[f]), n->uid_auth,
	                          s->cfg.uid_refile_hold && mm_uid_hold_may(hold, node_now));
	bool waiting = hold->since_ms != 0;
	uint64_t due = mm_uid_hold_note(hold, node_now, held);
	s->res->uid_refiles_held += held;
	if (due && !waiting) /* planned again then, with no hold if it still waits */
		sim_schedule(s, s->now + (due > node_now ? due - node_now : 0), EV_UIDHOLD, n->idx,
		             u * SIM_NFOLDERS + f, n->gen);
	bool saboteur = n->idx == s->n - 1;
	unsigned changed = 0;
	for (size_t i = 0; i < b->n; i++) {
		struct mm_uid_item *it = &b->it[i];
		if (i && it->target == b->it[i - 1].target)
			sim_violation(s, "node %u: the plan of %s/%s gives UID %u to two messages", n->idx,
			              s->users[u], sim_folders[f], it->target);
		int rc;
		if (it->set_uid) {
			mm_hlc stamp = mm_clock_tick(&n->clock, sim_node_now(n));
			rc = mm_user_uid_move(usr, it->key, it->set_uid, stamp, sim_node_eff, n, s->delta);
			if (rc < 0)
				sim_violation(s, "node %u: uid_move failed: %d", n->idx, rc);
			if (rc > 0) {
				changed++;
				if (it->want)
					s->res->uid_moves++;
				else
					s->res->uid_firsts++;
				if (it->want && !n->uid_auth)
					sim_violation(s, "node %u moved a UID without being the authority", n->idx);
			}
		}
		if (it->set_need && !n->catching_up && !(saboteur && s->cfg.sabotage == 3)) {
			rc = mm_user_uid_need(usr, it->key, it->set_need, sim_node_eff, n, s->delta);
			if (rc < 0)
				sim_violation(s, "node %u: uid_need failed: %d", n->idx, rc);
			if (rc > 0) {
				changed++;
				s->res->uid_needs++;
			}
		}
		if (it->target == it->have)
			continue;
		uint32_t target = it->target;
		if (saboteur && s->cfg.sabotage == 4 && it->have)
			target++;
		if (it->have) {
			unlist(n, u, lent_of(n, u, it->key, false));
			s->res->uid_refiled++;
		}
		list_add(n, u, f, it->key, target);
	}
	/* NEXTUID never goes down; the plan's is where the listing stands now */
	if (next < l->next && !(saboteur && s->cfg.sabotage == 4))
		sim_violation(s, "node %u: the plan of %s/%s lowered NEXTUID from %u to %u", n->idx,
		              s->users[u], sim_folders[f], l->next, next);
	if (next > l->next)
		l->next = next;
	return changed;
}

/* One node: every dirty folder, a few rounds while its own changes dirty them again
 * (node/store.c uid_pass runs two; what is still dirty after the last round gets the
 * next pass).  The register changes are durable with the node's next commit, as
 * merged records, and travel by anti-entropy: the daemon's pass runs inside
 * mm_store_commit with no delta to push (--uid-push pushes them at once). */
static void node_pass(struct sim *s, struct sim_node *n, struct plan_buf *b)
{
	for (unsigned round = 0; round < SIM_UID_ROUNDS && n->alive; round++) {
		bool any = false;
		unsigned changed = 0;
		for (unsigned u = 0; u < s->nusers; u++) {
			uint8_t d = n->uid_dirty[u];
			n->uid_dirty[u] = 0;
			for (unsigned f = 0; f < SIM_NFOLDERS && d; f++)
				if (d & (1u << f)) {
					any = true;
					changed += plan_folder(n, u, f, b);
				}
		}
		if (mm_delta_count(s->delta) > 0) {
			if (s->healed)
				s->uid_last_change = s->now;
			if (s->cfg.push && s->cfg.uid_push) {
				int p = mm_gossip_push(n->gossip, s->delta, NULL, sim_node_now(n));
				if (p < 0)
					sim_trace(s, "t=%llu node %u push failed: %d", (unsigned long long)s->now,
					          n->idx, p);
			}
			mm_delta_clear(s->delta);
		}
		if (!any || !changed)
			break;
	}
	if (!n->alive)
		memset(n->uid_dirty, 0, sizeof n->uid_dirty);
}

void sim_uid_hold_timeout(struct sim_node *n, unsigned u, unsigned f)
{
	mark(n, u, (uint8_t)(1u << f));
}

void sim_uid_stop(struct sim_node *n)
{
	memset(n->hold_progress, 0, sizeof n->hold_progress);
	memset(n->refile_hold, 0, sizeof n->refile_hold);
	size_t pos = 0;
	void *val;
	while (sim_map_next(&n->listed, &pos, &val))
		((struct sim_lent *)val)->held = 0;
}

void sim_uid_pass(struct sim *s, struct sim_node *n)
{
	struct plan_buf b = { 0 };
	node_pass(s, n, &b); /* uid_queued stays set: its own marks are taken in its rounds */
	free(b.it);
	n->uid_queued = false;
	for (unsigned u = 0; u < s->nusers && n->alive; u++)
		if (n->uid_dirty[u]) {
			mark(n, u, n->uid_dirty[u]);
			break;
		}
}
