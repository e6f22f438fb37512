/* test_loader.c: every refusal of the checkpoint loader.
 *
 * Each test copies a good fixture checkpoint into a temporary directory,
 * breaks one thing (the header length, an offset, a shape, a dtype, a
 * tensor, a config key) and checks that vit_load fails with a message that
 * names what is wrong, without crashing (ASan and valgrind watch the rest). */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "image.h"
#include "safetensors.h"
#include "small_file.h"
#include "vit.h"
#include "check_run.h"

#define GOOD FIXTURE_DIR "/parity/comrope_ap_b2"

static char tmpdir[256];

static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    uint8_t *buf = malloc((size_t)n + 1);
    ck_assert(fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static void spit(const char *name, const void *data, size_t len) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    ck_assert(f != NULL);
    ck_assert(fwrite(data, 1, len, f) == len);
    fclose(f);
}

/* A fresh copy of the good checkpoint in tmpdir. */
static void setup(void) {
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/comrope_test_loader_XXXXXX");
    ck_assert(mkdtemp(tmpdir) != NULL);
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char path[512];
        size_t len;
        snprintf(path, sizeof(path), "%s/%s", GOOD, files[i]);
        uint8_t *d = slurp(path, &len);
        spit(files[i], d, len);
        free(d);
    }
}

static void teardown(void) {
    char path[512];
    const char *files[] = {"config.json", "model.safetensors", "preprocessor_config.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpdir, files[i]);
        if (unlink(path) != 0) rmdir(path); /* a directory in a file's place */
    }
    rmdir(tmpdir);
}

/* vit_load must fail and its message contain `needle`. */
/* vit_load refuses the directory: -1, *out set to NULL (it starts as a
 * pointer that is not NULL, so a loader that leaves it alone is caught),
 * and a message that names the problem. */
static void expect_refusal(const char *needle) {
    static char not_a_model;
    vit_model *m = (vit_model *)(void *)&not_a_model;
    char err[1024] = "";
    int rc = vit_load(tmpdir, NULL, &m, err, sizeof(err));
    ck_assert_msg(rc == -1, "loaded although it should not (wanted \"%s\")", needle);
    ck_assert_msg(m == NULL, "refused (\"%s\") but the model pointer is not NULL", err);
    ck_assert_msg(err[0] != '\0', "refused without a message (wanted \"%s\")", needle);
    ck_assert_msg(strstr(err, needle) != NULL, "message \"%s\" does not mention \"%s\"", err, needle);
}

