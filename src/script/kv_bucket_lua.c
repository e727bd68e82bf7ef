/* kv_bucket_lua.c - tide.kv.bucket(name): a handle on the JetStream KV
 * bucket `name`, the stream KV_<name> on $KV.<name>.> (see kv_lua.h).
 *
 * A value is the payload of the newest message on $KV.<name>.<key>; a
 * message whose KV-Operation header says DEL or PURGE means the key is
 * gone, as the clients' KV API reads it.  What Lua stores keeps its Lua
 * type in a Tide-Kv-Type header (int, float, bool, json; none for a
 * string), so a client reads the text ("42", "true", the JSON) and Lua gets
 * back what it stored; a value a client put has no such header and reads
 * as a string.  A key's revision is its message's stream sequence. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "json_lua.h"
#include "kv_lua.h"
#include "proto.h"
#include "script_internal.h"
#include "stream.h"

#define BUCKET_NAME_MAX (STREAM_NAME_MAX - 4) /* "KV_" and the NUL */
#define KEY_MAX 1024
#define UPDATE_TRIES 64
#define TYPE_HEADER "Tide-Kv-Type"

typedef struct bucket {
    script_host_t *host;
    char name[BUCKET_NAME_MAX];
    char stream[STREAM_NAME_MAX];
    char *buf; /* record read buffer */
    size_t cap;
    int tide; /* tide.kv itself: any key (encoded), the kv { } limits */
    int opened; /* the remote keeps its replica (script_kv_remote_t.open) */
} bucket_t;

/* An update (or cluster-mode incr) waiting in the remote for its turn. */
struct script_kv_job {
    state_t *st;    /* whose registry holds fn_ref (kept until the job ends); NULL for an incr */
    int fn_ref;     /* LUA_NOREF: an incr by `by` */
    lua_Integer by;
    char subject[KEY_MAX + 100];
};

/* ---- names ------------------------------------------------------------------ */

static int bucket_name_ok(const char *s, size_t n)
{
    if (!n || n >= BUCKET_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '-' || s[i] == '_' || (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= 'A' && s[i] <= 'Z')))
            return 0;
    return 1;
}

/* A key as the clients' KV API allows it: letters, digits, - / _ = and
 * dots between tokens. */
static int key_ok(const char *k, size_t n)
{
    if (!n || n > KEY_MAX || k[0] == '.' || k[n - 1] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        if (c == '.' && k[i + 1] == '.')
            return 0;
        if (!(c == '.' || c == '-' || c == '/' || c == '_' || c == '=' || (c >= '0' && c <= '9') ||
              (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return 0;
    }
    return 1;
}

/* The bucket of the call: the handle's upvalue; arguments start at 1
 * whether it was called as b.get(k) or b:get(k). */
static bucket_t *self(lua_State *L)
{
    if (lua_istable(L, 1) && lua_rawequal(L, 1, lua_upvalueindex(2)))
        lua_remove(L, 1);
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* base64url without padding of n bytes at p, to out (4 * n / 3 + 4 bytes). */
static size_t b64url_encode(const unsigned char *p, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = abc[v >> 6 & 63];
        if (i + 2 < n)
            out[o++] = abc[v & 63];
    }
    out[o] = '\0';
    return o;
}

/* Decodes base64url without padding (n chars at s) to out (n bytes will
 * do); the length, or -1 when s is not such text. */
static long b64url_decode(const char *s, size_t n, char *out)
{
    uint32_t v = 0;
    int bits = 0;
    long o = 0;
    if (n % 4 == 1)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int d = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 : c >= '0' && c <= '9' ? c - '0' + 52
              : c == '-' ? 62 : c == '_' ? 63 : -1;
        if (d < 0)
            return -1;
        v = v << 6 | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)(v >> bits & 0xff);
        }
    }
    return o;
}

int kv_bucket_subject(const char *bucket, int encode, const char *k, size_t kl, char *subj, size_t sn)
{
    int n = snprintf(subj, sn, "$KV.%s.", bucket);
    if (n < 0 || (size_t)n >= sn)
        return -1;
    if (key_ok(k, kl) && !(encode && k[0] == '=')) {
        if ((size_t)n + kl >= sn)
            return -1;
        memcpy(subj + n, k, kl);
        subj[n + kl] = '\0';
        return 0;
    }
    if (!encode || kl > (KEY_MAX - 1) / 4 * 3 || (size_t)n + 2 + kl / 3 * 4 + 4 > sn)
        return -1;
    subj[n] = '=';
    b64url_encode((const unsigned char *)k, kl, subj + n + 1);
    return 0;
}

