/*
 * http.c - the HTTP face on libevent's evhttp: CloudEvents ingestion,
 * Prometheus metrics, health, JSON views of the server, and a live tail as
 * Server-Sent Events.  Events posted here enter the same pipeline as NATS
 * publishes (server_publish); one that a stream captures carries a reply
 * subject of ours, and its request is answered when the PubAck comes.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/ssl.h>

#include "dlq.h"
#include "admin.h"
#include "cluster.h"
#include "auth.h"
#include "console.h"
#include "console_assets.h"
#include "http_auth.h"
#include "json_int.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "script.h"
#include "server.h"
#include "stream.h"
#include "subject.h"
#include "tls.h"
#include "util.h"

#define MAX_TAILS 64
#define MAX_BATCH 10000

/* An ingest request whose events a stream captures: answered once every
 * PubAck is in (they come to <inbox>.<id>.<event index>). */
typedef struct ack_wait {
    struct http *http;
    struct evhttp_request *req;
    uint64_t id;
    char prefix[96]; /* "<inbox>.<id>." */
    int batch;       /* answer {"accepted","acks"} rather than the one PubAck */
    int nevents;     /* events published */
    cJSON **acks;    /* per event: its PubAck (an error one wins), or NULL */
    int acap;
    int answers;
    int expected; /* -1 while publishing */
    uint64_t csent; /* cluster mode: cluster_inbox_sent when it began */
    double timeout; /* seconds it waits for them (http { ack_timeout }) */
    struct event *timer;
    struct ack_wait *next;
} ack_wait_t;

typedef struct tail {
    struct http *http;
    struct evhttp_request *req;
    sub_t *sub;
    int live;
    int checked;    /* auth was on when it started: its user's permissions hold */
    char user[256]; /* that user ("" for the token) */
} tail_t;

#define HTTP_MAX_HEADERS (16 * 1024)
/* Bytes a tail may have waiting for its client; past it the tail is cut,
 * as a NATS client past max_pending is. */
#define TAIL_MAX_PENDING (1024 * 1024)
/* The longest subject pattern a tail follows, and the longest query string
 * of any request: past them the answer is 400 or 414 at once. */
#define TAIL_SUBJECT_MAX 512
#define HTTP_QUERY_MAX 2048

/* What a connection that arrives when no descriptor is left is told
 * before it is closed (see on_accept_error). */
#define HTTP_REFUSED_BODY "{\"error\":{\"code\":503,\"description\":\"no file descriptor left\"}}"
#define HTTP_REFUSED                                                                                             \
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"                \
    "Content-Length: " HTTP_REFUSED_LEN "\r\n\r\n" HTTP_REFUSED_BODY
#define HTTP_REFUSED_LEN "62"
/* How long the listener rests after an accept error the reserve cannot
 * answer, rather than waking the loop again at once. */
#define HTTP_ACCEPT_PAUSE_MS 100

struct http {
    double idle_timeout; /* seconds, as set on eh */
    server_t *srv;
    node_t *node;
    struct evhttp *eh;
    struct evconnlistener *listener; /* owned by eh once bound */
    struct event *relisten;          /* re-enables the listener after a failed accept */
    time_t accept_error_logged;      /* one log line a second at most */
    struct event *heartbeat; /* keeps tails alive, and finds the ones whose client left */
    tail_t tails[MAX_TAILS];
    uint64_t requests, ingested, rejected;
    uint64_t slow_tails; /* tails cut for not reading */
    sub_t *inbox_sub;     /* PubAcks for ingested events: <inbox>.> */
    char inbox[48];
    char cinbox[96]; /* cluster mode: "_INBOX.tide-http.<server id>", where JetStream's PubAcks come; else "" */
    uint64_t next_wait;
    ack_wait_t *waits;
    http_auth_t *auth;     /* who asks, when the server has auth */
    const http_who_t *who; /* the request being handled (route) */
    console_t *console;    /* /api/flow and /api/rates */
    int has_ident;             /* with auth: the events of that request show ident as e.client */
    script_identity_t ident;
};

/* ---- replies ------------------------------------------------------------------ */

static void reply(struct evhttp_request *req, int code, const char *reason, const char *ctype, const char *body,
                  size_t len)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evbuffer_add(b, body, len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, reason, b);
    evbuffer_free(b);
}

static void reply_json(struct evhttp_request *req, int code, const char *reason, const char *json)
{
    reply(req, code, reason, "application/json", json, strlen(json));
}

/* {"error":{"code":N,"description":"..."}} with the given status. */
static void reply_error(http_t *h, struct evhttp_request *req, int code, const char *reason, const char *msg)
{
    cJSON *o = cJSON_CreateObject(), *e = cJSON_CreateObject();
    json_add_int(e, "code", code);
    cJSON_AddStringToObject(e, "description", msg);
    cJSON_AddItemToObject(o, "error", e);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    reply_json(req, code, reason, s ? s : "{}");
    cJSON_free(s);
    h->rejected++;
}

/* ---- durable answers: PubAcks ----------------------------------------------------- */

static ack_wait_t *wait_find(http_t *h, uint64_t id)
{
    for (ack_wait_t *w = h->waits; w; w = w->next)
        if (w->id == id)
            return w;
    return NULL;
}

static void wait_free(ack_wait_t *w)
{
    http_t *h = w->http;
    for (ack_wait_t **pp = &h->waits; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    if (w->timer)
        event_free(w->timer);
    for (int i = 0; i < w->nevents && w->acks; i++)
        cJSON_Delete(w->acks[i]);
    free(w->acks);
    free(w);
}

/* The HTTP status for one PubAck: 201, 503 (storing failed), 409 (an
 * expected last sequence did not match), 400 (another refusal). */
static int ack_status(const cJSON *ack, const char **reason)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(ack, "error");
    if (!e) {
        *reason = "Created";
        return 201;
    }
    uint64_t code = 0, ec = 0;
    json_get_uint_member(e, "code", &code);
    json_get_uint_member(e, "err_code", &ec);
    if (code == 503) {
        *reason = "Service Unavailable";
        return 503;
    }
    if (ec == 10071) {
        *reason = "Conflict";
        return 409;
    }
    *reason = "Bad Request";
    return 400;
}

/* Every PubAck is in (or the time is up): answer the request. */
static void wait_finish(ack_wait_t *w, int timed_out)
{
    http_t *h = w->http;
    if (timed_out) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "no PubAck within %g s (%d of %d): the event%s may or may not be stored; retry with the same ce-id",
                 w->timeout, w->answers, w->expected, w->nevents == 1 ? "" : "s");
        reply_error(h, w->req, 504, "Gateway Timeout", msg);
        wait_free(w);
        return;
    }
    const char *reason = "Created";
    int status = 201;
    for (int i = 0; i < w->nevents; i++) { /* the first refusal decides */
        const char *r;
        int st = w->acks[i] ? ack_status(w->acks[i], &r) : 201;
        if (st != 201) {
            status = st;
            reason = r;
            /* The error's code is the HTTP status, as in tide's other error bodies. */
            cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(w->acks[i], "error"), "code",
                                                   json_int(st));
            break;
        }
    }
    cJSON *body;
    if (w->batch) {
        body = cJSON_CreateObject();
        json_add_int(body, "accepted", w->nevents);
        cJSON *a = cJSON_AddArrayToObject(body, "acks");
        for (int i = 0; i < w->nevents; i++) {
            cJSON_AddItemToArray(a, w->acks[i] ? w->acks[i] : cJSON_CreateNull());
            w->acks[i] = NULL;
        }
    } else {
        body = w->acks[0];
        w->acks[0] = NULL;
    }
    char *s = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    if (status != 201)
        h->rejected++;
    reply_json(w->req, status, reason, s ? s : "{}");
    cJSON_free(s);
    wait_free(w);
}

static void on_wait_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wait_finish(arg, 1);
}

/* A message on <prefix>.<id>.<index> (il: the prefix's length): a PubAck
 * for an ingested event, taken when it is an object; `taken` says whether
 * it is an answer a stream would give (not a subscriber's). */
static void puback_in(http_t *h, const proto_msg_t *m, size_t il, int (*taken)(const cJSON *ack))
{
    char tail[64];
    if (m->subject_len <= il + 1 || m->subject_len - il - 1 >= sizeof tail)
        return;
    memcpy(tail, m->subject + il + 1, m->subject_len - il - 1);
    tail[m->subject_len - il - 1] = 0;
    char *end;
    uint64_t id = strtoull(tail, &end, 10);
    if (*end != '.')
        return;
    long idx = strtol(end + 1, &end, 10);
    ack_wait_t *w = wait_find(h, id);
    if (*end || !w || idx < 0 || idx >= w->nevents)
        return; /* late (after a timeout) or not ours */
    /* Only a stream's answer counts: a subscriber may answer the reply
     * subject too (it sees it on the event). */
    cJSON *ack = json_parse_owned(m->payload, m->payload_len); /* "seq" goes out as it came */
    if (!cJSON_IsObject(ack) || !taken(ack)) {
        cJSON_Delete(ack);
        return;
    }
    if (!w->acks[idx]) {
        w->acks[idx] = ack;
    } else if (cJSON_GetObjectItemCaseSensitive(ack, "error") &&
               !cJSON_GetObjectItemCaseSensitive(w->acks[idx], "error")) {
        cJSON_Delete(w->acks[idx]); /* routed to two streams: a refusal wins */
        w->acks[idx] = ack;
    } else {
        cJSON_Delete(ack);
    }
    w->answers++;
    if (w->expected >= 0 && w->answers >= w->expected)
        wait_finish(w, 0);
}

/* A local stream's PubAck names its stream. */
static int local_ack(const cJSON *ack) { return cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ack, "stream")); }

/* JetStream's names its stream, or is a refusal without one. */
static int jetstream_ack(const cJSON *ack) { return local_ack(ack) || cJSON_GetObjectItemCaseSensitive(ack, "error"); }

static void on_puback(void *ctx, const proto_msg_t *m)
{
    http_t *h = ctx;
    puback_in(h, m, strlen(h->inbox), local_ack);
}

/* An answer on cinbox, from the cluster: JetStream's PubAck, or a status
 * without a body (503: no stream in the cluster captures the subject),
 * answered as a refusal. */
