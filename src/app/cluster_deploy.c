/* cluster_deploy.c - rules deployed once to every node; see cluster_deploy.h. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_deploy.h"
#include "cluster_pull.h"
#include "flow.h"
#include "history.h"
#include "log.h"
#include "node.h"
#include "util.h"

enum bucket_state { BUCKET_NONE, BUCKET_CREATING, BUCKET_READY, BUCKET_FAILED };
enum watch_state { WATCH_NONE, WATCH_CREATING, WATCH_SYNCING, WATCH_LIVE, WATCH_FAILED };

/* Seconds before a question without an answer is asked again, a deploy
 * request without a PubAck is answered with an error, and between two
 * checks that the watch's consumer still exists. */
#define DEPLOY_RETRY_S 5
/* Seconds after which an unanswered question about the bucket counts as
 * "no JetStream here" for /readyz (a cluster of servers without JetStream
 * may not even say that no one answers). */
#define DEPLOY_ANSWER_S 3
#define DEPLOY_PUT_TIMEOUT_S 10
#define DEPLOY_WATCH_CHECK_S 10
#define DEPLOY_PENDING_MAX 16

/* A deploy request waiting for the bucket: for the revision to roll back
 * to (getting), then for the PubAck of what it stores. */
typedef struct put {
    unsigned token; /* 0: a free slot */
    int getting;
    char reply[256];
    char hash[17];
    char by[128];
    uint64_t rollback_of; /* the revision stored again, 0 for new files */
    time_t sent;
} put_t;

struct cluster_deploy {
    natsConnection *nc;
    node_t *n;
    char inbox[128];
    char watch_prefix[128];
    cluster_deploy_subscribe_fn subscribe;
    void *subscribe_ctx;
    natsSubscription *watch_sub; /* watch_prefix.<gen> */
    int64_t watch_sid;
    char root[4300]; /* where revisions' files go */
    int root_is_tmp;
    unsigned next_token;
    /* The bucket's stream: made (or found) once per process. */
    enum bucket_state bucket;
    int no_js;           /* the cluster answered that it has no JetStream: no deployed rules possible */
    int no_answer;       /* a question about the bucket went unanswered: JetStream is away or absent */
    int replicas;        /* asked for: 3, fewer when the cluster cannot */
    unsigned api_token;  /* the question in flight (stream or consumer), 0 none */
    time_t api_sent;
    /* The watch: an ephemeral push consumer delivering to inbox.watch.<gen>. */
    enum watch_state watch;
    unsigned gen;
    char consumer[128]; /* its name, once made */
    time_t last_check;
    put_t puts[DEPLOY_PENDING_MAX];
    /* What runs here. */
    uint64_t seen;       /* the newest revision handled (loaded or refused) */
    uint64_t live;       /* the deployed revision running, 0 none */
    uint64_t failed;     /* the newest revision refused, 0 none */
    char live_hash[17];
    char live_by[128];
    char error[600];     /* why the last revision was refused, or the bucket's trouble */
};

/* ---- bundles ------------------------------------------------------------- */

static int path_ok(const char *p)
{
    size_t n = strlen(p);
    if (n < 5 || n > CLUSTER_DEPLOY_MAX_PATH || p[0] == '/' || strcmp(p + n - 4, ".lua"))
        return 0;
    for (const char *s = p; *s; s++) {
        if (*s == '\\' || (unsigned char)*s < 0x20)
            return 0;
        if ((s == p || s[-1] == '/') && (*s == '/' || (s[0] == '.' && (s[1] == '/' || (s[1] == '.' && s[2] == '/')))))
            return 0; /* empty, "." or ".." component */
    }
    return 1;
}

int cluster_deploy_check_bundle(const cJSON *bundle, char *err, size_t errsz)
{
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(bundle, "entry");
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(bundle, "files"), *f;
    int count = 0;
    if (!cJSON_IsString(entry) || !cJSON_IsObject(files)) {
        snprintf(err, errsz, "a bundle needs \"entry\" (a file name) and \"files\" ({path: text})");
        return -1;
    }
    cJSON_ArrayForEach(f, files)
    {
        if (!cJSON_IsString(f) || !path_ok(f->string)) {
            snprintf(err, errsz, "bad file in the bundle: '%.200s' (relative paths of .lua files, no '..')",
                     f->string ? f->string : "?");
            return -1;
        }
        if (++count > CLUSTER_DEPLOY_MAX_FILES) {
            snprintf(err, errsz, "more than %d files in the bundle", CLUSTER_DEPLOY_MAX_FILES);
            return -1;
        }
    }
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(files, entry->valuestring))) {
        snprintf(err, errsz, "the entry file '%.200s' is not in the bundle", entry->valuestring);
        return -1;
    }
    return 0;
}

