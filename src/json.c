/* json.c - see json.h. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "json.h"

#define PROXY_MT "tide.json.proxy" /* registry name, for luaL_testudata */
#define MAX_DEPTH 64

/* Registry keys (their addresses) of the metatables. */
static const char proxy_key = 'p', doc_key = 'd', array_key = 'a';

/* The address of this is tide.null's registry key. */
static const char null_key = 'n';

typedef struct proxy {
    cJSON *node;
} proxy_t;

typedef struct document {
    json_owner_t owner;
    cJSON *tree;
} document_t;

/* ---- memory ------------------------------------------------------------ */

/*
 * cJSON allocates every node, key and string separately, and an event's
 * tree lives only as long as the event: small blocks are recycled through
 * per-size free lists instead of going back to malloc each time.  A 16-byte
 * header keeps the size class (free() gets no size) and the alignment.
 * Loop thread only, like everything that touches cJSON here.
 */
#define POOL_CLASSES 8
#define POOL_KEEP 65536 /* blocks kept per class at most */
static const size_t pool_size[POOL_CLASSES] = {16, 32, 48, 64, 96, 128, 192, 256};

typedef union pool_block {
    union pool_block *next;
    max_align_t align;
} pool_block_t;

static pool_block_t *pool_free[POOL_CLASSES];
static size_t pool_count[POOL_CLASSES];

static void *pool_malloc(size_t n)
{
    int c = 0;
    while (c < POOL_CLASSES && pool_size[c] < n)
        c++;
    unsigned char *p;
    if (c < POOL_CLASSES && pool_free[c]) {
        p = (unsigned char *)pool_free[c];
        pool_free[c] = pool_free[c]->next;
        pool_count[c]--;
    } else {
        p = malloc(sizeof(pool_block_t) + (c < POOL_CLASSES ? pool_size[c] : n));
        if (!p)
            return NULL;
    }
    *(int *)p = c;
    return p + sizeof(pool_block_t);
}

static void pool_release(void *ptr)
{
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *)ptr - sizeof(pool_block_t);
    int c = *(int *)p;
    if (c < POOL_CLASSES && pool_count[c] < POOL_KEEP) {
        pool_block_t *b = (pool_block_t *)p;
        b->next = pool_free[c];
        pool_free[c] = b;
        pool_count[c]++;
        return;
    }
    free(p);
}

void json_init(void)
{
    static int done;
    cJSON_Hooks hooks = {pool_malloc, pool_release};
    if (!done) {
        cJSON_InitHooks(&hooks);
        done = 1;
    }
}

/* ---- parsing ----------------------------------------------------------- */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * Gives every number node of tree its original text.  cJSON has already
 * checked the document, so a light scan is enough: outside strings, a '-'
 * or a digit starts a number, and numbers appear in the text in the same
 * order as in a depth-first walk of the tree.  The copy of the text in
 * *nums gets a NUL after each number (its delimiter is not needed there),
 * and each number node points into it, flagged as a reference so that
 * cJSON never frees that text.
 */
static int attach_numbers(cJSON *tree, const char *text, size_t len, char **nums)
{
    cJSON *stack[1024]; /* cJSON refuses documents nested deeper than 1000 */
    int sp = 0;
    size_t i = 0;
    char *copy = NULL;
    cJSON *n = tree;

    for (;;) {
        if (n->type == cJSON_Number) {
            for (;;) {
                if (i >= len)
                    goto fail;
                char c = text[i];
                if (c == '"') { /* skip a string: to the first quote not escaped */
                    for (;;) {
                        const char *q = memchr(text + i + 1, '"', len - i - 1);
                        if (!q)
                            goto fail;
                        i = (size_t)(q - text);
                        size_t bs = 0;
                        while (text[i - 1 - bs] == '\\')
                            bs++;
                        if (bs % 2 == 0)
                            break;
                    }
                    i++;
                    continue;
                }
                if (c == '-' || (c >= '0' && c <= '9'))
                    break;
                i++;
            }
            size_t start = i;
            while (i < len && (text[i] == '-' || text[i] == '+' || text[i] == '.' || text[i] == 'e' ||
                               text[i] == 'E' || (text[i] >= '0' && text[i] <= '9')))
                i++;
            if (!copy) {
                copy = malloc(len + 1);
                if (!copy)
                    goto fail;
                memcpy(copy, text, len);
                copy[len] = '\0';
            }
            copy[i] = '\0';
            n->type = cJSON_Raw | cJSON_IsReference;
            n->valuestring = copy + start;
        }
        /* The next node, depth first. */
        if (n->child) {
            if (sp == (int)(sizeof stack / sizeof stack[0]))
                goto fail;
            stack[sp++] = n;
            n = n->child;
            continue;
        }
        for (;;) {
            if (sp == 0)
                goto done; /* back at the root */
            if (n->next) {
                n = n->next;
                break;
            }
            n = stack[--sp];
        }
    }
done:
    *nums = copy;
    return 0;
fail:
    /* Nodes already pointing into copy must not outlive it: the caller
     * deletes the tree, and reference nodes do not free their text. */
    free(copy);
    return -1;
}

