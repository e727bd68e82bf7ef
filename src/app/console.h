/*
 * console.h - what the web console shows, as JSON for /api/ (docs/console.md):
 * the flow of the loaded rules, streams, consumers and dead-letter subjects
 * as a graph, and the rate of events on each of its edges.
 *
 *   /api/flow  -> {"generation":n,"nodes":[{"id","kind","label",...}],
 *                  "edges":[{"from","to","rate"}]}
 *   /api/rates -> {"edges":[{"from","to","rate"}]}
 *
 * No event is counted for the console: an edge's rate is the rate of a
 * counter the pipeline and the store keep anyway (a rule's calls and
 * errors, a stream's last sequence, a consumer's deliveries and dead
 * letters), read once a second while someone asks (console_tick) and
 * compared over the last few seconds.
 */
#ifndef TIDE_CONSOLE_H
#define TIDE_CONSOLE_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "node.h"

typedef struct console console_t;

/* A console over the node's parts (which it must not outlive).  NULL when
 * out of memory. */
console_t *console_new(node_t *node);

/* Frees c and its samples; c may be NULL. */
void console_free(console_t *c);

/* Takes a sample of the counters, if /api/ was asked in the last
 * CONSOLE_IDLE_SECONDS: call once a second, on the loop. */
void console_tick(console_t *c);

/* The /api/flow document, malloc'd (caller frees); NULL when out of
 * memory.  Marks the console as in use. */
char *console_flow_json(console_t *c, size_t *len);

/* The /api/rates document, malloc'd (caller frees); NULL when out of
 * memory.  Marks the console as in use. */
char *console_rates_json(console_t *c, size_t *len);

/* {"generation":n,"reloads":[{"time","generation","ok","error"}]}: the
 * reloads since the console started (the last CONSOLE_RELOADS), the state
 * that served then first.  Malloc'd (caller frees); NULL when out of memory. */
char *console_reloads_json(console_t *c, size_t *len);

/* {"streams":[...],"consumers":[...],"dead_letter_streams":[names]}: the
 * JSON of /v1/streams and /v1/consumers, and the streams that store dead
 * letters (a consumer's, or the scripts').  Malloc'd; NULL when out of memory. */
char *console_streams_json(console_t *c, size_t *len);

/* Runs the streams' admin verb ("DLQ.SHOW", ...) with payload as a
 * $TIDE.ADMIN.<verb> request would, and returns its JSON answer, malloc'd
 * (caller frees), with its length in *len; NULL without streams. */
char *console_admin(console_t *c, const char *verb, const char *payload, size_t plen, size_t *len);

/* Runs the rule-history verb ("RULES.HISTORY", "RULES.DIFF",
 * "RULES.PROMOTE", "RULES.STOP", "RULES.ROLLBACK", "RULES.SHADOW",
 * "RULES.CANARY"; admin.h) as user (NULL
 * for none) with payload, and returns its JSON answer, malloc'd (caller
 * frees), with its length in *len; NULL for another verb or out of memory. */
char *console_rules(console_t *c, const char *verb, const char *user, const char *payload, size_t plen,
                    size_t *len);

/*
 * The payload of RULES.SHADOW or RULES.CANARY (what is "shadow" or
 * "canary") for the page's request doc, checked: a shadow's {"path"}; a
 * canary's {"path","percent","key","max_error_rate","window"}, or
 * {"percent"} alone for the running canary's share (100 finishes it).  A
 * relative path is taken from the entry file's directory.  Returns the
 * payload, malloc'd (caller frees), or NULL with why in err (the request
 * is bad: 400) — nothing is started either way.
 */
char *console_candidate_request(console_t *c, const char *what, const cJSON *doc, char *err, size_t errsz);
/* Longest canary key (a dotted path into the event). */
#define CONSOLE_CANARY_KEY_MAX 127

/* {"where","line","first_line","lines":[...]}: the lines around rule
 * number rule (its place in /v1/rules) in the file it was loaded from, as
 * the file is now ("error" instead of "lines" when it cannot be read).
 * Malloc'd (caller frees); NULL when there is no such rule. */
char *console_source_json(console_t *c, int rule, size_t *len);
#define CONSOLE_SOURCE_BEFORE 3
#define CONSOLE_SOURCE_AFTER 12
#define CONSOLE_SOURCE_LINE 512

/* Sampling stops this long after the last /api/ request. */
#define CONSOLE_IDLE_SECONDS 60
/* Samples kept: a rate spans the last CONSOLE_SAMPLES - 1 seconds. */
#define CONSOLE_SAMPLES 4
/* Lines of reload history kept. */
#define CONSOLE_RELOADS 64

#endif
