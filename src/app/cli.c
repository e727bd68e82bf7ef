/*
 * cli.c - the command-line clients: tide pub, sub, req and stats, and the
 * persistent queue's tide stream, consumer and dlq (admin requests).
 *
 * A small blocking NATS client, enough for a terminal: connect, send, read
 * frames with a deadline.  Output is readable by default; --json prints one
 * JSON object per message for scripts.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/util.h>
#include <readline/history.h>
#include <readline/readline.h>

#include "cli.h"
#include "cli_auth.h"
#include "cli_tls.h"
#include "json.h"
#include "json_int.h"
#include "server.h"

typedef struct conn {
    int fd;
    SSL *ssl;         /* after a TLS handshake, or NULL */
    char buf[65536];
    size_t len;       /* bytes in buf */
    size_t max_payload;
} conn_t;

/* A message read from the server. */
typedef struct msg {
    char subject[1024];
    char reply[1024];
    char *hdr;       /* header block or NULL (malloc'd with payload) */
    size_t hdr_len;
    char *payload;
    size_t payload_len;
    char *mem;
} msg_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int send_all(conn_t *c, const char *p, size_t n)
{
    if (c->ssl)
        return cli_tls_write(c->ssl, p, n);
    while (n) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads more bytes into the buffer, waiting until `deadline` (a monotonic
 * time; < 0 waits forever).  Returns bytes read, 0 on timeout, -1 on close
 * or error. */
static int fill(conn_t *c, double deadline)
{
    if (c->len == sizeof c->buf)
        return -1; /* a frame larger than the buffer is handled by read_exact */
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            double left = deadline - now_s();
            if (left <= 0)
                return 0;
            ms = (int)(left * 1000) + 1;
        }
        struct pollfd pfd = {c->fd, POLLIN, 0};
        int r = c->ssl && SSL_pending(c->ssl) > 0 ? 1 : poll(&pfd, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return 0;
        if (r < 0)
            return -1;
        ssize_t n;
        if (c->ssl) {
            if ((n = cli_tls_read(c->ssl, c->buf + c->len, sizeof c->buf - c->len)) == 0)
                continue; /* a record without data */
        } else if ((n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0)) == 0) {
            n = -1;
        }
        if (n < 0)
            return -1;
        c->len += (size_t)n;
        return (int)n;
    }
}

/* Takes one CRLF-terminated line (without CRLF) into out.  1 = got one,
 * 0 = timeout, -1 = closed. */
static int read_line(conn_t *c, char *out, size_t outsz, double deadline)
{
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            size_t keep = n && c->buf[n - 1] == '\r' ? n - 1 : n;
            if (keep >= outsz)
                keep = outsz - 1;
            memcpy(out, c->buf, keep);
            out[keep] = '\0';
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            return 1;
        }
        int r = fill(c, deadline);
        if (r <= 0)
            return r;
    }
}

/* Reads exactly n bytes (plus the CRLF after them) into a new buffer. */
static char *read_exact(conn_t *c, size_t n, double deadline)
{
    char *out = malloc(n + 1);
    size_t got = 0;
    if (!out)
        return NULL;
    while (got < n + 2) {
        if (c->len == 0 && fill(c, deadline) <= 0) {
            free(out);
            return NULL;
        }
        size_t take = c->len < n + 2 - got ? c->len : n + 2 - got;
        for (size_t i = 0; i < take; i++, got++)
            if (got < n)
                out[got] = c->buf[i];
        memmove(c->buf, c->buf + take, c->len - take);
        c->len -= take;
    }
    out[n] = '\0';
    return out;
}

static int split_words(char *line, char **w, int max)
{
    int n = 0;
    for (char *p = strtok(line, " \t"); p && n < max; p = strtok(NULL, " \t"))
        w[n++] = p;
    return n;
}

/*
 * Reads frames until a MSG/HMSG arrives (answering PINGs).  Returns 1 with
 * m filled, 0 on timeout, -1 on close, -2 on -ERR (printed); with
 * want_pong, 2 when a PONG comes first.
 */
static int read_frame(conn_t *c, msg_t *m, double deadline, int want_pong)
{
    char line[4200];
    for (;;) {
        int r = read_line(c, line, sizeof line, deadline);
        if (r <= 0)
            return r;
        if (!strcmp(line, "PING")) {
            send_all(c, "PONG\r\n", 6);
            continue;
        }
        if (want_pong && !strcmp(line, "PONG"))
            return 2;
        if (!strncmp(line, "-ERR", 4)) {
            cli_server_error(line + 5);
            return -2;
        }
        char *w[6];
        int is_h = !strncmp(line, "HMSG ", 5), is_m = !strncmp(line, "MSG ", 4);
        if (!is_h && !is_m)
            continue; /* +OK, PONG, INFO */
        int n = split_words(line + (is_h ? 5 : 4), w, 6);
        size_t hlen = 0, total;
        memset(m, 0, sizeof *m);
        if (is_h && (n == 4 || n == 5)) {
            hlen = strtoul(w[n - 2], NULL, 10);
            total = strtoul(w[n - 1], NULL, 10);
            if (n == 5)
                snprintf(m->reply, sizeof m->reply, "%s", w[2]);
        } else if (is_m && (n == 3 || n == 4)) {
            total = strtoul(w[n - 1], NULL, 10);
            if (n == 4)
                snprintf(m->reply, sizeof m->reply, "%s", w[2]);
        } else {
            return -1;
        }
        snprintf(m->subject, sizeof m->subject, "%s", w[0]);
        if (hlen > total)
            return -1;
        m->mem = read_exact(c, total, deadline);
        if (!m->mem)
            return -1;
        if (is_h) {
            m->hdr = m->mem;
            m->hdr_len = hlen;
        }
        m->payload = m->mem + hlen;
        m->payload_len = total - hlen;
        return 1;
    }
}

static int read_msg(conn_t *c, msg_t *m, double deadline) { return read_frame(c, m, deadline, 0); }

static void msg_free(msg_t *m)
{
    free(m->mem);
    m->mem = NULL;
}

/* Starts TLS on c when the server's INFO (info) requires it or cr asks
 * for it, as NATS clients do.  0, or -1 after saying why. */
static int conn_secure(conn_t *c, const cli_creds_t *cr, const char *host, const char *port, const cJSON *info)
{
    int required = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(info, "tls_required"));
    int verify = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(info, "tls_verify"));
    if (!required && !cr->tls)
        return 0;
    if (!required) {
        fprintf(stderr, "tide: %s:%s does not offer TLS (it has no tls { ... }); connect without the TLS options\n",
                host, port);
        return -1;
    }
    if (!cr->tls) {
        fprintf(stderr, "tide: %s:%s requires TLS: give --tls-ca FILE (the CA that signed its certificate), "
                        "or -s tls://%s:%s to trust the system's CAs\n", host, port, host, port);
        return -1;
    }
    if (verify && !cr->tls_cert) {
        fprintf(stderr, "tide: %s:%s requires a client certificate (tls { verify = true }): "
                        "give --tls-cert FILE --tls-key FILE\n", host, port);
        return -1;
    }
    c->ssl = cli_tls_start(c->fd, host, cr);
    return c->ssl ? 0 : -1;
}

/* Closes c's connection (TLS and socket) if it has one. */
static void conn_close(conn_t *c)
{
    cli_tls_close(c->ssl);
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* Connects and handshakes with the credentials of creds (or of a
 * nats://user:pass@ server); prints why not and returns -1 when it cannot. */
static int cli_connect(conn_t *c, const char *server, const cli_creds_t *creds)
{
    char host[256], port[16], line[4200];
    struct addrinfo hints, *res = NULL;
    const char *colon;
    cli_creds_t cr = *creds;
    memset(c, 0, sizeof *c);
    c->fd = -1;
    server = cli_creds_from_url(&cr, server);
    colon = strrchr(server, ':');
    if (colon) {
        size_t hl = (size_t)(colon - server);
        if (hl >= 2 && server[0] == '[' && server[hl - 1] == ']') {
            server++;
            hl -= 2;
        }
        snprintf(host, sizeof host, "%.*s", (int)hl, server);
        snprintf(port, sizeof port, "%s", colon + 1);
    } else {
        snprintf(host, sizeof host, "%s", server);
        snprintf(port, sizeof port, "%d", TIDE_DEFAULT_PORT);
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "tide: cannot resolve %s: %s\n", host, gai_strerror(rc));
        return -1;
    }
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        c->fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (c->fd < 0)
            continue;
        if (connect(c->fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        close(c->fd);
        c->fd = -1;
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        fprintf(stderr, "tide: cannot connect to %s:%s: %s (is tide serve running there?)\n", host, port,
                strerror(errno));
        return -1;
    }
    double deadline = now_s() + 5;
    if (read_line(c, line, sizeof line, deadline) != 1 || strncmp(line, "INFO ", 5)) {
        fprintf(stderr, "tide: %s:%s did not greet like a NATS server\n", host, port);
        return -1;
    }
    cJSON *info = cJSON_Parse(line + 5);
    cJSON *mp = cJSON_GetObjectItemCaseSensitive(info, "max_payload");
    c->max_payload = cJSON_IsNumber(mp) ? (size_t)mp->valuedouble : 1024 * 1024;
    int secured = conn_secure(c, &cr, host, port, info);
    cJSON_Delete(info);
    if (secured < 0)
        return -1;
    char *hello = cli_creds_connect(&cr, line + 5);
    if (!hello)
        return -1;
    /* A failed send is not the end yet: what the server said before it
     * closed (a TLS alert refusing our certificate) is still to be read. */
    send_all(c, hello, strlen(hello));
    free(hello);
    for (;;) {
        int r = read_line(c, line, sizeof line, deadline);
        if (r != 1) {
            if (c->ssl && cli_tls_why()) /* e.g. the server refused our certificate */
                fprintf(stderr, "tide: %s:%s closed the TLS connection: %s\n", host, port, cli_tls_why());
            else
                fprintf(stderr, "tide: no answer from %s:%s\n", host, port);
            return -1;
        }
        if (!strcmp(line, "PONG"))
            return 0;
        if (!strncmp(line, "-ERR", 4)) {
            cli_server_error(line + 5);
            return -1;
        }
    }
}

/* Waits for the server to have processed everything sent so far. */
static int flush(conn_t *c)
{
    char line[4200];
    double deadline = now_s() + 5;
    if (send_all(c, "PING\r\n", 6) < 0)
        return -1;
    for (;;) {
        int r = read_line(c, line, sizeof line, deadline);
        if (r != 1)
            return -1;
        if (!strcmp(line, "PONG"))
            return 0;
        if (!strncmp(line, "-ERR", 4)) {
            cli_server_error(line + 5);
            return -1;
        }
    }
}

/* Builds "NATS/1.0\r\nK: V\r\n...\r\n" from "K:V" strings; NULL when none. */
static char *header_block(char **hv, int n, size_t *len)
{
    size_t cap = 16;
    for (int i = 0; i < n; i++)
        cap += strlen(hv[i]) + 4;
    if (n == 0)
        return NULL;
    char *b = malloc(cap);
    size_t o = (size_t)snprintf(b, cap, "NATS/1.0\r\n");
    for (int i = 0; i < n; i++) {
        const char *colon = strchr(hv[i], ':');
        if (!colon) {
            free(b);
            fprintf(stderr, "tide: header '%s' is not NAME:VALUE\n", hv[i]);
            exit(2);
        }
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        o += (size_t)snprintf(b + o, cap - o, "%.*s: %s\r\n", (int)(colon - hv[i]), hv[i], v);
    }
    o += (size_t)snprintf(b + o, cap - o, "\r\n");
    *len = o;
    return b;
}

static int publish(conn_t *c, const char *subject, const char *reply, const char *hdr, size_t hlen,
                   const char *data, size_t dlen)
{
    char line[4200];
    int n;
    if (hlen + dlen > c->max_payload) {
        fprintf(stderr, "tide: message of %zu bytes is over the server's max_payload (%zu)\n", hlen + dlen,
                c->max_payload);
        return -1;
    }
    if (hdr)
        n = snprintf(line, sizeof line, "HPUB %s%s%s %zu %zu\r\n", subject, reply ? " " : "", reply ? reply : "",
                     hlen, hlen + dlen);
    else
        n = snprintf(line, sizeof line, "PUB %s%s%s %zu\r\n", subject, reply ? " " : "", reply ? reply : "", dlen);
    if (n < 0 || (size_t)n >= sizeof line)
        return -1;
    if (send_all(c, line, (size_t)n) < 0 || (hdr && send_all(c, hdr, hlen) < 0) || send_all(c, data, dlen) < 0 ||
        send_all(c, "\r\n", 2) < 0)
        return -1;
    return 0;
}

/* Prints a message readably or as one JSON line. */
static void print_msg(const msg_t *m, int json, long n)
{
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "subject", m->subject);
        if (m->reply[0])
            cJSON_AddStringToObject(o, "reply", m->reply);
        if (m->hdr) {
            cJSON *h = cJSON_CreateObject();
            char *blk = strndup(m->hdr, m->hdr_len);
            char *save = NULL;
            int first = 1;
            for (char *l = strtok_r(blk, "\r\n", &save); l; l = strtok_r(NULL, "\r\n", &save)) {
                char *colon = strchr(l, ':');
                if (first) {
                    first = 0;
                    if (strlen(l) > 8)
                        cJSON_AddStringToObject(o, "status", l + 9);
                    continue;
                }
                if (!colon)
                    continue;
                *colon = '\0';
                char *v = colon + 1;
                while (*v == ' ')
                    v++;
                cJSON_AddStringToObject(h, l, v);
            }
            free(blk);
            cJSON_AddItemToObject(o, "headers", h);
        }
        cJSON *p = cJSON_ParseWithLength(m->payload, m->payload_len);
        if (p)
            cJSON_AddItemToObject(o, "data", p);
        else
            cJSON_AddStringToObject(o, "payload", m->payload);
        char *s = cJSON_PrintUnformatted(o);
        printf("%s\n", s);
        cJSON_free(s);
        cJSON_Delete(o);
    } else {
        printf("[#%ld] %s", n, m->subject);
        if (m->reply[0])
            printf(" (reply to %s)", m->reply);
        printf("\n");
        if (m->hdr) {
            const char *nl = memchr(m->hdr, '\n', m->hdr_len);
            if (nl)
                fwrite(nl + 1, 1, m->hdr_len - (size_t)(nl + 1 - m->hdr) - 2, stdout);
        }
        fwrite(m->payload, 1, m->payload_len, stdout);
        printf("\n");
    }
    fflush(stdout);
}