static void on_cluster_puback(void *ctx, const proto_msg_t *m)
{
    http_t *h = ctx;
    proto_msg_t refusal = *m;
    static const char no_stream[] = "{\"error\":{\"code\":503,\"description\":"
                                    "\"no responders: no stream of the cluster's JetStream took the event\"}}";
    if (m->hdr_len > 12 && !memcmp(m->hdr, "NATS/1.0 503", 12)) {
        refusal.payload = no_stream;
        refusal.payload_len = sizeof no_stream - 1;
    }
    puback_in(h, &refusal, strlen(h->cinbox), jetstream_ack);
}

/* A wait for one ingest request, or NULL when no stream is configured. */
static ack_wait_t *wait_new(http_t *h, struct evhttp_request *req, int batch)
{
    if ((!h->node->streams || !h->inbox_sub) && !h->cinbox[0])
        return NULL;
    ack_wait_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->http = h;
    w->req = req;
    w->id = ++h->next_wait;
    w->batch = batch;
    w->expected = -1;
    w->csent = h->cinbox[0] ? cluster_inbox_sent(h->node->cluster) : 0;
    snprintf(w->prefix, sizeof w->prefix, "%s.%llu.", h->inbox, (unsigned long long)w->id);
    w->next = h->waits;
    h->waits = w;
    return w;
}

/* True when a jetstream-backed stream of the rules captures subject: its
 * PubAck comes from the cluster. */
static int jetstream_captures(http_t *h, const char *subject, size_t sl)
{
    const cluster_stream_t *decl = NULL;
    int n = h->node->scripts ? script_cluster_streams(h->node->scripts, &decl) : 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < decl[i].nsubjects; k++)
            if (subject_matches(decl[i].subjects[k], strlen(decl[i].subjects[k]), subject, sl))
                return 1;
    return 0;
}

/* Counts the next event of w; returns its reply subject (in out) when a
 * stream captures subject, else NULL (no PubAck: null in a batch's acks). */
static const char *wait_reply(ack_wait_t *w, const char *subject, size_t sl, char *out, size_t n)
{
    if (!w)
        return NULL;
    if (w->nevents == w->acap) {
        int nc = w->acap ? w->acap * 2 : 4;
        cJSON **na = realloc(w->acks, (size_t)nc * sizeof *na);
        if (!na)
            return NULL;
        memset(na + w->acap, 0, (size_t)(nc - w->acap) * sizeof *na);
        w->acks = na;
        w->acap = nc;
    }
    int i = w->nevents++;
    if (dlq_capturing_stream(w->http->node->streams, subject, sl)) {
        snprintf(out, n, "%s%d", w->prefix, i);
        return out;
    }
    if (w->http->cinbox[0] && jetstream_captures(w->http, subject, sl)) {
        snprintf(out, n, "%s.%llu.%d", w->http->cinbox, (unsigned long long)w->id, i);
        return out;
    }
    return NULL;
}

/* After publishing: answer now (202 when nothing was captured, the PubAcks
 * when all came at once) or wait for them.  Returns 1 when w answered. */
static int wait_start(ack_wait_t *w)
{
    if (!w)
        return 0;
    size_t pending = dlq_pending_pubacks(w->http->node->streams, w->prefix, strlen(w->prefix));
    /* What went to the cluster with a reply to cinbox: one PubAck each. */
    if (w->http->cinbox[0])
        pending += (size_t)(cluster_inbox_sent(w->http->node->cluster) - w->csent);
    w->expected = w->answers + (int)pending;
    if (w->expected == 0) {
        wait_free(w); /* nothing was stored (not captured, or a filter dropped it): 202 */
        return 0;
    }
    if (w->answers >= w->expected) {
        wait_finish(w, 0);
        return 1;
    }
    w->timeout = script_http_ack_timeout(w->http->node->scripts);
    struct timeval tv = util_timeval(w->timeout);
    w->timer = evtimer_new(server_base(w->http->srv), on_wait_timeout, w);
    if (!w->timer || evtimer_add(w->timer, &tv) < 0) {
        wait_finish(w, 1);
        return 1;
    }
    return 1;
}

/* ---- ingestion ------------------------------------------------------------------ */

/* Publishes one message, with a reply subject for its PubAck when a stream
 * captures the subject. */
static void publish_msg(http_t *h, ack_wait_t *w, const char *subject, size_t sl, const char *hdr, size_t hl,
                        const char *payload, size_t pl)
{
    char reply[160];
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = subject;
    m.subject_len = sl;
    m.reply = wait_reply(w, subject, sl, reply, sizeof reply);
    m.reply_len = m.reply ? strlen(m.reply) : 0;
    m.hdr = hl ? hdr : NULL;
    m.hdr_len = hl;
    m.payload = payload;
    m.payload_len = pl;
    if (h->has_ident)
        script_set_identity(h->node->scripts, &h->ident);
    server_publish(h->srv, NULL, &m);
    if (h->has_ident)
        script_set_identity(h->node->scripts, NULL);
    h->ingested++;
}

/* HTTP publishes events, never requests to the server or JetStream: 0, or
 * 403 with err. */
static int check_subject_open(const char *subject, char *err, size_t errsz)
{
    if (!strncmp(subject, "$TIDE.", 6) || !strcmp(subject, "$TIDE") || !strncmp(subject, "$JS.", 4)) {
        snprintf(err, errsz, "'%s' is reserved: HTTP does not publish to $TIDE. or $JS. subjects", subject);
        return 403;
    }
    return 0;
}

/* True when name may stand before "ce-" as a header name (an RFC 9110
 * token): a structured envelope's keys are any JSON string, and one with
 * a line break or a colon would forge header lines. */
static int header_name_ok(const char *name)
{
    if (!*name)
        return 0;
    for (; *name; name++)
        if (!isalnum((unsigned char)*name) && !strchr("!#$%&'*+-.^_`|~", *name))
            return 0;
    return 1;
}

/* Publishes one envelope (a JSON object) under subject; extra holds
 * "Name: value\r\n" header lines to send with it ("" for none). */
static int publish_envelope(http_t *h, ack_wait_t *w, const char *extra, cJSON *env, const char *subject, char *err,
                            size_t errsz)
{
    size_t sl = strlen(subject);
    int code = check_subject_open(subject, err, errsz);
    if (code)
        return code;
    if (h->who && h->who->checked && !auth_may_publish(h->who->perms, subject, sl)) {
        /* The check a NATS publish gets (client_auth.c), with its words. */
        snprintf(err, errsz, "Permissions Violation for Publish to \"%.256s\"", subject);
        return 403;
    }
    if (!subject_valid_literal(subject, sl)) {
        snprintf(err, errsz, "'%s' is not a valid subject", subject);
        return 400;
    }
    script_host_t *sh = h->node->scripts;
    char *hdr = NULL;
    size_t hl = 0;
    char *payload = NULL;
    if (sh && script_http_binary(sh, subject, sl)) {
        /* Binary mode: every attribute a ce-* header, the data the payload. */
        size_t cap = 64 + strlen(extra);
        cJSON *a;
        /* A number keeps its text (a raw node, json.h), of any length; a
         * double or a bool prints in at most 32. */
        cJSON_ArrayForEach(a, env) cap += strlen(a->string) + 8 +
                                          (cJSON_IsString(a) || cJSON_IsRaw(a) ? strlen(a->valuestring) : 32);
        hdr = malloc(cap);
        if (!hdr) {
            snprintf(err, errsz, "out of memory");
            return 500;
        }
        hl = (size_t)snprintf(hdr, cap, "NATS/1.0\r\n");
        cJSON_ArrayForEach(a, env) {
            if (!strcmp(a->string, "data") || !header_name_ok(a->string))
                continue;
            if (strchr(a->valuestring ? a->valuestring : "", '\n') || strchr(a->valuestring ? a->valuestring : "", '\r'))
                continue;
            if (cJSON_IsString(a))
                hl += (size_t)snprintf(hdr + hl, cap - hl, "%s%s: %s\r\n",
                                       strcmp(a->string, "datacontenttype") ? "ce-" : "",
                                       strcmp(a->string, "datacontenttype") ? a->string : "content-type", a->valuestring);
            else if (cJSON_IsNumber(a) || cJSON_IsRaw(a) || cJSON_IsBool(a)) {
                char *v = cJSON_PrintUnformatted(a);
                hl += (size_t)snprintf(hdr + hl, cap - hl, "ce-%s: %s\r\n", a->string, v ? v : "");
                cJSON_free(v);
            }
        }
        hl += (size_t)snprintf(hdr + hl, cap - hl, "%s\r\n", extra);
        cJSON *d = cJSON_GetObjectItemCaseSensitive(env, "data");
        payload = cJSON_IsString(d) ? util_mem_dup(d->valuestring, strlen(d->valuestring))
                : d ? cJSON_PrintUnformatted(d) : util_mem_dup("", 0);
        if (payload && d && !cJSON_IsString(d)) { /* cJSON's buffer: make it plain malloc */
            char *c = util_mem_dup(payload, strlen(payload));
            cJSON_free(payload);
            payload = c;
        }
    } else {
        char *p = cJSON_PrintUnformatted(env);
        payload = p ? util_mem_dup(p, strlen(p)) : NULL;
        cJSON_free(p);
        if (extra[0] && (hdr = malloc(strlen(extra) + 16)))
            hl = (size_t)sprintf(hdr, "NATS/1.0\r\n%s\r\n", extra);
    }
    if (!payload) {
        free(hdr);
        snprintf(err, errsz, "out of memory");
        return 500;
    }
    size_t pl = strlen(payload);
    if (pl + hl > server_get_opts(h->srv)->max_payload) {
        snprintf(err, errsz, "event of %zu bytes is over max_payload (%zu)", pl + hl,
                 server_get_opts(h->srv)->max_payload);
        free(payload);
        free(hdr);
        return 413;
    }
    publish_msg(h, w, subject, sl, hdr, hl, payload, pl);
    free(payload);
    free(hdr);
    return 0;
}

