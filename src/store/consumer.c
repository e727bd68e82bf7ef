/*
 * consumer.c - durable push consumers: delivery from a stream to a subject,
 * acks on $JS.ACK reply subjects, redelivery with backoff, max_deliver and
 * dead letters, max_ack_pending, ordered_by, and state kept on disk.
 *
 * State on disk, in <data>/consumers/<name>/:
 *   state     a snapshot: generation, next sequence, delivery counter, the
 *             messages in flight (sequence, deliveries) and the ones parked
 *             behind another of their ordered_by key; CRC-32C at the end
 *   acks.log  what happened since the snapshot of the same generation:
 *             17-byte records (op, deliveries, sequence, CRC-32C), op D
 *             (delivered), A (done: acked, terminated or dead-lettered),
 *             P (parked)
 * Appends to acks.log are written at the end of each loop iteration (no
 * fsync: a crash of the process loses nothing; a power loss can roll a
 * consumer back, which means redeliveries, never a lost event).  Every
 * 20,000 records a new snapshot is written and the log restarted.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "clock.h"
#include "crc32c.h"
#include "dead_letter.h"
#include "json_int.h"
#include "proto.h"
#include "log.h"
#include "pull.h"
#include "stream_internal.h"
#include "subject.h"
#include "util.h"
#include "vfs.h"

#define OPS_PER_SNAPSHOT 20000
#define TICK_MS 10
#define OP_LEN 17
/* Bytes of a record copied with its fields (see gather). */
#define REC_COPY_LEN(r) (sizeof(slog_rec_t) + (r)->subject_len + (r)->hdr_len + (r)->payload_len)

typedef struct pend {
    uint64_t seq;
    uint32_t deliveries;
    int waiting;  /* 1: to be (re)delivered at due; 0: in flight until due */
    int64_t due;  /* monotonic ns */
    uint32_t gen; /* bumps when due changes: older heap entries are stale */
    uint64_t dseq; /* the consumer sequence of its last delivery */
    char *key;    /* ordered_by key (owned), or NULL */
    char *error;  /* last error (NAK or TERM reason), or NULL */
} pend_t;

typedef struct hent {
    int64_t due;
    uint64_t seq;
    uint32_t gen;
} hent_t;

/* Messages waiting behind the one of their key in flight. */
typedef struct keyq {
    uint64_t *seqs;
    size_t head, n, cap;
} keyq_t;

struct consumer {
    consumer_cfg_t cfg;
    streams_t *sm;
    stream_t *st;
    char dir[4096];
    uint64_t next_seq, dseq;
    dict_t pending; /* 8-byte sequence -> pend_t */
    size_t npending;
    hent_t *heap;
    size_t nheap, capheap;
    dict_t keys; /* ordered_by key in flight -> keyq_t */
    uint64_t nparked;
    int logfd;
    uint64_t gen;
    char *obuf;
    size_t olen, ocap;
    uint64_t nops;
    char **replies; /* AckSync replies, sent once the ack is written */
    size_t nreplies, capreplies;
    struct event *flush_ev, *tick_ev, *pump_ev;
    int64_t replay_ts, replay_mono; /* replay_original: stored time of the last new message sent, and when */
    int64_t replay_due;             /* replay_original: when the next one may go (0: now) */
    /* Bound to Lua handlers: events gathered for the next call. */
    int batch;          /* 0: not bound */
    double wait;        /* seconds a batch may wait to fill */
    uint64_t *bq;       /* sequences gathered (in flight) */
    char **bq_bytes;    /* their records' bytes */
    size_t nbq, capbq;
    int64_t bq_since;   /* when the first was gathered */
    uint64_t handler_calls;
    /* Handler acks waiting for what the handler published to be durable. */
    struct deferred_ack *deferred;
    size_t ndeferred, capdeferred;
    uint64_t delivered, redelivered, acked, naked, termed, dead_lettered, expired;
    uint64_t given_up; /* after max_deliver or +TERM, dead-lettered or not */
    uint64_t dead_letters_lost; /* given up, and the dead letter went nowhere */
    /* Events after next_seq that match the filter, counted up to counted_to. */
    uint64_t num_pending, counted_to;
    char *cbuf; /* read buffer for counting (the shared one may hold the record being sent) */
    size_t ccap;
    int pumping;
    /* Pull consumers: the requests held; push and pull: when someone to
     * deliver to was last seen (monotonic), the last delivery (wall). */
    pullq_t pulls;
    int64_t seen, last_active, last_sent, last_ack;
    uint64_t last_sseq;
    /* deliver_policy last_per_subject: the sequences to deliver before
     * next_seq, in stream order. */
    uint64_t *lps;
    size_t nlps, lps_at;
    /* The ack floor before the first ack: where the consumer started. */
    uint64_t opened_next;
    int acked_once;
    /* Push flow control: bytes sent since the client last answered, the
     * part of them the outstanding request covers, and its number (0:
     * none outstanding). */
    uint64_t fc_bytes, fc_size, fc_id, fc_next;
    uint64_t fc_window; /* the bytes it may send unanswered; 0: not set yet */
};

/* A flow-controlled push consumer asks the client to answer when half its
 * window is on its way, and stops when the whole of it is.  The window
 * starts small and doubles with each answer up to its limit (a slow
 * start, with nats-server's sizes). */
#define FC_WINDOW_START (2u * 1024 * 1024)
#define FC_WINDOW_MAX (32u * 1024 * 1024)

static void release_deferred(consumer_t *c);

/* True when the consumer has a filter (or a list of them). */
static int filtered(const consumer_t *c) { return c->cfg.nfilters > 0 || c->cfg.filter[0]; }

static int matches(const consumer_t *c, const char *subject, size_t len);

int consumer_matches(const consumer_t *c, const char *subject, size_t len) { return matches(c, subject, len); }

/* True when the consumer's filters take subject (all when it has none). */
static int matches(const consumer_t *c, const char *subject, size_t len)
{
    if (c->cfg.nfilters == 0)
        return !c->cfg.filter[0] || subject_matches(c->cfg.filter, strlen(c->cfg.filter), subject, len);
    for (int i = 0; i < c->cfg.nfilters; i++)
        if (subject_matches(c->cfg.filters[i], strlen(c->cfg.filters[i]), subject, len))
            return 1;
    return 0;
}

/* Deadlines are on clock.h's monotonic scale: virtual under tide run
 * --clock virtual, where the run driver moves time (consumer_next_due). */
static int64_t mono_ns(void) { return clock_mono_ns(); }

const consumer_cfg_t *consumer_cfg(const consumer_t *c) { return &c->cfg; }

/* ---- the deadline heap ------------------------------------------------------ */

/* Earlier deadline first; among equal ones, stream order. */
/* v units of `unit` ns as ns: -1 for a negative or not-a-number v, and at
 * most NAK_DELAY_MAX (a client's number must not overflow the clock). */
#define NAK_DELAY_MAX (366 * 86400 * INT64_C(1000000000))
static int64_t delay_ns(double v, double unit)
{
    if (!(v >= 0))
        return -1;
    double ns = v * unit;
    return ns < (double)NAK_DELAY_MAX ? (int64_t)ns : NAK_DELAY_MAX;
}

