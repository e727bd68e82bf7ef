/* proto.c - see proto.h. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "proto.h"

enum state {
    S_START,
    S_P,        /* 'P': PUB, PING or PONG */
    S_KEYWORD,  /* matching the rest of an operation name */
    S_AFTER_OP, /* operation name read: whitespace must follow */
    S_SPACE,    /* whitespace before the arguments */
    S_ARG,      /* arguments up to '\n' */
    S_EOL,      /* PING/PONG: only whitespace until '\n' */
    S_PAYLOAD,
    S_END_R,
    S_END_N,
    S_DEAD,
};

enum op { OP_NONE, OP_CONNECT, OP_PUB, OP_HPUB, OP_SUB, OP_UNSUB, OP_PING, OP_PONG };

static const char *const op_names[] = {"", "CONNECT", "PUB", "HPUB", "SUB", "UNSUB", "PING", "PONG"};

/* Arguments of a control line, at most this many. */
#define MAX_FIELDS 5

/* Payload buffers larger than this are released after each message so an
 * idle connection does not keep a megabyte around. */
#define KEEP_MSGBUF 65536

void proto_init(proto_parser_t *p, size_t max_control_line, size_t max_payload)
{
    memset(p, 0, sizeof *p);
    p->state = S_START;
    p->max_control_line = max_control_line ? max_control_line : PROTO_MAX_CONTROL_LINE;
    p->max_payload = max_payload ? max_payload : PROTO_MAX_PAYLOAD;
}

void proto_free(proto_parser_t *p)
{
    free(p->argbuf);
    free(p->msgbuf);
    p->argbuf = p->msgbuf = NULL;
    p->arg_cap = p->msg_cap = 0;
}

const char *proto_strerror(int status)
{
    switch (status) {
    case PROTO_ERR_UNKNOWN_OP:
        return "Unknown Protocol Operation";
    case PROTO_ERR_CONTROL_LINE:
        return "Maximum Control Line Exceeded";
    case PROTO_ERR_MAX_PAYLOAD:
        return "Maximum Payload Violation";
    case PROTO_ERR_ARGS:
        return "Parser Error: malformed arguments";
    case PROTO_ERR_PAYLOAD_END:
        return "Parser Error: payload must end with CRLF";
    default:
        return "Parser Error";
    }
}

static int fail(proto_parser_t *p, int status, const char *errtext, const char *what, const char *at,
                size_t avail)
{
    char snip[64];
    log_sanitize(snip, sizeof snip, at, avail < 32 ? avail : 32);
    snprintf(p->err, sizeof p->err, "%s (near '%s')", what, snip);
    p->errtext = errtext ? errtext : proto_strerror(status);
    p->state = S_DEAD;
    return status;
}

static int reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 256;
    while (nc < need)
        nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb)
        return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

static int arg_append(proto_parser_t *p, const char *s, size_t n)
{
    if (reserve(&p->argbuf, &p->arg_cap, p->arg_len + n) < 0)
        return -1;
    memcpy(p->argbuf + p->arg_len, s, n);
    p->arg_len += n;
    return 0;
}

/* Splits line into whitespace-separated fields; returns the count, or
 * MAX_FIELDS + 1 when there are more. */
static int split(const char *line, size_t len, const char **f, size_t *fl)
{
    int n = 0;
    size_t i = 0;
    while (i < len) {
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i == len)
            break;
        size_t start = i;
        while (i < len && line[i] != ' ' && line[i] != '\t')
            i++;
        if (n == MAX_FIELDS)
            return MAX_FIELDS + 1;
        f[n] = line + start;
        fl[n] = i - start;
        n++;
    }
    return n;
}

/* Parses a non-negative decimal; returns -1 when it is not one (or overflows). */
static int parse_size(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 19)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

static const char ERR_PUB[] = "Parser Error: PUB takes <subject> [reply-to] <#bytes>";
static const char ERR_HPUB[] = "Parser Error: HPUB takes <subject> [reply-to] <#header bytes> <#total bytes>";
static const char ERR_SUB[] = "Parser Error: SUB takes <subject> [queue group] <sid>";
static const char ERR_UNSUB[] = "Parser Error: UNSUB takes <sid> [max-msgs]";

