/* test_metrics.c: server/metrics.c, the Prometheus exposition: counters by
 * endpoint and code, failure reasons, histograms (cumulative buckets),
 * the mixed-resolution batch counter, the gauges, label escaping, Triton's
 * statistics by batch size. */
#include <check.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "check_run.h"

/* realloc, as metrics.c calls it (linked with --wrap=realloc): fails while
 * fail_reallocs > 0, so that a batch size's table cannot grow. */
static int fail_reallocs;
void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n) {
    if (fail_reallocs > 0) {
        fail_reallocs--;
        return NULL;
    }
    return __real_realloc(p, n);
}

/* The value of the sample whose name-and-labels is exactly `series`. */
static double sample(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
    ck_abort_msg("no sample %s", series);
    return -1;
}

static char *render(metrics *m, metrics_gauges g) {
    size_t len = 0;
    char *text = metrics_render(m, &g, &len);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(strlen(text), len);
    return text;
}

START_TEST(empty_exposition) {
    metrics *m = metrics_new();
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(metrics_series_open(m, "fashion", "1", "comrope-ld", 28));
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    /* every failure reason is listed from the start, so that rate() works */
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unauthorized\"}"), 0);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"deadline_exceeded\"}"), 0);
    ck_assert_double_eq(sample(t, "comrope_batches_total"), 0);
    ck_assert_double_eq(sample(t, "comrope_batches_mixed_resolution_total"), 0);
    ck_assert_double_eq(sample(t, "comrope_batch_images_bucket{model=\"fashion\",version=\"1\",le=\"+Inf\"}"),
                        0);
    ck_assert_double_eq(sample(t, "comrope_ready"), 1);
    ck_assert_double_eq(sample(t, "comrope_model_info{model=\"fashion\",pe_type=\"comrope-ld\","
                                  "training_resolution=\"28\",version=\"1\"}"),
                        1);
    ck_assert_ptr_nonnull(strstr(t, "# TYPE comrope_batches_mixed_resolution_total counter\n"));
    ck_assert_ptr_nonnull(strstr(t, "# TYPE comrope_receiving_requests gauge\n"));
    ck_assert_ptr_null(strstr(t, "comrope_requests_total{")); /* no request yet: no series */
    free(t);
    metrics_free(m);
}
END_TEST

/* Every failure is in one of comrope_request_failures_total's reasons,
 * which sum to the requests answered >= 400: a status of no reason of its
 * own (a 414 for a long path, a 409) counted in "other", which was never
 * listed, and 501 (a Transfer-Encoding the daemon does not take, the
 * client's doing) counted as "internal". */
START_TEST(every_failure_has_a_listed_reason) {
    metrics *m = metrics_new();
    metrics_series *ms = metrics_series_open(m, "m", "1", "liere", 16);
    ck_assert_ptr_nonnull(ms);
    static const int codes[] = {400, 403, 409, 414, 418, 421, 429, 431, 499, 501, 502, 507};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        metrics_request(m, i % 2 ? ms : NULL, ENDPOINT_V2_INFER, codes[i], 0.001);
    metrics_request(m, NULL, ENDPOINT_OTHER, 200, 0.001);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"other\"}"), 4);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"uri_too_long\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"misdirected\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"forbidden\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"not_implemented\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"internal\"}"), 2);
    double sum = 0;
    const char *name = "comrope_request_failures_total{";
    for (const char *p = strstr(t, name); p; p = strstr(p + 1, name)) sum += strtod(strchr(p, '}') + 1, NULL);
    ck_assert_double_eq(sum, sizeof(codes) / sizeof(codes[0]));
    free(t);
    metrics_free(m);
}
END_TEST

/* Requests are counted in one slot per code HTTP defines: each keeps its
 * own number in the label, of a model's endpoint or not; a number HTTP
 * does not define counts as 500. */
