/* json_lua.c - JSON values in Lua: views, proxies, owners, tide.json; see
 * json_lua.h.  The codec underneath (scan, parse, print) is base/json.c. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "json_edit.h"
#include "json_lua.h"
#define PROXY_MT "tide.json.proxy" /* registry name, for luaL_testudata */
#define MAX_DEPTH 64

/* Registry keys (their addresses) of the metatables. */
static const char proxy_key = 'p', doc_key = 'd', array_key = 'a';

/* The address of this is tide.null's registry key. */
static const char null_key = 'n';

/* A JSON object or array handed to Lua: a token of its owner's tape until
 * the owner has a tree, then a node of that tree. */
typedef struct proxy {
    cJSON *node;
    json_owner_t *owner; /* its owner, kept alive by the proxy's user value */
    uint64_t serial;     /* or, for owners released_by_owner: its registration */
    uint32_t tok;
} proxy_t;

/*
 * Views of owners that are released explicitly (events, whose pipeline
 * end is certain) are registered here instead of holding their owner in a
 * user value.  Such an owner gets a serial (never reused) on its first
 * view, in slot serial % LIGHT_SLOTS; a view names the owner by serial and
 * finds it live only while the slot still holds that serial.  An object or
 * array of the tape is then a light userdata [serial:40][token:24]: no
 * allocation and nothing for the collector per view; one that has no token
 * (made by a write) is a small userdata with the serial.  With the token
 * LIGHT_OWNER_TOK the light userdata is a handle of the owner itself (the
 * event in the pipeline, see event.c).  Light userdata share one metatable
 * per state (event_open's, which sends views here); no other light userdata
 * reaches scripts.  An owner that finds its slot taken (one still live after
 * LIGHT_SLOTS newer ones) keeps the ordinary proxies.  Loop thread only.
 */
#define LIGHT_SLOTS 4096
#define LIGHT_TOK_BITS 24
#define LIGHT_TOK_MASK ((1u << LIGHT_TOK_BITS) - 1)
#define LIGHT_OWNER_TOK LIGHT_TOK_MASK /* a handle: the owner itself */
#define LIGHT_TOK_MAX (LIGHT_TOK_MASK - 1) /* the highest token of a view */
#define LIGHT_SERIAL_MAX ((UINT64_C(1) << (64 - LIGHT_TOK_BITS)) - 1)
#define NO_SERIAL UINT64_MAX /* released, or could not register */

static struct {
    uint64_t serial;
    json_owner_t *owner; /* NULL once released */
} light_slot[LIGHT_SLOTS];
static uint64_t light_next = 1;

/* Registers o for views if it can be: 1 when it is registered. */
static int light_register(json_owner_t *o)
{
    if (o->serial)
        return o->serial != NO_SERIAL;
    uint64_t s = light_next;
    size_t i = (size_t)(s % LIGHT_SLOTS);
    if (!o->released_by_owner || light_slot[i].owner || s > LIGHT_SERIAL_MAX || UINTPTR_MAX < UINT64_MAX) {
        o->serial = NO_SERIAL;
        return 0;
    }
    light_next++;
    light_slot[i].serial = s;
    light_slot[i].owner = o;
    o->serial = s;
    return 1;
}

/* The live owner registered as serial, or NULL. */
static json_owner_t *light_owner(uint64_t serial)
{
    size_t i = (size_t)(serial % LIGHT_SLOTS);
    return light_slot[i].serial == serial ? light_slot[i].owner : NULL;
}

int json_push_owner_handle(lua_State *L, json_owner_t *o)
{
    if (!light_register(o))
        return 0;
    lua_pushlightuserdata(L, (void *)(uintptr_t)(o->serial << LIGHT_TOK_BITS | LIGHT_OWNER_TOK));
    return 1;
}

int json_light_kind(lua_State *L, int idx, json_owner_t **o)
{
    return json_light_kind_of(lua_touserdata(L, idx), o);
}

int json_light_kind_of(const void *light, json_owner_t **o)
{
    uint64_t v = (uint64_t)(uintptr_t)light;
    if ((v & LIGHT_TOK_MASK) != LIGHT_OWNER_TOK)
        return JSON_LIGHT_VIEW;
    *o = light_owner(v >> LIGHT_TOK_BITS);
    return JSON_LIGHT_OWNER;
}

typedef struct document {
    json_owner_t owner;
    json_tree_t t;
} document_t;

/* ---- reading a tape ------------------------------------------------------------ */