static void hash_update(uint64_t *hv, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        *hv = (*hv ^ (unsigned char)p[i]) * 1099511628211ULL;
}

void cluster_deploy_hash(const cJSON *files, char out[17])
{
    uint64_t hv = 14695981039346656037ULL;
    const cJSON *f;
    cJSON_ArrayForEach(f, files)
    {
        if (!cJSON_IsString(f) || !f->string)
            continue;
        hash_update(&hv, f->string, strlen(f->string) + 1);
        hash_update(&hv, f->valuestring, strlen(f->valuestring) + 1);
    }
    snprintf(out, 17, "%016" PRIx64, hv);
}

/* ---- asking JetStream ------------------------------------------------------ */

static unsigned ask(cluster_deploy_t *d, const char *what, const char *subject, const char *body)
{
    char reply[200];
    unsigned token = ++d->next_token ? d->next_token : ++d->next_token;
    snprintf(reply, sizeof reply, "%s.%s.%u", d->inbox, what, token);
    if (natsConnection_PublishRequestString(d->nc, subject, reply, body) != NATS_OK)
        return 0;
    return token;
}

static void bucket_create(cluster_deploy_t *d)
{
    char body[600];
    snprintf(body, sizeof body,
             "{\"name\":\"%s\",\"subjects\":[\"$KV.TIDE_RULES.>\"],\"retention\":\"limits\",\"storage\":\"file\","
             "\"num_replicas\":%d,\"max_msgs_per_subject\":%d,\"discard\":\"new\",\"allow_rollup_hdrs\":true,"
             "\"deny_delete\":true,\"allow_direct\":true,\"max_msgs\":-1,\"max_bytes\":-1,\"max_age\":0,"
             "\"max_msg_size\":-1,\"duplicate_window\":120000000000}",
             CLUSTER_RULES_STREAM, d->replicas, CLUSTER_RULES_HISTORY);
    d->bucket = BUCKET_CREATING;
    d->api_sent = time(NULL);
    d->api_token = ask(d, "api", "$JS.API.STREAM.CREATE." CLUSTER_RULES_STREAM, body);
}

/* Deletes the watch's consumer (no answer awaited): a new one replaces it. */
static void watch_drop(cluster_deploy_t *d)
{
    char subject[300];
    if (!d->consumer[0])
        return;
    snprintf(subject, sizeof subject, "$JS.API.CONSUMER.DELETE.%s.%s", CLUSTER_RULES_STREAM, d->consumer);
    natsConnection_PublishString(d->nc, subject, "");
    d->consumer[0] = '\0';
}

void cluster_deploy_unsubscribe(cluster_deploy_t *d)
{
    if (d && d->watch_sub) {
        natsSubscription_Unsubscribe(d->watch_sub);
        natsSubscription_Destroy(d->watch_sub);
    }
    if (d) {
        d->watch_sub = NULL;
        d->watch_sid = 0;
    }
}

/* A new watch: the last revision, then every new one, to watch_prefix.<gen>. */
static void watch_create(cluster_deploy_t *d)
{
    char body[800], subject[200];
    watch_drop(d);
    cluster_deploy_unsubscribe(d);
    d->gen++;
    d->api_sent = d->last_check = time(NULL);
    snprintf(subject, sizeof subject, "%s.%u", d->watch_prefix, d->gen);
    if (d->subscribe(d->subscribe_ctx, subject, &d->watch_sub, &d->watch_sid) < 0) {
        d->watch = WATCH_FAILED;
        snprintf(d->error, sizeof d->error, "rules bucket: cannot subscribe to %s", subject);
        return;
    }
    snprintf(body, sizeof body,
             "{\"stream_name\":\"%s\",\"config\":{\"deliver_subject\":\"%s\",\"deliver_policy\":"
             "\"last_per_subject\",\"filter_subject\":\"%s\",\"ack_policy\":\"none\",\"replay_policy\":\"instant\","
             "\"mem_storage\":true,\"num_replicas\":1}}",
             CLUSTER_RULES_STREAM, subject, CLUSTER_RULES_KEY_SUBJECT);
    d->watch = WATCH_CREATING;
    d->api_token = ask(d, "api", "$JS.API.CONSUMER.CREATE." CLUSTER_RULES_STREAM, body);
}

