/* test_log.c: the log's escaping and formats (server/log.c): a client
 * string can neither break a line nor hide in it, and a JSON line is valid
 * JSON whatever bytes a client sent; and its ring: a full one drops and
 * counts lines and says so, never waits, and the writer keeps the order;
 * the lines a closed stderr refuses are counted as dropped. */
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_run.h"
#include "log.h"

/* Runs fn with stderr sent to a file; returns what it wrote (malloc'd). */
static char *capture(void (*fn)(void *), void *arg) {
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    int saved = dup(STDERR_FILENO);
    dup2(fileno(f), STDERR_FILENO);
    fn(arg);
    dup2(saved, STDERR_FILENO);
    close(saved);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *out = calloc(1, (size_t)n + 1);
    ck_assert_uint_eq(fread(out, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return out;
}

static int is_timestamp(const char *s) {
    /* 2026-12-06T07:09:24.123Z */
    const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; shape[i]; i++)
        if (shape[i] == 'd' ? !(s[i] >= '0' && s[i] <= '9') : s[i] != shape[i]) return 0;
    return 1;
}

static const log_access_entry hostile = {
    .method = "GET",
    .path = "/a\n2026-01-01T00:00:00.000Z GET /forged 200\x1b[31m\\ \xff\xfe\xc3\xa9",
    .request_id = "id\r\n",
    .user_agent = "ua \"x\" \x1b]0;t\x07 \xc3",
    .status = 404,
    .bytes = 12,
    .ms = 1.5,
    .completed = 1,
    .model = NULL,
    .version = NULL,
};

static void write_access(void *arg) { log_access(arg); }
static void write_event(void *arg) { log_event("info", "listening on %s", (const char *)arg); }

START_TEST(text_lines_cannot_be_forged) {
    log_set_format(LOG_TEXT);
    char *out = capture(write_access, (void *)&hostile);
    ck_assert_msg(is_timestamp(out), "%s", out);
    size_t n = strlen(out);
    ck_assert_int_eq(out[n - 1], '\n');
    for (size_t i = 0; i + 1 < n; i++)
        ck_assert_msg((unsigned char)out[i] >= 0x20 && (unsigned char)out[i] < 0x7f, "byte 0x%02x at %zu: %s",
                      (unsigned char)out[i], i, out);
    ck_assert_msg(strstr(out, " GET /a\\x0a2026-01-01T00:00:00.000Z\\x20GET\\x20/forged\\x20200\\x1b[31m"
                              "\\\\\\x20\\xff\\xfe\\xc3\\xa9 404 12 1.500ms id\\x0d\\x0a \"ua \\x22x\\x22 "
                              "\\x1b]0;t\\x07 \\xc3\"\n"),
                  "%s", out);
    free(out);
    log_access_entry aborted = {.method = "POST",
                                .path = "/v1/classify",
                                .request_id = "r1",
                                .user_agent = NULL,
                                .status = 408,
                                .bytes = 0,
                                .ms = 2,
                                .completed = 0,
                                .model = NULL,
                                .version = NULL};
    out = capture(write_access, &aborted);
    ck_assert_msg(strstr(out, " POST /v1/classify 408 0 2.000ms r1 aborted \"-\"\n"), "%s", out);
    free(out);
}
END_TEST

/* A server line is "TIME comrope-serve: ...", an access line "TIME METHOD
 * ...": the method, a client's first word, must not read as that prefix
 * (a request line "comrope-serve: error: HTTP/1.1" was logged as an error
 * of the server's). Bytes that are not RFC 9110 token characters are
 * escaped in it. */
START_TEST(method_cannot_pose_as_the_server) {
    log_set_format(LOG_TEXT);
    log_access_entry posing = {.method = "comrope-serve:",
                               .path = "error:",
                               .request_id = "r1",
                               .user_agent = NULL,
                               .status = 404,
                               .bytes = 36,
                               .ms = 1,
                               .completed = 1,
                               .model = NULL,
                               .version = NULL};
    char *out = capture(write_access, &posing);
    ck_assert_msg(!strstr(out, "comrope-serve:"), "%s", out);
    ck_assert_msg(strstr(out, " comrope-serve\\x3a error: 404 36 1.000ms r1 \"-\"\n"), "%s", out);
    free(out);
    char esc[64];
    log_escape_text(esc, sizeof(esc), "GET", LOG_ESCAPE_TOKEN);
    ck_assert_str_eq(esc, "GET");
    log_escape_text(esc, sizeof(esc), "M-SEARCH!#$%&'*+.^_`|~9", LOG_ESCAPE_TOKEN);
    ck_assert_str_eq(esc, "M-SEARCH!#$%&'*+.^_`|~9");
    log_escape_text(esc, sizeof(esc), "a:\"b c\\(){}", LOG_ESCAPE_TOKEN);
    ck_assert_str_eq(esc, "a\\x3a\\x22b\\x20c\\\\\\x28\\x29\\x7b\\x7d");
}
END_TEST

/* The longest strings a request can bring (http.c: path 511, request id
 * 127, user agent 255 bytes; a model name 255), each at its worst escape
 * (4 bytes in text, 6 in JSON), are logged whole: the text line cut a
 * model name of 255 bytes of UTF-8 at 128 of them, and either format a
 * path of control bytes at a third or half of it. */
START_TEST(longest_fields_are_logged_whole) {
    char path[512], model[256], id[128], ua[256], want[2200];
    memcpy(path, "/v2/models/", 11);
    memset(path + 11, '\x01', sizeof(path) - 12);
    path[sizeof(path) - 1] = '\0';
    for (size_t i = 0; i + 2 < sizeof(model); i += 2) memcpy(model + i, "\xc3\xa9", 2);
    memcpy(model + sizeof(model) - 2, "x", 2);
    memset(id, 'i', sizeof(id) - 1);
    id[sizeof(id) - 1] = '\0';
    memset(ua, '\xff', sizeof(ua) - 1);
    ua[sizeof(ua) - 1] = '\0';
    log_access_entry e = {.method = "POST",
                          .path = path,
                          .request_id = id,
                          .user_agent = ua,
                          .status = 200,
                          .bytes = 1,
                          .ms = 1,
                          .completed = 0,
                          .model = model,
                          .version = "123456789"};
    log_set_format(LOG_TEXT);
    char *out = capture(write_access, &e);
    size_t n = log_escape_text(want, sizeof(want), path, LOG_ESCAPE_FIELD);
    ck_assert_uint_eq(n, 11 + 4 * 500);
    ck_assert_msg(strstr(out, want), "path cut: %s", out);
    n = log_escape_text(want, sizeof(want), model, LOG_ESCAPE_FIELD);
    ck_assert_uint_eq(n, 4 * 254 + 1);
    ck_assert_msg(strstr(out, want) && strstr(out, " version=123456789\n"), "model cut: %s", out);
    free(out);
    log_set_format(LOG_JSON);
    out = capture(write_access, &e);
    json_error_t err;
    json_t *o = json_loads(out, 0, &err);
    ck_assert_msg(o != NULL, "not JSON (%s): %s", err.text, out);
    ck_assert_str_eq(json_string_value(json_object_get(o, "path")), path);
    ck_assert_str_eq(json_string_value(json_object_get(o, "model")), model);
    ck_assert_str_eq(json_string_value(json_object_get(o, "request_id")), id);
    ck_assert_str_eq(json_string_value(json_object_get(o, "version")), "123456789");
    ck_assert_uint_eq(strlen(json_string_value(json_object_get(o, "user_agent"))), 3 * 255); /* U+FFFD each */
    json_decref(o);
    free(out);
    log_set_format(LOG_TEXT);
}
END_TEST

/* The only double quotes of an access line are around the user agent: a
 * path /x"fake" (or a model named q"b) put a quoted string before it, read
 * as the user agent by a parser taking the first one. */
START_TEST(quotes_only_around_the_user_agent) {
    log_set_format(LOG_TEXT);
    log_access_entry e = {.method = "GET",
                          .path = "/x\"fake\"",
                          .request_id = "r1",
                          .user_agent = "real \"ua\"",
                          .status = 404,
                          .bytes = 1,
                          .ms = 1,
                          .completed = 1,
                          .model = "q\"b",
                          .version = "1"};
    char *out = capture(write_access, &e);
    ck_assert_msg(
        strstr(out, " GET /x\\x22fake\\x22 404 1 1.000ms r1 \"real \\x22ua\\x22\" model=q\\x22b version=1\n"),
        "%s", out);
    free(out);
}
END_TEST

START_TEST(json_lines_are_never_dropped) {
    log_set_format(LOG_JSON);
    char *out = capture(write_access, (void *)&hostile);
    json_error_t e;
    json_t *o = json_loads(out, 0, &e);
    ck_assert_msg(o != NULL, "not JSON (%s): %s", e.text, out);
    ck_assert_msg(is_timestamp(json_string_value(json_object_get(o, "time"))), "%s", out);
    ck_assert_str_eq(
        json_string_value(json_object_get(o, "path")),
        "/a\n2026-01-01T00:00:00.000Z GET /forged 200\x1b[31m\\ \xef\xbf\xbd\xef\xbf\xbd\xc3\xa9");
    ck_assert_str_eq(json_string_value(json_object_get(o, "user_agent")),
                     "ua \"x\" \x1b]0;t\x07 \xef\xbf\xbd");
    ck_assert_str_eq(json_string_value(json_object_get(o, "request_id")), "id\r\n");
    ck_assert_int_eq(json_integer_value(json_object_get(o, "status")), 404);
    ck_assert_str_eq(json_string_value(json_object_get(o, "outcome")), "ok");
    ck_assert_ptr_eq(strchr(out, '\n'), out + strlen(out) - 1); /* one line */
    json_decref(o);
    free(out);
    /* events too */
    out = capture(write_event, "127.0.0.1:8080 \"\xff\"");
    o = json_loads(out, 0, &e);
    ck_assert_msg(o != NULL, "not JSON (%s): %s", e.text, out);
    ck_assert_str_eq(json_string_value(json_object_get(o, "level")), "info");
    ck_assert_str_eq(json_string_value(json_object_get(o, "msg")),
                     "listening on 127.0.0.1:8080 \"\xef\xbf\xbd\"");
    json_decref(o);
    free(out);
    log_set_format(LOG_TEXT);
}
END_TEST

/* Overlong forms, surrogates, code points past U+10FFFF and cut sequences
 * are not UTF-8: each of their bytes becomes U+FFFD; valid ones stay, but
 * for the controls and line separators, escaped. */
START_TEST(json_utf8_validation) {
    struct {
        const char *in, *out;
    } cases[] = {
        {"\xc0\xaf", "\\ufffd\\ufffd"},                       /* overlong "/" */
        {"\xed\xa0\x80", "\\ufffd\\ufffd\\ufffd"},            /* surrogate */
        {"\xf4\x90\x80\x80", "\\ufffd\\ufffd\\ufffd\\ufffd"}, /* past U+10FFFF */
        {"\xe2\x82", "\\ufffd\\ufffd"},                       /* cut */
        {"\xf0\x9f\x98\x80 \xe2\x82\xac", "\xf0\x9f\x98\x80 \xe2\x82\xac"},
        {"\x01\x7f\"\\", "\\u0001\\u007f\\\"\\\\"},
        /* what Unicode-aware readers (Python's splitlines) take for line
         * breaks: C1 controls (NEL), U+2028, U+2029; their neighbours stay */
        {"a\xc2\x85{}\xe2\x80\xa8"
         "b\xe2\x80\xa9",
         "a\\u0085{}\\u2028b\\u2029"},
        {"\xc2\x80\xc2\x9f\xc2\xa0\xe2\x80\xa7\xe2\x80\xaa",
         "\\u0080\\u009f\xc2\xa0\xe2\x80\xa7\xe2\x80\xaa"},
    };
    char out[128];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        log_escape_json(out, sizeof(out), cases[i].in);
        ck_assert_str_eq(out, cases[i].out);
    }
    /* too small a buffer: cut at a character (escape) boundary, still a string */
    ck_assert_uint_eq(log_escape_json(out, 8, "ab\x01"), 2);
    ck_assert_str_eq(out, "ab");
    ck_assert_uint_eq(log_escape_text(out, 5, "a\x1b", LOG_ESCAPE_FIELD), 1);
    ck_assert_str_eq(out, "a");
}
END_TEST

