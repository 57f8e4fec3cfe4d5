/*
 * node.c — one simulated node: the real mm_state, mm_clock, mm_fetch, mm_gossip and one
 * mm_sync per peer, wired to the virtual network (net.c), an in-memory body store, and
 * a "mailbox view" that mirrors every effect the crdt reports (what node/ would write
 * into Maildir), so the checker can compare what the store shows with the state.
 *
 * Every connection of a node carries the real Noise channel (chan.c); a crash loses
 * the channels and the handshake timestamps it had accepted, as the daemon's memory.
 *
 * Durability mirrors the daemon: the node commits (a snapshot of every record, in
 * their canonical encoding) periodically and after each local change, before pushing
 * it.  A crash loses everything since the last commit; a restart rebuilds the state
 * (and the view, through the merge effects) from that snapshot.  Bodies are durable
 * once committed to the store (a Maildir file is renamed into place after fsync).
 * Unless --no-uids, effects and arriving bodies also drive the UID model (uid.c),
 * whose listings are durable as soon as written (Dovecot fsyncs dovecot-uidlist).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/link.h"
#include "sim/internal.h"

uint64_t sim_node_now(const struct sim_node *n)
{
	return SIM_EPOCH_MS + n->sim->now + (uint64_t)n->skew;
}

int sim_user_index(const struct sim *s, const char *user)
{
	for (unsigned i = 0; i < s->nusers; i++)
		if (strcmp(s->users[i], user) == 0)
			return (int)i;
	return -ENOENT;
}

uint64_t sim_strhash(const char *str)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (; *str; str++)
		h = (h ^ (uint8_t)*str) * 0x100000001b3ULL;
	return sim_mix64(h);
}

uint64_t sim_kwhash(const struct mm_rec *r)
{
	uint64_t h = 0;
	for (size_t i = 0; i < r->msg.n_keywords; i++)
		if (r->msg.keywords[i].reg.value)
			h ^= sim_strhash(r->msg.keywords[i].name);
	return h;
}

static uint8_t flag_bits(const struct mm_rec *r)
{
	uint8_t b = 0;
	for (int f = 0; f < MM_FLAG_COUNT; f++)
		if (r->msg.flags[f].value)
			b |= (uint8_t)(1u << f);
	return b;
}

/* ---- effects -> mailbox view ---------------------------------------------------- */

void sim_node_eff(void *arg, const char *user, enum mm_effect eff, const struct mm_rec *rec)
{
	struct sim_node *n = arg;
	struct sim *s = n->sim;
	int u = sim_user_index(s, user);
	if (u < 0) {
		sim_violation(s, "node %u: effect for unknown user %s", n->idx, user);
		return;
	}
	if (s->cfg.uids)
		sim_uid_effect(n, (unsigned)u, eff, rec);
	uint8_t vkey[1 + MM_KEY_LEN];
	vkey[0] = (uint8_t)u;
	memcpy(vkey + 1, rec->key, MM_KEY_LEN);
	bool created;
	struct sim_view *v;
	switch (eff) {
	case MM_EFF_MSG_NEW:
		v = sim_map_put(&n->view, vkey, &created);
		if (!created && (v->state == VIEW_TOMB || v->state == VIEW_GONE)) {
			sim_violation(s, "node %u: expunged message %02x%02x%02x%02x of %s reappeared",
			              n->idx, rec->key[0], rec->key[1], rec->key[2], rec->key[3], user);
			return;
		}
		v->state = VIEW_LIVE;
		v->flags = flag_bits(rec);
		v->kwhash = sim_kwhash(rec);
		v->folder = sim_strhash(rec->msg.folder);
		memcpy(v->body, rec->msg.body, MM_ID_LEN);
		if (s->on_new)
			s->on_new(s, n, (unsigned)u, rec->key);
		return;
	case MM_EFF_MSG_FLAGS:
	case MM_EFF_MSG_UID:
		v = sim_map_get(&n->view, vkey);
		if (!v || v->state != VIEW_LIVE) {
			sim_violation(s, "node %u: flag/uid effect for a message the view does not show",
			              n->idx);
			return;
		}
		v->flags = flag_bits(rec);
		v->kwhash = sim_kwhash(rec);
		return;
	case MM_EFF_MSG_EXPUNGED:
		v = sim_map_get(&n->view, vkey);
		if (!v || v->state != VIEW_LIVE) {
			sim_violation(s, "node %u: expunge effect for a message the view does not show",
			              n->idx);
			return;
		}
		v->state = VIEW_TOMB;
		return;
	case MM_EFF_TOMB_NEW:
		v = sim_map_put(&n->view, vkey, &created);
		if (!created && v->state == VIEW_LIVE)
			sim_violation(s, "node %u: TOMB_NEW for a message the view shows live", n->idx);
		v->state = VIEW_TOMB;
		return;
	case MM_EFF_FOLDER:
		v = sim_map_put(&n->view, vkey, &created);
		v->state = VIEW_FOLDER;
		v->flags = (uint8_t)(rec->folder.exists.value | (rec->folder.subscribed.value << 1));
		v->folder = sim_strhash(rec->folder.name);
		return;
	case MM_EFF_GC:
		v = sim_map_get(&n->view, vkey);
		if (v && v->state == VIEW_TOMB)
			v->state = VIEW_GONE; /* (kept: the message must still never come back) */
		return;
	}
}

