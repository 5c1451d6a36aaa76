/* Circuit breaker: whether a server may take a request, and what became of
 * the requests it took. One state machine per server in shared memory
 * (shared/shm-t.h has its diagram and the layout of its state word), so
 * every worker opens, probes and closes it together, and it outlives worker
 * crashes and reloads. `passive_health` is a preset of it.
 *
 * The data path calls three things:
 *   lb_breaker_usable()  from every strategy's pick (no side effect): may
 *                        this server be picked now?
 *   lb_breaker_admit()   once a server is picked: takes a half-open trial
 *                        place when it is one; refused when another worker
 *                        took the last place first (pick again);
 *   lb_breaker_report()  once per request admitted: success, failure, or
 *                        abandoned (no verdict), with the ticket admit gave.
 * A retry policy reports each try the same way.
 *
 * Times are CLOCK_MONOTONIC milliseconds (lb_now_ms), passed in so the
 * state machine is a set of pure functions over the struct for the tests;
 * a request's success is reported with the time it was dispatched (no
 * clock read per request beyond the one of its pick), a failure with 0:
 * the breaker reads the clock then.
 */
#ifndef LB_BREAKER_H
#define LB_BREAKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"
#include "shared/shm-t.h"

enum lb_breaker_outcome {
    LB_BREAKER_SUCCESS,         /* an answer that is no failure */
    LB_BREAKER_FAILURE,         /* connect error, reset, timeout, invalid answer; 5xx with on_5xx */
    LB_BREAKER_ABANDONED,       /* no verdict: the client left, or it was never sent */
};

/* What a report or an admission changed (each logged once, by the worker
 * whose compare-and-swap made it). */
enum lb_breaker_change {
    LB_BREAKER_SAME,
    LB_BREAKER_OPENED,          /* CLOSED -> OPEN */
    LB_BREAKER_REOPENED,        /* HALF_OPEN -> OPEN: a trial failed */
    LB_BREAKER_HALF_OPENED,     /* OPEN -> HALF_OPEN: the first trial admitted */
    LB_BREAKER_CLOSED_AGAIN,    /* HALF_OPEN -> CLOSED: every trial succeeded */
    LB_BREAKER_HELD,            /* would have opened: max_ejection_percent reached */
};

/* The shared state a breaker works on: the server's and its pool's. */
struct lb_breaker_site {
    struct lb_shm_backend *b;
    struct lb_shm_pool *pool;
    const struct lb_pool_cfg *cfg;      /* cfg->breaker, cfg->nservers */
};

/* Whether B may be picked at NOW_MS. TRIALS false (a retiring worker: it
 * may not report a trial's outcome) skips a server that could only take a
 * half-open trial. No call, no side effect: every strategy's loop runs it. */
static inline bool lb_breaker_usable(const struct lb_shm_backend *b,
                                     const struct lb_breaker_cfg *cfg, uint64_t now_ms,
                                     bool trials)
{
    uint64_t w = atomic_load_explicit(&b->breaker, memory_order_relaxed);
    if (w == 0 || !cfg->enabled)
        return true;            /* (a word a reload left: the master resets it) */
    if (!trials)
        return false;
    if (LB_BRK_STATE(w) == LB_BREAKER_OPEN)
        return now_ms >= LB_BRK_STAMP(w);
    return LB_BRK_ADMITTED(w) < cfg->half_open_requests ||
           now_ms >= LB_BRK_STAMP(w) + cfg->trial_timeout_ms;
}

bool lb_breaker_admit_slow(const struct lb_breaker_site *site, uint64_t now_ms,
                           uint64_t *ticket, enum lb_breaker_change *change);

/* Admit one request to the picked server at NOW_MS. *TICKET is 0 for an ordinary request, else the id of the
 * half-open round whose trial it is: hand it back to lb_breaker_report.
 * false: refused (the server opened, or its last trial place went to
 * another worker since the pick). */
static inline bool lb_breaker_admit(const struct lb_breaker_site *site, uint64_t now_ms,
                                    uint64_t *ticket)
{
    *ticket = 0;
    if (atomic_load_explicit(&site->b->breaker, memory_order_relaxed) == 0)
        return true;
    return lb_breaker_admit_slow(site, now_ms, ticket, NULL);
}

/* What became of a request admitted with TICKET, at NOW_MS (0: read the
 * clock only if needed). RETRY_AFTER_MS
 * (0: none) is a 503's Retry-After: the server then stays open at least
 * that long (at most open_max). The caller applies the generation rule:
 * only the current generation reports, except a trial (ticket != 0). */
enum lb_breaker_change lb_breaker_report(const struct lb_breaker_site *site, uint64_t ticket,
                                         enum lb_breaker_outcome outcome,
                                         uint64_t retry_after_ms, uint64_t now_ms);

/* Whether a pool that found no server (pick gave none) has one that is
 * UP, not draining, of non-zero weight: then its breakers refused it. */
bool lb_breaker_refused_all(struct lb_shm_backend *const *servers, size_t n);

/* A response's Retry-After value (delay-seconds or an HTTP-date) in ms
 * from NOW_WALL_MS; 0 when absent, malformed or past. */
uint64_t lb_breaker_retry_after_ms(const char *value, size_t len, uint64_t now_wall_ms);

#endif
