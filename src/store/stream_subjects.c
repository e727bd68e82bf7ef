/* stream_subjects.c - a stream's per-subject index: the sequences stored
 * under each subject, for max_msgs_per_subject and Nats-Rollup (see
 * stream_internal.h).
 *
 * Only streams that need it keep one.  The index holds each subject's
 * sequences oldest first; entries whose record went some other way
 * (retention, a purge, a delete) are pruned when the list is next looked
 * at, so that nothing else has to tell the index.
 *
 * A rollup is a purge and is noted durably as one (slog_purge /
 * slog_delete).  The per-subject limit applies on every append, where a
 * synced note would cost a second sync per message: its drops are noted
 * unsynced (slog_forget), made durable by the next sync of the removed
 * file.  A crash can lose only the notes after the last such sync, and
 * then nothing removed durably came after them: opening the stream reads
 * its log once and applies the limit again (stream_subjects_sync), which
 * drops the same records, so what a client saw dropped stays dropped. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "stream_internal.h"

typedef struct subject_seqs {
    size_t n, cap;
    uint64_t seq[];
} subject_seqs_t;

static int wanted(const stream_t *st) { return st->cfg.max_msgs_per_subject > 0 || st->cfg.allow_rollup; }

void stream_subjects_free(stream_t *st)
{
    if (st->subjects_on)
        dict_clear(&st->subjects, free);
    st->subjects_on = 0;
}

/* Drops the sequences of q whose record is no longer in the log. */
static void prune(stream_t *st, subject_seqs_t *q)
{
    size_t k = 0;
    for (size_t i = 0; i < q->n; i++)
        if (slog_has(st->log, q->seq[i]))
            q->seq[k++] = q->seq[i];
    q->n = k;
}

/* Notes seq under the subject; returns the subject's list, or NULL when
 * out of memory (then the subject is not indexed until its next record). */
static subject_seqs_t *note(stream_t *st, const char *subj, size_t len, uint64_t seq)
{
    subject_seqs_t *q = dict_get(&st->subjects, subj, len), *g;
    if (q && q->n == q->cap)
        prune(st, q);
    if (!q || q->n == q->cap) {
        size_t cap = q ? q->cap * 2 : 2;
        if (!(g = realloc(q, sizeof *g + cap * sizeof g->seq[0]))) {
            free(dict_remove(&st->subjects, subj, len));
            return NULL;
        }
        if (!q)
            g->n = 0;
        g->cap = cap;
        if (dict_put(&st->subjects, subj, len, g) < 0) {
            if (q)
                dict_remove(&st->subjects, subj, len);
            free(g);
            return NULL;
        }
        q = g;
    }
    q->seq[q->n++] = seq;
    return q;
}

/* max_msgs_per_subject on q: its oldest records past the limit go. */
static void limit(stream_t *st, subject_seqs_t *q)
{
    uint64_t max = st->cfg.max_msgs_per_subject;
    if (!max || q->n <= max)
        return;
    prune(st, q);
    if (q->n <= max)
        return;
    size_t drop = q->n - (size_t)max;
    slog_forget(st->log, q->seq, drop);
    memmove(q->seq, q->seq + drop, (q->n - drop) * sizeof q->seq[0]);
    q->n -= drop;
}

void stream_subjects_sync(stream_t *st)
{
    slog_info_t in;
    slog_rec_t r;
    stream_subjects_free(st);
    if (!wanted(st))
        return;
    dict_init(&st->subjects);
    st->subjects_on = 1;
    slog_get_info(st->log, &in);
    for (uint64_t seq = in.first_seq; seq && seq <= in.last_seq; seq++) {
        if (!slog_has(st->log, seq) || slog_read(st->log, seq, &r, &st->sm->rbuf, &st->sm->rcap) <= 0)
            continue;
        subject_seqs_t *q = note(st, r.subject, r.subject_len, seq);
        if (q)
            limit(st, q);
    }
}

/* m's Nats-Rollup value ("sub", "all", or another), NULL for none. */
static const char *rollup_of(const proto_msg_t *m, size_t *len)
{
    return m->hdr ? proto_header_find(m->hdr, m->hdr_len, "Nats-Rollup", len) : NULL;
}

static int is_value(const char *v, size_t len, const char *want)
{
    return len == strlen(want) && !strncasecmp(v, want, len);
}

int stream_subjects_check_rollup(stream_t *st, const proto_msg_t *m, char *why, size_t n)
{
    size_t vl;
    const char *v = rollup_of(m, &vl);
    if (!v)
        return 0;
    if (!st->cfg.allow_rollup) {
        snprintf(why, n, "rollup not permitted");
        return -1;
    }
    if (is_value(v, vl, "sub") || is_value(v, vl, "all"))
        return 0;
    snprintf(why, n, "rollup value invalid: \"%.*s\"", (int)vl, v);
    return -1;
}

int stream_subjects_added(stream_t *st, const proto_msg_t *m, uint64_t seq)
{
    size_t vl;
    int rc = 0, e = 0;
    if (!st->subjects_on)
        return 0;
    const char *v = rollup_of(m, &vl);
    if (v && is_value(v, vl, "all")) {
        slog_purge(st->log, seq, &e);
        if (e) {
            log_error("stream %s: the rollup at sequence %" PRIu64 " could not purge: %s", st->cfg.name, seq,
                      strerror(e));
            rc = -1;
        }
        dict_clear(&st->subjects, free);
    }
    subject_seqs_t *q = note(st, m->subject, m->subject_len, seq);
    if (!q)
        return rc;
    if (v && is_value(v, vl, "sub") && q->n > 1) {
        prune(st, q);
        if (q->n > 1 && slog_delete(st->log, q->seq, q->n - 1) < 0) {
            log_error("stream %s: the rollup at sequence %" PRIu64 " could not purge its subject: %s", st->cfg.name,
                      seq, strerror(errno));
            rc = -1;
        } else if (q->n > 1) {
            q->seq[0] = seq;
            q->n = 1;
        }
    }
    limit(st, q);
    return rc;
}
