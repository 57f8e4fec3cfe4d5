/*
 * run.c — one simulation from seed to verdict, and the measurements.
 *
 * A run: set up N nodes (ids, clock skews, slow nodes, the peer graph) from the seed;
 * phase 1 (cfg.phase_ms): workload and faults; then heal (partitions end, crashed
 * nodes restart, links reconnect, no more loss) and phase 2: check every quarter
 * gossip interval whether the cluster converged; it must within cfg.bound_ms, after
 * which the final invariants run (check.c), and then SIM_QUIET_ROUNDS more intervals
 * and SIM_QUIET_FETCH_MS must change nothing (check.c sim_quiet_check).  The first violation stops the run.
 * Effects schedule the UID plans of the folders they touched (uid.c, EV_UIDPASS), as
 * the daemon's deferred mirror work at the commit after a batch of effects.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/internal.h"

void sim_config_defaults(struct sim_config *c)
{
	memset(c, 0, sizeof(*c));
	c->seed = 1;
	c->nodes = 5;
	c->users = 3;
	c->gossip_ms = 1000;
	c->commit_ms = 5000;
	c->push = true;
	c->ops_per_s = 5;
	c->large_p = 0.05;
	c->conflict_p = 0.05;
	c->phase_ms = 60000;
	c->loss = 0.02;
	c->delay_min_ms = 1;
	c->delay_max_ms = 20;
	c->tail_p = 0.01;
	c->tail_ms = 500;
	c->reorder = 0.02;
	c->reorder_ms = 50;
	c->dup = 0.01;
	c->resets_per_s = 0.02;
	c->partitions_per_s = 0.01;
	c->partition_ms = 10000;
	c->oneway_p = 0.3;
	c->crashes_per_s = 0.01;
	c->down_ms = 5000;
	c->skew_ms = 500;
	c->slow_p = 0.1;
	c->slow_factor = 5;
	c->stream_timeout_ms = 15000;
	/* far below the daemon's 1 GiB / 120 s, so that ordinary runs rekey often */
	c->rekey_bytes = 32768;
	c->rekey_ms = 5000;
	c->attacks_per_s = 0.05;
	c->bound_ms = 120000;
	c->uids = true;
	c->uid_grace_ms = 5000; /* node/daemon.c UID_AUTHORITY_GRACE_MS */
	c->uid_push = true;     /* node/daemon.c commit_cb pushes the commit's UID changes */
	c->uid_hold = true;     /* node/store.c hold_body */
	c->uid_refile_hold = true; /* mm_uid_plan's hold, node/store.c uid_sync_folder */
}

void sim_config_random(struct sim_config *c, uint64_t seed, unsigned max_nodes)
{
	struct sim_rng r;
	sim_rng_seed(&r, seed ^ 0x5eed5eed5eed5eedULL);
	sim_config_defaults(c);
	c->seed = seed;
	if (max_nodes < 2)
		max_nodes = 2;
	c->nodes = 2 + (unsigned)sim_rng_below(&r, max_nodes - 1);
	c->users = 1 + (unsigned)sim_rng_below(&r, 3);
	c->push = sim_rng_chance(&r, 0.75);
	c->ops_per_s = 1 + (double)sim_rng_below(&r, 10);
	c->large_p = (double)sim_rng_below(&r, 11) / 100;
	c->conflict_p = (double)sim_rng_below(&r, 21) / 100;
	c->phase_ms = 10000 + sim_rng_below(&r, 30001);
	c->loss = (double)sim_rng_below(&r, 31) / 100;
	c->delay_min_ms = (uint32_t)sim_rng_below(&r, 10);
	c->delay_max_ms = c->delay_min_ms + (uint32_t)sim_rng_below(&r, 200);
	c->tail_p = (double)sim_rng_below(&r, 6) / 100;
	c->tail_ms = 100 + (uint32_t)sim_rng_below(&r, 3000);
	c->reorder = (double)sim_rng_below(&r, 21) / 100;
	c->reorder_ms = 10 + (uint32_t)sim_rng_below(&r, 500);
	c->dup = (double)sim_rng_below(&r, 11) / 100;
	c->resets_per_s = (double)sim_rng_below(&r, 11) / 100;
	c->partitions_per_s = (double)sim_rng_below(&r, 6) / 100;
	c->partition_ms = 1000 + (uint32_t)sim_rng_below(&r, 30000);
	c->oneway_p = (double)sim_rng_below(&r, 101) / 100;
	c->crashes_per_s = (double)sim_rng_below(&r, 6) / 100;
	c->down_ms = 500 + (uint32_t)sim_rng_below(&r, 15000);
	/* sometimes beyond mm_clock_observe's 60 s bound */
	c->skew_ms = sim_rng_chance(&r, 0.1) ? 120000 : (uint32_t)sim_rng_below(&r, 5000);
	c->slow_p = (double)sim_rng_below(&r, 31) / 100;
	c->slow_factor = 2 + (unsigned)sim_rng_below(&r, 9);
	/* drawn last, so the parameters above stay those of the seed before the channel */
	c->rekey_bytes = 1024ULL << sim_rng_below(&r, 10);   /* 1 KiB .. 512 KiB */
	c->rekey_ms = 500 + sim_rng_below(&r, 20000);
	c->attacks_per_s = (double)sim_rng_below(&r, 31) / 100;
}

