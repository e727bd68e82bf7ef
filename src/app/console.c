/*
 * console.c - see console.h.
 *
 * The graph: one subject node per pattern a rule names (an upgrader's
 * event type counts as its pattern), and per pattern its rules in the
 * order the pipeline calls them: upgraders, filters and routes one after
 * the other, then the handlers side by side.  A stream hangs under the
 * subject node of its subjects, its consumers under it, and a consumer's
 * handlers and dead-letter subject under the consumer.  Every rule has an
 * edge to the scripts' dead-letter subject (a failed call sends the event
 * there).
 *
 * An edge's count is a counter that already exists: into a rule, its
 * calls; into a stream, its last sequence; into a consumer, its
 * deliveries; into a dead-letter subject, the errors of the rule or the
 * dead letters of the consumer it comes from.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/util.h>

#include "admin.h"
#include "console.h"
#include "dlq.h"
#include "json.h"
#include "json_int.h"
#include "util.h"

typedef struct sample {
    double t;     /* monotonic seconds */
    uint64_t sig; /* the graph's shape: a rate compares samples of one shape only */
    int n;
    uint64_t *count; /* per edge */
} sample_t;

/* One line of the reload history. */
typedef struct reload_note {
    char time[64]; /* RFC 3339 */
    uint64_t generation;
    int ok;
    char error[512];
} reload_note_t;

struct console {
    node_t *node;
    sub_t *answers;   /* <inbox>.>: answers of the admin verbs asked (console_admin) */
    char inbox[64];
    char *answer;     /* the answer of the verb being asked, malloc'd */
    size_t answer_len;
    reload_note_t reloads[CONSOLE_RELOADS]; /* a ring, oldest first from reload_first */
    int reload_first, nreloads;
    uint64_t seen_reloads, seen_failures; /* the script stats at the last note */
    sample_t s[CONSOLE_SAMPLES]; /* a ring, s[head] the newest */
    int head, filled;
    cJSON *edges; /* the newest sample's [{"from","to"}] */
    double asked; /* when /api/ was last asked (monotonic), 0: never */
};

/* A rule as script_foreach_rule shows it (its strings are the host's,
 * valid while the graph is built). */
typedef struct rule_row {
    script_rule_info_t r;
    int index; /* its place among the rules, as in /v1/rules */
    int done;
} rule_row_t;

typedef struct graph {
    node_t *node;
    int detail; /* counters, positions and errors on the nodes (/api/flow) */
    cJSON *nodes, *edges;
    uint64_t *count;
    int n, cap;
    uint64_t sig;
    rule_row_t *rules;
    int nrules, rcap;
    int lost; /* a rule could not be collected (out of memory) */
    cJSON *rules_doc; /* detail: /v1/rules, for the last errors */
} graph_t;

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t fnv(uint64_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return (h ^ 0xff) * 1099511628211ULL;
}

/* True when array a holds the string v. */
static int json_array_has(const cJSON *a, const char *v)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        if (cJSON_IsString(e) && !strcmp(e->valuestring, v))
            return 1;
    }
    return 0;
}

static char *print_owned(cJSON *doc, size_t *len)
{
    char *out = doc ? json_print(doc, len) : NULL;
    cJSON_Delete(doc);
    if (!out)
        *len = 0;
    return out;
}

/* ---- building the graph --------------------------------------------------------- */

/* The node called id, or a new one of kind and label; NULL when out of memory. */
static cJSON *graph_node(graph_t *g, const char *id, const char *kind, const char *label)
{
    cJSON *o;
    cJSON_ArrayForEach(o, g->nodes) {
        if (!strcmp(cJSON_GetObjectItemCaseSensitive(o, "id")->valuestring, id))
            return o;
    }
    o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "id", id) || !cJSON_AddStringToObject(o, "kind", kind) ||
        !cJSON_AddStringToObject(o, "label", label)) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddItemToArray(g->nodes, o);
    return o;
}

/* An edge from -> to whose events are counted by count.  0 or -1. */
static int graph_edge(graph_t *g, const char *from, const char *to, uint64_t count)
{
    if (g->n == g->cap) {
        int nc = g->cap ? g->cap * 2 : 16;
        uint64_t *na = realloc(g->count, (size_t)nc * sizeof *na);
        if (!na)
            return -1;
        g->count = na;
        g->cap = nc;
    }
    cJSON *e = cJSON_CreateObject();
    if (!e || !cJSON_AddStringToObject(e, "from", from) || !cJSON_AddStringToObject(e, "to", to)) {
        cJSON_Delete(e);
        return -1;
    }
    cJSON_AddItemToArray(g->edges, e);
    g->count[g->n++] = count;
    g->sig = fnv(fnv(g->sig, from), to);
    return 0;
}

