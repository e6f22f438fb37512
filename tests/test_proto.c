/* test_proto.c: proto/ request parsing (every refusal names its field and
 * carries the right status), v2 binary framing, and the response bodies. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "proto.h"
#include "check_run.h"

static char *labels[3] = {"cat", NULL, "dog"};
static const proto_model PM = {
    .name = "tiny",
    .pe_type = "comrope-ld",
    .num_channels = 3,
    .num_class = 3,
    .image_size = 16,
    .patch_size = 4,
    .max_tokens = 64,
    .labels = labels,
    .version = "test",
    .isa = "avx2",
    .precision = NULL,
    .precision_requested = NULL,
    .bf16_pays = 0,
    .precision_warning = NULL,
    .model_version = NULL,
};

static uint8_t *png;
static size_t png_len;
static char *png_b64;

static char *b64(const uint8_t *d, size_t n) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = malloc(n / 3 * 4 + 5), *p = o;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v =
            (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
        *p++ = t[v >> 18 & 63];
        *p++ = t[v >> 12 & 63];
        *p++ = i + 1 < n ? t[v >> 6 & 63] : '=';
        *p++ = i + 2 < n ? t[v & 63] : '=';
    }
    *p = '\0';
    return o;
}

static void setup(void) {
    FILE *f = fopen(FIXTURE_DIR "/images/rgb8.png", "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    png_len = (size_t)ftell(f);
    rewind(f);
    png = malloc(png_len);
    ck_assert_int_eq(fread(png, 1, png_len, f), png_len);
    fclose(f);
    png_b64 = b64(png, png_len);
}

static void teardown(void) {
    free(png);
    free(png_b64);
}

/* Formats a body with %s standing for the PNG's base64. */
static char *body_with_image(const char *fmt) {
    size_t n = strlen(fmt) + 2 * strlen(png_b64) + 1;
    char *s = malloc(n);
    snprintf(s, n, fmt, png_b64, png_b64);
    return s;
}

static void expect_v1(const char *body, int status, const char *needle) {
    proto_request req;
    char err[512] = "";
    int rc = v1_parse(&PM, "application/json", (const uint8_t *)body, strlen(body), &req, err, sizeof(err));
    ck_assert_msg(rc == status, "body %.80s: status %d, expected %d (%s)", body, rc, status, err);
    if (needle) ck_assert_msg(strstr(err, needle), "message \"%s\" lacks \"%s\"", err, needle);
    if (rc == 0) proto_request_free(&req);
}

START_TEST(v1_good) {
    char *body = body_with_image("{\"images\": [\"%s\", \"%s\"], \"resolution\": [8, 12], \"fit\": \"crop\","
                                 " \"top_k\": 99, \"return_logits\": true, \"timeout_ms\": 50}");
    proto_request req;
    char err[256];
    ck_assert_int_eq(v1_parse(&PM, "application/json; charset=utf-8", (uint8_t *)body, strlen(body), &req,
                              err, sizeof(err)),
                     0);
    ck_assert_int_eq(req.num_images, 2);
    ck_assert_int_eq(req.images[1].encoded_len, png_len);
    ck_assert_mem_eq(req.images[0].encoded, png, png_len);
    ck_assert_int_eq(req.resolution.h, 8);
    ck_assert_int_eq(req.resolution.w, 12);
    ck_assert_int_eq(req.fit, IMAGE_FIT_CROP);
    ck_assert_int_eq(req.top_k, 3); /* clamped to the class count */
    ck_assert_int_eq(req.return_logits, 1);
    ck_assert_int_eq(req.timeout_ms, 50);
    proto_request_free(&req);
    free(body);

    body = body_with_image("{\"image\": \"data:image/png;base64,%s\", \"resolution\": \"native\"}");
    ck_assert_int_eq(v1_parse(&PM, "application/json", (uint8_t *)body, strlen(body), &req, err, sizeof(err)),
                     0);
    ck_assert_int_eq(req.resolution.native, 1);
    ck_assert_int_eq(req.top_k, 3);
    proto_request_free(&req);
    free(body);

    body = body_with_image("{\"image\": \"%s\", \"resolution\": \"8x16\"}");
    ck_assert_int_eq(v1_parse(&PM, "application/json", (uint8_t *)body, strlen(body), &req, err, sizeof(err)),
                     0);
    ck_assert_int_eq(req.resolution.h, 8);
    ck_assert_int_eq(req.resolution.w, 16);
    ck_assert_int_eq(req.resolution.native, 0);
    proto_request_free(&req);
    free(body);

    body = body_with_image("{\"image\": \"%s\", \"resolution\": 24}");
    ck_assert_int_eq(v1_parse(&PM, "application/json", (uint8_t *)body, strlen(body), &req, err, sizeof(err)),
                     0);
    ck_assert_int_eq(req.resolution.h, 24);
    ck_assert_int_eq(req.resolution.w, 24);
    proto_request_free(&req);
    free(body);

    /* defaults: the training size, resize, top 5 (clamped) */
    body = body_with_image("{\"image\": \"%s\"}");
    ck_assert_int_eq(v1_parse(&PM, "application/json", (uint8_t *)body, strlen(body), &req, err, sizeof(err)),
                     0);
    ck_assert_int_eq(req.resolution.h, 16);
    ck_assert_int_eq(req.fit, IMAGE_FIT_RESIZE);
    ck_assert_int_eq(req.timeout_ms, 0);
    proto_request_free(&req);
    free(body);
}
END_TEST

START_TEST(v1_errors) {
    expect_v1("{", 400, "invalid JSON");
    expect_v1("[1]", 400, "JSON object");
    expect_v1("{}", 400, "image: missing");
    expect_v1("{\"image\": \"AAAA\", \"images\": [\"AAAA\"]}", 400, "not both");
    expect_v1("{\"image\": 5}", 400, "image: expected a base64 string");
    expect_v1("{\"image\": \"\"}", 400, "image: empty");
    expect_v1("{\"image\": \"@@@@\"}", 400, "image: invalid base64 character at offset 0");
    expect_v1("{\"image\": \"A\"}", 400, "image: invalid base64");
    expect_v1("{\"image\": \"AAAAAAAA\"}", 415, "image: not a JPEG or PNG");
    expect_v1("{\"images\": []}", 400, "images: expected a non-empty array");
    expect_v1("{\"images\": \"x\"}", 400, "images: expected");
    expect_v1("{\"bogus\": 1, \"image\": \"AAAA\"}", 400, "bogus: unknown field");
    expect_v1("{\"image\": \"AAAA\", \"image\": \"AAAA\"}", 400, "duplicate");
    char *b;
    b = body_with_image("{\"images\": [\"%s\", \"AAAAAAAA\"]}");
    expect_v1(b, 415, "images[1]: not a JPEG or PNG");
    free(b);
    b = body_with_image("{\"images\": [\"%s\", 3]}");
    expect_v1(b, 400, "images[1]: expected a base64 string");
    free(b);
    expect_v1("{\"image\": \"AAAA\", \"resolution\": 0}", 400, "resolution: must be in");
    expect_v1("{\"image\": \"AAAA\", \"resolution\": [8]}", 400, "resolution: expected");
    expect_v1("{\"image\": \"AAAA\", \"resolution\": [8, -1]}", 400, "resolution: [h, w]");
    expect_v1("{\"image\": \"AAAA\", \"resolution\": \"big\"}", 400, "resolution:");
    expect_v1("{\"image\": \"AAAA\", \"resolution\": 1.5}", 400, "resolution:");
    expect_v1("{\"image\": \"AAAA\", \"fit\": \"stretch\"}", 400, "fit:");
    expect_v1("{\"image\": \"AAAA\", \"fit\": 1}", 400, "fit:");
    expect_v1("{\"image\": \"AAAA\", \"top_k\": 0}", 400, "top_k:");
    expect_v1("{\"image\": \"AAAA\", \"top_k\": \"5\"}", 400, "top_k:");
    expect_v1("{\"image\": \"AAAA\", \"return_logits\": 1}", 400, "return_logits:");
    expect_v1("{\"image\": \"AAAA\", \"timeout_ms\": 0}", 400, "timeout_ms:");
    expect_v1("{\"image\": \"AAAA\", \"timeout_ms\": \"x\"}", 400, "timeout_ms:");
}
END_TEST

