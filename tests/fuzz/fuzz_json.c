/*
 * fuzz_json.c - libFuzzer target for the JSON layer: json_scan (the strict
 * gate and the tape events are read through), json_parse and
 * json_parse_exact (trees), json_print, and the tree built from a tape.
 *
 * For every input:
 *   - json_scan accepts it exactly when a plain recursive reading of RFC
 *     8259 written here does (reference_text below: the grammar as the RFC
 *     writes it, UTF-8 by the Unicode standard's table 3-7), and exactly
 *     when json_parse and json_parse_exact do;
 * for every input that is JSON:
 *   - the exact tree prints as the input with the whitespace between
 *     tokens taken out, byte for byte (an exact round trip);
 *   - so does the tree json_owner_tree builds from the tape (what a write
 *     to an event starts from), and a json_duplicate of it;
 *   - edits of that text (json_edit.h: scalars written to members of its
 *     objects, new and existing) read back as written, and the text with
 *     them spliced in is what the tree with them applied prints; a text
 *     with whitespace between tokens is not spliced;
 *   - every number node carries text that strtod reads completely;
 *   - the cJSON-style tree (json_parse) prints JSON that json_scan accepts
 *     and that parses again to a tree printing the same;
 *   - cJSON itself accepts the text (the strict reading is a part of what
 *     cJSON 1.7 reads, which the app layer's cJSON calls rely on).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../../src/script/json_edit.h"
#include "../../src/script/json_lua.h"

/* ---- the reference reading ------------------------------------------------ */

typedef struct ref {
    const unsigned char *s;
    size_t len, i;
} ref_t;

static int ref_value(ref_t *r, int depth);

static void ref_ws(ref_t *r)
{
    while (r->i < r->len && strchr(" \t\r\n", r->s[r->i]) && r->s[r->i])
        r->i++;
}

static int ref_peek(ref_t *r)
{
    return r->i < r->len ? r->s[r->i] : -1;
}

static int ref_digits(ref_t *r)
{
    size_t from = r->i;
    while (ref_peek(r) >= '0' && ref_peek(r) <= '9')
        r->i++;
    return r->i > from;
}

/* number = [ minus ] int [ frac ] [ exp ] */
static int ref_number(ref_t *r)
{
    if (ref_peek(r) == '-')
        r->i++;
    if (ref_peek(r) == '0')
        r->i++;
    else if (ref_peek(r) >= '1' && ref_peek(r) <= '9')
        ref_digits(r);
    else
        return 0;
    if (ref_peek(r) == '.') {
        r->i++;
        if (!ref_digits(r))
            return 0;
    }
    if (ref_peek(r) == 'e' || ref_peek(r) == 'E') {
        r->i++;
        if (ref_peek(r) == '+' || ref_peek(r) == '-')
            r->i++;
        if (!ref_digits(r))
            return 0;
    }
    return 1;
}

static long ref_hex4(ref_t *r)
{
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int c = ref_peek(r);
        const char *hex = "0123456789abcdef";
        if (c < 0 || !c)
            return -1;
        const char *h = strchr(hex, c >= 'A' && c <= 'F' ? c + 32 : c);
        if (!h)
            return -1;
        v = v * 16 + (h - hex);
        r->i++;
    }
    return v;
}

/* One UTF-8 character (its first byte at r->i is >= 0x80), table 3-7. */
static int ref_utf8(ref_t *r)
{
    static const struct {
        unsigned char lead_lo, lead_hi, lo, hi; /* lead range, and the second byte's */
        int n;
    } rows[] = {{0xC2, 0xDF, 0x80, 0xBF, 2}, {0xE0, 0xE0, 0xA0, 0xBF, 3}, {0xE1, 0xEC, 0x80, 0xBF, 3},
                {0xED, 0xED, 0x80, 0x9F, 3}, {0xEE, 0xEF, 0x80, 0xBF, 3}, {0xF0, 0xF0, 0x90, 0xBF, 4},
                {0xF1, 0xF3, 0x80, 0xBF, 4}, {0xF4, 0xF4, 0x80, 0x8F, 4}};
    int c = ref_peek(r);
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
        if (c < rows[k].lead_lo || c > rows[k].lead_hi)
            continue;
        if (r->len - r->i < (size_t)rows[k].n)
            return 0;
        if (r->s[r->i + 1] < rows[k].lo || r->s[r->i + 1] > rows[k].hi)
            return 0;
        for (int j = 2; j < rows[k].n; j++)
            if (r->s[r->i + j] < 0x80 || r->s[r->i + j] > 0xBF)
                return 0;
        r->i += (size_t)rows[k].n;
        return 1;
    }
    return 0;
}

