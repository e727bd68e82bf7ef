/* settings.c - the settings an entry file declares: listen{}, limits{},
 * scripting{}, admin{}, http{} and tls{} (auth{}: settings_auth.c).
 * Unknown keys are errors. */
#include "script_internal.h"

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
double settings_duration(lua_State *L, int t, const char *key, double def)
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
void settings_check_keys(lua_State *L, int t, const char *what, const char *const *known)
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

int settings_l_listen(lua_State *L)
{
    static const char *const known[] = {"nats", "http", NULL};
    state_t *st = script_state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    settings_check_keys(L, 1, "listen", known);
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

int settings_l_limits(lua_State *L)
{
    static const char *const known[] = {"max_payload",    "max_control_line", "max_pending",     "ping_interval",
                                        "max_pings_out",  "write_deadline",   "max_connections", "max_pending_total",
                                        "max_subscriptions", NULL};
    state_t *st = script_state_of(L);
    server_opts_t *o = &st->set;
    luaL_checktype(L, 1, LUA_TTABLE);
    settings_check_keys(L, 1, "limits", known);
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
    SIZE_SETTING("max_pending_total", max_pending_total, SET_MAX_PENDING_TOTAL);
#undef SIZE_SETTING
    if (lua_getfield(L, 1, "max_connections") != LUA_TNIL) {
        lua_Integer n = luaL_checkinteger(L, -1);
        if (n < 1)
            return luaL_error(L, "limits: max_connections must be at least 1");
        o->max_connections = (size_t)n;
        st->set_mask |= SET_MAX_CONNECTIONS;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "max_subscriptions") != LUA_TNIL) {
        lua_Integer n = luaL_checkinteger(L, -1);
        if (n < 0)
            return luaL_error(L, "limits: max_subscriptions must be 0 (no limit) or more");
        o->max_subs = (size_t)n;
        st->set_mask |= SET_MAX_SUBS;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "ping_interval") != LUA_TNIL) {
        o->ping_interval = settings_duration(L, 1, "ping_interval", 0);
        st->set_mask |= SET_PING_INTERVAL;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "write_deadline") != LUA_TNIL) {
        o->write_deadline = settings_duration(L, 1, "write_deadline", 0);
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

/* kv { max_value = "1MB", max_bytes = "256MB", max_keys = 1000000 }: what
 * tide.kv may hold (0: no limit).  A change past a limit raises in the rule
 * and changes nothing. */
int settings_l_kv(lua_State *L)
{
    static const char *const known[] = {"max_value", "max_bytes", "max_keys", NULL};
    state_t *st = script_state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    settings_check_keys(L, 1, "kv", known);
    st->kv_lim.max_value = size_field(L, 1, "max_value", st->kv_lim.max_value);
    st->kv_lim.max_bytes = size_field(L, 1, "max_bytes", st->kv_lim.max_bytes);
    if (lua_getfield(L, 1, "max_keys") != LUA_TNIL) {
        lua_Integer n = luaL_checkinteger(L, -1);
        if (n < 0)
            return luaL_error(L, "kv: max_keys must be 0 (no limit) or more");
        st->kv_lim.max_keys = (size_t)n;
    }
    lua_pop(L, 1);
    return 0;
}

/* http { binary = { "order.>", ... } }: events posted over HTTP whose
 * subject matches go out in the CloudEvents NATS binding's binary mode
 * (ce-* headers, the data as payload) instead of as a JSON envelope.
 * http { ack_timeout = "10s" }: how long a request waits for the PubAcks
 * of the events a stream captures before it is answered 504.
 * http { idle_timeout = "10s" }: a connection that sends nothing for that
 * long (half a request, or idle between requests) is closed. */
int settings_l_http(lua_State *L)
{
    static const char *const known[] = {"binary", "ack_timeout", "idle_timeout", NULL};
    state_t *st = script_state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    settings_check_keys(L, 1, "http", known);
    if (lua_getfield(L, 1, "ack_timeout") != LUA_TNIL) {
        double t = settings_duration(L, 1, "ack_timeout", 0);
        if (!(t >= 0.001 && t <= 3600))
            return luaL_error(L, "http: ack_timeout must be between 1ms and 1h");
        st->http_ack_timeout = t;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "idle_timeout") != LUA_TNIL) {
        double t = settings_duration(L, 1, "idle_timeout", 0);
        if (!(t >= 0.1 && t <= 3600))
            return luaL_error(L, "http: idle_timeout must be between 100ms and 1h");
        st->http_idle_timeout = t;
    }
    lua_pop(L, 1);
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
            char *d = util_mem_dup(p, pl);
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
int settings_l_admin(lua_State *L)
{
    static const char *const known[] = {"eval", NULL};
    state_t *st = script_state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    settings_check_keys(L, 1, "admin", known);
    if (lua_getfield(L, 1, "eval") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TBOOLEAN);
        st->admin_eval = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return 0;
}

/* scripting{path = "dir" | {"dir", ...}}: more directories require searches,
 * after the entry file's own and before tide's lua/.  Relative names are
 * taken from the entry file's directory; each must exist.  The resolved list
 * lives in the registry as "tide.path" for l_require. */
static void set_module_path(lua_State *L, state_t *st, int v)
{
    int n = lua_type(L, v) == LUA_TSTRING ? 1 : lua_type(L, v) == LUA_TTABLE ? (int)lua_rawlen(L, v) : -1;
    if (n < 0 || n > MAX_MODULE_DIRS)
        luaL_error(L, "scripting: path must be a directory or a list of up to %d directories", MAX_MODULE_DIRS);
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++) {
        if (lua_type(L, v) == LUA_TSTRING)
            lua_pushvalue(L, v);
        else
            lua_rawgeti(L, v, i);
        const char *dir = lua_tostring(L, -1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "scripting: path entries must be strings");
        char joined[PATH_MAX], real[PATH_MAX];
        struct stat sb;
        snprintf(joined, sizeof joined, "%s%s%s", dir[0] == '/' ? "" : st->host->config_dir,
                 dir[0] == '/' ? "" : "/", dir);
        if (!realpath(joined, real) || stat(real, &sb) != 0 || !S_ISDIR(sb.st_mode))
            luaL_error(L, "scripting: path '%s' is not a directory", dir);
        lua_pop(L, 1);
        lua_pushstring(L, real);
        lua_rawseti(L, -2, i);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "tide.path");
}