/* Each query argument once, as a JSON body's fields: a gateway that
 * checks the first ?resolution= was passed by a second (the last was
 * applied). */
START_TEST(v1_query_once_each) {
    proto_request req;
    char err[256];
    ck_assert_int_eq(v1_parse(&PM, "image/png", png, png_len, &req, err, sizeof(err)), 0);
    char *ok[] = {"top_k", "2", "resolution", "8x12", "fit", NULL, NULL};
    ck_assert_int_eq(v1_parse_query(&PM, &req, ok, err, sizeof(err)), 400); /* fit needs a value */
    ok[5] = "crop";
    ck_assert_int_eq(v1_parse_query(&PM, &req, ok, err, sizeof(err)), 0);
    ck_assert_int_eq(req.top_k, 2);
    ck_assert_int_eq(req.resolution.w, 12);
    char *twice[] = {"resolution", "8", "top_k", "1", "resolution", "native", NULL};
    ck_assert_int_eq(v1_parse_query(&PM, &req, twice, err, sizeof(err)), 400);
    ck_assert_str_eq(err, "resolution: given more than once in the query");
    char *empty[] = {NULL};
    ck_assert_int_eq(v1_parse_query(&PM, &req, empty, err, sizeof(err)), 0);
    ck_assert_int_eq(v1_parse_query(&PM, &req, NULL, err, sizeof(err)), 0);
    proto_request_free(&req);
}
END_TEST

START_TEST(v1_raw_and_query) {
    proto_request req;
    char err[256];
    ck_assert_int_eq(v1_parse(&PM, "image/png", png, png_len, &req, err, sizeof(err)), 0);
    ck_assert_int_eq(req.num_images, 1);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "resolution", "8x12", err, sizeof(err)), 0);
    ck_assert_int_eq(req.resolution.w, 12);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "top_k", "2", err, sizeof(err)), 0);
    ck_assert_int_eq(req.top_k, 2);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "fit", "crop", err, sizeof(err)), 0);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "return_logits", "true", err, sizeof(err)), 0);
    ck_assert_int_eq(req.return_logits, 1);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "return_logits", "0", err, sizeof(err)), 0);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "timeout_ms", "10", err, sizeof(err)), 0);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "top_k", "x", err, sizeof(err)), 400);
    ck_assert_ptr_nonnull(strstr(err, "top_k"));
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "top_k", "-1", err, sizeof(err)), 400);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "resolution", "0x4", err, sizeof(err)), 400);
    ck_assert_ptr_nonnull(strstr(err, "resolution"));
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "fit", NULL, err, sizeof(err)), 400);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "return_logits", "maybe", err, sizeof(err)), 400);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "timeout_ms", "", err, sizeof(err)), 400);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, "colour", "red", err, sizeof(err)), 400);
    ck_assert_ptr_nonnull(strstr(err, "colour"));
    proto_request_free(&req);

    ck_assert_int_eq(v1_parse(&PM, "image/jpeg", (const uint8_t *)"hello", 5, &req, err, sizeof(err)), 415);
    proto_request_free(&req);
    ck_assert_int_eq(v1_parse(&PM, "image/png", png, 0, &req, err, sizeof(err)), 400);
    proto_request_free(&req);
    ck_assert_int_eq(v1_parse(&PM, "text/plain", png, png_len, &req, err, sizeof(err)), 415);
    ck_assert_ptr_nonnull(strstr(err, "Content-Type"));
    ck_assert_int_eq(v1_parse(&PM, NULL, png, png_len, &req, err, sizeof(err)), 415);
    ck_assert_int_eq(v1_parse(&PM, "application/jsonx", png, png_len, &req, err, sizeof(err)), 415);
}
END_TEST

static void expect_v2(const char *body, size_t len, size_t header_len, int status, const char *needle) {
    proto_request req;
    char err[512] = "";
    int rc = v2_parse_infer(&PM, (const uint8_t *)body, len, header_len, &req, err, sizeof(err));
    ck_assert_msg(rc == status, "body %.100s: status %d, expected %d (%s)", body, rc, status, err);
    if (needle) ck_assert_msg(strstr(err, needle), "message \"%s\" lacks \"%s\"", err, needle);
    if (rc == 0) proto_request_free(&req);
}

#define V2(s, status, needle) expect_v2(s, strlen(s), 0, status, needle)