static int hent_before(const hent_t *a, const hent_t *b)
{
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_push(consumer_t *c, pend_t *p)
{
    if (c->nheap == c->capheap) {
        size_t nc = c->capheap ? c->capheap * 2 : 256;
        hent_t *nh = realloc(c->heap, nc * sizeof *nh);
        if (!nh) {
            log_error("consumer %s: out of memory scheduling a redelivery", c->cfg.name);
            return;
        }
        c->heap = nh;
        c->capheap = nc;
    }
    size_t i = c->nheap++;
    hent_t e = {p->due, p->seq, p->gen};
    while (i && hent_before(&e, &c->heap[(i - 1) / 2])) {
        c->heap[i] = c->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    c->heap[i] = e;
}

static hent_t heap_pop(consumer_t *c)
{
    hent_t top = c->heap[0], last = c->heap[--c->nheap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const hent_t *best = &last;
        if (l < c->nheap && hent_before(&c->heap[l], best))
            m = l, best = &c->heap[l];
        if (r < c->nheap && hent_before(&c->heap[r], best))
            m = r;
        if (m == i)
            break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (c->nheap)
        c->heap[i] = last;
    return top;
}

/* Acked events leave their deadline in the heap (stale, skipped when it
 * comes up); when stale ones outnumber the live, the heap is rebuilt from
 * the events in flight, so its size follows max_ack_pending, not the rate. */
static void heap_rebuild(consumer_t *c)
{
    c->nheap = 0;
    for (size_t i = 0; i < c->pending.cap; i++) {
        pend_t *p = c->pending.slots[i].key ? c->pending.slots[i].val : NULL;
        if (p)
            heap_push(c, p);
    }
}

static void schedule(consumer_t *c, pend_t *p, int waiting, int64_t due)
{
    p->waiting = waiting;
    p->due = due;
    p->gen++;
    if (c->nheap > 4 * c->npending + 1024)
        heap_rebuild(c);
    heap_push(c, p);
}

/* ---- the state log ---------------------------------------------------------- */

static void log_op(consumer_t *c, char op, uint32_t n, uint64_t seq)
{
    if (c->logfd < 0)
        return;
    if (c->olen + OP_LEN > c->ocap) {
        size_t nc = c->ocap ? c->ocap * 2 : 8192;
        char *nb = realloc(c->obuf, nc);
        if (!nb)
            return;
        c->obuf = nb;
        c->ocap = nc;
    }
    char *p = c->obuf + c->olen;
    p[0] = op;
    memcpy(p + 1, &n, 4);
    memcpy(p + 5, &seq, 8);
    uint32_t crc = crc32c(0, p, 13);
    memcpy(p + 13, &crc, 4);
    c->olen += OP_LEN;
    c->nops++;
    event_active(c->flush_ev, EV_TIMEOUT, 0);
}

static void snapshot(consumer_t *c);

static void flush_state(consumer_t *c)
{
    if (c->olen && c->logfd >= 0) {
        if (vfs_write(c->logfd, c->obuf, c->olen) < 0)
            log_error("consumer %s: cannot write its state (%s): a restart may redeliver", c->cfg.name,
                      strerror(errno));
        c->olen = 0;
    }
    for (size_t i = 0; i < c->nreplies; i++) {
        proto_msg_t r;
        memset(&r, 0, sizeof r);
        r.subject = c->replies[i];
        r.subject_len = strlen(c->replies[i]);
        r.payload = "";
        server_route_flags(c->sm->srv, NULL, &r, ROUTE_NO_CAPTURE);
        free(c->replies[i]);
    }
    c->nreplies = 0;
    if (c->nops >= OPS_PER_SNAPSHOT)
        snapshot(c);
}

static void on_flush(evutil_socket_t fd, short what, void *arg) { flush_state(arg); }

static void put_u64(char **b, size_t *len, size_t *cap, uint64_t v)
{
    if (*len + 8 > *cap) {
        size_t nc = *cap ? *cap * 2 : 4096;
        char *nb = realloc(*b, nc);
        if (!nb)
            return;
        *b = nb;
        *cap = nc;
    }
    memcpy(*b + *len, &v, 8);
    *len += 8;
}

static int open_log(consumer_t *c, int fresh)
{
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/acks.log", c->dir);
    if (c->logfd >= 0)
        vfs_close(c->logfd);
    c->logfd = -1;
    if (fresh) {
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        int fd = vfs_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        char h[16];
        memcpy(h, "TIDEACK1", 8);
        memcpy(h + 8, &c->gen, 8);
        if (fd < 0 || vfs_write(fd, h, sizeof h) < 0 || vfs_rename(tmp, path) < 0) {
            log_error("consumer %s: cannot start %s: %s", c->cfg.name, path, strerror(errno));
            if (fd >= 0)
                vfs_close(fd);
            return -1;
        }
        vfs_close(fd);
    }
    c->logfd = vfs_open(path, O_WRONLY | O_APPEND, 0644);
    return c->logfd < 0 ? -1 : 0;
}

/* Writes the whole state as a new generation and starts a new log. */
static void snapshot(consumer_t *c)
{
    char *b = NULL, path[4200], tmp[4300];
    size_t len = 0, cap = 0;
    if (c->olen)
        flush_state(c);
    uint64_t gen = c->gen + 1;
    put_u64(&b, &len, &cap, 0); /* magic, below */
    put_u64(&b, &len, &cap, gen);
    put_u64(&b, &len, &cap, c->next_seq);
    put_u64(&b, &len, &cap, c->dseq);
    put_u64(&b, &len, &cap, c->npending);
    uint64_t parked = 0;
    for (size_t i = 0; i < c->pending.cap; i++) {
        pend_t *p = c->pending.slots[i].key ? c->pending.slots[i].val : NULL;
        if (p) {
            put_u64(&b, &len, &cap, p->seq);
            put_u64(&b, &len, &cap, p->deliveries);
        }
    }
    for (size_t i = 0; i < c->keys.cap; i++) {
        keyq_t *q = c->keys.slots[i].key ? c->keys.slots[i].val : NULL;
        parked += q ? q->n : 0;
    }
    put_u64(&b, &len, &cap, parked);
    for (size_t i = 0; i < c->keys.cap; i++) {
        keyq_t *q = c->keys.slots[i].key ? c->keys.slots[i].val : NULL;
        for (size_t k = 0; q && k < q->n; k++)
            put_u64(&b, &len, &cap, q->seqs[(q->head + k) % q->cap]);
    }
    if (!b || len < 40) {
        free(b);
        return;
    }
    memcpy(b, "TIDECST1", 8);
    uint32_t crc = crc32c(0, b, len);
    put_u64(&b, &len, &cap, crc);
    snprintf(path, sizeof path, "%s/state", c->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = vfs_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || vfs_write(fd, b, len) < 0 || vfs_rename(tmp, path) < 0) {
        log_error("consumer %s: cannot write a snapshot of its state: %s", c->cfg.name, strerror(errno));
        if (fd >= 0)
            vfs_close(fd);
        free(b);
        return;
    }
    vfs_close(fd);
    free(b);
    c->gen = gen;
    c->nops = 0;
    open_log(c, 1);
}

/* ---- ordered_by -------------------------------------------------------------- */

/* The ordered_by key of a record (malloc'd), or NULL when it has none. */
static char *key_of(consumer_t *c, const slog_rec_t *r)
{
    const char *ob = c->cfg.ordered_by;
    if (!ob[0])
        return NULL;
    if (!strcmp(ob, "subject"))
        return util_mem_dup(r->subject, r->subject_len);
    if (!strncmp(ob, "header:", 7)) {
        size_t vl;
        const char *v = r->hdr_len ? proto_header_find(r->hdr, r->hdr_len, ob + 7, &vl) : NULL;
        return v ? util_mem_dup(v, vl) : NULL;
    }
    cJSON *j = r->payload_len ? cJSON_ParseWithLength(r->payload, r->payload_len) : NULL;
    if (!j)
        return NULL;
    /* A CloudEvents envelope has its data under "data"; a plain JSON
     * payload is the data itself. */
    cJSON *cur = cJSON_GetObjectItemCaseSensitive(j, "specversion") ? cJSON_GetObjectItemCaseSensitive(j, "data") : j;
    char path[128];
    snprintf(path, sizeof path, "%s", ob + 5);
    for (char *save = NULL, *tok = strtok_r(path, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save))
        cur = cJSON_IsObject(cur) ? cJSON_GetObjectItemCaseSensitive(cur, tok) : NULL;
    char *out = NULL;
    if (cJSON_IsString(cur)) {
        out = strdup(cur->valuestring);
    } else if (cJSON_IsNumber(cur)) {
        char *p = cJSON_PrintUnformatted(cur);
        out = p ? strdup(p) : NULL;
        cJSON_free(p);
    }
    cJSON_Delete(j);
    return out;
}

static int keyq_push(keyq_t *q, uint64_t seq)
{
    if (q->n == q->cap) {
        size_t nc = q->cap ? q->cap * 2 : 8;
        uint64_t *ns = malloc(nc * sizeof *ns);
        if (!ns)
            return -1;
        for (size_t i = 0; i < q->n; i++)
            ns[i] = q->seqs[(q->head + i) % q->cap];
        free(q->seqs);
        q->seqs = ns;
        q->cap = nc;
        q->head = 0;
    }
    q->seqs[(q->head + q->n++) % q->cap] = seq;
    return 0;
}

static void keyq_free(void *v)
{
    keyq_t *q = v;
    if (q)
        free(q->seqs);
    free(q);
}

/* ---- delivery --------------------------------------------------------------- */

static pend_t *pend_get(consumer_t *c, uint64_t seq) { return dict_get(&c->pending, (const char *)&seq, 8); }

static pend_t *pend_new(consumer_t *c, uint64_t seq, char *key)
{
    pend_t *p = calloc(1, sizeof *p);
    if (!p || dict_put(&c->pending, (const char *)&seq, 8, p) < 0) {
        free(p);
        free(key);
        return NULL;
    }
    p->seq = seq;
    p->key = key;
    c->npending++;
    return p;
}

static uint64_t committed(consumer_t *c) { return slog_committed(c->st->log); }

static void nak(consumer_t *c, pend_t *p, int64_t delay);
static void gather(consumer_t *c, pend_t *p, const slog_rec_t *r);

/* Events after next_seq that the consumer will deliver: for a filtered
 * consumer, counted incrementally (num_pending covers next_seq ..
 * counted_to; the pump takes delivered ones off). */
static uint64_t pending_count(consumer_t *c)
{
    uint64_t com = committed(c);
    if (c->next_seq > com) {
        c->num_pending = 0;
        c->counted_to = com;
        return c->nlps - c->lps_at;
    }
    if (!filtered(c))
        return com - c->next_seq + 1 + (c->nlps - c->lps_at);
    if (c->counted_to + 1 < c->next_seq) { /* fell behind the pump: count afresh */
        c->num_pending = 0;
        c->counted_to = c->next_seq - 1;
    }
    for (uint64_t q = c->counted_to + 1; q <= com; q++) {
        slog_rec_t r;
        if (slog_read(c->st->log, q, &r, &c->cbuf, &c->ccap) > 0 && matches(c, r.subject, r.subject_len))
            c->num_pending++;
    }
    c->counted_to = com;
    return c->num_pending + (c->nlps - c->lps_at);
}

static void done(consumer_t *c, pend_t *p);

/* The header block of a headers_only delivery of m: its headers and
 * Nats-Msg-Size (malloc'd, caller frees; NULL when out of memory). */
static char *headers_only(const proto_msg_t *m, size_t *len)
{
    size_t keep = m->hdr_len >= 4 ? m->hdr_len - 2 : 0; /* without the blank line that ends it */
    char *h = malloc(keep + 64);
    if (!h)
        return NULL;
    if (keep)
        memcpy(h, m->hdr, keep);
    else
        keep = (size_t)sprintf(h, "NATS/1.0\r\n");
    *len = keep + (size_t)sprintf(h + keep, "Nats-Msg-Size: %zu\r\n\r\n", m->payload_len);
    return h;
}

/* Routes m to `to` as the consumer delivers it: today's upgraders applied
 * (0), or -1 with the reason in err when one failed. */
static int route_out(consumer_t *c, const char *to, size_t tolen, proto_msg_t m, char *err, size_t errsz)
{
    proto_msg_t up, orig = m;
    char *ubuf = NULL, *hbuf = NULL;
    orig.reply = NULL;
    orig.reply_len = 0;
    int u = c->sm->hooks.upgrade ? c->sm->hooks.upgrade(c->sm->hooks.ctx, &orig, &up, &ubuf, err, errsz) : 0;
    if (u < 0)
        return -1;
    if (u > 0) {
        up.subject = m.subject;
        up.subject_len = m.subject_len;
        up.reply = m.reply;
        up.reply_len = m.reply_len;
        m = up;
    }
    if (c->cfg.headers_only && (hbuf = headers_only(&m, &m.hdr_len))) {
        m.hdr = hbuf;
        m.payload = "";
        m.payload_len = 0;
    }
    server_route_to(c->sm->srv, NULL, to, tolen, &m, ROUTE_NO_CAPTURE);
    free(hbuf);
    free(ubuf);
    return 0;
}

/* A 100 FlowControl Request to the deliver subject, with the reply subject
 * $JS.FC.<stream>.<consumer>.<id> the client answers on. */
static void flow_control_request(consumer_t *c)
{
    char reply[512], hdr[] = "NATS/1.0 100 FlowControl Request\r\n\r\n";
    c->fc_id = ++c->fc_next;
    c->fc_size = c->fc_bytes;
    int n = snprintf(reply, sizeof reply, "$JS.FC.%s.%s.%" PRIu64, c->st->cfg.name, c->cfg.name, c->fc_id);
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = c->cfg.deliver;
    m.subject_len = strlen(c->cfg.deliver);
    m.reply = reply;
    m.reply_len = (size_t)n;
    m.hdr = hdr;
    m.hdr_len = sizeof hdr - 1;
    m.payload = "";
    server_route_flags(c->sm->srv, NULL, &m, ROUTE_NO_CAPTURE);
}

/* Counts size bytes more sent to a flow-controlled push consumer's client;
 * asks for an answer when half the window is out and none is asked for
 * yet.  An outstanding request grows to cover what is sent beyond a
 * window while it waits (as nats-server's). */
static void flow_control_sent(consumer_t *c, size_t size)
{
    if (!c->fc_window)
        c->fc_window = FC_WINDOW_START;
    c->fc_bytes += size;
    if (!c->fc_id && c->fc_bytes > c->fc_window / 2)
        flow_control_request(c);
    else if (c->fc_id && c->fc_bytes - c->fc_size >= c->fc_window)
        c->fc_size += size;
}

/* Sends record r for p (one more delivery) to the deliver subject or the
 * oldest pull request that takes it, or gathers it for the Lua handlers
 * the consumer is bound to.  A pull consumer without a request for it
 * keeps p for the next one. */
static void send_one(consumer_t *c, pend_t *p, const slog_rec_t *r)
{
    char reply[512], err[512];
    int64_t now = mono_ns();
    pull_wait_t *w = NULL;
    int n = snprintf(reply, sizeof reply, "$JS.ACK.%s.%s.%u.%" PRIu64 ".%" PRIu64 ".%" PRId64 ".%" PRIu64,
                     c->st->cfg.name, c->cfg.name, p->deliveries + 1, p->seq, c->dseq + 1, r->ts, pending_count(c));
    size_t size = r->subject_len + (size_t)n + r->hdr_len + (c->cfg.headers_only ? 0 : r->payload_len);
    if (c->cfg.pull && !(w = pullq_target(&c->pulls, c->sm->srv, size, now))) {
        schedule(c, p, 1, now);
        return;
    }
    p->deliveries++;
    p->dseq = ++c->dseq;
    if (p->deliveries > 1)
        c->redelivered++;
    else if (p->seq > c->last_sseq)
        c->last_sseq = p->seq;
    c->delivered++;
    c->last_active = slog_now_ns();
    c->last_sent = now;
    /* The event keeps its own subject; it reaches the subscribers of the
     * deliver subject (as JetStream push consumers do). */
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = r->subject;
    m.subject_len = r->subject_len;
    m.reply = reply;
    m.reply_len = (size_t)n;
    m.hdr = r->hdr_len ? r->hdr : NULL;
    m.hdr_len = r->hdr_len;
    m.payload = r->payload;
    m.payload_len = r->payload_len;
    log_op(c, 'D', p->deliveries, p->seq);
    schedule(c, p, 0, now + (int64_t)(c->cfg.ack_wait * 1e9));
    if (!c->cfg.deliver[0] && !c->cfg.pull) {
        gather(c, p, r);
        return;
    }
    /* Stored events meet today's upgraders on their way out. */
    const char *to = w ? w->reply : c->cfg.deliver;
    if (route_out(c, to, w ? w->rlen : strlen(to), m, err, sizeof err) < 0) {
        free(p->error);
        p->error = strdup(err);
        nak(c, p, -1);
        return;
    }
    if (w)
        pullq_delivered(&c->pulls, c->sm->srv, w, size, now);
    else if (c->cfg.flow_control)
        flow_control_sent(c, size);
    if (c->cfg.ack_policy == ACK_NONE)
        done(c, p);
}

/* Delivers p again (or for the first time after a restart). */
static void redeliver(consumer_t *c, pend_t *p)
{
    slog_rec_t r;
    int rc = slog_read(c->st->log, p->seq, &r, &c->sm->rbuf, &c->sm->rcap);
    if (rc <= 0) { /* gone (retention) or unreadable: nothing to deliver */
        if (rc < 0)
            log_error("consumer %s: cannot read sequence %" PRIu64 ": %s", c->cfg.name, p->seq, strerror(errno));
        done(c, p);
        return;
    }
    send_one(c, p, &r);
}

/* Gives p up (max_deliver reached, or +TERM): publishes its dead letter
 * (dead_letter.h), or counts and logs why there is none. */
static void dead_letter(consumer_t *c, pend_t *p, const char *reason)
{
    char why[400];
    slog_rec_t r;
    c->given_up++;
    if (!c->cfg.dead_letter[0]) {
        log_warn("consumer %s: sequence %" PRIu64 " given up after %u deliveries (%s); no dead_letter subject is set",
                 c->cfg.name, p->seq, p->deliveries, reason);
        return;
    }
    int rc = slog_read(c->st->log, p->seq, &r, &c->sm->rbuf, &c->sm->rcap);
    if (rc < 0) {
        snprintf(why, sizeof why, "its record cannot be read (%s)", strerror(errno));
        goto lost;
    }
    if (rc == 0) { /* retention took it while it was pending */
        snprintf(why, sizeof why, "its record is no longer in the stream");
        goto lost;
    }
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = r.subject;
    m.subject_len = r.subject_len;
    m.hdr = r.hdr_len ? r.hdr : NULL;
    m.hdr_len = r.hdr_len;
    m.payload = r.payload;
    m.payload_len = r.payload_len;
    dead_letter_facts_t f = {.to = c->cfg.dead_letter, .reason = reason, .error = p->error,
                             .stream = c->st->cfg.name, .consumer = c->cfg.name, .seq = p->seq,
                             .deliveries = p->deliveries};
    if (dead_letter_send(c->sm->srv, &m, &f, why, sizeof why) != DEAD_LETTER_LOST) {
        c->dead_lettered++;
        return;
    }
lost:
    c->dead_letters_lost++;
    log_error("consumer %s: sequence %" PRIu64 " given up after %u deliveries (%s); its dead letter to %s is lost: %s",
              c->cfg.name, p->seq, p->deliveries, reason, c->cfg.dead_letter, why);
}

static void deliver_new(consumer_t *c, uint64_t seq, const slog_rec_t *r, char *key)
{
    pend_t *p = pend_new(c, seq, key);
    if (!p) {
        log_error("consumer %s: out of memory delivering %" PRIu64, c->cfg.name, seq);
        return;
    }
    send_one(c, p, r);
}

/* p is finished (acked, terminated or given up): forget it, and let the
 * next event of its key go. */
static void done(consumer_t *c, pend_t *p)
{
    uint64_t seq = p->seq;
    log_op(c, 'A', 0, seq);
    c->acked_once = 1;
    dict_remove(&c->pending, (const char *)&seq, 8);
    c->npending--;
    stream_retention_done(c->st, c, seq); /* the stream's retention may let it go now */
    if (p->key) {
        keyq_t *q = dict_get(&c->keys, p->key, strlen(p->key));
        if (q && q->n) {
            uint64_t next = q->seqs[q->head];
            q->head = (q->head + 1) % q->cap;
            q->n--;
            c->nparked--;
            pend_t *np = pend_new(c, next, strdup(p->key));
            if (np)
                schedule(c, np, 1, 0); /* delivered by the next tick (or pump) */
        } else if (q) {
            keyq_free(dict_remove(&c->keys, p->key, strlen(p->key)));
        }
    }
    free(p->key);
    free(p->error);
    free(p);
}

static void run_due(consumer_t *c);

int consumer_has_acked(consumer_t *c, uint64_t seq)
{
    if (seq >= c->next_seq || pend_get(c, seq))
        return 0;
    for (size_t i = c->lps_at; i < c->nlps; i++) /* last_per_subject: still to come */
        if (c->lps[i] == seq)
            return 0;
    for (size_t i = 0; c->nparked && i < c->keys.cap; i++) {
        const keyq_t *q = c->keys.slots[i].key ? c->keys.slots[i].val : NULL;
        for (size_t k = 0; q && k < q->n; k++)
            if (q->seqs[(q->head + k) % q->cap] == seq)
                return 0;
    }
    return 1;
}

void consumer_pump(consumer_t *c)
{
    /* Delivery runs from the top of the loop, never inside the pipeline
     * or a route: it may call Lua (upgraders, handlers). */
    event_active(c->pump_ev, EV_TIMEOUT, 0);
}

/* True when a flow-controlled push consumer has its window out and waits
 * for the client's answer. */
static int flow_control_stalled(const consumer_t *c)
{
    return c->cfg.flow_control && c->cfg.deliver[0] && c->fc_bytes > (c->fc_window ? c->fc_window : FC_WINDOW_START);
}

/* True when there is someone to deliver to now. */
static int can_deliver(consumer_t *c)
{
    if (c->sm->hooks.busy && c->sm->hooks.busy(c->sm->hooks.ctx))
        return 0;
    if (c->cfg.pull)
        return c->pulls.n > 0;
    if (!c->cfg.deliver[0])
        return c->batch > 0 && c->sm->hooks.handle;
    if (flow_control_stalled(c))
        return 0;
    return server_has_interest(c->sm->srv, c->cfg.deliver, strlen(c->cfg.deliver));
}

/* Drops the stale deadlines at the top of the heap (acked ones leave
 * theirs behind), so that heap[0] is a live one. */
static void heap_clean_top(consumer_t *c)
{
    while (c->nheap) {
        pend_t *p = pend_get(c, c->heap[0].seq);
        if (p && p->gen == c->heap[0].gen)
            break;
        heap_pop(c);
    }
}

/* True when nothing is there to deliver now: no new message, none due
 * again. */
static int at_end(consumer_t *c)
{
    heap_clean_top(c);
    return c->next_seq > committed(c) && c->lps_at >= c->nlps && (!c->nheap || c->heap[0].due > mono_ns());
}

static void call_handlers(consumer_t *c, int force);

/* replay_policy "original": 1 when r is due later (its stored time less the
 * last sent one's, after that one went out), with the pump timed for then;
 * 0 when it may go now (noted as the last sent). */
static int replay_wait(consumer_t *c, const slog_rec_t *r)
{
    int64_t now = mono_ns();
    if (c->replay_mono && r->ts > c->replay_ts) {
        int64_t due = c->replay_mono + (r->ts - c->replay_ts);
        if (due > now) {
            struct timeval tv = {(time_t)((due - now) / 1000000000), (suseconds_t)((due - now) % 1000000000 / 1000)};
            event_add(c->pump_ev, &tv);
            c->replay_due = due;
            return 1;
        }
    }
    c->replay_due = 0;
    c->replay_ts = r->ts, c->replay_mono = now;
    return 0;
}

static void pump_now(consumer_t *c)
{
    if (c->ndeferred)
        release_deferred(c);
    if (c->pumping || !can_deliver(c))
        return; /* nobody to deliver to: keep the events (the tick looks again) */
    c->pumping = 1;
    run_due(c);
    uint64_t com = committed(c);
    int fl = filtered(c);
    uint64_t park_max = (uint64_t)c->cfg.max_ack_pending * 8 + 1024;
    while ((int64_t)c->npending < c->cfg.max_ack_pending && (c->lps_at < c->nlps || c->next_seq <= com) &&
           c->nparked < park_max && (!c->cfg.pull || c->pulls.n) && !flow_control_stalled(c)) {
        int from_lps = c->lps_at < c->nlps;
        uint64_t seq = from_lps ? c->lps[c->lps_at++] : c->next_seq++;
        slog_rec_t r;
        int rc = slog_read(c->st->log, seq, &r, &c->sm->rbuf, &c->sm->rcap);
        if (rc <= 0)
            continue;
        if (fl && !matches(c, r.subject, r.subject_len))
            continue;
        if (c->cfg.replay_original && replay_wait(c, &r)) {
            if (from_lps)
                c->lps_at--;
            else
                c->next_seq--;
            break;
        }
        if (fl && !from_lps && seq <= c->counted_to && c->num_pending)
            c->num_pending--;
        char *key = key_of(c, &r);
        if (key) {
            keyq_t *q = dict_get(&c->keys, key, strlen(key));
            if (q) {
                if (keyq_push(q, seq) == 0) {
                    c->nparked++;
                    log_op(c, 'P', 0, seq);
                }
                free(key);
                continue;
            }
            q = calloc(1, sizeof *q);
            if (!q || dict_put(&c->keys, key, strlen(key), q) < 0) {
                free(q);
                free(key);
                if (from_lps)
                    c->lps_at--;
                else
                    c->next_seq--;
                break;
            }
        }
        deliver_new(c, seq, &r, key);
        if (!c->cfg.deliver[0] && c->nbq >= (size_t)c->batch)
            call_handlers(c, 0);
    }
    if (c->nbq)
        call_handlers(c, 0);
    if (c->cfg.pull && c->pulls.n && at_end(c))
        pullq_tick(&c->pulls, c->sm->srv, mono_ns(), 1, c->dseq, c->last_sseq);
    c->pumping = 0;
}

static void on_pump(evutil_socket_t fd, short what, void *arg) { pump_now(arg); }

/* ---- Lua handlers ------------------------------------------------------------ */

void consumer_bind(consumer_t *c, int batch, double wait)
{
    c->batch = batch > 0 ? batch : 0;
    c->wait = wait;
    if (c->batch && c->cfg.deliver[0])
        log_warn("consumer %s: has a deliver subject and Lua handlers; the handlers are ignored", c->cfg.name);
    consumer_pump(c);
}

static void gather(consumer_t *c, pend_t *p, const slog_rec_t *r)
{
    if (c->nbq == c->capbq) {
        size_t nc = c->capbq ? c->capbq * 2 : 64;
        uint64_t *nq = realloc(c->bq, nc * sizeof *nq);
        char **nb = nq ? realloc(c->bq_bytes, nc * sizeof *nb) : NULL;
        if (nq)
            c->bq = nq;
        if (!nb)
            return; /* redelivered when its ack_wait runs out */
        c->bq_bytes = nb;
        c->capbq = nc;
    }
    /* A copy of the record: the read buffer is shared. */
    size_t n = REC_COPY_LEN(r);
    char *b = malloc(n ? n : 1);
    if (!b)
        return;
    slog_rec_t *cp = (slog_rec_t *)b;
    *cp = *r;
    char *q = b + sizeof *cp;
    cp->subject = memcpy(q, r->subject, r->subject_len), q += r->subject_len;
    cp->hdr = r->hdr_len ? memcpy(q, r->hdr, r->hdr_len) : NULL, q += r->hdr_len;
    cp->payload = r->payload_len ? memcpy(q, r->payload, r->payload_len) : "";
    if (!c->nbq)
        c->bq_since = mono_ns();
    c->bq[c->nbq] = p->seq;
    c->bq_bytes[c->nbq++] = b;
    /* Not redelivered while it waits for its batch to fill. */
    schedule(c, p, 0, mono_ns() + (int64_t)((c->wait + c->cfg.ack_wait) * 1e9));
}

/*
 * A handler's ack is recorded only once the events it published are
 * durable: a crash in between redelivers the event (the handler runs again
 * and publishes again) instead of losing what it published.  The barrier
 * is each stream's last sequence right after the handler ran; a stream
 * whose writes failed since then (it may have reused sequences) releases
 * nothing, and the event is redelivered after ack_wait instead.
 */
#define BARRIER_MAX 8
typedef struct deferred_ack {
    uint64_t seq;
    uint32_t deliveries;
    int n;
    struct {
        char stream[STREAM_NAME_MAX];
        uint64_t upto;
        uint64_t failures;
    } b[BARRIER_MAX];
} deferred_ack_t;

/* Fills d's barrier; returns 0 when nothing is waiting to be durable. */
static int take_barrier(consumer_t *c, deferred_ack_t *d)
{
    d->n = 0;
    for (int i = 0; i < c->sm->n; i++) {
        slog_t *l = c->sm->streams[i]->log;
        uint64_t failures, last = slog_last(l, &failures);
        if (slog_committed(l) >= last)
            continue;
        if (d->n == BARRIER_MAX)
            return d->n; /* (more streams than slots: the last slot's stream decides late) */
        snprintf(d->b[d->n].stream, STREAM_NAME_MAX, "%s", c->sm->streams[i]->cfg.name);
        d->b[d->n].upto = last;
        d->b[d->n].failures = failures;
        d->n++;
    }
    return d->n;
}

/* 1: durable, 0: not yet, -1: never (the stream failed meanwhile). */
static int barrier_state(consumer_t *c, const deferred_ack_t *d)
{
    for (int k = 0; k < d->n; k++) {
        stream_t *st = streams_find(c->sm, d->b[k].stream, strlen(d->b[k].stream));
        if (!st)
            continue; /* closed: its records were synced on the way */
        uint64_t failures;
        slog_last(st->log, &failures);
        if (failures != d->b[k].failures)
            return -1;
        if (slog_committed(st->log) < d->b[k].upto)
            return 0;
    }
    return 1;
}

int consumer_has_deferred(const consumer_t *c) { return c->ndeferred > 0; }

/* Records the acks whose barrier is durable now. */
static void release_deferred(consumer_t *c)
{
    size_t keep = 0;
    for (size_t i = 0; i < c->ndeferred; i++) {
        deferred_ack_t *d = &c->deferred[i];
        pend_t *p = pend_get(c, d->seq);
        int state = p && p->deliveries == d->deliveries ? barrier_state(c, d) : -1;
        if (state == 0) {
            c->deferred[keep++] = *d;
            continue;
        }
        if (state > 0) {
            c->acked++;
            done(c, p);
        }
    }
    c->ndeferred = keep;
}

static void handler_ack(consumer_t *c, pend_t *p)
{
    deferred_ack_t d;
    if (!take_barrier(c, &d)) {
        c->acked++;
        done(c, p);
        return;
    }
    if (c->ndeferred == c->capdeferred) {
        size_t nc = c->capdeferred ? c->capdeferred * 2 : 64;
        deferred_ack_t *nd = realloc(c->deferred, nc * sizeof *nd);
        if (!nd)
            return; /* not recorded: redelivered after ack_wait */
        c->deferred = nd;
        c->capdeferred = nc;
    }
    d.seq = p->seq;
    d.deliveries = p->deliveries;
    c->deferred[c->ndeferred++] = d;
}

/* Hands the gathered events to the Lua handlers when the batch is full or
 * has waited long enough (force: now), and acts on what they said. */
static void call_handlers(consumer_t *c, int force)
{
    if (!c->nbq || !c->sm->hooks.handle)
        return;
    if (!force && c->nbq < (size_t)c->batch && mono_ns() - c->bq_since < (int64_t)(c->wait * 1e9))
        return;
    if (c->sm->hooks.busy && c->sm->hooks.busy(c->sm->hooks.ctx))
        return;
    size_t n = c->nbq;
    proto_msg_t *m = calloc(n, sizeof *m);
    uint32_t *dl = calloc(n, sizeof *dl);
    stream_verdict_t *v = calloc(n, sizeof *v);
    if (!m || !dl || !v) {
        free(m), free(dl), free(v);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const slog_rec_t *r = (const slog_rec_t *)c->bq_bytes[i];
        pend_t *p = pend_get(c, c->bq[i]);
        m[i].subject = r->subject;
        m[i].subject_len = r->subject_len;
        m[i].hdr = r->hdr;
        m[i].hdr_len = r->hdr_len;
        m[i].payload = r->payload;
        m[i].payload_len = r->payload_len;
        dl[i] = p ? p->deliveries : 1;
    }
    c->nbq = 0;
    c->handler_calls++;
    c->sm->hooks.handle(c->sm->hooks.ctx, c->cfg.stream, c->cfg.name, m, c->bq, dl, (int)n, v);
    for (size_t i = 0; i < n; i++) {
        pend_t *p = pend_get(c, c->bq[i]);
        free(c->bq_bytes[i]);
        if (!p)
            continue;
        if (v[i].error[0]) {
            free(p->error);
            p->error = strdup(v[i].error);
        }
        switch (v[i].kind) {
        case VERDICT_ACK:
            handler_ack(c, p);
            break;
        case VERDICT_NAK:
            nak(c, p, delay_ns(v[i].delay, 1e9));
            break;
        case VERDICT_PROGRESS:
            schedule(c, p, 0, mono_ns() + (int64_t)(c->cfg.ack_wait * 1e9));
            break;
        default:
            c->termed++;
            dead_letter(c, p, "term");
            done(c, p);
        }
    }
    free(m), free(dl), free(v);
}

/* Redelivers what is due now, and sends timed-out messages to their next
 * step (backoff, or dead letter after max_deliver). */
static void run_due(consumer_t *c)
{
    int64_t now = mono_ns();
    int interest = -1;
    while (c->nheap && c->heap[0].due <= now) {
        hent_t e = heap_pop(c);
        pend_t *p = pend_get(c, e.seq);
        if (!p || p->gen != e.gen)
            continue; /* stale entry */
        if (!p->waiting) { /* no ack within ack_wait */
            c->expired++;
            if (c->cfg.max_deliver > 0 && p->deliveries >= (uint64_t)c->cfg.max_deliver) {
                dead_letter(c, p, "max_deliver");
                done(c, p);
                continue;
            }
            int step = p->deliveries ? (int)p->deliveries - 1 : 0;
            double delay = c->cfg.nbackoff ? c->cfg.backoff[step < c->cfg.nbackoff ? step : c->cfg.nbackoff - 1] : 0;
            if (delay > 0) {
                schedule(c, p, 1, now + (int64_t)(delay * 1e9));
                continue;
            }
        }
        if (interest < 0)
            interest = can_deliver(c);
        if (!interest) { /* nobody to deliver to: look again later */
            schedule(c, p, 1, now + 100000000);
            continue;
        }
        redeliver(c, p);
    }
}

/* A push consumer's 100 Idle Heartbeat when it sent nothing for
 * idle_heartbeat seconds (with nats-server's headers). */
static void push_heartbeat(consumer_t *c, int64_t now)
{
    if (now - c->last_sent < (int64_t)(c->cfg.idle_heartbeat * 1e9))
        return;
    char h[400];
    int n = snprintf(h, sizeof h, "Nats-Last-Consumer: %" PRIu64 "\r\nNats-Last-Stream: %" PRIu64 "\r\n", c->dseq,
                     c->last_sseq);
    if (c->fc_id) /* the outstanding request again: the client answers it (it may have missed it) */
        snprintf(h + n, sizeof h - (size_t)n, "Nats-Consumer-Stalled: $JS.FC.%s.%s.%" PRIu64 "\r\n", c->st->cfg.name,
                 c->cfg.name, c->fc_id);
    pull_status(c->sm->srv, c->cfg.deliver, strlen(c->cfg.deliver), "100 Idle Heartbeat", h);
    c->last_sent = now;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    consumer_t *c = arg;
    int64_t now = mono_ns();
    if (c->cfg.pull) {
        if (c->pulls.n) {
            c->seen = now;
            pullq_tick(&c->pulls, c->sm->srv, now, at_end(c), c->dseq, c->last_sseq);
        }
    } else if (c->cfg.deliver[0] && server_has_interest(c->sm->srv, c->cfg.deliver, strlen(c->cfg.deliver))) {
        c->seen = now;
        if (c->cfg.idle_heartbeat > 0)
            push_heartbeat(c, now);
    }
    if (!c->cfg.deliver[0] && !c->batch && !c->cfg.pull)
        return;
    if (!can_deliver(c))
        return;
    if (c->nbq)
        call_handlers(c, 0);
    pump_now(c);
}

/* ---- acks ------------------------------------------------------------------- */

static void nak(consumer_t *c, pend_t *p, int64_t delay)
{
    c->naked++;
    if (c->cfg.max_deliver > 0 && p->deliveries >= (uint64_t)c->cfg.max_deliver) {
        dead_letter(c, p, "max_deliver");
        done(c, p);
        return;
    }
    if (delay < 0) {
        int step = p->deliveries ? (int)p->deliveries - 1 : 0;
        delay = c->cfg.nbackoff
                       ? (int64_t)(c->cfg.backoff[step < c->cfg.nbackoff ? step : c->cfg.nbackoff - 1] * 1e9)
                       : 0;
    }
    schedule(c, p, 1, mono_ns() + delay);
}

/* "-NAK", "-NAK {\"delay\": ns}" or "-NAK 2s" (the delay), -1 when none. */
static int64_t nak_delay(const char *b, size_t n)
{
    char tmp[256];
    if (n <= 4)
        return -1;
    snprintf(tmp, sizeof tmp, "%.*s", (int)(n - 4), b + 4);
    char *s = tmp;
    while (*s == ' ')
        s++;
    if (*s == '{') {
        cJSON *j = cJSON_Parse(s);
        const cJSON *d = j ? cJSON_GetObjectItemCaseSensitive(j, "delay") : NULL;
        int64_t v = cJSON_IsNumber(d) ? delay_ns(d->valuedouble, 1) : -1;
        cJSON_Delete(j);
        return v;
    }
    char *end;
    double v = strtod(s, &end);
    if (end == s)
        return -1;
    if (!strcmp(end, "ms")) return delay_ns(v, 1e6);
    if (!strcmp(end, "s") || !*end) return delay_ns(v, 1e9);
    if (!strcmp(end, "m")) return delay_ns(v, 60e9);
    return -1;
}

/* ack_policy all: an ack of seq acks every message up to it. */
static void ack_upto(consumer_t *c, uint64_t seq)
{
    uint64_t *seqs = NULL;
    size_t n = 0;
    if (c->npending && !(seqs = malloc(c->npending * sizeof *seqs)))
        return;
    for (size_t i = 0; i < c->pending.cap; i++) {
        pend_t *p = c->pending.slots[i].key ? c->pending.slots[i].val : NULL;
        if (p && p->seq <= seq && p->deliveries && n < c->npending)
            seqs[n++] = p->seq;
    }
    for (size_t i = 0; i < n; i++) {
        pend_t *p = pend_get(c, seqs[i]);
        if (p) {
            c->acked++;
            done(c, p);
        }
    }
    free(seqs);
}

static consumer_t *find_consumer(streams_t *sm, const char *s, size_t sl, const char *name, size_t nl)
{
    for (int i = 0; i < sm->nc; i++) {
        consumer_t *c = sm->consumers[i];
        if (strlen(c->cfg.name) == nl && !memcmp(c->cfg.name, name, nl) && strlen(c->cfg.stream) == sl &&
            !memcmp(c->cfg.stream, s, sl))
            return c;
    }
    return NULL;
}

void consumers_on_flow_control(void *ctx, const proto_msg_t *m)
{
    streams_t *sm = ctx;
    /* $JS.FC.<stream>.<consumer>.<id> */
    const char *s = m->subject + 7, *end = m->subject + m->subject_len;
    const char *d1 = m->subject_len > 7 ? memchr(s, '.', (size_t)(end - s)) : NULL;
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
    if (!d2)
        return;
    consumer_t *c = find_consumer(sm, s, (size_t)(d1 - s), d1 + 1, (size_t)(d2 - d1 - 1));
    char num[24];
    snprintf(num, sizeof num, "%.*s", (int)((size_t)(end - d2 - 1) < 23 ? (size_t)(end - d2 - 1) : 23), d2 + 1);
    if (!c || !c->fc_id || strtoull(num, NULL, 10) != c->fc_id)
        return; /* an answer to an older request, or to none */
    if (c->fc_window < FC_WINDOW_MAX)
        c->fc_window = c->fc_window ? c->fc_window * 2 : FC_WINDOW_START * 2;
    c->fc_bytes = c->fc_bytes > c->fc_size ? c->fc_bytes - c->fc_size : 0;
    c->fc_size = 0;
    c->fc_id = 0;
    consumer_pump(c);
}

void consumers_on_ack(void *ctx, const proto_msg_t *m)
{
    streams_t *sm = ctx;
    /* $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> */
    const char *tok[16];
    size_t tl[16];
    int nt = 0;
    const char *p = m->subject, *end = m->subject + m->subject_len;
    while (p < end && nt < 16) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        tok[nt] = p;
        tl[nt] = dot ? (size_t)(dot - p) : (size_t)(end - p);
        nt++;
        p = dot ? dot + 1 : end;
    }
    int base = nt == 9 ? 2 : nt >= 11 ? 4 : -1; /* the v2 layout has domain and account hash first */
    if (base < 0)
        return;
    consumer_t *c = find_consumer(sm, tok[base], tl[base], tok[base + 1], tl[base + 1]);
    if (!c)
        return;
    char num[24];
    snprintf(num, sizeof num, "%.*s", (int)(tl[base + 3] < 23 ? tl[base + 3] : 23), tok[base + 3]);
    uint64_t seq = strtoull(num, NULL, 10);
    pend_t *pd = pend_get(c, seq);
    const char *b = m->payload;
    size_t n = m->payload_len;
    int ack = n == 0 || (n >= 4 && (!memcmp(b, "+ACK", 4) || !memcmp(b, "+NXT", 4)));
    if (ack && (pd || c->cfg.ack_policy == ACK_ALL))
        c->last_ack = slog_now_ns();
    if (ack && c->cfg.ack_policy == ACK_ALL)
        ack_upto(c, seq);
    else if (pd) {
        if (ack) {
            c->acked++;
            done(c, pd);
        } else if (n >= 4 && !memcmp(b, "-NAK", 4)) {
            nak(c, pd, nak_delay(b, n));
        } else if (n >= 4 && !memcmp(b, "+WPI", 4)) {
            if (!pd->waiting)
                schedule(c, pd, 0, mono_ns() + (int64_t)(c->cfg.ack_wait * 1e9));
        } else if (n >= 5 && !memcmp(b, "+TERM", 5)) {
            c->termed++;
            const char *r = b + 5;
            size_t rl = n - 5;
            while (rl && *r == ' ')
                r++, rl--;
            free(pd->error);
            pd->error = rl ? util_mem_dup(r, rl) : NULL;
            dead_letter(c, pd, "term");
            done(c, pd);
        }
    }
    if (m->reply && m->reply_len) {
        if (c->nreplies == c->capreplies) {
            size_t nc = c->capreplies ? c->capreplies * 2 : 16;
            char **nr = realloc(c->replies, nc * sizeof *nr);
            if (!nr)
                return;
            c->replies = nr;
            c->capreplies = nc;
        }
        char *r = util_mem_dup(m->reply, m->reply_len);
        if (r)
            c->replies[c->nreplies++] = r;
        event_active(c->flush_ev, EV_TIMEOUT, 0);
    }
    consumer_pump(c);
}

/* ---- opening: the state from disk ------------------------------------------ */

static int cmp_u64(const void *a, const void *b);

/* deliver_policy last_per_subject: the last sequence of each subject the
 * filters take, in stream order, into c->lps. */
static void last_per_subject(consumer_t *c, const slog_info_t *in)
{
    dict_t last;
    dict_init(&last);
    for (uint64_t q = in->first_seq; q && q <= in->last_seq; q++) {
        slog_rec_t r;
        if (slog_read(c->st->log, q, &r, &c->sm->rbuf, &c->sm->rcap) <= 0 || !matches(c, r.subject, r.subject_len))
            continue;
        uint64_t *v = dict_get(&last, r.subject, r.subject_len);
        if (!v && (v = malloc(sizeof *v)) && dict_put(&last, r.subject, r.subject_len, v) < 0) {
            free(v);
            v = NULL;
        }
        if (v)
            *v = q;
    }
    free(c->lps);
    c->lps = last.count ? malloc(last.count * sizeof *c->lps) : NULL;
    c->nlps = c->lps_at = 0;
    for (size_t i = 0; c->lps && i < last.cap; i++)
        if (last.slots[i].key)
            c->lps[c->nlps++] = *(uint64_t *)last.slots[i].val;
    if (c->nlps)
        qsort(c->lps, c->nlps, sizeof *c->lps, cmp_u64);
    dict_clear(&last, free);
}

static uint64_t start_seq(consumer_t *c)
{
    slog_info_t in;
    slog_get_info(c->st->log, &in);
    switch (c->cfg.deliver_policy) {
    case DELIVER_NEW:
        return in.last_seq + 1;
    case DELIVER_LAST: {
        /* The last event the filter matches. */
        size_t fl = strlen(c->cfg.filter);
        if (!filtered(c) || !in.last_seq)
            return in.last_seq ? in.last_seq : 1;
        if (!c->cfg.nfilters && subject_valid_literal(c->cfg.filter, fl)) {
            uint64_t q = slog_subject_last(c->st->log, c->cfg.filter, fl);
            return q ? q : in.last_seq + 1;
        }
        for (uint64_t q = in.last_seq; q >= in.first_seq && q > 0; q--) {
            slog_rec_t r;
            if (slog_read(c->st->log, q, &r, &c->sm->rbuf, &c->sm->rcap) > 0 && matches(c, r.subject, r.subject_len))
                return q;
        }
        return in.last_seq + 1;
    }
    case DELIVER_LAST_PER_SUBJECT:
        last_per_subject(c, &in);
        return in.last_seq + 1;
    case DELIVER_BY_START_SEQ:
        return c->cfg.start_seq;
    case DELIVER_BY_START_TIME:
        return slog_seq_at_time(c->st->log, c->cfg.start_time);
    default:
        return in.first_seq ? in.first_seq : 1;
    }
}

/* Reads the snapshot.  1: loaded, 0: none, -1: damaged. */
static int load_snapshot(consumer_t *c, uint64_t **parked, size_t *nparked)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/state", c->dir);
    int fd = vfs_open(path, O_RDONLY, 0);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    struct stat sb;
    char *b = NULL;
    int ok = -1;
    if (fstat(fd, &sb) == 0 && sb.st_size >= 56 && sb.st_size < (1 << 30) && (b = malloc((size_t)sb.st_size)) &&
        vfs_pread(fd, b, (size_t)sb.st_size, 0) == sb.st_size) {
        size_t len = (size_t)sb.st_size;
        uint64_t crc, v[5];
        memcpy(&crc, b + len - 8, 8);
        memcpy(v, b, sizeof v);
        if (!memcmp(b, "TIDECST1", 8) && crc == crc32c(0, b, len - 8) && 40 + v[4] * 16 + 8 + 8 <= len) {
            c->gen = v[1];
            c->next_seq = v[2];
            c->dseq = v[3];
            size_t o = 40;
            for (uint64_t i = 0; i < v[4]; i++, o += 16) {
                uint64_t s, d;
                memcpy(&s, b + o, 8);
                memcpy(&d, b + o + 8, 8);
                pend_t *p = pend_new(c, s, NULL);
                if (p)
                    p->deliveries = (uint32_t)d;
            }
            uint64_t np;
            memcpy(&np, b + o, 8);
            o += 8;
            if (o + np * 8 + 8 <= len) {
                *parked = malloc((np ? np : 1) * sizeof **parked);
                for (uint64_t i = 0; *parked && i < np; i++, o += 8)
                    memcpy(&(*parked)[(*nparked)++], b + o, 8);
                ok = 1;
            }
        }
    }
    free(b);
    vfs_close(fd);
    return ok;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void add_parked(uint64_t **v, size_t *n, size_t *cap, uint64_t s)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        uint64_t *nv = realloc(*v, *cap * sizeof **v);
        if (!nv)
            return;
        *v = nv;
    }
    (*v)[(*n)++] = s;
}

