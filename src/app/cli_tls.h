/*
 * cli_tls.h - TLS for the command-line clients' NATS connection, the NATS
 * way: the client reads the plain INFO, and when it says tls_required (or
 * --tls-ca, --tls-cert, --tls-key or a tls:// URL asked for TLS) starts
 * the handshake on the same socket; the protocol then runs inside TLS.
 */
#ifndef TIDE_CLI_TLS_H
#define TIDE_CLI_TLS_H

#include <stddef.h>
#include <sys/types.h>

#include <openssl/ssl.h>

struct cli_creds;

/* Does the TLS handshake on connected socket fd, presenting --tls-cert
 * and --tls-key when cr names them, and verifying the server's certificate
 * against --tls-ca (the system's CAs without it) and against host (a DNS
 * name or an IP address, as -s gave it).  Blocks up to about 5 seconds.
 * Returns the connection (free with cli_tls_close; fd stays the caller's),
 * or NULL after saying why on stderr (OpenSSL's reason, or which file). */
SSL *cli_tls_start(int fd, const char *host, const struct cli_creds *cr);

/* Writes all n bytes of p.  0, or -1 when the connection failed. */
int cli_tls_write(SSL *ssl, const char *p, size_t n);

/* Reads what one record holds (at most n bytes) into p.  Bytes read, 0
 * when only TLS housekeeping arrived (poll again), -1 on close or error
 * (the reason stays in OpenSSL's error queue for cli_tls_why). */
ssize_t cli_tls_read(SSL *ssl, char *p, size_t n);

/* OpenSSL's reason for the last failure, or NULL when it gave none. */
const char *cli_tls_why(void);

/* Frees ssl (NULL is fine); does not close its socket. */
void cli_tls_close(SSL *ssl);

#endif