START_TEST(v2_pixel_values) {
    /* nested and flat data give the same pixels */
    const char *nested = "{\"id\": \"r1\", \"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\","
                         " \"shape\": [1, 3, 1, 2], \"data\": [[[[1, 2]], [[3, 4]], [[5, 6.5]]]]}],"
                         " \"outputs\": [{\"name\": \"logits\", \"parameters\": {\"classification\": 9}}]}";
    proto_request req;
    char err[256];
    ck_assert_int_eq(v2_parse_infer(&PM, (const uint8_t *)nested, strlen(nested), 0, &req, err, sizeof(err)),
                     0);
    ck_assert_int_eq(req.num_images, 1);
    ck_assert_int_eq(req.images[0].h, 1);
    ck_assert_int_eq(req.images[0].w, 2);
    ck_assert(req.images[0].pixels[5] == 6.5f);
    ck_assert_str_eq(req.id, "r1");
    ck_assert_int_eq(req.classification_k, 3);
    proto_request_free(&req);

    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [2, 3, 1, 1],"
       " \"data\": [1, 2, 3, 4, 5, 6]}], \"parameters\": {\"resolution\": \"8x8\", \"fit\": \"crop\"}}",
       0, NULL);

    /* binary: JSON header then 6 floats */
    const char *hdr =
        "{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [2, 3, 1, 1],"
        " \"parameters\": {\"binary_data_size\": 24}}], \"outputs\": [{\"name\": \"logits\","
        " \"parameters\": {\"binary_data\": true}}]}";
    size_t hl = strlen(hdr);
    char buf[1024];
    float vals[6] = {1, 2, 3, 4, 5, 6};
    memcpy(buf, hdr, hl);
    memcpy(buf + hl, vals, sizeof(vals));
    ck_assert_int_eq(v2_parse_infer(&PM, (const uint8_t *)buf, hl + 24, hl, &req, err, sizeof(err)), 0);
    ck_assert_int_eq(req.num_images, 2);
    ck_assert(req.images[1].pixels[2] == 6.0f);
    ck_assert_int_eq(req.binary_output, 1);
    proto_request_free(&req);
    expect_v2(buf, hl + 20, hl, 400, "binary_data_size");
    expect_v2(buf, hl + 24, hl + 100, 400, "Inference-Header-Content-Length");
    expect_v2(buf, hl + 24, 0, 400, "invalid JSON"); /* binary bytes without the header */
    /* bytes past the input's binary_data_size: no input claims them */
    memset(buf + hl + 24, 0, 4);
    expect_v2(buf, hl + 28, hl, 400, "the binary section after the JSON header holds 28");
    /* a binary section with no binary_data_size at all */
    const char *js = "{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\","
                     " \"shape\": [1, 3, 1, 1], \"data\": [1, 2, 3]}]}";
    size_t jl = strlen(js);
    memcpy(buf, js, jl);
    memcpy(buf + jl, vals, 8);
    expect_v2(buf, jl + 8, jl, 400, "8 bytes after the JSON header");
    expect_v2(buf, jl, jl, 0, NULL); /* the header's length and no binary section: fine */
}
END_TEST

START_TEST(v2_images) {
    char *b = body_with_image("{\"inputs\": [{\"name\": \"images\", \"datatype\": \"BYTES\", \"shape\": [2],"
                              " \"data\": [\"%s\", \"%s\"]}], \"parameters\": {\"resolution\": 8}}");
    proto_request req;
    char err[256];
    ck_assert_int_eq(v2_parse_infer(&PM, (uint8_t *)b, strlen(b), 0, &req, err, sizeof(err)), 0);
    ck_assert_int_eq(req.num_images, 2);
    ck_assert_int_eq(req.images[1].encoded_len, png_len);
    ck_assert_int_eq(req.resolution.h, 8);
    proto_request_free(&req);
    free(b);

    /* binary BYTES: 4-byte little-endian length, then the file */
    const char *hdr_fmt = "{\"inputs\": [{\"name\": \"images\", \"datatype\": \"BYTES\", \"shape\": [1],"
                          " \"parameters\": {\"binary_data_size\": %zu}}]}";
    char hdr[512];
    snprintf(hdr, sizeof(hdr), hdr_fmt, png_len + 4);
    size_t hl = strlen(hdr);
    uint8_t *buf = malloc(hl + 4 + png_len + 8);
    memcpy(buf, hdr, hl);
    buf[hl] = (uint8_t)(png_len & 0xff);
    buf[hl + 1] = (uint8_t)(png_len >> 8 & 0xff);
    buf[hl + 2] = (uint8_t)(png_len >> 16 & 0xff);
    buf[hl + 3] = 0;
    memcpy(buf + hl + 4, png, png_len);
    ck_assert_int_eq(v2_parse_infer(&PM, buf, hl + 4 + png_len, hl, &req, err, sizeof(err)), 0);
    ck_assert_int_eq(req.images[0].encoded_len, png_len);
    ck_assert_mem_eq(req.images[0].encoded, png, png_len);
    proto_request_free(&req);
    /* length field runs past the section */
    buf[hl] = (uint8_t)((png_len + 1) & 0xff);
    buf[hl + 1] = (uint8_t)((png_len + 1) >> 8 & 0xff);
    expect_v2((char *)buf, hl + 4 + png_len, hl, 400, "runs past");
    /* section shorter than one length */
    snprintf(hdr, sizeof(hdr), hdr_fmt, (size_t)2);
    hl = strlen(hdr);
    memcpy(buf, hdr, hl);
    expect_v2((char *)buf, hl + 2, hl, 400, "ends before element 0");
    /* bytes left over */
    snprintf(hdr, sizeof(hdr), hdr_fmt, png_len + 4 + 3);
    hl = strlen(hdr);
    memcpy(buf, hdr, hl);
    buf[hl] = (uint8_t)(png_len & 0xff);
    buf[hl + 1] = (uint8_t)(png_len >> 8 & 0xff);
    buf[hl + 2] = (uint8_t)(png_len >> 16 & 0xff);
    buf[hl + 3] = 0;
    memcpy(buf + hl + 4, png, png_len);
    expect_v2((char *)buf, hl + 4 + png_len + 3, hl, 400, "left after");
    free(buf);

    V2("{\"inputs\": [{\"name\": \"images\", \"datatype\": \"BYTES\", \"shape\": [1], \"data\": "
       "[\"AAAAAAAA\"]}]}",
       415, "inputs[0].data[0]: not a JPEG or PNG");
    V2("{\"inputs\": [{\"name\": \"images\", \"datatype\": \"BYTES\", \"shape\": [1], \"data\": [\"!!\"]}]}",
       400, "inputs[0].data[0]: invalid base64");
    V2("{\"inputs\": [{\"name\": \"images\", \"datatype\": \"BYTES\", \"shape\": [1], \"data\": [\"\"]}]}",
       400, "empty image");
    V2("{\"inputs\": [{\"name\": \"images\", \"datatype\": \"BYTES\", \"shape\": [2], \"data\": "
       "[\"AAAA\"]}]}",
       400, "expected 2 base64 strings");
    V2("{\"inputs\": [{\"name\": \"images\", \"datatype\": \"FP32\", \"shape\": [1], \"data\": [\"AAAA\"]}]}",
       400, "images must be BYTES");
    V2("{\"inputs\": [{\"name\": \"images\", \"datatype\": \"BYTES\", \"shape\": [1, 2], \"data\": "
       "[\"AAAA\"]}]}",
       400, "inputs[0].shape");
}
END_TEST

