/*
 * peer.c — the daemon's network side: one TCP connection per peer carrying the Noise
 * channel (proto/channel.h), the UDP socket for gossip datagrams, and the transport
 * vtable through which each peer's sync session (proto/sync.h) sends.
 *
 * Who dials: of two peers, the one whose public key sorts lower connects and retries
 * with backoff and jitter; the other only accepts.  So a pair never holds two
 * connections, and a restarted dialer reconnects at once.  A new authenticated
 * connection from a peer replaces an older one (the old one is usually dead).  An
 * incoming one counts as authenticated only once a transport frame or a datagram
 * sealed with its final keys has come (the dialer sends a REKEY frame right after
 * the handshake for this, mm_ch_rekey): in Noise IK message 1 proves only that its
 * sender holds the static key (a replayed one is refused by its timestamp, which the
 * state database keeps across restarts, but one recorded just before a crash may
 * pass), and the cluster psk is mixed in after it.  Attached at
 * message 1, a stolen node key without the psk, or a replayed message 1 after a
 * restart, replaced the peer's live connection with one nobody could use, and for a
 * peer we dial kept us from dialing it for as long as the intruder held it open.
 *
 * The acceptor knocks (proto/knock.h) on a dialer it has no connection to, at start
 * and then once every KNOCK_INTERVAL_MS: the dialer, which may be waiting out a
 * backoff of up to BACKOFF_MAX_MS, dials at once.  A restarted acceptor is connected
 * again within a round trip.
 *
 * Before it is authenticated a connection costs little and not for long: it must
 * complete its handshake within HANDSHAKE_TIMEOUT_MS (either direction), and at most
 * PENDING_MAX incoming connections wait for their handshake at once; a new one beyond
 * that closes the oldest.  Without these, a remote that is no peer could hold any
 * number of idle connections for ever, until the daemon ran out of descriptors for
 * its peers and its mail files.
 *
 * Datagrams: 8-byte big-endian sender node id, then the channel's sealed datagram
 * (counter + ChaChaPoly).  The id only picks the session whose keys open it; nothing
 * is trusted before the AEAD check and the replay window.  A knock has its own shape
 * and MAC.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#include "node/daemon.h"
#include "node/log.h"
#include "node/store.h"
#include "proto/gossip.h"
#include "proto/sync.h"
#include "proto/fetch.h"
#include "proto/knock.h"
#include "proto/link.h"
#include "proto/wire.h"

#define WRITE_HWM (4u << 20)   /* above this many queued bytes the session pauses bulk */
#define WRITE_LWM (1u << 20)   /* ... and resumes below this */
/* A peer that stops reading (its daemon stopped or wedged, the kernel still ACKing)
 * would make us hold every push for it, with no end: above WRITE_MAX queued bytes, or
 * with output waiting and none of it taken by the socket for WRITE_STALL_MS, the
 * connection is closed.  Nothing is lost: the next connection's anti-entropy round
 * finds whatever the dropped output carried.  WRITE_MAX leaves room above WRITE_HWM
 * for the pushes and answers that do not pause (each message <= MM_WIRE_MAX). */
#define WRITE_MAX (32u << 20)
#define WRITE_STALL_MS 120000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000
#define KNOCK_INTERVAL_MS 1000 /* an acceptor without its dialer knocks this often */
#define READ_CHUNK (64 * 1024)
#define HANDSHAKE_TIMEOUT_MS 10000 /* connect + Noise handshake: one round trip of a WAN */
#define PENDING_MAX 64         /* incoming connections waiting for their handshake: far
                                * more than peers start at once; an attacker must open
                                * new ones faster than peers complete theirs */

struct mm_conn {
	uv_tcp_t tcp;
	uv_timer_t timer;           /* handshake deadline; stopped once attached */
	int open;                   /* handles not yet closed (tcp, timer): freed at 0 */
	bool incoming;              /* accepted, not dialed */
	struct mm_daemon *d;
	struct mm_dpeer *peer;      /* dialer: from the start; acceptor: once message 1 passed */
	struct mm_ch *ch;
	bool attached;              /* peer->conn == this and the session is connected */
	bool closing;
	bool paused;                /* told the session the send buffer is full */
	bool hs_timed_out;          /* closed by the handshake deadline */
	uint8_t hs_ts[MM_CH_TAI64N_LEN]; /* incoming: message 1's timestamp, the peer's last
	                                  * once the connection is confirmed */
	uint8_t *in;                /* stream bytes not yet consumed by the channel */
	size_t in_len, in_cap;
	struct mm_link_rx rx;       /* application message being reassembled (wiped at the end) */
	uint8_t *out;               /* sealed bytes not yet handed to libuv (see ch_emit) */
	size_t out_len, out_cap;
	uint64_t handed;            /* bytes handed to libuv in all (conn_flush) */
	uint64_t taken;             /* handed - libuv's queue at the last stall check */
	uint64_t taken_ms;          /* when that changed, or the queue was empty */
	struct mm_conn *next;
	char what[80];              /* "peer NAME" or "incoming HOST:PORT" for logs */
};

struct wreq {
	uv_write_t req;
	struct mm_conn *c;
	uint8_t *data;              /* the connection's output buffer, now owned here */
};

/* Output is gathered per connection and written when OUT_FLUSH bytes are waiting, or
 * when the loop turn's work is done (mm_peers_flush, before the loop waits for I/O
 * and after each turn's I/O): a stream of small messages (a joining node's body
 * requests, acknowledgements) costs one write a turn, not one a message. */
#define OUT_FLUSH (64 * 1024)

static void conn_close(struct mm_conn *c, int err, const char *why);
static size_t conn_queued(struct mm_conn *c);
static void peer_schedule_retry(struct mm_dpeer *p);
static void peer_free_if_done(struct mm_dpeer *p);

/* ---- helpers ----------------------------------------------------------------- */

static void addr_text(const struct sockaddr *sa, char *out, size_t cap)
{
	char host[64] = "?";
	int port = 0;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
		uv_ip4_name(a, host, sizeof host);
		port = ntohs(a->sin_port);
		snprintf(out, cap, "%s:%d", host, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
		uv_ip6_name(a, host, sizeof host);
		port = ntohs(a->sin6_port);
		snprintf(out, cap, "[%s]:%d", host, port);
	} else {
		snprintf(out, cap, "?");
	}
}

