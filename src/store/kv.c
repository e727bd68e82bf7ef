/*
 * kv.c - the scripts' key-value store (see kv.h), kept on disk once
 * kv_persist has given it a directory.
 *
 * On disk, in <data>/kv/:
 *   snapshot  the whole store at the start of a generation: 28-byte header
 *             "TIDEKVS1", u64 generation, u64 number of entries, u32
 *             CRC-32C of the header's first 24 bytes; then one set record
 *             (below) per entry
 *   log       the changes since the snapshot of the same generation:
 *             20-byte header "TIDEKVL1", u64 generation, u32 CRC-32C of
 *             its first 16 bytes; then one record per change
 * A record (both files):
 *   u32 magic "TKV1", u32 CRC-32C of bytes 8..end, u32 record length (all
 *   of it, header included), u8 op ('S' set, 'D' delete), u8 type (0
 *   string, 1 integer, 2 float, 3 boolean, 4 JSON text; 0 for deletes),
 *   u16 zero, u32 key length, the key, the value: i64 / IEEE double (8
 *   bytes), one byte 0/1, or the bytes of the string or JSON text
 * Integers are little-endian.  kv.incr writes the new value as a set, so
 * replaying a record twice or skipping a damaged one never shifts a
 * counter.
 *
 * Every change is one write() to the log, at once (no fsync: a crash of
 * the process loses nothing, a power loss can lose the latest changes).
 * When the log holds more than 10,000 records and 4 times the live entries,
 * the store is compacted: a new snapshot of generation g+1 (snapshot.tmp,
 * rename), then a new log of generation g+1 (log.tmp, rename).  Like the
 * log, the snapshot is not fsync'd: the loop never waits for the disk.  A log of an older generation than the snapshot (a
 * crash between the two renames) is never applied: the snapshot already
 * holds it.
 *
 * Loading replays the snapshot, then the log.  A record whose CRC fails is
 * skipped (the next record is found again by its magic and CRC) and
 * reported; bytes after the last good record with no good record after
 * them are a torn tail, cut from the log.  A damaged header is reported and
 * the records that check out are still loaded.  After any damage a copy
 * of the damaged file is kept (snapshot.damaged, log.damaged, a second
 * link) and a fresh snapshot is written.
 *
 * A write that fails (disk full, I/O error) is logged (at most every 10 s)
 * and never touches the value in memory: the log is cut back to its last
 * whole record and, from then on, a new snapshot is tried (at most once a
 * second, on a change, and at shutdown) until one succeeds and appends
 * resume.
 *
 * Entries set before kv_persist are put over what was loaded and written
 * to the log.
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

#include "crc32c.h"
#include "dict.h"
#include "kv.h"
#include "log.h"
#include "record.h"
#include "util.h"
#include "vfs.h"


#define REC_MAGIC 0x31564b54u /* "TKV1" */
#define REC_HDR 20
#define LOG_HDR 20
#define SNAP_HDR 28
#define REC_MAX (1u << 30)
#define COMPACT_MIN 10000
#define COMPACT_FACTOR 4
#define RETRY_NS 1000000000LL
#define ERRLOG_NS 10000000000LL
#define SNAP_CHUNK (256 * 1024)

struct kv {
    dict_t d;
    /* On disk (dir != NULL once kv_persist ran). */
    char *dir;
    int fd;           /* the log, open for appending; -1 when none yet */
    uint64_t gen;     /* generation of the snapshot and the log */
    uint64_t log_len; /* bytes of whole records (and header) in the log */
    uint64_t nrec;    /* records in the log */
    int broken;       /* a write failed: the disk is behind until a snapshot works */
    int64_t next_try; /* monotonic ns: no snapshot attempt before */
    int64_t last_err; /* monotonic ns of the last error logged */
    uint64_t quiet_errs;
    char *buf;
    size_t bcap;
    /* What is held, against the limits (kv_set_limits; 0: none). */
    size_t bytes; /* keys and values */
    kv_limits_t lim;
};

/* Bytes an entry holds: its key and its value. */
static size_t entry_size(size_t kl, const kv_value_t *v)
{
    return kl + (v ? (v->type == KV_STRING || v->type == KV_JSON ? v->len : 8) : 0);
}

