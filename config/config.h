/* config.h: every setting of comrope-serve, and where its value comes from.
 *
 * Owns: the server_config struct, the one table that describes each knob
 * (name, type, default, bounds, help), and resolving a value from the four
 * sources in order of precedence:
 *
 *     defaults < config file (--config) < environment COMROPE_<KEY> < flags
 *
 * The same table prints --help, --print-config and the README's list, so a
 * knob added here is known everywhere at once. Bad values are refused at
 * start with a message naming the key and the source. */
#ifndef COMROPE_CONFIG_H
#define COMROPE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "small_file.h" /* SMALL_FILE_MISSING */

#define CONFIG_PATH_MAX 4096

enum { ACCESS_LOG_TEXT = 0, ACCESS_LOG_JSON, ACCESS_LOG_OFF };

typedef struct {
    char model[CONFIG_PATH_MAX]; /* "" = the bundled default model */
    char model_name[256];        /* "" = base name of the model directory */
    char host[256];
    int port;
    int metrics_port;                   /* 0 = served on the main port */
    int metrics_open;                   /* 1: /metrics needs no token even with api-key-file */
    char config[CONFIG_PATH_MAX];       /* the config file read, "" if none */
    char api_key_file[CONFIG_PATH_MAX]; /* "" = no auth */
    /* HTTPS (server/tls.h): both set, or neither (plain HTTP) */
    char tls_cert_file[CONFIG_PATH_MAX];
    char tls_key_file[CONFIG_PATH_MAX];
    int max_batch_size;   /* images per executed batch */
    int max_batch_tokens; /* tokens per executed batch */
    int max_queue_delay_us;
    int max_queue_size;    /* requests waiting; more -> 503 */
    int max_queue_wait_ms; /* oldest waiting longer -> 503; 0 = off */
    int default_timeout_ms;
    int workers;      /* 0 = derived from the CPU limit */
    int http_threads; /* 0 = derived */
    int gemm_threads; /* 0 = derived: cpu limit / workers */
    int64_t max_body_bytes;
    int64_t body_budget_bytes; /* bodies held at once */
    int64_t max_image_pixels;
    int max_image_side;
    int connection_timeout_s;
    int max_connections;
    /* slow and greedy clients (server/conn_guard.h) */
    int receive_timeout_s;          /* headers + body of one request */
    int max_connections_per_client; /* 0: no cap but max_connections */
    int drain_timeout_s;
    int access_log;   /* ACCESS_LOG_* */
    int precision;    /* index into the precision option's choices */
    int gemm_backend; /* index into the gemm-backend option's choices */
    int console;      /* 1: the web console at / (server/console.h) */
    /* work and memory a request may cost (README "Limits") */
    int max_request_images;
    int64_t max_request_tokens;
    int64_t pixel_budget_bytes;  /* decoded pixels of queued + running requests */
    int64_t max_json_body_bytes; /* and CONFIG_JSON_PARSED_PER_BYTE x that once parsed */
    int parse_threads;
    int isa;                  /* index into the isa row's choices; 0 = auto */
    char cors_origin[256];    /* "": no CORS */
    char allowed_hosts[1024]; /* names a request's Host may give; "" or "*": any */
    /* the model repository (server/repository.h) */
    char model_repository[CONFIG_PATH_MAX]; /* "": serve --model alone */
    int model_control_mode;                 /* MODEL_CONTROL_* */
    int repository_poll_s;
    char load_model[4096];    /* explicit mode: names loaded at start, comma-separated; "*" all */
    char version_policy[256]; /* latest:N, specific:a,b,... or all */
} server_config;

enum { MODEL_CONTROL_NONE = 0, MODEL_CONTROL_POLL, MODEL_CONTROL_EXPLICIT };

/* version-policy, parsed (Triton's policies; the repository applies it). */
#define MAX_POLICY_VERSIONS 64
typedef struct {
    int all, latest; /* all: every version; latest N; else specific */
    int specific[MAX_POLICY_VERSIONS];
    int nspecific;
} version_policy;

