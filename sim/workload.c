/*
 * workload.c — what the simulated users do, and the oracle log of it.
 *
 * Operations (random node, random user, configurable rate): deliveries (small bodies
 * that travel inline with a push, large ones that need a fetch), flag and keyword
 * changes, concurrent changes of the same message on two nodes at the same instant,
 * expunges, folder create / delete / subscribe.  Each runs the real crdt local-change
 * function with a stamp from the node's own HLC, then the node commits and pushes the
 * delta, as the daemon does.  A delivery is listed by the node's "Dovecot" at the
 * folder's NEXTUID first, and that UID is the message's first (uid.c).
 *
 * The oracle: every register write a local change made (the registers of the delta
 * stamped with the operation's stamp), every delivery and every expunge, kept in
 * global tables.  After the run the checker computes what the CRDT must converge to
 * (for each register the write with the largest (t, node) stamp; expunged wins) and
 * compares every node with it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/internal.h"

const char *const sim_keywords[] = { "$Forwarded", "$Junk", "$NotJunk", "work", "todo" };
const unsigned sim_nkeywords = sizeof(sim_keywords) / sizeof(sim_keywords[0]);
const char *const sim_folders[] = { "INBOX", "Sent", "Archive", "Lists.dev", "Trash" };
const unsigned sim_nfolders = sizeof(sim_folders) / sizeof(sim_folders[0]);
_Static_assert(sizeof(sim_folders) / sizeof(sim_folders[0]) == SIM_NFOLDERS, "SIM_NFOLDERS");

static bool same_stamp(mm_hlc a, mm_hlc b)
{
	return a.t == b.t && a.node == b.node;
}

static void oracle_reg(struct sim *s, unsigned u, const uint8_t key[MM_KEY_LEN], uint16_t regid,
                       const struct mm_reg *r)
{
	uint8_t k[1 + MM_KEY_LEN + 2];
	k[0] = (uint8_t)u;
	memcpy(k + 1, key, MM_KEY_LEN);
	memcpy(k + 1 + MM_KEY_LEN, &regid, 2);
	bool created;
	struct sim_oreg *o = sim_map_put(&s->regs, k, &created);
	if (created || r->stamp.t > o->t || (r->stamp.t == o->t && r->stamp.node > o->node)) {
		o->t = r->stamp.t;
		o->node = r->stamp.node;
		o->value = r->value;
	}
}

static int kw_index(const char *name)
{
	for (unsigned i = 0; i < sim_nkeywords; i++)
		if (strcmp(sim_keywords[i], name) == 0)
			return (int)i;
	return -1;
}

/* Records what one local change wrote (the registers of its delta stamped `stamp`). */
static void oracle_delta(struct sim *s, struct sim_node *n, mm_hlc stamp)
{
	size_t cnt = mm_delta_count(s->delta);
	for (size_t i = 0; i < cnt; i++) {
		const char *user;
		const struct mm_rec *r = mm_delta_get(s->delta, i, &user);
		int u = sim_user_index(s, user);
		if (u < 0) {
			sim_violation(s, "delta of node %u names unknown user %s", n->idx, user);
			return;
		}
		uint8_t k[1 + MM_KEY_LEN];
		k[0] = (uint8_t)u;
		memcpy(k + 1, r->key, MM_KEY_LEN);
		switch (r->type) {
		case MM_REC_MESSAGE:
			if (same_stamp(r->msg.created, stamp)) {
				bool created;
				struct sim_odel *d = sim_map_put(&s->delivered, k, &created);
				if (created) {
					memcpy(d->body, r->msg.body, MM_ID_LEN);
					d->origin = n->idx;
					if (s->ndkeys == s->capdkeys) {
						size_t nc = s->capdkeys ? s->capdkeys * 2 : 256;
						struct sim_dkey *nk = realloc(s->dkeys, nc * sizeof(*nk));
						if (!nk) {
							sim_violation(s, "out of memory");
							return;
						}
						s->dkeys = nk;
						s->capdkeys = nc;
					}
					s->dkeys[s->ndkeys].user = (uint8_t)u;
					memcpy(s->dkeys[s->ndkeys].key, r->key, MM_KEY_LEN);
					s->ndkeys++;
				}
			}
			for (int f = 0; f < MM_FLAG_COUNT; f++)
				if (same_stamp(r->msg.flags[f].stamp, stamp))
					oracle_reg(s, (unsigned)u, r->key, (uint16_t)f, &r->msg.flags[f]);
			for (size_t j = 0; j < r->msg.n_keywords; j++) {
				const struct mm_kwreg *kw = &r->msg.keywords[j];
				if (!same_stamp(kw->reg.stamp, stamp))
					continue;
				int ki = kw_index(kw->name);
				if (ki < 0) {
					sim_violation(s, "node %u wrote keyword %s nobody set", n->idx, kw->name);
					continue;
				}
				oracle_reg(s, (unsigned)u, r->key, (uint16_t)(SIM_REG_KW + ki), &kw->reg);
			}
			break;
		case MM_REC_EXPUNGED:
			if (same_stamp(r->tomb.stamp, stamp))
				*(uint8_t *)sim_map_put(&s->expunged, k, NULL) = 1;
			break;
		case MM_REC_FOLDER:
			if (same_stamp(r->folder.exists.stamp, stamp))
				oracle_reg(s, (unsigned)u, r->key, SIM_REG_EXISTS, &r->folder.exists);
			if (same_stamp(r->folder.subscribed.stamp, stamp))
				oracle_reg(s, (unsigned)u, r->key, SIM_REG_SUBSCRIBED, &r->folder.subscribed);
			break;
		default:
			break;
		}
	}
}