START_TEST(v2_errors) {
    V2("{", 400, "invalid JSON");
    V2("7", 400, "invalid JSON");
    V2("[7]", 400, "JSON object");
    V2("{\"inputs\": []}", 400, "inputs: expected an array of one input");
    V2("{}", 400, "inputs:");
    V2("{\"id\": 5, \"inputs\": []}", 400, "id:");
    V2("{\"inputs\": [{\"name\": \"x\"}]}", 400, "inputs[0].name");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"INT8\", \"shape\": [1,3,1,1], \"data\": "
       "[1,2,3]}]}",
       400, "inputs[0].datatype");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1,1,1,1], \"data\": "
       "[1]}]}",
       400, "inputs[0].shape");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1,3,0,1], \"data\": "
       "[]}]}",
       400, "inputs[0].shape");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1,3,1,1], \"data\": "
       "[1,2]}]}",
       400, "inputs[0].data: expected 3 numbers");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1,3,1,1], \"data\": "
       "[1,2,3,4]}]}",
       400, "inputs[0].data");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1,3,1,1], \"data\": "
       "[1,\"a\",3]}]}",
       400, "inputs[0].data");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [4096,3,4096,4096]}]}",
       413, "too large");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1,3,1,1],"
       " \"parameters\": {\"binary_data_size\": 12}}]}",
       400, "needs the Inference-Header-Content-Length");
    /* sizes whose product overflows 64 bits (each within read_shape's 2^24):
     * refused before anything is multiplied past the bound */
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\","
       " \"shape\": [16777216,3,16777216,16777216], \"data\": [1]}]}",
       413, "[16777216, 3, 16777216, 16777216] is too large");
    /* a large shape the data does not fill: refused on the count */
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [4,3,4096,4096],"
       " \"data\": [0]}]}",
       400, "inputs[0].data: expected 201326592 numbers");
    expect_v2("", 0, 0, 400, "the body is empty");
    const char *neg = "{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": "
                      "[1,3,1,1], \"parameters\": {\"binary_data_size\": -1}}]}";
    expect_v2(neg, strlen(neg), strlen(neg), 400, "binary_data_size: expected a non-negative integer");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1,3,1,1],"
       " \"parameters\": 3, \"data\": [1,2,3]}]}",
       400, "inputs[0].parameters");
    const char *px = "\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": "
                     "[1,3,1,1], \"data\": [1,2,3]}]";
    char b[1024];
    snprintf(b, sizeof(b), "{%s, \"parameters\": 1}", px);
    V2(b, 400, "parameters: expected an object");
    snprintf(b, sizeof(b), "{%s, \"parameters\": {\"resolution\": \"huge\"}}", px);
    V2(b, 400, "parameters.resolution");
    snprintf(b, sizeof(b), "{%s, \"parameters\": {\"resolution\": 0}}", px);
    V2(b, 400, "parameters.resolution");
    snprintf(b, sizeof(b), "{%s, \"parameters\": {\"fit\": \"x\"}}", px);
    V2(b, 400, "parameters.fit");
    snprintf(b, sizeof(b), "{%s, \"parameters\": {\"timeout_ms\": -1}}", px);
    V2(b, 400, "parameters.timeout_ms");
    snprintf(b, sizeof(b), "{%s, \"parameters\": {\"binary_data_output\": 1}}", px);
    V2(b, 400, "parameters.binary_data_output");
    snprintf(b, sizeof(b), "{%s, \"parameters\": {\"binary_data_output\": true, \"timeout_ms\": 9}}", px);
    V2(b, 0, NULL);
    snprintf(b, sizeof(b), "{%s, \"outputs\": 1}", px);
    V2(b, 400, "outputs: expected an array");
    snprintf(b, sizeof(b), "{%s, \"outputs\": [{\"name\": \"probs\"}]}", px);
    V2(b, 400, "outputs[0].name");
    snprintf(b, sizeof(b), "{%s, \"outputs\": [{\"name\": \"logits\", \"parameters\": 2}]}", px);
    V2(b, 400, "outputs[0].parameters");
    snprintf(b, sizeof(b),
             "{%s, \"outputs\": [{\"name\": \"logits\", \"parameters\": {\"classification\": 0}}]}", px);
    V2(b, 400, "outputs[0].parameters.classification");
    snprintf(b, sizeof(b),
             "{%s, \"outputs\": [{\"name\": \"logits\", \"parameters\": {\"binary_data\": 2}}]}", px);
    V2(b, 400, "outputs[0].parameters.binary_data");
}
END_TEST