/* Checks the attributes CloudEvents requires; 0 or 400 with err. */
static int check_envelope(const cJSON *env, char *err, size_t errsz)
{
    static const char *const required[] = {"id", "source", "type", "specversion", NULL};
    if (!cJSON_IsObject(env)) {
        snprintf(err, errsz, "a CloudEvent must be a JSON object");
        return 400;
    }
    for (int i = 0; required[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(env, required[i]);
        if (!cJSON_IsString(v) || !v->valuestring[0]) {
            snprintf(err, errsz, "missing required CloudEvents attribute '%s'", required[i]);
            return 400;
        }
    }
    return check_subject_open(cJSON_GetObjectItemCaseSensitive(env, "type")->valuestring, err, errsz);
}

static char *body_of(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    *len = evbuffer_get_length(in);
    char *b = malloc(*len + 1);
    if (!b)
        return NULL;
    evbuffer_copyout(in, b, *len);
    b[*len] = '\0';
    return b;
}

static int starts_with_ci(const char *s, const char *prefix)
{
    return s && !strncasecmp(s, prefix, strlen(prefix));
}

/* Request headers passed on to the message, for the streams. */
static const char *const nats_headers[] = {"Nats-Msg-Id", "Nats-Expected-Stream", "Nats-Expected-Last-Sequence",
                                           "Nats-Expected-Last-Subject-Sequence", NULL};

/*
 * POST /v1/events (or /): a CloudEvent in binary mode (ce-* headers, the
 * body is the data), structured mode (application/cloudevents+json) or a
 * batch (application/cloudevents-batch+json).  The subject is the event's
 * type.
 * POST /v1/publish/<subject>: a plain JSON body, sent as the data of a new
 * envelope of that type.
 * When a stream captures the subject, the answer waits for the stream:
 * 201 with its PubAck once the event is durable (see wait_finish).
 */
/* One ingest request while it is read: what the mode functions share. */
typedef struct ingest {
    http_t *h;
    struct evhttp_request *req;
    struct evkeyvalq *hd;
    const char *ctype;
    char *body;
    size_t len;
    cJSON *doc, *env;  /* freed with the request */
    char *nums;        /* number texts of doc (json_parse), so numbers go out exactly */
    char extra[1200];  /* Nats-* request headers, as header lines */
    ack_wait_t *w;
    int n;             /* events published */
    char err[512];
} ingest_t;

/* Takes the Nats-* request headers into in->extra.  0, or a status code. */
static int ingest_nats_headers(ingest_t *in, int batch)
{
    for (int i = 0; nats_headers[i]; i++) {
        const char *v = evhttp_find_header(in->hd, nats_headers[i]);
        if (!v)
            continue;
        if (batch) {
            snprintf(in->err, sizeof in->err, "%s is for one event, not a batch", nats_headers[i]);
            return 400;
        }
        size_t o = strlen(in->extra);
        if (strlen(v) > 256 || strpbrk(v, "\r\n")) {
            snprintf(in->err, sizeof in->err, "%s: a value of at most 256 characters on one line", nats_headers[i]);
            return 400;
        }
        snprintf(in->extra + o, sizeof in->extra - o, "%s: %s\r\n", nats_headers[i], v);
    }
    return 0;
}

/* POST /v1/publish/<subject>: the body is the data of a new envelope. */
static int ingest_plain(ingest_t *in, const char *subject)
{
    if (!starts_with_ci(in->ctype, "application/json")) {
        snprintf(in->err, sizeof in->err, "POST /v1/publish takes Content-Type application/json, not %s",
                 in->ctype ? in->ctype : "none");
        return 415;
    }
    cJSON *data = json_parse(in->body, in->len, &in->nums);
    if (!data) {
        snprintf(in->err, sizeof in->err, "the body is not valid JSON");
        return 400;
    }
    char id[37], when[64];
    util_uuid4(id);
    util_now_rfc3339(when);
    in->env = cJSON_CreateObject();
    cJSON_AddStringToObject(in->env, "specversion", "1.0");
    cJSON_AddStringToObject(in->env, "id", id);
    cJSON_AddStringToObject(in->env, "source", "http");
    cJSON_AddStringToObject(in->env, "type", subject);
    cJSON_AddStringToObject(in->env, "time", when);
    cJSON_AddItemToObject(in->env, "data", data);
    int code = publish_envelope(in->h, in->w, in->extra, in->env, subject, in->err, sizeof in->err);
    in->n = code ? 0 : 1;
    return code;
}

/* application/cloudevents-batch+json: every event is checked before any
 * is published. */
static int ingest_batch(ingest_t *in)
{
    in->doc = json_parse(in->body, in->len, &in->nums);
    if (!cJSON_IsArray(in->doc)) {
        snprintf(in->err, sizeof in->err, "a batch must be a JSON array of CloudEvents");
        return 400;
    }
    cJSON *e;
    int i = 0, code;
    cJSON_ArrayForEach(e, in->doc) {
        char why[400];
        if ((code = check_envelope(e, why, sizeof why))) {
            snprintf(in->err, sizeof in->err, "event %d: %s", i, why);
            return code;
        }
        i++;
    }
    if (i > MAX_BATCH) {
        snprintf(in->err, sizeof in->err, "a batch of %d events is over the limit of %d", i, MAX_BATCH);
        return 413;
    }
    cJSON_ArrayForEach(e, in->doc) {
        const char *type = cJSON_GetObjectItemCaseSensitive(e, "type")->valuestring;
        if ((code = publish_envelope(in->h, in->w, in->extra, e, type, in->err, sizeof in->err)))
            return code;
        in->n++;
    }
    return 0;
}

/* application/cloudevents+json: the body is already an envelope and goes
 * out as sent (unless its subject is delivered in binary mode). */
static int ingest_structured(ingest_t *in)
{
    int code;
    in->doc = json_parse(in->body, in->len, &in->nums);
    if (!in->doc) {
        snprintf(in->err, sizeof in->err, "the body is not valid JSON");
        return 400;
    }
    if ((code = check_envelope(in->doc, in->err, sizeof in->err)))
        return code;
    const char *type = cJSON_GetObjectItemCaseSensitive(in->doc, "type")->valuestring;
    script_host_t *sh = in->h->node->scripts;
    if (sh && script_http_binary(sh, type, strlen(type))) {
        code = publish_envelope(in->h, in->w, in->extra, in->doc, type, in->err, sizeof in->err);
        in->n = code ? 0 : 1;
        return code;
    }
    if (!subject_valid_literal(type, strlen(type))) {
        snprintf(in->err, sizeof in->err, "'%s' is not a valid subject", type);
        return 400;
    }
    char hb[sizeof in->extra + 16];
    size_t hl = in->extra[0] ? (size_t)snprintf(hb, sizeof hb, "NATS/1.0\r\n%s\r\n", in->extra) : 0;
    if (hl + in->len > server_get_opts(in->h->srv)->max_payload) {
        snprintf(in->err, sizeof in->err, "event of %zu bytes is over max_payload", hl + in->len);
        return 413;
    }
    publish_msg(in->h, in->w, type, strlen(type), hb, hl, in->body, in->len);
    in->n = 1;
    return 0;
}

/* Binary mode: the attributes are ce-* headers, the body is the data. */
static int ingest_binary(ingest_t *in)
{
    int code;
    in->env = cJSON_CreateObject();
    for (struct evkeyval *kv = in->hd->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strncasecmp(kv->key, "ce-", 3) || !kv->key[3])
            continue;
        char name[128];
        size_t i;
        for (i = 0; kv->key[3 + i] && i < sizeof name - 1; i++)
            name[i] = (char)((kv->key[3 + i] >= 'A' && kv->key[3 + i] <= 'Z') ? kv->key[3 + i] + 32 : kv->key[3 + i]);
        name[i] = '\0';
        if (!cJSON_GetObjectItemCaseSensitive(in->env, name))
            cJSON_AddStringToObject(in->env, name, kv->value);
    }
    const char *ctype = in->ctype;
    if (!ctype) {
        snprintf(in->err, sizeof in->err, "binary mode needs a Content-Type (application/json, */*+json or text/*)");
        return 415;
    }
    cJSON_AddStringToObject(in->env, "datacontenttype", ctype);
    if ((code = check_envelope(in->env, in->err, sizeof in->err)))
        return code;
    if (in->len) {
        cJSON *data = NULL;
        if (starts_with_ci(ctype, "application/json") || strstr(ctype, "+json")) {
            if (!(data = json_parse(in->body, in->len, &in->nums))) {
                snprintf(in->err, sizeof in->err, "the body is declared JSON but is not valid JSON");
                return 400;
            }
        } else if (starts_with_ci(ctype, "text/")) {
            data = cJSON_CreateString(in->body);
        } else {
            snprintf(in->err, sizeof in->err, "binary mode takes JSON or text data, not %s", ctype);
            return 415;
        }
        cJSON_AddItemToObject(in->env, "data", data);
    }
    const char *type = cJSON_GetObjectItemCaseSensitive(in->env, "type")->valuestring;
    code = publish_envelope(in->h, in->w, in->extra, in->env, type, in->err, sizeof in->err);
    in->n = code ? 0 : 1;
    return code;
}

/*
 * True for a write a browser sends on behalf of a page from another site:
 * its Origin names another host than the request's Host, or its
 * Sec-Fetch-Site says so.  Clients that are not browsers send neither.
 */
static int cross_origin(struct evkeyvalq *hd)
{
    const char *site = evhttp_find_header(hd, "Sec-Fetch-Site");
    if (site && strcasecmp(site, "same-origin") && strcasecmp(site, "none"))
        return 1;
    const char *origin = evhttp_find_header(hd, "Origin"), *host = evhttp_find_header(hd, "Host");
    if (!origin)
        return 0;
    const char *o = strstr(origin, "://");
    o = o ? o + 3 : origin;
    return !host || strcasecmp(o, host) != 0;
}

/* Picks the mode of an ingest request and publishes its events.  0, or a
 * status code with in->err. */
static int ingest_publish(ingest_t *in, const char *path)
{
    if (cross_origin(in->hd)) {
        snprintf(in->err, sizeof in->err, "cross-origin writes from a browser are refused");
        return 403;
    }
    int batch = starts_with_ci(in->ctype, "application/cloudevents-batch+json") && strncmp(path, "/v1/publish/", 12);
    int code;
    if (in->len > server_get_opts(in->h->srv)->max_payload) {
        snprintf(in->err, sizeof in->err, "body of %zu bytes is over max_payload", in->len);
        return 413;
    }
    if ((code = ingest_nats_headers(in, batch)))
        return code;
    in->w = wait_new(in->h, in->req, batch);
    if (!strncmp(path, "/v1/publish/", 12))
        return ingest_plain(in, path + 12);
    if (batch)
        return ingest_batch(in);
    if (starts_with_ci(in->ctype, "application/cloudevents+json"))
        return ingest_structured(in);
    if (evhttp_find_header(in->hd, "ce-specversion"))
        return ingest_binary(in);
    snprintf(in->err, sizeof in->err,
             "send a CloudEvent: ce-* headers (binary mode), Content-Type application/cloudevents+json, "
             "application/cloudevents-batch+json, or POST /v1/publish/<subject> with application/json");
    return in->ctype ? 415 : 400;
}

