/* jsapi.c - the JetStream API over tide's streams; see jsapi.h and
 * docs/jetstream.md.  The shapes and error codes are nats-server 2.10's
 * (server/jetstream_api.go, server/stream.go, server/errors.json). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dirent.h>

#include "json.h"
#include "json_int.h"
#include "jsapi.h"
#include "jsapi_internal.h"
#include "log.h"
#include "subject.h"
#include "util.h"
#include "vfs.h"

#define API_PREFIX "$JS.API."
#define TYPE_PREFIX "io.nats.jetstream.api.v1."
#define NAMES_LIMIT 1024 /* nats-server's JSApiNamesLimit */
#define LIST_LIMIT 256   /* and JSApiListLimit */

/* ---- answers ---------------------------------------------------------------- */

void jsapi_set_err(api_err_t *e, int code, int err_code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    e->code = code;
    e->err_code = err_code;
    vsnprintf(e->desc, sizeof e->desc, fmt, ap);
    va_end(ap);
}

void jsapi_time(int64_t ns, char out[64])
{
    if (ns <= 0)
        snprintf(out, 64, "0001-01-01T00:00:00Z");
    else
        util_time_ns(ns, out, 64);
}

/* Sends o (deleted here) to m's reply subject. */
static void reply_obj(jsapi_t *api, const proto_msg_t *m, cJSON *o)
{
    size_t len = 0;
    char *p = o ? json_print(o, &len) : NULL;
    cJSON_Delete(o);
    if (p)
        server_reply(api->n->srv, m, p, len);
    else
        log_error("JetStream API: out of memory answering %.*s", (int)m->subject_len, m->subject);
    free(p);
}

/* {"type":TYPE_PREFIX type,"error":{"code","err_code","description"}} */
static void reply_err(jsapi_t *api, const proto_msg_t *m, const char *type, const api_err_t *e)
{
    char t[96];
    cJSON *o = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(o, "error");
    snprintf(t, sizeof t, TYPE_PREFIX "%s", type);
    cJSON_AddStringToObject(o, "type", t);
    cJSON_AddNumberToObject(err, "code", e->code);
    cJSON_AddNumberToObject(err, "err_code", e->err_code);
    cJSON_AddStringToObject(err, "description", e->desc);
    api->errors++;
    reply_obj(api, m, o);
}

/* A new answer object of type TYPE_PREFIX type. */
static cJSON *answer(const char *type)
{
    char t[96];
    snprintf(t, sizeof t, TYPE_PREFIX "%s", type);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", t);
    return o;
}

/* ---- streams as the API shows them ------------------------------------------ */

/* {"messages","bytes","first_seq","first_ts","last_seq","last_ts","consumer_count"} */
static cJSON *state_obj(const stream_info_t *in)
{
    char t[64];
    cJSON *s = cJSON_CreateObject();
    const slog_info_t *l = &in->log;
    json_add_uint(s, "messages", l->msgs);
    json_add_uint(s, "bytes", l->bytes);
    /* A stream that never stored anything says 0, as nats-server does. */
    json_add_uint(s, "first_seq", l->last_seq || l->msgs ? l->first_seq : 0);
    jsapi_time(l->msgs ? l->first_ts : 0, t);
    cJSON_AddStringToObject(s, "first_ts", t);
    json_add_uint(s, "last_seq", l->last_seq);
    jsapi_time(l->last_seq ? l->last_ts : 0, t);
    cJSON_AddStringToObject(s, "last_ts", t);
    cJSON_AddNumberToObject(s, "consumer_count", in->nconsumers);
    return s;
}

/* streams_subjects_each: one more subject (ctx: a uint64_t count). */
static void subject_count(void *ctx, const char *subject, size_t len, uint64_t seq)
{
    (void)subject, (void)len, (void)seq;
    (*(uint64_t *)ctx)++;
}

/* The saved entry of a stream made through the API, or NULL. */
static const cJSON *made_entry(jsapi_t *api, const char *name)
{
    return cJSON_GetObjectItemCaseSensitive(api->made, name);
}