START_TEST(responses) {
    float logits[6] = {0, 2, 1, /* image 2: */ 5, 0, 0};
    int h[2] = {16, 8}, w[2] = {16, 12};
    proto_result res = {.num_images = 2,
                        .num_class = 3,
                        .logits = logits,
                        .h = h,
                        .w = w,
                        .queue_ms = 1.5,
                        .compute_ms = 2.5,
                        .total_ms = 4.0};
    proto_request req;
    proto_request_init(&req, &PM, PROTO_V1);
    req.top_k = 2;
    req.return_logits = 1;
    proto_body body;
    ck_assert_int_eq(v1_response(&PM, &req, &res, &body), 0);
    json_t *o = json_loadb(body.data, body.len, 0, NULL);
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(json_string_value(json_object_get(o, "model")), "tiny");
    json_t *p1 = json_array_get(json_object_get(o, "predictions"), 1);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(p1, "resolution"), 1)), 12);
    json_t *t0 =
        json_array_get(json_object_get(json_array_get(json_object_get(o, "predictions"), 0), "top"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(t0, "index")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(t0, "label")), "1"); /* unnamed: the index */
    json_t *t1 = json_array_get(json_object_get(p1, "top"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(t1, "label")), "cat");
    ck_assert_int_eq(json_array_size(json_object_get(p1, "logits")), 3);
    ck_assert(json_real_value(json_object_get(json_object_get(o, "timing_ms"), "total")) == 4.0);
    json_decref(o);
    proto_body_free(&body);

    proto_request_init(&req, &PM, PROTO_V2);
    ck_assert_int_eq(v2_response(&PM, &req, &res, &body), 0);
    ck_assert_uint_eq(body.len, body.json_len);
    o = json_loadb(body.data, body.len, 0, NULL);
    json_t *out = json_array_get(json_object_get(o, "outputs"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(out, "datatype")), "FP32");
    ck_assert_int_eq(json_array_size(json_object_get(out, "data")), 6);
    json_decref(o);
    proto_body_free(&body);

    req.classification_k = 2;
    req.id = strdup("abc");
    ck_assert_int_eq(v2_response(&PM, &req, &res, &body), 0);
    o = json_loadb(body.data, body.len, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(o, "id")), "abc");
    out = json_array_get(json_object_get(o, "outputs"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(out, "datatype")), "BYTES");
    const char *first = json_string_value(json_array_get(json_object_get(out, "data"), 0));
    ck_assert_msg(strstr(first, ":1:1") != NULL, "%s", first);
    const char *third = json_string_value(json_array_get(json_object_get(out, "data"), 2));
    ck_assert_msg(strstr(third, ":0:cat") != NULL, "%s", third);
    json_decref(o);
    proto_body_free(&body);

    req.classification_k = 0;
    req.binary_output = 1;
    ck_assert_int_eq(v2_response(&PM, &req, &res, &body), 0);
    ck_assert_uint_eq(body.len, body.json_len + 24);
    ck_assert_mem_eq(body.data + body.json_len, logits, 24);
    o = json_loadb(body.data, body.json_len, 0, NULL);
    out = json_array_get(json_object_get(o, "outputs"), 0);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(out, "parameters"), "binary_data_size")), 24);
    ck_assert_ptr_null(json_object_get(out, "data"));
    json_decref(o);
    proto_body_free(&body);

    req.classification_k = 1;
    ck_assert_int_eq(v2_response(&PM, &req, &res, &body), 0);
    uint32_t n0;
    memcpy(&n0, body.data + body.json_len, 4);
    ck_assert_uint_gt(n0, 4);
    ck_assert_uint_eq(body.len, body.json_len + 4 + n0 + 4 + (body.len - body.json_len - 8 - n0));
    proto_body_free(&body);
    proto_request_free(&req);

    const proto_model *one[] = {&PM};
    char *s = v1_models_json(one, 1);
    ck_assert_ptr_nonnull(strstr(s, "\"labels\":[\"cat\",\"1\",\"dog\"]"));
    free(s);
    /* every model served, in the order given */
    proto_model other = PM;
    other.name = "other";
    const proto_model *two[] = {&PM, &other};
    s = v1_models_json(two, 2);
    json_t *root = json_loads(s, 0, NULL);
    json_t *models = json_object_get(root, "models");
    ck_assert_int_eq(json_array_size(models), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(models, 1), "name")), "other");
    json_decref(root);
    free(s);
    s = v2_model_json(&PM, NULL, 0);
    ck_assert_ptr_nonnull(strstr(s, "\"shape\":[-1,3,-1,-1]"));
    ck_assert_ptr_nonnull(strstr(s, "\"parameters\":{\"isa\":\"avx2\"}"));
    free(s);
    /* the precision beside the ISA; a warning only when bf16 was asked
     * where it does not pay */
    proto_model pm = PM;
    pm.precision = "fp32";
    pm.precision_requested = "auto";
    s = v2_model_json(&pm, NULL, 0);
    ck_assert_ptr_nonnull(strstr(s, "\"parameters\":{\"isa\":\"avx2\",\"precision\":\"fp32\","
                                    "\"precision_requested\":\"auto\",\"bf16_pays\":false}"));
    free(s);
    pm.precision = pm.precision_requested = "bf16";
    pm.precision_warning = "Intel without AMX";
    s = v2_model_json(&pm, NULL, 0);
    ck_assert_ptr_nonnull(strstr(s, "\"bf16_pays\":false,\"precision_warning\":\"Intel without AMX\"}"));
    free(s);
    /* bf16: who runs its GEMMs */
    pm.precision_warning = NULL;
    pm.gemm_backend = "amx";
    s = v2_model_json(&pm, NULL, 0);
    ck_assert_ptr_nonnull(strstr(s, "\"bf16_pays\":false,\"gemm_backend\":\"amx\"}"));
    free(s);
    /* every ready version of the model, as given */
    const char *versions[] = {"3", "2"};
    s = v2_model_json(&PM, versions, 2);
    ck_assert_ptr_nonnull(strstr(s, "\"versions\":[\"3\",\"2\"]"));
    free(s);
    s = v2_server_json(&PM);
    ck_assert_ptr_nonnull(strstr(s, "binary_tensor_data"));
    /* README lists it, and POST /v2/repository/index answers in every mode */
    ck_assert_ptr_nonnull(strstr(s, "\"statistics\",\"model_repository\"]"));
    free(s);
    s = proto_error_json("bad \"x\"");
    ck_assert_str_eq(s, "{\"error\":\"bad \\\"x\\\"\"}");
    free(s);
}
END_TEST

START_TEST(base64_and_top_k) {
    uint8_t *out;
    size_t n;
    char err[128];
    ck_assert_int_eq(base64_decode("aGVsbG8=", 8, &out, &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(n, 5);
    ck_assert_mem_eq(out, "hello", 5);
    free(out);
    ck_assert_int_eq(base64_decode("aGVsbG8", 7, &out, &n, err, sizeof(err)), 0); /* unpadded */
    ck_assert_uint_eq(n, 5);
    free(out);
    ck_assert_int_eq(base64_decode("aGV*bG8=", 8, &out, &n, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "offset 3"));
    float l[4] = {1, 3, 3, 0};
    int order[2];
    double p[2];
    proto_top_k(l, 4, 2, order, p);
    ck_assert_int_eq(order[0], 1); /* ties go to the lower index */
    ck_assert_int_eq(order[1], 2);
    ck_assert(p[0] > 0.4 && p[0] < 0.5);
}
END_TEST

static const float *sort_logits;
static int cmp_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_logits[i] != sort_logits[j]) return sort_logits[i] > sort_logits[j] ? -1 : 1;
    return i - j;
}

/* top_k = K on a large K: the old selection was O(k^2 K) (hours here; the
 * test's time limit fails it), the heap is O(K log k). Also checked
 * against a full sort, with ties, for several k. */
START_TEST(top_k_large) {
    int K = 30000;
    float *l = malloc(sizeof(float) * (size_t)K);
    int *order = malloc(sizeof(int) * (size_t)K), *ref = malloc(sizeof(int) * (size_t)K);
    double *p = malloc(sizeof(double) * (size_t)K);
    for (int i = 0; i < K; i++) l[i] = (float)((i * 7919) % 1009) / 100.0f; /* many ties */
    for (int i = 0; i < K; i++) ref[i] = i;
    sort_logits = l;
    qsort(ref, (size_t)K, sizeof(int), cmp_desc);
    int ks[] = {1, 2, 5, 1000, K};
    for (size_t t = 0; t < sizeof(ks) / sizeof(ks[0]); t++) {
        proto_top_k(l, K, ks[t], order, p);
        for (int i = 0; i < ks[t]; i++) ck_assert_int_eq(order[i], ref[i]);
        for (int i = 1; i < ks[t]; i++) ck_assert(p[i] <= p[i - 1]);
    }
    free(l);
    free(order);
    free(ref);
    free(p);
}
END_TEST

/* Pixels that are not finite get 400 naming the input, in JSON (a number
 * past float32's range) and in the binary section (NaN, Inf). */
START_TEST(non_finite_pixels) {
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1, 3, 1, 1],"
       " \"data\": [1, 1e39, 3]}]}",
       400, "inputs[0].data: value 1 (image 0) is not a finite float32");
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1, 3, 1, 1],"
       " \"data\": [1, -3.5e38, 3]}]}",
       400, "not a finite float32");
    const char *hdr =
        "{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [2, 3, 1, 1],"
        " \"parameters\": {\"binary_data_size\": 24}}]}";
    size_t hl = strlen(hdr);
    char buf[512];
    float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int k = 0; k < 3; k++) {
        float vals[6] = {1, 2, 3, 4, 5, 6};
        vals[4] = bad[k];
        memcpy(buf, hdr, hl);
        memcpy(buf + hl, vals, sizeof(vals));
        expect_v2(buf, hl + 24, hl, 400, "inputs[0].binary data: value 4 (image 1) is not a finite float32");
    }
}
END_TEST

