/* metrics.c: counters, histograms and their text exposition. */
#include "metrics.h"

#include <dirent.h>
#include <stddef.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include "text.h"

static const char *endpoint_names[ENDPOINT_COUNT] = {
    "v1_classify", "v1_models", "v2_infer", "v2_model", "v2_server", "health", "metrics", "console", "other"};

const char *metrics_endpoint_name(int endpoint) {
    return endpoint >= 0 && endpoint < ENDPOINT_COUNT ? endpoint_names[endpoint] : "other";
}

#define MAX_BUCKETS 16

static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,  0.5,    1,     2.5,  5,     10,   30};
static const double images_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
static const double tokens_bounds[] = {16, 64, 256, 1024, 4096, 16384, 65536};
/* Images are also counted by their own token count, bucketed so that the
 * label set stays bounded whatever resolutions clients send. */
static const int token_buckets[] = {64, 256, 1024, 4096};
#define TOKEN_BUCKETS 5

typedef struct {
    const double *bounds;
    int num_bounds;
    uint64_t counts[MAX_BUCKETS]; /* per bucket, not cumulative; the last is +Inf */
    uint64_t count;
    double sum;
} histogram;

/* Failure reasons, from the status code: the codes the daemon sends have
 * their own; any other 5xx is "internal", any other 4xx "other". All are
 * listed in comrope_request_failures_total, so that its reasons sum to the
 * requests answered >= 400 ("other" was not listed: a 414 was in no
 * reason). */
static const struct {
    int status; /* 0: the last two, the rest of the 5xx and of the 4xx */
    const char *reason;
} failure_reasons[] = {
    {400, "bad_request"},     {401, "unauthorized"},
    {404, "not_found"},       {405, "method_not_allowed"},
    {408, "request_timeout"}, {413, "too_large"},
    {414, "uri_too_long"},    {415, "unsupported_media_type"},
    {403, "forbidden"},       /* model control from a page of another origin */
    {421, "misdirected"},     /* a Host not in allowed-hosts */
    {499, "client_closed"},   /* nginx's code: the client left before its answer */
    {501, "not_implemented"}, /* a Transfer-Encoding other than chunked: the client's */
    {503, "unavailable"},     {504, "deadline_exceeded"},
    {0, "internal"},          {0, "other"},
};
#define FAILURE_REASONS (int)(sizeof(failure_reasons) / sizeof(failure_reasons[0]))

/* The index in failure_reasons of a status >= 400. */
static int failure_reason(int status) {
    for (int i = 0; i < FAILURE_REASONS - 2; i++)
        if (failure_reasons[i].status == status) return i;
    return status >= 500 ? FAILURE_REASONS - 2 : FAILURE_REASONS - 1;
}

/* Requests are counted by status code in one slot per code HTTP defines
 * (RFC 9110 and the IANA registry) and nginx's 499: 64 counters where one
 * per number from 0 to 599 made a series' request counts 43 KB, almost all
 * zero. The daemon sends no other code; one that is not listed counts as
 * 500, as a code out of range always has. */
static const short status_codes[] = {100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208,
                                     226, 300, 301, 302, 303, 304, 305, 306, 307, 308, 400, 401, 402,
                                     403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415,
                                     416, 417, 418, 421, 422, 423, 424, 425, 426, 428, 429, 431, 451,
                                     499, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511};
#define STATUS_SLOTS (int)(sizeof(status_codes) / sizeof(status_codes[0]))

