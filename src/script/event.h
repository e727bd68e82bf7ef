/*
 * event.h - the event `e` that scripts see: a Lua userdata over one
 * published message, decoded lazily.
 *
 * Reading e.subject, e.reply or a header costs no JSON decoding; the payload
 * is parsed on the first access to an envelope field (e.data, e.type, e.id,
 * e.version, ...).  A payload that is a JSON object is read as a CloudEvents
 * 1.0 envelope ("structured" mode); otherwise, when the message carries
 * ce-* headers, those are the attributes and the payload is the data
 * ("binary" mode, the CloudEvents NATS binding); otherwise the event is raw:
 * e.type is the subject, e.version 1, e.data the payload if it is JSON.
 *
 * Decoding scans the payload into tokens (json_scan) without building a
 * tree: e.data and its members are read straight from the bytes.  In the
 * pipeline's event, writes of scalars to members of objects are kept as
 * edits against the tokens (json_edit.h); any other write builds the tree
 * (json_owner_tree), values read before follow it, and the edits are
 * applied to it.
 *
 * An event nothing changed goes out with its original bytes.  A changed one
 * is re-encoded once, in the mode it came in, when the pipeline asks for
 * its bytes (event_bytes): its edits spliced into the original text when
 * that can be done, else printed from the tree.
 */
#ifndef TIDE_EVENT_H
#define TIDE_EVENT_H

#include <stddef.h>

#include <lua.h>

#include "json_lua.h"
#include "proto.h"

enum event_mode { EVENT_UNDECODED = 0, EVENT_RAW, EVENT_STRUCTURED, EVENT_BINARY };

/* Who published an event (e.client): a NATS client, a handler inside tide
 * (ctx.publish), or the server itself (HTTP, the prompt, stored events). */
enum event_origin { EVENT_FROM_SERVER = 0, EVENT_FROM_CLIENT, EVENT_FROM_TIDE, EVENT_FROM_TEST };
struct client;
struct script_identity;

typedef struct event {
    json_owner_t owner; /* the payload as JSON; owner.dirty: the envelope or data changed; owner.dead: expired */
    int headers_dirty;
    int subject_dirty;
    int expired;
    int mode;
    int depth; /* emit-chain depth: 0 for events from clients */
    int raw_is_json;
    union tape_block *pooled_tape; /* the payload's tokens, when not in a userdata (event.c) */
    unsigned uv_set;  /* user values set (bits), for the pipeline's reused event */
    void *data_view;  /* e.data when it is a light userdata view (json.c) */
    /* A structured event's envelope members type, version and data: their
     * value tokens (JSON_NO_TOK: absent), found in one pass when the
     * upgrader chain first asks (env_noted), and which of them the
     * envelope holds more than once (bits). */
    uint32_t env_tok[3];
    unsigned env_dup;
    int env_noted;
    unsigned assigned; /* fields scripts assigned (e.x = ...), counted */
    /* The buffer edited payloads are spliced into (its user value keeps
     * it), carried over from one use of the reused event to the next. */
    char *spliced;
    size_t spliced_cap;
    /* Changed payloads this event made by splicing edits into its text
     * and by printing its tree (event_bytes): which way it took. */
    unsigned spliced_n, reencoded_n;
    uint32_t gen;     /* uses of this event object: 0 except for the reused one */
    int reusable;     /* the pipeline's reused event (event_push_pipeline) */
    int origin;       /* enum event_origin; set by the pipeline, EVENT_FROM_SERVER otherwise */
    const struct client *client; /* EVENT_FROM_CLIENT: the publisher (alive while the event is) */
    const struct script_identity *who; /* EVENT_FROM_TEST: the identity tide run or the prompt set */
    /* The message; borrowed unless event_push copied it.  A subject a
     * script set and re-encoded bytes are Lua strings the event keeps. */
    const char *subject;
    size_t subject_len;
    const char *reply;
    size_t reply_len;
    const char *hdr;
    size_t hdr_len;
    const char *payload;
    size_t payload_len;
    /* Re-encoded bytes, when changed (out_hdr "" with length 0: no headers). */
    const char *out_hdr;
    size_t out_hdr_len;
    const char *out_payload;
    size_t out_payload_len;
    char *printing; /* re-encoded text being made a Lua string: freed by event_expire_ptr if that raised */
} event_t;

