/*
 * nats_bench - load generator for NATS-protocol servers (tide, nats-server).
 *
 * Build:  make build/nats_bench
 *
 * Every subcommand takes --url nats://HOST:PORT (default nats://127.0.0.1:4222)
 * and prints exactly one machine-readable line starting with "RESULT" on
 * success (exit 0), or a line starting with "ERROR" on failure (exit 1).
 * Diagnostics go to stderr.
 *
 *   pubsub --size S --msgs N --subs K [--window BYTES] [--timeout SECS]
 *       One publisher connection and K subscriber connections (one
 *       natsConnection each) on one subject.  Reports messages/s received:
 *       total deliveries (N*K) divided by the time from the first publish to
 *       the moment the last subscriber got its last message.  Subscriptions
 *       have no client-side pending limit, so the library never drops.  The
 *       publisher keeps at most --window bytes (default 8 MiB) in flight
 *       towards the slowest subscriber, which keeps every server below its
 *       slow-consumer limit (64 MiB in nats-server) without measuring a
 *       round trip per message.  Every payload carries a sequence number;
 *       each subscriber checks size and order.  Fails if any message is
 *       missing after --timeout seconds (default 60), duplicated, reordered,
 *       or if any connection reports an asynchronous error or disconnects.
 *
 *   reqrep --n N --size S [--warmup W] [--timeout SECS] [--raw FILE]
 *       A responder connection echoes every request on a subject; a second
 *       connection does N sequential natsConnection_Request calls (after W
 *       untimed warm-up requests, default 200).  Reports round-trip
 *       p50/p99/p99.9/mean/max in microseconds.  With --raw, every round
 *       trip (µs, one per line, in request order) is appended to FILE, so
 *       samples of several runs can be pooled.
 *
 *   idle --conns N [--hold SECS] [--no-stdin]
 *       Opens N raw TCP connections, each sends
 *       CONNECT {"verbose":false}\r\nPING\r\n and reads until PONG, so the
 *       server has fully accepted it.  Prints the RESULT line, then holds the
 *       connections (answering server PINGs) until stdin reaches EOF or
 *       --hold seconds pass (default 60), whichever comes first.  With
 *       --no-stdin only the timer counts.  Prints a final "DONE" line.
 *       RLIMIT_NOFILE is raised to the hard limit first.
 *
 *   ping
 *       One raw connection: CONNECT + PING, waits for PONG.  Prints the
 *       round trip and the server's INFO line; used to wait for readiness.
 *
 *   connect --n N
 *       N libnats connections one after the other, each made (CONNECT and
 *       its credentials from the URL, PING, PONG: the server has accepted
 *       it) and closed before the next.  Reports connections/s and the
 *       mean time of one.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "bench_util.h"

/* ------------------------------------------------------------------ util */

static void die_usage(void)
{
    fprintf(stderr,
            "usage: nats_bench pubsub --url URL --size S --msgs N --subs K"
            " [--window BYTES] [--timeout SECS] [--subject S] [--json]\n"
            "       nats_bench reqrep --url URL --n N --size S [--warmup W]"
            " [--timeout SECS] [--raw FILE]\n"
            "       nats_bench idle   --url URL --conns N [--hold SECS]"
            " [--no-stdin]\n"
            "       nats_bench ping   --url URL\n"
            "       nats_bench connect --url URL --n N\n"
            "       (any command: --tls-ca FILE connects with TLS, trusting FILE)\n");
    exit(2);
}

/* Prints an ERROR line on stdout (for the runner) and exits 1. */
static void fail(const char *cmd, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    printf("ERROR %s %s\n", cmd, buf);
    fflush(stdout);
    fprintf(stderr, "nats_bench %s: %s\n", cmd, buf);
    exit(1);
}

static const char *tls_ca; /* --tls-ca: connect with TLS, trusting this CA */