/* True when the delta holds a tombstone for key of user u. */
static bool delta_has_tomb(struct sim *s, unsigned u, const uint8_t key[MM_KEY_LEN])
{
	size_t cnt = mm_delta_count(s->delta);
	for (size_t i = 0; i < cnt; i++) {
		const char *user;
		const struct mm_rec *r = mm_delta_get(s->delta, i, &user);
		if (r->type == MM_REC_EXPUNGED && memcmp(r->key, key, MM_KEY_LEN) == 0 &&
		    strcmp(user, s->users[u]) == 0)
			return true;
	}
	return false;
}

/* After a local change: oracle, durable commit, then live push (daemon order). */
static void local_done(struct sim *s, struct sim_node *n, mm_hlc stamp, int rc, const char *what)
{
	s->res->ops++;
	if (rc < 0) {
		sim_violation(s, "node %u: local %s failed: %d", n->idx, what, rc);
		mm_delta_clear(s->delta);
		return;
	}
	oracle_delta(s, n, stamp);
	if (mm_delta_count(s->delta) > 0) {
		int c = sim_node_commit(n);
		if (c < 0)
			sim_violation(s, "node %u: commit failed: %d", n->idx, c);
		if (s->cfg.push) {
			int p = mm_gossip_push(n->gossip, s->delta, NULL, sim_node_now(n));
			if (p < 0)
				sim_trace(s, "t=%llu node %u push failed: %d", (unsigned long long)s->now,
				          n->idx, p);
		}
	}
	mm_delta_clear(s->delta);
}

static struct sim_node *pick_node(struct sim *s)
{
	unsigned start = (unsigned)sim_rng_below(&s->rng, s->n);
	for (unsigned i = 0; i < s->n; i++) {
		struct sim_node *n = &s->nodes[(start + i) % s->n];
		if (n->alive)
			return n;
	}
	return NULL;
}

static struct sim_view *view_of(struct sim_node *n, unsigned u, const uint8_t key[MM_KEY_LEN])
{
	uint8_t k[1 + MM_KEY_LEN];
	k[0] = (uint8_t)u;
	memcpy(k + 1, key, MM_KEY_LEN);
	return sim_map_get(&n->view, k);
}

/* A message live at node n (from the delivered log), or NULL after a few tries. */
static const struct sim_dkey *pick_live(struct sim *s, struct sim_node *n)
{
	for (int i = 0; i < 8 && s->ndkeys; i++) {
		/* favour recent messages: they are the ones being worked on */
		size_t span = s->ndkeys < 32 ? s->ndkeys : 32;
		size_t idx = sim_rng_chance(&s->rng, 0.7) ? s->ndkeys - 1 - sim_rng_below(&s->rng, span)
		                                          : sim_rng_below(&s->rng, s->ndkeys);
		const struct sim_dkey *d = &s->dkeys[idx];
		struct sim_view *v = view_of(n, d->user, d->key);
		if (v && v->state == VIEW_LIVE)
			return d;
	}
	return NULL;
}

