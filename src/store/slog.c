/* slog.c - a stream's segmented log, its index and group commit (see slog.h). */
#include "slog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "clock.h"
#include "dict.h"
#include "log.h"
#include "record.h"
#include "util.h"
#include "vfs.h"

#include "slog_internal.h"

int64_t slog_now_ns(void) { return clock_now_ns(); }

/* A record's fields add up to its length (the frame is record.c's). */
static int record_fits(const char *p, uint32_t len)
{
    uint16_t sl = get16(p + 12), kl = get16(p + 14);
    uint32_t hl = get32(p + 32), pl = get32(p + 36);
    return len >= REC_HDR && (uint64_t)REC_HDR + sl + kl + hl + pl == len && sl != 0;
}

static const record_kind_t seg_record = {REC_MAGIC, REC_HDR, UINT32_MAX, record_fits};

uint32_t slog_record_whole(const char *p, size_t avail) { return record_check(&seg_record, p, avail); }

/* Parses the record at p (avail bytes there).  1 with *out filled, 0 when
 * it is not a whole valid record. */
static int parse_rec(const char *p, size_t avail, slog_rec_t *out, uint32_t *len)
{
    uint32_t l = record_check(&seg_record, p, avail);
    if (!l)
        return 0;
    uint16_t sl = get16(p + 12), kl = get16(p + 14);
    out->seq = get64(p + 16);
    out->ts = (int64_t)get64(p + 24);
    out->subject = p + REC_HDR;
    out->subject_len = sl;
    out->key = out->subject + sl;
    out->key_len = kl;
    out->hdr = out->key + kl;
    out->hdr_len = get32(p + 32);
    out->payload = out->hdr + out->hdr_len;
    out->payload_len = get32(p + 36);
    *len = l;
    return 1;
}

/* ---- segments and the index ------------------------------------------------- */

static seg_t *seg_new(const char *dir, uint64_t first)
{
    size_t n = strlen(dir) + 32;
    seg_t *s = calloc(1, sizeof *s + n);
    if (!s)
        return NULL;
    snprintf(s->path, n, "%s/%020" PRIu64 ".seg", dir, first);
    s->first = first;
    s->fd = -1;
    return s;
}

static void seg_free(seg_t *s)
{
    if (!s)
        return;
    if (s->fd >= 0)
        vfs_close(s->fd);
    free(s->off);
    free(s->seek);
    free(s->rc);
    free(s);
}

/* Cuts the segment's file (and forgets what the read-ahead held, and the
 * checkpoint when it lists records that go). */
static int seg_truncate(seg_t *s, off_t len)
{
    s->rc_len = 0;
    if (len < s->ckpt_size)
        ckpt_forget(s);
    if (vfs_truncate(s->fd, len) != 0)
        return -1;
    s->alloc = len;
    return 0;
}

/* vfs_pread of a segment's file, counted in the log's reads. */
static ssize_t log_pread(slog_t *l, int fd, void *buf, size_t n, off_t off)
{
    ssize_t got = vfs_pread(fd, buf, n, off);
    l->reads++;
    if (got > 0)
        l->read_bytes += (uint64_t)got;
    return got;
}

/* Copies n bytes at off (all below s->size) into out, through the read-ahead. */
static int seg_pread(slog_t *l, seg_t *s, char *out, size_t n, off_t off)
{
    if (!(s->rc_len && off >= s->rc_off && off + (off_t)n <= s->rc_off + (off_t)s->rc_len)) {
        size_t want = n > READ_AHEAD ? n : READ_AHEAD;
        if (off + (off_t)want > s->size)
            want = (size_t)(s->size - off);
        if (!s->rc || want > READ_AHEAD) {
            char *nb = realloc(s->rc, want > READ_AHEAD ? want : READ_AHEAD);
            if (!nb)
                return log_pread(l, s->fd, out, n, off) == (ssize_t)n ? 0 : -1;
            s->rc = nb;
        }
        s->rc_len = 0;
        ssize_t got = log_pread(l, s->fd, s->rc, want, off);
        if (got < (ssize_t)n)
            return -1;
        s->rc_off = off;
        s->rc_len = (size_t)got;
        if (want > READ_AHEAD) { /* one big record: do not keep a big buffer */
            memcpy(out, s->rc, n);
            free(s->rc);
            s->rc = NULL;
            s->rc_len = 0;
            return 0;
        }
    }
    memcpy(out, s->rc + (off - s->rc_off), n);
    return 0;
}

static int seg_push(seg_t *s, uint32_t off)
{
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 1024;
        uint32_t *no = realloc(s->off, nc * sizeof *no);
        if (!no)
            return -1;
        s->off = no;
        s->cap = nc;
    }
    s->off[s->n++] = off;
    return 0;
}

int slog_seek_reserve(seg_t *s)
{
    if (s->nseek < s->capseek)
        return 0;
    size_t nc = s->capseek ? s->capseek * 2 : 16;
    seek_ent_t *ne = realloc(s->seek, nc * sizeof *ne);
    if (!ne)
        return -1;
    s->seek = ne;
    s->capseek = nc;
    return 0;
}

void slog_seek_note(seg_t *s, uint64_t seq, int64_t ts, uint32_t off)
{
    if (s->nseek && off - s->seek[s->nseek - 1].off < SEEK_STEP)
        return;
    s->seek[s->nseek++] = (seek_ent_t){seq, ts, off};
}

/* Forgets the seek entries of s for records after seq (taken back). */
static void seek_drop_after(seg_t *s, uint64_t seq)
{
    while (s->nseek && s->seek[s->nseek - 1].seq > seq)
        s->nseek--;
}

static seg_t *active(slog_t *l) { return l->nsegs ? l->segs[l->nsegs - 1] : NULL; }

