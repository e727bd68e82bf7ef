/* budget.c - the budgets scripts run under: instructions (a count hook), wall
 * clock and memory (the allocator), and the protected call that applies them. */
#include "script_internal.h"

/* ---- budgets ------------------------------------------------------------- */

state_t *script_state_of(lua_State *L)
{
    return *(state_t **)lua_getextraspace(L);
}

/* The coarse clock is cheap and never ahead of the precise one the
 * deadline was set from: a stop comes at most one clock tick late. */
static int past_deadline(const state_t *st)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return now.tv_sec > st->deadline.tv_sec ||
           (now.tv_sec == st->deadline.tv_sec && now.tv_nsec > st->deadline.tv_nsec);
}

/* Registry keys of the budget messages, made when the state is created so
 * that raising them needs no allocation. */
const char budget_keys[4] = {0, 1, 2, 3};

static void arm_stop(state_t *st, int budget)
{
    if (!st->budget) {
        st->budget = budget;
        /* From now on the hook raises at every instruction: see budget_hook. */
        lua_sethook(st->L, budget_hook_fn(), LUA_MASKCOUNT, 1);
    }
}

/*
 * Small blocks are recycled per state, by size class: every event makes
 * a few short-lived objects (the event, its tokens, e.data), and the
 * collector frees them in bursts, which glibc's caches do not absorb.  A
 * block Lua sees as n <= POOL_MAX bytes always has the room of its class,
 * so it can go back to that class's list whatever path it took.
 */
static size_t pool_class(size_t n)
{
    return (n + POOL_GRAIN - 1) / POOL_GRAIN - 1;
}

static void *pool_get(state_t *st, size_t n)
{
    size_t c = pool_class(n);
    void *p = st->pool[c];
    if (p) {
        st->pool[c] = *(void **)p;
        st->pool_n[c]--;
        return p;
    }
    return malloc((c + 1) * POOL_GRAIN);
}

static void pool_put(state_t *st, void *p, size_t n)
{
    size_t c = pool_class(n);
    if (st->pool_n[c] >= POOL_KEEP) {
        free(p);
        return;
    }
    *(void **)p = st->pool[c];
    st->pool[c] = p;
    st->pool_n[c]++;
}

void budget_pool_free(state_t *st)
{
    for (size_t c = 0; c < POOL_CLASSES; c++) {
        while (st->pool[c]) {
            void *p = st->pool[c];
            st->pool[c] = *(void **)p;
            free(p);
        }
        st->pool_n[c] = 0;
    }
}

/* realloc with the pool: Lua's rules (ptr NULL: new block; nsize 0: free;
 * shrinking never fails). */
static void *pool_realloc(state_t *st, void *ptr, size_t osize, size_t nsize)
{
    if (nsize == 0) {
        if (ptr && osize <= POOL_MAX)
            pool_put(st, ptr, osize);
        else
            free(ptr);
        return NULL;
    }
    if (!ptr)
        return nsize <= POOL_MAX ? pool_get(st, nsize) : malloc(nsize);
    if (osize <= POOL_MAX && nsize <= POOL_MAX && pool_class(osize) == pool_class(nsize))
        return ptr;
    if (osize > POOL_MAX && nsize > POOL_MAX)
        return realloc(ptr, nsize);
    void *np = nsize <= POOL_MAX ? pool_get(st, nsize) : malloc(nsize);
    if (!np)
        return nsize < osize ? ptr : NULL; /* a shrink keeps its (bigger) block */
    memcpy(np, ptr, osize < nsize ? osize : nsize);
    if (osize <= POOL_MAX)
        pool_put(st, ptr, osize);
    else
        free(ptr);
    return np;
}

/*
 * Memory cap for the whole state, and a second place to notice the time
 * budget: C functions such as string.rep or gsub never return to the VM
 * while they work, but they allocate, and refusing an allocation is a clean
 * error path everywhere in Lua.  Only the allocation that finds the budget
 * spent is refused (later ones may be the error unwinding); the hook then
 * stops the script at its next instruction.  Shrinking always succeeds.
 * The clock is read for one small allocation in 16 and for every large
 * one: a C function that works long enough to matter grows buffers.
 */