static int status_code_index(int status) {
    int lo = 0, hi = STATUS_SLOTS - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (status_codes[mid] == status) return mid;
        if (status_codes[mid] < status) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* The slot of a status code; codes HTTP does not define go to 500's. */
static int status_slot(int status) {
    int k = status_code_index(status);
    return k >= 0 ? k : status_code_index(500);
}

/* The endpoints whose requests are of a model version (they carry the
 * model and version labels): a series counts these only. */
static const int model_endpoints[] = {ENDPOINT_V1_CLASSIFY, ENDPOINT_V2_INFER, ENDPOINT_V2_MODEL};
#define MODEL_ENDPOINTS (int)(sizeof(model_endpoints) / sizeof(model_endpoints[0]))

/* An endpoint's index in model_endpoints, or -1. */
static int model_endpoint(int e) {
    for (int i = 0; i < MODEL_ENDPOINTS; i++)
        if (model_endpoints[i] == e) return i;
    return -1;
}

/* One (model, version)'s series: its requests, their latency and
 * Triton's statistics, its queue waits and batches. */
struct metrics_series {
    metrics *owner; /* its lock guards all below */
    char *model, *version;
    /* comrope_model_info's labels: the served copy's (metrics_series_label).
     * pe_type is one of the engine's short names (pe_type_name): a fixed
     * array, so that labelling after an install cannot fail. */
    char pe_type[32];
    int training_resolution;
    /* the serving copy's memory (metrics_series_memory); has_memory: set */
    size_t weight_bytes, workspace_bytes;
    int has_memory;
    int open; /* metrics_series_open minus close: freed at 0 */
    /* by model_endpoints index, then status slot */
    uint64_t requests[MODEL_ENDPOINTS][STATUS_SLOTS];
    histogram request_seconds[MODEL_ENDPOINTS];
    uint64_t infer_ok, infer_ok_ns, infer_fail, infer_fail_ns, last_inference_ms;
    /* Triton's batch_stats: the sizes that ran, ascending, added as they
     * are first seen (at most METRICS_MAX_BATCH_SIZE). Two arrays indexed by
     * every size were 64 KiB of the series' 110, almost all zero. */
    proto_batch_stat *batch_sizes;
    int num_batch_sizes, cap_batch_sizes;
    histogram queue_seconds, compute_seconds, batch_images, batch_tokens;
};

struct metrics {
    pthread_mutex_t lock;
    metrics_series **series; /* the open ones, in order of first open */
    int num_series;
    /* the requests of freed series by status code, summed over endpoints:
     * comrope_request_failures_total counts them still (it never goes back) */
    uint64_t freed_requests[STATUS_SLOTS];
    char *isa;                 /* the engine's kernels, or NULL until set */
    char *precision;           /* with isa: "fp32" or "bf16" */
    char *precision_requested; /* with isa: "fp32", "bf16" or "auto" */
    int bf16_pays;
    size_t memory_limit; /* 0: unknown (not set) */
    double start_time;
    /* requests of no model version (probes, scrapes, unknown models) */
    uint64_t requests[ENDPOINT_COUNT][STATUS_SLOTS];
    /* by endpoint: a health probe or a scrape is no inference latency */
    histogram request_seconds[ENDPOINT_COUNT];
    uint64_t batches, mixed_batches;
    /* batches whose size found no room in their series' batch_stats (out
     * of memory): counted in all else */
    uint64_t batch_sizes_dropped;
    uint64_t images_by_tokens[TOKEN_BUCKETS];
    metrics_connections connections;
};

static void histogram_init(histogram *h, const double *bounds, int n) {
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->num_bounds = n;
}

static void histogram_observe(histogram *h, double v) {
    int i = 0;
    while (i < h->num_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

#define N(a) (int)(sizeof(a) / sizeof(a[0]))

metrics *metrics_new(void) {
    metrics *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    pthread_mutex_init(&m->lock, NULL);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    m->start_time = (double)tv.tv_sec + tv.tv_usec / 1e6;
    for (int e = 0; e < ENDPOINT_COUNT; e++)
        histogram_init(&m->request_seconds[e], latency_bounds, N(latency_bounds));
    return m;
}

static void series_free(metrics_series *s) {
    if (!s) return;
    free(s->model);
    free(s->version);
    free(s->batch_sizes);
    free(s);
}

void metrics_free(metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->lock);
    for (int i = 0; i < m->num_series; i++) series_free(m->series[i]);
    free(m->series);
    free(m->isa);
    free(m->precision);
    free(m->precision_requested);
    free(m);
}

metrics_series *metrics_series_open(metrics *m, const char *model, const char *version, const char *pe_type,
                                    int training_resolution) {
    metrics_series *s = NULL;
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < m->num_series && !s; i++)
        if (strcmp(m->series[i]->model, model) == 0 && strcmp(m->series[i]->version, version) == 0)
            s = m->series[i];
    if (!s) {
        metrics_series **grown = realloc(m->series, sizeof(*grown) * (size_t)(m->num_series + 1));
        if (grown) m->series = grown;
        s = grown ? calloc(1, sizeof(*s)) : NULL;
        if (s) {
            s->owner = m;
            s->model = strdup(model);
            s->version = strdup(version);
            snprintf(s->pe_type, sizeof(s->pe_type), "%s", pe_type);
            s->training_resolution = training_resolution;
            for (int e = 0; e < MODEL_ENDPOINTS; e++)
                histogram_init(&s->request_seconds[e], latency_bounds, N(latency_bounds));
            histogram_init(&s->queue_seconds, latency_bounds, N(latency_bounds));
            histogram_init(&s->compute_seconds, latency_bounds, N(latency_bounds));
            histogram_init(&s->batch_images, images_bounds, N(images_bounds));
            histogram_init(&s->batch_tokens, tokens_bounds, N(tokens_bounds));
        }
        if (s && s->model && s->version) m->series[m->num_series++] = s;
        else {
            series_free(s);
            s = NULL;
        }
    }
    /* Found open (a reload, or a copy still draining): its labels stay
     * those of the copy that serves until the new one is installed
     * (metrics_series_label); a reload that fails after this would have
     * left them naming files that never served. */
    if (s) s->open++;
    pthread_mutex_unlock(&m->lock);
    return s;
}

void metrics_series_label(metrics_series *s, const char *pe_type, int training_resolution) {
    if (!s) return;
    pthread_mutex_lock(&s->owner->lock);
    snprintf(s->pe_type, sizeof(s->pe_type), "%s", pe_type);
    s->training_resolution = training_resolution;
    pthread_mutex_unlock(&s->owner->lock);
}

void metrics_series_memory(metrics_series *s, size_t weight_bytes, size_t workspace_bytes) {
    if (!s) return;
    pthread_mutex_lock(&s->owner->lock);
    s->weight_bytes = weight_bytes;
    s->workspace_bytes = workspace_bytes;
    s->has_memory = 1;
    pthread_mutex_unlock(&s->owner->lock);
}

void metrics_set_memory_limit(metrics *m, size_t bytes) {
    pthread_mutex_lock(&m->lock);
    m->memory_limit = bytes;
    pthread_mutex_unlock(&m->lock);
}

void metrics_series_close(metrics_series *s) {
    if (!s) return;
    metrics *m = s->owner;
    pthread_mutex_lock(&m->lock);
    if (--s->open > 0) {
        pthread_mutex_unlock(&m->lock);
        return;
    }
    /* No longer served: freed. Kept, they made a daemon serving a new
     * version every hour grow by a series (~3 KB; 110 KB then) an hour and list every
     * version it ever served in each scrape. */
    for (int e = 0; e < MODEL_ENDPOINTS; e++)
        for (int k = 0; k < STATUS_SLOTS; k++) m->freed_requests[k] += s->requests[e][k];
    int i = 0;
    while (i < m->num_series && m->series[i] != s) i++;
    if (i < m->num_series) {
        memmove(&m->series[i], &m->series[i + 1], sizeof(*m->series) * (size_t)(m->num_series - i - 1));
        m->num_series--;
    }
    pthread_mutex_unlock(&m->lock);
    series_free(s);
}
#undef N

int metrics_set_engine(metrics *m, const char *isa, const char *precision, const char *precision_requested,
                       int bf16_pays) {
    char *copy = strdup(isa), *prec = strdup(precision), *req = strdup(precision_requested);
    if (!copy || !prec || !req) {
        free(copy);
        free(prec);
        free(req);
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    free(m->isa);
    free(m->precision);
    free(m->precision_requested);
    m->isa = copy;
    m->precision = prec;
    m->precision_requested = req;
    m->bf16_pays = bf16_pays != 0;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

void metrics_request(metrics *m, metrics_series *s, int endpoint, int status, double seconds) {
    if (endpoint < 0 || endpoint >= ENDPOINT_COUNT) endpoint = ENDPOINT_OTHER;
    int slot = status_slot(status), me = model_endpoint(endpoint);
    if (status_codes[slot] != status) status = 500;
    if (me < 0) s = NULL;
    pthread_mutex_lock(&m->lock);
    if (!s) {
        m->requests[endpoint][slot]++;
        histogram_observe(&m->request_seconds[endpoint], seconds);
        pthread_mutex_unlock(&m->lock);
        return;
    }
    s->requests[me][slot]++;
    histogram_observe(&s->request_seconds[me], seconds);
    if (endpoint == ENDPOINT_V1_CLASSIFY || endpoint == ENDPOINT_V2_INFER) {
        uint64_t ns = (uint64_t)(seconds * 1e9);
        if (status == 200) {
            s->infer_ok++;
            s->infer_ok_ns += ns;
        } else if (status != 404) { /* a 404 named another model or version: not this one's */
            s->infer_fail++;
            s->infer_fail_ns += ns;
        }
    }
    pthread_mutex_unlock(&m->lock);
}

void metrics_set_connections(metrics *m, const metrics_connections *c) {
    pthread_mutex_lock(&m->lock);
    m->connections = *c;
    pthread_mutex_unlock(&m->lock);
}

void metrics_queue_wait(metrics_series *s, double seconds) {
    pthread_mutex_lock(&s->owner->lock);
    histogram_observe(&s->queue_seconds, seconds);
    pthread_mutex_unlock(&s->owner->lock);
}

/* The entry of batch size `size` in s's table, added (kept ascending) when
 * first seen; NULL when it has to grow and cannot (or size < 1). Under the
 * owner's lock. A server runs a handful of sizes: a lookup is a short
 * binary search, a new size a small memmove. */
static proto_batch_stat *batch_size_entry(metrics_series *s, int size) {
    int lo = 0, hi = s->num_batch_sizes;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (s->batch_sizes[mid].batch_size < size) lo = mid + 1;
        else hi = mid;
    }
    if (lo < s->num_batch_sizes && s->batch_sizes[lo].batch_size == size) return &s->batch_sizes[lo];
    if (size < 1) return NULL;
    if (s->num_batch_sizes == s->cap_batch_sizes) {
        int cap = s->cap_batch_sizes ? 2 * s->cap_batch_sizes : 4;
        if (cap > METRICS_MAX_BATCH_SIZE) cap = METRICS_MAX_BATCH_SIZE;
        proto_batch_stat *grown = realloc(s->batch_sizes, sizeof(*grown) * (size_t)cap);
        if (!grown) return NULL;
        s->batch_sizes = grown;
        s->cap_batch_sizes = cap;
    }
    memmove(&s->batch_sizes[lo + 1], &s->batch_sizes[lo],
            sizeof(*s->batch_sizes) * (size_t)(s->num_batch_sizes - lo));
    s->num_batch_sizes++;
    s->batch_sizes[lo] = (proto_batch_stat){size, 0, 0};
    return &s->batch_sizes[lo];
}

void metrics_batch(metrics_series *s, int images, const int *token_counts, int resolutions,
                   double compute_seconds) {
    metrics *m = s->owner;
    int tokens = 0;
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < images; i++) {
        int b = 0;
        while (b < TOKEN_BUCKETS - 1 && token_counts[i] > token_buckets[b]) b++;
        m->images_by_tokens[b]++;
        tokens += token_counts[i];
    }
    m->batches++;
    if (resolutions > 1) m->mixed_batches++;
    proto_batch_stat *e =
        batch_size_entry(s, images < METRICS_MAX_BATCH_SIZE ? images : METRICS_MAX_BATCH_SIZE);
    if (e) {
        e->count++;
        e->ns += (uint64_t)(compute_seconds * 1e9);
    } else m->batch_sizes_dropped++;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    s->last_inference_ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    histogram_observe(&s->batch_images, images);
    histogram_observe(&s->batch_tokens, tokens);
    histogram_observe(&s->compute_seconds, compute_seconds);
    pthread_mutex_unlock(&m->lock);
}

/* One histogram's series; labels: `k="v",...` (escaped), or "". The
 * HELP and TYPE lines are the caller's (once per name). */
static void put_histogram_series(text *t, const char *name, const char *labels, const histogram *h) {
    const char *sep = labels[0] ? "," : "";
    uint64_t cumulative = 0;
    for (int i = 0; i < h->num_bounds; i++) {
        cumulative += h->counts[i];
        text_put(t, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i],
                 (unsigned long long)cumulative);
    }
    text_put(t, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)h->count);
    if (labels[0])
        text_put(t, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", name, labels, h->sum, name, labels,
                 (unsigned long long)h->count);
    else text_put(t, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->count);
}

