/*
 * stream.h - streams and durable consumers: the persistent queue as the
 * rest of tide sees it.
 *
 * The entry file declares them (see docs/streams.md):
 *
 *   storage  { dir = "data" }
 *   stream   "orders" { subjects = { "order.>" }, fsync = "always", ... }
 *   consumer "inventory" { stream = "orders", deliver = "inventory.work", ... }
 *
 * Every message routed to a subject a stream captures (after the script
 * pipeline) is appended to that stream's log; a publish with a reply
 * subject gets a JetStream PubAck there once the record is durable under
 * the stream's fsync policy.  Consumers push stored events to their deliver
 * subject with a $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
 * reply subject and keep their progress on disk.
 */
#ifndef TIDE_STREAM_H
#define TIDE_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "slog.h"

#define STREAM_NAME_MAX 64
#define STREAM_SUBJECTS_MAX 16
#define CONSUMER_BACKOFF_MAX 16
#define CONSUMER_FILTERS_MAX 8

enum { DELIVER_ALL, DELIVER_NEW, DELIVER_BY_START_SEQ, DELIVER_BY_START_TIME, DELIVER_LAST, DELIVER_LAST_PER_SUBJECT };
/* What an ack covers: each message its own (explicit), none is expected
 * (none), or every message up to the one acked (all). */
enum { ACK_EXPLICIT, ACK_NONE, ACK_ALL };

/* When a stored message goes, besides the limits: never (limits), once
 * every consumer whose filter takes it has acked it (interest; at once when
 * no consumer takes it), once a consumer has acked it (workqueue, whose
 * consumers' filters may not overlap). */
enum { RETENTION_LIMITS, RETENTION_INTEREST, RETENTION_WORKQUEUE };

typedef struct stream_cfg {
    char name[STREAM_NAME_MAX];
    char *subjects[STREAM_SUBJECTS_MAX];
    int nsubjects;
    slog_opts_t o;
    int dedup_fn_ref; /* LUA_NOREF, or a function(e) -> key in the declaring state */
    char where[200];  /* file:line of the declaration */
    /* Made at run time by streams_add (the JetStream API), not declared:
     * streams_apply leaves it running; a declaration of the same name
     * takes it over. */
    int api;
    uint64_t max_msg_size; /* bytes of headers and payload; 0: no limit */
    int discard_new;       /* past max_msgs / max_bytes refuse the new message, not drop the oldest */
    uint64_t max_msgs_per_subject; /* 0: no limit; past it the subject's oldest message goes */
    int allow_rollup;      /* a Nats-Rollup header ("sub", "all") purges what came before; else refused */
    int sealed;            /* every publish refused (10109) */
    int memory;            /* storage "memory": the log is emptied when the stream opens and deleted
                              when it closes, never synced */
    int retention;         /* RETENTION_* */
} stream_cfg_t;

typedef struct consumer_cfg {
    char name[STREAM_NAME_MAX];
    char stream[STREAM_NAME_MAX];
    char filter[256];      /* subject pattern; "" is everything */
    char deliver[256];     /* push subject; "" when Lua handlers take the events */
    char queue[64];        /* queue group the deliver subject is shared by (informational) */
    double ack_wait;       /* seconds */
    int64_t max_deliver;   /* -1: no limit */
    double backoff[CONSUMER_BACKOFF_MAX];
    int nbackoff;
    int64_t max_ack_pending;
    int deliver_policy;
    uint64_t start_seq;
    int64_t start_time; /* ns since the epoch */
    char dead_letter[256]; /* subject, "" for none */
    char ordered_by[128];  /* "data.order_id", "header:Name", "" */
    char where[200];
    /* Made through the JetStream API (streams_consumer_add): a reload
     * leaves it, its state is in <data>/jsapi/consumers/<stream>/<name>. */
    int api;
    int ephemeral;        /* with api: no state on disk */
    int pull;             /* no deliver subject: pull requests take the messages (streams_consumer_pull) */
    int ack_policy;       /* ACK_EXPLICIT, ACK_NONE, ACK_ALL */
    int headers_only;     /* deliver the headers and Nats-Msg-Size, no payload */
    int replay_original;  /* new messages go out spaced as their stored times were (replay_policy "original") */
    int64_t max_waiting;  /* pull requests held at once */
    double idle_heartbeat; /* push: seconds of silence before a 100 Idle Heartbeat; 0 none */
    int flow_control;     /* push: 100 FlowControl Requests; delivery stalls on a window unanswered */
    /* More filters (filter_subjects): a message matching any is delivered;
     * when nfilters > 0, filter is not used. */
    char filters[CONSUMER_FILTERS_MAX][256];
    int nfilters;
} consumer_cfg_t;

void stream_cfg_free(stream_cfg_t *c);

typedef struct streams streams_t;
struct server;

