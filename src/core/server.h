/*
 * server.h - the tide server: one libevent loop that owns every connection,
 * the subscription index and the routing of published messages.
 *
 * Single-threaded by design (like Redis): all state is touched only from the
 * loop's thread, so nothing here takes a lock.
 */
#ifndef TIDE_SERVER_H
#define TIDE_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "proto.h"
#include "sublist.h"

#define TIDE_VERSION "0.1.0"
/* The nats-server version whose client protocol and JetStream API tide
 * answers: INFO's "version" (clients gate features on it: nats.js refuses
 * KV and the consumers API below 2.x releases), with TIDE_VERSION in
 * "tide_version". */
#define TIDE_NATS_VERSION "2.10.0"
#define TIDE_DEFAULT_PORT 4222
#define TIDE_DEFAULT_MAX_PENDING (64u * 1024 * 1024)
#define TIDE_DEFAULT_MAX_CONNECTIONS 65536
#define TIDE_DEFAULT_MAX_PENDING_TOTAL (512u * 1024 * 1024)

/* Subjects under this prefix are the server's own inboxes: clients may not
 * publish there (server_publish refuses it), so an answer that arrives
 * there was made inside the server. */
#define SERVER_INBOX_PREFIX "$TIDE.INBOX."
/* Requests addressed to one node: $TIDE.NODE.<name>.<rest> is answered by
 * the node called <name> as it answers $TIDE.<rest> (docs/cluster.md). */
#define SERVER_NODE_PREFIX "$TIDE.NODE."

/* For subject "$TIDE.NODE.<name>.<rest>" (len bytes; name one token, rest
 * not empty): 1 with *name_len the name's length (it starts at
 * subject + strlen(SERVER_NODE_PREFIX)) and *rest the offset in subject
 * of <rest>; else 0. */
int server_node_subject(const char *subject, size_t len, size_t *name_len, size_t *rest);

typedef struct server_opts {
    char host[256];
    int port;
    size_t max_payload;      /* bytes, per message (PUB/HPUB total) */
    size_t max_control_line; /* bytes */
    size_t max_pending;      /* bytes queued for one client before it is a slow consumer */
    double ping_interval;    /* seconds between server PINGs to an idle client */
    int max_pings_out;       /* unanswered PINGs before 'Stale Connection' */
    double write_deadline;   /* seconds a closing client gets to take its last bytes */
    size_t max_connections;  /* clients at once; past it a new one gets -ERR and is closed */
    size_t max_pending_total; /* bytes queued for all clients together; past it the
                                 clients with the most queued are cut as slow consumers */
    size_t max_subs;         /* subscriptions per client; 0: no limit */
    char server_name[128];
} server_opts_t;

/* Fills o with the defaults (127.0.0.1:4222, 1 MiB payloads, ...). */
void server_opts_default(server_opts_t *o);

typedef struct server_stats {
    uint64_t in_msgs, in_bytes;   /* published by clients */
    uint64_t out_msgs, out_bytes; /* delivered to clients */
    uint64_t connections_total;
    uint64_t slow_consumers;
    uint64_t refused_connections; /* over max_connections, or no descriptor left */
    uint64_t stale_connections;
    uint64_t protocol_errors;
    size_t connections; /* open now */
} server_stats_t;

typedef struct server server_t;
struct client;

/* Creates a server (not yet listening).  Returns NULL on failure (logged). */
server_t *server_new(const server_opts_t *opts);

/* Binds the listener.  Returns 0, or -1 with the reason logged. */
int server_listen(server_t *s);

/* Runs the loop until SIGINT/SIGTERM (or server_shutdown); returns 0 after a
 * clean shutdown in which pending output was flushed. */
int server_run(server_t *s);

/* Stops accepting, flushes every client's pending output (bounded by
 * write_deadline) and ends server_run.  May be called from any loop callback. */
void server_shutdown(server_t *s);

/* Frees the server and everything it owns. */
void server_free(server_t *s);

