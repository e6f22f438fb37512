/* repository.h: the models a comrope-serve daemon serves, and their life.
 *
 * Owns: scanning the model repository (Triton's layout:
 * DIR/<name>/<version>/ holding config.json, model.safetensors and the
 * optional preprocessor_config.json; a flat DIR/<name>/ is version 1;
 * --model DIR is a repository of one entry, the same code path), the
 * version policy (latest:N, specific:a,b, all), each model's optional
 * settings file (DIR/<name>/serve.conf, per-model keys only, over the
 * global settings), the registry of served versions (each with its own
 * vit_model, batcher and workers, and so its own engine contexts), the
 * reference counts that keep a version alive while requests use it, the
 * control thread that does every load and unload (never an HTTP thread),
 * the index Triton's POST /v2/repository/index answers, and the
 * comrope_model_state / comrope_model_load_failures_total series.
 *
 * Life of a version: LOADING (files read on the control thread; an older
 * copy of the same version keeps serving) -> READY (swapped in under the
 * lock: the next request takes the new one) -> UNLOADING (gone from the
 * registry, no new request finds it; its in-flight requests finish on it)
 * -> freed when its last reference is released. A load that fails leaves
 * whatever served before serving, and records why (log, index reason,
 * metric). */
#ifndef COMROPE_REPOSITORY_H
#define COMROPE_REPOSITORY_H

#include <stddef.h>

#include "batcher.h"
#include "config.h"
#include "metrics.h"
#include "proto.h"
#include "vit.h"

enum { MODEL_LOADING = 0, MODEL_READY, MODEL_UNLOADING, MODEL_UNAVAILABLE, MODEL_STATE_COUNT };
const char *model_state_name(int state);

/* One loaded version of one model: what a request is routed to. Read-only
 * for its users once READY; freed by the control thread only when no
 * request holds it. */
typedef struct served_model {
    char name[256];
    int version;
    char version_text[16];
    char dir[CONFIG_PATH_MAX];
    server_config cfg; /* the global settings with the model's serve.conf over them */
    vit_model *model;
    proto_model pm;
    batcher *batcher;
    metrics_series *series; /* its requests' and batches' metrics */
    char isa[16];
    size_t weight_bytes, workspace_bytes; /* memory it holds (vit_model_bytes, batcher_workspace_bytes) */
    /* the repository's, under its lock */
    int refs;
    int retired;                  /* out of the registry: freed at refs 0 */
    int kept;                     /* serving though its policy drops it: what it selects failed to load */
    unsigned long long signature; /* of its files: a rescan reloads it when they change */
    struct served_model *next;    /* the retired list */
} served_model;

typedef struct repository repository;

typedef struct {
    const server_config *cfg;        /* global settings (outlive the repository) */
    int cpu_limit;                   /* for the derived thread counts */
    unsigned long long memory_limit; /* the cgroup's memory.max (0: none): no workspace may be larger */
    metrics *mx;                     /* where each version's series are made */
    const char *build_version;
} repository_params;

/* Why `name` cannot name a served model (not UTF-8, a control character,
 * a '/', "." or "..", empty: it must fit in JSON, a Prometheus label and
 * one path segment of its routes; "stats", a route of its own; a ',',
 * which load-model's list splits), or NULL. Directories so named are left
 * out of a scan (logged; in the index with why where JSON can carry the
 * name); a --model daemon's model-name so named stops the start; the
 * load API refuses it (400). */
const char *repository_name_problem(const char *name);

/* Checks what the settings cannot know alone (the repository is a
 * directory, a --model daemon's name can be served); the settings' own
 * syntax, version-policy's included, config_set checked. Nothing is loaded
 * yet. Returns NULL with a message. */
repository *repository_new(const repository_params *p, char *err, size_t errlen);