static void del_parked(uint64_t *v, size_t *n, uint64_t s)
{
    for (size_t i = 0; i < *n; i++)
        if (v[i] == s) {
            v[i] = v[--*n];
            return;
        }
}

/* What load_state gathers from the ack log. */
typedef struct ack_replay {
    uint64_t replayed, bad, torn;   /* records applied, damaged, bytes of a cut record at the end */
    dict_t acked;                   /* sequences the log says are done */
    uint64_t *parked;               /* parked behind their key, sorted once replayed */
    size_t nparked, capparked;
} ack_replay_t;

/* Applies one record of the ack log: D delivered (n times), A done, P parked. */
static void apply_ack_op(consumer_t *c, char op, uint32_t n, uint64_t seq, ack_replay_t *r)
{
    pend_t *p = pend_get(c, seq);
    if (op == 'D') {
        if (!p)
            p = pend_new(c, seq, NULL);
        if (p)
            p->deliveries = n;
        del_parked(r->parked, &r->nparked, seq);
        if (seq >= c->next_seq)
            c->next_seq = seq + 1;
        c->dseq++;
    } else if (op == 'A') {
        if (p) {
            dict_remove(&c->pending, (const char *)&seq, 8);
            c->npending--;
            free(p);
        }
        del_parked(r->parked, &r->nparked, seq);
        dict_put(&r->acked, (const char *)&seq, 8, c);
    } else if (op == 'P') {
        add_parked(&r->parked, &r->nparked, &r->capparked, seq);
        if (seq >= c->next_seq)
            c->next_seq = seq + 1;
    }
}