/* memcmp(a, b, n) == 0 without a call for the short keys scripts use. */
static inline int same_bytes(const char *a, const char *b, size_t n)
{
    if (n > 16)
        return memcmp(a, b, n) == 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* The value token of the nth member named key of object token obj. */
static uint32_t tape_member_nth(const json_owner_t *o, uint32_t obj, const char *key, size_t klen, unsigned nth)
{
    const json_tok_t *tape = o->tape;
    uint32_t k = obj + 1;
    for (uint32_t m = 0; m < tape[obj].len; m++) {
        const json_tok_t *kt = &tape[k];
        const unsigned char *ks = (const unsigned char *)o->text + kt->start;
        int same = kt->flags & JSON_TOK_PLAIN ? kt->len == klen && same_bytes((const char *)ks, key, klen)
                                              : json_escaped_equals(ks, ks + kt->len, key, klen);
        if (same && --nth == 0)
            return k + 1;
        k = tape[k + 1].next;
    }
    return JSON_NO_TOK;
}

uint32_t json_tape_member_nth(const json_owner_t *o, uint32_t obj, const char *key, size_t klen, unsigned nth)
{
    return tape_member_nth(o, obj, key, klen, nth);
}

uint32_t json_tape_member(const json_owner_t *o, uint32_t obj, const char *key, size_t klen)
{
    if (o->edits && o->edits->n) {
        uint32_t e = json_edit_find(o, obj, key, klen);
        if (e != JSON_NO_TOK)
            return e;
    }
    return tape_member_nth(o, obj, key, klen, 1);
}

/* json_is_digit without a call: numbers are read on the hot path. */
static inline int is_digit(char c)
{
    return (unsigned char)(c - '0') < 10;
}

int json_number_text_integer(const char *s, size_t n, lua_Integer *v)
{
    char buf[32];
    size_t i = 0;
    int neg = 0;
    lua_Integer x = 0;
    if (n && s[0] == '-')
        neg = 1, i = 1;
    if (n <= 18 && n > i) {
        /* Up to 18 digits always fit in 64 bits. */
        for (; i < n && is_digit(s[i]); i++)
            x = x * 10 + (s[i] - '0');
        if (i == n) {
            *v = neg ? -x : x;
            return 1;
        }
        return 0;
    }
    if (n >= sizeof buf || memchr(s, '.', n) || memchr(s, 'e', n) || memchr(s, 'E', n))
        return 0;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end;
    errno = 0;
    long long ll = strtoll(buf, &end, 10);
    if (errno || *end != '\0' || end == buf)
        return 0;
    *v = (lua_Integer)ll;
    return 1;
}

void json_push_number_text(lua_State *L, const char *s, size_t n)
{
    char small[64], *buf = small;
    size_t i = 0;
    int neg = 0, plain = n <= 18;
    /* Up to 18 digits always fit in 64 bits: the common case needs no libc. */
    if (plain && s[0] == '-')
        neg = 1, i = 1;
    lua_Integer v = 0;
    for (size_t j = i; plain && j < n; j++) {
        if (!is_digit(s[j]))
            plain = 0;
        else
            v = v * 10 + (s[j] - '0');
    }
    if (plain && n > (size_t)neg) {
        lua_pushinteger(L, neg ? -v : v);
        return;
    }
    if (n >= sizeof small) {
        /* A long text: its copy lives in a userdata, so an error frees it. */
        buf = lua_newuserdatauv(L, n + 1, 0);
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    lua_Number d = 0;
    if (!strpbrk(buf, ".eE")) {
        char *end;
        errno = 0;
        long long ll = strtoll(buf, &end, 10);
        if (errno == 0 && *end == '\0') {
            if (buf != small)
                lua_pop(L, 1);
            lua_pushinteger(L, (lua_Integer)ll);
            return;
        }
    }
    d = strtod(buf, NULL);
    if (buf != small)
        lua_pop(L, 1);
    lua_pushnumber(L, d);
}

static void push_proxy(lua_State *L, json_owner_t *o, cJSON *node, uint32_t tok, int owner_idx, int mt_idx);

void json_push_tok(lua_State *L, json_owner_t *o, uint32_t tok, int owner_idx, int mt_idx)
{
    if (tok >= o->ntok) {
        json_edit_push(L, o, tok); /* a value an edit set */
        return;
    }
    const json_tok_t *t = &o->tape[tok];
    switch (t->type) {
    case JSON_TOK_NULL:
        json_push_null(L);
        return;
    case JSON_TOK_FALSE:
        lua_pushboolean(L, 0);
        return;
    case JSON_TOK_TRUE:
        lua_pushboolean(L, 1);
        return;
    case JSON_TOK_NUMBER:
        json_push_number_text(L, o->text + t->start, t->len);
        return;
    case JSON_TOK_STRING: {
        size_t n;
        if (t->flags & JSON_TOK_PLAIN) {
            lua_pushlstring(L, o->text + t->start, t->len);
            return;
        }
        luaL_Buffer b;
        char *buf = luaL_buffinitsize(L, &b, t->len + 1);
        json_tok_string(o->text, t, buf, &n); /* not plain: decoded into buf, NULs and all */
        luaL_pushresultsize(&b, n);
        return;
    }
    default:
        push_proxy(L, o, NULL, tok, owner_idx, mt_idx);
    }
}

/* ---- trees from tapes ------------------------------------------------------------ */

/* The owner's exact tree (json_tree_from_tape), with the node of every
 * token for views read before it. */
static int tree_from_tape(const json_owner_t *o, json_tree_t *t)
{
    t->nodes = calloc(o->ntok, sizeof *t->nodes);
    if (!t->nodes)
        return -1;
    t->root = json_tree_from_tape(o->text, o->text_len, o->tape, o->ntok, 1, t->nodes, &t->nums);
    return t->root ? 0 : -1;
}

static document_t *new_document(lua_State *L);

json_tree_t *json_owner_tree(lua_State *L, json_owner_t *o, int owner_idx)
{
    if (o->tree)
        return o->tree;
    if (o->released_by_owner) {
        /* C memory, freed by json_owner_release. */
        json_tree_t *t = calloc(1, sizeof *t);
        if (!t || (o->tape && tree_from_tape(o, t) < 0)) {
            if (t)
                json_tree_free(t);
            free(t);
            luaL_error(L, "out of memory");
        }
        o->tree = t;
        json_edit_apply(L, o);
        return t;
    }
    owner_idx = lua_absindex(L, owner_idx);
    document_t *d = new_document(L); /* frees a half-built tree if this fails */
    if (o->tape && tree_from_tape(o, &d->t) < 0)
        luaL_error(L, "out of memory");
    lua_setiuservalue(L, owner_idx, JSON_OWNER_UV);
    o->tree = &d->t;
    json_edit_apply(L, o);
    return o->tree;
}

static int push_cstring(lua_State *L)
{
    lua_pushstring(L, lua_touserdata(L, 1));
    return 1;
}

int json_push_text(lua_State *L, const cJSON *v)
{
    size_t n;
    char *s = json_print(v, &n);
    if (!s)
        return -1;
    /* Pushing allocates and may raise: protected, so s is freed either way. */
    lua_pushcfunction(L, push_cstring);
    lua_pushlightuserdata(L, s);
    int rc = lua_pcall(L, 1, 1, 0);
    free(s);
    if (rc != LUA_OK) {
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

/* ---- owners ---------------------------------------------------------------- */

void json_tree_free(json_tree_t *t)
{
    cJSON_Delete(t->root);
    cJSON_Delete(t->discarded);
    free(t->nums);
    free(t->nodes);
    memset(t, 0, sizeof *t);
}

void json_owner_release(json_owner_t *o)
{
    if (o->serial && o->serial != NO_SERIAL) {
        size_t i = (size_t)(o->serial % LIGHT_SLOTS);
        if (light_slot[i].serial == o->serial)
            light_slot[i].owner = NULL;
    }
    o->serial = NO_SERIAL;
    o->dead = 1;
    if (o->edits)
        o->edits->n = o->edits->used = 0;
    if (o->tree) {
        json_tree_free(o->tree);
        if (o->released_by_owner)
            free(o->tree); /* otherwise its holder goes with the collector, empty */
        o->tree = NULL;
    }
}

void json_owner_discard(json_owner_t *o, cJSON *node)
{
    json_tree_t *t = o->tree;
    if (!node || !t)
        return;
    if (!t->discarded)
        t->discarded = cJSON_CreateArray();
    if (!t->discarded || !cJSON_AddItemToArray(t->discarded, node)) {
        /* No room to keep it: the one place a stale proxy could read freed
         * memory; leaking is the safe choice. */
        return;
    }
}

/* Puts replacement where item is in parent's list and detaches item without
 * freeing it (cJSON's own replace frees it).  cJSON keeps the list's last
 * item in child->prev; this follows its rules. */
static void replace_keep(cJSON *parent, cJSON *item, cJSON *replacement)
{
    replacement->next = item->next;
    replacement->prev = item->prev;
    if (replacement->next)
        replacement->next->prev = replacement;
    if (parent->child == item) {
        if (parent->child->prev == parent->child)
            replacement->prev = replacement;
        parent->child = replacement;
    } else {
        if (replacement->prev)
            replacement->prev->next = replacement;
        if (!replacement->next)
            parent->child->prev = replacement;
    }
    item->next = item->prev = NULL;
}

static void unset_from(json_owner_t *o, cJSON *parent, cJSON *from, const char *key, size_t klen);

int json_object_set(json_owner_t *o, cJSON *parent, const char *key, size_t klen, cJSON *v)
{
    const int key_flags = cJSON_StringIsConst | JSON_KEY_SPELLED | JSON_KEY_PLAIN;
    cJSON *old = json_object_get(parent, key, klen, 1);
    if (old) {
        /* The key moves over with its flags; the old value is kept aside,
         * and so are the pairs repeating the key: one pair is left. */
        unset_from(o, parent, old->next, key, klen);
        if (v->string && !(v->type & cJSON_StringIsConst))
            cJSON_free(v->string);
        v->string = old->string;
        v->type = (v->type & ~key_flags) | (old->type & key_flags);
        old->string = NULL;
        old->type &= ~key_flags;
        replace_keep(parent, old, v);
        json_owner_discard(o, old);
        return 0;
    }
    if (json_set_key(v, key, klen) < 0) {
        cJSON_Delete(v);
        return -1;
    }
    cJSON_AddItemToArray(parent, v); /* links it in, key untouched */
    return 0;
}

/* Removes every member of parent named key from `from` on, discarding them
 * into o. */
static void unset_from(json_owner_t *o, cJSON *parent, cJSON *from, const char *key, size_t klen)
{
    while (from) {
        cJSON *next = from->next;
        if (json_key_equals(from, key, klen))
            json_owner_discard(o, cJSON_DetachItemViaPointer(parent, from));
        from = next;
    }
}

void json_object_unset(json_owner_t *o, cJSON *parent, const char *key, size_t klen)
{
    unset_from(o, parent, parent->child, key, klen);
}

/* ---- null ------------------------------------------------------------------ */

static void open_proxy_metatable(lua_State *L);

void json_push_proxy_metatable(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key) == LUA_TNIL) {
        lua_pop(L, 1);
        open_proxy_metatable(L); /* first use in this state */
        lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key);
    }
}

void json_push_null(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key);
}