/* ---- body store -------------------------------------------------------------------- */

struct sim_write {
	struct sim_node *node;
	uint8_t user;
	uint8_t id[MM_ID_LEN];
	uint64_t size, len;
	uint8_t *buf;
};

static struct sim_body *body_get(struct sim_node *n, unsigned user, const uint8_t id[MM_ID_LEN])
{
	uint8_t k[1 + MM_ID_LEN];
	k[0] = (uint8_t)user;
	memcpy(k + 1, id, MM_ID_LEN);
	struct sim_body *b = sim_map_get(&n->bodies, k);
	return b && b->bytes ? b : NULL;
}

int sim_node_store_body(struct sim_node *n, unsigned user, const uint8_t id[MM_ID_LEN],
                        const uint8_t *bytes, size_t len)
{
	uint8_t k[1 + MM_ID_LEN];
	k[0] = (uint8_t)user;
	memcpy(k + 1, id, MM_ID_LEN);
	struct sim_body *b = sim_map_put(&n->bodies, k, NULL);
	if (b->bytes)
		return 0;
	b->bytes = malloc(len ? len : 1);
	if (!b->bytes)
		return -ENOMEM;
	memcpy(b->bytes, bytes, len);
	b->len = len;
	return 0;
}

static ssize_t body_read(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t offset,
                         uint8_t *buf, size_t cap)
{
	struct sim_node *n = arg;
	int u = sim_user_index(n->sim, user);
	if (u < 0)
		return -ENOENT;
	struct sim_body *b = body_get(n, (unsigned)u, id);
	if (!b)
		return -ENOENT;
	if (offset >= b->len)
		return 0;
	size_t k = b->len - offset < cap ? (size_t)(b->len - offset) : cap;
	memcpy(buf, b->bytes + offset, k);
	return (ssize_t)k;
}

static int body_begin(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size,
                      void **handle_r)
{
	struct sim_node *n = arg;
	int u = sim_user_index(n->sim, user);
	if (u < 0)
		return -EINVAL;
	if (size > SIM_BODY_MAX)
		return -EFBIG;
	struct sim_write *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->buf = malloc(size ? size : 1);
	if (!w->buf) {
		free(w);
		return -ENOMEM;
	}
	w->node = n;
	w->user = (uint8_t)u;
	memcpy(w->id, id, MM_ID_LEN);
	w->size = size;
	n->writes_open++;
	*handle_r = w;
	return 0;
}

static int body_write(void *handle, const uint8_t *data, size_t len)
{
	struct sim_write *w = handle;
	if (len > w->size - w->len)
		return -EFBIG;
	memcpy(w->buf + w->len, data, len);
	w->len += len;
	return 0;
}

static void write_free(struct sim_write *w)
{
	w->node->writes_open--;
	free(w->buf);
	free(w);
}

static int body_commit(void *handle)
{
	struct sim_write *w = handle;
	struct sim_node *n = w->node;
	int rc = 0;
	uint8_t id[MM_ID_LEN];
	mm_body_id(w->buf, w->len, id);
	if (w->len != w->size || memcmp(id, w->id, MM_ID_LEN) != 0) {
		/* the session must verify before committing: this is a protocol bug */
		sim_violation(n->sim, "node %u: a body that does not match its id was committed "
		              "(%llu of %llu bytes)", n->idx, (unsigned long long)w->len,
		              (unsigned long long)w->size);
		rc = -EBADMSG;
	} else {
		rc = sim_node_store_body(n, w->user, w->id, w->buf, w->len);
		if (rc == 0 && n->sim->cfg.uids) /* the file is there: list it */
			sim_uid_body(n, w->user);
	}
	write_free(w);
	return rc;
}

