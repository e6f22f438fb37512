/* http.c: routing, per-request state, suspend/resume, access log.
 * See http.h. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "coding.h"
#include "conn_guard.h"
#include "console.h"
#include "input.h"
#include "log.h"

struct http_server {
    http_params p;
    atomic_int loaded; /* 1 once http_set_loaded has run: the start-up load is over */
    struct MHD_Daemon *main_daemon, *metrics_daemon;
    /* their listening sockets once taken back (stop_accepting): shut down
     * at once, closed after their daemon has stopped; -1 before */
    MHD_socket main_quiesced, metrics_quiesced;
    conn_guard *main_guard, *metrics_guard; /* caps and receive deadlines, one per daemon */
    int port, metrics_port;
    atomic_int draining;
    atomic_ullong next_id;
    atomic_llong body_bytes; /* reserved by the bodies held now (body-budget-bytes) */
    pthread_mutex_t lock;
    pthread_cond_t idle;
    int open_requests;        /* allocated http_request structs */
    unsigned long incomplete; /* requests that ended without a complete answer (under lock) */
    unsigned long raced;      /* of those, ones that came as their idle connection was closed at stop */
    /* the parse threads: bodies are parsed there, never on an MHD thread */
    pthread_t *parsers;
    int parsers_started;
    pthread_mutex_t parse_lock;
    pthread_cond_t parse_work;
    struct parse_queue {
        struct parse_item *head, *tail;
    } parse_light, parse_heavy; /* parse_next */
    int parse_took_heavy;       /* the last body taken was heavy */
    int parse_stopping;
    /* libmicrohttpd's messages: a window of at most MHD_LOG_BURST lines (mhd_log) */
    pthread_mutex_t mhd_log_lock;
    int64_t mhd_log_window;        /* when the current window began */
    int mhd_log_lines;             /* lines written in it */
    unsigned long mhd_log_dropped; /* messages left out since the last line saying so */
};

/* RESPOND: the answer is ready to queue. DISCARD: the answer is ready but
 * the request is not over: its body (if any) is read and dropped first.
 * READING: an inference body is being accumulated. QUEUED: suspended, a
 * worker has the job. ANSWERED: resumed with the worker's answer. */
enum { PHASE_RESPOND = 0, PHASE_DISCARD, PHASE_READING, PHASE_QUEUED, PHASE_ANSWERED };

/* Everything about one HTTP request; lives from the first call of the
 * access handler to MHD's completion callback, which frees it. */
typedef struct {
    http_server *s;
    struct MHD_Connection *conn;
    int endpoint;
    int phase;
    int metrics_only; /* arrived on the metrics port */
    char method[16];
    char path[512]; // longer: 414 (model names run to 255 bytes)
    char request_id[128];
    char user_agent[256]; /* cut to fit; for the access log */
    int64_t start_ns;
    /* body */
    uint8_t *body;
    size_t body_len, body_cap;
    int body_too_large;
    int body_over_budget;   /* a chunked body that outgrew body-budget-bytes: dropped */
    int64_t body_reserved;  /* of s->body_bytes: the body, then what the parsed request keeps of it */
    int64_t content_length; /* announced, or -1 (chunked) */
    /* a compressed body (Content-Encoding gzip or deflate) is received as
     * sent, as an uncompressed body is, and inflated on a parse thread
     * (body_decode): then r->body holds what it decompresses to */
    int coding;               /* CODING_*: the body's */
    const char *coding_error; /* not data of its coding, truncated, or more after it (static) */
    int resp_coding;          /* CODING_*: what Accept-Encoding asked the answer to be */
    int resp_compressed;      /* resp is that (Content-Encoding) */
    size_t resp_plain_len;    /* resp's length before compression */
    int arriving;             /* counted in batcher_arrival_begin */
    /* captured on the MHD thread for the parse thread */
    char *ctype;       /* Content-Type, or NULL */
    const char *media; /* the body's media type: ctype, or for a v1 body with a generic one (none,
                          application/octet-stream) what v1_sniff_media_type sees in it, NULL
                          when neither JSON nor an image (415) or the body was refused unparsed;
                          set once the body is complete */
    char *header_len;  /* Inference-Header-Content-Length, or NULL */
    char **query;      /* key, value pairs of a raw-image request, NULL-terminated */
    int nquery;
    served_model *mv; /* the model version it was routed to: a reference, released at the end */
    int stats_scope;  /* statistics of: STATS_VERSION, STATS_MODEL (every version), STATS_ALL */
    int control;      /* POST /v2/repository/models/<m>/load (1) or /unload (2), after the body */
    char control_name[256];
    /* inference */
    proto_request req;
    int parsed;
    job job;
    int fd; /* the connection's socket, for client_gone */
    /* the answer, built by a worker or here */
    int status;
    char *resp;          /* the body: malloc'd, or static when resp_persistent */
    int resp_persistent; /* resp is not freed (error_out_of_memory) */
    size_t resp_len, resp_json_len;
    const char *content_type;
    const char *allow;          /* a 405's Allow header: the route's methods */
    int cors;                   /* add the CORS headers (cors-origin is set) */
    const console_asset *asset; /* a console file: its 200 answer is the static asset */
    int retry_after;
    int queued;    /* the answer went to MHD (queue_answer): its status is final and counted */
    int ready_yes; /* a readiness answer "ready": keeps its connection (queue_answer) */
    size_t bytes_sent;
} http_request;

/* What a Triton statistics route covers: .../versions/<v>/stats one
 * version, /v2/models/<m>/stats every ready version of m, /v2/models/stats
 * every ready version of every model. */
enum { STATS_VERSION = 0, STATS_MODEL, STATS_ALL };

static int64_t now_ns(void) { return monotonic_ns(); }

/* --- answers ------------------------------------------------------------ */

/* Stores an answer in r (takes body). */
static void set_answer(http_request *r, int status, const char *content_type, char *body, size_t len,
                       size_t json_len) {
    if (!r->resp_persistent) free(r->resp);
    r->resp_persistent = 0;
    r->resp_compressed = 0;
    r->status = status;
    r->content_type = content_type;
    r->resp = body;
    r->resp_len = len;
    r->resp_json_len = json_len;
}

/* An error whose own JSON could not be built: malloc failed (RLIMIT_AS or
 * a cgroup's memory limit reached). Still a JSON error: its message was an
 * empty body under application/json (found with prlimit --as on a serving
 * daemon: every request 500 and empty; tests/integration/oslimits.sh). */
static const char error_out_of_memory[] = "{\"error\":\"out of memory\"}";

static void set_error(http_request *r, int status, const char *msg) {
    char *body = proto_error_json(msg);
    if (body) {
        set_answer(r, status, "application/json", body, strlen(body), 0);
        return;
    }
    set_answer(r, status, "application/json", (char *)error_out_of_memory, sizeof(error_out_of_memory) - 1,
               0);
    r->resp_persistent = 1;
}

static void set_json(http_request *r, int status, char *json) {
    if (!json) {
        set_error(r, 500, "out of memory");
        return;
    }
    set_answer(r, status, "application/json", json, strlen(json), 0);
}

/* --- the body budget ------------------------------------------------------ */

/* What an announced body reserves of body-budget-bytes before any of it is
 * read (all of a smaller one); the rest is reserved as it arrives, by
 * doubling. Reserving all of Content-Length up front let 16 connections
 * that announced 64 MiB and sent a byte each hold the whole 1 GiB budget
 * (every other upload 503) for a receive deadline, renewably; now such
 * a client holds what it sends, and 1 MiB per connection at most besides
 * (a compressed body too: it is inflated only once complete, body_decode). */
#define BODY_RESERVE_AHEAD ((int64_t)1 << 20)

/* Reserves of body-budget-bytes what r's body needs to grow to `want`
 * bytes or, when the budget has not the room, half of the room left, but
 * never less than `need`. Returns the capacity the body may have now (at
 * least need), or 0 when not even need fits (nothing reserved). Falling
 * back to exactly `need` grew a big body by one chunk per realloc: a 60 MB
 * chunked body under a budget of 62 MB took 14-30 s of copying on its HTTP
 * thread instead of 1. Taking all the room left instead crowded out the
 * next body: two 9 MiB chunked bodies under 20 MiB, one refused. With
 * half, a lone body still needs only a few reallocs, and the others keep
 * the other half. Any thread. */
static size_t body_reserve_upto(http_request *r, size_t need, size_t want) {
    http_server *s = r->s;
    int64_t lo = (int64_t)need - r->body_reserved, hi = (int64_t)want - r->body_reserved, add;
    if (hi <= 0) return want; /* reserved already (ahead of an announced body) */
    long long held = atomic_load(&s->body_bytes);
    do {
        int64_t room = s->p.cfg->body_budget_bytes - held;
        if (lo > room) return 0;
        add = hi <= room ? hi : room / 2 > lo ? room / 2 : lo;
        if (add < 0) add = 0;
    } while (!atomic_compare_exchange_weak(&s->body_bytes, &held, held + add));
    r->body_reserved += add;
    return (size_t)r->body_reserved > need ? (size_t)r->body_reserved : need;
}

/* Frees r's body and gives its reservation back. */
static void body_free(http_request *r) {
    free(r->body);
    r->body = NULL;
    r->body_cap = 0;
    if (r->body_reserved) atomic_fetch_sub(&r->s->body_bytes, r->body_reserved);
    r->body_reserved = 0;
}

/* Frees r's body buffer once parsed, but keeps `keep` bytes of its share
 * of body-budget-bytes (at most the share it had) until body_free: what
 * the parsed request still holds of it (parsed_bytes). */
static void body_shrink(http_request *r, int64_t keep) {
    free(r->body);
    r->body = NULL;
    r->body_cap = 0;
    if (keep > r->body_reserved) keep = r->body_reserved;
    if (r->body_reserved > keep) atomic_fetch_sub(&r->s->body_bytes, r->body_reserved - keep);
    r->body_reserved = keep;
}

/* What a parsed request holds of its body until it is answered: its
 * encoded images (a worker decodes them only when their batch runs, and
 * they are freed with the request) and its id. Released at parse, they
 * were held by no budget: 30 queued requests of 60 MB PNGs, parsed one
 * after another, held 909 MB under a body budget of 256 MiB. */
static int64_t parsed_bytes(const proto_request *req) {
    int64_t n = req->id ? (int64_t)strlen(req->id) + 1 : 0;
    for (int i = 0; i < req->num_images; i++) n += (int64_t)req->images[i].encoded_len;
    return n;
}

static void set_busy_bodies(http_request *r, int64_t n) {
    char err[300];
    snprintf(err, sizeof(err),
             "busy: the request bodies being received, parsed or queued hold %lld bytes, this one "
             "needs %lld more (body-budget-bytes %lld)",
             (long long)atomic_load(&r->s->body_bytes), (long long)n,
             (long long)r->s->p.cfg->body_budget_bytes);
    set_error(r, 503, err);
    r->retry_after = 1;
}

/* The CORS headers of an answer when cors-origin is set: the origin on
 * every answer, and what a preflight (OPTIONS) asks about on its 204. */
static int add_cors_headers(struct MHD_Response *resp, const http_request *r) {
    int bad =
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->s->p.cfg->cors_origin) != MHD_YES;
    if (strcmp(r->s->p.cfg->cors_origin, "*") != 0)
        bad |= MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Origin") != MHD_YES;
    bad |= MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                   "Inference-Header-Content-Length, X-Request-Id, Retry-After") != MHD_YES;
    if (r->status == 204 && r->allow) {
        bad |= MHD_add_response_header(resp, "Access-Control-Allow-Methods", r->allow) != MHD_YES;
        bad |= MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                       "Authorization, Content-Type, Content-Encoding, "
                                       "Inference-Header-Content-Length, X-Request-Id") != MHD_YES;
        bad |= MHD_add_response_header(resp, "Access-Control-Max-Age", "600") != MHD_YES;
    }
    return bad;
}