int sim_deliver(struct sim *s, struct sim_node *n, unsigned u, size_t size, uint8_t key_r[MM_KEY_LEN])
{
	if (!size)
		size = sim_rng_chance(&s->rng, s->cfg.large_p)
		               ? MM_SYNC_INLINE_MAX + 1 + sim_rng_below(&s->rng, 100000)
		               : 300 + sim_rng_below(&s->rng, 3000);
	uint8_t *body = malloc(size);
	if (!body)
		return -ENOMEM;
	int h = snprintf((char *)body, size, "From: sim@example.org\r\nTo: %s\r\nSubject: seed %llu msg %llu\r\n\r\n",
	                 s->users[u], (unsigned long long)s->cfg.seed, (unsigned long long)s->next_msg++);
	size_t pos = h < 0 ? 0 : (size_t)h >= size ? size : (size_t)h;
	for (; pos < size; pos++)
		body[pos] = (pos % 78 == 77) ? '\n' : (uint8_t)('a' + sim_rng_below(&s->rng, 26));
	uint8_t id[MM_ID_LEN];
	mm_body_id(body, size, id);
	/* the MTA writes the file first; the daemon then records it */
	int rc = sim_node_store_body(n, u, id, body, size);
	free(body);
	if (rc < 0)
		return rc;
	const char *folder = s->plain || sim_rng_chance(&s->rng, 0.7) ? "INBOX"
	                                                  : sim_folders[sim_rng_below(&s->rng, sim_nfolders)];
	unsigned flags = 0;
	for (int f = 0; f < MM_FLAG_COUNT; f++)
		if (!s->plain && sim_rng_chance(&s->rng, 0.1))
			flags |= 1u << f;
	const char *kw[1];
	size_t nkw = 0;
	if (!s->plain && sim_rng_chance(&s->rng, 0.2))
		kw[nkw++] = sim_keywords[sim_rng_below(&s->rng, sim_nkeywords)];
	struct mm_user *usr = mm_state_user(n->state, s->users[u], true);
	if (!usr)
		return -ENOMEM;
	mm_hlc stamp = mm_clock_tick(&n->clock, sim_node_now(n));
	/* Dovecot (LMTP) lists the new file at the folder's NEXTUID; the daemon records
	 * that as the message's first UID (node/store.c assign_uid) */
	int fi = sim_folder_index(folder);
	uint32_t uid = s->cfg.uids ? sim_uid_for_delivery(n, u, (unsigned)fi, stamp) : 0;
	rc = mm_user_deliver(usr, folder, id, size, (int64_t)(sim_node_now(n) / 1000), flags, kw, nkw, uid,
	                     stamp, key_r, sim_node_eff, n, s->delta);
	if (rc >= 0 && uid)
		sim_uid_delivered(n, u, (unsigned)fi, key_r, uid);
	s->res->deliveries++;
	local_done(s, n, stamp, rc, "deliver");
	return rc;
}

static void op_flag(struct sim *s, struct sim_node *n, bool keyword)
{
	const struct sim_dkey *d = pick_live(s, n);
	if (!d)
		return;
	struct mm_user *usr = mm_state_user(n->state, s->users[d->user], false);
	if (!usr) {
		sim_violation(s, "node %u: view shows a message of a user the state lacks", n->idx);
		return;
	}
	bool value = sim_rng_chance(&s->rng, 0.6);
	mm_hlc stamp = mm_clock_tick(&n->clock, sim_node_now(n));
	int rc;
	if (keyword)
		rc = mm_user_set_keyword(usr, d->key, sim_keywords[sim_rng_below(&s->rng, sim_nkeywords)],
		                         value, stamp, sim_node_eff, n, s->delta);
	else
		rc = mm_user_set_flag(usr, d->key, (enum mm_flag)sim_rng_below(&s->rng, MM_FLAG_COUNT),
		                      value, stamp, sim_node_eff, n, s->delta);
	s->res->flag_ops++;
	local_done(s, n, stamp, rc, keyword ? "set_keyword" : "set_flag");
}

/* The same message changed on two nodes at the same instant (before either hears of
 * the other): the same flag set on one and cleared on the other, or two flags. */
static void op_conflict(struct sim *s)
{
	struct sim_node *a = pick_node(s);
	if (!a)
		return;
	const struct sim_dkey *d = pick_live(s, a);
	if (!d)
		return;
	struct sim_node *b = NULL;
	unsigned start = (unsigned)sim_rng_below(&s->rng, s->n);
	for (unsigned i = 0; i < s->n && !b; i++) {
		struct sim_node *c = &s->nodes[(start + i) % s->n];
		struct sim_view *v = c != a && c->alive ? view_of(c, d->user, d->key) : NULL;
		if (v && v->state == VIEW_LIVE)
			b = c;
	}
	if (!b)
		return;
	enum mm_flag f = (enum mm_flag)sim_rng_below(&s->rng, MM_FLAG_COUNT);
	enum mm_flag g = sim_rng_chance(&s->rng, 0.7) ? f : (enum mm_flag)sim_rng_below(&s->rng, MM_FLAG_COUNT);
	bool value = sim_rng_chance(&s->rng, 0.5);
	struct sim_node *nodes[2] = { a, b };
	enum mm_flag flags[2] = { f, g };
	bool values[2] = { value, !value };
	s->res->conflicts++;
	sim_trace(s, "t=%llu conflict: node %u flag %d=%d, node %u flag %d=%d",
	          (unsigned long long)s->now, a->idx, f, value, b->idx, g, !value);
	for (int i = 0; i < 2; i++) {
		struct sim_node *n = nodes[i];
		struct mm_user *usr = mm_state_user(n->state, s->users[d->user], false);
		if (!usr) {
			sim_violation(s, "node %u: view shows a message of a user the state lacks", n->idx);
			return;
		}
		mm_hlc stamp = mm_clock_tick(&n->clock, sim_node_now(n));
		int rc = mm_user_set_flag(usr, d->key, flags[i], values[i], stamp, sim_node_eff, n, s->delta);
		s->res->flag_ops++;
		local_done(s, n, stamp, rc, "concurrent set_flag");
	}
}

