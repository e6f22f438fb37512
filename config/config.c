/* config.c: the table of knobs and the four sources of their values.
 * See config.h for the precedence rules. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "small_file.h"

#define OFF(field) offsetof(server_config, field)
#define SIZE(field) sizeof(((server_config *)0)->field)

static const char *const access_log_choices[] = {"text", "json", "off", NULL};
/* names of engine/dispatch.h's precisions (precision_parse) */
static const char *const precision_choices[] = {"fp32", "bf16", "auto", NULL};
/* names of engine/gemm.h's bf16 GEMM backends (gemm_backend_parse) */
static const char *const gemm_backend_choices[] = {"auto", "own", "onednn", "amx", NULL};
/* on/off rather than yes/no: the word the console's docs use */
static const char *const console_choices[] = {"off", "on", NULL};
/* names of engine/cpu.h's levels; "auto" (first, the default) is the best the CPU runs */
static const char *const isa_choices[] = {"auto", "avx512", "avx2", "scalar", NULL};
/* Triton's names, in the order of MODEL_CONTROL_* */
static const char *const control_choices[] = {"none", "poll", "explicit", NULL};

int config_parse_version_policy(const char *text, version_policy *p, char *err, size_t errlen) {
    memset(p, 0, sizeof(*p));
    if (strcmp(text, "all") == 0) {
        p->all = 1;
        return 0;
    }
    if (strncmp(text, "latest:", 7) == 0) {
        char *end;
        long n = strtol(text + 7, &end, 10);
        if (text[7] && !*end && n >= 1 && n <= 1000000) {
            p->latest = (int)n;
            return 0;
        }
    } else if (strncmp(text, "specific:", 9) == 0) {
        const char *v = text + 9;
        for (;;) {
            char *end;
            long n = strtol(v, &end, 10);
            if (end == v || n < 1 || n > 1000000000 || p->nspecific == MAX_POLICY_VERSIONS) break;
            p->specific[p->nspecific++] = (int)n;
            if (*end == '\0') return 0;
            if (*end != ',') break;
            v = end + 1;
        }
    }
    snprintf(err, errlen, "\"%.100s\" is not latest:N, specific:A,B,... or all (at most %d versions)", text,
             MAX_POLICY_VERSIONS);
    return -1;
}

static int check_version_policy(const char *value, char *err, size_t errlen) {
    version_policy p;
    return config_parse_version_policy(value, &p, err, errlen);
}

/* --- allowed-hosts ------------------------------------------------------- */

/* Whether the n bytes at s are an IP address: IPv4 dotted, or IPv6 in
 * brackets (as a Host names it) or without. */
static int ip_literal(const char *s, size_t n) {
    char buf[64];
    unsigned char addr[16];
    if (n == 0 || n >= sizeof(buf)) return 0;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (buf[0] == '[') {
        if (n < 3 || buf[n - 1] != ']') return 0;
        buf[n - 1] = '\0';
        return inet_pton(AF_INET6, buf + 1, addr) == 1;
    }
    return inet_pton(AF_INET, buf, addr) == 1 || inet_pton(AF_INET6, buf, addr) == 1;
}

/* The next entry of a comma-separated list at *list, blanks trimmed:
 * returns its start (length in *n, 0 for an empty one) and advances
 * *list past it; NULL at the end. */
static const char *next_entry(const char **list, size_t *n) {
    const char *e = *list;
    if (!*e) return NULL;
    size_t len = strcspn(e, ",");
    *list = e[len] ? e + len + 1 : e + len;
    while (len && isspace((unsigned char)*e)) e++, len--;
    while (len && isspace((unsigned char)e[len - 1])) len--;
    *n = len;
    return e;
}

int config_host_allowed(const char *allowed, const char *host) {
    if (!allowed[0]) return 1; /* the default, any Host: nothing to read per request */
    /* no Host: HTTP/1.0 (HAProxy's default health check); every browser
     * sends one, so no page can come without */
    if (!host) return 1;
    /* optional whitespace around the value (RFC 9112 5.1): libmicrohttpd
     * drops the leading, not the trailing ("127.0.0.1 " got 421) */
    size_t len = strlen(host);
    while (len && (*host == ' ' || *host == '\t')) host++, len--;
    while (len && (host[len - 1] == ' ' || host[len - 1] == '\t')) len--;
    if (!len) return 1;
    /* DNS rebinding needs a name the attacker's DNS answers: an IP address
     * (an IPv6 one unbracketed too: a client's slip, still no name) or
     * localhost (never asked of DNS: RFC 6761) cannot be rebound */
    if (ip_literal(host, len)) return 1;
    const char *end = host + len, *stop = memchr(host, host[0] == '[' ? ']' : ':', len);
    if (host[0] == '[' && !stop) return 0; /* "[" with no "]" */
    size_t n = !stop ? len : host[0] == '[' ? (size_t)(stop - host) + 1 : (size_t)(stop - host);
    const char *port = host + n;
    if (port < end && *port != ':') return 0;
    for (port += port < end; port < end; port++)
        if (!isdigit((unsigned char)*port)) return 0;
    if (n > 1 && host[n - 1] == '.') n--; /* "example.com." is example.com */
    if (ip_literal(host, n)) return 1;
    if (n == 9 && strncasecmp(host, "localhost", 9) == 0) return 1;
    int any = 1;
    size_t en;
    for (const char *e; (e = next_entry(&allowed, &en));) {
        if (!en) continue;
        any = 0;
        if (en == 1 && e[0] == '*') return 1;
        if (en > 1 && e[en - 1] == '.') en--;
        if (e[0] == '.') { /* the domain and its subdomains */
            if (n == en - 1 && strncasecmp(host, e + 1, n) == 0) return 1;
            if (n > en && strncasecmp(host + n - en, e, en) == 0) return 1;
        } else if (n == en && strncasecmp(host, e, n) == 0) {
            return 1;
        }
    }
    return any;
}