/* ---- set-up and tear-down ------------------------------------------------------------ */

static int add_peer(struct sim_node *n, uint32_t idx, uint32_t back)
{
	if (n->npeers == n->cap_peers) {
		uint32_t nc = n->cap_peers ? n->cap_peers * 2 : 8;
		struct sim_peer *np = realloc(n->peers, nc * sizeof(*np));
		if (!np)
			return -ENOMEM;
		n->peers = np;
		n->cap_peers = nc;
	}
	struct sim_peer *p = &n->peers[n->npeers++];
	memset(p, 0, sizeof(*p));
	p->owner = n;
	p->idx = idx;
	p->back = back;
	return 0;
}

static int add_edge(struct sim *s, struct sim_map *edges, uint32_t a, uint32_t b)
{
	uint32_t k[2] = { a < b ? a : b, a < b ? b : a };
	bool created;
	sim_map_put(edges, k, &created);
	if (!created)
		return 0;
	struct sim_node *na = &s->nodes[a], *nb = &s->nodes[b];
	int rc = add_peer(na, b, nb->npeers);
	if (!rc)
		rc = add_peer(nb, a, na->npeers - 1);
	return rc < 0 ? rc : 1;
}

static int build_graph(struct sim *s)
{
	unsigned n = s->n;
	unsigned d = s->cfg.degree ? s->cfg.degree : (n <= 64 ? n - 1 : 32);
	struct sim_map edges;
	sim_map_init(&edges, 8, 1);
	int rc = 0;
	if (d >= n - 1) {
		for (uint32_t a = 0; a < n && rc >= 0; a++)
			for (uint32_t b = a + 1; b < n && rc >= 0; b++)
				rc = add_edge(s, &edges, a, b);
	} else {
		/* a ring keeps the graph connected; random chords make it an expander */
		for (uint32_t a = 0; a < n && rc >= 0; a++)
			rc = add_edge(s, &edges, a, (a + 1) % n);
		for (uint32_t a = 0; a < n && rc >= 0; a++) {
			for (unsigned tries = 0; s->nodes[a].npeers < d && tries < 20 * d && rc >= 0; tries++) {
				uint32_t b = (uint32_t)sim_rng_below(&s->rng, n);
				if (b != a && s->nodes[b].npeers < d + d / 4)
					rc = add_edge(s, &edges, a, b);
			}
		}
	}
	sim_map_free(&edges);
	return rc < 0 ? rc : 0;
}

