/*
 * flow.h - a router with no network, for running flows offline (tide run,
 * tide check): a server that never listens, the script host on top, and a
 * subscriber on ">" inside the server that records every delivery.
 *
 * A flow that declares streams gets them for real, in a temporary data
 * directory (removed by close), written without fsync (nothing there has
 * to survive a crash, and without the sync thread the order of events is
 * the same on every run).  After each publish the loop runs until the
 * streams are idle (see flow_settle), so what durable consumers and their
 * Lua handlers publish is among the publish's deliveries.  Under the
 * virtual clock, idle means nothing due at the current virtual time; what
 * is due later runs when advance moves the clock there.
 *
 * Exposed to Lua as the module "tide.flow" for the driver in lua/tide/run.lua:
 *   local flow = require "tide.flow"
 *   local f, err = flow.open(entry_file [, { settle = seconds, virtual_start = ns }])
 *                                             -- nil, "file:line: ..." on failure
 *                       (virtual_start: the process runs on the virtual clock
 *                       of clock.h from then on, starting at ns)
 *   f:publish(subject, headers_block|nil, payload [, reply])
 *     -> { {subject=, headers=block|nil, payload=}, ... } in delivery order,
 *        and nil, or what was still busy when the settle time ran out
 *   f:advance(ns|nil, line) -> deliveries as publish's, and nil or why the
 *        clock stopped early: under the virtual clock, runs what falls due
 *        up to ns in due order, then sets the clock to ns (see l_advance)
 *   flow.time(text) -> ns since the epoch, or nil
 *   f:streams() -> true when the flow runs streams
 *   f:rules()  -> JSON text of the rules     f:close()
 */
#ifndef TIDE_FLOW_H
#define TIDE_FLOW_H

#include <stddef.h>

#include <lua.h>

/* Opens the module (for luaL_requiref).  lib_dir: tide's lua/ directory. */
int flow_open_module(lua_State *L);

/* Sets the lua/ directory flows load modules from (before flow.open). */
void flow_set_lib_dir(const char *dir);

struct server;
struct streams;

/*
 * True (1) when the streams are idle: every append is durable (or its
 * stream has failed), and no consumer that can deliver now (a deliver
 * subject with a subscriber, or bound Lua handlers) has events it has not
 * delivered yet; a consumer bound to Lua handlers must also have nothing in
 * flight (a batch filling, a NAK waiting for its delay).  Else 0, with what
 * is busy in why.
 */
int flow_streams_idle(struct server *srv, struct streams *sm, char *why, size_t n);

/*
 * Runs srv's loop until the streams are idle (0), or `limit` seconds have
 * passed (-1, why says what is still busy).  Called outside any callback
 * of that loop.
 */
int flow_settle(struct server *srv, struct streams *sm, double limit, char *why, size_t n);

/* Makes a new directory <$TMPDIR or /tmp>/<prefix>-XXXXXX; 0 with its path
 * in out, or -1 (errno). */
int flow_make_tmpdir(const char *prefix, char *out, size_t n);

/* Removes dir and everything under it (no symbolic link is followed). */
void flow_remove_tree(const char *dir);

/*
 * Opens the streams the host's entry file declares in sm with fsync
 * "never", before script_host_set_streams opens them with the declared
 * policy (a stream's fsync is fixed when it is first opened).  For
 * throwaway data directories: tide run.  0, or -1 with err.
 */
struct script_host;
int flow_open_streams_unsynced(struct script_host *h, struct streams *sm, char *err, size_t errsz);

#endif
