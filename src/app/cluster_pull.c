/* cluster_pull.c - handlers on jetstream-backed streams; see cluster_pull.h. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>

#include "cluster.h"
#include "cluster_kv.h"
#include "cluster_pull.h"
#include "log.h"

enum pc_state { PC_WAITING, PC_CREATING, PC_PULLING, PC_FAILED };

static const char *const pc_state_names[] = {"waiting", "creating", "pulling", "failed"};

/* Events one pull asks for: PULL_FIRST until the handlers' time per event
 * is known, then what they get through in a quarter of ack_wait, between
 * 1 and PULL_MAX (a pull's events wait for the handlers one after another,
 * their ack_wait running: too many at once and the last ones go to other
 * nodes while still waiting here, too few and the node waits for pulls).
 * Seconds a pull waits on the server for them.  A pull that gets neither
 * events nor its end (408) within PULL_EXPIRES + PULL_LOST seconds was
 * lost (sent while the consumer had no leader yet, or before a reconnect)
 * and is asked again at the next sync. */
#define PULL_FIRST 4
#define PULL_MAX 256
#define PULL_EXPIRES 1.0
#define PULL_LOST 0.5
/* Seconds before a create without an answer, or a failed one, is tried again. */
#define PULL_RETRY 2.0
/* Seconds a dead letter waits for its PubAck; after a refused one, the
 * delay of the -NAK that tries it again. */
#define DEAD_LETTER_WAIT 10.0
#define DEAD_LETTER_RETRY 5.0
/* The delay of the -NAK that sends back an event the node will not handle
 * (its consumer reloaded away): past the end of the node's open pull,
 * which would otherwise get it again at once. */
#define SEND_BACK_DELAY (PULL_EXPIRES + PULL_LOST)
/* Seconds before a batch due while a rule runs is looked at again. */
#define BATCH_BUSY_RETRY 0.01

/* An event pulled and not yet handed to the handlers: a copy of what they
 * and its verdict need (the natsMsg goes back to libnats at once, since
 * one destroyed after the library closed uses its freed state). */
typedef struct gathered {
    char *buf;                  /* one allocation: subject, reply, header block, payload */
    const char *subject, *reply, *hdr, *payload;
    size_t subject_len, hdr_len, payload_len;
    uint64_t seq;
    uint32_t deliveries;
} gathered_t;

typedef struct pull_consumer {
    consumer_cfg_t cfg;
    enum pc_state state;
    unsigned token;    /* of the create in flight */
    double asked;      /* when the create or the last pull went */
    int outstanding;   /* events the last pull may still bring */
    double cost;       /* s: the handlers' time per event, a moving average (0: none measured) */
    uint64_t handled, acked, naked, redelivered, dead_lettered, given_up, dead_letter_failures, pending;
    char error[300];
    /* The batch filling for a batch handler (one event for the others). */
    gathered_t *gathered;
    int ngathered, capgathered;
    double gathered_since; /* its first event's arrival */
    double progressed;     /* its last +WPI (or its first event's arrival) */
} pull_consumer_t;

/* A dead letter waiting for JetStream's PubAck before its event is +TERM'd. */
typedef struct dead_letter {
    struct dead_letter *next;
    unsigned token;
    double sent;
    char consumer[STREAM_NAME_MAX];
    char *ack_subject; /* the event's $JS.ACK reply, owned */
} dead_letter_t;

/* An +ACK waiting for the bucket writes its handler queued. */
typedef struct held_ack {
    struct held_ack *next;
    uint64_t ticket; /* cluster_kv_ticket after the handler */
    char *ack_subject;
} held_ack_t;

