/* client.c - see client.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include "client.h"
#include "log.h"
#include "util.h"
#include "subject.h"
#include "tls.h"

/* Bytes one read or write call may move.  libevent's default is 16 KiB,
 * which costs a syscall per 16 KiB under load. */
#define CLIENT_IO_CHUNK (256 * 1024)

/* Bytes of output a TLS connection's records are made of, at least (a
 * TLS record holds up to 16 KiB). */
#define TLS_OUTPUT_PIECE (16 * 1024)

/* Bytes of output one new piece of a client's buffer holds at most.  A
 * piece is as big as what is already queued (up to this), so a queue that
 * builds up during a fan-out takes a few allocations, not one per handful
 * of messages.  libevent rounds a piece and its header up to a power of
 * two: this one is a 64 KiB block. */
#define OUTPUT_PIECE_MAX (60 * 1024)

/* Bytes one read may take (on_readable, and a TLS bufferevent's reads). */
#define READ_CHUNK (64 * 1024)

static void on_readable(evutil_socket_t fd, short what, void *arg);
static void on_tls_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

/* Output was queued for c: have the loop write it (server_want_flush),
 * unless the write event already waits for the socket. */
static void output_queued(client_t *c)
{
    if (c->tls) /* a TLS bufferevent writes by itself, on its write event */
        return;
    if (!(bufferevent_get_enabled(c->bev) & EV_WRITE))
        server_want_flush(c->srv, c);
}
static void on_ping_timer(evutil_socket_t fd, short what, void *arg);

static void send_raw(client_t *c, const char *s, size_t n)
{
    if (!c->bev) /* a TLS handshake under way: nothing may go out in the clear */
        return;
    if (evbuffer_add(bufferevent_get_output(c->bev), s, n) < 0)
        client_close(c, CLIENT_CLOSE_NOW, "out of memory");
    else
        output_queued(c);
}

#define SEND_LITERAL(c, s) send_raw((c), (s), sizeof(s) - 1)

