/* tls.h: HTTPS (tls-cert-file, tls-key-file), the served certificate.
 *
 * Owns: reading and checking the PEM pair (the key matches the
 * certificate), handing it to each new TLS handshake through GnuTLS's
 * certificate callback (MHD_OPTION_HTTPS_CERT_CALLBACK), and rotation: a
 * handshake looks at the files' identity (device, inode, size, mtime) at
 * most once a second, and a changed pair that loads and matches is served
 * from the next handshake on. cert-manager swaps a mounted Secret's
 * `..data` symlink atomically; certbot repoints its live/ symlinks one
 * after the other (unlink, then symlink: missing for a moment). An
 * invalid, mismatched or expired replacement keeps the served pair; found
 * again unchanged by a look a second or more later (not a renewal under
 * way), it is logged once and counted (comrope_tls_reload_failures_total).
 * Sessions already open keep theirs.
 *
 * One store per process: GnuTLS's callback takes no user pointer, so the
 * store opened is the one the callback serves (both ports share it). */
#ifndef COMROPE_TLS_H
#define COMROPE_TLS_H

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <stddef.h>

/* GnuTLS priorities of both ports: TLS 1.2 and 1.3 only. libmicrohttpd's
 * default (GnuTLS's NORMAL) still negotiates TLS 1.0 and 1.1, which
 * RFC 8996 deprecates and scanners flag. */
#define TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

typedef struct tls_store tls_store;

/* Reads and checks the pair. NULL with a message naming the file and what
 * is wrong (unreadable, not PEM, a key that does not match). The key's PEM
 * text is wiped once GnuTLS has parsed it. */
tls_store *tls_open(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* Frees every pair the store has served: after the daemons have stopped. */
void tls_close(tls_store *t);

/* For MHD_OPTION_HTTPS_CERT_CALLBACK: serves the open store's current pair. */
int tls_retrieve_cert(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                      const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length, gnutls_pcert_st **pcert,
                      unsigned int *pcert_length, gnutls_privkey_t *privkey);

/* The Prometheus text of the served certificate's expiry and the reload
 * failures (malloc'd, *len its length); NULL when out of memory. Checks
 * the files first, as a handshake does. */
char *tls_metrics(tls_store *t, size_t *len);

#endif
