/* jsapi_stream.c - stream configurations as the JetStream API speaks them,
 * their saved copies, and reading stored messages (see jsapi_internal.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "json.h"
#include "json_int.h"
#include "jsapi_internal.h"
#include "log.h"
#include "subject.h"
#include "util.h"
#include "vfs.h"

#define NS 1000000000LL
#define DEFAULT_DUPLICATE_WINDOW (120 * NS) /* nats-server's, and tide's dedup_window */
#define SEGMENT_SIZE (64u << 20)

/* ---- names and subjects ----------------------------------------------------- */

int jsapi_name_check(const char *name, size_t len, api_err_t *e)
{
    if (len == 0 || strpbrk(name, " \t\r\n\f.*>") || strlen(name) != len) {
        jsapi_set_err(e, 500, 10052, "stream name is required and can not contain '.', '*', '>'");
        return -1;
    }
    if (strpbrk(name, "/\\")) {
        jsapi_set_err(e, 400, 10128, "stream name can not contain path separators");
        return -1;
    }
    if (len >= STREAM_NAME_MAX) {
        jsapi_set_err(e, 500, 10052, "stream name is too long, maximum allowed is %d", STREAM_NAME_MAX - 1);
        return -1;
    }
    return 0;
}

/* ---- configurations --------------------------------------------------------- */

/* req's integer member key into *out (dflt when absent or null); -1 when it
 * is there and not a whole number. */
static int get_int(const cJSON *req, const char *key, int64_t dflt, int64_t *out)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(req, key);
    uint64_t u;
    *out = dflt;
    if (!n || cJSON_IsNull(n))
        return 0;
    if (json_get_uint(n, &u) == 0 && u <= INT64_MAX) {
        *out = (int64_t)u;
        return 0;
    }
    if ((n->type & 0xFF) == cJSON_Raw && n->valuestring && n->valuestring[0] == '-') {
        char *end;
        errno = 0;
        long long v = strtoll(n->valuestring, &end, 10);
        if (!*end && !errno) {
            *out = v;
            return 0;
        }
    } else if (cJSON_IsNumber(n) && n->valuedouble < 0 && n->valuedouble == (double)(int64_t)n->valuedouble) {
        *out = (int64_t)n->valuedouble;
        return 0;
    }
    return -1;
}

/* True when req's member key is there with other than its zero value. */
static int is_set(const cJSON *req, const char *key)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(req, key);
    if (!n || cJSON_IsNull(n) || cJSON_IsFalse(n))
        return 0;
    if (cJSON_IsString(n))
        return n->valuestring[0] != '\0';
    if (cJSON_IsObject(n) || cJSON_IsArray(n))
        return cJSON_GetArraySize(n) > 0;
    uint64_t u;
    return !(json_get_uint(n, &u) == 0 && u == 0);
}

/* Refuses what tide does not implement: 0, or -1 with e set. */
static int refuse_unsupported(const cJSON *req, api_err_t *e)
{
    static const char *const fields[] = {"mirror", "sources", "placement", "republish", "subject_transform",
                                         "template_owner", "no_ack", "mirror_direct",
                                         "discard_new_per_subject", "first_seq", NULL};
    for (int i = 0; fields[i]; i++)
        if (is_set(req, fields[i])) {
            jsapi_set_err(e, 500, 10052, "%s is not supported by tide", fields[i]);
            return -1;
        }
    const char *comp = jsapi_get_str(req, "compression", "none"), *ret = jsapi_get_str(req, "retention", "limits"),
               *sto = jsapi_get_str(req, "storage", "file");
    if (!comp || (comp[0] && strcmp(comp, "none"))) {
        jsapi_set_err(e, 500, 10052, "compression is not supported by tide");
        return -1;
    }
    if (!ret || (ret[0] && strcmp(ret, "limits") && strcmp(ret, "interest") && strcmp(ret, "workqueue"))) {
        jsapi_set_err(e, 400, 10025, "invalid JSON: retention must be \"limits\", \"interest\" or \"workqueue\"");
        return -1;
    }
    if (!sto || (sto[0] && strcmp(sto, "file") && strcmp(sto, "memory"))) {
        jsapi_set_err(e, 400, 10025, "invalid JSON: storage must be \"file\" or \"memory\"");
        return -1;
    }
    return 0;
}