static void ingest(http_t *h, struct evhttp_request *req, const char *path)
{
    ingest_t *in = calloc(1, sizeof *in);
    if (!in || !(in->body = body_of(req, &in->len))) {
        free(in);
        reply_error(h, req, 500, "Internal Server Error", "out of memory");
        return;
    }
    in->h = h;
    in->req = req;
    in->hd = evhttp_request_get_input_headers(req);
    in->ctype = evhttp_find_header(in->hd, "Content-Type");
    int code = ingest_publish(in, path);
    ack_wait_t *w = in->w;
    int n = in->n;
    free(in->body);
    cJSON_Delete(in->doc);
    cJSON_Delete(in->env);
    free(in->nums); /* after the trees that point into it */
    if (code) {
        if (w)
            wait_free(w); /* PubAcks of events published before the error go nowhere */
        const char *reason = code == 413 ? "Payload Too Large" : code == 415 ? "Unsupported Media Type"
                           : code == 403 ? "Forbidden" : code == 500 ? "Internal Server Error" : "Bad Request";
        reply_error(h, req, code, reason, in->err);
        free(in);
        return;
    }
    free(in);
    if (wait_start(w))
        return; /* answered, or answered when the PubAcks are in */
    char ok[64];
    snprintf(ok, sizeof ok, "{\"accepted\":%d}", n);
    reply_json(req, 202, "Accepted", ok);
}

/* ---- metrics ---------------------------------------------------------------------- */

/* A Prometheus label value: backslash, quote and newline escaped. */
static void label(struct evbuffer *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            evbuffer_add_printf(b, "\\%c", *v);
        else if (*v == '\n')
            evbuffer_add(b, "\\n", 2);
        else
            evbuffer_add(b, v, 1);
    }
}

static void metric(struct evbuffer *b, const char *name, const char *type, const char *help, double v)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

typedef struct rule_metrics {
    struct evbuffer *b;
    int pass;
} rule_metrics_t;

static void rule_line(void *ctx, const script_rule_info_t *r)
{
    rule_metrics_t *rm = ctx;
    static const char *const names[] = {"tide_rule_calls_total", "tide_rule_errors_total", "tide_rule_dropped_total",
                                        "tide_rule_routed_total"};
    uint64_t v[] = {r->calls, r->errors, r->dropped, r->routed};
    evbuffer_add_printf(rm->b, "%s{kind=\"", names[rm->pass]);
    label(rm->b, r->kind);
    evbuffer_add(rm->b, "\",pattern=\"", 11);
    label(rm->b, r->pattern);
    evbuffer_add(rm->b, "\",where=\"", 9);
    label(rm->b, r->where);
    evbuffer_add_printf(rm->b, "\"} %llu\n", (unsigned long long)v[rm->pass]);
}

/* The rules' counters and the rule-call time histogram, in b. */
static void rule_metrics(struct evbuffer *b, script_host_t *sh)
{
    static const char *const help[] = {"Calls of each rule.", "Lua errors of each rule.",
                                       "Events each filter or route dropped.", "Events each route redirected."};
    static const char *const names[] = {"tide_rule_calls_total", "tide_rule_errors_total",
                                        "tide_rule_dropped_total", "tide_rule_routed_total"};
    for (int pass = 0; pass < 4; pass++) {
        rule_metrics_t rm = {b, pass};
        evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s counter\n", names[pass], help[pass], names[pass]);
        script_foreach_rule(sh, rule_line, &rm);
    }
    const uint64_t *counts;
    double sum;
    uint64_t count, cum = 0;
    script_latency(sh, &counts, &sum, &count);
    evbuffer_add_printf(b, "# HELP tide_script_call_seconds Time of each rule call.\n"
                           "# TYPE tide_script_call_seconds histogram\n");
    for (int i = 0; i < SCRIPT_LATENCY_BUCKETS; i++) {
        cum += counts[i];
        evbuffer_add_printf(b, "tide_script_call_seconds_bucket{le=\"%g\"} %llu\n", script_latency_bounds[i],
                            (unsigned long long)cum);
    }
    cum += counts[SCRIPT_LATENCY_BUCKETS];
    evbuffer_add_printf(b, "tide_script_call_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    evbuffer_add_printf(b, "tide_script_call_seconds_sum %.17g\ntide_script_call_seconds_count %llu\n", sum,
                        (unsigned long long)count);
}

static void metrics(http_t *h, struct evhttp_request *req)
{
    server_stats_t s;
    script_stats_t st;
    script_host_t *sh = h->node->scripts;
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    server_get_stats(h->srv, &s);
    memset(&st, 0, sizeof st);
    if (sh)
        script_get_stats(sh, &st);
    metric(b, "tide_connections", "gauge", "Client connections open now.", (double)s.connections);
    metric(b, "tide_connections_total", "counter", "Client connections accepted.", (double)s.connections_total);
    metric(b, "tide_messages_in_total", "counter", "Messages published into the router.", (double)s.in_msgs);
    metric(b, "tide_messages_out_total", "counter", "Messages delivered to clients.", (double)s.out_msgs);
    metric(b, "tide_bytes_in_total", "counter", "Bytes of messages published.", (double)s.in_bytes);
    metric(b, "tide_bytes_out_total", "counter", "Bytes of messages delivered.", (double)s.out_bytes);
    metric(b, "tide_slow_consumers_total", "counter", "Clients disconnected as slow consumers.", (double)s.slow_consumers);
    metric(b, "tide_stale_connections_total", "counter", "Clients dropped for unanswered PINGs.",
           (double)s.stale_connections);
    metric(b, "tide_protocol_errors_total", "counter", "Clients closed for protocol errors.", (double)s.protocol_errors);
    metric(b, "tide_http_requests_total", "counter", "HTTP requests served.", (double)h->requests);
    metric(b, "tide_http_events_total", "counter", "Events accepted over HTTP.", (double)h->ingested);
    metric(b, "tide_http_rejected_total", "counter", "HTTP requests refused with an error status.", (double)h->rejected);
    metric(b, "tide_http_slow_tails_total", "counter", "Tails cut because their client did not read.",
           (double)h->slow_tails);
    metric(b, "tide_script_events_total", "counter", "Events that entered the script pipeline.", (double)st.events);
    metric(b, "tide_script_bypassed_total", "counter", "Events no rule matched (no Lua ran).", (double)st.bypassed);
    metric(b, "tide_script_dropped_total", "counter", "Events dropped by filters or routes.", (double)st.dropped);
    metric(b, "tide_script_dead_letters_total", "counter", "Events sent to the dead-letter subject.",
           (double)st.dead_letters);
    metric(b, "tide_script_dead_letters_lost_total", "counter",
           "Dead letters of failed events that reached no stream and no subscriber.", (double)st.dead_letters_lost);
    metric(b, "tide_script_errors_total", "counter", "Lua errors in rules.", (double)st.errors);
    metric(b, "tide_script_budget_stops_total", "counter", "Rule calls stopped by a budget.", (double)st.budget_stops);
    metric(b, "tide_script_emitted_total", "counter", "Events published by handlers.", (double)st.emitted);
    metric(b, "tide_script_loops_stopped_total", "counter", "Handler publishes refused by the loop guard.",
           (double)st.loops_stopped);
    metric(b, "tide_script_reloads_total", "counter", "Successful script reloads.", (double)st.reloads);
    metric(b, "tide_script_reload_failures_total", "counter", "Failed script reloads.", (double)st.reload_failures);
    metric(b, "tide_script_last_reload_success", "gauge", "1 when the last reload (or the first load) succeeded.",
           !strcmp(st.last_reload, "ok") || !sh ? 1 : 0);
    metric(b, "tide_script_memory_bytes", "gauge", "Memory used by the current Lua state.", (double)st.memory);
    if (sh)
        rule_metrics(b, sh);
    if (h->node->streams) {
        char *sb = NULL;
        size_t sl = 0, sc = 0;
        streams_metrics(h->node->streams, &sb, &sl, &sc);
        if (sb)
            evbuffer_add(b, sb, sl);
        free(sb);
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

/* ---- live tail (Server-Sent Events) ---------------------------------------------- */

/* Frees t's slot: its subscription goes (in cluster mode with it the
 * interest the node held upstream for it), and t is free for another tail.
 * t's request is the caller's to end or to free first. */
static void tail_end(tail_t *t)
{
    server_unsubscribe_internal(t->http->srv, t->sub);
    t->sub = NULL;
    t->req = NULL;
    t->live = 0;
}

/* Ends a tail whose client does not read what it is sent: the stream is
 * finished (what is queued is left to the idle timeout) and the slot freed. */
static void tail_cut(tail_t *t, size_t pending)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(t->req);
    log_warn("tail %s: slow consumer: %zu bytes pending (max %d), cut", t->sub ? t->sub->subject : "?", pending,
             TAIL_MAX_PENDING);
    t->http->slow_tails++;
    if (conn)
        evhttp_connection_set_closecb(conn, NULL, NULL); /* the slot may be reused before it closes */
    evhttp_send_reply_end(t->req);
    tail_end(t);
}

/* True when t's user may (still: a reload may have changed that) see m;
 * a tail whose user may no longer read its pattern is ended. */
static int tail_allowed(tail_t *t, const proto_msg_t *m)
{
    http_who_t w;
    if (!t->checked)
        return 1;
    if (http_auth_who(server_auth(t->http->srv), t->user[0] ? t->user : NULL, &w) < 0 ||
        !auth_may_subscribe(w.perms, t->sub->subject, strlen(t->sub->subject))) {
        struct evhttp_connection *conn = evhttp_request_get_connection(t->req);
        log_info("tail %s: its user '%s' may no longer read it, ended", t->sub->subject, t->user);
        if (conn)
            evhttp_connection_set_closecb(conn, NULL, NULL);
        evhttp_send_reply_end(t->req);
        tail_end(t);
        return 0;
    }
    return !auth_deny_delivery(w.perms, m->subject, m->subject_len);
}

static void tail_deliver(void *ctx, const proto_msg_t *m)
{
    tail_t *t = ctx;
    if (!t || !t->live || !tail_allowed(t, m))
        return;
    struct evhttp_connection *conn = evhttp_request_get_connection(t->req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    size_t pending = bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
    if (pending > TAIL_MAX_PENDING) {
        tail_cut(t, pending);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return;
    /* One event per message; data lines cannot hold newlines, so the payload
     * is sent as a JSON string when it is not a single line of JSON. */
    cJSON *o = cJSON_CreateObject();
    char *subject = util_mem_dup(m->subject, m->subject_len), *payload = util_mem_dup(m->payload, m->payload_len);
    cJSON_AddStringToObject(o, "subject", subject ? subject : "");
    cJSON *p = payload ? cJSON_Parse(payload) : NULL;
    if (p)
        cJSON_AddItemToObject(o, "data", p);
    else
        cJSON_AddStringToObject(o, "payload", payload ? payload : "");
    char *s = cJSON_PrintUnformatted(o);
    evbuffer_add_printf(b, "event: message\ndata: %s\n\n", s ? s : "{}");
    cJSON_free(s);
    cJSON_Delete(o);
    free(subject);
    free(payload);
    evhttp_send_reply_chunk(t->req, b);
    evbuffer_free(b);
}

static void tail_closed(struct evhttp_connection *conn, void *arg)
{
    tail_t *t = arg;
    (void)conn;
    /* The client went away.  libevent detaches a request the user has not
     * finished (a stream never is) and leaves it to the user: free it here. */
    if (t->req && !evhttp_request_get_connection(t->req))
        evhttp_request_free(t->req);
    tail_end(t);
}

static void tail(http_t *h, struct evhttp_request *req, const char *pattern)
{
    tail_t *t = NULL;
    if (!pattern || !subject_valid_pattern(pattern, strlen(pattern))) {
        reply_error(h, req, 400, "Bad Request", "GET /v1/tail?subject=<pattern> with a valid subject pattern");
        return;
    }
    if (strlen(pattern) > TAIL_SUBJECT_MAX) {
        char msg[128];
        snprintf(msg, sizeof msg, "a tail's subject pattern is at most %d bytes, not %zu", TAIL_SUBJECT_MAX,
                 strlen(pattern));
        reply_error(h, req, 400, "Bad Request", msg);
        return;
    }
    for (int i = 0; i < MAX_TAILS && !t; i++)
        if (!h->tails[i].live && !h->tails[i].sub)
            t = &h->tails[i];
    if (h->who && h->who->checked && !auth_may_subscribe(h->who->perms, pattern, strlen(pattern))) {
        char msg[320];
        snprintf(msg, sizeof msg, "Permissions Violation for Subscription to \"%.256s\"", pattern);
        reply_error(h, req, 403, "Forbidden", msg);
        return;
    }
    if (!t) {
        reply_error(h, req, 503, "Service Unavailable", "too many live tails");
        return;
    }
    t->http = h;
    t->req = req;
    t->checked = h->who && h->who->checked;
    snprintf(t->user, sizeof t->user, "%s", t->checked ? h->who->user : "");
    /* As a client's subscription: in cluster mode it sees what every node
     * publishes on pattern (docs/cluster.md). */
    if (!(t->sub = server_subscribe_as_client(h->srv, pattern, tail_deliver, t))) {
        reply_error(h, req, 500, "Internal Server Error", "out of memory");
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", "text/event-stream");
    evhttp_add_header(out, "Cache-Control", "no-cache");
    evhttp_send_reply_start(req, 200, "OK");
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, ": tail of %s\n\n", pattern);
    evhttp_send_reply_chunk(req, b);
    evbuffer_free(b);
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), tail_closed, t);
    t->live = 1;
}

/* Every second a comment line goes to each open tail: proxies keep the
 * stream open, and a client that left is found by the failed write (the
 * server does not read a connection while it streams to it). */
static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    http_t *h = arg;
    (void)fd;
    (void)what;
    console_tick(h->console);
    for (int i = 0; i < MAX_TAILS; i++) {
        tail_t *t = &h->tails[i];
        if (!t->live || !t->req)
            continue;
        struct evbuffer *b = evbuffer_new();
        if (!b)
            continue;
        evbuffer_add(b, ": keep-alive\n\n", 14);
        evhttp_send_reply_chunk(t->req, b);
        evbuffer_free(b);
    }
}

