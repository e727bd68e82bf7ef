/*
 * repl.c - tide repl: a router in the terminal.
 *
 * The prompt runs in the script host's own Lua state, so everything a rules
 * file can do works at the prompt (upgrade, filter, route, on, require,
 * tide.kv), plus helpers: pub, sub, unsub, trace, rules, stats, load,
 * reload, record, expect, streams, replay, shadow, diff, promote, help.  The
 * router is embedded (no separate server); --listen lets real NATS clients join.  Input is
 * read through GNU readline from a libevent callback, so the router keeps
 * serving while the prompt waits.
 *
 * A flow that declares streams runs them as tide serve does (the store's
 * group commit, consumers and their Lua handlers all run on the prompt's
 * loop), in --data DIR, else its storage { dir }, else a temporary
 * directory removed at exit.  replay() runs stored events through the
 * current rules again without storing them a second time.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>
#include <readline/history.h>
#include <readline/readline.h>

#include "admin.h"
#include "client.h"
#include "flow.h"
#include "jsapi.h"
#include "log.h"
#include "msgq.h"
#include "node.h"
#include "repl.h"
#include "script.h"
#include "server.h"
#include "stream.h"
#include "subject.h"
#include "util.h"

typedef struct watch {
    struct repl *r;
    sub_t *sub;
    char pattern[256];
} watch_t;

typedef struct recording {
    char pattern[256];
    FILE *f;
} recording_t;

/* replay(): run after the line, in order with the line's pub() calls. */
typedef struct replay_job {
    char stream[STREAM_NAME_MAX];
    char consumer[STREAM_NAME_MAX]; /* "" : through the pipeline */
    uint64_t from, to;              /* to 0: to the end */
    size_t after;                   /* pub() calls queued before it */
} replay_job_t;

#define REPLAY_JOBS_MAX 16
#define REPL_SEEN_MAX (8u << 20) /* bytes of deliveries kept for expect() */
#define REPL_CONNS_MAX 16        /* connections sharing a remote session */

typedef struct repl {
    node_t node; /* the prompt's own router, or a copy of the served node's parts (--connect) */
    const char *entry;
    int tty;
    int done;
    int exit_code;
    char *buf; /* statement being typed over several lines */
    size_t buf_len;
    msgq_t pending; /* pub() at the prompt: run after the line */
    watch_t watches[32];
    recording_t recs[8];
    int nrecs;
    /* Deliveries since the start or the last expect(), as JSON lines, at
     * most REPL_SEEN_MAX bytes; what came after that is only counted. */
    char *seen;
    size_t seen_len, seen_cap, seen_lines, seen_dropped;
    sub_t *any_sub; /* ">": what feeds seen */
    int tracing;    /* trace() is on */
    int reload_asked;
    int promote_asked; /* promote(): the candidate takes over after the line */
    int incomplete; /* the last eval() wants more lines */
    char history[1024];
    struct event *stdin_ev;
    replay_job_t jobs[REPLAY_JOBS_MAX];
    int njobs;
    size_t npub; /* pub() calls of the current line */
    char *rbuf;  /* stored record read buffer */
    size_t rcap;
    int nrules; /* rules after the last line, to bind new durable handlers */
    char data_dir[4096];
    const char *data_from; /* why there: "--data", "storage { dir }", NULL: temporary */
    int in_line;           /* evaluating a line: output is not asynchronous */
    int rl_on;             /* readline's callback handler is installed */
    /* A remote session (tide repl --connect) only: */
    int remote;
    node_t *served;                  /* the node; its ->remote is this session */
    uint64_t conns[REPL_CONNS_MAX];  /* ids of the connections that use it */
    int nconns;
    int evaluating;                  /* a request is being answered: output is its reply */
    int end_asked;                   /* end once the request is answered */
    char *reply;                     /* the output of the request */
    size_t reply_len, reply_cap;
    msgq_t trace_out;                /* output between requests, for $TIDE.TRACE */
    struct event *flush_ev;          /* publishes it from the loop */
} repl_t;

static repl_t *the_repl; /* the terminal's prompt: readline's callback takes no context */

static void emit_remote(repl_t *r, const char *s, size_t n);

/* Where the prompt's output goes: the terminal, or (for a remote session)
 * the reply being built, or $TIDE.TRACE between requests. */
