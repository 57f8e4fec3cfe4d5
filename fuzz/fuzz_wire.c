/*
 * fuzz_wire.c — libFuzzer target for the replication messages: every input goes to
 * the decoder (mm_wire_decode, mm_wire_peek_type) whole, and is also replayed as a
 * conversation into a live session (mm_sync_recv), so the session's handling of
 * summaries, answers, records and bodies sees arbitrary bytes too.
 *
 * Conversation format: records [1-byte mode][2-byte big-endian length L][L bytes]:
 *   mode & 3 == 0  datagram          mode & 3 == 1  stream
 *   mode & 3 == 2  the session starts a round first (so DESCENT/END have a context)
 *   mode & 3 == 3  stream reset + reconnect
 * The session works on a small state (a few users and messages) built once; merged
 * records change it, which is fine: the target checks memory safety and that every
 * rejection is one of the documented errors.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crdt/crdt.h"
#include "proto/sync.h"
#include "proto/wire.h"

static int sink(void *arg, enum mm_chan chan, const uint8_t *msg, size_t len)
{
	(void)arg;
	(void)chan;
	if (len > MM_WIRE_MAX)
		__builtin_trap();
	/* what the session sends must decode */
	struct mm_arena a;
	struct mm_wire_msg m;
	mm_arena_init(&a);
	if (mm_wire_decode(msg, len, &m, &a) != 0)
		__builtin_trap();
	mm_arena_free(&a);
	return 0;
}

static const uint8_t body_bytes[] = "Subject: x\r\n\r\nhello\r\n";

static ssize_t b_read(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t off,
                      uint8_t *buf, size_t cap)
{
	(void)arg;
	(void)user;
	(void)id;
	if (off >= sizeof body_bytes)
		return 0;
	size_t n = sizeof body_bytes - off < cap ? sizeof body_bytes - off : cap;
	memcpy(buf, body_bytes + off, n);
	return (ssize_t)n;
}

struct handle {
	size_t size, got;
};

static int b_begin(void *arg, const char *user, const uint8_t id[MM_ID_LEN], uint64_t size, void **h)
{
	(void)arg;
	(void)user;
	(void)id;
	struct handle *x = calloc(1, sizeof *x);
	if (!x)
		return -ENOMEM;
	x->size = size;
	*h = x;
	return 0;
}

static int b_write(void *h, const uint8_t *data, size_t len)
{
	struct handle *x = h;
	(void)data;
	if (x->got + len > x->size)
		__builtin_trap(); /* the session must never write past the announced size */
	x->got += len;
	return 0;
}

static int b_commit(void *h)
{
	free(h);
	return 0;
}

static void b_abort(void *h)
{
	free(h);
}

static int b_have(void *arg, const char *user, const uint8_t id[MM_ID_LEN])
{
	(void)arg;
	(void)user;
	return id[0] & 1;
}

static struct mm_state *st;
static struct mm_sync *sess;

static void setup(void)
{
	st = mm_state_new();
	const char *users[] = { "a.com/x", "a.com/y", "b.org/z" };
	for (unsigned u = 0; u < 3; u++) {
		struct mm_user *us = mm_state_user(st, users[u], true);
		for (unsigned i = 0; i < 8 * (u + 1); i++) {
			uint8_t id[MM_ID_LEN] = { (uint8_t)i, (uint8_t)u };
			mm_hlc stamp = { ((uint64_t)1000 + i * 7 + u) << 16, 1 };
			mm_user_deliver(us, i & 1 ? "INBOX" : "Archive", id, 20 + i, 1700000000, i & 63,
			                NULL, 0, 0, stamp, NULL, NULL, NULL, NULL);
		}
	}
	struct mm_sync_config c = {
		.state = st,
		.local_node = 1,
		.peer_node = 2,
		.io = { sink, NULL },
		.body = { b_read, b_begin, b_write, b_commit, b_abort, b_have, NULL },
	};
	if (mm_sync_new(&c, &sess) != 0)
		__builtin_trap();
	mm_sync_connected(sess, 0);
}

static void check_rc(int rc)
{
	if (rc != 0 && rc != -EBADMSG && rc != -EPROTO && rc != -EPROTONOSUPPORT && rc != -ENOMEM &&
	    rc != -EMSGSIZE)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint64_t now;
	if (!sess)
		setup();
	/* 1. the decoders on the whole input */
	struct mm_arena a;
	struct mm_wire_msg m;
	mm_arena_init(&a);
	int rc = mm_wire_decode(data, size, &m, &a);
	if (rc != 0 && rc != -EBADMSG && rc != -EPROTONOSUPPORT && rc != -EOPNOTSUPP)
		__builtin_trap();
	mm_wire_peek_type(data, size);
	mm_arena_free(&a);

	/* 2. the same bytes as a conversation with a session */
	size_t off = 0;
	while (off + 3 <= size) {
		uint8_t mode = data[off];
		size_t len = (size_t)data[off + 1] << 8 | data[off + 2];
		off += 3;
		if (len > size - off)
			len = size - off;
		/* an exact-size heap copy so ASan sees any over-read */
		uint8_t *msg = malloc(len ? len : 1);
		if (!msg)
			return 0;
		memcpy(msg, data + off, len);
		off += len;
		now += 10;
		switch (mode & 3) {
		case 0:
			check_rc(mm_sync_recv(sess, MM_CHAN_DATAGRAM, msg, len, now));
			break;
		case 2:
			mm_sync_start(sess, now);
			/* fall through */
		case 1:
			check_rc(mm_sync_recv(sess, MM_CHAN_STREAM, msg, len, now));
			break;
		case 3:
			mm_sync_reset(sess, now);
			mm_sync_connected(sess, now);
			break;
		}
		free(msg);
	}
	mm_sync_tick(sess, now += 60000); /* time every round and body out */
	return 0;
}