struct args {
    const char *url;
    long size, msgs, subs, n, conns, warmup;
    long window;
    double timeout, hold;
    bool no_stdin;
    bool json;
    const char *raw;
    const char *subject;
};

static long parse_long(const char *opt, const char *v)
{
    return bench_parse_long("nats_bench", opt, v);
}

static double parse_double(const char *opt, const char *v)
{
    return bench_parse_double("nats_bench", opt, v, false);
}

static void parse_args(int argc, char **argv, struct args *a)
{
    a->url = "nats://127.0.0.1:4222";
    a->size = 128;
    a->msgs = 1000000;
    a->subs = 1;
    a->n = 20000;
    a->conns = 1000;
    a->warmup = 200;
    a->window = 8L << 20;
    a->timeout = 60;
    a->hold = 60;
    a->no_stdin = false;
    a->raw = NULL;
    a->subject = "bench.pubsub";
    a->json = false;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--no-stdin") == 0) {
            a->no_stdin = true;
            continue;
        }
        if (strcmp(o, "--json") == 0) {
            a->json = true;
            continue;
        }
        if (i + 1 >= argc)
            die_usage();
        const char *v = argv[++i];
        if (strcmp(o, "--url") == 0) a->url = v;
        else if (strcmp(o, "--size") == 0) a->size = parse_long(o, v);
        else if (strcmp(o, "--msgs") == 0) a->msgs = parse_long(o, v);
        else if (strcmp(o, "--subs") == 0) a->subs = parse_long(o, v);
        else if (strcmp(o, "--n") == 0) a->n = parse_long(o, v);
        else if (strcmp(o, "--conns") == 0) a->conns = parse_long(o, v);
        else if (strcmp(o, "--warmup") == 0) a->warmup = parse_long(o, v);
        else if (strcmp(o, "--window") == 0) a->window = parse_long(o, v);
        else if (strcmp(o, "--timeout") == 0) a->timeout = parse_double(o, v);
        else if (strcmp(o, "--hold") == 0) a->hold = parse_double(o, v);
        else if (strcmp(o, "--raw") == 0) a->raw = v;
        else if (strcmp(o, "--subject") == 0) a->subject = v;
        else if (strcmp(o, "--tls-ca") == 0) tls_ca = v;
        else die_usage();
    }
    if (a->size > (64L << 20) || a->subs < 1 || a->subs > 1024 || a->msgs < 1 ||
        a->n < 1 || a->timeout <= 0) {
        fprintf(stderr, "nats_bench: argument out of range\n");
        exit(2);
    }
}

/* ------------------------------------------------- libnats connections */

static natsConnection *connect_or_fail(const char *cmd, const char *url, const char *name, bool send_asap)
{
    natsConnection *nc = NULL;
    natsStatus s = bench_nats_connect(&nc, "nats_bench", url, name, send_asap, tls_ca);
    if (s != NATS_OK)
        fail(cmd, "connect %s (%s) failed: %s", url, name, bench_nats_error(s));
    return nc;
}

/* ---------------------------------------------------------------- pubsub */

struct sub_ctx {
    natsConnection *nc;
    natsSubscription *sub;
    char name[32];
    atomic_uint_fast64_t recv;
    uint64_t expect_seq;
    uint64_t bad_size, out_of_order;
};

static long ps_size;
static bool ps_json;

/*
 * --json payloads: a CloudEvents envelope whose id is the sequence number as
 * 16 hex digits at a fixed offset, padded in data.pad to the requested size:
 * {"specversion":"1.0","id":"<seq>","type":"order.created","source":"bench",
 *  "data":{"amount":150,"pad":"..."}}
 */
static const char json_head[] = "{\"specversion\":\"1.0\",\"id\":\"";
static const char json_mid[] = "\",\"type\":\"order.created\",\"source\":\"bench\",\"data\":{\"amount\":150,\"pad\":\"";
static const char json_tail[] = "\"}}";
#define JSON_SEQ_OFF (sizeof json_head - 1)
#define JSON_MIN (sizeof json_head - 1 + 16 + sizeof json_mid - 1 + sizeof json_tail - 1)