START_TEST(each_code_keeps_its_number) {
    metrics *m = metrics_new();
    metrics_series *ms = metrics_series_open(m, "m", "1", "liere", 16);
    ck_assert_ptr_nonnull(ms);
    static const int codes[] = {100, 200, 204, 226, 308, 400, 418, 421, 431, 451, 499, 500, 508, 511};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        metrics_request(m, ms, ENDPOINT_V2_MODEL, codes[i], 0.001);
        metrics_request(m, ms, ENDPOINT_HEALTH, codes[i], 0.001);
    }
    metrics_request(m, ms, ENDPOINT_V1_CLASSIFY, 432, 0.001);
    metrics_request(m, ms, ENDPOINT_V1_CLASSIFY, 599, 0.001);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    char want[200];
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        snprintf(want, sizeof(want), "comrope_requests_total{endpoint=\"v2_model\",code=\"%d\",model=\"m\"",
                 codes[i]);
        ck_assert_msg(strstr(t, want), "no %s in\n%s", want, t);
        snprintf(want, sizeof(want), "comrope_requests_total{endpoint=\"health\",code=\"%d\"} 1", codes[i]);
        ck_assert_msg(strstr(t, want), "no %s in\n%s", want, t);
    }
    ck_assert_ptr_nonnull(
        strstr(t, "comrope_requests_total{endpoint=\"v1_classify\",code=\"500\",model=\"m\""));
    ck_assert_ptr_null(strstr(t, "code=\"432\""));
    ck_assert_ptr_null(strstr(t, "code=\"599\""));
    free(t);
    metrics_free(m);
}
END_TEST

/* comrope_engine_info: the ISA and the precision, absent until set */
START_TEST(engine_info) {
    metrics *m = metrics_new();
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_ptr_null(strstr(t, "comrope_engine_info"));
    free(t);
    ck_assert_int_eq(metrics_set_engine(m, "avx512", "bf16", "auto", 1), 0);
    t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(sample(t, "comrope_engine_info{isa=\"avx512\",precision=\"bf16\","
                                  "precision_requested=\"auto\",bf16_pays=\"1\"}"),
                        1);
    free(t);
    metrics_free(m);
}
END_TEST

START_TEST(requests_and_failures) {
    metrics *m = metrics_new();
    metrics_series *ms = metrics_series_open(m, "m", "1", "liere", 16);
    ck_assert_ptr_nonnull(ms);
    metrics_request(m, ms, ENDPOINT_V1_CLASSIFY, 200, 0.003);
    metrics_request(m, ms, ENDPOINT_V1_CLASSIFY, 200, 0.004);
    metrics_request(m, ms, ENDPOINT_V1_CLASSIFY, 401, 0.0001);
    metrics_request(m, ms, ENDPOINT_V2_INFER, 401, 0.0001);
    metrics_request(m, ms, ENDPOINT_V2_INFER, 504, 0.5);
    metrics_request(m, ms, ENDPOINT_V1_CLASSIFY, 503, 0.0001);
    metrics_request(m, ms, 99, 999, 1); /* out of range: counted as other / 500 */
    metrics_request(m, ms, ENDPOINT_HEALTH, 200, 0.0002);
    metrics_request(m, ms, ENDPOINT_HEALTH, 200, 0.0002);
    char *t = render(m, (metrics_gauges){3, 5, 2, 0, 7});
    ck_assert_double_eq(
        sample(t, "comrope_requests_total{endpoint=\"v1_classify\",code=\"200\",model=\"m\",version=\"1\"}"),
        2);
    ck_assert_double_eq(
        sample(t, "comrope_requests_total{endpoint=\"v2_infer\",code=\"504\",model=\"m\",version=\"1\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_requests_total{endpoint=\"other\",code=\"500\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unauthorized\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"deadline_exceeded\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unavailable\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"internal\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_requests_total{endpoint=\"health\",code=\"200\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_log_lines_dropped_total"), 7); /* log.c's, at scrape time */
    /* latency by endpoint: the probes are not in the inference series;
     * buckets are cumulative */
    const char *cl =
        "comrope_request_duration_seconds_bucket{endpoint=\"v1_classify\",model=\"m\",version=\"1\",le=";
    char name[200];
    snprintf(name, sizeof(name), "%s\"0.001\"}", cl);
    ck_assert_double_eq(sample(t, name), 2);
    snprintf(name, sizeof(name), "%s\"0.005\"}", cl);
    ck_assert_double_eq(sample(t, name), 4);
    snprintf(name, sizeof(name), "%s\"+Inf\"}", cl);
    ck_assert_double_eq(sample(t, name), 4);
    ck_assert_double_eq(
        sample(t, "comrope_request_duration_seconds_count{endpoint=\"v2_infer\",model=\"m\",version=\"1\"}"),
        2);
    ck_assert_double_eq(sample(t, "comrope_request_duration_seconds_bucket{endpoint=\"v2_infer\",model=\"m\","
                                  "version=\"1\",le=\"0.5\"}"),
                        2);
    ck_assert_double_eq(sample(t, "comrope_request_duration_seconds_count{endpoint=\"health\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_request_duration_seconds_count{endpoint=\"other\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_queue_depth"), 3);
    ck_assert_double_eq(sample(t, "comrope_in_flight_requests"), 5);
    ck_assert_double_eq(sample(t, "comrope_receiving_requests"), 2);
    ck_assert_double_eq(sample(t, "comrope_ready"), 0);
    free(t);
    metrics_free(m);
}
END_TEST

