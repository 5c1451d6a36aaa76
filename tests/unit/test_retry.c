/* worker/retry.c: the full-jitter backoff's bounds, the budget's
 * arithmetic, the policy's conditions, and the verdict over a pool's
 * shared state (what it reads, what it counts). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "worker/retry.h"
#include "tests/unit/suites.h"

/* splitmix64: a deterministic stream of uniform 64-bit values. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

START_TEST(test_backoff_bounds)
{
    /* [0, min(max, base * 2^n)], and the whole of it is reached. */
    static const struct { uint64_t base, max; unsigned n; uint64_t cap; } cases[] = {
        { 25, 250, 0, 25 },   { 25, 250, 1, 50 },   { 25, 250, 2, 100 },
        { 25, 250, 3, 200 },  { 25, 250, 4, 250 },  { 25, 250, 9, 250 },
        { 25, 250, 63, 250 }, { 25, 250, 64, 250 }, { 25, 250, 200, 250 },
        { 1, 1000, 5, 32 },   { 0, 250, 3, 0 },     { 3000, 3000, 0, 3000 },
        { 0, 0, 0, 0 },       { 1ull << 40, 1ull << 41, 1, 1ull << 41 },
        { 1ull << 40, UINT64_MAX, 30, UINT64_MAX },
    };
    uint64_t st = 1;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        uint64_t lo = UINT64_MAX, hi = 0;
        for (int i = 0; i < 20000; i++) {
            uint64_t d = lb_retry_backoff_ms(cases[c].base, cases[c].max, cases[c].n,
                                             next_random(&st));
            ck_assert_msg(d <= cases[c].cap, "case %zu: %llu over %llu", c,
                          (unsigned long long)d, (unsigned long long)cases[c].cap);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
        }
        /* Full jitter: from about 0 to about the cap (1 % of it either side). */
        ck_assert_msg(lo <= cases[c].cap / 100, "case %zu: lowest %llu", c, (unsigned long long)lo);
        ck_assert_msg(hi >= cases[c].cap - cases[c].cap / 100, "case %zu: highest %llu", c,
                      (unsigned long long)hi);
    }
    /* The ends of the random range map onto the ends of the interval. */
    ck_assert_uint_eq(lb_retry_backoff_ms(25, 250, 1, 0), 0);
    ck_assert_uint_eq(lb_retry_backoff_ms(25, 250, 1, 50), 50);
    ck_assert_uint_eq(lb_retry_backoff_ms(25, 250, 1, 51), 0);
}
END_TEST

START_TEST(test_backoff_spread)
{
    /* Uniform over [0, 100]: each tenth gets about a tenth. */
    uint64_t st = 7, bins[10] = { 0 };
    for (int i = 0; i < 100000; i++) {
        uint64_t d = lb_retry_backoff_ms(25, 100, 2, next_random(&st));
        bins[d < 100 ? d / 10 : 9]++;
    }
    for (int b = 0; b < 10; b++)
        ck_assert_msg(bins[b] > 8500 && bins[b] < 11500, "bin %d: %llu", b,
                      (unsigned long long)bins[b]);
}
END_TEST

START_TEST(test_budget_arithmetic)
{
    /* 20 % of 100 requests: up to 20 retries under way, the 21st refused. */
    ck_assert(lb_retry_budget_allows(19, 100, 20, 3));
    ck_assert(!lb_retry_budget_allows(20, 100, 20, 3));
    /* Rounded down: 20 % of 9 is 1.8, so one retry, not two. */
    ck_assert(lb_retry_budget_allows(0, 9, 20, 0));
    ck_assert(!lb_retry_budget_allows(1, 9, 20, 0));
    /* min_retries when the share is smaller. */
    ck_assert(lb_retry_budget_allows(2, 1, 20, 3));
    ck_assert(!lb_retry_budget_allows(3, 1, 20, 3));
    ck_assert(lb_retry_budget_allows(0, 0, 20, 1));
    ck_assert(!lb_retry_budget_allows(0, 0, 20, 0));
    /* 0 %: min_retries alone; 100 %: as many retries as requests. */
    ck_assert(!lb_retry_budget_allows(0, 1000, 0, 0));
    ck_assert(lb_retry_budget_allows(4, 1000, 0, 5));
    ck_assert(!lb_retry_budget_allows(5, 1000, 0, 5));
    ck_assert(lb_retry_budget_allows(99, 100, 100, 0));
    ck_assert(!lb_retry_budget_allows(100, 100, 100, 0));
    /* No overflow near the top. */
    ck_assert(lb_retry_budget_allows(1, UINT64_MAX / 200, 100, 0));
}
END_TEST

static struct lb_retry_cfg policy(void)
{
    struct lb_retry_cfg c = { .enabled = true, .attempts = 3,
                              .on = LB_RETRY_ON_CONNECT | LB_RETRY_ON_RESET,
                              .on_status = { 1ull << 3, 0 },        /* 503 */
                              .backoff_ms = 25, .backoff_max_ms = 250,
                              .budget_percent = 20, .min_retries = 3 };
    return c;
}

