/*
 * dlq.h - dead letters as an operator sees them ($TIDE.ADMIN.DLQ.*, the
 * `tide dlq` commands), and two read-only questions about the streams that
 * the HTTP face asks before and after it publishes.
 *
 * A dead letter is a message a consumer (or the script pipeline) published
 * to its dead_letter subject, built by dead_letter.h (which lists its
 * Tide-* headers).  Like any message it is stored when a stream captures
 * that subject; that stream is where `tide dlq show` and `tide dlq replay`
 * look.
 *
 *   DLQ.LS      -> [{"consumer","stream","dead_letter","dead_lettered",
 *                    "dead_letters_lost","dlq_stream","messages"}]
 *                  (consumers with a dead_letter)
 *   DLQ.SHOW    {"stream":S,"from_seq":n,"limit":n} or S
 *               -> {"stream":S,"dead_letters":[{"seq","time","subject",
 *                   "original_subject","reason","stage","error",
 *                   "deliveries","consumer","source_stream","source_seq",
 *                   "script","headers","data"|"payload"}],"next_seq":n,
 *                   "more":bool}
 *   DLQ.REPLAY  {"stream":S,"seq":n}
 *               | {"stream":S,"all":true[,"from_seq":n,"until_seq":n]}
 *               -> {"ok":true,"stream":S,"replayed":n,"seqs":[...],
 *                   "stored":n,"duplicates":n,"refused":n}
 *                  (all: also "next_seq","until_seq","more")
 *
 * SHOW and a replay of all answer one bounded page (at most 1,000 dead
 * letters shown, about 512 KiB of them, or 256 replayed; 100,000 records
 * looked at; about 20 ms): "more" says to ask again from "next_seq".  The
 * first page of a replay fixes "until_seq", the stream's last record then,
 * and the next pages pass it back, so the dead letters the replays
 * themselves make are not replayed again.
 *
 * Replay publishes each dead letter to its Tide-Original-Subject through
 * server_publish (the pipeline, then the streams), with the event's own
 * headers: the dead-letter headers, Nats-Expected-* and Nats-Msg-Id are
 * dropped and Nats-Msg-Id: tide-replay.<stream>.<seq> is added, so the
 * replay is not taken for a duplicate of the original (whose dedup key is
 * still in the window) while replaying the same dead letter twice is.
 */
#ifndef TIDE_DLQ_H
#define TIDE_DLQ_H

#include <stddef.h>

#include "stream.h"

struct proto_msg;

/* Answers $TIDE.ADMIN.DLQ.LS / SHOW / REPLAY; 1 when verb is one of them. */
int dlq_admin(streams_t *sm, const char *verb, size_t vlen, const struct proto_msg *req);

/* The name of the stream that stores messages published to subject, or NULL. */
const char *dlq_capturing_stream(streams_t *sm, const char *subject, size_t len);

/* PubAcks waiting for their record to be durable whose reply subject starts
 * with prefix (any stream). */
size_t dlq_pending_pubacks(streams_t *sm, const char *prefix, size_t len);

#endif
