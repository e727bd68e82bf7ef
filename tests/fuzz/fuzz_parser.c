/*
 * fuzz_parser.c - libFuzzer target for the protocol parser and the
 * subscription index behind it.
 *
 * The input is parsed twice: whole, and cut into pieces at offsets taken
 * from its first bytes, and both runs must report the same commands (the
 * parser promises any fragmentation gives the same result).  SUBs go into a
 * sublist and PUBs are matched against it, so the index sees fuzzed
 * subjects too.  Each CONNECT stops the parser, which then resumes from
 * where it says it stopped.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/dict.h"
#include "../../src/core/proto.h"
#include "../../src/core/subject.h"
#include "../../src/core/sublist.h"
#include "../../src/base/util.h"

typedef struct run {
    uint64_t digest; /* hash over every command seen, in order */
    int commands;
    sublist_t *sl;
    sub_t *subs[64];
    int nsubs;
} run_t;

static void mix(run_t *r, const void *p, size_t n)
{
    r->digest ^= dict_hash(p, n) + 0x9e3779b97f4a7c15ULL + (r->digest << 6) + (r->digest >> 2);
}

/* Stops the parser after each CONNECT, as the server does while it checks
 * a password, and parsing goes on from where it stopped (parse_in_pieces):
 * nothing may be lost or seen twice, whatever the fragmentation. */
static int f_connect(void *ctx, const char *json, size_t len)
{
    run_t *r = ctx;
    r->commands++;
    mix(r, "C", 1);
    mix(r, json, len);
    return 1;
}

static int f_pub(void *ctx, const proto_msg_t *m)
{
    run_t *r = ctx;
    r->commands++;
    mix(r, "P", 1);
    mix(r, m->subject, m->subject_len);
    if (m->reply)
        mix(r, m->reply, m->reply_len);
    if (m->hdr)
        mix(r, m->hdr, m->hdr_len);
    mix(r, m->payload, m->payload_len);
    if (subject_valid_literal(m->subject, m->subject_len)) {
        sublist_result_t *res = sublist_match(r->sl, m->subject, m->subject_len);
        if (res) {
            for (size_t i = 0; i < res->npsubs; i++) {
                sub_t *s = res->psubs[i];
                if (!subject_matches(s->subject, s->subject_len, m->subject, m->subject_len))
                    abort(); /* the index returned a subscription that does not match */
            }
            for (size_t i = 0; i < res->nqgroups; i++)
                (void)sublist_qgroup_pick(&res->qgroups[i]);
        }
    }
    return 0;
}

static int f_sub(void *ctx, const char *s, size_t sl, const char *q, size_t ql, const char *sid, size_t sidl)
{
    run_t *r = ctx;
    r->commands++;
    mix(r, "S", 1);
    mix(r, s, sl);
    mix(r, sid, sidl);
    if (q)
        mix(r, q, ql);
    if (r->nsubs < 64 && subject_valid_pattern(s, sl)) {
        sub_t *sub = calloc(1, sizeof *sub);
        sub->subject = util_mem_dup(s, sl);
        sub->subject_len = sl;
        if (q) {
            sub->queue = util_mem_dup(q, ql);
            sub->queue_len = ql;
        }
        if (sublist_insert(r->sl, sub) == 0) {
            r->subs[r->nsubs++] = sub;
        } else {
            free(sub->subject);
            free(sub->queue);
            free(sub);
        }
    }
    return 0;
}

static int f_unsub(void *ctx, const char *sid, size_t sidl, uint64_t max)
{
    run_t *r = ctx;
    r->commands++;
    mix(r, "U", 1);
    mix(r, sid, sidl);
    mix(r, &max, sizeof max);
    /* Remove the oldest subscription so removal paths run too. */
    if (r->nsubs > 0) {
        sub_t *s = r->subs[0];
        if (sublist_remove(r->sl, s) != 0)
            abort();
        free(s->subject);
        free(s->queue);
        free(s);
        memmove(&r->subs[0], &r->subs[1], (size_t)(r->nsubs - 1) * sizeof r->subs[0]);
        r->nsubs--;
    }
    return 0;
}

static int f_ping(void *ctx)
{
    run_t *r = ctx;
    r->commands++;
    mix(r, "I", 1);
    return 0;
}

static int f_pong(void *ctx)
{
    run_t *r = ctx;
    r->commands++;
    mix(r, "O", 1);
    return 0;
}

static const proto_handler_t H = {f_connect, f_pub, f_sub, f_unsub, f_ping, f_pong};

static int parse_in_pieces(run_t *r, const uint8_t *data, size_t size, const uint8_t *cuts, size_t ncuts)
{
    proto_parser_t p;
    int rc = PROTO_OK;
    size_t off = 0, k = 0;
    proto_init(&p, 256, 4096);
    r->sl = sublist_new();
    while (off < size && rc == PROTO_OK) {
        size_t n = size - off;
        if (ncuts) {
            size_t step = (size_t)cuts[k++ % ncuts] % 17 + 1;
            if (step < n)
                n = step;
        }
        /* Copy each piece so ASan sees reads past it. */
        char *piece = malloc(n ? n : 1);
        memcpy(piece, data + off, n);
        size_t done = 0;
        do {
            rc = proto_parse(&p, piece + done, n - done, &H, r);
            if (rc == PROTO_STOP) {
                if (p.stopped_at > n - done)
                    abort(); /* stopped past the end of what it was fed */
                done += p.stopped_at;
            }
        } while (rc == PROTO_STOP && done < n);
        if (rc == PROTO_STOP)
            rc = PROTO_OK;
        free(piece);
        off += n;
    }
    for (int i = 0; i < r->nsubs; i++) {
        sublist_remove(r->sl, r->subs[i]);
        free(r->subs[i]->subject);
        free(r->subs[i]->queue);
        free(r->subs[i]);
    }
    sublist_free(r->sl);
    proto_free(&p);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run_t whole = {0}, split = {0};
    size_t ncuts = size < 8 ? size : 8;
    int rc1 = parse_in_pieces(&whole, data, size, NULL, 0);
    int rc2 = parse_in_pieces(&split, data, size, data, ncuts);
    /* Same status, same commands, whatever the fragmentation. */
    if (rc1 != rc2 || whole.commands != split.commands || whole.digest != split.digest)
        abort();
    return 0;
}