int json_is_null(lua_State *L, int idx)
{
    int r;
    if (lua_type(L, idx) != LUA_TTABLE)
        return 0;
    idx = lua_absindex(L, idx);
    json_push_null(L);
    r = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return r;
}

/* ---- JSON -> Lua --------------------------------------------------------- */

void json_push_number(lua_State *L, const cJSON *n)
{
    if ((n->type & 0xff) == cJSON_Raw && n->valuestring) {
        json_push_number_text(L, n->valuestring, strlen(n->valuestring));
        return;
    }
    double d = n->valuedouble;
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
        lua_pushinteger(L, (lua_Integer)d);
    else
        lua_pushnumber(L, d);
}

/*
 * The proxy at idx (a userdata, or a light view decoded into *scratch) and
 * its owner, or an error when the owner's event has ended.  Metamethods
 * are only reachable through the proxy metatable, so idx holds a proxy.
 */
static proxy_t *live_view(lua_State *L, int is_light, const void *light, proxy_t *p, json_owner_t **owner);

static proxy_t *live_proxy(lua_State *L, int idx, proxy_t *scratch, json_owner_t **owner)
{
    if (lua_islightuserdata(L, idx))
        return live_view(L, 1, lua_touserdata(L, idx), scratch, owner);
    return live_view(L, 0, NULL, lua_touserdata(L, idx), owner);
}