/* allowed-hosts' entries: `*`, names, `.domain`s and IP addresses (always
 * allowed anyway). No port: every port of a name is allowed, as the port
 * a request reached is this daemon's own (or its proxy's) whatever page
 * sent it. */
static int check_allowed_hosts(const char *value, char *err, size_t errlen) {
    size_t n;
    for (const char *e; (e = next_entry(&value, &n));) {
        if (!n || (n == 1 && e[0] == '*') || ip_literal(e, n)) continue;
        const char *why = NULL;
        char bad = 0;
        for (size_t i = 0; i + 2 < n; i++)
            if (memcmp(e + i, "://", 3) == 0) why = "an origin: name the host alone (no scheme, no port)";
        for (size_t i = 0; i < n && !why && !bad; i++) {
            char c = e[i];
            if (c == ':') why = "a port: name the host alone (each of its ports is allowed)";
            else if (c == '*') why = "`*` stands alone (any host); a domain and its subdomains: .example.com";
            else if (c == '.' && i + 1 < n && e[i + 1] == '.') why = "an empty label (\"..\")";
            else if (!isalnum((unsigned char)c) && c != '-' && c != '.' && c != '_') bad = c;
        }
        if (!why && !bad && n == 1 && e[0] == '.') why = "no name";
        if (bad)
            snprintf(err, errlen, "\"%.*s\": '%c' is not in a host name (letters, digits, '-', '.', '_')",
                     (int)(n > 100 ? 100 : n), e, bad);
        else if (why) snprintf(err, errlen, "\"%.*s\": %s", (int)(n > 100 ? 100 : n), e, why);
        if (bad || why) return -1;
    }
    return 0;
}

/* The one table. Defaults are text so that they go through the same parser
 * as every other source and cannot disagree with the bounds. */
