/*
 * record.h - the one record framing of tide's files.
 *
 * Every record of a stream segment (slog.c; dead letters are stream
 * records too) and of the kv store's snapshot and log (kv.c) starts with
 *
 *   0  u32 magic    4  u32 CRC-32C of bytes 8..end    8  u32 length
 *
 * little-endian, the length counting the whole record, header included;
 * what follows byte 12 is the owner's.  A record is whole when its magic is
 * the owner's, its length fits what is there and the owner's bounds, its
 * CRC matches, and the owner's own check of its contents passes.
 *
 * Reading a file of records: a record that is not whole is damage.  The
 * next whole record is found again by its magic and CRC (record_next);
 * when there is none, the bytes from the damage to the end are a torn tail
 * (a write the process or the machine did not finish), which the owner cuts.
 */
#ifndef TIDE_RECORD_H
#define TIDE_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define RECORD_HDR 12 /* magic, CRC, length */

/* What one kind of record looks like to the reader. */
typedef struct record_kind {
    uint32_t magic;
    uint32_t min_len;  /* whole record, header included; at least RECORD_HDR */
    uint32_t max_len;
    /* The owner's check of a record whose frame and CRC are good: 1 when
     * its contents make sense (field lengths add up, ...).  NULL: any. */
    int (*check)(const char *rec, uint32_t len);
} record_kind_t;

/* Writes the frame of the len-byte record at rec, whose bytes from
 * RECORD_HDR on are already in place: magic, length, then the CRC. */
void record_seal(char *rec, uint32_t magic, uint32_t len);

/* The length of the whole record of kind k at p (avail bytes there), or 0
 * when there is none (damaged, or cut short). */
uint32_t record_check(const record_kind_t *k, const char *p, size_t avail);

/* The offset of the first whole record of kind k at or after `from` in
 * b[0..n), or n when there is none (the rest is a torn tail). */
size_t record_next(const record_kind_t *k, const char *b, size_t n, size_t from);

#endif
