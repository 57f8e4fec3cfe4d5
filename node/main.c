/*
 * main.c — the `mailmesh` command line: dispatches to the subcommands of cmds.h.
 */
#include <stdio.h>
#include <string.h>

#include "node/cmds.h"

#ifndef MM_VERSION
#define MM_VERSION "0.1.0"
#endif

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
} cmds[] = {
	{"run", mm_cmd_run, "-c FILE [--accept-stale]  run the replication daemon"},
	{"status", mm_cmd_status, "-c FILE [--json]     ask the running daemon how it is doing"},
	{"reload", mm_cmd_reload, "-c FILE              make the running daemon read its peers file and log_level again"},
	{"check", mm_cmd_check, "-c FILE [--max-lag S] [-t S]  one line for Nagios/Icinga (exit 0/1/2/3)"},
	{"remove-user", mm_cmd_remove_user, "-c FILE USER [--yes]  remove a user's mail and Maildir from every node"},
	{"check-config", mm_cmd_check_config, "-c FILE              check a config, its keys and peers, then exit"},
	{"genkey", mm_cmd_genkey, "[-o FILE [--force]]  print (or write, mode 0600) a new private key"},
	{"pubkey", mm_cmd_pubkey, "< KEY                print the public key of the private key on stdin"},
	{"testnet", mm_cmd_testnet, "--nodes N --dir DIR [--base-port P] [--force]  write a local test cluster"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: mailmesh COMMAND [ARGS]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(f, "  %-13s %s\n", cmds[i].name, cmds[i].help);
	fprintf(f, "\n`mailmesh COMMAND --help` shows a command's usage.\n"
	           "mailmesh %s — see README.md and docs/ for configuration.\n", MM_VERSION);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
		printf("mailmesh %s\n", MM_VERSION);
		return 0;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(argv[1], cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "mailmesh: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
