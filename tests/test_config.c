/* test_config.c: config/ precedence (defaults < file < env < flags) and the
 * refusal of bad values with the key named. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api_keys.h"
#include "config.h"
#include "check_run.h"

static char tmpfile_path[64];

static const char *write_config(const char *text) {
    snprintf(tmpfile_path, sizeof(tmpfile_path), "/tmp/test_config_XXXXXX");
    int fd = mkstemp(tmpfile_path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return tmpfile_path;
}

START_TEST(defaults) {
    server_config c;
    char err[256];
    char *argv[] = {"comrope-serve", NULL};
    char *envp[] = {NULL};
    ck_assert_int_eq(config_load(&c, 1, argv, envp, err, sizeof(err)), CONFIG_RUN);
    ck_assert_int_eq(c.port, 8080);
    ck_assert_str_eq(c.host, "0.0.0.0");
    ck_assert_int_eq(c.max_batch_size, 8);
    ck_assert_int_eq(c.max_queue_delay_us, 2000);
    ck_assert_int_eq(c.metrics_port, 0);
    ck_assert_int_eq(c.access_log, ACCESS_LOG_TEXT);
    ck_assert_int_eq(c.precision, 0); /* fp32 unless asked */
    ck_assert_str_eq(c.model, "");
}
END_TEST

/* max-json-body-bytes' help (and so README) says what a body may hold
 * once parsed: the number the daemon uses, not a copy that could drift. */
START_TEST(json_parsed_factor_in_help) {
    char want[32];
    snprintf(want, sizeof(want), ": %dx that", CONFIG_JSON_PARSED_PER_BYTE);
    int found = 0;
    for (int i = 0; i < config_num_options; i++) {
        if (strcmp(config_options[i].name, "max-json-body-bytes")) continue;
        ck_assert_msg(strstr(config_options[i].help, want), "help \"%s\" lacks \"%s\"",
                      config_options[i].help, want);
        found = 1;
    }
    ck_assert(found);
}
END_TEST

START_TEST(precedence) {
    server_config c;
    char err[256];
    const char *path = write_config("# a comment\n\nport 9000\nmax-batch-size 4\n"
                                    "workers 3\nmodel-name \"from file\"\naccess-log json\n"
                                    "precision bf16\n");
    char *argv[] = {"comrope-serve", "--config", (char *)path, "--port", "9002", NULL};
    char *envp[] = {"COMROPE_PORT=9001", "COMROPE_MAX_BATCH_SIZE=5", "UNRELATED=1", NULL};
    ck_assert_int_eq(config_load(&c, 5, argv, envp, err, sizeof(err)), CONFIG_RUN);
    ck_assert_int_eq(c.port, 9002);        /* flag beats env beats file */
    ck_assert_int_eq(c.max_batch_size, 5); /* env beats file */
    ck_assert_int_eq(c.workers, 3);        /* file beats default */
    ck_assert_str_eq(c.model_name, "from file");
    ck_assert_int_eq(c.access_log, ACCESS_LOG_JSON);
    ck_assert_int_eq(c.precision, 1); /* bf16 from the file */
    ck_assert_str_eq(c.config, path);
    unlink(path);
}
END_TEST

START_TEST(config_from_env_and_equals_form) {
    server_config c;
    char err[256];
    const char *path = write_config("max-queue-size 7\n");
    char env_config[128];
    snprintf(env_config, sizeof(env_config), "COMROPE_CONFIG=%s", path);
    char *argv[] = {"comrope-serve", "--max-queue-delay-us=0", NULL};
    char *envp[] = {env_config, NULL};
    ck_assert_int_eq(config_load(&c, 2, argv, envp, err, sizeof(err)), CONFIG_RUN);
    ck_assert_int_eq(c.max_queue_size, 7);
    ck_assert_int_eq(c.max_queue_delay_us, 0);
    unlink(path);
}
END_TEST

START_TEST(actions) {
    server_config c;
    char err[256];
    char *envp[] = {NULL};
    char *a1[] = {"x", "--port", "1", "--help", NULL};
    ck_assert_int_eq(config_load(&c, 4, a1, envp, err, sizeof(err)), CONFIG_HELP);
    char *a2[] = {"x", "--print-config", "--port", "81", NULL};
    ck_assert_int_eq(config_load(&c, 4, a2, envp, err, sizeof(err)), CONFIG_PRINT);
    ck_assert_int_eq(c.port, 81);
    FILE *f = tmpfile();
    config_print(&c, f);
    config_usage(f);
    ck_assert_int_gt(ftell(f), 100);
    fclose(f);
}
END_TEST

/* Each bad input must fail and name the key (or the flag). */
static void expect_refused(int argc, char **argv, char **envp, const char *needle) {
    server_config c;
    char err[512] = "";
    ck_assert_int_eq(config_load(&c, argc, argv, envp, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, needle) != NULL, "message \"%s\" lacks \"%s\"", err, needle);
}

