/*
 * slog_internal.h - what slog.c (the log, its index, group commit) and
 * ckpt.c (the segments' checkpoints) share.  Not for use elsewhere: slog.h
 * is the log's public face.  Loop thread only, except where a function
 * says the sync thread runs it.
 */
#ifndef TIDE_SLOG_INTERNAL_H
#define TIDE_SLOG_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "dict.h"
#include "slog.h"

#define SEG_MAGIC "TIDESEG1"
#define SEG_HDR 16
#define REC_MAGIC 0x31435254u /* "TRC1" */
#define REC_HDR 40
#define HOLE UINT32_MAX
#define MAX_SEGMENT (1u << 30)
#define READ_AHEAD (64u << 10)
#define SCAN_WINDOW (4u << 20) /* recovery lets go of what it scanned every 4 MiB */
/* Under fsync = "always" the active segment is zero-filled ahead of its
 * end, PREALLOC at a time once less than PREALLOC_LOW is left: an fdatasync
 * of records written over zeros already on the disk flushes data only,
 * while one of records that grow the file must also commit its new size
 * to the file system's journal (measured on ext4: p50 270 -> 185 us, p99
 * 490 -> 330 us for one small record).  Recovery reads zeros as the end. */
#define PREALLOC (1 << 20)
#define PREALLOC_LOW (PREALLOC / 2)
/* The seek index has an entry for a segment's first record and for the
 * first record at least SEEK_STEP bytes past the previous entry: a seek by
 * time finds its window in memory and reads at most SEEK_STEP bytes (and a
 * record) of the file, whatever the size of the stream. */
#define SEEK_STEP (64u << 10)

/* One entry of a segment's seek index: record seq has time ts and lies at
 * offset off.  Times never go backwards within a stream, so the entries
 * are in order of both. */
typedef struct seek_ent {
    uint64_t seq;
    int64_t ts;
    uint32_t off;
} seek_ent_t;

typedef struct seg {
    uint64_t first; /* sequence of index slot 0 */
    uint64_t n;     /* index slots */
    uint32_t *off;  /* offset of each record, HOLE when it is not there */
    size_t cap;
    int fd;
    off_t size;  /* bytes of records in the file (not counting the write buffer) */
    off_t alloc; /* the file's length: size, or more when zero-filled ahead */
    int damaged; /* skipped bytes lie between its records (see rec_len) */
    off_t ckpt_size; /* the records its checkpoint file covers (0: it has none) */
    seek_ent_t *seek; /* the seek index, in sequence order */
    size_t nseek, capseek;
    /* Read-ahead: a consumer reads records in order, so one pread fetches
     * the next READ_AHEAD bytes and the records in them cost no syscall.
     * Records never change once written; a cut of the file clears it. */
    char *rc;
    off_t rc_off;
    size_t rc_len;
    char path[];
} seg_t;

/* A sealed segment's checkpoint, for the sync thread to write (after
 * syncing the segment's file, fd). */
typedef struct ckpt_job {
    char *path;
    char *buf;
    size_t len;
    uint64_t upto; /* the segment's last sequence */
    int fd;
} ckpt_job_t;

typedef struct dedup_ent {
    int64_t ts;
    uint64_t seq;
    char *key;
    size_t klen;
} dedup_ent_t;