/* max-request-images is checked as soon as the count is known, before any
 * image is decoded: a body of 3 images, the last not even base64, under a
 * limit of 2 gets the 413 naming the limit, not the 400 for the image (the
 * daemon would otherwise decode and copy up to max-json-body-bytes of
 * images it is about to refuse). The same bodies within the limit reach
 * the image and get its 400. */
START_TEST(max_images_before_decoding) {
    proto_model pm = PM;
    char err[512];
    proto_request req;
    char *v1 = body_with_image("{\"images\": [\"%s\", \"%s\", \"!!\"]}");
    const char *v2 = "{\"inputs\": [{\"name\": \"images\", \"datatype\": \"BYTES\", \"shape\": [3],"
                     " \"data\": [\"!!\", \"!!\", \"!!\"]}]}";
    const char *v2px = "{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\","
                       " \"shape\": [3, 3, 1, 1], \"data\": [1, 2, 3]}]}"; /* 9 numbers needed */
    for (int max = 2; max <= 3; max++) {
        pm.max_images = max;
        int want = max == 2 ? 413 : 400;
        int rc = v1_parse(&pm, "application/json", (const uint8_t *)v1, strlen(v1), &req, err, sizeof(err));
        ck_assert_msg(rc == want, "v1, max %d: %d (%s)", max, rc, err);
        rc = v2_parse_infer(&pm, (const uint8_t *)v2, strlen(v2), 0, &req, err, sizeof(err));
        ck_assert_msg(rc == want, "v2 images, max %d: %d (%s)", max, rc, err);
        if (max == 2) ck_assert_str_eq(err, "the request has 3 images, more than max-request-images (2)");
        rc = v2_parse_infer(&pm, (const uint8_t *)v2px, strlen(v2px), 0, &req, err, sizeof(err));
        ck_assert_msg(rc == want, "v2 pixel_values, max %d: %d (%s)", max, rc, err);
        if (max == 2) ck_assert_msg(strstr(err, "more than max-request-images (2)"), "%s", err);
    }
    free(v1);
    /* more images than the parsers take at all (4096) and than the limit:
     * the limit's 413, for BYTES as for pixel_values (BYTES gave its shape
     * 400, so 100 images got 413 and 5000 a 400) */
    pm.max_images = 64;
    const char *many[] = {
        "{\"inputs\": [{\"name\": \"images\", \"datatype\": \"BYTES\", \"shape\": [5000], \"data\": []}]}",
        "{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [5000, 3, 1, 1],"
        " \"data\": []}]}",
    };
    for (int i = 0; i < 2; i++) {
        int rc = v2_parse_infer(&pm, (const uint8_t *)many[i], strlen(many[i]), 0, &req, err, sizeof(err));
        ck_assert_msg(rc == 413 && strstr(err, "has 5000 images, more than max-request-images (64)"),
                      "%s: %d (%s)", i ? "pixel_values" : "BYTES", rc, err);
    }
    /* within the limit (none), past what the parsers take: the shape's 400 / 413 as before */
    pm.max_images = 0;
    ck_assert_int_eq(
        v2_parse_infer(&pm, (const uint8_t *)many[0], strlen(many[0]), 0, &req, err, sizeof(err)), 400);
    ck_assert_msg(strstr(err, "N in [1, 4096]"), "%s", err);
}
END_TEST

/* A body without a Content-Type: what it shows. */
START_TEST(sniff_media_type) {
    const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0};
    const uint8_t jpeg[] = {0xff, 0xd8, 0xff, 0xe0, 0, 0x10};
    ck_assert_str_eq(v1_sniff_media_type((const uint8_t *)"{\"image\":1}", 11), "application/json");
    ck_assert_str_eq(v1_sniff_media_type((const uint8_t *)" \r\n\t{", 5), "application/json");
    ck_assert_str_eq(v1_sniff_media_type(png, sizeof(png)), "image/png");
    ck_assert_str_eq(v1_sniff_media_type(jpeg, sizeof(jpeg)), "image/jpeg");
    ck_assert_ptr_null(v1_sniff_media_type((const uint8_t *)"[1,2]", 5)); /* JSON, but no request */
    ck_assert_ptr_null(v1_sniff_media_type((const uint8_t *)"GIF89a", 6));
    ck_assert_ptr_null(v1_sniff_media_type((const uint8_t *)"   ", 3));
    ck_assert_ptr_null(v1_sniff_media_type(NULL, 0));
}
END_TEST

/* Triton's model configuration and statistics shapes. */
START_TEST(v2_config_and_stats) {
    proto_model pm = PM;
    proto_batching b = {.max_batch_size = 8,
                        .max_queue_delay_us = 20000,
                        .max_queue_size = 256,
                        .workers = 2,
                        .policy_all = 1};
    char *s = v2_model_config_json(&pm, &b);
    json_t *o = json_loads(s, 0, NULL);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "max_batch_size")), 8);
    json_t *in = json_array_get(json_object_get(o, "input"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(in, "name")), "pixel_values");
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(in, "dims"), 0)), pm.num_channels);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(in, "dims"), 1)), -1);
    ck_assert(json_is_true(json_object_get(json_array_get(json_object_get(o, "input"), 1), "optional")));
    ck_assert_int_eq(json_integer_value(json_array_get(
                         json_object_get(json_array_get(json_object_get(o, "output"), 0), "dims"), 0)),
                     pm.num_class);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(o, "dynamic_batching"),
                                                        "max_queue_delay_microseconds")),
                     20000);
    /* the version policy in force, Triton's shape (repository.sh checks
     * specific and latest through the daemon) */
    ck_assert(json_is_object(json_object_get(json_object_get(o, "version_policy"), "all")));
    json_decref(o);
    free(s);
    proto_batch_stat per[2] = {{1, 3, 300}, {4, 1, 900}};
    proto_stats st = {
        .last_inference_ms = 1234,
        .inference_count = 7,
        .execution_count = 4,
        .success = {5, 5000},
        .fail = {1, 10},
        .queue = {5, 50},
        .compute_input = {4, 0},
        .compute_infer = {4, 1200},
        .compute_output = {4, 0},
        .num_batch_sizes = 2,
        .batch_stats = per,
        .memory_bytes = (uint64_t)5 << 30,
    };
    /* two versions of one model: one entry each, in the order given */
    proto_model pm2 = pm;
    pm2.model_version = "2";
    proto_stats sts[2] = {st, st};
    sts[1].inference_count = 9;
    const proto_model *pms[2] = {&pm, &pm2};
    s = v2_model_stats_json(pms, sts, 2);
    o = json_loads(s, 0, NULL);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(json_array_size(json_object_get(o, "model_stats")), 2);
    json_t *m2 = json_array_get(json_object_get(o, "model_stats"), 1);
    ck_assert_str_eq(json_string_value(json_object_get(m2, "version")), "2");
    ck_assert_int_eq(json_integer_value(json_object_get(m2, "inference_count")), 9);
    json_t *m = json_array_get(json_object_get(o, "model_stats"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(m, "version")), "1");
    ck_assert_int_eq(json_integer_value(json_object_get(m, "inference_count")), 7);
    ck_assert_int_eq(json_integer_value(json_object_get(m, "execution_count")), 4);
    json_t *inf = json_object_get(m, "inference_stats");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(inf, "success"), "ns")), 5000);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(inf, "compute_infer"), "ns")), 1200);
    json_t *b4 = json_array_get(json_object_get(m, "batch_stats"), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(b4, "batch_size")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(b4, "compute_infer"), "ns")), 900);
    /* Triton's memory_usage: one CPU entry, what the version holds */
    json_t *mem = json_object_get(m, "memory_usage");
    ck_assert_int_eq(json_array_size(mem), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(mem, 0), "type")), "CPU");
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(mem, 0), "id")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(mem, 0), "byte_size")),
                     (json_int_t)5 << 30);
    json_decref(o);
    /* tritonclient's fields, byte for byte as they were when the sizes came
     * in two arrays */
    ck_assert_ptr_nonnull(
        strstr(s, "\"batch_stats\":[{\"batch_size\":1,\"compute_input\":{\"count\":3,\"ns\":0},"
                  "\"compute_infer\":{\"count\":3,\"ns\":300},\"compute_output\":{\"count\":3,"
                  "\"ns\":0}},{\"batch_size\":4,"));
    free(s);
    s = v2_model_stats_json(NULL, NULL, 0); /* no model loaded: an empty list */
    ck_assert_str_eq(s, "{\"model_stats\":[]}");
    free(s);
}
END_TEST