/* live_proxy for the view whose light userdata value is light (is_light;
 * p is scratch space), or for the userdata proxy p. */
static proxy_t *live_view(lua_State *L, int is_light, const void *light, proxy_t *p, json_owner_t **owner)
{
    json_owner_t *o;
    if (is_light) {
        uint64_t v = (uint64_t)(uintptr_t)light;
        p->serial = v >> LIGHT_TOK_BITS;
        p->tok = (uint32_t)(v & LIGHT_TOK_MASK);
        p->node = NULL;
        o = p->owner = light_owner(p->serial);
        if (o && p->tok >= o->ntok)
            o = NULL; /* not a view this owner made */
    } else {
        o = p->serial ? light_owner(p->serial) : p->owner;
    }
    if (!o || o->dead)
        luaL_error(L, "this JSON value belongs to an event whose pipeline has ended");
    if (!p->node && o->tree) {
        /* The owner has had a tree built since: the node for the token. */
        cJSON *n = o->tree->nodes ? o->tree->nodes[p->tok] : NULL;
        if (!n)
            luaL_error(L, "this JSON value belongs to an event whose pipeline has ended");
        p->node = n; /* kept by a userdata proxy, for this call by a view */
    }
    if (!p->node && !o->tape)
        luaL_error(L, "this JSON value belongs to an event whose pipeline has ended");
    if (owner)
        *owner = o;
    return p;
}

/* The same, once the owner has a tree (built now if needed): p->node is set. */
static proxy_t *tree_proxy(lua_State *L, int idx, proxy_t *scratch, json_owner_t **owner)
{
    json_owner_t *o;
    proxy_t *p = live_proxy(L, idx, scratch, &o);
    if (!p->node) {
        if (o->released_by_owner) {
            json_owner_tree(L, o, 0);
        } else {
            lua_getiuservalue(L, idx, 1);
            json_owner_tree(L, o, -1);
            lua_pop(L, 1);
        }
        p = live_proxy(L, idx, scratch, &o);
    }
    if (owner)
        *owner = o;
    return p;
}

/*
 * Pushes a proxy for node (or, node NULL, token tok) of owner o.  owner_idx:
 * where o's userdata is, needed only for owners that are collected rather
 * than released (0 otherwise).  mt_idx: where the proxy metatable is at
 * hand (a closure's upvalue), or 0.
 */
static void push_proxy(lua_State *L, json_owner_t *o, cJSON *node, uint32_t tok, int owner_idx, int mt_idx)
{
    int reg = o->released_by_owner && light_register(o);
    if (reg && !node && tok <= LIGHT_TOK_MAX) {
        lua_pushlightuserdata(L, (void *)(uintptr_t)(o->serial << LIGHT_TOK_BITS | tok));
        return;
    }
    if (!reg)
        owner_idx = lua_absindex(L, owner_idx);
    proxy_t *p = lua_newuserdatauv(L, sizeof *p, reg ? 0 : 1);
    p->node = node;
    p->tok = tok;
    p->owner = reg ? NULL : o;
    p->serial = reg ? o->serial : 0;
    if (mt_idx)
        lua_pushvalue(L, mt_idx);
    else
        lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key);
    lua_setmetatable(L, -2);
    if (!reg) {
        lua_pushvalue(L, owner_idx);
        lua_setiuservalue(L, -2, 1);
    }
}

/* Pushes the bytes of string node v (json_is_string), or of v's key (key
 * set), NULs included. */
static void push_string_node(lua_State *L, const cJSON *v, int key)
{
    const char *text = key ? v->string : v->valuestring;
    if (!text || !(key ? v->type & JSON_KEY_SPELLED : (v->type & 0xff) == cJSON_Raw)) {
        lua_pushstring(L, text ? text : "");
        return;
    }
    luaL_Buffer b;
    size_t n;
    char *buf = luaL_buffinitsize(L, &b, strlen(text) + 1);
    if (key)
        json_key_bytes(v, buf, &n);
    else
        json_string_bytes(v, buf, &n);
    luaL_pushresultsize(&b, n);
}

/* json_push for a node of owner o (owner_idx as for push_proxy). */
static void push_node(lua_State *L, cJSON *v, json_owner_t *o, int owner_idx)
{
    switch (v ? v->type & 0xff : cJSON_NULL) {
    case cJSON_NULL:
        json_push_null(L);
        return;
    case cJSON_False:
        lua_pushboolean(L, 0);
        return;
    case cJSON_True:
        lua_pushboolean(L, 1);
        return;
    case cJSON_Raw:
        if (json_is_string(v)) {
            push_string_node(L, v, 0);
            return;
        }
        /* FALLTHROUGH */
    case cJSON_Number:
        json_push_number(L, v);
        return;
    case cJSON_String:
        lua_pushstring(L, v->valuestring ? v->valuestring : "");
        return;
    case cJSON_Object:
    case cJSON_Array:
        push_proxy(L, o, v, 0, owner_idx, 0);
        return;
    default:
        lua_pushnil(L);
    }
}