struct mm_dpeer *mm_peer_by_sync(struct mm_daemon *d, const struct mm_sync *s)
{
	for (size_t i = 0; i < d->n_peers; i++)
		if (d->peers[i]->sync == s)
			return d->peers[i];
	return NULL;
}

static struct mm_dpeer *peer_by_key(struct mm_daemon *d, const uint8_t pub[32])
{
	for (size_t i = 0; i < d->n_peers; i++)
		if (sodium_memcmp(d->peers[i]->conf->pub, pub, 32) == 0)
			return d->peers[i];
	return NULL;
}

static struct mm_dpeer *peer_by_node(struct mm_daemon *d, uint64_t node)
{
	for (size_t i = 0; i < d->n_peers; i++)
		if (d->peers[i]->conf->node_id == node)
			return d->peers[i];
	return NULL;
}

/* ---- the channel's callbacks --------------------------------------------------- */

static void write_cb(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct mm_conn *c = w->c;
	free(w->data);
	free(w);
	if (c->closing)
		return;
	if (status < 0) {
		conn_close(c, status, "write failed");
		return;
	}
	if (c->paused && conn_queued(c) < WRITE_LWM) {
		c->paused = false;
		if (c->attached)
			mm_sync_writable(c->peer->sync, mm_daemon_now());
	}
}

/* Hands the gathered output to libuv.  0 or negative errno (the caller closes). */
static int conn_flush(struct mm_conn *c)
{
	if (!c->out_len || c->closing)
		return 0;
	struct wreq *w = malloc(sizeof *w);
	if (!w)
		return -ENOMEM;
	w->c = c;
	w->data = c->out;
	uv_buf_t b = uv_buf_init((char *)c->out, (unsigned)c->out_len);
	c->handed += c->out_len;
	c->out = NULL;
	c->out_len = c->out_cap = 0;
	int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
	if (r < 0) {
		free(w->data);
		free(w);
		return r;
	}
	return 0;
}

static size_t conn_queued(struct mm_conn *c)
{
	return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) + c->out_len;
}

static int ch_emit(void *arg, const uint8_t *bytes, size_t len)
{
	struct mm_conn *c = arg;
	if (c->closing)
		return -ENOTCONN;
	if (len > c->out_cap - c->out_len) {
		size_t cap = c->out_len + len < OUT_FLUSH ? OUT_FLUSH : c->out_len + len;
		uint8_t *o = realloc(c->out, cap);
		if (!o)
			return -ENOMEM;
		c->out = o;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, bytes, len);
	c->out_len += len;
	if (conn_queued(c) > WRITE_MAX)
		return -ENOBUFS; /* the caller closes (conn_overfull tells why) */
	return c->out_len >= OUT_FLUSH ? conn_flush(c) : 0;
}

/* Logs why a connection whose output the peer does not take is being closed. */
static void conn_overfull_log(struct mm_conn *c, const char *what)
{
	mm_log(MM_LOG_WARN, "%s does not read what we send (%s, %zu bytes waiting): closing the "
	       "connection; it is dialed again and anti-entropy resends what was dropped. "
	       "If this repeats, check that the peer's daemon is running and not stuck",
	       c->peer ? c->peer->conf->name : c->what, what, conn_queued(c));
}

void mm_peers_check_stalled(struct mm_daemon *d, uint64_t now_ms)
{
	for (struct mm_conn *c = d->conns, *next; c; c = next) {
		next = c->next;
		if (c->closing)
			continue;
		size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
		uint64_t taken = c->handed - q;
		if (!q || taken != c->taken || !c->taken_ms) {
			c->taken = taken;
			c->taken_ms = now_ms;
			continue;
		}
		if (now_ms - c->taken_ms >= WRITE_STALL_MS) {
			char what[64];
			snprintf(what, sizeof what, "nothing taken for %u s", WRITE_STALL_MS / 1000);
			conn_overfull_log(c, what);
			conn_close(c, UV_ETIMEDOUT, "peer not reading");
		}
	}
}

void mm_peers_flush(struct mm_daemon *d)
{
	for (struct mm_conn *c = d->conns; c; c = c->next) {
		int r = conn_flush(c);
		if (r < 0)
			conn_close(c, r, "write failed");
	}
}

/* The connection is authenticated and carries the channel: make it the peer's.  An
 * incoming connection only once the dialer has sealed something with the session's
 * keys (see the top of this file); an outgoing one sends that confirmation here. */
static void conn_attach(struct mm_conn *c)
{
	if (c->attached || c->closing || !c->peer)
		return;
	struct mm_dpeer *p = c->peer;
	if (!c->incoming) {
		int r = mm_ch_rekey(c->ch, mm_daemon_now());
		if (r < 0) {
			conn_close(c, 0, "send failed");
			return;
		}
	}
	if (p->conn && p->conn != c) {
		struct mm_conn *old = p->conn;
		old->attached = false;
		p->conn = NULL;
		conn_close(old, 0, "replaced by a newer connection");
	}
	p->conn = c;
	c->attached = true;
	uv_timer_stop(&c->timer);
	if (c->incoming && mm_link_ts_confirm(p->last_ts, c->hs_ts))
		mm_daemon_peer_hs_save(c->d, p);
	p->state = MM_PEER_ESTABLISHED;
	p->backoff_ms = BACKOFF_MIN_MS;
	p->handshake_fails = 0;
	p->foreign_id_logged = false;
	p->connects++;
	p->connected_since_ms = mm_daemon_now();
	mm_log(MM_LOG_INFO, "connected peer=%s via=%s", p->conf->name, c->what);
	mm_sync_reset(p->sync, p->connected_since_ms);
	mm_sync_connected(p->sync, p->connected_since_ms);
	/* A new connection is a good moment to compare states. */
	mm_sync_gossip(p->sync, p->connected_since_ms);
}

static int ch_deliver(void *arg, const struct mm_ch_chunk *k)
{
	struct mm_conn *c = arg;
	if (!c->peer)
		return -EPROTO;
	conn_attach(c);
	if (!c->attached)
		return -ENOTCONN; /* closing (its confirmation could not be sent) */
	const uint8_t *msg;
	size_t len;
	int r = mm_link_rx_chunk(&c->rx, k, &msg, &len);
	if (r <= 0)
		return r; /* more to come, or an error that fails the channel */
	r = mm_sync_recv(c->peer->sync, MM_CHAN_STREAM, msg, len, mm_daemon_now());
	if (r < 0)
		mm_log(MM_LOG_WARN, "rejected message peer=%s err=%s", c->peer->conf->name, strerror(-r));
	return 0;
}

