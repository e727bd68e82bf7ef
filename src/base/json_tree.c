/* json_tree.c - cJSON trees from scanned documents, printing, and the node
 * helpers that know raw strings and spelled keys; see json.h. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "json.h"

/* ---- memory ------------------------------------------------------------ */

/*
 * cJSON allocates every node, key and string separately, and an event's
 * tree lives only as long as the event: small blocks are recycled through
 * per-size free lists instead of going back to malloc each time.  A 16-byte
 * header keeps the size class (free() gets no size) and the alignment.
 * Loop thread only, like everything that touches cJSON here.
 */
#define POOL_CLASSES 8
#define POOL_KEEP 65536 /* blocks kept per class at most */
static const size_t pool_size[POOL_CLASSES] = {16, 32, 48, 64, 96, 128, 192, 256};

typedef union pool_block {
    union pool_block *next;
    max_align_t align;
} pool_block_t;

static pool_block_t *pool_free[POOL_CLASSES];
static size_t pool_count[POOL_CLASSES];

static void *pool_malloc(size_t n)
{
    int c = 0;
    while (c < POOL_CLASSES && pool_size[c] < n)
        c++;
    unsigned char *p;
    if (c < POOL_CLASSES && pool_free[c]) {
        p = (unsigned char *)pool_free[c];
        pool_free[c] = pool_free[c]->next;
        pool_count[c]--;
    } else {
        p = malloc(sizeof(pool_block_t) + (c < POOL_CLASSES ? pool_size[c] : n));
        if (!p)
            return NULL;
    }
    *(int *)p = c;
    return p + sizeof(pool_block_t);
}

static void pool_release(void *ptr)
{
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *)ptr - sizeof(pool_block_t);
    int c = *(int *)p;
    if (c < POOL_CLASSES && pool_count[c] < POOL_KEEP) {
        pool_block_t *b = (pool_block_t *)p;
        b->next = pool_free[c];
        pool_free[c] = b;
        pool_count[c]++;
        return;
    }
    free(p);
}

void json_init(void)
{
    static int done;
    cJSON_Hooks hooks = {pool_malloc, pool_release};
    if (!done) {
        cJSON_InitHooks(&hooks);
        done = 1;
    }
}

/* n bytes at s as a NUL-terminated copy from cJSON's allocator (cJSON_Delete
 * frees it), or NULL. */