static void usage_clients(void)
{
    fprintf(stderr, "usage: tide pub SUBJECT [DATA|-] [-H NAME:VALUE]... [--reply SUBJECT] [-s SERVER]\n"
                    "       tide sub PATTERN [--queue Q] [--count N] [--json] [-s SERVER]\n"
                    "       tide req SUBJECT [DATA] [-H NAME:VALUE]... [--timeout SECONDS] [--json] [-s SERVER]\n"
                    "       tide stats | rules [--node NAME] [--json] [-s SERVER]\n"
                    "SERVER is host:port (default 127.0.0.1:4222, or $TIDE_SERVER)\n" CLI_CREDS_USAGE);
}

static void print_inspection(const char *cmd, const msg_t *m);

static int is_status_503(const msg_t *m)
{
    return m->hdr && m->hdr_len >= 12 && !strncmp(m->hdr, "NATS/1.0 503", 12);
}

/* tide sub: prints what arrives on subject (in queue, if any), count
 * messages (0: until stopped).  0, or -1 (reported). */
static int cli_subscribe(conn_t *c, const char *subject, const char *queue, long count, int json)
{
    char line[4200];
    /* Not flush(): a message can come before the PONG (a consumer's
     * backlog does) and flush() would read past it.  "listening" once
     * the PONG says the SUB is in place. */
    snprintf(line, sizeof line, "SUB %s%s%s 1\r\nPING\r\n", subject, queue ? " " : "", queue ? queue : "");
    if (send_all(c, line, strlen(line)) < 0)
        return -1;
    int listening = 0;
    for (long n = 1; !count || n <= count;) {
        msg_t m;
        int r = read_frame(c, &m, -1, !listening);
        if (r == 2) {
            listening = 1;
            if (!json)
                fprintf(stderr, "listening on %s%s%s (Ctrl-C to stop)\n", subject, queue ? " in queue " : "",
                        queue ? queue : "");
            continue;
        }
        if (r != 1) {
            if (r == -1)
                fprintf(stderr, "tide: the server closed the connection\n");
            return -1;
        }
        print_msg(&m, json, n++);
        msg_free(&m);
    }
    return 0;
}

/* The subject of the admin request verb: $TIDE.ADMIN.<verb>, or with a
 * node name $TIDE.NODE.<node>.ADMIN.<verb> (docs/cluster.md). */
static void cli_admin_subject(char *out, size_t size, const char *node, const char *verb)
{
    if (node)
        snprintf(out, size, "$TIDE.NODE.%s.ADMIN.%s", node, verb);
    else
        snprintf(out, size, "$TIDE.ADMIN.%s", verb);
}

/* 0 when name may follow $TIDE.NODE. (one token, not too long); else -1,
 * said on stderr. */
static int cli_check_node(const char *name)
{
    if (name[0] && strlen(name) < 200 && !strpbrk(name, ".*> \t\r\n"))
        return 0;
    fprintf(stderr, "tide: --node expects a node's name, one subject token (no '.', '*', '>' or blanks), got '%s'\n",
            name);
    return -1;
}

/* tide req, stats and rules (inspect): one request to subject, its answer
 * printed.  0, or -1 (reported). */
static int cli_request(conn_t *c, const char *cmd, int inspect, const char *to, const char *hdr, size_t hlen,
                       const char *data, size_t dlen, double timeout, int json)
{
    char inbox[64], line[256];
    unsigned char rnd[8];
    evutil_secure_rng_get_bytes(rnd, sizeof rnd);
    snprintf(inbox, sizeof inbox, "_INBOX.%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
             rnd[4], rnd[5], rnd[6], rnd[7]);
    snprintf(line, sizeof line, "SUB %s 1\r\nUNSUB 1 1\r\n", inbox);
    const char *subject = to;
    if (send_all(c, line, strlen(line)) < 0 ||
        publish(c, subject, inbox, hdr, hlen, data, dlen) < 0)
        return -1;
    msg_t m;
    int r = read_msg(c, &m, now_s() + timeout);
    if (r == 0) {
        fprintf(stderr, "tide: no reply from %s within %.1f s\n", subject, timeout);
        return -1;
    }
    if (r != 1)
        return -1;
    if (is_status_503(&m)) {
        fprintf(stderr, "tide: no responders for %s\n", subject);
        msg_free(&m);
        return -1;
    }
    if (inspect && !json)
        print_inspection(cmd, &m);
    else if (inspect)
        printf("%s\n", m.payload); /* the answer as it came */
    else
        print_msg(&m, json, 1);
    msg_free(&m);
    return 0;
}

#define CLI_HEADERS_MAX 64

/* What tide pub, sub, req, stats or rules was asked to do. */
typedef struct cli_args {
    const char *server;             /* -s, else $TIDE_SERVER, else 127.0.0.1:4222 */
    const char *reply;              /* --reply (pub), or NULL */
    const char *queue;              /* --queue (sub), or NULL */
    char *headers[CLI_HEADERS_MAX]; /* -H NAME:VALUE, as given */
    int nh;
    long count;     /* --count (sub); 0: until stopped */
    double timeout; /* --timeout (req, stats, rules), seconds */
    const char *node; /* --node (stats, rules): the node of the cluster that answers, or NULL */
    int json;
    int inspect;    /* stats or rules: an admin request, no arguments */
    char **pos;     /* the positional arguments (in argv) */
    int npos;
    cli_creds_t creds; /* --user, --password, --token, --nkey, --tls-* */
} cli_args_t;

/*
 * Reads cmd's options and arguments (argv[0] is the command) into a.
 * Returns -1 when the command is to run, else the exit code to leave with
 * at once: 0 after --help, 2 after a usage error (said on stderr).
 */
static int cli_parse_args(const char *cmd, int argc, char **argv, cli_args_t *a)
{
    static const struct option longopts[] = {
        {"server", required_argument, NULL, 's'}, {"header", required_argument, NULL, 'H'},
        {"reply", required_argument, NULL, 'r'},  {"queue", required_argument, NULL, 'q'},
        {"count", required_argument, NULL, 'n'},  {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
        {"node", required_argument, NULL, 'N'},   CLI_CREDS_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    int ch;
    memset(a, 0, sizeof *a);
    a->server = getenv("TIDE_SERVER") ? getenv("TIDE_SERVER") : "127.0.0.1:4222";
    a->timeout = 5;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":s:H:r:q:n:t:jh", longopts, NULL)) != -1) {
        switch (ch) {
        case 's': a->server = optarg; break;
        case 'H':
            if (a->nh == CLI_HEADERS_MAX) {
                fprintf(stderr, "tide: too many headers\n");
                return 2;
            }
            a->headers[a->nh++] = optarg;
            break;
        case 'r': a->reply = optarg; break;
        case 'q': a->queue = optarg; break;
        case 'n': a->count = strtol(optarg, NULL, 10); break;
        case 't': a->timeout = strtod(optarg, NULL); break;
        case 'j': a->json = 1; break;
        case 'N':
            if (cli_check_node(optarg) < 0)
                return 2;
            a->node = optarg;
            break;
        case 'h': usage_clients(); return 0;
        case CLI_OPT_USER: case CLI_OPT_PASSWORD: case CLI_OPT_TOKEN: case CLI_OPT_NKEY:
        case CLI_OPT_TLS_CA: case CLI_OPT_TLS_CERT: case CLI_OPT_TLS_KEY:
            cli_creds_option(&a->creds, ch, optarg);
            break;
        case ':':
            fprintf(stderr, "tide %s: option '%s' needs a value\n", cmd, argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "tide %s: unknown option '%s'\n", cmd, argv[optind - 1]);
            usage_clients();
            return 2;
        }
    }
    a->npos = argc - optind;
    a->pos = argv + optind;
    a->inspect = !strcmp(cmd, "stats") || !strcmp(cmd, "rules");
    int need = a->inspect ? 0 : 1;
    if (a->npos < need || a->npos > need + 1 || (!strcmp(cmd, "sub") && a->npos != 1) || (a->inspect && a->npos) ||
        (a->node && !a->inspect)) {
        usage_clients();
        return 2;
    }
    return -1;
}

