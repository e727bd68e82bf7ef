/*
 * repl.h - tide repl: an embedded router with a Lua prompt.
 */
#ifndef TIDE_REPL_H
#define TIDE_REPL_H

/*
 * Runs the prompt until end of input.  entry: a rules file to load first
 * (NULL for none); lib_dir: tide's lua/ directory; listen_addr: HOST:PORT
 * where NATS clients may join, or NULL; data_dir: where the flow's streams
 * live (--data), or NULL: its storage { dir }, else a temporary directory
 * removed at exit.  Returns the exit code.
 */
int repl_main(const char *entry, const char *lib_dir, const char *listen_addr, const char *data_dir);

struct node;
struct client;
/*
 * Evaluates a prompt line sent by `tide repl --connect` ($TIDE.ADMIN.EVAL)
 * in a serving node's scripts, with the prompt's helpers.  The first
 * request makes the node's session (n->remote), which `from` (the
 * requesting connection, not NULL) joins; it lasts until the last
 * connection in it closes or leaves (repl_remote_detach).  Sets *json to a
 * malloc'd reply {"ok":true,"output":...,"incomplete":bool}, or
 * {"ok":false,"error":...} (a node that is a tide repl itself, too many
 * connections).  Output made between requests (sub() watchers, trace())
 * is published on $TIDE.TRACE.  Returns 0, or -1 when out of memory.
 * Not while the scripts are running.
 */
int repl_remote_eval(struct node *n, struct client *from, const char *code, size_t len, char **json,
                     size_t *json_len);

/*
 * Takes connection c out of the node's session ($TIDE.ADMIN.EVAL.END);
 * c NULL ends the session for everyone (the node stops).  When no
 * connection is left, everything the session set up is taken down:
 * subscriptions, the input tap, trace, recordings, buffers and the helpers
 * in the scripts' environment (a helper a rule kept raises an error from
 * then on).  Returns 1 when the session has ended, 0 when there was none
 * or others still use it.  Not while the scripts are running.
 */
int repl_remote_detach(struct node *n, const struct client *c);

#endif
