/* loadgen.c: the timing core of the load kit (bench/load/): sends a plan of
 * HTTP requests at their scheduled times, open loop, and records when each
 * was due, sent and answered. Python (bench/load/openloop.py) writes the
 * plan, checks every answer body and computes the figures; this program
 * only does what must not be late, so that the generator stays far cheaper
 * than the server it measures on the same few cores.
 *
 *   comrope-loadgen --host 127.0.0.1 --port 8080 --templates T --plan P \
 *       --out O --bodies B [--closed N --seconds S] [--max-conns N] [--timeout-s S]
 *       [--progress-s S] [--idle-close-s S]
 *
 * T: requests, each a u32 length (little-endian) then the raw HTTP bytes.
 * P: entries of 20 bytes: f64 due time (s from the start), u32 template,
 *    i32 bytes to write (-1: all), u32 mode (0 kept-alive connection from
 *    the pool, 1 a connection of its own, closed after the answer, 2 a
 *    connection of its own closed right after the write: a client that
 *    vanishes). Sorted by due time.
 * O: one 40-byte record per entry, in plan order: f64 due, f64 sent,
 *    f64 done (s from the start; sent -1 if never sent), i32 status (HTTP
 *    code; 0 connection closed without an answer; -1 connect/IO error;
 *    -2 client timeout; -3 vanished as planned), u32 answer length, u64
 *    answer offset into B.
 * B: the answers (status line, headers, body), back to back.
 * --closed N: closed loop instead: N connections send the plan's entries
 *    one after another (due times ignored, each sent when its connection
 *    is free) until --seconds have passed; entries never sent keep sent -1.
 *
 * Open loop: an entry whose time has come takes an idle kept-alive
 * connection, else opens one; at --max-conns it waits for a connection
 * (its latency, counted from the due time, shows the wait). A pool
 * connection idle for --idle-close-s (2) is closed, well before any
 * server's idle timeout (the soak's daemon closes at 5 s: with 5 here too,
 * both sides closed at once and a request sent on the closing connection
 * came back empty). One epoll loop,
 * one request per connection at a time, no pipelining. Progress: a line
 * every --progress-s seconds (default 1; 0: none) on stderr. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { MODE_POOL = 0, MODE_OWN = 1, MODE_VANISH = 2 };
enum { ST_CLOSED_EARLY = 0, ST_ERROR = -1, ST_TIMEOUT = -2, ST_VANISHED = -3 };

typedef struct {
    double due;
    uint32_t tpl;
    int32_t write_len;
    uint32_t mode;
} plan_entry;

typedef struct {
    double due, sent, done;
    int32_t status;
    uint32_t body_len;
    uint64_t body_off;
} result;

typedef struct {
    int fd;
    int busy; /* a request is in flight on it */
    int connected;
    long entry; /* plan index in flight, -1 none */
    size_t written, to_write;
    char *buf; /* answer bytes read so far */
    size_t len, cap;
    long header_len;  /* -1 until the blank line is seen */
    long content_len; /* -1: none given, read to the close */
    int status, close_after;
    int client;        /* closed loop: the client it serves, else -1 */
    double idle_since; /* when it went back to the pool */
} conn;

typedef struct {
    char **tpl;
    uint32_t *tpl_len;
    uint32_t n_tpl;
    plan_entry *plan;
    long n_plan;
    result *res;
    FILE *bodies;
    uint64_t body_off;
    struct sockaddr_in addr;
    int ep;
    conn **conns; /* by fd */
    int max_fd;
    int open_conns, max_conns;
    int hi_fd; /* highest fd ever opened: the timeout scan's bound */
    int *idle; /* fds of idle pool connections */
    int n_idle;
    long *waiting; /* plan entries waiting for a connection (FIFO) */
    long wait_head, wait_tail;
    double timeout_s;
    double idle_close_s; /* pool connections idle this long are closed */
    struct timespec t0;
    long answered;
} gen;

static double now_s(const gen *g) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - g->t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - g->t0.tv_nsec);
}