static char *node_text(const char *s, size_t n)
{
    char *p = cJSON_malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- trees from tapes ------------------------------------------------------ */

typedef struct build {
    const json_tok_t *tape;
    int exact;
    cJSON **nodes;
    char *nums; /* the text, NULs written over delimiters */
} build_t;

/* String token t as a C string in nums: its bytes between the quotes
 * (plain), or its JSON text, quotes included (spelled).  The byte the NUL
 * goes over is the closing quote, or the delimiter after it, which no
 * other token uses. */
static char *nums_plain(build_t *b, const json_tok_t *t)
{
    b->nums[t->start + t->len] = '\0';
    return b->nums + t->start;
}

static char *nums_spelled(build_t *b, const json_tok_t *t)
{
    b->nums[t->start + t->len + 1] = '\0';
    return b->nums + t->start - 1;
}

/* Makes n the value of string token t. */
static int string_node(build_t *b, cJSON *n, const json_tok_t *t)
{
    if (b->exact) {
        int plain = t->flags & JSON_TOK_PLAIN;
        n->type = (plain ? cJSON_String | JSON_STRING_PLAIN : cJSON_Raw) | cJSON_IsReference;
        n->valuestring = plain ? nums_plain(b, t) : nums_spelled(b, t);
        return 0;
    }
    char *buf = cJSON_malloc((size_t)t->len + 1);
    if (!buf)
        return -1;
    size_t len;
    const char *v = json_tok_string(b->nums, t, buf, &len);
    if (v != buf)
        memcpy(buf, v, len);
    buf[len] = '\0';
    if (memchr(buf, '\0', len)) {
        /* cJSON would cut it: its text instead */
        cJSON_free(buf);
        n->type = cJSON_Raw | cJSON_IsReference;
        n->valuestring = nums_spelled(b, t);
        return 0;
    }
    n->type = cJSON_String;
    n->valuestring = buf;
    return 0;
}

/* Makes key token t the key of item. */
static int key_node(build_t *b, cJSON *item, const json_tok_t *t)
{
    if (b->exact) {
        int plain = t->flags & JSON_TOK_PLAIN;
        item->string = plain ? nums_plain(b, t) : nums_spelled(b, t);
        item->type |= cJSON_StringIsConst | (plain ? JSON_KEY_PLAIN : JSON_KEY_SPELLED);
        return 0;
    }
    char *key = cJSON_malloc((size_t)t->len + 1);
    size_t len;
    if (!key)
        return -1;
    const char *v = json_tok_string(b->nums, t, key, &len);
    if (v != key)
        memcpy(key, v, len);
    key[len] = '\0';
    item->string = key;
    return 0;
}

/* Builds the subtree of token k; returns its node or NULL when out of
 * memory.  Recursion is bounded by JSON_MAX_DEPTH. */
static cJSON *node_from_tok(build_t *b, uint32_t k)
{
    const json_tok_t *tk = &b->tape[k];
    cJSON *n = cJSON_CreateNull();
    if (!n)
        return NULL;
    if (b->nodes)
        b->nodes[k] = n;
    switch (tk->type) {
    case JSON_TOK_NULL:
        break;
    case JSON_TOK_FALSE:
        n->type = cJSON_False;
        break;
    case JSON_TOK_TRUE:
        n->type = cJSON_True;
        n->valueint = 1;
        break;
    case JSON_TOK_NUMBER:
        n->type = cJSON_Raw | cJSON_IsReference;
        n->valuestring = b->nums + tk->start;
        b->nums[tk->start + tk->len] = '\0';
        break;
    case JSON_TOK_STRING:
        if (string_node(b, n, tk) < 0)
            goto fail;
        break;
    default: {
        int obj = tk->type == JSON_TOK_OBJECT;
        cJSON *last = NULL;
        uint32_t c = k + 1;
        n->type = obj ? cJSON_Object : cJSON_Array;
        for (uint32_t m = 0; m < tk->len; m++) {
            uint32_t vk = obj ? c + 1 : c;
            cJSON *child = node_from_tok(b, vk);
            if (!child)
                goto fail;
            if (last) {
                last->next = child;
                child->prev = last;
            } else {
                n->child = child;
            }
            last = child;
            if (obj && key_node(b, child, &b->tape[c]) < 0)
                goto fail;
            c = b->tape[vk].next;
        }
        if (n->child)
            n->child->prev = last;
    }
    }
    return n;
fail:
    cJSON_Delete(n);
    return NULL;
}

cJSON *json_tree_from_tape(const char *text, size_t len, const json_tok_t *tape, uint32_t ntok, int exact,
                           cJSON **nodes, char **nums)
{
    build_t b = {tape, exact, nodes, NULL};
    cJSON *root = NULL;
    *nums = NULL;
    if (!ntok)
        return NULL;
    b.nums = malloc(len + 1);
    if (!b.nums)
        return NULL;
    memcpy(b.nums, text, len);
    b.nums[len] = '\0';
    root = node_from_tok(&b, 0);
    if (!root) {
        free(b.nums);
        return NULL;
    }
    *nums = b.nums;
    return root;
}

static cJSON *parse(const char *text, size_t len, int exact, char **nums)
{
    json_tok_t small[64], *tape = small;
    cJSON *root = NULL;
    *nums = NULL;
    long n = json_scan(text, len, small, 64);
    if (n < 0)
        return NULL;
    if (n > 64) {
        tape = malloc((size_t)n * sizeof *tape);
        if (!tape)
            return NULL;
        json_scan(text, len, tape, (uint32_t)n);
    }
    root = json_tree_from_tape(text, len, tape, (uint32_t)n, exact, NULL, nums);
    if (tape != small)
        free(tape);
    return root;
}

cJSON *json_parse(const char *text, size_t len, char **nums)
{
    return parse(text, len, 0, nums);
}

cJSON *json_parse_exact(const char *text, size_t len, char **nums)
{
    return parse(text, len, 1, nums);
}

/* ---- printing ---------------------------------------------------------------- */

typedef struct out {
    char *buf;
    size_t len, cap;
    int failed;
} out_t;

/* Makes room for n more bytes; -1 (and failed from then on) when out of
 * memory. */
static int out_grow(out_t *o, size_t n)
{
    if (o->failed)
        return -1;
    size_t cap = o->cap ? o->cap * 2 : 256;
    while (cap - o->len < n)
        cap *= 2;
    char *b = realloc(o->buf, cap);
    if (!b) {
        o->failed = 1;
        return -1;
    }
    o->buf = b;
    o->cap = cap;
    return 0;
}

static inline void put(out_t *o, const char *s, size_t n)
{
    if (o->cap - o->len < n && out_grow(o, n) < 0)
        return;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static inline void put_char(out_t *o, char c)
{
    if (o->len == o->cap && out_grow(o, 1) < 0)
        return;
    o->buf[o->len++] = c;
}

/* Position of the first byte of s[i..n) that a JSON string must escape (a
 * quote, a backslash, a control character), or n. */
static size_t escape_stop(const unsigned char *s, size_t i, size_t n)
{
#ifdef __SSE2__
    const __m128i q = _mm_set1_epi8('"'), b = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1F);
    while (i + 16 <= n) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i low = _mm_cmpeq_epi8(_mm_max_epu8(v, ctl), ctl); /* v <= 0x1F */
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, b)), low);
        unsigned m = (unsigned)_mm_movemask_epi8(hit);
        if (m)
            return i + (size_t)__builtin_ctz(m);
        i += 16;
    }
