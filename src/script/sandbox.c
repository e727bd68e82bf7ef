/* sandbox.c - what scripts see: text-only loading, require, print and log,
 * and the guarded versions of C functions no budget could interrupt. */
#include "clock.h"
#include "script_internal.h"
#include "pattern.h"

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

/* tide.now(): ms since the epoch, an integer; the virtual time under
 * tide run --clock virtual. */
static int l_now(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)(clock_now_ns() / 1000000));
    return 1;
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
int sandbox_load_file(state_t *st, const char *path, const char *chunkname)
{
    lua_State *L = st->L;
    size_t len;
    const char *stored = st->host->source ? st->host->source(st->host->source_ctx, path, &len) : NULL;
    if (stored) {
        lua_pushlstring(L, stored, len);
    } else {
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
    }
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

/* "@../x/rules.lua": path relative to dir, both absolute, for files found
 * through scripting{path}. */
static void relative_name(const char *dir, const char *path, char *out, size_t n)
{
    size_t common = 0;
    for (size_t i = 0; dir[i] && dir[i] == path[i]; i++)
        if (dir[i] == '/')
            common = i;
    size_t len = (size_t)snprintf(out, n, "@");
    for (const char *p = dir + common; *p && len < n; p++)
        if (*p == '/')
            len += (size_t)snprintf(out + len, n - len, "../");
    if (len < n)
        snprintf(out + len, n - len, "%s", path + common + 1);
}

/* The name errors and Tide-Script show for a file: relative to the entry
 * file's directory ("rules.lua"), or "lua/<file>" for tide's library. */
void sandbox_chunk_name(const script_host_t *h, const char *path, char *out, size_t n)
{
    size_t dl = strlen(h->config_dir), ll = h->lib_dir ? strlen(h->lib_dir) : 0;
    size_t pl = h->deployed_dir ? strlen(h->deployed_dir) : 0;
    if (pl && !strncmp(path, h->deployed_dir, pl) && path[pl] == '/')
        snprintf(out, n, "@%s/%s", h->deployed_label, path + pl + 1);
    else if (!strncmp(path, h->config_dir, dl) && path[dl] == '/')
        snprintf(out, n, "@%s", path + dl + 1);
    else if (ll && !strncmp(path, h->lib_dir, ll) && path[ll] == '/')
        snprintf(out, n, "@lua/%s", path + ll + 1);
    else if (path[0] == '/' && h->config_dir[0] == '/')
        relative_name(h->config_dir, path, out, n);
    else
        snprintf(out, n, "@%s", path);
}

static int l_require(lua_State *L)
{
    state_t *st = script_state_of(L);
    const char *name = luaL_checkstring(L, 1);
    char rel[512], path[PATH_MAX], chunkname[PATH_MAX + 2];
    /* Search order: the entry file's directory, the deployed rules' directory,
     * scripting{path}, lua/. */
    const char *dirs[3 + MAX_MODULE_DIRS] = {st->host->config_dir};
    int ndirs = 1, first_path;
    if (st->host->deployed_dir) /* the deployed rules' own modules */
        dirs[ndirs++] = st->host->deployed_dir;
    first_path = ndirs;
    lua_getfield(L, LUA_REGISTRYINDEX, "tide.path");
    for (int i = 1; lua_istable(L, -1) && i <= (int)lua_rawlen(L, -1) && ndirs < first_path + MAX_MODULE_DIRS; i++) {
        lua_rawgeti(L, -1, i);
        dirs[ndirs++] = lua_tostring(L, -1); /* kept alive by the registry table */
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    dirs[ndirs++] = st->host->lib_dir;

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
    for (int d = 0; d < ndirs; d++) {
        if (!dirs[d])
            continue;
        for (int variant = 0; variant < 2; variant++) {
            snprintf(path, sizeof path, variant ? "%s/%s/init.lua" : "%s/%s.lua", dirs[d], rel);
            size_t stored_len;
            if (!(st->host->source && st->host->source(st->host->source_ctx, path, &stored_len)) &&
                access(path, R_OK) != 0)
                continue;
            sandbox_chunk_name(st->host, path, chunkname, sizeof chunkname);
            if (sandbox_load_file(st, path, chunkname) != LUA_OK)
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
                watch_start(st->host);
            return 1;
        }
    }
    return luaL_error(L, "module '%s' not found beside %s%s or in %s", name, st->host->config_dir,
                      ndirs > first_path + 1 ? ", in scripting{path}" : "",
                      st->host->lib_dir ? st->host->lib_dir : "(no lua/ directory)");
}

/* load(text [, name [, mode [, env]]]): text only, sandbox by default. */
static int l_load(lua_State *L)
{
    state_t *st = script_state_of(L);
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

/* ---- the sandbox ---------------------------------------------------------------- */

/* The pattern functions (pattern.c) pay for their steps as instructions,
 * checking the clock as the count hook does, and raise the budget's stop
 * in the middle of a match when it is spent. */
static void pattern_check(lua_State *L, void *ud, size_t steps)
{
    (void)ud;
    budget_charge(L, script_state_of(L), (double)steps);
}

/*
 * string.format copies what it formats into a buffer that grows, and the
 * allocator checks the budgets as it grows, except where an item reads a
 * long argument and writes little: a %s with a precision ("%.0s") first
 * measures its whole string with strlen, and a numeric item converts a
 * string argument ("1" and a million spaces is 1) in one scan.  Such
 * arguments are prepared here, paid for one at a time (so the clock is
 * read between them): a long string for a %.Ns is cut to FORMAT_KEEP
 * bytes (an item shows at most 99) once it is known to hold no '\0'
 * (which format refuses), and a long numeric string is converted.  Format
 * then gives the same result it would have, only cheaply; __tostring of
 * a %.Ns argument runs here instead of in format.
 */
#define FORMAT_KEEP 128
#define FORMAT_CHUNK 65536

static void format_cut_string(lua_State *L, state_t *st, int arg)
{
    size_t len;
    if (!lua_isstring(L, arg)) {
        luaL_tolstring(L, arg, NULL);
        lua_replace(L, arg);
    }
    if (lua_type(L, arg) != LUA_TSTRING)
        return;
    const char *s = lua_tolstring(L, arg, &len);
    if (len <= FORMAT_KEEP)
        return;
    for (size_t at = 0; at < len; at += FORMAT_CHUNK) {
        size_t n = len - at < FORMAT_CHUNK ? len - at : FORMAT_CHUNK;
        budget_charge(L, st, (double)n / 16);
        if (memchr(s + at, '\0', n))
            return; /* format raises "string contains zeros" */
    }
    lua_pushlstring(L, s, FORMAT_KEEP);
    lua_replace(L, arg);
}

static void format_convert_number(lua_State *L, state_t *st, int arg)
{
    size_t len;
    if (lua_type(L, arg) != LUA_TSTRING)
        return;
    const char *s = lua_tolstring(L, arg, &len);
    if (len <= FORMAT_KEEP)
        return;
    budget_charge(L, st, (double)len / 16);
    size_t used = lua_stringtonumber(L, s);
    if (used == len + 1)
        lua_replace(L, arg);
    else if (used)
        lua_pop(L, 1); /* it stopped at a '\0': not a number to format */
}

/* The stock function is called directly, in this function's call, so
 * that its argument errors read as they would without the guard. */
static int guarded_format(lua_State *L)
{
    state_t *st = script_state_of(L);
    size_t fl;
    const char *f = luaL_checklstring(L, 1, &fl);
    int top = lua_gettop(L), arg = 1;
    for (size_t i = 0; i < fl; i++) {
        if (f[i] != '%' || ++i == fl || f[i] == '%')
            continue;
        int precision = 0;
        while (i < fl && f[i] && strchr("-+ #0123456789.", f[i]))
            precision |= f[i++] == '.';
        if (++arg > top || i == fl)
            continue;
        if (f[i] == 's' && precision)
            format_cut_string(L, st, arg);
        else if (f[i] && strchr("cdiouxXaAeEfFgG", f[i]))
            format_convert_number(L, st, arg);
    }
    return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

/* string.rep with the result size checked before the C call allocates it. */
static int guarded_rep(lua_State *L)
{
    state_t *st = script_state_of(L);
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
    state_t *st = script_state_of(L);
    lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
    if (e >= f && (lua_Unsigned)e - (lua_Unsigned)f >= st->limits.instructions)
        return luaL_error(L, "table.move of %I elements is over the instruction budget", (lua_Integer)(e - f + 1));
    if (e >= f)
        budget_charge(L, st, (double)((lua_Unsigned)e - (lua_Unsigned)f) + 1); /* an element costs about an instruction */
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

/*
 * xpcall's message handler runs inside the error that calls it, and an
 * error a budget stop raises comes from the count hook, where Lua runs no
 * hooks: a handler entered then could loop with nothing to stop it.  So the
 * script's handler is called through this one, which after a stop answers
 * with the stop's message and never enters script code again.  (An ordinary
 * error's handler runs under the hook like any code.)
 */
static int xpcall_handler(lua_State *L)
{
    state_t *st = script_state_of(L);
    if (st->budget) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_keys[st->budget]);
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int guarded_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, xpcall_handler, 1);
    lua_replace(L, 2); /* f, handler, args... */
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2); /* f, handler, true, f, args... */
    int status = lua_pcall(L, n - 2, LUA_MULTRET, 2);
    if (status != LUA_OK) {
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
        return 2;
    }
    return lua_gettop(L) - 2;
}

static void copy_fields(lua_State *L, int from, int to, const char *const *names)
{
    for (int i = 0; names[i]; i++) {
        lua_getfield(L, from, names[i]);
        lua_setfield(L, to, names[i]);
    }
}

/* Copies the base functions and copies of the safe libraries from the
 * global table g into env, with table.move, setmetatable and xpcall
 * guarded. */
static void env_base(lua_State *L, int g, int env)
{
    static const char *const base[] = {"assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal",
                                       "rawget", "rawlen", "rawset", "select", "setmetatable",
                                       "getmetatable", "tonumber", "tostring", "type", "xpcall",
                                       "_VERSION", NULL};
    static const char *const libs[] = {"table", "math", "utf8", "coroutine", NULL};
    copy_fields(L, g, env, base);
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
    lua_pushcfunction(L, guarded_xpcall);
    lua_setfield(L, env, "xpcall");
}

/* string: no dump; the pattern functions of pattern.c; format and rep
 * guarded; the same table behind the method calls on strings.  os: the
 * clock and the date only. */
static void env_string_os(lua_State *L, int g, int env)
{
    static const char *const os_ok[] = {"clock", "date", "time", "difftime", NULL};
    static const char *const str_ok[] = {"byte", "char", "len", "lower", "upper", "reverse", "sub",
                                         "pack", "packsize", "unpack", NULL};
    static const pattern_budget_t budget = {pattern_check, NULL, 0};
    lua_getfield(L, g, "string");
    int strlib = lua_gettop(L);
    lua_newtable(L);
    copy_fields(L, strlib, lua_gettop(L), str_ok);
    pattern_register(L, &budget);
    lua_getfield(L, strlib, "format");
    lua_pushcclosure(L, guarded_format, 1);
    lua_setfield(L, -2, "format");
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
    lua_getfield(L, g, "os");
    lua_newtable(L);
    copy_fields(L, lua_gettop(L) - 1, lua_gettop(L), os_ok);
    lua_setfield(L, env, "os");
    lua_pop(L, 1);
}

/* The declarations and rule functions, and tide.*: json helpers, kv, log. */
static void env_tide(state_t *st, int env)
{
    lua_State *L = st->L;
    static const luaL_Reg fns[] = {
        {"print", l_print},
        {"require", l_require},
        {"load", l_load},
        {"listen", settings_l_listen},
        {"limits", settings_l_limits},
        {"scripting", settings_l_scripting},
        {"admin", settings_l_admin},
        {"auth", settings_l_auth},
        {"http", settings_l_http},
        {"kv", settings_l_kv},
        {"tls", settings_l_tls},
        {"cluster", settings_l_cluster},
        {"storage", decl_l_storage},
        {"stream", decl_l_stream},
        {"consumer", decl_l_consumer},
        {"upgrade", pipeline_l_upgrade},
        {"filter", pipeline_l_filter},
        {"route", pipeline_l_route},
        {"on", pipeline_l_on},
        {NULL, NULL},
    };
    lua_pushvalue(L, env);
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
    lua_newtable(L);
    int tide = lua_gettop(L);
    json_open(L);
    lua_getfield(L, -1, "null");
    lua_setfield(L, tide, "null");
    lua_getfield(L, -1, "array");
    lua_setfield(L, tide, "array");
    lua_setfield(L, tide, "json");
    kv_lua_push_tide(L, st->host);
    kv_bucket_lua_push(L, st->host);
    lua_setfield(L, -2, "bucket");
    lua_setfield(L, tide, "kv");
    durable_push_api(L); /* tide.nak, tide.progress, tide.term */
    lua_pushcfunction(L, l_log);
    lua_setfield(L, tide, "log");
    lua_pushcfunction(L, l_now);
    lua_setfield(L, tide, "now");
    lua_pushcfunction(L, l_log);
    lua_setfield(L, env, "log");
    lua_pushstring(L, TIDE_VERSION);
    lua_setfield(L, tide, "version");
    lua_setfield(L, env, "tide");
}

/* Builds the environment scripts see; leaves it on the stack. */
void sandbox_build_env(state_t *st)
{
    lua_State *L = st->L;
    lua_newtable(L);
    int env = lua_gettop(L);
    lua_pushglobaltable(L);
    int g = lua_gettop(L);
    env_base(L, g, env);
    env_string_os(L, g, env);
    lua_pop(L, 1); /* global table */
    env_tide(st, env);
    lua_pushvalue(L, env);
    lua_setfield(L, env, "_G");

    /* The ctx handed to handlers. */
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, pipeline_l_ctx_publish);
    lua_setfield(L, -2, "publish");
    lua_pushcfunction(L, pipeline_l_ctx_reply);
    lua_setfield(L, -2, "reply");
    st->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

int sandbox_at_panic(lua_State *L)
{
    log_error("PANIC: unprotected error in Lua: %s", lua_tostring(L, -1));
    abort();
    return 0;
}

/* Opens only what the sandbox copies from: base, table, string, math, utf8, os, coroutine. */
int sandbox_open_libs(lua_State *L)
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
