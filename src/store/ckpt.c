/* ckpt.c - the checkpoints of a stream log's segments (see slog_internal.h
 * and slog.h). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"
#include "record.h"
#include "slog_internal.h"
#include "vfs.h"

/*
 * A segment's checkpoint, <first seq>.ckpt beside its .seg, is what the
 * recovery scan would rebuild from the records it covers: the index, the
 * seek index, the per-subject last sequences, the dedup keys still in the
 * window, the counts.  One record.c frame (magic "TCK1", CRC-32C, length),
 * then:
 *
 *  12 u32 version (2)             16 u64 first: sequence of index slot 0
 *  24 u64 n: index slots          32 u64 size: end of the records covered
 *  40 u64 offset of the last record   48 u32 its CRC   52 u32 damaged
 *  56 u64 records   64 u64 their bytes   72 i64 time of the last record
 *  80 i64 keys_from: every dedup key of a record from this time on is listed
 *  88 u32 subjects  92 u32 keys
 *  96 u32 offset[n] (HOLE: no record in that slot)
 *     u32 seek entries, then per entry: u64 sequence, i64 time, u32 offset
 *     per key: u16 length, u64 sequence, i64 time, bytes
 *     per subject: u16 length, u64 its last sequence in the segment, bytes
 *
 * The loop writes the header, the index and the keys (O(records of the
 * segment)); the sync thread reads the subjects from the segment itself
 * (ckpt_finish), so that sealing a segment costs the loop nothing that
 * grows with the number of subjects in the stream.  Merged in segment
 * order, the subject tables give each subject's last sequence in the log.
 *
 * Version 1 had no seek index: such a checkpoint is not used (its segment
 * is scanned, which rebuilds the seek index, and checkpointed again).
 *
 * A sealed segment never changes, so its checkpoint is written once, by
 * the sync thread after the records are synced; the active segment's at a
 * clean close.  A checkpoint only ever describes a prefix of its segment:
 * whatever cuts the file below it deletes it first (seg_truncate).
 */
#define CKPT_MAGIC 0x314b4354u /* "TCK1" */
#define CKPT_HDR 96
#define CKPT_MAX (256u << 20)
#define CKPT_VERSION 2
#define SEEK_ENT 20 /* bytes of a seek entry */

static const record_kind_t ckpt_record = {CKPT_MAGIC, CKPT_HDR, CKPT_MAX, NULL};

static void ckpt_path(const seg_t *s, char *out, size_t n)
{
    snprintf(out, n, "%.*s.ckpt", (int)(strlen(s->path) - 4), s->path); /* ".seg" -> ".ckpt" */
}

/* Deletes the segment's checkpoint (its file is about to lose records it
 * describes, or a record it lists failed its checksum). */
void ckpt_forget(seg_t *s)
{
    char p[4200];
    ckpt_path(s, p, sizeof p);
    if (vfs_unlink(p) != 0 && errno != ENOENT)
        log_warn("store: cannot delete %s: %s", p, strerror(errno));
    s->ckpt_size = 0;
}

/* The index in the dedup queue of its first entry with a sequence at or
 * after seq (entries are in sequence order), or dq_len. */