/*
 * Routes one message to every matching subscription: all plain subscribers
 * and one member of each queue group.  `from` is the publishing client (NULL
 * for messages the server makes itself); it is used for echo suppression and
 * no-responders replies.  Returns the number of deliveries.
 * The message's pointers need only be valid during the call.
 */
size_t server_route(server_t *s, struct client *from, const proto_msg_t *msg);

/* Flags for server_route_flags. */
#define ROUTE_HAS_RESPONDER 1 /* a handler inside tide will answer: no 503 status */
#define ROUTE_NO_CAPTURE 2    /* not for streams: acks, consumer deliveries */
#define ROUTE_ANSWER 4        /* an answer the server makes (server_reply); in cluster mode it
                                 stays here when a client here subscribes to it */

/* server_route with flags. */
size_t server_route_flags(server_t *s, struct client *from, const proto_msg_t *msg, int flags);

/* Delivers msg (its subject unchanged) to the subscriptions matching `to`:
 * how a consumer hands a stored event to its deliver subject. */
size_t server_route_to(server_t *s, struct client *from, const char *to, size_t tolen, const proto_msg_t *msg,
                       int flags);

/* server_route_flags that also says, in *captured, what the capture hook
 * answered for msg (0 when it was not offered): for messages the server
 * makes whose loss must be noticed, such as dead letters. */
size_t server_route_report(server_t *s, struct client *from, const proto_msg_t *msg, int flags, int *captured);

/*
 * The entry point for every message a client publishes: admin requests
 * ($TIDE.ADMIN.*) go to the admin hook, everything else to the ingress
 * hook (the script pipeline), or straight to server_route when none is set.
 */
void server_publish(server_t *s, struct client *from, const proto_msg_t *msg);

/*
 * Hooks: how the layers above receive what the core does not handle
 * itself.  The core calls no code above it but through these, registered
 * once when a node starts (and cleared with NULL before the owner goes).
 * `from` is the publishing client, NULL for messages the server makes; m
 * and what it points to are valid during the call only.
 */
typedef void (*server_msg_hook)(void *ctx, struct client *from, const proto_msg_t *m);

/* Every published message except admin requests: the hook decides where it
 * goes (it ends in server_route / server_route_flags). */
void server_set_ingress(server_t *s, server_msg_hook fn, void *ctx);

/* Every $TIDE.ADMIN.> request, and every $TIDE.NODE.> request (addressed
 * to one node: the hook answers it here or sends it on; the publisher's
 * permissions were checked for $TIDE.<rest> too).  Without a hook such
 * requests are answered {"ok":false,...}. */
void server_set_admin(server_t *s, server_msg_hook fn, void *ctx);

struct auth_config;
/*
 * Sets who may connect and what each may do (auth.h); NULL: anyone,
 * anything (the default).  Takes a reference to cfg (the caller keeps its
 * own).  Applied at once: new connections must authenticate, live ones
 * take their user's new permissions, lose the subscriptions these no
 * longer allow, and are closed when their user is gone.
 */
void server_set_auth(server_t *s, struct auth_config *cfg);
/* The auth in force, NULL when none.  Valid until the next
 * server_set_auth; loop thread only. */
const struct auth_config *server_auth(const server_t *s);

/* INFO tells clients "jetstream":true from now on (on != 0): set when
 * the layers above answer the JetStream API. */
void server_set_info_jetstream(server_t *s, int on);

/* Publishes payload to req's reply subject, if it has one (an admin or API
 * answer). */
void server_reply(server_t *s, const proto_msg_t *req, const char *payload, size_t len);

/*
 * For a listener's accept error: when it is for want of a descriptor
 * (EMFILE, ENFILE), uses the server's reserved one to accept the waiting
 * connection, send it msg (len bytes) and close it, and returns 1; else 0
 * (errno untouched).  The NATS listener does this itself; other listeners
 * on the loop (HTTP) call it from their error callback.
 */
