/*
 * interop_c.c - interop acceptance checks for tide with the official NATS C
 * client (libnats).
 *
 * Usage: interop_c <port>      connects to nats://127.0.0.1:<port>
 *
 * Every check prints one TAP line ("ok N - name" or "not ok N - name # why"),
 * then "1..N" closes the run.  Exit status 0 iff every check passed.
 *
 * Every wait is bounded: connections time out after 2 s, message waits after
 * at most a few seconds, and a watchdog ends the whole program ("Bail out!",
 * exit 2) after WATCHDOG_SECONDS whatever the server does.
 */
#include <nats/nats.h>

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WATCHDOG_SECONDS 25
#define CONNECT_TIMEOUT_MS 2000
#define MSG_TIMEOUT_MS 2000  /* waiting for a message that must come */
#define QUIET_TIMEOUT_MS 300 /* waiting to make sure nothing more comes */

static char g_url[64];
static char g_prefix[40]; /* first subject token, unique to this run */
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

/*
 * Every subject of a run starts with a token of its own (g_prefix), so runs
 * sharing a server never see each other's messages.  S("a.b") returns
 * "<prefix>.a.b" in one of a few rotating buffers: enough for the subjects
 * of one call.  Main thread only.
 */
static const char *S(const char *subject)
{
    static char bufs[8][256];
    static unsigned next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s.%s", g_prefix, subject);
    return b;
}

/* The subject without the run's prefix token. */
static const char *unprefixed(const char *subject)
{
    size_t n = strlen(g_prefix);
    if (strncmp(subject, g_prefix, n) == 0 && subject[n] == '.')
        return subject + n + 1;
    return subject;
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

static natsStatus connect_opts(natsConnection **nc, const char *name, bool no_echo)
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
    if (s == NATS_OK && no_echo)
        s = natsOptions_SetNoEcho(o, true);
    if (s == NATS_OK)
        s = natsConnection_Connect(nc, o);
    natsOptions_Destroy(o);
    return s;
}

static natsStatus conn(natsConnection **nc, const char *name)
{
    return connect_opts(nc, name, false);
}

static void close_conn(natsConnection *nc)
{
    if (!nc)
        return;
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
}

static void drop_sub(natsSubscription *sub)
{
    if (sub)
        natsSubscription_Destroy(sub);
}

/* Messages this connection received from the server, whether or not a
 * subscription still wanted them: the way to see what the server sent. */
static uint64_t in_msgs(natsConnection *nc)
{
    natsStatistics *st = NULL;
    uint64_t n = 0;
    if (natsStatistics_Create(&st) != NATS_OK)
        return UINT64_MAX;
    if (natsConnection_GetStats(nc, st) != NATS_OK ||
        natsStatistics_GetCounts(st, &n, NULL, NULL, NULL, NULL) != NATS_OK)
        n = UINT64_MAX;
    natsStatistics_Destroy(st);
    return n;
}

/*
 * Reads `expect` messages (each within MSG_TIMEOUT_MS), then waits
 * QUIET_TIMEOUT_MS to make sure no further one arrives.  Writes the subjects
 * seen (without the run's prefix), comma separated, to buf.  Returns the number of messages read.
 */
static int collect_subjects(natsSubscription *sub, int expect, char *buf, size_t cap)
{
    int got = 0;
    buf[0] = '\0';
    for (;;) {
        natsMsg *m = NULL;
        int to = got < expect ? MSG_TIMEOUT_MS : QUIET_TIMEOUT_MS;
        if (natsSubscription_NextMsg(&m, sub, to) != NATS_OK)
            break;
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, "%s%s", len ? "," : "", unprefixed(natsMsg_GetSubject(m)));
        natsMsg_Destroy(m);
        if (++got > expect + 16)
            break; /* way too many: stop here */
    }
    return got;
}

/* ------------------------------------------------------------------------ */
/* 1. plain publish / subscribe                                              */

