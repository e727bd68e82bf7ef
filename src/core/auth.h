/*
 * auth.h - who may connect and what each identity may do: the auth
 * configuration the NATS listener checks CONNECTs against, and the
 * permission checks on publish and subscribe, with nats-server's semantics.
 *
 * The configuration is plain C, built by whoever reads the entry file (the
 * script layer) and handed to the server with server_set_auth.  It is
 * reference-counted: the server keeps the one in force while the next is
 * being built, and drops it when a reload replaces it.  Once handed over it
 * is not changed.
 *
 * Permissions (as nats-server): a missing allow list allows everything, a
 * present one (even empty) allows only what it matches; a deny list match
 * wins over an allow.  Publish subjects are literal; a subscription's
 * subject is matched token by token as if literal, so an allow of
 * "orders.*" permits SUB "orders.*" and an allow of "orders.a" does not.
 * A denied pattern that a wildcard subscription covers does not refuse the
 * subscription: the messages it denies are not delivered on it.
 */
#ifndef TIDE_AUTH_H
#define TIDE_AUTH_H

#include <stddef.h>

/* Seconds a client has to send its CONNECT, as nats-server. */
#define AUTH_DEFAULT_TIMEOUT 2.0

/* One list of subject patterns. */
typedef struct auth_list {
    char **pat;
    size_t n;
    int given; /* the list was written: an empty allow list allows nothing */
} auth_list_t;

typedef struct auth_perms {
    auth_list_t pub_allow, pub_deny, sub_allow, sub_deny;
    int allow_responses; /* may publish once to the reply subject of a message it received */
} auth_perms_t;

/* Which list auth_perms_add adds to. */
enum auth_which { AUTH_PUB_ALLOW, AUTH_PUB_DENY, AUTH_SUB_ALLOW, AUTH_SUB_DENY };

typedef struct auth_user {
    char *name;          /* user name; NULL for an nkey user */
    char *password;      /* bcrypt hash ("$2a$"/"$2b$") or plain text; NULL for an nkey user */
    char *nkey;          /* public nkey (its signature check is the nkey module's); NULL for a user */
    int admin;           /* may use $TIDE.ADMIN.> */
    auth_perms_t *perms; /* owned; NULL: the configuration's default permissions */
} auth_user_t;

typedef struct auth_config {
    int refs;
    double timeout;             /* seconds until 'Authentication Timeout' */
    char *token;                /* one shared token (plain or bcrypt), or NULL */
    auth_user_t *users;
    size_t nusers, capusers;
    auth_perms_t *default_perms; /* for users without permissions and token clients; NULL: all */
    char *no_auth_user;          /* a CONNECT without credentials is this user; NULL: refused */
} auth_config_t;

/* A new, empty configuration (one reference, timeout AUTH_DEFAULT_TIMEOUT),
 * or NULL when out of memory. */
auth_config_t *auth_config_new(void);
/* Takes a reference; returns c. */
auth_config_t *auth_config_retain(auth_config_t *c);
/* Drops a reference (c may be NULL), freeing everything with the last. */
void auth_config_release(auth_config_t *c);

/* Adds a user with no name, password or permissions yet (the caller fills
 * the fields with malloc'd strings that the configuration then owns).
 * Returns it (valid until the next add), or NULL when out of memory. */
auth_user_t *auth_config_add_user(auth_config_t *c);

/* The user called name (NULL, or an nkey user's public key: no match), or NULL. */
const auth_user_t *auth_config_find_user(const auth_config_t *c, const char *name);

/* The nkey user whose public key is nkey (NULL: no match), or NULL. */
const auth_user_t *auth_config_find_nkey(const auth_config_t *c, const char *nkey);

/* True when c (may be NULL) has an nkey user: clients then get a nonce in
 * their INFO to sign. */
int auth_config_has_nkeys(const auth_config_t *c);

/* A new permissions object with no list given, or NULL. */
auth_perms_t *auth_perms_new(void);
void auth_perms_free(auth_perms_t *p);
/* Adds a copy of pattern to one list (marking it given).  0, or -1 when
 * out of memory.  The caller checks the pattern is valid. */
int auth_perms_add(auth_perms_t *p, enum auth_which which, const char *pattern);
/* Marks a list given though it may stay empty. */
void auth_perms_give(auth_perms_t *p, enum auth_which which);
/* Completes p once its lists are in: allow_responses without a publish
 * allow list leaves only the responses allowed (nats-server does this). */
void auth_perms_finish(auth_perms_t *p);

/* The permissions a user acts under: its own, else the default (NULL:
 * everything). */
const auth_perms_t *auth_user_perms(const auth_config_t *c, const auth_user_t *u);

/* True when p (NULL: all) lets a client publish to the literal subject. */
int auth_may_publish(const auth_perms_t *p, const char *subject, size_t len);
/* True when p lets a client subscribe to subject (a pattern). */
int auth_may_subscribe(const auth_perms_t *p, const char *subject, size_t len);
/* True when p denies receiving the literal subject on a subscription that
 * auth_may_subscribe allowed (a wildcard one covering a denied pattern). */
int auth_deny_delivery(const auth_perms_t *p, const char *subject, size_t len);

/* True when s looks like a bcrypt hash tide can check ($2a$ or $2b$, a
 * two-digit cost, 53 more characters). */
int auth_is_bcrypt(const char *s);

/* True when the password given matches the one stored (a bcrypt hash, or
 * plain text, compared in constant time).  A bcrypt check costs tens of
 * milliseconds: the loop calls this only for plain text; bcrypt goes to
 * the checker thread (authq.h).  Thread-safe. */
int auth_password_ok(const char *stored, const char *given);

#endif