/* "subjects": the request's (checked), or the stream's name alone. */
static int norm_subjects(const cJSON *req, const char *name, cJSON *o, api_err_t *e)
{
    const cJSON *subs = cJSON_GetObjectItemCaseSensitive(req, "subjects"), *s;
    cJSON *out = cJSON_AddArrayToObject(o, "subjects");
    if (!subs || cJSON_IsNull(subs) || (cJSON_IsArray(subs) && !cJSON_GetArraySize(subs))) {
        cJSON_AddItemToArray(out, cJSON_CreateString(name));
        return 0;
    }
    if (!cJSON_IsArray(subs) || cJSON_GetArraySize(subs) > STREAM_SUBJECTS_MAX) {
        jsapi_set_err(e, 500, 10052, "subjects must be a list of at most %d subjects", STREAM_SUBJECTS_MAX);
        return -1;
    }
    cJSON_ArrayForEach(s, subs) {
        if (!cJSON_IsString(s) || !subject_valid_pattern(s->valuestring, strlen(s->valuestring))) {
            jsapi_set_err(e, 500, 10052, "invalid subject");
            return -1;
        }
        if (!strncmp(s->valuestring, "$JS.", 4) || !strncmp(s->valuestring, "$TIDE.", 6) ||
            !strcmp(s->valuestring, ">")) {
            jsapi_set_err(e, 500, 10052, "subject %s overlaps with tide's own subjects", s->valuestring);
            return -1;
        }
        for (const cJSON *t = subs->child; t != s; t = t->next)
            if (!strcmp(t->valuestring, s->valuestring)) {
                jsapi_set_err(e, 500, 10052, "duplicate subjects detected");
                return -1;
            }
        cJSON_AddItemToArray(out, cJSON_CreateString(s->valuestring));
    }
    return 0;
}

/* The limits, -1 for none as nats-server says it. */
static int norm_limits(const cJSON *req, cJSON *o, api_err_t *e)
{
    static const char *const keys[] = {"max_consumers", "max_msgs", "max_bytes", "max_age", "max_msgs_per_subject",
                                       "max_msg_size", NULL};
    int64_t v[6];
    for (int i = 0; keys[i]; i++) {
        if (get_int(req, keys[i], 0, &v[i]) < 0) {
            jsapi_set_err(e, 400, 10025, "invalid JSON: %s is not a whole number", keys[i]);
            return -1;
        }
        if (!strcmp(keys[i], "max_age") && v[i] < 0) {
            jsapi_set_err(e, 500, 10052, "max age needs to be >= 0");
            return -1;
        }
        if (v[i] <= 0 && strcmp(keys[i], "max_age"))
            v[i] = -1;
    }
    const char *ret = jsapi_get_str(req, "retention", "limits");
    cJSON_AddStringToObject(o, "retention", ret && ret[0] ? ret : "limits");
    for (int i = 0; keys[i]; i++)
        json_add_int(o, keys[i], v[i]);
    return 0;
}

