/*
 * repl.c - tide repl: a router in the terminal.
 *
 * The prompt runs in the script host's own Lua state, so everything a rules
 * file can do works at the prompt (upgrade, filter, route, on, require,
 * tide.kv), plus helpers: pub, sub, unsub, trace, rules, stats, load,
 * reload, record, expect, help.  The router is embedded (no separate
 * server); --listen lets real NATS clients join.  Input is read through GNU
 * readline from a libevent callback, so the router keeps serving while the
 * prompt waits.
 */
#include <errno.h>
#include <fcntl.h>
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

#include "log.h"
#include "msgq.h"
#include "repl.h"
#include "script.h"
#include "server.h"
#include "subject.h"
#include "util.h"

typedef struct watch {
    struct repl *r;
    sub_t *sub;
    char pattern[256];
    int active;
} watch_t;

typedef struct recording {
    char pattern[256];
    FILE *f;
} recording_t;

typedef struct repl {
    server_t *srv;
    script_host_t *host;
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
    cJSON *seen; /* deliveries since start or the last expect(), for expect() */
    int reload_asked;
    int incomplete; /* the last eval() wants more lines */
    char history[1024];
    struct event *stdin_ev;
} repl_t;

static repl_t *the_repl; /* readline's callback takes no context */

/* Where the prompt's output goes: the terminal, or (for a remote session)
 * the reply being built, or $TIDE.TRACE between requests. */
static void emit_stdout(const char *s, size_t n)
{
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

static void (*emit)(const char *s, size_t n) = emit_stdout;

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
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
    emit(buf, (size_t)n);
    if (buf != small)
        free(buf);
}

/* ---- deliveries seen by the prompt ------------------------------------------ */

/* The JSON line of a delivery, in the expected.jsonl shape of tide run. */
static cJSON *delivery_json(const proto_msg_t *m, int for_expect)
{
    cJSON *o = cJSON_CreateObject();
    char *subject = mem_dup(m->subject, m->subject_len);
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
        char *raw = mem_dup(m->payload, m->payload_len);
        cJSON_AddStringToObject(o, "data", raw ? raw : "");
        free(raw);
    }
    return o;
}

static void print_delivery(const char *tag, const proto_msg_t *m)
{
    int n = (int)(m->payload_len > 300 ? 300 : m->payload_len);
    out("  <- [%s] %.*s  %.*s%s\n", tag, (int)m->subject_len, m->subject, n, m->payload,
        m->payload_len > 300 ? "..." : "");
}

static void on_watch(void *ctx, const proto_msg_t *m)
{
    watch_t *w = ctx;
    if (w->active)
        print_delivery(w->pattern, m);
}

static void on_any(void *ctx, const proto_msg_t *m)
{
    repl_t *r = ctx;
    if (!r->seen)
        r->seen = cJSON_CreateArray();
    if (r->seen && cJSON_GetArraySize(r->seen) < 100000)
        cJSON_AddItemToArray(r->seen, delivery_json(m, 1));
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
                    char *k = mem_dup(p, (size_t)(colon - p));
                    const char *v = colon + 1;
                    while (v < le && *v == ' ')
                        v++;
                    size_t vl = (size_t)(le - v);
                    if (vl && v[vl - 1] == '\r')
                        vl--;
                    char *val = mem_dup(v, vl);
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
    (void)ctx;
    out("%s\n", line);
}

/* ---- helpers at the prompt ------------------------------------------------- */

