/* jsapi_cluster.c - the JetStream API in cluster mode: what is not about
 * a local stream is the cluster's (docs/cluster.md, "The JetStream API on
 * a node"); see jsapi.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "dlq.h"
#include "jsapi.h"
#include "jsapi_internal.h"
#include "log.h"

#define API_PREFIX "$JS.API."

struct jsapi_cluster {
    node_t *n;
    sub_t *api_sub; /* $JS.API.> when the node has no local JetStream API (n->jsapi NULL) */
    sub_t *ack_sub; /* $JS.ACK.>: a client's acks for the cluster's consumers */
    sub_t *fc_sub;  /* $JS.FC.>: and its answers to their flow control */
    sub_t *kv_sub;  /* $KV.>: a client's KV writes into the cluster's buckets */
    sub_t *obj_sub; /* $O.>: and its object store writes */
};

/* The requests that name a stream: its name follows. */
static const char *const named[] = {
    "STREAM.CREATE.",           "STREAM.UPDATE.",          "STREAM.INFO.",
    "STREAM.DELETE.",           "STREAM.PURGE.",           "STREAM.MSG.GET.",
    "STREAM.MSG.DELETE.",       "STREAM.SNAPSHOT.",        "STREAM.RESTORE.",
    "STREAM.LEADER.STEPDOWN.",  "STREAM.PEER.REMOVE.",     "DIRECT.GET.",
    "CONSUMER.DURABLE.CREATE.", "CONSUMER.MSG.NEXT.",      "CONSUMER.LEADER.STEPDOWN.",
    "CONSUMER.CREATE.",         "CONSUMER.INFO.",          "CONSUMER.DELETE.",
    "CONSUMER.NAMES.",          "CONSUMER.LIST.",          "CONSUMER.PAUSE.",
    "CONSUMER.UNPIN.",          "CONSUMER.RESET.",         NULL};

/* The stream token of s (len bytes) into out: the bytes up to the next
 * '.'.  0, or -1 when it is empty or does not fit. */
static int token(const char *s, size_t len, char *out, size_t n)
{
    const char *dot = memchr(s, '.', len);
    size_t tl = dot ? (size_t)(dot - s) : len;
    if (!tl || tl >= n)
        return -1;
    memcpy(out, s, tl);
    out[tl] = '\0';
    return 0;
}

/* True when the node keeps a stream called name itself. */
static int is_local(node_t *n, const char *name)
{
    return n->streams && streams_stream_info(n->streams, name, -1, NULL) != NULL;
}

/* ---- answers merged from the cluster's and the node's ------------------------ */

enum merge_kind { MERGE_ACCOUNT, MERGE_NAMES, MERGE_LIST };

/* A question to the cluster on a client's behalf: its request, copied. */
typedef struct merge {
    node_t *n;
    enum merge_kind kind;
    uint64_t offset; /* the client's */
    int nlocal;      /* local streams that matched when asked */
    proto_msg_t req; /* subject, reply and payload point into block */
    char *block;
} merge_t;

static void merge_free(merge_t *g)
{
    free(g->block);
    free(g);
}

/* Adds the local streams from g->offset on (names or, for a list, their
 * infos) to arr; names holds the n local names that match the request's
 * filter, sorted. */
static void add_local(merge_t *g, cJSON *arr, char **names, int n)
{
    for (int i = (int)(g->offset < (uint64_t)n ? g->offset : (uint64_t)n); i < n; i++) {
        if (g->kind == MERGE_NAMES) {
            cJSON_AddItemToArray(arr, cJSON_CreateString(names[i]));
            continue;
        }
        cJSON *si = cJSON_CreateObject();
        if (si && jsapi_add_info(g->n->jsapi, si, names[i]) == 0)
            cJSON_AddItemToArray(arr, si);
        else
            cJSON_Delete(si);
    }
}

/* o, the cluster's NAMES or LIST answer, made the client's: the local
 * streams first, then the cluster's page without the names the node keeps
 * itself (a local stream of the same name hides the cluster's). */