/* Counts r in the metrics once its status is final. Requests answered
 * while the model loaded have no metrics to count in. */
static void count_request(http_request *r) {
    http_server *s = r->s;
    if (atomic_load(&s->loaded))
        metrics_request(s->p.metrics, r->mv ? r->mv->series : NULL, r->endpoint, r->status,
                        (double)(now_ns() - r->start_ns) / 1e9);
}

/* Hands r's answer to MHD. It is counted here, before the client can have
 * it, not when MHD reports the send done: a client that reads its answer
 * and then asks for the statistics (Triton's stats route, a scrape) must
 * find its request in them, whichever HTTP thread answers the second
 * request. The duration counted is thus until the answer was ready, not
 * until its last byte left. */
static enum MHD_Result queue_answer(struct MHD_Connection *c, http_request *r) {
    struct MHD_Response *resp;
    char *body = r->resp;
    r->resp = NULL;
    if (r->asset && r->status == 200)
        resp = MHD_create_response_from_buffer(r->asset->len, (void *)r->asset->data, MHD_RESPMEM_PERSISTENT);
    else
        resp = MHD_create_response_from_buffer(r->resp_len, body ? body : (char *)"",
                                               body && !r->resp_persistent ? MHD_RESPMEM_MUST_FREE
                                                                           : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        if (!r->resp_persistent) free(body);
        return MHD_NO;
    }
    if (r->content_type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    MHD_add_response_header(resp, "X-Request-Id", r->request_id);
    /* every answer, not the console's alone: a JSON error quotes the path
     * the client sent, and a browser that sniffed it would render
     * `/<script>...` as HTML */
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    size_t plain_len = r->resp_compressed ? r->resp_plain_len : r->resp_len;
    if (r->resp_json_len && r->resp_json_len < plain_len) {
        char n[32];
        snprintf(n, sizeof(n), "%zu", r->resp_json_len);
        MHD_add_response_header(resp, "Inference-Header-Content-Length", n);
    }
    if (r->resp_compressed)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_ENCODING, coding_name(r->resp_coding));
    /* an inference answer is compressed or not by Accept-Encoding: a cache
     * must not give one client's to another */
    if (r->status == 200 && (r->endpoint == ENDPOINT_V1_CLASSIFY || r->endpoint == ENDPOINT_V2_INFER))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Accept-Encoding");
    if (r->retry_after) {
        char n[16];
        snprintf(n, sizeof(n), "%d", r->retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, n);
    }
    if (r->asset && console_add_headers(resp)) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    if (r->status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (r->allow && (r->status == 405 || (r->status == 204 && r->cors)))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (r->cors && add_cors_headers(resp, r)) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    /* While draining, answers close their connection; not a "ready" one,
     * decided just before the drain began: a client polling readiness on a
     * kept-alive connection would find it closed under a 200. Its next
     * request there gets the 503 and the close. */
    if (atomic_load(&r->s->draining) && !r->ready_yes)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    r->bytes_sent = r->resp_len;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    if (ret == MHD_YES) { /* MHD sends it after this handler returns, on this thread */
        r->queued = 1;
        count_request(r);
    }
    return ret;
}

/* --- the worker's completion --------------------------------------------- */

/* An inference answer compressed as Accept-Encoding asked (Triton does so
 * whatever its size). Out of memory, it goes as it is: the client takes
 * identity too. Inference-Header-Content-Length still counts in the
 * uncompressed body, as tritonclient reads it after decompressing. */
static void compress_answer(http_request *r) {
    r->resp_plain_len = r->resp_len;
    if (r->resp_coding == CODING_IDENTITY) return;
    size_t n;
    char *z = coding_compress(r->resp_coding, r->resp, r->resp_len, &n);
    if (!z) return;
    free(r->resp);
    r->resp = z;
    r->resp_len = n;
    r->resp_compressed = 1;
}

/* Runs on a batcher thread: builds the response body and resumes the
 * connection; the MHD thread then queues it. */
static void job_done(job *j, void *arg) {
    http_request *r = arg;
    if (j->status == 200) {
        proto_result res;
        int *h = malloc(sizeof(int) * (size_t)r->req.num_images);
        int *w = malloc(sizeof(int) * (size_t)r->req.num_images);
        proto_body body = {0};
        int rc = -1;
        if (h && w) {
            for (int i = 0; i < r->req.num_images; i++) {
                h[i] = r->req.images[i].h;
                w[i] = r->req.images[i].w;
            }
            res.num_images = r->req.num_images;
            res.num_class = r->mv->pm.num_class;
            res.logits = j->logits;
            res.h = h;
            res.w = w;
            res.queue_ms = (double)(j->started_ns - j->enqueued_ns) / 1e6;
            res.compute_ms = (double)(j->finished_ns - j->started_ns) / 1e6;
            res.total_ms = (double)(monotonic_ns() - r->start_ns) / 1e6;
            rc = r->req.api == PROTO_V1 ? v1_response(&r->mv->pm, &r->req, &res, &body)
                                        : v2_response(&r->mv->pm, &r->req, &res, &body);
        }
        free(h);
        free(w);
        if (rc == 0) {
            set_answer(r, 200, body.json_len < body.len ? "application/octet-stream" : "application/json",
                       body.data, body.len, body.json_len);
            compress_answer(r);
        } else set_error(r, 500, "out of memory building the response");
    } else {
        set_error(r, j->status, j->error);
        if (j->status == 503) r->retry_after = 1;
    }
    r->phase = PHASE_ANSWERED;
    MHD_resume_connection(r->conn);
}

/* Runs on a batcher thread before the job's images are computed: whether
 * the client has closed its connection. MHD does not watch a suspended
 * connection, so we look: hangup or error, or readable with nothing to
 * read (end of stream). A client that half-closes its side while waiting
 * counts as gone, as it does for nginx; HTTP clients do not do that. Data
 * (a pipelined request) means alive. The socket stays open while the
 * connection is suspended, so the fd is the client's. */
static int client_gone(void *arg) {
    http_request *r = arg;
    if (r->fd < 0) return 0;
    struct pollfd p = {r->fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)) return 1;
    char byte;
    return (p.revents & POLLIN) && recv(r->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* --- helpers ------------------------------------------------------------- */

/* Whether the request announces a body larger than max-body-bytes. */
static int body_over_limit(struct MHD_Connection *c, int64_t max_body_bytes) {
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return cl && strtoull(cl, NULL, 10) > (unsigned long long)max_body_bytes;
}

/* Makes room in r's body for `need` bytes (need fits max-body-bytes).
 * Returns 0; 1 when body-budget-bytes cannot hold it (r's 503 set, the
 * body dropped: the rest is read and dropped); -1 when out of memory.
 * MHD thread. */
static int body_grow(http_request *r, size_t need) {
    http_server *s = r->s;
    if (need <= r->body_cap) return 0;
    /* doubling from what was reserved ahead (an announced body) or 64 KiB
     * (chunked), never past Content-Length or max-body-bytes */
    size_t max = (size_t)s->p.cfg->max_body_bytes;
    size_t cap = r->body_cap ? r->body_cap : r->body_reserved > 0 ? (size_t)r->body_reserved : 65536;
    while (cap < need) cap *= 2;
    size_t limit = r->content_length >= 0 ? (size_t)r->content_length : max;
    if (cap > limit) cap = limit;
    if (cap < need) cap = need; /* (more than announced: libmicrohttpd does not pass it) */
    /* a doubling the budget cannot hold takes what it has room for: only
     * a body that does not fit by itself is refused */
    size_t got = body_reserve_upto(r, need, cap);
    if (!got) {
        set_busy_bodies(r, (int64_t)need - r->body_reserved); /* the figures of now */
        r->body_over_budget = 1; /* answered 503 once the rest is read and dropped */
        body_free(r);
        return 1;
    }
    cap = got < cap ? got : cap;
    uint8_t *grown = realloc(r->body, cap);
    if (!grown) return -1;
    r->body = grown;
    r->body_cap = cap;
    return 0;
}

/* Inflates r's compressed body, complete, into a buffer of its own, whose
 * bytes are reserved of body-budget-bytes as they are produced, and then
 * frees the compressed bytes and their share. On a parse thread, not as
 * the bytes arrive: inflated on the MHD thread, a client held budget it
 * never sent (four stalled connections of 8 KB of gzip, each inflating to
 * 8 MiB, held 32 MiB: every other upload 503), and a bomb took its HTTP
 * thread 0.2-0.9 s (64 MiB from 65 KB, or empty deflate blocks), stalling
 * every connection it serves. A body that inflates past max-body-bytes
 * (1 GiB of zeros is 1 MB of gzip) is stopped as its output passes the
 * limit, having held at most the limit besides the compressed bytes
 * (both reserved). Returns -1 when out of memory, else 0 (a refusal is
 * set in r: too large, over the budget, or not such data; the body
 * freed). */
static int body_decode(http_request *r) {
    size_t max = (size_t)r->s->p.cfg->max_body_bytes;
    static const uint8_t empty[1];
    const uint8_t *in = r->body ? r->body : empty; /* an empty body has no buffer: zlib's pointers need one */
    size_t in_len = r->body_len;
    int64_t in_reserved = r->body_reserved; /* the compressed bytes' share */
    uint8_t *coded = r->body;
    int ret = 0;
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    coding_inflater *f = coding_inflater_new(r->coding);
    if (!f) {
        ret = -1;
        goto cleanup;
    }
    for (;;) {
        if (r->body_len == r->body_cap) {
            /* doubling from 64 KiB (or the compressed length, if more) up
             * to max-body-bytes + 1: the byte that shows it is over */
            size_t need = r->body_len + 1, want = r->body_cap ? r->body_cap * 2 : 65536;
            if (!r->body_cap && want < in_len) want = in_len;
            if (want > max + 1) want = max + 1;
            if (want < need) want = need;
            size_t got = body_reserve_upto(r, (size_t)in_reserved + need, (size_t)in_reserved + want);
            if (!got) {
                set_busy_bodies(r, (int64_t)need - (r->body_reserved - in_reserved));
                r->body_over_budget = 1;
                goto cleanup;
            }
            size_t cap = got - (size_t)in_reserved < want ? got - (size_t)in_reserved : want;
            uint8_t *grown = realloc(r->body, cap);
            if (!grown) {
                ret = -1;
                goto cleanup;
            }
            r->body = grown;
            r->body_cap = cap;
        }
        size_t got;
        const char *why = NULL;
        int rc =
            coding_inflate(f, &in, &in_len, r->body + r->body_len, r->body_cap - r->body_len, &got, &why);
        r->body_len += got;
        if (r->body_len > max) {
            r->body_too_large = 1;
            goto cleanup;
        }
        if (rc < 0) {
            if (strcmp(why, "out of memory") == 0) {
                ret = -1;
                goto cleanup;
            }
            r->coding_error = why;
            goto cleanup;
        }
        if (rc > 0) break;
        if (!in_len && r->body_len < r->body_cap) { /* all read, and zlib holds no output back */
            r->coding_error = "truncated: it ends before its compressed stream does";
            goto cleanup;
        }
    }
    /* inflated: the compressed bytes and their share go */
    coding_inflater_free(f);
    free(coded);
    if (in_reserved) atomic_fetch_sub(&r->s->body_bytes, in_reserved);
    r->body_reserved -= in_reserved;
    return 0;
cleanup:
    /* refused or out of memory: both buffers and all their share go */
    coding_inflater_free(f);
    free(coded);
    body_free(r);
    return ret;
}

/* Whether an answer known from the headers goes out before the body is
 * read: for a body announced over the body budget or over twice
 * max-body-bytes, and when the client waits for "100 Continue" before
 * sending it (it then sends nothing). A body a little over max-body-bytes
 * is read and dropped first: answered unread, the connection closes with
 * the client's bytes unread, and a client still sending may get a reset
 * instead of its 413 (curl: exit 55, on a busy host about 1 in 100). */
static int answer_before_body(struct MHD_Connection *c, int64_t max_body_bytes, int64_t budget) {
    if (body_over_limit(c, budget) || body_over_limit(c, 2 * max_body_bytes)) return 1;
    const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
    return expect && strcasecmp(expect, "100-continue") == 0;
}

static int authorized(http_request *r, struct MHD_Connection *c) {
    char **keys = r->s->p.api_keys;
    if (!keys) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    int ok = 0;
    size_t n = strlen(h);
    for (int i = 0; keys[i]; i++) {
        /* compare every byte of equal-length keys: no early exit to time */
        if (strlen(keys[i]) != n) continue;
        unsigned char diff = 0;
        for (size_t k = 0; k < n; k++) diff |= (unsigned char)(keys[i][k] ^ h[k]);
        if (!diff) ok = 1;
    }
    return ok;
}

/* Path after prefix ("/v2/models/", "/v1/models/"): the model name
 * (*name, *name_len), the version asked for ("/versions/<v>", as KServe
 * and Triton allow; "" when none) and what follows them. Returns 0 when
 * path is no model route. */
static int model_route(const char *path, const char *prefix, const char **name, size_t *name_len,
                       const char **rest, char *version, size_t version_len) {
    size_t pl = strlen(prefix);
    if (strncmp(path, prefix, pl) != 0) return 0;
    const char *p = path + pl;
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0) return 0;
    *name = p;
    *name_len = n;
    *rest = slash ? slash : "";
    version[0] = '\0';
    if (strncmp(*rest, "/versions/", 10) == 0) {
        const char *v = *rest + 10;
        size_t vn = strcspn(v, "/");
        if (vn == 0) return 0;
        snprintf(version, version_len, "%.*s", (int)vn, v);
        *rest = v + vn;
    }
    return 1;
}

/* Copies a query argument into r->query (applied after the body is parsed,
 * on the parse thread). */
static enum MHD_Result copy_query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value) {
    (void)kind;
    http_request *r = cls;
    char **grown = realloc(r->query, sizeof(char *) * (size_t)(2 * r->nquery + 3));
    if (!grown) return MHD_NO;
    r->query = grown;
    r->query[2 * r->nquery] = strdup(key);
    r->query[2 * r->nquery + 1] = strdup(value ? value : "");
    r->query[2 * r->nquery + 2] = NULL;
    r->nquery++;
    return r->query[2 * r->nquery - 2] && r->query[2 * r->nquery - 1] ? MHD_YES : MHD_NO;
}

