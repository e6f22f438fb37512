/* main.c: comrope-serve, batched image classification over HTTP.
 *
 *   comrope-serve [--model DIR] [--port 8080] [--key value]... [--print-config]
 *   comrope-serve --health-probe [--key value]...   (probe.h; exit 0 if ready)
 *
 * Start-up order: config (refused with the key named), model (a bad model
 * exits 1 with the loader's message), thread counts, batcher, HTTP. Then
 * the main thread waits for SIGTERM/SIGINT and drains:
 *   readiness 503 and the listening socket closed -> queued and running
 *   work finishes within drain-timeout-s -> leftovers answered 503 ->
 *   every suspended connection resumed and answered -> daemons stopped ->
 *   exit 0. Under systemd (Type=notify) each step is a STATUS line, READY=1
 * follows the listening socket and STOPPING=1 opens the drain (notify.h).
 * Exit status: 0 stopped after a drain, 1 a bad model or start-up error,
 * 2 a bad setting, 3 cannot listen (the port is taken, the address is not
 * local): the only start-up failure that waiting may cure, so the systemd
 * unit restarts on 3 and not on 1 or 2. */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batcher.h"
#include "config.h"
#include "gemm.h"
#include "http.h"
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

/* OpenBLAS's own control of its thread pool (not in cblas.h's standard part). */

/* Reads the api-key file: one token per line, blank lines and # comments
 * ignored. Returns a NULL-terminated array, or NULL with a message. */
