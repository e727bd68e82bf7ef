/*
 * client.h - one NATS client connection: its socket (a bufferevent), its
 * parser state, its subscriptions, its options from CONNECT.
 *
 * Connections are never freed inside their own callback chain: client_close
 * marks one closing (it gets no more deliveries and reads no more input)
 * and the server frees it from a later loop callback, once its last bytes
 * are written or its write deadline passes.
 */
#ifndef TIDE_CLIENT_H
#define TIDE_CLIENT_H

#include <stdint.h>
#include <event2/bufferevent.h>

#include "dict.h"
#include "proto.h"
#include "server.h"

enum client_flags {
    CLIENT_VERBOSE = 1 << 0,
    CLIENT_PEDANTIC = 1 << 1,
    CLIENT_NO_ECHO = 1 << 2,
    CLIENT_HEADERS = 1 << 3,       /* understands HMSG */
    CLIENT_NO_RESPONDERS = 1 << 4, /* wants a 503 status when a request has no responders */
    CLIENT_CONNECTED = 1 << 5,     /* CONNECT received */
    CLIENT_CLOSING = 1 << 6,
    CLIENT_FREE_SCHEDULED = 1 << 7,
    CLIENT_ACTIVE = 1 << 8,        /* sent something since the last ping tick */
    CLIENT_FLUSH_PENDING = 1 << 9, /* on the server's list of output to write */
    CLIENT_AUTHED = 1 << 10,       /* auth is on and it passed (client_auth.c) */
    CLIENT_ADMIN = 1 << 11,        /* its user has admin = true */
    CLIENT_AUTH_HOLD = 1 << 12,    /* its password is being checked: its input waits */
    CLIENT_BY_TOKEN = 1 << 13,     /* it passed with the shared token */
    CLIENT_TLS = 1 << 14,          /* a TLS connection (c->tls); c->bev is NULL until its handshake is done */
    CLIENT_BY_NKEY = 1 << 15,      /* it passed by signing its nonce with an nkey */
};

struct client_tls;

/* sub_t.flags of a client's wildcard subscription that a subscribe deny
 * pattern may cover: each message is checked before delivery. */
#define SUB_DENY_CHECK 4

typedef struct client {
    server_t *srv;
    struct bufferevent *bev;    /* the socket, and what is queued to write to it */
    struct event *read_ev;      /* reads go around the bufferevent (client.c); NULL with TLS */
    struct client_tls *tls;     /* the TLS side of a TLS connection (client_tls.c), else NULL */
    struct evbuffer *in;        /* read, not parsed yet */
    uint64_t id;
    int flags;
    char ip[64];
    int port;
    proto_parser_t parser;
    dict_t subs; /* sid -> sub_t* */
    size_t subs_drop_at; /* client_drop_subs' place in subs' slots */
    int pings_out;
    struct event *ping_timer;
    char name[128];
    char lang[32];
    char version[32];
    uint64_t in_msgs, out_msgs;
    size_t queued; /* output bytes counted in the server's total (client_deliver) */
    size_t out_room; /* free bytes after the output's last chain, as client_deliver left it */
    struct server_output *output; /* that total: the server's */
    struct client *prev, *next; /* the server's list of live clients */
    struct client *next_dead;   /* the server's list of clients to free */
    struct client *flush_prev, *flush_next; /* the server's list of output to write */
    /* Identity and permissions, when the server has auth (client_auth.c). */
    char *user;                    /* the user it is (an nkey user: its public key), NULL for none or a token */
    char nonce[16];                /* what its INFO asked it to sign, "" when no nkey user was configured */
    const struct auth_perms *perms; /* what it may do, in the server's config; NULL: all */
    struct authq_job *auth_job;    /* its password being checked, or NULL */
    struct event *auth_timer;      /* 'Authentication Timeout' until its CONNECT */
    dict_t pub_seen;               /* subject -> PUB_ALLOWED/PUB_REFUSED: publish decisions */
    char pub_last[64];             /* the subject it last published and may, when it fits */
    unsigned char pub_last_len;    /* its length; 0: none (set anew with the permissions) */
    dict_t replies;                /* allow_responses: reply subject -> its grant */
} client_t;

/* Takes ownership of fd (a connected socket) and sends INFO.  Returns NULL on failure (fd closed). */
client_t *client_new(server_t *srv, int fd, const char *ip, int port);

/* Sends INFO and starts reading.  Separate from client_new so the server
 * can link the client and give it an id first. */
void client_start(client_t *c);

/* Unsubscribes s (one of c's subscriptions) and frees it.  Not while a
 * sublist result that may hold s is being walked. */
void client_remove_sub(client_t *c, sub_t *s);

/* Flags for client_close. */
#define CLIENT_CLOSE_NOW 0
#define CLIENT_CLOSE_FLUSH 1

/* Marks c closing (idempotent).  With CLIENT_CLOSE_FLUSH, queued output is
 * written first, for at most the write deadline. */
void client_close(client_t *c, int how, const char *reason);

/* Queues "-ERR '<msg>'\r\n". */
void client_send_err(client_t *c, const char *msg);

/*
 * Queues a MSG (or HMSG, when the client understands headers and the message
 * has them) for subscription `sub`.  Returns 0, or -1 when the client is
 * closing or just became a slow consumer.
 */
int client_deliver(client_t *c, const sub_t *sub, const proto_msg_t *m);

/*
 * Called by the server only, for a closed client: unsubscribes and frees up
 * to max of c's subscriptions, so that a connection holding very many can
 * be torn down over several turns of the loop.  Returns how many are left.
 */
size_t client_drop_subs(client_t *c, size_t max);

/* True when tls { verify, map_user } applies to c: its user is the one its
 * certificate's CN names (client_tls_cn), once its handshake is done. */