static void bucket_failed(cluster_deploy_t *d, const char *why)
{
    if (d->bucket != BUCKET_FAILED)
        log_error("cluster: the rules bucket %s: %s (retrying)", CLUSTER_RULES_STREAM, why);
    d->bucket = BUCKET_FAILED;
    snprintf(d->error, sizeof d->error, "rules bucket: %s", why);
}

/* STREAM.CREATE's answer. */
static void on_bucket_answer(cluster_deploy_t *d, const cJSON *a)
{
    const cJSON *err = cJSON_GetObjectItem(a, "error");
    double code = cJSON_GetNumberValue(cJSON_GetObjectItem(err, "err_code"));
    const char *desc = cJSON_GetStringValue(cJSON_GetObjectItem(err, "description"));
    if (err && code != 10058 && d->replicas > 1) { /* fewer servers than replicas: ask for fewer */
        d->replicas--;
        bucket_create(d);
        return;
    }
    if (err && code != 10058) { /* 10058: it exists (made by another node, maybe with other replicas) */
        bucket_failed(d, desc ? desc : "the JetStream API answered an error");
        return;
    }
    if (d->error[0] && (d->no_js || !strncmp(d->error, "rules bucket:", 13)))
        d->error[0] = '\0';
    d->no_js = d->no_answer = 0;
    d->bucket = BUCKET_READY;
    watch_create(d);
}

/* CONSUMER.CREATE's (or INFO's) answer. */
static void on_watch_answer(cluster_deploy_t *d, const cJSON *a)
{
    const cJSON *err = cJSON_GetObjectItem(a, "error");
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(a, "name"));
    if (err) {
        const char *desc = cJSON_GetStringValue(cJSON_GetObjectItem(err, "description"));
        if (d->watch != WATCH_FAILED)
            log_error("cluster: cannot watch the deployed rules: %s (retrying)", desc ? desc : "an error");
        d->watch = WATCH_FAILED;
        snprintf(d->error, sizeof d->error, "rules bucket: cannot watch it: %s", desc ? desc : "an error");
        return;
    }
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(a, "type"));
    if (!type || !strstr(type, "consumer_create_response"))
        return; /* INFO: it still exists */
    snprintf(d->consumer, sizeof d->consumer, "%s", name ? name : "");
    /* The first delivery may come before this answer: then it decided. */
    if (d->watch == WATCH_CREATING)
        d->watch = cJSON_GetNumberValue(cJSON_GetObjectItem(a, "num_pending")) > 0 ? WATCH_SYNCING : WATCH_LIVE;
}

static void answer_error(cluster_deploy_t *d, const char *reply, const char *why)
{
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    if (o && cJSON_AddStringToObject(o, "error", why) && (text = cJSON_PrintUnformatted(o)))
        natsConnection_PublishString(d->nc, reply, text);
    cJSON_free(text);
    cJSON_Delete(o);
}

/* A PubAck for a deploy request: answers its requester. */
static void on_put_answer(cluster_deploy_t *d, put_t *p, natsMsg *m, const cJSON *a)
{
    const char *status = NULL;
    const cJSON *err = cJSON_GetObjectItem(a, "error");
    const cJSON *seq = cJSON_GetObjectItem(a, "seq");
    const char *desc = cJSON_GetStringValue(cJSON_GetObjectItem(err, "description"));
    char out[400];
    p->token = 0;
    if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status && !strcmp(status, "503")) {
        answer_error(d, p->reply, "the rules bucket is not there (no JetStream answered)");
        return;
    }
    if (err || !cJSON_IsNumber(seq)) {
        snprintf(out, sizeof out, "the rules bucket refused the revision: %.300s", desc ? desc : "no answer it understood");
        answer_error(d, p->reply, out);
        return;
    }
    if (p->rollback_of)
        snprintf(out, sizeof out, "{\"rev\":%.0f,\"hash\":\"%s\",\"rollback_of\":%" PRIu64 "}", seq->valuedouble,
                 p->hash, p->rollback_of);
    else
        snprintf(out, sizeof out, "{\"rev\":%.0f,\"hash\":\"%s\"}", seq->valuedouble, p->hash);
    natsConnection_PublishString(d->nc, p->reply, out);
}

