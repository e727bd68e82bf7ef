/* json.c - see json.h. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "json.h"

#define PROXY_MT "tide.json.proxy" /* registry name, for luaL_testudata */
#define MAX_DEPTH 64

/* Registry keys (their addresses) of the metatables. */
static const char proxy_key = 'p', doc_key = 'd', array_key = 'a';

/* The address of this is tide.null's registry key. */
static const char null_key = 'n';

/* A JSON object or array handed to Lua: a token of its owner's tape until
 * the owner has a tree, then a node of that tree. */
typedef struct proxy {
    cJSON *node;
    json_owner_t *owner; /* its owner, kept alive by the proxy's user value */
    uint64_t serial;     /* or, for owners released_by_owner: its registration */
    uint32_t tok;
} proxy_t;

/*
 * Views of owners that are released explicitly (events, whose pipeline
 * end is certain) are registered here instead of holding their owner in a
 * user value.  Such an owner gets a serial (never reused) on its first
 * view, in slot serial % LIGHT_SLOTS; a view names the owner by serial and
 * finds it live only while the slot still holds that serial.  An object or
 * array of the tape is then a light userdata [serial:40][token:24]: no
 * allocation and nothing for the collector per view; one that has no token
 * (made by a write) is a small userdata with the serial.  With the token
 * LIGHT_OWNER_TOK the light userdata is a handle of the owner itself (the
 * event in the pipeline, see event.c).  Light userdata share one metatable
 * per state (event_open's, which sends views here); no other light userdata
 * reaches scripts.  An owner that finds its slot taken (one still live after
 * LIGHT_SLOTS newer ones) keeps the ordinary proxies.  Loop thread only.
 */
#define LIGHT_SLOTS 4096
#define LIGHT_TOK_BITS 24
#define LIGHT_TOK_MASK ((1u << LIGHT_TOK_BITS) - 1)
#define LIGHT_OWNER_TOK LIGHT_TOK_MASK /* a handle: the owner itself */
#define LIGHT_TOK_MAX (LIGHT_TOK_MASK - 1) /* the highest token of a view */
#define LIGHT_SERIAL_MAX ((UINT64_C(1) << (64 - LIGHT_TOK_BITS)) - 1)
#define NO_SERIAL UINT64_MAX /* released, or could not register */

static struct {
    uint64_t serial;
    json_owner_t *owner; /* NULL once released */
} light_slot[LIGHT_SLOTS];
static uint64_t light_next = 1;

/* Registers o for views if it can be: 1 when it is registered. */
static int light_register(json_owner_t *o)
{
    if (o->serial)
        return o->serial != NO_SERIAL;
    uint64_t s = light_next;
    size_t i = (size_t)(s % LIGHT_SLOTS);
    if (!o->released_by_owner || light_slot[i].owner || s > LIGHT_SERIAL_MAX || UINTPTR_MAX < UINT64_MAX) {
        o->serial = NO_SERIAL;
        return 0;
    }
    light_next++;
    light_slot[i].serial = s;
    light_slot[i].owner = o;
    o->serial = s;
    return 1;
}

/* The live owner registered as serial, or NULL. */
static json_owner_t *light_owner(uint64_t serial)
{
    size_t i = (size_t)(serial % LIGHT_SLOTS);
    return light_slot[i].serial == serial ? light_slot[i].owner : NULL;
}

int json_push_owner_handle(lua_State *L, json_owner_t *o)
{
    if (!light_register(o))
        return 0;
    lua_pushlightuserdata(L, (void *)(uintptr_t)(o->serial << LIGHT_TOK_BITS | LIGHT_OWNER_TOK));
    return 1;
}

int json_light_kind(lua_State *L, int idx, json_owner_t **o)
{
    uint64_t v = (uint64_t)(uintptr_t)lua_touserdata(L, idx);
    if ((v & LIGHT_TOK_MASK) != LIGHT_OWNER_TOK)
        return JSON_LIGHT_VIEW;
    *o = light_owner(v >> LIGHT_TOK_BITS);
    return JSON_LIGHT_OWNER;
}

typedef struct document {
    json_owner_t owner;
    json_tree_t t;
} document_t;

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

/* ---- parsing ----------------------------------------------------------- */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * Gives every number node of tree its original text.  cJSON has already
 * checked the document, so a light scan is enough: outside strings, a '-'
 * or a digit starts a number, and numbers appear in the text in the same
 * order as in a depth-first walk of the tree.  The copy of the text in
 * *nums gets a NUL after each number (its delimiter is not needed there),
 * and each number node points into it, flagged as a reference so that
 * cJSON never frees that text.
 */
static int attach_numbers(cJSON *tree, const char *text, size_t len, char **nums)
{
    cJSON *stack[1024]; /* cJSON refuses documents nested deeper than 1000 */
    int sp = 0;
    size_t i = 0;
    char *copy = NULL;
    cJSON *n = tree;

    for (;;) {
        if (n->type == cJSON_Number) {
            for (;;) {
                if (i >= len)
                    goto fail;
                char c = text[i];
                if (c == '"') { /* skip a string: to the first quote not escaped */
                    for (;;) {
                        const char *q = memchr(text + i + 1, '"', len - i - 1);
                        if (!q)
                            goto fail;
                        i = (size_t)(q - text);
                        size_t bs = 0;
                        while (text[i - 1 - bs] == '\\')
                            bs++;
                        if (bs % 2 == 0)
                            break;
                    }
                    i++;
                    continue;
                }
                if (c == '-' || (c >= '0' && c <= '9'))
                    break;
                i++;
            }
            size_t start = i;
            while (i < len && (text[i] == '-' || text[i] == '+' || text[i] == '.' || text[i] == 'e' ||
                               text[i] == 'E' || (text[i] >= '0' && text[i] <= '9')))
                i++;
            if (!copy) {
                copy = malloc(len + 1);
                if (!copy)
                    goto fail;
                memcpy(copy, text, len);
                copy[len] = '\0';
            }
            copy[i] = '\0';
            n->type = cJSON_Raw | cJSON_IsReference;
            n->valuestring = copy + start;
        }
        /* The next node, depth first. */
        if (n->child) {
            if (sp == (int)(sizeof stack / sizeof stack[0]))
                goto fail;
            stack[sp++] = n;
            n = n->child;
            continue;
        }
        for (;;) {
            if (sp == 0)
                goto done; /* back at the root */
            if (n->next) {
                n = n->next;
                break;
            }
            n = stack[--sp];
        }
    }
done:
    *nums = copy;
    return 0;
fail:
    /* Nodes already pointing into copy must not outlive it: the caller
     * deletes the tree, and reference nodes do not free their text. */
    free(copy);
    return -1;
}

