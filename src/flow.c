/* flow.c - see flow.h. */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "flow.h"
#include "script.h"
#include "server.h"
#include "util.h"

#define FLOW_MT "tide.flow"

typedef struct delivery {
    char *subject, *hdr, *payload;
    size_t subject_len, hdr_len, payload_len;
} delivery_t;

typedef struct flow {
    server_t *srv;
    script_host_t *host;
    delivery_t *got;
    size_t n, cap;
    int oom;
} flow_t;

static char lib_dir[4096];

void flow_set_lib_dir(const char *dir)
{
    snprintf(lib_dir, sizeof lib_dir, "%s", dir ? dir : "");
}

static void record(void *ctx, const proto_msg_t *m)
{
    flow_t *f = ctx;
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 16;
        delivery_t *ng = realloc(f->got, nc * sizeof *ng);
        if (!ng) {
            f->oom = 1;
            return;
        }
        f->got = ng;
        f->cap = nc;
    }
    delivery_t *d = &f->got[f->n];
    d->subject = mem_dup(m->subject, m->subject_len);
    d->subject_len = m->subject_len;
    d->hdr = m->hdr ? mem_dup(m->hdr, m->hdr_len) : NULL;
    d->hdr_len = m->hdr ? m->hdr_len : 0;
    d->payload = mem_dup(m->payload, m->payload_len);
    d->payload_len = m->payload_len;
    if (!d->subject || !d->payload || (m->hdr && !d->hdr)) {
        free(d->subject);
        free(d->hdr);
        free(d->payload);
        f->oom = 1;
        return;
    }
    f->n++;
}

static void drop_recorded(flow_t *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->got[i].subject);
        free(f->got[i].hdr);
        free(f->got[i].payload);
    }
    f->n = 0;
}

static void flow_close(flow_t *f)
{
    drop_recorded(f);
    free(f->got);
    f->got = NULL;
    f->cap = 0;
    if (f->srv)
        server_free(f->srv);
    if (f->host)
        script_host_free(f->host);
    f->srv = NULL;
    f->host = NULL;
}

static int l_gc(lua_State *L)
{
    flow_close(luaL_checkudata(L, 1, FLOW_MT));
    return 0;
}

static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char err[1024];
    server_opts_t o;
    flow_t *f = lua_newuserdatauv(L, sizeof *f, 0);
    memset(f, 0, sizeof *f);
    luaL_setmetatable(L, FLOW_MT);
    f->host = script_host_new(path, lib_dir[0] ? lib_dir : NULL, err, sizeof err);
    if (!f->host) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    server_opts_default(&o);
    script_host_apply_settings(f->host, &o);
    f->srv = server_new(&o);
    if (!f->srv || !server_subscribe_internal(f->srv, ">", record, f))
        return luaL_error(L, "out of memory");
    script_host_attach_offline(f->host, f->srv);
    server_set_scripts(f->srv, f->host);
    return 1;
}

static int l_publish(lua_State *L)
{
    flow_t *f = luaL_checkudata(L, 1, FLOW_MT);
    size_t sl, hl = 0, pl;
    const char *subject = luaL_checklstring(L, 2, &sl);
    const char *hdr = luaL_optlstring(L, 3, NULL, &hl);
    const char *payload = luaL_checklstring(L, 4, &pl);
    proto_msg_t m;
    if (!f->srv)
        return luaL_error(L, "flow is closed");
    memset(&m, 0, sizeof m);
    m.subject = subject;
    m.subject_len = sl;
    m.hdr = hdr;
    m.hdr_len = hl;
    m.payload = payload;
    m.payload_len = pl;
    drop_recorded(f);
    f->oom = 0;
    server_publish(f->srv, NULL, &m);
    if (f->oom)
        return luaL_error(L, "out of memory recording deliveries");
    lua_createtable(L, (int)f->n, 0);
    for (size_t i = 0; i < f->n; i++) {
        delivery_t *d = &f->got[i];
        lua_createtable(L, 0, 3);
        lua_pushlstring(L, d->subject, d->subject_len);
        lua_setfield(L, -2, "subject");
        if (d->hdr) {
            lua_pushlstring(L, d->hdr, d->hdr_len);
            lua_setfield(L, -2, "headers");
        }
        lua_pushlstring(L, d->payload, d->payload_len);
        lua_setfield(L, -2, "payload");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    drop_recorded(f);
    return 1;
}

static int l_rules(lua_State *L)
{
    flow_t *f = luaL_checkudata(L, 1, FLOW_MT);
    char *buf = NULL;
    size_t len = 0;
    if (f->host)
        script_rules_json(f->host, &buf, &len);
    lua_pushlstring(L, buf ? buf : "[]", buf ? len : 2);
    free(buf);
    return 1;
}

static int l_close(lua_State *L)
{
    flow_close(luaL_checkudata(L, 1, FLOW_MT));
    return 0;
}

int flow_open_module(lua_State *L)
{
    static const luaL_Reg methods[] = {{"publish", l_publish}, {"rules", l_rules}, {"close", l_close}, {NULL, NULL}};
    luaL_newmetatable(L, FLOW_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
    return 1;
}
