/*
 * script_internal.h - what the parts of the script host share: the rule,
 * state and host structures, and the functions one part calls in another.
 *
 *   script.c    host and states: create, load, reload, stats, the prompt's hooks
 *   budget.c    instruction, time and memory budgets; protected calls
 *   sandbox.c   the environment scripts see: loading, require, guarded functions
 *   settings.c  listen{}, limits{}, scripting{}, admin{}, http{}, tls{}
 *   settings_auth.c  auth{}
 *   settings_cluster.c  cluster{}
 *   pipeline.c  rules and the pipeline itself: upgrade, filter, route, deliver, on
 *   watch.c     reloading on file changes and SIGHUP
 *   decl.c      storage{}, stream "name" {}, consumer "name" {}
 *   durable.c   Lua handlers bound to durable consumers, and the hooks
 *               the streams call (upgrades, dedup keys)
 *
 * Not for use outside these files; script.h is the host's public face.
 */
#ifndef TIDE_SCRIPT_INTERNAL_H
#define TIDE_SCRIPT_INTERNAL_H

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/util.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "client.h"
#include "dead_letter.h"
#include "dict.h"
#include "event.h"
#include "json_lua.h"
#include "kv_lua.h"
#include "log.h"
#include "msgq.h"
#include "script.h"
#include "stream.h"
#include "subject.h"
#include "tls.h"
#include "util.h"

#define HOOK_STEP 1000
#define MATCH_CACHE_MAX 4096
#define UPGRADE_CHAIN_MAX 64
#define ERROR_LOG_INTERVAL 10
#define TRACE_FRAMES 12      /* Lua frames a rule error's traceback keeps (the innermost) */
#define TRACE_TEXT_MAX 1024  /* bytes of that traceback */
/* Stack slot of each state's main thread that holds the pipeline_run_event closure
 * for the state's whole life (its upvalue 1 anchors the event in the
 * pipeline; upvalue 2 is the event metatable). */
#define RUN_EVENT_SLOT 1

/* RULE_DURABLE: on(pattern, { consumer = ... }, fn), called by a durable
 * consumer with stored events, never by the live pipeline. */
enum rule_kind { RULE_UPGRADE, RULE_FILTER, RULE_ROUTE, RULE_HANDLER, RULE_DURABLE, RULE_KINDS };
static const char *const kind_names[] = {"upgrade", "filter", "route", "on", "on"};

typedef struct rule {
    int kind;
    char *pattern; /* subject pattern, or the event type for upgraders */
    size_t pattern_len;
    int64_t from_version;
    int fn_ref;
    char where[200]; /* "file.lua:12" of the function */
    uint64_t calls, errors, dropped, routed;
    /* The last error: its message, where it was raised (file:line; the
     * rule's own line when it was not raised in Lua, such as a route's
     * bad answer), its Lua frames one a line, and when (0: never). */
    char last_error[512];
    char last_error_at[200];
    char last_trace[TRACE_TEXT_MAX];
    time_t last_error_time;
    char consumer[64]; /* RULE_DURABLE: the consumer it takes events from */
    int batch;         /* RULE_DURABLE: events per call (1: one event, not a list) */
    double wait;       /* RULE_DURABLE: seconds a batch may wait to fill */
    /* RULE_UPGRADE: the upgrader for (pattern, from_version + 1), the
     * chain's next step, once looked up (next_known). */
    struct rule *next_up;
    int next_up_known;
} rule_t;

/* The rules that apply to one subject, in registration order. */
typedef struct match {
    rule_t **r[RULE_KINDS];
    size_t n[RULE_KINDS];
    struct match *retired; /* the next in state_t.retired_matches */
} match_t;


enum budget { BUDGET_OK = 0, BUDGET_INSTRUCTIONS, BUDGET_TIME, BUDGET_MEMORY };

#define MAX_MODULE_DIRS 16 /* scripting{path} entries */
#define STATE_STREAMS_MAX 64
#define STATE_CONSUMERS_MAX 128

/* The state's allocator keeps freed blocks of up to POOL_MAX bytes, by
 * POOL_GRAIN-byte class, at most POOL_KEEP per class (see budget_state_alloc). */
#define POOL_GRAIN 16
#define POOL_MAX 512
#define POOL_CLASSES (POOL_MAX / POOL_GRAIN)
#define POOL_KEEP 256