void client_send_err(client_t *c, const char *msg)
{
    char line[512];
    int n = snprintf(line, sizeof line, "-ERR '%s'\r\n", msg);
    if (n > 0)
        send_raw(c, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

client_t *client_new(server_t *srv, int fd, const char *ip, int port)
{
    const server_opts_t *o = server_get_opts(srv);
    client_t *c = calloc(1, sizeof *c);
    if (!c) {
        evutil_closesocket(fd);
        return NULL;
    }
    c->srv = srv;
    c->output = server_output(srv);
    c->flags = 0;
    snprintf(c->ip, sizeof c->ip, "%s", ip);
    c->port = port;
    dict_init(&c->subs);
    proto_init(&c->parser, o->max_control_line, o->max_payload);
    c->in = evbuffer_new();
    if (!c->in)
        goto fail;
    if (server_tls(srv)) {
        if (client_tls_begin(c, server_tls(srv), fd) < 0)
            goto fail;
        fd = -1; /* c->tls has it */
    } else {
        c->bev = bufferevent_socket_new(server_base(srv), fd, BEV_OPT_CLOSE_ON_FREE);
        if (!c->bev)
            goto fail;
        fd = -1;
        bufferevent_set_max_single_write(c->bev, CLIENT_IO_CHUNK);
        bufferevent_setcb(c->bev, NULL, on_write, on_event, c);
        c->read_ev = event_new(server_base(srv), bufferevent_getfd(c->bev), EV_READ | EV_PERSIST, on_readable, c);
        if (!c->read_ev)
            goto fail;
    }
    if (o->ping_interval > 0) {
        struct timeval tv = util_timeval(o->ping_interval);
        c->ping_timer = event_new(server_base(srv), -1, EV_PERSIST, on_ping_timer, c);
        if (!c->ping_timer)
            goto fail;
        event_add(c->ping_timer, &tv);
    }
    return c;
fail:
    if (fd >= 0)
        evutil_closesocket(fd);
    if (c->ping_timer)
        event_free(c->ping_timer);
    if (c->read_ev)
        event_free(c->read_ev);
    if (c->in)
        evbuffer_free(c->in);
    if (c->bev)
        bufferevent_free(c->bev);
    client_tls_free(c);
    proto_free(&c->parser);
    free(c);
    return NULL;
}

void client_start(client_t *c)
{
    char info[1024];
    if (client_auth_nonce(c) < 0) {
        client_close(c, CLIENT_CLOSE_NOW, "no random bytes for a nonce");
        return;
    }
    server_build_info(c->srv, c, info, sizeof info);
    if (c->tls) {
        client_tls_start(c, info, strlen(info));
        return;
    }
    send_raw(c, info, strlen(info));
    if (client_auth_start(c) < 0) {
        client_close(c, CLIENT_CLOSE_FLUSH, "out of memory");
        return;
    }
    event_add(c->read_ev, NULL); /* writes: client_flush */
}

void client_tls_opened(client_t *c, struct bufferevent *bev)
{
    c->bev = bev;
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    bufferevent_set_max_single_write(bev, CLIENT_IO_CHUNK);
    bufferevent_set_max_single_read(bev, READ_CHUNK);
    /* Without a high watermark an OpenSSL bufferevent reads 4 KB at a
     * time; with one it reads up to it (on_tls_read empties the input, so
     * the watermark never stops reading). */
    bufferevent_setwatermark(bev, EV_READ, 0, READ_CHUNK);
    bufferevent_setcb(bev, on_tls_read, NULL, on_event, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    /* The time to authenticate starts now, as on a plain connection; the
     * handshake had a deadline of its own. */
    if (client_auth_start(c) < 0)
        client_close(c, CLIENT_CLOSE_FLUSH, "out of memory");
}

static void sub_free(void *p)
{
    sub_t *s = p;
    free(s->subject);
    free(s->queue);
    free(s->sid);
    free(s);
}

void client_remove_sub(client_t *c, sub_t *s)
{
    server_note_interest(c->srv, s, 0);
    dict_remove(&c->subs, s->sid, s->sid_len);
    sublist_remove(server_sublist(c->srv), s);
    sub_free(s);
}

size_t client_drop_subs(client_t *c, size_t max)
{
    dict_t *d = &c->subs;
    for (; max > 0 && d->count > 0; max--) {
        /* Every slot before the cursor is empty, so removing the entry at
         * the cursor can only pull later entries back into it (the dict's
         * backward shift stops at the first empty slot): one pass over the
         * slots finds them all.  The wrap only makes that certain. */
        while (!d->slots[c->subs_drop_at].key)
            c->subs_drop_at = (c->subs_drop_at + 1) & (d->cap - 1);
        client_remove_sub(c, d->slots[c->subs_drop_at].val);
    }
    return d->count;
}

void client_free(client_t *c)
{
    server_forget_flush(c->srv, c);
    sublist_t *sl = server_sublist(c->srv);
    for (size_t i = 0; i < c->subs.cap; i++)
        if (c->subs.slots[i].key) {
            server_note_interest(c->srv, c->subs.slots[i].val, 0);
            sublist_remove(sl, c->subs.slots[i].val);
        }
    dict_clear(&c->subs, sub_free);
    client_auth_free(c);
    proto_free(&c->parser);
    if (c->ping_timer)
        event_free(c->ping_timer);
    if (c->read_ev)
        event_free(c->read_ev);
    if (c->in)
        evbuffer_free(c->in);
    if (c->bev)
        bufferevent_free(c->bev);
    client_tls_free(c);
    free(c);
}

/* Writes what the socket takes of c's output now.  A bufferevent keeps the
 * front of its output frozen (only its own write callback drains it), so
 * it is thawed for the write, as that callback does.  -1 on a socket error
 * (errno), else 0. */
static int write_now(client_t *c, struct evbuffer *out)
{
    evbuffer_unfreeze(out, 1);
    errno = 0;
    int n = evbuffer_write(out, bufferevent_getfd(c->bev));
    int e = errno;
    evbuffer_freeze(out, 1);
    errno = e;
    return n < 0 && e != EAGAIN && e != EINTR ? -1 : 0;
}

void client_flush(client_t *c)
{
    if (c->flags & CLIENT_CLOSING)
        return; /* a closing client's output goes by the write event (client_close) */
    if (c->tls)
        return; /* its bufferevent writes by itself */
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) == 0)
        return;
    if (write_now(c, out) < 0) {
        client_close(c, CLIENT_CLOSE_NOW, "socket error");
        return;
    }
    if (evbuffer_get_length(out) > 0)
        bufferevent_enable(c->bev, EV_WRITE); /* the rest once the socket takes it */
}

/* The write event wrote everything: back to writing from client_flush. */
static void on_write(struct bufferevent *bev, void *arg)
{
    (void)arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_disable(bev, EV_WRITE);
}

static void on_drained(struct bufferevent *bev, void *arg)
{
    client_t *c = arg;
    (void)bev;
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        server_schedule_free(c->srv, c);
}

void client_close(client_t *c, int how, const char *reason)
{
    if (c->flags & CLIENT_CLOSING)
        return;
    c->flags |= CLIENT_CLOSING;
    log_debug("cid:%llu %s:%d closing: %s", (unsigned long long)c->id, c->ip, c->port,
              reason ? reason : "client closed");
    client_input_pause(c);
    if (c->ping_timer)
        event_del(c->ping_timer);
    if (how == CLIENT_CLOSE_FLUSH && c->bev && evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
        const server_opts_t *o = server_get_opts(c->srv);
        struct timeval tv = util_timeval(o->write_deadline);
        /* The write callback fires once the output drains; a stalled reader
         * hits the write timeout instead (on_event). */
        bufferevent_setcb(c->bev, NULL, on_drained, on_event, c);
        bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
        bufferevent_set_timeouts(c->bev, NULL, &tv);
        bufferevent_enable(c->bev, EV_WRITE);
        return;
    }
    server_schedule_free(c->srv, c);
}

static void protocol_error(client_t *c, int status)
{
    const char *text = c->parser.errtext ? c->parser.errtext : proto_strerror(status);
    server_stats_mut(c->srv)->protocol_errors++;
    log_info("cid:%llu %s:%d protocol error: %s", (unsigned long long)c->id, c->ip, c->port,
             c->parser.err);
    client_send_err(c, text);
    client_close(c, CLIENT_CLOSE_FLUSH, text);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    client_t *c = arg;
    (void)bev;
    if (what & BEV_EVENT_TIMEOUT) {
        log_debug("cid:%llu write deadline passed while closing", (unsigned long long)c->id);
        server_schedule_free(c->srv, c);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (c->flags & CLIENT_CLOSING) {
            server_schedule_free(c->srv, c);
            return;
        }
        client_close(c, CLIENT_CLOSE_NOW, (what & BEV_EVENT_EOF) ? "client closed" : "socket error");
    }
}

static void on_ping_timer(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    const server_opts_t *o = server_get_opts(c->srv);
    (void)fd;
    (void)what;
    if (c->flags & CLIENT_CLOSING)
        return;
    if (c->flags & CLIENT_ACTIVE) {
        /* It spoke since the last tick: alive, no need to ask. */
        c->flags &= ~CLIENT_ACTIVE;
        c->pings_out = 0;
        return;
    }
    if (c->pings_out >= o->max_pings_out) {
        server_stats_mut(c->srv)->stale_connections++;
        log_info("cid:%llu %s:%d stale connection (%d pings unanswered)", (unsigned long long)c->id,
                 c->ip, c->port, c->pings_out);
        client_send_err(c, "Stale Connection");
        client_close(c, CLIENT_CLOSE_FLUSH, "stale connection");
        return;
    }
    c->pings_out++;
    SEND_LITERAL(c, "PING\r\n");
}

/* ---- protocol callbacks ------------------------------------------------ */

static void copy_json_string(const cJSON *obj, const char *key, char *out, size_t outsz)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsString(v) && v->valuestring)
        snprintf(out, outsz, "%s", v->valuestring);
}