static void rule_collect(void *ctx, const script_rule_info_t *r)
{
    graph_t *g = ctx;
    if (g->nrules == g->rcap) {
        int nc = g->rcap ? g->rcap * 2 : 16;
        rule_row_t *na = realloc(g->rules, (size_t)nc * sizeof *na);
        if (!na) {
            g->lost = 1;
            return;
        }
        g->rules = na;
        g->rcap = nc;
    }
    g->rules[g->nrules].r = *r;
    g->rules[g->nrules].index = g->nrules;
    g->rules[g->nrules].done = 0;
    g->nrules++;
}

static int stage_of(const script_rule_info_t *r)
{
    return !strcmp(r->kind, "upgrade") ? 0 : !strcmp(r->kind, "filter") ? 1 : !strcmp(r->kind, "route") ? 2 : 3;
}

/* The node of rule row w, with its counters when g->detail. */
static cJSON *rule_node(graph_t *g, const rule_row_t *w, char *id, size_t n)
{
    const script_rule_info_t *r = &w->r;
    char label[600];
    int handler = !strcmp(r->kind, "on");
    snprintf(id, n, "rule:%d", w->index);
    if (!strcmp(r->kind, "upgrade"))
        snprintf(label, sizeof label, "upgrade %s v%lld -> v%lld", r->pattern, (long long)r->from_version,
                 (long long)r->from_version + 1);
    else
        snprintf(label, sizeof label, "%s %s", handler ? "on" : r->kind, r->pattern);
    cJSON *o = graph_node(g, id, handler ? "handler" : r->kind, label);
    if (!o || !g->detail)
        return o;
    cJSON_AddStringToObject(o, handler || stage_of(r) ? "pattern" : "type", r->pattern);
    if (!strcmp(r->kind, "upgrade"))
        json_add_int(o, "from_version", r->from_version);
    if (r->consumer && r->consumer[0])
        cJSON_AddStringToObject(o, "consumer", r->consumer);
    cJSON_AddStringToObject(o, "where", r->where);
    json_add_uint(o, "calls", r->calls);
    json_add_uint(o, "errors", r->errors);
    if (stage_of(r) == 1 || stage_of(r) == 2)
        json_add_uint(o, "dropped", r->dropped);
    if (stage_of(r) == 2)
        json_add_uint(o, "routed", r->routed);
    cJSON *doc = cJSON_GetArrayItem(g->rules_doc, w->index);
    cJSON *err = doc ? cJSON_DetachItemFromObjectCaseSensitive(doc, "last_error") : NULL;
    if (err)
        cJSON_AddItemToObject(o, "last_error", err);
    return o;
}

/* The scripts' dead-letter subject, as a node: its id in id. */
static cJSON *script_dlq_node(graph_t *g, char *id, size_t n)
{
    char label[300];
    snprintf(label, sizeof label, "%s.>", script_dead_letter_prefix(g->node->scripts));
    snprintf(id, n, "dlq:%s", label);
    return graph_node(g, id, "dlq", label);
}

/* Every rule of the pattern of rules[first], in pipeline order, under its
 * subject node.  0 or -1. */
static int graph_pattern(graph_t *g, int first, const char *dlq)
{
    char sid[600], prev[600], rid[64];
    const char *pattern = g->rules[first].r.pattern;
    snprintf(sid, sizeof sid, "subject:%s", pattern);
    if (!graph_node(g, sid, "subject", pattern))
        return -1;
    snprintf(prev, sizeof prev, "%s", sid);
    for (int stage = 0; stage < 4; stage++) {
        for (int i = first; i < g->nrules; i++) {
            rule_row_t *w = &g->rules[i];
            if (w->done || strcmp(w->r.pattern, pattern) || stage_of(&w->r) != stage || w->r.consumer[0])
                continue;
            w->done = 1;
            if (!rule_node(g, w, rid, sizeof rid) || graph_edge(g, prev, rid, w->r.calls) < 0 ||
                graph_edge(g, rid, dlq, w->r.errors) < 0)
                return -1;
            if (stage < 3) /* handlers all take what the last of the others let through */
                snprintf(prev, sizeof prev, "%s", rid);
        }
    }
    return 0;
}

/* The rules: every pattern's chain, then the durable handlers (under
 * their consumers, see graph_consumer).  0 or -1. */
