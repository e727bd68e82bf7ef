/* kv_lua.h - the `tide.kv` binding of the store's kv (store/kv.h). */
#ifndef TIDE_KV_LUA_H
#define TIDE_KV_LUA_H

#include <lua.h>

#include "kv.h"

/* Pushes the `tide.kv` table of functions bound to kv:
 *   get(k) -> value | nil      set(k, v)  (v == nil deletes)
 *   del(k) -> existed          incr(k [, by]) -> new integer value
 *   has(k) -> bool             keys([prefix]) -> sorted list
 *   count() -> n
 * kv must outlive every Lua state it is pushed into. */
void kv_lua_push_api(lua_State *L, kv_t *kv);

#endif