/* Parses "latest:N", "specific:A,B,..." or "all" into *p. Returns 0, or -1
 * with a message quoting text. config_set checks every version-policy
 * value with it (flags, environment, config files, serve.conf). */
int config_parse_version_policy(const char *text, version_policy *p, char *err, size_t errlen);

/* Whether a request whose Host header is `host` (NULL: none sent) may be
 * served under allowed-hosts `allowed` (its syntax checked at start by
 * the setting's row): 1 yes, 0 no. Any Host when `allowed` is "" or names
 * `*`; an IP address, `localhost` or no Host at all always; else the
 * Host's name (its port dropped; case and one trailing dot ignored) must
 * be an entry, or be or end in a `.domain` entry. README "DNS rebinding"
 * says why each. */
int config_host_allowed(const char *allowed, const char *host);

typedef enum { CONFIG_STRING, CONFIG_INT, CONFIG_INT64, CONFIG_BOOL, CONFIG_ENUM } config_type;

/* What jansson may hold while it parses one body's JSON, per byte of
 * max-json-body-bytes (the setting's help says the number): a dense number
 * array (`0,` for each value) takes about 20 bytes per byte of JSON, its
 * nested form (shape [N, C, H, W]) a little more, so this holds every
 * tensor a body within the limit can carry; what holds more is containers
 * and tiny strings, never a tensor (16 MiB of `[{},{},...]` held 1.3 GB).
 * It bounds what one parse costs, and with parse-threads what all of them
 * do. */
#define CONFIG_JSON_PARSED_PER_BYTE 32

/* max-batch-size's bound: what one engine batch may hold (the statistics
 * count every size up to it: metrics.h) */
#define CONFIG_MAX_BATCH_SIZE 4096

/* One row of the table. Integers are bounded by [min, max]; enums list
 * their names in `choices` (NULL-terminated), stored as the index. */
typedef struct {
    const char *name;
    config_type type;
    size_t offset; /* into server_config */
    size_t size;   /* string capacity */
    const char *default_value;
    long long min, max;
    const char *const *choices;
    /* a string's syntax, checked as it is set (NULL: any): returns 0, or
     * -1 with a message */
    int (*check)(const char *value, char *err, size_t errlen);
    const char *help;
} config_option;

extern const config_option config_options[];
extern const int config_num_options;

/* What config_load asks the caller to do next. */
enum { CONFIG_RUN = 0, CONFIG_HELP, CONFIG_PRINT };

/* Fills *cfg from defaults, the config file (--config FILE in argv, else
 * COMROPE_CONFIG in envp), the environment (envp, NULL-terminated
 * "KEY=VALUE" strings, as main's third argument or `environ`) and the flags
 * in argv[1..argc-1]. `--key value` and `--key=value` mean the same for
 * every key, --config included: the flags are parsed once, for both the
 * file and the overrides. Returns CONFIG_RUN, CONFIG_HELP or CONFIG_PRINT, or -1
 * with a message naming the key and where its value came from. */
int config_load(server_config *cfg, int argc, char **argv, char **envp, char *err, size_t errlen);

/* The COMROPE_* variables of envp that name no setting (a typo such as
 * COMROPE_API_KEYFILE would otherwise be ignored without a word), written
 * space-separated into out. Returns how many; main logs them as a warning
 * (build and test scripts use COMROPE_* names of their own). */
int config_unknown_env(char **envp, char *out, size_t outlen);

/* Just the defaults (for tests and as a base). */
void config_defaults(server_config *cfg);

/* Sets one knob from text, as the file, environment and flags do.
 * `source` appears in the message ("flag", "COMROPE_PORT", "file:3").
 * Returns 0, or -1 naming the key. */
int config_set(server_config *cfg, const char *name, const char *value, const char *source, char *err,
               size_t errlen);

