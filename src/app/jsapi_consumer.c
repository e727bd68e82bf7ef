/* jsapi_consumer.c - consumers through the JetStream API: CONSUMER.CREATE
 * (ephemeral, named, with a filter in the subject), DURABLE.CREATE, INFO,
 * DELETE, NAMES, LIST and MSG.NEXT (pull requests), their configurations
 * as nats-server 2.10 shows them (server/consumer.go: ConsumerConfig,
 * setConsumerConfigDefaults, checkConsumerCfg), their saved copies, and
 * ephemerals that go after inactive_threshold.  The delivery itself is
 * the store's (src/store/consumer.c, pull.c). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/rand.h>

#include "json.h"
#include "json_int.h"
#include "jsapi_internal.h"
#include "log.h"
#include "subject.h"
#include "util.h"
#include "vfs.h"

#define NS 1000000000LL
#define ACK_WAIT_DEFAULT (30 * NS)        /* JsAckWaitDefault */
#define MAX_ACK_PENDING_DEFAULT 1000      /* JsDefaultMaxAckPending */
#define MAX_WAITING_DEFAULT 512           /* JSWaitQueueDefaultMax */
#define INACTIVE_DEFAULT (5 * NS)         /* JsDeleteWaitTimeDefault, for ephemerals */
#define NAMES_LIMIT 1024
#define LIST_LIMIT 256
#define REAP_MS 250

/* ---- reading requests ------------------------------------------------------- */

/* obj's whole-number member key into *out (dflt when absent or null); -1
 * when it is there and not a whole number. */
static int get_i64(const cJSON *obj, const char *key, int64_t dflt, int64_t *out)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(obj, key);
    uint64_t u;
    *out = dflt;
    if (!n || cJSON_IsNull(n))
        return 0;
    if (json_get_uint(n, &u) == 0 && u <= INT64_MAX) {
        *out = (int64_t)u;
        return 0;
    }
    const char *t = (n->type & 0xFF) == cJSON_Raw ? n->valuestring : NULL;
    if (t && t[0] == '-') {
        char *end;
        errno = 0;
        long long v = strtoll(t, &end, 10);
        if (!*end && !errno) {
            *out = v;
            return 0;
        }
    } else if (cJSON_IsNumber(n) && n->valuedouble == (double)(int64_t)n->valuedouble) {
        *out = (int64_t)n->valuedouble;
        return 0;
    }
    return -1;
}

static int get_bool(const cJSON *obj, const char *key)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

/* RFC 3339 (Go's time.Time in JSON) as ns since the epoch; -1 when it is not. */
static int64_t parse_time(const char *s)
{
    struct tm tm = {0};
    int y, mo, d, h, mi, sec, n = 0;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6)
        return -1;
    const char *p = s + n;
    int64_t frac = 0, scale = NS;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++)
            if (scale > 1)
                scale /= 10, frac += (*p - '0') * scale;
    int off = 0;
    if (*p == '+' || *p == '-') {
        int oh, om;
        if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2)
            return -1;
        off = (*p == '-' ? -1 : 1) * (oh * 3600 + om * 60);
    } else if (*p != 'Z') {
        return -1;
    }
    tm.tm_year = y - 1900, tm.tm_mon = mo - 1, tm.tm_mday = d, tm.tm_hour = h, tm.tm_min = mi, tm.tm_sec = sec;
    return ((int64_t)timegm(&tm) - off) * NS + frac;
}

/* 0 when name is a consumer name nats-server takes and tide can keep; else
 * -1 with e set. */
static int name_check(const char *name, api_err_t *e)
{
    if (strpbrk(name, "\\/")) {
        jsapi_set_err(e, 400, 10127, "Consumer name can not contain path separators");
        return -1;
    }
    if (!name[0] || strpbrk(name, " \t\r\n\f.*>")) {
        jsapi_set_err(e, 400, 10103, "durable name can not contain '.', '*', '>'");
        return -1;
    }
    if (strlen(name) >= STREAM_NAME_MAX) {
        jsapi_set_err(e, 400, 10102, "consumer name is too long, maximum allowed is %d", STREAM_NAME_MAX - 1);
        return -1;
    }
    return 0;
}

/* ---- configurations --------------------------------------------------------- */

/* The raw fields of a consumer configuration, read once. */
typedef struct creq {
    const char *durable, *name, *desc, *dp, *ap, *rp, *fs, *dsub, *dgroup, *sample, *start_time;
    const cJSON *fss, *backoff, *meta;
    int64_t start_seq, ack_wait, max_deliver, max_waiting, max_ack_pending, hb, max_batch, max_expires, max_bytes,
        inactive, replicas, rate;
    int fc, ho, mem, direct;
} creq_t;

static const char *const deliver_policies[] = {"all", "new", "by_start_sequence", "by_start_time", "last",
                                               "last_per_subject", NULL};
static const char *const ack_policies[] = {"explicit", "none", "all", NULL};

