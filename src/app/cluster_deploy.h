/*
 * cluster_deploy.h - rules deployed once to every node of a cluster
 * (tide deploy, docs/cluster.md).
 *
 * A deployed revision is a bundle of rule files kept under the key
 * `rules` of the replicated KV bucket TIDE_RULES (the JetStream stream
 * KV_TIDE_RULES); its revision number is the stream sequence of that
 * value.  `tide deploy` sends the bundle on CLUSTER_DEPLOY_SUBJECT; the
 * nodes take such requests in one queue group, so one of them stores it.
 * Every node watches the key (an ephemeral push consumer of the stream:
 * the last value, then each new one) and loads each new revision after
 * its own entry file; a revision that does not load is refused and the
 * rules that served keep serving.
 *
 * As in cluster_js.h, the node never waits for an answer on its loop:
 * requests go out with replies to the module's inbox, and the answers
 * come back through cluster.c's queue.  Loop thread only.
 */
#ifndef TIDE_CLUSTER_DEPLOY_H
#define TIDE_CLUSTER_DEPLOY_H

#include <stddef.h>

#include <cjson/cJSON.h>
#include <nats/nats.h>

struct node;
typedef struct cluster_deploy cluster_deploy_t;

/* Where tide deploy sends a bundle; the nodes answer in one queue group. */
#define CLUSTER_DEPLOY_SUBJECT "$TIDE.CLUSTER.DEPLOY"
#define CLUSTER_DEPLOY_QUEUE "tide-deploy"
#define CLUSTER_RULES_STREAM "KV_TIDE_RULES"
#define CLUSTER_RULES_KEY_SUBJECT "$KV.TIDE_RULES.rules"
/* Revisions the bucket keeps. */
#define CLUSTER_RULES_HISTORY 64
/* Files in one bundle, and the longest path of one. */
#define CLUSTER_DEPLOY_MAX_FILES 256
#define CLUSTER_DEPLOY_MAX_PATH 200

/* How the module subscribes upstream to the subject its watch delivers to
 * (the caller's subscriptions feed its queue): 0 with the subscription and
 * its id, or -1. */
typedef int (*cluster_deploy_subscribe_fn)(void *ctx, const char *subject, natsSubscription **ns, int64_t *sid);

/*
 * For node n (its scripts, history and data directory): requests go out
 * on nc with replies to inbox.> (the caller subscribes to inbox.> and
 * hands what arrives to cluster_deploy_answer, and to
 * CLUSTER_DEPLOY_SUBJECT in queue CLUSTER_DEPLOY_QUEUE, handing requests
 * to cluster_deploy_request).  Each watch delivers to a subject of its
 * own under watch_prefix (nats-server 2.9 does not deliver a push
 * consumer's messages to a wildcard subscription), subscribed through
 * subscribe; what arrives on the subscription whose id
 * cluster_deploy_watch_sid says goes to cluster_deploy_revision.  The files of the revisions go to
 * <data dir>/deployed/<rev>/ when the node uses its data directory, else
 * to a temporary directory removed by cluster_deploy_free.  NULL when out
 * of memory or the directory cannot be made (logged).
 */
cluster_deploy_t *cluster_deploy_new(natsConnection *nc, struct node *n, const char *inbox, const char *watch_prefix,
                                     cluster_deploy_subscribe_fn subscribe, void *ctx);

/* Requests go out on nc from now on (the node connected again with new
 * credentials); call cluster_deploy_connected once it is up, which moves
 * the watch to it. */
void cluster_deploy_set_connection(cluster_deploy_t *d, natsConnection *nc);

/* The id of the watch's subscription (0 when none). */
int64_t cluster_deploy_watch_sid(const cluster_deploy_t *d);

/* A message on the watch's subscription (m stays the caller's). */
void cluster_deploy_revision(cluster_deploy_t *d, natsMsg *m);

/* Drops the watch's subscription: call before the connection closes. */
void cluster_deploy_unsubscribe(cluster_deploy_t *d);

/* Frees d (NULL is fine); the scripts keep the deployed rules they run. */
void cluster_deploy_free(cluster_deploy_t *d);

/* The connection is up (again): makes sure the bucket exists and watches
 * it anew (a node that reconnects gets the latest revision again). */
void cluster_deploy_connected(cluster_deploy_t *d);

/* Once a second: retries what failed or got no answer, expires deploy
 * requests the bucket did not answer, checks that the watch still exists. */
void cluster_deploy_tick(cluster_deploy_t *d);

/* A message on the inbox (m stays the caller's). */
void cluster_deploy_answer(cluster_deploy_t *d, natsMsg *m);

/* A request on CLUSTER_DEPLOY_SUBJECT (m stays the caller's): checks the
 * bundle, stores it in the bucket and answers {"rev":N,"hash":"..."}, or
 * {"error":"..."}, to its reply subject. */
void cluster_deploy_request(cluster_deploy_t *d, natsMsg *m);

/* 1 when the node has caught up with the bucket and, when it holds a
 * revision, runs one of them; else 0 with why. */
int cluster_deploy_ready(cluster_deploy_t *d, char *why, size_t n);

/* Adds rules_revision, rules_state, rules_error, rules_failed_revision,
 * rules_hash and rules_by to o (the node's status). */
void cluster_deploy_status(cluster_deploy_t *d, cJSON *o);

/*
 * Checks a bundle's "entry" and "files" ({path: text}): relative paths of
 * .lua files without "..", at most CLUSTER_DEPLOY_MAX_FILES, the entry
 * among them.  0, or -1 with the reason in err.  Any thread.
 */
int cluster_deploy_check_bundle(const cJSON *bundle, char *err, size_t errsz);

/* The content hash of a bundle's files (16 hex digits and a NUL in out),
 * over each path and text in the order given. */
void cluster_deploy_hash(const cJSON *files, char out[17]);

#endif
