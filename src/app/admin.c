/* admin.c - see admin.h.  Each verb is one function and one row of the
 * table; what a verb needs of the node it reaches through node_t. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "client.h"
#include "cluster.h"
#include "history.h"
#include "json.h"
#include "json_int.h"
#include "repl.h"
#include "util.h"

#define ADMIN_PREFIX "$TIDE.ADMIN."

/* Answers {"ok":false,"error":msg}. */
static void reply_error(node_t *n, const proto_msg_t *m, const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 0);
    cJSON_AddStringToObject(o, "error", msg);
    char *p = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (p)
        server_reply(n->srv, m, p, strlen(p));
    cJSON_free(p);
}

/* Answers with malloc'd json (freed here), or an out-of-memory error. */
static void reply_owned(node_t *n, const proto_msg_t *m, char *json, size_t len)
{
    if (!json) {
        reply_error(n, m, "out of memory");
        return;
    }
    server_reply(n->srv, m, json, len);
    free(json);
}

char *admin_stats_json(node_t *n, size_t *len)
{
    script_stats_t st;
    memset(&st, 0, sizeof st);
    if (n->scripts)
        script_get_stats(n->scripts, &st);
    cJSON *o = server_stats_object(n->srv), *sc = cJSON_CreateObject();
    char *out = NULL;
    *len = 0;
    if (!o || !sc)
        goto done;
#define NUM(k, v) json_add_uint(sc, k, (uint64_t)(v))
    cJSON_AddBoolToObject(sc, "loaded", n->scripts != NULL);
    NUM("generation", st.generation);
    NUM("rules", st.rules);
    NUM("events", st.events);
    NUM("bypassed", st.bypassed);
    NUM("dropped", st.dropped);
    NUM("dead_letters", st.dead_letters);
    NUM("dead_letters_lost", st.dead_letters_lost);
    NUM("errors", st.errors);
    NUM("budget_stops", st.budget_stops);
    NUM("emitted", st.emitted);
    NUM("loops_stopped", st.loops_stopped);
    NUM("reloads", st.reloads);
    NUM("reload_failures", st.reload_failures);
    cJSON_AddStringToObject(sc, "last_reload", st.last_reload);
    NUM("memory", st.memory);
    NUM("decodes", st.decodes);
    NUM("spliced", st.spliced);
    NUM("reencoded", st.reencoded);
#undef NUM
    cJSON_AddItemToObject(o, "scripts", sc);
    sc = NULL;
    char *p = cJSON_PrintUnformatted(o);
    if (p) {
        out = util_mem_dup(p, strlen(p));
        *len = out ? strlen(out) : 0;
        cJSON_free(p);
    }
done:
    cJSON_Delete(sc);
    cJSON_Delete(o);
    return out;
}

/* Who sent an admin request, for the rule history: its user ("" for
 * none), copied into out (a reload applies the new auth { } to live
 * clients, which may free the client's own copy). */
static const char *admin_identity(const client_t *from, char *out, size_t n)
{
    snprintf(out, n, "%s", from && from->user ? from->user : "");
    return out;
}

static void verb_reload(node_t *n, client_t *from, const proto_msg_t *m)
{
    char err[1024], buf[128], who[128];
    if (!n->scripts) {
        reply_error(n, m, "no scripts are loaded (start with -c)");
        return;
    }
    if (n->history)
        history_set_by(n->history, admin_identity(from, who, sizeof who));
    int rc = script_reload(n->scripts, "admin request", err, sizeof err);
    if (n->history)
        history_set_by(n->history, NULL);
    if (rc < 0) {
        reply_error(n, m, err);
        return;
    }
    script_stats_t st;
    script_get_stats(n->scripts, &st);
    int len = snprintf(buf, sizeof buf, "{\"ok\":true,\"generation\":%llu,\"rules\":%d}",
                       (unsigned long long)st.generation, st.rules);
    server_reply(n->srv, m, buf, (size_t)len);
}

static void verb_stats(node_t *n, client_t *from, const proto_msg_t *m)
{
    size_t len;
    (void)from;
    char *json = admin_stats_json(n, &len);
    reply_owned(n, m, json, len);
}

