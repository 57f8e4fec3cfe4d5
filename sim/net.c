/*
 * net.c — the simulator's event queue and virtual network.
 *
 * The queue is a binary heap ordered by (time, sequence number): two events at the
 * same millisecond run in the order they were scheduled, so a run depends only on the
 * seed.  The network carries the bytes of each node's Noise channels (chan.c: sealed
 * datagrams, handshake and transport frames) to the peer:
 *   datagrams  lost (cfg.loss), duplicated, held back (reordering), dropped by a
 *              partition in their direction, delayed by the delay distribution;
 *   streams    reliable and in order within one connection (epoch); a lost segment
 *              costs a retransmit timeout; bandwidth-limited, with a send buffer whose
 *              high-water mark makes send() return 1 (backpressure) and whose drain
 *              below the low-water mark calls mm_sync_writable(); a partition stalls
 *              the stream until it heals, or resets it after cfg.stream_timeout_ms;
 *              resets (fault, crash) bump the epoch so nothing old is delivered, and
 *              the link reconnects after a short random delay when both ends are up
 *              and not partitioned.
 * It also runs the fault processes (random resets, partitions, crashes) while the
 * fault phase lasts.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/internal.h"

/* ---- event queue --------------------------------------------------------------- */

static bool ev_less(const struct sim_ev *a, const struct sim_ev *b)
{
	return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

void sim_ev_push(struct sim *s, const struct sim_ev *ev)
{
	if (s->nheap == s->capheap) {
		size_t ncap = s->capheap ? s->capheap * 2 : 1024;
		struct sim_ev *nh = realloc(s->heap, ncap * sizeof(*nh));
		if (!nh) {
			fprintf(stderr, "mailmesh-sim: out of memory\n");
			abort();
		}
		s->heap = nh;
		s->capheap = ncap;
	}
	struct sim_ev e = *ev;
	e.seq = s->seq++;
	if (e.t < s->now)
		e.t = s->now;
	size_t i = s->nheap++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!ev_less(&e, &s->heap[p]))
			break;
		s->heap[i] = s->heap[p];
		i = p;
	}
	s->heap[i] = e;
}

bool sim_ev_pop(struct sim *s, struct sim_ev *ev_r)
{
	if (!s->nheap)
		return false;
	*ev_r = s->heap[0];
	struct sim_ev last = s->heap[--s->nheap];
	size_t i = 0, n = s->nheap;
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		const struct sim_ev *best = &last;
		if (l < n && ev_less(&s->heap[l], best)) {
			m = l;
			best = &s->heap[l];
		}
		if (r < n && ev_less(&s->heap[r], best))
			m = r;
		if (m == i)
			break;
		s->heap[i] = s->heap[m];
		i = m;
	}
	if (n)
		s->heap[i] = last;
	return true;
}

void sim_schedule(struct sim *s, uint64_t t, uint8_t type, uint32_t node, uint32_t slot, uint32_t tag)
{
	struct sim_ev ev = { .t = t, .type = type, .node = node, .slot = slot, .tag = tag };
	sim_ev_push(s, &ev);
}

/* ---- links ---------------------------------------------------------------------- */

bool sim_blocked(const struct sim *s, uint32_t from, uint32_t to)
{
	for (unsigned i = 0; i < SIM_MAX_PARTS; i++) {
		const struct sim_part *p = &s->parts[i];
		if (!p->active)
			continue;
		if (p->side[from] && !p->side[to])
			return true;
		if (!p->oneway && !p->side[from] && p->side[to])
			return true;
	}
	return false;
}

/* When every partition cutting from->to (or to->from) has healed. */
static uint64_t stalled_until(const struct sim *s, uint32_t a, uint32_t b)
{
	uint64_t t = 0;
	for (unsigned i = 0; i < SIM_MAX_PARTS; i++) {
		const struct sim_part *p = &s->parts[i];
		if (!p->active)
			continue;
		bool cut = (p->side[a] != p->side[b]);
		if (p->oneway)
			cut = (p->side[a] && !p->side[b]) || (p->side[b] && !p->side[a]);
		if (cut && p->heal > t)
			t = p->heal;
	}
	return t;
}