typedef struct state {
    lua_State *L;
    struct script_host *host;
    script_limits_t limits;
    size_t mem_used;
    void *pool[POOL_CLASSES]; /* free blocks by class, linked through their first word */
    unsigned pool_n[POOL_CLASSES];
    unsigned alloc_ticks;
    int env_ref; /* the sandbox environment */
    int ctx_ref; /* the ctx table handed to handlers */
    rule_t **rules;
    size_t nrules, caprules;
    int nkind[RULE_KINDS];
    /* First tokens of the subject patterns (filter, route, on), so a subject
     * no rule can match is told apart without a lookup; any_first: some
     * pattern starts with a wildcard. */
    dict_t first_tokens;
    int any_first;
    dict_t upgraders; /* "type\0version" -> rule */
    /* The last (type, version) an upgrader chain started from and its
     * upgrader (NULL: none); up_known 0: none cached.  Forgotten, with
     * every rule's next_up, when an upgrader is added. */
    char up_type[64];
    size_t up_tl;
    lua_Integer up_version;
    rule_t *up_rule;
    int up_known;
    dict_t matches;   /* subject -> match_t */
    /* The last subject seen and its match (NULL: ruled out by its first
     * token); last_len 0: none.  Cleared with the matches. */
    char last_subject[128];
    size_t last_len;
    match_t *last_mt;
    /* Events in the pipeline now (the prompt's can nest), and the match
     * tables forgotten meanwhile (a rule registered a rule), which those
     * events may still be going through: freed when the last one ends. */
    int pipelines;
    match_t *retired_matches;
    char **files;     /* every file loaded, for the watcher */
    size_t nfiles;
    /* The call in progress. */
    int in_call;
    int budget;
    uint64_t instructions;
    struct timespec deadline;
    int cur_depth;   /* depth of the event being handled */
    int cur_ev_idx;  /* its stack index, for ctx.publish, or 0 */
    /* Where the last error that reached a protected call was raised
     * (file:line of its first Lua frame) and its Lua frames, one a line;
     * written by budget_on_error, read and cleared by pipeline_rule_note_error. */
    char err_at[200];
    char err_trace[TRACE_TEXT_MAX];
    /* Settings the entry file declared. */
    int has_listen;
    char listen_host[256];
    int listen_port;
    int admin_eval;    /* admin { eval = true }: tide repl --connect may run code here */
    char http_addr[256]; /* listen { http = "host:port" } */
    char *http_binary[32]; /* http { binary = {...} }: subjects HTTP events reach in binary mode */
    int nhttp_binary;
    double http_ack_timeout; /* http { ack_timeout }: seconds, 0 for the default */
    double http_idle_timeout; /* http { idle_timeout }: seconds, 0 for the default */
    kv_limits_t kv_lim;       /* kv { ... }, or the defaults */
    int http_off;        /* listen { http = false } */
    char storage_dir[PATH_MAX]; /* storage { dir = ... }, resolved; "" when not said */
    stream_cfg_t streams[STATE_STREAMS_MAX];
    int nstreams;
    consumer_cfg_t consumers[STATE_CONSUMERS_MAX];
    int nconsumers;
    struct auth_config *auth; /* auth { ... } (settings_auth.c), NULL when absent */
    server_opts_t set; /* values of limits{} */
    unsigned set_mask; /* which of them */
    struct tls_context *tls; /* tls { ... }, built and checked at load (a reference); NULL when not said */
    struct cluster_settings *cluster; /* cluster { ... } (settings_cluster.c), owned; NULL when not said */
    cluster_stream_t *cluster_streams; /* stream { backend = "jetstream" } (decl.c), owned; NULL when none */
    int ncluster_streams;
    consumer_cfg_t *cluster_consumers; /* consumers on those streams (decl.c), owned; NULL when none */
    int ncluster_consumers;
    /* Update jobs whose function this state holds (kv_bucket_lua.c); a
     * state replaced while some wait is kept (retired) until the last ends. */
    int kv_jobs;
    int retired;
} state_t;

/*
 * What one ingress event's cascade (the events its handlers publish, and
 * theirs) has cost so far; each queued event of it holds a reference.
 */
typedef struct cascade {
    uint64_t instructions;
    double seconds;
    int emitted;
    int refs;
    int stopped; /* over its budget: what is left of it is dead-lettered */
    /* Started by an event a canary sent to a side (canary.c): the serial
     * of that canary (0: none) and the side (1: the candidate), so that
     * what the side's handlers publish runs through that side too. */
    uint64_t canary;
    int side;
} cascade_t;

/* Drops a reference to cascade c (NULL: none), freeing it with the last. */
void pipeline_cascade_release(struct script_host *h, cascade_t *c);

/* Lets script_drain give the loop back (base: the server's) between
 * queued events.  0, or -1 when out of memory. */