const config_option config_options[] = {
    {.name = "model",
     .type = CONFIG_STRING,
     .offset = OFF(model),
     .size = SIZE(model),
     .default_value = "",
     .help = "model directory (config.json, model.safetensors); empty: the bundled default model"},
    {.name = "model-name",
     .type = CONFIG_STRING,
     .offset = OFF(model_name),
     .size = SIZE(model_name),
     .default_value = "",
     .help = "name served in the API; empty: the model directory's base name"},
    {.name = "host",
     .type = CONFIG_STRING,
     .offset = OFF(host),
     .size = SIZE(host),
     .default_value = "0.0.0.0",
     .help = "address to listen on"},
    {.name = "port",
     .type = CONFIG_INT,
     .offset = OFF(port),
     .default_value = "8080",
     .min = 0,
     .max = 65535,
     .help = "HTTP port (0: any free port)"},
    {.name = "metrics-port",
     .type = CONFIG_INT,
     .offset = OFF(metrics_port),
     .default_value = "0",
     .min = 0,
     .max = 65535,
     .help = "serve /metrics on its own port; 0: on the main port"},
    {.name = "metrics-open",
     .type = CONFIG_BOOL,
     .offset = OFF(metrics_open),
     .default_value = "yes",
     .min = 0,
     .max = 1,
     .help = "/metrics needs no token even when api-key-file is set"},
    {.name = "config",
     .type = CONFIG_STRING,
     .offset = OFF(config),
     .size = SIZE(config),
     .default_value = "",
     .help = "config file of `key value` lines (flag or COMROPE_CONFIG only)"},
    {.name = "api-key-file",
     .type = CONFIG_STRING,
     .offset = OFF(api_key_file),
     .size = SIZE(api_key_file),
     .default_value = "",
     .help = "file of bearer tokens, one per line (`#` comment lines); a file that cannot be read or holds "
             "no token stops the start; empty: no auth"},
    {.name = "tls-cert-file",
     .type = CONFIG_STRING,
     .offset = OFF(tls_cert_file),
     .size = SIZE(tls_cert_file),
     .default_value = "",
     .help = "PEM certificate (chain) for HTTPS on port and metrics-port, with tls-key-file; a changed pair "
             "is served from the next handshake on (README \"HTTPS\"); empty: plain HTTP"},
    {.name = "tls-key-file",
     .type = CONFIG_STRING,
     .offset = OFF(tls_key_file),
     .size = SIZE(tls_key_file),
     .default_value = "",
     .help = "PEM private key (unencrypted) of tls-cert-file's certificate"},
    {.name = "max-batch-size",
     .type = CONFIG_INT,
     .offset = OFF(max_batch_size),
     .default_value = "8",
     .min = 1,
     .max = CONFIG_MAX_BATCH_SIZE,
     .help = "images per executed batch"},
    {.name = "max-batch-tokens",
     .type = CONFIG_INT,
     .offset = OFF(max_batch_tokens),
     .default_value = "16384",
     .min = 1,
     .max = 1 << 24,
     .help = "tokens per executed batch (a larger request is split over several; a larger image: 413)"},
    {.name = "max-queue-delay-us",
     .type = CONFIG_INT,
     .offset = OFF(max_queue_delay_us),
     .default_value = "2000",
     .min = 0,
     .max = 10000000,
     .help = "how long a batch waits for more requests; skipped when none could join"},
    {.name = "max-queue-size",
     .type = CONFIG_INT,
     .offset = OFF(max_queue_size),
     .default_value = "256",
     .min = 1,
     .max = 1000000,
     .help = "requests waiting for a worker; beyond it: 503 with Retry-After"},
    {.name = "max-queue-wait-ms",
     .type = CONFIG_INT,
     .offset = OFF(max_queue_wait_ms),
     .default_value = "0",
     .min = 0,
     .max = 3600000,
     .help =
         "while the oldest waiting request has waited longer (and longer than two batches take), new ones "
         "get 503 with Retry-After: bounds the queue in time (500: normal latency within about 0.5 s of an "
         "overload's end); 0: off, only max-queue-size bounds it"},
    {.name = "default-timeout-ms",
     .type = CONFIG_INT,
     .offset = OFF(default_timeout_ms),
     .default_value = "30000",
     .min = 1,
     .max = 3600000,
     .help = "deadline of a request that sets none; passed: 504"},
    {.name = "workers",
     .type = CONFIG_INT,
     .offset = OFF(workers),
     .default_value = "0",
     .min = 0,
     .max = 1024,
     .help = "inference worker threads; 0: derived from the CPU limit and the model's size"},
    {.name = "http-threads",
     .type = CONFIG_INT,
     .offset = OFF(http_threads),
     .default_value = "0",
     .min = 0,
     .max = 1024,
     .help = "HTTP thread pool size; 0: derived from the CPU limit"},
    {.name = "gemm-threads",
     .type = CONFIG_INT,
     .offset = OFF(gemm_threads),
     .default_value = "0",
     .min = 0,
     .max = 1024,
     .help = "GEMM/BLAS threads per forward; 0: CPU limit / workers"},
    {.name = "max-body-bytes",
     .type = CONFIG_INT64,
     .offset = OFF(max_body_bytes),
     .default_value = "67108864",
     .min = 1,
     .max = (long long)1 << 40,
     .help = "largest request body; more: 413"},
    {.name = "body-budget-bytes",
     .type = CONFIG_INT64,
     .offset = OFF(body_budget_bytes),
     .default_value = "1073741824",
     .min = 1,
     .max = (long long)1 << 44,
     .help =
         "request bodies held at once (being received or parsed, and the encoded images of queued ones; "
         "an announced one reserves its first MiB before it is read, the rest as it arrives); over: 503 + "
         "Retry-After"},
    {.name = "max-image-pixels",
     .type = CONFIG_INT64,
     .offset = OFF(max_image_pixels),
     .default_value = "40000000",
     .min = 1,
     .max = (long long)1 << 40,
     .help = "largest decoded image (width*height); more: 413"},
    {.name = "max-image-side",
     .type = CONFIG_INT,
     .offset = OFF(max_image_side),
     .default_value = "16384",
     .min = 1,
     .max = 1 << 20,
     .help = "largest image width or height; more: 413"},
    {.name = "connection-timeout-s",
     .type = CONFIG_INT,
     .offset = OFF(connection_timeout_s),
     .default_value = "30",
     .min = 1,
     .max = 86400,
     .help = "a connection idle (nothing sent or received) this long is closed"},
    {.name = "max-connections",
     .type = CONFIG_INT,
     .offset = OFF(max_connections),
     .default_value = "512",
     .min = 1,
     .max = 1000000,
     .help = "open connections at most; more are closed at accept, at once"},
    /* slow and greedy clients (server/conn_guard.h) */
    {.name = "receive-timeout-s",
     .type = CONFIG_INT,
     .offset = OFF(receive_timeout_s),
     .default_value = "30",
     .min = 1,
     .max = 86400,
     .help = "a request's headers and body must arrive within this (from the connection's start or the "
             "previous answer); else the connection is cut (408 in the access log)"},
    {.name = "max-connections-per-client",
     .type = CONFIG_INT,
     .offset = OFF(max_connections_per_client),
     .default_value = "0",
     .min = 0,
     .max = 1000000,
     .help = "open connections per client IP address; more are closed at accept; 0: no cap but "
             "max-connections (behind a proxy, one address is many clients)"},
    {.name = "drain-timeout-s",
     .type = CONFIG_INT,
     .offset = OFF(drain_timeout_s),
     .default_value = "30",
     .min = 0,
     .max = 3600,
     .help = "on SIGTERM, how long queued work may finish before leftovers get 503"},
    {.name = "access-log",
     .type = CONFIG_ENUM,
     .offset = OFF(access_log),
     .default_value = "text",
     .choices = access_log_choices,
     .help = "access log on stderr: text, json (then every log line is a JSON object) or off"},
    {.name = "precision",
     .type = CONFIG_ENUM,
     .offset = OFF(precision),
     .default_value = "fp32",
     .choices = precision_choices,
     .help = "GEMM precision: fp32 (exact), bf16 (AVX512-BF16 CPUs; about 3 digits), or auto (bf16 where "
             "this CPU runs it faster, else fp32: README \"Precision\")"},
    {.name = "gemm-backend",
     .type = CONFIG_ENUM,
     .offset = OFF(gemm_backend),
     .default_value = "auto",
     .choices = gemm_backend_choices,
     .help = "who runs bf16 GEMMs: auto (oneDNN on AMX CPUs where built with it, else own), own (our "
             "vdpbf16ps kernel), onednn, or amx (our AMX tile kernel; AMX CPUs only): README \"Precision\""},
    {.name = "isa",
     .type = CONFIG_ENUM,
     .offset = OFF(isa),
     .default_value = "auto",
     .choices = isa_choices,
     .help = "CPU kernels: auto (the best this CPU runs), or force a lower level: avx512, avx2, scalar"},
    {.name = "console",
     .type = CONFIG_ENUM,
     .offset = OFF(console),
     .default_value = "on",
     .choices = console_choices,
     .help =
         "the web console at / (built into the binary; public page, API calls carry the token): on or off"},
    /* work and memory one request may cost (README "Limits") */
    {.name = "max-request-images",
     .type = CONFIG_INT,
     .offset = OFF(max_request_images),
     .default_value = "64",
     .min = 1,
     .max = 1 << 20,
     .help = "images in one request (split into engine batches); more: 413, before any is decoded"},
    {.name = "max-request-tokens",
     .type = CONFIG_INT64,
     .offset = OFF(max_request_tokens),
     .default_value = "65536",
     .min = 1,
     .max = (long long)1 << 40,
     .help = "tokens of all images of one request; more: 413"},
    {.name = "pixel-budget-bytes",
     .type = CONFIG_INT64,
     .offset = OFF(pixel_budget_bytes),
     .default_value = "1073741824",
     .min = 1,
     .max = (long long)1 << 44,
     .help =
         "decoded pixels (4*C*h*w per image) held by queued and running requests; over: 503 + Retry-After"},
    {.name = "max-json-body-bytes",
     .type = CONFIG_INT64,
     .offset = OFF(max_json_body_bytes),
     .default_value = "16777216",
     .min = 1,
     .max = (long long)1 << 40,
     .help = "largest JSON part of a request body (and what it may hold once parsed: 32x that); more: 413"},
    {.name = "parse-threads",
     .type = CONFIG_INT,
     .offset = OFF(parse_threads),
     .default_value = "2",
     .min = 1,
     .max = 64,
     .help = "threads that parse request bodies (never the HTTP threads)"},
    /* browsers (README "Triton and KServe clients") */
    {.name = "cors-origin",
     .type = CONFIG_STRING,
     .offset = OFF(cors_origin),
     .size = SIZE(cors_origin),
     .default_value = "",
     .help = "origin allowed to call the API from a browser (CORS; `*` for any): its preflight (OPTIONS) "
             "gets 204; empty: no CORS headers, OPTIONS gets 405"},
    {.name = "allowed-hosts",
     .type = CONFIG_STRING,
     .offset = OFF(allowed_hosts),
     .size = SIZE(allowed_hosts),
     .default_value = "",
     .check = check_allowed_hosts,
     .help = "host names a request's Host may give, comma-separated (`.example.com`: it and its subdomains; "
             "no port); others get 421 (README \"DNS rebinding\"); IP addresses and localhost "
             "always pass; empty or `*`: any"},
    /* several models (README "Model repository", server/repository.h) */
    {.name = "model-repository",
     .type = CONFIG_STRING,
     .offset = OFF(model_repository),
     .size = SIZE(model_repository),
     .default_value = "",
     .help = "directory of models in Triton's layout (<name>/<version>/ or a flat <name>/ = version 1); "
             "empty: serve --model alone"},
    {.name = "model-control-mode",
     .type = CONFIG_ENUM,
     .offset = OFF(model_control_mode),
     .default_value = "none",
     .choices = control_choices,
     .help = "Triton's: none (load all at start; SIGHUP rescans), poll (rescan every repository-poll-s), "
             "explicit (load-model at start, then the load/unload API)"},
    {.name = "repository-poll-s",
     .type = CONFIG_INT,
     .offset = OFF(repository_poll_s),
     .default_value = "15",
     .min = 1,
     .max = 86400,
     .help = "seconds between rescans of the repository in poll mode"},
    {.name = "load-model",
     .type = CONFIG_STRING,
     .offset = OFF(load_model),
     .size = SIZE(load_model),
     .default_value = "",
     .help = "explicit mode: models loaded at start (repeat the flag, or comma-separated; `*`: all)"},
    {.name = "version-policy",
     .type = CONFIG_STRING,
     .offset = OFF(version_policy),
     .size = SIZE(version_policy),
     .default_value = "latest:1",
     .check = check_version_policy,
     .help = "versions of a model served: latest:N, specific:A,B,... or all (Triton's policies)"},
};
const int config_num_options = (int)(sizeof(config_options) / sizeof(config_options[0]));

