/* cluster_js.c - JetStream-backed streams in cluster mode; see cluster_js.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_js.h"
#include "log.h"

enum js_state { JS_IDLE, JS_ASKING, JS_CREATING, JS_UPDATING, JS_BOUND, JS_FAILED };

static const char *const state_names[] = {"waiting", "asking", "creating", "updating", "bound", "failed"};

typedef struct js_stream {
    cluster_stream_t cfg;
    enum js_state state;
    unsigned token;   /* of the question in flight: its answer's inbox.<token> */
    time_t asked;     /* when it went */
    char error[300];  /* why it failed, last time */
} js_stream_t;

/* Seconds before a question without an answer, or a failure, is asked again. */
#define JS_RETRY 3

struct cluster_js {
    natsConnection *nc;
    script_host_t *scripts;
    char inbox[128];
    js_stream_t *streams;
    int n;
    unsigned next_token;
};

cluster_js_t *cluster_js_new(natsConnection *nc, script_host_t *scripts, const char *inbox)
{
    cluster_js_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->nc = nc;
    j->scripts = scripts;
    snprintf(j->inbox, sizeof j->inbox, "%s", inbox);
    cluster_js_rules_changed(j);
    return j;
}

void cluster_js_set_connection(cluster_js_t *j, natsConnection *nc)
{
    if (j)
        j->nc = nc;
}

void cluster_js_free(cluster_js_t *j)
{
    if (!j)
        return;
    free(j->streams);
    free(j);
}

static int same_stream(const cluster_stream_t *a, const cluster_stream_t *b)
{
    if (strcmp(a->name, b->name) || a->nsubjects != b->nsubjects || a->replicas != b->replicas ||
        a->max_msgs != b->max_msgs || a->max_bytes != b->max_bytes || a->max_age != b->max_age)
        return 0;
    for (int i = 0; i < a->nsubjects; i++)
        if (strcmp(a->subjects[i], b->subjects[i]))
            return 0;
    return 1;
}

void cluster_js_rules_changed(cluster_js_t *j)
{
    const cluster_stream_t *decl = NULL;
    int n = script_cluster_streams(j->scripts, &decl);
    js_stream_t *fresh = n ? calloc((size_t)n, sizeof *fresh) : NULL;
    if (n && !fresh) {
        log_error("cluster: out of memory taking the reloaded jetstream streams; keeping the old ones");
        return;
    }
    for (int i = 0; i < n; i++) {
        fresh[i].cfg = decl[i];
        for (int k = 0; k < j->n; k++)
            if (same_stream(&j->streams[k].cfg, &decl[i]) && j->streams[k].state == JS_BOUND)
                fresh[i].state = JS_BOUND;
    }
    free(j->streams);
    j->streams = fresh;
    j->n = n;
    cluster_js_sync(j, 1);
}

/* Sends a question about s (INFO, or CREATE with body) and notes it. */
static void ask(cluster_js_t *j, js_stream_t *s, const char *verb, const char *body, enum js_state next)
{
    char subject[200], reply[200];
    snprintf(subject, sizeof subject, "$JS.API.STREAM.%s.%s", verb, s->cfg.name);
    /* The same question asked again keeps its reply subject: an answer
     * slower than JS_RETRY (a cluster busy electing leaders) still counts. */
    if (s->state != next || !s->token)
        s->token = ++j->next_token;
    snprintf(reply, sizeof reply, "%s.%u", j->inbox, s->token);
    s->asked = time(NULL);
    s->state = next;
    natsStatus st = natsConnection_PublishRequest(j->nc, subject, reply, body, body ? (int)strlen(body) : 0);
    if (st != NATS_OK) {
        s->state = JS_FAILED;
        snprintf(s->error, sizeof s->error, "cannot ask the JetStream API: %s", natsStatus_GetText(st));
    }
}

void cluster_js_sync(cluster_js_t *j, int force)
{
    time_t now = time(NULL);
    if (natsConnection_Status(j->nc) != NATS_CONN_STATUS_CONNECTED)
        return;
    for (int i = 0; i < j->n; i++) {
        js_stream_t *s = &j->streams[i];
        if (s->state == JS_BOUND || (!force && s->state != JS_IDLE && now - s->asked < JS_RETRY))
            continue;
        ask(j, s, "INFO", NULL, JS_ASKING);
    }
}