START_TEST(timestamps) {
    char ts[40];
    ck_assert_uint_eq(log_timestamp(ts, sizeof(ts)), 24);
    ck_assert_msg(is_timestamp(ts), "%s", ts);
}
END_TEST

/* A ring's bytes, in the order the writer takes them (malloc'd string). */
static char *ring_text(const log_ring *r) {
    struct iovec iov[2];
    int n = log_ring_peek(r, iov);
    char *out = calloc(1, r->used + 1);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        memcpy(out + at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    ck_assert_uint_eq(at, r->used);
    return out;
}

/* A line of len bytes, "Ln xxx...\n". */
static void make_line(char *out, size_t len, int n) {
    memset(out, 'x', len);
    out[0] = 'L';
    out[1] = (char)('0' + n);
    out[len - 1] = '\n';
}

/* stderr not read (log.h): a line that does not fit is dropped at once and
 * counted, and the first line that fits afterwards comes after one line
 * saying how many were dropped; the ring wraps and keeps the order. */
START_TEST(full_ring_drops_counts_and_says_so) {
    char data[512], line[100];
    log_ring r = {.data = data, .cap = sizeof(data)};
    for (int i = 0; i < 5; i++) {
        make_line(line, sizeof(line), i);
        ck_assert_int_eq(log_ring_put(&r, line, sizeof(line)), 0);
    }
    make_line(line, sizeof(line), 5);
    ck_assert_int_eq(log_ring_put(&r, line, sizeof(line)), -1); /* 500 of 512 used */
    ck_assert_int_eq(log_ring_put(&r, line, sizeof(line)), -1);
    ck_assert_uint_eq(r.dropped, 2);
    ck_assert_uint_eq(r.dropped_total, 2);
    ck_assert_uint_eq(r.used, 500);
    log_ring_consume(&r, 200); /* the writer wrote L0 and L1 */
    /* 212 free: the line fits, not with the "dropped" line before it */
    make_line(line, sizeof(line), 6);
    ck_assert_int_eq(log_ring_put(&r, line, sizeof(line)), -1);
    ck_assert_uint_eq(r.dropped, 3);
    log_ring_consume(&r, 100); /* L2 */
    make_line(line, sizeof(line), 7);
    ck_assert_int_eq(log_ring_put(&r, line, sizeof(line)), 0);
    ck_assert_uint_eq(r.dropped, 0);
    ck_assert_uint_eq(r.dropped_total, 3);
    struct iovec iov[2];
    ck_assert_int_eq(log_ring_peek(&r, iov), 2); /* wrapped at 512 */
    char *t = ring_text(&r);
    ck_assert_msg(strncmp(t, "L3", 2) == 0 && strncmp(t + 100, "L4", 2) == 0, "%s", t);
    char *notice = strstr(t, "comrope-serve: warning: log: 3 lines dropped");
    ck_assert_msg(notice && notice == t + 225 && is_timestamp(notice - 25), "%s", t);
    char *next = strchr(notice, '\n') + 1;
    ck_assert_msg(strncmp(next, "L7", 2) == 0 && next + 100 == t + r.used, "%s", t);
    free(t);
    log_ring_consume(&r, r.used);
    ck_assert_uint_eq(r.start, 0);
    ck_assert_int_eq(log_ring_peek(&r, iov), 0);
}
END_TEST

/* While stderr is stalled every line is dropped under the ring's lock,
 * which each logging thread waits for: a dropped line formats nothing
 * (the "lines dropped" line was formatted for each one, timestamp and
 * all, to learn its length), and that length is still exact: a line goes
 * in after it when both fit to the byte, for counts of 1 to 20 digits. */
START_TEST(dropped_lines_format_nothing) {
    char data[1024], line[1000], small[20];
    log_ring r = {.data = data, .cap = sizeof(data)};
    make_line(line, sizeof(line), 0);
    ck_assert_int_eq(log_ring_put(&r, line, sizeof(line)), 0);
    ck_assert_int_eq(log_ring_put(&r, line, sizeof(line)), -1); /* 24 bytes free */
    make_line(small, sizeof(small), 1);
    for (int i = 0; i < 1000; i++) /* it fits, not with the notice */
        ck_assert_int_eq(log_ring_put(&r, small, sizeof(small)), -1);
    ck_assert_uint_eq(r.dropped, 1001);
    ck_assert_uint_le(r.notices_formatted, 1);
    const unsigned long long counts[] = {1, 9, 10, 99, 100, 12345, 18446744073709551615ULL};
    for (int f = 0; f < 2; f++) {
        log_set_format(f ? LOG_JSON : LOG_TEXT);
        for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
            log_ring alone = {.data = data, .cap = sizeof(data), .dropped = counts[i]};
            ck_assert_int_eq(log_ring_put_dropped(&alone), 0);
            size_t notice = alone.used; /* its length, formatted */
            for (size_t spare = 0; spare < 2; spare++) {
                size_t used = sizeof(data) - notice - sizeof(small) + spare;
                log_ring exact = {.data = data, .cap = sizeof(data), .used = used, .dropped = counts[i]};
                ck_assert_int_eq(log_ring_put(&exact, small, sizeof(small)), spare ? -1 : 0);
                ck_assert_uint_eq(exact.used, spare ? used : sizeof(data));
            }
        }
    }
    log_set_format(LOG_TEXT);
}
END_TEST

