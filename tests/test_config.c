/*
 * test_config.c — unit tests of node/config (config file parsing, defaults, relative
 * paths, every error naming its line, loading keys and peers and checking they fit),
 * node/keyfile (0600 writes, the permission check) and node/log (levels, line shape).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "node/config.h"
#include "node/store.h"
#include "node/keyfile.h"
#include "node/log.h"
#include "proto/channel.h"

#define REQUIRED "name = n1\nlisten = 127.0.0.1:4000\nprivate_key = k\npeers = p\n"

static int parse(const char *text, struct mm_config *cfg, char *err, size_t errlen)
{
	return mm_config_parse("/etc/mm/mailmesh.conf", text, strlen(text), cfg, err, errlen);
}

static void test_defaults(void **state)
{
	(void)state;
	struct mm_config cfg;
	char err[MM_CONFIG_ERR_MAX];
	assert_int_equal(parse(REQUIRED, &cfg, err, sizeof err), 0);
	assert_string_equal(cfg.path, "/etc/mm/mailmesh.conf");
	assert_string_equal(cfg.name, "n1");
	assert_string_equal(cfg.listen_host, "127.0.0.1");
	assert_int_equal(cfg.listen_port, 4000);
	assert_string_equal(cfg.private_key_path, "/etc/mm/k");
	assert_string_equal(cfg.peers_path, "/etc/mm/p");
	assert_string_equal(cfg.mail_location, "/var/mail/vhosts/%d/%n");
	assert_string_equal(cfg.state_dir, "/var/lib/mailmesh");
	assert_string_equal(cfg.control_socket, "/var/lib/mailmesh/control.sock");
	assert_int_equal(cfg.gossip_interval_ms, 200);
	assert_int_equal(cfg.log_level, MM_LOG_INFO);
	assert_null(cfg.user);
	assert_null(cfg.group);
	assert_false(cfg.drop_privileges);
	assert_null(cfg.cluster_psk_path);
	assert_int_equal(cfg.push_fanout, 0);
	assert_int_equal(cfg.file_cache, MM_STORE_FILE_CACHE);
	assert_true(cfg.state_max_bytes == 16ULL << 30);
	assert_null(cfg.quota_ignore);
	assert_true(cfg.gc_grace_ms == 30ULL * 86400 * 1000);
	assert_true(cfg.gc_max_ms == 180ULL * 86400 * 1000);
	assert_true(cfg.max_skew_ms == 60000);
	assert_null(cfg.peers);
	mm_config_free(&cfg);
	/* a gc_grace beyond the default gc_max alone: gc_max follows it */
	assert_int_equal(parse(REQUIRED "gc_grace = 365d\n", &cfg, err, sizeof err), 0);
	assert_true(cfg.gc_max_ms == 365ULL * 86400 * 1000);
	mm_config_free(&cfg);
	assert_null(cfg.name);
	mm_config_free(&cfg); /* twice is harmless */
	mm_config_free(NULL);
}

/* Dovecot's lowercasing modifier: the directories are lowercase, so %Ln is %n here. */
static void test_lowercase_vars(void **state)
{
	(void)state;
	struct mm_config cfg;
	char err[MM_CONFIG_ERR_MAX];
	int rc = parse(REQUIRED "mail_location = maildir:/var/vmail/%Ld/%Ln:INDEX=/var/idx/%Lu\n", &cfg, err,
	               sizeof err);
	if (rc != 0)
		print_error("%s\n", err);
	assert_int_equal(rc, 0);
	assert_string_equal(cfg.mail_location, "maildir:/var/vmail/%Ld/%Ln:INDEX=/var/idx/%Lu");
	mm_config_free(&cfg);
}

