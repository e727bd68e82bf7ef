/*
 * main.c - the tide command line.
 *
 *   tide serve [-a host] [-p port] [-c config.lua] [options]
 *   tide --help | --version
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "cli.h"
#include "flow.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "repl.h"
#include "script.h"
#include "server.h"
#include "stream.h"
#include "vfs.h"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: tide <command> [options]\n"
            "\n"
            "Commands:\n"
            "  serve                  run the server\n"
            "  run FLOW --events IN.jsonl [--expect OUT.jsonl] [--settle SECONDS]\n"
            "                         run a flow offline: print its deliveries, or\n"
            "                         compare them with OUT.jsonl (exit 1 on a difference);\n"
            "                         declared streams run in a temporary directory, and\n"
            "                         each event waits (at most --settle, default 10 s) for\n"
            "                         its durable handlers\n"
            "  check FLOW...          load flows in the sandbox and report errors (exit 1)\n"
            "  repl [-c FLOW] [--data DIR] [--listen HOST:PORT] | repl --connect HOST:PORT\n"
            "                         a router at a Lua prompt: define rules, publish,\n"
            "                         trace events (help() there lists the helpers); the\n"
            "                         flow's streams live in --data DIR, else its storage\n"
            "                         { dir }, else a temporary directory removed at exit\n"
            "  pub SUBJECT [DATA] [-H NAME:VALUE]... [--reply SUBJECT]\n"
            "  sub PATTERN [--queue Q] [--count N]\n"
            "  req SUBJECT [DATA] [-H NAME:VALUE]... [--timeout SECONDS]\n"
            "  stats                  clients against a running server: -s HOST:PORT\n"
            "                         (default 127.0.0.1:4222 or $TIDE_SERVER), --json\n"
            "  stream ls | info NAME | get NAME SEQ\n"
            "  stream events NAME [--subject PATTERN] [--since TIME] [--until TIME]\n"
            "                [--from SEQ] [--limit N]\n"
            "  stream export NAME [--subject PATTERN] [--since TIME] [--until TIME]\n"
            "                         stored events as tide run --events input lines\n"
            "  consumer ls | info NAME\n"
            "  dlq ls | show STREAM [--limit N] | replay STREAM (--seq N | --all)\n"
            "                         the persistent queue of a running server (same -s,\n"
            "                         --json); TIME: RFC 3339, epoch seconds or 15m/2h/7d ago\n"
            "\n"
            "Server options (tide serve):\n"
            "  -a, --addr HOST        bind to HOST (default 127.0.0.1)\n"
            "  -p, --port PORT        NATS client port (default 4222)\n"
            "  -c, --config FILE      Lua configuration file\n"
            "  -P, --pid FILE         write the process id to FILE\n"
            "  -n, --name NAME        server name (default: the server id)\n"
            "      --max-payload N    largest message in bytes (default 1048576)\n"
            "      --max-control-line N  longest protocol line in bytes (default 4096)\n"
            "      --max-pending N    bytes queued for one client before it is\n"
            "                         disconnected as a slow consumer (default 67108864)\n"
            "      --ping-interval S  seconds between PINGs to an idle client (default 120)\n"
            "      --max-pings-out N  unanswered PINGs before the client is stale (default 2)\n"
            "      --write-deadline S seconds a closing client gets to take its output (default 2)\n"
            "      --http HOST:PORT   HTTP listener (default 127.0.0.1:8222, skipped when taken)\n"
            "      --no-http          no HTTP listener\n"
            "      --data DIR         directory of streams and consumer state (default:\n"
            "                         storage { dir } of the config, else data/ beside it)\n"
            "  -D, --debug            debug logging\n"
            "  -V, --trace            trace logging\n"
            "\n"
            "  -h, --help             this help\n"
            "  -v, --version          print the version\n");
}

static int parse_size_arg(const char *flag, const char *s, size_t min, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s || s[0] == '-' || v < min) {
        fprintf(stderr, "tide: %s expects a whole number >= %zu, got '%s'\n", flag, min, s);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static int parse_seconds_arg(const char *flag, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || v < 0) {
        fprintf(stderr, "tide: %s expects a number of seconds >= 0, got '%s'\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        log_error("cannot write pid file '%s': %s", path, strerror(errno));
        return -1;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    return 0;
}

/*
 * tide's shipped Lua library (lua/): $TIDE_LUA_PATH, else lua/ beside the
 * directory holding the binary (a source checkout: build/tide -> lua/),
 * else the installed location.
 */