/* string = quotation-mark *char quotation-mark */
static int ref_string(ref_t *r)
{
    r->i++; /* the quote */
    for (;;) {
        int c = ref_peek(r);
        if (c < 0 || c < 0x20)
            return 0;
        if (c == '"') {
            r->i++;
            return 1;
        }
        if (c >= 0x80) {
            if (!ref_utf8(r))
                return 0;
            continue;
        }
        r->i++;
        if (c != '\\')
            continue;
        c = ref_peek(r);
        r->i++;
        if (c > 0 && strchr("\"\\/bfnrt", c))
            continue;
        if (c != 'u')
            return 0;
        long u = ref_hex4(r);
        if (u < 0 || (u >= 0xDC00 && u <= 0xDFFF))
            return 0; /* a low surrogate alone */
        if (u >= 0xD800 && u <= 0xDBFF) {
            if (ref_peek(r) != '\\')
                return 0;
            r->i++;
            if (ref_peek(r) != 'u')
                return 0;
            r->i++;
            long lo = ref_hex4(r);
            if (lo < 0xDC00 || lo > 0xDFFF)
                return 0;
        }
    }
}

static int ref_literal(ref_t *r, const char *w)
{
    size_t n = strlen(w);
    if (r->len - r->i < n || memcmp(r->s + r->i, w, n))
        return 0;
    r->i += n;
    return 1;
}

/* array or object: begin [ member *( value-separator member ) ] end */
static int ref_container(ref_t *r, int depth)
{
    int obj = ref_peek(r) == '{';
    if (depth >= JSON_MAX_DEPTH)
        return 0;
    r->i++;
    ref_ws(r);
    if (ref_peek(r) == (obj ? '}' : ']')) {
        r->i++;
        return 1;
    }
    for (;;) {
        if (obj) {
            if (ref_peek(r) != '"' || !ref_string(r))
                return 0;
            ref_ws(r);
            if (ref_peek(r) != ':')
                return 0;
            r->i++;
            ref_ws(r);
        }
        if (!ref_value(r, depth + 1))
            return 0;
        ref_ws(r);
        if (ref_peek(r) == ',') {
            r->i++;
            ref_ws(r);
            continue;
        }
        if (ref_peek(r) != (obj ? '}' : ']'))
            return 0;
        r->i++;
        return 1;
    }
}

static int ref_value(ref_t *r, int depth)
{
    switch (ref_peek(r)) {
    case 'n': return ref_literal(r, "null");
    case 't': return ref_literal(r, "true");
    case 'f': return ref_literal(r, "false");
    case '"': return ref_string(r);
    case '[':
    case '{': return ref_container(r, depth);
    default: return ref_number(r);
    }
}

/* JSON-text = ws value ws */
static int reference_text(const uint8_t *data, size_t size)
{
    ref_t r = {data, size, 0};
    ref_ws(&r);
    if (!ref_value(&r, 0))
        return 0;
    ref_ws(&r);
    return r.i == size;
}

/* ---- checks on accepted texts ------------------------------------------------ */

/* The text without the whitespace between tokens: what printing an exact
 * tree must give. */
static char *compact(const uint8_t *data, size_t size, size_t *len)
{
    char *out = malloc(size + 1);
    size_t n = 0;
    int in_string = 0;
    for (size_t i = 0; out && i < size; i++) {
        unsigned char c = data[i];
        if (in_string) {
            out[n++] = (char)c;
            if (c == '\\')
                out[n++] = (char)data[++i];
            else if (c == '"')
                in_string = 0;
        } else if (!strchr(" \t\r\n", c) || !c) {
            out[n++] = (char)c;
            in_string = c == '"';
        }
    }
    *len = n;
    return out;
}