static char **load_api_keys(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    char **keys = NULL, line[1024];
    int n = 0;
    if (!f) {
        snprintf(err, errlen, "api-key-file: cannot open %.400s: %s", path, strerror(errno));
        return NULL;
    }
    keys = calloc(1, sizeof(char *));
    while (keys && fgets(line, sizeof(line), f)) {
        char *p = line, *end;
        while (*p == ' ' || *p == '\t') p++;
        end = p + strlen(p);
        while (end > p && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t')) *--end = '\0';
        if (*p == '\0' || *p == '#') continue;
        char **grown = realloc(keys, sizeof(char *) * (size_t)(n + 2));
        if (!grown) break;
        keys = grown;
        keys[n++] = strdup(p);
        keys[n] = NULL;
    }
    fclose(f);
    if (keys && n == 0) {
        snprintf(err, errlen, "api-key-file: %.400s holds no token", path);
        free(keys);
        return NULL;
    }
    return keys;
}

static void free_api_keys(char **keys) {
    for (int i = 0; keys && keys[i]; i++) free(keys[i]);
    free(keys);
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
        fprintf(stderr, "comrope-serve: %s\n", err);
        return 2;
    }
    if (action == CONFIG_HELP) {
        config_usage(stdout);
        return 0;
    }
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
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Decoded images and batch buffers are a few MB each. glibc would hand
     * blocks that large back to the kernel on free (mmap/trim), and every
     * request would pay first-touch faults again (about 12 us per 4 KiB page
     * here); keeping them in the heap makes steady state fault-free. */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);

    if (!cfg.model[0]) {
        if (model_path_default(dir, sizeof(dir), err, sizeof(err))) {
            fprintf(stderr, "comrope-serve: %s\n", err);
            return 1;
        }
        snprintf(cfg.model, sizeof(cfg.model), "%s", dir);
    }
    notify_status("loading model %s", cfg.model);
    vit_options vopt = vit_default_options();
    vopt.precision = cfg.precision == 1 ? GEMM_BF16 : GEMM_FP32;
    if (vit_load(cfg.model, &vopt, &model, err, sizeof(err))) {
        fprintf(stderr, "comrope-serve: %s\n", err);
        return 1;
    }
    /* thread counts left to derive depend on how heavy the model is */
    config_derive_threads(&cfg, cpu_limit, vit_gflop(model, model->cfg.image_size, model->cfg.image_size));
    if (!cfg.model_name[0]) base_name(cfg.model, cfg.model_name, sizeof(cfg.model_name));
    if (cfg.api_key_file[0] && !(keys = load_api_keys(cfg.api_key_file, err, sizeof(err)))) {
        fprintf(stderr, "comrope-serve: %s\n", err);
        goto cleanup;
    }

    /* The engine's pool owns the cores (it also keeps OpenBLAS at one thread). */
    gemm_set_threads(cfg.gemm_threads);

    const char *pe = pe_type_name(model->cfg.custom_pe_type);
    mx = metrics_new(cfg.model_name, pe, model->cfg.image_size, COMROPE_VERSION);
    if (!mx) {
        fprintf(stderr, "comrope-serve: out of memory\n");
        goto cleanup;
    }
    batcher_params bp = {cfg.workers, cfg.max_batch_size, cfg.max_batch_tokens, cfg.max_queue_delay_us,
                         cfg.max_queue_size, {cfg.max_image_side, cfg.max_image_side, cfg.max_image_pixels}};
    b = batcher_new(model, mx, bp, err, sizeof(err));
    if (!b) {
        fprintf(stderr, "comrope-serve: %s\n", err);
        goto cleanup;
    }
    http_params hp = {&cfg, model,
                      {cfg.model_name, pe, model->cfg.num_channels, model->cfg.num_class,
                       model->cfg.image_size, model->cfg.patch_size, model->max_tokens,
                       model->cfg.labels, COMROPE_VERSION},
                      b, mx, keys};
    http = http_start(&hp, err, sizeof(err));
    if (!http) {
        fprintf(stderr, "comrope-serve: %s\n", err);
        notify_status("%s", err);
        rc = EXIT_CANNOT_LISTEN;
        goto cleanup;
    }
    fprintf(stderr, "comrope-serve: model %s (%s, %s, %dx%d, %d classes) from %s\n", cfg.model_name,
            pe, gemm_kernel_name(), model->cfg.image_size, model->cfg.image_size, model->cfg.num_class,
            cfg.model);
    fprintf(stderr, "comrope-serve: %d workers x %d gemm threads, %d http threads, batch %d images / %d tokens, "
            "delay %d us, queue %d\n", cfg.workers, cfg.gemm_threads, cfg.http_threads, cfg.max_batch_size,
            cfg.max_batch_tokens, cfg.max_queue_delay_us, cfg.max_queue_size);
    if (cfg.metrics_port)
        fprintf(stderr, "comrope-serve: metrics on %s:%d\n", cfg.host, http_metrics_port(http));
    fprintf(stderr, "comrope-serve: listening on %s:%d\n", cfg.host, http_port(http));
    notify_ready("serving %s on %s:%d (%d workers)", cfg.model_name, cfg.host, http_port(http), cfg.workers);

    int sig = 0;
    while (sigwait(&signals, &sig) != 0) {}
    fprintf(stderr, "comrope-serve: %s: draining (up to %d s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
            cfg.drain_timeout_s);
    notify_stopping("%s: draining (up to %d s)", sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.drain_timeout_s);
    http_begin_drain(http);
    int left = batcher_drain(b, cfg.drain_timeout_s);
    /* Answers what is left with 503, resuming their connections. The
     * batcher stays allocated until the HTTP daemons are stopped: a request
     * still on a connection may call it (and is refused with 503). */
    batcher_stop(b);
    if (left) fprintf(stderr, "comrope-serve: %d queued requests answered 503\n", left);
    notify_status("drained%s; flushing the last answers", left ? " (leftovers answered 503)" : "");
    http_wait_idle(http, 5000); /* let resumed connections write their answers */
    rc = 0;

cleanup:
    http_stop(http);
    batcher_free(b);
    metrics_free(mx);
    free_api_keys(keys);
    vit_free(model);
    if (rc == 0) fprintf(stderr, "comrope-serve: stopped\n");
    return rc;
}