int script_drain_attach(struct script_host *h, struct event_base *base);

/* Drops every queued event (and the drain event): the host is going. */
void script_queue_clear(struct script_host *h);

/* Seconds a drain runs before it gives the loop back (script_drain). */
#define DRAIN_SLICE 0.005

/* kv { ... } unless the entry file says otherwise. */
#define KV_DEFAULT_MAX_VALUE (1024 * 1024)
#define KV_DEFAULT_MAX_BYTES ((size_t)256 * 1024 * 1024)
#define KV_DEFAULT_MAX_KEYS 1000000

/* Bits of state_t.set_mask. */
enum {
    SET_MAX_PAYLOAD = 1, SET_MAX_CONTROL_LINE = 2, SET_MAX_PENDING = 4, SET_PING_INTERVAL = 8,
    SET_MAX_PINGS_OUT = 16, SET_WRITE_DEADLINE = 32, SET_MAX_CONNECTIONS = 64, SET_MAX_PENDING_TOTAL = 128,
    SET_MAX_SUBS = 256,
};

typedef struct err_seen {
    time_t last;
    uint64_t suppressed;
} err_seen_t;

/* A directory inotify watches for the host (its loaded files' folders). */
typedef struct watch_dir {
    int wd;
    char path[PATH_MAX];
} watch_dir_t;

struct script_host {
    server_t *srv;
    char *config_path;
    char *config_dir;
    char *lib_dir;
    state_t *cur;
    kv_t *kv;
    script_stats_t st;
    msgq_t queue; /* events handlers published, run after the current one */
    struct cascade *cascade; /* of the event running now, once it published one */
    struct event *drain_ev;  /* runs the rest of the queue after the loop served others */
    int drain_yields;        /* the queue may wait for the loop (tide serve; not flows) */
    int processing;   /* inside script_process */
    dict_t errors_seen; /* rate limit for error logs */
    struct event *sighup;
    struct event *watch_ev;   /* inotify */
    int watch_fd;
    watch_dir_t *watch_dirs; /* what watch_fd watches */
    size_t nwatch_dirs;
    struct event *poll_timer; /* fallback when inotify is unavailable */
    struct event *debounce;
    time_t *poll_mtimes;
    size_t npoll;
    void (*trace)(void *ctx, const char *line); /* tide repl's trace, or NULL */
    void *trace_ctx;
    uint64_t lat_counts[SCRIPT_LATENCY_BUCKETS + 1]; /* rule call times, by bucket (+Inf last) */
    double lat_sum;
    double last_call_ms; /* how long the last rule call took (for the trace) */
    uint64_t lat_count;
    streams_t *streams; /* the persistent queue, or NULL */
    void (*on_reload)(void *ctx); /* after a new state took over (tide repl) */
    void *on_reload_ctx;
    void (*on_swap)(void *ctx, const char *why); /* after every swap (rule history) */
    void *on_swap_ctx;
    script_source_fn source; /* script_reload_from: files are read here first */
    void *source_ctx;
    struct shadow *shadow;          /* a candidate running beside the rules (shadow.c), or NULL */
    /* shadow.c's, reached through these so that the pipeline and the host
     * do not call it (it calls them): run an event with the shadow; free it */
    void (*shadow_process)(struct script_host *h, struct client *from, const proto_msg_t *m);
    void (*shadow_free)(struct script_host *h);
    /* a canary's: runs a queued event of cascade c through the side that
     * started it; 0 when c is not the running canary's (run it as usual) */
    int (*shadow_queued)(struct script_host *h, cascade_t *c, const proto_msg_t *m, int depth);
    uint64_t deploys; /* shadows and canaries started: their serials */
    /* a shadow's: hands stored events to the live handlers, then to the candidate's in dry mode */
    void (*shadow_durable)(struct script_host *h, const char *stream, const char *consumer,
                           const proto_msg_t *msgs, const uint64_t *seqs, const uint32_t *deliveries, int n,
                           stream_verdict_t *v);
    void (*on_deploy)(void *ctx, const char *state, const char *path, const char *reason); /* the history */
    void *on_deploy_ctx;
    struct shadow_decision *rec;    /* where the event running now notes what it does, or NULL */
    int dry;                        /* the shadow's candidate is running: capture, never act */
    kv_t *dry_kv;                   /* while a candidate loads: its scratch store */
    script_identity_t test_who; /* script_set_identity: who the server's own events are */
    int has_test_who;
    /* Makes the stream of a tide.kv.bucket (script_host_set_bucket_maker). */
    int (*bucket_maker)(void *ctx, const char *bucket, char *err, size_t errsz);
    void *bucket_ctx;
    /* A move of the old tide.kv store waiting for its writes to be durable
     * (kv_migrate), freed with the host if the node stops first. */
    struct migration *kv_migration;
    /* Rules deployed to the cluster (script_set_deployed): their entry
     * file runs after the entry file in every load; modules are looked
     * for in their directory too; chunk names begin with their label. */
    char *deployed_entry, *deployed_dir, *deployed_label;
    /* Buckets kept elsewhere (script_host_set_kv_remote), when has_kv_remote. */
    script_kv_remote_t kv_remote;
    int has_kv_remote;
    /* script.c's state_free, for a retired state's last update job to
     * free it (kv_bucket_lua.c), reached through here so that the bucket
     * code does not call the host it is part of. */
    void (*free_retired)(state_t *st);
};