/* discard, storage, replicas, duplicate window and the flags. */
static int norm_policies(const cJSON *req, cJSON *o, api_err_t *e)
{
    const char *discard = jsapi_get_str(req, "discard", "old");
    int64_t replicas, dup, max_age;
    if (!discard || (strcmp(discard, "old") && strcmp(discard, "new"))) {
        jsapi_set_err(e, 400, 10025, "invalid JSON: discard must be \"old\" or \"new\"");
        return -1;
    }
    if (get_int(req, "num_replicas", 1, &replicas) < 0 || replicas < 0) {
        jsapi_set_err(e, 400, 10133, "replicas count cannot be negative");
        return -1;
    }
    if (replicas > 1) {
        jsapi_set_err(e, 500, 10074, "replicas > 1 not supported in non-clustered mode");
        return -1;
    }
    get_int(o, "max_age", 0, &max_age);
    if (get_int(req, "duplicate_window", 0, &dup) < 0 || dup < 0) {
        jsapi_set_err(e, 500, 10052, "duplicates window must be >= 0");
        return -1;
    }
    if (dup == 0)
        dup = max_age > 0 && max_age < DEFAULT_DUPLICATE_WINDOW ? max_age : DEFAULT_DUPLICATE_WINDOW;
    if (max_age > 0 && dup > max_age) {
        jsapi_set_err(e, 500, 10052, "duplicates window can not be larger then max age");
        return -1;
    }
    const char *sto = jsapi_get_str(req, "storage", "file");
    cJSON_AddStringToObject(o, "discard", discard);
    cJSON_AddStringToObject(o, "storage", sto && !strcmp(sto, "memory") ? "memory" : "file");
    cJSON_AddNumberToObject(o, "num_replicas", 1);
    json_add_int(o, "duplicate_window", dup);
    cJSON_AddStringToObject(o, "compression", "none");
    static const char *const flags[] = {"allow_direct", "mirror_direct", "sealed", "deny_delete", "deny_purge",
                                        "allow_rollup_hdrs", NULL};
    for (int i = 0; flags[i]; i++)
        cJSON_AddBoolToObject(o, flags[i], cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, flags[i])));
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "deny_purge")) &&
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "allow_rollup_hdrs"))) {
        jsapi_set_err(e, 500, 10052, "roll-ups require the purge permission");
        return -1;
    }
    cJSON_AddObjectToObject(o, "consumer_limits");
    return 0;
}

/* A sealed stream keeps what it holds: no max_age, discard "new", no
 * deletes, purges or roll-ups (nats-server's adjustments). */
static void norm_sealed(cJSON *o)
{
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "sealed")))
        return;
    cJSON_ReplaceItemInObjectCaseSensitive(o, "max_age", cJSON_CreateNumber(0));
    cJSON_ReplaceItemInObjectCaseSensitive(o, "discard", cJSON_CreateString("new"));
    cJSON_ReplaceItemInObjectCaseSensitive(o, "deny_delete", cJSON_CreateTrue());
    cJSON_ReplaceItemInObjectCaseSensitive(o, "deny_purge", cJSON_CreateTrue());
    cJSON_ReplaceItemInObjectCaseSensitive(o, "allow_rollup_hdrs", cJSON_CreateFalse());
}

cJSON *jsapi_config_normalize(const cJSON *req, const char *name, api_err_t *e)
{
    e->code = 0;
    const char *given = jsapi_get_str(req, "name", "");
    if (!given || strcmp(given, name)) {
        jsapi_set_err(e, 400, 10056, "stream name in subject does not match request");
        return NULL;
    }
    const char *desc = jsapi_get_str(req, "description", "");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(req, "metadata");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    if (desc && desc[0])
        cJSON_AddStringToObject(o, "description", desc);
    if (refuse_unsupported(req, e) < 0 || norm_subjects(req, name, o, e) < 0 || norm_limits(req, o, e) < 0 ||
        norm_policies(req, o, e) < 0) {
        cJSON_Delete(o);
        return NULL;
    }
    norm_sealed(o);
    if (cJSON_IsObject(meta) && cJSON_GetArraySize(meta))
        cJSON_AddItemToObject(o, "metadata", json_duplicate(meta));
    return o;
}

