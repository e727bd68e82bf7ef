/*
 * js_bench - durable-publish load generator for tide streams and nats-server
 * JetStream, through the libnats JetStream C API.
 *
 * Build:  make build/js_bench          (runner: scripts/bench-js.sh)
 *
 *   js_bench --scenario NAME [options]      (or: js_bench NAME [options])
 *
 * Like nats_bench, every scenario prints exactly one machine-readable line
 * starting with "RESULT <scenario>" on success (exit 0), or one starting with
 * "ERROR <scenario>" on failure (exit 1); diagnostics go to stderr.  Every
 * loop is bounded by a count and by --timeout (a deadline for the whole
 * scenario, default 300 s); a scenario that passes its deadline fails.
 *
 * Names (the defaults; both servers are set up with the same ones):
 *   stream "bench", subjects { "bench.s" }, file storage
 *   publish subject "bench.s"
 *   durable push consumer "w": deliver subject "deliver.bench" (outside the
 *   stream's subjects, so deliveries are not stored again), ack explicit,
 *   ack wait 30 s, max ack pending 20000, deliver all
 *
 * tide declares the stream and the consumer in its Lua entry file; for
 * nats-server pass --create-stream / --create-consumer and js_bench creates
 * them through $JS.API (js_AddStream / js_AddConsumer) before the scenario.
 *
 * Scenarios:
 *   seq      --n N (default 5000) sequential js_Publish calls (each waits
 *            for its PubAck) of --size byte payloads (default 128) after
 *            --warmup W untimed ones (default 100).  Reports the latency
 *            p50/p99/p99.9/mean/min/max in microseconds and the stream
 *            sequences of the first and last timed publish.  Fails on any
 *            error, a PubAck from another stream, or sequences that do not
 *            increase by one.  --raw FILE appends every latency (µs).
 *   async    --n N (default 200000) js_PublishAsync calls with at most
 *            --max-pending (default 4096) unacknowledged in flight
 *            (jsOptions.PublishAsync.MaxPending), then
 *            js_PublishAsyncComplete.  Reports messages/s (N divided by the
 *            time from the first publish to the last PubAck).  Fails unless
 *            exactly N positive PubAcks arrive with 0 errors.
 *   consume  preloads --n N (default 100000) messages as in async, then
 *            subscribes with a plain natsConnection_Subscribe (not
 *            js_Subscribe) to the consumer's deliver subject and acks every
 *            message by publishing "+ACK" to its reply subject.  (natsMsg_Ack
 *            cannot be used: libnats 3.4.1 dereferences the subscription's
 *            JetStream state, which a plain subscription does not have, and
 *            the process dies with SIGSEGV inside natsMsg_Ack.)  Reports
 *            messages/s from the subscribe to the moment all N distinct
 *            messages have arrived and the acks are flushed to the server.
 *            Redeliveries are counted (each payload carries its index).
 *            With --create-consumer (nats-server: js_GetConsumerInfo) or
 *            --tide-admin (tide: $TIDE.ADMIN.CONSUMER.INFO) the consumer's
 *            state is then read back and must show no pending acks.
 *   pull     preloads --n N (default 100000) messages as in async, makes a
 *            durable pull consumer "p" through the JetStream API
 *            (js_AddConsumer: ack explicit, max ack pending 20000; on both
 *            servers), then js_PullSubscribe and natsSubscription_Fetch of
 *            --batch B (default 100) messages at a time, each acked with
 *            natsMsg_Ack, until all N have arrived.  Reports messages/s from
 *            the first fetch to the last ack flushed; the consumer's info
 *            must then show no pending acks.
 *   ping     one raw connection: CONNECT + PING, waits for PONG.
 *   wait-ready
 *            retries a raw CONNECT + PING every 2 ms until a PONG comes
 *            back; reports ready_ms since --since-ns (CLOCK_REALTIME
 *            nanoseconds, e.g. `date +%s%N` just before the server was
 *            started), or since js_bench started.
 *
 * Options: --url nats://HOST:PORT (default nats://127.0.0.1:4222), --n,
 * --size, --warmup, --max-pending, --timeout SECS, --raw FILE,
 * --create-stream, --create-consumer, --tide-admin, --stream NAME, --subject SUBJ,
 * --deliver SUBJ, --durable NAME, --since-ns NS, --kv-fsync POLICY (kv: the
 * bucket's stream made by a STREAM.CREATE request with metadata.tide_fsync
 * POLICY, for tide's interval / never fsync, then bound with js_KeyValue).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "bench_util.h"

/* ------------------------------------------------------------------ util */

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die_usage(void)
{
    fprintf(stderr,
            "usage: js_bench --scenario seq|async|consume|kv|pull|ping|wait-ready [--url URL]\n"
            "                [--n N] [--size S] [--warmup W] [--max-pending P]\n"
            "                [--timeout SECS] [--raw FILE] [--create-stream]\n"
            "                [--create-consumer] [--tide-admin] [--stream NAME] [--subject SUBJ]\n"
            "                [--deliver SUBJ] [--durable NAME] [--since-ns NS] [--kv-fsync POLICY]\n");
    exit(2);
}

