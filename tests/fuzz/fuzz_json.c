/*
 * fuzz_json.c - libFuzzer target for json_parse, whose number pass pairs
 * cJSON's nodes with number texts found by scanning the input.
 *
 * For every input cJSON accepts: the parse must not crash, every number
 * node must carry text that strtod reads completely, and printing the tree
 * must give JSON that parses again to a tree that prints the same (the
 * number texts survive a round trip unchanged).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/json.h"

static void check_numbers(const cJSON *n)
{
    for (; n; n = n->next) {
        if ((n->type & 0xff) == cJSON_Raw) {
            char *end;
            if (!n->valuestring || !n->valuestring[0])
                abort();
            strtod(n->valuestring, &end);
            if (*end != '\0')
                abort(); /* the text is not exactly one number */
        }
        check_numbers(n->child);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *nums = NULL, *nums2 = NULL;
    json_init();
    cJSON *v = json_parse((const char *)data, size, &nums);
    if (!v)
        return 0;
    check_numbers(v);
    size_t n1, n2;
    char *p1 = json_print(v, &n1);
    if (p1) {
        cJSON *w = json_parse(p1, n1, &nums2);
        if (!w)
            abort(); /* printed text must be JSON */
        char *p2 = json_print(w, &n2);
        if (p2 && (n1 != n2 || memcmp(p1, p2, n1) != 0))
            abort(); /* and print back identically */
        free(p2);
        cJSON_Delete(w);
        free(nums2);
    }
    free(p1);
    cJSON_Delete(v);
    free(nums);
    return 0;
}
