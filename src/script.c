/* script.c - see script.h. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/util.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "client.h"
#include "dict.h"
#include "event.h"
#include "json.h"
#include "kv.h"
#include "log.h"
#include "msgq.h"
#include "script.h"
#include "subject.h"
#include "util.h"

enum rule_kind { RULE_UPGRADE, RULE_FILTER, RULE_ROUTE, RULE_HANDLER, RULE_KINDS };
static const char *const kind_names[] = {"upgrade", "filter", "route", "on"};

typedef struct rule {
    int kind;
    char *pattern; /* subject pattern, or the event type for upgraders */
    size_t pattern_len;
    int64_t from_version;
    int fn_ref;
    char where[200]; /* "file.lua:12" of the function */
    uint64_t calls, errors, dropped, routed;
} rule_t;

/* The rules that apply to one subject, in registration order. */
typedef struct match {
    rule_t **r[RULE_KINDS];
    size_t n[RULE_KINDS];
} match_t;


enum budget { BUDGET_OK = 0, BUDGET_INSTRUCTIONS, BUDGET_TIME, BUDGET_MEMORY };

typedef struct state {
    lua_State *L;
    struct script_host *host;
    script_limits_t limits;
    size_t mem_used;
    int env_ref; /* the sandbox environment */
    int ctx_ref; /* the ctx table handed to handlers */
    rule_t **rules;
    size_t nrules, caprules;
    int nkind[RULE_KINDS];
    dict_t upgraders; /* "type\0version" -> rule */
    dict_t matches;   /* subject -> match_t */
    char **files;     /* every file loaded, for the watcher */
    size_t nfiles;
    /* The call in progress. */
    int in_call;
    int budget;
    uint64_t instructions;
    struct timespec deadline;
    int cur_depth;   /* depth of the event being handled */
    int cur_ev_idx;  /* its stack index, for ctx.publish, or 0 */
    /* Settings the entry file declared. */
    int has_listen;
    char listen_host[256];
    int listen_port;
    int admin_eval;    /* admin { eval = true }: tide repl --connect may run code here */
    char http_addr[256]; /* listen { http = "host:port" } */
    char *http_binary[32]; /* http { binary = {...} }: subjects HTTP events reach in binary mode */
    int nhttp_binary;
    int http_off;        /* listen { http = false } */
    server_opts_t set; /* values of limits{} */
    unsigned set_mask; /* which of them */
} state_t;

/* Bits of state_t.set_mask. */
enum {
    SET_MAX_PAYLOAD = 1, SET_MAX_CONTROL_LINE = 2, SET_MAX_PENDING = 4, SET_PING_INTERVAL = 8,
    SET_MAX_PINGS_OUT = 16, SET_WRITE_DEADLINE = 32,
};

typedef struct err_seen {
    time_t last;
    uint64_t suppressed;
} err_seen_t;

struct script_host {
    server_t *srv;
    char *config_path;
    char *config_dir;
    char *lib_dir;
    state_t *cur;
    kv_t *kv;
    script_stats_t st;
    msgq_t queue; /* events handlers published, run after the current one */
    int queued_total; /* emitted by the current top-level event */
    int processing;   /* inside script_process */
    dict_t errors_seen; /* rate limit for error logs */
    struct event *sighup;
    struct event *watch_ev;   /* inotify */
    int watch_fd;
    struct event *poll_timer; /* fallback when inotify is unavailable */
    struct event *debounce;
    time_t *poll_mtimes;
    size_t npoll;
    void (*trace)(void *ctx, const char *line); /* tide repl's trace, or NULL */
    void *trace_ctx;
    uint64_t lat_counts[SCRIPT_LATENCY_BUCKETS + 1]; /* rule call times, by bucket (+Inf last) */
    double lat_sum;
    uint64_t lat_count;
    void (*on_reload)(void *ctx); /* after a new state took over (tide repl) */
    void *on_reload_ctx;
};

#define HOOK_STEP 1000
#define MATCH_CACHE_MAX 4096
#define UPGRADE_CHAIN_MAX 64
#define ERROR_LOG_INTERVAL 10

void script_limits_default(script_limits_t *l)
{
    memset(l, 0, sizeof *l);
    l->instructions = 10 * 1000 * 1000;
    l->memory = 64u * 1024 * 1024;
    l->time = 0.5;
    l->emit_depth = 8;
    l->emit_max = 10000;
    snprintf(l->dead_letter, sizeof l->dead_letter, "$TIDE.DEAD");
}

/* ---- budgets ------------------------------------------------------------- */

static state_t *state_of(lua_State *L)
{
    return *(state_t **)lua_getextraspace(L);
}

static int past_deadline(const state_t *st)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return now.tv_sec > st->deadline.tv_sec ||
           (now.tv_sec == st->deadline.tv_sec && now.tv_nsec > st->deadline.tv_nsec);
}

static lua_Hook budget_hook_fn(void);

/* Registry keys of the budget messages, made when the state is created so
 * that raising them needs no allocation. */
static const char budget_keys[4] = {0, 1, 2, 3};

static void arm_stop(state_t *st, int budget)
{
    if (!st->budget) {
        st->budget = budget;
        /* From now on the hook raises at every instruction: see budget_hook. */
        lua_sethook(st->L, budget_hook_fn(), LUA_MASKCOUNT, 1);
    }
}

/*
 * Memory cap for the whole state, and a second place to notice the time
 * budget: C functions such as string.rep or gsub never return to the VM
 * while they work, but they allocate, and refusing an allocation is a clean
 * error path everywhere in Lua.  Only the allocation that finds the budget
 * spent is refused (later ones may be the error unwinding); the hook then
 * stops the script at its next instruction.  Shrinking always succeeds.
 */
static void *state_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    state_t *st = ud;
    if (!ptr)
        osize = 0;
    if (nsize == 0) {
        free(ptr);
        st->mem_used -= osize;
        return NULL;
    }
    if (nsize > osize) {
        if (st->mem_used + (nsize - osize) > st->limits.memory) {
            if (st->in_call)
                arm_stop(st, BUDGET_MEMORY);
            return NULL;
        }
        if (st->in_call && !st->budget && past_deadline(st)) {
            arm_stop(st, BUDGET_TIME);
            return NULL;
        }
    }
    void *p = realloc(ptr, nsize);
    if (!p && nsize > osize)
        return NULL;
    st->mem_used = st->mem_used - osize + nsize;
    return p;
}

/*
 * The count hook.  Once a budget is spent it fires on every instruction and
 * raises each time, so a script cannot swallow the stop with pcall: the
 * first instruction after its pcall returns raises once more.  The message
 * is a string made in advance, so raising it allocates nothing.
 */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    state_t *st = state_of(L);
    (void)ar;
    if (!st->in_call)
        return;
    if (!st->budget) {
        st->instructions += HOOK_STEP;
        if (st->instructions > st->limits.instructions)
            arm_stop(st, BUDGET_INSTRUCTIONS);
        else if (past_deadline(st))
            arm_stop(st, BUDGET_TIME);
        else
            return;
    }
    /* Each coroutine has a hook of its own: this thread (maybe a coroutine
     * the script made before the stop) must raise at every instruction too. */
    if (lua_gethookcount(L) != 1)
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_keys[st->budget]);
    lua_error(L);
}

static lua_Hook budget_hook_fn(void)
{
    return budget_hook;
}

static void begin_call(state_t *st)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    double t = st->limits.time;
    st->deadline.tv_sec = now.tv_sec + (time_t)t;
    st->deadline.tv_nsec = now.tv_nsec + (long)((t - (double)(time_t)t) * 1e9);
    if (st->deadline.tv_nsec >= 1000000000L) {
        st->deadline.tv_sec++;
        st->deadline.tv_nsec -= 1000000000L;
    }
    st->instructions = 0;
    st->budget = BUDGET_OK;
    st->in_call = 1;
}

static void end_call(state_t *st)
{
    st->in_call = 0;
    if (st->budget) {
        lua_sethook(st->L, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
        /* What the stopped script built is garbage now; give it back. */
        lua_gc(st->L, LUA_GCCOLLECT);
    }
}

/* Message handler for lua_pcall.  While a budget stop unwinds it must not
 * allocate: the stop's own message is returned as it is. */
static int on_error(lua_State *L)
{
    state_t *st = state_of(L);
    if (st && st->budget) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_keys[st->budget]);
        return 1;
    }
    if (lua_type(L, 1) == LUA_TSTRING)
        return 1;
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
        return 1;
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    return 1;
}

/*
 * Calls the function below nargs arguments on the stack under the budgets.
 * Returns LUA_OK with nres results, or an error status with the message on
 * the stack.
 */
static int budget_call(state_t *st, int nargs, int nres)
{
    lua_State *L = st->L;
    int base = lua_gettop(L) - nargs;
    /* Calls nest (a prompt line publishing an event runs rules): the inner
     * call gets budgets of its own and the outer one's are put back. */
    int outer_in_call = st->in_call, outer_budget = st->budget;
    uint64_t outer_instructions = st->instructions;
    struct timespec outer_deadline = st->deadline;
    lua_pushcfunction(L, on_error);
    lua_insert(L, base);
    begin_call(st);
    int rc = lua_pcall(L, nargs, nres, base);
    int budget = st->budget;
    end_call(st);
    if (outer_in_call) {
        st->in_call = 1;
        st->budget = outer_budget;
        st->instructions = outer_instructions;
        st->deadline = outer_deadline;
    }
    lua_remove(L, base);
    if (rc != LUA_OK) {
        st->host->st.errors++;
        if (budget) {
            /* Now allocation is safe again: say which limit, and its value. */
            st->host->st.budget_stops++;
            lua_pop(L, 1);
            if (budget == BUDGET_INSTRUCTIONS)
                lua_pushfstring(L, "instruction budget exceeded (%I instructions)", (lua_Integer)st->limits.instructions);
            else if (budget == BUDGET_TIME)
                lua_pushfstring(L, "time budget exceeded (%d ms)", (int)(st->limits.time * 1000));
            else
                lua_pushfstring(L, "memory budget exceeded (%I bytes)", (lua_Integer)st->limits.memory);
        }
    }
    return rc;
}

/* ---- logging ------------------------------------------------------------- */

/* Logs an error once per distinct text per interval, with a count of the
 * repeats it held back. */
static void log_rate_limited(script_host_t *h, const char *text)
{
    size_t n = strlen(text);
    time_t now = time(NULL);
    err_seen_t *e = dict_get(&h->errors_seen, text, n);
    if (e && now - e->last < ERROR_LOG_INTERVAL) {
        e->suppressed++;
        return;
    }
    if (!e) {
        if (h->errors_seen.count > 1000)
            dict_clear(&h->errors_seen, free);
        e = calloc(1, sizeof *e);
        if (!e || dict_put(&h->errors_seen, text, n, e) < 0) {
            free(e);
            log_error("%s", text);
            return;
        }
    }
    if (e->suppressed)
        log_error("%s (and %llu more like it)", text, (unsigned long long)e->suppressed);
    else
        log_error("%s", text);
    e->last = now;
    e->suppressed = 0;
}