static void merge_names(merge_t *g, cJSON *o, const char *filter)
{
    int list = g->kind == MERGE_LIST, n = 0, hidden = 0;
    char **names = jsapi_sorted_names(g->n->jsapi, filter, &n);
    cJSON *theirs = cJSON_DetachItemFromObjectCaseSensitive(o, "streams"), *arr = cJSON_CreateArray(), *it, *next;
    const cJSON *total = cJSON_GetObjectItemCaseSensitive(o, "total");
    if (!arr)
        goto fail;
    add_local(g, arr, names, n);
    for (it = theirs ? theirs->child : NULL; it; it = next) {
        next = it->next;
        const char *name = list ? jsapi_get_str(cJSON_GetObjectItemCaseSensitive(it, "config"), "name", NULL)
                                : cJSON_GetStringValue(it);
        if (name && is_local(g->n, name)) {
            hidden++;
            continue;
        }
        cJSON_AddItemToArray(arr, cJSON_DetachItemViaPointer(theirs, it));
    }
    double t = (cJSON_IsNumber(total) ? total->valuedouble : 0) + n - hidden;
    cJSON_DeleteItemFromObjectCaseSensitive(o, "total");
    cJSON_DeleteItemFromObjectCaseSensitive(o, "offset");
    cJSON_AddNumberToObject(o, "total", t);
    cJSON_AddNumberToObject(o, "offset", (double)g->offset);
    /* nats-server says null for no names, [] for no streams in a list. */
    if (!list && !cJSON_GetArraySize(arr)) {
        cJSON_Delete(arr);
        cJSON_AddNullToObject(o, "streams");
    } else {
        cJSON_AddItemToObject(o, "streams", arr);
    }
fail:
    cJSON_Delete(theirs);
    jsapi_names_free(names, n);
}

/* Adds n to o's number member key. */
static void add_to(cJSON *o, const char *key, double n)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsNumber(v))
        cJSON_SetNumberValue(v, v->valuedouble + n);
}

/* The cluster's answer m as a JSON object (caller deletes), or NULL when
 * it has none to give (no answer, a status such as 503 for no JetStream,
 * an error, not JSON). */
