/* flow.c - see flow.h. */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <lauxlib.h>

#include "clock.h"
#include "flow.h"
#include "script.h"
#include "server.h"
#include "stream.h"
#include "util.h"

#define FLOW_MT "tide.flow"

typedef struct delivery {
    char *subject, *hdr, *payload;
    size_t subject_len, hdr_len, payload_len;
} delivery_t;

typedef struct flow {
    server_t *srv;
    script_host_t *host;
    streams_t *sm;       /* the declared streams, or NULL */
    char data_dir[4096]; /* their temporary directory ("" when none) */
    double settle;       /* seconds a publish may wait for the streams to go idle */
    delivery_t *got;
    size_t n, cap;
    int oom;
} flow_t;

#define FLOW_SETTLE_DEFAULT 10.0

/* ---- the streams' loop -------------------------------------------------------- */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* True when every append is durable (or its stream has failed). */
static int streams_durable(streams_t *sm, char *why, size_t n)
{
    stream_info_t si;
    for (int i = 0; streams_stream_info(sm, NULL, i, &si); i++) {
        const slog_info_t *in = &si.log;
        if (!in->failed && in->last_seq > in->committed_seq) {
            snprintf(why, n, "stream %s: %llu record(s) not yet durable", si.cfg->name,
                     (unsigned long long)(in->last_seq - in->committed_seq));
            return 0;
        }
    }
    return 1;
}

int flow_streams_idle(server_t *srv, streams_t *sm, char *why, size_t n)
{
    if (!sm)
        return 1;
    if (!streams_durable(sm, why, n))
        return 0;
    consumer_info_t ci;
    for (int i = 0; streams_consumer_info(sm, NULL, i, &ci); i++) {
        const consumer_cfg_t *cfg = ci.cfg;
        int lua = !cfg->deliver[0];
        if (lua ? !ci.handlers : !server_has_interest(srv, cfg->deliver, strlen(cfg->deliver)))
            continue; /* nobody to deliver to: its events wait, whatever we do */
        double pending = (double)ci.pending;
        double flight = (double)ci.in_flight;
        /* (a push consumer's deliveries stay in flight until someone acks) */
        if (pending > 0 || (lua && flight > 0)) {
            snprintf(why, n, "consumer %s: %.0f to deliver, %.0f in flight", cfg->name, pending, flight);
            return 0;
        }
    }
    return 1;
}

int flow_settle(server_t *srv, streams_t *sm, double limit, char *why, size_t n)
{
    struct event_base *base = server_base(srv);
    double deadline = mono_s() + limit;
    for (;;) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (flow_streams_idle(srv, sm, why, n))
            return 0;
        if (mono_s() >= deadline)
            return -1;
        /* Blocks until something is due: a commit, a consumer's tick (10 ms). */
        event_base_loop(base, EVLOOP_ONCE);
    }
}

/* ---- the virtual clock ------------------------------------------------------------ */

/* Jumps of the virtual clock one advance or the end of the input may take
 * (each runs what falls due at one time): a bound for flows whose work
 * never ends, such as a handler that always fails without max_deliver. */
#define FLOW_VIRTUAL_STEPS 100000

/* flow_settle under the virtual clock: runs the loop until every append is
 * durable and no consumer has work due at the current virtual time (work
 * due later waits for the clock).  0, or -1 after `limit` seconds of real
 * time with what is still busy in why.  sm is not NULL. */
static int settle_virtual(server_t *srv, streams_t *sm, double limit, char *why, size_t n)
{
    struct event_base *base = server_base(srv);
    double deadline = mono_s() + limit;
    for (;;) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        int durable = streams_durable(sm, why, n);
        int64_t now = clock_mono_ns();
        const char *who = "";
        if (durable && streams_next_due(sm, now, 0, &who) > now)
            return 0;
        if (mono_s() >= deadline) {
            if (durable)
                snprintf(why, n, "consumer %s has work due at every turn", who);
            return -1;
        }
        if (durable)
            streams_run_due(sm);
        else
            event_base_loop(base, EVLOOP_ONCE); /* (the commit comes with the next turn) */
    }
}

/* Moves the virtual clock to `to` (INT64_MAX: for as long as handler
 * consumers have work due, the end of the input), running what falls due
 * on the way in due order with the clock at each due time.  0; -1 when
 * settling took too long (why), -2 when FLOW_VIRTUAL_STEPS ran out (why
 * says when the next work was due; the clock is at `to` all the same, and
 * what was still due runs late, at that time, when the streams settle). */
