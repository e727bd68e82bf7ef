/* server.c - see server.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "alloc.h"
#include "auth.h"
#include "authq.h"
#include "client.h"
#include "json_int.h"
#include "log.h"
#include "server.h"
#include "subject.h"
#include "tls.h"
#include "util.h"

struct server {
    server_opts_t opts;
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *sig_int, *sig_term;
    struct event *reaper;        /* frees closed clients outside their callbacks */
    struct event *flusher;       /* writes queued output once the callback that queued it returns */
    client_t *flush;             /* clients with output to write (client.h) */
    struct event *shutdown_timer;
    alloc_trimmer_t *trimmer;    /* gives free heap back to the system (alloc.h) */
    sublist_t *subs;
    client_t *clients;           /* live clients */
    client_t *dead;              /* closed, waiting for the reaper */
    sub_t **expired;             /* auto-unsubscribed during a route, removed after the outermost */
    sub_t **internal;            /* subscriptions inside the server */
    size_t ninternal;
    size_t ngone;                /* of them, removed during a route (SUB_GONE) */
    int routing;                 /* routes under way (a delivery may route again) */
    void (*close_hook)(void *ctx, client_t *c); /* sees every client freed */
    void *close_hook_ctx;
    size_t nexpired, capexpired;
    uint64_t next_client_id;
    int shutting_down;
    server_msg_hook ingress;     /* every publish but admin requests (the script pipeline) */
    void *ingress_ctx;
    server_msg_hook admin;       /* $TIDE.ADMIN.> requests */
    void *admin_ctx;
    int info_jetstream;          /* INFO says "jetstream":true */
    void (*input_tap)(void *ctx, const proto_msg_t *m); /* sees every publish (tide repl's record) */
    void *input_tap_ctx;
    server_stats_t stats;
    int (*capture)(void *ctx, const proto_msg_t *m); /* the streams: 1 when a stream took m */
    void *capture_ctx;
    int capture_paused; /* server_pause_capture: tide repl's replay() */
    server_output_t output; /* output queued for all clients (client.h) */
    int reserve_fd;      /* held for the moment no descriptor is left (on_accept_error) */
    auth_config_t *auth; /* who may connect and do what; NULL: anyone, anything */
    authq_t *authq;      /* the bcrypt checker threads, started on first use */
    tls_context_t *tls;  /* what new connections get (server_set_tls), or NULL: plain */
    server_cluster_hooks_t cluster; /* cluster mode (server_set_cluster); egress NULL: off */
    char id[23];
};

void server_opts_default(server_opts_t *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->host, sizeof o->host, "127.0.0.1");
    o->port = TIDE_DEFAULT_PORT;
    o->max_payload = PROTO_MAX_PAYLOAD;
    o->max_control_line = PROTO_MAX_CONTROL_LINE;
    o->max_pending = TIDE_DEFAULT_MAX_PENDING;
    o->ping_interval = 120;
    o->max_pings_out = 2;
    o->write_deadline = 2;
    o->max_connections = TIDE_DEFAULT_MAX_CONNECTIONS;
    o->max_pending_total = TIDE_DEFAULT_MAX_PENDING_TOTAL;
}

static void make_id(char out[23])
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    unsigned char raw[22];
    evutil_secure_rng_get_bytes(raw, sizeof raw);
    for (int i = 0; i < 22; i++)
        out[i] = alphabet[raw[i] & 31];
    out[22] = '\0';
}

/*
 * The loop, with the priorities of server.h.  TLS handshakes run at the
 * lowest and one step at a time per loop pass (a step of an RSA handshake
 * costs about a millisecond of CPU): after each the loop polls again and
 * serves connected clients first, so a burst of handshakes delays them by
 * one step at most instead of by the whole burst.
 */
static struct event_base *new_base(void)
{
    struct event_config *cfg = event_config_new();
    struct event_base *base = NULL;
    if (!cfg)
        return NULL;
    if (event_config_set_max_dispatch_interval(cfg, NULL, 1, SERVER_PRIORITY_HANDSHAKE) == 0)
        base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (base && event_base_priority_init(base, SERVER_PRIORITIES) < 0) {
        event_base_free(base);
        base = NULL;
    }
    return base;
}

static void on_reap(evutil_socket_t fd, short what, void *arg);
static void on_flush(evutil_socket_t fd, short what, void *arg);
static void on_signal(evutil_socket_t sig, short what, void *arg);

