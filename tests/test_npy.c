/* test_npy.c: the .npy reader (engine/npy.c).
 *
 * Good files and numpy-written refusals come from
 * tools/make_image_fixtures.py (tests/fixtures/images/npy_*.npy); malformed
 * headers that numpy would never write are built here in memory. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "check_run.h"

#define IMAGES FIXTURE_DIR "/images/"

static int load(const char *name, npy_array *a, char *err, size_t errlen) {
    char path[1024];
    snprintf(path, sizeof path, "%s%s", IMAGES, name);
    return npy_load(path, a, err, errlen);
}

/* A version-1.0 file: magic, header padded with spaces and a newline to a
 * multiple of 64 bytes as numpy pads it, then `nbytes` of payload. */
static size_t build_npy(uint8_t *buf, size_t cap, const char *header, const void *payload, size_t nbytes) {
    size_t hl = strlen(header);
    size_t total = 10 + hl + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = hl + pad + 1;
    ck_assert(10 + hlen + nbytes <= cap);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (uint8_t)(hlen & 0xFF);
    buf[9] = (uint8_t)(hlen >> 8);
    memcpy(buf + 10, header, hl);
    memset(buf + 10 + hl, ' ', pad);
    buf[10 + hl + pad] = '\n';
    if (nbytes) memcpy(buf + 10 + hlen, payload, nbytes);
    return 10 + hlen + nbytes;
}

