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
/*
 * Evaluates a prompt line sent by `tide repl --connect` ($TIDE.ADMIN.EVAL)
 * in a serving node's scripts, with the prompt's helpers.  Sets *json to a
 * malloc'd reply {"ok":true,"output":...,"incomplete":bool}.  Output made
 * later (sub() watchers, trace()) is published on $TIDE.TRACE.  Returns 0,
 * or -1 when out of memory.
 */
int repl_remote_eval(struct node *n, const char *code, size_t len, char **json, size_t *json_len);

#endif