/* Label values are our own names, but escape anyway: a model name comes
 * from the command line. */
static void put_label_value(text *t, const char *s) {
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') text_put(t, "\\%c", *s);
        else if (*s == '\n') text_put(t, "\\n");
        else text_put(t, "%c", *s);
    }
}

static int count_open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory stream's own fd */
}

static long long resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long long size = 0, rss = 0;
    if (!f) return -1;
    int ok = fscanf(f, "%lld %lld", &size, &rss) == 2;
    fclose(f);
    return ok ? rss * sysconf(_SC_PAGESIZE) : -1;
}

/* `model="<name>",version="<model version>"`, both escaped. */
static void escape_into(const char *v, char *out, size_t *n, size_t cap) {
    for (; *v && *n + 8 < cap; v++) {
        if (*v == '\\' || *v == '"') out[(*n)++] = '\\';
        if (*v == '\n') {
            out[(*n)++] = '\\';
            out[(*n)++] = 'n';
        } else out[(*n)++] = *v;
    }
}

static void model_labels(const metrics_series *s, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "model=\"");
    escape_into(s->model, out, &n, cap);
    n += (size_t)snprintf(out + n, cap - n, "\",version=\"");
    escape_into(s->version, out, &n, cap);
    snprintf(out + n, cap - n, "\"");
}