static uint64_t link_delay(struct sim *s, const struct sim_node *a, const struct sim_node *b)
{
	const struct sim_config *c = &s->cfg;
	uint64_t d = sim_rng_range(&s->rng, c->delay_min_ms, c->delay_max_ms);
	if (s->faults_on && c->tail_p > 0 && sim_rng_chance(&s->rng, c->tail_p))
		d += sim_rng_below(&s->rng, (uint64_t)c->tail_ms + 1) *
		     sim_rng_below(&s->rng, (uint64_t)c->tail_ms + 1) / (c->tail_ms + 1);
	unsigned f = a->slow > b->slow ? a->slow : b->slow;
	return d * f;
}

int sim_net_dgram(struct sim *s, struct sim_node *a, struct sim_node *b, const uint8_t *bytes,
                  size_t len)
{
	struct sim_result *res = s->res;
	res->bytes_sent += len;
	if (sim_blocked(s, a->idx, b->idx) || (s->faults_on && sim_rng_chance(&s->rng, s->cfg.loss))) {
		res->dropped++;
		return 0;
	}
	int copies = 1;
	if (s->faults_on && sim_rng_chance(&s->rng, s->cfg.dup)) {
		copies = 2;
		res->duplicated++;
	}
	for (int i = 0; i < copies; i++) {
		uint64_t d = link_delay(s, a, b);
		if (s->faults_on && sim_rng_chance(&s->rng, s->cfg.reorder))
			d += sim_rng_below(&s->rng, (uint64_t)s->cfg.reorder_ms + 1);
		struct sim_ev ev = { .t = s->now + d, .type = EV_DGRAM, .chan = MM_CHAN_DATAGRAM,
		                     .node = b->idx, .len = (uint32_t)len };
		ev.data = malloc(len ? len : 1);
		if (!ev.data)
			return -ENOMEM;
		memcpy(ev.data, bytes, len);
		sim_ev_push(s, &ev);
	}
	return 0;
}

int sim_net_stream(struct sim_peer *p, const uint8_t *bytes, size_t len)
{
	struct sim_node *a = p->owner;
	struct sim *s = a->sim;
	struct sim_node *b = &s->nodes[p->idx];

	if (!p->up || !b->alive)
		return -ENOTCONN;
	s->res->bytes_sent += len;
	unsigned f = a->slow > b->slow ? a->slow : b->slow;
	uint64_t tx = len / (SIM_BW_BYTES_PER_MS / f);
	uint64_t start = p->tx_free > s->now ? p->tx_free : s->now;
	p->tx_free = start + tx;
	uint64_t t = p->tx_free + link_delay(s, a, b);
	while (s->faults_on && sim_rng_chance(&s->rng, s->cfg.loss))
		t += SIM_RTO_MS; /* retransmitted segment */
	uint64_t stall = stalled_until(s, a->idx, b->idx);
	if (stall && t < stall + s->cfg.delay_min_ms)
		t = stall + s->cfg.delay_min_ms;
	if (t < p->stream_last)
		t = p->stream_last;
	p->stream_last = t;
	struct sim_ev ev = { .t = t, .type = EV_STREAM, .chan = MM_CHAN_STREAM, .node = b->idx,
	                     .slot = p->back, .tag = p->epoch, .len = (uint32_t)len };
	ev.data = malloc(len ? len : 1);
	if (!ev.data)
		return -ENOMEM;
	memcpy(ev.data, bytes, len);
	sim_ev_push(s, &ev);
	p->inflight += len;
	return 0;
}