static const config_option *find_option(const char *name) {
    for (int i = 0; i < config_num_options; i++)
        if (strcmp(config_options[i].name, name) == 0) return &config_options[i];
    return NULL;
}

int config_set(server_config *cfg, const char *name, const char *value, const char *source, char *err,
               size_t errlen) {
    const config_option *o = find_option(name);
    if (!o) {
        snprintf(err, errlen, "unknown config key \"%s\" (%s)", name, source);
        return -1;
    }
    char *field = (char *)cfg + o->offset;
    switch (o->type) {
    case CONFIG_STRING:
        if (strlen(value) >= o->size) {
            snprintf(err, errlen, "%s (%s): value is longer than %zu bytes", name, source, o->size - 1);
            return -1;
        }
        /* a control character has no use in a path, a name or an origin,
         * and breaks where the value goes: a CR/LF in cors-origin made
         * libmicrohttpd refuse the header, so every answer (health too)
         * was a closed connection; --print-config's line broke in two */
        for (const unsigned char *q = (const unsigned char *)value; *q; q++)
            if (*q < 0x20 || *q == 0x7f) {
                snprintf(err, errlen, "%s (%s): control character 0x%02x at byte %d", name, source, *q,
                         (int)(q - (const unsigned char *)value) + 1);
                return -1;
            }
        if (o->check) {
            char why[300];
            if (o->check(value, why, sizeof(why))) {
                snprintf(err, errlen, "%s (%s): %s", name, source, why);
                return -1;
            }
        }
        memcpy(field, value, strlen(value) + 1);
        return 0;
    case CONFIG_BOOL:
        if (!strcmp(value, "yes") || !strcmp(value, "true") || !strcmp(value, "1")) {
            *(int *)field = 1;
        } else if (!strcmp(value, "no") || !strcmp(value, "false") || !strcmp(value, "0")) {
            *(int *)field = 0;
        } else {
            snprintf(err, errlen, "%s (%s): expected yes or no, not \"%s\"", name, source, value);
            return -1;
        }
        return 0;
    case CONFIG_ENUM:
        for (int i = 0; o->choices[i]; i++)
            if (strcmp(o->choices[i], value) == 0) {
                *(int *)field = i;
                return 0;
            }
        snprintf(err, errlen, "%s (%s): \"%s\" is not one of", name, source, value);
        for (int i = 0; o->choices[i]; i++) {
            size_t n = strlen(err);
            snprintf(err + n, errlen > n ? errlen - n : 0, "%s %s", i ? "," : "", o->choices[i]);
        }
        return -1;
    case CONFIG_INT:
    case CONFIG_INT64: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        /* strtoll skips leading space, and only that: " 8" was 8 while "8 "
         * was refused. A space in a flag or a variable is a quoting slip (a
         * file's unquoted values are trimmed already), so neither is a number */
        if (*value == '\0' || isspace((unsigned char)*value) || *end != '\0' || errno == ERANGE) {
            snprintf(err, errlen, "%s (%s): expected an integer, not \"%s\"", name, source, value);
            return -1;
        }
        if (v < o->min || v > o->max) {
            snprintf(err, errlen, "%s (%s): %lld is out of range [%lld, %lld]", name, source, v, o->min,
                     o->max);
            return -1;
        }
        if (o->type == CONFIG_INT) *(int *)field = (int)v;
        else *(int64_t *)field = (int64_t)v;
        return 0;
    }
    }
    return -1;
}

