/*
 * chan.c — the real Noise channel (proto/channel.c) under every simulated message, and
 * an on-path attacker that throws forged and replayed bytes at it.
 *
 * Each simulated connection carries one mm_ch per end, wired as node/peer.c wires a TCP
 * connection and the UDP socket, with the same decisions, made by the same functions
 * (proto/link.h): the end that mm_link_dials() names is the initiator; handshake
 * messages and transport frames travel as stream bytes over the virtual network (so
 * they are delayed, stalled by partitions and lost with a reset); the session is told
 * it is connected only once the channel is confirmed (mm_link_confirmed: the initiator
 * after message 2, when it sends its confirming REKEY frame; the responder at the
 * first transport frame, or a datagram opened with the channel's keys), and only then
 * does the responder's message 1 timestamp become the peer's last (mm_link_ts_confirm);
 * stream messages go through mm_ch_send and come back through the deliver callback
 * (mm_link_rx_chunk reassembles them) into mm_sync_recv; datagrams are made by
 * mm_link_dgram_seal ("8-byte sender node id + sealed datagram") and are opened with
 * the channel of the session the id names, so the network's duplicates
 * and reorderings, datagrams of an older connection and the attacker's replays and
 * forgeries all meet the replay window and the AEAD check.  Keys, ephemeral keys and
 * the handshake's TAI64N timestamp come from the run's PRNG and the node's virtual
 * clock, so a run stays a pure function of its seed.
 *
 * The attacker (--attacks per second, fault phase only) has recorded recent sealed
 * datagrams and handshake messages 1; each action is one of: a forged datagram under
 * a peer's id, a replay of a recorded datagram, a replay of a recorded message 1 on a
 * new connection, a well-formed message 1 from a key nobody trusts, garbage on a new
 * connection.  The responder treats the new connection exactly as node/peer.c does; a
 * replay it accepts (possible only when it never saw the original: timestamps are kept
 * across a crash as in the daemon's state database, sim/node.c) is answered but never
 * confirmed, so it neither replaces the
 * peer's live connection nor sets the peer's last timestamp.
 *
 * What is left here is what only a simulator has: the virtual network's delivery,
 * the counters and the attacker.  The rules are proto/link.c's, shared with the
 * daemon, so they cannot drift apart (until 2026-12 this file held a hand-kept copy,
 * which had drifted: its responder attached, and took the timestamp, at message 1).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/link.h"
#include "proto/wire.h"
#include "sim/internal.h"

static struct sim_peer *peer_by_key(struct sim_node *n, const uint8_t pub[32])
{
	for (uint32_t i = 0; i < n->npeers; i++)
		if (memcmp(n->sim->nodes[n->peers[i].idx].pub, pub, 32) == 0)
			return &n->peers[i];
	return NULL;
}

static struct sim_peer *peer_by_id(struct sim_node *n, uint64_t id)
{
	for (uint32_t i = 0; i < n->npeers; i++)
		if (n->sim->nodes[n->peers[i].idx].id == id)
			return &n->peers[i];
	return NULL;
}

/* ---- the responder's view of the peers file -------------------------------------- */

static int ch_lookup(void *arg, const uint8_t pub[32], uint8_t last_ts_r[MM_CH_TAI64N_LEN])
{
	struct sim_peer *p = peer_by_key(arg, pub);
	if (!p)
		return -ENOENT;
	memcpy(last_ts_r, p->last_ts, MM_CH_TAI64N_LEN);
	return 0;
}

/* Held with the connection; the peer's last only once it is confirmed (attach), as
 * node/peer.c ch_accepted. */
static void ch_accepted(void *arg, const uint8_t pub[32], const uint8_t ts[MM_CH_TAI64N_LEN])
{
	struct sim_peer *p = peer_by_key(arg, pub);
	if (p)
		memcpy(p->hs_ts, ts, MM_CH_TAI64N_LEN);
}

/* An attacker's connection: its message 1 timestamp is held with it, and it is never
 * confirmed (see attacker_conn). */
struct pending {
	struct sim_node *node;
	uint8_t hs_ts[MM_CH_TAI64N_LEN];
};

