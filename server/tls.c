/* tls.c: the served certificate and its rotation. See tls.h. */
#include "tls.h"

#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "clock.h"
#include "config.h"
#include "conn_guard.h"
#include "log.h"

/* A certificate chain longer than this is not a server's. */
#define TLS_MAX_CHAIN 16

/* One certificate chain and its key, as loaded from the files. */
struct tls_pair {
    gnutls_pcert_st chain[TLS_MAX_CHAIN];
    unsigned int nchain;
    gnutls_privkey_t key;
    time_t not_after;         /* the leaf certificate's */
    unsigned char digest[32]; /* SHA-256 of both files: an unchanged pair is not loaded twice */
    /* the store's while it is served, and one per connection holding it
     * (under the store's lock); freed at 0 */
    unsigned int refs;
};

/* What identifies a file's content without reading it. */
typedef struct {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    int missing;
} file_id;

struct tls_store {
    char cert_file[CONFIG_PATH_MAX], key_file[CONFIG_PATH_MAX];
    pthread_mutex_t lock;
    /* Under lock. A replaced pair lives on while a connection holds it
     * (tls.h: GnuTLS keeps the pointers the callback returned). */
    tls_pair *current;           /* the served pair, one reference the store's */
    unsigned int pairs;          /* pairs in memory: current and those still held */
    unsigned long long failures; /* replacements refused */
    int looking;                 /* a look at the files is under way: one at a time */
    int64_t checked_ns;          /* monotonic time of the last look's start */
    /* The looking thread's alone (looking is set): */
    file_id cert_id, key_id; /* of the files as last looked at */
    /* Why the files as last looked at are not served, until a later look
     * finds them unchanged: a renewal replaces the two files one after
     * the other (certbot repoints cert then key), and a look between the
     * two must not count a failure that an alert would report. */
    char refused[CONFIG_PATH_MAX * 2 + 200];
    /* The files as last looked at load, but their chain has another number
     * of certificates than the served one's: a writer rewriting the file
     * in place may be between two certificates (the leaf alone loads and
     * matches the key, and clients would lack the intermediate). Served
     * when a later look finds them unchanged. */
    int recheck;
};

/* The open store (tls.h: GnuTLS's callback takes no user pointer). */
static tls_store *served_store;

static void pair_free(tls_pair *p) {
    if (!p) return;
    for (unsigned int i = 0; i < p->nchain; i++) gnutls_pcert_deinit(&p->chain[i]);
    if (p->key) gnutls_privkey_deinit(p->key);
    free(p);
}

/* Drops a reference to p (under t->lock). Returns p when that was the
 * last, for the caller to free once the lock is released. */
static tls_pair *pair_unref(tls_store *t, tls_pair *p) {
    if (!p || --p->refs) return NULL;
    t->pairs--;
    return p;
}

static void file_stat(const char *path, file_id *id) {
    struct stat st;
    memset(id, 0, sizeof(*id));
    if (stat(path, &st)) { /* stat, not lstat: a swapped symlink is a new file */
        id->missing = 1;
        return;
    }
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->size = st.st_size;
    id->mtime = st.st_mtim;
}

