/*
 * fuzz_admin.c - libFuzzer target for the admin requests' JSON: every
 * $TIDE.ADMIN verb the store answers (STREAM.*, CONSUMER.*, DLQ.*), fed
 * arbitrary request bodies against real streams on disk.
 *
 * The first byte of an input picks the verb, the rest is the request.  The
 * node is made once: a server (not listening), a stream "s" with records, a
 * consumer "c" on it whose dead letters go to the stream "d", in a temporary
 * directory.  Each request is answered as over NATS (to a reply subject
 * nobody listens on), then the loop runs what the answer left to do.  Built
 * from the base, core and store layers only: the store answers without Lua.
 * Run by scripts/fuzz.sh (replay in make test, `run-admin SECONDS` to fuzz).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "../../src/base/vfs.h"
#include "../../src/core/server.h"
#include "../../src/store/stream.h"

static const char *const verbs[] = {"STREAM.LS",    "CONSUMER.LS", "STREAM.INFO", "CONSUMER.INFO", "STREAM.GET",
                                    "STREAM.EVENTS", "DLQ.LS",      "DLQ.SHOW",    "DLQ.REPLAY"};
#define NVERBS (sizeof verbs / sizeof verbs[0])

static server_t *srv;
static streams_t *sm;
static char dir[] = "/tmp/tide-fuzz-admin-XXXXXX";

static void remove_dir(void)
{
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_admin: could not remove %s\n", dir);
}

static void publish(const char *subject, const char *payload)
{
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = subject;
    m.subject_len = strlen(subject);
    m.payload = payload;
    m.payload_len = strlen(payload);
    server_publish(srv, NULL, &m);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[512] = "";
    (void)argc;
    (void)argv;
    server_opts_t o;
    server_opts_default(&o);
    if (vfs_init(err, sizeof err) < 0 || !mkdtemp(dir) || !(srv = server_new(&o)) || !(sm = streams_new(srv, dir))) {
        fprintf(stderr, "fuzz_admin: cannot set up: %s\n", err);
        abort();
    }
    atexit(remove_dir);
    static stream_cfg_t s[2];
    static consumer_cfg_t c[1];
    const char *names[2] = {"s", "d"}, *subjects[2] = {"s.>", "d.>"};
    for (int i = 0; i < 2; i++) {
        snprintf(s[i].name, sizeof s[i].name, "%s", names[i]);
        s[i].subjects[0] = strdup(subjects[i]);
        s[i].nsubjects = 1;
        s[i].o.segment_size = 64 * 1024;
        s[i].o.fsync = FSYNC_NEVER;
        s[i].dedup_fn_ref = -2; /* LUA_NOREF */
    }
    snprintf(c[0].name, sizeof c[0].name, "c");
    snprintf(c[0].stream, sizeof c[0].stream, "s");
    snprintf(c[0].deliver, sizeof c[0].deliver, "c.work");
    snprintf(c[0].dead_letter, sizeof c[0].dead_letter, "d.c");
    c[0].ack_wait = 30;
    c[0].max_deliver = 1;
    c[0].max_ack_pending = 100;
    if (streams_apply(sm, s, 2, c, 1, err, sizeof err) < 0) {
        fprintf(stderr, "fuzz_admin: %s\n", err);
        abort();
    }
    for (int i = 0; i < 20; i++) {
        char subject[32], payload[64];
        snprintf(subject, sizeof subject, "s.%d", i % 4);
        snprintf(payload, sizeof payload, "{\"n\":%d}", i);
        publish(subject, payload);
    }
    publish("d.c", "{\"dead\":true}");
    for (int i = 0; i < 4; i++)
        event_base_loop(server_base(srv), EVLOOP_NONBLOCK);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *verb = verbs[data[0] % NVERBS];
    proto_msg_t req;
    memset(&req, 0, sizeof req);
    req.subject = "$TIDE.ADMIN.X";
    req.subject_len = strlen(req.subject);
    req.reply = "_fuzz.reply";
    req.reply_len = strlen(req.reply);
    req.payload = (const char *)data + 1;
    req.payload_len = size - 1;
    streams_admin(sm, verb, strlen(verb), &req);
    event_base_loop(server_base(srv), EVLOOP_NONBLOCK);
    return 0;
}
