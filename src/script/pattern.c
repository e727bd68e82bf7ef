/*
 * pattern.c - Lua 5.4's string patterns, every step counted (pattern.h).
 *
 * The semantics are the reference manual's (6.4.1, and the entries of
 * string.find, match, gmatch and gsub), error messages included.  Matching
 * backtracks as Lua's does, so its worst case grows as the subject length
 * to the power of the number of repetitions: nothing here makes that
 * faster, it is only paid for.  A step is a character test, a call of the
 * matcher (each start position and each backtrack), 16 bytes of a set, a
 * back-reference, a replacement string or a plain find's memchr or
 * memcmp, a %b scan step, a comparison of the two-way search, or a byte a
 * memmem window covers.  The budget's check is called with the steps of
 * a call at least every PATTERN_CHECK_STEPS of them; short calls leave
 * theirs owed until they add up to that much.
 *
 * The check may raise and leave through longjmp from any depth, so all
 * state is on the C stack (captures included) or in Lua objects (the
 * gmatch iterator's userdata, a luaL_Buffer): nothing is malloc'd.  The
 * recursion is bounded as Lua's is ("pattern too complex").
 */
#include <ctype.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "pattern.h"

#define MAX_CAPTURES 32              /* Lua's LUA_MAXCAPTURES */
#define MAX_DEPTH 200                /* nested matcher calls, Lua's MAXCCALLS */
#define TWO_WAY_FROM (64 * 1024)     /* needle length from which plain finds use two_way */
#define PLAIN_WINDOW 8192            /* start positions one memmem call covers, at least */
#define PLAIN_CHUNK 65536            /* bytes one memchr call covers, at most */
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)
#define ESC '%'

typedef struct capture {
    const char *init;
    ptrdiff_t len; /* or CAP_UNFINISHED, CAP_POSITION */
} capture_t;

/* What the functions of one pattern_register share (their upvalue 1). */
typedef struct account {
    pattern_budget_t budget;
    size_t owed; /* steps done and not paid yet: fewer than PATTERN_CHECK_STEPS */
} account_t;

typedef struct matcher {
    lua_State *L;
    account_t *account;
    const char *src, *src_end; /* the whole subject */
    const char *pat_end;
    size_t fuel; /* steps left before the check is due; never 0 */
    int depth;   /* nested match() calls left */
    int level;   /* captures opened */
    capture_t cap[MAX_CAPTURES];
} matcher_t;

static account_t *account_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

static void matcher_init(matcher_t *m, lua_State *L, const char *s, size_t sl, const char *p, size_t pl)
{
    m->L = L;
    m->account = account_of(L);
    m->src = s;
    m->src_end = s + sl;
    m->pat_end = p + pl;
    m->fuel = PATTERN_CHECK_STEPS;
    m->depth = MAX_DEPTH;
    m->level = 0;
}

/* ---- paying for steps ------------------------------------------------------ */

/* Pays for the steps done since the last check and n more (and what
 * earlier calls owe). */
static void pay(matcher_t *m, size_t n)
{
    account_t *a = m->account;
    size_t done = PATTERN_CHECK_STEPS - m->fuel + n + a->owed;
    m->fuel = PATTERN_CHECK_STEPS;
    a->owed = 0;
    a->budget.check(m->L, a->budget.ud, done);
}

static inline void spend(matcher_t *m, size_t n)
{
    if (n < m->fuel)
        m->fuel -= n;
    else
        pay(m, n);
}

/* At the end of a call: what is left is owed, and paid once it adds up
 * to PATTERN_CHECK_STEPS, so that short calls need not read the clock. */
static void settle(matcher_t *m)
{
    account_t *a = m->account;
    a->owed += PATTERN_CHECK_STEPS - m->fuel;
    m->fuel = PATTERN_CHECK_STEPS;
    if (a->owed >= PATTERN_CHECK_STEPS)
        pay(m, 0);
}

/* ---- single characters ------------------------------------------------------ */

/* Whether c is in the class %cl (a letter of the manual's list, or z for
 * '\0'; the upper case is the complement), or is cl itself for any other cl. */