int client_tls_maps_user(const struct client *c);

/* Stops reading c's socket (a plain one, or a TLS one past its handshake),
 * and starts again: while a password is checked, c's input waits. */
void client_input_pause(client_t *c);
void client_input_resume(client_t *c);

/* True when c is a TLS connection (its handshake may still be under way). */
int client_is_tls(const struct client *c);

/* With tls { verify = true, map_user = true }: the subject CN of the
 * certificate c presented, once its handshake is done; NULL otherwise
 * (plain connection, no mapping, or handshake not finished).  The name
 * the client is known by in place of a user/password. */
const char *client_tls_cn(const struct client *c);

/* Called by the server only: releases everything c owns. */
void client_free(client_t *c);

/* ---- auth (client_auth.c) ---- */
struct auth_config;
struct cJSON;

/* Before c's INFO: when the server has nkey users, gives c a fresh nonce
 * to sign (c->nonce, which the INFO then carries).  0, or -1 when no
 * random bytes could be had. */
int client_auth_nonce(client_t *c);

/* When the server has auth: arms c's 'Authentication Timeout'.  0, or -1
 * when out of memory. */
int client_auth_start(client_t *c);

/* Checks the credentials of c's CONNECT (obj).  Returns 0 when c may go
 * on (no auth, or it passed), 1 when parsing must stop: c was refused and
 * is closing, or its password is being checked off the loop (c is held:
 * CLIENT_AUTH_HOLD, no input read until the answer). */
int client_auth_connect(client_t *c, const struct cJSON *obj);

/* An operation other than CONNECT came first: with auth and no
 * no_auth_user that is an 'Authorization Violation' (c closing, returns
 * 1); else 0. */
int client_auth_before_connect(client_t *c);

/* True when c may publish m (its subject, or as a response it was granted);
 * else sends the permissions violation and returns 0. */
int client_auth_publish(client_t *c, const proto_msg_t *m);

/* True when c may subscribe to subject (queue may be NULL); else sends the
 * violation and returns 0.  Sets SUB_DENY_CHECK in *flags when the
 * subscription's deliveries must be checked. */
int client_auth_subscribe(client_t *c, const char *subject, size_t len, const char *queue, size_t qlen,
                          int *flags);

/* A message is being delivered to c on sub: 0 when c's permissions keep it
 * from receiving it; else 1 (and, with allow_responses, c may now answer
 * its reply subject). */
int client_auth_deliver(client_t *c, const sub_t *sub, const proto_msg_t *m);

/* The server's auth changed (a reload): c takes the permissions of its
 * user in cfg, loses the subscriptions they no longer allow, or is closed
 * with 'Authorization Violation' when its user is gone. */
void client_auth_reload(client_t *c, const struct auth_config *cfg);

/* c's CONNECT was accepted: marks it connected, answers +OK when verbose,
 * and, when it was held for a password check (held != 0), reads and
 * parses its input again. */
void client_connect_done(client_t *c, int held);

/* Releases what client_auth_* gave c (client_free calls it). */
void client_auth_free(client_t *c);

/* A password check finished (the server's authq calls this). */
struct authq_job;
void client_auth_answer(void *ctx, struct authq_job *job);

/* Server internals shared with client.c. */
sublist_t *server_sublist(server_t *s);
server_stats_t *server_stats_mut(server_t *s);
/* Tells the cluster hook (server_set_cluster) that a client's sub was
 * added (1) or is about to be freed (0).  No-op outside cluster mode. */
void server_note_interest(server_t *s, sub_t *sub, int added);
/* Output queued for all clients together, kept by client_deliver as it
 * queues (so the common case costs no call) and by the server as clients
 * go. */
typedef struct server_output {
    size_t total;
    size_t cap; /* max_pending_total */
} server_output_t;
server_output_t *server_output(server_t *s);

/* The total is over max_pending_total: counts it again, exactly, and cuts
 * the clients with the most queued until it fits.  1 when c itself was
 * cut. */
int server_output_over(server_t *s, client_t *c);
/* Throws away c's queued output, sends -ERR 'Slow Consumer' and closes it. */
void client_cut_slow(client_t *c, const char *why);
void server_schedule_free(server_t *s, client_t *c);
void server_build_info(server_t *s, client_t *c, char *out, size_t outsz);
/* The password checker (started on first use; NULL when it cannot start). */
struct authq *server_authq(server_t *s);
void server_unlink_client(server_t *s, client_t *c);

/*
 * Output is written by the loop once the callback that queued it returns
 * (a burst of deliveries becomes one write per client), straight to the
 * socket: the bufferevent's write event is armed only for what the socket
 * did not take.  server_want_flush puts c on the list of clients with
 * output to write; server_forget_flush takes it off (client_free does).
 * client_flush writes c's output.
 */
void server_want_flush(server_t *s, client_t *c);
void server_forget_flush(server_t *s, client_t *c);
void client_flush(client_t *c);

/*
 * Between client.c and client_tls.c.  A TLS connection starts without a
 * bufferevent: client_tls_begin (from client_new) takes the socket,
 * client_tls_start (from client_start) writes INFO in the clear, as NATS
 * clients expect, and runs the handshake at SERVER_PRIORITY_HANDSHAKE
 * under the handshake timeout; once it is done, client_tls_opened gives
 * the client its OpenSSL bufferevent and traffic flows as on a plain one.
 * client_tls_free releases what client_tls_begin made.  Both return 0 or
 * -1 (c is then closed, or to be freed by the caller).
 */
struct tls_context;
int client_tls_begin(client_t *c, struct tls_context *t, int fd);
int client_tls_start(client_t *c, const char *info, size_t len);
void client_tls_opened(client_t *c, struct bufferevent *bev);
void client_tls_free(client_t *c);

#endif