cJSON *json_parse(const char *text, size_t len, char **nums)
{
    const char *end = NULL;
    *nums = NULL;
    if (len == 0)
        return NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!v)
        return NULL;
    for (size_t i = (size_t)(end - text); i < len; i++) {
        if (!is_space(text[i])) {
            cJSON_Delete(v);
            return NULL;
        }
    }
    if (attach_numbers(v, text, len, nums) < 0) {
        cJSON_Delete(v);
        return NULL;
    }
    return v;
}

char *json_print(const cJSON *v, size_t *len)
{
    /* cJSON's buffer comes from the block pool; callers get plain malloc. */
    char *s = cJSON_PrintUnformatted(v);
    char *out = NULL;
    *len = 0;
    if (s) {
        size_t n = strlen(s);
        out = malloc(n + 1);
        if (out) {
            memcpy(out, s, n + 1);
            *len = n;
        }
        cJSON_free(s);
    }
    return out;
}

/* ---- owners ---------------------------------------------------------------- */

void json_owner_discard(json_owner_t *o, cJSON *node)
{
    if (!node)
        return;
    if (!o->discarded)
        o->discarded = cJSON_CreateArray();
    if (!o->discarded || !cJSON_AddItemToArray(o->discarded, node)) {
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

int json_object_set(json_owner_t *o, cJSON *parent, const char *key, cJSON *v)
{
    cJSON *old = cJSON_GetObjectItemCaseSensitive(parent, key);
    if (old) {
        /* The key moves over with its flag; the old value is kept aside. */
        v->string = old->string;
        v->type = (v->type & ~cJSON_StringIsConst) | (old->type & cJSON_StringIsConst);
        old->string = NULL;
        old->type &= ~cJSON_StringIsConst;
        replace_keep(parent, old, v);
        json_owner_discard(o, old);
        return 0;
    }
    if (!cJSON_AddItemToObject(parent, key, v)) {
        cJSON_Delete(v);
        return -1;
    }
    return 0;
}

void json_object_unset(json_owner_t *o, cJSON *parent, const char *key)
{
    json_owner_discard(o, cJSON_DetachItemFromObjectCaseSensitive(parent, key));
}

void json_owner_release(json_owner_t *o)
{
    cJSON_Delete(o->discarded);
    o->discarded = NULL;
    free(o->nums);
    o->nums = NULL;
}

/* ---- null ------------------------------------------------------------------ */

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

int json_is_number(const cJSON *n)
{
    return n && ((n->type & 0xff) == cJSON_Number || (n->type & 0xff) == cJSON_Raw);
}

void json_push_number(lua_State *L, const cJSON *n)
{
    if ((n->type & 0xff) == cJSON_Raw && n->valuestring) {
        const char *t = n->valuestring;
        if (!strpbrk(t, ".eE")) {
            char *end;
            errno = 0;
            long long v = strtoll(t, &end, 10);
            if (errno == 0 && *end == '\0') {
                lua_pushinteger(L, (lua_Integer)v);
                return;
            }
        }
        lua_pushnumber(L, strtod(t, NULL));
        return;
    }
    double d = n->valuedouble;
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
        lua_pushinteger(L, (lua_Integer)d);
    else
        lua_pushnumber(L, d);
}

static json_owner_t *owner_of(lua_State *L, int proxy_idx)
{
    json_owner_t *o = NULL;
    if (lua_getiuservalue(L, proxy_idx, 1) == LUA_TUSERDATA)
        o = lua_touserdata(L, -1);
    lua_pop(L, 1); /* the proxy's user value keeps the owner alive */
    return o;
}

static proxy_t *live_proxy(lua_State *L, int idx, json_owner_t **owner)
{
    proxy_t *p = lua_touserdata(L, idx); /* only reachable through our metatable */
    json_owner_t *o = owner_of(L, idx);
    if (!o || o->dead || !p->node)
        luaL_error(L, "this JSON value belongs to an event whose pipeline has ended");
    if (owner)
        *owner = o;
    return p;
}

void json_push(lua_State *L, cJSON *v, int owner_idx)
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
    case cJSON_Number:
    case cJSON_Raw:
        json_push_number(L, v);
        return;
    case cJSON_String:
        lua_pushstring(L, v->valuestring ? v->valuestring : "");
        return;
    case cJSON_Object:
    case cJSON_Array: {
        owner_idx = lua_absindex(L, owner_idx);
        proxy_t *p = lua_newuserdatauv(L, sizeof *p, 1);
        p->node = v;
        lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key);
        lua_setmetatable(L, -2);
        lua_pushvalue(L, owner_idx);
        lua_setiuservalue(L, -2, 1);
        return;
    }
    default:
        lua_pushnil(L);
    }
}