/* The sessions' transport (struct mm_sync_io): everything goes through the channel. */
int sim_net_send(void *arg, enum mm_chan chan, const uint8_t *msg, size_t len)
{
	struct sim_peer *p = arg;
	struct sim *s = p->owner->sim;

	if (chan == MM_CHAN_DATAGRAM)
		return sim_chan_dgram_send(p, msg, len);
	if (!p->up || !s->nodes[p->idx].alive || !p->attached)
		return -ENOTCONN;
	s->res->messages++;
	s->res->stream_msgs++;
	int rc = sim_chan_stream_send(p, msg, len);
	if (rc < 0)
		return rc;
	if (p->inflight > SIM_HWM) {
		p->want_writable = true;
		return 1;
	}
	return 0;
}

static void link_set(struct sim_node *a, uint32_t slot, struct sim_node *b, bool up, uint32_t epoch)
{
	struct sim_peer *p = &a->peers[slot];
	struct sim_peer *q = &b->peers[p->back];
	p->up = q->up = up;
	p->epoch = q->epoch = epoch;
	p->inflight = q->inflight = 0;
	p->want_writable = q->want_writable = false;
	p->tx_free = q->tx_free = 0;
	p->stream_last = q->stream_last = 0;
}

void sim_link_reset(struct sim *s, struct sim_node *a, uint32_t slot, const char *why)
{
	struct sim_peer *p = &a->peers[slot];
	struct sim_node *b = &s->nodes[p->idx];
	struct sim_peer *q = &b->peers[p->back];
	bool was_up = p->up;
	bool pa = p->attached, qa = q->attached;
	link_set(a, slot, b, false, p->epoch + 1);
	/* the connection's channel state is gone on both ends */
	sim_chan_close(s, p);
	sim_chan_close(s, q);
	if (was_up) {
		s->res->resets++;
		sim_trace(s, "t=%llu reset %u<->%u (%s)", (unsigned long long)s->now, a->idx, b->idx, why);
		/* only a session that was told it is connected is told of the reset */
		if (a->alive && p->sync && pa)
			mm_sync_reset(p->sync, sim_node_now(a));
		if (b->alive && q->sync && qa)
			mm_sync_reset(q->sync, sim_node_now(b));
	}
	if (a->alive && b->alive)
		sim_link_schedule_reconnect(s, a, slot,
		                            sim_rng_range(&s->rng, SIM_RECONNECT_MIN_MS, SIM_RECONNECT_MAX_MS));
}

void sim_link_schedule_reconnect(struct sim *s, struct sim_node *a, uint32_t slot, uint64_t delay)
{
	struct sim_peer *p = &a->peers[slot];
	struct sim_node *b = &s->nodes[p->idx];
	struct sim_peer *q = &b->peers[p->back];
	if (p->up || p->reconnecting)
		return;
	p->reconnecting = q->reconnecting = true;
	sim_schedule(s, s->now + delay, EV_RECONNECT, a->idx, slot, p->epoch);
}

static void link_reconnect(struct sim *s, struct sim_node *a, uint32_t slot, uint32_t epoch)
{
	struct sim_peer *p = &a->peers[slot];
	struct sim_node *b = &s->nodes[p->idx];
	struct sim_peer *q = &b->peers[p->back];
	(void)epoch; /* a reconnect attempt is valid whatever happened since it was planned */
	p->reconnecting = q->reconnecting = false;
	if (p->up || !a->alive || !b->alive)
		return;
	if (sim_blocked(s, a->idx, b->idx) || sim_blocked(s, b->idx, a->idx)) {
		sim_link_schedule_reconnect(s, a, slot,
		                            sim_rng_range(&s->rng, SIM_RECONNECT_MIN_MS, SIM_RECONNECT_MAX_MS));
		return;
	}
	link_set(a, slot, b, true, p->epoch + 1);
	/* connected, not yet usable: the sessions start once the handshake is done */
	int rc = sim_chan_open(s, a, slot);
	if (rc < 0)
		sim_violation(s, "node %u: channel to %u could not start: %d", a->idx, b->idx, rc);
}