struct cluster_pull {
    natsConnection *nc;
    struct event *batch_timer; /* the next batch due (wait over, or a +WPI for it) */
    script_host_t *scripts;
    cluster_js_t *js;
    char inbox[128];
    pull_consumer_t *consumers;
    int n;
    unsigned next_token;
    dead_letter_t *dead_letters;
    cluster_kv_t *kv;     /* the buckets the handlers write, or NULL */
    held_ack_t *held, *held_tail; /* acks waiting for them, oldest first */
    int paused;       /* the upstream went away and has not come back */
    uint64_t pauses;  /* how often */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void gathered_release(cluster_pull_t *p, pull_consumer_t *pc, int nak);
static void batch_timer_fired(evutil_socket_t fd, short what, void *arg);
static void batch_arm(cluster_pull_t *p);

cluster_pull_t *cluster_pull_new(natsConnection *nc, struct event_base *base, script_host_t *scripts,
                                 cluster_js_t *js, const char *inbox)
{
    cluster_pull_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    if (!(p->batch_timer = evtimer_new(base, batch_timer_fired, p))) {
        free(p);
        return NULL;
    }
    p->nc = nc;
    p->scripts = scripts;
    p->js = js;
    snprintf(p->inbox, sizeof p->inbox, "%s", inbox);
    cluster_pull_rules_changed(p);
    return p;
}

void cluster_pull_set_connection(cluster_pull_t *p, natsConnection *nc)
{
    if (p)
        p->nc = nc;
}

void cluster_pull_free(cluster_pull_t *p)
{
    if (!p)
        return;
    for (dead_letter_t *d = p->dead_letters, *next; d; d = next) {
        next = d->next;
        free(d->ack_subject);
        free(d);
    }
    for (held_ack_t *a = p->held, *next; a; a = next) { /* not acked: JetStream offers them again */
        next = a->next;
        free(a->ack_subject);
        free(a);
    }
    /* Batches not handed over: JetStream offers them again after ack_wait
     * (the connection is closed by now, no -NAK can go). */
    for (int i = 0; i < p->n; i++)
        gathered_release(p, &p->consumers[i], 0);
    event_free(p->batch_timer);
    free(p->consumers);
    free(p);
}

/* What JetStream is told: a change of any of these makes the consumer again. */
static int same_consumer(const consumer_cfg_t *a, const consumer_cfg_t *b)
{
    return !strcmp(a->name, b->name) && !strcmp(a->stream, b->stream) && !strcmp(a->filter, b->filter) &&
           a->ack_wait == b->ack_wait && a->max_ack_pending == b->max_ack_pending &&
           a->deliver_policy == b->deliver_policy && a->start_seq == b->start_seq;
}

void cluster_pull_rules_changed(cluster_pull_t *p)
{
    const consumer_cfg_t *decl = NULL;
    int n = script_cluster_consumers(p->scripts, &decl);
    pull_consumer_t *fresh = n ? calloc((size_t)n, sizeof *fresh) : NULL;
    if (n && !fresh) {
        log_error("cluster: out of memory taking the reloaded jetstream consumers; keeping the old ones");
        return;
    }
    for (int i = 0; i < n; i++) {
        fresh[i].cfg = decl[i];
        for (int k = 0; k < p->n; k++) {
            if (!same_consumer(&p->consumers[k].cfg, &decl[i]))
                continue;
            fresh[i] = p->consumers[k]; /* its state, counters and batch */
            fresh[i].cfg = decl[i];     /* max_deliver, backoff, dead_letter apply here */
            p->consumers[k].gathered = NULL;
            p->consumers[k].ngathered = 0;
        }
    }
    /* A consumer dropped or made again: what its batch held goes back to
     * JetStream at once, for another node (or the new consumer). */
    for (int k = 0; k < p->n; k++)
        gathered_release(p, &p->consumers[k], 1);
    free(p->consumers);
    p->consumers = fresh;
    p->n = n;
    cluster_pull_sync(p, 0);
    /* The batches kept: handed over under the new rules' batch and wait,
     * or sent back when no handler takes them any more. */
    batch_arm(p);
}

static pull_consumer_t *find(cluster_pull_t *p, const char *name, size_t len)
{
    for (int i = 0; i < p->n; i++)
        if (strlen(p->consumers[i].cfg.name) == len && !memcmp(p->consumers[i].cfg.name, name, len))
            return &p->consumers[i];
    return NULL;
}

static void consumer_fail(pull_consumer_t *pc, const char *why)
{
    if (pc->state != PC_FAILED || strcmp(pc->error, why))
        log_error("cluster: consumer '%s' (%s): %s", pc->cfg.name, pc->cfg.where, why);
    pc->state = PC_FAILED;
    snprintf(pc->error, sizeof pc->error, "%s", why);
}

/* The body of $JS.API.CONSUMER.DURABLE.CREATE, malloc'd (cJSON_free). */
static char *create_body(const consumer_cfg_t *c)
{
    static const char *const policies[] = {"all", "new", "by_start_sequence", "by_start_time", "last"};
    cJSON *o = cJSON_CreateObject(), *cfg = o ? cJSON_AddObjectToObject(o, "config") : NULL;
    char *text = NULL;
    if (!cfg)
        goto fail;
    cJSON_AddStringToObject(o, "stream_name", c->stream);
    cJSON_AddStringToObject(cfg, "durable_name", c->name);
    cJSON_AddStringToObject(cfg, "deliver_policy", policies[c->deliver_policy]);
    if (c->deliver_policy == DELIVER_BY_START_SEQ)
        cJSON_AddNumberToObject(cfg, "opt_start_seq", (double)c->start_seq);
    cJSON_AddStringToObject(cfg, "ack_policy", "explicit");
    cJSON_AddNumberToObject(cfg, "ack_wait", c->ack_wait * 1e9);
    /* tide counts deliveries itself, so that an event is dead-lettered
     * (and its PubAck seen) before JetStream stops offering it. */
    cJSON_AddNumberToObject(cfg, "max_deliver", -1);
    if (c->filter[0])
        cJSON_AddStringToObject(cfg, "filter_subject", c->filter);
    if (c->max_ack_pending > 0)
        cJSON_AddNumberToObject(cfg, "max_ack_pending", (double)c->max_ack_pending);
    cJSON_AddStringToObject(cfg, "replay_policy", "instant");
    text = cJSON_PrintUnformatted(o);
fail:
    cJSON_Delete(o);
    return text;
}

static void consumer_create(cluster_pull_t *p, pull_consumer_t *pc)
{
    char subject[300], reply[200], *body = create_body(&pc->cfg);
    if (!body) {
        consumer_fail(pc, "out of memory");
        return;
    }
    snprintf(subject, sizeof subject, "$JS.API.CONSUMER.DURABLE.CREATE.%s.%s", pc->cfg.stream, pc->cfg.name);
    /* Asked again, the create keeps its reply subject: an answer slower
     * than PULL_RETRY (a cluster busy electing leaders) still counts. */
    if (pc->state != PC_CREATING || !pc->token)
        pc->token = ++p->next_token;
    snprintf(reply, sizeof reply, "%s.a.%u", p->inbox, pc->token);
    pc->asked = now_s();
    pc->state = PC_CREATING;
    natsStatus s = natsConnection_PublishRequest(p->nc, subject, reply, body, (int)strlen(body));
    cJSON_free(body);
    if (s != NATS_OK) {
        char why[200];
        snprintf(why, sizeof why, "cannot ask the JetStream API: %s", natsStatus_GetText(s));
        consumer_fail(pc, why);
    }
}

/* How many events the handlers of pc get through in a quarter of its
 * ack_wait (PULL_FIRST before they ran), between 1 and PULL_MAX. */
static int pull_size(const pull_consumer_t *pc)
{
    if (pc->cost <= 0)
        return PULL_FIRST;
    double fit = pc->cfg.ack_wait / 4 / pc->cost;
    return fit < 1 ? 1 : fit > PULL_MAX ? PULL_MAX : (int)fit;
}

/* Asks for the next events: pull_size, or a batch handler's batch when
 * larger, so that one pull can fill it (fewer under a small
 * max_ack_pending), the server holding the request PULL_EXPIRES seconds. */
static void consumer_pull(cluster_pull_t *p, pull_consumer_t *pc)
{
    char subject[300], reply[200], body[100];
    double wait;
    int batch = script_consumer_batch(p->scripts, pc->cfg.name, &wait), fit = pull_size(pc);
    if (batch < fit)
        batch = fit;
    if (pc->cfg.max_ack_pending > 0 && pc->cfg.max_ack_pending < batch)
        batch = (int)pc->cfg.max_ack_pending;
    snprintf(subject, sizeof subject, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", pc->cfg.stream, pc->cfg.name);
    snprintf(reply, sizeof reply, "%s.p.%s", p->inbox, pc->cfg.name);
    snprintf(body, sizeof body, "{\"batch\":%d,\"expires\":%.0f}", batch, PULL_EXPIRES * 1e9);
    pc->asked = now_s();
    pc->outstanding = batch;
    if (natsConnection_PublishRequestString(p->nc, subject, reply, body) != NATS_OK)
        pc->outstanding = 0; /* asked again at the next sync */
}

void cluster_pull_sync(cluster_pull_t *p, int force)
{
    double now = now_s();
    if (natsConnection_Status(p->nc) != NATS_CONN_STATUS_CONNECTED)
        return;
    if (p->paused && force) {
        p->paused = 0;
        if (p->n)
            log_info("cluster: handlers on jetstream consumers resume (pulling again)");
    }
    for (int i = 0; i < p->n; i++) {
        pull_consumer_t *pc = &p->consumers[i];
        if (!script_consumer_handled(p->scripts, pc->cfg.name) || !cluster_js_bound(p->js, pc->cfg.stream))
            continue;
        if (pc->state == PC_WAITING || (pc->state != PC_PULLING && now - pc->asked >= PULL_RETRY))
            consumer_create(p, pc);
        else if (pc->state == PC_PULLING &&
                 (force || pc->outstanding <= 0 || now - pc->asked > PULL_EXPIRES + PULL_LOST))
            consumer_pull(p, pc);
    }
    /* Dead letters without a PubAck: their events come back after ack_wait. */
    for (dead_letter_t **dp = &p->dead_letters, *d; (d = *dp);) {
        if (now - d->sent < DEAD_LETTER_WAIT) {
            dp = &d->next;
            continue;
        }
        *dp = d->next;
        free(d->ack_subject);
        free(d);
    }
}

void cluster_pull_pause(cluster_pull_t *p)
{
    /* The batches filling are dropped unanswered: a verdict would wait in
     * the reconnect buffer while JetStream offers them to other nodes
     * after ack_wait. */
    for (int i = 0; i < p->n; i++) {
        p->consumers[i].outstanding = 0;
        gathered_release(p, &p->consumers[i], 0);
    }
    if (p->paused)
        return;
    p->paused = 1;
    p->pauses++;
    if (p->n)
        log_warn("cluster: handlers on jetstream consumers paused until the upstream is back (what this node "
                 "holds unacked goes to other nodes after ack_wait)");
}

/* The verdict on an event, to its $JS.ACK subject. */
static void reply_ack(cluster_pull_t *p, const char *ack_subject, const char *body)
{
    natsConnection_PublishString(p->nc, ack_subject, body);
}

/* +ACK for an event whose handler returned: at once, or, when it queued
 * bucket writes, once JetStream answered them (cluster_pull_kv_settled), so
 * that an acked event's writes are stored. */
static void ack_handled(cluster_pull_t *p, const char *ack_subject)
{
    uint64_t ticket = cluster_kv_ticket(p->kv);
    held_ack_t *a = NULL;
    if (!p->held && cluster_kv_settled(p->kv, ticket)) {
        reply_ack(p, ack_subject, "+ACK");
        return;
    }
    if (!(a = calloc(1, sizeof *a)) || !(a->ack_subject = strdup(ack_subject))) {
        free(a); /* out of memory: not acked, JetStream offers it again after ack_wait */
        return;
    }
    a->ticket = ticket;
    if (p->held_tail)
        p->held_tail->next = a;
    else
        p->held = a;
    p->held_tail = a;
}

void cluster_pull_set_kv(cluster_pull_t *p, cluster_kv_t *kv)
{
    p->kv = kv;
}

void cluster_pull_kv_settled(cluster_pull_t *p)
{
    while (p->held && cluster_kv_settled(p->kv, p->held->ticket)) {
        held_ack_t *a = p->held;
        p->held = a->next;
        if (!p->held)
            p->held_tail = NULL;
        reply_ack(p, a->ack_subject, "+ACK");
        free(a->ack_subject);
        free(a);
    }
}

/* Copies the headers of an event's header block but those that must not
 * follow it to its dead letter (Nats-Msg-Id, Nats-Expected-*) into dl. */
static void copy_headers(const char *hdr, size_t len, natsMsg *dl)
{
    const char *end = hdr + len, *line = hdr ? memchr(hdr, '\n', len) : NULL; /* past "NATS/1.0" */
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line)), *colon;
        size_t n = (size_t)((eol ? eol : end) - line);
        char *kv = NULL;
        if (n && line[n - 1] == '\r')
            n--;
        colon = memchr(line, ':', n);
        if (colon && colon > line && (kv = strndup(line, n))) {
            char *val = kv + (colon - line) + 1;
            kv[colon - line] = '\0';
            val += strspn(val, " \t");
            if (strcasecmp(kv, "Nats-Msg-Id") && strncasecmp(kv, "Nats-Expected-", 14))
                natsMsgHeader_Add(dl, kv, val);
            free(kv);
        }
        line = eol;
    }
}