/* Rewrites model.safetensors with its header passed through `edit`. */
static void edit_header(void (*edit)(json_t *header)) {
    char path[512];
    size_t len;
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    uint8_t *d = slurp(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | d[i];
    json_error_t jerr;
    json_t *h = json_loadb((const char *)d + 8, hlen, 0, &jerr);
    ck_assert(h != NULL);
    edit(h);
    char *text = json_dumps(h, JSON_COMPACT);
    size_t tl = strlen(text), padded = (tl + 7) / 8 * 8;
    size_t out_len = 8 + padded + (len - 8 - hlen);
    uint8_t *out = malloc(out_len);
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(out + 8, text, tl);
    memset(out + 8 + tl, ' ', padded - tl);
    memcpy(out + 8 + padded, d + 8 + hlen, len - 8 - hlen);
    spit("model.safetensors", out, out_len);
    free(out);
    free(text);
    json_decref(h);
    free(d);
}

/* Rewrites config.json with `key` set to `value` (NULL: removed). */
static void edit_config(const char *key, json_t *value) {
    char path[512];
    snprintf(path, sizeof(path), "%s/config.json", tmpdir);
    json_error_t jerr;
    json_t *c = json_load_file(path, 0, &jerr);
    ck_assert(c != NULL);
    if (value) json_object_set_new(c, key, value);
    else json_object_del(c, key);
    ck_assert(json_dump_file(c, path, JSON_INDENT(2)) == 0);
    json_decref(c);
}

#define QW "vision_model.encoder.layers.0.self_attn.q_proj.weight"
#define KW "vision_model.encoder.layers.0.self_attn.k_proj.weight"

START_TEST(test_good_checkpoint_loads) {
    vit_model *m = NULL;
    char err[512];
    ck_assert_msg(vit_load(tmpdir, NULL, &m, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(m->cfg.custom_pe_type, PE_COMROPE_AP);
    vit_free(m);
}
END_TEST

START_TEST(test_truncated_file) {
    char path[512];
    size_t len;
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    uint8_t *d = slurp(path, &len);
    spit("model.safetensors", d, len / 2);
    expect_refusal("outside the data section");
    spit("model.safetensors", d, 5);
    expect_refusal("truncated");
    free(d);
}
END_TEST

/* A checkpoint truncated in place while it loads (`cp new old` over it, a
 * rescan racing the copy): the read past the new end fails the load with a
 * message, it does not raise SIGBUS (it did while the file was mmap'd: the
 * whole daemon died). */
START_TEST(test_truncated_while_loading) {
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    safetensors_file f;
    ck_assert_msg(safetensors_open(path, &f, err, sizeof(err)) == 0, "%s", err);
    ck_assert(truncate(path, 4096) == 0);
    int failed = 0;
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        float *dst = malloc(sizeof(float) * (size_t)(t->count ? t->count : 1));
        ck_assert(dst != NULL);
        if (safetensors_take(&f, t->name, t->ndim, t->shape, dst, err, sizeof(err)) != 0) {
            ck_assert_msg(strstr(err, "ends early") != NULL, "%s", err);
            failed = 1;
        }
        free(dst);
    }
    ck_assert_msg(failed, "every tensor read from a file cut to 4096 bytes");
    safetensors_close(&f);
}
END_TEST

/* A checkpoint rewritten in place at its size (cp over it, one of the same
 * layout) while it loads: every read succeeds, half of them of the other
 * file, so the change itself fails the load. The write's mtime is set
 * apart by hand: two writes in one clock tick share one. */
START_TEST(test_rewritten_while_loading) {
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    safetensors_file f;
    ck_assert_msg(safetensors_open(path, &f, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(safetensors_check_unchanged(&f, err, sizeof(err)) == 0, "%s", err);
    int fd = open(path, O_WRONLY);
    ck_assert(fd >= 0);
    struct stat st;
    ck_assert(fstat(fd, &st) == 0);
    uint8_t last;
    ck_assert(pread(f.fd, &last, 1, st.st_size - 1) == 1);
    ck_assert(pwrite(fd, &last, 1, st.st_size - 1) == 1);
    struct timespec times[2] = {st.st_atim, {st.st_mtim.tv_sec + 1, st.st_mtim.tv_nsec}};
    ck_assert(futimens(fd, times) == 0);
    close(fd);
    ck_assert(safetensors_check_unchanged(&f, err, sizeof(err)) != 0);
    ck_assert_msg(strstr(err, "rewritten in place while loading") != NULL, "%s", err);
    safetensors_close(&f);
}
END_TEST

/* A FIFO in the checkpoint's place (put there after vit_load's check) is
 * refused at once: an open() that blocked would hang the repository's
 * control thread (no load, unload or rescan any more, a stop waiting). */
START_TEST(test_fifo_refused) {
    char path[512];
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    unlink(path);
    ck_assert(mkfifo(path, 0600) == 0);
    safetensors_file f;
    char err[512];
    ck_assert(safetensors_open(path, &f, err, sizeof(err)) != 0);
    ck_assert_msg(strstr(err, "not a regular file") != NULL, "%s", err);
}
END_TEST

START_TEST(test_header_length_lies) {
    char path[512];
    size_t len;
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    uint8_t *d = slurp(path, &len);
    uint64_t lie = (uint64_t)len * 4;
    for (int i = 0; i < 8; i++) d[i] = (uint8_t)(lie >> (8 * i));
    spit("model.safetensors", d, len);
    expect_refusal("header length");
    for (int i = 0; i < 8; i++) d[i] = 0xff; /* 2^64-1 */
    spit("model.safetensors", d, len);
    expect_refusal("header length");
    free(d);
}
END_TEST

START_TEST(test_header_not_json) {
    char path[512];
    size_t len;
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    uint8_t *d = slurp(path, &len);
    d[8] = '[';
    spit("model.safetensors", d, len);
    expect_refusal("not a JSON object");
    free(d);
}
END_TEST

static void offsets_out_of_range(json_t *h) {
    json_t *offs = json_object_get(json_object_get(h, QW), "data_offsets");
    json_array_set_new(offs, 1, json_integer(1LL << 40));
}
START_TEST(test_offsets_out_of_range) {
    edit_header(offsets_out_of_range);
    expect_refusal("outside the data section");
}
END_TEST

static void offsets_overlap(json_t *h) {
    /* k_proj takes q_proj's bytes: same size, so only the overlap is wrong */
    json_object_set(json_object_get(h, KW), "data_offsets",
                    json_object_get(json_object_get(h, QW), "data_offsets"));
}
START_TEST(test_offsets_overlap) {
    edit_header(offsets_overlap);
    expect_refusal("overlap");
}
END_TEST

static void size_mismatch(json_t *h) {
    json_t *offs = json_object_get(json_object_get(h, QW), "data_offsets");
    json_array_set_new(offs, 1, json_integer(json_integer_value(json_array_get(offs, 1)) - 4));
}
START_TEST(test_offsets_disagree_with_shape) {
    edit_header(size_mismatch);
    expect_refusal("the shape needs");
}
END_TEST

static void shape_wraps(json_t *h) {
    /* 2^62 + 1 floats are 4 bytes modulo 2^64: offsets spanning 4 bytes
     * agreed with the shape, and a reader of the tensor ran off the file */
    json_t *t = json_object_get(h, QW);
    json_object_set_new(t, "shape", json_pack("[I]", (json_int_t)((1LL << 62) + 1)));
    json_t *offs = json_object_get(t, "data_offsets");
    json_array_set_new(offs, 1, json_integer(json_integer_value(json_array_get(offs, 0)) + 4));
}
START_TEST(test_shape_product_wraps) {
    edit_header(shape_wraps);
    expect_refusal("shape is larger than the file");
}
END_TEST

static void wrong_shape(json_t *h) {
    /* same element count, wrong layout: [D, D] -> [D/2, 2D] */
    json_t *shape = json_object_get(json_object_get(h, QW), "shape");
    json_int_t d = json_integer_value(json_array_get(shape, 0));
    json_array_set_new(shape, 0, json_integer(d / 2));
    json_array_set_new(shape, 1, json_integer(d * 2));
}
START_TEST(test_wrong_shape) {
    edit_header(wrong_shape);
    expect_refusal("\"" QW "\" has shape");
}
END_TEST

static void wrong_dtype(json_t *h) {
    json_object_set_new(json_object_get(h, QW), "dtype", json_string("I32"));
}
START_TEST(test_wrong_dtype) {
    edit_header(wrong_dtype);
    expect_refusal("unsupported dtype I32");
}
END_TEST

static void missing_tensor(json_t *h) { json_object_del(h, KW); }
START_TEST(test_missing_tensor) {
    edit_header(missing_tensor);
    expect_refusal("\"" KW "\" is missing");
}
END_TEST

static void extra_tensor(json_t *h) {
    json_object_set_new(h, "vision_model.something_else",
                        json_pack("{s:s,s:[i],s:[i,i]}", "dtype", "F32", "shape", 0, "data_offsets", 0, 0));
}
START_TEST(test_unexpected_tensor) {
    edit_header(extra_tensor);
    expect_refusal("unexpected tensor \"vision_model.something_else\"");
}
END_TEST

START_TEST(test_nan_in_weights) {
    char path[512];
    size_t len;
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    uint8_t *d = slurp(path, &len);
    float nan = NAN;
    memcpy(d + len - 4, &nan, 4); /* the last tensor's last value */
    spit("model.safetensors", d, len);
    expect_refusal("NaN or an infinity");
    free(d);
}
END_TEST

START_TEST(test_bad_config_type) {
    edit_config("hidden_size", json_string("32"));
    expect_refusal("\"hidden_size\" must be an integer");
}
END_TEST

START_TEST(test_bad_bool_type) {
    edit_config("keep_ape", json_integer(1));
    expect_refusal("\"keep_ape\" must be true or false");
}
END_TEST

START_TEST(test_integer_for_a_real_key_is_fine) {
    /* Python writes cls_position=0 as a JSON integer: that must load. */
    edit_config("layer_norm_eps", json_integer(0));
    vit_model *m = NULL;
    char err[512];
    ck_assert_msg(vit_load(tmpdir, NULL, &m, err, sizeof(err)) == 0, "%s", err);
    vit_free(m);
}
END_TEST

START_TEST(test_unknown_pe_type) {
    edit_config("custom_pe_type", json_string("xpos"));
    expect_refusal("unknown custom_pe_type \"xpos\"");
}
END_TEST

START_TEST(test_three_axes_refused) {
    edit_config("num_axes", json_integer(3));
    expect_refusal("num_axes");
}
END_TEST

START_TEST(test_unknown_activation) {
    edit_config("hidden_act", json_string("swish"));
    expect_refusal("unsupported hidden_act \"swish\"");
}
END_TEST

START_TEST(test_no_class_token_refused) {
    edit_config("prepend_cls", json_false());
    expect_refusal("prepend_cls");
}
END_TEST

START_TEST(test_block_size_must_divide) {
    edit_config("block_size", json_integer(5));
    expect_refusal("block_size");
}
END_TEST

START_TEST(test_config_disagrees_with_weights) {
    /* a config that says 3 layers for a 2-layer checkpoint names the missing tensor */
    edit_config("num_hidden_layers", json_integer(3));
    expect_refusal("layers.2.");
}
END_TEST

/* An allocation the OS refused is told apart by value, not by words:
 * ENGINE_ERR_MEMORY, which the daemon takes as "waiting may cure it"
 * (exit 3), where every bad file above is -1 (exit 1). A config of 4 GiB
 * of parameters, a sparse checkpoint just large enough for the size
 * check, and RLIMIT_AS at what this process holds plus 256 MiB: the
 * parameters' allocation is refused before a tensor is read. */
START_TEST(test_memory_refused_is_typed) {
    /* ASan's shadow memory is terabytes of address space, valgrind's
     * its own: no RLIMIT_AS test under either */
    if (UNDER_ASAN || RUNNING_ON_VALGRIND) {
        printf("skipped: test_memory_refused_is_typed: RLIMIT_AS under %s\n",
               UNDER_ASAN ? "ASan" : "valgrind");
        fflush(stdout);
        return;
    }
    edit_config("hidden_size", json_integer(2048));
    edit_config("intermediate_size", json_integer(262144));
    edit_config("num_hidden_layers", json_integer(1));
    edit_config("num_attention_heads", json_integer(16));
    const long long n = 5LL << 30;
    char header[256], path[512];
    int hl =
        snprintf(header, sizeof(header),
                 "{\"pad\": {\"dtype\": \"F16\", \"shape\": [%lld], \"data_offsets\": [0, %lld]}}", n / 2, n);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((unsigned long long)hl >> (8 * i));
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert(fwrite(len8, 1, 8, f) == 8 && fwrite(header, 1, (size_t)hl, f) == (size_t)hl);
    ck_assert_int_eq(ftruncate(fileno(f), 8 + hl + n), 0);
    fclose(f);

    long long vm_kib = 0;
    char line[256];
    FILE *st = fopen("/proc/self/status", "r");
    ck_assert_ptr_nonnull(st);
    while (fgets(line, sizeof(line), st))
        if (sscanf(line, "VmSize: %lld kB", &vm_kib) == 1) break;
    fclose(st);
    ck_assert_int_gt(vm_kib, 0);
    struct rlimit was, low;
    ck_assert_int_eq(getrlimit(RLIMIT_AS, &was), 0);
    low = was;
    low.rlim_cur = (rlim_t)(vm_kib + (256 << 10)) * 1024;
    if (was.rlim_cur != RLIM_INFINITY && was.rlim_cur < low.rlim_cur) low.rlim_cur = was.rlim_cur;
    ck_assert_int_eq(setrlimit(RLIMIT_AS, &low), 0);
    vit_model *m = NULL;
    char err[1024] = "";
    int rc = vit_load(tmpdir, NULL, &m, err, sizeof(err));
    ck_assert_int_eq(setrlimit(RLIMIT_AS, &was), 0); /* CK_FORK=no: the next tests share the process */
    ck_assert_msg(rc == ENGINE_ERR_MEMORY, "rc %d, not ENGINE_ERR_MEMORY: %s", rc, err);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err, "out of memory") != NULL, "message: %s", err);
}
END_TEST

START_TEST(test_missing_files) {
    char path[512];
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    unlink(path);
    expect_refusal("no model.safetensors");
    snprintf(path, sizeof(path), "%s/config.json", tmpdir);
    unlink(path);
    expect_refusal("no config.json");
}
END_TEST

START_TEST(test_config_not_json) {
    spit("config.json", "{\"hidden_size\": ", 16);
    expect_refusal("invalid JSON");
}
END_TEST

START_TEST(test_unknown_keys_ignored) {
    edit_config("_attn_implementation_autoset", json_true());
    edit_config("architectures", json_pack("[s]", "CustomVITForClassification"));
    vit_model *m = NULL;
    char err[512];
    ck_assert_msg(vit_load(tmpdir, NULL, &m, err, sizeof(err)) == 0, "%s", err);
    vit_free(m);
}
END_TEST

/* Random corruption of the header bytes must never crash (the sanitizers
 * and valgrind runs of this suite are what catch a crash's cousins). */
START_TEST(test_random_header_corruption) {
    char path[512];
    size_t len;
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    uint8_t *good = slurp(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | good[i];
    uint8_t *d = malloc(len);
    unsigned st = 1;
    for (int rep = 0; rep < 200; rep++) {
        memcpy(d, good, len);
        for (int k = 0; k < 4; k++) {
            st = st * 1103515245u + 12345u;
            size_t at = (st >> 4) % (8 + hlen);
            st = st * 1103515245u + 12345u;
            d[at] = (uint8_t)(st >> 16);
        }
        spit("model.safetensors", d, len);
        vit_model *m = NULL;
        char err[512];
        if (vit_load(tmpdir, NULL, &m, err, sizeof(err)) == 0) vit_free(m);
    }
    free(d);
    free(good);
}
END_TEST

/* A model's small file that is not a regular one -- put there by
 * mistake, or swapped in after a check -- is refused at once, naming the
 * file and what it is: a FIFO's open blocked the loading thread (the
 * daemon's control thread at a reload) for good, and a preprocessor config
 * that was a FIFO, /dev/zero or a directory was taken for none (the model
 * served with other preprocessing than its own); an oversize one is refused
 * by its size, before it is parsed. Loop test: _i / 4 picks the file,
 * _i % 4 what it is. Each is checked through vit_load (the daemon's path)
 * and the file's own reader. */
static const char *const model_small_files[] = {"config.json", "preprocessor_config.json"};
enum { AS_FIFO, AS_DEV_ZERO, AS_DIRECTORY, AS_OVERSIZE };

/* Replaces tmpdir/name by what `as` says; the oversize file is valid JSON
 * (an empty object and spaces), so that only its size is wrong. */
static void replace_file(const char *name, int as, size_t cap) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    unlink(path);
    switch (as) {
    case AS_FIFO: ck_assert(mkfifo(path, 0600) == 0); break;
    case AS_DEV_ZERO: ck_assert(symlink("/dev/zero", path) == 0); break;
    case AS_DIRECTORY: ck_assert(mkdir(path, 0700) == 0); break;
    default: {
        char *big = malloc(cap + 1);
        ck_assert(big != NULL);
        memset(big, ' ', cap + 1);
        memcpy(big, "{}", 2);
        spit(name, big, cap + 1);
        free(big);
    }
    }
}

START_TEST(test_model_file_not_regular) {
    const char *name = model_small_files[_i / 4];
    int as = _i % 4;
    int is_config = _i / 4 == 0;
    size_t cap = is_config ? VIT_CONFIG_MAX_BYTES : IMAGE_PREP_MAX_BYTES;
    char needle[128], path[512], err[1024] = "";
    const char *what[] = {"is a FIFO, not a regular file", "is a device, not a regular file",
                          "is a directory, not a regular file", NULL};
    if (what[as]) snprintf(needle, sizeof(needle), "%s: %s", name, what[as]);
    else snprintf(needle, sizeof(needle), "%s: is larger than %zu bytes", name, cap);
    replace_file(name, as, cap);
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    if (is_config) {
        vit_config cfg;
        ck_assert_int_eq(vit_config_load(path, &cfg, err, sizeof(err)), -1);
    } else {
        image_prep prep;
        ck_assert_int_eq(image_prep_load(path, &prep, err, sizeof(err)), -1);
    }
    ck_assert_msg(strstr(err, needle) != NULL, "\"%s\" lacks \"%s\"", err, needle);
    expect_refusal(needle);
}
END_TEST

/* At the cap, each is read (and parsed: "{}" and spaces) */
START_TEST(test_model_file_at_cap) {
    char path[512], err[512];
    replace_file("preprocessor_config.json", AS_OVERSIZE, IMAGE_PREP_MAX_BYTES - 1);
    snprintf(path, sizeof(path), "%s/preprocessor_config.json", tmpdir);
    image_prep prep;
    ck_assert_msg(image_prep_load(path, &prep, err, sizeof(err)) == 0, "%s", err);
    replace_file("config.json", AS_OVERSIZE, VIT_CONFIG_MAX_BYTES - 1);
    snprintf(path, sizeof(path), "%s/config.json", tmpdir);
    vit_config cfg;
    ck_assert_msg(vit_config_load(path, &cfg, err, sizeof(err)) == 0, "%s", err);
    vit_config_free(&cfg);
}
END_TEST

/* A terminal in a small file's (or the checkpoint's) place is refused without becoming the
 * reader's controlling terminal: the daemon under systemd is a session
 * leader without one, and an open without O_NOCTTY made the tty its own
 * (its hangup a SIGHUP to the daemon). The child checks /dev/tty, which
 * opens only for a process that has one. */
START_TEST(test_small_file_tty_not_acquired) {
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    ck_assert_msg(master >= 0, "posix_openpt: %s", strerror(errno));
    char name[128];
    ck_assert(grantpt(master) == 0 && unlockpt(master) == 0 && ptsname_r(master, name, sizeof(name)) == 0);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        char *data, err[512];
        size_t len;
        if (setsid() < 0) _exit(2);
        if (small_file_read(name, 1024, SMALL_FILE_OR_PIPE, &data, &len, err, sizeof(err)) == 0) _exit(3);
        if (!strstr(err, "is a device")) _exit(4);
        safetensors_file f;
        if (safetensors_open(name, &f, err, sizeof(err)) == 0 || !strstr(err, "is a device")) _exit(6);
        _exit(open("/dev/tty", O_RDONLY | O_NOCTTY) >= 0 ? 5 : 0);
    }
    int status;
    ck_assert(waitpid(pid, &status, 0) == pid);
    close(master);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "child exit %d (2 setsid, 3 read, 4 message, 6 safetensors_open, 5 %s became its "
                  "controlling terminal)",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1, name);
}
END_TEST