static void emit(repl_t *r, const char *s, size_t n)
{
    if (r->remote) {
        emit_remote(r, s, n);
        return;
    }
    if (r->tty && r->rl_on && !r->in_line) {
        /* Output between lines (a watcher, the trace of a durable handler,
         * a reload): above the prompt, which is drawn again with what was
         * typed so far. */
        char *typed = rl_copy_text(0, rl_end);
        int point = rl_point;
        rl_save_prompt();
        rl_replace_line("", 0);
        rl_redisplay();
        fwrite(s, 1, n, stdout);
        fflush(stdout);
        rl_restore_prompt();
        rl_replace_line(typed ? typed : "", 0);
        rl_point = point;
        rl_forced_update_display();
        free(typed);
        return;
    }
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

static void out(repl_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(repl_t *r, const char *fmt, ...)
{
    char small[2048], *buf = small;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof small) {
        buf = malloc((size_t)n + 1);
        if (!buf)
            return;
        va_start(ap, fmt);
        vsnprintf(buf, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    emit(r, buf, (size_t)n);
    if (buf != small)
        free(buf);
}

/* ---- deliveries seen by the prompt ------------------------------------------ */

/* The JSON line of a delivery, in the expected.jsonl shape of tide run. */
static cJSON *delivery_json(const proto_msg_t *m, int for_expect)
{
    cJSON *o = cJSON_CreateObject();
    char *subject = util_mem_dup(m->subject, m->subject_len);
    cJSON_AddStringToObject(o, "subject", subject ? subject : "");
    free(subject);
    cJSON *p = m->payload_len ? cJSON_ParseWithLength(m->payload, m->payload_len) : NULL;
    if (cJSON_IsObject(p)) {
        if (for_expect) {
            /* What tide generates differs on every run: match any value. */
            cJSON *src = cJSON_GetObjectItemCaseSensitive(p, "source");
            if (cJSON_IsString(src) && !strcmp(src->valuestring, "tide")) {
                if (cJSON_GetObjectItemCaseSensitive(p, "id"))
                    cJSON_ReplaceItemInObjectCaseSensitive(p, "id", cJSON_CreateString("*"));
                if (cJSON_GetObjectItemCaseSensitive(p, "time"))
                    cJSON_ReplaceItemInObjectCaseSensitive(p, "time", cJSON_CreateString("*"));
            }
        }
        cJSON_AddItemToObject(o, "event", p);
    } else if (p) {
        cJSON_AddItemToObject(o, "data", p);
    } else {
        char *raw = util_mem_dup(m->payload, m->payload_len);
        cJSON_AddStringToObject(o, "data", raw ? raw : "");
        free(raw);
    }
    return o;
}

static void print_delivery(repl_t *r, const char *tag, const proto_msg_t *m)
{
    int n = (int)(m->payload_len > 300 ? 300 : m->payload_len);
    out(r, "  <- [%s] %.*s  %.*s%s\n", tag, (int)m->subject_len, m->subject, n, m->payload,
        m->payload_len > 300 ? "..." : "");
}

/* A remote session's own output: watching it would feed it back to itself. */
static int is_trace(const proto_msg_t *m)
{
    return m->subject_len == 11 && !memcmp(m->subject, "$TIDE.TRACE", 11);
}

static void on_watch(void *ctx, const proto_msg_t *m)
{
    watch_t *w = ctx;
    if (!is_trace(m))
        print_delivery(w->r, w->pattern, m);
}

/* Keeps the delivery for expect(), up to REPL_SEEN_MAX bytes. */
static void on_any(void *ctx, const proto_msg_t *m)
{
    repl_t *r = ctx;
    if (is_trace(m))
        return;
    cJSON *d = delivery_json(m, 1);
    char *line = d ? cJSON_PrintUnformatted(d) : NULL;
    size_t n = line ? strlen(line) + 1 : 0;
    cJSON_Delete(d);
    if (!line || r->seen_len + n > REPL_SEEN_MAX) {
        r->seen_dropped++;
        goto done;
    }
    if (r->seen_len + n > r->seen_cap) {
        size_t cap = r->seen_cap ? r->seen_cap * 2 : 65536;
        while (cap < r->seen_len + n)
            cap *= 2;
        cap = cap > REPL_SEEN_MAX ? REPL_SEEN_MAX : cap;
        char *nb = realloc(r->seen, cap);
        if (!nb) {
            r->seen_dropped++;
            goto done;
        }
        r->seen = nb;
        r->seen_cap = cap;
    }
    memcpy(r->seen + r->seen_len, line, n - 1);
    r->seen[r->seen_len + n - 1] = '\n';
    r->seen_len += n;
    r->seen_lines++;
done:
    cJSON_free(line);
}

/* record(): what is published (before the pipeline), as tide run input. */
static void on_input(void *ctx, const proto_msg_t *m)
{
    repl_t *r = ctx;
    char subj[1024];
    snprintf(subj, sizeof subj, "%.*s", (int)m->subject_len, m->subject);
    for (int i = 0; i < r->nrecs; i++) {
        if (!r->recs[i].f || !subject_matches(r->recs[i].pattern, strlen(r->recs[i].pattern), subj, strlen(subj)))
            continue;
        cJSON *line = delivery_json(m, 0);
        if (m->hdr && m->hdr_len) { /* the headers too: tide run sends them again */
            cJSON *hd = cJSON_CreateObject();
            const char *p = memchr(m->hdr, '\n', m->hdr_len), *end = m->hdr + m->hdr_len;
            for (p = p ? p + 1 : end; p < end;) {
                const char *eol = memchr(p, '\n', (size_t)(end - p));
                const char *le = eol ? eol : end;
                const char *colon = memchr(p, ':', (size_t)(le - p));
                if (colon) {
                    char *k = util_mem_dup(p, (size_t)(colon - p));
                    const char *v = colon + 1;
                    while (v < le && *v == ' ')
                        v++;
                    size_t vl = (size_t)(le - v);
                    if (vl && v[vl - 1] == '\r')
                        vl--;
                    char *val = util_mem_dup(v, vl);
                    if (k && val && !cJSON_GetObjectItemCaseSensitive(hd, k))
                        cJSON_AddStringToObject(hd, k, val);
                    free(k);
                    free(val);
                }
                p = eol ? eol + 1 : end;
            }
            if (cJSON_GetArraySize(hd))
                cJSON_AddItemToObject(line, "headers", hd);
            else
                cJSON_Delete(hd);
        }
        char *s = cJSON_PrintUnformatted(line);
        fprintf(r->recs[i].f, "%s\n", s);
        fflush(r->recs[i].f);
        cJSON_free(s);
        cJSON_Delete(line);
    }
}

static void on_trace(void *ctx, const char *line)
{
    out(ctx, "%s\n", line);
}

/* ---- helpers at the prompt ------------------------------------------------- */

/* The prompt a helper belongs to.  Its first upvalue is a box the prompt
 * empties when a remote session ends, so a helper kept by a rule (local p =
 * pub) then raises an error instead of touching a freed session. */
static repl_t *up(lua_State *L)
{
    repl_t **box = lua_touserdata(L, lua_upvalueindex(1));
    if (!box || !*box)
        luaL_error(L, "the tide repl --connect session this helper came from has ended");
    return *box;
}

/* pub's header block from the headers table at index 3, pushed (index 4;
 * the stack above 3 must be empty); returns how many headers it holds.
 * Built by concatenation, so the stack stays free for lua_next. */
static int pub_headers(lua_State *L)
{
    int nh = 0;
    lua_pushliteral(L, "NATS/1.0\r\n");
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) { /* 5 = name, 6 = value */
            if (lua_type(L, 5) != LUA_TSTRING) /* (tostring on a key would derail lua_next) */
                return luaL_error(L, "pub: header names must be strings");
            const char *v = luaL_tolstring(L, 6, NULL); /* 7 */
            if (strpbrk(v, "\r\n") || strpbrk(lua_tostring(L, 5), ":\r\n"))
                return luaL_error(L, "pub: header names hold no ':' and values no CR/LF");
            lua_pushvalue(L, 4);
            lua_pushvalue(L, 5);
            lua_pushliteral(L, ": ");
            lua_pushvalue(L, 7);
            lua_pushliteral(L, "\r\n");
            lua_concat(L, 5);
            lua_replace(L, 4);
            lua_settop(L, 5);
            nh++;
        }
    }
    lua_pushliteral(L, "\r\n");
    lua_concat(L, 2); /* index 4 */
    return nh;
}

/* pub's payload, pushed: the data at index 2 as it is when a string, else
 * the data of a new CloudEvents envelope whose type is the subject (1). */
static void pub_payload(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING) {
        lua_pushvalue(L, 2);
        return;
    }
    /* tide.json.encode of an envelope, built in Lua for brevity. */
    static const char build[] = "local subject, data = ...\n"
                                "return tide.json.encode({ specversion = '1.0', id = tostring(math.random(1, 2^40)),\n"
                                "  source = 'tide.repl', type = subject, data = data })";
    if (luaL_loadstring(L, build) != LUA_OK)
        lua_error(L);
    lua_pushvalue(L, lua_upvalueindex(2)); /* the sandbox env, for tide.json */
    lua_setupvalue(L, -2, 1);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_call(L, 2, 1);
}

/* pub(subject, data [, headers [, client]]): queued, run after the
 * current line; client ({ user = ..., id, addr, tls }) is who the event
 * shows as e.client. */
static int h_pub(lua_State *L)
{
    repl_t *r = up(L);
    size_t sl;
    const char *subject = luaL_checklstring(L, 1, &sl);
    if (!subject_valid_literal(subject, sl))
        return luaL_error(L, "pub: invalid subject '%s'", subject);
    luaL_checkany(L, 2);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    script_identity_t id;
    int has_id = !lua_isnoneornil(L, 4);
    if (has_id)
        script_identity_from_lua(L, 4, &id, "pub");
    lua_settop(L, 3);
    int nh = pub_headers(L); /* index 4 */
    pub_payload(L);          /* index 5 */
    size_t hl, pl;
    const char *hs = lua_tolstring(L, 4, &hl);
    const char *ps = lua_tolstring(L, 5, &pl);
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = subject;
    m.subject_len = sl;
    m.payload = ps;
    m.payload_len = pl;
    if (nh) {
        m.hdr = hs;
        m.hdr_len = hl;
    }
    /* Nothing below raises before the queue owns who. */
    script_identity_t *who = has_id ? malloc(sizeof *who) : NULL;
    if ((has_id && !who) || msgq_push(&r->pending, &m, 0) < 0) {
        free(who);
        return luaL_error(L, "out of memory");
    }
    if (who)
        *who = id;
    r->pending.tail->tag = who;
    r->npub++;
    return 0;
}

/* sub(pattern): print what is delivered there. */
static int h_sub(lua_State *L)
{
    repl_t *r = up(L);
    size_t n;
    const char *pattern = luaL_checklstring(L, 1, &n);
    if (!subject_valid_pattern(pattern, n) || n >= sizeof r->watches[0].pattern)
        return luaL_error(L, "sub: invalid subject pattern '%s'", pattern);
    for (int i = 0; i < 32; i++)
        if (r->watches[i].sub && !strcmp(r->watches[i].pattern, pattern))
            return 0;
    for (int i = 0; i < 32; i++) {
        watch_t *w = &r->watches[i];
        if (!w->sub) {
            snprintf(w->pattern, sizeof w->pattern, "%s", pattern);
            w->r = r;
            /* As a client's subscription: on a node in cluster mode it
             * sees what every node publishes on pattern. */
            w->sub = server_subscribe_as_client(r->node.srv, pattern, on_watch, w);
            if (!w->sub)
                return luaL_error(L, "out of memory");
            out(r, "watching %s\n", pattern);
            return 0;
        }
    }
    return luaL_error(L, "sub: at most 32 patterns");
}