static size_t dedup_lower(const slog_t *l, uint64_t seq)
{
    size_t lo = 0, hi = l->dq_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->dq[(l->dq_head + mid) % l->dq_cap].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The checkpoint of s as it is now, without its subject table (which
 * ckpt_finish adds from the file), in *out (caller frees), *len bytes.
 * O(records of s + their dedup keys): cheap enough for the loop.  1 when
 * there is nothing to write (no records, or too big), 0, -1 (errno). */
static int ckpt_encode(slog_t *l, seg_t *s, char **out, size_t *len)
{
    uint64_t n = s->n;
    while (n && s->off[n - 1] == HOLE)
        n--;
    if (!n || s->size < SEG_HDR)
        return 1;
    uint64_t hi = s->first + n, records = 0, bytes = 0;
    for (uint64_t i = 0; i < n; i++)
        if (s->off[i] != HOLE) {
            records++;
            bytes += slog_rec_len(l, s, i);
        }
    char h[REC_HDR];
    if (vfs_pread(s->fd, h, REC_HDR, s->off[n - 1]) != REC_HDR)
        return -1;
    size_t nseek = 0; /* (entries of records after the last one kept are left out) */
    while (nseek < s->nseek && s->seek[nseek].seq < hi)
        nseek++;
    size_t need = CKPT_HDR + 4 * n + 4 + SEEK_ENT * nseek, nkeys = 0, k0 = dedup_lower(l, s->first);
    for (size_t i = k0; i < l->dq_len && l->dq[(l->dq_head + i) % l->dq_cap].seq < hi; i++, nkeys++)
        need += 18 + l->dq[(l->dq_head + i) % l->dq_cap].klen;
    if (need > CKPT_MAX)
        return 1;
    char *b = malloc(need), *p = b + CKPT_HDR;
    if (!b)
        return -1;
    memset(b, 0, CKPT_HDR);
    put32(b + 12, CKPT_VERSION);
    put64(b + 16, s->first);
    put64(b + 24, n);
    put64(b + 32, (uint64_t)s->size);
    put64(b + 40, s->off[n - 1]);
    memcpy(b + 48, h + 4, 4);
    put32(b + 52, (uint32_t)s->damaged);
    put64(b + 56, records);
    put64(b + 64, bytes);
    memcpy(b + 72, h + 24, 8);
    put64(b + 80, l->o.dedup_window > 0 ? (uint64_t)(slog_now_ns() - (int64_t)(l->o.dedup_window * 1e9))
                                        : (uint64_t)INT64_MAX);
    put32(b + 92, (uint32_t)nkeys);
    memcpy(p, s->off, 4 * n);
    p += 4 * n;
    put32(p, (uint32_t)nseek);
    p += 4;
    for (size_t i = 0; i < nseek; i++, p += SEEK_ENT) {
        put64(p, s->seek[i].seq);
        put64(p + 8, (uint64_t)s->seek[i].ts);
        put32(p + 16, s->seek[i].off);
    }
    for (size_t i = k0; i < k0 + nkeys; i++) {
        const dedup_ent_t *d = &l->dq[(l->dq_head + i) % l->dq_cap];
        put16(p, (uint16_t)d->klen);
        put64(p + 2, d->seq);
        put64(p + 10, (uint64_t)d->ts);
        memcpy(p + 18, d->key, d->klen);
        p += 18 + d->klen;
    }
    *out = b;
    *len = need;
    return 0;
}

/* Completes checkpoint *b (*len bytes, from ckpt_encode) of the segment
 * open at fd: adds the subject table (each subject of the segment's
 * records with its last sequence there, read from the file through a
 * mapping) and seals it.  Touches nothing of the log: the sync thread
 * runs it.  0, or -1 (errno). */
static int ckpt_finish(int fd, char **b, size_t *len)
{
    uint64_t first = get64(*b + 16), n = get64(*b + 24), size = get64(*b + 32);
    const char *offs = *b + CKPT_HDR;
    dict_t subj;
    dict_init(&subj);
    size_t add = 0, nsubj = 0;
    int rc = -1;
    char *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return -1;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t off = get32(offs + 4 * i);
        if (off == HOLE)
            continue;
        if ((uint64_t)off + REC_HDR > size || off + REC_HDR + (uint64_t)get16(map + off + 12) > size) {
            errno = EIO;
            goto fail;
        }
        uint16_t sl = get16(map + off + 12);
        void *old = dict_get(&subj, map + off + REC_HDR, sl);
        if (dict_put(&subj, map + off + REC_HDR, sl, (void *)(uintptr_t)(first + i)) < 0) {
            errno = ENOMEM;
            goto fail;
        }
        if (!old) {
            add += 10 + sl;
            nsubj++;
        }
    }
    char *nb = *len + add <= CKPT_MAX ? realloc(*b, *len + add) : NULL;
    if (!nb) {
        errno = ENOMEM;
        goto fail;
    }
    char *p = nb + *len;
    for (size_t i = 0; i < subj.cap; i++) {
        const dict_entry_t *e = &subj.slots[i];
        if (!e->key)
            continue;
        put16(p, (uint16_t)e->klen);
        put64(p + 2, (uintptr_t)e->val);
        memcpy(p + 10, e->key, e->klen);
        p += 10 + e->klen;
    }
    put32(nb + 88, (uint32_t)nsubj);
    *b = nb;
    *len += add;
    record_seal(nb, CKPT_MAGIC, (uint32_t)*len);
    rc = 0;
fail:
    munmap(map, size);
    dict_clear(&subj, NULL);
    return rc;
}