static const char *scenario = "?";

/* Prints an ERROR line on stdout (for the runner) and exits 1. */
static void fail(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    printf("ERROR %s %s\n", scenario, buf);
    fflush(stdout);
    fprintf(stderr, "js_bench %s: %s\n", scenario, buf);
    exit(1);
}

struct args {
    const char *url;
    long n, size, warmup, max_pending, batch;
    bool n_set;
    double timeout;
    const char *raw;
    bool create_stream, create_consumer, tide_admin;
    const char *stream, *subject, *deliver, *durable;
    const char *kv_fsync; /* kv: make the bucket's stream with metadata.tide_fsync */
    int64_t since_ns;
};

static long parse_long(const char *opt, const char *v)
{
    return bench_parse_long("js_bench", opt, v);
}

static double parse_double(const char *opt, const char *v)
{
    return bench_parse_double("js_bench", opt, v, true);
}

static void parse_args(int argc, char **argv, struct args *a)
{
    a->url = "nats://127.0.0.1:4222";
    a->n = 0;
    a->n_set = false;
    a->size = 128;
    a->warmup = 100;
    a->max_pending = 4096;
    a->batch = 100;
    a->timeout = 300;
    a->raw = NULL;
    a->create_stream = a->create_consumer = a->tide_admin = false;
    a->stream = "bench";
    a->subject = "bench.s";
    a->deliver = "deliver.bench";
    a->durable = "w";
    a->since_ns = 0;
    int i = 1;
    if (i < argc && argv[i][0] != '-')
        scenario = argv[i++];
    for (; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--create-stream") == 0) {
            a->create_stream = true;
            continue;
        }
        if (strcmp(o, "--create-consumer") == 0) {
            a->create_consumer = true;
            continue;
        }
        if (strcmp(o, "--tide-admin") == 0) {
            a->tide_admin = true;
            continue;
        }
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0)
            die_usage();
        if (i + 1 >= argc)
            die_usage();
        const char *v = argv[++i];
        if (strcmp(o, "--scenario") == 0) scenario = v;
        else if (strcmp(o, "--url") == 0) a->url = v;
        else if (strcmp(o, "--n") == 0) { a->n = parse_long(o, v); a->n_set = true; }
        else if (strcmp(o, "--size") == 0) a->size = parse_long(o, v);
        else if (strcmp(o, "--warmup") == 0) a->warmup = parse_long(o, v);
        else if (strcmp(o, "--max-pending") == 0) a->max_pending = parse_long(o, v);
        else if (strcmp(o, "--timeout") == 0) a->timeout = parse_double(o, v);
        else if (strcmp(o, "--raw") == 0) a->raw = v;
        else if (strcmp(o, "--stream") == 0) a->stream = v;
        else if (strcmp(o, "--subject") == 0) a->subject = v;
        else if (strcmp(o, "--deliver") == 0) a->deliver = v;
        else if (strcmp(o, "--durable") == 0) a->durable = v;
        else if (strcmp(o, "--batch") == 0) a->batch = parse_long(o, v);
        else if (strcmp(o, "--since-ns") == 0) a->since_ns = (int64_t)parse_long(o, v);
        else if (strcmp(o, "--kv-fsync") == 0) a->kv_fsync = v;
        else die_usage();
    }
    if (!a->n_set) {
        if (strcmp(scenario, "seq") == 0) a->n = 5000;
        else if (strcmp(scenario, "async") == 0) a->n = 200000;
        else if (strcmp(scenario, "consume") == 0) a->n = 100000;
        else if (strcmp(scenario, "kv") == 0) a->n = 5000;
        else if (strcmp(scenario, "pull") == 0) a->n = 100000;
        else a->n = 1;
    }
    if (a->n < 1 || a->n > 100000000L || a->size < 8 || a->size > (8L << 20) ||
        a->max_pending < 1 || a->warmup > 1000000L) {
        fprintf(stderr, "js_bench: argument out of range (n 1..1e8, size 8..8 MiB,"
                        " max-pending >= 1)\n");
        exit(2);
    }
}

/* ------------------------------------------------- libnats connections */

static void check_conn(void)
{
    if (atomic_load(&bench_disconnects))
        fail("connection lost during the run (server gone?)");
    if (atomic_load(&bench_async_errors))
        fail("asynchronous error (%s)", bench_last_async_error);
}

static natsConnection *connect_or_fail(const char *url, const char *name, bool send_asap)
{
    natsConnection *nc = NULL;
    natsStatus s = bench_nats_connect(&nc, "js_bench", url, name, send_asap, NULL);
    if (s != NATS_OK)
        fail("connect %s (%s) failed: %s", url, name, bench_nats_error(s));
    return nc;
}