/* ---- delivery -------------------------------------------------------------------- */

void sim_net_event(struct sim *s, struct sim_ev *ev)
{
	struct sim_node *b = &s->nodes[ev->node];
	struct sim_peer *q = &b->peers[ev->slot];
	switch (ev->type) {
	case EV_DGRAM:
		/* the receiver finds the session by the datagram's id, as the daemon */
		sim_chan_dgram_recv(s, b, ev->data, ev->len);
		return;
	case EV_STREAM: {
		if (!b->alive || !q->up || q->epoch != ev->tag)
			return;
		struct sim_node *a = &s->nodes[q->idx];
		struct sim_peer *p = &a->peers[q->back];
		p->inflight -= p->inflight >= ev->len ? ev->len : p->inflight;
		if (p->want_writable && p->inflight <= SIM_LWM) {
			p->want_writable = false;
			sim_schedule(s, s->now, EV_WRITABLE, a->idx, q->back, p->epoch);
		}
		sim_chan_stream_recv(s, q, ev->data, ev->len);
		return;
	}
	case EV_WRITABLE:
		if (b->alive && q->up && q->epoch == ev->tag && q->sync && q->attached)
			mm_sync_writable(q->sync, sim_node_now(b));
		return;
	case EV_RECONNECT:
		link_reconnect(s, b, ev->slot, ev->tag);
		return;
	case EV_STREAM_TIMEOUT:
		if (q->up && q->epoch == ev->tag &&
		    (sim_blocked(s, b->idx, q->idx) || sim_blocked(s, q->idx, b->idx)))
			sim_link_reset(s, b, ev->slot, "stalled");
		return;
	default:
		return;
	}
}

/* ---- faults ---------------------------------------------------------------------- */

static uint64_t next_interval(struct sim *s, double per_s)
{
	/* uniform on [1, 2/rate] seconds: mean 1/rate, integer arithmetic only */
	uint64_t mean_ms = (uint64_t)(1000.0 / per_s);
	return 1 + sim_rng_below(&s->rng, 2 * mean_ms + 1);
}

static void fault_reset(struct sim *s)
{
	struct sim_node *a = &s->nodes[sim_rng_below(&s->rng, s->n)];
	if (!a->alive || !a->npeers)
		return;
	uint32_t slot = (uint32_t)sim_rng_below(&s->rng, a->npeers);
	if (a->peers[slot].up)
		sim_link_reset(s, a, slot, "fault");
}

static void fault_partition(struct sim *s)
{
	unsigned i;
	for (i = 0; i < SIM_MAX_PARTS && s->parts[i].active; i++)
		;
	if (i == SIM_MAX_PARTS || s->n < 2)
		return;
	struct sim_part *p = &s->parts[i];
	memset(p->side, 0, s->n);
	/* group A: 1 .. n-1 random nodes */
	unsigned k = 1 + (unsigned)sim_rng_below(&s->rng, s->n - 1);
	for (unsigned j = 0; j < k; j++)
		p->side[sim_rng_below(&s->rng, s->n)] = 1;
	p->oneway = sim_rng_chance(&s->rng, s->cfg.oneway_p);
	uint64_t dur = 1 + sim_rng_below(&s->rng, 2ULL * s->cfg.partition_ms + 1);
	p->heal = s->now + dur;
	if (p->heal > s->cfg.phase_ms)
		p->heal = s->cfg.phase_ms > s->now ? s->cfg.phase_ms : s->now;
	p->active = true;
	s->res->partitions++;
	sim_trace(s, "t=%llu partition %u: %u nodes on side A, %s, heals at %llu",
	          (unsigned long long)s->now, i, k, p->oneway ? "one-way A->B" : "symmetric",
	          (unsigned long long)p->heal);
	sim_schedule(s, p->heal, EV_PART_HEAL, 0, i, 0);
	/* streams crossing it stall; those still cut after the timeout reset */
	if (p->heal - s->now > s->cfg.stream_timeout_ms) {
		for (unsigned a = 0; a < s->n; a++) {
			struct sim_node *na = &s->nodes[a];
			for (uint32_t sl = 0; sl < na->npeers; sl++) {
				struct sim_peer *pp = &na->peers[sl];
				if (pp->idx < a || !pp->up || p->side[a] == p->side[pp->idx])
					continue;
				sim_schedule(s, s->now + s->cfg.stream_timeout_ms, EV_STREAM_TIMEOUT, a, sl,
				             pp->epoch);
			}
		}
	}
}

