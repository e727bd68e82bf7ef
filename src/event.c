/* event.c - see event.h. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>

#include "event.h"
#include "subject.h"
#include "util.h"

#define EVENT_MT "tide.event"
#define HEADERS_MT "tide.event.headers"

/* User values of the event userdata. */
#define UV_HEADERS 1 /* name -> value table, made on first access */
#define UV_PROXY 2   /* the e.headers proxy handed to scripts */
#define UV_DATA 3    /* the e.data value, cached so e.data == e.data */

/* Registry key (address) of the event metatable. */
static const char event_key = 'e';

static void reset_output(event_t *ev)
{
    free(ev->out_hdr);
    free(ev->out_payload);
    ev->out_hdr = ev->out_payload = NULL;
    ev->out_hdr_len = ev->out_payload_len = 0;
}

static void drop_tree(event_t *ev)
{
    cJSON_Delete(ev->root);
    json_owner_release(&ev->owner);
    ev->root = NULL;
}

static int event_gc(lua_State *L)
{
    event_t *ev = lua_touserdata(L, 1);
    reset_output(ev);
    drop_tree(ev);
    if (ev->subject_owned)
        free(ev->subject);
    if (ev->reply_owned)
        free(ev->reply);
    free(ev->owned_in);
    ev->subject = ev->reply = ev->owned_in = NULL;
    return 0;
}

event_t *event_test(lua_State *L, int idx)
{
    return luaL_testudata(L, idx, EVENT_MT);
}

/* Metamethods are only reachable through the event metatable (hidden from
 * getmetatable by __metatable), so their first argument is an event. */
static event_t *check_live(lua_State *L, int idx)
{
    event_t *ev = lua_touserdata(L, idx);
    if (ev->expired)
        luaL_error(L, "this event's pipeline has ended; copy what you need from it while handling it");
    return ev;
}

event_t *event_push(lua_State *L, const proto_msg_t *m, int copy)
{
    event_t *ev = lua_newuserdatauv(L, sizeof *ev, 3);
    memset(ev, 0, sizeof *ev);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &event_key);
    lua_setmetatable(L, -2);
    if (copy) {
        size_t n = m->hdr_len + m->payload_len;
        ev->subject = mem_dup(m->subject, m->subject_len);
        ev->subject_owned = 1;
        if (m->reply) {
            ev->reply = mem_dup(m->reply, m->reply_len);
            ev->reply_owned = 1;
        }
        ev->owned_in = malloc(n ? n : 1);
        if (!ev->subject || (m->reply && !ev->reply) || !ev->owned_in)
            luaL_error(L, "out of memory");
        if (m->hdr_len)
            memcpy(ev->owned_in, m->hdr, m->hdr_len);
        memcpy(ev->owned_in + m->hdr_len, m->payload, m->payload_len);
        ev->hdr = m->hdr ? ev->owned_in : NULL;
        ev->payload = ev->owned_in + m->hdr_len;
    } else {
        /* Borrowed for the pipeline's length: no copy on the hot path. */
        ev->subject = (char *)m->subject;
        ev->reply = (char *)m->reply;
        ev->hdr = m->hdr;
        ev->payload = m->payload;
    }
    ev->subject_len = m->subject_len;
    ev->reply_len = m->reply ? m->reply_len : 0;
    ev->hdr_len = m->hdr ? m->hdr_len : 0;
    ev->payload_len = m->payload_len;
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
    ev->hdr = ev->payload = NULL;
    ev->hdr_len = ev->payload_len = 0;
    if (!ev->subject_owned)
        ev->subject = NULL;
    if (!ev->reply_owned)
        ev->reply = NULL;
    drop_tree(ev);
    reset_output(ev);
}

/* ---- headers --------------------------------------------------------------- */

const char *event_header_find(const char *hdr, size_t len, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *p = hdr, *end = hdr + len;
    const char *eol = memchr(p, '\n', len);
    if (!hdr || !eol)
        return NULL;
    p = eol + 1; /* skip the NATS/1.0 status line */
    while (p < end) {
        eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon && (size_t)(colon - p) == nlen && strncasecmp(p, name, nlen) == 0) {
            const char *v = colon + 1, *ve = le;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        if (!eol)
            break;
        p = eol + 1;
    }
    return NULL;
}

void event_header_each(const char *hdr, size_t len,
                       void (*fn)(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen),
                       void *ctx)
{
    const char *end = hdr + len;
    const char *p = hdr && len ? memchr(hdr, '\n', len) : NULL;
    if (!p)
        return;
    for (p++; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon) {
            const char *v = colon + 1, *ve = le;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            fn(ctx, p, (size_t)(colon - p), v, (size_t)(ve - v));
        }
        if (!eol)
            break;
        p = eol + 1;
    }
}

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
    lua_setiuservalue(L, evidx, UV_HEADERS);
}

