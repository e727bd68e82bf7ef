/*
 * durable.c - Lua handlers bound to durable consumers:
 *
 *   on("order.created", { consumer = "inventory" }, function(e, ctx) ... end)
 *   on("order.>", { consumer = "db", batch = 100, wait = "2s" }, function(events, ctx) ... end)
 *
 * The consumer (consumer.c) hands stored events to these handlers instead of
 * a deliver subject.  What a handler returns says what the JetStream ack
 * tokens say: nothing (or true) acks, tide.nak(delay) redelivers (after
 * delay seconds, else after the consumer's backoff), tide.progress() keeps
 * the event in flight for another ack_wait, tide.term(reason) stops
 * redelivery and dead-letters it.  An error is a NAK with backoff whose
 * text travels to the dead letter after max_deliver.  A batch handler gets
 * a list of events; its answer applies to all of them (each keeps its own
 * delivery count).  Upgraders run first, so a stored v1 event reaches a
 * handler as v2 once a v1 -> v2 upgrader is loaded.
 *
 * Handlers get a third argument, { stream, consumer, seq, deliveries } (a
 * list of those for a batch), e.g. to make a projection idempotent by
 * remembering the last sequence it applied.
 */
#include "script_internal.h"

static const char verdict_mt = 'v';

/* ---- registration ------------------------------------------------------------ */

int durable_l_on(lua_State *L)
{
    static const char *const known[] = {"consumer", "batch", "wait", NULL};
    state_t *st = script_state_of(L);
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    if (!subject_valid_pattern(p, n))
        return luaL_error(L, "on: invalid subject pattern '%s'", p);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
        int ok = 0;
        for (int i = 0; known[i]; i++)
            ok |= !strcmp(k, known[i]);
        if (!ok)
            return luaL_error(L, "on: unknown option '%s' (consumer, batch, wait)", k);
    }
    lua_getfield(L, 2, "consumer");
    size_t cl;
    const char *consumer = lua_tolstring(L, -1, &cl);
    if (lua_type(L, -1) != LUA_TSTRING || cl == 0 || cl >= 64)
        return luaL_error(L, "on: consumer must be the name of a declared consumer");
    char cname[64];
    memcpy(cname, consumer, cl + 1);
    lua_pop(L, 1);
    lua_Integer batch = 1;
    if (lua_getfield(L, 2, "batch") != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > 10000)
            return luaL_error(L, "on: batch must be a whole number from 1 to 10000");
        batch = lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    double wait = batch > 1 ? 1 : 0;
    if (lua_getfield(L, 2, "wait") != LUA_TNIL) {
        const char *s = lua_tostring(L, -1);
        char *end = NULL;
        wait = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : s ? strtod(s, &end) : -1;
        if (end && !strcmp(end, "ms"))
            wait /= 1000;
        else if (end && *end && strcmp(end, "s"))
            wait = -1;
        if (!(wait >= 0) || wait > 3600)
            return luaL_error(L, "on: wait must be a duration such as \"2s\" or \"250ms\"");
    }
    lua_pop(L, 1);
    /* Handlers of one consumer share its batching. */
    for (size_t i = 0; i < st->nrules; i++) {
        rule_t *o = st->rules[i];
        if (o->kind == RULE_DURABLE && !strcmp(o->consumer, cname) && (o->batch != batch || o->wait != wait))
            return luaL_error(L, "on: consumer '%s' is already bound with batch %d and wait %f at %s", cname,
                              o->batch, o->wait, o->where);
    }
    script_add_rule(L, RULE_DURABLE, p, n, 0, 3);
    rule_t *r = st->rules[st->nrules - 1];
    snprintf(r->consumer, sizeof r->consumer, "%s", cname);
    r->batch = (int)batch;
    r->wait = wait;
    return 0;
}

