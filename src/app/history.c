/* history.c - the rule history; see history.h.
 *
 * On disk, in <data dir>/rules/: history.json holds the list (what
 * history_json answers, oldest first) and rev-N.json each revision's files
 * and their text ({"files":[...],"contents":[...]}).  Both are written to
 * a temporary file and renamed into place, so a crash leaves the old or
 * the new version, never half of one. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "history.h"
#include "json.h"
#include "json_int.h"
#include "log.h"
#include "util.h"

typedef struct revision {
    uint64_t rev;
    char hash[17];
    cJSON *files; /* array of paths */
    char at[64];
    char by[128];
    char state[16];
    char reason[256];
    char cause[64];
    cJSON *snap; /* {"files","contents"}, or NULL: read rev-N.json */
} revision_t;

struct history {
    char dir[4300]; /* "" : kept in memory only */
    script_host_t *h;
    revision_t revs[HISTORY_MAX]; /* oldest first */
    size_t nrevs;
    uint64_t live;   /* 0: none yet */
    uint64_t next;   /* the number the next revision gets */
    char by[128];    /* history_set_by */
    int rolling_back; /* a rollback's reload is under way: it records itself */
    uint64_t candidate; /* the running shadow's or canary's entry, 0 when none */
};

static revision_t *history_find(history_t *hi, uint64_t rev)
{
    for (size_t i = 0; i < hi->nrevs; i++)
        if (hi->revs[i].rev == rev)
            return &hi->revs[i];
    return NULL;
}

/* The whole file at path, NUL-terminated, malloc'd; NULL when unreadable. */
static char *history_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *b = NULL;
    size_t cap = 0, n = 0;
    if (!f)
        return NULL;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            char *nb = realloc(b, cap = cap * 2 + 8192);
            if (!nb)
                goto fail;
            b = nb;
        }
        size_t r = fread(b + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(f))
        goto fail;
    fclose(f);
    b[n] = '\0';
    *len = n;
    return b;
fail:
    fclose(f);
    free(b);
    return NULL;
}

/* Writes text to dir/name through a temporary file.  0, or -1 (logged). */
static int history_write(const history_t *hi, const char *name, const char *text)
{
    char path[4400], tmp[4420];
    if (!hi->dir[0])
        return 0;
    snprintf(path, sizeof path, "%s/%s", hi->dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        goto fail;
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n;
    if (fclose(f) != 0 || bad || rename(tmp, path) != 0)
        goto fail;
    return 0;
fail:
    log_error("cannot write the rule history %s: %s", path, strerror(errno));
    remove(tmp);
    return -1;
}

static cJSON *revision_object(const revision_t *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    json_add_uint(o, "rev", r->rev);
    cJSON_AddStringToObject(o, "hash", r->hash);
    cJSON_AddItemToObject(o, "files", r->files ? cJSON_Duplicate(r->files, 1) : cJSON_CreateArray());
    cJSON_AddStringToObject(o, "at", r->at);
    cJSON_AddStringToObject(o, "by", r->by);
    cJSON_AddStringToObject(o, "state", r->state);
    cJSON_AddStringToObject(o, "reason", r->reason);
    cJSON_AddStringToObject(o, "cause", r->cause);
    return o;
}

/* The list as JSON: newest first for answers, oldest first on disk. */
static char *history_print(const history_t *hi, int newest_first, size_t *len)
{
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    char *out = NULL;
    if (!o || !arr)
        goto done;
    json_add_uint(o, "live", hi->live);
    json_add_uint(o, "next", hi->next);
    for (size_t k = 0; k < hi->nrevs; k++) {
        const revision_t *r = &hi->revs[newest_first ? hi->nrevs - 1 - k : k];
        cJSON_AddItemToArray(arr, revision_object(r));
    }
    cJSON_AddItemToObject(o, "revisions", arr);
    arr = NULL;
    char *p = cJSON_PrintUnformatted(o);
    if (p) {
        out = util_mem_dup(p, strlen(p));
        cJSON_free(p);
    }
done:
    cJSON_Delete(arr);
    cJSON_Delete(o);
    if (len)
        *len = out ? strlen(out) : 0;
    return out;
}

static int history_save(const history_t *hi)
{
    char *text = history_print(hi, 0, NULL);
    int rc = text ? history_write(hi, "history.json", text) : -1;
    free(text);
    return rc;
}

static void copy_field(char *out, size_t n, const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    snprintf(out, n, "%s", cJSON_IsString(v) ? v->valuestring : "");
}

/* Reads history.json (when there is one) into hi. */
static void history_load(history_t *hi)
{
    char path[4400];
    size_t len;
    snprintf(path, sizeof path, "%s/history.json", hi->dir);
    char *text = hi->dir[0] ? history_read_file(path, &len) : NULL;
    cJSON *o = text ? json_parse_owned(text, len) : NULL, *r;
    if (text && !o)
        log_warn("the rule history %s is not JSON: starting a new one", path);
    json_get_uint_member(o, "live", &hi->live);
    json_get_uint_member(o, "next", &hi->next);
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(o, "revisions")) {
        revision_t *v = &hi->revs[hi->nrevs];
        if (hi->nrevs == HISTORY_MAX || json_get_uint_member(r, "rev", &v->rev) < 0)
            continue;
        copy_field(v->hash, sizeof v->hash, r, "hash");
        copy_field(v->at, sizeof v->at, r, "at");
        copy_field(v->by, sizeof v->by, r, "by");
        copy_field(v->state, sizeof v->state, r, "state");
        copy_field(v->reason, sizeof v->reason, r, "reason");
        copy_field(v->cause, sizeof v->cause, r, "cause");
        v->files = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(r, "files"), 1);
        if (!strcmp(v->state, "shadow") || !strcmp(v->state, "canary")) { /* it ended with the process */
            snprintf(v->state, sizeof v->state, "stopped");
            snprintf(v->reason, sizeof v->reason, "the node stopped while it ran");
        }
        hi->nrevs++;
        if (v->rev >= hi->next)
            hi->next = v->rev + 1;
    }
    if (!hi->next)
        hi->next = 1;
    cJSON_Delete(o);
    free(text);
}