START_TEST(test_good_f4_f8) {
    char err[512];
    npy_array a, e;
    ck_assert_msg(load("npy_f4_v1.npy", &a, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(a.ndim, 3);
    ck_assert_int_eq(a.shape[0], 2);
    ck_assert_int_eq(a.shape[1], 3);
    ck_assert_int_eq(a.shape[2], 4);
    ck_assert_int_eq(a.count, 24);
    ck_assert_msg(load("npy_f4_v1.expect.npy", &e, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(memcmp(a.data, e.data, sizeof(float) * 24), 0);
    /* The same array in format versions 2.0 and 3.0. */
    for (int v = 2; v <= 3; v++) {
        char name[64];
        npy_array b;
        snprintf(name, sizeof name, "npy_f4_v%d.npy", v);
        ck_assert_msg(load(name, &b, err, sizeof err) == 0, "%s", err);
        ck_assert_int_eq(b.count, 24);
        ck_assert_int_eq(b.ndim, 3);
        ck_assert_int_eq(memcmp(b.data, e.data, sizeof(float) * 24), 0);
        npy_free(&b);
    }
    npy_free(&a);
    npy_free(&e);

    /* float64, rounded to float32 as numpy's astype(float32) rounds. */
    ck_assert_msg(load("npy_f8_v1.npy", &a, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(load("npy_f8_v1.expect.npy", &e, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(a.ndim, 2);
    ck_assert_int_eq(a.shape[0], 5);
    ck_assert_int_eq(a.shape[1], 7);
    ck_assert_int_eq(a.count, 35);
    ck_assert_int_eq(memcmp(a.data, e.data, sizeof(float) * 35), 0);
    npy_free(&a);
    npy_free(&e);
    ck_assert_ptr_null(a.data);
    npy_free(&a); /* twice is harmless */
    npy_free(NULL);

    /* A 0-d array: shape (), one element. */
    ck_assert_msg(load("npy_scalar.npy", &a, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(a.ndim, 0);
    ck_assert_int_eq(a.count, 1);
    ck_assert(a.data[0] == 1.5f);
    npy_free(&a);
}
END_TEST

START_TEST(test_parse_from_memory) {
    uint8_t buf[512];
    char err[512];
    npy_array a;
    const float v[3] = {1.0f, -2.5f, 3.25f};
    /* Double quotes, other key order, no trailing comma, extra spaces. */
    size_t n = build_npy(buf, sizeof buf,
                         "{ \"shape\" : ( 3 , ) , \"fortran_order\": False, \"descr\": '<f4' }", v, sizeof v);
    ck_assert_msg(npy_parse(buf, n, "mem.npy", &a, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(a.ndim, 1);
    ck_assert_int_eq(a.shape[0], 3);
    ck_assert(a.data[0] == 1.0f && a.data[1] == -2.5f && a.data[2] == 3.25f);
    npy_free(&a);
    const double d[2] = {0.1, 1e300};
    n = build_npy(buf, sizeof buf, "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }", d,
                  sizeof d);
    ck_assert_msg(npy_parse(buf, n, "mem.npy", &a, err, sizeof err) == 0, "%s", err);
    ck_assert(a.data[0] == 0.1f);
    ck_assert(a.data[1] > 3.4e38f); /* inf, as numpy's cast gives */
    npy_free(&a);
}
END_TEST

/* Files numpy writes that the reader must refuse, each naming the file and
 * the reason. */
START_TEST(test_numpy_written_refusals) {
    struct {
        const char *file, *needle;
    } cases[] = {
        {"npy_bad_be.npy", "big-endian"},
        {"npy_bad_fortran.npy", "Fortran"},
        {"npy_bad_i4.npy", "'<i4' is not supported"},
        {"npy_bad_f2.npy", "'<f2' is not supported"},
        {"npy_bad_short.npy", "data is 92 bytes"},
        {"npy_missing.npy", "npy_missing.npy"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        npy_array a;
        ck_assert_msg(load(cases[i].file, &a, err, sizeof err) == -1, "%s accepted", cases[i].file);
        ck_assert_msg(strstr(err, cases[i].file), "%s: \"%s\" does not name the file", cases[i].file, err);
        ck_assert_msg(strstr(err, cases[i].needle), "%s: \"%s\" lacks \"%s\"", cases[i].file, err,
                      cases[i].needle);
        ck_assert_ptr_null(a.data);
    }
}
END_TEST

static void refuse_header(const char *header, size_t nbytes, const char *needle) {
    static uint8_t buf[4096];
    static uint8_t payload[1024];
    char err[512] = "";
    npy_array a;
    size_t n = build_npy(buf, sizeof buf, header, payload, nbytes);
    ck_assert_msg(npy_parse(buf, n, "crafted.npy", &a, err, sizeof err) == -1, "header %s was accepted",
                  header);
    ck_assert_msg(strstr(err, "crafted.npy"), "\"%s\" does not name the file", err);
    ck_assert_msg(strstr(err, needle), "header %s: \"%s\" lacks \"%s\"", header, err, needle);
    ck_assert_ptr_null(a.data);
}

START_TEST(test_crafted_header_refusals) {
    refuse_header("{'descr': '<f4', 'fortran_order': False}", 4, "lacks 'shape'");
    refuse_header("{'descr': '<f4', 'shape': (1,)}", 4, "lacks 'fortran_order'");
    refuse_header("{'fortran_order': False, 'shape': (1,)}", 4, "lacks 'descr'");
    refuse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", 4,
                  "unexpected or repeated key 'x'");
    refuse_header("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 4,
                  "repeated key 'descr'");
    refuse_header("['descr', '<f4']", 4, "not a dict");
    refuse_header("{'descr': '<f4' 'fortran_order': False, 'shape': (1,)}", 4, "malformed");
    refuse_header("{'descr': '<f4', 'fortran_order': false, 'shape': (1,)}", 4, "True or False");
    refuse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1 2)}", 8, "'shape'");
    refuse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", 4, "'shape'");
    refuse_header("{'descr': '<f4', 'fortran_order': False, 'shape': [1]}", 4, "'shape'");
    refuse_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", 4, "structured");
    refuse_header("{'descr': '|f4', 'fortran_order': False, 'shape': (1,)}", 4, "not supported");
    refuse_header("{'descr': '<i8', 'fortran_order': False, 'shape': (1,)}", 8, "not supported");
    refuse_header("{'descr': '>f8', 'fortran_order': False, 'shape': (1,)}", 8, "big-endian");
    refuse_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2)}", 16, "Fortran");
    refuse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk", 4, "after the header");
    /* Size checks: payload too short, too long, empty, absurd. */
    refuse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3,)}", 8,
                  "data is 8 bytes, the header's shape and dtype need 12");
    refuse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 8,
                  "data is 8 bytes, the header's shape and dtype need 4");
    refuse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3)}", 0, "no elements");
    refuse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000)}", 4,
                  "more than");
    refuse_header("{'descr': '<f4', 'fortran_order': False, "
                  "'shape': (99999999999999999999999999,)}",
                  4, "absurdly large");
    refuse_header("{'descr': '<f4', 'fortran_order': False, "
                  "'shape': (65536, 65536, 65536, 65536)}",
                  4, "more than");
    refuse_header("{'descr': '<f4', 'fortran_order': False, "
                  "'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1)}",
                  4, "more than 8 dimensions");
}
END_TEST