START_TEST(test_wanted)
{
    struct lb_retry_cfg c = policy();
    struct lb_retry_try t = { .reason = LB_RETRY_CONNECT, .replayable = true };
    ck_assert(lb_retry_wanted(&c, &t));
    t.retries = 1;
    ck_assert(lb_retry_wanted(&c, &t));
    t.retries = 2;                      /* a third retry would be a fourth try */
    ck_assert(!lb_retry_wanted(&c, &t));
    t.retries = 0;
    t.replayable = false;
    ck_assert(!lb_retry_wanted(&c, &t));
    t.replayable = true;
    t.answered = true;
    ck_assert(!lb_retry_wanted(&c, &t));
    t.answered = false;
    t.reason = LB_RETRY_TIMEOUT;        /* not in `on` */
    ck_assert(!lb_retry_wanted(&c, &t));
    t.reason = LB_RETRY_503;
    t.status = 503;
    ck_assert(lb_retry_wanted(&c, &t));
    t.reason = LB_RETRY_502;
    t.status = 502;
    ck_assert(!lb_retry_wanted(&c, &t));
    t.reason = LB_RETRY_5XX;
    t.status = 599;
    ck_assert(!lb_retry_wanted(&c, &t));
    c.on_status[1] = 1ull << (99 - 64);
    ck_assert(lb_retry_wanted(&c, &t));
    c.enabled = false;
    ck_assert(!lb_retry_wanted(&c, &t));
    ck_assert_int_eq(lb_retry_reason_of(502), LB_RETRY_502);
    ck_assert_int_eq(lb_retry_reason_of(503), LB_RETRY_503);
    ck_assert_int_eq(lb_retry_reason_of(504), LB_RETRY_504);
    ck_assert_int_eq(lb_retry_reason_of(500), LB_RETRY_5XX);
}
END_TEST

START_TEST(test_decide_budget)
{
    /* Three servers' shared state: 10 requests under way (8 tries, 2 in a
     * backoff), 2 retries under way (min_retries 3, 20 %: 2 allowed... and
     * a third, by min_retries). */
    struct lb_shm_backend b[3];
    struct lb_shm_pool pool;
    memset(b, 0, sizeof(b));
    memset(&pool, 0, sizeof(pool));
    struct lb_shm_backend *servers[3] = { &b[0], &b[1], &b[2] };
    struct lb_retry_cfg c = policy();
    const struct lb_retry_site site = { servers, 3, &pool, &c };
    atomic_store(&b[0].inflight, 5);
    atomic_store(&b[1].inflight, 3);
    atomic_store(&b[2].retries_waiting, 2);
    atomic_store(&b[2].retries, 2);
    struct lb_retry_try t = { .reason = LB_RETRY_503, .status = 503, .replayable = true };
    uint64_t delay = 999;
    ck_assert_int_eq(lb_retry_decide(&site, &t, 40, &delay), LB_RETRY_AFTER);
    ck_assert_uint_eq(delay, 14);           /* 40 mod (25 + 1) */
    ck_assert_uint_eq(atomic_load(&pool.retries[LB_RETRY_503]), 1);

    /* Three under way: min_retries reached, 20 % of 10 is 2: refused, counted. */
    atomic_store(&b[2].retries, 3);
    ck_assert_int_eq(lb_retry_decide(&site, &t, 40, &delay), LB_RETRY_NO_BUDGET);
    ck_assert_uint_eq(atomic_load(&pool.retry_budget_exhausted), 1);
    /* ... unless one of the three is this request's own, given back. */
    t.holding = true;
    t.retries = 1;
    ck_assert_int_eq(lb_retry_decide(&site, &t, 40, &delay), LB_RETRY_AFTER);
    ck_assert_uint_eq(delay, 40);           /* second retry: [0, 50] */
    /* Twenty requests under way more: 20 % of 30 is 6. */
    t.holding = false;
    atomic_store(&b[1].inflight, 23);
    atomic_store(&b[2].retries, 5);
    ck_assert_int_eq(lb_retry_decide(&site, &t, 0, &delay), LB_RETRY_AFTER);
    atomic_store(&b[2].retries, 6);
    ck_assert_int_eq(lb_retry_decide(&site, &t, 0, &delay), LB_RETRY_NO_BUDGET);
    ck_assert_uint_eq(atomic_load(&pool.retry_budget_exhausted), 2);
    ck_assert_uint_eq(atomic_load(&pool.retries[LB_RETRY_503]), 3);

    /* Not wanted: neither counted. */
    t.answered = true;
    ck_assert_int_eq(lb_retry_decide(&site, &t, 0, &delay), LB_RETRY_GIVE_UP);
    ck_assert_uint_eq(atomic_load(&pool.retry_budget_exhausted), 2);
    ck_assert_uint_eq(atomic_load(&pool.retries[LB_RETRY_503]), 3);

    /* Gauges a moment off (negative): read as 0, the request itself counts. */
    t.answered = false;
    t.retries = 0;
    atomic_store(&b[0].inflight, -4);
    atomic_store(&b[1].inflight, 0);
    atomic_store(&b[2].retries_waiting, 0);
    atomic_store(&b[2].retries, -1);
    c.min_retries = 0;
    c.budget_percent = 100;
    ck_assert_int_eq(lb_retry_decide(&site, &t, 0, &delay), LB_RETRY_AFTER);
}
END_TEST

Suite *retry_suite(void)
{
    Suite *s = suite_create("retry");
    TCase *tc = tcase_create("retry");
    tcase_add_test(tc, test_backoff_bounds);
    tcase_add_test(tc, test_backoff_spread);
    tcase_add_test(tc, test_budget_arithmetic);
    tcase_add_test(tc, test_wanted);
    tcase_add_test(tc, test_decide_budget);
    suite_add_tcase(s, tc);
    return s;
}
