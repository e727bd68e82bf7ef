/* kv_migrate.c - moving the store tide.kv kept before it was the bucket
 * `tide` (<data>/kv, store/kv.c) into that bucket, once (see kv_lua.h).
 *
 * The old directory is renamed only once the bucket's messages are durable:
 * the stream writes its appends at the end of a loop iteration and syncs
 * them after, so a timer waits for the stream's committed sequence.  Until
 * the rename a start moves the store again; keys the bucket holds by then
 * (written by the cut-short start, or changed since by a handler or a
 * client) are left as they are, so nothing is written twice or undone. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/event.h>

#include "kv.h"
#include "kv_lua.h"
#include "log.h"
#include "script_internal.h"
#include "stream.h"
#include "vfs.h"

#define WAIT_MS 20

typedef struct migration {
    streams_t *sm;
    script_host_t *host;
    struct event *wait; /* the timer that checks the committed sequence */
    char stream[STREAM_NAME_MAX];
    char dir[PATH_MAX];
    uint64_t last; /* the last sequence written */
    size_t moved, kept, failed;
    kv_t *old;
} migration_t;

/* Writes key k of the old store into the bucket unless it holds it. */
static void move_key(void *ctx, const char *k, size_t kl)
{
    migration_t *m = ctx;
    char subj[2048], num[64];
    const char *type = NULL, *payload = num;
    size_t plen;
    uint64_t seq;
    const kv_value_t *v = kv_get(m->old, k, kl);
    if (!v || kv_bucket_subject(KV_TIDE_BUCKET, 1, k, kl, subj, sizeof subj) < 0) {
        log_error("kv: cannot move key '%.*s' (too long for a bucket key)", (int)kl, k);
        m->failed++;
        return;
    }
    if (streams_subject_last(m->sm, m->stream, subj, strlen(subj))) {
        m->kept++;
        return;
    }
    switch (v->type) {
    case KV_INT:
        type = "int";
        plen = (size_t)snprintf(num, sizeof num, "%" PRId64, v->i);
        break;
    case KV_FLOAT:
        type = "float";
        plen = (size_t)snprintf(num, sizeof num, "%.17g", v->f);
        break;
    case KV_BOOL:
        type = "bool";
        plen = (size_t)snprintf(num, sizeof num, "%s", v->i ? "true" : "false");
        break;
    default:
        type = v->type == KV_JSON ? "json" : NULL;
        payload = v->s ? v->s : "";
        plen = v->len;
        break;
    }
    if (kv_bucket_store(m->sm, m->stream, subj, type, NULL, UINT64_MAX, payload, plen, &seq) != 1) {
        log_error("kv: cannot move key '%.*s' into stream %s", (int)kl, k, m->stream);
        m->failed++;
        return;
    }
    m->moved++;
    m->last = seq;
}

/* Renames the old directory aside: <dir>.migrated, or .migrated.N when
 * that is taken. */
static void rename_aside(migration_t *m)
{
    char to[PATH_MAX + 32];
    struct stat st;
    snprintf(to, sizeof to, "%s.migrated", m->dir);
    for (int i = 1; stat(to, &st) == 0 && i < 1000; i++)
        snprintf(to, sizeof to, "%s.migrated.%d", m->dir, i);
    if (vfs_rename(m->dir, to) < 0) {
        log_error("kv: cannot rename %s to %s: %s (it is moved again at the next start)", m->dir, to,
                  strerror(errno));
        return;
    }
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", m->dir);
    if (strrchr(parent, '/'))
        *strrchr(parent, '/') = '\0';
    vfs_sync_dir(parent);
    log_info("kv: the store tide.kv kept before is now in bucket %s; its old files are kept in %s",
             KV_TIDE_BUCKET, to);
}

static void migration_free(migration_t *m)
{
    if (m->host && m->host->kv_migration == m)
        m->host->kv_migration = NULL;
    if (m->wait)
        event_free(m->wait);
    free(m);
}

/* Waits for the moved keys to be durable, then renames the old store. */
static void on_wait(evutil_socket_t fd, short what, void *ctx)
{
    migration_t *m = ctx;
    stream_info_t si;
    (void)fd;
    (void)what;
    if (!streams_stream_info(m->sm, m->stream, -1, &si)) {
        migration_free(m);
        return;
    }
    if (si.log.committed_seq < m->last) {
        struct timeval tv = {0, WAIT_MS * 1000};
        if (evtimer_add(m->wait, &tv) < 0)
            migration_free(m);
        return;
    }
    rename_aside(m);
    migration_free(m);
}

void kv_migrate_cancel(script_host_t *h)
{
    if (h->kv_migration)
        migration_free(h->kv_migration);
}

int kv_migrate(script_host_t *h, char *err, size_t errsz)
{
    struct stat st;
    migration_t *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    m->sm = h->streams;
    snprintf(m->stream, sizeof m->stream, "KV_%s", KV_TIDE_BUCKET);
    snprintf(m->dir, sizeof m->dir, "%s/kv", streams_dir(h->streams));
    if (stat(m->dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        free(m);
        return 0;
    }
    if (!(m->old = kv_new()) || kv_persist(m->old, m->dir, err, errsz) < 0)
        goto fail;
    if (!streams_stream_info(h->streams, m->stream, -1, NULL) &&
        (!h->bucket_maker || h->bucket_maker(h->bucket_ctx, KV_TIDE_BUCKET, err, errsz) < 0))
        goto fail;
    kv_each(m->old, "", 0, move_key, m);
    log_info("kv: moved %zu keys of %s into bucket %s (stream %s); %zu were there already%s", m->moved, m->dir,
             KV_TIDE_BUCKET, m->stream, m->kept, m->failed ? "; some could not be moved (see above)" : "");
    kv_free(m->old);
    m->old = NULL;
    if (m->failed) {
        /* Kept where it is, so that nothing is lost; moved again at the next start. */
        free(m);
        return 0;
    }
    if (!m->moved || !h->srv) { /* without a loop, moved keys wait for the next start */
        if (!m->moved)
            rename_aside(m);
        free(m);
        return 0;
    }
    if (!(m->wait = evtimer_new(server_base(h->srv), on_wait, m))) {
        free(m); /* moved again at the next start */
        return 0;
    }
    m->host = h;
    kv_migrate_cancel(h);
    h->kv_migration = m;
    on_wait(-1, EV_TIMEOUT, m);
    return 0;
fail:
    if (!err[0])
        snprintf(err, errsz, "cannot move %s into bucket %s", m->dir, KV_TIDE_BUCKET);
    kv_free(m->old);
    free(m);
    return -1;
}
