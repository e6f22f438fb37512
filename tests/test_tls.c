/* test_tls.c: server/tls.c, the served certificate pair's life: a replaced
 * pair lives while a connection holds it and is freed when the last one
 * lets go; a second handshake on one connection moves its reference.
 * The files are the committed test CA's (tests/fixtures/tls), copied into
 * a directory of the test's own and replaced by rename(2), a new inode,
 * as a rotation does; tls_look_now stands for the look a second later,
 * and is the only look (tls_hold looks at nothing): a test stalled for a
 * second between two calls (a loaded machine) sees what it would unstalled.
 * A read of the files that hangs (NFS) holds up no handshake but its own:
 * config_read_file is wrapped (tests/CMakeLists.txt: --wrap) to wait
 * until the test lets it go. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_run.h"
#include "config.h"
#include "tls.h"

int __real_config_read_file(const char *what, const char *path, int pipes, char **data, size_t *len,
                            char *err, size_t errlen);

static pthread_mutex_t stall_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t stall_changed = PTHREAD_COND_INITIALIZER;
static int stall;   /* reads wait while set */
static int stalled; /* a read is waiting */

int __wrap_config_read_file(const char *what, const char *path, int pipes, char **data, size_t *len,
                            char *err, size_t errlen) {
    pthread_mutex_lock(&stall_lock);
    while (stall) {
        stalled = 1;
        pthread_cond_broadcast(&stall_changed);
        pthread_cond_wait(&stall_changed, &stall_lock);
    }
    stalled = 0;
    pthread_mutex_unlock(&stall_lock);
    return __real_config_read_file(what, path, pipes, data, len, err, errlen);
}

static char dir[64], cert[96], key[96];
static int installed; /* files replaced so far, kept as DIR/kept.N */

/* Replaces `to` with a copy of `from`, and `then` after it (NULL: none).
 * The file replaced is kept (a hard link): its inode freed, the new file
 * could get its number, and the same size and mtime (a clock tick is
 * milliseconds) would look unchanged. */
static void copy(const char *from, const char *then, const char *to) {
    char tmp[128], kept[128], buf[8192];
    snprintf(tmp, sizeof(tmp), "%s.new", to);
    if (access(to, F_OK) == 0) {
        snprintf(kept, sizeof(kept), "%s/kept.%d", dir, installed++);
        ck_assert_int_eq(link(to, kept), 0);
    }
    FILE *out = fopen(tmp, "wb");
    ck_assert_ptr_nonnull(out);
    for (const char *src = from; src; src = src == from ? then : NULL) {
        FILE *in = fopen(src, "rb");
        ck_assert_ptr_nonnull(in);
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), in)) > 0) ck_assert_uint_eq(fwrite(buf, 1, n, out), n);
        fclose(in);
    }
    ck_assert_int_eq(fclose(out), 0);
    ck_assert_int_eq(rename(tmp, to), 0);
}

/* Puts the fixture pair `name` (server, server2) in place; with_ca: its
 * chain has the CA's certificate after the leaf (two certificates). */
static void install_chain(const char *name, int with_ca) {
    char from[256], ca[256];
    snprintf(from, sizeof(from), "%s/tls/%s.pem", FIXTURE_DIR, name);
    snprintf(ca, sizeof(ca), "%s/tls/ca.pem", FIXTURE_DIR);
    copy(from, with_ca ? ca : NULL, cert);
    snprintf(from, sizeof(from), "%s/tls/%s.key", FIXTURE_DIR, name);
    copy(from, NULL, key);
}

static void install(const char *name) { install_chain(name, 0); }