static void body_abort(void *handle)
{
	write_free(handle);
}

static int body_have(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	struct sim_node *n = arg;
	int u = sim_user_index(n->sim, user);
	return u >= 0 && body_get(n, (unsigned)u, id) ? 1 : 0;
}

/* The fetch scheduler's cfg.needed, as node/daemon.c body_needed (the store's
 * mm_store_body_needed_id): the body is missing here and a live message of the
 * user's view has it. */
static bool body_needed(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	struct sim_node *n = arg;
	int u = sim_user_index(n->sim, user);
	if (u < 0 || body_get(n, (unsigned)u, id))
		return false;
	size_t pos = 0;
	void *val;
	const uint8_t *k;
	while ((k = sim_map_next(&n->view, &pos, &val))) {
		const struct sim_view *v = val;
		if (k[0] == u && v->state == VIEW_LIVE && memcmp(v->body, id, MM_ID_LEN) == 0)
			return true;
	}
	return false;
}

/* ---- session events ----------------------------------------------------------------- */

static void sync_event(void *arg, struct mm_sync *ss, const struct mm_sync_event *ev)
{
	struct sim_node *n = arg;
	struct sim *s = n->sim;
	switch (ev->type) {
	case MM_SYNC_EV_DIFFERS:
		s->differs++; /* the quiet window after convergence counts them */
		return;
	case MM_SYNC_EV_ROUND_DONE:
		s->res->rounds_done++;
		if (s->on_round)
			s->on_round(s, n, mm_sync_stats(ss));
		return;
	case MM_SYNC_EV_ROUND_ABORT:
		s->res->rounds_aborted++;
		sim_trace(s, "t=%llu node %u round %llu with %u aborted: %d", (unsigned long long)s->now,
		          n->idx, (unsigned long long)ev->round,
		          ((struct sim_peer *)mm_sync_user_data(ss))->idx, ev->err);
		return;
	case MM_SYNC_EV_PROTO_ERROR:
		sim_trace(s, "t=%llu node %u protocol error from %u: %d", (unsigned long long)s->now,
		          n->idx, ((struct sim_peer *)mm_sync_user_data(ss))->idx, ev->err);
		return;
	case MM_SYNC_EV_BODY_OK:
		s->res->bodies_fetched++;
		return;
	case MM_SYNC_EV_BODY_BAD:
		/* a fetch that timed out (proto/sync.c mm_sync_tick reports it as BODY_BAD
		 * -ETIMEDOUT: a congested or stalled stream) is retried by the scheduler, and
		 * convergence still needs every body; anything else: the network never
		 * corrupts bytes, so a bad body means a bug somewhere */
		if (ev->err == -ETIMEDOUT) {
			sim_trace(s, "t=%llu node %u body fetch from %u timed out", (unsigned long long)s->now,
			          n->idx, ((struct sim_peer *)mm_sync_user_data(ss))->idx);
			return;
		}
		sim_violation(s, "node %u: body from %u failed verification or storage: %d", n->idx,
		              ((struct sim_peer *)mm_sync_user_data(ss))->idx, ev->err);
		return;
	case MM_SYNC_EV_RECORD_REJECTED:
		s->res->records_rejected++;
		sim_violation(s, "node %u: record from %u rejected: %d", n->idx,
		              ((struct sim_peer *)mm_sync_user_data(ss))->idx, ev->err);
		return;
	case MM_SYNC_EV_BODY_MISSING:
		sim_violation(s, "node %u: body missing with a fetch scheduler configured", n->idx);
		return;
	default:
		return;
	}
}

/* ---- durability ------------------------------------------------------------------ */

static int snap_put(struct sim_node *n, const void *p, size_t len)
{
	if (n->snap_len + len > n->snap_cap) {
		size_t ncap = n->snap_cap ? n->snap_cap : 4096;
		while (ncap < n->snap_len + len)
			ncap *= 2;
		uint8_t *nb = realloc(n->snap, ncap);
		if (!nb)
			return -ENOMEM;
		n->snap = nb;
		n->snap_cap = ncap;
	}
	memcpy(n->snap + n->snap_len, p, len);
	n->snap_len += len;
	return 0;
}