/* ---- Lua -> JSON --------------------------------------------------------- */

static cJSON *raw_number(lua_State *L, const char *text)
{
    cJSON *n = cJSON_CreateRaw(text);
    if (!n)
        luaL_error(L, "out of memory");
    return n;
}

static cJSON *double_value(lua_State *L, lua_Number d)
{
    char buf[40];
    if (isnan(d) || isinf(d))
        luaL_error(L, "cannot encode %s as JSON", isnan(d) ? "NaN" : "infinity");
    /* The shortest text that reads back as the same double. */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    if (!strpbrk(buf, ".eE"))
        strcat(buf, ".0"); /* keep it a float when read back */
    return raw_number(L, buf);
}

static int cmp_keys(const void *a, const void *b)
{
    const char *const *x = a, *const *y = b;
    return strcmp(*x, *y);
}

static cJSON *from_lua(lua_State *L, int idx, int depth);

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
        ((document_t *)lua_touserdata(L, holder))->tree = NULL; /* released to the caller */
        lua_remove(L, holder);
        return out;
    }
    /* An object: keys must be strings; written sorted so output is stable. */
    const char **keys = lua_newuserdatauv(L, (n ? n : 1) * sizeof *keys, 0);
    int keys_idx = lua_gettop(L);
    size_t k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "cannot encode as JSON: object key of type %s (keys must be strings)",
                       luaL_typename(L, -1));
        keys[k++] = lua_tostring(L, -1); /* anchored by the table itself */
    }
    qsort(keys, k, sizeof *keys, cmp_keys);
    out = cJSON_CreateObject();
    if (!out)
        luaL_error(L, "out of memory");
    json_push_document(L, out, NULL);
    int holder = lua_gettop(L);
    for (size_t i = 0; i < k; i++) {
        lua_getfield(L, idx, keys[i]);
        cJSON *e = from_lua(L, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
        if (!cJSON_AddItemToObject(out, keys[i], e)) {
            cJSON_Delete(e);
            luaL_error(L, "out of memory");
        }
    }
    ((document_t *)lua_touserdata(L, holder))->tree = NULL;
    lua_remove(L, holder);
    lua_remove(L, keys_idx);
    return out;
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
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            char buf[32];
            snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(L, idx));
            return raw_number(L, buf);
        }
        return double_value(L, lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (strlen(s) != len)
            luaL_error(L, "cannot encode a string with a NUL byte as JSON");
        v = cJSON_CreateString(s);
        break;
    }
    case LUA_TTABLE:
        if (json_is_null(L, idx)) {
            v = cJSON_CreateNull();
            break;
        }
        return table_value(L, idx, depth);
    case LUA_TUSERDATA:
        if (luaL_testudata(L, idx, PROXY_MT)) {
            /* A copy: e.data.a = e.data.b must not alias the two. */
            proxy_t *p = live_proxy(L, idx, NULL);
            v = cJSON_Duplicate(p->node, 1);
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

static int proxy_index(lua_State *L)
{
    json_owner_t *o;
    proxy_t *p = live_proxy(L, 1, &o);
    cJSON *child = NULL;
    if (cJSON_IsArray(p->node)) {
        if (lua_isinteger(L, 2)) {
            lua_Integer i = lua_tointeger(L, 2);
            if (i >= 1 && i <= INT32_MAX)
                child = cJSON_GetArrayItem(p->node, (int)i - 1);
        }
    } else if (lua_type(L, 2) == LUA_TSTRING) {
        child = cJSON_GetObjectItemCaseSensitive(p->node, lua_tostring(L, 2));
    }
    if (!child) {
        lua_pushnil(L);
        return 1;
    }
    lua_getiuservalue(L, 1, 1); /* nested proxies share the owner */
    json_push(L, child, -1);
    return 1;
}

static int proxy_newindex(lua_State *L)
{
    json_owner_t *o;
    proxy_t *p = live_proxy(L, 1, &o);
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
        const char *k = lua_tostring(L, 2);
        if (lua_isnil(L, 3))
            json_object_unset(o, p->node, k);
        else if (json_object_set(o, p->node, k, json_from_lua(L, 3)) < 0)
            return luaL_error(L, "out of memory");
    }
    o->dirty = 1;
    return 0;
}

