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
 *    JSON whatever a client sent, so that no JSON reader drops it.
 * And how lines reach stderr: each is built in full on the caller's stack;
 * until log_start and after log_stop it is written there and then with one
 * write(2) (a config error or a start-up failure is on stderr before the
 * exit). In between -- while the daemon serves -- it is copied into one
 * ring of LOG_BUFFER_BYTES, allocated once by log_start, and one writer
 * thread drains the ring to fd 2 with blocking writes: a reader of stderr
 * that stops reading (a stopped `docker logs`, journald, a pipe nobody
 * drains) fills the pipe and holds the writer, never an HTTP thread, a
 * worker or the drain (the HTTP threads blocked in write(2) after some 200
 * requests: probes, /metrics and inference timed out, and a SIGTERM drain
 * hung on its first line). A line that does not fit the ring is dropped,
 * not waited for, and counted (log_lines_dropped, /metrics'
 * comrope_log_lines_dropped_total, which also counts the lines a closed
 * stderr refused), and one warning line in the log's
 * format, "log: N lines dropped ...", comes before the next line that fits
 * (or alone, from the writer, once the ring is empty). Lines stay whole and in order (one
 * ring, one writer), those of one thread in the order it logged them. fd 2
 * stays blocking: O_NONBLOCK would be set on an open file description the
 * parent and the terminal share. (The daemon neither forks nor execs: a
 * forked child would have no writer, and perhaps the ring's lock held.) */
#ifndef COMROPE_LOG_H
#define COMROPE_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <sys/uio.h>

enum { LOG_TEXT = 0, LOG_JSON };

/* Set once at start-up, before threads start; text until then. */
void log_set_format(int format);

/* The ring's size: some 3,000 access lines of the usual 300 bytes (the
 * longest are 8 KiB), seconds of a busy daemon's log for a reader that
 * stalls briefly. */
#define LOG_BUFFER_BYTES (1 << 20)

/* Allocates the ring and starts the writer thread (with the caller's
 * signal mask); from here on no caller waits on stderr. 0, or -1 with
 * err: the log stays synchronous. Once, by the main thread. */
int log_start(char *err, size_t errlen);
/* Waits up to timeout_ms for the writer to write out the ring, then stops
 * it: 0, and the log is synchronous again. -1: stderr did not take it in
 * time (its reader stalled); the writer is left blocked, lines still go
 * to the ring (or are dropped), and the caller exits without waiting. */
int log_stop(int timeout_ms);
/* Lines dropped since the start, the ring being full or stderr refusing
 * them (closed: EPIPE) (a counter). */
unsigned long long log_lines_dropped(void);

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

/* The ring between the logging threads and the writer (the caller holds
 * the lock), for the tests: used bytes from start, wrapping at cap. */
typedef struct {
    char *data;
    size_t cap, start, used;
    unsigned long long dropped;       /* since the last "lines dropped" line */
    unsigned long long dropped_total; /* since the start, with those stderr refused */
    /* the "lines dropped" line's length for 1 line in the format of
     * dropped_len_format (0: not yet known), and how many such lines were
     * formatted (the tests': none for a line dropped) */
    size_t dropped_len1;
    int dropped_len_format;
    unsigned long long notices_formatted;
} log_ring;
/* Appends a whole line (after the "lines dropped" line if lines were
 * dropped since the last one): 0, or -1 when it does not fit, the line
 * dropped and counted. Never waits. */
int log_ring_put(log_ring *r, const char *line, size_t len);
/* The writer's, the ring empty: the "lines dropped" line alone. 0, or -1
 * (nothing dropped, or it does not fit). */
int log_ring_put_dropped(log_ring *r);
/* The bytes to write next, in one or two pieces (the ring wraps): the
 * number of pieces, 0 when empty. */
int log_ring_peek(const log_ring *r, struct iovec iov[2]);
/* n bytes written: their room is free again. */
void log_ring_consume(log_ring *r, size_t n);

#endif