static int class_match(int c, int cl)
{
    int in;
    switch (tolower(cl)) {
    case 'a': in = isalpha(c); break;
    case 'c': in = iscntrl(c); break;
    case 'd': in = isdigit(c); break;
    case 'g': in = isgraph(c); break;
    case 'l': in = islower(c); break;
    case 'p': in = ispunct(c); break;
    case 's': in = isspace(c); break;
    case 'u': in = isupper(c); break;
    case 'w': in = isalnum(c); break;
    case 'x': in = isxdigit(c); break;
    case 'z': in = c == 0; break; /* not in the manual since 5.2, but Lua 5.4 still has it */
    default: return cl == c;
    }
    return isupper(cl) ? !in : in != 0;
}

/* Whether c is in the set from '[' at p to its ']' at close. */
static int set_match(int c, const char *p, const char *close)
{
    int in = 1;
    p++;
    if (*p == '^') {
        in = 0;
        p++;
    }
    for (; p < close; p++) {
        if (*p == ESC) {
            p++;
            if (class_match(c, (unsigned char)*p))
                return in;
        } else if (p[1] == '-' && p + 2 < close) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
                return in;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return in;
        }
    }
    return !in;
}

/* The end of the single character class at p (the first character of a
 * set is in it, even a ']'). */
static const char *item_end(matcher_t *m, const char *p)
{
    const char *end = m->pat_end;
    switch (*p++) {
    case ESC:
        if (p == end)
            luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 1;
    case '[':
        if (p < end && *p == '^')
            p++;
        do {
            if (p == end)
                luaL_error(m->L, "malformed pattern (missing ']')");
            if (*p++ == ESC && p < end)
                p++;
        } while (p == end || *p != ']');
        return p + 1;
    default:
        return p;
    }
}

/* Whether the subject character at s is in the class from p to ep. */
static inline int single_match(matcher_t *m, const char *s, const char *p, const char *ep)
{
    spend(m, 1);
    if (s >= m->src_end)
        return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.':
        return 1;
    case ESC:
        return class_match(c, (unsigned char)p[1]);
    case '[':
        spend(m, (size_t)(ep - p) >> 4);
        return set_match(c, p, ep - 1);
    default:
        return (unsigned char)*p == c;
    }
}

/* ---- the matcher ------------------------------------------------------------ */

static const char *match(matcher_t *m, const char *s, const char *p);

/* The item p..ep repeated as often as it matches from s, then fewer times
 * until the rest of the pattern matches. */
static const char *max_expand(matcher_t *m, const char *s, const char *p, const char *ep)
{
    ptrdiff_t i = 0;
    while (single_match(m, s + i, p, ep))
        i++;
    for (; i >= 0; i--) {
        const char *r = match(m, s + i, ep + 1);
        if (r)
            return r;
    }
    return NULL;
}

/* The item p..ep repeated as few times as the rest of the pattern allows. */
static const char *min_expand(matcher_t *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *r = match(m, s, ep + 1);
        if (r)
            return r;
        if (!single_match(m, s, p, ep))
            return NULL;
        s++;
    }
}

static const char *start_capture(matcher_t *m, const char *s, const char *p, ptrdiff_t what)
{
    if (m->level >= MAX_CAPTURES)
        luaL_error(m->L, "too many captures");
    m->cap[m->level].init = s;
    m->cap[m->level].len = what;
    m->level++;
    const char *r = match(m, s, p);
    if (!r)
        m->level--;
    return r;
}

static const char *end_capture(matcher_t *m, const char *s, const char *p)
{
    int l = m->level - 1;
    while (l >= 0 && m->cap[l].len != CAP_UNFINISHED)
        l--;
    if (l < 0)
        luaL_error(m->L, "invalid pattern capture");
    m->cap[l].len = s - m->cap[l].init;
    const char *r = match(m, s, p);
    if (!r)
        m->cap[l].len = CAP_UNFINISHED;
    return r;
}