static void teardown(struct sim *s)
{
	if (s->nodes)
		for (unsigned i = 0; i < s->n; i++)
			sim_node_free(&s->nodes[i]);
	free(s->nodes);
	struct sim_ev ev;
	while (sim_ev_pop(s, &ev))
		free(ev.data);
	free(s->heap);
	for (unsigned i = 0; i < SIM_MAX_PARTS; i++)
		free(s->parts[i].side);
	sim_map_free(&s->delivered);
	sim_map_free(&s->expunged);
	sim_map_free(&s->regs);
	sim_map_free(&s->uid_seen);
	sim_chan_free_captures(s);
	free(s->dkeys);
	mm_delta_free(&s->delta);
	sim_trace_finish(s);
	free(s);
}

static int setup(const struct sim_config *cfg, struct sim_result *res, struct sim **s_r)
{
	if (cfg->nodes < 2 || cfg->nodes > 20000 || cfg->users < 1 || cfg->users > SIM_MAX_USERS ||
	    cfg->gossip_ms == 0 || cfg->commit_ms == 0 || cfg->delay_max_ms < cfg->delay_min_ms ||
	    cfg->slow_factor < 1 || cfg->loss < 0 || cfg->loss > 0.95)
		return -EINVAL;
	memset(res, 0, sizeof(*res));
	res->seed = cfg->seed;
	res->nodes = cfg->nodes;
	struct sim *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cfg = *cfg;
	s->res = res;
	sim_rng_seed(&s->rng, cfg->seed);
	s->n = cfg->nodes;
	s->nusers = cfg->users;
	for (unsigned i = 0; i < s->nusers; i++)
		snprintf(s->users[i], sizeof(s->users[i]), "example.org/user%u", i);
	sim_map_init(&s->delivered, 1 + MM_KEY_LEN, sizeof(struct sim_odel));
	sim_map_init(&s->expunged, 1 + MM_KEY_LEN, 1);
	sim_map_init(&s->regs, 1 + MM_KEY_LEN + 2, sizeof(struct sim_oreg));
	sim_map_init(&s->uid_seen, 2 + 4 + 4, sizeof(struct sim_useen));
	for (unsigned i = 0; i < SIM_NFOLDERS; i++)
		s->folder_hash[i] = sim_strhash(sim_folders[i]);
	s->delta = mm_delta_new();
	s->nodes = calloc(s->n, sizeof(*s->nodes));
	int rc = (!s->delta || !s->nodes) ? -ENOMEM : 0;
	for (unsigned i = 0; i < SIM_MAX_PARTS && !rc; i++)
		if (!(s->parts[i].side = calloc(s->n, 1)))
			rc = -ENOMEM;
	if (rc) {
		teardown(s);
		return rc;
	}
	struct sim_map ids;
	sim_map_init(&ids, 8, 1);
	for (unsigned i = 0; i < s->n; i++) {
		struct sim_node *n = &s->nodes[i];
		n->sim = s;
		n->idx = i;
		/* a static key pair from the seed; the id derives from it, as in the daemon */
		bool fresh;
		do {
			uint8_t rnd[32];
			fresh = false;
			sim_rng_bytes(&s->rng, rnd, sizeof rnd);
			mm_key_generate(n->priv, rnd);
			if (mm_key_public(n->priv, n->pub) < 0)
				continue;
			n->id = mm_node_id(n->pub);
			sim_map_put(&ids, &n->id, &fresh);
		} while (!fresh || n->id == 0);
		n->skew = cfg->skew_ms ? (int64_t)sim_rng_below(&s->rng, 2ULL * cfg->skew_ms + 1) - cfg->skew_ms : 0;
		n->slow = sim_rng_chance(&s->rng, cfg->slow_p) ? cfg->slow_factor : 1;
		sim_map_init(&n->bodies, 1 + MM_ID_LEN, sizeof(struct sim_body));
		sim_map_init(&n->view, 1 + MM_KEY_LEN, sizeof(struct sim_view));
		sim_map_init(&n->listed, 1 + MM_KEY_LEN, sizeof(struct sim_lent));
	}
	sim_map_free(&ids);
	uint8_t rnd[32];
	sim_rng_bytes(&s->rng, rnd, sizeof rnd);
	mm_key_generate(s->attacker_priv, rnd);
	rc = build_graph(s);
	for (unsigned i = 0; i < s->n && !rc; i++)
		rc = sim_node_start(s, &s->nodes[i]);
	if (rc) {
		teardown(s);
		return rc;
	}
	*s_r = s;
	return 0;
}

