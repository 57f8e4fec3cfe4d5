/*
 * config.c — loading the daemon's configuration (see config.h).  The file is read into
 * memory and fed to inih line by line through our own reader, which counts lines (so
 * every error names its line), rejects what inih would silently accept or misread
 * (sections, lines over inih's limit, `key: value`, indented continuation lines), and
 * cuts `#` comments.  Then the key files and the peers file are loaded and checked
 * against each other.
 */
#include "node/config.h"
#include "node/mailloc.h"
#include "node/maildir.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <ini.h>
#include <sodium.h>

#include "node/keyfile.h"
#include "node/store.h"
#include "proto/channel.h"

#define CONFIG_FILE_MAX (1 << 20) /* config and peers files larger than this are refused */

enum key_id {
	K_NAME, K_LISTEN, K_PRIVATE_KEY, K_PEERS, K_MAIL_LOCATION, K_STATE_DIR,
	K_GOSSIP_INTERVAL, K_LOG_LEVEL, K_CONTROL_SOCKET, K_USER, K_GROUP, K_CLUSTER_PSK,
	K_PUSH_FANOUT, K_GC_GRACE, K_GC_MAX, K_MAX_SKEW, K_IMAP_UIDS, K_FILE_CACHE, K_QUOTA_IGNORE, K_STATE_MAX_SIZE, K_COUNT
};

static const char *const key_names[K_COUNT] = {
	"name", "listen", "private_key", "peers", "mail_location", "state_dir",
	"gossip_interval", "log_level", "control_socket", "user", "group", "cluster_psk",
	"push_fanout", "gc_grace", "gc_max", "max_skew", "imap_uids", "file_cache", "quota_ignore",
	"state_max_size",
};

struct parse_ctx {
	const char *path;   /* config file name for messages (absolute) */
	char *dir;          /* its directory: base of relative paths */
	const char *text;
	size_t len, pos;
	unsigned line;      /* lines handed to inih so far */
	unsigned err_line;  /* first line with an error we reported (0 = none) */
	int rc;             /* first error code */
	char *err;
	size_t errlen;
	unsigned seen[K_COUNT]; /* line where each key was set (0 = not set) */
	struct mm_config *cfg;
};

static void vseterr(char *err, size_t errlen, const char *fmt, va_list ap)
{
	if (err != NULL && errlen > 0)
		vsnprintf(err, errlen, fmt, ap);
}

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vseterr(err, errlen, fmt, ap);
	va_end(ap);
}