/* ---- loading a revision ------------------------------------------------------ */

/* Writes the bundle's files under dir. 0, or -1 with the reason in err. */
static int write_files(const char *dir, const cJSON *files, char *err, size_t errsz)
{
    char path[4600];
    const cJSON *f;
    cJSON_ArrayForEach(f, files)
    {
        snprintf(path, sizeof path, "%s/%s", dir, f->string);
        char *slash = strrchr(path, '/');
        *slash = '\0';
        int made = util_mkdirs(path);
        *slash = '/';
        FILE *out = made < 0 ? NULL : fopen(path, "wb");
        size_t len = strlen(f->valuestring);
        int bad = !out || fwrite(f->valuestring, 1, len, out) != len;
        if ((out && fclose(out) != 0) || bad) {
            snprintf(err, errsz, "cannot write %.700s: %s", path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* Removes every revision's directory under root but the live one's. */
static void prune(cluster_deploy_t *d)
{
    DIR *dir = opendir(d->root);
    struct dirent *e;
    char keep[32], path[4600];
    snprintf(keep, sizeof keep, "%" PRIu64, d->live);
    while (dir && (e = readdir(dir))) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, keep))
            continue;
        snprintf(path, sizeof path, "%s/%s", d->root, e->d_name);
        flow_remove_tree(path);
    }
    if (dir)
        closedir(dir);
}

static void refused(cluster_deploy_t *d, uint64_t rev, const char *why)
{
    d->failed = rev;
    snprintf(d->error, sizeof d->error, "rev %" PRIu64 " refused: %.560s", rev, why);
    log_error("cluster: deployed rules rev %" PRIu64 " refused; %s%s keeps serving: %s", rev,
              d->live ? "the deployed revision " : "the node's own rules", d->live ? "before it" : "", why);
}

/* Loads revision rev (the bundle b) after the node's entry file. */
static void load_revision(cluster_deploy_t *d, uint64_t rev, const cJSON *b)
{
    char dir[4400], entry[4700], label[64], why[64], err[1024];
    const char *by = cJSON_GetStringValue(cJSON_GetObjectItem(b, "by"));
    const char *hash = cJSON_GetStringValue(cJSON_GetObjectItem(b, "hash"));
    const cJSON *files = cJSON_GetObjectItem(b, "files");
    d->seen = rev;
    snprintf(dir, sizeof dir, "%s/%" PRIu64, d->root, rev);
    flow_remove_tree(dir); /* what an earlier run of the node left */
    if (cluster_deploy_check_bundle(b, err, sizeof err) < 0 || write_files(dir, files, err, sizeof err) < 0) {
        refused(d, rev, err);
        prune(d);
        return;
    }
    snprintf(entry, sizeof entry, "%s/%s", dir, cJSON_GetStringValue(cJSON_GetObjectItem(b, "entry")));
    snprintf(label, sizeof label, "deployed/%" PRIu64, rev);
    snprintf(why, sizeof why, "deploy rev %" PRIu64, rev);
    if (d->n->history)
        history_set_by(d->n->history, by);
    int rc = script_load_deployed(d->n->scripts, entry, dir, label, why, err, sizeof err);
    if (d->n->history)
        history_set_by(d->n->history, NULL);
    if (rc < 0) {
        refused(d, rev, err);
    } else {
        d->live = rev;
        d->failed = 0;
        d->error[0] = '\0';
        snprintf(d->live_hash, sizeof d->live_hash, "%s", hash ? hash : "");
        snprintf(d->live_by, sizeof d->live_by, "%s", by ? by : "");
        log_info("cluster: deployed rules rev %" PRIu64 " loaded (hash %s%s%s)", rev, d->live_hash, by ? ", by " : "",
                 by ? by : "");
    }
    prune(d);
}

void cluster_deploy_set_connection(cluster_deploy_t *d, natsConnection *nc)
{
    if (d)
        d->nc = nc;
}

int64_t cluster_deploy_watch_sid(const cluster_deploy_t *d)
{
    return d ? d->watch_sid : 0;
}

void cluster_deploy_revision(cluster_deploy_t *d, natsMsg *m)
{
    uint64_t rev, pending;
    const char *op = NULL;
    cJSON *b = NULL;
    if (cluster_pull_ack_seq(natsMsg_GetReply(m), &rev, &pending) < 0)
        goto done; /* not a JetStream delivery */
    d->watch = pending == 0 ? WATCH_LIVE : WATCH_SYNCING;
    if (rev <= d->seen)
        goto done; /* handled already (a new watch starts with the last one again) */
    if (natsMsgHeader_Get(m, "KV-Operation", &op) == NATS_OK && op) {
        d->seen = rev; /* a delete or purge of the key: nothing to load */
        goto done;
    }
    if (!(b = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m)))) {
        d->seen = rev;
        refused(d, rev, "the stored bundle is not JSON");
        goto done;
    }
    load_revision(d, rev, b);
