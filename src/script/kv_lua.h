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

/* Pushes tide.kv.bucket(name): a handle on the JetStream KV bucket `name`
 * (the stream KV_<name> on $KV.<name>.>, made through the host's bucket
 * maker at its first use), with the functions above plus
 *   revision(k) -> the key's revision (stream sequence) | nil
 *   update(k, fn) -> revision: writes fn(value, revision) only if the key
 *                    is unchanged since it was read, else reads again
 * called as b.get(k) or b:get(k).  What Lua stores keeps its type (a
 * Tide-Kv-Type header); what a client stores reads as a string.  Raises
 * when the node has no streams.  host must outlive the Lua state. */
struct script_host;
void kv_bucket_lua_push(lua_State *L, struct script_host *host);

#endif