static int h_unsub(lua_State *L)
{
    repl_t *r = up(L);
    const char *pattern = luaL_checkstring(L, 1);
    for (int i = 0; i < 32; i++) {
        if (r->watches[i].sub && !strcmp(r->watches[i].pattern, pattern)) {
            server_unsubscribe_internal(r->node.srv, r->watches[i].sub);
            r->watches[i].sub = NULL;
        }
    }
    return 0;
}

static int h_trace(lua_State *L)
{
    repl_t *r = up(L);
    int on = lua_isnone(L, 1) ? 1 : lua_toboolean(L, 1);
    script_set_trace(r->node.scripts, on ? on_trace : NULL, r);
    r->tracing = on;
    out(r, "trace %s\n", on ? "on: every event's path is shown" : "off");
    return 0;
}

static int h_rules(lua_State *L)
{
    repl_t *r = up(L);
    char *buf = NULL;
    size_t len = 0;
    script_rules_json(r->node.scripts, &buf, &len);
    cJSON *arr = buf ? cJSON_ParseWithLength(buf, len) : NULL;
    cJSON *rule;
    int n = 0;
    cJSON_ArrayForEach(rule, arr) {
        cJSON *kind = cJSON_GetObjectItem(rule, "kind"), *pat = cJSON_GetObjectItem(rule, "pattern"),
              *type = cJSON_GetObjectItem(rule, "type"), *where = cJSON_GetObjectItem(rule, "where"),
              *calls = cJSON_GetObjectItem(rule, "calls"), *errors = cJSON_GetObjectItem(rule, "errors"),
              *from = cJSON_GetObjectItem(rule, "from_version"), *dropped = cJSON_GetObjectItem(rule, "dropped");
        char what[300];
        if (from)
            snprintf(what, sizeof what, "%s v%d->v%d", type->valuestring, (int)from->valuedouble,
                     (int)from->valuedouble + 1);
        else
            snprintf(what, sizeof what, "%s", pat->valuestring);
        out(r, "  %-8s %-28s %-24s calls %d, errors %d", kind->valuestring, what, where->valuestring,
            (int)calls->valuedouble, (int)errors->valuedouble);
        if (dropped)
            out(r, ", dropped %d", (int)dropped->valuedouble);
        out(r, "\n");
        cJSON *le = cJSON_GetObjectItem(rule, "last_error"), *at = cJSON_GetObjectItem(le, "at"),
              *msg = cJSON_GetObjectItem(le, "message");
        if (cJSON_IsString(at) && cJSON_IsString(msg))
            out(r, "           last error, raised at %s: %s\n", at->valuestring, msg->valuestring);
        n++;
    }
    if (!n)
        out(r, "  no rules yet: try  filter(\"order.created\", function(e) return e.data.amount > 100 end)\n");
    cJSON_Delete(arr);
    free(buf);
    return 0;
}

static int h_stats(lua_State *L)
{
    repl_t *r = up(L);
    server_stats_t s;
    script_stats_t st;
    server_get_stats(r->node.srv, &s);
    script_get_stats(r->node.scripts, &st);
    lua_createtable(L, 0, 16);
#define F(name, v)                                                                                                     \
    do {                                                                                                               \
        lua_pushinteger(L, (lua_Integer)(v));                                                                          \
        lua_setfield(L, -2, name);                                                                                     \
    } while (0)
    F("events", st.events);
    F("bypassed", st.bypassed);
    F("dropped", st.dropped);
    F("dead_letters", st.dead_letters);
    F("dead_letters_lost", st.dead_letters_lost);
    F("errors", st.errors);
    F("emitted", st.emitted);
    F("loops_stopped", st.loops_stopped);
    F("reloads", st.reloads);
    F("rules", st.rules);
    F("lua_memory", st.memory);
    F("deliveries", s.out_msgs);
    F("connections", s.connections);
#undef F
    return 1;
}

/* ---- files a remote session may touch -------------------------------------- */

/* A remote session (tide repl --connect) runs on the node for whoever
 * connected, so its file helpers reach no further than the docs say:
 * load reads files of the rules' directory (a relative path without ".."),
 * record and expect write plain file names in <data dir>/repl.  The
 * node's own prompt (tide repl) may use any path.  Raises the error. */
static void remote_path(repl_t *r, lua_State *L, const char *what, const char *name, char *out, size_t n)
{
    if (!r->remote) {
        snprintf(out, n, "%s", name);
        return;
    }
    if (!strcmp(what, "load")) {
        const char *dir = script_config_dir(r->served->scripts);
        if (name[0] == '/' || !strcmp(name, "..") || !strncmp(name, "../", 3) || strstr(name, "/../") ||
            (strlen(name) >= 3 && !strcmp(name + strlen(name) - 3, "/..")))
            luaL_error(L, "load: a remote prompt loads only files of the rules' directory (a relative path "
                          "without '..'), not '%s'", name);
        if ((size_t)snprintf(out, n, "%s/%s", dir ? dir : ".", name) >= n)
            luaL_error(L, "load: path too long");
        return;
    }
    size_t len = strlen(name);
    if (!len || len > 128 || name[0] == '.' || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                            "0123456789._-") != len)
        luaL_error(L, "%s: a remote prompt writes only plain file names (letters, digits, '.', '_', '-'), "
                      "kept in the node's %s/repl, not '%s'", what, r->served->data_dir, name);
    char dir[sizeof r->served->data_dir + 8];
    snprintf(dir, sizeof dir, "%s/repl", r->served->data_dir);
    if ((mkdir(r->served->data_dir, 0700) < 0 && errno != EEXIST) || (mkdir(dir, 0700) < 0 && errno != EEXIST))
        luaL_error(L, "%s: cannot make %s: %s", what, dir, strerror(errno));
    if ((size_t)snprintf(out, n, "%s/%s", dir, name) >= n)
        luaL_error(L, "%s: path too long", what);
}

static int h_load(lua_State *L)
{
    repl_t *r = up(L);
    char path[PATH_MAX], err[1024];
    remote_path(r, L, "load", luaL_checkstring(L, 1), path, sizeof path);
    /* Run outside this call's stack frame, but still inside the line's budget. */
    if (script_load_file(r->node.scripts, path, err, sizeof err) < 0)
        return luaL_error(L, "%s", err);
    out(r, "loaded %s\n", path);
    return 0;
}

static int h_reload(lua_State *L)
{
    repl_t *r = up(L);
    r->reload_asked = 1;
    (void)L;
    return 0;
}

/* shadow(path): a candidate beside the rules, in dry mode (docs/deploys.md). */
static int h_shadow(lua_State *L)
{
    repl_t *r = up(L);
    char path[PATH_MAX], err[1024];
    remote_path(r, L, "load", luaL_checkstring(L, 1), path, sizeof path);
    if (script_shadow_start(r->node.scripts, path, err, sizeof err) < 0)
        return luaL_error(L, "shadow: %s", err);
    out(r, "shadow of %s: every event also goes through it, in dry mode; diff() shows what differs\n", path);
    return 0;
}

/* Prints a sample's side (a JSON array of lines). */
static void out_lines(repl_t *r, const char *side, const cJSON *lines)
{
    const cJSON *l;
    if (!cJSON_GetArraySize(lines))
        out(r, "    %-10s (nothing)\n", side);
    cJSON_ArrayForEach(l, lines)
        out(r, "    %-10s %s\n", l == lines->child ? side : "", cJSON_IsString(l) ? l->valuestring : "?");
}

