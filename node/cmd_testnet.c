/*
 * cmd_testnet.c — `mailmesh testnet --nodes N --dir DIR [--base-port P] [--force]`:
 * writes a ready-to-run cluster on loopback for trying mailmesh and for tests:
 *
 *   DIR/peers                      shared peers file (node1..nodeN, 127.0.0.1:P+i-1)
 *   DIR/nodeI/mailmesh.conf        config with absolute paths
 *   DIR/nodeI/private.key          mode 0600
 *   DIR/nodeI/mail/                mail root (mail_location DIR/nodeI/mail/%d/%n)
 *   DIR/nodeI/state/               state_dir, with the control socket in it
 *
 * Keys come from libsodium's CSPRNG.  Every file is written before anything is
 * printed, and each config passes `mailmesh check-config`.
 */
#include <errno.h>
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <sodium.h>

#include "node/cmds.h"
#include "node/keyfile.h"
#include "proto/channel.h"
#include "proto/peers.h"

#define TESTNET_MAX_NODES 1000
#define DEFAULT_BASE_PORT 4100

static int usage(FILE *f)
{
	fprintf(f, "usage: mailmesh testnet --nodes N --dir DIR [--base-port P] [--force]\n"
	           "  writes a loopback test cluster of N nodes (1-%d) into DIR: a shared peers\n"
	           "  file and, per node, a config, a key, a mail root and a state dir; node I\n"
	           "  listens on 127.0.0.1:P+I-1 (P defaults to %d).  DIR must be empty or new\n"
	           "  unless --force.\n", TESTNET_MAX_NODES, DEFAULT_BASE_PORT);
	return f == stdout ? 0 : 2;
}

static int parse_num(const char *s, long min, long max, long *v_r)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0 || v < min || v > max)
		return -EINVAL;
	*v_r = v;
	return 0;
}

/* mkdir -p with mode for the last component. */
static int mkdirs(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof tmp)
		return -ENAMETOOLONG;
	memcpy(tmp, path, n + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, mode) != 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static bool dir_is_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	bool empty = true;

	if (d == NULL)
		return errno == ENOENT;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			empty = false;
			break;
		}
	}
	closedir(d);
	return empty;
}

/* The configs name their files by this path: a character that mailmesh.conf reads
 * otherwise (':' ends mail_location's path, '%' starts a variable of it, '#' and ';'
 * a comment, a blank at the end is cut) would make configs check-config refuses. */
static bool config_safe(const char *dir)
{
	for (const char *p = dir; *p; p++) {
		if (strchr(":%#;", *p) != NULL || (unsigned char)*p < 0x20 || *p == 0x7f ||
		    (p[1] == '\0' && (*p == ' ' || *p == '\t'))) {
			fprintf(stderr, "mailmesh testnet: %s: the nodes' configs cannot name paths with ':', '%%', "
			                "'#', ';', control characters or a blank at the end; choose another --dir\n", dir);
			return false;
		}
	}
	return true;
}

static int write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (f == NULL)
		return -errno;
	fputs(text, f);
	if (fflush(f) != 0 || ferror(f)) {
		int e = errno ? errno : EIO;
		fclose(f);
		return -e;
	}
	if (fclose(f) != 0)
		return -errno;
	return 0;
}

