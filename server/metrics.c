/* metrics.c: counters, histograms and their text exposition. */
#include "metrics.h"

#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

static const char *endpoint_names[ENDPOINT_COUNT] = {
    "v1_classify", "v1_models", "v2_infer", "v2_model", "v2_server", "health", "metrics", "console", "other"};

const char *metrics_endpoint_name(int endpoint) {
    return endpoint >= 0 && endpoint < ENDPOINT_COUNT ? endpoint_names[endpoint] : "other";
}

#define MAX_BUCKETS 16

static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25, 0.5, 1, 2.5, 5, 10, 30};
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

/* Failure reasons, from the status code. */
static const char *failure_reason(int status) {
    switch (status) {
    case 400: return "bad_request";
    case 401: return "unauthorized";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 408: return "request_timeout";
    case 413: return "too_large";
    case 415: return "unsupported_media_type";
    case 499: return "client_closed"; /* nginx's code: the client left before its answer */
    case 503: return "unavailable";
    case 504: return "deadline_exceeded";
    default: return status >= 500 ? "internal" : "other";
    }
}

#define MAX_STATUS 600

struct metrics {
    pthread_mutex_t lock;
    char *model, *pe_type, *version;
    char *isa;                 /* the engine's kernels, or NULL until set */
    char *precision;           /* with isa: "fp32" or "bf16" */
    char *precision_requested; /* with isa: "fp32", "bf16" or "auto" */
    int bf16_pays;
    int training_resolution;
    double start_time;
    uint64_t requests[ENDPOINT_COUNT][MAX_STATUS];
    /* by endpoint: a health probe or a scrape is no inference latency */
    histogram request_seconds[ENDPOINT_COUNT];
    /* Triton's statistics (metrics_model_stats) */
    uint64_t infer_ok, infer_ok_ns, infer_fail, infer_fail_ns, last_inference_ms;
    uint64_t batch_size_count[METRICS_MAX_BATCH_SIZE + 1], batch_size_ns[METRICS_MAX_BATCH_SIZE + 1];
    histogram queue_seconds, compute_seconds, batch_images, batch_tokens;
    uint64_t batches, mixed_batches;
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

metrics *metrics_new(const char *model, const char *pe_type, int training_resolution,
                     const char *version) {
    metrics *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    pthread_mutex_init(&m->lock, NULL);
    m->model = strdup(model);
    m->pe_type = strdup(pe_type);
    m->version = strdup(version);
    m->training_resolution = training_resolution;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    m->start_time = (double)tv.tv_sec + tv.tv_usec / 1e6;
#define N(a) (int)(sizeof(a) / sizeof(a[0]))
    for (int e = 0; e < ENDPOINT_COUNT; e++) histogram_init(&m->request_seconds[e], latency_bounds, N(latency_bounds));
    histogram_init(&m->queue_seconds, latency_bounds, N(latency_bounds));
    histogram_init(&m->compute_seconds, latency_bounds, N(latency_bounds));
    histogram_init(&m->batch_images, images_bounds, N(images_bounds));
    histogram_init(&m->batch_tokens, tokens_bounds, N(tokens_bounds));
#undef N
    if (!m->model || !m->pe_type || !m->version) {
        metrics_free(m);
        return NULL;
    }
    return m;
}

void metrics_free(metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->lock);
    free(m->model);
    free(m->pe_type);
    free(m->version);
    free(m->isa);
    free(m->precision);
    free(m->precision_requested);
    free(m);
}