/* diff(): what the shadow's candidate would have done differently. */
static int h_diff(lua_State *L)
{
    repl_t *r = up(L);
    size_t len = 0;
    char *json = script_shadow_diff_json(r->node.scripts, &len);
    cJSON *d = json ? cJSON_ParseWithLength(json, len) : NULL, *k, *x;
    free(json);
    if (!d)
        return luaL_error(L, "diff: no shadow is running (shadow(\"candidate.lua\") starts one)");
    out(r, "%s %s: %d events, %d differ\n ", cJSON_GetStringValue(cJSON_GetObjectItem(d, "mode")),
        cJSON_GetStringValue(cJSON_GetObjectItem(d, "path")), (int)cJSON_GetNumberValue(cJSON_GetObjectItem(d, "events")),
        (int)cJSON_GetNumberValue(cJSON_GetObjectItem(d, "differ")));
    cJSON_ArrayForEach(k, cJSON_GetObjectItem(d, "kinds"))
        out(r, " %s %d", k->string, (int)k->valuedouble);
    out(r, "\n");
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(d, "samples")) {
        out(r, "  event %s\n", cJSON_GetStringValue(cJSON_GetObjectItem(x, "subject")));
        out_lines(r, "live", cJSON_GetObjectItem(x, "live"));
        out_lines(r, "candidate", cJSON_GetObjectItem(x, "candidate"));
    }
    cJSON_Delete(d);
    return 0;
}

/* promote(): the candidate becomes the live rules, after this line (as reload()). */
static int h_promote(lua_State *L)
{
    repl_t *r = up(L);
    if (!script_shadow_running(r->node.scripts))
        return luaL_error(L, "promote: no shadow is running (shadow(\"candidate.lua\") starts one)");
    r->promote_asked = 1;
    return 0;
}

/* record(pattern, "file.jsonl"): append what is published there, as it
 * comes in (before the pipeline), as tide run input. */
static int h_record(lua_State *L)
{
    repl_t *r = up(L);
    size_t n;
    const char *pattern = luaL_checklstring(L, 1, &n);
    char file[PATH_MAX];
    if (!subject_valid_pattern(pattern, n) || n >= sizeof r->recs[0].pattern)
        return luaL_error(L, "record: invalid subject pattern '%s'", pattern);
    if (r->nrecs == 8)
        return luaL_error(L, "record: at most 8 recordings");
    remote_path(r, L, "record", luaL_checkstring(L, 2), file, sizeof file);
    FILE *f = fopen(file, "a");
    if (!f)
        return luaL_error(L, "record: cannot open %s: %s", file, strerror(errno));
    snprintf(r->recs[r->nrecs].pattern, sizeof r->recs[0].pattern, "%s", pattern);
    r->recs[r->nrecs++].f = f;
    out(r, "recording %s to %s\n", pattern, file);
    return 0;
}

/* expect("file.jsonl"): what was delivered since the start (or the last
 * expect) becomes an expectation file for tide run --expect. */
static int h_expect(lua_State *L)
{
    repl_t *r = up(L);
    char file[PATH_MAX];
    remote_path(r, L, "expect", luaL_checkstring(L, 1), file, sizeof file);
    FILE *f = fopen(file, "w");
    if (!f)
        return luaL_error(L, "expect: cannot write %s: %s", file, strerror(errno));
    int ok = fwrite(r->seen ? r->seen : "", 1, r->seen_len, f) == r->seen_len;
    if (fclose(f) != 0 || !ok)
        return luaL_error(L, "expect: cannot write %s: %s", file, strerror(errno));
    out(r, "wrote %zu deliveries to %s\n", r->seen_lines, file);
    if (r->seen_dropped)
        out(r, "(%zu later deliveries are not in it: expect() keeps %u MB of them; call it more often)\n",
            r->seen_dropped, REPL_SEEN_MAX >> 20);
    free(r->seen);
    r->seen = NULL;
    r->seen_len = r->seen_cap = r->seen_lines = r->seen_dropped = 0;
    return 0;
}

/* ---- streams ------------------------------------------------------------------- */

