/* pipeline.c - the rules and the pipeline every event goes through:
 * upgraders, filters, routes, delivery, handlers, dead letters and the trace. */
#include "clock.h"
#include "script_internal.h"

/* ---- rule registration ------------------------------------------------------- */

/* Empties the match cache (and the last-subject shortcut into it).  While
 * an event is in the pipeline its rules may be going through the tables
 * (a rule registering another, the cache full): they are kept until it
 * ends. */
static void forget_matches(state_t *st)
{
    st->last_len = 0;
    if (st->pipelines > 0) {
        for (size_t i = 0; i < st->matches.cap; i++) {
            match_t *m = st->matches.slots[i].key ? st->matches.slots[i].val : NULL;
            if (m) {
                m->retired = st->retired_matches;
                st->retired_matches = m;
            }
        }
        dict_clear(&st->matches, NULL);
        return;
    }
    dict_clear(&st->matches, free);
}

void pipeline_free_retired(state_t *st)
{
    while (st->retired_matches) {
        match_t *m = st->retired_matches;
        st->retired_matches = m->retired;
        free(m);
    }
}

void pipeline_rule_free(rule_t *r)
{
    if (r) {
        free(r->pattern);
        free(r);
    }
}

int script_add_rule(lua_State *L, int kind, const char *pattern, size_t plen, int64_t from, int fn_idx)
{
    state_t *st = script_state_of(L);
    lua_Debug ar;
    rule_t *r = calloc(1, sizeof *r);
    if (!r)
        return luaL_error(L, "out of memory");
    r->kind = kind;
    r->pattern = util_mem_dup(pattern, plen);
    r->pattern_len = plen;
    r->from_version = from;
    if (!r->pattern || (st->nrules == st->caprules && 0)) {
        pipeline_rule_free(r);
        return luaL_error(L, "out of memory");
    }
    lua_pushvalue(L, fn_idx);
    lua_getinfo(L, ">S", &ar);
    snprintf(r->where, sizeof r->where, "%s:%d", ar.short_src, ar.linedefined);
    if (st->nrules == st->caprules) {
        size_t nc = st->caprules ? st->caprules * 2 : 16;
        rule_t **nr = realloc(st->rules, nc * sizeof *nr);
        if (!nr) {
            pipeline_rule_free(r);
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
            pipeline_rule_free(r);
            return luaL_error(L, "an upgrader for %s v%d is already registered at %s", pattern, (int)from, w);
        }
        if (dict_put(&st->upgraders, key, (size_t)kl, r) < 0) {
            pipeline_rule_free(r);
            return luaL_error(L, "out of memory");
        }
        /* The cached chains may have a new step. */
        st->up_known = 0;
        for (size_t i = 0; i < st->nrules; i++)
            st->rules[i]->next_up_known = 0;
    }
    lua_pushvalue(L, fn_idx);
    r->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    st->rules[st->nrules++] = r;
    st->nkind[kind]++;
    if (kind != RULE_UPGRADE && kind != RULE_DURABLE) {
        const char *dot = memchr(pattern, '.', plen);
        size_t fl = dot ? (size_t)(dot - pattern) : plen;
        if ((fl == 1 && (pattern[0] == '*' || pattern[0] == '>')))
            st->any_first = 1;
        else if (!dict_get(&st->first_tokens, pattern, fl) && dict_put(&st->first_tokens, pattern, fl, st) < 0)
            st->any_first = 1; /* out of memory: just stop ruling subjects out */
    }
    /* A new rule changes what matches: forget the cached matches. */
    forget_matches(st);
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
    return script_add_rule(L, kind, p, n, 0, 2);
}

int pipeline_l_filter(lua_State *L) { return register_pattern_rule(L, RULE_FILTER); }
int pipeline_l_route(lua_State *L) { return register_pattern_rule(L, RULE_ROUTE); }
int pipeline_l_on(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE)
        return durable_l_on(L); /* on(pattern, { consumer = ... }, fn) */
    return register_pattern_rule(L, RULE_HANDLER);
}

int pipeline_l_upgrade(lua_State *L)
{
    size_t n;
    const char *type = luaL_checklstring(L, 1, &n);
    lua_Integer from = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    if (n == 0 || n > 255)
        return luaL_error(L, "upgrade: type must be a non-empty string");
    if (from < 1)
        return luaL_error(L, "upgrade: from_version must be 1 or more");
    return script_add_rule(L, RULE_UPGRADE, type, n, (int64_t)from, 3);
}

/* ---- ctx.publish ---------------------------------------------------------------- */

/* Registry slot of the event whose handlers are running (set around the
 * handler calls in pipeline_run_event).  Handlers' C functions (ctx.publish,
 * ctx.reply) run in frames of their own, so a stack index of pipeline_run_event's
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
    if (ev && header && ev->hdr && (v = proto_header_find(ev->hdr, ev->hdr_len, header, &vl))) {
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
/* Pushes ctx.publish's payload: the bytes of an event (sm gets its
 * message), a string as it is, or anything else as the data of a new
 * envelope carrying the chain's ids.  Raises on what JSON cannot hold. */
