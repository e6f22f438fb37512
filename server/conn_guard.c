/* conn_guard.c: connection caps and the receive deadline. See conn_guard.h. */
#include "conn_guard.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "clock.h"

#define CLIENT_BUCKETS 256
/* The sweeper wakes at most this often, however many deadlines fall close
 * together: a cut may come this late. */
#define SWEEP_GRANULARITY_NS 50000000LL

/* One client address and its open connections. */
typedef struct client {
    unsigned char addr[16];
    int addr_len; /* 4 or 16 */
    int open;
    struct client *next;
} client;

/* One connection (libmicrohttpd's socket context). On the armed list while
 * its request is being received; the list is in deadline order, since
 * every deadline is "now + the same timeout" at the time it is armed. */
typedef struct conn {
    conn_guard *g;
    int fd;
    client *client;
    int64_t deadline_ns; /* 0: not armed */
    int begun;           /* a request line has come since it was armed */
    conn_guard_cut cut;  /* shut down by the guard (then never armed again), and why */
    void *slot;          /* conn_guard_slot's: touched only by the connection's MHD thread */
    struct conn *prev, *next;
} conn;

struct conn_guard {
    conn_guard_params p;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_cond_t changed; /* a connection closed */
    pthread_t sweeper;
    int stop;
    conn *head, *tail; /* armed, earliest deadline first */
    client *clients[CLIENT_BUCKETS];
    conn_guard_stats stats;
};

/* The client key of an address: its IP, without the port; an IPv4 client
 * of an IPv6 socket (::ffff:a.b.c.d) is the IPv4 address. Returns the key's
 * length, 0 for an address of another family (not capped per client). */
static int client_key(const struct sockaddr *addr, socklen_t len, unsigned char out[16]) {
    static const unsigned char v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        memcpy(out, &((const struct sockaddr_in *)addr)->sin_addr, 4);
        return 4;
    }
    if (addr && addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const unsigned char *a = ((const struct sockaddr_in6 *)addr)->sin6_addr.s6_addr;
        if (memcmp(a, v4_mapped, 12) == 0) {
            memcpy(out, a + 12, 4);
            return 4;
        }
        memcpy(out, a, 16);
        return 16;
    }
    return 0;
}

static client **client_slot(conn_guard *g, const unsigned char *key, int len) {
    unsigned h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < len; i++) h = (h ^ key[i]) * 16777619u;
    client **slot = &g->clients[h % CLIENT_BUCKETS];
    while (*slot && !((*slot)->addr_len == len && memcmp((*slot)->addr, key, (size_t)len) == 0))
        slot = &(*slot)->next;
    return slot;
}

/* --- the armed list (under g->lock) ---------------------------------------- */

static void unlink_conn(conn_guard *g, conn *c) {
    if (!c->deadline_ns) return;
    if (c->prev) c->prev->next = c->next;
    else g->head = c->next;
    if (c->next) c->next->prev = c->prev;
    else g->tail = c->prev;
    c->prev = c->next = NULL;
    c->deadline_ns = 0;
}

static void arm(conn_guard *g, conn *c) {
    unlink_conn(g, c);
    c->begun = 0;
    c->deadline_ns = monotonic_ns() + (int64_t)g->p.receive_timeout_ms * 1000000;
    c->prev = g->tail;
    if (g->tail) g->tail->next = c;
    else g->head = c;
    g->tail = c;
    if (g->head == c) pthread_cond_signal(&g->wake); /* the sweeper may be waiting for nothing */
}

/* Whether c waits for a request line with nothing of one received: armed,
 * none begun, and no byte in its socket. A byte there may be a request
 * libmicrohttpd is about to read (it would read it even after a shutdown,
 * then fail to send the answer): such a connection is left to begin it. */
