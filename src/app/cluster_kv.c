/* cluster_kv.c - the cluster's JetStream KV buckets as replicas on the
 * node; see cluster_kv.h and docs/cluster.md. */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <nats/nats.h>

#include "cluster_kv_internal.h"
#include "dict.h"
#include "json_int.h"
#include "log.h"
#include "stream.h"
#include "util.h"

static const char *const state_names[] = {"asking", "creating", "watching", "loading", "live", "failed"};

/* ---- the server's version ----------------------------------------------------- */

/* nats-server before 2.9.21 does not enforce the per-subject expected
 * sequence between two writers racing in a cluster (nats-server issue
 * 4320): those get the stream-wide one, exact on every version. */
static int version_enforces_subject(const char *v)
{
    int major = 0, minor = 0, patch = 0;
    if (sscanf(v, "%d.%d.%d", &major, &minor, &patch) < 2)
        return 0;
    if (major != 2)
        return major > 2;
    return minor > 9 || (minor == 9 && patch >= 21);
}

static void probe_end(cluster_kv_t *k)
{
    if (k->probe)
        bufferevent_free(k->probe);
    k->probe = NULL;
}

static void on_probe_read(struct bufferevent *bev, void *arg)
{
    cluster_kv_t *k = arg;
    size_t n;
    char *line = evbuffer_readln(bufferevent_get_input(bev), &n, EVBUFFER_EOL_CRLF);
    if (!line)
        return;
    cJSON *info = strncmp(line, "INFO ", 5) ? NULL : cJSON_Parse(line + 5);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(info, "version");
    if (cJSON_IsString(v)) {
        snprintf(k->version, sizeof k->version, "%s", v->valuestring);
        k->per_subject = version_enforces_subject(v->valuestring);
        log_info("cluster: the upstream server is nats-server %s: kv updates expect the %s sequence", k->version,
                 k->per_subject ? "key's (Nats-Expected-Last-Subject-Sequence)"
                                : "stream's (Nats-Expected-Last-Sequence)");
    }
    cJSON_Delete(info);
    free(line);
    probe_end(k);
}

static void on_probe_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF | BEV_EVENT_TIMEOUT))
        probe_end(arg);
}

/* Reads the INFO line the server at url sends first (before any TLS or
 * login), for its version.  Without it (a host name, no answer) updates
 * keep the stream-wide sequence, exact everywhere. */
static void probe_version(cluster_kv_t *k, const char *url)
{
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    struct timeval five = {5, 0};
    const char *hostport = strstr(url, "://");
    hostport = hostport ? hostport + 3 : url;
    probe_end(k);
    if (evutil_parse_sockaddr_port(hostport, (struct sockaddr *)&ss, &sslen) < 0)
        return;
    if (!(k->probe = bufferevent_socket_new(k->base, -1, BEV_OPT_CLOSE_ON_FREE)))
        return;
    bufferevent_setcb(k->probe, on_probe_read, NULL, on_probe_event, k);
    bufferevent_set_timeouts(k->probe, &five, &five);
    bufferevent_enable(k->probe, EV_READ);
    if (bufferevent_socket_connect(k->probe, (struct sockaddr *)&ss, sslen) < 0)
        probe_end(k);
}

/* ---- the JetStream API ---------------------------------------------------------- */

/* A question about b on $JS.API.<what> (body may be NULL); next: b's state
 * while it waits for the answer. */
static void ask(kv_bucket_t *b, const char *what, const char *body, enum kv_state next)
{
    char subject[256], reply[200];
    snprintf(subject, sizeof subject, "$JS.API.%s", what);
    /* The stream's info asked again keeps its reply subject: an answer
     * slower than the wait (a cluster busy electing leaders) still counts. */
    if (!b->token || next != KV_ASKING || b->state != KV_ASKING) {
        b->token = ++b->k->next_token;
        b->first_asked = time(NULL);
    }
    snprintf(reply, sizeof reply, "%s.a.%u", b->k->inbox, b->token);
    b->asked = time(NULL);
    b->state = next;
    natsStatus s = natsConnection_PublishRequest(b->k->nc, subject, reply, body, body ? (int)strlen(body) : 0);
    if (s != NATS_OK) {
        b->state = KV_FAILED;
        snprintf(b->error, sizeof b->error, "cannot ask the JetStream API: %s", natsStatus_GetText(s));
    }
}