/* Nothing logged after the drops: the writer, the ring empty, writes the
 * "dropped" line alone, in the log's format (JSON: a JSON event). */
START_TEST(dropped_line_alone_in_json) {
    char data[512], line[600];
    log_ring r = {.data = data, .cap = sizeof(data)};
    ck_assert_int_eq(log_ring_put_dropped(&r), -1); /* nothing dropped */
    memset(line, 'x', sizeof(line));
    ck_assert_int_eq(log_ring_put(&r, line, sizeof(line)), -1); /* larger than the ring */
    log_set_format(LOG_JSON);
    ck_assert_int_eq(log_ring_put_dropped(&r), 0);
    log_set_format(LOG_TEXT);
    ck_assert_uint_eq(r.dropped, 0);
    ck_assert_uint_eq(r.dropped_total, 1);
    char *t = ring_text(&r);
    ck_assert_msg(t[r.used - 1] == '\n', "%s", t);
    json_error_t e;
    json_t *j = json_loads(t, 0, &e);
    ck_assert_msg(j, "%s: %s", e.text, t);
    ck_assert_str_eq(json_string_value(json_object_get(j, "level")), "warning");
    ck_assert_msg(strstr(json_string_value(json_object_get(j, "msg")), "log: 1 lines dropped"), "%s", t);
    json_decref(j);
    free(t);
}
END_TEST