server_t *server_new(const server_opts_t *opts)
{
    server_t *s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->opts = *opts;
    make_id(s->id);
    if (!s->opts.server_name[0])
        snprintf(s->opts.server_name, sizeof s->opts.server_name, "%s", s->id);
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    s->output.cap = s->opts.max_pending_total;
    s->base = new_base();
    s->subs = sublist_new();
    if (!s->base || !s->subs)
        goto fail;
    s->reaper = event_new(s->base, -1, 0, on_reap, s);
    s->flusher = event_new(s->base, -1, 0, on_flush, s);
    s->sig_int = evsignal_new(s->base, SIGINT, on_signal, s);
    s->sig_term = evsignal_new(s->base, SIGTERM, on_signal, s);
    alloc_tune();
    s->trimmer = alloc_trimmer_new(s->base, ALLOC_TRIM_INTERVAL, ALLOC_KEEP_FREE, &s->stats.out_msgs);
    if (!s->reaper || !s->flusher || !s->sig_int || !s->sig_term || !s->trimmer)
        goto fail;
    event_add(s->sig_int, NULL);
    event_add(s->sig_term, NULL);
    return s;
fail:
    log_error("cannot create the server: out of memory or no event backend");
    server_free(s);
    return NULL;
}

void server_free(server_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->ninternal; i++) {
        sublist_remove(s->subs, s->internal[i]);
        free(s->internal[i]->subject);
        free(s->internal[i]);
    }
    free(s->internal);
    while (s->clients) {
        client_t *c = s->clients;
        server_unlink_client(s, c);
        client_free(c);
    }
    while (s->dead) {
        client_t *c = s->dead;
        s->dead = c->next_dead;
        client_free(c);
    }
    authq_free(s->authq); /* after the clients: they drop their jobs */
    auth_config_release(s->auth);
    if (s->listener)
        evconnlistener_free(s->listener);
    if (s->reserve_fd >= 0)
        close(s->reserve_fd);
    tls_context_unref(s->tls);
    if (s->reaper)
        event_free(s->reaper);
    if (s->flusher)
        event_free(s->flusher);
    if (s->sig_int)
        event_free(s->sig_int);
    if (s->sig_term)
        event_free(s->sig_term);
    if (s->shutdown_timer)
        event_free(s->shutdown_timer);
    alloc_trimmer_free(s->trimmer);
    sublist_free(s->subs);
    free(s->expired);
    if (s->base)
        event_base_free(s->base);
    free(s);
}

sublist_t *server_sublist(server_t *s) { return s->subs; }
struct event_base *server_base(server_t *s) { return s->base; }
server_stats_t *server_stats_mut(server_t *s) { return &s->stats; }
const server_opts_t *server_get_opts(const server_t *s) { return &s->opts; }
const char *server_id(const server_t *s) { return s->id; }

/* server_subscribe_internal with flags set on the subscription before it
 * goes into the index. */
static sub_t *subscribe_inside(server_t *s, const char *pattern, void (*fn)(void *, const proto_msg_t *), void *ctx,
                               int flags)
{
    size_t n = strlen(pattern);
    sub_t *sub = calloc(1, sizeof *sub);
    sub_t **ni = realloc(s->internal, (s->ninternal + 1) * sizeof *ni);
    if (!sub || !ni || !subject_valid_pattern(pattern, n)) {
        free(sub);
        if (ni)
            s->internal = ni;
        return NULL;
    }
    s->internal = ni;
    sub->subject = util_mem_dup(pattern, n);
    sub->subject_len = n;
    sub->deliver = fn;
    sub->deliver_ctx = ctx;
    sub->flags = flags;
    if (!sub->subject || sublist_insert(s->subs, sub) < 0) {
        free(sub->subject);
        free(sub);
        return NULL;
    }
    s->internal[s->ninternal++] = sub;
    return sub;
}

sub_t *server_subscribe_internal(server_t *s, const char *pattern, void (*fn)(void *, const proto_msg_t *),
                                 void *ctx)
{
    return subscribe_inside(s, pattern, fn, ctx, 0);
}

sub_t *server_subscribe_as_client(server_t *s, const char *pattern, void (*fn)(void *, const proto_msg_t *),
                                  void *ctx)
{
    sub_t *sub = subscribe_inside(s, pattern, fn, ctx, SUB_AS_CLIENT);
    if (sub)
        server_note_interest(s, sub, 1);
    return sub;
}

/* Frees the internal subscriptions marked SUB_GONE (none walks a result now). */
static void sweep_internal(server_t *s)
{
    size_t k = 0;
    for (size_t i = 0; i < s->ninternal; i++) {
        sub_t *sub = s->internal[i];
        if (!(sub->flags & SUB_GONE)) {
            s->internal[k++] = sub;
            continue;
        }
        sublist_remove(s->subs, sub);
        free(sub->subject);
        free(sub);
    }
    s->ninternal = k;
    s->ngone = 0;
}

void server_unsubscribe_internal(server_t *s, sub_t *sub)
{
    if (!sub || (sub->flags & SUB_GONE))
        return;
    if (sub->flags & SUB_AS_CLIENT)
        server_note_interest(s, sub, 0);
    sub->flags |= SUB_GONE;
    s->ngone++;
    if (!s->routing)
        sweep_internal(s);
}

