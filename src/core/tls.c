/* tls.c - see tls.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tls.h"

struct tls_context {
    SSL_CTX *ctx;
    tls_config_t cfg;
    int refs;
};

void tls_config_default(tls_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->timeout = TLS_DEFAULT_TIMEOUT;
}

const char *tls_last_error(char *out, size_t outsz)
{
    unsigned long e = ERR_get_error(), next;
    if (!e) {
        snprintf(out, outsz, "unknown error");
        return out;
    }
    /* The first error is the root cause; the rest restate it. */
    while ((next = ERR_get_error()) != 0)
        (void)next;
    const char *reason = ERR_reason_error_string(e);
    if (reason)
        snprintf(out, outsz, "%s", reason);
    else
        ERR_error_string_n(e, out, outsz);
    return out;
}

/* Checks that path can be opened for reading, so that a missing file is
 * reported as such rather than as whatever OpenSSL makes of it. */
static int readable(const char *what, const char *path, char *err, size_t errsz)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errsz, "tls: cannot read %s '%s': %s", what, path, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

/* Loads cfg's CA into ctx: the trust store for client certificates, and
 * the list of acceptable issuers the server names in its request. */
static int load_ca(SSL_CTX *ctx, const tls_config_t *cfg, char *err, size_t errsz)
{
    char why[256];
    if (readable("ca", cfg->ca, err, errsz) < 0)
        return -1;
    if (SSL_CTX_load_verify_locations(ctx, cfg->ca, NULL) != 1) {
        snprintf(err, errsz, "tls: ca '%s' holds no usable PEM certificate (%s)", cfg->ca,
                 tls_last_error(why, sizeof why));
        return -1;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->ca);
    if (!names) {
        snprintf(err, errsz, "tls: ca '%s' holds no usable PEM certificate (%s)", cfg->ca,
                 tls_last_error(why, sizeof why));
        return -1;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    return 0;
}

tls_context_t *tls_context_new(const tls_config_t *cfg, char *err, size_t errsz)
{
    static const unsigned char session_id[] = "tide";
    char why[256];
    tls_context_t *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errsz, "tls: out of memory");
        return NULL;
    }
    t->cfg = *cfg;
    t->refs = 1;
    ERR_clear_error();
    if (readable("cert", cfg->cert, err, errsz) < 0 || readable("key", cfg->key, err, errsz) < 0)
        goto fail;
    t->ctx = SSL_CTX_new(TLS_server_method());
    if (!t->ctx) {
        snprintf(err, errsz, "tls: cannot create a context: %s", tls_last_error(why, sizeof why));
        goto fail;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    /* Renegotiation would restart a handshake inside a live connection,
     * out of reach of the handshake timeout.  A client that closes its
     * socket without a close_notify has closed, as on a plain connection:
     * the NATS protocol frames its own messages, so there is nothing to
     * truncate. */
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                    SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* The chain sent is what cert holds (leaf, then intermediates), as
     * with nats-server: not one OpenSSL completes from ca. */
    SSL_CTX_set_mode(t->ctx, SSL_MODE_NO_AUTO_CHAIN);
    SSL_CTX_set_session_id_context(t->ctx, session_id, sizeof session_id - 1);
    /* AES-128-GCM first, as nats-server (Go) prefers on CPUs with AES
     * instructions: OpenSSL's own order puts AES-256 first, about a third
     * slower for the same protection a client asks for. */
    SSL_CTX_set_ciphersuites(t->ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
    if (SSL_CTX_use_certificate_chain_file(t->ctx, cfg->cert) != 1) {
        snprintf(err, errsz, "tls: cert '%s' is not a PEM certificate (%s)", cfg->cert,
                 tls_last_error(why, sizeof why));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(t->ctx, cfg->key, SSL_FILETYPE_PEM) != 1) {
        snprintf(err, errsz, "tls: key '%s' is not a PEM private key, or does not match cert '%s' (%s)",
                 cfg->key, cfg->cert, tls_last_error(why, sizeof why));
        goto fail;
    }
    if (SSL_CTX_check_private_key(t->ctx) != 1) {
        snprintf(err, errsz, "tls: key '%s' does not match cert '%s'", cfg->key, cfg->cert);
        goto fail;
    }
    if (cfg->ca[0] && load_ca(t->ctx, cfg, err, errsz) < 0)
        goto fail;
    if (cfg->verify)
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    else
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
    return t;
fail:
    ERR_clear_error();
    if (t->ctx)
        SSL_CTX_free(t->ctx);
    free(t);
    return NULL;
}

tls_context_t *tls_context_ref(tls_context_t *t)
{
    if (t)
        t->refs++;
    return t;
}

void tls_context_unref(tls_context_t *t)
{
    if (!t || --t->refs > 0)
        return;
    SSL_CTX_free(t->ctx); /* connections made with it hold their own reference */
    free(t);
}

const tls_config_t *tls_context_config(const tls_context_t *t)
{
    return &t->cfg;
}

SSL *tls_context_new_ssl(tls_context_t *t)
{
    return SSL_new(t->ctx);
}

struct bufferevent *tls_bufferevent_accepting(tls_context_t *t, struct event_base *base)
{
    SSL *ssl = SSL_new(t->ctx);
    if (!ssl)
        return NULL;
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

int tls_peer_cn(SSL *ssl, char *out, size_t outsz)
{
    unsigned char *utf8 = NULL;
    int rc = -1;
    out[0] = '\0';
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (!peer)
        return -1;
    X509_NAME *subject = X509_get_subject_name(peer);
    int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    /* One CN, whole: a name with a NUL inside, or too long to keep, must
     * not turn into a shorter name that belongs to someone else. */
    if (at < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, at) >= 0)
        goto done;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at)));
    if (n <= 0 || (size_t)n >= outsz || memchr(utf8, '\0', (size_t)n))
        goto done;
    memcpy(out, utf8, (size_t)n);
    out[n] = '\0';
    rc = 0;
done:
    OPENSSL_free(utf8);
    X509_free(peer);
    return rc;
}
