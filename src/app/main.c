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
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "cli.h"
#include "cli_auth.h"
#include "flow.h"
#include "admin.h"
#include "cli_cluster.h"
#include "cli_deploy.h"
#include "cluster.h"
#include "http.h"
#include "node.h"
#include "nkey_cli.h"
#include "json_lua.h"
#include "log.h"
#include "repl.h"
#include "replay.h"
#include "script.h"
#include "server.h"
#include "passwd.h"
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
            "      [--clock real|virtual]\n"
            "                         run a flow offline: print its deliveries, or\n"
            "                         compare them with OUT.jsonl (exit 1 on a difference);\n"
            "                         declared streams run in a temporary directory, and\n"
            "                         each event waits (at most --settle, default 10 s) for\n"
            "                         its durable handlers; --clock virtual runs the flow\n"
            "                         on the events' own time (timers, ack_wait, backoff,\n"
            "                         dedup windows, tide.now()), deterministically\n"
            "  check FLOW...          load flows in the sandbox and report errors (exit 1)\n"
            "  check FLOW --replay DATADIR:STREAM [--from X] [--to X] [--against FLOW0] [--json]\n"
            "                         a candidate beside the live rules over stored events\n"
            "  passwd [--cost N]      read a password (twice, not echoed; or a line of\n"
            "                         stdin) and print its bcrypt hash for auth { users }\n"
            "  repl [-c FLOW] [--data DIR] [--listen HOST:PORT] | repl --connect HOST:PORT\n"
            "                         a router at a Lua prompt: define rules, publish,\n"
            "                         trace events (help() there lists the helpers); the\n"
            "                         flow's streams live in --data DIR, else its storage\n"
            "                         { dir }, else a temporary directory removed at exit\n"
            "  pub SUBJECT [DATA] [-H NAME:VALUE]... [--reply SUBJECT]\n"
            "  sub PATTERN [--queue Q] [--count N]\n"
            "  req SUBJECT [DATA] [-H NAME:VALUE]... [--timeout SECONDS]\n"
            "  stats | rules          clients against a running server: -s HOST:PORT\n"
            "                         (default 127.0.0.1:4222 or $TIDE_SERVER), --json\n"
            "  rules history | rollback [REV]\n"
            "                         the rule revisions a node loaded; make one live again\n"
            "  rules shadow PATH | diff | promote | stop\n"
            "                         a candidate beside the live rules, in dry mode; what it\n"
            "                         would do differently; make it live; drop it\n"
            "  rules canary PATH --percent P [--key EXPR] [--max-error-rate R] [--window 60s]\n"
            "                         a candidate for P%% of the events, rolled back by itself\n"
            "  stream ls | info NAME | get NAME SEQ\n"
            "  stream events NAME [--subject PATTERN] [--since TIME] [--until TIME]\n"
            "                [--from SEQ] [--limit N]\n"
            "  stream export NAME [--subject PATTERN] [--since TIME] [--until TIME]\n"
            "                         stored events as tide run --events input lines\n"
            "  consumer ls | info NAME\n"
            "  dlq ls | show STREAM [--limit N] | replay STREAM (--seq N | --all)\n"
            "                         the persistent queue of a running server (same -s,\n"
            "                         --json); TIME: RFC 3339, epoch seconds or 15m/2h/7d ago\n"
            "  nkey gen | pub SEEDFILE | sign SEEDFILE MESSAGE | verify PUBKEY MESSAGE SIG\n"
            "                         NATS user nkeys: gen prints a new seed, then its\n"
            "                         public key (as nk -gen user -pubout)\n"
            "  cluster status -s URL [--node NAME] [--timeout SECONDS] [--json]\n"
            "                         every node of the cluster (cluster { }): name, address,\n"
            "                         upstream, rules, connections, events/s, last error\n"
            "  deploy DIR -s URL [--entry FILE] [--no-check] [--json]\n"
            "                         store DIR's *.lua files as the cluster's next revision\n"
            "                         of the rules: every node loads it after its own file\n"
            "  deploy --rollback REV -s URL [--json]\n"
            "                         store revision REV's files again as the next revision\n"
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
            "      --insecure         serve on an address beyond loopback without auth { }\n"
            "                         (refused otherwise: docs/security.md)\n"
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
    OPT_INSECURE,
};

/* What tide serve's command line says; flags in `set` override the entry
 * file's settings. */
