/*
 * jsapi_internal.h - what jsapi.c (the requests and answers) and
 * jsapi_stream.c (stream configurations, their files, stored messages)
 * share.  Not for use elsewhere; jsapi.h is the API's public face.
 */
#ifndef TIDE_JSAPI_INTERNAL_H
#define TIDE_JSAPI_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "jsapi.h"

struct jsapi {
    node_t *n;
    sub_t *sub;       /* on $JS.API.> */
    cJSON *made;      /* name -> {"config","created"} of each stream made through the API */
    char dir[4400];   /* <data>/jsapi/streams: one <name>.json each */
    char started[64]; /* "created" of declared streams */
    uint64_t total, errors;
    char *rbuf; /* record read buffer */
    size_t rcap;
    cJSON *cons;          /* "<stream>/<name>" -> {"config","created"} of each consumer made through the API */
    struct event *reaper; /* deletes consumers past their inactive_threshold */
};

#define CONSUMER_NAMES_MAX 128 /* consumers a node runs at most */

/* A JetStream API error: HTTP-like code, nats-server's err_code, text. */
typedef struct api_err {
    int code, err_code;
    char desc[600];
} api_err_t;

void jsapi_set_err(api_err_t *e, int code, int err_code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* RFC 3339 with nanoseconds in UTC; 0 is Go's zero time, as nats-server
 * prints it. */
void jsapi_time(int64_t ns, char out[64]);

/* 0 when name (len bytes) is a stream name nats-server takes and that fits
 * tide's; else -1 with e set to nats-server's error. */
int jsapi_name_check(const char *name, size_t len, api_err_t *e);

/* The stream configuration of request req for stream name, checked and
 * with nats-server's defaults filled in (a new object, caller deletes), or
 * NULL with e set: unknown fields are ignored, fields tide does not
 * implement refused unless they have their default value. */
cJSON *jsapi_config_normalize(const cJSON *req, const char *name, api_err_t *e);
/* The configuration a declared stream shows (a new object). */
cJSON *jsapi_config_from_stream(const stream_cfg_t *c);
/* Creates (update 0) or updates the stream name with configuration norm
 * (from jsapi_config_normalize) and saves it; e->code is 0 on success,
 * else e says why. */
void jsapi_stream_apply(jsapi_t *api, const char *name, const cJSON *norm, int update, api_err_t *e);

/* Reads the saved configurations and opens their streams (one that cannot
 * open is logged and left).  0, or -1 when the directory cannot be read. */
int jsapi_saved_load(jsapi_t *api);
/* Deletes the saved configuration of name; 0 or -1. */
int jsapi_saved_remove(jsapi_t *api, const char *name);

/* STREAM.MSG.GET (direct 0) and DIRECT.GET (direct 1) on stream name:
 * answers m itself and leaves e->code 0, or sets e for the caller to
 * answer. */
void jsapi_msg_get(jsapi_t *api, const proto_msg_t *m, const char *name, int direct, api_err_t *e);

/* Answers (jsapi.c): o (deleted here) to m's reply; an error of type
 * TYPE_PREFIX type; a new answer object of that type; a status message
 * "NATS/1.0 <status>" without a body. */
void jsapi_reply_obj(jsapi_t *api, const proto_msg_t *m, cJSON *o);
void jsapi_reply_err(jsapi_t *api, const proto_msg_t *m, const char *type, const api_err_t *e);
cJSON *jsapi_answer(const char *type);
void jsapi_status(jsapi_t *api, const proto_msg_t *m, const char *status);

/* Adds config, created, state, cluster and ts of the local stream name to
 * o (an answer object); 0, or -1 when there is no such stream. */
int jsapi_add_info(jsapi_t *api, cJSON *o, const char *name);
/* The local streams' count, with their stored bytes and consumers. */
int jsapi_account_usage(jsapi_t *api, uint64_t *bytes, uint64_t *consumers);
/* The offset and the subject filter (fsz bytes) of a NAMES or LIST
 * request m; 0, or -1 with e set when it is not JSON. */
int jsapi_paged_request(const proto_msg_t *m, uint64_t *offset, char *filter, size_t fsz, api_err_t *e);
/* The names of the local streams (sorted; those with a subject
 * overlapping filter when it is not empty), in a new array of *n malloc'd
 * strings (jsapi_names_free). */
char **jsapi_sorted_names(jsapi_t *api, const char *filter, int *n);
void jsapi_names_free(char **names, int n);
/* Answers m, a $JS.API request, from the local streams alone. */
void jsapi_request_local(jsapi_t *api, const proto_msg_t *m);
/* In cluster mode: takes m when it is the cluster's (sent on, or asked
 * and merged with the local streams; api NULL: the node has none) and
 * returns 1; 0 when the node answers it from its local streams. */
int jsapi_cluster_request(node_t *n, jsapi_t *api, const proto_msg_t *m);

/* obj's string member key: dflt when absent or null, NULL when not a string. */
const char *jsapi_get_str(const cJSON *obj, const char *key, const char *dflt);

/* The request's JSON: NULL for an empty one, or NULL with *bad set and e
 * filled when it is not a JSON object. */
cJSON *jsapi_request_json(const proto_msg_t *m, int *bad, api_err_t *e);

/* Consumers (jsapi_consumer.c).  Answers m when op (oplen bytes after
 * $JS.API.) is a CONSUMER verb: 1, else 0. */
int jsapi_consumer_request(jsapi_t *api, const proto_msg_t *m, const char *op, size_t oplen);
/* Reopens the saved consumers (after the streams) and starts deleting
 * inactive ones; 0 or -1. */
int jsapi_consumers_start(jsapi_t *api);
/* Forgets the consumers of stream, which is gone, and deletes their files. */
void jsapi_consumers_stream_gone(jsapi_t *api, const char *stream);
/* Stops the inactivity checks and forgets the consumers (the store closes them). */
void jsapi_consumers_stop(jsapi_t *api);

#endif
