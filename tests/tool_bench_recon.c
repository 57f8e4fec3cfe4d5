/*
 * tool_bench_recon.c — benchmark item 5 (issue 6): the cost of finding and fixing d
 * differences between two nodes that hold n messages, measured on the real code.
 *
 * Two struct mm_state are built with the real crdt/ code (one user, n messages, the
 * same records on both), joined by two real proto/sync sessions over an in-memory,
 * reliable, ordered transport.  For each d in the list: d differences are made (half
 * new messages on A, half \Seen changes on B), one gossip exchange starts a round, the
 * transport runs until it is quiet, and the tool checks that the roots are equal and
 * prints what went over the wire: descent bytes (DIGEST + START + DESCENT + END),
 * record bytes (RECORDS), round trips and the differences the round saw.  The states
 * are equal again after each round, so the next d starts from an in-sync pair (n grows
 * by d/2 each time, which is negligible).
 *
 * Usage: bench_recon N D1 [D2 ...]
 * Output: one line per d,
 *   RECON n=N d=D descent=B records=B total=B round_trips=R differences=K ok=1
 * Exit status 0 when every round converged (roots equal, one round done), 1 otherwise,
 * 2 on a usage error.  Bodies are reported present on both sides (only metadata is
 * reconciled), exactly as tests/test_sync.c's cost test does.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt/crdt.h"
#include "proto/sync.h"
#include "proto/wire.h"

struct msg {
	struct msg *next;
	int to;
	enum mm_chan ch;
	uint8_t *p;
	size_t len;
};

struct net {
	struct mm_state *st[2];
	struct mm_clock clk[2];
	struct mm_sync *sess[2]; /* sess[i]: node i's session with the other node */
	int link[2];             /* link[i] = destination of node i's sends */
	struct msg *head, *tail;
	uint64_t bytes_by_type[MM_MSG_TYPE_MAX + 1];
	bool failed;
};

static struct net net;

static void die(const char *what)
{
	fprintf(stderr, "bench_recon: %s\n", what);
	exit(1);
}

static int net_send(void *arg, enum mm_chan ch, const uint8_t *p, size_t len)
{
	int *to = arg;
	int t = mm_wire_peek_type(p, len);
	if (t <= 0 || t > MM_MSG_TYPE_MAX)
		die("session sent a message of no known type");
	net.bytes_by_type[t] += len;
	struct msg *m = calloc(1, sizeof *m);
	if (!m || !(m->p = malloc(len)))
		die("out of memory");
	memcpy(m->p, p, len);
	m->len = len;
	m->to = *to;
	m->ch = ch;
	if (net.tail)
		net.tail->next = m;
	else
		net.head = m;
	net.tail = m;
	return 0;
}

static void net_run(uint64_t now)
{
	while (net.head) {
		struct msg *m = net.head;
		net.head = m->next;
		if (!net.head)
			net.tail = NULL;
		int rc = mm_sync_recv(net.sess[m->to], m->ch, m->p, m->len, now);
		if (rc != 0) {
			fprintf(stderr, "bench_recon: mm_sync_recv: %s\n", strerror(-rc));
			net.failed = true;
		}
		free(m->p);
		free(m);
	}
}

/* Bodies: reported present on both sides; never read or written in this benchmark. */
static ssize_t b_read(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t off,
                      uint8_t *buf, size_t cap)
{
	(void)arg, (void)user, (void)id, (void)off, (void)buf, (void)cap;
	return -ENOENT;
}

static int b_begin(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size, void **h_r)
{
	(void)arg, (void)user, (void)id, (void)size, (void)h_r;
	return -EIO;
}

static int b_write(void *h, const uint8_t *data, size_t len)
{
	(void)h, (void)data, (void)len;
	return -EIO;
}

static int b_commit(void *h)
{
	(void)h;
	return -EIO;
}

static void b_abort(void *h)
{
	(void)h;
}

static int b_have(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	(void)arg, (void)user, (void)id;
	return 1;
}

static int copy_cb(void *arg, const struct mm_rec *r)
{
	struct mm_user *dst = arg;
	if (mm_user_merge(dst, r, NULL, NULL) < 0)
		die("merge failed while copying the state");
	return 0;
}

