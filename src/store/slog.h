/*
 * slog.h - one stream's log on disk: a directory of append-only segment
 * files, an index from sequence to position, and group commit.
 *
 * Layout: <dir>/<first seq, 20 digits>.seg.  A segment starts with a
 * 16-byte header ("TIDESEG1" and its first sequence), then records:
 *
 *   0  u32 magic "TRC1"      4  u32 CRC-32C of bytes 8..end
 *   8  u32 record length    12  u16 subject length   14  u16 key length
 *  16  u64 sequence         24  i64 time (ns since the epoch)
 *  32  u32 header length    36  u32 payload length
 *  40  subject, dedup key, NATS headers, payload
 *
 * all little-endian.  A segment is rolled when the next record would take
 * it past segment_size.  Retention (max_msgs, max_bytes, max_age) moves the
 * first sequence; a segment is deleted once all of it is below that.
 *
 * Opening a log rebuilds the index, the per-subject last sequences and the
 * dedup window.  A segment with a checkpoint (<first seq>.ckpt: what a scan
 * of the records it covers would rebuild, under its own CRC; written by
 * the sync thread when the segment is sealed and at a clean close) is
 * taken from it after cheap checks (the checkpoint's CRC, the file's size,
 * the last record it lists, whole at its offset), and only what was written
 * after it is scanned.  A segment without one, or whose checkpoint fails a
 * check (logged with the reason), is scanned in full: every record's CRC
 * checked, as from the log alone.  A torn record at the end is cut off; a
 * damaged record anywhere else is skipped and the records after it kept;
 * both are reported.  slog_verify checks every record on demand.
 *
 * Appends are buffered and written with one write() at the end of the
 * loop iteration.  Under fsync "always" a sync thread then runs fdatasync
 * while the loop goes on; appends that arrive meanwhile are synced by the
 * next one (group commit).  The owner hears of each step through
 * on_commit: records up to `seq` are durable under the log's policy (for
 * "interval" and "never": written), or, with err != 0, records after `seq`
 * were not stored and are gone from the log.
 *
 * Loop thread only, except the sync thread's own fdatasync.
 */
#ifndef TIDE_STORE_H
#define TIDE_STORE_H

#include <stddef.h>
#include <stdint.h>

enum { FSYNC_ALWAYS, FSYNC_INTERVAL, FSYNC_NEVER };

typedef struct slog_opts {
    size_t segment_size;   /* bytes; records are never split */
    int fsync;             /* FSYNC_* */
    double sync_interval;  /* seconds, for FSYNC_INTERVAL */
    uint64_t max_msgs;     /* 0: no limit */
    uint64_t max_bytes;    /* 0: no limit */
    double max_age;        /* seconds, 0: no limit */
    double dedup_window;   /* seconds, 0: no dedup */
} slog_opts_t;

typedef struct slog_rec {
    uint64_t seq;
    int64_t ts; /* ns since the epoch */
    const char *subject;
    size_t subject_len;
    const char *key; /* dedup key, may be empty */
    size_t key_len;
    const char *hdr; /* NATS header block ("NATS/1.0\r\n...\r\n\r\n") or empty */
    size_t hdr_len;
    const char *payload;
    size_t payload_len;
} slog_rec_t;

/* What opening found. */
typedef struct slog_report {
    uint64_t records;         /* valid records */
    uint64_t segments;
    uint64_t corrupt;         /* damaged records skipped (not at the tail) */
    uint64_t corrupt_bytes;   /* bytes they took */
    uint64_t torn_bytes;      /* bytes cut off the end of the last segment */
    double seconds;           /* time the scan took */
    uint64_t checkpoints;     /* segments taken from their checkpoint */
    uint64_t checkpoint_bytes;/* bytes of checkpoint files read */
    uint64_t scanned_bytes;   /* bytes of segment files read and checked record by record */
    uint64_t no_checkpoint;   /* segments without one (older data, the active one after a crash) */
    uint64_t fallbacks;       /* checkpoints found damaged or stale: their segment scanned in full */
    char fallback[160];       /* the first one's reason ("" for none) */
} slog_report_t;

typedef struct slog slog_t;
struct event_base;

typedef void (*slog_commit_fn)(void *ctx, uint64_t seq, int err);

/* Opens (creating) the log in dir.  NULL with the reason in err. */
slog_t *slog_open(const char *dir, const slog_opts_t *o, struct event_base *base, slog_commit_fn on_commit,
                  void *ctx, slog_report_t *rep, char *err, size_t errsz);
/* Writes and (under "always" and "interval") syncs what is buffered, stops
 * the sync thread, closes the files. */
void slog_close(slog_t *l);
/* New limits (segment size, fsync policy and dedup window are kept). */
void slog_set_limits(slog_t *l, const slog_opts_t *o);

/*
 * Appends a record (r->seq is ignored; r->ts of 0 means now).  Returns the
 * new sequence, or 0 with errno set when the log cannot take it now (a
 * failed log that has not reopened yet: EIO).  The record is durable when
 * on_commit says so.
 */