/* FNV-1a, 64 bits, over h's files' paths and text. */
static void hash_update(uint64_t *hv, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        *hv = (*hv ^ (unsigned char)p[i]) * 1099511628211ULL;
}

/* What h runs now: {"files":[...],"contents":[...]} and its hash (17
 * bytes), each file's text as the reload read it (from a source: a
 * promoted candidate, a rollback), else read back from the disk.  NULL
 * when a file cannot be read back or out of memory. */
static cJSON *history_snapshot(script_host_t *h, char hash[17])
{
    size_t n, len;
    const char *const *files = script_files(h, &n);
    uint64_t hv = 14695981039346656037ULL;
    cJSON *o = cJSON_CreateObject(), *fa = cJSON_AddArrayToObject(o, "files"),
          *ca = cJSON_AddArrayToObject(o, "contents");
    if (!o || !fa || !ca)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        const char *stored = script_source_text(h, files[i], &len);
        char *text = stored ? util_mem_dup(stored, len + 1) : history_read_file(files[i], &len);
        if (!text) {
            log_warn("rule history: cannot read back %s: %s", files[i], strerror(errno));
            goto fail;
        }
        hash_update(&hv, files[i], strlen(files[i]) + 1);
        hash_update(&hv, text, len + 1);
        cJSON_AddItemToArray(fa, cJSON_CreateString(files[i]));
        cJSON_AddItemToArray(ca, cJSON_CreateString(text));
        free(text);
    }
    snprintf(hash, 17, "%016llx", (unsigned long long)hv);
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

static void revision_clear(revision_t *r)
{
    cJSON_Delete(r->files);
    cJSON_Delete(r->snap);
    memset(r, 0, sizeof *r);
}

/* Makes room for one more revision: the oldest goes, with its file. */
static void history_trim(history_t *hi)
{
    if (hi->nrevs < HISTORY_MAX)
        return;
    char path[4400];
    snprintf(path, sizeof path, "%s/rev-%llu.json", hi->dir, (unsigned long long)hi->revs[0].rev);
    if (hi->dir[0])
        remove(path);
    revision_clear(&hi->revs[0]);
    memmove(&hi->revs[0], &hi->revs[1], (hi->nrevs - 1) * sizeof hi->revs[0]);
    hi->nrevs--;
    memset(&hi->revs[hi->nrevs], 0, sizeof hi->revs[0]);
}

/* Records what h runs now as the live revision, after cause: a new
 * revision unless its content is the live one's.  0, or -1 (logged). */
