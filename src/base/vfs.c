/*
 * vfs.c - the store's file calls, with fault injection for tests (see
 * vfs.h).
 *
 * Power loss takes from each file what was not synced (its length at its
 * last sync, and zeros again where it was written over since), and takes
 * away each file created since its directory was last synced: a new name is on the disk only once its directory is.  A
 * file renamed over an existing one keeps the name; a new file renamed to
 * a new name is still new.
 */
#include "vfs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

enum { OP_OPEN, OP_WRITE, OP_SYNC, OP_RENAME, OP_TRUNCATE, OP_ALLOC, OP_CKPT, OP_N };
static const char *const op_names[OP_N] = {"open", "write", "sync", "rename", "truncate", "alloc", "ckpt"};

typedef struct fault {
    int op;
    uint64_t from, to; /* call numbers, inclusive; to == UINT64_MAX: forever */
    int err;           /* 0: power loss, -1: crash, -2: stall */
    unsigned stall_ms; /* stall: how long the call waits before it runs */
} fault_t;

#define MAX_FAULTS 8
#define MAX_TRACKED 4096

static fault_t faults[MAX_FAULTS];
static int nfaults;
static int powerloss_armed;
static uint64_t calls[OP_N];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

/* For power loss: each open fd's length at its last sync, and the lowest
 * offset written below that length since (NO_DIRTY: none). */
#define NO_DIRTY ((off_t)INT64_MAX)
static off_t synced_len[MAX_TRACKED];
static off_t dirty_lo[MAX_TRACKED];
static char tracked[MAX_TRACKED];

/* For power loss: the files created whose directory was not synced since
 * (paths, malloc'd; past MAX_NEW a new file counts as synced). */
#define MAX_NEW 256
static char *new_files[MAX_NEW];
static int nnew;

static int parse_errno(const char *s)
{
    if (!strcmp(s, "ENOSPC")) return ENOSPC;
    if (!strcmp(s, "EIO")) return EIO;
    if (!strcmp(s, "EDQUOT")) return EDQUOT;
    if (!strcmp(s, "EROFS")) return EROFS;
    return 0;
}

static int parse_op(const char *s, size_t n)
{
    for (int i = 0; i < OP_N; i++)
        if (strlen(op_names[i]) == n && !memcmp(s, op_names[i], n))
            return i;
    return -1;
}

static int parse_range(const char *s, fault_t *f)
{
    char *end;
    unsigned long long a = strtoull(s, &end, 10);
    if (end == s || a == 0)
        return -1;
    f->from = f->to = a;
    if (*end == '+') {
        f->to = UINT64_MAX;
        end++;
    } else if (*end == '-') {
        const char *b = end + 1;
        f->to = strtoull(b, &end, 10);
        if (end == b || f->to < f->from)
            return -1;
    }
    return *end == '\0' || *end == ':' ? (int)(end - s) : -1;
}

int vfs_init(char *err, size_t errsz)
{
    const char *spec = getenv("TIDE_FAULT");
    nfaults = 0;
    if (!spec || !*spec)
        return 0;
    char *copy = strdup(spec), *save = NULL;
    if (!copy)
        return -1;
    for (char *r = strtok_r(copy, ",", &save); r; r = strtok_r(NULL, ",", &save)) {
        fault_t f = {0};
        char *c1 = strchr(r, ':');
        if (nfaults == MAX_FAULTS || !c1)
            goto bad;
        if (!strncmp(r, "powerloss:", 10) || !strncmp(r, "crash:", 6)) {
            char *c2 = strchr(c1 + 1, ':');
            if (!c2 || (f.op = parse_op(c1 + 1, (size_t)(c2 - c1 - 1))) < 0 || parse_range(c2 + 1, &f) < 0)
                goto bad;
            f.err = r[0] == 'p' ? 0 : -1;
            powerloss_armed |= f.err == 0;
        } else if (!strncmp(r, "stall:", 6)) {
            char *c2 = strchr(c1 + 1, ':'), *end;
            int n;
            if (!c2 || (f.op = parse_op(c1 + 1, (size_t)(c2 - c1 - 1))) < 0 || (n = parse_range(c2 + 1, &f)) < 0 ||
                c2[1 + n] != ':')
                goto bad;
            unsigned long ms = strtoul(c2 + 2 + n, &end, 10);
            if (end == c2 + 2 + n || *end || ms == 0 || ms > 600000)
                goto bad;
            f.err = -2;
            f.stall_ms = (unsigned)ms;
        } else {
            if ((f.op = parse_op(r, (size_t)(c1 - r))) < 0)
                goto bad;
            int n = parse_range(c1 + 1, &f);
            if (n < 0 || c1[1 + n] != ':' || !(f.err = parse_errno(c1 + 2 + n)))
                goto bad;
        }
        faults[nfaults++] = f;
        continue;
    bad:
        snprintf(err, errsz, "TIDE_FAULT: cannot read '%s' (e.g. write:5:ENOSPC, sync:3+:EIO, "
                 "write:5-40:ENOSPC, powerloss:write:120, crash:write:7, stall:sync:2:3000)", r);
        free(copy);
        nfaults = 0;
        return -1;
    }
    free(copy);
    log_warn("store: fault injection is on (TIDE_FAULT=%s)", spec);
    return 0;
}