static int graph_rules(graph_t *g)
{
    char dlq[320];
    if (!g->node->scripts)
        return 0;
    script_foreach_rule(g->node->scripts, rule_collect, g);
    if (g->lost)
        return -1;
    if (!g->nrules)
        return 0;
    if (!script_dlq_node(g, dlq, sizeof dlq))
        return -1;
    for (int i = 0; i < g->nrules; i++)
        if (!g->rules[i].done && !g->rules[i].r.consumer[0] && graph_pattern(g, i, dlq) < 0)
            return -1;
    return 0;
}

/* The messages stored for subject (a dead-letter subject or pattern): those
 * of the first stream whose subjects overlap it, with its name in *stream. */
static uint64_t dlq_depth(streams_t *sm, const char *subject, const char **stream)
{
    stream_info_t si;
    for (int i = 0; sm && i < streams_count(sm); i++) {
        if (!streams_stream_info(sm, NULL, i, &si))
            continue;
        for (int k = 0; k < si.cfg->nsubjects; k++)
            if (streams_patterns_overlap(si.cfg->subjects[k], subject)) {
                *stream = si.cfg->name;
                return si.log.msgs;
            }
    }
    *stream = NULL;
    return 0;
}

/* A dead-letter node's depth and stream, for /api/flow. */
static void dlq_detail(graph_t *g, cJSON *o, const char *subject)
{
    const char *stream = NULL;
    uint64_t depth = dlq_depth(g->node->streams, subject, &stream);
    if (!g->detail || cJSON_GetObjectItemCaseSensitive(o, "depth"))
        return;
    json_add_uint(o, "depth", depth);
    if (stream)
        cJSON_AddStringToObject(o, "stream", stream);
}

/* Consumer ci of a stream (its id in sid) with its handlers and its
 * dead-letter subject.  0 or -1. */
static int graph_consumer(graph_t *g, const char *stream_id, const consumer_info_t *ci)
{
    char id[STREAM_NAME_MAX * 2 + 16], did[300], rid[64];
    snprintf(id, sizeof id, "consumer:%s/%s", ci->cfg->stream, ci->cfg->name);
    cJSON *o = graph_node(g, id, "consumer", ci->cfg->name);
    if (!o || graph_edge(g, stream_id, id, ci->delivered) < 0)
        return -1;
    if (g->detail) {
        cJSON_AddStringToObject(o, "stream", ci->cfg->stream);
        if (ci->cfg->filter[0])
            cJSON_AddStringToObject(o, "filter", ci->cfg->filter);
        if (ci->cfg->deliver[0])
            cJSON_AddStringToObject(o, "deliver", ci->cfg->deliver);
        json_add_uint(o, "pending", ci->pending);
        json_add_uint(o, "in_flight", ci->in_flight);
        json_add_uint(o, "delivered", ci->delivered);
        json_add_uint(o, "redelivered", ci->redelivered);
        json_add_uint(o, "acked", ci->acked);
        json_add_uint(o, "dead_lettered", ci->dead_lettered);
    }
    for (int i = 0; i < g->nrules; i++) {
        rule_row_t *w = &g->rules[i];
        if (w->done || strcmp(w->r.consumer, ci->cfg->name))
            continue;
        w->done = 1;
        if (!rule_node(g, w, rid, sizeof rid) || graph_edge(g, id, rid, w->r.calls) < 0)
            return -1;
    }
    if (!ci->cfg->dead_letter[0])
        return 0;
    snprintf(did, sizeof did, "dlq:%s", ci->cfg->dead_letter);
    cJSON *d = graph_node(g, did, "dlq", ci->cfg->dead_letter);
    if (!d || graph_edge(g, id, did, ci->dead_lettered) < 0)
        return -1;
    dlq_detail(g, d, ci->cfg->dead_letter);
    return 0;
}