static void set_int(lua_State *L, const char *k, double v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

/* streams(): { <name> = { name, subjects, messages, bytes, first_seq,
 * last_seq, fsync, consumers = { <name> = {...} } } } */
static int h_streams(lua_State *L)
{
    repl_t *r = up(L);
    streams_t *sm = r->node.streams;
    if (!sm || !streams_count(sm)) {
        out(r, "no streams: declare them in the flow (stream \"orders\" { subjects = {...} }) and start\n"
            "tide repl -c flow.lua\n");
        return 0;
    }
    lua_createtable(L, 0, streams_count(sm));
    stream_info_t si;
    for (int i = 0; streams_stream_info(sm, NULL, i, &si); i++) {
        const stream_cfg_t *sc = si.cfg;
        const slog_info_t *in = &si.log;
        lua_createtable(L, 0, 10);
        lua_pushstring(L, sc->name);
        lua_setfield(L, -2, "name");
        lua_createtable(L, sc->nsubjects, 0);
        for (int k = 0; k < sc->nsubjects; k++) {
            lua_pushstring(L, sc->subjects[k]);
            lua_rawseti(L, -2, k + 1);
        }
        lua_setfield(L, -2, "subjects");
        set_int(L, "messages", (double)in->msgs);
        set_int(L, "bytes", (double)in->bytes);
        set_int(L, "first_seq", (double)in->first_seq);
        set_int(L, "last_seq", (double)in->last_seq);
        lua_pushstring(L, sc->o.fsync == FSYNC_ALWAYS ? "always" : sc->o.fsync == FSYNC_INTERVAL ? "interval"
                                                                                              : "never");
        lua_setfield(L, -2, "fsync");
        lua_createtable(L, 0, si.nconsumers);
        consumer_info_t ci;
        for (int k = 0; streams_consumer_info(sm, sc->name, k, &ci); k++) {
            const consumer_cfg_t *cfg = ci.cfg;
            lua_createtable(L, 0, 12);
            lua_pushstring(L, cfg->name);
            lua_setfield(L, -2, "name");
            if (cfg->filter[0]) {
                lua_pushstring(L, cfg->filter);
                lua_setfield(L, -2, "filter");
            }
            if (cfg->deliver[0]) {
                lua_pushstring(L, cfg->deliver);
                lua_setfield(L, -2, "deliver");
            } else {
                lua_pushboolean(L, ci.handlers);
                lua_setfield(L, -2, "handlers");
            }
            set_int(L, "next_seq", (double)ci.next_seq);
            set_int(L, "pending", (double)ci.pending);
            set_int(L, "in_flight", (double)ci.in_flight);
            set_int(L, "delivered", (double)ci.delivered);
            set_int(L, "redelivered", (double)ci.redelivered);
            set_int(L, "acked", (double)ci.acked);
            set_int(L, "dead_lettered", (double)ci.dead_lettered);
            lua_setfield(L, -2, cfg->name);
        }
        lua_setfield(L, -2, "consumers");
        lua_setfield(L, -2, sc->name);
    }
    return 1;
}

/* replay(stream, from [, to [, { consumer = name }]]): queued, run after the line. */
static int h_replay(lua_State *L)
{
    repl_t *r = up(L);
    streams_t *sm = r->node.streams;
    size_t nl;
    const char *name = luaL_checklstring(L, 1, &nl);
    lua_Integer from = luaL_checkinteger(L, 2);
    lua_Integer to = luaL_optinteger(L, 3, 0);
    if (!lua_isnoneornil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);
    if (!sm || strlen(name) != nl || !streams_stream_info(sm, name, 0, NULL))
        return luaL_error(L, "replay: no stream '%s'%s", name,
                          sm ? " (streams() lists them)" : " (this flow declares none)");
    if (from < 1 || to < 0 || (to && to < from))
        return luaL_error(L, "replay: sequences from 1 on, and to >= from");
    if (r->njobs == REPLAY_JOBS_MAX)
        return luaL_error(L, "replay: at most %d per line", REPLAY_JOBS_MAX);
    replay_job_t *j = &r->jobs[r->njobs];
    memset(j, 0, sizeof *j);
    snprintf(j->stream, sizeof j->stream, "%s", name);
    if (lua_istable(L, 4)) {
        lua_getfield(L, 4, "consumer");
        const char *c = lua_tostring(L, -1);
        if (!lua_isnil(L, -1)) {
            const consumer_cfg_t *found = NULL, *cfg;
            for (int k = 0; c && !found && (cfg = streams_consumer_info(sm, NULL, k, NULL)); k++)
                if (!strcmp(cfg->name, c) && !strcmp(cfg->stream, name))
                    found = cfg;
            if (!found)
                return luaL_error(L, "replay: stream '%s' has no consumer '%s'", name, c ? c : "?");
            if (found->deliver[0])
                return luaL_error(L, "replay: consumer '%s' delivers to %s, not to Lua handlers", c, found->deliver);
            snprintf(j->consumer, sizeof j->consumer, "%s", c);
        }
        lua_pop(L, 1);
    }
    j->from = (uint64_t)from;
    j->to = (uint64_t)to;
    j->after = r->npub;
    r->njobs++;
    return 0;
}

static const char *verdict_name(int kind)
{
    return kind == VERDICT_ACK ? "ack" : kind == VERDICT_NAK ? "nak" : kind == VERDICT_PROGRESS ? "progress" : "term";
}

/*
 * Runs stored events again: through the pipeline (the current rules, the
 * trace), or to a consumer's Lua handlers (its filter applies; the
 * consumer's own position and state are not touched).  Capture is paused
 * meanwhile: neither the events nor what they cause are stored again.
 */
static void run_replay(repl_t *r, const replay_job_t *j)
{
    streams_t *sm = r->node.streams;
    stream_info_t si;
    if (!sm || !streams_stream_info(sm, j->stream, 0, &si)) {
        out(r, "replay: stream %s is gone\n", j->stream);
        return;
    }
    const consumer_cfg_t *cc = NULL, *cfg;
    for (int k = 0; j->consumer[0] && !cc && (cfg = streams_consumer_info(sm, j->stream, k, NULL)); k++)
        if (!strcmp(cfg->name, j->consumer))
            cc = cfg;
    if (j->consumer[0] && (!cc || streams_call_handlers(sm, j->stream, cc->name, NULL, 0, NULL) < 0)) {
        out(r, "replay: consumer %s is gone\n", j->consumer);
        return;
    }
    const slog_info_t in = si.log;
    uint64_t from = j->from < in.first_seq ? in.first_seq : j->from;
    uint64_t to = !j->to || j->to > in.last_seq ? in.last_seq : j->to;
    uint64_t n = 0, missing = 0, filtered = 0;
    int was = server_pause_capture(r->node.srv, 1);
    for (uint64_t seq = from; in.msgs && seq <= to; seq++) {
        slog_rec_t rec;
        if (streams_read(sm, j->stream, seq, &rec, &r->rbuf, &r->rcap) <= 0) {
            missing++; /* deleted by retention, or a damaged record skipped */
            continue;
        }
        proto_msg_t m;
        memset(&m, 0, sizeof m);
        m.subject = rec.subject;
        m.subject_len = rec.subject_len;
        m.hdr = rec.hdr_len ? rec.hdr : NULL;
        m.hdr_len = rec.hdr_len;
        m.payload = rec.payload;
        m.payload_len = rec.payload_len;
        if (!cc) {
            server_publish(r->node.srv, NULL, &m);
            n++;
            continue;
        }
        if (cc->filter[0] && !subject_matches(cc->filter, strlen(cc->filter), rec.subject, rec.subject_len)) {
            filtered++;
            continue;
        }
        stream_verdict_t v;
        memset(&v, 0, sizeof v);
        streams_call_handlers(sm, j->stream, cc->name, &m, seq, &v);
        out(r, "  %s seq %llu  %.*s  %s%s%s\n", cc->name, (unsigned long long)seq, (int)rec.subject_len, rec.subject,
            verdict_name(v.kind), v.error[0] ? ": " : "", v.error);
        n++;
    }
    server_pause_capture(r->node.srv, was);
    out(r, "replayed %llu event%s of %s", (unsigned long long)n, n == 1 ? "" : "s", j->stream);
    if (in.msgs && from <= to)
        out(r, " (sequences %llu..%llu)", (unsigned long long)from, (unsigned long long)to);
    if (cc)
        out(r, " to the handlers of %s", cc->name);
    if (filtered)
        out(r, ", %llu outside its filter", (unsigned long long)filtered);
    if (missing)
        out(r, ", %llu not in the stream", (unsigned long long)missing);
    out(r, "; nothing was stored\n");
}

/* Handlers typed (or loaded) at the prompt for a durable consumer: bind it. */
static void bind_new_handlers(repl_t *r)
{
    script_stats_t stt;
    script_get_stats(r->node.scripts, &stt);
    if (stt.rules == r->nrules)
        return;
    r->nrules = stt.rules;
    char err[512];
    if (script_bind_durable(r->node.scripts, err, sizeof err) < 0)
        out(r, "%s\n", err);
}

/* print() at the prompt goes to the terminal, not to the log. */
static int h_print(lua_State *L)
{
    repl_t *r = up(L);
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *s = luaL_tolstring(L, i, &len);
        if (i > 1)
            emit(r, "\t", 1);
        emit(r, s, len);
        lua_pop(L, 1);
    }
    emit(r, "\n", 1);
    return 0;
}

static int h_help(lua_State *L)
{
    repl_t *r = up(L);
    out(r, "rules      upgrade(type, v, fn)  filter(pat, fn)  route(pat, fn)  on(pat, fn(e, ctx))\n"
        "events     pub(subject, data_or_string [, headers [, {user = ...}]])   sub(pattern)   unsub(pattern)\n"
        "see        trace([false])   rules()   stats()\n"
        "deploys    shadow(\"candidate.lua\")   diff()   promote()   (docs/deploys.md)\n"
        "files      load \"file.lua\"   reload()   record(pattern, \"in.jsonl\") (what is published)\n"
        "           expect(\"out.jsonl\") (what was delivered since the last expect)\n"
        "streams    streams() (messages, sequences, consumers)   replay(stream, from [, to])\n"
        "           (stored events through today's rules, not stored again;\n"
        "           replay(stream, from, to, { consumer = name }): to that consumer's handlers)\n"
        "state      tide.kv.get/set/incr ...   (Lua globals reset on reload)\n"
        "A line that is an expression prints its value; Ctrl-D leaves.\n");
    return 0;
}

static const luaL_Reg helpers[] = {{"pub", h_pub},       {"sub", h_sub},       {"tail", h_sub},
                                    {"unsub", h_unsub},   {"trace", h_trace},   {"rules", h_rules},
                                    {"stats", h_stats},   {"load", h_load},     {"reload", h_reload},
                                    {"record", h_record}, {"expect", h_expect}, {"help", h_help},
                                    {"print", h_print},   {"streams", h_streams}, {"replay", h_replay},
                                    {"shadow", h_shadow}, {"diff", h_diff},   {"promote", h_promote},
                                    {NULL, NULL}};

/*
 * Puts the helpers into the scripts' environment (a state made by a reload
 * gets them again).  What they replace (the sandbox's print, a rule file's
 * own pub) is kept in the registry under r, with the helpers' box at [1],
 * for uninstall_helpers.
 */
static void install_helpers(repl_t *r)
{
    lua_State *L = script_lua(r->node.scripts);
    script_push_env(r->node.scripts);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, r) != LUA_TTABLE) { /* not yet in this state */
        lua_pop(L, 1);
        lua_createtable(L, 1, 16);
        for (const luaL_Reg *f = helpers; f->name; f++) {
            lua_getfield(L, -2, f->name);
            lua_setfield(L, -2, f->name);
        }
        repl_t **box = lua_newuserdatauv(L, sizeof *box, 0);
        *box = r;
        lua_rawseti(L, -2, 1);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, r);
    }
    for (const luaL_Reg *f = helpers; f->name; f++) {
        lua_rawgeti(L, -1, 1);
        lua_pushvalue(L, -3); /* the env, for helpers that run Lua */
        lua_pushcclosure(L, f->func, 2);
        lua_setfield(L, -3, f->name);
    }
    lua_pop(L, 2);
}

