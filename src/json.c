/* json.c - see json.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "json.h"

#define PROXY_MT "tide.json.proxy"
#define ARRAY_MARK "tide.json.array"
#define MAX_DEPTH 64

/* The address of this is tide.null's registry key and its identity. */
static const char null_key = 'n';

typedef struct proxy {
    json_object *v; /* one reference held */
} proxy_t;

int json_parse(const char *text, size_t len, json_object **out)
{
    struct json_tokener *tok;
    json_object *v;
    size_t end;

    if (len > (size_t)0x7fffffff)
        return -1;
    tok = json_tokener_new_ex(MAX_DEPTH);
    if (!tok)
        return -1;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    v = json_tokener_parse_ex(tok, text, (int)len);
    if (json_tokener_get_error(tok) != json_tokener_success) {
        json_tokener_free(tok);
        return -1;
    }
    end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    /* Only whitespace may follow the value. */
    for (; end < len; end++) {
        char c = text[end];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            json_object_put(v);
            return -1;
        }
    }
    *out = v;
    return 0;
}

const char *json_text(json_object *v, size_t *len)
{
    const char *s = json_object_to_json_string_length(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, len);
    return s;
}

void json_push_null(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key);
}

int json_is_null(lua_State *L, int idx)
{
    int r;
    if (lua_type(L, idx) != LUA_TLIGHTUSERDATA && lua_type(L, idx) != LUA_TTABLE)
        return 0;
    idx = lua_absindex(L, idx);
    json_push_null(L);
    r = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return r;
}

static void mark_dirty(lua_State *L, int proxy_idx)
{
    if (lua_getiuservalue(L, proxy_idx, 1) == LUA_TUSERDATA) {
        json_owner_t *o = lua_touserdata(L, -1);
        if (o)
            o->dirty = 1;
    }
    lua_pop(L, 1);
}

void json_push(lua_State *L, json_object *v, int owner_idx)
{
    switch (json_object_get_type(v)) {
    case json_type_null:
        json_push_null(L);
        return;
    case json_type_boolean:
        lua_pushboolean(L, json_object_get_boolean(v));
        return;
    case json_type_int:
        /* Past int64 (json-c keeps uint64) Lua has only floats. */
        if (json_object_get_int64(v) == INT64_MAX && json_object_get_uint64(v) > (uint64_t)INT64_MAX)
            lua_pushnumber(L, (lua_Number)json_object_get_uint64(v));
        else
            lua_pushinteger(L, (lua_Integer)json_object_get_int64(v));
        return;
    case json_type_double:
        lua_pushnumber(L, json_object_get_double(v));
        return;
    case json_type_string:
        lua_pushlstring(L, json_object_get_string(v), (size_t)json_object_get_string_len(v));
        return;
    case json_type_object:
    case json_type_array: {
        if (owner_idx)
            owner_idx = lua_absindex(L, owner_idx);
        proxy_t *p = lua_newuserdatauv(L, sizeof *p, 1);
        p->v = json_object_get(v);
        luaL_setmetatable(L, PROXY_MT);
        if (owner_idx) {
            lua_pushvalue(L, owner_idx);
            lua_setiuservalue(L, -2, 1);
        }
        return;
    }
    }
}

/* ---- Lua -> JSON --------------------------------------------------------- */

static json_object *double_value(lua_State *L, lua_Number d)
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
    return json_object_new_double_s(d, buf);
}

static int cmp_keys(const void *a, const void *b)
{
    const char *const *x = a, *const *y = b;
    return strcmp(*x, *y);
}

static json_object *from_lua(lua_State *L, int idx, int depth);

static json_object *table_value(lua_State *L, int idx, int depth)
{
    size_t n = 0, maxkey = 0;
    int all_int = 1;
    json_object *out = NULL;

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
        luaL_getmetatable(L, ARRAY_MARK);
        is_array = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    if (is_array) {
        out = json_object_new_array_ext((int)n);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i);
            json_object *e = from_lua(L, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
            json_object_array_add(out, e);
        }
        return out;
    }
    /* An object: keys must be strings; write them sorted so output is stable. */
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
    out = json_object_new_object();
    for (size_t i = 0; i < k; i++) {
        lua_getfield(L, idx, keys[i]);
        json_object *e = from_lua(L, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
        json_object_object_add(out, keys[i], e);
    }
    lua_remove(L, keys_idx);
    return out;
}

static json_object *from_lua(lua_State *L, int idx, int depth)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return NULL;
    case LUA_TBOOLEAN:
        return json_object_new_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return json_object_new_int64((int64_t)lua_tointeger(L, idx));
        return double_value(L, lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        return json_object_new_string_len(s, (int)len);
    }
    case LUA_TTABLE:
        if (json_is_null(L, idx))
            return NULL;
        return table_value(L, idx, depth);
    case LUA_TLIGHTUSERDATA:
        if (json_is_null(L, idx))
            return NULL;
        break;
    case LUA_TUSERDATA: {
        proxy_t *p = luaL_testudata(L, idx, PROXY_MT);
        if (p) {
            /* A copy: assigning e.data.a = e.data.b must not alias the two. */
            json_object *copy = NULL;
            if (json_object_deep_copy(p->v, &copy, NULL) != 0)
                luaL_error(L, "out of memory copying a JSON value");
            return copy;
        }
        break;
    }
    default:
        break;
    }
    luaL_error(L, "cannot encode a %s as JSON", luaL_typename(L, idx));
    return NULL;
}

json_object *json_from_lua(lua_State *L, int idx)
{
    return from_lua(L, idx, 0);
}

/* ---- proxies ------------------------------------------------------------ */

static proxy_t *check_proxy(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, PROXY_MT);
}

