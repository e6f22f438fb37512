/* probe.c: --health-probe (see probe.h). */
#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int probe_take_flag(int *argc, char **argv) {
    int found = 0, out = 1;
    for (int i = 1; i < *argc; i++) {
        if (strcmp(argv[i], "--health-probe") == 0) found = 1;
        else argv[out++] = argv[i];
    }
    argv[out] = NULL;
    *argc = out;
    return found;
}

/* PID 1's command line (NUL-separated) when PID 1 runs this very binary;
 * NULL otherwise (not in a container, a different init, /proc hidden). */
static char *pid1_cmdline(size_t *len) {
    struct stat self, one;
    if (stat("/proc/self/exe", &self) || stat("/proc/1/exe", &one)) return NULL;
    if (self.st_dev != one.st_dev || self.st_ino != one.st_ino) return NULL;
    FILE *f = fopen("/proc/1/cmdline", "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *grown = realloc(buf, cap *= 2);
        if (!grown) {
            free(buf);
            buf = NULL;
        }
        buf = grown;
    }
    fclose(f);
    if (buf && n == 0) {
        free(buf);
        buf = NULL;
    }
    *len = n;
    return buf;
}

char **probe_args(int argc, char **argv, int *out_argc) {
    size_t len = 0;
    char *cmd = pid1_cmdline(&len);
    int n1 = 0;
    for (size_t i = 0; cmd && i < len; i++)
        if (cmd[i] == '\0') n1++;
    /* PID 1's argv[0] is dropped: ours stands in front. The strings are
     * copied behind the pointer array so that one free releases all. */
    int total = 1 + (n1 > 0 ? n1 - 1 : 0) + (argc - 1);
    size_t bytes = sizeof(char *) * (size_t)(total + 1) + len;
    char **args = malloc(bytes);
    if (!args) {
        free(cmd);
        return NULL;
    }
    char *text = (char *)(args + total + 1);
    if (len) memcpy(text, cmd, len);
    int k = 0;
    args[k++] = argv[0];
    for (size_t i = 0, arg = 0; i < len; arg++) {
        if (arg > 0) args[k++] = text + i;
        i += strlen(text + i) + 1;
    }
    for (int i = 1; i < argc; i++) args[k++] = argv[i];
    args[k] = NULL;
    *out_argc = k;
    free(cmd);
    return args;
}

void probe_free_args(char **args) { free(args); }

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for `events` on fd until the deadline; 1 ready, 0 timed out/error. */
static int wait_fd(int fd, short events, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) return 0;
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, (int)left);
        if (r > 0) return 1;
        if (r < 0 && errno != EINTR) return 0;
    }
}

int health_probe(const server_config *cfg, int timeout_ms, char *msg, size_t msglen) {
    if (cfg->port == 0) {
        snprintf(msg, msglen, "health-probe: port is 0 (any free port): no port to ask");
        return 2;
    }
    /* A wildcard listens on the loopback too. */
    const char *host = cfg->host;
    if (!host[0] || strcmp(host, "0.0.0.0") == 0) host = "127.0.0.1";
    else if (strcmp(host, "::") == 0) host = "::1";
    char port[16];
    snprintf(port, sizeof(port), "%d", cfg->port);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai) {
        snprintf(msg, msglen, "health-probe: host \"%s\": %s", host, gai_strerror(gai));
        return 2;
    }
    long long deadline = now_ms() + timeout_ms;
    int rc = 1, fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    char resp[256];
    size_t got = 0;
    if (fd < 0) {
        snprintf(msg, msglen, "health-probe: socket: %s", strerror(errno));
        goto cleanup;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) && errno != EINPROGRESS) {
        snprintf(msg, msglen, "health-probe: %s:%s: %s", host, port, strerror(errno));
        goto cleanup;
    }
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (!wait_fd(fd, POLLOUT, deadline) || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
        snprintf(msg, msglen, "health-probe: %s:%s: %s", host, port,
                 soerr ? strerror(soerr) : "connect timed out");
        goto cleanup;
    }
    char req[128];
    int reqlen = snprintf(req, sizeof(req), "GET /v2/health/ready HTTP/1.0\r\nHost: %s\r\n\r\n", host);
    if (send(fd, req, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
        snprintf(msg, msglen, "health-probe: %s:%s: send: %s", host, port, strerror(errno));
        goto cleanup;
    }
    /* The status line is all we need: "HTTP/1.x NNN ..." */
    while (got < sizeof(resp) - 1 && !memchr(resp, '\n', got)) {
        if (!wait_fd(fd, POLLIN, deadline)) break;
        ssize_t r = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    resp[got] = '\0';
    resp[strcspn(resp, "\r\n")] = '\0';
    int status = 0;
    if (sscanf(resp, "HTTP/%*d.%*d %d", &status) != 1) {
        snprintf(msg, msglen, "health-probe: %s:%s: no HTTP answer within %d ms", host, port, timeout_ms);
        goto cleanup;
    }
    snprintf(msg, msglen, "health-probe: %s:%s/v2/health/ready: %d", host, port, status);
    rc = status == 200 ? 0 : 1;
cleanup:
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    return rc;
}
