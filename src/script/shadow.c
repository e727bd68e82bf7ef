/* shadow.c - a candidate set of rules beside the live ones (tide rules
 * shadow / diff / promote / stop; docs/deploys.md).
 *
 * The candidate is a second state built from the candidate's files.  Every
 * event goes through the live rules for real, then through the candidate
 * with h->dry set: the pipeline's points of effect (delivery, ctx.publish,
 * dead letters; tide.kv writes go to a scratch store) note what they would
 * do in h->rec and do nothing.  The live run notes the same things, so the
 * two decisions compare as hashes: nothing is allocated per event unless
 * they differ and a sample is kept. */
#include "json_int.h"
#include "script_internal.h"
#include "shadow.h"

static const char *const diff_kind[D_KINDS] = {"kept", "routed", "data", "emitted", "errors", "kv", "acks"};

static void shadow_compare(shadow_t *s, const proto_msg_t *m);

/* Notes the verdicts of a consumer's handlers (ack, nak, progress, term). */
static void note_verdicts(script_host_t *h, const proto_msg_t *msgs, int n, const stream_verdict_t *v)
{
    static const char *const verdict[] = {"ack", "nak", "progress", "term"};
    for (int i = 0; i < n; i++)
        shadow_note(h, SHADOW_ACK, msgs[i].subject, msgs[i].subject_len, v[i].error, strlen(v[i].error),
                    verdict[v[i].kind & 3]);
}

/*
 * A consumer's stored events with a shadow: the live handlers for real,
 * then the candidate's bound to the same consumer name in dry mode, their
 * verdicts noted and never given to the consumer; compared per batch.
 */
static void shadow_durable(script_host_t *h, const char *stream, const char *consumer, const proto_msg_t *msgs,
                           const uint64_t *seqs, const uint32_t *deliveries, int n, stream_verdict_t *v)
{
    shadow_t *s = h->shadow;
    stream_verdict_t cv[64];
    shadow_decision_reset(&s->live);
    shadow_decision_reset(&s->dec);
    h->rec = &s->live;
    durable_run(h, stream, consumer, msgs, seqs, deliveries, n, v);
    note_verdicts(h, msgs, n, v);
    char saved[offsetof(script_stats_t, reloads)];
    memcpy(saved, &h->st, sizeof saved);
    state_t *live = h->cur;
    h->cur = s->cand;
    h->dry = 1;
    h->rec = &s->dec;
    for (int i = 0; i < n; i += 64) { /* in slices: the verdicts stay on the stack */
        int k = n - i < 64 ? n - i : 64;
        durable_run(h, stream, consumer, msgs + i, seqs + i, deliveries + i, k, cv);
        note_verdicts(h, msgs + i, k, cv);
    }
    h->rec = NULL;
    h->dry = 0;
    h->cur = live;
    memcpy(&h->st, saved, sizeof saved);
    if (n)
        shadow_compare(s, &msgs[0]);
}

/* Appends to out (cap bytes, holding *len) as snprintf would, cut at its end. */
static void text_add(char *out, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;
    if (*len >= cap - 1)
        return;
    va_start(ap, fmt);
    int n = vsnprintf(out + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n > 0)
        *len = *len + (size_t)n < cap ? *len + (size_t)n : cap - 1;
}

/* A decision as lines of text, like a trace: only for samples. */
static void decision_text(const shadow_decision_t *d, char *out, size_t cap)
{
    size_t len = 0;
    int total = 0;
    out[0] = '\0';
    for (int k = 0; k < SHADOW_KINDS; k++)
        total += d->n[k];
    for (int i = 0; i < d->nitems; i++) {
        const shadow_item_t *it = &d->items[i];
        const char *more = it->data_len >= sizeof it->data ? "..." : "";
        switch (it->kind) {
        case SHADOW_DROP:
            text_add(out, cap, &len, "dropped by %s\n", it->where);
            break;
        case SHADOW_DEAD:
            text_add(out, cap, &len, "dead letter (%s at %s): %s%s\n", it->subject, it->where, it->data, more);
            break;
        case SHADOW_KV:
            text_add(out, cap, &len, "kv %s %s\n", it->data, it->subject);
            break;
        case SHADOW_ACK:
            text_add(out, cap, &len, "%s %s%s%s\n", it->where, it->subject, it->data[0] ? ": " : "", it->data);
            break;
        default:
            text_add(out, cap, &len, "%s %s %s%s\n", it->kind == SHADOW_DELIVER ? "deliver" : "publish",
                     it->subject, it->data, more);
        }
    }
    if (total > d->nitems)
        text_add(out, cap, &len, "... and %d more\n", total - d->nitems);
}

