#include "worker/route.h"

#include <string.h>

/* Host without port or trailing dot, lowercased into BUF. */
static size_t lb_route_norm_host(const char *host, size_t len, char *buf, size_t cap)
{
    if (len > 0 && host[0] == '[') {
        const char *close = memchr(host, ']', len);
        len = close ? (size_t)(close - host) + 1 : len;
    } else {
        const char *colon = memchr(host, ':', len);
        if (colon != NULL)
            len = (size_t)(colon - host);
    }
    if (len > 0 && host[len - 1] == '.')
        len--;
    if (len >= cap)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = host[i];
        buf[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    return len;
}

const struct lb_route_cfg *lb_route_match(const struct lb_config *cfg,
                                          const char *host, size_t host_len,
                                          const char *path, size_t path_len)
{
    char h[LB_HOST_MAX];
    size_t hlen = host ? lb_route_norm_host(host, host_len, h, sizeof(h)) : 0;

    const struct lb_route_cfg *best = NULL;
    size_t best_host = 0, best_path = 0;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct lb_route_cfg *r = &cfg->routes[i];
        size_t host_score;
        switch (r->host_match) {
        case LB_HOST_EXACT:
            if (hlen != r->host_len || memcmp(h, r->host, hlen) != 0)
                continue;
            host_score = (size_t)-1;
            break;
        case LB_HOST_SUFFIX:
            /* ".example.com" matches "a.example.com", not "example.com". */
            if (hlen <= r->host_len ||
                memcmp(h + hlen - r->host_len, r->host, r->host_len) != 0)
                continue;
            host_score = 1 + r->host_len;
            break;
        default:
            host_score = 0;
            break;
        }
        if (path_len < r->path_len || memcmp(path, r->path_prefix, r->path_len) != 0)
            continue;
        if (best == NULL || host_score > best_host ||
            (host_score == best_host && r->path_len > best_path)) {
            best = r;
            best_host = host_score;
            best_path = r->path_len;
        }
    }
    return best;
}
