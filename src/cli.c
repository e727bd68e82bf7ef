/*
 * cli.c - the command-line clients: tide pub, sub, req and stats.
 *
 * A small blocking NATS client, enough for a terminal: connect, send, read
 * frames with a deadline.  Output is readable by default; --json prints one
 * JSON object per message for scripts.
 */
#include <errno.h>
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
#include "server.h"

typedef struct conn {
    int fd;
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
        int r = poll(&pfd, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return 0;
        if (r < 0)
            return -1;
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n <= 0)
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
 * m filled, 0 on timeout, -1 on close, -2 on -ERR (printed).
 */
static int read_msg(conn_t *c, msg_t *m, double deadline)
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
        if (!strncmp(line, "-ERR", 4)) {
            fprintf(stderr, "tide: server error: %s\n", line + 5);
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

static void msg_free(msg_t *m)
{
    free(m->mem);
    m->mem = NULL;
}

/* Connects and handshakes; prints why not and returns -1 when it cannot. */
static int cli_connect(conn_t *c, const char *server)
{
    char host[256], port[16], line[4200];
    struct addrinfo hints, *res = NULL;
    const char *colon = strrchr(server, ':');
    memset(c, 0, sizeof *c);
    c->fd = -1;
    if (!strncmp(server, "nats://", 7))
        server += 7;
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
    cJSON_Delete(info);
    const char hello[] = "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,"
                         "\"name\":\"tide-cli\",\"lang\":\"c\",\"version\":\"" TIDE_VERSION "\",\"protocol\":1}\r\n"
                         "PING\r\n";
    if (send_all(c, hello, sizeof hello - 1) < 0)
        return -1;
    for (;;) {
        int r = read_line(c, line, sizeof line, deadline);
        if (r != 1) {
            fprintf(stderr, "tide: no answer from %s:%s\n", host, port);
            return -1;
        }
        if (!strcmp(line, "PONG"))
            return 0;
        if (!strncmp(line, "-ERR", 4)) {
            fprintf(stderr, "tide: server refused the connection: %s\n", line + 5);
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
            fprintf(stderr, "tide: server error: %s\n", line + 5);
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
                    "       tide stats [--json] [-s SERVER]\n"
                    "SERVER is host:port (default 127.0.0.1:4222, or $TIDE_SERVER)\n");
}

static int is_status_503(const msg_t *m)
{
    return m->hdr && m->hdr_len >= 12 && !strncmp(m->hdr, "NATS/1.0 503", 12);
}

int cli_main(const char *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"server", required_argument, NULL, 's'}, {"header", required_argument, NULL, 'H'},
        {"reply", required_argument, NULL, 'r'},  {"queue", required_argument, NULL, 'q'},
        {"count", required_argument, NULL, 'n'},  {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *server = getenv("TIDE_SERVER") ? getenv("TIDE_SERVER") : "127.0.0.1:4222";
    const char *reply = NULL, *queue = NULL;
    char *headers[64];
    int nh = 0, json = 0, ch;
    long count = 0;
    double timeout = 5;
    conn_t c;
    int rc = 1;

    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":s:H:r:q:n:t:jh", longopts, NULL)) != -1) {
        switch (ch) {
        case 's': server = optarg; break;
        case 'H':
            if (nh == 64) {
                fprintf(stderr, "tide: too many headers\n");
                return 2;
            }
            headers[nh++] = optarg;
            break;
        case 'r': reply = optarg; break;
        case 'q': queue = optarg; break;
        case 'n': count = strtol(optarg, NULL, 10); break;
        case 't': timeout = strtod(optarg, NULL); break;
        case 'j': json = 1; break;
        case 'h': usage_clients(); return 0;
        case ':':
            fprintf(stderr, "tide %s: option '%s' needs a value\n", cmd, argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "tide %s: unknown option '%s'\n", cmd, argv[optind - 1]);
            usage_clients();
            return 2;
        }
    }
    int npos = argc - optind;
    char **pos = argv + optind;
    int need = !strcmp(cmd, "stats") ? 0 : 1;
    if (npos < need || npos > need + 1 || (!strcmp(cmd, "sub") && npos != 1)) {
        usage_clients();
        return 2;
    }
    const char *data = npos > 1 ? pos[1] : "";
    char *stdin_data = NULL;
    size_t dlen = strlen(data);
    if (!strcmp(data, "-")) { /* DATA "-": read it from standard input */
        size_t cap = 65536;
        stdin_data = malloc(cap);
        dlen = 0;
        for (size_t n; stdin_data && (n = fread(stdin_data + dlen, 1, cap - dlen, stdin)) > 0;) {
            dlen += n;
            if (dlen == cap) {
                char *nb = realloc(stdin_data, cap *= 2);
                if (!nb) {
                    free(stdin_data);
                    stdin_data = NULL;
                }
                stdin_data = nb;
            }
        }
        if (!stdin_data) {
            fprintf(stderr, "tide: out of memory reading standard input\n");
            return 1;
        }
        data = stdin_data;
    }
    size_t hlen = 0;
    char *hdr = header_block(headers, nh, &hlen);

    if (cli_connect(&c, server) < 0)
        goto out;
    if (!strcmp(cmd, "pub")) {
        if (publish(&c, pos[0], reply, hdr, hlen, data, dlen) < 0 || flush(&c) < 0)
            goto out;
        if (!json)
            printf("published %zu bytes to %s\n", dlen, pos[0]);
        rc = 0;
    } else if (!strcmp(cmd, "sub")) {
        char line[4200];
        snprintf(line, sizeof line, "SUB %s%s%s 1\r\n", pos[0], queue ? " " : "", queue ? queue : "");
        if (send_all(&c, line, strlen(line)) < 0 || flush(&c) < 0)
            goto out;
        if (!json)
            fprintf(stderr, "listening on %s%s%s (Ctrl-C to stop)\n", pos[0], queue ? " in queue " : "",
                    queue ? queue : "");
        for (long n = 1; !count || n <= count; n++) {
            msg_t m;
            int r = read_msg(&c, &m, -1);
            if (r != 1) {
                if (r == -1)
                    fprintf(stderr, "tide: the server closed the connection\n");
                goto out;
            }
            print_msg(&m, json, n);
            msg_free(&m);
        }
        rc = 0;
    } else if (!strcmp(cmd, "req") || !strcmp(cmd, "stats")) {
        char inbox[64], line[256];
        unsigned char rnd[8];
        evutil_secure_rng_get_bytes(rnd, sizeof rnd);
        snprintf(inbox, sizeof inbox, "_INBOX.%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
                 rnd[4], rnd[5], rnd[6], rnd[7]);
        snprintf(line, sizeof line, "SUB %s 1\r\nUNSUB 1 1\r\n", inbox);
        const char *subject = !strcmp(cmd, "stats") ? "$TIDE.ADMIN.STATS" : pos[0];
        if (send_all(&c, line, strlen(line)) < 0 ||
            publish(&c, subject, inbox, hdr, hlen, data, dlen) < 0)
            goto out;
        msg_t m;
        int r = read_msg(&c, &m, now_s() + timeout);
        if (r == 0) {
            fprintf(stderr, "tide: no reply from %s within %.1f s\n", subject, timeout);
            goto out;
        }
        if (r != 1)
            goto out;
        if (is_status_503(&m)) {
            fprintf(stderr, "tide: no responders for %s\n", subject);
            msg_free(&m);
            goto out;
        }
        if (!strcmp(cmd, "stats") && !json) {
            cJSON *o = cJSON_ParseWithLength(m.payload, m.payload_len);
            char *s = o ? cJSON_Print(o) : NULL;
            printf("%s\n", s ? s : m.payload);
            cJSON_free(s);
            cJSON_Delete(o);
        } else if (!strcmp(cmd, "stats")) {
            printf("%s\n", m.payload);
        } else {
            print_msg(&m, json, 1);
        }
        msg_free(&m);
        rc = 0;
    }
out:
    free(hdr);
    free(stdin_data);
    if (c.fd >= 0)
        close(c.fd);
    return rc;
}

