/* util.c - see util.h. */
#include <stdlib.h>
#include <string.h>

#include "util.h"

char *mem_dup(const void *p, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, p, n);
    d[n] = '\0';
    return d;
}
