#include "worker/breaker.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "shared/log.h"
#include "shared/shm.h"
#include "shared/util.h"

#define LB_BRK_TAG_MASK 0xffffffu

static uint64_t lb_brk_now(uint64_t now_ms)
{
    return now_ms != 0 ? now_ms : lb_now_ms();
}

static bool lb_brk_cas(struct lb_shm_backend *b, uint64_t *expected, uint64_t desired)
{
    return atomic_compare_exchange_weak_explicit(&b->breaker, expected, desired,
                                                 memory_order_acq_rel, memory_order_relaxed);
}

/* The length of the next open interval: the last one doubled (up to
 * open_max) when the breaker opens again soon after it closed, or on a
 * failed trial; `open` once it stayed closed for open_max. */
static uint64_t lb_brk_interval(const struct lb_shm_backend *b, const struct lb_breaker_cfg *cfg,
                                uint64_t now, bool reopen)
{
    uint64_t cur = atomic_load_explicit(&b->breaker_interval_ms, memory_order_relaxed);
    if (!reopen) {
        uint64_t closed = atomic_load_explicit(&b->breaker_closed_ms, memory_order_relaxed);
        if (closed == 0 || now < closed || now - closed >= cfg->open_max_ms)
            cur = 0;
    }
    uint64_t next = cur == 0 ? cfg->open_ms : cur * 2;
    if (next < cfg->open_ms)
        next = cfg->open_ms;
    if (next > cfg->open_max_ms)
        next = cfg->open_max_ms;
    return next;
}

/* Open until: the interval, or the backend's Retry-After if longer (a
 * backend cannot hold itself out for more than open_max, though). */
static uint64_t lb_brk_until(const struct lb_breaker_cfg *cfg, uint64_t now, uint64_t interval,
                             uint64_t retry_after)
{
    if (retry_after > cfg->open_max_ms)
        retry_after = cfg->open_max_ms;
    return now + (retry_after > interval ? retry_after : interval);
}

/* ---- the pool's ejection budget ----------------------------------------- */

/* Take one of the pool's places for an open breaker: max_ejection_percent
 * of its servers, and at least one (a pool of one server must be able to
 * open too; with every server open the pool answers 503 at once). */
static bool lb_brk_reserve(const struct lb_breaker_site *site)
{
    /* A pool with runtime slots counts its servers, not its slots. */
    uint64_t servers = site->cfg->nservers;
    if (lb_pool_has_runtime(site->cfg))
        servers = site->cfg->nstatic +
                  atomic_load_explicit(&site->pool->runtime_active, memory_order_relaxed);
    uint64_t limit = servers * site->cfg->breaker.max_ejection_percent / 100;
    if (limit < 1)
        limit = 1;
    uint32_t n = atomic_load_explicit(&site->pool->breakers_open, memory_order_relaxed);
    do {
        if (n >= limit)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&site->pool->breakers_open, &n, n + 1,
                                                    memory_order_relaxed, memory_order_relaxed));
    return true;
}

static void lb_brk_unreserve(const struct lb_breaker_site *site)
{
    uint32_t n = atomic_load_explicit(&site->pool->breakers_open, memory_order_relaxed);
    do {
        if (n == 0)
            return;
    } while (!atomic_compare_exchange_weak_explicit(&site->pool->breakers_open, &n, n - 1,
                                                    memory_order_relaxed, memory_order_relaxed));
}

/* ---- the failure-ratio window -------------------------------------------- */

/* Count one request (FAILED or not) in the current bucket; with FAILS and
 * TOTAL, also sum the window. */
static void lb_brk_window_add(struct lb_shm_backend *b, const struct lb_breaker_cfg *cfg,
                              uint64_t now, bool failed, uint32_t *fails, uint32_t *total)
{
    uint64_t width = cfg->window_ms / LB_BREAKER_BUCKETS;
    if (width == 0)
        width = 1;
    uint64_t period = now / width;
    uint32_t tag = (uint32_t)(period & LB_BRK_TAG_MASK);
    _Atomic uint64_t *slot = &b->breaker_window[period % LB_BREAKER_BUCKETS];
    uint64_t w = atomic_load_explicit(slot, memory_order_relaxed), nw;
    do {
        uint64_t f = failed, t = 1;
        if (LB_BRK_BUCKET_TAG(w) == tag) {
            f += LB_BRK_BUCKET_FAILS(w);
            t += LB_BRK_BUCKET_TOTAL(w);
            if (t > LB_BRK_BUCKET_MAX)
                break;          /* a full bucket keeps its share as it is */
        }
        nw = ((uint64_t)tag << 40) | (f << 20) | t;
    } while (!atomic_compare_exchange_weak_explicit(slot, &w, nw, memory_order_relaxed,
                                                    memory_order_relaxed));
    if (fails == NULL)
        return;
    *fails = *total = 0;
    for (unsigned i = 0; i < LB_BREAKER_BUCKETS; i++) {
        uint64_t x = atomic_load_explicit(&b->breaker_window[i], memory_order_relaxed);
        if (((tag - LB_BRK_BUCKET_TAG(x)) & LB_BRK_TAG_MASK) < LB_BREAKER_BUCKETS) {
            *fails += LB_BRK_BUCKET_FAILS(x);
            *total += LB_BRK_BUCKET_TOTAL(x);
        }
    }
}