static void ask_info(kv_bucket_t *b)
{
    char what[128];
    snprintf(what, sizeof what, "STREAM.INFO.KV_%s", b->name);
    ask(b, what, NULL, KV_ASKING);
}

/* The bucket as the clients' KV API makes it: one value per key, deletes
 * by marker, rollups allowed. */
static void ask_create(kv_bucket_t *b)
{
    char what[128], body[1024];
    snprintf(what, sizeof what, "STREAM.CREATE.KV_%s", b->name);
    snprintf(body, sizeof body,
             "{\"name\":\"KV_%s\",\"subjects\":[\"$KV.%s.>\"],\"retention\":\"limits\",\"max_consumers\":-1,"
             "\"max_msgs_per_subject\":1,\"max_msgs\":-1,\"max_bytes\":-1,\"max_age\":0,\"max_msg_size\":-1,"
             "\"storage\":\"file\",\"discard\":\"new\",\"num_replicas\":%d,\"duplicate_window\":120000000000,"
             "\"allow_rollup_hdrs\":true,\"deny_delete\":true,\"deny_purge\":false,\"allow_direct\":true}",
             b->name, b->name, b->replicas);
    ask(b, what, body, KV_CREATING);
}

/* A new watch: the newest message of every key (or, once the replica is
 * whole, every message after last_seq), on <inbox>-w.<name>.<gen>: outside
 * the inbox's wildcard, so that a watch unsubscribed leaves its consumer
 * without interest (the server removes an ephemeral one then, also when
 * the node never learnt its name), and a delivery reaches the node once. */
static void start_watch(kv_bucket_t *b)
{
    char what[320], body[1024], from[64];
    if (b->consumer[0]) { /* the old one, if the server still has it */
        snprintf(what, sizeof what, "$JS.API.CONSUMER.DELETE.KV_%s.%s", b->name, b->consumer);
        natsConnection_Publish(b->k->nc, what, NULL, 0);
        b->consumer[0] = '\0';
    }
    if (b->watch) {
        natsSubscription_Unsubscribe(b->watch);
        natsSubscription_Destroy(b->watch);
        b->watch = NULL;
        b->watch_sid = 0;
    }
    b->gen++;
    b->cseq = 0;
    b->heard = time(NULL);
    snprintf(what, sizeof what, "%s-w.%s.%u", b->k->inbox, b->name, b->gen);
    natsStatus s = b->k->subscribe(b->k->subscribe_ctx, &b->watch, what);
    if (s != NATS_OK) {
        b->state = KV_FAILED;
        b->asked = time(NULL);
        snprintf(b->error, sizeof b->error, "cannot subscribe for the watch: %s", natsStatus_GetText(s));
        return;
    }
    b->watch_sid = natsSubscription_GetID(b->watch);
    if (b->synced) {
        log_info("cluster: bucket %s: watching again from sequence %" PRIu64, b->name, b->last_seq + 1);
        snprintf(from, sizeof from, "\"by_start_sequence\",\"opt_start_seq\":%" PRIu64, b->last_seq + 1);
    }
    else
        snprintf(from, sizeof from, "\"last_per_subject\"");
    snprintf(what, sizeof what, "CONSUMER.CREATE.KV_%s", b->name);
    snprintf(body, sizeof body,
             "{\"stream_name\":\"KV_%s\",\"config\":{\"deliver_subject\":\"%s-w.%s.%u\",\"deliver_policy\":%s,"
             "\"filter_subject\":\"$KV.%s.>\",\"ack_policy\":\"none\",\"replay_policy\":\"instant\","
             "\"idle_heartbeat\":" KV_HEARTBEAT_NS ",\"mem_storage\":true,"
             "\"num_replicas\":1}}",
             b->name, b->k->inbox, b->name, b->gen, from, b->name);
    ask(b, what, body, KV_WATCHING);
}