START_TEST(batches_and_mixed_resolutions) {
    metrics *m = metrics_new();
    metrics_series *ms = metrics_series_open(m, "m", "1", "comrope-ap", 16);
    int one[] = {17};
    int three[] = {17, 65, 65};
    int big[] = {5000};
    metrics_batch(ms, 1, one, 1, 0.001);
    metrics_batch(ms, 3, three, 2, 0.002); /* two resolutions: mixed */
    metrics_batch(ms, 3, three, 1, 0.002); /* same token counts, one resolution: not mixed */
    metrics_batch(ms, 1, big, 1, 0.1);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(sample(t, "comrope_batches_total"), 4);
    ck_assert_double_eq(sample(t, "comrope_batches_mixed_resolution_total"), 1);
    ck_assert_double_eq(sample(t, "comrope_batch_images_bucket{model=\"m\",version=\"1\",le=\"1\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_batch_images_bucket{model=\"m\",version=\"1\",le=\"4\"}"), 4);
    ck_assert_double_eq(sample(t, "comrope_batch_images_sum{model=\"m\",version=\"1\"}"), 8);
    ck_assert_double_eq(sample(t, "comrope_batch_tokens_sum{model=\"m\",version=\"1\"}"),
                        17 + 147 + 147 + 5000);
    ck_assert_double_eq(sample(t, "comrope_images_total{tokens=\"le_64\"}"), 3);
    ck_assert_double_eq(sample(t, "comrope_images_total{tokens=\"le_256\"}"), 4);
    ck_assert_double_eq(sample(t, "comrope_images_total{tokens=\"gt_4096\"}"), 1);
    free(t);
    metrics_free(m);
}
END_TEST

/* Several model versions: each request and batch counts in the series of
 * the version that served it, and nowhere else; Triton's statistics are
 * per version; comrope_model_info lists the versions served. */