/* Stream si under the subject node of its subjects, with its consumers. */
static int graph_stream(graph_t *g, const stream_info_t *si)
{
    char id[STREAM_NAME_MAX + 8], label[STREAM_SUBJECTS_MAX * 260], sid[sizeof label + 16];
    size_t o = 0;
    label[0] = 0;
    for (int k = 0; k < si->cfg->nsubjects && o < sizeof label; k++)
        o += (size_t)snprintf(label + o, sizeof label - o, "%s%s", k ? " " : "", si->cfg->subjects[k]);
    /* The stream of the scripts' dead letters hangs under their node. */
    char dead_label[300];
    snprintf(dead_label, sizeof dead_label, "%s.>", script_dead_letter_prefix(g->node->scripts));
    int dead = g->nrules && !strcmp(label, dead_label);
    snprintf(sid, sizeof sid, "dlq:%s", label);
    if (!dead)
        snprintf(sid, sizeof sid, "subject:%s", label);
    snprintf(id, sizeof id, "stream:%s", si->cfg->name);
    cJSON *s = graph_node(g, id, "stream", si->cfg->name);
    if (!s || !graph_node(g, sid, dead ? "dlq" : "subject", label) || graph_edge(g, sid, id, si->log.last_seq) < 0)
        return -1;
    if (g->detail) {
        json_add_uint(s, "messages", si->log.msgs);
        json_add_uint(s, "bytes", si->log.bytes);
        json_add_uint(s, "first_seq", si->log.first_seq);
        json_add_uint(s, "last_seq", si->log.last_seq);
        cJSON_AddBoolToObject(s, "failed", si->log.failed);
    }
    consumer_info_t ci;
    for (int i = 0; i < si->nconsumers; i++)
        if (streams_consumer_info(g->node->streams, si->cfg->name, i, &ci) && graph_consumer(g, id, &ci) < 0)
            return -1;
    return 0;
}

/* Durable handlers whose consumer is not running (no streams): under the
 * subject node of their pattern.  0 or -1. */
static int graph_unbound(graph_t *g)
{
    char sid[600], rid[64];
    for (int i = 0; i < g->nrules; i++) {
        rule_row_t *w = &g->rules[i];
        if (w->done)
            continue;
        w->done = 1;
        snprintf(sid, sizeof sid, "subject:%s", w->r.pattern);
        if (!graph_node(g, sid, "subject", w->r.pattern) || !rule_node(g, w, rid, sizeof rid) ||
            graph_edge(g, sid, rid, w->r.calls) < 0)
            return -1;
    }
    return 0;
}

/* The graph of the node as it is now, in g (graph_clear frees it).  0 or -1. */
static int graph_build(graph_t *g, node_t *node, int detail)
{
    char dlq[320];
    memset(g, 0, sizeof *g);
    g->node = node;
    g->detail = detail;
    g->sig = 14695981039346656037ULL;
    g->nodes = cJSON_CreateArray();
    g->edges = cJSON_CreateArray();
    if (!g->nodes || !g->edges)
        return -1;
    if (detail && node->scripts) {
        char *rules = NULL;
        size_t len = 0;
        script_rules_json(node->scripts, &rules, &len);
        g->rules_doc = rules ? cJSON_ParseWithLength(rules, len) : NULL;
        free(rules);
    }
    if (node->scripts) {
        script_stats_t st;
        script_get_stats(node->scripts, &st);
        g->sig ^= st.generation;
    }
    if (graph_rules(g) < 0)
        return -1;
    stream_info_t si;
    for (int i = 0; node->streams && i < streams_count(node->streams); i++)
        if (streams_stream_info(node->streams, NULL, i, &si) && graph_stream(g, &si) < 0)
            return -1;
    if (graph_unbound(g) < 0)
        return -1;
    if (g->nrules && detail) {
        cJSON *d = script_dlq_node(g, dlq, sizeof dlq);
        if (d)
            dlq_detail(g, d, cJSON_GetObjectItemCaseSensitive(d, "label")->valuestring);
    }
    return 0;
}

static void graph_clear(graph_t *g)
{
    cJSON_Delete(g->nodes);
    cJSON_Delete(g->edges);
    cJSON_Delete(g->rules_doc);
    free(g->count);
    free(g->rules);
    memset(g, 0, sizeof *g);
}

/* ---- sampling -------------------------------------------------------------------- */

/* Takes a sample: the counts of the graph's edges now, as the newest. */
static void console_sample(console_t *c)
{
    graph_t g;
    if (graph_build(&g, c->node, 0) < 0)
        goto done;
    int next = c->filled ? (c->head + 1) % CONSOLE_SAMPLES : 0;
    sample_t *s = &c->s[next];
    free(s->count);
    s->count = g.count; /* the sample takes the counts */
    g.count = NULL;
    s->n = g.n;
    s->sig = g.sig;
    s->t = now_mono();
    c->head = next;
    if (c->filled < CONSOLE_SAMPLES)
        c->filled++;
    cJSON_Delete(c->edges);
    c->edges = g.edges;
    g.edges = NULL;
done:
    graph_clear(&g);
}

