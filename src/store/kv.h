/*
 * kv.h - the key-value store scripts use for state that must outlive a
 * reload (counters, projections, idempotency sets).  It lives in C, owned by
 * the script host, so swapping Lua states does not touch it.
 *
 * Values are strings, integers, floats, booleans, or JSON text (tables are
 * stored as JSON).  Not thread-safe: loop thread only.
 */
#ifndef TIDE_KV_H
#define TIDE_KV_H

#include <stddef.h>
#include <stdint.h>

typedef struct kv kv_t;

kv_t *kv_new(void);
void kv_free(kv_t *kv);
size_t kv_count(const kv_t *kv);

/*
 * Makes the store durable in dir (created if needed): what it holds there
 * is loaded (entries set since kv_new, e.g. by the entry file, are applied
 * on top with the values they have now; deletes made before are not
 * replayed) and every later change is written there (kv.c describes the
 * files).  Damaged records are skipped and logged; 0, or -1 with err when
 * the files cannot be read at all.
 */
int kv_persist(kv_t *kv, const char *dir, char *err, size_t errsz);

/* A value: strings and JSON text own s (len bytes); a value handed to
 * kv_set belongs to the store from then on. */
enum kv_type { KV_STRING, KV_INT, KV_FLOAT, KV_BOOL, KV_JSON };
typedef struct kv_value {
    int type;   /* enum kv_type */
    int64_t i;  /* KV_INT, KV_BOOL (0/1) */
    double f;   /* KV_FLOAT */
    char *s;    /* KV_STRING, KV_JSON: malloc'd */
    size_t len;
} kv_value_t;

/* Limits on what the store holds; 0: no limit. */
typedef struct kv_limits {
    size_t max_value; /* bytes of one value */
    size_t max_bytes; /* bytes of all keys and values */
    size_t max_keys;  /* entries */
} kv_limits_t;

/* Errors of kv_set and kv_incr past a limit. */
#define KV_TOO_BIG (-3)  /* the value is over max_value */
#define KV_FULL (-4)     /* the store would pass max_bytes */
#define KV_TOO_MANY (-5) /* a new key past max_keys */

/* Sets the limits that later changes are held to (what is held already
 * stays, even past them). */
void kv_set_limits(kv_t *kv, const kv_limits_t *lim);

/* The limits in force. */
const kv_limits_t *kv_limits(const kv_t *kv);

/* Keys and bytes (keys and values) held now. */
void kv_usage(const kv_t *kv, size_t *keys, size_t *bytes);

/* Frees a value made for kv_set and not handed over. */
void kv_value_free(kv_value_t *v);

/* The value of key k, or NULL; valid until the next change of k. */
const kv_value_t *kv_get(const kv_t *kv, const char *k, size_t kl);

/* Sets k to v (takes ownership of v, also on failure) and logs the change.
 * 0; -1 when out of memory; KV_TOO_BIG, KV_FULL or KV_TOO_MANY past a
 * limit (nothing changed). */
int kv_set(kv_t *kv, const char *k, size_t kl, kv_value_t *v);

/* Deletes k; 1 when it existed, else 0. */
int kv_del(kv_t *kv, const char *k, size_t kl);

/* Adds by to the integer at k (missing: 0) and stores *out, the new value.
 * 0; -1 out of memory; -2 when k holds something else than an integer;
 * KV_FULL or KV_TOO_MANY when a new key would pass a limit. */
int kv_incr(kv_t *kv, const char *k, size_t kl, int64_t by, int64_t *out);

/* Calls fn for every key starting with prefix (pl bytes), in no order. */
void kv_each(const kv_t *kv, const char *prefix, size_t pl, void (*fn)(void *ctx, const char *k, size_t kl),
             void *ctx);

#endif