/* All of standard input, in a buffer the caller frees (not NUL-terminated),
 * its length in *len; NULL when it does not fit in memory. */
static char *cli_read_stdin(size_t *len)
{
    size_t cap = 65536;
    char *b = malloc(cap);
    *len = 0;
    for (size_t n; b && (n = fread(b + *len, 1, cap - *len, stdin)) > 0;) {
        *len += n;
        if (*len == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb)
                free(b);
            b = nb;
        }
    }
    return b;
}

/*
 * The message's data and its length: DATA as given, "" without it, or for
 * DATA "-" all of standard input (then also in *owned, which the caller
 * frees).  NULL when standard input does not fit in memory (said on stderr).
 */
static const char *cli_message_data(const cli_args_t *a, char **owned, size_t *len)
{
    const char *data = a->npos > 1 ? a->pos[1] : "";
    *owned = NULL;
    *len = strlen(data);
    if (strcmp(data, "-"))
        return data;
    if (!(*owned = cli_read_stdin(len)))
        fprintf(stderr, "tide: out of memory reading standard input\n");
    return *owned;
}

/* Runs cmd (pub, sub, req, stats or rules) over the connection c with the
 * message hdr + data.  Returns the exit code: 0, or 1 (said on stderr). */
static int cli_run(conn_t *c, const char *cmd, const cli_args_t *a, const char *hdr, size_t hlen,
                   const char *data, size_t dlen)
{
    if (!strcmp(cmd, "pub")) {
        if (publish(c, a->pos[0], a->reply, hdr, hlen, data, dlen) < 0 || flush(c) < 0)
            return 1;
        if (!a->json)
            printf("published %zu bytes to %s\n", dlen, a->pos[0]);
        return 0;
    }
    if (!strcmp(cmd, "sub"))
        return cli_subscribe(c, a->pos[0], a->queue, a->count, a->json) < 0 ? 1 : 0;
    if (!strcmp(cmd, "req") || a->inspect) {
        char subject[300];
        const char *to = a->inspect ? subject : a->pos[0];
        if (a->inspect)
            cli_admin_subject(subject, sizeof subject, a->node, !strcmp(cmd, "stats") ? "STATS" : "RULES");
        return cli_request(c, cmd, a->inspect, to, hdr, hlen, data, dlen, a->timeout, a->json) < 0 ? 1 : 0;
    }
    return 1;
}

int cli_main(const char *cmd, int argc, char **argv)
{
    cli_args_t a;
    conn_t c;
    char *stdin_data = NULL, *hdr = NULL;
    size_t dlen = 0, hlen = 0;
    int rc = cli_parse_args(cmd, argc, argv, &a);
    if (rc >= 0)
        return rc;
    const char *data = cli_message_data(&a, &stdin_data, &dlen);
    if (!data)
        return 1;
    hdr = header_block(a.headers, a.nh, &hlen);
    rc = 1;
    if (cli_connect(&c, a.server, &a.creds) == 0)
        rc = cli_run(&c, cmd, &a, hdr, hlen, data, dlen);
    free(hdr);
    free(stdin_data);
    conn_close(&c);
    return rc;
}

/* ---- tide repl --connect ------------------------------------------------------ */

/* True when the buffer holds one whole frame (a line, and for MSG/HMSG its
 * payload and CRLF), so reading it cannot wait. */
static int frame_ready(const conn_t *c)
{
    if (c->len == sizeof c->buf)
        return 1; /* a frame larger than the buffer: read_exact takes the rest */
    const char *nl = memchr(c->buf, '\n', c->len);
    if (!nl)
        return 0;
    size_t line = (size_t)(nl - c->buf) + 1;
    if (strncmp(c->buf, "MSG ", 4) && strncmp(c->buf, "HMSG ", 5))
        return 1;
    /* The last number on the line is the payload size. */
    const char *p = nl;
    while (p > c->buf && (p[-1] == '\r' || p[-1] == '\n'))
        p--;
    while (p > c->buf && p[-1] >= '0' && p[-1] <= '9')
        p--;
    size_t total = strtoul(p, NULL, 10);
    return c->len >= line + total + 2;
}

static conn_t *rc_conn;
static char *rc_buf;      /* the statement being typed */
static char rc_inbox[64];
static int rc_done, rc_tty, rc_seq; /* rc_done: 1 end of input, 2 the node closed the connection */
static int rc_ending; /* EVAL.END was sent: its answer is not printed */

/* Prints a line from the node while the prompt may be on the screen. */
static void rc_print(const char *s, size_t n)
{
    if (rc_tty) {
        int point = rl_point;
        char *saved = rl_copy_text(0, rl_end);
        rl_save_prompt();
        rl_replace_line("", 0);
        rl_redisplay();
        fwrite(s, 1, n, stdout);
        if (!n || s[n - 1] != '\n')
            fputc('\n', stdout);
        rl_restore_prompt();
        rl_replace_line(saved, 0);
        rl_point = point;
        rl_redisplay();
        free(saved);
    } else {
        fwrite(s, 1, n, stdout);
        if (!n || s[n - 1] != '\n')
            fputc('\n', stdout);
    }
    fflush(stdout);
}

/* Handles frames already in the buffer; returns 1 when the reply to the
 * current request was among them. */
static int rc_frames(conn_t *c)
{
    int got_reply = 0;
    while (frame_ready(c)) {
        msg_t m;
        int r = read_msg(c, &m, now_s() + 10); /* (waits only for the rest of a large frame) */
        if (r != 1) {
            if (r < 0)
                rc_done = 2;
            break;
        }
        if (!strcmp(m.subject, "$TIDE.TRACE")) {
            rc_print(m.payload, m.payload_len);
        } else if (rc_ending) {
            got_reply = 1;
        } else {
            cJSON *o = cJSON_ParseWithLength(m.payload, m.payload_len);
            cJSON *ok = cJSON_GetObjectItem(o, "ok"), *output = cJSON_GetObjectItem(o, "output"),
                  *error = cJSON_GetObjectItem(o, "error"), *more = cJSON_GetObjectItem(o, "incomplete");
            if (cJSON_IsTrue(ok)) {
                if (cJSON_IsString(output) && output->valuestring[0])
                    fputs(output->valuestring, stdout);
                if (!cJSON_IsTrue(more)) {
                    free(rc_buf);
                    rc_buf = NULL;
                }
            } else {
                printf("error: %s\n", cJSON_IsString(error) ? error->valuestring : "bad reply from the node");
                free(rc_buf);
                rc_buf = NULL;
            }
            fflush(stdout);
            cJSON_Delete(o);
            got_reply = 1;
        }
        msg_free(&m);
    }
    return got_reply;
}

static void rc_line(char *line)
{
    conn_t *c = rc_conn;
    if (!line) {
        rc_done = 1;
        return;
    }
    if (rc_tty && *line)
        add_history(line);
    size_t have = rc_buf ? strlen(rc_buf) : 0, n = strlen(line);
    char *nb = realloc(rc_buf, have + n + 2);
    if (!nb)
        return;
    if (have)
        nb[have++] = '\n';
    memcpy(nb + have, line, n + 1);
    rc_buf = nb;
    if (rc_tty)
        free(line);
    if (strspn(rc_buf, " \t") == strlen(rc_buf)) {
        free(rc_buf);
        rc_buf = NULL;
        return;
    }
    char reply[96];
    snprintf(reply, sizeof reply, "%s.%d", rc_inbox, ++rc_seq);
    if (publish(c, "$TIDE.ADMIN.EVAL", reply, NULL, 0, rc_buf, strlen(rc_buf)) < 0) {
        fprintf(stderr, "tide: lost the connection\n");
        rc_done = 2;
        return;
    }
    /* Wait for the answer; what the node traces meanwhile is shown. */
    double deadline = now_s() + 30;
    while (!rc_done) {
        if (rc_frames(c))
            break;
        if (now_s() > deadline) {
            printf("error: no answer from the node within 30 s\n");
            free(rc_buf);
            rc_buf = NULL;
            break;
        }
        if (fill(c, now_s() + 0.5) < 0) {
            fprintf(stderr, "tide: the node closed the connection\n");
            rc_done = 2;
        }
    }
    if (rc_tty)
        rl_set_prompt(rc_buf ? ">> " : "> ");
}

/* Says goodbye so the node takes the session down now (closing the
 * connection does it too, a moment later), waiting a little for the answer. */
static void rc_leave(conn_t *c)
{
    char reply[96];
    if (rc_done == 2)
        return; /* the node closed the connection */
    rc_ending = 1;
    snprintf(reply, sizeof reply, "%s.%d", rc_inbox, ++rc_seq);
    if (publish(c, "$TIDE.ADMIN.EVAL.END", reply, NULL, 0, "", 0) < 0)
        return;
    for (double deadline = now_s() + 2; !rc_frames(c) && now_s() < deadline;)
        if (fill(c, deadline) < 0)
            return;
}

int cli_repl_connect(const char *server, const cli_creds_t *creds)
{
    conn_t c;
    char line[256], hist[1024] = "";
    unsigned char rnd[8];
    if (cli_connect(&c, server, creds) < 0) {
        conn_close(&c);
        return 1;
    }
    rc_conn = &c;
    rc_tty = isatty(0);
    evutil_secure_rng_get_bytes(rnd, sizeof rnd);
    snprintf(rc_inbox, sizeof rc_inbox, "_INBOX.%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
             rnd[4], rnd[5], rnd[6], rnd[7]);
    snprintf(line, sizeof line, "SUB $TIDE.TRACE 1\r\nSUB %s.* 2\r\n", rc_inbox);
    if (send_all(&c, line, strlen(line)) < 0 || flush(&c) < 0)
        return 1;
    printf("tide repl: connected to %s; the code you type runs on that node.\n", server);
    fflush(stdout);
    if (rc_tty) {
        const char *h = getenv("TIDE_HISTORY");
        if (h)
            snprintf(hist, sizeof hist, "%s", h);
        else if (getenv("HOME"))
            snprintf(hist, sizeof hist, "%s/.tide_history", getenv("HOME"));
        if (hist[0])
            read_history(hist);
        rl_callback_handler_install("> ", rc_line);
    } else {
        /* A pipe: no line may wait in stdio while poll sees nothing. */
        setvbuf(stdin, NULL, _IONBF, 0);
    }
    while (!rc_done) {
        struct pollfd pfd[2] = {{0, POLLIN, 0}, {c.fd, POLLIN, 0}};
        /* Bytes OpenSSL already decrypted do not make the socket readable. */
        if (c.ssl && SSL_pending(c.ssl) > 0)
            pfd[1].revents = POLLIN;
        else if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[1].revents) {
            /* Readable: this does not wait (a deadline of now would not
             * read at all, and the node's output would pile up). */
            if (fill(&c, now_s() + 1) < 0) {
                fprintf(stderr, "\ntide: the node closed the connection\n");
                rc_done = 2;
                break;
            }
            rc_frames(&c);
        }
        if (pfd[0].revents) {
            if (rc_tty) {
                rl_callback_read_char();
            } else {
                static char *l;
                static size_t cap;
                ssize_t n = getline(&l, &cap, stdin);
                if (n < 0) {
                    rc_line(NULL);
                } else {
                    if (n && l[n - 1] == '\n')
                        l[n - 1] = '\0';
                    rc_line(l);
                }
            }
        }
    }
    if (rc_tty) {
        rl_callback_handler_remove();
        if (hist[0])
            write_history(hist);
        printf("\n");
    }
    rc_leave(&c);
    free(rc_buf);
    conn_close(&c);
    return 0;
}