static void push_publish_payload(lua_State *L, const char *subject, size_t sl, event_t *src, proto_msg_t *sm,
                                 const char *correlation, const char *causation)
{
    if (src) {
        event_bytes(L, 2, sm);
        lua_pushlstring(L, sm->payload, sm->payload_len);
        return;
    }
    if (lua_type(L, 2) == LUA_TSTRING) {
        lua_pushvalue(L, 2);
        return;
    }
    char idbuf[37], timebuf[64];
    cJSON *data = json_from_lua(L, 2);
    cJSON *env = cJSON_CreateObject();
    json_push_document(L, env, NULL); /* frees env (and data in it) if anything raises */
    if (!env) {
        cJSON_Delete(data);
        luaL_error(L, "out of memory");
    }
    clock_event_id(idbuf); /* (both follow tide run --clock virtual) */
    clock_now_rfc3339(timebuf);
    char *type = util_mem_dup(subject, sl);
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
        luaL_error(L, "out of memory");
    lua_pushlstring(L, p, pl);
    free(p);
    lua_remove(L, -2); /* the document */
}

/* Pushes ctx.publish's header block: the source event's lines (src_hdr,
 * without its chain ids), the caller's table at index 3, then the chain's
 * ids, appended to one string (the stack stays free for lua_next). */