static int snap_rec(void *arg, const struct mm_rec *r)
{
	struct sim_node *n = arg;
	uint8_t buf[8192];
	ssize_t len = mm_rec_encode(r, buf, sizeof(buf));
	if (len < 0)
		return (int)len;
	uint32_t l = (uint32_t)len;
	int rc = snap_put(n, &l, sizeof(l));
	return rc ? rc : snap_put(n, buf, (size_t)len);
}

static int snap_user(void *arg, struct mm_user *u)
{
	struct sim_node *n = arg;
	const char *name = mm_user_name(u);
	uint32_t l = (uint32_t)strlen(name);
	int rc = snap_put(n, &l, sizeof(l));
	if (!rc)
		rc = snap_put(n, name, l);
	uint32_t cnt = (uint32_t)mm_user_count(u);
	if (!rc)
		rc = snap_put(n, &cnt, sizeof(cnt));
	if (!rc)
		rc = mm_user_foreach(u, NULL, 0, snap_rec, n);
	return rc;
}

int sim_node_commit(struct sim_node *n)
{
	if (!n->alive)
		return 0;
	n->snap_len = 0;
	int rc = mm_state_foreach(n->state, NULL, 0, snap_user, n);
	if (rc)
		return rc < 0 ? rc : -EIO;
	n->snap_clock = n->clock.last;
	n->has_snap = true;
	return 0;
}

struct gc_walk {
	struct sim_node *n;
	mm_hlc horizon;
	int dropped;
};

static int gc_user(void *arg, struct mm_user *u)
{
	struct gc_walk *w = arg;
	int r = mm_user_gc(u, w->horizon, sim_node_eff, w->n, w->n->sim->delta);
	if (r > 0)
		w->dropped += r;
	return r < 0;
}

void sim_node_gc(struct sim_node *n)
{
	struct sim *s = n->sim;
	const struct sim_config *c = &s->cfg;
	uint64_t now = sim_node_now(n);
	/* as node/daemon.c gc_cb (mm_gc_peer_tick: equal roots the peer kept), and here also
	 * a commit interval plus a stream timeout old: a DIGEST datagram can overtake a
	 * backlog of stream messages holding the peer's old copy, which the daemon's GC
	 * interval, an hour, covers and the simulator's, commit-ms, does not */
	uint64_t synced[n->npeers ? n->npeers : 1], bounds[n->npeers ? n->npeers : 1];
	uint64_t ids[n->npeers + 1];
	ids[0] = n->id;
	for (uint32_t i = 0; i < n->npeers; i++)
		ids[i + 1] = s->nodes[n->peers[i].idx].id;
	uint64_t members = mm_gc_members_hash(ids, n->npeers + 1);
	uint64_t lag = c->commit_ms + c->stream_timeout_ms;
	uint64_t settled = now > lag ? now - lag : 0;
	for (uint32_t i = 0; i < n->npeers; i++) {
		struct sim_peer *p = &n->peers[i];
		uint64_t seen = mm_gc_peer_tick(&p->gc, p->sync ? mm_sync_stats(p->sync)->last_equal_ms : 0, p->epoch,
		                                p->up && p->sync);
		synced[i] = seen < settled ? seen : settled;
		if (p->sync && mm_sync_stats(p->sync)->peer_gc_bound_ms) {
			p->gc.bound_ms = mm_sync_stats(p->sync)->peer_gc_bound_ms;
			p->gc.members = mm_sync_stats(p->sync)->peer_gc_members;
		}
		bounds[i] = mm_gc_peer_bound(&p->gc, members);
	}
	/* as the daemon: the own bound goes to every peer, the horizon waits for theirs */
	uint64_t own = mm_gc_horizon_ms(now, c->gc_grace_ms, c->gc_max_ms, c->gc_margin_ms, synced, NULL, n->npeers);
	for (uint32_t i = 0; i < n->npeers; i++)
		if (n->peers[i].sync)
			mm_sync_gc_bound_set(n->peers[i].sync, own, members);
	uint64_t h = c->gc_no_wait ? (now > c->gc_grace_ms ? now - c->gc_grace_ms : 0)
	           : c->gc_no_bounds ? own
	                             : mm_gc_horizon_ms(now, c->gc_grace_ms, c->gc_max_ms, c->gc_margin_ms, synced,
	                                                bounds, n->npeers);
	if (c->gc_margin_ms)
		h = h / c->gc_margin_ms * c->gc_margin_ms;
	if (!h)
		return;
	mm_delta_clear(s->delta);
	struct gc_walk w = { n, { h << MM_HLC_LOGICAL_BITS, 0 }, 0 };
	if (mm_state_foreach(n->state, NULL, 0, gc_user, &w) != 0)
		sim_violation(s, "node %u: tombstone gc failed", n->idx);
	s->res->gc_dropped += (uint64_t)w.dropped;
	if (mm_delta_count(s->delta) > 0) {
		sim_trace(s, "t=%llu node %u gc horizon %llu dropped %d", (unsigned long long)s->now, n->idx,
		          (unsigned long long)(h - SIM_EPOCH_MS), w.dropped);
		if (c->push) /* as the daemon pushes the new horizon */
			(void)mm_gossip_push(n->gossip, s->delta, NULL, now);
	}
	mm_delta_clear(s->delta);
}

