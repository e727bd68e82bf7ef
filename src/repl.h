/*
 * repl.h - tide repl: an embedded router with a Lua prompt.
 */
#ifndef TIDE_REPL_H
#define TIDE_REPL_H

/*
 * Runs the prompt until end of input.  entry: a rules file to load first
 * (NULL for none); lib_dir: tide's lua/ directory; listen_addr: HOST:PORT
 * where NATS clients may join, or NULL.  Returns the exit code.
 */
int repl_main(const char *entry, const char *lib_dir, const char *listen_addr);

#endif