static int ch_lookup(void *arg, const uint8_t pub[32], uint8_t last_ts_r[MM_CH_TAI64N_LEN])
{
	struct mm_conn *c = arg;
	struct mm_dpeer *p = peer_by_key(c->d, pub);
	if (!p)
		return -ENOENT;
	memcpy(last_ts_r, p->last_ts, MM_CH_TAI64N_LEN);
	return 0;
}

static void ch_accepted(void *arg, const uint8_t pub[32], const uint8_t ts[MM_CH_TAI64N_LEN])
{
	struct mm_conn *c = arg;
	struct mm_dpeer *p = peer_by_key(c->d, pub);
	if (!p)
		return;
	/* Remembered as the peer's last timestamp only once the connection is confirmed
	 * (conn_attach): message 1 proves the static key alone, and a stolen key without
	 * the cluster psk could otherwise set a timestamp far ahead and so lock the real
	 * peer out until this daemon restarts. */
	memcpy(c->hs_ts, ts, MM_CH_TAI64N_LEN);
	c->peer = p;
	snprintf(c->what, sizeof c->what, "incoming from %s", p->conf->name);
}

/* ---- connections --------------------------------------------------------------- */

static void handshake_timeout_cb(uv_timer_t *t)
{
	struct mm_conn *c = t->data;
	if (!c->attached && !c->closing) {
		c->hs_timed_out = true;
		conn_close(c, 0, "handshake timed out");
	}
}

/* A new connection, its handshake deadline running. */
static struct mm_conn *conn_new(struct mm_daemon *d)
{
	struct mm_conn *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	if (mm_link_rx_init(&c->rx, MM_WIRE_MAX) < 0 || uv_tcp_init(&d->loop, &c->tcp) < 0) {
		mm_link_rx_release(&c->rx);
		free(c);
		return NULL;
	}
	uv_timer_init(&d->loop, &c->timer);
	d->open_handles += 2;
	c->open = 2;
	c->d = d;
	c->tcp.data = c;
	c->timer.data = c;
	c->next = d->conns;
	d->conns = c;
	uv_timer_start(&c->timer, handshake_timeout_cb, HANDSHAKE_TIMEOUT_MS, 0);
	return c;
}