/* Replays acks.log of the snapshot's generation (snap: load_snapshot's
 * answer) into the pending set and r.  A log with a damaged header is
 * replayed too: a stale log can only make events be delivered again, never
 * lose one. */
static void replay_ack_log(consumer_t *c, int snap, ack_replay_t *r)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/acks.log", c->dir);
    int fd = vfs_open(path, O_RDONLY, 0);
    if (fd < 0 && snap > 0)
        log_warn("consumer %s: %s is missing: events acknowledged since the last snapshot may be delivered again",
                 c->cfg.name, path);
    if (fd >= 0) {
        char h[16];
        uint64_t lgen = 0;
        int hdr_ok = vfs_pread(fd, h, 16, 0) == 16 && !memcmp(h, "TIDEACK1", 8);
        if (hdr_ok)
            memcpy(&lgen, h + 8, 8);
        else
            log_warn("consumer %s: the header of %s is damaged; its records are applied anyway", c->cfg.name, path);
        if (hdr_ok && snap == 0 && lgen > 0)
            log_warn("consumer %s: its state snapshot is missing; rebuilding from %s and the deliver policy "
                     "(events acknowledged earlier may be delivered again)", c->cfg.name, path);
        if (hdr_ok && snap > 0 && lgen < c->gen) {
            log_info("consumer %s: %s is older than the snapshot: not applied", c->cfg.name, path);
        } else {
            if (hdr_ok && snap > 0 && lgen > c->gen)
                log_warn("consumer %s: the snapshot is older than %s: events acknowledged in between may be "
                         "delivered again", c->cfg.name, path);
            if (hdr_ok && snap <= 0)
                c->gen = lgen;
            char rec[OP_LEN * 256];
            off_t off = 16;
            ssize_t got;
            while ((got = vfs_pread(fd, rec, sizeof rec, off)) > 0) {
                if (got < OP_LEN) {
                    r->torn = (uint64_t)got;
                    break;
                }
                for (ssize_t i = 0; i + OP_LEN <= got; i += OP_LEN) {
                    char *op = rec + i;
                    uint32_t crc, n;
                    uint64_t seq;
                    memcpy(&crc, op + 13, 4);
                    memcpy(&n, op + 1, 4);
                    memcpy(&seq, op + 5, 8);
                    if (crc != crc32c(0, op, 13)) {
                        r->bad++;
                        continue;
                    }
                    r->replayed++;
                    apply_ack_op(c, op[0], n, seq, r);
                }
                off += got - got % OP_LEN;
            }
        }
        vfs_close(fd);
    }
}

