/* test_cli.c: comrope-classify as a user runs it.
 *
 * Runs the real binary (popen) and reads its JSON lines: logits of a .npy
 * input against the PyTorch reference, one line per image in input order,
 * top-k capped at the class count and sorted, softmax scores, an error line
 * for a bad file while the others still run, exit status 1 then. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "npy.h"
#include "check_run.h"

#define MODEL FIXTURE_DIR "/parity/mlp_head_ap"

/* Runs `cmd` (a shell command line running the CLI); returns its exit
 * status and up to 16 lines. */
static int run_shell(const char *cmd, json_t **lines, int *n) {
    FILE *p = popen(cmd, "r");
    ck_assert(p != NULL);
    char buf[65536];
    *n = 0;
    while (fgets(buf, sizeof(buf), p) && *n < 16) {
        json_error_t jerr;
        lines[*n] = json_loads(buf, 0, &jerr);
        ck_assert_msg(lines[*n] != NULL, "not a JSON line: %s", buf);
        (*n)++;
    }
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Runs the CLI with `args`. */
static int run(const char *args, json_t **lines, int *n) {
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "%s %s 2>/dev/null", CLASSIFY_BIN, args);
    return run_shell(cmd, lines, n);
}

START_TEST(test_npy_logits_match_reference) {
    json_t *lines[16];
    int n;
    int rc = run("--model " MODEL " --logits --top-k 100 " MODEL "/input_8x8.npy", lines, &n);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(n, 2);
    npy_array ref;
    char err[256];
    ck_assert(npy_load(MODEL "/logits_8x8.npy", &ref, err, sizeof(err)) == 0);
    int K = (int)ref.shape[1];
    for (int i = 0; i < n; i++) {
        json_t *o = lines[i];
        ck_assert_int_eq(json_integer_value(json_object_get(o, "index")), i);
        json_t *res = json_object_get(o, "resolution");
        ck_assert_int_eq(json_integer_value(json_array_get(res, 0)), 8);
        ck_assert_int_eq(json_integer_value(json_array_get(res, 1)), 8);
        json_t *logits = json_object_get(o, "logits");
        ck_assert_int_eq((int)json_array_size(logits), K);
        double maxv = -1e300, sum = 0;
        for (int k = 0; k < K; k++) {
            double v = json_real_value(json_array_get(logits, (size_t)k));
            ck_assert_msg(fabs(v - ref.data[i * K + k]) < 1e-4, "image %d logit %d", i, k);
            if (v > maxv) maxv = v;
        }
        for (int k = 0; k < K; k++) sum += exp(json_real_value(json_array_get(logits, (size_t)k)) - maxv);
        /* top is capped at K, sorted, with softmax scores and labels from id2label */
        json_t *top = json_object_get(o, "top");
        ck_assert_int_eq((int)json_array_size(top), K);
        double prev = 2.0, total = 0;
        for (int k = 0; k < K; k++) {
            json_t *t = json_array_get(top, (size_t)k);
            int idx = (int)json_integer_value(json_object_get(t, "index"));
            double score = json_real_value(json_object_get(t, "score"));
            double want = exp(ref.data[i * K + idx] - maxv) / sum;
            ck_assert_msg(fabs(score - want) < 1e-5, "score of class %d", idx);
            ck_assert(score <= prev);
            prev = score;
            total += score;
            ck_assert(json_is_string(json_object_get(t, "label")));
        }
        ck_assert(fabs(total - 1.0) < 1e-5);
        json_decref(o);
    }
    npy_free(&ref);
}
END_TEST

/* --dump-stages writes every image's residual stream after every stage,
 * (T, D) each, and the values are the reference's (reference.py
 * --stages-out; tools/parity_stages.py compares any input this way). */