/* Gives the event up: to the consumer's dead_letter (its +TERM waits for
 * JetStream's PubAck there), or, without one, logged and +TERM'd. */
static void give_up(cluster_pull_t *p, pull_consumer_t *pc, const gathered_t *e, const char *reason,
                    const char *error)
{
    char reply[200], id[300], num[32];
    natsMsg *dl = NULL;
    dead_letter_t *d = NULL;
    if (!pc->cfg.dead_letter[0]) {
        pc->given_up++;
        log_warn("cluster: consumer '%s' gives up on %s (stream %s, seq %" PRIu64 ", %u deliveries): %s",
                 pc->cfg.name, e->subject, pc->cfg.stream, e->seq, e->deliveries, error);
        reply_ack(p, e->reply, "+TERM");
        return;
    }
    if (!(d = calloc(1, sizeof *d)) || !(d->ack_subject = strdup(e->reply)))
        goto fail;
    d->token = ++p->next_token;
    snprintf(reply, sizeof reply, "%s.a.%u", p->inbox, d->token);
    if (natsMsg_Create(&dl, pc->cfg.dead_letter, reply, e->payload, (int)e->payload_len) != NATS_OK)
        goto fail;
    copy_headers(e->hdr, e->hdr_len, dl);
    snprintf(id, sizeof id, "%s.%s.%" PRIu64, pc->cfg.stream, pc->cfg.name, e->seq);
    natsMsgHeader_Set(dl, "Tide-Original-Subject", e->subject);
    natsMsgHeader_Set(dl, "Tide-Reason", reason);
    natsMsgHeader_Set(dl, "Tide-Error", error);
    natsMsgHeader_Set(dl, "Tide-Stream", pc->cfg.stream);
    natsMsgHeader_Set(dl, "Tide-Consumer", pc->cfg.name);
    snprintf(num, sizeof num, "%" PRIu64, e->seq);
    natsMsgHeader_Set(dl, "Tide-Sequence", num);
    snprintf(num, sizeof num, "%u", e->deliveries);
    natsMsgHeader_Set(dl, "Tide-Deliveries", num);
    natsMsgHeader_Set(dl, "Tide-Dead-Letter-Id", id);
    natsMsgHeader_Set(dl, "Nats-Msg-Id", id); /* JetStream keeps one per event given up */
    if (natsConnection_PublishMsg(p->nc, dl) != NATS_OK)
        goto fail;
    snprintf(d->consumer, sizeof d->consumer, "%s", pc->cfg.name);
    d->sent = now_s();
    d->next = p->dead_letters;
    p->dead_letters = d;
    natsMsg_Destroy(dl);
    return;
fail:
    /* Not sent: the event comes back after ack_wait and is given up again. */
    pc->dead_letter_failures++;
    natsMsg_Destroy(dl);
    if (d)
        free(d->ack_subject);
    free(d);
}

