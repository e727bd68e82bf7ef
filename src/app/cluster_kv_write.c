/* cluster_kv_write.c - writes to the cluster's KV buckets: puts sent
 * without waiting, the per-bucket update queue (one update in flight,
 * written with an expected sequence, fn called again after a conflict),
 * and the tickets that let a handler's ack wait for its writes; see
 * cluster_kv.h and docs/cluster.md. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <nats/nats.h>

#include "cluster_kv_internal.h"
#include "json_int.h"
#include "log.h"

/* Sends the puts made before the stream was there. */
void kv_flush_held(kv_bucket_t *b)
{
    kv_held_t *h, *next;
    for (h = b->held; h; h = next) {
        next = h->next;
        natsConnection_PublishMsg(b->k->nc, h->msg); /* else sent again by the tick */
        free(h);
    }
    b->held = b->held_tail = NULL;
}


/* ---- updates --------------------------------------------------------------------- */

void kv_job_free(kv_job_t *j)
{
    if (!j)
        return;
    script_kv_job_free(j->job);
    free(j->subject);
    free(j);
}

/* The current update is over (written, or given up). */
void kv_current_done(kv_bucket_t *b)
{
    int was = b->current != NULL;
    kv_job_free(b->current);
    b->current = NULL;
    if (b->sending)
        natsMsg_Destroy(b->sending);
    b->sending = NULL;
    if (was && b->k->on_settled)
        b->k->on_settled(b->k->settled_arg);
}

/* The message for w to subject, with the headers of its type or marker,
 * what it expects, and an id of its own (a resend is deduplicated). */
static natsMsg *write_msg(kv_bucket_t *b, const char *subject, const script_kv_write_t *w, uint64_t expect,
                          unsigned token, const char *reply_kind)
{
    char reply[200], id[200], num[32];
    natsMsg *m = NULL;
    snprintf(reply, sizeof reply, "%s.%s.%u", b->k->inbox, reply_kind, token);
    if (natsMsg_Create(&m, subject, reply, w->payload, (int)w->len) != NATS_OK)
        return NULL;
    if (w->type)
        natsMsgHeader_Set(m, "Tide-Kv-Type", w->type);
    if (w->op)
        natsMsgHeader_Set(m, "KV-Operation", w->op);
    if (expect != UINT64_MAX) {
        snprintf(num, sizeof num, "%" PRIu64, expect);
        natsMsgHeader_Set(m, b->k->per_subject ? "Nats-Expected-Last-Subject-Sequence" : "Nats-Expected-Last-Sequence",
                          num);
        snprintf(id, sizeof id, "%s-%" PRIu64, b->k->inbox, ++b->k->msg_ids);
        natsMsgHeader_Set(m, "Nats-Msg-Id", id);
    }
    return m;
}

/* Runs the current update's function on the replica and sends its write. */
static void attempt(kv_bucket_t *b)
{
    kv_item_t *it = dict_get(&b->items, b->current->subject, strlen(b->current->subject));
    script_kv_entry_t e = {0};
    script_kv_write_t w;
    if (it && !it->gone) {
        e.payload = it->payload;
        e.len = it->len;
        e.type = it->type[0] ? it->type : NULL;
        e.revision = it->rev;
    }
    int rc = script_kv_job_run(b->current->job, it && !it->gone ? &e : NULL, &w);
    if (rc != SCRIPT_KV_WRITE) {
        b->update_failures += rc == SCRIPT_KV_FAILED;
        kv_current_done(b);
        return;
    }
    uint64_t expect = b->k->per_subject ? (it ? it->rev : 0) : b->last_seq;
    b->send_token = ++b->k->next_token;
    b->sending = write_msg(b, b->current->subject, &w, expect, b->send_token, "u");
    free(w.payload);
    if (!b->sending || natsConnection_PublishMsg(b->k->nc, b->sending) != NATS_OK) {
        /* not even buffered (the reconnect buffer is full): tried again by the tick */
        log_warn("cluster: bucket %s: cannot send the update of %s yet", b->name, b->current->subject);
    }
    b->sent = time(NULL);
}

