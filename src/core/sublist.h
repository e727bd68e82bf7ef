/*
 * sublist.h - the subscription index: a trie over subject tokens, with a
 * cache of match results keyed by the published subject.
 *
 * A publish to a hot subject costs one hash lookup.  Inserting or removing a
 * subscription costs the same however many subscriptions and cached results
 * there are: each node keeps its subscribers in a list that a subscription
 * leaves without a search, and cached results are tagged rather than
 * scanned.  A literal pattern marks the one cached result of its own subject
 * stale; a wildcard pattern bumps the index's generation, which makes every
 * cached result older than it stale.  A stale result is recomputed on its
 * next match (keeping its queue groups' round-robin positions).
 *
 * Results returned by sublist_match stay valid until the next sublist_match
 * (which may recompute or evict them) and point at subscriptions that the
 * caller must not free while walking the result (defer removals until the
 * walk is over).
 */
#ifndef TIDE_SUBLIST_H
#define TIDE_SUBLIST_H

#include <stddef.h>
#include <stdint.h>

#include "dict.h"
#include "proto.h"

/* A subscription.  The index stores the pointer; the caller owns the memory
 * and must remove it from the index before freeing it. */
typedef struct sub {
    void *owner;      /* the connection (or anything the caller likes) */
    char *subject;    /* pattern, NUL-terminated */
    size_t subject_len;
    char *queue;      /* queue group, or NULL */
    size_t queue_len;
    char *sid;        /* client's subscription id */
    size_t sid_len;
    uint64_t max_msgs;  /* 0 = unlimited (auto-unsubscribe after this many) */
    uint64_t delivered;
    int flags;          /* free for the caller */
    /* A subscription inside the server (owner NULL): called for each message. */
    void (*deliver)(void *ctx, const proto_msg_t *m);
    void *deliver_ctx;
    /* The index's own (zero before the first insert): its place among the
     * subscribers of its node or queue group.  A subscription is in at most
     * one index at a time. */
    struct sub *sl_prev, *sl_next;
    void *sl_node;  /* its trie node; NULL while not in an index */
    void *sl_queue; /* its queue group in that node, or NULL */
} sub_t;

typedef struct sublist_qgroup {
    char *name; /* the result's own copy */
    size_t name_len;
    sub_t **subs;
    size_t n;
    size_t next; /* round-robin position */
} sublist_qgroup_t;

typedef struct sublist_result {
    sub_t **psubs; /* plain subscribers */
    size_t npsubs;
    sublist_qgroup_t *qgroups; /* each group gets a message once */
    size_t nqgroups;
    uint64_t gen; /* the index's: generation it was computed in, 0 = stale */
} sublist_result_t;

typedef struct sublist sublist_t;

/* Returns a new, empty index or NULL when out of memory.  Free with sublist_free. */
sublist_t *sublist_new(void);
void sublist_free(sublist_t *sl);

/* Adds sub under sub->subject (which must be a valid pattern), after the
 * subscriptions already there (delivery follows subscription order).  sub
 * must not be in an index.  Returns 0 or -1 (out of memory).  O(tokens). */
int sublist_insert(sublist_t *sl, sub_t *sub);

/* Removes sub; returns 0, or -1 when it was not in an index.  O(tokens),
 * whatever the number of subscriptions or cached results. */
int sublist_remove(sublist_t *sl, sub_t *sub);

/*
 * Returns the subscriptions matching the literal `subject`.  Never NULL
 * except when out of memory.  Owned by the index (see the validity rule above).
 */
sublist_result_t *sublist_match(sublist_t *sl, const char *subject, size_t len);

/* Picks the next member of a queue group, round robin. */
static inline sub_t *sublist_qgroup_pick(sublist_qgroup_t *g)
{
    sub_t *s = g->subs[g->next % g->n];
    g->next++;
    return s;
}

typedef struct sublist_stats {
    size_t subs;
    size_t cache_entries;
    uint64_t matches;
    uint64_t cache_hits;
    uint64_t inserts;
    uint64_t removes;
} sublist_stats_t;

void sublist_get_stats(const sublist_t *sl, sublist_stats_t *out);

/* Subscriptions in the index. */
size_t sublist_count(const sublist_t *sl);

/* Most results kept in the cache; past it the cache starts over. */
#define SUBLIST_CACHE_MAX 4096

#endif