/* ---- readiness ------------------------------------------------------------------- */

/* Storage writable: true (with why) when a stream's log failed and waits to
 * reopen ("failed" in the streams' JSON). */
static int storage_failed(http_t *h, char *why, size_t n)
{
    streams_t *sm = h->node->streams;
    size_t len;
    char *json = sm ? streams_json(sm, &len) : NULL;
    cJSON *a = json ? cJSON_ParseWithLength(json, len) : NULL, *s;
    int bad = 0;
    free(json);
    cJSON_ArrayForEach(s, a) {
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "failed"))) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(s, "name");
            snprintf(why, n, "storage is not writable: stream %s failed and waits to reopen",
                     cJSON_IsString(name) ? name->valuestring : "?");
            bad = 1;
            break;
        }
    }
    cJSON_Delete(a);
    return bad;
}

/* ---- routing of requests ---------------------------------------------------------- */

/* Gives new connections the idle timeout the entry file says now. */
static void set_idle_timeout(http_t *h)
{
    double t = script_http_idle_timeout(h->node->scripts);
    if (t == h->idle_timeout)
        return;
    struct timeval tv = util_timeval(t);
    evhttp_set_timeout_tv(h->eh, &tv);
    h->idle_timeout = t;
}

/* The views of $TIDE.ADMIN.> requests (stats, rules, streams) are for
 * admin users, as those requests are: 1 when who may see them, else 0
 * after answering 403. */
static int admin_view_ok(http_t *h, struct evhttp_request *req, const http_who_t *who)
{
    if (!who || !who->checked || who->admin)
        return 1;
    reply_error(h, req, 403, "Forbidden", "this view is for users with admin = true");
    return 0;
}

/* /v1/stats, /v1/rules, /v1/streams or /v1/consumers: the JSON of the
 * admin request of the same name. */
static void admin_view(http_t *h, struct evhttp_request *req, const char *path)
{
    char *json = NULL;
    size_t len = 0;
    const char *none = "[]";
    if (!strcmp(path, "/v1/stats")) {
        json = admin_stats_json(h->node, &len);
        none = "{}";
    } else if (!strcmp(path, "/v1/rules")) {
        if (h->node->scripts)
            script_rules_json(h->node->scripts, &json, &len);
    } else if (h->node->streams) {
        /* The same JSON as $TIDE.ADMIN.STREAM.LS / CONSUMER.LS; [] without streams. */
        streams_t *sm = h->node->streams;
        json = path[4] == 's' ? streams_json(sm, &len) : streams_consumers_json(sm, &len);
    }
    reply(req, 200, "OK", "application/json", json ? json : none, json ? len : 2);
    free(json);
}

/* With auth on (who checked), who req's events are to rules: its user
 * (none for the token), id 0 (the HTTP listener's; NATS client ids start
 * at 1), its peer's address and whether it came over HTTPS. */
static void set_ident(http_t *h, struct evhttp_request *req, const http_who_t *who)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    char *ip = NULL; /* evhttp's */
    ev_uint16_t port = 0;
    h->has_ident = who && who->checked;
    memset(&h->ident, 0, sizeof h->ident);
    if (!h->has_ident)
        return;
    snprintf(h->ident.user, sizeof h->ident.user, "%s", who->user);
    if (conn)
        evhttp_connection_get_peer(conn, &ip, &port);
    if (ip)
        snprintf(h->ident.addr, sizeof h->ident.addr, strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, (unsigned)port);
    h->ident.tls = bev && bufferevent_openssl_get_ssl(bev) != NULL;
}

/* GET /v1/tail or /api/tail: a tail of the query's subject. */
static void tail_query(http_t *h, struct evhttp_request *req, const struct evhttp_uri *u)
{
    struct evkeyvalq q;
    const char *query = u ? evhttp_uri_get_query(u) : NULL;
    memset(&q, 0, sizeof q);
    if (query && evhttp_parse_query_str(query, &q) == 0) {
        tail(h, req, evhttp_find_header(&q, "subject"));
        evhttp_clear_headers(&q);
    } else {
        tail(h, req, NULL);
    }
}

/* ---- the console ------------------------------------------------------------------ */

/* What a console page may load and ask: its own files and /api/ only. */
#define CONSOLE_CSP                                                                                              \
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "       \
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/* GET / and /assets/...: the console's files.  1 when path is one of
 * theirs (answered), else 0. */
static int console_file(http_t *h, struct evhttp_request *req, const char *path)
{
    const char *want = !strcmp(path, "/") ? "/index.html" : path;
    if (strcmp(want, "/index.html") && strncmp(want, "/assets/", 8))
        return 0;
    if (!&console_nassets) {
        reply_error(h, req, 404, "Not Found", "this build of tide has no console (make builds it from console/)");
        return 1;
    }
    for (size_t i = 0; i < console_nassets; i++) {
        const console_asset_t *a = &console_assets[i];
        if (strcmp(a->path, want))
            continue;
        struct evkeyvalq *out = evhttp_request_get_output_headers(req);
        evhttp_add_header(out, "Cache-Control", a->immutable ? "public, max-age=31536000, immutable" : "no-cache");
        evhttp_add_header(out, "Content-Security-Policy", CONSOLE_CSP);
        evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
        evhttp_add_header(out, "Referrer-Policy", "no-referrer");
        reply(req, 200, "OK", a->type, (const char *)a->data, a->len);
        return 1;
    }
    reply_error(h, req, 404, "Not Found", "no such console file");
    return 1;
}

/* Answers a streams' admin verb's JSON answer: 200, or 400 (404 for an
 * unknown stream) when it is {"ok":false,"error":...}. */
static void reply_admin_answer(http_t *h, struct evhttp_request *req, char *json, size_t len)
{
    cJSON *a = json ? cJSON_ParseWithLength(json, len) : NULL;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(a, "error");
    if (!json) {
        reply_error(h, req, 404, "Not Found", "this node has no streams");
    } else if (cJSON_IsString(err) && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "ok"))) {
        int unknown = !strncmp(err->valuestring, "no stream", 9) || !strncmp(err->valuestring, "no such stream", 14);
        reply_error(h, req, unknown ? 404 : 400, unknown ? "Not Found" : "Bad Request", err->valuestring);
    } else {
        reply(req, 200, "OK", "application/json", json, len);
    }
    cJSON_Delete(a);
    free(json);
}

/* Parses the query of u into q (which the caller clears) and points stream
 * at its stream= and from at its from_seq= (NULL when absent, *seq then
 * left as it was): 0, or -1 when stream is missing or too long or from_seq
 * is not a number. */