/* Creates the manager; data_dir is created when a stream first needs it. */
streams_t *streams_new(struct server *srv, const char *data_dir);
void streams_free(streams_t *sm);
/* The data directory. */
const char *streams_dir(const streams_t *sm);

/*
 * Makes the declared streams and consumers current: new ones are opened
 * (the log recovered from the disk), changed limits applied, ones no
 * longer declared stopped (their files stay).  Returns 0, or -1 with the
 * reason in err (nothing changed in that case).
 */
int streams_apply(streams_t *sm, const stream_cfg_t *streams, int nstreams, const consumer_cfg_t *consumers,
                  int nconsumers, char *err, size_t errsz);

/* What a Lua handler bound to a consumer said about an event. */
enum { VERDICT_ACK, VERDICT_NAK, VERDICT_PROGRESS, VERDICT_TERM };
typedef struct stream_verdict {
    int kind;
    double delay;    /* VERDICT_NAK: seconds, or -1 for the backoff */
    char error[512]; /* why (NAK after an error, TERM reason); "" for none */
} stream_verdict_t;

/* The script host's part in delivery.  Called from the top of the loop
 * only (never inside the pipeline). */
struct proto_msg;
typedef struct stream_hooks {
    void *ctx;
    /* True while the scripts are busy (an event in the pipeline): deliver later. */
    int (*busy)(void *ctx);
    /* Upgrades a stored event for delivery: 0 unchanged, 1 upgraded (*out
     * points into *buf, malloc'd, caller frees), -1 an upgrader failed (err). */
    int (*upgrade)(void *ctx, const struct proto_msg *in, struct proto_msg *out, char **buf, char *err,
                   size_t errsz);
    /* Runs the Lua handlers bound to `consumer` on n events (one call, or one
     * per event for handlers without batch); fills v[0..n-1]. */
    void (*handle)(void *ctx, const char *stream, const char *consumer, const struct proto_msg *msgs,
                   const uint64_t *seqs, const uint32_t *deliveries, int n, stream_verdict_t *v);
    /* The stream's dedup_key function's key for m, written to out (at most
     * n bytes); returns its length, 0 for none. */
    size_t (*dedup_key)(void *ctx, const char *stream, const struct proto_msg *m, char *out, size_t n);
} stream_hooks_t;

void streams_set_hooks(streams_t *sm, const stream_hooks_t *hooks);
/* Lua handlers take consumer's events, batch at a time (waiting at most
 * `wait` seconds for a batch to fill); batch 0 unbinds. */
void streams_bind(streams_t *sm, const char *consumer, int batch, double wait);

/* Number of streams. */
int streams_count(const streams_t *sm);

/* ---- streams made at run time (the JetStream API) ---- */

/* Why streams_add / streams_change / streams_remove refused. */
enum {
    STREAMS_EEXIST = -1,   /* a stream of that name runs */
    STREAMS_EOVERLAP = -2, /* a subject overlaps another stream's */
    STREAMS_EFULL = -3,    /* STREAMS_MAX streams run */
    STREAMS_ENOENT = -4,   /* no stream of that name */
    STREAMS_EDECLARED = -5, /* the stream is declared: the entry file owns it */
    STREAMS_EFAIL = -6     /* its files could not be made or removed (err says why) */
};

/* Opens a stream that no declaration owns (cfg->api is implied), its log
 * in <data>/streams/<name> (recovered when it is there).  Its subjects may
 * not overlap any running stream's.  0, or a STREAMS_E* code with the
 * reason in err.  cfg is copied. */
int streams_add(streams_t *sm, const stream_cfg_t *cfg, char *err, size_t errsz);

/* Gives the streams_add stream cfg->name new subjects and limits (the
 * fsync policy, segment size and dedup window stay as opened).  0, or a
 * STREAMS_E* code with the reason in err. */
int streams_change(streams_t *sm, const stream_cfg_t *cfg, char *err, size_t errsz);

/* Stops the streams_add stream called name and deletes its files.  0, or a
 * STREAMS_E* code with the reason in err. */
int streams_remove(streams_t *sm, const char *name, char *err, size_t errsz);

/* Purges the stream called name (declared or not): with filter NULL, ""
 * or ">" the records below `below` (0: all), or all but the last `keep`
 * (keep != 0); with a filter only the records whose subject it matches,
 * below `below` when set, all but the last `keep` of them when set.
 * *purged says how many went.  0, or STREAMS_ENOENT / STREAMS_EFAIL with
 * the reason in err.  Durable when it returns (see slog_purge). */
int streams_purge(streams_t *sm, const char *name, const char *filter, uint64_t below, uint64_t keep,
                  uint64_t *purged, char *err, size_t errsz);

/* Deletes record seq of the stream called name: 1 deleted, 0 no such
 * record, or STREAMS_ENOENT / STREAMS_EFAIL with the reason in err. */