/* Counts the bytes again (after loading). */
static void recount(kv_t *kv)
{
    kv->bytes = 0;
    for (size_t i = 0; i < kv->d.cap; i++)
        if (kv->d.slots[i].key)
            kv->bytes += entry_size(kv->d.slots[i].klen, kv->d.slots[i].val);
}

void kv_value_free(kv_value_t *v)
{
    if (v) {
        free(v->s);
        free(v);
    }
}

static void value_free(void *p) { kv_value_free(p); }

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

kv_t *kv_new(void)
{
    kv_t *kv = calloc(1, sizeof *kv);
    if (kv)
        kv->fd = -1;
    return kv;
}

static int snapshot(kv_t *kv);

void kv_free(kv_t *kv)
{
    if (!kv)
        return;
    if (kv->dir && kv->broken && snapshot(kv) == 0)
        log_info("kv: the store is on disk again (%s)", kv->dir);
    if (kv->fd >= 0)
        vfs_close(kv->fd);
    dict_clear(&kv->d, value_free);
    free(kv->dir);
    free(kv->buf);
    free(kv);
}

size_t kv_count(const kv_t *kv) { return kv->d.count; }

/* ---- records ------------------------------------------------------------------ */

static int reserve(kv_t *kv, size_t n)
{
    if (n <= kv->bcap)
        return 0;
    size_t nc = kv->bcap ? kv->bcap : 4096;
    while (nc < n)
        nc *= 2;
    char *nb = realloc(kv->buf, nc);
    if (!nb)
        return -1;
    kv->buf = nb;
    kv->bcap = nc;
    return 0;
}

/* Appends the record for key = v (v NULL: deleted) to kv->buf at *off. */
static int encode(kv_t *kv, size_t *off, const char *k, size_t kl, const kv_value_t *v)
{
    char num[8];
    const char *val = NULL;
    size_t vl = 0;
    if (v) {
        switch (v->type) {
        case KV_INT:
            memcpy(num, &v->i, 8), val = num, vl = 8;
            break;
        case KV_FLOAT:
            memcpy(num, &v->f, 8), val = num, vl = 8;
            break;
        case KV_BOOL:
            num[0] = v->i ? 1 : 0, val = num, vl = 1;
            break;
        default:
            val = v->s, vl = v->len;
            break;
        }
    }
    size_t len = REC_HDR + kl + vl;
    if (len > REC_MAX || reserve(kv, *off + len) < 0) {
        errno = len > REC_MAX ? EFBIG : ENOMEM;
        return -1;
    }
    char *p = kv->buf + *off;
    uint32_t kl32 = (uint32_t)kl;
    p[12] = v ? 'S' : 'D';
    p[13] = v ? (char)v->type : 0;
    p[14] = p[15] = 0;
    memcpy(p + 16, &kl32, 4);
    memcpy(p + REC_HDR, k, kl);
    if (vl)
        memcpy(p + REC_HDR + kl, val, vl);
    record_seal(p, REC_MAGIC, (uint32_t)len);
    *off += len;
    return 0;
}

/* A record's key fits in it (the frame is record.c's). */
static int record_fits(const char *rec, uint32_t len)
{
    uint32_t kl;
    memcpy(&kl, rec + 16, 4);
    return kl <= len - REC_HDR;
}

static const record_kind_t kv_record = {REC_MAGIC, REC_HDR, REC_MAX, record_fits};

/* Applies a well-formed record: 0, -1 when its content makes no sense,
 * -2 when out of memory. */
static int apply_record(kv_t *kv, const char *r, size_t len)
{
    uint32_t kl;
    memcpy(&kl, r + 16, 4);
    const char *k = r + REC_HDR, *val = k + kl;
    size_t vl = len - REC_HDR - kl;
    int type = (unsigned char)r[13];
    if (r[12] == 'D') {
        value_free(dict_remove(&kv->d, k, kl));
        return 0;
    }
    if (r[12] != 'S' || type > KV_JSON || ((type == KV_INT || type == KV_FLOAT) && vl != 8) ||
        (type == KV_BOOL && (vl != 1 || (unsigned char)val[0] > 1)))
        return -1;
    kv_value_t *v = calloc(1, sizeof *v);
    if (!v)
        return -2;
    v->type = type;
    switch (type) {
    case KV_INT:
        memcpy(&v->i, val, 8);
        break;
    case KV_FLOAT:
        memcpy(&v->f, val, 8);
        break;
    case KV_BOOL:
        v->i = val[0];
        break;
    default:
        v->len = vl;
        if (!(v->s = util_mem_dup(val, vl))) {
            free(v);
            return -2;
        }
        break;
    }
    kv_value_t *old = dict_get(&kv->d, k, kl);
    if (dict_put(&kv->d, k, kl, v) < 0) {
        value_free(v);
        return -2;
    }
    value_free(old);
    return 0;
}

