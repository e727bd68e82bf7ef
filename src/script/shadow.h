/* shadow.h - the candidate beside the live rules, shared by shadow.c (in
 * dry mode) and canary.c (a share of the events for real).  Internal to
 * src/script. */
#ifndef TIDE_SHADOW_H
#define TIDE_SHADOW_H

#include "script_internal.h"

#define SHADOW_SAMPLES 20
#define SHADOW_RULES 64
#define SHADOW_FILES 64

enum { D_KEPT, D_ROUTED, D_DATA, D_EMITTED, D_ERRORS, D_KV, D_ACKS, D_KINDS };


#define SHADOW_TEXT 2048
typedef struct shadow_sample {
    char subject[128];
    int kinds; /* bits of D_* */
    char live[SHADOW_TEXT], cand[SHADOW_TEXT]; /* one line per thing done */
} shadow_sample_t;

typedef struct shadow_file {
    char *path, *text;
    size_t len;
} shadow_file_t;

typedef struct shadow shadow_t;

struct shadow {
    state_t *cand;
    kv_t *scratch;
    char path[PATH_MAX];  /* as given */
    char real[PATH_MAX];  /* resolved */
    int is_dir;
    uint64_t serial; /* tells this candidate's cascades from an earlier one's */
    char since[64];
    shadow_file_t files[SHADOW_FILES]; /* the candidate's files, read once */
    size_t nfiles;
    shadow_decision_t live, dec;
    uint64_t events, differ, kinds[D_KINDS];
    struct { char where[128]; uint64_t n; } rules[SHADOW_RULES];
    size_t nrules;
    shadow_sample_t samples[SHADOW_SAMPLES];
    size_t nsamples;
    /* A canary (canary.c): its share of the events goes through it for real. */
    int canary;
    double percent, max_rate, window;
    char key[128];            /* a dotted path in the event ("id", "data.customer_id") */
    struct timespec win_start;
    uint64_t win_events[2], win_fail[2]; /* this window's, [0] live, [1] candidate */
    uint64_t side_events[2], side_fail[2];
};


/* Loads path as a candidate (dry: what it does while loading stays in a
 * scratch store).  NULL with the reason in err. */
shadow_t *shadow_build(script_host_t *h, const char *path, int dry, char *err, size_t errsz);

/* Replaces h's shadow or canary (freed) by s, run by process. */
void shadow_install(script_host_t *h, shadow_t *s,
                    void (*process)(script_host_t *h, struct client *from, const proto_msg_t *m));

/* Frees h's shadow or canary, if any. */
void shadow_discard(script_host_t *h);

/* Tells the deploy hook (script_set_deploy_hook) what happened. */
void shadow_tell(script_host_t *h, const char *state, const char *path, const char *reason);

/* The canary's part of RULES.DIFF (canary.c). */
void canary_status(const shadow_t *s, cJSON *o);

#endif