static void json_fill(char *buf, size_t size)
{
    size_t o = 0;
    memcpy(buf, json_head, sizeof json_head - 1);
    o = JSON_SEQ_OFF + 16;
    memcpy(buf + o, json_mid, sizeof json_mid - 1);
    o += sizeof json_mid - 1;
    size_t pad = size - JSON_MIN;
    memset(buf + o, 'x', pad);
    o += pad;
    memcpy(buf + o, json_tail, sizeof json_tail - 1);
}

static void json_set_seq(char *buf, uint64_t seq)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        buf[JSON_SEQ_OFF + (size_t)i] = hex[seq & 15];
        seq >>= 4;
    }
}

static uint64_t json_get_seq(const char *buf)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = buf[JSON_SEQ_OFF + (size_t)i];
        v = v * 16 + (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return v;
}
static uint64_t ps_total_expected;
static atomic_uint_fast64_t ps_total_recv;
static atomic_int_fast64_t ps_done_ns;
static pthread_mutex_t ps_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ps_cv = PTHREAD_COND_INITIALIZER;

static void ps_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                      void *closure)
{
    (void)nc;
    (void)sub;
    struct sub_ctx *c = closure;
    int len = natsMsg_GetDataLength(msg);
    /* --json payloads may come back re-encoded by scripts: any size. */
    if (ps_json ? (size_t)len < JSON_SEQ_OFF + 16 : len != ps_size) {
        c->bad_size++;
    } else if (len >= 8) {
        uint64_t seq;
        if (ps_json)
            seq = json_get_seq(natsMsg_GetData(msg));
        else
            memcpy(&seq, natsMsg_GetData(msg), 8);
        if (seq != c->expect_seq)
            c->out_of_order++;
        c->expect_seq = seq + 1;
    }
    natsMsg_Destroy(msg);
    atomic_fetch_add_explicit(&c->recv, 1, memory_order_release);
    uint64_t tot = atomic_fetch_add(&ps_total_recv, 1) + 1;
    if (tot == ps_total_expected) {
        atomic_store(&ps_done_ns, now_ns());
        pthread_mutex_lock(&ps_mu);
        pthread_cond_broadcast(&ps_cv);
        pthread_mutex_unlock(&ps_mu);
    }
}

static uint64_t ps_min_recv(struct sub_ctx *subs, long k)
{
    uint64_t m = UINT64_MAX;
    for (long i = 0; i < k; i++) {
        uint64_t r = atomic_load_explicit(&subs[i].recv, memory_order_acquire);
        if (r < m)
            m = r;
    }
    return m;
}