/* The stream's configuration for $JS.API.STREAM.CREATE, malloc'd (caller frees with cJSON_free). */
static char *create_body(const cluster_stream_t *c)
{
    cJSON *o = cJSON_CreateObject(), *subjects = cJSON_AddArrayToObject(o, "subjects");
    char *text = NULL;
    if (!o || !subjects)
        goto fail;
    cJSON_AddStringToObject(o, "name", c->name);
    for (int i = 0; i < c->nsubjects; i++)
        cJSON_AddItemToArray(subjects, cJSON_CreateString(c->subjects[i]));
    cJSON_AddStringToObject(o, "retention", "limits");
    cJSON_AddStringToObject(o, "storage", "file");
    cJSON_AddNumberToObject(o, "num_replicas", c->replicas);
    if (c->max_msgs)
        cJSON_AddNumberToObject(o, "max_msgs", (double)c->max_msgs);
    if (c->max_bytes)
        cJSON_AddNumberToObject(o, "max_bytes", (double)c->max_bytes);
    if (c->max_age > 0)
        cJSON_AddNumberToObject(o, "max_age", c->max_age * 1e9);
    text = cJSON_PrintUnformatted(o);
fail:
    cJSON_Delete(o);
    return text;
}

/* cfg's number member key, or dflt. */
static double number(const cJSON *cfg, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItem(cfg, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* A declared limit as JetStream says it: -1 for none. */
static double limit(int64_t v) { return v ? (double)v : -1; }

/* Whether an existing stream's config (INFO's "config") has the declared
 * subjects and replicas (limits 0), and the declared limits too (limits 1). */
static int same_config(const cluster_stream_t *c, const cJSON *cfg, int limits)
{
    const cJSON *subjects = cJSON_GetObjectItem(cfg, "subjects");
    int same = cJSON_GetArraySize(subjects) == c->nsubjects && (int)number(cfg, "num_replicas", 1) == c->replicas;
    for (int i = 0; same && i < c->nsubjects; i++) {
        int found = 0;
        const cJSON *s;
        cJSON_ArrayForEach(s, subjects) found |= cJSON_IsString(s) && !strcmp(s->valuestring, c->subjects[i]);
        same = found;
    }
    double age = number(cfg, "max_age", 0);
    if (!limits)
        return same;
    return same && number(cfg, "max_msgs", -1) == limit(c->max_msgs) &&
           number(cfg, "max_bytes", -1) == limit(c->max_bytes) &&
           (c->max_age > 0 ? age == c->max_age * 1e9 : age == 0);
}

/* The UPDATE that gives the existing stream (cfg, INFO's "config") the
 * declared subjects, replicas and limits, keeping the rest of its config
 * (malloc'd, caller frees with cJSON_free); NULL with why set when the
 * stream is not one tide would make (other storage or retention: such a
 * change is not an update JetStream takes) or out of memory. */
static char *update_body(const cluster_stream_t *c, const cJSON *cfg, char *why, size_t n)
{
    const char *storage = cJSON_GetStringValue(cJSON_GetObjectItem(cfg, "storage"));
    const char *retention = cJSON_GetStringValue(cJSON_GetObjectItem(cfg, "retention"));
    cJSON *o = NULL, *subjects = NULL;
    char *text = NULL;
    if (!storage || !retention || strcmp(storage, "file") || strcmp(retention, "limits")) {
        snprintf(why, n,
                 "exists in the cluster with other subjects, replicas or limits and %s storage, %s retention "
                 "(not file, limits): not updated, not bound",
                 storage ? storage : "unknown", retention ? retention : "unknown");
        return NULL;
    }
    if (!(o = cJSON_Duplicate(cfg, 1)) || !(subjects = cJSON_CreateArray()))
        goto fail;
    for (int i = 0; i < c->nsubjects; i++)
        cJSON_AddItemToArray(subjects, cJSON_CreateString(c->subjects[i]));
    cJSON_ReplaceItemInObject(o, "subjects", subjects);
    subjects = NULL;
    cJSON_DeleteItemFromObject(o, "num_replicas");
    cJSON_DeleteItemFromObject(o, "max_msgs");
    cJSON_DeleteItemFromObject(o, "max_bytes");
    cJSON_DeleteItemFromObject(o, "max_age");
    cJSON_AddNumberToObject(o, "num_replicas", c->replicas);
    cJSON_AddNumberToObject(o, "max_msgs", limit(c->max_msgs));
    cJSON_AddNumberToObject(o, "max_bytes", limit(c->max_bytes));
    cJSON_AddNumberToObject(o, "max_age", c->max_age > 0 ? c->max_age * 1e9 : 0);
    text = cJSON_PrintUnformatted(o);
fail:
    if (!text && !why[0])
        snprintf(why, n, "out of memory");
    cJSON_Delete(subjects);
    cJSON_Delete(o);
    return text;
}

static void fail(js_stream_t *s, const char *why)
{
    if (s->state != JS_FAILED || strcmp(s->error, why))
        log_error("cluster: stream '%s' (%s): %s", s->cfg.name, s->cfg.where, why);
    s->state = JS_FAILED;
    snprintf(s->error, sizeof s->error, "%s", why);
}

static void bound(js_stream_t *s, const char *how)
{
    s->state = JS_BOUND;
    s->error[0] = '\0';
    log_info("cluster: stream '%s' %s in the cluster's JetStream (%d replica%s)", s->cfg.name, how, s->cfg.replicas,
             s->cfg.replicas == 1 ? "" : "s");
}

/* An answer for s: INFO's or CREATE's. */
static void on_answer(cluster_js_t *j, js_stream_t *s, const cJSON *a)
{
    const cJSON *err = cJSON_GetObjectItem(a, "error");
    char why[300];
    if (err) {
        const cJSON *code = cJSON_GetObjectItem(err, "code");
        const char *desc = cJSON_GetStringValue(cJSON_GetObjectItem(err, "description"));
        if (s->state == JS_ASKING && cJSON_IsNumber(code) && code->valuedouble == 404) {
            char *body = create_body(&s->cfg);
            if (!body) {
                fail(s, "out of memory");
                return;
            }
            ask(j, s, "CREATE", body, JS_CREATING);
            cJSON_free(body);
            return;
        }
        snprintf(why, sizeof why, "%s: %s",
                 s->state == JS_UPDATING ? "the cluster refused to update it to the declared subjects, replicas "
                                           "and limits"
                                         : "the JetStream API answered",
                 desc ? desc : "an error");
        fail(s, why);
        return;
    }
    if (s->state == JS_CREATING || s->state == JS_UPDATING) {
        bound(s, s->state == JS_CREATING ? "created" : "updated to the declared config");
        return;
    }
    const cJSON *cfg = cJSON_GetObjectItem(a, "config");
    if (same_config(&s->cfg, cfg, 1)) {
        bound(s, "bound");
        return;
    }
    why[0] = '\0';
    char *body = update_body(&s->cfg, cfg, why, sizeof why);
    if (!body && same_config(&s->cfg, cfg, 0)) {
        bound(s, "bound (with its own limits)"); /* as before updates: the subjects and replicas decide */
        return;
    }
    if (!body) {
        fail(s, why);
        return;
    }
    log_info("cluster: stream '%s' exists in the cluster with another config: updating it to the declared one",
             s->cfg.name);
    ask(j, s, "UPDATE", body, JS_UPDATING);
    cJSON_free(body);
}

void cluster_js_answer(cluster_js_t *j, natsMsg *m)
{
    const char *subject = natsMsg_GetSubject(m), *dot = strrchr(subject, '.'), *status = NULL;
    unsigned token = dot ? (unsigned)strtoul(dot + 1, NULL, 10) : 0;
    js_stream_t *s = NULL;
    for (int i = 0; i < j->n; i++)
        if (j->streams[i].token == token && (j->streams[i].state == JS_ASKING || j->streams[i].state == JS_CREATING ||
                                             j->streams[i].state == JS_UPDATING))
            s = &j->streams[i];
    if (!s)
        return; /* an answer to a question asked again since, or about rules reloaded since */
    if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status && !strcmp(status, "503")) {
        fail(s, "the cluster has no JetStream (no responders on $JS.API)");
        return;
    }
    cJSON *a = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    if (!a) {
        fail(s, "the JetStream API's answer is not JSON");
        return;
    }
    on_answer(j, s, a);
    cJSON_Delete(a);
}

int cluster_js_ready(cluster_js_t *j, char *why, size_t n)
{
    for (int i = 0; i < j->n; i++) {
        js_stream_t *s = &j->streams[i];
        if (s->state != JS_BOUND) {
            snprintf(why, n, "jetstream stream '%s' is not bound yet (%s)%s%s", s->cfg.name, state_names[s->state],
                     s->error[0] ? ": " : "", s->error);
            return 0;
        }
    }
    return 1;
}

int cluster_js_bound(cluster_js_t *j, const char *name)
{
    for (int i = 0; i < j->n; i++)
        if (!strcmp(j->streams[i].cfg.name, name))
            return j->streams[i].state == JS_BOUND;
    return 0;
}

void cluster_js_status(cluster_js_t *j, cJSON *o)
{
    cJSON *arr = cJSON_AddArrayToObject(o, "streams");
    for (int i = 0; arr && i < j->n; i++) {
        cJSON *s = cJSON_CreateObject();
        if (!s)
            return;
        cJSON_AddStringToObject(s, "name", j->streams[i].cfg.name);
        cJSON_AddNumberToObject(s, "replicas", j->streams[i].cfg.replicas);
        cJSON_AddStringToObject(s, "state", state_names[j->streams[i].state]);
        cJSON_AddStringToObject(s, "error", j->streams[i].error);
        cJSON_AddItemToArray(arr, s);
    }
}