static void test_every_key(void **state)
{
	(void)state;
	struct mm_config cfg;
	char err[MM_CONFIG_ERR_MAX];
	const char *text =
		"\xef\xbb\xbf# full config\r\n"
		"name = mx-2.example   # trailing comment\n"
		"   listen=[::]:4400\n"
		"\tprivate_key = /abs/private.key\n"
		"peers = ../shared/peers\n"
		"; inih-style comment\n"
		"mail_location = maildir:mail/%d/%n/Maildir:INDEX=/var/idx/%u\n"
		"state_dir = state\n"
		"gossip_interval = 1500\n"
		"log_level = DEBUG\n"
		"control_socket = /run/mailmesh.sock\n"
		"user = vmail\n"
		"group = mail\n"
		"cluster_psk = psk.key\n"
		"push_fanout = 3\n"
		"gc_grace = 90m\n"
		"gc_max = 2h\n"
		"max_skew = 250ms\n"
		"file_cache = 1000000\n"
		"state_max_size = 64G\n"
		"quota_ignore = Trash, Deleted Items ,Junk\n"
		"\n";
	assert_int_equal(parse(text, &cfg, err, sizeof err), 0);
	assert_string_equal(cfg.name, "mx-2.example");
	assert_string_equal(cfg.listen_host, "::");
	assert_int_equal(cfg.listen_port, 4400);
	assert_string_equal(cfg.private_key_path, "/abs/private.key");
	assert_string_equal(cfg.peers_path, "/etc/mm/../shared/peers");
	assert_string_equal(cfg.mail_location, "maildir:/etc/mm/mail/%d/%n/Maildir:INDEX=/var/idx/%u");
	assert_string_equal(cfg.state_dir, "/etc/mm/state");
	assert_int_equal(cfg.gossip_interval_ms, 1500);
	assert_int_equal(cfg.log_level, MM_LOG_DEBUG);
	assert_string_equal(cfg.control_socket, "/run/mailmesh.sock");
	assert_string_equal(cfg.user, "vmail");
	assert_string_equal(cfg.group, "mail");
	assert_true(cfg.drop_privileges);
	assert_string_equal(cfg.cluster_psk_path, "/etc/mm/psk.key");
	assert_int_equal(cfg.push_fanout, 3);
	assert_true(cfg.gc_grace_ms == 90ULL * 60 * 1000);
	assert_true(cfg.gc_max_ms == 2ULL * 3600 * 1000);
	assert_true(cfg.max_skew_ms == 250);
	assert_int_equal(cfg.file_cache, 1000000);
	assert_true(cfg.state_max_bytes == 64ULL << 30);
	assert_string_equal(cfg.quota_ignore, "Trash, Deleted Items ,Junk");
	mm_config_free(&cfg);

	/* control_socket follows state_dir by default; relative config path gets the cwd. */
	char *cwd = getcwd(NULL, 0);
	char want[4200];
	assert_int_equal(mm_config_parse("sub/x.conf", REQUIRED "state_dir = st\n",
	                                 strlen(REQUIRED "state_dir = st\n"), &cfg, err, sizeof err), 0);
	snprintf(want, sizeof want, "%s/sub/st/control.sock", strcmp(cwd, "/") ? cwd : "");
	assert_string_equal(cfg.control_socket, want);
	free(cwd);
	mm_config_free(&cfg);
}

struct bad_case {
	const char *text;
	const char *where; /* "FILE:LINE: " the message must start with */
	const char *what;  /* substring of the message */
};

