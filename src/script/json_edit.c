/* json_edit.c - writes kept as edits against a tape, spliced into the
 * original text; see json_edit.h. */
#include <string.h>

#include <lauxlib.h>

#include "json_edit.h"

/* ---- recording ------------------------------------------------------------- */

/* The JSON text of the Lua value at idx written at dst (room for cap
 * bytes), as the tree's write would print it (json_from_lua, json_print):
 * its length, with its token type in *type.  0 when the value is not a
 * scalar an edit holds, or does not fit. */
static size_t value_text(lua_State *L, int idx, char *dst, size_t cap, uint8_t *type)
{
    char num[JSON_NUMBER_TEXT_MAX];
    size_t n = 0;
    const char *lit = NULL;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        *type = lua_toboolean(L, idx) ? JSON_TOK_TRUE : JSON_TOK_FALSE;
        lit = lua_toboolean(L, idx) ? "true" : "false";
        break;
    case LUA_TNUMBER:
        n = json_number_text(L, idx, num);
        if (n > cap)
            return 0;
        memcpy(dst, num, n);
        *type = JSON_TOK_NUMBER;
        return n;
    case LUA_TSTRING: {
        size_t sl;
        const char *s = lua_tolstring(L, idx, &sl);
        *type = JSON_TOK_STRING;
        return json_write_string(dst, cap, s, sl);
    }
    case LUA_TTABLE:
        if (!json_is_null(L, idx))
            return 0;
        *type = JSON_TOK_NULL;
        lit = "null";
        break;
    default:
        return 0;
    }
    n = strlen(lit);
    if (n > cap)
        return 0;
    memcpy(dst, lit, n);
    return n;
}

/* Records obj[key] = the value whose JSON text (tl bytes, of token type
 * type) is at the end of the bytes used: in place of the edit already
 * setting that member, else as a new edit replacing old (the member's
 * value in the tape, unique and a scalar; JSON_NO_TOK: a new member, whose
 * key as JSON text is ktext, or written here when NULL).  0, or -1 when it
 * does not fit. */
static int record(json_owner_t *o, uint32_t obj, const char *key, size_t klen, uint32_t old, size_t tl, uint8_t type,
                  const char *ktext, size_t ktext_len)
{
    json_edits_t *ed = o->edits;
    size_t used = ed->used, room = JSON_EDIT_BYTES - used;
    uint32_t prev = json_edit_find(o, obj, key, klen);
    json_edit_t *e = prev != JSON_NO_TOK ? &ed->e[prev - o->ntok] : &ed->e[ed->n];
    if (prev != JSON_NO_TOK) {
        /* Set again: the edit takes the new value. */
        e->text = (uint16_t)used;
        e->text_len = (uint16_t)tl;
        e->type = type;
        ed->used += (uint32_t)tl;
        return 0;
    }
    if (ed->n == JSON_EDITS_MAX || room - tl < klen)
        return -1;
    size_t at = used + tl;
    e->ktext = (uint16_t)at;
    e->ktext_len = 0;
    if (old == JSON_NO_TOK) {
        size_t kt = ktext_len;
        if (ktext && ktext_len <= room - tl - klen)
            memcpy(ed->bytes + at, ktext, ktext_len);
        else if (ktext || !(kt = json_write_string(ed->bytes + at, room - tl - klen, key, klen)))
            return -1;
        e->ktext_len = (uint16_t)kt;
        at += kt;
    }
    memcpy(ed->bytes + at, key, klen);
    e->obj = obj;
    e->tok = old;
    e->key = (uint16_t)at;
    e->klen = (uint16_t)klen;
    e->text = (uint16_t)used;
    e->text_len = (uint16_t)tl;
    e->type = type;
    ed->used = (uint32_t)(at + klen);
    ed->n++;
    return 0;
}

/* True when o can keep an edit of object token obj. */
static int editable(const json_owner_t *o, uint32_t obj)
{
    return o->edits && !o->tree && o->tape && obj < o->ntok && o->tape[obj].type == JSON_TOK_OBJECT;
}

int json_edit_set(lua_State *L, json_owner_t *o, uint32_t obj, const char *key, size_t klen, int val_idx)
{
    json_edits_t *ed = o->edits;
    uint8_t type;
    if (!editable(o, obj))
        return -1;
    size_t tl = value_text(L, val_idx, ed->bytes + ed->used, JSON_EDIT_BYTES - ed->used, &type);
    if (!tl)
        return -1;
    /* Only a scalar is replaced: a script may hold a view into an object
     * or array, and writes through it must not reach the output.  A key
     * the object holds twice loses its later pairs: the tree does that. */
    uint32_t old = json_tape_member_nth(o, obj, key, klen, 1);
    if (old != JSON_NO_TOK &&
        (o->tape[old].type >= JSON_TOK_ARRAY || json_tape_member_nth(o, obj, key, klen, 2) != JSON_NO_TOK))
        return -1;
    return record(o, obj, key, klen, old, tl, type, NULL, 0);
}