/* The index of s in names, or -1. */
static int pick(const char *s, const char *const *names)
{
    for (int i = 0; s && names[i]; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

/* Reads rc into r; 0, or -1 with e set (a field of the wrong type). */
static int creq_read(const cJSON *rc, creq_t *r, api_err_t *e)
{
    static const char *const nums[] = {"opt_start_seq", "ack_wait", "max_deliver", "max_waiting", "max_ack_pending",
                                       "idle_heartbeat", "max_batch", "max_expires", "max_bytes",
                                       "inactive_threshold", "num_replicas", "rate_limit_bps", NULL};
    int64_t *dst[] = {&r->start_seq, &r->ack_wait, &r->max_deliver, &r->max_waiting, &r->max_ack_pending, &r->hb,
                      &r->max_batch, &r->max_expires, &r->max_bytes, &r->inactive, &r->replicas, &r->rate};
    memset(r, 0, sizeof *r);
    for (int i = 0; nums[i]; i++)
        if (get_i64(rc, nums[i], 0, dst[i]) < 0)
            goto bad;
    r->durable = jsapi_get_str(rc, "durable_name", "");
    r->name = jsapi_get_str(rc, "name", "");
    r->desc = jsapi_get_str(rc, "description", "");
    r->dp = jsapi_get_str(rc, "deliver_policy", "all");
    r->ap = jsapi_get_str(rc, "ack_policy", "none");
    r->rp = jsapi_get_str(rc, "replay_policy", "instant");
    r->fs = jsapi_get_str(rc, "filter_subject", "");
    r->dsub = jsapi_get_str(rc, "deliver_subject", "");
    r->dgroup = jsapi_get_str(rc, "deliver_group", "");
    r->sample = jsapi_get_str(rc, "sample_freq", "");
    r->start_time = jsapi_get_str(rc, "opt_start_time", "");
    if (!r->durable || !r->name || !r->desc || !r->fs || !r->dsub || !r->dgroup || !r->sample || !r->start_time ||
        pick(r->dp, deliver_policies) < 0 || pick(r->ap, ack_policies) < 0 || !r->rp ||
        (strcmp(r->rp, "instant") && strcmp(r->rp, "original")))
        goto bad;
    r->fss = cJSON_GetObjectItemCaseSensitive(rc, "filter_subjects");
    r->backoff = cJSON_GetObjectItemCaseSensitive(rc, "backoff");
    r->meta = cJSON_GetObjectItemCaseSensitive(rc, "metadata");
    if ((r->fss && !cJSON_IsNull(r->fss) && !cJSON_IsArray(r->fss)) ||
        (r->backoff && !cJSON_IsNull(r->backoff) && !cJSON_IsArray(r->backoff)))
        goto bad;
    r->fc = get_bool(rc, "flow_control");
    r->ho = get_bool(rc, "headers_only");
    r->mem = get_bool(rc, "mem_storage");
    r->direct = get_bool(rc, "direct");
    return 0;
bad:
    jsapi_set_err(e, 400, 10025, "invalid JSON");
    return -1;
}

/* The filters of r (filter_subject or filter_subjects) into c, checked. */
static int creq_filters(const creq_t *r, consumer_cfg_t *c, api_err_t *e)
{
    const cJSON *f;
    if (r->fs[0] && cJSON_GetArraySize(r->fss) > 0) {
        jsapi_set_err(e, 400, 10136, "consumer cannot have both FilterSubject and FilterSubjects specified");
        return -1;
    }
    if (r->fs[0])
        snprintf(c->filter, sizeof c->filter, "%s", r->fs);
    cJSON_ArrayForEach(f, r->fss) {
        if (!cJSON_IsString(f) || !f->valuestring[0]) {
            jsapi_set_err(e, 400, 10139, "consumer filter in FilterSubjects cannot be empty");
            return -1;
        }
        if (c->nfilters == CONSUMER_FILTERS_MAX || strlen(f->valuestring) >= sizeof c->filters[0]) {
            jsapi_set_err(e, 500, 10012, "tide takes at most %d filter subjects of up to 255 bytes",
                          CONSUMER_FILTERS_MAX);
            return -1;
        }
        snprintf(c->filters[c->nfilters++], sizeof c->filters[0], "%s", f->valuestring);
    }
    for (int i = 0; i < c->nfilters || (i == 0 && c->filter[0]); i++) {
        const char *s = c->nfilters ? c->filters[i] : c->filter;
        if (!subject_valid_pattern(s, strlen(s))) {
            jsapi_set_err(e, 500, 10052, "invalid subject");
            return -1;
        }
        for (int k = 0; k < i; k++)
            if (streams_patterns_overlap(s, c->filters[k])) {
                jsapi_set_err(e, 400, 10138, "consumer subject filters cannot overlap");
                return -1;
            }
    }
    return 0;
}

/* Where it starts: deliver_policy with opt_start_seq / opt_start_time. */
static int creq_start(const creq_t *r, consumer_cfg_t *c, api_err_t *e)
{
    static const char *const said[] = {"all", "new", "by start sequence", "by start time", "last",
                                       "last per subject"};
    int dp = pick(r->dp, deliver_policies), seq = r->start_seq > 0, tm = r->start_time[0] != '\0';
    c->deliver_policy = dp;
    if ((seq && dp != DELIVER_BY_START_SEQ) || (tm && dp != DELIVER_BY_START_TIME)) {
        jsapi_set_err(e, 400, 10094, "consumer delivery policy is deliver %s, but optional start %s is also set",
                      said[dp], seq ? (dp == DELIVER_BY_START_TIME ? "start sequence" : "sequence") : "time");
        return -1;
    }
    if ((dp == DELIVER_BY_START_SEQ && !seq) || (dp == DELIVER_BY_START_TIME && !tm) ||
        (dp == DELIVER_LAST_PER_SUBJECT && !c->filter[0] && !c->nfilters)) {
        jsapi_set_err(e, 400, 10094, "consumer delivery policy is deliver %s, but optional %s is not set", said[dp],
                      dp == DELIVER_BY_START_SEQ ? "start sequence" : dp == DELIVER_BY_START_TIME ? "start time"
                                                                                             : "filter subject");
        return -1;
    }
    c->start_seq = (uint64_t)r->start_seq;
    if (tm && (c->start_time = parse_time(r->start_time)) < 0) {
        jsapi_set_err(e, 400, 10025, "invalid JSON");
        return -1;
    }
    return 0;
}

/* The push / pull checks of checkConsumerCfg, and what tide refuses. */
static int creq_check(const creq_t *r, api_err_t *e)
{
    int push = r->dsub[0] != '\0';
    if (r->replicas < 0)
        return jsapi_set_err(e, 400, 10133, "replicas count cannot be negative"), -1;
    if (r->replicas > 1)
        return jsapi_set_err(e, 500, 10074, "replicas > 1 not supported in non-clustered mode"), -1;
    if (cJSON_GetArraySize(r->backoff) > 0 && r->max_deliver <= cJSON_GetArraySize(r->backoff))
        return jsapi_set_err(e, 400, 10116, "max deliver is required to be > length of backoff values"), -1;
    if (cJSON_GetArraySize(r->backoff) > CONSUMER_BACKOFF_MAX)
        return jsapi_set_err(e, 500, 10012, "tide takes at most %d backoff values", CONSUMER_BACKOFF_MAX), -1;
    if (strlen(r->desc) > 4096)
        return jsapi_set_err(e, 400, 10107, "consumer description is too long, maximum allowed is 4096"), -1;
    if (push && (strpbrk(r->dsub, "*>") || !subject_valid_literal(r->dsub, strlen(r->dsub))))
        return jsapi_set_err(e, 400, strpbrk(r->dsub, "*>") ? 10079 : 10112, "%s",
                             strpbrk(r->dsub, "*>") ? "consumer deliver subject has wildcards"
                                                    : "invalid push consumer deliver subject"), -1;
    if (push && r->max_waiting)
        return jsapi_set_err(e, 400, 10080, "consumer in push mode can not set max waiting"), -1;
    if (push && r->max_ack_pending > 0 && !strcmp(r->ap, "none"))
        return jsapi_set_err(e, 400, 10082, "consumer requires ack policy for max ack pending"), -1;
    if (push && r->hb > 0 && r->hb < NS / 10)
        return jsapi_set_err(e, 400, 10083, "consumer idle heartbeat needs to be >= 100ms"), -1;
    if (!push && r->rate > 0)
        return jsapi_set_err(e, 400, 10086, "consumer in pull mode can not have rate limit set"), -1;
    if (!push && r->max_waiting < 0)
        return jsapi_set_err(e, 400, 10087, "consumer max waiting needs to be positive"), -1;
    if (!push && r->hb > 0)
        return jsapi_set_err(e, 400, 10088, "consumer idle heartbeat requires a push based consumer"), -1;
    if (!push && r->fc)
        return jsapi_set_err(e, 400, 10089, "consumer flow control requires a push based consumer"), -1;
    if (!push && r->max_batch < 0)
        return jsapi_set_err(e, 400, 10114, "consumer max request batch needs to be > 0"), -1;
    if (!push && r->max_expires && r->max_expires < NS / 1000)
        return jsapi_set_err(e, 400, 10115, "consumer max request expires needs to be >= 1ms"), -1;
    if (r->direct)
        return jsapi_set_err(e, 400, 10090, "consumer direct requires a push based consumer"), -1;
    if (r->fc && !r->hb)
        return jsapi_set_err(e, 400, 10108, "consumer with flow control also needs heartbeats"), -1;
    if (r->durable[0] && r->name[0] && strcmp(r->durable, r->name))
        return jsapi_set_err(e, 400, 10132, "Consumer Durable and Name have to be equal if both are provided"), -1;
    if (r->rate > 0)
        return jsapi_set_err(e, 500, 10012, "rate_limit_bps is not supported by tide"), -1;
    return 0;
}

/* The settings that need no checking beyond creq_check, into c. */
static void creq_settings(const creq_t *r, consumer_cfg_t *c)
{
    const cJSON *b;
    int64_t first = -1;
    c->pull = !r->dsub[0];
    snprintf(c->deliver, sizeof c->deliver, "%s", r->dsub);
    snprintf(c->queue, sizeof c->queue, "%s", r->dgroup);
    c->ack_policy = pick(r->ap, ack_policies);
    c->ack_wait = (double)(r->ack_wait ? r->ack_wait : ACK_WAIT_DEFAULT) / 1e9;
    c->max_deliver = r->max_deliver > 0 ? r->max_deliver : -1;
    /* nats-server waits backoff[n-1] after delivery n; tide's backoff
     * comes after ack_wait (backoff[0]): the difference. */
    cJSON_ArrayForEach(b, r->backoff) {
        int64_t v = cJSON_IsNumber(b) ? (int64_t)b->valuedouble : 0;
        uint64_t u;
        if (json_get_uint(b, &u) == 0)
            v = (int64_t)u;
        if (first < 0) {
            first = v;
            c->ack_wait = (double)v / 1e9;
        }
        if (c->nbackoff < CONSUMER_BACKOFF_MAX)
            c->backoff[c->nbackoff++] = v > first ? (double)(v - first) / 1e9 : 0;
    }
    c->max_ack_pending = r->max_ack_pending > 0 ? r->max_ack_pending
                         : c->ack_policy == ACK_NONE ? INT64_MAX
                                                     : MAX_ACK_PENDING_DEFAULT;
    c->max_waiting = c->pull ? (r->max_waiting ? r->max_waiting : MAX_WAITING_DEFAULT) : 0;
    c->idle_heartbeat = (double)r->hb / 1e9;
    c->flow_control = r->fc;
    c->headers_only = r->ho;
    c->replay_original = !strcmp(r->rp, "original");
}

/* Adds key: v to o unless v is 0 (Go's omitempty). */
static void add_nz(cJSON *o, const char *key, int64_t v)
{
    if (v)
        json_add_int(o, key, v);
}

static void add_str_nz(cJSON *o, const char *key, const char *v)
{
    if (v && v[0])
        cJSON_AddStringToObject(o, key, v);
}

/* The configuration as nats-server shows it, defaults filled in. */
static cJSON *creq_show(const creq_t *r, const char *name, const consumer_cfg_t *c)
{
    cJSON *o = cJSON_CreateObject();
    int acks = c->ack_policy != ACK_NONE;
    add_str_nz(o, "durable_name", r->durable);
    cJSON_AddStringToObject(o, "name", name);
    add_str_nz(o, "description", r->desc);
    cJSON_AddStringToObject(o, "deliver_policy", r->dp);
    add_nz(o, "opt_start_seq", r->start_seq);
    add_str_nz(o, "opt_start_time", r->start_time);
    cJSON_AddStringToObject(o, "ack_policy", r->ap);
    add_nz(o, "ack_wait", cJSON_GetArraySize(r->backoff) ? (int64_t)(c->ack_wait * 1e9 + 0.5)
                          : r->ack_wait          ? r->ack_wait
                          : acks                 ? ACK_WAIT_DEFAULT
                                                 : 0);
    json_add_int(o, "max_deliver", c->max_deliver);
    if (cJSON_GetArraySize(r->backoff))
        cJSON_AddItemToObject(o, "backoff", json_duplicate(r->backoff));
    add_str_nz(o, "filter_subject", r->fs);
    if (cJSON_GetArraySize(r->fss))
        cJSON_AddItemToObject(o, "filter_subjects", json_duplicate(r->fss));
    cJSON_AddStringToObject(o, "replay_policy", r->rp);
    add_str_nz(o, "sample_freq", r->sample);
    add_nz(o, "max_waiting", c->max_waiting);
    add_nz(o, "max_ack_pending", r->max_ack_pending ? r->max_ack_pending : acks ? MAX_ACK_PENDING_DEFAULT : 0);
    add_nz(o, "idle_heartbeat", r->hb);
    if (r->fc)
        cJSON_AddBoolToObject(o, "flow_control", 1);
    if (r->ho)
        cJSON_AddBoolToObject(o, "headers_only", 1);
    add_nz(o, "max_batch", r->max_batch);
    add_nz(o, "max_expires", r->max_expires);
    add_nz(o, "max_bytes", r->max_bytes);
    add_str_nz(o, "deliver_subject", r->dsub);
    add_str_nz(o, "deliver_group", r->dgroup);
    add_nz(o, "inactive_threshold", r->inactive ? r->inactive : !r->durable[0] ? INACTIVE_DEFAULT : 0);
    json_add_int(o, "num_replicas", r->replicas);
    if (r->mem)
        cJSON_AddBoolToObject(o, "mem_storage", 1);
    if (cJSON_IsObject(r->meta) && cJSON_GetArraySize(r->meta))
        cJSON_AddItemToObject(o, "metadata", json_duplicate(r->meta));
    return o;
}

/* The configuration rc of consumer name on stream, checked: the store's
 * (*c) and nats-server's view (returned, caller deletes), or NULL with e
 * set. */
static cJSON *config_normalize(const cJSON *rc, const char *stream, const char *name, consumer_cfg_t *c,
                               api_err_t *e)
{
    creq_t r;
    memset(c, 0, sizeof *c);
    if (creq_read(rc, &r, e) < 0 || creq_check(&r, e) < 0 || creq_filters(&r, c, e) < 0 || creq_start(&r, c, e) < 0)
        return NULL;
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->stream, sizeof c->stream, "%s", stream);
    snprintf(c->where, sizeof c->where, "the JetStream API");
    c->api = 1;
    c->ephemeral = !r.durable[0];
    creq_settings(&r, c);
    return creq_show(&r, name, c);
}

/* ---- the registry and saved copies ------------------------------------------ */

/* "<stream>/<name>": the registry's key (neither holds a '/'). */
static void reg_key(const char *stream, const char *name, char out[2 * STREAM_NAME_MAX + 2])
{
    snprintf(out, 2 * STREAM_NAME_MAX + 2, "%.63s/%.63s", stream, name);
}

static const cJSON *reg_get(jsapi_t *api, const char *stream, const char *name)
{
    char k[2 * STREAM_NAME_MAX + 2];
    reg_key(stream, name, k);
    return cJSON_GetObjectItemCaseSensitive(api->cons, k);
}

/* <data>/jsapi/consumers/<stream>[/<name>] */
static void cons_dir(jsapi_t *api, const char *stream, const char *name, char *out, size_t n)
{
    snprintf(out, n, "%s/jsapi/consumers/%s%s%s", streams_dir(api->n->streams), stream, name ? "/" : "",
             name ? name : "");
}

/* Writes entry as <dir>/config.json durably (temporary file synced,
 * renamed, directory synced).  0 or -1. */
static int saved_write(const char *dir, const cJSON *entry)
{
    char path[4600], tmp[4700];
    size_t len = 0;
    char *text = json_print(entry, &len);
    int fd = -1, rc = -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!text || (fd = vfs_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
        goto fail;
    if (vfs_write(fd, text, len) != (ssize_t)len || vfs_sync(fd) != 0)
        goto fail;
    vfs_close(fd);
    fd = -1;
    if (vfs_rename(tmp, path) != 0 || vfs_sync_dir(dir) != 0)
        goto fail;
    rc = 0;
fail:
    if (rc < 0)
        log_error("JetStream API: cannot save %s: %s", path, strerror(errno));
    if (fd >= 0)
        vfs_close(fd);
    free(text);
    return rc;
}

/* Deletes dir and what is in it. */
static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[4700];
    while (d && (de = readdir(d))) {
        struct stat sb;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree(path);
        else
            vfs_unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* Opens consumer name of stream from the store's cfg c and registers it
 * with its shown configuration (taken) and created time.  0, or -1 with e
 * set. */
static int consumer_start(jsapi_t *api, const consumer_cfg_t *c, cJSON *shown, const char *created, int save,
                          api_err_t *e)
{
    char err[512], k[2 * STREAM_NAME_MAX + 2], dir[4400];
    int rc = streams_consumer_add(api->n->streams, c, err, sizeof err);
    cJSON *entry = NULL;
    if (rc == STREAMS_ENOENT)
        jsapi_set_err(e, 404, 10059, "stream not found");
    else if (rc == STREAMS_EFULL)
        jsapi_set_err(e, 400, 10026, "maximum consumers limit reached");
    else if (rc < 0)
        jsapi_set_err(e, 500, 10012, "%s", err);
    if (rc < 0)
        goto fail;
    entry = cJSON_CreateObject();
    cJSON_AddItemToObject(entry, "config", shown);
    shown = NULL;
    cJSON_AddStringToObject(entry, "created", created);
    cons_dir(api, c->stream, c->name, dir, sizeof dir);
    if (save && !c->ephemeral && saved_write(dir, entry) < 0) {
        streams_consumer_remove(api->n->streams, c->stream, c->name, err, sizeof err);
        jsapi_set_err(e, 500, 10012, "cannot save the configuration of consumer %s", c->name);
        goto fail;
    }
    reg_key(c->stream, c->name, k);
    cJSON_DeleteItemFromObjectCaseSensitive(api->cons, k);
    cJSON_AddItemToObject(api->cons, k, entry);
    return 0;
fail:
    cJSON_Delete(shown);
    cJSON_Delete(entry);
    return -1;
}

/* Stops consumer name of stream and forgets it (its state and saved
 * configuration go).  0, or -1 with e set. */
static int consumer_forget(jsapi_t *api, const char *stream, const char *name, api_err_t *e)
{
    char err[512], k[2 * STREAM_NAME_MAX + 2];
    int rc = streams_consumer_remove(api->n->streams, stream, name, err, sizeof err);
    if (rc == STREAMS_ENOENT)
        jsapi_set_err(e, 404, 10014, "consumer not found");
    else if (rc < 0)
        jsapi_set_err(e, 500, 10012, "%s", err);
    if (rc < 0 && rc != STREAMS_EFAIL)
        return -1;
    reg_key(stream, name, k);
    cJSON_DeleteItemFromObjectCaseSensitive(api->cons, k);
    return rc < 0 ? -1 : 0;
}

/* Reopens one saved consumer (<stream dir>/<name>/config.json). */
static void saved_open(jsapi_t *api, const char *stream, const char *name)
{
    char dir[4400], path[4500];
    api_err_t e;
    consumer_cfg_t c;
    cons_dir(api, stream, name, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long size = -1;
    cJSON *entry = NULL, *shown = NULL;
    if (f && fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)size + 1)) && fread(text, 1, (size_t)size, f) == (size_t)size)
        entry = json_parse_owned(text, (size_t)size);
    if (f)
        fclose(f);
    free(text);
    if (!f) { /* made but never answered (or an ephemeral's leftovers): gone */
        remove_tree(dir);
        return;
    }
    const char *created = jsapi_get_str(entry, "created", "");
    if (!entry || !created || name_check(name, &e) < 0 ||
        !(shown = config_normalize(cJSON_GetObjectItemCaseSensitive(entry, "config"), stream, name, &c, &e)) ||
        consumer_start(api, &c, shown, created, 0, &e) < 0)
        log_error("JetStream API: consumer %s of stream %s (%s) is not opened: %s", name, stream, path,
                  entry ? (shown ? e.desc : "not a consumer configuration") : "not JSON");
    cJSON_Delete(entry);
}

/* ---- answers ---------------------------------------------------------------- */

static void add_seq_info(cJSON *o, const char *key, uint64_t cseq, uint64_t sseq, int64_t last)
{
    char t[64];
    cJSON *s = cJSON_AddObjectToObject(o, key);
    json_add_uint(s, "consumer_seq", cseq);
    json_add_uint(s, "stream_seq", sseq);
    if (last > 0) {
        jsapi_time(last, t);
        cJSON_AddStringToObject(s, "last_active", t);
    }
}

/* The configuration a consumer the entry file declares shows, as
 * nats-server would show it (a new object); metadata.tide_declared says
 * where it is declared. */
static cJSON *declared_config(const consumer_cfg_t *c)
{
    cJSON *o = cJSON_CreateObject(), *meta;
    cJSON_AddStringToObject(o, "durable_name", c->name); /* declared consumers are durable */
    cJSON_AddStringToObject(o, "name", c->name);
    cJSON_AddStringToObject(o, "deliver_policy", deliver_policies[c->deliver_policy]);
    add_nz(o, "opt_start_seq", (int64_t)c->start_seq);
    if (c->start_time) {
        char t[64];
        jsapi_time(c->start_time, t);
        cJSON_AddStringToObject(o, "opt_start_time", t);
    }
    cJSON_AddStringToObject(o, "ack_policy", ack_policies[c->ack_policy]);
    add_nz(o, "ack_wait", (int64_t)(c->ack_wait * 1e9 + 0.5));
    json_add_int(o, "max_deliver", c->max_deliver);
    if (c->nbackoff) {
        cJSON *b = cJSON_AddArrayToObject(o, "backoff");
        for (int i = 0; i < c->nbackoff; i++)
            cJSON_AddItemToArray(b, cJSON_CreateNumber((double)(int64_t)(c->backoff[i] * 1e9 + 0.5)));
    }
    add_str_nz(o, "filter_subject", c->nfilters ? NULL : c->filter);
    if (c->nfilters) {
        cJSON *f = cJSON_AddArrayToObject(o, "filter_subjects");
        for (int i = 0; i < c->nfilters; i++)
            cJSON_AddItemToArray(f, cJSON_CreateString(c->filters[i]));
    }
    cJSON_AddStringToObject(o, "replay_policy", "instant");
    add_nz(o, "max_ack_pending", c->max_ack_pending);
    add_str_nz(o, "deliver_subject", c->deliver);
    add_str_nz(o, "deliver_group", c->queue);
    json_add_int(o, "num_replicas", 1);
    meta = cJSON_AddObjectToObject(o, "metadata");
    cJSON_AddStringToObject(meta, "tide_declared", c->where);
    return o;
}

/* ConsumerInfo of consumer name of stream added to o; -1 when there is none. */
static int add_info(jsapi_t *api, cJSON *o, const char *stream, const char *name)
{
    consumer_info_t in;
    char now[64];
    const cJSON *entry = reg_get(api, stream, name);
    const consumer_cfg_t *c = streams_consumer_find(api->n->streams, stream, name, &in);
    if (!c || (!entry && c->api))
        return -1;
    cJSON_AddStringToObject(o, "stream_name", stream);
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "created", entry ? jsapi_get_str(entry, "created", "") : api->started);
    cJSON_AddItemToObject(o, "config", entry ? json_duplicate(cJSON_GetObjectItemCaseSensitive(entry, "config"))
                                             : declared_config(c));
    add_seq_info(o, "delivered", in.dseq, in.last_sseq, in.last_active_ns);
    add_seq_info(o, "ack_floor", in.floor_dseq, in.floor_sseq, in.last_ack_ns);
    json_add_uint(o, "num_ack_pending", c->ack_policy == ACK_NONE ? 0 : in.in_flight);
    json_add_uint(o, "num_redelivered", in.num_redelivered);
    cJSON_AddNumberToObject(o, "num_waiting", in.num_waiting);
    json_add_uint(o, "num_pending", in.pending);
    if (c->deliver[0] && server_has_interest(api->n->srv, c->deliver, strlen(c->deliver)))
        cJSON_AddBoolToObject(o, "push_bound", 1);
    jsapi_time(slog_now_ns(), now);
    cJSON_AddStringToObject(o, "ts", now);
    return 0;
}

