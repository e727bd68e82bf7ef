/*
 * alloc.h - how the server's heap is kept and given back to the system.
 *
 * A fan-out to many connections allocates and frees output chains on every
 * loop pass.  With glibc's defaults each pass ends with the top of the heap
 * trimmed (it is free once the output is written) and the next pass faults
 * the same pages back in; with a higher trim point the same happens in
 * bigger steps.  So the allocator is told once, at start, never to trim by
 * itself (alloc_tune), and the memory goes back on purpose instead:
 * a timer on the loop (alloc_trimmer) hands free heap pages back to the
 * system when enough of them have piled up, e.g. after a burst.
 *
 * Without glibc both are no-ops.
 */
#ifndef TIDE_ALLOC_H
#define TIDE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

struct event_base;

/* The size from which a block gets its own mapping (given back as soon as
 * it is freed; mapped afresh, and faulted in, every time): glibc's own
 * upper bound for it, so that a 1 MiB payload copied per message stays a
 * heap block. */
#define ALLOC_MMAP_THRESHOLD (32u * 1024 * 1024)

/* Free heap the trimmer leaves alone: below it a check does nothing. */
#define ALLOC_KEEP_FREE (1u * 1024 * 1024)

/* How often the trimmer looks, in seconds. */
#define ALLOC_TRIM_INTERVAL 1.0

/* Checks in a row that found the server busy after which the trimmer trims
 * anyway, so that a server that is never idle still gives memory back. */
#define ALLOC_TRIM_BUSY_CHECKS 30

/*
 * Turns off the allocator's own trimming of the heap (the trimmer does it
 * instead) and sets its mmap threshold (ALLOC_MMAP_THRESHOLD).  A setting
 * of the whole process, as the allocator is: call it before the loop runs.
 * Calling it again changes nothing.
 */
void alloc_tune(void);

typedef struct alloc_trimmer alloc_trimmer_t;

/*
 * Starts a timer on base that, every `interval` seconds, gives the free
 * heap back to the system (malloc_trim) when more than `keep` bytes of it
 * are free and the server is idle: `activity` (a counter the caller keeps,
 * such as its deliveries; it must outlive the trimmer) has not moved since
 * the last check, or ALLOC_TRIM_BUSY_CHECKS checks in a row found it
 * moving.  Trimming while busy would only hand back pages the next loop
 * pass faults in again.  Once it trimmed, an idle server is trimmed again
 * only when its free heap has changed since.  Returns NULL when out of memory.  Free it with
 * alloc_trimmer_free before base.
 */
alloc_trimmer_t *alloc_trimmer_new(struct event_base *base, double interval, size_t keep,
                                   const uint64_t *activity);

/* Stops and frees t (NULL is fine). */
void alloc_trimmer_free(alloc_trimmer_t *t);

/* Runs one check of t now (what the timer does); returns 1 when it
 * trimmed, else 0. */
int alloc_trimmer_check(alloc_trimmer_t *t);

#endif
