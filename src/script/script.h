/*
 * script.h - the script host: the Lua pipeline every published event goes
 * through, the sandbox and budgets scripts run under, and hot reload.
 *
 * The entry file (tide serve -c tide.lua) is Lua: it declares settings
 * (listen, limits, scripting) and registers rules:
 *
 *   upgrade(type, from_version, fn(e))  -> e at from_version + 1
 *   filter(pattern, fn(e))              -> falsy drops the event
 *   route(pattern, fn(e))               -> nil keeps, "subj" renames,
 *                                          {"a","b"} fans out, false drops
 *   on(pattern, fn(e, ctx))             -> a handler, run after delivery
 *
 * For each event: upgraders (chained), filters, routes, delivery to
 * subscribers, handlers, in that order; within a stage rules run in
 * registration order.  A Lua error in a rule dead-letters the event (see
 * DEAD LETTERS in docs/scripting.md); it never stops the server.
 *
 * A reload builds a complete new Lua state from the files and swaps it in
 * between two events only if loading (and the optional global selfcheck())
 * succeeded; otherwise the old state keeps serving.  The loop is
 * single-threaded, so every event is handled wholly by one state.
 */
#ifndef TIDE_SCRIPT_H
#define TIDE_SCRIPT_H

#include <stddef.h>
#include <stdint.h>

#include "cluster_settings.h"
#include "kv.h"
#include "proto.h"
#include "server.h"
#include "stream.h"

typedef struct script_limits {
    uint64_t instructions; /* VM instructions per call */
    size_t memory;         /* bytes for one Lua state */
    double time;           /* seconds of wall clock per call */
    int emit_depth;        /* longest chain of ctx.publish from one event */
    int emit_max;          /* events one event may cause in all */
    uint64_t cascade_instructions; /* all the calls of one event's cascade */
    double cascade_time;           /* seconds the calls of one cascade may take in all */
    char dead_letter[128]; /* subject prefix for failed events */
} script_limits_t;

void script_limits_default(script_limits_t *l);

typedef struct script_host script_host_t;
struct client;

/*
 * Loads the entry file (NULL: none, an empty router for the prompt).
 * lib_dir is tide's shipped lua/ directory (may be NULL).  On failure
 * returns NULL and writes "file:line: message" to err.
 */
script_host_t *script_host_new(const char *config_path, const char *lib_dir, char *err, size_t errsz);

/* Copies the settings the entry file declared (listen, limits) into o;
 * settings it did not declare are left alone. */
void script_host_apply_settings(const script_host_t *h, server_opts_t *o);

/* Connects the host to the server: events are routed through srv, reloads
 * are triggered by file changes and SIGHUP.  Returns 0 or -1. */
int script_host_attach(script_host_t *h, server_t *srv);

/* The same without file watching or signals: for offline runs (tide run). */
void script_host_attach_offline(script_host_t *h, server_t *srv);

void script_host_free(script_host_t *h);

/* Who a test event is, for e.client (tide run, the prompt): a user name
 * ("" for none), a client id, an address ("" for none), TLS or not. */
typedef struct script_identity {
    char user[256];
    unsigned long long id;
    char addr[96];
    int tls;
} script_identity_t;

/* Events the server itself publishes while an identity is set (not those
 * a handler publishes, nor a client's) show it as e.client.  who is
 * copied; NULL clears it.  For tide run and the prompt: set it around one
 * publish, and clear it after. */
void script_set_identity(script_host_t *h, const script_identity_t *who);

struct lua_State;
/* Reads the identity table at idx of L ({ user = "shop", id = 7, addr =
 * "10.0.0.1:5000", tls = true }, every key optional) into who; raises a
 * Lua error naming what (a function's name) when it is not such a table. */
void script_identity_from_lua(struct lua_State *L, int idx, script_identity_t *who, const char *what);

/*
 * Runs the pipeline for one published message and delivers the results.
 * `from` is the publishing client (NULL for the server itself).  The
 * message's bytes need only live for the call.
 */
void script_process(script_host_t *h, struct client *from, const proto_msg_t *m);

/*
 * Rebuilds the Lua state from the files.  Returns 0 when the new state was
 * swapped in; -1 with the reason in err when the old one keeps serving.
 * Must not be called from inside a script.
 */
int script_reload(script_host_t *h, const char *why, char *err, size_t errsz);