static void note_synced(kv_bucket_t *b)
{
    if (b->synced)
        return;
    b->synced = 1;
    if (b->info_last > b->last_seq)
        b->last_seq = b->info_last;
    b->state = KV_LIVE;
    log_info("cluster: bucket %s: replica loaded (%zu keys, up to sequence %" PRIu64 ")", b->name,
             b->items.count, b->last_seq);
}

/* min(3, the servers the connection knows of). */
static int replicas_wanted(cluster_kv_t *k)
{
    char **servers = NULL;
    int n = 0;
    if (natsConnection_GetServers(k->nc, &servers, &n) != NATS_OK)
        return 1;
    for (int i = 0; i < n; i++)
        free(servers[i]);
    free(servers);
    return n < 1 ? 1 : n > KV_REPLICAS_MAX ? KV_REPLICAS_MAX : n;
}

static void api_failed(kv_bucket_t *b, const char *what, const cJSON *err)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(err, "description");
    b->state = KV_FAILED;
    /* 1 s, then twice as long each time up to KV_FAILED_RETRY: a cluster
     * whose server just came back answers "temporarily unavailable" for a
     * moment, and the copy is stale while the watch is down */
    b->retry_in = b->retry_in ? (b->retry_in * 2 > KV_FAILED_RETRY ? KV_FAILED_RETRY : b->retry_in * 2) : 1;
    snprintf(b->error, sizeof b->error, "%s: %s", what, cJSON_IsString(d) ? d->valuestring : "refused");
    log_warn("cluster: bucket %s: %s (tried again in %ds)", b->name, b->error, b->retry_in);
}

/* An answer of the JetStream API about b. */
static void api_answer(kv_bucket_t *b, const cJSON *o)
{
    /* the next questions wait twice as long as this answer took */
    long took = (long)(time(NULL) - b->first_asked);
    b->answer_wait = took * 2 <= KV_RETRY ? 0 : took * 2 > KV_RETRY_MAX ? KV_RETRY_MAX : (int)took * 2;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    uint64_t code = 0, pending = 0;
    json_get_uint(cJSON_GetObjectItemCaseSensitive(err, "err_code"), &code);
    if (b->state == KV_ASKING && err && code == 10059) { /* stream not found */
        b->replicas = replicas_wanted(b->k);
        ask_create(b);
    } else if (b->state == KV_CREATING && err && b->replicas > 1 && (code == 10023 || code == 10074)) {
        b->replicas = 1; /* fewer servers with JetStream than the connection knows of */
        ask_create(b);
    } else if (b->state == KV_CREATING && err && code == 10058) { /* made meanwhile by another node */
        ask_info(b);
    } else if (err) {
        api_failed(b, b->state == KV_ASKING ? "stream info" : b->state == KV_CREATING ? "create" : "watch", err);
    } else if (b->state == KV_ASKING || b->state == KV_CREATING) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "state");
        json_get_uint(cJSON_GetObjectItemCaseSensitive(st, "last_seq"), &b->info_last);
        if (b->state == KV_CREATING)
            log_info("cluster: bucket %s: made stream KV_%s with %d replicas", b->name, b->name, b->replicas);
        start_watch(b);
    } else {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
        if (cJSON_IsString(name))
            snprintf(b->consumer, sizeof b->consumer, "%s", name->valuestring);
        b->error[0] = '\0';
        b->retry_in = 0;
        json_get_uint(cJSON_GetObjectItemCaseSensitive(o, "num_pending"), &pending);
        if (b->state == KV_WATCHING)
            b->state = b->synced ? KV_LIVE : KV_LOADING;
        b->made = 1; /* and has a leader: it made the consumer */
        kv_flush_held(b);
        if (!pending)
            note_synced(b);
    }
}