/* Checks the key at idx and writes its subject to subj. */
static void check_key(lua_State *L, bucket_t *b, int idx, char *subj, size_t sn)
{
    size_t kl;
    const char *k = luaL_checklstring(L, idx, &kl);
    if (kv_bucket_subject(b->name, b->tide, k, kl, subj, sn) == 0)
        return;
    if (b->tide)
        luaL_error(L, "tide.kv: a key of %I bytes is too long (at most %d)", (lua_Integer)kl, (KEY_MAX - 1) / 4 * 3);
    luaL_error(L, "bucket '%s': '%s' is not a valid key (letters, digits, - / _ = and dots between them)", b->name, k);
}

/* The bucket's streams, its stream made through the host's bucket maker
 * when it is not there; raises when it cannot be. */
static streams_t *open_stream(lua_State *L, bucket_t *b)
{
    script_host_t *h = b->host;
    char err[512] = "";
    if (!h->streams)
        luaL_error(L, "bucket '%s': there are no streams (tide.kv.bucket needs a data directory)", b->name);
    if (streams_stream_info(h->streams, b->stream, -1, NULL))
        return h->streams;
    if (h->dry) /* a shadow's candidate makes nothing (docs/deploys.md) */
        luaL_error(L, "bucket '%s': no stream %s, and a shadow does not make one", b->name, b->stream);
    if (!h->bucket_maker || h->bucket_maker(h->bucket_ctx, b->name, err, sizeof err) < 0 ||
        !streams_stream_info(h->streams, b->stream, -1, NULL))
        luaL_error(L, "bucket '%s': cannot make stream %s%s%s", b->name, b->stream, err[0] ? ": " : "", err);
    return h->streams;
}

/* ---- reading ---------------------------------------------------------------- */

enum { ENTRY_NONE, ENTRY_VALUE, ENTRY_GONE };

/* The newest message on subj into *r (its bytes in b->buf, valid until the
 * next read) and *rev: ENTRY_VALUE, ENTRY_GONE (a DEL or PURGE marker), or
 * ENTRY_NONE (no message; *rev 0). */
static int newest(lua_State *L, bucket_t *b, const char *subj, slog_rec_t *r, uint64_t *rev)
{
    streams_t *sm = open_stream(L, b);
    size_t vl;
    *rev = streams_subject_last(sm, b->stream, subj, strlen(subj));
    if (!*rev || streams_read(sm, b->stream, *rev, r, &b->buf, &b->cap) <= 0) {
        *rev = 0;
        return ENTRY_NONE;
    }
    const char *op = r->hdr_len ? proto_header_find(r->hdr, r->hdr_len, "KV-Operation", &vl) : NULL;
    return op && ((vl == 3 && !memcmp(op, "DEL", 3)) || (vl == 5 && !memcmp(op, "PURGE", 5))) ? ENTRY_GONE
                                                                                                : ENTRY_VALUE;
}

/* Pushes payload (plen bytes) as the Lua type t (tl bytes; NULL: a
 * string) says. */
static void push_typed(lua_State *L, const char *payload, size_t plen, const char *t, size_t tl)
{
    char num[64];
    snprintf(num, sizeof num, "%.*s", (int)(plen < sizeof num ? plen : 0), payload);
    if (t && tl == 3 && !memcmp(t, "int", 3) && lua_stringtonumber(L, num)) {
        return;
    } else if (t && tl == 5 && !memcmp(t, "float", 5)) {
        lua_pushnumber(L, strtod(num, NULL));
    } else if (t && tl == 4 && !memcmp(t, "bool", 4)) {
        lua_pushboolean(L, !strcmp(num, "true"));
    } else if (t && tl == 4 && !memcmp(t, "json", 4)) {
        char *nums;
        cJSON *j = json_parse_exact(payload, plen, &nums);
        if (!j) {
            lua_pushnil(L);
            return;
        }
        json_push_document(L, j, nums); /* owns the tree; proxies keep it alive */
        json_push(L, j, -1);
        lua_remove(L, -2);
    } else {
        lua_pushlstring(L, payload, plen);
    }
}

/* Pushes the value of record r, as the Lua type its Tide-Kv-Type says. */
static void push_value(lua_State *L, const slog_rec_t *r)
{
    size_t tl = 0;
    const char *t = r->hdr_len ? proto_header_find(r->hdr, r->hdr_len, TYPE_HEADER, &tl) : NULL;
    push_typed(L, r->payload, r->payload_len, t, tl);
}

/* Pushes the value of a remote replica's entry. */
static void push_entry(lua_State *L, const script_kv_entry_t *e)
{
    push_typed(L, e->payload, e->len, e->type, e->type ? strlen(e->type) : 0);
}

/* ---- writing ---------------------------------------------------------------- */

/* A value for a bucket: its payload. */
typedef struct put {
    char num[64];
    char *text; /* a table's JSON (malloc'd) */
    const char *payload;
    size_t plen;
} put_t;

