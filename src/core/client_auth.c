/*
 * client_auth.c - identities and permissions of NATS clients (see client.h
 * and auth.h): the CONNECT check, the answers of the password checker,
 * publish and subscribe checks, and what a change of the server's auth
 * does to the clients connected.  Error texts are nats-server's, so that
 * client libraries map them to their usual errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "auth.h"
#include "authq.h"
#include "client.h"
#include "log.h"
#include "nkey.h"
#include "util.h"

/* The publish decisions a client keeps (subject -> decision): past this
 * many the cache starts again, and longer subjects are not kept, so a
 * client that publishes to ever new (or long) subjects costs at most a
 * few tens of KB (nats-server keeps 128 too). */
#define PUB_SEEN_MAX 128
#define PUB_SEEN_SUBJECT_MAX 256
#define PUB_ALLOWED ((void *)1)
#define PUB_REFUSED ((void *)2)

/* allow_responses, as nats-server's defaults: one answer per request
 * received, within two minutes, at most this many reply subjects held. */
#define RESPONSE_MAX_MSGS 1
#define RESPONSE_SECONDS 120
#define REPLIES_MAX 4096

#define ADMIN_SUBJECT_PREFIX "$TIDE.ADMIN."
/* The longest $TIDE.<rest> checked for a $TIDE.NODE.<name>.<rest> publish;
 * a longer one is refused. */
#define NODE_LOCAL_SUBJECT_MAX 1024

typedef struct response_grant {
    time_t expires;
    int left;
} response_grant_t;

/* why may hold what the client sent (a user name): sanitized for the log. */
static void violation(client_t *c, const char *why)
{
    char clean[96];
    log_info("cid:%llu %s:%d authorization violation: %s", (unsigned long long)c->id, c->ip, c->port,
             log_sanitize(clean, sizeof clean, why, strlen(why) > 64 ? 64 : strlen(why)));
    client_send_err(c, "Authorization Violation");
    client_close(c, CLIENT_CLOSE_FLUSH, "authorization violation");
}

static void on_auth_timeout(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    (void)fd;
    (void)what;
    if (c->flags & (CLIENT_CLOSING | CLIENT_AUTHED | CLIENT_AUTH_HOLD))
        return;
    log_info("cid:%llu %s:%d authentication timeout", (unsigned long long)c->id, c->ip, c->port);
    client_send_err(c, "Authentication Timeout");
    client_close(c, CLIENT_CLOSE_FLUSH, "authentication timeout");
}

int client_auth_nonce(client_t *c)
{
    c->nonce[0] = '\0';
    if (!auth_config_has_nkeys(server_auth(c->srv)))
        return 0;
    return nkey_nonce(c->nonce, sizeof c->nonce) == NKEY_OK ? 0 : -1;
}

int client_auth_start(client_t *c)
{
    const auth_config_t *cfg = server_auth(c->srv);
    if (!cfg || c->auth_timer)
        return 0;
    c->auth_timer = evtimer_new(server_base(c->srv), on_auth_timeout, c);
    if (!c->auth_timer)
        return -1;
    struct timeval tv = util_timeval(cfg->timeout);
    evtimer_add(c->auth_timer, &tv);
    return 0;
}

/* c is now u (NULL: a token client) of cfg, having passed how
 * (CLIENT_BY_TOKEN, CLIENT_BY_NKEY or 0 for a password or none).  -1 when
 * out of memory. */
static int become(client_t *c, const auth_config_t *cfg, const auth_user_t *u, int how)
{
    const char *who = u ? (u->name ? u->name : u->nkey) : NULL;
    char *name = NULL;
    if (who && !(name = strdup(who)))
        return -1;
    free(c->user);
    c->user = name;
    c->perms = auth_user_perms(cfg, u);
    c->flags &= ~(CLIENT_ADMIN | CLIENT_BY_TOKEN | CLIENT_BY_NKEY);
    c->flags |= CLIENT_AUTHED | (u && u->admin ? CLIENT_ADMIN : 0) | (how & (CLIENT_BY_TOKEN | CLIENT_BY_NKEY));
    dict_clear(&c->pub_seen, NULL);
    c->pub_last_len = 0;
    dict_clear(&c->replies, free);
    if (c->auth_timer)
        evtimer_del(c->auth_timer);
    return 0;
}