int jsapi_add_info(jsapi_t *api, cJSON *o, const char *name)
{
    stream_info_t in;
    char now[64];
    if (!streams_stream_info(api->n->streams, name, -1, &in))
        return -1;
    const cJSON *e = made_entry(api, name), *created = cJSON_GetObjectItemCaseSensitive(e, "created");
    cJSON *cfg = e && in.cfg->api ? json_duplicate(cJSON_GetObjectItemCaseSensitive(e, "config"))
                                  : jsapi_config_from_stream(in.cfg);
    cJSON_AddItemToObject(o, "config", cfg);
    cJSON_AddStringToObject(o, "created", cJSON_IsString(created) ? created->valuestring : api->started);
    cJSON *st = cJSON_AddItemToObject(o, "state", state_obj(&in)) ? cJSON_GetObjectItemCaseSensitive(o, "state") : NULL;
    uint64_t nsubjects = 0; /* subjects with a message left; absent when 0, as nats-server */
    if (st && streams_subjects_each(api->n->streams, name, "", 0, subject_count, &nsubjects) == 0 && nsubjects)
        json_add_uint(st, "num_subjects", nsubjects);
    cJSON *cl = cJSON_AddObjectToObject(o, "cluster");
    cJSON_AddStringToObject(cl, "leader", server_get_opts(api->n->srv)->server_name);
    jsapi_time(slog_now_ns(), now);
    cJSON_AddStringToObject(o, "ts", now);
    return 0;
}

/* The stream name after prefix in m's subject (one token), in out; 0, or -1
 * with e set. */
static int subject_name(const proto_msg_t *m, size_t prefix, char *out, size_t n, api_err_t *e)
{
    size_t len = m->subject_len - prefix;
    const char *s = m->subject + prefix;
    if (len == 0 || memchr(s, '.', len)) {
        jsapi_set_err(e, 400, 10003, "bad request");
        return -1;
    }
    snprintf(out, n, "%.*s", (int)(len < n ? len : n - 1), s);
    return jsapi_name_check(out, len, e);
}

/* The request's JSON (NULL for an empty one, or with e set when it is not
 * JSON: then *bad is set). */
static cJSON *request_json(const proto_msg_t *m, int *bad, api_err_t *e)
{
    *bad = 0;
    size_t i = 0;
    while (i < m->payload_len && (m->payload[i] == ' ' || m->payload[i] == '\n' || m->payload[i] == '\r' ||
                                  m->payload[i] == '\t'))
        i++;
    if (i == m->payload_len)
        return NULL;
    cJSON *j = json_parse_owned(m->payload, m->payload_len);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        jsapi_set_err(e, 400, 10025, "invalid JSON");
        *bad = 1;
        return NULL;
    }
    return j;
}

/* ---- the verbs -------------------------------------------------------------- */

int jsapi_account_usage(jsapi_t *api, uint64_t *bytes, uint64_t *consumers)
{
    int n = streams_count(api->n->streams);
    *bytes = *consumers = 0;
    for (int i = 0; i < n; i++) {
        stream_info_t in;
        if (streams_stream_info(api->n->streams, NULL, i, &in)) {
            *bytes += in.log.bytes;
            *consumers += (uint64_t)in.nconsumers;
        }
    }
    return n;
}

static void verb_account_info(jsapi_t *api, const proto_msg_t *m)
{
    uint64_t bytes, consumers;
    int n = jsapi_account_usage(api, &bytes, &consumers);
    cJSON *o = answer("account_info_response");
    cJSON_AddNumberToObject(o, "memory", 0);
    json_add_uint(o, "storage", bytes);
    cJSON_AddNumberToObject(o, "reserved_memory", 0);
    cJSON_AddNumberToObject(o, "reserved_storage", 0);
    cJSON_AddNumberToObject(o, "streams", n);
    json_add_uint(o, "consumers", consumers);
    cJSON *lim = cJSON_AddObjectToObject(o, "limits");
    static const char *const unlimited[] = {"max_memory",    "max_storage",     "max_streams",
                                            "max_consumers", "max_ack_pending", "memory_max_stream_bytes",
                                            "storage_max_stream_bytes", NULL};
    for (int i = 0; unlimited[i]; i++)
        cJSON_AddNumberToObject(lim, unlimited[i], -1);
    cJSON_AddBoolToObject(lim, "max_bytes_required", 0);
    cJSON_AddStringToObject(o, "domain", "");
    cJSON *a = cJSON_AddObjectToObject(o, "api");
    json_add_uint(a, "total", api->total);
    json_add_uint(a, "errors", api->errors);
    reply_obj(api, m, o);
}

