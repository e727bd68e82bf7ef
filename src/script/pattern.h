/*
 * pattern.h - Lua 5.4's string patterns (string.find, match, gmatch, gsub)
 * with every step of matching counted, so that a budget can stop any call,
 * whatever the pattern and the subject.
 */
#ifndef TIDE_PATTERN_H
#define TIDE_PATTERN_H

#include <stddef.h>

#include <lua.h>

/* Steps between two calls of the check, at most, within one call; twice
 * that across calls (a step is a character test, a backtrack, a %b scan
 * step, 16 bytes a plain find's memchr covers: a few nanoseconds at most). */
#define PATTERN_CHECK_STEPS 4096

typedef struct pattern_budget {
    /* Called with the steps done since its last call, once they add up to
     * PATTERN_CHECK_STEPS (the steps of short calls are carried over to
     * the next).  It may raise a Lua error: the matcher holds nothing that
     * a longjmp would leak. */
    void (*check)(lua_State *L, void *ud, size_t steps);
    void *ud;
    /* Plain finds of needles at least this long use the counted two-way
     * search instead of memmem (0: the default, 64 KiB); for tests. */
    size_t two_way_from;
} pattern_budget_t;

/*
 * Sets find, match, gmatch and gsub in the table on top of the stack: Lua
 * 5.4's functions of those names (reference manual, 6.4.1), the same
 * results and error messages, counted against b.  b is copied (into a
 * userdata the functions keep); b->ud must live as long as they do.
 */
void pattern_register(lua_State *L, const pattern_budget_t *b);

#endif
