/* script.c - see script.h: the host and its Lua states. */
#include "auth.h"
#include "json_int.h"
#include "kv_lua.h"
#include "script_internal.h"

void script_limits_default(script_limits_t *l)
{
    memset(l, 0, sizeof *l);
    l->instructions = 10 * 1000 * 1000;
    l->memory = 64u * 1024 * 1024;
    l->time = 0.5;
    l->emit_depth = 8;
    l->emit_max = 10000;
    l->cascade_instructions = 100 * 1000 * 1000;
    l->cascade_time = 5;
    snprintf(l->dead_letter, sizeof l->dead_letter, "$TIDE.DEAD");
}

/* ---- logging ------------------------------------------------------------- */

/* Logs an error once per distinct text per interval, with a count of the
 * repeats it held back. */
void script_log_rate_limited(script_host_t *h, const char *text)
{
    size_t n = strlen(text);
    time_t now = time(NULL);
    err_seen_t *e = dict_get(&h->errors_seen, text, n);
    if (e && now - e->last < ERROR_LOG_INTERVAL) {
        e->suppressed++;
        return;
    }
    if (!e) {
        if (h->errors_seen.count > 1000)
            dict_clear(&h->errors_seen, free);
        e = calloc(1, sizeof *e);
        if (!e || dict_put(&h->errors_seen, text, n, e) < 0) {
            free(e);
            log_error("%s", text);
            return;
        }
    }
    if (e->suppressed)
        log_error("%s (and %llu more like it)", text, (unsigned long long)e->suppressed);
    else
        log_error("%s", text);
    e->last = now;
    e->suppressed = 0;
}

static void state_free(state_t *st)
{
    if (!st)
        return;
    if (st->kv_jobs > 0) { /* their functions live here: freed with the last (script_state_job_done) */
        st->retired = 1;
        return;
    }
    if (st->L)
        lua_close(st->L);
    budget_pool_free(st);
    for (size_t i = 0; i < st->nrules; i++)
        pipeline_rule_free(st->rules[i]);
    free(st->rules);
    dict_clear(&st->upgraders, NULL);
    dict_clear(&st->matches, free);
    pipeline_free_retired(st);
    dict_clear(&st->first_tokens, NULL);
    for (size_t i = 0; i < st->nfiles; i++)
        free(st->files[i]);
    free(st->files);
    for (int i = 0; i < st->nhttp_binary; i++)
        free(st->http_binary[i]);
    for (int i = 0; i < st->nstreams; i++)
        stream_cfg_free(&st->streams[i]);
    auth_config_release(st->auth);
    tls_context_unref(st->tls);
    free(st->cluster);
    free(st->cluster_streams);
    free(st->cluster_consumers);
    free(st);
}

/* What only the node's own entry file may declare: deployed rules that
 * call one of these are refused. */
static const char *const node_settings[] = {"cluster", "listen", "limits", "admin", "auth", "tls", "storage", NULL};

static int refuse_node_setting(lua_State *L)
{
    luaL_where(L, 2);
    return luaL_error(L, "%s%s { } is a node setting: it belongs in the node's own entry file, not in deployed rules",
                      lua_tostring(L, -1), lua_tostring(L, lua_upvalueindex(1)));
}

/* Runs the deployed entry file with the node settings refused (put back
 * afterwards, for what runs later in this state). */
static void run_deployed(lua_State *L, state_t *st)
{
    char chunkname[PATH_MAX + 80];
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, st->env_ref);
    int env = lua_gettop(L);
    lua_newtable(L); /* the originals */
    for (int i = 0; node_settings[i]; i++) {
        lua_getfield(L, env, node_settings[i]);
        lua_setfield(L, env + 1, node_settings[i]);
        lua_pushstring(L, node_settings[i]);
        lua_pushcclosure(L, refuse_node_setting, 1);
        lua_setfield(L, env, node_settings[i]);
    }
    sandbox_chunk_name(st->host, st->host->deployed_entry, chunkname, sizeof chunkname);
    if (sandbox_load_file(st, st->host->deployed_entry, chunkname) != LUA_OK)
        lua_error(L);
    lua_call(L, 0, 0);
    for (int i = 0; node_settings[i]; i++) {
        lua_getfield(L, env + 1, node_settings[i]);
        lua_setfield(L, env, node_settings[i]);
    }
    lua_settop(L, top);
}