uint64_t slog_append(slog_t *l, const slog_rec_t *r);

/* Reads record seq into *out, its bytes in *buf (grown as needed; caller
 * frees).  1: found, 0: no such record (deleted, skipped or not yet
 * written), -1: read error (errno). */
int slog_read(slog_t *l, uint64_t seq, slog_rec_t *out, char **buf, size_t *cap);

/* One step of a full check of the log (every record's CRC, as the scan of
 * a start without checkpoints does). */
#define SLOG_VERIFY_BAD 32
typedef struct slog_verify {
    uint64_t next_seq; /* where the next step starts; last + 1 when done */
    uint64_t records;  /* records checked and whole */
    uint64_t bytes;    /* bytes read */
    uint64_t missing;  /* sequences with no record (skipped at start, deleted, damaged before) */
    uint64_t bad;      /* records that failed their checksum: from now on they are gone, as
                          after a failed read, and the next start scans their segment */
    uint64_t bad_seqs[SLOG_VERIFY_BAD];
    int nbad;
} slog_verify_t;

/* Checks the records from sequence `from` on (the first one when lower),
 * until about max_bytes were read or max_seconds passed, so that a check of
 * a big log is many short steps of the loop.  0, or -1 on a read error
 * (errno; what was checked is in *v). */
int slog_verify(slog_t *l, uint64_t from, uint64_t max_bytes, double max_seconds, slog_verify_t *v);

/* First sequence at or after ts (ns), or last + 1 (a sequence whose record
 * is gone may be returned when every record after it is at or after ts).
 * Finds its window in each segment's seek index (in memory) and reads at
 * most one window of the file: about SEEK_STEP (64 KiB) bytes, whatever
 * the size of the log.  Counted in slog_info_t's seek_* fields. */
uint64_t slog_seq_at_time(slog_t *l, int64_t ts);

/* Last sequence stored for subject (0: none in the log). */
uint64_t slog_subject_last(slog_t *l, const char *subject, size_t len);
/* Sequence stored under a dedup key within the window (0: none). */
uint64_t slog_dedup_find(slog_t *l, const char *key, size_t len);

typedef struct slog_info {
    uint64_t first_seq, last_seq; /* last_seq: appended (maybe not yet durable) */
    uint64_t committed_seq;       /* durable under the policy */
    uint64_t msgs, bytes;
    int64_t first_ts, last_ts;
    uint64_t segments;
    uint64_t syncs, sync_errors, write_errors;
    int failed;                   /* waiting to reopen after an I/O error */
    uint64_t reads, read_bytes;   /* reads of segment files since the log was opened */
    uint64_t seeks;               /* slog_seq_at_time calls */
    uint64_t seek_reads, seek_bytes, seek_records; /* what they read, and the records they looked at */
} slog_info_t;

void slog_get_info(slog_t *l, slog_info_t *out);
/* The last sequence durable under the log's policy (cheap). */
uint64_t slog_committed(const slog_t *l);
/* The last sequence appended, and how many writes and syncs have failed
 * since the log was opened (cheap). */
uint64_t slog_last(const slog_t *l, uint64_t *failures);

/* Drops every record below sequence `below` (all of them with last + 1):
 * first noted durably in <dir>/removed, which opening the log replays.
 * Returns how many records went; 0 with *err = errno when the note could
 * not be written (then nothing changed). */
uint64_t slog_purge(slog_t *l, uint64_t below, int *err);

/* Deletes the records seqs[0..n) that are in the log (noted durably as
 * slog_purge does, all in one sync).  Returns how many went, or -1 (errno)
 * when the note could not be written (then nothing changed). */
int slog_delete(slog_t *l, const uint64_t *seqs, size_t n);

/* Calls fn for every subject starting with prefix (plen bytes) that still
 * has a record, with its newest sequence, in no order.  fn may read the
 * log but not append.  0, or -1 when out of memory. */
int slog_each_subject(slog_t *l, const char *prefix, size_t plen,
                      void (*fn)(void *ctx, const char *subject, size_t len, uint64_t seq), void *ctx);

/* True when record seq is in the log (cheap: the index only). */
int slog_has(slog_t *l, uint64_t seq);

/* Drops the records seqs[0..n) from the log, noted in the removed file
 * once what is buffered is written (when that write fails, not at all),
 * without a sync of its own: the next slog_purge / slog_delete (which sync
 * the file) or compaction makes the note durable.  Until then a crash may
 * bring the records back, and the owner (a per-subject limit) must drop
 * them again when it opens the log. */
void slog_forget(slog_t *l, const uint64_t *seqs, size_t n);

/* Applies max_age now (also done on a timer and on append). */
void slog_expire(slog_t *l);

/* The wall clock in ns since the epoch (clock_now_ns: the virtual time
 * under tide run --clock virtual). */
int64_t slog_now_ns(void);

#endif