int streams_delete_msg(streams_t *sm, const char *name, uint64_t seq, char *err, size_t errsz);

/* On a workqueue stream, a consumer (not called except_name) whose filter
 * overlaps filter ("" for none, which overlaps every other): 0 when there
 * is none (or the stream is no workqueue), else -1 with nats-server's
 * description in err ("multiple non-filtered consumers not allowed on
 * workqueue stream", err_code 10099, or "filtered consumer not unique on
 * workqueue stream", 10100) and its err_code in *err_code. */
int streams_workqueue_conflict(streams_t *sm, const char *stream, const char *filter, const char *except_name,
                               int *err_code, char *err, size_t errsz);

/* True when some subject matches both subject patterns (NUL-terminated):
 * how streams_add tells that two streams would capture the same subject. */
int streams_patterns_overlap(const char *a, const char *b);

/* Stores m in the stream called stream as a publish to one of its subjects
 * would be (Nats-Expected-Last-Subject-Sequence, Nats-Rollup, the limits
 * all apply), with no PubAck.  1: stored, *seq its sequence (durable later,
 * under the stream's fsync policy); 0: no such stream; -1: refused by an
 * expected-sequence header, a rollup or a limit; -2: storing failed
 * (logged).  The KV buckets of tide.kv.bucket write through it. */
int streams_store(streams_t *sm, const char *stream, const struct proto_msg *m, uint64_t *seq);

/* slog_each_subject over the log of the stream called stream; -1 when
 * there is none. */
int streams_subjects_each(streams_t *sm, const char *stream, const char *prefix, size_t plen,
                          void (*fn)(void *ctx, const char *subject, size_t len, uint64_t seq), void *ctx);

/* The last sequence stored for subject in stream (0: none, or no such
 * stream). */
uint64_t streams_subject_last(streams_t *sm, const char *stream, const char *subject, size_t len);

/* ---- reading streams and consumers (the prompt, offline runs) ---- */

/* A stream, as streams_stream_info describes it. */
typedef struct stream_info {
    const stream_cfg_t *cfg; /* its declaration (name, subjects, fsync); valid until the next streams_apply */
    slog_info_t log;         /* what its log holds: sequences, messages, bytes, what is durable */
    int nconsumers;          /* its consumers, for streams_consumer_info */
} stream_info_t;

/* A consumer, as streams_consumer_info describes it. */
typedef struct consumer_info {
    const consumer_cfg_t *cfg; /* its declaration; valid until the next streams_apply */
    int handlers;              /* Lua handlers are bound to it (streams_bind with batch > 0) */
    uint64_t next_seq;         /* the next stream sequence it looks at */
    uint64_t pending;          /* events matching its filter not delivered yet */
    uint64_t in_flight;        /* delivered, waiting for their ack */
    uint64_t delivered, redelivered, acked, dead_lettered;
    uint64_t dead_letters_lost; /* given up, and the dead letter reached no stream and no subscriber */
    uint64_t dseq;              /* deliveries numbered so far (the consumer sequence) */
    uint64_t last_sseq;         /* the stream sequence delivered last for the first time */
    uint64_t floor_dseq, floor_sseq; /* everything up to these is acknowledged */
    uint64_t num_redelivered;   /* in flight and delivered more than once */
    int num_waiting;            /* pull requests held */
    int64_t last_active_ns;     /* wall clock of the last delivery (0: none) */
    int64_t last_ack_ns;        /* wall clock of the last ack (0: none) */
    int64_t idle_ns;            /* monotonic ns since a pull request or a subscriber was last seen */
} consumer_info_t;

/* ---- driving time (tide run --clock virtual) ---- */

/* RFC 3339 or seconds (with fraction) since the epoch, to ns; -1 when
 * neither (or before 1970, or past 2262). */
int64_t streams_parse_time(const char *s);

/*
 * The earliest time, on clock_mono_ns's scale, at which a consumer that can
 * deliver (bound to Lua handlers, or a deliver subject with a subscriber)
 * has work: `now` when it has some now (a new event to deliver, a full
 * batch, acks waiting to be recorded), else its next deadline (ack_wait,
 * backoff, NAK delay, batch wait, replay_original pacing); INT64_MAX when
 * none has any.  With handlers_only, push consumers' deadlines do not
 * count (their deliveries wait for an ack nobody may send).  *who (when
 * not NULL) is set to the name of the consumer that is due first.
 */
int64_t streams_next_due(streams_t *sm, int64_t now, int handlers_only, const char **who);

/* Lets every consumer whose work is due at clock_mono_ns() do it now, as
 * its timer would: redeliveries, handler calls, new deliveries.  Called
 * outside any callback of the loop. */
void streams_run_due(streams_t *sm);

