/*
 * cmd_config.c — `mailmesh check-config -c FILE`: loads the config exactly as the
 * daemon does (mm_config_load(): config file, private key with its permission check,
 * optional cluster PSK, peers file, own-key consistency) and prints a short summary.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "node/cmds.h"
#include "node/config.h"
#include "proto/channel.h"

static int usage(FILE *f)
{
	fprintf(f, "usage: mailmesh check-config -c FILE\n"
	           "  checks a config file, its keys and its peers file without starting;\n"
	           "  exits 0 and prints a summary, or exits 2 with the error\n");
	return f == stdout ? 0 : 2;
}

int mm_cmd_check_config(int argc, char **argv)
{
	const char *path = NULL;
	struct mm_config cfg;
	char err[MM_CONFIG_ERR_MAX];
	char pub[MM_KEY_B64_LEN + 1];
	bool v6;

	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
			path = argv[++i];
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
			return usage(stdout);
		else {
			fprintf(stderr, "mailmesh check-config: %s '%s'\n",
			        !strcmp(argv[i], "-c") || !strcmp(argv[i], "--config") ? "a FILE must follow" : "unknown argument",
			        argv[i]);
			return usage(stderr);
		}
	}
	if (path == NULL)
		return usage(stderr);
	if (mm_config_load(path, &cfg, err, sizeof err) < 0) {
		fprintf(stderr, "mailmesh check-config: %s\n", err);
		return 2;
	}
	mm_key_to_base64(cfg.public_key, pub);
	v6 = strchr(cfg.listen_host, ':') != NULL;
	printf("config:         %s\n", cfg.path);
	printf("name:           %s\n", cfg.name);
	printf("node id:        %016llx\n", (unsigned long long)cfg.node_id);
	printf("public key:     %s\n", pub);
	printf("listen:         %s%s%s:%u (tcp and udp)\n", v6 ? "[" : "", cfg.listen_host,
	       v6 ? "]" : "", cfg.listen_port);
	printf("peers:          %zu in %s", cfg.peers->n - (cfg.self != NULL ? 1 : 0), cfg.peers_path);
	if (cfg.self != NULL)
		printf(" (plus this node, line %u)\n", cfg.self->line);
	else
		printf("\n");
	printf("mail_location:  %s\n", cfg.mail_location);
	printf("state_dir:      %s (state.mdb up to %llu MiB)\n", cfg.state_dir,
	       (unsigned long long)(cfg.state_max_bytes >> 20));
	printf("control_socket: %s\n", cfg.control_socket);
	if (cfg.has_psk)
		printf("cluster_psk:    %s\n", cfg.cluster_psk_path);
	if (cfg.drop_privileges)
		printf("run as:         uid %u gid %u (%s%s%s)\n", (unsigned)cfg.uid, (unsigned)cfg.gid,
		       cfg.user ? cfg.user : "", cfg.group ? ":" : "", cfg.group ? cfg.group : "");
	/* Under the systemd unit the daemon starts as root: without `user` it stays root,
	 * and the Maildirs it makes for users new on this node are root's, which Dovecot
	 * (running as the mail owner) cannot open. */
	if (!cfg.drop_privileges && geteuid() == 0)
		fprintf(stderr, "mailmesh check-config: warning: %s sets no `user`: started as root, the daemon "
		                "stays root and the Maildirs it creates are root's, which Dovecot cannot read; "
		                "add `user = vmail` (the owner of the Maildirs)\n", cfg.path);
	if (cfg.self == NULL)
		fprintf(stderr, "mailmesh check-config: warning: this node's public key %s is not in "
		                "%s; the other nodes will refuse it until its line is added there\n",
		        pub, cfg.peers_path);
	if (cfg.peers->n - (cfg.self != NULL ? 1 : 0) == 0)
		fprintf(stderr, "mailmesh check-config: warning: %s lists no other node: this one replicates "
		                "with nobody until their lines (NAME HOST:PORT PUBLIC_KEY) are added\n", cfg.peers_path);
	if (mm_config_mail_base_check(&cfg, err, sizeof err) < 0) {
		fprintf(stderr, "mailmesh check-config: %s\n", err);
		mm_config_free(&cfg);
		return 2;
	}
	printf("ok\n");
	mm_config_free(&cfg);
	return 0;
}
