/* kv_lua.h - the `tide.kv` binding of the store's kv (store/kv.h). */
#ifndef TIDE_KV_LUA_H
#define TIDE_KV_LUA_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "kv.h"

/* Pushes the `tide.kv` table of functions bound to kv:
 *   get(k) -> value | nil      set(k, v)  (v == nil deletes)
 *   del(k) -> existed          incr(k [, by]) -> new integer value
 *   has(k) -> bool             keys([prefix]) -> sorted list
 *   count() -> n
 * live NULL, or the store kv overlays (a shadow candidate's scratch
 * store): reads look in kv first, then in live; writes go to kv.
 * Both must outlive every Lua state they are pushed into. */
void kv_lua_push_api(lua_State *L, kv_t *kv, kv_t *live);

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

/* The bucket `tide.kv` is, with a data directory and a bucket maker. */
#define KV_TIDE_BUCKET "tide"

/* Pushes `tide.kv`: with streams and a bucket maker on the host (a node
 * with its JetStream API), the handle on bucket `tide` (the functions of
 * kv_bucket_lua_push's handles; any string is a key: one the clients' KV
 * API does not take, or that starts with "=", is stored as "=" and its
 * base64url without padding, and read back decoded; the kv { } limits
 * hold); else the in-memory table of kv_lua_push_api over host's kv. */
void kv_lua_push_tide(lua_State *L, struct script_host *host);

/* Pushes the handle on bucket `tide` (see kv_lua_push_tide). */
void kv_bucket_lua_push_tide(lua_State *L, struct script_host *host);

/* Writes "$KV.<bucket>.<key>" for key k (kl bytes) to subj (sn bytes):
 * the key as it is when the clients' KV API takes it (and, with encode,
 * it does not start with "="), else with encode "=" and its base64url
 * without padding.  0, or -1 when the key cannot be one (or is too long). */
int kv_bucket_subject(const char *bucket, int encode, const char *k, size_t kl, char *subj, size_t sn);

/* Stores a bucket message on subj of stream: payload with a Tide-Kv-Type
 * header `type` (NULL: a string), or a KV-Operation `op` marker (DEL,
 * PURGE; NULL: a value), only if the subject's newest sequence is expect
 * (UINT64_MAX: whatever it is).  streams_store's answer (1 stored, *seq). */
struct streams;
int kv_bucket_store(struct streams *sm, const char *stream, const char *subj, const char *type, const char *op,
                    uint64_t expect, const char *payload, size_t plen, uint64_t *seq);

/* Moves the store tide.kv kept before it was the bucket `tide` (<data>/kv,
 * store/kv.c) into the bucket (made through the host's bucket maker), at
 * start, before the entry file runs: every key the bucket does not hold
 * yet (no value and no marker) is written with its value and type; once
 * that is durable the old directory is renamed <data>/kv.migrated (never
 * deleted), so that a start cut short does it again and finds the keys
 * written already.  Logs the counts.  0 (also when there is nothing to
 * move), or -1 with err. */
int kv_migrate(struct script_host *host, char *err, size_t errsz);

/* Drops a move kv_migrate left waiting (the old directory stays where it
 * is and is moved again at the next start).  For script_host_free. */
void kv_migrate_cancel(struct script_host *host);

#endif