START_TEST(test_framing_refusals) {
    uint8_t buf[256];
    char err[512];
    npy_array a;
    const float v = 1.0f;
    size_t n =
        build_npy(buf, sizeof buf, "{'descr': '<f4', 'fortran_order': False, 'shape': ()}", &v, sizeof v);
    ck_assert_int_eq(npy_parse(buf, n, "ok.npy", &a, err, sizeof err), 0);
    npy_free(&a);

    /* Bad magic. */
    buf[1] = 'X';
    ck_assert_int_eq(npy_parse(buf, n, "magic.npy", &a, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "magic.npy") && strstr(err, "magic"), "%s", err);
    buf[1] = 'N';
    /* Unknown version. */
    buf[6] = 4;
    ck_assert_int_eq(npy_parse(buf, n, "v4.npy", &a, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "version 4.0"), "%s", err);
    buf[6] = 1;
    /* Header length past the end of the data. */
    ck_assert_int_eq(npy_parse(buf, 40, "cut.npy", &a, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "truncated inside the header"), "%s", err);
    ck_assert_int_eq(npy_parse(buf, 9, "tiny.npy", &a, err, sizeof err), -1);
    ck_assert_int_eq(npy_parse(NULL, 0, "null.npy", &a, err, sizeof err), -1);
    /* A v2 header claiming 3 GB: refused by the bound, not read. */
    uint8_t v2[16] = {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 0x00, 0x00, 0x00, 0xC0, '{', '}'};
    ck_assert_int_eq(npy_parse(v2, sizeof v2, "hdr.npy", &a, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "over the limit"), "%s", err);
    v2[8] = 4;
    v2[11] = 0;
    ck_assert_int_eq(npy_parse(v2, 12, "v2cut.npy", &a, err, sizeof err), -1);
    ck_assert_int_eq(npy_parse(v2, 11, "v2short.npy", &a, err, sizeof err), -1);
    ck_assert_ptr_null(a.data);
}
END_TEST

/* Every prefix of a good file is refused without a crash. */
START_TEST(test_every_prefix_refused) {
    uint8_t buf[256];
    char err[512];
    npy_array a;
    const float v[4] = {1, 2, 3, 4};
    size_t n = build_npy(buf, sizeof buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", v,
                         sizeof v);
    for (size_t cut = 0; cut < n; cut++) {
        uint8_t *part = malloc(cut ? cut : 1);
        memcpy(part, buf, cut);
        ck_assert_msg(npy_parse(part, cut, "prefix.npy", &a, err, sizeof err) == -1,
                      "prefix of %zu bytes accepted", cut);
        free(part);
    }
    ck_assert_int_eq(npy_parse(buf, n, "prefix.npy", &a, err, sizeof err), 0);
    npy_free(&a);
}
END_TEST

static Suite *npy_suite(void) {
    Suite *s = suite_create("npy");
    TCase *tc = tcase_create("npy");
    tcase_add_test(tc, test_good_f4_f8);
    tcase_add_test(tc, test_parse_from_memory);
    tcase_add_test(tc, test_numpy_written_refusals);
    tcase_add_test(tc, test_crafted_header_refusals);
    tcase_add_test(tc, test_framing_refusals);
    tcase_add_test(tc, test_every_prefix_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return check_run(npy_suite()); }