int metrics_set_model(metrics *m, const char *model, const char *pe_type, int training_resolution) {
    char *name = strdup(model), *pe = strdup(pe_type);
    if (!name || !pe) {
        free(name);
        free(pe);
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    free(m->model);
    free(m->pe_type);
    m->model = name;
    m->pe_type = pe;
    m->training_resolution = training_resolution;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

int metrics_set_engine(metrics *m, const char *isa, const char *precision,
                       const char *precision_requested, int bf16_pays) {
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

void metrics_request(metrics *m, int endpoint, int status, double seconds) {
    if (endpoint < 0 || endpoint >= ENDPOINT_COUNT) endpoint = ENDPOINT_OTHER;
    if (status < 100 || status >= MAX_STATUS) status = 500;
    pthread_mutex_lock(&m->lock);
    m->requests[endpoint][status]++;
    histogram_observe(&m->request_seconds[endpoint], seconds);
    if (endpoint == ENDPOINT_V1_CLASSIFY || endpoint == ENDPOINT_V2_INFER) {
        uint64_t ns = (uint64_t)(seconds * 1e9);
        if (status == 200) {
            m->infer_ok++;
            m->infer_ok_ns += ns;
        } else if (status != 404) { /* a 404 named another model or version: not this one's */
            m->infer_fail++;
            m->infer_fail_ns += ns;
        }
    }
    pthread_mutex_unlock(&m->lock);
}

void metrics_set_connections(metrics *m, const metrics_connections *c) {
    pthread_mutex_lock(&m->lock);
    m->connections = *c;
    pthread_mutex_unlock(&m->lock);
}

void metrics_queue_wait(metrics *m, double seconds) {
    pthread_mutex_lock(&m->lock);
    histogram_observe(&m->queue_seconds, seconds);
    pthread_mutex_unlock(&m->lock);
}

void metrics_batch(metrics *m, int images, const int *token_counts, int resolutions,
                   double compute_seconds) {
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
    int size = images < METRICS_MAX_BATCH_SIZE ? images : METRICS_MAX_BATCH_SIZE;
    m->batch_size_count[size]++;
    m->batch_size_ns[size] += (uint64_t)(compute_seconds * 1e9);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    m->last_inference_ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    histogram_observe(&m->batch_images, images);
    histogram_observe(&m->batch_tokens, tokens);
    histogram_observe(&m->compute_seconds, compute_seconds);
    pthread_mutex_unlock(&m->lock);
}

/* A growing text buffer for the exposition. */
typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} text;

static void put(text *t, const char *fmt, ...) {
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->data + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if (t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap + (size_t)n) * 2;
        char *grown = realloc(t->data, cap);
        if (!grown) {
            t->failed = 1;
            return;
        }
        t->data = grown;
        t->cap = cap;
    }
}

/* One histogram's series; labels: `k="v",...` (escaped), or "". The
 * HELP and TYPE lines are the caller's (once per name). */
static void put_histogram_series(text *t, const char *name, const char *labels, const histogram *h) {
    const char *sep = labels[0] ? "," : "";
    uint64_t cumulative = 0;
    for (int i = 0; i < h->num_bounds; i++) {
        cumulative += h->counts[i];
        put(t, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i],
            (unsigned long long)cumulative);
    }
    put(t, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)h->count);
    if (labels[0])
        put(t, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", name, labels, h->sum, name, labels,
            (unsigned long long)h->count);
    else
        put(t, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->count);
}