/* The kinds of difference between the live decision a and the candidate's b. */
static int decision_diff(const shadow_decision_t *a, const shadow_decision_t *b)
{
    int kinds = 0;
    int kept_a = a->n[SHADOW_DELIVER] > 0, kept_b = b->n[SHADOW_DELIVER] > 0;
    if (kept_a != kept_b)
        kinds |= 1 << D_KEPT;
    else if (a->n[SHADOW_DELIVER] != b->n[SHADOW_DELIVER] || a->subjects != b->subjects)
        kinds |= 1 << D_ROUTED;
    else if (a->sum[SHADOW_DELIVER] != b->sum[SHADOW_DELIVER])
        kinds |= 1 << D_DATA;
    if (a->n[SHADOW_EMIT] != b->n[SHADOW_EMIT] || a->sum[SHADOW_EMIT] != b->sum[SHADOW_EMIT])
        kinds |= 1 << D_EMITTED;
    if (a->n[SHADOW_DEAD] != b->n[SHADOW_DEAD] || a->sum[SHADOW_DEAD] != b->sum[SHADOW_DEAD])
        kinds |= 1 << D_ERRORS;
    if (a->n[SHADOW_KV] != b->n[SHADOW_KV] || a->sum[SHADOW_KV] != b->sum[SHADOW_KV])
        kinds |= 1 << D_KV;
    if (a->n[SHADOW_ACK] != b->n[SHADOW_ACK] || a->sum[SHADOW_ACK] != b->sum[SHADOW_ACK])
        kinds |= 1 << D_ACKS;
    return kinds;
}

/* Counts a differing decision against the rule that made it (the
 * candidate's when it dropped or failed the event, else the live one's). */
static void count_rule(shadow_t *s)
{
    char where[128];
    if (s->dec.where[0])
        snprintf(where, sizeof where, "candidate %s", s->dec.where);
    else if (s->live.where[0])
        snprintf(where, sizeof where, "live %s", s->live.where);
    else
        snprintf(where, sizeof where, "(no rule)");
    for (size_t i = 0; i < s->nrules; i++) {
        if (!strcmp(s->rules[i].where, where)) {
            s->rules[i].n++;
            return;
        }
    }
    if (s->nrules == SHADOW_RULES)
        return;
    snprintf(s->rules[s->nrules].where, sizeof s->rules[0].where, "%s", where);
    s->rules[s->nrules++].n = 1;
}

static void shadow_compare(shadow_t *s, const proto_msg_t *m)
{
    int kinds = decision_diff(&s->live, &s->dec);
    s->events++;
    if (!kinds)
        return;
    s->differ++;
    for (int k = 0; k < D_KINDS; k++)
        if (kinds & (1 << k))
            s->kinds[k]++;
    count_rule(s);
    if (s->nsamples == SHADOW_SAMPLES)
        return;
    shadow_sample_t *x = &s->samples[s->nsamples++];
    snprintf(x->subject, sizeof x->subject, "%.*s", (int)(m->subject_len > 120 ? 120 : m->subject_len), m->subject);
    x->kinds = kinds;
    decision_text(&s->live, x->live, sizeof x->live);
    decision_text(&s->dec, x->cand, sizeof x->cand);
}

/* script_process with a shadow: the live rules for real, then the
 * candidate in dry mode, and the two decisions compared. */
static void shadow_process(script_host_t *h, struct client *from, const proto_msg_t *m)
{
    shadow_t *s = h->shadow;
    shadow_decision_reset(&s->live);
    shadow_decision_reset(&s->dec);
    h->rec = &s->live;
    pipeline_run_one(h, from, m, 0);

    /* The candidate sees the event as it came, with none of the live
     * run's counters, cascade or state. */
    /* The counters a run moves come first in script_stats_t, up to reloads. */
    char saved[offsetof(script_stats_t, reloads)];
    memcpy(saved, &h->st, sizeof saved);
    state_t *live = h->cur;
    struct cascade *cascade = h->cascade;
    h->cur = s->cand;
    h->cascade = NULL;
    h->dry = 1;
    h->rec = &s->dec;
    if (h->trace)
        h->trace(h->trace_ctx, "  shadow candidate:");
    pipeline_run_one(h, from, m, 0);
    h->rec = NULL;
    h->dry = 0;
    h->cascade = cascade;
    h->cur = live;
    memcpy(&h->st, saved, sizeof saved);
    shadow_compare(s, m);
}

/* The text of a file, malloc'd with its length; NULL when unreadable. */
static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *b = NULL;
    size_t cap = 0, n = 0, r;
    if (!f)
        return NULL;
    do {
        if (n + 4096 > cap) {
            char *nb = realloc(b, cap = cap * 2 + 8192);
            if (!nb)
                goto fail;
            b = nb;
        }
        r = fread(b + n, 1, cap - n - 1, f);
        n += r;
    } while (r > 0);
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