/* Events a second on edge e of a graph of shape sig, over the oldest
 * sample of that shape to the newest; 0 without two such samples. */
static double edge_rate(const console_t *c, uint64_t sig, int e)
{
    const sample_t *new = &c->s[c->head], *old = NULL;
    if (!c->filled || new->sig != sig || e >= new->n)
        return 0;
    for (int k = 1; k < c->filled; k++) {
        const sample_t *s = &c->s[(c->head - k + CONSOLE_SAMPLES) % CONSOLE_SAMPLES];
        if (s->sig != sig || s->n != new->n)
            break;
        old = s;
    }
    if (!old || new->t <= old->t || new->count[e] < old->count[e])
        return 0; /* a counter that went back (a stream made anew) says nothing */
    double r = (double)(new->count[e] - old->count[e]) / (new->t - old->t);
    return (double)(int64_t)(r * 100 + 0.5) / 100;
}

/* The console is in use: sampling goes on; a first sample now if it had
 * stopped, so that the next one gives a rate. */
static void console_touch(console_t *c)
{
    double now = now_mono();
    int idle = !c->asked || now - c->asked > CONSOLE_IDLE_SECONDS;
    c->asked = now;
    if (idle) {
        c->filled = 0;
        console_sample(c);
    }
}

/* Adds a line to the reload history (the oldest goes when it is full). */
static void reload_note(console_t *c, uint64_t generation, int ok, const char *error)
{
    int i = (c->reload_first + c->nreloads) % CONSOLE_RELOADS;
    if (c->nreloads == CONSOLE_RELOADS)
        c->reload_first = (c->reload_first + 1) % CONSOLE_RELOADS;
    else
        c->nreloads++;
    reload_note_t *r = &c->reloads[i];
    util_now_rfc3339(r->time);
    r->generation = generation;
    r->ok = ok;
    snprintf(r->error, sizeof r->error, "%s", ok ? "" : error);
}

/* Notes the reloads (and failed ones) since the last look. */
static void reload_watch(console_t *c)
{
    script_stats_t st;
    if (!c->node->scripts)
        return;
    script_get_stats(c->node->scripts, &st);
    if (st.reload_failures > c->seen_failures)
        reload_note(c, st.generation, 0, st.last_reload);
    if (st.reloads > c->seen_reloads)
        reload_note(c, st.generation, 1, "");
    c->seen_failures = st.reload_failures;
    c->seen_reloads = st.reloads;
}

void console_tick(console_t *c)
{
    if (!c)
        return;
    reload_watch(c);
    if (c->asked && now_mono() - c->asked <= CONSOLE_IDLE_SECONDS)
        console_sample(c);
}

char *console_reloads_json(console_t *c, size_t *len)
{
    cJSON *doc = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(doc, "reloads");
    script_stats_t st;
    memset(&st, 0, sizeof st);
    reload_watch(c);
    if (c->node->scripts)
        script_get_stats(c->node->scripts, &st);
    json_add_uint(doc, "generation", st.generation);
    for (int k = 0; a && k < c->nreloads; k++) {
        const reload_note_t *r = &c->reloads[(c->reload_first + k) % CONSOLE_RELOADS];
        cJSON *o = cJSON_CreateObject();
        if (!o)
            break;
        cJSON_AddStringToObject(o, "time", r->time);
        json_add_uint(o, "generation", r->generation);
        cJSON_AddBoolToObject(o, "ok", r->ok);
        if (!r->ok)
            cJSON_AddStringToObject(o, "error", r->error);
        cJSON_AddItemToArray(a, o);
    }
    return print_owned(doc, len);
}

/* ---- a rule's source ------------------------------------------------------------------- */

typedef struct rule_pick {
    int want, at;
    char where[200];
} rule_pick_t;

static void rule_pick(void *ctx, const script_rule_info_t *r)
{
    rule_pick_t *p = ctx;
    if (p->at++ == p->want)
        snprintf(p->where, sizeof p->where, "%s", r->where);
}

/* Lines first .. last of the file at path (1-based), into lines. */
static int read_lines(const char *path, int first, int last, cJSON *lines)
{
    FILE *f = fopen(path, "r");
    char buf[CONSOLE_SOURCE_LINE];
    int n = 1;
    if (!f)
        return -1;
    while (n <= last && fgets(buf, sizeof buf, f)) {
        size_t l = strlen(buf);
        int whole = l && buf[l - 1] == '\n';
        if (whole)
            buf[--l] = 0;
        if (n >= first)
            cJSON_AddItemToArray(lines, cJSON_CreateString(buf));
        if (!whole) { /* a line longer than the buffer: the rest is skipped */
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n')
                ;
        }
        n++;
    }
    fclose(f);
    return 0;
}

