/*
 * dict.h - a hash table from byte-string keys to pointers.
 *
 * Open addressing with linear probing and backward-shift deletion: no
 * tombstones, so lookups stay short however much the table churns.  The
 * table copies keys and owns the copies; values are the caller's.
 * Not thread-safe; tide's tables all live on the event loop's thread.
 */
#ifndef TIDE_DICT_H
#define TIDE_DICT_H

#include <stddef.h>
#include <stdint.h>

typedef struct dict_entry {
    char *key; /* NULL marks an empty slot; NUL-terminated copy */
    size_t klen;
    uint64_t hash;
    void *val;
} dict_entry_t;

typedef struct dict {
    dict_entry_t *slots;
    size_t cap; /* 0 or a power of two */
    size_t count;
} dict_t;

#define DICT_INIT {NULL, 0, 0}

uint64_t dict_hash(const char *key, size_t len);

void dict_init(dict_t *d);
/* Frees the table and its keys; calls free_val (if not NULL) on each value. */
void dict_clear(dict_t *d, void (*free_val)(void *));

/* Returns the value stored under key, or NULL. */
void *dict_get(const dict_t *d, const char *key, size_t klen);

/* Stores val under key, replacing any old value.  Returns 0, or -1 when out of memory. */
int dict_put(dict_t *d, const char *key, size_t klen, void *val);

/* Removes key; returns its value, or NULL when absent. */
void *dict_remove(dict_t *d, const char *key, size_t klen);

/* Iterate: for (size_t i = 0; i < d->cap; i++) if (d->slots[i].key) ... */

#endif