/* Where the candidate's copy of path (a file the rules load) is: the
 * candidate file for the entry file; for a candidate directory, the same
 * path relative to it as path is to the entry file's directory.  0, or -1
 * when the candidate has no copy (the live file is used). */
static int candidate_path(const script_host_t *h, const shadow_t *s, const char *path, char *out, size_t n)
{
    size_t dl = strlen(h->config_dir);
    if (!s->is_dir) {
        if (!h->config_path || strcmp(path, h->config_path))
            return -1;
        snprintf(out, n, "%s", s->real);
        return 0;
    }
    if (strncmp(path, h->config_dir, dl) || path[dl] != '/')
        return -1;
    snprintf(out, n, "%s/%s", s->real, path + dl + 1);
    return access(out, R_OK) == 0 ? 0 : -1;
}

/* script_source_fn over the candidate's files. */
static const char *candidate_source(void *ctx, const char *path, size_t *len)
{
    script_host_t *h = ctx;
    shadow_t *s = h->shadow;
    char cp[PATH_MAX + 8];
    for (size_t i = 0; i < s->nfiles; i++) {
        if (!strcmp(s->files[i].path, path)) {
            *len = s->files[i].len;
            return s->files[i].text;
        }
    }
    if (s->nfiles == SHADOW_FILES || candidate_path(h, s, path, cp, sizeof cp) < 0)
        return NULL;
    shadow_file_t *f = &s->files[s->nfiles];
    if (!(f->text = read_whole(cp, &f->len)) || !(f->path = strdup(path))) {
        free(f->text);
        f->text = NULL;
        return NULL;
    }
    s->nfiles++;
    *len = f->len;
    return f->text;
}

static void shadow_release(shadow_t *s)
{
    if (!s)
        return;
    script_state_release(s->cand);
    kv_free(s->scratch);
    for (size_t i = 0; i < s->nfiles; i++) {
        free(s->files[i].path);
        free(s->files[i].text);
    }
    free(s);
}

static void shadow_free(script_host_t *h)
{
    shadow_release(h->shadow);
    h->shadow = NULL;
    h->shadow_process = NULL;
    h->shadow_durable = NULL;
    h->shadow_queued = NULL;
}

void shadow_discard(script_host_t *h)
{
    shadow_free(h);
}

void shadow_tell(script_host_t *h, const char *state, const char *path, const char *reason)
{
    if (h->on_deploy)
        h->on_deploy(h->on_deploy_ctx, state, path, reason);
}

void script_set_deploy_hook(script_host_t *h,
                            void (*fn)(void *ctx, const char *state, const char *path, const char *reason), void *ctx)
{
    h->on_deploy = fn;
    h->on_deploy_ctx = ctx;
}

shadow_t *shadow_build(script_host_t *h, const char *path, int dry, char *err, size_t errsz)
{
    struct stat sb;
    shadow_t *s = NULL;
    if (h->processing) {
        snprintf(err, errsz, "cannot start a candidate from inside a script");
        return NULL;
    }
    if (!(s = calloc(1, sizeof *s)) || !(s->scratch = kv_new())) {
        snprintf(err, errsz, "out of memory");
        goto fail;
    }
    if (!realpath(path, s->real) || stat(s->real, &sb) < 0) {
        snprintf(err, errsz, "cannot open %s: %s", path, strerror(errno));
        goto fail;
    }
    s->is_dir = S_ISDIR(sb.st_mode);
    s->serial = ++h->deploys;
    snprintf(s->path, sizeof s->path, "%s", path);
    kv_set_limits(s->scratch, kv_limits(h->kv));
    shadow_t *old = h->shadow;
    h->shadow = s; /* for candidate_source */
    h->dry = dry;  /* in a shadow, what the files do while loading stays in the scratch */
    h->dry_kv = dry ? s->scratch : NULL;
    s->cand = script_state_build(h, candidate_source, h, err, errsz);
    h->dry_kv = NULL;
    h->dry = 0;
    h->shadow = old;
    if (!s->cand)
        goto fail;
    util_now_rfc3339(s->since);
    return s;
fail:
    shadow_release(s);
    return NULL;
}

void shadow_install(script_host_t *h, shadow_t *s,
                    void (*process)(script_host_t *h, struct client *from, const proto_msg_t *m))
{
    if (h->shadow)
        shadow_tell(h, h->shadow->canary ? "rolled back" : "stopped", h->shadow->path,
                    "replaced by another candidate");
    shadow_free(h);
    h->shadow = s;
    h->shadow_process = process;
    h->shadow_free = shadow_free;
    h->shadow_durable = s->canary ? NULL : shadow_durable;
}