static seg_t *seg_for(slog_t *l, uint64_t seq)
{
    size_t lo = 0, hi = l->nsegs;
    while (lo < hi) { /* last segment with first <= seq */
        size_t mid = (lo + hi) / 2;
        if (l->segs[mid]->first <= seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    seg_t *s = l->segs[lo - 1];
    return seq < s->first + s->n ? s : NULL;
}

static int segs_append(slog_t *l, seg_t *s)
{
    if (l->nsegs == l->capsegs) {
        size_t nc = l->capsegs ? l->capsegs * 2 : 8;
        seg_t **ns = realloc(l->segs, nc * sizeof *ns);
        if (!ns)
            return -1;
        l->segs = ns;
        l->capsegs = nc;
    }
    /* Every segment may be waiting for a sync at once (a load that rolls
     * many small segments during one fdatasync). */
    pthread_mutex_lock(&l->mu);
    if (l->capsfds < l->capsegs) {
        int *nf = realloc(l->sfds, l->capsegs * sizeof *nf);
        if (!nf) {
            pthread_mutex_unlock(&l->mu);
            return -1;
        }
        l->sfds = nf;
        l->capsfds = l->capsegs;
    }
    pthread_mutex_unlock(&l->mu);
    l->segs[l->nsegs++] = s;
    return 0;
}

/* Puts a segment's file on the list of files to sync (mu held). */
static void sync_list_add(slog_t *l, int fd)
{
    for (size_t i = 0; i < l->nsfds; i++)
        if (l->sfds[i] == fd)
            return;
    l->sfds[l->nsfds++] = fd; /* there is room: see segs_append */
}

/* End of a segment's records, counting what is buffered for the active one. */
static off_t seg_end(slog_t *l, seg_t *s) { return s->size + (s == active(l) ? (off_t)l->wlen : 0); }

/* Bytes from the record at index i of s to the next one (or the end). */
static uint64_t rec_span(slog_t *l, seg_t *s, uint64_t i)
{
    for (uint64_t j = i + 1; j < s->n; j++)
        if (s->off[j] != HOLE)
            return s->off[j] - s->off[i];
    return (uint64_t)seg_end(l, s) - s->off[i];
}

/* Bytes the record at index i of s takes, as counted in l->bytes: its span,
 * unless damaged bytes skipped by the scan (or a record that failed its
 * checksum later) may lie after it; then its own length field. */
uint64_t slog_rec_len(slog_t *l, seg_t *s, uint64_t i)
{
    uint64_t span = rec_span(l, s, i);
    if (!s->damaged)
        return span;
    off_t off = s->off[i];
    char h[12];
    if (off >= s->size)
        memcpy(h, l->wbuf + (off - s->size), sizeof h);
    else if (log_pread(l, s->fd, h, sizeof h, off) != (ssize_t)sizeof h)
        return span;
    uint32_t len = get32(h + 8);
    return len >= REC_HDR && len <= span ? len : span;
}

/* ---- the dedup window ------------------------------------------------------- */

static void dedup_expire(slog_t *l, int64_t now)
{
    int64_t limit = now - (int64_t)(l->o.dedup_window * 1e9);
    while (l->dq_len && l->dq[l->dq_head].ts < limit) {
        dedup_ent_t *e = &l->dq[l->dq_head];
        if ((uintptr_t)dict_get(&l->dedup, e->key, e->klen) == e->seq)
            dict_remove(&l->dedup, e->key, e->klen);
        free(e->key);
        l->dq_head = (l->dq_head + 1) % l->dq_cap;
        l->dq_len--;
    }
}

int slog_dedup_add(slog_t *l, const char *key, size_t klen, uint64_t seq, int64_t ts)
{
    if (l->dq_len == l->dq_cap) {
        size_t nc = l->dq_cap ? l->dq_cap * 2 : 256;
        dedup_ent_t *nq = malloc(nc * sizeof *nq);
        if (!nq)
            return -1;
        for (size_t i = 0; i < l->dq_len; i++)
            nq[i] = l->dq[(l->dq_head + i) % l->dq_cap];
        free(l->dq);
        l->dq = nq;
        l->dq_cap = nc;
        l->dq_head = 0;
    }
    char *k = malloc(klen + 1);
    if (!k)
        return -1;
    memcpy(k, key, klen);
    k[klen] = 0;
    if (dict_put(&l->dedup, key, klen, (void *)(uintptr_t)seq) < 0) {
        free(k);
        return -1;
    }
    l->dq[(l->dq_head + l->dq_len++) % l->dq_cap] = (dedup_ent_t){ts, seq, k, klen};
    return 0;
}

/* Takes back the newest dedup entry (an append that was not written). */
static void dedup_pop(slog_t *l, uint64_t seq)
{
    if (!l->dq_len)
        return;
    dedup_ent_t *e = &l->dq[(l->dq_head + l->dq_len - 1) % l->dq_cap];
    if (e->seq != seq)
        return;
    if ((uintptr_t)dict_get(&l->dedup, e->key, e->klen) == e->seq)
        dict_remove(&l->dedup, e->key, e->klen);
    free(e->key);
    l->dq_len--;
}

uint64_t slog_dedup_find(slog_t *l, const char *key, size_t len)
{
    if (l->o.dedup_window <= 0 || !len)
        return 0;
    dedup_expire(l, slog_now_ns());
    uint64_t seq = (uintptr_t)dict_get(&l->dedup, key, len);
    return l->cut_pending && seq > l->cut_after ? 0 : seq; /* reported lost: not a duplicate of it */
}

static int rec_present(slog_t *l, uint64_t seq);
static void removed_compact(slog_t *l);

/* The newest record at or below `from` on subject, or 0: read back record
 * by record (only when the subject's last record was removed). */
static uint64_t subject_scan_back(slog_t *l, uint64_t from, const char *subject, size_t len)
{
    char *buf = NULL;
    size_t cap = 0;
    uint64_t found = 0;
    slog_rec_t r;
    for (uint64_t q = from; q >= l->first_seq && q > 0 && !found; q--)
        if (rec_present(l, q) && slog_read(l, q, &r, &buf, &cap) > 0 && r.subject_len == len &&
            !memcmp(r.subject, subject, len))
            found = q;
    free(buf);
    return found;
}

uint64_t slog_subject_last(slog_t *l, const char *subject, size_t len)
{
    uint64_t seq = (uintptr_t)dict_get(&l->subj_last, subject, len);
    if (!seq || rec_present(l, seq))
        return seq;
    /* Deleted, purged or past the limits: the newest one left, kept for
     * the next time (records only ever go, so it stays right until it goes
     * too). */
    seq = subject_scan_back(l, seq - 1, subject, len);
    if (!seq || dict_put(&l->subj_last, subject, len, (void *)(uintptr_t)seq) < 0)
        dict_remove(&l->subj_last, subject, len);
    return seq;
}

/* ---- retention -------------------------------------------------------------- */

/* Drops the first record (logically; whole segments go in drop_segments). */
static void drop_first(slog_t *l)
{
    seg_t *s = seg_for(l, l->first_seq);
    if (s) {
        uint64_t i = l->first_seq - s->first;
        if (s->off[i] != HOLE) {
            l->bytes -= slog_rec_len(l, s, i);
            l->msgs--;
        }
    }
    l->first_seq++;
}

/* Deletes sealed segments that hold nothing at or after first_seq. */
static void drop_segments(slog_t *l)
{
    size_t k = 0;
    while (k + 1 < l->nsegs && l->segs[k]->first + l->segs[k]->n <= l->first_seq &&
           l->segs[k]->first + l->segs[k]->n - 1 <= l->committed_seq)
        k++;
    if (!k)
        return;
    /* Take their files off the sync list in the same hold of the lock as
     * the check that the sync thread has no copy of it: a file closed
     * under a running fdatasync fails it (or, its number reused, syncs
     * another file). */
    pthread_mutex_lock(&l->mu);
    if (l->busy) {
        pthread_mutex_unlock(&l->mu);
        return; /* next time */
    }
    for (size_t j = 0; j < k; j++)
        for (size_t i = 0; i < l->nsfds; i++)
            if (l->sfds[i] == l->segs[j]->fd) {
                l->sfds[i] = l->sfds[--l->nsfds];
                break; /* listed once */
            }
    ckpt_drop_jobs(l, 0, l->segs[k]->first - 1);
    pthread_mutex_unlock(&l->mu);
    for (size_t j = 0; j < k; j++) {
        seg_t *s = l->segs[j];
        ckpt_forget(s);
        if (vfs_unlink(s->path) != 0)
            log_warn("store: cannot delete %s: %s", s->path, strerror(errno));
        seg_free(s);
    }
    memmove(l->segs, l->segs + k, (l->nsegs - k) * sizeof *l->segs);
    l->nsegs -= k;
}

static void enforce_counts(slog_t *l)
{
    while (l->o.max_msgs && l->msgs > l->o.max_msgs)
        drop_first(l);
    while (l->o.max_bytes && l->bytes > l->o.max_bytes && l->msgs > 1)
        drop_first(l);
}

/* Time of record seq, or -1. */
static int64_t rec_time(slog_t *l, uint64_t seq)
{
    seg_t *s = seg_for(l, seq);
    if (!s || s->off[seq - s->first] == HOLE)
        return -1;
    off_t off = s->off[seq - s->first];
    char h[REC_HDR];
    if (off >= s->size) {
        memcpy(h, l->wbuf + (off - s->size), REC_HDR);
    } else if (log_pread(l, s->fd, h, REC_HDR, off) != REC_HDR) {
        return -1;
    }
    return (int64_t)get64(h + 24);
}

void slog_expire(slog_t *l)
{
    if (l->o.max_age > 0) {
        int64_t limit = slog_now_ns() - (int64_t)(l->o.max_age * 1e9);
        while (l->first_seq <= l->last_seq) {
            int64_t t = rec_time(l, l->first_seq);
            if (t >= limit)
                break;
            drop_first(l); /* holes (t == -1) go too */
        }
    }
    drop_segments(l);
    if (l->removed_lines)
        removed_compact(l);
}

void slog_set_limits(slog_t *l, const slog_opts_t *o)
{
    l->o.max_msgs = o->max_msgs;
    l->o.max_bytes = o->max_bytes;
    l->o.max_age = o->max_age;
    enforce_counts(l);
    slog_expire(l);
}

/* ---- purges and deletes ---------------------------------------------------- */

/* <dir>/removed lists, one line each, the purges ("p <first seq kept>")
 * and deletes ("d <seq>") done on the log, synced before they take
 * effect: opening the log replays them after the scan, so what was
 * removed stays removed (the records themselves stay in their segment
 * until it is deleted whole).  A torn last line is ignored. */
#define REMOVED_FILE "removed"
#define REMOVED_COMPACT_LINES 256 /* below this a rewrite (two syncs) costs more than it saves */

/* Appends n bytes of lines to the removed file, and with sync syncs it
 * (and so every line written before).  0 or -1. */
static int removed_append(slog_t *l, const char *lines, size_t n, int sync)
{
    for (size_t i = 0; i < n; i++)
        l->removed_lines += lines[i] == '\n';
    char path[4200];
    snprintf(path, sizeof path, "%s/" REMOVED_FILE, l->dir);
    int fd = vfs_open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644), rc = -1;
    if (fd < 0)
        return -1;
    if (vfs_write(fd, lines, n) == (ssize_t)n && (!sync || (vfs_sync(fd) == 0 && vfs_sync_dir(l->dir) == 0)))
        rc = 0;
    vfs_close(fd);
    return rc;
}

/* True when record seq is in the log. */
static int rec_present(slog_t *l, uint64_t seq)
{
    seg_t *s = seq >= l->first_seq && seq <= l->last_seq ? seg_for(l, seq) : NULL;
    return s && s->off[seq - s->first] != HOLE;
}

/* Makes record seq a hole, and moves first_seq past holes. */
static void drop_one(slog_t *l, uint64_t seq)
{
    if (!rec_present(l, seq))
        return;
    seg_t *s = seg_for(l, seq);
    l->bytes -= slog_rec_len(l, s, seq - s->first);
    l->msgs--;
    s->off[seq - s->first] = HOLE;
    s->damaged = 1; /* the record before the hole no longer spans to the next one: count lengths */
    while (l->first_seq <= l->last_seq && !rec_present(l, l->first_seq))
        drop_first(l);
}

/* Drops every record below `below` (not past the last one). */
static void drop_below(slog_t *l, uint64_t below)
{
    while (l->first_seq < below && l->first_seq <= l->last_seq)
        drop_first(l);
}

int slog_each_subject(slog_t *l, const char *prefix, size_t plen,
                      void (*fn)(void *ctx, const char *subject, size_t len, uint64_t seq), void *ctx)
{
    char **subs = NULL;
    size_t n = 0;
    int rc = -1;
    if (l->subj_last.count && !(subs = calloc(l->subj_last.count, sizeof *subs)))
        return -1;
    /* Copied first: slog_subject_last may change the table it walks. */
    for (size_t i = 0; i < l->subj_last.cap && n < l->subj_last.count; i++) {
        const dict_entry_t *e = &l->subj_last.slots[i];
        if (e->key && e->klen >= plen && !memcmp(e->key, prefix, plen) && !(subs[n++] = strdup(e->key)))
            goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t seq = slog_subject_last(l, subs[i], strlen(subs[i]));
        if (seq)
            fn(ctx, subs[i], strlen(subs[i]), seq);
    }
    rc = 0;
fail:
    for (size_t i = 0; i < n; i++)
        free(subs[i]);
    free(subs);
    return rc;
}

int slog_has(slog_t *l, uint64_t seq)
{
    return rec_present(l, seq) && !(l->cut_pending && seq > l->cut_after);
}

/* Writes the notes of dropped records that waited for the buffer. */
static void forget_write(slog_t *l)
{
    if (!l->flen)
        return;
    if (removed_append(l, l->fbuf, l->flen, 0) < 0)
        log_warn("store: %s: cannot note dropped records in %s: %s", l->dir, REMOVED_FILE, strerror(errno));
    l->flen = 0;
    drop_segments(l);
    removed_compact(l);
}

/* Notes lines (n bytes) of dropped records: at once when nothing is
 * buffered, else after the buffered records are written, which replace
 * them (a per-subject limit drops the old ones when a new one is
 * appended): a note written while they wait in the buffer would, after a
 * kill, leave the subject with neither. */
static void forget_note(slog_t *l, const char *lines, size_t n)
{
    if (!l->wlen) {
        if (removed_append(l, lines, n, 0) < 0)
            log_warn("store: %s: cannot note dropped records in %s: %s", l->dir, REMOVED_FILE, strerror(errno));
        return;
    }
    if (l->flen + n > l->fcap) {
        size_t nc = l->fcap ? l->fcap * 2 : 1024;
        while (nc < l->flen + n)
            nc *= 2;
        char *nb = realloc(l->fbuf, nc);
        if (!nb) { /* at once, then: the worst is what was done before */
            forget_write(l);
            if (removed_append(l, lines, n, 0) < 0)
                log_warn("store: %s: cannot note dropped records in %s: %s", l->dir, REMOVED_FILE, strerror(errno));
            return;
        }
        l->fbuf = nb;
        l->fcap = nc;
    }
    memcpy(l->fbuf + l->flen, lines, n);
    l->flen += n;
}

void slog_forget(slog_t *l, const uint64_t *seqs, size_t n)
{
    char lines[24 * 16];
    for (size_t i = 0; i < n;) {
        size_t len = 0;
        for (; i < n && len + 24 <= sizeof lines; i++)
            if (rec_present(l, seqs[i])) {
                len += (size_t)snprintf(lines + len, 25, "d %" PRIu64 "\n", seqs[i]);
                drop_one(l, seqs[i]);
            }
        if (len)
            forget_note(l, lines, len);
    }
    if (!l->flen) { /* else once the buffer is written: files say what memory says only then */
        drop_segments(l);
        removed_compact(l);
    }
}

/* Replays the removed file on a log just loaded. */
static void removed_replay(slog_t *l)
{
    char path[4200], line[64];
    snprintf(path, sizeof path, "%s/" REMOVED_FILE, l->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        char op, *end;
        if (!strchr(line, '\n') || (line[0] != 'p' && line[0] != 'd') || line[1] != ' ')
            continue; /* torn, or not ours */
        op = line[0];
        uint64_t seq = strtoull(line + 2, &end, 10);
        if (*end != '\n')
            continue;
        l->removed_lines++;
        if (op == 'p') {
            drop_below(l, seq);
        } else {
            drop_one(l, seq);
        }
    }
    fclose(f);
    removed_compact(l);
}

/* The removed file only has to say what the index says: nothing below
 * first_seq, and which sequences after it are holes.  Once it has more
 * than twice the lines that takes, it is rewritten as just those (a
 * temporary file synced and renamed over it), so that it does not grow for
 * as long as the stream lives.  Failing only leaves the longer file, which
 * says the same. */
static void removed_compact(slog_t *l)
{
    char path[4200], tmp[4300], *text = NULL;
    uint64_t span = l->last_seq >= l->first_seq ? l->last_seq - l->first_seq + 1 : 0;
    uint64_t holes = span - (l->msgs < span ? l->msgs : span), lines = 1;
    if (l->removed_lines < REMOVED_COMPACT_LINES || l->removed_lines <= 2 * (holes + 1))
        return;
    size_t len = 0, cap = 24 * (size_t)(holes + 1);
    int fd = -1, ok = 0;
    if (!(text = malloc(cap)))
        goto fail;
    len = (size_t)snprintf(text, cap, "p %" PRIu64 "\n", l->first_seq);
    for (uint64_t q = l->first_seq; holes && q <= l->last_seq && len + 24 <= cap; q++)
        if (!rec_present(l, q)) {
            len += (size_t)snprintf(text + len, cap - len, "d %" PRIu64 "\n", q);
            lines++;
        }
    snprintf(path, sizeof path, "%s/" REMOVED_FILE, l->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if ((fd = vfs_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        goto fail;
    ok = vfs_write(fd, text, len) == (ssize_t)len && vfs_sync(fd) == 0;
    vfs_close(fd);
    ok = ok && vfs_rename(tmp, path) == 0 && vfs_sync_dir(l->dir) == 0;
    if (ok)
        l->removed_lines = lines;
fail:
    if (!ok) {
        log_warn("store: %s: cannot compact %s: %s", l->dir, REMOVED_FILE, strerror(errno));
        vfs_unlink(tmp);
    }
    free(text);
}

uint64_t slog_purge(slog_t *l, uint64_t below, int *err)
{
    char line[40];
    *err = 0;
    if (below > l->last_seq + 1)
        below = l->last_seq + 1;
    if (below <= l->first_seq || !l->msgs)
        return 0;
    int n = snprintf(line, sizeof line, "p %" PRIu64 "\n", below);
    if (removed_append(l, line, (size_t)n, 1) < 0) {
        *err = errno ? errno : EIO;
        return 0;
    }
    uint64_t before = l->msgs;
    drop_below(l, below);
    drop_segments(l);
    removed_compact(l);
    return before - l->msgs;
}

int slog_delete(slog_t *l, const uint64_t *seqs, size_t n)
{
    char *lines = malloc(n * 24 + 1);
    size_t len = 0;
    int rc = -1;
    if (!lines)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (rec_present(l, seqs[i]))
            len += (size_t)snprintf(lines + len, 25, "d %" PRIu64 "\n", seqs[i]);
    if (len && removed_append(l, lines, len, 1) < 0)
        goto done;
    rc = 0;
    for (size_t i = 0; i < n; i++)
        if (rec_present(l, seqs[i])) {
            drop_one(l, seqs[i]);
            rc++;
        }
    drop_segments(l);
    removed_compact(l);
done:
    free(lines);
    return rc;
}

/* ---- the sync thread -------------------------------------------------------- */

/* Syncs the two directories above a stream's (<data>/streams and <data>),
 * so that a new stream's directory survives a power loss. */
static int sync_parents(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(p, '/');
        if (!slash)
            return 0;
        *slash = '\0';
        if (vfs_sync_dir(p[0] ? p : "/") != 0)
            return -1;
    }
    return 0;
}

static void *sync_main(void *arg)
{
    slog_t *l = arg;
    int *fds = NULL; /* this round's files: a copy the loop does not touch */
    size_t capfds = 0;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && l->want <= l->done && !l->nsfds && !l->want_dir && !ckpt_ready(l))
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->stop && l->want <= l->done && !l->nsfds)
            break;
        if (l->want <= l->done && !l->nsfds && !l->want_dir && !l->dir_unsynced) {
            ckpt_write_ready(l); /* nothing to sync: only checkpoints to write */
            continue;
        }
        size_t n = l->nsfds;
        int dir = l->want_dir || l->dir_unsynced, parents = l->parents_unsynced, err = 0;
        uint64_t target = l->want;
        if (n > capfds) {
            int *nf = realloc(fds, n * sizeof *nf);
            if (nf) {
                fds = nf;
                capfds = n;
            } else {
                err = ENOMEM; /* a failed sync: the loop reports it */
            }
        }
        if (n && !err)
            memcpy(fds, l->sfds, n * sizeof *fds);
        l->nsfds = 0;
        l->want_dir = l->dir_unsynced = l->parents_unsynced = 0;
        l->busy = 1;
        pthread_mutex_unlock(&l->mu);
        for (size_t i = 0; i < n && !err; i++)
            if (vfs_sync(fds[i]) != 0)
                err = errno ? errno : EIO;
        if (!err && dir && vfs_sync_dir(l->dir) != 0)
            err = errno ? errno : EIO;
        if (!err && parents && sync_parents(l->dir) != 0)
            err = errno ? errno : EIO;
        pthread_mutex_lock(&l->mu);
        l->busy = 0;
        l->syncs++;
        if (err) {
            /* Not retried here: the loop fails what waited for this round
             * (fail_after) and a later request starts a new one.  A round
             * with nothing to sync must not report `target` done. */
            l->done_err = err;
            l->want = l->done;
            l->dir_unsynced = dir;
            l->parents_unsynced = parents;
        } else if (target > l->done) {
            l->done = target;
        }
        if (!err)
            ckpt_write_ready(l);
        uint64_t one = 1; /* (after checkpoints too: a reopen may wait for busy to clear) */
        if (write(l->efd, &one, sizeof one) < 0) {
            /* the counter is full: the loop has a wakeup pending anyway */
        }
    }
    pthread_mutex_unlock(&l->mu);
    free(fds);
    return NULL;
}