/* The payload and Tide-Kv-Type of the Lua value at idx (nil: none). */
static void put_value(lua_State *L, int idx, put_t *p, const char **type)
{
    int t = lua_type(L, idx);
    *type = NULL;
    p->payload = "";
    p->plen = 0;
    if (t == LUA_TSTRING) {
        p->payload = lua_tolstring(L, idx, &p->plen);
    } else if (t == LUA_TNUMBER) {
        *type = lua_isinteger(L, idx) ? "int" : "float";
        p->plen = (size_t)(lua_isinteger(L, idx) ? snprintf(p->num, sizeof p->num, LUA_INTEGER_FMT, lua_tointeger(L, idx))
                                                 : snprintf(p->num, sizeof p->num, "%.17g", lua_tonumber(L, idx)));
        p->payload = p->num;
    } else if (t == LUA_TBOOLEAN) {
        *type = "bool";
        p->payload = lua_toboolean(L, idx) ? "true" : "false";
        p->plen = strlen(p->payload);
    } else if (t != LUA_TNIL) {
        cJSON *j = json_from_lua(L, idx); /* raises for functions, userdata, ... */
        p->text = json_print(j, &p->plen);
        cJSON_Delete(j);
        if (!p->text)
            luaL_error(L, "out of memory");
        *type = "json";
        p->payload = p->text;
    }
}

int kv_bucket_store(streams_t *sm, const char *stream, const char *subj, const char *type, const char *op,
                    uint64_t expect, const char *payload, size_t plen, uint64_t *seq)
{
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr, "NATS/1.0\r\n");
    if (type)
        n += snprintf(hdr + n, sizeof hdr - (size_t)n, TYPE_HEADER ": %s\r\n", type);
    if (op)
        n += snprintf(hdr + n, sizeof hdr - (size_t)n, "KV-Operation: %s\r\n%s", op,
                      !strcmp(op, "PURGE") ? "Nats-Rollup: sub\r\n" : "");
    if (expect != UINT64_MAX)
        n += snprintf(hdr + n, sizeof hdr - (size_t)n, "Nats-Expected-Last-Subject-Sequence: %" PRIu64 "\r\n",
                      expect);
    n += snprintf(hdr + n, sizeof hdr - (size_t)n, "\r\n");
    proto_msg_t m = {0};
    m.subject = subj;
    m.subject_len = strlen(subj);
    if (n > 12) { /* more than the status line and the end */
        m.hdr = hdr;
        m.hdr_len = (size_t)n;
    }
    m.payload = payload;
    m.payload_len = plen;
    return streams_store(sm, stream, &m, seq);
}

typedef struct usage_ctx {
    bucket_t *b;
    size_t skip, keys, bytes;
} usage_ctx_t;

static void add_usage(void *ctx, const char *subject, size_t len, uint64_t seq)
{
    usage_ctx_t *u = ctx;
    slog_rec_t r;
    size_t vl;
    if (streams_read(u->b->host->streams, u->b->stream, seq, &r, &u->b->buf, &u->b->cap) <= 0 ||
        (r.hdr_len && proto_header_find(r.hdr, r.hdr_len, "KV-Operation", &vl)))
        return;
    len -= u->skip;
    u->keys++;
    u->bytes += (subject[u->skip] == '=' ? (len - 1) * 3 / 4 : len) + r.payload_len;
}

/* tide.kv's limits (kv { }) for a write of plen bytes to subj, a key of kl
 * bytes; raises past one.  The stream's own counts (every message, markers
 * and headers included) bound the keys and bytes from above, so the exact
 * count, a scan of the bucket, is needed only near a limit. */
static void check_limits(lua_State *L, bucket_t *b, const char *what, const char *subj, size_t kl, size_t plen)
{
    const kv_limits_t *lim = kv_limits(b->host->kv);
    stream_info_t si;
    slog_rec_t r;
    uint64_t rev;
    if (lim->max_value && plen > lim->max_value)
        luaL_error(L, "%s('%s'): a value of %I bytes is over kv { max_value = %I }", what, lua_tostring(L, 1),
                   (lua_Integer)plen, (lua_Integer)lim->max_value);
    if (!lim->max_keys && !lim->max_bytes)
        return;
    size_t old = newest(L, b, subj, &r, &rev) == ENTRY_VALUE ? kl + r.payload_len : 0;
    if (!streams_stream_info(b->host->streams, b->stream, -1, &si))
        return;
    int near_keys = lim->max_keys && !old && si.log.msgs >= lim->max_keys;
    int near_bytes = lim->max_bytes && si.log.bytes + kl + plen > lim->max_bytes + old;
    if (!near_keys && !near_bytes)
        return;
    usage_ctx_t u = {b, (size_t)snprintf(NULL, 0, "$KV.%s.", b->name), 0, 0};
    if (streams_subjects_each(b->host->streams, b->stream, subj, u.skip, add_usage, &u) < 0)
        luaL_error(L, "out of memory");
    if (lim->max_keys && !old && u.keys >= lim->max_keys)
        luaL_error(L, "%s('%s'): the store holds %I keys, kv { max_keys = %I }", what, lua_tostring(L, 1),
                   (lua_Integer)u.keys, (lua_Integer)lim->max_keys);
    if (lim->max_bytes && u.bytes + kl + plen > lim->max_bytes + old)
        luaL_error(L, "%s('%s'): the store holds %I bytes; kv { max_bytes = %I } leaves no room", what,
                   lua_tostring(L, 1), (lua_Integer)u.bytes, (lua_Integer)lim->max_bytes);
}

