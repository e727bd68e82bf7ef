/*
 * cluster_js.h - the streams an entry file keeps in the cluster's
 * JetStream (stream "name" { backend = "jetstream", replicas = 3 }):
 * made there, or bound when they exist with the same subjects and
 * replicas (docs/cluster.md).
 *
 * The node cannot wait for an answer on its own loop (libnats reads on
 * that loop), so each stream is a small state machine driven by the
 * answers of the JetStream API: $JS.API.STREAM.INFO, then CREATE when the
 * stream is not there.  Loop thread only.
 */
#ifndef TIDE_CLUSTER_JS_H
#define TIDE_CLUSTER_JS_H

#include <stddef.h>

#include <cjson/cJSON.h>
#include <nats/nats.h>

#include "script.h"

typedef struct cluster_js cluster_js_t;

/* For the streams scripts declares; requests go out on nc with replies to
 * inbox.<n> (the caller subscribes to inbox.* and hands each answer to
 * cluster_js_answer).  NULL when out of memory. */
cluster_js_t *cluster_js_new(natsConnection *nc, script_host_t *scripts, const char *inbox);
void cluster_js_free(cluster_js_t *j);

/* Requests go out on nc from now on (the node connected again with new
 * credentials; answers keep arriving on the same inbox). */
void cluster_js_set_connection(cluster_js_t *j, natsConnection *nc);

/* The rules were reloaded: takes their declarations (keeping what is
 * bound already and unchanged) and asks about the rest. */
void cluster_js_rules_changed(cluster_js_t *j);

/* Asks again about every stream not bound whose last question is older
 * than a few seconds (or all, force != 0: after a reconnect). */
void cluster_js_sync(cluster_js_t *j, int force);

/* An answer on the inbox (m stays the caller's). */
void cluster_js_answer(cluster_js_t *j, natsMsg *m);

/* 1 when every declared stream is bound; else 0 with the first that is
 * not, and why, in why. */
int cluster_js_ready(cluster_js_t *j, char *why, size_t n);

/* 1 when the declared stream name is bound, else 0. */
int cluster_js_bound(cluster_js_t *j, const char *name);

/* Adds "streams": [{name, replicas, state, error}] to o. */
void cluster_js_status(cluster_js_t *j, cJSON *o);

#endif