/* Records the first error, at the current line: "FILE:LINE: ...". */
static void line_err(struct parse_ctx *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void line_err(struct parse_ctx *c, int rc, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (c->err_line != 0)
		return;
	c->err_line = c->line;
	c->rc = rc;
	if (c->err == NULL || c->errlen == 0)
		return;
	n = snprintf(c->err, c->errlen, "%s:%u: ", c->path, c->line);
	if (n < 0 || (size_t)n >= c->errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* inih's line source.  Hands inih one cleaned line per call: leading blanks and `#`
 * comments cut, problems recorded as errors (the line is then given as an empty
 * comment so inih does not report it again). */
static char *reader(char *str, int num, void *stream)
{
	struct parse_ctx *c = stream;
	const char *s, *nl, *eq, *colon;
	size_t len, a = 0;

	if (c->pos >= c->len || num < 3)
		return NULL;
	s = c->text + c->pos;
	nl = memchr(s, '\n', c->len - c->pos);
	len = nl != NULL ? (size_t)(nl - s) : c->len - c->pos;
	c->pos += len + (nl != NULL ? 1 : 0);
	c->line++;

	if (memchr(s, '\0', len) != NULL) {
		line_err(c, -EINVAL, "unexpected NUL byte; the config file is plain text");
		goto skip;
	}
	/* A UTF-8 byte order mark on line 1 is harmless: skip it. */
	if (c->line == 1 && len >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
		a = 3;
	while (a < len && is_blank(s[a]))
		a++;
	for (size_t i = a; i < len; i++) {
		if (s[i] == '#' && (i == a || is_blank(s[i - 1]))) {
			len = i;
			break;
		}
	}
	while (len > a && is_blank(s[len - 1]))
		len--;
	if (len == a)
		goto skip;
	if (s[a] == ';') /* inih's own comment character: accept it too */
		goto skip;
	if (s[a] == '[') {
		line_err(c, -EINVAL, "sections like [...] are not used: write `key = value` lines only");
		goto skip;
	}
	eq = memchr(s + a, '=', len - a);
	colon = memchr(s + a, ':', len - a);
	if (eq == NULL || (colon != NULL && colon < eq)) {
		line_err(c, -EINVAL, "expected `key = value`");
		goto skip;
	}
	if (len - a > (size_t)num - 2) {
		line_err(c, -EINVAL, "line too long (at most %d characters)", num - 2);
		goto skip;
	}
	memcpy(str, s + a, len - a);
	str[len - a] = '\n';
	str[len - a + 1] = '\0';
	return str;
skip:
	memcpy(str, "#\n", 3);
	return str;
}

/* dir + "/" + value, or a copy of value if it is absolute. */
static char *resolve_path(const char *dir, const char *value)
{
	char *out = NULL;

	if (value[0] == '/')
		return strdup(value);
	if (asprintf(&out, "%s/%s", dir, value) < 0)
		return NULL;
	return out;
}

int mm_duration_parse(const char *s, uint64_t default_unit_ms, uint64_t *ms_r)
{
	uint64_t v = 0, unit;
	const char *p = s;

	if (s == NULL || ms_r == NULL || *s < '0' || *s > '9')
		return -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		uint64_t d = (uint64_t)(*p - '0');
		if (v > UINT64_MAX / 10 || (v == UINT64_MAX / 10 && d > UINT64_MAX % 10))
			return -ERANGE;
		v = v * 10 + d;
	}
	if (*p == '\0')
		unit = default_unit_ms;
	else if (!strcmp(p, "ms"))
		unit = 1;
	else if (!strcmp(p, "s"))
		unit = 1000;
	else if (!strcmp(p, "m"))
		unit = 60ULL * 1000;
	else if (!strcmp(p, "h"))
		unit = 3600ULL * 1000;
	else if (!strcmp(p, "d"))
		unit = 24ULL * 3600 * 1000;
	else
		return -EINVAL;
	if (unit != 0 && v > UINT64_MAX / unit)
		return -ERANGE;
	*ms_r = v * unit;
	return 0;
}

static int set_string(struct parse_ctx *c, char **dst, const char *value, bool path)
{
	char *v = path ? resolve_path(c->dir, value) : strdup(value);

	if (v == NULL) {
		line_err(c, -ENOMEM, "out of memory");
		return -ENOMEM;
	}
	free(*dst);
	*dst = v;
	return 0;
}

/* mail_location: "[maildir:]PATH[:OPTIONS]" (Dovecot's syntax; node/mailloc.c checks
 * the options).  PATH may use %d %n %u %% and must name the user; a relative PATH is
 * made absolute against the config file's directory, the rest is kept as written. */
static void set_mail_location(struct parse_ctx *c, const char *value)
{
	const char *v = value, *end;
	bool user = false;
	size_t plen;
	char *pathpart, *abs, *out = NULL;

	if (!strncmp(v, "maildir:", 8))
		v += 8;
	end = strchr(v, ':');
	plen = end != NULL ? (size_t)(end - v) : strlen(v);
	/* Another of Dovecot's mail formats would otherwise be taken for a relative path
	 * ("mdbox") and refused as a template without %n, which hides the reason. */
	static const char *const formats[] = {"mbox", "mdbox", "sdbox", "dbox", "imapc", "pop3c", "obox", "cydir"};
	for (size_t i = 0; end != NULL && i < sizeof formats / sizeof formats[0]; i++)
		if (plen == strlen(formats[i]) && !strncmp(v, formats[i], plen)) {
			line_err(c, -EINVAL,
			         "mail_location: '%s' mail is not supported: mailmesh replicates Maildir only "
			         "(maildir:PATH, or a bare PATH)", formats[i]);
			return;
		}
	if (plen == 0) {
		line_err(c, -EINVAL, "mail_location has no path; e.g. /var/mail/vhosts/%%d/%%n");
		return;
	}
	/* Dovecot's default, maildir:~/Maildir, would otherwise be read as a relative path
	 * "~" and refused for its lack of %n: say what to write instead. */
	if (v[0] == '~') {
		line_err(c, -EINVAL,
		         "mail_location: '~' (the user's home, which Dovecot takes from its userdb) cannot "
		         "be used: mailmesh has no userdb; write the home out with %%d and %%n, e.g. "
		         "/var/vmail/%%d/%%n/Maildir where Dovecot's home is /var/vmail/%%d/%%n");
		return;
	}
	for (size_t i = 0; i < plen; i++) {
		if (v[i] != '%')
			continue;
		i++;
		if (i + 1 < plen && v[i] == 'L' && (v[i + 1] == 'n' || v[i + 1] == 'u' || v[i + 1] == 'd'))
			i++; /* %Ln: lowercased, as the directories are (node/mailloc.c) */
		char ch = i < plen ? v[i] : '\0';
		if (ch == 'n' || ch == 'u') {
			user = true;
		} else if (ch != 'd' && ch != '%') {
			line_err(c, -EINVAL,
			         "mail_location: unknown variable '%%%s'; use %%d (domain), %%n (user "
			         "part), %%u (user@domain), each also as %%Ld, %%Ln, %%Lu, or %%%% for a literal %%",
			         ch ? (char[]){ch, 0} : "");
			return;
		}
	}
	if (!user) {
		line_err(c, -EINVAL,
		         "mail_location must contain %%n or %%u, so each user has its own Maildir "
		         "(e.g. /var/mail/vhosts/%%d/%%n)");
		return;
	}
	pathpart = strndup(v, plen);
	abs = pathpart != NULL ? resolve_path(c->dir, pathpart) : NULL;
	if (abs == NULL || asprintf(&out, "%.*s%s%s", (int)(v - value), value, abs, end ? end : "") < 0) {
		free(pathpart);
		free(abs);
		line_err(c, -ENOMEM, "out of memory");
		return;
	}
	free(pathpart);
	free(abs);
	/* the whole template as the store will take it (its options included) */
	struct mm_mailloc *loc = NULL;
	char why[512];
	if (mm_mailloc_new(&loc, out, why, sizeof why) < 0) {
		line_err(c, -EINVAL, "%s", why);
		free(out);
		return;
	}
	mm_mailloc_free(&loc);
	free(c->cfg->mail_location);
	c->cfg->mail_location = out;
	c->cfg->mail_location_line = c->line;
}

static void set_duration(struct parse_ctx *c, const char *key, const char *value,
                         uint64_t unit_ms, uint64_t min_ms, uint64_t max_ms, uint64_t *dst)
{
	uint64_t ms;
	int rc = mm_duration_parse(value, unit_ms, &ms);

	if (rc != 0 || ms < min_ms || ms > max_ms) {
		line_err(c, -EINVAL,
		         "%s: bad duration '%s'; give a number with an optional unit ms, s, m, h or d "
		         "(a bare number is %s), from %llums to %llums", key, value,
		         unit_ms == 1 ? "milliseconds" : "seconds",
		         (unsigned long long)min_ms, (unsigned long long)max_ms);
		return;
	}
	*dst = ms;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
	struct parse_ctx *c = user;
	struct mm_config *cfg = c->cfg;
	int k;

	if (c->err_line != 0 && c->err_line <= c->line)
		return 1; /* keep only the first error; inih need not count this one */
	if (section != NULL && section[0] != '\0') {
		line_err(c, -EINVAL, "sections are not used: write `key = value` lines only");
		return 0;
	}
	for (k = 0; k < K_COUNT; k++)
		if (!strcmp(name, key_names[k]))
			break;
	if (k == K_COUNT) {
		line_err(c, -EINVAL,
		         "unknown key '%s'; known keys: name, listen, private_key, peers, "
		         "mail_location, state_dir, gossip_interval, log_level, control_socket, "
		         "user, group, cluster_psk, push_fanout, gc_grace, gc_max, max_skew, imap_uids, file_cache, "
		         "quota_ignore, state_max_size (see docs/configuration.md)", name);
		return 0;
	}
	if (c->seen[k] != 0) {
		line_err(c, -EINVAL, "'%s' is set twice (first on line %u); keep one", name, c->seen[k]);
		return 0;
	}
	c->seen[k] = c->line;
	if (value[0] == '\0') {
		line_err(c, -EINVAL, "'%s' has no value; write `%s = VALUE` or remove the line", name, name);
		return 0;
	}
	switch ((enum key_id)k) {
	case K_NAME:
		if (!mm_peer_name_valid(value, strlen(value))) {
			line_err(c, -EINVAL,
			         "bad name '%s': use 1 to %d letters, digits, '.', '_' or '-', as in the "
			         "peers file", value, MM_PEER_NAME_MAX);
			break;
		}
		set_string(c, &cfg->name, value, false);
		break;
	case K_LISTEN: {
		char host[MM_PEER_HOST_MAX + 1];
		uint16_t port;
		if (mm_hostport_parse(value, strlen(value), host, sizeof host, &port) != 0) {
			line_err(c, -EINVAL,
			         "bad listen address '%s': expected HOST:PORT, e.g. 0.0.0.0:4000, "
			         "[::]:4000 or 192.0.2.1:4000", value);
			break;
		}
		/* The daemon binds this address as it is (node/peer.c bind_addr): a host name,
		 * which the peers file may use, is refused here with its line rather than at
		 * start, after check-config said the file was fine. */
		unsigned char addr[16];
		if (inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1) {
			line_err(c, -EINVAL,
			         "bad listen address '%s': the host must be a numeric IP address, e.g. "
			         "0.0.0.0:4000, [::]:4000 or this server's own address (a host name is "
			         "not resolved to bind)", value);
			break;
		}
		if (set_string(c, &cfg->listen_host, host, false) == 0)
			cfg->listen_port = port;
		break;
	}
	case K_PRIVATE_KEY:
		set_string(c, &cfg->private_key_path, value, true);
		break;
	case K_PEERS:
		set_string(c, &cfg->peers_path, value, true);
		break;
	case K_MAIL_LOCATION:
		set_mail_location(c, value);
		break;
	case K_STATE_DIR:
		set_string(c, &cfg->state_dir, value, true);
		break;
	case K_GOSSIP_INTERVAL: {
		uint64_t ms = 0;
		set_duration(c, name, value, 1, 1, 3600ULL * 1000, &ms);
		if (ms != 0)
			cfg->gossip_interval_ms = (uint32_t)ms;
		break;
	}
	case K_LOG_LEVEL:
		if (mm_log_level_parse(value, &cfg->log_level) != 0)
			line_err(c, -EINVAL, "bad log_level '%s': use error, warn, info or debug", value);
		break;
	case K_CONTROL_SOCKET:
		set_string(c, &cfg->control_socket, value, true);
		break;
	case K_USER:
		set_string(c, &cfg->user, value, false);
		break;
	case K_GROUP:
		set_string(c, &cfg->group, value, false);
		break;
	case K_CLUSTER_PSK:
		set_string(c, &cfg->cluster_psk_path, value, true);
		break;
	case K_PUSH_FANOUT: {
		char *end;
		unsigned long v;
		errno = 0;
		v = strtoul(value, &end, 10);
		if (value[0] < '0' || value[0] > '9' || *end != '\0' || errno != 0 || v > MM_PEERS_MAX) {
			line_err(c, -EINVAL,
			         "bad push_fanout '%s': give a number of peers from 0 to %d (0 = all peers)",
			         value, MM_PEERS_MAX);
			break;
		}
		cfg->push_fanout = (uint32_t)v;
		break;
	}
	case K_GC_GRACE:
		set_duration(c, name, value, 1000, 1000, 100ULL * 365 * 24 * 3600 * 1000, &cfg->gc_grace_ms);
		break;
	case K_GC_MAX:
		set_duration(c, name, value, 1000, 1000, 100ULL * 365 * 24 * 3600 * 1000, &cfg->gc_max_ms);
		break;
	case K_MAX_SKEW:
		set_duration(c, name, value, 1000, 1, 365ULL * 24 * 3600 * 1000, &cfg->max_skew_ms);
		break;
	case K_IMAP_UIDS:
		if (!strcmp(value, "yes") || !strcmp(value, "true") || !strcmp(value, "1"))
			cfg->imap_uids = true;
		else if (!strcmp(value, "no") || !strcmp(value, "false") || !strcmp(value, "0"))
			cfg->imap_uids = false;
		else
			line_err(c, -EINVAL, "bad imap_uids '%s': give yes or no", value);
		break;
	case K_FILE_CACHE: {
		char *end;
		unsigned long long v;
		errno = 0;
		v = strtoull(value, &end, 10);
		if (value[0] < '0' || value[0] > '9' || *end != '\0' || errno != 0 || v > 1000000000ULL) {
			line_err(c, -EINVAL,
			         "bad file_cache '%s': give a number of message files from 0 to 1000000000 "
			         "(default %d)", value, MM_STORE_FILE_CACHE);
			break;
		}
		cfg->file_cache = (size_t)v;
		break;
	}
	case K_QUOTA_IGNORE: {
		char bad[256];
		int r = mm_md_folder_names_parse(value, NULL, NULL, bad, sizeof bad);
		if (r < 0) {
			line_err(c, -EINVAL,
			         "bad quota_ignore '%s': '%s' is not a folder name; give the folders Dovecot's "
			         "quota_rule ignores (e.g. Trash:ignore) as their Maildir++ names, separated by "
			         "commas: quota_ignore = Trash, Junk", value, bad);
			break;
		}
		set_string(c, &cfg->quota_ignore, value, false);
		break;
	}
	case K_STATE_MAX_SIZE: {
		/* a number with an optional binary unit k, m, g or t (bytes without) */
		char *end;
		unsigned long long v;
		errno = 0;
		v = strtoull(value, &end, 10);
		unsigned shift = 0;
		if (*end && !end[1]) {
			const char *units = "kmgt", *u = strchr(units, end[0] | 0x20);
			if (u && *u) {
				shift = 10 * (unsigned)(u - units + 1);
				end++;
			}
		}
		if (value[0] < '0' || value[0] > '9' || *end != '\0' || errno != 0 || v > (1ULL << 50) >> shift ||
		    (v << shift) < (64ULL << 20)) {
			line_err(c, -EINVAL,
			         "bad state_max_size '%s': give a size with an optional unit k, m, g or t "
			         "(powers of 1024), from 64m to 1024t, e.g. 64g (default 16g)", value);
			break;
		}
		cfg->state_max_bytes = v << shift;
		break;
	}
	case K_COUNT:
		break;
	}
	return c->err_line == c->line ? 0 : 1;
}

/* Absolute form of path (cwd-relative paths get the cwd in front), and its directory. */
static int absolute(const char *path, char **abs_r, char **dir_r)
{
	char *abs = NULL, *slash;

	*abs_r = *dir_r = NULL;
	if (path[0] == '/') {
		abs = strdup(path);
	} else {
		char *cwd = getcwd(NULL, 0);
		if (cwd == NULL)
			return -errno;
		if (asprintf(&abs, "%s/%s", strcmp(cwd, "/") ? cwd : "", path) < 0)
			abs = NULL;
		free(cwd);
	}
	if (abs == NULL)
		return -ENOMEM;
	*dir_r = strdup(abs);
	if (*dir_r == NULL) {
		free(abs);
		return -ENOMEM;
	}
	slash = strrchr(*dir_r, '/');
	if (slash == *dir_r)
		slash[1] = '\0'; /* "/x.conf" -> "/" */
	else
		*slash = '\0';
	*abs_r = abs;
	return 0;
}

static int parse_into(struct parse_ctx *c, const char *path, const char *text, size_t len,
                      struct mm_config *cfg, char *err, size_t errlen)
{
	struct mm_config *cfgp = cfg;
	int rc;

	memset(c, 0, sizeof *c);
	memset(cfg, 0, sizeof *cfg);
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (path == NULL || (text == NULL && len > 0))
		return -EINVAL;
	c->err = err;
	c->errlen = errlen;
	c->cfg = cfg;
	c->text = text;
	c->len = len;
	rc = absolute(path, &cfg->path, &c->dir);
	if (rc < 0) {
		seterr(err, errlen, "%s: %s", path, strerror(-rc));
		goto fail;
	}
	c->path = cfg->path;
	cfg->gossip_interval_ms = MM_DEFAULT_GOSSIP_INTERVAL_MS;
	cfg->log_level = MM_LOG_INFO;
	cfg->gc_grace_ms = MM_DEFAULT_GC_GRACE_MS;
	cfg->gc_max_ms = MM_DEFAULT_GC_MAX_MS;
	cfg->max_skew_ms = MM_DEFAULT_MAX_SKEW_MS;
	cfg->imap_uids = true;
	cfg->file_cache = MM_STORE_FILE_CACHE;
	cfg->state_max_bytes = MM_STATE_MAX_BYTES;

	rc = ini_parse_stream(reader, c, handler, c);
	if (rc < 0) {
		seterr(err, errlen, "%s: %s", c->path, rc == -2 ? "out of memory" : "cannot be parsed");
		rc = rc == -2 ? -ENOMEM : -EINVAL;
		goto fail;
	}
	if (rc > 0 && (c->err_line == 0 || (unsigned)rc < c->err_line)) {
		seterr(err, errlen, "%s:%d: expected `key = value`", c->path, rc);
		rc = -EINVAL;
		goto fail;
	}
	if (c->err_line != 0) {
		rc = c->rc;
		goto fail;
	}
	for (int k = 0; k <= K_PEERS; k++) { /* the required keys come first in enum key_id */
		static const char *const what[] = {
			"this node's name, as in the peers file",
			"the address to listen on, e.g. 0.0.0.0:4000",
			"the private key file, made with `mailmesh genkey -o FILE`",
			"the peers file",
		};
		if (c->seen[k] == 0) {
			seterr(err, errlen, "%s: missing `%s = ...`: %s", c->path, key_names[k], what[k]);
			rc = -EINVAL;
			goto fail;
		}
	}
	if (cfg->mail_location == NULL && (cfg->mail_location = strdup(MM_DEFAULT_MAIL_LOCATION)) == NULL)
		goto nomem;
	if (cfg->state_dir == NULL && (cfg->state_dir = strdup(MM_DEFAULT_STATE_DIR)) == NULL)
		goto nomem;
	if (cfg->control_socket == NULL &&
	    asprintf(&cfg->control_socket, "%s/control.sock", cfg->state_dir) < 0) {
		cfg->control_socket = NULL;
		goto nomem;
	}
	if (strlen(cfg->control_socket) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		if (c->seen[K_CONTROL_SOCKET])
			seterr(err, errlen, "%s:%u: control_socket path is longer than %zu bytes; choose a shorter path",
			       c->path, c->seen[K_CONTROL_SOCKET], sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
		else
			seterr(err, errlen, "%s: control socket %s is longer than %zu bytes; set a shorter "
			       "`control_socket = PATH`", c->path, cfg->control_socket,
			       sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
		rc = -EINVAL;
		goto fail;
	}
	if (cfg->gc_max_ms < cfg->gc_grace_ms && !c->seen[K_GC_MAX])
		cfg->gc_max_ms = cfg->gc_grace_ms; /* a long gc_grace alone: tombstones wait as long for a peer */
	if (cfg->gc_max_ms < cfg->gc_grace_ms) {
		seterr(err, errlen, "%s:%u: gc_max (%llus) is shorter than gc_grace (%llus); give gc_max at least "
		       "gc_grace's value (docs/configuration.md)", c->path, c->seen[K_GC_MAX],
		       (unsigned long long)(cfg->gc_max_ms / 1000), (unsigned long long)(cfg->gc_grace_ms / 1000));
		rc = -EINVAL;
		goto fail;
	}
	cfg->drop_privileges = cfg->user != NULL || cfg->group != NULL;
	free(c->dir);
	c->dir = NULL;
	return 0;
nomem:
	seterr(err, errlen, "%s: out of memory", c->path);
	rc = -ENOMEM;
fail:
	if (err != NULL && errlen > 0 && err[0] == '\0')
		seterr(err, errlen, "%s: %s", path, strerror(rc < 0 ? -rc : EINVAL));
	free(c->dir);
	c->dir = NULL;
	mm_config_free(cfgp);
	return rc < 0 ? rc : -EINVAL;
}

int mm_config_mail_base_check(const struct mm_config *cfg, char *err, size_t errlen)
{
	struct mm_mailloc *loc = NULL;
	char base[PATH_MAX], why[512], where[PATH_MAX + 64];
	if (cfg->mail_location_line)
		snprintf(where, sizeof where, "%s:%u: mail_location's", cfg->path, cfg->mail_location_line);
	else
		snprintf(where, sizeof where, "%s: mail_location is not set, and its default's", cfg->path);
	int r = mm_mailloc_new(&loc, cfg->mail_location, why, sizeof why);
	if (r < 0) {
		snprintf(err, errlen, "%s value is refused: %s", where, why);
		return r;
	}
	r = mm_mailloc_base(loc, base, sizeof base);
	mm_mailloc_free(&loc);
	if (r < 0) {
		snprintf(err, errlen, "%s path is too long", where);
		return r;
	}
	struct stat st;
	if (stat(base, &st) < 0) {
		r = -errno;
		if (r == -ENOENT)
			snprintf(err, errlen, "%s base directory %s does not exist: set mail_location as Dovecot's, "
			         "or create the directory (owned by the mail user) if this server has no mail yet; "
			         "if it is a mount point, mount its disk", where, base);
		else
			snprintf(err, errlen, "%s base directory %s cannot be read: %s", where, base, strerror(-r));
		return r;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "%s base %s is not a directory: set mail_location as Dovecot's", where, base);
		return -ENOTDIR;
	}
	return 0;
}

int mm_config_parse(const char *path, const char *text, size_t len, struct mm_config *cfg_r,
                    char *err, size_t errlen)
{
	struct parse_ctx c;

	if (cfg_r == NULL)
		return -EINVAL;
	return parse_into(&c, path, text, len, cfg_r, err, errlen);
}

/* Reads a whole (small) file.  *buf_r is malloc'd and NUL-terminated. */
static int read_file(const char *path, char **buf_r, size_t *len_r, char *err, size_t errlen)
{
	struct stat st;
	char *buf = NULL;
	size_t n = 0;
	int fd, rc;

	*buf_r = NULL;
	*len_r = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		rc = -errno;
		seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return rc;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > CONFIG_FILE_MAX) {
		seterr(err, errlen, "%s: not a regular file of at most %d bytes", path, CONFIG_FILE_MAX);
		rc = -EINVAL;
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		seterr(err, errlen, "%s: out of memory", path);
		rc = -ENOMEM;
		goto out;
	}
	while (n < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = -errno;
			seterr(err, errlen, "%s: read: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	buf[n] = '\0';
	*buf_r = buf;
	*len_r = n;
	buf = NULL;
	rc = 0;
out:
	free(buf);
	close(fd);
	return rc;
}

/* Appends " (KEY on FILE:LINE)" to the message in err, so the user knows which line of
 * the config pointed at the file that failed. */
static void blame(char *err, size_t errlen, const struct parse_ctx *c, enum key_id k)
{
	size_t n;

	if (err == NULL || errlen == 0)
		return;
	n = strlen(err);
	if (n + 1 < errlen)
		snprintf(err + n, errlen - n, " (%s, set on %s:%u)", key_names[k], c->path, c->seen[k]);
}

static int resolve_ids(struct mm_config *cfg, const struct parse_ctx *c, char *err, size_t errlen)
{
	char *buf;
	long sz = sysconf(_SC_GETPW_R_SIZE_MAX);
	long gsz = sysconf(_SC_GETGR_R_SIZE_MAX);
	int rc = 0;

	if (sz < 16384)
		sz = 16384;
	if (gsz > sz)
		sz = gsz;
	buf = malloc((size_t)sz);
	if (buf == NULL) {
		seterr(err, errlen, "%s: out of memory", c->path);
		return -ENOMEM;
	}
	cfg->uid = getuid();
	cfg->gid = getgid();
	if (cfg->user != NULL) {
		struct passwd pw, *pwr = NULL;
		int e = getpwnam_r(cfg->user, &pw, buf, (size_t)sz, &pwr);
		if (pwr == NULL) {
			seterr(err, errlen, "%s:%u: unknown user '%s'%s%s; create it or fix `user`",
			       c->path, c->seen[K_USER], cfg->user, e ? ": " : "", e ? strerror(e) : "");
			rc = -EINVAL;
			goto out;
		}
		cfg->uid = pw.pw_uid;
		cfg->gid = pw.pw_gid;
	}
	if (cfg->group != NULL) {
		struct group gr, *grr = NULL;
		int e = getgrnam_r(cfg->group, &gr, buf, (size_t)sz, &grr);
		if (grr == NULL) {
			seterr(err, errlen, "%s:%u: unknown group '%s'%s%s; create it or fix `group`",
			       c->path, c->seen[K_GROUP], cfg->group, e ? ": " : "", e ? strerror(e) : "");
			rc = -EINVAL;
			goto out;
		}
		cfg->gid = gr.gr_gid;
	}
out:
	free(buf);
	return rc;
}

/* Parses the peers file's text and checks this node's line against the config (the
 * same name for our key, no other key under our name).  0 and the list, or -errno
 * with err set. */
static int peers_take(const struct mm_config *cfg, const char *text, size_t len, struct mm_peers **peers_r,
                      const struct mm_peer **self_r, char *err, size_t errlen)
{
	struct mm_peers *peers = NULL;
	int rc = mm_peers_parse(text, len, cfg->peers_path, &peers, err, errlen);
	if (rc < 0)
		return rc;
	const struct mm_peer *self = mm_peers_find_key(peers, cfg->public_key);
	if (self != NULL && strcmp(self->name, cfg->name) != 0) {
		seterr(err, errlen,
		       "%s:%u: this node's public key is listed as '%s', but %s says name = %s; "
		       "make the two names the same", cfg->peers_path, self->line, self->name, cfg->path, cfg->name);
		mm_peers_free(&peers);
		return -EINVAL;
	}
	const struct mm_peer *same = mm_peers_find_name(peers, cfg->name);
	if (same != NULL && same != self) {
		char pub[MM_KEY_B64_LEN + 1];
		mm_key_to_base64(cfg->public_key, pub);
		seterr(err, errlen,
		       "%s:%u: peer '%s' has a different public key than this node's private "
		       "key %s; its public key is %s (`mailmesh pubkey < %s`)",
		       cfg->peers_path, same->line, same->name, cfg->private_key_path, pub, cfg->private_key_path);
		mm_peers_free(&peers);
		return -EINVAL;
	}
	*peers_r = peers;
	*self_r = self;
	return 0;
}

int mm_config_load(const char *path, struct mm_config *cfg_r, char *err, size_t errlen)
{
	struct parse_ctx c;
	char *text = NULL;
	size_t len = 0;
	int rc;

	if (cfg_r == NULL)
		return -EINVAL;
	memset(cfg_r, 0, sizeof *cfg_r);
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (path == NULL)
		return -EINVAL;
	rc = read_file(path, &text, &len, err, errlen);
	if (rc < 0)
		return rc;
	rc = parse_into(&c, path, text, len, cfg_r, err, errlen);
	free(text);
	text = NULL;
	if (rc < 0)
		return rc;

	rc = resolve_ids(cfg_r, &c, err, errlen);
	if (rc < 0)
		goto fail;

	rc = mm_keyfile_load(cfg_r->private_key_path, cfg_r->private_key, err, errlen);
	if (rc < 0) {
		blame(err, errlen, &c, K_PRIVATE_KEY);
		goto fail;
	}
	if (mm_key_public(cfg_r->private_key, cfg_r->public_key) != 0) {
		seterr(err, errlen, "%s: not a usable X25519 private key; make a new one with "
		       "`mailmesh genkey -o FILE`", cfg_r->private_key_path);
		rc = -EINVAL;
		goto fail;
	}
	cfg_r->node_id = mm_node_id(cfg_r->public_key);

	if (cfg_r->cluster_psk_path != NULL) {
		rc = mm_keyfile_load(cfg_r->cluster_psk_path, cfg_r->psk, err, errlen);
		if (rc < 0) {
			blame(err, errlen, &c, K_CLUSTER_PSK);
			goto fail;
		}
		cfg_r->has_psk = true;
	}

	rc = read_file(cfg_r->peers_path, &text, &len, err, errlen);
	if (rc < 0) {
		blame(err, errlen, &c, K_PEERS);
		goto fail;
	}
	rc = peers_take(cfg_r, text, len, &cfg_r->peers, &cfg_r->self, err, errlen);
	free(text);
	if (rc < 0)
		goto fail;
	return 0;
fail:
	mm_config_free(cfg_r);
	return rc;
}

int mm_config_peers_load(const struct mm_config *cfg, struct mm_peers **peers_r, const struct mm_peer **self_r,
                         char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	int rc = read_file(cfg->peers_path, &text, &len, err, errlen);
	if (rc < 0)
		return rc;
	rc = peers_take(cfg, text, len, peers_r, self_r, err, errlen);
	free(text);
	return rc;
}

int mm_config_reread(const struct mm_config *cfg, struct mm_config *new_r, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	memset(new_r, 0, sizeof *new_r);
	int rc = read_file(cfg->path, &text, &len, err, errlen);
	if (rc < 0)
		return rc;
	rc = mm_config_parse(cfg->path, text, len, new_r, err, errlen);
	free(text);
	return rc;
}

static bool str_differs(const char *a, const char *b)
{
	return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

size_t mm_config_restart_keys(const struct mm_config *a, const struct mm_config *b, char *out, size_t cap)
{
	const struct {
		const char *key;
		bool differs;
	} k[] = {
		{"name", str_differs(a->name, b->name)},
		{"listen", str_differs(a->listen_host, b->listen_host) || a->listen_port != b->listen_port},
		{"private_key", str_differs(a->private_key_path, b->private_key_path)},
		{"peers", str_differs(a->peers_path, b->peers_path)},
		{"mail_location", str_differs(a->mail_location, b->mail_location)},
		{"state_dir", str_differs(a->state_dir, b->state_dir)},
		{"gossip_interval", a->gossip_interval_ms != b->gossip_interval_ms},
		{"control_socket", str_differs(a->control_socket, b->control_socket)},
		{"user", str_differs(a->user, b->user)},
		{"group", str_differs(a->group, b->group)},
		{"cluster_psk", str_differs(a->cluster_psk_path, b->cluster_psk_path)},
		{"push_fanout", a->push_fanout != b->push_fanout},
		{"gc_grace", a->gc_grace_ms != b->gc_grace_ms},
		{"gc_max", a->gc_max_ms != b->gc_max_ms},
		{"max_skew", a->max_skew_ms != b->max_skew_ms},
		{"imap_uids", a->imap_uids != b->imap_uids},
		{"file_cache", a->file_cache != b->file_cache},
		{"quota_ignore", str_differs(a->quota_ignore, b->quota_ignore)},
		{"state_max_size", a->state_max_bytes != b->state_max_bytes},
	};
	size_t n = 0, len = 0;
	if (cap)
		out[0] = '\0';
	for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
		if (!k[i].differs)
			continue;
		n++;
		if (cap && len < cap - 1) {
			int w = snprintf(out + len, cap - len, "%s%s", len ? ", " : "", k[i].key);
			len = w < 0 ? len : len + (size_t)w < cap ? len + (size_t)w : cap - 1;
		}
	}
	return n;
}

void mm_config_free(struct mm_config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	free(cfg->name);
	free(cfg->listen_host);
	free(cfg->private_key_path);
	free(cfg->peers_path);
	free(cfg->mail_location);
	free(cfg->state_dir);
	free(cfg->control_socket);
	free(cfg->user);
	free(cfg->group);
	free(cfg->cluster_psk_path);
	free(cfg->quota_ignore);
	mm_peers_free(&cfg->peers);
	sodium_memzero(cfg, sizeof *cfg); /* wipes private_key and psk too */
}