int mm_cmd_testnet(int argc, char **argv)
{
	long nodes = 0, base = DEFAULT_BASE_PORT;
	const char *dirarg = NULL;
	bool force = false;
	char dir[PATH_MAX], path[PATH_MAX + 64], err[512];
	char *peers = NULL;
	size_t peers_len = 0;
	FILE *pf = NULL;
	uint8_t key[32], pub[32];
	char pubtext[MM_KEY_B64_LEN + 1];
	int rc = 1, r;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--nodes") && i + 1 < argc) {
			if (parse_num(argv[++i], 1, TESTNET_MAX_NODES, &nodes) != 0) {
				fprintf(stderr, "mailmesh testnet: --nodes takes a number from 1 to %d\n",
				        TESTNET_MAX_NODES);
				return 2;
			}
		} else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
			dirarg = argv[++i];
		} else if (!strcmp(argv[i], "--base-port") && i + 1 < argc) {
			if (parse_num(argv[++i], 1, 65535, &base) != 0) {
				fprintf(stderr, "mailmesh testnet: --base-port takes a port from 1 to 65535\n");
				return 2;
			}
		} else if (!strcmp(argv[i], "--force")) {
			force = true;
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			return usage(stdout);
		} else {
			return usage(stderr);
		}
	}
	if (nodes == 0 || dirarg == NULL || dirarg[0] == '\0')
		return usage(stderr);
	if (base + nodes - 1 > 65535) {
		fprintf(stderr, "mailmesh testnet: ports %ld-%ld do not fit below 65536; lower --base-port\n",
		        base, base + nodes - 1);
		return 2;
	}
	if (!force && !dir_is_empty(dirarg)) {
		fprintf(stderr, "mailmesh testnet: %s is not empty (or not readable); choose a new "
		                "directory or pass --force to write over it\n", dirarg);
		return 2;
	}
	if (!config_safe(dirarg))
		return 2;
	r = mkdirs(dirarg, 0755);
	if (r < 0) {
		fprintf(stderr, "mailmesh testnet: cannot create %s: %s\n", dirarg, strerror(-r));
		return 1;
	}
	if (realpath(dirarg, dir) == NULL) {
		fprintf(stderr, "mailmesh testnet: %s: %s\n", dirarg, strerror(errno));
		return 1;
	}
	if (!config_safe(dir)) /* (the cwd in front of a relative --dir) */
		return 2;
	/* The control socket has the tightest length limit of all the paths. */
	if (strlen(dir) + sizeof("/node1000/state/control.sock") > sizeof(((struct sockaddr_un *)0)->sun_path)) {
		fprintf(stderr, "mailmesh testnet: %s is too long a path for the nodes' control "
		                "sockets (%zu bytes at most); choose a shorter --dir\n", dir,
		        sizeof(((struct sockaddr_un *)0)->sun_path) - sizeof("/node1000/state/control.sock"));
		return 2;
	}
	if (sodium_init() < 0) {
		fprintf(stderr, "mailmesh testnet: libsodium failed to initialise\n");
		return 1;
	}
	pf = open_memstream(&peers, &peers_len);
	if (pf == NULL) {
		fprintf(stderr, "mailmesh testnet: out of memory\n");
		return 1;
	}
	fprintf(pf, "# mailmesh peers file: one node a line, NAME HOST:PORT PUBLIC_KEY.\n"
	            "# Written by `mailmesh testnet`; shared by all %ld nodes.\n", nodes);

	for (long i = 1; i <= nodes; i++) {
		char *conf = NULL;
		const char *sub[] = {"mail", "state"};
		mode_t modes[] = {0755, 0700};

		snprintf(path, sizeof path, "%s/node%ld", dir, i);
		for (int k = -1; k < 2; k++) {
			if (k >= 0)
				snprintf(path, sizeof path, "%s/node%ld/%s", dir, i, sub[k]);
			r = mkdirs(path, k >= 0 ? modes[k] : 0755);
			if (r < 0) {
				fprintf(stderr, "mailmesh testnet: cannot create %s: %s\n", path, strerror(-r));
				goto out;
			}
		}
		randombytes_buf(key, sizeof key);
		mm_key_generate(key, key);
		if (mm_key_public(key, pub) != 0) {
			fprintf(stderr, "mailmesh testnet: key generation failed\n");
			goto out;
		}
		snprintf(path, sizeof path, "%s/node%ld/private.key", dir, i);
		r = mm_keyfile_write(path, key, force, err, sizeof err);
		if (r < 0) {
			fprintf(stderr, "mailmesh testnet: %s\n", err);
			goto out;
		}
		mm_key_to_base64(pub, pubtext);
		fprintf(pf, "node%ld 127.0.0.1:%ld %s\n", i, base + i - 1, pubtext);

		if (asprintf(&conf,
		             "# mailmesh config of node%ld of a %ld-node test cluster (`mailmesh testnet`).\n"
		             "# Start it with: mailmesh run -c %s/node%ld/mailmesh.conf\n"
		             "name = node%ld\n"
		             "listen = 127.0.0.1:%ld\n"
		             "private_key = %s/node%ld/private.key\n"
		             "peers = %s/peers\n"
		             "mail_location = %s/node%ld/mail/%%d/%%n\n"
		             "state_dir = %s/node%ld/state\n"
		             "control_socket = %s/node%ld/state/control.sock\n"
		             "gossip_interval = 200ms\n"
		             "log_level = info\n",
		             i, nodes, dir, i, i, base + i - 1, dir, i, dir, dir, i, dir, i, dir, i) < 0) {
			fprintf(stderr, "mailmesh testnet: out of memory\n");
			goto out;
		}
		snprintf(path, sizeof path, "%s/node%ld/mailmesh.conf", dir, i);
		r = write_text(path, conf);
		free(conf);
		if (r < 0) {
			fprintf(stderr, "mailmesh testnet: cannot write %s: %s\n", path, strerror(-r));
			goto out;
		}
	}
	if (fclose(pf) != 0) {
		pf = NULL;
		fprintf(stderr, "mailmesh testnet: out of memory\n");
		goto out;
	}
	pf = NULL;
	snprintf(path, sizeof path, "%s/peers", dir);
	r = write_text(path, peers);
	if (r < 0) {
		fprintf(stderr, "mailmesh testnet: cannot write %s: %s\n", path, strerror(-r));
		goto out;
	}

	printf("wrote a %ld-node test cluster in %s (peers file: %s/peers)\n", nodes, dir, dir);
	printf("start each node (each in its own terminal, or with & at the end):\n");
	for (long i = 1; i <= nodes; i++)
		printf("  mailmesh run -c %s/node%ld/mailmesh.conf    # node%ld on 127.0.0.1:%ld\n",
		       dir, i, i, base + i - 1);
	printf("then ask one how it is doing:\n  mailmesh status -c %s/node1/mailmesh.conf\n", dir);
	rc = 0;
out:
	if (pf != NULL)
		fclose(pf);
	free(peers);
	sodium_memzero(key, sizeof key);
	return rc;
}