/* The script a call comes from, for print/log lines: "name.lua". */
static const char *caller_name(lua_State *L, char *buf, size_t n)
{
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "S", &ar) && ar.short_src[0]) {
        const char *slash = strrchr(ar.short_src, '/');
        snprintf(buf, n, "%s", slash ? slash + 1 : ar.short_src);
        return buf;
    }
    return "script";
}

static int l_print(lua_State *L)
{
    luaL_Buffer b;
    char who[128];
    int n = lua_gettop(L);
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    log_info("[%s] %s", caller_name(L, who, sizeof who), lua_tostring(L, -1));
    return 0;
}

/* log(msg) or log(level, msg) with level "debug" | "info" | "warn" | "error". */
static int l_log(lua_State *L)
{
    char who[128];
    const char *level = "info", *msg;
    if (lua_gettop(L) >= 2) {
        level = luaL_checkstring(L, 1);
        msg = luaL_tolstring(L, 2, NULL);
    } else {
        msg = luaL_tolstring(L, 1, NULL);
    }
    caller_name(L, who, sizeof who);
    if (!strcmp(level, "debug"))
        log_debug("[%s] %s", who, msg);
    else if (!strcmp(level, "warn"))
        log_warn("[%s] %s", who, msg);
    else if (!strcmp(level, "error"))
        log_error("[%s] %s", who, msg);
    else
        log_info("[%s] %s", who, msg);
    return 0;
}

/* ---- loading files --------------------------------------------------------- */

static int note_file(state_t *st, const char *path)
{
    char real[PATH_MAX];
    if (!realpath(path, real))
        snprintf(real, sizeof real, "%s", path);
    for (size_t i = 0; i < st->nfiles; i++)
        if (!strcmp(st->files[i], real))
            return 0;
    char **nf = realloc(st->files, (st->nfiles + 1) * sizeof *nf);
    if (!nf)
        return -1;
    st->files = nf;
    st->files[st->nfiles] = strdup(real);
    if (!st->files[st->nfiles])
        return -1;
    st->nfiles++;
    return 0;
}

/* Loads a file as text only (never a binary chunk) with the sandbox as its
 * environment; pushes the chunk.  Returns LUA_OK or an error with the
 * message pushed. */
static int load_file(state_t *st, const char *path, const char *chunkname)
{
    lua_State *L = st->L;
    FILE *f = fopen(path, "rb");
    if (!f) {
        lua_pushfstring(L, "cannot open %s: %s", path, strerror(errno));
        return LUA_ERRFILE;
    }
    luaL_Buffer b;
    char chunk[4096];
    size_t n;
    luaL_buffinit(L, &b);
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        luaL_addlstring(&b, chunk, n);
    fclose(f);
    luaL_pushresult(&b);
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    /* Skip a #! line like the standalone interpreter does. */
    const char *start = text;
    if (len && text[0] == '#') {
        const char *nl = memchr(text, '\n', len);
        start = nl ? nl : text + len;
    }
    int rc = luaL_loadbufferx(L, start, len - (size_t)(start - text), chunkname, "t");
    lua_remove(L, -2);
    if (rc != LUA_OK)
        return rc;
    lua_rawgeti(L, LUA_REGISTRYINDEX, st->env_ref);
    lua_setupvalue(L, -2, 1);
    note_file(st, path);
    return LUA_OK;
}

/* The name errors and Tide-Script show for a file: relative to the entry
 * file's directory ("rules.lua"), or "lua/<file>" for tide's library. */
static void chunk_name(const script_host_t *h, const char *path, char *out, size_t n)
{
    size_t dl = strlen(h->config_dir), ll = h->lib_dir ? strlen(h->lib_dir) : 0;
    if (!strncmp(path, h->config_dir, dl) && path[dl] == '/')
        snprintf(out, n, "@%s", path + dl + 1);
    else if (ll && !strncmp(path, h->lib_dir, ll) && path[ll] == '/')
        snprintf(out, n, "@lua/%s", path + ll + 1);
    else
        snprintf(out, n, "@%s", path);
}

/* require(name): "a.b" is a/b.lua (or a/b/init.lua) beside the entry file,
 * then in tide's lua/ directory.  Loaded once per state. */
static void start_watching(script_host_t *h);

static int l_require(lua_State *L)
{
    state_t *st = state_of(L);
    const char *name = luaL_checkstring(L, 1);
    char rel[512], path[PATH_MAX], chunkname[PATH_MAX + 2];
    const char *dirs[2] = {st->host->config_dir, st->host->lib_dir};

    lua_getfield(L, LUA_REGISTRYINDEX, "tide.loaded");
    if (lua_getfield(L, -1, name) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    if (strstr(name, "..") || name[0] == '/' || name[0] == '.')
        return luaL_error(L, "module name '%s' is not allowed", name);
    snprintf(rel, sizeof rel, "%s", name);
    for (char *p = rel; *p; p++)
        if (*p == '.')
            *p = '/';
    for (int d = 0; d < 2; d++) {
        if (!dirs[d])
            continue;
        for (int variant = 0; variant < 2; variant++) {
            snprintf(path, sizeof path, variant ? "%s/%s/init.lua" : "%s/%s.lua", dirs[d], rel);
            if (access(path, R_OK) != 0)
                continue;
            chunk_name(st->host, path, chunkname, sizeof chunkname);
            if (load_file(st, path, chunkname) != LUA_OK)
                return lua_error(L);
            lua_pushstring(L, name);
            lua_call(L, 1, 1);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_pushboolean(L, 1);
            }
            lua_pushvalue(L, -1);
            lua_setfield(L, -3, name);
            /* Required while serving (inside a rule): watch it from now on. */
            if (st->host->srv && st == st->host->cur && (st->host->watch_ev || st->host->poll_timer))
                start_watching(st->host);
            return 1;
        }
    }
    return luaL_error(L, "module '%s' not found beside %s or in %s", name, st->host->config_dir,
                      st->host->lib_dir ? st->host->lib_dir : "(no lua/ directory)");
}

/* load(text [, name [, mode [, env]]]): text only, sandbox by default. */
static int l_load(lua_State *L)
{
    state_t *st = state_of(L);
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, "=(load)");
    const char *mode = luaL_optstring(L, 3, "t");
    if (strchr(mode, 'b'))
        return luaL_error(L, "binary chunks are not allowed");
    if (luaL_loadbufferx(L, s, len, name, "t") != LUA_OK) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    if (!lua_isnoneornil(L, 4))
        lua_pushvalue(L, 4);
    else
        lua_rawgeti(L, LUA_REGISTRYINDEX, st->env_ref);
    lua_setupvalue(L, -2, 1);
    return 1;
}

/* ---- settings: listen{}, limits{}, scripting{} ------------------------------- */

/* Sizes: 1024, "64KB", "1MB", "2GB" (powers of 1024). */
static size_t size_field(lua_State *L, int t, const char *key, size_t def)
{
    size_t v = def;
    int type = lua_getfield(L, t, key);
    if (type == LUA_TNUMBER) {
        lua_Integer i = lua_tointeger(L, -1);
        if (!lua_isinteger(L, -1) || i < 0)
            luaL_error(L, "%s must be a whole number of bytes", key);
        v = (size_t)i;
    } else if (type == LUA_TSTRING) {
        const char *s = lua_tostring(L, -1);
        char *end;
        double d = strtod(s, &end);
        while (*end == ' ')
            end++;
        double mul = 1;
        if (!strcasecmp(end, "kb") || !strcasecmp(end, "k")) mul = 1024;
        else if (!strcasecmp(end, "mb") || !strcasecmp(end, "m")) mul = 1024.0 * 1024;
        else if (!strcasecmp(end, "gb") || !strcasecmp(end, "g")) mul = 1024.0 * 1024 * 1024;
        else if (*end && strcasecmp(end, "b"))
            luaL_error(L, "%s: cannot read '%s' as a size (e.g. 1048576, \"64KB\", \"1MB\")", key, s);
        if (end == s || d < 0)
            luaL_error(L, "%s: cannot read '%s' as a size", key, s);
        v = (size_t)(d * mul);
    } else if (type != LUA_TNIL) {
        luaL_error(L, "%s must be a number or a string such as \"1MB\"", key);
    }
    lua_pop(L, 1);
    return v;
}

/* Durations: seconds as a number, or "250ms", "2s", "5m", "1h". */
static double duration_field(lua_State *L, int t, const char *key, double def)
{
    double v = def;
    int type = lua_getfield(L, t, key);
    if (type == LUA_TNUMBER) {
        v = lua_tonumber(L, -1);
    } else if (type == LUA_TSTRING) {
        const char *s = lua_tostring(L, -1);
        char *end;
        v = strtod(s, &end);
        if (end == s)
            luaL_error(L, "%s: cannot read '%s' as a duration (e.g. 2, \"250ms\", \"2s\")", key, s);
        if (!strcmp(end, "ms")) v /= 1000;
        else if (!strcmp(end, "us")) v /= 1e6;
        else if (!strcmp(end, "m")) v *= 60;
        else if (!strcmp(end, "h")) v *= 3600;
        else if (*end && strcmp(end, "s"))
            luaL_error(L, "%s: unknown unit in '%s' (us, ms, s, m, h)", key, s);
    } else if (type != LUA_TNIL) {
        luaL_error(L, "%s must be a number of seconds or a string such as \"2s\"", key);
    }
    if (v < 0)
        luaL_error(L, "%s must not be negative", key);
    lua_pop(L, 1);
    return v;
}

/* Rejects keys a settings table does not know: a typo must not pass silently. */
static void check_keys(lua_State *L, int t, const char *what, const char *const *known)
{
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        int ok = 0;
        for (int i = 0; k && known[i]; i++)
            if (!strcmp(k, known[i]))
                ok = 1;
        if (!ok)
            luaL_error(L, "%s: unknown setting '%s'", what, k ? k : luaL_typename(L, -1));
    }
}

static int l_listen(lua_State *L)
{
    static const char *const known[] = {"nats", "http", NULL};
    state_t *st = state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    check_keys(L, 1, "listen", known);
    if (lua_getfield(L, 1, "http") != LUA_TNIL) {
        if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            st->http_off = 1;
        } else {
            const char *a = luaL_checkstring(L, -1);
            if (!strrchr(a, ':') || strlen(a) >= sizeof st->http_addr)
                return luaL_error(L, "listen: http = \"host:port\" (or false) expected, got '%s'", a);
            snprintf(st->http_addr, sizeof st->http_addr, "%s", a);
        }
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "nats") == LUA_TSTRING) {
        const char *a = lua_tostring(L, -1);
        const char *colon = strrchr(a, ':');
        char *end;
        long port;
        if (!colon)
            return luaL_error(L, "listen: nats = \"host:port\" expected, got '%s'", a);
        port = strtol(colon + 1, &end, 10);
        if (*end || port < 0 || port > 65535)
            return luaL_error(L, "listen: bad port in '%s'", a);
        size_t hl = (size_t)(colon - a);
        if (hl >= 2 && a[0] == '[' && a[hl - 1] == ']') { /* [::1]:4222 */
            a++;
            hl -= 2;
        }
        if (hl >= sizeof st->listen_host)
            return luaL_error(L, "listen: host too long");
        memcpy(st->listen_host, a, hl);
        st->listen_host[hl] = '\0';
        st->listen_port = (int)port;
        st->has_listen = 1;
    } else if (!lua_isnil(L, -1)) {
        return luaL_error(L, "listen: nats must be a string \"host:port\"");
    }
    return 0;
}

