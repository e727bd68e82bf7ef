/* cluster.c - cluster mode over libnats; see cluster.h and docs/cluster.md. */
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <nats/nats.h>

/* The adapter is a header of function definitions without prototypes. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nats/adapters/libevent.h>
#pragma GCC diagnostic pop

#include "cluster.h"
#include "cluster_ask.h"
#include "cluster_deploy.h"
#include "cluster_js.h"
#include "cluster_kv.h"
#include "cluster_pull.h"
#include "dict.h"
#include "json_int.h"
#include "log.h"
#include "nkey.h"
#include "node.h"
#include "util.h"

/* What libnats' threads hand to the loop. */
enum item_kind { ITEM_MSG, ITEM_CONNECTED, ITEM_DISCONNECTED, ITEM_RECONNECTED, ITEM_CLOSED, ITEM_ERROR };

/* An upstream subscription's key: its connection's epoch (each
 * connection the node makes gets the next one) and its id there. */
typedef struct sub_key {
    uint64_t epoch;
    int64_t sid;
} sub_key_t;

typedef struct item {
    struct item *next;
    enum item_kind kind;
    sub_key_t key; /* ITEM_MSG: the subscription it came on; every kind: key.epoch, its connection */
    natsMsg *msg;  /* ITEM_MSG, owned */
    char text[160]; /* ITEM_ERROR */
} item_t;

/* What an upstream subscription is for. */
enum upsub_kind {
    UPSUB_CLIENT, UPSUB_STATUS, UPSUB_JS, UPSUB_PULL, UPSUB_DEPLOY, UPSUB_DEPLOY_REQ, UPSUB_KV, UPSUB_NODE, UPSUB_ASK, UPSUB_REPLY
};

/* An upstream subscription: a client's subscription here, mirrored, or
 * one of the node's own inboxes. */
typedef struct mirror {
    enum upsub_kind kind;
    sub_t *sub;        /* UPSUB_CLIENT: the client's subscription */
    char pattern[160]; /* the others: what they subscribe to */
    const char *queue; /* the others: their queue group, or NULL */
    natsSubscription *ns;
    sub_key_t key;
    sub_key_t prev; /* its key on the connection before this one (epoch 0: none): what that
                       connection handed over before it closed is still delivered */
} mirror_t;

struct cluster;
/* The closure of one connection's callbacks, so that what a connection
 * the node left (after a reload changed the upstream or the credentials)
 * still hands over is told apart.  Freed with the cluster. */
typedef struct link {
    struct cluster *c;
    uint64_t epoch;
    natsOptions *opts;
    natsConnection *nc;      /* NULL once it ended */
    natsSubscription **left; /* a connection the node left: its subscriptions, draining */
    size_t nleft;
    struct link *next;
} link_t;

/* Upstream messages one subscription may have waiting in libnats before
 * it counts them as a slow consumer; the loop takes them much faster. */
#define CLUSTER_PENDING_MSGS (1024 * 1024)
#define CLUSTER_PENDING_BYTES (256 * 1024 * 1024)
#define CLUSTER_RECONNECT_WAIT_MS 1000
/* A server that stops answering (paused, or its machine gone without a
 * reset) is noticed after CLUSTER_PINGS_OUT unanswered pings, one every
 * CLUSTER_PING_INTERVAL_MS: about 4 to 6 s, not libnats' 4 minutes. */
#define CLUSTER_PING_INTERVAL_MS 2000
#define CLUSTER_PINGS_OUT 2
#define CLUSTER_DRAIN_BATCH 4096
/* How long a connection the node leaves (a reload changed the upstream
 * or the credentials, or removed cluster { }) may take to hand over what it
 * holds before it is closed. */
#define CLUSTER_DRAIN_TIMEOUT_MS 5000
/* When a reload removes cluster { }: how long the node keeps its upstream
 * subscriptions after it stopped sending its clients' messages upstream,
 * so that the answers to what it sent (PubAcks, replies) still reach the
 * clients here before the connection drains (its drain unsubscribes at
 * once, and an answer that comes after that is lost). */
#define CLUSTER_LEAVE_GRACE_MS 1500
/* The origin marker: "<server id>.<client id>" on what a client with
 * "echo":false published, so that it does not come back to that client;
 * never delivered to a client of a node (docs/cluster.md). */
#define CLUSTER_ORIGIN_HEADER "Tide-Origin"
/* Who asked, on a $TIDE.NODE.> request a node sends on for its client:
 * "<user>@<that node>".  The node sets it and drops one its client wrote,
 * so a tide client cannot pass for another user (docs/cluster.md). */
#define CLUSTER_BY_HEADER "Tide-By"
/* Where the answers to $TIDE.NODE.> requests from the cluster are routed
 * here, before they go back upstream: this, the server id, '.', the
 * requester's reply subject. */
#define CLUSTER_ANSWER_PREFIX SERVER_INBOX_PREFIX "NODE."
#define CLUSTER_ANSWERED_KEEP 10      /* s: a request answered here waits this long for a no-responders to drop */
#define CLUSTER_ANSWERED_MAX 100000   /* such requests remembered at once */

struct cluster {
    node_t *n;
    natsConnection *nc; /* the current connection: link->nc */
    link_t *links;  /* one per connection made, the newest first */
    link_t *link;   /* the current connection's */
    uint64_t epoch; /* the current connection's */
    dict_t mirrors; /* by the address of the client's sub_t: mirror_t */
    dict_t by_sid;  /* by sub_key_t (the current and the previous one): every mirror_t */
    mirror_t *status; /* CLUSTER_STATUS_SUBJECT */
    cluster_js_t *js; /* the jetstream-backed streams */
    mirror_t *js_in;  /* their answers' inbox */
    cluster_pull_t *pull; /* the consumers on those streams */
    mirror_t *pull_in;    /* their inbox: events, pull ends, API answers */
    cluster_deploy_t *deploy; /* rules deployed to the cluster */
    mirror_t *deploy_in;      /* its inbox: the bucket's answers */
    mirror_t *deploy_req;     /* CLUSTER_DEPLOY_SUBJECT, in a queue group */
    cluster_kv_t *kv;         /* the KV buckets the scripts use */
    mirror_t *kv_in;          /* their inbox: PubAcks, API answers (the watches are cluster_kv's) */
    mirror_t *node_in;        /* $TIDE.NODE.<this node>.>: requests addressed to it */
    cluster_ask_t *ask;       /* questions asked for a client, answered here (cluster_ask) */
    mirror_t *ask_in;         /* their inbox */
    mirror_t *reply_in;       /* answers to what the node publishes for its HTTP face (cluster_inbox_open) */
    cluster_inbox_fn reply_fn;
    void *reply_ctx;
    char reply_prefix[128]; /* their subjects' prefix; "" when none is open */
    uint64_t reply_sent;    /* messages sent upstream with a reply under it */
    sub_t *answers;           /* inside the server: their answers, sent back upstream */
    char answer_prefix[128];  /* CLUSTER_ANSWER_PREFIX "<server id>." */
    cluster_request_fn on_request; /* answers them (cluster_set_requests); NULL: not answered */
    void *request_ctx;
    struct event *wake; /* drains the queue on the loop */
    struct event *tick; /* once a second: events/s */
    pthread_mutex_t lock; /* guards head, tail, woken, lost and live: libnats' threads add to the queue */
    item_t *head, *tail;
    int woken;
    uint64_t lost; /* items that could not be queued (out of memory) */
    int live;             /* upstream subscriptions whose last callback has not returned yet */
    pthread_cond_t ended; /* signalled when live drops to 0 */
    /* The loop's own. */
    int connected;
    char url[256];        /* the server connected to, or the last one */
    char last_error[320]; /* "" when none yet */
    uint64_t sent, received, refused, disconnects, reconnects, mirror_failures;
    uint64_t last_events;
    double events_per_s;
    cluster_settings_t started; /* what cluster { } said at start: the connection's settings */
    uint64_t generation;        /* of the rules last compared with it */
    time_t last_refusal_log;
    dict_t answered; /* reply subject -> the second: requests answered here (drop_no_responders) */
    int leaving;                /* cluster_leave was called: nothing more goes upstream */
    int left;                   /* ... and the connection has drained and closed */
    struct event *leave_timer;  /* the end of CLUSTER_LEAVE_GRACE_MS: the drain begins */
};