int metrics_model_stats(metrics_series *s, metrics_stats *st) {
    memset(st, 0, sizeof(*st));
    pthread_mutex_lock(&s->owner->lock);
    /* sized and copied under one lock hold: a batch that ends between
     * would not fit */
    int n = s->num_batch_sizes;
    if (n) {
        st->batch_stats = malloc(sizeof(*st->batch_stats) * (size_t)n);
        if (!st->batch_stats) {
            pthread_mutex_unlock(&s->owner->lock);
            return -1;
        }
        memcpy(st->batch_stats, s->batch_sizes, sizeof(*st->batch_stats) * (size_t)n);
        st->num_batch_sizes = n;
    }
    st->last_inference_ms = s->last_inference_ms;
    st->inference_count = (uint64_t)s->batch_images.sum;
    st->execution_count = s->batch_images.count;
    st->success_count = s->infer_ok;
    st->success_ns = s->infer_ok_ns;
    st->fail_count = s->infer_fail;
    st->fail_ns = s->infer_fail_ns;
    st->queue_count = s->queue_seconds.count;
    st->queue_ns = (uint64_t)(s->queue_seconds.sum * 1e9);
    st->compute_count = s->compute_seconds.count;
    st->compute_ns = (uint64_t)(s->compute_seconds.sum * 1e9);
    st->memory_bytes = s->has_memory ? (uint64_t)s->weight_bytes + s->workspace_bytes : 0;
    pthread_mutex_unlock(&s->owner->lock);
    return 0;
}

