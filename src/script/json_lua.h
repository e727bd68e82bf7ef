/*
 * json_lua.h - JSON for scripts, lossless both ways, on cJSON.
 *
 * JSON objects and arrays reach Lua as proxies over the document rather
 * than as converted tables, which is what keeps a round trip exact: key
 * order, duplicate keys, null, and empty array vs empty object stay as
 * they were.  An event's payload is read through a tape (json_scan: tokens
 * over the text, no tree); an exact tree (json.h) is built when something
 * writes (but see edits, below): numbers, and strings and keys written
 * with escapes, keep their text, so untouched values print exactly as they
 * came in (1.10 stays 1.10, 12345678901234567890 is not rounded,
 * "caf\u00e9" and "a\u0000b" stay so).  Reading gives the exact 64-bit integer or the float the text
 * means, and strings with every byte, NULs included.
 *
 *   JSON            Lua
 *   null            tide.null (a unique sentinel; distinct from a missing key)
 *   true/false      boolean
 *   integer         integer (64-bit; beyond int64 a float, text kept)
 *   other number    float
 *   string          string (NULs included: "\u0000" is a NUL byte)
 *   object, array   proxy: index, assign, #, pairs (in document order), tostring
 *
 * Keys compare in full, NULs included.  An object with duplicate keys: a
 * read gives the first pair's value, pairs() each pair with its own value,
 * a write leaves one pair (the first, changed), nil removes them all.
 *
 * Lua to JSON (assignments, ctx.publish, tide.json.encode): tables with keys
 * 1..n are arrays, other tables objects with string keys, written in sorted
 * key order; an empty table is an object unless made with tide.array().
 * Strings (and keys) are written with any NUL as \u0000.
 *
 * Ownership: every tree belongs to an owner, a userdata starting with
 * json_owner_t (an event, or a standalone document).  Proxies keep their
 * owner alive; once the owner is dead (an event whose pipeline ended) every
 * proxy into it raises an error instead of reading freed memory.  An owner
 * with room for edits (json_edit.h) keeps scalar writes to objects as
 * edits of its tape and builds the tree only for other writes.
 */
#ifndef TIDE_JSON_LUA_H
#define TIDE_JSON_LUA_H

#include <lua.h>

#include "json.h"

/* What a built tree owns; freed by json_tree_free (which leaves it empty). */
typedef struct json_tree {
    cJSON *root;
    char *nums;       /* backing store of the number texts (see json_parse) */
    cJSON *discarded; /* replaced or removed subtrees, freed with the tree */
    cJSON **nodes;    /* tree built from a tape: token index -> node */
} json_tree_t;

void json_tree_free(json_tree_t *t);

/*
 * The part of an owner userdata that proxies see.  An owner reads through
 * its tape (text + tokens) until a tree is built; from then on through the
 * tree.  An owner that can be given a tree later (events) keeps the
 * userdata holding that tree in its user value JSON_OWNER_UV, unless it is
 * released_by_owner: then the tree is C memory json_owner_release frees.
 */
typedef struct json_owner {
    int dirty;  /* the tree was changed through a proxy */
    int dead;   /* the tree is gone */
    const char *text;       /* the scanned document, or NULL */
    size_t text_len;
    const json_tok_t *tape; /* its tokens (kept alive by the owner) */
    uint32_t ntok;
    json_tree_t *tree;      /* NULL until built */
    /* A released owner (json_owner_release) instead of a collected one:
     * its objects and arrays reach Lua as views that allocate nothing, its
     * tree is C memory.  Set only where release is certain to come. */
    int released_by_owner;
    uint64_t serial;        /* its views' registration (json.c), 0: none yet */
    /* Writes kept against the tape instead of a tree (json_edit.h), or
     * NULL: writes build the tree.  Storage the owner's creator provides. */
    struct json_edits *edits;
} json_owner_t;

#define JSON_OWNER_UV 1

/*
 * Ends an owner whose life its creator decides (events): its proxies and
 * views fail from now on and its tree, if any, is freed.  With
 * released_by_owner set this must come before the owner's memory goes.
 */
void json_owner_release(json_owner_t *o);

/*
 * Takes node (already detached from its tree) out of use without freeing
 * it: a script may still hold a proxy into it.  It is freed with the tree.
 * The owner must have a tree.
 */
void json_owner_discard(json_owner_t *o, cJSON *node);

/* Sets parent[key] = v for the key of klen bytes (NULs included): in place
 * of the first pair with that key (key order is kept; later pairs with the
 * same key are removed, so one is left), or appended.  What is replaced or
 * removed is discarded into o.  Returns 0, or -1 when out of memory (v is
 * then freed). */
int json_object_set(json_owner_t *o, cJSON *parent, const char *key, size_t klen, cJSON *v);

