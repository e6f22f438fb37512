/* log.c: lines on stderr, text or JSON, with client strings escaped.
 * See log.h. */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "proto.h" /* proto_utf8_length */

/* Written once at start-up (log_set_format), before any thread exists;
 * read-only afterwards. */
static int log_format = LOG_TEXT;

/* The access log's strings are bounded by http.c's request (method 15,
 * path 511, request id 127, user agent 255 bytes) and a model's name (255,
 * repository.h); each has room for its worst escape, 6 bytes per byte
 * (JSON's \u00XX; text's \xHH takes 4), so that none is cut: a text line
 * cut a model name of 255 bytes of UTF-8 at 128. */
#define ESCAPED(bytes) (6 * (bytes) + 1)
#define METHOD_ROOM ESCAPED(15)
#define PATH_ROOM ESCAPED(511)
#define REQUEST_ID_ROOM ESCAPED(127)
#define USER_AGENT_ROOM ESCAPED(255)
#define MODEL_ROOM ESCAPED(255)
#define VERSION_ROOM ESCAPED(15)
#define LINE_MAX_BYTES 8192
#define MESSAGE_MAX_BYTES 2048
#define FIELDS_ROOM (METHOD_ROOM + PATH_ROOM + REQUEST_ID_ROOM + USER_AGENT_ROOM + MODEL_ROOM + VERSION_ROOM)
/* 512: the keys, numbers and timestamp around the fields */
_Static_assert(FIELDS_ROOM + 512 <= LINE_MAX_BYTES, "an access line's fields fit its buffer");

void log_set_format(int format) { log_format = format; }

size_t log_timestamp(char *out, size_t cap) {
    struct timespec ts;
    struct tm tm;
    char sec[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(sec, sizeof(sec), "%Y-%m-%dT%H:%M:%S", &tm);
    int n = snprintf(out, cap, "%s.%03ldZ", sec, ts.tv_nsec / 1000000);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* Appends len bytes to out if they fit (with the NUL); 0 if not. */
static int put(char *out, size_t cap, size_t *used, const char *bytes, size_t len) {
    if (*used + len + 1 > cap) return 0;
    memcpy(out + *used, bytes, len);
    *used += len;
    out[*used] = '\0';
    return 1;
}

/* RFC 9110 5.6.2: tchar, what a method is made of. */
static int is_tchar(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

size_t log_escape_text(char *out, size_t cap, const char *s, int kind) {
    size_t used = 0;
    char hex[8];
    out[0] = '\0';
    if (!s) s = "-";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int keep = kind == LOG_ESCAPE_TOKEN
                       ? is_tchar(*p)
                       : *p > 0x20 && *p < 0x7f && !(kind != LOG_ESCAPE_MESSAGE && *p == '"');
        int ok;
        if (*p == '\\') ok = put(out, cap, &used, "\\\\", 2);
        else if (keep) ok = put(out, cap, &used, (const char *)p, 1);
        else if (*p == ' ' && (kind == LOG_ESCAPE_QUOTED || kind == LOG_ESCAPE_MESSAGE))
            ok = put(out, cap, &used, " ", 1);
        else {
            snprintf(hex, sizeof(hex), "\\x%02x", *p);
            ok = put(out, cap, &used, hex, 4);
        }
        if (!ok) break;
    }
    return used;
}

size_t log_escape_json(char *out, size_t cap, const char *s) {
    size_t used = 0, n = s ? strlen(s) : 0;
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    char esc[8];
    out[0] = '\0';
    while (n) {
        size_t len = proto_utf8_length(p, n);
        int ok;
        if (len == 0) { /* not UTF-8: the replacement character, one per byte */
            ok = put(out, cap, &used, "\\ufffd", 6);
            len = 1;
        } else if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            ok = put(out, cap, &used, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", *p);
            ok = put(out, cap, &used, esc, 6);
        } else if ((len == 2 && p[0] == 0xc2 && p[1] < 0xa0) ||
                   (len == 3 && p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9))) {
            /* C1 controls (U+0085 NEL among them) and U+2028/U+2029: line
             * breaks to Unicode-aware readers (Python's splitlines), which
             * would cut the line in pieces, one perhaps a JSON value */
            snprintf(esc, sizeof(esc), "\\u%04x", len == 2 ? p[1] : 0x2000 + (p[2] - 0x80));
            ok = put(out, cap, &used, esc, 6);
        } else {
            ok = put(out, cap, &used, (const char *)p, len);
        }
        if (!ok) break;
        p += len;
        n -= len;
    }
    return used;
}

/* The writer (log.h): its ring and state, under lock. Started and
 * stopped by the main thread (log_start, log_stop); running says where a
 * line goes: the ring (1) or write(2) at once (0). */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t more;    /* to the writer: lines in the ring, or stop */
    pthread_cond_t written; /* to log_stop: the ring is empty (CLOCK_MONOTONIC) */
    log_ring ring;
    int running, stopping, idle;
    pthread_t thread;
} w = {.lock = PTHREAD_MUTEX_INITIALIZER, .more = PTHREAD_COND_INITIALIZER};