static void push_publish_headers(lua_State *L, const proto_msg_t *sm, const char *correlation, const char *causation)
{
    lua_pushliteral(L, "NATS/1.0\r\n");
    int acc = lua_gettop(L);
#define APPEND(push)                                                                                                   \
    do {                                                                                                               \
        lua_pushvalue(L, acc);                                                                                         \
        push;                                                                                                          \
        lua_concat(L, 2);                                                                                              \
        lua_replace(L, acc);                                                                                           \
    } while (0)
    if (sm && sm->hdr && sm->hdr_len >= 2) {
        const char *p = memchr(sm->hdr, '\n', sm->hdr_len), *end = sm->hdr + sm->hdr_len;
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
                luaL_error(L, "ctx.publish: header names must be strings");
            const char *k = lua_tolstring(L, acc + 1, &kl);
            const char *v = luaL_tolstring(L, acc + 2, &vl); /* acc+3 */
            if (memchr(k, ':', kl) || memchr(k, '\n', kl) || memchr(v, '\n', vl) || memchr(v, '\r', vl))
                luaL_error(L, "ctx.publish: header names hold no ':' and values no CR/LF");
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
}

/* Pushes false and msg, counted as a stopped chain: ctx.publish's answer
 * when a limit refuses an event. */
static int publish_refused(lua_State *L, script_host_t *h, const char *msg)
{
    h->st.loops_stopped++;
    script_log_rate_limited(h, msg);
    lua_pushboolean(L, 0);
    lua_pushstring(L, msg);
    return 2;
}

/* Queues m as an event of the current cascade (made on its first one). */
static void queue_published(lua_State *L, script_host_t *h, state_t *st, const proto_msg_t *m)
{
    if (h->rec)
        shadow_note(h, SHADOW_EMIT, m->subject, m->subject_len, m->payload, m->payload_len, NULL);
    if (h->dry)
        return;
    if (!h->cascade && !(h->cascade = calloc(1, sizeof *h->cascade)))
        luaL_error(L, "out of memory");
    if (msgq_push(&h->queue, m, st->cur_depth + 1) < 0) {
        if (!h->cascade->refs) {
            free(h->cascade);
            h->cascade = NULL;
        }
        luaL_error(L, "out of memory");
    }
    h->queue.tail->tag = h->cascade;
    h->cascade->refs++;
    h->cascade->emitted++;
    h->st.emitted++;
}

int pipeline_l_ctx_publish(lua_State *L)
{
    state_t *st = script_state_of(L);
    script_host_t *h = st->host;
    size_t sl;
    const char *subject = luaL_checklstring(L, 1, &sl);
    char corr[128], cause[128], msg[300];

    luaL_checkany(L, 2);
    if (!subject_valid_literal(subject, sl))
        return luaL_error(L, "ctx.publish: invalid subject '%s'", subject);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    int too_deep = st->cur_depth + 1 > st->limits.emit_depth;
    if (too_deep || (h->cascade && h->cascade->emitted >= st->limits.emit_max)) {
        snprintf(msg, sizeof msg, "emit chain stopped at %s: %s (limit %d)", subject,
                 too_deep ? "depth over emit_depth" : "too many events from one event",
                 too_deep ? st->limits.emit_depth : st->limits.emit_max);
        return publish_refused(L, h, msg);
    }
    const char *causation = current_attr(L, st, NULL, "id", cause, sizeof cause);
    const char *correlation = current_attr(L, st, "Tide-Correlation-Id", "correlationid", corr, sizeof corr);
    if (!correlation)
        correlation = causation;

    /* Everything that can raise is built on the Lua stack first; the
     * queued copy is allocated last, so an error leaks nothing. */
    event_t *src = event_test(L, 2);
    proto_msg_t sm;
    push_publish_payload(L, subject, sl, src, &sm, correlation, causation);
    int payload_idx = lua_gettop(L);
    push_publish_headers(L, src ? &sm : NULL, correlation, causation);

    size_t hl, pl;
    const char *hs = lua_tolstring(L, -1, &hl);
    const char *ps = lua_tolstring(L, payload_idx, &pl);
    size_t max_payload = server_get_opts(h->srv)->max_payload;
    if (pl + (hl > 12 ? hl : 0) > max_payload)
        return luaL_error(L, "ctx.publish: message of %d bytes is over max_payload (%d)", (int)(pl + hl),
                          (int)max_payload);
    /* Queued events live outside the Lua heap: they count against the same cap. */
    if (h->queue.bytes + pl + hl > st->limits.memory) {
        snprintf(msg, sizeof msg, "emit chain stopped at %s: queued events over the memory budget (%zu bytes)",
                 subject, st->limits.memory);
        return publish_refused(L, h, msg);
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
    queue_published(L, h, st, &qm);
    lua_pushboolean(L, 1);
    return 1;
}

/* ctx.reply(data): publishes to the reply subject of the event being handled. */
int pipeline_l_ctx_reply(lua_State *L)
{
    state_t *st = script_state_of(L);
    event_t *ev = push_handled_event(L, st);
    lua_pop(L, 1); /* still anchored in the registry */
    if (!ev || !ev->reply)
        return luaL_error(L, "ctx.reply: the event has no reply subject");
    lua_pushlstring(L, ev->reply, ev->reply_len);
    lua_insert(L, 1);
    return pipeline_l_ctx_publish(L);
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
        if (r->kind != RULE_UPGRADE && r->kind != RULE_DURABLE &&
            subject_matches(r->pattern, r->pattern_len, subject, len))
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
        if (r->kind != RULE_UPGRADE && r->kind != RULE_DURABLE &&
            subject_matches(r->pattern, r->pattern_len, subject, len))
            m->r[r->kind][m->n[r->kind]++] = r;
    }
    if (st->matches.count >= MATCH_CACHE_MAX)
        forget_matches(st);
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
int script_upgrade_possible(state_t *st, const proto_msg_t *m)
{
    if (!st->nkind[RULE_UPGRADE])
        return 0;
    /* The subject first: it is the common case (a raw event's type is its
     * subject) and costs no scan of the payload. */
    for (size_t i = 0; i < st->nrules; i++) {
        rule_t *r = st->rules[i];
        if (r->kind == RULE_UPGRADE && r->pattern_len == m->subject_len &&
            !memcmp(r->pattern, m->subject, m->subject_len))
            return 1;
    }
    if (memmem(m->payload, m->payload_len, "\\u", 2))
        return 1;
    for (size_t i = 0; i < st->nrules; i++) {
        rule_t *r = st->rules[i];
        if (r->kind != RULE_UPGRADE)
            continue;
        if (memmem(m->payload, m->payload_len, r->pattern, r->pattern_len) ||
            (m->hdr && memmem(m->hdr, m->hdr_len, r->pattern, r->pattern_len)))
            return 1;
    }
    return 0;
}
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

static double elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

void pipeline_rule_note_error(state_t *st, rule_t *r, const char *msg, int from_lua)
{
    r->errors++;
    if (!from_lua)
        st->host->st.errors++; /* Lua errors are counted by budget_error */
    snprintf(r->last_error, sizeof r->last_error, "%s", msg ? msg : "error");
    if (from_lua && st->err_at[0]) {
        snprintf(r->last_error_at, sizeof r->last_error_at, "%s", st->err_at);
        snprintf(r->last_trace, sizeof r->last_trace, "%s", st->err_trace);
    } else { /* not raised in Lua (a bad answer), or nothing recorded: the rule itself */
        snprintf(r->last_error_at, sizeof r->last_error_at, "%s", r->where);
        r->last_trace[0] = '\0';
    }
    r->last_error_time = time(NULL);
    st->err_at[0] = st->err_trace[0] = '\0';
}

void pipeline_rule_failure_text(char *out, size_t n, const rule_t *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    if (!r || !r->last_trace[0] || k < 0 || (size_t)k >= n)
        return;
    k += snprintf(out + k, n - (size_t)k, "\n    stack traceback:");
    for (const char *p = r->last_trace; *p && k > 0 && (size_t)k < n;) {
        size_t len = strcspn(p, "\n");
        k += snprintf(out + k, n - (size_t)k, "\n        %.*s", (int)len, p);
        p += len + (p[len] == '\n');
    }
}

/*
 * Dead-letters event m after a failure at stage (rule r; NULL when the
 * pipeline itself failed): logs the failure with its traceback (rate
 * limited), publishes the dead letter to <dead_letter>.<subject>
 * (dead_letter.h) and counts it, or counts and logs its loss.
 */
void pipeline_dead_letter(script_host_t *h, state_t *st, const proto_msg_t *m, const char *stage, const rule_t *r,
                          const char *error)
{
    char line[3000], why[400];
    if (h->rec)
        shadow_note(h, SHADOW_DEAD, stage, strlen(stage), error, strlen(error), r ? r->where : "(pipeline)");
    if (h->dry)
        return;
    pipeline_rule_failure_text(line, sizeof line, r, "%s at %s: %s (event on %.*s)", stage,
                               r ? r->where : "(pipeline)", error, (int)(m->subject_len > 200 ? 200 : m->subject_len),
                               m->subject);
    script_log_rate_limited(h, line);
    h->st.dead_letters++;
    if (h->trace)
        tracef(h, 0, "  ERROR    %s at %s: %s%s%s   -> %s.%.*s", stage, r ? r->where : "(pipeline)", error,
               r ? ", raised at " : "", r ? r->last_error_at : "", st->limits.dead_letter, (int)m->subject_len,
               m->subject);
    dead_letter_facts_t f = {.to = st->limits.dead_letter, .per_subject = 1, .reason = "script", .stage = stage,
                             .error = error, .script = r ? r->where : "(pipeline)"};
    if (dead_letter_send(h->srv, m, &f, why, sizeof why) != DEAD_LETTER_LOST)
        return;
    h->st.dead_letters_lost++;
    snprintf(line, sizeof line, "the dead letter of an event on %.*s is lost: %s",
             (int)(m->subject_len > 200 ? 200 : m->subject_len), m->subject, why);
    script_log_rate_limited(h, line);
    if (h->trace)
        tracef(h, 0, "  LOST     %s", line);
}

/* Calls rule r with the event (and ctx for handlers) at ev_idx.  Returns
 * LUA_OK with one result on the stack, or an error with the message. */

const double script_latency_bounds[SCRIPT_LATENCY_BUCKETS] = {0.00001, 0.00005, 0.0001, 0.0005, 0.001,
                                                               0.005,   0.01,    0.05,   0.1,    0.5};

int script_call_rule(state_t *st, rule_t *r, int ev_idx)
{
    return script_call_rule_meta(st, r, ev_idx, 0);
}

/* Counts a rule call of ms milliseconds in the latency histogram. */
static void note_latency(script_host_t *h, double ms)
{
    int b = 0;
    while (b < SCRIPT_LATENCY_BUCKETS && ms / 1000 > script_latency_bounds[b])
        b++;
    h->lat_counts[b]++;
    h->lat_sum += ms / 1000;
    h->lat_count++;
    h->last_call_ms = ms;
}

int script_call_rule_meta(state_t *st, rule_t *r, int ev_idx, int meta_idx)
{
    lua_State *L = st->L;
    struct timespec t0;
    budget_saved_t outer;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    r->calls++;
    lua_pushcfunction(L, budget_on_error);
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn_ref);
    lua_pushvalue(L, ev_idx);
    int nargs = 1;
    if (r->kind == RULE_HANDLER || r->kind == RULE_DURABLE) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, st->ctx_ref);
        nargs = 2;
    }
    if (meta_idx) {
        lua_pushvalue(L, meta_idx);
        nargs++;
    }
    budget_begin(st, &outer, &t0);
    int rc = lua_pcall(L, nargs, 1, base);
    if (st->host->cascade)
        st->host->cascade->instructions += st->instructions;
    int budget = budget_end(st, &outer);
    lua_remove(L, base);
    if (rc != LUA_OK) {
        budget_error(st, budget);
        pipeline_rule_note_error(st, r, lua_tostring(L, -1), 1);
    }
    note_latency(st->host, elapsed_ms(&t0));
    return rc;
}