/* ------------------------------------------------------------ JetStream */

/* PubAck accounting for js_PublishAsync (called from a libnats thread). */
static atomic_long acks_ok, acks_err;
static atomic_uint_fast64_t ack_min_seq, ack_max_seq;
static atomic_long acks_other_stream;
static char first_ack_error[256];
static atomic_flag first_ack_error_set = ATOMIC_FLAG_INIT;
static const char *expect_stream;

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                       void *closure)
{
    (void)js;
    (void)closure;
    if (pa != NULL) {
        atomic_fetch_add(&acks_ok, 1);
        if (!pa->Stream || strcmp(pa->Stream, expect_stream) != 0)
            atomic_fetch_add(&acks_other_stream, 1);
        uint64_t seq = pa->Sequence, cur = atomic_load(&ack_min_seq);
        while (seq < cur && !atomic_compare_exchange_weak(&ack_min_seq, &cur, seq)) {
        }
        cur = atomic_load(&ack_max_seq);
        while (seq > cur && !atomic_compare_exchange_weak(&ack_max_seq, &cur, seq)) {
        }
    } else {
        atomic_fetch_add(&acks_err, 1);
        if (!atomic_flag_test_and_set(&first_ack_error_set)) {
            snprintf(first_ack_error, sizeof first_ack_error, "%s (errcode %d%s%s)",
                     pae ? natsStatus_GetText(pae->Err) : "no PubAck",
                     pae ? (int)pae->ErrCode : 0,
                     pae && pae->ErrText ? ": " : "",
                     pae && pae->ErrText ? pae->ErrText : "");
            fprintf(stderr, "js_bench: first PubAck error: %s\n", first_ack_error);
        }
    }
    natsMsg_Destroy(msg);
}

static jsCtx *js_or_fail(natsConnection *nc, const struct args *a)
{
    jsOptions jo;
    jsCtx *js = NULL;
    jsOptions_Init(&jo);
    jo.Wait = 10000;
    jo.PublishAsync.MaxPending = a->max_pending;
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.StallWait = 1000;
    natsStatus s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK)
        fail("JetStream context: %s", bench_nats_error(s));
    expect_stream = a->stream;
    return js;
}

static void setup_js(jsCtx *js, const struct args *a)
{
    jsErrCode jerr = 0;
    natsStatus s;
    if (a->create_stream) {
        jsStreamConfig sc;
        jsStreamInfo *si = NULL;
        const char *subjects[1] = { a->subject };
        jsStreamConfig_Init(&sc);
        sc.Name = a->stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        s = js_AddStream(&si, js, &sc, NULL, &jerr);
        if (s != NATS_OK)
            fail("js_AddStream %s: %s (errcode %d)", a->stream, bench_nats_error(s), (int)jerr);
        jsStreamInfo_Destroy(si);
    }
    if (a->create_consumer) {
        jsConsumerConfig cc;
        jsConsumerInfo *ci = NULL;
        jsConsumerConfig_Init(&cc);
        cc.Durable = a->durable;
        cc.DeliverSubject = a->deliver;
        cc.DeliverPolicy = js_DeliverAll;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = 30LL * 1000000000LL;
        cc.MaxAckPending = 20000;
        s = js_AddConsumer(&ci, js, a->stream, &cc, NULL, &jerr);
        if (s != NATS_OK)
            fail("js_AddConsumer %s/%s: %s (errcode %d)", a->stream, a->durable,
                 bench_nats_error(s), (int)jerr);
        jsConsumerInfo_Destroy(ci);
    }
}

static char *make_payload(long size)
{
    char *p = malloc((size_t)size);
    if (!p)
        fail("out of memory");
    for (long i = 0; i < size; i++)
        p[i] = (char)('a' + i % 26);
    return p;
}

static int64_t ms_left(int64_t deadline)
{
    int64_t left = (deadline - now_ns()) / 1000000;
    return left < 1 ? 1 : left;
}

/* --------------------------------------------------------------- seq */

