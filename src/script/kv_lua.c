/* kv_lua.c - the `tide.kv` table scripts call, over the store's kv (see
 * store/kv.h).  Tables are kept as JSON text and come back as JSON values. */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "json_lua.h"
#include "kv.h"
#include "kv_lua.h"
#include "script_internal.h"
#include "stream.h"
#include "util.h"

static kv_t *upkv(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

/* A shadow candidate's store is a scratch overlay over the live one
 * (upvalue 2): reads look in the scratch first, writes stay there. */
static kv_t *live_kv(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(2)); }

static const kv_value_t *kv_lookup(lua_State *L, const char *k, size_t kl)
{
    const kv_value_t *v = kv_get(upkv(L), k, kl);
    return v || !live_kv(L) ? v : kv_get(live_kv(L), k, kl);
}

/* A write, for the shadow's comparison of decisions (script.h). */
static void note_write(lua_State *L, const char *what, const char *k, size_t kl)
{
    script_host_t *h = script_state_of(L)->host;
    if (h->rec)
        shadow_note(h, SHADOW_KV, k, kl, what, strlen(what), NULL);
}

/* Raises the error for rc, a failed kv_set/kv_incr of key k (what: the call). */
static int raise_kv_error(lua_State *L, kv_t *kv, int rc, const char *what, const char *k, size_t vlen)
{
    const kv_limits_t *lim = kv_limits(kv);
    size_t keys, bytes;
    kv_usage(kv, &keys, &bytes);
    switch (rc) {
    case KV_TOO_BIG:
        return luaL_error(L, "%s('%s'): a value of %I bytes is over kv { max_value = %I }", what, k,
                          (lua_Integer)vlen, (lua_Integer)lim->max_value);
    case KV_FULL:
        return luaL_error(L, "%s('%s'): the store holds %I bytes; kv { max_bytes = %I } leaves no room", what,
                          k, (lua_Integer)bytes, (lua_Integer)lim->max_bytes);
    case KV_TOO_MANY:
        return luaL_error(L, "%s('%s'): the store holds %I keys, kv { max_keys = %I }", what, k,
                          (lua_Integer)keys, (lua_Integer)lim->max_keys);
    case -2:
        return luaL_error(L, "kv.incr: value of '%s' is not an integer", k);
    default:
        return luaL_error(L, "out of memory");
    }
}

static void push_value(lua_State *L, const kv_value_t *v)
{
    switch (v->type) {
    case KV_STRING:
        lua_pushlstring(L, v->s, v->len);
        break;
    case KV_INT:
        lua_pushinteger(L, (lua_Integer)v->i);
        break;
    case KV_FLOAT:
        lua_pushnumber(L, v->f);
        break;
    case KV_BOOL:
        lua_pushboolean(L, (int)v->i);
        break;
    default: {
        char *nums;
        cJSON *j = json_parse_exact(v->s, v->len, &nums);
        if (!j) {
            lua_pushnil(L);
            break;
        }
        json_push_document(L, j, nums); /* owns the tree; proxies keep it alive */
        json_push(L, j, -1);
        lua_remove(L, -2);
        break;
    }
    }
}

static int l_get(lua_State *L)
{
    size_t kl;
    const char *k = luaL_checklstring(L, 1, &kl);
    const kv_value_t *v = kv_lookup(L, k, kl);
    if (!v)
        lua_pushnil(L);
    else
        push_value(L, v);
    return 1;
}

static int l_has(lua_State *L)
{
    size_t kl;
    const char *k = luaL_checklstring(L, 1, &kl);
    lua_pushboolean(L, kv_lookup(L, k, kl) != NULL);
    return 1;
}

