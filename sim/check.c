/*
 * check.c — the simulator's invariants, its violation list and its trace ring.
 *
 * During the run (node.c, workload.c): an expunged message never reappears in a node's
 * view, effects only concern messages the view shows, no body that fails its id is
 * ever committed, no record a real node sent is rejected.
 * After healing (sim_converged): every node up, equal state roots, every live
 * message's body present.
 * Then (sim_check_final): every node's records equal node 0's, record by record; each
 * node's mailbox view equals its state; every delivered message is present, as a
 * tombstone exactly when someone expunged it; no message nobody delivered; every flag,
 * keyword and folder register holds the value of the latest write in the oracle log
 * (by (t, node)); every body present matches its id.
 * Then a quiet window (SIM_QUIET_ROUNDS gossip intervals and SIM_QUIET_FETCH_MS,
 * sim_quiet_check): still
 * converged and settled, no UID register changed, no body still wanted, and (without
 * the GC) no record changed and no DIGEST found different roots: no livelock.
 * IMAP UIDs (uid.c, unless --no-uids): converged also means settled: every node lists
 * every live message under the state's UID, with the state's UIDVALIDITY, no need
 * above a UID, no other entries; at the end also no UID twice in a listing and every
 * entry below NEXTUID (additions below NEXTUID are caught when they happen).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sim/internal.h"

void sim_violation(struct sim *s, const char *fmt, ...)
{
	struct sim_result *r = s->res;
	char line[SIM_TRACE_LEN];
	int h = snprintf(line, sizeof(line), "t=%llu ", (unsigned long long)s->now);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + h, sizeof(line) - (size_t)h, fmt, ap);
	va_end(ap);
	if (r->n_violations < SIM_MAX_VIOLATIONS)
		memcpy(r->violations[r->n_violations++], line, SIM_TRACE_LEN);
	sim_trace(s, "VIOLATION %.*s", SIM_TRACE_LEN - 16, line);
	s->stop = true;
}

void sim_trace(struct sim *s, const char *fmt, ...)
{
	struct sim_result *r = s->res;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->trace[s->trace_head % SIM_TRACE_LINES], SIM_TRACE_LEN, fmt, ap);
	va_end(ap);
	s->trace_head++;
	if (r->n_trace < SIM_TRACE_LINES)
		r->n_trace++;
}

void sim_trace_finish(struct sim *s)
{
	struct sim_result *r = s->res;
	if (s->trace_head <= SIM_TRACE_LINES)
		return;
	char tmp[SIM_TRACE_LINES][SIM_TRACE_LEN];
	for (unsigned i = 0; i < SIM_TRACE_LINES; i++)
		memcpy(tmp[i], r->trace[(s->trace_head + i) % SIM_TRACE_LINES], SIM_TRACE_LEN);
	memcpy(r->trace, tmp, sizeof(tmp));
}

/* ---- convergence ------------------------------------------------------------------- */

static bool bodies_present(struct sim_node *n, uint64_t *missing_r);

uint64_t sim_node_missing_bodies(struct sim_node *n)
{
	uint64_t missing = 0;
	bodies_present(n, &missing);
	return missing;
}

static bool bodies_present(struct sim_node *n, uint64_t *missing_r)
{
	size_t pos = 0;
	void *val;
	const uint8_t *k;
	uint64_t missing = 0;
	while ((k = sim_map_next(&n->view, &pos, &val))) {
		struct sim_view *v = val;
		if (v->state != VIEW_LIVE)
			continue;
		uint8_t bk[1 + MM_ID_LEN];
		bk[0] = k[0];
		memcpy(bk + 1, v->body, MM_ID_LEN);
		struct sim_body *b = sim_map_get(&n->bodies, bk);
		if (!b || !b->bytes)
			missing++;
	}
	if (missing_r)
		*missing_r = missing;
	return missing == 0;
}

bool sim_converged(struct sim *s)
{
	uint8_t r0[MM_HASH_LEN], r[MM_HASH_LEN];
	for (unsigned i = 0; i < s->n; i++)
		if (!s->nodes[i].alive)
			return false;
	mm_state_root(s->nodes[0].state, r0);
	for (unsigned i = 1; i < s->n; i++) {
		mm_state_root(s->nodes[i].state, r);
		if (memcmp(r, r0, MM_HASH_LEN) != 0)
			return false;
	}
	for (unsigned i = 0; i < s->n; i++)
		if (!bodies_present(&s->nodes[i], NULL))
			return false;
	return true;
}