/* ---- the watch ------------------------------------------------------------------ */

static void item_free(void *p)
{
    kv_item_t *it = p;
    if (it)
        free(it->payload);
    free(it);
}

/* Stream sequence, consumer sequence and pending count from a delivery's
 * $JS.ACK reply subject (v1: 9 tokens; v2: 11 or 12).  0, or -1. */
static int ack_meta(const char *reply, uint64_t *sseq, uint64_t *cseq, uint64_t *pending)
{
    const char *tok[13];
    int n = 0;
    if (!reply || strncmp(reply, "$JS.ACK.", 8))
        return -1;
    for (const char *p = reply; p && n < 13; p = strchr(p, '.'), p = p ? p + 1 : NULL)
        tok[n++] = p;
    int base = n == 9 ? 5 : n >= 11 ? 7 : -1;
    if (base < 0)
        return -1;
    *sseq = strtoull(tok[base], NULL, 10);
    *cseq = strtoull(tok[base + 1], NULL, 10);
    *pending = strtoull(tok[base + 3], NULL, 10);
    return 0;
}

/* Takes m's value (or marker) into the replica. */
static void apply(kv_bucket_t *b, natsMsg *m, uint64_t sseq)
{
    const char *subject = natsMsg_GetSubject(m), *op = NULL, *type = NULL;
    kv_item_t *it = dict_get(&b->items, subject, strlen(subject));
    if (it && it->rev >= sseq)
        return;
    if (!it) {
        if (!(it = calloc(1, sizeof *it)) || dict_put(&b->items, subject, strlen(subject), it) < 0) {
            free(it);
            log_error("cluster: bucket %s: out of memory keeping %s", b->name, subject);
            return;
        }
    }
    natsMsgHeader_Get(m, "KV-Operation", &op);
    natsMsgHeader_Get(m, "Tide-Kv-Type", &type);
    free(it->payload);
    it->payload = NULL;
    it->len = 0;
    it->rev = sseq;
    it->gone = op && (!strcmp(op, "DEL") || !strcmp(op, "PURGE"));
    snprintf(it->type, sizeof it->type, "%s", type && strlen(type) < sizeof it->type ? type : "");
    if (!it->gone) {
        int len = natsMsg_GetDataLength(m);
        it->payload = util_mem_dup(natsMsg_GetData(m) ? natsMsg_GetData(m) : "", (size_t)len);
        it->len = (size_t)len;
        if (!it->payload)
            it->gone = 1;
    }
}

void kv_note_seq(kv_bucket_t *b, uint64_t seq)
{
    if (seq > b->known) {
        b->known = seq;
        b->known_at = time(NULL);
    }
}

/* Asks b's stream for its last sequence (answered on <inbox>.i.<token>). */
static void probe_last(kv_bucket_t *b)
{
    char subject[256], reply[200];
    snprintf(subject, sizeof subject, "$JS.API.STREAM.INFO.KV_%s", b->name);
    b->probe_token = ++b->k->next_token;
    snprintf(reply, sizeof reply, "%s.i.%u", b->k->inbox, b->probe_token);
    b->probed = time(NULL);
    b->probe_from = b->last_seq;
    natsConnection_PublishRequest(b->k->nc, subject, reply, NULL, 0);
}

static void restart_behind(kv_bucket_t *b)
{
    log_warn("cluster: bucket %s: the watch is quiet at sequence %" PRIu64 " while the stream holds %" PRIu64
             "; starting it again",
             b->name, b->last_seq, b->known);
    b->watch_restarts++;
    b->known_at = time(NULL); /* the new watch gets its grace too */
    start_watch(b);
}

/* The stream's answer to probe_last.  Its last message, when the watch
 * (quiet when asked, and still short of it) should have sent it a while
 * ago, starts the watch again at once; otherwise the next heartbeat
 * decides. */