/* Removes every pair of parent with the key of klen bytes, discarding them
 * into o. */
void json_object_unset(json_owner_t *o, cJSON *parent, const char *key, size_t klen);

/* The value token of the first member with key (klen bytes, NULs
 * included) of object token obj, or JSON_NO_TOK: a value an edit set
 * (json_edit.h) if there is one, else the tape's. */
uint32_t json_tape_member(const json_owner_t *o, uint32_t obj, const char *key, size_t klen);

/* The value token of the nth (1 = the first) member with key of object
 * token obj in the tape itself, edits aside, or JSON_NO_TOK. */
uint32_t json_tape_member_nth(const json_owner_t *o, uint32_t obj, const char *key, size_t klen, unsigned nth);

/* Pushes the Lua value of token tok: objects and arrays are views of owner
 * o, or proxies tied to the owner's userdata at owner_idx; mt_idx is where
 * the proxy metatable is at hand (an upvalue), 0 to look it up. */
void json_push_tok(lua_State *L, json_owner_t *o, uint32_t tok, int owner_idx, int mt_idx);

/*
 * Handles: a light userdata naming an owner released by its creator (the
 * event in the pipeline), found again by json_light_kind while the owner
 * lives.  Pushes o's handle and returns 1, or returns 0 (nothing pushed)
 * when o cannot have one.
 */
int json_push_owner_handle(lua_State *L, json_owner_t *o);

/* What the light userdata at idx is: a JSON view, or an owner handle (*o
 * then the live owner, or NULL once it has ended). */
enum { JSON_LIGHT_VIEW, JSON_LIGHT_OWNER };
int json_light_kind(lua_State *L, int idx, json_owner_t **o);

/* The same for light, the value of such a light userdata. */
int json_light_kind_of(const void *light, json_owner_t **o);

/* The metamethods of JSON values, for the light userdata metatable
 * (event_open); their upvalue 1 must be the proxy metatable. */
int json_proxy_index(lua_State *L);
int json_proxy_newindex(lua_State *L);
int json_proxy_len(lua_State *L);
int json_proxy_tostring(lua_State *L);
int json_proxy_pairs(lua_State *L);

/* json_proxy_index for the view at index 1 whose value (lua_touserdata)
 * the caller has read: light. */
int json_view_index(lua_State *L, const void *light);
int json_view_newindex(lua_State *L, const void *light);

/* Pushes the metatable of JSON proxies, made now if json_open has not
 * run yet in this state (event_open comes first). */
void json_push_proxy_metatable(lua_State *L);

/*
 * Gives the owner at owner_idx a tree, built from its tape (or empty, root
 * NULL, without one), unless it has one.  The tree lives in a userdata
 * stored in the owner's user value JSON_OWNER_UV; proxies handed out
 * before keep working on it.  Raises a Lua error when out of memory.
 */
json_tree_t *json_owner_tree(lua_State *L, json_owner_t *o, int owner_idx);

/* Pushes the compact text of v (json_print) as a Lua string; -1 (nothing
 * pushed) when out of memory. */
int json_push_text(lua_State *L, const cJSON *v);

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

/* Pushes the bytes of string node v (json_is_string), NULs included. */
void json_push_string(lua_State *L, const cJSON *v);

/* Pushes the bytes of item's key, NULs included ("" without one). */
void json_push_key(lua_State *L, const cJSON *item);

/* True when the value at idx is tide.null. */
int json_is_null(lua_State *L, int idx);
void json_push_null(lua_State *L);

/* Pushes a standalone document owning tree (and nums) as a Lua value. */
void json_push_document(lua_State *L, cJSON *tree, char *nums);

/* A number node's value as Lua sees it: exact integer, else float. */
void json_push_number(lua_State *L, const cJSON *n);

/* The same for the n bytes of a JSON number's text at s. */
void json_push_number_text(lua_State *L, const char *s, size_t n);

/* 1 with the integer in *v when that text reads as an integer (as
 * json_push_number_text would push one), else 0. */
int json_number_text_integer(const char *s, size_t n, lua_Integer *v);

/* Writes the JSON text of the Lua number at idx into buf, as assignments
 * write numbers (an integer in decimal, a float as the shortest text that
 * reads back as it, with ".0" when it would read as an integer), and
 * returns its length.  Raises a Lua error for NaN and infinities. */
#define JSON_NUMBER_TEXT_MAX 48
size_t json_number_text(lua_State *L, int idx, char buf[JSON_NUMBER_TEXT_MAX]);

/* The same for the integer i. */
size_t json_integer_text(lua_Integer i, char buf[JSON_NUMBER_TEXT_MAX]);

/* Registers the metatables and pushes the table
 * { null = ..., array = fn, encode = fn, decode = fn }. */
void json_open(lua_State *L);

#endif