static int ch_lookup_pending(void *arg, const uint8_t pub[32], uint8_t last_ts_r[MM_CH_TAI64N_LEN])
{
	return ch_lookup(((struct pending *)arg)->node, pub, last_ts_r);
}

static void ch_accepted_pending(void *arg, const uint8_t pub[32], const uint8_t ts[MM_CH_TAI64N_LEN])
{
	(void)pub;
	memcpy(((struct pending *)arg)->hs_ts, ts, MM_CH_TAI64N_LEN);
}

/* Whether this end of the link is the accepting one (the other dials). */
static bool incoming(const struct sim_peer *p)
{
	return !mm_link_dials(p->owner->pub, p->owner->sim->nodes[p->idx].pub);
}

static void capture(struct sim_capture *ring, unsigned size, unsigned *count, uint32_t to,
                    const uint8_t *bytes, size_t len)
{
	struct sim_capture *c = &ring[*count % size];
	uint8_t *b = realloc(c->bytes, len ? len : 1);
	if (!b)
		return; /* the attacker just remembers less */
	memcpy(b, bytes, len);
	c->bytes = b;
	c->len = (uint32_t)len;
	c->to = to;
	(*count)++;
}

void sim_chan_free_captures(struct sim *s)
{
	for (unsigned i = 0; i < SIM_CAPTURE; i++)
		free(s->cap_dgram[i].bytes);
	for (unsigned i = 0; i < SIM_CAPTURE_HS; i++)
		free(s->cap_hs[i].bytes);
}

/* ---- a connection's channel -------------------------------------------------------- */

static int ch_emit(void *arg, const uint8_t *bytes, size_t len)
{
	struct sim_peer *p = arg;
	struct sim *s = p->owner->sim;
	/* only an initiator's message 1 is emitted in this state: the attacker records it */
	if (s->cfg.attacks_per_s > 0 && p->ch && mm_ch_state(p->ch) == MM_CH_AWAIT_RESPONSE)
		capture(s->cap_hs, SIM_CAPTURE_HS, &s->ncap_hs, p->idx, bytes, len);
	return sim_net_stream(p, bytes, len);
}

static void recv_msg(struct sim_peer *p, const uint8_t *msg, size_t len)
{
	struct sim_node *n = p->owner;
	struct sim *s = n->sim;
	int rc = mm_sync_recv(p->sync, MM_CHAN_STREAM, msg, len, sim_node_now(n));
	if (rc < 0) {
		s->res->proto_errors++;
		sim_trace(s, "t=%llu node %u rejected stream msg from %u: %d", (unsigned long long)s->now,
		          n->idx, p->idx, rc);
	}
}

/* The channel is established and confirmed (proto/link.h): the session may use the
 * connection (peer.c conn_attach).  The dialer confirms its end with a REKEY frame;
 * the acceptor takes message 1's timestamp as the peer's last. */
static void attach(struct sim_peer *p)
{
	struct sim_node *n = p->owner;
	struct sim *s = n->sim;
	if (p->attached)
		return;
	const uint8_t *rk = mm_ch_remote_key(p->ch);
	if (!rk || memcmp(rk, s->nodes[p->idx].pub, 32) != 0) {
		sim_violation(s, "node %u: channel to %u authenticated another key", n->idx, p->idx);
		return;
	}
	uint64_t now = sim_node_now(n);
	if (!incoming(p)) {
		int rc = mm_ch_rekey(p->ch, now);
		if (rc < 0) {
			sim_violation(s, "node %u: confirmation to %u not sent: %d", n->idx, p->idx, rc);
			return;
		}
	} else {
		if (mm_link_ts_confirm(p->last_ts, p->hs_ts)) /* kept, as node/daemon.c does */
			p->saved_hs_ms = mm_ch_tai64n_ms(p->last_ts);
	}
	p->attached = true;
	mm_sync_reset(p->sync, now);
	mm_sync_connected(p->sync, now);
	/* a new connection is a good moment to compare states (as the daemon) */
	mm_sync_gossip(p->sync, now);
}

static int ch_deliver(void *arg, const struct mm_ch_chunk *k)
{
	struct sim_peer *p = arg;
	attach(p);
	if (!p->attached)
		return -EPROTO;
	const uint8_t *msg;
	size_t len;
	int rc = mm_link_rx_chunk(&p->rx, k, &msg, &len);
	if (rc <= 0)
		return rc;
	recv_msg(p, msg, len);
	return 0;
}

