/* main.c: comrope-serve, batched image classification over HTTP.
 *
 *   comrope-serve [--model DIR] [--port 8080] [--key value]... [--print-config]
 *   comrope-serve --health-probe [--key value]...   (probe.h; exit 0 if ready)
 *
 * Start-up order: config (refused with the key named), the log's format,
 * the signals blocked, the log's writer thread (log.h: from there on no
 * thread waits on stderr), the api-key file (unreadable or empty: exit 2,
 * never "no auth"), HTTP (listening at once: live 200, ready 503), the models (repository.h:
 * each with its thread counts and batcher; a bad --model exits 1 with the
 * loader's message, one refused memory 3; a bad model of a repository is
 * reported and skipped),
 * then ready. Then the main thread waits for signals: SIGHUP rescans the
 * models (the daemon serves on), SIGTERM/SIGINT drains:
 *   readiness 503 and the listening socket closed -> queued and running
 *   work finishes within drain-timeout-s -> leftovers answered 503 ->
 *   every suspended connection resumed and answered -> idle connections
 *   closed, a request begun on another answered -> daemons stopped ->
 *   the log written out (LOG_FLUSH_MS at most) -> exit 0; a second signal
 *   during the drain, 1 s or more after the first, exits 1 at once
 *   (REPEAT_SIGNAL_NS). Under
 * systemd (Type=notify) each step is a STATUS line, READY=1 follows the
 * listening socket and STOPPING=1 opens the drain (notify.h).
 * Exit status: 0 stopped after a drain, 1 a bad model or start-up error
 * (or a second signal), 2 a bad setting (batch limits whose workspace is
 * larger than the memory there is among them), 3 the HTTP side cannot start
 * (the port is taken, the address is not local) or the OS refused a
 * thread (HTTP, the model's workers, the model control thread: past
 * RLIMIT_NPROC or pids.max) or memory to --model's load (RLIMIT_AS, the
 * cgroup's memory.max), which other processes' exits free: the start-up
 * failures that waiting may cure, so the systemd unit restarts on 3 and
 * not on 1 or 2. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_keys.h"
#include "clock.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "model_path.h"
#include "notify.h"
#include "probe.h"
#include "proto.h"
#include "repository.h"

#ifndef COMROPE_VERSION
#define COMROPE_VERSION "dev"
#endif

extern char **environ;

/* The HTTP side cannot start, or the OS refused a thread or memory: the
 * start-up failures worth a retry (main's comment). */
#define EXIT_WAITING_MAY_CURE 3

/* How long an exit waits for the log's writer to write out its buffer
 * (log.h). A reader that reads takes the whole 1 MiB in milliseconds (a
 * pipe, journald, docker's log driver); one that has stopped would hold
 * the exit for ever (the writer blocks in write(2)), and the supervisor
 * would SIGKILL a daemon whose work was done. 2 s is hundreds of times what
 * a live reader takes for a full buffer, and well inside any stop timeout
 * (Kubernetes' grace period 30 s, systemd's TimeoutStopSec 90 s). After a
 * SIGTERM the wait also stays within what is left of drain-timeout-s, so
 * that the drain ends in its bound with stderr stalled; it is at least
 * LOG_FLUSH_MIN_MS, and that alone after a second signal ("now"). */
#define LOG_FLUSH_MS 2000
#define LOG_FLUSH_MIN_MS 100

/* A second SIGTERM/SIGINT means "now" only this long after the first.
 * Two at once are one request: timeout(1) signals the daemon and then its
 * own process group (the daemon in it), and `kill 0`, `kill -- -PGID` or
 * a supervisor that signals both the process and its group do the same,
 * microseconds apart; taken as "now", they skipped the drain. An
 * operator's second Ctrl-C or a supervisor's second try comes later than
 * a second. Measured when the main thread takes each one (sigwait): one
 * still pending while the drain began counts as at once. */
#define REPEAT_SIGNAL_NS 1000000000LL

/* The drain runs on its own thread so that the main thread keeps waiting
 * for signals: a second SIGTERM/SIGINT means "now" (an operator's second
 * Ctrl-C, or a supervisor that will not wait). It must be the main thread
 * that waits: a thread some library started before the signals were
 * blocked (OpenBLAS starts its pool when loaded) would otherwise take the
 * signal and die of it, unlogged. The drain thread tells the main thread
 * it is done with SIGUSR1. */
typedef struct {
    http_server *http;
    repository *repo;
    int timeout_s;
    pthread_t main_thread;
    atomic_int done;
} drain_job;