static int advance_virtual(server_t *srv, streams_t *sm, double limit, int64_t to, char *why, size_t n)
{
    int at_end = to == INT64_MAX;
    for (int step = 0; sm; step++) { /* (without streams nothing is ever due) */
        if (settle_virtual(srv, sm, limit, why, n) < 0)
            return -1;
        const char *who = "";
        int64_t due = streams_next_due(sm, clock_mono_ns(), at_end, &who);
        if (due == INT64_MAX || due > to)
            break;
        if (step == FLOW_VIRTUAL_STEPS) {
            char t[64];
            util_time_ns(due, t, sizeof t);
            snprintf(why, n, "stopped after %d steps of the virtual clock, with consumer %s due again at %s",
                     FLOW_VIRTUAL_STEPS, who, t);
            if (!at_end)
                clock_set(to);
            return -2;
        }
        clock_set(due);
    }
    if (!at_end)
        clock_set(to);
    return 0;
}

int flow_make_tmpdir(const char *prefix, char *out, size_t n)
{
    const char *t = getenv("TMPDIR");
    int w = snprintf(out, n, "%s/%s-XXXXXX", t && *t ? t : "/tmp", prefix);
    if (w < 0 || (size_t)w >= n) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return mkdtemp(out) ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void flow_remove_tree(const char *dir)
{
    if (dir && *dir)
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int flow_open_streams_unsynced(script_host_t *h, streams_t *sm, char *err, size_t errsz)
{
    return script_open_streams(h, sm, FSYNC_NEVER, err, errsz);
}

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
    d->subject = util_mem_dup(m->subject, m->subject_len);
    d->subject_len = m->subject_len;
    d->hdr = m->hdr ? util_mem_dup(m->hdr, m->hdr_len) : NULL;
    d->hdr_len = m->hdr ? m->hdr_len : 0;
    d->payload = util_mem_dup(m->payload, m->payload_len);
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
    if (f->host && f->sm)
        script_host_set_streams(f->host, NULL, NULL, 0);
    streams_free(f->sm); /* before the server: it unhooks itself from it */
    f->sm = NULL;
    if (f->srv)
        server_free(f->srv);
    if (f->host)
        script_host_free(f->host); /* (tide.kv writes its last changes to the data directory) */
    f->srv = NULL;
    f->host = NULL;
    if (f->data_dir[0])
        flow_remove_tree(f->data_dir);
    f->data_dir[0] = '\0';
}

/* Settles the flow's streams on the clock in use: 0, or -1 with why. */
static int settle(flow_t *f, char *why, size_t n)
{
    if (!f->sm)
        return 0;
    if (clock_is_virtual())
        return settle_virtual(f->srv, f->sm, f->settle, why, n);
    return flow_settle(f->srv, f->sm, f->settle, why, n);
}

/* Pushes what was recorded since drop_recorded, as a list of
 * {subject=, headers=, payload=}, and forgets it. */
static void push_recorded(lua_State *L, flow_t *f)
{
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
    /* Before anything reads the clock: the entry file's code, the
     * consumers' first times when they open. */
    if (lua_istable(L, 2)) {
        if (lua_getfield(L, 2, "virtual_start") != LUA_TNIL)
            clock_use_virtual((int64_t)luaL_checkinteger(L, -1));
        lua_pop(L, 1);
    }
    f->host = script_host_new(path, lib_dir[0] ? lib_dir : NULL, err, sizeof err);
    if (!f->host) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    f->settle = FLOW_SETTLE_DEFAULT;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "settle");
        if (!lua_isnil(L, -1)) {
            f->settle = lua_tonumber(L, -1);
            if (!(f->settle >= 0) || f->settle > 3600)
                return luaL_error(L, "settle must be a number of seconds from 0 to 3600");
        }
        lua_pop(L, 1);
    }
    server_opts_default(&o);
    script_host_apply_settings(f->host, &o);
    f->srv = server_new(&o);
    if (!f->srv || !server_subscribe_internal(f->srv, ">", record, f))
        return luaL_error(L, "out of memory");
    script_host_attach_offline(f->host, f->srv);
    if (script_declared_streams(f->host)) {
        /* The streams for real, in a directory of their own (never the
         * one storage { dir } names: a test run must not touch it). */
        if (flow_make_tmpdir("tide-run", f->data_dir, sizeof f->data_dir) < 0) {
            f->data_dir[0] = '\0';
            lua_pushnil(L);
            lua_pushfstring(L, "cannot make a temporary data directory: %s", strerror(errno));
            return 2;
        }
        if (!(f->sm = streams_new(f->srv, f->data_dir)))
            return luaL_error(L, "out of memory");
        if (flow_open_streams_unsynced(f->host, f->sm, err, sizeof err) < 0 ||
            script_host_set_streams(f->host, f->sm, err, sizeof err) < 0) {
            flow_close(f);
            lua_pushnil(L);
            lua_pushstring(L, err);
            return 2;
        }
        /* What opening the consumers set off (nothing, in a new directory). */
        char why[300];
        settle(f, why, sizeof why);
    }
    return 1;
}