int server_refuse_pending(server_t *s, int listen_fd, const char *msg, size_t len);

/* True when c (may be NULL: false) connected from a loopback address. */
int server_client_is_loopback(const struct client *c);

/* Calls fn with every message published into the router (by clients, the
 * prompt or HTTP; not admin requests, not what handlers publish), before
 * the pipeline.  One tap; NULL removes it. */
void server_set_input_tap(server_t *s, void (*fn)(void *ctx, const proto_msg_t *m), void *ctx);

struct streams;
/* Attaches the persistent queue: fn is offered every routed message (except
 * ROUTE_NO_CAPTURE ones) and returns 0 when no stream takes it, > 0 when a
 * stream stored it, < 0 when a stream took it but refused to store it (in
 * both cases the stream answers a reply subject itself).  NULL detaches it. */
void server_set_capture(server_t *s, int (*fn)(void *ctx, const proto_msg_t *m), void *ctx);
/* Pauses capture (paused != 0) or resumes it (0): while paused, routed
 * messages are not offered to the streams, as if every route had
 * ROUTE_NO_CAPTURE.  tide repl's replay() runs stored events through the
 * pipeline again this way, without storing them (or what they cause) a
 * second time.  Returns the previous setting. */
int server_pause_capture(server_t *s, int paused);
/* True when some subscription matches subject. */
int server_has_interest(server_t *s, const char *subject, size_t len);

/*
 * Subscribes a function inside the server: fn(ctx, msg) is called for every
 * message routed to a subject pattern matches (msg valid during the call).
 * Returns the subscription (freed with the server, or by
 * server_unsubscribe_internal), or NULL.
 */
/* sub_t.flags of an internal subscription that answers the requests it
 * receives (a request to it gets no "no responders" status). */
#define SUB_RESPONDER 1
/* sub_t.flags of an internal subscription removed while a route was under
 * way: it receives nothing more and is freed when the route ends. */
#define SUB_GONE 2

/* sub_t.flags of an internal subscription that receives what a client's
 * subscription on its pattern would (server_subscribe_as_client). */
#define SUB_AS_CLIENT 4

sub_t *server_subscribe_internal(server_t *s, const char *pattern, void (*fn)(void *, const proto_msg_t *),
                                 void *ctx);

/*
 * server_subscribe_internal for a watcher that stands for a person (an
 * HTTP tail, sub() at the prompt): it receives what a client subscribed
 * to pattern here would.  In cluster mode that is what the cluster
 * delivers on it, whichever node published it: the subscription is
 * announced to the cluster's `interest` hook (added here, removed by
 * server_unsubscribe_internal), and a message that goes to the cluster
 * reaches it from there, not here as well.  Returns the subscription
 * (flag SUB_AS_CLIENT), or NULL.  Loop thread only.
 */
sub_t *server_subscribe_as_client(server_t *s, const char *pattern, void (*fn)(void *, const proto_msg_t *),
                                  void *ctx);

/* Removes and frees a subscription made by server_subscribe_internal or
 * server_subscribe_as_client (NULL: nothing); fn is not called again.  May
 * be called from anywhere on the loop, a delivery included (then it is
 * freed once the route is over). */
void server_unsubscribe_internal(server_t *s, sub_t *sub);

/* Calls fn(ctx, c) for every client as the server frees it, from the loop
 * and outside any route, after its connection closed (not for the clients
 * server_free frees).  One hook; NULL removes it. */
void server_set_close_hook(server_t *s, void (*fn)(void *ctx, struct client *c), void *ctx);

void server_get_stats(const server_t *s, server_stats_t *out);

/* The server's counters as a new cJSON object (caller deletes; NULL when
 * out of memory): the core of $TIDE.ADMIN.STATS and GET /v1/stats. */
cJSON *server_stats_object(server_t *s);

/* Clients connected now. */
size_t server_connections(const server_t *s);