static void check_numbers(const cJSON *n)
{
    for (; n; n = n->next) {
        if (json_is_number(n) && (n->type & 0xff) == cJSON_Raw) {
            char *end;
            if (!n->valuestring || !n->valuestring[0])
                abort();
            strtod(n->valuestring, &end);
            if (*end != '\0')
                abort(); /* the text is not exactly one number */
        }
        check_numbers(n->child);
    }
}

static void check_prints_as(const cJSON *v, const char *want, size_t want_len)
{
    size_t n;
    char *p = json_print(v, &n);
    if (p && (n != want_len || memcmp(p, want, n) != 0))
        abort();
    free(p);
}

/* The tree json_owner_tree builds from the tape of data must print as the
 * text does, and so must a copy of it. */
static void check_tape_tree(const uint8_t *data, size_t size, long ntok, const char *want, size_t want_len)
{
    static lua_State *L;
    if (!L) {
        L = luaL_newstate();
        json_open(L);
        lua_pop(L, 1);
    }
    json_tok_t *tape = malloc((size_t)ntok * sizeof *tape);
    if (!tape || json_scan((const char *)data, size, tape, (uint32_t)ntok) != ntok)
        abort();
    json_owner_t *o = lua_newuserdatauv(L, sizeof *o, 1);
    memset(o, 0, sizeof *o);
    o->text = (const char *)data;
    o->text_len = size;
    o->tape = tape;
    o->ntok = (uint32_t)ntok;
    json_tree_t *t = json_owner_tree(L, o, -1);
    check_prints_as(t->root, want, want_len);
    cJSON *copy = json_duplicate(t->root);
    json_tree_free(t); /* the copy must not point into it */
    if (copy)
        check_prints_as(copy, want, want_len);
    cJSON_Delete(copy);
    lua_settop(L, 0);
    free(tape);
}

/* Pushes the scalar edit i of the document writes: an integer, a string
 * needing escapes, a float, a boolean, a string. */
static void push_edit_value(lua_State *L, unsigned i)
{
    switch (i % 5) {
    case 0: lua_pushinteger(L, (lua_Integer)i * -7); break;
    case 1: lua_pushlstring(L, "q\"\\\n\0\x01\xc3\xa9", 8); break;
    case 2: lua_pushnumber(L, 0.1 * i); break;
    case 3: lua_pushboolean(L, i & 1); break;
    default: lua_pushliteral(L, "plain"); break;
    }
}

/* An owner of the len bytes at text (ntok tokens, scanned into a new tape)
 * with the edits ed; NULL when out of memory. */
static json_owner_t *edit_owner(lua_State *L, const char *text, size_t len, long ntok, json_edits_t *ed)
{
    json_tok_t *tape = malloc((size_t)ntok * sizeof *tape);
    if (!tape)
        return NULL;
    if (json_scan(text, len, tape, (uint32_t)ntok) != ntok)
        abort();
    json_owner_t *o = lua_newuserdatauv(L, sizeof *o, 1);
    memset(o, 0, sizeof *o);
    memset(ed, 0, sizeof *ed);
    o->text = text;
    o->text_len = len;
    o->tape = tape;
    o->ntok = (uint32_t)ntok;
    o->edits = ed;
    return o;
}

/* Writes to each object of o, as far as the edits go, a new member, and
 * its first member when that holds a scalar; each reads back as written.
 * Returns how many were kept as edits. */
