/*
 * history.h - the rule history: every revision of the rules a node loaded,
 * kept in <data dir>/rules/ so that it survives restarts and an earlier
 * revision can be made live again (tide rules history, tide rules rollback).
 *
 * A revision is the content of every file a state loaded (the entry file
 * and what it required), hashed; loading the same content again (a touch,
 * a restart) is not a new revision.  The newest HISTORY_MAX revisions are
 * kept, each with its files' text (those recorded since start in memory
 * too, the older ones read back when a rollback needs them).
 */
#ifndef TIDE_HISTORY_H
#define TIDE_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#include "script.h"

#define HISTORY_MAX 64

typedef struct history history_t;

/*
 * Opens (creating it) <data_dir>/rules/, reads the history kept there and
 * records the rules h runs now (data_dir NULL: a history in memory only,
 * gone with the process); from then on every reload of h that swaps
 * a new state in is recorded.  NULL (logged) when the directory cannot be
 * made or written.  The caller frees with history_free before h.
 */
history_t *history_open(const char *data_dir, script_host_t *h);

/* Stops recording and frees hi (NULL is fine); the files stay. */
void history_free(history_t *hi);

/* Who asks for the reloads until the next call (an admin identity); ""
 * or NULL: the node itself.  Copied. */
void history_set_by(history_t *hi, const char *by);

/* {"live":REV,"revisions":[{"rev","hash","files","at","by","state",
 * "reason","cause"}, ...]} newest first, malloc'd (caller frees), its
 * length in *len; NULL when out of memory. */
char *history_json(const history_t *hi, size_t *len);

/*
 * Makes revision rev live again (0: the newest one before the live one),
 * loaded from its stored files; the disk is not touched, so the next file
 * change or restart loads the files again.  by: who asks.  0 with the
 * revisions in *live and *from, or -1 with the reason in err.
 */
int history_rollback(history_t *hi, uint64_t rev, const char *by, uint64_t *live, uint64_t *from, char *err,
                     size_t errsz);

#endif