#endif
    while (i < n && s[i] >= 0x20 && s[i] != '"' && s[i] != '\\')
        i++;
    return i;
}

/* The escape of byte c (one escape_stop stopped at) into esc: its length. */
static size_t escape_of(unsigned char c, char esc[8])
{
    static const char hex[] = "0123456789abcdef";
    esc[0] = '\\';
    switch (c) {
    case '"': case '\\': esc[1] = (char)c; return 2;
    case '\b': esc[1] = 'b'; return 2;
    case '\f': esc[1] = 'f'; return 2;
    case '\n': esc[1] = 'n'; return 2;
    case '\r': esc[1] = 'r'; return 2;
    case '\t': esc[1] = 't'; return 2;
    default:
        memcpy(esc + 1, "u00", 3);
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 15];
        return 6;
    }
}

/* n bytes at s as a JSON string, escaped as cJSON escapes (quote,
 * backslash, control characters; everything else as it is). */
static void put_string(out_t *o, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    put_char(o, '"');
    for (size_t i = 0;;) {
        size_t j = escape_stop(u, i, n);
        put(o, s + i, j - i);
        if (j == n)
            break;
        char esc[8];
        put(o, esc, escape_of(u[j], esc));
        i = j + 1;
    }
    put_char(o, '"');
}

