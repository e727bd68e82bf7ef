/* canary.c - a candidate that takes a share of the events for real (tide
 * rules canary; docs/deploys.md).
 *
 * Which side an event goes to is a hash of its key (a dotted path into
 * the event, "id" unless said), so one key stays on one side, across
 * reloads and restarts.  Over each window the two sides' dead-letter rates
 * are compared (a rule error dead-letters its event); when the candidate's
 * exceeds the live rules' by more than max_rate, the candidate is dropped
 * between two events and the deploy hook told why. */
#include "json.h"
#include "json_int.h"
#include "script_internal.h"
#include "shadow.h"

/* The token of the member named seg (seglen bytes) of object token o, or
 * JSON_NO_TOK. */
static uint32_t member(const char *text, const json_tok_t *tok, uint32_t o, const char *seg, size_t seglen)
{
    if (tok[o].type != JSON_TOK_OBJECT)
        return JSON_NO_TOK;
    uint32_t i = o + 1;
    for (uint32_t m = 0; m < tok[o].len; m++) {
        const unsigned char *k = (const unsigned char *)text + tok[i].start;
        if (json_escaped_equals(k, k + tok[i].len, seg, seglen))
            return i + 1;
        i = tok[i + 1].next;
    }
    return JSON_NO_TOK;
}

/* The event's key as text in out ("" when the event has no such field, or
 * is not JSON or too big to look into).  Scans the payload onto the stack:
 * no allocation. */
#define KEY_TOKENS 512
static void canary_key(const shadow_t *s, const proto_msg_t *m, char *out, size_t n)
{
    json_tok_t tok[KEY_TOKENS];
    char buf[512];
    size_t len;
    out[0] = '\0';
    long nt = json_scan(m->payload, m->payload_len, tok, KEY_TOKENS);
    if (nt <= 0 || nt > KEY_TOKENS)
        return;
    uint32_t v = 0;
    for (const char *p = s->key; v != JSON_NO_TOK && *p;) {
        const char *dot = strchr(p, '.');
        size_t sl = dot ? (size_t)(dot - p) : strlen(p);
        v = member(m->payload, tok, v, p, sl);
        p += sl + (dot != NULL);
    }
    if (v == JSON_NO_TOK)
        return;
    if (tok[v].type == JSON_TOK_STRING && tok[v].len < sizeof buf) {
        const char *t = json_tok_string(m->payload, &tok[v], buf, &len);
        snprintf(out, n, "%.*s", (int)len, t);
    } else if (tok[v].type == JSON_TOK_NUMBER) { /* the number as written */
        snprintf(out, n, "%.*s", (int)tok[v].len, m->payload + tok[v].start);
    } else if (tok[v].type == JSON_TOK_TRUE || tok[v].type == JSON_TOK_FALSE) {
        snprintf(out, n, "%s", tok[v].type == JSON_TOK_TRUE ? "true" : "false");
    }
}