static int run_entry(lua_State *L)
{
    state_t *st = script_state_of(L);
    const char *path = st->host->config_path;
    char chunkname[PATH_MAX + 8];
    if (path) { /* else a prompt with no entry file, or deployed rules checked alone */
        sandbox_chunk_name(st->host, path, chunkname, sizeof chunkname);
        if (sandbox_load_file(st, path, chunkname) != LUA_OK)
            return lua_error(L);
        lua_call(L, 0, 0);
    }
    if (st->host->deployed_entry)
        run_deployed(L, st);
    if (path) /* a bundle checked alone cannot know the node's cluster { } */
        settings_cluster_finish(L);
    return path ? settings_auth_finish(L) : 0;
}

/* Builds a state from the entry file.  NULL with "file:line: message" in err on failure. */
static state_t *state_new(script_host_t *h, const script_limits_t *limits, char *err, size_t errsz)
{
    state_t *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    st->host = h;
    st->limits = *limits;
    st->kv_lim = (kv_limits_t){KV_DEFAULT_MAX_VALUE, KV_DEFAULT_MAX_BYTES, KV_DEFAULT_MAX_KEYS};
    st->L = lua_newstate(budget_state_alloc, st);
    if (!st->L) {
        snprintf(err, errsz, "cannot create a Lua state: out of memory");
        free(st);
        return NULL;
    }
    lua_State *L = st->L;
    lua_atpanic(L, sandbox_at_panic);
    *(state_t **)lua_getextraspace(L) = st;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
    static const char *const budget_text[] = {"budget exceeded", "instruction budget exceeded",
                                              "time budget exceeded", "memory budget exceeded"};
    for (int i = 0; i < 4; i++) {
        lua_pushstring(L, budget_text[i]);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &budget_keys[i]);
    }

    /* Most garbage is one event's and dies young: the generational mode
     * collects it for less work than the incremental one.  A minor
     * collection has a fixed cost besides its garbage and the live heap is
     * small, so they are spaced as far as Lua allows (the heap grown by
     * 200%): about 210 fewer instructions per event than at 60. */
    lua_gc(L, LUA_GCGEN, 200, 100);
    lua_pushcfunction(L, sandbox_open_libs);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK)
        goto fail;
    event_open(L);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "tide.loaded");
    sandbox_build_env(st);
    st->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    /* Loading runs under the budgets too: a config that loops is refused. */
    lua_pushcfunction(L, run_entry);
    if (budget_call(st, 0, 0) != LUA_OK)
        goto fail;
    lua_rawgeti(L, LUA_REGISTRYINDEX, st->env_ref);
    if (lua_getfield(L, -1, "selfcheck") == LUA_TFUNCTION) {
        if (budget_call(st, 0, 1) != LUA_OK) {
            lua_pushfstring(L, "selfcheck failed: %s", lua_tostring(L, -1));
            goto fail;
        }
        if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            lua_pushliteral(L, "selfcheck() returned false");
            goto fail;
        }
    }
    lua_settop(L, 0);
    lua_pushnil(L);          /* upvalue 1: the event in the pipeline */
    event_push_metatable(L); /* upvalue 2: events' metatable, at hand */
    event_push_reused(L);    /* upvalue 3: the reused event */
    lua_pushcclosure(L, pipeline_run_event, 3); /* RUN_EVENT_SLOT */
    return st;
fail:
    snprintf(err, errsz, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error while loading");
    state_free(st);
    return NULL;
}

/* ---- host --------------------------------------------------------------------------- */

script_host_t *script_host_new(const char *config_path, const char *lib_dir, char *err, size_t errsz)
{
    script_limits_t limits;
    char real[PATH_MAX];
    script_host_t *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    h->watch_fd = -1;
    h->free_retired = state_free;
    if (!config_path) {
        /* No entry file (tide repl without -c): rules come from the prompt,
         * require looks in the current directory. */
        h->config_dir = getcwd(NULL, 0);
    } else if (!realpath(config_path, real)) {
        snprintf(err, errsz, "cannot open %s: %s", config_path, strerror(errno));
        free(h);
        return NULL;
    } else {
        h->config_path = strdup(real);
        h->config_dir = strdup(real);
        if (h->config_dir && strrchr(h->config_dir, '/'))
            *strrchr(h->config_dir, '/') = '\0';
    }
    if (lib_dir && realpath(lib_dir, real))
        h->lib_dir = strdup(real);
    h->kv = kv_new();
    if ((config_path && !h->config_path) || !h->config_dir || !h->kv) {
        snprintf(err, errsz, "out of memory");
        script_host_free(h);
        return NULL;
    }
    kv_set_limits(h->kv, &(kv_limits_t){KV_DEFAULT_MAX_VALUE, KV_DEFAULT_MAX_BYTES, KV_DEFAULT_MAX_KEYS});
    script_limits_default(&limits);
    h->cur = state_new(h, &limits, err, errsz);
    if (!h->cur) {
        script_host_free(h);
        return NULL;
    }
    kv_set_limits(h->kv, &h->cur->kv_lim);
    h->st.generation = 1;
    snprintf(h->st.last_reload, sizeof h->st.last_reload, "ok");
    return h;
}

