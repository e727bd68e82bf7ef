/* msgq.c - see msgq.h. */
#include <stdlib.h>
#include <string.h>

#include "msgq.h"

int msgq_push(msgq_t *q, const proto_msg_t *m, int depth)
{
    size_t hl = m->hdr ? m->hdr_len : 0, rl = m->reply ? m->reply_len : 0;
    /* One allocation: the item, then subject, reply, headers, payload. */
    msgq_item_t *it = malloc(sizeof *it + m->subject_len + 1 + rl + 1 + hl + m->payload_len + 1);
    if (!it)
        return -1;
    char *p = (char *)(it + 1);
    memset(it, 0, sizeof *it);
    it->depth = depth;
    it->m.subject = p;
    it->m.subject_len = m->subject_len;
    memcpy(p, m->subject, m->subject_len);
    p += m->subject_len;
    *p++ = '\0';
    if (m->reply) {
        it->m.reply = p;
        it->m.reply_len = rl;
        memcpy(p, m->reply, rl);
        p += rl;
    }
    *p++ = '\0';
    if (hl) {
        it->m.hdr = p;
        it->m.hdr_len = hl;
        memcpy(p, m->hdr, hl);
        p += hl;
    }
    it->m.payload = p;
    it->m.payload_len = m->payload_len;
    memcpy(p, m->payload, m->payload_len);
    p[m->payload_len] = '\0';
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->bytes += hl + m->payload_len;
    return 0;
}

msgq_item_t *msgq_pop(msgq_t *q)
{
    msgq_item_t *it = q->head;
    if (!it)
        return NULL;
    q->head = it->next;
    if (!q->head)
        q->tail = NULL;
    q->bytes -= it->m.hdr_len + it->m.payload_len;
    it->next = NULL;
    return it;
}

void msgq_item_free(msgq_item_t *it)
{
    free(it);
}

void msgq_clear(msgq_t *q)
{
    msgq_item_t *it;
    while ((it = msgq_pop(q)))
        msgq_item_free(it);
}
