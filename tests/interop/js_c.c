/*
 * js_c.c - JetStream interop checks for tide's streams with the official
 * NATS C client (libnats): js_Publish / js_PublishAsync and their PubAcks,
 * Nats-Msg-Id deduplication, expected last (subject) sequences, and a push
 * consumer's deliveries acked, nak'd, held with +WPI and terminated.
 *
 * Usage: interop_js_c <port> [--create]
 *
 * The server must already have these streams and consumers (tide: declared
 * in its config, see tests/interop_js_spec.lua); --create makes them first
 * through the JetStream API (js_AddStream / js_AddConsumer), which is how the
 * very same checks run against nats-server -js:
 *
 *   stream   PUBS  { subjects = { "js.pub.>" } }
 *   stream   ASYNC { subjects = { "js.async.>" } }
 *   stream   WORK  { subjects = { "js.work.>" } }
 *   consumer acks  { stream = WORK, filter = js.work.acks,  deliver = js.dlv.acks,  ack_wait = 1s }
 *   consumer naks  { stream = WORK, filter = js.work.naks,  deliver = js.dlv.naks,  ack_wait = 5s }
 *   consumer wpis  { stream = WORK, filter = js.work.wpis,  deliver = js.dlv.wpis,  ack_wait = 1s }
 *   consumer terms { stream = WORK, filter = js.work.terms, deliver = js.dlv.terms, ack_wait = 1s }
 *
 * Every stream must be empty at the start: the checks expect exact
 * sequences.
 *
 * Acks: the deliveries are read through a plain subscription on the
 * consumer's deliver subject (tide has no $JS.API, so js_Subscribe cannot
 * bind to the consumer), and libnats' natsMsg_Ack & co. only work on
 * messages of a JetStream subscription (3.4.1 even crashes on others).  So
 * the checks publish to the message's reply subject exactly the bytes those
 * calls put on the wire (taken from a trace of libnats 3.4.1 against
 * nats-server): "+ACK", "+ACK" as a request (AckSync), "-NAK",
 * "-NAK {\"delay\":<ns>}", "+WPI", "+TERM".  The delivery metadata is read
 * with libnats' own natsMsg_GetMetaData, which parses the reply subject.
 *
 * Every check prints one TAP line ("ok N - name" or "not ok N - name # why"),
 * then "1..N" closes the run.  Exit status 0 iff every check passed.  Every
 * wait is bounded, and a watchdog ends the program ("Bail out!", exit 2)
 * after WATCHDOG_SECONDS whatever the server does.
 */
#include <nats/nats.h>

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WATCHDOG_SECONDS 50
#define CONNECT_TIMEOUT_MS 2000
#define MSG_TIMEOUT_MS 2000  /* waiting for a message that must come */
#define QUIET_TIMEOUT_MS 300 /* waiting to make sure nothing more comes */
#define ASYNC_N 1000
#define ASYNC_DUPS 10

static char g_url[64];
static int g_num;
static int g_failed;
static char g_reason[512];

/* ------------------------------------------------------------------------ */

static void on_alarm(int sig)
{
    static const char msg[] = "Bail out! global timeout: the checks did not finish in time\n";
    ssize_t w = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)w;
    _exit(2);
}

static void set_reason(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void set_reason(const char *fmt, ...)
{
    va_list ap;
    if (g_reason[0])
        return; /* keep the first failure */
    va_start(ap, fmt);
    vsnprintf(g_reason, sizeof g_reason, fmt, ap);
    va_end(ap);
    for (char *p = g_reason; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

static const char *last_error(void)
{
    const char *e = nats_GetLastError(NULL);
    return (e && *e) ? e : "-";
}

/* Fails the current check (jumps to its `out:` label) unless cond holds. */
#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            set_reason(__VA_ARGS__);                                                     \
            goto out;                                                                    \
        }                                                                                \
    } while (0)

/* Fails the current check unless the libnats call returned NATS_OK. */
#define CHECK_S(call, what)                                                              \
    do {                                                                                 \
        natsStatus s_ = (call);                                                          \
        if (s_ != NATS_OK) {                                                             \
            set_reason("%s: %s (%s)", (what), natsStatus_GetText(s_), last_error());     \
            goto out;                                                                    \
        }                                                                                \
    } while (0)

static void report(const char *name, bool ok)
{
    g_num++;
    if (ok) {
        printf("ok %d - %s\n", g_num, name);
    } else {
        g_failed++;
        printf("not ok %d - %s # %s\n", g_num, name, g_reason[0] ? g_reason : "failed");
    }
    fflush(stdout);
    g_reason[0] = '\0';
}

/* ------------------------------------------------------------------------ */

static natsStatus conn(natsConnection **nc, const char *name)
{
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, g_url);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, name);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, CONNECT_TIMEOUT_MS);
    if (s == NATS_OK)
        s = natsOptions_SetAllowReconnect(o, false);
    if (s == NATS_OK)
        s = natsConnection_Connect(nc, o);
    natsOptions_Destroy(o);
    return s;
}

