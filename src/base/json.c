/* json.c - reading JSON text: the strict scanner (a tape of tokens) and the
 * decoding of strings; see json.h.  Trees and printing are json_tree.c. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "json.h"

/*
 * json_scan reads JSON text as RFC 8259 defines it, and nothing else:
 *   - whitespace is space, tab, CR and LF, and only between tokens;
 *   - a number is -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?;
 *   - a string holds no byte below 0x20 unescaped, only the escapes
 *     \" \\ \/ \b \f \n \r \t and \uXXXX (four hex digits), where a high
 *     surrogate must be followed by an escaped low one and a low one must
 *     follow a high one (RFC 8259 allows lone surrogates syntactically, but
 *     they are no character: such a string has no UTF-8 form, and every
 *     string a rule reads is UTF-8);
 *   - the bytes of a string are well-formed UTF-8 (RFC 8259 section 8.1;
 *     the Unicode standard's table 3-7: no overlong forms, no surrogates,
 *     nothing past U+10FFFF);
 *   - no byte order mark (section 8.1 lets a parser ignore one; we do not,
 *     so that the bytes a rule is told are JSON are the bytes that go out);
 *   - one value, nothing after it but whitespace;
 *   - at most JSON_MAX_DEPTH nested arrays and objects.
 * tests/fuzz/fuzz_json.c checks this against a separate, plain reading of
 * the grammar on every input.
 */

int json_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* The value of 4 hex digits at p, or -1. */
static long hex4(const unsigned char *p)
{
    long h = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        if (c >= '0' && c <= '9')
            h = h * 16 + (c - '0');
        else if (c >= 'A' && c <= 'F')
            h = h * 16 + 10 + (c - 'A');
        else if (c >= 'a' && c <= 'f')
            h = h * 16 + 10 + (c - 'a');
        else
            return -1;
    }
    return h;
}

/*
 * The escape at p (p[0] is the backslash, end the closing quote or the end
 * of the text): the bytes it takes (2, 6, or 12 for a surrogate pair), or 0
 * when it is not valid.  Sets *cp to the code point it stands for.
 */
static size_t escape_at(const unsigned char *p, const unsigned char *end, unsigned long *cp)
{
    if (end - p < 2)
        return 0;
    switch (p[1]) {
    case '"': case '\\': case '/': *cp = p[1]; return 2;
    case 'b': *cp = '\b'; return 2;
    case 'f': *cp = '\f'; return 2;
    case 'n': *cp = '\n'; return 2;
    case 'r': *cp = '\r'; return 2;
    case 't': *cp = '\t'; return 2;
    case 'u': break;
    default: return 0;
    }
    if (end - p < 6)
        return 0;
    long hi = hex4(p + 2);
    if (hi < 0 || (hi >= 0xDC00 && hi <= 0xDFFF))
        return 0;
    if (hi < 0xD800 || hi > 0xDBFF) {
        *cp = (unsigned long)hi;
        return 6;
    }
    if (end - p < 12 || p[6] != '\\' || p[7] != 'u')
        return 0;
    long lo = hex4(p + 8);
    if (lo < 0xDC00 || lo > 0xDFFF)
        return 0;
    *cp = 0x10000 + (((unsigned long)(hi & 0x3FF) << 10) | (unsigned long)(lo & 0x3FF));
    return 12;
}

/* The length of the well-formed UTF-8 sequence at s[i] (a byte >= 0x80),
 * or 0. */