START_TEST(test_dump_stages_match_reference) {
    char dir[] = "/tmp/comrope-stages-XXXXXX", args[1024], path[1200], err[256];
    ck_assert(mkdtemp(dir) != NULL);
    const char *model = FIXTURE_DIR "/parity/comrope_ld_b2";
    snprintf(args, sizeof(args), "--model %s --dump-stages %s %s/input_8x16.npy", model, dir, model);
    json_t *lines[16];
    int n;
    ck_assert_int_eq(run(args, lines, &n), 0);
    ck_assert_int_eq(n, 2);
    for (int i = 0; i < n; i++) json_decref(lines[i]);
    npy_array ref;
    snprintf(path, sizeof(path), "%s/stages_8x16.npy", model);
    ck_assert_msg(npy_load(path, &ref, err, sizeof(err)) == 0, "%s", err);
    int S = (int)ref.shape[0], N = (int)ref.shape[1], T = (int)ref.shape[2], D = (int)ref.shape[3];
    ck_assert_int_eq(N, 2);
    for (int i = 0; i < N; i++)
        for (int st = 0; st < S; st++) {
            npy_array got;
            snprintf(path, sizeof(path), "%s/image%d_stage%d.npy", dir, i, st);
            ck_assert_msg(npy_load(path, &got, err, sizeof(err)) == 0, "%s", err);
            ck_assert_int_eq(got.ndim, 2);
            ck_assert_int_eq(got.shape[0], T);
            ck_assert_int_eq(got.shape[1], D);
            for (int k = 0; k < T * D; k++)
                ck_assert_msg(fabs(got.data[k] - ref.data[((size_t)st * N + i) * T * D + k]) <= 1e-4,
                              "image %d stage %d value %d", i, st, k);
            npy_free(&got);
            remove(path);
        }
    npy_free(&ref);
    ck_assert_int_eq(rmdir(dir), 0); /* nothing else was written */
}
END_TEST

START_TEST(test_bad_file_reported_others_still_run) {
    json_t *lines[16];
    int n;
    int rc = run("--model " MODEL " " MODEL "/input_8x8.npy /nonexistent.png " MODEL "/config.json " MODEL
                 "/input_16x16.npy",
                 lines, &n);
    ck_assert_int_eq(rc, 1);
    ck_assert_int_eq(n, 2 + 1 + 1 + 2);
    ck_assert_str_eq(json_string_value(json_object_get(lines[2], "file")), "/nonexistent.png");
    /* the reason alone: "file" names the path (it was said twice) */
    const char *e = json_string_value(json_object_get(lines[2], "error"));
    ck_assert_msg(e && strncmp(e, "cannot open: ", 13) == 0, "error: %s", e ? e : "(none)");
    ck_assert(json_is_string(json_object_get(lines[3], "error"))); /* not an image */
    ck_assert_int_eq(json_integer_value(json_object_get(lines[5], "index")), 1);
    ck_assert(json_object_get(lines[0], "logits") == NULL); /* only with --logits */
    ck_assert_int_eq((int)json_array_size(json_object_get(lines[0], "top")), 5);
    for (int i = 0; i < n; i++) json_decref(lines[i]);
}
END_TEST

/* A file name is any bytes: one that is not UTF-8 keeps its "file" key
 * ('?' for each such byte), on a result line and on an error line (jansson
 * made no string of it, and the key was left out). */
START_TEST(test_file_names_not_utf8) {
    char dir[] = "/tmp/comrope-cli-XXXXXX", img[128], gone[128], cmd[512];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(img, sizeof(img), "%s/caf\xe9.png", dir);
    snprintf(gone, sizeof(gone), "%s/gone\xff.png", dir);
    ck_assert_int_eq(symlink(FIXTURE_DIR "/images/rgb8.png", img), 0);
    json_t *lines[16];
    int n;
    snprintf(cmd, sizeof(cmd), "--model " MODEL " --resolution 8 '%s' '%s'", img, gone);
    int rc = run(cmd, lines, &n);
    unlink(img);
    rmdir(dir);
    ck_assert_int_eq(rc, 1);
    ck_assert_int_eq(n, 2);
    snprintf(img, sizeof(img), "%s/caf?.png", dir);
    snprintf(gone, sizeof(gone), "%s/gone?.png", dir);
    ck_assert_ptr_nonnull(json_string_value(json_object_get(lines[0], "file")));
    ck_assert_str_eq(json_string_value(json_object_get(lines[0], "file")), img);
    ck_assert(json_is_array(json_object_get(lines[0], "top")));
    ck_assert_ptr_nonnull(json_string_value(json_object_get(lines[1], "file")));
    ck_assert_str_eq(json_string_value(json_object_get(lines[1], "file")), gone);
    ck_assert(json_is_string(json_object_get(lines[1], "error")));
    for (int i = 0; i < n; i++) json_decref(lines[i]);
}
END_TEST