void script_host_apply_settings(const script_host_t *h, server_opts_t *o)
{
    const state_t *st = h->cur;
    if (st->has_listen) {
        snprintf(o->host, sizeof o->host, "%s", st->listen_host);
        o->port = st->listen_port;
    }
    if (st->set_mask & SET_MAX_PAYLOAD) o->max_payload = st->set.max_payload;
    if (st->set_mask & SET_MAX_CONTROL_LINE) o->max_control_line = st->set.max_control_line;
    if (st->set_mask & SET_MAX_PENDING) o->max_pending = st->set.max_pending;
    if (st->set_mask & SET_PING_INTERVAL) o->ping_interval = st->set.ping_interval;
    if (st->set_mask & SET_MAX_PINGS_OUT) o->max_pings_out = st->set.max_pings_out;
    if (st->set_mask & SET_WRITE_DEADLINE) o->write_deadline = st->set.write_deadline;
    if (st->set_mask & SET_MAX_CONNECTIONS) o->max_connections = st->set.max_connections;
    if (st->set_mask & SET_MAX_PENDING_TOTAL) o->max_pending_total = st->set.max_pending_total;
    if (st->set_mask & SET_MAX_SUBS) o->max_subs = st->set.max_subs;
}

/* The server's ingress hook: every published message runs the pipeline. */
static void on_ingress(void *ctx, client_t *from, const proto_msg_t *m)
{
    script_process(ctx, from, m);
}

/* The current state's tls{} to the server: new connections get it. */
static void apply_tls(script_host_t *h)
{
    if (h->srv)
        server_set_tls(h->srv, h->cur->tls);
}

void script_host_attach_offline(script_host_t *h, server_t *srv)
{
    h->srv = srv;
    server_set_ingress(srv, on_ingress, h);
    apply_tls(h);
}

int script_host_attach(script_host_t *h, server_t *srv)
{
    struct event_base *base = server_base(srv);
    script_host_attach_offline(h, srv);
    server_set_auth(srv, h->cur->auth);
    h->debounce = evtimer_new(base, watch_on_debounce, h);
    h->sighup = evsignal_new(base, SIGHUP, watch_on_sighup, h);
    if (!h->debounce || !h->sighup || event_add(h->sighup, NULL) < 0 || script_drain_attach(h, base) < 0)
        return -1;
    watch_start(h);
    log_info("Loaded %s: %d rules (%d upgraders, %d filters, %d routes, %d handlers)", h->config_path,
             (int)h->cur->nrules, h->cur->nkind[RULE_UPGRADE], h->cur->nkind[RULE_FILTER],
             h->cur->nkind[RULE_ROUTE], h->cur->nkind[RULE_HANDLER]);
    return 0;
}

void script_host_free(script_host_t *h)
{
    if (!h)
        return;
    watch_stop(h);
    if (h->debounce)
        event_free(h->debounce);
    if (h->sighup)
        event_free(h->sighup);
    script_queue_clear(h);
    if (h->shadow_free)
        h->shadow_free(h);
    state_free(h->cur);
    kv_free(h->kv);
    dict_clear(&h->errors_seen, free);
    script_set_deployed(h, NULL, NULL, NULL);
    free(h->config_path);
    free(h->config_dir);
    free(h->lib_dir);
    free(h);
}

/* A new state from the files, swapped in; quiet: not counted as a
 * reload (same revision, no hooks), for a change of what the rules run
 * on rather than of the rules. */