/* Writes the value at idx (LUA_TNONE / nil with op: a DEL or PURGE marker)
 * to subj, the key at stack index 1, only if the subject's newest sequence
 * is `expect` (UINT64_MAX: whatever it is).  Returns the new revision, or 0
 * when the subject had moved on; raises when the bucket refuses the message
 * (what: the call, for tide.kv's limits). */
static uint64_t put(lua_State *L, bucket_t *b, const char *what, const char *subj, int idx, const char *op,
                    uint64_t expect)
{
    if (b->host->rec)
        shadow_note(b->host, SHADOW_KV, subj, strlen(subj), op ? op : "put", strlen(op ? op : "put"), NULL);
    if (b->host->dry) /* noted, not stored: a made-up revision, as if it had been */
        return (expect != UINT64_MAX ? expect : 0) + 1;
    streams_t *sm = open_stream(L, b);
    put_t p = {0};
    const char *type = NULL;
    uint64_t seq = 0;
    size_t kl = 0;
    if (!op)
        put_value(L, idx, &p, &type);
    if (p.text) { /* kept on the stack from here, so that a raise frees it */
        lua_pushlstring(L, p.text, p.plen);
        free(p.text);
        p.payload = lua_tostring(L, -1);
    }
    if (b->tide && !op) {
        lua_tolstring(L, 1, &kl);
        check_limits(L, b, what, subj, kl, p.plen);
    }
    int rc = kv_bucket_store(sm, b->stream, subj, type, op, expect, p.payload, p.plen, &seq);
    if (rc == 1)
        return seq;
    if (rc == -1 && expect != UINT64_MAX && streams_subject_last(sm, b->stream, subj, strlen(subj)) != expect)
        return 0;
    luaL_error(L, "bucket '%s': %s was not stored (%s)", b->name, subj,
               rc == -1 ? "refused by the bucket's limits" : "the stream could not store it");
    return 0;
}

/* ---- buckets kept by a remote (cluster mode) ------------------------------- */

/* The remote keeps b's replica from here on; raises when it cannot. */
static void remote_open(lua_State *L, bucket_t *b)
{
    char err[300] = "";
    if (b->opened)
        return;
    if (b->host->kv_remote.open(b->host->kv_remote.ctx, b->name, err, sizeof err) < 0)
        luaL_error(L, "bucket '%s': %s", b->name, err);
    b->opened = 1;
}

/* The replica's value of subj: 1 with *e, or 0. */
static int remote_get(lua_State *L, bucket_t *b, const char *subj, script_kv_entry_t *e)
{
    remote_open(L, b);
    return b->host->kv_remote.get(b->host->kv_remote.ctx, b->name, subj, e);
}

/* Sends the value at idx (op "DEL": a marker) to subj without waiting;
 * raises when it cannot be sent or is over kv { max_value } (tide.kv). */
static void remote_put(lua_State *L, bucket_t *b, const char *what, const char *subj, int idx, const char *op)
{
    char err[300] = "";
    put_t p = {0};
    const char *type = NULL;
    if (b->host->rec)
        shadow_note(b->host, SHADOW_KV, subj, strlen(subj), op ? op : "put", strlen(op ? op : "put"), NULL);
    if (b->host->dry)
        return;
    remote_open(L, b);
    if (!op)
        put_value(L, idx, &p, &type);
    if (p.text) { /* kept on the stack from here, so that a raise frees it */
        lua_pushlstring(L, p.text, p.plen);
        free(p.text);
        p.payload = lua_tostring(L, -1);
    }
    const kv_limits_t *lim = kv_limits(b->host->kv);
    if (b->tide && !op && lim->max_value && p.plen > lim->max_value)
        luaL_error(L, "%s('%s'): a value of %I bytes is over kv { max_value = %I }", what, lua_tostring(L, 1),
                   (lua_Integer)p.plen, (lua_Integer)lim->max_value);
    if (b->host->kv_remote.put(b->host->kv_remote.ctx, b->name, subj, type, op, p.payload, p.plen, err,
                               sizeof err) < 0)
        luaL_error(L, "bucket '%s': %s was not sent (%s)", b->name, subj, err);
}