cJSON *json_parse(const char *text, size_t len, char **nums)
{
    const char *end = NULL;
    *nums = NULL;
    if (len == 0)
        return NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!v)
        return NULL;
    for (size_t i = (size_t)(end - text); i < len; i++) {
        if (!is_space(text[i])) {
            cJSON_Delete(v);
            return NULL;
        }
    }
    if (attach_numbers(v, text, len, nums) < 0) {
        cJSON_Delete(v);
        return NULL;
    }
    return v;
}

char *json_print(const cJSON *v, size_t *len)
{
    /* cJSON's buffer comes from the block pool; callers get plain malloc. */
    char *s = cJSON_PrintUnformatted(v);
    char *out = NULL;
    *len = 0;
    if (s) {
        size_t n = strlen(s);
        out = malloc(n + 1);
        if (out) {
            memcpy(out, s, n + 1);
            *len = n;
        }
        cJSON_free(s);
    }
    return out;
}

/* ---- scanning: a tape of tokens instead of a tree --------------------------- */

/*
 * json_scan follows cJSON 1.7's parser rule for rule, so that a payload is
 * JSON (or not) exactly as it was when cJSON decided:
 *   - a UTF-8 BOM is skipped when the text has 5 bytes or more;
 *   - whitespace is any byte <= 32 (NUL too), except after the top value,
 *     where json_parse allows only space, tab, CR and LF;
 *   - a number starts with '-' or a digit, and is what strtod reads of the
 *     run of [0-9+-.eE] that follows (as patched in Debian's 1.7.15, with no
 *     63-byte limit); when strtod stops before the run ends the document is
 *     not JSON;
 *   - a string ends at the first quote not paired with a backslash; any
 *     byte may appear raw; escapes are \b \f \n \r \t \" \\ \/ and \uXXXX,
 *     where a bad hex digit reads as U+0000, a low surrogate alone fails and
 *     a high one needs a low one;
 *   - at most 1000 nested arrays and objects (CJSON_NESTING_LIMIT).
 * tests/fuzz/fuzz_json.c checks this against cJSON on every input.
 */
#define SCAN_MAX_NEST 1000

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int in_number_run(unsigned char c)
{
    return is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* cJSON's parse_hex4: 0 as soon as a digit is not hex. */
static unsigned hex4(const unsigned char *p)
{
    unsigned h = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        if (c >= '0' && c <= '9')
            h = h * 16 + (unsigned)(c - '0');
        else if (c >= 'A' && c <= 'F')
            h = h * 16 + 10 + (unsigned)(c - 'A');
        else if (c >= 'a' && c <= 'f')
            h = h * 16 + 10 + (unsigned)(c - 'a');
        else
            return 0;
    }
    return h;
}

/*
 * Decodes a \u sequence at p (end: the closing quote) like cJSON's
 * utf16_literal_to_utf8.  Returns the bytes it takes (6 or 12), or 0 when
 * invalid; writes the UTF-8 bytes to out (when not NULL) and their count.
 */
static int utf16_escape(const unsigned char *p, const unsigned char *end, unsigned char *out, int *outlen)
{
    if (end - p < 6)
        return 0;
    unsigned long cp = hex4(p + 2);
    int seq = 6;
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return 0;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        const unsigned char *q = p + 6;
        if (end - q < 6 || q[0] != '\\' || q[1] != 'u')
            return 0;
        unsigned lo = hex4(q + 2);
        if (lo < 0xDC00 || lo > 0xDFFF)
            return 0;
        cp = 0x10000 + (((cp & 0x3FF) << 10) | (lo & 0x3FF));
        seq = 12;
    }
    int n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (out) {
        static const unsigned char mark[5] = {0, 0, 0xC0, 0xE0, 0xF0};
        for (int i = n - 1; i > 0; i--) {
            out[i] = (unsigned char)((cp | 0x80) & 0xBF);
            cp >>= 6;
        }
        out[0] = (unsigned char)(n > 1 ? (cp | mark[n]) & 0xFF : cp & 0x7F);
    }
    *outlen = n;
    return seq;
}

/*
 * Decodes the string between s and end (its escapes as cJSON does) into
 * out, which has room for end - s bytes.  Returns the decoded length, or -1
 * when an escape is invalid (out NULL: only checks).
 */
static long decode_string(const unsigned char *s, const unsigned char *end, unsigned char *out)
{
    size_t n = 0;
    for (const unsigned char *p = s; p < end;) {
        if (*p != '\\') {
            if (out)
                out[n] = *p;
            n++;
            p++;
            continue;
        }
        unsigned char c = 0;
        switch (p[1]) {
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case '"': case '\\': case '/': c = p[1]; break;
        case 'u': {
            int ol, seq = utf16_escape(p, end, out ? out + n : NULL, &ol);
            if (!seq)
                return -1;
            n += (size_t)ol;
            p += seq;
            continue;
        }
        default:
            return -1;
        }
        if (out)
            out[n] = c;
        n++;
        p += 2;
    }
    return (long)n;
}

typedef struct scan {
    const unsigned char *s;
    size_t len;
    json_tok_t *tok;
    uint32_t cap, n;
} scan_t;

#define SCAN_INLINE static inline __attribute__((always_inline))

SCAN_INLINE uint32_t add_tok(scan_t *sc, int type, size_t start, size_t len, int flags)
{
    uint32_t k = sc->n++;
    if (k < sc->cap) {
        json_tok_t *t = &sc->tok[k];
        t->start = (uint32_t)start;
        t->len = (uint32_t)len;
        t->next = k + 1;
        t->type = (uint8_t)type;
        t->flags = (uint8_t)flags;
    }
    return k;
}

/* Position of the first byte of s[i..) that is a quote, a backslash or NUL
 * (or len). */
SCAN_INLINE size_t string_stop(const unsigned char *s, size_t i, size_t len)
{
#ifdef __SSE2__
    const __m128i q = _mm_set1_epi8('"'), b = _mm_set1_epi8('\\'), z = _mm_setzero_si128();
    while (i + 16 <= len) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, b)), _mm_cmpeq_epi8(v, z));
        unsigned m = (unsigned)_mm_movemask_epi8(hit);
        if (m)
            return i + (size_t)__builtin_ctz(m);
        i += 16;
    }
    if (i < len && len >= 16) {
        /* The last bytes: the 16 that end the text, those before i masked. */
        size_t base = len - 16;
        __m128i v = _mm_loadu_si128((const __m128i *)(s + base));
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, b)), _mm_cmpeq_epi8(v, z));
        unsigned m = (unsigned)_mm_movemask_epi8(hit) >> (i - base);
        return m ? i + (size_t)__builtin_ctz(m) : len;
    }