int json_edit_put(json_owner_t *o, uint32_t obj, const char *key, size_t klen, const char *ktext, size_t ktext_len,
                  uint32_t old, const char *text, size_t tl, int type)
{
    if (!editable(o, obj) || (old != JSON_NO_TOK && o->tape[old].type >= JSON_TOK_ARRAY))
        return -1;
    json_edits_t *ed = o->edits;
    if (tl > JSON_EDIT_BYTES - ed->used)
        return -1;
    memcpy(ed->bytes + ed->used, text, tl);
    return record(o, obj, key, klen, old, tl, (uint8_t)type, ktext, ktext_len);
}

int json_edit_touches(const json_owner_t *o, uint32_t obj)
{
    const json_edits_t *ed = o->edits;
    for (uint32_t i = 0; ed && i < ed->n; i++)
        if (ed->e[i].obj == obj)
            return 1;
    return 0;
}

/* ---- reading ----------------------------------------------------------------- */

/* The bytes of the edit's string value decoded into buf (room for its text's
 * length); sets *n. */
static const char *edit_string(const json_edits_t *ed, const json_edit_t *e, char *buf, size_t *n)
{
    const char *s = ed->bytes + e->text + 1;
    size_t len = (size_t)e->text_len - 2;
    if (!memchr(s, '\\', len)) {
        *n = len;
        return s;
    }
    long dl = json_decode_string((const unsigned char *)s, (const unsigned char *)s + len, (unsigned char *)buf);
    *n = dl > 0 ? (size_t)dl : 0;
    return buf;
}

const char *json_tok_bytes(const json_owner_t *o, uint32_t tok, char *buf, size_t cap, size_t *n)
{
    if (tok < o->ntok) {
        const json_tok_t *t = &o->tape[tok];
        if (t->type == JSON_TOK_STRING && !(t->flags & JSON_TOK_PLAIN)) {
            if (t->len > cap)
                return NULL;
            return json_tok_string(o->text, t, buf, n);
        }
        *n = t->len;
        return o->text + t->start;
    }
    const json_edits_t *ed = o->edits;
    const json_edit_t *e = &ed->e[tok - o->ntok];
    if (e->type != JSON_TOK_STRING) {
        *n = e->text_len;
        return ed->bytes + e->text;
    }
    if ((size_t)e->text_len - 2 > cap && memchr(ed->bytes + e->text + 1, '\\', (size_t)e->text_len - 2))
        return NULL;
    return edit_string(ed, e, buf, n);
}

void json_edit_push(lua_State *L, const json_owner_t *o, uint32_t tok)
{
    const json_edits_t *ed = o->edits;
    const json_edit_t *e = &ed->e[tok - o->ntok];
    char buf[JSON_EDIT_BYTES];
    size_t n;
    switch (e->type) {
    case JSON_TOK_NULL:
        json_push_null(L);
        return;
    case JSON_TOK_TRUE:
    case JSON_TOK_FALSE:
        lua_pushboolean(L, e->type == JSON_TOK_TRUE);
        return;
    case JSON_TOK_NUMBER:
        json_push_number_text(L, ed->bytes + e->text, e->text_len);
        return;
    default: {
        const char *s = edit_string(ed, e, buf, &n);
        lua_pushlstring(L, s, n);
    }
    }
}

/* ---- into a tree --------------------------------------------------------------- */

/* A new node for the edit's value, as json_from_lua makes it; NULL when out
 * of memory. */
static cJSON *edit_node(const json_edits_t *ed, const json_edit_t *e)
{
    char buf[JSON_EDIT_BYTES + 1];
    size_t n;
    switch (e->type) {
    case JSON_TOK_NULL:
        return cJSON_CreateNull();
    case JSON_TOK_TRUE:
    case JSON_TOK_FALSE:
        return cJSON_CreateBool(e->type == JSON_TOK_TRUE);
    case JSON_TOK_NUMBER:
        memcpy(buf, ed->bytes + e->text, e->text_len);
        buf[e->text_len] = '\0';
        return cJSON_CreateRaw(buf);
    default: {
        const char *s = edit_string(ed, e, buf, &n);
        return json_new_string(s, n);
    }
    }
}

void json_edit_apply(lua_State *L, json_owner_t *o)
{
    json_edits_t *ed = o->edits;
    json_tree_t *t = o->tree;
    uint32_t n = ed ? ed->n : 0;
    if (!n)
        return;
    /* Forgotten first: from here the tree is what reads see. */
    ed->n = 0;
    for (uint32_t i = 0; i < n; i++) {
        const json_edit_t *e = &ed->e[i];
        cJSON *parent = t->nodes ? t->nodes[e->obj] : NULL;
        cJSON *v = edit_node(ed, e);
        if (!parent || !v) {
            cJSON_Delete(v);
            luaL_error(L, "out of memory");
        }
        if (json_object_set(o, parent, ed->bytes + e->key, e->klen, v) < 0)
            luaL_error(L, "out of memory");
    }
    ed->used = 0;
}