static void lb_brk_window_clear(struct lb_shm_backend *b)
{
    for (unsigned i = 0; i < LB_BREAKER_BUCKETS; i++)
        atomic_store_explicit(&b->breaker_window[i], 0, memory_order_relaxed);
}

/* ---- transitions ---------------------------------------------------------- */

static void lb_brk_count(struct lb_shm_backend *b, enum lb_breaker_state to)
{
    atomic_fetch_add_explicit(&b->breaker_transitions[to], 1, memory_order_relaxed);
}

/* CLOSED -> OPEN, if the pool may have one more server open. */
static enum lb_breaker_change lb_brk_open(const struct lb_breaker_site *site, uint64_t now,
                                          uint64_t retry_after, const char *why)
{
    struct lb_shm_backend *b = site->b;
    const struct lb_breaker_cfg *cfg = &site->cfg->breaker;
    if (!lb_brk_reserve(site)) {
        lb_log_debug("server %s of pool '%s': circuit breaker stays closed (%s): "
                     "max_ejection_percent %u%% of the pool is open already",
                     lb_shm_backend_name(b), site->cfg->name, why, cfg->max_ejection_percent);
        return LB_BREAKER_HELD;
    }
    uint64_t interval = lb_brk_interval(b, cfg, now, false);
    uint64_t until = lb_brk_until(cfg, now, interval, retry_after);
    uint64_t expected = 0;
    if (!atomic_compare_exchange_strong_explicit(&b->breaker, &expected,
                                                 LB_BRK_WORD(LB_BREAKER_OPEN, 0, 0, until),
                                                 memory_order_acq_rel, memory_order_relaxed)) {
        lb_brk_unreserve(site);         /* another worker opened it first */
        return LB_BREAKER_SAME;
    }
    atomic_store_explicit(&b->breaker_interval_ms, interval, memory_order_relaxed);
    lb_brk_count(b, LB_BREAKER_OPEN);
    lb_log_warn("server %s of pool '%s': circuit breaker OPEN for %llu ms (%s)", lb_shm_backend_name(b),
                site->cfg->name, (unsigned long long)(until - now), why);
    return LB_BREAKER_OPENED;
}

/* A 503 with Retry-After while OPEN: open at least that long. */
static void lb_brk_extend(struct lb_shm_backend *b, const struct lb_breaker_cfg *cfg,
                          uint64_t now, uint64_t retry_after)
{
    uint64_t until = lb_brk_until(cfg, now, 0, retry_after);
    uint64_t w = atomic_load_explicit(&b->breaker, memory_order_relaxed);
    while (LB_BRK_STATE(w) == LB_BREAKER_OPEN && LB_BRK_STAMP(w) < until)
        if (lb_brk_cas(b, &w, LB_BRK_WORD(LB_BREAKER_OPEN, 0, 0, until)))
            break;
}

/* The outcome of a trial of round TICKET. false when that round is over
 * (the report is then an ordinary one). */