static void request_sync(slog_t *l, int fd, uint64_t upto, int dir)
{
    pthread_mutex_lock(&l->mu);
    if (fd >= 0)
        sync_list_add(l, fd);
    if (upto > l->want)
        l->want = upto;
    l->want_dir |= dir;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static int reopen(slog_t *l);
static void prealloc(slog_t *l);

/* Reopens a failed log from the disk, unless the sync thread is in the
 * middle of a round: it may be syncing a file that reopening closes.  The
 * end of that round (on_sync_done) or the tick tries again. */
static void reopen_when_idle(slog_t *l)
{
    pthread_mutex_lock(&l->mu);
    int busy = l->busy;
    pthread_mutex_unlock(&l->mu);
    if (!busy)
        reopen(l);
}

/* Notes that the records after `good` are to be cut off the files. */
static void cut_later(slog_t *l, uint64_t good)
{
    if (!l->cut_pending || good < l->cut_after)
        l->cut_after = good;
    l->cut_pending = 1;
}

/* Everything after `good` is gone: tell the owner (error PubAcks), drop
 * what is buffered and rebuild from the disk, once the records after
 * `good` are cut off the files (in reopen). */
static void fail_after(slog_t *l, uint64_t good, int err)
{
    l->failed = 1;
    l->fail_err = err;
    cut_later(l, good);
    if (l->cb)
        l->cb(l->ctx, good, err);
    l->wlen = 0;
    l->wfirst = 0;
    pthread_mutex_lock(&l->mu);
    l->nsfds = 0;
    l->want = l->done;
    ckpt_drop_jobs(l, 0, UINT64_MAX); /* (the reopen closes their files; the next start scans them) */
    pthread_mutex_unlock(&l->mu);
    reopen_when_idle(l);
}

/*
 * Takes the records after `good` off the files, so that what a failed
 * write or sync was reported lost for is not read back later as stored:
 * the segment holding good + 1 is cut before it, later segments are
 * deleted (an empty segment left behind would be read as the place the
 * log had reached, leaving a gap in the sequences).  Uses the index, so
 * it runs before the reopen rebuilds it.  0, or -1 (errno) to try again.
 */
static int cut_files(slog_t *l, uint64_t good)
{
    for (size_t i = l->nsegs; i-- > 0;) {
        seg_t *s = l->segs[i];
        if (s->first + s->n <= good + 1)
            break; /* this one, and so every older one, ends at or before good */
        if (s->first > good + 1) {
            ckpt_forget(s);
            if (vfs_unlink(s->path) != 0 && errno != ENOENT)
                return -1;
            continue;
        }
        off_t cut = 0;
        for (uint64_t q = good + 1; q < s->first + s->n && !cut; q++)
            if (s->off[q - s->first] != HOLE)
                cut = s->off[q - s->first];
        if (good + 1 == s->first)
            cut = SEG_HDR;
        if (cut && cut < s->size && seg_truncate(s, cut) != 0)
            return -1;
    }
    return 0;
}

static void on_sync_done(evutil_socket_t fd, short what, void *arg)
{
    slog_t *l = arg;
    uint64_t v;
    if (read(l->efd, &v, sizeof v) < 0 && errno != EAGAIN)
        return;
    pthread_mutex_lock(&l->mu);
    uint64_t done = l->done;
    int err = l->done_err;
    l->done_err = 0;
    pthread_mutex_unlock(&l->mu);
    if (l->failed) {
        reopen_when_idle(l);
        return;
    }
    pthread_mutex_lock(&l->mu);
    uint64_t ckpt_errors = l->ckpt_errors;
    pthread_mutex_unlock(&l->mu);
    if (ckpt_errors != l->ckpt_errors_seen) {
        log_warn("store: %s: %" PRIu64 " checkpoint%s of sealed segments could not be written; the next start scans "
                 "those segments", l->dir, ckpt_errors - l->ckpt_errors_seen, ckpt_errors - l->ckpt_errors_seen == 1 ? "" : "s");
        l->ckpt_errors_seen = ckpt_errors;
    }
    if (err) {
        l->sync_errors++;
        if (l->o.fsync == FSYNC_ALWAYS) {
            log_error("store: %s: fdatasync failed (%s); publishes since sequence %" PRIu64
                      " get errors and the stream reopens from the disk", l->dir, strerror(err), l->committed_seq);
            fail_after(l, l->committed_seq, err);
        } else {
            log_error("store: %s: fdatasync failed (%s); records written in the last interval may not be durable",
                      l->dir, strerror(err));
        }
        return;
    }
    if (l->o.fsync == FSYNC_ALWAYS && done > l->committed_seq) {
        l->committed_seq = done;
        if (l->cb)
            l->cb(l->ctx, done, 0);
    }
    prealloc(l);
}

/* ---- writing ---------------------------------------------------------------- */

/* Writes the buffer.  0, or -1 after the records in it were taken back and
 * reported as failed. */
static int flush(slog_t *l)
{
    seg_t *s = active(l);
    if (!l->wlen || !s)
        return 0;
    off_t before = s->size;
    if (vfs_pwrite(s->fd, l->wbuf, l->wlen, before) < 0) {
        int err = errno ? errno : EIO;
        l->write_errors++;
        uint64_t good = l->wfirst ? l->wfirst - 1 : l->last_seq;
        log_error("store: %s: write failed (%s); %" PRIu64 " record%s not stored", l->dir, strerror(err),
                  l->last_seq - good, l->last_seq - good == 1 ? "" : "s");
        if (seg_truncate(s, before) != 0) {
            log_error("store: %s: cannot take back a partial write (%s)", l->dir, strerror(errno));
            fail_after(l, good < l->committed_seq ? good : l->committed_seq, err);
            return -1;
        }
        /* Take the buffered records back out of memory, newest first. */
        for (uint64_t q = l->last_seq; q > good; q--) {
            seg_t *qs = seg_for(l, q);
            uint64_t i = q - qs->first;
            slog_rec_t r;
            uint32_t len;
            const char *p = l->wbuf + (qs->off[i] - before);
            if (parse_rec(p, l->wlen - (size_t)(qs->off[i] - before), &r, &len)) {
                uint64_t prev = l->undo[q - l->wfirst];
                if (prev)
                    dict_put(&l->subj_last, r.subject, r.subject_len, (void *)(uintptr_t)prev);
                else
                    dict_remove(&l->subj_last, r.subject, r.subject_len);
                if (r.key_len)
                    dedup_pop(l, q);
                if (q >= l->first_seq) {
                    l->msgs--;
                    l->bytes -= len;
                }
            }
            qs->n--;
            seek_drop_after(qs, good);
        }
        /* A segment rolled for the failed records stays, empty: the next
         * append writes its header again. */
        l->last_seq = good;
        if (l->first_seq > good + 1)
            l->first_seq = good + 1;
        l->wlen = 0;
        l->wfirst = 0;
        /* The drops they made stay in memory only: at the next start the
         * old records are back, as they should be without these. */
        l->flen = 0;
        if (l->cb)
            l->cb(l->ctx, good, err);
        return -1;
    }
    s->size += (off_t)l->wlen;
    if (s->alloc < s->size)
        s->alloc = s->size;
    l->wlen = 0;
    l->wfirst = 0;
    l->written_seq = l->last_seq;
    forget_write(l);
    if (l->o.fsync == FSYNC_ALWAYS) {
        request_sync(l, s->fd, l->last_seq, 0);
    } else {
        if (l->o.fsync == FSYNC_INTERVAL) {
            pthread_mutex_lock(&l->mu);
            sync_list_add(l, s->fd);
            pthread_mutex_unlock(&l->mu);
        }
        l->committed_seq = l->last_seq;
        if (l->cb)
            l->cb(l->ctx, l->last_seq, 0);
    }
    return 0;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    slog_t *l = arg;
    flush(l);
}

static int wbuf_reserve(slog_t *l, size_t n)
{
    if (l->wlen + n <= l->wcap)
        return 0;
    size_t nc = l->wcap ? l->wcap : 65536;
    while (nc < l->wlen + n)
        nc *= 2;
    char *nb = realloc(l->wbuf, nc);
    if (!nb)
        return -1;
    l->wbuf = nb;
    l->wcap = nc;
    return 0;
}

/* Zero-fills the active segment ahead of its end (see PREALLOC), from the
 * loop, when no record waits for a sync: the next round syncs the zeros
 * and the file's new length with its records (once per PREALLOC bytes),
 * and the rounds after it write over zeros already on the disk.  A failure
 * (a full disk) gives the space back and only means appends grow the file
 * again for a while. */
static void prealloc(slog_t *l)
{
    seg_t *s = active(l);
    if (l->o.fsync != FSYNC_ALWAYS || l->failed || !s || s->size < SEG_HDR || l->wlen ||
        l->committed_seq != l->last_seq)
        return; /* (records are waiting: not in their sync round) */
    off_t cap = (off_t)l->o.segment_size;
    if (s->alloc - s->size >= PREALLOC_LOW || s->alloc >= cap)
        return;
    int64_t now = slog_now_ns();
    if (now < l->prealloc_retry_ns)
        return;
    off_t from = s->alloc, to = from + PREALLOC < cap ? from + PREALLOC : cap;
    if (vfs_zero(s->fd, from, to - from) != 0) {
        int err = errno;
        if (vfs_trim(s->fd, from) != 0) {
            /* the zeros stay: recovery reads them as the end all the same */
        }
        if (!l->prealloc_failed)
            log_warn("store: %s: cannot zero-fill ahead of the log (%s); appends grow the file instead", l->dir,
                     strerror(err));
        l->prealloc_failed = 1;
        l->prealloc_retry_ns = now + 1000000000LL;
        return;
    }
    l->prealloc_failed = 0;
    s->alloc = to;
}

/* Starts a new segment whose first record will be seq. */
static int roll(slog_t *l, uint64_t seq)
{
    seg_t *old = active(l);
    if (old && old->alloc > old->size && vfs_trim(old->fd, old->size) == 0)
        old->alloc = old->size; /* a sealed segment ends with its last record */
    if (old && old->n && old->ckpt_size != old->size)
        ckpt_queue(l, old);
    seg_t *s = seg_new(l->dir, seq);
    if (!s)
        return -1;
    s->fd = vfs_open(s->path, O_RDWR | O_CREAT, 0644);
    if (s->fd < 0 || segs_append(l, s) < 0) {
        int e = errno;
        log_error("store: cannot create %s: %s", s->path, strerror(e));
        seg_free(s);
        errno = e;
        return -1;
    }
    /* The new name is on the disk once the directory is synced: before
     * its records are acknowledged under "always", within the interval
     * under "interval". */
    if (l->o.fsync != FSYNC_NEVER)
        request_sync(l, -1, 0, 1);
    return 0;
}

/* Writes record r with sequence seq and time ts, len bytes in all, at p. */
static void encode_record(char *p, const slog_rec_t *r, uint64_t seq, int64_t ts, size_t len)
{
    put16(p + 12, (uint16_t)r->subject_len);
    put16(p + 14, (uint16_t)r->key_len);
    put64(p + 16, seq);
    put64(p + 24, (uint64_t)ts);
    put32(p + 32, (uint32_t)r->hdr_len);
    put32(p + 36, (uint32_t)r->payload_len);
    char *q = p + REC_HDR;
    memcpy(q, r->subject, r->subject_len);
    q += r->subject_len;
    if (r->key_len)
        memcpy(q, r->key, r->key_len);
    q += r->key_len;
    if (r->hdr_len)
        memcpy(q, r->hdr, r->hdr_len);
    q += r->hdr_len;
    if (r->payload_len)
        memcpy(q, r->payload, r->payload_len);
    record_seal(p, REC_MAGIC, (uint32_t)len);
}

/* Room for undo slot ui (the subject's previous last sequence, for taking
 * a failed write back).  0, or -1 when out of memory. */
static int undo_reserve(slog_t *l, size_t ui)
{
    if (ui < l->capundo)
        return 0;
    size_t nc = l->capundo ? l->capundo * 2 : 256;
    while (nc <= ui)
        nc *= 2;
    uint64_t *nu = realloc(l->undo, nc * sizeof *nu);
    if (!nu)
        return -1;
    l->undo = nu;
    l->capundo = nc;
    return 0;
}

uint64_t slog_append(slog_t *l, const slog_rec_t *r)
{
    if (l->failed) {
        errno = l->fail_err ? l->fail_err : EIO;
        return 0;
    }
    if (r->subject_len == 0 || r->subject_len > UINT16_MAX || r->key_len > UINT16_MAX) {
        errno = EINVAL;
        return 0;
    }
    size_t len = REC_HDR + r->subject_len + r->key_len + r->hdr_len + r->payload_len;
    if (len > l->o.segment_size - SEG_HDR) {
        errno = EFBIG;
        return 0;
    }
    seg_t *s = active(l);
    if (s->n && (size_t)seg_end(l, s) + len > l->o.segment_size) {
        if (flush(l) < 0)
            return 0;
        if (roll(l, l->last_seq + 1) < 0)
            return 0;
        s = active(l);
    }
    size_t need = len + (s->size == 0 && l->wlen == 0 ? SEG_HDR : 0);
    if (wbuf_reserve(l, need) < 0 || slog_seek_reserve(s) < 0 || seg_push(s, 0) < 0) {
        errno = ENOMEM;
        return 0;
    }
    s->n--;
    if (s->size == 0 && l->wlen == 0) {
        memcpy(l->wbuf, SEG_MAGIC, 8);
        put64(l->wbuf + 8, s->first);
        l->wlen = SEG_HDR;
    }
    uint64_t seq = l->last_seq + 1;
    if (s->n == 0 && s->first != seq) { /* an empty segment named for another sequence */
        s->first = seq;
    }
    int64_t ts = r->ts ? r->ts : slog_now_ns();
    if (ts < l->last_ts)
        ts = l->last_ts; /* times never go backwards within a stream */
    encode_record(l->wbuf + l->wlen, r, seq, ts, len);
    /* Undo information, in case the write fails. */
    if (!l->wfirst)
        l->wfirst = seq;
    size_t ui = seq - l->wfirst;
    if (undo_reserve(l, ui) < 0) {
        errno = ENOMEM;
        if (l->wfirst == seq)
            l->wfirst = 0;
        return 0;
    }
    uint64_t prev = slog_subject_last(l, r->subject, r->subject_len);
    if (dict_put(&l->subj_last, r->subject, r->subject_len, (void *)(uintptr_t)seq) < 0 ||
        (r->key_len && l->o.dedup_window > 0 && slog_dedup_add(l, r->key, r->key_len, seq, ts) < 0)) {
        if (prev)
            dict_put(&l->subj_last, r->subject, r->subject_len, (void *)(uintptr_t)prev);
        if (l->wfirst == seq)
            l->wfirst = 0;
        errno = ENOMEM;
        return 0;
    }
    l->undo[ui] = prev;
    slog_seek_note(s, seq, ts, (uint32_t)(s->size + (off_t)l->wlen));
    s->off[s->n++] = (uint32_t)(s->size + (off_t)l->wlen);
    l->wlen += len;
    l->last_seq = seq;
    l->last_ts = ts;
    l->msgs++;
    l->bytes += len;
    if (l->first_seq == 0)
        l->first_seq = seq;
    enforce_counts(l);
    if (l->wlen >= (1u << 20))
        flush(l);
    else
        event_active(l->flush_ev, EV_TIMEOUT, 0);
    return seq;
}

/* ---- reading ---------------------------------------------------------------- */

int slog_read(slog_t *l, uint64_t seq, slog_rec_t *out, char **buf, size_t *cap)
{
    if (seq < l->first_seq || seq > l->last_seq || (l->cut_pending && seq > l->cut_after))
        return 0; /* (the last: reported lost, the index not yet rebuilt) */
    seg_t *s = seg_for(l, seq);
    if (!s || s->off[seq - s->first] == HOLE)
        return 0;
    off_t off = s->off[seq - s->first];
    size_t n = (size_t)rec_span(l, s, seq - s->first);
    if (n > *cap) {
        char *nb = realloc(*buf, n);
        if (!nb) {
            errno = ENOMEM;
            return -1;
        }
        *buf = nb;
        *cap = n;
    }
    if (off >= s->size) {
        memcpy(*buf, l->wbuf + (off - s->size), n);
    } else if (seg_pread(l, s, *buf, n, off) != 0) {
        if (!errno)
            errno = EIO;
        return -1;
    }
    uint32_t len;
    if (!parse_rec(*buf, n, out, &len) || out->seq != seq) {
        log_error("store: %s: record %" PRIu64 " failed its checksum on read", l->dir, seq);
        l->bytes -= slog_rec_len(l, s, seq - s->first);
        l->msgs--;
        s->off[seq - s->first] = HOLE;
        s->damaged = 1;
        if (s->ckpt_size)
            ckpt_forget(s); /* it lists the record: the next start scans the segment */
        return 0;
    }
    return 1;
}

int slog_verify(slog_t *l, uint64_t from, uint64_t max_bytes, double max_seconds, slog_verify_t *v)
{
    char *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    memset(v, 0, sizeof *v);
    uint64_t seq = from > l->first_seq ? from : l->first_seq;
    seg_t *prev = NULL;
    for (; seq && seq <= l->last_seq; seq++) {
        if (v->bytes >= max_bytes)
            break;
        if ((seq & 63) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 >= max_seconds)
                break;
        }
        seg_t *s = seg_for(l, seq);
        if (s != prev && prev && prev != active(l) && prev->rc) {
            free(prev->rc); /* verifying reads every segment: keep no read-ahead behind it */
            prev->rc = NULL;
            prev->rc_len = 0;
        }
        prev = s;
        if (!s || s->off[seq - s->first] == HOLE || (l->cut_pending && seq > l->cut_after)) {
            v->missing++;
            continue;
        }
        uint64_t span = rec_span(l, s, seq - s->first);
        slog_rec_t r;
        int got = slog_read(l, seq, &r, &buf, &cap);
        if (got < 0) {
            rc = -1;
            break;
        }
        v->bytes += span;
        if (got == 1) {
            v->records++;
        } else { /* it failed its checksum: slog_read made it a hole */
            if (v->nbad < SLOG_VERIFY_BAD)
                v->bad_seqs[v->nbad++] = seq;
            v->bad++;
        }
    }
    if (prev && prev != active(l) && prev->rc) {
        free(prev->rc);
        prev->rc = NULL;
        prev->rc_len = 0;
    }
    free(buf);
    v->next_seq = seq > l->last_seq ? l->last_seq + 1 : seq;
    return rc;
}

