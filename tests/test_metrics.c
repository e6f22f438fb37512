/* test_metrics.c: server/metrics.c, the Prometheus exposition: counters by
 * endpoint and code, failure reasons, histograms (cumulative buckets),
 * the mixed-resolution batch counter, the gauges, label escaping. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "check_run.h"

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
    metrics *m = metrics_new("fashion", "comrope-ld", 28, "0.1.0");
    ck_assert_ptr_nonnull(m);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1});
    /* every failure reason is listed from the start, so that rate() works */
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unauthorized\"}"), 0);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"deadline_exceeded\"}"), 0);
    ck_assert_double_eq(sample(t, "comrope_batches_total"), 0);
    ck_assert_double_eq(sample(t, "comrope_batches_mixed_resolution_total"), 0);
    ck_assert_double_eq(sample(t, "comrope_batch_images_bucket{model=\"fashion\",version=\"1\",le=\"+Inf\"}"), 0);
    ck_assert_double_eq(sample(t, "comrope_ready"), 1);
    ck_assert_double_eq(sample(t, "comrope_model_info{model=\"fashion\",pe_type=\"comrope-ld\","
                                  "training_resolution=\"28\",version=\"0.1.0\"}"), 1);
    ck_assert_ptr_nonnull(strstr(t, "# TYPE comrope_batches_mixed_resolution_total counter\n"));
    ck_assert_ptr_nonnull(strstr(t, "# TYPE comrope_receiving_requests gauge\n"));
    ck_assert_ptr_null(strstr(t, "comrope_requests_total{")); /* no request yet: no series */
    free(t);
    metrics_free(m);
}
END_TEST

/* comrope_engine_info: the ISA and the precision, absent until set */
START_TEST(engine_info) {
    metrics *m = metrics_new("m", "comrope-ap", 16, "dev");
    char *t = render(m, (metrics_gauges){0, 0, 0, 1});
    ck_assert_ptr_null(strstr(t, "comrope_engine_info"));
    free(t);
    ck_assert_int_eq(metrics_set_engine(m, "avx512", "bf16", "auto", 1), 0);
    t = render(m, (metrics_gauges){0, 0, 0, 1});
    ck_assert_double_eq(sample(t, "comrope_engine_info{isa=\"avx512\",precision=\"bf16\","
                                  "precision_requested=\"auto\",bf16_pays=\"1\"}"), 1);
    free(t);
    metrics_free(m);
}
END_TEST

START_TEST(requests_and_failures) {
    metrics *m = metrics_new("m", "liere", 16, "dev");
    metrics_request(m, ENDPOINT_V1_CLASSIFY, 200, 0.003);
    metrics_request(m, ENDPOINT_V1_CLASSIFY, 200, 0.004);
    metrics_request(m, ENDPOINT_V1_CLASSIFY, 401, 0.0001);
    metrics_request(m, ENDPOINT_V2_INFER, 401, 0.0001);
    metrics_request(m, ENDPOINT_V2_INFER, 504, 0.5);
    metrics_request(m, ENDPOINT_V1_CLASSIFY, 503, 0.0001);
    metrics_request(m, 99, 999, 1); /* out of range: counted as other / 500 */
    metrics_request(m, ENDPOINT_HEALTH, 200, 0.0002);
    metrics_request(m, ENDPOINT_HEALTH, 200, 0.0002);
    char *t = render(m, (metrics_gauges){3, 5, 2, 0});
    ck_assert_double_eq(sample(t, "comrope_requests_total{endpoint=\"v1_classify\",code=\"200\",model=\"m\",version=\"1\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_requests_total{endpoint=\"v2_infer\",code=\"504\",model=\"m\",version=\"1\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_requests_total{endpoint=\"other\",code=\"500\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unauthorized\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"deadline_exceeded\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"unavailable\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_request_failures_total{reason=\"internal\"}"), 1);
    ck_assert_double_eq(sample(t, "comrope_requests_total{endpoint=\"health\",code=\"200\"}"), 2);
    /* latency by endpoint: the probes are not in the inference series;
     * buckets are cumulative */
    const char *cl = "comrope_request_duration_seconds_bucket{endpoint=\"v1_classify\",model=\"m\",version=\"1\",le=";
    char name[200];
    snprintf(name, sizeof(name), "%s\"0.001\"}", cl);
    ck_assert_double_eq(sample(t, name), 2);
    snprintf(name, sizeof(name), "%s\"0.005\"}", cl);
    ck_assert_double_eq(sample(t, name), 4);
    snprintf(name, sizeof(name), "%s\"+Inf\"}", cl);
    ck_assert_double_eq(sample(t, name), 4);
    ck_assert_double_eq(sample(t, "comrope_request_duration_seconds_count{endpoint=\"v2_infer\",model=\"m\",version=\"1\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_request_duration_seconds_bucket{endpoint=\"v2_infer\",model=\"m\",version=\"1\",le=\"0.5\"}"), 2);
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
    metrics *m = metrics_new("m", "comrope-ap", 16, "dev");
    int one[] = {17};
    int three[] = {17, 65, 65};
    int big[] = {5000};
    metrics_batch(m, 1, one, 1, 0.001);
    metrics_batch(m, 3, three, 2, 0.002); /* two resolutions: mixed */
    metrics_batch(m, 3, three, 1, 0.002); /* same token counts, one resolution: not mixed */
    metrics_batch(m, 1, big, 1, 0.1);
    char *t = render(m, (metrics_gauges){0, 0, 0, 1});
    ck_assert_double_eq(sample(t, "comrope_batches_total"), 4);
    ck_assert_double_eq(sample(t, "comrope_batches_mixed_resolution_total"), 1);
    ck_assert_double_eq(sample(t, "comrope_batch_images_bucket{model=\"m\",version=\"1\",le=\"1\"}"), 2);
    ck_assert_double_eq(sample(t, "comrope_batch_images_bucket{model=\"m\",version=\"1\",le=\"4\"}"), 4);
    ck_assert_double_eq(sample(t, "comrope_batch_images_sum{model=\"m\",version=\"1\"}"), 8);
    ck_assert_double_eq(sample(t, "comrope_batch_tokens_sum{model=\"m\",version=\"1\"}"), 17 + 147 + 147 + 5000);
    ck_assert_double_eq(sample(t, "comrope_images_total{tokens=\"le_64\"}"), 3);
    ck_assert_double_eq(sample(t, "comrope_images_total{tokens=\"le_256\"}"), 4);
    ck_assert_double_eq(sample(t, "comrope_images_total{tokens=\"gt_4096\"}"), 1);
    free(t);
    metrics_free(m);
}
END_TEST

START_TEST(label_values_escaped) {
    metrics *m = metrics_new("a\"b\\c\nd", "none", 8, "v");
    char *t = render(m, (metrics_gauges){0, 0, 0, 1});
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
    tcase_add_test(tc, batches_and_mixed_resolutions);
    tcase_add_test(tc, label_values_escaped);
    suite_add_tcase(s, tc);
    return check_run(s);
}
