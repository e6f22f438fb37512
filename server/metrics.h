/* metrics.h: the daemon's counters and histograms, and their Prometheus
 * text exposition (validated by `promtool check metrics`).
 *
 * Owns: requests by endpoint and status code, failures by reason,
 * histograms of end-to-end latency, queue wait, compute, images and tokens
 * per executed batch, executed batches (and those that mixed resolutions),
 * images by token-count bucket (the
 * bounded stand-in for "resolution" as a label), the model info gauge, and
 * process metrics read from /proc at scrape time. The series of a model's
 * requests and batches are kept per served (model, version): a
 * metrics_series, made when a version is loaded and freed when it is no
 * longer served (its series leave the exposition, as Triton drops an
 * unloaded model's metrics; what its failures counted stays in the
 * unlabeled comrope_request_failures_total). One mutex guards it all: updates are a few additions, far below
 * the cost of a request. */
#ifndef COMROPE_METRICS_H
#define COMROPE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

enum {
    ENDPOINT_V1_CLASSIFY = 0,
    ENDPOINT_V1_MODELS,
    ENDPOINT_V2_INFER,
    ENDPOINT_V2_MODEL,
    ENDPOINT_V2_SERVER,
    ENDPOINT_HEALTH,
    ENDPOINT_METRICS,
    ENDPOINT_CONSOLE,
    ENDPOINT_OTHER,
    ENDPOINT_COUNT
};

const char *metrics_endpoint_name(int endpoint);

typedef struct metrics metrics;
/* One (model, version)'s series. Owned by its metrics. */
typedef struct metrics_series metrics_series;

/* Returns NULL when out of memory. */
metrics *metrics_new(void);
void metrics_free(metrics *m);

/* The series of `model` version `version` (made at the first call, the same
 * ones while it is open): comrope_model_info{model,version,pe_type,
 * training_resolution} lists it until as many metrics_series_close. The
 * first call labels it with pe_type and training_resolution; a later one
 * (a reload opens the new copy before it closes the old one, so its
 * counters continue) leaves the labels to metrics_series_label, called
 * once the new copy serves: a reload that fails keeps the served copy's.
 * Returns NULL when out of memory. */
metrics_series *metrics_series_open(metrics *m, const char *model, const char *version, const char *pe_type,
                                    int training_resolution);
/* Labels s with what the copy now serving holds (after a reload installed
 * it). Cannot fail. */
void metrics_series_label(metrics_series *s, const char *pe_type, int training_resolution);
/* The memory the copy now serving holds (repository.c's load check counts
 * the same): its weights, and its workers' workspaces (vit_context_bytes:
 * the activation arenas and the most their rotation caches keep; pages
 * are touched as batches reach them). Exposed as
 * comrope_model_memory_bytes{model,version,kind} from this call on (a
 * version still loading has none), until the series is freed. Cannot
 * fail. */
void metrics_series_memory(metrics_series *s, size_t weight_bytes, size_t workspace_bytes);
/* The bound the loads check what versions hold against (physical memory
 * or the cgroup's memory.max, whichever is less: vit_memory_bound), as
 * comrope_memory_limit_bytes (absent while 0: unknown). */
void metrics_set_memory_limit(metrics *m, size_t bytes);
/* One copy of that version is no longer served. The last close frees the
 * series (s is then invalid): its caller must hold no request, batch or
 * statistics read that still uses s (repository.c closes it when the
 * version's last request was answered, after its batcher stopped). */
void metrics_series_close(metrics_series *s);
/* The engine's instruction-set level and GEMM precision (what it computes
 * in, what was asked: "fp32", "bf16", "auto"; whether bf16 pays on this
 * CPU), exposed as comrope_engine_info{isa,precision,precision_requested,
 * bf16_pays} (absent until set). Returns 0, or -1 when out of memory. */
int metrics_set_engine(metrics *m, const char *isa, const char *precision, const char *precision_requested,
                       int bf16_pays);

/* A finished HTTP request: counts it by endpoint and code, its failure
 * reason when status >= 400, and its latency; in the series of the model
 * version that served it (s; NULL: none, e.g. an unknown model). */
void metrics_request(metrics *m, metrics_series *s, int endpoint, int status, double seconds);
/* A request's wait between queueing and the start of its batch. */
void metrics_queue_wait(metrics_series *s, double seconds);
/* An executed batch; token_counts has one entry per image; resolutions is
 * the number of distinct (h, w) among its images (> 1: a mixed batch). */
void metrics_batch(metrics_series *s, int images, const int *token_counts, int resolutions,
                   double compute_seconds);

/* The gauges, read by the caller at scrape time. */
typedef struct {
    int queue_depth;                      /* jobs waiting for a worker */
    int in_flight;                        /* queued or being computed */
    int receiving;                        /* inference requests whose body is being received */
    int ready;                            /* 1 unless draining */
    unsigned long long log_lines_dropped; /* a counter, kept by log.c (log_lines_dropped) */
} metrics_gauges;

/* The main port's connections, counted by server/conn_guard.c and handed
 * over at scrape time, before metrics_render. */
typedef struct {
    int open;
    unsigned long long refused_limit, refused_client, timeouts_idle, timeouts_request;
} metrics_connections;
void metrics_set_connections(metrics *m, const metrics_connections *c);

/* Batch sizes counted one by one in the statistics: every size
 * max-batch-size allows (CONFIG_MAX_BATCH_SIZE, checked in repository.c;
 * at 256, batches of 300 and 4096 images were both listed as 256). */
#define METRICS_MAX_BATCH_SIZE 4096

/* What GET /v2/models/<m>[/versions/<v>]/stats reports (Triton's
 * statistics) of one model version: successful and failed inference
 * requests with their end-to-end time, queue waits, executed batches and
 * their compute time, by batch size. */
typedef struct {
    uint64_t last_inference_ms, inference_count, execution_count;
    uint64_t success_count, success_ns, fail_count, fail_ns;
    uint64_t queue_count, queue_ns, compute_count, compute_ns;
    uint64_t memory_bytes; /* weights and workspaces (metrics_series_memory); 0: not set */
    /* only the sizes that ran, ascending (malloc'd, NULL when none): a
     * version that ran a few sizes costs a few entries, not
     * METRICS_MAX_BATCH_SIZE; proto_stats points at them as they are */
    int num_batch_sizes;
    proto_batch_stat *batch_stats;
} metrics_stats;
/* Fills st (free with metrics_stats_free). Returns 0, or -1 when out of
 * memory (st then holds nothing to free). */
int metrics_model_stats(metrics_series *s, metrics_stats *st);
void metrics_stats_free(metrics_stats *st);

/* The exposition text (malloc'd; *len its length), or NULL when out of memory. */
char *metrics_render(metrics *m, const metrics_gauges *g, size_t *len);

#endif