size_t json_write_string(char *dst, size_t cap, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t len = 0;
    if (cap < n + 2)
        return 0;
    if (n <= 32) {
        /* Short strings (keys, codes) rarely need an escape: copied as
         * they are looked at. */
        static const unsigned char escaped[256] = {
            [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1, [0x06] = 1, [0x07] = 1,
            [0x08] = 1, [0x09] = 1, [0x0a] = 1, [0x0b] = 1, [0x0c] = 1, [0x0d] = 1, [0x0e] = 1, [0x0f] = 1,
            [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, [0x14] = 1, [0x15] = 1, [0x16] = 1, [0x17] = 1,
            [0x18] = 1, [0x19] = 1, [0x1a] = 1, [0x1b] = 1, [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1,
            ['"'] = 1, ['\\'] = 1};
        size_t i = 0;
        for (; i < n && !escaped[u[i]]; i++)
            dst[i + 1] = (char)u[i];
        if (i == n) {
            dst[0] = dst[n + 1] = '"';
            return n + 2;
        }
    }
    dst[len++] = '"';
    for (size_t i = 0;;) {
        size_t j = escape_stop(u, i, n);
        if (cap - len < j - i + 1)
            return 0;
        memcpy(dst + len, s + i, j - i);
        len += j - i;
        if (j == n)
            break;
        char esc[8];
        size_t e = escape_of(u[j], esc);
        if (cap - len < e + 1)
            return 0;
        memcpy(dst + len, esc, e);
        len += e;
        i = j + 1;
    }
    dst[len++] = '"';
    return len;
}

/* n bytes at s that need no escapes (JSON_STRING_PLAIN), between quotes. */
static inline __attribute__((always_inline)) void put_quoted(out_t *o, const char *s, size_t n)
{
    if (o->cap - o->len < n + 2 && out_grow(o, n + 2) < 0)
        return;
    char *d = o->buf + o->len;
    d[0] = '"';
    memcpy(d + 1, s, n);
    d[n + 1] = '"';
    o->len += n + 2;
}

/* A plain cJSON number, as cJSON prints it. */
static void put_number(out_t *o, const cJSON *v)
{
    char buf[32];
    double d = v->valuedouble, test;
    if (isnan(d) || isinf(d)) {
        snprintf(buf, sizeof buf, "null");
    } else if (d == (double)v->valueint) {
        snprintf(buf, sizeof buf, "%d", v->valueint);
    } else {
        snprintf(buf, sizeof buf, "%1.15g", d);
        test = strtod(buf, NULL);
        if (fabs(test - d) > fmax(fabs(test), fabs(d)) * 2.220446049250313e-16)
            snprintf(buf, sizeof buf, "%1.17g", d);
    }
    put(o, buf, strlen(buf));
}

static void put_node(out_t *o, const cJSON *v)
{
    const cJSON *c;
    switch (v->type & 0xFF) {
    case cJSON_NULL: put(o, "null", 4); return;
    case cJSON_False: put(o, "false", 5); return;
    case cJSON_True: put(o, "true", 4); return;
    case cJSON_Number: put_number(o, v); return;
    case cJSON_Raw:
        if (!v->valuestring)
            o->failed = 1;
        else
            put(o, v->valuestring, strlen(v->valuestring));
        return;
    case cJSON_String:
        if (!v->valuestring)
            put(o, "\"\"", 2);
        else if ((v->type & (JSON_STRING_PLAIN | cJSON_IsReference)) == (JSON_STRING_PLAIN | cJSON_IsReference))
            put_quoted(o, v->valuestring, strlen(v->valuestring));
        else
            put_string(o, v->valuestring, strlen(v->valuestring));
        return;
    case cJSON_Array:
        put_char(o, '[');
        for (c = v->child; c && !o->failed; c = c->next) {
            put_node(o, c);
            if (c->next)
                put_char(o, ',');
        }
        put_char(o, ']');
        return;
    case cJSON_Object:
        put_char(o, '{');
        for (c = v->child; c && !o->failed; c = c->next) {
            if (c->type & JSON_KEY_SPELLED)
                put(o, c->string, strlen(c->string));
            else if (c->string && (c->type & (JSON_KEY_PLAIN | cJSON_StringIsConst)) ==
                                      (JSON_KEY_PLAIN | cJSON_StringIsConst))
                put_quoted(o, c->string, strlen(c->string));
            else
                put_string(o, c->string ? c->string : "", c->string ? strlen(c->string) : 0);
            put_char(o, ':');
            put_node(o, c);
            if (c->next)
                put_char(o, ',');
        }
        put_char(o, '}');
        return;
    default:
        o->failed = 1;
    }
}

char *json_print(const cJSON *v, size_t *len)
{
    out_t o = {NULL, 0, 0, 0};
    *len = 0;
    put_node(&o, v);
    put_char(&o, '\0');
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    *len = o.len - 1;
    return o.buf;
}

/* ---- nodes ------------------------------------------------------------------- */

int json_is_number(const cJSON *n)
{
    if (!n)
        return 0;
    if ((n->type & 0xFF) == cJSON_Number)
        return 1;
    return (n->type & 0xFF) == cJSON_Raw && n->valuestring && n->valuestring[0] != '"';
}

int json_is_string(const cJSON *n)
{
    if (!n)
        return 0;
    if ((n->type & 0xFF) == cJSON_String)
        return 1;
    return (n->type & 0xFF) == cJSON_Raw && n->valuestring && n->valuestring[0] == '"';
}

/* The bytes of JSON string text s (quotes included), decoded into buf. */
static const char *spelled_bytes(const char *s, char *buf, size_t *len)
{
    size_t n = strlen(s);
    long dl = n >= 2 ? json_decode_string((const unsigned char *)s + 1, (const unsigned char *)s + n - 1,
                                          (unsigned char *)buf)
                     : -1;
    *len = dl > 0 ? (size_t)dl : 0;
    return buf;
}

const char *json_string_bytes(const cJSON *n, char *buf, size_t *len)
{
    if ((n->type & 0xFF) == cJSON_Raw)
        return spelled_bytes(n->valuestring, buf, len);
    *len = n->valuestring ? strlen(n->valuestring) : 0;
    return n->valuestring ? n->valuestring : "";
}

const char *json_key_bytes(const cJSON *item, char *buf, size_t *len)
{
    if (item->string && (item->type & JSON_KEY_SPELLED))
        return spelled_bytes(item->string, buf, len);
    *len = item->string ? strlen(item->string) : 0;
    return item->string ? item->string : "";
}

/* json_key_equals, told whether key holds a NUL. */
static inline int key_equals(const cJSON *item, const char *key, size_t klen, int key_has_nul)
{
    const char *s = item->string;
    if (!s)
        return 0;
    if (item->type & JSON_KEY_SPELLED) {
        size_t n = strlen(s);
        return n >= 2 &&
               json_escaped_equals((const unsigned char *)s + 1, (const unsigned char *)s + n - 1, key, klen);
    }
    /* A key of its own bytes holds no NUL.  For a key without one,
     * strncmp stops at the end of s, so s[klen] is read only when s is
     * that long. */
    if (key_has_nul || !klen)
        return !key_has_nul && s[0] == '\0';
    return s[0] == key[0] && strncmp(s, key, klen) == 0 && s[klen] == '\0';
}

int json_key_equals(const cJSON *item, const char *key, size_t klen)
{
    return key_equals(item, key, klen, memchr(key, '\0', klen) != NULL);
}

cJSON *json_object_get(const cJSON *obj, const char *key, size_t klen, unsigned nth)
{
    int has_nul = memchr(key, '\0', klen) != NULL;
    for (cJSON *c = obj ? obj->child : NULL; c; c = c->next)
        if (key_equals(c, key, klen, has_nul) && --nth == 0)
            return c;
    return NULL;
}

/* The JSON text of len bytes at s (quotes included) from cJSON's allocator. */
static char *spelled_text(const char *s, size_t len)
{
    out_t o = {NULL, 0, 0, 0};
    put_string(&o, s, len);
    char *t = o.failed ? NULL : node_text(o.buf, o.len);
    free(o.buf);
    return t;
}

cJSON *json_new_string(const char *s, size_t len)
{
    cJSON *n = cJSON_CreateNull();
    if (!n)
        return NULL;
    int nul = memchr(s, '\0', len) != NULL;
    n->type = nul ? cJSON_Raw : cJSON_String;
    n->valuestring = nul ? spelled_text(s, len) : node_text(s, len);
    if (!n->valuestring) {
        cJSON_Delete(n);
        return NULL;
    }
    return n;
}

int json_set_key(cJSON *item, const char *key, size_t klen)
{
    int nul = memchr(key, '\0', klen) != NULL;
    char *k = nul ? spelled_text(key, klen) : node_text(key, klen);
    if (!k)
        return -1;
    if (item->string && !(item->type & cJSON_StringIsConst))
        cJSON_free(item->string);
    item->string = k;
    item->type &= ~(cJSON_StringIsConst | JSON_KEY_SPELLED | JSON_KEY_PLAIN);
    if (nul)
        item->type |= JSON_KEY_SPELLED;
    return 0;
}

cJSON *json_duplicate(const cJSON *n)
{
    cJSON *d = cJSON_CreateNull(), *last = NULL;
    if (!d)
        return NULL;
    d->type = n->type &
              ~(cJSON_IsReference | cJSON_StringIsConst | JSON_KEY_SPELLED | JSON_KEY_PLAIN | JSON_STRING_PLAIN);
    d->valueint = n->valueint;
    d->valuedouble = n->valuedouble;
    if (n->valuestring && !(d->valuestring = node_text(n->valuestring, strlen(n->valuestring))))
        goto fail;
    for (const cJSON *c = n->child; c; c = c->next) {
        cJSON *e = json_duplicate(c);
        if (!e)
            goto fail;
        if (last) {
            last->next = e;
            e->prev = last;
        } else {
            d->child = e;
        }
        last = e;
        d->child->prev = last;
        if (c->string) {
            if (!(e->string = node_text(c->string, strlen(c->string))))
                goto fail;
            e->type |= c->type & JSON_KEY_SPELLED;
        }
    }
    return d;
fail:
    cJSON_Delete(d);
    return NULL;
}
