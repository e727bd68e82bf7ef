/*
 * admin.h - the admin surface: requests on $TIDE.ADMIN.<VERB>, answered as
 * JSON on the request's reply subject (tide reload, tide stats, tide
 * rules, tide repl --connect, and the streams' verbs).
 */
#ifndef TIDE_ADMIN_H
#define TIDE_ADMIN_H

#include <stddef.h>

#include "node.h"

/* Registers the node's admin hook with its server: from now on every
 * $TIDE.ADMIN.> request is answered from the verbs in admin.c, and every
 * $TIDE.NODE.<name>.> request is answered here (this node's name) or
 * sent to the cluster.  The node
 * must outlive its server's loop. */
void admin_attach(node_t *n);

/* The node's counters as JSON (server, and scripts when loaded):
 * malloc'd, caller frees; NULL when out of memory.  $TIDE.ADMIN.STATS and
 * GET /v1/stats answer this. */
char *admin_stats_json(node_t *n, size_t *len);

/* Answers the rule-history verb ("RULES.HISTORY", "RULES.DIFF",
 * "RULES.PROMOTE", "RULES.STOP", "RULES.ROLLBACK", "RULES.SHADOW" or
 * "RULES.CANARY") for a caller that is
 * not a connection (the HTTP console), as user (NULL or "" for none; it is
 * recorded as who made the change), on m's reply subject.  0, or -1 for
 * any other verb (nothing answered). */
int admin_rules_request(node_t *n, const char *user, const char *verb, const proto_msg_t *m);

/* Registers the node's hook with its cluster (n->cluster; none: nothing):
 * from now on a request on $TIDE.NODE.<this node>.<rest> from the cluster
 * is answered as this node answers $TIDE.<rest> (the admin verbs but the
 * remote prompt, and the cluster status), with who asked, as the node it
 * entered through said, recorded in the rule history. */
void admin_attach_cluster(node_t *n);

#endif