static void test_errors_name_the_line(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
		{REQUIRED "colour = blue\n", "/etc/mm/mailmesh.conf:5: ", "unknown key 'colour'"},
		{"# x\n" REQUIRED "name = n2\n", "/etc/mm/mailmesh.conf:6: ", "'name' is set twice (first on line 2)"},
		{REQUIRED "state_dir =\n", "/etc/mm/mailmesh.conf:5: ", "'state_dir' has no value"},
		{"name = a b\n", "/etc/mm/mailmesh.conf:1: ", "bad name 'a b'"},
		{"name = n/1\n", "/etc/mm/mailmesh.conf:1: ", "bad name"},
		{"listen = 4000\n", "/etc/mm/mailmesh.conf:1: ", "bad listen address '4000'"},
		{"listen = ::1:4000\n", "/etc/mm/mailmesh.conf:1: ", "bad listen address '::1:4000'"},
		{"listen = [::1]:99999\n", "/etc/mm/mailmesh.conf:1: ", "bad listen address"},
		/* a host name is fine in the peers file, but the daemon cannot bind one */
		{"listen = localhost:4000\n", "/etc/mm/mailmesh.conf:1: ", "bad listen address 'localhost:4000'"},
		{"listen = mx1.example.org:4000\n", "/etc/mm/mailmesh.conf:1: ", "numeric IP address"},
		{REQUIRED "gossip_interval = fast\n", "/etc/mm/mailmesh.conf:5: ", "gossip_interval: bad duration 'fast'"},
		{REQUIRED "gossip_interval = 0\n", "/etc/mm/mailmesh.conf:5: ", "bad duration"},
		{REQUIRED "gossip_interval = 2h\n", "/etc/mm/mailmesh.conf:5: ", "bad duration"},
		{REQUIRED "gc_grace = 30 d\n", "/etc/mm/mailmesh.conf:5: ", "gc_grace: bad duration"},
		{REQUIRED "gc_grace = 30w\n", "/etc/mm/mailmesh.conf:5: ", "bad duration"},
		{REQUIRED "gc_grace = -1\n", "/etc/mm/mailmesh.conf:5: ", "bad duration"},
		{REQUIRED "gc_max = 1x\n", "/etc/mm/mailmesh.conf:5: ", "gc_max: bad duration"},
		{REQUIRED "gc_grace = 10d\ngc_max = 9d\n", "/etc/mm/mailmesh.conf:6: ",
		 "gc_max (777600s) is shorter than gc_grace (864000s)"},
		{REQUIRED "max_skew = 99999999999999999999999\n", "/etc/mm/mailmesh.conf:5: ", "max_skew: bad duration"},
		{REQUIRED "log_level = loud\n", "/etc/mm/mailmesh.conf:5: ", "bad log_level 'loud'"},
		{REQUIRED "push_fanout = -1\n", "/etc/mm/mailmesh.conf:5: ", "bad push_fanout"},
		{REQUIRED "push_fanout = 3x\n", "/etc/mm/mailmesh.conf:5: ", "bad push_fanout"},
		{REQUIRED "push_fanout = 100000\n", "/etc/mm/mailmesh.conf:5: ", "bad push_fanout"},
		{REQUIRED "file_cache = lots\n", "/etc/mm/mailmesh.conf:5: ", "bad file_cache 'lots'"},
		{REQUIRED "quota_ignore = Trash, .Junk\n", "/etc/mm/mailmesh.conf:5: ", "'.Junk' is not a folder name"},
		{REQUIRED "quota_ignore = Trash,,Junk\n", "/etc/mm/mailmesh.conf:5: ", "'' is not a folder name"},
		{REQUIRED "quota_ignore = Archive/2024\n", "/etc/mm/mailmesh.conf:5: ", "bad quota_ignore"},
		{REQUIRED "file_cache = 2000000000\n", "/etc/mm/mailmesh.conf:5: ", "bad file_cache"},
		{REQUIRED "state_max_size = 1m\n", "/etc/mm/mailmesh.conf:5: ", "bad state_max_size '1m'"},
		{REQUIRED "state_max_size = 16gb\n", "/etc/mm/mailmesh.conf:5: ", "bad state_max_size"},
		{REQUIRED "state_max_size = 2000t\n", "/etc/mm/mailmesh.conf:5: ", "bad state_max_size"},
		{REQUIRED "state_max_size = 99999999999999999999\n", "/etc/mm/mailmesh.conf:5: ", "bad state_max_size"},
		{REQUIRED "state_max_size = -1g\n", "/etc/mm/mailmesh.conf:5: ", "bad state_max_size"},
		{REQUIRED "mail_location = /var/mail/%d\n", "/etc/mm/mailmesh.conf:5: ", "must contain %n or %u"},
		{REQUIRED "mail_location = /var/mail/%h/%n\n", "/etc/mm/mailmesh.conf:5: ", "unknown variable '%h'"},
		{REQUIRED "mail_location = /var/mail/%Lh/%n\n", "/etc/mm/mailmesh.conf:5: ", "unknown variable '%L'"},
		{REQUIRED "mail_location = /var/mail/%n/%\n", "/etc/mm/mailmesh.conf:5: ", "unknown variable"},
		{REQUIRED "mail_location = maildir:\n", "/etc/mm/mailmesh.conf:5: ", "has no path"},
		{REQUIRED "mail_location = /var/mail/%d/%n:CONTROL=/var/ctl/%u\n", "/etc/mm/mailmesh.conf:5: ", "CONTROL= is not supported"},
		/* Dovecot's most common settings, which mailmesh cannot take: said as such, not as
		 * a template without %n */
		{REQUIRED "mail_location = maildir:~/Maildir\n", "/etc/mm/mailmesh.conf:5: ", "'~' (the user's home"},
		{REQUIRED "mail_location = ~/Maildir\n", "/etc/mm/mailmesh.conf:5: ", "write the home out"},
		{REQUIRED "mail_location = mdbox:/var/vmail/%d/%n\n", "/etc/mm/mailmesh.conf:5: ", "'mdbox' mail is not supported"},
		{REQUIRED "mail_location = sdbox:~/dbox\n", "/etc/mm/mailmesh.conf:5: ", "'sdbox' mail is not supported"},
		{REQUIRED "mail_location = mbox:~/mail:INBOX=/var/mail/%u\n", "/etc/mm/mailmesh.conf:5: ", "'mbox' mail is not supported"},
		{"[main]\n" REQUIRED, "/etc/mm/mailmesh.conf:1: ", "sections like [...] are not used"},
		{REQUIRED "just words\n", "/etc/mm/mailmesh.conf:5: ", "expected `key = value`"},
		{REQUIRED "gossip_interval: 5\n", "/etc/mm/mailmesh.conf:5: ", "expected `key = value`"},
		{REQUIRED "= 5\n", "/etc/mm/mailmesh.conf:5: ", "unknown key ''"},
		{"name = n1\n\nlisten = 127.0.0.1:4000\n", "/etc/mm/mailmesh.conf: ", "missing `private_key = ...`"},
		{"listen = 127.0.0.1:4000\n", "/etc/mm/mailmesh.conf: ", "missing `name = ...`"},
		{REQUIRED "control_socket = /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
		 "/etc/mm/mailmesh.conf:5: ", "control_socket path is longer than"},
		/* The first error wins, whatever comes after it. */
		{"name = n1\nfoo = 1\nbar\nlisten = x\n", "/etc/mm/mailmesh.conf:2: ", "unknown key 'foo'"},
		{"name = n1\nbar\nfoo = 1\n", "/etc/mm/mailmesh.conf:2: ", "expected `key = value`"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct mm_config cfg;
		char err[MM_CONFIG_ERR_MAX];
		memset(&cfg, 0x5a, sizeof cfg);
		int rc = parse(cases[i].text, &cfg, err, sizeof err);
		if (rc != -EINVAL || strncmp(err, cases[i].where, strlen(cases[i].where)) != 0 ||
		    strstr(err, cases[i].what) == NULL)
			print_error("case %zu: rc %d, err '%s'\n", i, rc, err);
		assert_int_equal(rc, -EINVAL);
		assert_true(strncmp(err, cases[i].where, strlen(cases[i].where)) == 0);
		assert_non_null(strstr(err, cases[i].what));
		assert_null(cfg.name); /* zeroed on failure */
		assert_null(cfg.path);
	}
}

