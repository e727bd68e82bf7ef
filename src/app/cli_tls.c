/* cli_tls.c - see cli_tls.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "cli_auth.h"
#include "cli_tls.h"

/* 0 when file (given for option) can be read, else -1 after saying why:
 * OpenSSL's reason for a missing file is only "system lib". */
static int tls_file_ok(const char *option, const char *file)
{
    if (!file || access(file, R_OK) == 0)
        return 0;
    fprintf(stderr, "tide: %s %s: %s\n", option, file, strerror(errno));
    return -1;
}

/* A context that verifies the server against cr's CA (or the system's) and
 * presents cr's certificate.  NULL after saying why. */
static SSL_CTX *tls_context(const cli_creds_t *cr)
{
    SSL_CTX *ctx = NULL;
    if (tls_file_ok("--tls-ca", cr->tls_ca) < 0 || tls_file_ok("--tls-cert", cr->tls_cert) < 0 ||
        tls_file_ok("--tls-key", cr->tls_key) < 0)
        return NULL;
    if (!(ctx = SSL_CTX_new(TLS_client_method()))) {
        fprintf(stderr, "tide: cannot set up TLS: %s\n", cli_tls_why());
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* fill() polls before reading: a record that carries no data (a TLS 1.3
     * session ticket) must come back to it rather than block in SSL_read. */
    SSL_CTX_clear_mode(ctx, SSL_MODE_AUTO_RETRY);
    if (cr->tls_ca ? SSL_CTX_load_verify_locations(ctx, cr->tls_ca, NULL) != 1
                   : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        fprintf(stderr, "tide: cannot load CA certificates from %s: %s\n", cr->tls_ca ? cr->tls_ca : "the system",
                cli_tls_why() ? cli_tls_why() : "no certificate in it");
        goto fail;
    }
    if ((cr->tls_cert != NULL) != (cr->tls_key != NULL)) {
        fprintf(stderr, "tide: --tls-cert and --tls-key go together\n");
        goto fail;
    }
    if (cr->tls_cert && SSL_CTX_use_certificate_chain_file(ctx, cr->tls_cert) != 1) {
        fprintf(stderr, "tide: cannot use certificate %s: %s\n", cr->tls_cert, cli_tls_why());
        goto fail;
    }
    if (cr->tls_key && (SSL_CTX_use_PrivateKey_file(ctx, cr->tls_key, SSL_FILETYPE_PEM) != 1 ||
                        SSL_CTX_check_private_key(ctx) != 1)) {
        fprintf(stderr, "tide: cannot use key %s with certificate %s: %s\n", cr->tls_key, cr->tls_cert,
                cli_tls_why());
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Names host as what the server's certificate must match: an IP address
 * or a DNS name (then also sent as SNI).  0, or -1. */
static int tls_expect_host(SSL *ssl, const char *host)
{
    unsigned char addr[16];
    if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1 ? 0 : -1;
    if (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1)
        return -1;
    return 0;
}

static void tls_set_timeout(int fd, int seconds)
{
    struct timeval tv = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

SSL *cli_tls_start(int fd, const char *host, const cli_creds_t *cr)
{
    SSL *ssl = NULL;
    SSL_CTX *ctx = tls_context(cr);
    if (!ctx)
        return NULL;
    ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* ssl holds its own reference */
    if (!ssl || SSL_set_fd(ssl, fd) != 1 || tls_expect_host(ssl, host) < 0) {
        fprintf(stderr, "tide: cannot set up TLS: %s\n", cli_tls_why() ? cli_tls_why() : "bad host name");
        goto fail;
    }
    /* The handshake runs on the blocking socket; a bound keeps a server
     * that never answers from holding the command forever. */
    tls_set_timeout(fd, 5);
    if (SSL_connect(ssl) != 1) {
        long v = SSL_get_verify_result(ssl);
        const char *why = cli_tls_why();
        if (v != X509_V_OK)
            fprintf(stderr, "tide: the server's certificate does not verify: %s%s\n", X509_verify_cert_error_string(v),
                    cr->tls_ca ? "" : " (give --tls-ca FILE: the CA that signed it)");
        else
            fprintf(stderr, "tide: TLS handshake with %s failed: %s\n", host, why ? why : "the connection closed");
        goto fail;
    }
    tls_set_timeout(fd, 0);
    return ssl;
fail:
    SSL_free(ssl);
    return NULL;
}

int cli_tls_write(SSL *ssl, const char *p, size_t n)
{
    while (n) {
        size_t w = 0;
        if (SSL_write_ex(ssl, p, n, &w) != 1)
            return -1;
        p += w;
        n -= w;
    }
    return 0;
}

ssize_t cli_tls_read(SSL *ssl, char *p, size_t n)
{
    size_t got = 0;
    if (SSL_read_ex(ssl, p, n, &got) == 1)
        return (ssize_t)got;
    int e = SSL_get_error(ssl, 0);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
}

const char *cli_tls_why(void)
{
    unsigned long e = ERR_peek_last_error();
    return e ? ERR_reason_error_string(e) : NULL;
}

void cli_tls_close(SSL *ssl)
{
    SSL_free(ssl);
}