struct dctx {
	struct sim *s;
	unsigned node, ref;
	struct mm_user *other;
	const char *user;
	unsigned shown;
};

static const char *rec_kind(const struct mm_rec *r)
{
	if (!r)
		return "absent";
	switch (r->type) {
	case MM_REC_MESSAGE: return "message";
	case MM_REC_EXPUNGED: return "tombstone";
	case MM_REC_FOLDER: return "folder";
	case MM_REC_HORIZON: return "horizon";
	}
	return "?";
}

static int diff_rec(void *arg, const struct mm_rec *r)
{
	struct dctx *c = arg;
	const struct mm_rec *o = c->other ? mm_user_get(c->other, r->key) : NULL;
	if (o && mm_rec_equal(o, r))
		return 0;
	sim_violation(c->s, "  node %u has %s %02x%02x%02x%02x of %s, node %u %s", c->node, rec_kind(r),
	              r->key[0], r->key[1], r->key[2], r->key[3], c->user, c->ref, rec_kind(o));
	return ++c->shown >= 2;
}

static int diff_user(void *arg, struct mm_user *u)
{
	struct dctx *c = arg;
	c->user = mm_user_name(u);
	c->other = mm_state_user(c->s->nodes[c->ref].state, c->user, false);
	return mm_user_foreach(u, NULL, 0, diff_rec, c);
}

void sim_explain_divergence(struct sim *s)
{
	uint8_t r0[MM_HASH_LEN], r[MM_HASH_LEN];
	unsigned differ = 0, down = 0, shown = 0;
	uint64_t missing_total = 0;
	if (s->nodes[0].alive)
		mm_state_root(s->nodes[0].state, r0);
	for (unsigned i = 0; i < s->n; i++) {
		struct sim_node *n = &s->nodes[i];
		if (!n->alive) {
			down++;
			continue;
		}
		uint64_t missing;
		bodies_present(n, &missing);
		missing_total += missing;
		mm_state_root(n->state, r);
		bool d = s->nodes[0].alive && memcmp(r, r0, MM_HASH_LEN) != 0;
		differ += d;
		if ((d || missing) && shown < 4) {
			unsigned up = 0;
			for (uint32_t j = 0; j < n->npeers; j++)
				up += n->peers[j].up;
			sim_violation(s, "node %u: root %02x%02x%02x%02x %s node 0's, %llu bodies missing, "
			              "%u/%u links up", i, r[0], r[1], r[2], r[3], d ? "differs from" : "equals",
			              (unsigned long long)missing, up, n->npeers);
			shown++;
			if (d) {
				if (mm_state_user_count(n->state) != mm_state_user_count(s->nodes[0].state))
					sim_violation(s, "  node %u has %zu users, node 0 %zu", i,
					              mm_state_user_count(n->state),
					              mm_state_user_count(s->nodes[0].state));
				/* which records differ, both ways */
				struct dctx c = { .s = s, .node = i, .ref = 0 };
				mm_state_foreach(n->state, NULL, 0, diff_user, &c);
				struct dctx c0 = { .s = s, .node = 0, .ref = i };
				mm_state_foreach(s->nodes[0].state, NULL, 0, diff_user, &c0);
			}
		}
	}
	if (s->cfg.uids && !differ && !down && !missing_total) {
		/* the records agree, the listings do not: the UID rule did not settle */
		sim_uids_settled(s, true);
		sim_violation(s, "UIDs not settled %llu ms after healing (last UID register change %llu ms "
		              "after healing)", (unsigned long long)s->cfg.bound_ms,
		              (unsigned long long)(s->uid_last_change > s->res->heal_ms
		                                           ? s->uid_last_change - s->res->heal_ms : 0));
		return;
	}
	sim_violation(s, "not converged %llu ms after healing: %u nodes differ from node 0, %u down, "
	              "%llu bodies missing", (unsigned long long)s->cfg.bound_ms, differ, down,
	              (unsigned long long)missing_total);
}

/* ---- final checks ---------------------------------------------------------------------- */

struct fctx {
	struct sim *s;
	struct sim_node *n, *ref;
	unsigned u;
	const char *user;
	struct mm_user *other;
	uint64_t msgs;
};