static repl_t *up(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* pub(subject, data [, headers]): queued, run after the current line. */
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
    lua_settop(L, 3);
    /* The header block (index 4), built by concatenation: the stack stays
     * free for lua_next. */
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
    /* The payload (index 5): a string as it is; anything else is the data
     * of a new CloudEvents envelope. */
    if (lua_type(L, 2) == LUA_TSTRING) {
        lua_pushvalue(L, 2);
    } else {
        /* tide.json.encode of an envelope, built in Lua for brevity. */
        static const char build[] =
            "local subject, data = ...\n"
            "return tide.json.encode({ specversion = '1.0', id = tostring(math.random(1, 2^40)),\n"
            "  source = 'tide.repl', type = subject, data = data })";
        if (luaL_loadstring(L, build) != LUA_OK)
            return lua_error(L);
        lua_pushvalue(L, lua_upvalueindex(2)); /* the sandbox env, for tide.json */
        lua_setupvalue(L, -2, 1);
        lua_pushvalue(L, 1);
        lua_pushvalue(L, 2);
        lua_call(L, 2, 1);
    }
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
    if (msgq_push(&r->pending, &m, 0) < 0)
        return luaL_error(L, "out of memory");
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
    for (int i = 0; i < 32; i++) {
        watch_t *w = &r->watches[i];
        if (w->sub && !strcmp(w->pattern, pattern)) {
            w->active = 1;
            return 0;
        }
    }
    for (int i = 0; i < 32; i++) {
        watch_t *w = &r->watches[i];
        if (!w->sub) {
            snprintf(w->pattern, sizeof w->pattern, "%s", pattern);
            w->r = r;
            w->active = 1;
            w->sub = server_subscribe_internal(r->srv, pattern, on_watch, w);
            if (!w->sub)
                return luaL_error(L, "out of memory");
            out("watching %s\n", pattern);
            return 0;
        }
    }
    return luaL_error(L, "sub: at most 32 patterns");
}

static int h_unsub(lua_State *L)
{
    repl_t *r = up(L);
    const char *pattern = luaL_checkstring(L, 1);
    for (int i = 0; i < 32; i++)
        if (r->watches[i].sub && !strcmp(r->watches[i].pattern, pattern))
            r->watches[i].active = 0;
    return 0;
}

static int h_trace(lua_State *L)
{
    repl_t *r = up(L);
    int on = lua_isnone(L, 1) ? 1 : lua_toboolean(L, 1);
    script_set_trace(r->host, on ? on_trace : NULL, r);
    out("trace %s\n", on ? "on: every event's path is shown" : "off");
    return 0;
}

static int h_rules(lua_State *L)
{
    repl_t *r = up(L);
    char *buf = NULL;
    size_t len = 0;
    script_rules_json(r->host, &buf, &len);
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
        out("  %-8s %-28s %-24s calls %d, errors %d", kind->valuestring, what, where->valuestring,
            (int)calls->valuedouble, (int)errors->valuedouble);
        if (dropped)
            out(", dropped %d", (int)dropped->valuedouble);
        out("\n");
        n++;
    }
    if (!n)
        out("  no rules yet: try  filter(\"order.created\", function(e) return e.data.amount > 100 end)\n");
    cJSON_Delete(arr);
    free(buf);
    return 0;
}

static int h_stats(lua_State *L)
{
    repl_t *r = up(L);
    server_stats_t s;
    script_stats_t st;
    server_get_stats(r->srv, &s);
    script_get_stats(r->host, &st);
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

static int h_load(lua_State *L)
{
    repl_t *r = up(L);
    const char *path = luaL_checkstring(L, 1);
    char err[1024];
    /* Run outside this call's stack frame, but still inside the line's budget. */
    if (script_load_file(r->host, path, err, sizeof err) < 0)
        return luaL_error(L, "%s", err);
    out("loaded %s\n", path);
    return 0;
}

static int h_reload(lua_State *L)
{
    repl_t *r = up(L);
    r->reload_asked = 1;
    (void)L;
    return 0;
}

/* record(pattern, "file.jsonl"): append what is published there, as it
 * comes in (before the pipeline), as tide run input. */
static int h_record(lua_State *L)
{
    repl_t *r = up(L);
    size_t n;
    const char *pattern = luaL_checklstring(L, 1, &n);
    const char *file = luaL_checkstring(L, 2);
    if (!subject_valid_pattern(pattern, n) || n >= sizeof r->recs[0].pattern)
        return luaL_error(L, "record: invalid subject pattern '%s'", pattern);
    if (r->nrecs == 8)
        return luaL_error(L, "record: at most 8 recordings");
    FILE *f = fopen(file, "a");
    if (!f)
        return luaL_error(L, "record: cannot open %s: %s", file, strerror(errno));
    snprintf(r->recs[r->nrecs].pattern, sizeof r->recs[0].pattern, "%s", pattern);
    r->recs[r->nrecs++].f = f;
    out("recording %s to %s\n", pattern, file);
    return 0;
}

/* expect("file.jsonl"): what was delivered since the start (or the last
 * expect) becomes an expectation file for tide run --expect. */
static int h_expect(lua_State *L)
{
    repl_t *r = up(L);
    const char *file = luaL_checkstring(L, 1);
    FILE *f = fopen(file, "w");
    if (!f)
        return luaL_error(L, "expect: cannot write %s: %s", file, strerror(errno));
    int n = 0;
    cJSON *d;
    cJSON_ArrayForEach(d, r->seen) {
        char *s = cJSON_PrintUnformatted(d);
        fprintf(f, "%s\n", s);
        cJSON_free(s);
        n++;
    }
    fclose(f);
    cJSON_Delete(r->seen);
    r->seen = NULL;
    out("wrote %d deliveries to %s\n", n, file);
    return 0;
}

/* print() at the prompt goes to the terminal, not to the log. */
static int h_print(lua_State *L)
{
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *s = luaL_tolstring(L, i, &len);
        if (i > 1)
            emit("\t", 1);
        emit(s, len);
        lua_pop(L, 1);
    }
    emit("\n", 1);
    return 0;
}