static void conn_closed_cb(uv_handle_t *h)
{
	struct mm_conn *c = h->data;
	struct mm_daemon *d = c->d;
	mm_daemon_handle_closed(h);
	if (--c->open > 0)
		return;
	for (struct mm_conn **pp = &d->conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	mm_ch_free(&c->ch);
	free(c->in);  /* (sealed bytes only, as out) */
	/* the reassembled messages were mail (records, bodies): not handed back to the
	 * allocator as they are, and only the bytes ever used wiped (most connections
	 * never reassemble: every message fits one frame) */
	mm_link_rx_release(&c->rx);
	free(c->out);
	free(c);
}

static void conn_close_ex(struct mm_conn *c, int err, const char *why, bool reset_sync);

static void conn_close(struct mm_conn *c, int err, const char *why)
{
	conn_close_ex(c, err, why, true);
}

/* reset_sync false: the session is on the call stack (it is sending through us) and
 * handles the failure itself; calling into it now would re-enter it. */
static void conn_close_ex(struct mm_conn *c, int err, const char *why, bool reset_sync)
{
	if (c->closing)
		return;
	/* what was gathered goes out as far as the socket takes it now, as it did when
	 * each message was written at once (uv_close cancels the rest) */
	(void)conn_flush(c);
	c->closing = true;
	struct mm_dpeer *p = c->peer;
	if (p && p->conn == c) {
		p->conn = NULL;
		p->state = MM_PEER_IDLE;
		p->disconnects++;
		mm_log(err ? MM_LOG_WARN : MM_LOG_INFO, "disconnected peer=%s reason=\"%s%s%s\"",
		       p->conf->name, why, err ? ": " : "", err ? uv_strerror(err) : "");
		if (reset_sync)
			mm_sync_reset(p->sync, mm_daemon_now());
		if (!c->d->stopping)
			peer_schedule_retry(p);
	} else if (p && p->dialer && p->state != MM_PEER_ESTABLISHED && !p->conn) {
		/* The peer took the TCP connection and then dropped our handshake: a key in a
		 * peers file that is not the node's current one (either side's), or cluster_psk
		 * files that differ.  Neither end says so otherwise (the responder cannot tell
		 * who sent what it cannot decrypt), so say it here, once per run of failures;
		 * the second in a row, since one can be a peer that was stopping. */
		bool hs = p->state == MM_PEER_HANDSHAKE && !c->hs_timed_out; /* (no answer: not a refusal) */
		if (hs && ++p->handshake_fails == 2)
			mm_log(MM_LOG_WARN, "handshake with peer=%s failed (%s%s%s), again: check that its line "
			       "(%s:%u) has its current public key (`mailmesh pubkey < private.key` there), that "
			       "its peers file has this node's, and that both use the same cluster_psk; retrying",
			       p->conf->name, why, err ? ": " : "", err ? uv_strerror(err) : "",
			       p->d->cfg.peers_path, p->conf->line);
		mm_log(MM_LOG_DEBUG, "connection failed peer=%s reason=\"%s%s%s\"", p->conf->name, why,
		       err ? ": " : "", err ? uv_strerror(err) : "");
		p->state = MM_PEER_IDLE;
		if (!c->d->stopping)
			peer_schedule_retry(p);
	} else {
		mm_log(MM_LOG_DEBUG, "closed %s reason=\"%s%s%s\"", c->what, why, err ? ": " : "",
		       err ? uv_strerror(err) : "");
	}
	uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
	uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	(void)hint;
	struct mm_conn *c = h->data;
	if (c->in_cap - c->in_len < READ_CHUNK) {
		size_t cap = c->in_len + READ_CHUNK;
		uint8_t *n = realloc(c->in, cap);
		if (!n) {
			*buf = uv_buf_init(NULL, 0);
			return;
		}
		c->in = n;
		c->in_cap = cap;
	}
	*buf = uv_buf_init((char *)c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	(void)buf;
	struct mm_conn *c = s->data;
	if (c->closing)
		return;
	if (n < 0) {
		conn_close(c, n == UV_EOF ? 0 : (int)n, n == UV_EOF ? "closed by peer" : "read failed");
		return;
	}
	if (n == 0)
		return;
	c->in_len += (size_t)n;
	size_t used = 0;
	int r = mm_ch_feed(c->ch, c->in, c->in_len, &used, mm_daemon_now());
	if (r < 0) {
		const char *why = r == -EACCES ? "unknown key refused"
		                : r == -EALREADY ? "replayed or old handshake refused (a replay, or the peer's "
		                                   "clock went back: it is refused until that clock passes the "
		                                   "time of its last handshake here, or this node restarts)"
		                : r == -EBADMSG ? "authentication failed"
		                : "protocol error";
		if (r == -EACCES || r == -EALREADY)
			mm_log(MM_LOG_WARN, "refused %s reason=\"%s\"", c->what, why);
		conn_close(c, 0, why);
		return;
	}
	memmove(c->in, c->in + used, c->in_len - used);
	c->in_len -= used;
	/* Bound what an unauthenticated or misbehaving sender can make us hold. */
	if (c->in_len > 2 * MM_CH_FRAME_MAX) {
		conn_close(c, 0, "oversized frame");
		return;
	}
	/* (an incoming connection: once a transport frame was authentic, frames_in; a
	 * frame that carried data attached it already, in ch_deliver) */
	if (!c->attached && c->peer && mm_link_confirmed(c->ch, c->incoming))
		conn_attach(c);
}

static int conn_start_channel(struct mm_conn *c, bool initiator)
{
	struct mm_daemon *d = c->d;
	uint8_t eph[32];
	randombytes_buf(eph, sizeof eph);
	struct mm_ch_config cc = {
		.initiator = initiator,
		.local_priv = d->cfg.private_key,
		.remote_pub = initiator ? c->peer->conf->pub : NULL,
		.psk = d->cfg.has_psk ? d->cfg.psk : NULL,
		.random32 = eph,
		.now_ms = mm_daemon_now(),
		.peers = {ch_lookup, ch_accepted, c},
		.io = {ch_emit, ch_deliver, c},
	};
	int r = mm_ch_new(&c->ch, &cc);
	sodium_memzero(eph, sizeof eph);
	if (r < 0)
		return r;
	uv_tcp_nodelay(&c->tcp, 1);
	uv_tcp_keepalive(&c->tcp, 1, 15);
	r = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
	if (r < 0)
		return r;
	if (initiator)
		return mm_ch_start(c->ch);
	return 0;
}

/* Makes room for one more incoming connection waiting for its handshake: at
 * PENDING_MAX, the oldest of them is closed (a peer completes its handshake within a
 * round trip; the oldest is the likeliest to be idle). */
static void pending_make_room(struct mm_daemon *d)
{
	static uint64_t warned_ms;
	struct mm_conn *oldest = NULL;
	size_t n = 0;
	/* (d->conns is newest first) */
	for (struct mm_conn *c = d->conns; c; c = c->next)
		if (c->incoming && !c->attached && !c->closing) {
			n++;
			oldest = c;
		}
	if (n < PENDING_MAX)
		return;
	uint64_t now = mm_daemon_now();
	if (now - warned_ms >= 60000) {
		warned_ms = now;
		mm_log(MM_LOG_WARN, "%d incoming connections without a handshake: closing the oldest (%s); "
		       "is something flooding the listen port?", PENDING_MAX, oldest->what);
	}
	conn_close(oldest, 0, "too many connections without a handshake");
}

static void on_connection(uv_stream_t *server, int status)
{
	struct mm_daemon *d = server->data;
	if (status < 0 || d->stopping)
		return;
	pending_make_room(d);
	struct mm_conn *c = conn_new(d);
	if (!c)
		return;
	c->incoming = true;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
		conn_close(c, 0, "accept failed");
		return;
	}
	struct sockaddr_storage ss;
	int len = sizeof ss;
	snprintf(c->what, sizeof c->what, "incoming");
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
		char a[64];
		addr_text((struct sockaddr *)&ss, a, sizeof a);
		snprintf(c->what, sizeof c->what, "incoming %s", a);
	}
	int r = conn_start_channel(c, false);
	if (r < 0)
		conn_close(c, 0, "channel setup failed");
}

/* ---- dialing ------------------------------------------------------------------ */

struct dial {
	uv_getaddrinfo_t gai;
	uv_connect_t conn_req;
	struct mm_dpeer *p;
	struct mm_conn *c;
	unsigned addr_gen;          /* p->addr_gen when the lookup began */
};

static void connect_cb(uv_connect_t *req, int status)
{
	struct dial *dl = req->data;
	struct mm_conn *c = dl->c;
	free(dl);
	if (c->closing)
		return;
	if (status < 0) {
		conn_close(c, status, "connect failed");
		return;
	}
	c->peer->state = MM_PEER_HANDSHAKE;
	int r = conn_start_channel(c, true);
	if (r < 0)
		conn_close(c, r < -4095 ? 0 : r, "handshake start failed");
}

/* An acceptor without a connection to its dialer p: "I am up, dial now". */
static void peer_knock(struct mm_dpeer *p, uint64_t now)
{
	if (p->dialer || p->conn || !p->knock_ok || !p->udp_addr_ok)
		return;
	static uint8_t pkt[MM_KNOCK_LEN];
	mm_knock_seal(p->knock_key, p->d->cfg.node_id, now, pkt);
	uv_buf_t b = uv_buf_init((char *)pkt, sizeof pkt);
	(void)uv_udp_try_send(&p->d->udp, &b, 1, (const struct sockaddr *)&p->udp_addr);
	p->knock_sent_ms = now;
}

