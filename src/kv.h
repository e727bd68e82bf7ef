/*
 * kv.h - the key-value store scripts use for state that must outlive a
 * reload (counters, projections, idempotency sets).  It lives in C, owned by
 * the script host, so swapping Lua states does not touch it.
 *
 * Values are strings, integers, floats, booleans, or JSON text (tables are
 * stored as JSON).  Not thread-safe: loop thread only.
 */
#ifndef TIDE_KV_H
#define TIDE_KV_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

typedef struct kv kv_t;

kv_t *kv_new(void);
void kv_free(kv_t *kv);
size_t kv_count(const kv_t *kv);

/*
 * Makes the store durable in dir (created if needed): what it holds there
 * is loaded (entries set since kv_new, e.g. by the entry file, are applied
 * on top with the values they have now; deletes made before are not
 * replayed) and every later change is written there (kv.c describes the
 * files).  Damaged records are skipped and logged; 0, or -1 with err when
 * the files cannot be read at all.
 */
int kv_persist(kv_t *kv, const char *dir, char *err, size_t errsz);

/* Pushes the `tide.kv` table of functions bound to kv:
 *   get(k) -> value | nil      set(k, v)  (v == nil deletes)
 *   del(k) -> existed          incr(k [, by]) -> new integer value
 *   has(k) -> bool             keys([prefix]) -> sorted list
 *   count() -> n
 * kv must outlive every Lua state it is pushed into. */
void kv_push_api(lua_State *L, kv_t *kv);

#endif
