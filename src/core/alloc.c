/* alloc.c - see alloc.h. */
#include <stdlib.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <event2/event.h>

#include "util.h"
#include "alloc.h"

struct alloc_trimmer {
    struct event *timer;
    size_t keep;
    const uint64_t *activity;
    uint64_t last;  /* *activity at the last check */
    int busy;       /* checks in a row that found it moved */
    int trimmed;    /* trimmed since *activity last moved */
    size_t free_at_trim; /* free heap then */
};

void alloc_tune(void)
{
#ifdef __GLIBC__
    /* Setting either one also stops glibc from moving them by itself (it
     * raises both as large blocks are freed, which makes the trim point
     * depend on the traffic seen so far).  A trim threshold of -1 means
     * never. */
    mallopt(M_MMAP_THRESHOLD, (int)ALLOC_MMAP_THRESHOLD);
    mallopt(M_TRIM_THRESHOLD, -1);
#endif
}

/* Bytes the allocator holds free, in every arena (the top of the heap
 * included). */
static size_t free_heap(void)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 mi = mallinfo2();
    return mi.fordblks;
#else
    return 0;
#endif
}

int alloc_trimmer_check(alloc_trimmer_t *t)
{
    if (!t)
        return 0;
    uint64_t now = *t->activity;
    int idle = now == t->last;
    t->last = now;
    t->busy = idle ? 0 : t->busy + 1;
    if (!idle)
        t->trimmed = 0;
    if (!idle && t->busy < ALLOC_TRIM_BUSY_CHECKS)
        return 0;
    size_t held = free_heap();
    if (held <= t->keep)
        return 0;
    /* Trimming leaves the free heap as it was (its pages go, not its
     * blocks): an idle server would trim the same holes every second.
     * Any change of it since (connections come and go without a
     * delivery) may have brought pages back. */
    if (idle && t->trimmed && held == t->free_at_trim)
        return 0;
    t->busy = 0;
    t->trimmed = 1;
    t->free_at_trim = held;
#ifdef __GLIBC__
    malloc_trim(0);
    return 1;
#else
    return 0;
#endif
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    alloc_trimmer_check(arg);
}

alloc_trimmer_t *alloc_trimmer_new(struct event_base *base, double interval, size_t keep,
                                   const uint64_t *activity)
{
    alloc_trimmer_t *t = calloc(1, sizeof *t);
    if (!t)
        goto fail;
    t->keep = keep;
    t->activity = activity;
    t->last = *activity;
    t->timer = event_new(base, -1, EV_PERSIST, on_timer, t);
    if (!t->timer)
        goto fail;
    struct timeval tv = util_timeval(interval);
    if (event_add(t->timer, &tv) < 0)
        goto fail;
    return t;
fail:
    alloc_trimmer_free(t);
    return NULL;
}

void alloc_trimmer_free(alloc_trimmer_t *t)
{
    if (!t)
        return;
    if (t->timer)
        event_free(t->timer);
    free(t);
}