static int cmd_pubsub(const struct args *a)
{
    const char *subj = a->subject;
    long k = a->subs;
    uint64_t n = (uint64_t)a->msgs;
    ps_size = a->size;
    ps_json = a->json;
    if (a->json && (size_t)a->size < JSON_MIN)
        fail("pubsub", "--json needs --size of at least %zu", (size_t)JSON_MIN);
    ps_total_expected = n * (uint64_t)k;

    struct sub_ctx *subs = calloc((size_t)k, sizeof *subs);
    if (!subs)
        fail("pubsub", "out of memory");
    for (long i = 0; i < k; i++) {
        struct sub_ctx *c = &subs[i];
        snprintf(c->name, sizeof c->name, "sub%ld", i);
        atomic_init(&c->recv, 0);
        c->nc = connect_or_fail("pubsub", a->url, c->name, false);
        natsStatus s = natsConnection_Subscribe(&c->sub, c->nc, subj, ps_on_msg, c);
        if (s == NATS_OK) s = natsSubscription_SetPendingLimits(c->sub, -1, -1);
        if (s == NATS_OK) s = natsConnection_FlushTimeout(c->nc, 5000);
        if (s != NATS_OK)
            fail("pubsub", "subscribe on %s failed: %s", c->name,
                 natsStatus_GetText(s));
    }
    natsConnection *pub = connect_or_fail("pubsub", a->url, "pub", false);

    /* Messages the publisher may be ahead of the slowest subscriber; the
     * per-message cost on the wire is the payload plus a MSG header. */
    uint64_t window = (uint64_t)a->window / ((uint64_t)a->size + 48);
    if (window < 256)
        window = 256;
    const uint64_t burst = 256;

    size_t bufsz = a->size > 0 ? (size_t)a->size : 1;
    char *payload = malloc(bufsz);
    if (!payload)
        fail("pubsub", "out of memory");
    for (size_t i = 0; i < bufsz; i++)
        payload[i] = (char)('a' + i % 26);
    if (a->json)
        json_fill(payload, bufsz);

    int64_t t0 = now_ns();
    int64_t deadline = t0 + (int64_t)(a->timeout * 1e9);
    uint64_t waits = 0;
    bool timed_out = false;
    for (uint64_t i = 0; i < n; i++) {
        if (a->json)
            json_set_seq(payload, i);
        else if (a->size >= 8)
            memcpy(payload, &i, 8);
        natsStatus s = natsConnection_Publish(pub, subj, payload, (int)a->size);
        if (s != NATS_OK)
            fail("pubsub", "publish #%" PRIu64 " failed: %s", i,
                 natsStatus_GetText(s));
        if ((i + 1) % burst == 0) {
            if (atomic_load(&bench_disconnects) || atomic_load(&bench_async_errors))
                break;
            while (i + 1 - ps_min_recv(subs, k) > window) {
                waits++;
                if (now_ns() > deadline) {
                    timed_out = true;
                    break;
                }
                sleep_us(50);
            }
            if (timed_out)
                break;
        }
    }
    natsStatus fs = timed_out ? NATS_OK : natsConnection_FlushTimeout(pub, 10000);
    int64_t t_pub = now_ns();

    /* Wait for every delivery, bounded by the deadline. */
    pthread_mutex_lock(&ps_mu);
    while (atomic_load(&ps_total_recv) < ps_total_expected &&
           !atomic_load(&bench_disconnects) && !atomic_load(&bench_async_errors)) {
        int64_t now = now_ns();
        if (now >= deadline)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t wait = deadline - now;
        if (wait > 100000000)
            wait = 100000000; /* re-check error flags every 100 ms */
        ts.tv_nsec += wait % 1000000000;
        ts.tv_sec += wait / 1000000000 + ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&ps_cv, &ps_mu, &ts);
    }
    pthread_mutex_unlock(&ps_mu);

    uint64_t got = atomic_load(&ps_total_recv);
    uint64_t bad_size = 0, ooo = 0;
    char per_sub[512] = "";
    size_t off = 0;
    for (long i = 0; i < k; i++) {
        bad_size += subs[i].bad_size;
        ooo += subs[i].out_of_order;
        if (off < sizeof per_sub)
            off += (size_t)snprintf(per_sub + off, sizeof per_sub - off, "%s%" PRIu64,
                                    i ? "," : "", (uint64_t)atomic_load(&subs[i].recv));
    }

    char err[512] = "";
    if (fs != NATS_OK)
        snprintf(err, sizeof err, "final flush failed: %s", natsStatus_GetText(fs));
    else if (atomic_load(&bench_disconnects))
        snprintf(err, sizeof err, "%d connection(s) disconnected", atomic_load(&bench_disconnects));
    else if (atomic_load(&bench_async_errors))
        snprintf(err, sizeof err, "async error (%s)", bench_last_async_error);
    else if (got < ps_total_expected)
        snprintf(err, sizeof err, "timeout after %.0fs", a->timeout);
    else if (got > ps_total_expected)
        snprintf(err, sizeof err, "duplicate deliveries");
    else if (bad_size)
        snprintf(err, sizeof err, "%" PRIu64 " messages with wrong size", bad_size);
    else if (ooo)
        snprintf(err, sizeof err, "%" PRIu64 " messages out of order", ooo);

    int rc = 0;
    if (err[0]) {
        printf("ERROR pubsub size=%ld msgs=%" PRIu64 " subs=%ld received=%" PRIu64
               " expected=%" PRIu64 " per_sub=%s reason=\"%s\"\n",
               a->size, n, k, got, ps_total_expected, per_sub, err);
        rc = 1;
    } else {
        double secs = (double)(atomic_load(&ps_done_ns) - t0) / 1e9;
        double pub_secs = (double)(t_pub - t0) / 1e9;
        printf("RESULT pubsub size=%ld msgs=%" PRIu64 " subs=%ld received=%" PRIu64
               " secs=%.3f rate=%.0f pub_rate=%.0f mb_s=%.1f window=%" PRIu64
               " waits=%" PRIu64 "\n",
               a->size, n, k, got, secs, (double)got / secs, (double)n / pub_secs,
               (double)got * (double)a->size / secs / 1e6, window, waits);
    }
    fflush(stdout);

    atomic_store(&bench_closing, true);
    natsConnection_Destroy(pub);
    for (long i = 0; i < k; i++) {
        natsSubscription_Unsubscribe(subs[i].sub);
        natsSubscription_Destroy(subs[i].sub);
        natsConnection_Destroy(subs[i].nc);
    }
    free(subs);
    free(payload);
    return rc;
}

