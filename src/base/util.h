/* util.h - small helpers shared by the core. */
#ifndef TIDE_UTIL_H
#define TIDE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

/* seconds (0 or more) as a struct timeval, for libevent timers. */
struct timeval util_timeval(double seconds);

/*
 * Copies exactly n bytes of p into a new NUL-terminated buffer (caller
 * frees).  Unlike strndup it does not stop at a NUL inside the input, so a
 * stored length always matches the bytes stored.  NULL when out of memory.
 */
char *util_mem_dup(const void *p, size_t n);

/* A random (version 4) UUID as 36 characters and a NUL: CloudEvents ids. */
void util_uuid4(char out[37]);

/* The current UTC time as RFC 3339 with milliseconds ("...T12:00:00.123Z"). */
void util_now_rfc3339(char out[64]);

/* mkdir -p: creates path and its missing parents.  0, or -1 (errno). */
int util_mkdirs(const char *path);

/* ns since the epoch as RFC 3339 UTC with nanoseconds ("...T12:00:00.123456789Z"). */
void util_time_ns(int64_t ns, char *out, size_t n);

/* The fraction of a second at p, as RFC 3339 writes it ("." and digits), in
 * ns, exactly (not through a double, which can land 1 ns short; digits
 * past the ninth are dropped).  *end is set past it; 0 (and *end = p) when
 * p does not start with ".". */
int64_t util_frac_ns(const char *p, const char **end);

#endif
