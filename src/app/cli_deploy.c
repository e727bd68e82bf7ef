/* cli_deploy.c - tide deploy; see cli_deploy.h. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <nats/nats.h>

#include "cli_auth.h"
#include "cli_cluster.h"
#include "cli_deploy.h"
#include "cluster_deploy.h"
#include "log.h"
#include "script.h"

typedef struct deploy_args {
    const char *dir, *server, *entry;
    long long rollback; /* --rollback REV, else 0 */
    double timeout;
    int json, no_check;
    cli_creds_t creds;
} deploy_args_t;

/* Room the node needs beside the files when it stores them (hash, by, at). */
#define DEPLOY_OVERHEAD 1024

static void usage(FILE *f)
{
    fprintf(f, "usage: tide deploy DIR -s URL [--entry FILE] [--no-check] [--json] [--timeout SECONDS] [credentials]\n"
               "       tide deploy --rollback REV -s URL [--json] [--timeout SECONDS] [credentials]\n"
               "  stores the *.lua files under DIR (or, with --rollback, the files of revision REV)\n"
               "  as the cluster's next revision of the rules, which every tide node of the\n"
               "  cluster loads after its own entry file;\n"
               "  URL: nats://host:port or host:port of any tide node or server of the cluster;\n"
               "  --entry: the file that runs (default tide.lua); the rules are checked here first\n"
               "  unless --no-check\n" CLI_CREDS_USAGE);
}

static int parse_args(int argc, char **argv, deploy_args_t *a)
{
    static const struct option opts[] = {
        {"server", required_argument, NULL, 's'}, {"entry", required_argument, NULL, 'e'},
        {"timeout", required_argument, NULL, 't'}, {"json", no_argument, NULL, 'j'},
        {"no-check", no_argument, NULL, 'n'},     {"help", no_argument, NULL, 'h'},
        {"rollback", required_argument, NULL, 'r'},
        CLI_CREDS_LONGOPTS,                       {NULL, 0, NULL, 0},
    };
    int ch;
    memset(a, 0, sizeof *a);
    a->server = "127.0.0.1:4222";
    a->entry = "tide.lua";
    a->timeout = 10;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "s:e:t:jh", opts, NULL)) != -1) {
        if (cli_creds_option(&a->creds, ch, optarg))
            continue;
        if (ch == 's')
            a->server = optarg;
        else if (ch == 'e')
            a->entry = optarg;
        else if (ch == 't')
            a->timeout = atof(optarg);
        else if (ch == 'j')
            a->json = 1;
        else if (ch == 'n')
            a->no_check = 1;
        else if (ch == 'r')
            a->rollback = atoll(optarg);
        else if (ch == 'h')
            return usage(stdout), 0;
        else
            return usage(stderr), 2;
    }
    if (optind != argc - !a->rollback || !(a->timeout > 0 && a->timeout <= 600) || a->rollback < 0)
        return usage(stderr), 2;
    a->dir = a->rollback ? NULL : argv[optind];
    return -1;
}

static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *b = NULL;
    long n;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (b = malloc((size_t)n + 1)) && fread(b, 1, (size_t)n, f) == (size_t)n) {
        b[n] = '\0';
        *len = (size_t)n;
    } else {
        free(b);
        b = NULL;
    }
    fclose(f);
    return b;
}

/* Adds the *.lua files under root/rel (rel "" for root) to files, by
 * relative path, in name order.  0, or -1 after saying why on stderr. */