void json_push_string(lua_State *L, const cJSON *v)
{
    push_string_node(L, v, 0);
}

void json_push_key(lua_State *L, const cJSON *item)
{
    push_string_node(L, item, 1);
}

void json_push(lua_State *L, cJSON *v, int owner_idx)
{
    /* Owners are userdata starting with json_owner_t. */
    push_node(L, v, lua_touserdata(L, owner_idx), owner_idx);
}

/* ---- Lua -> JSON --------------------------------------------------------- */

static cJSON *raw_number(lua_State *L, const char *text)
{
    cJSON *n = cJSON_CreateRaw(text);
    if (!n)
        luaL_error(L, "out of memory");
    return n;
}

size_t json_integer_text(lua_Integer i, char buf[JSON_NUMBER_TEXT_MAX])
{
    /* As "%lld" prints it, without printf's cost on the hot path. */
    char digits[24], *p = digits + sizeof digits;
    unsigned long long u = i < 0 ? 0 - (unsigned long long)i : (unsigned long long)i;
    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (i < 0)
        *--p = '-';
    size_t n = (size_t)(digits + sizeof digits - p);
    memcpy(buf, p, n);
    buf[n] = '\0';
    return n;
}

size_t json_number_text(lua_State *L, int idx, char buf[JSON_NUMBER_TEXT_MAX])
{
    if (lua_isinteger(L, idx))
        return json_integer_text(lua_tointeger(L, idx), buf);
    lua_Number d = lua_tonumber(L, idx);
    if (isnan(d) || isinf(d))
        luaL_error(L, "cannot encode %s as JSON", isnan(d) ? "NaN" : "infinity");
    /* The shortest text that reads back as the same double. */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, JSON_NUMBER_TEXT_MAX, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    if (!strpbrk(buf, ".eE"))
        strcat(buf, ".0"); /* keep it a float when read back */
    return strlen(buf);
}

typedef struct lua_key {
    const char *s;
    size_t n;
} lua_key_t;

/* Byte order, a key before the longer keys it starts (strcmp's order for
 * keys without a NUL). */
static int cmp_keys(const void *a, const void *b)
{
    const lua_key_t *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

static cJSON *from_lua(lua_State *L, int idx, int depth);

/* The object for the table at idx, which has n pairs: its keys must be
 * strings; written sorted so output is stable. */
static cJSON *object_value(lua_State *L, int idx, int depth, size_t n)
{
    lua_key_t *keys = lua_newuserdatauv(L, (n ? n : 1) * sizeof *keys, 0);
    int keys_idx = lua_gettop(L);
    size_t k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "cannot encode as JSON: object key of type %s (keys must be strings)",
                       luaL_typename(L, -1));
        keys[k].s = lua_tolstring(L, -1, &keys[k].n); /* anchored by the table itself */
        k++;
    }
    qsort(keys, k, sizeof *keys, cmp_keys);
    cJSON *out = cJSON_CreateObject();
    if (!out)
        luaL_error(L, "out of memory");
    json_push_document(L, out, NULL); /* the holder frees it if a child raises */
    int holder = lua_gettop(L);
    for (size_t i = 0; i < k; i++) {
        lua_pushlstring(L, keys[i].s, keys[i].n);
        lua_gettable(L, idx);
        cJSON *e = from_lua(L, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
        if (json_set_key(e, keys[i].s, keys[i].n) < 0) {
            cJSON_Delete(e);
            luaL_error(L, "out of memory");
        }
        cJSON_AddItemToArray(out, e); /* links it in, key untouched */
    }
    ((document_t *)lua_touserdata(L, holder))->t.root = NULL; /* released to the caller */
    lua_remove(L, holder);
    lua_remove(L, keys_idx);
    return out;
}

static cJSON *table_value(lua_State *L, int idx, int depth)
{
    size_t n = 0, maxkey = 0;
    int all_int = 1;
    cJSON *out;

    if (depth > MAX_DEPTH)
        luaL_error(L, "cannot encode as JSON: nesting deeper than %d (a cycle?)", MAX_DEPTH);
    luaL_checkstack(L, 8, "json encode");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        n++;
        if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
            size_t k = (size_t)lua_tointeger(L, -2);
            if (k > maxkey)
                maxkey = k;
        } else {
            all_int = 0;
        }
        lua_pop(L, 1);
    }
    int is_array = (n > 0 && all_int && maxkey == n);
    if (n == 0 && lua_getmetatable(L, idx)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key);
        is_array = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    if (is_array) {
        /* Built inside a holder the GC owns, so that a child raising an
         * error does not leak what was built so far. */
        out = cJSON_CreateArray();
        if (!out)
            luaL_error(L, "out of memory");
        json_push_document(L, out, NULL); /* the holder frees it if a child raises */
        int holder = lua_gettop(L);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i);
            cJSON *e = from_lua(L, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
            if (!cJSON_AddItemToArray(out, e)) {
                cJSON_Delete(e);
                luaL_error(L, "out of memory");
            }
        }
        ((document_t *)lua_touserdata(L, holder))->t.root = NULL; /* released to the caller */
        lua_remove(L, holder);
        return out;
    }
    return object_value(L, idx, depth, n);
}

