/* subject.c - see subject.h. */
#include <string.h>

#include "subject.h"

static bool check(const char *s, size_t len, bool allow_wildcards)
{
    size_t tok_start = 0;
    if (len == 0)
        return false;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            size_t tlen = i - tok_start;
            if (tlen == 0)
                return false;
            if (tlen == 1 && (s[tok_start] == '*' || s[tok_start] == '>')) {
                if (!allow_wildcards)
                    return false;
                if (s[tok_start] == '>' && i != len)
                    return false;
            }
            tok_start = i + 1;
        } else {
            unsigned char c = (unsigned char)s[i];
            if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\0')
                return false;
        }
    }
    return true;
}

bool subject_valid_pattern(const char *s, size_t len) { return check(s, len, true); }

/* Byte classes for literals: 1 a dot, 2 a byte no subject may hold. */
static const unsigned char literal_class[256] = {
    [0] = 2, ['\t'] = 2, ['\n'] = 2, ['\r'] = 2, [' '] = 2, ['.'] = 1,
};

/* check(s, len, false) with one table lookup per byte: every subject a
 * client publishes on passes here. */
bool subject_valid_literal(const char *s, size_t len)
{
    size_t tok_start = 0;
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char k = literal_class[(unsigned char)s[i]];
        if (!k)
            continue;
        if (k == 2 || i == tok_start || (i - tok_start == 1 && (s[tok_start] == '*' || s[tok_start] == '>')))
            return false;
        tok_start = i + 1;
    }
    return len > tok_start && !(len - tok_start == 1 && (s[tok_start] == '*' || s[tok_start] == '>'));
}

bool subject_matches(const char *p, size_t plen, const char *s, size_t slen)
{
    size_t pi = 0, si = 0;
    for (;;) {
        /* Next token of each. */
        const char *pd = memchr(p + pi, '.', plen - pi);
        size_t pend = pd ? (size_t)(pd - p) : plen;
        if (si > slen)
            return false;
        const char *sd = memchr(s + si, '.', slen - si);
        size_t send = sd ? (size_t)(sd - s) : slen;
        size_t ptl = pend - pi;

        if (ptl == 1 && p[pi] == '>')
            return si < slen; /* one or more tokens remain */
        if (si >= slen)
            return false;
        if (!(ptl == 1 && p[pi] == '*')) {
            if (ptl != send - si || memcmp(p + pi, s + si, ptl) != 0)
                return false;
        }
        bool plast = pend >= plen, slast = send >= slen;
        if (plast || slast)
            return plast && slast;
        pi = pend + 1;
        si = send + 1;
    }
}
