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
 * A chain with another number of certificates than the served one's is
 * served only when a later look finds the files unchanged: a file being
 * rewritten in place may be cut between the leaf and its intermediate,
 * which loads and matches the key (a cut elsewhere does not load).
 * The files are read and parsed outside the store's lock, by one look at a
 * time: a slow filesystem (NFS) holds up the HTTP thread making the look
 * (the connections it serves); the other HTTP threads serve the current
 * pair meanwhile.
 *
 * Sessions already open keep theirs: GnuTLS keeps the pointers the
 * callback returned for the session (retrieve_function2 does not say when
 * it is done with them), so a connection holds a reference to the pair it
 * was served (tls_hold, recorded with the connection by conn_guard) until
 * libmicrohttpd reports it closed, which it does after gnutls_deinit
 * (tls_connection_closed). A replaced pair is freed when its last
 * connection closes (comrope_tls_certificate_pairs counts those in memory).
 *
 * One store per process: GnuTLS's callback takes no user pointer, so the
 * store opened is the one the callback serves (both ports share it). */
#ifndef COMROPE_TLS_H
#define COMROPE_TLS_H

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <stddef.h>

/* GnuTLS priorities of both ports: TLS 1.2 and 1.3 only. libmicrohttpd's
 * default (GnuTLS's NORMAL) still negotiates TLS 1.0 and 1.1, which
 * RFC 8996 deprecates and scanners flag. */
#define TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

typedef struct tls_store tls_store;
typedef struct tls_pair tls_pair; /* a certificate chain and its key, reference-counted */

/* Reads and checks the pair. NULL with a message naming the file and what
 * is wrong (unreadable, not PEM, a key that does not match). The key's PEM
 * text is wiped once GnuTLS has parsed it. */
tls_store *tls_open(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* Frees the served pair: after the daemons have stopped (every connection
 * closed, so no other pair is held). */
void tls_close(tls_store *t);

/* Looks at the files now, not at most once a second: for tests, which
 * must not wait. */
void tls_look_now(tls_store *t);

/* Makes *held the pair served now, with a reference, releasing the pair
 * *held had (a second handshake on one connection). It does not look at
 * the files (tls_retrieve_cert looks first, at most once a second; tests
 * call tls_look_now): what a test holds does not depend on the clock. */
void tls_hold(tls_store *t, tls_pair **held);

/* Releases *held (NULL: none) and sets it to NULL. */
void tls_unhold(tls_store *t, tls_pair **held);

/* Pairs in memory: the served one and replaced ones still held. */
unsigned int tls_pairs(tls_store *t);

/* For MHD_OPTION_HTTPS_CERT_CALLBACK: serves the open store's current pair,
 * held by the connection (conn_guard_slot). -1, a failed handshake, for a
 * connection with nowhere to record it (out of memory when it started). */
int tls_retrieve_cert(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                      const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length, gnutls_pcert_st **pcert,
                      unsigned int *pcert_length, gnutls_privkey_t *privkey);

/* Releases the pair connection c holds (MHD_CONNECTION_NOTIFY_CLOSED,
 * before conn_guard_notify frees the slot). */
void tls_connection_closed(struct MHD_Connection *c);

/* The Prometheus text of the served certificate's expiry, the reload
 * failures and the pairs in memory (malloc'd, *len its length); NULL when out of memory. Checks
 * the files first, as a handshake does. */
char *tls_metrics(tls_store *t, size_t *len);

#endif