static void switch_connection(cluster_t *c, const cluster_settings_t *cs);
static void leave_state(cluster_t *c, enum item_kind kind);
static void on_leave_timer(evutil_socket_t fd, short what, void *arg);
static void link_end(link_t *l);
static mirror_t *inbox_open(cluster_t *c, enum upsub_kind kind, const char *pattern, const char *queue, char *err,
                            size_t errsz);
static void mirror_free(cluster_t *c, mirror_t *m, int unsubscribe);

void cluster_prepare_threads(void)
{
    natsLibevent_Init();
}

/* ---- from libnats' threads ------------------------------------------------ */

/* Any thread: queues it for the loop and wakes the loop when the queue was empty. */
static void enqueue(cluster_t *c, item_t *it)
{
    int wake;
    pthread_mutex_lock(&c->lock);
    if (c->tail)
        c->tail->next = it;
    else
        c->head = it;
    c->tail = it;
    wake = !c->woken;
    c->woken = 1;
    pthread_mutex_unlock(&c->lock);
    if (wake)
        event_active(c->wake, EV_READ, 0);
}

static item_t *item_new(link_t *l, enum item_kind kind)
{
    item_t *it = calloc(1, sizeof *it);
    if (!it) {
        pthread_mutex_lock(&l->c->lock);
        l->c->lost++;
        pthread_mutex_unlock(&l->c->lock);
        return NULL;
    }
    it->kind = kind;
    it->key.epoch = l->epoch;
    return it;
}

static void on_upstream_msg(natsConnection *nc, natsSubscription *ns, natsMsg *msg, void *closure)
{
    link_t *l = closure;
    item_t *it = item_new(l, ITEM_MSG);
    (void)nc;
    if (!it) {
        natsMsg_Destroy(msg);
        return;
    }
    it->key.sid = natsSubscription_GetID(ns);
    it->msg = msg;
    enqueue(l->c, it);
}

/* A delivery thread: the subscription is closed and its message handler
 * will not run again. */
static void on_sub_ended(void *closure)
{
    cluster_t *c = ((link_t *)closure)->c;
    pthread_mutex_lock(&c->lock);
    if (--c->live == 0)
        pthread_cond_broadcast(&c->ended);
    pthread_mutex_unlock(&c->lock);
}

static void on_conn_event(link_t *l, enum item_kind kind)
{
    item_t *it = item_new(l, kind);
    if (it)
        enqueue(l->c, it);
}

static void on_connected(natsConnection *nc, void *closure) { (void)nc, on_conn_event(closure, ITEM_CONNECTED); }
static void on_disconnected(natsConnection *nc, void *closure) { (void)nc, on_conn_event(closure, ITEM_DISCONNECTED); }
static void on_reconnected(natsConnection *nc, void *closure) { (void)nc, on_conn_event(closure, ITEM_RECONNECTED); }
static void on_closed(natsConnection *nc, void *closure) { (void)nc, on_conn_event(closure, ITEM_CLOSED); }

static void on_async_error(natsConnection *nc, natsSubscription *ns, natsStatus err, void *closure)
{
    link_t *l = closure;
    item_t *it = item_new(l, ITEM_ERROR);
    (void)nc;
    if (!it)
        return;
    snprintf(it->text, sizeof it->text, "%s%s", ns ? "upstream subscription: " : "", natsStatus_GetText(err));
    enqueue(l->c, it);
}

/* ---- on the loop ---------------------------------------------------------- */

int cluster_header_block(natsMsg *m, char **out, size_t *len)
{
    const char **keys = NULL, **vals = NULL, *status = NULL, *desc = NULL;
    int nkeys = 0, nvals = 0, rc = -1;
    FILE *f = NULL;
    *out = NULL;
    *len = 0;
    if (natsMsgHeader_Keys(m, &keys, &nkeys) != NATS_OK || nkeys == 0)
        return 0;
    if (nkeys == 1 && !strcmp(keys[0], CLUSTER_ORIGIN_HEADER)) {
        free((void *)keys); /* only the marker: the publisher sent no headers */
        return 0;
    }
    if (!(f = open_memstream(out, len)))
        goto fail;
    natsMsgHeader_Get(m, "Status", &status);
    natsMsgHeader_Get(m, "Description", &desc);
    fprintf(f, "NATS/1.0%s%s%s%s\r\n", status ? " " : "", status ? status : "", status && desc ? " " : "",
            status && desc ? desc : "");
    for (int i = 0; i < nkeys; i++) {
        if (status && (!strcmp(keys[i], "Status") || !strcmp(keys[i], "Description")))
            continue;
        if (!strcmp(keys[i], CLUSTER_ORIGIN_HEADER))
            continue;
        if (natsMsgHeader_Values(m, keys[i], &vals, &nvals) != NATS_OK)
            continue;
        for (int k = 0; k < nvals; k++)
            fprintf(f, "%s: %s\r\n", keys[i], vals[k]);
        free((void *)vals);
        vals = NULL;
    }
    fputs("\r\n", f);
    rc = 0;
fail:
    if (f && fclose(f) != 0)
        rc = -1;
    if (rc < 0) {
        free(*out);
        *out = NULL;
    }
    free((void *)keys);
    return rc;
}

/* The id of the client here that published nm with "echo":false (its
 * origin marker names this node), else 0. */
static uint64_t origin_here(cluster_t *c, natsMsg *nm)
{
    const char *v = NULL, *id = server_id(c->n->srv);
    size_t idlen = strlen(id);
    char *end = NULL;
    if (natsMsgHeader_Get(nm, CLUSTER_ORIGIN_HEADER, &v) != NATS_OK || !v || strncmp(v, id, idlen) ||
        v[idlen] != '.')
        return 0;
    unsigned long long client = strtoull(v + idlen + 1, &end, 10);
    return end && !*end ? (uint64_t)client : 0;
}

/* nm as a proto_msg_t in m, its header block malloc'd into *hdr (caller
 * frees); 0, or -1 when out of memory (logged, nm dropped). */
static int msg_view(natsMsg *nm, proto_msg_t *m, char **hdr)
{
    size_t hlen = 0;
    memset(m, 0, sizeof *m);
    m->subject = natsMsg_GetSubject(nm);
    m->subject_len = strlen(m->subject);
    m->reply = natsMsg_GetReply(nm);
    if (m->reply && !m->reply[0])
        m->reply = NULL;
    m->reply_len = m->reply ? strlen(m->reply) : 0;
    m->payload = natsMsg_GetData(nm) ? natsMsg_GetData(nm) : "";
    m->payload_len = (size_t)natsMsg_GetDataLength(nm);
    if (cluster_header_block(nm, hdr, &hlen) < 0) {
        log_error("cluster: out of memory reading the headers of a message on %s: dropped", m->subject);
        return -1;
    }
    m->hdr = *hdr;
    m->hdr_len = hlen;
    return 0;
}

/* An answer on the HTTP face's inbox: to its callback. */
static void deliver_reply(cluster_t *c, natsMsg *nm)
{
    proto_msg_t m;
    char *hdr = NULL;
    if (!c->reply_fn || msg_view(nm, &m, &hdr) < 0)
        return;
    c->received++;
    c->reply_fn(c->reply_ctx, &m);
    free(hdr);
}

/* Remembers that reply was answered here (see drop_no_responders); the
 * value is the second it was, kept in the pointer (never 0). */
static void note_answered(cluster_t *c, const char *reply, size_t len)
{
    if (c->answered.count >= CLUSTER_ANSWERED_MAX || dict_get(&c->answered, reply, len))
        return;
    dict_put(&c->answered, reply, len, (void *)(uintptr_t)time(NULL)); /* out of memory: not remembered */
}

/* True when nm is the cluster's "503 no responders" to a request that
 * something on this node answered (a local stream's PubAck, a rule's
 * handler): the server sends it because nobody else in the cluster
 * subscribes to the subject, but the requester has its answer, and a
 * client that takes the first reply might take this one.  Dropped. */
static int drop_no_responders(cluster_t *c, natsMsg *nm)
{
    const char *status = NULL, *subject = natsMsg_GetSubject(nm);
    if (!c->answered.count || natsMsg_GetDataLength(nm) ||
        natsMsgHeader_Get(nm, "Status", &status) != NATS_OK || !status || strcmp(status, "503"))
        return 0;
    return dict_remove(&c->answered, subject, strlen(subject)) != NULL;
}

