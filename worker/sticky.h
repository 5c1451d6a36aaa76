/* Sticky sessions by cookie (pools[].sticky; README "Sticky sessions").
 *
 * lbd's cookie names a server of the pool by an opaque value: the first
 * 96 bits of HMAC-SHA256(secret, "lbd-sticky-v1" NUL pool NUL address),
 * base64url. It reveals no address, cannot be made for a server without the
 * secret, and means the same on every lbd with the same configuration and
 * secret, with no shared state. The values are made once per configuration
 * (lb_sticky_config_load, by the master, inherited by the workers); a
 * request costs a scan of its Cookie headers and a compare per server.
 *
 * The verdict for a request (worker/proxy.c decides admission):
 *
 *   no cookie of ours, or one naming no server (forged, malformed, another
 *   pool's, a removed server's)  --> balanced by the strategy, fresh cookie
 *   a valid cookie, its server takes sticky clients (lb_backend_accepts_sticky)
 *   and has room                 --> that server, whatever the strategy
 *   a valid cookie, its server down, breaker open, full
 *                                --> balanced (re-pinned), cookie rewritten
 *
 * A server of weight 0 (or drained) takes no new clients but keeps its
 * sticky ones: that is how an operator empties a server without breaking
 * sessions.
 */
#ifndef LB_STICKY_H
#define LB_STICKY_H

#include <stdbool.h>
#include <stddef.h>

#include "shared/config.h"
#include "worker/http.h"

#define LB_STICKY_NO_COOKIE     (-1)         /* the request has no cookie of ours */
#define LB_STICKY_BAD_COOKIE  (-2)         /* ours, naming no server of the pool */

/* Make every server's cookie value in every sticky pool of CFG. 0, or -1
 * with ERR set (OpenSSL failed). Pools without a secret are logged once
 * here (at start, -t and each reload). */
int lb_sticky_config_load(struct lb_config *cfg, char *err, size_t errlen);

/* A server's cookie value, NUL-ended. */
typedef char lb_sticky_value_t[LB_STICKY_VALUE_LEN + 1];

/* The value naming server ADDRESS (canonical) of POOL under the pool's
 * secret: what a worker gives a runtime server when its slot gets it,
 * the same formula as a static server's, hence the same on every node. */
int lb_sticky_server_value(const struct lb_pool_cfg *pool, const char *address, char *out);

/* The value naming server ADDRESS of pool POOL under KEY (KEYLEN bytes):
 * LB_STICKY_VALUE_LEN characters and a NUL into OUT. 0, or -1. */
int lb_sticky_value(const void *key, size_t keylen, const char *pool, const char *address,
                    char *out);

/* The server of POOL that request M's cookie names: its index into
 * pool->servers, LB_STICKY_NO_COOKIE or LB_STICKY_BAD_COOKIE (the first valid
 * cookie of ours wins). RUNTIME: the values of the pool's runtime slots
 * (index - nstatic; "" for a slot with no server or one being removed),
 * or NULL. With STRIP, every Cookie header that holds ours
 * is marked LB_HDR_STICKY for lb_sticky_strip. */
int lb_sticky_find(const struct lb_pool_cfg *pool, const lb_sticky_value_t *runtime,
                   const struct lb_http_msg *m, bool strip);

/* The Cookie header value V (LEN bytes) without the pairs of cookie ST:
 * the rest, joined by "; ", written to DST (room for LEN bytes). Returns
 * its length; 0 when nothing is left (the header is left out). */
size_t lb_sticky_strip(const struct lb_sticky_cfg *st, const char *v, size_t len, char *dst);

#endif