/* Types up to this long can have upgraders (the longest dictionary key). */
#define UPGRADE_TYPE_MAX 600

/* The upgrader for (type, version), or NULL.  The key is the type's bytes
 * up to a NUL, a NUL, and the version in decimal. */
static rule_t *upgrader_for(state_t *st, const char *type, size_t tl, lua_Integer version)
{
    char key[UPGRADE_TYPE_MAX], digits[24];
    size_t nd = 0;
    unsigned long long u = version < 0 ? 0 - (unsigned long long)version : (unsigned long long)version;
    const char *nul = memchr(type, '\0', tl);
    if (nul)
        tl = (size_t)(nul - type);
    do
        digits[nd++] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (version < 0)
        digits[nd++] = '-';
    if (tl + 1 + nd >= sizeof key)
        return NULL;
    memcpy(key, type, tl);
    key[tl] = '\0';
    for (size_t i = 0; i < nd; i++)
        key[tl + 1 + i] = digits[nd - 1 - i];
    return dict_get(&st->upgraders, key, tl + 1 + nd);
}

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
    char dest0[128]; /* dest[0] when it is the event's own, short subject */
    int ndest;
    match_t *mt;         /* the rules for the subject it came with */
    int handled;         /* handlers ran: the registry holds the event */
    const char *stage;   /* set with failed when a rule fails */
    rule_t *failed;
    /* The filter or route running (see call_in_pipeline), its stage, the
     * time it started and the budgets of an outer call. */
    rule_t *calling;
    const char *calling_stage;
    struct timespec t0;
    budget_saved_t outer;
    char error[1024];
} run_t;

/*
 * Calls filter or route r with the event at ev_idx and leaves its result
 * on the stack.  It runs inside the pipeline's protected call (one per
 * event, not one per rule): an error unwinds to run_one, which finds the
 * rule in run->calling and ends the event as a failed rule would.
 */
static void call_in_pipeline(run_t *run, rule_t *r, int ev_idx, const char *stage)
{
    state_t *st = run->st;
    lua_State *L = st->L;
    clock_gettime(CLOCK_MONOTONIC, &run->t0);
    r->calls++;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn_ref);
    lua_pushvalue(L, ev_idx);
    run->calling = r;
    run->calling_stage = stage;
    budget_begin(st, &run->outer, &run->t0);
    lua_call(L, 1, 1);
    if (st->host->cascade)
        st->host->cascade->instructions += st->instructions;
    budget_end(st, &run->outer);
    run->calling = NULL;
    note_latency(st->host, elapsed_ms(&run->t0));
}

/* The upgrader for (type, version) when the chain's previous step was prev
 * (NULL: this is its start), or NULL.  The step after an upgrader, and
 * the start from the last (type, version) seen, are kept: an event of the
 * usual type looks nothing up. */
static rule_t *upgrader_next(state_t *st, rule_t *prev, const char *type, size_t tl, lua_Integer version)
{
    /* Compared as they are: upgrader_for cuts a type at a NUL itself. */
    if (prev) {
        if (version != prev->from_version + 1 || tl != prev->pattern_len || memcmp(type, prev->pattern, tl))
            return upgrader_for(st, type, tl, version);
        if (!prev->next_up_known) {
            prev->next_up = upgrader_for(st, type, tl, version);
            prev->next_up_known = 1;
        }
        return prev->next_up;
    }
    if (st->up_known && version == st->up_version && tl == st->up_tl && !memcmp(type, st->up_type, tl))
        return st->up_rule;
    rule_t *r = upgrader_for(st, type, tl, version);
    if (tl <= sizeof st->up_type) {
        memcpy(st->up_type, type, tl);
        st->up_tl = tl;
        st->up_version = version;
        st->up_rule = r;
        st->up_known = 1;
    }
    return r;
}

