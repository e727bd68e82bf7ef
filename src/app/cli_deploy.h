/*
 * cli_deploy.h - tide deploy DIR -s URL: the rule files under DIR stored
 * once in the cluster's rules bucket, from where every node loads them
 * (docs/cluster.md, cluster_deploy.h).
 */
#ifndef TIDE_CLI_DEPLOY_H
#define TIDE_CLI_DEPLOY_H

/* tide deploy DIR -s URL [--entry FILE] [--no-check] [--json]
 * [--timeout S] [credentials]; argv[0] is "deploy", lib_dir tide's lua/
 * directory (for the check).  Returns the exit code: 0 when a node stored
 * the revision, 1 on an error (said on stderr), 2 for a usage error. */
int cli_deploy_main(int argc, char **argv, const char *lib_dir);

#endif