static int l_limits(lua_State *L)
{
    static const char *const known[] = {"max_payload", "max_control_line", "max_pending", "ping_interval",
                                        "max_pings_out", "write_deadline", NULL};
    state_t *st = state_of(L);
    server_opts_t *o = &st->set;
    luaL_checktype(L, 1, LUA_TTABLE);
    check_keys(L, 1, "limits", known);
#define SIZE_SETTING(key, field, bit)                                                                      \
    do {                                                                                                   \
        if (lua_getfield(L, 1, key) != LUA_TNIL) {                                                         \
            o->field = size_field(L, 1, key, 0);                                                           \
            st->set_mask |= bit;                                                                           \
        }                                                                                                  \
        lua_pop(L, 1);                                                                                     \
    } while (0)
    SIZE_SETTING("max_payload", max_payload, SET_MAX_PAYLOAD);
    SIZE_SETTING("max_control_line", max_control_line, SET_MAX_CONTROL_LINE);
    SIZE_SETTING("max_pending", max_pending, SET_MAX_PENDING);
#undef SIZE_SETTING
    if (lua_getfield(L, 1, "ping_interval") != LUA_TNIL) {
        o->ping_interval = duration_field(L, 1, "ping_interval", 0);
        st->set_mask |= SET_PING_INTERVAL;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "write_deadline") != LUA_TNIL) {
        o->write_deadline = duration_field(L, 1, "write_deadline", 0);
        st->set_mask |= SET_WRITE_DEADLINE;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "max_pings_out") != LUA_TNIL) {
        o->max_pings_out = (int)luaL_checkinteger(L, -1);
        st->set_mask |= SET_MAX_PINGS_OUT;
    }
    lua_pop(L, 1);
    if ((st->set_mask & SET_MAX_PAYLOAD) && o->max_payload == 0)
        return luaL_error(L, "limits: max_payload must be at least 1");
    return 0;
}

/* http { binary = { "order.>", ... } }: events posted over HTTP whose
 * subject matches go out in the CloudEvents NATS binding's binary mode
 * (ce-* headers, the data as payload) instead of as a JSON envelope. */
static int l_http(lua_State *L)
{
    static const char *const known[] = {"binary", NULL};
    state_t *st = state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    check_keys(L, 1, "http", known);
    if (lua_getfield(L, 1, "binary") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TTABLE);
        int n = (int)luaL_len(L, -1);
        if (n < 0 || st->nhttp_binary + n > 32)
            return luaL_error(L, "http: at most 32 binary patterns in all");
        for (int i = 1; i <= n; i++) {
            size_t pl;
            lua_rawgeti(L, -1, i);
            const char *p = luaL_checklstring(L, -1, &pl);
            if (!subject_valid_pattern(p, pl))
                return luaL_error(L, "http: invalid subject pattern '%s'", p);
            char *d = mem_dup(p, pl);
            if (!d)
                return luaL_error(L, "out of memory");
            st->http_binary[st->nhttp_binary++] = d;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return 0;
}

/* admin { eval = true }: lets `tide repl --connect` run Lua on this node
 * (from loopback clients only).  Off unless set. */
static int l_admin(lua_State *L)
{
    static const char *const known[] = {"eval", NULL};
    state_t *st = state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    check_keys(L, 1, "admin", known);
    if (lua_getfield(L, 1, "eval") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TBOOLEAN);
        st->admin_eval = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return 0;
}

static int l_scripting(lua_State *L)
{
    static const char *const known[] = {"instructions", "memory", "time", "emit_depth", "emit_max",
                                        "dead_letter", NULL};
    state_t *st = state_of(L);
    script_limits_t *l = &st->limits;
    luaL_checktype(L, 1, LUA_TTABLE);
    check_keys(L, 1, "scripting", known);
    if (lua_getfield(L, 1, "instructions") != LUA_TNIL) {
        lua_Integer i = luaL_checkinteger(L, -1);
        if (i < HOOK_STEP)
            return luaL_error(L, "scripting: instructions must be at least %d", HOOK_STEP);
        l->instructions = (uint64_t)i;
    }
    lua_pop(L, 1);
    size_t mem = size_field(L, 1, "memory", l->memory);
    if (mem < 1024 * 1024)
        return luaL_error(L, "scripting: memory must be at least 1MB");
    if (mem < st->mem_used + 256 * 1024)
        return luaL_error(L, "scripting: memory %d is below what the scripts already use (%d)", (int)mem,
                          (int)st->mem_used);
    l->memory = mem;
    l->time = duration_field(L, 1, "time", l->time);
    if (l->time <= 0)
        return luaL_error(L, "scripting: time must be above 0");
    if (lua_getfield(L, 1, "emit_depth") != LUA_TNIL)
        l->emit_depth = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "emit_max") != LUA_TNIL)
        l->emit_max = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "dead_letter") != LUA_TNIL) {
        size_t n;
        const char *d = luaL_checklstring(L, -1, &n);
        if (!subject_valid_literal(d, n) || n >= sizeof l->dead_letter)
            return luaL_error(L, "scripting: dead_letter must be a subject prefix such as \"$TIDE.DEAD\"");
        memcpy(l->dead_letter, d, n + 1);
    }
    lua_pop(L, 1);
    return 0;
}

/* ---- rule registration ------------------------------------------------------- */

static void rule_free(rule_t *r)
{
    if (r) {
        free(r->pattern);
        free(r);
    }
}

static int add_rule(lua_State *L, int kind, const char *pattern, size_t plen, int64_t from, int fn_idx)
{
    state_t *st = state_of(L);
    lua_Debug ar;
    rule_t *r = calloc(1, sizeof *r);
    if (!r)
        return luaL_error(L, "out of memory");
    r->kind = kind;
    r->pattern = mem_dup(pattern, plen);
    r->pattern_len = plen;
    r->from_version = from;
    if (!r->pattern || (st->nrules == st->caprules && 0)) {
        rule_free(r);
        return luaL_error(L, "out of memory");
    }
    lua_pushvalue(L, fn_idx);
    lua_getinfo(L, ">S", &ar);
    snprintf(r->where, sizeof r->where, "%s:%d", ar.short_src, ar.linedefined);
    if (st->nrules == st->caprules) {
        size_t nc = st->caprules ? st->caprules * 2 : 16;
        rule_t **nr = realloc(st->rules, nc * sizeof *nr);
        if (!nr) {
            rule_free(r);
            return luaL_error(L, "out of memory");
        }
        st->rules = nr;
        st->caprules = nc;
    }
    if (kind == RULE_UPGRADE) {
        char key[600];
        int kl = snprintf(key, sizeof key, "%s%c%lld", pattern, 0, (long long)from);
        rule_t *old = dict_get(&st->upgraders, key, (size_t)kl);
        if (old) {
            char w[200];
            snprintf(w, sizeof w, "%s", old->where);
            rule_free(r);
            return luaL_error(L, "an upgrader for %s v%d is already registered at %s", pattern, (int)from, w);
        }
        if (dict_put(&st->upgraders, key, (size_t)kl, r) < 0) {
            rule_free(r);
            return luaL_error(L, "out of memory");
        }
    }
    lua_pushvalue(L, fn_idx);
    r->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    st->rules[st->nrules++] = r;
    st->nkind[kind]++;
    /* A new rule changes what matches: forget the cached matches. */
    dict_clear(&st->matches, free);
    return 0;
}

static int register_pattern_rule(lua_State *L, int kind)
{
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (!subject_valid_pattern(p, n))
        return luaL_error(L, "%s: invalid subject pattern '%s' (tokens separated by '.', wildcards '*' and "
                             "'>' as whole tokens, '>' last)", kind_names[kind], p);
    return add_rule(L, kind, p, n, 0, 2);
}

static int l_filter(lua_State *L) { return register_pattern_rule(L, RULE_FILTER); }
static int l_route(lua_State *L) { return register_pattern_rule(L, RULE_ROUTE); }
static int l_on(lua_State *L) { return register_pattern_rule(L, RULE_HANDLER); }

static int l_upgrade(lua_State *L)
{
    size_t n;
    const char *type = luaL_checklstring(L, 1, &n);
    lua_Integer from = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    if (n == 0 || n > 255)
        return luaL_error(L, "upgrade: type must be a non-empty string");
    if (from < 1)
        return luaL_error(L, "upgrade: from_version must be 1 or more");
    return add_rule(L, RULE_UPGRADE, type, n, (int64_t)from, 3);
}

/* ---- ctx.publish ---------------------------------------------------------------- */