static int file_id_same(const file_id *a, const file_id *b) {
    return a->missing == b->missing && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* The key's public half and the leaf certificate's must be one key. */
static int key_matches(gnutls_privkey_t key, gnutls_pubkey_t cert_pub) {
    unsigned char a[64], b[64];
    size_t alen = sizeof(a), blen = sizeof(b);
    gnutls_pubkey_t pub;
    if (gnutls_pubkey_init(&pub) < 0) return 0;
    int ok = gnutls_pubkey_import_privkey(pub, key, 0, 0) >= 0 &&
             gnutls_pubkey_get_key_id(pub, GNUTLS_KEYID_USE_SHA256, a, &alen) >= 0 &&
             gnutls_pubkey_get_key_id(cert_pub, GNUTLS_KEYID_USE_SHA256, b, &blen) >= 0 && alen == blen &&
             memcmp(a, b, alen) == 0;
    gnutls_pubkey_deinit(pub);
    return ok;
}

/* Loads the pair from the files. Returns it, or NULL with a message naming
 * the file and what is wrong. */
static tls_pair *pair_load(const char *cert_file, const char *key_file, char *err, size_t errlen) {
    char *cert = NULL, *keypem = NULL;
    size_t cert_len = 0, key_len = 0;
    tls_pair *p = NULL;
    gnutls_x509_crt_t crt = NULL;
    int rc;
    /* regular files only: a rotation rereads them, and a pipe reads once */
    if (config_read_file("tls-cert-file", cert_file, 0, &cert, &cert_len, err, errlen)) goto fail;
    if (config_read_file("tls-key-file", key_file, 0, &keypem, &key_len, err, errlen)) goto fail;
    p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    gnutls_hash_hd_t h;
    if (gnutls_hash_init(&h, GNUTLS_DIG_SHA256) < 0) {
        snprintf(err, errlen, "tls: cannot hash the files");
        goto fail;
    }
    gnutls_hash(h, cert, cert_len);
    gnutls_hash(h, keypem, key_len);
    gnutls_hash_deinit(h, p->digest);

    gnutls_datum_t d = {(unsigned char *)cert, (unsigned int)cert_len};
    p->nchain = TLS_MAX_CHAIN;
    rc = gnutls_pcert_list_import_x509_raw(p->chain, &p->nchain, &d, GNUTLS_X509_FMT_PEM, 0);
    if (rc < 0 || p->nchain == 0) {
        p->nchain = 0;
        snprintf(err, errlen, "tls-cert-file: %s: not a PEM certificate (%s)", cert_file,
                 rc < 0 ? gnutls_strerror(rc) : "none found");
        goto fail;
    }
    if (gnutls_privkey_init(&p->key) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    d = (gnutls_datum_t){(unsigned char *)keypem, (unsigned int)key_len};
    rc = gnutls_privkey_import_x509_raw(p->key, &d, GNUTLS_X509_FMT_PEM, NULL, 0);
    if (rc < 0) {
        snprintf(err, errlen, "tls-key-file: %s: not an unencrypted PEM private key (%s)", key_file,
                 gnutls_strerror(rc));
        goto fail;
    }
    if (!key_matches(p->key, p->chain[0].pubkey)) {
        snprintf(err, errlen, "tls-key-file: %s: the key does not match the certificate of tls-cert-file %s",
                 key_file, cert_file);
        goto fail;
    }
    if (gnutls_x509_crt_init(&crt) < 0 ||
        gnutls_x509_crt_import(crt, &p->chain[0].cert, GNUTLS_X509_FMT_DER) < 0) {
        snprintf(err, errlen, "tls-cert-file: %s: cannot read the certificate's validity", cert_file);
        goto fail;
    }
    p->not_after = gnutls_x509_crt_get_expiration_time(crt);
    gnutls_x509_crt_deinit(crt);
    explicit_bzero(keypem, key_len); /* GnuTLS holds the key now */
    free(keypem);
    free(cert);
    return p;
fail:
    if (crt) gnutls_x509_crt_deinit(crt);
    if (keypem) explicit_bzero(keypem, key_len);
    free(keypem);
    free(cert);
    pair_free(p);
    return NULL;
}

tls_store *tls_open(const char *cert_file, const char *key_file, char *err, size_t errlen) {
    tls_store *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(t->cert_file, sizeof(t->cert_file), "%s", cert_file);
    snprintf(t->key_file, sizeof(t->key_file), "%s", key_file);
    /* the identities first: a file replaced while it is read is looked at again */
    file_stat(cert_file, &t->cert_id);
    file_stat(key_file, &t->key_id);
    t->current = pair_load(cert_file, key_file, err, errlen);
    if (!t->current) {
        free(t);
        return NULL;
    }
    if (t->current->not_after < time(NULL))
        log_event("warning", "tls-cert-file: %s: the certificate has expired", cert_file);
    t->current->refs = 1;
    t->pairs = 1;
    t->checked_ns = monotonic_ns();
    pthread_mutex_init(&t->lock, NULL);
    served_store = t;
    return t;
}

void tls_close(tls_store *t) {
    if (!t) return;
    if (served_store == t) served_store = NULL;
    if (t->pairs != 1) /* a connection's release would come after the free: a bug, say so */
        log_event("error", "tls: %u certificate pairs still held at close", t->pairs - 1);
    pair_free(t->current);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* An instant as the log writes it (UTC). */
static void utc_text(time_t when, char *buf, size_t len) {
    struct tm tm;
    gmtime_r(&when, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Whether the caller is to look at the files: at most once a second
 * (force: now), and one look at a time; the others serve the current
 * pair meanwhile. */
static int look_due(tls_store *t, int force) {
    pthread_mutex_lock(&t->lock);
    int64_t now = monotonic_ns();
    int due = !t->looking && (force || now - t->checked_ns >= 1000000000);
    if (due) {
        t->looking = 1;
        t->checked_ns = now;
    }
    pthread_mutex_unlock(&t->lock);
    return due;
}

/* Files a look does not serve yet: a later look decides (tls.h), so an
 * info line, not an error. */
static void log_not_yet(const char *why) {
    log_event("info",
              "tls: not serving the files as they are now (a look a second or more later decides): %s", why);
}

/* A look (look_due said so): a changed pair that loads replaces the
 * served one. The files are read and parsed outside the lock (tls.h). */
static void look(tls_store *t) {
    tls_pair *p = NULL, *old = NULL;
    int settled = 0;
    file_id cert_id, key_id;
    file_stat(t->cert_file, &cert_id);
    file_stat(t->key_file, &key_id);
    if (file_id_same(&cert_id, &t->cert_id) && file_id_same(&key_id, &t->key_id)) {
        /* refused twice, a second or more apart: not a renewal under way */
        if (t->refused[0]) {
            pthread_mutex_lock(&t->lock);
            t->failures++;
            pthread_mutex_unlock(&t->lock);
            log_event("error", "tls: keeping the served certificate: %s", t->refused);
            t->refused[0] = '\0';
        }
        if (!t->recheck) goto done;
        settled = 1; /* unchanged a second or more later: not a writer's cut */
    }
    /* whatever happens, these files are judged once: a bad replacement is
     * logged and counted once, not every second, until they change again */
    t->cert_id = cert_id;
    t->key_id = key_id;
    t->refused[0] = '\0';
    t->recheck = 0;
    char *err = t->refused;
    p = pair_load(t->cert_file, t->key_file, err, sizeof(t->refused));
    if (!p) {
        log_not_yet(err);
        goto done;
    }
    /* only a look replaces current, and this is the one: read without the lock */
    if (memcmp(p->digest, t->current->digest, sizeof(p->digest)) == 0) goto done; /* touched, not changed */
    char when[32];
    utc_text(p->not_after, when, sizeof(when));
    /* every client would refuse it, where the served one may still be
     * good: a renewal gone wrong (an old backup restored, a stale Secret)
     * must not take HTTPS down. It never becomes valid, so judging these
     * files once is right. */
    if (p->not_after < time(NULL)) {
        snprintf(t->refused, sizeof(t->refused), "tls-cert-file: %s: the certificate expired on %s",
                 t->cert_file, when);
        log_not_yet(t->refused);
        goto done;
    }
    if (!settled && p->nchain != t->current->nchain) {
        t->recheck = 1;
        char why[CONFIG_PATH_MAX + 100];
        snprintf(why, sizeof(why),
                 "tls-cert-file: %s: %u certificates where the served chain has %u (a write under way?)",
                 t->cert_file, p->nchain, t->current->nchain);
        log_not_yet(why);
        goto done;
    }
    p->refs = 1;
    pthread_mutex_lock(&t->lock);
    t->pairs++;
    old = pair_unref(t, t->current);
    t->current = p;
    pthread_mutex_unlock(&t->lock);
    p = NULL;
    log_event("info", "tls: serving the new certificate of %s (valid until %s)", t->cert_file, when);
done:
    pthread_mutex_lock(&t->lock);
    t->looking = 0;
    pthread_mutex_unlock(&t->lock);
    pair_free(p);   /* not served */
    pair_free(old); /* replaced, held by no connection */
}

void tls_look_now(tls_store *t) {
    if (look_due(t, 1)) look(t);
}

void tls_hold(tls_store *t, tls_pair **held) {
    pthread_mutex_lock(&t->lock);
    tls_pair *p = t->current;
    p->refs++;
    tls_pair *last = pair_unref(t, *held);
    pthread_mutex_unlock(&t->lock);
    pair_free(last);
    *held = p;
}

void tls_unhold(tls_store *t, tls_pair **held) {
    pthread_mutex_lock(&t->lock);
    tls_pair *last = pair_unref(t, *held);
    pthread_mutex_unlock(&t->lock);
    pair_free(last);
    *held = NULL;
}

unsigned int tls_pairs(tls_store *t) {
    pthread_mutex_lock(&t->lock);
    unsigned int n = t->pairs;
    pthread_mutex_unlock(&t->lock);
    return n;
}

int tls_retrieve_cert(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                      const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length, gnutls_pcert_st **pcert,
                      unsigned int *pcert_length, gnutls_privkey_t *privkey) {
    (void)req_ca_dn, (void)nreqs, (void)pk_algos, (void)pk_algos_length;
    tls_store *t = served_store;
    struct MHD_Connection *c = gnutls_session_get_ptr(session); /* libmicrohttpd sets it to the connection */
    void **slot = c ? conn_guard_slot(c) : NULL;
    /* nowhere to record the pair: it could never be released */
    if (!t || !slot) return -1;
    /* a second handshake on the connection (TLS 1.2 renegotiation) moves
     * its reference to the pair served now: GnuTLS drops the pointers of
     * the first when it takes the new ones */
    if (look_due(t, 0)) look(t);
    tls_pair *p = *slot;
    tls_hold(t, &p);
    *slot = p;
    *pcert = p->chain;
    *pcert_length = p->nchain;
    *privkey = p->key;
    return 0;
}

void tls_connection_closed(struct MHD_Connection *c) {
    void **slot = conn_guard_slot(c);
    if (!slot || !*slot) return; /* plain HTTP, or no handshake got as far */
    /* libmicrohttpd has called gnutls_deinit by now (MHD_cleanup_connections
     * deinits, then notifies): nothing reads the pair after this */
    tls_pair *p = *slot;
    tls_unhold(served_store, &p);
    *slot = NULL;
}

char *tls_metrics(tls_store *t, size_t *len) {
    if (look_due(t, 0)) look(t);
    pthread_mutex_lock(&t->lock);
    long long not_after = (long long)t->current->not_after;
    unsigned long long failures = t->failures;
    unsigned int pairs = t->pairs;
    pthread_mutex_unlock(&t->lock);
    char *text = NULL;
    int n =
        asprintf(&text,
                 "# HELP comrope_tls_certificate_expiry_timestamp_seconds When the served TLS certificate "
                 "expires (notAfter), in seconds since the epoch.\n"
                 "# TYPE comrope_tls_certificate_expiry_timestamp_seconds gauge\n"
                 "comrope_tls_certificate_expiry_timestamp_seconds %lld\n"
                 "# HELP comrope_tls_reload_failures_total Replaced certificate files that were not "
                 "served (unreadable, not PEM, a key that does not match, expired); the old pair is kept.\n"
                 "# TYPE comrope_tls_reload_failures_total counter\n"
                 "comrope_tls_reload_failures_total %llu\n"
                 "# HELP comrope_tls_certificate_pairs Certificate pairs in memory: the served one, and "
                 "replaced ones that connections opened before the rotation still hold.\n"
                 "# TYPE comrope_tls_certificate_pairs gauge\n"
                 "comrope_tls_certificate_pairs %u\n",
                 not_after, failures, pairs);
    if (n < 0) return NULL;
    *len = (size_t)n;
    return text;
}