/* Forgets answered requests older than CLUSTER_ANSWERED_KEEP seconds. */
static void expire_answered(cluster_t *c, time_t now)
{
    for (size_t i = 0; c->answered.count && i < c->answered.cap; i++) {
        dict_entry_t *d = &c->answered.slots[i];
        if (d->key && now - (time_t)(uintptr_t)d->val >= CLUSTER_ANSWERED_KEEP) {
            dict_remove(&c->answered, d->key, d->klen);
            i--; /* backward-shift deletion may have moved another entry here */
        }
    }
}

/* Hands an upstream message to the one client subscription it is for. */
static void deliver_upstream(cluster_t *c, sub_t *sub, natsMsg *nm)
{
    proto_msg_t m;
    char *hdr = NULL;
    if (msg_view(nm, &m, &hdr) < 0)
        return;
    c->received++;
    if (drop_no_responders(c, nm)) {
        free(hdr);
        return;
    }
    server_deliver_sub_origin(c->n->srv, sub, &m, origin_here(c, nm));
    free(hdr);
}

static void answer_status(cluster_t *c, natsMsg *req)
{
    const char *reply = natsMsg_GetReply(req);
    cJSON *o = NULL;
    char *text = NULL;
    if (!reply || !reply[0])
        return;
    if (!(o = cluster_status_object(c)) || !(text = cJSON_PrintUnformatted(o)))
        goto fail;
    natsConnection_PublishString(c->nc, reply, text);
fail:
    cJSON_Delete(o);
    cJSON_free(text);
}

/* A request on $TIDE.NODE.<this node>.> from the cluster: answered as
 * the node answers $TIDE.<rest>, with who asked as the entering node said
 * (none when it came straight from a server of the cluster).  Its answer
 * is routed to an inbox of the node's (answer_back) rather than straight
 * to the requester, so that it goes back upstream even when a client here
 * subscribes to the requester's subject. */
static void answer_node_request(cluster_t *c, natsMsg *nm)
{
    const char *by = NULL, *reply = natsMsg_GetReply(nm);
    char *local = NULL;
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = natsMsg_GetSubject(nm);
    m.subject_len = strlen(m.subject);
    if (reply && reply[0]) {
        size_t plen = strlen(c->answer_prefix), rlen = strlen(reply);
        if (!(local = malloc(plen + rlen + 1))) {
            log_error("cluster: out of memory answering a request on %s: dropped", m.subject);
            return;
        }
        memcpy(local, c->answer_prefix, plen);
        memcpy(local + plen, reply, rlen + 1);
        m.reply = local;
        m.reply_len = plen + rlen;
    }
    m.payload = natsMsg_GetData(nm) ? natsMsg_GetData(nm) : "";
    m.payload_len = (size_t)natsMsg_GetDataLength(nm);
    if (natsMsgHeader_Get(nm, CLUSTER_BY_HEADER, &by) != NATS_OK)
        by = NULL;
    c->received++;
    if (c->on_request)
        c->on_request(c->request_ctx, by, &m);
    free(local);
}

static int on_egress(void *ctx, const proto_msg_t *m, uint64_t origin, int answered, char *err, size_t errsz);

/* The inside subscription's delivery: an answer to a request from the
 * cluster, sent upstream to the requester's reply subject. */
static void answer_back(void *ctx, const proto_msg_t *m)
{
    cluster_t *c = ctx;
    size_t plen = strlen(c->answer_prefix);
    char err[320];
    proto_msg_t up = *m;
    if (m->subject_len <= plen)
        return;
    up.subject = m->subject + plen;
    up.subject_len = m->subject_len - plen;
    up.reply = NULL;
    up.reply_len = 0;
    on_egress(c, &up, 0, 0, err, sizeof err); /* a refusal is counted and logged there */
}

static void note_state(cluster_t *c, enum item_kind kind, const char *text)
{
    const char *what = NULL;
    if (kind == ITEM_CONNECTED || kind == ITEM_RECONNECTED) {
        c->connected = 1;
        c->reconnects += kind == ITEM_RECONNECTED;
        natsConnection_GetConnectedUrl(c->nc, c->url, sizeof c->url);
        log_info("cluster: %s to the upstream at %s", kind == ITEM_CONNECTED ? "connected" : "reconnected", c->url);
        cluster_js_sync(c->js, 1);
        cluster_pull_sync(c->pull, 1);
        cluster_deploy_connected(c->deploy);
        cluster_kv_connected(c->kv, c->url);
        return;
    }
    if (kind == ITEM_DISCONNECTED)
        what = "disconnected from the upstream; reconnecting (publishes wait in the reconnect buffer)";
    else if (kind == ITEM_CLOSED)
        what = "the connection to the upstream is closed for good (libnats stops trying when the servers refuse "
               "the node's credentials); the node stays out of the cluster until it restarts or is reloaded "
               "with other credentials";
    if (what) {
        const char *last = NULL;
        c->connected = 0;
        c->disconnects += kind == ITEM_DISCONNECTED;
        cluster_pull_pause(c->pull);
        if (kind == ITEM_CLOSED && natsConnection_GetLastError(c->nc, &last) != NATS_OK && last && last[0])
            snprintf(c->last_error, sizeof c->last_error, "%s (%s)", what, last);
        else
            snprintf(c->last_error, sizeof c->last_error, "%s", what);
        if (kind == ITEM_CLOSED)
            log_error("cluster: %s", c->last_error);
        else
            log_warn("cluster: %s", c->last_error);
        return;
    }
    snprintf(c->last_error, sizeof c->last_error, "%s", text);
    log_warn("cluster: %s", text);
}

/* A connection the node left has closed: gives it back to libnats. */
static void left_closed(cluster_t *c, uint64_t epoch)
{
    for (link_t *l = c->links; l; l = l->next)
        if (l->epoch == epoch && l != c->link && l->nc) {
            link_end(l);
            log_info("cluster: the previous connection to the upstream has drained and closed");
        }
}

