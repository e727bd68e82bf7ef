/* dict.c - see dict.h. */
#include <stdlib.h>
#include <string.h>

#include "dict.h"

/* FNV-1a with a final avalanche; keys here are short subjects and sids. */
uint64_t dict_hash(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

void dict_init(dict_t *d)
{
    d->slots = NULL;
    d->cap = 0;
    d->count = 0;
}

void dict_clear(dict_t *d, void (*free_val)(void *))
{
    for (size_t i = 0; i < d->cap; i++) {
        if (d->slots[i].key) {
            free(d->slots[i].key);
            if (free_val)
                free_val(d->slots[i].val);
        }
    }
    free(d->slots);
    dict_init(d);
}

static size_t find_slot(const dict_t *d, const char *key, size_t klen, uint64_t h)
{
    size_t mask = d->cap - 1;
    size_t i = (size_t)h & mask;
    for (;;) {
        const dict_entry_t *e = &d->slots[i];
        if (!e->key)
            return i;
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return i;
        i = (i + 1) & mask;
    }
}

void *dict_get(const dict_t *d, const char *key, size_t klen)
{
    if (d->count == 0)
        return NULL;
    size_t i = find_slot(d, key, klen, dict_hash(key, klen));
    return d->slots[i].key ? d->slots[i].val : NULL;
}

static int grow(dict_t *d)
{
    size_t ncap = d->cap ? d->cap * 2 : 8;
    dict_entry_t *ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return -1;
    dict_entry_t *old = d->slots;
    size_t ocap = d->cap;
    d->slots = ns;
    d->cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (old[i].key) {
            size_t j = find_slot(d, old[i].key, old[i].klen, old[i].hash);
            d->slots[j] = old[i];
        }
    }
    free(old);
    return 0;
}

int dict_put(dict_t *d, const char *key, size_t klen, void *val)
{
    /* Keep the load factor under 3/4 so probe runs stay short. */
    if ((d->count + 1) * 4 > d->cap * 3 && grow(d) < 0)
        return -1;
    uint64_t h = dict_hash(key, klen);
    size_t i = find_slot(d, key, klen, h);
    dict_entry_t *e = &d->slots[i];
    if (e->key) {
        e->val = val;
        return 0;
    }
    char *k = malloc(klen + 1);
    if (!k)
        return -1;
    memcpy(k, key, klen);
    k[klen] = '\0';
    e->key = k;
    e->klen = klen;
    e->hash = h;
    e->val = val;
    d->count++;
    return 0;
}

void *dict_remove(dict_t *d, const char *key, size_t klen)
{
    if (d->count == 0)
        return NULL;
    size_t mask = d->cap - 1;
    size_t i = find_slot(d, key, klen, dict_hash(key, klen));
    if (!d->slots[i].key)
        return NULL;
    void *val = d->slots[i].val;
    free(d->slots[i].key);
    d->slots[i].key = NULL;
    d->count--;
    /* Backward-shift: move later members of the probe run into the hole so
     * that every remaining key is still reachable from its home slot. */
    size_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!d->slots[j].key)
            break;
        size_t home = (size_t)d->slots[j].hash & mask;
        /* Can slot j's entry move to the hole?  Only if its home is not in (hole, j]. */
        int between = (hole <= j) ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!between) {
            d->slots[hole] = d->slots[j];
            d->slots[j].key = NULL;
            hole = j;
        }
    }
    return val;
}