/* e.headers[name]: the name as given, else any spelling of it (header
 * names compare without case, as tide's own ce-* and Tide-* lookups do). */
static int headers_index(lua_State *L)
{
    lua_getiuservalue(L, 1, 1); /* the event */
    check_live(L, -1);
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
    lua_getiuservalue(L, 1, 1);
    event_t *ev = check_live(L, -1);
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
    lua_getiuservalue(L, 1, 1);
    event_t *ev = check_live(L, -1);
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
    lua_newuserdatauv(L, 1, 1);
    lua_pushvalue(L, evidx);
    lua_setiuservalue(L, -2, 1);
    luaL_setmetatable(L, HEADERS_MT);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, evidx, UV_PROXY);
}

/* Builds a NATS header block from the header table at the top of the stack
 * (popped), keeping the original status line.  Names are written sorted so
 * the output is stable. */
static void encode_headers(lua_State *L, event_t *ev)
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
    free(ev->out_hdr);
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
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    ev->out_hdr = mem_dup(s, len);
    if (!ev->out_hdr)
        luaL_error(L, "out of memory");
    ev->out_hdr_len = len;
    lua_settop(L, t - 1);
}

/* ---- decoding ------------------------------------------------------------ */

/* Attribute names that come from ce-* headers, with the header they come from. */
static const char *const ce_attrs[] = {"id", "source", "type", "specversion", "time", "subject",
                                       "dataschema", "version", NULL};