static enum MHD_Result first_query_key(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value) {
    (void)kind;
    (void)value;
    snprintf(cls, 64, "%.63s", key);
    return MHD_NO;
}

/* A Content-Type that says nothing of the body: none, or
 * application/octet-stream (Triton's Python client sends none; other
 * clients send the generic type). The body then tells what it is. */
static int media_type_generic(const char *ctype) {
    if (!ctype || !*ctype) return 1;
    size_t l = strlen("application/octet-stream");
    return strncasecmp(ctype, "application/octet-stream", l) == 0 && (ctype[l] == '\0' || ctype[l] == ';');
}

/* Image headers and resolutions, checked before queueing so that a bad
 * request costs no worker time. Returns 0 or an HTTP status (r's answer set). */
static int validate_images(http_request *r) {
    const vit_model *m = r->mv->model;
    const server_config *cfg = r->s->p.cfg;
    char msg[512], err[600];
    int64_t pixel_bytes = 0;
    for (int i = 0; i < r->req.num_images; i++) {
        proto_image *im = &r->req.images[i];
        if (im->encoded) {
            int iw, ih;
            if (image_probe(im->encoded, im->encoded_len, &iw, &ih, msg, sizeof(msg))) {
                snprintf(err, sizeof(err), "images[%d]: %s", i, msg);
                set_error(r, 400, err);
                return 400;
            }
            if (iw > cfg->max_image_side || ih > cfg->max_image_side ||
                (int64_t)iw * ih > cfg->max_image_pixels) {
                snprintf(err, sizeof(err),
                         "images[%d]: %dx%d is over the limits (max-image-side %d, max-image-pixels %lld)", i,
                         iw, ih, cfg->max_image_side, (long long)cfg->max_image_pixels);
                set_error(r, 413, err);
                return 413;
            }
            if (resolution_resolve(m, r->req.resolution, ih, iw, &im->h, &im->w, msg, sizeof(msg))) {
                snprintf(err, sizeof(err), "resolution: %s (images[%d])", msg, i);
                set_error(r, 400, err);
                return 400;
            }
        } else if (vit_check_resolution(m, im->h, im->w, msg, sizeof(msg))) {
            snprintf(err, sizeof(err), "inputs[0].shape: %s", msg);
            set_error(r, 400, err);
            return 400;
        }
        /* what the image holds once decoded and prepared, as the model takes it */
        pixel_bytes += (int64_t)sizeof(float) * m->cfg.num_channels * im->h * im->w;
    }
    r->job.pixel_bytes = pixel_bytes;
    return 0;
}

/* The JSON part of the body over max-json-body-bytes? (jansson holds
 * about 20 bytes per byte of a dense number array, and other JSON more:
 * json_parsed_max bounds what one parse may hold.) Returns 0 or 413 (r's answer set). */
static int json_over_limit(http_request *r, size_t json_len) {
    int64_t max = r->s->p.cfg->max_json_body_bytes;
    if ((int64_t)json_len <= max) return 0;
    char err[400];
    snprintf(err, sizeof(err),
             "the body's JSON is %zu bytes, more than max-json-body-bytes (%lld): send "
             "tensors with the binary tensor extension (Inference-Header-Content-Length) or images as "
             "raw image/jpeg or image/png bodies",
             json_len, (long long)max);
    set_error(r, 413, err);
    return 413;
}

static size_t json_parsed_max(const server_config *cfg) {
    return (size_t)cfg->max_json_body_bytes * CONFIG_JSON_PARSED_PER_BYTE;
}

/* Parses r's body into r->req (ctype: the media type, sniffed when it was
 * generic). Returns 0, an HTTP status with the message in err, or -1 when
 * r's answer is set. */
static int parse_body(http_request *r, const char *ctype, char *err, size_t errlen) {
    int st;
    if (r->endpoint == ENDPOINT_V1_CLASSIFY) {
        if (!(ctype && strncasecmp(ctype, "image/", 6) == 0) && json_over_limit(r, r->body_len)) return -1;
        st = v1_parse(&r->mv->pm, ctype, r->body, r->body_len, &r->req, err, errlen);
        r->parsed = 1;
        if (!st) st = v1_parse_query(&r->mv->pm, &r->req, r->query, err, errlen);
    } else {
        size_t header_len = 0;
        const char *h = r->header_len;
        if (h) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(h, &end, 10);
            if (*h < '0' || *h > '9' || *end || v == 0) { /* strtoull takes "+5", " 5" and "-1" */
                set_error(r, 400, "Inference-Header-Content-Length: expected a positive integer");
                return -1;
            }
            if (errno == ERANGE) { /* strtoull gave ULLONG_MAX: the message would name a length not sent */
                snprintf(err, errlen,
                         "Inference-Header-Content-Length: %.40s%s is larger than the body (%zu bytes)", h,
                         strlen(h) > 40 ? "..." : "", r->body_len);
                set_error(r, 400, err);
                return -1;
            }
            header_len = (size_t)v;
        }
        if (json_over_limit(r, header_len && header_len < r->body_len ? header_len : r->body_len)) return -1;
        st = v2_parse_infer(&r->mv->pm, r->body, r->body_len, header_len, &r->req, err, errlen);
        r->parsed = 1;
    }
    return st;
}

/* Sets r->media from its complete body (see http_request). */
static void body_media(http_request *r) {
    if (r->body_too_large || r->body_over_budget || r->coding_error) r->media = NULL;
    else if (r->endpoint == ENDPOINT_V1_CLASSIFY && media_type_generic(r->ctype))
        r->media = v1_sniff_media_type(r->body, r->body_len);
    else r->media = r->ctype;
}

/* The body is complete; runs on a parse thread while the connection is
 * suspended: parse, validate, queue. Returns 0 when r's answer is set and
 * the connection must be resumed now, 1 when the job was queued (a worker
 * resumes it; r belongs to the worker from then on: the caller must not
 * touch it). */
static int submit_inference(http_request *r) {
    http_server *s = r->s;
    char err[512];
    int st;
    if (r->coding && !r->body_too_large && !r->body_over_budget) {
        if (body_decode(r)) {
            set_error(r, 500, "out of memory");
            return 0;
        }
        body_media(r);
    }
    if (r->body_too_large) {
        snprintf(err, sizeof(err), "body is larger than max-body-bytes (%lld)%s%s%s",
                 (long long)s->p.cfg->max_body_bytes,
                 r->coding ? ", as sent or once decompressed (Content-Encoding " : "",
                 r->coding ? coding_name(r->coding) : "", r->coding ? ")" : "");
        set_error(r, 413, err);
        return 0;
    }
    if (r->body_over_budget) return 0; /* its 503 was set when the budget refused it */
    if (r->coding_error) {
        snprintf(err, sizeof(err), "the body is not valid %s data (Content-Encoding %s): %s",
                 coding_name(r->coding), coding_name(r->coding), r->coding_error);
        set_error(r, 400, err);
        return 0;
    }
    const char *ctype = r->media;
    if (r->endpoint == ENDPOINT_V1_CLASSIFY && media_type_generic(r->ctype)) {
        if (!ctype) {
            snprintf(err, sizeof(err),
                     "Content-Type: \"%.60s\" and a body that is neither JSON (starting "
                     "with '{') nor a JPEG or PNG image: send application/json, image/jpeg or image/png",
                     r->ctype ? r->ctype : "(none)");
            set_error(r, 415, err);
            return 0;
        }
        if (r->nquery && strcmp(ctype, "application/json") == 0) {
            snprintf(err, sizeof(err),
                     "query argument \"%s\" does not apply to a JSON body (give it as a "
                     "field of the body)",
                     r->query[0]);
            set_error(r, 400, err);
            return 0;
        }
    }
    proto_json_meter meter;
    proto_json_meter_begin(&meter, json_parsed_max(s->p.cfg));
    st = parse_body(r, ctype, err, sizeof(err));
    proto_json_meter_end();
    if (meter.over) {
        /* the way out each API has: v1 takes raw images, v2 binary tensors */
        snprintf(err, sizeof(err),
                 "the body's JSON holds more than %zu bytes once parsed (%d x max-json-body-bytes, %lld): "
                 "deeply nested or many small values (each {} or [] costs some 100-250 bytes); send %s",
                 meter.max, CONFIG_JSON_PARSED_PER_BYTE, (long long)s->p.cfg->max_json_body_bytes,
                 r->endpoint == ENDPOINT_V1_CLASSIFY
                     ? "images as raw image/jpeg or image/png bodies"
                     : "tensors with the binary tensor extension (Inference-Header-Content-Length)");
        st = 413;
    }
    if (st < 0) return 0; /* r's answer set */
    if (st) {
        set_error(r, st, err);
        return 0;
    }
    body_shrink(r, parsed_bytes(&r->req)); /* the request holds its own copies now */
    if (validate_images(r)) return 0;
    int timeout_ms = r->req.timeout_ms ? r->req.timeout_ms : s->p.cfg->default_timeout_ms;
    r->job.req = &r->req;
    r->job.deadline_ns = r->start_ns + (int64_t)timeout_ms * 1000000;
    r->job.done = job_done;
    r->job.gone = client_gone;
    r->job.done_arg = r;
    r->phase = PHASE_QUEUED;
    st = batcher_submit(r->mv->batcher, &r->job);
    if (st) {
        set_error(r, st, r->job.error);
        if (st == 503) r->retry_after = 1;
        return 0;
    }
    return 1;
}