void config_defaults(server_config *cfg) {
    char err[256];
    memset(cfg, 0, sizeof(*cfg));
    for (int i = 0; i < config_num_options; i++)
        config_set(cfg, config_options[i].name, config_options[i].default_value, "default", err, sizeof(err));
}

/* Splits a line into key and value in place; the value may be quoted.
 * Returns 1 for a key/value line, 0 for a blank or comment, or -1 with
 * *why set if malformed. An unquoted value is one word: text after it
 * (`port 80 # http`, `model-name two words`) would otherwise become part
 * of the value without a word said. */
static int split_line(char *line, char **key, char **value, const char **why) {
    char *p = line;
    *why = "expected `key value`";
    while (isspace((unsigned char)*p)) p++;
    if (*p == '\0' || *p == '#') return 0;
    *key = p;
    while (*p && !isspace((unsigned char)*p)) p++;
    if (*p == '\0') return -1;
    *p++ = '\0';
    while (isspace((unsigned char)*p)) p++;
    if (*p == '\0') return -1; /* a key without a value; `key ""` sets it empty */
    char *end = p + strlen(p);
    while (end > p && isspace((unsigned char)end[-1])) *--end = '\0';
    if (*p == '"') {
        if (end - p < 2 || end[-1] != '"') {
            *why = "unterminated \"";
            return -1;
        }
        end[-1] = '\0';
        p++;
    } else {
        for (char *q = p; *q; q++)
            if (isspace((unsigned char)*q)) {
                *why = "a value with spaces must be double-quoted (and a comment needs a line of its own)";
                return -1;
            }
    }
    *value = p;
    return 1;
}

static int load_file(server_config *cfg, const char *path, int pipes, const char *const *allowed, char *err,
                     size_t errlen);

int config_load_file(server_config *cfg, const char *path, char *err, size_t errlen) {
    return load_file(cfg, path, 1, NULL, err, errlen);
}

int config_load_file_only(server_config *cfg, const char *path, const char *const *allowed, char *err,
                          size_t errlen) {
    return load_file(cfg, path, 0, allowed, err, errlen);
}

int config_read_file(const char *what, const char *path, int pipes, char **data, size_t *len, char *err,
                     size_t errlen) {
    char why[512];
    int rc = small_file_read(path, CONFIG_FILE_MAX_BYTES, pipes ? SMALL_FILE_OR_PIPE : SMALL_FILE_REGULAR,
                             data, len, why, sizeof(why));
    if (rc) snprintf(err, errlen, "%s: %s", what, why);
    return rc;
}