static int run_seq(const struct args *a, natsConnection *nc, jsCtx *js, int64_t deadline)
{
    (void)nc;
    char *payload = make_payload(a->size);
    size_t n = (size_t)a->n;
    double *lat = malloc(sizeof(double) * n);
    if (!lat)
        fail("out of memory");
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 10000;
    long total = a->warmup + a->n;
    uint64_t prev_seq = 0, first_seq = 0, last_seq = 0;
    for (long i = 0; i < total; i++) {
        if (now_ns() > deadline)
            fail("timeout after %.0fs (%ld of %ld publishes done)", a->timeout, i, total);
        memcpy(payload, &i, sizeof i);
        jsPubAck *pa = NULL;
        jsErrCode jerr = 0;
        int64_t t0 = now_ns();
        natsStatus s = js_Publish(&pa, js, a->subject, payload, (int)a->size, &po, &jerr);
        int64_t t1 = now_ns();
        if (s != NATS_OK)
            fail("js_Publish #%ld failed: %s (errcode %d)", i, bench_nats_error(s), (int)jerr);
        if (!pa || !pa->Stream || strcmp(pa->Stream, a->stream) != 0)
            fail("js_Publish #%ld: PubAck names stream \"%s\", expected \"%s\"", i,
                 pa && pa->Stream ? pa->Stream : "(none)", a->stream);
        uint64_t seq = pa->Sequence;
        jsPubAck_Destroy(pa);
        if (i > 0 && seq != prev_seq + 1)
            fail("js_Publish #%ld: PubAck seq %" PRIu64 " after %" PRIu64, i, seq, prev_seq);
        prev_seq = seq;
        if (i == a->warmup)
            first_seq = seq;
        last_seq = seq;
        if (i >= a->warmup)
            lat[i - a->warmup] = (double)(t1 - t0) / 1e3;
    }
    check_conn();
    if (a->raw) {
        FILE *f = fopen(a->raw, "a");
        if (!f)
            fail("cannot open %s: %s", a->raw, strerror(errno));
        for (size_t i = 0; i < n; i++)
            fprintf(f, "%.2f\n", lat[i]);
        if (fclose(f) != 0)
            fail("cannot write %s: %s", a->raw, strerror(errno));
    }
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += lat[i];
    qsort(lat, n, sizeof *lat, cmp_double);
    printf("RESULT seq size=%ld n=%zu p50_us=%.1f p99_us=%.1f p999_us=%.1f"
           " mean_us=%.1f min_us=%.1f max_us=%.1f first_seq=%" PRIu64
           " last_seq=%" PRIu64 "\n",
           a->size, n, pct(lat, n, 0.50), pct(lat, n, 0.99), pct(lat, n, 0.999),
           sum / (double)n, lat[0], lat[n - 1], first_seq, last_seq);
    free(lat);
    free(payload);
    return 0;
}

/* ------------------------------------------------------------- async */

struct async_res {
    double secs;
    long stalls;
};

/* Publishes n messages (payload index in the first 8 bytes) through
 * js_PublishAsync and waits for every PubAck; fails on any error. */
static struct async_res publish_async(const struct args *a, jsCtx *js, long n,
                                      int64_t deadline)
{
    struct async_res r = { 0, 0 };
    char *payload = make_payload(a->size);
    atomic_store(&acks_ok, 0);
    atomic_store(&acks_err, 0);
    atomic_store(&acks_other_stream, 0);
    atomic_store(&ack_min_seq, UINT64_MAX);
    atomic_store(&ack_max_seq, 0);
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        memcpy(payload, &i, sizeof i);
        for (;;) {
            natsStatus s = js_PublishAsync(js, a->subject, payload, (int)a->size, NULL);
            if (s == NATS_OK)
                break;
            if (s != NATS_TIMEOUT) /* a stall past StallWait: not sent, retry */
                fail("js_PublishAsync #%ld failed: %s", i, bench_nats_error(s));
            r.stalls++;
            check_conn();
            if (now_ns() > deadline)
                fail("timeout after %.0fs (%ld of %ld published, %ld acked)",
                     a->timeout, i, n, (long)atomic_load(&acks_ok));
        }
        if ((i & 1023) == 0) {
            if (now_ns() > deadline)
                fail("timeout after %.0fs (%ld of %ld published, %ld acked)",
                     a->timeout, i, n, (long)atomic_load(&acks_ok));
            if (atomic_load(&acks_err) > 0)
                fail("PubAck error after %ld publishes: %s", i, first_ack_error);
            check_conn();
        }
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ms_left(deadline);
    natsStatus s = js_PublishAsyncComplete(js, &po);
    int64_t t1 = now_ns();
    if (s != NATS_OK)
        fail("js_PublishAsyncComplete: %s (%ld of %ld acked, %ld errors)", bench_nats_error(s),
             (long)atomic_load(&acks_ok), n, (long)atomic_load(&acks_err));
    check_conn();
    /* Complete can return while the last ack callback is still running:
     * give the callbacks up to 2 s (bounded by the deadline) to finish. */
    int64_t until = now_ns() + 2000000000LL;
    while (atomic_load(&acks_ok) + atomic_load(&acks_err) < n && now_ns() < until &&
           now_ns() < deadline)
        sleep_us(1000);
    long ok = atomic_load(&acks_ok), err = atomic_load(&acks_err);
    if (err != 0)
        fail("%ld PubAck errors of %ld (first: %s)", err, n, first_ack_error);
    if (ok != n)
        fail("%ld positive PubAcks for %ld publishes", ok, n);
    if (atomic_load(&acks_other_stream))
        fail("%ld PubAcks name a stream other than \"%s\"",
             (long)atomic_load(&acks_other_stream), a->stream);
    uint64_t lo = atomic_load(&ack_min_seq), hi = atomic_load(&ack_max_seq);
    if (hi - lo + 1 != (uint64_t)n)
        fail("PubAck sequences span %" PRIu64 "..%" PRIu64 " for %ld messages", lo, hi, n);
    free(payload);
    r.secs = (double)(t1 - t0) / 1e9;
    return r;
}

