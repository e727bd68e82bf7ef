/* clock.c - see clock.h. */
#include <inttypes.h>
#include <stdio.h>
#include <time.h>

#include "clock.h"
#include "util.h"

/* The process's clock mode (see clock.h for why it is not per node). */
static struct {
    int is_virtual;
    int64_t now;   /* the virtual time, ns since the epoch */
    uint64_t line; /* the input line whose ids are being made */
    uint64_t ids;  /* ids made since that line started */
} vclock;

static int64_t read_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t clock_now_ns(void) { return vclock.is_virtual ? vclock.now : read_clock(CLOCK_REALTIME); }

int64_t clock_mono_ns(void) { return vclock.is_virtual ? vclock.now : read_clock(CLOCK_MONOTONIC); }

void clock_use_virtual(int64_t ns)
{
    vclock.is_virtual = 1;
    vclock.now = ns;
}

int clock_is_virtual(void) { return vclock.is_virtual; }

void clock_set(int64_t ns)
{
    if (ns > vclock.now)
        vclock.now = ns;
}

void clock_mark_line(uint64_t line)
{
    vclock.line = line;
    vclock.ids = 0;
}

void clock_event_id(char out[37])
{
    if (!vclock.is_virtual) {
        util_uuid4(out);
        return;
    }
    vclock.ids++;
    snprintf(out, 37, "%08" PRIx32 "-%04" PRIx32 "-4000-8000-%012" PRIx64, (uint32_t)vclock.line,
             (uint32_t)(vclock.line >> 32) & 0xffff, (uint64_t)(vclock.ids & 0xffffffffffff));
}

void clock_now_rfc3339(char out[64])
{
    int64_t ns = clock_now_ns();
    time_t secs = (time_t)(ns / 1000000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ns % 1000000000 / 1000000));
}