char *console_source_json(console_t *c, int rule, size_t *len)
{
    rule_pick_t p = {rule, 0, ""};
    char path[4400];
    *len = 0;
    if (!c->node->scripts || rule < 0)
        return NULL;
    script_foreach_rule(c->node->scripts, rule_pick, &p);
    char *colon = strrchr(p.where, ':');
    if (!p.where[0] || !colon)
        return NULL;
    *colon = 0;
    int line = atoi(colon + 1);
    if (p.where[0] == '/')
        snprintf(path, sizeof path, "%s", p.where);
    else
        snprintf(path, sizeof path, "%s/%s", script_config_dir(c->node->scripts), p.where);
    int first = line > CONSOLE_SOURCE_BEFORE ? line - CONSOLE_SOURCE_BEFORE : 1;
    cJSON *doc = cJSON_CreateObject(), *lines = cJSON_CreateArray();
    *colon = ':';
    cJSON_AddStringToObject(doc, "where", p.where);
    json_add_int(doc, "line", line);
    json_add_int(doc, "first_line", first);
    if (read_lines(path, first, line + CONSOLE_SOURCE_AFTER, lines) < 0) {
        cJSON_Delete(lines);
        cJSON_AddStringToObject(doc, "error", "the file cannot be read now");
    } else {
        cJSON_AddItemToObject(doc, "lines", lines);
    }
    return print_owned(doc, len);
}

/* ---- the streams' admin verbs ------------------------------------------------------- */

static void on_answer(void *ctx, const proto_msg_t *m)
{
    console_t *c = ctx;
    free(c->answer);
    c->answer = util_mem_dup(m->payload, m->payload_len);
    c->answer_len = c->answer ? m->payload_len : 0;
}

char *console_admin(console_t *c, const char *verb, const char *payload, size_t plen, size_t *len)
{
    char subject[128];
    proto_msg_t m;
    *len = 0;
    if (!c->node->streams || !c->answers)
        return NULL;
    snprintf(subject, sizeof subject, "$TIDE.ADMIN.%s", verb);
    memset(&m, 0, sizeof m);
    m.subject = subject;
    m.subject_len = strlen(subject);
    m.reply = c->inbox;
    m.reply_len = strlen(c->inbox);
    m.payload = payload;
    m.payload_len = plen;
    free(c->answer);
    c->answer = NULL;
    streams_admin(c->node->streams, verb, strlen(verb), &m); /* answers at once, through on_answer */
    char *out = c->answer;
    *len = c->answer_len;
    c->answer = NULL;
    return out;
}

char *console_rules(console_t *c, const char *verb, const char *user, const char *payload, size_t plen, size_t *len)
{
    proto_msg_t m;
    char subject[128];
    *len = 0;
    if (!c->answers)
        return NULL;
    snprintf(subject, sizeof subject, "$TIDE.ADMIN.%s", verb);
    memset(&m, 0, sizeof m);
    m.subject = subject;
    m.subject_len = strlen(subject);
    m.reply = c->inbox;
    m.reply_len = strlen(c->inbox);
    m.payload = payload;
    m.payload_len = plen;
    free(c->answer);
    c->answer = NULL;
    if (admin_rules_request(c->node, user, verb, &m) < 0) /* answers at once, through on_answer */
        return NULL;
    char *out = c->answer;
    *len = c->answer_len;
    c->answer = NULL;
    return out;
}

/* ---- starting a shadow or a canary ---------------------------------------------------- */

/* Member key of doc as a number in *out: 0, 1 when it is absent, -1 when
 * it is not a number. */
static int number_member(const cJSON *doc, const char *key, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, key);
    char *end = NULL;
    if (!v)
        return 1;
    if (!json_is_number(v))
        return -1;
    *out = cJSON_IsNumber(v) ? v->valuedouble : strtod(v->valuestring, &end); /* json_parse keeps the text */
    return end && *end ? -1 : 0;
}

/* True for a key the canary can hash: words of letters, digits and _
 * joined by dots ("id", "data.customer_id"). */