cJSON *jsapi_config_from_stream(const stream_cfg_t *c)
{
    cJSON *o = cJSON_CreateObject(), *subs;
    cJSON_AddStringToObject(o, "name", c->name);
    subs = cJSON_AddArrayToObject(o, "subjects");
    for (int i = 0; i < c->nsubjects; i++)
        cJSON_AddItemToArray(subs, cJSON_CreateString(c->subjects[i]));
    static const char *const retentions[] = {"limits", "interest", "workqueue"};
    cJSON_AddStringToObject(o, "retention", retentions[c->retention]);
    json_add_int(o, "max_consumers", -1);
    json_add_int(o, "max_msgs", c->o.max_msgs ? (int64_t)c->o.max_msgs : -1);
    json_add_int(o, "max_bytes", c->o.max_bytes ? (int64_t)c->o.max_bytes : -1);
    json_add_int(o, "max_age", (int64_t)(c->o.max_age * 1e9));
    json_add_int(o, "max_msgs_per_subject", c->max_msgs_per_subject ? (int64_t)c->max_msgs_per_subject : -1);
    json_add_int(o, "max_msg_size", c->max_msg_size ? (int64_t)c->max_msg_size : -1);
    cJSON_AddStringToObject(o, "discard", c->discard_new ? "new" : "old");
    cJSON_AddStringToObject(o, "storage", c->memory ? "memory" : "file");
    cJSON_AddNumberToObject(o, "num_replicas", 1);
    json_add_int(o, "duplicate_window", (int64_t)(c->o.dedup_window * 1e9));
    cJSON_AddStringToObject(o, "compression", "none");
    static const char *const flags[] = {"allow_direct", "mirror_direct", "sealed", "deny_delete", "deny_purge",
                                        "allow_rollup_hdrs", NULL};
    for (int i = 0; flags[i]; i++)
        cJSON_AddBoolToObject(o, flags[i], (!strcmp(flags[i], "allow_rollup_hdrs") && c->allow_rollup) ||
                                               (!strcmp(flags[i], "sealed") && c->sealed));
    cJSON_AddObjectToObject(o, "consumer_limits");
    if (c->where[0]) /* where the entry file declares it: the API does not change it */
        cJSON_AddItemToObject(o, "metadata", cJSON_CreateObject()),
            cJSON_AddStringToObject(cJSON_GetObjectItemCaseSensitive(o, "metadata"), "tide_declared", c->where);
    return o;
}

/* The stream_cfg_t of a normalized configuration (subjects malloc'd:
 * stream_cfg_free). */
static void config_to_stream(const cJSON *norm, stream_cfg_t *c)
{
    int64_t v;
    const cJSON *s;
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", jsapi_get_str(norm, "name", ""));
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(norm, "subjects"))
        if (c->nsubjects < STREAM_SUBJECTS_MAX && (c->subjects[c->nsubjects] = strdup(s->valuestring)))
            c->nsubjects++;
    c->o.segment_size = SEGMENT_SIZE;
    c->o.fsync = FSYNC_ALWAYS;
    c->o.sync_interval = 1;
    c->o.max_msgs = get_int(norm, "max_msgs", -1, &v) == 0 && v > 0 ? (uint64_t)v : 0;
    c->o.max_bytes = get_int(norm, "max_bytes", -1, &v) == 0 && v > 0 ? (uint64_t)v : 0;
    c->o.max_age = get_int(norm, "max_age", 0, &v) == 0 && v > 0 ? (double)v / 1e9 : 0;
    c->o.dedup_window = get_int(norm, "duplicate_window", 0, &v) == 0 && v > 0 ? (double)v / 1e9 : 0;
    c->max_msg_size = get_int(norm, "max_msg_size", -1, &v) == 0 && v > 0 ? (uint64_t)v : 0;
    c->discard_new = !strcmp(jsapi_get_str(norm, "discard", "old"), "new");
    c->max_msgs_per_subject = get_int(norm, "max_msgs_per_subject", -1, &v) == 0 && v > 0 ? (uint64_t)v : 0;
    c->allow_rollup = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(norm, "allow_rollup_hdrs"));
    c->sealed = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(norm, "sealed"));
    c->memory = !strcmp(jsapi_get_str(norm, "storage", "file"), "memory");
    const char *ret = jsapi_get_str(norm, "retention", "limits");
    c->retention = !strcmp(ret, "interest") ? RETENTION_INTEREST : !strcmp(ret, "workqueue") ? RETENTION_WORKQUEUE
                                                                                              : RETENTION_LIMITS;
    /* metadata.tide_fsync: the declared streams' fsync policy ("interval":
     * acked once written, synced every second, as nats-server does). */
    const char *fs = jsapi_get_str(cJSON_GetObjectItemCaseSensitive(norm, "metadata"), "tide_fsync", "always");
    if (fs && !strcmp(fs, "interval"))
        c->o.fsync = FSYNC_INTERVAL;
    else if (fs && !strcmp(fs, "never"))
        c->o.fsync = FSYNC_NEVER;
    if (c->memory)
        c->o.fsync = FSYNC_NEVER;
    c->api = 1;
}

/* ---- saved configurations --------------------------------------------------- */

/* Writes {"config","created"} of name to <dir>/<name>.json durably (a
 * temporary file synced, renamed, the directory synced).  0 or -1. */