static void resolve_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct dial *dl = req->data;
	struct mm_dpeer *p = dl->p;
	struct mm_daemon *d = p->d;
	p->resolving--;
	if (p->removed || dl->addr_gen != p->addr_gen) {
		/* taken out of the peers file, or given another address, while its host was
		 * looked up: the answer is for nothing that exists any more */
		if (res)
			uv_freeaddrinfo(res);
		free(dl);
		peer_free_if_done(p);
		return;
	}
	if (status < 0 || !res || d->stopping) {
		if (status < 0)
			mm_log(MM_LOG_WARN, "cannot resolve peer=%s host=%s err=%s", p->conf->name,
			       p->conf->host, uv_strerror(status));
		if (res)
			uv_freeaddrinfo(res);
		free(dl);
		p->state = MM_PEER_IDLE;
		if (!d->stopping)
			peer_schedule_retry(p);
		return;
	}
	memcpy(&p->udp_addr, res->ai_addr, res->ai_addrlen);
	p->udp_addr_ok = true;
	uv_freeaddrinfo(res);
	if (!p->dialer) {
		free(dl);
		peer_knock(p, mm_daemon_now());
		return;
	}
	struct mm_conn *c = conn_new(d);
	if (!c) {
		free(dl);
		peer_schedule_retry(p);
		return;
	}
	c->peer = p;
	snprintf(c->what, sizeof c->what, "outgoing to %s", p->conf->name);
	dl->c = c;
	dl->conn_req.data = dl;
	p->state = MM_PEER_CONNECTING;
	int r = uv_tcp_connect(&dl->conn_req, &c->tcp, (struct sockaddr *)&p->udp_addr, connect_cb);
	if (r < 0) {
		free(dl);
		conn_close(c, r, "connect failed");
	}
}

static int peer_resolve(struct mm_dpeer *p)
{
	struct dial *dl = calloc(1, sizeof *dl);
	if (!dl)
		return -ENOMEM;
	dl->p = p;
	dl->addr_gen = p->addr_gen;
	dl->gai.data = dl;
	char port[8];
	snprintf(port, sizeof port, "%u", p->conf->port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	if (p->dialer)
		p->state = MM_PEER_RESOLVING;
	int r = uv_getaddrinfo(&p->d->loop, &dl->gai, resolve_cb, p->conf->host, port, &hints);
	if (r < 0) {
		free(dl);
		p->state = MM_PEER_IDLE;
		return r;
	}
	p->resolving++;
	return 0;
}

static void retry_cb(uv_timer_t *t)
{
	struct mm_dpeer *p = t->data;
	if (p->d->stopping || p->conn || p->state != MM_PEER_IDLE)
		return;
	if (peer_resolve(p) < 0)
		peer_schedule_retry(p);
}

static void peer_schedule_retry(struct mm_dpeer *p)
{
	if (p->removed || (!p->dialer && p->udp_addr_ok))
		return;
	/* Exponential backoff with +-25 % jitter, so restarted clusters don't stampede. */
	uint32_t base = p->backoff_ms ? p->backoff_ms : BACKOFF_MIN_MS;
	uint32_t jitter = base / 2 ? randombytes_uniform(base / 2) : 0;
	uint64_t delay = base - base / 4 + jitter;
	p->backoff_ms = base * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : base * 2;
	uv_timer_start(&p->retry, retry_cb, delay, 0);
}

void mm_peer_dial_all(struct mm_daemon *d)
{
	uint64_t now = mm_daemon_now();
	for (size_t i = 0; i < d->n_peers; i++) {
		struct mm_dpeer *p = d->peers[i];
		if (!p->dialer && !p->conn && now - p->knock_sent_ms >= KNOCK_INTERVAL_MS)
			peer_knock(p, now);
		/* A peer waiting out its backoff is left alone: this runs every gossip tick
		 * only to catch a peer that somehow has neither a connection nor a timer. */
		if (p->state == MM_PEER_IDLE && !p->conn && (p->dialer || !p->udp_addr_ok) &&
		    !uv_is_active((uv_handle_t *)&p->retry))
			if (peer_resolve(p) < 0)
				peer_schedule_retry(p);
	}
}

/* ---- the sync session's transport --------------------------------------------- */

static int sync_send(void *arg, enum mm_chan chan, const uint8_t *msg, size_t len)
{
	struct mm_dpeer *p = arg;
	struct mm_conn *c = p->conn;
	if (!c || c->closing || !c->ch || mm_ch_state(c->ch) != MM_CH_ESTABLISHED)
		return chan == MM_CHAN_DATAGRAM ? 0 : -ENOTCONN;
	if (chan == MM_CHAN_DATAGRAM) {
		if (!p->udp_addr_ok)
			return 0;
		static uint8_t pkt[MM_CH_UDP_MAX];
		size_t out = 0;
		int r = mm_link_dgram_seal(c->ch, p->d->cfg.node_id, msg, len, pkt, sizeof pkt, &out);
		if (r == -EMSGSIZE) {
			/* (a DIGEST is under 100 bytes: only a bug gets here; said once) */
			static bool logged;
			if (!logged)
				mm_log(MM_LOG_ERROR, "datagram of %zu bytes to peer=%s not sent: over the UDP limit "
				       "(%d bytes of payload)", len, p->conf->name, MM_CH_DGRAM_MAX_PLAIN);
			logged = true;
		}
		if (r == 0) {
			uv_buf_t b = uv_buf_init((char *)pkt, (unsigned)out);
			/* Datagrams may be lost anyway; a full socket buffer is just loss. */
			(void)uv_udp_try_send(&p->d->udp, &b, 1, (const struct sockaddr *)&p->udp_addr);
		}
		return 0;
	}
	int r = mm_ch_send(c->ch, msg, len, mm_daemon_now());
	if (r < 0) {
		/* Closing now would re-enter the session (it is calling us): it treats the
		 * error as a reset itself, and the close happens on the next loop turn. */
		if (r == -ENOBUFS) {
			conn_overfull_log(c, "over the limit of queued output");
			conn_close_ex(c, UV_ENOBUFS, "peer not reading", false);
		} else {
			conn_close_ex(c, 0, "send failed", false);
		}
		return r;
	}
	if (conn_queued(c) > WRITE_HWM) {
		c->paused = true;
		return 1;
	}
	return 0;
}

static void udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	(void)h;
	(void)hint;
	static uint8_t slab[65536];
	*buf = uv_buf_init((char *)slab, sizeof slab);
}

static bool sockaddr_same(const struct sockaddr *a, const struct sockaddr_storage *b)
{
	if (a->sa_family != b->ss_family)
		return false;
	if (a->sa_family == AF_INET) {
		const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->sa_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
		return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr);
	}
	return false;
}

/* A knock whose node id is no peer's, from the address of a listed peer: the key
 * that line has is not the one that node runs with, which then never dials us (its
 * view of which of the two dials may differ from ours) and whose handshakes we could
 * not have answered.  The only trace of a wrong key on a node that does not dial:
 * said once per connection.  (Unauthenticated: at worst a forged packet makes this
 * warning appear once; nothing else follows from it.) */