void *budget_state_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    state_t *st = ud;
    if (!ptr)
        osize = 0;
    if (nsize == 0) {
        pool_realloc(st, ptr, osize, 0);
        st->mem_used -= osize;
        return NULL;
    }
    if (nsize > osize) {
        if (st->mem_used + (nsize - osize) > st->limits.memory) {
            if (st->in_call)
                arm_stop(st, BUDGET_MEMORY);
            return NULL;
        }
        if (st->in_call && !st->budget && ((++st->alloc_ticks & 15) == 0 || nsize >= 1024) && past_deadline(st)) {
            arm_stop(st, BUDGET_TIME);
            return NULL;
        }
    }
    void *p = pool_realloc(st, ptr, ptr ? osize : 0, nsize);
    if (!p && nsize > osize)
        return NULL;
    st->mem_used = st->mem_used - osize + nsize;
    return p;
}

/*
 * The count hook.  Once a budget is spent it fires on every instruction and
 * raises each time, so a script cannot swallow the stop with pcall: the
 * first instruction after its pcall returns raises once more.  The message
 * is a string made in advance, so raising it allocates nothing.
 */
void budget_hook(lua_State *L, lua_Debug *ar)
{
    state_t *st = script_state_of(L);
    (void)ar;
    if (!st->in_call)
        return;
    if (!st->budget) {
        st->instructions += HOOK_STEP;
        if (st->instructions > st->limits.instructions)
            arm_stop(st, BUDGET_INSTRUCTIONS);
        else if (past_deadline(st))
            arm_stop(st, BUDGET_TIME);
        else
            return;
    }
    /* Each coroutine has a hook of its own: this thread (maybe a coroutine
     * the script made before the stop) must raise at every instruction too. */
    if (lua_gethookcount(L) != 1)
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_keys[st->budget]);
    lua_error(L);
}

lua_Hook budget_hook_fn(void)
{
    return budget_hook;
}

void budget_begin(state_t *st, budget_saved_t *outer, const struct timespec *now)
{
    /* Calls nest (a prompt line publishing an event runs rules): the inner
     * call gets budgets of its own and the outer one's are put back. */
    outer->in_call = st->in_call;
    outer->budget = st->budget;
    outer->instructions = st->instructions;
    outer->deadline = st->deadline;
    double t = st->limits.time;
    st->deadline.tv_sec = now->tv_sec + (time_t)t;
    st->deadline.tv_nsec = now->tv_nsec + (long)((t - (double)(time_t)t) * 1e9);
    if (st->deadline.tv_nsec >= 1000000000L) {
        st->deadline.tv_sec++;
        st->deadline.tv_nsec -= 1000000000L;
    }
    st->instructions = 0;
    st->budget = BUDGET_OK;
    st->in_call = 1;
}

