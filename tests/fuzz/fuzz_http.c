/*
 * fuzz_http.c - libFuzzer target for the HTTP face: each input is what one
 * client sends on one connection to tide's real HTTP handling (src/app/http.c
 * on libevent's evhttp): request lines, headers up to the 16 KiB limit,
 * bodies by Content-Length or chunked, pipelined requests, every route
 * (/v1/events in its three modes, /v1/publish/, /v1/tail, /metrics,
 * /healthz, ...) and their checks (Content-Type, Origin, reserved subjects).
 *
 * The node is made once, as tide serve makes it: a server (not listening),
 * an entry file with a stream "s" capturing "s.>" (so a post there waits
 * for its PubAck), a stream "b" on subjects delivered in binary mode, and
 * a filter, in a temporary directory.  For each input the HTTP face is
 * made on a fresh Unix listening socket; one client connects, sends the
 * input, shuts its side for writing and reads what comes back, while the
 * loop runs until the server closes the connection or nothing moves; then
 * the face is freed with whatever it still holds (a live tail, a request
 * waiting for PubAcks).  Run by scripts/fuzz.sh (replay in make test,
 * `run-http SECONDS` to fuzz).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "../../src/app/http.h"
#include "../../src/app/node.h"
#include "../../src/base/log.h"
#include "../../src/base/vfs.h"

/* Loop turns in which nothing moved (each waits up to QUIET_WAIT_US for
 * an event, a PubAck from the store's writer say) before an input is given
 * up on: a tail never closes by itself. */
#define QUIET_TURNS 4
#define QUIET_WAIT_US 5000
#define MAX_TURNS 2000

static node_t node;
static struct event *wake; /* bounds a quiet turn's wait */
static char dir[] = "/tmp/tide-fuzz-http-XXXXXX";

static void remove_dir(void)
{
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_http: could not remove %s\n", dir);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[1024] = "", path[128];
    server_opts_t o;
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_FATAL);
    if (!mkdtemp(dir) || vfs_init(err, sizeof err) < 0)
        goto fail;
    atexit(remove_dir);
    snprintf(path, sizeof path, "%s/tide.lua", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        goto fail;
    fprintf(f, "storage { dir = \"%s/data\" }\n"
               "http { binary = { \"b.>\" }, ack_timeout = \"1s\" }\n"
               "stream \"s\" { subjects = { \"s.>\" }, fsync = \"interval\" }\n"
               "stream \"b\" { subjects = { \"b.>\" }, fsync = \"never\" }\n"
               "filter(\"s.drop.>\", function(e) return false end)\n",
            dir);
    fclose(f);
    server_opts_default(&o);
    if (!(node.scripts = script_host_new(path, NULL, err, sizeof err)))
        goto fail;
    script_host_apply_settings(node.scripts, &o);
    if (!(node.srv = server_new(&o)) || node_start_scripts(&node, NULL) < 0)
        goto fail;
    if (!(wake = evtimer_new(server_base(node.srv), on_wake, NULL)))
        goto fail;
    return 0;
fail:
    fprintf(stderr, "fuzz_http: cannot set up: %s\n", err[0] ? err : strerror(errno));
    abort();
}

/* A Unix socket listening on an abstract address of its own, and a client
 * connected to it (not yet accepted); 0 or -1. */
static int socket_pair_listening(int *lfd, int *cfd)
{
    struct sockaddr_un a;
    socklen_t len = sizeof a;
    *lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    *cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    /* An empty abstract name: the kernel picks one (autobind). */
    if (*lfd < 0 || *cfd < 0 || bind(*lfd, (struct sockaddr *)&a, sizeof(sa_family_t)) < 0 || listen(*lfd, 4) < 0 ||
        getsockname(*lfd, (struct sockaddr *)&a, &len) < 0 || connect(*cfd, (struct sockaddr *)&a, len) < 0)
        return -1;
    return 0;
}

/* Sends what is left of the input, reads what came back: 1 when anything
 * moved; *closed once the server has closed the connection. */
static int client_turn(int cfd, const uint8_t *data, size_t size, size_t *sent, int *closed)
{
    char buf[65536];
    int moved = 0;
    if (*sent < size) {
        ssize_t n = send(cfd, data + *sent, size - *sent, MSG_NOSIGNAL);
        if (n > 0) {
            *sent += (size_t)n;
            moved = 1;
        } else if (n < 0 && errno != EAGAIN) {
            *sent = size; /* the server is gone: nothing more can be sent */
        }
        if (*sent == size)
            shutdown(cfd, SHUT_WR);
    }
    for (;;) {
        ssize_t n = recv(cfd, buf, sizeof buf, 0);
        if (n > 0) {
            moved = 1;
            continue;
        }
        if (n == 0 || errno != EAGAIN)
            *closed = 1;
        break;
    }
    return moved;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct event_base *base = server_base(node.srv);
    int lfd = -1, cfd = -1, closed = 0, quiet = 0;
    size_t sent = 0;
    if (socket_pair_listening(&lfd, &cfd) < 0) {
        fprintf(stderr, "fuzz_http: socket: %s\n", strerror(errno));
        abort();
    }
    node.http = http_new_fd(&node, lfd);
    if (!node.http) {
        fprintf(stderr, "fuzz_http: cannot make the HTTP face\n");
        abort();
    }
    if (size == 0)
        shutdown(cfd, SHUT_WR);
    for (int turn = 0; turn < MAX_TURNS && !closed && quiet < QUIET_TURNS; turn++) {
        if (client_turn(cfd, data, size, &sent, &closed)) {
            event_base_loop(base, EVLOOP_NONBLOCK);
            quiet = 0;
        } else {
            struct timeval tv = {0, QUIET_WAIT_US};
            evtimer_add(wake, &tv);
            event_base_loop(base, EVLOOP_ONCE);
            evtimer_del(wake);
            quiet++;
        }
    }
    close(cfd);
    event_base_loop(base, EVLOOP_NONBLOCK);
    http_free(node.http);
    node.http = NULL;
    event_base_loop(base, EVLOOP_NONBLOCK);
    return 0;
}
