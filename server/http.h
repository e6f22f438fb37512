/* http.h: the HTTP side of comrope-serve (libmicrohttpd).
 *
 * Owns: the MHD daemons (main port, and /metrics on its own port when
 * configured), routing, per-request state (body accumulated here, capped),
 * auth, X-Request-Id, limits checked before queueing (Content-Length, media
 * type, JSON size, image header dimensions, resolution), the parse threads,
 * suspending a connection while its job is queued and resuming it from the worker's completion, what
 * the access log says of each request (its format: log.h), and the
 * readiness / drain state. Connection caps and the receive deadline are
 * conn_guard's (conn_guard.h); http.c tells it when a request has been
 * received and when an answer has been sent.
 *
 * Nothing slow runs on an MHD thread: a complete inference body is parsed
 * and its image headers read on a parse thread (parse-threads of them)
 * while its connection is suspended; decoding and inference happen in the
 * batcher. */
#ifndef COMROPE_HTTP_H
#define COMROPE_HTTP_H

#include <pthread.h>
#include <stdatomic.h>

#include "batcher.h"
#include "config.h"
#include "metrics.h"
#include "proto.h"
#include "repository.h"
#include "tls.h"

typedef struct http_server http_server;

typedef struct {
    const server_config *cfg;
    repository *repo; /* the models: each request holds the version it was routed to */
    metrics *metrics;
    const char *build_version; /* the server's metadata */
    char **api_keys;           /* NULL-terminated; NULL: no auth */
    tls_store *tls;            /* HTTPS on both ports; NULL: plain HTTP */
} http_params;

/* Starts listening. Returns NULL with a message (address in use, ...).
 * Until http_set_loaded the start-up load runs: liveness answers 200,
 * readiness (overall and each model's) 503, the models' routes 503 with
 * Retry-After; /metrics and the console are served. */
http_server *http_start(const http_params *p, char *err, size_t errlen);

/* The start-up load is over: the models' routes are served; readiness
 * follows the repository's. Once, from the thread that started the server. */
void http_set_loaded(http_server *s);

/* The bound ports (useful with --port 0). */
int http_port(http_server *s);
int http_metrics_port(http_server *s);

/* Readiness 503 from now on, new connections refused, requests arriving on
 * kept-alive connections answered 503 with Connection: close. */
void http_begin_drain(http_server *s);

/* After the drain (the batchers have answered their jobs): waits up to
 * timeout_ms for every request to be answered and every connection to
 * close, so that http_stop cuts nothing under way. Idle connections are
 * closed at once; one whose request line came before is answered (with
 * Connection: close) and then closes. The metrics port stops accepting. */
void http_close_connections(http_server *s, int timeout_ms);

/* Stops the daemons and frees. Every suspended connection must have been
 * resumed (batcher_free answers every job) before this. */
void http_stop(http_server *s);

#endif