/* --- the parse threads ---------------------------------------------------- */

/* Parsing a 16 MiB JSON tensor takes a good part of a second and ~20x its
 * size: done on an MHD thread it would stall every connection that thread
 * serves, health checks included. So a complete body is handed, with its
 * connection suspended, to these threads; their number bounds how many
 * parses (and their memory) run at once. */
typedef struct parse_item {
    http_request *r;
    struct parse_item *next;
} parse_item;

static void parse_one(http_request *r) {
    http_server *s = r->s;
    served_model *mv = r->mv;
    batcher *b = mv->batcher;
    struct MHD_Connection *c = r->conn;
    /* The arrival ends after the submission, so that a drain sees this
     * request all along, as arriving and then as queued. Once submitted
     * the request may be answered and gone at once, with its reference:
     * this thread holds its own until the arrival has ended. */
    r->arriving = 0;
    repository_retain(s->p.repo, mv);
    if (batcher_stopping(b)) {
        /* The drain's time is up: a body still waiting for its parse gets
         * the 503 it would get after one, at once. Parsing it first (seconds
         * for a big JSON body) would make the shutdown outlast
         * drain-timeout-s by every parse still queued. */
        set_error(r, 503, "server is shutting down");
        r->retry_after = 1;
    } else if (submit_inference(r)) { /* r is the worker's now */
        batcher_arrival_end(b);
        repository_release(s->p.repo, mv);
        return;
    }
    /* answered here (400, 413, 415, 503): the body's share of
     * body-budget-bytes goes before the arrival ends, as in
     * request_completed */
    body_free(r);
    r->phase = PHASE_ANSWERED;
    batcher_arrival_end(b);
    repository_release(s->p.repo, mv);
    MHD_resume_connection(c);
}

/* A body whose JSON part is larger than this is a heavy parse: 16 MiB of
 * numbers takes 0.9-2 s; up to this, some 0.1 s at most. */
#define PARSE_HEAVY_BYTES (1 << 20)

/* Whether r's body is a heavy parse: its JSON part (all of a JSON body,
 * the header of a v2 binary one; none of a raw image) is over
 * PARSE_HEAVY_BYTES, or it is compressed (inflating it may take most of a
 * second: a bomb stops at max-body-bytes; and what it holds is not known
 * before). MHD thread, before the parse. */
static int parse_is_heavy(const http_request *r) {
    size_t json = r->body_len;
    if (r->body_too_large || r->body_over_budget || r->coding_error) return 0; /* refused unparsed */
    if (r->coding) return 1;
    if (r->endpoint == ENDPOINT_V1_CLASSIFY) {
        if (r->media && strncasecmp(r->media, "image/", 6) == 0) return 0;
    } else if (r->header_len) {
        unsigned long long v = strtoull(r->header_len, NULL, 10);
        if (v > 0 && v < json) json = (size_t)v;
    }
    return json > PARSE_HEAVY_BYTES;
}

/* The next body to parse, or NULL. Light and heavy bodies take turns
 * while both wait, so that a raw image or a small JSON body waits for one
 * heavy parse per parse thread, not for every one queued before it (40
 * bodies of 16 MiB of JSON numbers, from one client, held a raw PNG 17 s).
 * Lock held. */
static parse_item *parse_next(http_server *s) {
    int heavy = s->parse_heavy.head && (!s->parse_light.head || !s->parse_took_heavy);
    struct parse_queue *q = heavy ? &s->parse_heavy : &s->parse_light;
    parse_item *it = q->head;
    if (!it) return NULL;
    q->head = it->next;
    if (!q->head) q->tail = NULL;
    s->parse_took_heavy = heavy;
    return it;
}

static void *parse_main(void *arg) {
    http_server *s = arg;
    pthread_mutex_lock(&s->parse_lock);
    for (;;) {
        while (!s->parse_light.head && !s->parse_heavy.head && !s->parse_stopping)
            pthread_cond_wait(&s->parse_work, &s->parse_lock);
        parse_item *it = parse_next(s);
        if (!it) break; /* stopping, and nothing left: every suspended body was answered */
        pthread_mutex_unlock(&s->parse_lock);
        parse_one(it->r);
        free(it);
        pthread_mutex_lock(&s->parse_lock);
    }
    pthread_mutex_unlock(&s->parse_lock);
    return NULL;
}

/* Suspends r's connection and queues r for a parse thread. Returns 0; 1
 * when the parse threads are stopping (r's 503 answer set, the connection
 * not suspended: nobody would resume it, and libmicrohttpd aborts the
 * process when stopped with a connection suspended); -1 when out of
 * memory (r untouched). MHD thread. */
static int queue_parse(http_request *r, struct MHD_Connection *c) {
    http_server *s = r->s;
    parse_item *it = malloc(sizeof(*it));
    if (!it) return -1;
    it->r = r;
    it->next = NULL;
    const char *ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    const char *hl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Inference-Header-Content-Length");
    r->ctype = ctype ? strdup(ctype) : NULL;
    r->header_len = hl ? strdup(hl) : NULL;
    /* a body refused unparsed (too large, over budget) was dropped as it
     * came: r->body is NULL, r->body_len what arrived; nothing to sniff;
     * a compressed one is sniffed once inflated (submit_inference) */
    if (!r->coding) body_media(r);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    pthread_mutex_lock(&s->parse_lock);
    if (s->parse_stopping) { /* a body completed at stop, after the threads may have exited */
        pthread_mutex_unlock(&s->parse_lock);
        free(it);
        set_error(r, 503, "server is shutting down");
        r->retry_after = 1;
        return 1;
    }
    r->phase = PHASE_QUEUED;
    /* Suspended before a parse thread can resume it (a resume of a
     * connection not yet suspended would be lost). */
    MHD_suspend_connection(c);
    struct parse_queue *q = parse_is_heavy(r) ? &s->parse_heavy : &s->parse_light;
    if (q->tail) q->tail->next = it;
    else q->head = it;
    q->tail = it;
    pthread_cond_signal(&s->parse_work);
    pthread_mutex_unlock(&s->parse_lock);
    return 0;
}

static int media_type_allowed(int endpoint, const char *ctype) {
    if (media_type_generic(ctype)) return 1;
    const char *types[] = {"application/json", "image/jpeg", "image/png"};
    int n = endpoint == ENDPOINT_V1_CLASSIFY ? 3 : 1;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(types[i]);
        if (strncasecmp(ctype, types[i], l) == 0 && (ctype[l] == '\0' || ctype[l] == ';')) return 1;
    }
    return 0;
}

/* The body's Content-Encoding: CODING_* (none, "identity" or empty:
 * CODING_IDENTITY), or -1 when it is one we do not decode, a list of
 * codings, or given twice but for identity (*name: the first such value,
 * for the 415). A body we cannot decode is refused, not read as it came: a
 * gzipped image would get "not a JPEG or PNG file", and a body the client
 * calls compressed but is not would be served. */
typedef struct {
    int coding, count;
    const char *name;
} body_coding;

static enum MHD_Result coding_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    body_coding *b = cls;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_ENCODING) != 0) return MHD_YES;
    int c = coding_parse(value);
    if (c == CODING_IDENTITY) return MHD_YES;
    if (!b->name) b->name = value;
    b->coding = b->count++ || c < 0 ? -1 : c; /* two codings: a list */
    return MHD_YES;
}

static int content_coding(struct MHD_Connection *c, const char **name) {
    body_coding b = {CODING_IDENTITY, 0, NULL};
    MHD_get_connection_values(c, MHD_HEADER_KIND, coding_header, &b);
    *name = b.name;
    return b.coding;
}

static enum MHD_Result accept_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    if (strcasecmp(key, MHD_HTTP_HEADER_ACCEPT_ENCODING) == 0) coding_accept_add(cls, value);
    return MHD_YES;
}

/* What the answer's coding is to be, from every Accept-Encoding header. */
static int answer_coding(struct MHD_Connection *c) {
    coding_accept a;
    coding_accept_init(&a);
    MHD_get_connection_values(c, MHD_HEADER_KIND, accept_header, &a);
    return coding_accept_choice(&a);
}

/* A readiness answer: 200 {"ready":true} or 503 {"ready":false}. */
static void set_ready(http_request *r, int ready) {
    set_json(r, ready ? 200 : 503, strdup(ready ? "{\"ready\":true}" : "{\"ready\":false}"));
    r->ready_yes = ready;
}

/* Whether r's method fits a route that takes POST (post) or GET and
 * HEAD; sets the methods a 405 or a preflight lists in Allow. */
static int method_fits(http_request *r, int post) {
    int cors = r->s->p.cfg->cors_origin[0] != '\0';
    r->allow = post ? (cors ? "POST, OPTIONS" : "POST") : (cors ? "GET, HEAD, OPTIONS" : "GET, HEAD");
    if (post) return strcmp(r->method, "POST") == 0;
    return strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;
}

/* A CORS preflight (OPTIONS, cors-origin set): 204 with the route's
 * methods, before the token check (a browser sends none with it). */
static int preflight(http_request *r, int post) {
    if (!r->cors || strcmp(r->method, "OPTIONS") != 0) return 0;
    method_fits(r, post);
    set_answer(r, 204, NULL, NULL, 0, 0);
    return 1;
}

/* GET /v2/models/<m>/config: Triton's model configuration. */
static void model_config(http_request *r) {
    const server_config *cfg = &r->mv->cfg; /* the model's own settings */
    /* checked when it was set (config_set), so this parse cannot fail;
     * were it to, Triton's default policy is what is said */
    version_policy pol = {.latest = 1};
    char why[256];
    if (config_parse_version_policy(cfg->version_policy, &pol, why, sizeof(why)) != 0)
        pol = (version_policy){.latest = 1};
    proto_batching b = {.max_batch_size = cfg->max_batch_size,
                        .max_queue_delay_us = cfg->max_queue_delay_us,
                        .max_queue_size = cfg->max_queue_size,
                        .workers = cfg->workers,
                        .policy_all = pol.all,
                        .policy_latest = pol.latest,
                        .policy_versions = pol.specific,
                        .policy_num_versions = pol.nspecific};
    set_json(r, 200, v2_model_config_json(&r->mv->pm, &b));
}

/* Triton's statistics of one version, from the counters the batcher and
 * the request path keep in its metrics series (m, read by
 * metrics_model_stats): st points at m's batch sizes, as they are. */
static void version_stats(const metrics_stats *m, proto_stats *st) {
    /* The batcher times decode and forward together: all of it is
     * compute_infer; input and output are copied by the request path. */
    *st = (proto_stats){
        .last_inference_ms = m->last_inference_ms,
        .inference_count = m->inference_count,
        .execution_count = m->execution_count,
        .success = {m->success_count, m->success_ns},
        .fail = {m->fail_count, m->fail_ns},
        .queue = {m->queue_count, m->queue_ns},
        .compute_input = {m->compute_count, 0},
        .compute_infer = {m->compute_count, m->compute_ns},
        .compute_output = {m->compute_count, 0},
        .num_batch_sizes = m->num_batch_sizes,
        .batch_stats = m->batch_stats,
        .memory_bytes = m->memory_bytes,
    };
}

/* GET /v2/models/stats, /v2/models/<m>/stats, .../versions/<v>/stats:
 * one entry per version the route covers (r->stats_scope). */
