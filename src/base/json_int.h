/*
 * json_int.h - whole numbers in cJSON trees, exactly.
 *
 * cJSON keeps every number as a double, which holds each integer only up
 * to 2^53: a sequence number, counter or byte count past that would be
 * printed rounded (and cJSON prints 15 significant digits, so even less
 * survives).  These helpers make number nodes that hold the integer's
 * decimal text (cJSON raw nodes, printed as they are), and read whole
 * numbers back from a node exactly: from such text (what json_parse leaves
 * in every number node) or from a plain cJSON number.
 *
 * Every JSON answer that carries a sequence number, counter or size is
 * built with these.  Readers of such a tree test numbers with
 * json_is_number or json_get_uint, not cJSON_IsNumber.
 */
#ifndef TIDE_JSON_INT_H
#define TIDE_JSON_INT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* A number node holding v exactly (caller owns it); NULL when out of memory. */
cJSON *json_uint(uint64_t v);
cJSON *json_int(int64_t v);

/* Adds "key": v to object obj.  Returns the node, or NULL when out of
 * memory (obj is left as it was). */
cJSON *json_add_uint(cJSON *obj, const char *key, uint64_t v);
cJSON *json_add_int(cJSON *obj, const char *key, int64_t v);

/* Appends v to array arr.  Returns the node, or NULL when out of memory. */
cJSON *json_append_uint(cJSON *arr, uint64_t v);

/*
 * Reads n as a whole number from 0 to 2^64 - 1: a number node with its
 * text (json_parse, json_uint) read digit by digit, or a cJSON number
 * that is whole.  Returns 0 with *out set, or -1 when n is no such number
 * (missing, not a number, negative, fractional, too big).
 */
int json_get_uint(const cJSON *n, uint64_t *out);

/* The same for member key of object obj. */
int json_get_uint_member(const cJSON *obj, const char *key, uint64_t *out);

/*
 * Parses len bytes of text as json_parse does (numbers keep their text),
 * into a tree that owns all of it: the caller frees it with cJSON_Delete
 * alone.  For requests and answers that are read, not kept for long.
 * NULL when the text is not JSON or memory runs out.
 */
cJSON *json_parse_owned(const char *text, size_t len);

#endif