static void start_log_stop_log(void *arg) {
    (void)arg;
    char err[256];
    log_event("info", "before the start");
    ck_assert_int_eq(log_start(err, sizeof(err)), 0);
    for (int i = 0; i < 100; i++) log_event("info", "line %d", i);
    ck_assert_int_eq(log_stop(60000), 0); /* stderr is a file: written out at once */
    log_event("info", "after the stop");
    ck_assert_uint_eq(log_lines_dropped(), 0);
}

/* Through the writer thread and back: every line, whole and in order, and
 * log_stop returns with them written (the exit loses none). */
START_TEST(writer_keeps_order_and_stop_flushes) {
    char *out = capture(start_log_stop_log, NULL);
    char *p = strstr(out, "before the start\n");
    ck_assert_ptr_nonnull(p);
    for (int i = 0; i < 100; i++) {
        char want[32];
        snprintf(want, sizeof(want), "comrope-serve: line %d\n", i);
        char *q = strstr(p, want);
        ck_assert_msg(q, "line %d missing or out of order", i);
        p = q;
    }
    ck_assert_ptr_nonnull(strstr(p, "after the stop\n"));
    free(out);
}
END_TEST

/* Threads that go on logging while the log stops (a second SIGTERM stops
 * it with HTTP threads and workers still running): log_stop returns 0 as
 * soon as the writer finds the ring empty, and the lines after go to
 * stderr directly. The writer used to end there while log_stop, not yet
 * awake, still counted the log as running: a line logged in between was
 * left in a ring nobody drained, and log_stop waited out its timeout and
 * returned -1 with stderr read (2 s, in 3 runs of 9). */