static int new_channel(struct sim *s, struct sim_peer *p, bool initiator)
{
	struct sim_node *n = p->owner;
	uint8_t eph[32];
	sim_rng_bytes(&s->rng, eph, sizeof eph);
	struct mm_ch_config cc = {
		.initiator = initiator,
		.local_priv = n->priv,
		.remote_pub = initiator ? s->nodes[p->idx].pub : NULL,
		.random32 = eph,
		.now_ms = sim_node_now(n),
		.rekey_bytes = s->cfg.rekey_bytes,
		.rekey_ms = s->cfg.rekey_ms,
		.peers = { ch_lookup, ch_accepted, n },
		.io = { ch_emit, ch_deliver, p },
	};
	return mm_ch_new(&p->ch, &cc);
}

int sim_chan_open(struct sim *s, struct sim_node *a, uint32_t slot)
{
	struct sim_peer *p = &a->peers[slot];
	struct sim_node *b = &s->nodes[p->idx];
	struct sim_peer *q = &b->peers[p->back];
	struct sim_peer *ini = mm_link_dials(a->pub, b->pub) ? p : q;
	struct sim_peer *resp = ini == p ? q : p;
	sim_chan_close(s, p);
	sim_chan_close(s, q);
	int rc = new_channel(s, resp, false);
	if (!rc)
		rc = new_channel(s, ini, true);
	if (!rc)
		rc = mm_ch_start(ini->ch);
	return rc;
}

void sim_chan_close(struct sim *s, struct sim_peer *p)
{
	if (p->ch) {
		s->res->rekeys += mm_ch_stats(p->ch)->rekeys_sent;
		mm_ch_free(&p->ch);
	}
	p->attached = false;
	mm_link_rx_reset(&p->rx);
}

void sim_chan_stream_recv(struct sim *s, struct sim_peer *q, const uint8_t *bytes, size_t len)
{
	struct sim_node *b = q->owner;
	if (!q->ch)
		return;
	bool was_established = mm_ch_state(q->ch) == MM_CH_ESTABLISHED;
	size_t used = 0;
	int rc = mm_ch_feed(q->ch, bytes, len, &used, sim_node_now(b));
	/* a handshake is complete when the initiator has read message 2 */
	if (!was_established && q->ch && mm_ch_state(q->ch) == MM_CH_ESTABLISHED &&
	    mm_link_dials(b->pub, s->nodes[q->idx].pub))
		s->res->handshakes++;
	/* the initiator is confirmed by message 2, the responder by the first transport
	 * frame (when data came in the same feed, deliver attached it already) */
	if (rc == MM_CH_OK && q->ch && !q->attached && mm_link_confirmed(q->ch, incoming(q)))
		attach(q);
	if (rc == MM_CH_OK)
		return;
	if (!was_established && (rc == -EALREADY || rc == -EACCES)) {
		/* Refused handshake: an attacker's replay of this very message 1 got there
		 * first (it raced the original).  The daemon closes the connection and the
		 * dialer tries again later with a newer timestamp; so does the simulator. */
		s->res->handshakes_rejected++;
		sim_trace(s, "t=%llu node %u refused the handshake of %u: %d", (unsigned long long)s->now,
		          b->idx, q->idx, rc);
		sim_link_reset(s, b, (uint32_t)(q - b->peers), "handshake refused");
		return;
	}
	/* The network neither splits nor alters a connection's frames, so any failure of
	 * a real link's channel is a bug of the channel or of its use. */
	sim_violation(s, "node %u: channel from %u: %s (%d)", b->idx, q->idx,
	              rc == MM_CH_NEED_MORE ? "partial frame" : "feed failed", rc);
	sim_link_reset(s, b, (uint32_t)(q - b->peers), "channel error");
}

int sim_chan_stream_send(struct sim_peer *p, const uint8_t *msg, size_t len)
{
	struct sim *s = p->owner->sim;
	if (!p->ch || !p->attached)
		return -ENOTCONN;
	int rc = mm_ch_send(p->ch, msg, len, sim_node_now(p->owner));
	if (rc < 0)
		sim_violation(s, "node %u: channel send to %u failed: %d", p->owner->idx, p->idx, rc);
	return rc;
}