static const char *json_string(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The password is bcrypt: checked off the loop, c held until the answer
 * (who it was until then, if anyone, it stays meanwhile). */
static int hold_for_check(client_t *c, const char *stored, const char *given, const char *user)
{
    authq_t *q = server_authq(c->srv);
    authq_job_t *job = q ? authq_job_new(stored, given, user, c) : NULL;
    if (!job) {
        log_error("cid:%llu cannot check a password: out of memory or no checker thread", (unsigned long long)c->id);
        client_send_err(c, "Server Out Of Memory");
        client_close(c, CLIENT_CLOSE_FLUSH, "out of memory");
        return 1;
    }
    c->auth_job = job;
    c->flags |= CLIENT_AUTH_HOLD;
    client_input_pause(c);
    authq_submit(q, job);
    return 1;
}

/* An nkey login: the signature of c's nonce must verify with the public
 * key of a configured nkey user.  An Ed25519 check costs about 50 us, in
 * the range of the CONNECT's own parsing and far below a bcrypt check, so
 * it is done here on the loop: a client must open a new connection for
 * each wrong try, which costs the server about as much again.  0: c is
 * that user; 1: refused (c closing). */
static int nkey_login(client_t *c, const auth_config_t *cfg, const char *nkey, const char *sig)
{
    unsigned char pub[NKEY_KEY_LEN];
    const auth_user_t *u = auth_config_find_nkey(cfg, nkey);
    const char *why = !u ? "unknown nkey" : !sig ? "no signature" : !c->nonce[0] ? "no nonce was sent" : NULL;
    if (!why && nkey_public_decode(nkey, pub) != NKEY_OK)
        why = "bad nkey";
    if (!why && nkey_verify(pub, c->nonce, strlen(c->nonce), sig, strlen(sig)) != NKEY_OK)
        why = "the nonce's signature does not verify";
    if (!why && become(c, cfg, u, CLIENT_BY_NKEY) < 0)
        why = "out of memory";
    if (why) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s (nkey %.56s)", why, nkey);
        violation(c, msg);
        return 1;
    }
    return 0;
}

int client_auth_connect(client_t *c, const cJSON *obj)
{
    const auth_config_t *cfg = server_auth(c->srv);
    const char *user = json_string(obj, "user"), *pass = json_string(obj, "pass");
    const char *token = json_string(obj, "auth_token"), *nkey = json_string(obj, "nkey");
    const auth_user_t *u = NULL;
    const char *stored, *given;
    if (!cfg)
        return 0;
    if (c->flags & CLIENT_AUTH_HOLD)
        return 1; /* cannot happen: its input waits */
    if (client_tls_maps_user(c)) {
        /* tls { verify, map_user }: the verified certificate names the
         * user, whatever credentials the CONNECT carries (as nats-server's
         * verify_and_map). */
        const char *cn = client_tls_cn(c);
        u = cn ? auth_config_find_user(cfg, cn) : NULL;
        if (!u || become(c, cfg, u, 0) < 0) {
            violation(c, cn ? cn : "client certificate without a usable CN");
            return 1;
        }
        return 0;
    }
    if (cfg->token) {
        stored = cfg->token;
        given = token;
    } else if (nkey && auth_config_has_nkeys(cfg)) {
        return nkey_login(c, cfg, nkey, json_string(obj, "sig"));
    } else if (!user && !pass && !token && !nkey && cfg->no_auth_user) {
        u = auth_config_find_user(cfg, cfg->no_auth_user);
        if (!u || become(c, cfg, u, 0) < 0) {
            violation(c, "no_auth_user is not a configured user");
            return 1;
        }
        return 0;
    } else {
        u = auth_config_find_user(cfg, user);
        stored = u ? u->password : NULL;
        given = pass;
    }
    if (!stored || !given) {
        violation(c, user ? user : "no credentials");
        return 1;
    }
    if (auth_is_bcrypt(stored))
        return hold_for_check(c, stored, given, user);
    if (!auth_password_ok(stored, given) || become(c, cfg, u, u ? 0 : CLIENT_BY_TOKEN) < 0) {
        violation(c, user ? user : "token");
        return 1;
    }
    return 0;
}