static unsigned make_edits(lua_State *L, json_owner_t *o)
{
    unsigned made = 0;
    for (uint32_t k = 0; k < o->ntok; k++) {
        if (o->tape[k].type != JSON_TOK_OBJECT)
            continue;
        char key[16], buf[64];
        int kl = snprintf(key, sizeof key, "n\x01%u", k);
        size_t n;
        const json_tok_t *kt = &o->tape[k + 1];
        const char *first = o->tape[k].len && kt->len <= sizeof buf ? json_tok_string(o->text, kt, buf, &n) : NULL;
        for (int which = 0; which < 2; which++) {
            const char *name = which ? first : key;
            size_t nl = which ? n : (size_t)kl;
            push_edit_value(L, made);
            if (name && json_edit_set(L, o, k, name, nl, -1) == 0) {
                made++;
                uint32_t t = json_tape_member(o, k, name, nl);
                if (t < o->ntok)
                    abort(); /* the edit is not what a read finds */
                json_edit_push(L, o, t);
                if (!lua_compare(L, -1, -2, LUA_OPEQ))
                    abort(); /* nor what was written */
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
    }
    return made;
}

/* Edits of the compact text want (want_len bytes): spliced, it must be
 * what the tree with the edits applied prints.  The input (data, size),
 * when it has whitespace, must not be spliced. */
static void check_edits(const char *want, size_t want_len, const uint8_t *data, size_t size, long ntok)
{
    static lua_State *L;
    static json_edits_t ed;
    if (!L) {
        L = luaL_newstate();
        json_open(L);
        lua_pop(L, 1);
    }
    json_owner_t *o = edit_owner(L, want, want_len, ntok, &ed);
    if (!o)
        return;
    unsigned made = make_edits(L, o);
    size_t need = json_edit_splice(o, NULL, 0);
    char *spliced = need ? malloc(need) : NULL;
    if (!need || (spliced && json_edit_splice(o, spliced, need) != need))
        abort(); /* a compact text is always spliced */
    if (spliced && made) {
        json_tree_t *t = json_owner_tree(L, o, -1); /* applies the edits */
        if (ed.n)
            abort();
        check_prints_as(t->root, spliced, need);
    } else if (spliced && (need != want_len || memcmp(spliced, want, want_len))) {
        abort(); /* no edits: the text itself */
    }
    free(spliced);
    free((void *)o->tape);
    lua_settop(L, 0);
    if (size != want_len && (o = edit_owner(L, (const char *)data, size, ntok, &ed))) {
        make_edits(L, o);
        if (json_edit_splice(o, NULL, 0) != 0)
            abort(); /* whitespace: printed from the tree instead */
        free((void *)o->tape);
        lua_settop(L, 0);
    }
}

/* The cJSON-style tree prints JSON that reads back to the same print. */
static void check_plain_tree(const cJSON *v)
{
    size_t n1, n2;
    char *nums = NULL, *p1 = json_print(v, &n1);
    if (!p1)
        return;
    if (json_scan(p1, n1, NULL, 0) < 0)
        abort(); /* printed text must be JSON */
    cJSON *w = json_parse(p1, n1, &nums);
    if (!w)
        abort();
    char *p2 = json_print(w, &n2);
    if (p2 && (n1 != n2 || memcmp(p1, p2, n1) != 0))
        abort(); /* and print back identically */
    free(p2);
    cJSON_Delete(w);
    free(nums);
    free(p1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *nums = NULL, *xnums = NULL;
    json_init();
    long ntok = json_scan((const char *)data, size, NULL, 0);
    int ref = reference_text(data, size);
    cJSON *v = json_parse((const char *)data, size, &nums);
    cJSON *x = json_parse_exact((const char *)data, size, &xnums);
    if ((ntok >= 0) != ref)
        abort(); /* the scanner and the grammar disagree on what is JSON */
    if ((v != NULL) != ref || (x != NULL) != ref)
        abort(); /* a parser and the scanner disagree */
    if (!ref)
        return 0;
    cJSON *lax = cJSON_ParseWithLength((const char *)data, size);
    if (!lax)
        abort(); /* strict JSON that cJSON refuses */
    cJSON_Delete(lax);
    size_t want_len;
    char *want = compact(data, size, &want_len);
    if (want) {
        check_prints_as(x, want, want_len);
        check_tape_tree(data, size, ntok, want, want_len);
        check_edits(want, want_len, data, size, ntok);
    }
    free(want);
    check_numbers(v);
    check_numbers(x);
    check_plain_tree(v);
    cJSON_Delete(v);
    cJSON_Delete(x);
    free(nums);
    free(xnums);
    return 0;
}