static int read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "loadgen: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 20, n = 0;
    char *d = malloc(cap);
    size_t got;
    while (d && (got = fread(d + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *nd = realloc(d, cap *= 2);
            if (!nd) {
                free(d);
                d = NULL;
            }
            d = nd;
        }
    }
    fclose(f);
    if (!d) {
        fprintf(stderr, "loadgen: %s: out of memory\n", path);
        return -1;
    }
    *data = d;
    *len = n;
    return 0;
}

static void finish(gen *g, conn *c, int status) {
    result *r = &g->res[c->entry];
    r->done = now_s(g);
    r->status = status;
    if (status > 0 && c->header_len >= 0) {
        r->body_len = (uint32_t)c->len;
        r->body_off = g->body_off;
        fwrite(c->buf, 1, c->len, g->bodies);
        g->body_off += c->len;
    }
    g->answered++;
    c->entry = -1;
    c->busy = 0;
}

static void close_conn(gen *g, conn *c) {
    epoll_ctl(g->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    g->conns[c->fd] = NULL;
    free(c->buf);
    free(c);
    g->open_conns--;
}

static conn *open_conn(gen *g) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&g->addr, sizeof(g->addr)) < 0 && errno != EINPROGRESS) {
        close(fd);
        return NULL;
    }
    if (fd > g->max_fd) {
        fprintf(stderr, "loadgen: fd %d past the table\n", fd);
        close(fd);
        return NULL;
    }
    conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return NULL;
    }
    if (fd > g->hi_fd) g->hi_fd = fd;
    c->fd = fd;
    c->entry = -1;
    c->client = -1;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.fd = fd};
    epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev);
    g->conns[fd] = c;
    g->open_conns++;
    return c;
}

static void released(gen *g, conn *c);

static void set_events(gen *g, conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.fd = c->fd};
    epoll_ctl(g->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes what it can; -> 1 when the connection was closed (error or a planned vanish). */
static int try_write(gen *g, conn *c) {
    const plan_entry *p = &g->plan[c->entry];
    const char *data = g->tpl[p->tpl];
    while (c->written < c->to_write) {
        ssize_t n = write(c->fd, data + c->written, c->to_write - c->written);
        if (n < 0 && errno == EAGAIN) {
            set_events(g, c, EPOLLOUT | EPOLLIN);
            return 0;
        }
        if (n <= 0) {
            finish(g, c, ST_ERROR);
            close_conn(g, c);
            return 1;
        }
        c->written += (size_t)n;
    }
    if (p->mode == MODE_VANISH) {
        finish(g, c, ST_VANISHED);
        close_conn(g, c);
        return 1;
    }
    set_events(g, c, EPOLLIN);
    return 0;
}

static void start_on(gen *g, conn *c, long entry) {
    const plan_entry *p = &g->plan[entry];
    c->entry = entry;
    c->busy = 1;
    c->written = 0;
    c->to_write = p->write_len < 0 || (uint32_t)p->write_len > g->tpl_len[p->tpl] ? g->tpl_len[p->tpl]
                                                                                  : (size_t)p->write_len;
    c->len = 0;
    c->header_len = -1;
    c->content_len = -1;
    c->status = 0;
    c->close_after = p->mode != MODE_POOL;
    g->res[entry].sent = now_s(g);
    if (c->connected && try_write(g, c)) released(g, NULL);
}

/* Sends plan entry `entry` now: an idle pool connection, a new one, or the wait queue. */
static void dispatch(gen *g, long entry) {
    const plan_entry *p = &g->plan[entry];
    g->res[entry].due = p->due;
    if (p->mode == MODE_POOL && g->n_idle > 0) {
        start_on(g, g->conns[g->idle[--g->n_idle]], entry);
        return;
    }
    if (g->open_conns >= g->max_conns) {
        g->waiting[g->wait_tail++] = entry;
        return;
    }
    conn *c = open_conn(g);
    if (!c) {
        g->res[entry].sent = g->res[entry].done = now_s(g);
        g->res[entry].status = ST_ERROR;
        g->answered++;
        return;
    }
    start_on(g, c, entry);
}

/* A connection is free again (or one closed): give it to a waiting entry. */
static void released(gen *g, conn *c) {
    if (c && c->client < 0) {
        if (g->wait_head < g->wait_tail) {
            start_on(g, c, g->waiting[g->wait_head++]);
            return;
        }
        c->idle_since = now_s(g);
        g->idle[g->n_idle++] = c->fd;
        return;
    }
    if (!c && g->wait_head < g->wait_tail && g->open_conns < g->max_conns)
        dispatch(g, g->waiting[g->wait_head++]);
}

/* Parses the status line and headers once the blank line is in. */
static void parse_head(conn *c) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) return;
    c->header_len = end - c->buf + 4;
    *end = '\0';
    c->status = (c->len > 12 && strncmp(c->buf, "HTTP/1.", 7) == 0) ? atoi(c->buf + 9) : ST_ERROR;
    for (char *line = strstr(c->buf, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        char *h = line + 2;
        if (strncasecmp(h, "content-length:", 15) == 0) c->content_len = atol(h + 15);
        else if (strncasecmp(h, "connection:", 11) == 0 && strcasestr(h + 11, "close")) c->close_after = 1;
    }
    *end = '\r';
}

