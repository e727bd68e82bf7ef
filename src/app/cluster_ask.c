/* cluster_ask.c - questions to the cluster answered later; see cluster_ask.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_ask.h"
#include "log.h"

typedef struct question {
    struct question *next;
    unsigned token;
    time_t asked; /* 0: not sent, given up at the next tick */
    cluster_answer_fn fn;
    void *ctx;
} question_t;

struct cluster_ask {
    char inbox[128];
    question_t *waiting;
    unsigned next_token;
};

cluster_ask_t *cluster_ask_new(const char *inbox)
{
    cluster_ask_t *a = calloc(1, sizeof *a);
    if (a)
        snprintf(a->inbox, sizeof a->inbox, "%s", inbox);
    return a;
}

void cluster_ask_free(cluster_ask_t *a)
{
    if (!a)
        return;
    while (a->waiting) {
        question_t *q = a->waiting;
        a->waiting = q->next;
        q->fn(q->ctx, NULL);
        free(q);
    }
    free(a);
}

int cluster_ask_send(cluster_ask_t *a, natsConnection *nc, const char *subject, const char *payload, size_t len,
                     cluster_answer_fn fn, void *ctx)
{
    char reply[160];
    question_t *q = calloc(1, sizeof *q);
    if (!q)
        return -1;
    q->token = ++a->next_token;
    q->fn = fn;
    q->ctx = ctx;
    snprintf(reply, sizeof reply, "%s.%u", a->inbox, q->token);
    natsStatus s = natsConnection_PublishRequest(nc, subject, reply, payload, (int)len);
    if (s == NATS_OK)
        q->asked = time(NULL);
    else
        log_warn("cluster: cannot ask %s: %s", subject, natsStatus_GetText(s));
    q->next = a->waiting;
    a->waiting = q;
    return 0;
}

/* Takes the question with token out of the list: it, or NULL. */
static question_t *take(cluster_ask_t *a, unsigned token)
{
    for (question_t **p = &a->waiting; *p; p = &(*p)->next)
        if ((*p)->token == token) {
            question_t *q = *p;
            *p = q->next;
            return q;
        }
    return NULL;
}

void cluster_ask_answer(cluster_ask_t *a, natsMsg *m)
{
    const char *subject = natsMsg_GetSubject(m), *dot = strrchr(subject, '.');
    question_t *q = dot ? take(a, (unsigned)strtoul(dot + 1, NULL, 10)) : NULL;
    if (!q)
        return; /* given up already */
    q->fn(q->ctx, m);
    free(q);
}

void cluster_ask_tick(cluster_ask_t *a)
{
    time_t now = time(NULL);
    question_t **p = &a->waiting;
    while (*p) {
        question_t *q = *p;
        if (q->asked && now - q->asked < CLUSTER_ASK_TIMEOUT) {
            p = &q->next;
            continue;
        }
        *p = q->next;
        q->fn(q->ctx, NULL);
        free(q);
    }
}
