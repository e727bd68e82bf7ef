/* authq.c - see authq.h. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "auth.h"
#include "authq.h"
#include "log.h"

#define AUTHQ_MAX_THREADS 8

struct authq {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    authq_job_t *todo, *todo_tail; /* waiting for a thread */
    authq_job_t *done_list;        /* answered, for the loop */
    int stop;
    pthread_t th[AUTHQ_MAX_THREADS];
    int nthreads;
    int efd;
    struct event *ev;
    void (*done)(void *ctx, authq_job_t *job);
    void *ctx;
};

authq_job_t *authq_job_new(const char *stored, const char *given, const char *name, void *owner)
{
    authq_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->stored = strdup(stored);
    j->given = strdup(given);
    j->name = name ? strdup(name) : NULL;
    j->owner = owner;
    if (!j->stored || !j->given || (name && !j->name)) {
        authq_job_free(j);
        return NULL;
    }
    return j;
}

void authq_job_free(authq_job_t *j)
{
    if (!j)
        return;
    if (j->given) /* the password does not linger in freed memory */
        explicit_bzero(j->given, strlen(j->given));
    free(j->stored);
    free(j->given);
    free(j->name);
    free(j);
}

static void *checker_main(void *arg)
{
    authq_t *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->stop && !q->todo)
            pthread_cond_wait(&q->cv, &q->mu);
        if (q->stop)
            break;
        authq_job_t *j = q->todo;
        q->todo = j->next;
        if (!q->todo)
            q->todo_tail = NULL;
        pthread_mutex_unlock(&q->mu);
        /* The job's strings are not touched by the loop while it is here. */
        int ok = auth_password_ok(j->stored, j->given);
        pthread_mutex_lock(&q->mu);
        j->ok = ok;
        j->next = q->done_list;
        q->done_list = j;
        uint64_t one = 1;
        if (write(q->efd, &one, sizeof one) < 0) {
            /* the counter is full: the loop has a wakeup pending anyway */
        }
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* The loop's side: hands every answered job to done(), oldest first. */
static void on_answers(evutil_socket_t fd, short what, void *arg)
{
    authq_t *q = arg;
    uint64_t v;
    (void)what;
    if (read(fd, &v, sizeof v) < 0 && errno != EAGAIN)
        log_warn("auth checker: reading its eventfd: %s", strerror(errno));
    pthread_mutex_lock(&q->mu);
    authq_job_t *list = q->done_list;
    q->done_list = NULL;
    pthread_mutex_unlock(&q->mu);
    authq_job_t *rev = NULL;
    while (list) {
        authq_job_t *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        authq_job_t *j = rev;
        rev = j->next;
        j->next = NULL;
        if (j->owner)
            q->done(q->ctx, j);
        else
            authq_job_free(j);
    }
}

authq_t *authq_new(struct event_base *base, int nthreads, void (*done)(void *ctx, authq_job_t *job), void *ctx)
{
    authq_t *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->efd = -1;
    q->done = done;
    q->ctx = ctx;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    q->ev = q->efd >= 0 ? event_new(base, q->efd, EV_READ | EV_PERSIST, on_answers, q) : NULL;
    if (!q->ev || event_add(q->ev, NULL) < 0)
        goto fail;
    if (nthreads < 1)
        nthreads = 1;
    if (nthreads > AUTHQ_MAX_THREADS)
        nthreads = AUTHQ_MAX_THREADS;
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&q->th[i], NULL, checker_main, q) != 0)
            goto fail;
        q->nthreads++;
    }
    return q;
fail:
    log_error("cannot start the password checker: %s", strerror(errno));
    authq_free(q);
    return NULL;
}

static void free_list(authq_job_t *j)
{
    while (j) {
        authq_job_t *n = j->next;
        authq_job_free(j);
        j = n;
    }
}

void authq_free(authq_t *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    for (int i = 0; i < q->nthreads; i++)
        pthread_join(q->th[i], NULL);
    free_list(q->todo);
    free_list(q->done_list);
    if (q->ev)
        event_free(q->ev);
    if (q->efd >= 0)
        close(q->efd);
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

void authq_submit(authq_t *q, authq_job_t *job)
{
    pthread_mutex_lock(&q->mu);
    job->next = NULL;
    if (q->todo_tail)
        q->todo_tail->next = job;
    else
        q->todo = job;
    q->todo_tail = job;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void authq_forget(authq_t *q, authq_job_t *job)
{
    pthread_mutex_lock(&q->mu);
    job->owner = NULL;
    /* Not started yet: no thread spends a check on it. */
    for (authq_job_t **p = &q->todo, *prev = NULL; *p; prev = *p, p = &(*p)->next) {
        if (*p != job)
            continue;
        *p = job->next;
        if (q->todo_tail == job)
            q->todo_tail = prev;
        authq_job_free(job);
        break;
    }
    pthread_mutex_unlock(&q->mu);
}
