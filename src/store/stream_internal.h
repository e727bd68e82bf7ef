/*
 * stream_internal.h - what stream.c (streams, capture, PubAcks, admin) and
 * consumer.c (durable consumers) share; dlq.c reads stored records and
 * consumer state through it.  Not for use elsewhere; stream.h is the
 * streams' public face.
 */
#ifndef TIDE_STREAM_INTERNAL_H
#define TIDE_STREAM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "dict.h"
#include "proto.h"
#include "server.h"
#include "slog.h"
#include "stream.h"

#define STREAMS_MAX 64
#define CONSUMERS_MAX 128

typedef struct pending_ack {
    uint64_t seq;
    char *reply;
    size_t reply_len;
    int duplicate; /* a repeat of seq: answered as it is, once seq is durable */
} pending_ack_t;

typedef struct consumer consumer_t;

typedef struct stream {
    stream_cfg_t cfg; /* subjects owned */
    struct streams *sm;
    slog_t *log;
    char dir[4096];
    slog_report_t opened; /* what recovery found */
    pending_ack_t *acks;  /* publishes waiting for their record to be durable, in sequence order */
    size_t ahead, alen, acap;
    consumer_t *cons[CONSUMERS_MAX];
    int ncons;
    uint64_t stored, duplicates, conflicts, store_errors;
    uint64_t last_appended; /* for taking back `stored` when the log loses records */
    uint64_t refusing;      /* publishes refused in a row because the log could not take them */
    /* Each subject's sequences, oldest first (struct subject_seqs *), kept
     * while max_msgs_per_subject or rollups need them (stream_subjects.c). */
    dict_t subjects;
    int subjects_on;
} stream_t;

struct streams {
    server_t *srv;
    struct event_base *base;
    char *dir;
    stream_t *streams[STREAMS_MAX];
    int n;
    consumer_t *consumers[CONSUMERS_MAX];
    int nc;
    sub_t *ack_sub;
    sub_t *fc_sub;
    stream_hooks_t hooks;
    /* Lua bindings, remembered for consumers that open later. */
    char bound[CONSUMERS_MAX][STREAM_NAME_MAX];
    int bound_batch[CONSUMERS_MAX];
    double bound_wait[CONSUMERS_MAX];
    int nbound;
    char *rbuf; /* record read buffer */
    size_t rcap;
};

/* consumer.c */
consumer_t *consumer_open(struct streams *sm, stream_t *st, const consumer_cfg_t *cfg, char *err, size_t errsz);
void consumer_close(consumer_t *c);
void consumer_update(consumer_t *c, const consumer_cfg_t *cfg);
/* True while handler acks wait for what the handlers published to be durable. */
int consumer_has_deferred(const consumer_t *c);
/* Lua handlers take this consumer's events (batch 0: none do). */
void consumer_bind(consumer_t *c, int batch, double wait);
const consumer_cfg_t *consumer_cfg(const consumer_t *c);
/* New records are durable up to seq: deliver what the consumer may. */
void consumer_pump(consumer_t *c);
/* A message on $JS.ACK.> */
void consumers_on_ack(void *ctx, const proto_msg_t *m);
/* A message on $JS.FC.<stream>.<consumer>.<id>: the client's answer to a
 * push consumer's flow control request; the consumer delivers again. */
void consumers_on_flow_control(void *ctx, const proto_msg_t *m);
/* JSON object describing the consumer (cJSON *), for admin and HTTP. */
struct cJSON;
struct cJSON *consumer_json(consumer_t *c);
/* Hands a pull request to c: 0 (held or answered), -1 when c is a push
 * consumer. */
int consumer_pull(consumer_t *c, const consumer_pull_req_t *req, const char *reply, size_t rlen);
/* Answers every pull request c holds with the status line status. */
void consumer_end_pulls(consumer_t *c, const char *status);
/* True when c's filters (filter, or filters when it has a list) take subject. */
int consumer_matches(const consumer_t *c, const char *subject, size_t len);
/* Where c keeps its state ("" for none). */
const char *consumer_dir(const consumer_t *c);
/* Fills *out for streams_consumer_info (all but handlers, which the streams know). */
void consumer_get_info(consumer_t *c, consumer_info_t *out);
/* Prometheus lines for n consumers: each metric's HELP, TYPE and samples together. */
void consumer_metrics(consumer_t *const *cs, int n, char **buf, size_t *len, size_t *cap);

/* What capture (stream.c) answers the server for a message: no stream
 * takes it; stored now, or earlier (a duplicate within the dedup window);
 * refused by an expected-stream or expected-sequence header; storing
 * failed.  The refusals are counted by the stream (conflicts,
 * store_errors). */
enum { CAPTURE_NONE = 0, CAPTURE_STORED = 1, CAPTURE_DUPLICATE = 2, CAPTURE_CONFLICT = -1, CAPTURE_FAILED = -2 };

/* stream_subjects.c: the per-subject limit and rollups */
/* Fills st's per-subject index from its log when its configuration needs
 * one (dropping again what the limit dropped before), or frees it when it
 * no longer does.  Called when the stream opens and when its configuration
 * changes. */
void stream_subjects_sync(stream_t *st);
/* Frees the index. */
void stream_subjects_free(stream_t *st);
/* 0 when m's Nats-Rollup header (if any) may be stored in st; else -1 with
 * the nats-server description of the refusal in why. */
int stream_subjects_check_rollup(stream_t *st, const proto_msg_t *m, char *why, size_t n);
/* Record seq, on m's subject, was appended: the rollup m asks for (durably,
 * as a purge) and the per-subject limit (noted unsynced, see slog_forget;
 * the next open applies it again).  0, or -1 when the rollup could not be noted (logged). */
int stream_subjects_added(stream_t *st, const proto_msg_t *m, uint64_t seq);

/* retention.c: interest and workqueue retention */
/* Consumer c is done with record seq of its stream (acked, terminated or
 * given up): on an interest or workqueue stream the record goes once the
 * retention allows it.  Called by the consumers, loop thread. */
void stream_retention_done(stream_t *st, consumer_t *c, uint64_t seq);
/* Record seq was stored from m: on an interest stream that no consumer
 * takes it goes at once. */
void stream_retention_stored(stream_t *st, const proto_msg_t *m, uint64_t seq);
/* 0 when consumers with filters a and b ("" for none) may share a workqueue
 * stream; else -1 with nats-server's description and err_code. */
int stream_workqueue_filters_conflict(const char *a, const char *b, int *err_code, char *err, size_t errsz);
/* consumer.c: true when c has record seq behind it (looked at, and neither
 * in flight nor parked). */
int consumer_has_acked(consumer_t *c, uint64_t seq);

/* stream.c */
stream_t *streams_find(struct streams *sm, const char *name, size_t len);
/* Adds r's payload to object o: "data" with its text as it is stored when
 * it is a JSON object or array, else "payload" as a string. */
void stream_add_payload(struct cJSON *o, const slog_rec_t *r);
/* Appends printf output to a growing buffer. */
void streams_buf_printf(char **buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
