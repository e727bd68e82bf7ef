/* cli_cluster.c - tide cluster status; see cli_cluster.h. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <nats/nats.h>

#include "cli_auth.h"
#include "cli_cluster.h"
#include "cluster.h"
#include "nkey.h"

typedef struct status_args {
    const char *server;
    double timeout;
    const char *node; /* --node: only this node's answer; NULL: every node's */
    int json;
    cli_creds_t creds;
} status_args_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: tide cluster status -s URL [--node NAME] [--timeout SECONDS] [--json] [credentials]\n"
               "  asks every tide node of the cluster for its status, through any tide node or\n"
               "  any server of the cluster (URL: nats://host:port or host:port), and prints\n"
               "  the answers that came within the timeout (default 1 s); --node NAME: only\n"
               "  the node called NAME (exit 1 when it does not answer)\n" CLI_CREDS_USAGE);
}

static int parse_args(int argc, char **argv, status_args_t *a)
{
    static const struct option opts[] = {
        {"server", required_argument, NULL, 's'}, {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
        {"node", required_argument, NULL, 'n'},
        CLI_CREDS_LONGOPTS,                       {NULL, 0, NULL, 0},
    };
    int ch;
    memset(a, 0, sizeof *a);
    a->server = "127.0.0.1:4222";
    a->timeout = 1;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "s:t:n:jh", opts, NULL)) != -1) {
        if (cli_creds_option(&a->creds, ch, optarg))
            continue;
        if (ch == 's')
            a->server = optarg;
        else if (ch == 't')
            a->timeout = atof(optarg);
        else if (ch == 'j')
            a->json = 1;
        else if (ch == 'n')
            a->node = optarg;
        else if (ch == 'h')
            return usage(stdout), 0;
        else
            return usage(stderr), 2;
    }
    if (optind != argc || !(a->timeout > 0 && a->timeout <= 60) || (a->node && !a->node[0]))
        return usage(stderr), 2;
    return -1;
}

/* The nkey seed file's public key, for libnats. */
static int seed_public(const char *file, char *pub, size_t n)
{
    unsigned char seed[NKEY_KEY_LEN], raw[NKEY_KEY_LEN];
    char text[4096];
    size_t len = 0;
    FILE *f = fopen(file, "r");
    int rc = -1;
    if (f) {
        len = fread(text, 1, sizeof text - 1, f);
        fclose(f);
    }
    if (f && nkey_seed_find(text, len, seed) == 0 && nkey_seed_public(seed, raw) == 0 &&
        nkey_public_encode(raw, pub, n) == 0)
        rc = 0;
    memset(seed, 0, sizeof seed);
    memset(text, 0, sizeof text);
    return rc;
}

natsStatus cli_cluster_connect(const char *server, cli_creds_t *cr, natsConnection **nc)
{
    natsOptions *o = NULL;
    char url[600], pub[128];
    const char *hostport = cli_creds_from_url(cr, server);
    natsStatus s = natsOptions_Create(&o);
    snprintf(url, sizeof url, "%s://%s", cr->tls ? "tls" : "nats", hostport);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, url);
    if (s == NATS_OK && cr->user)
        s = natsOptions_SetUserInfo(o, cr->user, cr->password ? cr->password : "");
    if (s == NATS_OK && cr->token)
        s = natsOptions_SetToken(o, cr->token);
    if (s == NATS_OK && cr->nkey_file)
        s = seed_public(cr->nkey_file, pub, sizeof pub) < 0 ? NATS_INVALID_ARG
                                                             : natsOptions_SetNKeyFromSeed(o, pub, cr->nkey_file);
    if (s == NATS_OK && cr->tls)
        s = natsOptions_SetSecure(o, true);
    if (s == NATS_OK && cr->tls_ca)
        s = natsOptions_LoadCATrustedCertificates(o, cr->tls_ca);
    if (s == NATS_OK && cr->tls_cert)
        s = natsOptions_LoadCertificatesChain(o, cr->tls_cert, cr->tls_key);
    if (s == NATS_OK)
        s = natsConnection_Connect(nc, o);
    if (s != NATS_OK)
        fprintf(stderr, "tide: cannot reach %s: %s\n", server, nats_GetLastError(NULL));
    natsOptions_Destroy(o);
    return s;
}

static int by_name(const void *x, const void *y)
{
    const cJSON *a = *(cJSON *const *)x, *b = *(cJSON *const *)y;
    const char *na = cJSON_GetStringValue(cJSON_GetObjectItem(a, "name"));
    const char *nb = cJSON_GetStringValue(cJSON_GetObjectItem(b, "name"));
    return strcmp(na ? na : "", nb ? nb : "");
}

static const char *text_of(const cJSON *o, const char *key)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(o, key));
    return s && s[0] ? s : "-";
}