static const struct sim_oreg *oracle_reg(struct sim *s, unsigned u, const uint8_t key[MM_KEY_LEN],
                                         uint16_t regid)
{
	uint8_t k[1 + MM_KEY_LEN + 2];
	k[0] = (uint8_t)u;
	memcpy(k + 1, key, MM_KEY_LEN);
	memcpy(k + 1 + MM_KEY_LEN, &regid, 2);
	return sim_map_get(&s->regs, k);
}

static void check_reg(struct fctx *c, const uint8_t key[MM_KEY_LEN], uint16_t regid,
                      const struct mm_reg *got, const char *what)
{
	const struct sim_oreg *o = oracle_reg(c->s, c->u, key, regid);
	uint8_t want = o ? o->value : 0;
	uint8_t have = got ? got->value : 0;
	bool stamp_ok = !o || (got && got->stamp.t == o->t && got->stamp.node == o->node);
	if (want != have || !stamp_ok)
		sim_violation(c->s, "%s of %02x%02x%02x%02x (%s) is %u, the CRDT says %u (latest write "
		              "t=%llu node=%016llx)", what, key[0], key[1], key[2], key[3], c->user, have, want,
		              o ? (unsigned long long)o->t : 0ULL, o ? (unsigned long long)o->node : 0ULL);
}

/* Node 0's records against the oracle. */
static int oracle_rec(void *arg, const struct mm_rec *r)
{
	struct fctx *c = arg;
	struct sim *s = c->s;
	uint8_t k[1 + MM_KEY_LEN];
	k[0] = (uint8_t)c->u;
	memcpy(k + 1, r->key, MM_KEY_LEN);
	if (r->type == MM_REC_MESSAGE || r->type == MM_REC_EXPUNGED) {
		if (!sim_map_get(&s->delivered, k))
			sim_violation(s, "message %02x%02x%02x%02x of %s was never delivered", r->key[0],
			              r->key[1], r->key[2], r->key[3], c->user);
	}
	if (r->type == MM_REC_MESSAGE) {
		for (int f = 0; f < MM_FLAG_COUNT; f++) {
			char what[32];
			snprintf(what, sizeof(what), "flag %c", mm_flag_letters[f]);
			check_reg(c, r->key, (uint16_t)f, &r->msg.flags[f], what);
		}
		for (unsigned i = 0; i < sim_nkeywords; i++) {
			const struct mm_reg *got = NULL;
			for (size_t j = 0; j < r->msg.n_keywords; j++)
				if (strcmp(r->msg.keywords[j].name, sim_keywords[i]) == 0)
					got = &r->msg.keywords[j].reg;
			char what[48];
			snprintf(what, sizeof(what), "keyword %s", sim_keywords[i]);
			check_reg(c, r->key, (uint16_t)(SIM_REG_KW + i), got, what);
		}
	} else if (r->type == MM_REC_FOLDER) {
		check_reg(c, r->key, SIM_REG_EXISTS, &r->folder.exists, "folder exists");
		check_reg(c, r->key, SIM_REG_SUBSCRIBED, &r->folder.subscribed, "folder subscribed");
	}
	return s->res->n_violations >= SIM_MAX_VIOLATIONS;
}