static void verb_stream_info(jsapi_t *api, const proto_msg_t *m, const char *name)
{
    api_err_t e;
    cJSON *o = answer("stream_info_response");
    cJSON_AddNumberToObject(o, "total", 0);
    cJSON_AddNumberToObject(o, "offset", 0);
    cJSON_AddNumberToObject(o, "limit", 0);
    if (jsapi_add_info(api, o, name) < 0) {
        cJSON_Delete(o);
        jsapi_set_err(&e, 404, 10059, "stream not found");
        reply_err(api, m, "stream_info_response", &e);
        return;
    }
    reply_obj(api, m, o);
}

int jsapi_paged_request(const proto_msg_t *m, uint64_t *offset, char *filter, size_t fsz, api_err_t *e)
{
    int bad;
    cJSON *j = request_json(m, &bad, e);
    *offset = 0;
    filter[0] = '\0';
    if (bad)
        return -1;
    if (j) {
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(j, "offset"),
                    *subj = cJSON_GetObjectItemCaseSensitive(j, "subject");
        if (off && json_get_uint(off, offset) < 0)
            *offset = 0; /* negative: from the start, as nats-server */
        if (cJSON_IsString(subj))
            snprintf(filter, fsz, "%s", subj->valuestring);
    }
    cJSON_Delete(j);
    return 0;
}

char **jsapi_sorted_names(jsapi_t *api, const char *filter, int *n)
{
    int total = streams_count(api->n->streams);
    char **names = calloc((size_t)total + 1, sizeof *names);
    *n = 0;
    for (int i = 0; names && i < total; i++) {
        const stream_cfg_t *c = streams_stream_info(api->n->streams, NULL, i, NULL);
        int keep = !filter[0];
        for (int k = 0; c && !keep && k < c->nsubjects; k++)
            keep = streams_patterns_overlap(filter, c->subjects[k]);
        if (c && keep && (names[*n] = strdup(c->name)))
            (*n)++;
    }
    for (int i = 1; names && i < *n; i++) /* insertion sort: at most STREAMS_MAX */
        for (int k = i; k > 0 && strcmp(names[k - 1], names[k]) > 0; k--) {
            char *t = names[k];
            names[k] = names[k - 1];
            names[k - 1] = t;
        }
    return names;
}