/* A new job for subj. */
static script_kv_job_t *job_new(lua_State *L, const char *subj)
{
    script_kv_job_t *j = calloc(1, sizeof *j);
    if (!j)
        luaL_error(L, "out of memory");
    j->fn_ref = LUA_NOREF;
    snprintf(j->subject, sizeof j->subject, "%s", subj);
    return j;
}

/* Hands j to the remote (which frees it in every case); raises on refusal. */
static void job_queue(lua_State *L, bucket_t *b, script_kv_job_t *j)
{
    char err[300] = "";
    if (b->host->kv_remote.update(b->host->kv_remote.ctx, b->name, j->subject, j, err, sizeof err) < 0)
        luaL_error(L, "bucket '%s': %s was not queued (%s)", b->name, j->subject, err);
}

/* update(k, fn) in cluster mode: fn runs when the job's turn comes, with
 * the replica current; returns true (queued). */
static int remote_update(lua_State *L, bucket_t *b, const char *subj)
{
    if (b->host->rec)
        shadow_note(b->host, SHADOW_KV, subj, strlen(subj), "update", 6, NULL);
    if (b->host->dry) {
        lua_pushboolean(L, 1);
        return 1;
    }
    remote_open(L, b);
    script_kv_job_t *j = job_new(L, subj);
    j->st = script_state_of(L);
    j->st->kv_jobs++;
    lua_pushvalue(L, 2);
    j->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    job_queue(L, b, j);
    lua_pushboolean(L, 1);
    return 1;
}

/* incr(k, by) in cluster mode: an exact update, queued; returns what the
 * replica's value plus by is now (the stored result is exact, this is
 * this node's view). */
static int remote_incr(lua_State *L, bucket_t *b, const char *subj, lua_Integer by)
{
    script_kv_entry_t e;
    lua_Integer now = 0;
    int isnum = 1;
    if (remote_get(L, b, subj, &e)) {
        push_entry(L, &e);
        now = lua_tointegerx(L, -1, &isnum);
        if (!isnum || lua_type(L, -1) == LUA_TBOOLEAN)
            return luaL_error(L, "bucket '%s': kv.incr: value of '%s' is not an integer", b->name,
                              lua_tostring(L, 1));
        lua_pop(L, 1);
    }
    if (b->host->rec)
        shadow_note(b->host, SHADOW_KV, subj, strlen(subj), "incr", 4, NULL);
    if (!b->host->dry) {
        script_kv_job_t *j = job_new(L, subj);
        j->by = by;
        job_queue(L, b, j);
    }
    lua_pushinteger(L, (lua_Integer)((lua_Unsigned)now + (lua_Unsigned)by));
    return 1;
}

typedef struct keys_ctx {
    lua_State *L;
    bucket_t *b;
    size_t skip; /* "$KV.<bucket>." */
    lua_Integer n;
    int list;
    const char *prefix; /* tide.kv: keys are decoded, then matched */
    size_t pl;
    char key[KEY_MAX];
} keys_ctx_t;

static void remote_add_key(void *arg, const char *subject, size_t len, const script_kv_entry_t *e)
{
    keys_ctx_t *k = arg;
    const char *key = subject + k->skip;
    long kl = (long)(len - k->skip);
    (void)e;
    if (k->b->tide && key[0] == '=') {
        long dl = b64url_decode(key + 1, (size_t)kl - 1, k->key);
        if (dl >= 0)
            key = k->key, kl = dl;
    }
    if ((size_t)kl < k->pl || memcmp(key, k->prefix, k->pl))
        return;
    k->n++;
    if (k->list) {
        lua_pushlstring(k->L, key, (size_t)kl);
        lua_rawseti(k->L, -2, k->n);
    }
}

/* What keys() / count() return once k has gone over the keys: the count,
 * or the list (on the stack) sorted. */
static int keys_result(lua_State *L, const keys_ctx_t *k)
{
    if (!k->list) {
        lua_pushinteger(L, k->n);
        return 1;
    }
    lua_getglobal(L, "table");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "sort");
        lua_pushvalue(L, -3);
        lua_call(L, 1, 0);
    }
    lua_pop(L, 1);
    return 1;
}

/* keys([prefix]) / count() over the replica. */
static int remote_keys(lua_State *L, bucket_t *b, const char *prefix, size_t pl, int list)
{
    keys_ctx_t k = {L, b, 0, 0, list, prefix, pl, ""};
    remote_open(L, b);
    k.skip = (size_t)snprintf(NULL, 0, "$KV.%s.", b->name);
    if (list)
        lua_newtable(L);
    b->host->kv_remote.each(b->host->kv_remote.ctx, b->name, remote_add_key, &k);
    return keys_result(L, &k);
}