/* Whatever the damage, no event is lost: an event the consumer passed
 * (from base_next to next_seq) that is neither in flight, parked nor
 * acknowledged according to what survived is delivered again. */
static void refill_lost(consumer_t *c, uint64_t base_next, ack_replay_t *ar)
{
    if (ar->nparked)
        qsort(ar->parked, ar->nparked, sizeof *ar->parked, cmp_u64);
    uint64_t refilled = 0;
    size_t fl = strlen(c->cfg.filter);
    for (uint64_t q = base_next; q < c->next_seq; q++) {
        if (pend_get(c, q) || dict_get(&ar->acked, (const char *)&q, 8) ||
            (ar->nparked && bsearch(&q, ar->parked, ar->nparked, sizeof *ar->parked, cmp_u64)))
            continue;
        slog_rec_t r;
        if (slog_read(c->st->log, q, &r, &c->sm->rbuf, &c->sm->rcap) <= 0 ||
            (fl && !subject_matches(c->cfg.filter, fl, r.subject, r.subject_len)))
            continue;
        if (pend_new(c, q, NULL))
            refilled++;
    }
    if (refilled)
        log_warn("consumer %s: %" PRIu64 " event%s whose state was lost will be delivered again", c->cfg.name,
                 refilled, refilled == 1 ? "" : "s");
}