done:
    cJSON_Delete(b);
}

/* ---- requests, lifecycle, status ----------------------------------------------- */

/* The stored form of a bundle: entry, files, hash, by, at. */
static char *stored_bundle(const cJSON *bundle, const char *by, char hash[17])
{
    char at[64];
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    cluster_deploy_hash(cJSON_GetObjectItem(bundle, "files"), hash);
    util_now_rfc3339(at);
    if (o && cJSON_AddItemToObject(o, "entry", cJSON_Duplicate(cJSON_GetObjectItem(bundle, "entry"), 1)) &&
        cJSON_AddItemToObject(o, "files", cJSON_Duplicate(cJSON_GetObjectItem(bundle, "files"), 1)) &&
        cJSON_AddStringToObject(o, "hash", hash) && cJSON_AddStringToObject(o, "by", by) &&
        cJSON_AddStringToObject(o, "at", at))
        text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

/* Stores bundle as the next revision for p's requester.  0, or -1 with err. */
static int start_put(cluster_deploy_t *d, put_t *p, const cJSON *bundle, char *err, size_t errsz)
{
    char *text = NULL;
    int rc = -1;
    if (cluster_deploy_check_bundle(bundle, err, errsz) < 0)
        goto done;
    if (!(text = stored_bundle(bundle, p->by, p->hash)))
        snprintf(err, errsz, "out of memory");
    else if (!(p->token = ask(d, "put", CLUSTER_RULES_KEY_SUBJECT, text)))
        snprintf(err, errsz, "cannot publish to the rules bucket");
    else
        rc = 0;
    p->getting = 0;
    p->sent = time(NULL);
done:
    cJSON_free(text);
    return rc;
}

/* The revision a rollback stores again, from the bucket's direct get. */
static void on_get_answer(cluster_deploy_t *d, put_t *p, natsMsg *m)
{
    const char *status = NULL, *subject = NULL;
    char err[400];
    cJSON *b = NULL;
    p->token = 0;
    if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status)
        snprintf(err, sizeof err, "no rev %" PRIu64 " in the rules bucket (it keeps the last %d)", p->rollback_of,
                 CLUSTER_RULES_HISTORY);
    else if (natsMsgHeader_Get(m, "Nats-Subject", &subject) != NATS_OK || !subject ||
             strcmp(subject, CLUSTER_RULES_KEY_SUBJECT))
        snprintf(err, sizeof err, "rev %" PRIu64 " is not a revision of the rules", p->rollback_of);
    else if (!(b = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m))))
        snprintf(err, sizeof err, "rev %" PRIu64 " in the bucket is not JSON", p->rollback_of);
    else if (start_put(d, p, b, err, sizeof err) == 0)
        err[0] = '\0';
    if (err[0])
        answer_error(d, p->reply, err);
    cJSON_Delete(b);
}