static void put_histogram(text *t, const char *name, const char *help, const char *labels,
                          const histogram *h) {
    put(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    put_histogram_series(t, name, labels, h);
}

/* Label values are our own names, but escape anyway: a model name comes
 * from the command line. */
static void put_label_value(text *t, const char *s) {
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') put(t, "\\%c", *s);
        else if (*s == '\n') put(t, "\\n");
        else put(t, "%c", *s);
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

/* Whether an endpoint's requests are of the served model (they carry the
 * model and version labels). */
static int endpoint_has_model(int e) {
    return e == ENDPOINT_V1_CLASSIFY || e == ENDPOINT_V2_INFER || e == ENDPOINT_V2_MODEL;
}

/* `model="<name>",version="<model version>"`, the name escaped. */
static void model_labels(const char *model, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "model=\"");
    for (const char *s = model; *s && n + 8 < cap; s++) {
        if (*s == '\\' || *s == '"') out[n++] = '\\';
        if (*s == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else out[n++] = *s;
    }
    snprintf(out + n, cap - n, "\",version=\"%s\"", METRICS_MODEL_VERSION);
}

void metrics_model_stats(metrics *m, metrics_stats *st) {
    memset(st, 0, sizeof(*st));
    pthread_mutex_lock(&m->lock);
    st->last_inference_ms = m->last_inference_ms;
    st->inference_count = (uint64_t)m->batch_images.sum;
    st->execution_count = m->batches;
    st->success_count = m->infer_ok;
    st->success_ns = m->infer_ok_ns;
    st->fail_count = m->infer_fail;
    st->fail_ns = m->infer_fail_ns;
    st->queue_count = m->queue_seconds.count;
    st->queue_ns = (uint64_t)(m->queue_seconds.sum * 1e9);
    st->compute_count = m->compute_seconds.count;
    st->compute_ns = (uint64_t)(m->compute_seconds.sum * 1e9);
    for (int i = 1; i <= METRICS_MAX_BATCH_SIZE && st->num_batch_sizes < METRICS_MAX_BATCH_SIZE; i++)
        if (m->batch_size_count[i]) {
            st->batch_size[st->num_batch_sizes] = i;
            st->batch_count[st->num_batch_sizes] = m->batch_size_count[i];
            st->batch_ns[st->num_batch_sizes++] = m->batch_size_ns[i];
        }
    pthread_mutex_unlock(&m->lock);
}

char *metrics_render(metrics *m, const metrics_gauges *g, size_t *len) {
    text t = {0};
    char ml[600], labels[700];
    t.cap = 16384;
    t.data = malloc(t.cap);
    if (!t.data) return NULL;
    pthread_mutex_lock(&m->lock);
    model_labels(m->model, ml, sizeof(ml)); /* under the lock: metrics_set_model */

    put(&t, "# HELP comrope_requests_total HTTP requests answered, by endpoint and status code.\n"
            "# TYPE comrope_requests_total counter\n");
    for (int e = 0; e < ENDPOINT_COUNT; e++)
        for (int s = 0; s < MAX_STATUS; s++)
            if (m->requests[e][s])
                put(&t, "comrope_requests_total{endpoint=\"%s\",code=\"%d\"%s%s} %llu\n", endpoint_names[e],
                    s, endpoint_has_model(e) ? "," : "", endpoint_has_model(e) ? ml : "",
                    (unsigned long long)m->requests[e][s]);

    /* Failures summed over endpoints, by reason; every reason is listed so
     * that rate() works from the first scrape. */
    static const int failure_codes[] = {400, 401, 404, 405, 408, 413, 415, 499, 500, 503, 504};
    put(&t, "# HELP comrope_request_failures_total Requests answered with an error, by reason.\n"
            "# TYPE comrope_request_failures_total counter\n");
    for (size_t i = 0; i < sizeof(failure_codes) / sizeof(failure_codes[0]); i++) {
        unsigned long long n = 0;
        for (int e = 0; e < ENDPOINT_COUNT; e++)
            for (int s = 400; s < MAX_STATUS; s++)
                if (strcmp(failure_reason(s), failure_reason(failure_codes[i])) == 0) n += m->requests[e][s];
        put(&t, "comrope_request_failures_total{reason=\"%s\"} %llu\n", failure_reason(failure_codes[i]), n);
    }

    put(&t, "# HELP comrope_request_duration_seconds End-to-end request latency, from the first byte of "
            "headers to the response, by endpoint.\n# TYPE comrope_request_duration_seconds histogram\n");
    for (int e = 0; e < ENDPOINT_COUNT; e++) {
        snprintf(labels, sizeof(labels), "endpoint=\"%s\"%s%s", endpoint_names[e], endpoint_has_model(e) ? "," : "",
                 endpoint_has_model(e) ? ml : "");
        put_histogram_series(&t, "comrope_request_duration_seconds", labels, &m->request_seconds[e]);
    }
    put_histogram(&t, "comrope_queue_wait_seconds", "Time a request waited for a worker.", ml,
                  &m->queue_seconds);
    put_histogram(&t, "comrope_batch_compute_seconds", "Decode and forward time of an executed batch.", ml,
                  &m->compute_seconds);
    put_histogram(&t, "comrope_batch_images", "Images per executed batch.", ml, &m->batch_images);
    put_histogram(&t, "comrope_batch_tokens", "Tokens per executed batch (all images together).", ml,
                  &m->batch_tokens);
    put(&t, "# HELP comrope_batches_total Executed batches.\n# TYPE comrope_batches_total counter\n"
            "comrope_batches_total %llu\n", (unsigned long long)m->batches);
    put(&t, "# HELP comrope_batches_mixed_resolution_total Executed batches holding images of more than "
            "one resolution.\n# TYPE comrope_batches_mixed_resolution_total counter\n"
            "comrope_batches_mixed_resolution_total %llu\n", (unsigned long long)m->mixed_batches);

    put(&t, "# HELP comrope_images_total Images classified, by their token count (bucketed resolution).\n"
            "# TYPE comrope_images_total counter\n");
    for (int b = 0; b < TOKEN_BUCKETS; b++) {
        if (b < TOKEN_BUCKETS - 1)
            put(&t, "comrope_images_total{tokens=\"le_%d\"} %llu\n", token_buckets[b],
                (unsigned long long)m->images_by_tokens[b]);
        else
            put(&t, "comrope_images_total{tokens=\"gt_%d\"} %llu\n", token_buckets[b - 1],
                (unsigned long long)m->images_by_tokens[b]);
    }

    put(&t, "# HELP comrope_queue_depth Requests waiting for a worker.\n# TYPE comrope_queue_depth gauge\n"
            "comrope_queue_depth %d\n", g->queue_depth);
    put(&t, "# HELP comrope_in_flight_requests Requests queued or being computed.\n"
            "# TYPE comrope_in_flight_requests gauge\ncomrope_in_flight_requests %d\n", g->in_flight);
    put(&t, "# HELP comrope_receiving_requests Inference requests whose body is being received or parsed.\n"
            "# TYPE comrope_receiving_requests gauge\ncomrope_receiving_requests %d\n", g->receiving);
    put(&t, "# HELP comrope_open_connections Open HTTP connections (main port).\n"
            "# TYPE comrope_open_connections gauge\ncomrope_open_connections %d\n", m->connections.open);
    put(&t, "# HELP comrope_connections_refused_total Connections closed at accept, by the cap reached.\n"
            "# TYPE comrope_connections_refused_total counter\n"
            "comrope_connections_refused_total{reason=\"max_connections\"} %llu\n"
            "comrope_connections_refused_total{reason=\"max_connections_per_client\"} %llu\n",
        m->connections.refused_limit, m->connections.refused_client);
    put(&t, "# HELP comrope_receive_timeouts_total Connections cut at receive-timeout-s: idle (no request "
            "line yet) or in a request whose headers or body had not all arrived.\n"
            "# TYPE comrope_receive_timeouts_total counter\n"
            "comrope_receive_timeouts_total{phase=\"idle\"} %llu\n"
            "comrope_receive_timeouts_total{phase=\"request\"} %llu\n",
        m->connections.timeouts_idle, m->connections.timeouts_request);
    put(&t, "# HELP comrope_ready Whether the server accepts inference requests.\n"
            "# TYPE comrope_ready gauge\ncomrope_ready %d\n", g->ready);
    put(&t, "# HELP comrope_model_info The served model.\n# TYPE comrope_model_info gauge\n"
            "comrope_model_info{model=\"");
    put_label_value(&t, m->model);
    put(&t, "\",pe_type=\"");
    put_label_value(&t, m->pe_type);
    put(&t, "\",training_resolution=\"%d\",version=\"", m->training_resolution);
    put_label_value(&t, m->version);
    put(&t, "\"} 1\n");
    if (m->isa) {
        put(&t, "# HELP comrope_engine_info The engine's CPU kernels (instruction-set level) and "
                "GEMM precision.\n# TYPE comrope_engine_info gauge\ncomrope_engine_info{isa=\"");
        put_label_value(&t, m->isa);
        put(&t, "\",precision=\"");
        put_label_value(&t, m->precision);
        put(&t, "\",precision_requested=\"");
        put_label_value(&t, m->precision_requested);
        put(&t, "\",bf16_pays=\"%d\"} 1\n", m->bf16_pays);
    }
    double start_time = m->start_time;
    pthread_mutex_unlock(&m->lock);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    put(&t, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.6f\n", cpu);
    put(&t, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %lld\n",
        resident_bytes());
    put(&t, "# HELP process_open_fds Number of open file descriptors.\n"
            "# TYPE process_open_fds gauge\nprocess_open_fds %d\n", count_open_fds());
    put(&t, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.3f\n", start_time);
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    *len = t.len;
    return t.data;
}