/*
 * TLS.  New connections get the context set last (the server takes a
 * reference; NULL: plain connections again); connections already made
 * keep theirs.  server_tls returns the current one (NULL: none), valid
 * until the next server_set_tls unless the caller takes a reference.
 */
struct tls_context;
void server_set_tls(server_t *s, struct tls_context *t);
struct tls_context *server_tls(const server_t *s);

/* Event priorities on the server's loop (0 is the most urgent; events get
 * SERVER_PRIORITY_NORMAL unless set).  Callbacks at
 * SERVER_PRIORITY_HANDSHAKE (TLS handshakes) run only when nothing more
 * urgent is ready, and one per loop pass. */
#define SERVER_PRIORITIES 3
#define SERVER_PRIORITY_NORMAL 1
#define SERVER_PRIORITY_HANDSHAKE 2

struct event_base;
/* The server's event loop, for adding events of one's own (tide repl's stdin). */
struct event_base *server_base(server_t *s);
const server_opts_t *server_get_opts(const server_t *s);
const char *server_id(const server_t *s);

/*
 * Cluster mode: the layer above carries messages between nodes over an
 * upstream NATS cluster (app/cluster.c).  With hooks set, a routed message
 * whose subject travels (server_subject_travels) goes to `egress` instead
 * of to the clients here, which receive it back from the cluster through
 * the subscriptions `interest` mirrors there (server_deliver_sub), as do
 * the internal ones made by server_subscribe_as_client; the other
 * subscriptions inside the server still get it here.  An answer
 * (ROUTE_ANSWER, ROUTE_NO_CAPTURE) that a client here subscribes to stays
 * here.  A message routed to another subject than its own
 * (server_route_to) stays here.
 */
typedef struct server_cluster_hooks {
    /* Takes m for the cluster (m is valid during the call): 0 when it was
     * sent or queued for sending, -1 when refused, with the reason in err.
     * origin is the id of the client here that published m when that
     * client asked for no echo ("echo":false), else 0: m must come back
     * with it (server_deliver_sub_origin).  answered is 1 when m has a
     * reply subject that something here answers (a stream's PubAck, a
     * rule's handler), so that the cluster's "no responders" for it is
     * not news to the requester. */
    int (*egress)(void *ctx, const proto_msg_t *m, uint64_t origin, int answered, char *err, size_t errsz);
    /* A client's subscription, or an internal one made by
     * server_subscribe_as_client (sub->owner NULL), was added (added = 1)
     * or is about to be freed (0); sub is valid until then. */
    void (*interest)(void *ctx, sub_t *sub, int added);
    void *ctx;
} server_cluster_hooks_t;

/* Sets the hooks (copied; NULL: cluster mode off).  Clients' subscriptions
 * (and the internal ones made by server_subscribe_as_client) made before
 * the call are announced to `interest` at once. */
void server_set_cluster(server_t *s, const server_cluster_hooks_t *hooks);

/* True when a message on subject (or a subscription on pattern) travels
 * in cluster mode: every subject except those beginning with '$', which
 * stay on their node ($TIDE., $JS., $KV., ...), and $TIDE.CLUSTER.>. */
int server_subject_travels(const char *subject, size_t len);

/* Delivers m to the one client subscription sub, or internal one made by
 * server_subscribe_as_client (a message that arrived from the cluster for
 * it), as a route would; no capture, no hooks.
 * Returns 1 when delivered, 0 when sub cannot take it now. */
int server_deliver_sub(server_t *s, sub_t *sub, const proto_msg_t *m);

/* server_deliver_sub for a message the client here with id origin
 * published (0: none), as egress was told: it is not delivered to that
 * client when it asked for no echo.  When sub is that client's queue
 * subscription, another member of the group here gets it, or, with none
 * here, the publisher does (the cluster picked its member; the group
 * does not lose the message).  Returns 1 when delivered, else 0. */
int server_deliver_sub_origin(server_t *s, sub_t *sub, const proto_msg_t *m, uint64_t origin);

#endif