/* Where a reload may read its files from instead of the disk: the text of
 * the file at path (absolute, as loading builds it) and its length, or
 * NULL to read the file on disk.  The text must live until the reload
 * returns. */
typedef const char *(*script_source_fn)(void *ctx, const char *path, size_t *len);

/*
 * script_reload, with every file the new state loads read through fn
 * first (a stored revision of the rules).  The source is forgotten when it
 * returns: a later reload reads the disk again.
 */
int script_reload_from(script_host_t *h, const char *why, script_source_fn fn, void *ctx, char *err,
                       size_t errsz);

/*
 * Rules deployed to the cluster (tide deploy, docs/cluster.md): from the
 * next load on, the state runs the entry file and then entry (absolute,
 * inside dir, where its modules are looked for too), as if the entry file
 * ended by running it; errors and rule locations name its files
 * "<label>/<file>".  Node settings (cluster, listen, limits, admin, auth,
 * tls, storage) called by it are refused.  entry NULL: none again.  The
 * strings are copied.  0, or -1 when out of memory (nothing changed).
 */
int script_set_deployed(script_host_t *h, const char *entry, const char *dir, const char *label);

/*
 * script_set_deployed, then a reload (why as for script_reload).  When
 * the new rules do not load, the deployed rules that were set before stay
 * set, the old state keeps serving, -1 is returned with the reason in err
 * and, unlike script_reload, the stats' last_reload keeps what it said:
 * the rules that serve are the ones that loaded, and the refusal is the
 * caller's to report.  0 when swapped in.  Loop thread, not from a rule.
 */
int script_load_deployed(script_host_t *h, const char *entry, const char *dir, const char *label, const char *why,
                         char *err, size_t errsz);

/* While a reload from a source runs (in the swap hook): the source's text
 * of path and its length, or NULL when the file came from the disk. */
const char *script_source_text(const script_host_t *h, const char *path, size_t *len);

/* The files the current state loaded (absolute, the entry file first) and
 * their number in *n.  Valid until the next reload. */
const char *const *script_files(const script_host_t *h, size_t *n);

/* Calls fn(ctx, why) after every reload that swapped a new state in (why
 * as given to script_reload), e.g. to record a revision.  NULL stops it. */
void script_set_swap_hook(script_host_t *h, void (*fn)(void *ctx, const char *why), void *ctx);

/* ---- shadow: a candidate beside the live rules (shadow.c, docs/deploys.md) ---- */

/*
 * Loads path (an entry file, or a directory holding the entry file's name
 * and its modules) as a candidate that every event also goes through in
 * dry mode: what it would deliver, publish, dead-letter or write to
 * tide.kv is noted and compared with the live decision, never done (its
 * kv writes go to a scratch store its reads also see).  Replaces a shadow
 * that was running.  0, or -1 with the reason in err.
 */
int script_shadow_start(script_host_t *h, const char *path, char *err, size_t errsz);
/* Drops the shadow: 0, or -1 when none was running. */
int script_shadow_stop(script_host_t *h);
/* Makes the candidate the live rules (a reload from its files, recorded
 * as such) and ends the shadow.  0, or -1 with the reason in err. */
int script_shadow_promote(script_host_t *h, char *err, size_t errsz);
int script_shadow_running(const script_host_t *h);
/* The running shadow's or canary's content hash (16 hex digits and a NUL
 * in hash): FNV-1a over the paths and text of the files it has of its own.
 * 0, or -1 when none runs. */
int script_candidate_hash(const script_host_t *h, char hash[17]);

/* The store `tide.kv` is when the host has no streams (offline runs, the
 * prompt without --data); owned by h.  tide check --replay fills it with a
 * data directory's tide.kv before the events run. */
kv_t *script_host_kv(script_host_t *h);
/* {"path","since","events","differ","kinds":{...},"rules":{...},
 * "samples":[...]}, malloc'd (caller frees); NULL when no shadow runs. */
char *script_shadow_diff_json(const script_host_t *h, size_t *len);

/* tide rules canary PATH --percent P [--key EXPR] [--max-error-rate R] [--window S]. */
typedef struct script_canary {
    const char *path;
    double percent;        /* of the events, 0 to 100 */
    const char *key;       /* a dotted path into the event; NULL or "": "id" */
    double max_error_rate; /* a fraction: 0.01 is one percentage point */
    double window;         /* seconds */
} script_canary_t;