/* ---- datagrams ---------------------------------------------------------------------- */

static uint8_t dgram_buf[MM_CH_UDP_MAX];
static uint8_t dgram_plain[MM_NOISE_MAX_MSG];

int sim_chan_dgram_send(struct sim_peer *p, const uint8_t *msg, size_t len)
{
	struct sim_node *a = p->owner;
	struct sim *s = a->sim;
	if (!p->ch || !p->attached)
		return 0; /* as the daemon: no connection, no datagram */
	size_t out = 0;
	if (mm_link_dgram_seal(p->ch, a->id, msg, len, dgram_buf, sizeof dgram_buf, &out) < 0)
		return 0; /* (over the UDP limit: the daemon logs it and sends nothing) */
	s->res->messages++;
	s->res->datagrams_sent++;
	if (s->cfg.attacks_per_s > 0)
		capture(s->cap_dgram, SIM_CAPTURE, &s->ncap_dgram, p->idx, dgram_buf, out);
	return sim_net_dgram(s, a, &s->nodes[p->idx], dgram_buf, out);
}

void sim_chan_dgram_recv(struct sim *s, struct sim_node *b, const uint8_t *bytes, size_t len)
{
	uint64_t id = 0;
	if (!b->alive || mm_link_dgram_sender(bytes, len, &id) < 0)
		return;
	struct sim_peer *q = peer_by_id(b, id);
	if (!q || !q->ch)
		return;
	size_t n = 0;
	int rc;
	if (!q->attached) {
		/* an acceptor's established, unconfirmed connection: an authentic datagram
		 * under its keys confirms it as a frame would (as node/peer.c udp_recv) */
		if (!incoming(q) || mm_ch_state(q->ch) != MM_CH_ESTABLISHED ||
		    mm_link_dgram_open(q->ch, bytes, len, dgram_plain, sizeof dgram_plain, &n) < 0)
			return;
		attach(q);
		if (!q->attached)
			return;
		rc = 0;
	} else {
		rc = mm_link_dgram_open(q->ch, bytes, len, dgram_plain, sizeof dgram_plain, &n);
	}
	if (rc < 0) {
		s->res->datagrams_rejected++;
		if (rc == -EALREADY)
			s->res->dgram_replayed++;
		else if (rc == -ESTALE)
			s->res->dgram_too_old++;
		else
			s->res->dgram_forged++;
		return;
	}
	rc = mm_sync_recv(q->sync, MM_CHAN_DATAGRAM, dgram_plain, n, sim_node_now(b));
	if (rc < 0) {
		s->res->proto_errors++;
		sim_trace(s, "t=%llu node %u rejected datagram from %u: %d", (unsigned long long)s->now,
		          b->idx, q->idx, rc);
	}
}

/* ---- the attacker --------------------------------------------------------------------- */

struct sink {
	uint8_t buf[512];
	size_t len;
};

static int sink_emit(void *arg, const uint8_t *bytes, size_t len)
{
	struct sink *k = arg;
	if (k && len <= sizeof k->buf - k->len) {
		memcpy(k->buf + k->len, bytes, len);
		k->len += len;
	}
	return 0;
}

static int sink_deliver(void *arg, const struct mm_ch_chunk *chunk)
{
	(void)arg;
	(void)chunk;
	return -EPROTO; /* the attacker cannot send transport frames: it has no keys */
}