#endif
    while (i < len && s[i] != '"' && s[i] != '\\' && s[i] != 0)
        i++;
    return i;
}

/* A string whose opening quote is at s[*i]; on success *i is past it. */
SCAN_INLINE int scan_string(scan_t *sc, size_t *i)
{
    const unsigned char *s = sc->s;
    size_t start = *i + 1, j = start;
    int flags = JSON_TOK_PLAIN;
    for (;;) {
        j = string_stop(s, j, sc->len);
        if (j >= sc->len)
            return -1;
        if (s[j] == '"')
            break;
        if (s[j] == 0) {
            flags = 0; /* cJSON's value ends at the NUL */
            j++;
            continue;
        }
        /* An escape: find the end pairing every backslash with the next
         * byte, as cJSON does, then check the escapes. */
        flags = 0;
        while (j < sc->len && s[j] != '"') {
            if (s[j] == '\\') {
                if (j + 1 >= sc->len)
                    return -1;
                j++;
            }
            j++;
        }
        if (j >= sc->len || decode_string(s + start, s + j, NULL) < 0)
            return -1;
        break;
    }
    add_tok(sc, JSON_TOK_STRING, start, j - start, flags);
    *i = j + 1;
    return 0;
}

/* A number starting at s[*i] ('-' or a digit). */
SCAN_INLINE int scan_number(scan_t *sc, size_t *i)
{
    const unsigned char *s = sc->s;
    size_t start = *i, run = start, p = start;
    while (run < sc->len && in_number_run(s[run]))
        run++;
    /* What strtod reads: [-]digits[.digits][e[+-]digits], one digit at least
     * before the exponent; it must be the whole run. */
    if (s[p] == '-')
        p++;
    size_t digits = 0;
    while (p < run && is_digit(s[p]))
        p++, digits++;
    if (p < run && s[p] == '.') {
        p++;
        while (p < run && is_digit(s[p]))
            p++, digits++;
    }
    if (!digits)
        return -1;
    if (p < run && (s[p] == 'e' || s[p] == 'E')) {
        size_t q = p + 1;
        if (q < run && (s[q] == '+' || s[q] == '-'))
            q++;
        if (q < run && is_digit(s[q])) {
            while (q < run && is_digit(s[q]))
                q++;
            p = q;
        }
    }
    if (p != run)
        return -1;
    add_tok(sc, JSON_TOK_NUMBER, start, run - start, 0);
    *i = run;
    return 0;
}

SCAN_INLINE size_t skip_space(const unsigned char *s, size_t i, size_t len)
{
    if (i < len && s[i] > 32)
        return i; /* the common case: no space at all */
    while (i < len && s[i] <= 32)
        i++;
    return i;
}