static int reload_state(script_host_t *h, const char *why, int quiet, char *err, size_t errsz)
{
    state_t *st;
    if (h->processing) {
        snprintf(err, errsz, "cannot reload from inside a script");
        return -1;
    }
    st = state_new(h, &h->cur->limits, err, errsz);
    if (!st) {
        h->st.reload_failures++;
        snprintf(h->st.last_reload, sizeof h->st.last_reload, "%s", err);
        log_error("Reload (%s) failed, the previous scripts keep serving: %s", why, err);
        return -1;
    }
    if (st->has_listen && (strcmp(st->listen_host, h->cur->listen_host) || st->listen_port != h->cur->listen_port))
        log_warn("Reload: listen addresses change only on restart");
    if (strcmp(st->storage_dir, h->cur->storage_dir))
        log_warn("Reload: the storage directory changes only on restart");
    if (h->streams) {
        char e[512];
        if (durable_bind(h, st, 1, e, sizeof e) < 0 ||
            streams_apply(h->streams, st->streams, st->nstreams, st->consumers, st->nconsumers, e, sizeof e) < 0) {
            snprintf(err, errsz, "%s", e);
            state_free(st);
            h->st.reload_failures++;
            snprintf(h->st.last_reload, sizeof h->st.last_reload, "%s", err);
            log_error("Reload (%s) failed, the previous scripts keep serving: %s", why, err);
            return -1;
        }
        durable_bind(h, st, 0, e, sizeof e);
    }
    if (h->srv && (st->auth || h->cur->auth))
        server_set_auth(h->srv, st->auth); /* live clients follow at once */
    state_free(h->cur);
    h->cur = st;
    kv_set_limits(h->kv, &st->kv_lim);
    apply_tls(h);
    if (quiet) {
        if (h->srv)
            watch_start(h);
        return 0;
    }
    h->st.reloads++;
    h->st.generation++;
    snprintf(h->st.last_reload, sizeof h->st.last_reload, "ok");
    log_info("Reloaded scripts (%s): generation %llu, %d rules", why, (unsigned long long)h->st.generation,
             (int)st->nrules);
    if (h->on_reload)
        h->on_reload(h->on_reload_ctx);
    if (h->on_swap)
        h->on_swap(h->on_swap_ctx, why);
    if (h->srv)
        watch_start(h);
    return 0;
}

int script_reload(script_host_t *h, const char *why, char *err, size_t errsz)
{
    return reload_state(h, why, 0, err, errsz);
}

int script_host_set_kv_remote(script_host_t *h, const script_kv_remote_t *ops, char *err, size_t errsz)
{
    h->has_kv_remote = ops != NULL;
    if (ops)
        h->kv_remote = *ops;
    else
        memset(&h->kv_remote, 0, sizeof h->kv_remote);
    return h->cur && ops ? reload_state(h, "remote buckets", 1, err, errsz) : 0;
}

int script_reload_from(script_host_t *h, const char *why, script_source_fn fn, void *ctx, char *err,
                       size_t errsz)
{
    h->source = fn;
    h->source_ctx = ctx;
    int rc = script_reload(h, why, err, errsz);
    h->source = NULL;
    h->source_ctx = NULL;
    return rc;
}

state_t *script_state_build(script_host_t *h, script_source_fn fn, void *ctx, char *err, size_t errsz)
{
    h->source = fn;
    h->source_ctx = ctx;
    state_t *st = state_new(h, &h->cur->limits, err, errsz);
    h->source = NULL;
    h->source_ctx = NULL;
    return st;
}

void script_state_release(state_t *st)
{
    state_free(st);
}

int script_set_deployed(script_host_t *h, const char *entry, const char *dir, const char *label)
{
    char *e = NULL, *d = NULL, *l = NULL;
    if (entry && (!(e = strdup(entry)) || !(d = strdup(dir)) || !(l = strdup(label)))) {
        free(e);
        free(d);
        return -1;
    }
    free(h->deployed_entry);
    free(h->deployed_dir);
    free(h->deployed_label);
    h->deployed_entry = e;
    h->deployed_dir = d;
    h->deployed_label = l;
    return 0;
}