/* Puts back what install_helpers replaced, and empties the helpers' box. */
static void uninstall_helpers(repl_t *r)
{
    lua_State *L = script_lua(r->node.scripts);
    script_push_env(r->node.scripts);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, r) == LUA_TTABLE) {
        lua_rawgeti(L, -1, 1);
        repl_t **box = lua_touserdata(L, -1);
        if (box)
            *box = NULL;
        lua_pop(L, 1);
        for (const luaL_Reg *f = helpers; f->name; f++) {
            lua_getfield(L, -1, f->name);
            lua_setfield(L, -3, f->name);
        }
        lua_pushnil(L);
        lua_rawsetp(L, LUA_REGISTRYINDEX, r);
    }
    lua_pop(L, 2);
}

static void reinstall(void *ctx)
{
    repl_t *r = ctx;
    install_helpers(r);
    if (r->tty)
        out(r, "\n(rules reloaded)\n");
}

/* ---- one line ---------------------------------------------------------------- */

/* Drops the pub() calls not run, and their identities. */
static void pending_clear(repl_t *r)
{
    for (msgq_item_t *it = r->pending.head; it; it = it->next)
        free(it->tag);
    msgq_clear(&r->pending);
}

static void run_pending(repl_t *r)
{
    msgq_item_t *it;
    size_t done = 0;
    int j = 0;
    for (;;) {
        while (j < r->njobs && r->jobs[j].after <= done)
            run_replay(r, &r->jobs[j++]);
        if (!(it = msgq_pop(&r->pending)))
            break;
        script_set_identity(r->node.scripts, it->tag);
        server_publish(r->node.srv, NULL, &it->m);
        script_set_identity(r->node.scripts, NULL);
        free(it->tag);
        msgq_item_free(it);
        done++;
    }
    while (j < r->njobs)
        run_replay(r, &r->jobs[j++]);
    r->njobs = 0;
    r->npub = 0;
}

/* Is this the syntax error of a statement that is not finished yet? */
static int incomplete(lua_State *L, int status)
{
    if (status != LUA_ERRSYNTAX)
        return 0;
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    return len >= 5 && !strcmp(msg + len - 5, "<eof>");
}

static void print_results(repl_t *r, lua_State *L, int base)
{
    int n = lua_gettop(L) - base;
    if (n <= 0)
        return;
    script_push_env(r->node.scripts);
    lua_getfield(L, -1, "require");
    lua_pushliteral(L, "tide.pretty");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        out(r, "(cannot print: %s)\n", lua_tostring(L, -1));
        lua_settop(L, base);
        return;
    }
    lua_remove(L, -2); /* env */
    lua_insert(L, base + 1);
    if (script_pcall(r->node.scripts, n, 1) == LUA_OK)
        out(r, "%s\n", lua_tostring(L, -1));
    else
        out(r, "(cannot print: %s)\n", lua_tostring(L, -1));
    lua_settop(L, base);
}