static int load_file(server_config *cfg, const char *path, int pipes, const char *const *allowed, char *err,
                     size_t errlen) {
    char *data, *next;
    size_t size;
    int read_rc = config_read_file("config", path, pipes, &data, &size, err, errlen);
    if (read_rc) return read_rc;
    int rc = -1, lineno = 0;
    int set_at[sizeof(config_options) / sizeof(config_options[0])] = {0}; /* line that set each key */
    char source[CONFIG_PATH_MAX + 32];
    for (char *line = data; line < data + size; line = next) {
        char *nl = memchr(line, '\n', (size_t)(data + size - line));
        size_t len = nl ? (size_t)(nl - line) : (size_t)(data + size - line);
        next = line + len + 1;
        line[len] = '\0'; /* the '\n', or the NUL after the data */
        lineno++;
        char *key, *value;
        const char *why;
        if (strlen(line) != len) {
            snprintf(err, errlen, "config: %s:%d: NUL byte in the line", path, lineno);
            goto cleanup;
        }
        int kind = split_line(line, &key, &value, &why);
        if (kind == 0) continue;
        if (kind < 0) {
            snprintf(err, errlen, "config: %s:%d: %s", path, lineno, why);
            goto cleanup;
        }
        if (strcmp(key, "config") == 0) {
            snprintf(err, errlen, "config: %s:%d: a config file cannot name another", path, lineno);
            goto cleanup;
        }
        const config_option *o = find_option(key);
        if (!o) {
            snprintf(err, errlen, "config: %s:%d: unknown key \"%.100s\" (see --help)", path, lineno, key);
            goto cleanup;
        }
        int ok = !allowed;
        for (int i = 0; allowed && allowed[i] && !ok; i++) ok = strcmp(allowed[i], key) == 0;
        if (!ok) {
            size_t n = (size_t)snprintf(
                err, errlen, "config: %s:%d: \"%.100s\" cannot be set here (allowed:", path, lineno, key);
            for (int i = 0; allowed[i] && n < errlen; i++)
                n += (size_t)snprintf(err + n, errlen - n, "%s %s", i ? "," : "", allowed[i]);
            if (n < errlen) snprintf(err + n, errlen - n, ")");
            goto cleanup;
        }
        int *seen = &set_at[o - config_options];
        if (*seen) { /* two lines for one key: which one was meant? */
            snprintf(err, errlen, "config: %s:%d: %s is already set on line %d", path, lineno, key, *seen);
            goto cleanup;
        }
        *seen = lineno;
        snprintf(source, sizeof(source), "%s:%d", path, lineno);
        if (config_set(cfg, key, value, source, err, errlen)) goto cleanup;
    }
    rc = 0;
cleanup:
    free(data);
    return rc;
}

/* "max-batch-size" -> "COMROPE_MAX_BATCH_SIZE" */
static void env_name(const char *key, char *out, size_t len) {
    size_t n = (size_t)snprintf(out, len, "COMROPE_");
    for (; *key && n + 1 < len; key++) out[n++] = *key == '-' ? '_' : (char)toupper((unsigned char)*key);
    out[n] = '\0';
}

static const char *env_get(char **envp, const char *name) {
    size_t n = strlen(name);
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

/* One flag of the command line, as parsed once for both passes below. */
typedef struct {
    const config_option *option;
    const char *value;
} flag;

/* Parses argv[1..argc-1] into flags[] (room for argc), the one place that
 * knows the syntax: `--key value` and `--key=value` alike, `--help`/`-h`,
 * `--print-config`. A separate value may not start with "--": `--model-name
 * --print-config` is a missing value, not a name (`--key=--x` says it is
 * meant). Returns the number of flags, or -1 with a message. */
static int parse_flags(int argc, char **argv, flag *flags, int *action, char *err, size_t errlen) {
    int n = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *action = CONFIG_HELP;
            continue;
        }
        if (!strcmp(a, "--print-config")) {
            if (*action != CONFIG_HELP) *action = CONFIG_PRINT;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument \"%s\" (options are --key value or --key=value)", a);
            return -1;
        }
        const char *key = a + 2, *value = NULL;
        size_t key_len = strcspn(key, "=");
        const config_option *o = NULL;
        for (int k = 0; k < config_num_options; k++)
            if (strlen(config_options[k].name) == key_len && !strncmp(config_options[k].name, key, key_len))
                o = &config_options[k];
        if (!o) {
            snprintf(err, errlen, "unknown option --%.*s (see --help)", (int)key_len, key);
            return -1;
        }
        if (key[key_len] == '=') value = key + key_len + 1;
        else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) value = argv[++i];
        if (!value) {
            snprintf(err, errlen, "--%s needs a value", o->name);
            return -1;
        }
        if (!strcmp(o->name, "config")) {
            for (int k = 0; k < n; k++)
                if (flags[k].option == o) {
                    snprintf(err, errlen, "--config is given twice (\"%s\" and \"%s\"): one file is read",
                             flags[k].value, value);
                    return -1;
                }
        }
        flags[n].option = o;
        flags[n].value = value;
        n++;
    }
    return n;
}