static void make_uuid(char out[37])
{
    unsigned char b[16];
    static const char hex[] = "0123456789abcdef";
    evutil_secure_rng_get_bytes(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

static void now_rfc3339(char out[64])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

/* Registry slot of the event whose handlers are running (set around the
 * handler calls in run_event).  Handlers' C functions (ctx.publish,
 * ctx.reply) run in frames of their own, so a stack index of run_event's
 * frame does not reach the event from there. */
static const char handled_event_key = 'h';

/* Pushes the event being handled (nil outside a handler) and returns it,
 * or NULL when there is none or it has ended. */
static event_t *push_handled_event(lua_State *L, state_t *st)
{
    event_t *ev = NULL;
    if (st->cur_ev_idx && lua_rawgetp(L, LUA_REGISTRYINDEX, &handled_event_key) == LUA_TUSERDATA)
        ev = event_test(L, -1);
    else if (!st->cur_ev_idx)
        lua_pushnil(L);
    return ev && !ev->expired ? ev : NULL;
}

/* Reads a string attribute of the current event (its header first, then
 * its envelope) into buf; returns buf or NULL. */
static const char *current_attr(lua_State *L, state_t *st, const char *header, const char *attr, char *buf,
                                size_t n)
{
    event_t *ev = push_handled_event(L, st);
    int idx = lua_gettop(L);
    const char *found = NULL;
    size_t vl;
    const char *v;
    if (ev && header && ev->hdr && (v = event_header_find(ev->hdr, ev->hdr_len, header, &vl))) {
        snprintf(buf, n, "%.*s", (int)vl, v);
        found = buf;
    } else if (ev) {
        lua_getfield(L, idx, attr);
        if (lua_type(L, -1) == LUA_TSTRING) {
            snprintf(buf, n, "%s", lua_tostring(L, -1));
            found = buf;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return found;
}

/*
 * ctx.publish(subject, data_or_event [, headers]) -> true | false, reason
 * Queues a new event that goes through the whole pipeline once the current
 * one is done.  It carries the correlation id of the chain and, as its
 * causation id, the id of the event being handled.
 */
static int l_ctx_publish(lua_State *L)
{
    state_t *st = state_of(L);
    script_host_t *h = st->host;
    size_t sl;
    const char *subject = luaL_checklstring(L, 1, &sl);
    char corr[128], cause[128], idbuf[37], timebuf[64];
    const char *correlation, *causation;

    luaL_checkany(L, 2);
    if (!subject_valid_literal(subject, sl))
        return luaL_error(L, "ctx.publish: invalid subject '%s'", subject);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    if (st->cur_depth + 1 > st->limits.emit_depth || h->queued_total >= st->limits.emit_max) {
        char msg[300];
        h->st.loops_stopped++;
        snprintf(msg, sizeof msg, "emit chain stopped at %s: %s (limit %d)", subject,
                 st->cur_depth + 1 > st->limits.emit_depth ? "depth over emit_depth" : "too many events from one event",
                 st->cur_depth + 1 > st->limits.emit_depth ? st->limits.emit_depth : st->limits.emit_max);
        log_rate_limited(h, msg);
        lua_pushboolean(L, 0);
        lua_pushstring(L, msg);
        return 2;
    }
    causation = current_attr(L, st, NULL, "id", cause, sizeof cause);
    correlation = current_attr(L, st, "Tide-Correlation-Id", "correlationid", corr, sizeof corr);
    if (!correlation)
        correlation = causation;

    /* Everything that can raise is built on the Lua stack first; the
     * queued copy is allocated last, so an error leaks nothing. */
    event_t *src = event_test(L, 2);
    proto_msg_t sm;
    if (src) {
        event_bytes(L, 2, &sm);
        lua_pushlstring(L, sm.payload, sm.payload_len);
    } else if (lua_type(L, 2) == LUA_TSTRING) {
        lua_pushvalue(L, 2);
    } else {
        cJSON *data = json_from_lua(L, 2);
        cJSON *env = cJSON_CreateObject();
        json_push_document(L, env, NULL); /* frees env (and data in it) if anything raises */
        if (!env) {
            cJSON_Delete(data);
            return luaL_error(L, "out of memory");
        }
        make_uuid(idbuf);
        now_rfc3339(timebuf);
        char *type = mem_dup(subject, sl);
        cJSON_AddItemToObject(env, "specversion", cJSON_CreateString("1.0"));
        cJSON_AddItemToObject(env, "id", cJSON_CreateString(idbuf));
        cJSON_AddItemToObject(env, "source", cJSON_CreateString("tide"));
        cJSON_AddItemToObject(env, "type", cJSON_CreateString(type ? type : ""));
        cJSON_AddItemToObject(env, "time", cJSON_CreateString(timebuf));
        free(type);
        if (correlation)
            cJSON_AddItemToObject(env, "correlationid", cJSON_CreateString(correlation));
        if (causation)
            cJSON_AddItemToObject(env, "causationid", cJSON_CreateString(causation));
        cJSON_AddItemToObject(env, "data", data);
        size_t pl;
        char *p = json_print(env, &pl);
        if (!p)
            return luaL_error(L, "out of memory");
        lua_pushlstring(L, p, pl);
        free(p);
        lua_remove(L, -2); /* the document */
    }
    int payload_idx = lua_gettop(L);

    /* The headers: the source event's, the caller's, then the chain's ids,
     * appended to one string at acc (the stack stays free for lua_next). */
    lua_pushliteral(L, "NATS/1.0\r\n");
    int acc = lua_gettop(L);
#define APPEND(push)                                                                                                   \
    do {                                                                                                               \
        lua_pushvalue(L, acc);                                                                                         \
        push;                                                                                                          \
        lua_concat(L, 2);                                                                                              \
        lua_replace(L, acc);                                                                                           \
    } while (0)
    if (src && sm.hdr && sm.hdr_len >= 2) {
        /* Its header lines, without the status line and the chain ids,
         * which are set anew below. */
        const char *p = memchr(sm.hdr, '\n', sm.hdr_len), *end = sm.hdr + sm.hdr_len;
        for (p = p ? p + 1 : end; p < end;) {
            const char *eol = memchr(p, '\n', (size_t)(end - p));
            const char *le = eol ? eol + 1 : end;
            if (le - p > 2 && strncasecmp(p, "Tide-Correlation-Id:", 20) && strncasecmp(p, "Tide-Causation-Id:", 18))
                APPEND(lua_pushlstring(L, p, (size_t)(le - p)));
            p = le;
        }
    }
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) { /* acc+1 = name, acc+2 = value */
            size_t kl, vl;
            if (lua_type(L, acc + 1) != LUA_TSTRING)
                return luaL_error(L, "ctx.publish: header names must be strings");
            const char *k = lua_tolstring(L, acc + 1, &kl);
            const char *v = luaL_tolstring(L, acc + 2, &vl); /* acc+3 */
            if (memchr(k, ':', kl) || memchr(k, '\n', kl) || memchr(v, '\n', vl) || memchr(v, '\r', vl))
                return luaL_error(L, "ctx.publish: header names hold no ':' and values no CR/LF");
            lua_pushvalue(L, acc);
            lua_pushvalue(L, acc + 1);
            lua_pushliteral(L, ": ");
            lua_pushvalue(L, acc + 3);
            lua_pushliteral(L, "\r\n");
            lua_concat(L, 5);
            lua_replace(L, acc);
            lua_settop(L, acc + 1); /* the name, for lua_next */
        }
    }
    if (correlation)
        APPEND(lua_pushfstring(L, "Tide-Correlation-Id: %s\r\n", correlation));
    if (causation)
        APPEND(lua_pushfstring(L, "Tide-Causation-Id: %s\r\n", causation));
    APPEND(lua_pushliteral(L, "\r\n"));
#undef APPEND
    lua_settop(L, acc);

    size_t hl, pl;
    const char *hs = lua_tolstring(L, -1, &hl);
    const char *ps = lua_tolstring(L, payload_idx, &pl);
    size_t max_payload = server_get_opts(h->srv)->max_payload;
    if (pl + (hl > 12 ? hl : 0) > max_payload)
        return luaL_error(L, "ctx.publish: message of %d bytes is over max_payload (%d)", (int)(pl + hl),
                          (int)max_payload);
    /* Queued events live outside the Lua heap: they count against the same cap. */
    if (h->queue.bytes + pl + hl > st->limits.memory) {
        char msg[200];
        h->st.loops_stopped++;
        snprintf(msg, sizeof msg, "emit chain stopped at %s: queued events over the memory budget (%zu bytes)",
                 subject, st->limits.memory);
        log_rate_limited(h, msg);
        lua_pushboolean(L, 0);
        lua_pushstring(L, msg);
        return 2;
    }
    proto_msg_t qm;
    memset(&qm, 0, sizeof qm);
    qm.subject = subject;
    qm.subject_len = sl;
    qm.payload = ps;
    qm.payload_len = pl;
    if (hl > strlen("NATS/1.0\r\n\r\n")) { /* only chain ids or caller headers make a block */
        qm.hdr = hs;
        qm.hdr_len = hl;
    }
    if (msgq_push(&h->queue, &qm, st->cur_depth + 1) < 0)
        return luaL_error(L, "out of memory");
    h->queued_total++;
    h->st.emitted++;
    lua_pushboolean(L, 1);
    return 1;
}

/* ctx.reply(data): publishes to the reply subject of the event being handled. */
static int l_ctx_reply(lua_State *L)
{
    state_t *st = state_of(L);
    event_t *ev = push_handled_event(L, st);
    lua_pop(L, 1); /* still anchored in the registry */
    if (!ev || !ev->reply)
        return luaL_error(L, "ctx.reply: the event has no reply subject");
    lua_pushlstring(L, ev->reply, ev->reply_len);
    lua_insert(L, 1);
    return l_ctx_publish(L);
}

/* ---- the sandbox ---------------------------------------------------------------- */

/*
 * The Lua patterns of string.find/match/gmatch/gsub run inside one C call
 * that neither returns to the VM nor (for find and match) allocates, so no
 * budget can interrupt them.  Their worst case grows as the subject length
 * to the power of the number of variable-length repetitions, so a call
 * whose bound exceeds PATTERN_WORK_MAX is refused before it starts.
 */
#define PATTERN_WORK_MAX 2e9

static double pattern_work(const char *p, size_t pl, size_t n)
{
    int reps = 0, opts = 0, anchored = pl > 0 && p[0] == '^';
    for (size_t i = 0; i < pl; i++) {
        if (p[i] == '%') {
            i++;
            continue;
        }
        if (p[i] == '[') { /* skip a set: its ']' may come first, and '%' escapes */
            i++;
            if (i < pl && p[i] == '^')
                i++;
            if (i < pl && p[i] == ']')
                i++;
            while (i < pl && p[i] != ']') {
                if (p[i] == '%')
                    i++;
                i++;
            }
            continue;
        }
        if (p[i] == '*' || p[i] == '+' || p[i] == '-')
            reps++;
        else if (p[i] == '?')
            opts++; /* each optional item can double the backtracking */
    }
    double work = (double)n + 1;
    for (int r = 0; r < reps && work < 1e300; r++)
        work *= (double)n + 1;
    for (int r = 0; r < opts && work < 1e300; r++)
        work *= 2;
    if (anchored && n > 0)
        work /= (double)n;
    return work;
}

/* Budget check for guarded C calls that run without the VM: charges `work`
 * steps as instructions and looks at the clock, raising like the hook. */
static void charge(lua_State *L, state_t *st, double work)
{
    if (!st->in_call)
        return;
    st->instructions += work > 1e15 ? (uint64_t)1e15 : (uint64_t)work;
    if (!st->budget && st->instructions > st->limits.instructions)
        arm_stop(st, BUDGET_INSTRUCTIONS);
    else if (!st->budget && past_deadline(st))
        arm_stop(st, BUDGET_TIME);
    if (st->budget) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_keys[st->budget]);
        lua_error(L);
    }
}