typedef struct serve_args {
    server_opts_t flags;
    unsigned set; /* bit i: the i-th server option came from a flag */
    const char *pid_file, *config, *http_flag, *data_flag;
    int no_http;
    int insecure; /* --insecure: serve beyond loopback without auth */
} serve_args_t;

/* Takes one of tide serve's options (ch as getopt_long gives it) into a.
 * Returns -1 to go on, else the exit code (the error printed). */
static int serve_take_option(serve_args_t *a, int ch, const char *arg)
{
    server_opts_t *f = &a->flags;
    size_t n = 0;
    int bit = -1, rc = 0;
    switch (ch) {
    case 'a': snprintf(f->host, sizeof f->host, "%s", arg), bit = 0; break;
    case 'p':
        if ((rc = parse_size_arg("--port", arg, 0, &n)) == 0 && n > 65535) {
            fprintf(stderr, "tide: --port must be 0..65535, got '%s'\n", arg);
            rc = -1;
        }
        f->port = (int)n, bit = 1;
        break;
    case 'c': a->config = arg; break;
    case 'P': a->pid_file = arg; break;
    case 'n': snprintf(f->server_name, sizeof f->server_name, "%s", arg), bit = 2; break;
    case OPT_MAX_PAYLOAD:
        rc = parse_size_arg("--max-payload", arg, 1, &f->max_payload), bit = 3;
        break;
    case OPT_MAX_CONTROL_LINE:
        rc = parse_size_arg("--max-control-line", arg, 64, &f->max_control_line), bit = 4;
        break;
    case OPT_MAX_PENDING:
        rc = parse_size_arg("--max-pending", arg, 1024, &f->max_pending), bit = 5;
        break;
    case OPT_PING_INTERVAL:
        rc = parse_seconds_arg("--ping-interval", arg, &f->ping_interval), bit = 6;
        break;
    case OPT_MAX_PINGS_OUT:
        rc = parse_size_arg("--max-pings-out", arg, 1, &n);
        f->max_pings_out = (int)n, bit = 7;
        break;
    case OPT_WRITE_DEADLINE:
        rc = parse_seconds_arg("--write-deadline", arg, &f->write_deadline), bit = 8;
        break;
    case OPT_HTTP:
        if (!strrchr(arg, ':')) {
            fprintf(stderr, "tide: --http expects HOST:PORT, got '%s'\n", arg);
            return 2;
        }
        a->http_flag = arg;
        break;
    case OPT_NO_HTTP: a->no_http = 1; break;
    case OPT_DATA: a->data_flag = arg; break;
    case OPT_INSECURE: a->insecure = 1; break;
    case 'D': log_set_level(LOG_DEBUG); break;
    case 'V': log_set_level(LOG_TRACE); break;
    case 'h': usage(stdout); return 0;
    default: return 2; /* getopt_long gives no other */
    }
    if (rc < 0)
        return 2;
    if (bit >= 0)
        a->set |= 1u << bit;
    return -1;
}

/* Reads tide serve's flags into a.  Returns -1 to go on, else the exit
 * code (0 after --help, 2 on a usage error, which is printed). */
static int serve_parse_args(int argc, char **argv, serve_args_t *a)
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
        {"insecure", no_argument, NULL, OPT_INSECURE},
        {"data", required_argument, NULL, OPT_DATA},
        {"debug", no_argument, NULL, 'D'},
        {"trace", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch, rc;

    memset(a, 0, sizeof *a);
    server_opts_default(&a->flags);
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":a:p:c:P:n:DVh", longopts, NULL)) != -1) {
        if (ch == ':' || ch == '?') {
            fprintf(stderr, ch == ':' ? "tide: option '%s' needs a value\nTry 'tide --help'.\n"
                                      : "tide: unknown option '%s'\nTry 'tide --help'.\n",
                    argv[optind - 1]);
            return 2;
        }
        if ((rc = serve_take_option(a, ch, optarg)) >= 0)
            return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "tide: unexpected argument '%s'\nTry 'tide --help'.\n", argv[optind]);
        return 2;
    }
    return -1;
}

/* The server's settings: defaults, then the entry file's, then flags. */
static void serve_apply_flags(const serve_args_t *a, server_opts_t *o)
{
    const server_opts_t *f = &a->flags;
    if (a->set & (1u << 0)) memcpy(o->host, f->host, sizeof o->host);
    if (a->set & (1u << 1)) o->port = f->port;
    if (a->set & (1u << 2)) memcpy(o->server_name, f->server_name, sizeof o->server_name);
    if (a->set & (1u << 3)) o->max_payload = f->max_payload;
    if (a->set & (1u << 4)) o->max_control_line = f->max_control_line;
    if (a->set & (1u << 5)) o->max_pending = f->max_pending;
    if (a->set & (1u << 6)) o->ping_interval = f->ping_interval;
    if (a->set & (1u << 7)) o->max_pings_out = f->max_pings_out;
    if (a->set & (1u << 8)) o->write_deadline = f->write_deadline;
}