/* tide repl --connect: runs code on this node, so it is off unless the
 * config says admin { eval = true }, and loopback only. */
static void verb_eval(node_t *n, client_t *from, const proto_msg_t *m)
{
    char *json = NULL;
    size_t len = 0;
    if (!n->scripts || !script_admin_eval(n->scripts))
        reply_error(n, m, "remote evaluation is off: set admin { eval = true } in the config to allow tide repl "
                          "--connect");
    else if (!server_client_is_loopback(from))
        reply_error(n, m, "remote evaluation is only for loopback clients");
    else if (script_is_processing(n->scripts))
        reply_error(n, m, "busy");
    else if (repl_remote_eval(n, from, m->payload, m->payload_len, &json, &len) == 0)
        reply_owned(n, m, json, len);
    else
        reply_error(n, m, "out of memory");
}

/* tide repl --connect leaving: its connection is out of the session (which
 * ends when it was the last); closing the connection does the same. */
static void verb_eval_end(node_t *n, client_t *from, const proto_msg_t *m)
{
    const char *ended = "{\"ok\":true,\"ended\":true}", *stays = "{\"ok\":true,\"ended\":false}";
    if (!from)
        reply_error(n, m, "only a connection can leave a session");
    else if (n->scripts && script_is_processing(n->scripts))
        reply_error(n, m, "busy");
    else if (repl_remote_detach(n, from))
        server_reply(n->srv, m, ended, strlen(ended));
    else
        server_reply(n->srv, m, stays, strlen(stays));
}

static void verb_rules(node_t *n, client_t *from, const proto_msg_t *m)
{
    char *json = NULL;
    size_t len = 0;
    (void)from;
    if (n->scripts)
        script_rules_json(n->scripts, &json, &len);
    if (json)
        reply_owned(n, m, json, len);
    else
        server_reply(n->srv, m, "[]", 2);
}

static void verb_rules_history(node_t *n, client_t *from, const proto_msg_t *m)
{
    size_t len = 0;
    (void)from;
    char *json = n->history ? history_json(n->history, &len) : NULL;
    if (!n->history)
        reply_error(n, m, "no rule history: no scripts are loaded (start with -c)");
    else
        reply_owned(n, m, json, len);
}

/* {"rev":N} (optional: the revision before the live one) -> {"ok":true,
 * "live":N,"from":M}. */
static void verb_rules_rollback(node_t *n, client_t *from, const proto_msg_t *m)
{
    char err[1024], buf[128], who[128];
    uint64_t rev = 0, live, was;
    cJSON *q = m->payload_len ? json_parse_owned(m->payload, m->payload_len) : NULL;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(q, "rev");
    if (!n->history) {
        reply_error(n, m, "no rule history: no scripts are loaded (start with -c)");
    } else if (m->payload_len && (!cJSON_IsObject(q) || (r && !cJSON_IsNull(r) && json_get_uint(r, &rev) < 0))) {
        reply_error(n, m, "expected {\"rev\": N} (or nothing for the revision before the live one)");
    } else if (script_is_processing(n->scripts)) {
        reply_error(n, m, "busy");
    } else if (history_rollback(n->history, rev, admin_identity(from, who, sizeof who), &live, &was, err, sizeof err) < 0) {
        reply_error(n, m, err);
    } else {
        int len = snprintf(buf, sizeof buf, "{\"ok\":true,\"live\":%llu,\"from\":%llu}", (unsigned long long)live,
                           (unsigned long long)was);
        server_reply(n->srv, m, buf, (size_t)len);
    }
    cJSON_Delete(q);
}