/* ---- tide stream / consumer / dlq: the persistent queue's admin requests ------- */

typedef struct ops {
    conn_t c;
    char inbox[64];
    int seq;
    double timeout;
    int json;
    const char *node; /* --node: the node of the cluster that answers, or NULL */
    char **nums; /* number texts of the answers (json_parse), freed at the end */
    size_t nnums;
} ops_t;

/*
 * Sends $TIDE.ADMIN.<verb> with payload and returns the parsed answer, or
 * NULL after saying why on stderr (an {"ok":false,"error":...} answer, no
 * answer, a server without streams).
 */
static cJSON *ops_req(ops_t *o, const char *verb, const char *payload)
{
    char subject[300], reply[96];
    cli_admin_subject(subject, sizeof subject, o->node, verb);
    snprintf(reply, sizeof reply, "%s.%d", o->inbox, ++o->seq);
    if (publish(&o->c, subject, reply, NULL, 0, payload, strlen(payload)) < 0) {
        fprintf(stderr, "tide: lost the connection to the server\n");
        return NULL;
    }
    double deadline = now_s() + o->timeout;
    for (;;) {
        msg_t m;
        int r = read_msg(&o->c, &m, deadline);
        if (r == 0) {
            fprintf(stderr, "tide: no answer to %s within %.1f s\n", subject, o->timeout);
            return NULL;
        }
        if (r < 0) {
            if (r == -1)
                fprintf(stderr, "tide: the server closed the connection\n");
            return NULL;
        }
        if (strcmp(m.subject, reply)) { /* a late answer to an earlier request */
            msg_free(&m);
            continue;
        }
        /* Lossless: numbers keep their text (an id of 2^64 - 1 prints as itself). */
        char *nums = NULL;
        cJSON *j = json_parse(m.payload, m.payload_len, &nums);
        char **nn = j ? realloc(o->nums, (o->nnums + 1) * sizeof *nn) : NULL;
        if (nn) {
            o->nums = nn;
            o->nums[o->nnums++] = nums;
        } else {
            free(nums);
        }
        if (!j)
            fprintf(stderr, "tide: the server's answer is not JSON: %.200s\n", m.payload);
        msg_free(&m);
        const cJSON *ok = cJSON_GetObjectItemCaseSensitive(j, "ok"), *err = cJSON_GetObjectItemCaseSensitive(j, "error");
        if (cJSON_IsFalse(ok)) {
            const char *e = cJSON_IsString(err) ? err->valuestring : "the request failed";
            if (!strncmp(e, "unknown admin request", 21) && !strncmp(verb, "RULES.", 6))
                fprintf(stderr, "tide: this server does not answer %s\n", subject);
            else if (!strncmp(e, "unknown admin request", 21))
                fprintf(stderr, "tide: this server has no persistent queue (its config declares no stream)\n");
            else
                fprintf(stderr, "tide: %s\n", e);
            cJSON_Delete(j);
            return NULL;
        }
        return j;
    }
}

static void print_json(const cJSON *j, int pretty)
{
    char *s = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
    printf("%s\n", s ? s : "null");
    cJSON_free(s);
}

static const char *jstr(const cJSON *o, const char *key, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

/* A number of an admin answer (json_parse keeps numbers as raw text). */
static int jis_num(const cJSON *v)
{
    return cJSON_IsNumber(v) || (cJSON_IsRaw(v) && v->valuestring && json_is_number(v));
}

static double jval(const cJSON *v)
{
    return cJSON_IsNumber(v) ? v->valuedouble : strtod(v->valuestring, NULL);
}

static double jnum(const cJSON *o, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return jis_num(v) ? jval(v) : dflt;
}

/* A number as text: whole numbers without a fraction. */
static const char *numtxt(double v, char *b, size_t n)
{
    if (v == (double)(long long)v)
        snprintf(b, n, "%lld", (long long)v);
    else
        snprintf(b, n, "%g", v);
    return b;
}

/* A number of an answer as text: whole numbers exactly as they came (a
 * sequence past 2^53 too), others through numtxt; "0" when v is none. */
static const char *vtxt(const cJSON *v, char *b, size_t n)
{
    uint64_t u;
    if (json_get_uint(v, &u) == 0)
        snprintf(b, n, "%" PRIu64, u);
    else
        numtxt(jis_num(v) ? jval(v) : 0, b, n);
    return b;
}

static const char *jtxt(const cJSON *o, const char *key, char *b, size_t n)
{
    return vtxt(cJSON_GetObjectItemCaseSensitive(o, key), b, n);
}

/* A whole number of an answer, exactly; dflt when it is not one. */
static uint64_t juint(const cJSON *o, const char *key, uint64_t dflt)
{
    uint64_t u;
    return json_get_uint_member(o, key, &u) == 0 ? u : dflt;
}

/* "2026-01-02T15:04:05.123456789Z" -> "2026-01-02T15:04:05.123Z" */
static const char *short_time(const char *t, char *b, size_t n)
{
    const char *dot = strchr(t, '.');
    if (dot && strlen(dot) > 5 && t[strlen(t) - 1] == 'Z')
        snprintf(b, n, "%.*sZ", (int)(dot - t + 4), t);
    else
        snprintf(b, n, "%s", t);
    return b;
}

/* A table printed with aligned columns. */
#define TABLE_COLS 10
typedef struct table {
    int ncols;
    char **cells; /* row-major */
    size_t nrows, cap;
} table_t;

static void table_row(table_t *t, ...)
{
    va_list ap;
    if (t->nrows == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 16;
        char **ncells = realloc(t->cells, nc * (size_t)t->ncols * sizeof *ncells);
        if (!ncells)
            return;
        t->cells = ncells;
        t->cap = nc;
    }
    va_start(ap, t);
    for (int i = 0; i < t->ncols; i++) {
        const char *s = va_arg(ap, const char *);
        t->cells[t->nrows * (size_t)t->ncols + (size_t)i] = strdup(s ? s : "-");
    }
    va_end(ap);
    t->nrows++;
}

static void table_free(table_t *t)
{
    for (size_t k = 0; k < t->nrows * (size_t)t->ncols; k++)
        free(t->cells[k]);
    free(t->cells);
    t->cells = NULL;
    t->nrows = t->cap = 0;
}

static void table_print(table_t *t)
{
    size_t w[TABLE_COLS] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (int i = 0; i < t->ncols; i++) {
            const char *s = t->cells[r * (size_t)t->ncols + (size_t)i];
            if (s && strlen(s) > w[i])
                w[i] = strlen(s);
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (int i = 0; i < t->ncols; i++) {
            const char *s = t->cells[r * (size_t)t->ncols + (size_t)i];
            const char *last = t->cells[r * (size_t)t->ncols + (size_t)t->ncols - 1];
            if (i == t->ncols - 2 && (!last || !*last)) { /* nothing after it: no padding */
                printf("%s\n", s ? s : "");
                break;
            }
            if (i == t->ncols - 1)
                printf("%s\n", s ? s : "");
            else
                printf("%-*s  ", (int)w[i], s ? s : "");
        }
    }
    table_free(t);
}

/* --since/--until: RFC 3339 or seconds since the epoch pass through; a
 * duration ("90s", "15m", "2h", "7d") means that long ago. */
static const char *time_arg(const char *s, char *b, size_t n)
{
    char *end;
    double v = strtod(s, &end);
    double mult = !strcmp(end, "s") ? 1 : !strcmp(end, "m") ? 60 : !strcmp(end, "h") ? 3600
                : !strcmp(end, "d") ? 86400 : !strcmp(end, "ms") ? 0.001 : 0;
    if (end == s || mult == 0 || v < 0)
        return s;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(b, n, "%.3f", (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 - v * mult);
    return b;
}

/* Headers of a record as "K: V, K: V" (readable output). */
static void headers_line(const cJSON *h, char *b, size_t n)
{
    const cJSON *kv;
    size_t o = 0;
    b[0] = 0;
    cJSON_ArrayForEach(kv, h) {
        if (cJSON_IsString(kv) && o < n)
            o += (size_t)snprintf(b + o, n - o, "%s%s: %s", o ? ", " : "", kv->string, kv->valuestring);
    }
}

/* The data of a record as one line of text. */
static char *data_text(const cJSON *ev)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(ev, "data");
    if (d) {
        char *s = cJSON_PrintUnformatted(d);
        char *out = s ? strdup(s) : NULL;
        cJSON_free(s);
        return out;
    }
    return strdup(jstr(ev, "payload", ""));
}

static void print_event_line(const cJSON *ev)
{
    char t[64], seq[32], hl[2048];
    char *data = data_text(ev);
    printf("#%s  %s  %s  %s", jtxt(ev, "seq", seq, sizeof seq),
           short_time(jstr(ev, "time", ""), t, sizeof t), jstr(ev, "subject", ""), data ? data : "");
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(ev, "headers");
    if (h && h->child) {
        headers_line(h, hl, sizeof hl);
        printf("  [%s]", hl);
    }
    printf("\n");
    free(data);
}

/*
 * An exported event as a `tide run --events` line: the subject, the
 * headers, and the stored payload: a CloudEvents envelope as "event" (sent
 * as it is), anything else as "data" (which tide run wraps in an envelope)
 * with the record's stored "time".
 */
static void print_export_line(const cJSON *ev)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "subject", jstr(ev, "subject", ""));
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(ev, "headers");
    if (h && h->child)
        cJSON_AddItemToObject(o, "headers", cJSON_Duplicate(h, 1));
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(ev, "data");
    if (cJSON_IsObject(d) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(d, "specversion"))) {
        cJSON_AddItemToObject(o, "event", cJSON_Duplicate(d, 1));
    } else {
        if (d) {
            cJSON_AddItemToObject(o, "data", cJSON_Duplicate(d, 1));
        } else {
            const char *p = jstr(ev, "payload", "");
            cJSON *v = *p ? cJSON_Parse(p) : NULL; /* 42, "text", true: JSON that is not an object */
            cJSON_AddItemToObject(o, "data", v ? v : cJSON_CreateString(p));
        }
        /* The stored time, so `tide run --clock virtual` replays it when. */
        if (*jstr(ev, "time", ""))
            cJSON_AddStringToObject(o, "time", jstr(ev, "time", ""));
    }
    print_json(o, 0);
    cJSON_Delete(o);
}