/* Every JSON body is valid JSON: an error quoting client bytes that are not
 * UTF-8 (or cut inside a character), a label longer than any buffer, and
 * logits that are not finite (refused as a whole, never a short array). */
START_TEST(bodies_are_valid_json) {
    const char *msgs[] = {"no such endpoint: /\xff\xfe", "fit: not \"\xc3\"", "x \xed\xa0\x80 y",
                          "\xf4\x90\x80\x80", "caf\xc3\xa9 ok"};
    for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
        char *s = proto_error_json(msgs[i]);
        ck_assert_ptr_nonnull(s);
        json_t *o = json_loads(s, 0, NULL);
        ck_assert_msg(o != NULL, "invalid JSON: %s", s);
        ck_assert_ptr_nonnull(json_string_value(json_object_get(o, "error")));
        json_decref(o);
        free(s);
    }
    char *s = proto_error_json("caf\xc3\xa9 ok");
    ck_assert_str_eq(s, "{\"error\":\"caf\xc3\xa9 ok\"}"); /* valid UTF-8 kept as is */
    free(s);

    char long_label[2000] = {0};
    for (int i = 0; i + 2 < (int)sizeof(long_label); i += 2) memcpy(long_label + i, "\xc3\xa9", 2);
    long_label[sizeof(long_label) - 1] = '\0';
    char *many[3] = {long_label, long_label, NULL};
    proto_model pm = PM;
    pm.labels = many;
    float logits[6] = {0, 2, 1, 5, 0, 0};
    int h[2] = {16, 16}, w[2] = {16, 16};
    proto_result res = {.num_images = 2,
                        .num_class = 3,
                        .logits = logits,
                        .h = h,
                        .w = w,
                        .queue_ms = 1,
                        .compute_ms = 1,
                        .total_ms = 1};
    proto_request req;
    proto_body body;
    proto_request_init(&req, &pm, PROTO_V2);
    req.classification_k = 3;
    ck_assert_int_eq(v2_response(&pm, &req, &res, &body), 0);
    json_t *o = json_loadb(body.data, body.len, 0, NULL);
    ck_assert_ptr_nonnull(o);
    json_t *out = json_array_get(json_object_get(o, "outputs"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(out, "data")), 6);
    json_decref(o);
    proto_body_free(&body);

    logits[4] = NAN;
    req.classification_k = 0;
    ck_assert_int_eq(v2_response(&pm, &req, &res, &body), -1);
    proto_request_free(&req);
    proto_request_init(&req, &pm, PROTO_V1);
    req.return_logits = 1;
    ck_assert_int_eq(v1_response(&pm, &req, &res, &body), -1);
    proto_request_free(&req);
}
END_TEST

/* Error messages quote client bytes: whatever they are, the body is JSON
 * (found by tests/fuzz/fuzz_query, corpus/fuzz_query/crash-invalid-utf8). */
