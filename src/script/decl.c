/* decl.c - what an entry file declares for the persistent queue:
 *
 *   storage  { dir = "data" }
 *   stream   "name" { subjects, max_msgs, max_bytes, max_age, fsync,
 *                     sync_interval, dedup_window, segment_size, retention }
 *   consumer "name" { stream, filter, deliver, queue, ack_wait, max_deliver,
 *                     backoff, max_ack_pending, deliver_policy, start_seq,
 *                     start_time, dead_letter, ordered_by }
 *
 * Unknown keys and bad values are errors naming the file and line.  The
 * declarations are kept in the state and made current by streams_apply
 * when the state is (see script.c). */
#include "script_internal.h"

#include <math.h>

#include "stream.h"

static void where(lua_State *L, char *out, size_t n)
{
    lua_Debug ar;
    out[0] = 0;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(out, n, "%s:%d", ar.short_src, ar.currentline);
}

/* "2s", "250ms", "5m", "1h", "7d" or a number of seconds. */
static double duration_value(lua_State *L, int idx, const char *what, const char *key)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double v = lua_tonumber(L, idx);
        if (!(v >= 0) || isinf(v))
            luaL_error(L, "%s: %s must be a duration of 0 or more", what, key);
        return v;
    }
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: %s must be a number of seconds or a string such as \"30s\"", what, key);
    const char *s = lua_tostring(L, idx);
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0)
        luaL_error(L, "%s: cannot read %s '%s' as a duration (e.g. \"250ms\", \"30s\", \"5m\", \"7d\")", what, key, s);
    if (!strcmp(end, "ms")) v /= 1e3;
    else if (!strcmp(end, "us")) v /= 1e6;
    else if (!strcmp(end, "m")) v *= 60;
    else if (!strcmp(end, "h")) v *= 3600;
    else if (!strcmp(end, "d")) v *= 86400;
    else if (*end && strcmp(end, "s"))
        luaL_error(L, "%s: unknown unit in %s '%s' (us, ms, s, m, h, d)", what, key, s);
    return v;
}

static double duration_opt(lua_State *L, int t, const char *what, const char *key, double def)
{
    double v = def;
    if (lua_getfield(L, t, key) != LUA_TNIL)
        v = duration_value(L, -1, what, key);
    lua_pop(L, 1);
    return v;
}

static uint64_t size_opt(lua_State *L, int t, const char *what, const char *key, uint64_t def)
{
    uint64_t v = def;
    int type = lua_getfield(L, t, key);
    if (type == LUA_TNUMBER) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
            luaL_error(L, "%s: %s must be a whole number of 0 or more", what, key);
        v = (uint64_t)lua_tointeger(L, -1);
    } else if (type == LUA_TSTRING) {
        const char *s = lua_tostring(L, -1);
        char *end;
        double d = strtod(s, &end), mul = 1;
        if (!strcasecmp(end, "kb") || !strcasecmp(end, "k")) mul = 1024;
        else if (!strcasecmp(end, "mb") || !strcasecmp(end, "m")) mul = 1048576;
        else if (!strcasecmp(end, "gb") || !strcasecmp(end, "g")) mul = 1073741824.0;
        else if (*end && strcasecmp(end, "b"))
            luaL_error(L, "%s: cannot read %s '%s' as a size (e.g. 1000, \"64MB\")", what, key, s);
        if (end == s || d < 0)
            luaL_error(L, "%s: cannot read %s '%s' as a size", what, key, s);
        v = (uint64_t)(d * mul);
    } else if (type != LUA_TNIL) {
        luaL_error(L, "%s: %s must be a number or a string such as \"1GB\"", what, key);
    }
    lua_pop(L, 1);
    return v;
}