static tls_store *open_store(void) {
    snprintf(dir, sizeof(dir), "/tmp/test_tls_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    install("server");
    char err[512];
    tls_store *t = tls_open(cert, key, err, sizeof(err));
    ck_assert_msg(t != NULL, "%s", err);
    ck_assert_uint_eq(tls_pairs(t), 1);
    return t;
}

static void close_store(tls_store *t) {
    tls_close(t);
    unlink(cert);
    unlink(key);
    char kept[128];
    for (int i = 0; i < installed; i++) {
        snprintf(kept, sizeof(kept), "%s/kept.%d", dir, i);
        unlink(kept);
    }
    installed = 0;
    ck_assert_int_eq(rmdir(dir), 0);
}

START_TEST(replaced_pair_freed_by_its_last_holder) {
    tls_store *t = open_store();
    tls_pair *a = NULL, *b = NULL, *c = NULL;
    tls_hold(t, &a);
    tls_hold(t, &b);
    ck_assert_ptr_eq(a, b);
    install("server2");
    tls_look_now(t);
    ck_assert_uint_eq(tls_pairs(t), 2); /* the new one, and the old one a and b hold */
    tls_hold(t, &c);
    ck_assert_ptr_ne(c, a);
    tls_unhold(t, &a);
    ck_assert_ptr_null(a);
    ck_assert_uint_eq(tls_pairs(t), 2); /* b still holds it */
    tls_unhold(t, &b);
    ck_assert_uint_eq(tls_pairs(t), 1);
    tls_unhold(t, &c); /* the served pair: the store keeps it */
    ck_assert_uint_eq(tls_pairs(t), 1);
    tls_unhold(t, &c); /* a connection that never held one */
    close_store(t);
}
END_TEST

/* A writer changing the files' content at every look: memory stays at the
 * pair a connection holds and the served one (it grew by a pair a look). */
START_TEST(many_rotations_keep_two_pairs) {
    tls_store *t = open_store();
    tls_pair *first = NULL;
    tls_hold(t, &first);
    for (int i = 0; i < 50; i++) {
        install(i % 2 ? "server" : "server2");
        tls_look_now(t);
        tls_pair *now = NULL;
        tls_hold(t, &now);
        ck_assert_ptr_ne(now, first);
        tls_unhold(t, &now);
        ck_assert_uint_eq(tls_pairs(t), 2);
    }
    size_t len = 0;
    char *text = tls_metrics(t, &len);
    ck_assert_ptr_nonnull(text);
    ck_assert_ptr_nonnull(strstr(text, "\ncomrope_tls_certificate_pairs 2\n"));
    free(text);
    tls_unhold(t, &first);
    ck_assert_uint_eq(tls_pairs(t), 1);
    close_store(t);
}
END_TEST

/* A second handshake on one connection (TLS 1.2 renegotiation) moves its
 * reference: the first pair is not held twice, nor leaked. */
START_TEST(second_handshake_moves_the_reference) {
    tls_store *t = open_store();
    tls_pair *held = NULL;
    tls_hold(t, &held);
    tls_pair *first = held;
    tls_hold(t, &held); /* the same pair again: still one reference */
    ck_assert_ptr_eq(held, first);
    install("server2");
    tls_look_now(t);
    ck_assert_uint_eq(tls_pairs(t), 2);
    tls_hold(t, &held);
    ck_assert_ptr_ne(held, first);
    ck_assert_uint_eq(tls_pairs(t), 1); /* the first freed */
    tls_unhold(t, &held);
    ck_assert_uint_eq(tls_pairs(t), 1);
    close_store(t);
}
END_TEST

/* A chain rewritten in place, seen between its two certificates (the
 * leaf alone: it loads and matches the key) is not served at that look;
 * whole at the next, it is. Cut the same at the next look too (a chain
 * that did get shorter), it is served then. */
START_TEST(a_chain_cut_between_certificates_waits_for_a_second_look) {
    tls_store *t = open_store();
    install_chain("server", 1);
    tls_look_now(t);
    tls_look_now(t); /* one certificate more than served: the second look serves it */
    tls_pair *first = NULL, *now = NULL;
    tls_hold(t, &first);         /* the two-certificate chain */
    install_chain("server2", 0); /* the writer between the leaf and the CA */
    tls_look_now(t);
    tls_hold(t, &now);
    ck_assert_ptr_eq(now, first);
    install_chain("server2", 1); /* the writer done */
    tls_look_now(t);
    tls_hold(t, &now);
    ck_assert_ptr_ne(now, first);
    tls_unhold(t, &first);
    tls_hold(t, &first); /* server2, two certificates */
    install_chain("server", 0);
    tls_look_now(t);
    tls_hold(t, &now);
    ck_assert_ptr_eq(now, first);
    tls_look_now(t); /* unchanged: a shorter chain meant */
    tls_hold(t, &now);
    ck_assert_ptr_ne(now, first);
    tls_unhold(t, &first);
    tls_unhold(t, &now);
    ck_assert_uint_eq(tls_pairs(t), 1);
    close_store(t);
}
END_TEST

static void *look(void *t) {
    tls_look_now(t);
    return NULL;
}

START_TEST(a_hung_read_holds_up_no_handshake) {
    tls_store *t = open_store();
    install("server2");
    pthread_mutex_lock(&stall_lock);
    stall = 1;
    pthread_mutex_unlock(&stall_lock);
    pthread_t looker;
    ck_assert_int_eq(pthread_create(&looker, NULL, look, t), 0);
    pthread_mutex_lock(&stall_lock);
    while (!stalled) pthread_cond_wait(&stall_changed, &stall_lock);
    pthread_mutex_unlock(&stall_lock);
    /* the look is in its read: a handshake, a scrape and another look go
     * on with the served pair (under the lock, they would wait for the
     * read: this test hangs, and ctest's timeout reports it) */
    tls_pair *held = NULL;
    tls_hold(t, &held);
    tls_look_now(t);
    size_t len = 0;
    free(tls_metrics(t, &len));
    ck_assert_uint_eq(tls_pairs(t), 1);
    pthread_mutex_lock(&stall_lock);
    stall = 0;
    pthread_cond_broadcast(&stall_changed);
    pthread_mutex_unlock(&stall_lock);
    ck_assert_int_eq(pthread_join(looker, NULL), 0);
    ck_assert_uint_eq(tls_pairs(t), 2); /* the new pair served; held keeps the first */
    tls_pair *now = NULL;
    tls_hold(t, &now);
    ck_assert_ptr_ne(now, held);
    tls_unhold(t, &held);
    tls_unhold(t, &now);
    ck_assert_uint_eq(tls_pairs(t), 1);
    close_store(t);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("tls");
    tcase_add_test(tc, replaced_pair_freed_by_its_last_holder);
    tcase_add_test(tc, many_rotations_keep_two_pairs);
    tcase_add_test(tc, second_handshake_moves_the_reference);
    tcase_add_test(tc, a_hung_read_holds_up_no_handshake);
    tcase_add_test(tc, a_chain_cut_between_certificates_waits_for_a_second_look);
    suite_add_tcase(s, tc);
    return check_run(s);
}