static int collect(const char *root, const char *rel, cJSON *files, size_t *total)
{
    char dir[PATH_MAX], path[PATH_MAX + 300], sub[PATH_MAX + 300];
    struct dirent **list = NULL;
    int n, rc = 0;
    snprintf(dir, sizeof dir, "%s%s%s", root, rel[0] ? "/" : "", rel);
    if ((n = scandir(dir, &list, NULL, alphasort)) < 0) {
        fprintf(stderr, "tide deploy: cannot read %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        const char *name = list[i]->d_name;
        struct stat st;
        size_t nl = strlen(name), len = 0;
        snprintf(path, sizeof path, "%s/%s", dir, name);
        snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", name);
        if (name[0] == '.' || lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            rc = collect(root, sub, files, total);
        } else if (S_ISREG(st.st_mode) && nl > 4 && !strcmp(name + nl - 4, ".lua")) {
            char *text = read_whole(path, &len);
            if (!text || strlen(text) != len) {
                fprintf(stderr, "tide deploy: cannot read %s%s\n", path, text ? ": it holds a NUL byte" : "");
                rc = -1;
            } else if (!cJSON_AddStringToObject(files, sub, text)) {
                rc = -1;
            }
            *total += len;
            free(text);
        }
    }
    for (int i = 0; i < n; i++)
        free(list[i]);
    free(list);
    return rc;
}

/* Loads the bundle under dir alone, as a node would after its own entry
 * file (node settings refused).  0, or -1 after printing the error. */
static int check_bundle(const char *dir, const char *entry, const char *lib_dir)
{
    char err[1024], real[PATH_MAX], path[PATH_MAX + 300];
    int rc = -1;
    script_host_t *h = script_host_new(NULL, lib_dir, err, sizeof err);
    if (!h || !realpath(dir, real))
        goto fail;
    snprintf(path, sizeof path, "%s/%s", real, entry);
    if (script_set_deployed(h, path, real, dir) < 0) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    log_set_level(LOG_FATAL); /* the reload's own log lines: the error is said below */
    rc = script_reload(h, "tide deploy check", err, sizeof err);
    log_set_level(LOG_INFO);
fail:
    if (rc < 0)
        fprintf(stderr, "tide deploy: the rules do not load (nothing deployed; --no-check skips this): %s\n", err);
    script_host_free(h);
    return rc;
}

/* The request: {"entry","files","by"}, printed, or NULL (said why). */
static char *build_request(const deploy_args_t *a, size_t *len, int *nfiles)
{
    cJSON *o = cJSON_CreateObject(), *files = cJSON_AddObjectToObject(o, "files");
    char err[400], host[128] = "", by[400];
    const char *user = a->creds.user ? a->creds.user : getenv("USER");
    size_t total = 0;
    char *text = NULL;
    gethostname(host, sizeof host - 1);
    snprintf(by, sizeof by, "%s%s%s", user && user[0] ? user : "", user && user[0] && host[0] ? "@" : "", host);
    if (!o || !files || !cJSON_AddStringToObject(o, "by", by))
        goto done;
    if (a->rollback) {
        cJSON_DeleteItemFromObject(o, "files");
        if (cJSON_AddNumberToObject(o, "rollback", (double)a->rollback) && (text = cJSON_PrintUnformatted(o)))
            *len = strlen(text);
        goto done;
    }
    if (collect(a->dir, "", files, &total) < 0)
        goto done;
    cJSON_AddStringToObject(o, "entry", a->entry);
    *nfiles = cJSON_GetArraySize(files);
    if (!cJSON_GetObjectItemCaseSensitive(files, a->entry)) {
        fprintf(stderr, "tide deploy: no entry file %s in %s (name it with --entry)\n", a->entry, a->dir);
        goto done;
    }
    if (cluster_deploy_check_bundle(o, err, sizeof err) < 0) {
        fprintf(stderr, "tide deploy: %s\n", err);
        goto done;
    }
    if ((text = cJSON_PrintUnformatted(o)))
        *len = strlen(text);
done:
    cJSON_Delete(o);
    return text;
}

/* Sends the request and prints the answer.  The exit code. */
static int send_request(const deploy_args_t *a, natsConnection *nc, const char *text, size_t len, int nfiles)
{
    natsMsg *reply = NULL;
    cJSON *ans = NULL;
    int rc = 1;
    int64_t max = natsConnection_GetMaxPayload(nc);
    if ((int64_t)len + DEPLOY_OVERHEAD > max) {
        fprintf(stderr, "tide deploy: the bundle is %zu bytes; the cluster takes at most %lld in one message "
                        "(max_payload %lld, less %d for the node's additions)\n",
                len, (long long)(max - DEPLOY_OVERHEAD), (long long)max, DEPLOY_OVERHEAD);
        return 1;
    }
    natsStatus s = natsConnection_Request(&reply, nc, CLUSTER_DEPLOY_SUBJECT, text, (int)len,
                                          (int64_t)(a->timeout * 1000));
    if (s == NATS_NO_RESPONDERS || s == NATS_TIMEOUT) {
        fprintf(stderr, "tide deploy: no tide node of the cluster answered on %s%s\n", CLUSTER_DEPLOY_SUBJECT,
                s == NATS_TIMEOUT ? " in time" : " (is it a cluster of tide nodes?)");
        goto done;
    }
    if (s != NATS_OK || !(ans = cJSON_ParseWithLength(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply)))) {
        fprintf(stderr, "tide deploy: %s\n", s != NATS_OK ? natsStatus_GetText(s) : "the answer is not JSON");
        goto done;
    }
    const char *error = cJSON_GetStringValue(cJSON_GetObjectItem(ans, "error"));
    if (a->json)
        printf("%.*s\n", natsMsg_GetDataLength(reply), natsMsg_GetData(reply));
    else if (!error && a->rollback)
        printf("deployed rev %.0f (hash %s): the files of rev %lld again\n",
               cJSON_GetNumberValue(cJSON_GetObjectItem(ans, "rev")),
               cJSON_GetStringValue(cJSON_GetObjectItem(ans, "hash")), a->rollback);
    else if (!error)
        printf("deployed rev %.0f (hash %s): %d file%s from %s, entry %s\n",
               cJSON_GetNumberValue(cJSON_GetObjectItem(ans, "rev")),
               cJSON_GetStringValue(cJSON_GetObjectItem(ans, "hash")), nfiles, nfiles == 1 ? "" : "s", a->dir,
               a->entry);
    if (error)
        fprintf(stderr, "tide deploy: %s\n", error);
    rc = error ? 1 : 0;
done:
    cJSON_Delete(ans);
    natsMsg_Destroy(reply);
    return rc;
}

int cli_deploy_main(int argc, char **argv, const char *lib_dir)
{
    deploy_args_t a;
    natsConnection *nc = NULL;
    char *text = NULL;
    size_t len = 0;
    int nfiles = 0, rc;
    if ((rc = parse_args(argc, argv, &a)) >= 0)
        return rc;
    rc = 1;
    if (!(text = build_request(&a, &len, &nfiles)))
        goto out;
    if (!a.rollback && !a.no_check && check_bundle(a.dir, a.entry, lib_dir) < 0)
        goto out;
    if (cli_cluster_connect(a.server, &a.creds, &nc) != NATS_OK)
        goto out;
    rc = send_request(&a, nc, text, len, nfiles);
out:
    cJSON_free(text);
    natsConnection_Destroy(nc);
    nats_Close();
    return rc;
}
