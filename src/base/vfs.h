/*
 * vfs.h - the only way the store touches files.
 *
 * Every open, append, read, sync, rename, truncate and unlink of the stream
 * log and the consumer state goes through these calls, so that a test can
 * make the N-th call fail or the process lose power at it:
 *
 *   TIDE_FAULT="write:5:ENOSPC"        the 5th write fails with ENOSPC
 *   TIDE_FAULT="write:5-40:ENOSPC"     writes 5 to 40 fail, then space returns
 *   TIDE_FAULT="sync:3+:EIO"           every sync from the 3rd on fails
 *   TIDE_FAULT="powerloss:write:120"   at the 120th write, every byte that
 *                                      was not synced is discarded and the
 *                                      process ends at once (exit code 99)
 *   TIDE_FAULT="crash:write:7"         the process dies just before its 7th
 *                                      write (exit code 98); what it wrote
 *                                      before stays, as after a kill -9
 *
 * Several rules are separated by commas.  Operations: open, write, sync,
 * rename, truncate, alloc (the zero-filling of space ahead of the log),
 * ckpt (every step of writing a checkpoint: vfs_checkpoint).  Errors: ENOSPC, EIO, EDQUOT, EROFS.  A failing write
 * first writes half of what it was given (a short write that then fails),
 * which is the worst case a disk can hand back.  Calls are counted from
 * the start of the process, over every file of the store.
 *
 * Power loss is simulated per file: each file's length at its last
 * successful sync (its length when opened, for files that existed) is what
 * a disk would have kept of an append-only file; bytes written with
 * vfs_pwrite below that length since the sync are zeros again (the store
 * only writes there into zeros it preallocated); and a file created since
 * its directory was last synced is gone.
 *
 * vfs_sync may be called from the sync thread; everything else from the
 * loop thread (or before it runs).
 */
#ifndef TIDE_VFS_H
#define TIDE_VFS_H

#include <stddef.h>
#include <sys/types.h>

/* Reads TIDE_FAULT.  Returns 0, or -1 with a message in err for a bad spec. */
int vfs_init(char *err, size_t errsz);

int vfs_open(const char *path, int flags, mode_t mode);
int vfs_close(int fd);
/* Appends all of buf (looping over short writes); -1 with errno on error,
 * in which case part of buf may have been written. */
ssize_t vfs_write(int fd, const void *buf, size_t n);
/* Writes all of buf at off, the same way. */
ssize_t vfs_pwrite(int fd, const void *buf, size_t n, off_t off);
/* Writes n zero bytes at off (operation "alloc"): space the log later
 * writes over, so that a sync of what it writes there need not commit a
 * new file size.  -1 with errno; part of the zeros may be there. */
int vfs_zero(int fd, off_t off, off_t n);
/* ftruncate, not a fault point: it only gives back preallocated zeros,
 * which recovery reads as the end of the log whether or not they go. */
int vfs_trim(int fd, off_t len);
ssize_t vfs_pread(int fd, void *buf, size_t n, off_t off);
/* Reads the whole file at path (at most max bytes, else EFBIG) into *out
 * (caller frees), its length in *len.  Not a fault point: a read changes
 * nothing.  0, or -1 (errno; ENOENT when there is no such file). */
int vfs_read_file(const char *path, size_t max, char **out, size_t *len);
/* fdatasync (fsync for directories). */
int vfs_sync(int fd);
int vfs_truncate(int fd, off_t len);
int vfs_rename(const char *from, const char *to);
int vfs_unlink(const char *path);
/* Syncs a directory, so that files created or renamed in it persist. */
int vfs_sync_dir(const char *path);

/*
 * Replaces the file at path with buf, atomically: first syncs data_fd
 * (the file buf describes; -1: none), then writes path.tmp, syncs it,
 * renames it over path and syncs the directory.  After a crash or a power
 * loss at any step, path is the old file or the new one, whole (a
 * path.tmp may be left behind).  Every step is a call of the operation
 * "ckpt" for fault injection, so that when checkpoints are written does
 * not move the numbering of the log's own writes and syncs.  May be called
 * from the sync thread.  0, or -1 (errno).
 */
int vfs_checkpoint(int data_fd, const char *path, const void *buf, size_t n);

/* True when any fault rule is active (tests use it to check the setup). */
int vfs_faulty(void);

#endif