long json_scan(const char *text, size_t len, json_tok_t *tok, uint32_t cap)
{
    scan_t sc = {(const unsigned char *)text, len, tok, cap, 0};
    const unsigned char *s = sc.s;
    struct {
        uint32_t tok, members;
        int obj;
    } stack[SCAN_MAX_NEST];
    int depth = 0;
    size_t i = 0;

    if (len == 0 || len >= UINT32_MAX)
        return -1;
    if (len > 4 && s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF)
        i = 3;
    i = skip_space(s, i, len);
value:
    if (i >= len)
        return -1;
    switch (s[i]) {
    case 'n':
        if (len - i < 4 || memcmp(s + i, "null", 4))
            return -1;
        add_tok(&sc, JSON_TOK_NULL, i, 4, 0);
        i += 4;
        break;
    case 't':
        if (len - i < 4 || memcmp(s + i, "true", 4))
            return -1;
        add_tok(&sc, JSON_TOK_TRUE, i, 4, 0);
        i += 4;
        break;
    case 'f':
        if (len - i < 5 || memcmp(s + i, "false", 5))
            return -1;
        add_tok(&sc, JSON_TOK_FALSE, i, 5, 0);
        i += 5;
        break;
    case '"':
        if (scan_string(&sc, &i) < 0)
            return -1;
        break;
    case '[':
    case '{': {
        int obj = s[i] == '{';
        if (depth >= SCAN_MAX_NEST)
            return -1;
        stack[depth].tok = add_tok(&sc, obj ? JSON_TOK_OBJECT : JSON_TOK_ARRAY, i, 0, 0);
        stack[depth].members = 0;
        stack[depth].obj = obj;
        depth++;
        i = skip_space(s, i + 1, len);
        if (i < len && s[i] == (obj ? '}' : ']')) {
            i++;
            goto close;
        }
        stack[depth - 1].members = 1;
        if (obj)
            goto key;
        goto value;
    }
    default:
        if (s[i] != '-' && !is_digit(s[i]))
            return -1;
        if (scan_number(&sc, &i) < 0)
            return -1;
        break;
    }
    /* After a value: the end of the text, or of its container, or a comma. */
    while (depth > 0) {
        i = skip_space(s, i, len);
        if (i >= len)
            return -1;
        if (s[i] == ',') {
            stack[depth - 1].members++;
            i = skip_space(s, i + 1, len);
            if (stack[depth - 1].obj)
                goto key;
            goto value;
        }
        if (s[i] != (stack[depth - 1].obj ? '}' : ']'))
            return -1;
        i++;
    close:
        depth--;
        if (stack[depth].tok < cap) {
            tok[stack[depth].tok].len = stack[depth].members;
            tok[stack[depth].tok].next = sc.n;
        }
    }
    for (; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return -1;
    return (long)sc.n;
key:
    if (i >= len || s[i] != '"' || scan_string(&sc, &i) < 0)
        return -1;
    i = skip_space(s, i, len);
    if (i >= len || s[i] != ':')
        return -1;
    i = skip_space(s, i + 1, len);
    goto value;
}

/* ---- reading a tape ------------------------------------------------------------ */

/* The value of string token t, decoded (escapes, and cut at a NUL as cJSON
 * cuts it): points into the text when it can, else into buf (room for
 * t->len bytes).  Sets *n. */
static const char *tok_string(const char *text, const json_tok_t *t, char *buf, size_t *n)
{
    const char *s = text + t->start;
    if (t->flags & JSON_TOK_PLAIN) {
        *n = t->len;
        return s;
    }
    long dl = decode_string((const unsigned char *)s, (const unsigned char *)s + t->len, (unsigned char *)buf);
    const char *nul = memchr(buf, '\0', (size_t)(dl > 0 ? dl : 0));
    *n = nul ? (size_t)(nul - buf) : (size_t)(dl > 0 ? dl : 0);
    return buf;
}

/* memcmp(a, b, n) == 0 without a call for the short keys scripts use. */
static inline int same_bytes(const char *a, const char *b, size_t n)
{
    if (n > 16)
        return memcmp(a, b, n) == 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

uint32_t json_tape_member(const json_owner_t *o, uint32_t obj, const char *key, size_t klen)
{
    const json_tok_t *tape = o->tape;
    for (size_t i = 0; i < klen; i++)
        if (key[i] == '\0') {
            klen = i; /* cJSON compares C strings */
            break;
        }
    uint32_t k = obj + 1;
    for (uint32_t m = 0; m < tape[obj].len; m++) {
        const json_tok_t *kt = &tape[k];
        if (kt->flags & JSON_TOK_PLAIN) {
            if (kt->len == klen && same_bytes(o->text + kt->start, key, klen))
                return k + 1;
        } else if (kt->len >= klen) {
            char small[256], *buf = kt->len <= sizeof small ? small : malloc(kt->len);
            size_t n;
            const char *v = buf ? tok_string(o->text, kt, buf, &n) : NULL;
            int same = v && n == klen && memcmp(v, key, klen) == 0;
            if (buf != small)
                free(buf);
            if (same)
                return k + 1;
        }
        k = tape[k + 1].next;
    }
    return JSON_NO_TOK;
}

/* Pushes a number as json_push_number does for its text. */
static void push_number_text(lua_State *L, const char *s, size_t n)
{
    char small[64], *buf = small;
    size_t i = 0;
    int neg = 0, plain = n <= 18;
    /* Up to 18 digits always fit in 64 bits: the common case needs no libc. */
    if (plain && s[0] == '-')
        neg = 1, i = 1;
    lua_Integer v = 0;
    for (size_t j = i; plain && j < n; j++) {
        if (!is_digit((unsigned char)s[j]))
            plain = 0;
        else
            v = v * 10 + (s[j] - '0');
    }
    if (plain && n > (size_t)neg) {
        lua_pushinteger(L, neg ? -v : v);
        return;
    }
    if (n >= sizeof small) {
        /* A long text: its copy lives in a userdata, so an error frees it. */
        buf = lua_newuserdatauv(L, n + 1, 0);
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    lua_Number d = 0;
    if (!strpbrk(buf, ".eE")) {
        char *end;
        errno = 0;
        long long ll = strtoll(buf, &end, 10);
        if (errno == 0 && *end == '\0') {
            if (buf != small)
                lua_pop(L, 1);
            lua_pushinteger(L, (lua_Integer)ll);
            return;
        }
    }
    d = strtod(buf, NULL);
    if (buf != small)
        lua_pop(L, 1);
    lua_pushnumber(L, d);
}

static void push_proxy(lua_State *L, json_owner_t *o, cJSON *node, uint32_t tok, int owner_idx, int mt_idx);

void json_push_tok(lua_State *L, json_owner_t *o, uint32_t tok, int owner_idx, int mt_idx)
{
    const json_tok_t *t = &o->tape[tok];
    switch (t->type) {
    case JSON_TOK_NULL:
        json_push_null(L);
        return;
    case JSON_TOK_FALSE:
        lua_pushboolean(L, 0);
        return;
    case JSON_TOK_TRUE:
        lua_pushboolean(L, 1);
        return;
    case JSON_TOK_NUMBER:
        push_number_text(L, o->text + t->start, t->len);
        return;
    case JSON_TOK_STRING: {
        size_t n;
        if (t->flags & JSON_TOK_PLAIN) {
            lua_pushlstring(L, o->text + t->start, t->len);
            return;
        }
        luaL_Buffer b;
        char *buf = luaL_buffinitsize(L, &b, t->len + 1);
        tok_string(o->text, t, buf, &n); /* not plain: decoded into buf */
        luaL_pushresultsize(&b, n);
        return;
    }
    default:
        push_proxy(L, o, NULL, tok, owner_idx, mt_idx);
    }
}

/* ---- trees from tapes ------------------------------------------------------------ */

/* Builds the subtree of token k (and its siblings' nodes are linked by the
 * caller).  Numbers become raw nodes over t->nums, as json_parse makes
 * them.  Returns the node or NULL when out of memory. */
static cJSON *node_from_tok(const json_owner_t *o, json_tree_t *t, uint32_t k)
{
    const json_tok_t *tk = &o->tape[k];
    cJSON *n = cJSON_CreateNull();
    if (!n)
        return NULL;
    t->nodes[k] = n;
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
        n->valuestring = t->nums + tk->start;
        break;
    case JSON_TOK_STRING: {
        char *buf = cJSON_malloc((size_t)tk->len + 1);
        size_t len;
        if (!buf)
            goto fail;
        const char *v = tok_string(o->text, tk, buf, &len);
        if (v != buf)
            memcpy(buf, v, len);
        buf[len] = '\0';
        n->type = cJSON_String;
        n->valuestring = buf;
        break;
    }
    default: {
        int obj = tk->type == JSON_TOK_OBJECT;
        cJSON *last = NULL;
        uint32_t c = k + 1;
        n->type = obj ? cJSON_Object : cJSON_Array;
        for (uint32_t m = 0; m < tk->len; m++) {
            const json_tok_t *kt = obj ? &o->tape[c] : NULL;
            uint32_t vk = obj ? c + 1 : c;
            cJSON *child = node_from_tok(o, t, vk);
            if (!child)
                goto fail;
            if (last) {
                last->next = child;
                child->prev = last;
            } else {
                n->child = child;
            }
            last = child;
            if (obj) {
                char *key = cJSON_malloc((size_t)kt->len + 1);
                size_t len;
                if (!key)
                    goto fail;
                const char *v = tok_string(o->text, kt, key, &len);
                if (v != key)
                    memcpy(key, v, len);
                key[len] = '\0';
                child->string = key;
            }
            c = o->tape[vk].next;
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

static int tree_from_tape(const json_owner_t *o, json_tree_t *t)
{
    t->nodes = calloc(o->ntok, sizeof *t->nodes);
    t->nums = malloc(o->text_len + 1);
    if (!t->nodes || !t->nums)
        return -1;
    /* The number texts, each ended by a NUL over the byte after it (a
     * delimiter, not needed here). */
    memcpy(t->nums, o->text, o->text_len);
    for (uint32_t k = 0; k < o->ntok; k++)
        if (o->tape[k].type == JSON_TOK_NUMBER)
            t->nums[o->tape[k].start + o->tape[k].len] = '\0';
    t->root = node_from_tok(o, t, 0);
    return t->root ? 0 : -1;
}

static document_t *new_document(lua_State *L);

json_tree_t *json_owner_tree(lua_State *L, json_owner_t *o, int owner_idx)
{
    if (o->tree)
        return o->tree;
    if (o->released_by_owner) {
        /* C memory, freed by json_owner_release. */
        json_tree_t *t = calloc(1, sizeof *t);
        if (!t || (o->tape && tree_from_tape(o, t) < 0)) {
            if (t)
                json_tree_free(t);
            free(t);
            luaL_error(L, "out of memory");
        }
        o->tree = t;
        return t;
    }
    owner_idx = lua_absindex(L, owner_idx);
    document_t *d = new_document(L); /* frees a half-built tree if this fails */
    if (o->tape && tree_from_tape(o, &d->t) < 0)
        luaL_error(L, "out of memory");
    lua_setiuservalue(L, owner_idx, JSON_OWNER_UV);
    o->tree = &d->t;
    return o->tree;
}

static int push_cstring(lua_State *L)
{
    lua_pushstring(L, lua_touserdata(L, 1));
    return 1;
}

int json_push_text(lua_State *L, const cJSON *v)
{
    char *s = cJSON_PrintUnformatted(v);
    if (!s)
        return -1;
    /* Pushing allocates and may raise: protected, so s is freed either way. */
    lua_pushcfunction(L, push_cstring);
    lua_pushlightuserdata(L, s);
    int rc = lua_pcall(L, 1, 1, 0);
    cJSON_free(s);
    if (rc != LUA_OK) {
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

/* ---- owners ---------------------------------------------------------------- */

void json_tree_free(json_tree_t *t)
{
    cJSON_Delete(t->root);
    cJSON_Delete(t->discarded);
    free(t->nums);
    free(t->nodes);
    memset(t, 0, sizeof *t);
}

void json_owner_release(json_owner_t *o)
{
    if (o->serial && o->serial != NO_SERIAL) {
        size_t i = (size_t)(o->serial % LIGHT_SLOTS);
        if (light_slot[i].serial == o->serial)
            light_slot[i].owner = NULL;
    }
    o->serial = NO_SERIAL;
    o->dead = 1;
    if (o->tree) {
        json_tree_free(o->tree);
        if (o->released_by_owner)
            free(o->tree); /* otherwise its holder goes with the collector, empty */
        o->tree = NULL;
    }
}

void json_owner_discard(json_owner_t *o, cJSON *node)
{
    json_tree_t *t = o->tree;
    if (!node || !t)
        return;
    if (!t->discarded)
        t->discarded = cJSON_CreateArray();
    if (!t->discarded || !cJSON_AddItemToArray(t->discarded, node)) {
        /* No room to keep it: the one place a stale proxy could read freed
         * memory; leaking is the safe choice. */
        return;
    }
}

/* Puts replacement where item is in parent's list and detaches item without
 * freeing it (cJSON's own replace frees it).  cJSON keeps the list's last
 * item in child->prev; this follows its rules. */
static void replace_keep(cJSON *parent, cJSON *item, cJSON *replacement)
{
    replacement->next = item->next;
    replacement->prev = item->prev;
    if (replacement->next)
        replacement->next->prev = replacement;
    if (parent->child == item) {
        if (parent->child->prev == parent->child)
            replacement->prev = replacement;
        parent->child = replacement;
    } else {
        if (replacement->prev)
            replacement->prev->next = replacement;
        if (!replacement->next)
            parent->child->prev = replacement;
    }
    item->next = item->prev = NULL;
}

int json_object_set(json_owner_t *o, cJSON *parent, const char *key, cJSON *v)
{
    cJSON *old = cJSON_GetObjectItemCaseSensitive(parent, key);
    if (old) {
        /* The key moves over with its flag; the old value is kept aside. */
        v->string = old->string;
        v->type = (v->type & ~cJSON_StringIsConst) | (old->type & cJSON_StringIsConst);
        old->string = NULL;
        old->type &= ~cJSON_StringIsConst;
        replace_keep(parent, old, v);
        json_owner_discard(o, old);
        return 0;
    }
    if (!cJSON_AddItemToObject(parent, key, v)) {
        cJSON_Delete(v);
        return -1;
    }
    return 0;
}

void json_object_unset(json_owner_t *o, cJSON *parent, const char *key)
{
    json_owner_discard(o, cJSON_DetachItemFromObjectCaseSensitive(parent, key));
}

/* ---- null ------------------------------------------------------------------ */

static void open_proxy_metatable(lua_State *L);

void json_push_proxy_metatable(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key) == LUA_TNIL) {
        lua_pop(L, 1);
        open_proxy_metatable(L); /* first use in this state */
        lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key);
    }
}

void json_push_null(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key);
}

int json_is_null(lua_State *L, int idx)
{
    int r;
    if (lua_type(L, idx) != LUA_TTABLE)
        return 0;
    idx = lua_absindex(L, idx);
    json_push_null(L);
    r = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return r;
}

/* ---- JSON -> Lua --------------------------------------------------------- */

int json_is_number(const cJSON *n)
{
    return n && ((n->type & 0xff) == cJSON_Number || (n->type & 0xff) == cJSON_Raw);
}

void json_push_number(lua_State *L, const cJSON *n)
{
    if ((n->type & 0xff) == cJSON_Raw && n->valuestring) {
        const char *t = n->valuestring;
        if (!strpbrk(t, ".eE")) {
            char *end;
            errno = 0;
            long long v = strtoll(t, &end, 10);
            if (errno == 0 && *end == '\0') {
                lua_pushinteger(L, (lua_Integer)v);
                return;
            }
        }
        lua_pushnumber(L, strtod(t, NULL));
        return;
    }
    double d = n->valuedouble;
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
        lua_pushinteger(L, (lua_Integer)d);
    else
        lua_pushnumber(L, d);
}

/*
 * The proxy at idx (a userdata, or a light view decoded into *scratch) and
 * its owner, or an error when the owner's event has ended.  Metamethods
 * are only reachable through the proxy metatable, so idx holds a proxy.
 */
static proxy_t *live_proxy(lua_State *L, int idx, proxy_t *scratch, json_owner_t **owner)
{
    proxy_t *p;
    json_owner_t *o;
    if (lua_islightuserdata(L, idx)) {
        uint64_t v = (uint64_t)(uintptr_t)lua_touserdata(L, idx);
        p = scratch;
        p->serial = v >> LIGHT_TOK_BITS;
        p->tok = (uint32_t)(v & LIGHT_TOK_MASK);
        p->node = NULL;
        o = p->owner = light_owner(p->serial);
        if (o && p->tok >= o->ntok)
            o = NULL; /* not a view this owner made */
    } else {
        p = lua_touserdata(L, idx);
        o = p->serial ? light_owner(p->serial) : p->owner;
    }
    if (!o || o->dead)
        luaL_error(L, "this JSON value belongs to an event whose pipeline has ended");
    if (!p->node && o->tree) {
        /* The owner has had a tree built since: the node for the token. */
        cJSON *n = o->tree->nodes ? o->tree->nodes[p->tok] : NULL;
        if (!n)
            luaL_error(L, "this JSON value belongs to an event whose pipeline has ended");
        p->node = n; /* kept by a userdata proxy, for this call by a view */
    }
    if (!p->node && !o->tape)
        luaL_error(L, "this JSON value belongs to an event whose pipeline has ended");
    if (owner)
        *owner = o;
    return p;
}

/* The same, once the owner has a tree (built now if needed): p->node is set. */
static proxy_t *tree_proxy(lua_State *L, int idx, proxy_t *scratch, json_owner_t **owner)
{
    json_owner_t *o;
    proxy_t *p = live_proxy(L, idx, scratch, &o);
    if (!p->node) {
        if (o->released_by_owner) {
            json_owner_tree(L, o, 0);
        } else {
            lua_getiuservalue(L, idx, 1);
            json_owner_tree(L, o, -1);
            lua_pop(L, 1);
        }
        p = live_proxy(L, idx, scratch, &o);
    }
    if (owner)
        *owner = o;
    return p;
}

/*
 * Pushes a proxy for node (or, node NULL, token tok) of owner o.  owner_idx:
 * where o's userdata is, needed only for owners that are collected rather
 * than released (0 otherwise).  mt_idx: where the proxy metatable is at
 * hand (a closure's upvalue), or 0.
 */
static void push_proxy(lua_State *L, json_owner_t *o, cJSON *node, uint32_t tok, int owner_idx, int mt_idx)
{
    int reg = o->released_by_owner && light_register(o);
    if (reg && !node && tok <= LIGHT_TOK_MAX) {
        lua_pushlightuserdata(L, (void *)(uintptr_t)(o->serial << LIGHT_TOK_BITS | tok));
        return;
    }
    if (!reg)
        owner_idx = lua_absindex(L, owner_idx);
    proxy_t *p = lua_newuserdatauv(L, sizeof *p, reg ? 0 : 1);
    p->node = node;
    p->tok = tok;
    p->owner = reg ? NULL : o;
    p->serial = reg ? o->serial : 0;
    if (mt_idx)
        lua_pushvalue(L, mt_idx);
    else
        lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key);
    lua_setmetatable(L, -2);
    if (!reg) {
        lua_pushvalue(L, owner_idx);
        lua_setiuservalue(L, -2, 1);
    }
}

/* json_push for a node of owner o (owner_idx as for push_proxy). */
static void push_node(lua_State *L, cJSON *v, json_owner_t *o, int owner_idx)
{
    switch (v ? v->type & 0xff : cJSON_NULL) {
    case cJSON_NULL:
        json_push_null(L);
        return;
    case cJSON_False:
        lua_pushboolean(L, 0);
        return;
    case cJSON_True:
        lua_pushboolean(L, 1);
        return;
    case cJSON_Number:
    case cJSON_Raw:
        json_push_number(L, v);
        return;
    case cJSON_String:
        lua_pushstring(L, v->valuestring ? v->valuestring : "");
        return;
    case cJSON_Object:
    case cJSON_Array:
        push_proxy(L, o, v, 0, owner_idx, 0);
        return;
    default:
        lua_pushnil(L);
    }
}

void json_push(lua_State *L, cJSON *v, int owner_idx)
{
    /* Owners are userdata starting with json_owner_t. */
    push_node(L, v, lua_touserdata(L, owner_idx), owner_idx);
}

/* ---- Lua -> JSON --------------------------------------------------------- */

static cJSON *raw_number(lua_State *L, const char *text)
{
    cJSON *n = cJSON_CreateRaw(text);
    if (!n)
        luaL_error(L, "out of memory");
    return n;
}

static cJSON *double_value(lua_State *L, lua_Number d)
{
    char buf[40];
    if (isnan(d) || isinf(d))
        luaL_error(L, "cannot encode %s as JSON", isnan(d) ? "NaN" : "infinity");
    /* The shortest text that reads back as the same double. */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    if (!strpbrk(buf, ".eE"))
        strcat(buf, ".0"); /* keep it a float when read back */
    return raw_number(L, buf);
}

static int cmp_keys(const void *a, const void *b)
{
    const char *const *x = a, *const *y = b;
    return strcmp(*x, *y);
}

static cJSON *from_lua(lua_State *L, int idx, int depth);

static cJSON *table_value(lua_State *L, int idx, int depth)
{
    size_t n = 0, maxkey = 0;
    int all_int = 1;
    cJSON *out;

    if (depth > MAX_DEPTH)
        luaL_error(L, "cannot encode as JSON: nesting deeper than %d (a cycle?)", MAX_DEPTH);
    luaL_checkstack(L, 8, "json encode");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        n++;
        if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
            size_t k = (size_t)lua_tointeger(L, -2);
            if (k > maxkey)
                maxkey = k;
        } else {
            all_int = 0;
        }
        lua_pop(L, 1);
    }
    int is_array = (n > 0 && all_int && maxkey == n);
    if (n == 0 && lua_getmetatable(L, idx)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key);
        is_array = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    if (is_array) {
        /* Built inside a holder the GC owns, so that a child raising an
         * error does not leak what was built so far. */
        out = cJSON_CreateArray();
        if (!out)
            luaL_error(L, "out of memory");
        json_push_document(L, out, NULL); /* the holder frees it if a child raises */
        int holder = lua_gettop(L);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i);
            cJSON *e = from_lua(L, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
            if (!cJSON_AddItemToArray(out, e)) {
                cJSON_Delete(e);
                luaL_error(L, "out of memory");
            }
        }
        ((document_t *)lua_touserdata(L, holder))->t.root = NULL; /* released to the caller */
        lua_remove(L, holder);
        return out;
    }
    /* An object: keys must be strings; written sorted so output is stable. */
    const char **keys = lua_newuserdatauv(L, (n ? n : 1) * sizeof *keys, 0);
    int keys_idx = lua_gettop(L);
    size_t k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "cannot encode as JSON: object key of type %s (keys must be strings)",
                       luaL_typename(L, -1));
        keys[k++] = lua_tostring(L, -1); /* anchored by the table itself */
    }
    qsort(keys, k, sizeof *keys, cmp_keys);
    out = cJSON_CreateObject();
    if (!out)
        luaL_error(L, "out of memory");
    json_push_document(L, out, NULL);
    int holder = lua_gettop(L);
    for (size_t i = 0; i < k; i++) {
        lua_getfield(L, idx, keys[i]);
        cJSON *e = from_lua(L, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
        if (!cJSON_AddItemToObject(out, keys[i], e)) {
            cJSON_Delete(e);
            luaL_error(L, "out of memory");
        }
    }
    ((document_t *)lua_touserdata(L, holder))->t.root = NULL;
    lua_remove(L, holder);
    lua_remove(L, keys_idx);
    return out;
}