static void eval(repl_t *r, const char *code)
{
    lua_State *L = script_lua(r->node.scripts);
    int base = lua_gettop(L);
    /* An expression first (as the standalone interpreter does), then a statement. */
    lua_pushfstring(L, "return %s;", code);
    int status = luaL_loadbufferx(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=prompt", "t");
    lua_remove(L, -2);
    if (status != LUA_OK) {
        lua_pop(L, 1);
        status = luaL_loadbufferx(L, code, strlen(code), "=prompt", "t");
    }
    if (!incomplete(L, status) && status != LUA_OK) {
        /* "1 +" fails as a statement, but as an expression it is only unfinished. */
        lua_pushfstring(L, "return %s", code);
        int st2 = luaL_loadbufferx(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=prompt", "t");
        int more = incomplete(L, st2);
        lua_settop(L, base + 1);
        if (more) {
            lua_settop(L, base);
            r->incomplete = 1;
            return;
        }
    }
    if (incomplete(L, status)) {
        lua_settop(L, base);
        r->incomplete = 1;
        return; /* the caller keeps the buffer and asks for more */
    }
    r->incomplete = 0;
    free(r->buf);
    r->buf = NULL;
    r->buf_len = 0;
    if (status == LUA_OK) {
        script_push_env(r->node.scripts);
        lua_setupvalue(L, -2, 1);
        status = script_pcall(r->node.scripts, 0, LUA_MULTRET);
    }
    if (status != LUA_OK) {
        out(r, "error: %s\n", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(no message)");
        lua_settop(L, base);
    } else {
        print_results(r, L, base);
    }
    bind_new_handlers(r);
    run_pending(r);
    if (r->promote_asked) {
        char err[1024];
        r->promote_asked = 0;
        if (script_shadow_promote(r->node.scripts, err, sizeof err) == 0)
            out(r, "promoted: the candidate is the live rules\n");
        else
            out(r, "promote failed, the previous rules keep running: %s\n", err);
    }
    if (r->reload_asked) {
        char err[1024];
        r->reload_asked = 0;
        if (script_reload(r->node.scripts, "prompt", err, sizeof err) == 0) {
            out(r, "reloaded%s\n", r->entry ? "" : " (no entry file: the rules typed at the prompt are gone)");
        } else {
            out(r, "reload failed, the previous rules keep running: %s\n", err);
        }
    }
}

static void handle_line(char *line)
{
    repl_t *r = the_repl;
    if (!line) {
        r->done = 1;
        r->in_line = 1; /* (no prompt drawn again: the session ends) */
        out(r, "\n");
        return;
    }
    r->in_line = 1;
    if (r->tty && *line)
        add_history(line);
    if (r->history[0] && *line) {
        append_history(1, r->history);
    }
    size_t n = strlen(line);
    char *nb = realloc(r->buf, r->buf_len + n + 2);
    if (nb) {
        if (r->buf_len)
            nb[r->buf_len++] = '\n';
        memcpy(nb + r->buf_len, line, n + 1);
        r->buf = nb;
        r->buf_len += n;
        if (r->buf_len && strspn(r->buf, " \t") < r->buf_len)
            eval(r, r->buf);
        else {
            free(r->buf);
            r->buf = NULL;
            r->buf_len = 0;
        }
    }
    if (r->tty)
        free(line);
    if (r->tty)
        rl_set_prompt(r->buf ? ">> " : "> ");
    r->in_line = 0;
}

static void on_stdin(evutil_socket_t fd, short what, void *arg)
{
    repl_t *r = arg;
    (void)fd;
    (void)what;
    if (r->tty) {
        rl_callback_read_char();
    } else {
        static char *line;
        static size_t cap;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            handle_line(NULL);
        } else {
            if (n && line[n - 1] == '\n')
                line[n - 1] = '\0';
            handle_line(line);
        }
    }
    if (r->done)
        server_shutdown(r->node.srv);
}

/* The flow's streams, as tide serve sets them up, in --data DIR, else the
 * flow's storage { dir }, else a temporary directory (removed at exit). */
static int open_streams(repl_t *r, const char *data_flag)
{
    const char *sd = script_storage_dir(r->node.scripts);
    char err[1024];
    if (!script_declared_streams(r->node.scripts) && !data_flag && !sd)
        return 0;
    if (data_flag) {
        snprintf(r->data_dir, sizeof r->data_dir, "%s", data_flag);
        r->data_from = "--data";
    } else if (sd) {
        snprintf(r->data_dir, sizeof r->data_dir, "%s", sd);
        r->data_from = "storage { dir }";
    } else if (flow_make_tmpdir("tide-repl", r->data_dir, sizeof r->data_dir) < 0) {
        fprintf(stderr, "tide repl: cannot make a temporary data directory: %s\n", strerror(errno));
        r->data_dir[0] = '\0';
        return -1;
    }
    if (!(r->node.streams = streams_new(r->node.srv, r->data_dir))) {
        fprintf(stderr, "tide repl: cannot set up the streams\n");
        return -1;
    }
    /* The streams made through the JetStream API too, with the bucket
     * `tide` that tide.kv is, as tide serve has them. */
    int failed;
    r->node.jsapi = jsapi_start(&r->node, &failed);
    if (failed)
        return -1;
    if (r->node.jsapi)
        script_host_set_bucket_maker(r->node.scripts, jsapi_bucket_make, r->node.jsapi);
    if (script_host_set_streams(r->node.scripts, r->node.streams, err, sizeof err) < 0) {
        fprintf(stderr, "tide repl: %s\n", err);
        return -1;
    }
    return 0;
}

static void close_streams(repl_t *r)
{
    if (r->node.scripts)
        script_host_set_bucket_maker(r->node.scripts, NULL, NULL);
    jsapi_free(r->node.jsapi);
    r->node.jsapi = NULL;
    if (r->node.streams) {
        script_host_set_streams(r->node.scripts, NULL, NULL, 0);
        streams_free(r->node.streams); /* writes and syncs what is buffered */
        r->node.streams = NULL;
    }
}

/* Takes down r's node: the streams, the server, the script host, and the
 * streams' directory when it was a temporary one.  Safe on a node only
 * partly set up. */
static void repl_close_node(repl_t *r)
{
    close_streams(r);
    server_free(r->node.srv);
    r->node.srv = NULL;
    script_host_free(r->node.scripts);
    r->node.scripts = NULL;
    if (r->data_dir[0] && !r->data_from)
        flow_remove_tree(r->data_dir);
}

/*
 * Sets up r's node (r->entry, r->tty set): the script host loading the
 * flow, the embedded server (listening on listen_addr if not NULL), the
 * admin verbs, the taps the helpers read, the flow's streams and the
 * helpers.  Returns 0, or the exit code (1; 2 for a --listen that is not
 * HOST:PORT) after saying why on stderr and taking down what was set up.
 */
static int repl_setup(repl_t *r, const char *lib_dir, const char *listen_addr, const char *data_flag)
{
    char err[1024];
    server_opts_t o;
    int rc = 1;
    r->node.scripts = script_host_new(r->entry, lib_dir, err, sizeof err);
    if (!r->node.scripts) {
        fprintf(stderr, "tide repl: %s\n", err);
        return 1;
    }
    server_opts_default(&o);
    script_host_apply_settings(r->node.scripts, &o);
    if (listen_addr) {
        const char *colon = strrchr(listen_addr, ':');
        if (!colon) {
            fprintf(stderr, "tide repl: --listen wants HOST:PORT\n");
            rc = 2;
            goto fail;
        }
        snprintf(o.host, sizeof o.host, "%.*s", (int)(colon - listen_addr), listen_addr);
        o.port = atoi(colon + 1);
    }
    r->node.srv = server_new(&o);
    if (!r->node.srv || (listen_addr && server_listen(r->node.srv) < 0))
        goto fail;
    if (r->entry && script_host_attach(r->node.scripts, r->node.srv) < 0)
        goto fail;
    if (!r->entry)
        script_host_attach_offline(r->node.scripts, r->node.srv);
    r->node.remote = r; /* (the prompt is here: tide repl --connect to it is refused) */
    admin_attach(&r->node);
    r->any_sub = server_subscribe_internal(r->node.srv, ">", on_any, r);
    server_set_input_tap(r->node.srv, on_input, r);
    /* Before the helpers go in: setting up the streams loads the flow again. */
    if (open_streams(r, data_flag) < 0)
        goto fail;
    install_helpers(r);
    /* A reload (reload(), a changed file, SIGHUP) makes a new state: the
     * helpers go into it too. */
    script_set_reload_hook(r->node.scripts, reinstall, r);
    return 0;
fail:
    repl_close_node(r);
    return rc;
}

/* The history file: $TIDE_HISTORY, else ~/.tide_history, made if missing
 * (handle_line appends each line to it), and read back at a terminal. */
static void repl_open_history(repl_t *r)
{
    const char *hist = getenv("TIDE_HISTORY");
    if (hist)
        snprintf(r->history, sizeof r->history, "%s", hist);
    else if (getenv("HOME"))
        snprintf(r->history, sizeof r->history, "%s/.tide_history", getenv("HOME"));
    if (r->history[0]) {
        int fd = open(r->history, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0)
            close(fd);
        if (r->tty)
            read_history(r->history);
    }
}

/* The greeting: what the prompt is, where clients may join, and the flow's
 * streams with where they live. */
static void repl_greet(repl_t *r, const char *listen_addr)
{
    out(r, "tide %s repl: an embedded router%s%s. help() lists the helpers; Ctrl-D leaves.\n", TIDE_VERSION,
        listen_addr ? ", NATS clients welcome on " : "", listen_addr ? listen_addr : "");
    if (!r->node.streams)
        return;
    out(r, "streams:");
    stream_info_t si;
    for (int i = 0; streams_stream_info(r->node.streams, NULL, i, &si); i++)
        out(r, "%s %s (%llu message%s)", i ? "," : "", si.cfg->name, (unsigned long long)si.log.msgs,
            si.log.msgs == 1 ? "" : "s");
    if (!streams_count(r->node.streams))
        out(r, " none declared");
    if (r->data_from)
        out(r, " in %s (%s)\n", r->data_dir, r->data_from);
    else
        out(r, " in %s, a temporary directory removed at exit (--data DIR keeps them)\n", r->data_dir);
}

/* Input from a terminal or a pipe: read from the loop, so the router
 * serves (--listen) while the prompt waits.  Returns at end of input. */
static void repl_loop_events(repl_t *r)
{
    if (r->tty) {
        rl_callback_handler_install("> ", handle_line);
        r->rl_on = 1;
    } else
        setvbuf(stdin, NULL, _IONBF, 0); /* no line may wait in stdio while epoll sees nothing */
    r->stdin_ev = event_new(server_base(r->node.srv), 0, EV_READ | EV_PERSIST, on_stdin, r);
    event_add(r->stdin_ev, NULL);
    server_run(r->node.srv);
    if (r->tty)
        rl_callback_handler_remove();
    r->rl_on = 0;
    event_free(r->stdin_ev);
}

/* Input from a file (which epoll cannot watch): line by line, letting the
 * loop run between lines.  Returns at end of input, the clients given
 * their last bytes. */
static void repl_loop_file(repl_t *r)
{
    char busy_note[300] = "";
    while (!r->done) {
        on_stdin(0, EV_READ, r);
        event_base_loop(server_base(r->node.srv), EVLOOP_NONBLOCK);
        /* A script: each line's durable work is done before the next
         * (the store's commits, the consumers and their handlers).
         * Something that stays busy (a NAK with a long delay) is said
         * once and then waited for briefly only. */
        char why[300];
        if (r->node.streams && flow_settle(r->node.srv, r->node.streams, busy_note[0] ? 0.2 : 5, why, sizeof why) < 0) {
            if (strcmp(why, busy_note))
                out(r, "(the streams are still busy: %s)\n", why);
            snprintf(busy_note, sizeof busy_note, "%s", why);
        } else {
            busy_note[0] = '\0';
        }
    }
    /* on_stdin asked for the shutdown; give clients their last bytes. */
    for (int i = 0; i < 100 && server_connections(r->node.srv) > 0; i++)
        event_base_loop(server_base(r->node.srv), EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

/* Frees what the prompt holds (recordings, the deliveries kept for
 * expect(), pending pub() calls, buffers), then takes down the node. */
static void repl_teardown(repl_t *r)
{
    for (int i = 0; i < r->nrecs; i++)
        if (r->recs[i].f)
            fclose(r->recs[i].f);
    free(r->seen);
    pending_clear(r);
    free(r->buf);
    free(r->rbuf);
    repl_close_node(r);
}

int repl_main(const char *entry, const char *lib_dir, const char *listen_addr, const char *data_flag)
{
    repl_t r;
    struct stat sb;
    memset(&r, 0, sizeof r);
    the_repl = &r;
    r.entry = entry;
    r.tty = isatty(0);
    int rc = repl_setup(&r, lib_dir, listen_addr, data_flag);
    if (rc)
        return rc;
    repl_open_history(&r);
    repl_greet(&r, listen_addr);
    if (fstat(0, &sb) == 0 && S_ISREG(sb.st_mode))
        repl_loop_file(&r);
    else
        repl_loop_events(&r);
    repl_teardown(&r);
    return 0;
}

/* ---- remote sessions: $TIDE.ADMIN.EVAL on a serving node -------------------- */

/*
 * A session is made by the first request and owned by the node
 * (n->remote).  It lasts while some connection that sent a request is
 * open and has not said $TIDE.ADMIN.EVAL.END; the last one leaving takes
 * down everything the session set up (subscriptions, the input tap, trace,
 * recordings, buffers, the helpers in the scripts' environment).
 */

#define REPL_REPLY_MAX (1u << 20) /* bytes of output in one reply */
#define REPL_TRACE_MAX (4u << 20) /* bytes of output waiting for $TIDE.TRACE */

/* During a request, output is the reply; between requests (a sub() watcher,
 * the trace of events from clients) it goes to $TIDE.TRACE, line by line. */
static void emit_remote(repl_t *r, const char *s, size_t n)
{
    if (r->evaluating) {
        if (r->reply_len + n > REPL_REPLY_MAX)
            n = REPL_REPLY_MAX - r->reply_len; /* (the rest is cut off) */
        if (r->reply_len + n + 1 > r->reply_cap) {
            size_t nc = (r->reply_len + n + 1) * 2;
            char *nb = realloc(r->reply, nc);
            if (!nb)
                return;
            r->reply = nb;
            r->reply_cap = nc;
        }
        memcpy(r->reply + r->reply_len, s, n);
        r->reply_len += n;
        r->reply[r->reply_len] = '\0';
        return;
    }
    while (n && s[n - 1] == '\n')
        n--;
    if (!n || r->trace_out.bytes + n > REPL_TRACE_MAX)
        return; /* (nobody reads it fast enough: dropped) */
    /* This may run inside a delivery (a watcher, a trace step): publishing
     * now would change the subscription index under it, so the line waits
     * for the loop's next turn. */
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = "$TIDE.TRACE";
    m.subject_len = strlen(m.subject);
    m.payload = s;
    m.payload_len = n;
    if (msgq_push(&r->trace_out, &m, 0) == 0)
        event_active(r->flush_ev, EV_TIMEOUT, 0);
}

static void flush_remote(evutil_socket_t fd, short what, void *arg)
{
    repl_t *r = arg;
    msgq_item_t *it;
    (void)fd;
    (void)what;
    while ((it = msgq_pop(&r->trace_out))) {
        server_route(r->node.srv, NULL, &it->m);
        msgq_item_free(it);
    }
}

/* Takes down everything the session set up, and frees it. */
static void session_end(repl_t *r)
{
    server_t *srv = r->node.srv;
    if (r->flush_ev)
        event_free(r->flush_ev);
    server_unsubscribe_internal(srv, r->any_sub);
    for (int i = 0; i < 32; i++)
        server_unsubscribe_internal(srv, r->watches[i].sub);
    server_set_input_tap(srv, NULL, NULL);
    server_set_close_hook(srv, NULL, NULL);
    if (r->tracing)
        script_set_trace(r->node.scripts, NULL, NULL);
    script_set_reload_hook(r->node.scripts, NULL, NULL);
    uninstall_helpers(r);
    for (int i = 0; i < r->nrecs; i++)
        if (r->recs[i].f)
            fclose(r->recs[i].f);
    msgq_clear(&r->trace_out);
    pending_clear(r);
    free(r->seen);
    free(r->reply);
    free(r->buf);
    free(r->rbuf);
    r->served->remote = NULL;
    free(r);
    /* What the session held was many small blocks; give the pages back. */
    malloc_trim(0);
}

/* Forgets connection id; the session ends when none is left (after the
 * request being answered, if any). */
static void session_detach(repl_t *r, uint64_t id)
{
    for (int i = 0; i < r->nconns; i++)
        if (r->conns[i] == id)
            r->conns[i] = r->conns[--r->nconns];
    if (r->nconns)
        return;
    if (r->evaluating)
        r->end_asked = 1;
    else
        session_end(r);
}

static void on_client_closed(void *ctx, client_t *c)
{
    session_detach(ctx, c->id);
}

static repl_t *session_start(node_t *n)
{
    repl_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->remote = 1;
    r->served = n;
    r->node = *n;
    r->entry = "(served)";
    r->flush_ev = event_new(server_base(n->srv), -1, 0, flush_remote, r);
    r->any_sub = server_subscribe_internal(n->srv, ">", on_any, r);
    if (!r->flush_ev || !r->any_sub) {
        if (r->flush_ev)
            event_free(r->flush_ev);
        server_unsubscribe_internal(n->srv, r->any_sub);
        free(r);
        return NULL;
    }
    server_set_input_tap(n->srv, on_input, r);
    server_set_close_hook(n->srv, on_client_closed, r);
    install_helpers(r);
    script_set_reload_hook(n->scripts, reinstall, r);
    n->remote = r;
    return r;
}

/* Adds connection id to the session; -1 when there is no room. */
static int session_attach(repl_t *r, uint64_t id)
{
    for (int i = 0; i < r->nconns; i++)
        if (r->conns[i] == id)
            return 0;
    if (r->nconns == REPL_CONNS_MAX)
        return -1;
    r->conns[r->nconns++] = id;
    return 0;
}

/* {"ok":false,"error":msg} as a malloc'd string. */
static int error_json(const char *msg, char **json, size_t *json_len)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 0);
    cJSON_AddStringToObject(o, "error", msg);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    *json = s ? util_mem_dup(s, strlen(s)) : NULL;
    *json_len = *json ? strlen(*json) : 0;
    cJSON_free(s);
    return *json ? 0 : -1;
}

int repl_remote_eval(node_t *n, client_t *from, const char *code, size_t len, char **json, size_t *json_len)
{
    char *code_z = NULL, *s = NULL;
    repl_t *r = n->remote;
    if (r && !r->remote)
        return error_json("this node is a tide repl: its prompt is its terminal", json, json_len);
    if (!r && !(r = session_start(n)))
        return -1;
    if (session_attach(r, from->id) < 0)
        return error_json("too many tide repl --connect connections on this node", json, json_len);
    if (!(code_z = util_mem_dup(code, len)))
        goto done;
    r->node = *n;
    r->reply_len = 0;
    if (r->reply)
        r->reply[0] = '\0';
    r->evaluating = 1;
    free(r->buf);
    r->buf = NULL;
    eval(r, code_z);
    r->evaluating = 0;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddStringToObject(o, "output", r->reply ? r->reply : "");
    cJSON_AddBoolToObject(o, "incomplete", r->incomplete);
    s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (r->reply_cap > 65536) { /* a long answer: its buffer is not kept */
        free(r->reply);
        r->reply = NULL;
        r->reply_len = r->reply_cap = 0;
    }
done:
    free(code_z);
    if (r->end_asked)
        session_end(r);
    *json_len = s ? strlen(s) : 0;
    *json = s ? util_mem_dup(s, *json_len) : NULL;
    cJSON_free(s);
    return *json ? 0 : -1;
}

int repl_remote_detach(node_t *n, const client_t *c)
{
    repl_t *r = n->remote;
    if (!r || !r->remote)
        return 0;
    if (c) {
        session_detach(r, c->id);
        return n->remote == NULL;
    }
    session_end(r);
    return 1;
}