static void set_flag(client_t *c, const cJSON *obj, const char *key, int flag, int invert)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsBool(v))
        return;
    int on = cJSON_IsTrue(v) ? 1 : 0;
    if (invert)
        on = !on;
    if (on)
        c->flags |= flag;
    else
        c->flags &= ~flag;
}

static int on_connect(void *ctx, const char *json, size_t len)
{
    client_t *c = ctx;
    cJSON *obj = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(obj)) {
        char snip[64];
        cJSON_Delete(obj);
        log_info("cid:%llu invalid CONNECT JSON: '%s'", (unsigned long long)c->id,
                 log_sanitize(snip, sizeof snip, json, len < 40 ? len : 40));
        server_stats_mut(c->srv)->protocol_errors++;
        client_send_err(c, "Invalid CONNECT JSON");
        client_close(c, CLIENT_CLOSE_FLUSH, "invalid CONNECT");
        return 1;
    }
    set_flag(c, obj, "verbose", CLIENT_VERBOSE, 0);
    set_flag(c, obj, "pedantic", CLIENT_PEDANTIC, 0);
    set_flag(c, obj, "echo", CLIENT_NO_ECHO, 1);
    set_flag(c, obj, "headers", CLIENT_HEADERS, 0);
    set_flag(c, obj, "no_responders", CLIENT_NO_RESPONDERS, 0);
    copy_json_string(obj, "name", c->name, sizeof c->name);
    copy_json_string(obj, "lang", c->lang, sizeof c->lang);
    copy_json_string(obj, "version", c->version, sizeof c->version);
    log_debug("cid:%llu CONNECT name='%s' lang='%s' version='%s' flags=%#x", (unsigned long long)c->id,
              c->name, c->lang, c->version, (unsigned)c->flags);
    /* Credentials (user, pass, auth_token, nkey): checked when the server
     * has auth, else ignored. */
    int stop = client_auth_connect(c, obj);
    cJSON_Delete(obj);
    if (stop)
        return 1; /* refused, or held until its password is checked */
    client_connect_done(c, 0);
    return 0;
}