START_TEST(series_per_model_version) {
    metrics *m = metrics_new();
    metrics_series *a1 = metrics_series_open(m, "a", "1", "comrope-ld", 16);
    metrics_series *a2 = metrics_series_open(m, "a", "2", "comrope-ld", 16);
    metrics_series *b1 = metrics_series_open(m, "b", "1", "liere", 32);
    ck_assert_ptr_nonnull(a1);
    ck_assert_ptr_nonnull(a2);
    ck_assert_ptr_nonnull(b1);
    ck_assert_ptr_ne(a1, a2);
    ck_assert_ptr_ne(a1, b1);
    int two[] = {17, 17};
    metrics_request(m, a2, ENDPOINT_V2_INFER, 200, 0.01);
    metrics_request(m, a2, ENDPOINT_V2_INFER, 500, 0.02);
    metrics_request(m, NULL, ENDPOINT_V2_INFER, 404, 0.0001); /* an unknown model */
    metrics_queue_wait(a2, 0.001);
    metrics_batch(a2, 2, two, 1, 0.005);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(
        sample(t, "comrope_requests_total{endpoint=\"v2_infer\",code=\"200\",model=\"a\",version=\"2\"}"), 1);
    ck_assert_ptr_null(
        strstr(t, "comrope_requests_total{endpoint=\"v2_infer\",code=\"200\",model=\"a\",version=\"1\"}"));
    ck_assert_ptr_null(strstr(t, "code=\"200\",model=\"b\""));
    ck_assert_double_eq(sample(t, "comrope_requests_total{endpoint=\"v2_infer\",code=\"404\"}"), 1);
    ck_assert_double_eq(
        sample(t, "comrope_request_duration_seconds_count{endpoint=\"v2_infer\",model=\"a\",version=\"2\"}"),
        2);
    ck_assert_double_eq(
        sample(t, "comrope_request_duration_seconds_count{endpoint=\"v2_infer\",model=\"b\",version=\"1\"}"),
        0);
    ck_assert_double_eq(sample(t, "comrope_batch_images_sum{model=\"a\",version=\"2\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_batch_images_count{model=\"a\",version=\"1\"}"), 0);
    ck_assert_double_eq(sample(t, "comrope_batch_images_count{model=\"b\",version=\"1\"}"), 0);
    ck_assert_double_eq(sample(t, "comrope_queue_wait_seconds_count{model=\"a\",version=\"2\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_queue_wait_seconds_count{model=\"b\",version=\"1\"}"), 0);
    ck_assert_double_eq(sample(t, "comrope_batches_total"), 1); /* all models together */
    ck_assert_double_eq(sample(t, "comrope_model_info{model=\"a\",pe_type=\"comrope-ld\",training_resolution="
                                  "\"16\",version=\"1\"}"),
                        1);
    ck_assert_double_eq(sample(t, "comrope_model_info{model=\"a\",pe_type=\"comrope-ld\",training_resolution="
                                  "\"16\",version=\"2\"}"),
                        1);
    ck_assert_double_eq(
        sample(t,
               "comrope_model_info{model=\"b\",pe_type=\"liere\",training_resolution=\"32\",version=\"1\"}"),
        1);
    free(t);

    metrics_stats *st = malloc(sizeof(*st));
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(metrics_model_stats(a2, st), 0);
    ck_assert_uint_eq(st->success_count, 1);
    ck_assert_uint_eq(st->fail_count, 1);
    ck_assert_uint_eq(st->inference_count, 2);
    ck_assert_uint_eq(st->execution_count, 1);
    ck_assert_uint_eq(st->queue_count, 1);
    ck_assert_int_eq(st->num_batch_sizes, 1);
    ck_assert_int_eq(st->batch_stats[0].batch_size, 2);
    metrics_stats_free(st);
    ck_assert_int_eq(metrics_model_stats(b1, st), 0);
    ck_assert_uint_eq(st->success_count + st->fail_count + st->inference_count + st->execution_count, 0);
    ck_assert_int_eq(st->num_batch_sizes, 0);
    metrics_stats_free(st);
    free(st);
    metrics_free(m);
}
END_TEST

/* Triton's batch_stats name the size each batch had, up to the largest
 * max-batch-size allows: batches of 300 and 4096 images were listed as
 * batch_size 256 (one entry for both, its time summed). */