static cJSON *from_lua(lua_State *L, int idx, int depth)
{
    cJSON *v = NULL;
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        v = cJSON_CreateNull();
        break;
    case LUA_TBOOLEAN:
        v = cJSON_CreateBool(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            char buf[32];
            snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(L, idx));
            return raw_number(L, buf);
        }
        return double_value(L, lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (strlen(s) != len)
            luaL_error(L, "cannot encode a string with a NUL byte as JSON");
        v = cJSON_CreateString(s);
        break;
    }
    case LUA_TTABLE:
        if (json_is_null(L, idx)) {
            v = cJSON_CreateNull();
            break;
        }
        return table_value(L, idx, depth);
    case LUA_TLIGHTUSERDATA: { /* views and event handles: the only light userdata scripts see */
        json_owner_t *handle;
        if (json_light_kind(L, idx, &handle) == JSON_LIGHT_OWNER)
            luaL_error(L, "cannot encode an event as JSON (its data or raw bytes can be)");
    }
        /* FALLTHROUGH */
    case LUA_TUSERDATA:
        if (lua_type(L, idx) == LUA_TLIGHTUSERDATA || luaL_testudata(L, idx, PROXY_MT)) {
            /* A copy: e.data.a = e.data.b must not alias the two. */
            proxy_t scratch, *p = tree_proxy(L, idx, &scratch, NULL);
            v = cJSON_Duplicate(p->node, 1);
            break;
        }
        /* FALLTHROUGH */
    default:
        luaL_error(L, "cannot encode a %s as JSON", luaL_typename(L, idx));
    }
    if (!v)
        luaL_error(L, "out of memory");
    return v;
}

