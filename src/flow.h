/*
 * flow.h - a router with no network, for running flows offline (tide run,
 * tide check): a server that never listens, the script host on top, and a
 * subscriber on ">" inside the server that records every delivery.
 *
 * Exposed to Lua as the module "tide.flow" for the driver in lua/tide/run.lua:
 *   local flow = require "tide.flow"
 *   local f, err = flow.open(entry_file)      -- nil, "file:line: ..." on failure
 *   f:publish(subject, headers_block|nil, payload)
 *     -> { {subject=, headers=block|nil, payload=}, ... } in delivery order
 *   f:rules()  -> JSON text of the rules     f:close()
 */
#ifndef TIDE_FLOW_H
#define TIDE_FLOW_H

#include <lua.h>

/* Opens the module (for luaL_requiref).  lib_dir: tide's lua/ directory. */
int flow_open_module(lua_State *L);

/* Sets the lua/ directory flows load modules from (before flow.open). */
void flow_set_lib_dir(const char *dir);

#endif
