/*
 * cluster.h - cluster mode: a node joins an upstream NATS cluster
 * (docs/cluster.md).
 *
 * The node keeps one libnats connection to the cluster, driven by the
 * node's own libevent loop (libnats' libevent adapter).  What a client
 * here publishes runs this node's pipeline and then goes upstream; the
 * node holds one upstream subscription for each of its clients'
 * subscriptions (queue groups included) and hands what arrives on it to
 * that subscription alone, so the cluster decides who receives what, and
 * no event runs a second pipeline.  libnats hands messages and connection
 * events over from its own threads; they wait in a queue that the loop
 * drains, so only the loop touches the node's state.
 */
#ifndef TIDE_CLUSTER_H
#define TIDE_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <nats/nats.h>

#include "cluster_ask.h"

struct node;
typedef struct cluster cluster_t;

/* Subject every node answers with its status (tide cluster status). */
#define CLUSTER_STATUS_SUBJECT "$TIDE.CLUSTER.STATUS"

/* Makes libevent safe to call from libnats' threads.  Must be called
 * before the node's event loop is created, and only when the node will
 * join a cluster (it adds locking to every libevent call).  Once per
 * process. */
void cluster_prepare_threads(void);

/*
 * Joins the cluster that n's entry file names in cluster { }: connects in
 * the background (a node whose upstream is unreachable starts and keeps
 * trying across the listed servers, for ever) and registers the server's
 * cluster hooks.  Call with n->srv and n->scripts set, before the loop
 * runs.  Returns the cluster (freed by cluster_free), or NULL with the
 * reason in err (a setting libnats refuses, out of memory).
 */
cluster_t *cluster_start(struct node *n, char *err, size_t errsz);

/* Leaves the cluster: takes the hooks off the server, closes the
 * connection, waits for libnats' threads and frees c (NULL: nothing). */
void cluster_free(cluster_t *c);

/*
 * Leaves the cluster, for a reload whose rules have no cluster { }: from
 * now on what clients here publish is delivered here, their new
 * subscriptions stay here and the handlers' pulls stop; for a short grace
 * the upstream subscriptions still take the answers to what went
 * upstream (PubAcks, replies), then the connection drains (what it
 * received is delivered, what was published on it is sent) and closes.
 * Then cluster_left is 1 and the caller frees c (cluster_free) outside
 * c's own callbacks.  Calling it again does nothing.  Loop thread only.
 */
void cluster_leave(cluster_t *c);

/* 1 once a cluster_leave has ended (the connection closed), else 0. */
int cluster_left(const cluster_t *c);

/* 1 when the upstream connection is up; else 0 with why it is not in why
 * (what libnats last said, or "connecting"). */
int cluster_connected(cluster_t *c, char *why, size_t n);

/* 1 when the node is ready as far as the cluster goes: connected, every
 * jetstream-backed stream made or bound, and caught up with the rules
 * deployed to the cluster (cluster_deploy.h); else 0 with why (also
 * while it leaves the cluster). */
int cluster_ready(cluster_t *c, char *why, size_t n);

/* This node's status as a new cJSON object (caller deletes; NULL when out
 * of memory): what it answers on CLUSTER_STATUS_SUBJECT. */
cJSON *cluster_status_object(cluster_t *c);

/*
 * Sends m, a client's request on $TIDE.NODE.<another node>.<rest>, to the
 * cluster with by ("<user>@<this node>") as who asked, in place of any
 * such header the client wrote.  0, or -1 with the reason in err (the
 * upstream refused it, or its reconnect buffer is full), counted as a
 * refused publish.  Loop thread only.
 */
struct proto_msg;
int cluster_node_forward(cluster_t *c, const struct proto_msg *m, const char *by, char *err, size_t errsz);

/*
 * Sends m, a client's message that the node does not take itself (a
 * JetStream API request or an ack about a stream that is not local),
 * to the cluster as it is: subject, reply subject and headers.  0, or -1
 * with the reason in err, counted as a refused publish.  Loop thread only.
 */
int cluster_forward(cluster_t *c, const struct proto_msg *m, char *err, size_t errsz);

/*
 * An inbox in the cluster for the answers to what the node publishes on
 * behalf of its HTTP face (JetStream's PubAcks): an upstream subscription
 * to prefix.> whose messages go to fn (m valid during the call, headers
 * included).  One per cluster; 0, or -1 when one is open already or the
 * subscription fails (logged).  cluster_inbox_sent counts the messages
 * the node has sent to the cluster with a reply subject under prefix.
 * cluster_inbox_close (NULL c: nothing) ends it; call it before the
 * cluster is freed.  Loop thread only.
 */
typedef void (*cluster_inbox_fn)(void *ctx, const struct proto_msg *m);
int cluster_inbox_open(cluster_t *c, const char *prefix, cluster_inbox_fn fn, void *ctx);
uint64_t cluster_inbox_sent(cluster_t *c);
void cluster_inbox_close(cluster_t *c);

/* Asks the cluster (cluster_ask.h): publishes payload (len bytes) to
 * subject with a reply to the node's inbox; fn(ctx, answer) follows on
 * the loop, with NULL when no answer came in time.  0, or -1 when out of
 * memory (fn is not called).  Loop thread only. */
int cluster_ask(cluster_t *c, const char *subject, const char *payload, size_t len, cluster_answer_fn fn, void *ctx);

/* Answers a request on $TIDE.NODE.<this node>.> that came from the
 * cluster; by is who asked, as the node it entered through said ("" or
 * NULL: nobody named); m's reply leads the answer back upstream. */
typedef void (*cluster_request_fn)(void *ctx, const char *by, const struct proto_msg *m);

/* Sets who answers the requests addressed to this node (NULL: nobody;
 * they go unanswered).  Loop thread only. */
void cluster_set_requests(cluster_t *c, cluster_request_fn fn, void *ctx);

/* m's headers as a NATS header block ("NATS/1.0[ status]\r\nK: V\r\n\r\n"),
 * malloc'd into *out (caller frees); *out NULL when m has none.  Returns
 * 0, or -1 when out of memory.  Any thread. */
int cluster_header_block(natsMsg *m, char **out, size_t *len);

#endif