typedef struct {
    atomic_int stop;
    atomic_long logged;
} loggers;

static void *keep_logging(void *arg) {
    loggers *l = arg;
    while (!atomic_load(&l->stop)) {
        log_event("info", "a line from a thread that logs on");
        atomic_fetch_add(&l->logged, 1);
    }
    return NULL;
}

static void stop_while_others_log(void *arg) {
    (void)arg;
    loggers l = {0};
    pthread_t t[4];
    for (int i = 0; i < 4; i++) ck_assert_int_eq(pthread_create(&t[i], NULL, keep_logging, &l), 0);
    for (int round = 0; round < 20; round++) {
        char err[256];
        long before = atomic_load(&l.logged);
        ck_assert_int_eq(log_start(err, sizeof(err)), 0);
        while (atomic_load(&l.logged) < before + 1000) {} /* lines through the ring */
        /* 2 s: a bound, not a wait (stderr is a file: it takes all at once) */
        ck_assert_msg(log_stop(2000) == 0, "round %d: log_stop timed out with stderr read", round);
    }
    atomic_store(&l.stop, 1);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
}

START_TEST(stop_while_other_threads_log) { free(capture(stop_while_others_log, NULL)); }
END_TEST

/* stderr a pipe whose reader has gone (SIGPIPE ignored, as the daemon
 * does): every write fails with EPIPE, and each line it refuses, through
 * the writer or written at once after the stop, is a dropped line. Before,
 * only a full ring's were counted: comrope_log_lines_dropped_total said 0
 * while every line was lost. */