static int stream_query(const struct evhttp_uri *u, struct evkeyvalq *q, const char **stream, const char **from,
                        unsigned long long *seq)
{
    const char *query = u ? evhttp_uri_get_query(u) : NULL;
    char *end = NULL;
    memset(q, 0, sizeof *q);
    *stream = query && evhttp_parse_query_str(query, q) == 0 ? evhttp_find_header(q, "stream") : NULL;
    *from = *stream ? evhttp_find_header(q, "from_seq") : NULL;
    if (*from)
        *seq = strtoull(*from, &end, 10);
    if (!*stream || !**stream || strlen(*stream) >= STREAM_NAME_MAX || (*from && (!**from || *end)))
        return -1;
    return 0;
}

/* Answers req with the streams' admin verb's answer to the request o
 * (which it frees), as reply_admin_answer says. */
static void reply_console_admin(http_t *h, struct evhttp_request *req, const char *verb, cJSON *o)
{
    char *p = o ? cJSON_PrintUnformatted(o) : NULL;
    size_t len = 0;
    char *json = p ? console_admin(h->console, verb, p, strlen(p), &len) : NULL;
    cJSON_free(p);
    cJSON_Delete(o);
    reply_admin_answer(h, req, json, len);
}

/* GET /api/dlq?stream=S[&from_seq=N]: a page of the dead letters S holds. */
static void api_dlq(http_t *h, struct evhttp_request *req, const struct evhttp_uri *u)
{
    struct evkeyvalq q;
    const char *stream, *from;
    unsigned long long seq = 1;
    if (stream_query(u, &q, &stream, &from, &seq) < 0) {
        reply_error(h, req, 400, "Bad Request", "GET /api/dlq?stream=<name>[&from_seq=<n>]");
    } else {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "stream", stream);
        json_add_uint(o, "from_seq", seq);
        json_add_uint(o, "limit", 100);
        reply_console_admin(h, req, "DLQ.SHOW", o);
    }
    evhttp_clear_headers(&q);
}

/* Answers req with a rule-history verb's JSON (console_rules): 200, or
 * its error as 404 (no history), 409 (no shadow, busy) or 400. */
static void reply_rules_answer(http_t *h, struct evhttp_request *req, char *json, size_t len)
{
    cJSON *a = json ? cJSON_ParseWithLength(json, len) : NULL;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(a, "error");
    if (!json) {
        reply_error(h, req, 500, "Internal Server Error", "out of memory");
    } else if (cJSON_IsString(err) && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "ok"))) {
        const char *e = err->valuestring;
        int code = !strncmp(e, "no rule history", 15) || !strncmp(e, "no scripts", 10) ? 404
                   : !strncmp(e, "no shadow", 9) || !strncmp(e, "no canary", 9) || !strcmp(e, "busy") ? 409
                                                                                        : 400;
        reply_error(h, req, code, code == 404 ? "Not Found" : code == 409 ? "Conflict" : "Bad Request", e);
    } else {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
        reply(req, 200, "OK", "application/json", json, len);
    }
    cJSON_Delete(a);
    free(json);
}

/* GET /api/rules/history and /api/rules/diff: RULES.HISTORY, RULES.DIFF. */
static void api_rules_view(http_t *h, struct evhttp_request *req, const char *verb)
{
    size_t len = 0;
    char *json = console_rules(h->console, verb, h->who && h->who->checked ? h->who->user : NULL, "", 0, &len);
    reply_rules_answer(h, req, json, len);
}

/* POST /api/rules/promote, /stop, /rollback {"rev":N}, /shadow {"path"},
 * /canary {"path","percent",...}: the verb's answer, as the caller.  0
 * (answered), or a status with err. */
static int api_rules_post(http_t *h, struct evhttp_request *req, const char *path, const cJSON *doc, char *err,
                          size_t errsz)
{
    const char *verb = !strcmp(path, "/api/rules/promote") ? "RULES.PROMOTE"
                       : !strcmp(path, "/api/rules/stop")  ? "RULES.STOP"
                       : !strcmp(path, "/api/rules/shadow") ? "RULES.SHADOW"
                       : !strcmp(path, "/api/rules/canary") ? "RULES.CANARY"
                                                           : "RULES.ROLLBACK";
    char *p = NULL, *json;
    size_t len = 0;
    uint64_t rev = 0;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(doc, "rev");
    int shadow = !strcmp(verb, "RULES.SHADOW");
    if (shadow || !strcmp(verb, "RULES.CANARY")) {
        if (!(p = console_candidate_request(h->console, shadow ? "shadow" : "canary", doc, err, errsz)))
            return 400;
    } else if (!strcmp(verb, "RULES.ROLLBACK")) {
        if (!r || json_get_uint(r, &rev) < 0 || !rev) {
            snprintf(err, errsz, "POST /api/rules/rollback {\"rev\": n}");
            return 400;
        }
        cJSON *o = cJSON_CreateObject();
        json_add_uint(o, "rev", rev);
        p = o ? json_print(o, &len) : NULL;
        cJSON_Delete(o);
        if (!p) {
            snprintf(err, errsz, "out of memory");
            return 500;
        }
    }
    json = console_rules(h->console, verb, h->who && h->who->checked ? h->who->user : NULL, p ? p : "",
                         p ? strlen(p) : 0, &len);
    free(p);
    reply_rules_answer(h, req, json, len);
    return 0;
}

/* True for the console's actions (POST). */
static int api_action(const char *path)
{
    static const char *const actions[] = {"/api/trace", "/api/dlq/replay", "/api/rules/promote", "/api/rules/stop",
                                          "/api/rules/rollback", "/api/rules/shadow", "/api/rules/canary", NULL};
    for (int i = 0; actions[i]; i++)
        if (!strcmp(path, actions[i]))
            return 1;
    return 0;
}

/* GET /api/source?rule=N: the source around a rule. */
static void api_source(http_t *h, struct evhttp_request *req, const struct evhttp_uri *u)
{
    struct evkeyvalq q;
    const char *query = u ? evhttp_uri_get_query(u) : NULL;
    memset(&q, 0, sizeof q);
    const char *rule = query && evhttp_parse_query_str(query, &q) == 0 ? evhttp_find_header(&q, "rule") : NULL;
    char *end = NULL;
    long n = rule ? strtol(rule, &end, 10) : -1;
    size_t len = 0;
    char *json = rule && *rule && !*end && n >= 0 && n < 1000000 ? console_source_json(h->console, (int)n, &len) : NULL;
    if (!rule || !*rule || *end || n < 0)
        reply_error(h, req, 400, "Bad Request", "GET /api/source?rule=<n> (its place in /v1/rules, from 0)");
    else if (!json)
        reply_error(h, req, 404, "Not Found", "no such rule");
    else
        reply(req, 200, "OK", "application/json", json, len);
    free(json);
    evhttp_clear_headers(&q);
}

/* GET /api/events?stream=S[&from_seq=N][&since=T][&until=T][&subject=P]:
 * a page of the messages S holds (STREAM.EVENTS), at most 50. */
static void api_events(http_t *h, struct evhttp_request *req, const struct evhttp_uri *u)
{
    static const char *const keys[] = {"since", "until", "subject", NULL};
    struct evkeyvalq q;
    const char *stream, *from;
    unsigned long long seq = 0;
    if (stream_query(u, &q, &stream, &from, &seq) < 0) {
        reply_error(h, req, 400, "Bad Request",
                    "GET /api/events?stream=<name>[&from_seq=<n>][&since=<time>][&until=<time>][&subject=<pattern>]");
        evhttp_clear_headers(&q);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "stream", stream);
    if (from)
        json_add_uint(o, "from_seq", seq);
    for (int i = 0; keys[i]; i++) {
        const char *v = evhttp_find_header(&q, keys[i]);
        if (v && *v)
            cJSON_AddStringToObject(o, keys[i], v);
    }
    json_add_uint(o, "limit", 50);
    reply_console_admin(h, req, "STREAM.EVENTS", o);
    evhttp_clear_headers(&q);
}

/* True for the paths of the console's views (GET). */
static int api_view(const char *path)
{
    static const char *const views[] = {"/api/flow",    "/api/rates",  "/api/tail",   "/api/streams", "/api/dlq",
                                        "/api/reloads", "/api/events", "/api/source", "/api/rules/history",
                                        "/api/rules/diff", NULL};
    for (int i = 0; views[i]; i++)
        if (!strcmp(path, views[i]))
            return 1;
    return 0;
}