/* The thread that takes the signals in sigwait (main's), for forward_signal:
 * written once, before the handler is installed. */
static pthread_t signal_thread;

/* Blocking the signals in main does not reach a thread that started
 * before it: OpenBLAS's pool starts when the library loads, with every
 * signal unblocked. A process-directed SIGTERM that arrives while the main
 * thread is not inside sigwait (loading a model, logging the drain) went
 * there, and its default action killed the daemon: exit 143, no drain, no
 * log line (every SIGTERM during a load; once in CI, a second SIGTERM
 * during a drain). Handled there, it is passed on to the main thread,
 * which has it blocked and takes it in sigwait as if it had come first.
 * (pthread_kill is a tgkill: async-signal-safe.) */
static void forward_signal(int sig) {
    int saved = errno;
    pthread_kill(signal_thread, sig);
    errno = saved;
}

static void *drain_main(void *arg) {
    drain_job *d = arg;
    http_begin_drain(d->http);
    /* (stops the control thread first: no load or unload during a drain) */
    int left = repository_drain(d->repo, d->timeout_s);
    /* Answers what is left with 503, resuming their connections. The
     * batchers stay allocated until the HTTP daemons are stopped: a request
     * still on a connection may call one (and is refused with 503). */
    repository_stop(d->repo);
    if (left) log_event("info", "%d queued requests answered 503", left);
    notify_status("drained%s; flushing the last answers", left ? " (leftovers answered 503)" : "");
    http_close_connections(d->http, 5000); /* answers written, connections closed */
    atomic_store(&d->done, 1);
    pthread_kill(d->main_thread, SIGUSR1);
    return NULL;
}

/* A descriptor 0, 1 or 2 closed at exec (`2>&-`, a supervisor that closes
 * them) is the next one that open() or socket() returns: the listening
 * socket became descriptor 2, and every log line a write() on it, lost
 * with ENOTCONN; had it been a client's connection, the log would have
 * gone to that client. Each closed one is /dev/null instead, as OpenSSH
 * (sanitise_stdfd) and Postfix do. */