static int saved_write(jsapi_t *api, const char *name, const cJSON *entry)
{
    char path[4600], tmp[4700];
    size_t len = 0;
    char *text = json_print(entry, &len);
    int fd = -1, rc = -1;
    snprintf(path, sizeof path, "%s/%s.json", api->dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!text || util_mkdirs(api->dir) < 0)
        goto fail;
    if ((fd = vfs_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
        goto fail;
    if (vfs_write(fd, text, len) != (ssize_t)len || vfs_sync(fd) != 0)
        goto fail;
    vfs_close(fd);
    fd = -1;
    if (vfs_rename(tmp, path) != 0 || vfs_sync_dir(api->dir) != 0)
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

int jsapi_saved_remove(jsapi_t *api, const char *name)
{
    char path[4600];
    snprintf(path, sizeof path, "%s/%s.json", api->dir, name);
    if (vfs_unlink(path) != 0 && errno != ENOENT)
        return -1;
    return vfs_sync_dir(api->dir) == 0 || errno == ENOENT ? 0 : -1;
}

/* The error for a refusal of streams_add / streams_change. */
static void refusal(int rc, int update, const char *err, api_err_t *e)
{
    if (rc == STREAMS_EOVERLAP)
        jsapi_set_err(e, 400, 10065, "subjects overlap with an existing stream");
    else if (rc == STREAMS_EEXIST)
        jsapi_set_err(e, 400, 10058, "stream name already in use with a different configuration");
    else if (rc == STREAMS_EFULL)
        jsapi_set_err(e, 400, 10027, "maximum number of streams reached");
    else if (rc == STREAMS_ENOENT)
        jsapi_set_err(e, 404, 10059, "stream not found");
    else
        jsapi_set_err(e, 500, update ? 10069 : 10049, "%s", err);
}

/* Update may not take back deny_delete / deny_purge / sealed (as
 * nats-server). */
static int update_allowed(const cJSON *old, const cJSON *norm, api_err_t *e)
{
    if (strcmp(jsapi_get_str(old, "storage", "file"), jsapi_get_str(norm, "storage", "file"))) {
        jsapi_set_err(e, 500, 10052, "stream configuration update can not change storage type");
        return 0;
    }
    const char *was = jsapi_get_str(old, "retention", "limits"), *now = jsapi_get_str(norm, "retention", "limits");
    if (strcmp(was, now) && (!strcmp(was, "workqueue") || !strcmp(now, "workqueue"))) {
        jsapi_set_err(e, 500, 10052, "stream configuration update can not change retention policy to/from workqueue");
        return 0;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(old, "deny_delete")) &&
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(norm, "deny_delete"))) {
        jsapi_set_err(e, 500, 10052, "stream configuration update can not cancel deny message deletes");
        return 0;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(old, "deny_purge")) &&
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(norm, "deny_purge"))) {
        jsapi_set_err(e, 500, 10052, "stream configuration update can not cancel deny purge");
        return 0;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(old, "sealed")) &&
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(norm, "sealed"))) {
        jsapi_set_err(e, 500, 10052, "stream configuration update can not unseal a sealed stream");
        return 0;
    }
    return 1;
}