/* Starts the next update when none is being written and the replica is
 * current up to what this node knows of the bucket. */
/* 1 when a put to b made before ticket has no answer yet. */
static int put_before(kv_bucket_t *b, uint64_t ticket)
{
    for (size_t i = 0; i < b->k->puts.cap; i++) {
        kv_put_t *p = b->k->puts.slots[i].key ? b->k->puts.slots[i].val : NULL;
        if (p && p->b == b && p->ticket < ticket)
            return 1;
    }
    return 0;
}

void kv_run_queue(kv_bucket_t *b)
{
    while (b->synced && !b->sending && (b->current || b->head) &&
           natsConnection_Status(b->k->nc) == NATS_CONN_STATUS_CONNECTED) {
        /* An update sees this node's writes made before it: the puts
         * answered, and the replica as far as their sequences. */
        if (b->need > b->last_seq || put_before(b, b->current ? b->current->ticket : b->head->ticket))
            return;
        if (!b->current) {
            b->current = b->head;
            b->head = b->head->next;
            b->queued--;
            if (!b->head)
                b->tail = NULL;
        }
        attempt(b);
    }
}

/* JetStream's answer to the current update's write. */
void kv_on_update_ack(kv_bucket_t *b, const cJSON *o)
{
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    uint64_t code = 0, seq = 0;
    json_get_uint(cJSON_GetObjectItemCaseSensitive(err, "err_code"), &code);
    if (err && code == 10071) { /* wrong last sequence: wait for the replica, then call fn again */
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(err, "description");
        const char *n = cJSON_IsString(d) ? strrchr(d->valuestring, ' ') : NULL;
        b->conflicts++;
        /* The stream's last sequence when it refused: a replica already
         * there is current, and fn runs again at once; without the number,
         * wait for the next message. */
        b->need = n ? strtoull(n + 1, NULL, 10) : b->last_seq + 1;
        b->need_since = time(NULL);
        if (n)
            kv_note_seq(b, b->need);
        natsMsg_Destroy(b->sending);
        b->sending = NULL;
    } else if (err) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(err, "description");
        b->update_failures++;
        log_warn("cluster: bucket %s: update of %s refused: %s", b->name, b->current->subject,
                 cJSON_IsString(d) ? d->valuestring : "?");
        kv_current_done(b);
    } else {
        b->updates++;
        if (json_get_uint(cJSON_GetObjectItemCaseSensitive(o, "seq"), &seq) == 0) {
            b->need = seq; /* the next update sees this one */
            kv_note_seq(b, seq);
        }
        b->need_since = time(NULL);
        kv_current_done(b);
    }
    kv_run_queue(b);
}

void kv_on_kick(evutil_socket_t fd, short what, void *arg)
{
    cluster_kv_t *k = arg;
    (void)fd;
    (void)what;
    for (size_t i = 0; i < k->buckets.cap; i++)
        if (k->buckets.slots[i].key)
            kv_run_queue(k->buckets.slots[i].val);
}


void kv_put_free(void *p)
{
    kv_put_t *put = p;
    if (put)
        natsMsg_Destroy(put->msg);
    free(put);
}

int kv_remote_put(void *ctx, const char *bucket, const char *subject, const char *type, const char *op,
                      const char *payload, size_t len, char *err, size_t errsz)
{
    cluster_kv_t *k = ctx;
    kv_bucket_t *b = kv_bucket_of(k, bucket);
    script_kv_write_t w = {(char *)payload, len, type, op};
    kv_put_t *p = calloc(1, sizeof *p);
    kv_held_t *h = NULL;
    char key[32];
    natsStatus s = NATS_NO_MEMORY;
    unsigned token = ++k->next_token;
    snprintf(key, sizeof key, "%u", token);
    if (!b || !p || !(p->msg = write_msg(b, subject, &w, UINT64_MAX, token, "p")))
        goto fail;
    p->b = b;
    p->ticket = ++k->tickets;
    p->first = p->sent = time(NULL);
    if (!b->made && !(h = calloc(1, sizeof *h)))
        goto fail;
    if (dict_put(&k->puts, key, strlen(key), p) < 0)
        goto fail;
    if (h) { /* sent, in order, once the stream is there (kv_flush_held) */
        h->msg = p->msg;
        if (b->held_tail)
            b->held_tail->next = h;
        else
            b->held = h;
        b->held_tail = h;
    } else if ((s = natsConnection_PublishMsg(k->nc, p->msg)) != NATS_OK) {
        kv_put_free(dict_remove(&k->puts, key, strlen(key)));
        p = NULL;
        goto fail;
    }
    b->puts++;
    return 0;
fail:
    snprintf(err, errsz, "%s", !b ? "bucket not open" : natsStatus_GetText(s));
    if (b)
        b->put_errors++;
    kv_put_free(p);
    free(h);
    return -1;
}