static int idle(const conn *c) {
    char byte;
    return c->deadline_ns && !c->begun && recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

/* Shuts c down: libmicrohttpd's thread sees the end of the stream and
 * closes the connection; the descriptor is still open (see the header). */
static void cut(conn_guard *g, conn *c, conn_guard_cut why) {
    unlink_conn(g, c);
    c->cut = why;
    shutdown(c->fd, SHUT_RDWR);
}

/* Shuts down every idle connection (see idle()). Returns how many. */
static int shut_idle(conn_guard *g) {
    int n = 0;
    conn *c = g->head;
    while (c) {
        conn *next = c->next;
        if (idle(c)) {
            cut(g, c, CONN_GUARD_CUT_IDLE);
            n++;
        }
        c = next;
    }
    return n;
}

static void *sweep(void *arg) {
    conn_guard *g = arg;
    pthread_mutex_lock(&g->lock);
    while (!g->stop) {
        int64_t now = monotonic_ns();
        while (g->head && g->head->deadline_ns <= now) {
            conn *c = g->head;
            if (c->begun) g->stats.timeouts_request++;
            else g->stats.timeouts_idle++;
            cut(g, c, CONN_GUARD_CUT_DEADLINE);
        }
        if (!g->head) {
            pthread_cond_wait(&g->wake, &g->lock);
            continue;
        }
        int64_t at = g->head->deadline_ns;
        if (at < now + SWEEP_GRANULARITY_NS) at = now + SWEEP_GRANULARITY_NS;
        struct timespec ts = monotonic_timespec(at);
        pthread_cond_timedwait(&g->wake, &g->lock, &ts);
    }
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

/* --- the interface ---------------------------------------------------------- */

conn_guard *conn_guard_new(conn_guard_params p, char *err, size_t errlen) {
    conn_guard *g = calloc(1, sizeof(*g));
    pthread_condattr_t attr;
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->p = p;
    pthread_mutex_init(&g->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g->wake, &attr);
    pthread_cond_init(&g->changed, &attr);
    pthread_condattr_destroy(&attr);
    int rc = pthread_create(&g->sweeper, NULL, sweep, g);
    if (rc) {
        snprintf(err, errlen, "cannot start the connection sweeper: %s", strerror(rc));
        pthread_cond_destroy(&g->changed);
        pthread_cond_destroy(&g->wake);
        pthread_mutex_destroy(&g->lock);
        free(g);
        return NULL;
    }
    return g;
}

void conn_guard_free(conn_guard *g) {
    if (!g) return;
    pthread_mutex_lock(&g->lock);
    g->stop = 1;
    pthread_cond_signal(&g->wake);
    pthread_mutex_unlock(&g->lock);
    pthread_join(g->sweeper, NULL);
    for (int i = 0; i < CLIENT_BUCKETS; i++) /* none left once every connection closed */
        while (g->clients[i]) {
            client *next = g->clients[i]->next;
            free(g->clients[i]);
            g->clients[i] = next;
        }
    pthread_cond_destroy(&g->changed);
    pthread_cond_destroy(&g->wake);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

int conn_guard_reserve_fds(int connections, char *err, size_t errlen) {
    struct rlimit rl;
    rlim_t need = (rlim_t)connections + CONN_GUARD_FD_RESERVE;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need) return 0;
    rlim_t raised = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
    if (raised > rl.rlim_cur) {
        struct rlimit want = {raised, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0) rl.rlim_cur = raised;
    }
    if (rl.rlim_cur >= need) return 0;
    snprintf(err, errlen,
             "max-connections: %d connections need %llu open files, but the limit is %llu "
             "(hard %llu): raise it (ulimit -n, systemd LimitNOFILE=) or lower max-connections",
             connections, (unsigned long long)need, (unsigned long long)rl.rlim_cur,
             (unsigned long long)rl.rlim_max);
    return -1;
}

unsigned int conn_guard_mhd_limit(const conn_guard *g, int http_threads) {
    /* each thread's share (limit / threads) at least our cap plus the
     * accepts that may race past it */
    unsigned long long t = http_threads > 0 ? (unsigned long long)http_threads : 1;
    unsigned long long limit = ((unsigned long long)g->p.max_connections + t) * t;
    return limit > INT_MAX ? INT_MAX : (unsigned int)limit;
}

enum MHD_Result conn_guard_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
    conn_guard *g = cls;
    unsigned char key[16];
    enum MHD_Result ok = MHD_YES;
    int len = client_key(addr, addrlen, key);
    pthread_mutex_lock(&g->lock);
    if (g->stats.open >= g->p.max_connections) {
        g->stats.refused_limit++;
        ok = MHD_NO;
    } else if (g->p.max_per_client > 0 && len) {
        client *c = *client_slot(g, key, len);
        if (c && c->open >= g->p.max_per_client) {
            g->stats.refused_client++;
            ok = MHD_NO;
        }
    }
    pthread_mutex_unlock(&g->lock);
    return ok;
}

void conn_guard_notify(void *cls, struct MHD_Connection *mc, void **socket_context,
                       enum MHD_ConnectionNotificationCode code) {
    conn_guard *g = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn *c = calloc(1, sizeof(*c));
        *socket_context = c;
        if (!c) return; /* then it is neither counted nor timed: only under memory exhaustion */
        c->g = g;
        const union MHD_ConnectionInfo *fd = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *ad = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        c->fd = fd ? fd->connect_fd : -1;
        unsigned char key[16];
        int len = ad ? client_key(ad->client_addr, sizeof(struct sockaddr_in6), key) : 0;
        pthread_mutex_lock(&g->lock);
        g->stats.open++;
        if (len) {
            client **slot = client_slot(g, key, len);
            if (!*slot && (*slot = calloc(1, sizeof(client)))) {
                memcpy((*slot)->addr, key, (size_t)len);
                (*slot)->addr_len = len;
            }
            c->client = *slot;
            if (c->client) c->client->open++;
        }
        if (c->fd >= 0) arm(g, c);
        pthread_mutex_unlock(&g->lock);
        return;
    }
    conn *c = *socket_context;
    *socket_context = NULL;
    if (!c) return;
    pthread_mutex_lock(&g->lock);
    unlink_conn(g, c);
    g->stats.open--;
    pthread_cond_broadcast(&g->changed);
    if (c->client && --c->client->open == 0) {
        client **slot = client_slot(g, c->client->addr, c->client->addr_len);
        *slot = c->client->next;
        free(c->client);
    }
    pthread_mutex_unlock(&g->lock);
    free(c);
}

