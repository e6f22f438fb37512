/* fuzz_http.c: the HTTP request path end to end. One comrope-serve daemon
 * (server/http.c, the batcher, one worker, the bundled model, an API key)
 * is started in-process on 127.0.0.1, port 0; each input is written as raw
 * bytes on a new loopback connection, the write side is shut, and the
 * answers are read until the daemon closes. A daemon that neither answers nor closes within
 * HANG_S is a hang (abort), and every 256 inputs the process's open file
 * descriptors are counted, so a connection that leaks one fails too. The
 * first answer must be an HTTP response, with a valid JSON body when it
 * says application/json. Seeds hold the token (tests/fuzz/make_corpus.py). */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "batcher.h"
#include "config.h"
#include "gemm.h"
#include "http.h"
#include "metrics.h"
#include "proto.h"
#include "vit.h"

#define HANG_S 30
#define SHUT_DELAY_MS 20

static server_config cfg;
static http_server *server;
static int port, baseline_fds;
static char key[] = "fuzz-token";
static char *keys[] = {key, NULL};

static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d) return -1;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char err[1024];
    signal(SIGPIPE, SIG_IGN);
    /* before any thread uses jansson, as main.c (its allocator is process-wide) */
    proto_json_meter_install();
    config_defaults(&cfg);
    snprintf(cfg.host, sizeof(cfg.host), "127.0.0.1");
    cfg.port = 0;
    cfg.workers = 1;
    cfg.gemm_threads = 1;
    cfg.http_threads = 2;
    cfg.max_body_bytes = 1 << 20;
    cfg.connection_timeout_s = 5;
    cfg.access_log = ACCESS_LOG_OFF; /* a line per input would drown libFuzzer's output */
    /* the default model, served as a one-model repository as --model does */
    snprintf(cfg.model, sizeof(cfg.model), "%s", COMROPE_DEFAULT_MODEL_DIR);
    snprintf(cfg.model_name, sizeof(cfg.model_name), "fuzz");
    metrics *mx = metrics_new();
    repository_params rp = {.cfg = &cfg, .cpu_limit = 1, .mx = mx, .build_version = "fuzz"};
    repository *repo = mx ? repository_new(&rp, err, sizeof(err)) : NULL;
    if (!repo || repository_start(repo, err, sizeof(err))) {
        fprintf(stderr, "fuzz_http: %s\n", mx ? err : "out of memory");
        abort();
    }
    http_params hp = {.cfg = &cfg, .repo = repo, .metrics = mx, .build_version = "fuzz", .api_keys = keys};
    server = http_start(&hp, err, sizeof(err));
    if (!server) {
        fprintf(stderr, "fuzz_http: %s\n", err);
        abort();
    }
    http_set_loaded(server);
    port = http_port(server);
    baseline_fds = count_fds();
    return 0;
}

/* A compressed answer's body (Content-Encoding gzip or deflate: zlib's
 * automatic header detection takes both), inflated into out (cap bytes).
 * Returns its length; aborts when it is not valid data of its coding. */
static size_t inflate_answer(const char *in, size_t n, char *out, size_t cap) {
    z_stream z = {0};
    if (inflateInit2(&z, 15 + 32) != Z_OK) abort();
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    int rc = inflate(&z, Z_FINISH);
    size_t got = z.total_out;
    inflateEnd(&z);
    if (rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && got == cap)) {
        fprintf(stderr, "fuzz_http: a compressed answer does not inflate (zlib %d)\n", rc);
        abort();
    }
    return got;
}

/* The first answer to an input that starts with a GET or POST (not HEAD:
 * its answer has a Content-Length and no body) is an HTTP response, and
 * when it says application/json its body is valid JSON, once inflated
 * when it says Content-Encoding. */
