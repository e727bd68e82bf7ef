/*
 * settings_auth.c - auth { ... } in the entry file: who may connect to the
 * NATS listener and what each user may do (docs/security.md).  Read into a
 * plain C configuration (auth.h) that the core checks; nothing is applied
 * unless the whole entry file loads, so a bad auth block on reload keeps
 * the running one.
 *
 *   auth {
 *     timeout = "2s",
 *     token = "s3cret",                   -- or users, not both
 *     users = { { user = "shop", password = "$2b$11$...", admin = true,
 *                 permissions = { publish = { allow = {...}, deny = {...} },
 *                                 subscribe = { ... }, allow_responses = true } },
 *               { nkey = "U...", permissions = { ... } },
 *               { user = "CN", permissions = { ... } } },  -- tls map_user only
 *     default_permissions = { ... },
 *     no_auth_user = "guest",
 *   }
 */
#include "auth.h"
#include "nkey.h"
#include "script_internal.h"

/* settings_check_keys with "auth: " before what. */
static void check_keys(lua_State *L, int t, const char *what, const char *const *known)
{
    char full[200];
    snprintf(full, sizeof full, "auth: %s", what);
    settings_check_keys(L, t, full, known);
}

/* Adds the patterns of the list at the top of the stack to p's `which`. */
static void read_patterns(lua_State *L, auth_perms_t *p, enum auth_which which, const char *what)
{
    int t = lua_gettop(L);
    if (lua_type(L, t) == LUA_TSTRING) {
        lua_createtable(L, 1, 0); /* a single pattern: a list of one */
        lua_pushvalue(L, t);
        lua_rawseti(L, -2, 1);
        lua_replace(L, t);
    }
    if (lua_type(L, t) != LUA_TTABLE)
        luaL_error(L, "auth: %s must be a list of subject patterns", what);
    auth_perms_give(p, which);
    lua_Integer n = (lua_Integer)lua_rawlen(L, t);
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        lua_rawgeti(L, t, i);
        const char *pat = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (!pat)
            luaL_error(L, "auth: %s[%d] must be a subject pattern (a string)", what, (int)i);
        if (!subject_valid_pattern(pat, len) || strlen(pat) != len)
            luaL_error(L, "auth: %s: invalid subject pattern '%s'", what, pat);
        if (auth_perms_add(p, which, pat) < 0)
            luaL_error(L, "out of memory");
        lua_pop(L, 1);
    }
}

/* publish = { allow = {...}, deny = {...} }, or publish = {...} (allow). */
static void read_direction(lua_State *L, auth_perms_t *p, const char *key, enum auth_which allow,
                           enum auth_which deny, const char *where)
{
    static const char *const known[] = {"allow", "deny", NULL};
    char what[160];
    int t = lua_gettop(L);
    if (lua_getfield(L, t, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    int d = lua_gettop(L);
    snprintf(what, sizeof what, "%s.%s", where, key);
    if (lua_type(L, d) == LUA_TSTRING || (lua_type(L, d) == LUA_TTABLE && lua_rawlen(L, d) > 0)) {
        read_patterns(L, p, allow, what); /* the short form: the allow list */
        lua_pop(L, 1);
        return;
    }
    if (lua_type(L, d) != LUA_TTABLE)
        luaL_error(L, "auth: %s must be a table { allow = {...}, deny = {...} }", what);
    check_keys(L, d, what, known);
    if (lua_getfield(L, d, "allow") != LUA_TNIL) {
        snprintf(what, sizeof what, "%s.%s.allow", where, key);
        read_patterns(L, p, allow, what);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, d, "deny") != LUA_TNIL) {
        snprintf(what, sizeof what, "%s.%s.deny", where, key);
        read_patterns(L, p, deny, what);
    }
    lua_pop(L, 2);
}

/* The permissions table at the top of the stack.  The result is anchored
 * in *slot at once, so an error raised while reading frees it with the
 * state's configuration. */
static void read_perms(lua_State *L, auth_perms_t **slot, const char *where)
{
    static const char *const known[] = {"publish", "subscribe", "allow_responses", NULL};
    int t = lua_gettop(L);
    if (lua_type(L, t) != LUA_TTABLE)
        luaL_error(L, "auth: %s must be a table", where);
    check_keys(L, t, where, known);
    if (!(*slot = auth_perms_new()))
        luaL_error(L, "out of memory");
    auth_perms_t *p = *slot;
    read_direction(L, p, "publish", AUTH_PUB_ALLOW, AUTH_PUB_DENY, where);
    read_direction(L, p, "subscribe", AUTH_SUB_ALLOW, AUTH_SUB_DENY, where);
    if (lua_getfield(L, t, "allow_responses") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TBOOLEAN)
            luaL_error(L, "auth: %s.allow_responses must be true or false", where);
        p->allow_responses = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    auth_perms_finish(p);
}

/* A string field of table t copied into *dst (left NULL when absent). */
static void read_string(lua_State *L, int t, const char *key, char **dst, const char *where)
{
    if (lua_getfield(L, t, key) != LUA_TNIL) {
        size_t len;
        const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (!v || len == 0 || strlen(v) != len)
            luaL_error(L, "auth: %s.%s must be a non-empty string", where, key);
        if (!(*dst = strdup(v)))
            luaL_error(L, "out of memory");
    }
    lua_pop(L, 1);
}

/* A secret as written: a bcrypt hash must be whole; plain text is
 * accepted, with a warning (it sits readable in the entry file). */
static void check_secret(lua_State *L, const char *secret, const char *where)
{
    if (!strncmp(secret, "$2", 2) && !auth_is_bcrypt(secret))
        luaL_error(L, "auth: %s starts like a bcrypt hash but is not one ($2a$ or $2b$, a two-digit cost, "
                      "53 characters)", where);
    if (!auth_is_bcrypt(secret))
        log_warn("auth: %s is plain text; store a bcrypt hash instead (tide passwd)", where);
}

static void read_user(lua_State *L, auth_config_t *cfg, int i)
{
    static const char *const known[] = {"user", "password", "nkey", "permissions", "admin", NULL};
    char where[64];
    int t = lua_gettop(L);
    snprintf(where, sizeof where, "users[%d]", i);
    if (lua_type(L, t) != LUA_TTABLE)
        luaL_error(L, "auth: %s must be a table { user = ..., password = ... }", where);
    check_keys(L, t, where, known);
    auth_user_t *u = auth_config_add_user(cfg);
    if (!u)
        luaL_error(L, "out of memory");
    read_string(L, t, "user", &u->name, where);
    read_string(L, t, "password", &u->password, where);
    read_string(L, t, "nkey", &u->nkey, where);
    if (u->name && u->nkey)
        luaL_error(L, "auth: %s has both user and nkey: one identity each", where);
    if (!u->name && !u->nkey)
        luaL_error(L, "auth: %s needs user (with a password, or a certificate under tls map_user) or nkey", where);
    if (u->nkey && u->password)
        luaL_error(L, "auth: %s: an nkey user has no password", where);
    if (u->nkey) {
        unsigned char pub[NKEY_KEY_LEN];
        int rc = nkey_public_decode(u->nkey, pub);
        if (rc != NKEY_OK)
            luaL_error(L, "auth: %s: '%s' is not a public user nkey: %s", where, u->nkey, nkey_strerror(rc));
    }
    for (size_t k = 0; u->name && k + 1 < cfg->nusers; k++)
        if (cfg->users[k].name && !strcmp(cfg->users[k].name, u->name))
            luaL_error(L, "auth: user '%s' is declared twice", u->name);
    for (size_t k = 0; u->nkey && k + 1 < cfg->nusers; k++)
        if (cfg->users[k].nkey && !strcmp(cfg->users[k].nkey, u->nkey))
            luaL_error(L, "auth: nkey '%s' is declared twice", u->nkey);
    if (u->password) {
        char what[200];
        snprintf(what, sizeof what, "the password of user '%s'", u->name);
        check_secret(L, u->password, what);
    }
    if (lua_getfield(L, t, "admin") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TBOOLEAN)
            luaL_error(L, "auth: %s.admin must be true or false", where);
        u->admin = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, t, "permissions") != LUA_TNIL) {
        char what[96];
        snprintf(what, sizeof what, "%s.permissions", where);
        read_perms(L, &u->perms, what);
    }
    lua_pop(L, 1);
}