static void test_odd_bytes(void **state)
{
	(void)state;
	struct mm_config cfg;
	char err[MM_CONFIG_ERR_MAX];
	const char text[] = "name = n1\nlisten = 1.2.3.4:5\0\nprivate_key = k\n";
	assert_int_equal(mm_config_parse("c", text, sizeof text - 1, &cfg, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, ":2: unexpected NUL byte"));

	/* A line longer than inih's buffer is an error, not silently cut in two. */
	char big[600];
	int n = snprintf(big, sizeof big, REQUIRED "state_dir = /");
	memset(big + n, 's', 400);
	big[n + 400] = '\0';
	assert_int_equal(parse(big, &cfg, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "mailmesh.conf:5: line too long"));

	/* No trailing newline is fine. */
	assert_int_equal(parse("name = n1\nlisten = 10.0.0.1:1\nprivate_key = k\npeers = p", &cfg, err, sizeof err), 0);
	assert_string_equal(cfg.peers_path, "/etc/mm/p");
	mm_config_free(&cfg);
}

static void test_duration_parse(void **state)
{
	(void)state;
	uint64_t ms;
	assert_int_equal(mm_duration_parse("30d", 1000, &ms), 0);
	assert_true(ms == 30ULL * 86400 * 1000);
	assert_int_equal(mm_duration_parse("12h", 1000, &ms), 0);
	assert_true(ms == 12ULL * 3600 * 1000);
	assert_int_equal(mm_duration_parse("5m", 1000, &ms), 0);
	assert_true(ms == 300000);
	assert_int_equal(mm_duration_parse("7s", 1, &ms), 0);
	assert_true(ms == 7000);
	assert_int_equal(mm_duration_parse("250ms", 1000, &ms), 0);
	assert_true(ms == 250);
	assert_int_equal(mm_duration_parse("42", 1000, &ms), 0);
	assert_true(ms == 42000);
	assert_int_equal(mm_duration_parse("42", 1, &ms), 0);
	assert_true(ms == 42);
	assert_int_equal(mm_duration_parse("", 1, &ms), -EINVAL);
	assert_int_equal(mm_duration_parse("s", 1, &ms), -EINVAL);
	assert_int_equal(mm_duration_parse("-1", 1, &ms), -EINVAL);
	assert_int_equal(mm_duration_parse("1x", 1, &ms), -EINVAL);
	assert_int_equal(mm_duration_parse("1 s", 1, &ms), -EINVAL);
	assert_int_equal(mm_duration_parse("18446744073709551615", 1, &ms), 0);
	assert_int_equal(mm_duration_parse("18446744073709551616", 1, &ms), -ERANGE);
	assert_int_equal(mm_duration_parse("18446744073709551615d", 1, &ms), -ERANGE);
}

/* ---- loading files ------------------------------------------------------------ */

struct tmp {
	char dir[64];
	char pub_b64[MM_KEY_B64_LEN + 1];
	uint8_t priv[32], pub[32];
};

static void write_file(const char *dir, const char *name, const char *text, mode_t mode)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	unlink(path);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static int setup_tmp(void **state)
{
	struct tmp *t = calloc(1, sizeof *t);
	char err[256], path[256];
	if (t == NULL || sodium_init() < 0)
		return -1;
	strcpy(t->dir, "/tmp/mm-test-config-XXXXXX");
	if (mkdtemp(t->dir) == NULL)
		return -1;
	for (int i = 0; i < 32; i++)
		t->priv[i] = (uint8_t)(i * 7 + 1);
	mm_key_generate(t->priv, t->priv);
	if (mm_key_public(t->priv, t->pub) != 0)
		return -1;
	mm_key_to_base64(t->pub, t->pub_b64);
	snprintf(path, sizeof path, "%s/private.key", t->dir);
	if (mm_keyfile_write(path, t->priv, false, err, sizeof err) != 0)
		return -1;
	*state = t;
	return 0;
}