int script_load_deployed(script_host_t *h, const char *entry, const char *dir, const char *label, const char *why,
                         char *err, size_t errsz)
{
    char *e = h->deployed_entry, *d = h->deployed_dir, *l = h->deployed_label;
    char last[sizeof h->st.last_reload];
    int rc = -1;
    snprintf(last, sizeof last, "%s", h->st.last_reload);
    h->deployed_entry = h->deployed_dir = h->deployed_label = NULL;
    if (script_set_deployed(h, entry, dir, label) < 0) {
        snprintf(err, errsz, "out of memory");
        goto fail;
    }
    if ((rc = script_reload(h, why, err, errsz)) == 0) {
        free(e);
        free(d);
        free(l);
        return 0;
    }
    snprintf(h->st.last_reload, sizeof h->st.last_reload, "%s", last);
fail:
    script_set_deployed(h, NULL, NULL, NULL);
    h->deployed_entry = e;
    h->deployed_dir = d;
    h->deployed_label = l;
    return rc;
}

const char *script_source_text(const script_host_t *h, const char *path, size_t *len)
{
    return h->source ? h->source(h->source_ctx, path, len) : NULL;
}

const char *const *script_files(const script_host_t *h, size_t *n)
{
    *n = h->cur->nfiles;
    return (const char *const *)h->cur->files;
}

void script_set_swap_hook(script_host_t *h, void (*fn)(void *ctx, const char *why), void *ctx)
{
    h->on_swap = fn;
    h->on_swap_ctx = ctx;
}

kv_t *script_host_kv(script_host_t *h)
{
    return h->kv;
}

const char *script_config_dir(const script_host_t *h)
{
    return h->config_dir;
}

const char *script_storage_dir(const script_host_t *h)
{
    return h->cur->storage_dir[0] ? h->cur->storage_dir : NULL;
}

void script_default_storage_dir(const script_host_t *h, char *out, size_t n)
{
    snprintf(out, n, "%s/data", h->config_dir ? h->config_dir : ".");
}

int script_declared_streams(const script_host_t *h)
{
    return h->cur->nstreams;
}

int script_open_streams(const script_host_t *h, streams_t *sm, int fsync, char *err, size_t errsz)
{
    const state_t *st = h->cur;
    static stream_cfg_t cfg[STATE_STREAMS_MAX];
    for (int i = 0; i < st->nstreams; i++) {
        cfg[i] = st->streams[i]; /* shallow: streams_apply copies what it keeps */
        cfg[i].o.fsync = fsync;
    }
    return streams_apply(sm, cfg, st->nstreams, NULL, 0, err, errsz);
}

void script_host_set_bucket_maker(script_host_t *h, int (*fn)(void *ctx, const char *bucket, char *err, size_t errsz),
                                  void *ctx)
{
    h->bucket_maker = fn;
    h->bucket_ctx = ctx;
}

int script_host_set_streams(script_host_t *h, streams_t *sm, char *err, size_t errsz)
{
    if (h->streams && h->streams != sm) {
        streams_set_hooks(h->streams, NULL);
        kv_migrate_cancel(h); /* it writes into those streams */
    }
    h->streams = sm;
    if (!sm)
        return 0;
    /* tide.kv is the bucket `tide` in the data directory, which the entry
     * file names (in memory without a bucket maker): move the store it
     * kept before into the bucket, then load the entry file again so that
     * code it runs at load time (defaults such as `if not tide.kv.has(k)
     * ...`) sees the stored values, as it does on a reload. */
    kv_t *fresh = kv_new(), *old = h->kv;
    if (!fresh || (h->bucket_maker && kv_migrate(h, err, errsz) < 0)) {
        if (!fresh)
            snprintf(err, errsz, "out of memory");
        kv_free(fresh);
        return -1;
    }
    h->kv = fresh;
    kv_set_limits(fresh, &h->cur->kv_lim);
    state_t *st = state_new(h, &h->cur->limits, err, errsz);
    if (!st) {
        h->kv = old;
        kv_free(fresh);
        return -1;
    }
    if (h->srv && (st->auth || h->cur->auth))
        server_set_auth(h->srv, st->auth); /* live clients follow at once */
    state_free(h->cur);
    h->cur = st;
    kv_set_limits(h->kv, &st->kv_lim);
    apply_tls(h);
    kv_free(old);
    if (h->debounce) /* attached with file watching: watch the new state's files */
        watch_start(h);
    if (durable_bind(h, h->cur, 1, err, errsz) < 0)
        return -1;
    if (streams_apply(sm, h->cur->streams, h->cur->nstreams, h->cur->consumers, h->cur->nconsumers, err, errsz) < 0)
        return -1;
    durable_set_hooks(h);
    return durable_bind(h, h->cur, 0, err, errsz);
}