static void read_users(lua_State *L, auth_config_t *cfg)
{
    if (lua_type(L, -1) != LUA_TTABLE)
        luaL_error(L, "auth: users must be a list of { user = ..., password = ... }");
    int t = lua_gettop(L);
    lua_Integer n = (lua_Integer)lua_rawlen(L, t);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, t, i);
        read_user(L, cfg, (int)i);
        lua_pop(L, 1);
    }
}

int settings_l_auth(lua_State *L)
{
    static const char *const known[] = {"timeout", "token", "users", "default_permissions", "no_auth_user", NULL};
    state_t *st = script_state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    if (st->auth)
        return luaL_error(L, "auth: declared twice");
    settings_check_keys(L, 1, "auth", known);
    if (!(st->auth = auth_config_new()))
        return luaL_error(L, "out of memory");
    auth_config_t *cfg = st->auth;
    cfg->timeout = settings_duration(L, 1, "timeout", AUTH_DEFAULT_TIMEOUT);
    if (!(cfg->timeout >= 0.01 && cfg->timeout <= 600))
        return luaL_error(L, "auth: timeout must be between 10ms and 10m");
    int has_token = lua_getfield(L, 1, "token") != LUA_TNIL;
    int has_users = lua_getfield(L, 1, "users") != LUA_TNIL;
    lua_pop(L, 2);
    if (has_token && has_users)
        return luaL_error(L, "auth: token and users are exclusive: give one shared token, or users");
    if (!has_token && !has_users)
        return luaL_error(L, "auth: give a token or users (no credentials would let no client in)");
    read_string(L, 1, "token", &cfg->token, "auth");
    if (cfg->token)
        check_secret(L, cfg->token, "the token");
    if (lua_getfield(L, 1, "users") != LUA_TNIL)
        read_users(L, cfg);
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "default_permissions") != LUA_TNIL)
        read_perms(L, &cfg->default_perms, "default_permissions");
    lua_pop(L, 1);
    read_string(L, 1, "no_auth_user", &cfg->no_auth_user, "auth");
    if (cfg->no_auth_user && !auth_config_find_user(cfg, cfg->no_auth_user))
        return luaL_error(L, "auth: no_auth_user '%s' is not one of the users", cfg->no_auth_user);
    return 0;
}

int settings_auth_finish(lua_State *L)
{
    state_t *st = script_state_of(L);
    const tls_config_t *tls = st->tls ? tls_context_config(st->tls) : NULL;
    if (!st->auth || (tls && tls->verify && tls->map_user))
        return 0;
    for (size_t i = 0; i < st->auth->nusers; i++)
        if (st->auth->users[i].name && !st->auth->users[i].password)
            return luaL_error(L,
                              "auth: user '%s' needs a password (only under tls { verify = true, map_user = true } "
                              "can a user log in by its certificate alone)",
                              st->auth->users[i].name);
    return 0;
}
