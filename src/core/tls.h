/*
 * tls.h - TLS for the listeners: a server context built from plain
 * settings (certificate, key, CA paths), checked when it is built, and
 * shared by reference between whoever declared it and the listeners that
 * use it.
 *
 * The context is immutable once built: a changed certificate is a new
 * context, handed to the server with server_set_tls; connections already
 * made keep the one they started with (OpenSSL keeps it alive for them).
 * Single-threaded, like the rest of the core: the reference count is
 * touched only from the loop's thread.
 */
#ifndef TIDE_TLS_H
#define TIDE_TLS_H

#include <limits.h>
#include <stddef.h>

typedef struct tls_config {
    char cert[PATH_MAX]; /* PEM certificate (chain), leaf first */
    char key[PATH_MAX];  /* PEM private key of cert */
    char ca[PATH_MAX];   /* PEM CA certificates client certificates must chain to; "" for none */
    int verify;          /* a client certificate signed by ca is required */
    int map_user;        /* the client certificate's subject CN is the client's user name */
    double timeout;      /* seconds a client has to complete the handshake */
    int http;            /* the HTTP listener serves HTTPS with the same certificate */
} tls_config_t;

#define TLS_DEFAULT_TIMEOUT 2.0

/* Fills c with the defaults: no paths, no verification, a 2 s handshake. */
void tls_config_default(tls_config_t *c);

typedef struct tls_context tls_context_t;

/*
 * Builds a server context from cfg (copied): loads the certificate and
 * key and checks that they belong together, loads the CA when one is
 * named.  Returns the context with one reference (the caller's), or NULL
 * with a message naming the file and what is wrong with it in err.
 */
tls_context_t *tls_context_new(const tls_config_t *cfg, char *err, size_t errsz);

/* Adds a reference to t (may be NULL); returns t. */
tls_context_t *tls_context_ref(tls_context_t *t);

/* Drops a reference (t may be NULL); frees t with the last one. */
void tls_context_unref(tls_context_t *t);

/* The settings t was built from. */
const tls_config_t *tls_context_config(const tls_context_t *t);

struct ssl_st;
/* A new OpenSSL connection object for one accepted connection, in server
 * mode; the caller owns it (a bufferevent that takes it frees it).  NULL
 * when out of memory. */
struct ssl_st *tls_context_new_ssl(tls_context_t *t);

struct bufferevent;
struct event_base;
/* A bufferevent on base that runs the server half of a TLS handshake with
 * t on the socket it is given later (bufferevent_setfd), then carries the
 * connection: what evhttp_set_bevcb wants for HTTPS.  It owns its SSL and
 * closes its socket when freed.  NULL when out of memory. */
struct bufferevent *tls_bufferevent_accepting(tls_context_t *t, struct event_base *base);

/* Copies the subject CN of the certificate the peer of ssl presented
 * (verified: only call after a handshake that required one) into out.
 * Returns 0, or -1 (out is then "") when there is none, more than one, or
 * it does not fit out whole or holds a NUL. */
int tls_peer_cn(struct ssl_st *ssl, char *out, size_t outsz);

/* The reason OpenSSL gave for the last failure on this thread (its error
 * queue, which this empties), or "unknown error", into out; returns out. */
const char *tls_last_error(char *out, size_t outsz);

#endif