static void body_id_for(uint64_t i, uint8_t tag, uint8_t id[MM_ID_LEN])
{
	memset(id, 0, MM_ID_LEN);
	id[0] = tag;
	for (int k = 0; k < 8; k++)
		id[1 + k] = (uint8_t)(i >> (8 * k));
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: bench_recon N D1 [D2 ...]\n");
		return 2;
	}
	size_t n = strtoull(argv[1], NULL, 0);
	const char *user = "ex.com/big";
	uint64_t now = 1000000;
	for (int i = 0; i < 2; i++) {
		net.st[i] = mm_state_new();
		if (!net.st[i])
			die("out of memory");
		mm_clock_init(&net.clk[i], (uint64_t)i + 1, 0);
		net.link[i] = 1 - i;
	}
	struct mm_user *ua = mm_state_user(net.st[0], user, true);
	size_t nkeys = 0;
	size_t maxd = 0;
	for (int k = 2; k < argc; k++) {
		size_t d = strtoull(argv[k], NULL, 0);
		if (d == 0 || d > n) {
			fprintf(stderr, "bench_recon: each d must be 1..N\n");
			return 2;
		}
		maxd += d;
	}
	uint8_t (*keys)[MM_KEY_LEN] = malloc((maxd + 1) * MM_KEY_LEN);
	if (!ua || !keys)
		die("out of memory");
	uint8_t id[MM_ID_LEN];
	for (size_t i = 0; i < n; i++) {
		mm_hlc stamp = { ((uint64_t)1700000000000 + i) << 16, 1 };
		body_id_for(i, 1, id);
		uint8_t key[MM_KEY_LEN];
		if (mm_user_deliver(ua, "INBOX", id, 1000, 1700000000, 0, NULL, 0, 0, stamp, key,
		                    NULL, NULL, NULL) < 0)
			die("deliver failed");
		/* keys spread over the whole set, for the flag changes made on B later */
		if (nkeys < maxd && i % (n / maxd ? n / maxd : 1) == 0)
			memcpy(keys[nkeys++], key, MM_KEY_LEN);
	}
	struct mm_user *ub = mm_state_user(net.st[1], user, true);
	if (!ub)
		die("out of memory");
	mm_user_foreach(ua, NULL, 0, copy_cb, ub);
	for (int i = 0; i < 2; i++) {
		struct mm_sync_config c = {
			.state = net.st[i],
			.local_node = (uint64_t)i + 1,
			.peer_node = (uint64_t)(1 - i) + 1,
			.io = { net_send, &net.link[i] },
			.body = { b_read, b_begin, b_write, b_commit, b_abort, b_have, NULL },
			.clock = &net.clk[i],
		};
		if (mm_sync_new(&c, &net.sess[i]) != 0)
			die("mm_sync_new failed");
		mm_sync_connected(net.sess[i], now);
	}
	uint64_t seq = 0, used_keys = 0;
	int status = 0;
	for (int k = 2; k < argc; k++) {
		size_t d = strtoull(argv[k], NULL, 0);
		for (size_t i = 0; i < d; i++, seq++) {
			mm_hlc stamp = { ((uint64_t)1800000000000 + seq) << 16, 2 };
			if (i % 2 == 0) {
				body_id_for(seq, 2, id);
				if (mm_user_deliver(ua, "INBOX", id, 1000, 1700000000, 0, NULL, 0, 0,
				                    (mm_hlc){ stamp.t, 1 }, NULL, NULL, NULL, NULL) < 0)
					die("deliver failed");
			} else {
				if (used_keys >= nkeys)
					die("ran out of keys for flag changes");
				if (mm_user_set_flag(ub, keys[used_keys++], MM_FLAG_SEEN, true, stamp, NULL,
				                     NULL, NULL) != 1)
					die("set_flag failed");
			}
		}
		memset(net.bytes_by_type, 0, sizeof net.bytes_by_type);
		uint64_t done_before = mm_sync_stats(net.sess[0])->rounds_done;
		now += 1000;
		if (mm_sync_gossip(net.sess[0], now) != 0)
			die("mm_sync_gossip failed");
		net_run(now);
		uint8_t ra[MM_HASH_LEN], rb[MM_HASH_LEN];
		mm_state_root(net.st[0], ra);
		mm_state_root(net.st[1], rb);
		const struct mm_sync_stats *st = mm_sync_stats(net.sess[0]);
		bool ok = !net.failed && !memcmp(ra, rb, MM_HASH_LEN) && st->rounds_done == done_before + 1;
		uint64_t find = net.bytes_by_type[MM_MSG_DIGEST] + net.bytes_by_type[MM_MSG_START] +
		                net.bytes_by_type[MM_MSG_DESCENT] + net.bytes_by_type[MM_MSG_END];
		uint64_t recs = net.bytes_by_type[MM_MSG_RECORDS];
		printf("RECON n=%zu d=%zu descent=%llu records=%llu total=%llu round_trips=%llu "
		       "differences=%llu ok=%d\n", n, d, (unsigned long long)find,
		       (unsigned long long)recs, (unsigned long long)(find + recs),
		       (unsigned long long)st->last_round_trips,
		       (unsigned long long)st->last_differences, ok ? 1 : 0);
		fflush(stdout);
		if (!ok)
			status = 1;
	}
	for (int i = 0; i < 2; i++) {
		mm_sync_free(&net.sess[i]);
		mm_state_free(&net.st[i]);
	}
	free(keys);
	return status;
}