/* Options after or between the files apply to all of them (they were taken
 * for files: "--top-k" could not be opened) */
START_TEST(test_options_after_files) {
    json_t *lines[16];
    int n;
    int rc = run(MODEL "/input_8x8.npy --top-k 2 --model " MODEL " -- " MODEL "/input_16x16.npy", lines, &n);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(n, 2 + 2);
    for (int i = 0; i < n; i++) {
        ck_assert(json_object_get(lines[i], "error") == NULL);
        ck_assert_int_eq((int)json_array_size(json_object_get(lines[i], "top")), 2);
        json_decref(lines[i]);
    }
}
END_TEST

START_TEST(test_bad_resolution_names_nearest) {
    json_t *lines[16];
    int n;
    int rc = run("--model " MODEL " --resolution 15x16 " FIXTURE_DIR "/images/rgb8.png", lines, &n);
    ck_assert_int_eq(rc, 1);
    ck_assert_int_eq(n, 1);
    const char *e = json_string_value(json_object_get(lines[0], "error"));
    ck_assert_msg(e && strstr(e, "nearest valid: 12 or 16"), "error: %s", e ? e : "(none)");
    json_decref(lines[0]);
    /* and a valid non-square resolution works on an image */
    rc = run("--model " MODEL " --resolution 12x20 --fit crop " FIXTURE_DIR "/images/rgb8.png", lines, &n);
    ck_assert_int_eq(rc, 0);
    json_t *res = json_object_get(lines[0], "resolution");
    ck_assert_int_eq(json_integer_value(json_array_get(res, 0)), 12);
    ck_assert_int_eq(json_integer_value(json_array_get(res, 1)), 20);
    json_decref(lines[0]);
}
END_TEST

/* An image that is a FIFO no one writes, a device or a directory: an
 * error line naming the file and what it is, the next file still
 * classified (the FIFO's open blocked the CLI for good; /dev/zero was "not
 * an image" after an empty read). A pipe with a writer is read to its end
 * (`comrope-classify <(curl -s URL)`; fseek on it failed: "cannot read"). */
START_TEST(test_image_not_a_regular_file) {
    char fifo[64], args[1024], cmd[2048];
    snprintf(fifo, sizeof(fifo), "/tmp/test_cli_fifo_%d", (int)getpid());
    unlink(fifo);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    snprintf(args, sizeof(args), "--model " MODEL " %s /dev/zero /tmp " FIXTURE_DIR "/images/rgb8.png", fifo);
    json_t *lines[16];
    int n;
    int rc = run(args, lines, &n);
    unlink(fifo);
    ck_assert_int_eq(rc, 1);
    ck_assert_int_eq(n, 4);
    const char *file[] = {fifo, "/dev/zero", "/tmp"};
    const char *why[] = {"a pipe that gave nothing", "is a device, not a regular file or a pipe",
                         "is a directory, not a regular file or a pipe"};
    for (int i = 0; i < 3; i++) {
        ck_assert_str_eq(json_string_value(json_object_get(lines[i], "file")), file[i]);
        const char *e = json_string_value(json_object_get(lines[i], "error"));
        ck_assert_msg(e && strncmp(e, why[i], strlen(why[i])) == 0, "%s: error: %s", file[i],
                      e ? e : "(none)");
    }
    ck_assert(json_object_get(lines[3], "top") != NULL);
    for (int i = 0; i < n; i++) json_decref(lines[i]);
    snprintf(cmd, sizeof(cmd),
             "cat " FIXTURE_DIR "/images/rgb8.png | %s --model " MODEL " /dev/stdin 2>/dev/null",
             CLASSIFY_BIN);
    rc = run_shell(cmd, lines, &n);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(n, 1);
    ck_assert(json_object_get(lines[0], "top") != NULL);
    json_decref(lines[0]);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_npy_logits_match_reference);
    tcase_add_test(tc, test_dump_stages_match_reference);
    tcase_add_test(tc, test_bad_file_reported_others_still_run);
    tcase_add_test(tc, test_file_names_not_utf8);
    tcase_add_test(tc, test_options_after_files);
    tcase_add_test(tc, test_bad_resolution_names_nearest);
    tcase_add_test(tc, test_image_not_a_regular_file);
    suite_add_tcase(s, tc);
    return check_run(s);
}