/* ---- splicing ------------------------------------------------------------------ */

/* True when the text is its tokens and the punctuation between them, with
 * no whitespace: the length such a text has is the text's length.  Per
 * token: its text (strings: and quotes; objects: a colon and a comma per
 * member, arrays a comma per element, one fewer and the two brackets). */
static int compact(const json_owner_t *o)
{
    static const uint8_t per[8] = {[JSON_TOK_OBJECT] = 2, [JSON_TOK_ARRAY] = 1};
    static const uint8_t base[8] = {[JSON_TOK_STRING] = 2, [JSON_TOK_OBJECT] = 1, [JSON_TOK_ARRAY] = 1};
    size_t need = 0;
    for (uint32_t k = 0; k < o->ntok; k++) {
        const json_tok_t *t = &o->tape[k];
        if (t->type >= JSON_TOK_ARRAY)
            need += (size_t)t->len * per[t->type] + base[t->type] + (t->len == 0);
        else
            need += (size_t)t->len + base[t->type];
    }
    return need == o->text_len;
}

/* The value token of the last member (or element) of container k, which
 * has at least one. */
static uint32_t last_child(const json_tok_t *tape, uint32_t k)
{
    int obj = tape[k].type == JSON_TOK_OBJECT;
    uint32_t c = k + 1;
    for (uint32_t m = 1; m < tape[k].len; m++)
        c = obj ? tape[c + 1].next : tape[c].next;
    return obj ? c + 1 : c;
}

/* The offset just past value token k's text, in a compact text. */
static size_t tok_end(const json_tok_t *tape, uint32_t k)
{
    size_t closing = 0; /* brackets of the containers k ends with */
    for (;;) {
        const json_tok_t *t = &tape[k];
        if (t->type == JSON_TOK_STRING)
            return t->start + (size_t)t->len + 1 + closing;
        if (t->type != JSON_TOK_OBJECT && t->type != JSON_TOK_ARRAY)
            return t->start + (size_t)t->len + closing;
        if (!t->len)
            return t->start + 2 + closing;
        closing++;
        k = last_child(tape, k);
    }
}

/* Where the edit goes in the text: the first byte of the value it
 * replaces, or the closing brace of the object it adds to. */
static size_t edit_pos(const json_owner_t *o, const json_edit_t *e)
{
    const json_tok_t *tape = o->tape;
    if (e->tok != JSON_NO_TOK)
        return tape[e->tok].start - (tape[e->tok].type == JSON_TOK_STRING);
    if (e->obj == 0)
        return o->text_len - 1; /* the document's last byte: its own brace */
    if (!tape[e->obj].len)
        return tape[e->obj].start + 1;
    return tok_end(tape, last_child(tape, e->obj));
}

size_t json_edit_splice(const json_owner_t *o, char *dst, size_t cap)
{
    const json_edits_t *ed = o->edits;
    uint32_t order[JSON_EDITS_MAX];
    size_t pos[JSON_EDITS_MAX], end[JSON_EDITS_MAX], need = o->text_len;
    int comma[JSON_EDITS_MAX];
    if (!ed || !compact(o))
        return 0;
    /* In text order; edits adding to the same object keep their own. */
    for (uint32_t i = 0; i < ed->n; i++) {
        size_t p = edit_pos(o, &ed->e[i]);
        uint32_t j = i;
        for (; j > 0 && pos[j - 1] > p; j--) {
            pos[j] = pos[j - 1];
            order[j] = order[j - 1];
        }
        pos[j] = p;
        order[j] = i;
    }
    /* What each takes out of the text and puts in. */
    for (uint32_t j = 0; j < ed->n; j++) {
        const json_edit_t *e = &ed->e[order[j]];
        comma[j] = 0;
        end[j] = pos[j];
        if (e->tok != JSON_NO_TOK) {
            end[j] = tok_end(o->tape, e->tok);
            need = need - (end[j] - pos[j]) + e->text_len;
            continue;
        }
        comma[j] = o->tape[e->obj].len != 0;
        for (uint32_t i = 0; i < j && !comma[j]; i++)
            comma[j] = ed->e[order[i]].obj == e->obj && ed->e[order[i]].tok == JSON_NO_TOK;
        need += (size_t)comma[j] + e->ktext_len + 1 + e->text_len;
    }
    if (need > cap)
        return need;
    size_t at = 0, len = 0;
    for (uint32_t j = 0; j < ed->n; j++) {
        const json_edit_t *e = &ed->e[order[j]];
        memcpy(dst + len, o->text + at, pos[j] - at);
        len += pos[j] - at;
        at = end[j];
        if (e->tok == JSON_NO_TOK) {
            if (comma[j])
                dst[len++] = ',';
            memcpy(dst + len, ed->bytes + e->ktext, e->ktext_len);
            len += e->ktext_len;
            dst[len++] = ':';
        }
        memcpy(dst + len, ed->bytes + e->text, e->text_len);
        len += e->text_len;
    }
    memcpy(dst + len, o->text + at, o->text_len - at);
    return need;
}
