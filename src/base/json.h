/*
 * json.h - the JSON codec, on cJSON, knowing no Lua.
 *
 * What is JSON is decided in one place, json_scan, strictly by RFC 8259
 * (json.c lists the rules); json_parse accepts exactly what it accepts.
 *
 * Two ways to read a document: json_scan checks it and records a tape of
 * tokens over the text (no tree, nothing allocated per value), and
 * json_parse builds a cJSON tree.  cJSON reads every number as a double, so
 * after parsing, each number node is turned into a raw node holding its
 * original text (json_parse does this in one pass over the text): printing
 * the tree gives untouched numbers exactly as they came in (1.10 stays
 * 1.10, 12345678901234567890 is not rounded).  How scripts see JSON is
 * script/json_lua.h.
 */
#ifndef TIDE_JSON_H
#define TIDE_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* Arrays and objects nest at most this deep (1000 nested: JSON; 1001: not). */
#define JSON_MAX_DEPTH 1000

/*
 * A scanned document: json_scan checks the text and records one token per
 * value (and per object key), in document order, without building a tree.
 * Reading goes through the tokens and the text; a cJSON tree is built only
 * when something needs one (a write, a copy, printing).
 *
 * Layout: an array's elements follow its token; an object's members follow
 * it as key, value, key, value; `next` of any value is the token after its
 * whole subtree, so siblings are found by skipping.
 */
enum json_tok_type { JSON_TOK_NULL = 1, JSON_TOK_FALSE, JSON_TOK_TRUE, JSON_TOK_NUMBER, JSON_TOK_STRING,
                     JSON_TOK_ARRAY, JSON_TOK_OBJECT };
#define JSON_TOK_PLAIN 1 /* a string whose bytes are its value: no escapes, no NUL */
#define JSON_NO_TOK UINT32_MAX

typedef struct json_tok {
    uint32_t start; /* offset of its first byte; strings: the byte after the quote */
    uint32_t len;   /* bytes of its text (strings: between the quotes); arrays, objects: members */
    uint32_t next;  /* index of the token after its subtree */
    uint8_t type;   /* enum json_tok_type */
    uint8_t flags;  /* JSON_TOK_PLAIN */
} json_tok_t;

/*
 * Scans exactly len bytes as one JSON text (RFC 8259; see json.c).  Stores
 * up to cap tokens in tok and returns how many the document has: when that
 * is more than cap, scan again with room for them.  Returns -1 when the
 * text is not JSON (or is 4 GiB or more).  Allocates nothing; any thread.
 */
long json_scan(const char *text, size_t len, json_tok_t *tok, uint32_t cap);

/* Decodes the string text between s and end (its escapes) into out, which
 * has room for end - s bytes.  Returns the decoded length, or -1 when an
 * escape is invalid (out NULL: only checks).  A \u0000 gives a NUL byte. */
long json_decode_string(const unsigned char *s, const unsigned char *end, unsigned char *out);

/* The value of string token t of text, decoded: points into the text when
 * it can, else into buf (room for t->len bytes).  Sets *n. */
const char *json_tok_string(const char *text, const json_tok_t *t, char *buf, size_t *n);

/* True for an ASCII digit. */
int json_is_digit(unsigned char c);

/* Makes cJSON allocate through tide's block pool.  Call once, before any
 * other cJSON use (json_open does). */
void json_init(void);

/*
 * Parses exactly len bytes as one JSON text (json_scan's rules; cJSON
 * builds the tree).  Returns the tree, or NULL when the text is not JSON.  Number
 * nodes become raw nodes whose text lives in *nums (one allocation for the
 * whole document, owned by the caller, freed after the tree).
 */
cJSON *json_parse(const char *text, size_t len, char **nums);

/* Compact text of v, malloc'd (caller frees); NULL when out of memory. */
char *json_print(const cJSON *v, size_t *len);

/* True for number nodes (raw-with-text or plain cJSON numbers). */
int json_is_number(const cJSON *n);

#endif