static void probe_answer(kv_bucket_t *b, const cJSON *o)
{
    uint64_t last = 0;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "state");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(st, "last_ts");
    if (cJSON_GetObjectItemCaseSensitive(o, "error") ||
        json_get_uint(cJSON_GetObjectItemCaseSensitive(st, "last_seq"), &last) < 0)
        return;
    if (last < b->known) { /* the stream was made again: what was known of it is gone */
        b->known = 0;
        b->known_at = time(NULL);
    }
    kv_note_seq(b, last);
    int64_t stored = cJSON_IsString(ts) ? streams_parse_time(ts->valuestring) : -1;
    if (last > b->last_seq && b->last_seq == b->probe_from && (b->state == KV_LIVE || b->state == KV_LOADING) &&
        stored > 0 && stored / 1000000000 <= (int64_t)time(NULL) - KV_STALE)
        restart_behind(b);
}

/* A heartbeat: b's watch had nothing to send for a while.  It has fallen
 * behind when the consumer counts more deliveries than arrived (some were
 * lost on the way), or when the stream holds a sequence it has not sent.
 * The second happens on nats-server 2.9: a consumer on a replica that
 * caught up after its server was paused or cut off can stay silent about
 * what the catch-up stored, for seconds or minutes, heartbeats and all.
 * Either way the watch starts again from the replica's last sequence.  A
 * node that writes learns the stream's sequences from its PubAcks; a quiet
 * watch also asks the stream now and then. */
static void watch_idle(kv_bucket_t *b, natsMsg *m)
{
    const char *last = NULL;
    time_t now = time(NULL);
    if (natsMsgHeader_Get(m, "Nats-Last-Consumer", &last) == NATS_OK && last && strtoull(last, NULL, 10) > b->cseq) {
        start_watch(b);
    } else if (b->known > b->last_seq && now - b->known_at >= KV_BEHIND_GRACE) {
        restart_behind(b);
    } else if (now - b->probed >= KV_PROBE_EVERY) {
        probe_last(b);
    }
}

/* A delivery (or heartbeat, flow control request) of b's watch. */
static void on_watch(kv_bucket_t *b, natsMsg *m)
{
    const char *status = NULL, *reply = natsMsg_GetReply(m);
    uint64_t sseq, cseq, pending;
    b->heard = time(NULL);
    if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status) {
        if (strcmp(status, "100"))
            start_watch(b); /* the consumer went away */
        else if (reply && reply[0]) /* flow control: the server waits for this */
            natsConnection_Publish(b->k->nc, reply, NULL, 0);
        else
            watch_idle(b, m);
        return;
    }
    if (ack_meta(reply, &sseq, &cseq, &pending) < 0)
        return;
    if (cseq != b->cseq + 1) { /* a delivery was lost: start again after what is kept */
        log_warn("cluster: bucket %s: watch skipped from %" PRIu64 " to %" PRIu64 "; starting it again", b->name,
                 b->cseq, cseq);
        start_watch(b);
        return;
    }
    b->cseq = cseq;
    apply(b, m, sseq);
    if (sseq > b->last_seq)
        b->last_seq = sseq;
    if (!pending)
        note_synced(b);
    kv_run_queue(b);
}

/* ---- the remote's functions ---------------------------------------------------------- */

kv_bucket_t *kv_bucket_of(cluster_kv_t *k, const char *name)
{
    return dict_get(&k->buckets, name, strlen(name));
}