void client_auth_answer(void *ctx, authq_job_t *job)
{
    client_t *c = job->owner;
    const auth_config_t *cfg = server_auth(c->srv);
    const auth_user_t *u = NULL;
    const char *now = NULL;
    (void)ctx;
    c->auth_job = NULL;
    c->flags &= ~CLIENT_AUTH_HOLD;
    if (c->flags & CLIENT_CLOSING) {
        authq_job_free(job);
        return;
    }
    if (!cfg) { /* auth was turned off while the check ran: anyone may connect */
        authq_job_free(job);
        client_connect_done(c, 1);
        return;
    }
    /* The auth may have changed while the check ran: it counts only if the
     * secret it checked is still the one in force. */
    if (job->name) {
        u = auth_config_find_user(cfg, job->name);
        now = u ? u->password : NULL;
    } else {
        now = cfg->token;
    }
    if (!job->ok || !now || strcmp(now, job->stored) || become(c, cfg, u, u ? 0 : CLIENT_BY_TOKEN) < 0) {
        violation(c, job->name ? job->name : "token");
        authq_job_free(job);
        return;
    }
    authq_job_free(job);
    client_connect_done(c, 1);
}

int client_auth_before_connect(client_t *c)
{
    const auth_config_t *cfg = server_auth(c->srv);
    const auth_user_t *u = cfg && cfg->no_auth_user ? auth_config_find_user(cfg, cfg->no_auth_user) : NULL;
    if (!cfg)
        return 0;
    /* As nats-server: with a no_auth_user, a client may start without a
     * CONNECT (telnet demos) and is that user. */
    if (!u || become(c, cfg, u, 0) < 0) {
        violation(c, "an operation before CONNECT");
        return 1;
    }
    c->flags |= CLIENT_CONNECTED;
    return 0;
}

/* c may answer m's subject once: it received a request with that reply. */
static int response_granted(client_t *c, const proto_msg_t *m)
{
    response_grant_t *g = dict_get(&c->replies, m->subject, m->subject_len);
    if (!g)
        return 0;
    int ok = g->expires >= time(NULL);
    if (!ok || --g->left <= 0)
        free(dict_remove(&c->replies, m->subject, m->subject_len));
    return ok;
}

static int admin_subject(const proto_msg_t *m)
{
    static const char p[] = ADMIN_SUBJECT_PREFIX;
    return m->subject_len >= sizeof p - 1 && m->subject[0] == '$' && !memcmp(m->subject, p, sizeof p - 1);
}

static void publish_violation(client_t *c, const proto_msg_t *m)
{
    char msg[320];
    int n = m->subject_len > 256 ? 256 : (int)m->subject_len;
    snprintf(msg, sizeof msg, "Permissions Violation for Publish to \"%.*s\"", n, m->subject);
    log_info("cid:%llu %s:%d user '%s': publish violation, subject \"%.*s\"", (unsigned long long)c->id, c->ip,
             c->port, c->user ? c->user : "", n, m->subject);
    client_send_err(c, msg);
}

/* m's subject is allowed: remembered as the last one, if it fits.
 * Returns 1. */
static int remember_allowed(client_t *c, const proto_msg_t *m)
{
    if (m->subject_len < sizeof c->pub_last) {
        memcpy(c->pub_last, m->subject, m->subject_len);
        c->pub_last_len = (unsigned char)m->subject_len;
    }
    return 1;
}

/* 1 when c may publish m (its admin right for admin subjects, else its
 * lists, else a response it was granted); nothing told. */
