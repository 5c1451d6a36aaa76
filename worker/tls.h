/* TLS termination with OpenSSL: the contexts of each TLS listener, and the
 * transport (worker/conn.h) that runs a connection's handshake and its
 * SSL_read/SSL_write over the non-blocking socket, so that the proxy above
 * never calls OpenSSL.
 *
 * Where things happen:
 *   - the master builds every listener's contexts when it loads a
 *     configuration (start, -t, reload): certificate and key files read and
 *     checked, so a bad file is an error with its FILE:LINE and a reload
 *     with one keeps the running configuration. Workers inherit the
 *     contexts through fork.
 *   - SNI picks a context by the certificates' names (exact, then
 *     "*.example.com" for one label), the first certificate otherwise.
 *     Certificates with the same names and different key types (RSA and
 *     ECDSA) share a context: OpenSSL then picks by what the client
 *     supports.
 *   - Session tickets are encrypted with the listener's current key in
 *     shm and decrypted with any of the last three (lb_shm_tls), so a
 *     client resumes on whatever worker its next connection lands on.
 *   - A worker compares the listener's cert_generation in shm with the one
 *     it started with at each handshake, and builds its contexts again from
 *     the files when it changed (certificates replaced at run time).
 *
 * Connection (transport) states:
 *
 *   accept --> HANDSHAKE --SSL_do_handshake done--> READY --close_notify--> SHUT
 *                  |                                  |
 *                  +-- alert / malformed / EOF -------+--> (fatal: closed without close_notify)
 *
 * HANDSHAKE is bounded by the first read timeout (the handshake's bytes do
 * not restart the clock); output waits for READY.
 */
#ifndef LB_TLS_H
#define LB_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "shared/config.h"
#include "shared/shm-t.h"

struct lb_conn;

/* Master: build the contexts of every TLS listener of CFG (and fill each
 * certificate's subject and expiry in). 0, or -1 with "FILE:LINE: why" in
 * ERR. What it built is freed with CFG (lb_config_free). */
int lb_tls_config_load(struct lb_config *cfg, char *err, size_t errlen);

/* Worker, once: where the ticket keys and the counters are. */
void lb_tls_worker_init(const struct lb_config *cfg, struct lb_shm_header *shm,
                        struct lb_shm_worker *stats);

/* Put a TLS server transport under C, a connection accepted on a listener
 * with T. 0, or -1 when out of memory (C is untouched). */
int lb_tls_accept(struct lb_conn *c, struct lb_tls_cfg *t);

/* The protocol version and cipher of C's session ("TLSv1.3",
 * "TLS_AES_128_GCM_SHA256"), or NULL when C has no TLS (the access log). */
const char *lb_tls_version(const struct lb_conn *c);
const char *lb_tls_cipher(const struct lb_conn *c);

/* The context SNI name NAME picks on T (NULL: no SNI), as a handshake
 * would: exact name, wildcard, else the default. */
struct ssl_ctx_st *lb_tls_ctx_for(const struct lb_tls_cfg *t, const char *name);

/* Whether certificate name PATTERN (lowercase; "*.example.com" covers one
 * label) covers host NAME (LEN bytes, any case). */
bool lb_tls_name_match(const char *pattern, const char *name, size_t len);

/* Worker: build T's contexts again from its files if the listener's
 * cert_generation moved since they were built. 1 when rebuilt, 0 when
 * nothing changed, -1 when the files failed (the old contexts stay; the
 * error is logged). Called at each accept on a TLS listener. */
int lb_tls_refresh(struct lb_tls_cfg *t);

/* ---- TLS to backends (pools[].tls) ----
 *
 * The pool's client context is built by the master with the listeners'
 * (lb_tls_config_load). Each worker keeps, per server, the last session
 * the server gave (an lb_tls_peer): a new connection offers it, so a
 * server that keeps tickets resumes instead of a full handshake. A
 * connection's handshake runs after the TCP connect and before the
 * connection layer reports it connected: one that fails is a failed
 * connect to the proxy (retries, breaker), and is counted per server. */
struct lb_tls_peer;

/* Per worker, per server of a TLS pool POOL at ADDRESS; COUNTS: its
 * LB_TLS_RESULTS handshake counters. NULL when out of memory. */
struct lb_tls_peer *lb_tls_peer_new(const char *pool, const char *address,
                                    lb_counter_t *counts);
void lb_tls_peer_free(struct lb_tls_peer *p);
/* P now stands for another server at ADDRESS (a runtime slot that got a
 * new one): its session and log marks go, its address is the new one. */
void lb_tls_peer_set_address(struct lb_tls_peer *p, const char *address);

/* Put a TLS client transport under C, a backend connection not yet
 * connected, for pool T and server P. 0, or -1 when out of memory. */
int lb_tls_connect(struct lb_conn *c, const struct lb_pool_tls_cfg *t, struct lb_tls_peer *p);

/* A client SSL for pool T (SNI, the name to verify: sni, else IP, the
 * server's address without its port), with no session: the health checks'.
 * NULL when out of memory. */
struct ssl_st *lb_tls_client_new(const struct lb_pool_tls_cfg *t, const char *ip);
struct x509_st;
/* X's subject (RFC 2253) into OUT, printable ASCII without a quote or a
 * backslash (those become '_'): it goes to the JSON and the metrics'
 * labels as is. The master's ACME client uses it too. */
void lb_tls_subject(struct x509_st *x, char *out, size_t outlen);
/* ADDRESS ("1.2.3.4:443", "[::1]:443") without its port, into OUT. */
void lb_tls_address_host(const char *address, char *out, size_t outlen);

/* Whether backend connection C failed in its TLS handshake (it logged
 * why, once per reason). */
bool lb_tls_handshake_failed(const struct lb_conn *c);

#endif