static int h_help(lua_State *L)
{
    (void)L;
    out("rules      upgrade(type, v, fn)  filter(pat, fn)  route(pat, fn)  on(pat, fn(e, ctx))\n"
        "events     pub(subject, data_or_string [, headers])   sub(pattern)   unsub(pattern)\n"
        "see        trace([false])   rules()   stats()\n"
        "files      load \"file.lua\"   reload()   record(pattern, \"in.jsonl\") (what is published)\n"
        "           expect(\"out.jsonl\") (what was delivered since the last expect)\n"
        "state      tide.kv.get/set/incr ...   (Lua globals reset on reload)\n"
        "A line that is an expression prints its value; Ctrl-D leaves.\n");
    return 0;
}

static void install_helpers(repl_t *r)
{
    static const luaL_Reg fns[] = {{"pub", h_pub},       {"sub", h_sub},       {"tail", h_sub},
                                   {"unsub", h_unsub},   {"trace", h_trace},   {"rules", h_rules},
                                   {"stats", h_stats},   {"load", h_load},     {"reload", h_reload},
                                   {"record", h_record}, {"expect", h_expect}, {"help", h_help},
                                   {"print", h_print},
                                   {NULL, NULL}};
    lua_State *L = script_lua(r->host);
    script_push_env(r->host);
    for (const luaL_Reg *f = fns; f->name; f++) {
        lua_pushlightuserdata(L, r);
        lua_pushvalue(L, -2); /* the env, for helpers that run Lua */
        lua_pushcclosure(L, f->func, 2);
        lua_setfield(L, -2, f->name);
    }
    lua_pop(L, 1);
}

static void reinstall(void *ctx)
{
    repl_t *r = ctx;
    install_helpers(r);
    if (r->tty)
        out("\n(rules reloaded)\n");
}

/* ---- one line ---------------------------------------------------------------- */

static void run_pending(repl_t *r)
{
    msgq_item_t *it;
    while ((it = msgq_pop(&r->pending))) {
        server_publish(r->srv, NULL, &it->m);
        msgq_item_free(it);
    }
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
    script_push_env(r->host);
    lua_getfield(L, -1, "require");
    lua_pushliteral(L, "tide.pretty");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        out("(cannot print: %s)\n", lua_tostring(L, -1));
        lua_settop(L, base);
        return;
    }
    lua_remove(L, -2); /* env */
    lua_insert(L, base + 1);
    if (script_pcall(r->host, n, 1) == LUA_OK)
        out("%s\n", lua_tostring(L, -1));
    else
        out("(cannot print: %s)\n", lua_tostring(L, -1));
    lua_settop(L, base);
}

