/* record.c - see record.h. */
#include <string.h>

#include "crc32c.h"
#include "record.h"

static uint32_t get32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

void record_seal(char *rec, uint32_t magic, uint32_t len)
{
    memcpy(rec, &magic, 4);
    memcpy(rec + 8, &len, 4);
    uint32_t crc = crc32c(0, rec + 8, len - 8);
    memcpy(rec + 4, &crc, 4);
}

uint32_t record_check(const record_kind_t *k, const char *p, size_t avail)
{
    if (avail < RECORD_HDR || get32(p) != k->magic)
        return 0;
    uint32_t len = get32(p + 8);
    if (len < k->min_len || len < RECORD_HDR || len > k->max_len || len > avail)
        return 0;
    if (crc32c(0, p + 8, len - 8) != get32(p + 4))
        return 0;
    return !k->check || k->check(p, len) ? len : 0;
}

size_t record_next(const record_kind_t *k, const char *b, size_t n, size_t from)
{
    char magic[4];
    memcpy(magic, &k->magic, 4);
    for (size_t q = from; q + RECORD_HDR <= n; q++) {
        const char *m = memmem(b + q, n - q, magic, 4);
        if (!m)
            break;
        q = (size_t)(m - b);
        if (record_check(k, b + q, n - q))
            return q;
    }
    return n;
}
