/* sublist.c - see sublist.h. */
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "subject.h"
#include "sublist.h"

/* The subscribers of a node or queue group, in subscription order; linked
 * through sub_t.sl_prev / sl_next so that one leaves without a search. */
typedef struct members {
    sub_t *head, *tail;
    size_t n;
} members_t;

typedef struct qlist {
    struct qlist *prev, *next;
    char *name;
    size_t name_len;
    members_t members;
} qlist_t;

typedef struct node {
    struct node *parent;
    char *token; /* key under which parent holds this node ("*" / ">" for wildcards) */
    size_t token_len;
    int wild;         /* a wildcard token on the path from the root */
    dict_t literal;   /* token -> node */
    struct node *pwc; /* '*' child */
    struct node *fwc; /* '>' child */
    members_t plain;
    qlist_t *qhead, *qtail; /* queue groups, in order of creation */
} node_t;

struct sublist {
    node_t root;
    dict_t cache; /* subject -> sublist_result_t* */
    uint64_t gen; /* bumped by every change to a wildcard pattern */
    size_t count;
    sublist_stats_t st;
};

/* Frees what r owns (not the subscriptions it points at). */
static void result_clear(sublist_result_t *r)
{
    for (size_t i = 0; i < r->nqgroups; i++) {
        free(r->qgroups[i].name);
        free(r->qgroups[i].subs);
    }
    free(r->qgroups);
    free(r->psubs);
}

static void result_free(void *p)
{
    sublist_result_t *r = p;
    if (!r)
        return;
    result_clear(r);
    free(r);
}

void sublist_result_free(sublist_result_t *r)
{
    result_free(r);
}

/* Takes r out of the cache's hands: freed now, or by its last release. */
static void result_drop(void *p)
{
    sublist_result_t *r = p;
    if (r->holds)
        r->dropped = 1;
    else
        result_free(r);
}

sublist_t *sublist_new(void)
{
    sublist_t *sl = calloc(1, sizeof *sl);
    if (sl)
        sl->gen = 1; /* 0 marks a stale result */
    return sl;
}

static void node_free_children(node_t *n);

static void queue_free(qlist_t *q)
{
    free(q->name);
    free(q);
}

static void node_destroy(node_t *n)
{
    node_free_children(n);
    while (n->qhead) {
        qlist_t *q = n->qhead;
        n->qhead = q->next;
        queue_free(q);
    }
    free(n->token);
}

static void node_free_children(node_t *n)
{
    for (size_t i = 0; i < n->literal.cap; i++) {
        node_t *c = n->literal.slots[i].val;
        if (n->literal.slots[i].key) {
            node_destroy(c);
            free(c);
        }
    }
    dict_clear(&n->literal, NULL);
    if (n->pwc) {
        node_destroy(n->pwc);
        free(n->pwc);
    }
    if (n->fwc) {
        node_destroy(n->fwc);
        free(n->fwc);
    }
    n->pwc = n->fwc = NULL;
}

void sublist_free(sublist_t *sl)
{
    if (!sl)
        return;
    node_destroy(&sl->root);
    dict_clear(&sl->cache, result_drop);
    free(sl);
}

static int push_sub(sub_t ***arr, size_t *n, size_t *cap, sub_t *s)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        sub_t **na = realloc(*arr, nc * sizeof *na);
        if (!na)
            return -1;
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = s;
    return 0;
}

static void members_append(members_t *m, sub_t *s)
{
    s->sl_prev = m->tail;
    s->sl_next = NULL;
    if (m->tail)
        m->tail->sl_next = s;
    else
        m->head = s;
    m->tail = s;
    m->n++;
}

static void members_unlink(members_t *m, sub_t *s)
{
    if (s->sl_prev)
        s->sl_prev->sl_next = s->sl_next;
    else
        m->head = s->sl_next;
    if (s->sl_next)
        s->sl_next->sl_prev = s->sl_prev;
    else
        m->tail = s->sl_prev;
    s->sl_prev = s->sl_next = NULL;
    m->n--;
}

/*
 * Marks the cached results that sub's pattern matches as stale, in O(1):
 * a literal pattern matches only the subject it names; a wildcard one may
 * match any cached subject, so the generation moves on for all of them
 * (scanning the cache instead cost tens of µs per change when it was full).
 */
static void cache_touch(sublist_t *sl, const node_t *n, const sub_t *sub)
{
    if (n->wild) {
        sl->gen++;
        return;
    }
    sublist_result_t *r = dict_get(&sl->cache, sub->subject, sub->subject_len);
    if (r)
        r->gen = 0;
}