static int proxy_gc(lua_State *L)
{
    proxy_t *p = check_proxy(L, 1);
    if (p->v) {
        json_object_put(p->v);
        p->v = NULL;
    }
    return 0;
}

static int proxy_index(lua_State *L)
{
    proxy_t *p = check_proxy(L, 1);
    if (json_object_is_type(p->v, json_type_array)) {
        if (!lua_isinteger(L, 2)) {
            lua_pushnil(L);
            return 1;
        }
        lua_Integer i = lua_tointeger(L, 2);
        if (i < 1 || (size_t)i > json_object_array_length(p->v)) {
            lua_pushnil(L);
            return 1;
        }
        json_push(L, json_object_array_get_idx(p->v, (size_t)i - 1), 0);
    } else {
        json_object *child;
        const char *k = lua_tostring(L, 2);
        if (!k || lua_type(L, 2) != LUA_TSTRING || !json_object_object_get_ex(p->v, k, &child)) {
            lua_pushnil(L);
            return 1;
        }
        json_push(L, child, 0);
    }
    /* Nested proxies mark the same owner. */
    if (lua_type(L, -1) == LUA_TUSERDATA && lua_getiuservalue(L, 1, 1) == LUA_TUSERDATA) {
        lua_setiuservalue(L, -2, 1);
    } else if (lua_type(L, -1) == LUA_TUSERDATA) {
        lua_pop(L, 1);
    }
    return 1;
}

static int proxy_newindex(lua_State *L)
{
    proxy_t *p = check_proxy(L, 1);
    if (json_object_is_type(p->v, json_type_array)) {
        lua_Integer i = luaL_checkinteger(L, 2);
        size_t n = json_object_array_length(p->v);
        if (i < 1 || (size_t)i > n + 1)
            return luaL_error(L, "JSON array index %d out of range 1..%d", (int)i, (int)n + 1);
        if (lua_isnil(L, 3)) {
            if ((size_t)i != n)
                return luaL_error(L, "cannot leave a hole in a JSON array (use tide.null)");
            json_object_array_del_idx(p->v, (size_t)i - 1, 1);
        } else {
            json_object *v = json_from_lua(L, 3);
            if ((size_t)i == n + 1)
                json_object_array_add(p->v, v);
            else
                json_object_array_put_idx(p->v, (size_t)i - 1, v);
        }
    } else {
        if (lua_type(L, 2) != LUA_TSTRING)
            return luaL_error(L, "JSON object keys must be strings, got %s", luaL_typename(L, 2));
        const char *k = lua_tostring(L, 2);
        if (lua_isnil(L, 3))
            json_object_object_del(p->v, k);
        else
            json_object_object_add(p->v, k, json_from_lua(L, 3)); /* replaces in place, keeps order */
    }
    mark_dirty(L, 1);
    return 0;
}

static int proxy_len(lua_State *L)
{
    proxy_t *p = check_proxy(L, 1);
    if (json_object_is_type(p->v, json_type_array))
        lua_pushinteger(L, (lua_Integer)json_object_array_length(p->v));
    else
        lua_pushinteger(L, json_object_object_length(p->v));
    return 1;
}

static int proxy_tostring(lua_State *L)
{
    proxy_t *p = check_proxy(L, 1);
    size_t n;
    const char *s = json_text(p->v, &n);
    lua_pushlstring(L, s, n);
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
    proxy_t *p = check_proxy(L, 1);
    lua_newtable(L);
    if (json_object_is_type(p->v, json_type_array)) {
        size_t n = json_object_array_length(p->v);
        for (size_t i = 1; i <= n; i++) {
            lua_pushinteger(L, (lua_Integer)i);
            lua_rawseti(L, -2, (lua_Integer)i);
        }
    } else {
        lua_Integer i = 0;
        json_object_object_foreach(p->v, key, val) {
            (void)val;
            lua_pushstring(L, key);
            lua_rawseti(L, -2, ++i);
        }
    }
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, proxy_next, 2);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* ---- tide.json ------------------------------------------------------------ */

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    json_object *v = json_from_lua(L, 1);
    size_t n;
    const char *s = v ? json_text(v, &n) : "null";
    if (!v)
        n = 4;
    lua_pushlstring(L, s, n);
    json_object_put(v);
    return 1;
}

static int l_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    json_object *v;
    if (json_parse(s, n, &v) < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid JSON");
        return 2;
    }
    json_push(L, v, 0);
    json_object_put(v);
    return 1;
}

static int l_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    else
        luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    luaL_setmetatable(L, ARRAY_MARK);
    return 1;
}

static int null_tostring(lua_State *L)
{
    lua_pushliteral(L, "null");
    return 1;
}

void json_open(lua_State *L)
{
    static const luaL_Reg proxy_mt[] = {{"__index", proxy_index}, {"__newindex", proxy_newindex},
                                        {"__len", proxy_len},     {"__tostring", proxy_tostring},
                                        {"__pairs", proxy_pairs}, {"__gc", proxy_gc},
                                        {NULL, NULL}};
    luaL_newmetatable(L, PROXY_MT);
    luaL_setfuncs(L, proxy_mt, 0);
    lua_pushliteral(L, "json");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    luaL_newmetatable(L, ARRAY_MARK);
    lua_pop(L, 1);

    /* tide.null: a table with a __tostring, frozen by its metatable. */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushcfunction(L, null_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "null");
    lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &null_key);

    lua_createtable(L, 0, 5);
    json_push_null(L);
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, l_array);
    lua_setfield(L, -2, "array");
    lua_pushcfunction(L, l_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, l_decode);
    lua_setfield(L, -2, "decode");
}