START_TEST(bad_values) {
    char *none[] = {NULL};
    char *a1[] = {"x", "--port", "70000", NULL};
    expect_refused(3, a1, none, "port");
    char *a2[] = {"x", "--max-batch-size", "eight", NULL};
    expect_refused(3, a2, none, "max-batch-size");
    char *a3[] = {"x", "--max-batch-size", "0", NULL};
    expect_refused(3, a3, none, "out of range");
    char *a4[] = {"x", "--access-log", "xml", NULL};
    expect_refused(3, a4, none, "access-log");
    char *a5[] = {"x", "--no-such-knob", "1", NULL};
    expect_refused(3, a5, none, "no-such-knob");
    char *a6[] = {"x", "--port", NULL};
    expect_refused(2, a6, none, "--port needs a value");
    char *a7[] = {"x", "stray", NULL};
    expect_refused(2, a7, none, "stray");
    char *a8[] = {"x", NULL};
    char *e8[] = {"COMROPE_WORKERS=-1", NULL};
    expect_refused(1, a8, e8, "COMROPE_WORKERS");
    char *e9[] = {"COMROPE_METRICS_OPEN=maybe", NULL};
    expect_refused(1, a8, e9, "metrics-open");
    char *e10[] = {"COMROPE_CONFIG=/nonexistent/comrope.conf", NULL};
    expect_refused(1, a8, e10, "/nonexistent/comrope.conf");
    char *a11[] = {"x", "--max-body-bytes", "99999999999999999999", NULL};
    expect_refused(3, a11, none, "max-body-bytes");
    char *e12[] = {"COMROPE_PRECISION=fp16", NULL};
    expect_refused(1, a8, e12, "precision");
    /* a control character in a string (a CR/LF in cors-origin closed every
     * connection unanswered) */
    char *a13[] = {"x", "--cors-origin", "https://a.example\r\nX-Evil: 1", NULL};
    expect_refused(3, a13, none, "control character 0x0d");
    char *e14[] = {"COMROPE_MODEL_NAME=a\tb", NULL};
    expect_refused(1, a8, e14, "model-name (COMROPE_MODEL_NAME): control character 0x09");
    /* version-policy's syntax is checked as it is set, so --print-config
     * and serve.conf refuse what the repository would (it printed latest:0) */
    char *a15[] = {"x", "--version-policy", "latest:0", "--print-config", NULL};
    expect_refused(4, a15, none, "version-policy (flag --version-policy): \"latest:0\" is not latest:N");
    char *e16[] = {"COMROPE_VERSION_POLICY=specific:1,,2", NULL};
    expect_refused(1, a8, e16, "version-policy (COMROPE_VERSION_POLICY)");
    /* bf16 compute with an ISA that has none: a settings conflict, not a
     * bad model (the load failed, exit 1) */
    char *a17[] = {"x", "--precision", "bf16", "--isa", "avx2", NULL};
    expect_refused(5, a17, none, "precision bf16 needs isa avx512 or auto, not avx2");
}
END_TEST

/* --console on|off (the web console at /): on by default, off from any
 * source, and nothing but on or off. */
START_TEST(console_setting) {
    server_config c;
    char err[512] = "";
    char *none[] = {NULL};
    char *a0[] = {"x", NULL};
    ck_assert_int_eq(config_load(&c, 1, a0, none, err, sizeof(err)), CONFIG_RUN);
    ck_assert_int_eq(c.console, 1);
    char *a1[] = {"x", "--console", "off", NULL};
    ck_assert_int_eq(config_load(&c, 3, a1, none, err, sizeof(err)), CONFIG_RUN);
    ck_assert_int_eq(c.console, 0);
    char *e2[] = {"COMROPE_CONSOLE=off", NULL};
    char *a2[] = {"x", "--console=on", NULL};
    ck_assert_int_eq(config_load(&c, 1, a0, e2, err, sizeof(err)), CONFIG_RUN);
    ck_assert_int_eq(c.console, 0);
    ck_assert_int_eq(config_load(&c, 2, a2, e2, err, sizeof(err)), CONFIG_RUN); /* flag beats env */
    ck_assert_int_eq(c.console, 1);
    char *a3[] = {"x", "--console", "yes", NULL};
    expect_refused(3, a3, none, "console (flag --console): \"yes\" is not one of off, on");
    /* --help and --print-config know it */
    FILE *f = tmpfile();
    config_usage(f);
    config_print(&c, f);
    rewind(f);
    char text[16384];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = '\0';
    fclose(f);
    ck_assert_ptr_nonnull(strstr(text, "--console "));
    ck_assert_ptr_nonnull(strstr(text, "\nconsole on\n"));
}
END_TEST

START_TEST(bad_file_lines) {
    char *none[] = {NULL};
    const char *p1 = write_config("port\n");
    char *a1[] = {"x", "--config", (char *)p1, NULL};
    expect_refused(3, a1, none, ":1: expected `key value`");
    unlink(p1);
    const char *p2 = write_config("# ok\nport 80\nbogus 1\n");
    char *a2[] = {"x", "--config", (char *)p2, NULL};
    expect_refused(3, a2, none, "bogus");
    unlink(p2);
    const char *p3 = write_config("host \"unterminated\n");
    char *a3[] = {"x", "--config", (char *)p3, NULL};
    expect_refused(3, a3, none, ":1:");
    unlink(p3);
}
END_TEST

