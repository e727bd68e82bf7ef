/* sublist.c - see sublist.h. */
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "subject.h"
#include "sublist.h"

typedef struct qlist {
    char *name;
    size_t name_len;
    sub_t **subs;
    size_t n, cap;
} qlist_t;

typedef struct node {
    struct node *parent;
    char *token; /* key under which parent holds this node ("*" / ">" for wildcards) */
    size_t token_len;
    dict_t literal;   /* token -> node */
    struct node *pwc; /* '*' child */
    struct node *fwc; /* '>' child */
    sub_t **psubs;
    size_t npsubs, capsubs;
    qlist_t *queues;
    size_t nqueues;
} node_t;

struct sublist {
    node_t root;
    dict_t cache; /* subject -> sublist_result_t* */
    size_t count;
    sublist_stats_t st;
};

static void result_free(void *p)
{
    sublist_result_t *r = p;
    if (!r)
        return;
    for (size_t i = 0; i < r->nqgroups; i++)
        free(r->qgroups[i].subs);
    free(r->qgroups);
    free(r->psubs);
    free(r);
}

sublist_t *sublist_new(void)
{
    sublist_t *sl = calloc(1, sizeof *sl);
    return sl;
}

static void node_free_children(node_t *n);

static void node_destroy(node_t *n)
{
    node_free_children(n);
    for (size_t i = 0; i < n->nqueues; i++) {
        free(n->queues[i].name);
        free(n->queues[i].subs);
    }
    free(n->queues);
    free(n->psubs);
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
    dict_clear(&sl->cache, result_free);
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

static int remove_sub(sub_t **arr, size_t *n, sub_t *s)
{
    for (size_t i = 0; i < *n; i++) {
        if (arr[i] == s) {
            /* Keep order: delivery order follows subscription order. */
            memmove(&arr[i], &arr[i + 1], (*n - i - 1) * sizeof *arr);
            (*n)--;
            return 0;
        }
    }
    return -1;
}

/* Drops the cached results of every subject `pattern` matches. */
static void cache_invalidate(sublist_t *sl, const char *pattern, size_t plen)
{
    dict_t *c = &sl->cache;
    if (c->count == 0)
        return;
    /* Collect first: removal shifts entries around. */
    size_t nvict = 0;
    char **victims = NULL;
    for (size_t i = 0; i < c->cap; i++) {
        dict_entry_t *e = &c->slots[i];
        if (e->key && subject_matches(pattern, plen, e->key, e->klen)) {
            char **nv = realloc(victims, (nvict + 1) * sizeof *nv);
            if (!nv) {
                /* Cannot track them: drop the whole cache instead. */
                free(victims);
                dict_clear(c, result_free);
                return;
            }
            victims = nv;
            victims[nvict++] = e->key;
        }
    }
    for (size_t i = 0; i < nvict; i++) {
        /* dict_remove is done with the key before it frees the entry's copy,
         * which is the very string passed here. */
        result_free(dict_remove(c, victims[i], strlen(victims[i])));
    }
    free(victims);
}

static node_t *child(node_t *n, const char *tok, size_t tlen, int create)
{
    node_t **slot = NULL;
    node_t *c;
    if (tlen == 1 && tok[0] == '*')
        slot = &n->pwc;
    else if (tlen == 1 && tok[0] == '>')
        slot = &n->fwc;
    if (slot) {
        if (*slot || !create)
            return *slot;
    } else {
        c = dict_get(&n->literal, tok, tlen);
        if (c || !create)
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
    if (slot) {
        *slot = c;
    } else if (dict_put(&n->literal, tok, tlen, c) < 0) {
        free(c->token);
        free(c);
        return NULL;
    }
    return c;
}

static node_t *walk(sublist_t *sl, const char *s, size_t len, int create)
{
    node_t *n = &sl->root;
    size_t start = 0;
    for (size_t i = 0; i <= len && n; i++) {
        if (i == len || s[i] == '.') {
            n = child(n, s + start, i - start, create);
            start = i + 1;
        }
    }
    return n;
}

int sublist_insert(sublist_t *sl, sub_t *sub)
{
    node_t *n = walk(sl, sub->subject, sub->subject_len, 1);
    if (!n)
        return -1;
    if (!sub->queue) {
        if (push_sub(&n->psubs, &n->npsubs, &n->capsubs, sub) < 0)
            return -1;
    } else {
        qlist_t *q = NULL;
        for (size_t i = 0; i < n->nqueues; i++) {
            if (n->queues[i].name_len == sub->queue_len &&
                memcmp(n->queues[i].name, sub->queue, sub->queue_len) == 0) {
                q = &n->queues[i];
                break;
            }
        }
        if (!q) {
            qlist_t *nq = realloc(n->queues, (n->nqueues + 1) * sizeof *nq);
            if (!nq)
                return -1;
            n->queues = nq;
            q = &n->queues[n->nqueues];
            memset(q, 0, sizeof *q);
            q->name = util_mem_dup(sub->queue, sub->queue_len);
            if (!q->name)
                return -1;
            q->name_len = sub->queue_len;
            n->nqueues++;
        }
        if (push_sub(&q->subs, &q->n, &q->cap, sub) < 0)
            return -1;
    }
    sl->count++;
    sl->st.inserts++;
    cache_invalidate(sl, sub->subject, sub->subject_len);
    return 0;
}

static int node_empty(const node_t *n)
{
    return n->npsubs == 0 && n->nqueues == 0 && n->literal.count == 0 && !n->pwc && !n->fwc;
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
    node_t *n = walk(sl, sub->subject, sub->subject_len, 0);
    if (!n)
        return -1;
    if (!sub->queue) {
        if (remove_sub(n->psubs, &n->npsubs, sub) < 0)
            return -1;
    } else {
        size_t i;
        for (i = 0; i < n->nqueues; i++) {
            if (n->queues[i].name_len == sub->queue_len &&
                memcmp(n->queues[i].name, sub->queue, sub->queue_len) == 0)
                break;
        }
        if (i == n->nqueues || remove_sub(n->queues[i].subs, &n->queues[i].n, sub) < 0)
            return -1;
        if (n->queues[i].n == 0) {
            free(n->queues[i].name);
            free(n->queues[i].subs);
            n->queues[i] = n->queues[--n->nqueues];
        }
    }
    sl->count--;
    sl->st.removes++;
    cache_invalidate(sl, sub->subject, sub->subject_len);
    prune(n);
    return 0;
}

/* Adds the subscriptions of node n to the result being built. */
static int collect(sublist_result_t *r, size_t *pcap, const node_t *n)
{
    for (size_t i = 0; i < n->npsubs; i++)
        if (push_sub(&r->psubs, &r->npsubs, pcap, n->psubs[i]) < 0)
            return -1;
    for (size_t i = 0; i < n->nqueues; i++) {
        const qlist_t *q = &n->queues[i];
        sublist_qgroup_t *g = NULL;
        /* One group per name, however many patterns it subscribed with. */
        for (size_t j = 0; j < r->nqgroups; j++) {
            if (r->qgroups[j].name_len == q->name_len &&
                memcmp(r->qgroups[j].name, q->name, q->name_len) == 0) {
                g = &r->qgroups[j];
                break;
            }
        }
        if (!g) {
            sublist_qgroup_t *ng = realloc(r->qgroups, (r->nqgroups + 1) * sizeof *ng);
            if (!ng)
                return -1;
            r->qgroups = ng;
            g = &r->qgroups[r->nqgroups++];
            g->name = q->name;
            g->name_len = q->name_len;
            g->subs = NULL;
            g->n = 0;
            g->next = 0;
        }
        size_t cap = g->n; /* arrays grown exactly: groups are small */
        sub_t **ns = realloc(g->subs, (cap + q->n) * sizeof *ns);
        if (!ns)
            return -1;
        memcpy(ns + g->n, q->subs, q->n * sizeof *ns);
        g->subs = ns;
        g->n += q->n;
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

sublist_result_t *sublist_match(sublist_t *sl, const char *subject, size_t len)
{
    sl->st.matches++;
    sublist_result_t *r = dict_get(&sl->cache, subject, len);
    if (r) {
        sl->st.cache_hits++;
        return r;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    size_t pcap = 0;
    if (len > 0 && match_level(r, &pcap, &sl->root, subject, len, 0) < 0)
        goto fail;
    if (sl->cache.count >= SUBLIST_CACHE_MAX)
        dict_clear(&sl->cache, result_free);
    if (dict_put(&sl->cache, subject, len, r) < 0)
        goto fail;
    return r;
fail:
    result_free(r);
    return NULL;
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