static size_t utf8_at(const unsigned char *s, size_t i, size_t len)
{
    unsigned char c = s[i], lo = 0x80, hi = 0xBF;
    size_t n;
    if (c < 0xC2)
        return 0; /* a continuation byte, or an overlong 2-byte form */
    if (c < 0xE0) {
        n = 2;
    } else if (c < 0xF0) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c < 0xF5) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* past U+10FFFF */
    } else {
        return 0;
    }
    if (len - i < n || s[i + 1] < lo || s[i + 1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if (s[i + k] < 0x80 || s[i + k] > 0xBF)
            return 0;
    return n;
}

/* Writes code point cp as UTF-8 to out; returns its length. */
static size_t utf8_put(unsigned long cp, unsigned char *out)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

long json_decode_string(const unsigned char *s, const unsigned char *end, unsigned char *out)
{
    size_t n = 0;
    for (const unsigned char *p = s; p < end;) {
        const unsigned char *bs = memchr(p, '\\', (size_t)(end - p));
        size_t run = (size_t)((bs ? bs : end) - p);
        if (out)
            memcpy(out + n, p, run);
        n += run;
        p += run;
        if (!bs)
            break;
        unsigned long cp;
        unsigned char tmp[4];
        size_t used = escape_at(p, end, &cp);
        if (!used)
            return -1;
        n += utf8_put(cp, out ? out + n : tmp);
        p += used;
    }
    return (long)n;
}

int json_escaped_equals(const unsigned char *s, const unsigned char *end, const char *key, size_t klen)
{
    const unsigned char *k = (const unsigned char *)key, *kend = k + klen;
    for (const unsigned char *p = s; p < end;) {
        if (*p != '\\') {
            if (k == kend || *k != *p)
                return 0;
            k++;
            p++;
            continue;
        }
        unsigned long cp;
        unsigned char u[4];
        size_t used = escape_at(p, end, &cp), n = used ? utf8_put(cp, u) : 0;
        if (!used || (size_t)(kend - k) < n || memcmp(k, u, n))
            return 0;
        k += n;
        p += used;
    }
    return k == kend;
}

/* ---- scanning: a tape of tokens instead of a tree --------------------------- */

typedef struct scan {
    const unsigned char *s;
    size_t len;
    json_tok_t *tok;
    uint32_t cap, n;
} scan_t;

#define SCAN_INLINE static inline __attribute__((always_inline))

/* json_is_digit without a call, for the scanner's loops. */
SCAN_INLINE int is_digit(unsigned char c)
{
    return (unsigned char)(c - '0') < 10;
}

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

/* Position of the first byte of s[i..) that a string cannot simply go on
 * with: a quote, a backslash, a control character or a non-ASCII byte (or
 * len). */
SCAN_INLINE size_t string_stop(const unsigned char *s, size_t i, size_t len)
{
#ifdef __SSE2__
    /* One signed compare finds both the bytes below 0x20 and those from
     * 0x80 up (negative as signed bytes). */
    const __m128i q = _mm_set1_epi8('"'), b = _mm_set1_epi8('\\'), sp = _mm_set1_epi8(0x20);
    while (i + 16 <= len) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, b)), _mm_cmplt_epi8(v, sp));
        unsigned m = (unsigned)_mm_movemask_epi8(hit);
        if (m)
            return i + (size_t)__builtin_ctz(m);
        i += 16;
    }
    if (i < len && len >= 16) {
        /* The last bytes: the 16 that end the text, those before i masked. */
        size_t base = len - 16;
        __m128i v = _mm_loadu_si128((const __m128i *)(s + base));
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, b)), _mm_cmplt_epi8(v, sp));
        unsigned m = (unsigned)_mm_movemask_epi8(hit) >> (i - base);
        return m ? i + (size_t)__builtin_ctz(m) : len;
    }
#endif
    while (i < len && s[i] != '"' && s[i] != '\\' && s[i] >= 0x20 && s[i] < 0x80)
        i++;
    return i;
}

/* A string whose opening quote is at s[*i]; on success *i is past it. */
SCAN_INLINE int scan_string(scan_t *sc, size_t *i)
{
    const unsigned char *s = sc->s;
    size_t start = *i + 1, j = start, n;
    int flags = JSON_TOK_PLAIN;
    for (;;) {
        j = string_stop(s, j, sc->len);
        if (j >= sc->len)
            return -1;
        unsigned char c = s[j];
        if (c == '"')
            break;
        if (c == '\\') {
            unsigned long cp;
            n = escape_at(s + j, s + sc->len, &cp);
            flags = 0;
        } else if (c >= 0x80) {
            n = utf8_at(s, j, sc->len);
        } else {
            return -1; /* a control character */
        }
        if (!n)
            return -1;
        j += n;
    }
    add_tok(sc, JSON_TOK_STRING, start, j - start, flags);
    *i = j + 1;
    return 0;
}

