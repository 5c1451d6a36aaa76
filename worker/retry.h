/* Retries: whether a try that failed is sent again, and after how long.
 * The policy is the pool's `retries` (shared/config.h, README "Retries").
 *
 * The data path calls lb_retry_decide() where a try failed before any
 * byte of an answer reached the client. Its verdict is "retry after N ms"
 * or "give up", and then the caller answers as it would without retries.
 * The next try's server is picked when the backoff is over (a libevent
 * timer: the worker goes on serving meanwhile), another one than those
 * tried when the pool has one.
 *
 * The budget is counted over all workers in shared memory: retries under
 * way in a pool may be at most budget % of its requests under way, or
 * min_retries, whichever is more. A retry is under way from its decision
 * to the answer of the try it starts (or the end of the request); it is
 * held on the failed try's server (lb_retry_gauge on lb_shm_backend's
 * retries, and retries_waiting during the backoff), where the pool's sum
 * is read and a dead worker's share taken back. A request is under way
 * while a try of it is in flight (lb_shm_backend's inflight) or while it
 * waits out a backoff. Workers read and add without a lock: under a race
 * the budget can be passed by one retry per worker at most.
 *
 * A stale pooled connection's resend (the backend closed it just as it
 * was reused) is no retry: it goes to the same server on a new connection
 * at once, and counts against neither attempts nor the budget.
 */
#ifndef LB_RETRY_H
#define LB_RETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"
#include "shared/shm.h"

enum lb_retry_verdict {
    LB_RETRY_GIVE_UP,           /* the policy does not retry this one */
    LB_RETRY_NO_BUDGET,         /* it would, but the budget is spent (counted) */
    LB_RETRY_AFTER,             /* send it again after *delay_ms (counted) */
};

/* What the caller knows of a try that failed. */
struct lb_retry_try {
    enum lb_retry_reason reason;
    int status;                 /* the answer's, for the 5xx reasons */
    unsigned retries;           /* retries this request made before */
    bool replayable;            /* the method may be retried, and the whole
                                 * request is at hand to send again */
    bool answered;              /* a byte of an answer went to the client */
    bool holding;               /* this request holds a retry (its previous
                                 * one): not counted against it */
};

/* A pool's state that the budget is counted on. */
struct lb_retry_site {
    struct lb_shm_backend *const *servers;
    size_t n;
    struct lb_shm_pool *pool;
    const struct lb_retry_cfg *cfg;
};

/* The verdict on try T. RANDOM: 64 uniform bits for the jitter. Counts the
 * retry (lbd_retries_total) or the refusal (lbd_retry_budget_exhausted_total)
 * in SITE->pool. The caller holds a retry it was granted (lb_retry_gauge). */
enum lb_retry_verdict lb_retry_decide(const struct lb_retry_site *site,
                                      const struct lb_retry_try *t, uint64_t random,
                                      uint64_t *delay_ms);

/* Pure parts, for the tests. */

/* Whether CFG retries T at all, budget aside. */
bool lb_retry_wanted(const struct lb_retry_cfg *cfg, const struct lb_retry_try *t);
/* Full jitter: RANDOM mapped onto [0, min(MAX, BASE * 2^N)] (AWS's
 * "exponential backoff and jitter"; N = 0 for the first retry). */
uint64_t lb_retry_backoff_ms(uint64_t base, uint64_t max, unsigned n, uint64_t random);
/* Whether one more retry may start while RETRIES are under way among
 * REQUESTS requests: then retries + 1 <= PERCENT % of REQUESTS, or
 * retries < MIN_RETRIES. */
bool lb_retry_budget_allows(uint64_t retries, uint64_t requests, unsigned percent,
                            unsigned min_retries);
/* The reason a 5xx STATUS is retried for (LB_RETRY_502 ... LB_RETRY_5XX). */
enum lb_retry_reason lb_retry_reason_of(int status);

/* A retry gauge: the server's shared one (any worker, atomic) and this
 * worker's share of it (its stats row: one writer). */
static inline void lb_retry_gauge(_Atomic int64_t *shared, lb_counter_t *mine, int64_t delta)
{
    atomic_fetch_add_explicit(shared, delta, memory_order_relaxed);
    lb_counter_add(mine, (uint64_t)delta);
}

#endif
