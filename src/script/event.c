/* event.c - see event.h. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>

#include "client.h"
#include "event.h"
#include "json_edit.h"
#include "script.h"
#include "subject.h"
#include "util.h"

#define EVENT_MT "tide.event"
#define ENDED "this event's pipeline has ended; copy what you need from it while handling it"
#define HEADERS_MT "tide.event.headers"

/*
 * User values of the event userdata.  Everything an event holds beyond its
 * fixed fields is a Lua value kept here, so the event needs no finalizer
 * (a finalizer would make every event survive a collection) and nothing
 * leaks when an error cuts a pipeline short.  The one C-allocated part,
 * the cJSON tree a write needs, lives in a userdata of its own that has one.
 */
#define UV_TREE JSON_OWNER_UV /* holder of the tree (json_owner_tree) */
#define UV_HEADERS 2     /* name -> value table, made on first access */
#define UV_PROXY 3       /* the e.headers proxy handed to scripts */
#define UV_DATA 4        /* the e.data value, cached so e.data == e.data */
#define UV_TAPE 5        /* the payload's tokens (json_scan) */
#define UV_SUBJECT 6     /* the subject a script set (a Lua string) */
#define UV_OUT_HDR 7     /* re-encoded headers (a Lua string) */
#define UV_OUT_PAYLOAD 8 /* re-encoded payload (a Lua string) */
#define UV_INPUT 9       /* event_push(copy = 1): the message's bytes */
#define UV_SPLICED 10    /* the buffer edited payloads are spliced into, kept from one event to the next */
#define EVENT_NUV 10

/* A spliced payload longer than this gets a buffer of its own, which goes
 * with its event, so that one big event does not pin its size. */
#define SPLICED_KEEP_MAX 65536

/* Registry keys (addresses) of the event metatable and of the pipeline's
 * reused event. */
static const char event_key = 'e', reused_key = 'r';

/* Sets user value n of the event ev at idx to the value on top (popped),
 * noting it, so that event_push_pipeline clears it before the event object
 * is used again. */
static void set_uv(lua_State *L, int idx, event_t *ev, int n)
{
    lua_setiuservalue(L, idx, n);
    ev->uv_set |= 1u << n;
}

/*
 * Tapes of ordinary payloads (up to TAPE_POOL_TOKENS tokens) live in
 * blocks recycled through a free list instead of in a userdata: a userdata
 * per event is one more object for the collector to sweep.  A block
 * belongs to its event until event_expire_ptr, which every creator of an
 * event calls when the event's pipeline (or handler call) ends.  Bigger
 * tapes stay userdata, counted against the state's memory budget.  Loop
 * thread only.
 */
#define TAPE_POOL_TOKENS 128
#define TAPE_POOL_KEEP 16

typedef union tape_block {
    union tape_block *next;
    json_tok_t tok[TAPE_POOL_TOKENS];
} tape_block_t;

static tape_block_t *tape_free;
static int tape_free_n;

static tape_block_t *tape_get(void)
{
    tape_block_t *b = tape_free;
    if (b) {
        tape_free = b->next;
        tape_free_n--;
        return b;
    }
    return malloc(sizeof *b);
}

static void tape_put(tape_block_t *b)
{
    if (tape_free_n >= TAPE_POOL_KEEP) {
        free(b);
        return;
    }
    b->next = tape_free;
    tape_free = b;
    tape_free_n++;
}

event_t *event_test(lua_State *L, int idx)
{
    json_owner_t *o;
    if (lua_type(L, idx) != LUA_TLIGHTUSERDATA)
        return luaL_testudata(L, idx, EVENT_MT);
    if (json_light_kind(L, idx, &o) != JSON_LIGHT_OWNER)
        return NULL;
    /* A handle (event_push_pipeline): the event object takes its place. */
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &reused_key);
    event_t *ev = lua_touserdata(L, -1);
    if (!ev || o != &ev->owner)
        luaL_error(L, "%s", ENDED);
    lua_replace(L, idx);
    return ev;
}

/* Metamethods are only reachable through the event metatable (hidden from
 * getmetatable by __metatable), so their first argument is an event. */
static event_t *check_live(lua_State *L, int idx)
{
    event_t *ev = lua_touserdata(L, idx);
    if (ev->expired)
        luaL_error(L, "%s", ENDED);
    return ev;
}

void event_push_metatable(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &event_key);
}

/* The event reads message m (borrowed). */
static void borrow_message(event_t *ev, const proto_msg_t *m)
{
    ev->subject = m->subject;
    ev->reply = m->reply;
    ev->hdr = m->hdr;
    ev->payload = m->payload;
    ev->subject_len = m->subject_len;
    ev->reply_len = m->reply ? m->reply_len : 0;
    ev->hdr_len = m->hdr ? m->hdr_len : 0;
    ev->payload_len = m->payload_len;
}

event_t *event_push_mt(lua_State *L, const proto_msg_t *m, int mt_idx)
{
    event_t *ev = lua_newuserdatauv(L, sizeof *ev, EVENT_NUV);
    memset(ev, 0, sizeof *ev);
    if (mt_idx)
        lua_pushvalue(L, mt_idx);
    else
        event_push_metatable(L);
    lua_setmetatable(L, -2);
    borrow_message(ev, m);
    return ev;
}

event_t *event_push(lua_State *L, const proto_msg_t *m, int copy)
{
    event_t *ev = event_push_mt(L, m, 0);
    if (copy) {
        /* One string: subject, reply, headers, payload. */
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addlstring(&b, m->subject, m->subject_len);
        luaL_addlstring(&b, ev->reply ? ev->reply : "", ev->reply_len);
        luaL_addlstring(&b, ev->hdr ? ev->hdr : "", ev->hdr_len);
        luaL_addlstring(&b, m->payload ? m->payload : "", m->payload_len);
        luaL_pushresult(&b);
        const char *in = lua_tostring(L, -1);
        ev->subject = in;
        if (ev->reply)
            ev->reply = in + ev->subject_len;
        if (ev->hdr)
            ev->hdr = in + ev->subject_len + ev->reply_len;
        ev->payload = in + ev->subject_len + ev->reply_len + ev->hdr_len;
        lua_setiuservalue(L, -2, UV_INPUT);
    }
    /* Otherwise borrowed for the pipeline's length: no copy on the hot path. */
    return ev;
}

void event_expire(lua_State *L, int idx)
{
    event_expire_ptr(luaL_checkudata(L, idx, EVENT_MT));
}