/* Schedules what was in flight before the restart for delivery again,
 * with the keys of ordered_by, and parks the parked events behind them. */
static void resume_in_flight(consumer_t *c, const uint64_t *parked, size_t np)
{
    int64_t now = mono_ns();
    for (size_t i = 0; i < c->pending.cap; i++) {
        pend_t *p = c->pending.slots[i].key ? c->pending.slots[i].val : NULL;
        if (!p)
            continue;
        slog_rec_t r;
        if (c->cfg.ordered_by[0] && slog_read(c->st->log, p->seq, &r, &c->sm->rbuf, &c->sm->rcap) > 0 &&
            (p->key = key_of(c, &r)) && !dict_get(&c->keys, p->key, strlen(p->key))) {
            keyq_t *q = calloc(1, sizeof *q);
            if (q && dict_put(&c->keys, p->key, strlen(p->key), q) < 0)
                free(q);
        }
        schedule(c, p, 1, now); /* unacked before the restart: deliver again */
    }
    for (size_t i = 0; i < np; i++) {
        slog_rec_t r;
        if (slog_read(c->st->log, parked[i], &r, &c->sm->rbuf, &c->sm->rcap) <= 0)
            continue;
        char *key = key_of(c, &r);
        keyq_t *q = key ? dict_get(&c->keys, key, strlen(key)) : NULL;
        if (q) {
            if (keyq_push(q, parked[i]) == 0)
                c->nparked++;
            free(key);
            continue;
        }
        if (key && (q = calloc(1, sizeof *q)) && dict_put(&c->keys, key, strlen(key), q) < 0) {
            free(q);
        }
        pend_t *p = pend_new(c, parked[i], key);
        if (p)
            schedule(c, p, 1, now);
    }
}