START_TEST(batch_stats_every_size) {
    metrics *m = metrics_new();
    metrics_series *ms = metrics_series_open(m, "m", "1", "comrope-ld", 16);
    int *tokens = calloc(4096, sizeof(int));
    ck_assert_ptr_nonnull(tokens);
    metrics_batch(ms, 256, tokens, 1, 0.001);
    metrics_batch(ms, 300, tokens, 1, 0.002);
    metrics_batch(ms, 4096, tokens, 1, 0.004);
    metrics_stats *st = malloc(sizeof(*st));
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(metrics_model_stats(ms, st), 0);
    ck_assert_int_eq(st->num_batch_sizes, 3);
    ck_assert_int_eq(st->batch_stats[0].batch_size, 256);
    ck_assert_int_eq(st->batch_stats[1].batch_size, 300);
    ck_assert_int_eq(st->batch_stats[2].batch_size, 4096);
    ck_assert_uint_eq(st->batch_stats[2].count, 1);
    ck_assert_uint_eq(st->batch_stats[1].ns, 2000000);
    metrics_stats_free(st);
    free(st);
    free(tokens);
    metrics_free(m);
}
END_TEST

/* A version's statistics hold the batch sizes it ran, not room for every
 * size max-batch-size allows: /v2/models/stats took 4096 entries (~146
 * KiB) per version per call, 9.5 MiB with 65 versions served. */
START_TEST(stats_hold_only_the_sizes_that_ran) {
    ck_assert_uint_lt(sizeof(metrics_stats), 1024);
    metrics *m = metrics_new();
    metrics_series *ms = metrics_series_open(m, "m", "1", "comrope-ld", 16);
    metrics_stats st;
    ck_assert_int_eq(metrics_model_stats(ms, &st), 0);
    ck_assert_int_eq(st.num_batch_sizes, 0);
    metrics_stats_free(&st);
    metrics_free(m);
}
END_TEST

/* A served version's series holds the batch sizes that ran, not two
 * counters for each of the 4097 sizes max-batch-size allows (64 KiB of
 * zeros per series: 110,912 bytes each), and its requests by the codes HTTP
 * defines for its three model endpoints, not by every number below 600 for
 * all nine (43 KB more): 3.3 KB each with four sizes run. Measured as the heap grows for 64 series (glibc's counters; under
 * ASan, whose allocator they do not see, that check is skipped, saying so). */
START_TEST(series_hold_only_the_sizes_that_ran) {
    metrics *m = metrics_new();
    ck_assert_ptr_nonnull(m);
    struct mallinfo2 before = mallinfo2();
    metrics_series *open[64];
    char version[16];
    int sizes[] = {1, 8, 3, 8, 4096, 1};
    int *tokens = calloc(4096, sizeof(int));
    ck_assert_ptr_nonnull(tokens);
    for (int i = 0; i < 64; i++) {
        snprintf(version, sizeof(version), "%d", i + 1);
        open[i] = metrics_series_open(m, "m", version, "comrope-ld", 16);
        ck_assert_ptr_nonnull(open[i]);
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++)
            metrics_batch(open[i], sizes[k], tokens, 1, 0.001);
    }
    struct mallinfo2 after = mallinfo2();
    size_t grown = (after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd);
    if (UNDER_ASAN) {
        printf("skipped: series_hold_only_the_sizes_that_ran: the heap's growth (mallinfo2 does not see "
               "ASan's allocator)\n");
        fflush(stdout);
    } else ck_assert_msg(grown / 64 < 8 * 1024, "%zu bytes per series", grown / 64);
    metrics_stats st;
    ck_assert_int_eq(metrics_model_stats(open[63], &st), 0);
    ck_assert_int_eq(st.num_batch_sizes, 4); /* ascending, whatever order they ran in */
    ck_assert_int_eq(st.batch_stats[0].batch_size, 1);
    ck_assert_uint_eq(st.batch_stats[0].count, 2);
    ck_assert_int_eq(st.batch_stats[1].batch_size, 3);
    ck_assert_int_eq(st.batch_stats[2].batch_size, 8);
    ck_assert_uint_eq(st.batch_stats[2].count, 2);
    ck_assert_uint_eq(st.batch_stats[2].ns, 2000000);
    ck_assert_int_eq(st.batch_stats[3].batch_size, 4096);
    metrics_stats_free(&st);
    for (int i = 0; i < 64; i++) metrics_series_close(open[i]);
    free(tokens);
    metrics_free(m);
}
END_TEST

