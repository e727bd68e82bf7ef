/*
 * bench_util.h - what the benchmark clients (nats_bench.c, js_bench.c)
 * share: clocks, percentiles, and a raw NATS connection that waits for the
 * server's PONG (readiness checks, round-trip probes).
 */
#ifndef TIDE_BENCH_UTIL_H
#define TIDE_BENCH_UTIL_H

#include <netdb.h>
#include <stddef.h>
#include <stdint.h>

/* CLOCK_MONOTONIC in ns. */
int64_t now_ns(void);
void sleep_us(long us);

/* qsort comparator for doubles, and the nearest-rank percentile p (0..1)
 * of a sorted array of n values. */
int cmp_double(const void *x, const void *y);
double pct(const double *v, size_t n, double p);

/* Resolves a nats://[user@]host[:port] URL (default port 4222).  NULL with
 * the reason in err. */
struct addrinfo *bench_resolve(const char *url, char *err, size_t errsz);

/* Connects, sends CONNECT + PING and reads until PONG.  Returns the fd (no
 * read timeout left on it), or -1 with a message in err.  If info is not
 * NULL, the server's INFO line is copied there. */
int bench_raw_connect(const struct addrinfo *ai, int timeout_ms, char *err, size_t errsz, char *info,
                      size_t infosz);

#endif