/* Time of the record at index i of s (not a hole), through the
 * read-ahead: a seek reads its window once.  -1 when it cannot be read. */
static int64_t seg_rec_time(slog_t *l, seg_t *s, uint64_t i)
{
    off_t off = s->off[i];
    char h[REC_HDR];
    if (off >= s->size)
        memcpy(h, l->wbuf + (off - s->size), REC_HDR);
    else if (seg_pread(l, s, h, REC_HDR, off) != 0)
        return -1;
    return (int64_t)get64(h + 24);
}

/* The last seek entry with a time before ts: its segment in *si and its
 * index in *ei.  Every record after it and from the next entry on (of its
 * segment, else the first of the next segment that has records) is at or
 * after ts.  0 when no entry is before ts.  Memory only. */
static int seek_find(slog_t *l, int64_t ts, size_t *si, size_t *ei)
{
    size_t lo = 0, hi = l->nsegs;
    while (lo < hi) { /* the first segment whose first entry is at or after ts */
        size_t mid = lo + (hi - lo) / 2, m = mid;
        while (m < hi && !l->segs[m]->nseek)
            m++; /* a segment without records: the next one decides */
        if (m == hi || l->segs[m]->seek[0].ts >= ts)
            hi = mid;
        else
            lo = m + 1;
    }
    while (lo > 0 && !l->segs[lo - 1]->nseek)
        lo--;
    if (lo == 0)
        return 0;
    const seg_t *s = l->segs[lo - 1];
    size_t a = 0, b = s->nseek; /* its first entry at or after ts (not entry 0) */
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (s->seek[mid].ts >= ts)
            b = mid;
        else
            a = mid + 1;
    }
    *si = lo - 1;
    *ei = a - 1;
    return 1;
}