void server_set_close_hook(server_t *s, void (*fn)(void *ctx, client_t *c), void *ctx)
{
    s->close_hook = fn;
    s->close_hook_ctx = ctx;
}

void server_set_ingress(server_t *s, server_msg_hook fn, void *ctx)
{
    s->ingress = fn;
    s->ingress_ctx = ctx;
}

void server_set_admin(server_t *s, server_msg_hook fn, void *ctx)
{
    s->admin = fn;
    s->admin_ctx = ctx;
}

size_t server_connections(const server_t *s)
{
    return s->stats.connections;
}

void server_get_stats(const server_t *s, server_stats_t *out)
{
    *out = s->stats;
}

void server_set_info_jetstream(server_t *s, int on)
{
    s->info_jetstream = on;
}

void server_build_info(server_t *s, client_t *c, char *out, size_t outsz)
{
    const tls_config_t *tc = client_is_tls(c) && s->tls ? tls_context_config(s->tls) : NULL;
    snprintf(out, outsz,
             "INFO {\"server_id\":\"%s\",\"server_name\":\"%s\",\"version\":\"%s\",\"tide_version\":\"%s\","
             "\"proto\":1,\"host\":\"%s\",\"port\":%d,\"headers\":true,%s%s%s\"max_payload\":%zu,"
             "\"client_id\":%llu,\"client_ip\":\"%s\"%s%s%s}\r\n",
             s->id, s->opts.server_name, TIDE_NATS_VERSION, TIDE_VERSION, s->opts.host, s->opts.port,
             /* As nats-server: with a no_auth_user no client has to authenticate. */
             s->auth && !s->auth->no_auth_user ? "\"auth_required\":true," : "",
             !tc ? "" : tc->verify ? "\"tls_required\":true,\"tls_verify\":true," : "\"tls_required\":true,",
             s->info_jetstream ? "\"jetstream\":true," : "", s->opts.max_payload, (unsigned long long)c->id, c->ip,
             c->nonce[0] ? ",\"nonce\":\"" : "", c->nonce, c->nonce[0] ? "\"" : "");
}

const auth_config_t *server_auth(const server_t *s)
{
    return s->auth;
}

authq_t *server_authq(server_t *s)
{
    if (!s->authq) {
        /* One thread per core, a few at most: a storm of logins then takes
         * the spare cores, never the loop's. */
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        s->authq = authq_new(s->base, n < 1 ? 1 : n > 4 ? 4 : (int)n, client_auth_answer, s);
    }
    return s->authq;
}

void server_set_auth(server_t *s, auth_config_t *cfg)
{
    auth_config_t *old = s->auth;
    if (cfg == old)
        return;
    s->auth = auth_config_retain(cfg);
    for (client_t *c = s->clients, *next; c; c = next) {
        next = c->next; /* c may close, and leave the list */
        client_auth_reload(c, cfg);
    }
    auth_config_release(old); /* no client points into it any more */
    log_info("auth: %s", !cfg ? "off: any client may connect and do anything"
                         : cfg->token ? "one shared token"
                                      : "users and permissions");
}

void server_set_tls(server_t *s, tls_context_t *t)
{
    if (t == s->tls)
        return;
    tls_context_unref(s->tls);
    s->tls = tls_context_ref(t);
    if (t)
        log_info("TLS required for client connections (cert %s%s)", tls_context_config(t)->cert,
                 tls_context_config(t)->verify ? ", client certificates verified" : "");
}

tls_context_t *server_tls(const server_t *s)
{
    return s->tls;
}

void server_unlink_client(server_t *s, client_t *c)
{
    s->output.total -= c->queued; /* its output leaves the count with it */
    c->queued = 0;
    if (c->prev)
        c->prev->next = c->next;
    else if (s->clients == c)
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

void server_schedule_free(server_t *s, client_t *c)
{
    if (c->flags & CLIENT_FREE_SCHEDULED)
        return;
    c->flags |= CLIENT_FREE_SCHEDULED | CLIENT_CLOSING;
    server_unlink_client(s, c);
    c->next_dead = s->dead;
    s->dead = c;
    event_active(s->reaper, EV_TIMEOUT, 0);
}

void server_want_flush(server_t *s, client_t *c)
{
    if (c->flags & (CLIENT_FLUSH_PENDING | CLIENT_CLOSING))
        return;
    c->flags |= CLIENT_FLUSH_PENDING;
    c->flush_prev = NULL;
    c->flush_next = s->flush;
    if (s->flush)
        s->flush->flush_prev = c;
    else
        event_active(s->flusher, EV_TIMEOUT, 0);
    s->flush = c;
}

void server_forget_flush(server_t *s, client_t *c)
{
    if (!(c->flags & CLIENT_FLUSH_PENDING))
        return;
    c->flags &= ~CLIENT_FLUSH_PENDING;
    if (c->flush_prev)
        c->flush_prev->flush_next = c->flush_next;
    else
        s->flush = c->flush_next;
    if (c->flush_next)
        c->flush_next->flush_prev = c->flush_prev;
    c->flush_prev = c->flush_next = NULL;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    server_t *s = arg;
    (void)fd;
    (void)what;
    while (s->flush) {
        client_t *c = s->flush;
        server_forget_flush(s, c);
        client_flush(c); /* may close c (a write error): it is off the list already */
    }
}

/* Subscriptions of closed clients freed per turn of the loop: about a
 * millisecond of work, so a connection closing with 100,000 of them never
 * keeps the others waiting for more than that. */
#define SERVER_REAP_BATCH 2000

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    server_t *s = arg;
    (void)fd;
    (void)what;
    while (s->dead) {
        client_t *c = s->dead;
        if (client_drop_subs(c, SERVER_REAP_BATCH) > 0) {
            /* The rest on a later turn: a timer, not event_active, so that
             * the loop polls the sockets in between. */
            struct timeval now = {0, 0};
            event_add(s->reaper, &now);
            return;
        }
        s->dead = c->next_dead;
        s->stats.connections--;
        if (s->close_hook)
            s->close_hook(s->close_hook_ctx, c);
        client_free(c);
    }
    if (s->shutting_down && !s->clients)
        event_base_loopbreak(s->base);
}