/* ---- tide repl --connect ------------------------------------------------------ */

/* True when the buffer holds one whole frame (a line, and for MSG/HMSG its
 * payload and CRLF), so reading it cannot wait. */
static int frame_ready(const conn_t *c)
{
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
static int rc_done, rc_tty, rc_seq;

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
        int r = read_msg(c, &m, now_s());
        if (r != 1) {
            if (r < 0)
                rc_done = 1;
            break;
        }
        if (!strcmp(m.subject, "$TIDE.TRACE")) {
            rc_print(m.payload, m.payload_len);
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
        rc_done = 1;
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
            rc_done = 1;
        }
    }
    if (rc_tty)
        rl_set_prompt(rc_buf ? ">> " : "> ");
}

int cli_repl_connect(const char *server)
{
    conn_t c;
    char line[256], hist[1024] = "";
    unsigned char rnd[8];
    if (cli_connect(&c, server) < 0)
        return 1;
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
    }
    while (!rc_done) {
        struct pollfd pfd[2] = {{0, POLLIN, 0}, {c.fd, POLLIN, 0}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[1].revents) {
            if (fill(&c, now_s()) < 0) {
                fprintf(stderr, "\ntide: the node closed the connection\n");
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
    free(rc_buf);
    close(c.fd);
    return 0;
}
