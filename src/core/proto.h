/*
 * proto.h - the NATS client protocol parser (client -> server direction).
 *
 * A byte state machine whose state lives in proto_parser_t, so input may be
 * fed in pieces of any size: a command split over many reads, or many
 * commands in one read.  Arguments and payloads are handed to the callbacks
 * as pointers into the caller's buffer whenever they lie whole inside it;
 * only what spans two feeds is copied (the control line into argbuf, the
 * payload into msgbuf).
 *
 * Commands: CONNECT, PUB, HPUB, SUB, UNSUB, PING, PONG (operation names are
 * case-insensitive; lines end in CRLF or LF).
 */
#ifndef TIDE_PROTO_H
#define TIDE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_MAX_CONTROL_LINE 4096
#define PROTO_MAX_PAYLOAD (1024 * 1024)

enum proto_status {
    PROTO_OK = 0,
    PROTO_STOP = 1,              /* a callback asked to stop */
    PROTO_ERR_UNKNOWN_OP = -1,   /* 'Unknown Protocol Operation' */
    PROTO_ERR_CONTROL_LINE = -2, /* 'Maximum Control Line Exceeded' */
    PROTO_ERR_MAX_PAYLOAD = -3,  /* 'Maximum Payload Violation' */
    PROTO_ERR_ARGS = -4,         /* malformed arguments of a known command */
    PROTO_ERR_PAYLOAD_END = -5,  /* payload not followed by CRLF */
};

/* A message as published (PUB or HPUB). */
typedef struct proto_msg {
    const char *subject;
    size_t subject_len;
    const char *reply; /* NULL when none */
    size_t reply_len;
    const char *hdr; /* header block of HPUB ("NATS/1.0..."), NULL for PUB */
    size_t hdr_len;
    const char *payload; /* the body after the headers */
    size_t payload_len;
} proto_msg_t;

/*
 * Callbacks.  Pointers passed in are valid only during the call.  A callback
 * returns 0 to go on, non-zero to stop parsing (proto_parse then returns
 * PROTO_STOP and sets stopped_at; the rest of that feed may be parsed
 * later, from stopped_at on, unless the connection is closing).  Any callback may be NULL.
 */
typedef struct proto_handler {
    int (*on_connect)(void *ctx, const char *json, size_t len);
    int (*on_pub)(void *ctx, const proto_msg_t *msg);
    int (*on_sub)(void *ctx, const char *subject, size_t subject_len, const char *queue,
                  size_t queue_len, const char *sid, size_t sid_len);
    /* max_msgs is 0 when not given. */
    int (*on_unsub)(void *ctx, const char *sid, size_t sid_len, uint64_t max_msgs);
    int (*on_ping)(void *ctx);
    int (*on_pong)(void *ctx);
} proto_handler_t;

typedef struct proto_parser {
    int state;
    int op;      /* command being read */
    int kw_pos;  /* position in its name */
    size_t max_control_line;
    size_t max_payload;

    /* Control line being read when it spans feeds. */
    char *argbuf;
    size_t arg_len, arg_cap;
    int arg_in_buf;   /* the current line started in this feed at arg_start */
    size_t arg_start;

    /* Pending PUB/HPUB, between its control line and its payload's end. */
    int is_hpub;
    const char *subject, *reply;
    size_t subject_len, reply_len;
    size_t hdr_size, total_size;
    int args_copied; /* subject/reply live in argbuf */
    char *msgbuf;
    size_t msg_have, msg_cap;
    int msg_copied;  /* payload lives in msgbuf */
    const char *payload_start; /* payload's start in the current feed when not copied */

    /* After an error: the -ERR text for the client (static, no quotes) and
     * a longer description with a sanitized snippet for the log. */
    const char *errtext;
    char err[200];

    /* After PROTO_STOP: the bytes of that feed consumed, up to and with the
     * command whose callback stopped (the rest is still to be parsed). */
    size_t stopped_at;
} proto_parser_t;

/* Sets up a parser with the given limits (0 = the defaults above). */
void proto_init(proto_parser_t *p, size_t max_control_line, size_t max_payload);

/* Frees what the parser allocated.  The struct itself is the caller's. */
void proto_free(proto_parser_t *p);

/*
 * Parses len bytes.  Returns PROTO_OK when all were consumed, PROTO_STOP
 * when a callback stopped it, or a negative proto_status on a protocol
 * error (p->err describes it; the parser is then dead).
 */
int proto_parse(proto_parser_t *p, const char *buf, size_t len, const proto_handler_t *h, void *ctx);

/* The -ERR text NATS clients know for a negative status, without quotes.
 * After proto_parse failed, p->errtext may be more specific. */
const char *proto_strerror(int status);

/* Finds header `name` (case-insensitive) in a NATS header block; returns a
 * pointer to its first value (trimmed) and sets *vlen, or NULL. */
const char *proto_header_find(const char *hdr, size_t hdr_len, const char *name, size_t *vlen);

/* Calls fn(ctx, name, nlen, value, vlen) for each "Name: value" line of a
 * NATS header block, after its status line, in order (values trimmed). */
void proto_header_each(const char *hdr, size_t len,
                       void (*fn)(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen),
                       void *ctx);

#endif