int cluster_kv_open(cluster_kv_t *k, const char *bucket, char *err, size_t errsz)
{
    kv_bucket_t *b;
    size_t n = strlen(bucket);
    if (kv_bucket_of(k, bucket))
        return 0;
    if (!n || n >= KV_BUCKET_MAX || strpbrk(bucket, ".*> \t")) {
        snprintf(err, errsz, "'%s' is not a bucket name", bucket);
        return -1;
    }
    if (!(b = calloc(1, sizeof *b)) || dict_put(&k->buckets, bucket, n, b) < 0) {
        free(b);
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    b->k = k;
    snprintf(b->name, sizeof b->name, "%s", bucket);
    dict_init(&b->items);
    if (natsConnection_Status(k->nc) == NATS_CONN_STATUS_CONNECTED)
        ask_info(b);
    else
        b->state = KV_FAILED; /* asked once connected */
    return 0;
}

int cluster_kv_get(cluster_kv_t *k, const char *bucket, const char *subject, script_kv_entry_t *e)
{
    kv_bucket_t *b = kv_bucket_of(k, bucket);
    kv_item_t *it = b ? dict_get(&b->items, subject, strlen(subject)) : NULL;
    if (!it || it->gone)
        return 0;
    e->payload = it->payload;
    e->len = it->len;
    e->type = it->type[0] ? it->type : NULL;
    e->revision = it->rev;
    return 1;
}

int cluster_kv_synced(cluster_kv_t *k, const char *bucket)
{
    kv_bucket_t *b = kv_bucket_of(k, bucket);
    return b && b->synced;
}

static int remote_open(void *ctx, const char *bucket, char *err, size_t errsz)
{
    return cluster_kv_open(ctx, bucket, err, errsz);
}

static int remote_get(void *ctx, const char *bucket, const char *subject, script_kv_entry_t *e)
{
    return cluster_kv_get(ctx, bucket, subject, e);
}

static void remote_each(void *ctx, const char *bucket,
                        void (*fn)(void *arg, const char *subject, size_t len, const script_kv_entry_t *e), void *arg)
{
    kv_bucket_t *b = kv_bucket_of(ctx, bucket);
    for (size_t i = 0; b && i < b->items.cap; i++) {
        dict_entry_t *d = &b->items.slots[i];
        kv_item_t *it = d->val;
        if (!d->key || it->gone)
            continue;
        script_kv_entry_t e = {it->payload, it->len, it->type[0] ? it->type : NULL, it->rev};
        fn(arg, d->key, d->klen, &e);
    }
}

void cluster_kv_remote(cluster_kv_t *k, script_kv_remote_t *ops)
{
    ops->ctx = k;
    ops->open = remote_open;
    ops->get = remote_get;
    ops->each = remote_each;
    ops->put = kv_remote_put;
    ops->update = kv_remote_update;
}

/* ---- the inbox, the tick, the connection -------------------------------------------- */

static kv_bucket_t *bucket_by_token(cluster_kv_t *k, unsigned token, int sending)
{
    for (size_t i = 0; i < k->buckets.cap; i++) {
        kv_bucket_t *b = k->buckets.slots[i].key ? k->buckets.slots[i].val : NULL;
        if (b && (sending ? b->sending && b->send_token == token : b->token == token))
            return b;
    }
    return NULL;
}

void cluster_kv_message(cluster_kv_t *k, int64_t sid, natsMsg *m)
{
    const char *subject = natsMsg_GetSubject(m), *rest;
    size_t il = strlen(k->inbox);
    unsigned n = 0;
    for (size_t i = 0; i < k->buckets.cap; i++) {
        kv_bucket_t *b = k->buckets.slots[i].key ? k->buckets.slots[i].val : NULL;
        if (b && b->watch && b->watch_sid == sid) {
            on_watch(b, m);
            return;
        }
    }
    if (strncmp(subject, k->inbox, il) || (rest = subject + il)[0] != '.' || !rest[1] || rest[2] != '.')
        return; /* a watch's message that came after it started again, or another inbox's */
    cJSON *o = cJSON_ParseWithLength(natsMsg_GetData(m) ? natsMsg_GetData(m) : "", (size_t)natsMsg_GetDataLength(m));
    n = (unsigned)strtoul(rest + 3, NULL, 10);
    if (rest[1] == 'p') {
        kv_on_put_ack(k, rest + 3, m, o);
    } else if (rest[1] == 'u') {
        kv_bucket_t *b = bucket_by_token(k, n, 1);
        if (b && o)
            kv_on_update_ack(b, o);
    } else if (rest[1] == 'i') {
        for (size_t i = 0; o && i < k->buckets.cap; i++) {
            kv_bucket_t *b = k->buckets.slots[i].key ? k->buckets.slots[i].val : NULL;
            if (b && b->probe_token == n)
                probe_answer(b, o);
        }
    } else if (rest[1] == 'a') {
        kv_bucket_t *b = bucket_by_token(k, n, 0);
        if (b && o && b->state != KV_FAILED)
            api_answer(b, o);
    }
    cJSON_Delete(o);
}

static void tick_bucket(kv_bucket_t *b, time_t now)
{
    int wait = b->answer_wait ? b->answer_wait : KV_RETRY;
    if (b->state == KV_FAILED && now - b->asked >= (b->retry_in ? b->retry_in : KV_FAILED_RETRY)) {
        ask_info(b);
    } else if ((b->state == KV_ASKING || b->state == KV_CREATING || b->state == KV_WATCHING) && now - b->asked >= wait) {
        b->answer_wait = wait * 2 > KV_RETRY_MAX ? KV_RETRY_MAX : wait * 2; /* a slow cluster: wait longer */
        ask_info(b);
    }
    else if ((b->state == KV_LIVE || b->state == KV_LOADING) && now - b->heard >= KV_SILENCE)
        start_watch(b);
    if (b->sending && now - b->sent >= KV_WRITE_RETRY) {
        natsConnection_PublishMsg(b->k->nc, b->sending); /* same id: JetStream keeps one */
        b->sent = now;
    }
    if (!b->sending && b->need > b->last_seq && now - b->need_since >= KV_CATCHUP_WAIT) {
        log_warn("cluster: bucket %s: the replica did not reach sequence %" PRIu64 " (it is at %" PRIu64
                 "); the next update goes ahead",
                 b->name, b->need, b->last_seq);
        b->need = 0;
    }
    kv_run_queue(b);
}

void cluster_kv_tick(cluster_kv_t *k)
{
    time_t now = time(NULL);
    if (natsConnection_Status(k->nc) != NATS_CONN_STATUS_CONNECTED)
        return;
    for (size_t i = 0; i < k->buckets.cap; i++)
        if (k->buckets.slots[i].key)
            tick_bucket(k->buckets.slots[i].val, now);
    for (size_t i = 0; i < k->puts.cap; i++) {
        dict_entry_t *d = &k->puts.slots[i];
        kv_put_t *p = d->key ? d->val : NULL;
        if (p && now - p->first >= KV_PUT_FORGET) {
            p->b->put_errors++;
            log_warn("cluster: bucket %s: a write got no answer in %ds: given up", p->b->name, KV_PUT_FORGET);
            kv_put_free(dict_remove(&k->puts, d->key, d->klen)); /* its bucket's queue runs at the next tick */
            i--; /* backward-shift deletion may have moved another entry here */
            if (k->on_settled)
                k->on_settled(k->settled_arg);
        } else if (p && p->again && p->b->made) {
            p->again = 0;
            p->sent = now;
            natsConnection_PublishMsg(k->nc, p->msg);
        }
    }
}

void cluster_kv_connected(cluster_kv_t *k, const char *url)
{
    probe_version(k, url);
    for (size_t i = 0; i < k->buckets.cap; i++) {
        kv_bucket_t *b = k->buckets.slots[i].key ? k->buckets.slots[i].val : NULL;
        if (!b)
            continue;
        if (b->state == KV_LIVE || b->state == KV_LOADING || b->state == KV_WATCHING)
            start_watch(b); /* the old consumer may be gone with the connection */
        else
            ask_info(b);
        if (b->sending) {
            natsConnection_PublishMsg(k->nc, b->sending);
            b->sent = time(NULL);
        }
    }
}

/* ---- making and freeing, status --------------------------------------------------------- */

cluster_kv_t *cluster_kv_new(natsConnection *nc, struct event_base *base, const char *inbox,
                             cluster_kv_subscribe_fn subscribe, void *ctx)
{
    cluster_kv_t *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->nc = nc;
    k->subscribe = subscribe;
    k->subscribe_ctx = ctx;
    k->base = base;
    snprintf(k->inbox, sizeof k->inbox, "%s", inbox);
    dict_init(&k->buckets);
    dict_init(&k->puts);
    if (!(k->kick = event_new(base, -1, 0, kv_on_kick, k))) {
        free(k);
        return NULL;
    }
    return k;
}

void cluster_kv_set_connection(cluster_kv_t *k, natsConnection *nc)
{
    if (k)
        k->nc = nc;
}

void cluster_kv_unsubscribe(cluster_kv_t *k)
{
    for (size_t i = 0; k && i < k->buckets.cap; i++) {
        kv_bucket_t *b = k->buckets.slots[i].key ? k->buckets.slots[i].val : NULL;
        if (b && b->watch)
            natsSubscription_Destroy(b->watch);
        if (b)
            b->watch = NULL, b->watch_sid = 0;
    }
}

static void bucket_free(void *p)
{
    kv_bucket_t *b = p;
    kv_job_t *j, *next;
    kv_held_t *h, *hn;
    for (h = b->held; h; h = hn) { /* their messages are the puts' */
        hn = h->next;
        free(h);
    }
    if (b->watch)
        natsSubscription_Destroy(b->watch);
    kv_current_done(b);
    for (j = b->head; j; j = next) {
        next = j->next;
        kv_job_free(j);
    }
    dict_clear(&b->items, item_free);
    free(b);
}

void cluster_kv_free(cluster_kv_t *k)
{
    if (!k)
        return;
    k->on_settled = NULL; /* what waits for the writes goes first */
    probe_end(k);
    for (size_t i = 0; i < k->buckets.cap; i++) {
        kv_bucket_t *b = k->buckets.slots[i].key ? k->buckets.slots[i].val : NULL;
        if (b && (b->current || b->head))
            log_warn("cluster: bucket %s: updates not written as the node stops: %s", b->name,
                     b->sending ? "one sent without an answer yet, and the queued ones" : "the queued ones");
    }
    dict_clear(&k->buckets, bucket_free);
    dict_clear(&k->puts, kv_put_free);
    if (k->kick)
        event_free(k->kick);
    free(k);
}

void cluster_kv_status(cluster_kv_t *k, cJSON *o)
{
    cJSON *arr = cJSON_AddArrayToObject(o, "buckets");
    cJSON_AddStringToObject(o, "kv_expect", k->per_subject ? "subject" : "stream");
    for (size_t i = 0; arr && i < k->buckets.cap; i++) {
        kv_bucket_t *b = k->buckets.slots[i].key ? k->buckets.slots[i].val : NULL;
        cJSON *e = b ? cJSON_CreateObject() : NULL;
        if (!e)
            continue;
        cJSON_AddStringToObject(e, "name", b->name);
        cJSON_AddStringToObject(e, "state", state_names[b->state]);
        cJSON_AddStringToObject(e, "error", b->error);
        cJSON_AddBoolToObject(e, "synced", b->synced);
        json_add_uint(e, "keys", b->items.count);
        json_add_uint(e, "last_seq", b->last_seq);
        json_add_uint(e, "puts", b->puts);
        json_add_uint(e, "put_errors", b->put_errors);
        json_add_uint(e, "updates", b->updates);
        json_add_uint(e, "conflicts", b->conflicts);
        json_add_uint(e, "update_failures", b->update_failures);
        json_add_uint(e, "watch_restarts", b->watch_restarts);
        json_add_uint(e, "queued", b->queued + (b->current != NULL));
        cJSON_AddItemToArray(arr, e);
    }
}
