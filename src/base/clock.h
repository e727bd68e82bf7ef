/*
 * clock.h - the time flows see.
 *
 * Real by default: clock_now_ns() is the wall clock and clock_mono_ns()
 * the monotonic one.  `tide run --clock virtual` switches the process to a
 * virtual clock whose value the run driver sets from its input events'
 * `time`; then both return that value, and only it moves them.
 *
 * Read through this module (it decides what a flow does, so a virtual run
 * must see it): consumers' ack_wait, backoff, NAK delays, batch waits and
 * replay_original pacing (consumer.c), records' times, the duplicate
 * window and max_age (slog.c, through slog_now_ns), the `id` and `time`
 * of events ctx.publish makes and of pipeline dead letters, tide.now().
 *
 * Left on the real clocks (they measure the machine, not the flow, or talk
 * to the outside world): log timestamps, the budgets' wall-time limits and
 * the calls' durations in stats, cascade yielding, benchmarks, the settle
 * limit of tide run, fsync intervals, preallocation, paging limits of
 * admin requests, TLS and auth expiry, HTTP, cluster and client timers,
 * rate limits of log lines, rule history and console times.
 *
 * The mode is the process's (like the log level): one run of one flow per
 * process, set before the flow opens.  The virtual time is set and read
 * on the loop's thread only (a virtual run has no sync thread).
 */
#ifndef TIDE_CLOCK_H
#define TIDE_CLOCK_H

#include <stdint.h>

/* ns since the epoch: the wall clock, or the virtual time. */
int64_t clock_now_ns(void);

/* ns for measuring intervals: CLOCK_MONOTONIC, or the virtual time (so
 * deadlines computed from it fall at virtual times). */
int64_t clock_mono_ns(void);

/* Switches to the virtual clock, at ns since the epoch.  There is no way
 * back: the deadlines already taken are on its scale. */
void clock_use_virtual(int64_t ns);

/* 1 under the virtual clock, else 0. */
int clock_is_virtual(void);

/* Sets the virtual time to ns; a time before the current one is ignored
 * (virtual time never goes backwards).  No effect on the real clock. */
void clock_set(int64_t ns);

/* Starts the ids of input line `line` (virtual clock only): the ids
 * clock_event_id makes next are that line's 1st, 2nd, ... */
void clock_mark_line(uint64_t line);

/*
 * An id for an event tide makes (36 characters and a NUL, UUID-shaped):
 * random under the real clock; under the virtual clock the input line and
 * the count of ids made since it, "0000002a-0000-4000-8000-000000000003"
 * for the 3rd of line 42, so two runs of one input give the same ids.
 */
void clock_event_id(char out[37]);

/* clock_now_ns() as RFC 3339 UTC with milliseconds ("...T12:00:00.123Z"). */
void clock_now_rfc3339(char out[64]);

#endif