void jsapi_names_free(char **names, int n)
{
    for (int i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
}

/* STREAM.NAMES (list 0) and STREAM.LIST (list 1). */
static void verb_stream_names(jsapi_t *api, const proto_msg_t *m, int list)
{
    const char *type = list ? "stream_list_response" : "stream_names_response";
    api_err_t e;
    uint64_t offset;
    char filter[256];
    int n = 0;
    if (jsapi_paged_request(m, &offset, filter, sizeof filter, &e) < 0) {
        reply_err(api, m, type, &e);
        return;
    }
    char **names = jsapi_sorted_names(api, filter, &n);
    if (offset > (uint64_t)n)
        offset = (uint64_t)n;
    cJSON *o = answer(type);
    cJSON_AddNumberToObject(o, "total", n);
    cJSON_AddNumberToObject(o, "offset", (double)offset);
    cJSON_AddNumberToObject(o, "limit", list ? LIST_LIMIT : NAMES_LIMIT);
    /* nats-server says null for no names, [] for no streams in a list. */
    cJSON *arr = list || (uint64_t)n > offset ? cJSON_AddArrayToObject(o, "streams")
                                              : cJSON_AddNullToObject(o, "streams");
    for (int i = (int)offset, k = 0; i < n && k < (list ? LIST_LIMIT : NAMES_LIMIT); i++, k++) {
        if (!list) {
            cJSON_AddItemToArray(arr, cJSON_CreateString(names[i]));
            continue;
        }
        cJSON *si = cJSON_CreateObject();
        jsapi_add_info(api, si, names[i]);
        cJSON_AddItemToArray(arr, si);
    }
    jsapi_names_free(names, n);
    reply_obj(api, m, o);
}

static void verb_stream_delete(jsapi_t *api, const proto_msg_t *m, const char *name)
{
    api_err_t e;
    char err[512];
    int rc = streams_remove(api->n->streams, name, err, sizeof err);
    if (rc == STREAMS_ENOENT)
        jsapi_set_err(&e, 404, 10059, "stream not found");
    else if (rc < 0)
        jsapi_set_err(&e, 500, 10050, "%s", err);
    if (rc == 0 && jsapi_saved_remove(api, name) < 0) {
        rc = -1;
        jsapi_set_err(&e, 500, 10050, "stream %s: its files are gone, but not its saved configuration", name);
    }
    if (rc < 0) {
        reply_err(api, m, "stream_delete_response", &e);
        return;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(api->made, name);
    jsapi_consumers_stream_gone(api, name);
    log_info("stream %s: deleted through the JetStream API", name);
    cJSON *o = answer("stream_delete_response");
    cJSON_AddBoolToObject(o, "success", 1);
    reply_obj(api, m, o);
}

/* STREAM.CREATE (update 0) and STREAM.UPDATE (update 1). */
static void verb_stream_create(jsapi_t *api, const proto_msg_t *m, const char *name, int update)
{
    const char *type = update ? "stream_update_response" : "stream_create_response";
    api_err_t e = {0};
    int bad;
    cJSON *req = request_json(m, &bad, &e), *norm = NULL;
    if (!req && !bad)
        jsapi_set_err(&e, 400, 10025, "invalid JSON");
    if (req && (norm = jsapi_config_normalize(req, name, &e)))
        jsapi_stream_apply(api, name, norm, update, &e);
    cJSON_Delete(req);
    if (!norm || e.code) {
        cJSON_Delete(norm);
        reply_err(api, m, type, &e);
        return;
    }
    cJSON_Delete(norm);
    cJSON *o = answer(type);
    jsapi_add_info(api, o, name);
    reply_obj(api, m, o);
}

static void verb_msg_get(jsapi_t *api, const proto_msg_t *m, const char *name, int direct)
{
    api_err_t e = {0};
    jsapi_msg_get(api, m, name, direct, &e);
    if (e.code)
        reply_err(api, m, "stream_msg_get_response", &e);
}

/* True when flag (sealed, deny_purge, deny_delete) is set on the stream name. */
static int denied(jsapi_t *api, const char *name, const char *flag)
{
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(made_entry(api, name), "config");
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, flag));
}

static void verb_stream_purge(jsapi_t *api, const proto_msg_t *m, const char *name)
{
    const char *type = "stream_purge_response";
    api_err_t e = {0};
    char err[512];
    int bad;
    uint64_t seq = 0, keep = 0, purged = 0;
    cJSON *req = request_json(m, &bad, &e);
    const cJSON *filter = cJSON_GetObjectItemCaseSensitive(req, "filter");
    if (!bad && req)
        json_get_uint_member(req, "seq", &seq), json_get_uint_member(req, "keep", &keep);
    if (bad) {
        /* e says why */
    } else if (seq && keep) {
        jsapi_set_err(&e, 400, 10003, "bad request");
    } else if (!streams_stream_info(api->n->streams, name, -1, NULL)) {
        jsapi_set_err(&e, 404, 10059, "stream not found");
    } else if (denied(api, name, "sealed")) {
        jsapi_set_err(&e, 400, 10109, "invalid operation on sealed stream");
    } else if (denied(api, name, "deny_purge")) {
        jsapi_set_err(&e, 500, 10110, "stream purge not permitted");
    } else if (filter && (!cJSON_IsString(filter) ||
                          (filter->valuestring[0] && !subject_valid_pattern(filter->valuestring,
                                                                            strlen(filter->valuestring))))) {
        jsapi_set_err(&e, 500, 10110, "invalid subject filter");
    } else if (streams_purge(api->n->streams, name, cJSON_IsString(filter) ? filter->valuestring : NULL, seq, keep,
                             &purged, err, sizeof err) < 0) {
        jsapi_set_err(&e, 500, 10110, "%s", err);
    }
    cJSON_Delete(req);
    if (e.code) {
        reply_err(api, m, type, &e);
        return;
    }
    cJSON *o = answer(type);
    cJSON_AddBoolToObject(o, "success", 1);
    json_add_uint(o, "purged", purged);
    reply_obj(api, m, o);
}

