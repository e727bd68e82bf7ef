/*
 * cluster_settings.h - what an entry file's cluster { } block says: the
 * upstream NATS cluster a node joins (docs/cluster.md).  Plain C, read and
 * checked by the script layer (settings_cluster.c), used by app/cluster.c.
 */
#ifndef TIDE_CLUSTER_SETTINGS_H
#define TIDE_CLUSTER_SETTINGS_H

#include <limits.h>

#define CLUSTER_UPSTREAM_MAX 16

typedef struct cluster_settings {
    char upstream[CLUSTER_UPSTREAM_MAX][256]; /* URLs, each with a scheme (nats:// added when missing) */
    int nupstream;
    char name[128];      /* this node's name; "" for the host name */
    char user[128];      /* with password; "" when not said */
    char password[256];
    char token[256];
    char nkey[PATH_MAX]; /* the seed file, resolved beside the entry file */
    char tls_ca[PATH_MAX], tls_cert[PATH_MAX], tls_key[PATH_MAX]; /* tls = { ... }, resolved */
    int tls;             /* tls = { ... } was said */
} cluster_settings_t;

#endif
