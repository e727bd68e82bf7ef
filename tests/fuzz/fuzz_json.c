/*
 * fuzz_json.c - libFuzzer target for the JSON layer: json_parse (cJSON
 * plus the pass that keeps each number's text) and json_scan (the tape
 * events read payloads through), which must agree on every input.
 *
 * For every input:
 *   - json_scan accepts it exactly when json_parse does (what counts as
 *     JSON must not depend on which of the two looked);
 * for every input cJSON accepts:
 *   - every number node carries text that strtod reads completely;
 *   - printing the tree gives JSON that parses again to a tree that prints
 *     the same (number texts survive a round trip unchanged);
 *   - the tree built from the tape (what a write to an event starts from)
 *     prints exactly as cJSON's own tree does.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../../src/script/json_lua.h"

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

/* The tree json_owner_tree builds from the tape of data, printed. */
static char *print_from_tape(const uint8_t *data, size_t size, long ntok, size_t *len)
{
    static lua_State *L;
    if (!L) {
        L = luaL_newstate();
        json_open(L);
        lua_pop(L, 1);
    }
    json_tok_t *tape = malloc((size_t)ntok * sizeof *tape);
    if (!tape || json_scan((const char *)data, size, tape, (uint32_t)ntok) != ntok)
        abort();
    json_owner_t *o = lua_newuserdatauv(L, sizeof *o, 1);
    memset(o, 0, sizeof *o);
    o->text = (const char *)data;
    o->text_len = size;
    o->tape = tape;
    o->ntok = (uint32_t)ntok;
    json_tree_t *t = json_owner_tree(L, o, -1);
    char *p = json_print(t->root, len);
    json_tree_free(t);
    lua_settop(L, 0);
    free(tape);
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *nums = NULL, *nums2 = NULL;
    json_init();
    cJSON *v = json_parse((const char *)data, size, &nums);
    long ntok = json_scan((const char *)data, size, NULL, 0);
    if ((v != NULL) != (ntok >= 0))
        abort(); /* the scanner and cJSON disagree on what is JSON */
    if (!v)
        return 0;
    check_numbers(v);
    size_t n1, n2, n3;
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
        char *p3 = print_from_tape(data, size, ntok, &n3);
        if (p3 && (n1 != n3 || memcmp(p1, p3, n1) != 0))
            abort(); /* the tree from the tape is cJSON's tree */
        free(p3);
    }
    free(p1);
    cJSON_Delete(v);
    free(nums);
    return 0;
}
