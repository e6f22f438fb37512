/* log.c: lines on stderr, text or JSON, with client strings escaped.
 * See log.h. */
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* One write per line: stderr is a pipe or a journal, and a line written
 * in pieces could interleave with another thread's. */
static void write_line(const char *line, size_t len) {
    while (len) {
        ssize_t w = write(STDERR_FILENO, line, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        line += w;
        len -= (size_t)w;
    }
}

void log_eventv(const char *level, const char *fmt, va_list ap) {
    char msg[MESSAGE_MAX_BYTES], line[LINE_MAX_BYTES], ts[40];
    size_t n = 0;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    log_timestamp(ts, sizeof(ts));
    if (log_format == LOG_JSON) {
        n = (size_t)snprintf(line, sizeof(line), "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts, level);
        n += log_escape_json(line + n, sizeof(line) - n - 3, msg);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\"}\n");
    } else {
        n = (size_t)snprintf(line, sizeof(line), "%s comrope-serve: %s", ts,
                             strcmp(level, "info") == 0      ? ""
                             : strcmp(level, "warning") == 0 ? "warning: "
                                                             : "error: ");
        n += log_escape_text(line + n, sizeof(line) - n - 1, msg, LOG_ESCAPE_MESSAGE);
        line[n++] = '\n';
    }
    write_line(line, n);
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
    write_line(line, n);
}