/* ---- shadow.c: a candidate beside the live rules ---- */

/* What a decision is made of, for comparing the live one with the candidate's. */
enum { SHADOW_DELIVER, SHADOW_EMIT, SHADOW_DEAD, SHADOW_KV, SHADOW_DROP, SHADOW_ACK, SHADOW_KINDS };

#define SHADOW_ITEMS 8
/* One thing an event did, kept (cut short) to show when decisions differ. */
typedef struct shadow_item {
    int kind;
    size_t subject_len, data_len; /* as they were, before cutting */
    char subject[96];             /* or the key, the stage */
    char data[200];               /* or what ("set", "incr", the error) */
    char where[96];               /* the rule, for drops and dead letters */
} shadow_item_t;

/* One event's decision: counts and checksums per kind (compared), and the
 * first SHADOW_ITEMS things it did (shown). */
typedef struct shadow_decision {
    int n[SHADOW_KINDS];
    uint32_t sum[SHADOW_KINDS];
    uint32_t subjects; /* of the deliveries alone: routed vs data */
    char where[96];    /* the rule that dropped or dead-lettered it */
    shadow_item_t items[SHADOW_ITEMS];
    int nitems;
} shadow_decision_t;

/* Empties d for the next event. */
void shadow_decision_reset(shadow_decision_t *d);

/* Notes one thing the event running now does (h->rec is set): kind,
 * subject (or key, stage), data (or what), and the rule's file:line for
 * drops and dead letters.  Allocates nothing. */
void shadow_note(script_host_t *h, int kind, const char *subject, size_t sl, const char *data, size_t dl,
                 const char *where);


/* Stored events of consumer through the current state's handlers bound to
 * it, their verdicts in v (durable.c). */
void durable_run(script_host_t *h, const char *stream, const char *consumer, const proto_msg_t *msgs,
                 const uint64_t *seqs, const uint32_t *deliveries, int n, stream_verdict_t *v);

/* One event through the current state at depth (pipeline.c). */
void pipeline_run_one(script_host_t *h, struct client *from, const proto_msg_t *m, int depth);

/* A state built from the files as script_reload would (read through fn
 * first), not swapped in; NULL with the reason in err. */
state_t *script_state_build(script_host_t *h, script_source_fn fn, void *ctx, char *err, size_t errsz);
void script_state_release(state_t *st);

extern const char budget_keys[4];

state_t *script_state_of(lua_State *L);
void *budget_state_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* Frees the blocks the allocator kept (after lua_close). */
void budget_pool_free(state_t *st);
void budget_hook(lua_State *L, lua_Debug *ar);
int budget_call(state_t *st, int nargs, int nres);
/* The budgets of the call in progress, saved around a nested one. */
typedef struct budget_saved {
    int in_call, budget;
    uint64_t instructions;
    struct timespec deadline;
} budget_saved_t;
/* Starts a call's budgets (now: CLOCK_MONOTONIC), saving the outer call's. */
void budget_begin(state_t *st, budget_saved_t *outer, const struct timespec *now);
/* Ends the call: returns the budget that stopped it (BUDGET_OK: none) and
 * puts the outer call's back. */
int budget_end(state_t *st, const budget_saved_t *outer);
/* Counts a failed call; for a budget stop, replaces the error message on
 * top of the stack by one that names the limit. */
void budget_error(state_t *st, int budget);
/* Message handler for protected calls of scripts: records where the error
 * was raised and its traceback in st->err_at / err_trace (never allocates
 * while a budget stop unwinds). */
int budget_on_error(lua_State *L);
/* Counts a failure of rule r and keeps it as r's last error: msg, and
 * where it was raised (st->err_at when from_lua, else the rule's line)
 * with the traceback budget_on_error recorded, which it clears. */