START_TEST(cpu_limit_and_threads) {
    const char *p = write_config("150000 100000\n");
    int n = config_cpu_limit(p);
    ck_assert_int_ge(n, 1);
    ck_assert_int_le(n, 2);
    unlink(p);
    p = write_config("max 100000\n");
    ck_assert_int_eq(config_cpu_limit(p), config_cpu_count());
    unlink(p);
    ck_assert_int_eq(config_cpu_limit("/nonexistent"), config_cpu_count());
    /* a quota near LLONG_MAX is no limit, not an overflow (found by fuzz_config) */
    p = write_config("9223372036854775807 100000\n");
    ck_assert_int_eq(config_cpu_limit(p), config_cpu_count());
    unlink(p);
    p = write_config("9223372036854775807 9223372036854775807\n");
    ck_assert_int_eq(config_cpu_limit(p), 1);
    unlink(p);
    ck_assert_int_ge(config_cpu_count(), 1);
    ck_assert_int_le(config_cpu_count(), (int)sysconf(_SC_NPROCESSORS_ONLN));

    server_config c;
    config_defaults(&c);
    config_derive_threads(&c, 8, -1);
    ck_assert_int_le(c.workers * c.gemm_threads, 8);
    ck_assert_int_ge(c.http_threads, 1);
    config_defaults(&c);
    c.workers = 3;
    config_derive_threads(&c, 2, -1);
    ck_assert_int_eq(c.gemm_threads, 1);
    config_defaults(&c);
    c.gemm_threads = 5; /* an explicit value is kept */
    config_derive_threads(&c, 2, -1);
    ck_assert_int_eq(c.gemm_threads, 5);
    /* a small model: one single-threaded worker per CPU, unless told otherwise */
    config_defaults(&c);
    config_derive_threads(&c, 4, 0.04);
    ck_assert_int_eq(c.workers, 4);
    ck_assert_int_eq(c.gemm_threads, 1);
    config_defaults(&c);
    config_derive_threads(&c, 4, 35.0); /* ViT-B/16: GEMMs split over the CPUs */
    ck_assert_int_eq(c.workers * c.gemm_threads, 4);
    ck_assert_int_gt(c.gemm_threads, 1);
    config_defaults(&c);
    c.workers = 1; /* an explicit count wins over the rule */
    config_derive_threads(&c, 4, 0.04);
    ck_assert_int_eq(c.workers, 1);
    ck_assert_int_eq(c.gemm_threads, 4);
}
END_TEST

/* A fake cgroup v2 tree: root/cpu.max "max", root/a/cpu.max 1.5 CPUs
 * (rounded up: 2), root/a/b/cpu.max 0.5 CPU (1) or "max", and a
 * /proc/self/cgroup saying the process is in /a/b. */
static char cg_root[64];

