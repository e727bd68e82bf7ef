/*
 * json.h - the JSON codec, on cJSON, knowing no Lua.
 *
 * What is JSON is decided in one place, json_scan, strictly by RFC 8259
 * (json.c lists the rules); every reader (the tape events are read
 * through, json_parse, json_parse_exact) accepts exactly what it accepts.
 *
 * json_scan checks a document and records a tape of tokens over the text
 * (no tree, nothing allocated per value).  Trees (json_tree.c) are cJSON
 * trees built from a tape.  cJSON reads numbers as doubles and keeps
 * strings NUL-terminated, so the trees here keep text instead where that
 * would lose something: a number node is a raw node holding its original
 * text (1.10 stays 1.10, 12345678901234567890 is not rounded), and in an
 * exact tree a string written with escapes is a raw node holding its JSON
 * text as written, quotes included ("caf\u00e9" stays so; "a\u0000b" keeps
 * its NUL), and such a key is kept as written too (JSON_KEY_SPELLED).
 * How scripts see JSON is script/json_lua.h.
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
#define JSON_TOK_PLAIN 1 /* a string whose bytes are its value: no escapes */
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

/* True when the string text between s and end decodes to the klen bytes
 * at key (NULs included), decoding as it goes. */
int json_escaped_equals(const unsigned char *s, const unsigned char *end, const char *key, size_t klen);

/* The value of string token t of text, decoded: points into the text when
 * it can, else into buf (room for t->len bytes).  Sets *n. */
const char *json_tok_string(const char *text, const json_tok_t *t, char *buf, size_t *n);

/* True for an ASCII digit. */
int json_is_digit(unsigned char c);

/* ---- trees (json_tree.c); the loop thread only, like every cJSON use ---- */

/* An item whose key (item->string) is the key's JSON text as written,
 * quotes and escapes included, in a type bit cJSON leaves alone.  Only
 * exact trees (and keys holding a NUL) have such items; json_print,
 * json_key_bytes and json_object_get know them, cJSON's own functions do
 * not, so exact trees are printed and searched only through this file. */
#define JSON_KEY_SPELLED (1 << 12)

/* Strings an exact tree took from a text without escapes hold no byte a
 * JSON string must escape (json_scan saw to that), so json_print copies
 * them between quotes as they are instead of looking at every byte.
 * JSON_STRING_PLAIN marks such a value (a reference, whose string cJSON
 * never changes), JSON_KEY_PLAIN such a key (a constant one: cJSON drops
 * cJSON_StringIsConst when it gives an item another key, and json_set_key
 * drops both).  json_print trusts the mark only together with
 * cJSON_IsReference or cJSON_StringIsConst; json_duplicate drops them. */
#define JSON_STRING_PLAIN (1 << 13)
#define JSON_KEY_PLAIN (1 << 14)

/* Makes cJSON allocate through tide's block pool.  Call once, before any
 * other cJSON use (json_open does). */
void json_init(void);

/*
 * Builds the tree of a scanned document (text, len; its ntok tokens).
 * exact: strings and keys written with escapes keep their text (see the
 * top of this file), and strings and keys point into *nums; otherwise
 * strings and keys are decoded C strings of their own (a key holding a NUL
 * is cut there, as cJSON does), except a string holding a NUL, which stays
 * a raw node.  Number nodes always hold their text in *nums.  *nums (one
 * allocation, the text with NULs written over delimiters) is owned by the
 * caller and freed after the tree.  nodes, when not NULL (ntok entries),
 * gets each token's node.  Returns NULL when out of memory.
 */
cJSON *json_tree_from_tape(const char *text, size_t len, const json_tok_t *tape, uint32_t ntok, int exact,
                           cJSON **nodes, char **nums);

/*
 * Parses exactly len bytes as one JSON text (json_scan's rules).  Returns
 * the tree, or NULL when the text is not JSON (or out of memory).
 * json_parse gives a tree cJSON's own functions can print, search and
 * copy (decoded strings; see json_tree_from_tape); json_parse_exact an
 * exact tree.  *nums as for json_tree_from_tape.
 */
cJSON *json_parse(const char *text, size_t len, char **nums);
cJSON *json_parse_exact(const char *text, size_t len, char **nums);

/* Compact text of v, malloc'd (caller frees); NULL when out of memory.
 * Prints as cJSON does, and spelled keys and raw nodes as they are. */
char *json_print(const cJSON *v, size_t *len);

/* Writes the n bytes at s as a JSON string, quotes included and escaped
 * as json_print escapes strings, into dst (room for cap bytes).  Returns
 * the length written, or 0 when it does not fit.  Allocates nothing. */
size_t json_write_string(char *dst, size_t cap, const char *s, size_t n);

/* True for number nodes (raw-with-text or plain cJSON numbers). */
int json_is_number(const cJSON *n);

/* True for string nodes (cJSON strings, and raw nodes holding a string's
 * JSON text). */
int json_is_string(const cJSON *n);

/* The bytes of string node n (json_is_string), NULs included: valuestring
 * itself, or decoded into buf, which has room for strlen(valuestring)
 * bytes.  Sets *len. */
const char *json_string_bytes(const cJSON *n, char *buf, size_t *len);

/* The bytes of item's key, NULs included, as json_string_bytes (buf: room
 * for strlen(item->string)).  An item without a key gives "". */
const char *json_key_bytes(const cJSON *item, char *buf, size_t *len);

/* True when item's key is the klen bytes at key, NULs included. */
int json_key_equals(const cJSON *item, const char *key, size_t klen);

/* The nth (1 = the first) member of object obj whose key is the klen bytes
 * at key, NULs included, or NULL. */
cJSON *json_object_get(const cJSON *obj, const char *key, size_t klen, unsigned nth);

/* A new string node for len bytes at s (a raw node with its JSON text when
 * they hold a NUL), or NULL when out of memory. */
cJSON *json_new_string(const char *s, size_t len);

/* Gives item the key of klen bytes at key (copied; spelled when it holds a
 * NUL), replacing any it has.  0, or -1 when out of memory. */
int json_set_key(cJSON *item, const char *key, size_t klen);

/* A deep copy of n that owns all its text (no references into anything),
 * without n's key; NULL when out of memory. */
cJSON *json_duplicate(const cJSON *n);

#endif