/* Hands the checkpoint of sealed segment s to the sync thread, which
 * syncs the segment's file and writes it (one fdatasync more per sealed
 * segment, off the loop).  Failing to make one only means the next start
 * scans the segment. */
void ckpt_queue(slog_t *l, seg_t *s)
{
    char *buf = NULL, *path = malloc(strlen(s->path) + 8);
    size_t len = 0;
    if (!path || ckpt_encode(l, s, &buf, &len) != 0)
        goto fail;
    ckpt_path(s, path, strlen(s->path) + 8);
    uint64_t upto = s->first + s->n - 1;
    pthread_mutex_lock(&l->mu);
    if (l->njobs == l->capjobs) {
        size_t nc = l->capjobs ? l->capjobs * 2 : 8;
        ckpt_job_t *nj = realloc(l->jobs, nc * sizeof *nj);
        if (!nj) {
            pthread_mutex_unlock(&l->mu);
            goto fail;
        }
        l->jobs = nj;
        l->capjobs = nc;
    }
    l->jobs[l->njobs++] = (ckpt_job_t){path, buf, len, upto, s->fd};
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    s->ckpt_size = s->size;
    return;
fail:
    free(path);
    free(buf);
}

/* Drops the waiting checkpoints of segments whose last sequence is in
 * lo..hi (mu held). */
void ckpt_drop_jobs(slog_t *l, uint64_t lo, uint64_t hi)
{
    size_t k = 0;
    for (size_t i = 0; i < l->njobs; i++) {
        if (l->jobs[i].upto < lo || l->jobs[i].upto > hi) {
            l->jobs[k++] = l->jobs[i];
            continue;
        }
        free(l->jobs[i].path);
        free(l->jobs[i].buf);
    }
    l->njobs = k;
}

/* A checkpoint read into b[0..len): its tables (seek entries, dedup keys,
 * then subjects) are walked once to check that they fit (install 0) and
 * once to load the last two (install 1). */
static int ckpt_tables(slog_t *l, const char *b, size_t len, int install, int64_t dedup_from)
{
    uint64_t n = get64(b + 24);
    const char *p = b + CKPT_HDR + 4 * n, *end = b + len;
    uint32_t nsubj = get32(b + 88), nkeys = get32(b + 92);
    if (end - p < 4 || (size_t)(end - p - 4) / SEEK_ENT < get32(p))
        return -1;
    p += 4 + (size_t)SEEK_ENT * get32(p);
    for (uint32_t i = 0; i < nkeys; i++) {
        if (end - p < 18 || (size_t)(end - p - 18) < get16(p))
            return -1;
        uint16_t kl = get16(p);
        int64_t ts = (int64_t)get64(p + 10);
        if (install && l->o.dedup_window > 0 && ts >= dedup_from && slog_dedup_add(l, p + 18, kl, get64(p + 2), ts) < 0)
            return -1;
        p += 18 + kl;
    }
    for (uint32_t i = 0; i < nsubj; i++) {
        if (end - p < 10 || (size_t)(end - p - 10) < get16(p))
            return -1;
        uint16_t kl = get16(p);
        if (install && dict_put(&l->subj_last, p + 10, kl, (void *)(uintptr_t)get64(p + 2)) < 0)
            return -1;
        p += 10 + kl;
    }
    return p == end ? 0 : -1;
}

/* True when the seek table of checkpoint b (whose tables fit) describes
 * its index: entries in order of sequence and time, the first one for slot
 * 0, each at its record's offset (or a slot emptied since), none after the
 * last record's time.  (A wrong one would make seeks by time miss.) */
static int seek_table_fits(const char *b)
{
    uint64_t first = get64(b + 16), n = get64(b + 24), prev = 0;
    int64_t prev_ts = INT64_MIN, last_ts = (int64_t)get64(b + 72);
    const char *offs = b + CKPT_HDR, *p = offs + 4 * n;
    uint32_t ns = get32(p);
    if (!ns || get64(p + 4) != first)
        return 0;
    for (uint32_t i = 0; i < ns; i++) {
        const char *e = p + 4 + (size_t)SEEK_ENT * i;
        uint64_t seq = get64(e);
        int64_t ts = (int64_t)get64(e + 8);
        if ((i && seq <= prev) || seq >= first + n || ts < prev_ts || ts > last_ts)
            return 0;
        uint32_t off = get32(offs + 4 * (seq - first));
        if (off != HOLE && off != get32(e + 16))
            return 0;
        prev = seq;
        prev_ts = ts;
    }
    return 1;
}