START_TEST(error_body_is_json) {
    proto_request req;
    char err[512];
    json_error_t je;
    const char *key[] = {"res\xff\xffolution", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\xc0\xaf"};
    for (size_t i = 0; i < sizeof(key) / sizeof(key[0]); i++) {
        proto_request_init(&req, &PM, PROTO_V1);
        ck_assert_int_eq(v1_parse_query_arg(&PM, &req, key[i], "1", err, sizeof(err)), 400);
        char *body = proto_error_json(err);
        ck_assert_ptr_nonnull(body);
        json_t *j = json_loads(body, 0, &je);
        ck_assert_msg(j != NULL, "invalid JSON for key %zu: %s", i, body);
        ck_assert_ptr_nonnull(
            strstr(json_string_value(json_object_get(j, "error")), "unknown query argument"));
        json_decref(j);
        free(body);
        proto_request_free(&req);
    }
    /* a 2-byte character cut in half by the message's %.64s */
    char long_key[80];
    memset(long_key, 'k', 63);
    memcpy(long_key + 63, "\xc3\xa9", 3);
    proto_request_init(&req, &PM, PROTO_V1);
    ck_assert_int_eq(v1_parse_query_arg(&PM, &req, long_key, "1", err, sizeof(err)), 400);
    char *body = proto_error_json(err);
    ck_assert_ptr_nonnull(body);
    json_t *j = json_loads(body, 0, &je);
    ck_assert_ptr_nonnull(j);
    json_decref(j);
    free(body);
    proto_request_free(&req);
    /* valid UTF-8 is kept as it is */
    body = proto_error_json("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    j = json_loads(body, 0, &je);
    ck_assert_str_eq(json_string_value(json_object_get(j, "error")),
                     "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    json_decref(j);
    free(body);
}
END_TEST

/* A v2 body of n bytes: pixel_values [1, 3, h, w] of zeros, nested as
 * the shape (rows of w one-digit values), h as large as fits in n. */
static char *nested_zeros(size_t n, int w, size_t *len) {
    const char *head = "{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": "
                       "[1, 3, %8d, %d], \"data\": [";
    size_t row = 2 * (size_t)w + 2; /* "[0,...,0]," */
    int h = (int)((n - strlen(head) - 32) / 3 / row);
    char *b = malloc(n + 64), *p = b;
    p += sprintf(p, head, h, w);
    for (int c = 0; c < 3; c++) {
        *p++ = '[';
        for (int y = 0; y < h; y++) {
            *p++ = '[';
            for (int x = 0; x < w; x++) p += sprintf(p, x ? ",0" : "0");
            *p++ = ']';
            if (y + 1 < h) *p++ = ',';
        }
        *p++ = ']';
        if (c < 2) *p++ = ',';
    }
    p += sprintf(p, "]}]}");
    *len = (size_t)(p - b);
    return b;
}

START_TEST(json_meter) {
    proto_request req;
    char err[512];
    proto_json_meter m;
    /* 64 KiB of [{},{},...]: some 80 bytes per byte once parsed. The meter
     * stops jansson at its max, the parse fails, and all of it is freed. */
    size_t n = 65536;
    char *body = malloc(n + 1);
    const char *head = "{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": "
                       "[1, 3, 4, 4], \"data\": [";
    size_t len = (size_t)sprintf(body, "%s", head);
    while (len + 8 < n) len += (size_t)sprintf(body + len, "{},");
    len += (size_t)sprintf(body + len - 1, "]}]}") - 1;
    proto_json_meter_begin(&m, 32 * len);
    int rc = v2_parse_infer(&PM, (const uint8_t *)body, len, 0, &req, err, sizeof(err));
    proto_json_meter_end();
    ck_assert_int_ne(rc, 0);
    ck_assert_int_eq(m.over, 1);
    ck_assert_uint_eq(m.held, 0);
    /* stopped within a KiB of JSON past the max: some 350 {} */
    ck_assert_uint_le(m.peak, 32 * len + 350 * 300);
    /* unmetered, the same body holds far more: the meter measured it */
    proto_json_meter_begin(&m, (size_t)1 << 40);
    ck_assert_int_ne(v2_parse_infer(&PM, (const uint8_t *)body, len, 0, &req, err, sizeof(err)), 0);
    proto_json_meter_end();
    ck_assert_int_eq(m.over, 0);
    ck_assert_uint_gt(m.peak, 60 * len);
    ck_assert_uint_eq(m.held, 0);
    free(body);
    /* Tensors fit within 32 x their size down to rows of 4 one-digit values
     * (about 26x; README, Limits), and a parse holds nothing once it
     * returns. */
    for (int w = 4; w <= 64; w *= 2) {
        body = nested_zeros(1 << 18, w, &len);
        proto_json_meter_begin(&m, 32 * len);
        rc = v2_parse_infer(&PM, (const uint8_t *)body, len, 0, &req, err, sizeof(err));
        proto_json_meter_end();
        ck_assert_msg(rc == 0 && !m.over, "rows of %d: %d %s, peak %zu for %zu bytes", w, rc, err, m.peak,
                      len);
        ck_assert_uint_eq(m.held, 0);
        proto_request_free(&req);
        free(body);
    }
    /* no meter on: nothing counted */
    V2("{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1, 3, 1, 1],"
       " \"data\": [1, 2, 3]}]}",
       0, NULL);
    ck_assert_uint_eq(m.held, 0);
    ck_assert_int_eq(m.over, 0);
}
END_TEST

/* Parses body (v1 JSON, else v2) under a meter of each max from 0 to what
 * it holds unmetered: stopped anywhere, the parse fails or gives what it
 * gives unmetered, and holds nothing once it returns. */
static void meter_every_max(int v2, const char *body) {
    proto_json_meter m;
    proto_request req;
    char err[512] = "", err0[512];
    size_t len = strlen(body);
#define PARSE()                                                                                              \
    (v2 ? v2_parse_infer(&PM, (const uint8_t *)body, len, 0, &req, err, sizeof(err))                         \
        : v1_parse(&PM, "application/json", (const uint8_t *)body, len, &req, err, sizeof(err)))
    proto_json_meter_begin(&m, (size_t)1 << 40);
    int rc0 = PARSE();
    proto_json_meter_end();
    snprintf(err0, sizeof(err0), "%s", err);
    if (!rc0) proto_request_free(&req);
    size_t peak = m.peak;
    for (size_t max = 0; max <= peak; max++) {
        proto_json_meter_begin(&m, max);
        int rc = PARSE();
        proto_json_meter_end();
        ck_assert_msg(m.over || (rc == rc0 && (rc0 == 0 || strcmp(err, err0) == 0)),
                      "max %zu: %d %s, unmetered %d %s", max, rc, err, rc0, err0);
        /* (glibc's usable sizes vary a little with the heap's state) */
        ck_assert_msg(m.over || max > peak / 2, "max %zu of %zu: not over", max, peak);
        ck_assert_msg(m.held == 0, "max %zu: %zu bytes held once parsed", max, m.held);
        if (!rc) proto_request_free(&req);
    }
#undef PARSE
}

/* A meter stops a parse anywhere without harm. It refused jansson's
 * allocations at first: the lexer drops a character it cannot append, a
 * string whose closing quote was dropped was copied past its buffer
 * (ASan: SEGV in jansson at max 401 of the first body; the daemon's ASan
 * build died on one v2 body of 1.8 MB). */
START_TEST(json_meter_stops_anywhere) {
    char *b = body_with_image("{\"images\": [\"%s\", \"%s\"], \"resolution\": [8, 12], \"top_k\": 2,"
                              " \"timeout_ms\": 50, \"id\": \"r-1\"}");
    meter_every_max(0, b);
    free(b);
    b = body_with_image(
        "{\"id\": \"\\u00e9\\ud83d\\ude00\", \"inputs\": [{\"name\": \"images\", \"datatype\": "
        "\"BYTES\", \"shape\": [2], \"data\": [\"%s\", \"%s\"]}], \"parameters\": {\"top_k\": 2}}");
    meter_every_max(1, b);
    free(b);
    meter_every_max(
        1, "{\"inputs\": [{\"name\": \"pixel_values\", \"datatype\": \"FP32\", \"shape\": [1, 3, 2, 2],"
           " \"data\": [[[1.5, 2], [3, -4e-3]], [[5, 6], [7, 8]], [[9, 10], [11, 12345678901234]]]}],"
           " \"parameters\": {\"x\": [null, true, false, {\"y\": \"a\\nb\"}]}}");
    meter_every_max(0,
                    "{\"image\": [1, {\"a\": \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\"}, \"c\"]} trailing");
}
END_TEST

int main(void) {
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("proto");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, v1_good);
    tcase_add_test(tc, v1_errors);
    tcase_add_test(tc, v1_raw_and_query);
    tcase_add_test(tc, v1_query_once_each);
    tcase_add_test(tc, v2_pixel_values);
    tcase_add_test(tc, v2_images);
    tcase_add_test(tc, v2_errors);
    tcase_add_test(tc, responses);
    tcase_add_test(tc, base64_and_top_k);
    tcase_add_test(tc, top_k_large);
    tcase_add_test(tc, non_finite_pixels);
    tcase_add_test(tc, max_images_before_decoding);
    tcase_add_test(tc, bodies_are_valid_json);
    tcase_add_test(tc, error_body_is_json);
    tcase_add_test(tc, sniff_media_type);
    tcase_add_test(tc, v2_config_and_stats);
    tcase_add_test(tc, json_meter);
    tcase_add_test(tc, json_meter_stops_anywhere);
    suite_add_tcase(s, tc);
    return check_run(s);
}