static cJSON *cluster_answer(natsMsg *m)
{
    const char *status = NULL;
    if (!m || (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status))
        return NULL;
    cJSON *o = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    if (!cJSON_IsObject(o) || cJSON_GetObjectItemCaseSensitive(o, "error")) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* cluster_answer_fn: the cluster's answer merged with the node's local
 * streams, to the client; without one, the local answer alone. */
static void on_merge_answer(void *ctx, natsMsg *answer)
{
    merge_t *g = ctx;
    cJSON *o = g->n->jsapi ? cluster_answer(answer) : NULL;
    char filter[256], *text = NULL;
    uint64_t offset, bytes, consumers;
    api_err_t e;
    if (!o) {
        if (g->n->jsapi)
            jsapi_request_local(g->n->jsapi, &g->req);
        goto fail;
    }
    if (g->kind == MERGE_ACCOUNT) {
        int n = jsapi_account_usage(g->n->jsapi, &bytes, &consumers);
        add_to(o, "streams", n);
        add_to(o, "consumers", (double)consumers);
        add_to(o, "storage", (double)bytes);
    } else {
        if (jsapi_paged_request(&g->req, &offset, filter, sizeof filter, &e) < 0)
            filter[0] = '\0';
        merge_names(g, o, filter);
    }
    if ((text = cJSON_PrintUnformatted(o)))
        server_reply(g->n->srv, &g->req, text, strlen(text));
fail:
    cJSON_free(text);
    cJSON_Delete(o);
    merge_free(g);
}

/* A copy of m's subject, reply and payload in g. */
static int copy_request(merge_t *g, const proto_msg_t *m)
{
    size_t need = m->subject_len + m->reply_len + m->payload_len + 3;
    char *p = g->block = malloc(need);
    if (!p)
        return -1;
    g->req.subject = memcpy(p, m->subject, m->subject_len);
    g->req.subject_len = m->subject_len;
    p[m->subject_len] = '\0';
    p += m->subject_len + 1;
    g->req.reply = memcpy(p, m->reply, m->reply_len);
    g->req.reply_len = m->reply_len;
    p[m->reply_len] = '\0';
    p += m->reply_len + 1;
    g->req.payload = memcpy(p, m->payload, m->payload_len);
    g->req.payload_len = m->payload_len;
    p[m->payload_len] = '\0';
    return 0;
}

/* Asks the cluster m (INFO, STREAM.NAMES or STREAM.LIST) and answers the
 * client once it has answered.  The cluster is asked for the page that
 * follows the local streams: offset less the local ones.  1 when asked,
 * 0 when the local answer must do (a bad request, out of memory). */
static int merge_ask(node_t *n, const proto_msg_t *m, enum merge_kind kind)
{
    merge_t *g = calloc(1, sizeof *g);
    cJSON *q = NULL;
    char filter[256], *body = NULL;
    api_err_t e;
    if (!g || copy_request(g, m) < 0)
        goto fail;
    g->n = n;
    g->kind = kind;
    if (kind != MERGE_ACCOUNT) {
        if (jsapi_paged_request(m, &g->offset, filter, sizeof filter, &e) < 0)
            goto fail; /* not JSON: answered here */
        char **names = jsapi_sorted_names(n->jsapi, filter, &g->nlocal);
        jsapi_names_free(names, g->nlocal);
        uint64_t theirs = g->offset > (uint64_t)g->nlocal ? g->offset - (uint64_t)g->nlocal : 0;
        if (!(q = cJSON_CreateObject()) || !cJSON_AddNumberToObject(q, "offset", (double)theirs) ||
            (filter[0] && !cJSON_AddStringToObject(q, "subject", filter)) || !(body = cJSON_PrintUnformatted(q)))
            goto fail;
    }
    char subject[64];
    snprintf(subject, sizeof subject, "%.*s", (int)m->subject_len, m->subject);
    if (cluster_ask(n->cluster, subject, body ? body : "", body ? strlen(body) : 0, on_merge_answer, g) < 0)
        goto fail;
    cJSON_Delete(q);
    cJSON_free(body);
    return 1;
fail:
    cJSON_Delete(q);
    cJSON_free(body);
    if (g)
        merge_free(g);
    return 0;
}

/* ---- sent on as they are ------------------------------------------------------ */

/* m to the cluster; a refusal answered with JetStream's "temporarily
 * unavailable" and the reason.  1. */
static int forward(node_t *n, const proto_msg_t *m)
{
    char err[320], *text = NULL;
    cJSON *o = NULL, *e;
    if (cluster_forward(n->cluster, m, err, sizeof err) == 0 || !m->reply)
        return 1;
    if (!(o = cJSON_CreateObject()) || !(e = cJSON_AddObjectToObject(o, "error")))
        goto fail;
    cJSON_AddStringToObject(o, "type", "io.nats.jetstream.api.v1.error_response");
    cJSON_AddNumberToObject(e, "code", 503);
    cJSON_AddNumberToObject(e, "err_code", 10008); /* JetStream temporarily unavailable */
    cJSON_AddStringToObject(e, "description", err);
    if ((text = cJSON_PrintUnformatted(o)))
        server_reply(n->srv, m, text, strlen(text));
fail:
    cJSON_free(text);
    cJSON_Delete(o);
    return 1;
}

int jsapi_cluster_request(node_t *n, jsapi_t *api, const proto_msg_t *m)
{
    size_t pre = sizeof API_PREFIX - 1, oplen = m->subject_len - pre;
    const char *op = m->subject + pre;
    char name[256];
    /* An answer to a '$' subject would not come back through the cluster
     * (and must not land on a node's admin subjects there): kept here. */
    if (!n->cluster || (m->reply && m->reply_len && m->reply[0] == '$'))
        return 0;
#define IS(verb) (oplen == sizeof verb - 1 && !memcmp(op, verb, sizeof verb - 1))
    if (api && IS("INFO"))
        return merge_ask(n, m, MERGE_ACCOUNT);
    if (api && IS("STREAM.NAMES"))
        return merge_ask(n, m, MERGE_NAMES);
    if (api && IS("STREAM.LIST"))
        return merge_ask(n, m, MERGE_LIST);
#undef IS
    for (int i = 0; named[i]; i++) {
        size_t vl = strlen(named[i]);
        if (oplen > vl && !memcmp(op, named[i], vl))
            return token(op + vl, oplen - vl, name, sizeof name) == 0 && is_local(n, name) ? 0 : forward(n, m);
    }
    return forward(n, m);
}

/* ---- acks and flow control ------------------------------------------------------ */

/* A client's $JS.ACK.<stream>... ($JS.ACK.<domain>.<hash>.<stream>... from
 * 2.10) or $JS.FC.<stream>...: to the cluster when the stream is not local. */
static void on_ack(void *ctx, const proto_msg_t *m)
{
    struct jsapi_cluster *f = ctx;
    size_t skip = 7, dots = 0; /* "$JS.ACK" / "$JS.FC." */
    char name[256];
    int fc = m->subject_len > 7 && !memcmp(m->subject, "$JS.FC.", 7);
    if (!fc)
        skip = 8;
    for (size_t i = skip; i < m->subject_len; i++)
        dots += m->subject[i] == '.';
    const char *s = m->subject + skip;
    size_t len = m->subject_len - skip;
    if (!fc && dots >= 8) { /* the form with domain and account hash: the stream is the third token */
        for (int k = 0; k < 2; k++) {
            const char *dot = memchr(s, '.', len);
            len -= (size_t)(dot - s) + 1;
            s = dot + 1;
        }
    }
    if (token(s, len, name, sizeof name) < 0 || is_local(f->n, name) ||
        (m->reply && m->reply_len && m->reply[0] == '$'))
        return;
    forward(f->n, m);
}

/* A client's publish to $KV.<bucket>.<key> (a KV put or delete) or
 * $O.<bucket>...(an object's chunk or meta): to the cluster when no local
 * stream captures it (a local bucket's does). */
static void on_kv(void *ctx, const proto_msg_t *m)
{
    struct jsapi_cluster *f = ctx;
    if (dlq_capturing_stream(f->n->streams, m->subject, m->subject_len) ||
        (m->reply && m->reply_len && m->reply[0] == '$'))
        return;
    forward(f->n, m);
}

static void on_api(void *ctx, const proto_msg_t *m)
{
    struct jsapi_cluster *f = ctx;
    jsapi_cluster_request(f->n, NULL, m);
}

jsapi_cluster_t *jsapi_cluster_start(node_t *n)
{
    struct jsapi_cluster *f = calloc(1, sizeof *f);
    if (!f)
        goto fail;
    f->n = n;
    /* Responders: what they send on is answered (by the cluster), so the
     * client must not be told there is nobody. */
    if (!(f->ack_sub = server_subscribe_internal(n->srv, "$JS.ACK.>", on_ack, f)) ||
        !(f->fc_sub = server_subscribe_internal(n->srv, "$JS.FC.>", on_ack, f)) ||
        !(f->kv_sub = server_subscribe_internal(n->srv, "$KV.>", on_kv, f)) ||
        !(f->obj_sub = server_subscribe_internal(n->srv, "$O.>", on_kv, f)))
        goto fail;
    f->ack_sub->flags |= SUB_RESPONDER;
    f->fc_sub->flags |= SUB_RESPONDER;
    f->kv_sub->flags |= SUB_RESPONDER;
    f->obj_sub->flags |= SUB_RESPONDER;
    if (!n->jsapi) {
        if (!(f->api_sub = server_subscribe_internal(n->srv, API_PREFIX ">", on_api, f)))
            goto fail;
        f->api_sub->flags |= SUB_RESPONDER;
        server_set_info_jetstream(n->srv, 1); /* the API is answered: by the cluster */
    }
    return f;
fail:
    log_error("cluster: cannot set up the JetStream API's forwarding to the cluster");
    jsapi_cluster_free(f);
    return NULL;
}

void jsapi_cluster_free(jsapi_cluster_t *f)
{
    if (!f)
        return;
    sub_t *subs[] = {f->api_sub, f->ack_sub, f->fc_sub, f->kv_sub, f->obj_sub};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++)
        if (subs[i])
            server_unsubscribe_internal(f->n->srv, subs[i]);
    if (f->api_sub)
        server_set_info_jetstream(f->n->srv, 0);
    free(f);
}