/* Acts on a complete control line.  in_argbuf: line points into p->argbuf. */
static int process_line(proto_parser_t *p, const char *line, size_t len, int in_argbuf,
                        const proto_handler_t *h, void *ctx)
{
    const char *f[MAX_FIELDS];
    size_t fl[MAX_FIELDS];
    uint64_t a, b;
    int n;

    if (p->op == OP_CONNECT) {
        p->state = S_START;
        if (h->on_connect && h->on_connect(ctx, line, len))
            return PROTO_STOP;
        return PROTO_OK;
    }
    n = split(line, len, f, fl);
    switch (p->op) {
    case OP_PUB:
        if (n < 2 || n > 3 || parse_size(f[n - 1], fl[n - 1], &a) < 0)
            return fail(p, PROTO_ERR_ARGS, ERR_PUB, "bad PUB arguments", line, len);
        if (a > p->max_payload)
            return fail(p, PROTO_ERR_MAX_PAYLOAD, NULL, "payload over max_payload", line, len);
        p->is_hpub = 0;
        p->hdr_size = 0;
        p->total_size = (size_t)a;
        break;
    case OP_HPUB:
        if (n < 3 || n > 4 || parse_size(f[n - 2], fl[n - 2], &a) < 0 ||
            parse_size(f[n - 1], fl[n - 1], &b) < 0 || a > b)
            return fail(p, PROTO_ERR_ARGS, ERR_HPUB, "bad HPUB arguments", line, len);
        if (b > p->max_payload)
            return fail(p, PROTO_ERR_MAX_PAYLOAD, NULL, "payload over max_payload", line, len);
        p->is_hpub = 1;
        p->hdr_size = (size_t)a;
        p->total_size = (size_t)b;
        n--; /* treat like PUB below: the header size is not a subject */
        break;
    case OP_SUB:
        if (n < 2 || n > 3)
            return fail(p, PROTO_ERR_ARGS, ERR_SUB, "bad SUB arguments", line, len);
        p->state = S_START;
        if (h->on_sub && h->on_sub(ctx, f[0], fl[0], n == 3 ? f[1] : NULL, n == 3 ? fl[1] : 0,
                                   f[n - 1], fl[n - 1]))
            return PROTO_STOP;
        return PROTO_OK;
    case OP_UNSUB:
        a = 0;
        if (n < 1 || n > 2 || (n == 2 && parse_size(f[1], fl[1], &a) < 0))
            return fail(p, PROTO_ERR_ARGS, ERR_UNSUB, "bad UNSUB arguments", line, len);
        p->state = S_START;
        if (h->on_unsub && h->on_unsub(ctx, f[0], fl[0], a))
            return PROTO_STOP;
        return PROTO_OK;
    default:
        return fail(p, PROTO_ERR_UNKNOWN_OP, NULL, "internal: no operation", line, len);
    }
    /* PUB / HPUB: n is 2 (no reply) or 3 (with reply) here. */
    p->subject = f[0];
    p->subject_len = fl[0];
    p->reply = n == 3 ? f[1] : NULL;
    p->reply_len = n == 3 ? fl[1] : 0;
    p->args_copied = in_argbuf;
    p->msg_have = 0;
    p->msg_copied = 0;
    p->payload_start = NULL;
    p->state = S_PAYLOAD;
    return PROTO_OK;
}

static void reset_message(proto_parser_t *p)
{
    p->state = S_START;
    p->arg_len = 0;
    p->args_copied = 0;
    p->msg_copied = 0;
    p->msg_have = 0;
    p->payload_start = NULL;
    if (p->msg_cap > KEEP_MSGBUF) {
        free(p->msgbuf);
        p->msgbuf = NULL;
        p->msg_cap = 0;
    }
}

/* At the end of a feed, copies what the pending message still points at in
 * the caller's buffer, which is about to go away. */
static int save_pending(proto_parser_t *p)
{
    if (!p->args_copied) {
        size_t sl = p->subject_len, rl = p->reply_len;
        p->arg_len = 0;
        if (reserve(&p->argbuf, &p->arg_cap, sl + rl + 1) < 0)
            return -1;
        memcpy(p->argbuf, p->subject, sl);
        if (p->reply)
            memcpy(p->argbuf + sl, p->reply, rl);
        p->subject = p->argbuf;
        p->reply = p->reply ? p->argbuf + sl : NULL;
        p->arg_len = sl + rl;
        p->args_copied = 1;
    }
    if (!p->msg_copied) {
        if (reserve(&p->msgbuf, &p->msg_cap, p->total_size ? p->total_size : 1) < 0)
            return -1;
        if (p->msg_have)
            memcpy(p->msgbuf, p->payload_start, p->msg_have);
        p->msg_copied = 1;
    }
    return 0;
}

