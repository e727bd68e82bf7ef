/*
 * json_edit.h - changes to a scanned document kept as a list of edits
 * against its tape, so that a write needs no tree and an event's new text
 * is its old text with the changed values spliced in.
 *
 * An edit sets one member of an object token of the tape to a scalar (a
 * string, a number, a boolean or tide.null): it replaces the value of a
 * member whose old value is a scalar too, or adds a member at the end of
 * the object.  Everything else a script may do (set a table, remove a
 * member with nil, write into an array, set a key the object holds twice,
 * iterate or count an object an edit changed, print a part of the
 * document) needs the tree: json_owner_tree builds it and applies the
 * edits to it in their order, which gives the tree the same writes would
 * have given it directly.  Reads see the edits: a member read by key finds
 * an edit first (json_edit_find), as a value token numbered past the tape.
 *
 * The edits live in a fixed block the owner points to (only the
 * pipeline's reused event has one): nothing is allocated per write, and a
 * write the block has no room for takes the tree instead.  Loop thread
 * only.
 */
#ifndef TIDE_JSON_EDIT_H
#define TIDE_JSON_EDIT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <lua.h>

#include "json_lua.h"

#define JSON_EDITS_MAX 8
#define JSON_EDIT_BYTES 512

typedef struct json_edit {
    uint32_t obj;       /* the object token whose member it sets */
    uint32_t tok;       /* the value token it replaces; JSON_NO_TOK: a new member */
    uint16_t key, klen; /* the key's bytes, in bytes[] */
    uint16_t ktext, ktext_len; /* a new member's key as JSON text */
    uint16_t text, text_len;   /* the value as JSON text */
    uint8_t type;       /* enum json_tok_type of the value */
} json_edit_t;

typedef struct json_edits {
    uint32_t n;    /* edits in e[] */
    uint32_t used; /* bytes used in bytes[] */
    json_edit_t e[JSON_EDITS_MAX];
    char bytes[JSON_EDIT_BYTES];
} json_edits_t;

/*
 * Records obj[key] = the Lua value at val_idx (klen bytes of key, NULs
 * included) as an edit of owner o, whose member reads then see it.
 * Returns 0 when recorded, -1 when the write needs the tree instead
 * (nothing recorded: see the top of this file).  Raises a Lua error, as
 * the tree's write would, for a number JSON cannot hold.
 */
int json_edit_set(lua_State *L, json_owner_t *o, uint32_t obj, const char *key, size_t klen, int val_idx);

/*
 * The same for a value given as its JSON text (tl bytes at text, of enum
 * json_tok_type type), when the caller has found the member's value in
 * the tape: old, which must be the only member with key (JSON_NO_TOK:
 * there is none), and has the key as JSON text (ktext, ktext_len bytes,
 * as json_write_string writes it; NULL: written here).  Returns 0, or -1
 * when the write needs the tree.
 */
int json_edit_put(json_owner_t *o, uint32_t obj, const char *key, size_t klen, const char *ktext, size_t ktext_len,
                  uint32_t old, const char *text, size_t tl, int type);

/* The value token of an edit setting obj[key] (o->ntok + the edit's
 * index), or JSON_NO_TOK.  Inline: every read of a member asks. */
static inline uint32_t json_edit_find(const json_owner_t *o, uint32_t obj, const char *key, size_t klen)
{
    const json_edits_t *ed = o->edits;
    for (uint32_t i = 0; ed && i < ed->n; i++) {
        const json_edit_t *e = &ed->e[i];
        if (e->obj == obj && e->klen == klen && memcmp(ed->bytes + e->key, key, klen) == 0)
            return o->ntok + i;
    }
    return JSON_NO_TOK;
}

/* True when an edit adds to or changes a member of token obj. */
int json_edit_touches(const json_owner_t *o, uint32_t obj);

/* The enum json_tok_type of value token tok of o, edits' tokens included. */
static inline int json_tok_type(const json_owner_t *o, uint32_t tok)
{
    return tok < o->ntok ? o->tape[tok].type : o->edits->e[tok - o->ntok].type;
}

/* The bytes of scalar value token tok of o (edits' tokens included): a
 * string's value, decoded into buf when written with escapes (NULL when
 * that needs more than cap bytes), or the text of any other scalar.
 * Points into the text, the edits or buf; sets *n. */
const char *json_tok_bytes(const json_owner_t *o, uint32_t tok, char *buf, size_t cap, size_t *n);

/* Pushes the Lua value of the edit's token tok (>= o->ntok). */
void json_edit_push(lua_State *L, const json_owner_t *o, uint32_t tok);

/*
 * Applies o's edits, in order, to the tree just built from its tape
 * (o->tree, with the node of each token), and forgets them.  Raises a Lua
 * error when out of memory.
 */
void json_edit_apply(lua_State *L, json_owner_t *o);

/*
 * The text of o's document with its edits spliced in, which is the text
 * json_print gives for the tree with the edits applied: written into dst
 * when it has room for it (cap bytes), else not written.  Returns its
 * length, or 0 when the text has whitespace between its tokens (the
 * tree's printing drops it, so that text is printed from the tree).
 * Allocates nothing.
 */
size_t json_edit_splice(const json_owner_t *o, char *dst, size_t cap);

#endif