static void parse_input(client_t *c);

void client_connect_done(client_t *c, int held)
{
    c->flags |= CLIENT_CONNECTED;
    if (c->flags & CLIENT_VERBOSE)
        SEND_LITERAL(c, "+OK\r\n");
    if (held && !(c->flags & CLIENT_CLOSING)) {
        client_input_resume(c);
        parse_input(c); /* what came after the CONNECT while it was held */
    }
}

void client_input_pause(client_t *c)
{
    if (c->read_ev)
        event_del(c->read_ev);
    else if (c->bev)
        bufferevent_disable(c->bev, EV_READ);
}

void client_input_resume(client_t *c)
{
    if (c->read_ev)
        event_add(c->read_ev, NULL);
    else if (c->bev)
        bufferevent_enable(c->bev, EV_READ);
}

/* With auth, nothing but a CONNECT may come first (client_auth_before_connect). */
#define AUTH_FIRST(c) \
    (!((c)->flags & CLIENT_CONNECTED) && server_auth((c)->srv) && client_auth_before_connect(c))

/* JetStream clients put a consumer's filter, wildcards and all, at the
 * end of $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>; nats-server
 * takes wildcards in a published subject, tide only there. */
static int consumer_create_subject(const proto_msg_t *m)
{
    static const char pre[] = "$JS.API.CONSUMER.CREATE.";
    return m->subject_len > sizeof pre - 1 && !memcmp(m->subject, pre, sizeof pre - 1) &&
           subject_valid_pattern(m->subject, m->subject_len);
}

static int on_pub(void *ctx, const proto_msg_t *m)
{
    client_t *c = ctx;
    if (AUTH_FIRST(c))
        return 1;
    if ((!subject_valid_literal(m->subject, m->subject_len) && !consumer_create_subject(m)) ||
        (m->reply && !subject_valid_literal(m->reply, m->reply_len))) {
        client_send_err(c, "Invalid Publish Subject");
        return 0;
    }
    if (!client_auth_publish(c, m))
        return 0; /* not routed, stored nor seen by a rule; the connection stays */
    c->in_msgs++;
    server_publish(c->srv, c, m);
    if (c->flags & CLIENT_VERBOSE)
        SEND_LITERAL(c, "+OK\r\n");
    return (c->flags & CLIENT_CLOSING) ? 1 : 0;
}