void event_expire_ptr(event_t *ev)
{
    ev->expired = 1;
    ev->owner.dead = 1;
    ev->subject = ev->reply = ev->hdr = ev->payload = NULL;
    ev->subject_len = ev->reply_len = ev->hdr_len = ev->payload_len = 0;
    ev->out_hdr = ev->out_payload = NULL;
    ev->owner.text = NULL;
    ev->owner.tape = NULL;
    if (ev->pooled_tape)
        tape_put(ev->pooled_tape);
    ev->pooled_tape = NULL;
    if (ev->printing) {
        free(ev->printing);
        ev->printing = NULL;
    }
    /* The tree goes now (its holder, if it has one, finds it empty once
     * collected), and so do the views of the payload. */
    json_owner_release(&ev->owner);
}

void event_push_reused(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &reused_key);
}

event_t *event_push_pipeline(lua_State *L, const proto_msg_t *m, int mt_idx, int reused_idx)
{
    event_t *ev = lua_touserdata(L, reused_idx);
    lua_pushvalue(L, reused_idx);
    if (ev->expired) {
        /* What the last event held goes to the collector now. */
        for (int n = 1; ev->uv_set && n <= EVENT_NUV; n++) {
            if (ev->uv_set & (1u << n)) {
                lua_pushnil(L);
                lua_setiuservalue(L, -2, n);
            }
        }
        uint32_t gen = ev->gen + 1;
        char *spliced = ev->spliced;
        size_t spliced_cap = ev->spliced_cap;
        memset(ev, 0, sizeof *ev);
        ev->gen = gen;
        ev->spliced = spliced;
        ev->spliced_cap = spliced_cap;
        ev->reusable = 1;
        ev->owner.released_by_owner = 1;
        ev->owner.edits = (json_edits_t *)(ev + 1); /* emptied when the last event ended */
        if (json_push_owner_handle(L, &ev->owner)) {
            borrow_message(ev, m);
            return ev;
        }
        ev->expired = 1; /* no handle to be had: a new event instead */
        ev->owner.dead = 1;
    }
    lua_pop(L, 1);
    ev = event_push_mt(L, m, mt_idx);
    lua_pushvalue(L, -1);
    return ev;
}

/* ---- headers --------------------------------------------------------------- */

/* Pushes the name -> value table of the headers, building it on first use.
 * A name given more than once maps to a list of its values. */
static void push_header_table(lua_State *L, int evidx, event_t *ev)
{
    if (lua_getiuservalue(L, evidx, UV_HEADERS) == LUA_TTABLE)
        return;
    lua_pop(L, 1);
    lua_newtable(L);
    if (ev->hdr && ev->hdr_len) {
        const char *p = ev->hdr, *end = ev->hdr + ev->hdr_len;
        const char *eol = memchr(p, '\n', ev->hdr_len);
        p = eol ? eol + 1 : end;
        while (p < end) {
            eol = memchr(p, '\n', (size_t)(end - p));
            const char *le = eol ? eol : end;
            const char *colon = memchr(p, ':', (size_t)(le - p));
            if (colon && colon > p) {
                const char *v = colon + 1, *ve = le;
                while (v < ve && (*v == ' ' || *v == '\t'))
                    v++;
                while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                    ve--;
                lua_pushlstring(L, p, (size_t)(colon - p));
                lua_pushvalue(L, -1);
                int t = lua_rawget(L, -3);
                if (t == LUA_TNIL) {
                    lua_pop(L, 1);
                    lua_pushlstring(L, v, (size_t)(ve - v));
                    lua_rawset(L, -3);
                } else if (t == LUA_TSTRING) {
                    lua_createtable(L, 2, 0);
                    lua_insert(L, -2);
                    lua_rawseti(L, -2, 1);
                    lua_pushlstring(L, v, (size_t)(ve - v));
                    lua_rawseti(L, -2, 2);
                    lua_rawset(L, -3);
                } else {
                    lua_pushlstring(L, v, (size_t)(ve - v));
                    lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
                    lua_pop(L, 2);
                }
            }
            if (!eol)
                break;
            p = eol + 1;
        }
    }
    lua_pushvalue(L, -1);
    set_uv(L, evidx, ev, UV_HEADERS);
}

/* The event of the headers proxy at 1, pushed; raises once it has ended. */
static event_t *headers_event(lua_State *L)
{
    lua_getiuservalue(L, 1, 1);
    event_t *ev = check_live(L, -1);
    if (ev->gen != *(uint32_t *)lua_touserdata(L, 1))
        luaL_error(L, "%s", ENDED);
    return ev;
}

/* e.headers[name]: the name as given, else any spelling of it (header
 * names compare without case, as tide's own ce-* and Tide-* lookups do). */
static int headers_index(lua_State *L)
{
    headers_event(L);
    push_header_table(L, lua_gettop(L), lua_touserdata(L, -1));
    int t = lua_gettop(L);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, t) != LUA_TNIL || lua_type(L, 2) != LUA_TSTRING)
        return 1;
    lua_pop(L, 1);
    const char *want = lua_tostring(L, 2);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (lua_type(L, -2) == LUA_TSTRING && !strcasecmp(lua_tostring(L, -2), want))
            return 1;
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    return 1;
}

static int headers_newindex(lua_State *L)
{
    event_t *ev = headers_event(L);
    int evidx = lua_gettop(L);
    size_t nl;
    const char *name = luaL_checklstring(L, 2, &nl);
    if (!lua_isnil(L, 3) && lua_type(L, 3) != LUA_TSTRING && lua_type(L, 3) != LUA_TTABLE &&
        lua_type(L, 3) != LUA_TNUMBER)
        return luaL_error(L, "header values must be strings (or lists of strings)");
    /* Checked here, so the error names the rule that set it. */
    if (!nl || strpbrk(name, ":\r\n ") || strlen(name) != nl)
        return luaL_error(L, "invalid header name '%s'", name);
    int n = lua_type(L, 3) == LUA_TTABLE ? (int)luaL_len(L, 3) : 1;
    for (int i = 1; i <= n && !lua_isnil(L, 3); i++) {
        size_t vl;
        if (lua_type(L, 3) == LUA_TTABLE)
            lua_rawgeti(L, 3, i);
        else
            lua_pushvalue(L, 3);
        const char *v = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER ? lua_tolstring(L, -1, &vl)
                                                                                          : NULL;
        if (!v)
            return luaL_error(L, "header %s: values must be strings", name);
        if (memchr(v, '\r', vl) || memchr(v, '\n', vl))
            return luaL_error(L, "header %s: a value cannot hold CR or LF", name);
        lua_pop(L, 1);
    }
    push_header_table(L, evidx, ev);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, -3);
    ev->headers_dirty = 1;
    return 0;
}

