/* test_config.c: config/ precedence (defaults < file < env < flags) and the
 * refusal of bad values with the key named. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

START_TEST(precedence) {
    server_config c;
    char err[256];
    const char *path = write_config("# a comment\n\nport 9000\nmax-batch-size 4\n"
                                    "workers 3\nmodel-name \"from file\"\naccess-log json\n"
                                    "precision bf16\n");
    char *argv[] = {"comrope-serve", "--config", (char *)path, "--port", "9002", NULL};
    char *envp[] = {"COMROPE_PORT=9001", "COMROPE_MAX_BATCH_SIZE=5", "UNRELATED=1", NULL};
    ck_assert_int_eq(config_load(&c, 5, argv, envp, err, sizeof(err)), CONFIG_RUN);
    ck_assert_int_eq(c.port, 9002);           /* flag beats env beats file */
    ck_assert_int_eq(c.max_batch_size, 5);    /* env beats file */
    ck_assert_int_eq(c.workers, 3);           /* file beats default */
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

int main(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, precedence);
    tcase_add_test(tc, config_from_env_and_equals_form);
    tcase_add_test(tc, actions);
    tcase_add_test(tc, bad_values);
    tcase_add_test(tc, bad_file_lines);
    tcase_add_test(tc, cpu_limit_and_threads);
    tcase_add_test(tc, cpu_limit_of_own_cgroup);
    suite_add_tcase(s, tc);
    return check_run(s);
}