/* In a protected call: fn (1) of the job with value (2) and revision (3);
 * its result into the script_kv_write_t (4, light userdata). */
static int job_call(lua_State *L)
{
    script_kv_write_t *out = lua_touserdata(L, 4);
    put_t p = {0};
    const char *type = NULL;
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_call(L, 2, 1);
    if (lua_isnil(L, -1)) {
        out->op = "DEL";
        return 0;
    }
    put_value(L, lua_gettop(L), &p, &type);
    out->payload = p.text ? p.text : util_mem_dup(p.payload, p.plen ? p.plen : 1);
    if (!out->payload)
        return luaL_error(L, "out of memory");
    out->len = p.plen;
    out->type = type;
    return 0;
}

/* An incr job: the integer in cur (none: 0) plus by. */
static int job_incr(script_kv_job_t *j, const script_kv_entry_t *cur, script_kv_write_t *out)
{
    char num[64], *end;
    long long now = 0;
    if (cur) {
        if (cur->len >= sizeof num || (cur->type && strcmp(cur->type, "int")))
            goto fail;
        memcpy(num, cur->payload, cur->len);
        num[cur->len] = '\0';
        errno = 0;
        now = strtoll(num, &end, 10);
        if (!cur->len || *end || errno)
            goto fail;
    }
    int n = snprintf(num, sizeof num, "%lld", (long long)((unsigned long long)now + (unsigned long long)j->by));
    if (!(out->payload = util_mem_dup(num, (size_t)n)))
        return SCRIPT_KV_FAILED;
    out->len = (size_t)n;
    out->type = "int";
    return SCRIPT_KV_WRITE;
fail:
    log_warn("kv: incr of %s dropped: its value is not an integer", j->subject);
    return SCRIPT_KV_FAILED;
}