static int table_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int headers_pairs(lua_State *L)
{
    event_t *ev = headers_event(L);
    int evidx = lua_gettop(L);
    lua_pushcfunction(L, table_next);
    push_header_table(L, evidx, ev);
    lua_pushnil(L);
    return 3;
}

static void push_headers_proxy(lua_State *L, int evidx)
{
    if (lua_getiuservalue(L, evidx, UV_PROXY) == LUA_TUSERDATA)
        return;
    lua_pop(L, 1);
    event_t *ev = lua_touserdata(L, evidx);
    uint32_t *gen = lua_newuserdatauv(L, sizeof *gen, 1);
    *gen = ev->gen; /* the reused event is another event once this differs */
    lua_pushvalue(L, evidx);
    lua_setiuservalue(L, -2, 1);
    luaL_setmetatable(L, HEADERS_MT);
    lua_pushvalue(L, -1);
    set_uv(L, evidx, ev, UV_PROXY);
}

/* Builds a NATS header block from the header table at the top of the stack
 * (popped), keeping the original status line, for the event at evidx.
 * Names are written sorted so the output is stable. */
static void encode_headers(lua_State *L, int evidx, event_t *ev)
{
    int t = lua_gettop(L);
    int n = 0;
    lua_newtable(L); /* sorted names */
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            lua_pushvalue(L, -1);
            lua_rawseti(L, t + 1, ++n);
        }
    }
    lua_getglobal(L, "table");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "sort");
        lua_pushvalue(L, t + 1);
        lua_call(L, 1, 0);
    }
    lua_pop(L, 1);
    ev->out_hdr = NULL;
    ev->out_hdr_len = 0;
    if (n == 0) {
        lua_settop(L, t - 1);
        return;
    }
    /* Built by appending to one string at acc: no buffer on the stack while
     * values are looked up and converted. */
    const char *eol = ev->hdr ? memchr(ev->hdr, '\n', ev->hdr_len) : NULL;
    if (eol && ev->hdr_len >= 8 && memcmp(ev->hdr, "NATS/1.0", 8) == 0) {
        /* Keep a status line such as "NATS/1.0 503" as it was. */
        size_t sl = (size_t)(eol - ev->hdr);
        if (sl && ev->hdr[sl - 1] == '\r')
            sl--;
        lua_pushlstring(L, ev->hdr, sl);
    } else {
        lua_pushliteral(L, "NATS/1.0");
    }
    lua_pushliteral(L, "\r\n");
    lua_concat(L, 2);
    int acc = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, t + 1, i);                /* acc+1: name */
        const char *name = lua_tostring(L, -1);
        lua_pushvalue(L, -1);
        lua_rawget(L, t);                        /* acc+2: value or list */
        int vt = lua_type(L, -1);
        int nv = vt == LUA_TTABLE ? (int)luaL_len(L, -1) : 1;
        for (int j = 1; j <= nv; j++) {
            if (vt == LUA_TTABLE)
                lua_rawgeti(L, acc + 2, j);
            else
                lua_pushvalue(L, acc + 2);       /* acc+3 */
            size_t vl;
            const char *v = luaL_tolstring(L, -1, &vl); /* acc+4 */
            if (memchr(v, '\r', vl) || memchr(v, '\n', vl) || strchr(name, ':') || strchr(name, '\n'))
                luaL_error(L, "header %s: names and values cannot hold ':' (names), CR or LF", name);
            lua_pushvalue(L, acc);
            lua_pushvalue(L, acc + 1);
            lua_pushliteral(L, ": ");
            lua_pushvalue(L, acc + 4);
            lua_pushliteral(L, "\r\n");
            lua_concat(L, 5);
            lua_replace(L, acc);
            lua_settop(L, acc + 2);
        }
        lua_settop(L, acc);
    }
    lua_pushliteral(L, "\r\n");
    lua_concat(L, 2);
    ev->out_hdr = lua_tolstring(L, -1, &ev->out_hdr_len);
    set_uv(L, evidx, ev, UV_OUT_HDR);
    lua_settop(L, t - 1);
}

/* ---- decoding ------------------------------------------------------------ */

/* Attribute names that come from ce-* headers, with the header they come from. */
static const char *const ce_attrs[] = {"id", "source", "type", "specversion", "time", "subject",
                                       "dataschema", "version", NULL};

/* Adds a string member made from len bytes (not NUL-terminated; NULs kept). */
static void add_string(lua_State *L, cJSON *obj, const char *key, const char *val, size_t len)
{
    cJSON *v = json_new_string(val, len);
    if (!v || !cJSON_AddItemToObject(obj, key, v)) {
        cJSON_Delete(v);
        luaL_error(L, "out of memory");
    }
}

/* Adds the ce-<name> headers not yet in env as string attributes. */
static void add_extensions(lua_State *L, event_t *ev, cJSON *env)
{
    const char *end = ev->hdr + ev->hdr_len;
    const char *p = memchr(ev->hdr, '\n', ev->hdr_len);
    for (p = p ? p + 1 : end; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        size_t nl = colon ? (size_t)(colon - p) : 0;
        if (nl > 3 && nl < 64 && strncasecmp(p, "ce-", 3) == 0) {
            char name[64], hname[68];
            size_t vl;
            for (size_t i = 0; i < nl - 3; i++) {
                char c = p[3 + i];
                name[i] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
            }
            name[nl - 3] = '\0';
            snprintf(hname, sizeof hname, "ce-%s", name);
            const char *val = proto_header_find(ev->hdr, ev->hdr_len, hname, &vl);
            if (val && !cJSON_GetObjectItemCaseSensitive(env, name))
                add_string(L, env, name, val, vl);
        }
        if (!eol)
            break;
        p = eol + 1;
    }
}

static uint64_t decodes;

uint64_t event_decode_count(void)
{
    return decodes;
}


/* The tree of the event at idx, built now if it has none (see json_owner_tree). */
static json_tree_t *tree_of(lua_State *L, int idx, event_t *ev)
{
    return json_owner_tree(L, &ev->owner, idx);
}

/* Scans the payload into a tape the event at idx keeps.  0, or -1 when the
 * payload is not JSON. */
static int scan_payload(lua_State *L, int idx, event_t *ev)
{
    if (!ev->payload_len)
        return -1;
    tape_block_t *b = tape_get();
    long n = json_scan(ev->payload, ev->payload_len, b ? b->tok : NULL, b ? TAPE_POOL_TOKENS : 0);
    if (n < 0 || (b && n <= TAPE_POOL_TOKENS)) {
        if (n < 0) {
            if (b)
                tape_put(b);
            return -1;
        }
        ev->pooled_tape = b;
        ev->owner.tape = b->tok;
    } else {
        if (b)
            tape_put(b);
        json_tok_t *tape = lua_newuserdatauv(L, (size_t)n * sizeof *tape, 0);
        json_scan(ev->payload, ev->payload_len, tape, (uint32_t)n);
        set_uv(L, idx, ev, UV_TAPE);
        ev->owner.tape = tape;
    }
    ev->owner.text = ev->payload;
    ev->owner.text_len = ev->payload_len;
    ev->owner.ntok = (uint32_t)n;
    return 0;
}