/* True for an address only this machine reaches. */
static int host_is_loopback(const char *host)
{
    return !strncmp(host, "127.", 4) || !strcmp(host, "::1") || !strcmp(host, "localhost");
}

/* Without auth any client may publish, read every event and send admin
 * requests: beyond loopback that takes an explicit --insecure.  0 to go
 * on, else the message is printed. */
static int serve_check_exposure(const serve_args_t *a, const server_opts_t *o, const script_host_t *scripts)
{
    if (a->insecure || host_is_loopback(o->host) || (scripts && script_auth_configured(scripts)))
        return 0;
    fprintf(stderr,
            "tide: refusing to serve on %s:%d without authentication: any client that reaches it could\n"
            "      publish anything, read every event and reload the rules.  Add an auth { } block to\n"
            "      the entry file (users and passwords: docs/security.md; tide passwd makes the hashes),\n"
            "      listen on 127.0.0.1, or pass --insecure to accept anonymous clients on purpose.\n",
            o->host, o->port);
    return -1;
}

/* A server holds a descriptor per client: take all the process may have
 * (the soft limit up to the hard one). */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        log_info("open files: the limit is %llu (was %llu)", (unsigned long long)rl.rlim_cur,
                 (unsigned long long)was);
}

static int cmd_serve(int argc, char **argv)
{
    serve_args_t a;
    server_opts_t o;
    node_t node;
    int rc = serve_parse_args(argc, argv, &a);
    if (rc >= 0)
        return rc;
    rc = 1;
    memset(&node, 0, sizeof node);
    server_opts_default(&o);
    if (a.config) {
        char err[1024], lib[4096];
        node.scripts = script_host_new(a.config, lua_lib_dir(lib, sizeof lib), err, sizeof err);
        if (!node.scripts) {
            fprintf(stderr, "tide: %s\n", err);
            return 1;
        }
        script_host_apply_settings(node.scripts, &o);
    }
    serve_apply_flags(&a, &o);
    if (serve_check_exposure(&a, &o, node.scripts) < 0) {
        node_stop(&node);
        return 1;
    }

    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    {
        char verr[512];
        if (vfs_init(verr, sizeof verr) < 0) {
            fprintf(stderr, "tide: %s\n", verr);
            node_stop(&node);
            return 2;
        }
    }
    if (node.scripts)
        cluster_prepare_threads(); /* before the loop exists: a reload may add cluster { } */
    if (!(node.srv = server_new(&o))) {
        node_stop(&node);
        return 1;
    }
    log_info("Starting tide version %s", TIDE_VERSION);
    log_info("Server id is %s", server_id(node.srv));
    admin_attach(&node);
    if (server_listen(node.srv) < 0)
        goto out;
    if (node.scripts && node_start_scripts(&node, a.data_flag) < 0)
        goto out;
    if (node_start_cluster(&node) < 0)
        goto out;
    admin_attach_cluster(&node);
    if (node_start_http(&node, a.http_flag, a.no_http) < 0)
        goto out;
    if (a.pid_file && write_pid_file(a.pid_file) < 0)
        goto out;
    log_info("Server is ready");
    rc = server_run(node.srv) < 0 ? 1 : 0;
out:
    node_stop(&node);
    if (a.pid_file)
        unlink(a.pid_file);
    return rc;
}

