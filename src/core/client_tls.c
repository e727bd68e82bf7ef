/*
 * client_tls.c - the TLS side of a client connection: INFO in the clear,
 * then the server half of the handshake, then an OpenSSL bufferevent.
 *
 * This is the classic NATS flow (nats-server before 2.10's handshake_first):
 * the server sends INFO with tls_required before any TLS byte, the client
 * reads it and starts the handshake.  tide drives the handshake itself
 * rather than in a bufferevent so that it runs at the loop's lowest
 * priority, one step per loop pass (server.h): the handshake is where TLS
 * costs CPU, and a burst of them must not hold up clients already
 * connected.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "client.h"
#include "log.h"
#include "tls.h"
#include "util.h"

struct client_tls {
    SSL *ssl;               /* owned here until the bufferevent takes it */
    int fd;                 /* the socket, owned here until the bufferevent takes it */
    struct event *io;       /* the handshake's next read or write */
    struct event *deadline; /* the handshake timeout */
    double timeout;
    int map_user;
    int open;               /* handshake done: c->bev carries the connection */
    char cn[256];           /* map_user: the certificate's subject CN */
};

static void on_handshake(evutil_socket_t fd, short what, void *arg);
static void on_deadline(evutil_socket_t fd, short what, void *arg);

int client_is_tls(const client_t *c)
{
    return c && c->tls != NULL;
}

const char *client_tls_cn(const client_t *c)
{
    if (!c || !c->tls || !c->tls->open || !c->tls->map_user || !c->tls->cn[0])
        return NULL;
    return c->tls->cn;
}

int client_tls_maps_user(const client_t *c)
{
    return c && c->tls && c->tls->map_user;
}

int client_tls_begin(client_t *c, tls_context_t *t, int fd)
{
    const tls_config_t *cfg = tls_context_config(t);
    struct client_tls *ct = calloc(1, sizeof *ct);
    if (!ct)
        return -1;
    ct->fd = fd;
    ct->timeout = cfg->timeout > 0 ? cfg->timeout : TLS_DEFAULT_TIMEOUT;
    ct->map_user = cfg->verify && cfg->map_user;
    ct->ssl = tls_context_new_ssl(t);
    if (!ct->ssl || SSL_set_fd(ct->ssl, fd) != 1)
        goto fail;
    SSL_set_accept_state(ct->ssl);
    ct->io = event_new(server_base(c->srv), fd, EV_READ, on_handshake, c);
    ct->deadline = event_new(server_base(c->srv), -1, 0, on_deadline, c);
    if (!ct->io || !ct->deadline || event_priority_set(ct->io, SERVER_PRIORITY_HANDSHAKE) < 0)
        goto fail;
    c->tls = ct;
    c->flags |= CLIENT_TLS;
    return 0;
fail:
    ct->fd = -1; /* the caller closes it */
    c->tls = ct;
    client_tls_free(c);
    return -1;
}

int client_tls_start(client_t *c, const char *info, size_t len)
{
    struct client_tls *ct = c->tls;
    struct timeval tv = util_timeval(ct->timeout);
    /* A socket just accepted takes a few hundred bytes at once; anything
     * less means it is already gone. */
    ssize_t n = send(ct->fd, info, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n != (ssize_t)len) {
        client_close(c, CLIENT_CLOSE_NOW, n < 0 ? strerror(errno) : "INFO not taken whole");
        return -1;
    }
    event_add(ct->io, NULL);
    event_add(ct->deadline, &tv);
    return 0;
}

/* Waits for the socket to be ready for what the handshake asked (the
 * event is one-shot, so it can be pointed at read or write each time). */
static int rearm(client_t *c, short what)
{
    struct client_tls *ct = c->tls;
    if (event_assign(ct->io, server_base(c->srv), ct->fd, what, on_handshake, c) < 0 ||
        event_priority_set(ct->io, SERVER_PRIORITY_HANDSHAKE) < 0)
        return -1;
    return event_add(ct->io, NULL);
}

/* The handshake is done: the connection moves into a bufferevent. */
static void handshake_done(client_t *c)
{
    struct client_tls *ct = c->tls;
    event_del(ct->io);
    event_del(ct->deadline);
    struct bufferevent *bev = bufferevent_openssl_socket_new(server_base(c->srv), ct->fd, ct->ssl,
                                                             BUFFEREVENT_SSL_OPEN, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        client_close(c, CLIENT_CLOSE_NOW, "out of memory after the TLS handshake");
        return;
    }
    ct->ssl = NULL; /* the bufferevent owns both now */
    ct->fd = -1;
    ct->open = 1;
    if (ct->map_user && tls_peer_cn(bufferevent_openssl_get_ssl(bev), ct->cn, sizeof ct->cn) < 0)
        log_info("cid:%llu %s:%d TLS client certificate has no usable subject CN", (unsigned long long)c->id,
                 c->ip, c->port);
    log_debug("cid:%llu %s:%d TLS handshake done (%s%s%s)", (unsigned long long)c->id, c->ip, c->port,
              SSL_get_version(bufferevent_openssl_get_ssl(bev)), ct->cn[0] ? ", CN " : "", ct->cn);
    client_tls_opened(c, bev);
}

static void handshake_failed(client_t *c, const char *why)
{
    log_info("cid:%llu %s:%d TLS handshake error: %s", (unsigned long long)c->id, c->ip, c->port, why);
    client_close(c, CLIENT_CLOSE_NOW, "TLS handshake error");
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    (void)fd;
    (void)what;
    if (!(c->flags & CLIENT_CLOSING))
        handshake_failed(c, "timeout");
}

/* One step of the handshake: the socket is ready for what the last step
 * asked for. */
static void on_handshake(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    struct client_tls *ct = c->tls;
    char why[256];
    (void)fd;
    (void)what;
    if (c->flags & CLIENT_CLOSING)
        return;
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(ct->ssl);
    if (r == 1) {
        handshake_done(c);
        return;
    }
    switch (SSL_get_error(ct->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        if (rearm(c, EV_READ) < 0)
            handshake_failed(c, "out of memory");
        return;
    case SSL_ERROR_WANT_WRITE:
        if (rearm(c, EV_WRITE) < 0)
            handshake_failed(c, "out of memory");
        return;
    case SSL_ERROR_SYSCALL:
        handshake_failed(c, ERR_peek_error() ? tls_last_error(why, sizeof why)
                            : r == 0 || errno == 0 ? "connection closed" : strerror(errno));
        return;
    case SSL_ERROR_ZERO_RETURN:
        handshake_failed(c, "connection closed");
        return;
    default:
        handshake_failed(c, tls_last_error(why, sizeof why));
        return;
    }
}

void client_tls_free(client_t *c)
{
    struct client_tls *ct = c->tls;
    if (!ct)
        return;
    if (ct->io)
        event_free(ct->io);
    if (ct->deadline)
        event_free(ct->deadline);
    if (ct->ssl)
        SSL_free(ct->ssl);
    if (ct->fd >= 0)
        evutil_closesocket(ct->fd);
    free(ct);
    c->tls = NULL;
}