static int run_async(const struct args *a, natsConnection *nc, jsCtx *js, int64_t deadline)
{
    (void)nc;
    struct async_res r = publish_async(a, js, a->n, deadline);
    printf("RESULT async size=%ld n=%ld max_pending=%ld acked=%ld ack_errors=%ld"
           " secs=%.3f rate=%.0f mb_s=%.1f stalls=%ld first_seq=%" PRIu64
           " last_seq=%" PRIu64 "\n",
           a->size, a->n, a->max_pending, (long)atomic_load(&acks_ok),
           (long)atomic_load(&acks_err), r.secs, (double)a->n / r.secs,
           (double)a->n * (double)a->size / r.secs / 1e6, r.stalls,
           (uint64_t)atomic_load(&ack_min_seq), (uint64_t)atomic_load(&ack_max_seq));
    return 0;
}

/* ----------------------------------------------------------- consume */

static struct {
    long n;
    uint8_t *seen;          /* one bit per payload index */
    atomic_long distinct, dups, bad, no_reply, ack_fail;
    atomic_int_fast64_t first_ns, done_ns;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} cs = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static void cs_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                      void *closure)
{
    (void)sub;
    (void)closure;
    int64_t zero = 0;
    atomic_compare_exchange_strong(&cs.first_ns, &zero, now_ns());
    const char *reply = natsMsg_GetReply(msg);
    if (!reply || !reply[0]) {
        atomic_fetch_add(&cs.no_reply, 1);
    } else if (natsConnection_Publish(nc, reply, "+ACK", 4) != NATS_OK) {
        atomic_fetch_add(&cs.ack_fail, 1);
    }
    int len = natsMsg_GetDataLength(msg);
    long idx = -1;
    if (len >= 8)
        memcpy(&idx, natsMsg_GetData(msg), sizeof idx);
    natsMsg_Destroy(msg);
    if (idx < 0 || idx >= cs.n) {
        atomic_fetch_add(&cs.bad, 1);
        return;
    }
    /* Only this subscription's delivery thread touches the bitmap. */
    uint8_t bit = (uint8_t)(1u << (idx & 7));
    if (cs.seen[idx >> 3] & bit) {
        atomic_fetch_add(&cs.dups, 1);
        return;
    }
    cs.seen[idx >> 3] |= bit;
    if (atomic_fetch_add(&cs.distinct, 1) + 1 == cs.n) {
        atomic_store(&cs.done_ns, now_ns());
        pthread_mutex_lock(&cs.mu);
        pthread_cond_broadcast(&cs.cv);
        pthread_mutex_unlock(&cs.mu);
    }
}