static int on_sub(void *ctx, const char *subject, size_t subject_len, const char *queue, size_t queue_len,
                  const char *sid, size_t sid_len)
{
    client_t *c = ctx;
    sub_t *s = NULL;
    int flags = 0;
    size_t max_subs = server_get_opts(c->srv)->max_subs;
    if (AUTH_FIRST(c))
        return 1;
    if (!subject_valid_pattern(subject, subject_len) ||
        (queue && !subject_valid_literal(queue, queue_len))) {
        client_send_err(c, "Invalid Subject");
        return 0;
    }
    if (!client_auth_subscribe(c, subject, subject_len, queue, queue_len, &flags))
        return 0;
    if (max_subs && c->subs.count >= max_subs) {
        /* nats-server's text; the connection stays. */
        log_info("cid:%llu %s:%d maximum subscriptions exceeded (%zu)", (unsigned long long)c->id, c->ip, c->port,
                 max_subs);
        client_send_err(c, "maximum subscriptions exceeded");
        return 0;
    }
    if (dict_get(&c->subs, sid, sid_len)) {
        /* A sid in use: like nats-server, keep the first subscription. */
        goto ok;
    }
    s = calloc(1, sizeof *s);
    if (!s)
        goto oom;
    s->owner = c;
    s->flags = flags;
    s->subject = util_mem_dup(subject, subject_len);
    s->subject_len = subject_len;
    s->sid = util_mem_dup(sid, sid_len);
    s->sid_len = sid_len;
    if (queue) {
        s->queue = util_mem_dup(queue, queue_len);
        s->queue_len = queue_len;
    }
    if (!s->subject || !s->sid || (queue && !s->queue))
        goto oom;
    if (dict_put(&c->subs, sid, sid_len, s) < 0)
        goto oom;
    if (sublist_insert(server_sublist(c->srv), s) < 0) {
        dict_remove(&c->subs, sid, sid_len);
        goto oom;
    }
    server_note_interest(c->srv, s, 1);
ok:
    if (c->flags & CLIENT_VERBOSE)
        SEND_LITERAL(c, "+OK\r\n");
    return 0;
oom:
    if (s)
        sub_free(s);
    log_error("cid:%llu out of memory adding a subscription", (unsigned long long)c->id);
    client_send_err(c, "Server Out Of Memory");
    client_close(c, CLIENT_CLOSE_FLUSH, "out of memory");
    return 1;
}

static int on_unsub(void *ctx, const char *sid, size_t sid_len, uint64_t max_msgs)
{
    client_t *c = ctx;
    if (AUTH_FIRST(c))
        return 1;
    sub_t *s = dict_get(&c->subs, sid, sid_len);
    if (s) {
        if (max_msgs > 0 && s->delivered < max_msgs) {
            s->max_msgs = max_msgs;
        } else {
            client_remove_sub(c, s);
        }
    }
    if (c->flags & CLIENT_VERBOSE)
        SEND_LITERAL(c, "+OK\r\n");
    return 0;
}

static int on_ping(void *ctx)
{
    client_t *c = ctx;
    if (AUTH_FIRST(c))
        return 1;
    SEND_LITERAL(c, "PONG\r\n");
    return 0;
}

static int on_pong(void *ctx)
{
    client_t *c = ctx;
    if (AUTH_FIRST(c))
        return 1;
    c->pings_out = 0;
    return 0;
}

static const proto_handler_t handler = {
    .on_connect = on_connect,
    .on_pub = on_pub,
    .on_sub = on_sub,
    .on_unsub = on_unsub,
    .on_ping = on_ping,
    .on_pong = on_pong,
};