/* Adds a string member made from len bytes (not NUL-terminated). */
static void add_string(lua_State *L, cJSON *obj, const char *key, const char *val, size_t len)
{
    char *tmp = mem_dup(val, len);
    cJSON *v = tmp ? cJSON_CreateString(tmp) : NULL;
    free(tmp);
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
            const char *val = event_header_find(ev->hdr, ev->hdr_len, hname, &vl);
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

/* Parses the payload once, on the first access that needs it. */
static void decode(lua_State *L, event_t *ev)
{
    char *nums = NULL;
    size_t vl;
    cJSON *v;
    if (ev->mode != EVENT_UNDECODED)
        return;
    decodes++;
    v = ev->payload_len ? json_parse(ev->payload, ev->payload_len, &nums) : NULL;
    /* ce-* headers say binary mode whatever the body is (a JSON object body
     * is the common case there); otherwise an object is the envelope. */
    int binary = ev->hdr && event_header_find(ev->hdr, ev->hdr_len, "ce-specversion", &vl);
    if (!binary && cJSON_IsObject(v)) {
        ev->mode = EVENT_STRUCTURED;
        ev->root = v;
        ev->owner.nums = nums;
        return;
    }
    if (binary) {
        /* The CloudEvents NATS binding, binary mode: attributes in ce-*
         * headers, the payload is the data. */
        cJSON *env = cJSON_CreateObject();
        if (!env) {
            cJSON_Delete(v);
            free(nums);
            luaL_error(L, "out of memory");
        }
        /* Held by the event from here on, so an error below leaks nothing. */
        ev->mode = EVENT_BINARY;
        ev->root = env;
        ev->owner.nums = nums;
        if (v && !cJSON_AddItemToObject(env, "data", v)) {
            cJSON_Delete(v);
            luaL_error(L, "out of memory");
        }
        /* Known attributes in CloudEvents order, then extensions, then data. */
        for (int i = 0; ce_attrs[i]; i++) {
            char hname[64];
            snprintf(hname, sizeof hname, "ce-%s", ce_attrs[i]);
            const char *val = event_header_find(ev->hdr, ev->hdr_len, hname, &vl);
            if (!val)
                continue;
            char *tmp = mem_dup(val, vl);
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
        const char *ct = event_header_find(ev->hdr, ev->hdr_len, "content-type", &vl);
        if (ct)
            add_string(L, env, "datacontenttype", ct, vl);
        if (v) {
            /* data last, as in a structured envelope */
            cJSON *d = cJSON_DetachItemFromObjectCaseSensitive(env, "data");
            cJSON_AddItemToObject(env, "data", d);
        } else if (ev->payload_len) {
            add_string(L, env, "data", ev->payload, ev->payload_len);
        }
        return;
    }
    ev->mode = EVENT_RAW;
    ev->raw_is_json = v != NULL;
    ev->root = v;
    ev->owner.nums = nums;
}

/* Raw events become envelopes when a script sets an envelope attribute. */
static void promote(lua_State *L, event_t *ev)
{
    cJSON *env = cJSON_CreateObject();
    if (!env)
        luaL_error(L, "out of memory");
    cJSON_AddItemToObject(env, "specversion", cJSON_CreateString("1.0"));
    add_string(L, env, "type", ev->subject, ev->subject_len);
    if (ev->raw_is_json)
        cJSON_AddItemToObject(env, "data", ev->root);
    else if (ev->payload_len)
        add_string(L, env, "data", ev->payload, ev->payload_len);
    ev->root = env;
    ev->mode = EVENT_STRUCTURED;
    ev->owner.dirty = 1;
}

/* ---- e.field ----------------------------------------------------------------- */

static void push_payload(lua_State *L, int idx, event_t *ev)
{
    proto_msg_t m;
    event_bytes(L, idx, &m);
    lua_pushlstring(L, m.payload, m.payload_len);
    (void)ev;
}

static int event_index(lua_State *L)
{
    event_t *ev = check_live(L, 1);
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    cJSON *v;

    /* Fields that need no decoding. */
    if (strcmp(k, "subject") == 0) {
        lua_pushlstring(L, ev->subject, ev->subject_len);
        return 1;
    }
    if (strcmp(k, "headers") == 0) {
        push_headers_proxy(L, 1);
        return 1;
    }
    if (strcmp(k, "reply") == 0) {
        if (ev->reply)
            lua_pushlstring(L, ev->reply, ev->reply_len);
        else
            lua_pushnil(L);
        return 1;
    }
    if (strcmp(k, "raw") == 0) {
        push_payload(L, 1, ev);
        return 1;
    }
    decode(L, ev);
    if (strcmp(k, "data") == 0) {
        if (lua_getiuservalue(L, 1, UV_DATA) != LUA_TNIL)
            return 1;
        lua_pop(L, 1);
        if (ev->mode == EVENT_RAW)
            v = ev->raw_is_json ? ev->root : NULL;
        else
            v = cJSON_GetObjectItemCaseSensitive(ev->root, "data");
        if (!v) {
            lua_pushnil(L);
            return 1;
        }
        json_push(L, v, 1);
        if (lua_type(L, -1) == LUA_TUSERDATA) {
            lua_pushvalue(L, -1);
            lua_setiuservalue(L, 1, UV_DATA);
        }
        return 1;
    }
    if (strcmp(k, "type") == 0) {
        v = ev->mode != EVENT_RAW ? cJSON_GetObjectItemCaseSensitive(ev->root, "type") : NULL;
        if (cJSON_IsString(v))
            lua_pushstring(L, v->valuestring);
        else
            lua_pushlstring(L, ev->subject, ev->subject_len);
        return 1;
    }
    if (strcmp(k, "version") == 0) {
        v = ev->mode != EVENT_RAW ? cJSON_GetObjectItemCaseSensitive(ev->root, "version") : NULL;
        if (json_is_number(v)) {
            json_push_number(L, v);
            if (!lua_isinteger(L, -1)) {
                lua_pop(L, 1);
                lua_pushinteger(L, 1);
            }
        } else {
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
    if (strcmp(k, "ce_subject") == 0)
        k = "subject";
    v = cJSON_GetObjectItemCaseSensitive(ev->root, k);
    if (v)
        json_push(L, v, 1);
    else
        lua_pushnil(L);
    return 1;
}

/* Sets root[key] = v, in place when the key exists (key order is kept);
 * the old value is kept until the event ends, for proxies still into it. */
static void set_member(lua_State *L, event_t *ev, const char *key, cJSON *v)
{
    if (json_object_set(&ev->owner, ev->root, key, v) < 0)
        luaL_error(L, "out of memory");
}

static int event_newindex(lua_State *L)
{
    event_t *ev = check_live(L, 1);
    const char *k = luaL_checkstring(L, 2);

    if (strcmp(k, "subject") == 0) {
        size_t n;
        const char *s = luaL_checklstring(L, 3, &n);
        if (!subject_valid_literal(s, n))
            return luaL_error(L, "invalid subject '%s'", s);
        char *d = mem_dup(s, n);
        if (!d)
            return luaL_error(L, "out of memory");
        if (ev->subject_owned)
            free(ev->subject);
        ev->subject = d;
        ev->subject_len = n;
        ev->subject_owned = 1;
        ev->subject_dirty = 1;
        return 0;
    }
    if (strcmp(k, "headers") == 0 || strcmp(k, "reply") == 0 || strcmp(k, "raw") == 0)
        return luaL_error(L, "e.%s cannot be assigned (set e.headers[name] or e.data instead)", k);
    decode(L, ev);
    if (strcmp(k, "data") == 0) {
        lua_pushnil(L);
        lua_setiuservalue(L, 1, UV_DATA);
        if (ev->mode == EVENT_RAW) {
            cJSON *v = lua_isnil(L, 3) ? NULL : json_from_lua(L, 3);
            json_owner_discard(&ev->owner, ev->root);
            ev->root = v;
            ev->raw_is_json = v != NULL;
        } else if (lua_isnil(L, 3)) {
            json_object_unset(&ev->owner, ev->root, "data");
        } else {
            set_member(L, ev, "data", json_from_lua(L, 3));
        }
        ev->owner.dirty = 1;
        return 0;
    }
    if (strcmp(k, "version") == 0 && !lua_isinteger(L, 3))
        return luaL_error(L, "e.version must be an integer");
    if (ev->mode == EVENT_RAW)
        promote(L, ev);
    if (strcmp(k, "ce_subject") == 0)
        k = "subject";
    if (lua_isnil(L, 3))
        json_object_unset(&ev->owner, ev->root, k);
    else
        set_member(L, ev, k, json_from_lua(L, 3));
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

static void set_payload(lua_State *L, event_t *ev, const char *s, size_t n)
{
    char *d = mem_dup(s, n);
    if (!d)
        luaL_error(L, "out of memory");
    free(ev->out_payload);
    ev->out_payload = d;
    ev->out_payload_len = n;
}

/* Sets the payload to the JSON text of v (NULL prints as null). */
static void set_payload_json(lua_State *L, event_t *ev, const cJSON *v)
{
    size_t n;
    char *s;
    if (!v) {
        set_payload(L, ev, "null", 4);
        return;
    }
    s = json_print(v, &n);
    if (!s)
        luaL_error(L, "out of memory");
    free(ev->out_payload);
    ev->out_payload = s;
    ev->out_payload_len = n;
}

void event_bytes(lua_State *L, int idx, proto_msg_t *out)
{
    event_t *ev = lua_touserdata(L, idx); /* callers hold an event here */
    if (ev->expired)
        luaL_error(L, "this event's pipeline has ended");
    idx = lua_absindex(L, idx);
    if (ev->owner.dirty) {
        if (ev->mode == EVENT_BINARY) {
            /* Attributes back into ce-* headers, data into the payload. */
            push_header_table(L, idx, ev);
            int t = lua_gettop(L);
            cJSON *val;
            cJSON_ArrayForEach(val, ev->root) {
                const char *key = val->string;
                if (!key || !strcmp(key, "data") || !strcmp(key, "datacontenttype"))
                    continue;
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
                if (cJSON_IsString(val)) {
                    lua_pushstring(L, val->valuestring);
                } else {
                    size_t n;
                    char *s = json_print(val, &n);
                    if (!s)
                        luaL_error(L, "out of memory");
                    lua_pushlstring(L, s, n);
                    free(s);
                }
                lua_rawset(L, t);
            }
            lua_pop(L, 1);
            ev->headers_dirty = 1;
            cJSON *d = cJSON_GetObjectItemCaseSensitive(ev->root, "data");
            if (cJSON_IsString(d))
                set_payload(L, ev, d->valuestring, strlen(d->valuestring));
            else if (d)
                set_payload_json(L, ev, d);
            else
                set_payload(L, ev, "", 0);
        } else {
            set_payload_json(L, ev, ev->root);
        }
        ev->owner.dirty = 0;
    }
    if (ev->headers_dirty) {
        push_header_table(L, idx, ev);
        encode_headers(L, ev);
        ev->headers_dirty = 0;
        if (!ev->out_hdr) {
            /* Every header removed: say so with an empty marker. */
            ev->out_hdr = mem_dup("", 0);
            ev->out_hdr_len = 0;
        }
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

void event_open(lua_State *L)
{
    static const luaL_Reg ev_mt[] = {{"__index", event_index},
                                     {"__newindex", event_newindex},
                                     {"__tostring", event_tostring},
                                     {"__gc", event_gc},
                                     {NULL, NULL}};
    static const luaL_Reg hd_mt[] = {{"__index", headers_index},
                                     {"__newindex", headers_newindex},
                                     {"__pairs", headers_pairs},
                                     {NULL, NULL}};
    luaL_newmetatable(L, EVENT_MT);
    luaL_setfuncs(L, ev_mt, 0);
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
}