/*
 * The upgrader chain for the event object at obj_idx, giving the upgraders
 * ev_idx.  Inside the pipeline (run) they are called as filters are
 * (call_in_pipeline: an error unwinds to run_one); otherwise each in a
 * protected call of its own.
 */
static int upgrade_chain(lua_State *L, state_t *st, int obj_idx, int ev_idx, rule_t **failed, int td, run_t *run)
{
    script_host_t *h = st->host;
    char buf[UPGRADE_TYPE_MAX];
    const char *type;
    size_t tl;
    lua_Integer version;
    rule_t *r = NULL;
    const event_t *ev = lua_touserdata(L, obj_idx);
    /* The event's type and version: read once here, then after each
     * upgrader (which may change both). */
    event_type_version(L, obj_idx, buf, sizeof buf, &type, &tl, &version);
    for (int step = 0; step < UPGRADE_CHAIN_MAX; step++) {
        r = type ? upgrader_next(st, r, type, tl, version) : NULL;
        if (!r)
            return 0;
        *failed = r;
        unsigned stamp = event_change_stamp(ev);
        if (run)
            call_in_pipeline(run, r, ev_idx, "upgrade");
        else if (script_call_rule(st, r, ev_idx) != LUA_OK)
            return -1;
        if (!lua_isnil(L, -1) && !lua_rawequal(L, -1, ev_idx)) {
            lua_pushfstring(L, "upgrader for %s v%d must return the event it was given (or nothing)", r->pattern,
                            (int)r->from_version);
            pipeline_rule_note_error(st, r, lua_tostring(L, -1), 0);
            return -1;
        }
        lua_pop(L, 1);
        /* An upgrader that assigned no field of e left its type and version
         * (writes into e.data cannot change them). */
        if (event_change_stamp(ev) != stamp)
            event_type_version(L, obj_idx, buf, sizeof buf, &type, &tl, &version);
        if (version == r->from_version) {
            version = r->from_version + 1;
            event_set_version(L, obj_idx, version);
        }
        if (h->trace)
            tracef(h, td, "  upgrade  %s v%d -> v%d   %s   %.3f ms", r->pattern, (int)r->from_version,
                   (int)r->from_version + 1, r->where, h->last_call_ms);
    }
    return 0;
}

int pipeline_run_upgraders(lua_State *L, state_t *st, int obj_idx, int ev_idx, rule_t **failed, int td)
{
    return upgrade_chain(L, st, obj_idx, ev_idx, failed, td, NULL);
}

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
        run->dest[run->ndest] = util_mem_dup(s, sl);
        if (!run->dest[run->ndest])
            luaL_error(L, "out of memory");
        run->dest_len[run->ndest++] = sl;
        lua_pop(L, 1);
    }
    return 0;
}

/* The trace's first line for the event at ev_idx. */
static void trace_event(lua_State *L, run_t *run, int ev_idx)
{
    lua_getfield(L, ev_idx, "type");
    lua_getfield(L, ev_idx, "version");
    lua_getfield(L, ev_idx, "id");
    const char *type = lua_tostring(L, -3), *id = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
    tracef(run->h, run->depth, "event %.*s  (type %s v%d%s%s%s)", (int)run->ev->subject_len, run->ev->subject,
           type ? type : "?", (int)lua_tointeger(L, -2), id ? ", id " : "", id ? id : "",
           run->depth ? ", published by a handler" : "");
    lua_pop(L, 3);
}

/* 2. Filters, in order; the first false drops the event.  1 when dropped. */
static int run_filters(lua_State *L, run_t *run, match_t *mt, int e_idx)
{
    script_host_t *h = run->h;
    int tr = h->trace != NULL, td = run->depth;
    for (size_t i = 0; i < mt->n[RULE_FILTER]; i++) {
        rule_t *r = mt->r[RULE_FILTER][i];
        call_in_pipeline(run, r, e_idx, "filter");
        int keep = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (tr)
            tracef(h, td, "  filter   %s   %s   %s   %.3f ms", r->pattern, r->where, keep ? "kept" : "DROPPED",
                   h->last_call_ms);
        if (!keep) {
            if (h->rec)
                shadow_note(h, SHADOW_DROP, NULL, 0, NULL, 0, r->where);
            r->dropped++;
            h->st.dropped++;
            return 1;
        }
    }

    return 0;
}

/* 3. Routes: the first one that answers decides where the event goes
 * (run->dest).  1 when the event is done: dropped, or failed (fail_rule). */