static void knock_foreign(struct mm_daemon *d, const struct sockaddr *from)
{
	for (size_t i = 0; from && i < d->n_peers; i++) {
		struct mm_dpeer *p = d->peers[i];
		if (!p->udp_addr_ok || p->conn || p->foreign_id_logged || !sockaddr_same(from, &p->udp_addr))
			continue;
		p->foreign_id_logged = true;
		mm_log(MM_LOG_WARN, "peer=%s knocks from its address with another key than its line (%s:%u) "
		       "has: check that line against its current public key (`mailmesh pubkey < "
		       "private.key` there)", p->conf->name, d->cfg.peers_path, p->conf->line);
		return;
	}
}

/* A knock from an acceptor we dial: dial now instead of at the end of the backoff. */
static void knock_recv(struct mm_daemon *d, uint64_t id, const uint8_t *b, size_t n, const struct sockaddr *from)
{
	struct mm_dpeer *p = peer_by_node(d, id);
	if (!p) {
		knock_foreign(d, from);
		return;
	}
	if (!p->dialer || !p->knock_ok)
		return;
	uint64_t ts;
	if (mm_knock_open(p->knock_key, b, n, p->knock_ts, mm_daemon_now(), &ts) < 0)
		return;
	p->knock_ts = ts;
	if (p->conn || p->state != MM_PEER_IDLE)
		return; /* connected, or a dial is under way */
	mm_log(MM_LOG_DEBUG, "knocked peer=%s: dialing now", p->conf->name);
	uv_timer_stop(&p->retry);
	p->backoff_ms = BACKOFF_MIN_MS;
	if (peer_resolve(p) < 0)
		peer_schedule_retry(p);
}

static void udp_recv(uv_udp_t *u, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                     unsigned flags)
{
	struct mm_daemon *d = u->data;
	if (n <= 8 || (flags & UV_UDP_PARTIAL) || d->stopping)
		return;
	const uint8_t *b = (const uint8_t *)buf->base;
	uint64_t id = 0;
	if (mm_knock_is(b, (size_t)n, &id)) {
		knock_recv(d, id, b, (size_t)n, from);
		return;
	}
	if (mm_link_dgram_sender(b, (size_t)n, &id) < 0)
		return;
	struct mm_dpeer *p = peer_by_node(d, id);
	if (!p)
		return;
	static uint8_t plain[65536];
	size_t len = 0;
	int r = -ENOTCONN;
	if (p->conn && p->conn->ch && mm_ch_state(p->conn->ch) == MM_CH_ESTABLISHED)
		r = mm_link_dgram_open(p->conn->ch, b, (size_t)n, plain, sizeof plain, &len);
	if (r == -EBADMSG || r == -ENOTCONN) {
		/* sealed with the keys of a newer connection of p whose handshake is done: an
		 * authentic datagram confirms it as a frame would (a dialer of a version
		 * without mm_ch_rekey sends a DIGEST at once, and a frame only later) */
		for (struct mm_conn *c = d->conns; c; c = c->next)
			if (c->peer == p && c->incoming && !c->attached && !c->closing && c->ch &&
			    mm_ch_state(c->ch) == MM_CH_ESTABLISHED &&
			    mm_link_dgram_open(c->ch, b, (size_t)n, plain, sizeof plain, &len) == 0) {
				conn_attach(c);
				r = c->attached ? 0 : -ENOTCONN;
				break;
			}
	}
	if (r < 0)
		return; /* counted by the channel */
	r = mm_sync_recv(p->sync, MM_CHAN_DATAGRAM, plain, len, mm_daemon_now());
	/* (a digest: no mail, but decrypted, and a few dozen bytes: not left lying) */
	sodium_memzero(plain, len);
	if (r < 0)
		mm_log(MM_LOG_DEBUG, "rejected datagram peer=%s err=%s", p->conf->name, strerror(-r));
}

/* ---- sync events (logs) ------------------------------------------------------- */

static void sync_event(void *arg, struct mm_sync *s, const struct mm_sync_event *ev)
{
	struct mm_daemon *d = arg;
	struct mm_dpeer *p = mm_peer_by_sync(d, s);
	const char *name = p ? p->conf->name : "?";
	const struct mm_sync_stats *st = mm_sync_stats(s);
	switch (ev->type) {
	case MM_SYNC_EV_ROUND_DONE:
		mm_log(MM_LOG_INFO, "synced peer=%s differences=%llu descent_bytes=%llu record_bytes=%llu round_trips=%llu",
		       name, (unsigned long long)st->last_differences,
		       (unsigned long long)st->last_descent_bytes, (unsigned long long)st->last_record_bytes,
		       (unsigned long long)st->last_round_trips);
		break;
	case MM_SYNC_EV_ROUND_ABORT:
		/* -EBUSY: the peer still sends an earlier round's records (a large
		 * difference behind a full stream); the next digest starts the round */
		if (ev->err != -ECANCELED)
			mm_log(ev->err == -EBUSY ? MM_LOG_DEBUG : MM_LOG_WARN, "sync round abandoned peer=%s err=%s",
			       name, strerror(-ev->err));
		break;
	case MM_SYNC_EV_PROTO_ERROR:
		mm_log(MM_LOG_WARN, "protocol error peer=%s err=%s%s", name, strerror(-ev->err),
		       ev->err == -EPROTONOSUPPORT ? " (peer runs an incompatible mailmesh version)" : "");
		break;
	case MM_SYNC_EV_BODY_BAD:
		/* A hash mismatch is the peer's fault and worth a warning; a store that
		 * cannot take a body now (disk full, ...) is an error of ours. */
		mm_log(ev->err == -EBADMSG ? MM_LOG_WARN : MM_LOG_ERROR, "body rejected peer=%s user=%s err=%s%s",
		       name, ev->user ? ev->user : "?", strerror(-ev->err),
		       ev->err == -EBADMSG ? " (its bytes do not match its id; fetched elsewhere)" : "");
		break;
	case MM_SYNC_EV_RECORD_REJECTED:
		if (ev->err == -ERANGE) {
			/* a tombstone horizon ahead of our clock: sent again every round until
			 * our clock passes it, so said once per peer and run */
			if (p && p->future_horizon_logged)
				break;
			if (p)
				p->future_horizon_logged = true;
			mm_log(MM_LOG_WARN, "record rejected peer=%s user=%s: its tombstone horizon is ahead of this "
			       "node's clock (a clock off by more than gc_grace on one of the two nodes); check both "
			       "nodes' time sync (NTP): the horizon is taken once this clock has passed it",
			       name, ev->user ? ev->user : "?");
			break;
		}
		mm_log(MM_LOG_WARN, "record rejected peer=%s user=%s err=%s", name, ev->user ? ev->user : "?",
		       strerror(-ev->err));
		break;
	case MM_SYNC_EV_BODY_OK:
		/* no commit here: the body is only staged; its placement asks for one
		 * (mm_bodies_flush, or mm_bodies_commit_check once a stream is over).  A
		 * commit per loop turn of a stream blocked the loop 4-29 ms each in LMDB's
		 * syncs, about 20 times over a 5,000-message join (measured, perf sched) */
		mm_log(MM_LOG_DEBUG, "body received peer=%s user=%s", name, ev->user ? ev->user : "?");
		break;
	default:
		break;
	}
}