typedef struct ops_args {
    const char *subject, *since, *until;
    long long from, limit, seq;
    int all;
    const char *percent, *key, *max_error_rate, *window; /* tide rules canary */
} ops_args_t;

/* stream events / export: pages through STREAM.EVENTS until the limit. */
static int stream_events(ops_t *o, const char *name, const ops_args_t *a, int export)
{
    char sb[64], ub[64];
    uint64_t next = a->from > 0 ? (uint64_t)a->from : 0;
    long long left = a->limit > 0 ? a->limit : -1, n = 0;
    for (int pages = 0; left != 0 && pages < 1000000; pages++) {
        int page = left > 0 && left < 500 ? (int)left : 500;
        cJSON *q = cJSON_CreateObject();
        cJSON_AddStringToObject(q, "stream", name);
        if (a->subject)
            cJSON_AddStringToObject(q, "subject", a->subject);
        if (a->since)
            cJSON_AddStringToObject(q, "since", time_arg(a->since, sb, sizeof sb));
        if (a->until)
            cJSON_AddStringToObject(q, "until", time_arg(a->until, ub, sizeof ub));
        if (next)
            json_add_uint(q, "from_seq", next);
        json_add_int(q, "limit", page);
        char *qs = cJSON_PrintUnformatted(q);
        cJSON_Delete(q);
        cJSON *r = qs ? ops_req(o, "STREAM.EVENTS", qs) : NULL;
        cJSON_free(qs);
        if (!r)
            return 1;
        const cJSON *evs = cJSON_GetObjectItemCaseSensitive(r, "events"), *ev;
        int got = 0;
        cJSON_ArrayForEach(ev, evs) {
            if (export)
                print_export_line(ev);
            else if (o->json)
                print_json(ev, 0);
            else
                print_event_line(ev);
            got++;
        }
        uint64_t nn = juint(r, "next_seq", 0);
        int more = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "more"));
        cJSON_Delete(r);
        n += got;
        if (left > 0)
            left -= got;
        /* A page can end early (the server bounds its size): go on while
         * it says there is more. */
        if ((got < page && !more) || nn <= next)
            break;
        next = nn;
    }
    fflush(stdout);
    if (export)
        fprintf(stderr, "exported %lld event%s from %s\n", n, n == 1 ? "" : "s", name);
    else if (!o->json && n == 0)
        fprintf(stderr, "no events\n");
    return 0;
}

static void print_stream_info(const cJSON *s)
{
    char a[32], b[32], c[32], d[32], t1[64], t2[64];
    const cJSON *subj = cJSON_GetObjectItemCaseSensitive(s, "subjects"), *x;
    char subjects[1024] = "";
    cJSON_ArrayForEach(x, subj) if (cJSON_IsString(x)) snprintf(subjects + strlen(subjects),
                                                                 sizeof subjects - strlen(subjects), "%s%s",
                                                                 subjects[0] ? ", " : "", x->valuestring);
    printf("stream %s\n", jstr(s, "name", "?"));
    printf("  subjects     %s\n", subjects);
    printf("  messages     %s (%s bytes)\n", jtxt(s, "messages", a, sizeof a),
           jtxt(s, "bytes", b, sizeof b));
    printf("  sequences    %s..%s (durable up to %s)\n", jtxt(s, "first_seq", a, sizeof a),
           jtxt(s, "last_seq", b, sizeof b), jtxt(s, "committed_seq", c, sizeof c));
    if (jstr(s, "first_time", NULL))
        printf("  time         %s .. %s\n", short_time(jstr(s, "first_time", ""), t1, sizeof t1),
               short_time(jstr(s, "last_time", ""), t2, sizeof t2));
    printf("  fsync        %s\n", jstr(s, "fsync", "?"));
    printf("  segments     %s\n", jtxt(s, "segments", a, sizeof a));
    printf("  consumers    %s\n", jtxt(s, "consumers", a, sizeof a));
    printf("  stored       %s, duplicates %s, conflicts %s, store errors %s\n",
           jtxt(s, "stored", a, sizeof a), jtxt(s, "duplicates", b, sizeof b),
           jtxt(s, "conflicts", c, sizeof c), jtxt(s, "store_errors", d, sizeof d));
    printf("  syncs        %s, sync errors %s, write errors %s\n", jtxt(s, "syncs", a, sizeof a),
           jtxt(s, "sync_errors", b, sizeof b), jtxt(s, "write_errors", c, sizeof c));
    printf("  failed       %s\n", cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "failed")) ? "YES (waiting to reopen)"
                                                                                             : "no");
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(s, "limits");
    if (l) {
        char e[32];
        printf("  limits       max_msgs %s, max_bytes %s, max_age %s s, dedup_window %s s\n",
               jtxt(l, "max_msgs", a, sizeof a), jtxt(l, "max_bytes", b, sizeof b),
               jtxt(l, "max_age", c, sizeof c), jtxt(l, "dedup_window", e, sizeof e));
    }
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(s, "recovery");
    if (r)
        printf("  recovery     %s records, %s damaged (%s bytes) skipped, torn tail %s bytes, %.3f s\n",
               jtxt(r, "records", a, sizeof a), jtxt(r, "corrupt_records", b, sizeof b),
               jtxt(r, "corrupt_bytes", c, sizeof c), jtxt(r, "torn_bytes", d, sizeof d),
               jnum(r, "seconds", 0));
    if (r && cJSON_GetObjectItemCaseSensitive(r, "checkpoints")) {
        printf("  checkpoints  %s segments from checkpoints, %s bytes of segments scanned",
               jtxt(r, "checkpoints", a, sizeof a), jtxt(r, "scanned_bytes", b, sizeof b));
        if (juint(r, "checkpoint_fallbacks", 0))
            printf(", %s not used (%s)", jtxt(r, "checkpoint_fallbacks", c, sizeof c),
                   jstr(r, "checkpoint_fallback", "?"));
        printf("\n");
    }
}

static void print_consumer_info(const cJSON *c)
{
    static const char *const keys[] = {"stream",       "filter",          "deliver",     "queue",
                                       "dead_letter",  "ordered_by",      "next_seq",    "num_pending",
                                       "num_ack_pending", "num_parked",   "delivered",   "redelivered",
                                       "acked",        "naked",           "terminated",  "ack_timeouts",
                                       "dead_lettered", "dead_letters_lost", "ack_wait",  "max_deliver",
                                       "max_ack_pending",
                                       NULL};
    int w = 0;
    for (int i = 0; keys[i]; i++)
        if (cJSON_GetObjectItemCaseSensitive(c, keys[i]) && (int)strlen(keys[i]) > w)
            w = (int)strlen(keys[i]);
    printf("consumer %s\n", jstr(c, "name", "?"));
    for (int i = 0; keys[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, keys[i]);
        char b[32];
        if (cJSON_IsString(v))
            printf("  %-*s %s\n", w, keys[i], v->valuestring);
        else if (jis_num(v))
            printf("  %-*s %s%s\n", w, keys[i], vtxt(v, b, sizeof b), !strcmp(keys[i], "ack_wait") ? " s" : "");
    }
}

static void print_record(const cJSON *r)
{
    char t[64], b[32];
    printf("stream   %s\n", jstr(r, "stream", "?"));
    printf("seq      %s\n", jtxt(r, "seq", b, sizeof b));
    printf("time     %s\n", short_time(jstr(r, "time", ""), t, sizeof t));
    printf("subject  %s\n", jstr(r, "subject", ""));
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(r, "headers"), *kv;
    cJSON_ArrayForEach(kv, h) if (cJSON_IsString(kv)) printf("header   %s: %s\n", kv->string, kv->valuestring);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(r, "data");
    if (d) {
        char *s = cJSON_PrintUnformatted(d);
        printf("data     %s\n", s ? s : "");
        cJSON_free(s);
    } else {
        printf("payload  %s\n", jstr(r, "payload", ""));
    }
}

/* A scalar of an answer as text: strings as they are, numbers exactly. */
static const char *scalar_text(const cJSON *v, char *b, size_t n)
{
    if (cJSON_IsString(v))
        return v->valuestring;
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v) ? "true" : "false";
    if (jis_num(v))
        return cJSON_IsRaw(v) ? v->valuestring : numtxt(v->valuedouble, b, n);
    return cJSON_IsNull(v) ? "null" : "...";
}

/* tide stats: a row per counter, the server's first, then each part
 * (scripts) under its name.  Every field of the answer is shown, so a
 * counter the server adds needs nothing here. */
static void print_stats(const cJSON *o)
{
    table_t t = {2, NULL, 0, 0};
    const cJSON *v, *w;
    char b[64], key[256];
    cJSON_ArrayForEach(v, o) if (!cJSON_IsObject(v) && !cJSON_IsArray(v))
        table_row(&t, v->string, scalar_text(v, b, sizeof b));
    cJSON_ArrayForEach(v, o) {
        if (!cJSON_IsObject(v))
            continue;
        table_row(&t, v->string, "");
        cJSON_ArrayForEach(w, v) if (!cJSON_IsObject(w) && !cJSON_IsArray(w)) {
            snprintf(key, sizeof key, "  %s", w->string);
            table_row(&t, key, scalar_text(w, b, sizeof b));
        }
    }
    table_print(&t);
}

/* tide rules: a row per rule, then the last error of each rule that has one. */
static void print_rules(const cJSON *arr)
{
    table_t t = {7, NULL, 0, 0};
    const cJSON *r;
    char what[512], c[32], e[32], d[32], ro[32], tm[64];
    if (!cJSON_GetArraySize(arr)) {
        printf("no rules loaded\n");
        return;
    }
    table_row(&t, "KIND", "RULE", "WHERE", "CALLS", "ERRORS", "DROPPED", "ROUTED");
    cJSON_ArrayForEach(r, arr) {
        const cJSON *from = cJSON_GetObjectItemCaseSensitive(r, "from_version");
        if (from)
            snprintf(what, sizeof what, "%s v%s->v%.0f", jstr(r, "type", "?"), vtxt(from, c, sizeof c), jval(from) + 1);
        else
            snprintf(what, sizeof what, "%s", jstr(r, "pattern", "?"));
        table_row(&t, jstr(r, "kind", "?"), what, jstr(r, "where", "?"), jtxt(r, "calls", c, sizeof c),
                  jtxt(r, "errors", e, sizeof e),
                  cJSON_GetObjectItemCaseSensitive(r, "dropped") ? jtxt(r, "dropped", d, sizeof d) : "-",
                  cJSON_GetObjectItemCaseSensitive(r, "routed") ? jtxt(r, "routed", ro, sizeof ro) : "-");
    }
    table_print(&t);
    cJSON_ArrayForEach(r, arr) {
        const cJSON *le = cJSON_GetObjectItemCaseSensitive(r, "last_error");
        if (!cJSON_IsObject(le))
            continue;
        printf("last error of %s %s (%s), %s, raised at %s: %s\n", jstr(r, "kind", "?"),
               jstr(r, "pattern", jstr(r, "type", "?")), jstr(r, "where", "?"),
               short_time(jstr(le, "time", "?"), tm, sizeof tm), jstr(le, "at", "?"), jstr(le, "message", "?"));
    }
}