static int snap_restore(struct sim_node *n)
{
	struct mm_arena a;
	mm_arena_init(&a);
	size_t pos = 0;
	int rc = 0;
	char name[MM_NAME_MAX + 1];
	while (pos < n->snap_len && !rc) {
		uint32_t l, cnt;
		memcpy(&l, n->snap + pos, 4);
		pos += 4;
		memcpy(name, n->snap + pos, l);
		name[l] = 0;
		pos += l;
		memcpy(&cnt, n->snap + pos, 4);
		pos += 4;
		for (uint32_t i = 0; i < cnt && !rc; i++) {
			uint32_t rl;
			memcpy(&rl, n->snap + pos, 4);
			pos += 4;
			struct mm_rec r;
			rc = mm_rec_decode(n->snap + pos, rl, &r, &a);
			pos += rl;
			if (!rc) {
				int m = mm_state_merge(n->state, name, &r, sim_node_eff, n);
				rc = m < 0 ? m : 0;
			}
			mm_arena_reset(&a);
		}
		if (cnt == 0 && !mm_state_user(n->state, name, true))
			rc = -ENOMEM;
	}
	mm_arena_free(&a);
	return rc;
}

/* ---- life cycle ------------------------------------------------------------------- */

static int make_session(struct sim *s, struct sim_node *n, struct sim_peer *p)
{
	struct mm_sync_config c;
	memset(&c, 0, sizeof(c));
	c.state = n->state;
	c.local_node = n->id;
	c.peer_node = s->nodes[p->idx].id;
	c.eff = sim_node_eff;
	c.eff_arg = n;
	c.io.send = sim_net_send;
	c.io.arg = p;
	c.body.read = body_read;
	c.body.begin = body_begin;
	c.body.write = body_write;
	c.body.commit = body_commit;
	c.body.abort = body_abort;
	c.body.have = body_have;
	c.body.arg = n;
	c.fetch = n->fetch;
	c.lead = n->lead;
	c.clock = &n->clock;
	c.event = sync_event;
	c.event_arg = n;
	if (s->cfg.push) {
		c.relay = mm_gossip_relay;
		c.relay_arg = n->gossip;
	}
	c.user_data = p;
	int rc = mm_sync_new(&c, &p->sync);
	if (rc < 0)
		return rc;
	return mm_gossip_add(n->gossip, p->sync);
}