/* tide.nak([delay]), tide.progress(), tide.term([reason]) */
static int make_verdict(lua_State *L, const char *kind)
{
    lua_createtable(L, 0, 2);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "verdict");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &verdict_mt);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_nak(lua_State *L)
{
    double d = -1;
    if (!lua_isnoneornil(L, 1)) {
        d = lua_type(L, 1) == LUA_TNUMBER ? lua_tonumber(L, 1) : -1;
        if (lua_type(L, 1) == LUA_TSTRING) {
            char *end;
            const char *s = lua_tostring(L, 1);
            d = strtod(s, &end);
            if (!strcmp(end, "ms"))
                d /= 1000;
            else if (!strcmp(end, "m"))
                d *= 60;
            else if (*end && strcmp(end, "s"))
                d = -2;
        }
        if (d < 0)
            return luaL_error(L, "tide.nak: delay must be seconds or a duration such as \"5s\"");
    }
    make_verdict(L, "nak");
    lua_pushnumber(L, d);
    lua_setfield(L, -2, "delay");
    return 1;
}

static int l_progress(lua_State *L) { return make_verdict(L, "progress"); }

static int l_term(lua_State *L)
{
    const char *reason = luaL_optstring(L, 1, "");
    make_verdict(L, "term");
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "reason");
    return 1;
}

void durable_push_api(lua_State *L)
{
    /* the table at the top is `tide` */
    lua_newtable(L);
    lua_pushstring(L, "verdict");
    lua_setfield(L, -2, "__name");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &verdict_mt);
    lua_pushcfunction(L, l_nak);
    lua_setfield(L, -2, "nak");
    lua_pushcfunction(L, l_progress);
    lua_setfield(L, -2, "progress");
    lua_pushcfunction(L, l_term);
    lua_setfield(L, -2, "term");
}

/* ---- calls from the consumers ------------------------------------------------- */

static int severity(int kind)
{
    return kind == VERDICT_TERM ? 3 : kind == VERDICT_NAK ? 2 : kind == VERDICT_PROGRESS ? 1 : 0;
}

/* Reads a handler's result (at the top; rc its call status) into v. */
static void take_verdict(lua_State *L, int rc, stream_verdict_t *v)
{
    stream_verdict_t nv = {VERDICT_ACK, -1, ""};
    if (rc != LUA_OK) {
        nv.kind = VERDICT_NAK;
        snprintf(nv.error, sizeof nv.error, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    } else if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        nv.kind = VERDICT_NAK;
        snprintf(nv.error, sizeof nv.error, "the handler returned false");
    } else if (lua_type(L, -1) == LUA_TTABLE && lua_getmetatable(L, -1)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &verdict_mt);
        int is = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (is) {
            lua_getfield(L, -1, "verdict");
            const char *k = lua_tostring(L, -1);
            if (k && !strcmp(k, "nak")) {
                nv.kind = VERDICT_NAK;
                lua_getfield(L, -2, "delay");
                nv.delay = lua_tonumber(L, -1);
                lua_pop(L, 1);
            } else if (k && !strcmp(k, "progress")) {
                nv.kind = VERDICT_PROGRESS;
            } else if (k && !strcmp(k, "term")) {
                nv.kind = VERDICT_TERM;
                lua_getfield(L, -2, "reason");
                snprintf(nv.error, sizeof nv.error, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
    }
    if (severity(nv.kind) >= severity(v->kind))
        *v = nv;
}

typedef struct durable_call {
    script_host_t *h;
    const char *stream, *consumer;
    const proto_msg_t *msgs;
    const uint64_t *seqs;
    const uint32_t *deliveries;
    int n;
    stream_verdict_t *v;
} durable_call_t;

/* The third argument: { stream =, consumer =, seq =, deliveries = } of
 * event i (for a batch: a list of them). */
static void push_meta(lua_State *L, durable_call_t *c, int i)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, c->stream);
    lua_setfield(L, -2, "stream");
    lua_pushstring(L, c->consumer);
    lua_setfield(L, -2, "consumer");
    lua_pushinteger(L, (lua_Integer)c->seqs[i]);
    lua_setfield(L, -2, "seq");
    lua_pushinteger(L, (lua_Integer)c->deliveries[i]);
    lua_setfield(L, -2, "deliveries");
}