cJSON *json_from_lua(lua_State *L, int idx)
{
    return from_lua(L, idx, 0);
}

/* ---- proxies ------------------------------------------------------------ */

/* Where a child of the proxy at 1 finds its owner's userdata: pushed for
 * owners that are collected, 0 (unused) for released ones. */
static int child_owner_idx(lua_State *L, const json_owner_t *o)
{
    if (o->released_by_owner && o->serial != NO_SERIAL)
        return 0;
    lua_getiuservalue(L, 1, 1); /* nested proxies share the owner */
    return lua_gettop(L);
}

int json_proxy_index(lua_State *L)
{
    json_owner_t *o;
    proxy_t scratch, *p = live_proxy(L, 1, &scratch, &o);
    if (!p->node) {
        const json_tok_t *t = &o->tape[p->tok];
        uint32_t child = JSON_NO_TOK;
        if (t->type == JSON_TOK_ARRAY) {
            if (lua_isinteger(L, 2)) {
                lua_Integer i = lua_tointeger(L, 2);
                if (i >= 1 && i <= (lua_Integer)t->len) {
                    child = p->tok + 1;
                    while (--i > 0)
                        child = o->tape[child].next;
                }
            }
        } else if (lua_type(L, 2) == LUA_TSTRING) {
            size_t kl;
            const char *k = lua_tolstring(L, 2, &kl);
            child = json_tape_member(o, p->tok, k, kl);
        }
        if (child == JSON_NO_TOK) {
            lua_pushnil(L);
            return 1;
        }
        int ct = o->tape[child].type, oi = 0;
        if (ct == JSON_TOK_OBJECT || ct == JSON_TOK_ARRAY)
            oi = child_owner_idx(L, o);
        json_push_tok(L, o, child, oi, lua_upvalueindex(1));
        return 1;
    }
    cJSON *child = NULL;
    if (cJSON_IsArray(p->node)) {
        if (lua_isinteger(L, 2)) {
            lua_Integer i = lua_tointeger(L, 2);
            if (i >= 1 && i <= INT32_MAX)
                child = cJSON_GetArrayItem(p->node, (int)i - 1);
        }
    } else if (lua_type(L, 2) == LUA_TSTRING) {
        child = cJSON_GetObjectItemCaseSensitive(p->node, lua_tostring(L, 2));
    }
    if (!child) {
        lua_pushnil(L);
        return 1;
    }
    push_node(L, child, o, child_owner_idx(L, o));
    return 1;
}