/* Registers the event metatable.  Call once per Lua state. */
void event_open(lua_State *L);

/*
 * Pushes a new event for message m.  With copy = 0 the event borrows m's
 * bytes: the caller must keep them alive and call event_expire before they
 * go.  With copy = 1 it owns copies.  Returns the event (owned by Lua's GC;
 * it has no finalizer: what it holds is Lua values, or a tree whose holder
 * has one).  Raises a Lua error when out of memory: call from protected code.
 */
event_t *event_push(lua_State *L, const proto_msg_t *m, int copy);

/* event_push(L, m, 0) with the event metatable taken from stack index
 * mt_idx (a pseudo-index such as an upvalue works), sparing the registry
 * lookup on the hot path; mt_idx 0 looks it up. */
event_t *event_push_mt(lua_State *L, const proto_msg_t *m, int mt_idx);

/*
 * The event for the pipeline: pushes the event object (for C), then what
 * scripts are given, and returns the event.  The object is the state's
 * reused event (at reused_idx, from event_push_reused) and scripts get a
 * handle of it: a light userdata, nothing to allocate or collect, that
 * fails once the event has ended, as a kept event does.  While the reused
 * one is in use, both are a new event as event_push_mt makes.  Either way
 * event_expire_ptr ends it.
 */
event_t *event_push_pipeline(lua_State *L, const proto_msg_t *m, int mt_idx, int reused_idx);

/* Pushes the state's reused event (for event_push_pipeline). */
void event_push_reused(lua_State *L);

/* Pushes the event metatable (for event_push_mt). */
void event_push_metatable(lua_State *L);

/* The event at idx, or NULL. */
event_t *event_test(lua_State *L, int idx);

/*
 * Fills out with the event's current bytes (idx must hold an event) (subject, reply, headers,
 * payload), re-encoding what changed.  The pointers stay valid until the
 * event changes again, expires or is collected.  Raises a Lua error on
 * failure: call from protected code.
 */
void event_bytes(lua_State *L, int idx, proto_msg_t *out);

/*
 * e.type and e.version of the event object at idx (not a handle), read as
 * scripts read them but without the metatable and without making Lua
 * values: *type gets the type's bytes (*tl of them), which point into the
 * event or into buf (room for cap bytes) and stay valid until the event
 * changes, or NULL when they need more room than cap; *version the
 * version.  For the upgrader chain.  Raises a Lua error when the event
 * has ended or memory runs out.
 */
void event_type_version(lua_State *L, int idx, char *buf, size_t cap, const char **type, size_t *tl,
                        lua_Integer *version);

/* A number that stays the same as long as no script assigns a field of
 * the event ev (e.type, e.version, e.subject, ...) and it gets no tree:
 * while it does, event_type_version reads what it read before (writes
 * into e.data or e.headers change neither). */
static inline unsigned event_change_stamp(const event_t *ev)
{
    return ev->assigned * 2 + (ev->owner.tree != NULL);
}

/* e.version = version on the event object at idx, as a script's assignment
 * does.  Raises a Lua error when the event has ended or memory runs out. */
void event_set_version(lua_State *L, int idx, lua_Integer version);

/*
 * Ends the event's life for scripts: later access raises an error (a
 * script may have kept `e` in a global).  Frees its tree, if it has one.
 */
void event_expire(lua_State *L, int idx);

/* The same, for an event known by pointer (it must not have been collected). */
void event_expire_ptr(event_t *ev);

/* Payloads decoded so far (by every Lua state of the process): lets tests
 * and stats show that lazy access really skipped decoding. */
uint64_t event_decode_count(void);


#endif