static int run_routes(lua_State *L, run_t *run, match_t *mt, int e_idx)
{
    script_host_t *h = run->h;
    state_t *st = run->st;
    int tr = h->trace != NULL, td = run->depth;
    for (size_t i = 0; i < mt->n[RULE_ROUTE]; i++) {
        rule_t *r = mt->r[RULE_ROUTE][i];
        call_in_pipeline(run, r, e_idx, "route");
        int t = lua_type(L, -1);
        if (t == LUA_TNIL) {
            lua_pop(L, 1);
            if (tr)
                tracef(h, td, "  route    %s   %s   no opinion   %.3f ms", r->pattern, r->where, h->last_call_ms);
            continue;
        }
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            if (h->rec)
                shadow_note(h, SHADOW_DROP, NULL, 0, NULL, 0, r->where);
            r->dropped++;
            h->st.dropped++;
            if (tr)
                tracef(h, td, "  route    %s   %s   DROPPED   %.3f ms", r->pattern, r->where, h->last_call_ms);
            return 1;
        }
        if (t != LUA_TSTRING && t != LUA_TTABLE) {
            lua_pushfstring(L, "route returned a %s (expected nil, false, a subject or a list of subjects)",
                            lua_typename(L, t));
            pipeline_rule_note_error(st, r, lua_tostring(L, -1), 0);
            return fail_rule(L, run, "route", r), 1;
        }
        if (take_destinations(L, run) < 0) {
            pipeline_rule_note_error(st, r, lua_tostring(L, -1), 0);
            return fail_rule(L, run, "route", r), 1;
        }
        r->routed++;
        lua_pop(L, 1);
        if (tr) {
            char list[600] = "";
            for (int d = 0; d < run->ndest; d++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", d ? ", " : "", run->dest[d]);
            tracef(h, td, "  route    %s   %s   -> %s   %.3f ms", r->pattern, r->where,
                   run->ndest ? list : "(nowhere: dropped)", h->last_call_ms);
        }
        if (run->ndest == 0) { /* an empty list: nowhere to go */
            if (h->rec)
                shadow_note(h, SHADOW_DROP, NULL, 0, NULL, 0, r->where);
            r->dropped++;
            h->st.dropped++;
            return 1;
        }
        break;
    }
    return 0;
}

/* An event no route sent elsewhere goes to its own subject: copied into
 * the run, with no allocation when short. */
static void own_destination(lua_State *L, run_t *run)
{
    size_t n = run->ev->subject_len;
    if (run->ndest)
        return;
    run->dest[0] = n < sizeof run->dest0 ? run->dest0 : util_mem_dup(run->ev->subject, n);
    if (!run->dest[0])
        luaL_error(L, "out of memory");
    if (run->dest[0] == run->dest0) {
        memcpy(run->dest0, run->ev->subject, n);
        run->dest0[n] = '\0';
    }
    run->dest_len[0] = n;
    run->ndest = 1;
}


/* 4. Delivery to every destination, with the bytes (out) re-encoded once
 * if a script changed them.  1 when the event failed (fail_rule). */
static int run_delivery(lua_State *L, run_t *run, int ev_idx, proto_msg_t *out)
{
    script_host_t *h = run->h;
    state_t *st = run->st;
    int tr = h->trace != NULL, td = run->depth;
    event_bytes(L, ev_idx, out);
    if (out->payload_len + out->hdr_len > server_get_opts(h->srv)->max_payload) {
        lua_pushfstring(L, "the event grew to %d bytes, over max_payload (%d)", (int)(out->payload_len + out->hdr_len),
                        (int)server_get_opts(h->srv)->max_payload);
        return fail_rule(L, run, "pipeline", NULL), 1;
    }
    for (int d = 0; d < run->ndest; d++) {
        proto_msg_t o = *out;
        o.subject = run->dest[d];
        o.subject_len = run->dest_len[d];
        /* A request that a handler here will answer has a responder. */
        match_t *dm = o.reply ? match_for(st, o.subject, o.subject_len) : NULL;
        if (h->rec)
            shadow_note(h, SHADOW_DELIVER, o.subject, o.subject_len, o.payload, o.payload_len, NULL);
        size_t n = h->dry ? 0
                          : server_route_flags(h->srv, run->from, &o,
                                               dm && dm->n[RULE_HANDLER] ? ROUTE_HAS_RESPONDER : 0);
        if (tr)
            tracef(h, td, "  deliver  %s   %zu subscriber%s%s", run->dest[d], n, n == 1 ? "" : "s",
                   run->ev->owner.dirty || out->payload != run->in->payload ? "   (re-encoded)" : "");
    }
    return 0;
}

/* 5. Handlers, for each subject the event went to.  A handler's failure
 * dead-letters the event for that handler; the others still run. */
static void run_handlers(lua_State *L, run_t *run, int ev_idx, int e_idx, proto_msg_t *out)
{
    script_host_t *h = run->h;
    state_t *st = run->st;
    int tr = h->trace != NULL, td = run->depth;
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
            event_bytes(L, ev_idx, out);
        }
        for (size_t i = 0; i < hm->n[RULE_HANDLER]; i++) {
            rule_t *r = hm->r[RULE_HANDLER][i];
            msgq_item_t *before = h->queue.tail;
            int ok = script_call_rule(st, r, e_idx) == LUA_OK;
            if (tr) {
                char list[600] = "";
                for (msgq_item_t *e = before ? before->next : h->queue.head; e; e = e->next)
                    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", list[0] ? ", " : "",
                             e->m.subject);
                tracef(h, td, "  on       %s   %s   %s%s%s   %.3f ms", r->pattern, r->where, ok ? "ok" : "FAILED",
                       list[0] ? "   published " : "", list, h->last_call_ms);
            }
            if (!ok)
                pipeline_dead_letter(h, st, out, "handler", r, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    st->cur_ev_idx = 0;
}

/*
 * The pipeline for one message (a lua_CFunction run under lua_pcall, so
 * that out-of-memory anywhere, not only in rules, fails only this event).
 * Rule failures are recorded in run->stage/failed/error and end the event.
 */
