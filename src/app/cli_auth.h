/*
 * cli_auth.h - the credentials of the command-line clients (tide stats,
 * pub, sub, req, rules, stream, consumer, dlq, repl --connect): options,
 * credentials in a nats:// URL, the CONNECT that carries them, and what
 * the server's refusals mean to whoever typed the command.
 */
#ifndef TIDE_CLI_AUTH_H
#define TIDE_CLI_AUTH_H

#include <stddef.h>

/* Credentials to send; NULL fields are not sent. */
typedef struct cli_creds {
    const char *user, *password; /* --user, --password, or nats://user:pass@ */
    const char *token;           /* --token, or nats://token@ */
    const char *nkey_file;       /* --nkey SEEDFILE: signs the server's nonce */
    char url_user[256], url_pass[256]; /* what a URL held, decoded */
    const char *tls_ca, *tls_cert, *tls_key; /* --tls-ca, --tls-cert, --tls-key (cli_tls.h) */
    int tls;                                 /* TLS asked for: one of those, or a tls:// URL */
} cli_creds_t;

/* getopt_long codes of the credential options. */
enum { CLI_OPT_USER = 3000, CLI_OPT_PASSWORD, CLI_OPT_TOKEN, CLI_OPT_NKEY, CLI_OPT_TLS_CA, CLI_OPT_TLS_CERT, CLI_OPT_TLS_KEY };

/* The entries of a struct option array for them. */
#define CLI_CREDS_LONGOPTS                                                                                    \
    {"user", required_argument, NULL, CLI_OPT_USER}, {"password", required_argument, NULL, CLI_OPT_PASSWORD}, \
        {"token", required_argument, NULL, CLI_OPT_TOKEN}, {"nkey", required_argument, NULL, CLI_OPT_NKEY},   \
        {"tls-ca", required_argument, NULL, CLI_OPT_TLS_CA},                                                  \
        {"tls-cert", required_argument, NULL, CLI_OPT_TLS_CERT}, {"tls-key", required_argument, NULL, CLI_OPT_TLS_KEY}

/* One line for usage texts. */
#define CLI_CREDS_USAGE                                                                              \
    "credentials: --user U --password P | --token T | --nkey SEEDFILE, or nats://user:pass@host:port\n" \
    "TLS: --tls-ca FILE [--tls-cert FILE --tls-key FILE], or tls://host:port (the system's CAs)\n"

/* Takes option ch with its argument into cr when it is a credential
 * option: returns 1, else 0 (cr untouched). */
int cli_creds_option(cli_creds_t *cr, int ch, const char *arg);

/* Strips "nats://" (or "tls://", which sets cr->tls) and any "user:pass@" or "token@" from server and
 * returns the host:port that is left (a pointer into server).  What the
 * URL held (%-decoded) fills cr's user and password, or token, unless an
 * option gave credentials already. */
const char *cli_creds_from_url(cli_creds_t *cr, const char *server);

/* The CONNECT line (and a PING after it) for cr, answering the INFO the
 * server sent (its "nonce" for --nkey).  Caller frees; NULL after saying
 * why on stderr (an unreadable seed file, a server that sent no nonce). */
char *cli_creds_connect(const cli_creds_t *cr, const char *info_json);

/* Prints a server's -ERR text (what follows "-ERR ") on stderr, with what
 * to do about an authorization or permissions refusal. */
void cli_server_error(const char *text);

#endif