void script_get_stats(const script_host_t *h, script_stats_t *out)
{
    *out = h->st;
    out->decodes = event_decode_count();
    out->memory = h->cur ? h->cur->mem_used : 0;
    out->rules = h->cur ? (int)h->cur->nrules : 0;
}

/* {"message","at","time","traceback":[frames]} of r's last error. */
static cJSON *last_error_json(const rule_t *r)
{
    cJSON *e = cJSON_CreateObject(), *tb = cJSON_CreateArray();
    char t[64];
    cJSON_AddStringToObject(e, "message", r->last_error);
    cJSON_AddStringToObject(e, "at", r->last_error_at);
    util_time_ns((int64_t)r->last_error_time * 1000000000, t, sizeof t);
    cJSON_AddStringToObject(e, "time", t);
    for (const char *p = r->last_trace; *p;) {
        size_t n = strcspn(p, "\n");
        char *frame = util_mem_dup(p, n);
        if (frame)
            cJSON_AddItemToArray(tb, cJSON_CreateString(frame));
        free(frame);
        p += n + (p[n] == '\n');
    }
    cJSON_AddItemToObject(e, "traceback", tb);
    return e;
}

void script_rules_json(const script_host_t *h, char **buf, size_t *len)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && h->cur && i < h->cur->nrules; i++) {
        rule_t *r = h->cur->rules[i];
        cJSON *o = cJSON_CreateObject();
        if (!o)
            break;
        cJSON_AddStringToObject(o, "kind", kind_names[r->kind]);
        cJSON_AddStringToObject(o, r->kind == RULE_UPGRADE ? "type" : "pattern", r->pattern);
        if (r->kind == RULE_UPGRADE)
            json_add_int(o, "from_version", r->from_version);
        cJSON_AddStringToObject(o, "where", r->where);
        json_add_uint(o, "calls", r->calls);
        json_add_uint(o, "errors", r->errors);
        if (r->kind == RULE_FILTER || r->kind == RULE_ROUTE)
            json_add_uint(o, "dropped", r->dropped);
        if (r->kind == RULE_ROUTE)
            json_add_uint(o, "routed", r->routed);
        if (r->last_error_time)
            cJSON_AddItemToObject(o, "last_error", last_error_json(r));
        cJSON_AddItemToArray(arr, o);
    }
    *buf = arr ? json_print(arr, len) : NULL;
    if (!*buf)
        *len = 0;
    cJSON_Delete(arr);
}

/* ---- the prompt (tide repl) -------------------------------------------------- */

lua_State *script_lua(script_host_t *h)
{
    return h->cur->L;
}

void script_push_env(script_host_t *h)
{
    lua_rawgeti(h->cur->L, LUA_REGISTRYINDEX, h->cur->env_ref);
}

int script_pcall(script_host_t *h, int nargs, int nres)
{
    return budget_call(h->cur, nargs, nres);
}

int script_load_file(script_host_t *h, const char *path, char *err, size_t errsz)
{
    state_t *st = h->cur;
    lua_State *L = st->L;
    char chunkname[PATH_MAX + 8];
    int top = lua_gettop(L);
    sandbox_chunk_name(h, path, chunkname, sizeof chunkname);
    int rc = sandbox_load_file(st, path, chunkname);
    if (rc == LUA_OK)
        rc = budget_call(st, 0, 0);
    if (rc != LUA_OK)
        snprintf(err, errsz, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_settop(L, top);
    return rc == LUA_OK ? 0 : -1;
}

void script_set_identity(script_host_t *h, const script_identity_t *who)
{
    if (!h)
        return;
    h->has_test_who = who != NULL;
    if (who)
        h->test_who = *who;
    else
        memset(&h->test_who, 0, sizeof h->test_who);
}

void script_identity_from_lua(lua_State *L, int idx, script_identity_t *who, const char *what)
{
    static const char *const known[] = {"user", "id", "addr", "tls", NULL};
    idx = lua_absindex(L, idx);
    memset(who, 0, sizeof *who);
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int ok = 0;
        for (int i = 0; known[i] && lua_type(L, -2) == LUA_TSTRING; i++)
            ok |= !strcmp(lua_tostring(L, -2), known[i]);
        if (!ok)
            luaL_error(L, "%s: the identity takes user, id, addr and tls, not '%s'", what, luaL_tolstring(L, -2, NULL));
        lua_pop(L, 1);
    }
    if (lua_getfield(L, idx, "user") != LUA_TNIL) {
        size_t n = 0;
        const char *u = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
        if (!u || n == 0 || n >= sizeof who->user)
            luaL_error(L, "%s: user must be a name of 1 to %d bytes", what, (int)sizeof who->user - 1);
        memcpy(who->user, u, n + 1);
    }
    if (lua_getfield(L, idx, "id") != LUA_TNIL) {
        int isint = 0;
        lua_Integer id = lua_tointegerx(L, -1, &isint);
        if (!isint || id < 0)
            luaL_error(L, "%s: id must be a whole number >= 0", what);
        who->id = (unsigned long long)id;
    }
    if (lua_getfield(L, idx, "addr") != LUA_TNIL) {
        size_t n = 0;
        const char *a = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
        if (!a || n >= sizeof who->addr)
            luaL_error(L, "%s: addr must be a string of at most %d bytes", what, (int)sizeof who->addr - 1);
        memcpy(who->addr, a, n + 1);
    }
    if (lua_getfield(L, idx, "tls") != LUA_TNIL && lua_type(L, -1) != LUA_TBOOLEAN)
        luaL_error(L, "%s: tls must be true or false", what);
    who->tls = lua_toboolean(L, -1);
    lua_pop(L, 4);
}

