/*
 * cli_cluster.h - tide cluster status: every node's status, gathered by a
 * request on $TIDE.CLUSTER.STATUS that every node of a cluster answers
 * (docs/cluster.md).
 */
#ifndef TIDE_CLI_CLUSTER_H
#define TIDE_CLI_CLUSTER_H

/* tide cluster status -s URL [--timeout S] [--json] [credentials]; argv[0]
 * is "cluster".  Returns the exit code: 0 when some node answered, 1 when
 * none did or the server cannot be reached, 2 for a usage error. */
int cli_cluster_main(int argc, char **argv);

#endif