static int load_state(consumer_t *c)
{
    ack_replay_t r;
    memset(&r, 0, sizeof r);
    dict_init(&r.acked);
    int snap = load_snapshot(c, &r.parked, &r.nparked);
    r.capparked = r.nparked;
    if (snap < 0) {
        log_warn("consumer %s: its state snapshot is damaged; rebuilding from the ack log and the deliver policy "
                 "(events acknowledged before the last snapshot may be delivered again)", c->cfg.name);
        dict_clear(&c->pending, free);
        dict_init(&c->pending);
        c->npending = 0;
        r.nparked = 0;
    }
    if (snap <= 0) {
        c->next_seq = start_seq(c);
        c->gen = 0;
    }
    uint64_t base_next = c->next_seq;
    replay_ack_log(c, snap, &r);
    if (r.bad)
        log_warn("consumer %s: skipped %" PRIu64 " damaged record%s in its ack log", c->cfg.name, r.bad,
                 r.bad == 1 ? "" : "s");
    if (r.torn)
        log_warn("consumer %s: its ack log ends in the middle of a record (%" PRIu64 " bytes ignored)", c->cfg.name,
                 r.torn);
    refill_lost(c, base_next, &r);
    dict_clear(&r.acked, NULL);
    resume_in_flight(c, r.parked, r.nparked);
    free(r.parked);
    if (c->npending || r.replayed || snap > 0)
        log_info("consumer %s: resumed at sequence %" PRIu64 " with %zu unacknowledged", c->cfg.name, c->next_seq,
                 c->npending);
    return 0;
}

/* c->dir: <data>/consumers/<name> for a declared consumer,
 * <data>/jsapi/consumers/<stream>/<name> for one made through the API
 * (names are per stream there), made when missing; none for an
 * ephemeral.  0, or -1 with err set. */
static int state_dir(consumer_t *c, char *err, size_t errsz)
{
    if (c->cfg.api && c->cfg.ephemeral)
        return 0;
    if (c->cfg.api)
        snprintf(c->dir, sizeof c->dir, "%.3900s/jsapi/consumers/%s/%s", c->sm->dir, c->cfg.stream, c->cfg.name);
    else
        snprintf(c->dir, sizeof c->dir, "%.4000s/consumers/%s", c->sm->dir, c->cfg.name);
    if (util_mkdirs(c->dir) < 0) {
        snprintf(err, errsz, "cannot create %s: %s", c->dir, strerror(errno));
        return -1;
    }
    return 0;
}

const char *consumer_dir(const consumer_t *c) { return c->dir; }

int consumer_pull(consumer_t *c, const consumer_pull_req_t *req, const char *reply, size_t rlen)
{
    if (!c->cfg.pull)
        return -1;
    c->seen = mono_ns();
    if (req->no_wait && !req->expires && pending_count(c) == 0 && at_end(c)) {
        pull_status(c->sm->srv, reply, rlen, "404 No Messages", "");
        return 0;
    }
    int rc = pullq_add(&c->pulls, c->cfg.max_waiting, req, reply, rlen, c->seen);
    if (rc == -1)
        pull_status(c->sm->srv, reply, rlen, "409 Exceeded MaxWaiting", "");
    else if (rc < 0)
        log_error("consumer %s: out of memory holding a pull request", c->cfg.name);
    else
        consumer_pump(c);
    return 0;
}

void consumer_end_pulls(consumer_t *c, const char *status) { pullq_clear(&c->pulls, c->sm->srv, status); }

consumer_t *consumer_open(streams_t *sm, stream_t *st, const consumer_cfg_t *cfg, char *err, size_t errsz)
{
    consumer_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    c->cfg = *cfg;
    c->sm = sm;
    c->st = st;
    c->logfd = -1;
    dict_init(&c->pending);
    dict_init(&c->keys);
    c->seen = mono_ns();
    if (state_dir(c, err, errsz) < 0) {
        free(c);
        return NULL;
    }
    c->flush_ev = event_new(sm->base, -1, 0, on_flush, c);
    c->tick_ev = event_new(sm->base, -1, EV_PERSIST, on_tick, c);
    c->pump_ev = event_new(sm->base, -1, 0, on_pump, c);
    if (!c->flush_ev || !c->tick_ev || !c->pump_ev) {
        snprintf(err, errsz, "cannot set up events");
        consumer_close(c);
        return NULL;
    }
    if (cfg->api && cfg->ephemeral) {
        c->next_seq = start_seq(c); /* nothing on disk: it starts afresh */
        goto started;
    }
    load_state(c);
    snapshot(c); /* a new generation: the state as loaded, and an empty log */
    if (c->logfd < 0) {
        snprintf(err, errsz, "cannot write its state in %s: %s", c->dir, strerror(errno));
        consumer_close(c);
        return NULL;
    }
started:;
    c->opened_next = c->next_seq;
    c->acked_once = c->dseq > 0; /* (a consumer with a past has its floor in its state) */
    struct timeval tv = {0, TICK_MS * 1000};
    event_add(c->tick_ev, &tv);
    return c;
}