typedef struct scan {
    uint64_t nrec;      /* records applied */
    uint64_t damaged;   /* records skipped */
    uint64_t bad_bytes; /* bytes skipped in the middle */
    uint64_t torn;      /* bytes at the end with no good record after them */
    size_t good_end;    /* end of the last good record */
} scan_t;

/* Replays the records of b[off..n).  0, or -1 when out of memory. */
static int replay(kv_t *kv, const char *b, size_t n, size_t off, scan_t *s)
{
    memset(s, 0, sizeof *s);
    s->good_end = off;
    while (off < n) {
        size_t len = record_check(&kv_record, b + off, n - off);
        if (len) {
            int rc = apply_record(kv, b + off, len);
            if (rc == -2)
                return -1;
            if (rc == 0)
                s->nrec++;
            else
                s->damaged++;
            off += len;
            s->good_end = off;
            continue;
        }
        /* Damaged: find the next record that checks out. */
        size_t q = record_next(&kv_record, b, n, off + 1);
        if (q >= n) {
            s->torn = n - off;
            break;
        }
        s->damaged++;
        s->bad_bytes += q - off;
        off = q;
    }
    return 0;
}

/* ---- files -------------------------------------------------------------------- */

static void path_of(char *out, size_t n, const kv_t *kv, const char *name)
{
    snprintf(out, n, "%s/%s", kv->dir, name);
}

/* Logs a failed write, at most once every 10 s. */
static void write_error(kv_t *kv, const char *what, int e)
{
    int64_t now = mono_ns();
    if (kv->last_err && now - kv->last_err < ERRLOG_NS) {
        kv->quiet_errs++;
        return;
    }
    if (kv->quiet_errs)
        log_error("kv: cannot %s in %s: %s (and %" PRIu64 " more failures since the last report); the values stay "
                  "in memory and are written once the disk takes them",
                  what, kv->dir, strerror(e), kv->quiet_errs);
    else
        log_error("kv: cannot %s in %s: %s; the values stay in memory and are written once the disk takes them",
                  what, kv->dir, strerror(e));
    kv->last_err = now;
    kv->quiet_errs = 0;
}

/* Starts an empty log of kv->gen (log.tmp, rename) and keeps it open. */
static int new_log(kv_t *kv)
{
    char path[4200], tmp[4300], h[LOG_HDR];
    path_of(path, sizeof path, kv, "log");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (kv->fd >= 0)
        vfs_close(kv->fd);
    kv->fd = -1;
    if (util_mkdirs(kv->dir) < 0)
        return -1;
    memcpy(h, "TIDEKVL1", 8);
    memcpy(h + 8, &kv->gen, 8);
    uint32_t crc = crc32c(0, h, 16);
    memcpy(h + 16, &crc, 4);
    int fd = vfs_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (fd < 0)
        return -1;
    if (vfs_write(fd, h, sizeof h) < 0 || vfs_rename(tmp, path) < 0) {
        int e = errno;
        vfs_close(fd);
        unlink(tmp);
        errno = e;
        return -1;
    }
    kv->fd = fd;
    kv->log_len = LOG_HDR;
    kv->nrec = 0;
    return 0;
}

/*
 * Writes the whole store as generation gen + 1 and starts its log.  0, or
 * -1 (logged) with the old files still in force when the snapshot could not
 * be written; if only the new log failed, the store is broken until the
 * next snapshot.
 */
