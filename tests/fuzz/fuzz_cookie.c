/* libFuzzer target over the sticky cookie finder and stripper
 * (worker/sticky.c): what a client's Cookie headers can make of them.
 *
 * Input layout: byte 0 picks the cookie's name ("s" or "lbd_srv") and
 * whether a server value is planted; the rest, split at each '\n', are
 * the values of Cookie headers, each copied to a buffer of its exact size
 * so that ASan sees a read past its end. Besides crashes it checks what
 * the head sent to a server relies on: the stripped value fits in the
 * space of the value read (lbd writes it in place), holds no pair of ours,
 * is stripped to itself again, the finder marks exactly the headers that
 * hold ours, and its verdict names a server of the pool or none.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/sticky.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define LB_FUZZ_HEADERS 8

static struct lb_server_cfg lb_fuzz_servers[2];
static struct lb_pool_cfg lb_fuzz_pool;

static void lb_fuzz_setup(unsigned mode)
{
    static const char *const names[] = { "s", "lbd_srv" };
    struct lb_pool_cfg *p = &lb_fuzz_pool;
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "web");
    p->servers = lb_fuzz_servers;
    p->nservers = 2;
    p->sticky.enabled = true;
    p->sticky.strip = true;
    snprintf(p->sticky.cookie, sizeof(p->sticky.cookie), "%s", names[mode & 1]);
    p->sticky.cookie_len = strlen(p->sticky.cookie);
    /* Values an attacker can hit by chance: plain letters. */
    memcpy(lb_fuzz_servers[0].sticky, "AAAAAAAAAAAAAAAA", LB_STICKY_VALUE_LEN + 1);
    memcpy(lb_fuzz_servers[1].sticky, "AAAAAAAAAAAAAAAB", LB_STICKY_VALUE_LEN + 1);
}

/* Whether V (LEN bytes) holds a pair that is cookie ST's. */
static bool lb_fuzz_has_ours(const struct lb_sticky_cfg *st, const char *v, size_t len)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == ';' || v[i] == '\t'))
            i++;
        size_t e = i;
        while (e < len && v[e] != ';')
            e++;
        if (e - i > st->cookie_len && memcmp(v + i, st->cookie, st->cookie_len) == 0 &&
            v[i + st->cookie_len] == '=')
            return true;
        i = e;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    lb_fuzz_setup(data[0]);
    const struct lb_sticky_cfg *st = &lb_fuzz_pool.sticky;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;

    struct lb_http_header hdrs[LB_FUZZ_HEADERS];
    char *vals[LB_FUZZ_HEADERS];
    size_t n = 0;
    for (size_t at = 0; at <= len && n < LB_FUZZ_HEADERS;) {
        const char *nl = memchr(in + at, '\n', len - at);
        size_t vlen = nl ? (size_t)(nl - (in + at)) : len - at;
        vals[n] = malloc(vlen ? vlen : 1);
        if (vals[n] == NULL)
            abort();
        memcpy(vals[n], in + at, vlen);
        hdrs[n] = (struct lb_http_header){ .name = (n & 1) ? "COOKIE" : "Cookie",
                                           .name_len = 6, .value = vals[n],
                                           .value_len = (uint32_t)vlen };
        n++;
        at += vlen + 1;
    }
    struct lb_http_msg m = { .headers = hdrs, .nheaders = n, .max_headers = LB_FUZZ_HEADERS };

    int found = lb_sticky_find(&lb_fuzz_pool, &m, true);
    if (found != LB_STICKY_NO_COOKIE && found != LB_STICKY_BAD_COOKIE &&
        (found < 0 || (size_t)found >= lb_fuzz_pool.nservers))
        abort();
    int found2 = lb_sticky_find(&lb_fuzz_pool, &m, false);
    if (found >= 0 ? found2 != found : found2 >= 0)
        abort();            /* marking changes nothing of the verdict */
    for (size_t i = 0; i < n; i++) {
        bool ours = lb_fuzz_has_ours(st, hdrs[i].value, hdrs[i].value_len);
        if (ours != ((hdrs[i].flags & LB_HDR_STICKY) != 0))
            abort();        /* marked exactly when it holds ours */
        size_t vlen = hdrs[i].value_len;
        char *out = malloc(vlen ? vlen : 1);
        char *again = malloc(vlen ? vlen : 1);
        if (out == NULL || again == NULL)
            abort();
        size_t k = lb_sticky_strip(st, hdrs[i].value, vlen, out);
        if (k > vlen || lb_fuzz_has_ours(st, out, k))
            abort();
        size_t k2 = lb_sticky_strip(st, out, k, again);
        if (k2 != k || memcmp(out, again, k) != 0)
            abort();        /* stripping what was stripped changes nothing */
        free(out);
        free(again);
    }
    for (size_t i = 0; i < n; i++)
        free(vals[i]);
    return 0;
}