static const char *lua_lib_dir(char *buf, size_t n)
{
    const char *env = getenv("TIDE_LUA_PATH");
    char exe[4096];
    ssize_t len;
    if (env && *env)
        return env;
    len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = '\0';
        for (int up = 0; up < 2; up++) {
            char *slash = strrchr(exe, '/');
            if (!slash)
                break;
            *slash = '\0';
            int w = snprintf(buf, n, "%s/lua", exe);
            if (w > 0 && (size_t)w < n && access(buf, R_OK) == 0)
                return buf;
        }
    }
    snprintf(buf, n, "/usr/share/tide/lua");
    return buf;
}

enum {
    OPT_MAX_PAYLOAD = 1000,
    OPT_MAX_CONTROL_LINE,
    OPT_MAX_PENDING,
    OPT_PING_INTERVAL,
    OPT_MAX_PINGS_OUT,
    OPT_WRITE_DEADLINE,
    OPT_HTTP,
    OPT_NO_HTTP,
    OPT_DATA,
};

static int cmd_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"addr", required_argument, NULL, 'a'},
        {"port", required_argument, NULL, 'p'},
        {"config", required_argument, NULL, 'c'},
        {"pid", required_argument, NULL, 'P'},
        {"name", required_argument, NULL, 'n'},
        {"max-payload", required_argument, NULL, OPT_MAX_PAYLOAD},
        {"max-control-line", required_argument, NULL, OPT_MAX_CONTROL_LINE},
        {"max-pending", required_argument, NULL, OPT_MAX_PENDING},
        {"ping-interval", required_argument, NULL, OPT_PING_INTERVAL},
        {"max-pings-out", required_argument, NULL, OPT_MAX_PINGS_OUT},
        {"write-deadline", required_argument, NULL, OPT_WRITE_DEADLINE},
        {"http", required_argument, NULL, OPT_HTTP},
        {"no-http", no_argument, NULL, OPT_NO_HTTP},
        {"data", required_argument, NULL, OPT_DATA},
        {"debug", no_argument, NULL, 'D'},
        {"trace", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    server_opts_t o, flags;
    unsigned set = 0; /* which settings came from flags: they override the config file */
    const char *pid_file = NULL, *config = NULL, *http_flag = NULL, *data_flag = NULL;
    streams_t *streams = NULL;
    int no_http = 0;
    http_t *http = NULL;
    script_host_t *scripts = NULL;
    size_t n;
    int ch, rc = 1;

    server_opts_default(&flags);
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":a:p:c:P:n:DVh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'a':
            snprintf(flags.host, sizeof flags.host, "%s", optarg);
            set |= 1u << 0;
            break;
        case 'p':
            if (parse_size_arg("--port", optarg, 0, &n) < 0 || n > 65535) {
                if (n > 65535)
                    fprintf(stderr, "tide: --port must be 0..65535, got '%s'\n", optarg);
                return 2;
            }
            flags.port = (int)n;
            set |= 1u << 1;
            break;
        case 'c':
            config = optarg;
            break;
        case 'P':
            pid_file = optarg;
            break;
        case 'n':
            snprintf(flags.server_name, sizeof flags.server_name, "%s", optarg);
            set |= 1u << 2;
            break;
        case OPT_MAX_PAYLOAD:
            if (parse_size_arg("--max-payload", optarg, 1, &flags.max_payload) < 0)
                return 2;
            set |= 1u << 3;
            break;
        case OPT_MAX_CONTROL_LINE:
            if (parse_size_arg("--max-control-line", optarg, 64, &flags.max_control_line) < 0)
                return 2;
            set |= 1u << 4;
            break;
        case OPT_MAX_PENDING:
            if (parse_size_arg("--max-pending", optarg, 1024, &flags.max_pending) < 0)
                return 2;
            set |= 1u << 5;
            break;
        case OPT_PING_INTERVAL:
            if (parse_seconds_arg("--ping-interval", optarg, &flags.ping_interval) < 0)
                return 2;
            set |= 1u << 6;
            break;
        case OPT_MAX_PINGS_OUT:
            if (parse_size_arg("--max-pings-out", optarg, 1, &n) < 0)
                return 2;
            flags.max_pings_out = (int)n;
            set |= 1u << 7;
            break;
        case OPT_WRITE_DEADLINE:
            if (parse_seconds_arg("--write-deadline", optarg, &flags.write_deadline) < 0)
                return 2;
            set |= 1u << 8;
            break;
        case OPT_HTTP:
            if (!strrchr(optarg, ':')) {
                fprintf(stderr, "tide: --http expects HOST:PORT, got '%s'\n", optarg);
                return 2;
            }
            http_flag = optarg;
            break;
        case OPT_NO_HTTP:
            no_http = 1;
            break;
        case OPT_DATA:
            data_flag = optarg;
            break;
        case 'D':
            log_set_level(LOG_DEBUG);
            break;
        case 'V':
            log_set_level(LOG_TRACE);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            fprintf(stderr, "tide: option '%s' needs a value\nTry 'tide --help'.\n", argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "tide: unknown option '%s'\nTry 'tide --help'.\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tide: unexpected argument '%s'\nTry 'tide --help'.\n", argv[optind]);
        return 2;
    }
    server_opts_default(&o);
    if (config) {
        char err[1024], lib[4096];
        scripts = script_host_new(config, lua_lib_dir(lib, sizeof lib), err, sizeof err);
        if (!scripts) {
            fprintf(stderr, "tide: %s\n", err);
            return 1;
        }
        script_host_apply_settings(scripts, &o);
    }
    if (set & (1u << 0)) memcpy(o.host, flags.host, sizeof o.host);
    if (set & (1u << 1)) o.port = flags.port;
    if (set & (1u << 2)) memcpy(o.server_name, flags.server_name, sizeof o.server_name);
    if (set & (1u << 3)) o.max_payload = flags.max_payload;
    if (set & (1u << 4)) o.max_control_line = flags.max_control_line;
    if (set & (1u << 5)) o.max_pending = flags.max_pending;
    if (set & (1u << 6)) o.ping_interval = flags.ping_interval;
    if (set & (1u << 7)) o.max_pings_out = flags.max_pings_out;
    if (set & (1u << 8)) o.write_deadline = flags.write_deadline;

    signal(SIGPIPE, SIG_IGN);
    {
        char verr[512];
        if (vfs_init(verr, sizeof verr) < 0) {
            fprintf(stderr, "tide: %s\n", verr);
            script_host_free(scripts);
            return 2;
        }
    }
    server_t *s = server_new(&o);
    if (!s) {
        script_host_free(scripts);
        return 1;
    }
    log_info("Starting tide version %s", TIDE_VERSION);
    log_info("Server id is %s", server_id(s));
    if (server_listen(s) < 0)
        goto out;
    if (scripts) {
        if (script_host_attach(scripts, s) < 0) {
            log_error("cannot set up script reloading");
            goto out;
        }
        server_set_scripts(s, scripts);
        /* The persistent queue: storage { dir } (or --data), by default
         * "data" beside the entry file. */
        char dd[4200], err[1024];
        const char *sd = script_storage_dir(scripts);
        if (data_flag)
            snprintf(dd, sizeof dd, "%s", data_flag);
        else if (sd)
            snprintf(dd, sizeof dd, "%s", sd);
        else
            script_default_storage_dir(scripts, dd, sizeof dd);
        if (script_declared_streams(scripts) || data_flag || sd) {
            if (!(streams = streams_new(s, dd))) {
                log_error("cannot set up the streams");
                goto out;
            }
            if (script_host_set_streams(scripts, streams, err, sizeof err) < 0) {
                log_error("%s", err);
                goto out;
            }
        }
    }
    {
        /* HTTP: --http / listen{http=...} must bind; the default is tried. */
        char addr[300] = "127.0.0.1:8222";
        int said = scripts ? script_http_setting(scripts, addr, sizeof addr) : 0;
        if (http_flag)
            snprintf(addr, sizeof addr, "%s", http_flag), said = 1;
        if (!no_http && said >= 0) {
            char *colon = strrchr(addr, ':');
            *colon = '\0';
            const char *hh = addr;
            if (hh[0] == '[') { /* [::1]:8222 */
                hh++;
                if (colon > addr && colon[-1] == ']')
                    colon[-1] = '\0';
            }
            http = http_new(s, hh, atoi(colon + 1));
            if (!http && said) {
                log_error("cannot listen for HTTP on %s:%s", hh, colon + 1);
                goto out;
            }
            if (!http)
                log_warn("HTTP is off: the default address %s:%s is taken (use --http or --no-http)", hh, colon + 1);
        }
    }
    if (pid_file && write_pid_file(pid_file) < 0)
        goto out;
    log_info("Server is ready");
    rc = server_run(s) < 0 ? 1 : 0;