/* Checks the cheap facts that say checkpoint b (len bytes) still describes
 * segment s, whose file has fsize bytes: its frame and CRC, that it goes
 * on from the sequences loaded so far, that the file holds what it covers,
 * and that the last record it lists is there, whole, with its CRC.  NULL,
 * or why not. */
static const char *ckpt_check(slog_t *l, seg_t *s, const char *b, size_t len, size_t fsize, int64_t dedup_from,
                              slog_report_t *rep)
{
    if (len < CKPT_HDR || record_check(&ckpt_record, b, len) != len) /* (0 for an empty file too) */
        return "its checksum or length is wrong";
    uint64_t first = get64(b + 16), n = get64(b + 24), size = get64(b + 32), last_off = get64(b + 40);
    if (get32(b + 12) == 1)
        return "it has no seek index (an older version)";
    if (get32(b + 12) != CKPT_VERSION || !n || n > (len - CKPT_HDR) / 4 || ckpt_tables(l, b, len, 0, 0) != 0)
        return "it cannot be read";
    if (!seek_table_fits(b))
        return "its seek index does not fit its records";
    if (first < s->first || first <= l->last_seq)
        return "its sequences do not follow the segments before it";
    if (size > fsize || size < SEG_HDR || last_off < SEG_HDR || last_off + REC_HDR > size ||
        get32(b + CKPT_HDR + 4 * (n - 1)) != last_off)
        return "the segment is shorter than the records it lists";
    if (l->o.dedup_window > 0 && (int64_t)get64(b + 72) >= dedup_from && dedup_from < (int64_t)get64(b + 80))
        return "the dedup window reaches further back than the keys it lists";
    char h[SEG_HDR + REC_HDR];
    if (vfs_pread(s->fd, h, SEG_HDR, 0) != SEG_HDR || memcmp(h, SEG_MAGIC, 8))
        return "the segment's header is not there";
    if (vfs_pread(s->fd, h, REC_HDR, (off_t)last_off) != REC_HDR || get32(h + 8) > size - last_off ||
        memcmp(h + 4, b + 48, 4) || get64(h + 16) != first + n - 1)
        return "its last record is not the one at the checkpointed offset";
    uint32_t rl = get32(h + 8);
    char *r = malloc(rl ? rl : 1);
    int whole = r && vfs_pread(s->fd, r, rl, (off_t)last_off) == (ssize_t)rl && slog_record_whole(r, rl) == rl;
    free(r);
    rep->scanned_bytes += SEG_HDR + rl;
    return whole ? NULL : "its last record fails its checksum";
}

/* Loads segment s (its file fsize bytes) from its checkpoint.  1: loaded
 * (s->size is where the records it covers end: the scan goes on from
 * there), 0: no usable checkpoint (logged; the segment is scanned in
 * full), -1: out of memory. */