/* GET /api/...: the console's JSON (console.h) and its tail. */
static void api(http_t *h, struct evhttp_request *req, const char *path, const struct evhttp_uri *u)
{
    char *json = NULL;
    size_t len = 0;
    if (!strcmp(path, "/api/tail")) {
        tail_query(h, req, u);
        return;
    }
    if (!strcmp(path, "/api/dlq")) {
        api_dlq(h, req, u);
        return;
    }
    if (!strcmp(path, "/api/events")) {
        api_events(h, req, u);
        return;
    }
    if (!strcmp(path, "/api/source")) {
        api_source(h, req, u);
        return;
    }
    if (!strcmp(path, "/api/flow"))
        json = console_flow_json(h->console, &len);
    else if (!strcmp(path, "/api/rates"))
        json = console_rates_json(h->console, &len);
    else if (!strcmp(path, "/api/streams"))
        json = console_streams_json(h->console, &len);
    else if (!strcmp(path, "/api/reloads"))
        json = console_reloads_json(h->console, &len);
    else if (!strcmp(path, "/api/rules/history") || !strcmp(path, "/api/rules/diff")) {
        api_rules_view(h, req, !strcmp(path, "/api/rules/diff") ? "RULES.DIFF" : "RULES.HISTORY");
        return;
    } else if (api_action(path)) {
        reply_error(h, req, 405, "Method Not Allowed", "POST for the console's actions");
        return;
    } else {
        reply_error(h, req, 404, "Not Found",
                    "unknown /api/ path; see /api/flow, /api/rates, /api/tail, /api/streams, /api/dlq, "
                    "/api/events, /api/source, /api/reloads, /api/rules/history, /api/rules/diff");
        return;
    }
    if (!json) {
        reply_error(h, req, 500, "Internal Server Error", "out of memory");
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    reply(req, 200, "OK", "application/json", json, len);
    free(json);
}

static void trace_step(void *ctx, const char *line)
{
    cJSON_AddItemToArray(ctx, cJSON_CreateString(line));
}

/* The header lines of a trace's {"headers":{"Name":"value"}} in extra
 * (n bytes): 0, or 400 with err. */
static int trace_headers(const cJSON *hd, char *extra, size_t n, char *err, size_t errsz)
{
    const cJSON *e;
    size_t o = 0;
    extra[0] = 0;
    if (hd && !cJSON_IsObject(hd)) {
        snprintf(err, errsz, "headers must be an object of strings");
        return 400;
    }
    cJSON_ArrayForEach(e, hd) {
        if (!cJSON_IsString(e) || !header_name_ok(e->string) || strpbrk(e->valuestring, "\r\n") ||
            strlen(e->string) + strlen(e->valuestring) + 5 > n - o) {
            snprintf(err, errsz, "header '%.100s': a token name and a one-line string, %zu bytes in all at most",
                     e->string, n - 1);
            return 400;
        }
        o += (size_t)snprintf(extra + o, n - o, "%s: %s\r\n", e->string, e->valuestring);
    }
    return 0;
}

/* POST /api/trace {"subject","data","headers"}: publishes a new envelope
 * with that data and answers the pipeline's steps for it, as the prompt's
 * trace() prints them.  0, or a status with err. */
static int api_trace(http_t *h, struct evhttp_request *req, cJSON *doc, char *err, size_t errsz)
{
    const cJSON *subject = cJSON_GetObjectItemCaseSensitive(doc, "subject");
    char extra[1024], id[37], when[64];
    script_host_t *sh = h->node->scripts;
    int code;
    if (!cJSON_IsString(subject)) {
        snprintf(err, errsz, "POST /api/trace {\"subject\": ..., \"data\": ..., \"headers\": {...}}");
        return 400;
    }
    if ((code = trace_headers(cJSON_GetObjectItemCaseSensitive(doc, "headers"), extra, sizeof extra, err, errsz)))
        return code;
    if (sh && script_tracing(sh)) {
        snprintf(err, errsz, "a trace is on already (tide repl --connect): try again when it is off");
        return 409;
    }
    cJSON *env = cJSON_CreateObject(), *steps = cJSON_CreateArray(), *data = cJSON_DetachItemFromObject(doc, "data");
    util_uuid4(id);
    util_now_rfc3339(when);
    cJSON_AddStringToObject(env, "specversion", "1.0");
    cJSON_AddStringToObject(env, "id", id);
    cJSON_AddStringToObject(env, "source", "console");
    cJSON_AddStringToObject(env, "type", subject->valuestring);
    cJSON_AddStringToObject(env, "time", when);
    cJSON_AddItemToObject(env, "data", data ? data : cJSON_CreateNull());
    if (sh)
        script_set_trace(sh, trace_step, steps);
    code = publish_envelope(h, NULL, extra, env, subject->valuestring, err, errsz);
    if (sh)
        script_set_trace(sh, NULL, NULL);
    cJSON_Delete(env);
    if (!code) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "subject", subject->valuestring);
        cJSON_AddStringToObject(o, "id", id);
        cJSON_AddItemToObject(o, "steps", steps);
        steps = NULL;
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        reply_json(req, 200, "OK", s ? s : "{}");
        cJSON_free(s);
    }
    cJSON_Delete(steps);
    return code;
}

/* POST /api/dlq/replay {"stream":S,"seq":n}: one dead letter published
 * again (DLQ.REPLAY).  0 (answered), or a status with err. */
static int api_replay(http_t *h, struct evhttp_request *req, const cJSON *doc, char *err, size_t errsz)
{
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(doc, "stream");
    uint64_t seq = 0;
    if (!cJSON_IsString(stream) || json_get_uint_member(doc, "seq", &seq) < 0 || !seq) {
        snprintf(err, errsz, "POST /api/dlq/replay {\"stream\": name, \"seq\": n}");
        return 400;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "stream", stream->valuestring);
    json_add_uint(o, "seq", seq);
    reply_console_admin(h, req, "DLQ.REPLAY", o);
    return 0;
}

/* POST /api/trace and /api/dlq/replay: the console's actions, for admin
 * users, same-origin, with a JSON body. */
static void api_post(http_t *h, struct evhttp_request *req, const char *path, const http_who_t *who)
{
    struct evkeyvalq *hd = evhttp_request_get_input_headers(req);
    char err[512], *nums = NULL, *body = NULL;
    size_t len = 0;
    cJSON *doc = NULL;
    int code = 0;
    int trace = !strcmp(path, "/api/trace");
    int rules = !strncmp(path, "/api/rules/", 11);
    if (!api_action(path))
        code = api_view(path) ? 405 : 404,
        snprintf(err, sizeof err, "POST is for /api/trace, /api/dlq/replay and /api/rules/shadow, canary, promote, stop, rollback");
    else if (cross_origin(hd))
        code = 403, snprintf(err, sizeof err, "cross-origin writes from a browser are refused");
    else if (who && who->checked && !who->admin)
        code = 403, snprintf(err, sizeof err, "this action is for users with admin = true");
    else if (!starts_with_ci(evhttp_find_header(hd, "Content-Type"), "application/json"))
        code = 415, snprintf(err, sizeof err, "send Content-Type application/json");
    else if (!(body = body_of(req, &len)))
        code = 500, snprintf(err, sizeof err, "out of memory");
    else if (!cJSON_IsObject(doc = json_parse(body, len, &nums)))
        code = 400, snprintf(err, sizeof err, "the body must be a JSON object");
    else
        code = trace   ? api_trace(h, req, doc, err, sizeof err)
               : rules ? api_rules_post(h, req, path, doc, err, sizeof err)
                       : api_replay(h, req, doc, err, sizeof err);
    if (code)
        reply_error(h, req, code, code == 404 ? "Not Found" : code == 405 ? "Method Not Allowed" : code == 403 ? "Forbidden" : code == 415
                    ? "Unsupported Media Type" : code == 409 ? "Conflict" : code == 413 ? "Payload Too Large"
                    : code == 500 ? "Internal Server Error" : "Bad Request", err);
    cJSON_Delete(doc);
    free(nums);
    free(body);
}

/* Answers req as who (NULL or unchecked: the server has no auth). */
static void route(http_t *h, struct evhttp_request *req, const http_who_t *who)
{
    const char *uri = evhttp_request_get_uri(req);
    /* Nonconformant: let "subject=order.>" through unescaped, as curl sends it. */
    struct evhttp_uri *u = evhttp_uri_parse_with_flags(uri, EVHTTP_URI_NONCONFORMANT);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (!path || !*path)
        path = "/";
    char *decoded = evhttp_uridecode(path, 0, NULL);
    path = decoded ? decoded : path;
    const char *query = u ? evhttp_uri_get_query(u) : NULL;
    h->who = who;
    set_ident(h, req, who);
    if (query && strlen(query) > HTTP_QUERY_MAX) {
        char msg[96];
        snprintf(msg, sizeof msg, "a query string is at most %d bytes", HTTP_QUERY_MAX);
        reply_error(h, req, 414, "URI Too Long", msg);
    } else if (cmd == EVHTTP_REQ_POST && (!strcmp(path, "/") || !strcmp(path, "/v1/events") ||
                                   !strncmp(path, "/v1/publish/", 12))) {
        ingest(h, req, path);
    } else if (cmd == EVHTTP_REQ_POST && !strncmp(path, "/api/", 5)) {
        api_post(h, req, path, who);
    } else if (cmd != EVHTTP_REQ_GET) {
        reply_error(h, req, 405, "Method Not Allowed", "GET for views, POST / or /v1/publish/<subject> for events");
    } else if (!strcmp(path, "/healthz")) {
        reply_json(req, 200, "OK", "{\"status\":\"ok\"}");
    } else if (!strcmp(path, "/readyz")) {
        script_host_t *sh = h->node->scripts;
        script_stats_t st;
        if (sh)
            script_get_stats(sh, &st);
        char failed[600];
        if (sh && strcmp(st.last_reload, "ok"))
            reply_error(h, req, 503, "Service Unavailable", "the last script reload failed");
        else if (storage_failed(h, failed, sizeof failed))
            reply_error(h, req, 503, "Service Unavailable", failed);
        else if (h->node->cluster && !cluster_ready(h->node->cluster, failed, sizeof failed))
            reply_error(h, req, 503, "Service Unavailable", failed);
        else
            reply_json(req, 200, "OK", "{\"status\":\"ready\"}");
    } else if (!strcmp(path, "/metrics")) {
        metrics(h, req);
    } else if (!strcmp(path, "/v1/stats") || !strcmp(path, "/v1/rules") || !strcmp(path, "/v1/streams") ||
               !strcmp(path, "/v1/consumers")) {
        if (admin_view_ok(h, req, who))
            admin_view(h, req, path);
    } else if (!strcmp(path, "/v1/tail")) {
        tail_query(h, req, u);
    } else if (!strncmp(path, "/api/", 5)) {
        api(h, req, path, u);
    } else if (console_file(h, req, path)) {
        /* answered */
    } else {
        reply_error(h, req, 404, "Not Found", "unknown path; see /v1/stats, /metrics, /healthz");
    }
    h->who = NULL;
    h->has_ident = 0;
    free(decoded);
    if (u)
        evhttp_uri_free(u);
}

static void on_auth_resume(void *ctx, struct evhttp_request *req, const http_who_t *who)
{
    route(ctx, req, who);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    http_t *h = arg;
    http_who_t who;
    set_idle_timeout(h); /* a reload may have changed it */
    h->requests++;
    /* Health is for probes, which carry no credentials. */
    const char *uri = evhttp_request_get_uri(req);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && (!strcmp(uri, "/healthz") || !strncmp(uri, "/healthz?", 9))) {
        route(h, req, NULL);
        return;
    }
    int rc = http_auth_check(h->auth, server_auth(h->srv), req, &who);
    if (rc == HTTP_AUTH_PASS)
        route(h, req, &who);
    else if (rc == HTTP_AUTH_REFUSED)
        h->rejected++;
}

_Static_assert(sizeof HTTP_REFUSED_BODY - 1 == 62, "HTTP_REFUSED_LEN is the length of HTTP_REFUSED_BODY");

/* ---- the listener ------------------------------------------------------------------ */

typedef struct face_find {
    struct evhttp *eh;
    http_t *h;
} face_find_t;

