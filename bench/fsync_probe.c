/*
 * fsync_probe - the floor under a durable publish: how long one small
 * append followed by fdatasync takes on the disk under DIR.
 *
 *   fsync_probe DIR [N]     prints "fsync p50 US p99 US p99.9 US (N appends of 160 B)"
 *
 * A sequential publish with fsync = "always" cannot be acknowledged faster
 * than this; the benchmark prints it next to the durable figures.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fsync_probe DIR [N]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 2000;
    if (n < 10 || n > 1000000)
        n = 2000;
    char path[4096];
    snprintf(path, sizeof path, "%s/fsync-probe.dat", argv[1]);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    double *v = malloc((size_t)n * sizeof *v);
    if (fd < 0 || !v) {
        perror(path);
        return 1;
    }
    char rec[160];
    memset(rec, 'x', sizeof rec);
    for (int i = 0; i < n; i++) {
        double t = now_us();
        if (write(fd, rec, sizeof rec) != (ssize_t)sizeof rec || fdatasync(fd) != 0) {
            perror("write/fdatasync");
            return 1;
        }
        v[i] = now_us() - t;
    }
    close(fd);
    unlink(path);
    qsort(v, (size_t)n, sizeof *v, cmp);
    printf("fsync p50 %.0f p99 %.0f p99.9 %.0f (%d appends of %zu B)\n", v[n / 2], v[n * 99 / 100],
           v[n * 999 / 1000], n, sizeof rec);
    free(v);
    return 0;
}
