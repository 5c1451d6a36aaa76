#include "worker/retry.h"

enum lb_retry_reason lb_retry_reason_of(int status)
{
    switch (status) {
    case 502: return LB_RETRY_502;
    case 503: return LB_RETRY_503;
    case 504: return LB_RETRY_504;
    default:  return LB_RETRY_5XX;
    }
}

static bool lb_retry_on(const struct lb_retry_cfg *cfg, const struct lb_retry_try *t)
{
    switch (t->reason) {
    case LB_RETRY_CONNECT: return (cfg->on & LB_RETRY_ON_CONNECT) != 0;
    case LB_RETRY_RESET:   return (cfg->on & LB_RETRY_ON_RESET) != 0;
    case LB_RETRY_TIMEOUT: return (cfg->on & LB_RETRY_ON_TIMEOUT) != 0;
    default:
        break;
    }
    if (t->status < 500 || t->status > 599)
        return false;
    unsigned bit = (unsigned)(t->status - 500);
    return (cfg->on_status[bit / 64] >> (bit % 64)) & 1;
}

bool lb_retry_wanted(const struct lb_retry_cfg *cfg, const struct lb_retry_try *t)
{
    return cfg->enabled && t->replayable && !t->answered && t->retries + 1 < cfg->attempts &&
           lb_retry_on(cfg, t);
}

uint64_t lb_retry_backoff_ms(uint64_t base, uint64_t max, unsigned n, uint64_t random)
{
    /* base * 2^n without overflow: past max it is max anyway. */
    uint64_t cap = n < 63 && base <= (max >> n) ? base << n : max;
    return cap == UINT64_MAX ? random : random % (cap + 1);
}

bool lb_retry_budget_allows(uint64_t retries, uint64_t requests, unsigned percent,
                            unsigned min_retries)
{
    return retries < min_retries || (retries + 1) * 100 <= (uint64_t)percent * requests;
}

/* Retries and requests under way in the pool, all workers. */
static void lb_retry_load(const struct lb_retry_site *site, uint64_t *retries, uint64_t *requests)
{
    int64_t r = 0, q = 0;
    for (size_t i = 0; i < site->n; i++) {
        const struct lb_shm_backend *b = site->servers[i];
        r += atomic_load_explicit(&b->retries, memory_order_relaxed);
        q += atomic_load_explicit(&b->inflight, memory_order_relaxed) +
             atomic_load_explicit(&b->retries_waiting, memory_order_relaxed);
    }
    /* (Gauges read one by one, each moving: a sum may be off for a moment.) */
    *retries = r > 0 ? (uint64_t)r : 0;
    *requests = q > 0 ? (uint64_t)q : 0;
}

enum lb_retry_verdict lb_retry_decide(const struct lb_retry_site *site,
                                      const struct lb_retry_try *t, uint64_t random,
                                      uint64_t *delay_ms)
{
    const struct lb_retry_cfg *cfg = site->cfg;
    if (!lb_retry_wanted(cfg, t))
        return LB_RETRY_GIVE_UP;
    uint64_t retries, requests;
    lb_retry_load(site, &retries, &requests);
    if (t->holding && retries > 0)
        retries--;              /* its own, which it gives back to take this one */
    if (requests == 0)
        requests = 1;           /* this request is under way, whatever was read */
    if (!lb_retry_budget_allows(retries, requests, cfg->budget_percent, cfg->min_retries)) {
        atomic_fetch_add_explicit(&site->pool->retry_budget_exhausted, 1, memory_order_relaxed);
        return LB_RETRY_NO_BUDGET;
    }
    atomic_fetch_add_explicit(&site->pool->retries[t->reason], 1, memory_order_relaxed);
    *delay_ms = lb_retry_backoff_ms(cfg->backoff_ms, cfg->backoff_max_ms, t->retries, random);
    return LB_RETRY_AFTER;
}