static bool check_pubsub(void)
{
    enum { BIG = 100 * 1024 };
    natsConnection *pub = NULL, *subc = NULL;
    natsSubscription *sub = NULL;
    natsMsg *m = NULL;
    char *big = NULL;
    bool ok = false;

    big = malloc(BIG);
    CHECK(big != NULL, "out of memory");
    for (size_t i = 0; i < BIG; i++)
        big[i] = (char)((i * 7 + i / 256) & 0xff); /* every byte value, CR, LF, NUL */

#define LIT(s) s, (int)(sizeof s - 1)
    struct {
        const char *data;
        int len;
        const char *reply;
    } msgs[] = {
        { LIT("hello"), NULL },
        { LIT(""), NULL },
        { LIT("with\r\nCRLF and a NUL\0 inside"), NULL },
        { LIT("MSG x 1 5\r\nfake\r\n"), NULL },
        { LIT("to be answered"), "pubsub.reply.to" },
        { big, BIG, NULL },
        { LIT("last"), NULL },
    };
#undef LIT
    int n = (int)(sizeof msgs / sizeof msgs[0]);

    CHECK_S(conn(&subc, "interop-pubsub-sub"), "connect subscriber");
    CHECK_S(conn(&pub, "interop-pubsub-pub"), "connect publisher");
    CHECK(natsConnection_GetMaxPayload(pub) >= BIG, "server max_payload %lld is below %d",
          (long long)natsConnection_GetMaxPayload(pub), BIG);
    CHECK_S(natsConnection_SubscribeSync(&sub, subc, S("pubsub.data")), "subscribe");
    CHECK_S(natsConnection_FlushTimeout(subc, MSG_TIMEOUT_MS), "flush subscriber");

    for (int i = 0; i < n; i++) {
        if (msgs[i].reply)
            CHECK_S(natsConnection_PublishRequest(pub, S("pubsub.data"), S(msgs[i].reply), msgs[i].data,
                                                  msgs[i].len),
                    "publish with reply");
        else
            CHECK_S(natsConnection_Publish(pub, S("pubsub.data"), msgs[i].data, msgs[i].len),
                    "publish");
    }
    CHECK_S(natsConnection_FlushTimeout(pub, MSG_TIMEOUT_MS), "flush publisher");

    for (int i = 0; i < n; i++) {
        natsStatus s = natsSubscription_NextMsg(&m, sub, MSG_TIMEOUT_MS);
        CHECK(s == NATS_OK, "message %d of %d not received: %s", i + 1, n, natsStatus_GetText(s));
        CHECK(strcmp(natsMsg_GetSubject(m), S("pubsub.data")) == 0, "message %d: subject '%s'", i + 1,
              natsMsg_GetSubject(m));
        CHECK(natsMsg_GetDataLength(m) == msgs[i].len, "message %d: %d bytes, expected %d", i + 1,
              natsMsg_GetDataLength(m), msgs[i].len);
        CHECK(msgs[i].len == 0 || memcmp(natsMsg_GetData(m), msgs[i].data, (size_t)msgs[i].len) == 0,
              "message %d: payload bytes differ", i + 1);
        const char *reply = natsMsg_GetReply(m);
        if (msgs[i].reply)
            CHECK(reply && strcmp(reply, S(msgs[i].reply)) == 0, "message %d: reply subject '%s', expected '%s'",
                  i + 1, reply ? reply : "(none)", S(msgs[i].reply));
        else
            CHECK(reply == NULL || reply[0] == '\0', "message %d: unexpected reply subject '%s'", i + 1, reply);
        natsMsg_Destroy(m);
        m = NULL;
    }
    natsStatus s = natsSubscription_NextMsg(&m, sub, QUIET_TIMEOUT_MS);
    CHECK(s == NATS_TIMEOUT, "an extra message arrived (%s)", natsStatus_GetText(s));
    ok = true;
out:
    natsMsg_Destroy(m);
    drop_sub(sub);
    close_conn(pub);
    close_conn(subc);
    free(big);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 2. wildcards                                                              */

static bool check_wildcards(void)
{
    natsConnection *pub = NULL, *subc = NULL;
    natsSubscription *subs[5] = { 0 };
    bool ok = false;
    char got[1024];

    static const char *const patterns[5] = { "wc.*", "wc.>", "wc.*.end", "wc.a.>", "*.a.end" };
    static const char *const published[] = {
        "wc",       "wc.a",      "wc.a.end", "wc.b.c",  "wc.a.b.c.d",
        "wcx.a",    "x.wc.a",    "wc.a.end.more", "w.a", "wc.b.end",
    };
    /* what each pattern must receive, in publish order */
    static const char *const expected[5] = {
        "wc.a",
        "wc.a,wc.a.end,wc.b.c,wc.a.b.c.d,wc.a.end.more,wc.b.end",
        "wc.a.end,wc.b.end",
        "wc.a.end,wc.a.b.c.d,wc.a.end.more",
        "wc.a.end",
    };
    static const int counts[5] = { 1, 6, 2, 3, 1 };

    CHECK_S(conn(&subc, "interop-wildcards-sub"), "connect subscriber");
    CHECK_S(conn(&pub, "interop-wildcards-pub"), "connect publisher");
    for (int i = 0; i < 5; i++)
        CHECK_S(natsConnection_SubscribeSync(&subs[i], subc, S(patterns[i])), patterns[i]);
    CHECK_S(natsConnection_FlushTimeout(subc, MSG_TIMEOUT_MS), "flush subscriber");
    for (size_t i = 0; i < sizeof published / sizeof published[0]; i++)
        CHECK_S(natsConnection_PublishString(pub, S(published[i]), published[i]), "publish");
    CHECK_S(natsConnection_FlushTimeout(pub, MSG_TIMEOUT_MS), "flush publisher");

    for (int i = 0; i < 5; i++) {
        collect_subjects(subs[i], counts[i], got, sizeof got);
        CHECK(strcmp(got, expected[i]) == 0, "'%s' received [%s], expected [%s]", patterns[i], got,
              expected[i]);
    }
    ok = true;
out:
    for (int i = 0; i < 5; i++)
        drop_sub(subs[i]);
    close_conn(pub);
    close_conn(subc);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 3. queue groups                                                           */

static bool check_queue_groups(void)
{
    enum { N = 300, MEMBERS = 3 };
    natsConnection *pub = NULL, *qc[MEMBERS] = { 0 }, *pc = NULL;
    natsSubscription *qs[MEMBERS] = { 0 }, *ps = NULL;
    natsMsg *m = NULL;
    bool ok = false;
    int seen[N] = { 0 }, plain_seen[N] = { 0 };
    int per[MEMBERS] = { 0 }, qtotal = 0, ptotal = 0, bad = 0;

    for (int i = 0; i < MEMBERS; i++) {
        CHECK_S(conn(&qc[i], "interop-queue-member"), "connect queue member");
        CHECK_S(natsConnection_QueueSubscribeSync(&qs[i], qc[i], S("queue.work"), "workers"),
                "queue subscribe");
        CHECK_S(natsConnection_FlushTimeout(qc[i], MSG_TIMEOUT_MS), "flush queue member");
    }
    CHECK_S(conn(&pc, "interop-queue-plain"), "connect plain subscriber");
    CHECK_S(natsConnection_SubscribeSync(&ps, pc, S("queue.work")), "plain subscribe");
    CHECK_S(natsConnection_FlushTimeout(pc, MSG_TIMEOUT_MS), "flush plain subscriber");
    CHECK_S(conn(&pub, "interop-queue-pub"), "connect publisher");

    for (int i = 0; i < N; i++) {
        char buf[16];
        snprintf(buf, sizeof buf, "%d", i);
        CHECK_S(natsConnection_PublishString(pub, S("queue.work"), buf), "publish");
    }
    CHECK_S(natsConnection_FlushTimeout(pub, MSG_TIMEOUT_MS), "flush publisher");

    /* Read everything that arrives within the deadline, then a quiet period
     * so that duplicates would be seen too. */
    int64_t deadline = nats_Now() + 5000;
    bool quiet_done = false;
    for (;;) {
        bool done = qtotal >= N && ptotal >= N;
        if (done && quiet_done)
            break;
        if (!done && nats_Now() > deadline)
            break;
        int progress = 0;
        for (int i = 0; i <= MEMBERS; i++) {
            natsSubscription *s = i < MEMBERS ? qs[i] : ps;
            while (natsSubscription_NextMsg(&m, s, done ? QUIET_TIMEOUT_MS / 3 : 10) == NATS_OK) {
                progress++;
                char tmp[16];
                int len = natsMsg_GetDataLength(m);
                int v = -1;
                if (len > 0 && len < (int)sizeof tmp) {
                    memcpy(tmp, natsMsg_GetData(m), (size_t)len);
                    tmp[len] = '\0';
                    v = atoi(tmp);
                }
                if (v < 0 || v >= N) {
                    bad++;
                } else if (i < MEMBERS) {
                    seen[v]++;
                    per[i]++;
                    qtotal++;
                } else {
                    plain_seen[v]++;
                    ptotal++;
                }
                natsMsg_Destroy(m);
                m = NULL;
            }
        }
        if (done)
            quiet_done = true;
        (void)progress;
    }

    CHECK(bad == 0, "%d messages with an unexpected payload", bad);
    for (int v = 0; v < N; v++) {
        CHECK(seen[v] == 1, "message %d reached %d queue members (queue total %d: %d/%d/%d)", v, seen[v],
              qtotal, per[0], per[1], per[2]);
        CHECK(plain_seen[v] == 1, "plain subscriber got message %d %d times (total %d)", v,
              plain_seen[v], ptotal);
    }
    CHECK(qtotal == N, "queue members received %d messages in all, expected %d", qtotal, N);
    CHECK(ptotal == N, "plain subscriber received %d, expected %d", ptotal, N);
    for (int i = 0; i < MEMBERS; i++)
        CHECK(per[i] > 0, "queue member %d got no message (spread %d/%d/%d)", i + 1, per[0], per[1],
              per[2]);
    ok = true;
out:
    natsMsg_Destroy(m);
    for (int i = 0; i < MEMBERS; i++) {
        drop_sub(qs[i]);
        close_conn(qc[i]);
    }
    drop_sub(ps);
    close_conn(pc);
    close_conn(pub);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 4. headers                                                                */

static bool check_headers(void)
{
    natsConnection *pub = NULL, *subc = NULL;
    natsSubscription *sub = NULL;
    natsMsg *out_msg = NULL, *out2 = NULL, *m = NULL;
    const char *v = NULL;
    const char **vals = NULL;
    int count = 0;
    bool ok = false;

    CHECK_S(conn(&subc, "interop-headers-sub"), "connect subscriber");
    CHECK_S(conn(&pub, "interop-headers-pub"), "connect publisher");
    CHECK_S(natsConnection_HasHeaderSupport(pub), "server header support (INFO headers)");
    CHECK_S(natsConnection_SubscribeSync(&sub, subc, S("hdr.test")), "subscribe");
    CHECK_S(natsConnection_FlushTimeout(subc, MSG_TIMEOUT_MS), "flush subscriber");

    CHECK_S(natsMsg_Create(&out_msg, S("hdr.test"), S("hdr.reply"), "body bytes", 10), "create message");
    CHECK_S(natsMsgHeader_Set(out_msg, "X-Single", "one"), "header set");
    CHECK_S(natsMsgHeader_Add(out_msg, "X-Multi", "first"), "header add");
    CHECK_S(natsMsgHeader_Add(out_msg, "X-Multi", "second"), "header add");
    CHECK_S(natsMsgHeader_Add(out_msg, "X-Multi", "third value"), "header add");
    CHECK_S(natsMsgHeader_Set(out_msg, "X-Spaces", "a b  c"), "header set");
    CHECK_S(natsConnection_PublishMsg(pub, out_msg), "publish message with headers");

    /* a headers-only message with an empty payload */
    CHECK_S(natsMsg_Create(&out2, S("hdr.test"), NULL, NULL, 0), "create message");
    CHECK_S(natsMsgHeader_Set(out2, "X-Empty-Body", "yes"), "header set");
    CHECK_S(natsConnection_PublishMsg(pub, out2), "publish headers-only message");
    CHECK_S(natsConnection_FlushTimeout(pub, MSG_TIMEOUT_MS), "flush publisher");

    CHECK_S(natsSubscription_NextMsg(&m, sub, MSG_TIMEOUT_MS), "receive message with headers");
    CHECK(natsMsg_GetDataLength(m) == 10 && memcmp(natsMsg_GetData(m), "body bytes", 10) == 0,
          "payload differs (%d bytes)", natsMsg_GetDataLength(m));
    CHECK(natsMsg_GetReply(m) && strcmp(natsMsg_GetReply(m), S("hdr.reply")) == 0, "reply subject '%s'",
          natsMsg_GetReply(m) ? natsMsg_GetReply(m) : "(none)");
    CHECK_S(natsMsgHeader_Get(m, "X-Single", &v), "get X-Single");
    CHECK(strcmp(v, "one") == 0, "X-Single is '%s'", v);
    CHECK_S(natsMsgHeader_Get(m, "X-Spaces", &v), "get X-Spaces");
    CHECK(strcmp(v, "a b  c") == 0, "X-Spaces is '%s'", v);
    CHECK_S(natsMsgHeader_Values(m, "X-Multi", &vals, &count), "values of X-Multi");
    CHECK(count == 3, "X-Multi has %d values, expected 3", count);
    CHECK(strcmp(vals[0], "first") == 0 && strcmp(vals[1], "second") == 0 &&
              strcmp(vals[2], "third value") == 0,
          "X-Multi values [%s|%s|%s]", vals[0], vals[1], vals[2]);
    free((void *)vals);
    vals = NULL;
    natsMsg_Destroy(m);
    m = NULL;

    CHECK_S(natsSubscription_NextMsg(&m, sub, MSG_TIMEOUT_MS), "receive headers-only message");
    CHECK(natsMsg_GetDataLength(m) == 0, "headers-only message has %d payload bytes",
          natsMsg_GetDataLength(m));
    CHECK_S(natsMsgHeader_Get(m, "X-Empty-Body", &v), "get X-Empty-Body");
    CHECK(strcmp(v, "yes") == 0, "X-Empty-Body is '%s'", v);
    ok = true;
out:
    free((void *)vals);
    natsMsg_Destroy(m);
    natsMsg_Destroy(out_msg);
    natsMsg_Destroy(out2);
    drop_sub(sub);
    close_conn(pub);
    close_conn(subc);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 5. request / reply                                                        */

static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    const char *reply = natsMsg_GetReply(msg);
    if (reply && *reply) {
        char buf[256];
        int len = natsMsg_GetDataLength(msg);
        if (len > 200)
            len = 200;
        memcpy(buf, "re:", 3);
        memcpy(buf + 3, natsMsg_GetData(msg), (size_t)len);
        natsConnection_Publish(nc, reply, buf, len + 3);
    }
    natsMsg_Destroy(msg);
}

static bool check_request_reply(void)
{
    natsConnection *svc = NULL, *cli = NULL;
    natsSubscription *sub = NULL;
    natsMsg *reply = NULL;
    bool ok = false;

    CHECK_S(conn(&svc, "interop-responder"), "connect responder");
    CHECK_S(natsConnection_Subscribe(&sub, svc, S("svc.echo"), on_request, NULL), "subscribe responder");
    CHECK_S(natsConnection_FlushTimeout(svc, MSG_TIMEOUT_MS), "flush responder");
    CHECK_S(conn(&cli, "interop-requester"), "connect requester");

    for (int i = 0; i < 5; i++) {
        char req[32], want[40];
        snprintf(req, sizeof req, "question %d", i);
        snprintf(want, sizeof want, "re:question %d", i);
        natsStatus s = natsConnection_RequestString(&reply, cli, S("svc.echo"), req, MSG_TIMEOUT_MS);
        CHECK(s == NATS_OK, "request %d: %s (%s)", i + 1, natsStatus_GetText(s), last_error());
        CHECK(natsMsg_GetDataLength(reply) == (int)strlen(want) &&
                  memcmp(natsMsg_GetData(reply), want, strlen(want)) == 0,
              "request %d: reply '%.*s', expected '%s'", i + 1, natsMsg_GetDataLength(reply),
              natsMsg_GetData(reply), want);
        natsMsg_Destroy(reply);
        reply = NULL;
    }
    ok = true;
out:
    natsMsg_Destroy(reply);
    if (sub)
        natsSubscription_Unsubscribe(sub);
    drop_sub(sub);
    close_conn(cli);
    close_conn(svc);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 6. unsubscribe after N messages                                           */

static bool check_auto_unsubscribe(void)
{
    natsConnection *pub = NULL, *subc = NULL;
    natsSubscription *sub = NULL;
    natsMsg *m = NULL;
    bool ok = false;
    int got = 0;

    CHECK_S(conn(&subc, "interop-autounsub-sub"), "connect subscriber");
    CHECK_S(conn(&pub, "interop-autounsub-pub"), "connect publisher");
    CHECK_S(natsConnection_SubscribeSync(&sub, subc, S("auto.unsub")), "subscribe");
    CHECK_S(natsSubscription_AutoUnsubscribe(sub, 5), "auto-unsubscribe");
    CHECK_S(natsConnection_FlushTimeout(subc, MSG_TIMEOUT_MS), "flush subscriber");
    uint64_t before = in_msgs(subc);
    for (int i = 0; i < 10; i++)
        CHECK_S(natsConnection_PublishString(pub, S("auto.unsub"), "x"), "publish");
    CHECK_S(natsConnection_FlushTimeout(pub, MSG_TIMEOUT_MS), "flush publisher");

    for (;;) {
        natsStatus s = natsSubscription_NextMsg(&m, sub, got < 5 ? MSG_TIMEOUT_MS : QUIET_TIMEOUT_MS);
        if (s != NATS_OK)
            break;
        got++;
        natsMsg_Destroy(m);
        m = NULL;
        if (got > 10)
            break;
    }
    CHECK(got == 5, "received %d messages, expected exactly 5", got);
    /* The client drops extras itself; check the server did not send them. */
    CHECK_S(natsConnection_FlushTimeout(subc, MSG_TIMEOUT_MS), "flush subscriber");
    uint64_t sent = in_msgs(subc) - before;
    CHECK(sent == 5, "server delivered %llu messages to the connection, expected 5 (UNSUB <sid> 5 not honoured)",
          (unsigned long long)sent);
    ok = true;
out:
    natsMsg_Destroy(m);
    drop_sub(sub);
    close_conn(pub);
    close_conn(subc);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 7. flush and ping                                                         */

static bool check_flush_rtt(void)
{
    natsConnection *nc = NULL;
    int64_t rtt = -1;
    bool ok = false;

    CHECK_S(conn(&nc, "interop-flush"), "connect");
    for (int i = 0; i < 3; i++)
        CHECK_S(natsConnection_FlushTimeout(nc, MSG_TIMEOUT_MS), "flush");
    CHECK_S(natsConnection_PublishString(nc, S("flush.nobody"), "data"), "publish");
    CHECK_S(natsConnection_FlushTimeout(nc, MSG_TIMEOUT_MS), "flush after publish");
    CHECK_S(natsConnection_GetRTT(nc, &rtt), "rtt");
    CHECK(rtt >= 0 && rtt < (int64_t)MSG_TIMEOUT_MS * 1000000, "rtt %lld ns", (long long)rtt);
    CHECK(natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED, "connection status %d after flushes",
          (int)natsConnection_Status(nc));
    ok = true;
out:
    close_conn(nc);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 8. server info                                                            */

static bool check_server_info(void)
{
    natsConnection *nc = NULL;
    char id[256] = "";
    char url[256] = "";
    bool ok = false;

    CHECK_S(conn(&nc, "interop-info"), "connect");
    CHECK_S(natsConnection_GetConnectedServerId(nc, id, sizeof id), "server id");
    CHECK(id[0] != '\0', "empty server id");
    CHECK(natsConnection_GetMaxPayload(nc) > 0, "max payload %lld", (long long)natsConnection_GetMaxPayload(nc));
    CHECK_S(natsConnection_GetConnectedUrl(nc, url, sizeof url), "connected url");
    CHECK(strstr(url, "127.0.0.1") != NULL, "connected url '%s'", url);
    ok = true;
out:
    close_conn(nc);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 9. no echo                                                                */

static bool check_no_echo(void)
{
    natsConnection *quiet = NULL, *other = NULL;
    natsSubscription *qsub = NULL, *osub = NULL;
    natsMsg *m = NULL;
    bool ok = false;
    char got[256];

    CHECK_S(connect_opts(&quiet, "interop-noecho", true), "connect with no_echo");
    CHECK_S(conn(&other, "interop-echo-other"), "connect other");
    CHECK_S(natsConnection_SubscribeSync(&qsub, quiet, S("echo.test")), "subscribe no_echo connection");
    CHECK_S(natsConnection_SubscribeSync(&osub, other, S("echo.test")), "subscribe other connection");
    CHECK_S(natsConnection_FlushTimeout(quiet, MSG_TIMEOUT_MS), "flush");
    CHECK_S(natsConnection_FlushTimeout(other, MSG_TIMEOUT_MS), "flush");
    uint64_t before = in_msgs(quiet);
    for (int i = 0; i < 3; i++)
        CHECK_S(natsConnection_PublishString(quiet, S("echo.test"), "mine"), "publish");
    CHECK_S(natsConnection_FlushTimeout(quiet, MSG_TIMEOUT_MS), "flush");

    int n = collect_subjects(osub, 3, got, sizeof got);
    CHECK(n == 3, "the other connection received %d of 3 messages", n);
    natsStatus s = natsSubscription_NextMsg(&m, qsub, QUIET_TIMEOUT_MS);
    CHECK(s == NATS_TIMEOUT, "the no_echo connection received its own message (%s)", natsStatus_GetText(s));
    CHECK_S(natsConnection_FlushTimeout(quiet, MSG_TIMEOUT_MS), "flush");
    CHECK(in_msgs(quiet) == before, "server sent %llu messages to the no_echo publisher",
          (unsigned long long)(in_msgs(quiet) - before));

    /* messages from another connection still reach it */
    CHECK_S(natsConnection_PublishString(other, S("echo.test"), "theirs"), "publish from other");
    CHECK_S(natsConnection_FlushTimeout(other, MSG_TIMEOUT_MS), "flush");
    s = natsSubscription_NextMsg(&m, qsub, MSG_TIMEOUT_MS);
    CHECK(s == NATS_OK, "the no_echo connection did not receive another connection's message (%s)",
          natsStatus_GetText(s));
    CHECK(natsMsg_GetDataLength(m) == 6 && memcmp(natsMsg_GetData(m), "theirs", 6) == 0, "wrong payload");
    ok = true;
out:
    natsMsg_Destroy(m);
    drop_sub(qsub);
    drop_sub(osub);
    close_conn(quiet);
    close_conn(other);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* 10. unsubscribe                                                           */

static bool check_unsubscribe(void)
{
    natsConnection *pub = NULL, *subc = NULL;
    natsSubscription *sub = NULL, *keep = NULL;
    natsMsg *m = NULL;
    bool ok = false;

    CHECK_S(conn(&subc, "interop-unsub-sub"), "connect subscriber");
    CHECK_S(conn(&pub, "interop-unsub-pub"), "connect publisher");
    CHECK_S(natsConnection_SubscribeSync(&sub, subc, S("unsub.test")), "subscribe");
    CHECK_S(natsConnection_SubscribeSync(&keep, subc, S("unsub.other")), "subscribe");
    CHECK_S(natsConnection_FlushTimeout(subc, MSG_TIMEOUT_MS), "flush subscriber");

    CHECK_S(natsConnection_PublishString(pub, S("unsub.test"), "before"), "publish");
    CHECK_S(natsConnection_FlushTimeout(pub, MSG_TIMEOUT_MS), "flush publisher");
    CHECK_S(natsSubscription_NextMsg(&m, sub, MSG_TIMEOUT_MS), "message before unsubscribe");
    natsMsg_Destroy(m);
    m = NULL;

    CHECK_S(natsSubscription_Unsubscribe(sub), "unsubscribe");
    CHECK_S(natsConnection_FlushTimeout(subc, MSG_TIMEOUT_MS), "flush subscriber");
    uint64_t before = in_msgs(subc);
    for (int i = 0; i < 5; i++)
        CHECK_S(natsConnection_PublishString(pub, S("unsub.test"), "after"), "publish");
    CHECK_S(natsConnection_PublishString(pub, S("unsub.other"), "still here"), "publish");
    CHECK_S(natsConnection_FlushTimeout(pub, MSG_TIMEOUT_MS), "flush publisher");

    /* the other subscription still works, and is the only thing delivered */
    CHECK_S(natsSubscription_NextMsg(&m, keep, MSG_TIMEOUT_MS), "message on the remaining subscription");
    natsMsg_Destroy(m);
    m = NULL;
    CHECK_S(natsConnection_FlushTimeout(subc, MSG_TIMEOUT_MS), "flush subscriber");
    uint64_t delivered = in_msgs(subc) - before;
    CHECK(delivered == 1, "server delivered %llu messages after UNSUB, expected only the 1 for the other subject",
          (unsigned long long)delivered);
    natsStatus s = natsSubscription_NextMsg(&m, sub, QUIET_TIMEOUT_MS);
    CHECK(s != NATS_OK, "a message arrived after unsubscribe");
    ok = true;
out:
    natsMsg_Destroy(m);
    drop_sub(sub);
    drop_sub(keep);
    close_conn(pub);
    close_conn(subc);
    return ok;
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc != 2 || atoi(argv[1]) <= 0 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: %s <port>\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(g_url, sizeof g_url, "nats://127.0.0.1:%d", atoi(argv[1]));
    snprintf(g_prefix, sizeof g_prefix, "interop%x%x", (unsigned)getpid(),
             (unsigned)(nats_NowInNanoSeconds() & 0xffffff));

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

    report("publish/subscribe: payloads intact (empty, binary, 100 KiB)", check_pubsub());
    report("wildcards: '*' is one token, '>' one or more trailing tokens", check_wildcards());
    report("queue groups: each message to exactly one member, plain subscriber gets all",
           check_queue_groups());
    report("headers: single and multi-valued headers round-trip", check_headers());
    report("request/reply: sequential requests answered", check_request_reply());
    report("auto-unsubscribe after 5 messages", check_auto_unsubscribe());
    report("flush and round-trip time", check_flush_rtt());
    report("server info: id, max payload", check_server_info());
    report("no echo: own messages are not delivered back", check_no_echo());
    report("unsubscribe: no message after UNSUB", check_unsubscribe());

    printf("1..%d\n", g_num);
    nats_CloseAndWait(2000);
    return g_failed ? 1 : 0;
}
