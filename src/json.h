/*
 * json.h - JSON for scripts, lossless both ways (json-c underneath).
 *
 * JSON objects and arrays reach Lua as proxies over the json-c value rather
 * than as converted tables, which is what keeps a round trip exact: key
 * order of objects, the original text of numbers (json-c keeps the text of
 * doubles), 64-bit integers, null and empty array vs empty object all stay
 * as they were in every part a script does not touch.
 *
 *   JSON            Lua
 *   null            tide.null (a unique sentinel; distinct from a missing key)
 *   true/false      boolean
 *   integer         integer (64-bit; beyond int64 a float, untouched text kept)
 *   other number    float
 *   string          string
 *   object, array   proxy: index, assign, #, pairs (in document order), tostring
 *
 * Lua to JSON (assignments, ctx.publish, tide.json.encode): tables with keys
 * 1..n are arrays, other tables objects with string keys, written in sorted
 * key order; an empty table is an object unless made with tide.array().
 */
#ifndef TIDE_JSON_H
#define TIDE_JSON_H

#include <stddef.h>

#include <json-c/json.h>
#include <lua.h>

/* Anything that owns proxies starts with this, so a write through a proxy
 * can mark its owner changed. */
typedef struct json_owner {
    int dirty;
} json_owner_t;

/*
 * Parses exactly len bytes as one JSON value (surrounding whitespace
 * allowed).  Returns 0 and sets *out (caller puts it; NULL is JSON null), or
 * -1 when the text is not JSON.
 */
int json_parse(const char *text, size_t len, json_object **out);

/* Compact text of v (valid until v changes or is freed). */
const char *json_text(json_object *v, size_t *len);

/*
 * Pushes the Lua value for v.  Objects and arrays become proxies that hold
 * a reference to v; owner_idx is the stack index of a userdata starting with
 * json_owner_t that writes through the proxy mark dirty, or 0 for none.
 */
void json_push(lua_State *L, json_object *v, int owner_idx);

/*
 * Returns a new json value for the Lua value at idx (caller puts it).
 * Raises a Lua error for values JSON cannot hold (functions, NaN, cycles,
 * non-string keys, nesting deeper than 64).
 */
json_object *json_from_lua(lua_State *L, int idx);

/* True when the value at idx is tide.null. */
int json_is_null(lua_State *L, int idx);

/* Pushes tide.null. */
void json_push_null(lua_State *L);

/* Registers the proxy metatables and pushes the table
 * { null = ..., array = fn, object = fn, encode = fn, decode = fn }. */
void json_open(lua_State *L);

#endif
