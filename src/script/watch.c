/* watch.c - reloading when a loaded file changes (inotify, or polling where
 * it is unavailable) and on SIGHUP. */
#include "script_internal.h"

/* ---- watching the files ------------------------------------------------------------ */

void watch_stop(script_host_t *h)
{
    if (h->watch_ev) {
        event_free(h->watch_ev);
        h->watch_ev = NULL;
    }
    if (h->watch_fd >= 0) {
        close(h->watch_fd);
        h->watch_fd = -1;
    }
    if (h->poll_timer) {
        event_free(h->poll_timer);
        h->poll_timer = NULL;
    }
    free(h->poll_mtimes);
    h->poll_mtimes = NULL;
    h->npoll = 0;
    free(h->watch_dirs);
    h->watch_dirs = NULL;
    h->nwatch_dirs = 0;
}

void watch_on_debounce(evutil_socket_t fd, short what, void *arg)
{
    script_host_t *h = arg;
    char err[512];
    (void)fd;
    (void)what;
    script_reload(h, "a script file changed", err, sizeof err);
}

static void schedule_reload(script_host_t *h)
{
    /* Editors write in several steps; wait for the burst to end. */
    struct timeval tv = {0, 10 * 1000};
    evtimer_add(h->debounce, &tv);
}

static int is_watched(script_host_t *h, const char *dir, const char *name)
{
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    for (size_t i = 0; h->cur && i < h->cur->nfiles; i++)
        if (!strcmp(h->cur->files[i], path))
            return 1;
    return 0;
}



static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
    script_host_t *h = arg;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    (void)what;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ie = (struct inotify_event *)p;
            for (size_t i = 0; i < h->nwatch_dirs; i++)
                if (h->watch_dirs[i].wd == ie->wd && ie->len && is_watched(h, h->watch_dirs[i].path, ie->name))
                    schedule_reload(h);
            p += sizeof *ie + ie->len;
        }
    }
}

static time_t file_stamp(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return 0;
    return sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000 + (time_t)sb.st_size * 7 + (time_t)sb.st_ino;
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    script_host_t *h = arg;
    (void)fd;
    (void)what;
    for (size_t i = 0; i < h->npoll && h->cur && i < h->cur->nfiles; i++) {
        if (file_stamp(h->cur->files[i]) != h->poll_mtimes[i]) {
            schedule_reload(h);
            return;
        }
    }
}

/* Watches the directories of every loaded file: inotify, else polling. */
void watch_start(script_host_t *h)
{
    struct event_base *base = server_base(h->srv);
    watch_stop(h);
    if (!h->cur)
        return;
    h->watch_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (h->watch_fd >= 0) {
        h->watch_dirs = calloc(h->cur->nfiles, sizeof *h->watch_dirs);
        for (size_t i = 0; h->watch_dirs && i < h->cur->nfiles; i++) {
            char dir[PATH_MAX];
            snprintf(dir, sizeof dir, "%s", h->cur->files[i]);
            char *slash = strrchr(dir, '/');
            if (!slash)
                continue;
            *slash = '\0';
            int seen = 0;
            for (size_t j = 0; j < h->nwatch_dirs; j++)
                if (!strcmp(h->watch_dirs[j].path, dir))
                    seen = 1;
            if (seen)
                continue;
            int wd = inotify_add_watch(h->watch_fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE);
            if (wd < 0)
                continue;
            h->watch_dirs[h->nwatch_dirs].wd = wd;
            snprintf(h->watch_dirs[h->nwatch_dirs].path, sizeof h->watch_dirs[h->nwatch_dirs].path, "%s", dir);
            h->nwatch_dirs++;
        }
        h->watch_ev = event_new(base, h->watch_fd, EV_READ | EV_PERSIST, on_inotify, h);
        if (h->watch_ev && h->nwatch_dirs && event_add(h->watch_ev, NULL) == 0)
            return;
        log_warn("cannot watch script files with inotify (%s); polling every second", strerror(errno));
        watch_stop(h);
    }
    h->poll_mtimes = calloc(h->cur->nfiles ? h->cur->nfiles : 1, sizeof *h->poll_mtimes);
    h->npoll = h->cur->nfiles;
    for (size_t i = 0; h->poll_mtimes && i < h->npoll; i++)
        h->poll_mtimes[i] = file_stamp(h->cur->files[i]);
    struct timeval tv = {1, 0};
    h->poll_timer = event_new(base, -1, EV_PERSIST, on_poll, h);
    if (h->poll_timer)
        event_add(h->poll_timer, &tv);
}

void watch_on_sighup(evutil_socket_t fd, short what, void *arg)
{
    char err[512];
    (void)fd;
    (void)what;
    script_reload(arg, "SIGHUP", err, sizeof err);
}