static cJSON *from_lua(lua_State *L, int idx, int depth)
{
    cJSON *v = NULL;
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        v = cJSON_CreateNull();
        break;
    case LUA_TBOOLEAN:
        v = cJSON_CreateBool(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER: {
        char buf[JSON_NUMBER_TEXT_MAX];
        json_number_text(L, idx, buf);
        return raw_number(L, buf);
    }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        v = json_new_string(s, len);
        break;
    }
    case LUA_TTABLE:
        if (json_is_null(L, idx)) {
            v = cJSON_CreateNull();
            break;
        }
        return table_value(L, idx, depth);
    case LUA_TLIGHTUSERDATA: { /* views and event handles: the only light userdata scripts see */
        json_owner_t *handle;
        if (json_light_kind(L, idx, &handle) == JSON_LIGHT_OWNER)
            luaL_error(L, "cannot encode an event as JSON (its data or raw bytes can be)");
    }
        /* FALLTHROUGH */
    case LUA_TUSERDATA:
        if (lua_type(L, idx) == LUA_TLIGHTUSERDATA || luaL_testudata(L, idx, PROXY_MT)) {
            /* A copy: e.data.a = e.data.b must not alias the two. */
            proxy_t scratch, *p = tree_proxy(L, idx, &scratch, NULL);
            v = json_duplicate(p->node);
            break;
        }
        /* FALLTHROUGH */
    default:
        luaL_error(L, "cannot encode a %s as JSON", luaL_typename(L, idx));
    }
    if (!v)
        luaL_error(L, "out of memory");
    return v;
}

cJSON *json_from_lua(lua_State *L, int idx)
{
    return from_lua(L, idx, 0);
}

/* ---- proxies ------------------------------------------------------------ */

/* Where a child of the proxy at 1 finds its owner's userdata: pushed for
 * owners that are collected, 0 (unused) for released ones. */
static int child_owner_idx(lua_State *L, const json_owner_t *o)
{
    if (o->released_by_owner && o->serial != NO_SERIAL)
        return 0;
    lua_getiuservalue(L, 1, 1); /* nested proxies share the owner */
    return lua_gettop(L);
}

/* Pushes the member of the proxy p (of owner o, at stack index 1) named by
 * the key at stack index 2: an array's element, or the nth pair of an
 * object with that key.  Returns 0 (nil pushed) when there is none.
 * mt_idx: as for json_push_tok. */
static int push_child(lua_State *L, proxy_t *p, json_owner_t *o, unsigned nth, int mt_idx)
{
    int is_key = lua_type(L, 2) == LUA_TSTRING;
    if (!p->node) {
        const json_tok_t *t = &o->tape[p->tok];
        uint32_t child = JSON_NO_TOK;
        if (t->type == JSON_TOK_ARRAY) {
            if (lua_isinteger(L, 2)) {
                lua_Integer i = lua_tointeger(L, 2);
                if (i >= 1 && i <= (lua_Integer)t->len) {
                    child = p->tok + 1;
                    while (--i > 0)
                        child = o->tape[child].next;
                }
            }
        } else if (is_key) {
            size_t kl;
            const char *k = lua_tolstring(L, 2, &kl);
            child = nth == 1 ? json_tape_member(o, p->tok, k, kl) : tape_member_nth(o, p->tok, k, kl, nth);
        }
        if (child == JSON_NO_TOK) {
            lua_pushnil(L);
            return 0;
        }
        int ct = json_tok_type(o, child), oi = 0;
        if (ct == JSON_TOK_OBJECT || ct == JSON_TOK_ARRAY)
            oi = child_owner_idx(L, o);
        json_push_tok(L, o, child, oi, mt_idx);
        return 1;
    }
    cJSON *child = NULL;
    if (cJSON_IsArray(p->node)) {
        if (lua_isinteger(L, 2)) {
            lua_Integer i = lua_tointeger(L, 2);
            if (i >= 1 && i <= INT32_MAX)
                child = cJSON_GetArrayItem(p->node, (int)i - 1);
        }
    } else if (is_key) {
        size_t kl;
        const char *k = lua_tolstring(L, 2, &kl);
        child = json_object_get(p->node, k, kl, nth);
    }
    if (!child) {
        lua_pushnil(L);
        return 0;
    }
    push_node(L, child, o, child_owner_idx(L, o));
    return 1;
}

int json_proxy_index(lua_State *L)
{
    json_owner_t *o;
    proxy_t scratch, *p = live_proxy(L, 1, &scratch, &o);
    push_child(L, p, o, 1, lua_upvalueindex(1));
    return 1;
}

int json_view_index(lua_State *L, const void *light)
{
    json_owner_t *o;
    proxy_t scratch, *p = live_view(L, 1, light, &scratch, &o);
    push_child(L, p, o, 1, lua_upvalueindex(1));
    return 1;
}

static int proxy_newindex(lua_State *L, proxy_t *p, proxy_t *scratch, json_owner_t *o);

int json_proxy_newindex(lua_State *L)
{
    json_owner_t *o;
    proxy_t scratch, *p = live_proxy(L, 1, &scratch, &o);
    return proxy_newindex(L, p, &scratch, o);
}

int json_view_newindex(lua_State *L, const void *light)
{
    json_owner_t *o;
    proxy_t scratch, *p = live_view(L, 1, light, &scratch, &o);
    return proxy_newindex(L, p, &scratch, o);
}