/* A new incoming connection to t carrying `bytes`: what node/peer.c does with one. */
static void attacker_conn(struct sim *s, struct sim_node *t, const uint8_t *bytes, size_t len,
                          const char *what)
{
	uint8_t eph[32];
	sim_rng_bytes(&s->rng, eph, sizeof eph);
	struct mm_ch *ch = NULL;
	struct pending pend = { .node = t };
	struct mm_ch_peers peers = { ch_lookup_pending, ch_accepted_pending, &pend };
	struct mm_ch_config cc = {
		.initiator = 0,
		.local_priv = t->priv,
		.random32 = eph,
		.now_ms = sim_node_now(t),
		.peers = peers,
		.io = { sink_emit, sink_deliver, NULL },
	};
	if (mm_ch_new(&ch, &cc) < 0)
		return;
	size_t used = 0;
	int rc = mm_ch_feed(ch, bytes, len, &used, sim_node_now(t));
	if (rc < 0) {
		s->res->handshakes_rejected++;
		sim_trace(s, "t=%llu node %u refused %s: %d", (unsigned long long)s->now, t->idx, what, rc);
	} else if (mm_ch_state(ch) == MM_CH_ESTABLISHED) {
		/* A replay the responder could not tell from a new connection: it forgot the
		 * timestamp (restart) or never received the original.  As the daemon, it
		 * answers, but the connection is never confirmed (the attacker has no key to
		 * seal a frame or a datagram with: mm_link_confirmed), so it neither replaces
		 * the peer's live connection nor becomes its last timestamp; the daemon
		 * closes it at its handshake deadline. */
		s->res->hs_replays_accepted++;
		struct sim_peer *p = peer_by_key(t, mm_ch_remote_key(ch));
		sim_trace(s, "t=%llu node %u answered %s from %u (never confirmed)", (unsigned long long)s->now,
		          t->idx, what, p ? p->idx : 0);
	}
	mm_ch_free(&ch);
}

void sim_attack_event(struct sim *s)
{
	struct sim_node *t = &s->nodes[sim_rng_below(&s->rng, s->n)];
	uint8_t buf[256];
	s->res->attacks++;
	switch (sim_rng_below(&s->rng, 5)) {
	case 0: { /* a forged datagram under the id of one of t's peers */
		if (!t->npeers)
			return;
		uint64_t id = s->nodes[t->peers[sim_rng_below(&s->rng, t->npeers)].idx].id;
		size_t len = 8 + (size_t)sim_rng_below(&s->rng, 120);
		for (int i = 0; i < 8; i++)
			buf[i] = (uint8_t)(id >> (56 - 8 * i));
		sim_rng_bytes(&s->rng, buf + 8, len - 8);
		sim_chan_dgram_recv(s, t, buf, len);
		return;
	}
	case 1: { /* a recorded datagram, replayed to its destination */
		unsigned n = s->ncap_dgram < SIM_CAPTURE ? s->ncap_dgram : SIM_CAPTURE;
		if (!n)
			return;
		struct sim_capture *c = &s->cap_dgram[sim_rng_below(&s->rng, n)];
		sim_chan_dgram_recv(s, &s->nodes[c->to], c->bytes, c->len);
		return;
	}
	case 2: { /* a recorded handshake message 1, replayed on a new connection */
		unsigned n = s->ncap_hs < SIM_CAPTURE_HS ? s->ncap_hs : SIM_CAPTURE_HS;
		if (!n)
			return;
		struct sim_capture *c = &s->cap_hs[sim_rng_below(&s->rng, n)];
		if (s->nodes[c->to].alive)
			attacker_conn(s, &s->nodes[c->to], c->bytes, c->len, "a replayed handshake");
		return;
	}
	case 3: { /* a well-formed message 1 from a key that is nobody's peer */
		if (!t->alive)
			return;
		struct sink k = { .len = 0 };
		struct mm_ch *ch = NULL;
		uint8_t eph[32];
		sim_rng_bytes(&s->rng, eph, sizeof eph);
		struct mm_ch_config cc = {
			.initiator = 1,
			.local_priv = s->attacker_priv,
			.remote_pub = t->pub,
			.random32 = eph,
			.now_ms = SIM_EPOCH_MS + s->now,
			.io = { sink_emit, sink_deliver, &k },
		};
		if (mm_ch_new(&ch, &cc) == 0 && mm_ch_start(ch) == 0)
			attacker_conn(s, t, k.buf, k.len, "a handshake from an unknown key");
		mm_ch_free(&ch);
		return;
	}
	default: { /* garbage in one well-formed frame on a new connection */
		if (!t->alive)
			return;
		size_t len = (size_t)sim_rng_below(&s->rng, 200);
		buf[0] = (uint8_t)(len >> 8);
		buf[1] = (uint8_t)len;
		sim_rng_bytes(&s->rng, buf + 2, len);
		attacker_conn(s, t, buf, len + 2, "garbage on a new connection");
		return;
	}
	}
}