/* The child of n under token tok, made when missing; NULL when out of memory. */
static node_t *child(node_t *n, const char *tok, size_t tlen)
{
    node_t **slot = NULL;
    node_t *c;
    if (tlen == 1 && tok[0] == '*')
        slot = &n->pwc;
    else if (tlen == 1 && tok[0] == '>')
        slot = &n->fwc;
    if (slot) {
        if (*slot)
            return *slot;
    } else {
        c = dict_get(&n->literal, tok, tlen);
        if (c)
            return c;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->token = malloc(tlen + 1);
    if (!c->token) {
        free(c);
        return NULL;
    }
    memcpy(c->token, tok, tlen);
    c->token[tlen] = '\0';
    c->token_len = tlen;
    c->parent = n;
    c->wild = n->wild || slot != NULL;
    if (slot) {
        *slot = c;
    } else if (dict_put(&n->literal, tok, tlen, c) < 0) {
        free(c->token);
        free(c);
        return NULL;
    }
    return c;
}

static void prune(node_t *n);

/* The node of pattern s, made (with the nodes above it) when missing. */
static node_t *walk(sublist_t *sl, const char *s, size_t len)
{
    node_t *n = &sl->root;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            node_t *c = child(n, s + start, i - start);
            if (!c) {
                prune(n); /* the nodes made on the way hold nothing */
                return NULL;
            }
            n = c;
            start = i + 1;
        }
    }
    return n;
}

/* n's queue group called name, made at the end of its groups when missing. */
static qlist_t *queue_get(node_t *n, const char *name, size_t name_len)
{
    for (qlist_t *q = n->qhead; q; q = q->next)
        if (q->name_len == name_len && memcmp(q->name, name, name_len) == 0)
            return q;
    qlist_t *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->name = util_mem_dup(name, name_len);
    if (!q->name) {
        free(q);
        return NULL;
    }
    q->name_len = name_len;
    q->prev = n->qtail;
    if (n->qtail)
        n->qtail->next = q;
    else
        n->qhead = q;
    n->qtail = q;
    return q;
}

static void queue_drop(node_t *n, qlist_t *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        n->qhead = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        n->qtail = q->prev;
    queue_free(q);
}

int sublist_insert(sublist_t *sl, sub_t *sub)
{
    qlist_t *q = NULL;
    node_t *n = walk(sl, sub->subject, sub->subject_len);
    if (!n)
        return -1;
    if (sub->queue) {
        q = queue_get(n, sub->queue, sub->queue_len);
        if (!q) {
            prune(n);
            return -1;
        }
    }
    members_append(q ? &q->members : &n->plain, sub);
    sub->sl_node = n;
    sub->sl_queue = q;
    sl->count++;
    sl->st.inserts++;
    cache_touch(sl, n, sub);
    return 0;
}

static int node_empty(const node_t *n)
{
    return n->plain.n == 0 && !n->qhead && n->literal.count == 0 && !n->pwc && !n->fwc;
}

/* Frees empty nodes from n up towards the root. */
static void prune(node_t *n)
{
    while (n->parent && node_empty(n)) {
        node_t *p = n->parent;
        if (p->pwc == n)
            p->pwc = NULL;
        else if (p->fwc == n)
            p->fwc = NULL;
        else
            dict_remove(&p->literal, n->token, n->token_len);
        node_destroy(n);
        free(n);
        n = p;
    }
}

int sublist_remove(sublist_t *sl, sub_t *sub)
{
    node_t *n = sub->sl_node;
    qlist_t *q = sub->sl_queue;
    if (!n)
        return -1;
    members_unlink(q ? &q->members : &n->plain, sub);
    if (q && q->members.n == 0)
        queue_drop(n, q);
    sub->sl_node = NULL;
    sub->sl_queue = NULL;
    sl->count--;
    sl->st.removes++;
    cache_touch(sl, n, sub);
    prune(n);
    return 0;
}

/* r's queue group called name, added (empty) when missing. */
static sublist_qgroup_t *result_group(sublist_result_t *r, const char *name, size_t name_len)
{
    /* One group per name, however many patterns it subscribed with. */
    for (size_t j = 0; j < r->nqgroups; j++)
        if (r->qgroups[j].name_len == name_len && memcmp(r->qgroups[j].name, name, name_len) == 0)
            return &r->qgroups[j];
    sublist_qgroup_t *ng = realloc(r->qgroups, (r->nqgroups + 1) * sizeof *ng);
    if (!ng)
        return NULL;
    r->qgroups = ng;
    sublist_qgroup_t *g = &r->qgroups[r->nqgroups];
    memset(g, 0, sizeof *g);
    g->name = util_mem_dup(name, name_len);
    if (!g->name)
        return NULL;
    g->name_len = name_len;
    r->nqgroups++;
    return g;
}

