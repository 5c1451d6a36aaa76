/* ACME challenges answered by the workers, from what the control process
 * (master/acme.c) put in shm (lb_shm_acme):
 *   - HTTP-01: GET /.well-known/acme-challenge/TOKEN on any plain listener
 *     is answered with the token's key authorization (worker/proxy.c asks
 *     lb_challenge_http01 before routing; an unknown token is routed as
 *     usual, so a backend may answer its own challenges);
 *   - TLS-ALPN-01 (RFC 8737): a ClientHello offering ALPN "acme-tls/1" for
 *     a name with a pending challenge gets that challenge's self-signed
 *     certificate (with the id-pe-acmeIdentifier extension) and the ALPN
 *     "acme-tls/1"; the connection then carries no HTTP.
 * Nothing here runs for a listener without acme names. */
#ifndef LB_CHALLENGE_H
#define LB_CHALLENGE_H

#include <stdbool.h>
#include <stddef.h>

#include "shared/shm-t.h"

struct ssl_ctx_st;

/* Worker, once: where the challenges are. */
void lb_challenge_init(struct lb_shm_header *shm);

/* Copy the key authorization of HTTP-01 token TOKEN (LEN bytes) into OUT
 * (LB_ACME_KEYAUTH_MAX bytes). False when no such challenge is pending. */
bool lb_challenge_http01(const char *token, size_t len, char *out);

/* Watch the ClientHellos reaching CTX (a TLS listener with acme names) for
 * ALPN acme-tls/1. */
void lb_challenge_tls_setup(struct ssl_ctx_st *ctx);

#endif