static uint64_t interval(struct sim *s, double per_s)
{
	uint64_t mean_ms = (uint64_t)(1000.0 / per_s);
	return 1 + sim_rng_below(&s->rng, 2 * mean_ms + 1);
}

/* --sabotage: break one node on purpose so the checker must notice (tests/it_sim.sh). */
static void sabotage(struct sim *s)
{
	struct sim_node *n = &s->nodes[s->n - 1];
	size_t pos = 0;
	void *val;
	const uint8_t *k;
	if (s->cfg.sabotage == 1) {
		while ((k = sim_map_next(&n->view, &pos, &val))) {
			struct sim_view *v = val;
			uint8_t bk[1 + MM_ID_LEN];
			bk[0] = k[0];
			memcpy(bk + 1, v->body, MM_ID_LEN);
			struct sim_body *b = v->state == VIEW_LIVE ? sim_map_get(&n->bodies, bk) : NULL;
			if (b && b->bytes && b->len) {
				b->bytes[b->len / 2] ^= 1;
				return;
			}
		}
	} else if (s->cfg.sabotage == 2) {
		while ((k = sim_map_next(&n->view, &pos, &val))) {
			struct sim_view *v = val;
			if (v->state == VIEW_LIVE) {
				v->flags ^= 1u << MM_FLAG_SEEN;
				return;
			}
		}
	}
}