static int l_publish(lua_State *L)
{
    flow_t *f = luaL_checkudata(L, 1, FLOW_MT);
    size_t sl, hl = 0, pl;
    const char *subject = luaL_checklstring(L, 2, &sl);
    const char *hdr = luaL_optlstring(L, 3, NULL, &hl);
    const char *payload = luaL_checklstring(L, 4, &pl);
    size_t rl = 0;
    const char *reply = luaL_optlstring(L, 5, NULL, &rl);
    script_identity_t who;
    if (!lua_isnoneornil(L, 6))
        script_identity_from_lua(L, 6, &who, "client");
    proto_msg_t m;
    if (!f->srv)
        return luaL_error(L, "flow is closed");
    memset(&m, 0, sizeof m);
    m.subject = subject;
    m.subject_len = sl;
    m.reply = reply;
    m.reply_len = rl;
    m.hdr = hdr;
    m.hdr_len = hl;
    m.payload = payload;
    m.payload_len = pl;
    drop_recorded(f);
    f->oom = 0;
    script_set_identity(f->host, lua_isnoneornil(L, 6) ? NULL : &who);
    server_publish(f->srv, NULL, &m);
    script_set_identity(f->host, NULL);
    /* Durable consumers and their handlers: until the streams are idle. */
    char why[300];
    int late = settle(f, why, sizeof why) < 0;
    if (f->oom)
        return luaL_error(L, "out of memory recording deliveries");
    push_recorded(L, f);
    if (late) {
        lua_pushfstring(L, "the streams were still busy after %f s (%s)", f->settle, why);
        return 2;
    }
    return 1;
}

/* f:advance(ns|nil, line): under the virtual clock, starts input line
 * `line` (its events' ids) and moves the clock to ns (nil: where it is),
 * running what falls due on the way; f:advance(math.maxinteger) runs what
 * handler consumers still have due, the end of the input.  Returns what
 * was delivered meanwhile, and nil or why the clock stopped early. */
static int l_advance(lua_State *L)
{
    flow_t *f = luaL_checkudata(L, 1, FLOW_MT);
    int64_t to = lua_isnoneornil(L, 2) ? clock_now_ns() : (int64_t)luaL_checkinteger(L, 2);
    if (!f->srv)
        return luaL_error(L, "flow is closed");
    if (!clock_is_virtual())
        return luaL_error(L, "advance needs the virtual clock");
    if (!lua_isnoneornil(L, 3))
        clock_mark_line((uint64_t)luaL_checkinteger(L, 3));
    drop_recorded(f);
    f->oom = 0;
    char why[300];
    int rc = advance_virtual(f->srv, f->sm, f->settle, to, why, sizeof why);
    if (f->oom)
        return luaL_error(L, "out of memory recording deliveries");
    push_recorded(L, f);
    if (rc == -1) {
        lua_pushfstring(L, "the streams were still busy after %f s (%s)", f->settle, why);
        return 2;
    }
    if (rc < 0) {
        lua_pushstring(L, why);
        return 2;
    }
    return 1;
}

/* flow.time(text) -> ns since the epoch of an RFC 3339 time, or nil. */
static int l_time(lua_State *L)
{
    int64_t ns = streams_parse_time(luaL_checkstring(L, 1));
    if (ns < 0)
        return 0;
    lua_pushinteger(L, (lua_Integer)ns);
    return 1;
}

static int l_streams(lua_State *L)
{
    flow_t *f = luaL_checkudata(L, 1, FLOW_MT);
    lua_pushboolean(L, f->sm != NULL);
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
    static const luaL_Reg methods[] = {{"publish", l_publish}, {"advance", l_advance}, {"rules", l_rules},
                                       {"streams", l_streams}, {"close", l_close},     {NULL, NULL}};
    luaL_newmetatable(L, FLOW_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
    lua_pushcfunction(L, l_time);
    lua_setfield(L, -2, "time");
    return 1;
}
