/*
 * procmod.c - process control for the test suite, as a Lua 5.4 module.
 *
 * The specs start the real tide binary and need exact exit statuses and
 * signals, which plain Lua cannot give.  Functions:
 *   spawn(argv_table, out_path) -> pid      stdout+stderr appended to out_path
 *   wait(pid, timeout_s)        -> "exited", code | "signaled", sig | nil (timeout)
 *   kill(pid, signame)          -> true | nil, err     signame: "TERM","KILL",...
 *   sleep(seconds)
 *   now()                       -> monotonic seconds (float)
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    struct timespec ts;
    if (s <= 0)
        return;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *out = luaL_optstring(L, 2, "/dev/null");
    int n = (int)luaL_len(L, 1);
    if (n < 1)
        return luaL_error(L, "spawn: empty argv");
    const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
    for (int i = 1; i <= n; i++) {
        lua_geti(L, 1, i);
        argv[i - 1] = luaL_checkstring(L, -1);
        lua_pop(L, 1); /* strings stay alive: they are referenced by the table */
    }
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return luaL_error(L, "fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) {
            dup2(nul, 0);
            close(nul);
        }
        signal(SIGPIPE, SIG_DFL);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    lua_pushinteger(L, pid);
    return 1;
}

static int l_wait(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    double timeout = luaL_optnumber(L, 2, 10.0);
    double deadline = now_s() + timeout;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0)
            return luaL_error(L, "waitpid(%d): %s", (int)pid, strerror(errno));
        if (now_s() >= deadline) {
            lua_pushnil(L);
            return 1;
        }
        sleep_s(0.005);
    }
    if (WIFEXITED(status)) {
        lua_pushliteral(L, "exited");
        lua_pushinteger(L, WEXITSTATUS(status));
    } else {
        lua_pushliteral(L, "signaled");
        lua_pushinteger(L, WTERMSIG(status));
    }
    return 2;
}

static int l_kill(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    const char *name = luaL_optstring(L, 2, "TERM");
    static const struct { const char *n; int s; } sigs[] = {
        {"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT}, {"HUP", SIGHUP},
        {"STOP", SIGSTOP}, {"CONT", SIGCONT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
        {"0", 0}};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        if (strcmp(sigs[i].n, name) == 0) {
            if (kill(pid, sigs[i].s) == 0) {
                lua_pushboolean(L, 1);
                return 1;
            }
            lua_pushnil(L);
            lua_pushstring(L, strerror(errno));
            return 2;
        }
    }
    return luaL_error(L, "kill: unknown signal '%s'", name);
}

static int l_sleep(lua_State *L)
{
    sleep_s(luaL_checknumber(L, 1));
    return 0;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, now_s());
    return 1;
}

int luaopen_procmod(lua_State *L);
int luaopen_procmod(lua_State *L)
{
    static const luaL_Reg fns[] = {{"spawn", l_spawn}, {"wait", l_wait}, {"kill", l_kill},
                                   {"sleep", l_sleep}, {"now", l_now},   {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