#define NATS_REFUSED "-ERR 'maximum connections exceeded'\r\n"

/* Tells a connection it cannot be served (msg: what to send it, as much as
 * the socket takes at once) and closes it; logged at most once a second. */
static void refuse_connection(server_t *s, int fd, const char *why, const char *msg, size_t len)
{
    static time_t last;
    if (len) {
        ssize_t n = send(fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
    }
    evutil_closesocket(fd);
    s->stats.refused_connections++;
    if (time(NULL) != last) {
        last = time(NULL);
        log_warn("connection refused: %s (%zu clients, %llu refused so far)", why, s->stats.connections,
                 (unsigned long long)s->stats.refused_connections);
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr, int len,
                      void *arg)
{
    server_t *s = arg;
    char ip[64] = "?";
    int port = 0;
    int one = 1;
    (void)l;
    (void)len;
    if (s->shutting_down) {
        evutil_closesocket(fd);
        return;
    }
    if (s->stats.connections >= s->opts.max_connections) {
        refuse_connection(s, fd, "max_connections", NATS_REFUSED, sizeof NATS_REFUSED - 1);
        return;
    }
    if (addr->sa_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
    } else if (addr->sa_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    }
    /* Messages are small and latency matters; coalescing is done by us. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    client_t *c = client_new(s, fd, ip, port);
    if (!c) {
        log_error("cannot accept a connection from %s:%d: out of memory", ip, port);
        return;
    }
    c->id = ++s->next_client_id;
    c->next = s->clients;
    if (s->clients)
        s->clients->prev = c;
    s->clients = c;
    s->stats.connections++;
    s->stats.connections_total++;
    log_debug("cid:%llu %s:%d client connected", (unsigned long long)c->id, ip, port);
    client_start(c);
}

int server_refuse_pending(server_t *s, int listen_fd, const char *msg, size_t len)
{
    int err = EVUTIL_SOCKET_ERROR();
    if ((err != EMFILE && err != ENFILE) || s->reserve_fd < 0)
        return 0;
    /* No descriptor left: the reserve lets this one connection be accepted,
     * told and closed, so it does not sit in the backlog and wake the loop
     * again at once; the clients we have go on. */
    close(s->reserve_fd);
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0)
        refuse_connection(s, fd, "no file descriptor left", msg, len);
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return 1;
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    server_t *s = arg;
    int err = EVUTIL_SOCKET_ERROR();
    if (server_refuse_pending(s, evconnlistener_get_fd(l), NATS_REFUSED, sizeof NATS_REFUSED - 1))
        return;
    log_error("accept failed: %s", evutil_socket_error_to_string(err));
}

int server_listen(server_t *s)
{
    struct evutil_addrinfo hints, *res = NULL;
    char port[16];
    int rc;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_ADDRCONFIG;
    snprintf(port, sizeof port, "%d", s->opts.port);
    rc = evutil_getaddrinfo(s->opts.host, port, &hints, &res);
    if (rc != 0 || !res) {
        log_error("cannot resolve listen address '%s': %s", s->opts.host, evutil_gai_strerror(rc));
        return -1;
    }
    s->listener = evconnlistener_new_bind(s->base, on_accept, s,
                                          LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                          1024, res->ai_addr, (int)res->ai_addrlen);
    evutil_freeaddrinfo(res);
    if (!s->listener) {
        log_error("cannot listen on %s:%d: %s", s->opts.host, s->opts.port, strerror(errno));
        return -1;
    }
    evconnlistener_set_error_cb(s->listener, on_accept_error);
    log_info("Listening for client connections on %s:%d", s->opts.host, s->opts.port);
    return 0;
}

static void on_shutdown_timer(evutil_socket_t fd, short what, void *arg)
{
    server_t *s = arg;
    (void)fd;
    (void)what;
    log_warn("shutdown: gave up waiting for %s to take its output", s->clients ? "clients" : "a client");
    event_base_loopbreak(s->base);
}

void server_shutdown(server_t *s)
{
    if (s->shutting_down)
        return;
    s->shutting_down = 1;
    if (s->listener)
        evconnlistener_disable(s->listener);
    for (client_t *c = s->clients, *next; c; c = next) {
        next = c->next;
        client_close(c, CLIENT_CLOSE_FLUSH, "server shutting down");
    }
    if (!s->clients && !s->dead) {
        event_base_loopbreak(s->base);
        return;
    }
    struct timeval tv = {(time_t)s->opts.write_deadline + 1, 0};
    s->shutdown_timer = evtimer_new(s->base, on_shutdown_timer, s);
    if (s->shutdown_timer)
        evtimer_add(s->shutdown_timer, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    server_t *s = arg;
    (void)what;
    log_info("Trapped \"%s\" signal, shutting down", sig == SIGINT ? "interrupt" : "terminated");
    server_shutdown(s);
}

int server_run(server_t *s)
{
    int rc = event_base_dispatch(s->base);
    log_info("Server exiting");
    return rc < 0 ? -1 : 0;
}

/* ---- routing ---------------------------------------------------------- */

/* Delivers to one subscription, counting it and noting auto-unsubscribes. */
static int deliver_one(server_t *s, sub_t *sub, const proto_msg_t *m)
{
    client_t *dst = sub->owner;
    if (sub->max_msgs && sub->delivered >= sub->max_msgs)
        return 0; /* already used up, removal pending */
    if (!dst) {
        /* Inside the server: tide repl's and tide run's watchers are not
         * subscribers anyone asked for, so not counted as a delivery;
         * one that answers requests (the consumers' acks) is. */
        if (sub->flags & SUB_GONE)
            return 0;
        sub->deliver(sub->deliver_ctx, m);
        sub->delivered++;
        return (sub->flags & SUB_RESPONDER) ? 1 : 0;
    }
    if (client_deliver(dst, sub, m) < 0)
        return 0;
    sub->delivered++;
    if (sub->max_msgs && sub->delivered >= sub->max_msgs) {
        if (s->nexpired == s->capexpired) {
            size_t nc = s->capexpired ? s->capexpired * 2 : 16;
            sub_t **ne = realloc(s->expired, nc * sizeof *ne);
            if (!ne)
                return 1; /* it stays, and receives nothing more (delivered >= max) */
            s->expired = ne;
            s->capexpired = nc;
        }
        s->expired[s->nexpired++] = sub;
    }
    return 1;
}

static int may_receive(const client_t *from, const sub_t *sub)
{
    const client_t *dst = sub->owner;
    if (!dst)
        return 1; /* inside the server */
    if (dst->flags & CLIENT_CLOSING)
        return 0;
    if (dst == from && (dst->flags & CLIENT_NO_ECHO))
        return 0;
    return !(sub->max_msgs && sub->delivered >= sub->max_msgs);
}

static void no_responders(server_t *s, client_t *from, const proto_msg_t *m)
{
    static const char hdr[] = "NATS/1.0 503\r\n\r\n";
    proto_msg_t status = {0};
    sublist_result_t *r = sublist_match(s->subs, m->reply, m->reply_len);
    status.subject = m->reply;
    status.subject_len = m->reply_len;
    status.hdr = hdr;
    status.hdr_len = sizeof hdr - 1;
    status.payload = "";
    if (!r)
        return;
    /* Only the requester hears it: other subscribers of its inbox are not asking. */
    for (size_t i = 0; i < r->npsubs; i++) {
        sub_t *sub = r->psubs[i];
        if (sub->owner == from) {
            deliver_one(s, sub, &status);
            return;
        }
    }
}

static size_t route(server_t *s, client_t *from, const char *to, size_t tolen, const proto_msg_t *m, int flags,
                    int *captured);

/*
 * Applies the removals that deliveries left for later (auto-unsubscribes,
 * internal subscriptions dropped).  Only once the outermost route is over:
 * a subscription used up by a route nested in a delivery (a dead letter
 * routed from an ack) may be in the result an outer route is still walking.
 */
static void settle(server_t *s)
{
    while (s->nexpired) {
        sub_t *sub = s->expired[--s->nexpired];
        client_remove_sub(sub->owner, sub);
    }
    if (s->ngone)
        sweep_internal(s);
}

size_t server_route(server_t *s, client_t *from, const proto_msg_t *m)
{
    return server_route_flags(s, from, m, 0);
}

size_t server_route_flags(server_t *s, client_t *from, const proto_msg_t *m, int flags)
{
    return server_route_to(s, from, m->subject, m->subject_len, m, flags);
}

size_t server_route_to(server_t *s, client_t *from, const char *to, size_t tolen, const proto_msg_t *m, int flags)
{
    int captured;
    return route(s, from, to, tolen, m, flags, &captured);
}

size_t server_route_report(server_t *s, client_t *from, const proto_msg_t *m, int flags, int *captured)
{
    return route(s, from, m->subject, m->subject_len, m, flags, captured);
}

/* ---- cluster mode ------------------------------------------------------ */

void server_set_cluster(server_t *s, const server_cluster_hooks_t *hooks)
{
    memset(&s->cluster, 0, sizeof s->cluster);
    if (!hooks)
        return;
    s->cluster = *hooks;
    for (client_t *c = s->clients; c; c = c->next)
        for (size_t i = 0; i < c->subs.cap; i++)
            if (c->subs.slots[i].key)
                s->cluster.interest(s->cluster.ctx, c->subs.slots[i].val, 1);
    for (size_t i = 0; i < s->ninternal; i++)
        if ((s->internal[i]->flags & (SUB_AS_CLIENT | SUB_GONE)) == SUB_AS_CLIENT)
            s->cluster.interest(s->cluster.ctx, s->internal[i], 1);
}

void server_note_interest(server_t *s, sub_t *sub, int added)
{
    if (s->cluster.interest)
        s->cluster.interest(s->cluster.ctx, sub, added);
}

int server_subject_travels(const char *subject, size_t len)
{
    static const char cluster[] = "$TIDE.CLUSTER.";
    if (!len || subject[0] != '$')
        return 1;
    return len >= sizeof cluster - 1 && !memcmp(subject, cluster, sizeof cluster - 1);
}

/* True when sub receives what goes to the cluster from there (a client's
 * subscription, an internal one made as a client's), not here. */
static int served_by_cluster(const sub_t *sub)
{
    return sub->owner || (sub->flags & SUB_AS_CLIENT);
}

/* True when r holds a subscription of a client here. */
static int has_client_sub(const sublist_result_t *r)
{
    for (size_t i = 0; i < r->npsubs; i++)
        if (r->psubs[i]->owner)
            return 1;
    for (size_t i = 0; i < r->nqgroups; i++)
        for (size_t k = 0; k < r->qgroups[i].n; k++)
            if (r->qgroups[i].subs[k]->owner)
                return 1;
    return 0;
}

/*
 * Hands m to the cluster when it travels: 1 when the cluster took it (the
 * clients here get it back from there), 0 when it stays here, -1 when the
 * cluster refused it (told to the publisher, counted by the hook; the
 * clients here do not get it either, as nobody else does).
 */
static int to_cluster(server_t *s, client_t *from, const char *to, size_t tolen, const proto_msg_t *m, int flags,
                      const sublist_result_t *r)
{
    char err[256];
    if (!s->cluster.egress || to != m->subject || !server_subject_travels(to, tolen))
        return 0;
    /* An answer for a requester here is delivered here: an inbox has one owner. */
    if ((flags & (ROUTE_ANSWER | ROUTE_NO_CAPTURE)) && has_client_sub(r))
        return 0;
    uint64_t origin = from && (from->flags & CLIENT_NO_ECHO) ? from->id : 0;
    int answered = m->reply && (flags & ROUTE_HAS_RESPONDER);
    if (s->cluster.egress(s->cluster.ctx, m, origin, answered, err, sizeof err) == 0)
        return 1;
    if (from && !(from->flags & CLIENT_CLOSING))
        client_send_err(from, err);
    return -1;
}

int server_deliver_sub(server_t *s, sub_t *sub, const proto_msg_t *m)
{
    return server_deliver_sub_origin(s, sub, m, 0);
}

/* True when sub belongs to the client here whose id is origin and that
 * client asked for no echo. */
static int is_origin(const sub_t *sub, uint64_t origin)
{
    const client_t *owner = sub->owner;
    return origin && owner && owner->id == origin && (owner->flags & CLIENT_NO_ECHO);
}

/* Another member of sub's queue group here, for m, that may take it; NULL
 * when there is none. */
static sub_t *queue_peer(server_t *s, const sub_t *sub, const proto_msg_t *m, uint64_t origin)
{
    sub_t *peer = NULL;
    sublist_result_t *r = sublist_match(s->subs, m->subject, m->subject_len);
    for (size_t i = 0; r && !peer && i < r->nqgroups; i++) {
        sublist_qgroup_t *g = &r->qgroups[i];
        if (g->name_len != sub->queue_len || memcmp(g->name, sub->queue, sub->queue_len))
            continue;
        for (size_t tries = 0; tries < g->n && !peer; tries++) {
            sub_t *k = sublist_qgroup_pick(g);
            if (k != sub && k->owner && !is_origin(k, origin) && may_receive(NULL, k))
                peer = k;
        }
    }
    return peer;
}

int server_deliver_sub_origin(server_t *s, sub_t *sub, const proto_msg_t *m, uint64_t origin)
{
    int n = 0;
    if (is_origin(sub, origin)) {
        /* As on one server: the group's other members may have it, the
         * publisher may not.  With none here, it keeps it (below) rather
         * than the group losing it. */
        sub_t *peer;
        if (!sub->queue)
            return 0;
        if ((peer = queue_peer(s, sub, m, origin)))
            sub = peer;
    }
    if (!may_receive(NULL, sub))
        return 0;
    s->routing++;
    n = deliver_one(s, sub, m);
    if (--s->routing == 0)
        settle(s);
    return n;
}

static size_t route(server_t *s, client_t *from, const char *to, size_t tolen, const proto_msg_t *m, int flags,
                    int *captured)
{
    size_t delivered = 0;
    sublist_result_t *r;

    s->stats.in_msgs++;
    s->stats.in_bytes += m->payload_len + m->hdr_len;
    *captured = s->capture && !s->capture_paused && !(flags & ROUTE_NO_CAPTURE) ? s->capture(s->capture_ctx, m) : 0;
    if (*captured && m->reply)
        flags |= ROUTE_HAS_RESPONDER; /* a stream answers with its PubAck */
    r = sublist_match(s->subs, to, tolen);
    if (!r) {
        log_error("out of memory matching subject, message dropped");
        return 0;
    }
    /* In cluster mode the clients here get it back from the cluster. */
    int remote = to_cluster(s, from, to, tolen, m, flags, r);
    if (remote > 0)
        delivered++;
    /* A delivery may route again: the hold keeps r whole until the walk is over. */
    sublist_result_hold(r);
    s->routing++;
    for (size_t i = 0; i < r->npsubs; i++) {
        sub_t *sub = r->psubs[i];
        if ((!remote || !served_by_cluster(sub)) && may_receive(from, sub))
            delivered += (size_t)deliver_one(s, sub, m);
    }
    for (size_t i = 0; i < r->nqgroups; i++) {
        sublist_qgroup_t *g = &r->qgroups[i];
        /* One member per group; skip members that cannot take it now. */
        for (size_t tries = 0; tries < g->n; tries++) {
            sub_t *sub = sublist_qgroup_pick(g);
            if ((!remote || !served_by_cluster(sub)) && may_receive(from, sub) && deliver_one(s, sub, m)) {
                delivered++;
                break;
            }
        }
    }
    if (!remote && delivered == 0 && m->reply && from && !(flags & ROUTE_HAS_RESPONDER) &&
        (from->flags & (CLIENT_NO_RESPONDERS | CLIENT_HEADERS)) == (CLIENT_NO_RESPONDERS | CLIENT_HEADERS))
        no_responders(s, from, m);
    sublist_result_release(r);
    if (--s->routing == 0)
        settle(s);
    return delivered;
}

/* ---- the output of all clients together ------------------------------------- */

server_output_t *server_output(server_t *s)
{
    return &s->output;
}

int server_output_over(server_t *s, client_t *c)
{
    /* The counts lag behind what the sockets took since: count again, then
     * cut the clients with the most queued until the total fits. */
    size_t total = 0;
    for (client_t *k = s->clients; k; k = k->next) {
        k->queued = (k->flags & CLIENT_CLOSING) || !k->bev ? 0 : evbuffer_get_length(bufferevent_get_output(k->bev));
        total += k->queued;
    }
    int cut_self = 0;
    while (total > s->output.cap) {
        client_t *worst = NULL;
        for (client_t *k = s->clients; k; k = k->next)
            if (!(k->flags & CLIENT_CLOSING) && (!worst || k->queued > worst->queued))
                worst = k;
        if (!worst || !worst->queued)
            break;
        total -= worst->queued;
        worst->queued = 0;
        cut_self |= worst == c;
        client_cut_slow(worst, "the server's output for all clients is over max_pending_total");
    }
    s->output.total = total;
    return cut_self;
}

/* ---- admin requests and ingress ------------------------------------------ */

#define ADMIN_PREFIX "$TIDE.ADMIN."

void server_reply(server_t *s, const proto_msg_t *req, const char *payload, size_t len)
{
    proto_msg_t r;
    if (!req->reply)
        return;
    memset(&r, 0, sizeof r);
    r.subject = req->reply;
    r.subject_len = req->reply_len;
    r.payload = payload;
    r.payload_len = len;
    server_route_flags(s, NULL, &r, ROUTE_ANSWER);
}

cJSON *server_stats_object(server_t *s)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
#define NUM(obj, k, v) json_add_uint(obj, k, (uint64_t)(v))
    cJSON_AddStringToObject(o, "server_id", s->id);
    cJSON_AddStringToObject(o, "version", TIDE_VERSION);
    NUM(o, "connections", s->stats.connections);
    NUM(o, "total_connections", s->stats.connections_total);
    NUM(o, "in_msgs", s->stats.in_msgs);
    NUM(o, "out_msgs", s->stats.out_msgs);
    NUM(o, "in_bytes", s->stats.in_bytes);
    NUM(o, "out_bytes", s->stats.out_bytes);
    NUM(o, "slow_consumers", s->stats.slow_consumers);
    NUM(o, "refused_connections", s->stats.refused_connections);
    NUM(o, "stale_connections", s->stats.stale_connections);
    NUM(o, "protocol_errors", s->stats.protocol_errors);
    NUM(o, "subscriptions", sublist_count(s->subs));
    sublist_stats_t sl;
    sublist_get_stats(s->subs, &sl);
    NUM(o, "subscription_cache", sl.cache_entries);
#undef NUM
    return o;
}

int server_client_is_loopback(const client_t *c)
{
    const char *ip = c ? c->ip : "";
    return !strncmp(ip, "127.", 4) || !strcmp(ip, "::1") || !strncmp(ip, "::ffff:127.", 11);
}

static int has_prefix(const char *s, size_t len, const char *prefix, size_t plen)
{
    return len >= plen && s[0] == '$' && !memcmp(s, prefix, plen);
}

/*
 * What a client may not publish, whatever its permissions: into the
 * server's own inboxes (the HTTP face's PubAcks: an answer there must come
 * from the store), or with an admin subject as its reply (a request that
 * makes some other client, maybe a loopback service, send the admin request
 * for it; $TIDE.NODE.> replies likewise).  Answered like a permissions violation; the connection stays.
 */
static int publish_refused(client_t *from, const proto_msg_t *m)
{
    static const char inbox[] = SERVER_INBOX_PREFIX;
    char msg[320];
    if (has_prefix(m->subject, m->subject_len, inbox, sizeof inbox - 1))
        snprintf(msg, sizeof msg, "Permissions Violation for Publish to \"%.*s\"",
                 (int)(m->subject_len > 200 ? 200 : m->subject_len), m->subject);
    else if (m->reply && (has_prefix(m->reply, m->reply_len, ADMIN_PREFIX, strlen(ADMIN_PREFIX)) ||
                          has_prefix(m->reply, m->reply_len, SERVER_NODE_PREFIX, strlen(SERVER_NODE_PREFIX))))
        snprintf(msg, sizeof msg, "Permissions Violation for Publish with reply subject \"%.*s\"",
                 (int)(m->reply_len > 200 ? 200 : m->reply_len), m->reply);
    else
        return 0;
    client_send_err(from, msg);
    log_warn("cid:%llu %s:%d %s", (unsigned long long)from->id, from->ip, from->port, msg);
    return 1;
}

int server_node_subject(const char *subject, size_t len, size_t *name_len, size_t *rest)
{
    size_t plen = strlen(SERVER_NODE_PREFIX), i = plen;
    if (!has_prefix(subject, len, SERVER_NODE_PREFIX, plen))
        return 0;
    while (i < len && subject[i] != '.')
        i++;
    if (i == plen || i + 1 >= len)
        return 0;
    *name_len = i - plen;
    *rest = i + 1;
    return 1;
}

void server_publish(server_t *s, client_t *from, const proto_msg_t *m)
{
    if (from && (m->subject[0] == '$' || (m->reply_len && m->reply[0] == '$')) && publish_refused(from, m))
        return;
    if ((m->subject_len > strlen(ADMIN_PREFIX) && has_prefix(m->subject, m->subject_len, ADMIN_PREFIX,
                                                                 strlen(ADMIN_PREFIX))) ||
        has_prefix(m->subject, m->subject_len, SERVER_NODE_PREFIX, strlen(SERVER_NODE_PREFIX))) {
        static const char none[] = "{\"ok\":false,\"error\":\"this server answers no admin requests\"}";
        if (s->admin)
            s->admin(s->admin_ctx, from, m);
        else
            server_reply(s, m, none, sizeof none - 1);
        return;
    }
    if (s->input_tap)
        s->input_tap(s->input_tap_ctx, m);
    if (s->ingress)
        s->ingress(s->ingress_ctx, from, m);
    else
        server_route(s, from, m);
}

void server_set_capture(server_t *s, int (*fn)(void *ctx, const proto_msg_t *m), void *ctx)
{
    s->capture = fn;
    s->capture_ctx = ctx;
}

/* See server.h: a pause of capture for tide repl's replay(). */
int server_pause_capture(server_t *s, int paused)
{
    int was = s->capture_paused;
    s->capture_paused = paused != 0;
    return was;
}

int server_has_interest(server_t *s, const char *subject, size_t len)
{
    sublist_result_t *r = sublist_match(s->subs, subject, len);
    return r && (r->npsubs || r->nqgroups);
}

void server_set_input_tap(server_t *s, void (*fn)(void *ctx, const proto_msg_t *m), void *ctx)
{
    s->input_tap = fn;
    s->input_tap_ctx = ctx;
}
