/*
 * jsapi.h - the JetStream API ($JS.API.>) over tide's streams, so that
 * stock JetStream clients (nats.js, nats.go, libnats) manage streams as
 * they do on nats-server: account INFO, STREAM.CREATE / UPDATE / INFO /
 * DELETE / NAMES / LIST / PURGE, STREAM.MSG.GET / MSG.DELETE and
 * DIRECT.GET, answered with nats-server 2.10's JSON shapes and error codes
 * (docs/jetstream.md).
 *
 * Streams made through the API are kept beside the declared ones: their
 * configuration in <data>/jsapi/streams/<name>.json, their log where every
 * stream's is.  Declared streams are listed and read; changing or deleting
 * them is refused with an error that names the declaration.
 */
#ifndef TIDE_JSAPI_H
#define TIDE_JSAPI_H

#include "node.h"

typedef struct jsapi jsapi_t;

/* With n->streams running (else it does nothing and returns NULL without
 * an error): reopens the streams made through the API earlier, answers
 * $JS.API.> and has INFO say "jetstream":true.  Returns the API (freed by
 * jsapi_free), or NULL; *failed is set when that is an error (logged). */
jsapi_t *jsapi_start(node_t *n, int *failed);

/* Makes the KV bucket `bucket` (api, a jsapi_t *, as ctx): the stream
 * KV_<bucket> on $KV.<bucket>.> with the configuration nats.js gives a
 * bucket of history 1 (max_msgs_per_subject 1, rollups, discard new,
 * direct gets), saved as the API's own.  0, or -1 with the reason in err.
 * The scripts' tide.kv.bucket calls it (script_host_set_bucket_maker). */
int jsapi_bucket_make(void *api, const char *bucket, char *err, size_t errsz);

/* Stops answering and frees the API (NULL is fine); the streams stay
 * open (node_stop closes them). */
void jsapi_free(jsapi_t *api);

/*
 * Cluster mode (jsapi_cluster.c, docs/cluster.md): the node answers the
 * requests about its local streams itself and sends every other $JS.API
 * request to the cluster with the client's reply subject (so JetStream's
 * answer reaches the client through the cluster, as any reply does);
 * INFO, STREAM.NAMES and STREAM.LIST are asked of the cluster and
 * answered with the local streams added.  A client's acks ($JS.ACK.>)
 * and flow-control answers ($JS.FC.>) for a stream that is not local go
 * to the cluster too.
 */
typedef struct jsapi_cluster jsapi_cluster_t;

/* With n->cluster running (and n->jsapi, when the node has streams):
 * takes the acks and, without n->jsapi, the whole $JS.API.> for the
 * cluster.  Freed by jsapi_cluster_free (before the cluster); NULL when
 * out of memory (logged). */
jsapi_cluster_t *jsapi_cluster_start(node_t *n);
void jsapi_cluster_free(jsapi_cluster_t *f);

#endif