static int run_consume(const struct args *a, natsConnection *nc, jsCtx *js, int64_t deadline)
{
    (void)nc;
    struct async_res pre = publish_async(a, js, a->n, deadline);
    cs.n = a->n;
    cs.seen = calloc((size_t)(a->n + 7) / 8, 1);
    if (!cs.seen)
        fail("out of memory");

    natsConnection *cn = connect_or_fail(a->url, "consumer", false);
    natsSubscription *sub = NULL;
    int64_t t0 = now_ns();
    natsStatus s = natsConnection_Subscribe(&sub, cn, a->deliver, cs_on_msg, NULL);
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (s != NATS_OK)
        fail("subscribe to %s: %s", a->deliver, bench_nats_error(s));

    bool timed_out = false;
    pthread_mutex_lock(&cs.mu);
    while (atomic_load(&cs.distinct) < cs.n) {
        if (atomic_load(&bench_disconnects) || atomic_load(&bench_async_errors))
            break;
        int64_t left = deadline - now_ns();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        if (left > 200000000)
            left = 200000000; /* wake up to check the connection */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t abs_ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + left;
        ts.tv_sec = (time_t)(abs_ns / 1000000000LL);
        ts.tv_nsec = (long)(abs_ns % 1000000000LL);
        pthread_cond_timedwait(&cs.cv, &cs.mu, &ts);
    }
    pthread_mutex_unlock(&cs.mu);
    check_conn();
    long got = atomic_load(&cs.distinct);
    if (timed_out || got < cs.n)
        fail("timeout after %.0fs: %ld of %ld delivered (%ld redelivered)",
             a->timeout, got, cs.n, (long)atomic_load(&cs.dups));
    /* The last acks are on the wire once the server answers a PING. */
    s = natsConnection_FlushTimeout(cn, ms_left(deadline));
    int64_t t1 = now_ns();
    if (s != NATS_OK)
        fail("flushing the acks: %s", bench_nats_error(s));
    if (atomic_load(&cs.no_reply))
        fail("%ld deliveries without a reply subject (cannot ack)",
             (long)atomic_load(&cs.no_reply));
    if (atomic_load(&cs.ack_fail))
        fail("%ld acks could not be sent", (long)atomic_load(&cs.ack_fail));
    if (atomic_load(&cs.bad))
        fail("%ld deliveries with an unknown payload", (long)atomic_load(&cs.bad));

    /* With a consumer we created (nats-server), ask it whether every ack
     * arrived; bounded by the deadline and 10 s. */
    long ack_pending = -1;
    if (a->create_consumer) {
        int64_t until = now_ns() + 10000000000LL;
        if (until > deadline)
            until = deadline;
        for (;;) {
            jsConsumerInfo *ci = NULL;
            jsErrCode jerr = 0;
            s = js_GetConsumerInfo(&ci, js, a->stream, a->durable, NULL, &jerr);
            if (s != NATS_OK)
                fail("js_GetConsumerInfo: %s (errcode %d)", bench_nats_error(s), (int)jerr);
            ack_pending = (long)ci->NumAckPending;
            jsConsumerInfo_Destroy(ci);
            if (ack_pending == 0)
                break;
            if (now_ns() > until)
                fail("consumer still has %ld unacknowledged messages", ack_pending);
            sleep_us(20000);
        }
    }

    /* tide has no $JS.API; its admin subject answers the same question. */
    if (a->tide_admin) {
        int64_t until = now_ns() + 10000000000LL;
        if (until > deadline)
            until = deadline;
        for (;;) {
            natsMsg *reply = NULL;
            s = natsConnection_RequestString(&reply, cn, "$TIDE.ADMIN.CONSUMER.INFO",
                                             a->durable, 5000);
            if (s != NATS_OK)
                fail("$TIDE.ADMIN.CONSUMER.INFO %s: %s", a->durable, bench_nats_error(s));
            char body[512];
            snprintf(body, sizeof body, "%.*s", natsMsg_GetDataLength(reply),
                     natsMsg_GetData(reply));
            natsMsg_Destroy(reply);
            const char *k = strstr(body, "\"num_ack_pending\":");
            if (!k)
                fail("$TIDE.ADMIN.CONSUMER.INFO %s answered: %.300s", a->durable, body);
            ack_pending = strtol(k + strlen("\"num_ack_pending\":"), NULL, 10);
            if (ack_pending == 0)
                break;
            if (now_ns() > until)
                fail("consumer still has %ld unacknowledged messages", ack_pending);
            sleep_us(20000);
        }
    }

    double secs = (double)(t1 - t0) / 1e9;
    int64_t first = atomic_load(&cs.first_ns);
    printf("RESULT consume size=%ld n=%ld received=%ld redelivered=%ld secs=%.3f"
           " rate=%.0f first_ms=%.1f preload_rate=%.0f ack_pending=%ld\n",
           a->size, a->n, got, (long)atomic_load(&cs.dups), secs, (double)got / secs,
           first ? (double)(first - t0) / 1e6 : -1.0, (double)a->n / pre.secs,
           ack_pending);
    fflush(stdout);

    atomic_store(&bench_closing, true);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(cn);
    free(cs.seen);
    return 0;
}

/* ------------------------------------------------------- raw connections */

static struct addrinfo *resolve(const char *url)
{
    char err[300];
    struct addrinfo *ai = bench_resolve(url, err, sizeof err);
    if (!ai)
        fail("%s", err);
    return ai;
}