/* Sets up the peer of peers-file line pc: its retry timer, wake-up key and sync
 * session, registered with the gossip.  0 and *p_r, or -errno with nothing left. */
static int peer_new(struct mm_daemon *d, const struct mm_peer *pc, struct mm_dpeer **p_r)
{
	struct mm_dpeer *p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->d = d;
	p->conf = pc;
	p->dialer = mm_link_dials(d->cfg.public_key, pc->pub);
	p->backoff_ms = BACKOFF_MIN_MS;
	p->knock_ok = mm_knock_key(d->cfg.private_key, pc->pub, d->cfg.has_psk ? d->cfg.psk : NULL,
	                           p->knock_key) == 0;
	struct mm_body_ops bops;
	mm_bodies_ops(d, &bops);
	struct mm_sync_config sc = {
		.state = d->state,
		.local_node = d->cfg.node_id,
		.peer_node = pc->node_id,
		.eff = mm_daemon_effect,
		.eff_arg = d,
		.io = {sync_send, p},
		.body = bops,
		.fetch = d->fetch,
		.lead = d->lead,
		.clock = &d->clock,
		.max_skew_ms = d->cfg.max_skew_ms,
		.event = sync_event,
		.event_arg = d,
		.relay = mm_gossip_relay,
		.relay_arg = d->gossip,
		.user_data = p,
	};
	int r = mm_sync_new(&sc, &p->sync);
	if (r == 0 && (r = mm_gossip_add(d->gossip, p->sync)) < 0)
		mm_sync_free(&p->sync);
	if (r < 0) {
		sodium_memzero(p->knock_key, sizeof p->knock_key);
		free(p);
		return r;
	}
	uv_timer_init(&d->loop, &p->retry);
	d->open_handles++;
	p->retry.data = p;
	*p_r = p;
	return 0;
}

/* A removed peer is freed once nothing refers to it any more: its timer closed and
 * no name lookup of its host outstanding (uv_getaddrinfo cannot be taken back). */
static void peer_free_if_done(struct mm_dpeer *p)
{
	if (!p->removed || !p->retry_closed || p->resolving)
		return;
	sodium_memzero(p->knock_key, sizeof p->knock_key);
	free(p);
}

static void peer_retry_closed(uv_handle_t *h)
{
	struct mm_dpeer *p = h->data;
	mm_daemon_handle_closed(h);
	p->retry_closed = true;
	peer_free_if_done(p);
}

/* Closes every connection of p, established or being set up, without a retry. */
static void peer_disconnect(struct mm_dpeer *p, const char *why)
{
	for (struct mm_conn *c = p->d->conns; c; c = c->next)
		if (c->peer == p && !c->closing)
			conn_close(c, 0, why);
	p->state = MM_PEER_IDLE;
}

/* Takes p out of the running daemon (it left the peers file): its connections close,
 * its session stops (bodies it was sending are aborted, its fetches go to other
 * peers) and it is freed once its handles are.  The caller takes it out of d->peers. */
static void peer_remove(struct mm_dpeer *p)
{
	struct mm_daemon *d = p->d;
	p->removed = true;
	peer_disconnect(p, "removed from the peers file");
	for (struct mm_conn *c = d->conns; c; c = c->next)
		if (c->peer == p)
			c->peer = NULL; /* (closing: nothing of it runs any more) */
	mm_gossip_remove(d->gossip, p->sync);
	mm_sync_reset(p->sync, mm_daemon_now());
	mm_sync_free(&p->sync);
	p->conf = NULL; /* (its line is freed with the old list; nothing reads it now) */
	uv_close((uv_handle_t *)&p->retry, peer_retry_closed);
}