static int snapshot(kv_t *kv)
{
    char path[4200], tmp[4300];
    path_of(path, sizeof path, kv, "snapshot");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    /* Whatever fails below, the next attempt waits a second. */
    kv->next_try = mono_ns() + RETRY_NS;
    uint64_t gen = kv->gen + 1, count = kv->d.count;
    if (util_mkdirs(kv->dir) < 0) {
        write_error(kv, "create the directory", errno);
        return -1;
    }
    int fd = vfs_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        write_error(kv, "write a snapshot", errno);
        return -1;
    }
    size_t off = SNAP_HDR;
    if (reserve(kv, SNAP_CHUNK + SNAP_HDR) < 0)
        goto fail_nomem;
    memcpy(kv->buf, "TIDEKVS1", 8);
    memcpy(kv->buf + 8, &gen, 8);
    memcpy(kv->buf + 16, &count, 8);
    uint32_t crc = crc32c(0, kv->buf, 24);
    memcpy(kv->buf + 24, &crc, 4);
    for (size_t i = 0; i < kv->d.cap; i++) {
        dict_entry_t *e = &kv->d.slots[i];
        if (!e->key)
            continue;
        if (encode(kv, &off, e->key, e->klen, e->val) < 0)
            goto fail;
        if (off >= SNAP_CHUNK) {
            if (vfs_write(fd, kv->buf, off) < 0)
                goto fail;
            off = 0;
        }
    }
    if (off && vfs_write(fd, kv->buf, off) < 0)
        goto fail;
    vfs_close(fd);
    fd = -1;
    if (vfs_rename(tmp, path) < 0)
        goto fail;
    kv->gen = gen;
    /* The old log is stale from here on: never append to it again. */
    if (new_log(kv) < 0) {
        write_error(kv, "start a new log", errno);
        kv->broken = 1;
        return -1;
    }
    kv->broken = 0;
    kv->next_try = 0;
    return 0;
fail_nomem:
    errno = ENOMEM;
fail: {
    int e = errno;
    if (fd >= 0)
        vfs_close(fd);
    unlink(tmp);
    write_error(kv, "write a snapshot", e);
    return -1;
}
}

/* Writes the change of key (v NULL: deleted) to the log. */
static void write_change(kv_t *kv, const char *k, size_t kl, const kv_value_t *v)
{
    if (kv->broken) {
        if (mono_ns() >= kv->next_try && snapshot(kv) == 0)
            log_info("kv: the store is on disk again (%s)", kv->dir);
        return;
    }
    size_t n = 0;
    if ((kv->fd < 0 && new_log(kv) < 0) || encode(kv, &n, k, kl, v) < 0) {
        write_error(kv, "write a change", errno);
        kv->broken = 1;
        kv->next_try = mono_ns() + RETRY_NS;
        return;
    }
    if (vfs_write(kv->fd, kv->buf, n) < 0) {
        write_error(kv, "write a change", errno);
        /* Cut the partial record; the next snapshot writes what is lost. */
        vfs_truncate(kv->fd, (off_t)kv->log_len);
        kv->broken = 1;
        kv->next_try = mono_ns() + RETRY_NS;
        return;
    }
    kv->log_len += n;
    kv->nrec++;
    if (kv->nrec > COMPACT_MIN && kv->nrec > COMPACT_FACTOR * (uint64_t)kv->d.count && mono_ns() >= kv->next_try)
        snapshot(kv);
}

static void changed(kv_t *kv, const char *k, size_t kl, const kv_value_t *v)
{
    if (kv->dir)
        write_change(kv, k, kl, v);
}

/* Reads a whole file.  1 (with *buf, *len), 0 when there is none, -1 (errno). */
static int read_all(const char *path, int flags, int *fdp, char **buf, size_t *len)
{
    struct stat sb;
    *buf = NULL, *len = 0;
    if (stat(path, &sb) != 0)
        return errno == ENOENT ? 0 : -1;
    int fd = vfs_open(path, flags, 0644);
    if (fd < 0)
        return -1;
    if (fstat(fd, &sb) != 0)
        goto fail;
    size_t n = (size_t)sb.st_size;
    char *b = malloc(n ? n : 1);
    if (!b) {
        errno = ENOMEM;
        goto fail;
    }
    ssize_t r = vfs_pread(fd, b, n, 0);
    if (r < 0) {
        free(b);
        goto fail;
    }
    *buf = b, *len = (size_t)r;
    if (fdp)
        *fdp = fd;
    else
        vfs_close(fd);
    return 1;
fail: {
    int e = errno;
    vfs_close(fd);
    errno = e;
    return -1;
}
}

