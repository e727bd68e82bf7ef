/*
 * luamod.c - the C core as a Lua 5.4 module ("tide_core"), so busted specs
 * can test core pieces directly.
 *
 *   core.valid_pattern(s), core.valid_literal(s), core.matches(pattern, subject)
 *   local sl = core.sublist()
 *     sl:insert(pattern [, queue]) -> handle    sl:remove(handle) -> bool
 *     sl:match(subject) -> { plain = {handle...}, groups = { {name=, members={handle...}}... } }
 *     sl:stats() -> { subs, cache_entries, matches, cache_hits }
 *     sl:hold(subject): matches and holds the result (sublist_result_hold)
 *     sl:held() -> the last held result, as from match;  sl:release()
 *   local p = core.parser([max_control_line [, max_payload]])
 *     p:feed(bytes) -> events, status, errtext
 *       events: list of {op="PUB", subject=, reply=, hdr=, payload=} ... ;
 *       status: "ok" or the error name ("unknown_op", "control_line", ...)
 *   local str = core.patterns([{ limit = steps, two_way_from = bytes }])
 *     str.find, str.match, str.gmatch, str.gsub: the sandbox's pattern
 *     functions (pattern.h), counting their steps; past limit (if given)
 *     they raise "step limit reached"; plain finds of needles of
 *     two_way_from bytes or more use the two-way search
 *   core.pattern_steps() -> steps counted since the last core.patterns()
 *     (those of short calls are counted once they add up to 4096)
 *   core.nkey_nonce() -> a fresh INFO nonce (nkey.h)
 *   core.nkey_verify(pubkey, message, sig) -> true, or false and the reason
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "nkey.h"
#include "pattern.h"
#include "proto.h"
#include "util.h"
#include "subject.h"
#include "sublist.h"

static int l_valid_pattern(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, subject_valid_pattern(s, n));
    return 1;
}

static int l_valid_literal(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, subject_valid_literal(s, n));
    return 1;
}

static int l_matches(lua_State *L)
{
    size_t pn, sn;
    const char *p = luaL_checklstring(L, 1, &pn);
    const char *s = luaL_checklstring(L, 2, &sn);
    if (!subject_valid_pattern(p, pn) || !subject_valid_literal(s, sn))
        return luaL_error(L, "matches: invalid pattern or subject");
    lua_pushboolean(L, subject_matches(p, pn, s, sn));
    return 1;
}

/* ---- sublist ------------------------------------------------------------ */

#define SUBLIST_MT "tide_core.sublist"

typedef struct lsublist {
    sublist_t *sl;
    sub_t **subs; /* handle h (1-based) is subs[h-1]; NULL once removed */
    size_t n, cap;
    sublist_result_t *held[8]; /* sl:hold's, the last on top */
    int nheld;
} lsublist_t;

static lsublist_t *check_sublist(lua_State *L)
{
    lsublist_t *u = luaL_checkudata(L, 1, SUBLIST_MT);
    if (!u->sl)
        luaL_error(L, "sublist is closed");
    return u;
}

static int l_sublist(lua_State *L)
{
    lsublist_t *u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u);
    u->sl = sublist_new();
    if (!u->sl)
        return luaL_error(L, "out of memory");
    luaL_setmetatable(L, SUBLIST_MT);
    return 1;
}

static void free_sub(sub_t *s)
{
    free(s->subject);
    free(s->queue);
    free(s);
}

static int l_sublist_gc(lua_State *L)
{
    lsublist_t *u = luaL_checkudata(L, 1, SUBLIST_MT);
    if (u->sl) {
        while (u->nheld)
            sublist_result_release(u->held[--u->nheld]);
        sublist_free(u->sl);
        for (size_t i = 0; i < u->n; i++)
            if (u->subs[i])
                free_sub(u->subs[i]);
        free(u->subs);
        u->sl = NULL;
    }
    return 0;
}