void script_set_trace(script_host_t *h, void (*fn)(void *ctx, const char *line), void *ctx)
{
    h->trace = fn;
    h->trace_ctx = ctx;
}

int script_tracing(const script_host_t *h)
{
    return h->trace != NULL;
}

void script_set_reload_hook(script_host_t *h, void (*fn)(void *ctx), void *ctx)
{
    h->on_reload = fn;
    h->on_reload_ctx = ctx;
}

void script_foreach_rule(const script_host_t *h, void (*fn)(void *ctx, const script_rule_info_t *r), void *ctx)
{
    for (size_t i = 0; h->cur && i < h->cur->nrules; i++) {
        const rule_t *r = h->cur->rules[i];
        script_rule_info_t info = {kind_names[r->kind], r->pattern, r->from_version, r->where, r->calls, r->errors,
                                   r->dropped, r->routed, r->kind == RULE_DURABLE ? r->consumer : ""};
        fn(ctx, &info);
    }
}

const char *script_dead_letter_prefix(const script_host_t *h)
{
    return h && h->cur ? h->cur->limits.dead_letter : "$TIDE.DEAD";
}

void script_latency(const script_host_t *h, const uint64_t **counts, double *sum, uint64_t *count)
{
    *counts = h->lat_counts;
    *sum = h->lat_sum;
    *count = h->lat_count;
}

const cluster_settings_t *script_cluster_settings(const script_host_t *h)
{
    return h && h->cur ? h->cur->cluster : NULL;
}

int script_cluster_streams(const script_host_t *h, const cluster_stream_t **out)
{
    *out = h && h->cur ? h->cur->cluster_streams : NULL;
    return h && h->cur ? h->cur->ncluster_streams : 0;
}

int script_cluster_consumers(const script_host_t *h, const consumer_cfg_t **out)
{
    *out = h && h->cur ? h->cur->cluster_consumers : NULL;
    return h && h->cur ? h->cur->ncluster_consumers : 0;
}

int script_http_setting(const script_host_t *h, char *addr, size_t n)
{
    if (!h->cur)
        return 0;
    if (h->cur->http_off)
        return -1;
    if (!h->cur->http_addr[0])
        return 0;
    snprintf(addr, n, "%s", h->cur->http_addr);
    return 1;
}

double script_http_ack_timeout(const script_host_t *h)
{
    return h && h->cur && h->cur->http_ack_timeout > 0 ? h->cur->http_ack_timeout : 10;
}

double script_http_idle_timeout(const script_host_t *h)
{
    return h && h->cur && h->cur->http_idle_timeout > 0 ? h->cur->http_idle_timeout : 10;
}

int script_http_binary(const script_host_t *h, const char *subject, size_t len)
{
    for (int i = 0; h->cur && i < h->cur->nhttp_binary; i++)
        if (subject_matches(h->cur->http_binary[i], strlen(h->cur->http_binary[i]), subject, len))
            return 1;
    return 0;
}

int script_auth_configured(const script_host_t *h)
{
    return h->cur && h->cur->auth;
}

int script_admin_eval(const script_host_t *h)
{
    return h->cur && h->cur->admin_eval;
}

int script_is_processing(const script_host_t *h)
{
    return h->processing;
}