/* Adds the subscriptions of node n to the result being built. */
static int collect(sublist_result_t *r, size_t *pcap, const node_t *n)
{
    for (const sub_t *s = n->plain.head; s; s = s->sl_next)
        if (push_sub(&r->psubs, &r->npsubs, pcap, (sub_t *)s) < 0)
            return -1;
    for (const qlist_t *q = n->qhead; q; q = q->next) {
        sublist_qgroup_t *g = result_group(r, q->name, q->name_len);
        if (!g)
            return -1;
        /* Arrays grown exactly: groups are small. */
        sub_t **ns = realloc(g->subs, (g->n + q->members.n) * sizeof *ns);
        if (!ns)
            return -1;
        g->subs = ns;
        for (sub_t *s = q->members.head; s; s = s->sl_next)
            g->subs[g->n++] = s;
    }
    return 0;
}

static int match_level(sublist_result_t *r, size_t *pcap, const node_t *n, const char *s, size_t len,
                       size_t pos)
{
    /* '>' here matches the rest of the subject (at least one token remains). */
    if (n->fwc && collect(r, pcap, n->fwc) < 0)
        return -1;
    const char *dot = memchr(s + pos, '.', len - pos);
    size_t end = dot ? (size_t)(dot - s) : len;
    int last = dot == NULL;
    const node_t *lit = dict_get(&n->literal, s + pos, end - pos);
    const node_t *kids[2] = {lit, n->pwc};
    for (int k = 0; k < 2; k++) {
        const node_t *c = kids[k];
        if (!c)
            continue;
        if (last) {
            if (collect(r, pcap, c) < 0)
                return -1;
        } else if (match_level(r, pcap, c, s, len, end + 1) < 0) {
            return -1;
        }
    }
    return 0;
}

/* Computes the result for subject into *r (zeroed); -1 when out of memory. */
static int result_build(sublist_t *sl, sublist_result_t *r, const char *subject, size_t len)
{
    size_t pcap = 0;
    r->gen = sl->gen;
    if (len > 0 && match_level(r, &pcap, &sl->root, subject, len, 0) < 0) {
        result_clear(r);
        return -1;
    }
    return 0;
}

/* Each queue group of fresh takes the round-robin position of its namesake
 * in old, so that groups whose subjects see subscriptions come and go still
 * share messages out. */
static void result_carry(sublist_result_t *fresh, const sublist_result_t *old)
{
    for (size_t i = 0; i < fresh->nqgroups; i++) {
        sublist_qgroup_t *g = &fresh->qgroups[i];
        for (size_t j = 0; j < old->nqgroups; j++) {
            if (old->qgroups[j].name_len == g->name_len && memcmp(old->qgroups[j].name, g->name, g->name_len) == 0) {
                g->next = old->qgroups[j].next;
                break;
            }
        }
    }
}

/* Recomputes the stale result r in place (its address is what the cache
 * holds); only when no one holds it. */
static int result_refresh(sublist_t *sl, sublist_result_t *r, const char *subject, size_t len)
{
    sublist_result_t fresh = {0};
    if (result_build(sl, &fresh, subject, len) < 0)
        return -1;
    result_carry(&fresh, r);
    result_clear(r);
    *r = fresh;
    return 0;
}

/*
 * Computes a new result for subject and caches it.  held is the stale
 * result it replaces, which someone is walking: dropped, not rebuilt.  On a
 * miss (held NULL) a full cache starts over, dropping every result.
 */
static sublist_result_t *result_add(sublist_t *sl, sublist_result_t *held, const char *subject, size_t len)
{
    sublist_result_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (result_build(sl, r, subject, len) < 0)
        goto fail;
    if (!held && sl->cache.count >= SUBLIST_CACHE_MAX)
        dict_clear(&sl->cache, result_drop);
    if (dict_put(&sl->cache, subject, len, r) < 0)
        goto fail;
    if (held) {
        result_carry(r, held);
        held->dropped = 1;
    }
    return r;
fail:
    result_free(r);
    return NULL;
}

/* sublist_match past the cache: r is the stale cached result, or NULL.  Out
 * of line, so that a hit (the publish fast path) saves no registers for it. */
static __attribute__((noinline)) sublist_result_t *match_slow(sublist_t *sl, sublist_result_t *r,
                                                              const char *subject, size_t len)
{
    if (r && !r->holds)
        return result_refresh(sl, r, subject, len) < 0 ? NULL : r;
    return result_add(sl, r, subject, len);
}

sublist_result_t *sublist_match(sublist_t *sl, const char *subject, size_t len)
{
    sl->st.matches++;
    sublist_result_t *r = dict_get(&sl->cache, subject, len);
    if (r && r->gen == sl->gen) {
        sl->st.cache_hits++;
        return r;
    }
    return match_slow(sl, r, subject, len);
}

void sublist_get_stats(const sublist_t *sl, sublist_stats_t *out)
{
    *out = sl->st;
    out->subs = sl->count;
    out->cache_entries = sl->cache.count;
}

size_t sublist_count(const sublist_t *sl)
{
    return sl->count;
}
