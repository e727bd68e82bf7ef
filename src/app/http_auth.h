/*
 * http_auth.h - who is asking, on the HTTP listener of a server with an
 * auth { } block (docs/security.md).
 *
 * A request names a configured user with "Authorization: Basic" (user and
 * password), or the shared token with "Authorization: Bearer <token>";
 * without either it is the no_auth_user, if there is one.  Otherwise it
 * gets 401 with a WWW-Authenticate challenge.
 *
 * A bcrypt check costs about 100 ms of CPU, and an HTTP client sends its
 * password with every request: checking it each time would cost the loop
 * (or a checker thread) that much per request.  So a check runs on a
 * checker thread (authq.h) while the request waits, and a check that
 * passed is remembered for HTTP_AUTH_CACHE_SECONDS, keyed by the user and
 * a SHA-256 of the password given (the password itself is not kept), and
 * valid only while the user's stored hash is the one it was checked
 * against (a reload that changes the password or removes the user ends
 * it).  Failed checks are not remembered.  Plain-text secrets are
 * compared on the loop.
 */
#ifndef TIDE_HTTP_AUTH_H
#define TIDE_HTTP_AUTH_H

struct evhttp_request;
struct server;
struct auth_config;
struct auth_perms;

#define HTTP_AUTH_CACHE_SECONDS 30
#define HTTP_AUTH_CACHE_MAX 1024

/* Who a request is, for as long as it is being handled on the loop. */
typedef struct http_who {
    int checked;                    /* auth is on: the fields below apply */
    int admin;                      /* its user has admin = true */
    const struct auth_perms *perms; /* in the server's config now; NULL: all */
    char user[256];                 /* its user's name; "" for the token */
} http_who_t;

typedef struct http_auth http_auth_t;

/* resume(ctx, req, who) is how a request held for a password check goes
 * on once the check passed (on the loop's thread). */
typedef void (*http_auth_resume_fn)(void *ctx, struct evhttp_request *req, const http_who_t *who);

/* A new checker for srv's auth, its answers coming back on srv's loop.
 * NULL when out of memory. */
http_auth_t *http_auth_new(struct server *srv, http_auth_resume_fn resume, void *ctx);
/* Frees a and its cache; checks under way are dropped (their requests are
 * freed with their connections).  a may be NULL. */
void http_auth_free(http_auth_t *a);

enum { HTTP_AUTH_PASS, HTTP_AUTH_REFUSED, HTTP_AUTH_HELD };

/* Decides who req is under cfg (NULL: no auth, everyone passes).
 * HTTP_AUTH_PASS: *who filled, go on; HTTP_AUTH_REFUSED: 401 sent;
 * HTTP_AUTH_HELD: a password check is under way and resume will be called
 * with req if it passes (401 is sent if not). */
int http_auth_check(http_auth_t *a, const struct auth_config *cfg, struct evhttp_request *req, http_who_t *who);

/* Fills who for user (NULL: the token) under cfg: 0, or -1 when cfg has no
 * such user (any more).  For a request that lives on (a tail), to take its
 * user's permissions in force now. */
int http_auth_who(const struct auth_config *cfg, const char *user, http_who_t *who);

#endif