static int guarded_pattern(lua_State *L)
{
    state_t *st = state_of(L);
    size_t n, pl;
    luaL_checklstring(L, 1, &n);
    const char *p = luaL_checklstring(L, 2, &pl);
    double w = pattern_work(p, pl, n);
    /* Matching steps take a few nanoseconds: no single call may take more
     * than the whole time budget (at 5 ns a step). */
    double limit = st->limits.time * 2e8;
    if (limit > PATTERN_WORK_MAX)
        limit = PATTERN_WORK_MAX;
    charge(L, st, (double)n / 16);
    if (w > limit)
        return luaL_error(L, "pattern '%s' on %d bytes could run for too long (bound %f steps, limit %f); "
                             "match on a shorter string or use fewer repetitions", p, (int)n, w, limit);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* string.rep with the result size checked before the C call allocates it. */
static int guarded_rep(lua_State *L)
{
    state_t *st = state_of(L);
    size_t n, sepl = 0;
    luaL_checklstring(L, 1, &n);
    lua_Integer count = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &sepl);
    if (count > 0 && (double)(n + sepl) * (double)count > (double)st->limits.memory)
        return luaL_error(L, "string.rep result of %f bytes is over the memory budget",
                          (double)(n + sepl) * (double)count);
    if (n + sepl == 0) {
        /* Nothing to repeat: the C loop would spin count times for "". */
        lua_pushliteral(L, "");
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* table.move copies element by element inside one C call: a range longer
 * than the instruction budget is refused (nil elements allocate nothing,
 * so nothing else would stop it). */
static int guarded_move(lua_State *L)
{
    state_t *st = state_of(L);
    lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
    if (e >= f && (lua_Unsigned)e - (lua_Unsigned)f >= st->limits.instructions)
        return luaL_error(L, "table.move of %I elements is over the instruction budget", (lua_Integer)(e - f + 1));
    if (e >= f)
        charge(L, st, (double)((lua_Unsigned)e - (lua_Unsigned)f) + 1); /* an element costs about an instruction */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* Finalizers run whenever the collector gets to them, also outside any
 * script call and its budgets: scripts may not set __gc. */
static int guarded_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE && lua_getfield(L, 2, "__gc") != LUA_TNIL)
        return luaL_error(L, "__gc metamethods (finalizers) are not allowed in scripts");
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

static void copy_fields(lua_State *L, int from, int to, const char *const *names)
{
    for (int i = 0; names[i]; i++) {
        lua_getfield(L, from, names[i]);
        lua_setfield(L, to, names[i]);
    }
}

/* Builds the environment scripts see; leaves it on the stack. */
static void build_env(state_t *st)
{
    lua_State *L = st->L;
    static const char *const base[] = {"assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal",
                                       "rawget", "rawlen", "rawset", "select", "setmetatable",
                                       "getmetatable", "tonumber", "tostring", "type", "xpcall",
                                       "_VERSION", NULL};
    static const char *const os_ok[] = {"clock", "date", "time", "difftime", NULL};
    static const char *const str_ok[] = {"byte", "char", "format", "len", "lower", "upper", "reverse", "sub",
                                         "pack", "packsize", "unpack", NULL};
    static const char *const str_patterns[] = {"find", "match", "gmatch", "gsub", NULL};

    lua_newtable(L);
    int env = lua_gettop(L);
    lua_pushglobaltable(L);
    int g = lua_gettop(L);
    copy_fields(L, g, env, base);
    static const char *const libs[] = {"table", "math", "utf8", "coroutine", NULL};
    for (int i = 0; libs[i]; i++) {
        /* A copy, so one script cannot replace table.insert for the server. */
        lua_getfield(L, g, libs[i]);
        lua_newtable(L);
        lua_pushnil(L);
        while (lua_next(L, -3)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
        lua_setfield(L, env, libs[i]);
        lua_pop(L, 1);
    }
    lua_getfield(L, env, "table");
    lua_getfield(L, -1, "move");
    lua_pushcclosure(L, guarded_move, 1);
    lua_setfield(L, -2, "move");
    lua_pop(L, 1);
    lua_getfield(L, env, "setmetatable");
    lua_pushcclosure(L, guarded_setmetatable, 1);
    lua_setfield(L, env, "setmetatable");
    /* string: no dump; patterns and rep guarded. */
    lua_getfield(L, g, "string");
    int strlib = lua_gettop(L);
    lua_newtable(L);
    copy_fields(L, strlib, lua_gettop(L), str_ok);
    for (int i = 0; str_patterns[i]; i++) {
        lua_getfield(L, strlib, str_patterns[i]);
        lua_pushcclosure(L, guarded_pattern, 1);
        lua_setfield(L, -2, str_patterns[i]);
    }
    lua_getfield(L, strlib, "rep");
    lua_pushcclosure(L, guarded_rep, 1);
    lua_setfield(L, -2, "rep");
    /* Method calls on strings ("x"):find(...) must see the guarded table too. */
    lua_pushvalue(L, -1);
    lua_setfield(L, env, "string");
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "string");
    lua_setfield(L, -2, "__metatable"); /* getmetatable("") must not open it up */
    lua_pop(L, 4);
    /* os: the clock and the date only. */
    lua_getfield(L, g, "os");
    lua_newtable(L);
    copy_fields(L, lua_gettop(L) - 1, lua_gettop(L), os_ok);
    lua_setfield(L, env, "os");
    lua_pop(L, 1);
    lua_pop(L, 1); /* global table */

    static const luaL_Reg fns[] = {{"print", l_print},     {"require", l_require}, {"load", l_load},
                                   {"listen", l_listen},   {"limits", l_limits},   {"scripting", l_scripting},
                                   {"admin", l_admin},     {"http", l_http},
                                   {"upgrade", l_upgrade}, {"filter", l_filter},   {"route", l_route},
                                   {"on", l_on},           {NULL, NULL}};
    lua_pushvalue(L, env);
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);

    /* tide.*: json helpers, kv, log. */
    lua_newtable(L);
    int tide = lua_gettop(L);
    json_open(L);
    lua_getfield(L, -1, "null");
    lua_setfield(L, tide, "null");
    lua_getfield(L, -1, "array");
    lua_setfield(L, tide, "array");
    lua_setfield(L, tide, "json");
    kv_push_api(L, st->host->kv);
    lua_setfield(L, tide, "kv");
    lua_pushcfunction(L, l_log);
    lua_setfield(L, tide, "log");
    lua_pushcfunction(L, l_log);
    lua_setfield(L, env, "log");
    lua_pushstring(L, TIDE_VERSION);
    lua_setfield(L, tide, "version");
    lua_setfield(L, env, "tide");

    lua_pushvalue(L, env);
    lua_setfield(L, env, "_G");

    /* The ctx handed to handlers. */
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, l_ctx_publish);
    lua_setfield(L, -2, "publish");
    lua_pushcfunction(L, l_ctx_reply);
    lua_setfield(L, -2, "reply");
    st->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

static int run_event(lua_State *L);

static int at_panic(lua_State *L)
{
    log_error("PANIC: unprotected error in Lua: %s", lua_tostring(L, -1));
    abort();
    return 0;
}

static void state_free(state_t *st)
{
    if (!st)
        return;
    if (st->L)
        lua_close(st->L);
    for (size_t i = 0; i < st->nrules; i++)
        rule_free(st->rules[i]);
    free(st->rules);
    dict_clear(&st->upgraders, NULL);
    dict_clear(&st->matches, free);
    for (size_t i = 0; i < st->nfiles; i++)
        free(st->files[i]);
    free(st->files);
    for (int i = 0; i < st->nhttp_binary; i++)
        free(st->http_binary[i]);
    free(st);
}

/* Opens only what the sandbox copies from: base, table, string, math, utf8, os, coroutine. */
static int open_libs(lua_State *L)
{
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},       {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_STRLIBNAME, luaopen_string}, {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8},  {LUA_OSLIBNAME, luaopen_os},
                                    {LUA_COLIBNAME, luaopen_coroutine}, {NULL, NULL}};
    for (const luaL_Reg *l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    return 0;
}

static int run_entry(lua_State *L)
{
    state_t *st = state_of(L);
    const char *path = st->host->config_path;
    if (!path)
        return 0; /* a prompt with no entry file */
    char chunkname[PATH_MAX + 8];
    chunk_name(st->host, path, chunkname, sizeof chunkname);
    if (load_file(st, path, chunkname) != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 0);
    return 0;
}

/* Builds a state from the entry file.  NULL with "file:line: message" in err on failure. */
static state_t *state_new(script_host_t *h, const script_limits_t *limits, char *err, size_t errsz)
{
    state_t *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    st->host = h;
    st->limits = *limits;
    st->L = lua_newstate(state_alloc, st);
    if (!st->L) {
        snprintf(err, errsz, "cannot create a Lua state: out of memory");
        free(st);
        return NULL;
    }
    lua_State *L = st->L;
    lua_atpanic(L, at_panic);
    *(state_t **)lua_getextraspace(L) = st;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
    static const char *const budget_text[] = {"budget exceeded", "instruction budget exceeded",
                                              "time budget exceeded", "memory budget exceeded"};
    for (int i = 0; i < 4; i++) {
        lua_pushstring(L, budget_text[i]);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &budget_keys[i]);
    }

    /* Most garbage is one event's and dies young: the generational mode
     * collects it for less work than the incremental one. */
    lua_gc(L, LUA_GCGEN, 60, 100);
    lua_pushcfunction(L, open_libs);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK)
        goto fail;
    event_open(L);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "tide.loaded");
    build_env(st);
    st->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    /* Loading runs under the budgets too: a config that loops is refused. */
    lua_pushcfunction(L, run_entry);
    if (budget_call(st, 0, 0) != LUA_OK)
        goto fail;
    lua_rawgeti(L, LUA_REGISTRYINDEX, st->env_ref);
    if (lua_getfield(L, -1, "selfcheck") == LUA_TFUNCTION) {
        if (budget_call(st, 0, 1) != LUA_OK) {
            lua_pushfstring(L, "selfcheck failed: %s", lua_tostring(L, -1));
            goto fail;
        }
        if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            lua_pushliteral(L, "selfcheck() returned false");
            goto fail;
        }
    }
    lua_settop(L, 0);
    lua_pushnil(L);
    lua_pushcclosure(L, run_event, 1); /* RUN_EVENT_SLOT */
    return st;
fail:
    snprintf(err, errsz, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error while loading");
    state_free(st);
    return NULL;
}

/* ---- watching the files ------------------------------------------------------------ */

static void stop_watching(script_host_t *h)
{
    if (h->watch_ev) {
        event_free(h->watch_ev);
        h->watch_ev = NULL;
    }
    if (h->watch_fd >= 0) {
        close(h->watch_fd);
        h->watch_fd = -1;
    }
    if (h->poll_timer) {
        event_free(h->poll_timer);
        h->poll_timer = NULL;
    }
    free(h->poll_mtimes);
    h->poll_mtimes = NULL;
    h->npoll = 0;
}

static void on_debounce(evutil_socket_t fd, short what, void *arg)
{
    script_host_t *h = arg;
    char err[512];
    (void)fd;
    (void)what;
    script_reload(h, "a script file changed", err, sizeof err);
}

static void schedule_reload(script_host_t *h)
{
    /* Editors write in several steps; wait for the burst to end. */
    struct timeval tv = {0, 10 * 1000};
    evtimer_add(h->debounce, &tv);
}

static int is_watched(script_host_t *h, const char *dir, const char *name)
{
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    for (size_t i = 0; h->cur && i < h->cur->nfiles; i++)
        if (!strcmp(h->cur->files[i], path))
            return 1;
    return 0;
}

typedef struct watch_dir {
    int wd;
    char path[PATH_MAX];
} watch_dir_t;

static watch_dir_t *watch_dirs;
static size_t nwatch_dirs;

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
    script_host_t *h = arg;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    (void)what;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ie = (struct inotify_event *)p;
            for (size_t i = 0; i < nwatch_dirs; i++)
                if (watch_dirs[i].wd == ie->wd && ie->len && is_watched(h, watch_dirs[i].path, ie->name))
                    schedule_reload(h);
            p += sizeof *ie + ie->len;
        }
    }
}