/* Hands a message from the cluster to what its subscription is for. */
static void dispatch(cluster_t *c, item_t *it)
{
    mirror_t *m = dict_get(&c->by_sid, (const char *)&it->key, sizeof it->key);
    if (!m) {
        if (it->key.epoch != c->epoch)
            return; /* a watch of a connection the node left */
        if (it->key.sid != cluster_deploy_watch_sid(c->deploy))
            cluster_kv_message(c->kv, it->key.sid, it->msg); /* a bucket's watch, or unsubscribed since */
        else if (!c->leaving) /* leaving: the node goes back to its own files */
            cluster_deploy_revision(c->deploy, it->msg);
        return;
    }
    switch (m->kind) {
    case UPSUB_STATUS:
        answer_status(c, it->msg);
        break;
    case UPSUB_JS:
        cluster_js_answer(c->js, it->msg);
        break;
    case UPSUB_PULL:
        cluster_pull_message(c->pull, it->msg);
        break;
    case UPSUB_DEPLOY:
        cluster_deploy_answer(c->deploy, it->msg);
        break;
    case UPSUB_DEPLOY_REQ:
        cluster_deploy_request(c->deploy, it->msg);
        break;
    case UPSUB_KV:
        cluster_kv_message(c->kv, 0, it->msg);
        break;
    case UPSUB_NODE:
        answer_node_request(c, it->msg);
        break;
    case UPSUB_ASK:
        cluster_ask_answer(c->ask, it->msg);
        break;
    case UPSUB_REPLY:
        deliver_reply(c, it->msg);
        break;
    case UPSUB_CLIENT:
        deliver_upstream(c, m->sub, it->msg);
        break;
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    cluster_t *c = arg;
    item_t *it, *next;
    (void)fd;
    (void)what;
    /* At most CLUSTER_DRAIN_BATCH items a pass, so that a flood from the
     * cluster leaves the loop to the clients in between. */
    pthread_mutex_lock(&c->lock);
    it = c->head;
    item_t *last = it;
    for (int k = 1; last && last->next && k < CLUSTER_DRAIN_BATCH; k++)
        last = last->next;
    c->head = last ? last->next : NULL;
    if (!c->head)
        c->tail = NULL;
    int more = c->woken = c->head != NULL;
    pthread_mutex_unlock(&c->lock);
    if (last)
        last->next = NULL;
    if (more)
        event_active(c->wake, EV_READ, 0);
    for (; it; it = next) {
        next = it->next;
        if (it->kind == ITEM_MSG) {
            dispatch(c, it);
            natsMsg_Destroy(it->msg);
        } else if (it->key.epoch == c->epoch && c->leaving) {
            leave_state(c, it->kind);
        } else if (it->key.epoch == c->epoch) {
            note_state(c, it->kind, it->text);
        } else if (it->kind == ITEM_CLOSED) { /* a connection the node left has drained */
            left_closed(c, it->key.epoch);
        }
        free(it);
    }
}

/* True when a and b list the same servers. */
static int same_upstream(const cluster_settings_t *a, const cluster_settings_t *b)
{
    if (a->nupstream != b->nupstream)
        return 0;
    for (int i = 0; i < a->nupstream; i++)
        if (strcmp(a->upstream[i], b->upstream[i]))
            return 0;
    return 1;
}

/* True when a and b log in the same way (credentials and tls). */
static int same_login(const cluster_settings_t *a, const cluster_settings_t *b)
{
    return a->tls == b->tls && !strcmp(a->user, b->user) && !strcmp(a->password, b->password) &&
           !strcmp(a->token, b->token) && !strcmp(a->nkey, b->nkey) && !strcmp(a->tls_ca, b->tls_ca) &&
           !strcmp(a->tls_cert, b->tls_cert) && !strcmp(a->tls_key, b->tls_key);
}

/* After a reload: name applies at once; another upstream, new
 * credentials or tls make the node connect again.  Rules without
 * cluster { } are the node's to act on (cluster_leave). */
static void apply_reload(cluster_t *c)
{
    const cluster_settings_t *now = script_cluster_settings(c->n->scripts);
    if (now && (!same_upstream(&c->started, now) || !same_login(&c->started, now)))
        switch_connection(c, now);
}

/* $TIDE.NODE.<this node's name>.>, the subject of the requests addressed
 * to it; 0, or -1 with the reason in err. */
static int node_inbox_open(cluster_t *c, char *err, size_t errsz)
{
    char name[256], pattern[300];
    cluster_settings_address_name(script_cluster_settings(c->n->scripts), name, sizeof name);
    snprintf(pattern, sizeof pattern, SERVER_NODE_PREFIX "%s.>", name);
    c->node_in = inbox_open(c, UPSUB_NODE, pattern, NULL, err, errsz);
    return c->node_in ? 0 : -1;
}

/* After a reload: a new name takes the requests addressed to it from now on. */
static void node_inbox_refresh(cluster_t *c)
{
    char name[256], pattern[300], err[320];
    cluster_settings_address_name(script_cluster_settings(c->n->scripts), name, sizeof name);
    snprintf(pattern, sizeof pattern, SERVER_NODE_PREFIX "%s.>", name);
    if (c->node_in && !strcmp(c->node_in->pattern, pattern))
        return;
    mirror_free(c, c->node_in, 1);
    c->node_in = NULL;
    if (node_inbox_open(c, err, sizeof err) < 0) {
        snprintf(c->last_error, sizeof c->last_error, "%s", err);
        log_error("%s (requests addressed to this node are not answered)", err);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    cluster_t *c = arg;
    uint64_t events;
    (void)fd;
    (void)what;
    if (c->n->scripts) {
        script_stats_t st;
        script_get_stats(c->n->scripts, &st);
        events = st.events;
        if (c->leaving || !script_cluster_settings(c->n->scripts)) {
            /* nothing more is asked of the cluster: the node leaves it (cluster_leave) */
        } else if (st.generation != c->generation) {
            c->generation = st.generation;
            apply_reload(c);
            node_inbox_refresh(c);
            cluster_js_rules_changed(c->js);
            cluster_pull_rules_changed(c->pull);
        } else {
            cluster_js_sync(c->js, 0);
            cluster_pull_sync(c->pull, 0);
        }
    } else {
        server_stats_t st;
        server_get_stats(c->n->srv, &st);
        events = st.in_msgs;
    }
    if (!c->leaving)
        cluster_deploy_tick(c->deploy);
    cluster_kv_tick(c->kv);
    expire_answered(c, time(NULL));
    cluster_ask_tick(c->ask);
    c->events_per_s = (double)(events - c->last_events);
    c->last_events = events;
}

/* ---- the server's hooks ---------------------------------------------------- */

static void add_header(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen)
{
    char *k = util_mem_dup(name, nlen), *v = util_mem_dup(value, vlen);
    /* A marker a client wrote itself could silence another client, and
     * an identity it wrote itself would pass it for another user. */
    if (k && v && strcasecmp(k, CLUSTER_ORIGIN_HEADER) && strcasecmp(k, CLUSTER_BY_HEADER))
        natsMsgHeader_Add(ctx, k, v);
    free(k);
    free(v);
}

/* Refused: the reason for the publisher, counted, logged at most once a second. */
static int refuse(cluster_t *c, natsStatus s, const char *subject, char *err, size_t errsz)
{
    time_t now = time(NULL);
    c->refused++;
    if (s == NATS_INSUFFICIENT_BUFFER)
        snprintf(err, errsz, "cluster upstream unreachable and its reconnect buffer is full: publish refused");
    else
        snprintf(err, errsz, "cluster upstream refused the publish: %s", natsStatus_GetText(s));
    snprintf(c->last_error, sizeof c->last_error, "%s", err);
    if (now != c->last_refusal_log) {
        c->last_refusal_log = now;
        log_warn("cluster: %s (subject %s; %" PRIu64 " refused so far)", err, subject, c->refused);
    }
    return -1;
}

/*
 * Publishes m upstream, with its headers and, when name is not NULL, the
 * header name: value set on it (replacing one the client wrote).  Counted
 * as sent, or refused (refuse) with -1.
 */
static int publish_upstream(cluster_t *c, const proto_msg_t *m, const char *name, const char *value, char *err,
                            size_t errsz)
{
    natsMsg *msg = NULL;
    natsStatus s = NATS_NO_MEMORY;
    /* libnats wants NUL-terminated names: one copy of both, on the stack
     * for the usual sizes. */
    char small[512], *names = small, *subject, *reply = NULL;
    size_t need = m->subject_len + m->reply_len + 2;
    if (need > sizeof small && !(names = malloc(need)))
        goto fail;
    subject = names;
    memcpy(subject, m->subject, m->subject_len);
    subject[m->subject_len] = '\0';
    if (m->reply) {
        reply = subject + m->subject_len + 1;
        memcpy(reply, m->reply, m->reply_len);
        reply[m->reply_len] = '\0';
    }
    if (!m->hdr_len && !name) { /* the common case: no message object to build */
        s = reply ? natsConnection_PublishRequest(c->nc, subject, reply, m->payload, (int)m->payload_len)
                  : natsConnection_Publish(c->nc, subject, m->payload, (int)m->payload_len);
        goto fail;
    }
    s = natsMsg_Create(&msg, subject, reply, m->payload, (int)m->payload_len);
    if (s != NATS_OK)
        goto fail;
    if (m->hdr_len)
        proto_header_each(m->hdr, m->hdr_len, add_header, msg);
    if (name)
        s = natsMsgHeader_Set(msg, name, value);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(c->nc, msg);
fail:
    if (s == NATS_OK && reply && c->reply_prefix[0] && !strncmp(reply, c->reply_prefix, strlen(c->reply_prefix)))
        c->reply_sent++;
    if (s == NATS_OK)
        c->sent++;
    else
        refuse(c, s, names ? names : "?", err, errsz);
    natsMsg_Destroy(msg);
    if (names != small)
        free(names);
    return s == NATS_OK ? 0 : -1;
}

static int on_egress(void *ctx, const proto_msg_t *m, uint64_t origin, int answered, char *err, size_t errsz)
{
    cluster_t *c = ctx;
    char mark[64];
    if (answered)
        note_answered(c, m->reply, m->reply_len);
    if (!origin)
        return publish_upstream(c, m, NULL, NULL, err, errsz);
    snprintf(mark, sizeof mark, "%s.%" PRIu64, server_id(c->n->srv), origin);
    return publish_upstream(c, m, CLUSTER_ORIGIN_HEADER, mark, err, errsz);
}

void cluster_set_requests(cluster_t *c, cluster_request_fn fn, void *ctx)
{
    c->on_request = fn;
    c->request_ctx = ctx;
}

int cluster_node_forward(cluster_t *c, const proto_msg_t *m, const char *by, char *err, size_t errsz)
{
    return publish_upstream(c, m, CLUSTER_BY_HEADER, by, err, errsz);
}

int cluster_forward(cluster_t *c, const proto_msg_t *m, char *err, size_t errsz)
{
    return publish_upstream(c, m, NULL, NULL, err, errsz);
}

int cluster_inbox_open(cluster_t *c, const char *prefix, cluster_inbox_fn fn, void *ctx)
{
    char pattern[140], err[320];
    if (c->reply_in)
        return -1;
    snprintf(pattern, sizeof pattern, "%s.>", prefix);
    if (!(c->reply_in = inbox_open(c, UPSUB_REPLY, pattern, NULL, err, sizeof err))) {
        log_error("%s", err);
        return -1;
    }
    snprintf(c->reply_prefix, sizeof c->reply_prefix, "%s.", prefix);
    c->reply_fn = fn;
    c->reply_ctx = ctx;
    return 0;
}

uint64_t cluster_inbox_sent(cluster_t *c) { return c->reply_sent; }

void cluster_inbox_close(cluster_t *c)
{
    if (!c || !c->reply_in)
        return;
    mirror_free(c, c->reply_in, 1);
    c->reply_in = NULL;
    c->reply_fn = NULL;
    c->reply_prefix[0] = '\0';
}

int cluster_ask(cluster_t *c, const char *subject, const char *payload, size_t len, cluster_answer_fn fn, void *ctx)
{
    return c->ask ? cluster_ask_send(c->ask, c->nc, subject, payload, len, fn, ctx) : -1;
}

/* Subscribes on the current connection (queue may be NULL), counted in
 * c->live until libnats says the subscription's handler is done for good. */
static natsStatus subscribe_raw(cluster_t *c, natsSubscription **ns, const char *subject, const char *queue)
{
    link_t *l = c->link;
    natsStatus s = queue ? natsConnection_QueueSubscribe(ns, c->nc, subject, queue, on_upstream_msg, l)
                         : natsConnection_Subscribe(ns, c->nc, subject, on_upstream_msg, l);
    if (s != NATS_OK)
        return s;
    pthread_mutex_lock(&c->lock);
    c->live++;
    pthread_mutex_unlock(&c->lock);
    if (natsSubscription_SetOnCompleteCB(*ns, on_sub_ended, l) != NATS_OK)
        on_sub_ended(l); /* closed already: not waited for */
    return NATS_OK;
}

/* Subscribes m on the current connection (subscribe_raw), with its key in
 * by_sid.  What m was subscribed to before stays the caller's. */
static natsStatus upstream_open(cluster_t *c, mirror_t *m)
{
    natsSubscription *ns = NULL;
    const char *subject = m->kind == UPSUB_CLIENT ? m->sub->subject : m->pattern;
    const char *queue = m->kind == UPSUB_CLIENT ? m->sub->queue : m->queue;
    natsStatus s = subscribe_raw(c, &ns, subject, queue);
    if (s != NATS_OK)
        return s;
    if (m->kind == UPSUB_CLIENT || m->kind == UPSUB_PULL || m->kind == UPSUB_KV)
        natsSubscription_SetPendingLimits(ns, CLUSTER_PENDING_MSGS, CLUSTER_PENDING_BYTES);
    sub_key_t key = {c->epoch, natsSubscription_GetID(ns)};
    if (dict_put(&c->by_sid, (const char *)&key, sizeof key, m) < 0) {
        natsSubscription_Destroy(ns);
        return NATS_NO_MEMORY;
    }
    m->ns = ns;
    m->key = key;
    return NATS_OK;
}

/* Takes m's keys out of by_sid, unsubscribes it (unsubscribe != 0: it
 * ends here; 0: its connection is going) and frees it.  NULL: nothing. */
static void mirror_free(cluster_t *c, mirror_t *m, int unsubscribe)
{
    if (!m)
        return;
    dict_remove(&c->by_sid, (const char *)&m->key, sizeof m->key);
    if (m->prev.epoch)
        dict_remove(&c->by_sid, (const char *)&m->prev, sizeof m->prev);
    if (m->ns && unsubscribe)
        natsSubscription_Unsubscribe(m->ns);
    if (m->ns)
        natsSubscription_Destroy(m->ns);
    free(m);
}

static void mirror_add(cluster_t *c, sub_t *sub)
{
    mirror_t *m = calloc(1, sizeof *m);
    natsStatus s = NATS_NO_MEMORY;
    if (!m)
        goto fail;
    m->kind = UPSUB_CLIENT;
    m->sub = sub;
    s = upstream_open(c, m);
    if (s != NATS_OK)
        goto fail;
    if (dict_put(&c->mirrors, (const char *)&sub, sizeof sub, m) < 0) {
        mirror_free(c, m, 1);
        m = NULL;
        s = NATS_NO_MEMORY;
        goto fail;
    }
    return;
fail:
    c->mirror_failures++;
    snprintf(c->last_error, sizeof c->last_error, "cannot subscribe upstream to %s: %s", sub->subject,
             natsStatus_GetText(s));
    log_error("cluster: %s (the subscriber here gets nothing from the cluster)", c->last_error);
    free(m);
}

static void on_interest(void *ctx, sub_t *sub, int added)
{
    cluster_t *c = ctx;
    if (!server_subject_travels(sub->subject, sub->subject_len))
        return;
    if (added) {
        if (!c->leaving) /* leaving: the subscription gets what is delivered here */
            mirror_add(c, sub);
        return;
    }
    mirror_free(c, dict_remove(&c->mirrors, (const char *)&sub, sizeof sub), 1);
}

/* ---- starting and stopping --------------------------------------------------- */

/* The nkey seed file's public key into pub, for libnats. */
static int nkey_public_of(const char *file, char *pub, size_t pubsz, char *err, size_t errsz)
{
    unsigned char seed[NKEY_KEY_LEN], raw[NKEY_KEY_LEN];
    char text[4096];
    size_t len = 0;
    int rc = -1;
    FILE *f = fopen(file, "r");
    if (f) {
        len = fread(text, 1, sizeof text - 1, f);
        fclose(f);
    }
    if (!f || nkey_seed_find(text, len, seed) < 0 || nkey_seed_public(seed, raw) < 0 ||
        nkey_public_encode(raw, pub, pubsz) < 0)
        snprintf(err, errsz, "cluster: nkey: no usable seed in %s", file);
    else
        rc = 0;
    memset(seed, 0, sizeof seed);
    memset(text, 0, sizeof text);
    return rc;
}

/* Credentials and TLS from cluster { }. */
static natsStatus set_credentials(natsOptions *o, const cluster_settings_t *cs, char *err, size_t errsz)
{
    natsStatus s = NATS_OK;
    char pub[128];
    if (cs->user[0])
        s = natsOptions_SetUserInfo(o, cs->user, cs->password);
    else if (cs->token[0])
        s = natsOptions_SetToken(o, cs->token);
    else if (cs->nkey[0]) {
        if (nkey_public_of(cs->nkey, pub, sizeof pub, err, errsz) < 0)
            return NATS_INVALID_ARG;
        s = natsOptions_SetNKeyFromSeed(o, pub, cs->nkey);
    }
    if (s == NATS_OK && cs->tls)
        s = natsOptions_SetSecure(o, true);
    if (s == NATS_OK && cs->tls_ca[0])
        s = natsOptions_LoadCATrustedCertificates(o, cs->tls_ca);
    if (s == NATS_OK && cs->tls_cert[0])
        s = natsOptions_LoadCertificatesChain(o, cs->tls_cert, cs->tls_key);
    if (s != NATS_OK && !err[0])
        snprintf(err, errsz, "cluster: credentials or TLS: %s", natsStatus_GetText(s));
    return s;
}

/* Fills l->opts for a connection with cs's settings and l as the
 * callbacks' closure.  retry != 0: the first connect goes on in the
 * background when no server answers (at start); 0: it fails at once
 * (a reload's new connection, which must not leave the node without one). */
static natsStatus set_options(cluster_t *c, link_t *l, const cluster_settings_t *cs, int retry, char *err,
                              size_t errsz)
{
    const char *urls[CLUSTER_UPSTREAM_MAX];
    char name[200];
    natsOptions *o = l->opts;
    natsStatus s;
    for (int i = 0; i < cs->nupstream; i++)
        urls[i] = cs->upstream[i];
    snprintf(name, sizeof name, "tide %s", cs->name[0] ? cs->name : "node");
    s = natsOptions_SetServers(o, urls, cs->nupstream);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, name);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, CLUSTER_RECONNECT_WAIT_MS);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(o, CLUSTER_PING_INTERVAL_MS);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(o, CLUSTER_PINGS_OUT);
    if (s == NATS_OK && retry)
        s = natsOptions_SetRetryOnFailedConnect(o, true, on_connected, l);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(o, on_disconnected, l);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(o, on_reconnected, l);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(o, on_closed, l);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(o, on_async_error, l);
    if (s == NATS_OK) /* a pool of threads, not one per subscription */
        s = natsOptions_UseGlobalMessageDelivery(o, true);
    /* Without it libnats' flusher thread waits a millisecond before it
     * asks the loop to write; with it the loop writes what a pass
     * published at the end of that pass. */
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(o, true);
    if (s == NATS_OK)
        s = natsOptions_SetEventLoop(o, server_base(c->n->srv), natsLibevent_Attach, natsLibevent_Read,
                                     natsLibevent_Write, natsLibevent_Detach);
    if (s != NATS_OK)
        snprintf(err, errsz, "cluster: %s", natsStatus_GetText(s));
    else
        s = set_credentials(o, cs, err, errsz);
    return s;
}