int script_shadow_start(script_host_t *h, const char *path, char *err, size_t errsz)
{
    shadow_t *s = shadow_build(h, path, 1, err, errsz);
    if (!s)
        return -1;
    shadow_install(h, s, shadow_process);
    log_info("Shadow started: %s (%d rules) runs beside the live rules in dry mode", path, (int)s->cand->nrules);
    shadow_tell(h, "shadow", path, "");
    return 0;
}

int script_shadow_stop(script_host_t *h)
{
    if (!h->shadow)
        return -1;
    log_info("%s stopped: %s after %llu events", h->shadow->canary ? "Canary" : "Shadow", h->shadow->path,
             (unsigned long long)h->shadow->events);
    shadow_tell(h, h->shadow->canary ? "rolled back" : "stopped", h->shadow->path,
                h->shadow->canary ? "canary stopped" : "shadow stopped");
    shadow_free(h);
    return 0;
}

int script_shadow_promote(script_host_t *h, char *err, size_t errsz)
{
    if (!h->shadow) {
        snprintf(err, errsz, "no shadow is running (tide rules shadow PATH starts one)");
        return -1;
    }
    /* A fresh state from the same files, as a reload builds it: the
     * candidate ran dry, with a scratch store and no durable consumers. */
    int canary = h->shadow->canary;
    if (script_reload_from(h, canary ? "canary finished" : "shadow promote", candidate_source, h, err, errsz) < 0)
        return -1;
    shadow_tell(h, "promoted", h->shadow->path, canary ? "canary finished at 100%" : "shadow promoted");
    shadow_free(h);
    return 0;
}

int script_candidate_hash(const script_host_t *h, char hash[17])
{
    const shadow_t *s = h->shadow;
    uint64_t hv = 14695981039346656037ULL;
    if (!s)
        return -1;
    /* The files the candidate has of its own (the others are the live
     * ones), in the order they loaded: paths and text, as history.c does. */
    for (size_t i = 0; i < s->nfiles; i++) {
        for (const char *p = s->files[i].path; p == s->files[i].path || p[-1]; p++)
            hv = (hv ^ (unsigned char)*p) * 1099511628211ULL;
        for (size_t k = 0; k <= s->files[i].len; k++)
            hv = (hv ^ (unsigned char)s->files[i].text[k]) * 1099511628211ULL;
    }
    snprintf(hash, 17, "%016llx", (unsigned long long)hv);
    return 0;
}

int script_shadow_running(const script_host_t *h)
{
    return h->shadow != NULL;
}

/* The lines of a decision's text as a JSON array. */
static cJSON *text_lines(const char *text)
{
    cJSON *a = cJSON_CreateArray();
    for (const char *p = text; a && *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char *line = util_mem_dup(p, n);
        if (line)
            cJSON_AddItemToArray(a, cJSON_CreateString(line));
        free(line);
        p += n + (nl != NULL);
    }
    return a;
}

static cJSON *sample_object(const shadow_sample_t *x)
{
    cJSON *o = cJSON_CreateObject(), *k = cJSON_AddArrayToObject(o, "kinds");
    cJSON_AddStringToObject(o, "subject", x->subject);
    for (int i = 0; i < D_KINDS; i++)
        if (x->kinds & (1 << i))
            cJSON_AddItemToArray(k, cJSON_CreateString(diff_kind[i]));
    cJSON_AddItemToObject(o, "live", text_lines(x->live));
    cJSON_AddItemToObject(o, "candidate", text_lines(x->cand));
    return o;
}

char *script_shadow_diff_json(const script_host_t *h, size_t *len)
{
    const shadow_t *s = h->shadow;
    cJSON *o = cJSON_CreateObject(), *k, *r, *a;
    char *out = NULL, *p;
    *len = 0;
    if (!o || !s)
        goto done;
    cJSON_AddStringToObject(o, "mode", s->canary ? "canary" : "shadow");
    cJSON_AddStringToObject(o, "path", s->path);
    if (s->canary)
        canary_status(s, o);
    cJSON_AddStringToObject(o, "since", s->since);
    json_add_uint(o, "events", s->events);
    json_add_uint(o, "differ", s->differ);
    k = cJSON_AddObjectToObject(o, "kinds");
    for (int i = 0; i < D_KINDS; i++)
        json_add_uint(k, diff_kind[i], s->kinds[i]);
    r = cJSON_AddObjectToObject(o, "rules");
    for (size_t i = 0; i < s->nrules; i++)
        json_add_uint(r, s->rules[i].where, s->rules[i].n);
    a = cJSON_AddArrayToObject(o, "samples");
    for (size_t i = 0; i < s->nsamples; i++)
        cJSON_AddItemToArray(a, sample_object(&s->samples[i]));
    if ((p = cJSON_PrintUnformatted(o))) {
        out = util_mem_dup(p, strlen(p));
        *len = out ? strlen(out) : 0;
        cJSON_free(p);
    }
done:
    cJSON_Delete(o);
    return out;
}