int budget_end(state_t *st, const budget_saved_t *outer)
{
    int budget = st->budget;
    st->in_call = 0;
    if (budget) {
        lua_sethook(st->L, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
        /* What the stopped script built is garbage now; give it back. */
        lua_gc(st->L, LUA_GCCOLLECT);
    }
    if (outer->in_call) {
        st->in_call = 1;
        st->budget = outer->budget;
        st->instructions = outer->instructions;
        st->deadline = outer->deadline;
    }
    return budget;
}

void budget_error(state_t *st, int budget)
{
    lua_State *L = st->L;
    st->host->st.errors++;
    if (!budget)
        return;
    /* Now allocation is safe again: say which limit, and its value. */
    st->host->st.budget_stops++;
    lua_pop(L, 1);
    if (budget == BUDGET_INSTRUCTIONS)
        lua_pushfstring(L, "instruction budget exceeded (%I instructions)", (lua_Integer)st->limits.instructions);
    else if (budget == BUDGET_TIME)
        lua_pushfstring(L, "time budget exceeded (%d ms)", (int)(st->limits.time * 1000));
    else
        lua_pushfstring(L, "memory budget exceeded (%I bytes)", (lua_Integer)st->limits.memory);
}

/* How frame ar is named in a traceback, as Lua's own traceback does. */
static void frame_name(const lua_Debug *ar, char *out, size_t n)
{
    if (ar->namewhat && *ar->namewhat)
        snprintf(out, n, "%s '%s'", ar->namewhat, ar->name ? ar->name : "?");
    else if (ar->what && *ar->what == 'm')
        snprintf(out, n, "main chunk");
    else
        snprintf(out, n, "function <%s:%d>", ar->short_src, ar->linedefined);
}

/*
 * Records where the error being raised comes from: the first Lua frame
 * (file:line) in st->err_at and up to TRACE_FRAMES Lua frames, innermost
 * first, in st->err_trace ("file:line: in function 'f'", one a line).
 * It allocates nothing, so it also runs while a budget stop unwinds:
 * lua_getinfo fills a lua_Debug and the text goes to the state's buffers.
 */
static void note_traceback(lua_State *L, state_t *st)
{
    lua_Debug ar;
    size_t o = 0;
    int frames = 0;
    st->err_at[0] = st->err_trace[0] = '\0';
    for (int level = 1; level < 64 && frames < TRACE_FRAMES && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Slnt", &ar) || ar.currentline <= 0)
            continue; /* a C function: no file:line */
        char name[160];
        frame_name(&ar, name, sizeof name);
        if (!frames)
            snprintf(st->err_at, sizeof st->err_at, "%s:%d", ar.short_src, ar.currentline);
        /* The frames a tail call replaced are gone: say so, as Lua does. */
        int n = snprintf(st->err_trace + o, sizeof st->err_trace - o, "%s%s:%d: in %s%s", frames ? "\n" : "",
                         ar.short_src, ar.currentline, name, ar.istailcall ? "\n(...tail calls...)" : "");
        if (n < 0 || (size_t)n >= sizeof st->err_trace - o) {
            st->err_trace[o] = '\0'; /* whole frames only */
            break;
        }
        o += (size_t)n;
        frames++;
    }
}

/* Message handler for lua_pcall.  While a budget stop unwinds it must not
 * allocate: the stop's own message is returned as it is. */
int budget_on_error(lua_State *L)
{
    state_t *st = script_state_of(L);
    if (st)
        note_traceback(L, st);
    if (st && st->budget) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_keys[st->budget]);
        return 1;
    }
    if (lua_type(L, 1) == LUA_TSTRING)
        return 1;
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
        return 1;
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    return 1;
}

/*
 * Calls the function below nargs arguments on the stack under the budgets.
 * Returns LUA_OK with nres results, or an error status with the message on
 * the stack.
 */
int budget_call(state_t *st, int nargs, int nres)
{
    lua_State *L = st->L;
    int base = lua_gettop(L) - nargs;
    struct timespec now;
    budget_saved_t outer;
    clock_gettime(CLOCK_MONOTONIC, &now);
    lua_pushcfunction(L, budget_on_error);
    lua_insert(L, base);
    budget_begin(st, &outer, &now);
    int rc = lua_pcall(L, nargs, nres, base);
    int budget = budget_end(st, &outer);
    lua_remove(L, base);
    if (rc != LUA_OK) {
        budget_error(st, budget);
        st->err_at[0] = st->err_trace[0] = '\0'; /* no rule failed: nobody reads them */
    }
    return rc;
}

/* Budget check for guarded C calls that run without the VM: charges `work`
 * steps as instructions and looks at the clock, raising like the hook. */
void budget_charge(lua_State *L, state_t *st, double work)
{
    if (!st->in_call)
        return;
    st->instructions += work > 1e15 ? (uint64_t)1e15 : (uint64_t)work;
    if (!st->budget && st->instructions > st->limits.instructions)
        arm_stop(st, BUDGET_INSTRUCTIONS);
    else if (!st->budget && past_deadline(st))
        arm_stop(st, BUDGET_TIME);
    if (st->budget) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_keys[st->budget]);
        lua_error(L);
    }
}