static int teardown_tmp(void **state)
{
	struct tmp *t = *state;
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
	int rc = system(cmd);
	free(t);
	return rc == 0 ? 0 : -1;
}

static int load(struct tmp *t, struct mm_config *cfg, char *err, size_t errlen)
{
	char path[256];
	snprintf(path, sizeof path, "%s/mailmesh.conf", t->dir);
	return mm_config_load(path, cfg, err, errlen);
}

static void test_load_good(void **state)
{
	struct tmp *t = *state;
	struct mm_config cfg;
	char err[MM_CONFIG_ERR_MAX], peers[512];
	snprintf(peers, sizeof peers,
	         "other 10.0.0.2:4000 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
	         "me 10.0.0.1:4000 %s\n", t->pub_b64);
	write_file(t->dir, "peers", peers, 0644);
	write_file(t->dir, "mailmesh.conf",
	           "name = me\nlisten = 0.0.0.0:4000\nprivate_key = private.key\npeers = peers\n"
	           "mail_location = mail/%d/%n\nstate_dir = state\nuser = root\n", 0644);
	int rc = load(t, &cfg, err, sizeof err);
	if (rc != 0)
		print_error("%s\n", err);
	assert_int_equal(rc, 0);
	assert_memory_equal(cfg.private_key, t->priv, 32);
	assert_memory_equal(cfg.public_key, t->pub, 32);
	assert_true(cfg.node_id == mm_node_id(t->pub));
	assert_non_null(cfg.peers);
	assert_int_equal(cfg.peers->n, 2);
	assert_non_null(cfg.self);
	assert_string_equal(cfg.self->name, "me");
	assert_int_equal(cfg.self->line, 2);
	assert_false(cfg.has_psk);
	assert_int_equal(cfg.uid, 0);
	assert_int_equal(cfg.gid, 0);
	char want[256];
	snprintf(want, sizeof want, "%s/mail/%%d/%%n", t->dir);
	assert_string_equal(cfg.mail_location, want);
	mm_config_free(&cfg);
	assert_null(cfg.peers);

	/* Our line is not required in the peers file; a PSK is loaded when named. */
	write_file(t->dir, "peers", "other 10.0.0.2:4000 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 0644);
	write_file(t->dir, "psk", "  BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=\n\n", 0600);
	write_file(t->dir, "mailmesh.conf",
	           "name = me\nlisten = 0.0.0.0:4000\nprivate_key = private.key\npeers = peers\n"
	           "cluster_psk = psk\n", 0600);
	rc = load(t, &cfg, err, sizeof err);
	if (rc != 0)
		print_error("%s\n", err);
	assert_int_equal(rc, 0);
	assert_null(cfg.self);
	assert_true(cfg.has_psk);
	assert_int_equal(cfg.psk[0], 0x04);
	mm_config_free(&cfg);
}

static void test_load_errors(void **state)
{
	struct tmp *t = *state;
	struct mm_config cfg;
	char err[MM_CONFIG_ERR_MAX], text[512], want[600];
	const char *conf = "name = me\nlisten = 0.0.0.0:4000\nprivate_key = private.key\npeers = peers\n";

	/* Config file missing. */
	memset(&cfg, 0x5a, sizeof cfg);
	assert_int_equal(load(t, &cfg, err, sizeof err), -ENOENT);
	assert_non_null(strstr(err, "mailmesh.conf: cannot open"));
	assert_null(cfg.name);

	/* Peers file with a bad line: names the peers file and its line. */
	write_file(t->dir, "mailmesh.conf", conf, 0644);
	write_file(t->dir, "peers", "# c\nme 10.0.0.1 x\n", 0644);
	assert_int_equal(load(t, &cfg, err, sizeof err), -EINVAL);
	snprintf(want, sizeof want, "%s/peers:2: ", t->dir);
	assert_true(strncmp(err, want, strlen(want)) == 0);

	/* Our name with another key. */
	write_file(t->dir, "peers", "me 10.0.0.1:4000 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 0644);
	assert_int_equal(load(t, &cfg, err, sizeof err), -EINVAL);
	snprintf(want, sizeof want, "%s/peers:1: peer 'me' has a different public key", t->dir);
	assert_true(strncmp(err, want, strlen(want)) == 0);
	assert_non_null(strstr(err, t->pub_b64));

	/* Our key under another name. */
	snprintf(text, sizeof text, "x 10.0.0.9:1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nyou 10.0.0.1:4000 %s\n", t->pub_b64);
	write_file(t->dir, "peers", text, 0644);
	assert_int_equal(load(t, &cfg, err, sizeof err), -EINVAL);
	snprintf(want, sizeof want, "%s/peers:2: this node's public key is listed as 'you'", t->dir);
	assert_true(strncmp(err, want, strlen(want)) == 0);

	/* Peers file missing: blames the config line that names it. */
	snprintf(text, sizeof text, "%s/peers", t->dir);
	unlink(text);
	assert_int_equal(load(t, &cfg, err, sizeof err), -ENOENT);
	assert_non_null(strstr(err, "(peers, set on "));
	assert_non_null(strstr(err, "mailmesh.conf:4)"));

	/* Private key readable by others: refused with the fix. */
	write_file(t->dir, "peers", "", 0644);
	snprintf(text, sizeof text, "%s/private.key", t->dir);
	assert_int_equal(chmod(text, 0640), 0);
	assert_int_equal(load(t, &cfg, err, sizeof err), -EPERM);
	snprintf(want, sizeof want, "fix with: chmod 600 %s", text);
	assert_non_null(strstr(err, want));
	assert_non_null(strstr(err, "mode 0640"));
	assert_non_null(strstr(err, "(private_key, set on "));
	assert_int_equal(chmod(text, 0600), 0);
	assert_int_equal(load(t, &cfg, err, sizeof err), 0);
	mm_config_free(&cfg);

	/* A PSK file that is not a key. */
	write_file(t->dir, "psk", "not a key\n", 0600);
	write_file(t->dir, "mailmesh.conf",
	           "name = me\nlisten = 0.0.0.0:4000\nprivate_key = private.key\npeers = peers\n"
	           "cluster_psk = psk\n", 0644);
	assert_int_equal(load(t, &cfg, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "psk: not a key"));
	assert_non_null(strstr(err, "(cluster_psk, set on "));

	/* Unknown user and group name their lines. */
	write_file(t->dir, "mailmesh.conf",
	           "name = me\nlisten = 0.0.0.0:4000\nprivate_key = private.key\npeers = peers\n"
	           "user = no-such-user-mm\n", 0644);
	assert_int_equal(load(t, &cfg, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "mailmesh.conf:5: unknown user 'no-such-user-mm'"));
	write_file(t->dir, "mailmesh.conf",
	           "name = me\nlisten = 0.0.0.0:4000\nprivate_key = private.key\npeers = peers\n"
	           "# g\ngroup = no-such-group-mm\n", 0644);
	assert_int_equal(load(t, &cfg, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "mailmesh.conf:6: unknown group 'no-such-group-mm'"));
}

/* The peers file read again on SIGHUP (mm_config_peers_load): the same checks as at
 * start, and a failure leaves the loaded config and the caller's list alone. */
static void test_peers_reload(void **state)
{
	struct tmp *t = *state;
	struct mm_config cfg;
	char err[MM_CONFIG_ERR_MAX], peers[512], path[300];
	snprintf(peers, sizeof peers, "me 10.0.0.1:4000 %s\n", t->pub_b64);
	write_file(t->dir, "peers", peers, 0644);
	write_file(t->dir, "mailmesh.conf",
	           "name = me\nlisten = 0.0.0.0:4000\nprivate_key = private.key\npeers = peers\n", 0644);
	assert_int_equal(load(t, &cfg, err, sizeof err), 0);
	assert_int_equal(cfg.peers->n, 1);

	/* a server added */
	snprintf(peers, sizeof peers, "me 10.0.0.1:4000 %s\nnew 10.0.0.3:4001 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
	         t->pub_b64);
	write_file(t->dir, "peers", peers, 0644);
	struct mm_peers *np = NULL;
	const struct mm_peer *self = NULL;
	assert_int_equal(mm_config_peers_load(&cfg, &np, &self, err, sizeof err), 0);
	assert_int_equal(np->n, 2);
	assert_non_null(self);
	assert_string_equal(self->name, "me");
	assert_string_equal(mm_peers_find_name(np, "new")->host, "10.0.0.3");
	assert_int_equal(cfg.peers->n, 1); /* (the loaded config is not touched) */
	mm_peers_free(&np);

	/* a bad line: the error names the file and line, nothing is returned */
	write_file(t->dir, "peers", "# c\nnew 10.0.0.3:4001 not-a-key\n", 0644);
	np = (struct mm_peers *)&cfg; /* (must stay as it is) */
	assert_true(mm_config_peers_load(&cfg, &np, &self, err, sizeof err) < 0);
	assert_ptr_equal(np, (struct mm_peers *)&cfg);
	snprintf(path, sizeof path, "%s/peers:2:", t->dir);
	assert_non_null(strstr(err, path));

	/* our key under another name, and our name with another key */
	snprintf(peers, sizeof peers, "other 10.0.0.1:4000 %s\n", t->pub_b64);
	write_file(t->dir, "peers", peers, 0644);
	assert_int_equal(mm_config_peers_load(&cfg, &np, &self, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "make the two names the same"));
	write_file(t->dir, "peers", "me 10.0.0.1:4000 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 0644);
	assert_int_equal(mm_config_peers_load(&cfg, &np, &self, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "has a different public key"));

	/* mailmesh.conf read again: the same settings, then one a restart takes and one a
	 * reload takes */
	struct mm_config nc;
	char keys[128];
	assert_int_equal(mm_config_reread(&cfg, &nc, err, sizeof err), 0);
	assert_int_equal(mm_config_restart_keys(&cfg, &nc, keys, sizeof keys), 0);
	assert_string_equal(keys, "");
	mm_config_free(&nc);
	write_file(t->dir, "mailmesh.conf",
	           "name = me\nlisten = 0.0.0.0:4001\nprivate_key = private.key\npeers = peers\n"
	           "log_level = debug\ngossip_interval = 1s\n", 0644);
	assert_int_equal(mm_config_reread(&cfg, &nc, err, sizeof err), 0);
	assert_int_equal(nc.log_level, MM_LOG_DEBUG);
	assert_int_equal(mm_config_restart_keys(&cfg, &nc, keys, sizeof keys), 2);
	assert_string_equal(keys, "listen, gossip_interval");
	assert_int_equal(mm_config_restart_keys(&cfg, &nc, keys, 10), 2); /* (cut to fit) */
	assert_string_equal(keys, "listen, g");
	mm_config_free(&nc);
	write_file(t->dir, "mailmesh.conf", "name = me\nbogus = 1\n", 0644);
	assert_int_equal(mm_config_reread(&cfg, &nc, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "mailmesh.conf:2:"));
	mm_config_free(&nc);

	/* a file that is gone */
	snprintf(path, sizeof path, "%s/peers", t->dir);
	unlink(path);
	assert_int_equal(mm_config_peers_load(&cfg, &np, &self, err, sizeof err), -ENOENT);
	assert_non_null(strstr(err, path));
	assert_ptr_equal(np, (struct mm_peers *)&cfg);
	mm_config_free(&cfg);
}

static void test_keyfile(void **state)
{
	struct tmp *t = *state;
	char path[256], err[512];
	uint8_t key[32], got[32];
	struct stat st;

	memset(key, 0x42, sizeof key);
	snprintf(path, sizeof path, "%s/k2", t->dir);
	mode_t old = umask(0); /* the mode must not depend on the umask */
	assert_int_equal(mm_keyfile_write(path, key, false, err, sizeof err), 0);
	umask(old);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(mm_keyfile_load(path, got, err, sizeof err), 0);
	assert_memory_equal(got, key, 32);

	/* Never overwritten without force. */
	memset(key, 0x43, sizeof key);
	assert_int_equal(mm_keyfile_write(path, key, false, err, sizeof err), -EEXIST);
	assert_non_null(strstr(err, "--force"));
	assert_int_equal(mm_keyfile_load(path, got, err, sizeof err), 0);
	assert_int_equal(got[0], 0x42);
	assert_int_equal(mm_keyfile_write(path, key, true, err, sizeof err), 0);
	assert_int_equal(mm_keyfile_load(path, got, err, sizeof err), 0);
	assert_int_equal(got[0], 0x43);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);

	/* Permission check: any group/other bit is refused. */
	assert_int_equal(chmod(path, 0604), 0);
	assert_int_equal(mm_keyfile_load(path, got, err, sizeof err), -EPERM);
	assert_non_null(strstr(err, "chmod 600"));
	assert_int_equal(got[0], 0); /* zeroed on failure */
	assert_int_equal(chmod(path, 0400), 0);
	assert_int_equal(mm_keyfile_load(path, got, err, sizeof err), 0);

	/* Not a key; a directory; missing. */
	write_file(t->dir, "k3", "AAAA\n", 0600);
	snprintf(path, sizeof path, "%s/k3", t->dir);
	assert_int_equal(mm_keyfile_load(path, got, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "not a key"));
	write_file(t->dir, "k3", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 0600);
	assert_int_equal(mm_keyfile_load(path, got, err, sizeof err), -EINVAL);
	assert_int_equal(mm_keyfile_load(t->dir, got, err, sizeof err), -EINVAL);
	snprintf(path, sizeof path, "%s/missing", t->dir);
	assert_int_equal(mm_keyfile_load(path, got, err, sizeof err), -ENOENT);
	snprintf(path, sizeof path, "%s/no-dir/k", t->dir);
	assert_int_equal(mm_keyfile_write(path, key, false, err, sizeof err), -ENOENT);
}

/* ---- log ------------------------------------------------------------------------ */

static void test_log(void **state)
{
	(void)state;
	enum mm_log_level l;
	assert_int_equal(mm_log_level_parse("error", &l), 0);
	assert_int_equal(l, MM_LOG_ERROR);
	assert_int_equal(mm_log_level_parse("Warning", &l), 0);
	assert_int_equal(l, MM_LOG_WARN);
	assert_int_equal(mm_log_level_parse("debug", &l), 0);
	assert_int_equal(l, MM_LOG_DEBUG);
	assert_int_equal(mm_log_level_parse("verbose", &l), -EINVAL);
	assert_string_equal(mm_log_level_name(MM_LOG_INFO), "info");
	assert_string_equal(mm_log_level_name((enum mm_log_level)9), "?");

	int fds[2];
	assert_int_equal(pipe(fds), 0);
	mm_log_set_fd(fds[1]);
	mm_log_set_level(MM_LOG_WARN);
	assert_false(mm_log_enabled(MM_LOG_INFO));
	assert_true(mm_log_enabled(MM_LOG_ERROR));
	mm_log(MM_LOG_INFO, "event=hidden");
	errno = 1234;
	mm_log(MM_LOG_WARN, "event=connected peer=%s user=%s", "node2", "ex.org/bob\nfake");
	assert_int_equal(errno, 1234);
	mm_log_set_level(MM_LOG_DEBUG);
	mm_log(MM_LOG_DEBUG, "event=long x=%0*d", 2000, 7);
	mm_log_set_fd(-1);
	mm_log_set_level(MM_LOG_INFO);
	close(fds[1]);

	char buf[4096];
	size_t n = 0;
	ssize_t r;
	while ((r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0)
		n += (size_t)r;
	close(fds[0]);
	buf[n] = '\0';
	char *nl = strchr(buf, '\n');
	assert_non_null(nl);
	*nl = '\0';
	/* 2026-11-29T05:47:19.123Z warn event=... */
	assert_int_equal(strlen(buf) > 25, 1);
	assert_int_equal(buf[4], '-');
	assert_int_equal(buf[10], 'T');
	assert_int_equal(buf[19], '.');
	assert_int_equal(buf[23], 'Z');
	assert_string_equal(buf + 24, " warn event=connected peer=node2 user=ex.org/bob?fake");
	char *second = nl + 1;
	nl = strchr(second, '\n');
	assert_non_null(nl);
	assert_int_equal((size_t)(nl - second), MM_LOG_LINE_MAX);
	assert_memory_equal(nl - 3, "...", 3);
	assert_non_null(strstr(second, " debug event=long x=000"));
	assert_string_equal(nl + 1, "");
}

/* ---- the shipped examples ---------------------------------------------------------- */

static char *slurp(const char *rel, size_t *len_r)
{
	const char *top = getenv("MAILMESH_TOP");
	char path[1024];
	snprintf(path, sizeof path, "%s/%s", top ? top : ".", rel);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		print_error("cannot open %s (run from the top of the tree or set MAILMESH_TOP)\n", path);
	assert_non_null(f);
	char *buf = malloc(65536);
	assert_non_null(buf);
	*len_r = fread(buf, 1, 65535, f);
	buf[*len_r] = '\0';
	fclose(f);
	return buf;
}

static void test_examples_parse(void **state)
{
	(void)state;
	struct mm_config cfg;
	struct mm_peers *p = NULL;
	char err[MM_CONFIG_ERR_MAX];
	size_t len;
	char *text = slurp("etc/mailmesh.conf.example", &len);
	int rc = mm_config_parse("/etc/mailmesh/mailmesh.conf", text, len, &cfg, err, sizeof err);
	if (rc != 0)
		print_error("%s\n", err);
	assert_int_equal(rc, 0);
	assert_string_equal(cfg.name, "mx1");
	assert_string_equal(cfg.private_key_path, "/etc/mailmesh/private.key");
	assert_string_equal(cfg.user, "vmail"); /* root's Maildirs are Dovecot's trouble */
	assert_string_equal(cfg.mail_location, MM_DEFAULT_MAIL_LOCATION);
	assert_int_equal(cfg.gossip_interval_ms, MM_DEFAULT_GOSSIP_INTERVAL_MS);
	assert_true(cfg.gc_grace_ms == MM_DEFAULT_GC_GRACE_MS);
	assert_true(cfg.max_skew_ms == MM_DEFAULT_MAX_SKEW_MS);
	mm_config_free(&cfg);
	free(text);

	text = slurp("etc/peers.example", &len);
	rc = mm_peers_parse(text, len, "peers.example", &p, err, sizeof err);
	if (rc != 0)
		print_error("%s\n", err);
	assert_int_equal(rc, 0);
	assert_int_equal(p->n, 3);
	assert_string_equal(p->v[1].host, "2001:db8::20");
	assert_string_equal(p->v[2].host, "mx3.example.org");
	mm_peers_free(&p);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_lowercase_vars),
		cmocka_unit_test(test_errors_name_the_line),
		cmocka_unit_test(test_odd_bytes),
		cmocka_unit_test(test_duration_parse),
		cmocka_unit_test_setup_teardown(test_load_good, setup_tmp, teardown_tmp),
		cmocka_unit_test_setup_teardown(test_load_errors, setup_tmp, teardown_tmp),
		cmocka_unit_test_setup_teardown(test_peers_reload, setup_tmp, teardown_tmp),
		cmocka_unit_test_setup_teardown(test_keyfile, setup_tmp, teardown_tmp),
		cmocka_unit_test(test_log),
		cmocka_unit_test(test_examples_parse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
