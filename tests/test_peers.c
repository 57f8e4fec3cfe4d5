/*
 * test_peers.c — unit tests of proto/peers: the peers-file parser (good files, every
 * kind of bad line with the line it names, duplicates, IPv6, comments), HOST:PORT
 * parsing and the lookups by name, key and node id.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/channel.h"
#include "proto/peers.h"

/* The base64 text of the 32-byte key whose bytes are all `b`. */
static const char *k64(uint8_t b)
{
	static char out[8][MM_KEY_B64_LEN + 1];
	static int slot;
	uint8_t key[32];
	char *o = out[slot++ % 8];

	memset(key, b, sizeof key);
	mm_key_to_base64(key, o);
	return o;
}

static struct mm_peers *parse_ok(const char *text)
{
	struct mm_peers *p = NULL;
	char err[256] = "untouched";
	int rc = mm_peers_parse(text, strlen(text), "peers.txt", &p, err, sizeof err);
	if (rc != 0)
		print_error("unexpected error: %s\n", err);
	assert_int_equal(rc, 0);
	assert_non_null(p);
	assert_string_equal(err, "");
	return p;
}

static void test_good_file(void **state)
{
	(void)state;
	char text[1024];
	snprintf(text, sizeof text,
	         "# the cluster\n"
	         "\n"
	         "alpha 192.0.2.1:4000 %s\n"
	         "   \t  # indented comment\n"
	         "beta\t[2001:db8::7]:4001\t%s   # trailing comment\n"
	         "gamma.example mail-3.example.org:65535 %s\r\n"
	         "d_4 [::1]:1 %s",
	         k64(1), k64(2), k64(3), k64(4));
	struct mm_peers *p = parse_ok(text);
	assert_int_equal(p->n, 4);

	assert_string_equal(p->v[0].name, "alpha");
	assert_string_equal(p->v[0].host, "192.0.2.1");
	assert_int_equal(p->v[0].port, 4000);
	assert_int_equal(p->v[0].line, 3);
	uint8_t key[32];
	memset(key, 1, 32);
	assert_memory_equal(p->v[0].pub, key, 32);
	assert_true(p->v[0].node_id == mm_node_id(key));

	assert_string_equal(p->v[1].name, "beta");
	assert_string_equal(p->v[1].host, "2001:db8::7");
	assert_int_equal(p->v[1].port, 4001);
	assert_int_equal(p->v[1].line, 5);

	assert_string_equal(p->v[2].name, "gamma.example");
	assert_string_equal(p->v[2].host, "mail-3.example.org");
	assert_int_equal(p->v[2].port, 65535);
	assert_int_equal(p->v[2].line, 6);

	assert_string_equal(p->v[3].host, "::1");
	assert_int_equal(p->v[3].port, 1);
	assert_int_equal(p->v[3].line, 7);
	mm_peers_free(&p);
	assert_null(p);
	mm_peers_free(&p); /* NULL-safe */
	mm_peers_free(NULL);
}

static void test_empty_and_comments_only(void **state)
{
	(void)state;
	struct mm_peers *p = parse_ok("");
	assert_int_equal(p->n, 0);
	assert_null(mm_peers_find_name(p, "x"));
	mm_peers_free(&p);
	p = parse_ok("# nothing\n\n   \n\t# here\n");
	assert_int_equal(p->n, 0);
	mm_peers_free(&p);
	p = NULL;
	assert_int_equal(mm_peers_parse(NULL, 0, NULL, &p, NULL, 0), 0);
	assert_int_equal(p->n, 0);
	mm_peers_free(&p);
}