/* A new connection's link, with its options made from cs (not connected
 * yet), at the head of c->links; NULL with the reason in err. */
static link_t *link_new(cluster_t *c, const cluster_settings_t *cs, int retry, char *err, size_t errsz)
{
    link_t *l = calloc(1, sizeof *l);
    if (!l || natsOptions_Create(&l->opts) != NATS_OK) {
        snprintf(err, errsz, "cluster: out of memory");
        free(l);
        return NULL;
    }
    l->c = c;
    l->epoch = c->links ? c->links->epoch + 1 : 1;
    l->next = c->links;
    c->links = l;
    if (set_options(c, l, cs, retry, err, errsz) != NATS_OK)
        return NULL; /* stays in c->links, freed with c */
    return l;
}

/* Gives l's subscriptions and connection back to libnats (closing the
 * connection if it is still open). */
static void link_end(link_t *l)
{
    for (size_t i = 0; i < l->nleft; i++)
        natsSubscription_Destroy(l->left[i]);
    free(l->left);
    l->left = NULL;
    l->nleft = 0;
    if (l->nc) {
        natsConnection_Close(l->nc);
        natsConnection_Destroy(l->nc);
        l->nc = NULL;
    }
}

/* Why a subscription at start failed: most often libnats closed the
 * connection already (the servers refused the node's credentials). */