static void write_file(const char *dir, const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(cpu_limit_of_own_cgroup) {
    char a[128], ab[128], proc[128];
    snprintf(cg_root, sizeof(cg_root), "/tmp/test_cgroup_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(cg_root));
    snprintf(a, sizeof(a), "%s/a", cg_root);
    snprintf(ab, sizeof(ab), "%s/a/b", cg_root);
    snprintf(proc, sizeof(proc), "%s/self_cgroup", cg_root);
    ck_assert_int_eq(mkdir(a, 0700), 0);
    ck_assert_int_eq(mkdir(ab, 0700), 0);
    write_file(cg_root, "cpu.max", "max 100000\n");
    write_file(a, "cpu.max", "150000 100000\n");
    write_file(ab, "cpu.max", "50000 100000\n");
    write_file(cg_root, "self_cgroup", "0::/a/b\n");
    int cpus = config_cpu_count();
    ck_assert_int_eq(config_cpu_limit_cgroup(cg_root, proc), 1); /* its own quota */
    write_file(ab, "cpu.max", "max 100000\n");
    ck_assert_int_eq(config_cpu_limit_cgroup(cg_root, proc), cpus < 2 ? cpus : 2); /* the parent's */
    write_file(cg_root, "self_cgroup", "0::/\n"); /* a container's namespace */
    ck_assert_int_eq(config_cpu_limit_cgroup(cg_root, proc), cpus);
    write_file(cg_root, "cpu.max", "100000 100000\n");
    ck_assert_int_eq(config_cpu_limit_cgroup(cg_root, proc), 1);
    write_file(cg_root, "self_cgroup", "1:name=systemd:/x\n"); /* no v2 line: the root */
    ck_assert_int_eq(config_cpu_limit_cgroup(cg_root, proc), 1);
    ck_assert_int_eq(config_cpu_limit_cgroup(cg_root, "/nonexistent"), 1);
    write_file(cg_root, "self_cgroup", "0::/gone/away\n"); /* missing files: no limit from them */
    ck_assert_int_eq(config_cpu_limit_cgroup(cg_root, proc), 1);
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", cg_root);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* The tightest memory.max of the process's cgroup and its ancestors, in
 * bytes; 0 where none is set. */
START_TEST(memory_limit_of_own_cgroup) {
    char a[128], ab[128], proc[128];
    snprintf(cg_root, sizeof(cg_root), "/tmp/test_cgroup_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(cg_root));
    snprintf(a, sizeof(a), "%s/a", cg_root);
    snprintf(ab, sizeof(ab), "%s/a/b", cg_root);
    snprintf(proc, sizeof(proc), "%s/self_cgroup", cg_root);
    ck_assert_int_eq(mkdir(a, 0700), 0);
    ck_assert_int_eq(mkdir(ab, 0700), 0);
    write_file(cg_root, "self_cgroup", "0::/a/b\n");
    ck_assert_uint_eq(config_memory_limit_cgroup(cg_root, proc), 0); /* no files */
    write_file(cg_root, "memory.max", "max\n");
    write_file(a, "memory.max", "8589934592\n");
    write_file(ab, "memory.max", "1073741824\n");
    ck_assert_uint_eq(config_memory_limit_cgroup(cg_root, proc), 1073741824ULL); /* its own */
    write_file(ab, "memory.max", "max\n");
    ck_assert_uint_eq(config_memory_limit_cgroup(cg_root, proc), 8589934592ULL); /* the parent's */
    write_file(cg_root, "self_cgroup", "0::/\n"); /* a container's namespace: the root's */
    ck_assert_uint_eq(config_memory_limit_cgroup(cg_root, proc), 0);
    write_file(cg_root, "memory.max", "536870912\n");
    ck_assert_uint_eq(config_memory_limit_cgroup(cg_root, proc), 536870912ULL);
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", cg_root);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* Both flag forms, --config included, in any order: the file (and with it
 * api-key-file) is read every time. */
START_TEST(flag_forms_are_equal) {
    char err[512];
    const char *path = write_config("api-key-file /etc/keys\nport 9000\n");
    char eq[160];
    snprintf(eq, sizeof(eq), "--config=%s", path);
    char *none[] = {NULL};
    char *forms[][6] = {
        {"x", eq, NULL},
        {"x", "--config", (char *)path, NULL},
        {"x", "--workers=2", "--config", (char *)path, NULL},
        {"x", "--workers=2", eq, NULL},
        {"x", "--print-config", "--workers", "2", eq, NULL},
    };
    for (int k = 0; k < 5; k++) {
        server_config c;
        int argc = 0;
        while (forms[k][argc]) argc++;
        int rc = config_load(&c, argc, forms[k], none, err, sizeof(err));
        ck_assert_msg(rc >= 0, "form %d: %s", k, err);
        ck_assert_msg(strcmp(c.api_key_file, "/etc/keys") == 0, "form %d dropped the file", k);
        ck_assert_int_eq(c.port, 9000);
        ck_assert_str_eq(c.config, path);
        if (k >= 2) ck_assert_int_eq(c.workers, 2);
    }
    /* --key=value and --key value give the same table for every key */
    for (int i = 0; i < config_num_options; i++) {
        const config_option *o = &config_options[i];
        if (!strcmp(o->name, "config")) continue;
        const char *v = o->check                   ? o->default_value /* a valid string */
                        : o->type == CONFIG_STRING ? "s"
                        : o->type == CONFIG_BOOL   ? "no"
                        : o->type == CONFIG_ENUM   ? o->choices[1]
                                                   : "1";
        char flag[160], joined[200];
        snprintf(flag, sizeof(flag), "--%s", o->name);
        snprintf(joined, sizeof(joined), "--%s=%s", o->name, v);
        server_config a, b;
        /* the TLS pair is set together or not at all: its partner comes along */
        char *partner = !strcmp(o->name, "tls-cert-file")  ? "--tls-key-file=k"
                        : !strcmp(o->name, "tls-key-file") ? "--tls-cert-file=c"
                                                           : NULL;
        char *sep[] = {"x", flag, (char *)v, partner, NULL};
        char *one[] = {"x", joined, partner, NULL};
        ck_assert_int_eq(config_load(&a, partner ? 4 : 3, sep, none, err, sizeof(err)), CONFIG_RUN);
        ck_assert_int_eq(config_load(&b, partner ? 3 : 2, one, none, err, sizeof(err)), CONFIG_RUN);
        ck_assert_msg(memcmp(&a, &b, sizeof(a)) == 0, "--%s: the two forms differ", o->name);
    }
    unlink(path);
}
END_TEST

START_TEST(flag_slips_refused) {
    char *none[] = {NULL};
    /* a flag where a value should be is a missing value, not the value */
    char *a1[] = {"x", "--model-name", "--print-config", NULL};
    expect_refused(3, a1, none, "--model-name needs a value");
    char *a2[] = {"x", "--api-key-file", "--port", "80", NULL};
    expect_refused(4, a2, none, "--api-key-file needs a value");
    char *a3[] = {"x", "--config", "/a", "--config=/b", NULL};
    expect_refused(4, a3, none, "--config is given twice");
    /* one of the TLS pair alone would serve plain HTTP where HTTPS was meant */
    char *t1[] = {"x", "--tls-cert-file", "/c.pem", NULL};
    expect_refused(3, t1, none, "tls-cert-file is set but tls-key-file is not");
    char *t2env[] = {"COMROPE_TLS_KEY_FILE=/k.pem", NULL};
    char *t2[] = {"x", NULL};
    expect_refused(1, t2, t2env, "tls-key-file is set but tls-cert-file is not");
    char *a4[] = {"x", "--port=", NULL};
    expect_refused(2, a4, none, "port");
    char *a5[] = {"x", "--bogus=1", NULL};
    expect_refused(2, a5, none, "unknown option --bogus");
    /* --key=--x says that the value is meant */
    server_config c;
    char err[256];
    char *a6[] = {"x", "--model-name=--odd", NULL};
    ck_assert_int_eq(config_load(&c, 2, a6, none, err, sizeof(err)), CONFIG_RUN);
    ck_assert_str_eq(c.model_name, "--odd");
}
END_TEST

/* A file that is not what it seems is refused with its file and line. */
START_TEST(file_slips_refused) {
    char *none[] = {NULL};
    char expect[128];
    struct {
        const char *text, *needle;
    } cases[] = {
        {"port 80\n\nmax-batch-sise 4\n", ":3: unknown key \"max-batch-sise\""},
        {"port 80 # the port\n", ":1: a value with spaces must be double-quoted"},
        {"model-name two words\n", ":1: a value with spaces must be double-quoted"},
        {"port 80\nport 81\n", ":2: port is already set on line 1"},
        {"model-name \"open\n", ":1: unterminated"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const char *p = write_config(cases[k].text);
        char *a[] = {"x", "--config", (char *)p, NULL};
        snprintf(expect, sizeof(expect), "%s%s", p, cases[k].needle);
        expect_refused(3, a, none, expect);
        unlink(p);
    }
    /* a directory cannot be read as a file */
    char *a2[] = {"x", "--config", "/tmp", NULL};
    expect_refused(3, a2, none, "/tmp");
}
END_TEST

/* A number with a space before or after it is refused alike from every
 * source (strtoll skipped a leading one: " 8" was 8, "8 " refused): a
 * stray space in a flag or a variable is a quoting slip, and a file's
 * unquoted values are trimmed already, so only a quoted one keeps it. */
START_TEST(number_spaces_refused) {
    char *none[] = {NULL};
    const char *values[] = {" 8", "8 ", "\t8", "8\n"};
    char expect[128];
    for (size_t k = 0; k < sizeof(values) / sizeof(values[0]); k++) {
        char *a[] = {"x", "--max-batch-size", (char *)values[k], NULL};
        snprintf(expect, sizeof(expect),
                 "max-batch-size (flag --max-batch-size): expected an integer, not \"%s\"", values[k]);
        expect_refused(3, a, none, expect);
        char env[64], *e[] = {env, NULL}, *a1[] = {"x", NULL};
        snprintf(env, sizeof(env), "COMROPE_MAX_BATCH_SIZE=%s", values[k]);
        snprintf(expect, sizeof(expect),
                 "max-batch-size (COMROPE_MAX_BATCH_SIZE): expected an integer, not \"%s\"", values[k]);
        expect_refused(1, a1, e, expect);
    }
    /* the same number quoted with a space in a file */
    const char *lines[] = {"max-batch-size \" 8\"\n", "max-batch-size \"8 \"\n"};
    for (size_t k = 0; k < 2; k++) {
        const char *p = write_config(lines[k]);
        char *a[] = {"x", "--config", (char *)p, NULL};
        snprintf(expect, sizeof(expect), "max-batch-size (%s:1): expected an integer, not \"%s\"", p,
                 k ? "8 " : " 8");
        expect_refused(3, a, none, expect);
        unlink(p);
    }
    /* unquoted, the file's spaces around a value are the line's, not the value's */
    const char *p = write_config("max-batch-size   8  \n");
    char *a[] = {"x", "--config", (char *)p, NULL};
    server_config c;
    char err[512];
    ck_assert_msg(config_load(&c, 3, a, none, err, sizeof(err)) == CONFIG_RUN, "%s", err);
    ck_assert_int_eq(c.max_batch_size, 8);
    unlink(p);
}
END_TEST

/* --load-model adds a name per flag (Triton's repeatable flag); other keys
 * keep the last; a model's serve.conf takes only the per-model keys and
 * names the file and line of another. */
START_TEST(repository_settings) {
    server_config c;
    char err[1024];
    char *none[] = {NULL};
    char *a[] = {
        "x", "--load-model", "a", "--load-model=b", "--load-model", "c", "--port", "1", "--port", "2", NULL};
    ck_assert_int_eq(config_load(&c, 10, a, none, err, sizeof(err)), CONFIG_RUN);
    ck_assert_str_eq(c.load_model, "a,b,c");
    ck_assert_int_eq(c.port, 2);
    char *b[] = {"x", "--model-control-mode", "explicit", "--version-policy", "specific:1,3", NULL};
    ck_assert_int_eq(config_load(&c, 5, b, none, err, sizeof(err)), CONFIG_RUN);
    ck_assert_int_eq(c.model_control_mode, MODEL_CONTROL_EXPLICIT);
    ck_assert_str_eq(c.version_policy, "specific:1,3");
    static const char *const allowed[] = {"max-batch-size", "workers", NULL};
    const char *p = write_config("max-batch-size 3\nworkers 2\n");
    config_defaults(&c);
    ck_assert_int_eq(config_load_file_only(&c, p, allowed, err, sizeof(err)), 0);
    ck_assert_int_eq(c.max_batch_size, 3);
    ck_assert_int_eq(c.workers, 2);
    unlink(p);
    p = write_config("workers 2\n# a comment\nport 9\n");
    ck_assert_int_eq(config_load_file_only(&c, p, allowed, err, sizeof(err)), -1);
    char expect[256];
    snprintf(expect, sizeof(expect), "%s:3: \"port\" cannot be set here (allowed: max-batch-size, workers)",
             p);
    ck_assert_msg(strstr(err, expect), "%s", err);
    unlink(p);
    /* no file there is the caller's "none" (a model without serve.conf),
     * told by the open, not by a stat before it; a directory is an error */
    config_defaults(&c);
    ck_assert_int_eq(config_load_file_only(&c, p, allowed, err, sizeof(err)), SMALL_FILE_MISSING);
    ck_assert_int_eq(c.max_batch_size, 8);
    ck_assert_int_eq(config_load_file_only(&c, "/tmp", allowed, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "is a directory"), "%s", err);
}
END_TEST

/* allowed-hosts: what a Host header may name (config_host_allowed), and
 * the entries the setting takes. A rebound page's Host is its own name
 * (README "DNS rebinding"). */
START_TEST(allowed_hosts) {
    static const struct {
        const char *allowed, *host;
        int want;
    } cases[] = {
        {"", "attacker.example", 1}, /* the default: any */
        {"*", "attacker.example", 1},
        {"models.example, *", "attacker.example", 1},
        {"models.example", "attacker.example", 0},
        {"models.example", "attacker.example:8080", 0},
        {"models.example", "models.example", 1},
        {"models.example", "models.example:8080", 1},  /* any port of it */
        {"models.example", "Models.EXAMPLE.:8080", 1}, /* case, a trailing dot */
        {"models.example.", "models.example", 1},
        {" a.example , models.example ", "models.example", 1},
        {"models.example", "sub.models.example", 0},
        {"models.example", "xmodels.example", 0},
        {".models.example", "models.example", 1}, /* a domain: itself and below */
        {".models.example", "a.b.models.example:1", 1},
        {".models.example", "xmodels.example", 0},
        {".models.example", "models.example.evil", 0},
        /* never rebindable: IP addresses, localhost; no Host (HTTP/1.0) */
        {"models.example", "127.0.0.1:8080", 1},
        {"models.example", "10.1.2.3", 1},
        {"models.example", "10.1.2.3.:80", 1},
        {"models.example", "[::1]:8080", 1},
        {"models.example", "[fe80::1]", 1},
        {"models.example", "::1", 1}, /* unbracketed (--health-probe's, --host ::) */
        {"models.example", "localhost:8080", 1},
        {"models.example", "LOCALHOST.", 1},
        {"models.example", NULL, 1},
        {"models.example", "", 1},
        /* whitespace around the value (RFC 9112 OWS) is not part of it:
         * trailing whitespace got 421 where leading was dropped */
        {"models.example", "127.0.0.1 ", 1},
        {"models.example", " \t[::1]:8080\t ", 1},
        {"models.example", "models.example:8080 ", 1},
        {"models.example", "\tmodels.example\t", 1},
        {"models.example", "attacker.example ", 0},
        {"models.example", "models.example :80", 0},
        {"models.example", "  ", 1}, /* an empty Host, as none */
        /* not a host[:port], or a name that only looks like an address */
        {"models.example", "localhost.attacker.example", 0},
        {"models.example", "127.0.0.1.attacker.example", 0},
        {"models.example", "[::1", 0},
        {"models.example", "[not-v6]:80", 0},
        {"models.example", "models.example:80x", 0},
        {"models.example", "models.example:80:81", 0},
        {"models.example", "[::1]x", 0},
        {"models.example", ":8080", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ck_assert_msg(config_host_allowed(cases[i].allowed, cases[i].host) == cases[i].want,
                      "allowed-hosts \"%s\", Host \"%s\": want %d", cases[i].allowed,
                      cases[i].host ? cases[i].host : "(none)", cases[i].want);

    server_config c;
    char err[512];
    config_defaults(&c);
    ck_assert_str_eq(c.allowed_hosts, "");
    ck_assert_int_eq(config_set(&c, "allowed-hosts", "models.example,.corp.example,127.0.0.1,[::1],::1,*,,",
                                "test", err, sizeof(err)),
                     0);
    static const struct {
        const char *value, *why;
    } refused[] = {
        {"models.example:8080", "\"models.example:8080\": a port"},
        {"a.example,*.example.com", "\"*.example.com\": `*` stands alone"},
        {"models..example", "an empty label"},
        {".", "\".\": no name"},
        {"http://models.example", "\"http://models.example\": an origin"},
        {"models.example/", "'/' is not in a host name"},
        {"models example", "' ' is not in a host name"},
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        ck_assert_int_eq(config_set(&c, "allowed-hosts", refused[i].value, "test", err, sizeof(err)), -1);
        ck_assert_msg(strstr(err, refused[i].why), "%s: %s", refused[i].value, err);
    }
}
END_TEST

/* Lines of any length: a long comment is one comment, a long value one value. */
START_TEST(file_long_lines) {
    size_t n = 20000;
    char *text = malloc(n + 200);
    ck_assert_ptr_nonnull(text);
    text[0] = '#';
    memset(text + 1, 'x', n);
    snprintf(text + 1 + n, 200, "\nport 81\nmodel-name \"%s\"\n", "long line above");
    const char *p = write_config(text);
    char *a[] = {"x", "--config", (char *)p, NULL};
    char *none[] = {NULL};
    server_config c;
    char err[512];
    ck_assert_msg(config_load(&c, 3, a, none, err, sizeof(err)) == CONFIG_RUN, "%s", err);
    ck_assert_int_eq(c.port, 81);
    ck_assert_str_eq(c.model_name, "long line above");
    unlink(p);
    /* a value longer than its key allows is refused, not cut */
    memcpy(text, "model ", 6);
    memset(text + 6, 'y', n);
    text[6 + n] = '\n';
    text[7 + n] = '\0';
    p = write_config(text);
    char *b[] = {"x", "--config", (char *)p, NULL};
    expect_refused(3, b, none, ":1): value is longer than");
    unlink(p);
    free(text);
}
END_TEST

/* --print-config's output is itself a config file that gives the same table. */
START_TEST(printed_config_reloads) {
    char err[512];
    const char *path = write_config("port 9000\nmodel-name \"a name\"\naccess-log json\n");
    char *a[] = {"x", "--config", (char *)path, "--workers=3", NULL};
    char *none[] = {NULL};
    server_config c, d;
    ck_assert_int_eq(config_load(&c, 4, a, none, err, sizeof(err)), CONFIG_RUN);
    unlink(path);
    static char printed[64];
    snprintf(printed, sizeof(printed), "/tmp/test_config_print_XXXXXX");
    int fd = mkstemp(printed);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    config_print(&c, f);
    fclose(f);
    char *b[] = {"x", "--config", printed, NULL};
    ck_assert_msg(config_load(&d, 3, b, none, err, sizeof(err)) == CONFIG_RUN, "%s", err);
    unlink(printed);
    memcpy(d.config, c.config, sizeof(c.config));
    ck_assert_msg(memcmp(&c, &d, sizeof(c)) == 0, "the reloaded table differs");
}
END_TEST

START_TEST(unknown_environment_named) {
    char out[256];
    char *envp[] = {
        "COMROPE_PORT=1", "COMROPE_API_KEYFILE=/k", "COMROPE_CONFIG=", "PATH=/bin", "COMROPE_WORKER=2", NULL};
    ck_assert_int_eq(config_unknown_env(envp, out, sizeof(out)), 2);
    ck_assert_str_eq(out, "COMROPE_API_KEYFILE COMROPE_WORKER");
}
END_TEST

static char **keys_from(const char *text, char *err, size_t errlen) {
    const char *p = write_config(text);
    char **keys = api_keys_load(p, err, errlen);
    unlink(p);
    return keys;
}

START_TEST(api_key_file) {
    char err[512];
    /* a token of 5000 bytes stays one token; a long comment never becomes one */
    size_t n = 5000;
    char *text = malloc(2 * n + 100);
    ck_assert_ptr_nonnull(text);
    text[0] = '#';
    memset(text + 1, 'c', n);
    text[n + 1] = '\n';
    memset(text + n + 2, 'k', n);
    strcpy(text + 2 * n + 2, "\r\n\n  # indented comment\n  second-token\t\n");
    char **keys = keys_from(text, err, sizeof(err));
    ck_assert_msg(keys != NULL, "%s", err);
    ck_assert_uint_eq(strlen(keys[0]), n);
    ck_assert_int_eq(keys[0][0], 'k');
    ck_assert_str_eq(keys[1], "second-token");
    ck_assert_ptr_null(keys[2]);
    api_keys_free(keys);
    /* a file whose only line is a long comment holds no token */
    text[n + 1] = '\0';
    ck_assert_ptr_null(keys_from(text, err, sizeof(err)));
    ck_assert_msg(strstr(err, "holds no token"), "%s", err);
    free(text);
    ck_assert_ptr_null(keys_from("\n# only comments\n\n", err, sizeof(err)));
    ck_assert_msg(strstr(err, "holds no token"), "%s", err);
    ck_assert_ptr_null(keys_from("", err, sizeof(err)));
    ck_assert_msg(strstr(err, "holds no token"), "%s", err);
    /* a comment after a token, or "Bearer x", is not a token */
    ck_assert_ptr_null(keys_from("good\nsecret # prod\n", err, sizeof(err)));
    ck_assert_msg(strstr(err, ":2: a token is one word"), "%s", err);
    ck_assert_ptr_null(keys_from("Bearer abc\n", err, sizeof(err)));
    ck_assert_msg(strstr(err, ":1:"), "%s", err);
    /* cannot open, cannot read */
    ck_assert_ptr_null(api_keys_load("/nonexistent/keys", err, sizeof(err)));
    ck_assert_msg(strstr(err, "/nonexistent/keys: cannot open"), "%s", err);
    ck_assert_ptr_null(api_keys_load("/tmp", err, sizeof(err)));
    ck_assert_msg(strstr(err, "/tmp: is a directory"), "%s", err);
}
END_TEST

/* A path in /tmp for a FIFO, a symlink or a big file, made by the test. */
static const char *scratch_path(char *buf, size_t len, const char *what) {
    snprintf(buf, len, "/tmp/test_config_%s_%d", what, (int)getpid());
    unlink(buf);
    return buf;
}

/* `size` bytes of comment lines, then `tail`, into f. */
static void put_sized(FILE *f, size_t size, const char *tail) {
    size_t body = size - strlen(tail);
    for (size_t i = 0; i < body; i += 64) {
        size_t n = body - i < 64 ? body - i : 64;
        for (size_t k = 0; k + 1 < n; k++) fputc(k ? 'x' : '#', f);
        fputc('\n', f);
    }
    fputs(tail, f);
}

/* A file of `size` bytes of comment lines, then `tail`. */
static void write_sized(const char *path, size_t size, const char *tail) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    put_sized(f, size, tail);
    ck_assert_int_eq(fclose(f), 0);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq((long long)st.st_size, (long long)size);
}

/* A pipe whose writer (a child) gives what write_sized would, as a shell's
 * `<(...)` does: its read end's path (/dev/fd/N) into buf; *child to wait
 * for, with pipe_done, once it has been read. */
static const char *pipe_sized(char *buf, size_t len, size_t size, const char *tail, pid_t *child, int *fd) {
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) { /* a refusal at the cap closes the read end: stop there */
        signal(SIGPIPE, SIG_DFL);
        close(p[0]);
        FILE *f = fdopen(p[1], "w");
        if (f) put_sized(f, size, tail);
        _exit(f && fclose(f) == 0 ? 0 : 1);
    }
    close(p[1]);
    *child = pid;
    *fd = p[0];
    snprintf(buf, len, "/dev/fd/%d", p[0]);
    return buf;
}

static void pipe_done(pid_t child, int fd) {
    close(fd);
    int status;
    ck_assert_int_eq(waitpid(child, &status, 0), child);
}

/* An operator's file must be a regular one (symlinks followed) or a pipe
 * with a writer, of at most CONFIG_FILE_MAX_BYTES: --config /dev/zero (or a
 * symlink to it) was read by getline until the daemon was killed, a FIFO no
 * one writes blocked the start for good. */
START_TEST(config_file_regular_and_bounded) {
    char *none[] = {NULL};
    char fifo[64], link[64], big[64], expect[256];
    char *a1[] = {"x", "--config", "/dev/zero", NULL};
    expect_refused(3, a1, none, "config: /dev/zero: is a device, not a regular file or a pipe");
    scratch_path(link, sizeof(link), "zero_link");
    ck_assert_int_eq(symlink("/dev/zero", link), 0);
    char *e2[] = {NULL, NULL}, env[128], *a0[] = {"x", NULL};
    snprintf(env, sizeof(env), "COMROPE_CONFIG=%s", link);
    e2[0] = env;
    snprintf(expect, sizeof(expect), "config: %s: is a device, not a regular file or a pipe", link);
    expect_refused(1, a0, e2, expect);
    unlink(link);
    /* a FIFO no one writes: the start does not wait on it (it hung) */
    scratch_path(fifo, sizeof(fifo), "fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    char *a3[] = {"x", "--config", fifo, NULL};
    snprintf(expect, sizeof(expect), "config: %s: a pipe that gave nothing", fifo);
    expect_refused(3, a3, none, expect);
    /* a model's serve.conf is never read from one: the control thread
     * must not wait on a writer */
    const char *only[] = {"max-batch-size", NULL};
    server_config c;
    char err[512];
    config_defaults(&c);
    ck_assert_int_eq(config_load_file_only(&c, fifo, only, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "is a FIFO, not a regular file"), "%s", err);
    unlink(fifo);
    /* a pipe with a writer (`--config <(envsubst < tpl)`) is read to its
     * end, capped as a file is: at the cap, read; one byte over, refused */
    char pipe_at[64];
    pid_t child;
    int fd;
    char *a6[] = {"x", "--config", (char *)pipe_sized(pipe_at, sizeof(pipe_at), 8, "port 83\n", &child, &fd),
                  NULL};
    ck_assert_msg(config_load(&c, 3, a6, none, err, sizeof(err)) == CONFIG_RUN, "%s", err);
    ck_assert_int_eq(c.port, 83);
    pipe_done(child, fd);
    pipe_sized(pipe_at, sizeof(pipe_at), CONFIG_FILE_MAX_BYTES, "port 84\n", &child, &fd);
    ck_assert_msg(config_load(&c, 3, a6, none, err, sizeof(err)) == CONFIG_RUN, "%s", err);
    ck_assert_int_eq(c.port, 84);
    pipe_done(child, fd);
    pipe_sized(pipe_at, sizeof(pipe_at), CONFIG_FILE_MAX_BYTES + 1, "port 84\n", &child, &fd);
    snprintf(expect, sizeof(expect), "config: %s: is larger than %d bytes", pipe_at, CONFIG_FILE_MAX_BYTES);
    expect_refused(3, a6, none, expect);
    pipe_done(child, fd);
    char *a4[] = {"x", "--config", "/tmp", NULL};
    expect_refused(3, a4, none, "config: /tmp: is a directory, not a regular file or a pipe");
    /* the cap itself: at it, read; one byte over, refused naming it */
    scratch_path(big, sizeof(big), "big");
    write_sized(big, CONFIG_FILE_MAX_BYTES, "port 81\n");
    char *a5[] = {"x", "--config", big, NULL};
    ck_assert_msg(config_load(&c, 3, a5, none, err, sizeof(err)) == CONFIG_RUN, "%s", err);
    ck_assert_int_eq(c.port, 81);
    write_sized(big, CONFIG_FILE_MAX_BYTES + 1, "port 81\n");
    snprintf(expect, sizeof(expect), "config: %s: is larger than %d bytes", big, CONFIG_FILE_MAX_BYTES);
    expect_refused(3, a5, none, expect);
    unlink(big);
}
END_TEST

START_TEST(api_key_file_regular_and_bounded) {
    char err[512], fifo[64], link[64], big[64], expect[256];
    ck_assert_ptr_null(api_keys_load("/dev/zero", err, sizeof(err)));
    ck_assert_msg(strstr(err, "api-key-file: /dev/zero: is a device, not a regular file or a pipe"), "%s",
                  err);
    scratch_path(link, sizeof(link), "keys_link");
    ck_assert_int_eq(symlink("/dev/zero", link), 0);
    ck_assert_ptr_null(api_keys_load(link, err, sizeof(err)));
    ck_assert_msg(strstr(err, "is a device, not a regular file or a pipe"), "%s", err);
    unlink(link);
    scratch_path(fifo, sizeof(fifo), "keys_fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ck_assert_ptr_null(api_keys_load(fifo, err, sizeof(err)));
    ck_assert_msg(strstr(err, "a pipe that gave nothing"), "%s", err);
    unlink(fifo);
    /* `--api-key-file <(vault read ...)`: read to its end */
    char pipe_at[64];
    pid_t child;
    int fd;
    char **from_pipe =
        api_keys_load(pipe_sized(pipe_at, sizeof(pipe_at), 6, "token\n", &child, &fd), err, sizeof(err));
    ck_assert_msg(from_pipe != NULL, "%s", err);
    ck_assert_str_eq(from_pipe[0], "token");
    api_keys_free(from_pipe);
    pipe_done(child, fd);
    scratch_path(big, sizeof(big), "keys_big");
    write_sized(big, CONFIG_FILE_MAX_BYTES, "token\n");
    char **keys = api_keys_load(big, err, sizeof(err));
    ck_assert_msg(keys != NULL, "%s", err);
    ck_assert_str_eq(keys[0], "token");
    api_keys_free(keys);
    write_sized(big, CONFIG_FILE_MAX_BYTES + 1, "token\n");
    ck_assert_ptr_null(api_keys_load(big, err, sizeof(err)));
    snprintf(expect, sizeof(expect), "api-key-file: %s: is larger than %d bytes", big, CONFIG_FILE_MAX_BYTES);
    ck_assert_msg(strstr(err, expect), "%s", err);
    unlink(big);
}
END_TEST

int main(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, json_parsed_factor_in_help);
    tcase_add_test(tc, precedence);
    tcase_add_test(tc, config_from_env_and_equals_form);
    tcase_add_test(tc, actions);
    tcase_add_test(tc, bad_values);
    tcase_add_test(tc, bad_file_lines);
    tcase_add_test(tc, console_setting);
    tcase_add_test(tc, cpu_limit_and_threads);
    tcase_add_test(tc, cpu_limit_of_own_cgroup);
    tcase_add_test(tc, memory_limit_of_own_cgroup);
    tcase_add_test(tc, flag_forms_are_equal);
    tcase_add_test(tc, flag_slips_refused);
    tcase_add_test(tc, file_slips_refused);
    tcase_add_test(tc, number_spaces_refused);
    tcase_add_test(tc, file_long_lines);
    tcase_add_test(tc, repository_settings);
    tcase_add_test(tc, allowed_hosts);
    tcase_add_test(tc, unknown_environment_named);
    tcase_add_test(tc, printed_config_reloads);
    tcase_add_test(tc, api_key_file);
    tcase_add_test(tc, config_file_regular_and_bounded);
    tcase_add_test(tc, api_key_file_regular_and_bounded);
    suite_add_tcase(s, tc);
    return check_run(s);
}