/* One node's records: equal to the reference node's, mirrored by its view, bodies. */
static int node_rec(void *arg, const struct mm_rec *r)
{
	struct fctx *c = arg;
	struct sim *s = c->s;
	struct sim_node *n = c->n;
	if (c->other) {
		const struct mm_rec *o = mm_user_get(c->other, r->key);
		if (!o || !mm_rec_equal(o, r))
			sim_violation(s, "node %u and node %u hold different records under %02x%02x%02x%02x",
			              c->ref->idx, n->idx, r->key[0], r->key[1], r->key[2], r->key[3]);
	}
	uint8_t k[1 + MM_KEY_LEN];
	k[0] = (uint8_t)c->u;
	memcpy(k + 1, r->key, MM_KEY_LEN);
	struct sim_view *v = sim_map_get(&n->view, k);
	switch (r->type) {
	case MM_REC_MESSAGE: {
		c->msgs++;
		uint8_t flags = 0;
		for (int f = 0; f < MM_FLAG_COUNT; f++)
			flags |= (uint8_t)(r->msg.flags[f].value << f);
		if (!v || v->state != VIEW_LIVE || v->flags != flags || v->kwhash != sim_kwhash(r) ||
		    memcmp(v->body, r->msg.body, MM_ID_LEN) != 0)
			sim_violation(s, "node %u: the mailbox view of message %02x%02x%02x%02x differs from "
			              "the state", n->idx, r->key[0], r->key[1], r->key[2], r->key[3]);
		uint8_t bk[1 + MM_ID_LEN];
		bk[0] = (uint8_t)c->u;
		memcpy(bk + 1, r->msg.body, MM_ID_LEN);
		struct sim_body *b = sim_map_get(&n->bodies, bk);
		uint8_t id[MM_ID_LEN];
		if (!b || !b->bytes) {
			sim_violation(s, "node %u: body of message %02x%02x%02x%02x missing", n->idx, r->key[0],
			              r->key[1], r->key[2], r->key[3]);
		} else {
			mm_body_id(b->bytes, b->len, id);
			if (memcmp(id, r->msg.body, MM_ID_LEN) != 0 || b->len != r->msg.size)
				sim_violation(s, "node %u: body of message %02x%02x%02x%02x does not match its id",
				              n->idx, r->key[0], r->key[1], r->key[2], r->key[3]);
		}
		break;
	}
	case MM_REC_EXPUNGED:
		c->msgs++;
		if (!v || v->state != VIEW_TOMB)
			sim_violation(s, "node %u: the view does not show %02x%02x%02x%02x as expunged", n->idx,
			              r->key[0], r->key[1], r->key[2], r->key[3]);
		break;
	case MM_REC_FOLDER: {
		uint8_t want = (uint8_t)(r->folder.exists.value | (r->folder.subscribed.value << 1));
		if (v ? (v->state != VIEW_FOLDER || v->flags != want) : want != 0)
			sim_violation(s, "node %u: the view of folder %s differs from the state", n->idx,
			              r->folder.name);
		break;
	}
	default:
		break;
	}
	return s->res->n_violations >= SIM_MAX_VIOLATIONS;
}

static int node_user(void *arg, struct mm_user *u)
{
	struct fctx *c = arg;
	c->user = mm_user_name(u);
	int ui = sim_user_index(c->s, c->user);
	if (ui < 0) {
		sim_violation(c->s, "node %u holds unknown user %s", c->n->idx, c->user);
		return 1;
	}
	c->u = (unsigned)ui;
	c->other = NULL;
	if (c->ref != c->n) {
		c->other = mm_state_user(c->ref->state, c->user, false);
		if (!c->other || mm_user_count(c->other) != mm_user_count(u))
			sim_violation(c->s, "node %u and node %u hold different record counts for %s",
			              c->ref->idx, c->n->idx, c->user);
	}
	return mm_user_foreach(u, NULL, 0, node_rec, c);
}

static int oracle_user(void *arg, struct mm_user *u)
{
	struct fctx *c = arg;
	c->user = mm_user_name(u);
	int ui = sim_user_index(c->s, c->user);
	if (ui < 0)
		return 1;
	c->u = (unsigned)ui;
	return mm_user_foreach(u, NULL, 0, oracle_rec, c);
}