static void subscribe_failed(cluster_t *c, const char *subject, natsStatus s, char *err, size_t errsz)
{
    const char *last = NULL;
    if (natsConnection_IsClosed(c->nc)) {
        natsConnection_GetLastError(c->nc, &last);
        snprintf(err, errsz, "cluster: the upstream closed the connection: %s (refused credentials?)",
                 last && last[0] ? last : "no reason given");
    } else {
        snprintf(err, errsz, "cluster: cannot subscribe to %s: %s", subject, natsStatus_GetText(s));
    }
}

/* A new upstream subscription of the node's own; NULL with the reason in err. */
static mirror_t *inbox_open(cluster_t *c, enum upsub_kind kind, const char *pattern, const char *queue, char *err,
                            size_t errsz)
{
    mirror_t *m = calloc(1, sizeof *m);
    natsStatus s = NATS_NO_MEMORY;
    if (m) {
        m->kind = kind;
        m->queue = queue;
        snprintf(m->pattern, sizeof m->pattern, "%s", pattern);
        s = upstream_open(c, m);
    }
    if (s == NATS_OK)
        return m;
    subscribe_failed(c, pattern, s, err, errsz);
    free(m);
    return NULL;
}

/* The jetstream-backed streams and their consumers: their answers'
 * inboxes, and the first questions. */
static int start_streams(cluster_t *c, char *err, size_t errsz)
{
    char inbox[128], pattern[140];
    snprintf(inbox, sizeof inbox, "_INBOX.tide-js.%s", server_id(c->n->srv));
    snprintf(pattern, sizeof pattern, "%s.*", inbox);
    if (!(c->js_in = inbox_open(c, UPSUB_JS, pattern, NULL, err, errsz)))
        return -1;
    if (!(c->js = cluster_js_new(c->nc, c->n->scripts, inbox))) {
        snprintf(err, errsz, "cluster: out of memory");
        return -1;
    }
    snprintf(inbox, sizeof inbox, "_INBOX.tide-pull.%s", server_id(c->n->srv));
    snprintf(pattern, sizeof pattern, "%s.>", inbox);
    if (!(c->pull_in = inbox_open(c, UPSUB_PULL, pattern, NULL, err, errsz)))
        return -1;
    if (!(c->pull = cluster_pull_new(c->nc, server_base(c->n->srv), c->n->scripts, c->js, inbox))) {
        snprintf(err, errsz, "cluster: out of memory");
        return -1;
    }
    return 0;
}

/* cluster_deploy's subscriptions to its watch's subject. */
static int subscribe_watch(void *ctx, const char *subject, natsSubscription **ns, int64_t *sid)
{
    cluster_t *c = ctx;
    if (subscribe_raw(c, ns, subject, NULL) != NATS_OK)
        return -1;
    *sid = natsSubscription_GetID(*ns);
    return 0;
}

/* Rules deployed to the cluster: the inbox of their bucket, and the
 * deploy requests, taken by one node of the queue group each. */
static int start_deploy(cluster_t *c, char *err, size_t errsz)
{
    char inbox[128], pattern[140], watch[128];
    snprintf(inbox, sizeof inbox, "_INBOX.tide-deploy.%s", server_id(c->n->srv));
    snprintf(pattern, sizeof pattern, "%s.>", inbox);
    snprintf(watch, sizeof watch, "_INBOX.tide-rules.%s", server_id(c->n->srv));
    if (!(c->deploy = cluster_deploy_new(c->nc, c->n, inbox, watch, subscribe_watch, c))) {
        snprintf(err, errsz, "cluster: cannot set up the deployed rules");
        return -1;
    }
    if (!(c->deploy_in = inbox_open(c, UPSUB_DEPLOY, pattern, NULL, err, errsz)))
        return -1;
    c->deploy_req = inbox_open(c, UPSUB_DEPLOY_REQ, CLUSTER_DEPLOY_SUBJECT, CLUSTER_DEPLOY_QUEUE, err, errsz);
    return c->deploy_req ? 0 : -1;
}

/* cluster_kv's subscriptions to its watches' deliver subjects. */
static natsStatus subscribe_bucket_watch(void *ctx, natsSubscription **ns, const char *subject)
{
    cluster_t *c = ctx;
    natsStatus s = subscribe_raw(c, ns, subject, NULL);
    if (s == NATS_OK)
        natsSubscription_SetPendingLimits(*ns, CLUSTER_PENDING_MSGS, CLUSTER_PENDING_BYTES);
    return s;
}

static void kv_settled(void *arg)
{
    cluster_t *c = arg;
    cluster_pull_kv_settled(c->pull);
}

/* The scripts' KV buckets: their inbox, and tide.kv / tide.kv.bucket
 * pointed at them (the rules' state is built again for that). */
static int start_buckets(cluster_t *c, char *err, size_t errsz)
{
    char inbox[128], pattern[140];
    script_kv_remote_t ops;
    snprintf(inbox, sizeof inbox, "_INBOX.tide-kv.%s", server_id(c->n->srv));
    snprintf(pattern, sizeof pattern, "%s.>", inbox);
    if (!(c->kv_in = inbox_open(c, UPSUB_KV, pattern, NULL, err, errsz)))
        return -1;
    if (!(c->kv = cluster_kv_new(c->nc, server_base(c->n->srv), inbox, subscribe_bucket_watch, c))) {
        snprintf(err, errsz, "cluster: out of memory");
        return -1;
    }
    cluster_kv_on_settled(c->kv, kv_settled, c);
    cluster_pull_set_kv(c->pull, c->kv);
    cluster_kv_remote(c->kv, &ops);
    return script_host_set_kv_remote(c->n->scripts, &ops, err, errsz);
}

/* The questions asked for clients: their inbox. */
static int start_asks(cluster_t *c, char *err, size_t errsz)
{
    char inbox[128], pattern[140];
    snprintf(inbox, sizeof inbox, "_INBOX.tide-ask.%s", server_id(c->n->srv));
    snprintf(pattern, sizeof pattern, "%s.*", inbox);
    if (!(c->ask = cluster_ask_new(inbox))) {
        snprintf(err, errsz, "cluster: out of memory");
        return -1;
    }
    c->ask_in = inbox_open(c, UPSUB_ASK, pattern, NULL, err, errsz);
    return c->ask_in ? 0 : -1;
}

