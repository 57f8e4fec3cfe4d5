/*
 * fuzz_knock.c — libFuzzer target for mm_knock_is / mm_knock_open (proto/knock.h), the
 * only bytes a daemon reads from the UDP port before any channel exists.  The input is
 * [8 last_ts][8 now][rest = datagram]; the key is fixed.  Invariants: a datagram that
 * opens has a knock's shape and its MAC is the one mm_knock_seal makes for its sender
 * and timestamp; a datagram sealed here from the input's fields opens exactly when its
 * timestamp passes the window.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proto/knock.h"

static const uint8_t key[32] = {42, 1, 2, 3};

static uint64_t be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 16)
		return 0;
	uint64_t last = be64(data), now = be64(data + 8);
	const uint8_t *d = data + 16;
	size_t n = size - 16;
	uint64_t id, ts;
	int r = mm_knock_open(key, d, n, last, now, &ts);
	if (r == 0) {
		uint8_t again[MM_KNOCK_LEN];
		if (!mm_knock_is(d, n, &id))
			__builtin_trap();
		mm_knock_seal(key, id, ts, again);
		if (memcmp(again, d, MM_KNOCK_LEN) != 0 || ts <= last)
			__builtin_trap();
	}
	/* a genuine knock from the input's first 16 bytes of datagram, if any */
	if (n >= 16) {
		uint8_t k[MM_KNOCK_LEN];
		uint64_t sid = be64(d), sts = be64(d + 8);
		mm_knock_seal(key, sid, sts, k);
		r = mm_knock_open(key, k, sizeof k, last, now, &ts);
		bool small = now <= UINT64_MAX - MM_KNOCK_SKEW_MS && sts <= UINT64_MAX - MM_KNOCK_SKEW_MS;
		bool in_window = sts > last && sts <= now + MM_KNOCK_SKEW_MS && sts + MM_KNOCK_SKEW_MS >= now;
		if (small && in_window != (r == 0))
			__builtin_trap();
		if (r != 0 && r != -ESTALE)
			__builtin_trap();
	}
	return 0;
}
