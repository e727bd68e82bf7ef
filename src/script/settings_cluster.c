/* settings_cluster.c - the entry file's cluster { } block (cluster_settings.h). */
#include <unistd.h>

#include "script_internal.h"

/* t[key] as a string of at most outsz - 1 bytes into out; "" when absent. */
static void string_field(lua_State *L, int t, const char *key, char *out, size_t outsz)
{
    out[0] = '\0';
    int type = lua_getfield(L, t, key);
    if (type != LUA_TNIL) {
        size_t len;
        const char *v = lua_tolstring(L, -1, &len);
        if (type != LUA_TSTRING || !len)
            luaL_error(L, "cluster: %s must be a non-empty string", key);
        if (len >= outsz)
            luaL_error(L, "cluster: %s is too long (at most %d bytes)", key, (int)outsz - 1);
        memcpy(out, v, len + 1);
    }
    lua_pop(L, 1);
}

/* t[key], a file name taken from the entry file's directory when relative. */
static void file_field(lua_State *L, state_t *st, int t, const char *what, const char *key, char *out, size_t outsz)
{
    out[0] = '\0';
    if (lua_getfield(L, t, key) != LUA_TNIL) {
        const char *p = lua_tostring(L, -1);
        if (lua_type(L, -1) != LUA_TSTRING || !p[0])
            luaL_error(L, "%s: %s must be a file name", what, key);
        int n = snprintf(out, outsz, "%s%s%s", p[0] == '/' ? "" : st->host->config_dir, p[0] == '/' ? "" : "/", p);
        if (n < 0 || (size_t)n >= outsz)
            luaL_error(L, "%s: %s: file name too long", what, key);
        if (access(out, R_OK) != 0)
            luaL_error(L, "%s: %s: cannot read %s: %s", what, key, out, strerror(errno));
    }
    lua_pop(L, 1);
}

/* upstream = { "nats://host:port", "host:port", "tls://host:port", ... } */
static void upstream_field(lua_State *L, cluster_settings_t *cs)
{
    if (lua_getfield(L, 1, "upstream") != LUA_TTABLE)
        luaL_error(L, "cluster: upstream = { \"nats://host:port\", ... } is required");
    int n = (int)luaL_len(L, -1);
    if (n < 1 || n > CLUSTER_UPSTREAM_MAX)
        luaL_error(L, "cluster: upstream must list 1 to %d servers", CLUSTER_UPSTREAM_MAX);
    for (int i = 1; i <= n; i++) {
        size_t len;
        lua_rawgeti(L, -1, i);
        const char *u = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (!u)
            luaL_error(L, "cluster: upstream[%d] must be a string such as \"nats://10.0.0.1:4222\"", i);
        const char *hostport = strstr(u, "://") ? strstr(u, "://") + 3 : u;
        const char *colon = strrchr(hostport, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (strstr(u, "://") && strncmp(u, "nats://", 7) && strncmp(u, "tls://", 6))
            luaL_error(L, "cluster: upstream[%d] '%s': the scheme must be nats:// or tls://", i, u);
        if (!colon || colon == hostport || !end || *end || port < 1 || port > 65535)
            luaL_error(L, "cluster: upstream[%d] '%s': host:port expected", i, u);
        int w = snprintf(cs->upstream[i - 1], sizeof cs->upstream[i - 1], "%s%s", strstr(u, "://") ? "" : "nats://", u);
        if (w < 0 || (size_t)w >= sizeof cs->upstream[i - 1])
            luaL_error(L, "cluster: upstream[%d] is too long", i);
        lua_pop(L, 1);
    }
    cs->nupstream = n;
    lua_pop(L, 1);
}

static void tls_field(lua_State *L, state_t *st, cluster_settings_t *cs)
{
    static const char *const known[] = {"ca", "cert", "key", NULL};
    int type = lua_getfield(L, 1, "tls");
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (type != LUA_TTABLE)
        luaL_error(L, "cluster: tls must be a table { ca = ..., cert = ..., key = ... }");
    int t = lua_gettop(L);
    settings_check_keys(L, t, "cluster.tls", known);
    file_field(L, st, t, "cluster.tls", "ca", cs->tls_ca, sizeof cs->tls_ca);
    file_field(L, st, t, "cluster.tls", "cert", cs->tls_cert, sizeof cs->tls_cert);
    file_field(L, st, t, "cluster.tls", "key", cs->tls_key, sizeof cs->tls_key);
    if (!cs->tls_cert[0] != !cs->tls_key[0])
        luaL_error(L, "cluster.tls: cert and key go together");
    cs->tls = 1;
    lua_pop(L, 1);
}

/* cluster { upstream = {...}, name, user/password | token | nkey, tls = {...} }:
 * checked here, at load; the connection is the app's (app/cluster.c). */
int settings_l_cluster(lua_State *L)
{
    static const char *const known[] = {"upstream", "name", "user", "password", "token", "nkey", "tls", NULL};
    state_t *st = script_state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    settings_check_keys(L, 1, "cluster", known);
    if (st->cluster)
        return luaL_error(L, "cluster: declared twice");
    cluster_settings_t *cs = lua_newuserdatauv(L, sizeof *cs, 0); /* too big for the C stack of a Lua call */
    memset(cs, 0, sizeof *cs);
    upstream_field(L, cs);
    string_field(L, 1, "name", cs->name, sizeof cs->name);
    string_field(L, 1, "user", cs->user, sizeof cs->user);
    string_field(L, 1, "password", cs->password, sizeof cs->password);
    string_field(L, 1, "token", cs->token, sizeof cs->token);
    file_field(L, st, 1, "cluster", "nkey", cs->nkey, sizeof cs->nkey);
    tls_field(L, st, cs);
    if (cs->password[0] && !cs->user[0])
        return luaL_error(L, "cluster: password needs user");
    if (cs->user[0] && !cs->password[0])
        return luaL_error(L, "cluster: user needs password");
    if (!!cs->user[0] + !!cs->token[0] + !!cs->nkey[0] > 1)
        return luaL_error(L, "cluster: say one of user/password, token or nkey");
    for (const char *p = cs->name; *p; p++)
        if (*p <= ' ' || *p == '.' || *p == '*' || *p == '>')
            return luaL_error(L, "cluster: name '%s' must be one subject token (no spaces, '.', '*' or '>')", cs->name);
    if (!(st->cluster = malloc(sizeof *st->cluster)))
        return luaL_error(L, "cluster: out of memory");
    *st->cluster = *cs;
    return 0;
}

void settings_cluster_finish(lua_State *L)
{
    state_t *st = script_state_of(L);
    if (st->ncluster_streams && !st->cluster)
        luaL_error(L, "%s: stream '%s': backend = \"jetstream\" needs cluster { upstream = { ... } } in the entry file",
                   st->cluster_streams[0].where, st->cluster_streams[0].name);
}

void cluster_settings_address_name(const cluster_settings_t *cs, char *out, size_t size)
{
    if (!size)
        return;
    if (cs && cs->name[0])
        snprintf(out, size, "%s", cs->name);
    else if (gethostname(out, size) != 0)
        snprintf(out, size, "tide");
    out[size - 1] = '\0';
    for (char *p = out; *p; p++)
        if (*p == '.' || *p == '*' || *p == '>' || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            *p = '_';
}