/* The tokens of m's subject after $JS.API.CONSUMER.<verb>. (at most n). */
static int tokens(const char *s, size_t len, char out[][STREAM_NAME_MAX * 4], int n)
{
    int k = 0;
    const char *end = s + len;
    while (s < end && k < n) {
        const char *dot = memchr(s, '.', (size_t)(end - s));
        size_t l = dot ? (size_t)(dot - s) : (size_t)(end - s);
        if (k == n - 1) /* the last takes the rest (a filter subject) */
            l = (size_t)(end - s), dot = NULL;
        snprintf(out[k++], STREAM_NAME_MAX * 4, "%.*s", (int)l, s);
        s = dot ? dot + 1 : end;
    }
    return k;
}

/* ---- the verbs -------------------------------------------------------------- */

/* The create request's stream, name and filter as its subject gives them
 * (rest: after CONSUMER.); the name is "" for an ephemeral.  0 or -1 with
 * e set; *durable_form for DURABLE.CREATE. */
static int create_subject(const char *rest, size_t len, char tok[][STREAM_NAME_MAX * 4], int *durable_form,
                          api_err_t *e)
{
    *durable_form = len > 15 && !memcmp(rest, "DURABLE.CREATE.", 15);
    size_t skip = *durable_form ? 15 : 7; /* "CREATE." */
    int n = tokens(rest + skip, len - skip, tok, 3);
    tok[1][0] = n > 1 ? tok[1][0] : '\0';
    tok[2][0] = n > 2 ? tok[2][0] : '\0';
    if (*durable_form && (n != 2 || !tok[1][0])) {
        jsapi_set_err(e, 400, 10016, "consumer expected to be durable but no durable name set in subject");
        return -1;
    }
    if (!tok[0][0] || strlen(tok[0]) >= STREAM_NAME_MAX) {
        jsapi_set_err(e, 400, 10003, "bad request");
        return -1;
    }
    return tok[1][0] ? name_check(tok[1], e) : 0;
}