int pipeline_run_event(lua_State *L)
{
    run_t *run = lua_touserdata(L, 1);
    state_t *st = run->st;
    proto_msg_t out;
    match_t *mt;

    /* ev_idx: the event, for the C side; e_idx: what rules are given (a
     * handle of the reused event, or the same event). */
    run->ev = event_push_pipeline(L, run->in, lua_upvalueindex(2), lua_upvalueindex(3));
    run->ev->client = run->from;
    run->ev->who = &run->h->test_who;
    run->ev->origin = run->from ? EVENT_FROM_CLIENT
                    : run->depth > 0 ? EVENT_FROM_TIDE
                    : run->h->has_test_who ? EVENT_FROM_TEST : EVENT_FROM_SERVER;
    int e_idx = lua_gettop(L), ev_idx = e_idx - 1;
    if (!run->ev->reusable) {
        /* run_one ends it on every path: its payload's views can be the
         * kind that allocates nothing (json.c). */
        run->ev->owner.released_by_owner = 1;
        /* Anchored in this closure's upvalue, so that it outlives an error
         * unwinding this call: run_one ends it from there. */
        lua_pushvalue(L, ev_idx);
        lua_replace(L, lua_upvalueindex(1));
    }
    run->ev->depth = run->depth;
    if (run->h->trace)
        trace_event(L, run, ev_idx);

    /* 1. upgraders, chained: each takes the event from version v to v + 1. */
    if (script_upgrade_possible(st, run->in)) {
        rule_t *failed;
        if (upgrade_chain(L, st, ev_idx, e_idx, &failed, run->depth, run) < 0)
            return fail_rule(L, run, "upgrade", failed);
    }
    /* The rules of the subject as it is now (an upgrader may have renamed
     * the event; otherwise run_one's match still holds). */
    if (run->ev->subject == run->in->subject && run->mt)
        mt = run->mt;
    else
        mt = match_for(st, run->ev->subject, run->ev->subject_len);
    if (!mt)
        return luaL_error(L, "out of memory matching rules");
    if (run_filters(L, run, mt, e_idx) || run_routes(L, run, mt, e_idx))
        return 0;
    own_destination(L, run);
    if (run_delivery(L, run, ev_idx, &out))
        return 0;
    run_handlers(L, run, ev_idx, e_idx, &out);
    return 0;
}

/* Does any rule apply to this message?  When not, Lua is not touched.
 * *mt gets the rules for its subject (NULL when out of memory). */
static int needs_lua(state_t *st, const proto_msg_t *m, match_t **mt)
{
    *mt = NULL;
    if (st->nrules == 0)
        return 0;
    if (m->subject_len == st->last_len && !memcmp(m->subject, st->last_subject, m->subject_len)) {
        /* The same subject as the last event, as in a burst: no lookup. */
        *mt = st->last_mt;
        if (!*mt)
            return 0;
    } else {
        int remember = m->subject_len && m->subject_len <= sizeof st->last_subject;
        if (remember) {
            memcpy(st->last_subject, m->subject, m->subject_len);
            st->last_len = 0; /* valid once *mt is known */
        }
        if (!st->any_first && !st->nkind[RULE_UPGRADE]) {
            /* No pattern starts with a wildcard: a subject whose first token
             * begins no pattern matches none, and costs one short lookup. */
            const char *dot = memchr(m->subject, '.', m->subject_len);
            size_t fl = dot ? (size_t)(dot - m->subject) : m->subject_len;
            if (!dict_get(&st->first_tokens, m->subject, fl)) {
                if (remember) {
                    st->last_mt = NULL;
                    st->last_len = m->subject_len;
                }
                return 0;
            }
        }
        *mt = match_for(st, m->subject, m->subject_len);
        if (!*mt)
            return 1; /* out of memory: let the pipeline report it */
        if (remember) {
            st->last_mt = *mt;
            st->last_len = m->subject_len;
        }
    }
    return (*mt)->n[RULE_FILTER] || (*mt)->n[RULE_ROUTE] || (*mt)->n[RULE_HANDLER] || script_upgrade_possible(st, m);
}

/* The event ends here, whatever a script kept of it (ev: the event
 * object, when the pipeline got as far as making it); the way its bytes
 * were made is counted. */
static void end_event(lua_State *L, script_host_t *h, event_t *ev)
{
    if (ev) {
        h->st.spliced += ev->spliced_n;
        h->st.reencoded += ev->reencoded_n;
    }
    if (ev && ev->reusable) {
        event_expire_ptr(ev);
    } else {
        if (lua_getupvalue(L, RUN_EVENT_SLOT, 1) && lua_type(L, -1) == LUA_TUSERDATA)
            event_expire_ptr(lua_touserdata(L, -1));
        lua_pushnil(L);
        lua_setupvalue(L, RUN_EVENT_SLOT, 1);
    }
}