/* A number starting at s[*i] ('-' or a digit).  What follows it is left to
 * the caller: a byte that may not come after a value there fails the
 * document (so "01", "1x" and "1-" fail). */
SCAN_INLINE int scan_number(scan_t *sc, size_t *i)
{
    const unsigned char *s = sc->s;
    size_t start = *i, p = start, len = sc->len;
    if (s[p] == '-')
        p++;
    if (p >= len || !is_digit(s[p]))
        return -1;
    if (s[p++] != '0')
        while (p < len && is_digit(s[p]))
            p++;
    if (p < len && s[p] == '.') {
        p++;
        if (p >= len || !is_digit(s[p]))
            return -1;
        while (p < len && is_digit(s[p]))
            p++;
    }
    if (p < len && (s[p] == 'e' || s[p] == 'E')) {
        p++;
        if (p < len && (s[p] == '+' || s[p] == '-'))
            p++;
        if (p >= len || !is_digit(s[p]))
            return -1;
        while (p < len && is_digit(s[p]))
            p++;
    }
    add_tok(sc, JSON_TOK_NUMBER, start, p - start, 0);
    *i = p;
    return 0;
}

SCAN_INLINE size_t skip_space(const unsigned char *s, size_t i, size_t len)
{
    if (i < len && s[i] > ' ')
        return i; /* the common case: no space at all */
    while (i < len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t'))
        i++;
    return i;
}

/* A literal (null, true, false) at s[i]: its length, or 0. */
SCAN_INLINE size_t literal_at(const unsigned char *s, size_t i, size_t len, const char *word, size_t n)
{
    return len - i >= n && memcmp(s + i, word, n) == 0 ? n : 0;
}

/* A value that is not a container, at *i: its token added, *i past it;
 * -1 when it is not valid JSON. */
static inline int scan_scalar(scan_t *sc, size_t *i)
{
    const unsigned char *s = sc->s;
    size_t len = sc->len, n;
    switch (s[*i]) {
    case 'n':
        if (!(n = literal_at(s, *i, len, "null", 4)))
            return -1;
        add_tok(sc, JSON_TOK_NULL, *i, n, 0);
        break;
    case 't':
        if (!(n = literal_at(s, *i, len, "true", 4)))
            return -1;
        add_tok(sc, JSON_TOK_TRUE, *i, n, 0);
        break;
    case 'f':
        if (!(n = literal_at(s, *i, len, "false", 5)))
            return -1;
        add_tok(sc, JSON_TOK_FALSE, *i, n, 0);
        break;
    case '"':
        return scan_string(sc, i);
    default:
        if (s[*i] != '-' && !is_digit(s[*i]))
            return -1;
        return scan_number(sc, i);
    }
    *i += n;
    return 0;
}

long json_scan(const char *text, size_t len, json_tok_t *tok, uint32_t cap)
{
    scan_t sc = {(const unsigned char *)text, len, tok, cap, 0};
    const unsigned char *s = sc.s;
    struct {
        uint32_t tok, members;
        int obj;
    } stack[JSON_MAX_DEPTH];
    int depth = 0;
    size_t i = 0;

    if (len == 0 || len >= UINT32_MAX)
        return -1;
    i = skip_space(s, 0, len);
value:
    if (i >= len)
        return -1;
    if (s[i] == '[' || s[i] == '{') {
        int obj = s[i] == '{';
        if (depth >= JSON_MAX_DEPTH)
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
    if (scan_scalar(&sc, &i) < 0)
        return -1;
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
    if (skip_space(s, i, len) != len)
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

const char *json_tok_string(const char *text, const json_tok_t *t, char *buf, size_t *n)
{
    const char *s = text + t->start;
    if (t->flags & JSON_TOK_PLAIN) {
        *n = t->len;
        return s;
    }
    long dl = json_decode_string((const unsigned char *)s, (const unsigned char *)s + t->len, (unsigned char *)buf);
    *n = dl > 0 ? (size_t)dl : 0;
    return buf;
}