uint64_t slog_seq_at_time(slog_t *l, int64_t ts)
{
    uint64_t reads = l->reads, bytes = l->read_bytes, from = l->first_seq ? l->first_seq : 1, q = from;
    size_t si, ei;
    l->seeks++;
    if (seek_find(l, ts, &si, &ei)) {
        /* The answer is in the window after entry ei: at most SEEK_STEP
         * bytes and a record, read in order. */
        seg_t *s = l->segs[si];
        uint64_t stop = ei + 1 < s->nseek ? s->seek[ei + 1].seq : s->first + s->n;
        if (s->seek[ei].seq + 1 > q)
            q = s->seek[ei].seq + 1;
        for (; q < stop; q++) {
            uint64_t i = q - s->first;
            if (s->off[i] == HOLE)
                continue;
            l->seek_records++;
            int64_t t = seg_rec_time(l, s, i);
            if (t >= ts)
                break; /* (unreadable, -1: as a hole, the next record decides) */
        }
    }
    if (q > l->last_seq + 1)
        q = l->last_seq + 1;
    l->seek_reads += l->reads - reads;
    l->seek_bytes += l->read_bytes - bytes;
    return q;
}

uint64_t slog_committed(const slog_t *l) { return l->committed_seq; }

uint64_t slog_last(const slog_t *l, uint64_t *failures)
{
    if (failures)
        *failures = l->sync_errors + l->write_errors;
    return l->last_seq;
}