void jsapi_stream_apply(jsapi_t *api, const char *name, const cJSON *norm, int update, api_err_t *e)
{
    char err[512], now[64];
    stream_cfg_t c;
    const stream_cfg_t *cur = streams_stream_info(api->n->streams, name, -1, NULL);
    cJSON *old = cJSON_GetObjectItemCaseSensitive(api->made, name), *entry = NULL;
    const cJSON *old_cfg = cJSON_GetObjectItemCaseSensitive(old, "config");
    e->code = 0;
    if (!update && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(norm, "sealed"))) {
        jsapi_set_err(e, 500, 10052, "stream configuration for create can not be sealed");
        return;
    }
    if (!update && cur) { /* the same again is fine; another is not */
        cJSON *have = cur->api && old_cfg ? json_duplicate(old_cfg) : jsapi_config_from_stream(cur);
        if (!cur->api) /* where it is declared is not part of what a request says */
            cJSON_DeleteItemFromObjectCaseSensitive(have, "metadata");
        if (!cJSON_Compare(have, norm, 1))
            jsapi_set_err(e, 400, 10058, "stream name already in use with a different configuration");
        cJSON_Delete(have);
        return;
    }
    if (update && cur && cur->api && old_cfg && !update_allowed(old_cfg, norm, e))
        return;
    jsapi_time(slog_now_ns(), now);
    const cJSON *created = cJSON_GetObjectItemCaseSensitive(old, "created");
    entry = cJSON_CreateObject();
    cJSON_AddItemToObject(entry, "config", json_duplicate(norm));
    cJSON_AddStringToObject(entry, "created", update && cJSON_IsString(created) ? created->valuestring : now);
    /* A memory stream is gone at a restart, its configuration too (as
     * nats-server's, which keeps no meta file for one). */
    int save = strcmp(jsapi_get_str(norm, "storage", "file"), "memory") != 0;
    /* A new stream's configuration is saved before its files are made: a
     * process killed in between leaves a configuration that the next
     * start opens (making the files then), never files without one. */
    if (!update && save && saved_write(api, name, entry) < 0) {
        jsapi_saved_remove(api, name);
        jsapi_set_err(e, 500, 10049, "cannot save the configuration of stream %s", name);
        goto fail;
    }
    config_to_stream(norm, &c);
    int rc = update ? streams_change(api->n->streams, &c, err, sizeof err)
                    : streams_add(api->n->streams, &c, err, sizeof err);
    stream_cfg_free(&c);
    if (rc < 0) {
        if (!update && save)
            jsapi_saved_remove(api, name);
        refusal(rc, update, err, e);
        goto fail;
    }
    if (update && save && saved_write(api, name, entry) < 0) {
        jsapi_set_err(e, 500, 10069, "cannot save the configuration of stream %s", name);
        goto fail;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(api->made, name);
    cJSON_AddItemToObject(api->made, name, entry);
    log_info("stream %s: %s through the JetStream API", name, update ? "updated" : "created");
    return;
fail:
    cJSON_Delete(entry);
}

/* Reads and opens one saved configuration (file name.json). */
static void saved_open(jsapi_t *api, const char *file)
{
    char path[4700], name[STREAM_NAME_MAX], err[512];
    size_t nl = strlen(file) - 5;
    api_err_t e;
    cJSON *entry = NULL, *norm = NULL;
    char *text = NULL;
    snprintf(path, sizeof path, "%s/%s", api->dir, file);
    snprintf(name, sizeof name, "%.*s", (int)nl, file);
    FILE *f = fopen(path, "rb");
    long size = -1;
    if (f && fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)size + 1)) && fread(text, 1, (size_t)size, f) == (size_t)size)
        entry = json_parse_owned(text, (size_t)size);
    if (f)
        fclose(f);
    free(text);
    if (jsapi_name_check(name, nl, &e) < 0 || !entry ||
        !(norm = jsapi_config_normalize(cJSON_GetObjectItemCaseSensitive(entry, "config"), name, &e))) {
        log_error("JetStream API: %s is not a stream configuration; stream %s is not opened", path, name);
        goto done;
    }
    stream_cfg_t c;
    config_to_stream(norm, &c);
    int rc = streams_add(api->n->streams, &c, err, sizeof err);
    stream_cfg_free(&c);
    if (rc < 0) {
        log_warn("JetStream API: stream %s (%s) is not opened: %s", name, path, err);
        goto done;
    }
    cJSON_ReplaceItemInObjectCaseSensitive(entry, "config", norm);
    norm = NULL;
    cJSON_AddItemToObject(api->made, name, entry);
    entry = NULL;
done:
    cJSON_Delete(norm);
    cJSON_Delete(entry);
}

int jsapi_saved_load(jsapi_t *api)
{
    DIR *d = opendir(api->dir);
    struct dirent *de;
    if (!d)
        return errno == ENOENT ? 0 : -1;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l > 5 && !strcmp(de->d_name + l - 5, ".json"))
            saved_open(api, de->d_name);
    }
    closedir(d);
    return 0;
}

/* ---- stored messages -------------------------------------------------------- */

/* base64 of n bytes, malloc'd, or NULL. */
static char *base64(const char *p, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)p, (int)n);
    return out;
}

/* The newest sequence among the subjects a wildcard matches. */
typedef struct {
    const char *pattern;
    size_t len;
    uint64_t seq;
} last_match_t;