static int canary_key_ok(const char *k)
{
    size_t n = strlen(k);
    if (!n || n > CONSOLE_CANARY_KEY_MAX || k[0] == '.' || k[n - 1] == '.' || strstr(k, ".."))
        return 0;
    for (; *k; k++)
        if (!(*k == '.' || *k == '_' || (*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || (*k >= '0' && *k <= '9')))
            return 0;
    return 1;
}

/* The candidate's path into q: absolute, or taken from the entry file's
 * directory.  0, or -1 with err. */
static int candidate_path(console_t *c, const cJSON *p, cJSON *q, char *err, size_t errsz)
{
    char full[4200];
    if (!cJSON_IsString(p) || !p->valuestring[0] || strlen(p->valuestring) >= 4096) {
        snprintf(err, errsz, "\"path\" must be the candidate's entry file or directory on the node (a string, "
                             "at most 4095 bytes; relative: from the entry file's directory)");
        return -1;
    }
    if (p->valuestring[0] == '/' || !c->node->scripts)
        snprintf(full, sizeof full, "%s", p->valuestring);
    else
        snprintf(full, sizeof full, "%s/%s", script_config_dir(c->node->scripts), p->valuestring);
    return cJSON_AddStringToObject(q, "path", full) ? 0 : -1;
}

/* A canary's settings from doc into q.  0, or -1 with err. */
static int canary_settings(const cJSON *doc, cJSON *q, char *err, size_t errsz)
{
    double percent = -1, rate = 0.01, window = 60;
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(doc, "key");
    int starts = cJSON_GetObjectItemCaseSensitive(doc, "path") != NULL;
    if (number_member(doc, "percent", &percent) || percent < 0 || percent > 100) {
        snprintf(err, errsz, "\"percent\" must be a number from 0 to 100 (100 finishes the canary)");
        return -1;
    }
    if (!starts && (k || cJSON_GetObjectItemCaseSensitive(doc, "max_error_rate") ||
                    cJSON_GetObjectItemCaseSensitive(doc, "window"))) {
        snprintf(err, errsz, "\"key\", \"max_error_rate\" and \"window\" are set when a canary starts, with its \"path\"");
        return -1;
    }
    if (k && (!cJSON_IsString(k) || !canary_key_ok(k->valuestring))) {
        snprintf(err, errsz, "\"key\" must be a dotted path into the event (\"id\", \"data.customer_id\"), at most %d bytes",
                 CONSOLE_CANARY_KEY_MAX);
        return -1;
    }
    if (number_member(doc, "max_error_rate", &rate) < 0 || rate < 0 || rate > 1) {
        snprintf(err, errsz, "\"max_error_rate\" must be a fraction from 0 to 1 (0.01 is one percentage point)");
        return -1;
    }
    if (number_member(doc, "window", &window) < 0 || !(window > 0) || window > 86400) {
        snprintf(err, errsz, "\"window\" must be a number of seconds over 0, at most 86400");
        return -1;
    }
    cJSON_AddNumberToObject(q, "percent", percent);
    if (!starts)
        return 0;
    if (k)
        cJSON_AddStringToObject(q, "key", k->valuestring);
    cJSON_AddNumberToObject(q, "max_error_rate", rate);
    cJSON_AddNumberToObject(q, "window", window);
    return 0;
}

char *console_candidate_request(console_t *c, const char *what, const cJSON *doc, char *err, size_t errsz)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(doc, "path");
    int canary = !strcmp(what, "canary");
    char *out = NULL;
    size_t len = 0;
    cJSON *q = cJSON_CreateObject();
    snprintf(err, errsz, "out of memory");
    if (!q)
        return NULL;
    if ((p || !canary) && candidate_path(c, p, q, err, errsz) < 0)
        goto done;
    if (canary && canary_settings(doc, q, err, errsz) < 0)
        goto done;
    out = json_print(q, &len);
done:
    cJSON_Delete(q);
    return out;
}

/* The names of the streams that store dead letters: those DLQ.LS names,
 * then the one that stores the scripts'. */
static cJSON *dead_letter_streams(console_t *c)
{
    size_t len;
    char *ls = console_admin(c, "DLQ.LS", "", 0, &len), pattern[300];
    cJSON *doc = ls ? cJSON_ParseWithLength(ls, len) : NULL, *e, *out = cJSON_CreateArray();
    free(ls);
    cJSON_ArrayForEach(e, doc) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(e, "dlq_stream");
        if (cJSON_IsString(s) && !json_array_has(out, s->valuestring))
            cJSON_AddItemToArray(out, cJSON_CreateString(s->valuestring));
    }
    cJSON_Delete(doc);
    const char *stream = NULL;
    snprintf(pattern, sizeof pattern, "%s.>", script_dead_letter_prefix(c->node->scripts));
    dlq_depth(c->node->streams, pattern, &stream);
    if (stream && out && !json_array_has(out, stream))
        cJSON_AddItemToArray(out, cJSON_CreateString(stream));
    return out;
}