static void part_heal(struct sim *s, unsigned i)
{
	struct sim_part *p = &s->parts[i];
	if (!p->active || p->heal > s->now)
		return;
	p->active = false;
	sim_trace(s, "t=%llu partition %u healed", (unsigned long long)s->now, i);
}

static void fault_crash(struct sim *s)
{
	struct sim_node *n = &s->nodes[sim_rng_below(&s->rng, s->n)];
	if (!n->alive)
		return;
	uint64_t down = 1 + sim_rng_below(&s->rng, 2ULL * s->cfg.down_ms + 1);
	uint64_t at = s->now + down;
	if (at > s->cfg.phase_ms)
		at = s->cfg.phase_ms > s->now ? s->cfg.phase_ms : s->now;
	sim_node_crash(s, n);
	sim_schedule(s, at, EV_RESTART, n->idx, 0, n->gen);
}

void sim_fault_event(struct sim *s, struct sim_ev *ev)
{
	const struct sim_config *c = &s->cfg;
	switch (ev->type) {
	case EV_FAULT_RESET:
		if (!s->faults_on)
			return;
		fault_reset(s);
		sim_schedule(s, s->now + next_interval(s, c->resets_per_s), EV_FAULT_RESET, 0, 0, 0);
		return;
	case EV_FAULT_PART:
		if (!s->faults_on)
			return;
		fault_partition(s);
		sim_schedule(s, s->now + next_interval(s, c->partitions_per_s), EV_FAULT_PART, 0, 0, 0);
		return;
	case EV_FAULT_CRASH:
		if (!s->faults_on)
			return;
		fault_crash(s);
		sim_schedule(s, s->now + next_interval(s, c->crashes_per_s), EV_FAULT_CRASH, 0, 0, 0);
		return;
	case EV_PART_HEAL:
		part_heal(s, ev->slot);
		return;
	case EV_RESTART: {
		struct sim_node *n = &s->nodes[ev->node];
		if (n->alive || n->gen != ev->tag)
			return;
		int rc = sim_node_start(s, n);
		if (rc < 0)
			sim_violation(s, "node %u failed to restart: %d", n->idx, rc);
		return;
	}
	default:
		return;
	}
}

/* End of the fault phase: every partition heals, every node is up, every link
 * reconnects. */
void sim_heal_all(struct sim *s)
{
	s->faults_on = false;
	for (unsigned i = 0; i < SIM_MAX_PARTS; i++)
		s->parts[i].active = false;
	for (unsigned i = 0; i < s->n; i++) {
		struct sim_node *n = &s->nodes[i];
		if (!n->alive) {
			int rc = sim_node_start(s, n);
			if (rc < 0)
				sim_violation(s, "node %u failed to restart: %d", n->idx, rc);
		}
	}
	for (unsigned i = 0; i < s->n; i++) {
		struct sim_node *n = &s->nodes[i];
		for (uint32_t sl = 0; sl < n->npeers; sl++)
			if (!n->peers[sl].up)
				sim_link_schedule_reconnect(s, n, sl, 1 + sim_rng_below(&s->rng, 100));
	}
	sim_trace(s, "t=%llu healed: faults off", (unsigned long long)s->now);
}