int script_kv_job_run(script_kv_job_t *j, const script_kv_entry_t *cur, script_kv_write_t *out)
{
    memset(out, 0, sizeof *out);
    if (!j->st)
        return job_incr(j, cur, out);
    lua_State *L = j->st->L;
    int top = lua_gettop(L), rc;
    lua_pushcfunction(L, job_call);
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->fn_ref);
    if (cur) {
        push_entry(L, cur);
        lua_pushinteger(L, (lua_Integer)cur->revision);
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    lua_pushlightuserdata(L, out);
    rc = budget_call(j->st, 4, 0);
    if (rc != LUA_OK) {
        log_warn("kv: update of %s failed: %s", j->subject, lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
        free(out->payload);
        memset(out, 0, sizeof *out);
    }
    lua_settop(L, top);
    if (rc != LUA_OK)
        return SCRIPT_KV_FAILED;
    return out->op && !cur ? SCRIPT_KV_NOTHING : SCRIPT_KV_WRITE;
}

void script_kv_job_free(script_kv_job_t *j)
{
    if (!j)
        return;
    if (j->st) {
        luaL_unref(j->st->L, LUA_REGISTRYINDEX, j->fn_ref);
        if (--j->st->kv_jobs == 0 && j->st->retired) /* replaced meanwhile: this was its last */
            j->st->host->free_retired(j->st);
    }
    free(j);
}

/* ---- the handle's functions ------------------------------------------------- */

static int l_get(lua_State *L)
{
    bucket_t *b = self(L);
    char subj[KEY_MAX + 100];
    slog_rec_t r;
    uint64_t rev;
    script_kv_entry_t e;
    check_key(L, b, 1, subj, sizeof subj);
    if (b->host->has_kv_remote) {
        if (remote_get(L, b, subj, &e))
            push_entry(L, &e);
        else
            lua_pushnil(L);
        return 1;
    }
    if (newest(L, b, subj, &r, &rev) == ENTRY_VALUE)
        push_value(L, &r);
    else
        lua_pushnil(L);
    return 1;
}

static int l_has(lua_State *L)
{
    bucket_t *b = self(L);
    char subj[KEY_MAX + 100];
    slog_rec_t r;
    uint64_t rev;
    script_kv_entry_t e;
    check_key(L, b, 1, subj, sizeof subj);
    if (b->host->has_kv_remote) {
        lua_pushboolean(L, remote_get(L, b, subj, &e));
        return 1;
    }
    lua_pushboolean(L, newest(L, b, subj, &r, &rev) == ENTRY_VALUE);
    return 1;
}

static int l_revision(lua_State *L)
{
    bucket_t *b = self(L);
    char subj[KEY_MAX + 100];
    slog_rec_t r;
    uint64_t rev;
    script_kv_entry_t e;
    check_key(L, b, 1, subj, sizeof subj);
    if (b->host->has_kv_remote) {
        if (remote_get(L, b, subj, &e))
            lua_pushinteger(L, (lua_Integer)e.revision);
        else
            lua_pushnil(L);
        return 1;
    }
    if (newest(L, b, subj, &r, &rev) == ENTRY_VALUE)
        lua_pushinteger(L, (lua_Integer)rev);
    else
        lua_pushnil(L);
    return 1;
}

/* del(k) -> existed: a DEL marker, as a client's kv.delete writes. */
static int l_del(lua_State *L)
{
    bucket_t *b = self(L);
    char subj[KEY_MAX + 100];
    slog_rec_t r;
    uint64_t rev;
    check_key(L, b, 1, subj, sizeof subj);
    if (b->host->has_kv_remote) {
        /* The marker goes whatever the replica says: a set of this node
         * that has not come back through the watch yet is deleted too. */
        script_kv_entry_t e;
        int had = remote_get(L, b, subj, &e);
        remote_put(L, b, "tide.kv.del", subj, 0, "DEL");
        lua_pushboolean(L, had);
        return 1;
    }
    int existed = newest(L, b, subj, &r, &rev) == ENTRY_VALUE;
    if (existed)
        put(L, b, "tide.kv.del", subj, 0, "DEL", UINT64_MAX);
    lua_pushboolean(L, existed);
    return 1;
}

/* set(k, v) -> revision; v nil deletes. */
static int l_set(lua_State *L)
{
    bucket_t *b = self(L);
    char subj[KEY_MAX + 100];
    check_key(L, b, 1, subj, sizeof subj);
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        return l_del(L);
    }
    if (b->host->has_kv_remote) { /* the revision is known once the write comes back */
        remote_put(L, b, "tide.kv.set", subj, 2, NULL);
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushinteger(L, (lua_Integer)put(L, b, "tide.kv.set", subj, 2, NULL, UINT64_MAX));
    return 1;
}

/* incr(k [, by]) -> the new integer (a missing key counts as 0). */
static int l_incr(lua_State *L)
{
    bucket_t *b = self(L);
    char subj[KEY_MAX + 100];
    slog_rec_t r;
    uint64_t rev;
    lua_Integer by = luaL_optinteger(L, 2, 1), now = 0;
    check_key(L, b, 1, subj, sizeof subj);
    if (b->host->has_kv_remote)
        return remote_incr(L, b, subj, by);
    if (newest(L, b, subj, &r, &rev) == ENTRY_VALUE) {
        push_value(L, &r);
        int isnum = 0;
        now = lua_tointegerx(L, -1, &isnum);
        if (!isnum || lua_type(L, -1) == LUA_TBOOLEAN)
            return luaL_error(L, "bucket '%s': kv.incr: value of '%s' is not an integer", b->name,
                              lua_tostring(L, 1));
        lua_pop(L, 1);
    }
    lua_pushinteger(L, (lua_Integer)((lua_Unsigned)now + (lua_Unsigned)by));
    put(L, b, "tide.kv.incr", subj, lua_gettop(L), NULL, UINT64_MAX);
    return 1;
}

/* update(k, fn) -> revision: fn(value, revision) gives the new value (nil
 * deletes), written only if the key has not changed since it was read;
 * read and called again when it has. */
static int l_update(lua_State *L)
{
    bucket_t *b = self(L);
    char subj[KEY_MAX + 100];
    slog_rec_t r;
    uint64_t rev, done = 0;
    check_key(L, b, 1, subj, sizeof subj);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (b->host->has_kv_remote)
        return remote_update(L, b, subj);
    for (int tries = 0; tries < UPDATE_TRIES && !done; tries++) {
        lua_settop(L, 2);
        int e = newest(L, b, subj, &r, &rev);
        lua_pushvalue(L, 2);
        if (e == ENTRY_VALUE)
            push_value(L, &r);
        else
            lua_pushnil(L);
        if (e == ENTRY_VALUE)
            lua_pushinteger(L, (lua_Integer)rev);
        else
            lua_pushnil(L);
        lua_call(L, 2, 1);
        if (lua_isnil(L, -1) && e != ENTRY_VALUE)
            return 0; /* nothing there, and nothing to write */
        done = put(L, b, "tide.kv.update", subj, lua_isnil(L, -1) ? 0 : 3, lua_isnil(L, -1) ? "DEL" : NULL, rev);
    }
    if (!done)
        return luaL_error(L, "bucket '%s': update of %s: the key kept changing (%d tries)", b->name, subj,
                          UPDATE_TRIES);
    lua_pushinteger(L, (lua_Integer)done);
    return 1;
}

static void add_key(void *ctx, const char *subject, size_t len, uint64_t seq)
{
    keys_ctx_t *k = ctx;
    slog_rec_t r;
    size_t vl;
    if (streams_read(k->b->host->streams, k->b->stream, seq, &r, &k->b->buf, &k->b->cap) <= 0 ||
        (r.hdr_len && proto_header_find(r.hdr, r.hdr_len, "KV-Operation", &vl)))
        return; /* gone, or a DEL / PURGE marker */
    const char *key = subject + k->skip;
    long kl = (long)(len - k->skip);
    if (k->b->tide && key[0] == '=') {
        long dl = b64url_decode(key + 1, (size_t)kl - 1, k->key);
        if (dl >= 0)
            key = k->key, kl = dl;
    }
    if (k->b->tide && ((size_t)kl < k->pl || memcmp(key, k->prefix, k->pl)))
        return;
    k->n++;
    if (k->list) {
        lua_pushlstring(k->L, key, (size_t)kl);
        lua_rawseti(k->L, -2, k->n);
    }
}

/* keys([prefix]) -> sorted list, or count() -> n: the keys with a value. */
static int each_key(lua_State *L, bucket_t *b, const char *prefix, size_t pl, int list)
{
    streams_t *sm = open_stream(L, b);
    char p[KEY_MAX + 100];
    keys_ctx_t k = {L, b, 0, 0, list, prefix, pl, ""};
    k.skip = (size_t)snprintf(p, sizeof p, "$KV.%s.", b->name);
    if (!b->tide) /* tide.kv's encoded keys match only once decoded */
        snprintf(p + k.skip, sizeof p - k.skip, "%.*s", (int)pl, prefix);
    if (list)
        lua_newtable(L);
    if (streams_subjects_each(sm, b->stream, p, strlen(p), add_key, &k) < 0)
        return luaL_error(L, "bucket '%s': out of memory", b->name);
    return keys_result(L, &k);
}

static int l_keys(lua_State *L)
{
    bucket_t *b = self(L);
    size_t pl = 0;
    const char *prefix = luaL_optlstring(L, 1, "", &pl);
    return b->host->has_kv_remote ? remote_keys(L, b, prefix, pl, 1) : each_key(L, b, prefix, pl, 1);
}

static int l_count(lua_State *L)
{
    bucket_t *b = self(L);
    return b->host->has_kv_remote ? remote_keys(L, b, "", 0, 0) : each_key(L, b, "", 0, 0);
}

static int l_bucket_gc(lua_State *L)
{
    bucket_t *b = lua_touserdata(L, 1);
    free(b->buf);
    b->buf = NULL;
    return 0;
}

/* Pushes the handle on bucket name (tide: tide.kv itself) and returns its
 * bucket.  The handle's stream is made or opened at the first call that
 * needs it. */
static bucket_t *push_handle(lua_State *L, script_host_t *host, const char *name, int tide)
{
    static const luaL_Reg fns[] = {{"get", l_get},     {"set", l_set},       {"del", l_del},
                                   {"incr", l_incr},   {"has", l_has},       {"keys", l_keys},
                                   {"count", l_count}, {"update", l_update}, {"revision", l_revision},
                                   {NULL, NULL}};
    lua_createtable(L, 0, 11);
    int handle = lua_gettop(L);
    bucket_t *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    b->host = host;
    b->tide = tide;
    snprintf(b->name, sizeof b->name, "%s", name);
    snprintf(b->stream, sizeof b->stream, "KV_%s", name);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_bucket_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    for (const luaL_Reg *f = fns; f->name; f++) {
        lua_pushvalue(L, -1);     /* the bucket */
        lua_pushvalue(L, handle); /* the handle, to tell b:get(k) from b.get(k) */
        lua_pushcclosure(L, f->func, 2);
        lua_setfield(L, handle, f->name);
    }
    lua_pop(L, 1);
    lua_pushstring(L, name);
    lua_setfield(L, handle, "name");
    return b;
}

/* tide.kv.bucket(name) -> the handle. */
static int l_bucket(lua_State *L)
{
    size_t nl;
    const char *name = luaL_checklstring(L, 1, &nl);
    if (!bucket_name_ok(name, nl))
        return luaL_error(L, "tide.kv.bucket: '%s' is not a bucket name (letters, digits, - and _, at most %d)", name,
                          BUCKET_NAME_MAX - 1);
    script_host_t *host = lua_touserdata(L, lua_upvalueindex(1));
    bucket_t *b = push_handle(L, host, name, !strcmp(name, KV_TIDE_BUCKET));
    if (host->has_kv_remote && !host->dry) /* named: its replica starts filling now */
        remote_open(L, b);
    return 1;
}

void kv_bucket_lua_push(lua_State *L, script_host_t *host)
{
    lua_pushlightuserdata(L, host);
    lua_pushcclosure(L, l_bucket, 1);
}

void kv_bucket_lua_push_tide(lua_State *L, script_host_t *host)
{
    push_handle(L, host, KV_TIDE_BUCKET, 1);
}
