/* cluster_js.c - JetStream-backed streams in cluster mode; see cluster_js.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_js.h"
#include "log.h"

enum js_state { JS_IDLE, JS_ASKING, JS_CREATING, JS_BOUND, JS_FAILED };

static const char *const state_names[] = {"waiting", "asking", "creating", "bound", "failed"};

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

/* Whether an existing stream's config (INFO's "config") has the declared
 * subjects and replicas; else why not into why. */
static int compatible(const cluster_stream_t *c, const cJSON *cfg, char *why, size_t n)
{
    const cJSON *subjects = cJSON_GetObjectItem(cfg, "subjects");
    const cJSON *reps = cJSON_GetObjectItem(cfg, "num_replicas");
    int have = cJSON_GetArraySize(subjects), r = cJSON_IsNumber(reps) ? (int)reps->valuedouble : 1;
    int same = have == c->nsubjects && r == c->replicas;
    for (int i = 0; same && i < c->nsubjects; i++) {
        int found = 0;
        const cJSON *s;
        cJSON_ArrayForEach(s, subjects) found |= cJSON_IsString(s) && !strcmp(s->valuestring, c->subjects[i]);
        same = found;
    }
    if (!same)
        snprintf(why, n, "exists in the cluster with other subjects or replicas (%d subjects, %d replicas): not bound",
                 have, r);
    return same;
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
        snprintf(why, sizeof why, "the JetStream API answered: %s", desc ? desc : "an error");
        fail(s, why);
        return;
    }
    if (s->state == JS_CREATING) {
        bound(s, "created");
        return;
    }
    if (!compatible(&s->cfg, cJSON_GetObjectItem(a, "config"), why, sizeof why)) {
        fail(s, why);
        return;
    }
    bound(s, "bound");
}

void cluster_js_answer(cluster_js_t *j, natsMsg *m)
{
    const char *subject = natsMsg_GetSubject(m), *dot = strrchr(subject, '.'), *status = NULL;
    unsigned token = dot ? (unsigned)strtoul(dot + 1, NULL, 10) : 0;
    js_stream_t *s = NULL;
    for (int i = 0; i < j->n; i++)
        if (j->streams[i].token == token && (j->streams[i].state == JS_ASKING || j->streams[i].state == JS_CREATING))
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