/* A connection and its JetStream context (jo: NULL for the defaults). */
static natsStatus js_conn(natsConnection **nc, jsCtx **js, const char *name, jsOptions *jo)
{
    natsStatus s = conn(nc, name);
    if (s == NATS_OK)
        s = natsConnection_JetStream(js, *nc, jo);
    return s;
}

static void close_conn(natsConnection *nc, jsCtx *js)
{
    jsCtx_Destroy(js);
    if (!nc)
        return;
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
}

static void drop_sub(natsSubscription *sub)
{
    if (sub) {
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
}

/* js_Publish that must succeed with a PubAck from `stream` with sequence
 * `seq` and the given duplicate flag.  Returns true, or false with the
 * reason set. */
static bool publish_expect(jsCtx *js, const char *subject, const char *data, jsPubOptions *po,
                           const char *stream, uint64_t seq, bool dup)
{
    jsPubAck *pa = NULL;
    jsErrCode ec = 0;
    bool ok = false;
    natsStatus s = js_Publish(&pa, js, subject, data, (int)strlen(data), po, &ec);
    CHECK(s == NATS_OK, "js_Publish %s '%s': %s, err_code %d (%s)", subject, data, natsStatus_GetText(s),
          (int)ec, last_error());
    CHECK(pa != NULL, "js_Publish %s: no PubAck", subject);
    CHECK(pa->Stream && strcmp(pa->Stream, stream) == 0, "js_Publish %s: PubAck stream '%s', expected '%s'",
          subject, pa->Stream ? pa->Stream : "(null)", stream);
    CHECK(pa->Sequence == seq, "js_Publish %s '%s': PubAck seq %llu, expected %llu", subject, data,
          (unsigned long long)pa->Sequence, (unsigned long long)seq);
    CHECK(pa->Duplicate == dup, "js_Publish %s '%s' (seq %llu): duplicate flag %d, expected %d", subject, data,
          (unsigned long long)seq, (int)pa->Duplicate, (int)dup);
    CHECK(pa->Domain == NULL || pa->Domain[0] == '\0', "PubAck domain '%s'", pa->Domain);
    ok = true;
out:
    jsPubAck_Destroy(pa);
    return ok;
}

/* js_Publish that the server must refuse with JetStream error `want_code`
 * and a description containing `want_text`. */
static bool publish_refused(jsCtx *js, const char *subject, const char *data, jsPubOptions *po,
                            jsErrCode want_code, const char *want_text)
{
    jsPubAck *pa = NULL;
    jsErrCode ec = 0;
    bool ok = false;
    natsStatus s = js_Publish(&pa, js, subject, data, (int)strlen(data), po, &ec);
    const char *err = last_error();
    CHECK(s == NATS_ERR, "js_Publish %s '%s': %s (err_code %d, %s), expected the JetStream error %d", subject,
          data, natsStatus_GetText(s), (int)ec, err, (int)want_code);
    CHECK(pa == NULL, "a PubAck came with the error");
    CHECK(ec == want_code, "js_Publish %s '%s': err_code %d (%s), expected %d", subject, data, (int)ec, err,
          (int)want_code);
    CHECK(strstr(err, want_text) != NULL, "js_Publish %s: error text '%s', expected it to contain '%s'", subject,
          err, want_text);
    ok = true;
out:
    jsPubAck_Destroy(pa);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Deliveries                                                                */

typedef struct {
    char subject[128];
    char data[128];
    char reply[256];
    char stream[64];
    char consumer[64];
    uint64_t sseq, cseq, delivered, pending;
    int64_t ts;
} delivery_t;

/* Waits up to ms for the next delivery on sub and reads it, metadata
 * through natsMsg_GetMetaData.  Returns NATS_OK, NATS_TIMEOUT, or an error
 * (with the reason set when the message is not a JetStream delivery). */
static natsStatus next_delivery(natsSubscription *sub, int ms, delivery_t *d)
{
    natsMsg *m = NULL;
    jsMsgMetaData *md = NULL;
    memset(d, 0, sizeof *d);
    natsStatus s = natsSubscription_NextMsg(&m, sub, ms);
    if (s != NATS_OK)
        return s;
    snprintf(d->subject, sizeof d->subject, "%s", natsMsg_GetSubject(m));
    snprintf(d->data, sizeof d->data, "%.*s", natsMsg_GetDataLength(m), natsMsg_GetData(m));
    snprintf(d->reply, sizeof d->reply, "%s", natsMsg_GetReply(m) ? natsMsg_GetReply(m) : "");
    s = natsMsg_GetMetaData(&md, m);
    if (s != NATS_OK) {
        set_reason("delivery of '%s' on %s: natsMsg_GetMetaData: %s (%s); reply subject '%s'", d->data,
                   d->subject, natsStatus_GetText(s), last_error(), d->reply);
    } else {
        snprintf(d->stream, sizeof d->stream, "%s", md->Stream ? md->Stream : "");
        snprintf(d->consumer, sizeof d->consumer, "%s", md->Consumer ? md->Consumer : "");
        d->sseq = md->Sequence.Stream;
        d->cseq = md->Sequence.Consumer;
        d->delivered = md->NumDelivered;
        d->pending = md->NumPending;
        d->ts = md->Timestamp;
        jsMsgMetaData_Destroy(md);
    }
    natsMsg_Destroy(m);
    return s;
}

/* A delivery that must come within MSG_TIMEOUT_MS, with this payload, from
 * WORK/consumer, with these sequences and delivery count. */
static bool expect_delivery(natsSubscription *sub, delivery_t *d, const char *subject, const char *consumer,
                            const char *data, uint64_t sseq, uint64_t cseq, uint64_t delivered)
{
    bool ok = false;
    natsStatus s = next_delivery(sub, MSG_TIMEOUT_MS, d);
    CHECK(s == NATS_OK, "'%s' (seq %llu, delivery %llu) not delivered on %s: %s", data, (unsigned long long)sseq,
          (unsigned long long)delivered, consumer, natsStatus_GetText(s));
    CHECK(strcmp(d->subject, subject) == 0, "'%s' delivered with subject '%s', expected '%s'", data, d->subject,
          subject);
    CHECK(strcmp(d->data, data) == 0, "delivered '%s', expected '%s' (seq %llu, delivery %llu)", d->data, data,
          (unsigned long long)sseq, (unsigned long long)delivered);
    CHECK(strcmp(d->stream, "WORK") == 0 && strcmp(d->consumer, consumer) == 0,
          "'%s': metadata stream '%s' consumer '%s', expected WORK/%s (reply %s)", data, d->stream, d->consumer,
          consumer, d->reply);
    CHECK(d->sseq == sseq && d->cseq == cseq && d->delivered == delivered,
          "'%s': stream seq %llu, consumer seq %llu, delivered %llu; expected %llu, %llu, %llu (reply %s)", data,
          (unsigned long long)d->sseq, (unsigned long long)d->cseq, (unsigned long long)d->delivered,
          (unsigned long long)sseq, (unsigned long long)cseq, (unsigned long long)delivered, d->reply);
    CHECK(d->ts > 1600000000LL * 1000000000LL, "'%s': timestamp %lld ns", data, (long long)d->ts);
    ok = true;
out:
    return ok;
}

/* Nothing more may arrive on sub within ms. */
static bool expect_quiet(natsSubscription *sub, int ms, const char *after)
{
    delivery_t d;
    bool ok = false;
    natsStatus s = next_delivery(sub, ms, &d);
    CHECK(s == NATS_TIMEOUT, "%s: '%s' delivered again (stream seq %llu, delivered %llu) within %d ms", after,
          d.data, (unsigned long long)d.sseq, (unsigned long long)d.delivered, ms);
    ok = true;
out:
    return ok;
}

/* What natsMsg_Ack / _Nak / _NakWithDelay / _InProgress / _Term send. */
static bool ack_with(natsConnection *nc, const delivery_t *d, const char *payload)
{
    bool ok = false;
    CHECK(d->reply[0], "'%s' came without a reply subject", d->data);
    CHECK_S(natsConnection_PublishString(nc, d->reply, payload), "publish ack");
    CHECK_S(natsConnection_FlushTimeout(nc, MSG_TIMEOUT_MS), "flush ack");
    ok = true;
out:
    return ok;
}

/* What natsMsg_AckSync sends: "+ACK" as a request; the server answers once
 * the ack is recorded (an empty message). */
static bool ack_sync(natsConnection *nc, const delivery_t *d)
{
    natsMsg *r = NULL;
    bool ok = false;
    CHECK(d->reply[0], "'%s' came without a reply subject", d->data);
    natsStatus s = natsConnection_RequestString(&r, nc, d->reply, "+ACK", MSG_TIMEOUT_MS);
    CHECK(s == NATS_OK, "AckSync of '%s' (%s): %s (%s)", d->data, d->reply, natsStatus_GetText(s), last_error());
    CHECK(natsMsg_GetDataLength(r) == 0, "AckSync of '%s': reply '%.*s', expected an empty one", d->data,
          natsMsg_GetDataLength(r), natsMsg_GetData(r));
    ok = true;
out:
    natsMsg_Destroy(r);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 0. --create: the streams and consumers, through the JetStream API         */

static bool create_assets(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsErrCode ec = 0;
    bool ok = false;
    static const struct {
        const char *name, *subject;
    } streams[] = { { "PUBS", "js.pub.>" }, { "ASYNC", "js.async.>" }, { "WORK", "js.work.>" } };
    static const struct {
        const char *name;
        int ack_wait_ms;
    } consumers[] = { { "acks", 1000 }, { "naks", 5000 }, { "wpis", 1000 }, { "terms", 1000 } };

    CHECK_S(js_conn(&nc, &js, "interop-js-create", NULL), "connect");
    for (size_t i = 0; i < sizeof streams / sizeof streams[0]; i++) {
        jsStreamConfig sc;
        const char *subjects[1] = { streams[i].subject };
        jsStreamConfig_Init(&sc);
        sc.Name = streams[i].name;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        natsStatus s = js_AddStream(NULL, js, &sc, NULL, &ec);
        CHECK(s == NATS_OK, "js_AddStream %s: %s, err_code %d (%s)", streams[i].name, natsStatus_GetText(s),
              (int)ec, last_error());
    }
    for (size_t i = 0; i < sizeof consumers / sizeof consumers[0]; i++) {
        char filter[64], deliver[64];
        jsConsumerConfig cc;
        snprintf(filter, sizeof filter, "js.work.%s", consumers[i].name);
        snprintf(deliver, sizeof deliver, "js.dlv.%s", consumers[i].name);
        jsConsumerConfig_Init(&cc);
        cc.Durable = consumers[i].name;
        cc.DeliverSubject = deliver;
        cc.FilterSubject = filter;
        cc.AckPolicy = js_AckExplicit;
        cc.DeliverPolicy = js_DeliverAll;
        cc.AckWait = (int64_t)consumers[i].ack_wait_ms * 1000000;
        natsStatus s = js_AddConsumer(NULL, js, "WORK", &cc, NULL, &ec);
        CHECK(s == NATS_OK, "js_AddConsumer %s: %s, err_code %d (%s)", consumers[i].name, natsStatus_GetText(s),
              (int)ec, last_error());
    }
    ok = true;
out:
    close_conn(nc, js);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 1. js_Publish: PubAcks                                                    */

static bool check_publish(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    bool ok = false;

    CHECK_S(js_conn(&nc, &js, "interop-js-publish", NULL), "connect");
    CHECK(publish_expect(js, "js.pub.a", "first", NULL, "PUBS", 1, false), "-");
    CHECK(publish_expect(js, "js.pub.b", "second", NULL, "PUBS", 2, false), "-");
    CHECK(publish_expect(js, "js.pub.a", "third", NULL, "PUBS", 3, false), "-");
    CHECK(publish_expect(js, "js.pub.c.deep", "", NULL, "PUBS", 4, false), "-");
    ok = true;
out:
    close_conn(nc, js);
    return ok;
}

/* 2. MsgId: a repeated Nats-Msg-Id is a duplicate, with the first one's seq */
static bool check_msgid_dedup(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsPubOptions po;
    bool ok = false;

    CHECK_S(js_conn(&nc, &js, "interop-js-dedup", NULL), "connect");
    jsPubOptions_Init(&po);
    po.MsgId = "order-1";
    CHECK(publish_expect(js, "js.pub.a", "order one", &po, "PUBS", 5, false), "-");
    CHECK(publish_expect(js, "js.pub.a", "order one again", &po, "PUBS", 5, true), "-");
    CHECK(publish_expect(js, "js.pub.b", "same id, other subject", &po, "PUBS", 5, true), "-");
    po.MsgId = "order-2";
    CHECK(publish_expect(js, "js.pub.a", "order two", &po, "PUBS", 6, false), "-");
    po.MsgId = "order-1";
    CHECK(publish_expect(js, "js.pub.a", "order one, third time", &po, "PUBS", 5, true), "-");
    /* duplicates took no sequence */
    CHECK(publish_expect(js, "js.pub.a", "no id", NULL, "PUBS", 7, false), "-");
    ok = true;
out:
    close_conn(nc, js);
    return ok;
}

/* 3. ExpectLastSeq / ExpectLastSubjectSeq / ExpectStream */
static bool check_expect_last_seq(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsPubOptions po;
    bool ok = false;

    CHECK_S(js_conn(&nc, &js, "interop-js-expect-seq", NULL), "connect");
    jsPubOptions_Init(&po);
    po.ExpectLastSeq = 6; /* the last is 7 */
    CHECK(publish_refused(js, "js.pub.a", "stale", &po, JSStreamWrongLastSequenceErr, "wrong last sequence: 7"),
          "-");
    po.ExpectLastSeq = 70;
    CHECK(publish_refused(js, "js.pub.a", "ahead", &po, JSStreamWrongLastSequenceErr, "wrong last sequence: 7"),
          "-");
    po.ExpectLastSeq = 7;
    CHECK(publish_expect(js, "js.pub.a", "in order", &po, "PUBS", 8, false), "-");
    ok = true;
out:
    close_conn(nc, js);
    return ok;
}

static bool check_expect_last_subject_seq(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsPubOptions po;
    bool ok = false;

    CHECK_S(js_conn(&nc, &js, "interop-js-expect-subject-seq", NULL), "connect");
    /* js.pub.b was last stored at 2 (seq 5 was a duplicate); js.pub.a at 8 */
    jsPubOptions_Init(&po);
    po.ExpectLastSubjectSeq = 8;
    CHECK(publish_refused(js, "js.pub.b", "b, wrong", &po, JSStreamWrongLastSequenceErr,
                          "wrong last sequence: 2"),
          "-");
    po.ExpectLastSubjectSeq = 2;
    CHECK(publish_expect(js, "js.pub.b", "b, right", &po, "PUBS", 9, false), "-");
    po.ExpectLastSubjectSeq = 9;
    CHECK(publish_expect(js, "js.pub.b", "b, right again", &po, "PUBS", 10, false), "-");
    po.ExpectLastSubjectSeq = 8;
    CHECK(publish_expect(js, "js.pub.a", "a, right", &po, "PUBS", 11, false), "-");
    ok = true;
out:
    close_conn(nc, js);
    return ok;
}

static bool check_expect_stream(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsPubOptions po;
    bool ok = false;

    CHECK_S(js_conn(&nc, &js, "interop-js-expect-stream", NULL), "connect");
    jsPubOptions_Init(&po);
    po.ExpectStream = "ORDERS";
    CHECK(publish_refused(js, "js.pub.a", "wrong stream", &po, JSStreamNotMatchErr, "expected stream does not match"),
          "-");
    po.ExpectStream = "PUBS";
    CHECK(publish_expect(js, "js.pub.a", "right stream", &po, "PUBS", 12, false), "-");
    ok = true;
out:
    close_conn(nc, js);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 4. js_PublishAsync: 1000 in flight, every one acked, in order             */

static struct {
    pthread_mutex_t mu;
    int acks, errors, dups, bad;
    uint64_t seq[ASYNC_N];
    char first_error[256];
} g_async = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void on_async_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    char tmp[32];
    int len = natsMsg_GetDataLength(msg);
    int i = -1;
    bool dup = false;
    if (len > 0 && len < (int)sizeof tmp) {
        memcpy(tmp, natsMsg_GetData(msg), (size_t)len);
        tmp[len] = '\0';
        dup = tmp[0] == 'd';
        i = atoi(tmp + (dup ? 1 : 0));
    }
    pthread_mutex_lock(&g_async.mu);
    if (pae) {
        if (!g_async.errors++)
            snprintf(g_async.first_error, sizeof g_async.first_error, "message '%s': %s, err_code %d, %s", tmp,
                     natsStatus_GetText(pae->Err), (int)pae->ErrCode, pae->ErrText ? pae->ErrText : "-");
    } else if (pa && i >= 0 && i < ASYNC_N && pa->Stream && strcmp(pa->Stream, "ASYNC") == 0) {
        g_async.acks++;
        if (dup) {
            /* a repeated id: a duplicate with the first one's sequence */
            if (pa->Duplicate && pa->Sequence == (uint64_t)i + 1)
                g_async.dups++;
            else
                g_async.bad++;
        } else if (pa->Duplicate || g_async.seq[i]) {
            g_async.bad++;
        } else {
            g_async.seq[i] = pa->Sequence;
        }
    } else {
        g_async.bad++;
    }
    pthread_mutex_unlock(&g_async.mu);
    natsMsg_Destroy(msg);
}

static bool check_publish_async(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    jsPubOptions po;
    natsMsgList pending = { 0 };
    bool ok = false;
    char data[32], id[32];

    jsOptions_Init(&jo);
    jo.PublishAsync.AckHandler = on_async_ack;
    jo.PublishAsync.MaxPending = 4000;
    CHECK_S(js_conn(&nc, &js, "interop-js-async", &jo), "connect");
    jsPubOptions_Init(&po);
    po.MsgId = id;
    for (int i = 0; i < ASYNC_N; i++) {
        snprintf(data, sizeof data, "%d", i);
        snprintf(id, sizeof id, "async-%d", i);
        CHECK_S(js_PublishAsync(js, "js.async.x", data, (int)strlen(data), &po), "js_PublishAsync");
    }
    /* the first few ids again, still in the dedup window */
    for (int i = 0; i < ASYNC_DUPS; i++) {
        snprintf(data, sizeof data, "d%d", i);
        snprintf(id, sizeof id, "async-%d", i);
        CHECK_S(js_PublishAsync(js, "js.async.x", data, (int)strlen(data), &po), "js_PublishAsync (repeated id)");
    }
    jsPubOptions_Init(&po);
    po.MaxWait = 10000;
    natsStatus s = js_PublishAsyncComplete(js, &po);
    CHECK(s == NATS_OK, "js_PublishAsyncComplete: %s (%s); %d acks so far", natsStatus_GetText(s), last_error(),
          g_async.acks);
    s = js_PublishAsyncGetPendingList(&pending, js);
    CHECK(s == NATS_NOT_FOUND, "%d messages still pending after js_PublishAsyncComplete (%s)", pending.Count,
          natsStatus_GetText(s));

    pthread_mutex_lock(&g_async.mu);
    int acks = g_async.acks, errors = g_async.errors, dups = g_async.dups, bad = g_async.bad;
    int out_of_order = -1;
    for (int i = 0; i < ASYNC_N && out_of_order < 0; i++)
        if (g_async.seq[i] != (uint64_t)i + 1)
            out_of_order = i;
    uint64_t oseq = out_of_order >= 0 ? g_async.seq[out_of_order] : 0;
    pthread_mutex_unlock(&g_async.mu);

    CHECK(errors == 0, "%d publishes failed; first: %s", errors, g_async.first_error);
    CHECK(bad == 0, "%d PubAcks with a wrong stream, sequence or duplicate flag", bad);
    CHECK(acks == ASYNC_N + ASYNC_DUPS, "%d PubAcks, expected %d", acks, ASYNC_N + ASYNC_DUPS);
    CHECK(dups == ASYNC_DUPS, "%d duplicates, expected %d", dups, ASYNC_DUPS);
    CHECK(out_of_order < 0, "message %d got seq %llu, expected %d (sequences follow the publish order)",
          out_of_order, (unsigned long long)oseq, out_of_order + 1);
    ok = true;
out:
    natsMsgList_Destroy(&pending);
    close_conn(nc, js);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 5. push consumer: Ack and AckSync; acked events are not redelivered       */

static bool check_consumer_ack(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    delivery_t d[3];
    bool ok = false;

    CHECK_S(js_conn(&nc, &js, "interop-js-acks", NULL), "connect");
    /* WORK is empty: these are its sequences 1..4, published before anyone
     * listens on the deliver subject; seq 2 is outside the consumer's filter */
    CHECK(publish_expect(js, "js.work.acks", "job 1", NULL, "WORK", 1, false), "-");
    CHECK(publish_expect(js, "js.work.noise", "not for acks", NULL, "WORK", 2, false), "-");
    CHECK(publish_expect(js, "js.work.acks", "job 2", NULL, "WORK", 3, false), "-");
    CHECK(publish_expect(js, "js.work.acks", "job 3", NULL, "WORK", 4, false), "-");
    CHECK_S(natsConnection_SubscribeSync(&sub, nc, "js.dlv.acks"), "subscribe to the deliver subject");
    CHECK_S(natsConnection_FlushTimeout(nc, MSG_TIMEOUT_MS), "flush");
    static const uint64_t sseq[3] = { 1, 3, 4 };
    for (int i = 0; i < 3; i++) {
        char want[16];
        snprintf(want, sizeof want, "job %d", i + 1);
        CHECK(expect_delivery(sub, &d[i], "js.work.acks", "acks", want, sseq[i], (uint64_t)i + 1, 1), "-");
        /* pending: the consumer's messages (its filter) still to deliver */
        CHECK(d[i].pending == (uint64_t)(2 - i), "'%s': pending %llu, expected %d (reply %s)", want,
              (unsigned long long)d[i].pending, 2 - i, d[i].reply);
    }
    CHECK(ack_with(nc, &d[0], "+ACK"), "-"); /* natsMsg_Ack */
    CHECK(ack_sync(nc, &d[1]), "-");         /* natsMsg_AckSync */
    CHECK(ack_sync(nc, &d[2]), "-");
    /* ack_wait is 1 s: nothing comes back after it */
    CHECK(expect_quiet(sub, 1600, "after Ack/AckSync, past ack_wait"), "-");
    ok = true;
out:
    drop_sub(sub);
    close_conn(nc, js);
    return ok;
}

/* 6. Nak: redelivered at once; NakWithDelay: redelivered after the delay   */

static bool check_consumer_nak(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    delivery_t d;
    bool ok = false;

    CHECK_S(js_conn(&nc, &js, "interop-js-naks", NULL), "connect");
    CHECK_S(natsConnection_SubscribeSync(&sub, nc, "js.dlv.naks"), "subscribe to the deliver subject");
    CHECK_S(natsConnection_FlushTimeout(nc, MSG_TIMEOUT_MS), "flush");
    CHECK(publish_expect(js, "js.work.naks", "retry me", NULL, "WORK", 5, false), "-");
    CHECK(expect_delivery(sub, &d, "js.work.naks", "naks", "retry me", 5, 1, 1), "-");

    /* natsMsg_Nak: redelivered well before ack_wait (5 s) */
    int64_t t0 = nats_Now();
    CHECK(ack_with(nc, &d, "-NAK"), "-");
    CHECK(expect_delivery(sub, &d, "js.work.naks", "naks", "retry me", 5, 2, 2), "-");
    int64_t took = nats_Now() - t0;
    CHECK(took < 1000, "redelivered %lld ms after the NAK", (long long)took);

    /* natsMsg_NakWithDelay(msg, 800 ms) */
    t0 = nats_Now();
    CHECK(ack_with(nc, &d, "-NAK {\"delay\":800000000}"), "-");
    CHECK(expect_quiet(sub, 500, "NAK with an 800 ms delay"), "-");
    CHECK(expect_delivery(sub, &d, "js.work.naks", "naks", "retry me", 5, 3, 3), "-");
    took = nats_Now() - t0;
    CHECK(took >= 750 && took < 2500, "redelivered %lld ms after a NAK with an 800 ms delay", (long long)took);

    CHECK(ack_sync(nc, &d), "-");
    CHECK(expect_quiet(sub, QUIET_TIMEOUT_MS, "after AckSync"), "-");
    ok = true;
out:
    drop_sub(sub);
    close_conn(nc, js);
    return ok;
}

/* 7. InProgress (+WPI) holds the redelivery off past ack_wait              */

static bool check_consumer_in_progress(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    delivery_t d;
    bool ok = false;

    CHECK_S(js_conn(&nc, &js, "interop-js-wpis", NULL), "connect");
    CHECK_S(natsConnection_SubscribeSync(&sub, nc, "js.dlv.wpis"), "subscribe to the deliver subject");
    CHECK_S(natsConnection_FlushTimeout(nc, MSG_TIMEOUT_MS), "flush");
    CHECK(publish_expect(js, "js.work.wpis", "long job", NULL, "WORK", 6, false), "-");
    CHECK(expect_delivery(sub, &d, "js.work.wpis", "wpis", "long job", 6, 1, 1), "-");
    /* ack_wait is 1 s; +WPI every 600 ms for 2.4 s */
    for (int i = 0; i < 4; i++) {
        CHECK(expect_quiet(sub, 600, "while in progress"), "-");
        CHECK(ack_with(nc, &d, "+WPI"), "-"); /* natsMsg_InProgress */
    }
    CHECK(ack_with(nc, &d, "+ACK"), "-");
    CHECK(expect_quiet(sub, 1500, "after +WPI then Ack, past ack_wait"), "-");
    ok = true;
out:
    drop_sub(sub);
    close_conn(nc, js);
    return ok;
}

/* 8. Term stops the redelivery; an unacked one is redelivered (control)    */

static bool check_consumer_term(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    delivery_t d1, d2;
    bool ok = false;

    CHECK_S(js_conn(&nc, &js, "interop-js-terms", NULL), "connect");
    CHECK_S(natsConnection_SubscribeSync(&sub, nc, "js.dlv.terms"), "subscribe to the deliver subject");
    CHECK_S(natsConnection_FlushTimeout(nc, MSG_TIMEOUT_MS), "flush");
    CHECK(publish_expect(js, "js.work.terms", "poison", NULL, "WORK", 7, false), "-");
    CHECK(publish_expect(js, "js.work.terms", "forgotten", NULL, "WORK", 8, false), "-");
    CHECK(expect_delivery(sub, &d1, "js.work.terms", "terms", "poison", 7, 1, 1), "-");
    CHECK(expect_delivery(sub, &d2, "js.work.terms", "terms", "forgotten", 8, 2, 1), "-");
    int64_t t0 = nats_Now();
    CHECK(ack_with(nc, &d1, "+TERM"), "-"); /* natsMsg_Term */
    /* "forgotten" is neither acked nor nak'd: back after ack_wait (1 s) */
    CHECK(expect_delivery(sub, &d2, "js.work.terms", "terms", "forgotten", 8, 3, 2), "-");
    int64_t took = nats_Now() - t0;
    CHECK(took >= 700, "the unacked message came back after %lld ms, before ack_wait (1 s)", (long long)took);
    CHECK(ack_sync(nc, &d2), "-");
    /* "poison" never again */
    CHECK(expect_quiet(sub, 1500, "after Term, past ack_wait"), "-");
    ok = true;
out:
    drop_sub(sub);
    close_conn(nc, js);
    return ok;
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    bool create = argc == 3 && strcmp(argv[2], "--create") == 0;
    if ((argc != 2 && !create) || atoi(argv[1]) <= 0 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: %s <port> [--create]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(g_url, sizeof g_url, "nats://127.0.0.1:%d", atoi(argv[1]));

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm(WATCHDOG_SECONDS);

    natsStatus s = nats_Open(-1);
    if (s != NATS_OK) {
        printf("Bail out! nats_Open: %s\n", natsStatus_GetText(s));
        return 2;
    }
    if (create && !create_assets()) {
        printf("Bail out! creating the streams and consumers: %s\n", g_reason);
        return 2;
    }

    report("js_Publish: PubAcks from stream PUBS with sequences 1, 2, 3, 4", check_publish());
    report("js_Publish with MsgId: a repeated id is a duplicate with the first seq", check_msgid_dedup());
    report("js_Publish with ExpectLastSeq: a mismatch is JetStream error 10071", check_expect_last_seq());
    report("js_Publish with ExpectLastSubjectSeq: per-subject check", check_expect_last_subject_seq());
    report("js_Publish with ExpectStream: a mismatch is JetStream error 10060", check_expect_stream());
    report("js_PublishAsync: 1000 in flight acked in order, repeated ids duplicates", check_publish_async());
    report("push consumer: metadata, Ack and AckSync, no redelivery after ack", check_consumer_ack());
    report("push consumer: Nak redelivers now, NakWithDelay after the delay", check_consumer_nak());
    report("push consumer: InProgress (+WPI) holds redelivery past ack_wait", check_consumer_in_progress());
    report("push consumer: Term stops redelivery, an unacked message comes back", check_consumer_term());

    printf("1..%d\n", g_num);
    nats_CloseAndWait(2000);
    return g_failed ? 1 : 0;
}
