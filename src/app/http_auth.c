/* http_auth.c - see http_auth.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "auth.h"
#include "authq.h"
#include "dict.h"
#include "http_auth.h"
#include "log.h"
#include "server.h"

struct http_auth {
    server_t *srv;
    authq_t *q; /* started at the first bcrypt check */
    struct held *held; /* requests waiting for a check */
    http_auth_resume_fn resume;
    void *ctx;
    dict_t passed; /* user "\0" SHA-256(password) -> pass_t: checks that passed */
};

typedef struct pass {
    char *stored; /* the hash the password was checked against */
    time_t expires;
} pass_t;

/* A held request: the job's owner. */
typedef struct held {
    http_auth_t *a;
    authq_job_t *job;
    struct evhttp_request *req;
    struct held *prev, *next;
    char key[256 + 1 + SHA256_DIGEST_LENGTH];
    size_t klen;
} held_t;

static void pass_free(void *p)
{
    pass_t *ps = p;
    if (ps)
        free(ps->stored);
    free(ps);
}

static void on_answer(void *ctx, authq_job_t *job);

http_auth_t *http_auth_new(server_t *srv, http_auth_resume_fn resume, void *ctx)
{
    http_auth_t *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->srv = srv;
    a->resume = resume;
    a->ctx = ctx;
    dict_init(&a->passed);
    return a;
}

void http_auth_free(http_auth_t *a)
{
    if (!a)
        return;
    /* The queue frees the jobs; their owners are ours. */
    while (a->held) {
        held_t *hd = a->held;
        a->held = hd->next;
        authq_forget(a->q, hd->job);
        free(hd);
    }
    authq_free(a->q);
    dict_clear(&a->passed, pass_free);
    free(a);
}

int http_auth_who(const auth_config_t *cfg, const char *user, http_who_t *who)
{
    const auth_user_t *u = NULL;
    memset(who, 0, sizeof *who);
    if (!cfg)
        return 0;
    who->checked = 1;
    if (user) {
        if (!(u = auth_config_find_user(cfg, user)))
            return -1;
        snprintf(who->user, sizeof who->user, "%s", user);
        who->admin = u->admin;
    } else if (!cfg->token) {
        return -1;
    }
    who->perms = auth_user_perms(cfg, u);
    return 0;
}

static void refuse(struct evhttp_request *req, const auth_config_t *cfg, const char *why)
{
    static const char body[] = "{\"error\":{\"code\":401,\"description\":\"Authorization Violation\"}}";
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evbuffer *b = evbuffer_new();
    log_info("http: authorization violation: %s", why);
    evhttp_add_header(out, "WWW-Authenticate", cfg && cfg->token ? "Bearer realm=\"tide\"" : "Basic realm=\"tide\"");
    evhttp_add_header(out, "Content-Type", "application/json");
    if (b)
        evbuffer_add(b, body, sizeof body - 1);
    evhttp_send_reply(req, 401, "Unauthorized", b);
    if (b)
        evbuffer_free(b);
}

/* Decodes "Basic base64(user:pass)" into user and pass (NUL-terminated,
 * pointing into buf).  0, or -1 when it is not such a value. */
static int basic_decode(const char *v, char *buf, size_t bufsz, char **user, char **pass)
{
    size_t n = strlen(v), pad = 0;
    if (n == 0 || n % 4 || n / 4 * 3 >= bufsz)
        return -1;
    int len = EVP_DecodeBlock((unsigned char *)buf, (const unsigned char *)v, (int)n);
    if (len < 0)
        return -1;
    pad = (v[n - 1] == '=') + (n > 1 && v[n - 2] == '=');
    len -= (int)pad;
    buf[len] = '\0';
    char *colon = memchr(buf, ':', (size_t)len);
    if (!colon || strlen(buf) != (size_t)len)
        return -1;
    *colon = '\0';
    *user = buf;
    *pass = colon + 1;
    return 0;
}

/* The cache key of user and given: user, a NUL, SHA-256(given). */
static size_t cache_key(const char *user, const char *given, char *key)
{
    size_t ul = strlen(user);
    memcpy(key, user, ul + 1);
    SHA256((const unsigned char *)given, strlen(given), (unsigned char *)key + ul + 1);
    return ul + 1 + SHA256_DIGEST_LENGTH;
}

/* Checks given against stored for user ("" for the token): on the loop
 * when plain text or remembered, else held for a checker thread. */