static void model_stats(http_request *r) {
    served_model **list = NULL, *one[1] = {r->mv};
    int n = 1;
    if (r->stats_scope != STATS_VERSION) {
        n = repository_acquire_all(r->s->p.repo, r->stats_scope == STATS_ALL ? NULL : r->mv, &list);
        if (n < 0) {
            set_error(r, 500, "out of memory");
            return;
        }
    }
    served_model **vs = list ? list : one;
    int cap = n ? n : 1, read = 0;
    metrics_stats *m = calloc((size_t)cap, sizeof(*m));
    proto_stats *st = malloc(sizeof(*st) * (size_t)cap);
    const proto_model **pms = malloc(sizeof(*pms) * (size_t)cap);
    if (!m || !st || !pms) goto oom;
    for (; read < n; read++) {
        if (metrics_model_stats(vs[read]->series, &m[read])) goto oom;
        version_stats(&m[read], &st[read]);
        pms[read] = &vs[read]->pm;
    }
    set_json(r, 200, v2_model_stats_json(pms, st, n));
    goto cleanup;
oom:
    set_error(r, 500, "out of memory");
cleanup:
    for (int i = 0; list && i < n; i++) repository_release(r->s->p.repo, list[i]);
    free(list);
    for (int i = 0; m && i < read; i++) metrics_stats_free(&m[i]);
    free(m);
    free(st);
    free(pms);
}

/* While the model loads: liveness, readiness (503), /metrics and the console's
 * files go on to be routed (returns 1); the model's routes are
 * answered here (returns 0): a model's readiness 503 {"ready":false},
 * the rest 503 with Retry-After. */
static int loading_route(http_request *r, const char *path) {
    if (r->metrics_only || strcmp(path, "/metrics") == 0) return 1; /* a scrape never fails */
    if (strcmp(path, "/v2/health/live") == 0 || strcmp(path, "/v2/health/ready") == 0 ||
        strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0 ||
        (r->s->p.cfg->console && console_find(path)))
        return 1;
    size_t n = strlen(path);
    if (strncmp(path, "/v2/models/", 11) == 0 && n > 6 && strcmp(path + n - 6, "/ready") == 0) {
        set_ready(r, 0);
        return 0;
    }
    set_error(r, 503, "the model is loading");
    r->retry_after = 1;
    return 0;
}

/* Appends part (n bytes, malloc'd, taken) to *all (*len bytes). 0 when
 * either is NULL (out of memory) or the append fails: both freed, *all
 * NULL. */
static int append_part(char **all, size_t *len, char *part, size_t n) {
    char *grown = *all && part ? realloc(*all, *len + n) : NULL;
    if (!grown) {
        free(*all);
        free(part);
        *all = NULL;
        return 0;
    }
    memcpy(grown + *len, part, n);
    free(part);
    *all = grown;
    *len += n;
    return 1;
}

/* /metrics: the daemon's series, then the repository's, then HTTPS's. */
static void metrics_answer(http_request *r, int ready) {
    http_server *s = r->s;
    metrics_gauges g = {.queue_depth = 0,
                        .in_flight = 0,
                        .receiving = 0,
                        .ready = ready,
                        .log_lines_dropped = log_lines_dropped()};
    repository_gauges(s->p.repo, &g.queue_depth, &g.in_flight, &g.receiving);
    conn_guard_stats cs;
    conn_guard_stats_get(s->main_guard, &cs);
    metrics_connections mc = {.open = cs.open,
                              .refused_limit = cs.refused_limit,
                              .refused_client = cs.refused_client,
                              .timeouts_idle = cs.timeouts_idle,
                              .timeouts_request = cs.timeouts_request};
    metrics_set_connections(s->p.metrics, &mc);
    size_t len = 0, more = 0;
    char *all = metrics_render(s->p.metrics, &g, &len);
    char *part = repository_metrics(s->p.repo, &more); /* sets more: before the call below */
    int ok = append_part(&all, &len, part, more);
    if (ok && s->p.tls) { /* the served certificate's expiry and reload failures */
        part = tls_metrics(s->p.tls, &more);
        ok = append_part(&all, &len, part, more);
    }
    if (!ok) {
        set_error(r, 500, "out of memory");
        return;
    }
    set_answer(r, 200, "text/plain; version=0.0.4; charset=utf-8", all, len, 0);
}

/* The load or unload has run (control thread): resumes the connection. */
static void control_done(void *arg, int status, const char *message) {
    http_request *r = arg;
    if (status == 200) set_json(r, 200, strdup("{}"));
    else set_error(r, status, message);
    if (status == 503) r->retry_after = 1;
    r->phase = PHASE_ANSWERED;
    MHD_resume_connection(r->conn);
}

/* The body of a load/unload request is read: suspend, hand it to the
 * repository's control thread (a load takes seconds: never on this one). */
static enum MHD_Result control_begin(http_request *r, struct MHD_Connection *c) {
    char err[512];
    r->phase = PHASE_QUEUED;
    MHD_suspend_connection(c); /* before the control thread can resume it */
    int st = repository_control(r->s->p.repo, r->control_name, strlen(r->control_name), r->control == 1,
                                control_done, r, err, sizeof(err));
    if (st) {
        set_error(r, st, err);
        if (st == 503) r->retry_after = 1;
        r->phase = PHASE_ANSWERED;
        MHD_resume_connection(c);
    }
    return MHD_YES;
}

/* The length of host[:port] `a` (n bytes) without `port`, the default of
 * its scheme ("80", "443"; "" none): http://h and http://h:80 are one
 * origin, and a proxy's Host may name the port either way. */
static size_t without_default_port(const char *a, size_t n, const char *port) {
    size_t pl = strlen(port);
    if (pl && n > pl + 1 && a[n - pl - 1] == ':' && memcmp(a + n - pl, port, pl) == 0) return n - pl - 1;
    return n;
}

static int same_authority(const char *a, size_t an, const char *b, size_t bn, const char *port) {
    an = without_default_port(a, an, port);
    bn = without_default_port(b, bn, port);
    return an == bn && strncasecmp(a, b, an) == 0;
}

/* The length of the n bytes at s without the blanks after them:
 * libmicrohttpd keeps whitespace after a header value (RFC 9112 OWS), and
 * a list's element has it before its comma. */
static size_t without_ows(const char *s, size_t n) {
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    return n;
}

/* A page of another origin can make its visitor's browser POST here with
 * no preflight (a form with a text/plain body, fetch with mode "no-cors"),
 * and without api-key-file nothing else refuses it: such a page could
 * unload the models of a daemon on the visitor's localhost (cross-site
 * request forgery). A browser names the page's origin in Origin on every
 * cross-origin POST; other clients send none. So model control refuses an
 * Origin that is neither this server's nor the one cors-origin allows.
 * This server's host[:port] is the Host header, or the first
 * X-Forwarded-Host (a proxy that rewrites Host): default ports dropped.
 * A page cannot add X-Forwarded-Host to a cross-origin POST without a
 * preflight, and we grant none to other origins (preflight: only with
 * cors-origin set, whose Access-Control-Allow-Origin names cors-origin
 * alone and whose allowed headers are not that one). Returns 0 or 403
 * (r's answer set). */
static int foreign_origin(http_request *r, struct MHD_Connection *c) {
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    const char *cors = r->s->p.cfg->cors_origin;
    if (!origin || strcmp(cors, "*") == 0 || strcmp(origin, cors) == 0) return 0;
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    const char *forwarded = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Forwarded-Host");
    const char *authority = strstr(origin, "://");
    if (authority) {
        const char *port = strncasecmp(origin, "https://", 8) == 0  ? "443"
                           : strncasecmp(origin, "http://", 7) == 0 ? "80"
                                                                    : "";
        authority += 3;
        size_t an = strlen(authority);
        if (host && same_authority(authority, an, host, without_ows(host, strlen(host)), port)) return 0;
        if (forwarded &&
            same_authority(authority, an, forwarded, without_ows(forwarded, strcspn(forwarded, ",")), port))
            return 0;
    }
    char err[400];
    snprintf(err, sizeof(err),
             "Origin \"%.100s\" is another origin than this server (Host \"%.100s\") and not cors-origin: "
             "a page of another origin may not control the models",
             origin, host ? host : "");
    set_error(r, 403, err);
    return 403;
}

/* A load/unload body: Triton's load may carry JSON ({"parameters":
 * {"config": ..., "file:<path>": <base64>}}); we read none of it, but hold
 * it to max-body-bytes as every body (only receive-timeout-s bounded it).
 * The load or unload is not run. */
static void control_body_too_large(http_request *r) {
    char err[256];
    snprintf(err, sizeof(err),
             "body is larger than max-body-bytes (%lld) (a load or unload body is not read, but held to "
             "that limit): nothing was loaded or unloaded",
             (long long)r->s->p.cfg->max_body_bytes);
    set_error(r, 413, err);
    r->control = 0;
}

/* POST /v2/repository/index, /v2/repository/models/<m>/load|unload
 * (Triton's model repository extension). Returns 0 when path is none of
 * them. */
static int repository_route(http_request *r, struct MHD_Connection *c, const char *path) {
    const char *prefix = "/v2/repository/models/";
    size_t pl = strlen(prefix);
    if (strcmp(path, "/v2/repository/index") == 0) {
        set_json(r, 200, repository_index_json(r->s->p.repo));
        return 1;
    }
    if (strncmp(path, prefix, pl) != 0) return 0;
    const char *name = path + pl, *slash = strchr(name, '/');
    if (!slash || (strcmp(slash, "/load") != 0 && strcmp(slash, "/unload") != 0)) return 0;
    size_t n = (size_t)(slash - name);
    char err[512];
    int load = strcmp(slash, "/load") == 0;
    if (body_over_limit(c, r->s->p.cfg->max_body_bytes)) {
        control_body_too_large(r);
        return 1;
    }
    int st = repository_control(r->s->p.repo, name, n, load, NULL, NULL, err, sizeof(err));
    if (st) {
        set_error(r, st, err);
        if (st == 503) r->retry_after = 1;
        return 1;
    }
    snprintf(r->control_name, sizeof(r->control_name), "%.*s", (int)n, name);
    r->control = load ? 1 : 2;
    return 1;
}

/* First call for a request: route it. GETs are answered at once; inference
 * POSTs start reading their body. */