static int face_of_event(const struct event_base *base, const struct event *ev, void *arg)
{
    face_find_t *f = arg;
    http_t *h = event_get_callback_arg(ev);
    (void)base;
    if (event_get_callback(ev) != on_heartbeat || h->eh != f->eh)
        return 0;
    f->h = h;
    return 1;
}

static void on_relisten(evutil_socket_t fd, short what, void *arg)
{
    http_t *h = arg;
    (void)fd;
    (void)what;
    evconnlistener_enable(h->listener);
}

/*
 * An accept on the HTTP listener failed.  evhttp_bind_listener makes evhttp
 * the listener's context, so the face is found by its heartbeat event on
 * the loop (a walk over the loop's events, on this rare path only).  With
 * no descriptor left (EMFILE, ENFILE) the server's reserve descriptor lets
 * the waiting connection be accepted, told 503 and closed: it does not sit
 * in the backlog waking the loop at every turn.  Any other failure (or no
 * reserve) rests the listener for HTTP_ACCEPT_PAUSE_MS instead of spinning.
 */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    face_find_t f = {arg, NULL};
    event_base_foreach_event(evconnlistener_get_base(lev), face_of_event, &f);
    EVUTIL_SET_SOCKET_ERROR(err);
    if (!f.h) {
        log_error("HTTP accept failed: %s", evutil_socket_error_to_string(err));
        return;
    }
    if (server_refuse_pending(f.h->srv, evconnlistener_get_fd(lev), HTTP_REFUSED, sizeof HTTP_REFUSED - 1))
        return;
    struct timeval tv = {0, HTTP_ACCEPT_PAUSE_MS * 1000};
    evconnlistener_disable(lev);
    evtimer_add(f.h->relisten, &tv);
    if (time(NULL) != f.h->accept_error_logged) {
        f.h->accept_error_logged = time(NULL);
        log_error("HTTP accept failed: %s; pausing the listener", evutil_socket_error_to_string(err));
    }
}

/* Serves eh's requests on lev (which eh then owns and frees). */
static int face_bind(http_t *h, struct evconnlistener *lev)
{
    if (!lev)
        return -1;
    if (!evhttp_bind_listener(h->eh, lev)) {
        evconnlistener_free(lev);
        return -1;
    }
    h->listener = lev;
    evconnlistener_set_error_cb(lev, on_accept_error);
    return 0;
}

#define LISTEN_FLAGS (LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC)

/* Binds host:port (the first address it resolves to) and listens there. */
static int face_listen(http_t *h, const char *host, int port)
{
    struct evutil_addrinfo hints, *res = NULL;
    char service[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_ADDRCONFIG;
    snprintf(service, sizeof service, "%d", port);
    if (evutil_getaddrinfo(host, service, &hints, &res) != 0 || !res)
        return -1;
    struct evconnlistener *lev =
        evconnlistener_new_bind(server_base(h->srv), NULL, NULL, LISTEN_FLAGS, 128, res->ai_addr, (int)res->ai_addrlen);
    evutil_freeaddrinfo(res);
    return face_bind(h, lev);
}

/* An HTTPS connection whose handshake is to run at the lowest priority. */
typedef struct handshake_lower {
    struct event *ev;
    struct bufferevent *bev; /* a reference of ours */
} handshake_lower_t;

/* Puts the handshake of a new HTTPS connection at SERVER_PRIORITY_HANDSHAKE,
 * as the NATS listener does (client_tls.c): the handshake is where TLS
 * costs CPU, and a storm of them must not hold up the clients already
 * connected.  Runs right after evhttp has given the bufferevent its socket
 * (which assigns its events anew, at the normal priority) and before its
 * first read.  The OpenSSL bufferevent assigns its events anew again once
 * the handshake is done: the connection then runs at the normal priority. */
static void on_handshake_lower(evutil_socket_t fd, short what, void *arg)
{
    handshake_lower_t *hl = arg;
    (void)fd;
    (void)what;
    SSL *ssl = bufferevent_openssl_get_ssl(hl->bev);
    if (ssl && !SSL_is_init_finished(ssl) && bufferevent_priority_set(hl->bev, SERVER_PRIORITY_HANDSHAKE) < 0)
        log_debug("http: cannot lower the priority of a TLS handshake");
    bufferevent_decref(hl->bev); /* (frees it if evhttp let go of it meanwhile) */
    event_free(hl->ev);
    free(hl);
}

/* An HTTPS bufferevent (tls_bufferevent_accepting) whose handshake goes to
 * the lowest priority once evhttp has set it up; NULL when out of memory. */
static struct bufferevent *https_connection(tls_context_t *t, struct event_base *base)
{
    handshake_lower_t *hl = calloc(1, sizeof *hl);
    struct bufferevent *bev = tls_bufferevent_accepting(t, base);
    if (!hl || !bev)
        goto fail;
    hl->ev = event_new(base, -1, 0, on_handshake_lower, hl);
    if (!hl->ev)
        goto fail;
    hl->bev = bev;
    bufferevent_incref(bev);
    /* Active now, at the normal priority: it runs in this pass of the
     * loop, after the listener's callback that is setting the connection
     * up, before the socket can be read. */
    event_active(hl->ev, EV_TIMEOUT, 0);
    return bev;
fail:
    if (bev)
        bufferevent_free(bev);
    free(hl);
    return NULL;
}

/* evhttp's bufferevent for each new connection: with tls { http = true }
 * an HTTPS one from the server's context of the moment (a reload's
 * certificate applies to the next connection), else a plain one. */
static struct bufferevent *new_connection(struct event_base *base, void *arg)
{
    http_t *h = arg;
    tls_context_t *t = server_tls(h->srv);
    if (t && tls_context_config(t)->http)
        return https_connection(t, base); /* NULL only out of memory (evhttp then
                                           * makes a plain one itself) */
    return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
}

/* The face without a listener: http_new and http_new_fd add one. */
static http_t *face_new(node_t *node)
{
    http_t *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->srv = node->srv;
    h->node = node;
    h->eh = evhttp_new(server_base(node->srv));
    h->relisten = evtimer_new(server_base(node->srv), on_relisten, h);
    if (!h->eh || !h->relisten)
        goto fail;
    /* Room for max_payload of data plus an envelope's attributes. */
    evhttp_set_max_body_size(h->eh, (ev_ssize_t)server_get_opts(h->srv)->max_payload + 4096);
    /* A request line and headers of at most HTTP_MAX_HEADERS bytes, and a
     * connection that sends nothing for http { idle_timeout } (half a
     * request, or idle between requests) is closed: a client cannot hold
     * memory or a descriptor by sending slowly or not at all. */
    evhttp_set_max_headers_size(h->eh, HTTP_MAX_HEADERS);
    set_idle_timeout(h);
    evhttp_set_gencb(h->eh, on_request, h);
    evhttp_set_bevcb(h->eh, new_connection, h);
    if (!(h->auth = http_auth_new(h->srv, on_auth_resume, h)) || !(h->console = console_new(node)))
        goto fail;
    /* PubAcks for ingested events come to a subject of our own, in the
     * server's inboxes: no client can publish there, so an answer there is
     * the store's. */
    unsigned char rnd[8];
    evutil_secure_rng_get_bytes(rnd, sizeof rnd);
    snprintf(h->inbox, sizeof h->inbox, SERVER_INBOX_PREFIX "HTTP.%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1],
             rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    char pattern[64];
    snprintf(pattern, sizeof pattern, "%s.>", h->inbox);
    h->inbox_sub = server_subscribe_internal(h->srv, pattern, on_puback, h);
    http_cluster_joined(h);
    /* The heartbeat also names the face to on_accept_error: it must be
     * on the loop before the listener is. */
    struct timeval one = {1, 0};
    h->heartbeat = event_new(server_base(h->srv), -1, EV_PERSIST, on_heartbeat, h);
    if (!h->heartbeat || event_add(h->heartbeat, &one) < 0)
        goto fail;
    return h;
fail:
    http_free(h);
    return NULL;
}

http_t *http_new(node_t *node, const char *host, int port)
{
    http_t *h = face_new(node);
    if (!h || face_listen(h, host, port) < 0) {
        http_free(h);
        return NULL; /* the caller says how bad that is */
    }
    log_info("Listening for HTTP on %s:%d", host, port);
    return h;
}

http_t *http_new_fd(node_t *node, int fd)
{
    http_t *h = face_new(node);
    struct evconnlistener *lev = h ? evconnlistener_new(server_base(node->srv), NULL, NULL, LISTEN_FLAGS, 0, fd) : NULL;
    if (!lev) {
        evutil_closesocket(fd);
        goto fail;
    }
    if (face_bind(h, lev) < 0) /* lev, and fd with it, freed */
        goto fail;
    return h;
fail:
    http_free(h);
    return NULL;
}

void http_cluster_joined(http_t *h)
{
    if (!h || !h->node->cluster || h->cinbox[0])
        return;
    snprintf(h->cinbox, sizeof h->cinbox, "_INBOX.tide-http.%s", server_id(h->srv));
    if (cluster_inbox_open(h->node->cluster, h->cinbox, on_cluster_puback, h) < 0)
        h->cinbox[0] = '\0'; /* answered 202 without the PubAck, as before */
}

void http_cluster_left(http_t *h)
{
    if (!h || !h->cinbox[0])
        return;
    cluster_inbox_close(h->node->cluster);
    h->cinbox[0] = '\0';
}

void http_free(http_t *h)
{
    if (!h)
        return;
    /* Open tails end their replies, so their requests are freed with the connections. */
    for (int i = 0; i < MAX_TAILS; i++) {
        if (h->tails[i].live && h->tails[i].req) {
            h->tails[i].live = 0;
            evhttp_send_reply_end(h->tails[i].req);
            h->tails[i].req = NULL;
        }
    }
    /* Our subscriptions go with us (the face may stop before the server). */
    if (h->inbox_sub)
        server_unsubscribe_internal(h->srv, h->inbox_sub);
    http_cluster_left(h);
    for (int i = 0; i < MAX_TAILS; i++)
        if (h->tails[i].sub)
            server_unsubscribe_internal(h->srv, h->tails[i].sub);
    /* Requests still waiting for PubAcks: evhttp_free frees them with their connections. */
    while (h->waits)
        wait_free(h->waits);
    http_auth_free(h->auth);
    console_free(h->console);
    if (h->heartbeat)
        event_free(h->heartbeat);
    if (h->relisten)
        event_free(h->relisten);
    if (h->eh)
        evhttp_free(h->eh);
    free(h);
}