static int l_set(lua_State *L)
{
    kv_t *kv = upkv(L);
    size_t kl;
    const char *k = luaL_checklstring(L, 1, &kl);
    note_write(L, "set", k, kl);
    if (lua_isnoneornil(L, 2)) {
        kv_del(kv, k, kl);
        return 0;
    }
    char *text = NULL;
    size_t tlen = 0;
    int t = lua_type(L, 2);
    if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TBOOLEAN) {
        /* Tables are kept as JSON text; json_from_lua raises for functions,
         * userdata, ... before anything here is allocated. */
        cJSON *j = json_from_lua(L, 2);
        text = json_print(j, &tlen);
        cJSON_Delete(j);
        if (!text)
            return luaL_error(L, "out of memory");
    }
    kv_value_t *v = calloc(1, sizeof *v);
    if (!v) {
        free(text);
        return luaL_error(L, "out of memory");
    }
    switch (t) {
    case LUA_TSTRING: {
        const char *s = lua_tolstring(L, 2, &v->len);
        v->type = KV_STRING;
        v->s = util_mem_dup(s, v->len);
        break;
    }
    case LUA_TNUMBER:
        if (lua_isinteger(L, 2)) {
            v->type = KV_INT;
            v->i = (int64_t)lua_tointeger(L, 2);
        } else {
            v->type = KV_FLOAT;
            v->f = lua_tonumber(L, 2);
        }
        break;
    case LUA_TBOOLEAN:
        v->type = KV_BOOL;
        v->i = lua_toboolean(L, 2);
        break;
    default:
        v->type = KV_JSON;
        v->s = text;
        v->len = tlen;
        break;
    }
    if ((v->type == KV_STRING || v->type == KV_JSON) && !v->s) {
        free(v);
        return luaL_error(L, "out of memory");
    }
    size_t vlen = v->type == KV_STRING || v->type == KV_JSON ? v->len : 8;
    int rc = kv_set(kv, k, kl, v);
    if (rc < 0)
        return raise_kv_error(L, kv, rc, "tide.kv.set", k, vlen);
    return 0;
}

static int l_del(lua_State *L)
{
    size_t kl;
    const char *k = luaL_checklstring(L, 1, &kl);
    note_write(L, "del", k, kl);
    lua_pushboolean(L, kv_del(upkv(L), k, kl));
    return 1;
}

static int l_incr(lua_State *L)
{
    size_t kl;
    const char *k = luaL_checklstring(L, 1, &kl);
    lua_Integer by = luaL_optinteger(L, 2, 1);
    int64_t now;
    note_write(L, "incr", k, kl);
    const kv_value_t *base = live_kv(L) && !kv_get(upkv(L), k, kl) ? kv_get(live_kv(L), k, kl) : NULL;
    if (base && base->type == KV_INT && kv_incr(upkv(L), k, kl, base->i, &now) < 0)
        return luaL_error(L, "out of memory");
    int rc = kv_incr(upkv(L), k, kl, (int64_t)by, &now);
    if (rc < 0)
        return raise_kv_error(L, upkv(L), rc, "tide.kv.incr", k, 8);
    lua_pushinteger(L, (lua_Integer)now);
    return 1;
}

typedef struct {
    lua_State *L;
    lua_Integer n;
} keys_t;

static void add_key(void *ctx, const char *k, size_t kl)
{
    keys_t *ks = ctx;
    lua_pushlstring(ks->L, k, kl);
    lua_rawseti(ks->L, -2, ++ks->n);
}

static int l_keys(lua_State *L)
{
    size_t pl = 0;
    const char *prefix = luaL_optlstring(L, 1, "", &pl);
    keys_t ks = {L, 0};
    lua_newtable(L);
    kv_each(upkv(L), prefix, pl, add_key, &ks);
    lua_getglobal(L, "table");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "sort");
        lua_pushvalue(L, -3);
        lua_call(L, 1, 0);
    }
    lua_pop(L, 1);
    return 1;
}

static int l_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)kv_count(upkv(L)));
    return 1;
}

void kv_lua_push_api(lua_State *L, kv_t *kv, kv_t *live)
{
    static const luaL_Reg fns[] = {{"get", l_get},   {"set", l_set},   {"del", l_del},     {"incr", l_incr},
                                   {"has", l_has},   {"keys", l_keys}, {"count", l_count}, {NULL, NULL}};
    lua_createtable(L, 0, 7);
    lua_pushlightuserdata(L, kv);
    lua_pushlightuserdata(L, live);
    luaL_setfuncs(L, fns, 2);
}

void kv_lua_push_tide(lua_State *L, struct script_host *host)
{
    if (host->has_kv_remote || (host->streams && host->bucket_maker))
        kv_bucket_lua_push_tide(L, host);
    else if (host->dry_kv) /* a shadow's candidate loading: its writes stay in its scratch store */
        kv_lua_push_api(L, host->dry_kv, host->kv);
    else
        kv_lua_push_api(L, host->kv, NULL);
}