int json_proxy_newindex(lua_State *L)
{
    json_owner_t *o;
    proxy_t scratch, *p = tree_proxy(L, 1, &scratch, &o);
    if (cJSON_IsArray(p->node)) {
        lua_Integer i = luaL_checkinteger(L, 2);
        int n = cJSON_GetArraySize(p->node);
        if (i < 1 || i > (lua_Integer)n + 1)
            return luaL_error(L, "JSON array index %d out of range 1..%d", (int)i, n + 1);
        if (lua_isnil(L, 3)) {
            if (i != n)
                return luaL_error(L, "cannot leave a hole in a JSON array (use tide.null)");
            json_owner_discard(o, cJSON_DetachItemFromArray(p->node, (int)i - 1));
        } else {
            cJSON *v = json_from_lua(L, 3);
            if (i == (lua_Integer)n + 1) {
                cJSON_AddItemToArray(p->node, v);
            } else {
                cJSON *old = cJSON_GetArrayItem(p->node, (int)i - 1);
                replace_keep(p->node, old, v);
                json_owner_discard(o, old);
            }
        }
    } else {
        if (lua_type(L, 2) != LUA_TSTRING)
            return luaL_error(L, "JSON object keys must be strings, got %s", luaL_typename(L, 2));
        const char *k = lua_tostring(L, 2);
        if (lua_isnil(L, 3))
            json_object_unset(o, p->node, k);
        else if (json_object_set(o, p->node, k, json_from_lua(L, 3)) < 0)
            return luaL_error(L, "out of memory");
    }
    o->dirty = 1;
    return 0;
}

