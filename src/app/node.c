/* node.c - starting and stopping the parts of a node; see node.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "admin.h"
#include "cluster.h"
#include "history.h"
#include "http.h"
#include "jsapi.h"
#include "log.h"
#include "node.h"
#include "repl.h"

int node_start_scripts(node_t *n, const char *data_flag)
{
    char dd[4200], err[1024];
    if (script_host_attach(n->scripts, n->srv) < 0) {
        log_error("cannot set up script reloading");
        return -1;
    }
    /* The persistent queue: --data, else storage { dir }, by default
     * "data" beside the entry file; only when something asks for it. */
    const char *sd = script_storage_dir(n->scripts);
    if (data_flag)
        snprintf(dd, sizeof dd, "%s", data_flag);
    else if (sd)
        snprintf(dd, sizeof dd, "%s", sd);
    else
        script_default_storage_dir(n->scripts, dd, sizeof dd);
    snprintf(n->data_dir, sizeof n->data_dir, "%s", dd);
    /* The rule history lives in the data directory when the node has one
     * in use; a node without one keeps it in memory rather than making a
     * directory beside the entry file. */
    int has_data = script_declared_streams(n->scripts) || data_flag || sd;
    n->history = history_open(has_data ? dd : NULL, n->scripts);
    if (!has_data)
        return 0;
    if (!(n->streams = streams_new(n->srv, dd))) {
        log_error("cannot set up the streams");
        return -1;
    }
    /* The API first: tide.kv is its bucket `tide`, made through it, and
     * the entry file runs (again) when the streams are set. */
    int failed;
    n->jsapi = jsapi_start(n, &failed);
    if (failed)
        return -1;
    if (n->jsapi)
        script_host_set_bucket_maker(n->scripts, jsapi_bucket_make, n->jsapi);
    if (script_host_set_streams(n->scripts, n->streams, err, sizeof err) < 0) {
        log_error("%s", err);
        return -1;
    }
    return 0;
}

/* A reload added cluster { }: joins, or logs why not and waits for the
 * next reload. */
static void node_join(node_t *n)
{
    char err[600];
    script_stats_t st;
    script_get_stats(n->scripts, &st);
    if (n->cluster_refused == st.generation)
        return;
    log_info("cluster: the reloaded rules have cluster { }: the node joins the cluster");
    if (!(n->cluster = cluster_start(n, err, sizeof err))) {
        n->cluster_refused = st.generation;
        log_error("%s (the node stays on its own until a reload changes cluster { })", err);
        return;
    }
    n->cluster_refused = 0;
    admin_attach_cluster(n);
    http_cluster_joined(n->http);
    if (!(n->jsfwd = jsapi_cluster_start(n)))
        log_error("cluster: the JetStream API is answered from the local streams alone");
}

/* The cluster has been left: frees it and goes back to the node's own
 * files (no deployed rules) and buckets, loaded again. */
static void node_left(node_t *n)
{
    char err[1024];
    jsapi_cluster_free(n->jsfwd);
    n->jsfwd = NULL;
    http_cluster_left(n->http);
    cluster_free(n->cluster);
    n->cluster = NULL;
    script_set_deployed(n->scripts, NULL, NULL, NULL);
    if (script_reload(n->scripts, "left the cluster", err, sizeof err) < 0)
        log_error("cluster: the node left the cluster, but its own rules do not load again: %s", err);
    log_info("cluster: the node is out of the cluster: it delivers its clients' messages itself");
}

/* Once a second: does what the loaded rules say of the cluster.  Leaving
 * is finished here rather than in the cluster's own callbacks, which must
 * not free it. */
static void node_cluster_watch(evutil_socket_t fd, short what, void *arg)
{
    node_t *n = arg;
    int wanted = script_cluster_settings(n->scripts) != NULL;
    (void)fd;
    (void)what;
    if (n->cluster && cluster_left(n->cluster))
        node_left(n);
    else if (n->cluster && !wanted)
        cluster_leave(n->cluster);
    else if (!n->cluster && wanted)
        node_join(n);
}

int node_start_cluster(node_t *n)
{
    char err[600];
    struct timeval second = {1, 0};
    if (!n->scripts)
        return 0;
    n->cluster_watch = event_new(server_base(n->srv), -1, EV_PERSIST, node_cluster_watch, n);
    if (!n->cluster_watch || event_add(n->cluster_watch, &second) < 0) {
        log_error("cluster: out of memory");
        return -1;
    }
    if (!script_cluster_settings(n->scripts))
        return 0;
    if (!(n->cluster = cluster_start(n, err, sizeof err))) {
        log_error("%s", err);
        return -1;
    }
    return (n->jsfwd = jsapi_cluster_start(n)) ? 0 : -1;
}

int node_start_http(node_t *n, const char *http_flag, int no_http)
{
    /* --http / listen{http=...} must bind; the default is tried. */
    char addr[300] = "127.0.0.1:8222";
    int said = n->scripts ? script_http_setting(n->scripts, addr, sizeof addr) : 0;
    if (http_flag)
        snprintf(addr, sizeof addr, "%s", http_flag), said = 1;
    if (no_http || said < 0)
        return 0;
    char *colon = strrchr(addr, ':');
    *colon = '\0';
    const char *host = addr;
    if (host[0] == '[') { /* [::1]:8222 */
        host++;
        if (colon > addr && colon[-1] == ']')
            colon[-1] = '\0';
    }
    n->http = http_new(n, host, atoi(colon + 1));
    if (!n->http && said) {
        log_error("cannot listen for HTTP on %s:%s", host, colon + 1);
        return -1;
    }
    if (!n->http)
        log_warn("HTTP is off: the default address %s:%s is taken (use --http or --no-http)", host, colon + 1);
    return 0;
}

void node_stop(node_t *n)
{
    repl_remote_detach(n, NULL);
    http_free(n->http);
    if (n->cluster_watch)
        event_free(n->cluster_watch);
    jsapi_cluster_free(n->jsfwd);
    cluster_free(n->cluster);
    if (n->scripts)
        script_host_set_bucket_maker(n->scripts, NULL, NULL);
    jsapi_free(n->jsapi);
    if (n->scripts)
        script_host_set_streams(n->scripts, NULL, NULL, 0);
    streams_free(n->streams); /* writes and syncs what is buffered */
    server_free(n->srv);
    history_free(n->history);
    script_host_free(n->scripts);
    memset(n, 0, sizeof *n);
}