/* ---------------------------------------------------------------- reqrep */

static void rr_on_req(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                      void *closure)
{
    (void)sub;
    (void)closure;
    const char *reply = natsMsg_GetReply(msg);
    if (reply && reply[0]) {
        natsStatus s = natsConnection_Publish(nc, reply, natsMsg_GetData(msg),
                                              natsMsg_GetDataLength(msg));
        if (s != NATS_OK)
            fprintf(stderr, "nats_bench: responder publish failed: %s\n",
                    natsStatus_GetText(s));
    }
    natsMsg_Destroy(msg);
}

static int cmd_reqrep(const struct args *a)
{
    const char *subj = "bench.rr";
    natsConnection *resp = connect_or_fail("reqrep", a->url, "responder", true);
    natsSubscription *sub = NULL;
    natsStatus s = natsConnection_Subscribe(&sub, resp, subj, rr_on_req, NULL);
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (s == NATS_OK) s = natsConnection_FlushTimeout(resp, 5000);
    if (s != NATS_OK)
        fail("reqrep", "responder subscribe failed: %s", natsStatus_GetText(s));

    natsConnection *req = connect_or_fail("reqrep", a->url, "requester", true);
    size_t bufsz = a->size > 0 ? (size_t)a->size : 1;
    char *payload = malloc(bufsz);
    double *lat = malloc(sizeof(double) * (size_t)a->n);
    if (!payload || !lat)
        fail("reqrep", "out of memory");
    memset(payload, 'r', bufsz);

    int64_t deadline = now_ns() + (int64_t)(a->timeout * 1e9);
    long total = a->warmup + a->n;
    for (long i = 0; i < total; i++) {
        if (now_ns() > deadline)
            fail("reqrep", "timeout after %.0fs (%ld of %ld requests done)",
                 a->timeout, i, total);
        natsMsg *reply = NULL;
        int64_t t0 = now_ns();
        s = natsConnection_Request(&reply, req, subj, payload, (int)a->size, 2000);
        int64_t t1 = now_ns();
        if (s != NATS_OK)
            fail("reqrep", "request #%ld failed: %s", i, natsStatus_GetText(s));
        int len = natsMsg_GetDataLength(reply);
        natsMsg_Destroy(reply);
        if (len != a->size)
            fail("reqrep", "request #%ld: reply has %d bytes, expected %ld", i,
                 len, a->size);
        if (i >= a->warmup)
            lat[i - a->warmup] = (double)(t1 - t0) / 1e3;
    }
    if (atomic_load(&bench_disconnects) || atomic_load(&bench_async_errors))
        fail("reqrep", "connection error during run (%s)",
             bench_last_async_error[0] ? bench_last_async_error : "disconnected");

    size_t n = (size_t)a->n;
    if (a->raw) {
        FILE *f = fopen(a->raw, "a");
        if (!f)
            fail("reqrep", "cannot open %s: %s", a->raw, strerror(errno));
        for (size_t i = 0; i < n; i++)
            fprintf(f, "%.2f\n", lat[i]);
        if (fclose(f) != 0)
            fail("reqrep", "cannot write %s: %s", a->raw, strerror(errno));
    }
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += lat[i];
    qsort(lat, n, sizeof *lat, cmp_double);
    printf("RESULT reqrep size=%ld n=%zu p50_us=%.1f p99_us=%.1f p999_us=%.1f"
           " mean_us=%.1f min_us=%.1f max_us=%.1f\n",
           a->size, n, pct(lat, n, 0.50), pct(lat, n, 0.99), pct(lat, n, 0.999),
           sum / (double)n, lat[0], lat[n - 1]);
    fflush(stdout);

    atomic_store(&bench_closing, true);
    natsConnection_Destroy(req);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(resp);
    free(payload);
    free(lat);
    return 0;
}