void consumer_update(consumer_t *c, const consumer_cfg_t *cfg)
{
    consumer_cfg_t keep = c->cfg;
    c->cfg = *cfg;
    /* Where it starts and how keys are taken are fixed at creation. */
    c->cfg.deliver_policy = keep.deliver_policy;
    c->cfg.start_seq = keep.start_seq;
    c->cfg.start_time = keep.start_time;
    memcpy(c->cfg.ordered_by, keep.ordered_by, sizeof c->cfg.ordered_by);
    if (strcmp(keep.ordered_by, cfg->ordered_by))
        log_warn("consumer %s: ordered_by changes only for a new consumer", c->cfg.name);
    /* What is pending was counted with the old filters: count afresh. */
    int same = !strcmp(keep.filter, c->cfg.filter) && keep.nfilters == c->cfg.nfilters;
    for (int i = 0; same && i < c->cfg.nfilters; i++)
        same = !strcmp(keep.filters[i], c->cfg.filters[i]);
    if (!same) {
        c->num_pending = 0;
        c->counted_to = c->next_seq ? c->next_seq - 1 : 0;
    }
}

void consumer_close(consumer_t *c)
{
    if (!c)
        return;
    if (c->logfd >= 0)
        flush_state(c);
    if (c->logfd >= 0)
        vfs_close(c->logfd);
    if (c->flush_ev)
        event_free(c->flush_ev);
    if (c->tick_ev)
        event_free(c->tick_ev);
    if (c->pump_ev)
        event_free(c->pump_ev);
    for (size_t i = 0; i < c->nbq; i++)
        free(c->bq_bytes[i]);
    free(c->bq);
    free(c->bq_bytes);
    free(c->deferred);
    for (size_t i = 0; i < c->pending.cap; i++) {
        pend_t *p = c->pending.slots[i].key ? c->pending.slots[i].val : NULL;
        if (p) {
            free(p->key);
            free(p->error);
            free(p);
        }
    }
    dict_clear(&c->pending, NULL);
    dict_clear(&c->keys, keyq_free);
    for (size_t i = 0; i < c->nreplies; i++)
        free(c->replies[i]);
    free(c->replies);
    pullq_clear(&c->pulls, NULL, NULL);
    free(c->lps);
    free(c->heap);
    free(c->obuf);
    free(c->cbuf);
    free(c);
}

/* ---- views ------------------------------------------------------------------ */

cJSON *consumer_json(consumer_t *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", c->cfg.name);
    cJSON_AddStringToObject(o, "stream", c->cfg.stream);
    if (c->cfg.filter[0])
        cJSON_AddStringToObject(o, "filter", c->cfg.filter);
    if (c->cfg.deliver[0])
        cJSON_AddStringToObject(o, "deliver", c->cfg.deliver);
    if (c->cfg.queue[0])
        cJSON_AddStringToObject(o, "queue", c->cfg.queue);
    if (c->cfg.dead_letter[0])
        cJSON_AddStringToObject(o, "dead_letter", c->cfg.dead_letter);
    if (c->cfg.ordered_by[0])
        cJSON_AddStringToObject(o, "ordered_by", c->cfg.ordered_by);
    json_add_uint(o, "next_seq", c->next_seq);
    json_add_uint(o, "num_pending", pending_count(c));
    json_add_uint(o, "num_ack_pending", c->npending);
    json_add_uint(o, "num_parked", c->nparked);
    json_add_uint(o, "delivered", c->delivered);
    json_add_uint(o, "redelivered", c->redelivered);
    json_add_uint(o, "acked", c->acked);
    json_add_uint(o, "naked", c->naked);
    json_add_uint(o, "terminated", c->termed);
    json_add_uint(o, "ack_timeouts", c->expired);
    json_add_uint(o, "dead_lettered", c->dead_lettered);
    json_add_uint(o, "given_up", c->given_up);
    json_add_uint(o, "dead_letters_lost", c->dead_letters_lost);
    cJSON_AddNumberToObject(o, "ack_wait", c->cfg.ack_wait);
    json_add_int(o, "max_deliver", c->cfg.max_deliver);
    json_add_int(o, "max_ack_pending", c->cfg.max_ack_pending);
    return o;
}

void consumer_get_info(consumer_t *c, consumer_info_t *out)
{
    memset(out, 0, sizeof *out);
    out->cfg = &c->cfg;
    out->next_seq = c->next_seq;
    out->pending = pending_count(c);
    out->in_flight = c->npending;
    out->delivered = c->delivered;
    out->redelivered = c->redelivered;
    out->acked = c->acked;
    out->dead_lettered = c->dead_lettered;
    out->dead_letters_lost = c->dead_letters_lost;
    out->dseq = c->dseq;
    /* With nothing left to deliver, the consumer has looked at everything
     * before next_seq (as nats-server's delivered stream sequence says;
     * after a restart, too). */
    uint64_t looked = out->pending == 0 && c->next_seq ? c->next_seq - 1 : 0;
    out->last_sseq = c->last_sseq > looked ? c->last_sseq : looked;
    out->num_waiting = (int)c->pulls.n;
    out->last_active_ns = c->last_active;
    out->last_ack_ns = c->last_ack;
    out->idle_ns = can_deliver(c) || (c->cfg.deliver[0] && server_has_interest(c->sm->srv, c->cfg.deliver,
                                                                               strlen(c->cfg.deliver)))
                       ? 0
                       : mono_ns() - c->seen;
    const pend_t *low = NULL;
    for (size_t i = 0; i < c->pending.cap; i++) {
        const pend_t *p = c->pending.slots[i].key ? c->pending.slots[i].val : NULL;
        if (p && p->deliveries > 1)
            out->num_redelivered++;
        if (p && (!low || p->seq < low->seq))
            low = p;
    }
    /* Everything below the oldest in flight is done; with none in flight,
     * everything delivered. */
    out->floor_sseq = low ? low->seq - 1 : out->last_sseq;
    out->floor_dseq = low ? (low->dseq ? low->dseq - 1 : c->dseq) : c->dseq;
    if (!c->acked_once && low) { /* nothing acked yet: the floor is where it started (as nats-server) */
        out->floor_sseq = c->opened_next ? c->opened_next - 1 : 0;
        out->floor_dseq = 0;
    }
}

void consumer_metrics(consumer_t *const *cs, int n, char **buf, size_t *len, size_t *cap)
{
    /* The text format wants every sample of a metric together, after its
     * one HELP and TYPE: metric by metric, consumer by consumer. */
    static const char *const m[][3] = {
        {"tide_consumer_pending", "gauge", "Stored events the consumer has not delivered yet."},
        {"tide_consumer_ack_pending", "gauge", "Events delivered and waiting for their ack."},
        {"tide_consumer_delivered_total", "counter", "Deliveries, redeliveries included."},
        {"tide_consumer_redelivered_total", "counter", "Redeliveries (after an ack timeout or a NAK)."},
        {"tide_consumer_acked_total", "counter", "Events acknowledged."},
        {"tide_consumer_dead_lettered_total", "counter", "Events given up (max_deliver or +TERM)."},
        {"tide_consumer_dead_letters_lost_total", "counter",
         "Events given up whose dead letter reached no stream and no subscriber."},
    };
    for (size_t k = 0; k < sizeof m / sizeof m[0]; k++) {
        streams_buf_printf(buf, len, cap, "# HELP %s %s\n# TYPE %s %s\n", m[k][0], m[k][2], m[k][0], m[k][1]);
        for (int i = 0; i < n; i++) {
            consumer_t *c = cs[i];
            uint64_t v[] = {pending_count(c), c->npending,     c->delivered,
                            c->redelivered,   c->acked,        c->dead_lettered, c->dead_letters_lost};
            streams_buf_printf(buf, len, cap, "%s{stream=\"%s\",consumer=\"%s\"} %" PRIu64 "\n", m[k][0], c->cfg.stream,
                       c->cfg.name, v[k]);
        }
    }
}

/* ---- driving time (tide run --clock virtual) ------------------------------- */

/* When c next has work (see streams_next_due): now when it can deliver a
 * new event, hand over a full batch or record deferred acks; else the
 * earliest of its batch wait, its replay_original pacing and its deadlines
 * (the last only for handler consumers when handlers_only). */
static int64_t consumer_next_due(consumer_t *c, int64_t now, int handlers_only)
{
    int lua = !c->cfg.deliver[0] && !c->cfg.pull;
    if (c->cfg.pull || (handlers_only && !lua) || (lua && !c->batch) || !can_deliver(c))
        return INT64_MAX;
    if (c->ndeferred || (c->nbq && c->nbq >= (size_t)c->batch))
        return now;
    int64_t due = INT64_MAX;
    uint64_t park_max = (uint64_t)c->cfg.max_ack_pending * 8 + 1024;
    if ((c->lps_at < c->nlps || c->next_seq <= committed(c)) && (int64_t)c->npending < c->cfg.max_ack_pending &&
        c->nparked < park_max && !flow_control_stalled(c))
        due = c->cfg.replay_original && c->replay_due > now ? c->replay_due : now;
    if (c->nbq && c->bq_since + (int64_t)(c->wait * 1e9) < due)
        due = c->bq_since + (int64_t)(c->wait * 1e9);
    heap_clean_top(c);
    if (c->nheap && c->heap[0].due < due)
        due = c->heap[0].due;
    return due < now ? now : due;
}

int64_t streams_next_due(streams_t *sm, int64_t now, int handlers_only, const char **who)
{
    int64_t due = INT64_MAX;
    for (int i = 0; i < sm->nc; i++) {
        int64_t d = consumer_next_due(sm->consumers[i], now, handlers_only);
        if (d < due) {
            due = d;
            if (who)
                *who = sm->consumers[i]->cfg.name;
        }
    }
    return due;
}

void streams_run_due(streams_t *sm)
{
    int64_t now = mono_ns();
    for (int i = 0; i < sm->nc; i++)
        if (consumer_next_due(sm->consumers[i], now, 0) <= now)
            on_tick(-1, 0, sm->consumers[i]);
}