int vfs_faulty(void) { return nfaults > 0; }

/* The index of path among the new files, or -1 (mu held). */
static int new_find(const char *path)
{
    for (int i = 0; i < nnew; i++)
        if (!strcmp(new_files[i], path))
            return i;
    return -1;
}

/* Drops entry i of the new files (mu held). */
static void new_forget(int i)
{
    free(new_files[i]);
    new_files[i] = new_files[--nnew];
}

/* Writes n zero bytes at off; 0 or -1 (errno). */
static int write_zeros(int fd, off_t off, off_t n)
{
    static const char zeros[65536];
    while (n > 0) {
        size_t k = n < (off_t)sizeof zeros ? (size_t)n : sizeof zeros;
        ssize_t w = pwrite(fd, zeros, k, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = ENOSPC;
            return -1;
        }
        off += w;
        n -= w;
    }
    return 0;
}

/* A thread that reads a mapping of a file power_loss is cutting short
 * faults with SIGBUS: that is part of going down, not a bug to report. */
static void power_loss_bus(int sig)
{
    (void)sig;
    _exit(99);
}

static void power_loss(void)
{
    /* What a disk keeps of the files after the lights go out: the bytes
     * that were synced, of the names that were synced.  Bytes written over
     * synced ones since go back to what was there, which is zeros: the
     * store writes below a synced length only into space it zero-filled
     * (vfs_zero) and synced before. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = power_loss_bus;
    sigaction(SIGBUS, &sa, NULL);
    for (int fd = 0; fd < MAX_TRACKED; fd++)
        if (tracked[fd]) {
            if (dirty_lo[fd] < synced_len[fd] && write_zeros(fd, dirty_lo[fd], synced_len[fd] - dirty_lo[fd]) != 0) {
                /* nothing to do: we are going down */
            }
            if (ftruncate(fd, synced_len[fd]) != 0) {
                /* likewise */
            }
        }
    for (int i = 0; i < nnew; i++)
        unlink(new_files[i]);
    log_warn("store: simulated power loss");
    _exit(99);
}