/* p[2] = 3 for the live proxy p (or view: scratch) at 1, of owner o. */
static int proxy_newindex(lua_State *L, proxy_t *p, proxy_t *scratch, json_owner_t *o)
{
    if (!p->node && o->edits && lua_type(L, 2) == LUA_TSTRING) {
        size_t kl;
        const char *k = lua_tolstring(L, 2, &kl);
        if (json_edit_set(L, o, p->tok, k, kl, 3) == 0) {
            o->dirty = 1;
            return 0;
        }
    }
    p = tree_proxy(L, 1, scratch, &o);
    if (cJSON_IsArray(p->node)) {
        lua_Integer i = luaL_checkinteger(L, 2);
        int n = cJSON_GetArraySize(p->node);
        if (i < 1 || i > (lua_Integer)n + 1)
            return luaL_error(L, "JSON array index %d out of range 1..%d", (int)i, n + 1);
        if (lua_isnil(L, 3)) {
            if (i != n)
                return luaL_error(L, "cannot leave a hole in a JSON array (use tide.null)");
            json_owner_discard(o, cJSON_DetachItemFromArray(p->node, (int)i - 1));
        } else {
            cJSON *v = json_from_lua(L, 3);
            if (i == (lua_Integer)n + 1) {
                cJSON_AddItemToArray(p->node, v);
            } else {
                cJSON *old = cJSON_GetArrayItem(p->node, (int)i - 1);
                replace_keep(p->node, old, v);
                json_owner_discard(o, old);
            }
        }
    } else {
        if (lua_type(L, 2) != LUA_TSTRING)
            return luaL_error(L, "JSON object keys must be strings, got %s", luaL_typename(L, 2));
        size_t kl;
        const char *k = lua_tolstring(L, 2, &kl);
        if (lua_isnil(L, 3))
            json_object_unset(o, p->node, k, kl);
        else if (json_object_set(o, p->node, k, kl, json_from_lua(L, 3)) < 0)
            return luaL_error(L, "out of memory");
    }
    o->dirty = 1;
    return 0;
}

int json_proxy_len(lua_State *L)
{
    json_owner_t *o;
    proxy_t scratch, *p = live_proxy(L, 1, &scratch, &o);
    if (!p->node && json_edit_touches(o, p->tok))
        p = tree_proxy(L, 1, &scratch, &o); /* members an edit added count */
    if (!p->node) {
        lua_pushinteger(L, (lua_Integer)o->tape[p->tok].len);
        return 1;
    }
    lua_pushinteger(L, cJSON_GetArraySize(p->node)); /* members of an object too */
    return 1;
}

int json_proxy_tostring(lua_State *L)
{
    proxy_t scratch, *p = tree_proxy(L, 1, &scratch, NULL);
    size_t n;
    char *s = json_print(p->node, &n);
    if (!s)
        return luaL_error(L, "out of memory");
    lua_pushlstring(L, s, n);
    free(s);
    return 1;
}

/*
 * pairs(): a snapshot of the keys in document order, then lookups, so that
 * a script may change or remove members while it iterates.  A key that
 * repeats (an object with duplicate keys) is looked up as the same pair:
 * the snapshot keeps, at n + i, which of the pairs with its key the i-th
 * is, when not the first.  A pair gone by the time it is reached is
 * skipped.  Upvalues: the snapshot, the last position, n.
 */
static int proxy_next(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2)), n = lua_tointeger(L, lua_upvalueindex(3));
    while (i < n) {
        i++;
        lua_pushinteger(L, i);
        lua_replace(L, lua_upvalueindex(2));
        json_owner_t *o;
        proxy_t scratch, *p = live_proxy(L, 1, &scratch, &o);
        unsigned nth = 1;
        if (lua_rawgeti(L, lua_upvalueindex(1), n + i) == LUA_TNUMBER)
            nth = (unsigned)lua_tointeger(L, -1);
        lua_settop(L, 1);
        lua_rawgeti(L, lua_upvalueindex(1), i); /* the key, at 2 */
        if (push_child(L, p, o, nth, 0)) {
            lua_pushvalue(L, 2); /* push_child may have pushed more than the value */
            lua_insert(L, -2);
            return 2;
        }
    }
    lua_pushnil(L);
    return 1;
}

/* Stores the key on top of the stack (popped) as the i-th of the snapshot
 * at t (n keys in all), noting which pair it is when its key came before.
 * seen: a filter of the keys so far (64 bits), or 0 with counts, a table
 * of key -> pairs so far, for large objects. */
static void snapshot_key(lua_State *L, int t, lua_Integer i, lua_Integer n, uint64_t *seen, int counts)
{
    lua_Integer nth = 1;
    if (counts) {
        lua_pushvalue(L, -1);
        nth = lua_rawget(L, counts) == LUA_TNUMBER ? lua_tointeger(L, -1) + 1 : 1;
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushinteger(L, nth);
        lua_rawset(L, counts);
    } else {
        size_t len;
        const unsigned char *k = (const unsigned char *)lua_tolstring(L, -1, &len);
        uint64_t bit = UINT64_C(1) << ((len * 31 + (len ? k[0] + k[len - 1] * 7u : 0)) & 63);
        for (lua_Integer j = 1; (*seen & bit) && j < i; j++) {
            lua_rawgeti(L, t, j);
            nth += lua_rawequal(L, -1, -2);
            lua_pop(L, 1);
        }
        *seen |= bit;
    }
    if (nth > 1) {
        lua_pushinteger(L, nth);
        lua_rawseti(L, t, n + i);
    }
    lua_rawseti(L, t, i);
}