/* The name a create request makes (subject, durable_name, name, or a new
 * one for an ephemeral), checked against the request: 0 or -1 with e set. */
static int create_name(const cJSON *rc, const char *subj_name, int durable_form, char *out, api_err_t *e)
{
    const char *durable = jsapi_get_str(rc, "durable_name", ""), *name = jsapi_get_str(rc, "name", "");
    durable = durable ? durable : "";
    name = name ? name : "";
    if (durable_form && !durable[0])
        return jsapi_set_err(e, 400, 10018, "consumer expected to be durable but a durable name was not set"), -1;
    if (subj_name[0] && durable[0] && strcmp(subj_name, durable))
        return jsapi_set_err(e, 400, 10017, "consumer name in subject does not match durable name in request"), -1;
    if (!subj_name[0] && durable[0])
        return jsapi_set_err(e, 400, 10020,
                             "consumer expected to be ephemeral but a durable name was set in request"), -1;
    if (subj_name[0]) { /* (create_subject checked it) */
        snprintf(out, STREAM_NAME_MAX, "%.63s", subj_name);
        return 0;
    }
    if (name[0]) { /* legacy ephemeral with a name: nats-server takes it */
        if (name_check(name, e) < 0)
            return -1;
        snprintf(out, STREAM_NAME_MAX, "%.63s", name);
        return 0;
    }
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char b[8];
    if (RAND_bytes(b, sizeof b) != 1)
        return jsapi_set_err(e, 500, 10012, "cannot make a consumer name"), -1;
    for (int i = 0; i < 8; i++)
        out[i] = alnum[b[i] % (sizeof alnum - 1)];
    out[8] = '\0';
    return 0;
}