START_TEST(closed_stderr_lines_are_counted) {
    char err[256];
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    close(fds[0]);
    void (*old)(int) = signal(SIGPIPE, SIG_IGN);
    int saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    ck_assert_int_eq(log_start(err, sizeof(err)), 0);
    for (int i = 0; i < 10; i++) log_event("info", "line %d", i);
    int stopped = log_stop(60000);
    unsigned long long through_writer = log_lines_dropped();
    log_event("info", "after the stop");
    unsigned long long after_stop = log_lines_dropped();
    dup2(saved, STDERR_FILENO);
    close(saved);
    signal(SIGPIPE, old);
    ck_assert_int_eq(stopped, 0);
    ck_assert_uint_eq(through_writer, 10);
    ck_assert_uint_eq(after_stop, 11);
}
END_TEST

int main(void) {
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("log");
    tcase_add_test(tc, text_lines_cannot_be_forged);
    tcase_add_test(tc, method_cannot_pose_as_the_server);
    tcase_add_test(tc, longest_fields_are_logged_whole);
    tcase_add_test(tc, quotes_only_around_the_user_agent);
    tcase_add_test(tc, json_lines_are_never_dropped);
    tcase_add_test(tc, json_utf8_validation);
    tcase_add_test(tc, timestamps);
    tcase_add_test(tc, full_ring_drops_counts_and_says_so);
    tcase_add_test(tc, dropped_line_alone_in_json);
    tcase_add_test(tc, closed_stderr_lines_are_counted);
    tcase_add_test(tc, dropped_lines_format_nothing);
    tcase_add_test(tc, writer_keeps_order_and_stop_flushes);
    tcase_add_test(tc, stop_while_other_threads_log);
    suite_add_tcase(s, tc);
    return check_run(s);
}