int kv_remote_update(void *ctx, const char *bucket, const char *subject, script_kv_job_t *job, char *err,
                         size_t errsz)
{
    cluster_kv_t *k = ctx;
    kv_bucket_t *b = kv_bucket_of(k, bucket);
    kv_job_t *j = b && b->queued < KV_QUEUE_MAX ? calloc(1, sizeof *j) : NULL;
    if (!b || !j || !(j->subject = strdup(subject))) {
        if (b && b->queued >= KV_QUEUE_MAX)
            snprintf(err, errsz, "%d updates wait for the bucket already", KV_QUEUE_MAX);
        else
            snprintf(err, errsz, "%s", b ? "out of memory" : "bucket not open");
        free(j);
        script_kv_job_free(job);
        return -1;
    }
    j->job = job;
    j->ticket = ++k->tickets;
    b->queued++;
    if (b->tail)
        b->tail->next = j;
    else
        b->head = j;
    b->tail = j;
    event_active(k->kick, EV_TIMEOUT, 0); /* not now: the caller is a script */
    return 0;
}

uint64_t cluster_kv_ticket(cluster_kv_t *k)
{
    return k ? k->tickets : 0;
}

int cluster_kv_settled(cluster_kv_t *k, uint64_t ticket)
{
    if (!k)
        return 1;
    for (size_t i = 0; i < k->puts.cap; i++)
        if (k->puts.slots[i].key && ((kv_put_t *)k->puts.slots[i].val)->ticket <= ticket)
            return 0;
    for (size_t i = 0; i < k->buckets.cap; i++) {
        kv_bucket_t *b = k->buckets.slots[i].key ? k->buckets.slots[i].val : NULL;
        if (b && ((b->current && b->current->ticket <= ticket) || (b->head && b->head->ticket <= ticket)))
            return 0;
    }
    return 1;
}

void cluster_kv_on_settled(cluster_kv_t *k, void (*fn)(void *arg), void *arg)
{
    k->on_settled = fn;
    k->settled_arg = arg;
}


/* JetStream's answer to a put: a PubAck, an error, or (no status 503:
 * the stream has no leader just now) nothing: then it is sent again. */
void kv_on_put_ack(cluster_kv_t *k, const char *token, natsMsg *m, const cJSON *o)
{
    kv_put_t *p = dict_get(&k->puts, token, strlen(token));
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(err, "description");
    const char *status = NULL;
    if (!p)
        return;
    if (!o && natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status && !strcmp(status, "503")) {
        p->again = 1;
        return;
    }
    kv_bucket_t *b = p->b;
    uint64_t seq = 0;
    if (err || !o) {
        b->put_errors++;
        log_warn("cluster: bucket %s: a write was refused: %s", b->name, cJSON_IsString(d) ? d->valuestring : "?");
    } else if (json_get_uint(cJSON_GetObjectItemCaseSensitive(o, "seq"), &seq) == 0) {
        kv_note_seq(b, seq);
        if (seq > b->need) {
            b->need = seq;
            b->need_since = time(NULL);
        }
    }
    kv_put_free(dict_remove(&k->puts, token, strlen(token)));
    if (k->on_settled)
        k->on_settled(k->settled_arg);
    kv_run_queue(b);
}
