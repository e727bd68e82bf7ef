/*
 * authq.h - bcrypt checks off the event loop's thread.
 *
 * A bcrypt check costs about 100 ms of CPU at cost 11; done on the loop it
 * would stall every connected client for that long per login.  The loop
 * submits a job (the stored hash and the password given, copied) to a few
 * checker threads and goes on; the answer comes back through an eventfd
 * the loop watches, and done() runs on the loop's thread.  The same way
 * the stream log has its fsyncs done (slog.c).
 */
#ifndef TIDE_AUTHQ_H
#define TIDE_AUTHQ_H

struct event_base;

typedef struct authq authq_t;

typedef struct authq_job {
    char *stored;  /* the hash to check against (copied) */
    char *given;   /* the password the client sent (copied) */
    char *name;    /* the user it is given for (copied), NULL for the token */
    int ok;        /* the answer, written by a checker thread */
    void *owner;   /* the loop's: whom the answer is for (NULL: gone, drop it) */
    struct authq_job *next;
} authq_job_t;

/* Starts nthreads checker threads whose answers come back on base:
 * done(ctx, job) on the loop's thread for every finished job, which then
 * belongs to the caller (free with authq_job_free).  NULL on failure. */
authq_t *authq_new(struct event_base *base, int nthreads, void (*done)(void *ctx, authq_job_t *job), void *ctx);

/* Stops the threads (after the job each is checking) and frees the queue
 * and the jobs still in it, answered or not.  q may be NULL. */
void authq_free(authq_t *q);

/* A job for stored and given, claimed for user name (may be NULL), all
 * copied, owned by owner; NULL when out of memory. */
authq_job_t *authq_job_new(const char *stored, const char *given, const char *name, void *owner);
void authq_job_free(authq_job_t *job);

/* Queues job (the queue owns it until done() hands it back). */
void authq_submit(authq_t *q, authq_job_t *job);

/* The owner is going: its job (queued or being checked) is dropped when
 * done, without calling done().  Loop thread only. */
void authq_forget(authq_t *q, authq_job_t *job);

#endif