static int start_op(proto_parser_t *p, int op, int pos)
{
    p->op = op;
    p->kw_pos = pos;
    p->state = S_KEYWORD;
    return 0;
}

int proto_parse(proto_parser_t *p, const char *buf, size_t len, const proto_handler_t *h, void *ctx)
{
    size_t i = 0;
    int rc;

    if (p->state == S_DEAD)
        return PROTO_ERR_UNKNOWN_OP;
    while (i < len) {
        char c = buf[i];
        switch (p->state) {
        case S_START:
            switch (toupper((unsigned char)c)) {
            case 'P': p->state = S_P; break;
            case 'C': start_op(p, OP_CONNECT, 1); break;
            case 'H': start_op(p, OP_HPUB, 1); break;
            case 'S': start_op(p, OP_SUB, 1); break;
            case 'U': start_op(p, OP_UNSUB, 1); break;
            default:
                return fail(p, PROTO_ERR_UNKNOWN_OP, NULL, "unknown operation", buf + i, len - i);
            }
            i++;
            break;
        case S_P:
            switch (toupper((unsigned char)c)) {
            case 'U': start_op(p, OP_PUB, 2); break;
            case 'I': start_op(p, OP_PING, 2); break;
            case 'O': start_op(p, OP_PONG, 2); break;
            default:
                return fail(p, PROTO_ERR_UNKNOWN_OP, NULL, "unknown operation", buf + i, len - i);
            }
            i++;
            break;
        case S_KEYWORD: {
            const char *kw = op_names[p->op];
            if (toupper((unsigned char)c) != kw[p->kw_pos])
                return fail(p, PROTO_ERR_UNKNOWN_OP, NULL, "unknown operation", buf + i, len - i);
            p->kw_pos++;
            if (kw[p->kw_pos] == '\0')
                p->state = (p->op == OP_PING || p->op == OP_PONG) ? S_EOL : S_AFTER_OP;
            i++;
            break;
        }
        case S_AFTER_OP:
            if (c == ' ' || c == '\t') {
                p->state = S_SPACE;
                i++;
            } else if (c == '\r' || c == '\n') {
                return fail(p, PROTO_ERR_ARGS,
                            p->op == OP_PUB ? ERR_PUB : p->op == OP_HPUB ? ERR_HPUB
                            : p->op == OP_SUB ? ERR_SUB : p->op == OP_UNSUB ? ERR_UNSUB
                            : "Parser Error: CONNECT takes a JSON object",
                            "missing arguments", buf + i, len - i);
            } else {
                return fail(p, PROTO_ERR_UNKNOWN_OP, NULL, "unknown operation", buf + i, len - i);
            }
            break;
        case S_SPACE:
            if (c == ' ' || c == '\t') {
                i++;
                break;
            }
            p->state = S_ARG;
            p->arg_len = 0;
            p->arg_in_buf = 1;
            p->arg_start = i;
            /* fall through: this byte starts the arguments */
            /* FALLTHROUGH */
        case S_ARG: {
            size_t seg = p->arg_in_buf ? p->arg_start : i;
            const char *nl = memchr(buf + i, '\n', len - i);
            if (!nl) {
                /* +1: the line may end in a CR that does not count. */
                if (p->arg_len + (len - seg) > p->max_control_line + 1)
                    return fail(p, PROTO_ERR_CONTROL_LINE, NULL, "control line too long", buf + seg,
                                len - seg);
                if (arg_append(p, buf + seg, len - seg) < 0)
                    return fail(p, PROTO_ERR_CONTROL_LINE, NULL, "out of memory", buf, 0);
                p->arg_in_buf = 0;
                i = len;
                break;
            }
            size_t end = (size_t)(nl - buf);
            const char *line;
            size_t llen;
            int in_argbuf = p->arg_len > 0;
            if (in_argbuf) {
                if (p->arg_len + (end - seg) > p->max_control_line + 1)
                    return fail(p, PROTO_ERR_CONTROL_LINE, NULL, "control line too long", p->argbuf,
                                p->arg_len);
                if (arg_append(p, buf + seg, end - seg) < 0)
                    return fail(p, PROTO_ERR_CONTROL_LINE, NULL, "out of memory", buf, 0);
                line = p->argbuf;
                llen = p->arg_len;
            } else {
                line = buf + seg;
                llen = end - seg;
            }
            if (llen && line[llen - 1] == '\r')
                llen--;
            if (llen > p->max_control_line)
                return fail(p, PROTO_ERR_CONTROL_LINE, NULL, "control line too long", line, llen);
            p->arg_in_buf = 0;
            i = end + 1;
            rc = process_line(p, line, llen, in_argbuf, h, ctx);
            if (rc == PROTO_STOP) {
                p->stopped_at = i;
                if (p->state == S_START)
                    p->arg_len = 0;
            }
            if (rc != PROTO_OK)
                return rc;
            if (p->state == S_START)
                p->arg_len = 0;
            break;
        }
        case S_EOL:
            if (c == '\n') {
                int op = p->op;
                p->state = S_START;
                i++;
                if (op == OP_PING ? (h->on_ping && h->on_ping(ctx)) : (h->on_pong && h->on_pong(ctx))) {
                    p->stopped_at = i;
                    return PROTO_STOP;
                }
            } else if (c == '\r' || c == ' ' || c == '\t') {
                i++;
            } else {
                return fail(p, PROTO_ERR_UNKNOWN_OP, NULL, "unknown operation", buf + i, len - i);
            }
            break;
        case S_PAYLOAD: {
            size_t need = p->total_size - p->msg_have;
            size_t take = need < len - i ? need : len - i;
            if (p->msg_copied)
                memcpy(p->msgbuf + p->msg_have, buf + i, take);
            else if (p->msg_have == 0)
                p->payload_start = buf + i;
            p->msg_have += take;
            i += take;
            if (p->msg_have == p->total_size)
                p->state = S_END_R;
            break;
        }
        case S_END_R:
            if (c != '\r')
                return fail(p, PROTO_ERR_PAYLOAD_END, NULL, "payload longer than its size", buf + i,
                            len - i);
            p->state = S_END_N;
            i++;
            break;
        case S_END_N: {
            if (c != '\n')
                return fail(p, PROTO_ERR_PAYLOAD_END, NULL, "payload not followed by CRLF", buf + i,
                            len - i);
            i++;
            proto_msg_t m;
            const char *data = p->msg_copied ? p->msgbuf : p->payload_start;
            if (!data)
                data = ""; /* empty payload */
            m.subject = p->subject;
            m.subject_len = p->subject_len;
            m.reply = p->reply;
            m.reply_len = p->reply_len;
            m.hdr = p->is_hpub ? data : NULL;
            m.hdr_len = p->hdr_size;
            m.payload = data + p->hdr_size;
            m.payload_len = p->total_size - p->hdr_size;
            rc = h->on_pub ? h->on_pub(ctx, &m) : 0;
            reset_message(p);
            if (rc) {
                p->stopped_at = i;
                return PROTO_STOP;
            }
            break;
        }
        default:
            return PROTO_ERR_UNKNOWN_OP;
        }
    }
    if ((p->state == S_PAYLOAD || p->state == S_END_R || p->state == S_END_N) && save_pending(p) < 0)
        return fail(p, PROTO_ERR_MAX_PAYLOAD, NULL, "out of memory for payload", buf, 0);
    return PROTO_OK;
}

/* ---- header blocks ---------------------------------------------------------- */

const char *proto_header_find(const char *hdr, size_t len, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *p = hdr, *end = hdr + len;
    const char *eol = memchr(p, '\n', len);
    if (!hdr || !eol)
        return NULL;
    p = eol + 1; /* skip the NATS/1.0 status line */
    while (p < end) {
        eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon && (size_t)(colon - p) == nlen && strncasecmp(p, name, nlen) == 0) {
            const char *v = colon + 1, *ve = le;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        if (!eol)
            break;
        p = eol + 1;
    }
    return NULL;
}

void proto_header_each(const char *hdr, size_t len,
                       void (*fn)(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen),
                       void *ctx)
{
    const char *end = hdr + len;
    const char *p = hdr && len ? memchr(hdr, '\n', len) : NULL;
    if (!p)
        return;
    for (p++; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon) {
            const char *v = colon + 1, *ve = le;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            fn(ctx, p, (size_t)(colon - p), v, (size_t)(ve - v));
        }
        if (!eol)
            break;
        p = eol + 1;
    }
}