static void eval(repl_t *r, const char *code)
{
    lua_State *L = script_lua(r->host);
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
        script_push_env(r->host);
        lua_setupvalue(L, -2, 1);
        status = script_pcall(r->host, 0, LUA_MULTRET);
    }
    if (status != LUA_OK) {
        out("error: %s\n", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(no message)");
        lua_settop(L, base);
    } else {
        print_results(r, L, base);
    }
    run_pending(r);
    if (r->reload_asked) {
        char err[1024];
        r->reload_asked = 0;
        if (script_reload(r->host, "prompt", err, sizeof err) == 0) {
            out("reloaded%s\n", r->entry ? "" : " (no entry file: the rules typed at the prompt are gone)");
        } else {
            out("reload failed, the previous rules keep running: %s\n", err);
        }
    }
}

static void handle_line(char *line)
{
    repl_t *r = the_repl;
    if (!line) {
        r->done = 1;
        out("\n");
        return;
    }
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
        server_shutdown(r->srv);
}

int repl_main(const char *entry, const char *lib_dir, const char *listen_addr)
{
    repl_t r;
    char err[1024];
    server_opts_t o;
    memset(&r, 0, sizeof r);
    the_repl = &r;
    r.entry = entry;
    r.tty = isatty(0);
    r.host = script_host_new(entry, lib_dir, err, sizeof err);
    if (!r.host) {
        fprintf(stderr, "tide repl: %s\n", err);
        return 1;
    }
    server_opts_default(&o);
    script_host_apply_settings(r.host, &o);
    if (listen_addr) {
        const char *colon = strrchr(listen_addr, ':');
        if (!colon) {
            fprintf(stderr, "tide repl: --listen wants HOST:PORT\n");
            script_host_free(r.host);
            return 2;
        }
        snprintf(o.host, sizeof o.host, "%.*s", (int)(colon - listen_addr), listen_addr);
        o.port = atoi(colon + 1);
    }
    r.srv = server_new(&o);
    if (!r.srv || (listen_addr && server_listen(r.srv) < 0)) {
        server_free(r.srv);
        script_host_free(r.host);
        return 1;
    }
    if (entry && script_host_attach(r.host, r.srv) < 0) {
        server_free(r.srv);
        script_host_free(r.host);
        return 1;
    }
    if (!entry)
        script_host_attach_offline(r.host, r.srv);
    server_set_scripts(r.srv, r.host);
    server_subscribe_internal(r.srv, ">", on_any, &r);
    server_set_input_tap(r.srv, on_input, &r);
    install_helpers(&r);
    /* A reload (reload(), a changed file, SIGHUP) makes a new state: the
     * helpers go into it too. */
    script_set_reload_hook(r.host, reinstall, &r);

    const char *hist = getenv("TIDE_HISTORY");
    if (hist)
        snprintf(r.history, sizeof r.history, "%s", hist);
    else if (getenv("HOME"))
        snprintf(r.history, sizeof r.history, "%s/.tide_history", getenv("HOME"));
    if (r.history[0]) {
        int fd = open(r.history, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0)
            close(fd);
        if (r.tty)
            read_history(r.history);
    }

    out("tide %s repl: an embedded router%s%s. help() lists the helpers; Ctrl-D leaves.\n", TIDE_VERSION,
        listen_addr ? ", NATS clients welcome on " : "", listen_addr ? listen_addr : "");
    struct stat sb;
    int regular = fstat(0, &sb) == 0 && S_ISREG(sb.st_mode);
    if (!regular) {
        /* A terminal or a pipe: input is read from the loop, so the router
         * serves (--listen) while the prompt waits. */
        if (r.tty)
            rl_callback_handler_install("> ", handle_line);
        else
            setvbuf(stdin, NULL, _IONBF, 0); /* no line may wait in stdio while epoll sees nothing */
        r.stdin_ev = event_new(server_base(r.srv), 0, EV_READ | EV_PERSIST, on_stdin, &r);
        event_add(r.stdin_ev, NULL);
        server_run(r.srv);
        if (r.tty)
            rl_callback_handler_remove();
        event_free(r.stdin_ev);
    } else {
        /* A file (which epoll cannot watch): line by line, letting the loop
         * run between lines. */
        while (!r.done) {
            on_stdin(0, EV_READ, &r);
            event_base_loop(server_base(r.srv), EVLOOP_NONBLOCK);
        }
        /* on_stdin asked for the shutdown; give clients their last bytes. */
        for (int i = 0; i < 100 && server_connections(r.srv) > 0; i++)
            event_base_loop(server_base(r.srv), EVLOOP_ONCE | EVLOOP_NONBLOCK);
    }
    for (int i = 0; i < r.nrecs; i++)
        if (r.recs[i].f)
            fclose(r.recs[i].f);
    cJSON_Delete(r.seen);
    msgq_clear(&r.pending);
    free(r.buf);
    server_free(r.srv);
    script_host_free(r.host);
    return 0;
}