static void route(http_request *r, struct MHD_Connection *c) {
    http_server *s = r->s;
    const char *path = r->path, *rest = NULL, *name = NULL;
    size_t name_len = 0;
    int ready = !atomic_load(&s->draining);
    char err[1024], version[64] = ""; // (messages quote the path, up to 511 bytes)

    int loaded = atomic_load(&s->loaded);
    if (!loaded && !loading_route(r, path)) return;
    if (strcmp(path, "/metrics") == 0) {
        r->endpoint = ENDPOINT_METRICS;
        if (s->p.cfg->metrics_port && !r->metrics_only) { /* a curl or the console's live panel asks here */
            snprintf(err, sizeof(err),
                     "no such endpoint: /metrics is served on the metrics port (metrics-port %d)",
                     s->p.cfg->metrics_port);
            set_error(r, 404, err);
            return;
        }
        if (preflight(r, 0)) return;
        if (!method_fits(r, 0)) goto method;
        if (!s->p.cfg->metrics_open && !authorized(r, c)) goto unauthorized;
        metrics_answer(r, ready && loaded);
        return;
    }
    if (r->metrics_only) goto not_found;
    /* The console's files: public (no token), from the binary. */
    if (s->p.cfg->console && (r->asset = console_find(path))) {
        r->endpoint = ENDPOINT_CONSOLE;
        if (preflight(r, 0)) return;
        if (!method_fits(r, 0)) goto method;
        set_answer(r, 200, r->asset->content_type, NULL, r->asset->len, 0);
        return;
    }
    if (strcmp(path, "/v2/health/live") == 0 || strcmp(path, "/v2/health/ready") == 0 ||
        strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0) {
        r->endpoint = ENDPOINT_HEALTH;
        if (preflight(r, 0)) return;
        if (!method_fits(r, 0)) goto method;
        int live = strstr(path, "live") || strcmp(path, "/healthz") == 0;
        if (live) set_json(r, 200, strdup("{\"live\":true}"));
        else set_ready(r, ready && loaded && repository_ready(s->p.repo));
        return;
    }
    if (strncmp(path, "/v2/repository/", 15) == 0) {
        r->endpoint = ENDPOINT_V2_SERVER;
        if (preflight(r, 1)) return;
        if (!authorized(r, c)) goto unauthorized;
        if (!method_fits(r, 1)) goto method;
        if (foreign_origin(r, c)) return;
        if (!repository_route(r, c, path)) goto not_found;
        return;
    }
    if (strcmp(path, "/v1/classify") == 0) r->endpoint = ENDPOINT_V1_CLASSIFY;
    else if (strcmp(path, "/v1/models") == 0) r->endpoint = ENDPOINT_V1_MODELS;
    else if (model_route(path, "/v1/models/", &name, &name_len, &rest, version, sizeof(version)) &&
             strcmp(rest, "/classify") == 0)
        r->endpoint = ENDPOINT_V1_CLASSIFY; /* a named model's; /v1/classify: the default's */
    else if (strcmp(path, "/v2") == 0) r->endpoint = ENDPOINT_V2_SERVER;
    else if (strcmp(path, "/v2/models/stats") == 0) { /* Triton's route: every model's */
        r->endpoint = ENDPOINT_V2_MODEL;
        r->stats_scope = STATS_ALL;
        rest = "/stats";
    } else if (model_route(path, "/v2/models/", &name, &name_len, &rest, version, sizeof(version))) {
        r->endpoint = strcmp(rest, "/infer") == 0 ? ENDPOINT_V2_INFER : ENDPOINT_V2_MODEL;
        if (!version[0]) r->stats_scope = STATS_MODEL; /* read only by a /stats route */
    } else goto not_found;
    int post = r->endpoint == ENDPOINT_V1_CLASSIFY || r->endpoint == ENDPOINT_V2_INFER;
    if (preflight(r, post)) return;
    if (!authorized(r, c)) goto unauthorized;
    if (r->endpoint == ENDPOINT_V2_INFER || r->endpoint == ENDPOINT_V2_MODEL) {
        if (strcmp(rest, "") != 0 && strcmp(rest, "/ready") != 0 && strcmp(rest, "/config") != 0 &&
            strcmp(rest, "/stats") != 0 && strcmp(rest, "/infer") != 0)
            goto not_found;
    }
    if (r->endpoint != ENDPOINT_V2_SERVER && r->stats_scope != STATS_ALL) {
        /* what is asked is named before the method is judged: an unknown
         * model or version is a 404, whatever the method. The version
         * found is held until the request ends: an unload or a swap
         * waits for it. (Every model's statistics name none: they hold
         * each version while they read it.) */
        int st = 0;
        r->mv = repository_acquire(s->p.repo, name, name_len, version, &st, err, sizeof(err));
        /* the list of models is not the default model's: with it not
         * ready (explicit mode before a load, model-name not loaded) the
         * others are listed still, or none (as /v2/models/stats does) */
        int listing = r->endpoint == ENDPOINT_V1_MODELS && st == 503;
        if (!r->mv && !listing) {
            if (strcmp(rest ? rest : "", "/ready") == 0 && st == 503 && method_fits(r, 0)) {
                set_ready(r, 0);
                return;
            }
            set_error(r, st, err);
            if (st == 503) r->retry_after = 1;
            return;
        }
    }
    if (!method_fits(r, post)) goto method;
    switch (r->endpoint) {
    case ENDPOINT_V1_MODELS: set_json(r, 200, repository_v1_models_json(s->p.repo, r->mv)); return;
    case ENDPOINT_V2_SERVER: {
        proto_model server = {0};
        server.version = s->p.build_version;
        set_json(r, 200, v2_server_json(&server));
        return;
    }
    case ENDPOINT_V2_MODEL:
        if (strcmp(rest, "") == 0) set_json(r, 200, repository_model_json(s->p.repo, r->mv));
        else if (strcmp(rest, "/ready") == 0) set_ready(r, ready);
        else if (strcmp(rest, "/config") == 0) model_config(r);
        else model_stats(r);
        return;
    default: break;
    }
    /* inference */
    if (!ready) {
        set_error(r, 503, "server is shutting down");
        r->retry_after = 1;
        return;
    }
    const char *ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    const char *coding_value = NULL;
    r->coding = content_coding(c, &coding_value);
    if (r->coding < 0) {
        snprintf(err, sizeof(err),
                 "Content-Encoding \"%.60s\" is not supported: send the body as gzip, deflate or identity "
                 "(one coding)",
                 coding_value);
        set_error(r, 415, err);
        return;
    }
    r->resp_coding = answer_coding(c);
    if (!media_type_allowed(r->endpoint, ctype)) {
        snprintf(err, sizeof(err), "Content-Type: \"%.60s\" is not accepted here (%s)", ctype,
                 r->endpoint == ENDPOINT_V1_CLASSIFY
                     ? "application/json, image/jpeg, image/png, or none: the body tells"
                     : "application/json, application/octet-stream, or none");
        set_error(r, 415, err);
        return;
    }
    /* Query arguments are the knobs of a raw-image body only: on a JSON
     * body they would be silently ignored, so they are refused (a body
     * without a type: once it shows what it is, submit_inference). */
    if (MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, NULL, NULL) > 0) {
        if (r->endpoint == ENDPOINT_V1_CLASSIFY &&
            (media_type_generic(ctype) || strncasecmp(ctype, "image/", 6) == 0)) {
            if (MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, copy_query_arg, r) != r->nquery) {
                set_error(r, 500, "out of memory");
                return;
            }
        } else {
            char key[64] = "";
            MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, first_query_key, key);
            snprintf(err, sizeof(err), "query argument \"%s\" does not apply to a JSON body (%s)", key,
                     r->endpoint == ENDPOINT_V1_CLASSIFY ? "give it as a field of the body"
                                                         : "the v2 infer API takes parameters in the body");
            set_error(r, 400, err);
            return;
        }
    }
    /* Refuse an oversized body from its Content-Length, before reading it. */
    if (body_over_limit(c, s->p.cfg->max_body_bytes)) {
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        snprintf(err, sizeof(err), "Content-Length %s is larger than max-body-bytes (%lld)", cl,
                 (long long)s->p.cfg->max_body_bytes);
        set_error(r, 413, err);
        return;
    }
    /* The body budget: an announced body's first BODY_RESERVE_AHEAD bytes
     * are reserved before any of it is read, the rest as it arrives; a
     * chunked one's as its buffer grows (PHASE_READING). */
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    r->content_length = cl ? (int64_t)strtoull(cl, NULL, 10) : -1;
    if (r->content_length > s->p.cfg->body_budget_bytes) {
        snprintf(err, sizeof(err),
                 "Content-Length %s is larger than body-budget-bytes (%lld), the bytes all "
                 "bodies being received may hold",
                 cl, (long long)s->p.cfg->body_budget_bytes);
        set_error(r, 413, err);
        return;
    }
    int64_t ahead = r->content_length < BODY_RESERVE_AHEAD ? r->content_length : BODY_RESERVE_AHEAD;
    if (ahead > 0 && !body_reserve_upto(r, (size_t)ahead, (size_t)ahead)) {
        set_busy_bodies(r, ahead); /* its body is read and dropped */
        return;
    }
    r->phase = PHASE_READING;
    r->arriving = 1;
    batcher_arrival_begin(r->mv->batcher);
    return;
unauthorized:
    set_error(r, 401, "missing or invalid bearer token");
    return;
method:
    snprintf(err, sizeof(err), "method %s is not allowed on %s (allowed: %s)", r->method, path, r->allow);
    set_error(r, 405, err);
    return;
not_found:
    if (r->endpoint != ENDPOINT_METRICS) r->endpoint = ENDPOINT_OTHER;
    snprintf(err, sizeof(err), "no such endpoint: %.200s", path);
    set_error(r, 404, err);
}

/* A client's X-Request-Id is echoed in a response header and logged: one
 * word of visible ASCII that fits, else the daemon makes its own. */
static int request_id_acceptable(const char *id, size_t cap) {
    size_t n = 0;
    if (!id || !*id) return 0;
    for (; id[n]; n++)
        if ((unsigned char)id[n] <= ' ' || (unsigned char)id[n] >= 0x7f || id[n] == '"' || n + 1 >= cap)
            return 0;
    return 1;
}

static void new_request_id(http_server *s, char *out, size_t len) {
    unsigned long long n = atomic_fetch_add(&s->next_id, 1);
    snprintf(out, len, "%08lx-%llu", (unsigned long)getpid(), n);
}

/* How a request's body is framed (RFC 9112 6): a Transfer-Encoding other
 * than a lone "chunked", one beside a Content-Length, or two Content-Lengths
 * that differ leave where the body ends ambiguous (a proxy in front may
 * read it otherwise: request smuggling), and libmicrohttpd would wait for a
 * body it cannot delimit until receive-timeout-s. */
typedef struct {
    int content_lengths, differ, transfer_encodings;
    const char *content_length, *transfer_encoding;
} framing;

static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value) {
    (void)kind;
    framing *f = cls;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        if (f->content_lengths++ && strcmp(f->content_length, value) != 0) f->differ = 1;
        f->content_length = value;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->transfer_encodings++;
        f->transfer_encoding = value;
    }
    return MHD_YES;
}

/* Returns 0, or the status of a request whose framing is refused (err
 * says why): answered at once, and its connection closed. */