/*
 * Reads go around the bufferevent: libevent 2.1 asks the socket how much it
 * holds (an ioctl) before every read and then reads at most 4 KB, so 1 KB
 * messages cost three system calls per four messages.  Here one readv
 * takes up to READ_CHUNK bytes into the client's own input buffer.  The
 * bufferevent keeps the writes.
 */

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    struct evbuffer *in = c->in;
    struct evbuffer_iovec v[2];
    (void)what;
    int n = evbuffer_reserve_space(in, READ_CHUNK, v, 2);
    if (n <= 0) {
        client_close(c, CLIENT_CLOSE_NOW, "out of memory for input");
        return;
    }
    /* evbuffer_iovec has struct iovec's layout on Unix (libevent says so). */
    ssize_t r = readv(fd, (struct iovec *)v, n);
    if (r <= 0) {
        int e = errno;
        evbuffer_commit_space(in, v, 0);
        if (r < 0 && (e == EAGAIN || e == EWOULDBLOCK || e == EINTR))
            return;
        client_close(c, CLIENT_CLOSE_NOW, r == 0 ? "client closed" : "socket error");
        return;
    }
    if ((size_t)r <= v[0].iov_len) {
        v[0].iov_len = (size_t)r;
        n = 1;
    } else {
        v[1].iov_len = (size_t)r - v[0].iov_len;
    }
    evbuffer_commit_space(in, v, n);
    c->flags |= CLIENT_ACTIVE;
    parse_input(c);
}

/* A TLS connection's bufferevent decrypted input: it joins c's own input
 * buffer (moved, not copied) and is parsed as on a plain connection. */
static void on_tls_read(struct bufferevent *bev, void *arg)
{
    client_t *c = arg;
    if (c->flags & CLIENT_CLOSING)
        return;
    if (evbuffer_add_buffer(c->in, bufferevent_get_input(bev)) < 0) {
        client_close(c, CLIENT_CLOSE_NOW, "out of memory for input");
        return;
    }
    c->flags |= CLIENT_ACTIVE;
    parse_input(c);
}

/* Parses what c's input holds and runs it. */
static void parse_input(client_t *c)
{
    struct evbuffer *in = c->in;
    while (!(c->flags & (CLIENT_CLOSING | CLIENT_AUTH_HOLD))) {
        struct evbuffer_iovec v[16];
        int n = evbuffer_peek(in, -1, NULL, v, 16);
        if (n <= 0)
            break;
        if (n > 16)
            n = 16;
        size_t used = 0;
        int rc = PROTO_OK;
        for (int k = 0; k < n && rc == PROTO_OK; k++) {
            rc = proto_parse(&c->parser, v[k].iov_base, v[k].iov_len, &handler, c);
            /* Stopped: what follows the command that stopped it stays for later. */
            used += rc == PROTO_STOP ? c->parser.stopped_at : v[k].iov_len;
        }
        evbuffer_drain(in, used);
        if (rc < 0) {
            protocol_error(c, rc);
            break;
        }
        if (rc == PROTO_STOP)
            break;
    }
}

/* ---- delivery ----------------------------------------------------------- */

static char *put(char *w, const char *s, size_t n)
{
    memcpy(w, s, n);
    return w + n;
}

static char *put_u64(char *w, uint64_t v)
{
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        *w++ = tmp[--i];
    return w;
}

/*
 * Reserves `need` contiguous bytes at the end of c's output in *v, and sets
 * c->out_room to the free bytes there (the caller takes off what it
 * commits).  When the last piece cannot take them, the new piece is made as
 * big as what is queued (OUTPUT_PIECE_MAX at most): libevent's own choice
 * is about 1 KiB, a malloc every few messages while a fan-out queues.  A TLS
 * bufferevent makes one record, and one write, of each piece of the
 * buffer: its pieces are TLS_OUTPUT_PIECE bytes or more rather than one
 * per message.  -1 when out of memory.
 */
static int reserve_output(client_t *c, struct evbuffer *out, size_t need, struct evbuffer_iovec *v)
{
    size_t pending = evbuffer_get_length(out);
    /* All of it written frees every piece.  Other writers (evbuffer_add)
     * leave out_room off: too little costs a piece made early, too much
     * lets evbuffer_reserve_space make a small one; either way it works. */
    size_t room = pending ? c->out_room : 0;
    if (room < need) {
        size_t piece = pending < OUTPUT_PIECE_MAX ? pending : OUTPUT_PIECE_MAX;
        if (c->tls && piece < TLS_OUTPUT_PIECE)
            piece = TLS_OUTPUT_PIECE;
        if (evbuffer_expand(out, piece > need ? piece : need) < 0)
            return -1;
    }
    if (evbuffer_reserve_space(out, (ev_ssize_t)need, v, 1) < 1)
        return -1;
    c->out_room = v->iov_len;
    return 0;
}