static void string_opt(lua_State *L, int t, const char *what, const char *key, char *out, size_t n)
{
    if (lua_getfield(L, t, key) != LUA_TNIL) {
        size_t l;
        const char *s = lua_tolstring(L, -1, &l);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: %s must be a string", what, key);
        if (l >= n)
            luaL_error(L, "%s: %s is too long (at most %d bytes)", what, key, (int)n - 1);
        memcpy(out, s, l + 1);
    }
    lua_pop(L, 1);
}

static void check_name(lua_State *L, const char *kind, const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= STREAM_NAME_MAX)
        luaL_error(L, "%s name must be 1 to %d characters", kind, STREAM_NAME_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            luaL_error(L, "%s name '%s': use letters, digits, '_' and '-' only", kind, name);
    }
}

int decl_l_storage(lua_State *L)
{
    static const char *const known[] = {"dir", NULL};
    state_t *st = script_state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    settings_check_keys(L, 1, "storage", known);
    char dir[PATH_MAX] = "";
    string_opt(L, 1, "storage", "dir", dir, sizeof dir);
    if (!dir[0])
        return luaL_error(L, "storage: dir must be a directory name");
    if (dir[0] == '/')
        snprintf(st->storage_dir, sizeof st->storage_dir, "%s", dir);
    else if ((size_t)snprintf(st->storage_dir, sizeof st->storage_dir, "%s/%s", st->host->config_dir, dir) >=
             sizeof st->storage_dir)
        return luaL_error(L, "storage: dir is too long");
    return 0;
}

/* A consumer on a stream kept in JetStream: a durable pull consumer there
 * whose events only Lua handlers take (docs/cluster.md).  Raises. */
static void add_cluster_consumer(lua_State *L, const consumer_cfg_t *c)
{
    state_t *st = script_state_of(L);
    char what[100];
    snprintf(what, sizeof what, "consumer '%s'", c->name);
    if (c->deliver[0] || c->queue[0] || c->ordered_by[0])
        luaL_error(L, "%s: stream '%s' is kept in JetStream: its consumers take Lua handlers only (no deliver, "
                   "queue or ordered_by)", what, c->stream);
    if (c->deliver_policy == DELIVER_BY_START_TIME)
        luaL_error(L, "%s: deliver_policy by_start_time is not supported on a stream kept in JetStream", what);
    if (st->ncluster_consumers == STATE_CONSUMERS_MAX)
        luaL_error(L, "at most %d consumers on jetstream streams", STATE_CONSUMERS_MAX);
    if (!st->cluster_consumers && !(st->cluster_consumers = calloc(STATE_CONSUMERS_MAX, sizeof *c)))
        luaL_error(L, "out of memory");
    st->cluster_consumers[st->ncluster_consumers++] = *c;
}

/* stream "name" { backend = "jetstream", subjects, replicas, max_msgs,
 * max_bytes, max_age }: kept in the cluster's JetStream, not here. */