static bool lb_brk_trial(const struct lb_breaker_site *site, uint64_t ticket,
                         enum lb_breaker_outcome outcome, uint64_t retry_after, uint64_t now,
                         enum lb_breaker_change *change)
{
    struct lb_shm_backend *b = site->b;
    const struct lb_breaker_cfg *cfg = &site->cfg->breaker;
    uint64_t w = atomic_load_explicit(&b->breaker, memory_order_relaxed), nw = 0;
    uint64_t interval = 0;
    for (;;) {
        if (LB_BRK_STATE(w) != LB_BREAKER_HALF_OPEN || LB_BRK_STAMP(w) != ticket)
            return false;
        unsigned admitted = LB_BRK_ADMITTED(w), ok = LB_BRK_SUCCEEDED(w);
        if (outcome == LB_BREAKER_ABANDONED) {
            /* No verdict: its place goes to the next request. */
            nw = LB_BRK_WORD(LB_BREAKER_HALF_OPEN, admitted > 0 ? admitted - 1 : 0, ok, ticket);
        } else if (outcome == LB_BREAKER_SUCCESS) {
            nw = ok + 1 >= cfg->half_open_requests
                     ? 0 : LB_BRK_WORD(LB_BREAKER_HALF_OPEN, admitted, ok + 1, ticket);
        } else {
            interval = lb_brk_interval(b, cfg, now, true);
            nw = LB_BRK_WORD(LB_BREAKER_OPEN, 0, 0, lb_brk_until(cfg, now, interval, retry_after));
        }
        if (lb_brk_cas(b, &w, nw))
            break;
    }
    *change = LB_BREAKER_SAME;
    if (nw == 0) {
        /* Closed: a clean slate, and the clock for resetting the doubling. */
        atomic_store_explicit(&b->fails_in_row, 0, memory_order_relaxed);
        lb_brk_window_clear(b);
        atomic_store_explicit(&b->breaker_closed_ms, now, memory_order_relaxed);
        lb_brk_count(b, LB_BREAKER_CLOSED);
        lb_brk_unreserve(site);
        lb_log_info("server %s of pool '%s': circuit breaker CLOSED (%u trial request%s succeeded)",
                    lb_shm_backend_name(b), site->cfg->name, cfg->half_open_requests,
                    cfg->half_open_requests == 1 ? "" : "s");
        *change = LB_BREAKER_CLOSED_AGAIN;
    } else if (LB_BRK_STATE(nw) == LB_BREAKER_OPEN) {
        atomic_store_explicit(&b->breaker_interval_ms, interval, memory_order_relaxed);
        lb_brk_count(b, LB_BREAKER_OPEN);
        lb_log_warn("server %s of pool '%s': circuit breaker OPEN again for %llu ms "
                    "(a trial request failed)", lb_shm_backend_name(b), site->cfg->name,
                    (unsigned long long)(LB_BRK_STAMP(nw) - now));
        *change = LB_BREAKER_REOPENED;
    }
    return true;
}

/* An ordinary failure: count it; open the breaker on either trigger. */
static enum lb_breaker_change lb_brk_failure(const struct lb_breaker_site *site,
                                             uint64_t retry_after_ms, uint64_t now_ms)
{
    struct lb_shm_backend *b = site->b;
    const struct lb_breaker_cfg *cfg = &site->cfg->breaker;
    uint64_t w = atomic_load_explicit(&b->breaker, memory_order_relaxed);
    if (w != 0) {
        /* A request let through before it opened: its failure is old news,
         * but a Retry-After still says how long to stay away. */
        if (retry_after_ms != 0 && LB_BRK_STATE(w) == LB_BREAKER_OPEN)
            lb_brk_extend(b, cfg, now_ms, retry_after_ms);
        return LB_BREAKER_SAME;
    }
    uint64_t n = atomic_fetch_add_explicit(&b->fails_in_row, 1, memory_order_relaxed) + 1;
    char why[96] = "";
    if (cfg->failures != 0 && n >= cfg->failures)
        snprintf(why, sizeof(why), "%llu failed requests in a row", (unsigned long long)n);
    if (cfg->ratio_ppm != 0) {
        uint32_t fails, total;
        lb_brk_window_add(b, cfg, now_ms, true, &fails, &total);
        if (why[0] == '\0' && total >= cfg->min_requests &&
            (uint64_t)fails * LB_BREAKER_RATIO_ONE >= (uint64_t)cfg->ratio_ppm * total)
            snprintf(why, sizeof(why), "%u of the last %u requests failed", fails, total);
    }
    if (why[0] == '\0')
        return LB_BREAKER_SAME;
    return lb_brk_open(site, now_ms, retry_after_ms, why);
}

enum lb_breaker_change lb_breaker_report(const struct lb_breaker_site *site, uint64_t ticket,
                                         enum lb_breaker_outcome outcome,
                                         uint64_t retry_after_ms, uint64_t now_ms)
{
    struct lb_shm_backend *b = site->b;
    const struct lb_breaker_cfg *cfg = &site->cfg->breaker;
    enum lb_breaker_change change;
    if (!cfg->enabled)
        return LB_BREAKER_SAME;
    if (ticket != 0 && lb_brk_trial(site, ticket, outcome, retry_after_ms, lb_brk_now(now_ms),
                                    &change))
        return change;
    if (outcome == LB_BREAKER_SUCCESS) {
        /* The common case, per request: read before writing, so a healthy
         * server's line stays unshared. */
        if (atomic_load_explicit(&b->fails_in_row, memory_order_relaxed) != 0)
            atomic_store_explicit(&b->fails_in_row, 0, memory_order_relaxed);
        if (cfg->ratio_ppm != 0 && atomic_load_explicit(&b->breaker, memory_order_relaxed) == 0)
            lb_brk_window_add(b, cfg, lb_brk_now(now_ms), false, NULL, NULL);
        return LB_BREAKER_SAME;
    }
    if (outcome == LB_BREAKER_ABANDONED)
        return LB_BREAKER_SAME;
    return lb_brk_failure(site, retry_after_ms, lb_brk_now(now_ms));
}