/* A request: {"entry","files","by"} (new files) or {"rollback":REV,"by"}. */
void cluster_deploy_request(cluster_deploy_t *d, natsMsg *m)
{
    const char *reply = natsMsg_GetReply(m), *by;
    char err[400] = "", body[64];
    cJSON *req = NULL;
    const cJSON *rollback;
    put_t *p = NULL;
    if (!reply || !reply[0])
        return;
    for (int i = 0; i < DEPLOY_PENDING_MAX && !p; i++)
        if (!d->puts[i].token)
            p = &d->puts[i];
    if (!(req = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m))))
        snprintf(err, sizeof err, "the request is not JSON");
    else if (d->bucket != BUCKET_READY)
        snprintf(err, sizeof err, "the rules bucket is not ready on this node yet%s%.300s", d->error[0] ? ": " : "",
                 d->error);
    else if (!p)
        snprintf(err, sizeof err, "too many deploys in flight on this node; try again");
    if (err[0])
        goto done;
    memset(p, 0, sizeof *p);
    by = cJSON_GetStringValue(cJSON_GetObjectItem(req, "by"));
    snprintf(p->by, sizeof p->by, "%s", by ? by : "");
    snprintf(p->reply, sizeof p->reply, "%s", reply);
    rollback = cJSON_GetObjectItem(req, "rollback");
    if (!rollback) {
        start_put(d, p, req, err, sizeof err);
        goto done;
    }
    if (!cJSON_IsNumber(rollback) || rollback->valuedouble < 1) {
        snprintf(err, sizeof err, "rollback: a revision number (1 or more)");
        goto done;
    }
    p->rollback_of = (uint64_t)rollback->valuedouble;
    p->getting = 1;
    p->sent = time(NULL);
    snprintf(body, sizeof body, "{\"seq\":%" PRIu64 "}", p->rollback_of);
    if (!(p->token = ask(d, "get", "$JS.API.DIRECT.GET." CLUSTER_RULES_STREAM, body)))
        snprintf(err, sizeof err, "cannot ask the rules bucket for rev %" PRIu64, p->rollback_of);
done:
    if (err[0]) {
        if (p)
            p->token = 0;
        answer_error(d, reply, err);
    }
    cJSON_Delete(req);
}

void cluster_deploy_answer(cluster_deploy_t *d, natsMsg *m)
{
    const char *subject = natsMsg_GetSubject(m) + strlen(d->inbox) + 1;
    const char *dot = strrchr(subject, '.'), *status = NULL;
    unsigned token = dot ? (unsigned)strtoul(dot + 1, NULL, 10) : 0;
    cJSON *a = NULL;
    if (!token)
        return;
    a = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    if (!strncmp(subject, "put.", 4) || !strncmp(subject, "get.", 4)) {
        for (int i = 0; i < DEPLOY_PENDING_MAX; i++) {
            put_t *p = &d->puts[i];
            if (p->token != token)
                continue;
            if (p->getting && subject[0] == 'g')
                on_get_answer(d, p, m);
            else if (!p->getting && subject[0] == 'p')
                on_put_answer(d, p, m, a);
        }
    } else if (!strncmp(subject, "api.", 4) && token == d->api_token) {
        d->api_token = 0;
        if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status && !strcmp(status, "503")) {
            if (!d->no_js)
                log_info("cluster: the cluster has no JetStream: no rules can be deployed to it (asking again every %ds)",
                         DEPLOY_RETRY_S);
            d->no_js = 1;
            d->bucket = BUCKET_FAILED;
            snprintf(d->error, sizeof d->error, "the cluster has no JetStream: no deployed rules");
        }
        else if (!a)
            bucket_failed(d, "the JetStream API's answer is not JSON");
        else if (d->bucket == BUCKET_CREATING)
            on_bucket_answer(d, a);
        else
            on_watch_answer(d, a);
    }
    cJSON_Delete(a);
}

cluster_deploy_t *cluster_deploy_new(natsConnection *nc, node_t *n, const char *inbox, const char *watch_prefix,
                                     cluster_deploy_subscribe_fn subscribe, void *ctx)
{
    cluster_deploy_t *d = calloc(1, sizeof *d);
    if (!d)
        goto fail;
    d->nc = nc;
    d->n = n;
    d->replicas = 3;
    d->subscribe = subscribe;
    d->subscribe_ctx = ctx;
    snprintf(d->inbox, sizeof d->inbox, "%s", inbox);
    snprintf(d->watch_prefix, sizeof d->watch_prefix, "%s", watch_prefix);
    if (n->streams) {
        snprintf(d->root, sizeof d->root, "%s/deployed", n->data_dir);
        if (util_mkdirs(d->root) < 0) {
            log_error("cluster: cannot make %s for the deployed rules: %s", d->root, strerror(errno));
            goto fail;
        }
    } else if (flow_make_tmpdir("tide-deployed", d->root, sizeof d->root) < 0) {
        log_error("cluster: cannot make a directory for the deployed rules: %s", strerror(errno));
        goto fail;
    } else {
        d->root_is_tmp = 1;
    }
    return d;
fail:
    free(d);
    return NULL;
}