static time_t file_stamp(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return 0;
    return sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000 + (time_t)sb.st_size * 7 + (time_t)sb.st_ino;
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    script_host_t *h = arg;
    (void)fd;
    (void)what;
    for (size_t i = 0; i < h->npoll && h->cur && i < h->cur->nfiles; i++) {
        if (file_stamp(h->cur->files[i]) != h->poll_mtimes[i]) {
            schedule_reload(h);
            return;
        }
    }
}

/* Watches the directories of every loaded file: inotify, else polling. */
static void start_watching(script_host_t *h)
{
    struct event_base *base = server_base(h->srv);
    stop_watching(h);
    free(watch_dirs);
    watch_dirs = NULL;
    nwatch_dirs = 0;
    if (!h->cur)
        return;
    h->watch_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (h->watch_fd >= 0) {
        watch_dirs = calloc(h->cur->nfiles, sizeof *watch_dirs);
        for (size_t i = 0; watch_dirs && i < h->cur->nfiles; i++) {
            char dir[PATH_MAX];
            snprintf(dir, sizeof dir, "%s", h->cur->files[i]);
            char *slash = strrchr(dir, '/');
            if (!slash)
                continue;
            *slash = '\0';
            int seen = 0;
            for (size_t j = 0; j < nwatch_dirs; j++)
                if (!strcmp(watch_dirs[j].path, dir))
                    seen = 1;
            if (seen)
                continue;
            int wd = inotify_add_watch(h->watch_fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE);
            if (wd < 0)
                continue;
            watch_dirs[nwatch_dirs].wd = wd;
            snprintf(watch_dirs[nwatch_dirs].path, sizeof watch_dirs[nwatch_dirs].path, "%s", dir);
            nwatch_dirs++;
        }
        h->watch_ev = event_new(base, h->watch_fd, EV_READ | EV_PERSIST, on_inotify, h);
        if (h->watch_ev && nwatch_dirs && event_add(h->watch_ev, NULL) == 0)
            return;
        log_warn("cannot watch script files with inotify (%s); polling every second", strerror(errno));
        stop_watching(h);
    }
    h->poll_mtimes = calloc(h->cur->nfiles ? h->cur->nfiles : 1, sizeof *h->poll_mtimes);
    h->npoll = h->cur->nfiles;
    for (size_t i = 0; h->poll_mtimes && i < h->npoll; i++)
        h->poll_mtimes[i] = file_stamp(h->cur->files[i]);
    struct timeval tv = {1, 0};
    h->poll_timer = event_new(base, -1, EV_PERSIST, on_poll, h);
    if (h->poll_timer)
        event_add(h->poll_timer, &tv);
}

static void on_sighup(evutil_socket_t fd, short what, void *arg)
{
    char err[512];
    (void)fd;
    (void)what;
    script_reload(arg, "SIGHUP", err, sizeof err);
}

/* ---- host --------------------------------------------------------------------------- */

script_host_t *script_host_new(const char *config_path, const char *lib_dir, char *err, size_t errsz)
{
    script_limits_t limits;
    char real[PATH_MAX];
    script_host_t *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    h->watch_fd = -1;
    if (!config_path) {
        /* No entry file (tide repl without -c): rules come from the prompt,
         * require looks in the current directory. */
        h->config_dir = getcwd(NULL, 0);
    } else if (!realpath(config_path, real)) {
        snprintf(err, errsz, "cannot open %s: %s", config_path, strerror(errno));
        free(h);
        return NULL;
    } else {
        h->config_path = strdup(real);
        h->config_dir = strdup(real);
        if (h->config_dir && strrchr(h->config_dir, '/'))
            *strrchr(h->config_dir, '/') = '\0';
    }
    if (lib_dir && realpath(lib_dir, real))
        h->lib_dir = strdup(real);
    h->kv = kv_new();
    if ((config_path && !h->config_path) || !h->config_dir || !h->kv) {
        snprintf(err, errsz, "out of memory");
        script_host_free(h);
        return NULL;
    }
    script_limits_default(&limits);
    h->cur = state_new(h, &limits, err, errsz);
    if (!h->cur) {
        script_host_free(h);
        return NULL;
    }
    h->st.generation = 1;
    snprintf(h->st.last_reload, sizeof h->st.last_reload, "ok");
    return h;
}

void script_host_apply_settings(const script_host_t *h, server_opts_t *o)
{
    const state_t *st = h->cur;
    if (st->has_listen) {
        snprintf(o->host, sizeof o->host, "%s", st->listen_host);
        o->port = st->listen_port;
    }
    if (st->set_mask & SET_MAX_PAYLOAD) o->max_payload = st->set.max_payload;
    if (st->set_mask & SET_MAX_CONTROL_LINE) o->max_control_line = st->set.max_control_line;
    if (st->set_mask & SET_MAX_PENDING) o->max_pending = st->set.max_pending;
    if (st->set_mask & SET_PING_INTERVAL) o->ping_interval = st->set.ping_interval;
    if (st->set_mask & SET_MAX_PINGS_OUT) o->max_pings_out = st->set.max_pings_out;
    if (st->set_mask & SET_WRITE_DEADLINE) o->write_deadline = st->set.write_deadline;
}

void script_host_attach_offline(script_host_t *h, server_t *srv)
{
    h->srv = srv;
}

int script_host_attach(script_host_t *h, server_t *srv)
{
    struct event_base *base = server_base(srv);
    h->srv = srv;
    h->debounce = evtimer_new(base, on_debounce, h);
    h->sighup = evsignal_new(base, SIGHUP, on_sighup, h);
    if (!h->debounce || !h->sighup || event_add(h->sighup, NULL) < 0)
        return -1;
    start_watching(h);
    log_info("Loaded %s: %d rules (%d upgraders, %d filters, %d routes, %d handlers)", h->config_path,
             (int)h->cur->nrules, h->cur->nkind[RULE_UPGRADE], h->cur->nkind[RULE_FILTER],
             h->cur->nkind[RULE_ROUTE], h->cur->nkind[RULE_HANDLER]);
    return 0;
}

void script_host_free(script_host_t *h)
{
    if (!h)
        return;
    stop_watching(h);
    free(watch_dirs);
    watch_dirs = NULL;
    nwatch_dirs = 0;
    if (h->debounce)
        event_free(h->debounce);
    if (h->sighup)
        event_free(h->sighup);
    msgq_clear(&h->queue);
    state_free(h->cur);
    kv_free(h->kv);
    dict_clear(&h->errors_seen, free);
    free(h->config_path);
    free(h->config_dir);
    free(h->lib_dir);
    free(h);
}

int script_reload(script_host_t *h, const char *why, char *err, size_t errsz)
{
    state_t *st;
    if (h->processing) {
        snprintf(err, errsz, "cannot reload from inside a script");
        return -1;
    }
    st = state_new(h, &h->cur->limits, err, errsz);
    if (!st) {
        h->st.reload_failures++;
        snprintf(h->st.last_reload, sizeof h->st.last_reload, "%s", err);
        log_error("Reload (%s) failed, the previous scripts keep serving: %s", why, err);
        return -1;
    }
    if (st->has_listen && (strcmp(st->listen_host, h->cur->listen_host) || st->listen_port != h->cur->listen_port))
        log_warn("Reload: listen addresses change only on restart");
    state_free(h->cur);
    h->cur = st;
    h->st.reloads++;
    h->st.generation++;
    snprintf(h->st.last_reload, sizeof h->st.last_reload, "ok");
    log_info("Reloaded scripts (%s): generation %llu, %d rules", why, (unsigned long long)h->st.generation,
             (int)st->nrules);
    if (h->on_reload)
        h->on_reload(h->on_reload_ctx);
    if (h->srv)
        start_watching(h);
    return 0;
}

void script_get_stats(const script_host_t *h, script_stats_t *out)
{
    *out = h->st;
    out->decodes = event_decode_count();
    out->memory = h->cur ? h->cur->mem_used : 0;
    out->rules = h->cur ? (int)h->cur->nrules : 0;
}

void script_rules_json(const script_host_t *h, char **buf, size_t *len)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && h->cur && i < h->cur->nrules; i++) {
        rule_t *r = h->cur->rules[i];
        cJSON *o = cJSON_CreateObject();
        if (!o)
            break;
        cJSON_AddStringToObject(o, "kind", kind_names[r->kind]);
        cJSON_AddStringToObject(o, r->kind == RULE_UPGRADE ? "type" : "pattern", r->pattern);
        if (r->kind == RULE_UPGRADE)
            cJSON_AddNumberToObject(o, "from_version", (double)r->from_version);
        cJSON_AddStringToObject(o, "where", r->where);
        cJSON_AddNumberToObject(o, "calls", (double)r->calls);
        cJSON_AddNumberToObject(o, "errors", (double)r->errors);
        if (r->kind == RULE_FILTER || r->kind == RULE_ROUTE)
            cJSON_AddNumberToObject(o, "dropped", (double)r->dropped);
        if (r->kind == RULE_ROUTE)
            cJSON_AddNumberToObject(o, "routed", (double)r->routed);
        cJSON_AddItemToArray(arr, o);
    }
    *buf = arr ? json_print(arr, len) : NULL;
    if (!*buf)
        *len = 0;
    cJSON_Delete(arr);
}

/* ---- the pipeline ------------------------------------------------------------------ */

static match_t *match_for(state_t *st, const char *subject, size_t len)
{
    match_t *m = dict_get(&st->matches, subject, len);
    if (m)
        return m;
    size_t count[RULE_KINDS] = {0};
    for (size_t i = 0; i < st->nrules; i++) {
        rule_t *r = st->rules[i];
        if (r->kind != RULE_UPGRADE && subject_matches(r->pattern, r->pattern_len, subject, len))
            count[r->kind]++;
    }
    size_t total = count[RULE_FILTER] + count[RULE_ROUTE] + count[RULE_HANDLER];
    m = calloc(1, sizeof *m + total * sizeof(rule_t *));
    if (!m)
        return NULL;
    rule_t **slot = (rule_t **)(m + 1);
    for (int k = RULE_FILTER; k < RULE_KINDS; k++) {
        m->r[k] = slot;
        slot += count[k];
    }
    for (size_t i = 0; i < st->nrules; i++) {
        rule_t *r = st->rules[i];
        if (r->kind != RULE_UPGRADE && subject_matches(r->pattern, r->pattern_len, subject, len))
            m->r[r->kind][m->n[r->kind]++] = r;
    }
    if (st->matches.count >= MATCH_CACHE_MAX)
        dict_clear(&st->matches, free);
    if (dict_put(&st->matches, subject, len, m) < 0) {
        free(m);
        return NULL;
    }
    return m;
}

/*
 * Could an upgrader apply?  Only when the event's type is a registered one:
 * the type is the subject, an envelope's "type" or a ce-type header, and
 * each must contain the type's text.  A payload with \u escapes might spell
 * it otherwise, so it is decoded to be sure.
 */
