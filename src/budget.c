/* budget.c - the budgets scripts run under: instructions (a count hook), wall
 * clock and memory (the allocator), and the protected call that applies them. */
#include "script_internal.h"

/* ---- budgets ------------------------------------------------------------- */

state_t *state_of(lua_State *L)
{
    return *(state_t **)lua_getextraspace(L);
}

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
 * Memory cap for the whole state, and a second place to notice the time
 * budget: C functions such as string.rep or gsub never return to the VM
 * while they work, but they allocate, and refusing an allocation is a clean
 * error path everywhere in Lua.  Only the allocation that finds the budget
 * spent is refused (later ones may be the error unwinding); the hook then
 * stops the script at its next instruction.  Shrinking always succeeds.
 */
void *state_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    state_t *st = ud;
    if (!ptr)
        osize = 0;
    if (nsize == 0) {
        free(ptr);
        st->mem_used -= osize;
        return NULL;
    }
    if (nsize > osize) {
        if (st->mem_used + (nsize - osize) > st->limits.memory) {
            if (st->in_call)
                arm_stop(st, BUDGET_MEMORY);
            return NULL;
        }
        if (st->in_call && !st->budget && past_deadline(st)) {
            arm_stop(st, BUDGET_TIME);
            return NULL;
        }
    }
    void *p = realloc(ptr, nsize);
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
    state_t *st = state_of(L);
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

static void begin_call(state_t *st)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    double t = st->limits.time;
    st->deadline.tv_sec = now.tv_sec + (time_t)t;
    st->deadline.tv_nsec = now.tv_nsec + (long)((t - (double)(time_t)t) * 1e9);
    if (st->deadline.tv_nsec >= 1000000000L) {
        st->deadline.tv_sec++;
        st->deadline.tv_nsec -= 1000000000L;
    }
    st->instructions = 0;
    st->budget = BUDGET_OK;
    st->in_call = 1;
}

static void end_call(state_t *st)
{
    st->in_call = 0;
    if (st->budget) {
        lua_sethook(st->L, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
        /* What the stopped script built is garbage now; give it back. */
        lua_gc(st->L, LUA_GCCOLLECT);
    }
}

/* Message handler for lua_pcall.  While a budget stop unwinds it must not
 * allocate: the stop's own message is returned as it is. */
static int on_error(lua_State *L)
{
    state_t *st = state_of(L);
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
    /* Calls nest (a prompt line publishing an event runs rules): the inner
     * call gets budgets of its own and the outer one's are put back. */
    int outer_in_call = st->in_call, outer_budget = st->budget;
    uint64_t outer_instructions = st->instructions;
    struct timespec outer_deadline = st->deadline;
    lua_pushcfunction(L, on_error);
    lua_insert(L, base);
    begin_call(st);
    int rc = lua_pcall(L, nargs, nres, base);
    int budget = st->budget;
    end_call(st);
    if (outer_in_call) {
        st->in_call = 1;
        st->budget = outer_budget;
        st->instructions = outer_instructions;
        st->deadline = outer_deadline;
    }
    lua_remove(L, base);
    if (rc != LUA_OK) {
        st->host->st.errors++;
        if (budget) {
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
    }
    return rc;
}

/* Budget check for guarded C calls that run without the VM: charges `work`
 * steps as instructions and looks at the clock, raising like the hook. */
void charge(lua_State *L, state_t *st, double work)
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