static int framing_refused(struct MHD_Connection *c, char *err, size_t errlen) {
    framing f = {0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, framing_header, &f);
    if (f.differ) {
        snprintf(err, errlen, "Content-Length given %d times with different values", f.content_lengths);
        return 400;
    }
    if (f.transfer_encodings > 1 ||
        (f.transfer_encodings && strcasecmp(f.transfer_encoding, "chunked") != 0)) {
        snprintf(err, errlen, "Transfer-Encoding \"%.60s\"%s is not supported: only chunked",
                 f.transfer_encoding, f.transfer_encodings > 1 ? " (given more than once)" : "");
        return 501;
    }
    if (f.transfer_encodings && f.content_lengths) {
        snprintf(err, errlen, "both Transfer-Encoding and Content-Length: send one");
        return 400;
    }
    return 0;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size,
                              void **con_cls, int metrics_only) {
    (void)version;
    http_server *s = cls;
    http_request *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof(*r));
        if (!r) return MHD_NO;
        r->s = s;
        r->conn = c;
        r->start_ns = now_ns();
        r->metrics_only = metrics_only;
        r->endpoint = ENDPOINT_OTHER;
        r->cors = s->p.cfg->cors_origin[0] != '\0';
        snprintf(r->method, sizeof(r->method), "%s", method);
        snprintf(r->path, sizeof(r->path), "%s", url);
        const char *id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
        if (request_id_acceptable(id, sizeof(r->request_id)))
            snprintf(r->request_id, sizeof(r->request_id), "%s", id);
        else new_request_id(s, r->request_id, sizeof(r->request_id));
        const char *ua = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_USER_AGENT);
        snprintf(r->user_agent, sizeof(r->user_agent), "%s", ua ? ua : "-");
        pthread_mutex_lock(&s->lock);
        s->open_requests++;
        pthread_mutex_unlock(&s->lock);
        *con_cls = r;
        char err[300];
        int refused = framing_refused(c, err, sizeof(err));
        if (refused) { /* no body to read and drop: where it ends is the question */
            set_error(r, refused, err);
            r->phase = PHASE_RESPOND;
            conn_guard_received(c);
            return queue_answer(c, r);
        }
        const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
        if (!config_host_allowed(s->p.cfg->allowed_hosts, host)) {
            /* a page whose name was rebound to this daemon's address
             * (DNS rebinding) is same-origin for its browser: Origin
             * checks and CORS pass it, its Host alone tells. 421: this
             * name is not served here (RFC 9110 15.5.20); every route,
             * as each answer is the page's to read (README "DNS rebinding") */
            snprintf(err, sizeof(err),
                     "Host \"%.100s\" is not in allowed-hosts: this daemon does not answer under that name "
                     "(a page under a name rebound to its address may not reach it); use an allowed name or "
                     "its IP address",
                     host);
            set_error(r, 421, err);
            r->phase = PHASE_RESPOND;
        } else if (strlen(url) >= sizeof(r->path)) {
            snprintf(err, sizeof(err), "the path is longer than %zu bytes", sizeof(r->path) - 1);
            set_error(r, 414, err);
            r->phase = PHASE_RESPOND;
        } else {
            route(r, c);
        }
        if (r->phase == PHASE_RESPOND) {
            /* libmicrohttpd closes the connection after a response queued
             * in this first call (the request is not over yet). So an
             * answer known from the headers alone (GETs, refusals) is
             * queued at the end of the request, its body read and dropped,
             * and keep-alive connections stay open. Only a body announced
             * far over the limits (answer_before_body), or one the client
             * holds back until "100 Continue", is answered at once, unread
             * (and the connection closed); not a load/unload: its answer
             * comes after its body. */
            if (answer_before_body(c, s->p.cfg->max_body_bytes, s->p.cfg->body_budget_bytes) && !r->control) {
                conn_guard_received(c); /* the body stays unread: the connection closes */
                return queue_answer(c, r);
            }
            r->phase = PHASE_DISCARD;
        }
        return MHD_YES;
    }
    if (r->phase == PHASE_DISCARD) {
        if (*upload_data_size) {
            /* a chunked load/unload body has no Content-Length: cap while reading */
            r->body_len += *upload_data_size;
            if (r->control && r->body_len > (size_t)s->p.cfg->max_body_bytes) control_body_too_large(r);
            *upload_data_size = 0;
            return MHD_YES;
        }
        conn_guard_received(c);
        if (r->control) return control_begin(r, c);
        r->phase = PHASE_RESPOND;
        return queue_answer(c, r);
    }
    if (r->phase == PHASE_READING) {
        if (*upload_data_size) {
            size_t n = *upload_data_size;
            *upload_data_size = 0;
            if (r->body_too_large || r->body_over_budget || r->coding_error) {
                r->body_len += n; /* dropped (for the message) */
                return MHD_YES;
            }
            if (r->body_len + n > (size_t)s->p.cfg->max_body_bytes) {
                /* chunked bodies have no Content-Length: cap while reading */
                r->body_too_large = 1;
                body_free(r);
                r->body_len += n;
                return MHD_YES;
            }
            int grown = body_grow(r, r->body_len + n);
            if (grown < 0) return MHD_NO;
            if (grown) {
                r->body_len += n;
                return MHD_YES;
            }
            memcpy(r->body + r->body_len, upload_data, n);
            r->body_len += n;
            return MHD_YES;
        }
        conn_guard_received(c);
        int queued = queue_parse(r, c);
        if (queued < 0) return MHD_NO;
        if (queued > 0) {
            r->phase = PHASE_RESPOND;
            return queue_answer(c, r);
        }
        return MHD_YES;
    }
    if (r->phase == PHASE_ANSWERED) {
        r->phase = PHASE_RESPOND;
        return queue_answer(c, r);
    }
    return MHD_YES;
}

static enum MHD_Result handle_main(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                   const char *version, const char *upload_data, size_t *upload_data_size,
                                   void **con_cls) {
    return handle(cls, c, url, method, version, upload_data, upload_data_size, con_cls, 0);
}

static enum MHD_Result handle_metrics(void *cls, struct MHD_Connection *c, const char *url,
                                      const char *method, const char *version, const char *upload_data,
                                      size_t *upload_data_size, void **con_cls) {
    return handle(cls, c, url, method, version, upload_data, upload_data_size, con_cls, 1);
}

static void access_log(http_request *r, enum MHD_RequestTerminationCode toe) {
    if (r->s->p.cfg->access_log == ACCESS_LOG_OFF) return;
    /* requests that addressed the served model name it (an unknown name
     * or version is not logged as the model) */
    int addressed = r->endpoint == ENDPOINT_V1_CLASSIFY || r->endpoint == ENDPOINT_V2_INFER ||
                    (r->endpoint == ENDPOINT_V2_MODEL && r->status != 404);
    log_access_entry e = {
        .method = r->method,
        .path = r->path,
        .request_id = r->request_id,
        .user_agent = r->user_agent,
        .status = r->status,
        .bytes = r->bytes_sent,
        .ms = (double)(now_ns() - r->start_ns) / 1e6,
        .completed = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK,
        .model = addressed && r->mv ? r->mv->pm.name : NULL,
        .version = addressed && r->mv ? r->mv->version_text : NULL,
    };
    log_access(&e);
}

static int hex_digit(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* The path's and the query arguments' %HH escapes, decoded as
 * libmicrohttpd's own unescaper does (a % not followed by two hex digits
 * stays as it is), but for %00: a NUL in the middle would end the path
 * and the value where the routes read them ("/v2/health/live%00junk"
 * answered as /v2/health/live), so it stays "%00" (no route has one: 404). */
static size_t url_unescape(void *cls, struct MHD_Connection *c, char *s) {
    (void)cls;
    (void)c;
    char *out = s;
    for (const char *in = s; *in;) {
        int hi = in[0] == '%' ? hex_digit(in[1]) : -1, lo = hi >= 0 ? hex_digit(in[2]) : -1;
        if (lo >= 0 && (hi || lo)) {
            *out++ = (char)(hi << 4 | lo);
            in += 3;
        } else {
            *out++ = *in++;
        }
    }
    *out = '\0';
    return (size_t)(out - s);
}

/* A request line has arrived (MHD_OPTION_URI_LOG_CALLBACK). What it
 * returns is the request's first *con_cls: NULL, as handle() expects. */
static void *request_line(void *cls, const char *uri, struct MHD_Connection *c) {
    (void)cls;
    (void)uri;
    conn_guard_request_begun(c);
    return NULL;
}

/* libmicrohttpd's own messages, as lines of the log (they may quote what
 * a client sent: log_event escapes them). Most are about one client -- one
 * that hung up in the middle of its request has its access line (aborted)
 * and its 499 already -- and any client can cause one per connection, so
 * a line each would let a client flood the log: at most MHD_LOG_BURST
 * lines in MHD_LOG_WINDOW_S, then one line saying how many were left out
 * (with the next message after the window, or at stop). */
#define MHD_LOG_BURST 5
#define MHD_LOG_WINDOW_S 10

static void mhd_log_dropped(unsigned long n) {
    if (n)
        log_event("warning", "libmicrohttpd: %lu more messages not logged (at most %d every %d s)", n,
                  MHD_LOG_BURST, MHD_LOG_WINDOW_S);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    http_server *s = cls;
    int64_t now = monotonic_ns();
    unsigned long dropped = 0;
    pthread_mutex_lock(&s->mhd_log_lock);
    if (!s->mhd_log_lines || now - s->mhd_log_window >= (int64_t)MHD_LOG_WINDOW_S * 1000000000) {
        dropped = s->mhd_log_dropped;
        s->mhd_log_dropped = 0;
        s->mhd_log_lines = 0;
        s->mhd_log_window = now;
    }
    int write = s->mhd_log_lines < MHD_LOG_BURST;
    if (write) s->mhd_log_lines++;
    else s->mhd_log_dropped++;
    pthread_mutex_unlock(&s->mhd_log_lock);
    mhd_log_dropped(dropped);
    if (!write) return;
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_event("warning", "libmicrohttpd: %s", msg);
}

/* The status counted for a request that ended before it had an answer,
 * from why it ended: a client that left or went quiet is not a server
 * error (any client could otherwise raise the 5xx rate at will). */
static int unanswered_status(enum MHD_RequestTerminationCode toe) {
    switch (toe) {
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT:
    case MHD_REQUEST_TERMINATED_READ_ERROR: return 499;
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return 408; /* connection-timeout-s */
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return 503;
    default: return 500;
    }
}

/* A request on c ended without a complete answer: counted for the line
 * http_stop writes, apart when it came as its idle connection was closed at
 * stop (conn_guard_close_idle). */
static void count_incomplete(http_server *s, struct MHD_Connection *c) {
    int raced = conn_guard_cut_of(c) == CONN_GUARD_CUT_IDLE;
    pthread_mutex_lock(&s->lock);
    s->incomplete++;
    if (raced) s->raced++;
    pthread_mutex_unlock(&s->lock);
}

/* MHD is done with the request (sent, or the client went away): the only
 * place per-request state is freed. */
static void request_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
    http_server *s = cls;
    http_request *r = *con_cls;
    /* kept alive: the next request's receive deadline starts now */
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) conn_guard_rearm(c);
    if (!r) {
        /* its request line came, its headers did not (the handler never ran):
         * cut at stop, timed out or the client left, it ended unanswered */
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) count_incomplete(s, c);
        return;
    }
    *con_cls = NULL;
    /* its body's share of body-budget-bytes goes before the arrival ends:
     * a reader who sees no body arriving can send one that fits */
    body_free(r);
    if (r->arriving) batcher_arrival_end(r->mv->batcher);
    /* ended without an answer: the status says why, counted after its log
     * line so that a reader of the count finds that too */
    if (!r->queued) {
        /* libmicrohttpd answered it itself (a chunked body it cannot
         * parse: 400, its HTML; a chunk size past 2^64: 413): that status,
         * the client's error, not a 500 that any client could add at will */
        const union MHD_ConnectionInfo *own = MHD_get_connection_info(c, MHD_CONNECTION_INFO_HTTP_STATUS);
        if (own && own->http_status) r->status = (int)own->http_status;
        else if (conn_guard_cut_of(c) == CONN_GUARD_CUT_DEADLINE) r->status = 408; /* cut while receiving */
        if (!r->status) r->status = unanswered_status(toe);
    }
    access_log(r, toe);
    if (!r->queued) count_request(r);
    if (r->parsed) proto_request_free(&r->req);
    free(r->job.logits);
    free(r->ctype);
    free(r->header_len);
    for (int i = 0; r->query && r->query[i]; i++) free(r->query[i]);
    free(r->query);
    if (!r->resp_persistent) free(r->resp);
    repository_release(s->p.repo, r->mv); /* last: the version may be freed now */
    free(r);
    pthread_mutex_lock(&s->lock);
    s->open_requests--;
    if (s->open_requests == 0) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->lock);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) count_incomplete(s, c);
}

/* Each connection's memory pool (request line, headers, I/O buffers).
 * libmicrohttpd mallocs a pool of up to 32 KiB and mmaps a larger one. A
 * malloc'd pool stays in the heap of the HTTP thread's arena after its
 * connection closes (glibc returns no page from the middle of a heap), so
 * the daemon's RSS followed the most connections ever open at once --
 * up to max-connections x 32 KiB, creeping up over a soak as rarer peaks
 * came (issue 19: +7.4 % in 20 min, in-use heap flat). An mmap'd pool is
 * unmapped when its connection closes: RSS follows the connections open
 * now. The cost is a few first-touch page faults per connection (not per
 * request). 36 KiB: just over the threshold; headers past about that get
 * 431. */
#define HTTP_CONNECTION_POOL_BYTES (36 * 1024)

/* MHD_NotifyConnectionCallback (cls: the daemon's conn_guard): the guard's
 * count and deadline, and the certificate pair an HTTPS connection holds
 * (tls.h), released first: the guard's notify frees where it is kept. */
static void connection_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                              enum MHD_ConnectionNotificationCode code) {
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) tls_connection_closed(c);
    conn_guard_notify(cls, c, socket_context, code);
}