static int proxy_len(lua_State *L)
{
    proxy_t *p = live_proxy(L, 1, NULL);
    lua_pushinteger(L, cJSON_GetArraySize(p->node)); /* members of an object too */
    return 1;
}

static int proxy_tostring(lua_State *L)
{
    proxy_t *p = live_proxy(L, 1, NULL);
    size_t n;
    char *s = json_print(p->node, &n);
    if (!s)
        return luaL_error(L, "out of memory");
    lua_pushlstring(L, s, n);
    free(s);
    return 1;
}

/* pairs(): a snapshot of the keys in document order, then lookups. */
static int proxy_next(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2)) + 1;
    lua_pushinteger(L, i);
    lua_replace(L, lua_upvalueindex(2));
    if (lua_rawgeti(L, lua_upvalueindex(1), i) == LUA_TNIL)
        return 1;
    lua_pushvalue(L, -1);
    lua_gettable(L, 1); /* proxy[key] */
    return 2;
}

static int proxy_pairs(lua_State *L)
{
    proxy_t *p = live_proxy(L, 1, NULL);
    cJSON *c;
    lua_Integer i = 0;
    lua_newtable(L);
    cJSON_ArrayForEach(c, p->node) {
        if (cJSON_IsArray(p->node))
            lua_pushinteger(L, i + 1);
        else
            lua_pushstring(L, c->string ? c->string : "");
        lua_rawseti(L, -2, ++i);
    }
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, proxy_next, 2);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* ---- standalone documents -------------------------------------------------- */

static int document_gc(lua_State *L)
{
    document_t *d = lua_touserdata(L, 1);
    cJSON_Delete(d->tree);
    json_owner_release(&d->owner);
    d->tree = NULL;
    d->owner.dead = 1;
    return 0;
}

void json_push_document(lua_State *L, cJSON *tree, char *nums)
{
    document_t *d = lua_newuserdatauv(L, sizeof *d, 0);
    memset(d, 0, sizeof *d);
    d->tree = tree;
    d->owner.nums = nums;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &doc_key);
    lua_setmetatable(L, -2);
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
    cJSON *v = json_parse(s, n, &nums);
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

void json_open(lua_State *L)
{
    static const luaL_Reg proxy_mt[] = {{"__index", proxy_index}, {"__newindex", proxy_newindex},
                                        {"__len", proxy_len},     {"__tostring", proxy_tostring},
                                        {"__pairs", proxy_pairs}, {NULL, NULL}};
    static const luaL_Reg doc_mt[] = {{"__gc", document_gc}, {NULL, NULL}};
    json_init();
    new_metatable(L, &proxy_key, "json", proxy_mt);
    new_metatable(L, &doc_key, "json document", doc_mt);
    /* luaL_testudata looks metatables up by name: register the proxy's too. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key);
    lua_setfield(L, LUA_REGISTRYINDEX, PROXY_MT);
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