/* ------------------------------------------------------- raw connections */

static struct addrinfo *resolve(const char *cmd, const char *url)
{
    char err[300];
    struct addrinfo *ai = bench_resolve(url, err, sizeof err);
    if (!ai)
        fail(cmd, "%s", err);
    return ai;
}

static int cmd_ping(const struct args *a)
{
    struct addrinfo *ai = resolve("ping", a->url);
    char err[256] = "", info[4096] = "";
    int64_t t0 = now_ns();
    int fd = bench_raw_connect(ai, 2000, err, sizeof err, info, sizeof info);
    int64_t t1 = now_ns();
    freeaddrinfo(ai);
    if (fd < 0)
        fail("ping", "%s", err);
    close(fd);
    printf("RESULT ping rtt_us=%.0f %s\n", (double)(t1 - t0) / 1e3,
           info[0] ? info : "INFO-missing");
    fflush(stdout);
    return 0;
}

static int cmd_idle(const struct args *a)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            fprintf(stderr, "nats_bench: setrlimit(NOFILE): %s\n", strerror(errno));
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)a->conns + 16 > rl.rlim_cur)
        fail("idle", "conns=%ld exceeds the open-file limit %llu", a->conns,
             (unsigned long long)rl.rlim_cur);

    struct addrinfo *ai = resolve("idle", a->url);
    size_t n = (size_t)a->conns;
    struct pollfd *pfd = calloc(n + 1, sizeof *pfd);
    if (!pfd)
        fail("idle", "out of memory");

    int64_t t0 = now_ns();
    int64_t setup_deadline = t0 + (int64_t)(a->timeout * 1e9);
    size_t opened = 0;
    char err[256] = "";
    for (size_t i = 0; i < n; i++) {
        int fd = -1;
        for (int attempt = 0; attempt < 5 && fd < 0; attempt++) {
            fd = bench_raw_connect(ai, 5000, err, sizeof err, NULL, 0);
            if (fd < 0)
                sleep_us(20000);
        }
        if (fd < 0 || now_ns() > setup_deadline) {
            if (fd >= 0)
                close(fd);
            break;
        }
        pfd[1 + i].fd = fd;
        pfd[1 + i].events = POLLIN;
        opened++;
    }
    freeaddrinfo(ai);
    double setup_ms = (double)(now_ns() - t0) / 1e6;
    if (opened < n) {
        printf("ERROR idle conns=%zu opened=%zu reason=\"%s\"\n", n, opened,
               err[0] ? err : "setup timeout");
        fflush(stdout);
        for (size_t i = 0; i < opened; i++)
            close(pfd[1 + i].fd);
        free(pfd);
        return 1;
    }
    printf("RESULT idle conns=%zu opened=%zu setup_ms=%.0f\n", n, opened, setup_ms);
    fflush(stdout);

    /* Hold: answer PINGs, notice server-side closes, stop on stdin EOF or
     * after --hold seconds. */
    pfd[0].fd = a->no_stdin ? -1 : STDIN_FILENO;
    pfd[0].events = POLLIN;
    int64_t end = now_ns() + (int64_t)(a->hold * 1e9);
    size_t closed_by_server = 0;
    const char *why = "timer";
    for (;;) {
        int64_t left = end - now_ns();
        if (left <= 0)
            break;
        int ms = (int)(left / 1000000) + 1;
        int r = poll(pfd, n + 1, ms);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[0].fd >= 0 && pfd[0].revents) {
            char tmp[256];
            ssize_t k = read(STDIN_FILENO, tmp, sizeof tmp);
            if (k <= 0) {
                why = "stdin";
                break;
            }
        }
        for (size_t i = 1; i <= n; i++) {
            if (pfd[i].fd < 0 || !pfd[i].revents)
                continue;
            char tmp[4096];
            ssize_t k = recv(pfd[i].fd, tmp, sizeof tmp - 1, MSG_DONTWAIT);
            if (k > 0) {
                tmp[k] = 0;
                if (strstr(tmp, "PING\r\n"))
                    send(pfd[i].fd, "PONG\r\n", 6, MSG_NOSIGNAL);
            } else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(pfd[i].fd);
                pfd[i].fd = -1;
                closed_by_server++;
            }
        }
    }
    for (size_t i = 1; i <= n; i++)
        if (pfd[i].fd >= 0)
            close(pfd[i].fd);
    free(pfd);
    printf("DONE idle conns=%zu closed_by_server=%zu ended_by=%s\n", n,
           closed_by_server, why);
    fflush(stdout);
    return closed_by_server ? 1 : 0;
}