static int l_sublist_insert(lua_State *L)
{
    lsublist_t *u = check_sublist(L);
    size_t pn, qn = 0;
    const char *p = luaL_checklstring(L, 2, &pn);
    const char *q = luaL_optlstring(L, 3, NULL, &qn);
    if (!subject_valid_pattern(p, pn))
        return luaL_error(L, "invalid subject pattern '%s'", p);
    if (u->n == u->cap) {
        size_t nc = u->cap ? u->cap * 2 : 16;
        sub_t **ns = realloc(u->subs, nc * sizeof *ns);
        if (!ns)
            return luaL_error(L, "out of memory");
        u->subs = ns;
        u->cap = nc;
    }
    sub_t *s = calloc(1, sizeof *s);
    if (!s)
        return luaL_error(L, "out of memory");
    s->subject = util_mem_dup(p, pn);
    s->subject_len = pn;
    if (q) {
        s->queue = util_mem_dup(q, qn);
        s->queue_len = qn;
    }
    s->owner = (void *)(uintptr_t)(u->n + 1);
    if (sublist_insert(u->sl, s) < 0) {
        free_sub(s);
        return luaL_error(L, "out of memory");
    }
    u->subs[u->n++] = s;
    lua_pushinteger(L, (lua_Integer)u->n);
    return 1;
}

static int l_sublist_remove(lua_State *L)
{
    lsublist_t *u = check_sublist(L);
    lua_Integer h = luaL_checkinteger(L, 2);
    if (h < 1 || (size_t)h > u->n || !u->subs[h - 1]) {
        lua_pushboolean(L, 0);
        return 1;
    }
    sub_t *s = u->subs[h - 1];
    int rc = sublist_remove(u->sl, s);
    free_sub(s);
    u->subs[h - 1] = NULL;
    lua_pushboolean(L, rc == 0);
    return 1;
}

static sublist_result_t *match_arg(lua_State *L, lsublist_t *u)
{
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    if (!subject_valid_literal(s, n))
        luaL_error(L, "invalid subject '%s'", s);
    sublist_result_t *r = sublist_match(u->sl, s, n);
    if (!r)
        luaL_error(L, "out of memory");
    return r;
}

static int push_result(lua_State *L, const sublist_result_t *r)
{
    lua_createtable(L, 0, 2);
    lua_createtable(L, (int)r->npsubs, 0);
    for (size_t i = 0; i < r->npsubs; i++) {
        lua_pushinteger(L, (lua_Integer)(uintptr_t)r->psubs[i]->owner);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "plain");
    lua_createtable(L, (int)r->nqgroups, 0);
    for (size_t i = 0; i < r->nqgroups; i++) {
        lua_createtable(L, 0, 2);
        lua_pushlstring(L, r->qgroups[i].name, r->qgroups[i].name_len);
        lua_setfield(L, -2, "name");
        lua_createtable(L, (int)r->qgroups[i].n, 0);
        for (size_t j = 0; j < r->qgroups[i].n; j++) {
            lua_pushinteger(L, (lua_Integer)(uintptr_t)r->qgroups[i].subs[j]->owner);
            lua_rawseti(L, -2, (lua_Integer)j + 1);
        }
        lua_setfield(L, -2, "members");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "groups");
    return 1;
}

static int l_sublist_match(lua_State *L)
{
    lsublist_t *u = check_sublist(L);
    return push_result(L, match_arg(L, u));
}

static int l_sublist_hold(lua_State *L)
{
    lsublist_t *u = check_sublist(L);
    if (u->nheld == (int)(sizeof u->held / sizeof u->held[0]))
        return luaL_error(L, "too many holds");
    sublist_result_t *r = match_arg(L, u);
    sublist_result_hold(r);
    u->held[u->nheld++] = r;
    return 0;
}

static int l_sublist_held(lua_State *L)
{
    lsublist_t *u = check_sublist(L);
    if (!u->nheld)
        return luaL_error(L, "nothing held");
    return push_result(L, u->held[u->nheld - 1]);
}

static int l_sublist_release(lua_State *L)
{
    lsublist_t *u = check_sublist(L);
    if (!u->nheld)
        return luaL_error(L, "nothing held");
    sublist_result_release(u->held[--u->nheld]);
    return 0;
}

static int l_sublist_stats(lua_State *L)
{
    lsublist_t *u = check_sublist(L);
    sublist_stats_t st;
    sublist_get_stats(u->sl, &st);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)st.subs);
    lua_setfield(L, -2, "subs");
    lua_pushinteger(L, (lua_Integer)st.cache_entries);
    lua_setfield(L, -2, "cache_entries");
    lua_pushinteger(L, (lua_Integer)st.matches);
    lua_setfield(L, -2, "matches");
    lua_pushinteger(L, (lua_Integer)st.cache_hits);
    lua_setfield(L, -2, "cache_hits");
    return 1;
}

/* ---- parser ------------------------------------------------------------- */

#define PARSER_MT "tide_core.parser"

typedef struct lparser {
    proto_parser_t p;
    int live;
} lparser_t;