static void op_expunge(struct sim *s, struct sim_node *n)
{
	const struct sim_dkey *d = pick_live(s, n);
	if (!d)
		return;
	struct mm_user *usr = mm_state_user(n->state, s->users[d->user], false);
	if (!usr) {
		sim_violation(s, "node %u: view shows a message of a user the state lacks", n->idx);
		return;
	}
	mm_hlc stamp = mm_clock_tick(&n->clock, sim_node_now(n));
	int rc = mm_user_expunge(usr, d->key, stamp, sim_node_eff, n, s->delta);
	s->res->expunges++;
	if (rc == 0)
		sim_violation(s, "node %u: expunge of a message its view shows live changed nothing", n->idx);
	local_done(s, n, stamp, rc, "expunge");
}

static void op_folder(struct sim *s, struct sim_node *n)
{
	unsigned u = (unsigned)sim_rng_below(&s->rng, s->nusers);
	const char *name = sim_folders[1 + sim_rng_below(&s->rng, sim_nfolders - 1)];
	unsigned what = (unsigned)sim_rng_below(&s->rng, 4);
	/* Only a create makes a user appear: an empty user's leaf would make the roots
	 * differ forever, as nothing can ship it (reported to the lead; seed 30). */
	struct mm_user *usr = mm_state_user(n->state, s->users[u], what == 1);
	if (!usr) {
		if (what == 1)
			sim_violation(s, "out of memory");
		return;
	}
	mm_hlc stamp = mm_clock_tick(&n->clock, sim_node_now(n));
	int rc;
	s->res->folder_ops++;
	if (what == 0) {
		/* delete: every message the view shows in it must be expunged by it */
		uint64_t fh = sim_strhash(name);
		uint8_t (*live)[MM_KEY_LEN] = NULL;
		size_t nlive = 0, pos = 0;
		void *val;
		const uint8_t *k;
		while ((k = sim_map_next(&n->view, &pos, &val))) {
			struct sim_view *v = val;
			if (k[0] != u || v->state != VIEW_LIVE || v->folder != fh)
				continue;
			void *nl = realloc(live, (nlive + 1) * MM_KEY_LEN);
			if (!nl) {
				free(live);
				sim_violation(s, "out of memory");
				return;
			}
			live = nl;
			memcpy(live[nlive++], k + 1, MM_KEY_LEN);
		}
		rc = mm_user_folder_delete(usr, name, stamp, sim_node_eff, n, s->delta);
		if (rc == -ENOENT && nlive == 0 && mm_delta_count(s->delta) == 0)
			rc = 0; /* a folder this node never heard of: nothing to delete */
		for (size_t i = 0; i < nlive && rc >= 0; i++) {
			struct sim_view *v = view_of(n, u, live[i]);
			if (!delta_has_tomb(s, u, live[i]) || !v || v->state != VIEW_TOMB)
				sim_violation(s, "node %u: deleting folder %s left a message live", n->idx, name);
		}
		free(live);
		local_done(s, n, stamp, rc, "folder_delete");
	} else if (what == 1) {
		rc = mm_user_folder_create(usr, name, stamp, sim_node_eff, n, s->delta);
		local_done(s, n, stamp, rc, "folder_create");
	} else {
		rc = mm_user_folder_subscribe(usr, name, what == 2, stamp, sim_node_eff, n, s->delta);
		if (rc == -ENOENT && mm_delta_count(s->delta) == 0)
			rc = 0; /* unknown folder */
		local_done(s, n, stamp, rc, "folder_subscribe");
	}
}

void sim_workload_op(struct sim *s)
{
	if (sim_rng_chance(&s->rng, s->cfg.conflict_p)) {
		op_conflict(s);
		return;
	}
	struct sim_node *n = pick_node(s);
	if (!n)
		return;
	unsigned r = (unsigned)sim_rng_below(&s->rng, 100);
	if (r < 40) {
		uint8_t key[MM_KEY_LEN];
		sim_deliver(s, n, (unsigned)sim_rng_below(&s->rng, s->nusers), 0, key);
	} else if (r < 65) {
		op_flag(s, n, false);
	} else if (r < 78) {
		op_flag(s, n, true);
	} else if (r < 90) {
		op_expunge(s, n);
	} else {
		op_folder(s, n);
	}
}
