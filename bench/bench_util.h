/*
 * bench_util.h - what the benchmark clients (nats_bench.c, js_bench.c)
 * share: clocks, percentiles, a raw NATS connection that waits for the
 * server's PONG (readiness checks, round-trip probes), and libnats
 * connections whose asynchronous errors and disconnects are counted.
 */
#ifndef TIDE_BENCH_UTIL_H
#define TIDE_BENCH_UTIL_H

#include <netdb.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

/* CLOCK_MONOTONIC in ns. */
int64_t now_ns(void);
void sleep_us(long us);

/* qsort comparator for doubles, and the nearest-rank percentile p (0..1)
 * of a sorted array of n values. */
int cmp_double(const void *x, const void *y);
double pct(const double *v, size_t n, double p);

/* The value v of the option opt: a whole number >= 0, or a finite number
 * >= 0 (> 0 when positive); else a message as prog's on stderr and exit
 * status 2. */
long bench_parse_long(const char *prog, const char *opt, const char *v);
double bench_parse_double(const char *prog, const char *opt, const char *v, bool positive);

/* Resolves a nats://[user@]host[:port] URL (default port 4222).  NULL with
 * the reason in err. */
struct addrinfo *bench_resolve(const char *url, char *err, size_t errsz);

/* Connects, sends CONNECT + PING and reads until PONG.  Returns the fd (no
 * read timeout left on it), or -1 with a message in err.  If info is not
 * NULL, the server's INFO line is copied there. */
int bench_raw_connect(const struct addrinfo *ai, int timeout_ms, char *err, size_t errsz, char *info,
                      size_t infosz);

/* What went wrong on the libnats connections bench_nats_connect made,
 * counted by the handlers it installs (on libnats' threads).  A client sets
 * bench_closing before it closes connections itself, so that those
 * disconnects are not counted. */
extern atomic_int bench_async_errors;
extern atomic_int bench_disconnects;
extern atomic_bool bench_closing;
extern char bench_last_async_error[256]; /* "name: error", the latest */

/* A libnats connection to url named name, without reconnects (5 s connect
 * timeout), TLS trusting the CA file tls_ca when it is not NULL; its errors
 * and disconnects reported on stderr as prog's and counted above.  NATS_OK
 * with *nc set (the caller destroys it), else the status. */
natsStatus bench_nats_connect(natsConnection **nc, const char *prog, const char *url, const char *name,
                              bool send_asap, const char *tls_ca);

/* The text of status s: libnats' last error message if it has one. */
const char *bench_nats_error(natsStatus s);

#endif