int config_load(server_config *cfg, int argc, char **argv, char **envp, char *err, size_t errlen) {
    int action = CONFIG_RUN, rc = -1;
    config_defaults(cfg);
    flag *flags = calloc((size_t)(argc > 0 ? argc : 1), sizeof(*flags));
    if (!flags) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int nflags = parse_flags(argc, argv, flags, &action, err, errlen);
    if (nflags < 0) goto cleanup;
    if (action == CONFIG_HELP) {
        rc = CONFIG_HELP;
        goto cleanup;
    }

    /* The config file first: the environment and the flags override it. */
    const char *file = env_get(envp, "COMROPE_CONFIG");
    const char *file_source = "COMROPE_CONFIG";
    for (int i = 0; i < nflags; i++)
        if (!strcmp(flags[i].option->name, "config")) {
            file = flags[i].value;
            file_source = "flag";
        }
    if (file && *file) {
        if (config_set(cfg, "config", file, file_source, err, errlen)) goto cleanup;
        if (config_load_file(cfg, file, err, errlen)) goto cleanup;
    }

    char name[128];
    for (int i = 0; i < config_num_options; i++) {
        if (strcmp(config_options[i].name, "config") == 0) continue;
        env_name(config_options[i].name, name, sizeof(name));
        const char *v = env_get(envp, name);
        if (v && config_set(cfg, config_options[i].name, v, name, err, errlen)) goto cleanup;
    }

    for (int i = 0; i < nflags; i++) {
        if (!strcmp(flags[i].option->name, "config")) continue; /* read above */
        char source[160];
        snprintf(source, sizeof(source), "flag --%s", flags[i].option->name);
        /* --load-model is repeatable (as Triton's): each flag adds a name */
        int added = 0;
        for (int k = 0; k < i && !strcmp(flags[i].option->name, "load-model"); k++)
            added |= flags[k].option == flags[i].option;
        if (added) {
            char joined[sizeof(cfg->load_model) + 1];
            if ((size_t)snprintf(joined, sizeof(joined), "%s,%s", cfg->load_model, flags[i].value) >=
                sizeof(joined)) {
                snprintf(err, errlen, "load-model (%s): the names are longer than %zu bytes", source,
                         sizeof(cfg->load_model) - 1);
                goto cleanup;
            }
            if (config_set(cfg, "load-model", joined, source, err, errlen)) goto cleanup;
            continue;
        }
        if (config_set(cfg, flags[i].option->name, flags[i].value, source, err, errlen)) goto cleanup;
    }
    /* Settings that cannot go together are refused like a bad value (exit
     * 2), not left for the model's load to fail as if the model were bad:
     * bf16 compute is AVX-512's */
    const char *isa = isa_choices[cfg->isa];
    if (!strcmp(precision_choices[cfg->precision], "bf16") &&
        (!strcmp(isa, "avx2") || !strcmp(isa, "scalar"))) {
        snprintf(err, errlen, "precision bf16 needs isa avx512 or auto, not %s (use precision auto or fp32)",
                 isa);
        goto cleanup;
    }
    /* one of the pair alone would serve plain HTTP where HTTPS was meant */
    if (!cfg->tls_cert_file[0] != !cfg->tls_key_file[0]) {
        snprintf(err, errlen, "%s is set but %s is not: HTTPS needs both (or neither, for plain HTTP)",
                 cfg->tls_cert_file[0] ? "tls-cert-file" : "tls-key-file",
                 cfg->tls_cert_file[0] ? "tls-key-file" : "tls-cert-file");
        goto cleanup;
    }
    rc = action;
cleanup:
    free(flags);
    return rc;
}

int config_unknown_env(char **envp, char *out, size_t outlen) {
    int n = 0;
    char name[128];
    if (outlen) out[0] = '\0';
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, "COMROPE_", 8) != 0) continue;
        size_t len = strcspn(*e, "=");
        if (len == 14 && !strncmp(*e, "COMROPE_CONFIG", 14)) continue;
        int known = 0;
        for (int i = 0; i < config_num_options && !known; i++) {
            env_name(config_options[i].name, name, sizeof(name));
            known = strlen(name) == len && !strncmp(name, *e, len);
        }
        if (known) continue;
        size_t used = strlen(out);
        if (used < outlen)
            snprintf(out + used, outlen - used, "%s%.*s", n ? " " : "", (int)(len > 64 ? 64 : len), *e);
        n++;
    }
    return n;
}

int config_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int config_cpu_limit(const char *cpu_max_path) {
    int cpus = config_cpu_count();
    FILE *f = cpu_max_path ? fopen(cpu_max_path, "r") : NULL;
    if (!f) return cpus;
    char quota[64] = "";
    long long period = 0;
    /* "max 100000" (no limit) or "150000 100000" (1.5 CPUs) */
    if (fscanf(f, "%63s %lld", quota, &period) == 2 && strcmp(quota, "max") != 0 && period > 0) {
        long long q = strtoll(quota, NULL, 10);
        if (q > 0) {
            /* ceil without q + period - 1, which overflows for a huge quota */
            long long limit = q / period + (q % period != 0);
            if (limit < cpus) cpus = (int)limit;
        }
    }
    fclose(f);
    return cpus < 1 ? 1 : cpus;
}

/* This process's cgroup v2 directory under cgroup_root, into dir. */
static void own_cgroup(const char *cgroup_root, const char *proc_self_cgroup, char *dir, size_t dirlen) {
    char rel[CONFIG_PATH_MAX] = "", line[CONFIG_PATH_MAX];
    FILE *f = fopen(proc_self_cgroup, "r");
    /* cgroup v2: the line "0::/system.slice/comrope-serve.service" */
    while (f && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "0::", 3) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(rel, sizeof(rel), "%s", line + 3);
            break;
        }
    }
    if (f) fclose(f);
    /* Inside a container's cgroup namespace rel is "/" (or the line is
     * missing): the root's cpu.max and memory.max are the container's limits. */
    if (rel[0] != '/' || strstr(rel, "..")) snprintf(rel, sizeof(rel), "/");
    snprintf(dir, dirlen, "%s%s", cgroup_root, strcmp(rel, "/") == 0 ? "" : rel);
}

/* Cuts dir's last component off; 0 once dir is cgroup_root (root_len long). */
static int cgroup_parent(char *dir, size_t root_len) {
    char *slash = strrchr(dir, '/');
    if (strlen(dir) <= root_len || !slash || (size_t)(slash - dir) < root_len) return 0;
    *slash = '\0';
    return 1;
}

