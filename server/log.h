/* log.h: the daemon's log on stderr, one line per event, in one format.
 *
 * Owns: the format of every line the daemon writes to stderr once its
 * config is read -- start-up, drain and stop lines, warnings, the access
 * log, libmicrohttpd's own messages -- as text or as JSON (access-log json:
 * every line a JSON object); RFC 3339 UTC timestamps with milliseconds; and
 * the escaping that keeps strings from a client (path, method, request id,
 * user agent) from forging or hiding a line:
 *  - text: bytes outside printable ASCII (controls, DEL, escape sequences,
 *    bytes >= 0x80) and the backslash are written as \xHH / \\, the fields
 *    that are not quoted have their spaces escaped too and every field its
 *    double quotes (the only ones left are around the user agent), so that
 *    a line is always one line and its fields stay where they are; the method, first after the time, keeps
 *    only token characters, so that it cannot pose as "comrope-serve:";
 *  - JSON: valid UTF-8 is kept, controls (C0, DEL, C1) and U+2028/U+2029
 *    are \uXXXX (a reader that breaks lines where Unicode does, as
 *    Python's splitlines, would cut the line there), and bytes that are not
 *    UTF-8 become U+FFFD (as Go's encoding/json does): the line is valid
 *    JSON whatever a client sent, so it is never dropped.
 * Each line is built in full and written with one call, so lines from
 * several threads do not interleave. */
#ifndef COMROPE_LOG_H
#define COMROPE_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum { LOG_TEXT = 0, LOG_JSON };

/* Set once at start-up, before threads start; text until then. */
void log_set_format(int format);

/* A server event: "comrope-serve: <message>" in text, {"time", "level",
 * "msg"} in JSON. level is "info", "warning" or "error". */
void log_event(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_eventv(const char *level, const char *fmt, va_list ap);

/* One answered (or abandoned) request. Strings may be NULL (logged "-"). */
typedef struct {
    const char *method, *path, *request_id, *user_agent;
    int status;
    size_t bytes;
    double ms;
    int completed;               /* 0: the connection ended before the answer was sent */
    const char *model, *version; /* the model a request addressed; NULL: none (not logged) */
} log_access_entry;
void log_access(const log_access_entry *e);

/* The building blocks, for the tests. Each writes a NUL-terminated string
 * into out (cap > 0), cut short at a character boundary if out is too
 * small, and returns its length. */
size_t log_timestamp(char *out, size_t cap); /* 2026-12-06T07:09:24.123Z */
/* kind: a FIELD also escapes spaces and double quotes, a QUOTED field
 * (between "") the double quote, a MESSAGE (the server's own, of the
 * operator's strings) neither; a TOKEN (the method, first after the time) every byte that is
 * not an RFC 9110 token character, ':' among them, so that no access line
 * starts as a server line does ("comrope-serve: error: ..."). */
enum { LOG_ESCAPE_FIELD = 0, LOG_ESCAPE_QUOTED, LOG_ESCAPE_MESSAGE, LOG_ESCAPE_TOKEN };
size_t log_escape_text(char *out, size_t cap, const char *s, int kind);
size_t log_escape_json(char *out, size_t cap, const char *s); /* without the quotes */

#endif