static void dispatch(struct sim *s, struct sim_ev *ev)
{
	struct sim_node *n = &s->nodes[ev->node];
	switch (ev->type) {
	case EV_DGRAM:
	case EV_STREAM:
	case EV_WRITABLE:
	case EV_RECONNECT:
	case EV_STREAM_TIMEOUT:
		sim_net_event(s, ev);
		return;
	case EV_TICK:
		if (!n->alive || n->gen != ev->tag)
			return;
		{
			uint8_t rnd[8];
			sim_rng_bytes(&s->rng, rnd, sizeof(rnd));
			mm_gossip_tick(n->gossip, sim_node_now(n), rnd, sizeof(rnd));
			mm_fetch_tick(n->fetch, sim_node_now(n));
		}
		if (s->cfg.uids) /* as the daemon's gossip_cb */
			sim_uid_authority(s, n);
		sim_schedule(s, s->now + s->cfg.gossip_ms, EV_TICK, n->idx, 0, n->gen);
		return;
	case EV_COMMIT:
		if (!n->alive || n->gen != ev->tag)
			return;
		if (s->cfg.gc_grace_ms)
			sim_node_gc(n);
		{
			int rc = sim_node_commit(n);
			if (rc < 0)
				sim_violation(s, "node %u: commit failed: %d", n->idx, rc);
		}
		sim_schedule(s, s->now + s->cfg.commit_ms, EV_COMMIT, n->idx, 0, n->gen);
		return;
	case EV_OP:
		if (!s->workload_on || s->now >= s->cfg.phase_ms)
			return;
		sim_workload_op(s);
		sim_schedule(s, s->now + interval(s, s->cfg.ops_per_s), EV_OP, 0, 0, 0);
		return;
	case EV_FAULT_RESET:
	case EV_FAULT_PART:
	case EV_FAULT_CRASH:
	case EV_PART_HEAL:
	case EV_RESTART:
		sim_fault_event(s, ev);
		return;
	case EV_HEAL:
		s->workload_on = false;
		sim_heal_all(s);
		sabotage(s);
		s->healed = true;
		s->res->heal_ms = s->now;
		sim_schedule(s, s->now + s->cfg.gossip_ms / 4, EV_CHECK, 0, 0, 0);
		return;
	case EV_CHECK:
		if (s->res->converged && !s->quiet_until) {
			/* DIGEST answers computed before convergence have landed (they may
			 * still start a round, which finds nothing): from now on, no round */
			sim_quiet_rounds(s);
			s->quiet_until = s->now + SIM_QUIET_ROUNDS * (uint64_t)s->cfg.gossip_ms +
			                 SIM_QUIET_FETCH_MS;
			sim_schedule(s, s->quiet_until, EV_CHECK, 0, 0, 0);
		} else if (s->res->converged) {
			/* the quiet window is over */
			sim_quiet_check(s);
			s->stop = true;
		} else if (sim_converged(s) && (!s->cfg.uids || sim_uids_settled(s, false))) {
			s->res->converged = true;
			s->res->converge_ms = s->now;
			s->res->rounds_to_converge =
			        (s->now - s->res->heal_ms + s->cfg.gossip_ms - 1) / s->cfg.gossip_ms;
			sim_trace(s, "t=%llu converged", (unsigned long long)s->now);
			sim_check_final(s);
			/* then nothing must happen any more: no round, no record, no body (a
			 * livelock would go on), and the cluster stays converged */
			sim_quiet_begin(s);
			{
				/* the latest a datagram sent before healing, or before now, lands */
				const struct sim_config *c = &s->cfg;
				uint64_t f = c->slow_factor;
				uint64_t t = s->res->heal_ms + (c->delay_max_ms + c->tail_ms + c->reorder_ms) * f;
				if (t < s->now + c->delay_max_ms * f)
					t = s->now + c->delay_max_ms * f;
				sim_schedule(s, t + 1, EV_CHECK, 0, 0, 0);
			}
		} else if (s->now - s->res->heal_ms >= s->cfg.bound_ms) {
			sim_explain_divergence(s);
			s->stop = true;
		} else {
			uint32_t q = s->cfg.gossip_ms / 4 ? s->cfg.gossip_ms / 4 : 1;
			sim_schedule(s, s->now + q, EV_CHECK, 0, 0, 0);
		}
		return;
	case EV_UIDPASS:
		if (n->alive && n->gen == ev->tag)
			sim_uid_pass(s, n);
		return;
	case EV_UIDHOLD:
		if (n->alive && n->gen == ev->tag)
			sim_uid_hold_timeout(n, ev->slot / SIM_NFOLDERS, ev->slot % SIM_NFOLDERS);
		return;
	case EV_HOOK:
		if (s->on_hook)
			s->on_hook(s);
		return;
	case EV_ATTACK:
		if (!s->faults_on)
			return;
		sim_attack_event(s);
		sim_schedule(s, s->now + interval(s, s->cfg.attacks_per_s), EV_ATTACK, 0, 0, 0);
		return;
	default:
		return;
	}
}

/* Runs events until stop, or until time `until` (0 = no limit). */
static void loop(struct sim *s, uint64_t until)
{
	struct sim_ev ev;
	while (!s->stop) {
		if (!s->nheap || (until && s->heap[0].t > until))
			break;
		sim_ev_pop(s, &ev);
		s->now = ev.t;
		dispatch(s, &ev);
		free(ev.data);
	}
	if (until && s->now < until && !s->stop)
		s->now = until;
}