static int check_secret(http_auth_t *a, const auth_config_t *cfg, struct evhttp_request *req, const char *user,
                        const char *stored, const char *given, http_who_t *who)
{
    char key[256 + 1 + SHA256_DIGEST_LENGTH];
    if (!auth_is_bcrypt(stored)) {
        if (!auth_password_ok(stored, given) || http_auth_who(cfg, *user ? user : NULL, who) < 0)
            goto refused;
        return HTTP_AUTH_PASS;
    }
    size_t klen = cache_key(user, given, key);
    pass_t *p = dict_get(&a->passed, key, klen);
    if (p && p->expires >= time(NULL) && !strcmp(p->stored, stored)) {
        if (http_auth_who(cfg, *user ? user : NULL, who) < 0)
            goto refused;
        return HTTP_AUTH_PASS;
    }
    if (p)
        pass_free(dict_remove(&a->passed, key, klen));
    held_t *hd = calloc(1, sizeof *hd);
    authq_job_t *job = NULL;
    if (!a->q)
        a->q = authq_new(server_base(a->srv), 1, on_answer, a);
    if (!hd || !a->q || !(job = authq_job_new(stored, given, *user ? user : NULL, hd))) {
        free(hd);
        evhttp_send_error(req, 500, "cannot check a password now");
        return HTTP_AUTH_REFUSED;
    }
    hd->a = a;
    hd->job = job;
    hd->req = req;
    hd->next = a->held;
    if (a->held)
        a->held->prev = hd;
    a->held = hd;
    memcpy(hd->key, key, klen);
    hd->klen = klen;
    authq_submit(a->q, job);
    return HTTP_AUTH_HELD;
refused:
    refuse(req, cfg, *user ? user : "a wrong token");
    return HTTP_AUTH_REFUSED;
}

int http_auth_check(http_auth_t *a, const auth_config_t *cfg, struct evhttp_request *req, http_who_t *who)
{
    char buf[1024], *user = NULL, *pass = NULL;
    const auth_user_t *u;
    memset(who, 0, sizeof *who);
    if (!cfg)
        return HTTP_AUTH_PASS;
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!v) {
        if (cfg->no_auth_user && http_auth_who(cfg, cfg->no_auth_user, who) == 0)
            return HTTP_AUTH_PASS;
        refuse(req, cfg, "no credentials");
        return HTTP_AUTH_REFUSED;
    }
    if (!strncasecmp(v, "Bearer ", 7) && cfg->token)
        return check_secret(a, cfg, req, "", cfg->token, v + 7, who);
    if (!strncasecmp(v, "Basic ", 6) && !cfg->token && basic_decode(v + 6, buf, sizeof buf, &user, &pass) == 0 &&
        (u = auth_config_find_user(cfg, user)) && u->password && strlen(user) < 256)
        return check_secret(a, cfg, req, user, u->password, pass, who);
    refuse(req, cfg, "credentials that name no configured user or token");
    return HTTP_AUTH_REFUSED;
}

/* Remembers that the password behind key matched stored. */
static void remember(http_auth_t *a, const char *key, size_t klen, const char *stored)
{
    pass_t *p = calloc(1, sizeof *p);
    if (!p || !(p->stored = strdup(stored))) {
        pass_free(p);
        return; /* a cache: the next request checks again */
    }
    p->expires = time(NULL) + HTTP_AUTH_CACHE_SECONDS;
    if (a->passed.count >= HTTP_AUTH_CACHE_MAX)
        dict_clear(&a->passed, pass_free);
    pass_free(dict_remove(&a->passed, key, klen));
    if (dict_put(&a->passed, key, klen, p) < 0)
        pass_free(p);
}

static void on_answer(void *ctx, authq_job_t *job)
{
    http_auth_t *a = ctx;
    held_t *hd = job->owner;
    const auth_config_t *cfg = server_auth(a->srv);
    const auth_user_t *u = NULL;
    const char *now = NULL;
    http_who_t who;
    if (hd->prev)
        hd->prev->next = hd->next;
    else
        a->held = hd->next;
    if (hd->next)
        hd->next->prev = hd->prev;
    if (cfg && job->name)
        now = (u = auth_config_find_user(cfg, job->name)) ? u->password : NULL;
    else if (cfg)
        now = cfg->token;
    /* The auth may have changed while the check ran: it counts only if the
     * secret it checked is still the one in force. */
    if (!cfg) {
        http_auth_who(NULL, NULL, &who);
        a->resume(a->ctx, hd->req, &who);
    } else if (!job->ok || !now || strcmp(now, job->stored) || http_auth_who(cfg, job->name, &who) < 0) {
        refuse(hd->req, cfg, job->name ? job->name : "a wrong token");
    } else {
        remember(a, hd->key, hd->klen, job->stored);
        a->resume(a->ctx, hd->req, &who);
    }
    free(hd);
    authq_job_free(job);
}