/* {"path":"..."} -> {"ok":true,"path":...,"rules":N}: a candidate beside the rules. */
static void verb_rules_shadow(node_t *n, client_t *from, const proto_msg_t *m)
{
    char err[1024], who[128];
    cJSON *q = json_parse_owned(m->payload, m->payload_len), *a = NULL;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(q, "path");
    char *out = NULL;
    int rc = -1;
    if (n->history)
        history_set_by(n->history, admin_identity(from, who, sizeof who));
    if (!n->scripts)
        reply_error(n, m, "no scripts are loaded (start with -c)");
    else if (!cJSON_IsString(p) || !p->valuestring[0])
        reply_error(n, m, "expected {\"path\": \"candidate.lua or a directory\"}");
    else if (script_is_processing(n->scripts))
        reply_error(n, m, "busy");
    else if ((rc = script_shadow_start(n->scripts, p->valuestring, err, sizeof err)) < 0)
        reply_error(n, m, err);
    if (n->history)
        history_set_by(n->history, NULL);
    if (rc == 0 && (a = cJSON_CreateObject())) {
        cJSON_AddBoolToObject(a, "ok", 1);
        cJSON_AddStringToObject(a, "path", p->valuestring);
        out = cJSON_PrintUnformatted(a);
        reply_owned(n, m, out ? util_mem_dup(out, strlen(out)) : NULL, out ? strlen(out) : 0);
    }
    cJSON_free(out);
    cJSON_Delete(a);
    cJSON_Delete(q);
}

/* A number node's value (requests keep numbers as their text), or dflt. */
static double admin_number(const cJSON *v, double dflt)
{
    if (!v || !json_is_number(v))
        return dflt;
    return cJSON_IsNumber(v) ? v->valuedouble : strtod(v->valuestring, NULL);
}

/* {"path","percent","key","max_error_rate","window"}: a canary; without a
 * path, a new share for the running one (100 finishes it). */
static void verb_rules_canary(node_t *n, client_t *from, const proto_msg_t *m)
{
    char err[1024], who[128];
    cJSON *q = json_parse_owned(m->payload, m->payload_len);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(q, "path"), *pc = cJSON_GetObjectItemCaseSensitive(q, "percent"),
                *k = cJSON_GetObjectItemCaseSensitive(q, "key"),
                *r = cJSON_GetObjectItemCaseSensitive(q, "max_error_rate"),
                *w = cJSON_GetObjectItemCaseSensitive(q, "window");
    script_canary_t c = {cJSON_IsString(p) ? p->valuestring : NULL, admin_number(pc, -1),
                         cJSON_IsString(k) ? k->valuestring : NULL, admin_number(r, 0.01), admin_number(w, 60)};
    int rc = -1;
    if (!n->scripts)
        snprintf(err, sizeof err, "no scripts are loaded (start with -c)");
    else if (!pc || !json_is_number(pc))
        snprintf(err, sizeof err, "expected {\"path\", \"percent\", \"key\", \"max_error_rate\", \"window\"}");
    else if (script_is_processing(n->scripts))
        snprintf(err, sizeof err, "busy");
    else {
        if (n->history)
            history_set_by(n->history, admin_identity(from, who, sizeof who));
        rc = c.path ? script_canary_start(n->scripts, &c, err, sizeof err)
                    : script_canary_set_percent(n->scripts, c.percent, err, sizeof err);
        if (n->history)
            history_set_by(n->history, NULL);
    }
    cJSON_Delete(q);
    if (rc < 0) {
        reply_error(n, m, err);
        return;
    }
    size_t len = 0;
    char *json = script_shadow_diff_json(n->scripts, &len);
    if (json)
        reply_owned(n, m, json, len);
    else
        server_reply(n->srv, m, "{\"ok\":true,\"finished\":true}", strlen("{\"ok\":true,\"finished\":true}"));
}

static void verb_rules_diff(node_t *n, client_t *from, const proto_msg_t *m)
{
    size_t len = 0;
    (void)from;
    char *json = n->scripts ? script_shadow_diff_json(n->scripts, &len) : NULL;
    if (!n->scripts || !script_shadow_running(n->scripts))
        reply_error(n, m, "no shadow is running (tide rules shadow PATH starts one)");
    else
        reply_owned(n, m, json, len);
}

