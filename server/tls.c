/* tls.c: the served certificate. See tls.h. */
#include "tls.h"

#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"

/* A certificate chain longer than this is not a server's. */
#define TLS_MAX_CHAIN 16

/* One certificate chain and its key, as loaded from the files. */
typedef struct tls_pair {
    gnutls_pcert_st chain[TLS_MAX_CHAIN];
    unsigned int nchain;
    gnutls_privkey_t key;
    time_t not_after; /* the leaf certificate's */
} tls_pair;

struct tls_store {
    char cert_file[CONFIG_PATH_MAX], key_file[CONFIG_PATH_MAX];
    tls_pair *current; /* the served pair */
};

/* The open store (tls.h: GnuTLS's callback takes no user pointer). */
static tls_store *served_store;

static void pair_free(tls_pair *p) {
    if (!p) return;
    for (unsigned int i = 0; i < p->nchain; i++) gnutls_pcert_deinit(&p->chain[i]);
    if (p->key) gnutls_privkey_deinit(p->key);
    free(p);
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
    /* regular files only */
    if (config_read_file("tls-cert-file", cert_file, 0, &cert, &cert_len, err, errlen)) goto fail;
    if (config_read_file("tls-key-file", key_file, 0, &keypem, &key_len, err, errlen)) goto fail;
    p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
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
    t->current = pair_load(cert_file, key_file, err, errlen);
    if (!t->current) {
        free(t);
        return NULL;
    }
    if (t->current->not_after < time(NULL))
        log_event("warning", "tls-cert-file: %s: the certificate has expired", cert_file);
    served_store = t;
    return t;
}

void tls_close(tls_store *t) {
    if (!t) return;
    if (served_store == t) served_store = NULL;
    pair_free(t->current);
    free(t);
}

int tls_retrieve_cert(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                      const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length, gnutls_pcert_st **pcert,
                      unsigned int *pcert_length, gnutls_privkey_t *privkey) {
    (void)session, (void)req_ca_dn, (void)nreqs, (void)pk_algos, (void)pk_algos_length;
    tls_store *t = served_store;
    if (!t) return -1;
    tls_pair *p = t->current;
    *pcert = p->chain;
    *pcert_length = p->nchain;
    *privkey = p->key;
    return 0;
}

char *tls_metrics(tls_store *t, size_t *len) {
    long long not_after = (long long)t->current->not_after;
    char *text = NULL;
    int n =
        asprintf(&text,
                 "# HELP comrope_tls_certificate_expiry_timestamp_seconds When the served TLS certificate "
                 "expires (notAfter), in seconds since the epoch.\n"
                 "# TYPE comrope_tls_certificate_expiry_timestamp_seconds gauge\n"
                 "comrope_tls_certificate_expiry_timestamp_seconds %lld\n",
                 not_after);
    if (n < 0) return NULL;
    *len = (size_t)n;
    return text;
}