/* tide stats and tide rules without --json: the answer readable (as it
 * came when it is not the JSON expected). */
static void print_inspection(const char *cmd, const msg_t *m)
{
    char *nums = NULL;
    cJSON *j = json_parse(m->payload, m->payload_len, &nums);
    if (!strcmp(cmd, "stats") && cJSON_IsObject(j))
        print_stats(j);
    else if (!strcmp(cmd, "rules") && cJSON_IsArray(j))
        print_rules(j);
    else
        printf("%s\n", m->payload);
    cJSON_Delete(j);
    free(nums);
}

/* stream verify: pages through STREAM.VERIFY (every record's CRC, a
 * bounded step per request) and says what it found.  0 when every record
 * is whole, 1 when some failed their checksum (or on an error). */
#define VERIFY_SHOWN 32
static int stream_verify(ops_t *o, const char *name)
{
    uint64_t next = 0, records = 0, bytes = 0, missing = 0, bad = 0, seqs[VERIFY_SHOWN];
    int nseqs = 0, more = 1, failed = 0;
    while (more) {
        cJSON *q = cJSON_CreateObject();
        cJSON_AddStringToObject(q, "stream", name);
        json_add_uint(q, "from_seq", next);
        char *qs = cJSON_PrintUnformatted(q);
        cJSON_Delete(q);
        cJSON *r = qs ? ops_req(o, "STREAM.VERIFY", qs) : NULL;
        cJSON_free(qs);
        if (!r)
            return 1;
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error"), *x;
        records += juint(r, "records", 0);
        bytes += juint(r, "bytes", 0);
        missing += juint(r, "missing", 0);
        bad += juint(r, "bad", 0);
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "bad_seqs")) {
            if (nseqs < VERIFY_SHOWN && json_get_uint(x, &seqs[nseqs]) == 0)
                nseqs++;
        }
        uint64_t nn = juint(r, "next_seq", 0);
        if (cJSON_IsString(e)) {
            fprintf(stderr, "tide: stream %s: cannot read sequence %" PRIu64 ": %s\n", name, nn, e->valuestring);
            failed = 1;
        }
        more = !failed && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "more")) && nn > next;
        next = nn;
        cJSON_Delete(r);
    }
    if (o->json) {
        cJSON *out = cJSON_CreateObject();
        cJSON_AddStringToObject(out, "stream", name);
        json_add_uint(out, "records", records);
        json_add_uint(out, "bytes", bytes);
        json_add_uint(out, "missing", missing);
        json_add_uint(out, "bad", bad);
        cJSON *arr = cJSON_AddArrayToObject(out, "bad_seqs");
        for (int i = 0; i < nseqs; i++)
            json_append_uint(arr, seqs[i]);
        print_json(out, 0);
        cJSON_Delete(out);
    } else {
        printf("stream %s: %" PRIu64 " records (%" PRIu64 " bytes) checked, %" PRIu64 " damaged", name, records,
               bytes, bad);
        for (int i = 0; i < nseqs; i++)
            printf("%s%" PRIu64, i ? ", " : ": sequence ", seqs[i]);
        printf("%s\n", bad > (uint64_t)nseqs ? ", ..." : "");
        if (missing)
            printf("%" PRIu64 " sequence%s without a record (skipped at start, or damaged before)\n", missing,
                   missing == 1 ? "" : "s");
    }
    return bad || failed ? 1 : 0;
}

static void usage_ops(void)
{
    fprintf(stderr,
            "usage: tide stream ls | info NAME | get NAME SEQ | verify NAME\n"
            "       tide stream events NAME [--subject PATTERN] [--since TIME] [--until TIME] [--from SEQ] [--limit N]\n"
            "       tide stream export NAME [--subject PATTERN] [--since TIME] [--until TIME] > events.jsonl\n"
            "       tide consumer ls | info NAME\n"
            "       tide dlq ls | show STREAM [--limit N] | replay STREAM (--seq N | --all)\n"
            "       tide rules reload | history | rollback [REV] | shadow PATH | diff | promote | stop\n"
            "       tide rules canary [PATH] --percent P [--key EXPR] [--max-error-rate R] [--window 60s]\n"
            "all take -s SERVER (host:port; default 127.0.0.1:4222 or $TIDE_SERVER), --json and --timeout SECONDS;\n"
            "--node NAME asks the node of that name in a cluster, through whichever node or server -s names;\n"
            CLI_CREDS_USAGE
            "TIME is RFC 3339, seconds since the epoch, or a duration ago (90s, 15m, 2h, 7d)\n");
}

enum { OO_SUBJECT = 2000, OO_SINCE, OO_UNTIL, OO_FROM, OO_LIMIT, OO_SEQ, OO_ALL, OO_PERCENT, OO_KEY, OO_MAXERR,
       OO_WINDOW, OO_NODE };

static int parse_count(const char *flag, const char *s, long long *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || v < 1) {
        fprintf(stderr, "tide: %s expects a whole number >= 1, got '%s'\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Usage error for a command ops_run does not know. */
static int ops_unknown(const char *cmd, const char *verb)
{
    fprintf(stderr, "tide %s: unknown command '%s'\n", cmd, verb);
    usage_ops();
    return 2;
}

/* The number of positional arguments a command takes: a usage error when
 * npos is not n. */
#define NEED(n)                                                                                                        \
    do {                                                                                                               \
        if (npos != (n)) {                                                                                             \
            usage_ops();                                                                                               \
            return 2;                                                                                                  \
        }                                                                                                              \
    } while (0)

/* tide stream ls | info | get | events | export | verify. */
static int ops_stream(ops_t *o, const char *verb, char **pos, int npos, const ops_args_t *a)
{
    cJSON *r = NULL;
    int rc = 1;
    if (!strcmp(verb, "ls")) {
        NEED(0);
        if (!(r = ops_req(o, "STREAM.LS", "")))
            return 1;
        if (o->json) {
            print_json(r, 0);
        } else if (!cJSON_GetArraySize(r)) {
            printf("no streams\n");
        } else {
            table_t t = {8, NULL, 0, 0};
            table_row(&t, "NAME", "SUBJECTS", "MESSAGES", "BYTES", "FIRST", "LAST", "CONSUMERS", "FSYNC");
            const cJSON *s;
            cJSON_ArrayForEach(s, r) {
                char subjects[512] = "", m[32], by[32], f[32], l[32], c[32];
                const cJSON *x;
                cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(s, "subjects")) if (cJSON_IsString(x))
                    snprintf(subjects + strlen(subjects), sizeof subjects - strlen(subjects), "%s%s",
                             subjects[0] ? "," : "", x->valuestring);
                table_row(&t, jstr(s, "name", "?"), subjects, jtxt(s, "messages", m, sizeof m),
                          jtxt(s, "bytes", by, sizeof by), jtxt(s, "first_seq", f, sizeof f),
                          jtxt(s, "last_seq", l, sizeof l), jtxt(s, "consumers", c, sizeof c),
                          cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "failed")) ? "FAILED" : jstr(s, "fsync", "?"));
            }
            table_print(&t);
        }
        rc = 0;
    } else if (!strcmp(verb, "info")) {
        NEED(1);
        if (!(r = ops_req(o, "STREAM.INFO", pos[0])))
            return 1;
        if (o->json)
            print_json(r, 0);
        else
            print_stream_info(r);
        rc = 0;
    } else if (!strcmp(verb, "get")) {
        NEED(2);
        long long seq;
        if (parse_count("SEQ", pos[1], &seq) < 0)
            return 2;
        cJSON *q = cJSON_CreateObject();
        cJSON_AddStringToObject(q, "stream", pos[0]);
        json_add_int(q, "seq", seq);
        char *qs = cJSON_PrintUnformatted(q);
        cJSON_Delete(q);
        r = qs ? ops_req(o, "STREAM.GET", qs) : NULL;
        cJSON_free(qs);
        if (!r)
            return 1;
        if (o->json)
            print_json(r, 0);
        else
            print_record(r);
        rc = 0;
    } else if ((!strcmp(verb, "events") || !strcmp(verb, "export"))) {
        NEED(1);
        /* The name first, so an unknown stream is named in the error. */
        if (!(r = ops_req(o, "STREAM.INFO", pos[0])))
            return 1;
        rc = stream_events(o, pos[0], a, !strcmp(verb, "export"));
    } else if (!strcmp(verb, "verify")) {
        NEED(1);
        if (!(r = ops_req(o, "STREAM.INFO", pos[0])))
            return 1;
        rc = stream_verify(o, pos[0]);
    } else {
        return ops_unknown("stream", verb);
    }
    cJSON_Delete(r);
    return rc;
}

/* tide consumer ls | info. */
static int ops_consumer(ops_t *o, const char *verb, char **pos, int npos, const ops_args_t *a)
{
    cJSON *r = NULL;
    int rc = 1;
    if (!strcmp(verb, "ls")) {
        NEED(0);
        if (!(r = ops_req(o, "CONSUMER.LS", "")))
            return 1;
        if (o->json) {
            print_json(r, 0);
        } else if (!cJSON_GetArraySize(r)) {
            printf("no consumers\n");
        } else {
            table_t t = {9, NULL, 0, 0};
            table_row(&t, "NAME", "STREAM", "DELIVER", "NEXT", "PENDING", "ACK_PENDING", "DELIVERED", "ACKED",
                      "DEAD_LETTERED");
            const cJSON *c;
            cJSON_ArrayForEach(c, r) {
                char nx[32], p[32], ap[32], d[32], ak[32], dl[32];
                table_row(&t, jstr(c, "name", "?"), jstr(c, "stream", "?"), jstr(c, "deliver", "-"),
                          jtxt(c, "next_seq", nx, sizeof nx), jtxt(c, "num_pending", p, sizeof p),
                          jtxt(c, "num_ack_pending", ap, sizeof ap),
                          jtxt(c, "delivered", d, sizeof d), jtxt(c, "acked", ak, sizeof ak),
                          jtxt(c, "dead_lettered", dl, sizeof dl));
            }
            table_print(&t);
        }
        rc = 0;
    } else if (!strcmp(verb, "info")) {
        NEED(1);
        if (!(r = ops_req(o, "CONSUMER.INFO", pos[0])))
            return 1;
        if (o->json)
            print_json(r, 0);
        else
            print_consumer_info(r);
        rc = 0;
    } else {
        return ops_unknown("consumer", verb);
    }
    cJSON_Delete(r);
    return rc;
}

