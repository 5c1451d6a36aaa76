#include "worker/sticky.h"

#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "shared/log.h"
#include "shared/util.h"

/* Without a secret every lbd uses this key: cookies still mean the same on
 * every node and reveal no address to whoever does not know the addresses,
 * but whoever knows a server's pool and address can make its cookie (the
 * README says so; a random key per instance would break the first). */
static const char lb_sticky_default_key[] = "lbd sticky sessions: no secret configured";

#define LB_STICKY_MAC_BYTES 12          /* 96 bits: 16 base64url characters */

static const char lb_b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int lb_sticky_value(const void *key, size_t keylen, const char *pool, const char *address,
                    char *out)
{
    /* The server's stable identity: its pool and address as configured
     * (canonical form), never its place in the list. */
    char msg[16 + LB_NAME_MAX + LB_ADDR_STR_MAX];
    size_t plen = strlen(pool), alen = strlen(address);
    if (plen >= LB_NAME_MAX || alen >= LB_ADDR_STR_MAX)
        return -1;
    memcpy(msg, "lbd-sticky-v1", 14);           /* the NUL included */
    memcpy(msg + 14, pool, plen + 1);
    memcpy(msg + 15 + plen, address, alen);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)msg, 15 + plen + alen, md,
             &mdlen) == NULL || mdlen < LB_STICKY_MAC_BYTES)
        return -1;
    for (size_t i = 0, o = 0; i < LB_STICKY_MAC_BYTES; i += 3) {
        uint32_t v = (uint32_t)md[i] << 16 | (uint32_t)md[i + 1] << 8 | md[i + 2];
        out[o++] = lb_b64url[(v >> 18) & 63];
        out[o++] = lb_b64url[(v >> 12) & 63];
        out[o++] = lb_b64url[(v >> 6) & 63];
        out[o++] = lb_b64url[v & 63];
    }
    out[LB_STICKY_VALUE_LEN] = '\0';
    return 0;
}

/* The pool's key: its secret, or the default one. */
static const void *lb_sticky_key(const struct lb_pool_cfg *p, size_t *keylen)
{
    if (p->sticky.secret == NULL) {
        *keylen = sizeof(lb_sticky_default_key) - 1;
        return lb_sticky_default_key;
    }
    *keylen = p->sticky.secret_len;
    return p->sticky.secret;
}

int lb_sticky_server_value(const struct lb_pool_cfg *pool, const char *address, char *out)
{
    size_t keylen;
    const void *key = lb_sticky_key(pool, &keylen);
    return lb_sticky_value(key, keylen, pool->name, address, out);
}

int lb_sticky_config_load(struct lb_config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->npools; i++) {
        struct lb_pool_cfg *p = &cfg->pools[i];
        if (!p->sticky.enabled)
            continue;
        size_t keylen;
        const void *key = lb_sticky_key(p, &keylen);
        if (p->sticky.secret == NULL) {
            lb_log_warn("pool '%s': sticky without a secret: its cookies can be made by whoever "
                        "knows a server's address (set secret or secret_file)", p->name);
        }
        for (size_t j = 0; j < p->nservers; j++) {
            /* A runtime slot's value is its server's, made by each worker
             * when the slot gets one (worker/upstream.c): none here. */
            if (p->servers[j].runtime) {
                p->servers[j].sticky[0] = '\0';
                continue;
            }
            if (lb_sticky_value(key, keylen, p->name, p->servers[j].address,
                                p->servers[j].sticky) < 0) {
                snprintf(err, errlen, "%s: pool '%s': cannot compute the sticky cookies (HMAC)",
                         cfg->path, p->name);
                return -1;
            }
        }
    }
    return 0;
}

/* Cookie pairs of a Cookie header value: "a=1; b=2" (RFC 6265 5.4; a
 * sloppier client's spaces and empty pairs are skipped). This runs per
 * request of a sticky pool: one memchr per pair, and a pair of another
 * name costs one compare unless it has '=' where ours would. */
static inline bool lb_cookie_sep(char c)
{
    return c == ' ' || c == ';' || c == '\t';
}

/* The end of the pair at P: the next ';' or END. */
static inline const char *lb_cookie_end(const char *p, const char *end)
{
    const char *semi = memchr(p, ';', (size_t)(end - p));
    return semi != NULL ? semi : end;
}

