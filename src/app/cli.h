/*
 * cli.h - command-line clients against a running server:
 * tide pub, tide sub, tide req, tide stats, tide rules.
 */
#ifndef TIDE_CLI_H
#define TIDE_CLI_H

/* Runs client command `cmd` ("pub", "sub", "req", "stats", "rules") with its
 * arguments (argv[0] is the command).  Returns the exit code: 0 ok,
 * 1 failure (server not there, no reply, ...), 2 usage. */
int cli_main(const char *cmd, int argc, char **argv);

/* tide stream ..., tide consumer ..., tide dlq ... ("stream", "consumer",
 * "dlq"; argv[0] is the command, argv[1] the verb): the persistent queue's
 * admin requests, readable or --json.  Same exit codes as cli_main. */
int cli_ops_main(const char *cmd, int argc, char **argv);

/* tide repl --connect SERVER: a prompt whose lines run on a serving node
 * ($TIDE.ADMIN.EVAL; the node must allow it with admin { eval = true }),
 * showing what the node traces ($TIDE.TRACE) as it happens.  creds: the
 * credentials to log in with (cli_auth.h). */
struct cli_creds;
int cli_repl_connect(const char *server, const struct cli_creds *creds);

/* Prints a RULES.DIFF answer as tide rules diff does (also tide check --replay). */
struct cJSON;
void cli_print_diff(const struct cJSON *r);

#endif
