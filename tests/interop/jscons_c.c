/*
 * jscons_c.c - JetStream consumer interop checks with the official NATS C
 * client (libnats): js_AddConsumer (again with the same and with another
 * configuration), js_GetConsumerInfo, js_PullSubscribe with
 * natsSubscription_Fetch and natsSubscription_FetchRequest, AckSync, NAK
 * and TERM, js_DeleteConsumer, and the errors for a missing stream or
 * consumer.
 *
 * Usage: interop_jscons_c <port>
 *
 * Makes stream CS (subjects cs.>) through js_AddStream on a server with
 * JetStream and an empty store (tests/jsapi_consumer_spec.lua runs it
 * against tide and against nats-server -js), so the checks expect exact
 * sequences.
 *
 * Every check prints one TAP line ("ok N - name" or "not ok N - name #
 * why"), then "1..N".  Exit status 0 iff every check passed; a watchdog
 * ends the program ("Bail out!", exit 2) after WATCHDOG_SECONDS.
 */
#include <nats/nats.h>

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WATCHDOG_SECONDS 40

static int g_num, g_failed;
static char g_reason[512];

static void on_alarm(int sig)
{
    static const char msg[] = "Bail out! global timeout\n";
    ssize_t w = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)w;
    (void)sig;
    _exit(2);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    va_list ap;
    if (g_reason[0])
        return;
    va_start(ap, fmt);
    vsnprintf(g_reason, sizeof g_reason, fmt, ap);
    va_end(ap);
}

/* Prints the TAP line of the check just run (failed when fail() was called). */
static void report(const char *name)
{
    g_num++;
    if (g_reason[0]) {
        g_failed++;
        printf("not ok %d - %s # %s\n", g_num, name, g_reason);
    } else {
        printf("ok %d - %s\n", g_num, name);
    }
    fflush(stdout);
    g_reason[0] = '\0';
}

/* The stream sequences and delivery counts of list, as "1/1 2/1 ...". */
static void describe(const natsMsgList *list, char *out, size_t n)
{
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < list->Count && o + 32 < n; i++) {
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, list->Msgs[i]) == NATS_OK) {
            o += (size_t)snprintf(out + o, n - o, "%s%llu/%llu", i ? " " : "",
                                  (unsigned long long)meta->Sequence.Stream,
                                  (unsigned long long)meta->NumDelivered);
            jsMsgMetaData_Destroy(meta);
        }
    }
}

/* Fetches batch with timeout ms, checks the sequences/deliveries against
 * want ("" for none: a timeout), and acks them as ack says (a: AckSync,
 * n: Nak, t: Term). */
static void fetch_check(natsSubscription *sub, int batch, int64_t timeout, const char *want, char ack)
{
    natsMsgList list = {0};
    jsErrCode jerr = 0;
    char got[512];
    natsStatus s = natsSubscription_Fetch(&list, sub, batch, timeout, &jerr);
    if (s != NATS_OK && !(s == NATS_TIMEOUT && !want[0])) {
        fail("fetch: %s (jerr %d)", natsStatus_GetText(s), (int)jerr);
        natsMsgList_Destroy(&list);
        return;
    }
    describe(&list, got, sizeof got);
    if (strcmp(got, want))
        fail("got [%s], expected [%s]", got, want);
    for (int i = 0; i < list.Count; i++) {
        natsStatus as = ack == 'a' ? natsMsg_AckSync(list.Msgs[i], NULL, &jerr)
                        : ack == 'n' ? natsMsg_Nak(list.Msgs[i], NULL)
                                     : natsMsg_Term(list.Msgs[i], NULL);
        if (as != NATS_OK)
            fail("ack %c: %s", ack, natsStatus_GetText(as));
    }
    natsMsgList_Destroy(&list);
}

static void check_info(jsCtx *js, const char *consumer, uint64_t dstream, uint64_t floor, int64_t ack_pending,
                       uint64_t pending)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js, "CS", consumer, NULL, &jerr);
    if (s != NATS_OK) {
        fail("js_GetConsumerInfo: %s (jerr %d)", natsStatus_GetText(s), (int)jerr);
        return;
    }
    if (ci->Delivered.Stream != dstream || ci->AckFloor.Stream != floor || ci->NumAckPending != ack_pending ||
        ci->NumPending != pending)
        fail("delivered %llu, ack floor %llu, ack pending %lld, pending %llu; expected %llu, %llu, %lld, %llu",
             (unsigned long long)ci->Delivered.Stream, (unsigned long long)ci->AckFloor.Stream,
             (long long)ci->NumAckPending, (unsigned long long)ci->NumPending, (unsigned long long)dstream,
             (unsigned long long)floor, (long long)ack_pending, (unsigned long long)pending);
    jsConsumerInfo_Destroy(ci);
}

/* js_AddConsumer of durable PULLC (pull, explicit acks) with deliver
 * policy dp: the status and JetStream error code. */
static natsStatus add_pullc(jsCtx *js, jsDeliverPolicy dp, jsErrCode *jerr)
{
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsConsumerConfig_Init(&cc);
    cc.Durable = "PULLC";
    cc.AckPolicy = js_AckExplicit;
    cc.DeliverPolicy = dp;
    *jerr = 0;
    natsStatus s = js_AddConsumer(&ci, js, "CS", &cc, NULL, jerr);
    if (s == NATS_OK && (strcmp(ci->Name, "PULLC") || ci->Config->MaxAckPending != 1000 ||
                         ci->Config->AckWait != 30000000000LL || ci->NumPending != 10))
        fail("name %s, max ack pending %lld, ack wait %lld, pending %llu", ci->Name,
             (long long)ci->Config->MaxAckPending, (long long)ci->Config->AckWait,
             (unsigned long long)ci->NumPending);
    jsConsumerInfo_Destroy(ci);
    return s;
}