/* Whether two lines of the peers file reach the peer at the same place. */
static bool peer_same_address(const struct mm_peer *a, const struct mm_peer *b)
{
	return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* Appends to the reload's log line; what does not fit is left out. */
static void note_add(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
	if (*len >= cap - 1)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
	va_end(ap);
	if (n > 0)
		*len = *len + (size_t)n < cap ? *len + (size_t)n : cap - 1;
}

int mm_peers_reload(struct mm_daemon *d, struct mm_peers *peers, const struct mm_peer *self)
{
	size_t n = peers->n;
	struct mm_dpeer **v = calloc(n ? n : 1, sizeof *v);
	bool *kept = calloc(d->n_peers ? d->n_peers : 1, sizeof *kept);
	struct mm_dpeer **added = calloc(n ? n : 1, sizeof *added);
	size_t nv = 0, nadded = 0;
	int r = 0;
	if (!v || !kept || !added) {
		r = -ENOMEM;
		goto fail;
	}
	/* first everything that can fail: the new peers' sessions */
	for (size_t i = 0; i < n; i++) {
		const struct mm_peer *pc = &peers->v[i];
		if (sodium_memcmp(pc->pub, d->cfg.public_key, 32) == 0)
			continue;
		struct mm_dpeer *old = NULL;
		for (size_t j = 0; j < d->n_peers && !old; j++)
			if (sodium_memcmp(d->peers[j]->conf->pub, pc->pub, 32) == 0) {
				old = d->peers[j];
				kept[j] = true;
			}
		if (old) {
			v[nv++] = old;
			continue;
		}
		if ((r = peer_new(d, pc, &v[nv])) < 0)
			goto fail;
		added[nadded++] = v[nv++];
	}
	/* then the changes, which cannot.  The new list is the daemon's first, so that
	 * nothing that runs while a removed peer's session stops finds that peer */
	char what[MM_LOG_LINE_MAX / 2] = "";
	size_t wl = 0;
	struct mm_dpeer **old = d->peers;
	size_t nold = d->n_peers;
	d->peers = v;
	d->n_peers = nv;
	for (size_t i = 0; i < nold; i++) {
		struct mm_dpeer *p = old[i];
		if (kept[i])
			continue;
		note_add(what, sizeof what, &wl, " removed=%s", p->conf->name);
		mm_daemon_peer_times_save(d, p); /* (if it comes back, the GC knows when it was in sync) */
		peer_remove(p);
	}
	free(old);
	for (size_t i = 0; i < nv; i++) {
		struct mm_dpeer *p = v[i];
		const struct mm_peer *pc = mm_peers_find_key(peers, p->conf->pub);
		bool is_new = false;
		for (size_t k = 0; k < nadded; k++)
			is_new |= added[k] == p;
		if (is_new) {
			note_add(what, sizeof what, &wl, " added=%s", pc->name);
			continue;
		}
		if (strcmp(pc->name, p->conf->name) != 0)
			note_add(what, sizeof what, &wl, " renamed=%s->%s", p->conf->name, pc->name);
		if (!peer_same_address(pc, p->conf)) {
			note_add(what, sizeof what, &wl, " moved=%s", pc->name);
			peer_disconnect(p, "its address changed in the peers file");
			p->udp_addr_ok = false;
			p->addr_gen++;
			p->backoff_ms = BACKOFF_MIN_MS;
			uv_timer_stop(&p->retry);
		}
		p->conf = pc;
	}
	mm_peers_free(&d->cfg.peers); /* (no peer still listed points into it) */
	d->cfg.peers = peers;
	d->cfg.self = self;
	uint64_t now = mm_daemon_now();
	for (size_t k = 0; k < nadded; k++) {
		struct mm_dpeer *p = added[k];
		mm_daemon_peer_times_load(d, p);
		/* back in the file after a while out of it: nobody waited for it meanwhile */
		uint64_t last = mm_peer_synced_ms(p);
		if (last && now > last && now - last > d->cfg.gc_grace_ms)
			mm_log(MM_LOG_WARN, "peer %s is back in the peers file, last in sync with this node %llu s ago, "
			       "longer than gc_grace: if it kept its old state it may bring back mail expunged since; "
			       "rebuild it with an empty state_dir and mail root (docs/operations.md)", p->conf->name,
			       (unsigned long long)((now - last) / 1000));
	}
	mm_log(MM_LOG_INFO, "peers file %s reloaded: %zu peers%s", d->cfg.peers_path, nv, wl ? what : ", no change");
	free(kept);
	free(added);
	mm_peer_dial_all(d);
	return 0;
fail:
	for (size_t k = 0; k < nadded; k++) {
		added[k]->removed = true;
		peer_remove(added[k]);
	}
	free(v);
	free(kept);
	free(added);
	mm_peers_free(&peers);
	return r;
}

/* ---- start and stop ----------------------------------------------------------- */

static int bind_addr(struct mm_daemon *d, struct sockaddr_storage *ss)
{
	const char *h = d->cfg.listen_host;
	if (uv_ip4_addr(h, d->cfg.listen_port, (struct sockaddr_in *)ss) == 0)
		return 0;
	if (uv_ip6_addr(h, d->cfg.listen_port, (struct sockaddr_in6 *)ss) == 0)
		return 0;
	return -EINVAL;
}

int mm_peers_start(struct mm_daemon *d)
{
	struct sockaddr_storage ss;
	int r = bind_addr(d, &ss);
	if (r < 0) {
		mm_log(MM_LOG_ERROR, "%s: listen: '%s' is not an IP address; use a numeric address such as 0.0.0.0 or [::]",
		       d->cfg.path, d->cfg.listen_host);
		return r;
	}
	uv_tcp_init(&d->loop, &d->listener);
	d->open_handles++;
	d->listener.data = d;
	if ((r = uv_tcp_bind(&d->listener, (struct sockaddr *)&ss, 0)) < 0 ||
	    (r = uv_listen((uv_stream_t *)&d->listener, 128, on_connection)) < 0) {
		mm_log(MM_LOG_ERROR, "%s: cannot listen on TCP %s:%u: %s (is another daemon running?)",
		       d->cfg.path, d->cfg.listen_host, d->cfg.listen_port, uv_strerror(r));
		return r;
	}
	uv_udp_init(&d->loop, &d->udp);
	d->open_handles++;
	d->udp.data = d;
	if ((r = uv_udp_bind(&d->udp, (struct sockaddr *)&ss, 0)) < 0 ||
	    (r = uv_udp_recv_start(&d->udp, udp_alloc, udp_recv)) < 0) {
		mm_log(MM_LOG_ERROR, "%s: cannot bind UDP %s:%u: %s", d->cfg.path, d->cfg.listen_host,
		       d->cfg.listen_port, uv_strerror(r));
		return r;
	}

	size_t n = d->cfg.peers ? d->cfg.peers->n : 0;
	d->peers = calloc(n ? n : 1, sizeof *d->peers);
	if (!d->peers)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct mm_peer *pc = &d->cfg.peers->v[i];
		if (sodium_memcmp(pc->pub, d->cfg.public_key, 32) == 0)
			continue; /* our own line of the shared peers file */
		if ((r = peer_new(d, pc, &d->peers[d->n_peers])) < 0)
			return r;
		d->n_peers++;
	}
	mm_log(MM_LOG_INFO, "listening on %s:%u (tcp+udp), %zu peers", d->cfg.listen_host,
	       d->cfg.listen_port, d->n_peers);
	mm_peer_dial_all(d);
	return 0;
}

void mm_peers_stop(struct mm_daemon *d)
{
	for (struct mm_conn *c = d->conns; c; c = c->next)
		conn_close(c, 0, "shutting down");
	for (size_t i = 0; i < d->n_peers; i++) {
		uv_close((uv_handle_t *)&d->peers[i]->retry, mm_daemon_handle_closed);
		sodium_memzero(d->peers[i]->knock_key, sizeof d->peers[i]->knock_key);
	}
	if (d->listener.type == UV_TCP)
		uv_close((uv_handle_t *)&d->listener, mm_daemon_handle_closed);
	if (d->udp.type == UV_UDP)
		uv_close((uv_handle_t *)&d->udp, mm_daemon_handle_closed);
}