int sim_node_start(struct sim *s, struct sim_node *n)
{
	int rc;
	n->gen++;
	n->state = mm_state_new();
	if (!n->state)
		return -ENOMEM;
	mm_clock_init(&n->clock, n->id, n->has_snap ? n->snap_clock : 0);
	sim_map_clear(&n->view);
	n->alive = true;
	/* each peer's last handshake timestamp, from the state database, by the daemon's
	 * rule (one more than max_skew ahead of this node's clock is dropped) */
	for (uint32_t i = 0; i < n->npeers; i++)
		(void)mm_link_ts_restore(n->peers[i].last_ts, n->peers[i].saved_hs_ms, sim_node_now(n),
		                         SIM_MAX_SKEW_MS);
	/* the daemon's memory: not the authority until its grace is over */
	n->uid_auth = false;
	n->started = s->now;
	if (n->has_snap) {
		rc = snap_restore(n);
		if (rc < 0)
			return rc;
	}
	/* as the daemon: a body no live message needs any more is dropped once every
	 * peer failed it (else one expunged before it arrived is asked for forever) */
	struct mm_fetch_config fc = { .needed = body_needed, .needed_arg = n };
	rc = mm_fetch_new(&fc, &n->fetch);
	if (rc < 0)
		return rc;
	/* as the daemon: the election starts over (nothing of it is durable) */
	struct mm_lead_config lc = { .self = n->id, .expire_ms = mm_lead_expire_for(s->cfg.gossip_ms),
	                             .grace_ms = s->cfg.uid_grace_ms };
	rc = mm_lead_new(&lc, sim_node_now(n), &n->lead);
	if (rc < 0)
		return rc;
	struct mm_gossip_config gc = { .fanout = s->cfg.fanout, .seed = sim_rng_next(&s->rng) };
	rc = mm_gossip_new(&gc, &n->gossip);
	if (rc < 0)
		return rc;
	for (uint32_t i = 0; i < n->npeers; i++) {
		rc = make_session(s, n, &n->peers[i]);
		if (rc < 0)
			return rc;
		n->peers[i].gc.sample_up = false; /* the daemon's memory */
		if (!n->peers[i].gc.known_ms)
			n->peers[i].gc.known_ms = sim_node_now(n);
	}
	/* bodies the durable state needs but the store lacks (their record was committed,
	 * the body had not arrived yet): the scheduler fetches them once peers connect */
	size_t pos = 0;
	void *val;
	const uint8_t *k;
	while ((k = sim_map_next(&n->view, &pos, &val))) {
		struct sim_view *v = val;
		if (v->state != VIEW_LIVE || body_get(n, k[0], v->body))
			continue;
		struct mm_user *usr = mm_state_user(n->state, s->users[k[0]], false);
		const struct mm_rec *r = usr ? mm_user_get(usr, k + 1) : NULL;
		if (r && r->type == MM_REC_MESSAGE) {
			rc = mm_fetch_want(n->fetch, s->users[k[0]], v->body, r->msg.size, r->msg.uid_value, NULL,
			                   sim_node_now(n));
			if (rc < 0)
				return rc;
		}
	}
	/* links come up after a short delay */
	for (uint32_t i = 0; i < n->npeers; i++) {
		struct sim_node *b = &s->nodes[n->peers[i].idx];
		if (b->alive)
			sim_link_schedule_reconnect(s, n, i,
			                            sim_rng_range(&s->rng, 1, SIM_RECONNECT_MAX_MS));
	}
	uint64_t first = s->now + 1 + sim_rng_below(&s->rng, s->cfg.gossip_ms);
	sim_schedule(s, first, EV_TICK, n->idx, 0, n->gen);
	sim_schedule(s, s->now + s->cfg.commit_ms, EV_COMMIT, n->idx, 0, n->gen);
	if (n->gen > 1)
		sim_trace(s, "t=%llu node %u restarted (%zu snapshot bytes)", (unsigned long long)s->now,
		          n->idx, n->snap_len);
	return 0;
}

static void node_stop(struct sim_node *n)
{
	for (uint32_t i = 0; i < n->npeers; i++) {
		sim_chan_close(n->sim, &n->peers[i]);
		mm_sync_free(&n->peers[i].sync);
	}
	mm_gossip_free(&n->gossip);
	mm_fetch_free(&n->fetch);
	mm_lead_free(&n->lead);
	mm_state_free(&n->state);
	n->alive = false;
	n->uid_auth = false;
	n->catching_up = false;
	n->uid_queued = false; /* its EV_UIDPASS belongs to this incarnation */
	memset(n->uid_dirty, 0, sizeof n->uid_dirty); /* the listings themselves are durable */
	sim_uid_stop(n);
}

void sim_node_crash(struct sim *s, struct sim_node *n)
{
	s->res->crashes++;
	sim_trace(s, "t=%llu node %u crashed", (unsigned long long)s->now, n->idx);
	n->alive = false;
	for (uint32_t i = 0; i < n->npeers; i++) {
		sim_link_reset(s, n, i, "crash");
		/* the memory goes; the state database's copy (saved_hs_ms) is read at start */
		memset(n->peers[i].last_ts, 0, MM_CH_TAI64N_LEN);
	}
	node_stop(n);
}

void sim_node_free(struct sim_node *n)
{
	if (n->alive)
		node_stop(n);
	size_t pos = 0;
	void *v;
	while (sim_map_next(&n->bodies, &pos, &v))
		free(((struct sim_body *)v)->bytes);
	sim_map_free(&n->bodies);
	sim_map_free(&n->view);
	sim_map_free(&n->listed);
	free(n->snap);
	for (uint32_t i = 0; i < n->npeers; i++)
		mm_link_rx_release(&n->peers[i].rx);
	free(n->peers);
	n->snap = NULL;
	n->peers = NULL;
}