int client_deliver(client_t *c, const sub_t *sub, const proto_msg_t *m)
{
    struct evbuffer *out;
    struct evbuffer_iovec v;
    int with_hdr = m->hdr && (c->flags & CLIENT_HEADERS);
    size_t body = m->payload_len + (with_hdr ? m->hdr_len : 0);
    size_t need = 6 + m->subject_len + 1 + sub->sid_len + 1 + m->reply_len + 1 + 20 + 1 + 20 + 2 + body + 2;
    char *w;

    if (c->flags & CLIENT_CLOSING)
        return -1;
    if (c->perms && !client_auth_deliver(c, sub, m))
        return -1; /* its permissions keep it from this one */
    out = bufferevent_get_output(c->bev);
    if (reserve_output(c, out, need, &v) < 0) {
        client_close(c, CLIENT_CLOSE_NOW, "out of memory for output");
        return -1;
    }
    w = v.iov_base;
    w = with_hdr ? put(w, "HMSG ", 5) : put(w, "MSG ", 4);
    w = put(w, m->subject, m->subject_len);
    *w++ = ' ';
    w = put(w, sub->sid, sub->sid_len);
    *w++ = ' ';
    if (m->reply) {
        w = put(w, m->reply, m->reply_len);
        *w++ = ' ';
    }
    if (with_hdr) {
        w = put_u64(w, m->hdr_len);
        *w++ = ' ';
    }
    w = put_u64(w, body);
    *w++ = '\r';
    *w++ = '\n';
    if (with_hdr)
        w = put(w, m->hdr, m->hdr_len);
    w = put(w, m->payload, m->payload_len);
    *w++ = '\r';
    *w++ = '\n';
    v.iov_len = (size_t)(w - (char *)v.iov_base);
    c->out_room -= v.iov_len;
    evbuffer_commit_space(out, &v, 1);
    output_queued(c);
    c->out_msgs++;

    server_stats_t *st = server_stats_mut(c->srv);
    st->out_msgs++;
    st->out_bytes += body;
    size_t pending = evbuffer_get_length(out);
    if (pending > server_get_opts(c->srv)->max_pending && !c->tls) {
        /* A burst from one big read can pass the limit before the loop gets
         * to write; only a socket that will not take the bytes makes a slow
         * consumer, so try to write first.  (A TLS bufferevent cannot be
         * written from here: it writes on its own write event.) */
        write_now(c, out); /* an error shows on the next read */
        pending = evbuffer_get_length(out);
    }
    if (pending > server_get_opts(c->srv)->max_pending) {
        st->slow_consumers++;
        log_warn("cid:%llu %s:%d slow consumer: %zu bytes pending (max %zu), disconnecting",
                 (unsigned long long)c->id, c->ip, c->port, pending, server_get_opts(c->srv)->max_pending);
        client_send_err(c, "Slow Consumer");
        client_close(c, CLIENT_CLOSE_FLUSH, "slow consumer");
        return -1;
    }
    server_output_t *all = c->output;
    all->total = all->total - c->queued + pending;
    c->queued = pending;
    if (all->total > all->cap && server_output_over(c->srv, c))
        return -1;
    return 0;
}

void client_cut_slow(client_t *c, const char *why)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    server_stats_mut(c->srv)->slow_consumers++;
    log_warn("cid:%llu %s:%d slow consumer: %zu bytes pending, %s; disconnecting", (unsigned long long)c->id, c->ip,
             c->port, evbuffer_get_length(out), why);
    if (!c->tls)
        evbuffer_unfreeze(out, 1); /* a socket bufferevent keeps the front frozen (write_now) */
    evbuffer_drain(out, evbuffer_get_length(out));
    if (!c->tls)
        evbuffer_freeze(out, 1);
    client_send_err(c, "Slow Consumer");
    client_close(c, CLIENT_CLOSE_FLUSH, "slow consumer");
}