static int upgrade_possible(state_t *st, const proto_msg_t *m)
{
    if (!st->nkind[RULE_UPGRADE])
        return 0;
    if (memmem(m->payload, m->payload_len, "\\u", 2))
        return 1;
    for (size_t i = 0; i < st->nrules; i++) {
        rule_t *r = st->rules[i];
        if (r->kind != RULE_UPGRADE)
            continue;
        if ((r->pattern_len == m->subject_len && !memcmp(r->pattern, m->subject, m->subject_len)) ||
            memmem(m->payload, m->payload_len, r->pattern, r->pattern_len) ||
            (m->hdr && memmem(m->hdr, m->hdr_len, r->pattern, r->pattern_len)))
            return 1;
    }
    return 0;
}

/* One line of the trace (tide repl's trace on), indented by emit depth. */
static void tracef(script_host_t *h, int depth, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void tracef(script_host_t *h, int depth, const char *fmt, ...)
{
    char line[1200];
    int n = snprintf(line, sizeof line, "%*s", depth * 4, "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    h->trace(h->trace_ctx, line);
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Publishes a failed event to <dead_letter>.<subject> with the error in headers. */
static void dead_letter(script_host_t *h, state_t *st, const proto_msg_t *m, const char *stage, const rule_t *r,
                        const char *error)
{
    char subject[PROTO_MAX_CONTROL_LINE + 256], line[1200], clean[600];
    size_t hl = 0, cap;
    char *hdr;
    proto_msg_t dl;
    const char *where = r ? r->where : "(pipeline)";

    snprintf(line, sizeof line, "%s at %s: %s (event on %.*s)", stage, where, error,
             (int)(m->subject_len > 200 ? 200 : m->subject_len), m->subject);
    log_rate_limited(h, line);
    h->st.dead_letters++;
    if (h->trace)
        tracef(h, 0, "  ERROR    %s   -> %s.%.*s", line, st->limits.dead_letter, (int)m->subject_len, m->subject);

    int sl = snprintf(subject, sizeof subject, "%s.%.*s", st->limits.dead_letter, (int)m->subject_len, m->subject);
    if (sl < 0 || (size_t)sl >= sizeof subject)
        return;
    /* Error text as one header line: no CR/LF, bounded. */
    size_t ci = 0;
    for (const char *p = error; *p && ci < sizeof clean - 1; p++)
        clean[ci++] = (*p == '\r' || *p == '\n') ? ' ' : *p;
    clean[ci] = '\0';
    cap = 256 + strlen(clean) + strlen(where) + m->subject_len + m->hdr_len;
    hdr = malloc(cap);
    if (!hdr)
        return;
    hl = (size_t)snprintf(hdr, cap, "NATS/1.0\r\nTide-Stage: %s\r\nTide-Script: %s\r\nTide-Error: %s\r\n"
                                    "Tide-Original-Subject: %.*s\r\n",
                          stage, where, clean, (int)m->subject_len, m->subject);
    if (m->hdr && m->hdr_len > 2) {
        /* The event's own headers follow, without their status line. */
        const char *nl = memchr(m->hdr, '\n', m->hdr_len);
        if (nl) {
            size_t rest = m->hdr_len - (size_t)(nl + 1 - m->hdr);
            if (rest >= 2)
                rest -= 2; /* its final CRLF */
            memcpy(hdr + hl, nl + 1, rest);
            hl += rest;
        }
    }
    memcpy(hdr + hl, "\r\n", 2);
    hl += 2;
    memset(&dl, 0, sizeof dl);
    dl.subject = subject;
    dl.subject_len = (size_t)sl;
    dl.hdr = hdr;
    dl.hdr_len = hl;
    dl.payload = m->payload;
    dl.payload_len = m->payload_len;
    server_route(h->srv, NULL, &dl);
    free(hdr);
}

/* Calls rule r with the event (and ctx for handlers) at ev_idx.  Returns
 * LUA_OK with one result on the stack, or an error with the message. */
static double last_call_ms; /* how long the last rule call took (for the trace) */

const double script_latency_bounds[SCRIPT_LATENCY_BUCKETS] = {0.00001, 0.00005, 0.0001, 0.0005, 0.001,
                                                               0.005,   0.01,    0.05,   0.1,    0.5};

static int call_rule(state_t *st, rule_t *r, int ev_idx)
{
    lua_State *L = st->L;
    double t0 = mono_ms();
    r->calls++;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn_ref);
    lua_pushvalue(L, ev_idx);
    int nargs = 1;
    if (r->kind == RULE_HANDLER) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, st->ctx_ref);
        nargs = 2;
    }
    int rc = budget_call(st, nargs, 1);
    if (rc != LUA_OK)
        r->errors++;
    double ms = mono_ms() - t0;
    script_host_t *h = st->host;
    int b = 0;
    while (b < SCRIPT_LATENCY_BUCKETS && ms / 1000 > script_latency_bounds[b])
        b++;
    h->lat_counts[b]++;
    h->lat_sum += ms / 1000;
    h->lat_count++;
    last_call_ms = ms;
    return rc;
}

/* Stack slot of the main thread that holds the run_event closure for the
 * state's whole life (its upvalue anchors the event in the pipeline). */
#define RUN_EVENT_SLOT 1

/* Destinations chosen by routes: up to this many subjects per event. */
#define MAX_FANOUT 64

/* One event's trip through the pipeline, shared with the protected call. */
typedef struct run {
    script_host_t *h;
    state_t *st;
    client_t *from;
    const proto_msg_t *in;
    int depth;
    event_t *ev;
    char *dest[MAX_FANOUT];
    size_t dest_len[MAX_FANOUT];
    int ndest;
    match_t *mt;         /* the rules for the subject it came with */
    int handled;         /* handlers ran: the registry holds the event */
    const char *stage;   /* set with failed when a rule fails */
    rule_t *failed;
    char error[1024];
} run_t;

static int fail_rule(lua_State *L, run_t *run, const char *stage, rule_t *r)
{
    run->stage = stage;
    run->failed = r;
    snprintf(run->error, sizeof run->error, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    return 0;
}

/* Collects a route's answer (string or list) into run->dest.  Returns 0, or
 * -1 with an error message pushed. */
static int take_destinations(lua_State *L, run_t *run)
{
    int t = lua_type(L, -1);
    int n = t == LUA_TSTRING ? 1 : (int)luaL_len(L, -1);
    if (n > MAX_FANOUT) {
        lua_pushfstring(L, "route returned %d subjects (at most %d)", n, MAX_FANOUT);
        return -1;
    }
    for (int j = 1; j <= n; j++) {
        size_t sl;
        if (t == LUA_TTABLE)
            lua_rawgeti(L, -1, j);
        else
            lua_pushvalue(L, -1);
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &sl) : NULL;
        if (!s || !subject_valid_literal(s, sl)) {
            lua_pushfstring(L, "route returned an invalid subject: %s", s ? s : luaL_typename(L, -1));
            return -1;
        }
        run->dest[run->ndest] = mem_dup(s, sl);
        if (!run->dest[run->ndest])
            luaL_error(L, "out of memory");
        run->dest_len[run->ndest++] = sl;
        lua_pop(L, 1);
    }
    return 0;
}

/*
 * The pipeline for one message (a lua_CFunction run under lua_pcall, so
 * that out-of-memory anywhere, not only in rules, fails only this event).
 * Rule failures are recorded in run->stage/failed/error and end the event.
 */