/* tide dlq show. */
static int ops_dlq_show(ops_t *o, const char *verb, char **pos, int npos, const ops_args_t *a)
{
    cJSON *r = NULL;
    int rc = 1;
    char b1[32], b2[32];
    if (!strcmp(verb, "show")) {
        NEED(1);
        long long left = a->limit > 0 ? a->limit : -1, n = 0;
        uint64_t next = a->from > 0 ? (uint64_t)a->from : 0;
        table_t t = {7, NULL, 0, 0};
        table_row(&t, "SEQ", "TIME", "ORIGINAL_SUBJECT", "REASON", "DELIVERIES", "CONSUMER", "ERROR");
        for (int pages = 0; left != 0 && pages < 1000000; pages++) {
            int page = left > 0 && left < 500 ? (int)left : 500;
            cJSON *q = cJSON_CreateObject();
            cJSON_AddStringToObject(q, "stream", pos[0]);
            json_add_int(q, "limit", page);
            if (next)
                json_add_uint(q, "from_seq", next);
            char *qs = cJSON_PrintUnformatted(q);
            cJSON_Delete(q);
            cJSON_Delete(r);
            r = qs ? ops_req(o, "DLQ.SHOW", qs) : NULL;
            cJSON_free(qs);
            if (!r) {
                table_free(&t);
                return 1;
            }
            const cJSON *d;
            int got = 0;
            cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(r, "dead_letters")) {
                char tm[64];
                got++;
                if (o->json) {
                    print_json(d, 0);
                    continue;
                }
                table_row(&t, jtxt(d, "seq", b1, sizeof b1), short_time(jstr(d, "time", ""), tm, sizeof tm),
                          jstr(d, "original_subject", "?"), jstr(d, "reason", "-"),
                          cJSON_GetObjectItemCaseSensitive(d, "deliveries") ? jtxt(d, "deliveries", b2, sizeof b2)
                                                                            : "-",
                          jstr(d, "consumer", "-"), jstr(d, "error", "-"));
            }
            n += got;
            if (left > 0)
                left -= got;
            uint64_t nn = juint(r, "next_seq", 0);
            const cJSON *more = cJSON_GetObjectItemCaseSensitive(r, "more");
            if ((more ? !cJSON_IsTrue(more) : got < page) || nn <= next)
                break;
            next = nn;
        }
        if (!o->json && n) {
            table_print(&t);
            printf("%lld dead letter%s in %s\n", n, n == 1 ? "" : "s", pos[0]);
        } else {
            if (!o->json)
                printf("no dead letters in %s\n", pos[0]);
            table_free(&t);
        }
        rc = 0;
    } else {
        return ops_unknown("dlq", verb);
    }
    cJSON_Delete(r);
    return rc;
}

/* DLQ.REPLAY of one (--seq) or of all, page after page (the server
 * answers a bounded page and the range the first page fixed): the pages'
 * answers summed into one, in the shape of one page without its cursor;
 * NULL when a request failed (said on stderr). */
static cJSON *ops_dlq_replay(ops_t *o, const char *stream, const ops_args_t *a)
{
    cJSON *sum = NULL, *r = NULL;
    uint64_t next = 0, until = 0;
    for (int pages = 0; pages < 10000000; pages++) {
        cJSON *q = cJSON_CreateObject();
        cJSON_AddStringToObject(q, "stream", stream);
        if (!a->all) {
            json_add_int(q, "seq", a->seq);
        } else {
            cJSON_AddBoolToObject(q, "all", 1);
            if (next) {
                json_add_uint(q, "from_seq", next);
                json_add_uint(q, "until_seq", until);
            }
        }
        char *qs = cJSON_PrintUnformatted(q);
        cJSON_Delete(q);
        r = qs ? ops_req(o, "DLQ.REPLAY", qs) : NULL;
        cJSON_free(qs);
        if (!r) {
            cJSON_Delete(sum);
            return NULL;
        }
        int more = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "more"));
        uint64_t nn = juint(r, "next_seq", 0);
        until = juint(r, "until_seq", 0);
        cJSON_DeleteItemFromObjectCaseSensitive(r, "next_seq");
        cJSON_DeleteItemFromObjectCaseSensitive(r, "until_seq");
        cJSON_DeleteItemFromObjectCaseSensitive(r, "more");
        if (!sum) {
            sum = r;
        } else {
            static const char *counts[] = {"replayed", "stored", "duplicates", "refused"};
            for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
                uint64_t v = juint(sum, counts[i], 0) + juint(r, counts[i], 0);
                cJSON_DeleteItemFromObjectCaseSensitive(sum, counts[i]);
                json_add_uint(sum, counts[i], v);
            }
            cJSON *to = cJSON_GetObjectItemCaseSensitive(sum, "seqs"), *from = cJSON_GetObjectItemCaseSensitive(r, "seqs");
            while (to && from && from->child)
                cJSON_AddItemToArray(to, cJSON_DetachItemViaPointer(from, from->child));
            cJSON_Delete(r);
        }
        if (!more || nn <= next)
            break;
        next = nn;
    }
    return sum;
}

/* tide dlq ls | replay. */
static int ops_dlq(ops_t *o, const char *verb, char **pos, int npos, const ops_args_t *a)
{
    cJSON *r = NULL;
    int rc = 1;
    char b1[32], b2[32], b3[32], b4[32];
    if (!strcmp(verb, "ls")) {
        NEED(0);
        if (!(r = ops_req(o, "DLQ.LS", "")))
            return 1;
        if (o->json) {
            print_json(r, 0);
        } else if (!cJSON_GetArraySize(r)) {
            printf("no consumer has a dead_letter subject\n");
        } else {
            table_t t = {6, NULL, 0, 0};
            table_row(&t, "CONSUMER", "STREAM", "DEAD_LETTER", "DEAD_LETTERED", "STORED_IN", "MESSAGES");
            const cJSON *c;
            cJSON_ArrayForEach(c, r) {
                int stored = jstr(c, "dlq_stream", NULL) != NULL;
                table_row(&t, jstr(c, "consumer", "?"), jstr(c, "stream", "?"), jstr(c, "dead_letter", "?"),
                          jtxt(c, "dead_lettered", b1, sizeof b1),
                          stored ? jstr(c, "dlq_stream", "") : "(no stream: not kept)",
                          stored ? jtxt(c, "messages", b2, sizeof b2) : "-");
            }
            table_print(&t);
        }
        rc = 0;
    } else if (!strcmp(verb, "replay")) {
        NEED(1);
        if ((a->seq > 0) == a->all) {
            fprintf(stderr, "tide dlq replay: give --seq N or --all\n");
            return 2;
        }
        if (!(r = ops_dlq_replay(o, pos[0], a)))
            return 1;
        if (o->json) {
            print_json(r, 0);
        } else {
            uint64_t n = juint(r, "replayed", 0);
            printf("replayed %s dead letter%s from %s to their original subjects (stored %s, duplicates %s, refused "
                   "%s)\n",
                   jtxt(r, "replayed", b1, sizeof b1), n == 1 ? "" : "s", pos[0], jtxt(r, "stored", b2, sizeof b2),
                   jtxt(r, "duplicates", b3, sizeof b3),
                   jtxt(r, "refused", b4, sizeof b4));
        }
        rc = 0;
    } else {
        return ops_unknown("dlq", verb);
    }
    cJSON_Delete(r);
    return rc;
}

/* tide rules history without --json: one line per revision, newest first. */
static void print_history(const cJSON *r)
{
    char rev[32], tm[64], files[512];
    const cJSON *v, *f;
    table_t t = {7, NULL, 0, 0};
    uint64_t live = juint(r, "live", 0);
    table_row(&t, "REV", "HASH", "STATE", "AT", "BY", "FILES", "REASON");
    cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(r, "revisions")) {
        size_t used = 0;
        files[0] = '\0';
        cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(v, "files")) {
            const char *base = cJSON_IsString(f) ? strrchr(f->valuestring, '/') : NULL;
            if (used < sizeof files)
                used += (size_t)snprintf(files + used, sizeof files - used, "%s%s", used ? "," : "",
                                         base ? base + 1 : (cJSON_IsString(f) ? f->valuestring : "?"));
        }
        snprintf(rev, sizeof rev, "%s%llu", juint(v, "rev", 0) == live ? "*" : "",
                 (unsigned long long)juint(v, "rev", 0));
        table_row(&t, rev, jstr(v, "hash", "?"), jstr(v, "state", "?"),
                  short_time(jstr(v, "at", "?"), tm, sizeof tm), jstr(v, "by", "")[0] ? jstr(v, "by", "") : "-",
                  files, jstr(v, "reason", ""));
    }
    table_print(&t);
}

/* tide rules diff without --json. */
void cli_print_diff(const cJSON *r)
{
    char n1[32], n2[32];
    const cJSON *k, *x, *l;
    if (!strcmp(jstr(r, "mode", "shadow"), "canary")) {
        const cJSON *lv = cJSON_GetObjectItemCaseSensitive(r, "live"),
                    *cv = cJSON_GetObjectItemCaseSensitive(r, "candidate");
        char a1[32], a2[32], b1[32], b2[32];
        printf("canary %s since %s: %s%% by %s; live %s events, %s dead letters; candidate %s events, %s dead letters\n",
               jstr(r, "path", "?"), jstr(r, "since", "?"), jtxt(r, "percent", n1, sizeof n1), jstr(r, "key", "id"),
               jtxt(lv, "events", a1, sizeof a1), jtxt(lv, "dead_letters", a2, sizeof a2),
               jtxt(cv, "events", b1, sizeof b1), jtxt(cv, "dead_letters", b2, sizeof b2));
        return;
    }
    printf("shadow %s since %s: %s events, %s differ\n", jstr(r, "path", "?"), jstr(r, "since", "?"),
           jtxt(r, "events", n1, sizeof n1), jtxt(r, "differ", n2, sizeof n2));
    printf("  by kind:");
    cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(r, "kinds"))
        printf(" %s %s", k->string, vtxt(k, n1, sizeof n1));
    printf("\n");
    if (cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "rules")))
        printf("  by rule:");
    cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(r, "rules"))
        printf(" %s %s", k->string, vtxt(k, n1, sizeof n1));
    if (cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "rules")))
        printf("\n");
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "samples")) {
        printf("event %s  (", jstr(x, "subject", "?"));
        cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(x, "kinds"))
            printf("%s%s", k == cJSON_GetObjectItemCaseSensitive(x, "kinds")->child ? "" : ", ",
                   cJSON_IsString(k) ? k->valuestring : "?");
        printf(")\n");
        static const char *const sides[] = {"live", "candidate"};
        for (int i = 0; i < 2; i++) {
            const cJSON *lines = cJSON_GetObjectItemCaseSensitive(x, sides[i]);
            if (!cJSON_GetArraySize(lines))
                printf("  %-10s (nothing)\n", sides[i]);
            cJSON_ArrayForEach(l, lines)
                printf("  %-10s %s\n", l == lines->child ? sides[i] : "", cJSON_IsString(l) ? l->valuestring : "?");
        }
    }
}