static int l_parser(lua_State *L)
{
    lua_Integer cl = luaL_optinteger(L, 1, 0), mp = luaL_optinteger(L, 2, 0);
    lparser_t *u = lua_newuserdatauv(L, sizeof *u, 0);
    proto_init(&u->p, (size_t)(cl > 0 ? cl : 0), (size_t)(mp > 0 ? mp : 0));
    u->live = 1;
    luaL_setmetatable(L, PARSER_MT);
    return 1;
}

static int l_parser_gc(lua_State *L)
{
    lparser_t *u = luaL_checkudata(L, 1, PARSER_MT);
    if (u->live) {
        proto_free(&u->p);
        u->live = 0;
    }
    return 0;
}

/* Appends the table on top of the stack to the events list at index 3. */
static void push_event(lua_State *L)
{
    lua_rawseti(L, 3, (lua_Integer)luaL_len(L, 3) + 1);
}

static int ev_connect(void *ctx, const char *json, size_t len)
{
    lua_State *L = ctx;
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "CONNECT");
    lua_setfield(L, -2, "op");
    lua_pushlstring(L, json, len);
    lua_setfield(L, -2, "json");
    push_event(L);
    return 0;
}

static int ev_pub(void *ctx, const proto_msg_t *m)
{
    lua_State *L = ctx;
    lua_createtable(L, 0, 5);
    lua_pushstring(L, m->hdr ? "HPUB" : "PUB");
    lua_setfield(L, -2, "op");
    lua_pushlstring(L, m->subject, m->subject_len);
    lua_setfield(L, -2, "subject");
    if (m->reply) {
        lua_pushlstring(L, m->reply, m->reply_len);
        lua_setfield(L, -2, "reply");
    }
    if (m->hdr) {
        lua_pushlstring(L, m->hdr, m->hdr_len);
        lua_setfield(L, -2, "hdr");
    }
    lua_pushlstring(L, m->payload, m->payload_len);
    lua_setfield(L, -2, "payload");
    push_event(L);
    return 0;
}

static int ev_sub(void *ctx, const char *s, size_t sl, const char *q, size_t ql, const char *sid, size_t sidl)
{
    lua_State *L = ctx;
    lua_createtable(L, 0, 4);
    lua_pushliteral(L, "SUB");
    lua_setfield(L, -2, "op");
    lua_pushlstring(L, s, sl);
    lua_setfield(L, -2, "subject");
    if (q) {
        lua_pushlstring(L, q, ql);
        lua_setfield(L, -2, "queue");
    }
    lua_pushlstring(L, sid, sidl);
    lua_setfield(L, -2, "sid");
    push_event(L);
    return 0;
}

static int ev_unsub(void *ctx, const char *sid, size_t sidl, uint64_t max)
{
    lua_State *L = ctx;
    lua_createtable(L, 0, 3);
    lua_pushliteral(L, "UNSUB");
    lua_setfield(L, -2, "op");
    lua_pushlstring(L, sid, sidl);
    lua_setfield(L, -2, "sid");
    if (max) {
        lua_pushinteger(L, (lua_Integer)max);
        lua_setfield(L, -2, "max");
    }
    push_event(L);
    return 0;
}

static int ev_simple(lua_State *L, const char *op)
{
    lua_createtable(L, 0, 1);
    lua_pushstring(L, op);
    lua_setfield(L, -2, "op");
    push_event(L);
    return 0;
}

static int ev_ping(void *ctx) { return ev_simple(ctx, "PING"); }
static int ev_pong(void *ctx) { return ev_simple(ctx, "PONG"); }

static const proto_handler_t lua_handler = {ev_connect, ev_pub, ev_sub, ev_unsub, ev_ping, ev_pong};

static int l_parser_feed(lua_State *L)
{
    lparser_t *u = luaL_checkudata(L, 1, PARSER_MT);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    lua_settop(L, 2);
    lua_newtable(L); /* index 3: events */
    int rc = proto_parse(&u->p, s, n, &lua_handler, L);
    const char *status = "ok";
    switch (rc) {
    case PROTO_ERR_UNKNOWN_OP: status = "unknown_op"; break;
    case PROTO_ERR_CONTROL_LINE: status = "control_line"; break;
    case PROTO_ERR_MAX_PAYLOAD: status = "max_payload"; break;
    case PROTO_ERR_ARGS: status = "args"; break;
    case PROTO_ERR_PAYLOAD_END: status = "payload_end"; break;
    default: break;
    }
    lua_pushstring(L, status);
    if (rc < 0) {
        lua_pushstring(L, u->p.errtext ? u->p.errtext : proto_strerror(rc));
        return 3;
    }
    return 2;
}