static void std_fds_open(void) {
    for (int fd = 0; fd <= 2; fd++) /* open() returns the lowest free descriptor: fd */
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF && open("/dev/null", fd ? O_WRONLY : O_RDONLY) < 0)
            return;
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
    repository *repo = NULL;
    metrics *mx = NULL;
    http_server *http = NULL;
    char **keys = NULL;
    tls_store *tls = NULL;

    std_fds_open(); /* before anything opens a file or a socket */
    /* A SIGHUP (a reload, a log rotation's) before its handler is set
     * below would end the daemon as it starts (its default action): none
     * is needed then, as what the start reads is read after it. */
    signal(SIGHUP, SIG_IGN);
    if (probe_take_flag(&argc, argv)) {
        int pargc;
        char **pargv = probe_args(argc, argv, &pargc);
        if (!pargv) return 2;
        int loaded = config_load(&cfg, pargc, pargv, environ, err, sizeof(err));
        probe_free_args(pargv);
        if (loaded < 0) { /* through the writer, as the daemon's refusal below */
            char why[256];
            int writer = log_start(why, sizeof(why)) == 0;
            log_event("error", "--health-probe: %s", err);
            if (writer) log_stop(LOG_FLUSH_MS);
            return 2;
        }
        int status = health_probe(&cfg, 2000, err, sizeof(err));
        fprintf(status ? stderr : stdout, "%s\n", err);
        return status;
    }

    int action = config_load(&cfg, argc, argv, environ, err, sizeof(err));
    if (action < 0) {
        /* Through the writer too, as the bad settings below: written
         * there and then, the line held the exit 2 for good on a stderr
         * pipe full at start. The signals are not blocked yet: a SIGTERM
         * during log_stop's wait ends the exit it would have asked for. */
        char why[256];
        int writer = log_start(why, sizeof(why)) == 0;
        log_event("error", "%s", err);
        if (writer) log_stop(LOG_FLUSH_MS);
        return 2;
    }
    /* every line from here on in the chosen format (access-log json: JSON) */
    log_set_format(cfg.access_log == ACCESS_LOG_JSON ? LOG_JSON : LOG_TEXT);
    if (action == CONFIG_HELP) {
        config_usage(stdout);
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
    sigaddset(&signals, SIGHUP);  /* rescan the models (repository.h) */
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal_thread = pthread_self();
    struct sigaction fwd = {.sa_handler = forward_signal, .sa_flags = SA_RESTART};
    sigfillset(&fwd.sa_mask);
    const int forwarded[] = {SIGTERM, SIGINT, SIGUSR1, SIGHUP};
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++) sigaction(forwarded[i], &fwd, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* From here on no thread waits on stderr (log.h); every exit below
     * goes through log_stop (cleanup's). Started before the first warning
     * or bad setting can be logged: a stderr pipe full at start (its reader
     * stalled across a restart) blocked that line's write for good, with
     * SIGTERM blocked: never ready, or never the exit 2. Without the writer
     * the log stays synchronous, as it was: a daemon that logs slowly beats
     * none. */
    int flush_ms = LOG_FLUSH_MS;
    if (log_start(err, sizeof(err))) log_event("warning", "%s; the log is written synchronously", err);
    char unknown[512];
    if (config_unknown_env(environ, unknown, sizeof(unknown)))
        log_event("warning", "environment variables that name no setting: %s", unknown);
    int cpu_limit = config_cpu_limit_cgroup("/sys/fs/cgroup", "/proc/self/cgroup");
    if (action == CONFIG_PRINT) { /* no model loaded: the rule for an unknown model */
        config_derive_threads(&cfg, cpu_limit, -1);
        config_print(&cfg, stdout);
        log_stop(flush_ms);
        return 0;
    }

    /* Decoded images and batch buffers are a few MB each. glibc would hand
     * blocks that large back to the kernel on free (mmap/trim), and every
     * request would pay first-touch faults again (about 12 us per 4 KiB page
     * here); keeping them in the heap makes steady state fault-free. */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    /* jansson's allocator is process-wide: set before any thread parses or
     * builds JSON (proto.h, proto_json_meter) */
    proto_json_meter_install();

    /* Before the model (seconds to load): a key file that cannot be read
     * stops the start at once, and never leaves the daemon open. */
    if (cfg.api_key_file[0] && !(keys = api_keys_load(cfg.api_key_file, err, sizeof(err)))) {
        log_event("error", "%s", err);
        rc = 2; /* a bad setting (deploy/README: 1 a bad model, 2 a bad setting) */
        goto cleanup;
    }

    /* HTTPS: a certificate or key that cannot be served is a bad setting */
    if (cfg.tls_cert_file[0] && !(tls = tls_open(cfg.tls_cert_file, cfg.tls_key_file, err, sizeof(err)))) {
        log_event("error", "%s", err);
        rc = 2;
        goto cleanup;
    }

    if (!cfg.model[0] && !cfg.model_repository[0]) {
        if (model_path_default(dir, sizeof(dir), err, sizeof(err))) {
            log_event("error", "%s", err);
            goto cleanup;
        }
        snprintf(cfg.model, sizeof(cfg.model), "%s", dir);
    }
    if (cfg.model[0] && cfg.model_repository[0]) {
        log_event("error", "model and model-repository are both set: serve one model, or a repository");
        rc = 2;
        goto cleanup;
    }
    if (!cfg.model_name[0] && cfg.model[0]) base_name(cfg.model, cfg.model_name, sizeof(cfg.model_name));
    /* Listening before the models load (seconds for a big one): liveness
     * 200 and readiness 503 meanwhile, so that an orchestrator tells a
     * loading daemon from a dead one. The HTTP threads do not depend on
     * the model (config_derive_threads); the rest is derived per model. */
    server_config early = cfg;
    config_derive_threads(&early, cpu_limit, -1);
    cfg.http_threads = early.http_threads;
    mx = metrics_new();
    if (!mx) {
        log_event("error", "out of memory");
        goto cleanup;
    }
    repository_params rp = {.cfg = &cfg,
                            .cpu_limit = cpu_limit,
                            .memory_limit = config_memory_limit_cgroup("/sys/fs/cgroup", "/proc/self/cgroup"),
                            .mx = mx,
                            .build_version = COMROPE_VERSION};
    repo = repository_new(&rp, err, sizeof(err));
    if (!repo) {
        log_event("error", "%s", err);
        rc = 2;
        goto cleanup;
    }
    http_params hp = {
        .cfg = &cfg, .repo = repo, .metrics = mx, .build_version = COMROPE_VERSION, .api_keys = keys};
    hp.tls = tls;
    http = http_start(&hp, err, sizeof(err));
    if (!http) {
        log_event("error", "%s", err);
        notify_status("%s", err);
        rc = EXIT_WAITING_MAY_CURE;
        goto cleanup;
    }
    if (cfg.metrics_port) log_event("info", "metrics on %s:%d", cfg.host, http_metrics_port(http));
    /* "listening on HOST:PORT" ends its line: scripts read the port from it */
    log_event("info", "listening on %s:%d", cfg.host, http_port(http));
    const char *what = cfg.model_repository[0] ? cfg.model_repository : cfg.model;
    const char *kind = cfg.model_repository[0] ? "the models of" : "model";
    log_event("info", "loading %s %s", kind, what);
    notify_status("loading %s %s", kind, what);
    int started = repository_start(repo, err, sizeof(err));
    if (started) {
        log_event("error", "%s", err);
        if (started == -2) rc = 2;
        if (started == -3) rc = EXIT_WAITING_MAY_CURE;
        goto cleanup;
    }
    int status = 0;
    served_model *first = repository_acquire(repo, NULL, 0, NULL, &status, err, sizeof(err));
    if (first) {
        if (metrics_set_engine(mx, first->isa, first->pm.precision, first->pm.precision_requested,
                               first->pm.bf16_pays)) {
            repository_release(repo, first);
            log_event("error", "out of memory");
            goto cleanup;
        }
        repository_release(repo, first);
    }
    http_set_loaded(http);
    log_event("info", "%d http threads", cfg.http_threads);
    log_event("info", "ready");
    notify_ready("serving %s on %s:%d (%s)", cfg.model_repository[0] ? what : cfg.model_name, cfg.host,
                 http_port(http), cfg.model_repository[0] ? "a model repository" : "one model");

    int sig = 0;
    for (;;) {
        while (sigwait(&signals, &sig) != 0 || sig == SIGUSR1) {}
        if (sig != SIGHUP) break;
        /* SIGHUP: reread the models' files (new: load, gone: unload after
         * their requests, changed: load, then swap); the daemon serves on */
        /* said each time: SIGHUP reloads a daemon's settings by custom
         * (systemctl reload), and a key taken out of api-key-file stays
         * valid until a restart */
        log_event("info", "SIGHUP: rescanning %s (settings and api-key-file stay as read at start)", what);
        repository_rescan(repo);
    }
    int64_t first_signal_ns = monotonic_ns(); /* the drain starts with it */
    log_event("info", "%s: draining (up to %d s)", sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.drain_timeout_s);
    notify_stopping("%s: draining (up to %d s)", sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.drain_timeout_s);
    drain_job d = {.http = http,
                   .repo = repo,
                   .timeout_s = cfg.drain_timeout_s,
                   .main_thread = pthread_self(),
                   .done = 0};
    pthread_t drainer;
    int threaded = pthread_create(&drainer, NULL, drain_main, &d) == 0;
    if (!threaded) drain_main(&d); /* no second-signal stop then, but a drain */
    while (threaded) {
        while (sigwait(&signals, &sig) != 0) {}
        if (sig == SIGUSR1 && atomic_load(&d.done)) break;
        if (sig == SIGUSR1 || sig == SIGHUP) continue; /* not ours; no rescan while draining */
        const char *name = sig == SIGINT ? "SIGINT" : "SIGTERM";
        int64_t since_ms = (monotonic_ns() - first_signal_ns) / 1000000;
        if (since_ms < REPEAT_SIGNAL_NS / 1000000) {
            log_event("info",
                      "%s %lld ms after the first: the same request, the drain goes on (a second one stops "
                      "now from %lld ms on)",
                      name, (long long)since_ms, REPEAT_SIGNAL_NS / 1000000);
            continue;
        }
        log_event("error", "second %s during the drain: stopping now, without answering what is left", name);
        log_stop(LOG_FLUSH_MIN_MS);
        _exit(1);
    }
    if (threaded) pthread_join(drainer, NULL);
    int64_t left_ms = (int64_t)cfg.drain_timeout_s * 1000 - (monotonic_ns() - first_signal_ns) / 1000000;
    flush_ms = left_ms < LOG_FLUSH_MIN_MS ? LOG_FLUSH_MIN_MS
               : left_ms < LOG_FLUSH_MS   ? (int)left_ms
                                          : LOG_FLUSH_MS;
    rc = 0;

cleanup:
    if (repo && rc != 0) repository_stop(repo); /* answers a control request before http_stop */
    http_stop(http);
    tls_close(tls); /* after the daemons: their sessions hold its pairs */
    repository_free(repo);
    metrics_free(mx);
    api_keys_free(keys);
    if (rc == 0) log_event("info", "stopped");
    log_stop(flush_ms); /* what the log holds, before the exit */
    return rc;
}