void slog_get_info(slog_t *l, slog_info_t *o)
{
    memset(o, 0, sizeof *o);
    o->first_seq = l->msgs ? l->first_seq : l->last_seq + 1;
    o->last_seq = l->last_seq;
    o->committed_seq = l->committed_seq;
    o->msgs = l->msgs;
    o->bytes = l->bytes;
    if (l->msgs) {
        for (uint64_t q = l->first_seq; q <= l->last_seq && (o->first_ts = rec_time(l, q)) < 0; q++)
            ;
        o->last_ts = l->last_ts;
    }
    o->segments = l->nsegs;
    pthread_mutex_lock(&l->mu);
    o->syncs = l->syncs;
    pthread_mutex_unlock(&l->mu);
    o->sync_errors = l->sync_errors;
    o->write_errors = l->write_errors;
    o->failed = l->failed;
    o->reads = l->reads;
    o->read_bytes = l->read_bytes;
    o->seeks = l->seeks;
    o->seek_reads = l->seek_reads;
    o->seek_bytes = l->seek_bytes;
    o->seek_records = l->seek_records;
}

/* ---- opening: the recovery scan -------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Where the run of zero bytes that ends map[0..size) starts, or p if the
 * run reaches back to p. */
static size_t zero_tail(const char *map, size_t p, size_t size)
{
    size_t e = size;
    while (e > p && (e & 7)) { /* byte by byte down to a multiple of 8 */
        if (map[e - 1])
            return e;
        e--;
    }
    while (e >= p + 8) {
        uint64_t w;
        memcpy(&w, map + e - 8, 8);
        if (w)
            break;
        e -= 8;
    }
    while (e > p && !map[e - 1])
        e--;
    return e;
}