/*
 * Loads c->path as a candidate that handles c->percent of the events for
 * real, picked by a stable hash of each event's key; the rest go through
 * the live rules.  When over a window the candidate's dead-letter rate
 * exceeds the live rules' by more than max_error_rate, it is dropped
 * between two events, the reason logged and told to the deploy hook.
 * Replaces a running shadow or canary.  0, or -1 with the reason in err.
 */
int script_canary_start(script_host_t *h, const script_canary_t *c, char *err, size_t errsz);
/* Changes the running canary's share; 100 finishes it (as promote).  0, or
 * -1 with the reason in err. */
int script_canary_set_percent(script_host_t *h, double percent, char *err, size_t errsz);

/* Calls fn(ctx, state, path, reason) when a shadow starts ("shadow"), is
 * stopped or replaced ("stopped") or promoted ("promoted"), and when a
 * canary starts ("canary"), is rolled back ("rolled back": by itself,
 * stopped or replaced) or finishes ("promoted"); for the rule history.
 * At a promotion the new live rules are swapped in (the swap hook) first.
 * NULL stops it. */
void script_set_deploy_hook(script_host_t *h,
                            void (*fn)(void *ctx, const char *state, const char *path, const char *reason), void *ctx);

typedef struct script_stats {
    uint64_t events;        /* events that entered the pipeline */
    uint64_t bypassed;      /* events no rule matched: no Lua at all */
    uint64_t dropped;       /* by filters or routes */
    uint64_t dead_letters;       /* events that failed a rule and were dead-lettered */
    uint64_t dead_letters_lost;  /* of which: the dead letter reached no stream and no subscriber */
    uint64_t errors;        /* errors in rules (Lua errors, and bad answers such as a route's number) */
    uint64_t budget_stops;  /* of which: instruction/time/memory budget */
    uint64_t emitted;       /* ctx.publish */
    uint64_t decodes;       /* payloads parsed as JSON (lazily, on first envelope access) */
    uint64_t spliced;       /* changed payloads the pipeline made by splicing the changes into the original text */
    uint64_t reencoded;     /* changed payloads the pipeline printed from a document tree */
    uint64_t loops_stopped; /* emit chains cut by emit_depth / emit_max */
    uint64_t reloads;
    uint64_t reload_failures;
    uint64_t generation;    /* 1 for the first state, +1 per reload */
    size_t memory;          /* bytes used by the current state */
    int rules;
    char last_reload[512];  /* "ok" or the error */
} script_stats_t;

void script_get_stats(const script_host_t *h, script_stats_t *out);

/* ---- for the prompt (tide repl) ---- */
struct lua_State;
/* The current state and its sandbox environment (pushed).  Valid until the
 * next reload. */
struct lua_State *script_lua(script_host_t *h);
void script_push_env(script_host_t *h);
/* Calls the function below nargs arguments under the budgets (lua_pcall
 * rules: LUA_OK, or an error with its message pushed). */
int script_pcall(script_host_t *h, int nargs, int nres);
/* Runs a file in the current state (its rules add to the others). */
int script_load_file(script_host_t *h, const char *path, char *err, size_t errsz);
/* Calls fn with one line per pipeline step of every event, or stops (NULL). */
void script_set_trace(script_host_t *h, void (*fn)(void *ctx, const char *line), void *ctx);
/* True while a trace function is set (the prompt's trace(), a console trace). */
int script_tracing(const script_host_t *h);
/* Calls fn after every reload that swapped a new state in (whatever
 * triggered it), e.g. to put the prompt's helpers into the new state. */
void script_set_reload_hook(script_host_t *h, void (*fn)(void *ctx), void *ctx);
/* One rule, for metrics. */
typedef struct script_rule_info {
    const char *kind;    /* "upgrade", "filter", "route", "on" */
    const char *pattern; /* or the type, for upgraders */
    int64_t from_version;
    const char *where;   /* file:line */
    uint64_t calls, errors, dropped, routed;
    const char *consumer; /* an on rule bound to a durable consumer: its name; else "" */
} script_rule_info_t;

void script_foreach_rule(const script_host_t *h, void (*fn)(void *ctx, const script_rule_info_t *r), void *ctx);

/* The subject prefix failed events are dead-lettered under
 * (scripting { dead_letter }, "$TIDE.DEAD" unless set); h may be NULL. */
const char *script_dead_letter_prefix(const script_host_t *h);

/* Rule call times: counts per bucket (upper bounds in seconds below, then
 * +Inf), their sum in seconds and their number. */