/* ---- patterns ------------------------------------------------------------ */

/* The step count of this Lua state's pattern functions, in the registry. */
typedef struct step_count {
    lua_Integer steps, limit; /* limit 0: none */
} step_count_t;

static const char step_count_key = 0;

static step_count_t *step_count(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &step_count_key);
    step_count_t *c = lua_touserdata(L, -1);
    lua_pop(L, 1); /* the registry keeps it */
    if (!c) {
        c = lua_newuserdatauv(L, sizeof *c, 0);
        memset(c, 0, sizeof *c);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &step_count_key);
    }
    return c;
}

static void count_steps(lua_State *L, void *ud, size_t steps)
{
    step_count_t *c = ud; /* the registry's: it lives as long as the state */
    c->steps += (lua_Integer)steps;
    if (c->limit && c->steps > c->limit)
        luaL_error(L, "step limit reached");
}

static int l_patterns(lua_State *L)
{
    step_count_t *c = step_count(L);
    pattern_budget_t b = {count_steps, c, 0};
    c->steps = c->limit = 0;
    if (lua_istable(L, 1)) {
        lua_getfield(L, 1, "limit");
        c->limit = luaL_optinteger(L, -1, 0);
        lua_getfield(L, 1, "two_way_from");
        b.two_way_from = (size_t)luaL_optinteger(L, -1, 0);
        lua_pop(L, 2);
    }
    lua_newtable(L);
    pattern_register(L, &b);
    return 1;
}

static int l_pattern_steps(lua_State *L)
{
    lua_pushinteger(L, step_count(L)->steps);
    return 1;
}

/* frac_ns(".123456789Z") -> ns, and how many bytes it read (util_frac_ns). */
static int l_frac_ns(lua_State *L)
{
    const char *s = luaL_checkstring(L, 1), *end;
    lua_pushinteger(L, (lua_Integer)util_frac_ns(s, &end));
    lua_pushinteger(L, (lua_Integer)(end - s));
    return 2;
}

static int l_nkey_nonce(lua_State *L)
{
    char nonce[NKEY_NONCE_STR_LEN + 1];
    int rc = nkey_nonce(nonce, sizeof nonce);
    if (rc != NKEY_OK)
        return luaL_error(L, "nkey_nonce: %s", nkey_strerror(rc));
    lua_pushstring(L, nonce);
    return 1;
}

static int l_nkey_verify(lua_State *L)
{
    unsigned char pub[NKEY_KEY_LEN];
    size_t msg_len, sig_len;
    const char *key = luaL_checkstring(L, 1);
    const char *msg = luaL_checklstring(L, 2, &msg_len);
    const char *sig = luaL_checklstring(L, 3, &sig_len);
    int rc = nkey_public_decode(key, pub);
    if (rc == NKEY_OK)
        rc = nkey_verify(pub, msg, msg_len, sig, sig_len);
    lua_pushboolean(L, rc == NKEY_OK);
    lua_pushstring(L, nkey_strerror(rc));
    return 2;
}

int luaopen_tide_core(lua_State *L);
int luaopen_tide_core(lua_State *L)
{
    static const luaL_Reg sublist_methods[] = {{"insert", l_sublist_insert},
                                               {"remove", l_sublist_remove},
                                               {"match", l_sublist_match},
                                               {"stats", l_sublist_stats},
                                               {"hold", l_sublist_hold},
                                               {"held", l_sublist_held},
                                               {"release", l_sublist_release},
                                               {NULL, NULL}};
    static const luaL_Reg parser_methods[] = {{"feed", l_parser_feed}, {NULL, NULL}};
    static const luaL_Reg fns[] = {{"valid_pattern", l_valid_pattern},
                                   {"valid_literal", l_valid_literal},
                                   {"matches", l_matches},
                                   {"sublist", l_sublist},
                                   {"parser", l_parser},
                                   {"patterns", l_patterns},
                                   {"pattern_steps", l_pattern_steps},
                                   {"frac_ns", l_frac_ns},
                                   {"nkey_nonce", l_nkey_nonce},
                                   {"nkey_verify", l_nkey_verify},
                                   {NULL, NULL}};

    luaL_newmetatable(L, SUBLIST_MT);
    luaL_newlib(L, sublist_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_sublist_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    luaL_newmetatable(L, PARSER_MT);
    luaL_newlib(L, parser_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_parser_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    luaL_newlib(L, fns);
    return 1;
}