/* --------------------------------------------------------------- connect */

static int cmd_connect(const struct args *a)
{
    if (a->n <= 0)
        fail("connect", "--n must be > 0");
    atomic_store(&bench_closing, true); /* every close here is ours: not a disconnect to report */
    int64_t t0 = now_ns();
    for (long i = 0; i < a->n; i++) {
        natsConnection *nc = connect_or_fail("connect", a->url, "bench-connect", false);
        natsConnection_Destroy(nc);
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    printf("RESULT connect n=%ld secs=%.3f rate=%.0f mean_us=%.0f\n", a->n, secs, (double)a->n / secs,
           secs * 1e6 / (double)a->n);
    fflush(stdout);
    return 0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    if (argc < 2)
        die_usage();
    signal(SIGPIPE, SIG_IGN);
    struct args a;
    parse_args(argc, argv, &a);
    setvbuf(stdout, NULL, _IOLBF, 0);

    const char *cmd = argv[1];
    int rc;
    if (strcmp(cmd, "idle") == 0)
        return cmd_idle(&a);
    if (strcmp(cmd, "ping") == 0)
        return cmd_ping(&a);
    if (strcmp(cmd, "pubsub") != 0 && strcmp(cmd, "reqrep") != 0 && strcmp(cmd, "connect") != 0)
        die_usage();

    natsStatus s = nats_Open(-1);
    if (s != NATS_OK)
        fail(cmd, "nats_Open: %s", natsStatus_GetText(s));
    if (strcmp(cmd, "pubsub") == 0)
        rc = cmd_pubsub(&a);
    else if (strcmp(cmd, "connect") == 0)
        rc = cmd_connect(&a);
    else
        rc = cmd_reqrep(&a);
    nats_CloseAndWait(5000);
    return rc;
}