out:
    http_free(http);
    if (scripts)
        script_host_set_streams(scripts, NULL, NULL, 0);
    streams_free(streams); /* writes and syncs what is buffered */
    server_free(s);
    script_host_free(scripts);
    if (pid_file)
        unlink(pid_file);
    return rc;
}

/* tide repl [-c FLOW] [--data DIR] [--listen HOST:PORT] [-D] */
static int cmd_repl(int argc, char **argv)
{
    const char *entry = NULL, *listen_addr = NULL, *data_dir = NULL;
    char lib[4096];
    log_set_level(LOG_WARN); /* the prompt is the output; -D brings the log back */
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
            entry = argv[++i];
        else if (!strcmp(argv[i], "--listen") && i + 1 < argc)
            listen_addr = argv[++i];
        else if (!strcmp(argv[i], "--data") && i + 1 < argc)
            data_dir = argv[++i];
        else if (!strcmp(argv[i], "--connect") && i + 1 < argc) {
            signal(SIGPIPE, SIG_IGN);
            return cli_repl_connect(argv[i + 1]);
        }
        else if (!strcmp(argv[i], "-D"))
            log_set_level(LOG_DEBUG);
        else if (argv[i][0] != '-' && !entry)
            entry = argv[i];
        else {
            fprintf(stderr, "usage: tide repl [-c flow.lua] [--data DIR] [--listen HOST:PORT] [-D]\n"
                            "       tide repl --connect HOST:PORT\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    return repl_main(entry, lua_lib_dir(lib, sizeof lib), listen_addr, data_dir);
}

/* tide check: loads each entry file as the server would, without serving. */
static int cmd_check(int argc, char **argv)
{
    char lib[4096];
    int bad = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: tide check flow.lua [flow.lua...]\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        char err[1024];
        script_host_t *h = script_host_new(argv[i], lua_lib_dir(lib, sizeof lib), err, sizeof err);
        if (!h) {
            printf("%s: error: %s\n", argv[i], err);
            bad = 1;
            continue;
        }
        script_stats_t st;
        script_get_stats(h, &st);
        printf("%s: ok, %d rules\n", argv[i], st.rules);
        script_host_free(h);
    }
    return bad;
}

/* tide run: the driver is lua/tide/run.lua, in a plain Lua state with the
 * tide.flow module (a router without network) and JSON helpers. */
static int cmd_run(int argc, char **argv)
{
    char lib[4096], path[4200];
    int rc = 2;
    log_set_level(LOG_WARN); /* the deliveries are the output; warnings and errors still show */
    lua_State *L = luaL_newstate();
    if (!L)
        return 1;
    luaL_openlibs(L);
    lua_lib_dir(lib, sizeof lib);
    flow_set_lib_dir(lib);
    luaL_requiref(L, "tide.flow", flow_open_module, 0);
    lua_pop(L, 1);
    json_open(L);
    lua_setglobal(L, "tide_json");
    snprintf(path, sizeof path, "%s/tide/run.lua", lib);
    if (luaL_loadfile(L, path) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "tide run: %s\n", lua_tostring(L, -1));
        goto out;
    }
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "tide run: %s\n", lua_tostring(L, -1));
        goto out;
    }
    rc = (int)lua_tointeger(L, -1);