/* tide repl [-c FLOW] [--data DIR] [--listen HOST:PORT] [-D] */
static int cmd_repl(int argc, char **argv)
{
    const char *entry = NULL, *listen_addr = NULL, *data_dir = NULL, *connect_to = NULL;
    char lib[4096];
    cli_creds_t creds;
    memset(&creds, 0, sizeof creds);
    log_set_level(LOG_WARN); /* the prompt is the output; -D brings the log back */
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
            entry = argv[++i];
        else if (!strcmp(argv[i], "--listen") && i + 1 < argc)
            listen_addr = argv[++i];
        else if (!strcmp(argv[i], "--data") && i + 1 < argc)
            data_dir = argv[++i];
        else if (!strcmp(argv[i], "--connect") && i + 1 < argc)
            connect_to = argv[++i];
        else if (!strcmp(argv[i], "--user") && i + 1 < argc)
            creds.user = argv[++i];
        else if (!strcmp(argv[i], "--password") && i + 1 < argc)
            creds.password = argv[++i];
        else if (!strcmp(argv[i], "--token") && i + 1 < argc)
            creds.token = argv[++i];
        else if (!strcmp(argv[i], "--nkey") && i + 1 < argc)
            creds.nkey_file = argv[++i];
        else if (!strcmp(argv[i], "--tls-ca") && i + 1 < argc)
            cli_creds_option(&creds, CLI_OPT_TLS_CA, argv[++i]);
        else if (!strcmp(argv[i], "--tls-cert") && i + 1 < argc)
            cli_creds_option(&creds, CLI_OPT_TLS_CERT, argv[++i]);
        else if (!strcmp(argv[i], "--tls-key") && i + 1 < argc)
            cli_creds_option(&creds, CLI_OPT_TLS_KEY, argv[++i]);
        else if (!strcmp(argv[i], "-D"))
            log_set_level(LOG_DEBUG);
        else if (argv[i][0] != '-' && !entry)
            entry = argv[i];
        else {
            fprintf(stderr, "usage: tide repl [-c flow.lua] [--data DIR] [--listen HOST:PORT] [-D]\n"
                            "       tide repl --connect HOST:PORT [--user U --password P | --token T | "
                            "--nkey SEEDFILE]\n"
                            "              [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    if (connect_to)
        return cli_repl_connect(connect_to, &creds);
    return repl_main(entry, lua_lib_dir(lib, sizeof lib), listen_addr, data_dir);
}

/* tide check: loads each entry file as the server would, without serving. */
static int cmd_check(int argc, char **argv)
{
    char lib[4096];
    int bad = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--replay"))
            return replay_main(argc, argv, cli_print_diff);
    if (argc < 2) {
        fprintf(stderr, "usage: tide check flow.lua [flow.lua...]\n"
                        "       tide check FLOW --replay DATADIR:STREAM [--from SEQ|TIME] [--to SEQ|TIME] [--against FLOW0] [--json]\n");
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

/* tide rules VERB ... (reload, history, rollback, ...) rather than tide rules [--json]:
 * a word that is not an option's value names a verb. */
static int rules_verb_given(int argc, char **argv)
{
    static const char *const verbs[] = {"reload", "history", "rollback", "shadow", "diff", "promote", "stop", "canary"};
    for (int i = 2; i < argc; i++) {
        if (argv[i][0] == '-') {
            i += argv[i][1] && argv[i][1] != '-' && strchr("st", argv[i][1]) && !argv[i][2]; /* -s URL, -t S */
            continue;
        }
        for (size_t k = 0; k < sizeof verbs / sizeof verbs[0]; k++)
            if (!strcmp(argv[i], verbs[k]))
                return 1;
        return 0;
    }
    return 0;
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
    if (!strcmp(cmd, "passwd"))
        return passwd_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "rules") && rules_verb_given(argc, argv)) {
        signal(SIGPIPE, SIG_IGN);
        return cli_ops_main(cmd, argc - 1, argv + 1);
    }
    if (!strcmp(cmd, "pub") || !strcmp(cmd, "sub") || !strcmp(cmd, "req") || !strcmp(cmd, "stats") ||
        !strcmp(cmd, "rules")) {
        signal(SIGPIPE, SIG_IGN);
        return cli_main(cmd, argc - 1, argv + 1);
    }
    if (!strcmp(cmd, "stream") || !strcmp(cmd, "consumer") || !strcmp(cmd, "dlq")) {
        signal(SIGPIPE, SIG_IGN);
        return cli_ops_main(cmd, argc - 1, argv + 1);
    }
    if (!strcmp(cmd, "nkey"))
        return nkey_cli_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "cluster")) {
        signal(SIGPIPE, SIG_IGN);
        return cli_cluster_main(argc - 1, argv + 1);
    }
    if (!strcmp(cmd, "deploy")) {
        char lib[4096];
        signal(SIGPIPE, SIG_IGN);
        return cli_deploy_main(argc - 1, argv + 1, lua_lib_dir(lib, sizeof lib));
    }
    if (cmd[0] == '-')
        fprintf(stderr, "tide: unknown option '%s'\nTry 'tide --help'.\n", cmd);
    else
        fprintf(stderr, "tide: unknown command '%s'\nTry 'tide --help'.\n", cmd);
    return 2;
}