/* Binary mode (the CloudEvents NATS binding): attributes in ce-* headers,
 * the payload is the data.  The envelope is built as a tree at once. */
static void decode_binary(lua_State *L, int idx, event_t *ev)
{
    size_t vl;
    json_tree_t *t = tree_of(L, idx, ev); /* empty: the event has no tape */
    cJSON *v = ev->payload_len ? json_parse_exact(ev->payload, ev->payload_len, &t->nums) : NULL;
    cJSON *env = cJSON_CreateObject();
    if (!env) {
        cJSON_Delete(v);
        luaL_error(L, "out of memory");
    }
    /* Held by the tree from here on, so an error below leaks nothing. */
    ev->mode = EVENT_BINARY;
    t->root = env;
    if (v && !cJSON_AddItemToObject(env, "data", v)) {
        cJSON_Delete(v);
        luaL_error(L, "out of memory");
    }
    /* Known attributes in CloudEvents order, then extensions, then data. */
    for (int i = 0; ce_attrs[i]; i++) {
        char hname[64];
        snprintf(hname, sizeof hname, "ce-%s", ce_attrs[i]);
        const char *val = proto_header_find(ev->hdr, ev->hdr_len, hname, &vl);
        if (!val)
            continue;
        char *tmp = util_mem_dup(val, vl);
        char *endp = NULL;
        long long iv = tmp ? strtoll(tmp, &endp, 10) : 0;
        if (tmp && !strcmp(ce_attrs[i], "version") && vl && endp && *endp == '\0') {
            char num[32];
            snprintf(num, sizeof num, "%lld", iv);
            cJSON_AddItemToObject(env, "version", cJSON_CreateRaw(num));
        } else {
            add_string(L, env, ce_attrs[i], val, vl);
        }
        free(tmp);
    }
    add_extensions(L, ev, env);
    const char *ct = proto_header_find(ev->hdr, ev->hdr_len, "content-type", &vl);
    if (ct)
        add_string(L, env, "datacontenttype", ct, vl);
    if (v) {
        /* data last, as in a structured envelope */
        cJSON *d = cJSON_DetachItemFromObjectCaseSensitive(env, "data");
        cJSON_AddItemToObject(env, "data", d);
    } else if (ev->payload_len) {
        add_string(L, env, "data", ev->payload, ev->payload_len);
    }
}

/* The envelope members an event notes when decoded (env_tok). */
enum { ENV_TYPE, ENV_VERSION, ENV_DATA, ENV_NOTED };
static const char *const env_names[ENV_NOTED] = {"type", "version", "data"};

/* The 4 bytes at k as one word (a load, not a call). */
static inline uint32_t word4(const char *k)
{
    uint32_t w;
    memcpy(&w, k, 4);
    return w;
}

/* Which noted envelope member the n bytes at k name, or -1. */
static inline int env_slot(const char *k, size_t n)
{
    if (n == 4) {
        uint32_t w = word4(k);
        return w == word4("type") ? ENV_TYPE : w == word4("data") ? ENV_DATA : -1;
    }
    return n == 7 && word4(k) == word4("vers") && word4(k + 3) == word4("sion") ? ENV_VERSION : -1;
}

/* Notes where the structured event's type, version and data are, in one
 * pass over the envelope's members (the first of a repeated key, as
 * json_tape_member finds it).  The upgrader chain reads two of them at
 * every step and sets the version; other events need not pay for it. */
static void note_envelope(event_t *ev)
{
    const json_owner_t *o = &ev->owner;
    const json_tok_t *tape = o->tape;
    uint32_t k = 1;
    for (int i = 0; i < ENV_NOTED; i++)
        ev->env_tok[i] = JSON_NO_TOK;
    ev->env_dup = 0;
    ev->env_noted = 1;
    for (uint32_t m = 0; m < tape[0].len; m++, k = tape[k + 1].next) {
        const json_tok_t *kt = &tape[k];
        const unsigned char *ks = (const unsigned char *)o->text + kt->start;
        int slot = -1;
        if (!(kt->flags & JSON_TOK_PLAIN)) {
            for (int i = 0; i < ENV_NOTED && slot < 0; i++)
                if (json_escaped_equals(ks, ks + kt->len, env_names[i], strlen(env_names[i])))
                    slot = i;
        } else if (kt->len == 4 || kt->len == 7) {
            slot = env_slot((const char *)ks, kt->len);
        }
        if (slot >= 0 && ev->env_tok[slot] == JSON_NO_TOK)
            ev->env_tok[slot] = k + 1;
        else if (slot >= 0)
            ev->env_dup |= 1u << slot;
    }
}

/* The value token of envelope member key of the structured event ev,
 * which has no tree: an edit's, else the tape's (json_tape_member). */
static uint32_t envelope_member(const event_t *ev, const char *key, size_t klen)
{
    int slot = ev->env_noted ? env_slot(key, klen) : -1;
    if (slot < 0)
        return json_tape_member(&ev->owner, 0, key, klen);
    if (ev->owner.edits && ev->owner.edits->n) {
        uint32_t e = json_edit_find(&ev->owner, 0, key, klen);
        if (e != JSON_NO_TOK)
            return e;
    }
    return ev->env_tok[slot];
}

/* Decodes the event at idx once, on the first access that needs it: the
 * payload is scanned (no tree is built until something writes). */
static void decode(lua_State *L, int idx, event_t *ev)
{
    size_t vl;
    if (ev->mode != EVENT_UNDECODED)
        return;
    decodes++;
    /* ce-* headers say binary mode whatever the body is (a JSON object body
     * is the common case there); otherwise an object is the envelope. */
    if (ev->hdr && proto_header_find(ev->hdr, ev->hdr_len, "ce-specversion", &vl)) {
        decode_binary(L, idx, ev);
        return;
    }
    int json = scan_payload(L, idx, ev) == 0;
    if (json && ev->owner.tape[0].type == JSON_TOK_OBJECT) {
        ev->mode = EVENT_STRUCTURED;
        return;
    }
    ev->mode = EVENT_RAW;
    ev->raw_is_json = json;
}