/* Pushes event i, upgraded; on an upgrader failure returns 0 with v[i] a NAK. */
static int push_upgraded(lua_State *L, state_t *st, durable_call_t *c, int i, event_t **ev)
{
    *ev = event_push(L, &c->msgs[i], 0);
    int idx = lua_gettop(L);
    rule_t *failed;
    if (script_upgrade_possible(st, &c->msgs[i]) && pipeline_run_upgraders(L, st, idx, idx, &failed, 0) < 0) {
        stream_verdict_t nv = {VERDICT_NAK, -1, ""};
        char msg[3000];
        snprintf(nv.error, sizeof nv.error, "upgrade %s v%d (%s): %s", failed->pattern, (int)failed->from_version,
                 failed->where, lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        pipeline_rule_failure_text(msg, sizeof msg, failed, "%s", nv.error);
        script_log_rate_limited(st->host, msg);
        c->v[i] = nv;
        lua_settop(L, idx);
        event_expire_ptr(*ev);
        lua_pop(L, 1);
        return 0;
    }
    lua_settop(L, idx);
    return 1;
}

static int durable_entry(lua_State *L)
{
    durable_call_t *c = lua_touserdata(L, 1);
    state_t *st = c->h->cur;
    event_t *evs[10000];
    int base = lua_gettop(L);
    for (size_t k = 0; k < st->nrules; k++) {
        rule_t *r = st->rules[k];
        if (r->kind != RULE_DURABLE || strcmp(r->consumer, c->consumer))
            continue;
        if (r->batch <= 1) {
            for (int i = 0; i < c->n; i++) {
                const proto_msg_t *m = &c->msgs[i];
                if (c->v[i].kind == VERDICT_TERM ||
                    !subject_matches(r->pattern, r->pattern_len, m->subject, m->subject_len))
                    continue;
                event_t *ev;
                if (!push_upgraded(L, st, c, i, &ev))
                    continue;
                int idx = lua_gettop(L);
                push_meta(L, c, i);
                script_set_handled(L, st, idx);
                int rc = script_call_rule_meta(st, r, idx, idx + 1);
                script_set_handled(L, st, 0);
                take_verdict(L, rc, &c->v[i]);
                if (rc != LUA_OK) {
                    char msg[3000];
                    pipeline_rule_failure_text(msg, sizeof msg, r, "handler %s (consumer %s): %s", r->where,
                                               r->consumer, c->v[i].error);
                    script_log_rate_limited(c->h, msg);
                }
                event_expire_ptr(ev);
                lua_settop(L, base);
            }
            continue;
        }
        /* A batch: one list of the events the pattern matches. */
        int idx[10000], m = 0;
        lua_newtable(L);
        int list = lua_gettop(L);
        lua_newtable(L);
        int metas = lua_gettop(L);
        for (int i = 0; i < c->n && m < 10000; i++) {
            const proto_msg_t *msg = &c->msgs[i];
            if (c->v[i].kind == VERDICT_TERM ||
                !subject_matches(r->pattern, r->pattern_len, msg->subject, msg->subject_len))
                continue;
            if (!push_upgraded(L, st, c, i, &evs[m]))
                continue;
            lua_rawseti(L, list, m + 1);
            push_meta(L, c, i);
            lua_rawseti(L, metas, m + 1);
            idx[m++] = i;
        }
        if (m) {
            int rc = script_call_rule_meta(st, r, list, metas);
            stream_verdict_t v = {VERDICT_ACK, -1, ""};
            take_verdict(L, rc, &v);
            if (rc != LUA_OK) {
                char msg[3000];
                pipeline_rule_failure_text(msg, sizeof msg, r, "batch handler %s (consumer %s, %d events): %s",
                                           r->where, r->consumer, m, v.error);
                script_log_rate_limited(c->h, msg);
            }
            for (int j = 0; j < m; j++) {
                if (severity(v.kind) >= severity(c->v[idx[j]].kind))
                    c->v[idx[j]] = v;
                event_expire_ptr(evs[j]);
            }
        }
        lua_settop(L, base);
    }
    return 0;
}

void durable_run(script_host_t *h, const char *stream, const char *consumer, const proto_msg_t *msgs,
                 const uint64_t *seqs, const uint32_t *deliveries, int n, stream_verdict_t *v)
{
    state_t *st = h->cur;
    lua_State *L = st->L;
    int top = lua_gettop(L);
    durable_call_t c = {h, stream, consumer, msgs, seqs, deliveries, n, v};
    for (int i = 0; i < n; i++)
        v[i] = (stream_verdict_t){VERDICT_ACK, -1, ""};
    cascade_t *outer = h->cascade;
    h->processing++;
    h->cascade = NULL; /* the batch starts a cascade of its own */
    lua_pushcfunction(L, durable_entry);
    lua_pushlightuserdata(L, &c);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        /* out of memory or the like, outside any handler: try again later */
        char msg[600];
        snprintf(msg, sizeof msg, "consumer %s: %s", consumer, lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        script_log_rate_limited(h, msg);
        for (int i = 0; i < n; i++)
            if (v[i].kind == VERDICT_ACK)
                v[i] = (stream_verdict_t){VERDICT_NAK, -1, ""};
        lua_gc(L, LUA_GCCOLLECT);
    }
    lua_settop(L, top);
    h->cascade = outer;
    script_drain(h); /* what the handlers published */
    h->processing--;
}

static void hook_handle(void *ctx, const char *stream, const char *consumer, const proto_msg_t *msgs,
                        const uint64_t *seqs, const uint32_t *deliveries, int n, stream_verdict_t *v)
{
    script_host_t *h = ctx;
    if (h->shadow_durable)
        h->shadow_durable(h, stream, consumer, msgs, seqs, deliveries, n, v);
    else
        durable_run(h, stream, consumer, msgs, seqs, deliveries, n, v);
}

int script_consumer_handled(const script_host_t *h, const char *consumer)
{
    const state_t *st = h && h->cur ? h->cur : NULL;
    for (size_t i = 0; st && i < st->nrules; i++)
        if (st->rules[i]->kind == RULE_DURABLE && !strcmp(st->rules[i]->consumer, consumer))
            return 1;
    return 0;
}

int script_consumer_batch(const script_host_t *h, const char *consumer, double *wait)
{
    const state_t *st = h && h->cur ? h->cur : NULL;
    *wait = 0;
    for (size_t i = 0; st && i < st->nrules; i++) {
        const rule_t *r = st->rules[i];
        if (r->kind != RULE_DURABLE || strcmp(r->consumer, consumer))
            continue;
        /* the handlers of one consumer share their batching (on() checks it) */
        *wait = r->batch > 1 ? r->wait : 0;
        return r->batch > 1 ? r->batch : 1;
    }
    return 0;
}

void script_handle_events(script_host_t *h, const char *stream, const char *consumer, const proto_msg_t *msgs,
                          const uint64_t *seqs, const uint32_t *deliveries, int n, stream_verdict_t *v)
{
    hook_handle(h, stream, consumer, msgs, seqs, deliveries, n, v);
}

/* Upgrades a stored event on its way to a deliver subject. */
static int upgrade_entry(lua_State *L)
{
    void **a = lua_touserdata(L, 1);
    script_host_t *h = a[0];
    const proto_msg_t *in = a[1];
    proto_msg_t *out = a[2];
    char **buf = a[3], *err = a[4];
    state_t *st = h->cur;
    event_t *ev = event_push(L, in, 0);
    int idx = lua_gettop(L);
    rule_t *failed;
    int rc = 0;
    if (pipeline_run_upgraders(L, st, idx, idx, &failed, 0) < 0) {
        snprintf(err, 512, "upgrade %s v%d (%s): %s", failed->pattern, (int)failed->from_version, failed->where,
                 lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        rc = -1;
    } else {
        proto_msg_t o;
        event_bytes(L, idx, &o);
        if (o.payload != in->payload || o.hdr != in->hdr) {
            *buf = malloc(o.hdr_len + o.payload_len + 1);
            if (*buf) {
                memcpy(*buf, o.hdr ? o.hdr : "", o.hdr_len);
                memcpy(*buf + o.hdr_len, o.payload, o.payload_len);
                *out = *in;
                out->hdr = o.hdr_len ? *buf : NULL;
                out->hdr_len = o.hdr_len;
                out->payload = *buf + o.hdr_len;
                out->payload_len = o.payload_len;
                rc = 1;
            }
        }
    }
    event_expire_ptr(ev);
    lua_pushinteger(L, rc);
    return 1;
}

static int hook_upgrade(void *ctx, const proto_msg_t *in, proto_msg_t *out, char **buf, char *err, size_t errsz)
{
    script_host_t *h = ctx;
    state_t *st = h->cur;
    if (errsz < 512 || !script_upgrade_possible(st, in))
        return 0;
    lua_State *L = st->L;
    int top = lua_gettop(L);
    void *a[5] = {h, (void *)in, out, buf, err};
    int rc = 0;
    h->processing++;
    lua_pushcfunction(L, upgrade_entry);
    lua_pushlightuserdata(L, a);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK)
        rc = (int)lua_tointeger(L, -1);
    else
        snprintf(err, errsz, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error"), rc = -1;
    lua_settop(L, top);
    h->processing--;
    if (rc < 0)
        script_log_rate_limited(h, err);
    return rc;
}

/* stream { dedup_key = function(e) ... end }: the key for m. */
static size_t hook_dedup_key(void *ctx, const char *stream, const proto_msg_t *m, char *out, size_t n)
{
    script_host_t *h = ctx;
    state_t *st = h->cur;
    int ref = LUA_NOREF;
    for (int i = 0; i < st->nstreams; i++)
        if (!strcmp(st->streams[i].name, stream))
            ref = st->streams[i].dedup_fn_ref;
    if (ref == LUA_NOREF)
        return 0;
    lua_State *L = st->L;
    int top = lua_gettop(L);
    size_t k = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    event_t *ev = event_push(L, m, 0);
    if (budget_call(st, 1, 1) != LUA_OK) {
        char msg[700];
        snprintf(msg, sizeof msg, "stream %s: dedup_key: %s (stored without a key)", stream,
                 lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        script_log_rate_limited(h, msg);
    } else if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
        size_t l;
        const char *s = lua_tolstring(L, -1, &l);
        if (l && l <= n) {
            memcpy(out, s, l);
            k = l;
        }
    }
    event_expire_ptr(ev);
    lua_settop(L, top);
    return k;
}

static int hook_busy(void *ctx)
{
    script_host_t *h = ctx;
    return h->processing || h->cur->in_call;
}

void durable_set_hooks(script_host_t *h)
{
    stream_hooks_t hooks = {h, hook_busy, hook_upgrade, hook_handle, hook_dedup_key};
    streams_set_hooks(h->streams, &hooks);
}

int durable_bind(script_host_t *h, state_t *st, int check_only, char *err, size_t errsz)
{
    for (size_t i = 0; i < st->nrules; i++) {
        rule_t *r = st->rules[i];
        if (r->kind != RULE_DURABLE)
            continue;
        int found = 0;
        for (int k = 0; k < st->nconsumers; k++)
            found |= !strcmp(st->consumers[k].name, r->consumer);
        for (int k = 0; k < st->ncluster_consumers; k++)
            found |= !strcmp(st->cluster_consumers[k].name, r->consumer);
        if (!found) {
            snprintf(err, errsz, "%s: on(...) names consumer '%s', which is not declared", r->where, r->consumer);
            return -1;
        }
    }
    if (check_only)
        return 0;
    /* Unbind what the state does not bind any more, then bind. */
    for (int k = 0; k < st->nconsumers; k++) {
        rule_t *b = NULL;
        for (size_t i = 0; i < st->nrules && !b; i++)
            if (st->rules[i]->kind == RULE_DURABLE && !strcmp(st->rules[i]->consumer, st->consumers[k].name))
                b = st->rules[i];
        streams_bind(h->streams, st->consumers[k].name, b ? b->batch : 0, b ? b->wait : 0);
    }
    return 0;
}

int script_bind_durable(script_host_t *h, char *err, size_t errsz)
{
    if (!h->streams)
        return 0;
    return durable_bind(h, h->cur, 0, err, errsz);
}