static void last_match_each(void *ctx, const char *subject, size_t len, uint64_t seq)
{
    last_match_t *lm = ctx;
    if (seq > lm->seq && subject_matches(lm->pattern, lm->len, subject, len))
        lm->seq = seq;
}

/* The last sequence stored in stream name for subj, which may hold
 * wildcards (then the newest of the subjects it matches, as nats-server's
 * last_by_subj: the object store lists its objects this way); 0 when
 * none. */
static uint64_t subject_last(jsapi_t *api, const char *name, const char *subj)
{
    size_t len = strlen(subj), plen = 0;
    if (subject_valid_literal(subj, len))
        return streams_subject_last(api->n->streams, name, subj, len);
    while (plen < len && subj[plen] != '*' && subj[plen] != '>')
        plen++;
    last_match_t lm = {subj, len, 0};
    if (streams_subjects_each(api->n->streams, name, subj, plen, last_match_each, &lm) < 0)
        return 0;
    return lm.seq;
}

/* The sequence a MSG.GET / DIRECT.GET request asks for (0 with e set when
 * it asks for none, or for no stored message). */
static uint64_t wanted_seq(jsapi_t *api, const proto_msg_t *m, const char *name, const char *last_subj,
                           api_err_t *e)
{
    cJSON *j = last_subj ? NULL : json_parse_owned(m->payload, m->payload_len);
    uint64_t seq = 0;
    const char *subj = last_subj;
    if (!last_subj && !j) {
        jsapi_set_err(e, 400, 10025, "invalid JSON");
        return 0;
    }
    if (j) {
        const cJSON *ls = cJSON_GetObjectItemCaseSensitive(j, "last_by_subj");
        json_get_uint_member(j, "seq", &seq);
        subj = cJSON_IsString(ls) && ls->valuestring[0] ? ls->valuestring : NULL;
    }
    if ((seq && subj) || (!seq && !subj))
        jsapi_set_err(e, 400, 10003, "bad request");
    else if (subj && !(seq = subject_last(api, name, subj)))
        jsapi_set_err(e, 404, 10037, "no message found");
    cJSON_Delete(j);
    return e->code ? 0 : seq;
}

/* DIRECT.GET's answer: the message with Nats-Stream, Nats-Subject,
 * Nats-Sequence and Nats-Time-Stamp before its own headers. */
static void direct_reply(jsapi_t *api, const proto_msg_t *m, const char *name, const slog_rec_t *r)
{
    char t[64], *hdr = NULL;
    const char *own = "\r\n";
    size_t ownlen = 2;
    if (r->hdr_len > 10 && !memcmp(r->hdr, "NATS/1.0", 8)) { /* its header lines, without the status line */
        const char *eol = memchr(r->hdr, '\n', r->hdr_len);
        if (eol) {
            own = eol + 1;
            ownlen = r->hdr_len - (size_t)(own - r->hdr);
        }
    }
    jsapi_time(r->ts, t);
    size_t cap = 200 + strlen(name) + r->subject_len + ownlen;
    if (!(hdr = malloc(cap)))
        return;
    int n = snprintf(hdr, cap, "NATS/1.0\r\nNats-Stream: %s\r\nNats-Subject: %.*s\r\nNats-Sequence: %" PRIu64
                     "\r\nNats-Time-Stamp: %s\r\n", name, (int)r->subject_len, r->subject, r->seq, t);
    memcpy(hdr + n, own, ownlen);
    proto_msg_t out = {0};
    out.subject = m->reply;
    out.subject_len = m->reply_len;
    out.hdr = hdr;
    out.hdr_len = (size_t)n + ownlen;
    out.payload = r->payload;
    out.payload_len = r->payload_len;
    server_route_flags(api->n->srv, NULL, &out, ROUTE_NO_CAPTURE);
    free(hdr);
}

/* A DIRECT.GET refusal: a status message, as nats-server answers. */
static void direct_status(jsapi_t *api, const proto_msg_t *m, const char *status)
{
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "NATS/1.0 %s\r\n\r\n", status);
    proto_msg_t out = {0};
    out.subject = m->reply;
    out.subject_len = m->reply_len;
    out.hdr = hdr;
    out.hdr_len = (size_t)n;
    out.payload = "";
    server_route_flags(api->n->srv, NULL, &out, ROUTE_NO_CAPTURE);
}