/* Adds the whole record r found at offset off of segment s to the index,
 * the per-subject last sequences and the dedup window.  0, or -1 when out
 * of memory. */
static int scan_add(slog_t *l, seg_t *s, const slog_rec_t *r, size_t off, uint32_t len, int64_t dedup_from)
{
    if (s->n == 0 && r->seq != s->first)
        s->first = r->seq; /* the segment's first records are gone: index from here */
    while (s->first + s->n < r->seq)
        if (seg_push(s, HOLE) < 0)
            return -1;
    if (slog_seek_reserve(s) < 0 || seg_push(s, (uint32_t)off) < 0)
        return -1;
    slog_seek_note(s, r->seq, r->ts, (uint32_t)off);
    dict_put(&l->subj_last, r->subject, r->subject_len, (void *)(uintptr_t)r->seq);
    if (r->key_len && l->o.dedup_window > 0 && r->ts >= dedup_from)
        slog_dedup_add(l, r->key, r->key_len, r->seq, r->ts);
    if (l->first_seq == 0)
        l->first_seq = r->seq;
    l->last_seq = r->seq;
    l->last_ts = r->ts;
    l->msgs++;
    l->bytes += len;
    return 0;
}

/* At offset p of the segment mapped at map (size bytes) there is no whole
 * record: zeros to the end (space filled ahead: the end of the log), damage
 * with whole records after it (skipped and reported), or a torn tail (cut
 * when the segment is the last, else skipped).  Returns the offset where
 * scanning goes on, or size when it is over; -1 when a cut failed.  Sets
 * s->size when the end of the records is known. */
static long scan_damage(seg_t *s, const char *map, size_t size, size_t p, uint64_t prev, int is_last,
                        slog_report_t *rep)
{
    size_t zend = zero_tail(map, p, size);
    if (zend == p) {
        s->size = (off_t)p;
        return (long)size;
    }
    /* Find the next record (one that also goes on from the sequences read
     * so far). */
    slog_rec_t r;
    uint32_t len;
    size_t q = p + 1;
    while ((q = record_next(&seg_record, map, size, q)) < size) {
        if (parse_rec(map + q, size - q, &r, &len) && r.seq > prev) {
            rep->corrupt++;
            rep->corrupt_bytes += q - p;
            s->damaged = 1;
            log_warn("store: %s: damaged record at offset %zu (%zu bytes) skipped; records from sequence %" PRIu64
                     " on are kept", s->path, p, q - p, r.seq);
            return (long)q;
        }
        q++;
    }
    /* (Zeros after the damage were filled ahead: not counted.) */
    if (is_last) {
        rep->torn_bytes += zend - p;
        log_warn("store: %s: cut a torn tail of %zu bytes at offset %zu", s->path, zend - p, p);
        if (seg_truncate(s, (off_t)p) != 0)
            return -1;
        s->size = (off_t)p;
        return (long)size;
    }
    rep->corrupt++;
    rep->corrupt_bytes += zend - p;
    s->damaged = 1;
    log_warn("store: %s: damaged record at offset %zu (%zu bytes to the end) skipped", s->path, p, zend - p);
    s->size = (off_t)zend;
    return (long)size;
}

/* Loads one segment, filling its index: from its checkpoint when it has a
 * usable one, scanning (every record's CRC) only what was written after
 * it; else by scanning it all.  is_last: a bad tail is torn and cut.  0,
 * or -1 (errno). */
static int scan_segment(slog_t *l, seg_t *s, int is_last, slog_report_t *rep, int64_t dedup_from)
{
    struct stat sb;
    if (fstat(s->fd, &sb) != 0)
        return -1;
    size_t size = (size_t)sb.st_size;
    s->size = s->alloc = (off_t)size;
    if (size < SEG_HDR) {
        if (size) {
            if (is_last) {
                rep->torn_bytes += size;
                log_warn("store: %s: cut a torn segment header (%zu bytes)", s->path, size);
                if (seg_truncate(s, 0) != 0)
                    return -1;
                s->alloc = 0;
            } else {
                rep->corrupt_bytes += size;
            }
        }
        s->size = 0;
        return 0;
    }
    size_t p = SEG_HDR;
    int got = ckpt_load(l, s, size, rep, dedup_from);
    if (got < 0)
        return -1;
    if (got) {
        p = (size_t)s->size;
        s->size = (off_t)size;
        if (p == size)
            return 0;
    }
    rep->scanned_bytes += size - p;
    char *map = mmap(NULL, size, PROT_READ, MAP_SHARED, s->fd, 0);
    if (map == MAP_FAILED)
        return -1;
    madvise(map, size, MADV_SEQUENTIAL);
    if (!got && (memcmp(map, SEG_MAGIC, 8) || get64(map + 8) != s->first))
        log_warn("store: %s: damaged segment header (kept: records carry their own sequence)", s->path);
    size_t dropped = (p / SCAN_WINDOW) * SCAN_WINDOW; /* the mapping before this is out of our RSS */
    int rc = 0;
    while (p < size) {
        if (p - dropped >= SCAN_WINDOW) {
            /* Scanned pages stay in the page cache but leave this process:
             * memory does not grow with the size of a segment. */
            size_t upto = (p / SCAN_WINDOW) * SCAN_WINDOW;
            madvise(map + dropped, upto - dropped, MADV_DONTNEED);
            dropped = upto;
        }
        slog_rec_t r;
        uint32_t len;
        if (parse_rec(map + p, size - p, &r, &len) && r.seq > l->last_seq && r.seq >= s->first) {
            if (scan_add(l, s, &r, p, len, dedup_from) < 0) {
                errno = ENOMEM;
                rc = -1;
                break;
            }
            rep->records++;
            p += len;
            continue;
        }
        long next = scan_damage(s, map, size, p, l->last_seq, is_last, rep);
        if (next < 0) {
            rc = -1;
            break;
        }
        p = (size_t)next;
    }
    munmap(map, size);
    return rc;
}

static void clear_memory(slog_t *l)
{
    pthread_mutex_lock(&l->mu);
    ckpt_drop_jobs(l, 0, UINT64_MAX);
    pthread_mutex_unlock(&l->mu);
    for (size_t i = 0; i < l->nsegs; i++)
        seg_free(l->segs[i]);
    l->nsegs = 0;
    dict_clear(&l->subj_last, NULL);
    dict_clear(&l->dedup, NULL);
    for (size_t i = 0; i < l->dq_len; i++)
        free(l->dq[(l->dq_head + i) % l->dq_cap].key);
    l->dq_len = l->dq_head = 0;
    l->first_seq = l->last_seq = l->committed_seq = l->written_seq = 0;
    l->msgs = l->bytes = 0;
    l->last_ts = 0;
    l->wlen = 0;
    l->wfirst = 0;
}