int json_proxy_len(lua_State *L)
{
    json_owner_t *o;
    proxy_t scratch, *p = live_proxy(L, 1, &scratch, &o);
    if (!p->node) {
        lua_pushinteger(L, (lua_Integer)o->tape[p->tok].len);
        return 1;
    }
    lua_pushinteger(L, cJSON_GetArraySize(p->node)); /* members of an object too */
    return 1;
}

int json_proxy_tostring(lua_State *L)
{
    proxy_t scratch, *p = tree_proxy(L, 1, &scratch, NULL);
    size_t n;
    char *s = json_print(p->node, &n);
    if (!s)
        return luaL_error(L, "out of memory");
    lua_pushlstring(L, s, n);
    free(s);
    return 1;
}

/* pairs(): a snapshot of the keys in document order, then lookups. */
static int proxy_next(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2)) + 1;
    lua_pushinteger(L, i);
    lua_replace(L, lua_upvalueindex(2));
    if (lua_rawgeti(L, lua_upvalueindex(1), i) == LUA_TNIL)
        return 1;
    lua_pushvalue(L, -1);
    lua_gettable(L, 1); /* proxy[key] */
    return 2;
}

int json_proxy_pairs(lua_State *L)
{
    json_owner_t *o;
    proxy_t scratch, *p = live_proxy(L, 1, &scratch, &o);
    cJSON *c;
    lua_Integer i = 0;
    lua_newtable(L);
    if (!p->node) {
        const json_tok_t *t = &o->tape[p->tok];
        uint32_t k = p->tok + 1;
        for (uint32_t m = 0; m < t->len; m++) {
            if (t->type == JSON_TOK_ARRAY) {
                lua_pushinteger(L, i + 1);
                k = o->tape[k].next;
            } else {
                const json_tok_t *kt = &o->tape[k];
                size_t n;
                char *buf = lua_newuserdatauv(L, kt->len + 1, 0);
                const char *v = tok_string(o->text, kt, buf, &n);
                lua_pushlstring(L, v, n);
                lua_remove(L, -2);
                k = o->tape[k + 1].next;
            }
            lua_rawseti(L, -2, ++i);
        }
    }
    cJSON_ArrayForEach(c, p->node) {
        if (cJSON_IsArray(p->node))
            lua_pushinteger(L, i + 1);
        else
            lua_pushstring(L, c->string ? c->string : "");
        lua_rawseti(L, -2, ++i);
    }
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, proxy_next, 2);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* ---- standalone documents -------------------------------------------------- */

static int document_gc(lua_State *L)
{
    document_t *d = lua_touserdata(L, 1);
    json_tree_free(&d->t);
    d->owner.dead = 1;
    return 0;
}

static document_t *new_document(lua_State *L)
{
    document_t *d = lua_newuserdatauv(L, sizeof *d, 0);
    memset(d, 0, sizeof *d);
    d->owner.tree = &d->t;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &doc_key);
    lua_setmetatable(L, -2);
    return d;
}

void json_push_document(lua_State *L, cJSON *tree, char *nums)
{
    document_t *d = new_document(L);
    d->t.root = tree;
    d->t.nums = nums;
}

/* ---- tide.json ------------------------------------------------------------- */

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    cJSON *v = json_from_lua(L, 1);
    json_push_document(L, v, NULL); /* freed by the GC even if printing fails */
    size_t n;
    char *s = json_print(v, &n);
    if (!s)
        return luaL_error(L, "out of memory");
    lua_pushlstring(L, s, n);
    free(s);
    return 1;
}

static int l_decode(lua_State *L)
{
    size_t n;
    char *nums;
    const char *s = luaL_checklstring(L, 1, &n);
    cJSON *v = json_parse(s, n, &nums);
    if (!v) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid JSON");
        return 2;
    }
    json_push_document(L, v, nums);
    json_push(L, v, -1);
    return 1;
}

static int l_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    else
        luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key);
    lua_setmetatable(L, 1);
    return 1;
}

static int null_tostring(lua_State *L)
{
    lua_pushliteral(L, "null");
    return 1;
}

/* Creates a metatable stored in the registry under the address `key`,
 * hidden from getmetatable(). */
static void new_metatable(lua_State *L, const void *key, const char *name, const luaL_Reg *fns)
{
    lua_newtable(L);
    if (fns)
        luaL_setfuncs(L, fns, 0);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* Makes the proxies' metatable (once per state: json_push_proxy_metatable). */
static void open_proxy_metatable(lua_State *L)
{
    static const luaL_Reg proxy_mt[] = {{"__newindex", json_proxy_newindex}, {"__len", json_proxy_len},
                                        {"__tostring", json_proxy_tostring},  {"__pairs", json_proxy_pairs},
                                        {NULL, NULL}};
    new_metatable(L, &proxy_key, "json", proxy_mt);
    /* __index has the metatable as its upvalue: nested proxies are made
     * without a registry lookup. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &proxy_key);
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, json_proxy_index, 1);
    lua_setfield(L, -2, "__index");
    /* luaL_testudata looks metatables up by name: register it so too. */
    lua_setfield(L, LUA_REGISTRYINDEX, PROXY_MT);
}

void json_open(lua_State *L)
{
    static const luaL_Reg doc_mt[] = {{"__gc", document_gc}, {NULL, NULL}};
    json_init();
    json_push_proxy_metatable(L); /* made here unless event_open made it */
    lua_pop(L, 1);
    new_metatable(L, &doc_key, "json document", doc_mt);
    /* The array mark is shared by every tide.array(): locked like the rest
     * (a script must not reach it, e.g. to add a __gc). */
    lua_newtable(L);
    lua_pushliteral(L, "json array");
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &array_key);

    /* tide.null: an empty table with a locked metatable. */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushcfunction(L, null_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "null");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "null");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &null_key);

    lua_createtable(L, 0, 4);
    json_push_null(L);
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, l_array);
    lua_setfield(L, -2, "array");
    lua_pushcfunction(L, l_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, l_decode);
    lua_setfield(L, -2, "decode");
}