/* Keeps a copy of a damaged file (a second name for it: the original
 * stays in force until a new snapshot replaces it). */
static void keep_damaged(kv_t *kv, const char *name)
{
    char from[4200], to[4300];
    path_of(from, sizeof from, kv, name);
    snprintf(to, sizeof to, "%s.damaged", from);
    unlink(to);
    if (link(from, to) == 0)
        log_warn("kv: kept a copy of the damaged %s as %s", name, to);
}

/* Puts the entries set before kv_persist (pre, emptied) over what was
 * loaded; writes them to the log when write is set. */
static void apply_early(kv_t *kv, dict_t *pre, int write)
{
    for (size_t i = 0; i < pre->cap; i++) {
        dict_entry_t *e = &pre->slots[i];
        if (!e->key)
            continue;
        kv_value_t *old = dict_get(&kv->d, e->key, e->klen);
        if (dict_put(&kv->d, e->key, e->klen, e->val) < 0)
            continue; /* out of memory: the stored value stays */
        value_free(old);
        e->val = NULL;
        if (write)
            write_change(kv, e->key, e->klen, dict_get(&kv->d, e->key, e->klen));
    }
}

/* What loading found, for deciding what to write next. */
typedef struct kv_load {
    int have_snap, have_log;      /* the files exist */
    int snap_hdr_ok, log_hdr_ok;  /* their headers check out */
    int stale;                    /* the log is older than the snapshot: not applied */
    int need_snapshot;            /* damage, or an inconsistent pair: write a new snapshot */
    uint64_t snap_gen, snap_count, log_gen;
    scan_t ss, ls;                /* what replaying each found */
    int lfd;                      /* the log, open for appending, or -1 */
} kv_load_t;