/* What may not change on an existing consumer (checkNewConsumerConfig):
 * 0, or -1 with e set. */
static int update_check(const cJSON *old, const cJSON *norm, api_err_t *e)
{
    static const char *const fixed[][2] = {
        {"deliver_policy", "deliver policy"}, {"opt_start_seq", "start sequence"}, {"opt_start_time", "start time"},
        {"ack_policy", "ack policy"},         {"replay_policy", "replay policy"},  {"idle_heartbeat", "heart beats"},
        {"flow_control", "flow control"},     {"max_waiting", "max waiting"},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(old, fixed[i][0]),
                    *b = cJSON_GetObjectItemCaseSensitive(norm, fixed[i][0]);
        if (!cJSON_Compare(a, b, 1) && (a || b)) {
            jsapi_set_err(e, 500, 10012, "%s can not be updated", fixed[i][1]);
            return -1;
        }
    }
    const char *od = jsapi_get_str(old, "deliver_subject", ""), *nd = jsapi_get_str(norm, "deliver_subject", "");
    if (!od[0] != !nd[0]) {
        jsapi_set_err(e, 500, 10012, "can not update %s", od[0] ? "push consumer to pull based"
                                                                 : "pull consumer to push based");
        return -1;
    }
    return 0;
}

/* An existing consumer asked for again: the same is fine, another is an
 * update (refused for action "create").  0 or -1 with e set. */