/* A dead letter's PubAck (or its refusal): +TERM the event, or try again later. */
static void dead_letter_answer(cluster_pull_t *p, dead_letter_t *d, natsMsg *m)
{
    pull_consumer_t *pc = find(p, d->consumer, strlen(d->consumer));
    const char *status = NULL;
    cJSON *a = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    int stored = a && !cJSON_GetObjectItem(a, "error") && cJSON_GetObjectItem(a, "seq");
    if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status)
        stored = 0;
    if (stored) {
        reply_ack(p, d->ack_subject, "+TERM");
        if (pc)
            pc->dead_lettered++;
    } else {
        char nak[64];
        snprintf(nak, sizeof nak, "-NAK {\"delay\":%.0f}", DEAD_LETTER_RETRY * 1e9);
        reply_ack(p, d->ack_subject, nak);
        if (pc) {
            const cJSON *err = cJSON_GetObjectItem(a, "error");
            const cJSON *why = cJSON_GetObjectItem(err, "description");
            pc->dead_letter_failures++;
            /* no responders: no stream captures the subject, or the one
             * that does has no leader for a moment (an election) */
            log_warn("cluster: consumer '%s': JetStream did not store the dead letter on %s (%s); the event stays "
                     "and is given up again in %.0fs",
                     pc->cfg.name, pc->cfg.dead_letter,
                     status ? "no responders: no stream captures that subject, or its stream has no leader just now"
                     : cJSON_IsString(why) ? why->valuestring
                                           : "refused",
                     DEAD_LETTER_RETRY);
        }
    }
    cJSON_Delete(a);
}