/* One line per node, sorted by name. */
static void print_table(cJSON **nodes, int n)
{
    qsort(nodes, (size_t)n, sizeof *nodes, by_name);
    printf("%-16s %-22s %-28s %-6s %-8s %6s %9s %7s  %s\n", "NAME", "ADDRESS", "UPSTREAM", "RULES", "STATE", "CONNS",
           "EVENTS/S", "LAG", "LAST ERROR");
    for (int i = 0; i < n; i++) {
        const cJSON *o = nodes[i], *rules = cJSON_GetObjectItem(o, "rules");
        const char *state = text_of(rules, "state"), *deployed = text_of(o, "rules_error");
        const cJSON *lag = cJSON_GetObjectItem(o, "handler_lag"), *rev = cJSON_GetObjectItem(o, "rules_revision");
        int failed = strcmp(state, "ok") && strcmp(state, "-");
        char rev_text[32];
        /* The deployed revision when the node has one, else "-" (its own files alone). */
        snprintf(rev_text, sizeof rev_text, cJSON_IsNumber(rev) && rev->valuedouble > 0 ? "%.0f" : "-",
                 cJSON_IsNumber(rev) ? rev->valuedouble : 0);
        printf("%-16s %-22s %-28s %-6s %-8s %6.0f %9.1f %7.0f  %s\n", text_of(o, "name"), text_of(o, "address"),
               cJSON_IsTrue(cJSON_GetObjectItem(o, "connected")) ? text_of(o, "upstream") : "(not connected)",
               rev_text, failed || !strcmp(text_of(o, "rules_state"), "failed") ? "failed" : "ok",
               cJSON_GetNumberValue(cJSON_GetObjectItem(o, "connections")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(o, "events_per_s")), cJSON_IsNumber(lag) ? lag->valuedouble : 0,
               text_of(o, "last_error"));
        if (failed)
            printf("%-16s rules: %s\n", "", state);
        if (strcmp(deployed, "-"))
            printf("%-16s rules: %s\n", "", deployed);
    }
}

/* True when o is the answer of the node called name (NULL: any node). */
static int node_named(const cJSON *o, const char *name)
{
    const char *own = cJSON_GetStringValue(cJSON_GetObjectItem(o, "name"));
    return !name || (own && !strcmp(own, name));
}

/* Sends the request and gathers what answers within the timeout: every
 * node's answer, or (name not NULL) the first of the node called name. */
static int gather(natsConnection *nc, double timeout, const char *name, cJSON ***out)
{
    natsSubscription *sub = NULL;
    natsMsg *m = NULL;
    char inbox[64];
    cJSON **nodes = NULL;
    int n = 0;
    int64_t deadline = nats_Now() + (int64_t)(timeout * 1000);
    snprintf(inbox, sizeof inbox, "_INBOX.tide-status.%lld", (long long)nats_NowInNanoSeconds());
    if (natsConnection_SubscribeSync(&sub, nc, inbox) != NATS_OK ||
        natsConnection_PublishRequest(nc, CLUSTER_STATUS_SUBJECT, inbox, "", 0) != NATS_OK)
        goto done;
    for (int64_t left; (left = deadline - nats_Now()) > 0;) {
        if (natsSubscription_NextMsg(&m, sub, left) != NATS_OK)
            break;
        cJSON *o = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
        cJSON **more = o && node_named(o, name) ? realloc(nodes, (size_t)(n + 1) * sizeof *nodes) : NULL;
        natsMsg_Destroy(m);
        if (!more) {
            cJSON_Delete(o);
            continue;
        }
        nodes = more;
        nodes[n++] = o;
        if (name)
            break;
    }
done:
    natsSubscription_Destroy(sub);
    *out = nodes;
    return n;
}

int cli_cluster_main(int argc, char **argv)
{
    status_args_t a;
    natsConnection *nc = NULL;
    cJSON **nodes = NULL;
    int n = 0, rc;
    if (argc < 2 || strcmp(argv[1], "status")) {
        usage(argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr);
        return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 2;
    }
    if ((rc = parse_args(argc - 1, argv + 1, &a)) >= 0)
        return rc;
    rc = 1;
    if (cli_cluster_connect(a.server, &a.creds, &nc) != NATS_OK)
        goto out;
    n = gather(nc, a.timeout, a.node, &nodes);
    if (n == 0 && a.node) {
        fprintf(stderr, "tide: no tide node called %s answered on %s within %.1f s\n", a.node, CLUSTER_STATUS_SUBJECT,
                a.timeout);
        goto out;
    }
    if (n == 0) {
        fprintf(stderr, "tide: no tide node answered on %s within %.1f s\n", CLUSTER_STATUS_SUBJECT, a.timeout);
        goto out;
    }
    if (a.json) {
        cJSON *arr = cJSON_CreateArray();
        qsort(nodes, (size_t)n, sizeof *nodes, by_name);
        for (int i = 0; i < n; i++) { /* the array takes them */
            if (arr)
                cJSON_AddItemToArray(arr, nodes[i]);
            else
                cJSON_Delete(nodes[i]);
            nodes[i] = NULL;
        }
        char *s = arr ? cJSON_Print(arr) : NULL;
        if (s)
            printf("%s\n", s);
        cJSON_free(s);
        cJSON_Delete(arr);
    } else {
        print_table(nodes, n);
    }
    rc = 0;
out:
    for (int i = 0; i < n; i++)
        cJSON_Delete(nodes[i]);
    free(nodes);
    natsConnection_Destroy(nc);
    nats_Close();
    return rc;
}