/* Whether the pair P..E is cookie ST's ("NAME=", names case-sensitive). */
static inline bool lb_cookie_is(const struct lb_sticky_cfg *st, const char *p, const char *e)
{
    size_t n = st->cookie_len;
    return (size_t)(e - p) > n && p[n] == '=' && p[0] == st->cookie[0] &&
           memcmp(p, st->cookie, n) == 0;
}

static inline const char *lb_cookie_trim(const char *p, const char *e)
{
    while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    return e;
}

/* "Cookie", any case: the name is 6 bytes long already. */
static inline bool lb_cookie_header(const char *name)
{
    uint32_t a;
    uint16_t b;
    memcpy(&a, name, 4);
    memcpy(&b, name + 4, 2);
    uint32_t cook;
    uint16_t ie;
    memcpy(&cook, "cook", 4);
    memcpy(&ie, "ie", 2);
    /* Setting bit 5 maps exactly 'C' and 'c' to 'c' (and so on): no
     * other byte becomes one of these letters. */
    return ((a | 0x20202020u) == cook) && ((uint16_t)(b | 0x2020u) == ie);
}

/* The server whose value is V, or LB_STICKY_BAD_COOKIE. */
static int lb_sticky_lookup(const struct lb_pool_cfg *pool, const lb_sticky_value_t *runtime,
                            const char *v, size_t len)
{
    if (len == LB_STICKY_VALUE_LEN + 2 && v[0] == '"' && v[len - 1] == '"') {
        v++;                    /* a quoted cookie-value (RFC 6265 4.1.1) */
        len -= 2;
    }
    if (len != LB_STICKY_VALUE_LEN)
        return LB_STICKY_BAD_COOKIE;
    uint64_t a, b;
    memcpy(&a, v, 8);
    memcpy(&b, v + 8, 8);
    bool rt = lb_pool_has_runtime(pool);
    size_t nstatic = rt ? pool->nstatic : pool->nservers;
    for (size_t j = 0; j < nstatic; j++) {
        uint64_t x, y;
        memcpy(&x, pool->servers[j].sticky, 8);
        memcpy(&y, pool->servers[j].sticky + 8, 8);
        if (x == a && y == b)
            return (int)j;
    }
    /* Runtime slots: by their server's value, none for a slot without one. */
    for (size_t j = nstatic; rt && runtime != NULL && j < pool->nservers; j++) {
        const char *rv = runtime[j - pool->nstatic];
        uint64_t x, y;
        memcpy(&x, rv, 8);
        memcpy(&y, rv + 8, 8);
        if (rv[0] != '\0' && x == a && y == b)
            return (int)j;
    }
    return LB_STICKY_BAD_COOKIE;
}

int lb_sticky_find(const struct lb_pool_cfg *pool, const lb_sticky_value_t *runtime,
                   const struct lb_http_msg *m, bool strip)
{
    const struct lb_sticky_cfg *st = &pool->sticky;
    int found = LB_STICKY_NO_COOKIE;
    for (size_t i = 0; i < m->nheaders; i++) {
        struct lb_http_header *h = &m->headers[i];
        if (h->name_len != 6 || !lb_cookie_header(h->name))
            continue;
        const char *p = h->value, *end = p + h->value_len;
        while (p < end) {
            if (lb_cookie_sep(*p)) {
                p++;
                continue;
            }
            const char *e = lb_cookie_end(p, end);
            if (lb_cookie_is(st, p, e)) {
                if (strip)
                    h->flags |= LB_HDR_STICKY;
                if (found < 0) {
                    const char *v = p + st->cookie_len + 1;
                    found = lb_sticky_lookup(pool, runtime, v, (size_t)(lb_cookie_trim(v, e) - v));
                }
                if (found >= 0 && !strip)
                    return found;
            }
            p = e;
        }
    }
    return found;
}

size_t lb_sticky_strip(const struct lb_sticky_cfg *st, const char *v, size_t len, char *dst)
{
    const char *p = v, *end = v + len;
    size_t n = 0;
    while (p < end) {
        if (lb_cookie_sep(*p)) {
            p++;
            continue;
        }
        const char *e = lb_cookie_end(p, end);
        if (!lb_cookie_is(st, p, e)) {
            /* The separator as the client wrote it (";" and a space, or
             * not): what is written never outgrows what was read. */
            if (n > 0) {
                dst[n++] = ';';
                if (p[-1] == ' ' || p[-1] == '\t')
                    dst[n++] = ' ';
            }
            size_t k = (size_t)(lb_cookie_trim(p, e) - p);
            memcpy(dst + n, p, k);
            n += k;
        }
        p = e;
    }
    return n;
}
