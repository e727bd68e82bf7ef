/*
 * node.h - one tide node: the server and what the app started around it.
 *
 * The node owns its parts and is passed down explicitly to the app's
 * faces (admin verbs, HTTP, the prompt); the layers below get only the
 * part they work on.  A part that is not running is NULL.
 */
#ifndef TIDE_NODE_H
#define TIDE_NODE_H

#include "script.h"
#include "server.h"
#include "stream.h"

struct cluster;
struct history;
struct http;
struct jsapi;
struct jsapi_cluster;
struct repl;

typedef struct node {
    server_t *srv;
    script_host_t *scripts; /* the entry file's rules; NULL without -c */
    streams_t *streams;     /* the persistent queue; NULL without one */
    struct http *http;      /* the HTTP face; NULL when off */
    struct repl *remote;    /* the tide repl --connect session (repl.c); NULL when none */
    struct jsapi *jsapi;    /* the JetStream API over the streams (jsapi.c); NULL without streams */
    struct cluster *cluster; /* the upstream NATS cluster (cluster.c); NULL without cluster { } */
    struct jsapi_cluster *jsfwd; /* the JetStream API's part sent to the cluster (jsapi_cluster.c) */
    struct history *history; /* the rule history (history.c); NULL without scripts */
    struct event *cluster_watch; /* joins or leaves the cluster after a reload (node.c); NULL without scripts */
    uint64_t cluster_refused;    /* the rules' generation whose cluster { } failed to join (0: none) */
    char data_dir[4200];    /* where its files go: --data, storage { dir }, or "data" beside the entry file */
} node_t;

/* With n->srv and n->scripts set: routes the server's events through the
 * scripts, watches their files, and opens the persistent queue the entry
 * file asks for (in data_flag, else its storage { dir }, else "data"
 * beside it) with the JetStream API over it.  0, or -1 with the reason
 * logged. */
int node_start_scripts(node_t *n, const char *data_flag);

/* Joins the upstream cluster when the entry file has cluster { } (n->srv
 * and n->scripts set, before the loop runs), and from then on follows the
 * reloads: rules that add cluster { } join it, rules without it leave it
 * (cluster_leave, then back to the node's own files and buckets).  0
 * (also when there is none), or -1 with the reason logged.  An
 * unreachable upstream is not a failure: the node keeps trying.  A node
 * that may join later needs cluster_prepare_threads before its loop. */
int node_start_cluster(node_t *n);

/* Opens the HTTP face: on http_flag (HOST:PORT), else the entry file's
 * listen { http }, else 127.0.0.1:8222 when that is free.  0, or -1 (logged)
 * when an address that was asked for cannot be bound. */
int node_start_http(node_t *n, const char *http_flag, int no_http);

/* Stops and frees every part, in the order they depend on each other
 * (a remote prompt session, HTTP, the cluster, streams, server, scripts), and zeroes n. */
void node_stop(node_t *n);

#endif