void pipeline_rule_note_error(state_t *st, rule_t *r, const char *msg, int from_lua);
/* The log text of a failure of rule r (may be NULL): the printf line,
 * then r's last traceback, one frame a line, when it has one. */
void pipeline_rule_failure_text(char *out, size_t n, const rule_t *r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void budget_charge(lua_State *L, state_t *st, double work);
int sandbox_load_file(state_t *st, const char *path, const char *chunkname);
void sandbox_chunk_name(const script_host_t *h, const char *path, char *out, size_t n);
void sandbox_build_env(state_t *st);
int sandbox_at_panic(lua_State *L);
int sandbox_open_libs(lua_State *L);
int settings_l_listen(lua_State *L);
int settings_l_limits(lua_State *L);
int settings_l_http(lua_State *L);
int settings_l_kv(lua_State *L);
int settings_l_admin(lua_State *L);
int settings_l_scripting(lua_State *L);
int settings_l_auth(lua_State *L);
/* Checks what auth {} needs of the rest of the entry file, once it has
 * run: a user without a password (one only its certificate can name) is
 * allowed only under tls { verify = true, map_user = true }.  Raises. */
int settings_auth_finish(lua_State *L);
/* Field key of table t as a duration in seconds (a number, or "250ms",
 * "2s", "5m", "1h"); def when absent.  Raises on a bad value. */
double settings_duration(lua_State *L, int t, const char *key, double def);
int settings_l_tls(lua_State *L);
int settings_l_cluster(lua_State *L);
/* After the entry file ran: raises when a stream is kept in JetStream
 * without a cluster { } to reach it. */
void settings_cluster_finish(lua_State *L);
/* Raises "what: unknown setting 'k'" for a key of table t not in known. */
void settings_check_keys(lua_State *L, int t, const char *what, const char *const *known);
int decl_l_storage(lua_State *L);
int decl_l_stream(lua_State *L);
int decl_l_consumer(lua_State *L);
void watch_stop(script_host_t *h);
void watch_on_debounce(evutil_socket_t fd, short what, void *arg);
void watch_start(script_host_t *h);
void watch_on_sighup(evutil_socket_t fd, short what, void *arg);
void pipeline_rule_free(rule_t *r);

/* Frees the match tables st->retired_matches holds. */
void pipeline_free_retired(state_t *st);
int pipeline_l_filter(lua_State *L);
int pipeline_l_route(lua_State *L);
int pipeline_l_on(lua_State *L);
int pipeline_l_upgrade(lua_State *L);
int pipeline_l_ctx_publish(lua_State *L);
int pipeline_l_ctx_reply(lua_State *L);
/* Dead-letters event m after a failure at stage (rule r, NULL for the
 * pipeline itself): logs it with its traceback, publishes the dead letter
 * (dead_letter.h) and counts it, or counts and logs its loss. */
void pipeline_dead_letter(script_host_t *h, state_t *st, const proto_msg_t *m, const char *stage, const rule_t *r,
                          const char *error);
int pipeline_run_event(lua_State *L);
int script_add_rule(lua_State *L, int kind, const char *pattern, size_t plen, int64_t from, int fn_idx);
int script_upgrade_possible(state_t *st, const proto_msg_t *m);
int script_call_rule(state_t *st, rule_t *r, int ev_idx);
/* The same with a third argument (the value at meta_idx; 0: none). */
int script_call_rule_meta(state_t *st, rule_t *r, int ev_idx, int meta_idx);
/* Runs the upgraders on the event object at obj_idx, giving them ev_idx
 * (the object or its handle) (trace lines at depth td).  0, or -1 with the
 * error pushed and *failed set. */
int pipeline_run_upgraders(lua_State *L, state_t *st, int obj_idx, int ev_idx, rule_t **failed, int td);
/* Runs the events handlers published (ctx.publish) through the pipeline. */
void script_drain(script_host_t *h);
/* Makes the event at ev_idx the one ctx.publish correlates with (0: none). */
void script_set_handled(lua_State *L, state_t *st, int ev_idx);
int durable_l_on(lua_State *L);
void durable_push_api(lua_State *L);
void durable_set_hooks(script_host_t *h);
/* Binds the consumers st's durable handlers name (check_only: just checks).
 * 0, or -1 with err when one names an undeclared consumer. */
int durable_bind(script_host_t *h, state_t *st, int check_only, char *err, size_t errsz);
void script_log_rate_limited(script_host_t *h, const char *text);

/* The count hook, for arm_stop (defined after it). */
lua_Hook budget_hook_fn(void);

#endif