/* What JetStream answered to a create (or to a dead letter). */
static void api_answer(cluster_pull_t *p, unsigned token, natsMsg *m)
{
    for (dead_letter_t **dp = &p->dead_letters, *d; (d = *dp); dp = &d->next) {
        if (d->token != token)
            continue;
        *dp = d->next;
        dead_letter_answer(p, d, m);
        free(d->ack_subject);
        free(d);
        return;
    }
    for (int i = 0; i < p->n; i++) {
        pull_consumer_t *pc = &p->consumers[i];
        if (pc->token != token || pc->state != PC_CREATING)
            continue;
        cJSON *a = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
        const cJSON *err = cJSON_GetObjectItem(a, "error");
        const char *status = NULL;
        char why[300];
        if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status) {
            consumer_fail(pc, "the cluster has no JetStream (no responders on $JS.API)");
        } else if (!a || err) {
            const char *desc = cJSON_GetStringValue(cJSON_GetObjectItem(err, "description"));
            snprintf(why, sizeof why, "the JetStream API answered: %s", desc ? desc : "not JSON");
            consumer_fail(pc, why);
        } else {
            log_info("cluster: consumer '%s' on stream '%s' ready in the cluster's JetStream; pulling", pc->cfg.name,
                     pc->cfg.stream);
            pc->state = PC_PULLING;
            pc->error[0] = '\0';
            consumer_pull(p, pc);
        }
        cJSON_Delete(a);
        return;
    }
}

/* The tokens of a $JS.ACK subject: stream, consumer, deliveries, stream
 * sequence, pending (both the 2.9 form and the one with domain and hash). */
typedef struct ack_info {
    const char *consumer;
    size_t consumer_len;
    uint32_t deliveries;
    uint64_t seq, pending;
} ack_info_t;