/* ---- consumers made at run time (the JetStream API) ---- */

/* Opens the consumer cfg->name on stream cfg->stream (cfg->api is
 * implied), its state recovered from the disk unless cfg->ephemeral.  0,
 * or STREAMS_ENOENT (no such stream), STREAMS_EEXIST (the name is taken
 * there), STREAMS_EFULL or STREAMS_EFAIL with the reason in err. */
int streams_consumer_add(streams_t *sm, const consumer_cfg_t *cfg, char *err, size_t errsz);

/* Gives the running API consumer cfg->name of cfg->stream the settings of
 * cfg that may change (filters, ack_wait, max_deliver, backoff,
 * max_ack_pending, deliver subject and group, headers_only).  0 or
 * STREAMS_ENOENT. */
int streams_consumer_change(streams_t *sm, const consumer_cfg_t *cfg);

/* Stops the API consumer name of stream (its pull requests get 409
 * Consumer Deleted) and deletes its state.  0, or STREAMS_ENOENT /
 * STREAMS_EDECLARED / STREAMS_EFAIL with the reason in err. */
int streams_consumer_remove(streams_t *sm, const char *stream, const char *name, char *err, size_t errsz);

/* A pull request (JetStream's CONSUMER.MSG.NEXT). */
typedef struct consumer_pull_req {
    int64_t batch;     /* messages at most */
    int64_t max_bytes; /* bytes at most, 0: no limit */
    int64_t expires;   /* ns until a 408, 0: never */
    int64_t heartbeat; /* ns between 100 Idle Heartbeats, 0: none */
    int no_wait;       /* 404 when nothing is there now */
} consumer_pull_req_t;

/* Hands pull request req (answers to reply) to consumer name of stream.
 * Returns 0 (held or answered: messages and status messages go to reply),
 * STREAMS_ENOENT (no such consumer), or STREAMS_EEXIST when it is a push
 * consumer (the caller answers 409). */
int streams_consumer_pull(streams_t *sm, const char *stream, const char *name, const consumer_pull_req_t *req,
                          const char *reply, size_t rlen);

/* The consumer name of stream and with out not NULL its description in
 * *out; NULL when there is none. */
const consumer_cfg_t *streams_consumer_find(streams_t *sm, const char *stream, const char *name,
                                            consumer_info_t *out);

/* The stream called name, or with name NULL the i-th stream (0 ..
 * streams_count - 1): its declaration, valid until the next streams_apply
 * (NULL when there is none), and with out not NULL a description in *out. */
const stream_cfg_t *streams_stream_info(streams_t *sm, const char *name, int i, stream_info_t *out);

/* The i-th consumer of the stream called stream (0 .. its nconsumers - 1),
 * or with stream NULL the i-th consumer of all: its declaration, valid
 * until the next streams_apply (NULL when there is none), and with out not
 * NULL a description in *out (counting what is pending may read the log). */
const consumer_cfg_t *streams_consumer_info(streams_t *sm, const char *stream, int i, consumer_info_t *out);

/* Reads record seq of the stream called stream, as slog_read does (its
 * bytes in *buf, grown as needed; caller frees).  1: found, 0: no such
 * record, -1: read error or no such stream. */
int streams_read(streams_t *sm, const char *stream, uint64_t seq, slog_rec_t *out, char **buf, size_t *cap);

/* Runs the Lua handlers bound to consumer of stream on the stored event m
 * (sequence seq, a first delivery) through the hooks' handle, as the
 * consumer would, but outside it: its position and state are not touched.
 * 0 with the verdict in *v, or -1 when no hooks handle events (then
 * nothing ran).  With m NULL only says which. */
int streams_call_handlers(streams_t *sm, const char *stream, const char *consumer, const struct proto_msg *m,
                          uint64_t seq, stream_verdict_t *v);

/* JSON for $TIDE.ADMIN.STREAMS / GET /v1/streams and the consumers (malloc'd). */
char *streams_json(streams_t *sm, size_t *len);
char *streams_consumers_json(streams_t *sm, size_t *len);
/* One stream's info, or NULL (unknown). */
char *stream_info_json(streams_t *sm, const char *name, size_t *len);
/* A stored record as JSON {"seq","time","subject","headers","data"}; NULL with
 * the reason in err. */
char *stream_get_json(streams_t *sm, const char *name, uint64_t seq, char *err, size_t errsz, size_t *len);

/* Appends Prometheus lines for streams and consumers to a malloc'd buffer. */
void streams_metrics(streams_t *sm, char **buf, size_t *len, size_t *cap);

/* Handles $TIDE.ADMIN.STREAM.* / CONSUMER.* / DLQ.* requests; 1 when handled. */
struct proto_msg;
int streams_admin(streams_t *sm, const char *verb, size_t vlen, const struct proto_msg *req);

#endif