static void check_first_answer(const uint8_t *data, size_t size, const char *resp, size_t len) {
    if (!(size >= 4 && memcmp(data, "GET ", 4) == 0) && !(size >= 5 && memcmp(data, "POST ", 5) == 0)) return;
    size_t off = 0;
    for (;;) {
        const char *end = memmem(resp + off, len - off, "\r\n\r\n", 4);
        if (!end) return; /* cut short: the daemon may close on a bad request */
        size_t head_len = (size_t)(end - (resp + off)) + 4;
        if (head_len < 12 || memcmp(resp + off, "HTTP/1.", 7) != 0) {
            fprintf(stderr, "fuzz_http: answer is not an HTTP response: %.60s\n", resp + off);
            abort();
        }
        if (memcmp(resp + off + 9, "100", 3) == 0) { /* interim "100 Continue" */
            off += head_len;
            continue;
        }
        char head[8192];
        size_t n = head_len < sizeof(head) - 1 ? head_len : sizeof(head) - 1;
        memcpy(head, resp + off, n);
        head[n] = '\0';
        for (char *c = head; *c; c++) *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
        const char *cl = strstr(head, "\r\ncontent-length:");
        const char *ct = strstr(head, "\r\ncontent-type:");
        if (!cl || !ct) return;
        ct += 15;
        while (*ct == ' ') ct++;
        if (strncmp(ct, "application/json", 16) != 0) return;
        size_t body_len = strtoul(cl + 17, NULL, 10), body_off = off + head_len;
        if (len - body_off < body_len) return; /* longer than what we keep */
        const char *body = resp + body_off;
        static char inflated[1 << 20];
        if (strstr(head, "\r\ncontent-encoding:")) {
            body_len = inflate_answer(body, body_len, inflated, sizeof(inflated));
            if (body_len == sizeof(inflated)) return; /* longer than what we keep */
            body = inflated;
        }
        json_error_t e;
        json_t *j = json_loadb(body, body_len, 0, &e);
        if (!j) {
            fprintf(stderr, "fuzz_http: invalid JSON body (%s): %.*s\n", e.text,
                    (int)(body_len < 200 ? body_len : 200), body);
            abort();
        }
        json_decref(j);
        return;
    }
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static unsigned long runs;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) abort();
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) && errno != EINPROGRESS) abort();

    /* Write and read at once: the daemon may answer (413, 401) before it
     * has read the whole body. The write side is shut once the first answer
     * bytes arrive (or SHUT_DELAY_MS after the last byte was sent, for an
     * input that is not a complete request): MHD 0.9.75 (epoll) does not
     * notice a FIN that came with the request and would keep the connection
     * until connection-timeout-s; a FIN that comes later closes it at once. */
    static char resp[1 << 18]; /* the answers' first bytes */
    size_t sent = 0, resp_len = 0;
    int writing = 1, shut = 0;
    char buf[65536];
    double deadline = now_s() + HANG_S, sent_at = 0;
    for (;;) {
        double now = now_s(), left = deadline - now;
        if (left <= 0) {
            fprintf(stderr, "fuzz_http: no answer and no close after %d s (%zu of %zu bytes sent)\n", HANG_S,
                    sent, size);
            abort();
        }
        if (!writing && !shut && now - sent_at >= SHUT_DELAY_MS * 1e-3) {
            shutdown(fd, SHUT_WR);
            shut = 1;
        }
        int wait_ms = !writing && !shut ? SHUT_DELAY_MS : (int)(left * 1000) + 1;
        struct pollfd p = {fd, POLLIN | (writing ? POLLOUT : 0), 0};
        if (poll(&p, 1, wait_ms) < 0) {
            if (errno == EINTR) continue;
            abort();
        }
        if (writing && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t n = sent < size ? send(fd, data + sent, size - sent, MSG_NOSIGNAL) : 0;
            if (n > 0) sent += (size_t)n;
            if (n < 0 && errno != EAGAIN && errno != EINTR) writing = 0; /* the daemon closed */
            if (sent == size) {
                writing = 0;
                sent_at = now_s();
            }
        }
        if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
            if (n > 0 && resp_len < sizeof(resp)) {
                size_t keep = (size_t)n < sizeof(resp) - resp_len ? (size_t)n : sizeof(resp) - resp_len;
                memcpy(resp + resp_len, buf, keep);
                resp_len += keep;
            }
            if (n > 0 && !writing && !shut) {
                shutdown(fd, SHUT_WR);
                shut = 1;
            }
        }
    }
    close(fd);
    check_first_answer(data, size, resp, resp_len);
    /* FUZZ_HTTP_SLOW=1: name the inputs that took over a second (a daemon
     * that answers late is not a crash, but worth knowing) */
    if (getenv("FUZZ_HTTP_SLOW") && now_s() - (deadline - HANG_S) > 1)
        fprintf(stderr, "fuzz_http: slow input: %.1f s, %zu bytes\n", now_s() - (deadline - HANG_S), size);

    if (++runs % 256 == 0) {
        /* MHD closes its end before we see EOF; allow connections it is
         * still tearing down on its other thread */
        int fds = count_fds();
        if (fds > baseline_fds + 32) {
            fprintf(stderr, "fuzz_http: %d open descriptors, %d at start\n", fds, baseline_fds);
            abort();
        }
    }
    return 0;
}
