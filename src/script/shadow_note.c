/* shadow_note.c - what an event does, noted for the shadow's comparison
 * (shadow.c).  A leaf: the pipeline and tide.kv call it, it calls nothing
 * of theirs.  Per event it only sums (CRC-32C, in hardware where the CPU
 * has it) and copies a few short strings; no allocation, no formatting. */
#include "crc32c.h"
#include "script_internal.h"

void shadow_decision_reset(shadow_decision_t *d)
{
    memset(d->n, 0, sizeof d->n);
    memset(d->sum, 0, sizeof d->sum);
    d->subjects = 0;
    d->where[0] = '\0';
    d->nitems = 0;
}

/* Sums p with its length (mixed into the running sum, so that "ab","c"
 * is not "a","bc"). */
static uint32_t sum_add(uint32_t crc, const char *p, size_t n)
{
    crc = (crc ^ (uint32_t)n) * 0x9e3779b1u;
    return n ? crc32c(crc, p, n) : crc;
}

static void copy_cut(char *out, size_t cap, const char *p, size_t n)
{
    n = n < cap - 1 ? n : cap - 1;
    if (n)
        memcpy(out, p, n);
    out[n] = '\0';
}

void shadow_note(script_host_t *h, int kind, const char *subject, size_t sl, const char *data, size_t dl,
                 const char *where)
{
    shadow_decision_t *d = h->rec;
    d->n[kind]++;
    d->sum[kind] = sum_add(sum_add(d->sum[kind], subject, subject ? sl : 0), data, data ? dl : 0);
    if (kind == SHADOW_DELIVER)
        d->subjects = sum_add(d->subjects, subject, sl);
    if (where) {
        size_t wl = strlen(where);
        d->sum[kind] = sum_add(d->sum[kind], where, wl);
        copy_cut(d->where, sizeof d->where, where, wl);
    }
    if (d->nitems == SHADOW_ITEMS)
        return;
    shadow_item_t *it = &d->items[d->nitems++];
    it->kind = kind;
    it->subject_len = subject ? sl : 0;
    it->data_len = data ? dl : 0;
    copy_cut(it->subject, sizeof it->subject, subject, it->subject_len);
    copy_cut(it->data, sizeof it->data, data, it->data_len);
    copy_cut(it->where, sizeof it->where, where, where ? strlen(where) : 0);
}