/* Counts a call of op; returns the errno to fail it with, or 0. */
static int fault_check(int op)
{
    if (!nfaults)
        return 0;
    pthread_mutex_lock(&mu);
    uint64_t n = ++calls[op];
    int e = 0;
    unsigned stall = 0;
    for (int i = 0; i < nfaults; i++)
        if (faults[i].op == op && n >= faults[i].from && n <= faults[i].to) {
            if (faults[i].err == -2) { /* a disk that hangs, then answers */
                stall += faults[i].stall_ms;
                continue;
            }
            if (faults[i].err == 0)
                power_loss();
            if (faults[i].err < 0) { /* the process dies; what it wrote stays (the page cache survives) */
                log_warn("store: simulated crash");
                _exit(98);
            }
            e = faults[i].err;
        }
    pthread_mutex_unlock(&mu);
    if (stall) {
        struct timespec ts = {(time_t)(stall / 1000), (long)(stall % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    return e;
}

static void track(int fd)
{
    if (!powerloss_armed || fd < 0 || fd >= MAX_TRACKED)
        return;
    struct stat sb;
    pthread_mutex_lock(&mu);
    tracked[fd] = 1;
    synced_len[fd] = fstat(fd, &sb) == 0 ? sb.st_size : 0;
    dirty_lo[fd] = NO_DIRTY;
    pthread_mutex_unlock(&mu);
}

static int open_op(int op, const char *path, int flags, mode_t mode)
{
    int e = fault_check(op);
    if (e) {
        errno = e;
        return -1;
    }
    int existed = access(path, F_OK) == 0;
    int fd = open(path, flags | O_CLOEXEC, mode);
    if (fd >= 0) {
        track(fd);
        if (!existed && powerloss_armed) {
            pthread_mutex_lock(&mu);
            if (fd < MAX_TRACKED)
                synced_len[fd] = 0;
            char *p = nnew < MAX_NEW ? strdup(path) : NULL;
            if (p)
                new_files[nnew++] = p;
            pthread_mutex_unlock(&mu);
        }
    }
    return fd;
}

int vfs_open(const char *path, int flags, mode_t mode) { return open_op(OP_OPEN, path, flags, mode); }

int vfs_close(int fd)
{
    if (powerloss_armed && fd >= 0 && fd < MAX_TRACKED) {
        pthread_mutex_lock(&mu);
        tracked[fd] = 0;
        pthread_mutex_unlock(&mu);
    }
    return close(fd);
}

/* Writes all of buf, at off or (off < 0) where the file's offset is,
 * looping over short writes; after a fault, half of it and the error. */
static ssize_t write_all(int fd, const char *p, size_t n, off_t off, int fault)
{
    if (fault) {
        ssize_t w = off < 0 ? write(fd, p, n / 2) : pwrite(fd, p, n / 2, off);
        (void)w;
        errno = fault;
        return -1;
    }
    size_t done = 0;
    while (done < n) {
        ssize_t w = off < 0 ? write(fd, p + done, n - done) : pwrite(fd, p + done, n - done, off + (off_t)done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = ENOSPC;
            return -1;
        }
        done += (size_t)w;
    }
    return (ssize_t)done;
}

ssize_t vfs_write(int fd, const void *buf, size_t n)
{
    return write_all(fd, buf, n, -1, fault_check(OP_WRITE));
}

/* Notes that [off, ...) was written since the last sync (for power loss). */
static void note_dirty(int fd, off_t off)
{
    if (!powerloss_armed || fd < 0 || fd >= MAX_TRACKED)
        return;
    pthread_mutex_lock(&mu);
    if (off < dirty_lo[fd])
        dirty_lo[fd] = off;
    pthread_mutex_unlock(&mu);
}

ssize_t vfs_pwrite(int fd, const void *buf, size_t n, off_t off)
{
    int e = fault_check(OP_WRITE);
    note_dirty(fd, off);
    return write_all(fd, buf, n, off, e);
}

int vfs_zero(int fd, off_t off, off_t n)
{
    int e = fault_check(OP_ALLOC);
    if (e) {
        if (write_zeros(fd, off, n / 2) != 0) {
            /* failing anyway */
        }
        errno = e;
        return -1;
    }
    return write_zeros(fd, off, n);
}



ssize_t vfs_pread(int fd, void *buf, size_t n, off_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (char *)buf + done, n - done, off + (off_t)done);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        done += (size_t)r;
    }
    return (ssize_t)done;
}

static int sync_op(int op, int fd)
{
    int e = fault_check(op);
    if (e) {
        errno = e;
        return -1;
    }
    struct stat sb;
    int have = powerloss_armed && fd < MAX_TRACKED && fstat(fd, &sb) == 0;
    off_t lo = NO_DIRTY;
    if (have) {
        /* Writes from here on may or may not be covered: they stay dirty. */
        pthread_mutex_lock(&mu);
        lo = dirty_lo[fd];
        dirty_lo[fd] = NO_DIRTY;
        pthread_mutex_unlock(&mu);
    }
    if (fdatasync(fd) != 0) {
        if (have) {
            pthread_mutex_lock(&mu);
            if (lo < dirty_lo[fd])
                dirty_lo[fd] = lo;
            pthread_mutex_unlock(&mu);
        }
        return -1;
    }
    if (have) {
        pthread_mutex_lock(&mu);
        synced_len[fd] = sb.st_size;
        pthread_mutex_unlock(&mu);
    }
    return 0;
}

int vfs_sync(int fd) { return sync_op(OP_SYNC, fd); }

int vfs_read_file(const char *path, size_t max, char **out, size_t *len)
{
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0)
        goto fail;
    if (sb.st_size < 0 || (size_t)sb.st_size > max) {
        errno = EFBIG;
        goto fail;
    }
    if (!(buf = malloc(sb.st_size ? (size_t)sb.st_size : 1)))
        goto fail;
    ssize_t got = vfs_pread(fd, buf, (size_t)sb.st_size, 0);
    if (got != (ssize_t)sb.st_size) {
        if (got >= 0)
            errno = EIO;
        goto fail;
    }
    close(fd);
    *out = buf;
    *len = (size_t)got;
    return 0;
fail:;
    int e = errno ? errno : EIO;
    if (fd >= 0)
        close(fd);
    free(buf);
    errno = e;
    return -1;
}