int sim_run(const struct sim_config *cfg, struct sim_result *res)
{
	struct sim *s;
	int rc = setup(cfg, res, &s);
	if (rc < 0)
		return rc;
	s->faults_on = true;
	s->workload_on = true;
	if (cfg->ops_per_s > 0)
		sim_schedule(s, interval(s, cfg->ops_per_s), EV_OP, 0, 0, 0);
	if (cfg->resets_per_s > 0)
		sim_schedule(s, interval(s, cfg->resets_per_s), EV_FAULT_RESET, 0, 0, 0);
	if (cfg->partitions_per_s > 0)
		sim_schedule(s, interval(s, cfg->partitions_per_s), EV_FAULT_PART, 0, 0, 0);
	if (cfg->crashes_per_s > 0)
		sim_schedule(s, interval(s, cfg->crashes_per_s), EV_FAULT_CRASH, 0, 0, 0);
	if (cfg->attacks_per_s > 0)
		sim_schedule(s, interval(s, cfg->attacks_per_s), EV_ATTACK, 0, 0, 0);
	sim_schedule(s, cfg->phase_ms, EV_HEAL, 0, 0, 0);
	loop(s, 0);
	if (!s->res->converged && !s->res->n_violations)
		sim_violation(s, "the run ended without converging");
	if (cfg->uids) {
		uint64_t settle = s->uid_last_change > res->heal_ms ? s->uid_last_change - res->heal_ms : 0;
		res->uid_settle_rounds = (settle + cfg->gossip_ms - 1) / cfg->gossip_ms;
		res->uid_authorities = sim_uid_authorities(s);
		if (res->converged && settle > cfg->bound_ms)
			sim_violation(s, "UID registers kept changing %llu ms after healing (bound %llu ms)",
			              (unsigned long long)settle, (unsigned long long)cfg->bound_ms);
	}
	res->sim_time_ms = s->now;
	teardown(s);
	return res->n_violations || !res->converged ? 1 : 0;
}

/* ---- measurement: spread of one message ---------------------------------------------- */

struct spread_ctx {
	unsigned trials, done;
	uint8_t key[MM_KEY_LEN];
	bool active;
	uint8_t *got;
	unsigned count;
	uint64_t t0;
	double sum_ms, min_ms, max_ms;
};

static void spread_new(struct sim *s, struct sim_node *n, unsigned u, const uint8_t key[MM_KEY_LEN])
{
	struct spread_ctx *c = s->hook_arg;
	(void)u;
	if (!c->active || memcmp(key, c->key, MM_KEY_LEN) != 0 || c->got[n->idx])
		return;
	c->got[n->idx] = 1;
	if (++c->count < s->n)
		return;
	double ms = (double)(s->now - c->t0);
	c->sum_ms += ms;
	if (!c->done || ms < c->min_ms)
		c->min_ms = ms;
	if (ms > c->max_ms)
		c->max_ms = ms;
	c->active = false;
	if (++c->done >= c->trials)
		s->stop = true;
	else
		sim_schedule(s, s->now + 2 * s->cfg.gossip_ms + sim_rng_below(&s->rng, s->cfg.gossip_ms),
		             EV_HOOK, 0, 0, 0);
}

static void spread_hook(struct sim *s)
{
	struct spread_ctx *c = s->hook_arg;
	memset(c->got, 0, s->n);
	c->count = 0;
	c->t0 = s->now;
	struct sim_node *n = &s->nodes[sim_rng_below(&s->rng, s->n)];
	uint8_t key[MM_KEY_LEN];
	/* the key is known only after the delivery: the origin is counted below */
	c->active = false;
	int rc = sim_deliver(s, n, 0, 1000, key);
	if (rc < 0) {
		sim_violation(s, "measurement delivery failed: %d", rc);
		return;
	}
	memcpy(c->key, key, MM_KEY_LEN);
	c->active = true;
	c->got[n->idx] = 1;
	c->count = 1;
}

int sim_measure_spread(const struct sim_config *cfg, unsigned trials, struct sim_spread *r)
{
	struct sim_result *res = calloc(1, sizeof(*res));
	if (!res)
		return -ENOMEM;
	struct sim *s;
	int rc = setup(cfg, res, &s);
	if (rc < 0) {
		free(res);
		return rc;
	}
	struct spread_ctx c = { .trials = trials ? trials : 1 };
	c.got = calloc(s->n, 1);
	if (!c.got) {
		teardown(s);
		free(res);
		return -ENOMEM;
	}
	s->faults_on = true; /* only loss and delays: the caller zeroes the other rates */
	s->plain = true;
	s->hook_arg = &c;
	s->on_new = spread_new;
	s->on_hook = spread_hook;
	sim_schedule(s, 5000, EV_HOOK, 0, 0, 0); /* after the links came up */
	uint64_t limit = 5000 + (uint64_t)c.trials * 600ULL * cfg->gossip_ms;
	loop(s, limit);
	rc = res->n_violations ? 1 : c.done < c.trials ? -ETIMEDOUT : 0;
	memset(r, 0, sizeof(*r));
	r->trials = c.done;
	if (c.done) {
		r->mean_ms = c.sum_ms / c.done;
		r->mean_rounds = r->mean_ms / cfg->gossip_ms;
		r->min_rounds = c.min_ms / cfg->gossip_ms;
		r->max_rounds = c.max_ms / cfg->gossip_ms;
	}
	free(c.got);
	teardown(s);
	if (res->n_violations)
		fprintf(stderr, "violation: %s\n", res->violations[0]);
	free(res);
	return rc;
}

