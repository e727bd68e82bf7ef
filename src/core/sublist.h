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
 * Walking a result.  A result returned by sublist_match is owned by the
 * index and points at subscriptions the caller owns.  A later sublist_match
 * may rebuild a stale result in place or, on a miss with the cache full,
 * free every cached result.  So whoever walks a result while something else
 * may match (a delivery that routes again, like a +TERM ack routing its
 * dead letter) holds it for the walk: sublist_result_hold right after
 * sublist_match, sublist_result_release after the last member.  A held
 * result is never rebuilt or freed by the index: a match that finds it
 * stale caches a new result in its place, and a full cache that starts
 * over lets it go, and either way the last release frees it.  So a walk
 * keeps the members it started with (only its queue groups' round-robin
 * positions move).  Holds nest.  Inserting and removing subscriptions
 * while a result is held is allowed, but a subscription removed then must
 * not be freed before the release: the held result may still point at it.
 * Without a hold, a result is valid only until the next sublist_match.
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
    unsigned holds; /* walks under way (sublist_result_hold) */
    int dropped;    /* let go by the cache while held: the last release frees it */
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
 * except when out of memory.  Owned by the index; how long it stays valid:
 * see "Walking a result" above.
 */
sublist_result_t *sublist_match(sublist_t *sl, const char *subject, size_t len);

/* Holds the index for a walk over results: until the matching
 * sublist_release, no result returned since is freed or changed (see above).
 * Every hold must be released; holds nest.  O(1). */
void sublist_hold(sublist_t *sl);

/* Ends a hold; the last one frees the results replaced while held (so no
 * result returned under the hold may be used after it). */
void sublist_release(sublist_t *sl);

/* Frees a result the cache let go; only for sublist_result_release. */
void sublist_result_free(sublist_result_t *r);

/* Holds r, just matched, for a walk: until the release, the index neither
 * rebuilds nor frees it (see "Walking a result" above).  O(1). */
static inline void sublist_result_hold(sublist_result_t *r)
{
    r->holds++;
}

/* Ends a hold of r; r must not be used after it (the last release frees a
 * result the cache let go meanwhile). */
static inline void sublist_result_release(sublist_result_t *r)
{
    if (--r->holds == 0 && r->dropped)
        sublist_result_free(r);
}

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