out:
    lua_close(L);
    return rc;
}

int main(int argc, char **argv)
{
    /* Input is read 64 KB at a time into buffers freed once parsed; keep
     * that much at the top of the heap instead of giving it back and asking
     * again (two brk calls per read otherwise). */
    mallopt(M_TOP_PAD, 1 << 20);
    json_init();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "-v") || !strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("tide version %s\n", TIDE_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "run"))
        return cmd_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "check"))
        return cmd_check(argc - 1, argv + 1);
    if (!strcmp(cmd, "repl"))
        return cmd_repl(argc - 1, argv + 1);
    if (!strcmp(cmd, "pub") || !strcmp(cmd, "sub") || !strcmp(cmd, "req") || !strcmp(cmd, "stats")) {
        signal(SIGPIPE, SIG_IGN);
        return cli_main(cmd, argc - 1, argv + 1);
    }
    if (!strcmp(cmd, "stream") || !strcmp(cmd, "consumer") || !strcmp(cmd, "dlq")) {
        signal(SIGPIPE, SIG_IGN);
        return cli_ops_main(cmd, argc - 1, argv + 1);
    }
    if (cmd[0] == '-')
        fprintf(stderr, "tide: unknown option '%s'\nTry 'tide --help'.\n", cmd);
    else
        fprintf(stderr, "tide: unknown command '%s'\nTry 'tide --help'.\n", cmd);
    return 2;
}