char *console_streams_json(console_t *c, size_t *len)
{
    streams_t *sm = c->node->streams;
    size_t sl = 0, cl = 0;
    char *st = sm ? streams_json(sm, &sl) : NULL, *cs = sm ? streams_consumers_json(sm, &cl) : NULL;
    cJSON *doc = cJSON_CreateObject();
    cJSON *streams = st ? cJSON_ParseWithLength(st, sl) : cJSON_CreateArray();
    cJSON *consumers = cs ? cJSON_ParseWithLength(cs, cl) : cJSON_CreateArray();
    free(st);
    free(cs);
    cJSON_AddItemToObject(doc, "streams", streams ? streams : cJSON_CreateArray());
    cJSON_AddItemToObject(doc, "consumers", consumers ? consumers : cJSON_CreateArray());
    cJSON_AddItemToObject(doc, "dead_letter_streams", sm ? dead_letter_streams(c) : cJSON_CreateArray());
    return print_owned(doc, len);
}

/* Puts each edge's rate into edges (a graph of shape sig). */
static void add_rates(const console_t *c, cJSON *edges, uint64_t sig)
{
    int i = 0;
    cJSON *e;
    cJSON_ArrayForEach(e, edges) {
        cJSON_DeleteItemFromObjectCaseSensitive(e, "rate");
        cJSON_AddNumberToObject(e, "rate", edge_rate(c, sig, i++));
    }
}

char *console_rates_json(console_t *c, size_t *len)
{
    console_touch(c);
    cJSON *doc = cJSON_CreateObject(), *edges = c->edges ? cJSON_Duplicate(c->edges, 1) : cJSON_CreateArray();
    if (!doc || !edges) {
        cJSON_Delete(edges);
        cJSON_Delete(doc);
        *len = 0;
        return NULL;
    }
    add_rates(c, edges, c->s[c->head].sig);
    cJSON_AddItemToObject(doc, "edges", edges);
    return print_owned(doc, len);
}

char *console_flow_json(console_t *c, size_t *len)
{
    graph_t g;
    cJSON *doc = NULL;
    console_touch(c);
    if (graph_build(&g, c->node, 1) < 0 || !(doc = cJSON_CreateObject()))
        goto fail;
    script_stats_t st;
    memset(&st, 0, sizeof st);
    if (c->node->scripts)
        script_get_stats(c->node->scripts, &st);
    json_add_uint(doc, "generation", st.generation);
    add_rates(c, g.edges, g.sig);
    cJSON_AddItemToObject(doc, "nodes", g.nodes);
    cJSON_AddItemToObject(doc, "edges", g.edges);
    g.nodes = g.edges = NULL;
    graph_clear(&g);
    return print_owned(doc, len);
fail:
    graph_clear(&g);
    cJSON_Delete(doc);
    *len = 0;
    return NULL;
}

/* ---- life --------------------------------------------------------------------------- */

console_t *console_new(node_t *node)
{
    console_t *c = calloc(1, sizeof *c);
    unsigned char rnd[8];
    char pattern[sizeof c->inbox + 4];
    if (!c)
        return NULL;
    c->node = node;
    /* Answers come to a subject of the server's inboxes: no client can
     * publish there. */
    evutil_secure_rng_get_bytes(rnd, sizeof rnd);
    snprintf(c->inbox, sizeof c->inbox, SERVER_INBOX_PREFIX "CONSOLE.%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    snprintf(pattern, sizeof pattern, "%s", c->inbox);
    if (!(c->answers = server_subscribe_internal(node->srv, pattern, on_answer, c)))
        goto fail;
    if (node->scripts) {
        script_stats_t st;
        script_get_stats(node->scripts, &st);
        c->seen_reloads = st.reloads;
        c->seen_failures = st.reload_failures;
        reload_note(c, st.generation, 1, ""); /* the state serving when the console starts */
    }
    return c;
fail:
    console_free(c);
    return NULL;
}

void console_free(console_t *c)
{
    if (!c)
        return;
    if (c->answers)
        server_unsubscribe_internal(c->node->srv, c->answers);
    for (int i = 0; i < CONSOLE_SAMPLES; i++)
        free(c->s[i].count);
    cJSON_Delete(c->edges);
    free(c->answer);
    free(c);
}