/* Reads what is there; -> 1 when the answer is complete, 0 more to come, -1 closed/error. */
static int try_read(conn *c, int *eof) {
    *eof = 0;
    for (;;) {
        if (c->cap - c->len < 4096) {
            size_t nc = c->cap ? c->cap * 2 : 8192;
            char *nb = realloc(c->buf, nc);
            if (!nb) return -1;
            c->buf = nb;
            c->cap = nc;
        }
        ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len - 1);
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) {
            *eof = 1;
            break;
        }
        c->len += (size_t)n;
        if (c->header_len < 0) parse_head(c);
    }
    if (c->header_len >= 0 && c->content_len >= 0 &&
        c->len >= (size_t)c->header_len + (size_t)c->content_len) {
        c->len = (size_t)c->header_len + (size_t)c->content_len;
        return 1;
    }
    if (*eof) return (c->header_len >= 0 && c->content_len < 0) ? 1 : -1;
    return 0;
}

static void on_event(gen *g, conn *c, uint32_t events, long *next_closed, double stop_at) {
    if (!c->busy) { /* an idle pool connection became readable: the server closed it */
        for (int i = 0; i < g->n_idle; i++)
            if (g->idle[i] == c->fd) {
                g->idle[i] = g->idle[--g->n_idle];
                break;
            }
        close_conn(g, c);
        released(g, NULL);
        return;
    }
    if (!c->connected && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            finish(g, c, ST_ERROR);
            close_conn(g, c);
            released(g, NULL);
            return;
        }
        c->connected = 1;
        if (try_write(g, c)) {
            released(g, NULL);
            return;
        }
    } else if (c->written < c->to_write && (events & EPOLLOUT)) {
        if (try_write(g, c)) {
            released(g, NULL);
            return;
        }
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    int eof;
    int done = try_read(c, &eof);
    if (done == 0) return;
    int client = c->client;
    if (done < 0) {
        finish(g, c, c->len == 0 ? ST_CLOSED_EARLY : ST_ERROR);
        close_conn(g, c);
        c = NULL;
    } else {
        finish(g, c, c->status);
        if (c->close_after || eof) {
            close_conn(g, c);
            c = NULL;
        }
    }
    if (client >= 0) { /* closed loop: this client sends its next entry */
        if (now_s(g) >= stop_at || *next_closed >= g->n_plan) return;
        long e = (*next_closed)++;
        g->res[e].due = now_s(g);
        if (!c) {
            c = open_conn(g);
            if (!c) {
                g->res[e].sent = g->res[e].done = now_s(g);
                g->res[e].status = ST_ERROR;
                return;
            }
            c->client = client;
        }
        start_on(g, c, e);
        return;
    }
    released(g, c);
}

/* Requests past the client timeout fail; pool connections idle for
 * idle_close_s are closed by us, before a server's idle timeout can close
 * one just as a request is written on it (a POST lost to that race would
 * count against the server). */
