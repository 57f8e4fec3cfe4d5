/*
 * cmds.h — the `mailmesh` subcommands.  node/main.c only dispatches; each command
 * lives in the file named beside it.  Each takes the arguments after the command
 * name (argv[0] is the command) and returns the process exit status:
 * 0 success, 1 runtime failure, 2 usage or configuration error.
 */
#ifndef MM_CMDS_H
#define MM_CMDS_H

#include <stdbool.h>

#include <stdio.h>
#include <string.h>

/* What an argument the command does not take gets: its name (a usage line alone
 * leaves the admin to guess which word was wrong), then the usage on stderr; exit 2.
 * `-h`/`--help` get the usage on stdout and exit 0. */
static inline int mm_cmd_usage(const char *cmd, const char *arg, const char *usage)
{
	bool help = arg && (!strcmp(arg, "-h") || !strcmp(arg, "--help"));
	if (arg && !help)
		fprintf(stderr, "mailmesh %s: %s '%s'\n", cmd,
		        !strcmp(arg, "-c") || !strcmp(arg, "--config") ? "a FILE must follow" : "unknown argument", arg);
	fprintf(help ? stdout : stderr, "usage: %s\n", usage);
	return help ? 0 : 2;
}

int mm_cmd_genkey(int argc, char **argv);       /* node/cmd_keys.c */
int mm_cmd_pubkey(int argc, char **argv);       /* node/cmd_keys.c */
int mm_cmd_check_config(int argc, char **argv); /* node/cmd_config.c */
int mm_cmd_testnet(int argc, char **argv);      /* node/cmd_testnet.c */
int mm_cmd_run(int argc, char **argv);          /* node/daemon.c */
int mm_cmd_status(int argc, char **argv);       /* node/control.c */
int mm_cmd_reload(int argc, char **argv);       /* node/control.c */
int mm_cmd_check(int argc, char **argv);        /* node/control.c */
int mm_cmd_remove_user(int argc, char **argv);  /* node/control.c */

#endif
