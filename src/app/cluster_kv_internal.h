/*
 * cluster_kv_internal.h - what cluster_kv.c (the buckets, their replicas
 * and watches) and cluster_kv_write.c (puts, the update queues, the tickets
 * acks wait for) share.  Not for use outside these two files; cluster_kv.h
 * is the public face.  Loop thread only.
 */
#ifndef TIDE_CLUSTER_KV_INTERNAL_H
#define TIDE_CLUSTER_KV_INTERNAL_H

#include <stdint.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nats/nats.h>

#include "cluster_kv.h"
#include "dict.h"

#define KV_RETRY 3         /* s: a question to the JetStream API without an answer is asked again */
#define KV_RETRY_MAX 24    /* s: ... after at most this long, when answers come slowly */
#define KV_FAILED_RETRY 10 /* s: a bucket that could not be made or watched is tried again */
#define KV_WRITE_RETRY 5   /* s: an update without a PubAck is sent again (same Nats-Msg-Id) */
#define KV_SILENCE 15      /* s: a watch that heard nothing, not even a heartbeat, starts again */
#define KV_CATCHUP_WAIT 5  /* s: an update waiting for the replica to reach a sequence stops waiting */
#define KV_PUT_FORGET 30   /* s: a put without a PubAck is counted as failed */
#define KV_BEHIND_GRACE 3  /* s: a sequence the stream holds that a quiet watch has not sent restarts it */
#define KV_PROBE_EVERY 10  /* s: a quiet watch's stream is asked for its last sequence at most this often */
#define KV_STALE 8         /* s: a message stored this long ago that a quiet watch has not sent restarts it */
#define KV_HEARTBEAT_NS "5000000000"
#define KV_BUCKET_MAX 64
#define KV_REPLICAS_MAX 3
#define KV_QUEUE_MAX 100000 /* updates one bucket may have waiting; past it update() raises */

/* KV_WATCHING: the watch's consumer asked for; KV_LOADING: it delivers
 * what the bucket held; KV_LIVE: the replica is whole. */
enum kv_state { KV_ASKING, KV_CREATING, KV_WATCHING, KV_LOADING, KV_LIVE, KV_FAILED };

/* A key's newest message as the replica holds it. */
typedef struct kv_item {
    char *payload; /* NULL when gone */
    size_t len;
    char type[8]; /* Tide-Kv-Type, "" for a string */
    uint64_t rev;
    int gone; /* a DEL or PURGE marker */
} kv_item_t;

/* An update waiting for its turn. */
typedef struct kv_job {
    struct kv_job *next;
    script_kv_job_t *job;
    char *subject;
    uint64_t ticket; /* its place among the node's writes */
} kv_job_t;

typedef struct kv_bucket {
    cluster_kv_t *k;
    char name[KV_BUCKET_MAX];
    enum kv_state state;
    char error[300];
    unsigned token; /* of the API question in flight */
    time_t asked;
    time_t first_asked; /* when the question with this token was first asked */
    int answer_wait;    /* s: how long a question waits for its answer (0: KV_RETRY) */
    int retry_in; /* s: after a failure, until the next try (0: KV_FAILED_RETRY) */
    int replicas;       /* asked for when making it */
    uint64_t info_last; /* the stream's last sequence when asked */
    dict_t items;       /* subject -> kv_item_t */
    uint64_t last_seq;  /* the highest stream sequence the watch delivered */
    uint64_t cseq;      /* the watch's last consumer sequence */
    unsigned gen;       /* of the watch: its deliveries' inbox ends in .<gen> */
    int synced;
    char consumer[128]; /* the watch's consumer, to delete when it starts again */
    natsSubscription *watch; /* on its deliver subject exactly: JetStream delivers only to such interest */
    int64_t watch_sid;
    int made;               /* the stream is there (made or found) */
    struct kv_held *held, *held_tail; /* puts made before it was */
    time_t heard;
    kv_job_t *head, *tail; /* updates waiting */
    kv_job_t *current;     /* the update being written */
    size_t queued;         /* from head to tail */
    natsMsg *sending;      /* its write, until JetStream answers */
    unsigned send_token;
    time_t sent;
    uint64_t need; /* the next update waits until last_seq reaches it */
    time_t need_since;
    uint64_t known; /* a sequence the stream is known to hold (PubAcks, refusals, its info) */
    time_t known_at;
    time_t probed;        /* when the stream was last asked for its last sequence */
    unsigned probe_token; /* of that question */
    uint64_t probe_from;  /* last_seq when it was asked */
    uint64_t puts, put_errors, updates, conflicts, update_failures, watch_restarts;
} kv_bucket_t;

/* A put waiting for the bucket's stream to be there. */
typedef struct kv_held {
    struct kv_held *next;
    natsMsg *msg;
} kv_held_t;

/* A put waiting for its PubAck. */
typedef struct kv_put {
    kv_bucket_t *b;
    natsMsg *msg; /* sent again when no server answered for the stream */
    time_t first, sent;
    int again; /* to be sent again at the next tick */
    uint64_t ticket;
} kv_put_t;

struct cluster_kv {
    natsConnection *nc;
    struct event_base *base;
    char inbox[128];
    dict_t buckets; /* name -> kv_bucket_t */
    dict_t puts;    /* token text -> kv_put_t */
    unsigned next_token;
    uint64_t msg_ids;
    struct event *kick; /* runs the update queues outside the scripts' calls */
    cluster_kv_subscribe_fn subscribe; /* how to subscribe upstream */
    void *subscribe_ctx;
    struct bufferevent *probe;
    uint64_t tickets; /* writes (puts and updates) queued so far */
    void (*on_settled)(void *arg); /* a write was answered (or given up) */
    void *settled_arg;
    char version[32]; /* the upstream server's, "" until known */
    int per_subject;  /* it enforces Nats-Expected-Last-Subject-Sequence between racing writers */
};

/* The bucket called name, or NULL when it is not open (cluster_kv.c). */
kv_bucket_t *kv_bucket_of(cluster_kv_t *k, const char *name);
/* Notes that b's stream holds sequence seq (a PubAck's, or the last one a
 * refusal names): a watch that goes quiet short of it is started again. */
void kv_note_seq(kv_bucket_t *b, uint64_t seq);

/* ---- cluster_kv_write.c ---- */

/* Sends, in order, the puts made before b's stream was there. */
void kv_flush_held(kv_bucket_t *b);
/* Frees an update job, its script job included (NULL: nothing). */
void kv_job_free(kv_job_t *j);
/* b's current update is over (written, or given up): frees it and tells
 * whoever waits for writes. */
void kv_current_done(kv_bucket_t *b);
/* Starts b's next update when none is in flight and the replica is current. */
void kv_run_queue(kv_bucket_t *b);

/* JetStream's answer o to the write of b's current update. */
void kv_on_update_ack(kv_bucket_t *b, const cJSON *o);
/* JetStream's answer (m; o its JSON, NULL when none) to the put of token. */
void kv_on_put_ack(cluster_kv_t *k, const char *token, natsMsg *m, const cJSON *o);
/* Frees a put record (a dict value). */
void kv_put_free(void *p);
/* The event callback that runs the update queues (arg: k). */
void kv_on_kick(evutil_socket_t fd, short what, void *arg);
/* script_kv_remote_t's put and update (ctx: k). */
int kv_remote_put(void *ctx, const char *bucket, const char *subject, const char *type, const char *op,
                  const char *payload, size_t len, char *err, size_t errsz);
int kv_remote_update(void *ctx, const char *bucket, const char *subject, script_kv_job_t *job, char *err,
                     size_t errsz);

#endif
