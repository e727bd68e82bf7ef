/*
 * cli_cluster.h - tide cluster status: every node's status, gathered by a
 * request on $TIDE.CLUSTER.STATUS that every node of a cluster answers
 * (docs/cluster.md).
 */
#ifndef TIDE_CLI_CLUSTER_H
#define TIDE_CLI_CLUSTER_H

#include <nats/nats.h>

#include "cli_auth.h"

/* tide cluster status -s URL [--timeout S] [--json] [credentials]; argv[0]
 * is "cluster".  Returns the exit code: 0 when some node answered, 1 when
 * none did or the server cannot be reached, 2 for a usage error. */
int cli_cluster_main(int argc, char **argv);

/* Connects to server (nats://host:port, tls://host:port or host:port, any
 * tide node or server of the cluster) with cr's credentials and TLS; says
 * why on stderr when it cannot.  The caller destroys *nc and calls
 * nats_Close. */
natsStatus cli_cluster_connect(const char *server, cli_creds_t *cr, natsConnection **nc);

#endif