static int parse_ack(const char *s, ack_info_t *a)
{
    const char *t[12];
    size_t len[12];
    int n = 0;
    if (strncmp(s, "$JS.ACK.", 8))
        return -1;
    for (const char *q = s + 8; n < 12;) {
        const char *dot = strchr(q, '.');
        t[n] = q;
        len[n++] = dot ? (size_t)(dot - q) : strlen(q);
        if (!dot)
            break;
        q = dot + 1;
    }
    int b = n == 7 ? 0 : n >= 9 ? 2 : -1; /* where the stream's token is */
    if (b < 0)
        return -1;
    a->consumer = t[b + 1];
    a->consumer_len = len[b + 1];
    a->deliveries = (uint32_t)strtoul(t[b + 2], NULL, 10);
    a->seq = strtoull(t[b + 3], NULL, 10);
    a->pending = strtoull(t[b + 6], NULL, 10);
    return 0;
}

int cluster_pull_ack_seq(const char *reply, uint64_t *seq, uint64_t *pending)
{
    ack_info_t a;
    if (!reply || parse_ack(reply, &a) < 0)
        return -1;
    *seq = a.seq;
    *pending = a.pending;
    return 0;
}

/* The delay of a -NAK: the handler's, else the consumer's backoff for this delivery. */
static double nak_delay(const pull_consumer_t *pc, const stream_verdict_t *v, uint32_t deliveries)
{
    if (v->delay >= 0)
        return v->delay;
    if (!pc->cfg.nbackoff)
        return 0;
    int k = deliveries >= 1 ? (int)deliveries - 1 : 0;
    return pc->cfg.backoff[k < pc->cfg.nbackoff ? k : pc->cfg.nbackoff - 1];
}

/* What the handlers said of an event, to JetStream. */
static void settle(cluster_pull_t *p, pull_consumer_t *pc, const gathered_t *e, const stream_verdict_t *v)
{
    char body[80];
    int64_t max = pc->cfg.max_deliver;
    pc->handled++;
    if (v->kind == VERDICT_ACK) {
        ack_handled(p, e->reply);
        pc->acked++;
    } else if (v->kind == VERDICT_PROGRESS) {
        reply_ack(p, e->reply, "+WPI");
    } else if (v->kind == VERDICT_TERM) {
        give_up(p, pc, e, "term", v->error);
    } else if (max > 0 && e->deliveries >= (uint64_t)max) {
        give_up(p, pc, e, "max_deliver", v->error[0] ? v->error : "max_deliver reached");
    } else {
        snprintf(body, sizeof body, "-NAK {\"delay\":%.0f}", nak_delay(pc, v, e->deliveries) * 1e9);
        reply_ack(p, e->reply, body);
        pc->naked++;
    }
}

/* Copies m (a delivery whose $JS.ACK tokens are in a) into e: 0, or -1
 * when out of memory. */
static int gathered_copy(natsMsg *m, const ack_info_t *a, gathered_t *e)
{
    char *hdr = NULL, *q;
    size_t hlen = 0;
    const char *subject = natsMsg_GetSubject(m), *reply = natsMsg_GetReply(m);
    memset(e, 0, sizeof *e);
    if (cluster_header_block(m, &hdr, &hlen) < 0)
        return -1;
    e->subject_len = strlen(subject);
    e->payload_len = (size_t)natsMsg_GetDataLength(m);
    e->hdr_len = hlen;
    if (!(e->buf = q = malloc(e->subject_len + strlen(reply) + hlen + e->payload_len + 3))) {
        free(hdr);
        return -1;
    }
    e->subject = memcpy(q, subject, e->subject_len + 1), q += e->subject_len + 1;
    e->reply = strcpy(q, reply), q += strlen(reply) + 1;
    e->hdr = hlen ? memcpy(q, hdr, hlen) : NULL, q += hlen;
    e->payload = e->payload_len ? memcpy(q, natsMsg_GetData(m), e->payload_len) : "";
    e->seq = a->seq;
    e->deliveries = a->deliveries;
    free(hdr);
    return 0;
}

/* Sends back an event the node will not handle, for another node. */
static void send_back(cluster_pull_t *p, const char *ack_subject)
{
    char body[64];
    snprintf(body, sizeof body, "-NAK {\"delay\":%.0f}", SEND_BACK_DELAY * 1e9);
    reply_ack(p, ack_subject, body);
}

/* Lets go of the batch pc was filling: each event sent back (nak), so
 * that another node takes it now, or left for JetStream to offer again
 * after ack_wait. */
static void gathered_release(cluster_pull_t *p, pull_consumer_t *pc, int nak)
{
    for (int i = 0; i < pc->ngathered; i++) {
        if (nak)
            send_back(p, pc->gathered[i].reply);
        free(pc->gathered[i].buf);
    }
    free(pc->gathered);
    pc->gathered = NULL;
    pc->ngathered = pc->capgathered = 0;
}

/* Adds an event to pc's batch: 0, or -1 when out of memory (JetStream
 * offers it again after ack_wait). */
