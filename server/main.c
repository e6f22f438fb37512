/* main.c: comrope-serve, batched image classification over HTTP.
 *
 *   comrope-serve [--model DIR] [--port 8080] [--key value]... [--print-config]
 *   comrope-serve --health-probe [--key value]...   (probe.h; exit 0 if ready)
 *
 * Start-up order: config (refused with the key named), the log's format,
 * the api-key file (unreadable or empty: exit 1, never "no auth"),
 * HTTP (listening at once: live 200, ready 503), model (a bad model exits
 * 1 with the loader's message), thread counts, batcher, then ready. Then
 * the main thread waits for SIGTERM/SIGINT and drains:
 *   readiness 503 and the listening socket closed -> queued and running
 *   work finishes within drain-timeout-s -> leftovers answered 503 ->
 *   every suspended connection resumed and answered -> daemons stopped ->
 *   exit 0; a second signal during the drain exits 1 at once. Under
 * systemd (Type=notify) each step is a STATUS line, READY=1 follows the
 * listening socket and STOPPING=1 opens the drain (notify.h).
 * Exit status: 0 stopped after a drain, 1 a bad model or start-up error
 * (or a second signal), 2 a bad setting, 3 cannot listen (the port is
 * taken, the address is not local): the only start-up failure that waiting
 * may cure, so the systemd unit restarts on 3 and not on 1 or 2. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_keys.h"
#include "batcher.h"
#include "config.h"
#include "cpu.h"
#include "gemm.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "model_path.h"
#include "notify.h"
#include "probe.h"
#include "proto.h"
#include "vit.h"

#ifndef COMROPE_VERSION
#define COMROPE_VERSION "dev"
#endif

extern char **environ;

/* http_start failed: the one start-up failure worth a retry (main's comment). */
#define EXIT_CANNOT_LISTEN 3

/* The drain runs on its own thread so that the main thread keeps waiting
 * for signals: a second SIGTERM/SIGINT means "now" (an operator's second
 * Ctrl-C, or a supervisor that will not wait). It must be the main thread
 * that waits: a thread some library started before the signals were
 * blocked (OpenBLAS starts its pool when loaded) would otherwise take the
 * signal and die of it, unlogged. The drain thread tells the main thread
 * it is done with SIGUSR1. */
typedef struct {
    http_server *http;
    batcher *b;
    int timeout_s;
    pthread_t main_thread;
    atomic_int done;
} drain_job;

static void *drain_main(void *arg) {
    drain_job *d = arg;
    http_begin_drain(d->http);
    int left = batcher_drain(d->b, d->timeout_s);
    /* Answers what is left with 503, resuming their connections. The
     * batcher stays allocated until the HTTP daemons are stopped: a request
     * still on a connection may call it (and is refused with 503). */
    batcher_stop(d->b);
    if (left) log_event("info", "%d queued requests answered 503", left);
    notify_status("drained%s; flushing the last answers", left ? " (leftovers answered 503)" : "");
    http_wait_idle(d->http, 5000); /* let resumed connections write their answers */
    atomic_store(&d->done, 1);
    pthread_kill(d->main_thread, SIGUSR1);
    return NULL;
}

/* The served name's default: the model directory's base name. */
static void base_name(const char *dir, char *out, size_t len) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t start = n;
    while (start > 0 && dir[start - 1] != '/') start--;
    snprintf(out, len, "%.*s", (int)(n - start), dir + start);
}