/* A new batch size whose entry cannot be added (out of memory): the batch
 * is counted everywhere else, its size is left out of batch_stats, and
 * comrope_batch_stats_dropped_total says so. The sizes already there go
 * on. */
START_TEST(batch_size_without_memory) {
    metrics *m = metrics_new();
    metrics_series *ms = metrics_series_open(m, "m", "1", "comrope-ld", 16);
    ck_assert_ptr_nonnull(ms);
    int tokens[8] = {0};
    metrics_batch(ms, 2, tokens, 1, 0.001);
    metrics_batch(ms, 1, tokens, 1, 0.001);
    metrics_batch(ms, 3, tokens, 1, 0.001);
    metrics_batch(ms, 4, tokens, 1, 0.001); /* four: the table is full */
    fail_reallocs = 1;
    metrics_batch(ms, 5, tokens, 1, 0.001);
    ck_assert_int_eq(fail_reallocs, 0); /* it did try to grow */
    fail_reallocs = 1;
    metrics_batch(ms, 2, tokens, 1, 0.001); /* there: no allocation */
    fail_reallocs = 0;
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(sample(t, "comrope_batch_stats_dropped_total"), 1);
    ck_assert_double_eq(sample(t, "comrope_batches_total"), 6);
    ck_assert_double_eq(sample(t, "comrope_batch_images_sum{model=\"m\",version=\"1\"}"), 17);
    free(t);
    metrics_stats st;
    ck_assert_int_eq(metrics_model_stats(ms, &st), 0);
    ck_assert_uint_eq(st.execution_count, 6);
    ck_assert_int_eq(st.num_batch_sizes, 4);
    ck_assert_int_eq(st.batch_stats[1].batch_size, 2);
    ck_assert_uint_eq(st.batch_stats[1].count, 2);
    ck_assert_int_eq(st.batch_stats[3].batch_size, 4);
    metrics_stats_free(&st);
    metrics_batch(ms, 5, tokens, 1, 0.001); /* memory again: the size is added */
    ck_assert_int_eq(metrics_model_stats(ms, &st), 0);
    ck_assert_int_eq(st.num_batch_sizes, 5);
    ck_assert_int_eq(st.batch_stats[4].batch_size, 5);
    ck_assert_uint_eq(st.batch_stats[4].count, 1);
    metrics_stats_free(&st);
    metrics_free(m);
}
END_TEST

/* The series of a version no longer served: gone from the exposition
 * (they were kept forever, ~110 KB each then, and listed in every scrape:
 * a repository publishing a version an hour grew without end), while
 * comrope_request_failures_total, summed over all series, never goes
 * back. Served again later: new series, from 0. */