static int gather(pull_consumer_t *pc, natsMsg *m, const ack_info_t *a)
{
    if (pc->ngathered == pc->capgathered) {
        int cap = pc->capgathered ? pc->capgathered * 2 : 16;
        gathered_t *g = realloc(pc->gathered, (size_t)cap * sizeof *g);
        if (!g)
            return -1;
        pc->gathered = g;
        pc->capgathered = cap;
    }
    if (gathered_copy(m, a, &pc->gathered[pc->ngathered]) < 0)
        return -1;
    if (!pc->ngathered++)
        pc->gathered_since = pc->progressed = now_s();
    return 0;
}

/* Runs the handlers on the first n events of pc's batch (a batch handler
 * gets them as one list) and answers JetStream for each; the rest of the
 * batch stays.  The +ACKs of the events wait, as one handler's does, for
 * the bucket writes queued up to the handlers' end. */
static void hand_over(cluster_pull_t *p, pull_consumer_t *pc, int n)
{
    gathered_t *g = pc->gathered;
    proto_msg_t *pm = calloc((size_t)n, sizeof *pm);
    uint64_t *seqs = calloc((size_t)n, sizeof *seqs);
    uint32_t *deliveries = calloc((size_t)n, sizeof *deliveries);
    stream_verdict_t *v = calloc((size_t)n, sizeof *v);
    if (!pm || !seqs || !deliveries || !v)
        goto fail; /* out of memory: the events come back after ack_wait */
    for (int i = 0; i < n; i++) {
        pm[i].subject = g[i].subject;
        pm[i].subject_len = g[i].subject_len;
        pm[i].hdr = g[i].hdr;
        pm[i].hdr_len = g[i].hdr_len;
        pm[i].payload = g[i].payload;
        pm[i].payload_len = g[i].payload_len;
        seqs[i] = g[i].seq;
        deliveries[i] = g[i].deliveries;
    }
    double t0 = now_s();
    script_handle_events(p->scripts, pc->cfg.stream, pc->cfg.name, pm, seqs, deliveries, n, v);
    double per = (now_s() - t0) / n;
    if (per <= 0)
        per = 1e-7;
    pc->cost = pc->cost > 0 ? 0.8 * pc->cost + 0.2 * per : per;
    for (int i = 0; i < n; i++)
        settle(p, pc, &g[i], &v[i]);
fail:
    for (int i = 0; i < n; i++)
        free(g[i].buf);
    pc->ngathered -= n;
    memmove(g, g + n, (size_t)pc->ngathered * sizeof *g);
    if (pc->ngathered)
        pc->gathered_since = pc->progressed = now_s();
    free(pm), free(seqs), free(deliveries), free(v);
}

/* When pc's batch needs something done (handed over, sent back, or kept
 * from JetStream's ack_wait by a +WPI); -1 when it holds nothing.  A batch
 * is full at `batch` events, or at max_ack_pending when that is smaller
 * (JetStream hands out no more). */
static double batch_due(cluster_pull_t *p, const pull_consumer_t *pc, int *full)
{
    double wait, due;
    int batch = script_consumer_batch(p->scripts, pc->cfg.name, &wait);
    *full = 0;
    if (!pc->ngathered)
        return -1;
    if (batch <= 0 || pc->state != PC_PULLING)
        return 0;
    if (pc->cfg.max_ack_pending > 0 && pc->cfg.max_ack_pending < batch)
        batch = (int)pc->cfg.max_ack_pending;
    if (pc->ngathered >= batch) {
        *full = batch;
        return 0;
    }
    due = pc->gathered_since + wait;
    if (pc->progressed + pc->cfg.ack_wait / 2 < due)
        due = pc->progressed + pc->cfg.ack_wait / 2;
    return due;
}

/* Does what pc's batch needs now: hands over what is full or has waited
 * `wait` since its first event, sends a batch no handler takes any more
 * back, and +WPIs a batch whose wait is longer than half the ack_wait. */
static void batch_check(cluster_pull_t *p, pull_consumer_t *pc)
{
    double now = now_s(), wait;
    int full, batch;
    while (batch_due(p, pc, &full) >= 0 && full)
        hand_over(p, pc, full);
    if (batch_due(p, pc, &full) < 0)
        return;
    batch = script_consumer_batch(p->scripts, pc->cfg.name, &wait);
    if (batch <= 0 || pc->state != PC_PULLING) {
        gathered_release(p, pc, 1);
    } else if (now >= pc->gathered_since + wait) {
        hand_over(p, pc, pc->ngathered);
    } else if (now >= pc->progressed + pc->cfg.ack_wait / 2) {
        for (int i = 0; i < pc->ngathered; i++)
            reply_ack(p, pc->gathered[i].reply, "+WPI");
        pc->progressed = now;
    }
}

/* Sets the batch timer to the earliest batch due. */
static void batch_arm(cluster_pull_t *p)
{
    double first = -1, now = now_s();
    int full;
    for (int i = 0; i < p->n; i++) {
        double due = batch_due(p, &p->consumers[i], &full);
        if (due >= 0 && (first < 0 || due < first))
            first = due;
    }
    evtimer_del(p->batch_timer);
    if (first < 0)
        return;
    first = first > now ? first - now : 0;
    struct timeval tv = {(time_t)first, (suseconds_t)((first - (double)(time_t)first) * 1e6)};
    evtimer_add(p->batch_timer, &tv);
}