/* The start-up load, on the calling thread (main: never an HTTP one):
 * none and poll load every model of the repository, explicit those of
 * load-model. Then starts the control thread. Returns 0, or (the message
 * in err; the daemon exits then) -1 when `--model` was given and that
 * model failed to load; -2 when load-model names a model the repository
 * does not have, or `--model`'s batch limits ask for a workspace larger
 * than the memory there is (a setting's error: main exits 2); -3 when the OS refused
 * a thread: the control thread, or a worker of `--model` (RLIMIT_NPROC,
 * pids.max), or memory to the load of `--model` (RLIMIT_AS, the cgroup's
 * memory.max, overcommit): waiting may cure it, as for the HTTP threads:
 * main exits 3. */
int repository_start(repository *r, char *err, size_t errlen);

/* Ready (overall): the start-up load is done and every model in the
 * registry has a ready version. */
int repository_ready(repository *r);

/* The version of `name` (len bytes) a request gets: `version` "" = the
 * highest ready one. Takes a reference (repository_release). NULL with
 * *status 404 (unknown model or version) or 503 (not ready) and a message
 * naming it. name NULL: the default model (--model-name, else the first
 * by name), for /v1 and the server's metadata. */
served_model *repository_acquire(repository *r, const char *name, size_t len, const char *version,
                                 int *status, char *err, size_t errlen);
void repository_release(repository *r, served_model *m);
/* Every ready version of the model `m` belongs to (m NULL: of every
 * model), by model name, highest version first, each with a reference
 * taken: *out is a malloc'd array of the count returned (free it after
 * releasing each). -1 when out of memory. For Triton's statistics routes,
 * which answer all versions unless one is named. */
int repository_acquire_all(repository *r, const served_model *m, served_model ***out);
/* One more reference on a version already held (a thread that goes on
 * using it after handing the request on). */
void repository_retain(repository *r, served_model *m);

/* GET /v2/models/<m>[/versions/<v>] for the version m (held): its
 * metadata, `versions` every ready version of the model, highest first
 * (at most 64). malloc'd JSON, NULL when out of memory. */
char *repository_model_json(repository *r, const served_model *m);

/* GET /v1/models: `first` (held: the default model, what /v1/classify
 * serves and the console shows; NULL when it is not ready), then every
 * other model with a ready version, by name, as its highest ready version
 * describes it (malloc'd JSON, NULL when out of memory). */
char *repository_v1_models_json(repository *r, const served_model *first);

/* SIGHUP: rescan at once (async); a load that failed is tried again on
 * the same files (a poll's rescan leaves it until they change). */
void repository_rescan(repository *r);

/* POST /v2/repository/models/<m>/load or /unload. Returns 0 when queued:
 * `done(arg, status, message)` is then called once, on the control
 * thread, when the load or unload is over (200, or 4xx/5xx naming the
 * model), or with 503 when the repository stops first. Else the HTTP
 * status with a message (400: not allowed in this control mode). */
typedef void (*repository_done_fn)(void *arg, int status, const char *message);
int repository_control(repository *r, const char *name, size_t len, int load, repository_done_fn done,
                       void *arg, char *err, size_t errlen);

/* Triton's index: [{"name","version","state","reason"}...] (malloc'd JSON). */
char *repository_index_json(repository *r);

/* Sums of every served version's batcher, for /metrics. */
void repository_gauges(repository *r, int *queue_depth, int *in_flight, int *arriving);

/* comrope_model_state and comrope_model_load_failures_total, appended to
 * the exposition text (malloc'd, *len). NULL when out of memory. */
char *repository_metrics(repository *r, size_t *len);

/* Waits up to timeout_s from now for every served batcher to drain (a
 * model load under way is waited for first, the batchers working on
 * meanwhile; past the bound if it lasts longer). Returns the jobs left
 * queued. */
int repository_drain(repository *r, int timeout_s);

/* Stops the control thread (pending load/unload requests answered 503)
 * and every batcher (leftovers 503). The repository stays valid for
 * requests still on connections until repository_free. */
void repository_stop(repository *r);

/* Frees everything; every reference must have been released. */
void repository_free(repository *r);

#endif