START_TEST(series_freed_when_no_longer_served) {
    metrics *m = metrics_new();
    metrics_series *a1 = metrics_series_open(m, "a", "1", "comrope-ld", 16);
    metrics_series *b1 = metrics_series_open(m, "b", "1", "liere", 32);
    ck_assert_ptr_nonnull(a1);
    ck_assert_ptr_nonnull(b1);
    int two[] = {17, 17};
    metrics_request(m, a1, ENDPOINT_V2_INFER, 200, 0.01);
    metrics_request(m, a1, ENDPOINT_V2_INFER, 401, 0.01);
    metrics_request(m, a1, ENDPOINT_V1_CLASSIFY, 503, 0.01);
    metrics_request(m, b1, ENDPOINT_V2_INFER, 401, 0.01);
    metrics_request(m, NULL, ENDPOINT_V2_INFER, 401, 0.01);
    metrics_batch(a1, 2, two, 1, 0.005);
    metrics_series_close(a1);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_ptr_null(strstr(t, "model=\"a\""));
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unauthorized\"}"), 3);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unavailable\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_batches_total"), 1);
    ck_assert_double_eq(
        sample(t, "comrope_requests_total{endpoint=\"v2_infer\",code=\"401\",model=\"b\",version=\"1\"}"), 1);
    free(t);

    a1 = metrics_series_open(m, "a", "1", "comrope-ld", 16);
    ck_assert_ptr_nonnull(a1);
    metrics_request(m, a1, ENDPOINT_V2_INFER, 401, 0.01);
    t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(
        sample(t, "comrope_requests_total{endpoint=\"v2_infer\",code=\"401\",model=\"a\",version=\"1\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_batch_images_count{model=\"a\",version=\"1\"}"), 0);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unauthorized\"}"), 4);
    free(t);
    metrics_series_close(b1); /* every series gone: the histograms' HELP too */
    metrics_series_close(a1);
    t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_ptr_null(strstr(t, "version=\""));
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unauthorized\"}"), 4);
    free(t);
    metrics_free(m);
}
END_TEST

/* A reload (its files changed, SIGHUP, a poll) opens the new copy before
 * it closes the old one (repository.c: load, install, then the old copy
 * is freed at its last request): the version's counters go on, and its
 * labels change when the new copy is installed (metrics_series_label). */
START_TEST(reload_keeps_the_counters) {
    metrics *m = metrics_new();
    metrics_series *old = metrics_series_open(m, "a", "1", "comrope-ld", 16);
    ck_assert_ptr_nonnull(old);
    metrics_request(m, old, ENDPOINT_V2_INFER, 200, 0.01);
    metrics_series *new = metrics_series_open(m, "a", "1", "comrope-ap", 24);
    ck_assert_ptr_eq(new, old);
    metrics_series_label(new, "comrope-ap", 24);
    metrics_series_close(old);
    metrics_request(m, new, ENDPOINT_V2_INFER, 200, 0.01);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(
        sample(t, "comrope_requests_total{endpoint=\"v2_infer\",code=\"200\",model=\"a\",version=\"1\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_model_info{model=\"a\",pe_type=\"comrope-ap\",training_resolution="
                                  "\"24\",version=\"1\"}"),
                        1);
    free(t);
    metrics_free(m);
}
END_TEST

/* A reload that fails after it opened the series (a worker's thread or
 * the install refused): the copy that serves on keeps its labels. They
 * were those of the failed files, a pe_type and training resolution that
 * nothing served. */
START_TEST(failed_reload_keeps_the_labels) {
    metrics *m = metrics_new();
    metrics_series *served = metrics_series_open(m, "a", "1", "comrope-ld", 16);
    ck_assert_ptr_nonnull(served);
    metrics_series *failed = metrics_series_open(m, "a", "1", "liere", 12);
    ck_assert_ptr_eq(failed, served);
    metrics_series_close(failed);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(sample(t, "comrope_model_info{model=\"a\",pe_type=\"comrope-ld\",training_resolution="
                                  "\"16\",version=\"1\"}"),
                        1);
    ck_assert_ptr_null(strstr(t, "liere"));
    free(t);
    metrics_free(m);
}
END_TEST

/* What a served version holds, as repository.c's load check counts it
 * (metrics_series_memory at install), and the bound it checks against:
 * absent while a version loads (no copy of it holds anything yet) and
 * after its series is freed (unloaded); a reload's new copy replaces the
 * numbers, a failed one leaves the serving copy's. */