static void batch_timer_fired(evutil_socket_t fd, short what, void *arg)
{
    cluster_pull_t *p = arg;
    (void)fd;
    (void)what;
    if (script_is_processing(p->scripts)) { /* a rule runs: not inside it */
        struct timeval tv = {0, (suseconds_t)(BATCH_BUSY_RETRY * 1e6)};
        evtimer_add(p->batch_timer, &tv);
        return;
    }
    for (int i = 0; i < p->n; i++)
        batch_check(p, &p->consumers[i]);
    batch_arm(p);
}

/* An event from the consumer: into its batch (given up at once when its
 * dead letter was sent before and not confirmed). */
static void take_event(cluster_pull_t *p, pull_consumer_t *pc, natsMsg *m, const ack_info_t *a)
{
    int64_t max = pc->cfg.max_deliver;
    gathered_t e;
    pc->outstanding--;
    pc->pending = a->pending;
    pc->redelivered += a->deliveries > 1;
    if (max > 0 && a->deliveries > (uint64_t)max) {
        if (gathered_copy(m, a, &e) == 0)
            give_up(p, pc, &e, "max_deliver", "max_deliver reached");
        free(e.buf);
        return;
    }
    gather(pc, m, a);
}

void cluster_pull_message(cluster_pull_t *p, natsMsg *m)
{
    const char *subject = natsMsg_GetSubject(m), *reply = natsMsg_GetReply(m);
    size_t il = strlen(p->inbox);
    ack_info_t a;
    if (reply && parse_ack(reply, &a) == 0) {
        pull_consumer_t *pc = find(p, a.consumer, a.consumer_len);
        /* From a pull still open when the consumer was reloaded away. */
        if (!pc || pc->state != PC_PULLING || !script_consumer_handled(p->scripts, pc->cfg.name)) {
            send_back(p, reply);
            return;
        }
        take_event(p, pc, m, &a);
        /* The next pull goes out before the handlers run, so that its
         * events are on their way meanwhile. */
        if (pc->outstanding <= 0)
            consumer_pull(p, pc);
        batch_check(p, pc);
        batch_arm(p);
        return;
    }
    if (strncmp(subject, p->inbox, il) || strlen(subject) < il + 3 || subject[il] != '.')
        return;
    if (!strncmp(subject + il, ".a.", 3)) {
        api_answer(p, (unsigned)strtoul(subject + il + 3, NULL, 10), m);
        return;
    }
    if (!strncmp(subject + il, ".p.", 3)) {
        /* A status (408 the pull expired, 404 nothing yet, 409 the server
         * ended it): pull again now. */
        pull_consumer_t *pc = find(p, subject + il + 3, strlen(subject + il + 3));
        if (pc && pc->state == PC_PULLING) {
            pc->outstanding = 0;
            consumer_pull(p, pc);
        }
    }
}

void cluster_pull_status(cluster_pull_t *p, cJSON *o)
{
    cJSON *arr = cJSON_AddArrayToObject(o, "consumers");
    uint64_t lag = 0;
    for (int i = 0; arr && i < p->n; i++) {
        pull_consumer_t *pc = &p->consumers[i];
        cJSON *c = cJSON_CreateObject();
        if (!c)
            break;
        cJSON_AddStringToObject(c, "name", pc->cfg.name);
        cJSON_AddStringToObject(c, "stream", pc->cfg.stream);
        cJSON_AddStringToObject(c, "state", pc_state_names[pc->state]);
        cJSON_AddStringToObject(c, "error", pc->error);
        cJSON_AddNumberToObject(c, "handled", (double)pc->handled);
        cJSON_AddNumberToObject(c, "acked", (double)pc->acked);
        cJSON_AddNumberToObject(c, "naked", (double)pc->naked);
        cJSON_AddNumberToObject(c, "redelivered", (double)pc->redelivered);
        cJSON_AddNumberToObject(c, "dead_lettered", (double)pc->dead_lettered);
        cJSON_AddNumberToObject(c, "given_up", (double)pc->given_up);
        cJSON_AddNumberToObject(c, "dead_letter_failures", (double)pc->dead_letter_failures);
        cJSON_AddNumberToObject(c, "pending", (double)pc->pending);
        cJSON_AddItemToArray(arr, c);
        lag += pc->pending;
    }
    cJSON_AddNumberToObject(o, "handler_lag", (double)lag);
    cJSON_AddBoolToObject(o, "handlers_paused", p->paused);
    cJSON_AddNumberToObject(o, "handler_pauses", (double)p->pauses);
}