static int create_existing(jsapi_t *api, const consumer_cfg_t *c, cJSON *norm, const char *action, api_err_t *e)
{
    const cJSON *entry = reg_get(api, c->stream, c->name), *old = cJSON_GetObjectItemCaseSensitive(entry, "config");
    char created[64];
    if (!entry) { /* declared in the entry file */
        const consumer_cfg_t *d = streams_consumer_find(api->n->streams, c->stream, c->name, NULL);
        cJSON_Delete(norm);
        return jsapi_set_err(e, 400, 10013, "consumer name already in use: consumer %s is declared in the entry file "
                             "(%s): change it there", c->name, d ? d->where : "?"), -1;
    }
    if (cJSON_Compare(old, norm, 1)) {
        cJSON_Delete(norm);
        return 0;
    }
    if (!strcmp(action, "create")) {
        cJSON_Delete(norm);
        return jsapi_set_err(e, 400, 10148, "consumer already exists"), -1;
    }
    if (update_check(old, norm, e) < 0 || streams_consumer_change(api->n->streams, c) < 0) {
        cJSON_Delete(norm);
        if (!e->code)
            jsapi_set_err(e, 404, 10014, "consumer not found");
        return -1;
    }
    snprintf(created, sizeof created, "%s", jsapi_get_str(entry, "created", ""));
    cJSON *ne = cJSON_CreateObject();
    cJSON_AddItemToObject(ne, "config", norm);
    cJSON_AddStringToObject(ne, "created", created);
    char dir[4400], k[2 * STREAM_NAME_MAX + 2];
    cons_dir(api, c->stream, c->name, dir, sizeof dir);
    if (!c->ephemeral && saved_write(dir, ne) < 0)
        log_error("consumer %s: its new configuration is in use but not saved", c->name);
    reg_key(c->stream, c->name, k);
    cJSON_ReplaceItemInObjectCaseSensitive(api->cons, k, ne);
    return 0;
}

/* What a workqueue stream asks of a new consumer c (as nats-server's
 * checkConsumerCfg and addConsumerWithAssignment): explicit acks, a filter
 * no other consumer overlaps (none only for the first), deliver all.  0,
 * or -1 with e set. */
static int workqueue_check(jsapi_t *api, const consumer_cfg_t *c, api_err_t *e)
{
    stream_info_t in;
    const stream_cfg_t *sc = streams_stream_info(api->n->streams, c->stream, -1, &in);
    char err[256];
    int code = 0;
    if (!sc || sc->retention != RETENTION_WORKQUEUE)
        return 0;
    if (c->pull && c->ack_policy == ACK_NONE) /* checkConsumerCfg's, first */
        return jsapi_set_err(e, 400, 10084, "consumer in pull mode requires ack policy"), -1;
    if (c->ack_policy != ACK_EXPLICIT)
        return jsapi_set_err(e, 400, 10098, "workqueue stream requires explicit ack"), -1;
    if (!c->filter[0] && !c->nfilters && in.nconsumers > 0)
        return jsapi_set_err(e, 400, 10099, "multiple non-filtered consumers not allowed on workqueue stream"), -1;
    for (int i = 0; i < (c->nfilters ? c->nfilters : 1); i++)
        if (streams_workqueue_conflict(api->n->streams, c->stream, c->nfilters ? c->filters[i] : c->filter, c->name,
                                       &code, err, sizeof err) < 0)
            return jsapi_set_err(e, 400, code, "%s", err), -1;
    if (c->deliver_policy != DELIVER_ALL)
        return jsapi_set_err(e, 400, 10101, "consumer must be deliver all on workqueue stream"), -1;
    return 0;
}

/* CONSUMER.CREATE.<stream>[.<name>[.<filter>]] and DURABLE.CREATE.<stream>.<durable> */
static void verb_create(jsapi_t *api, const proto_msg_t *m, const char *rest, size_t len)
{
    const char *type = "consumer_create_response";
    char tok[3][STREAM_NAME_MAX * 4], name[STREAM_NAME_MAX], now[64];
    int durable_form, bad;
    api_err_t e = {0};
    consumer_cfg_t c;
    cJSON *req = jsapi_request_json(m, &bad, &e), *norm = NULL;
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(req, "config");
    const char *sname = jsapi_get_str(req, "stream_name", ""), *action = jsapi_get_str(req, "action", "");
    if (bad || create_subject(rest, len, tok, &durable_form, &e) < 0)
        goto fail;
    if (!req || !sname || strcmp(sname, tok[0])) {
        jsapi_set_err(&e, 400, 10056, "stream name in subject does not match request");
        goto fail;
    }
    if (create_name(rc, tok[1], durable_form, name, &e) < 0)
        goto fail;
    if (tok[2][0] && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(rc, "filter_subjects"))) {
        jsapi_set_err(&e, 400, 10137, "consumer with multiple subject filters cannot use subject based API");
        goto fail;
    }
    if (tok[2][0] && strcmp(jsapi_get_str(rc, "filter_subject", "") ? jsapi_get_str(rc, "filter_subject", "") : "", tok[2])) {
        jsapi_set_err(&e, 400, 10131, "Consumer create request did not match filtered subject from create subject");
        goto fail;
    }
    if (!streams_stream_info(api->n->streams, tok[0], -1, NULL)) {
        jsapi_set_err(&e, 404, 10059, "stream not found");
        goto fail;
    }
    if (!(norm = config_normalize(rc, tok[0], name, &c, &e)))
        goto fail;
    if (streams_consumer_find(api->n->streams, tok[0], name, NULL)) {
        if (create_existing(api, &c, norm, action ? action : "", &e) < 0)
            goto fail;
    } else if (action && !strcmp(action, "update")) {
        cJSON_Delete(norm);
        jsapi_set_err(&e, 400, 10149, "consumer does not exist");
        goto fail;
    } else if (workqueue_check(api, &c, &e) < 0) {
        cJSON_Delete(norm);
        goto fail;
    } else {
        jsapi_time(slog_now_ns(), now);
        if (consumer_start(api, &c, norm, now, 1, &e) < 0)
            goto fail;
        log_info("consumer %s of stream %s: created through the JetStream API", name, tok[0]);
    }
    cJSON_Delete(req);
    cJSON *o = jsapi_answer(type);
    add_info(api, o, tok[0], name);
    jsapi_reply_obj(api, m, o);
    return;