int main(int argc, char **argv) {
    server_config cfg;
    char err[1024], dir[CONFIG_PATH_MAX];
    int rc = 1;
    vit_model *model = NULL;
    metrics *mx = NULL;
    batcher *b = NULL;
    http_server *http = NULL;
    char **keys = NULL;

    if (probe_take_flag(&argc, argv)) {
        int pargc;
        char **pargv = probe_args(argc, argv, &pargc);
        if (!pargv) return 2;
        int loaded = config_load(&cfg, pargc, pargv, environ, err, sizeof(err));
        probe_free_args(pargv);
        if (loaded < 0) {
            fprintf(stderr, "comrope-serve --health-probe: %s\n", err);
            return 2;
        }
        int status = health_probe(&cfg, 2000, err, sizeof(err));
        fprintf(status ? stderr : stdout, "%s\n", err);
        return status;
    }

    int action = config_load(&cfg, argc, argv, environ, err, sizeof(err));
    if (action < 0) {
        log_event("error", "%s", err);
        return 2;
    }
    /* every line from here on in the chosen format (access-log json: JSON) */
    log_set_format(cfg.access_log == ACCESS_LOG_JSON ? LOG_JSON : LOG_TEXT);
    if (action == CONFIG_HELP) {
        config_usage(stdout);
        return 0;
    }
    char unknown[512];
    if (config_unknown_env(environ, unknown, sizeof(unknown)))
        log_event("warning", "environment variables that name no setting: %s", unknown);
    int cpu_limit = config_cpu_limit_cgroup("/sys/fs/cgroup", "/proc/self/cgroup");
    if (action == CONFIG_PRINT) { /* no model loaded: the rule for an unknown model */
        config_derive_threads(&cfg, cpu_limit, -1);
        config_print(&cfg, stdout);
        return 0;
    }

    /* Idle BLAS/OpenMP threads must sleep, not spin: workers share the CPU
     * quota with HTTP threads. Set before the libraries read them. */
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    setenv("GOMP_SPINCOUNT", "0", 0);

    /* Signals go to the main thread only (sigwait below): block them before
     * any thread starts so that every thread inherits the mask. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGUSR1); /* the drain thread's "done" */
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Decoded images and batch buffers are a few MB each. glibc would hand
     * blocks that large back to the kernel on free (mmap/trim), and every
     * request would pay first-touch faults again (about 12 us per 4 KiB page
     * here); keeping them in the heap makes steady state fault-free. */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);

    /* Before the model (seconds to load): a key file that cannot be read
     * stops the start at once, and never leaves the daemon open. */
    if (cfg.api_key_file[0] && !(keys = api_keys_load(cfg.api_key_file, err, sizeof(err)))) {
        log_event("error", "%s", err);
        return 1;
    }

    if (!cfg.model[0]) {
        if (model_path_default(dir, sizeof(dir), err, sizeof(err))) {
            log_event("error", "%s", err);
            goto cleanup;
        }
        snprintf(cfg.model, sizeof(cfg.model), "%s", dir);
    }
    if (!cfg.model_name[0]) base_name(cfg.model, cfg.model_name, sizeof(cfg.model_name));
    /* Listening before the model loads (seconds for a big one): liveness
     * 200 and readiness 503 meanwhile, so that an orchestrator tells a
     * loading daemon from a dead one. The HTTP threads do not depend on
     * the model (config_derive_threads); the rest is derived after it. */
    server_config early = cfg;
    config_derive_threads(&early, cpu_limit, -1);
    cfg.http_threads = early.http_threads;
    http_params hp = {&cfg, NULL, {0}, NULL, NULL, keys};
    http = http_start(&hp, err, sizeof(err));
    if (!http) {
        log_event("error", "%s", err);
        notify_status("%s", err);
        rc = EXIT_CANNOT_LISTEN;
        goto cleanup;
    }
    if (cfg.metrics_port)
        log_event("info", "metrics on %s:%d", cfg.host, http_metrics_port(http));
    /* "listening on HOST:PORT" ends its line: scripts read the port from it */
    log_event("info", "listening on %s:%d", cfg.host, http_port(http));
    log_event("info", "loading model %s", cfg.model);
    notify_status("loading model %s", cfg.model);
    vit_options vopt = vit_default_options();
    vopt.precision = cfg.precision == 1 ? GEMM_BF16 : GEMM_FP32;
    if (vit_load(cfg.model, &vopt, &model, err, sizeof(err))) {
        log_event("error", "%s", err);
        goto cleanup;
    }
    /* thread counts left to derive depend on how heavy the model is */
    config_derive_threads(&cfg, cpu_limit, vit_gflop(model, model->cfg.image_size, model->cfg.image_size));

    /* Each worker's context: its own pool of gemm-threads (the pools also
     * keep OpenBLAS at one thread), kernels of the chosen ISA, and a
     * workspace for one batch at the batch limits. */
    vit_context_params engine = vit_context_default_params();
    engine.threads = cfg.gemm_threads;
    for (int i = 0; i < config_num_options; i++)
        if (strcmp(config_options[i].name, "isa") == 0 &&
            cpu_isa_parse(config_options[i].choices[cfg.isa], &engine.isa) != 0) {
            log_event("error", "isa: unknown level");
            goto cleanup;
        }
    const char *isa = cpu_isa_name(engine.isa == CPU_ISA_BEST ? cpu_best_isa() : (cpu_isa)engine.isa);

    const char *pe = pe_type_name(model->cfg.custom_pe_type);
    mx = metrics_new(cfg.model_name, pe, model->cfg.image_size, COMROPE_VERSION);
    if (!mx) {
        log_event("error", "out of memory");
        goto cleanup;
    }
    if (metrics_set_isa(mx, isa)) {
        log_event("error", "out of memory");
        goto cleanup;
    }
    batcher_params bp = {cfg.workers, cfg.max_batch_size, cfg.max_batch_tokens, cfg.max_queue_delay_us,
                         cfg.max_queue_size, {cfg.max_image_side, cfg.max_image_side, cfg.max_image_pixels},
                         cfg.max_request_images, cfg.max_request_tokens, cfg.pixel_budget_bytes, engine,
                         cfg.max_queue_wait_ms};
    b = batcher_new(model, mx, bp, err, sizeof(err));
    if (!b) {
        log_event("error", "%s", err);
        goto cleanup;
    }
    proto_model pm = {cfg.model_name, pe, model->cfg.num_channels, model->cfg.num_class,
                      model->cfg.image_size, model->cfg.patch_size, model->max_tokens,
                      model->cfg.labels, COMROPE_VERSION, isa};
    http_set_model(http, model, &pm, b, mx);
    log_event("info", "model %s (%s, isa %s, %dx%d, %d classes) from %s", cfg.model_name,
            pe, isa, model->cfg.image_size, model->cfg.image_size, model->cfg.num_class,
            cfg.model);
    log_event("info", "%d workers x %d gemm threads, %d http threads, batch %d images / %d tokens, "
            "delay %d us, queue %d", cfg.workers, cfg.gemm_threads, cfg.http_threads, cfg.max_batch_size,
            cfg.max_batch_tokens, cfg.max_queue_delay_us, cfg.max_queue_size);
    log_event("info", "ready");
    notify_ready("serving %s on %s:%d (%d workers)", cfg.model_name, cfg.host, http_port(http), cfg.workers);

    int sig = 0;
    while (sigwait(&signals, &sig) != 0 || sig == SIGUSR1) {}
    log_event("info", "%s: draining (up to %d s)", sig == SIGINT ? "SIGINT" : "SIGTERM",
              cfg.drain_timeout_s);
    notify_stopping("%s: draining (up to %d s)", sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.drain_timeout_s);
    drain_job d = {http, b, cfg.drain_timeout_s, pthread_self(), 0};
    pthread_t drainer;
    int threaded = pthread_create(&drainer, NULL, drain_main, &d) == 0;
    if (!threaded) drain_main(&d); /* no second-signal stop then, but a drain */
    while (threaded) {
        while (sigwait(&signals, &sig) != 0) {}
        if (sig == SIGUSR1 && atomic_load(&d.done)) break;
        if (sig == SIGUSR1) continue; /* not ours */
        log_event("error", "second %s during the drain: stopping now, without answering what is left",
                  sig == SIGINT ? "SIGINT" : "SIGTERM");
        _exit(1);
    }
    if (threaded) pthread_join(drainer, NULL);
    rc = 0;

cleanup:
    http_stop(http);
    batcher_free(b);
    metrics_free(mx);
    api_keys_free(keys);
    vit_free(model);
    if (rc == 0) log_event("info", "stopped");
    return rc;
}