static void test_lookups(void **state)
{
	(void)state;
	char text[512];
	snprintf(text, sizeof text, "a 10.0.0.1:1 %s\nb 10.0.0.2:2 %s\n", k64(9), k64(10));
	struct mm_peers *p = parse_ok(text);
	uint8_t k9[32], k10[32], k11[32];
	memset(k9, 9, 32);
	memset(k10, 10, 32);
	memset(k11, 11, 32);
	assert_ptr_equal(mm_peers_find_name(p, "a"), &p->v[0]);
	assert_ptr_equal(mm_peers_find_name(p, "b"), &p->v[1]);
	assert_null(mm_peers_find_name(p, "c"));
	assert_null(mm_peers_find_name(p, "A"));
	assert_ptr_equal(mm_peers_find_key(p, k10), &p->v[1]);
	assert_ptr_equal(mm_peers_find_key(p, k9), &p->v[0]);
	assert_null(mm_peers_find_key(p, k11));
	assert_ptr_equal(mm_peers_find_node(p, mm_node_id(k10)), &p->v[1]);
	assert_null(mm_peers_find_node(p, mm_node_id(k11)));
	assert_null(mm_peers_find_name(NULL, "a"));
	assert_null(mm_peers_find_key(NULL, k9));
	assert_null(mm_peers_find_node(NULL, 1));
	mm_peers_free(&p);
}

struct bad_case {
	const char *text; /* %s, %s, %s are replaced by three distinct keys */
	unsigned line;    /* line the error must name */
	const char *what; /* substring of the message */
};