static void verb_msg_delete(jsapi_t *api, const proto_msg_t *m, const char *name)
{
    const char *type = "stream_msg_delete_response";
    api_err_t e = {0};
    char err[512];
    int bad, rc = 0;
    uint64_t seq = 0; /* none: 0, which is never found (as nats-server) */
    cJSON *req = request_json(m, &bad, &e);
    if (req)
        json_get_uint_member(req, "seq", &seq);
    if (!req && !bad)
        jsapi_set_err(&e, 400, 10003, "bad request");
    else if (!bad && !streams_stream_info(api->n->streams, name, -1, NULL))
        jsapi_set_err(&e, 404, 10059, "stream not found");
    else if (!bad && denied(api, name, "sealed"))
        jsapi_set_err(&e, 400, 10109, "invalid operation on sealed stream");
    else if (!bad && denied(api, name, "deny_delete"))
        jsapi_set_err(&e, 500, 10057, "message delete not permitted");
    else if (!bad && (rc = streams_delete_msg(api->n->streams, name, seq, err, sizeof err)) < 0)
        jsapi_set_err(&e, 500, 10057, "%s", err);
    else if (!bad && rc == 0)
        jsapi_set_err(&e, 400, 10043, "sequence %" PRIu64 " not found", seq);
    cJSON_Delete(req);
    if (e.code) {
        reply_err(api, m, type, &e);
        return;
    }
    cJSON *o = answer(type);
    cJSON_AddBoolToObject(o, "success", 1);
    reply_obj(api, m, o);
}

/* ---- dispatch --------------------------------------------------------------- */

static const struct {
    const char *verb; /* after $JS.API.; a trailing '.' takes a stream name */
    int kind;
    const char *type; /* of the answer, errors included */
} verbs[] = {
    {"INFO", 0, "account_info_response"},
    {"STREAM.NAMES", 1, "stream_names_response"},
    {"STREAM.LIST", 2, "stream_list_response"},
    {"STREAM.CREATE.", 3, "stream_create_response"},
    {"STREAM.UPDATE.", 4, "stream_update_response"},
    {"STREAM.INFO.", 5, "stream_info_response"},
    {"STREAM.DELETE.", 6, "stream_delete_response"},
    {"STREAM.MSG.GET.", 7, "stream_msg_get_response"},
    {"DIRECT.GET.", 8, "stream_msg_get_response"},
    {"STREAM.PURGE.", 9, "stream_purge_response"},
    {"STREAM.MSG.DELETE.", 10, "stream_msg_delete_response"},
};

