/* conn_guard.h: what one client may hold of the HTTP side, in connections
 * and in time.
 *
 * Owns: the count of open connections of one MHD daemon, in all and per
 * client address; refusing a new connection at once when either cap is
 * reached; and the receive deadline, which bounds the time from a
 * connection's start (or the end of its previous answer, on a kept-alive
 * connection) to the last byte of a request's body. libmicrohttpd's own
 * connection timeout is one of inactivity: a client sending a byte every
 * few seconds would hold its connection, and a thread's share of the
 * connection limit, for ever. At stop: closing the connections that are
 * between requests, and waiting for the others to close.
 *
 * How, with libmicrohttpd 0.9.75:
 *  - Caps: the accept-policy callback (conn_guard_accept) refuses a
 *    connection past either cap, and libmicrohttpd closes it at once. Its
 *    own limit (MHD_OPTION_CONNECTION_LIMIT, conn_guard_mhd_limit) is set
 *    above ours: when reached, libmicrohttpd stops accepting, and new
 *    clients would wait in the listen backlog until one leaves. Connections
 *    are counted when libmicrohttpd reports them started and closed
 *    (conn_guard_notify), so the count is exact; accepts that race on
 *    several HTTP threads may pass a cap by at most (http-threads - 1).
 *  - Deadline: a connection is armed when it starts and after each answer,
 *    and disarmed when its request has been received in full. A sweeper
 *    thread shuts the socket of a connection past its deadline down
 *    (shutdown(2)); libmicrohttpd sees the connection end, completes the
 *    request (the access log says 408) and closes it. The socket stays
 *    ours to shut down until libmicrohttpd reports the connection closed,
 *    which it does before it closes the descriptor, under the same lock.
 *  - Stop: the same shutdown(2) closes the connections that are between
 *    requests (conn_guard_close_idle), so that libmicrohttpd's stop, which
 *    closes every connection, finds none with a request under way.
 *
 * The counters are read at scrape time (conn_guard_stats). */
#ifndef COMROPE_CONN_GUARD_H
#define COMROPE_CONN_GUARD_H

#include <microhttpd.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct conn_guard conn_guard;

typedef struct {
    int max_connections;    /* open connections at most */
    int max_per_client;     /* per client address; 0: no cap of its own */
    int receive_timeout_ms; /* the receive deadline */
} conn_guard_params;

typedef struct {
    int open;                            /* open connections now */
    unsigned long long refused_limit;    /* refused at max_connections */
    unsigned long long refused_client;   /* refused at max_per_client */
    unsigned long long timeouts_idle;    /* cut at the deadline before a request line came */
    unsigned long long timeouts_request; /* cut at the deadline in a request's headers or body */
} conn_guard_stats;

/* Starts the sweeper thread. Returns NULL with a message. */
conn_guard *conn_guard_new(conn_guard_params p, char *err, size_t errlen);

/* Stops the sweeper and frees. The daemon using g must have been stopped
 * (every connection reported closed). */
void conn_guard_free(conn_guard *g);

/* Makes room for `connections` open sockets (and a reserve for the rest
 * of the process) in RLIMIT_NOFILE, raising the soft limit up to the hard
 * one if needed. Past the limit accept() fails, libmicrohttpd stops
 * accepting, and clients wait in the backlog even below max-connections:
 * so a limit too low for the caps is refused at start. Returns 0, or -1
 * with a message. */
#define CONN_GUARD_FD_RESERVE 64
int conn_guard_reserve_fds(int connections, char *err, size_t errlen);

/* The value for MHD_OPTION_CONNECTION_LIMIT: libmicrohttpd splits it among
 * its threads, and each share must stay above our cap. */
unsigned int conn_guard_mhd_limit(const conn_guard *g, int http_threads);

/* MHD_AcceptPolicyCallback (cls = g). */
enum MHD_Result conn_guard_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen);

/* MHD_NotifyConnectionCallback (cls = g). */
void conn_guard_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                       enum MHD_ConnectionNotificationCode code);

/* A pointer another module keeps with connection c for its life (tls.c:
 * the certificate pair its handshake was served); NULL when c is not
 * tracked (out of memory when it started). Whatever it holds is released
 * by the notify callback that calls conn_guard_notify, at
 * MHD_CONNECTION_NOTIFY_CLOSED, before that call frees it. */
void **conn_guard_slot(struct MHD_Connection *c);

/* A request line has arrived on c (MHD_OPTION_URI_LOG_CALLBACK): a cut
 * from now on is counted as one in a request, not on an idle connection. */
void conn_guard_request_begun(struct MHD_Connection *c);

/* The request on c has been received in full (headers and body): its
 * deadline no longer applies. */
void conn_guard_received(struct MHD_Connection *c);

/* The answer on c was sent and the connection is kept alive: the next
 * request's deadline starts now. */
void conn_guard_rearm(struct MHD_Connection *c);

/* Stopping: shuts down every connection that is idle -- between requests
 * (no request line since its last answer, or none yet) with no byte of a
 * next one in its socket; libmicrohttpd then closes them. A connection
 * with a request under way is left to finish it (while draining, its
 * answer closes it). Returns how many were shut; *open (if not NULL) is
 * how many stay open. A client that writes a request just as its idle
 * connection is shut sees the connection close unanswered: the race every
 * HTTP server has in closing an idle connection (RFC 9112 9.6). */
int conn_guard_close_idle(conn_guard *g, int *open);

/* After conn_guard_close_idle: waits until no connection is open, or
 * until deadline_ns (monotonic), shutting down each one that turns idle
 * meanwhile (looked for at each close and every 50 ms). Returns how many
 * are still open. */
int conn_guard_wait_closed(conn_guard *g, int64_t deadline_ns);

/* Whether, and why, the guard cut c: at its receive deadline, or as idle
 * at stop (a request that begins on it after all came in the race above). */
typedef enum { CONN_GUARD_NOT_CUT, CONN_GUARD_CUT_DEADLINE, CONN_GUARD_CUT_IDLE } conn_guard_cut;
conn_guard_cut conn_guard_cut_of(struct MHD_Connection *c);

void conn_guard_stats_get(conn_guard *g, conn_guard_stats *out);

#endif