void sim_check_final(struct sim *s)
{
	struct sim_node *ref = &s->nodes[0];
	for (unsigned i = 0; i < s->n && s->res->n_violations < SIM_MAX_VIOLATIONS; i++) {
		struct sim_node *n = &s->nodes[i];
		struct fctx c = { .s = s, .n = n, .ref = ref };
		if (mm_state_user_count(n->state) != mm_state_user_count(ref->state))
			sim_violation(s, "node %u and node 0 hold different user counts", i);
		mm_state_foreach(n->state, NULL, 0, node_user, &c);
		/* the view holds nothing the state lacks */
		uint64_t vmsgs = 0;
		size_t pos = 0;
		void *val;
		while (sim_map_next(&n->view, &pos, &val))
			vmsgs += ((struct sim_view *)val)->state != VIEW_FOLDER &&
			         ((struct sim_view *)val)->state != VIEW_GONE;
		if (vmsgs != c.msgs)
			sim_violation(s, "node %u: the view shows %llu messages and tombstones, the state %llu",
			              i, (unsigned long long)vmsgs, (unsigned long long)c.msgs);
	}
	/* IMAP UIDs: every listing shows the state's UIDs, no number twice, Dovecot's rule */
	if (s->cfg.uids && s->res->n_violations < SIM_MAX_VIOLATIONS)
		sim_uids_settled(s, true);
	/* the oracle: against node 0 (all nodes equal it by now) */
	struct fctx c = { .s = s, .n = ref, .ref = ref };
	mm_state_foreach(ref->state, NULL, 0, oracle_user, &c);
	for (size_t i = 0; i < s->ndkeys && s->res->n_violations < SIM_MAX_VIOLATIONS; i++) {
		const struct sim_dkey *d = &s->dkeys[i];
		uint8_t k[1 + MM_KEY_LEN];
		k[0] = d->user;
		memcpy(k + 1, d->key, MM_KEY_LEN);
		struct mm_user *u = mm_state_user(ref->state, s->users[d->user], false);
		const struct mm_rec *r = u ? mm_user_get(u, d->key) : NULL;
		bool expunged = sim_map_get(&s->expunged, k) != NULL;
		const struct sim_odel *o = sim_map_get(&s->delivered, k);
		if (!r && expunged && s->cfg.gc_grace_ms)
			continue; /* its tombstone was collected */
		if (!r)
			sim_violation(s, "delivered message %02x%02x%02x%02x of %s (node %u) was lost", d->key[0],
			              d->key[1], d->key[2], d->key[3], s->users[d->user], o->origin);
		else if (expunged && r->type != MM_REC_EXPUNGED)
			sim_violation(s, "expunged message %02x%02x%02x%02x of %s reappeared", d->key[0],
			              d->key[1], d->key[2], d->key[3], s->users[d->user]);
		else if (!expunged && r->type != MM_REC_EXPUNGED &&
		         memcmp(r->msg.body, o->body, MM_ID_LEN) != 0)
			sim_violation(s, "message %02x%02x%02x%02x changed its body", d->key[0], d->key[1],
			              d->key[2], d->key[3]);
		else if (!expunged && r->type == MM_REC_EXPUNGED)
			sim_violation(s, "message %02x%02x%02x%02x was expunged though nobody expunged it",
			              d->key[0], d->key[1], d->key[2], d->key[3]);
	}
}

/* ---- IMAP UIDs ------------------------------------------------------------------------- */

static void key4(char out[9], const uint8_t *key)
{
	static const char hx[] = "0123456789abcdef";
	for (int i = 0; i < 4; i++) {
		out[2 * i] = hx[key[i] >> 4];
		out[2 * i + 1] = hx[key[i] & 15];
	}
	out[8] = 0;
}

/* Duplicates and Dovecot's rule over every entry of n's listings (final check). */
static void uid_listing_check(struct sim *s, struct sim_node *n)
{
	struct sim_map byuid;
	sim_map_init(&byuid, 1 + 1 + 4, MM_KEY_LEN);
	size_t pos = 0;
	void *val;
	const uint8_t *k;
	while ((k = sim_map_next(&n->listed, &pos, &val)) && s->res->n_violations < SIM_MAX_VIOLATIONS) {
		const struct sim_lent *e = val;
		if (!e->uid)
			continue;
		const struct sim_listing *l = &n->lists[k[0]][e->folder];
		char ks[9];
		key4(ks, k + 1);
		if (e->uid >= l->next)
			sim_violation(s, "node %u: %s/%s lists %s under UID %u, not below its NEXTUID %u", n->idx,
			              s->users[k[0]], sim_folders[e->folder], ks, e->uid, l->next);
		uint8_t bk[6];
		bk[0] = k[0];
		bk[1] = e->folder;
		memcpy(bk + 2, &e->uid, 4);
		bool created;
		uint8_t *other = sim_map_put(&byuid, bk, &created);
		if (!created) {
			char os[9];
			key4(os, other);
			sim_violation(s, "node %u: UID %u of %s/%s names two messages, %s and %s", n->idx, e->uid,
			              s->users[k[0]], sim_folders[e->folder], os, ks);
		}
		memcpy(other, k + 1, MM_KEY_LEN);
	}
	sim_map_free(&byuid);
}

