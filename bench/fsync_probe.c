/*
 * fsync_probe - the floor under a durable publish: how long one small
 * record written and then fdatasync'd takes on the disk under DIR, two ways:
 *
 *   append       the record grows the file, so the sync must also commit
 *                the new file size to the file system's journal;
 *   over zeros   the record is written over space zero-filled and synced
 *                beforehand, which is how tide's store writes under
 *                fsync = "always" (src/store/slog.c, PREALLOC): data only.
 *
 *   fsync_probe DIR [N]   prints "append p50 US p99 US p99.9 US; over zeros
 *                         p50 US p99 US p99.9 US (N records of 160 B)"
 *
 * The two runs alternate in blocks of 200, so a burst of background load
 * hits both alike.  A sequential publish with fsync = "always" cannot be
 * acknowledged faster than the second figure; the benchmark prints both
 * next to the durable figures.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 200

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

/* Writes and syncs `k` records at *off (advanced), timing each into v. */
static int run(int fd, off_t *off, const char *rec, size_t len, int k, double *v)
{
    for (int i = 0; i < k; i++) {
        double t = now_us();
        if (pwrite(fd, rec, len, *off) != (ssize_t)len || fdatasync(fd) != 0) {
            perror("write/fdatasync");
            return -1;
        }
        v[i] = now_us() - t;
        *off += (off_t)len;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fsync_probe DIR [N]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 2000;
    if (n < BLOCK || n > 1000000)
        n = 2000;
    n -= n % BLOCK;
    char pa[4096], pz[4096];
    snprintf(pa, sizeof pa, "%s/fsync-probe-append.dat", argv[1]);
    snprintf(pz, sizeof pz, "%s/fsync-probe-zeros.dat", argv[1]);
    int fa = open(pa, O_RDWR | O_CREAT | O_TRUNC, 0644);
    int fz = open(pz, O_RDWR | O_CREAT | O_TRUNC, 0644);
    double *va = malloc((size_t)n * sizeof *va), *vz = malloc((size_t)n * sizeof *vz);
    char rec[160];
    size_t zlen = (size_t)n * sizeof rec;
    char *zeros = calloc(1, zlen);
    if (fa < 0 || fz < 0 || !va || !vz || !zeros) {
        perror(argv[1]);
        return 1;
    }
    if (write(fz, zeros, zlen) != (ssize_t)zlen || fdatasync(fz) != 0) {
        perror(pz);
        return 1;
    }
    memset(rec, 'x', sizeof rec);
    off_t oa = 0, oz = 0;
    for (int b = 0; b < n; b += BLOCK)
        if (run(fa, &oa, rec, sizeof rec, BLOCK, va + b) || run(fz, &oz, rec, sizeof rec, BLOCK, vz + b))
            return 1;
    close(fa);
    close(fz);
    unlink(pa);
    unlink(pz);
    qsort(va, (size_t)n, sizeof *va, cmp);
    qsort(vz, (size_t)n, sizeof *vz, cmp);
    printf("append p50 %.0f p99 %.0f p99.9 %.0f; over zeros p50 %.0f p99 %.0f p99.9 %.0f (%d records of %zu B)\n",
           va[n / 2], va[n * 99 / 100], va[n * 999 / 1000], vz[n / 2], vz[n * 99 / 100], vz[n * 999 / 1000], n,
           sizeof rec);
    free(va);
    free(vz);
    free(zeros);
    return 0;
}