static int declare_cluster_stream(lua_State *L, const char *name, int t, const char *what)
{
    static const char *const known[] = {"backend", "subjects", "replicas", "max_msgs", "max_bytes", "max_age", NULL};
    state_t *st = script_state_of(L);
    cluster_stream_t *cs;
    settings_check_keys(L, t, what, known);
    if (st->ncluster_streams == CLUSTER_STREAMS_MAX)
        return luaL_error(L, "at most %d jetstream streams", CLUSTER_STREAMS_MAX);
    if (!st->cluster_streams && !(st->cluster_streams = calloc(CLUSTER_STREAMS_MAX, sizeof *cs)))
        return luaL_error(L, "out of memory");
    cs = &st->cluster_streams[st->ncluster_streams];
    memset(cs, 0, sizeof *cs);
    snprintf(cs->name, sizeof cs->name, "%s", name);
    where(L, cs->where, sizeof cs->where);
    if (lua_getfield(L, t, "subjects") == LUA_TSTRING) {
        lua_createtable(L, 1, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
    }
    int n = lua_type(L, -1) == LUA_TTABLE ? (int)lua_rawlen(L, -1) : 0;
    if (n < 1 || n > CLUSTER_STREAM_SUBJECTS)
        return luaL_error(L, "%s: subjects must be a list of 1 to %d subject patterns", what, CLUSTER_STREAM_SUBJECTS);
    for (int i = 1; i <= n; i++) {
        size_t pl;
        lua_rawgeti(L, -1, i);
        const char *p = lua_tolstring(L, -1, &pl);
        if (lua_type(L, -1) != LUA_TSTRING || !subject_valid_pattern(p, pl) || pl >= sizeof cs->subjects[0] ||
            p[0] == '$')
            return luaL_error(L, "%s: '%s' is not a subject pattern that travels in the cluster", what,
                              p ? p : luaL_typename(L, -1));
        memcpy(cs->subjects[cs->nsubjects++], p, pl + 1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    uint64_t r = size_opt(L, t, what, "replicas", 1);
    if (r < 1 || r > 5)
        return luaL_error(L, "%s: replicas must be 1 to 5", what);
    cs->replicas = (int)r;
    cs->max_msgs = size_opt(L, t, what, "max_msgs", 0);
    cs->max_bytes = size_opt(L, t, what, "max_bytes", 0);
    cs->max_age = duration_opt(L, t, what, "max_age", 0);
    st->ncluster_streams++;
    /* Consumers declared before it read it from the cluster too. */
    for (int i = 0; i < st->nconsumers;) {
        if (strcmp(st->consumers[i].stream, name)) {
            i++;
            continue;
        }
        add_cluster_consumer(L, &st->consumers[i]);
        memmove(&st->consumers[i], &st->consumers[i + 1], (size_t)(st->nconsumers - i - 1) * sizeof st->consumers[0]);
        st->nconsumers--;
    }
    return 0;
}

/* backend = "local" (the default) | "jetstream": 1 when the stream was
 * declared as one kept in JetStream, 0 when it is a local one.  Raises. */
static int other_backend(lua_State *L, const char *name, int t, const char *what)
{
    state_t *st = script_state_of(L);
    char backend[16] = "local";
    for (int i = 0; i < st->ncluster_streams; i++)
        if (!strcmp(st->cluster_streams[i].name, name))
            luaL_error(L, "%s is declared twice", what);
    string_opt(L, t, what, "backend", backend, sizeof backend);
    if (!strcmp(backend, "jetstream")) {
        declare_cluster_stream(L, name, t, what);
        return 1;
    }
    if (strcmp(backend, "local"))
        luaL_error(L, "%s: backend must be \"local\" or \"jetstream\"", what);
    if (lua_getfield(L, t, "replicas") != LUA_TNIL)
        luaL_error(L, "%s: replicas needs backend = \"jetstream\"", what);
    lua_pop(L, 1);
    return 0;
}

/* A stream declaration's subjects (one pattern or a list) into slot;
 * raises on a bad one. */
static void stream_subjects(lua_State *L, int t, const char *what, stream_cfg_t *slot)
{
    if (lua_getfield(L, t, "subjects") == LUA_TSTRING) {
        lua_createtable(L, 1, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
    }
    if (lua_type(L, -1) != LUA_TTABLE || lua_rawlen(L, -1) == 0)
        luaL_error(L, "%s: subjects must be a list of subject patterns", what);
    int n = (int)lua_rawlen(L, -1);
    if (n > STREAM_SUBJECTS_MAX)
        luaL_error(L, "%s: at most %d subjects", what, STREAM_SUBJECTS_MAX);
    for (int i = 1; i <= n; i++) {
        size_t pl;
        lua_rawgeti(L, -1, i);
        const char *p = lua_tolstring(L, -1, &pl);
        if (lua_type(L, -1) != LUA_TSTRING || !subject_valid_pattern(p, pl))
            luaL_error(L, "%s: '%s' is not a valid subject pattern", what, p ? p : luaL_typename(L, -1));
        if (!(slot->subjects[slot->nsubjects] = util_mem_dup(p, pl)))
            luaL_error(L, "out of memory");
        slot->nsubjects++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static int declare_stream(lua_State *L, const char *name)
{
    static const char *const known[] = {"subjects", "max_msgs", "max_bytes", "max_age", "fsync", "sync_interval",
                                        "dedup_window", "segment_size", "dedup_key", "backend", "retention", NULL};
    state_t *st = script_state_of(L);
    char what[100];
    snprintf(what, sizeof what, "stream '%s'", name);
    luaL_checktype(L, -1, LUA_TTABLE);
    int t = lua_gettop(L);
    for (int i = 0; i < st->nstreams; i++)
        if (!strcmp(st->streams[i].name, name))
            return luaL_error(L, "%s is declared twice", what);
    if (other_backend(L, name, t, what))
        return 0;
    settings_check_keys(L, t, what, known);
    if (st->nstreams == STATE_STREAMS_MAX)
        return luaL_error(L, "at most %d streams", STATE_STREAMS_MAX);
    stream_cfg_t c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "%s", name);
    where(L, c.where, sizeof c.where);
    /* Anchor: cleanup of a half-made cfg on error is simpler when it is in
     * the state already. */
    c.dedup_fn_ref = LUA_NOREF;
    stream_cfg_t *slot = &st->streams[st->nstreams++];
    *slot = c;
    stream_subjects(L, t, what, slot);
    slog_opts_t *o = &slot->o;
    o->max_msgs = size_opt(L, t, what, "max_msgs", 0);
    o->max_bytes = size_opt(L, t, what, "max_bytes", 0);
    o->max_age = duration_opt(L, t, what, "max_age", 0);
    o->dedup_window = duration_opt(L, t, what, "dedup_window", 120);
    o->sync_interval = duration_opt(L, t, what, "sync_interval", 1);
    o->segment_size = (size_t)size_opt(L, t, what, "segment_size", 64u << 20);
    if (o->segment_size < 4096 || o->segment_size > (1u << 30))
        return luaL_error(L, "%s: segment_size must be between 4KB and 1GB", what);
    char fs[16] = "always";
    string_opt(L, t, what, "fsync", fs, sizeof fs);
    if (!strcmp(fs, "always")) o->fsync = FSYNC_ALWAYS;
    else if (!strcmp(fs, "interval")) o->fsync = FSYNC_INTERVAL;
    else if (!strcmp(fs, "never")) o->fsync = FSYNC_NEVER;
    else return luaL_error(L, "%s: fsync must be \"always\", \"interval\" or \"never\"", what);
    if (o->fsync == FSYNC_INTERVAL && o->sync_interval <= 0)
        return luaL_error(L, "%s: sync_interval must be above 0", what);
    char ret[16] = "limits";
    string_opt(L, t, what, "retention", ret, sizeof ret);
    if (!strcmp(ret, "limits")) slot->retention = RETENTION_LIMITS;
    else if (!strcmp(ret, "interest")) slot->retention = RETENTION_INTEREST;
    else if (!strcmp(ret, "workqueue")) slot->retention = RETENTION_WORKQUEUE;
    else return luaL_error(L, "%s: retention must be \"limits\", \"interest\" or \"workqueue\"", what);
    /* dedup_key = function(e) return key end: the key of events that have
     * neither a Nats-Msg-Id nor a CloudEvents source and id. */
    int kt = lua_getfield(L, t, "dedup_key");
    if (kt == LUA_TFUNCTION)
        slot->dedup_fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else if (kt != LUA_TNIL)
        return luaL_error(L, "%s: dedup_key must be a function(e) returning the key", what);
    else
        lua_pop(L, 1);
    return 0;
}

/* A consumer's subjects: stream, filter, deliver, queue, dead_letter,
 * ordered_by (raises on a bad one). */
static void consumer_subjects(lua_State *L, int t, const char *what, consumer_cfg_t *c)
{
    string_opt(L, t, what, "stream", c->stream, sizeof c->stream);
    if (!c->stream[0])
        luaL_error(L, "%s: stream is required", what);
    string_opt(L, t, what, "filter", c->filter, sizeof c->filter);
    if (c->filter[0] && !subject_valid_pattern(c->filter, strlen(c->filter)))
        luaL_error(L, "%s: filter '%s' is not a valid subject pattern", what, c->filter);
    string_opt(L, t, what, "deliver", c->deliver, sizeof c->deliver);
    if (c->deliver[0] && !subject_valid_literal(c->deliver, strlen(c->deliver)))
        luaL_error(L, "%s: deliver '%s' must be a subject without wildcards", what, c->deliver);
    string_opt(L, t, what, "queue", c->queue, sizeof c->queue);
    string_opt(L, t, what, "dead_letter", c->dead_letter, sizeof c->dead_letter);
    if (c->dead_letter[0] && !subject_valid_literal(c->dead_letter, strlen(c->dead_letter)))
        luaL_error(L, "%s: dead_letter '%s' must be a subject without wildcards", what, c->dead_letter);
    string_opt(L, t, what, "ordered_by", c->ordered_by, sizeof c->ordered_by);
    if (c->ordered_by[0] && strncmp(c->ordered_by, "data.", 5) && strncmp(c->ordered_by, "header:", 7) &&
        strcmp(c->ordered_by, "subject"))
        luaL_error(L, "%s: ordered_by must be a field path such as \"data.order_id\", "
                             "\"header:Name\" or \"subject\"", what);
}

/* A consumer's limits: ack_wait, max_deliver, max_ack_pending, backoff. */
static void consumer_limits(lua_State *L, int t, const char *what, consumer_cfg_t *c)
{
    c->ack_wait = duration_opt(L, t, what, "ack_wait", 30);
    if (c->ack_wait <= 0)
        luaL_error(L, "%s: ack_wait must be above 0", what);
    c->max_deliver = -1;
    if (lua_getfield(L, t, "max_deliver") != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || (lua_tointeger(L, -1) < 1 && lua_tointeger(L, -1) != -1))
            luaL_error(L, "%s: max_deliver must be a whole number of 1 or more (or -1: no limit)", what);
        c->max_deliver = lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    c->max_ack_pending = 1000;
    if (lua_getfield(L, t, "max_ack_pending") != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1)
            luaL_error(L, "%s: max_ack_pending must be a whole number of 1 or more", what);
        c->max_ack_pending = lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, t, "backoff") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TTABLE)
            luaL_error(L, "%s: backoff must be a list of durations", what);
        int n = (int)lua_rawlen(L, -1);
        if (n > CONSUMER_BACKOFF_MAX)
            luaL_error(L, "%s: at most %d backoff steps", what, CONSUMER_BACKOFF_MAX);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            c->backoff[c->nbackoff++] = duration_value(L, -1, what, "backoff");
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* Where a consumer starts: deliver_policy, start_seq, start_time. */
static void consumer_start(lua_State *L, int t, const char *what, consumer_cfg_t *c)
{
    char pol[32] = "all";
    string_opt(L, t, what, "deliver_policy", pol, sizeof pol);
    if (lua_getfield(L, t, "start_seq") != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1)
            luaL_error(L, "%s: start_seq must be a sequence number (1 or more)", what);
        c->start_seq = (uint64_t)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, t, "start_time") != LUA_TNIL) {
        if (lua_type(L, -1) == LUA_TNUMBER) {
            c->start_time = (int64_t)(lua_tonumber(L, -1) * 1e9);
        } else {
            const char *s = luaL_checkstring(L, -1);
            struct tm tm;
            memset(&tm, 0, sizeof tm);
            const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
            if (!rest)
                luaL_error(L, "%s: start_time must be RFC 3339 (2026-01-02T15:04:05Z) or seconds since "
                                     "the epoch", what);
            c->start_time = ((int64_t)timegm(&tm)) * 1000000000 + util_frac_ns(rest, &rest);
        }
    }
    lua_pop(L, 1);
    if (!strcmp(pol, "all"))
        c->deliver_policy = c->start_seq ? DELIVER_BY_START_SEQ : c->start_time ? DELIVER_BY_START_TIME : DELIVER_ALL;
    else if (!strcmp(pol, "new")) c->deliver_policy = DELIVER_NEW;
    else if (!strcmp(pol, "last")) c->deliver_policy = DELIVER_LAST;
    else if (!strcmp(pol, "by_start_sequence")) c->deliver_policy = DELIVER_BY_START_SEQ;
    else if (!strcmp(pol, "by_start_time")) c->deliver_policy = DELIVER_BY_START_TIME;
    else
        luaL_error(L, "%s: deliver_policy must be \"all\", \"new\", \"last\", \"by_start_sequence\" or "
                             "\"by_start_time\"", what);
    if (c->deliver_policy == DELIVER_BY_START_SEQ && !c->start_seq)
        luaL_error(L, "%s: deliver_policy by_start_sequence needs start_seq", what);
    if (c->deliver_policy == DELIVER_BY_START_TIME && !c->start_time)
        luaL_error(L, "%s: deliver_policy by_start_time needs start_time", what);
}

static int declare_consumer(lua_State *L, const char *name)
{
    static const char *const known[] = {"stream", "filter", "deliver", "queue", "ack_wait", "max_deliver", "backoff",
                                        "max_ack_pending", "deliver_policy", "start_seq", "start_time",
                                        "dead_letter", "ordered_by", NULL};
    state_t *st = script_state_of(L);
    char what[100];
    snprintf(what, sizeof what, "consumer '%s'", name);
    luaL_checktype(L, -1, LUA_TTABLE);
    int t = lua_gettop(L);
    settings_check_keys(L, t, what, known);
    for (int i = 0; i < st->nconsumers; i++)
        if (!strcmp(st->consumers[i].name, name))
            return luaL_error(L, "%s is declared twice", what);
    for (int i = 0; i < st->ncluster_consumers; i++)
        if (!strcmp(st->cluster_consumers[i].name, name))
            return luaL_error(L, "%s is declared twice", what);
    if (st->nconsumers == STATE_CONSUMERS_MAX)
        return luaL_error(L, "at most %d consumers", STATE_CONSUMERS_MAX);
    consumer_cfg_t c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "%s", name);
    where(L, c.where, sizeof c.where);
    consumer_subjects(L, t, what, &c);
    consumer_limits(L, t, what, &c);
    consumer_start(L, t, what, &c);
    for (int i = 0; i < st->ncluster_streams; i++)
        if (!strcmp(st->cluster_streams[i].name, c.stream)) {
            add_cluster_consumer(L, &c);
            return 0;
        }
    st->consumers[st->nconsumers++] = c;
    return 0;
}

/* stream "name" { ... } is stream("name")({ ... }); stream("name", {...}) works too. */
static int stream_body(lua_State *L)
{
    return declare_stream(L, lua_tostring(L, lua_upvalueindex(1)));
}

static int consumer_body(lua_State *L)
{
    return declare_consumer(L, lua_tostring(L, lua_upvalueindex(1)));
}

int decl_l_stream(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    check_name(L, "stream", name);
    if (lua_gettop(L) >= 2)
        return declare_stream(L, name);
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, stream_body, 1);
    return 1;
}

int decl_l_consumer(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    check_name(L, "consumer", name);
    if (lua_gettop(L) >= 2)
        return declare_consumer(L, name);
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, consumer_body, 1);
    return 1;
}