cluster_t *cluster_start(node_t *n, char *err, size_t errsz)
{
    const cluster_settings_t *cs = script_cluster_settings(n->scripts);
    server_cluster_hooks_t hooks = {on_egress, on_interest, NULL};
    cluster_t *c = calloc(1, sizeof *c);
    natsStatus s;
    err[0] = '\0';
    if (!c || !cs)
        goto fail;
    c->n = n;
    dict_init(&c->mirrors);
    dict_init(&c->answered);
    dict_init(&c->by_sid);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->ended, NULL);
    c->wake = event_new(server_base(n->srv), -1, 0, on_wake, c);
    c->tick = event_new(server_base(n->srv), -1, EV_PERSIST, on_tick, c);
    c->leave_timer = evtimer_new(server_base(n->srv), on_leave_timer, c);
    struct timeval second = {1, 0};
    if (!c->wake || !c->tick || !c->leave_timer || event_add(c->tick, &second) < 0)
        goto fail;
    c->started = *cs;
    c->generation = 1;
    if (!(c->link = link_new(c, cs, 1, err, errsz)))
        goto fail;
    c->epoch = c->link->epoch;
    snprintf(c->url, sizeof c->url, "%s", cs->upstream[0]);
    s = natsConnection_Connect(&c->link->nc, c->link->opts);
    c->nc = c->link->nc;
    if (s == NATS_NOT_YET_CONNECTED) {
        snprintf(c->last_error, sizeof c->last_error, "cannot reach the upstream yet; retrying");
        log_warn("cluster: cannot reach the upstream (%s, ...) yet; retrying in the background", cs->upstream[0]);
    } else if (s != NATS_OK) {
        snprintf(err, errsz, "cluster: cannot connect to the upstream: %s", natsStatus_GetText(s));
        goto fail;
    } else {
        on_conn_event(c->link, ITEM_CONNECTED);
    }
    if (!(c->status = inbox_open(c, UPSUB_STATUS, CLUSTER_STATUS_SUBJECT, NULL, err, errsz)))
        goto fail;
    snprintf(c->answer_prefix, sizeof c->answer_prefix, CLUSTER_ANSWER_PREFIX "%s.", server_id(n->srv));
    char answers[160];
    snprintf(answers, sizeof answers, "%s>", c->answer_prefix);
    if (!(c->answers = server_subscribe_internal(n->srv, answers, answer_back, c)) ||
        node_inbox_open(c, err, errsz) < 0)
        goto fail;
    if (start_streams(c, err, errsz) < 0 || start_deploy(c, err, errsz) < 0 || start_buckets(c, err, errsz) < 0 ||
        start_asks(c, err, errsz) < 0)
        goto fail;
    hooks.ctx = c;
    server_set_cluster(n->srv, &hooks);
    return c;
fail:
    if (!err[0])
        snprintf(err, errsz, "cluster: out of memory");
    cluster_free(c);
    return NULL;
}

/* ---- a reload that changes the upstream, credentials or tls ---------------------- */

/* Moves m to the current connection; what the previous one still hands
 * over for it is delivered too (its previous key stays in by_sid), and
 * its subscription there is left to that connection's drain, in l. */
static void mirror_move(cluster_t *c, mirror_t *m, link_t *l)
{
    natsSubscription *old = m->ns;
    sub_key_t was = m->key;
    natsStatus s;
    if (m->prev.epoch)
        dict_remove(&c->by_sid, (const char *)&m->prev, sizeof m->prev);
    m->prev.epoch = 0;
    if ((s = upstream_open(c, m)) == NATS_OK) {
        m->prev = was;
    } else {
        m->ns = NULL;
        c->mirror_failures++;
        snprintf(c->last_error, sizeof c->last_error, "cannot subscribe upstream to %s on the new connection: %s",
                 m->kind == UPSUB_CLIENT ? m->sub->subject : m->pattern, natsStatus_GetText(s));
        log_error("cluster: %s", c->last_error);
    }
    if (old)
        l->left[l->nleft++] = old;
}

/* Moves every upstream subscription to the current connection; l is the
 * connection left.  -1 when out of memory (nothing moved). */
static int move_all(cluster_t *c, link_t *l)
{
    mirror_t *own[] = {c->status, c->js_in,  c->pull_in, c->deploy_in, c->deploy_req,
                       c->kv_in,  c->node_in, c->ask_in,  c->reply_in};
    size_t n = c->mirrors.count + sizeof own / sizeof own[0];
    if (!(l->left = calloc(n, sizeof *l->left)))
        return -1;
    for (size_t i = 0; i < c->mirrors.cap; i++)
        if (c->mirrors.slots[i].key)
            mirror_move(c, c->mirrors.slots[i].val, l);
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (own[i])
            mirror_move(c, own[i], l);
    return 0;
}

/*
 * Connects again with cs's servers, credentials and tls, moves
 * every upstream subscription there, hands the JetStream machinery the
 * new connection and drains the old one: what it had received is still
 * delivered, what was published on it is sent, then it closes (its
 * ITEM_CLOSED frees it).  When the new connection cannot be made (refused
 * credentials, no server reachable) the node keeps the old one.  The loop
 * waits for the new connection's handshake.
 */