START_TEST(model_memory) {
    metrics *m = metrics_new();
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_ptr_null(strstr(t, "comrope_memory_limit_bytes "));
    free(t);
    metrics_set_memory_limit(m, (size_t)8 << 30);
    metrics_series *a = metrics_series_open(m, "a", "1", "comrope-ld", 16);
    metrics_series *b = metrics_series_open(m, "b", "2", "liere", 32);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    metrics_series_memory(a, 1234567, (size_t)5 << 30); /* past 32 bits: no truncation */
    t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(sample(t, "comrope_memory_limit_bytes"), 8589934592.0);
    ck_assert_double_eq(sample(t, "comrope_model_memory_bytes{model=\"a\",version=\"1\",kind=\"weights\"}"),
                        1234567);
    ck_assert_double_eq(sample(t, "comrope_model_memory_bytes{model=\"a\",version=\"1\",kind=\"workspace\"}"),
                        5368709120.0);
    ck_assert_ptr_nonnull(strstr(t, "# TYPE comrope_model_memory_bytes gauge\n"));
    ck_assert_ptr_nonnull(strstr(t, "# TYPE comrope_memory_limit_bytes gauge\n"));
    ck_assert_ptr_null(strstr(t, "comrope_model_memory_bytes{model=\"b\"")); /* still loading */
    metrics_stats st0;
    ck_assert_int_eq(metrics_model_stats(b, &st0), 0);
    ck_assert_uint_eq(st0.memory_bytes, 0);
    metrics_stats_free(&st0);
    free(t);
    metrics_series *reload = metrics_series_open(m, "a", "1", "comrope-ld", 16);
    metrics_series_memory(reload, 2000, 3000);
    metrics_series_close(a);
    metrics_series_memory(b, 10, 20);
    t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_double_eq(sample(t, "comrope_model_memory_bytes{model=\"a\",version=\"1\",kind=\"weights\"}"),
                        2000);
    ck_assert_double_eq(sample(t, "comrope_model_memory_bytes{model=\"a\",version=\"1\",kind=\"workspace\"}"),
                        3000);
    ck_assert_double_eq(sample(t, "comrope_model_memory_bytes{model=\"b\",version=\"2\",kind=\"workspace\"}"),
                        20);
    free(t);
    /* /stats's memory_usage: their sum */
    metrics_stats st;
    ck_assert_int_eq(metrics_model_stats(reload, &st), 0);
    ck_assert_uint_eq(st.memory_bytes, 5000);
    metrics_stats_free(&st);
    metrics_series_close(reload);
    t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_ptr_null(strstr(t, "comrope_model_memory_bytes{model=\"a\""));
    ck_assert_ptr_nonnull(strstr(t, "comrope_model_memory_bytes{model=\"b\""));
    free(t);
    metrics_free(m);
}
END_TEST

START_TEST(label_values_escaped) {
    metrics *m = metrics_new();
    metrics_series_open(m, "a\"b\\c\nd", "v", "none", 8);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1, 0});
    ck_assert_ptr_nonnull(strstr(t, "comrope_model_info{model=\"a\\\"b\\\\c\\nd\",pe_type=\"none\""));
    free(t);
    metrics_free(m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_add_test(tc, empty_exposition);
    tcase_add_test(tc, engine_info);
    tcase_add_test(tc, requests_and_failures);
    tcase_add_test(tc, every_failure_has_a_listed_reason);
    tcase_add_test(tc, each_code_keeps_its_number);
    tcase_add_test(tc, batches_and_mixed_resolutions);
    tcase_add_test(tc, series_per_model_version);
    tcase_add_test(tc, batch_stats_every_size);
    tcase_add_test(tc, stats_hold_only_the_sizes_that_ran);
    tcase_add_test(tc, series_hold_only_the_sizes_that_ran);
    tcase_add_test(tc, batch_size_without_memory);
    tcase_add_test(tc, series_freed_when_no_longer_served);
    tcase_add_test(tc, reload_keeps_the_counters);
    tcase_add_test(tc, failed_reload_keeps_the_labels);
    tcase_add_test(tc, model_memory);
    tcase_add_test(tc, label_values_escaped);
    suite_add_tcase(s, tc);
    return check_run(s);
}