/* ---- measurement: reconciliation bytes ------------------------------------------------ */

struct recon_ctx {
	int phase; /* 0 base, 1 waiting for base convergence, 2 measuring */
	uint64_t base, d;
	uint64_t bytes0;
	struct sim_recon *r;
};

static void recon_round(struct sim *s, struct sim_node *n, const struct mm_sync_stats *st)
{
	struct recon_ctx *c = s->hook_arg;
	if (c->phase < 2 || n->idx != 0)
		return;
	c->r->descent_bytes += st->last_descent_bytes;
	c->r->record_bytes += st->last_record_bytes;
	c->r->round_trips += st->last_round_trips;
	c->r->rounds++;
}

static void recon_hook(struct sim *s)
{
	struct recon_ctx *c = s->hook_arg;
	uint8_t key[MM_KEY_LEN];
	if (c->phase == 0) {
		for (uint64_t i = 0; i < c->base; i++)
			if (sim_deliver(s, &s->nodes[0], 0, 400, key) < 0)
				sim_violation(s, "delivery failed");
		c->phase = 1;
	} else if (c->phase == 1) {
		/* converged is not enough: the round that shipped the base may still be
		 * finishing (its END in flight), and would be counted as measured */
		bool idle = true;
		for (unsigned i = 0; i < s->n; i++)
			for (uint32_t j = 0; j < s->nodes[i].npeers; j++)
				if (s->nodes[i].peers[j].sync && !mm_sync_idle(s->nodes[i].peers[j].sync))
					idle = false;
		if (!sim_converged(s) || !idle) {
			sim_schedule(s, s->now + 100, EV_HOOK, 0, 0, 0);
			return;
		}
		c->phase = 2;
		c->bytes0 = s->res->bytes_sent;
		for (uint64_t i = 0; i < c->d; i++)
			if (sim_deliver(s, &s->nodes[1], 0, 400, key) < 0)
				sim_violation(s, "delivery failed");
		c->phase = 3;
	} else {
		if (!sim_converged(s)) {
			sim_schedule(s, s->now + 100, EV_HOOK, 0, 0, 0);
			return;
		}
		c->r->total_bytes = s->res->bytes_sent - c->bytes0;
		s->stop = true;
		return;
	}
	sim_schedule(s, s->now + 100, EV_HOOK, 0, 0, 0);
}

int sim_measure_recon(const struct sim_config *cfg, uint64_t base, uint64_t d, struct sim_recon *r)
{
	struct sim_config c2 = *cfg;
	c2.nodes = 2;
	c2.users = 1;
	c2.push = false;
	struct sim_result *res = calloc(1, sizeof(*res));
	if (!res)
		return -ENOMEM;
	struct sim *s;
	int rc = setup(&c2, res, &s);
	if (rc < 0) {
		free(res);
		return rc;
	}
	memset(r, 0, sizeof(*r));
	r->d = d;
	r->base = base;
	struct recon_ctx c = { .base = base, .d = d, .r = r };
	s->plain = true;
	s->hook_arg = &c;
	s->on_round = recon_round;
	s->on_hook = recon_hook;
	sim_schedule(s, 3000, EV_HOOK, 0, 0, 0);
	loop(s, 3000 + 3600000);
	rc = res->n_violations ? 1 : s->stop ? 0 : -ETIMEDOUT;
	teardown(s);
	if (res->n_violations)
		fprintf(stderr, "violation: %s\n", res->violations[0]);
	free(res);
	return rc;
}