int config_cpu_limit_cgroup(const char *cgroup_root, const char *proc_self_cgroup) {
    char dir[CONFIG_PATH_MAX], file[CONFIG_PATH_MAX + 16];
    own_cgroup(cgroup_root, proc_self_cgroup, dir, sizeof(dir));
    int cpus = config_cpu_count();
    /* The tightest quota of this cgroup and its ancestors, up to the root. */
    size_t root_len = strlen(cgroup_root);
    do {
        snprintf(file, sizeof(file), "%s/cpu.max", dir);
        int n = config_cpu_limit(file);
        if (n < cpus) cpus = n;
    } while (cgroup_parent(dir, root_len));
    return cpus;
}

unsigned long long config_memory_limit_cgroup(const char *cgroup_root, const char *proc_self_cgroup) {
    char dir[CONFIG_PATH_MAX], file[CONFIG_PATH_MAX + 16];
    own_cgroup(cgroup_root, proc_self_cgroup, dir, sizeof(dir));
    unsigned long long limit = 0;
    size_t root_len = strlen(cgroup_root);
    do {
        snprintf(file, sizeof(file), "%s/memory.max", dir);
        FILE *f = fopen(file, "r");
        unsigned long long bytes;
        /* "max" (no limit) or bytes */
        if (f && fscanf(f, "%llu", &bytes) == 1 && bytes > 0 && (limit == 0 || bytes < limit)) limit = bytes;
        if (f) fclose(f);
    } while (cgroup_parent(dir, root_len));
    return limit;
}

void config_derive_threads(server_config *cfg, int cpu_limit, double gflop_per_image) {
    if (cpu_limit < 1) cpu_limit = 1;
    /* A forward of a millisecond or so is made of GEMMs too small to split:
     * waking the pool costs about what the work does (the default model, 28x28:
     * batch 1 took 0.68 ms on one thread, 0.97 ms on two). Independent
     * single-threaded workers, one per CPU, answer sooner and serve more. */
    if (cfg->workers == 0 && cfg->gemm_threads == 0 && gflop_per_image >= 0 &&
        gflop_per_image < CONFIG_SMALL_MODEL_GFLOP) {
        cfg->workers = cpu_limit;
        cfg->gemm_threads = 1;
    }
    /* A larger model: each worker owns an engine context with its own
     * pool, so workers compute at once and W x T may use every CPU either
     * way. Few workers with many threads answer a lone request sooner; on
     * 2 CPUs at batch 8, 1 x 2 served ViT-B at least as fast as 2 x 1
     * (bench/concurrency.py, README "Workers and threads"), so one worker
     * takes the CPUs, and from 4 CPUs a second one overlaps a batch's
     * decoding and bookkeeping with the other's GEMMs. */
    if (cfg->workers == 0) cfg->workers = cpu_limit >= 4 ? 2 : 1;
    if (cfg->gemm_threads == 0) {
        cfg->gemm_threads = cpu_limit / cfg->workers;
        if (cfg->gemm_threads < 1) cfg->gemm_threads = 1;
    }
    /* HTTP threads only parse and copy: a few are plenty. */
    if (cfg->http_threads == 0) cfg->http_threads = cpu_limit >= 8 ? 4 : 2;
}

static void print_value(const server_config *cfg, const config_option *o, FILE *out) {
    const char *field = (const char *)cfg + o->offset;
    switch (o->type) {
    case CONFIG_STRING: fprintf(out, "\"%s\"", field); break;
    case CONFIG_INT: fprintf(out, "%d", *(const int *)field); break;
    case CONFIG_INT64: fprintf(out, "%lld", (long long)*(const int64_t *)field); break;
    case CONFIG_BOOL: fprintf(out, "%s", *(const int *)field ? "yes" : "no"); break;
    case CONFIG_ENUM: fprintf(out, "%s", o->choices[*(const int *)field]); break;
    }
}

void config_print(const server_config *cfg, FILE *out) {
    for (int i = 0; i < config_num_options; i++) {
        /* a config file cannot name another: the file read is a comment */
        if (!strcmp(config_options[i].name, "config")) fputs("# ", out);
        fprintf(out, "%s ", config_options[i].name);
        print_value(cfg, &config_options[i], out);
        fputc('\n', out);
    }
}

void config_usage(FILE *out) {
    char env[128];
    fprintf(out,
            "usage: comrope-serve [--key value | --key=value]... [--print-config] [--health-probe] [--help]\n"
            "Each key is also a config-file line `key value` and an environment\n"
            "variable COMROPE_<KEY>; precedence: defaults < file < environment < flags.\n\n");
    for (int i = 0; i < config_num_options; i++) {
        const config_option *o = &config_options[i];
        env_name(o->name, env, sizeof(env));
        fprintf(out, "  --%-22s %s\n  %-24s default \"%s\"", o->name, o->help, "", o->default_value);
        if (o->type == CONFIG_INT || o->type == CONFIG_INT64)
            fprintf(out, ", range [%lld, %lld]", o->min, o->max);
        fprintf(out, ", env %s\n", env);
    }
}

void config_markdown(FILE *out) {
    fprintf(out, "| key | default | meaning |\n|---|---|---|\n");
    for (int i = 0; i < config_num_options; i++) {
        const config_option *o = &config_options[i];
        fprintf(out, "| `%s` | \"%s\"", o->name, o->default_value);
        if (o->type == CONFIG_INT || o->type == CONFIG_INT64)
            fprintf(out, ", range [%lld, %lld]", o->min, o->max);
        fprintf(out, " | %s |\n", o->help);
    }
}