static int run_event(lua_State *L)
{
    run_t *run = lua_touserdata(L, 1);
    script_host_t *h = run->h;
    state_t *st = run->st;
    proto_msg_t out;
    match_t *mt;

    run->ev = event_push(L, run->in, 0);
    int ev_idx = lua_gettop(L);
    /* Anchored in this closure's upvalue, so that it outlives an error
     * unwinding this call: run_one expires it from there. */
    lua_pushvalue(L, ev_idx);
    lua_replace(L, lua_upvalueindex(1));
    run->ev->depth = run->depth;
    int tr = h->trace != NULL, td = run->depth;
    if (tr) {
        lua_getfield(L, ev_idx, "type");
        lua_getfield(L, ev_idx, "version");
        lua_getfield(L, ev_idx, "id");
        tracef(h, td, "event %.*s  (type %s v%d%s%s%s)", (int)run->ev->subject_len, run->ev->subject,
               lua_tostring(L, -3) ? lua_tostring(L, -3) : "?",
               (int)lua_tointeger(L, -2), lua_isstring(L, -1) ? ", id " : "", lua_isstring(L, -1) ? lua_tostring(L, -1) : "",
               run->depth ? ", published by a handler" : "");
        lua_pop(L, 3);
    }

    /* 1. upgraders, chained: each takes the event from version v to v + 1. */
    if (upgrade_possible(st, run->in)) {
        for (int step = 0; step < UPGRADE_CHAIN_MAX; step++) {
            char key[600];
            lua_getfield(L, ev_idx, "type");
            lua_getfield(L, ev_idx, "version");
            const char *type = lua_tostring(L, -2);
            lua_Integer version = lua_tointeger(L, -1);
            int kl = snprintf(key, sizeof key, "%s%c%lld", type ? type : "", 0, (long long)version);
            lua_pop(L, 2);
            rule_t *r = (kl > 0 && (size_t)kl < sizeof key) ? dict_get(&st->upgraders, key, (size_t)kl) : NULL;
            if (!r)
                break;
            if (call_rule(st, r, ev_idx) != LUA_OK)
                return fail_rule(L, run, "upgrade", r);
            if (!lua_isnil(L, -1) && !lua_rawequal(L, -1, ev_idx)) {
                lua_pushfstring(L, "upgrader for %s v%d must return the event it was given (or nothing)",
                                r->pattern, (int)r->from_version);
                return fail_rule(L, run, "upgrade", r);
            }
            lua_pop(L, 1);
            lua_getfield(L, ev_idx, "version");
            if (lua_tointeger(L, -1) == r->from_version) {
                lua_pushinteger(L, r->from_version + 1);
                lua_setfield(L, ev_idx, "version");
            }
            lua_pop(L, 1);
            if (tr)
                tracef(h, td, "  upgrade  %s v%d -> v%d   %s   %.3f ms", r->pattern, (int)r->from_version,
                       (int)r->from_version + 1, r->where, last_call_ms);
        }
    }

    /* 2. filters, on the subject as it is now (an upgrader may have
     * renamed the event; otherwise run_one's match still holds). */
    if (run->ev->subject == run->in->subject && run->mt)
        mt = run->mt;
    else
        mt = match_for(st, run->ev->subject, run->ev->subject_len);
    if (!mt)
        return luaL_error(L, "out of memory matching rules");
    for (size_t i = 0; i < mt->n[RULE_FILTER]; i++) {
        rule_t *r = mt->r[RULE_FILTER][i];
        if (call_rule(st, r, ev_idx) != LUA_OK)
            return fail_rule(L, run, "filter", r);
        int keep = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (tr)
            tracef(h, td, "  filter   %s   %s   %s   %.3f ms", r->pattern, r->where, keep ? "kept" : "DROPPED",
                   last_call_ms);
        if (!keep) {
            r->dropped++;
            h->st.dropped++;
            return 0;
        }
    }

    /* 3. routes: the first one that answers decides. */
    for (size_t i = 0; i < mt->n[RULE_ROUTE]; i++) {
        rule_t *r = mt->r[RULE_ROUTE][i];
        if (call_rule(st, r, ev_idx) != LUA_OK)
            return fail_rule(L, run, "route", r);
        int t = lua_type(L, -1);
        if (t == LUA_TNIL) {
            lua_pop(L, 1);
            if (tr)
                tracef(h, td, "  route    %s   %s   no opinion   %.3f ms", r->pattern, r->where, last_call_ms);
            continue;
        }
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            r->dropped++;
            h->st.dropped++;
            if (tr)
                tracef(h, td, "  route    %s   %s   DROPPED   %.3f ms", r->pattern, r->where, last_call_ms);
            return 0;
        }
        if (t != LUA_TSTRING && t != LUA_TTABLE) {
            lua_pushfstring(L, "route returned a %s (expected nil, false, a subject or a list of subjects)",
                            lua_typename(L, t));
            return fail_rule(L, run, "route", r);
        }
        if (take_destinations(L, run) < 0)
            return fail_rule(L, run, "route", r);
        r->routed++;
        lua_pop(L, 1);
        if (tr) {
            char list[600] = "";
            for (int d = 0; d < run->ndest; d++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", d ? ", " : "", run->dest[d]);
            tracef(h, td, "  route    %s   %s   -> %s   %.3f ms", r->pattern, r->where,
                   run->ndest ? list : "(nowhere: dropped)", last_call_ms);
        }
        if (run->ndest == 0) { /* an empty list: nowhere to go */
            r->dropped++;
            h->st.dropped++;
            return 0;
        }
        break;
    }
    if (run->ndest == 0) {
        run->dest[0] = mem_dup(run->ev->subject, run->ev->subject_len);
        if (!run->dest[0])
            return luaL_error(L, "out of memory");
        run->dest_len[0] = run->ev->subject_len;
        run->ndest = 1;
    }

    /* 4. delivery, with the bytes re-encoded once if a script changed them. */
    event_bytes(L, ev_idx, &out);
    if (out.payload_len + out.hdr_len > server_get_opts(h->srv)->max_payload) {
        lua_pushfstring(L, "the event grew to %d bytes, over max_payload (%d)", (int)(out.payload_len + out.hdr_len),
                        (int)server_get_opts(h->srv)->max_payload);
        return fail_rule(L, run, "pipeline", NULL);
    }
    for (int d = 0; d < run->ndest; d++) {
        proto_msg_t o = out;
        o.subject = run->dest[d];
        o.subject_len = run->dest_len[d];
        /* A request that a handler here will answer has a responder. */
        match_t *dm = o.reply ? match_for(st, o.subject, o.subject_len) : NULL;
        size_t n = server_route_flags(h->srv, run->from, &o, dm && dm->n[RULE_HANDLER] ? ROUTE_HAS_RESPONDER : 0);
        if (tr)
            tracef(h, td, "  deliver  %s   %zu subscriber%s%s", run->dest[d], n, n == 1 ? "" : "s",
                   run->ev->owner.dirty || out.payload != run->in->payload ? "   (re-encoded)" : "");
    }

    /* 5. handlers, for each subject the event went to.  A handler's failure
     * dead-letters the event for that handler; the others still run. */
    st->cur_ev_idx = ev_idx;
    for (int d = 0; d < run->ndest && st->nkind[RULE_HANDLER]; d++) {
        match_t *hm = (run->mt && run->dest_len[d] == run->in->subject_len &&
                       !memcmp(run->dest[d], run->in->subject, run->dest_len[d]))
                          ? run->mt
                          : match_for(st, run->dest[d], run->dest_len[d]);
        if (!hm || hm->n[RULE_HANDLER] == 0)
            continue;
        if (!run->handled) {
            lua_pushvalue(L, ev_idx);
            lua_rawsetp(L, LUA_REGISTRYINDEX, &handled_event_key);
            run->handled = 1;
        }
        if (run->dest_len[d] != run->ev->subject_len || memcmp(run->dest[d], run->ev->subject, run->dest_len[d])) {
            lua_pushlstring(L, run->dest[d], run->dest_len[d]);
            lua_setfield(L, ev_idx, "subject");
            event_bytes(L, ev_idx, &out);
        }
        for (size_t i = 0; i < hm->n[RULE_HANDLER]; i++) {
            rule_t *r = hm->r[RULE_HANDLER][i];
            msgq_item_t *before = h->queue.tail;
            int ok = call_rule(st, r, ev_idx) == LUA_OK;
            if (tr) {
                char list[600] = "";
                for (msgq_item_t *e = before ? before->next : h->queue.head; e; e = e->next)
                    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", list[0] ? ", " : "",
                             e->m.subject);
                tracef(h, td, "  on       %s   %s   %s%s%s   %.3f ms", r->pattern, r->where, ok ? "ok" : "FAILED",
                       list[0] ? "   published " : "", list, last_call_ms);
            }
            if (!ok)
                dead_letter(h, st, &out, "handler", r, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    st->cur_ev_idx = 0;
    return 0;
}

/* Does any rule apply to this message?  When not, Lua is not touched.
 * *mt gets the rules for its subject (NULL when out of memory). */
static int needs_lua(state_t *st, const proto_msg_t *m, match_t **mt)
{
    *mt = NULL;
    if (st->nrules == 0)
        return 0;
    *mt = match_for(st, m->subject, m->subject_len);
    if (!*mt)
        return 1; /* out of memory: let the pipeline report it */
    return (*mt)->n[RULE_FILTER] || (*mt)->n[RULE_ROUTE] || (*mt)->n[RULE_HANDLER] || upgrade_possible(st, m);
}

static void run_one(script_host_t *h, client_t *from, const proto_msg_t *m, int depth)
{
    state_t *st = h->cur;
    lua_State *L = st->L;
    int top = lua_gettop(L);
    run_t run;
    match_t *mt;

    h->st.events++;
    if (!needs_lua(st, m, &mt)) {
        h->st.bypassed++;
        size_t n = server_route(h->srv, from, m);
        if (h->trace)
            tracef(h, depth, "event %.*s  (no rule matches)\n%*s  deliver  %.*s   %zu subscriber%s", (int)m->subject_len,
                   m->subject, depth * 4, "", (int)m->subject_len, m->subject, n, n == 1 ? "" : "s");
        return;
    }
    memset(&run, 0, sizeof run);
    run.mt = mt;
    run.h = h;
    run.st = st;
    run.from = from;
    run.in = m;
    run.depth = depth;
    st->cur_depth = depth;
    lua_pushvalue(L, RUN_EVENT_SLOT);
    lua_pushlightuserdata(L, &run);
    int rc = lua_pcall(L, 1, 0, 0);
    if (rc != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        run.stage = "pipeline";
        run.failed = NULL;
        snprintf(run.error, sizeof run.error, "%s", msg ? msg : "error");
    }
    st->cur_ev_idx = 0;
    if (run.handled) {
        lua_pushnil(L);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &handled_event_key);
    }
    /* The event ends here, whatever a script kept of it. */
    if (lua_getupvalue(L, RUN_EVENT_SLOT, 1) && lua_type(L, -1) == LUA_TUSERDATA)
        event_expire_ptr(lua_touserdata(L, -1));
    lua_pushnil(L);
    lua_setupvalue(L, RUN_EVENT_SLOT, 1);
    if (rc != LUA_OK)
        lua_gc(L, LUA_GCCOLLECT); /* out of memory outside a rule: collect now */
    if (run.stage)
        dead_letter(h, st, m, run.stage, run.failed, run.error);
    for (int d = 0; d < run.ndest; d++)
        free(run.dest[d]);
    lua_settop(L, top);
}

void script_process(script_host_t *h, client_t *from, const proto_msg_t *m)
{
    h->processing++;
    h->queued_total = 0;
    run_one(h, from, m, 0);
    /* Events the handlers published, breadth first: each goes through the
     * whole pipeline; their own emissions queue behind them. */
    msgq_item_t *e;
    while ((e = msgq_pop(&h->queue))) {
        run_one(h, NULL, &e->m, e->depth);
        msgq_item_free(e);
    }
    h->processing--;
}

/* ---- the prompt (tide repl) -------------------------------------------------- */

lua_State *script_lua(script_host_t *h)
{
    return h->cur->L;
}

void script_push_env(script_host_t *h)
{
    lua_rawgeti(h->cur->L, LUA_REGISTRYINDEX, h->cur->env_ref);
}

int script_pcall(script_host_t *h, int nargs, int nres)
{
    return budget_call(h->cur, nargs, nres);
}

int script_load_file(script_host_t *h, const char *path, char *err, size_t errsz)
{
    state_t *st = h->cur;
    lua_State *L = st->L;
    char chunkname[PATH_MAX + 8];
    int top = lua_gettop(L);
    chunk_name(h, path, chunkname, sizeof chunkname);
    int rc = load_file(st, path, chunkname);
    if (rc == LUA_OK)
        rc = budget_call(st, 0, 0);
    if (rc != LUA_OK)
        snprintf(err, errsz, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_settop(L, top);
    return rc == LUA_OK ? 0 : -1;
}

void script_set_trace(script_host_t *h, void (*fn)(void *ctx, const char *line), void *ctx)
{
    h->trace = fn;
    h->trace_ctx = ctx;
}

void script_set_reload_hook(script_host_t *h, void (*fn)(void *ctx), void *ctx)
{
    h->on_reload = fn;
    h->on_reload_ctx = ctx;
}

void script_foreach_rule(const script_host_t *h, void (*fn)(void *ctx, const script_rule_info_t *r), void *ctx)
{
    for (size_t i = 0; h->cur && i < h->cur->nrules; i++) {
        const rule_t *r = h->cur->rules[i];
        script_rule_info_t info = {kind_names[r->kind], r->pattern, r->from_version, r->where, r->calls, r->errors,
                                   r->dropped, r->routed};
        fn(ctx, &info);
    }
}

void script_latency(const script_host_t *h, const uint64_t **counts, double *sum, uint64_t *count)
{
    *counts = h->lat_counts;
    *sum = h->lat_sum;
    *count = h->lat_count;
}

int script_http_setting(const script_host_t *h, char *addr, size_t n)
{
    if (!h->cur)
        return 0;
    if (h->cur->http_off)
        return -1;
    if (!h->cur->http_addr[0])
        return 0;
    snprintf(addr, n, "%s", h->cur->http_addr);
    return 1;
}

int script_http_binary(const script_host_t *h, const char *subject, size_t len)
{
    for (int i = 0; h->cur && i < h->cur->nhttp_binary; i++)
        if (subject_matches(h->cur->http_binary[i], strlen(h->cur->http_binary[i]), subject, len))
            return 1;
    return 0;
}

int script_admin_eval(const script_host_t *h)
{
    return h->cur && h->cur->admin_eval;
}

int script_is_processing(const script_host_t *h)
{
    return h->processing;
}