void metrics_stats_free(metrics_stats *st) {
    free(st->batch_stats);
    st->batch_stats = NULL;
    st->num_batch_sizes = 0;
}

char *metrics_render(metrics *m, const metrics_gauges *g, size_t *len) {
    text t = {0};
    char ml[600], labels[700];
    t.cap = 16384;
    t.data = malloc(t.cap);
    if (!t.data) return NULL;
    pthread_mutex_lock(&m->lock);

    text_put(&t, "# HELP comrope_requests_total HTTP requests answered, by endpoint and status code.\n"
                 "# TYPE comrope_requests_total counter\n");
    for (int e = 0; e < ENDPOINT_COUNT; e++)
        for (int k = 0; k < STATUS_SLOTS; k++)
            if (m->requests[e][k])
                text_put(&t, "comrope_requests_total{endpoint=\"%s\",code=\"%d\"} %llu\n", endpoint_names[e],
                         status_codes[k], (unsigned long long)m->requests[e][k]);
    for (int i = 0; i < m->num_series; i++) {
        const metrics_series *ms = m->series[i];
        model_labels(ms, ml, sizeof(ml));
        for (int e = 0; e < MODEL_ENDPOINTS; e++)
            for (int k = 0; k < STATUS_SLOTS; k++)
                if (ms->requests[e][k])
                    text_put(&t, "comrope_requests_total{endpoint=\"%s\",code=\"%d\",%s} %llu\n",
                             endpoint_names[model_endpoints[e]], status_codes[k], ml,
                             (unsigned long long)ms->requests[e][k]);
    }

    /* Failures summed over endpoints, by reason; every reason is listed so
     * that rate() works from the first scrape. */
    text_put(&t, "# HELP comrope_request_failures_total Requests answered with an error, by reason.\n"
                 "# TYPE comrope_request_failures_total counter\n");
    uint64_t by_slot[STATUS_SLOTS], by_reason[FAILURE_REASONS] = {0};
    memcpy(by_slot, m->freed_requests, sizeof(by_slot));
    for (int k = 0; k < STATUS_SLOTS; k++) {
        for (int e = 0; e < ENDPOINT_COUNT; e++) by_slot[k] += m->requests[e][k];
        for (int i = 0; i < m->num_series; i++)
            for (int e = 0; e < MODEL_ENDPOINTS; e++) by_slot[k] += m->series[i]->requests[e][k];
    }
    for (int k = 0; k < STATUS_SLOTS; k++)
        if (status_codes[k] >= 400) by_reason[failure_reason(status_codes[k])] += by_slot[k];
    for (int i = 0; i < FAILURE_REASONS; i++)
        text_put(&t, "comrope_request_failures_total{reason=\"%s\"} %llu\n", failure_reasons[i].reason,
                 (unsigned long long)by_reason[i]);

    text_put(&t, "# HELP comrope_request_duration_seconds End-to-end request latency, from the first byte of "
                 "headers to the answer being handed to the connection, by endpoint.\n# TYPE "
                 "comrope_request_duration_seconds histogram\n");
    /* a model endpoint's requests of no model version (an unknown one)
     * only once there are some */
    for (int e = 0; e < ENDPOINT_COUNT; e++) {
        if (model_endpoint(e) >= 0 && !m->request_seconds[e].count) continue;
        snprintf(labels, sizeof(labels), "endpoint=\"%s\"", endpoint_names[e]);
        put_histogram_series(&t, "comrope_request_duration_seconds", labels, &m->request_seconds[e]);
    }
    for (int i = 0; i < m->num_series; i++) {
        model_labels(m->series[i], ml, sizeof(ml));
        for (int e = 0; e < MODEL_ENDPOINTS; e++) {
            snprintf(labels, sizeof(labels), "endpoint=\"%s\",%s", endpoint_names[model_endpoints[e]], ml);
            put_histogram_series(&t, "comrope_request_duration_seconds", labels,
                                 &m->series[i]->request_seconds[e]);
        }
    }
    static const struct {
        const char *name, *help;
        size_t offset;
    } per_series[] = {
        {"comrope_queue_wait_seconds", "Time a request waited for a worker.",
         offsetof(metrics_series, queue_seconds)},
        {"comrope_batch_compute_seconds", "Decode and forward time of an executed batch.",
         offsetof(metrics_series, compute_seconds)},
        {"comrope_batch_images", "Images per executed batch.", offsetof(metrics_series, batch_images)},
        {"comrope_batch_tokens", "Tokens per executed batch (all images together).",
         offsetof(metrics_series, batch_tokens)},
    };
    for (size_t h = 0; h < sizeof(per_series) / sizeof(per_series[0]) && m->num_series; h++) {
        text_put(&t, "# HELP %s %s\n# TYPE %s histogram\n", per_series[h].name, per_series[h].help,
                 per_series[h].name);
        for (int i = 0; i < m->num_series; i++) {
            model_labels(m->series[i], ml, sizeof(ml));
            put_histogram_series(&t, per_series[h].name, ml,
                                 (const histogram *)((const char *)m->series[i] + per_series[h].offset));
        }
    }
    text_put(&t,
             "# HELP comrope_batches_total Executed batches.\n# TYPE comrope_batches_total counter\n"
             "comrope_batches_total %llu\n",
             (unsigned long long)m->batches);
    text_put(&t,
             "# HELP comrope_batch_stats_dropped_total Executed batches left out of their size's entry in "
             "/v2/models/{name}/stats batch_stats: no memory to add the size (counted everywhere else).\n"
             "# TYPE comrope_batch_stats_dropped_total counter\ncomrope_batch_stats_dropped_total %llu\n",
             (unsigned long long)m->batch_sizes_dropped);
    text_put(&t,
             "# HELP comrope_batches_mixed_resolution_total Executed batches holding images of more than "
             "one resolution.\n# TYPE comrope_batches_mixed_resolution_total counter\n"
             "comrope_batches_mixed_resolution_total %llu\n",
             (unsigned long long)m->mixed_batches);

    text_put(&t,
             "# HELP comrope_images_total Images classified, by their token count (bucketed resolution).\n"
             "# TYPE comrope_images_total counter\n");
    for (int b = 0; b < TOKEN_BUCKETS; b++) {
        if (b < TOKEN_BUCKETS - 1)
            text_put(&t, "comrope_images_total{tokens=\"le_%d\"} %llu\n", token_buckets[b],
                     (unsigned long long)m->images_by_tokens[b]);
        else
            text_put(&t, "comrope_images_total{tokens=\"gt_%d\"} %llu\n", token_buckets[b - 1],
                     (unsigned long long)m->images_by_tokens[b]);
    }

    text_put(&t,
             "# HELP comrope_queue_depth Requests waiting for a worker.\n# TYPE comrope_queue_depth gauge\n"
             "comrope_queue_depth %d\n",
             g->queue_depth);
    text_put(&t,
             "# HELP comrope_in_flight_requests Requests queued or being computed.\n"
             "# TYPE comrope_in_flight_requests gauge\ncomrope_in_flight_requests %d\n",
             g->in_flight);
    text_put(&t,
             "# HELP comrope_receiving_requests Inference requests whose body is being received or parsed.\n"
             "# TYPE comrope_receiving_requests gauge\ncomrope_receiving_requests %d\n",
             g->receiving);
    text_put(&t,
             "# HELP comrope_open_connections Open HTTP connections (main port).\n"
             "# TYPE comrope_open_connections gauge\ncomrope_open_connections %d\n",
             m->connections.open);
    text_put(&t,
             "# HELP comrope_connections_refused_total Connections closed at accept, by the cap reached.\n"
             "# TYPE comrope_connections_refused_total counter\n"
             "comrope_connections_refused_total{reason=\"max_connections\"} %llu\n"
             "comrope_connections_refused_total{reason=\"max_connections_per_client\"} %llu\n",
             m->connections.refused_limit, m->connections.refused_client);
    text_put(&t,
             "# HELP comrope_receive_timeouts_total Connections cut at receive-timeout-s: idle (no request "
             "line yet) or in a request whose headers or body had not all arrived.\n"
             "# TYPE comrope_receive_timeouts_total counter\n"
             "comrope_receive_timeouts_total{phase=\"idle\"} %llu\n"
             "comrope_receive_timeouts_total{phase=\"request\"} %llu\n",
             m->connections.timeouts_idle, m->connections.timeouts_request);
    text_put(&t,
             "# HELP comrope_log_lines_dropped_total Log lines dropped, the log's buffer being full "
             "(stderr was not being read) or refused by stderr (closed, a full disk).\n# TYPE "
             "comrope_log_lines_dropped_total counter\n"
             "comrope_log_lines_dropped_total %llu\n",
             g->log_lines_dropped);
    text_put(&t,
             "# HELP comrope_ready Whether the server accepts inference requests.\n"
             "# TYPE comrope_ready gauge\ncomrope_ready %d\n",
             g->ready);
    text_put(&t, "# HELP comrope_model_info The served model versions.\n# TYPE comrope_model_info gauge\n");
    for (int i = 0; i < m->num_series; i++) {
        const metrics_series *ms = m->series[i];
        text_put(&t, "comrope_model_info{model=\"");
        put_label_value(&t, ms->model);
        text_put(&t, "\",pe_type=\"");
        put_label_value(&t, ms->pe_type);
        text_put(&t, "\",training_resolution=\"%d\",version=\"", ms->training_resolution);
        put_label_value(&t, ms->version);
        text_put(&t, "\"} 1\n");
    }
    text_put(&t, "# HELP comrope_model_memory_bytes Memory a served model version holds: kind weights "
                 "(parameters and packed matrices) or workspace (its workers' activation arenas, address "
                 "space reserved at load, and the rotation tables they may cache: the most its batches can "
                 "touch, not what they touched).\n"
                 "# TYPE comrope_model_memory_bytes gauge\n");
    for (int i = 0; i < m->num_series; i++) {
        const metrics_series *ms = m->series[i];
        if (!ms->has_memory) continue;
        model_labels(ms, ml, sizeof(ml));
        text_put(&t, "comrope_model_memory_bytes{%s,kind=\"weights\"} %zu\n", ml, ms->weight_bytes);
        text_put(&t, "comrope_model_memory_bytes{%s,kind=\"workspace\"} %zu\n", ml, ms->workspace_bytes);
    }
    if (m->memory_limit)
        text_put(&t,
                 "# HELP comrope_memory_limit_bytes Memory the model versions' weights and workspaces "
                 "together must fit in (a load that would pass it is refused): physical memory, or the "
                 "cgroup's memory.max where less.\n# TYPE comrope_memory_limit_bytes gauge\n"
                 "comrope_memory_limit_bytes %zu\n",
                 m->memory_limit);
    if (m->isa) {
        text_put(&t, "# HELP comrope_engine_info The engine's CPU kernels (instruction-set level) and "
                     "GEMM precision.\n# TYPE comrope_engine_info gauge\ncomrope_engine_info{isa=\"");
        put_label_value(&t, m->isa);
        text_put(&t, "\",precision=\"");
        put_label_value(&t, m->precision);
        text_put(&t, "\",precision_requested=\"");
        put_label_value(&t, m->precision_requested);
        text_put(&t, "\",bf16_pays=\"%d\"} 1\n", m->bf16_pays);
    }
    double start_time = m->start_time;
    pthread_mutex_unlock(&m->lock);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    text_put(&t,
             "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
             "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.6f\n",
             cpu);
    text_put(&t,
             "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
             "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %lld\n",
             resident_bytes());
    text_put(&t,
             "# HELP process_open_fds Number of open file descriptors.\n"
             "# TYPE process_open_fds gauge\nprocess_open_fds %d\n",
             count_open_fds());
    text_put(&t,
             "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
             "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.3f\n",
             start_time);
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    *len = t.len;
    return t.data;
}