int vfs_truncate(int fd, off_t len)
{
    int e = fault_check(OP_TRUNCATE);
    if (e) {
        errno = e;
        return -1;
    }
    return vfs_trim(fd, len);
}

int vfs_trim(int fd, off_t len)
{
    if (ftruncate(fd, len) != 0)
        return -1;
    if (powerloss_armed && fd >= 0 && fd < MAX_TRACKED) {
        pthread_mutex_lock(&mu);
        if (synced_len[fd] > len)
            synced_len[fd] = len;
        pthread_mutex_unlock(&mu);
    }
    return 0;
}

static int rename_op(int op, const char *from, const char *to)
{
    int e = fault_check(op);
    if (e) {
        errno = e;
        return -1;
    }
    int replaces = powerloss_armed && access(to, F_OK) == 0;
    if (rename(from, to) != 0)
        return -1;
    if (powerloss_armed) {
        pthread_mutex_lock(&mu);
        int i = new_find(from);
        if (i >= 0) {
            char *p = replaces ? NULL : strdup(to);
            if (p) {
                free(new_files[i]);
                new_files[i] = p;
            } else {
                new_forget(i);
            }
        }
        pthread_mutex_unlock(&mu);
    }
    return 0;
}

int vfs_rename(const char *from, const char *to) { return rename_op(OP_RENAME, from, to); }

int vfs_unlink(const char *path)
{
    if (unlink(path) != 0)
        return -1;
    if (powerloss_armed) {
        pthread_mutex_lock(&mu);
        int i = new_find(path);
        if (i >= 0)
            new_forget(i);
        pthread_mutex_unlock(&mu);
    }
    return 0;
}

static int sync_dir_op(int op, const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int e = fault_check(op);
    int rc = e ? -1 : fsync(fd);
    close(fd);
    if (e)
        errno = e;
    if (rc == 0 && powerloss_armed) {
        /* The names in it are on the disk now. */
        size_t n = strlen(path);
        pthread_mutex_lock(&mu);
        for (int i = 0; i < nnew;)
            if (!strncmp(new_files[i], path, n) && new_files[i][n] == '/' && !strchr(new_files[i] + n + 1, '/'))
                new_forget(i);
            else
                i++;
        pthread_mutex_unlock(&mu);
    }
    return rc;
}

int vfs_sync_dir(const char *path) { return sync_dir_op(OP_SYNC, path); }

int vfs_checkpoint(int data_fd, const char *path, const void *buf, size_t n)
{
    char tmp[4096], dir[4096];
    int fd = -1;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) {
        errno = EINVAL;
        return -1;
    }
    *slash = '\0';
    /* The data first: a checkpoint must never describe records that a
     * power loss could still take away. */
    if (data_fd >= 0 && sync_op(OP_CKPT, data_fd) != 0)
        goto fail;
    if ((fd = open_op(OP_CKPT, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
        goto fail;
    if (write_all(fd, buf, n, 0, fault_check(OP_CKPT)) < 0 || sync_op(OP_CKPT, fd) != 0)
        goto fail;
    vfs_close(fd);
    fd = -1;
    if (rename_op(OP_CKPT, tmp, path) != 0 || sync_dir_op(OP_CKPT, dir[0] ? dir : "/") != 0)
        goto fail;
    return 0;
fail:;
    int e = errno ? errno : EIO;
    if (fd >= 0)
        vfs_close(fd);
    vfs_unlink(tmp);
    errno = e;
    return -1;
}