static int load(slog_t *l, slog_report_t *rep)
{
    memset(rep, 0, sizeof *rep);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    DIR *d = opendir(l->dir);
    if (!d)
        return -1;
    uint64_t *firsts = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t nl = strlen(de->d_name);
        if (nl > 9 && !strcmp(de->d_name + nl - 9, ".ckpt.tmp")) {
            char tmp[4200]; /* a checkpoint a crash interrupted */
            snprintf(tmp, sizeof tmp, "%s/%s", l->dir, de->d_name);
            vfs_unlink(tmp);
            continue;
        }
        if (nl != 24 || strcmp(de->d_name + 20, ".seg"))
            continue;
        char *end;
        uint64_t f = strtoull(de->d_name, &end, 10);
        if (end != de->d_name + 20 || f == 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *nf = realloc(firsts, cap * sizeof *nf);
            if (!nf) {
                closedir(d);
                free(firsts);
                errno = ENOMEM;
                return -1;
            }
            firsts = nf;
        }
        firsts[n++] = f;
    }
    closedir(d);
    if (n)
        qsort(firsts, n, sizeof *firsts, cmp_u64);
    int64_t dedup_from = slog_now_ns() - (int64_t)(l->o.dedup_window * 1e9);
    for (size_t i = 0; i < n; i++) {
        seg_t *s = seg_new(l->dir, firsts[i]);
        if (!s || segs_append(l, s) < 0) {
            seg_free(s);
            free(firsts);
            errno = ENOMEM;
            return -1;
        }
        s->fd = vfs_open(s->path, O_RDWR, 0644);
        if (s->fd < 0 || scan_segment(l, s, i + 1 == n, rep, dedup_from) < 0) {
            free(firsts);
            return -1;
        }
        if (s->n == 0 && l->last_seq < s->first - 1 && i + 1 == n)
            l->last_seq = s->first - 1; /* an empty newest segment still says where we were */
    }
    free(firsts);
    rep->segments = l->nsegs;
    /* Sealed segments scanned in full get their checkpoint now (the sync
     * thread writes them), so that the next start need not scan them. */
    for (size_t i = 0; i + 1 < l->nsegs; i++)
        if (l->segs[i]->n && l->segs[i]->ckpt_size != l->segs[i]->size)
            ckpt_queue(l, l->segs[i]);
    /* Sealed segments left with no records at all are of no use. */
    if (!l->nsegs || active(l)->size >= (off_t)l->o.segment_size) {
        if (roll(l, l->last_seq + 1) < 0)
            return -1;
    }
    l->written_seq = l->committed_seq = l->last_seq;
    pthread_mutex_lock(&l->mu);
    l->done = l->want = l->last_seq;
    pthread_mutex_unlock(&l->mu);
    enforce_counts(l);
    slog_expire(l);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rep->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return 0;
}

/* Rebuilds a failed log from the disk.  0, or -1 with the log still
 * failed (the tick tries again). */
static int reopen(slog_t *l)
{
    slog_report_t rep;
    if (l->cut_pending) {
        if (cut_files(l, l->cut_after) < 0) {
            log_error("store: %s: cannot cut off the records after sequence %" PRIu64 " (%s); retrying", l->dir,
                      l->cut_after, strerror(errno));
            return -1;
        }
        l->cut_pending = 0;
    }
    clear_memory(l);
    if (load(l, &rep) < 0) {
        log_error("store: %s: cannot reopen (%s); retrying", l->dir, strerror(errno));
        clear_memory(l);
        return -1;
    }
    l->removed_lines = 0;
    removed_replay(l); /* what was purged or deleted stays so, as at a start */
    l->failed = 0;
    log_info("store: %s reopened from the disk: sequences %" PRIu64 "..%" PRIu64, l->dir, l->first_seq,
             l->last_seq);
    if (l->cb)
        l->cb(l->ctx, l->committed_seq, 0);
    return 0;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    slog_t *l = arg;
    if (l->failed) {
        reopen_when_idle(l);
        return;
    }
    if (l->o.fsync == FSYNC_INTERVAL) {
        flush(l);
        request_sync(l, -1, l->written_seq, 0);
    }
    if (l->o.dedup_window > 0)
        dedup_expire(l, slog_now_ns());
    slog_expire(l);
}

slog_t *slog_open(const char *dir, const slog_opts_t *o, struct event_base *base, slog_commit_fn on_commit, void *ctx,
                  slog_report_t *rep, char *err, size_t errsz)
{
    slog_t *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    l->o = *o;
    if (l->o.segment_size < 4096)
        l->o.segment_size = 4096;
    if (l->o.segment_size > MAX_SEGMENT)
        l->o.segment_size = MAX_SEGMENT;
    l->dir = strdup(dir);
    l->base = base;
    l->cb = on_commit;
    l->ctx = ctx;
    l->efd = -1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    dict_init(&l->subj_last);
    dict_init(&l->dedup);
    if (!l->dir || (mkdir(dir, 0755) != 0 && errno != EEXIST)) {
        snprintf(err, errsz, "cannot create %s: %s", dir, strerror(errno));
        goto fail;
    }
    l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->flush_ev = event_new(base, -1, 0, on_flush, l);
    l->tick_ev = event_new(base, -1, EV_PERSIST, on_tick, l);
    l->sync_ev = l->efd >= 0 ? event_new(base, l->efd, EV_READ | EV_PERSIST, on_sync_done, l) : NULL;
    if (!l->flush_ev || !l->tick_ev || !l->sync_ev) {
        snprintf(err, errsz, "cannot set up events for %s", dir);
        goto fail;
    }
    l->cb = NULL; /* nothing to report during the first load */
    if (load(l, rep) < 0) {
        snprintf(err, errsz, "cannot open the stream in %s: %s", dir, strerror(errno));
        goto fail;
    }
    removed_replay(l);
    l->cb = on_commit;
    l->parents_unsynced = l->o.fsync != FSYNC_NEVER; /* with the first sync round */
    if (pthread_create(&l->th, NULL, sync_main, l) != 0) {
        snprintf(err, errsz, "cannot start the sync thread");
        goto fail;
    }
    l->have_thread = 1;
    event_add(l->sync_ev, NULL);
    double iv = l->o.fsync == FSYNC_INTERVAL && l->o.sync_interval > 0 && l->o.sync_interval < 1 ? l->o.sync_interval : 1;
    struct timeval tv = util_timeval(iv);
    event_add(l->tick_ev, &tv);
    return l;
fail:
    slog_close(l);
    return NULL;
}

void slog_close(slog_t *l)
{
    if (!l)
        return;
    if (!l->failed)
        flush(l);
    if (l->have_thread) {
        pthread_mutex_lock(&l->mu);
        if (l->o.fsync != FSYNC_NEVER && active(l)) {
            sync_list_add(l, active(l)->fd);
            l->want = l->last_seq;
        }
        l->stop = 1;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->th, NULL);
        /* The last round decides for the records still waiting. */
        if (l->o.fsync == FSYNC_ALWAYS && !l->failed && l->last_seq > l->committed_seq) {
            if (l->done_err) {
                log_error("store: %s: fdatasync failed (%s) at close; the records after sequence %" PRIu64
                          " are taken back", l->dir, strerror(l->done_err), l->committed_seq);
                cut_later(l, l->committed_seq);
                if (l->cb)
                    l->cb(l->ctx, l->committed_seq, l->done_err);
            } else if (l->done > l->committed_seq) {
                l->committed_seq = l->done;
                if (l->cb)
                    l->cb(l->ctx, l->done, 0);
            }
        }
    }
    /* What a failed write or sync left in the files must not be there at
     * the next start. */
    if (l->cut_pending && cut_files(l, l->cut_after) < 0)
        log_error("store: %s: cannot cut off the records after sequence %" PRIu64 " (%s); they will be read back",
                  l->dir, l->cut_after, strerror(errno));
    else if (l->have_thread && !l->failed && !l->cut_pending)
        ckpt_write_all(l);
    if (l->flush_ev)
        event_free(l->flush_ev);
    if (l->tick_ev)
        event_free(l->tick_ev);
    if (l->sync_ev)
        event_free(l->sync_ev);
    if (l->efd >= 0)
        close(l->efd);
    clear_memory(l);
    free(l->segs);
    free(l->dq);
    free(l->wbuf);
    free(l->fbuf);
    free(l->undo);
    free(l->sfds);
    free(l->jobs);
    free(l->dir);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l);
}
