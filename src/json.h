/*
 * json.h - JSON for scripts, lossless both ways, on cJSON.
 *
 * JSON objects and arrays reach Lua as proxies over the parsed tree rather
 * than as converted tables, which is what keeps a round trip exact: key
 * order, null, and empty array vs empty object stay as they were.  cJSON
 * reads every number as a double, so after parsing, each number node is
 * turned into a raw node holding its original text (json_parse does this in
 * one pass over the text): reading gives the exact 64-bit integer or the
 * float the text means, and writing the tree out prints untouched numbers
 * exactly as they came in (1.10 stays 1.10, 12345678901234567890 is not
 * rounded).
 *
 *   JSON            Lua
 *   null            tide.null (a unique sentinel; distinct from a missing key)
 *   true/false      boolean
 *   integer         integer (64-bit; beyond int64 a float, text kept)
 *   other number    float
 *   string          string
 *   object, array   proxy: index, assign, #, pairs (in document order), tostring
 *
 * Lua to JSON (assignments, ctx.publish, tide.json.encode): tables with keys
 * 1..n are arrays, other tables objects with string keys, written in sorted
 * key order; an empty table is an object unless made with tide.array().
 *
 * Ownership: every tree belongs to an owner, a userdata starting with
 * json_owner_t (an event, or a standalone document).  Proxies keep their
 * owner alive; once the owner is dead (an event whose pipeline ended) every
 * proxy into it raises an error instead of reading freed memory.
 */
#ifndef TIDE_JSON_H
#define TIDE_JSON_H

#include <stddef.h>

#include <cjson/cJSON.h>
#include <lua.h>

typedef struct json_owner {
    int dirty;  /* the tree was changed through a proxy */
    int dead;   /* the tree is gone */
    char *nums; /* backing store of the number texts (see json_parse) */
    cJSON *discarded; /* replaced or removed subtrees, freed with the owner */
} json_owner_t;

/*
 * Takes node (already detached from its tree) out of use without freeing
 * it: a script may still hold a proxy into it.  It is freed by
 * json_owner_release, when the owner itself goes.
 */
void json_owner_discard(json_owner_t *o, cJSON *node);

/* Sets parent[key] = v (in place when key exists; key order is kept), or
 * appends; the old value is discarded into o.  Returns 0, or -1 when out of
 * memory (v is then freed). */
int json_object_set(json_owner_t *o, cJSON *parent, const char *key, cJSON *v);

/* Removes parent[key], discarding it into o. */
void json_object_unset(json_owner_t *o, cJSON *parent, const char *key);

/* Frees what the owner discarded and its number texts (not its tree). */
void json_owner_release(json_owner_t *o);

/* Makes cJSON allocate through tide's block pool.  Call once, before any
 * other cJSON use (json_open does). */
void json_init(void);

/*
 * Parses exactly len bytes as one JSON value (surrounding whitespace
 * allowed).  Returns the tree, or NULL when the text is not JSON.  Number
 * nodes become raw nodes whose text lives in *nums (one allocation for the
 * whole document, owned by the caller, freed after the tree).
 */
cJSON *json_parse(const char *text, size_t len, char **nums);

/* Compact text of v, malloc'd (caller frees); NULL when out of memory. */
char *json_print(const cJSON *v, size_t *len);

/*
 * Pushes the Lua value for v.  Objects and arrays become proxies tied to the
 * owner at stack index owner_idx (which must be a userdata starting with
 * json_owner_t).
 */
void json_push(lua_State *L, cJSON *v, int owner_idx);

/*
 * Returns a new tree for the Lua value at idx (caller deletes).  Raises a
 * Lua error for values JSON cannot hold (functions, NaN, cycles, non-string
 * keys, nesting deeper than 64).
 */
cJSON *json_from_lua(lua_State *L, int idx);

/* True when the value at idx is tide.null. */
int json_is_null(lua_State *L, int idx);
void json_push_null(lua_State *L);

/* Pushes a standalone document owning tree (and nums) as a Lua value. */
void json_push_document(lua_State *L, cJSON *tree, char *nums);

/* A number node's value as Lua sees it: exact integer, else float. */
void json_push_number(lua_State *L, const cJSON *n);

/* True for number nodes (raw-with-text or plain cJSON numbers). */
int json_is_number(const cJSON *n);

/* Registers the metatables and pushes the table
 * { null = ..., array = fn, encode = fn, decode = fn }. */
void json_open(lua_State *L);

#endif