static void switch_connection(cluster_t *c, const cluster_settings_t *cs)
{
    char err[160] = ""; /* fits in last_error with the words around it */
    link_t *old = c->link, *l = link_new(c, cs, 0, err, sizeof err);
    natsStatus s = NATS_NO_MEMORY;
    if (!l)
        goto fail;
    if ((s = natsConnection_Connect(&l->nc, l->opts)) != NATS_OK) {
        const char *last = nats_GetLastError(NULL), *at = last ? strstr(last, "): ") : NULL;
        if (last && last[0] == '(' && at) /* "(conn.c:1905): Authorization Violation" */
            last = at + 3;
        snprintf(err, sizeof err, "%s", last && last[0] ? last : natsStatus_GetText(s));
        goto fail;
    }
    c->link = l;
    c->nc = l->nc;
    c->epoch = l->epoch;
    if (move_all(c, old) < 0) {
        c->link = old, c->nc = old->nc, c->epoch = old->epoch;
        link_end(l);
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    c->started = *cs;
    cluster_js_set_connection(c->js, c->nc);
    cluster_pull_set_connection(c->pull, c->nc);
    cluster_deploy_set_connection(c->deploy, c->nc); /* its watch moves at ITEM_CONNECTED */
    cluster_kv_set_connection(c->kv, c->nc);         /* so do the buckets' watches */
    if (natsConnection_DrainTimeout(old->nc, CLUSTER_DRAIN_TIMEOUT_MS) != NATS_OK)
        link_end(old); /* reconnecting: what waits in its buffer goes with it */
    log_info("cluster: connected again with the reloaded upstream, credentials or tls; the previous connection "
             "drains");
    on_conn_event(l, ITEM_CONNECTED);
    return;
fail:
    snprintf(c->last_error, sizeof c->last_error,
             "the reloaded upstream, credentials or tls do not connect (%s); the node keeps its connection", err);
    log_error("cluster: %s", c->last_error);
}

/* ---- a reload that removes cluster { } ------------------------------------------- */

/* The end of the grace: the connection drains (what it received is still
 * delivered, what was published on it is sent) and closes; its
 * ITEM_CLOSED makes the cluster left (leave_state). */
static void on_leave_timer(evutil_socket_t fd, short what, void *arg)
{
    cluster_t *c = arg;
    (void)fd;
    (void)what;
    /* The queue group's deploy requests go to the other nodes from now on. */
    mirror_free(c, c->deploy_req, 1);
    c->deploy_req = NULL;
    cluster_deploy_unsubscribe(c->deploy);
    if (natsConnection_DrainTimeout(c->nc, CLUSTER_DRAIN_TIMEOUT_MS) == NATS_OK) {
        log_info("cluster: leaving the cluster: the upstream connection drains");
        return;
    }
    /* Reconnecting (or closed): nothing can be sent; what waits in the
     * reconnect buffer goes with the connection, and the log says so. */
    int buffered = natsConnection_Buffered(c->nc);
    if (buffered > 0)
        log_warn("cluster: leaving the cluster while the upstream is unreachable: %d bytes of publishes waiting in "
                 "the reconnect buffer are dropped",
                 buffered);
    c->left = 1;
    log_info("cluster: left the cluster");
}

/* A connection event of the current connection while leaving. */
static void leave_state(cluster_t *c, enum item_kind kind)
{
    if (kind == ITEM_DISCONNECTED || kind == ITEM_CLOSED)
        c->connected = 0;
    else if (kind == ITEM_CONNECTED || kind == ITEM_RECONNECTED)
        c->connected = 1;
    if (kind == ITEM_CLOSED && !c->left) {
        c->left = 1;
        log_info("cluster: left the cluster: the upstream connection has drained and closed");
    }
}

void cluster_leave(cluster_t *c)
{
    server_cluster_hooks_t hooks = {NULL, on_interest, c};
    struct timeval grace = {CLUSTER_LEAVE_GRACE_MS / 1000, (CLUSTER_LEAVE_GRACE_MS % 1000) * 1000};
    if (c->leaving)
        return;
    c->leaving = 1;
    /* Egress off: what clients here publish is delivered here.  The
     * interest hook stays, so that a subscription that goes takes its
     * mirror with it while the mirrors still deliver. */
    server_set_cluster(c->n->srv, &hooks);
    cluster_pull_pause(c->pull);
    snprintf(c->last_error, sizeof c->last_error,
             "leaving the cluster (the reloaded rules have no cluster { }): the upstream connection drains");
    log_info("cluster: the reloaded rules have no cluster { }: the node leaves the cluster (its clients' messages "
             "are delivered here from now on; answers to what it sent upstream are taken for %d ms, then the "
             "connection drains)",
             CLUSTER_LEAVE_GRACE_MS);
    if (event_add(c->leave_timer, &grace) < 0)
        on_leave_timer(-1, 0, c);
}

int cluster_left(const cluster_t *c)
{
    return c->left;
}

/* ---- stopping ---------------------------------------------------------------- */

/* Waits up to secs seconds for c->live to drop to 0; -1 when it did not. */
static int wait_subscriptions(cluster_t *c, int secs)
{
    struct timespec until;
    int rc = 0;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += secs;
    pthread_mutex_lock(&c->lock);
    while (c->live > 0 && rc == 0)
        rc = pthread_cond_timedwait(&c->ended, &c->lock, &until);
    rc = c->live > 0 ? -1 : 0;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* Frees what the queue holds, messages included. */
static void queue_clear(cluster_t *c)
{
    item_t *it, *next;
    pthread_mutex_lock(&c->lock);
    it = c->head;
    c->head = c->tail = NULL;
    pthread_mutex_unlock(&c->lock);
    for (; it; it = next) {
        next = it->next;
        natsMsg_Destroy(it->msg);
        free(it);
    }
}

static void mirror_release(void *p)
{
    mirror_t *m = p;
    if (m->ns)
        natsSubscription_Destroy(m->ns);
    free(m);
}

void cluster_free(cluster_t *c)
{
    link_t *l, *next;
    if (!c)
        return;
    server_set_cluster(c->n->srv, NULL);
    cluster_ask_free(c->ask); /* the askers answer their clients from what they have */
    c->ask = NULL;
    if (c->answers)
        server_unsubscribe_internal(c->n->srv, c->answers);
    if (c->kv)
        script_host_set_kv_remote(c->n->scripts, NULL, NULL, 0);
    dict_clear(&c->by_sid, NULL);
    dict_clear(&c->mirrors, mirror_release);
    dict_clear(&c->answered, NULL);
    mirror_t *own[] = {c->status, c->js_in,  c->pull_in, c->deploy_in, c->deploy_req,
                       c->kv_in,  c->node_in, c->ask_in,  c->reply_in};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (own[i])
            mirror_release(own[i]);
    cluster_deploy_unsubscribe(c->deploy);
    cluster_kv_unsubscribe(c->kv);
    for (l = c->links; l; l = l->next)
        link_end(l);
    /* Messages go back to libnats while it still runs: a natsMsg_Destroy
     * after nats_CloseAndWait uses the library's freed state, and one its
     * own delivery threads make (the end marker of a closed subscription)
     * after its collector thread ended is never freed.  So wait until
     * every subscription's handler is done (the end markers are then
     * collected) and give back the queued messages before closing. */
    if (wait_subscriptions(c, 2) < 0)
        log_warn("cluster: libnats' subscriptions did not end within 2s");
    queue_clear(c);
    /* libnats' threads may still hold c as their closure: wait for them. */
    if (nats_CloseAndWait(2000) != NATS_OK)
        log_warn("cluster: libnats' threads did not end within 2s");
    for (l = c->links; l; l = next) {
        next = l->next;
        natsOptions_Destroy(l->opts);
        free(l);
    }
    cluster_pull_free(c->pull);
    cluster_js_free(c->js);
    cluster_deploy_free(c->deploy);
    cluster_kv_free(c->kv);
    queue_clear(c); /* what the last connection events added: no messages */
    if (c->wake)
        event_free(c->wake);
    if (c->tick)
        event_free(c->tick);
    if (c->leave_timer)
        event_free(c->leave_timer);
    pthread_cond_destroy(&c->ended);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- status ------------------------------------------------------------------- */

int cluster_ready(cluster_t *c, char *why, size_t n)
{
    if (c->leaving) {
        snprintf(why, n, "%s", c->last_error);
        return 0;
    }
    return cluster_connected(c, why, n) && cluster_js_ready(c->js, why, n) &&
           cluster_deploy_ready(c->deploy, why, n);
}

int cluster_connected(cluster_t *c, char *why, size_t n)
{
    const char *last = NULL;
    natsConnStatus st = c->nc ? natsConnection_Status(c->nc) : NATS_CONN_STATUS_CLOSED;
    if (st == NATS_CONN_STATUS_CONNECTED)
        return 1;
    if (st == NATS_CONN_STATUS_CLOSED && c->last_error[0]) {
        snprintf(why, n, "cluster upstream not connected: %s", c->last_error);
        return 0;
    }
    if (c->nc)
        natsConnection_GetLastError(c->nc, &last);
    snprintf(why, n, "cluster upstream not connected (%s, last at %s)%s%s",
             st == NATS_CONN_STATUS_CLOSED ? "closed" : "reconnecting", c->url, last && last[0] ? ": " : "",
             last && last[0] ? last : "");
    return 0;
}

static void status_name(cluster_t *c, char *out, size_t n)
{
    const cluster_settings_t *cs = script_cluster_settings(c->n->scripts);
    if (!cs) /* leaving the cluster: the name it had */
        cs = &c->started;
    if (cs->name[0])
        snprintf(out, n, "%s", cs->name);
    else if (gethostname(out, n) != 0)
        snprintf(out, n, "%s", server_id(c->n->srv));
    out[n - 1] = '\0';
}

cJSON *cluster_status_object(cluster_t *c)
{
    char name[256], addr[300], why[512];
    const server_opts_t *so = server_get_opts(c->n->srv);
    script_stats_t st;
    cJSON *o = cJSON_CreateObject(), *rules;
    if (!o || !(rules = cJSON_AddObjectToObject(o, "rules"))) {
        cJSON_Delete(o);
        return NULL;
    }
    status_name(c, name, sizeof name);
    snprintf(addr, sizeof addr, "%s:%d", so->host, so->port);
    int up = cluster_connected(c, why, sizeof why);
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "server_id", server_id(c->n->srv));
    cJSON_AddStringToObject(o, "address", addr);
    cJSON_AddStringToObject(o, "upstream", c->url);
    cJSON_AddBoolToObject(o, "connected", up);
    cJSON_AddBoolToObject(o, "leaving", c->leaving);
    memset(&st, 0, sizeof st);
    if (c->n->scripts)
        script_get_stats(c->n->scripts, &st);
    json_add_uint(rules, "revision", st.generation);
    cJSON_AddStringToObject(rules, "state", st.last_reload[0] ? st.last_reload : "none");
    json_add_uint(o, "connections", server_connections(c->n->srv));
    cJSON_AddNumberToObject(o, "events_per_s", c->events_per_s);
    json_add_uint(o, "sent", c->sent);
    json_add_uint(o, "received", c->received);
    json_add_uint(o, "refused", c->refused);
    json_add_uint(o, "disconnects", c->disconnects);
    json_add_uint(o, "reconnects", c->reconnects);
    cJSON_AddStringToObject(o, "last_error", c->last_error);
    cluster_js_status(c->js, o);
    cluster_pull_status(c->pull, o);
    cluster_deploy_status(c->deploy, o);
    cluster_kv_status(c->kv, o);
    return o;
}