static int publish_allowed(client_t *c, const proto_msg_t *m)
{
    if (admin_subject(m))
        return (c->flags & CLIENT_ADMIN) != 0; /* whatever the lists say: admin requests are for admin users */
    if (!c->perms)
        return 1;
    /* A publisher mostly sends to the subject it sent to last: that
     * decision costs a compare, not a hash lookup. */
    if (m->subject_len == c->pub_last_len && !memcmp(m->subject, c->pub_last, m->subject_len))
        return 1;
    void *seen = dict_get(&c->pub_seen, m->subject, m->subject_len);
    if (seen == PUB_ALLOWED)
        return remember_allowed(c, m);
    if (!seen) {
        int ok = auth_may_publish(c->perms, m->subject, m->subject_len);
        if (m->subject_len <= PUB_SEEN_SUBJECT_MAX) {
            if (c->pub_seen.count >= PUB_SEEN_MAX)
                dict_clear(&c->pub_seen, NULL);
            dict_put(&c->pub_seen, m->subject, m->subject_len, ok ? PUB_ALLOWED : PUB_REFUSED); /* may fail: a cache */
        }
        if (ok)
            return remember_allowed(c, m);
    }
    return c->perms->allow_responses && response_granted(c, m);
}

/* For $TIDE.NODE.<name>.<rest>: 1 when c may also publish $TIDE.<rest>,
 * what the node called <name> answers it as (so that a node's admin verbs
 * are no nearer through another node); 1 for any other subject. */
static int node_request_allowed(client_t *c, const proto_msg_t *m)
{
    char local[NODE_LOCAL_SUBJECT_MAX];
    size_t name_len, rest;
    proto_msg_t as;
    if (!server_node_subject(m->subject, m->subject_len, &name_len, &rest))
        return 1;
    if (m->subject_len - rest + 6 > sizeof local)
        return 0;
    memcpy(local, "$TIDE.", 6);
    memcpy(local + 6, m->subject + rest, m->subject_len - rest);
    as = *m;
    as.subject = local;
    as.subject_len = m->subject_len - rest + 6;
    return publish_allowed(c, &as);
}

int client_auth_publish(client_t *c, const proto_msg_t *m)
{
    if (!server_auth(c->srv))
        return 1;
    if (publish_allowed(c, m) && node_request_allowed(c, m))
        return 1;
    publish_violation(c, m);
    return 0;
}

static int has_wildcard(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((s[i] == '*' || s[i] == '>') && (i == 0 || s[i - 1] == '.') && (i + 1 == len || s[i + 1] == '.'))
            return 1;
    return 0;
}

int client_auth_subscribe(client_t *c, const char *subject, size_t len, const char *queue, size_t qlen,
                          int *flags)
{
    char msg[600];
    int n = len > 256 ? 256 : (int)len;
    if (!c->perms)
        return 1;
    if (auth_may_subscribe(c->perms, subject, len)) {
        if (c->perms->sub_deny.n && has_wildcard(subject, len))
            *flags |= SUB_DENY_CHECK;
        return 1;
    }
    if (queue)
        snprintf(msg, sizeof msg, "Permissions Violation for Subscription to \"%.*s\" using queue \"%.*s\"", n,
                 subject, (int)(qlen > 256 ? 256 : qlen), queue);
    else
        snprintf(msg, sizeof msg, "Permissions Violation for Subscription to \"%.*s\"", n, subject);
    log_info("cid:%llu %s:%d user '%s': subscription violation, subject \"%.*s\"", (unsigned long long)c->id,
             c->ip, c->port, c->user ? c->user : "", n, subject);
    client_send_err(c, msg);
    return 0;
}

/* allow_responses: c may answer reply once, for a while. */
static void grant_response(client_t *c, const char *reply, size_t len)
{
    response_grant_t *g = dict_get(&c->replies, reply, len);
    time_t now = time(NULL);
    if (!g && c->replies.count >= REPLIES_MAX) {
        for (size_t i = 0; i < c->replies.cap; i++) {
            response_grant_t *old = c->replies.slots[i].val;
            if (c->replies.slots[i].key && old->expires < now) {
                free(dict_remove(&c->replies, c->replies.slots[i].key, c->replies.slots[i].klen));
                i--; /* the removal shifted a later entry into this slot */
            }
        }
        if (c->replies.count >= REPLIES_MAX)
            return; /* full of live grants: this request cannot be answered */
    }
    if (!g) {
        if (!(g = malloc(sizeof *g)) || dict_put(&c->replies, reply, len, g) < 0) {
            free(g);
            return;
        }
    }
    g->expires = now + RESPONSE_SECONDS;
    g->left = RESPONSE_MAX_MSGS;
}