void pipeline_run_one(script_host_t *h, client_t *from, const proto_msg_t *m, int depth)
{
    state_t *st = h->cur;
    lua_State *L = st->L;
    int top = lua_gettop(L);
    run_t run;
    match_t *mt;

    h->st.events++;
    if (!needs_lua(st, m, &mt)) {
        h->st.bypassed++;
        if (h->rec)
            shadow_note(h, SHADOW_DELIVER, m->subject, m->subject_len, m->payload, m->payload_len, NULL);
        size_t n = h->dry ? 0 : server_route(h->srv, from, m);
        if (h->trace)
            tracef(h, depth, "event %.*s  (no rule matches)\n%*s  deliver  %.*s   %zu subscriber%s", (int)m->subject_len,
                   m->subject, depth * 4, "", (int)m->subject_len, m->subject, n, n == 1 ? "" : "s");
        return;
    }
    /* Not the destination and error buffers: they are written before read. */
    run.h = h;
    run.st = st;
    run.from = from;
    run.in = m;
    run.depth = depth;
    run.ev = NULL;
    run.ndest = 0;
    run.mt = mt;
    run.handled = 0;
    run.stage = NULL;
    run.failed = NULL;
    run.calling = NULL;
    st->cur_depth = depth;
    lua_pushcfunction(L, budget_on_error);
    lua_pushvalue(L, RUN_EVENT_SLOT);
    lua_pushlightuserdata(L, &run);
    st->pipelines++;
    int rc = lua_pcall(L, 1, 0, top + 1);
    if (--st->pipelines == 0)
        pipeline_free_retired(st);
    if (rc != LUA_OK && run.calling) {
        /* A filter or route failed (call_in_pipeline): close its call as
         * budget_call would have. */
        rule_t *r = run.calling;
        budget_error(st, budget_end(st, &run.outer));
        pipeline_rule_note_error(st, r, lua_tostring(L, -1), 1);
        note_latency(h, elapsed_ms(&run.t0));
        run.stage = run.calling_stage;
        run.failed = r;
        snprintf(run.error, sizeof run.error, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    } else if (rc != LUA_OK) {
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
    end_event(L, h, run.ev);
    if (rc != LUA_OK && !run.failed)
        lua_gc(L, LUA_GCCOLLECT); /* out of memory outside a rule: collect now */
    if (run.stage)
        pipeline_dead_letter(h, st, m, run.stage, run.failed, run.error);
    for (int d = 0; d < run.ndest; d++)
        if (run.dest[d] != run.dest0)
            free(run.dest[d]);
    lua_settop(L, top);
}

void pipeline_cascade_release(script_host_t *h, cascade_t *c)
{
    if (c && --c->refs <= 0) {
        if (h->cascade == c)
            h->cascade = NULL;
        free(c);
    }
}

static double seconds_since(const struct timespec *t0)
{
    return elapsed_ms(t0) / 1000;
}

/* Runs one queued event as part of its cascade c, or dead-letters it when
 * the cascade is over its budget. */
static void run_queued(script_host_t *h, msgq_item_t *e)
{
    cascade_t *c = e->tag;
    state_t *st = h->cur;
    if (c && !c->stopped &&
        (c->instructions > st->limits.cascade_instructions || c->seconds > st->limits.cascade_time)) {
        c->stopped = 1;
        h->st.budget_stops++;
    }
    if (c && c->stopped) {
        char why[200];
        snprintf(why, sizeof why, "cascade budget exceeded (%d events published, %.0f ms, %llu instructions)",
                 c->emitted, c->seconds * 1000, (unsigned long long)c->instructions);
        pipeline_dead_letter(h, st, &e->m, "cascade", NULL, why);
        return;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    h->cascade = c;
    if (c)
        c->refs++; /* kept while it runs, for what it publishes */
    if (!c || !c->canary || !h->shadow_queued || !h->shadow_queued(h, c, &e->m, e->depth))
        pipeline_run_one(h, NULL, &e->m, e->depth);
    if (c) {
        c->seconds += seconds_since(&t0);
        h->cascade = NULL;
        pipeline_cascade_release(h, c);
    }
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    script_host_t *h = arg;
    (void)fd;
    (void)what;
    h->processing++;
    script_drain(h);
    h->processing--;
}

int script_drain_attach(script_host_t *h, struct event_base *base)
{
    h->drain_ev = event_new(base, -1, 0, on_drain, h);
    return h->drain_ev ? 0 : -1;
}

void script_queue_clear(script_host_t *h)
{
    msgq_item_t *e;
    size_t dropped = 0;
    while ((e = msgq_pop(&h->queue))) {
        pipeline_cascade_release(h, e->tag);
        msgq_item_free(e);
        dropped++;
    }
    if (dropped)
        log_warn("%zu event%s that handlers published were not run: the server stopped first", dropped,
                 dropped == 1 ? "" : "s");
    if (h->drain_ev)
        event_free(h->drain_ev);
    h->drain_ev = NULL;
}

void script_drain(script_host_t *h)
{
    /* Events the handlers published, breadth first: each goes through the
     * whole pipeline; their own emissions queue behind them.  A long queue
     * gives the loop back every DRAIN_SLICE, so other clients are served
     * while a cascade runs (where the loop can: tide serve and the prompt;
     * offline runs drain it whole). */
    struct timespec t0;
    msgq_item_t *e;
    if (!h->queue.head)
        return; /* the common case: nothing was published */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while ((e = msgq_pop(&h->queue))) {
        run_queued(h, e);
        pipeline_cascade_release(h, e->tag);
        msgq_item_free(e);
        if (h->drain_ev && h->queue.head && seconds_since(&t0) > DRAIN_SLICE) {
            /* A timer, not event_active: the loop runs the active events
             * it makes before it polls the sockets again. */
            static const struct timeval now = {0, 0};
            event_add(h->drain_ev, &now);
            return;
        }
    }
}

void script_process(script_host_t *h, client_t *from, const proto_msg_t *m)
{
    cascade_t *outer = h->cascade; /* a publish from inside a rule's call (the prompt) */
    h->processing++;
    h->cascade = NULL; /* a new cascade, made when it first publishes */
    if (h->shadow_process)
        h->shadow_process(h, from, m);
    else
        pipeline_run_one(h, from, m, 0);
    h->cascade = outer; /* its queued events hold it */
    script_drain(h);
    h->processing--;
}

void script_set_handled(lua_State *L, state_t *st, int ev_idx)
{
    if (ev_idx)
        lua_pushvalue(L, ev_idx);
    else
        lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &handled_event_key);
    st->cur_ev_idx = ev_idx;
}