#define SCRIPT_LATENCY_BUCKETS 10
extern const double script_latency_bounds[SCRIPT_LATENCY_BUCKETS];
void script_latency(const script_host_t *h, const uint64_t **counts, double *sum, uint64_t *count);

/* What the entry file's cluster { } said (cluster_settings.h), or NULL
 * when it has none.  Owned by the loaded rules: valid until the next
 * reload swaps them. */
const cluster_settings_t *script_cluster_settings(const script_host_t *h);

/* The streams the entry file keeps in the cluster's JetStream (stream
 * "name" { backend = "jetstream" }): their number, the array in *out
 * (NULL when none).  Valid until the next reload swaps the rules. */
int script_cluster_streams(const script_host_t *h, const cluster_stream_t **out);

/* The consumers declared on those streams (their Lua handlers run on
 * events the cluster's JetStream hands out): their number, the array in
 * *out (NULL when none).  Valid until the next reload swaps the rules. */
int script_cluster_consumers(const script_host_t *h, const consumer_cfg_t **out);

/* 1 when the loaded rules bind a Lua handler to consumer, else 0. */
int script_consumer_handled(const script_host_t *h, const char *consumer);

/* How the loaded rules hand consumer's events to its Lua handlers: events
 * per call (1: one event, not a list; 0: no handler bound), and in *wait
 * the seconds a batch may wait to fill (0 when not a batch). */
int script_consumer_batch(const script_host_t *h, const char *consumer, double *wait);

/*
 * Runs the Lua handlers bound to consumer (on(..., { consumer = ... }))
 * on n events of stream, with their stream sequences and delivery counts,
 * and writes what each said into v[0..n-1] (VERDICT_ACK when no handler
 * matched).  What the handlers publish is routed before it returns.  Loop
 * thread only, not from inside a rule call.
 */
void script_handle_events(script_host_t *h, const char *stream, const char *consumer, const proto_msg_t *msgs,
                          const uint64_t *seqs, const uint32_t *deliveries, int n, stream_verdict_t *v);

/* What listen { http = ... } said: 1 with the address in addr, -1 for
 * false (off), 0 when not said. */
int script_http_setting(const script_host_t *h, char *addr, size_t n);

/* True when http { binary = {...} } names a pattern subject matches. */
int script_http_binary(const script_host_t *h, const char *subject, size_t len);

/* http { ack_timeout }: seconds an ingest request waits for its PubAcks
 * (10 unless set). */
double script_http_ack_timeout(const script_host_t *h);

/* http { idle_timeout }: seconds an HTTP connection may send nothing
 * before it is closed (10 unless set; h may be NULL). */
double script_http_idle_timeout(const script_host_t *h);

/* True when the entry file has an auth { } block. */
int script_auth_configured(const script_host_t *h);

/* True when the entry file said admin { eval = true }. */
int script_admin_eval(const script_host_t *h);
/* True while an event is in the pipeline (reload must wait). */
int script_is_processing(const script_host_t *h);

/* A JSON array describing every rule (kind, pattern, where, counters, and
 * "last_error": {"message", "at" (file:line where it was raised), "time",
 * "traceback": ["file:line: in ...", ...]} once it failed), malloc'd into
 * *buf (caller frees; NULL when out of memory). */
void script_rules_json(const script_host_t *h, char **buf, size_t *len);

struct streams;
/* The entry file's directory, absolute (the working directory without one). */
const char *script_config_dir(const script_host_t *h);
/* The directory storage { dir = ... } named (resolved), or NULL. */
const char *script_storage_dir(const script_host_t *h);
/* "data" beside the entry file: where streams live when nothing says. */
void script_default_storage_dir(const script_host_t *h, char *out, size_t n);
/* Streams the entry file declares. */
int script_declared_streams(const script_host_t *h);
/* Connects the persistent queue: the declared streams and consumers are
 * applied now and after every reload (a reload whose declarations cannot
 * be applied fails and the old state keeps serving).  0, or -1 with err. */
int script_host_set_streams(script_host_t *h, struct streams *sm, char *err, size_t errsz);
/* How tide.kv.bucket(name) makes the stream KV_<name> when it is not there:
 * fn(ctx, name, err, errsz) returns 0, or -1 with err.  The JetStream API
 * sets it (it keeps the stream's configuration); fn NULL unsets it. */
void script_host_set_bucket_maker(script_host_t *h, int (*fn)(void *ctx, const char *bucket, char *err, size_t errsz),
                                  void *ctx);
