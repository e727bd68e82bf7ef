/* auth.c - see auth.h. */
#include <crypt.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "subject.h"

auth_config_t *auth_config_new(void)
{
    auth_config_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->refs = 1;
    c->timeout = AUTH_DEFAULT_TIMEOUT;
    return c;
}

auth_config_t *auth_config_retain(auth_config_t *c)
{
    if (c)
        c->refs++;
    return c;
}

static void list_free(auth_list_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->pat[i]);
    free(l->pat);
}

void auth_perms_free(auth_perms_t *p)
{
    if (!p)
        return;
    list_free(&p->pub_allow);
    list_free(&p->pub_deny);
    list_free(&p->sub_allow);
    list_free(&p->sub_deny);
    free(p);
}

void auth_config_release(auth_config_t *c)
{
    if (!c || --c->refs > 0)
        return;
    for (size_t i = 0; i < c->nusers; i++) {
        auth_user_t *u = &c->users[i];
        free(u->name);
        free(u->password);
        free(u->nkey);
        auth_perms_free(u->perms);
    }
    free(c->users);
    free(c->token);
    free(c->no_auth_user);
    auth_perms_free(c->default_perms);
    free(c);
}

auth_user_t *auth_config_add_user(auth_config_t *c)
{
    if (c->nusers == c->capusers) {
        size_t nc = c->capusers ? c->capusers * 2 : 8;
        auth_user_t *nu = realloc(c->users, nc * sizeof *nu);
        if (!nu)
            return NULL;
        c->users = nu;
        c->capusers = nc;
    }
    auth_user_t *u = &c->users[c->nusers++];
    memset(u, 0, sizeof *u);
    return u;
}

const auth_user_t *auth_config_find_user(const auth_config_t *c, const char *name)
{
    if (!c || !name)
        return NULL;
    for (size_t i = 0; i < c->nusers; i++)
        if (c->users[i].name && !strcmp(c->users[i].name, name))
            return &c->users[i];
    return NULL;
}

const auth_user_t *auth_config_find_nkey(const auth_config_t *c, const char *nkey)
{
    if (!c || !nkey)
        return NULL;
    for (size_t i = 0; i < c->nusers; i++)
        if (c->users[i].nkey && !strcmp(c->users[i].nkey, nkey))
            return &c->users[i];
    return NULL;
}

int auth_config_has_nkeys(const auth_config_t *c)
{
    for (size_t i = 0; c && i < c->nusers; i++)
        if (c->users[i].nkey)
            return 1;
    return 0;
}

auth_perms_t *auth_perms_new(void)
{
    return calloc(1, sizeof(auth_perms_t));
}

static auth_list_t *list_of(auth_perms_t *p, enum auth_which which)
{
    switch (which) {
    case AUTH_PUB_ALLOW: return &p->pub_allow;
    case AUTH_PUB_DENY: return &p->pub_deny;
    case AUTH_SUB_ALLOW: return &p->sub_allow;
    default: return &p->sub_deny;
    }
}

void auth_perms_give(auth_perms_t *p, enum auth_which which)
{
    list_of(p, which)->given = 1;
}

int auth_perms_add(auth_perms_t *p, enum auth_which which, const char *pattern)
{
    auth_list_t *l = list_of(p, which);
    char **np = realloc(l->pat, (l->n + 1) * sizeof *np);
    if (!np)
        return -1;
    l->pat = np;
    if (!(l->pat[l->n] = strdup(pattern)))
        return -1;
    l->n++;
    l->given = 1;
    return 0;
}

void auth_perms_finish(auth_perms_t *p)
{
    if (p->allow_responses)
        p->pub_allow.given = 1;
}

const auth_perms_t *auth_user_perms(const auth_config_t *c, const auth_user_t *u)
{
    if (u && u->perms)
        return u->perms;
    return c ? c->default_perms : NULL;
}

static int any_match(const auth_list_t *l, const char *s, size_t len)
{
    for (size_t i = 0; i < l->n; i++)
        if (subject_matches(l->pat[i], strlen(l->pat[i]), s, len))
            return 1;
    return 0;
}

int auth_may_publish(const auth_perms_t *p, const char *subject, size_t len)
{
    if (!p)
        return 1;
    if (p->pub_allow.given && !any_match(&p->pub_allow, subject, len))
        return 0;
    return !any_match(&p->pub_deny, subject, len);
}

int auth_may_subscribe(const auth_perms_t *p, const char *subject, size_t len)
{
    if (!p)
        return 1;
    /* subject_matches takes the subscription's wildcards as literal tokens,
     * which is how nats-server's sublist Match treats them here. */
    if (p->sub_allow.given && !any_match(&p->sub_allow, subject, len))
        return 0;
    return !any_match(&p->sub_deny, subject, len);
}

int auth_deny_delivery(const auth_perms_t *p, const char *subject, size_t len)
{
    return p && any_match(&p->sub_deny, subject, len);
}

int auth_is_bcrypt(const char *s)
{
    if (!s || strncmp(s, "$2", 2) || (s[2] != 'a' && s[2] != 'b') || s[3] != '$')
        return 0;
    if (s[4] < '0' || s[4] > '3' || s[5] < '0' || s[5] > '9' || s[6] != '$')
        return 0;
    return strlen(s + 7) == 53;
}

/* Compares without stopping at the first difference, so the time taken
 * does not tell how much of a guess was right. */
static int same_secret(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = la != lb;
    for (size_t i = 0; i < lb; i++)
        diff |= (unsigned char)(a[i % (la ? la : 1)] ^ b[i]);
    return diff == 0 && la == lb;
}

int auth_password_ok(const char *stored, const char *given)
{
    if (!stored || !given)
        return 0;
    if (!auth_is_bcrypt(stored))
        return same_secret(stored, given);
    struct crypt_data *cd = calloc(1, sizeof *cd);
    if (!cd)
        return 0;
    const char *h = crypt_r(given, stored, cd);
    int ok = h && h[0] != '*' && same_secret(h, stored);
    free(cd);
    return ok;
}