int settings_l_scripting(lua_State *L)
{
    static const char *const known[] = {"instructions", "memory",    "time", "emit_depth", "emit_max",
                                        "dead_letter",  "path",      "cascade_instructions", "cascade_time",
                                        NULL};
    state_t *st = script_state_of(L);
    script_limits_t *l = &st->limits;
    luaL_checktype(L, 1, LUA_TTABLE);
    settings_check_keys(L, 1, "scripting", known);
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
    l->time = settings_duration(L, 1, "time", l->time);
    if (l->time <= 0)
        return luaL_error(L, "scripting: time must be above 0");
    if (lua_getfield(L, 1, "emit_depth") != LUA_TNIL)
        l->emit_depth = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "emit_max") != LUA_TNIL)
        l->emit_max = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "cascade_instructions") != LUA_TNIL) {
        lua_Integer i = luaL_checkinteger(L, -1);
        if (i < HOOK_STEP)
            return luaL_error(L, "scripting: cascade_instructions must be at least %d", HOOK_STEP);
        l->cascade_instructions = (uint64_t)i;
    }
    lua_pop(L, 1);
    l->cascade_time = settings_duration(L, 1, "cascade_time", l->cascade_time);
    if (l->cascade_time <= 0)
        return luaL_error(L, "scripting: cascade_time must be above 0");
    if (lua_getfield(L, 1, "dead_letter") != LUA_TNIL) {
        size_t n;
        const char *d = luaL_checklstring(L, -1, &n);
        if (!subject_valid_literal(d, n) || n >= sizeof l->dead_letter)
            return luaL_error(L, "scripting: dead_letter must be a subject prefix such as \"$TIDE.DEAD\"");
        memcpy(l->dead_letter, d, n + 1);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "path") != LUA_TNIL)
        set_module_path(L, st, lua_absindex(L, -1));
    lua_pop(L, 1);
    return 0;
}

/* t[key], a file name taken from the entry file's directory when relative,
 * into out; "" when absent. */
static void path_field(lua_State *L, state_t *st, int t, const char *key, char *out, size_t outsz)
{
    out[0] = '\0';
    if (lua_getfield(L, t, key) != LUA_TNIL) {
        const char *p = lua_tostring(L, -1);
        if (lua_type(L, -1) != LUA_TSTRING || !p[0])
            luaL_error(L, "tls: %s must be a file name", key);
        int n = snprintf(out, outsz, "%s%s%s", p[0] == '/' ? "" : st->host->config_dir, p[0] == '/' ? "" : "/", p);
        if (n < 0 || (size_t)n >= outsz)
            luaL_error(L, "tls: %s: file name too long", key);
    }
    lua_pop(L, 1);
}

static int bool_field(lua_State *L, int t, const char *key)
{
    int on = 0;
    if (lua_getfield(L, t, key) != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TBOOLEAN)
            luaL_error(L, "tls: %s must be true or false", key);
        on = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return on;
}

/* tls { cert, key, ca, verify, map_user, timeout, http }: TLS on the NATS
 * listener (and on HTTP with http = true).  The files are read and checked
 * here, at load: a reload whose certificate cannot be used fails and the
 * running one keeps serving.  The context goes to the server when the
 * state is swapped in (script.c). */
int settings_l_tls(lua_State *L)
{
    static const char *const known[] = {"cert", "key", "ca", "verify", "map_user", "timeout", "http", NULL};
    state_t *st = script_state_of(L);
    tls_config_t *cfg = lua_newuserdatauv(L, sizeof *cfg, 0); /* too big for the C stack of a Lua call */
    char err[PATH_MAX * 2 + 256];
    luaL_checktype(L, 1, LUA_TTABLE);
    settings_check_keys(L, 1, "tls", known);
    if (st->tls)
        return luaL_error(L, "tls: declared twice");
    tls_config_default(cfg);
    path_field(L, st, 1, "cert", cfg->cert, sizeof cfg->cert);
    path_field(L, st, 1, "key", cfg->key, sizeof cfg->key);
    path_field(L, st, 1, "ca", cfg->ca, sizeof cfg->ca);
    if (!cfg->cert[0] || !cfg->key[0])
        return luaL_error(L, "tls: cert and key are required");
    cfg->verify = bool_field(L, 1, "verify");
    cfg->map_user = bool_field(L, 1, "map_user");
    cfg->http = bool_field(L, 1, "http");
    if (cfg->verify && !cfg->ca[0])
        return luaL_error(L, "tls: verify = true needs ca (the CA client certificates must be signed by)");
    if (cfg->map_user && !cfg->verify)
        return luaL_error(L, "tls: map_user = true needs verify = true");
    cfg->timeout = settings_duration(L, 1, "timeout", TLS_DEFAULT_TIMEOUT);
    if (!(cfg->timeout >= 0.001 && cfg->timeout <= 3600))
        return luaL_error(L, "tls: timeout must be between 1ms and 1h");
    st->tls = tls_context_new(cfg, err, sizeof err);
    if (!st->tls)
        return luaL_error(L, "%s", err);
    return 0;
}