static void run(jsCtx *js)
{
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    const char *subjects[] = {"cs.>"};
    natsSubscription *sub = NULL;
    jsStreamConfig_Init(&sc);
    sc.Name = "CS";
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    if (js_AddStream(&si, js, &sc, NULL, &jerr) != NATS_OK)
        fail("js_AddStream: jerr %d", (int)jerr);
    jsStreamInfo_Destroy(si);
    for (int i = 1; i <= 10 && !g_reason[0]; i++) {
        char subj[32], data[32];
        snprintf(subj, sizeof subj, "cs.%d", i % 3);
        snprintf(data, sizeof data, "message %d", i);
        if (js_Publish(NULL, js, subj, data, (int)strlen(data), NULL, &jerr) != NATS_OK)
            fail("js_Publish %d: jerr %d", i, (int)jerr);
    }
    report("js_AddStream and 10 js_Publish");

    if (add_pullc(js, js_DeliverAll, &jerr) != NATS_OK)
        fail("js_AddConsumer: jerr %d", (int)jerr);
    report("js_AddConsumer: a durable pull consumer with the defaults filled in");
    if (add_pullc(js, js_DeliverAll, &jerr) != NATS_OK)
        fail("js_AddConsumer again: jerr %d", (int)jerr);
    report("js_AddConsumer with the same configuration again");
    if (add_pullc(js, js_DeliverNew, &jerr) == NATS_OK || jerr != 10012)
        fail("expected error 10012, got jerr %d", (int)jerr);
    report("js_AddConsumer with another deliver policy: 10012");

    natsStatus s = js_PullSubscribe(&sub, js, "cs.>", "PULLC", NULL, NULL, &jerr);
    if (s != NATS_OK) {
        fail("js_PullSubscribe: %s (jerr %d)", natsStatus_GetText(s), (int)jerr);
        report("js_PullSubscribe binds to the consumer");
        return;
    }
    report("js_PullSubscribe binds to the consumer");
    fetch_check(sub, 4, 2000, "1/1 2/1 3/1 4/1", 'a');
    report("natsSubscription_Fetch 4, AckSync each");
    check_info(js, "PULLC", 4, 4, 0, 6);
    report("js_GetConsumerInfo after the first fetch");
    fetch_check(sub, 10, 1000, "5/1 6/1 7/1 8/1 9/1 10/1", 'a');
    report("natsSubscription_Fetch 10 gets the 6 left");
    fetch_check(sub, 2, 500, "", 'a');
    report("natsSubscription_Fetch with nothing left times out");

    js_Publish(NULL, js, "cs.x", "eleven", 6, NULL, &jerr);
    fetch_check(sub, 1, 2000, "11/1", 'n');
    fetch_check(sub, 1, 2000, "11/2", 't');
    fetch_check(sub, 1, 500, "", 'a');
    report("NAK redelivers, TERM ends it");

    jsFetchRequest fr;
    natsMsgList list = {0};
    jsFetchRequest_Init(&fr);
    fr.Batch = 5;
    fr.Expires = 600LL * 1000000;
    fr.Heartbeat = 100LL * 1000000;
    /* The fetch that timed out left its request on the server for a little
     * longer than the client waited (nats-server would give it the next
     * message, which the client no longer reads): let it expire. */
    usleep(300 * 1000);
    js_Publish(NULL, js, "cs.y", "twelve", 6, NULL, &jerr);
    s = natsSubscription_FetchRequest(&list, sub, &fr);
    if (s != NATS_OK || list.Count != 1)
        fail("FetchRequest: %s, %d messages", natsStatus_GetText(s), list.Count);
    for (int i = 0; i < list.Count; i++)
        natsMsg_AckSync(list.Msgs[i], NULL, &jerr);
    natsMsgList_Destroy(&list);
    report("natsSubscription_FetchRequest with expires and heartbeats");
    check_info(js, "PULLC", 12, 12, 0, 0);
    report("js_GetConsumerInfo at the end");
    natsSubscription_Destroy(sub);

    if (js_DeleteConsumer(js, "CS", "PULLC", NULL, &jerr) != NATS_OK)
        fail("js_DeleteConsumer: jerr %d", (int)jerr);
    jsConsumerInfo *ci = NULL;
    if (js_GetConsumerInfo(&ci, js, "CS", "PULLC", NULL, &jerr) == NATS_OK || jerr != 10014)
        fail("after the delete: jerr %d, expected 10014", (int)jerr);
    jsConsumerInfo_Destroy(ci);
    report("js_DeleteConsumer; then its info is 10014");

    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = "X";
    cc.AckPolicy = js_AckExplicit;
    ci = NULL;
    if (js_AddConsumer(&ci, js, "MISSING", &cc, NULL, &jerr) == NATS_OK || jerr != 10059)
        fail("jerr %d, expected 10059", (int)jerr);
    jsConsumerInfo_Destroy(ci);
    report("js_AddConsumer on a missing stream: 10059");
}

int main(int argc, char **argv)
{
    char url[64];
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    if (argc != 2 || atoi(argv[1]) <= 0) {
        fprintf(stderr, "usage: interop_jscons_c <port>\n");
        return 2;
    }
    signal(SIGALRM, on_alarm);
    alarm(WATCHDOG_SECONDS);
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", atoi(argv[1]));
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, NULL);
    if (s != NATS_OK) {
        printf("Bail out! cannot connect to %s: %s\n", url, natsStatus_GetText(s));
        return 2;
    }
    run(js);
    printf("1..%d\n", g_num);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return g_failed ? 1 : 0;
}