/* STREAM.MSG.GET's answer. */
static void get_reply(jsapi_t *api, const proto_msg_t *m, const slog_rec_t *r)
{
    char t[64];
    char *data = r->payload_len ? base64(r->payload, r->payload_len) : NULL;
    char *hdrs = r->hdr_len ? base64(r->hdr, r->hdr_len) : NULL;
    cJSON *o = cJSON_CreateObject(), *msg = cJSON_AddObjectToObject(o, "message");
    cJSON_AddStringToObject(o, "type", "io.nats.jetstream.api.v1.stream_msg_get_response");
    cJSON_AddItemToObject(msg, "subject", json_new_string(r->subject, r->subject_len));
    json_add_uint(msg, "seq", r->seq);
    if (hdrs)
        cJSON_AddStringToObject(msg, "hdrs", hdrs);
    if (data)
        cJSON_AddStringToObject(msg, "data", data);
    jsapi_time(r->ts, t);
    cJSON_AddStringToObject(msg, "time", t);
    size_t len = 0;
    char *p = json_print(o, &len);
    if (p)
        server_reply(api->n->srv, m, p, len);
    free(p);
    cJSON_Delete(o);
    free(data);
    free(hdrs);
}

void jsapi_msg_get(jsapi_t *api, const proto_msg_t *m, const char *name, int direct, api_err_t *e)
{
    const char *tail = strchr(name, '.'); /* DIRECT.GET.<stream>.<subject>: the last message on it */
    char sname[STREAM_NAME_MAX];
    snprintf(sname, sizeof sname, "%.*s", tail ? (int)(tail - name) : (int)strlen(name), name);
    const cJSON *made = cJSON_GetObjectItemCaseSensitive(api->made, sname);
    e->code = 0;
    const cJSON *allow = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(made, "config"),
                                                          "allow_direct");
    if (!streams_stream_info(api->n->streams, sname, -1, NULL) && !direct) {
        jsapi_set_err(e, 404, 10059, "stream not found");
        return;
    }
    if (direct && !cJSON_IsTrue(allow)) { /* nats-server has no responder there */
        direct_status(api, m, "503");
        return;
    }
    slog_rec_t r;
    uint64_t seq = wanted_seq(api, m, sname, tail ? tail + 1 : NULL, e);
    int found = seq ? streams_read(api->n->streams, sname, seq, &r, &api->rbuf, &api->rcap) : 0;
    if (seq && found <= 0)
        jsapi_set_err(e, 404, 10037, "no message found");
    if (direct && e->code) { /* statuses, as nats-server's direct get */
        direct_status(api, m, e->code == 404 ? "404 Message Not Found" : "408 Bad Request");
        e->code = 0;
        return;
    }
    if (!e->code)
        direct ? direct_reply(api, m, sname, &r) : get_reply(api, m, &r);
}

/* ---- KV buckets the scripts make -------------------------------------------- */

int jsapi_bucket_make(void *ctx, const char *bucket, char *err, size_t errsz)
{
    jsapi_t *api = ctx;
    char name[STREAM_NAME_MAX], subj[STREAM_NAME_MAX + 8];
    api_err_t e = {0};
    snprintf(name, sizeof name, "KV_%s", bucket);
    snprintf(subj, sizeof subj, "$KV.%s.>", bucket);
    cJSON *req = cJSON_CreateObject(), *norm = NULL;
    cJSON_AddStringToObject(req, "name", name);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(req, "subjects"), cJSON_CreateString(subj));
    cJSON_AddNumberToObject(req, "max_msgs_per_subject", 1);
    cJSON_AddStringToObject(req, "discard", "new");
    cJSON_AddBoolToObject(req, "allow_direct", 1);
    cJSON_AddBoolToObject(req, "allow_rollup_hdrs", 1);
    if ((norm = jsapi_config_normalize(req, name, &e)))
        jsapi_stream_apply(api, name, norm, 0, &e);
    if (e.code)
        snprintf(err, errsz, "%s", e.desc);
    cJSON_Delete(norm);
    cJSON_Delete(req);
    return e.code ? -1 : 0;
}
