/* probe.c: --health-probe (see probe.h). */
#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
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

/* The probe's connection: plain, or TLS when the daemon serves HTTPS
 * (tls-cert-file set in the settings it reads). */
typedef struct {
    int fd;
    gnutls_session_t tls; /* NULL: plain */
} probe_conn;

/* GnuTLS wants the socket in the direction it last tried (a TLS read may
 * write, and a write read); data it already decrypted needs no wait. */
static int tls_wait(probe_conn *c, long long deadline) {
    if (gnutls_record_check_pending(c->tls)) return 1;
    return wait_fd(c->fd, gnutls_record_get_direction(c->tls) ? POLLOUT : POLLIN, deadline);
}

/* The TLS handshake, within the deadline. The daemon's certificate is not
 * verified: the probe asks the daemon of this machine (the loopback, on
 * the port its own settings name) whether it is ready, where the
 * question is liveness, not identity -- whoever could answer on that port
 * in its place could as well stop it -- and the certificate names a public
 * host, rarely 127.0.0.1, under a CA the image need not carry. What
 * matters is to speak the protocol the daemon speaks. Returns 0, or -1
 * with a message. */
static int tls_start(probe_conn *c, gnutls_certificate_credentials_t *cred, long long deadline, char *why,
                     size_t whylen) {
    int rc = gnutls_certificate_allocate_credentials(cred);
    if (rc >= 0) rc = gnutls_init(&c->tls, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
    if (rc >= 0) rc = gnutls_set_default_priority(c->tls);
    if (rc >= 0) rc = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, *cred);
    if (rc < 0) {
        snprintf(why, whylen, "TLS: %s", gnutls_strerror(rc));
        return -1;
    }
    gnutls_transport_set_int(c->tls, c->fd);
    /* a connection the daemon closes mid-record must not kill the probe */
    signal(SIGPIPE, SIG_IGN);
    while ((rc = gnutls_handshake(c->tls)) < 0) {
        if (gnutls_error_is_fatal(rc)) {
            snprintf(why, whylen, "TLS handshake: %s", gnutls_strerror(rc));
            return -1;
        }
        if (!tls_wait(c, deadline)) {
            snprintf(why, whylen, "TLS handshake timed out");
            return -1;
        }
    }
    return 0;
}

/* Sends all of buf; 0, or -1. */
static int conn_send(probe_conn *c, const char *buf, size_t len, long long deadline) {
    if (!c->tls) return send(c->fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
    while (len > 0) {
        ssize_t n = gnutls_record_send(c->tls, buf, len);
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
            if (!tls_wait(c, deadline)) return -1;
            continue;
        }
        if (n < 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads what comes within the deadline: > 0 bytes, or 0 at the end, a
 * timeout or an error. */
static ssize_t conn_recv(probe_conn *c, char *buf, size_t len, long long deadline) {
    for (;;) {
        if (c->tls) {
            ssize_t n = gnutls_record_recv(c->tls, buf, len);
            if (n >= 0) return n;
            if (n != GNUTLS_E_AGAIN && n != GNUTLS_E_INTERRUPTED) return 0;
            if (!tls_wait(c, deadline)) return 0;
            continue;
        }
        if (!wait_fd(c->fd, POLLIN, deadline)) return 0;
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n < 0 && errno == EINTR) continue;
        return n > 0 ? n : 0;
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
    probe_conn conn = {fd, NULL};
    gnutls_certificate_credentials_t cred = NULL;
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
    char why[256];
    if (cfg->tls_cert_file[0] && tls_start(&conn, &cred, deadline, why, sizeof(why))) {
        snprintf(msg, msglen, "health-probe: %s:%s: %s", host, port, why);
        goto cleanup;
    }
    char req[128];
    int reqlen = snprintf(req, sizeof(req), "GET /v2/health/ready HTTP/1.0\r\nHost: %s\r\n\r\n", host);
    if (conn_send(&conn, req, (size_t)reqlen, deadline)) {
        snprintf(msg, msglen, "health-probe: %s:%s: send: %s", host, port,
                 conn.tls ? "TLS error" : strerror(errno));
        goto cleanup;
    }
    /* The status line is all we need: "HTTP/1.x NNN ..." */
    while (got < sizeof(resp) - 1 && !memchr(resp, '\n', got)) {
        ssize_t r = conn_recv(&conn, resp + got, sizeof(resp) - 1 - got, deadline);
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
    if (conn.tls) gnutls_deinit(conn.tls);
    if (cred) gnutls_certificate_free_credentials(cred);
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    return rc;
}