static struct MHD_Daemon *start_daemon(http_server *s, int port, MHD_AccessHandlerCallback handler,
                                       conn_guard *guard, char *err, size_t errlen) {
    const server_config *cfg = s->p.cfg;
    struct sockaddr_in addr4;
    struct sockaddr_in6 addr6;
    struct sockaddr *addr;
    /* poll(2), not epoll: libmicrohttpd 0.9.75's epoll mode is edge-triggered
     * and takes a read shorter than its buffer as "drained"
     * (recv_param_adapter clears MHD_EPOLL_STATE_READ_READY), so a client's
     * close that came right behind its last bytes raised no further event:
     * a client gone mid-body sat "receiving", holding its slot and body
     * reservation, until receive-timeout-s (480 of 480 in edge.py
     * gone-storm). Its quiesce also races its epoll threads over the
     * listening socket (either side's EPOLL_CTL_DEL can find it gone:
     * MHD_PANIC, an abort in the middle of a drain). Level-triggered poll has
     * neither; it costs about 8 % of small-request throughput with 900 idle
     * connections open, nothing without (hey, bench in the commit). */
    unsigned int flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    memset(&addr4, 0, sizeof(addr4));
    memset(&addr6, 0, sizeof(addr6));
    if (inet_pton(AF_INET, cfg->host, &addr4.sin_addr) == 1) {
        addr4.sin_family = AF_INET;
        addr4.sin_port = htons((uint16_t)port);
        addr = (struct sockaddr *)&addr4;
    } else if (inet_pton(AF_INET6, cfg->host, &addr6.sin6_addr) == 1) {
        addr6.sin6_family = AF_INET6;
        addr6.sin6_port = htons((uint16_t)port);
        addr = (struct sockaddr *)&addr6;
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "host: \"%s\" is not an IPv4 or IPv6 address", cfg->host);
        return NULL;
    }
    /* HTTPS: each handshake asks tls.c for the pair (tls.h: rotation). Not
     * MHD_OPTION_HTTPS_MEM_CERT/KEY: with them libmicrohttpd ignores the
     * callback, and a pair given once is served until a restart. */
    struct MHD_OptionItem tls_options[] = {
        {MHD_OPTION_HTTPS_CERT_CALLBACK, 0, (void *)tls_retrieve_cert},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES},
        {MHD_OPTION_END, 0, NULL},
    };
    size_t tls_end = sizeof(tls_options) / sizeof(tls_options[0]) - 1; /* plain HTTP: none of them */
    if (s->p.tls) flags |= MHD_USE_TLS;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)port, conn_guard_accept, guard, handler, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        s, /* first: it applies to the options after it */
        MHD_OPTION_SOCK_ADDR, addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)cfg->http_threads,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_CONNECTION_POOL_BYTES,
        /* above max-connections, which conn_guard_accept enforces (see
         * conn_guard.h: at its own limit libmicrohttpd stops accepting) */
        MHD_OPTION_CONNECTION_LIMIT, conn_guard_mhd_limit(guard, cfg->http_threads),
        MHD_OPTION_NOTIFY_CONNECTION, connection_notify, guard, MHD_OPTION_URI_LOG_CALLBACK, request_line,
        NULL, MHD_OPTION_UNESCAPE_CALLBACK, url_unescape, NULL, MHD_OPTION_LISTEN_BACKLOG_SIZE,
        (unsigned int)(cfg->max_connections < 1024 ? 1024 : cfg->max_connections),
        MHD_OPTION_NOTIFY_COMPLETED, request_completed, s, MHD_OPTION_ARRAY,
        s->p.tls ? tls_options : tls_options + tls_end, MHD_OPTION_END);
    /* EAGAIN is a pool thread refused (RLIMIT_NPROC, pids.max; libmicrohttpd
     * logs it just before), never a socket, bind or listen of its: it was
     * "cannot listen on HOST:PORT", and an operator would look at the port */
    if (!d && errno == EAGAIN)
        snprintf(err, errlen, "cannot start the HTTP threads (http-threads %d) for %s:%d: %s",
                 cfg->http_threads, cfg->host, port, strerror(errno));
    else if (!d) snprintf(err, errlen, "cannot listen on %s:%d: %s", cfg->host, port, strerror(errno));
    return d;
}

static int bound_port(struct MHD_Daemon *d) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : 0;
}

http_server *http_start(const http_params *p, char *err, size_t errlen) {
    http_server *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->p = *p;
    atomic_init(&s->loaded, 0);
    atomic_init(&s->draining, 0);
    s->main_quiesced = s->metrics_quiesced = MHD_INVALID_SOCKET;
    atomic_init(&s->next_id, 1);
    atomic_init(&s->body_bytes, 0);
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
    pthread_cond_init(&s->idle, &monotonic); /* deadlines are monotonic_ns */
    pthread_condattr_destroy(&monotonic);
    pthread_mutex_init(&s->mhd_log_lock, NULL);
    conn_guard_params gp = {.max_connections = p->cfg->max_connections,
                            .max_per_client = p->cfg->max_connections_per_client,
                            .receive_timeout_ms = p->cfg->receive_timeout_s * 1000};
    if (p->tls && MHD_is_feature_supported(MHD_FEATURE_HTTPS_CERT_CALLBACK) != MHD_YES) {
        snprintf(err, errlen, "tls-cert-file: this libmicrohttpd was built without HTTPS (GnuTLS)");
        goto fail;
    }
    /* each daemon may hold max-connections sockets */
    if (conn_guard_reserve_fds(p->cfg->max_connections * (p->cfg->metrics_port ? 2 : 1), err, errlen))
        goto fail;
    s->main_guard = conn_guard_new(gp, err, errlen);
    if (!s->main_guard) goto fail;
    pthread_mutex_init(&s->parse_lock, NULL);
    pthread_cond_init(&s->parse_work, NULL);
    s->parsers = calloc((size_t)p->cfg->parse_threads, sizeof(pthread_t));
    if (!s->parsers) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (; s->parsers_started < p->cfg->parse_threads; s->parsers_started++) {
        int rc = pthread_create(&s->parsers[s->parsers_started], NULL, parse_main, s);
        if (rc) {
            snprintf(err, errlen, "cannot start parse thread %d: %s", s->parsers_started, strerror(rc));
            goto fail;
        }
    }
    s->main_daemon = start_daemon(s, p->cfg->port, handle_main, s->main_guard, err, errlen);
    if (!s->main_daemon) goto fail;
    s->port = bound_port(s->main_daemon);
    if (p->cfg->metrics_port) {
        /* a scraper is one client, often through one address with others:
         * the metrics port keeps max-connections but no per-client cap */
        gp.max_per_client = 0;
        s->metrics_guard = conn_guard_new(gp, err, errlen);
        if (!s->metrics_guard) goto fail;
        s->metrics_daemon =
            start_daemon(s, p->cfg->metrics_port, handle_metrics, s->metrics_guard, err, errlen);
        if (!s->metrics_daemon) goto fail;
        s->metrics_port = bound_port(s->metrics_daemon);
    }
    return s;
fail:
    http_stop(s);
    return NULL;
}

void http_set_loaded(http_server *s) { atomic_store(&s->loaded, 1); }

int http_port(http_server *s) { return s->port; }
int http_metrics_port(http_server *s) { return s->metrics_port; }

/* Stops accepting on d: new connections are refused at once instead of
 * waiting in the listen backlog, as the listening socket is shut down. Its
 * descriptor is closed only once d has stopped (http_stop): libmicrohttpd's
 * threads may poll it for a moment after the quiesce (its documentation:
 * not to be closed while in use), and a number closed under them could be
 * reused by the next socket or file opened. */
static void stop_accepting(struct MHD_Daemon *d, MHD_socket *quiesced) {
    if (!d || *quiesced != MHD_INVALID_SOCKET) return;
    MHD_socket fd = MHD_quiesce_daemon(d);
    if (fd == MHD_INVALID_SOCKET) return;
    shutdown(fd, SHUT_RDWR);
    *quiesced = fd;
}

void http_begin_drain(http_server *s) {
    atomic_store(&s->draining, 1);
    stop_accepting(s->main_daemon, &s->main_quiesced);
}

/* Waits until no request is open, or until deadline_ns (monotonic). */
static void wait_requests(http_server *s, int64_t deadline_ns) {
    struct timespec ts = monotonic_timespec(deadline_ns);
    pthread_mutex_lock(&s->lock);
    while (s->open_requests > 0)
        if (pthread_cond_timedwait(&s->idle, &s->lock, &ts) == ETIMEDOUT) break;
    pthread_mutex_unlock(&s->lock);
}

void http_close_connections(http_server *s, int timeout_ms) {
    int64_t deadline = monotonic_ns() + (int64_t)timeout_ms * 1000000;
    /* the answers the drain resumed are written first */
    wait_requests(s, deadline);
    /* Then every connection closes: an idle one at once, one with a request
     * under way (a request line that came just before) after its answer,
     * which closes it (Connection: close while draining). Stopping the
     * daemons with connections open would cut such a request: libmicrohttpd
     * closes every connection at stop, idle or not. The metrics port stops
     * accepting now. */
    stop_accepting(s->metrics_daemon, &s->metrics_quiesced);
    int open = 0, open_metrics = 0;
    int idle = conn_guard_close_idle(s->main_guard, &open);
    if (s->metrics_guard) idle += conn_guard_close_idle(s->metrics_guard, &open_metrics);
    open += open_metrics;
    int64_t left_ms = (deadline - monotonic_ns()) / 1000000;
    if (open > 0)
        log_event("info", "closing connections: %d idle closed, waiting up to %lld ms for %d more to close",
                  idle, (long long)(left_ms > 0 ? left_ms : 0), open);
    open = conn_guard_wait_closed(s->main_guard, deadline);
    if (s->metrics_guard) open += conn_guard_wait_closed(s->metrics_guard, deadline);
    if (open > 0)
        log_event("warning", "connections still open after %d ms, cut at stop: %d", timeout_ms, open);
}

void http_stop(http_server *s) {
    if (!s) return;
    /* Parse threads answer the bodies still queued 503 without parsing
     * them (the batcher has stopped), resuming their connections, then
     * exit. */
    pthread_mutex_lock(&s->parse_lock);
    s->parse_stopping = 1;
    pthread_cond_broadcast(&s->parse_work);
    pthread_mutex_unlock(&s->parse_lock);
    for (int i = 0; i < s->parsers_started; i++) pthread_join(s->parsers[i], NULL);
    free(s->parsers);
    if (s->metrics_daemon) MHD_stop_daemon(s->metrics_daemon);
    if (s->main_daemon) MHD_stop_daemon(s->main_daemon);
    if (s->metrics_quiesced != MHD_INVALID_SOCKET) close(s->metrics_quiesced);
    if (s->main_quiesced != MHD_INVALID_SOCKET) close(s->main_quiesced);
    conn_guard_free(s->metrics_guard); /* after their daemons: every connection closed */
    conn_guard_free(s->main_guard);
    /* Requests the daemon had started reading but did not answer in full
     * (client aborts, errors, connections cut at stop): the shutdown test
     * tells a request lost by us from one that never reached us by it. */
    mhd_log_dropped(s->mhd_log_dropped);
    if (s->incomplete > s->raced)
        log_event("info", "%lu requests ended without a complete answer", s->incomplete - s->raced);
    /* written onto a kept-alive connection as the stop closed it idle: not
     * begun by us when it was closed; the client sees it close unanswered */
    if (s->raced)
        log_event("info", "%lu requests came on idle connections as they were closed at stop (RFC 9112 9.6)",
                  s->raced);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->mhd_log_lock);
    pthread_cond_destroy(&s->parse_work);
    pthread_mutex_destroy(&s->parse_lock);
    free(s);
}