void jsapi_request_local(jsapi_t *api, const proto_msg_t *m)
{
    const char *op = m->subject + strlen(API_PREFIX);
    size_t oplen = m->subject_len - strlen(API_PREFIX), pre = strlen(API_PREFIX);
    char name[STREAM_NAME_MAX], direct[600];
    api_err_t e;
    if (jsapi_consumer_request(api, m, op, oplen))
        return;
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        size_t vl = strlen(verbs[i].verb);
        int named = verbs[i].verb[vl - 1] == '.';
        if (named ? oplen <= vl || memcmp(op, verbs[i].verb, vl) : oplen != vl || memcmp(op, verbs[i].verb, vl))
            continue;
        if (verbs[i].kind == 8) { /* DIRECT.GET.<stream>[.<subject>] */
            snprintf(direct, sizeof direct, "%.*s", (int)(oplen - vl), op + vl);
            verb_msg_get(api, m, direct, 1);
            return;
        }
        if (named && subject_name(m, pre + vl, name, sizeof name, &e) < 0) {
            reply_err(api, m, verbs[i].type, &e);
            return;
        }
        switch (verbs[i].kind) {
        case 0: verb_account_info(api, m); return;
        case 1: verb_stream_names(api, m, 0); return;
        case 2: verb_stream_names(api, m, 1); return;
        case 3: verb_stream_create(api, m, name, 0); return;
        case 4: verb_stream_create(api, m, name, 1); return;
        case 5: verb_stream_info(api, m, name); return;
        case 6: verb_stream_delete(api, m, name); return;
        case 7: verb_msg_get(api, m, name, 0); return;
        case 9: verb_stream_purge(api, m, name); return;
        case 10: verb_msg_delete(api, m, name); return;
        default: return;
        }
    }
    /* What tide does not answer yet (consumers, purge, ...): an error
     * rather than a request that times out. */
    jsapi_set_err(&e, 400, 10003, "bad request: tide does not answer %.*s", (int)oplen, op);
    reply_err(api, m, "error_response", &e);
}

static void on_request(void *ctx, const proto_msg_t *m)
{
    jsapi_t *api = ctx;
    api->total++;
    /* In cluster mode what is not about a local stream is the cluster's. */
    if (api->n->cluster && jsapi_cluster_request(api->n, api, m))
        return;
    jsapi_request_local(api, m);
}

jsapi_t *jsapi_start(node_t *n, int *failed)
{
    *failed = 0;
    if (!n->streams)
        return NULL;
    jsapi_t *api = calloc(1, sizeof *api);
    if (!api || !(api->made = cJSON_CreateObject()))
        goto fail;
    api->n = n;
    jsapi_time(slog_now_ns(), api->started);
    snprintf(api->dir, sizeof api->dir, "%s/jsapi/streams", streams_dir(n->streams));
    if (jsapi_saved_load(api) < 0 || jsapi_consumers_start(api) < 0)
        goto fail;
    if (!(api->sub = server_subscribe_internal(n->srv, API_PREFIX ">", on_request, api)))
        goto fail;
    api->sub->flags |= SUB_RESPONDER;
    server_set_info_jetstream(n->srv, 1);
    return api;
fail:
    log_error("cannot start the JetStream API");
    *failed = 1;
    jsapi_free(api);
    return NULL;
}

void jsapi_free(jsapi_t *api)
{
    if (!api)
        return;
    if (api->sub)
        server_unsubscribe_internal(api->n->srv, api->sub);
    if (api->n && api->n->srv)
        server_set_info_jetstream(api->n->srv, 0);
    jsapi_consumers_stop(api);
    cJSON_Delete(api->made);
    free(api->rbuf);
    free(api);
}

/* ---- for jsapi_consumer.c --------------------------------------------------- */

void jsapi_reply_obj(jsapi_t *api, const proto_msg_t *m, cJSON *o) { reply_obj(api, m, o); }

void jsapi_reply_err(jsapi_t *api, const proto_msg_t *m, const char *type, const api_err_t *e)
{
    reply_err(api, m, type, e);
}

cJSON *jsapi_answer(const char *type) { return answer(type); }

cJSON *jsapi_request_json(const proto_msg_t *m, int *bad, api_err_t *e) { return request_json(m, bad, e); }

void jsapi_status(jsapi_t *api, const proto_msg_t *m, const char *status)
{
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr, "NATS/1.0 %s\r\n\r\n", status);
    proto_msg_t out = {0};
    out.subject = m->reply;
    out.subject_len = m->reply_len;
    out.hdr = hdr;
    out.hdr_len = (size_t)n < sizeof hdr ? (size_t)n : sizeof hdr - 1;
    out.payload = "";
    server_route_flags(api->n->srv, NULL, &out, ROUTE_NO_CAPTURE);
}

const char *jsapi_get_str(const cJSON *obj, const char *key, const char *dflt)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!n || cJSON_IsNull(n))
        return dflt;
    return cJSON_IsString(n) ? n->valuestring : NULL;
}