/* Raw events become envelopes when a script sets an envelope attribute. */
static void promote(lua_State *L, int idx, event_t *ev)
{
    json_tree_t *t = tree_of(L, idx, ev);
    cJSON *env = cJSON_CreateObject();
    if (!env)
        luaL_error(L, "out of memory");
    cJSON_AddItemToObject(env, "specversion", cJSON_CreateString("1.0"));
    if (ev->raw_is_json) {
        cJSON_AddItemToObject(env, "data", t->root);
        t->root = NULL;
    }
    t->root = env; /* from here the tree frees it */
    add_string(L, env, "type", ev->subject, ev->subject_len);
    if (!ev->raw_is_json && ev->payload_len)
        add_string(L, env, "data", ev->payload, ev->payload_len);
    if (ev->raw_is_json) {
        /* data after type, as before */
        cJSON *d = cJSON_DetachItemFromObjectCaseSensitive(env, "data");
        cJSON_AddItemToObject(env, "data", d);
    }
    ev->mode = EVENT_STRUCTURED;
    ev->owner.dirty = 1;
}

/* ---- e.field ----------------------------------------------------------------- */

/* event_index's upvalue: the metatable of JSON proxies, at hand. */
#define PROXY_MT_UV lua_upvalueindex(1)

/* Pushes envelope member key of the event at idx (nil when absent) and
 * returns its Lua type.  Called from event_index only (PROXY_MT_UV). */
static int push_member(lua_State *L, int idx, event_t *ev, const char *key, size_t klen)
{
    if (ev->owner.tree) {
        cJSON *v = json_object_get(ev->owner.tree->root, key, klen, 1);
        if (!v) {
            lua_pushnil(L);
            return LUA_TNIL;
        }
        json_push(L, v, idx);
    } else {
        uint32_t t = envelope_member(ev, key, klen);
        if (t == JSON_NO_TOK) {
            lua_pushnil(L);
            return LUA_TNIL;
        }
        json_push_tok(L, &ev->owner, t, idx, PROXY_MT_UV);
    }
    return lua_type(L, -1);
}

/* e.data of the event at self: kept, so that e.data == e.data (a view in
 * ev->data_view, a userdata proxy in UV_DATA). */
static void push_data(lua_State *L, int self, event_t *ev)
{
    if (ev->data_view) {
        lua_pushlightuserdata(L, ev->data_view);
        return;
    }
    if (ev->uv_set & (1u << UV_DATA)) { /* else it was never set */
        if (lua_getiuservalue(L, self, UV_DATA) != LUA_TNIL)
            return;
        lua_pop(L, 1);
    }
    if (ev->mode != EVENT_RAW)
        push_member(L, self, ev, "data", 4);
    else if (ev->owner.tree && ev->owner.tree->root)
        json_push(L, ev->owner.tree->root, self);
    else if (ev->owner.tree)
        lua_pushnil(L);
    else if (ev->raw_is_json)
        json_push_tok(L, &ev->owner, 0, self, PROXY_MT_UV);
    else
        lua_pushnil(L);
    int t = lua_type(L, -1);
    if (t == LUA_TLIGHTUSERDATA) {
        ev->data_view = lua_touserdata(L, -1);
    } else if (t == LUA_TUSERDATA) {
        lua_pushvalue(L, -1);
        set_uv(L, self, ev, UV_DATA);
    }
}

static int client_newindex(lua_State *L)
{
    return luaL_error(L, "e.client is read-only");
}

/* e.client: who published the event, as a read-only table { user, id,
 * addr, tls } made from the connection, never from the message, so no
 * header or envelope field can forge it. */
static void push_client(lua_State *L, const event_t *ev)
{
    lua_createtable(L, 0, 0); /* the proxy rules get */
    lua_createtable(L, 0, 2); /* its metatable */
    lua_createtable(L, 0, 4); /* the fields */
    if (ev->origin == EVENT_FROM_CLIENT && ev->client) {
        const client_t *c = ev->client;
        if (c->user) {
            lua_pushstring(L, c->user);
            lua_setfield(L, -2, "user");
        }
        lua_pushinteger(L, (lua_Integer)c->id);
        lua_setfield(L, -2, "id");
        lua_pushfstring(L, strchr(c->ip, ':') ? "[%s]:%d" : "%s:%d", c->ip, c->port);
        lua_setfield(L, -2, "addr");
        lua_pushboolean(L, client_is_tls(c));
        lua_setfield(L, -2, "tls");
    } else if (ev->origin == EVENT_FROM_TEST && ev->who) {
        if (ev->who->user[0]) {
            lua_pushstring(L, ev->who->user);
            lua_setfield(L, -2, "user");
        }
        lua_pushinteger(L, (lua_Integer)ev->who->id);
        lua_setfield(L, -2, "id");
        if (ev->who->addr[0]) {
            lua_pushstring(L, ev->who->addr);
            lua_setfield(L, -2, "addr");
        }
        lua_pushboolean(L, ev->who->tls);
        lua_setfield(L, -2, "tls");
    } else {
        if (ev->origin == EVENT_FROM_TIDE) {
            lua_pushliteral(L, "$tide");
            lua_setfield(L, -2, "user");
        }
        lua_pushinteger(L, 0);
        lua_setfield(L, -2, "id");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "tls");
    }
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, client_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
}

/* e[key] for the event ev at self (1, or where the reused event is). */
static int event_get(lua_State *L, int self, event_t *ev)
{
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);

    /* Fields that need no decoding. */
    switch (kl) {
    case 3:
        if (!memcmp(k, "raw", 3)) {
            proto_msg_t m;
            event_bytes(L, self, &m);
            lua_pushlstring(L, m.payload, m.payload_len);
            return 1;
        }
        break;
    case 6:
        if (!memcmp(k, "client", 6)) {
            push_client(L, ev);
            return 1;
        }
        break;
    case 5:
        if (!memcmp(k, "reply", 5)) {
            if (ev->reply)
                lua_pushlstring(L, ev->reply, ev->reply_len);
            else
                lua_pushnil(L);
            return 1;
        }
        break;
    case 7:
        if (!memcmp(k, "subject", 7)) {
            lua_pushlstring(L, ev->subject, ev->subject_len);
            return 1;
        }
        if (!memcmp(k, "headers", 7)) {
            push_headers_proxy(L, self);
            return 1;
        }
        break;
    }
    if (ev->mode == EVENT_UNDECODED)
        decode(L, self, ev);
    if (kl == 4 && !memcmp(k, "data", 4)) {
        push_data(L, self, ev);
        return 1;
    }
    if (kl == 4 && !memcmp(k, "type", 4)) {
        if (ev->mode == EVENT_RAW || push_member(L, self, ev, "type", 4) != LUA_TSTRING) {
            lua_settop(L, 2);
            lua_pushlstring(L, ev->subject, ev->subject_len);
        }
        return 1;
    }
    if (kl == 7 && !memcmp(k, "version", 7)) {
        if (ev->mode == EVENT_RAW || push_member(L, self, ev, "version", 7) != LUA_TNUMBER || !lua_isinteger(L, -1)) {
            lua_settop(L, 2);
            lua_pushinteger(L, 1);
        }
        return 1;
    }
    if (ev->mode == EVENT_RAW) {
        lua_pushnil(L);
        return 1;
    }
    /* Other envelope attributes and extensions; e.ce_subject is the
     * envelope's own "subject" (e.subject is the NATS subject). */
    if (kl == 10 && !memcmp(k, "ce_subject", 10))
        push_member(L, self, ev, "subject", 7);
    else
        push_member(L, self, ev, k, kl);
    return 1;
}