/*
 * Buckets kept somewhere else (cluster mode: the cluster's JetStream KV,
 * src/app/cluster_kv.c).  With a remote set, tide.kv and tide.kv.bucket
 * read a replica the remote keeps on the loop and write through it; the
 * loop never waits for the network (docs/cluster.md).
 */
typedef struct script_kv_entry {
    const char *payload; /* the value's bytes (valid until the loop runs on) */
    size_t len;
    const char *type;    /* its Tide-Kv-Type ("int", "float", "bool", "json"), or NULL: a string */
    uint64_t revision;   /* the stream sequence of the message */
} script_kv_entry_t;

/* What an update job wants written: payload (malloc'd, the caller of
 * script_kv_job_run frees it) of type (as above), or op "DEL". */
typedef struct script_kv_write {
    char *payload;
    size_t len;
    const char *type;
    const char *op;
} script_kv_write_t;

typedef struct script_kv_job script_kv_job_t;

typedef struct script_kv_remote {
    void *ctx;
    /* Starts keeping a replica of bucket (idempotent).  0, or -1 with err. */
    int (*open)(void *ctx, const char *bucket, char *err, size_t errsz);
    /* The replica's value of subject ($KV.<bucket>.<key>): 1 with *e, or
     * 0 when it has none (never written, or deleted). */
    int (*get)(void *ctx, const char *bucket, const char *subject, script_kv_entry_t *e);
    /* fn for every subject of the replica with a value, in no order. */
    void (*each)(void *ctx, const char *bucket,
                 void (*fn)(void *arg, const char *subject, size_t len, const script_kv_entry_t *e), void *arg);
    /* Publishes a value (op NULL) or a "DEL" marker, without waiting.  0,
     * or -1 with err when it cannot even be sent. */
    int (*put)(void *ctx, const char *bucket, const char *subject, const char *type, const char *op,
               const char *payload, size_t len, char *err, size_t errsz);
    /* Queues job for subject: the remote calls script_kv_job_run when its
     * turn comes (and again after a conflict), then script_kv_job_free.
     * Takes job in every case.  0, or -1 with err (job freed). */
    int (*update)(void *ctx, const char *bucket, const char *subject, script_kv_job_t *job, char *err,
                  size_t errsz);
} script_kv_remote_t;

/* Sets the remote buckets and rebuilds the rules' state with them, so
 * that tide.kv and code the entry file runs at load time use them; the
 * rules' revision does not change.  ops is copied.  0, or -1 with err
 * (the old state keeps serving).  ops NULL unsets them, without a rebuild:
 * for a node that stops (calls from then on use the local buckets). */
int script_host_set_kv_remote(script_host_t *h, const script_kv_remote_t *ops, char *err, size_t errsz);

enum { SCRIPT_KV_WRITE = 1, SCRIPT_KV_NOTHING = 0, SCRIPT_KV_FAILED = -1 };

/* Runs an update job with the replica's value (cur NULL: none): its Lua
 * function, under the rules' budgets.  SCRIPT_KV_WRITE with *out filled,
 * SCRIPT_KV_NOTHING (nothing to write: done), or SCRIPT_KV_FAILED (the
 * function raised, or the value is not an integer for incr; logged,
 * done).  A job queued before a reload runs in the state of the rules
 * that queued it, kept until its last job ends.  Loop thread, never
 * inside a script. */
int script_kv_job_run(script_kv_job_t *job, const script_kv_entry_t *cur, script_kv_write_t *out);

/* Frees a job (NULL: nothing). */
void script_kv_job_free(script_kv_job_t *job);

/* Opens the streams the entry file declares (not its consumers) in sm, each
 * with fsync policy `fsync` (an FSYNC_* of slog.h) instead of the declared
 * one: a stream's fsync is fixed when it is first opened, so this, before
 * script_host_set_streams, keeps throwaway data unsynced.  0, or -1 with err. */
int script_open_streams(const script_host_t *h, struct streams *sm, int fsync, char *err, size_t errsz);
/* Binds the durable consumers the current state's on(pattern, { consumer
 * = ... }, fn) handlers name, and unbinds the others: for handlers added
 * after loading (at the prompt).  0 (also with no streams connected), or
 * -1 with err when a handler names an undeclared consumer. */
int script_bind_durable(script_host_t *h, char *err, size_t errsz);

#endif