static void verb_rules_promote(node_t *n, client_t *from, const proto_msg_t *m)
{
    char err[1024], buf[128], who[128];
    if (!n->scripts) {
        reply_error(n, m, "no scripts are loaded (start with -c)");
        return;
    }
    if (n->history)
        history_set_by(n->history, admin_identity(from, who, sizeof who));
    int rc = script_is_processing(n->scripts) ? -1 : script_shadow_promote(n->scripts, err, sizeof err);
    if (n->history)
        history_set_by(n->history, NULL);
    if (rc < 0) {
        reply_error(n, m, script_is_processing(n->scripts) ? "busy" : err);
        return;
    }
    script_stats_t st;
    script_get_stats(n->scripts, &st);
    int len = snprintf(buf, sizeof buf, "{\"ok\":true,\"generation\":%llu,\"rules\":%d}",
                       (unsigned long long)st.generation, st.rules);
    server_reply(n->srv, m, buf, (size_t)len);
}

static void verb_rules_stop(node_t *n, client_t *from, const proto_msg_t *m)
{
    static const char ok[] = "{\"ok\":true}";
    char who[128];
    if (n->history)
        history_set_by(n->history, admin_identity(from, who, sizeof who));
    int rc = !n->scripts || script_is_processing(n->scripts) ? -1 : script_shadow_stop(n->scripts);
    if (n->history)
        history_set_by(n->history, NULL);
    if (rc < 0)
        reply_error(n, m, "no shadow is running");
    else
        server_reply(n->srv, m, ok, strlen(ok));
}

static const struct {
    const char *name;
    void (*fn)(node_t *n, client_t *from, const proto_msg_t *m);
} verbs[] = {
    {"RELOAD", verb_reload},
    {"STATS", verb_stats},
    {"EVAL", verb_eval},
    {"EVAL.END", verb_eval_end},
    {"RULES", verb_rules},
    {"RULES.HISTORY", verb_rules_history},
    {"RULES.ROLLBACK", verb_rules_rollback},
    {"RULES.SHADOW", verb_rules_shadow},
    {"RULES.DIFF", verb_rules_diff},
    {"RULES.PROMOTE", verb_rules_promote},
    {"RULES.STOP", verb_rules_stop},
    {"RULES.CANARY", verb_rules_canary},
};

/* Answers m, a $TIDE.ADMIN.<verb> request, from the table or the streams' verbs. */
static void admin_dispatch(node_t *n, client_t *from, const proto_msg_t *m)
{
    const char *op = m->subject + strlen(ADMIN_PREFIX);
    size_t oplen = m->subject_len - strlen(ADMIN_PREFIX);
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        if (strlen(verbs[i].name) == oplen && !memcmp(op, verbs[i].name, oplen)) {
            verbs[i].fn(n, from, m);
            return;
        }
    }
    /* STREAM.*, CONSUMER.*, DLQ.*: the streams' own verbs. */
    if (n->streams && streams_admin(n->streams, op, oplen, m))
        return;
    reply_error(n, m, "unknown admin request; try RELOAD, STATS, RULES, RULES.HISTORY, RULES.ROLLBACK, RULES.SHADOW, RULES.DIFF, RULES.PROMOTE, RULES.STOP, RULES.CANARY, EVAL or EVAL.END");
}

/* Answers req, on $TIDE.NODE.<name>.<rest> with <rest> at offset rest, as
 * this node answers $TIDE.<rest>: the admin verbs and the cluster status.
 * from is the requester (NULL: nobody named); connection is 0 when from
 * is not a connection of this node (it stands for a requester elsewhere),
 * and then the remote prompt is refused. */