fail:
    cJSON_Delete(req);
    jsapi_reply_err(api, m, type, &e);
}

/* <stream>.<name> after the verb: 0, or -1 with e set (stream or consumer
 * not found). */
/* True when the entry file declares consumer name of stream. */
static int declared(jsapi_t *api, const char *stream, const char *name)
{
    const consumer_cfg_t *c = streams_consumer_find(api->n->streams, stream, name, NULL);
    return c && !c->api;
}

static int stream_and_name(jsapi_t *api, const char *rest, size_t len, char tok[][STREAM_NAME_MAX * 4],
                           int need_name, api_err_t *e)
{
    int n = tokens(rest, len, tok, 2);
    if (n < 1 + need_name || (need_name && strchr(tok[1], '.'))) {
        jsapi_set_err(e, 400, 10003, "bad request");
        return -1;
    }
    if (!streams_stream_info(api->n->streams, tok[0], -1, NULL)) {
        jsapi_set_err(e, 404, 10059, "stream not found");
        return -1;
    }
    if (need_name && !reg_get(api, tok[0], tok[1]) && !declared(api, tok[0], tok[1])) {
        jsapi_set_err(e, 404, 10014, "consumer not found");
        return -1;
    }
    return 0;
}

static void verb_info(jsapi_t *api, const proto_msg_t *m, const char *rest, size_t len)
{
    char tok[2][STREAM_NAME_MAX * 4];
    api_err_t e = {0};
    if (stream_and_name(api, rest, len, tok, 1, &e) < 0) {
        jsapi_reply_err(api, m, "consumer_info_response", &e);
        return;
    }
    cJSON *o = jsapi_answer("consumer_info_response");
    add_info(api, o, tok[0], tok[1]);
    jsapi_reply_obj(api, m, o);
}