void cluster_deploy_free(cluster_deploy_t *d)
{
    if (!d)
        return;
    cluster_deploy_unsubscribe(d);
    if (d->root_is_tmp)
        flow_remove_tree(d->root);
    free(d);
}

void cluster_deploy_connected(cluster_deploy_t *d)
{
    if (d->bucket == BUCKET_READY)
        watch_create(d);
    else
        bucket_create(d);
}

void cluster_deploy_tick(cluster_deploy_t *d)
{
    time_t now = time(NULL);
    for (int i = 0; i < DEPLOY_PENDING_MAX; i++) {
        put_t *p = &d->puts[i];
        if (p->token && now - p->sent >= DEPLOY_PUT_TIMEOUT_S) {
            answer_error(d, p->reply, "the rules bucket did not answer in time; the revision may or may not be stored");
            p->token = 0;
        }
    }
    if (natsConnection_Status(d->nc) != NATS_CONN_STATUS_CONNECTED)
        return;
    if (d->api_token && d->bucket != BUCKET_READY && now - d->api_sent >= DEPLOY_ANSWER_S && !d->no_answer) {
        d->no_answer = 1;
        snprintf(d->error, sizeof d->error, "rules bucket: JetStream does not answer (none in the cluster?)");
        log_warn("cluster: JetStream does not answer about the rules bucket %s; the node runs its own rules and "
                 "keeps asking every %ds", CLUSTER_RULES_STREAM, DEPLOY_RETRY_S);
    }
    int waiting = d->api_token && now - d->api_sent < DEPLOY_RETRY_S;
    if (waiting)
        return;
    if (d->bucket != BUCKET_READY) {
        if (d->bucket != BUCKET_FAILED || now - d->api_sent >= DEPLOY_RETRY_S)
            bucket_create(d);
    } else if (d->watch == WATCH_NONE || d->watch == WATCH_FAILED || d->watch == WATCH_CREATING ||
               (d->watch == WATCH_SYNCING && now - d->api_sent >= DEPLOY_RETRY_S)) {
        watch_create(d);
    } else if (now - d->last_check >= DEPLOY_WATCH_CHECK_S && d->consumer[0]) {
        /* The consumer lives on one server: gone with it, a new one is made. */
        char subject[300];
        snprintf(subject, sizeof subject, "$JS.API.CONSUMER.INFO.%s.%s", CLUSTER_RULES_STREAM, d->consumer);
        d->last_check = d->api_sent = now;
        d->api_token = ask(d, "api", subject, "");
    }
}

int cluster_deploy_ready(cluster_deploy_t *d, char *why, size_t n)
{
    if (d->no_js || (d->no_answer && d->bucket != BUCKET_READY))
        return 1; /* nothing can be deployed (now): the node's own rules are all there is */
    if (d->watch != WATCH_LIVE) {
        snprintf(why, n, "deployed rules: not caught up with the rules bucket yet%s%s", d->error[0] ? " (" : "",
                 d->error[0] ? d->error : "");
        if (d->error[0])
            snprintf(why + strlen(why), n - strlen(why), ")");
        return 0;
    }
    if (d->seen && !d->live) {
        snprintf(why, n, "deployed rules: no revision loaded: %s", d->error);
        return 0;
    }
    return 1;
}

void cluster_deploy_status(cluster_deploy_t *d, cJSON *o)
{
    const char *state = d->failed                         ? "failed"
                        : d->live                         ? "loaded"
                        : d->watch == WATCH_LIVE || d->no_js || d->no_answer ? "none"
                                                          : "waiting";
    cJSON_AddNumberToObject(o, "rules_revision", (double)d->live);
    cJSON_AddStringToObject(o, "rules_state", state);
    cJSON_AddStringToObject(o, "rules_error", d->error);
    cJSON_AddNumberToObject(o, "rules_failed_revision", (double)d->failed);
    cJSON_AddStringToObject(o, "rules_hash", d->live_hash);
    cJSON_AddStringToObject(o, "rules_by", d->live_by);
}