static conn *conn_of(struct MHD_Connection *mc) {
    const union MHD_ConnectionInfo *i = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

void **conn_guard_slot(struct MHD_Connection *mc) {
    conn *c = conn_of(mc);
    return c ? &c->slot : NULL;
}

void conn_guard_request_begun(struct MHD_Connection *mc) {
    conn *c = conn_of(mc);
    if (!c) return;
    pthread_mutex_lock(&c->g->lock);
    c->begun = 1;
    pthread_mutex_unlock(&c->g->lock);
}

void conn_guard_received(struct MHD_Connection *mc) {
    conn *c = conn_of(mc);
    if (!c) return;
    pthread_mutex_lock(&c->g->lock);
    unlink_conn(c->g, c);
    pthread_mutex_unlock(&c->g->lock);
}

void conn_guard_rearm(struct MHD_Connection *mc) {
    conn *c = conn_of(mc);
    if (!c || c->fd < 0) return;
    pthread_mutex_lock(&c->g->lock);
    if (!c->cut) arm(c->g, c);
    pthread_mutex_unlock(&c->g->lock);
}

conn_guard_cut conn_guard_cut_of(struct MHD_Connection *mc) {
    conn *c = conn_of(mc);
    if (!c) return CONN_GUARD_NOT_CUT;
    pthread_mutex_lock(&c->g->lock);
    conn_guard_cut why = c->cut;
    pthread_mutex_unlock(&c->g->lock);
    return why;
}

int conn_guard_close_idle(conn_guard *g, int *open) {
    pthread_mutex_lock(&g->lock);
    int n = shut_idle(g);
    if (open) *open = g->stats.open - n;
    pthread_mutex_unlock(&g->lock);
    return n;
}

int conn_guard_wait_closed(conn_guard *g, int64_t deadline_ns) {
    pthread_mutex_lock(&g->lock);
    while (g->stats.open > 0) {
        int64_t now = monotonic_ns();
        if (now >= deadline_ns) break;
        /* A pass at each close and at least every SWEEP_GRANULARITY_NS: one
         * left alone with bytes waiting may have turned out idle (a request
         * line cut short), and nothing else would wake us for it. */
        int64_t at = now + SWEEP_GRANULARITY_NS < deadline_ns ? now + SWEEP_GRANULARITY_NS : deadline_ns;
        struct timespec ts = monotonic_timespec(at);
        pthread_cond_timedwait(&g->changed, &g->lock, &ts);
        shut_idle(g);
    }
    int left = g->stats.open;
    pthread_mutex_unlock(&g->lock);
    return left;
}

void conn_guard_stats_get(conn_guard *g, conn_guard_stats *out) {
    pthread_mutex_lock(&g->lock);
    *out = g->stats;
    pthread_mutex_unlock(&g->lock);
}