static void verb_delete(jsapi_t *api, const proto_msg_t *m, const char *rest, size_t len)
{
    char tok[2][STREAM_NAME_MAX * 4];
    api_err_t e = {0};
    if (stream_and_name(api, rest, len, tok, 1, &e) < 0 || consumer_forget(api, tok[0], tok[1], &e) < 0) {
        jsapi_reply_err(api, m, "consumer_delete_response", &e);
        return;
    }
    log_info("consumer %s of stream %s: deleted through the JetStream API", tok[1], tok[0]);
    cJSON *o = jsapi_answer("consumer_delete_response");
    cJSON_AddBoolToObject(o, "success", 1);
    jsapi_reply_obj(api, m, o);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* CONSUMER.NAMES (list 0) and CONSUMER.LIST (list 1) of a stream. */
static void verb_names(jsapi_t *api, const proto_msg_t *m, const char *rest, size_t len, int list)
{
    const char *type = list ? "consumer_list_response" : "consumer_names_response";
    char tok[2][STREAM_NAME_MAX * 4];
    api_err_t e = {0};
    int bad, n = 0, limit = list ? LIST_LIMIT : NAMES_LIMIT;
    uint64_t offset = 0;
    cJSON *req = jsapi_request_json(m, &bad, &e);
    if (req)
        json_get_uint_member(req, "offset", &offset);
    cJSON_Delete(req);
    if (bad || stream_and_name(api, rest, len, tok, 0, &e) < 0) {
        jsapi_reply_err(api, m, type, &e);
        return;
    }
    const char *names[CONSUMER_NAMES_MAX];
    const cJSON *it;
    size_t sl = strlen(tok[0]);
    cJSON_ArrayForEach(it, api->cons) {
        if (n < CONSUMER_NAMES_MAX && !strncmp(it->string, tok[0], sl) && it->string[sl] == '/')
            names[n++] = it->string + sl + 1;
    }
    const consumer_cfg_t *dc;
    for (int i = 0; n < CONSUMER_NAMES_MAX && (dc = streams_consumer_info(api->n->streams, tok[0], i, NULL)); i++)
        if (!dc->api)
            names[n++] = dc->name;
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    cJSON *o = jsapi_answer(type), *arr;
    cJSON_AddNumberToObject(o, "total", n);
    cJSON_AddNumberToObject(o, "offset", (double)offset);
    cJSON_AddNumberToObject(o, "limit", limit);
    arr = cJSON_AddArrayToObject(o, "consumers");
    for (int i = (int)(offset < (uint64_t)n ? offset : (uint64_t)n), k = 0; i < n && k < limit; i++, k++) {
        if (!list) {
            cJSON_AddItemToArray(arr, cJSON_CreateString(names[i]));
            continue;
        }
        cJSON *ci = cJSON_CreateObject();
        add_info(api, ci, tok[0], names[i]);
        cJSON_AddItemToArray(arr, ci);
    }
    jsapi_reply_obj(api, m, o);
}

/* A pull request's body: empty (1 message), a number (a batch) or JSON.
 * 0, or -1 with the 400 status text in bad. */
static int pull_request(const proto_msg_t *m, consumer_pull_req_t *r, char *bad, size_t badsz)
{
    size_t i = 0;
    memset(r, 0, sizeof *r);
    r->batch = 1;
    while (i < m->payload_len && strchr(" \t\r\n", m->payload[i]))
        i++;
    if (i == m->payload_len)
        return 0;
    if (m->payload[i] != '{') {
        char num[32];
        snprintf(num, sizeof num, "%.*s", (int)(m->payload_len - i < 31 ? m->payload_len - i : 31), m->payload + i);
        r->batch = atoll(num) > 0 ? atoll(num) : 1;
        return 0;
    }
    cJSON *j = json_parse_owned(m->payload, m->payload_len);
    int rc = -1;
    if (!j || get_i64(j, "batch", 0, &r->batch) < 0 || get_i64(j, "expires", 0, &r->expires) < 0 ||
        get_i64(j, "max_bytes", 0, &r->max_bytes) < 0 || get_i64(j, "idle_heartbeat", 0, &r->heartbeat) < 0) {
        snprintf(bad, badsz, "400 Bad Request - invalid JSON");
        goto done;
    }
    r->no_wait = get_bool(j, "no_wait");
    if (r->heartbeat > 0 && r->heartbeat * 2 > r->expires) {
        snprintf(bad, badsz, "400 Bad Request - heartbeat value too large");
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(j);
    return rc;
}

/* CONSUMER.MSG.NEXT.<stream>.<consumer>: answered with messages and
 * status messages on the request's reply subject, never with JSON. */
static void verb_next(jsapi_t *api, const proto_msg_t *m, const char *rest, size_t len)
{
    char tok[2][STREAM_NAME_MAX * 4], status[128] = "";
    api_err_t e = {0};
    consumer_pull_req_t r;
    if (!m->reply_len)
        return;
    if (stream_and_name(api, rest, len, tok, 1, &e) < 0)
        return; /* nats-server does not answer (the client's request times out) */
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(reg_get(api, tok[0], tok[1]), "config");
    int64_t max_batch, max_expires, max_bytes;
    get_i64(cfg, "max_batch", 0, &max_batch);
    get_i64(cfg, "max_expires", 0, &max_expires);
    get_i64(cfg, "max_bytes", 0, &max_bytes);
    if (pull_request(m, &r, status, sizeof status) < 0) {
    } else if (max_batch > 0 && r.batch > max_batch) {
        snprintf(status, sizeof status, "409 Exceeded MaxRequestBatch of %" PRId64, max_batch);
    } else if (max_expires > 0 && r.expires > max_expires) {
        snprintf(status, sizeof status, "409 Exceeded MaxRequestExpires of %" PRId64 "ms", max_expires / 1000000);
    } else if (max_bytes > 0 && r.max_bytes > max_bytes) {
        snprintf(status, sizeof status, "409 Exceeded MaxRequestMaxBytes of %" PRId64, max_bytes);
    } else if (streams_consumer_pull(api->n->streams, tok[0], tok[1], &r, m->reply, m->reply_len) ==
               STREAMS_EEXIST) {
        snprintf(status, sizeof status, "409 Consumer is push based");
    }
    if (status[0])
        jsapi_status(api, m, status);
}

int jsapi_consumer_request(jsapi_t *api, const proto_msg_t *m, const char *op, size_t oplen)
{
    static const struct {
        const char *verb;
        int kind;
    } verbs[] = {{"CONSUMER.CREATE.", 0}, {"CONSUMER.DURABLE.CREATE.", 0}, {"CONSUMER.INFO.", 1},
                 {"CONSUMER.DELETE.", 2}, {"CONSUMER.NAMES.", 3},          {"CONSUMER.LIST.", 4},
                 {"CONSUMER.MSG.NEXT.", 5}};
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        size_t vl = strlen(verbs[i].verb);
        if (oplen <= vl || memcmp(op, verbs[i].verb, vl))
            continue;
        const char *rest = op + vl;
        size_t len = oplen - vl;
        switch (verbs[i].kind) {
        case 0: verb_create(api, m, op + 9, oplen - 9); break; /* after "CONSUMER." */
        case 1: verb_info(api, m, rest, len); break;
        case 2: verb_delete(api, m, rest, len); break;
        case 3: verb_names(api, m, rest, len, 0); break;
        case 4: verb_names(api, m, rest, len, 1); break;
        default: verb_next(api, m, rest, len); break;
        }
        return 1;
    }
    return 0;
}

/* ---- ephemerals and inactive_threshold -------------------------------------- */

/* Deletes the consumers that have been without a subscriber or a pull
 * request for longer than their inactive_threshold. */
static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    jsapi_t *api = arg;
    char gone[CONSUMER_NAMES_MAX][2 * STREAM_NAME_MAX + 2];
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, api->cons) {
        int64_t thr;
        consumer_info_t in;
        const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(it, "config");
        char stream[STREAM_NAME_MAX];
        const char *slash = strchr(it->string, '/');
        if (get_i64(cfg, "inactive_threshold", 0, &thr) < 0 || thr <= 0 || !slash || n == CONSUMER_NAMES_MAX)
            continue;
        snprintf(stream, sizeof stream, "%.*s", (int)(slash - it->string), it->string);
        if (streams_consumer_find(api->n->streams, stream, slash + 1, &in) && in.idle_ns > thr)
            snprintf(gone[n++], sizeof gone[0], "%s", it->string);
    }
    for (int i = 0; i < n; i++) {
        api_err_t e;
        char *slash = strchr(gone[i], '/');
        *slash = '\0';
        if (consumer_forget(api, gone[i], slash + 1, &e) == 0)
            log_info("consumer %s of stream %s: inactive for longer than its inactive_threshold; deleted", slash + 1,
                     gone[i]);
    }
}

int jsapi_consumers_start(jsapi_t *api)
{
    char top[4400];
    DIR *d, *sd;
    struct dirent *de, *ce;
    if (!(api->cons = cJSON_CreateObject()))
        return -1;
    snprintf(top, sizeof top, "%s/jsapi/consumers", streams_dir(api->n->streams));
    if ((d = opendir(top))) {
        while ((de = readdir(d))) {
            char sdir[4700];
            if (de->d_name[0] == '.')
                continue;
            snprintf(sdir, sizeof sdir, "%s/%s", top, de->d_name);
            if (!streams_stream_info(api->n->streams, de->d_name, -1, NULL)) {
                log_warn("JetStream API: %s: no stream %s; its consumers are not opened", sdir, de->d_name);
                continue;
            }
            if (!(sd = opendir(sdir)))
                continue;
            while ((ce = readdir(sd)))
                if (ce->d_name[0] != '.')
                    saved_open(api, de->d_name, ce->d_name);
            closedir(sd);
        }
        closedir(d);
    }
    struct timeval tv = {0, REAP_MS * 1000};
    if (!(api->reaper = event_new(server_base(api->n->srv), -1, EV_PERSIST, on_reap, api)) ||
        event_add(api->reaper, &tv) < 0)
        return -1;
    return 0;
}

void jsapi_consumers_stream_gone(jsapi_t *api, const char *stream)
{
    char dir[4400];
    size_t sl = strlen(stream);
    cJSON *it = api->cons ? api->cons->child : NULL;
    while (it) {
        cJSON *next = it->next;
        if (!strncmp(it->string, stream, sl) && it->string[sl] == '/')
            cJSON_Delete(cJSON_DetachItemViaPointer(api->cons, it));
        it = next;
    }
    cons_dir(api, stream, NULL, dir, sizeof dir);
    remove_tree(dir);
}

void jsapi_consumers_stop(jsapi_t *api)
{
    if (api->reaper)
        event_free(api->reaper);
    api->reaper = NULL;
    cJSON_Delete(api->cons);
    api->cons = NULL;
}