/* vit_gflop against the count for ViT-B/16 (35.1 GFLOP at 224,
 * 111.0 at 384), the config filled in by hand. */
START_TEST(test_gflop_vit_b16) {
    vit_model m;
    memset(&m, 0, sizeof(m));
    m.cfg.hidden_size = 768;
    m.cfg.intermediate_size = 3072;
    m.cfg.num_hidden_layers = 12;
    m.cfg.patch_size = 16;
    m.cfg.num_channels = 3;
    m.cfg.num_class = 1000;
    ck_assert_double_eq_tol(vit_gflop(&m, 224, 224), 35.1, 0.05);
    ck_assert_double_eq_tol(vit_gflop(&m, 384, 384), 111.0, 0.05);
    ck_assert(vit_gflop(&m, 224, 384) > vit_gflop(&m, 224, 224));
}
END_TEST

int main(void) {
    Suite *s = suite_create("loader");
    TCase *tc = tcase_create("loader");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_good_checkpoint_loads);
    tcase_add_test(tc, test_gflop_vit_b16);
    tcase_add_test(tc, test_truncated_file);
    tcase_add_test(tc, test_truncated_while_loading);
    tcase_add_test(tc, test_rewritten_while_loading);
    tcase_add_test(tc, test_fifo_refused);
    tcase_add_test(tc, test_header_length_lies);
    tcase_add_test(tc, test_header_not_json);
    tcase_add_test(tc, test_offsets_out_of_range);
    tcase_add_test(tc, test_offsets_overlap);
    tcase_add_test(tc, test_offsets_disagree_with_shape);
    tcase_add_test(tc, test_shape_product_wraps);
    tcase_add_test(tc, test_wrong_shape);
    tcase_add_test(tc, test_wrong_dtype);
    tcase_add_test(tc, test_missing_tensor);
    tcase_add_test(tc, test_unexpected_tensor);
    tcase_add_test(tc, test_nan_in_weights);
    tcase_add_test(tc, test_bad_config_type);
    tcase_add_test(tc, test_bad_bool_type);
    tcase_add_test(tc, test_integer_for_a_real_key_is_fine);
    tcase_add_test(tc, test_unknown_pe_type);
    tcase_add_test(tc, test_three_axes_refused);
    tcase_add_test(tc, test_unknown_activation);
    tcase_add_test(tc, test_no_class_token_refused);
    tcase_add_test(tc, test_block_size_must_divide);
    tcase_add_test(tc, test_config_disagrees_with_weights);
    tcase_add_test(tc, test_missing_files);
    tcase_add_test(tc, test_memory_refused_is_typed);
    tcase_add_test(tc, test_config_not_json);
    tcase_add_test(tc, test_unknown_keys_ignored);
    tcase_add_test(tc, test_random_header_corruption);
    suite_add_tcase(s, tc);
    TCase *files = tcase_create("model_files");
    tcase_set_timeout(files, 300);
    tcase_add_checked_fixture(files, setup, teardown);
    tcase_add_loop_test(files, test_model_file_not_regular, 0, 8);
    tcase_add_test(files, test_model_file_at_cap);
    tcase_add_test(files, test_small_file_tty_not_acquired);
    suite_add_tcase(s, files);
    return check_run(s);
}
