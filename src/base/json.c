/* json.c - the JSON codec: cJSON with exact numbers, and the token tape;
 * see json.h.  Knows no Lua (script/json_lua.c builds on it). */
#include <errno.h>
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

int json_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int in_number_run(unsigned char c)
{
    return json_is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
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
long json_decode_string(const unsigned char *s, const unsigned char *end, unsigned char *out)
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
        if (j >= sc->len || json_decode_string(s + start, s + j, NULL) < 0)
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
    while (p < run && json_is_digit(s[p]))
        p++, digits++;
    if (p < run && s[p] == '.') {
        p++;
        while (p < run && json_is_digit(s[p]))
            p++, digits++;
    }
    if (!digits)
        return -1;
    if (p < run && (s[p] == 'e' || s[p] == 'E')) {
        size_t q = p + 1;
        if (q < run && (s[q] == '+' || s[q] == '-'))
            q++;
        if (q < run && json_is_digit(s[q])) {
            while (q < run && json_is_digit(s[q]))
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
        if (s[i] != '-' && !json_is_digit(s[i]))
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

/* ---- reading a token ---------------------------------------------------------- */

/* The value of string token t, decoded (escapes, and cut at a NUL as cJSON
 * cuts it): points into the text when it can, else into buf (room for
 * t->len bytes).  Sets *n. */
const char *json_tok_string(const char *text, const json_tok_t *t, char *buf, size_t *n)
{
    const char *s = text + t->start;
    if (t->flags & JSON_TOK_PLAIN) {
        *n = t->len;
        return s;
    }
    long dl = json_decode_string((const unsigned char *)s, (const unsigned char *)s + t->len, (unsigned char *)buf);
    const char *nul = memchr(buf, '\0', (size_t)(dl > 0 ? dl : 0));
    *n = nul ? (size_t)(nul - buf) : (size_t)(dl > 0 ? dl : 0);
    return buf;
}