/* The most an operator's file (the config file, api-key-file, a model's
 * serve.conf) may hold. A real one is a few KB; without a cap, /dev/zero
 * given as one was read until the daemon was killed. */
#define CONFIG_FILE_MAX_BYTES (1 << 20)

/* Reads the file at `path` whole, as small_file_read (engine/small_file.h)
 * reads it, at most CONFIG_FILE_MAX_BYTES: a regular file, or, when
 * `pipes` is set, also a pipe (`--config <(envsubst < tpl)`,
 * `--api-key-file /dev/stdin`: a file named at start, where waiting for
 * the writer is what a shell user expects; a FIFO no one writes refused).
 * Not set for serve.conf, read by the model control thread at run time,
 * which must never wait on a writer. Returns 0, or -1 (SMALL_FILE_MISSING
 * when the path names nothing) with a message "<what>: <path>: why". */
int config_read_file(const char *what, const char *path, int pipes, char **data, size_t *len, char *err,
                     size_t errlen);

/* Reads a Redis-style file (config_read_file's: regular or a pipe, at
 * most CONFIG_FILE_MAX_BYTES): `key value` per line, `#` comments (on lines of
 * their own), blank lines, lines of any length within the file's cap. A
 * value with spaces must be double-quoted. An unknown key, a key set twice,
 * a malformed line or a file that cannot be read: -1 with a message naming
 * the file and line. */
int config_load_file(server_config *cfg, const char *path, char *err, size_t errlen);
/* The same, allowing only the keys of `allowed` (NULL-terminated): a
 * model's own settings file (server/repository.h; a regular file only, no
 * pipe). Another key: -1 naming the file, the line and the keys allowed;
 * SMALL_FILE_MISSING when there is no such file (the caller's "none"). */
int config_load_file_only(server_config *cfg, const char *path, const char *const *allowed, char *err,
                          size_t errlen);

/* The CPUs this process may run on (its affinity mask, else the online
 * count). */
int config_cpu_count(void);

/* The CPU limit of this process: ceil(quota / period) from the cgroup v2
 * file at `cpu_max_path` when a quota is set, else config_cpu_count(). */
int config_cpu_limit(const char *cpu_max_path);

/* The same for this process's own cgroup: its path is read from
 * `proc_self_cgroup` (the "0::" line of /proc/self/cgroup), and the
 * tightest cpu.max of that cgroup and its ancestors under `cgroup_root`
 * (/sys/fs/cgroup) wins. So a systemd CPUQuota=, a Docker --cpus or a
 * Kubernetes CPU limit all bound the derived thread counts. */
int config_cpu_limit_cgroup(const char *cgroup_root, const char *proc_self_cgroup);

/* The memory limit of this process's cgroup: the tightest memory.max in
 * bytes of that cgroup and its ancestors (found as for
 * config_cpu_limit_cgroup), or 0 when none is set ("max" everywhere, no
 * cgroup v2). A workspace larger than it can never be granted
 * (vit_context_params.memory_bytes). */
unsigned long long config_memory_limit_cgroup(const char *cgroup_root, const char *proc_self_cgroup);

/* Replaces the 0 ("derived") thread counts with values that keep
 * workers * gemm_threads <= cpu_limit. gflop_per_image is the model's
 * forward cost at its training resolution (< 0: unknown): a small model
 * (below CONFIG_SMALL_MODEL_GFLOP) gets one single-threaded worker per CPU
 * when neither count was given. */
#define CONFIG_SMALL_MODEL_GFLOP 0.5
void config_derive_threads(server_config *cfg, int cpu_limit, double gflop_per_image);

/* `key value` lines of the resolved table (what --print-config shows; the
 * output is itself a valid config file giving the same table: the `config`
 * line is a comment, since a file cannot name another). */
void config_print(const server_config *cfg, FILE *out);
void config_usage(FILE *out);

/* The settings table of README.md (Markdown: header and one row per key);
 * tests/test_readme.c fails when README.md holds anything else. */
void config_markdown(FILE *out);

#endif