struct slog {
    char *dir;
    slog_opts_t o;
    seg_t **segs;
    size_t nsegs, capsegs;
    uint64_t first_seq, last_seq, committed_seq, written_seq;
    uint64_t msgs, bytes;
    int64_t last_ts;
    dict_t subj_last;
    dict_t dedup;
    dedup_ent_t *dq;
    size_t dq_head, dq_len, dq_cap;
    /* Appends not yet written, and how to take them back. */
    char *wbuf;
    size_t wlen, wcap;
    uint64_t wfirst; /* first sequence in wbuf (0: none) */
    uint64_t *undo;  /* per buffered record: the subject's previous last sequence */
    size_t capundo;
    /* Notes of dropped records (slog_forget) that wait for the buffered
     * records which replace them: written right after those. */
    char *fbuf;
    size_t flen, fcap;
    /* Events. */
    struct event_base *base;
    struct event *flush_ev, *tick_ev, *sync_ev;
    slog_commit_fn cb;
    void *ctx;
    int failed;          /* waiting to reopen after an I/O error */
    int fail_err;
    int cut_pending;     /* the files may still hold records after cut_after */
    uint64_t cut_after;
    uint64_t syncs, sync_errors, write_errors;
    int prealloc_failed;        /* the last zero-fill failed (logged once) */
    int64_t prealloc_retry_ns;  /* no zero-fill before then */
    /* The sync thread. */
    pthread_t th;
    int have_thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int efd;
    /* Files written since they were last synced.  There is room for every
     * segment's file (made in segs_append), because a file left off this
     * list would be reported synced without being so. */
    int *sfds;
    size_t nsfds, capsfds;
    uint64_t want;    /* sync requested up to here */
    int want_dir;     /* a segment was created: sync the directory */
    int parents_unsynced; /* the stream's directory itself is new to its parents */
    int dir_unsynced; /* a failed round left it unsynced: again with the next round */
    int busy, stop;
    uint64_t done; /* synced up to here */
    int done_err;  /* errno of a failed sync */
    ckpt_job_t *jobs; /* checkpoints waiting for their records' sync, oldest first */
    size_t njobs, capjobs;
    uint64_t ckpt_errors; /* checkpoints the sync thread could not write */
    uint64_t ckpt_errors_seen;
    uint64_t removed_lines; /* in the removed file (for removed_compact) */
    /* Reads of segment files (the loop's, after opening), and those of the
     * seeks by time among them. */
    uint64_t reads, read_bytes;
    uint64_t seeks, seek_reads, seek_bytes, seek_records;
};

/* ---- little-endian fields --------------------------------------------------- */

static inline void put16(char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint16_t get16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t get32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t get64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---- slog.c ---- */

/* Bytes the record at index i of s takes, as counted in the log's bytes. */
uint64_t slog_rec_len(slog_t *l, seg_t *s, uint64_t i);
/* Adds a dedup key of record seq (time ts).  0, or -1 when out of memory. */
int slog_dedup_add(slog_t *l, const char *key, size_t klen, uint64_t seq, int64_t ts);
/* The length of the whole, valid stream record at p (avail bytes), or 0. */
uint32_t slog_record_whole(const char *p, size_t avail);
/* Room for one more entry in the seek index of s.  0, or -1 when out of
 * memory. */
int slog_seek_reserve(seg_t *s);
/* Notes record seq (time ts, at offset off, after every record s already
 * holds) in the seek index of s when it starts a new step; there is room
 * (slog_seek_reserve). */
void slog_seek_note(seg_t *s, uint64_t seq, int64_t ts, uint32_t off);

/* ---- ckpt.c: the checkpoints ---- */

/* Deletes the checkpoint of s (its file is about to lose records it
 * describes, or a record it lists failed its checksum). */
void ckpt_forget(seg_t *s);
/* Hands the checkpoint of sealed segment s to the sync thread (which syncs
 * the segment and writes it); sets s->ckpt_size.  Failing only means the
 * next start scans the segment. */
void ckpt_queue(slog_t *l, seg_t *s);
/* Drops the waiting checkpoints of segments whose last sequence is in
 * lo..hi (mu held). */
void ckpt_drop_jobs(slog_t *l, uint64_t lo, uint64_t hi);
/* Loads segment s (its file fsize bytes) from its checkpoint during a
 * start.  1: loaded (s->size is where the records it covers end: the scan
 * goes on from there), 0: none or not usable (counted in rep, and logged
 * with the reason when it was damaged or stale), -1: out of memory. */
int ckpt_load(slog_t *l, seg_t *s, size_t fsize, slog_report_t *rep, int64_t dedup_from);
/* True when a checkpoint waits to be written (mu held). */
int ckpt_ready(const slog_t *l);
/* Writes the waiting checkpoints: the sync thread, mu held (released while
 * writing, with busy set so that the loop neither closes nor cuts files). */
void ckpt_write_ready(slog_t *l);
/* At a clean close, the sync thread stopped: writes what waits and a
 * checkpoint for every segment whose checkpoint does not cover it all. */
void ckpt_write_all(slog_t *l);

#endif
