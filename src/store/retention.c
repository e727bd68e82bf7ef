/* retention.c - interest and workqueue retention: the store removes a
 * stored message once its consumers' acks allow it (see stream.h,
 * RETENTION_*, and stream_internal.h).
 *
 * The consumers tell the stream through stream_retention_done whenever
 * they are done with a message; the stream decides.  Removals are noted in
 * the log's removed file without a sync of their own (slog_forget), as the
 * consumers' own acks are written without one: a crash of the process
 * loses neither, a power loss can bring back a message together with the
 * consumer state that had not acked it yet, which means a redelivery,
 * never a lost message. */
#include <stdio.h>
#include <string.h>

#include "stream_internal.h"
#include "subject.h"

static int takes(const consumer_t *c, const char *subject, size_t len) { return consumer_matches(c, subject, len); }

/* True when every consumer of st whose filter takes the subject has acked
 * seq (also when none takes it). */
static int all_acked(stream_t *st, uint64_t seq, const char *subject, size_t len)
{
    for (int i = 0; i < st->ncons; i++)
        if (takes(st->cons[i], subject, len) && !consumer_has_acked(st->cons[i], seq))
            return 0;
    return 1;
}

void stream_retention_done(stream_t *st, consumer_t *c, uint64_t seq)
{
    slog_rec_t r;
    (void)c;
    if (st->cfg.retention == RETENTION_LIMITS || !slog_has(st->log, seq))
        return;
    if (st->cfg.retention == RETENTION_INTEREST &&
        (slog_read(st->log, seq, &r, &st->sm->rbuf, &st->sm->rcap) <= 0 ||
         !all_acked(st, seq, r.subject, r.subject_len)))
        return;
    slog_forget(st->log, &seq, 1);
}

void stream_retention_stored(stream_t *st, const proto_msg_t *m, uint64_t seq)
{
    if (st->cfg.retention != RETENTION_INTEREST)
        return;
    for (int i = 0; i < st->ncons; i++)
        if (takes(st->cons[i], m->subject, m->subject_len))
            return;
    slog_forget(st->log, &seq, 1);
}

int stream_workqueue_filters_conflict(const char *a, const char *b, int *err_code, char *err, size_t errsz)
{
    if (!a[0] && !b[0]) {
        *err_code = 10099;
        snprintf(err, errsz, "multiple non-filtered consumers not allowed on workqueue stream");
        return -1;
    }
    if (!a[0] || !b[0] || streams_patterns_overlap(a, b)) {
        *err_code = 10100;
        snprintf(err, errsz, "filtered consumer not unique on workqueue stream");
        return -1;
    }
    return 0;
}

int streams_workqueue_conflict(streams_t *sm, const char *stream, const char *filter, const char *except_name,
                               int *err_code, char *err, size_t errsz)
{
    stream_t *st = streams_find(sm, stream, strlen(stream));
    if (!st || st->cfg.retention != RETENTION_WORKQUEUE)
        return 0;
    for (int i = 0; i < st->ncons; i++) {
        const consumer_cfg_t *o = consumer_cfg(st->cons[i]);
        if ((!except_name || strcmp(o->name, except_name)) &&
            stream_workqueue_filters_conflict(filter, o->filter, err_code, err, errsz) < 0)
            return -1;
    }
    return 0;
}