/* 1 when the event goes to the candidate: FNV-1a of its key, in 10,000ths. */
static int canary_picks(const shadow_t *s, const proto_msg_t *m)
{
    char key[512];
    uint64_t hv = 14695981039346656037ULL;
    canary_key(s, m, key, sizeof key);
    for (const char *p = key; *p; p++)
        hv = (hv ^ (unsigned char)*p) * 1099511628211ULL;
    return (double)(hv % 10000) < s->percent * 100;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* At the end of a window: rolls the candidate back when it failed more
 * than the live rules by max_rate, else starts the next window. */
static void canary_check(script_host_t *h, shadow_t *s)
{
    char why[400];
    if (seconds_since(&s->win_start) < s->window)
        return;
    double live = s->win_events[0] ? (double)s->win_fail[0] / (double)s->win_events[0] : 0;
    double cand = s->win_events[1] ? (double)s->win_fail[1] / (double)s->win_events[1] : 0;
    if (s->win_events[1] && cand - live > s->max_rate) {
        snprintf(why, sizeof why,
                 "canary rolled back: dead-letter rate %.1f%% (%llu of %llu events) against the live rules' %.1f%% "
                 "(%llu of %llu) over %gs, more than %g points over",
                 cand * 100, (unsigned long long)s->win_fail[1], (unsigned long long)s->win_events[1], live * 100,
                 (unsigned long long)s->win_fail[0], (unsigned long long)s->win_events[0], s->window,
                 s->max_rate * 100);
        log_warn("%s: %s", s->path, why);
        shadow_tell(h, "rolled back", s->path, why);
        shadow_discard(h);
        return;
    }
    memset(s->win_events, 0, sizeof s->win_events);
    memset(s->win_fail, 0, sizeof s->win_fail);
    clock_gettime(CLOCK_MONOTONIC, &s->win_start);
}

/* Runs m (at depth) through side (1: the candidate) for real and counts
 * it, and its dead letters, to that side. */
static void canary_run_side(script_host_t *h, shadow_t *s, int side, struct client *from, const proto_msg_t *m,
                            int depth)
{
    uint64_t failed = h->st.dead_letters;
    state_t *live = h->cur;
    if (side)
        h->cur = s->cand;
    if (h->trace)
        h->trace(h->trace_ctx, side ? "  canary: the candidate handles this event" : "  canary: the live rules");
    pipeline_run_one(h, from, m, depth);
    h->cur = live;
    failed = h->st.dead_letters - failed;
    s->events++;
    s->side_events[side]++;
    s->side_fail[side] += failed;
    s->win_events[side]++;
    s->win_fail[side] += failed;
}

/* script_process with a canary: the event through one side, for real;
 * what that side's handlers publish is tagged to go through it too. */
static void canary_process(script_host_t *h, struct client *from, const proto_msg_t *m)
{
    shadow_t *s = h->shadow;
    int side = canary_picks(s, m);
    canary_run_side(h, s, side, from, m, 0);
    if (h->cascade) { /* made by this event's publishes (script_process starts with none) */
        h->cascade->canary = s->serial;
        h->cascade->side = side;
    }
    canary_check(h, s);
}

/* h->shadow_queued with a canary: an event a side's handlers published
 * (or one of its descendants) goes through the same side, so that a
 * candidate's output never runs through the live rules, nor the live
 * rules' through the candidate.  0 when c is not this canary's (it ended:
 * then the event runs through whatever rules are live, as any other). */
static int canary_queued(script_host_t *h, cascade_t *c, const proto_msg_t *m, int depth)
{
    shadow_t *s = h->shadow;
    if (!s || !s->canary || c->canary != s->serial)
        return 0;
    canary_run_side(h, s, c->side, NULL, m, depth);
    canary_check(h, s);
    return 1;
}

int script_canary_start(script_host_t *h, const script_canary_t *c, char *err, size_t errsz)
{
    if (c->percent < 0 || c->percent > 100 || c->window <= 0 || c->max_error_rate < 0) {
        snprintf(err, errsz, "percent must be 0 to 100, window over 0 seconds, max_error_rate 0 or more");
        return -1;
    }
    shadow_t *s = shadow_build(h, c->path, 0, err, errsz);
    if (!s)
        return -1;
    s->canary = 1;
    s->percent = c->percent;
    s->max_rate = c->max_error_rate;
    s->window = c->window;
    snprintf(s->key, sizeof s->key, "%s", c->key && c->key[0] ? c->key : "id");
    clock_gettime(CLOCK_MONOTONIC, &s->win_start);
    shadow_install(h, s, canary_process);
    h->shadow_queued = canary_queued;
    log_info("Canary started: %s takes %g%% of the events by %s", c->path, s->percent, s->key);
    shadow_tell(h, "canary", c->path, "");
    return 0;
}

int script_canary_set_percent(script_host_t *h, double percent, char *err, size_t errsz)
{
    if (!h->shadow || !h->shadow->canary) {
        snprintf(err, errsz, "no canary is running (tide rules canary PATH --percent P starts one)");
        return -1;
    }
    if (percent >= 100)
        return script_shadow_promote(h, err, errsz);
    if (percent < 0) {
        snprintf(err, errsz, "percent must be 0 to 100");
        return -1;
    }
    h->shadow->percent = percent;
    log_info("Canary %s now takes %g%% of the events", h->shadow->path, percent);
    return 0;
}

void canary_status(const shadow_t *s, cJSON *o)
{
    static const char *const side[2] = {"live", "candidate"};
    cJSON_AddNumberToObject(o, "percent", s->percent);
    cJSON_AddStringToObject(o, "key", s->key);
    cJSON_AddNumberToObject(o, "max_error_rate", s->max_rate);
    cJSON_AddNumberToObject(o, "window", s->window);
    for (int i = 0; i < 2; i++) {
        cJSON *x = cJSON_AddObjectToObject(o, side[i]);
        json_add_uint(x, "events", s->side_events[i]);
        json_add_uint(x, "dead_letters", s->side_fail[i]);
    }
}