static int history_record(history_t *hi, const char *cause)
{
    char hash[17], name[64];
    cJSON *snap = history_snapshot(hi->h, hash);
    revision_t *live = history_find(hi, hi->live);
    int rc = -1;
    if (!snap)
        goto done;
    if (live && !strcmp(live->hash, hash)) {
        rc = 0; /* the same rules again */
        goto done;
    }
    char *text = cJSON_PrintUnformatted(snap);
    snprintf(name, sizeof name, "rev-%llu.json", (unsigned long long)hi->next);
    rc = text ? history_write(hi, name, text) : -1;
    cJSON_free(text);
    if (rc < 0)
        goto done;
    history_trim(hi);
    live = history_find(hi, hi->live);
    if (live) {
        snprintf(live->state, sizeof live->state, "replaced");
        snprintf(live->reason, sizeof live->reason, "replaced by rev %llu (%s)", (unsigned long long)hi->next,
                 cause);
    }
    revision_t *r = &hi->revs[hi->nrevs++];
    r->rev = hi->next++;
    snprintf(r->hash, sizeof r->hash, "%s", hash);
    r->files = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(snap, "files"), 1);
    r->snap = snap;
    snap = NULL;
    util_now_rfc3339(r->at);
    snprintf(r->by, sizeof r->by, "%s", hi->by);
    snprintf(r->state, sizeof r->state, "live");
    snprintf(r->cause, sizeof r->cause, "%s", cause);
    hi->live = r->rev;
    rc = history_save(hi);
done:
    cJSON_Delete(snap);
    return rc;
}

static void history_on_swap(void *ctx, const char *why)
{
    history_t *hi = ctx;
    if (!hi->rolling_back)
        history_record(hi, why);
}

/* 1 for the entry of a shadow or a canary: no files of its own are kept,
 * so it is never rolled back to. */
static int is_candidate(const revision_t *r)
{
    return !strcmp(r->cause, "shadow") || !strcmp(r->cause, "canary");
}

/* A shadow's or canary's entry: made when it starts (state "shadow" or
 * "canary", and cause the same), its state and reason set when it ends. */
static void history_on_deploy(void *ctx, const char *state, const char *path, const char *reason)
{
    history_t *hi = ctx;
    revision_t *r = hi->candidate ? history_find(hi, hi->candidate) : NULL;
    if (!strcmp(state, "canary") || !strcmp(state, "shadow")) {
        history_trim(hi);
        r = &hi->revs[hi->nrevs++];
        r->rev = hi->next++;
        if (script_candidate_hash(hi->h, r->hash) < 0)
            snprintf(r->hash, sizeof r->hash, "%016llx", 0ULL);
        r->files = cJSON_CreateArray();
        cJSON_AddItemToArray(r->files, cJSON_CreateString(path));
        util_now_rfc3339(r->at);
        snprintf(r->by, sizeof r->by, "%s", hi->by);
        snprintf(r->cause, sizeof r->cause, "%s", state);
        snprintf(r->state, sizeof r->state, "%s", state);
        hi->candidate = r->rev;
        history_save(hi);
        return;
    }
    if (!r)
        return;
    hi->candidate = 0;
    snprintf(r->state, sizeof r->state, "%s", state);
    /* A promotion swapped the new live revision in before it told us. */
    snprintf(r->reason, sizeof r->reason, "%s%s%s", reason, hi->by[0] ? " by " : "", hi->by);
    if (!strcmp(state, "promoted"))
        snprintf(r->reason + strlen(r->reason), sizeof r->reason - strlen(r->reason), ": rev %llu is live",
                 (unsigned long long)hi->live);
    history_save(hi);
}

history_t *history_open(const char *data_dir, script_host_t *h)
{
    history_t *hi = calloc(1, sizeof *hi);
    if (!hi)
        goto fail;
    hi->h = h;
    if (data_dir)
        snprintf(hi->dir, sizeof hi->dir, "%s/rules", data_dir);
    if (hi->dir[0] && util_mkdirs(hi->dir) < 0) {
        log_error("cannot make the rule history directory %s: %s", hi->dir, strerror(errno));
        goto fail;
    }
    history_load(hi);
    if (history_record(hi, "start") < 0)
        goto fail;
    script_set_swap_hook(h, history_on_swap, hi);
    script_set_deploy_hook(h, history_on_deploy, hi);
    return hi;
fail:
    history_free(hi);
    return NULL;
}

