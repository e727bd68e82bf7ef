/*
 * http.h - the HTTP face: CloudEvents ingestion (binary, structured and
 * batched; POST /v1/publish/<subject> for plain JSON), GET /metrics in the
 * Prometheus text format, /healthz, /readyz, /v1/stats, /v1/rules,
 * /v1/streams, /v1/consumers, GET /v1/tail?subject=<pattern> (and
 * /api/tail) as Server-Sent Events, and the console's /api/flow and
 * /api/rates (console.h).
 */
#ifndef TIDE_HTTP_H
#define TIDE_HTTP_H

#include "node.h"

typedef struct http http_t;

/* Listens on host:port on the node's loop, answering from the node's
 * parts (which it must outlive).  NULL on failure (not logged: a taken
 * default port is not an error, a configured one is). */
http_t *http_new(node_t *node, const char *host, int port);

/* The same on fd, a socket that already listens (of any family: the
 * fuzz target gives it a Unix socket), which the face owns and closes,
 * failure included.  NULL on failure. */
http_t *http_new_fd(node_t *node, int fd);

/* Stops listening; call before server_free. */
void http_free(http_t *h);

/* In cluster mode, posts to a jetstream-backed stream's subjects wait for
 * JetStream's PubAck, which comes to an inbox of the node's in the
 * cluster: http_cluster_joined opens it once node->cluster runs (http_new
 * does when it runs already), http_cluster_left closes it before the
 * cluster is freed.  NULL h: nothing. */
void http_cluster_joined(http_t *h);
void http_cluster_left(http_t *h);

#endif