/* The lines that end in iov's n pieces. */
static unsigned long long lines_in(const struct iovec *iov, int n) {
    unsigned long long lines = 0;
    for (int i = 0; i < n; i++)
        for (const char *p = iov[i].iov_base, *end = p + iov[i].iov_len; (p = memchr(p, '\n', end - p)); p++)
            lines++;
    return lines;
}

/* Writes all of iov (blocking: fd 2 is never made non-blocking, log.h).
 * An error other than EINTR gives the bytes up, as a lost line always was:
 * a closed pipe (EPIPE, SIGPIPE ignored) is not cured by waiting. Returns
 * the lines given up (not written whole): dropped lines, counted. */
static unsigned long long write_all(struct iovec *iov, int n) {
    while (n) {
        ssize_t wr = writev(STDERR_FILENO, iov, n);
        if (wr < 0 && errno == EINTR) continue;
        if (wr <= 0) return lines_in(iov, n);
        size_t left = (size_t)wr;
        while (n && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            n--;
        }
        if (n) { /* a piece written in part */
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* An event line into line (cap >= LINE_MAX_BYTES): its length. */
static size_t format_event(char *line, size_t cap, const char *level, const char *msg) {
    char ts[40];
    size_t n;
    log_timestamp(ts, sizeof(ts));
    if (log_format == LOG_JSON) {
        n = (size_t)snprintf(line, cap, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts, level);
        n += log_escape_json(line + n, cap - n - 3, msg);
        n += (size_t)snprintf(line + n, cap - n, "\"}\n");
    } else {
        n = (size_t)snprintf(line, cap, "%s comrope-serve: %s", ts,
                             strcmp(level, "info") == 0      ? ""
                             : strcmp(level, "warning") == 0 ? "warning: "
                                                             : "error: ");
        n += log_escape_text(line + n, cap - n - 1, msg, LOG_ESCAPE_MESSAGE);
        line[n++] = '\n';
    }
    return n;
}

/* Copies len bytes in at the ring's end (they fit), wrapping at cap. */
static void ring_append(log_ring *r, const char *bytes, size_t len) {
    size_t at = (r->start + r->used) % r->cap;
    size_t first = len < r->cap - at ? len : r->cap - at;
    memcpy(r->data + at, bytes, first);
    memcpy(r->data, bytes + first, len - first);
    r->used += len;
}

/* The "lines dropped" line for r->dropped: its length. */
static size_t dropped_line(log_ring *r, char *out, size_t cap) {
    char msg[160];
    snprintf(msg, sizeof(msg),
             "log: %llu lines dropped: stderr was not being read and the log's buffer (%zu KiB) was full",
             r->dropped, r->cap / 1024);
    r->notices_formatted++;
    return format_event(out, cap, "warning", msg);
}

/* dropped_line's length for r->dropped, without formatting it: that for
 * 1, formatted once per ring and format, and the count's other digits (a
 * timestamp has one width; digits are never escaped). While stderr is
 * stalled every line is dropped under the ring's lock, which every
 * logging thread waits for: a timestamp, snprintf and escaping per
 * dropped line made the stall cost them more. */
static size_t dropped_line_len(log_ring *r) {
    if (!r->dropped_len1 || r->dropped_len_format != log_format) {
        char line[LINE_MAX_BYTES];
        unsigned long long dropped = r->dropped;
        r->dropped = 1;
        r->dropped_len1 = dropped_line(r, line, sizeof(line));
        r->dropped_len_format = log_format;
        r->dropped = dropped;
    }
    size_t digits = 1;
    for (unsigned long long d = r->dropped; d >= 10; d /= 10) digits++;
    return r->dropped_len1 + digits - 1;
}

int log_ring_put(log_ring *r, const char *line, size_t len) {
    char notice[LINE_MAX_BYTES];
    size_t room = r->cap - r->used, n = 0;
    int fits = len <= room;
    /* the notice formatted only to go in with the line (its length
     * checked again: a timestamp that grew a digit) */
    if (fits && r->dropped && (fits = dropped_line_len(r) <= room - len))
        fits = (n = dropped_line(r, notice, sizeof(notice))) <= room - len;
    if (!fits) {
        r->dropped++;
        r->dropped_total++;
        return -1;
    }
    if (n) ring_append(r, notice, n);
    ring_append(r, line, len);
    r->dropped = 0;
    return 0;
}

int log_ring_put_dropped(log_ring *r) {
    char notice[LINE_MAX_BYTES];
    if (!r->dropped) return -1;
    size_t n = dropped_line(r, notice, sizeof(notice));
    if (n > r->cap - r->used) return -1;
    ring_append(r, notice, n);
    r->dropped = 0;
    return 0;
}

int log_ring_peek(const log_ring *r, struct iovec iov[2]) {
    if (!r->used) return 0;
    size_t first = r->used < r->cap - r->start ? r->used : r->cap - r->start;
    iov[0] = (struct iovec){r->data + r->start, first};
    iov[1] = (struct iovec){r->data, r->used - first};
    return first < r->used ? 2 : 1;
}

void log_ring_consume(log_ring *r, size_t n) {
    r->used -= n;
    /* empty: from the front again, so that the next write is one piece */
    r->start = r->used ? (r->start + n) % r->cap : 0;
}

/* Takes what the ring holds, writes it without the lock (this thread
 * alone waits on stderr) and frees its room; once the ring is empty, the
 * "lines dropped" line if no line has carried it yet. */
static void *writer_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&w.lock);
    for (;;) {
        struct iovec iov[2];
        int pieces = log_ring_peek(&w.ring, iov);
        if (!pieces) {
            if (log_ring_put_dropped(&w.ring) == 0) continue;
            /* Stopping, the ring empty: lines go to write(2) from now on,
             * decided here under the lock that found it empty. Were it
             * left to log_stop, a line logged between this thread's end
             * and log_stop's wake-up would wait in a ring nobody drains
             * (log_stop timed out, with stderr read, the line lost). */
            if (w.stopping) w.running = 0;
            pthread_cond_broadcast(&w.written);
            if (w.stopping) break;
            w.idle = 1;
            pthread_cond_wait(&w.more, &w.lock);
            w.idle = 0;
            continue;
        }
        size_t len = iov[0].iov_len + (pieces == 2 ? iov[1].iov_len : 0);
        pthread_mutex_unlock(&w.lock);
        unsigned long long lost = write_all(iov, pieces);
        pthread_mutex_lock(&w.lock);
        log_ring_consume(&w.ring, len);
        w.ring.dropped_total += lost;
    }
    pthread_mutex_unlock(&w.lock);
    return NULL;
}

int log_start(char *err, size_t errlen) {
    pthread_condattr_t attr;
    char *data = malloc(LOG_BUFFER_BYTES);
    if (!data) {
        snprintf(err, errlen, "no memory for the log's buffer (%d KiB)", LOG_BUFFER_BYTES / 1024);
        return -1;
    }
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w.written, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_lock(&w.lock);
    w.ring = (log_ring){.data = data, .cap = LOG_BUFFER_BYTES};
    w.stopping = 0;
    pthread_mutex_unlock(&w.lock);
    int e = pthread_create(&w.thread, NULL, writer_main, NULL);
    if (e) {
        snprintf(err, errlen, "cannot start the log's writer thread: %s", strerror(e));
        pthread_cond_destroy(&w.written);
        free(data);
        w.ring = (log_ring){0};
        return -1;
    }
    pthread_mutex_lock(&w.lock);
    w.running = 1;
    pthread_mutex_unlock(&w.lock);
    return 0;
}

int log_stop(int timeout_ms) {
    pthread_mutex_lock(&w.lock);
    if (!w.ring.data) { /* never started, or stopped */
        pthread_mutex_unlock(&w.lock);
        return 0;
    }
    w.stopping = 1;
    pthread_cond_signal(&w.more);
    struct timespec deadline = monotonic_timespec(monotonic_ns() + (int64_t)timeout_ms * 1000000);
    int timed_out = 0;
    while (w.running && !timed_out) /* until the writer finds the ring empty and ends */
        timed_out = pthread_cond_timedwait(&w.written, &w.lock, &deadline) == ETIMEDOUT;
    int flushed = !w.running;
    pthread_mutex_unlock(&w.lock);
    if (!flushed) return -1; /* the writer is blocked in write(2): left to the exit */
    pthread_join(w.thread, NULL);
    pthread_cond_destroy(&w.written);
    free(w.ring.data);
    w.ring.data = NULL;
    w.ring.cap = 0;
    return 0;
}

unsigned long long log_lines_dropped(void) {
    pthread_mutex_lock(&w.lock);
    unsigned long long n = w.ring.dropped_total;
    pthread_mutex_unlock(&w.lock);
    return n;
}

/* A whole line: into the ring while the writer runs (never waiting), else
 * to stderr with one write, so that lines of several threads do not
 * interleave. */
static void emit(const char *line, size_t len) {
    pthread_mutex_lock(&w.lock);
    if (w.running) {
        if (log_ring_put(&w.ring, line, len) == 0 && w.idle) pthread_cond_signal(&w.more);
        pthread_mutex_unlock(&w.lock);
        return;
    }
    pthread_mutex_unlock(&w.lock);
    struct iovec iov = {(void *)line, len};
    if (write_all(&iov, 1)) {
        pthread_mutex_lock(&w.lock);
        w.ring.dropped_total++;
        pthread_mutex_unlock(&w.lock);
    }
}

void log_eventv(const char *level, const char *fmt, va_list ap) {
    char msg[MESSAGE_MAX_BYTES], line[LINE_MAX_BYTES];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    emit(line, format_event(line, sizeof(line), level, msg));
}

void log_event(const char *level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_eventv(level, fmt, ap);
    va_end(ap);
}

void log_access(const log_access_entry *e) {
    char line[LINE_MAX_BYTES], ts[40];
    size_t n;
    log_timestamp(ts, sizeof(ts));
    if (log_format == LOG_JSON) {
        n = (size_t)snprintf(line, sizeof(line), "{\"time\":\"%s\",\"method\":\"", ts);
        n += log_escape_json(line + n, METHOD_ROOM, e->method);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\",\"path\":\"");
        n += log_escape_json(line + n, PATH_ROOM, e->path);
        n += (size_t)snprintf(line + n, sizeof(line) - n,
                              "\",\"status\":%d,\"bytes\":%zu,\"ms\":%.3f,"
                              "\"request_id\":\"",
                              e->status, e->bytes, e->ms);
        n += log_escape_json(line + n, REQUEST_ID_ROOM, e->request_id);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\",\"user_agent\":\"");
        n += log_escape_json(line + n, USER_AGENT_ROOM, e->user_agent);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\",\"outcome\":\"%s\"",
                              e->completed ? "ok" : "aborted");
        if (e->model) {
            n += (size_t)snprintf(line + n, sizeof(line) - n, ",\"model\":\"");
            n += log_escape_json(line + n, MODEL_ROOM, e->model);
            n += (size_t)snprintf(line + n, sizeof(line) - n, "\",\"version\":\"");
            n += log_escape_json(line + n, VERSION_ROOM, e->version ? e->version : "");
            n += (size_t)snprintf(line + n, sizeof(line) - n, "\"");
        }
        n += (size_t)snprintf(line + n, sizeof(line) - n, "}\n");
    } else {
        n = (size_t)snprintf(line, sizeof(line), "%s ", ts);
        n += log_escape_text(line + n, METHOD_ROOM, e->method, LOG_ESCAPE_TOKEN);
        line[n++] = ' ';
        n += log_escape_text(line + n, PATH_ROOM, e->path, LOG_ESCAPE_FIELD);
        n += (size_t)snprintf(line + n, sizeof(line) - n, " %d %zu %.3fms ", e->status, e->bytes, e->ms);
        n += log_escape_text(line + n, REQUEST_ID_ROOM, e->request_id, LOG_ESCAPE_FIELD);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "%s \"", e->completed ? "" : " aborted");
        n += log_escape_text(line + n, USER_AGENT_ROOM, e->user_agent, LOG_ESCAPE_QUOTED);
        line[n++] = '"';
        if (e->model) { /* at the end: a parser of the fields before stays right */
            n += (size_t)snprintf(line + n, sizeof(line) - n, " model=");
            n += log_escape_text(line + n, MODEL_ROOM, e->model, LOG_ESCAPE_FIELD);
            n += (size_t)snprintf(line + n, sizeof(line) - n, " version=");
            n += log_escape_text(line + n, VERSION_ROOM, e->version ? e->version : "-", LOG_ESCAPE_FIELD);
        }
        line[n++] = '\n';
    }
    emit(line, n);
}