static void check_timeouts(gen *g, double t) {
    for (int fd = 0; fd <= g->hi_fd; fd++) {
        conn *c = g->conns[fd];
        if (c && c->busy && t - g->res[c->entry].sent > g->timeout_s) {
            finish(g, c, ST_TIMEOUT);
            close_conn(g, c);
            released(g, NULL);
        }
    }
    for (int i = 0; i < g->n_idle;) {
        conn *c = g->conns[g->idle[i]];
        if (t - c->idle_since > g->idle_close_s) {
            g->idle[i] = g->idle[--g->n_idle];
            close_conn(g, c);
            released(g, NULL);
        } else {
            i++;
        }
    }
}

static int usage(void) {
    fprintf(stderr,
            "usage: comrope-loadgen --host H --port P --templates T --plan P --out O --bodies B "
            "[--closed N --seconds S] [--max-conns N] [--timeout-s S] [--progress-s S] [--idle-close-s S]\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *tpl_path = NULL, *plan_path = NULL, *out_path = NULL, *body_path = NULL;
    int port = 0, closed = 0, rc = 1;
    double seconds = 0, timeout_s = 60, progress_s = 1, idle_close_s = 2;
    gen g = {0};
    g.max_conns = 384;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--templates")) tpl_path = v;
        else if (!strcmp(k, "--plan")) plan_path = v;
        else if (!strcmp(k, "--out")) out_path = v;
        else if (!strcmp(k, "--bodies")) body_path = v;
        else if (!strcmp(k, "--closed")) closed = atoi(v);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--max-conns")) g.max_conns = atoi(v);
        else if (!strcmp(k, "--timeout-s")) timeout_s = atof(v);
        else if (!strcmp(k, "--progress-s")) progress_s = atof(v);
        else if (!strcmp(k, "--idle-close-s")) idle_close_s = atof(v);
        else return usage();
    }
    if (argc % 2 == 0 || !tpl_path || !plan_path || !out_path || !body_path || port <= 0 || g.max_conns < 1 ||
        (closed && seconds <= 0))
        return usage();
    signal(SIGPIPE, SIG_IGN);
    g.timeout_s = timeout_s;
    g.idle_close_s = idle_close_s;
    g.addr.sin_family = AF_INET;
    g.addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &g.addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host %s: not an IPv4 address\n", host);
        return 2;
    }
    char *tdata = NULL, *pdata = NULL;
    size_t tlen, plen;
    if (read_file(tpl_path, &tdata, &tlen) || read_file(plan_path, &pdata, &plen)) goto cleanup;
    for (size_t off = 0; off + 4 <= tlen;) { /* count, then index the templates */
        uint32_t n;
        memcpy(&n, tdata + off, 4);
        if (off + 4 + n > tlen) {
            fprintf(stderr, "loadgen: %s: template %u runs past the end\n", tpl_path, g.n_tpl);
            goto cleanup;
        }
        off += 4 + n;
        g.n_tpl++;
    }
    g.tpl = calloc(g.n_tpl ? g.n_tpl : 1, sizeof(char *));
    g.tpl_len = calloc(g.n_tpl ? g.n_tpl : 1, sizeof(uint32_t));
    g.n_plan = (long)(plen / 20);
    g.plan = calloc((size_t)g.n_plan + 1, sizeof(plan_entry));
    g.res = calloc((size_t)g.n_plan + 1, sizeof(result));
    g.waiting = calloc((size_t)g.n_plan + 1, sizeof(long));
    g.max_fd = 65535;
    g.conns = calloc((size_t)g.max_fd + 1, sizeof(conn *));
    g.idle = calloc((size_t)g.max_fd + 1, sizeof(int));
    if (!g.tpl || !g.tpl_len || !g.plan || !g.res || !g.waiting || !g.conns || !g.idle) {
        fprintf(stderr, "loadgen: out of memory\n");
        goto cleanup;
    }
    for (size_t off = 0, i = 0; i < g.n_tpl; i++) {
        memcpy(&g.tpl_len[i], tdata + off, 4);
        g.tpl[i] = tdata + off + 4;
        off += 4 + g.tpl_len[i];
    }
    for (long i = 0; i < g.n_plan; i++) {
        memcpy(&g.plan[i].due, pdata + 20 * i, 8);
        memcpy(&g.plan[i].tpl, pdata + 20 * i + 8, 4);
        memcpy(&g.plan[i].write_len, pdata + 20 * i + 12, 4);
        memcpy(&g.plan[i].mode, pdata + 20 * i + 16, 4);
        if (g.plan[i].tpl >= g.n_tpl) {
            fprintf(stderr, "loadgen: plan entry %ld names template %u of %u\n", i, g.plan[i].tpl, g.n_tpl);
            goto cleanup;
        }
        g.res[i].due = g.plan[i].due;
        g.res[i].sent = g.res[i].done = -1;
        g.res[i].status = ST_ERROR;
    }
    g.bodies = fopen(body_path, "wb");
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!g.bodies || g.ep < 0) {
        fprintf(stderr, "loadgen: %s: %s\n", body_path, strerror(errno));
        goto cleanup;
    }
    clock_gettime(CLOCK_MONOTONIC, &g.t0);
    long next = 0, next_closed = 0, expected = g.n_plan;
    double stop_at = closed ? seconds : 1e300, last_check = 0, last_log = 0;
    if (closed) {
        for (int k = 0; k < closed && next_closed < g.n_plan; k++) {
            conn *c = open_conn(&g);
            if (!c) break;
            c->client = k;
            long e = next_closed++;
            g.res[e].due = now_s(&g);
            start_on(&g, c, e);
        }
    }
    struct epoll_event evs[256];
    for (;;) {
        double t = now_s(&g);
        while (!closed && next < g.n_plan && g.plan[next].due <= t) dispatch(&g, next++);
        if (closed) expected = next_closed;
        if (g.answered >= expected && (closed || next >= g.n_plan)) break;
        if (t - last_check > 0.01) {
            check_timeouts(&g, t);
            last_check = t;
        }
        if (progress_s > 0 && t - last_log >= progress_s) {
            fprintf(stderr, "loadgen: %.0f s: %ld sent, %ld answered, %d connections\n", t,
                    closed ? next_closed : next, g.answered, g.open_conns);
            last_log = t;
        }
        double wait = 0.01;
        if (!closed && next < g.n_plan && g.plan[next].due - t < wait) wait = g.plan[next].due - t;
        if (wait < 0) wait = 0;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(wait * 1e9)};
        int n = epoll_pwait2(g.ep, evs, 256, &ts, NULL);
        for (int i = 0; i < n; i++) {
            conn *c = g.conns[evs[i].data.fd];
            if (c) on_event(&g, c, evs[i].events, &next_closed, stop_at);
        }
    }
    FILE *out = fopen(out_path, "wb");
    if (!out) {
        fprintf(stderr, "loadgen: %s: %s\n", out_path, strerror(errno));
        goto cleanup;
    }
    for (long i = 0; i < g.n_plan; i++) {
        char rec[40];
        memcpy(rec, &g.res[i].due, 8);
        memcpy(rec + 8, &g.res[i].sent, 8);
        memcpy(rec + 16, &g.res[i].done, 8);
        memcpy(rec + 24, &g.res[i].status, 4);
        memcpy(rec + 28, &g.res[i].body_len, 4);
        memcpy(rec + 32, &g.res[i].body_off, 8);
        fwrite(rec, 1, 40, out);
    }
    rc = fclose(out) ? 1 : 0;
cleanup:
    if (g.conns)
        for (int fd = 0; fd <= g.max_fd; fd++)
            if (g.conns[fd]) close_conn(&g, g.conns[fd]);
    if (g.bodies) fclose(g.bodies);
    if (g.ep > 0) close(g.ep);
    free(g.tpl);
    free(g.tpl_len);
    free(g.plan);
    free(g.res);
    free(g.waiting);
    free(g.conns);
    free(g.idle);
    free(tdata);
    free(pdata);
    return rc;
}
