/* text.h: a growing text buffer, for the answers built line by line
 * (the Prometheus exposition in metrics.c, the repository's index and
 * state series in repository.c).
 *
 * Owns: data, grown by realloc as text_put appends (the caller frees it).
 * A failed format or allocation sets failed and makes every later
 * text_put a no-op, so a writer checks once, at the end. */
#ifndef COMROPE_TEXT_H
#define COMROPE_TEXT_H

#include <stddef.h>

typedef struct {
    char *data; /* NUL-terminated once anything was put; may start NULL */
    size_t len, cap;
    int failed;
} text;

/* Appends printf(fmt, ...) to t. */
void text_put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