/* ---- admission ------------------------------------------------------------ */

bool lb_breaker_admit_slow(const struct lb_breaker_site *site, uint64_t now_ms,
                           uint64_t *ticket, enum lb_breaker_change *change)
{
    struct lb_shm_backend *b = site->b;
    const struct lb_breaker_cfg *cfg = &site->cfg->breaker;
    uint64_t w = atomic_load_explicit(&b->breaker, memory_order_relaxed), nw = 0;
    uint64_t now = lb_brk_now(now_ms);
    bool restart = false;
    *ticket = 0;
    if (change != NULL)
        *change = LB_BREAKER_SAME;
    if (!cfg->enabled)
        return true;
    for (;;) {
        if (w == 0)
            return true;
        uint64_t stamp = LB_BRK_STAMP(w);
        if (LB_BRK_STATE(w) == LB_BREAKER_OPEN) {
            if (now < stamp)
                return false;
            /* The interval is over: this request is the first trial, and
             * its round is named after now (never an earlier round's). */
            nw = LB_BRK_WORD(LB_BREAKER_HALF_OPEN, 1, 0, now);
        } else if (LB_BRK_ADMITTED(w) < cfg->half_open_requests) {
            nw = LB_BRK_WORD(LB_BREAKER_HALF_OPEN, LB_BRK_ADMITTED(w) + 1, LB_BRK_SUCCEEDED(w),
                             stamp);
        } else if (now >= stamp + cfg->trial_timeout_ms && now > stamp) {
            /* Every place is taken by trials nobody answers for (their
             * worker died): a new round. */
            nw = LB_BRK_WORD(LB_BREAKER_HALF_OPEN, 1, 0, now);
            restart = true;
        } else {
            return false;
        }
        if (lb_brk_cas(b, &w, nw))
            break;
        restart = false;
    }
    *ticket = LB_BRK_STAMP(nw);
    if (LB_BRK_STATE(w) == LB_BREAKER_OPEN) {
        lb_brk_count(b, LB_BREAKER_HALF_OPEN);
        lb_log_info("server %s of pool '%s': circuit breaker HALF-OPEN (%u trial request%s)",
                    lb_shm_backend_name(b), site->cfg->name, cfg->half_open_requests,
                    cfg->half_open_requests == 1 ? "" : "s");
        if (change != NULL)
            *change = LB_BREAKER_HALF_OPENED;
    } else if (restart) {
        lb_log_warn("server %s of pool '%s': circuit breaker trials unanswered for %llu ms: "
                    "new trials", lb_shm_backend_name(b), site->cfg->name,
                    (unsigned long long)(now - LB_BRK_STAMP(w)));
    }
    return true;
}

bool lb_breaker_refused_all(struct lb_shm_backend *const *servers, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct lb_shm_backend *b = servers[i];
        if (atomic_load_explicit(&b->weight, memory_order_relaxed) > 0 && lb_backend_usable(b) &&
            atomic_load_explicit(&b->breaker, memory_order_relaxed) != 0)
            return true;
    }
    return false;
}

uint64_t lb_breaker_retry_after_ms(const char *value, size_t len, uint64_t now_wall_ms)
{
    if (len == 0)
        return 0;
    if (value[0] >= '0' && value[0] <= '9') {
        uint64_t s = 0;
        for (size_t i = 0; i < len; i++) {
            if (value[i] < '0' || value[i] > '9')
                return 0;
            if (s < 100000000)          /* years: open_max caps it anyway */
                s = s * 10 + (uint64_t)(value[i] - '0');
        }
        return s * 1000;
    }
    /* An HTTP-date: "Sun, 06 Nov 1994 08:49:37 GMT" (IMF-fixdate). */
    char buf[64];
    if (len >= sizeof(buf))
        return 0;
    memcpy(buf, value, len);
    buf[len] = '\0';
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0')
        return 0;
    time_t t = timegm(&tm);
    if (t < 0 || (uint64_t)t * 1000 <= now_wall_ms)
        return 0;
    return (uint64_t)t * 1000 - now_wall_ms;
}