int client_auth_deliver(client_t *c, const sub_t *sub, const proto_msg_t *m)
{
    if ((sub->flags & SUB_DENY_CHECK) && auth_deny_delivery(c->perms, m->subject, m->subject_len))
        return 0;
    if (m->reply && c->perms->allow_responses)
        grant_response(c, m->reply, m->reply_len);
    return 1;
}

/* Removes the subscriptions c's permissions no longer allow, telling it
 * about each, and sets SUB_DENY_CHECK afresh on the others. */
static void recheck_subs(client_t *c)
{
    for (size_t i = 0; i < c->subs.cap; i++) {
        sub_t *s = c->subs.slots[i].key ? c->subs.slots[i].val : NULL;
        if (!s)
            continue;
        s->flags &= ~SUB_DENY_CHECK;
        if (auth_may_subscribe(c->perms, s->subject, s->subject_len)) {
            if (c->perms && c->perms->sub_deny.n && has_wildcard(s->subject, s->subject_len))
                s->flags |= SUB_DENY_CHECK;
            continue;
        }
        char msg[600];
        snprintf(msg, sizeof msg, "Permissions Violation for Subscription to \"%.200s\" (sid \"%.200s\")",
                 s->subject, s->sid);
        log_info("cid:%llu %s:%d user '%s': removed subscription to \"%s\": no longer allowed",
                 (unsigned long long)c->id, c->ip, c->port, c->user ? c->user : "", s->subject);
        client_send_err(c, msg);
        client_remove_sub(c, s);
        i--; /* the removal may have shifted a later entry into this slot */
    }
}

void client_auth_reload(client_t *c, const auth_config_t *cfg)
{
    const auth_user_t *u = NULL;
    if (c->flags & CLIENT_CLOSING) {
        c->perms = NULL; /* the old config goes: nothing may point into it */
        return;
    }
    /* A held client's answer looks the user it claims up in the config
     * then in force; meanwhile it is who it was (its deliveries go on). */
    if (!cfg) {
        c->perms = NULL;
        c->flags &= ~(CLIENT_AUTHED | CLIENT_ADMIN | CLIENT_BY_TOKEN | CLIENT_BY_NKEY);
        dict_clear(&c->pub_seen, NULL);
        c->pub_last_len = 0;
        if (c->auth_timer)
            evtimer_del(c->auth_timer);
        recheck_subs(c);
        return;
    }
    if (!(c->flags & CLIENT_CONNECTED)) {
        if (client_auth_start(c) < 0)
            violation(c, "out of memory");
        return;
    }
    if (c->flags & CLIENT_BY_TOKEN) {
        if (!cfg->token) {
            violation(c, "the token was removed");
            return;
        }
    } else if (c->flags & CLIENT_BY_NKEY) {
        if (!(u = auth_config_find_nkey(cfg, c->user))) {
            violation(c, "its nkey was removed");
            return;
        }
    } else if (c->flags & CLIENT_AUTHED) {
        if (!(u = auth_config_find_user(cfg, c->user))) {
            violation(c, "its user was removed");
            return;
        }
    } else if (!cfg->no_auth_user || !(u = auth_config_find_user(cfg, cfg->no_auth_user))) {
        violation(c, "connected without credentials before auth was configured");
        return;
    }
    if (become(c, cfg, u, c->flags & (CLIENT_BY_TOKEN | CLIENT_BY_NKEY)) < 0) {
        violation(c, "out of memory");
        return;
    }
    recheck_subs(c);
}

void client_auth_free(client_t *c)
{
    if (c->auth_job)
        authq_forget(server_authq(c->srv), c->auth_job);
    c->auth_job = NULL;
    if (c->auth_timer)
        event_free(c->auth_timer);
    c->auth_timer = NULL;
    free(c->user);
    c->user = NULL;
    dict_clear(&c->pub_seen, NULL);
    c->pub_last_len = 0;
    dict_clear(&c->replies, free);
}