static int event_index(lua_State *L)
{
    return event_get(L, 1, check_live(L, 1));
}

/* Sets root[key] = v (klen bytes of key), in place when the key exists
 * (key order is kept); the old value is kept until the event ends, for
 * proxies still into it. */
static void set_member(lua_State *L, event_t *ev, const char *key, size_t klen, cJSON *v)
{
    if (json_object_set(&ev->owner, ev->owner.tree->root, key, klen, v) < 0)
        luaL_error(L, "out of memory");
}

/* Member key of the event ev at idx when it is a string (kind 0) or an
 * integer (kind 1), pushed; otherwise nothing is pushed and 0 returned.
 * Reads as push_member does, without making proxies. */
static int push_scalar_member(lua_State *L, int idx, event_t *ev, const char *key, size_t klen, int kind)
{
    if (ev->owner.tree) {
        cJSON *v = json_object_get(ev->owner.tree->root, key, klen, 1);
        if (kind == 0 && json_is_string(v))
            json_push_string(L, v);
        else if (kind == 1 && json_is_number(v))
            json_push_number(L, v);
        else
            return 0;
    } else {
        uint32_t t = json_tape_member(&ev->owner, 0, key, klen);
        if (t == JSON_NO_TOK || json_tok_type(&ev->owner, t) != (kind == 0 ? JSON_TOK_STRING : JSON_TOK_NUMBER))
            return 0;
        json_push_tok(L, &ev->owner, t, idx, 0);
    }
    if (kind == 1 && !lua_isinteger(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

void event_type_version(lua_State *L, int idx, char *buf, size_t cap, const char **type, size_t *tl,
                        lua_Integer *version)
{
    event_t *ev = check_live(L, idx);
    json_owner_t *o = &ev->owner;
    idx = lua_absindex(L, idx);
    decode(L, idx, ev);
    *version = 1;
    *type = ev->subject;
    *tl = ev->subject_len;
    if (ev->mode == EVENT_RAW)
        return;
    if (o->tree) {
        if (push_scalar_member(L, idx, ev, "version", 7, 1)) {
            *version = lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        if (push_scalar_member(L, idx, ev, "type", 4, 0)) {
            const char *s = lua_tolstring(L, -1, tl);
            *type = *tl <= cap ? memcpy(buf, s, *tl) : NULL;
            lua_pop(L, 1);
        }
        return;
    }
    /* Read from the tape and the edits: no Lua value is made. */
    size_t n;
    lua_Integer v;
    if (!ev->env_noted)
        note_envelope(ev);
    uint32_t t = envelope_member(ev, "version", 7);
    if (t != JSON_NO_TOK && json_tok_type(o, t) == JSON_TOK_NUMBER) {
        const char *s = json_tok_bytes(o, t, NULL, 0, &n);
        if (json_number_text_integer(s, n, &v))
            *version = v;
    }
    t = envelope_member(ev, "type", 4);
    if (t != JSON_NO_TOK && json_tok_type(o, t) == JSON_TOK_STRING)
        *type = json_tok_bytes(o, t, buf, cap, tl);
}

void event_set_version(lua_State *L, int idx, lua_Integer version)
{
    event_t *ev = check_live(L, idx);
    idx = lua_absindex(L, idx);
    decode(L, idx, ev);
    if (ev->mode == EVENT_STRUCTURED && !ev->owner.tree && !ev->env_noted)
        note_envelope(ev);
    if (ev->mode == EVENT_STRUCTURED && !ev->owner.tree && !(ev->env_dup & (1u << ENV_VERSION))) {
        char text[JSON_NUMBER_TEXT_MAX];
        size_t n = json_integer_text(version, text);
        if (json_edit_put(&ev->owner, 0, "version", 7, "\"version\"", 9, ev->env_tok[ENV_VERSION], text, n,
                          JSON_TOK_NUMBER) == 0) {
            ev->owner.dirty = 1;
            return;
        }
    }
    tree_of(L, idx, ev); /* as a script's assignment: the tree first */
    if (ev->mode == EVENT_RAW)
        promote(L, idx, ev);
    lua_pushinteger(L, version);
    cJSON *v = json_from_lua(L, -1);
    lua_pop(L, 1);
    set_member(L, ev, "version", 7, v);
    ev->owner.dirty = 1;
}

/* True when the kl bytes at k are the name lit. */
#define KEY_IS(k, kl, lit) ((kl) == sizeof(lit) - 1 && memcmp((k), (lit), (kl)) == 0)

/* e[k] = the value at 3 for the event at 1, kept as an edit of the
 * envelope (json_edit.h) when it can be one: 1 when it was. */
static int edit_member(lua_State *L, event_t *ev, const char *k, size_t kl)
{
    if (ev->mode != EVENT_STRUCTURED || ev->owner.tree)
        return 0;
    if (KEY_IS(k, kl, "ce_subject"))
        k = "subject", kl = 7;
    if (json_edit_set(L, &ev->owner, 0, k, kl, 3) < 0)
        return 0;
    if (KEY_IS(k, kl, "data")) {
        ev->data_view = NULL;
        lua_pushnil(L);
        set_uv(L, 1, ev, UV_DATA);
    }
    ev->owner.dirty = 1;
    return 1;
}

static int event_newindex(lua_State *L)
{
    event_t *ev = check_live(L, 1);
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    ev->assigned++;

    if (KEY_IS(k, kl, "subject")) {
        size_t n;
        const char *s = luaL_checklstring(L, 3, &n);
        if (!subject_valid_literal(s, n))
            return luaL_error(L, "invalid subject '%s'", s);
        /* The string itself is kept: it cannot change or move. */
        lua_pushvalue(L, 3);
        set_uv(L, 1, ev, UV_SUBJECT);
        ev->subject = s;
        ev->subject_len = n;
        ev->subject_dirty = 1;
        return 0;
    }
    if (KEY_IS(k, kl, "headers") || KEY_IS(k, kl, "reply") || KEY_IS(k, kl, "raw") || KEY_IS(k, kl, "client"))
        return luaL_error(L, "e.%s cannot be assigned (set e.headers[name] or e.data instead)", k);
    decode(L, 1, ev);
    if (KEY_IS(k, kl, "version") && !lua_isinteger(L, 3))
        return luaL_error(L, "e.version must be an integer");
    if (edit_member(L, ev, k, kl))
        return 0;
    json_tree_t *t = tree_of(L, 1, ev);
    if (KEY_IS(k, kl, "data")) {
        ev->data_view = NULL;
        lua_pushnil(L);
        set_uv(L, 1, ev, UV_DATA);
        if (ev->mode == EVENT_RAW) {
            cJSON *v = lua_isnil(L, 3) ? NULL : json_from_lua(L, 3);
            json_owner_discard(&ev->owner, t->root);
            t->root = v;
            ev->raw_is_json = v != NULL;
        } else if (lua_isnil(L, 3)) {
            json_object_unset(&ev->owner, t->root, "data", 4);
        } else {
            set_member(L, ev, "data", 4, json_from_lua(L, 3));
        }
        ev->owner.dirty = 1;
        return 0;
    }
    if (ev->mode == EVENT_RAW)
        promote(L, 1, ev);
    if (KEY_IS(k, kl, "ce_subject"))
        k = "subject", kl = 7;
    if (lua_isnil(L, 3))
        json_object_unset(&ev->owner, t->root, k, kl);
    else
        set_member(L, ev, k, kl, json_from_lua(L, 3));
    ev->owner.dirty = 1;
    return 0;
}

static int event_tostring(lua_State *L)
{
    event_t *ev = luaL_checkudata(L, 1, EVENT_MT);
    if (ev->expired) {
        lua_pushliteral(L, "event(expired)");
        return 1;
    }
    proto_msg_t m;
    event_bytes(L, 1, &m);
    /* The subject may be borrowed from the input: not NUL-terminated. */
    lua_pushliteral(L, "event(");
    lua_pushlstring(L, ev->subject, ev->subject_len);
    lua_pushliteral(L, ") ");
    lua_concat(L, 3);
    lua_pushlstring(L, m.payload, m.payload_len > 200 ? 200 : m.payload_len);
    lua_concat(L, 2);
    return 1;
}

/* ---- encoding -------------------------------------------------------------- */

/* Makes the string on top of the stack (popped) the payload of the event at idx. */
static void set_payload_top(lua_State *L, int idx, event_t *ev)
{
    ev->out_payload = lua_tolstring(L, -1, &ev->out_payload_len);
    set_uv(L, idx, ev, UV_OUT_PAYLOAD);
}

/* Sets the payload to the event's text with its edits spliced in
 * (json_edit.h), written into the buffer the event keeps for that.  A
 * buffer already holding this event's bytes is left alone (the pipeline
 * may still hold them) and a new one used.  0, or -1 when the text must
 * be printed from the tree instead. */
static int splice_payload(lua_State *L, int idx, event_t *ev)
{
    char *buf = ev->spliced;
    size_t cap = buf && ev->out_payload == buf ? 0 : ev->spliced_cap;
    size_t n = json_edit_splice(&ev->owner, buf, cap);
    if (!n)
        return -1;
    if (n > cap) {
        int keep = (!buf || ev->out_payload != buf) && n <= SPLICED_KEEP_MAX;
        size_t room = keep ? (n < 512 ? 1024 : 2 * n) : n;
        buf = lua_newuserdatauv(L, room, 0);
        json_edit_splice(&ev->owner, buf, room);
        if (keep) {
            ev->spliced = buf;
            ev->spliced_cap = room;
            lua_setiuservalue(L, idx, UV_SPLICED); /* not set_uv: the next events use it too */
        } else {
            set_uv(L, idx, ev, UV_OUT_PAYLOAD);
        }
    }
    ev->out_payload = buf;
    ev->out_payload_len = n;
    ev->spliced_n++;
    return 0;
}

/* Sets the payload to the JSON text of v (NULL prints as null). */
static void set_payload_json(lua_State *L, int idx, event_t *ev, const cJSON *v)
{
    size_t n;
    if (!v) {
        lua_pushliteral(L, "null");
    } else {
        char *s = json_print(v, &n);
        if (!s)
            luaL_error(L, "out of memory");
        /* Pushing may raise (out of memory), and every event is expired
         * when its pipeline ends, error or not: held here, s is freed
         * either way without a protected call per event. */
        ev->printing = s;
        lua_pushlstring(L, s, n);
        ev->printing = NULL;
        free(s);
    }
    set_payload_top(L, idx, ev);
}

/* A binary-mode event's changed tree back into its message: attributes
 * into ce-* headers, data into the payload.  idx is the event's index. */
static void binary_from_tree(lua_State *L, int idx, event_t *ev, cJSON *root)
{
    push_header_table(L, idx, ev);
    int t = lua_gettop(L);
    cJSON *val;
    cJSON_ArrayForEach(val, root) {
        if (!val->string || json_key_equals(val, "data", 4) || json_key_equals(val, "datacontenttype", 15))
            continue;
        json_push_key(L, val);
        const char *key = lua_tostring(L, -1); /* a NUL in it ends the header name */
        /* Header names compare without case: drop "Ce-Source" before
         * writing "ce-source", or both would go out. */
        char hname[160];
        snprintf(hname, sizeof hname, "ce-%s", key);
        lua_pushnil(L);
        while (lua_next(L, t)) {
            lua_pop(L, 1);
            if (lua_type(L, -1) == LUA_TSTRING && !strcasecmp(lua_tostring(L, -1), hname) &&
                strcmp(lua_tostring(L, -1), hname)) {
                lua_pushvalue(L, -1);
                lua_pushnil(L);
                lua_rawset(L, t); /* clearing a field during lua_next is allowed */
            }
        }
        lua_pushfstring(L, "ce-%s", key);
        lua_remove(L, -2);
        if (json_is_string(val))
            json_push_string(L, val);
        else if (json_push_text(L, val) < 0)
            luaL_error(L, "out of memory");
        lua_rawset(L, t);
    }
    lua_pop(L, 1);
    ev->headers_dirty = 1;
    cJSON *d = json_object_get(root, "data", 4, 1);
    if (json_is_string(d)) {
        json_push_string(L, d);
        set_payload_top(L, idx, ev);
    } else if (d) {
        set_payload_json(L, idx, ev, d);
    } else {
        lua_pushliteral(L, "");
        set_payload_top(L, idx, ev);
    }
}

void event_bytes(lua_State *L, int idx, proto_msg_t *out)
{
    event_t *ev = lua_touserdata(L, idx); /* callers hold an event here */
    if (ev->expired)
        luaL_error(L, "this event's pipeline has ended");
    idx = lua_absindex(L, idx);
    if (ev->owner.dirty) {
        if (ev->owner.tree || splice_payload(L, idx, ev) < 0) {
            cJSON *root = tree_of(L, idx, ev)->root;
            ev->reencoded_n++;
            if (ev->mode == EVENT_BINARY)
                binary_from_tree(L, idx, ev, root);
            else
                set_payload_json(L, idx, ev, root);
        }
        ev->owner.dirty = 0;
    }
    if (ev->headers_dirty) {
        push_header_table(L, idx, ev);
        encode_headers(L, idx, ev);
        ev->headers_dirty = 0;
        if (!ev->out_hdr)
            ev->out_hdr = ""; /* every header removed: say so with an empty block */
    }
    out->subject = ev->subject;
    out->subject_len = ev->subject_len;
    out->reply = ev->reply;
    out->reply_len = ev->reply_len;
    if (ev->out_hdr) {
        out->hdr = ev->out_hdr_len ? ev->out_hdr : NULL;
        out->hdr_len = ev->out_hdr_len;
    } else {
        out->hdr = ev->hdr;
        out->hdr_len = ev->hdr_len;
    }
    if (ev->out_payload) {
        out->payload = ev->out_payload;
        out->payload_len = ev->out_payload_len;
    } else {
        out->payload = ev->payload ? ev->payload : "";
        out->payload_len = ev->payload_len;
    }
}

/* ---- handles ------------------------------------------------------------------ */

#define REUSED_UV lua_upvalueindex(2)

/* The reused event, when a handle's owner o is its owner (the handle's
 * event is the one in the pipeline); raises otherwise.  Only a reused
 * event's owner gets handles (event_push_pipeline), and a live one is in
 * its pipeline: the owner itself says which event it is, and the handles
 * a state's scripts hold are its own reused event's. */
static event_t *handle_event(lua_State *L, const json_owner_t *o)
{
    if (!o)
        luaL_error(L, "%s", ENDED);
    return (event_t *)((const char *)o - offsetof(event_t, owner));
}

/* When the light userdata at 1 is an event handle, puts the reused event
 * in its place and returns 1 (raising if the handle's event has ended);
 * returns 0 for a JSON view. */
static int handle_to_event(lua_State *L)
{
    json_owner_t *o;
    if (json_light_kind(L, 1, &o) != JSON_LIGHT_OWNER)
        return 0;
    handle_event(L, o);
    lua_copy(L, REUSED_UV, 1);
    return 1;
}

/* The hot one: event fields are read with the reused event where it is. */
static int light_index(lua_State *L)
{
    json_owner_t *o;
    const void *light = lua_touserdata(L, 1);
    if (json_light_kind_of(light, &o) != JSON_LIGHT_OWNER)
        return json_view_index(L, light);
    return event_get(L, REUSED_UV, handle_event(L, o));
}

static int light_newindex(lua_State *L)
{
    json_owner_t *o;
    const void *light = lua_touserdata(L, 1);
    if (json_light_kind_of(light, &o) != JSON_LIGHT_OWNER)
        return json_view_newindex(L, light);
    handle_event(L, o);
    lua_copy(L, REUSED_UV, 1);
    return event_newindex(L);
}

static int light_len(lua_State *L)
{
    if (handle_to_event(L))
        return luaL_error(L, "attempt to get length of an event");
    return json_proxy_len(L);
}

static int light_tostring(lua_State *L)
{
    json_owner_t *o;
    if (json_light_kind(L, 1, &o) != JSON_LIGHT_OWNER)
        return json_proxy_tostring(L);
    if (o != &((event_t *)lua_touserdata(L, REUSED_UV))->owner) {
        lua_pushliteral(L, "event(expired)"); /* as for a kept event object */
        return 1;
    }
    lua_copy(L, REUSED_UV, 1);
    return event_tostring(L);
}

static int light_pairs(lua_State *L)
{
    if (handle_to_event(L))
        return luaL_error(L, "an event cannot be iterated (its data and headers can)");
    return json_proxy_pairs(L);
}

void event_open(lua_State *L)
{
    static const luaL_Reg ev_mt[] = {{"__newindex", event_newindex},
                                     {"__tostring", event_tostring},
                                     {NULL, NULL}};
    static const luaL_Reg hd_mt[] = {{"__index", headers_index},
                                     {"__newindex", headers_newindex},
                                     {"__pairs", headers_pairs},
                                     {NULL, NULL}};
    luaL_newmetatable(L, EVENT_MT);
    luaL_setfuncs(L, ev_mt, 0);
    json_push_proxy_metatable(L); /* PROXY_MT_UV */
    lua_pushcclosure(L, event_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "event");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "event");
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &event_key);
    luaL_newmetatable(L, HEADERS_MT);
    luaL_setfuncs(L, hd_mt, 0);
    lua_pushliteral(L, "headers");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);

    /* The pipeline's reused event, ended until event_push_pipeline, and
     * after it the room for its edits (json_edit.h). */
    event_t *ev = lua_newuserdatauv(L, sizeof *ev + sizeof(json_edits_t), EVENT_NUV);
    memset(ev, 0, sizeof *ev + sizeof(json_edits_t));
    ev->expired = 1;
    ev->owner.dead = 1;
    ev->reusable = 1;
    event_push_metatable(L);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &reused_key);

    /* Light userdata (one metatable for all of them): JSON views and the
     * handle of the reused event.  Upvalues: the proxy metatable (as JSON
     * proxies' and events' metamethods expect), the reused event. */
    static const lua_CFunction light_fns[] = {light_index, light_newindex, light_len, light_tostring, light_pairs};
    static const char *const light_names[] = {"__index", "__newindex", "__len", "__tostring", "__pairs"};
    int reused = lua_gettop(L);
    lua_newtable(L);
    for (int i = 0; i < 5; i++) {
        json_push_proxy_metatable(L);
        lua_pushvalue(L, reused);
        lua_pushcclosure(L, light_fns[i], 2);
        lua_setfield(L, -2, light_names[i]);
    }
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushlightuserdata(L, NULL);
    lua_insert(L, -2);
    lua_setmetatable(L, -2);
    lua_settop(L, reused - 1);
}