static void node_answer(node_t *n, client_t *from, int connection, const proto_msg_t *req, size_t rest)
{
    char subject[1024];
    size_t len = req->subject_len - rest + 6, plen = strlen(ADMIN_PREFIX);
    proto_msg_t local = *req;
    if (len >= sizeof subject) {
        reply_error(n, req, "the subject is too long");
        return;
    }
    memcpy(subject, "$TIDE.", 6);
    memcpy(subject + 6, req->subject + rest, len - 6);
    subject[len] = '\0';
    local.subject = subject;
    local.subject_len = len;
    if (len > plen && !memcmp(subject, ADMIN_PREFIX, plen)) {
        if (!connection && (!strcmp(subject + plen, "EVAL") || !strcmp(subject + plen, "EVAL.END")))
            reply_error(n, req, "remote evaluation is only for a connection of the node itself");
        else
            admin_dispatch(n, from, &local);
    } else if (n->cluster && !strcmp(subject, CLUSTER_STATUS_SUBJECT)) {
        cJSON *o = cluster_status_object(n->cluster);
        char *p = o ? cJSON_PrintUnformatted(o) : NULL;
        reply_owned(n, req, p ? util_mem_dup(p, strlen(p)) : NULL, p ? strlen(p) : 0);
        cJSON_free(p);
        cJSON_Delete(o);
    } else {
        reply_error(n, req, "a node answers $TIDE.NODE.<name>.ADMIN.<verb> and $TIDE.NODE.<name>.CLUSTER.STATUS");
    }
}

/* A client's request on $TIDE.NODE.<name>.<rest> (its permissions were
 * checked for $TIDE.<rest> too): answered here when <name> is this node,
 * else sent to the cluster with who asked, as "<user>@<this node>". */
static void node_request(node_t *n, client_t *from, const proto_msg_t *m)
{
    char own[256], by[512], err[320];
    size_t name_len, rest;
    if (!server_node_subject(m->subject, m->subject_len, &name_len, &rest)) {
        reply_error(n, m, "expected $TIDE.NODE.<name>.<request>, such as $TIDE.NODE.edge-1.ADMIN.STATS");
        return;
    }
    cluster_settings_address_name(n->scripts ? script_cluster_settings(n->scripts) : NULL, own, sizeof own);
    if (strlen(own) == name_len && !memcmp(own, m->subject + strlen(SERVER_NODE_PREFIX), name_len)) {
        node_answer(n, from, 1, m, rest);
        return;
    }
    if (!n->cluster) {
        server_route(n->srv, from, m); /* no other node here: no responders, as on NATS */
        return;
    }
    snprintf(by, sizeof by, "%s@%s", from && from->user ? from->user : "", own);
    if (cluster_node_forward(n->cluster, m, by, err, sizeof err) < 0 && from && !(from->flags & CLIENT_CLOSING))
        client_send_err(from, err);
}

static void on_admin(void *ctx, client_t *from, const proto_msg_t *m)
{
    node_t *n = ctx;
    size_t plen = strlen(SERVER_NODE_PREFIX);
    if (m->subject_len >= plen && !memcmp(m->subject, SERVER_NODE_PREFIX, plen))
        node_request(n, from, m);
    else
        admin_dispatch(n, from, m);
}

/* The cluster's hook: a request on $TIDE.NODE.<this node>.> from the
 * cluster, with who asked as the node it entered through said. */
static void on_cluster_request(void *ctx, const char *by, const proto_msg_t *m)
{
    node_t *n = ctx;
    client_t as;
    size_t name_len, rest;
    if (!server_node_subject(m->subject, m->subject_len, &name_len, &rest))
        return;
    memset(&as, 0, sizeof as);
    as.user = (char *)by; /* read only, by admin_identity */
    node_answer(n, by && by[0] ? &as : NULL, 0, m, rest);
}

int admin_rules_request(node_t *n, const char *user, const char *verb, const proto_msg_t *m)
{
    static const char *const allowed[] = {"RULES.HISTORY", "RULES.DIFF", "RULES.PROMOTE", "RULES.STOP",
                                          "RULES.ROLLBACK", "RULES.SHADOW", "RULES.CANARY", NULL};
    client_t as;
    memset(&as, 0, sizeof as);
    as.user = (char *)user; /* read only, by admin_identity */
    for (int a = 0; allowed[a]; a++) {
        if (strcmp(verb, allowed[a]))
            continue;
        for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
            if (!strcmp(verbs[i].name, verb)) {
                verbs[i].fn(n, user ? &as : NULL, m);
                return 0;
            }
    }
    return -1;
}

void admin_attach(node_t *n)
{
    server_set_admin(n->srv, on_admin, n);
}

void admin_attach_cluster(node_t *n)
{
    if (n->cluster)
        cluster_set_requests(n->cluster, on_cluster_request, n);
}