/* Connects, sends CONNECT + PING and waits for PONG.  0, or -1 with err. */
static int raw_ping(const struct addrinfo *ai, int timeout_ms, char *err, size_t errsz)
{
    int fd = bench_raw_connect(ai, timeout_ms, err, errsz, NULL, 0);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

/* ---------------------------------------------------------------- kv */

#define KV_KEYS 1000

/* kv: a bucket "bench" (history 1) made through the client's KV API, then
 * n sequential puts of `size` bytes over KV_KEYS keys, each waiting for its
 * PubAck, then n sequential gets of those keys (the latest value, by
 * direct get when the server offers it); rates and p50 of each. */
static int run_kv(const struct args *a, natsConnection *nc, jsCtx *js, int64_t deadline)
{
    kvConfig cfg;
    kvStore *kv = NULL;
    kvConfig_Init(&cfg);
    cfg.Bucket = "bench";
    cfg.History = 1;
    natsStatus s;
    if (a->kv_fsync) {
        /* The stream js_CreateKeyValue makes for history 1, asked for by
         * hand with tide's fsync policy in its metadata (this libnats has
         * no metadata in jsStreamConfig), then bound as a bucket. */
        char req[1024];
        natsMsg *reply = NULL;
        snprintf(req, sizeof req,
                 "{\"name\":\"KV_bench\",\"subjects\":[\"$KV.bench.>\"],\"retention\":\"limits\","
                 "\"max_msgs_per_subject\":1,\"max_msgs\":-1,\"max_bytes\":-1,\"max_age\":0,"
                 "\"max_msg_size\":-1,\"storage\":\"file\",\"discard\":\"new\",\"num_replicas\":1,"
                 "\"duplicate_window\":120000000000,\"allow_rollup_hdrs\":true,\"deny_delete\":true,"
                 "\"allow_direct\":true,\"metadata\":{\"tide_fsync\":\"%s\"}}",
                 a->kv_fsync);
        s = natsConnection_RequestString(&reply, nc, "$JS.API.STREAM.CREATE.KV_bench", req, 5000);
        if (s != NATS_OK)
            fail("STREAM.CREATE KV_bench: %s", bench_nats_error(s));
        if (strstr(natsMsg_GetData(reply), "\"error\""))
            fail("STREAM.CREATE KV_bench: %s", natsMsg_GetData(reply));
        natsMsg_Destroy(reply);
        s = js_KeyValue(&kv, js, "bench");
    } else {
        s = js_CreateKeyValue(&kv, js, &cfg);
    }
    if (s != NATS_OK)
        fail("js_CreateKeyValue: %s", bench_nats_error(s));
    char *payload = make_payload(a->size), key[32];
    size_t n = (size_t)a->n;
    double *lat = malloc(sizeof(double) * n), put_secs, get_secs, put_p50, get_p50;
    if (!lat)
        fail("out of memory");
    int64_t t_start = now_ns();
    for (size_t i = 0; i < n; i++) {
        if (now_ns() > deadline)
            fail("timeout after %.0fs (%zu of %zu puts done)", a->timeout, i, n);
        snprintf(key, sizeof key, "k%zu", i % KV_KEYS);
        memcpy(payload, &i, sizeof i);
        uint64_t rev = 0;
        int64_t t0 = now_ns();
        if ((s = kvStore_Put(&rev, kv, key, payload, (int)a->size)) != NATS_OK)
            fail("kvStore_Put #%zu failed: %s", i, bench_nats_error(s));
        lat[i] = (double)(now_ns() - t0) / 1e3;
    }
    put_secs = (double)(now_ns() - t_start) / 1e9;
    qsort(lat, n, sizeof *lat, cmp_double);
    put_p50 = pct(lat, n, 0.50);
    t_start = now_ns();
    for (size_t i = 0; i < n; i++) {
        if (now_ns() > deadline)
            fail("timeout after %.0fs (%zu of %zu gets done)", a->timeout, i, n);
        snprintf(key, sizeof key, "k%zu", (i * 7919) % KV_KEYS);
        kvEntry *e = NULL;
        int64_t t0 = now_ns();
        if ((s = kvStore_Get(&e, kv, key)) != NATS_OK)
            fail("kvStore_Get #%zu (%s) failed: %s", i, key, bench_nats_error(s));
        lat[i] = (double)(now_ns() - t0) / 1e3;
        if (kvEntry_ValueLen(e) != (int)a->size)
            fail("kvStore_Get #%zu (%s): %d bytes, expected %ld", i, key, kvEntry_ValueLen(e), a->size);
        kvEntry_Destroy(e);
    }
    get_secs = (double)(now_ns() - t_start) / 1e9;
    qsort(lat, n, sizeof *lat, cmp_double);
    get_p50 = pct(lat, n, 0.50);
    check_conn();
    printf("RESULT kv size=%ld n=%zu put_rate=%.0f put_p50_us=%.1f get_rate=%.0f get_p50_us=%.1f\n", a->size, n,
           (double)n / put_secs, put_p50, (double)n / get_secs, get_p50);
    kvStore_Destroy(kv);
    free(lat);
    free(payload);
    return 0;
}

/* -------------------------------------------------------------- pull */

/* Makes the durable pull consumer "p" on a->stream through $JS.API. */
static void make_pull_consumer(const struct args *a, jsCtx *js)
{
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    jsConsumerConfig_Init(&cc);
    cc.Durable = "p";
    cc.DeliverPolicy = js_DeliverAll;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = 30LL * 1000000000LL;
    cc.MaxAckPending = 20000;
    natsStatus s = js_AddConsumer(&ci, js, a->stream, &cc, NULL, &jerr);
    if (s != NATS_OK)
        fail("js_AddConsumer %s/p: %s (errcode %d)", a->stream, bench_nats_error(s), (int)jerr);
    jsConsumerInfo_Destroy(ci);
}

static int run_pull(const struct args *a, natsConnection *nc, jsCtx *js, int64_t deadline)
{
    (void)nc;
    struct async_res pre = publish_async(a, js, a->n, deadline);
    make_pull_consumer(a, js);
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_PullSubscribe(&sub, js, a->subject, "p", NULL, NULL, &jerr);
    if (s != NATS_OK)
        fail("js_PullSubscribe: %s (errcode %d)", bench_nats_error(s), (int)jerr);
    long got = 0, fetches = 0;
    int64_t t0 = now_ns();
    while (got < a->n) {
        if (now_ns() > deadline)
            fail("timeout after %.0fs: %ld of %ld fetched", a->timeout, got, a->n);
        natsMsgList list = { 0 };
        long want = a->n - got < a->batch ? a->n - got : a->batch;
        s = natsSubscription_Fetch(&list, sub, (int)want, 5000, &jerr);
        if (s != NATS_OK && s != NATS_TIMEOUT)
            fail("fetch: %s (errcode %d)", bench_nats_error(s), (int)jerr);
        fetches++;
        for (int i = 0; i < list.Count; i++)
            if (natsMsg_Ack(list.Msgs[i], NULL) != NATS_OK)
                fail("natsMsg_Ack failed");
        got += list.Count;
        natsMsgList_Destroy(&list);
    }
    s = natsConnection_FlushTimeout(nc, ms_left(deadline));
    int64_t t1 = now_ns();
    if (s != NATS_OK)
        fail("flushing the acks: %s", bench_nats_error(s));
    long ack_pending = -1;
    int64_t until = now_ns() + 10000000000LL;
    for (;;) {
        jsConsumerInfo *ci = NULL;
        s = js_GetConsumerInfo(&ci, js, a->stream, "p", NULL, &jerr);
        if (s != NATS_OK)
            fail("js_GetConsumerInfo: %s (errcode %d)", bench_nats_error(s), (int)jerr);
        ack_pending = (long)ci->NumAckPending;
        jsConsumerInfo_Destroy(ci);
        if (ack_pending == 0)
            break;
        if (now_ns() > until)
            fail("consumer still has %ld unacknowledged messages", ack_pending);
        sleep_us(20000);
    }
    double secs = (double)(t1 - t0) / 1e9;
    printf("RESULT pull size=%ld n=%ld batch=%ld fetches=%ld secs=%.3f rate=%.0f preload_rate=%.0f\n", a->size,
           got, a->batch, fetches, secs, (double)got / secs, (double)a->n / pre.secs);
    fflush(stdout);
    atomic_store(&bench_closing, true);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    return 0;
}

static int run_ping(const struct args *a)
{
    struct addrinfo *ai = resolve(a->url);
    char err[256] = "";
    int64_t t0 = now_ns();
    int rc = raw_ping(ai, 2000, err, sizeof err);
    int64_t t1 = now_ns();
    freeaddrinfo(ai);
    if (rc != 0)
        fail("%s", err);
    printf("RESULT ping rtt_us=%.0f\n", (double)(t1 - t0) / 1e3);
    return 0;
}

static int run_wait_ready(const struct args *a, int64_t deadline)
{
    int64_t start_rt = a->since_ns ? a->since_ns : realtime_ns();
    struct addrinfo *ai = resolve(a->url);
    char err[256] = "";
    long attempts = 0;
    for (;;) {
        attempts++;
        if (raw_ping(ai, 1000, err, sizeof err) == 0)
            break;
        if (now_ns() > deadline) {
            freeaddrinfo(ai);
            fail("not ready after %.0fs (%ld attempts, last: %s)", a->timeout,
                 attempts, err);
        }
        sleep_us(2000);
    }
    int64_t ready_rt = realtime_ns();
    freeaddrinfo(ai);
    printf("RESULT wait-ready ready_ms=%.1f attempts=%ld\n",
           (double)(ready_rt - start_rt) / 1e6, attempts);
    return 0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    if (argc < 2)
        die_usage();
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct args a;
    parse_args(argc, argv, &a);
    int64_t deadline = now_ns() + (int64_t)(a.timeout * 1e9);

    if (strcmp(scenario, "ping") == 0)
        return run_ping(&a);
    if (strcmp(scenario, "wait-ready") == 0)
        return run_wait_ready(&a, deadline);
    int (*run)(const struct args *, natsConnection *, jsCtx *, int64_t);
    if (strcmp(scenario, "seq") == 0) run = run_seq;
    else if (strcmp(scenario, "async") == 0) run = run_async;
    else if (strcmp(scenario, "consume") == 0) run = run_consume;
    else if (strcmp(scenario, "kv") == 0) run = run_kv;
    else if (strcmp(scenario, "pull") == 0) run = run_pull;
    else die_usage();

    natsStatus s = nats_Open(-1);
    if (s != NATS_OK)
        fail("nats_Open: %s", natsStatus_GetText(s));
    bool seq = strcmp(scenario, "seq") == 0;
    natsConnection *nc = connect_or_fail(a.url, "publisher", seq);
    jsCtx *js = js_or_fail(nc, &a);
    setup_js(js, &a);
    int rc = run(&a, nc, js, deadline);
    fflush(stdout);
    atomic_store(&bench_closing, true);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_CloseAndWait(5000);
    return rc;
}