/* %bxy with x at p: the end of the balanced text from s, or NULL. */
static const char *match_balance(matcher_t *m, const char *s, const char *p)
{
    if (p + 1 >= m->pat_end)
        luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != p[0])
        return NULL;
    char open = p[0], close = p[1];
    size_t depth = 1;
    while (++s < m->src_end) {
        spend(m, 1);
        if (*s == close) {
            if (--depth == 0)
                return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

/* %f[set] with '[' at p: the rest of the pattern, or NULL when s is not at
 * a frontier (the subject's ends count as '\0'). */
static const char *match_frontier(matcher_t *m, const char *s, const char *p)
{
    if (p == m->pat_end || *p != '[')
        luaL_error(m->L, "missing '[' after '%%f' in pattern");
    const char *ep = item_end(m, p);
    int prev = s == m->src ? 0 : (unsigned char)s[-1];
    int cur = s < m->src_end ? (unsigned char)*s : 0;
    spend(m, 1 + ((size_t)(ep - p) >> 3));
    if (!set_match(prev, p, ep - 1) && set_match(cur, p, ep - 1))
        return ep;
    return NULL;
}

/* %1-%9 (c the digit): the end of a copy of that capture at s, or NULL. */
static const char *match_backref(matcher_t *m, const char *s, int c)
{
    int l = c - '1';
    if (l < 0 || l >= m->level || m->cap[l].len == CAP_UNFINISHED)
        luaL_error(m->L, "invalid capture index %%%d", l + 1);
    size_t len = (size_t)m->cap[l].len; /* a position capture: huge, never fits */
    if ((size_t)(m->src_end - s) < len)
        return NULL;
    spend(m, len >> 4);
    return memcmp(m->cap[l].init, s, len) == 0 ? s + len : NULL;
}

/*
 * The end of the match of pattern p (to m->pat_end) at s, or NULL.  Items
 * that need no backtracking loop here; the others recurse, at most
 * MAX_DEPTH deep.
 */
static const char *match(matcher_t *m, const char *s, const char *p)
{
    const char *end = m->pat_end;
    if (m->depth-- == 0)
        luaL_error(m->L, "pattern too complex");
    spend(m, 1);
    while (p < end && s) {
        switch (*p) {
        case '(':
            if (p + 1 < end && p[1] == ')')
                s = start_capture(m, s, p + 2, CAP_POSITION);
            else
                s = start_capture(m, s, p + 1, CAP_UNFINISHED);
            goto done;
        case ')':
            s = end_capture(m, s, p + 1);
            goto done;
        case '$':
            if (p + 1 == end) {
                s = s == m->src_end ? s : NULL;
                goto done;
            }
            break;
        case ESC:
            if (p + 1 == end)
                break;
            if (p[1] == 'b') {
                s = match_balance(m, s, p + 2);
                p += 4;
                continue;
            }
            if (p[1] == 'f') {
                p = match_frontier(m, s, p + 2);
                if (!p)
                    s = NULL;
                continue;
            }
            if (isdigit((unsigned char)p[1])) {
                s = match_backref(m, s, (unsigned char)p[1]);
                p += 2;
                continue;
            }
            break;
        }
        /* A single character class, maybe with a repetition. */
        const char *ep = item_end(m, p);
        int rep = ep < end ? *ep : 0;
        if (!single_match(m, s, p, ep)) {
            if (rep == '*' || rep == '?' || rep == '-')
                p = ep + 1; /* none is enough */
            else
                s = NULL;
            continue;
        }
        switch (rep) {
        case '?': {
            const char *r = match(m, s + 1, ep + 1);
            if (r) {
                s = r;
                goto done;
            }
            p = ep + 1;
            continue;
        }
        case '+': s = max_expand(m, s + 1, p, ep); goto done;
        case '*': s = max_expand(m, s, p, ep); goto done;
        case '-': s = min_expand(m, s, p, ep); goto done;
        default:
            s++;
            p = ep;
            continue;
        }
    }
done:
    m->depth++;
    return s;
}

/* Ready for a match attempt at another position. */
static void matcher_reset(matcher_t *m)
{
    m->level = 0;
    m->depth = MAX_DEPTH;
}

/* ---- captures ---------------------------------------------------------------- */

/* Capture i of the match s..e (the whole match for i == 0 when there are
 * no captures): its text in *text and its length, or CAP_POSITION with
 * the position pushed. */
static ptrdiff_t get_capture(matcher_t *m, int i, const char *s, const char *e, const char **text)
{
    if (i >= m->level) {
        if (i != 0)
            luaL_error(m->L, "invalid capture index %%%d", i + 1);
        *text = s;
        return e - s;
    }
    ptrdiff_t len = m->cap[i].len;
    *text = m->cap[i].init;
    if (len == CAP_UNFINISHED)
        luaL_error(m->L, "unfinished capture");
    else if (len == CAP_POSITION)
        lua_pushinteger(m->L, (m->cap[i].init - m->src) + 1);
    return len;
}

static void push_capture(matcher_t *m, int i, const char *s, const char *e)
{
    const char *text;
    ptrdiff_t len = get_capture(m, i, s, e, &text);
    if (len != CAP_POSITION)
        lua_pushlstring(m->L, text, (size_t)len);
}

/* Pushes the captures of the match s..e (the whole match when there are
 * none, unless s is NULL); returns how many. */
static int push_captures(matcher_t *m, const char *s, const char *e)
{
    int n = m->level == 0 && s ? 1 : m->level;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(m, i, s, e);
    return n;
}

/* ---- plain find ----------------------------------------------------------------- */

/* The maximal suffix of w under the byte order (reversed when rev) and
 * its period, as the two-way algorithm's critical factorization needs. */
static ptrdiff_t max_suffix(matcher_t *m, const unsigned char *w, ptrdiff_t wl, int rev, ptrdiff_t *period)
{
    ptrdiff_t ms = -1, j = 0, k = 1, p = 1;
    while (j + k < wl) {
        unsigned a = w[j + k], b = w[ms + k];
        spend(m, 1);
        if (rev ? a > b : a < b) {
            j += k;
            k = 1;
            p = j - ms;
        } else if (a == b) {
            if (k != p) {
                k++;
            } else {
                j += p;
                k = 1;
            }
        } else {
            ms = j;
            j = ms + 1;
            k = p = 1;
        }
    }
    *period = p;
    return ms;
}

/* The first w in t by Crochemore and Perrin's two-way algorithm: linear
 * time, constant space, and every comparison paid for, so that a long
 * needle cannot hold the loop in one memmem call. */
static const char *two_way(matcher_t *m, const char *text, size_t tl, const char *needle, size_t nl)
{
    const unsigned char *t = (const unsigned char *)text, *w = (const unsigned char *)needle;
    ptrdiff_t n = (ptrdiff_t)tl, wl = (ptrdiff_t)nl, p, q, i, j;
    ptrdiff_t s1 = max_suffix(m, w, wl, 0, &p), s2 = max_suffix(m, w, wl, 1, &q);
    ptrdiff_t ell = s1 > s2 ? s1 : s2, per = s1 > s2 ? p : q;
    spend(m, (size_t)(ell + 1) >> 4);
    if (per + ell + 1 <= wl && memcmp(w, w + per, (size_t)(ell + 1)) == 0) {
        ptrdiff_t memory = -1; /* the needle's prefix known to match, after a shift by per */
        for (j = 0; j <= n - wl;) {
            spend(m, 1);
            for (i = (ell > memory ? ell : memory) + 1; i < wl && w[i] == t[i + j]; i++)
                spend(m, 1);
            if (i < wl) {
                j += i - ell;
                memory = -1;
                continue;
            }
            for (i = ell; i > memory && w[i] == t[i + j]; i--)
                spend(m, 1);
            if (i <= memory)
                return text + j;
            j += per;
            memory = wl - per - 1;
        }
        return NULL;
    }
    per = (ell + 1 > wl - ell - 1 ? ell + 1 : wl - ell - 1) + 1;
    for (j = 0; j <= n - wl;) {
        spend(m, 1);
        for (i = ell + 1; i < wl && w[i] == t[i + j]; i++)
            spend(m, 1);
        if (i < wl) {
            j += i - ell;
            continue;
        }
        for (i = ell; i >= 0 && w[i] == t[i + j]; i--)
            spend(m, 1);
        if (i < 0)
            return text + j;
        j += per;
    }
    return NULL;
}

/* glibc's memmem over windows of PLAIN_WINDOW start positions (or the
 * needle's length), each paid for by the bytes it covers before it runs:
 * linear for long needles, but in one call it may test each start of a
 * short needle (up to 256 bytes) as many times, and cover twice a long
 * one. */
static const char *find_windows(matcher_t *m, const char *h, size_t hl, const char *n, size_t nl)
{
    if (nl > hl)
        return NULL;
    size_t starts = hl - nl + 1, window = nl > PLAIN_WINDOW ? nl : PLAIN_WINDOW;
    for (size_t at = 0; at < starts; at += window) {
        size_t k = starts - at < window ? starts - at : window;
        spend(m, k + nl - 1);
        const char *r = memmem(h + at, k + nl - 1, n, nl);
        if (r)
            return r;
    }
    return NULL;
}

/*
 * The first needle in the haystack.  On ordinary text the needle's first
 * byte is rare, so memchr finds the places where it may start (at most
 * PLAIN_CHUNK bytes between checks) and memcmp compares the rest, as
 * stock Lua does; each place is paid for by the needle's length.  Once
 * the places have cost more than the text passed (a needle "aaab" in
 * "aaaa..."), memmem's windows take over; needles of TWO_WAY_FROM bytes
 * or more go to two_way.
 */
static const char *find_plain(matcher_t *m, const char *h, size_t hl, const char *n, size_t nl)
{
    size_t two_way_from = m->account->budget.two_way_from ? m->account->budget.two_way_from : TWO_WAY_FROM;
    if (nl == 0)
        return h;
    if (nl > hl)
        return NULL;
    if (nl >= two_way_from)
        return two_way(m, h, hl, n, nl);
    size_t starts = hl - nl + 1, at = 0, wasted = 0;
    while (at < starts) {
        size_t k = starts - at < PLAIN_CHUNK ? starts - at : PLAIN_CHUNK;
        const char *c = memchr(h + at, (unsigned char)n[0], k);
        if (!c) {
            spend(m, (k >> 4) + 1);
            at += k;
            continue;
        }
        spend(m, ((size_t)(c - (h + at)) >> 4) + (nl >> 4) + 1);
        if (memcmp(c + 1, n + 1, nl - 1) == 0)
            return c;
        at = (size_t)(c - h) + 1;
        wasted += nl;
        if (wasted > at + PLAIN_CHUNK)
            return find_windows(m, h + at, hl - at, n, nl);
    }
    return NULL;
}

/* Whether p has none of the characters that make a pattern. */
static int is_plain(matcher_t *m, const char *p, size_t pl)
{
    spend(m, pl >> 4);
    for (size_t i = 0; i < pl; i++) {
        switch (p[i]) {
        case '^': case '$': case '*': case '+': case '?':
        case '.': case '(': case '[': case '%': case '-':
            return 0;
        }
    }
    return 1;
}

/* ---- find, match, gmatch ----------------------------------------------------------- */

/* The 0-based start of a 1-based position counted from the end when
 * negative, clipped to the start. */
static size_t start_index(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 0;
    return len + (size_t)pos;
}

static int find_or_match(lua_State *L, int find)
{
    size_t sl, pl;
    const char *s = luaL_checklstring(L, 1, &sl);
    const char *p = luaL_checklstring(L, 2, &pl);
    size_t init = start_index(luaL_optinteger(L, 3, 1), sl);
    matcher_t m;
    if (init > sl) {
        luaL_pushfail(L);
        return 1;
    }
    matcher_init(&m, L, s, sl, p, pl);
    if (find && (lua_toboolean(L, 4) || is_plain(&m, p, pl))) {
        const char *at = find_plain(&m, s + init, sl - init, p, pl);
        settle(&m);
        if (at) {
            lua_pushinteger(L, (at - s) + 1);
            lua_pushinteger(L, (lua_Integer)((size_t)(at - s) + pl));
            return 2;
        }
        luaL_pushfail(L);
        return 1;
    }
    int anchor = pl > 0 && *p == '^';
    const char *at = s + init;
    do {
        matcher_reset(&m);
        const char *e = match(&m, at, p + anchor);
        if (e) {
            settle(&m);
            if (!find)
                return push_captures(&m, at, e);
            lua_pushinteger(L, (at - s) + 1);
            lua_pushinteger(L, e - s);
            return push_captures(&m, NULL, NULL) + 2;
        }
    } while (at++ < m.src_end && !anchor);
    settle(&m);
    luaL_pushfail(L);
    return 1;
}

static int l_find(lua_State *L)
{
    return find_or_match(L, 1);
}

static int l_match(lua_State *L)
{
    return find_or_match(L, 0);
}

/* The gmatch iterator's place: where the next search starts, and the end
 * of the last match (a match may not end there: no empty match right
 * after another), both offsets into the subject; last -1: none yet. */
typedef struct gmatch_state {
    size_t next;
    ptrdiff_t last;
} gmatch_state_t;

/* Upvalues: the budget, the subject, the pattern, the gmatch_state_t. */
static int gmatch_next(lua_State *L)
{
    size_t sl, pl;
    const char *s = lua_tolstring(L, lua_upvalueindex(2), &sl);
    const char *p = lua_tolstring(L, lua_upvalueindex(3), &pl);
    gmatch_state_t *g = lua_touserdata(L, lua_upvalueindex(4));
    matcher_t m;
    matcher_init(&m, L, s, sl, p, pl);
    for (const char *at = s + g->next; at <= m.src_end; at++) {
        matcher_reset(&m);
        const char *e = match(&m, at, p);
        if (e && e - s != g->last) {
            g->next = (size_t)(e - s);
            g->last = e - s;
            settle(&m);
            return push_captures(&m, at, e);
        }
    }
    g->next = sl + 1; /* nothing more, however often it is asked */
    settle(&m);
    return 0;
}

/* In gmatch a '^' is an ordinary character, as in Lua 5.4. */
static int l_gmatch(lua_State *L)
{
    size_t sl;
    luaL_checklstring(L, 1, &sl);
    luaL_checkstring(L, 2);
    size_t init = start_index(luaL_optinteger(L, 3, 1), sl);
    lua_settop(L, 2);
    gmatch_state_t *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->next = init > sl ? sl + 1 : init;
    g->last = -1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* ---- gsub ---------------------------------------------------------------------------- */

/* Appends replacement string r (with %0-%9 and %%) for the match s..e. */
static void add_template(matcher_t *m, luaL_Buffer *b, const char *s, const char *e, const char *r, size_t rl)
{
    const char *rend = r + rl, *pct;
    spend(m, rl >> 4);
    while ((pct = memchr(r, ESC, (size_t)(rend - r))) != NULL) {
        luaL_addlstring(b, r, (size_t)(pct - r));
        int c = pct + 1 < rend ? (unsigned char)pct[1] : 0;
        if (c == ESC) {
            luaL_addchar(b, ESC);
        } else if (c == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (isdigit(c)) {
            const char *text;
            ptrdiff_t len = get_capture(m, c - '1', s, e, &text);
            if (len == CAP_POSITION)
                luaL_addvalue(b);
            else
                luaL_addlstring(b, text, (size_t)len);
        } else {
            luaL_error(m->L, "invalid use of '%c' in replacement string", ESC);
        }
        r = pct + 2;
    }
    luaL_addlstring(b, r, (size_t)(rend - r));
}

/* Appends the replacement for the match s..e, the replacement (index 3)
 * of type tr; returns 0 when it kept the match (a table or function gave
 * nil or false), 1 when it changed it. */
static int add_replacement(matcher_t *m, luaL_Buffer *b, const char *s, const char *e, int tr)
{
    lua_State *L = m->L;
    if (tr == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(m, s, e);
        lua_call(L, n, 1);
    } else if (tr == LUA_TTABLE) {
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
    } else {
        size_t rl;
        const char *r = lua_tolstring(L, 3, &rl);
        add_template(m, b, s, e, r, rl);
        return 1;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1))
        return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

static int l_gsub(lua_State *L)
{
    size_t sl, pl;
    const char *s = luaL_checklstring(L, 1, &sl);
    const char *p = luaL_checklstring(L, 2, &pl);
    int tr = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)sl + 1), n = 0;
    luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
                     "string/function/table");
    int anchor = pl > 0 && *p == '^', changed = 0;
    const char *at = s, *last = NULL;
    matcher_t m;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    matcher_init(&m, L, s, sl, p, pl);
    while (n < max) {
        matcher_reset(&m);
        const char *e = match(&m, at, p + anchor);
        if (e && e != last) {
            n++;
            changed |= add_replacement(&m, &b, at, e, tr);
            at = last = e;
        } else if (at < m.src_end) {
            luaL_addchar(&b, *at++);
        } else {
            break;
        }
        if (anchor)
            break;
    }
    settle(&m);
    if (changed) {
        luaL_addlstring(&b, at, (size_t)(m.src_end - at));
        luaL_pushresult(&b);
    } else {
        lua_pushvalue(L, 1);
    }
    lua_pushinteger(L, n);
    return 2;
}

/* Sets the four functions in the table on top of the stack (pattern.h). */
void pattern_register(lua_State *L, const pattern_budget_t *b)
{
    static const luaL_Reg fns[] = {
        {"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub}, {NULL, NULL}};
    account_t *a = lua_newuserdatauv(L, sizeof *a, 0);
    a->budget = *b;
    a->owed = 0;
    luaL_setfuncs(L, fns, 1);
}