int ckpt_load(slog_t *l, seg_t *s, size_t fsize, slog_report_t *rep, int64_t dedup_from)
{
    char path[4200], *b = NULL;
    size_t len = 0;
    const char *why = NULL;
    ckpt_path(s, path, sizeof path);
    if (vfs_read_file(path, CKPT_MAX, &b, &len) != 0) {
        if (errno == ENOENT) {
            rep->no_checkpoint++; /* (one line for the stream: stream.c) */
            return 0;
        }
        why = strerror(errno);
    } else {
        rep->checkpoint_bytes += len;
        why = ckpt_check(l, s, b, len, fsize, dedup_from, rep);
    }
    if (why) {
        log_warn("store: %s: checkpoint not used (%s); scanning the segment in full", s->path, why);
        if (!rep->fallbacks++)
            snprintf(rep->fallback, sizeof rep->fallback, "%s: %s", strrchr(s->path, '/') + 1, why);
        free(b);
        return 0;
    }
    uint64_t n = get64(b + 24);
    const char *st = b + CKPT_HDR + 4 * n;
    uint32_t ns = get32(st);
    uint32_t *off = malloc(n * sizeof *off);
    seek_ent_t *seek = malloc(ns * sizeof *seek);
    if (!off || !seek || ckpt_tables(l, b, len, 1, dedup_from) != 0) {
        free(off);
        free(seek);
        free(b);
        errno = ENOMEM;
        return -1;
    }
    memcpy(off, b + CKPT_HDR, n * 4);
    for (uint32_t i = 0; i < ns; i++) {
        const char *e = st + 4 + (size_t)SEEK_ENT * i;
        seek[i] = (seek_ent_t){get64(e), (int64_t)get64(e + 8), get32(e + 16)};
    }
    free(s->off);
    s->off = off;
    free(s->seek);
    s->seek = seek;
    s->nseek = s->capseek = ns;
    s->n = s->cap = n;
    s->first = get64(b + 16);
    s->size = s->ckpt_size = (off_t)get64(b + 32);
    s->damaged = get32(b + 52) != 0;
    uint64_t i = 0;
    while (off[i] == HOLE)
        i++;
    if (l->first_seq == 0)
        l->first_seq = s->first + i;
    l->last_seq = s->first + n - 1;
    l->last_ts = (int64_t)get64(b + 72);
    l->msgs += get64(b + 56);
    l->bytes += get64(b + 64);
    rep->records += get64(b + 56);
    rep->checkpoints++;
    free(b);
    return 1;
}

/* True when a checkpoint waits to be written (mu held). */
int ckpt_ready(const slog_t *l) { return l->njobs != 0; }

/* Writes the waiting checkpoints (sync thread, mu held; released while
 * writing, with busy set so that the loop neither closes nor cuts the
 * files meanwhile). */
void ckpt_write_ready(slog_t *l)
{
    size_t k = l->njobs;
    if (!k)
        return;
    ckpt_job_t *mine = malloc(k * sizeof *mine);
    if (!mine)
        return; /* the next round tries again */
    memcpy(mine, l->jobs, k * sizeof *mine);
    memmove(l->jobs, l->jobs + k, (l->njobs - k) * sizeof *l->jobs);
    l->njobs -= k;
    int was_busy = l->busy;
    l->busy = 1;
    pthread_mutex_unlock(&l->mu);
    uint64_t failed = 0;
    for (size_t i = 0; i < k; i++) {
        if (ckpt_finish(mine[i].fd, &mine[i].buf, &mine[i].len) != 0 ||
            vfs_checkpoint(mine[i].fd, mine[i].path, mine[i].buf, mine[i].len) != 0)
            failed++;
        free(mine[i].path);
        free(mine[i].buf);
    }
    free(mine);
    pthread_mutex_lock(&l->mu);
    l->busy = was_busy;
    l->ckpt_errors += failed;
}

/* At a clean close (the sync thread stopped): writes the checkpoints still
 * waiting, and one for every segment whose checkpoint does not cover all
 * its records (the active one, segments scanned at start), so that the
 * next start reads none of them. */
void ckpt_write_all(slog_t *l)
{
    for (size_t i = 0; i < l->njobs; i++)
        if (ckpt_finish(l->jobs[i].fd, &l->jobs[i].buf, &l->jobs[i].len) != 0 ||
            vfs_checkpoint(l->jobs[i].fd, l->jobs[i].path, l->jobs[i].buf, l->jobs[i].len) != 0)
            log_warn("store: cannot write %s: %s", l->jobs[i].path, strerror(errno));
    ckpt_drop_jobs(l, 0, UINT64_MAX);
    for (size_t i = 0; i < l->nsegs; i++) {
        seg_t *s = l->segs[i];
        char *buf = NULL, path[4200];
        size_t len;
        if (!s->n || s->ckpt_size == s->size || ckpt_encode(l, s, &buf, &len) != 0)
            continue;
        ckpt_path(s, path, sizeof path);
        if (ckpt_finish(s->fd, &buf, &len) != 0 || vfs_checkpoint(s->fd, path, buf, len) != 0)
            log_warn("store: cannot write %s: %s", path, strerror(errno));
        else
            s->ckpt_size = s->size;
        free(buf);
    }
}