/* Loads the snapshot at path, if there is one.  0, or -1 with err set. */
static int load_snapshot_file(kv_t *kv, const char *path, kv_load_t *ld, char *err, size_t errsz)
{
    char *b = NULL;
    size_t n = 0;
    if ((ld->have_snap = read_all(path, O_RDONLY, NULL, &b, &n)) < 0) {
        snprintf(err, errsz, "kv: cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    if (!ld->have_snap)
        return 0;
    if (n >= SNAP_HDR && !memcmp(b, "TIDEKVS1", 8)) {
        uint32_t crc;
        memcpy(&crc, b + 24, 4);
        if (crc32c(0, b, 24) == crc) {
            ld->snap_hdr_ok = 1;
            memcpy(&ld->snap_gen, b + 8, 8);
            memcpy(&ld->snap_count, b + 16, 8);
        }
    }
    int rc = replay(kv, b, n, n < SNAP_HDR ? n : SNAP_HDR, &ld->ss);
    free(b);
    if (rc < 0) {
        snprintf(err, errsz, "kv: out of memory loading %s", kv->dir);
        return -1;
    }
    const scan_t *ss = &ld->ss;
    if (!ld->snap_hdr_ok || ss->damaged || ss->torn || ss->nrec != ld->snap_count) {
        log_error("kv: the snapshot %s is damaged: %s%" PRIu64 " entries loaded%s; skipped %" PRIu64
                  " damaged record(s) (%" PRIu64 " bytes) and a damaged end of %" PRIu64 " bytes",
                  path, ld->snap_hdr_ok ? "" : "its header does not check out; ", ss->nrec,
                  ld->snap_hdr_ok && ss->nrec != ld->snap_count ? " of those it should hold" : "", ss->damaged,
                  ss->bad_bytes, ss->torn);
        ld->need_snapshot = 1;
    }
    return 0;
}

/* Loads the log at path over the snapshot, unless it is older than the
 * snapshot; keeps it open in ld->lfd.  0, or -1 with err set. */
static int load_log_file(kv_t *kv, const char *path, kv_load_t *ld, char *err, size_t errsz)
{
    char *b = NULL;
    size_t n = 0;
    if ((ld->have_log = read_all(path, O_RDWR | O_APPEND, &ld->lfd, &b, &n)) < 0) {
        snprintf(err, errsz, "kv: cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    if (!ld->have_log)
        return 0;
    if (n >= LOG_HDR && !memcmp(b, "TIDEKVL1", 8)) {
        uint32_t crc;
        memcpy(&crc, b + 16, 4);
        if (crc32c(0, b, 16) == crc) {
            ld->log_hdr_ok = 1;
            memcpy(&ld->log_gen, b + 8, 8);
        }
    }
    int snap_ok = ld->have_snap && ld->snap_hdr_ok;
    if (ld->log_hdr_ok && snap_ok && ld->log_gen < ld->snap_gen) {
        /* Left by a compaction that stopped between its two renames: the
         * snapshot holds all of it. */
        log_info("kv: %s is of generation %" PRIu64 ", older than the snapshot (%" PRIu64 "): not applied", path,
                 ld->log_gen, ld->snap_gen);
        ld->stale = ld->need_snapshot = 1;
        free(b);
        return 0;
    }
    if (!ld->log_hdr_ok) {
        log_warn("kv: the header of %s is damaged: its records are applied anyway", path);
        ld->need_snapshot = 1;
    } else if ((snap_ok && ld->log_gen > ld->snap_gen) || (!ld->have_snap && ld->log_gen > 0)) {
        log_warn("kv: %s is of generation %" PRIu64 " but the snapshot %s: values set before that "
                 "generation may be missing",
                 path, ld->log_gen, ld->have_snap ? "is older" : "is missing");
        ld->need_snapshot = 1; /* a consistent pair again */
    }
    int rc = replay(kv, b, n, n < LOG_HDR ? n : LOG_HDR, &ld->ls);
    free(b);
    if (rc < 0) {
        snprintf(err, errsz, "kv: out of memory loading %s", kv->dir);
        return -1;
    }
    if (ld->ls.damaged) {
        log_warn("kv: %s: skipped %" PRIu64 " damaged record(s) (%" PRIu64 " bytes); %" PRIu64 " records applied",
                 path, ld->ls.damaged, ld->ls.bad_bytes, ld->ls.nrec);
        ld->need_snapshot = 1;
    }
    if (ld->ls.torn)
        log_warn("kv: %s: cut a torn tail of %" PRIu64 " bytes", path, ld->ls.torn);
    return 0;
}

/* After loading: either a fresh snapshot (keeping copies of damaged files)
 * or appends go on in the log as loaded, its torn tail cut.  The entries
 * set before persisting (pre) go over what was loaded. */
static void settle_files(kv_t *kv, kv_load_t *ld, dict_t *pre)
{
    if (ld->need_snapshot) {
        if (ld->lfd >= 0)
            vfs_close(ld->lfd);
        ld->lfd = -1;
        const scan_t *ss = &ld->ss;
        if (ld->have_snap && (!ld->snap_hdr_ok || ss->damaged || ss->torn || ss->nrec != ld->snap_count))
            keep_damaged(kv, "snapshot");
        if (ld->have_log && !ld->stale && (!ld->log_hdr_ok || ld->ls.damaged))
            keep_damaged(kv, "log");
        apply_early(kv, pre, 0);
        if (snapshot(kv) < 0)
            kv->broken = 1; /* logged; the next change (or shutdown) tries again */
        return;
    }
    if (ld->lfd >= 0) {
        if (ld->ls.torn && vfs_truncate(ld->lfd, (off_t)ld->ls.good_end) < 0) {
            write_error(kv, "cut the torn tail of the log", errno);
            vfs_close(ld->lfd);
            kv->broken = 1;
            kv->next_try = 0;
        } else {
            kv->fd = ld->lfd;
            kv->log_len = ld->ls.good_end;
            kv->nrec = ld->ls.nrec + ld->ls.damaged;
        }
        ld->lfd = -1;
    }
    /* With no files yet, the log is created by the first change. */
    apply_early(kv, pre, 1);
}

int kv_persist(kv_t *kv, const char *dir, char *err, size_t errsz)
{
    char spath[4200], lpath[4200];
    kv_load_t ld;
    if (kv->dir) {
        if (!strcmp(kv->dir, dir))
            return 0;
        snprintf(err, errsz, "kv: already kept in %s", kv->dir);
        return -1;
    }
    if (!(kv->dir = strdup(dir))) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    path_of(spath, sizeof spath, kv, "snapshot");
    path_of(lpath, sizeof lpath, kv, "log");
    dict_t pre = kv->d;
    dict_init(&kv->d);
    memset(&ld, 0, sizeof ld);
    ld.lfd = -1;
    if (load_snapshot_file(kv, spath, &ld, err, errsz) < 0 || load_log_file(kv, lpath, &ld, err, errsz) < 0)
        goto fail;
    if (ld.have_snap || ld.have_log)
        log_info("kv: loaded %zu keys from %s (generation %" PRIu64 ")", kv->d.count, kv->dir,
                 ld.snap_hdr_ok ? ld.snap_gen : ld.log_gen);
    kv->gen = ld.have_snap && ld.snap_hdr_ok ? ld.snap_gen : ld.log_gen;
    if (ld.log_hdr_ok && ld.log_gen > kv->gen)
        kv->gen = ld.log_gen;
    settle_files(kv, &ld, &pre);
    dict_clear(&pre, value_free);
    recount(kv);
    return 0;

fail:
    if (ld.lfd >= 0)
        vfs_close(ld.lfd);
    dict_clear(&kv->d, value_free);
    kv->d = pre;
    free(kv->dir);
    kv->dir = NULL;
    recount(kv);
    return -1;
}

/* ---- reading and changing ------------------------------------------------------ */

const kv_value_t *kv_get(const kv_t *kv, const char *k, size_t kl)
{
    return dict_get(&((kv_t *)kv)->d, k, kl);
}

void kv_set_limits(kv_t *kv, const kv_limits_t *lim)
{
    kv->lim = *lim;
}

const kv_limits_t *kv_limits(const kv_t *kv)
{
    return &kv->lim;
}

void kv_usage(const kv_t *kv, size_t *keys, size_t *bytes)
{
    *keys = kv->d.count;
    *bytes = kv->bytes;
}

int kv_set(kv_t *kv, const char *k, size_t kl, kv_value_t *v)
{
    kv_value_t *old = dict_get(&kv->d, k, kl);
    size_t was = old ? entry_size(kl, old) : 0, now = entry_size(kl, v);
    int rc = 0;
    if (kv->lim.max_value && now - kl > kv->lim.max_value)
        rc = KV_TOO_BIG;
    else if (kv->lim.max_keys && !old && kv->d.count >= kv->lim.max_keys)
        rc = KV_TOO_MANY;
    else if (kv->lim.max_bytes && now > was && kv->bytes - was + now > kv->lim.max_bytes)
        rc = KV_FULL;
    else if (dict_put(&kv->d, k, kl, v) < 0)
        rc = -1;
    if (rc < 0) {
        kv_value_free(v);
        return rc;
    }
    kv->bytes = kv->bytes - was + now;
    value_free(old);
    changed(kv, k, kl, v);
    return 0;
}

int kv_del(kv_t *kv, const char *k, size_t kl)
{
    kv_value_t *v = dict_remove(&kv->d, k, kl);
    if (!v)
        return 0;
    kv->bytes -= entry_size(kl, v);
    changed(kv, k, kl, NULL);
    value_free(v);
    return 1;
}

int kv_incr(kv_t *kv, const char *k, size_t kl, int64_t by, int64_t *out)
{
    kv_value_t *v = dict_get(&kv->d, k, kl);
    if (!v) {
        if (kv->lim.max_keys && kv->d.count >= kv->lim.max_keys)
            return KV_TOO_MANY;
        if (kv->lim.max_bytes && kv->bytes + kl + 8 > kv->lim.max_bytes)
            return KV_FULL;
        v = calloc(1, sizeof *v);
        if (!v || dict_put(&kv->d, k, kl, v) < 0) {
            free(v);
            return -1;
        }
        v->type = KV_INT;
        kv->bytes += entry_size(kl, v);
    } else if (v->type != KV_INT) {
        return -2;
    }
    v->i = (int64_t)((uint64_t)v->i + (uint64_t)by);
    changed(kv, k, kl, v);
    *out = v->i;
    return 0;
}

void kv_each(const kv_t *kv, const char *prefix, size_t pl, void (*fn)(void *ctx, const char *k, size_t kl),
             void *ctx)
{
    for (size_t i = 0; i < kv->d.cap; i++) {
        const dict_entry_t *e = &kv->d.slots[i];
        if (e->key && e->klen >= pl && memcmp(e->key, prefix, pl) == 0)
            fn(ctx, e->key, e->klen);
    }
}