void history_free(history_t *hi)
{
    if (!hi)
        return;
    if (hi->h) {
        script_set_swap_hook(hi->h, NULL, NULL);
        script_set_deploy_hook(hi->h, NULL, NULL);
    }
    for (size_t i = 0; i < hi->nrevs; i++)
        revision_clear(&hi->revs[i]);
    free(hi);
}

void history_set_by(history_t *hi, const char *by)
{
    snprintf(hi->by, sizeof hi->by, "%s", by ? by : "");
}

char *history_json(const history_t *hi, size_t *len)
{
    return history_print(hi, 1, len);
}

/* The stored files of a revision being loaded: script_source_fn's ctx. */
typedef struct stored_files {
    const cJSON *files, *contents;
} stored_files_t;

static const char *stored_file(void *ctx, const char *path, size_t *len)
{
    const stored_files_t *s = ctx;
    const cJSON *f, *c = s->contents ? s->contents->child : NULL;
    for (f = s->files ? s->files->child : NULL; f && c; f = f->next, c = c->next) {
        if (cJSON_IsString(f) && cJSON_IsString(c) && !strcmp(f->valuestring, path)) {
            *len = strlen(c->valuestring);
            return c->valuestring;
        }
    }
    return NULL;
}

/* The revision a rollback to rev (0: the one before the live one) goes
 * to, or NULL with the reason in err. */
static revision_t *rollback_target(history_t *hi, uint64_t rev, char *err, size_t errsz)
{
    revision_t *t = NULL;
    if (rev == hi->live) {
        snprintf(err, errsz, "rev %llu is already live", (unsigned long long)rev);
        return NULL;
    }
    for (size_t i = 0; i < hi->nrevs; i++) {
        if (is_candidate(&hi->revs[i])) /* never the live rules: no files kept */
            continue;
        if (rev ? hi->revs[i].rev == rev : hi->revs[i].rev < hi->live)
            t = &hi->revs[i];
    }
    if (!t && rev)
        snprintf(err, errsz, "no rev %llu in the history that was live (it keeps the last %d)",
                 (unsigned long long)rev, HISTORY_MAX);
    else if (!t)
        snprintf(err, errsz, "no revision before the live one (rev %llu) to roll back to",
                 (unsigned long long)hi->live);
    return t;
}

int history_rollback(history_t *hi, uint64_t rev, const char *by, uint64_t *live, uint64_t *from, char *err,
                     size_t errsz)
{
    char path[4400], e[900];
    size_t len;
    char *text = NULL;
    cJSON *o = NULL;
    int rc = -1;
    revision_t *t = rollback_target(hi, rev, err, errsz), *cur;
    if (!t)
        goto done;
    snprintf(path, sizeof path, "%s/rev-%llu.json", hi->dir, (unsigned long long)t->rev);
    if (!t->snap && (!(text = history_read_file(path, &len)) || !(o = json_parse_owned(text, len)))) {
        snprintf(err, errsz, "cannot read rev %llu's files from %s", (unsigned long long)t->rev, path);
        goto done;
    }
    const cJSON *snap = t->snap ? t->snap : o;
    stored_files_t s = {cJSON_GetObjectItemCaseSensitive(snap, "files"),
                        cJSON_GetObjectItemCaseSensitive(snap, "contents")};
    hi->rolling_back = 1;
    rc = script_reload_from(hi->h, "rollback", stored_file, &s, e, sizeof e);
    hi->rolling_back = 0;
    if (rc < 0) {
        snprintf(err, errsz, "rev %llu does not load: %s", (unsigned long long)t->rev, e);
        goto done;
    }
    *from = hi->live;
    *live = t->rev;
    if ((cur = history_find(hi, hi->live))) {
        snprintf(cur->state, sizeof cur->state, "rolled back");
        snprintf(cur->reason, sizeof cur->reason, "rolled back to rev %llu%s%s", (unsigned long long)t->rev,
                 by && by[0] ? " by " : "", by && by[0] ? by : "");
    }
    snprintf(t->state, sizeof t->state, "live");
    t->reason[0] = '\0';
    hi->live = t->rev;
    history_save(hi);
done:
    cJSON_Delete(o);
    free(text);
    return rc;
}
