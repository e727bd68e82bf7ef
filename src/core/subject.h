/*
 * subject.h - NATS subjects: tokens separated by '.', with the wildcards
 * '*' (exactly one token) and '>' (one or more trailing tokens).  A wildcard
 * is only a wildcard when it is a whole token; "a*b" is a literal token.
 */
#ifndef TIDE_SUBJECT_H
#define TIDE_SUBJECT_H

#include <stdbool.h>
#include <stddef.h>

/* A subscription pattern: non-empty tokens, no whitespace, '>' only last. */
bool subject_valid_pattern(const char *s, size_t len);

/* A publish subject: a valid pattern without wildcard tokens. */
bool subject_valid_literal(const char *s, size_t len);

/* True when the literal `subject` is matched by `pattern`.  Both must be valid. */
bool subject_matches(const char *pattern, size_t plen, const char *subject, size_t slen);

#endif