static void test_bad_lines_name_their_line(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
		{"a 10.0.0.1:1\n", 1, "found 2 fields"},
		{"# c\na\n", 2, "found 1 field"},
		{"a 10.0.0.1:1 %s extra\n", 1, "too many fields"},
		{"a 10.0.0.1:1 %s\nb 10.0.0.2:1 %s x y\n", 2, "too many fields"},
		{"\n\nbad/name 10.0.0.1:1 %s\n", 3, "bad peer name"},
		{"a@b 10.0.0.1:1 %s\n", 1, "bad peer name"},
		{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 10.0.0.1:1 %s\n", 1, "bad peer name"},
		{"a 10.0.0.1 %s\n", 1, "bad address"},
		{"a 10.0.0.1: %s\n", 1, "bad address"},
		{"a 10.0.0.1:0 %s\n", 1, "bad address"},
		{"a 10.0.0.1:65536 %s\n", 1, "bad address"},
		{"a 10.0.0.1:080 %s\n", 1, "bad address"},
		{"a 10.0.0.1:4x %s\n", 1, "bad address"},
		{"a 10.0.0.1:-4 %s\n", 1, "bad address"},
		{"a 10.0.0.300:4000 %s\n", 1, "bad address"},
		{"a :4000 %s\n", 1, "bad address"},
		{"a ::1:4000 %s\n", 1, "bad address"},
		{"a [::1]4000 %s\n", 1, "bad address"},
		{"a [::1:4000 %s\n", 1, "bad address"},
		{"a []:4000 %s\n", 1, "bad address"},
		{"a [::g]:4000 %s\n", 1, "bad address"},
		{"a [10.0.0.1]:4000 %s\n", 1, "bad address"},
		{"a -host.example:4000 %s\n", 1, "bad address"},
		{"a host-.example:4000 %s\n", 1, "bad address"},
		{"a host..example:4000 %s\n", 1, "bad address"},
		{"a host!:4000 %s\n", 1, "bad address"},
		{"a h:4000 AAAA\n", 1, "bad public key"},
		{"a h:4000 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", 1, "bad public key"},
		{"a h:4000 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n", 1, "bad public key"},
		{"a h:4000 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA*=\n", 1, "bad public key"},
		{"a h:4000 %s=\n", 1, "bad public key"},
		{"a 10.0.0.1:1 %s\nb 10.0.0.2:1 %s\na 10.0.0.3:1 %s\n", 3, "duplicate peer name 'a' (first on line 1)"},
		{"a 10.0.0.1:1 %s\nb 10.0.0.2:1 %s\nc 10.0.0.3:1 %.0s%s\n", 3, "duplicate public key (already used by 'b' on line 2)"},
		{"a h:1 %s\n\x01 b\n", 2, "unexpected byte 0x01"},
		{"a h:1 %s\nb h:1 \xc3\xa9\n", 2, "unexpected byte 0xc3"},
		{"a\x7f h:1 %s\n", 1, "unexpected byte 0x7f"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char text[1024], err[512], want[64];
		struct mm_peers *p = (struct mm_peers *)&p; /* must be set to NULL */
		const char *kb = k64(0x22);
		/* Case with "%.0s%s": third line repeats the second key. */
		snprintf(text, sizeof text, cases[i].text, k64(0x11), kb, kb, kb);
		int rc = mm_peers_parse(text, strlen(text), "/etc/mailmesh/peers", &p, err, sizeof err);
		snprintf(want, sizeof want, "/etc/mailmesh/peers:%u: ", cases[i].line);
		if (rc != -EINVAL || strncmp(err, want, strlen(want)) != 0 || strstr(err, cases[i].what) == NULL)
			print_error("case %zu: rc %d, err '%s', wanted '%s...%s'\n", i, rc, err, want, cases[i].what);
		assert_int_equal(rc, -EINVAL);
		assert_null(p);
		assert_true(strncmp(err, want, strlen(want)) == 0);
		assert_non_null(strstr(err, cases[i].what));
	}
}

static void test_nul_byte_and_unterminated_buffer(void **state)
{
	(void)state;
	char text[256];
	struct mm_peers *p = NULL;
	char err[256];
	int n = snprintf(text, sizeof text, "a h:1 %s\nbX h:2 %s\n", k64(1), k64(2));
	size_t len = (size_t)n;
	*strchr(text, 'X') = '\0';
	assert_int_equal(mm_peers_parse(text, len, NULL, &p, err, sizeof err), -EINVAL);
	assert_null(p);
	assert_non_null(strstr(err, "peers:2: unexpected byte 0x00"));

	/* Only the first len bytes count: a line cut before its key is short. */
	snprintf(text, sizeof text, "a h:1 %s", k64(1));
	memcpy(text + strlen(text), "XYZ", 3); /* no NUL within the parsed length */
	assert_int_equal(mm_peers_parse(text, strlen("a h:1 ") + 44, NULL, &p, err, sizeof err), 0);
	assert_int_equal(p->n, 1);
	mm_peers_free(&p);
	assert_int_equal(mm_peers_parse(text, strlen("a h:1 ") + 43, NULL, &p, err, sizeof err), -EINVAL);
	assert_null(p);
}

static void test_small_error_buffer(void **state)
{
	(void)state;
	struct mm_peers *p = NULL;
	char err[8];
	memset(err, 'x', sizeof err);
	assert_int_equal(mm_peers_parse("oops\n", 5, "peers", &p, err, sizeof err), -EINVAL);
	assert_int_equal(strlen(err), sizeof err - 1); /* cut, still terminated */
	assert_int_equal(mm_peers_parse("oops\n", 5, "peers", &p, NULL, 0), -EINVAL);
	assert_int_equal(mm_peers_parse("oops\n", 5, "peers", NULL, err, sizeof err), -EINVAL);
}

static void test_too_many_peers(void **state)
{
	(void)state;
	size_t cap = (MM_PEERS_MAX + 1) * 80, len = 0;
	char *text = malloc(cap);
	assert_non_null(text);
	for (unsigned i = 0; i <= MM_PEERS_MAX; i++) {
		uint8_t key[32] = {0};
		char b64[MM_KEY_B64_LEN + 1];
		key[0] = (uint8_t)i;
		key[1] = (uint8_t)(i >> 8);
		mm_key_to_base64(key, b64);
		len += (size_t)snprintf(text + len, cap - len, "n%u h:%u %s\n", i, 1000 + i, b64);
	}
	struct mm_peers *p = NULL;
	char err[256];
	assert_int_equal(mm_peers_parse(text, len, "f", &p, err, sizeof err), -EINVAL);
	assert_null(p);
	char want[64];
	snprintf(want, sizeof want, "f:%u: too many peers", MM_PEERS_MAX + 1);
	assert_non_null(strstr(err, want));
	/* Exactly MM_PEERS_MAX is fine. */
	char *last = text + len - 1;
	while (last > text && last[-1] != '\n')
		last--;
	assert_int_equal(mm_peers_parse(text, (size_t)(last - text), "f", &p, err, sizeof err), 0);
	assert_int_equal(p->n, MM_PEERS_MAX);
	mm_peers_free(&p);
	free(text);
}

static void test_hostport(void **state)
{
	(void)state;
	char host[MM_PEER_HOST_MAX + 1];
	uint16_t port = 0;
#define HP(s) mm_hostport_parse(s, strlen(s), host, sizeof host, &port)
	assert_int_equal(HP("0.0.0.0:4000"), 0);
	assert_string_equal(host, "0.0.0.0");
	assert_int_equal(port, 4000);
	assert_int_equal(HP("[::]:4100"), 0);
	assert_string_equal(host, "::");
	assert_int_equal(port, 4100);
	assert_int_equal(HP("[fe80::1:2:3:4]:9"), 0);
	assert_string_equal(host, "fe80::1:2:3:4");
	assert_int_equal(HP("localhost:25"), 0);
	assert_string_equal(host, "localhost");
	assert_int_equal(HP("under_score.example:1"), 0);
	assert_int_equal(HP("123abc:1"), 0); /* a host name that starts with digits */
	assert_int_equal(HP("127.0.0.1"), -EINVAL);
	assert_int_equal(HP("127.0.0.1:"), -EINVAL);
	assert_int_equal(HP(":1"), -EINVAL);
	assert_int_equal(HP("1.2.3:1"), -EINVAL);
	assert_int_equal(HP("1.2.3.4.5:1"), -EINVAL);
	assert_int_equal(HP("[::1]"), -EINVAL);
	assert_int_equal(HP("[::1]:"), -EINVAL);
	assert_int_equal(HP("[::1]:123456"), -EINVAL);
	assert_int_equal(HP("[::1%eth0]:1"), -EINVAL);
	assert_int_equal(HP("host.:1"), -EINVAL);
	assert_int_equal(HP(".host:1"), -EINVAL);
	assert_int_equal(mm_hostport_parse("1.2.3.4\0x:1", 11, host, sizeof host, &port), -EINVAL);
	/* A label of 64 characters is too long; 63 is fine. */
	char name[128];
	memset(name, 'a', 63);
	strcpy(name + 63, ".x:1");
	assert_int_equal(HP(name), 0);
	memset(name, 'a', 64);
	strcpy(name + 64, ".x:1");
	assert_int_equal(HP(name), -EINVAL);
	/* The host must fit the caller's buffer. */
	char small[4];
	assert_int_equal(mm_hostport_parse("abc:1", 5, small, sizeof small, &port), 0);
	assert_string_equal(small, "abc");
	assert_int_equal(mm_hostport_parse("abcd:1", 6, small, sizeof small, &port), -EINVAL);
#undef HP
}

static void test_name_valid(void **state)
{
	(void)state;
	assert_true(mm_peer_name_valid("node1", 5));
	assert_true(mm_peer_name_valid("a.b_c-d", 7));
	assert_false(mm_peer_name_valid("", 0));
	assert_false(mm_peer_name_valid("a b", 3));
	assert_false(mm_peer_name_valid("a#", 2));
	assert_false(mm_peer_name_valid(NULL, 1));
	char n[MM_PEER_NAME_MAX + 2];
	memset(n, 'x', sizeof n);
	assert_true(mm_peer_name_valid(n, MM_PEER_NAME_MAX));
	assert_false(mm_peer_name_valid(n, MM_PEER_NAME_MAX + 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_file),
		cmocka_unit_test(test_empty_and_comments_only),
		cmocka_unit_test(test_lookups),
		cmocka_unit_test(test_bad_lines_name_their_line),
		cmocka_unit_test(test_nul_byte_and_unterminated_buffer),
		cmocka_unit_test(test_small_error_buffer),
		cmocka_unit_test(test_too_many_peers),
		cmocka_unit_test(test_hostport),
		cmocka_unit_test(test_name_valid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