/* tide rules shadow PATH | diff | promote | stop: an answer with nothing
 * more to show than that it worked. */
static int ops_rules_shadow(ops_t *o, const char *verb, char **pos, int npos)
{
    char real[PATH_MAX];
    cJSON *r = NULL;
    if (!strcmp(verb, "shadow")) {
        NEED(1);
        /* The node resolves a relative path from its own directory: send it whole. */
        cJSON *q = cJSON_CreateObject();
        cJSON_AddStringToObject(q, "path", realpath(pos[0], real) ? real : pos[0]);
        char *qs = cJSON_PrintUnformatted(q);
        cJSON_Delete(q);
        r = qs ? ops_req(o, "RULES.SHADOW", qs) : NULL;
        cJSON_free(qs);
        if (r && !o->json)
            printf("shadow of %s started: every event also goes through it, in dry mode\n", pos[0]);
    } else if (!strcmp(verb, "diff")) {
        NEED(0);
        if ((r = ops_req(o, "RULES.DIFF", "")) && !o->json)
            cli_print_diff(r);
    } else {
        NEED(0);
        r = ops_req(o, !strcmp(verb, "promote") ? "RULES.PROMOTE" : "RULES.STOP", "");
        if (r && !o->json)
            printf("%s\n", !strcmp(verb, "promote") ? "the candidate is live" : "the candidate is stopped");
    }
    if (r && o->json)
        print_json(r, 0);
    cJSON_Delete(r);
    return r ? 0 : 1;
}

/* A number from text, with an optional unit of time (s, m, h) when
 * seconds; -1 when it is not one. */
static double number_arg(const char *s, int seconds)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0)
        return -1;
    if (seconds && *end && !end[1] && strchr("smh", *end))
        v *= *end == 'h' ? 3600 : *end == 'm' ? 60 : 1, end++;
    return *end ? -1 : v;
}

/* tide rules canary [PATH] --percent P [--key EXPR] [--max-error-rate R] [--window 60s]. */
static int ops_rules_canary(ops_t *o, char **pos, int npos, const ops_args_t *a)
{
    char real[PATH_MAX];
    double pc = a->percent ? number_arg(a->percent, 0) : -1, r = a->max_error_rate ? number_arg(a->max_error_rate, 0) : 0.01,
           w = a->window ? number_arg(a->window, 1) : 60;
    if (npos > 1 || pc < 0 || pc > 100 || r < 0 || w <= 0) {
        fprintf(stderr, "tide rules canary: PATH --percent P (0 to 100) [--key EXPR] [--max-error-rate R (a fraction)] "
                        "[--window 60s]\n");
        return 2;
    }
    cJSON *q = cJSON_CreateObject();
    if (npos)
        cJSON_AddStringToObject(q, "path", realpath(pos[0], real) ? real : pos[0]);
    cJSON_AddNumberToObject(q, "percent", pc);
    if (a->key)
        cJSON_AddStringToObject(q, "key", a->key);
    cJSON_AddNumberToObject(q, "max_error_rate", r);
    cJSON_AddNumberToObject(q, "window", w);
    char *qs = cJSON_PrintUnformatted(q);
    cJSON_Delete(q);
    cJSON *ans = qs ? ops_req(o, "RULES.CANARY", qs) : NULL;
    cJSON_free(qs);
    if (ans && o->json)
        print_json(ans, 0);
    else if (ans && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ans, "finished")))
        printf("the canary is finished: the candidate is live\n");
    else if (ans)
        printf("canary %s: %g%% of the events by %s; rolled back when its dead-letter rate is %g points over the "
               "live rules' in a %gs window\n",
               jstr(ans, "path", "?"), jnum(ans, "percent", 0), jstr(ans, "key", "id"), jnum(ans, "max_error_rate", 0) * 100,
               jnum(ans, "window", 0));
    cJSON_Delete(ans);
    return ans ? 0 : 1;
}

/* tide rules reload | history | rollback [REV] | canary | shadow ... */
static int ops_rules(ops_t *o, const char *verb, char **pos, int npos, const ops_args_t *a)
{
    char q[64];
    cJSON *r = NULL;
    if (!strcmp(verb, "history")) {
        NEED(0);
        if (!(r = ops_req(o, "RULES.HISTORY", "")))
            return 1;
        if (o->json)
            print_json(r, 0);
        else
            print_history(r);
    } else if (!strcmp(verb, "rollback")) {
        long long rev = 0;
        if (npos > 1 || (npos == 1 && parse_count("REV", pos[0], &rev) < 0)) {
            usage_ops();
            return 2;
        }
        snprintf(q, sizeof q, rev ? "{\"rev\":%lld}" : "{}", rev);
        if (!(r = ops_req(o, "RULES.ROLLBACK", q)))
            return 1;
        if (o->json)
            print_json(r, 0);
        else
            printf("rev %llu is live again (rev %llu rolled back)\n", (unsigned long long)juint(r, "live", 0),
                   (unsigned long long)juint(r, "from", 0));
    } else if (!strcmp(verb, "reload")) {
        NEED(0);
        if (!(r = ops_req(o, "RELOAD", "")))
            return 1;
        if (o->json)
            print_json(r, 0);
        else
            printf("reloaded: generation %llu, %d rules\n", (unsigned long long)juint(r, "generation", 0),
                   (int)jnum(r, "rules", 0));
    } else if (!strcmp(verb, "canary")) {
        return ops_rules_canary(o, pos, npos, a);
    } else if (!strcmp(verb, "shadow") || !strcmp(verb, "diff") || !strcmp(verb, "promote") ||
               !strcmp(verb, "stop")) {
        return ops_rules_shadow(o, verb, pos, npos);
    } else {
        return ops_unknown("rules", verb);
    }
    cJSON_Delete(r);
    return 0;
}

#undef NEED

static int ops_run(ops_t *o, const char *cmd, const char *verb, char **pos, int npos, const ops_args_t *a)
{
    if (!strcmp(cmd, "stream"))
        return ops_stream(o, verb, pos, npos, a);
    if (!strcmp(cmd, "consumer"))
        return ops_consumer(o, verb, pos, npos, a);
    if (!strcmp(cmd, "dlq"))
        return !strcmp(verb, "show") ? ops_dlq_show(o, verb, pos, npos, a) : ops_dlq(o, verb, pos, npos, a);
    if (!strcmp(cmd, "rules"))
        return ops_rules(o, verb, pos, npos, a);
    return ops_unknown(cmd, verb);
}

/* Connects o to server and subscribes to the inbox its requests' answers
 * come to.  0, or -1 when it cannot connect (said on stderr) or send the
 * SUB; either way the caller calls ops_close(o) afterwards. */
static int ops_open(ops_t *o, const char *server, const cli_creds_t *creds)
{
    unsigned char rnd[8];
    char line[128];
    if (cli_connect(&o->c, server, creds) < 0)
        return -1;
    evutil_secure_rng_get_bytes(rnd, sizeof rnd);
    snprintf(o->inbox, sizeof o->inbox, "_INBOX.%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
             rnd[4], rnd[5], rnd[6], rnd[7]);
    snprintf(line, sizeof line, "SUB %s.* 1\r\n", o->inbox);
    return send_all(&o->c, line, strlen(line));
}

/* Closes o's connection (if any) and frees the number texts of its answers. */
static void ops_close(ops_t *o)
{
    conn_close(&o->c);
    for (size_t i = 0; i < o->nnums; i++)
        free(o->nums[i]);
    free(o->nums);
}

int cli_ops_main(const char *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"server", required_argument, NULL, 's'},  {"json", no_argument, NULL, 'j'},
        {"timeout", required_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'},
        {"subject", required_argument, NULL, OO_SUBJECT}, {"since", required_argument, NULL, OO_SINCE},
        {"until", required_argument, NULL, OO_UNTIL},     {"from", required_argument, NULL, OO_FROM},
        {"limit", required_argument, NULL, OO_LIMIT},     {"seq", required_argument, NULL, OO_SEQ},
        {"all", no_argument, NULL, OO_ALL},               {"percent", required_argument, NULL, OO_PERCENT},
        {"key", required_argument, NULL, OO_KEY},         {"max-error-rate", required_argument, NULL, OO_MAXERR},
        {"window", required_argument, NULL, OO_WINDOW},   {"node", required_argument, NULL, OO_NODE},
        CLI_CREDS_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    const char *server = getenv("TIDE_SERVER") ? getenv("TIDE_SERVER") : "127.0.0.1:4222";
    ops_t o;
    ops_args_t a;
    cli_creds_t creds;
    int ch;
    memset(&creds, 0, sizeof creds);
    memset(&o, 0, sizeof o);
    memset(&a, 0, sizeof a);
    o.timeout = 10;
    o.c.fd = -1;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":s:t:jh", longopts, NULL)) != -1) {
        switch (ch) {
        case 's': server = optarg; break;
        case 'j': o.json = 1; break;
        case 't':
            o.timeout = strtod(optarg, NULL);
            if (o.timeout <= 0) {
                fprintf(stderr, "tide: --timeout expects seconds > 0, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h': usage_ops(); return 0;
        case OO_SUBJECT: a.subject = optarg; break;
        case OO_SINCE: a.since = optarg; break;
        case OO_UNTIL: a.until = optarg; break;
        case OO_FROM:
            if (parse_count("--from", optarg, &a.from) < 0)
                return 2;
            break;
        case OO_LIMIT:
            if (parse_count("--limit", optarg, &a.limit) < 0)
                return 2;
            break;
        case OO_SEQ:
            if (parse_count("--seq", optarg, &a.seq) < 0)
                return 2;
            break;
        case OO_ALL: a.all = 1; break;
        case OO_PERCENT: a.percent = optarg; break;
        case OO_KEY: a.key = optarg; break;
        case OO_MAXERR: a.max_error_rate = optarg; break;
        case OO_WINDOW: a.window = optarg; break;
        case OO_NODE:
            if (cli_check_node(optarg) < 0)
                return 2;
            o.node = optarg;
            break;
        case CLI_OPT_USER: case CLI_OPT_PASSWORD: case CLI_OPT_TOKEN: case CLI_OPT_NKEY:
        case CLI_OPT_TLS_CA: case CLI_OPT_TLS_CERT: case CLI_OPT_TLS_KEY:
            cli_creds_option(&creds, ch, optarg);
            break;
        case ':':
            fprintf(stderr, "tide %s: option '%s' needs a value\n", cmd, argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "tide %s: unknown option '%s'\n", cmd, argv[optind - 1]);
            usage_ops();
            return 2;
        }
    }
    if (optind >= argc) {
        usage_ops();
        return 2;
    }
    int rc = 1;
    if (ops_open(&o, server, &creds) == 0)
        rc = ops_run(&o, cmd, argv[optind], argv + optind + 1, argc - optind - 1, &a);
    ops_close(&o);
    return rc;
}
