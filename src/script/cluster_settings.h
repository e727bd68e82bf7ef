/*
 * cluster_settings.h - what an entry file's cluster { } block says: the
 * upstream NATS cluster a node joins (docs/cluster.md).  Plain C, read and
 * checked by the script layer (settings_cluster.c), used by app/cluster.c.
 */
#ifndef TIDE_CLUSTER_SETTINGS_H
#define TIDE_CLUSTER_SETTINGS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

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

/* The name that addresses a node in $TIDE.NODE.<name>.> (docs/cluster.md):
 * cs's name (cs may be NULL; its name is one token already), else the
 * host name with every '.', '*', '>' and blank made '_' so that it is one
 * token; copied into out (size bytes, truncated). */
void cluster_settings_address_name(const cluster_settings_t *cs, char *out, size_t size);

/* stream "name" { backend = "jetstream", ... }: a stream the cluster's
 * JetStream keeps, made or bound by the node (app/cluster_js.c). */
#define CLUSTER_STREAMS_MAX 64
#define CLUSTER_STREAM_SUBJECTS 16
typedef struct cluster_stream {
    char name[64];
    char subjects[CLUSTER_STREAM_SUBJECTS][256];
    int nsubjects;
    int replicas;       /* 1 to 5 */
    uint64_t max_msgs;  /* 0: no limit */
    uint64_t max_bytes; /* 0: no limit */
    double max_age;     /* seconds; 0: no limit */
    char where[200];    /* file:line of the declaration */
} cluster_stream_t;

#endif
