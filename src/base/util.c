/* util.c - see util.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "util.h"

struct timeval util_timeval(double seconds)
{
    struct timeval tv;
    tv.tv_sec = (time_t)seconds;
    tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
    return tv;
}

char *util_mem_dup(const void *p, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

void util_uuid4(char out[37])
{
    unsigned char b[16];
    static const char hex[] = "0123456789abcdef";
    size_t got = 0;
    while (got < sizeof b) { /* getrandom() may return less; it does not fail for 16 bytes in practice */
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

void util_now_rfc3339(char out[64])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

int util_mkdirs(const char *path)
{
    char b[4096];
    if (snprintf(b, sizeof b, "%s", path) >= (int)sizeof b) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = b + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(b, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(b, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

void util_time_ns(int64_t ns, char *out, size_t n)
{
    time_t s = (time_t)(ns / 1000000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t k = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + k, n - k, ".%09lldZ", (long long)(ns % 1000000000));
}

int64_t util_frac_ns(const char *p, const char **end)
{
    int64_t ns = 0, scale = 100000000;
    *end = p;
    if (*p != '.')
        return 0;
    for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
        ns += (*p - '0') * scale; /* (0 once past the ninth digit) */
    *end = p;
    return ns;
}