int json_proxy_pairs(lua_State *L)
{
    json_owner_t *o;
    proxy_t scratch, *p = live_proxy(L, 1, &scratch, &o);
    if (!p->node && json_edit_touches(o, p->tok))
        p = tree_proxy(L, 1, &scratch, &o); /* the tree has the members edits added, in order */
    int is_array = p->node ? cJSON_IsArray(p->node) : o->tape[p->tok].type == JSON_TOK_ARRAY;
    lua_Integer n = p->node ? cJSON_GetArraySize(p->node) : (lua_Integer)o->tape[p->tok].len, i = 0;
    uint64_t seen = 0;
    int counts = 0;
    lua_createtable(L, (int)n, 0);
    int t = lua_gettop(L);
    if (!is_array && n > 64) {
        lua_createtable(L, 0, (int)n);
        counts = t + 1;
    }
    if (!p->node) {
        uint32_t k = p->tok + 1;
        for (; i < n; i++) {
            if (is_array) {
                lua_pushinteger(L, i + 1);
                lua_rawseti(L, t, i + 1);
                k = o->tape[k].next;
                continue;
            }
            const json_tok_t *kt = &o->tape[k];
            if (kt->flags & JSON_TOK_PLAIN) {
                lua_pushlstring(L, o->text + kt->start, kt->len);
            } else {
                size_t len;
                char *buf = lua_newuserdatauv(L, kt->len + 1, 0);
                json_tok_string(o->text, kt, buf, &len); /* decoded into buf */
                lua_pushlstring(L, buf, len);
                lua_remove(L, -2);
            }
            snapshot_key(L, t, i + 1, n, &seen, counts);
            k = o->tape[k + 1].next;
        }
    } else {
        for (cJSON *c = p->node->child; c && i < n; c = c->next, i++) {
            if (is_array) {
                lua_pushinteger(L, i + 1);
                lua_rawseti(L, t, i + 1);
                continue;
            }
            push_string_node(L, c, 1);
            snapshot_key(L, t, i + 1, n, &seen, counts);
        }
    }
    lua_settop(L, t);
    lua_pushinteger(L, 0);
    lua_pushinteger(L, n);
    lua_pushcclosure(L, proxy_next, 3);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* ---- standalone documents -------------------------------------------------- */

static int document_gc(lua_State *L)
{
    document_t *d = lua_touserdata(L, 1);
    json_tree_free(&d->t);
    d->owner.dead = 1;
    return 0;
}

static document_t *new_document(lua_State *L)
{
    document_t *d = lua_newuserdatauv(L, sizeof *d, 0);
    memset(d, 0, sizeof *d);
    d->owner.tree = &d->t;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &doc_key);
    lua_setmetatable(L, -2);
    return d;
}

void json_push_document(lua_State *L, cJSON *tree, char *nums)
{
    document_t *d = new_document(L);
    d->t.root = tree;
    d->t.nums = nums;
}

/* ---- tide.json ------------------------------------------------------------- */

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    cJSON *v = json_from_lua(L, 1);
    json_push_document(L, v, NULL); /* freed by the GC even if printing fails */
    size_t n;
    char *s = json_print(v, &n);
    if (!s)
        return luaL_error(L, "out of memory");
    lua_pushlstring(L, s, n);
    free(s);
    return 1;
}

static int l_decode(lua_State *L)
{
    size_t n;
    char *nums;
    const char *s = luaL_checklstring(L, 1, &n);
    cJSON *v = json_parse_exact(s, n, &nums);
    if (!v) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid JSON");
        return 2;
    }
    json_push_document(L, v, nums);
    json_push(L, v, -1);
    return 1;
}

static int l_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    else
        luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key);
    lua_setmetatable(L, 1);
    return 1;
}

static int null_tostring(lua_State *L)
{
    lua_pushliteral(L, "null");
    return 1;
}

/* Creates a metatable stored in the registry under the address `key`,
 * hidden from getmetatable(). */
static void new_metatable(lua_State *L, const void *key, const char *name, const luaL_Reg *fns)
{
    lua_newtable(L);
    if (fns)
        luaL_setfuncs(L, fns, 0);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* Makes the proxies' metatable (once per state: json_push_proxy_metatable). */
static void open_proxy_metatable(lua_State *L)
{
    static const luaL_Reg proxy_mt[] = {{"__newindex", json_proxy_newindex}, {"__len", json_proxy_len},
                                        {"__tostring", json_proxy_tostring},  {"__pairs", json_proxy_pairs},
                                        {NULL, NULL}};
    new_metatable(L, &proxy_key, "json", proxy_mt);
    /* __index has the metatable as its upvalue: nested proxies are made
     * without a registry lookup. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key);
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, json_proxy_index, 1);
    lua_setfield(L, -2, "__index");
    /* luaL_testudata looks metatables up by name: register it so too. */
    lua_setfield(L, LUA_REGISTRYINDEX, PROXY_MT);
}

void json_open(lua_State *L)
{
    static const luaL_Reg doc_mt[] = {{"__gc", document_gc}, {NULL, NULL}};
    json_init();
    json_push_proxy_metatable(L); /* made here unless event_open made it */
    lua_pop(L, 1);
    new_metatable(L, &doc_key, "json document", doc_mt);
    /* The array mark is shared by every tide.array(): locked like the rest
     * (a script must not reach it, e.g. to add a __gc). */
    lua_newtable(L);
    lua_pushliteral(L, "json array");
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &array_key);

    /* tide.null: an empty table with a locked metatable. */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushcfunction(L, null_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "null");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "null");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &null_key);

    lua_createtable(L, 0, 4);
    json_push_null(L);
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, l_array);
    lua_setfield(L, -2, "array");
    lua_pushcfunction(L, l_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, l_decode);
    lua_setfield(L, -2, "decode");
}
