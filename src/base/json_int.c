/* json_int.c - whole numbers in cJSON trees, exactly (see json_int.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "json_int.h"

cJSON *json_uint(uint64_t v)
{
    char text[24];
    snprintf(text, sizeof text, "%" PRIu64, v);
    return cJSON_CreateRaw(text);
}

cJSON *json_int(int64_t v)
{
    char text[24];
    snprintf(text, sizeof text, "%" PRId64, v);
    return cJSON_CreateRaw(text);
}

static cJSON *add(cJSON *obj, const char *key, cJSON *n)
{
    if (n && !cJSON_AddItemToObject(obj, key, n)) {
        cJSON_Delete(n);
        return NULL;
    }
    return n;
}

cJSON *json_add_uint(cJSON *obj, const char *key, uint64_t v) { return add(obj, key, json_uint(v)); }
cJSON *json_add_int(cJSON *obj, const char *key, int64_t v) { return add(obj, key, json_int(v)); }

cJSON *json_append_uint(cJSON *arr, uint64_t v)
{
    cJSON *n = json_uint(v);
    if (n && !cJSON_AddItemToArray(arr, n)) {
        cJSON_Delete(n);
        return NULL;
    }
    return n;
}

/* Whole numbers as text: digits only, or what strtod reads as a whole
 * number a double holds exactly (1e3, 5.0). */
static int text_uint(const char *s, uint64_t *out)
{
    size_t n = strlen(s);
    if (n && strspn(s, "0123456789") == n) {
        errno = 0;
        unsigned long long v = strtoull(s, NULL, 10);
        if (errno == ERANGE)
            return -1;
        *out = (uint64_t)v;
        return 0;
    }
    char *end;
    double d = strtod(s, &end);
    if (end == s || *end || !(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d)
        return -1;
    *out = (uint64_t)d;
    return 0;
}

int json_get_uint(const cJSON *n, uint64_t *out)
{
    if (cJSON_IsRaw(n) && n->valuestring)
        return text_uint(n->valuestring, out);
    if (!cJSON_IsNumber(n))
        return -1;
    double d = n->valuedouble;
    /* 2^64 itself is the first double out of range. */
    if (!(d >= 0 && d < 18446744073709551616.0) || d != (double)(uint64_t)d)
        return -1;
    *out = (uint64_t)d;
    return 0;
}

cJSON *json_parse_owned(const char *text, size_t len)
{
    char *nums = NULL;
    cJSON *tree = json_parse(text, len, &nums);
    /* A copy owns what it holds: the numbers' text comes along. */
    cJSON *own = tree ? cJSON_Duplicate(tree, 1) : NULL;
    cJSON_Delete(tree);
    free(nums);
    return own;
}

int json_get_uint_member(const cJSON *obj, const char *key, uint64_t *out)
{
    return json_get_uint(obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL, out);
}