/* ---- remote sessions: $TIDE.ADMIN.EVAL on a serving node -------------------- */

static repl_t remote;
static int remote_ready;
static char *reply_buf;
static size_t reply_len, reply_cap;
static int evaluating;
static msgq_t remote_out;          /* lines for $TIDE.TRACE */
static struct event *remote_flush; /* publishes them from the loop */

/* During a request, output is the reply; between requests (a sub() watcher,
 * the trace of events from clients) it goes to $TIDE.TRACE, line by line. */
static void emit_remote(const char *s, size_t n)
{
    if (evaluating) {
        if (reply_len + n + 1 > reply_cap) {
            size_t nc = (reply_len + n + 1) * 2;
            char *nb = realloc(reply_buf, nc);
            if (!nb)
                return;
            reply_buf = nb;
            reply_cap = nc;
        }
        memcpy(reply_buf + reply_len, s, n);
        reply_len += n;
        reply_buf[reply_len] = '\0';
        return;
    }
    while (n && s[n - 1] == '\n')
        n--;
    if (!n)
        return;
    /* This may run inside a delivery (a watcher, a trace step): publishing
     * now would change the subscription index under it, so the line waits
     * for the loop's next turn. */
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = "$TIDE.TRACE";
    m.subject_len = strlen(m.subject);
    m.payload = s;
    m.payload_len = n;
    if (msgq_push(&remote_out, &m, 0) == 0)
        event_active(remote_flush, EV_TIMEOUT, 0);
}

static void flush_remote(evutil_socket_t fd, short what, void *arg)
{
    msgq_item_t *it;
    (void)fd;
    (void)what;
    (void)arg;
    while ((it = msgq_pop(&remote_out))) {
        server_route(remote.srv, NULL, &it->m);
        msgq_item_free(it);
    }
}

int repl_remote_eval(server_t *srv, script_host_t *h, const char *code, size_t len, char **json, size_t *json_len)
{
    if (!remote_ready) {
        memset(&remote, 0, sizeof remote);
        remote.srv = srv;
        remote.host = h;
        remote.entry = "(served)";
        remote_flush = event_new(server_base(srv), -1, 0, flush_remote, NULL);
        if (!remote_flush)
            return -1;
        server_subscribe_internal(srv, ">", on_any, &remote);
        server_set_input_tap(srv, on_input, &remote);
        install_helpers(&remote);
        script_set_reload_hook(h, reinstall, &remote);
        remote_ready = 1;
    }
    void (*saved)(const char *, size_t) = emit;
    char *code_z = mem_dup(code, len);
    if (!code_z)
        return -1;
    emit = emit_remote;
    reply_len = 0;
    if (reply_buf)
        reply_buf[0] = '\0';
    evaluating = 1;
    free(remote.buf);
    remote.buf = NULL;
    eval(&remote, code_z);
    evaluating = 0;
    free(code_z);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddStringToObject(o, "output", reply_buf ? reply_buf : "");
    cJSON_AddBoolToObject(o, "incomplete", remote.incomplete);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    /* Asynchronous output (watchers, trace) keeps going to $TIDE.TRACE. */
    emit = emit_remote;
    (void)saved;
    if (!s)
        return -1;
    *json_len = strlen(s);
    *json = mem_dup(s, *json_len);
    cJSON_free(s);
    return *json ? 0 : -1;
}
