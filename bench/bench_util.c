/* bench_util.c - see bench_util.h. */
#include "bench_util.h"

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void sleep_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

long bench_parse_long(const char *prog, const char *opt, const char *v)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < 0) {
        fprintf(stderr, "%s: bad value for %s: %s\n", prog, opt, v);
        exit(2);
    }
    return x;
}

double bench_parse_double(const char *prog, const char *opt, const char *v, bool positive)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || x < 0 || (positive && x == 0) || !isfinite(x)) {
        fprintf(stderr, "%s: bad value for %s: %s\n", prog, opt, v);
        exit(2);
    }
    return x;
}

int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

double pct(const double *v, size_t n, double p)
{
    size_t r = (size_t)ceil(p * (double)n);
    if (r < 1)
        r = 1;
    if (r > n)
        r = n;
    return v[r - 1];
}

struct addrinfo *bench_resolve(const char *url, char *err, size_t errsz)
{
    char host[256], port[32];
    const char *p = url;
    const char *scheme = strstr(p, "://");
    if (scheme)
        p = scheme + 3;
    const char *at = strrchr(p, '@');
    if (at)
        p = at + 1;
    const char *colon = strrchr(p, ':');
    size_t hl = colon ? (size_t)(colon - p) : strlen(p);
    if (hl == 0 || hl >= sizeof host) {
        snprintf(err, errsz, "bad url %s", url);
        return NULL;
    }
    memcpy(host, p, hl);
    host[hl] = 0;
    snprintf(port, sizeof port, "%s", colon ? colon + 1 : "4222");
    char *slash = strchr(port, '/');
    if (slash)
        *slash = 0;
    struct addrinfo hints = { 0 }, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        snprintf(err, errsz, "cannot resolve %s: %s", url, gai_strerror(rc));
        return NULL;
    }
    return ai;
}

static const char raw_hello[] = "CONNECT {\"verbose\":false}\r\nPING\r\n";

int bench_raw_connect(const struct addrinfo *ai, int timeout_ms, char *err, size_t errsz, char *info,
                      size_t infosz)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        snprintf(err, errsz, "socket: %s", strerror(errno));
        return -1;
    }
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        snprintf(err, errsz, "connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (send(fd, raw_hello, sizeof raw_hello - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof raw_hello - 1)) {
        snprintf(err, errsz, "send: %s", strerror(errno));
        close(fd);
        return -1;
    }
    /* INFO lines can be long; keep only a bounded tail for PONG detection
     * while copying the first line out for the caller. */
    char buf[8192];
    size_t len = 0;
    int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        if (len == sizeof buf - 1) {
            memmove(buf, buf + len - 64, 64);
            len = 64;
        }
        ssize_t r = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (r <= 0) {
            snprintf(err, errsz, "recv: %s", r == 0 ? "closed by server" : strerror(errno));
            close(fd);
            return -1;
        }
        len += (size_t)r;
        buf[len] = 0;
        if (info && !info[0] && strncmp(buf, "INFO", 4) == 0) {
            char *eol = strstr(buf, "\r\n");
            if (eol) {
                size_t l = (size_t)(eol - buf);
                if (l >= infosz)
                    l = infosz - 1;
                memcpy(info, buf, l);
                info[l] = 0;
            }
        }
        char *e = strstr(buf, "-ERR");
        if (e) {
            char *eol = strstr(e, "\r\n");
            if (eol)
                *eol = 0;
            snprintf(err, errsz, "server said: %.200s", e);
            close(fd);
            return -1;
        }
        if (strstr(buf, "PONG\r\n"))
            break;
        if (now_ns() > deadline) {
            snprintf(err, errsz, "no PONG within %d ms", timeout_ms);
            close(fd);
            return -1;
        }
    }
    tv.tv_sec = 0;
    tv.tv_usec = 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* ------------------------------------------------- libnats connections */

atomic_int bench_async_errors;
atomic_int bench_disconnects;
atomic_bool bench_closing;
char bench_last_async_error[256];
static const char *bench_prog = "bench"; /* set by bench_nats_connect */

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)nc;
    (void)sub;
    const char *name = closure;
    atomic_fetch_add(&bench_async_errors, 1);
    snprintf(bench_last_async_error, sizeof bench_last_async_error, "%s: %s", name ? name : "?",
             natsStatus_GetText(err));
    fprintf(stderr, "%s: async error on %s: %s\n", bench_prog, name ? name : "?", natsStatus_GetText(err));
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    const char *name = closure;
    if (atomic_load(&bench_closing))
        return;
    atomic_fetch_add(&bench_disconnects, 1);
    fprintf(stderr, "%s: %s disconnected\n", bench_prog, name ? name : "?");
}

natsStatus bench_nats_connect(natsConnection **nc, const char *prog, const char *url, const char *name,
                              bool send_asap, const char *tls_ca)
{
    natsOptions *opts = NULL;
    bench_prog = prog;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = natsOptions_SetURL(opts, url);
    if (s == NATS_OK) s = natsOptions_SetName(opts, name);
    if (s == NATS_OK) s = natsOptions_SetAllowReconnect(opts, false);
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, 5000);
    if (s == NATS_OK) s = natsOptions_SetSendAsap(opts, send_asap);
    if (s == NATS_OK && tls_ca) s = natsOptions_SetSecure(opts, true);
    if (s == NATS_OK && tls_ca) s = natsOptions_LoadCATrustedCertificates(opts, tls_ca);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(opts, on_async_error, (void *)name);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts, on_disconnected, (void *)name);
    if (s == NATS_OK) s = natsConnection_Connect(nc, opts);
    natsOptions_Destroy(opts);
    return s;
}

const char *bench_nats_error(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    return t && t[0] ? t : natsStatus_GetText(s);
}