bool sim_uids_settled(struct sim *s, bool violations)
{
	bool ok = true;
#define UID_BAD(...)                                                       \
	do {                                                               \
		ok = false;                                                \
		if (!violations)                                           \
			return false;                                      \
		sim_violation(s, __VA_ARGS__);                             \
		if (s->res->n_violations >= SIM_MAX_VIOLATIONS)            \
			return false;                                      \
	} while (0)
	for (unsigned i = 0; i < s->n; i++) {
		struct sim_node *n = &s->nodes[i];
		if (!n->alive)
			UID_BAD("node %u is down", i);
		if (!n->alive)
			continue;
		uint32_t live[SIM_MAX_USERS][SIM_NFOLDERS];
		memset(live, 0, sizeof live);
		size_t pos = 0;
		void *val;
		const uint8_t *k;
		while ((k = sim_map_next(&n->view, &pos, &val))) {
			struct sim_view *v = val;
			if (v->state != VIEW_LIVE)
				continue;
			unsigned u = k[0];
			int f = sim_folder_of_hash(s, v->folder);
			char ks[9];
			key4(ks, k + 1);
			struct mm_user *usr = mm_state_user(n->state, s->users[u], false);
			const struct mm_rec *r = usr ? mm_user_get(usr, k + 1) : NULL;
			const struct mm_rec *fr = f >= 0 ? sim_uid_folder_rec(n, u, (unsigned)f) : NULL;
			if (!r || r->type != MM_REC_MESSAGE || !fr) {
				UID_BAD("node %u: message %s of %s has no record or no folder record", i, ks,
				        s->users[u]);
				continue;
			}
			uint32_t want = r->msg.uid_value, need = r->msg.uid_need;
			const struct sim_listing *l = &n->lists[u][f];
			uint8_t lk[1 + MM_KEY_LEN];
			memcpy(lk, k, sizeof lk);
			const struct sim_lent *e = sim_map_get(&n->listed, lk);
			uint32_t have = e && e->uid && e->folder == f ? e->uid : 0;
			live[u][f]++;
			if (!want || have != want || need > want)
				UID_BAD("node %u lists %s of %s/%s under UID %u, the state says %u (need %u)", i, ks,
				        s->users[u], sim_folders[f], have, want, need);
			if (l->uv != fr->folder.uidvalidity)
				UID_BAD("node %u: the listing of %s/%s has UIDVALIDITY %u, the state %u", i,
				        s->users[u], sim_folders[f], l->uv, fr->folder.uidvalidity);
		}
		for (unsigned u = 0; u < s->nusers; u++)
			for (unsigned f = 0; f < SIM_NFOLDERS; f++)
				if (n->lists[u][f].count != live[u][f])
					UID_BAD("node %u: the listing of %s/%s has %u entries for %u live messages", i,
					        s->users[u], sim_folders[f], n->lists[u][f].count, live[u][f]);
		if (violations)
			uid_listing_check(s, n);
	}
#undef UID_BAD
	return ok;
}

/* ---- after convergence: nothing more happens ------------------------------------------- */

static uint64_t records_changed(struct sim *s)
{
	uint64_t changed = 0;
	for (unsigned i = 0; i < s->n; i++)
		for (uint32_t j = 0; j < s->nodes[i].npeers; j++)
			if (s->nodes[i].peers[j].sync)
				changed += mm_sync_stats(s->nodes[i].peers[j].sync)->records_changed;
	return changed;
}

void sim_quiet_begin(struct sim *s)
{
	s->quiet_changed = records_changed(s);
}

void sim_quiet_rounds(struct sim *s)
{
	s->quiet_differs = s->differs;
}

void sim_quiet_check(struct sim *s)
{
	uint64_t since = s->now - s->res->converge_ms;
	/* (the tombstone GC makes new horizons all the time: roots differ until they
	 * have travelled) */
	if (!s->cfg.gc_grace_ms && !sim_converged(s)) {
		sim_violation(s, "converged, and no longer %llu ms later", (unsigned long long)since);
		sim_explain_divergence(s);
		return;
	}
	if (!s->cfg.gc_grace_ms && s->cfg.uids && !sim_uids_settled(s, true))
		return;
	if (s->cfg.uids && s->uid_last_change > s->res->converge_ms)
		sim_violation(s, "a UID register changed %llu ms after convergence",
		              (unsigned long long)(s->uid_last_change - s->res->converge_ms));
	for (unsigned i = 0; i < s->n; i++) {
		struct mm_fetch_stats fs;
		mm_fetch_get_stats(s->nodes[i].fetch, &fs);
		if (fs.wanted)
			sim_violation(s, "node %u still wants %llu bodies %llu ms after convergence", i,
			              (unsigned long long)fs.wanted, (unsigned long long)since);
	}
	if (s->cfg.gc_grace_ms)
		return;
	uint64_t changed = records_changed(s) - s->quiet_changed, differs = s->differs - s->quiet_differs;
	if (changed || differs)
		sim_violation(s, "traffic after convergence: %llu records changed, %llu DIGESTs showed "
		              "different roots, by %llu ms after it", (unsigned long long)changed,
		              (unsigned long long)differs, (unsigned long long)since);
}
