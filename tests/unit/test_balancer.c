/* worker/balancer.c: the smooth weighted round-robin cycle and the
 * round_robin / weighted_round_robin balancers on hand-built pools. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shared/shm.h"
#include "worker/balancer.h"
#include "tests/unit/suites.h"

/* Deterministic pseudo-random numbers (xorshift), so failures reproduce. */
static uint32_t rng_state = 2463534242u;

static uint32_t rng(void)
{
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}

static unsigned gcd(unsigned a, unsigned b)
{
    while (b != 0) {
        unsigned t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static void expect_cycle(const unsigned *w, size_t n, const uint16_t *want, size_t want_len)
{
    uint16_t out[64];
    size_t len = lb_swrr_cycle(w, n, out, LB_ARRAY_SIZE(out));
    ck_assert_uint_eq(len, want_len);
    for (size_t i = 0; i < want_len; i++)
        ck_assert_msg(out[i] == want[i], "position %zu: got %u, want %u", i, out[i], want[i]);
}

/* ---- lb_swrr_cycle ---------------------------------------------------------- */

START_TEST(test_swrr_nginx_5_1_1)
{
    /* nginx's documented sequence for 5,1,1: a a b a c a a. */
    static const unsigned w[] = { 5, 1, 1 };
    static const uint16_t want[] = { 0, 0, 1, 0, 2, 0, 0 };
    expect_cycle(w, 3, want, 7);
}
END_TEST

START_TEST(test_swrr_equal)
{
    static const unsigned w[] = { 1, 1, 1 };
    static const uint16_t want[] = { 0, 1, 2 };
    expect_cycle(w, 3, want, 3);

    static const unsigned one[] = { 7 };
    static const uint16_t want_one[] = { 0 };
    expect_cycle(one, 1, want_one, 1);
}
END_TEST

START_TEST(test_swrr_gcd)
{
    static const unsigned w2[] = { 2, 2 };
    static const uint16_t want2[] = { 0, 1 };
    expect_cycle(w2, 2, want2, 2);

    static const unsigned w3[] = { 1000, 1000, 1000 };
    static const uint16_t want3[] = { 0, 1, 2 };
    expect_cycle(w3, 3, want3, 3);

    /* 4,2 reduces to 2,1. */
    static const unsigned w4[] = { 4, 2 };
    static const uint16_t want4[] = { 0, 1, 0 };
    expect_cycle(w4, 2, want4, 3);

    /* 10,5,5 reduces to 2,1,1. */
    static const unsigned w5[] = { 10, 5, 5 };
    static const uint16_t want5[] = { 0, 1, 2, 0 };
    expect_cycle(w5, 3, want5, 4);
}
END_TEST

START_TEST(test_swrr_zero_weights)
{
    /* Zero weights are excluded and do not spoil the gcd. */
    static const unsigned w[] = { 0, 3, 0, 3 };
    static const uint16_t want[] = { 1, 3 };
    expect_cycle(w, 4, want, 2);

    static const unsigned w2[] = { 0, 5, 1, 1 };
    static const uint16_t want2[] = { 1, 1, 2, 1, 3, 1, 1 };
    expect_cycle(w2, 4, want2, 7);

    static const unsigned w3[] = { 2, 0 };
    static const uint16_t want3[] = { 0 };
    expect_cycle(w3, 2, want3, 1);
}
END_TEST

START_TEST(test_swrr_all_zero)
{
    uint16_t out[4] = { 99, 99, 99, 99 };
    static const unsigned z[] = { 0, 0, 0 };
    ck_assert_uint_eq(lb_swrr_cycle(z, 3, out, 4), 0);
    ck_assert_uint_eq(lb_swrr_cycle(z, 0, out, 4), 0);
    ck_assert_uint_eq(out[0], 99);
}
END_TEST

START_TEST(test_swrr_proportions_random)
{
    enum { MAXN = 16, CAP = MAXN * 100 };
    static uint16_t out[CAP];
    for (int round = 0; round < 300; round++) {
        size_t n = 1 + rng() % MAXN;
        unsigned w[MAXN];
        unsigned g = 0, total = 0;
        for (size_t i = 0; i < n; i++) {
            w[i] = rng() % 4 == 0 ? 0 : rng() % 100;
            g = gcd(g, w[i]);
        }
        for (size_t i = 0; i < n; i++)
            total += g ? w[i] / g : 0;
        size_t len = lb_swrr_cycle(w, n, out, CAP);
        ck_assert_uint_eq(len, total);
        if (g == 0)
            continue;           /* every weight 0: an empty cycle */
        unsigned count[MAXN] = { 0 };
        for (size_t k = 0; k < len; k++) {
            ck_assert_uint_lt(out[k], n);
            count[out[k]]++;
        }
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(count[i] == w[i] / g, "round %d server %zu: %u picks for weight %u (gcd %u)",
                          round, i, count[i], w[i], g);
    }
}
END_TEST

START_TEST(test_swrr_smoothness)
{
    /* Equal weights: every server once per cycle, none twice in a row,
     * not even across the wrap to the next cycle. */
    enum { N = 50 };
    unsigned w[N];
    uint16_t out[N];
    for (size_t n = 1; n <= N; n++) {
        for (size_t i = 0; i < n; i++)
            w[i] = 3;
        ck_assert_uint_eq(lb_swrr_cycle(w, n, out, N), n);
        bool seen[N] = { false };
        for (size_t k = 0; k < n; k++) {
            ck_assert(!seen[out[k]]);
            seen[out[k]] = true;
            if (n > 1)
                ck_assert_uint_ne(out[k], out[(k + 1) % n]);
        }
    }

    /* The sequence is nginx's: its literal algorithm (no gcd reduction,
     * which scales every current weight alike and so changes nothing) run
     * over two cycles agrees with the computed cycle repeated. */
    static uint16_t cyc[8 * 50];
    for (int round = 0; round < 300; round++) {
        size_t n = 1 + rng() % 8;
        unsigned ww[8], raw_total = 0;
        for (size_t i = 0; i < n; i++) {
            ww[i] = rng() % 6 == 0 ? 0 : 1 + rng() % 50;
            raw_total += ww[i];
        }
        size_t len = lb_swrr_cycle(ww, n, cyc, LB_ARRAY_SIZE(cyc));
        if (raw_total == 0) {
            ck_assert_uint_eq(len, 0);
            continue;
        }
        ck_assert_uint_ne(len, (size_t)-1);
        long long cur[8] = { 0 };
        for (size_t k = 0; k < 2 * (size_t)raw_total; k++) {
            int best = -1;
            for (size_t i = 0; i < n; i++) {
                if (ww[i] == 0)
                    continue;
                cur[i] += ww[i];
                if (best < 0 || cur[i] > cur[best])
                    best = (int)i;
            }
            cur[best] -= raw_total;
            ck_assert_msg(cyc[k % len] == best, "round %d step %zu: cycle says %u, nginx says %d",
                          round, k, cyc[k % len], best);
        }
    }
}
END_TEST

START_TEST(test_swrr_capacity)
{
    static const unsigned w[] = { 5, 1, 1 };
    uint16_t out[8];
    for (size_t i = 0; i < LB_ARRAY_SIZE(out); i++)
        out[i] = 0xbeef;
    ck_assert_uint_eq(lb_swrr_cycle(w, 3, out, 6), (size_t)-1);
    ck_assert_uint_eq(lb_swrr_cycle(w, 3, out, 0), (size_t)-1);
    /* Nothing was written past the capacity. */
    ck_assert_uint_eq(out[6], 0xbeef);
    ck_assert_uint_eq(lb_swrr_cycle(w, 3, out, 7), 7);
    ck_assert_uint_eq(out[7], 0xbeef);

    /* The capacity is compared with the gcd-reduced length. */
    static const unsigned big[] = { 1000, 1000 };
    ck_assert_uint_eq(lb_swrr_cycle(big, 2, out, 2), 2);
    static const unsigned odd[] = { 1000, 999 };
    ck_assert_uint_eq(lb_swrr_cycle(odd, 2, out, 8), (size_t)-1);
}
END_TEST

/* ---- lb_balancer on hand-built pools ----------------------------------------- */

/* A pool and the shared state of its servers (as the master publishes it:
 * the configured weight, UP, not draining). */
struct test_pool {
    struct lb_server_cfg servers[32];
    struct lb_shm_backend shm[32];
    struct lb_shm_backend *backends[32];
    struct lb_pool_cfg pool;
};

static void make_pool(struct test_pool *tp, enum lb_strategy strategy, const unsigned *w, size_t n)
{
    memset(tp, 0, sizeof(*tp));
    ck_assert_uint_le(n, LB_ARRAY_SIZE(tp->servers));
    for (size_t i = 0; i < n; i++) {
        tp->servers[i].weight = w[i];
        snprintf(tp->servers[i].address, sizeof(tp->servers[i].address), "10.0.0.%zu:80", i + 1);
        atomic_store(&tp->shm[i].weight, w[i]);
        atomic_store(&tp->shm[i].health, LB_HEALTH_UP);
        tp->backends[i] = &tp->shm[i];
    }
    snprintf(tp->pool.name, sizeof(tp->pool.name), "test");
    tp->pool.strategy = strategy;
    tp->pool.servers = tp->servers;
    tp->pool.nservers = n;
}

static int pick(struct lb_balancer *b)
{
    static const struct lb_pick_ctx ctx = { .now_ms = 1000, .trials = true };
    return lb_balancer_pick(b, &ctx);
}

START_TEST(test_rr_ignores_weights)
{
    static const unsigned w[] = { 5, 0, 2, 1 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_ROUND_ROBIN, w, 4);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    ck_assert_ptr_eq(b.cursor, &b.private_cursor);
    /* Equal shares among 0, 2, 3; weight 0 still excludes server 1. */
    static const int want[] = { 0, 2, 3 };
    for (int k = 0; k < 30; k++)
        ck_assert_int_eq(pick(&b), want[k % 3]);
    lb_balancer_destroy(&b);
}
END_TEST

START_TEST(test_wrr_follows_weights)
{
    static const unsigned w[] = { 5, 1, 1 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, w, 3);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    static const int want[] = { 0, 0, 1, 0, 2, 0, 0 };
    for (int k = 0; k < 70; k++)
        ck_assert_int_eq(pick(&b), want[k % 7]);
    lb_balancer_destroy(&b);

    /* A weight-0 server is never picked. */
    static const unsigned w0[] = { 3, 0, 1 };
    make_pool(&tp, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, w0, 3);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    for (int k = 0; k < 100; k++)
        ck_assert_int_ne(pick(&b), 1);
    lb_balancer_destroy(&b);
}
END_TEST

START_TEST(test_all_zero_picks_none)
{
    static const unsigned w[] = { 0, 0, 0 };
    for (int s = 0; s < 2; s++) {
        struct test_pool tp;
        struct lb_balancer b;
        make_pool(&tp, s ? LB_STRATEGY_WEIGHTED_ROUND_ROBIN : LB_STRATEGY_ROUND_ROBIN, w, 3);
        ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
        for (int k = 0; k < 5; k++)
            ck_assert_int_eq(pick(&b), -1);
        lb_balancer_destroy(&b);

        /* No servers at all. */
        make_pool(&tp, s ? LB_STRATEGY_WEIGHTED_ROUND_ROBIN : LB_STRATEGY_ROUND_ROBIN, w, 0);
        ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
        ck_assert_int_eq(pick(&b), -1);
        lb_balancer_destroy(&b);
    }
}
END_TEST

/* Over N picks the split is exact: N / T full cycles plus the head of one. */
static void check_split(enum lb_strategy strategy, const unsigned *w, size_t n, unsigned picks)
{
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, strategy, w, n);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);

    unsigned eff[32], g = 0, total = 0;
    for (size_t i = 0; i < n; i++) {
        eff[i] = strategy == LB_STRATEGY_ROUND_ROBIN ? (w[i] > 0) : w[i];
        g = gcd(g, eff[i]);
    }
    for (size_t i = 0; i < n; i++)
        total += eff[i] / g;
    uint16_t cyc[32 * 1000];
    size_t len = lb_swrr_cycle(eff, n, cyc, LB_ARRAY_SIZE(cyc));
    ck_assert_uint_eq(len, total);

    unsigned want[32] = { 0 }, got[32] = { 0 };
    for (size_t i = 0; i < n; i++)
        want[i] = (picks / total) * (eff[i] / g);
    for (size_t k = 0; k < picks % total; k++)
        want[cyc[k]]++;
    for (unsigned k = 0; k < picks; k++) {
        int s = pick(&b);
        ck_assert_int_ge(s, 0);
        ck_assert_int_lt(s, (int)n);
        got[s]++;
    }
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "server %zu (weight %u): %u picks, want %u",
                      i, w[i], got[i], want[i]);
    lb_balancer_destroy(&b);
}

START_TEST(test_split_exact)
{
    static const unsigned w1[] = { 5, 1, 1 };
    check_split(LB_STRATEGY_WEIGHTED_ROUND_ROBIN, w1, 3, 10000);
    /* 10000 = 1428 * 7 + 4, and the cycle starts 0 0 1 0. */
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, w1, 3);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    unsigned got[3] = { 0 };
    for (int k = 0; k < 10000; k++)
        got[pick(&b)]++;
    ck_assert_uint_eq(got[0], 1428 * 5 + 3);
    ck_assert_uint_eq(got[1], 1428 + 1);
    ck_assert_uint_eq(got[2], 1428);
    lb_balancer_destroy(&b);

    check_split(LB_STRATEGY_ROUND_ROBIN, w1, 3, 10000);
    for (int round = 0; round < 50; round++) {
        size_t n = 1 + rng() % 32;
        unsigned w[32];
        bool any = false;
        for (size_t i = 0; i < n; i++) {
            w[i] = rng() % 5 == 0 ? 0 : rng() % (LB_WEIGHT_MAX + 1);
            any |= w[i] != 0;
        }
        if (!any)
            w[0] = 1;
        check_split(round % 2 ? LB_STRATEGY_ROUND_ROBIN : LB_STRATEGY_WEIGHTED_ROUND_ROBIN,
                    w, n, 10000);
    }
}
END_TEST

START_TEST(test_shared_cursor)
{
    /* Two balancers (two workers) on one cursor walk one global sequence. */
    static const unsigned w[] = { 5, 1, 1 };
    static const int want[] = { 0, 0, 1, 0, 2, 0, 0 };
    struct test_pool tp;
    make_pool(&tp, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, w, 3);
    lb_counter_t cursor = 0;
    struct lb_balancer a, b;
    ck_assert_int_eq(lb_balancer_init(&a, &tp.pool, tp.backends, &cursor), 0);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, &cursor), 0);
    ck_assert_ptr_eq(a.cursor, &cursor);
    for (int k = 0; k < 70; k++) {
        struct lb_balancer *x = (rng() & 1) ? &a : &b;
        ck_assert_int_eq(pick(x), want[k % 7]);
    }
    ck_assert_uint_eq(atomic_load(&cursor), 70);
    lb_balancer_destroy(&a);
    lb_balancer_destroy(&b);
}
END_TEST

START_TEST(test_cursor_wraps)
{
    /* A cursor near 2^64 keeps the order exact across the wrap only when the
     * cycle length divides 2^64; it must at least stay in range. */
    static const unsigned w[] = { 5, 1, 1 };
    struct test_pool tp;
    make_pool(&tp, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, w, 3);
    lb_counter_t cursor = UINT64_MAX - 3;
    struct lb_balancer b;
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, &cursor), 0);
    for (int k = 0; k < 10; k++) {
        int s = pick(&b);
        ck_assert_int_ge(s, 0);
        ck_assert_int_lt(s, 3);
    }
    lb_balancer_destroy(&b);
}
END_TEST

/* ---- shared state: down, draining, runtime weight ------------------------------ */

START_TEST(test_rr_skips_unusable)
{
    static const unsigned w[] = { 5, 1, 1 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, w, 3);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);

    /* 0 down: its turns are skipped, 1 and 2 keep their equal shares. */
    atomic_store(&tp.shm[0].health, LB_HEALTH_DOWN);
    for (int k = 0; k < 20; k++)
        ck_assert_int_eq(pick(&b), 1 + k % 2);
    /* 1 draining as well: only 2. */
    atomic_store(&tp.shm[1].admin_state, LB_BACKEND_DRAIN);
    for (int k = 0; k < 10; k++)
        ck_assert_int_eq(pick(&b), 2);
    /* 2 weighted to 0 at run time: nobody. */
    atomic_store(&tp.shm[2].weight, 0);
    ck_assert_int_eq(pick(&b), -1);
    /* Back to normal: the cycle's proportions over whole cycles. */
    atomic_store(&tp.shm[0].health, LB_HEALTH_UP);
    atomic_store(&tp.shm[1].admin_state, LB_BACKEND_READY);
    atomic_store(&tp.shm[2].weight, 1);
    unsigned got[3] = { 0 };
    for (int k = 0; k < 700; k++)
        got[pick(&b)]++;
    ck_assert_uint_eq(got[0], 500);
    ck_assert_uint_eq(got[1], 100);
    ck_assert_uint_eq(got[2], 100);

    /* Circuit breaker open: skipped until its interval is over, then a
     * candidate for a trial (a pick takes nothing: admission does). */
    tp.pool.breaker = (struct lb_breaker_cfg){ .enabled = true, .failures = 1, .open_ms = 4000,
                                               .open_max_ms = 4000, .half_open_requests = 1,
                                               .max_ejection_percent = 100,
                                               .trial_timeout_ms = 1000 };
    atomic_store(&tp.shm[1].breaker, LB_BRK_WORD(LB_BREAKER_OPEN, 0, 0, 5000));  /* pick(): now = 1000 */
    for (int k = 0; k < 70; k++)
        ck_assert_int_ne(pick(&b), 1);
    /* A retiring worker (no trials) skips a half-open one too. */
    atomic_store(&tp.shm[1].breaker, LB_BRK_WORD(LB_BREAKER_OPEN, 0, 0, 1000));
    static const struct lb_pick_ctx no_trials = { .now_ms = 1000, .trials = false };
    for (int k = 0; k < 70; k++)
        ck_assert_int_ne(lb_balancer_pick(&b, &no_trials), 1);
    /* Half-open with its one trial place taken: skipped. */
    atomic_store(&tp.shm[1].breaker, LB_BRK_WORD(LB_BREAKER_HALF_OPEN, 1, 0, 900));
    for (int k = 0; k < 70; k++)
        ck_assert_int_ne(pick(&b), 1);
    atomic_store(&tp.shm[1].breaker, LB_BRK_WORD(LB_BREAKER_OPEN, 0, 0, 1000));
    memset(got, 0, sizeof(got));
    for (int k = 0; k < 70; k++)
        got[pick(&b)]++;
    ck_assert_uint_eq(got[1], 10);
    lb_balancer_destroy(&b);
}
END_TEST

START_TEST(test_rr_proportions_with_one_down)
{
    /* Skipping takes the next ticket: the others keep their ratio exactly. */
    static const unsigned w[] = { 3, 2, 1 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, w, 3);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    atomic_store(&tp.shm[2].health, LB_HEALTH_DOWN);
    unsigned got[3] = { 0 };
    for (int k = 0; k < 5000; k++)
        got[pick(&b)]++;
    ck_assert_uint_eq(got[0], 3000);
    ck_assert_uint_eq(got[1], 2000);
    ck_assert_uint_eq(got[2], 0);
    lb_balancer_destroy(&b);
}
END_TEST

/* ---- the other strategies --------------------------------------------------------- */

START_TEST(test_least_connections)
{
    static const unsigned w[] = { 1, 1, 1 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_LEAST_CONNECTIONS, w, 3);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);

    /* Ties go round the pool. */
    unsigned got[3] = { 0 };
    for (int k = 0; k < 30; k++)
        got[pick(&b)]++;
    ck_assert_uint_eq(got[0], 10);
    ck_assert_uint_eq(got[1], 10);
    ck_assert_uint_eq(got[2], 10);

    atomic_store(&tp.shm[0].inflight, 5);
    atomic_store(&tp.shm[1].inflight, 2);
    atomic_store(&tp.shm[2].inflight, 9);
    for (int k = 0; k < 10; k++)
        ck_assert_int_eq(pick(&b), 1);
    /* The least loaded is skipped when down or draining. */
    atomic_store(&tp.shm[1].health, LB_HEALTH_DOWN);
    ck_assert_int_eq(pick(&b), 0);
    atomic_store(&tp.shm[0].admin_state, LB_BACKEND_DRAIN);
    ck_assert_int_eq(pick(&b), 2);
    atomic_store(&tp.shm[2].weight, 0);
    ck_assert_int_eq(pick(&b), -1);
    /* A negative gauge (a race at reap) counts as zero. */
    atomic_store(&tp.shm[1].health, LB_HEALTH_UP);
    atomic_store(&tp.shm[1].inflight, -3);
    ck_assert_int_eq(pick(&b), 1);
    lb_balancer_destroy(&b);

    /* Per unit of weight: 3 in flight on weight 3 is lighter than 1 on 1. */
    static const unsigned w2[] = { 1, 3 };
    make_pool(&tp, LB_STRATEGY_LEAST_CONNECTIONS, w2, 2);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    atomic_store(&tp.shm[0].inflight, 1);
    atomic_store(&tp.shm[1].inflight, 3);
    for (int k = 0; k < 4; k++)
        ck_assert_int_eq(pick(&b), 1);
    lb_balancer_destroy(&b);
}
END_TEST

START_TEST(test_random)
{
    static const unsigned w[] = { 1, 0, 3 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_RANDOM, w, 3);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    unsigned got[3] = { 0 };
    for (int k = 0; k < 40000; k++) {
        int s = pick(&b);
        ck_assert(s == 0 || s == 2);
        got[s]++;
    }
    /* Expected 10000 / 30000; the bounds are > 10 standard deviations wide. */
    ck_assert_uint_gt(got[0], 9000);
    ck_assert_uint_lt(got[0], 11000);
    atomic_store(&tp.shm[2].health, LB_HEALTH_DOWN);
    for (int k = 0; k < 100; k++)
        ck_assert_int_eq(pick(&b), 0);
    atomic_store(&tp.shm[0].admin_state, LB_BACKEND_DRAIN);
    ck_assert_int_eq(pick(&b), -1);
    lb_balancer_destroy(&b);
}
END_TEST

START_TEST(test_power_of_two)
{
    static const unsigned w[] = { 1, 1 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_POWER_OF_TWO, w, 2);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    atomic_store(&tp.shm[0].inflight, 100);
    unsigned got[2] = { 0 };
    for (int k = 0; k < 1000; k++)
        got[pick(&b)]++;
    /* Whenever both are drawn the idle one wins (about 97% of picks). */
    ck_assert_uint_gt(got[1], 900);
    atomic_store(&tp.shm[1].health, LB_HEALTH_DOWN);
    for (int k = 0; k < 20; k++)
        ck_assert_int_eq(pick(&b), 0);
    atomic_store(&tp.shm[0].health, LB_HEALTH_DOWN);
    ck_assert_int_eq(pick(&b), -1);
    lb_balancer_destroy(&b);
}
END_TEST

START_TEST(test_least_time)
{
    static const unsigned w[] = { 1, 1 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_LEAST_TIME, w, 2);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    lb_backend_observe(&tp.shm[0], 50000, 1000000);
    lb_backend_observe(&tp.shm[1], 2000, 1000000);
    unsigned got[2] = { 0 };
    for (int k = 0; k < 1000; k++)
        got[pick(&b)]++;
    ck_assert_uint_gt(got[1], 900);
    lb_balancer_destroy(&b);

    /* Peak EWMA: a slower sample is taken at once, a faster one decays in. */
    struct lb_shm_backend sb;
    memset(&sb, 0, sizeof(sb));
    lb_backend_observe(&sb, 1000, 10000000);
    ck_assert_uint_eq(atomic_load(&sb.ewma_us), 1000);
    lb_backend_observe(&sb, 5000, 10000000);
    ck_assert_uint_eq(atomic_load(&sb.ewma_us), 5000);
    lb_backend_observe(&sb, 100, 20000000);      /* 10 s later: weight e^-1 */
    uint64_t e = atomic_load(&sb.ewma_us);
    ck_assert_uint_gt(e, 1900);                    /* 5000/e + 100(1-1/e) = 1902 */
    ck_assert_uint_lt(e, 1905);
    lb_backend_observe(&sb, 100, 20000000);      /* no time passed: unchanged */
    ck_assert_uint_eq(atomic_load(&sb.ewma_us), e);
}
END_TEST

/* Which server (by address) each of NKEYS keys lands on. */
#define NKEYS 2000
static void hash_map(struct test_pool *tp, const char **out)
{
    struct lb_balancer b;
    ck_assert_int_eq(lb_balancer_init(&b, &tp->pool, tp->backends, NULL), 0);
    for (unsigned k = 0; k < NKEYS; k++) {
        char key[32];
        int n = snprintf(key, sizeof(key), "client-%u", k);
        struct lb_pick_ctx ctx = { .now_ms = 1000, .key = lb_balancer_key(key, (size_t)n) };
        int s = lb_balancer_pick(&b, &ctx);
        out[k] = s < 0 ? NULL : tp->servers[s].address;
    }
    lb_balancer_destroy(&b);
}

START_TEST(test_hash_consistent)
{
    static const char *before[NKEYS], *after[NKEYS], *again[NKEYS];
    static const unsigned w[] = { 1, 1, 2, 1, 1 };
    static struct test_pool tp;
    make_pool(&tp, LB_STRATEGY_HASH, w, 5);
    hash_map(&tp, before);
    hash_map(&tp, again);
    unsigned per[5] = { 0 };
    for (unsigned k = 0; k < NKEYS; k++) {
        ck_assert_ptr_nonnull(before[k]);
        ck_assert_str_eq(before[k], again[k]);      /* deterministic */
        per[before[k][7] - '1']++;                  /* "10.0.0.N:80" */
    }
    /* Roughly by weight: 1/6, 1/6, 2/6, 1/6, 1/6. */
    for (int i = 0; i < 5; i++) {
        double share = (double)per[i] / NKEYS, want = w[i] / 6.0;
        ck_assert_msg(share > want * 0.6 && share < want * 1.4, "server %d: %.3f of keys, want %.3f",
                      i, share, want);
    }

    /* A server down: only its keys move. */
    atomic_store(&tp.shm[3].health, LB_HEALTH_DOWN);
    hash_map(&tp, after);
    for (unsigned k = 0; k < NKEYS; k++) {
        ck_assert_ptr_nonnull(after[k]);
        ck_assert_str_ne(after[k], "10.0.0.4:80");
        if (strcmp(before[k], "10.0.0.4:80") != 0)
            ck_assert_str_eq(after[k], before[k]);
    }
    atomic_store(&tp.shm[3].health, LB_HEALTH_UP);

    /* Server removed from the configuration, the others reordered: keys
     * follow addresses, not positions; only the removed server's move. */
    static struct test_pool tp2;
    static const unsigned w2[] = { 1, 1, 1, 2 };
    make_pool(&tp2, LB_STRATEGY_HASH, w2, 4);
    static const char *const order[] = { "10.0.0.5:80", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80" };
    for (int i = 0; i < 4; i++)
        snprintf(tp2.servers[i].address, sizeof(tp2.servers[i].address), "%s", order[i]);
    hash_map(&tp2, after);
    for (unsigned k = 0; k < NKEYS; k++) {
        ck_assert_ptr_nonnull(after[k]);
        if (strcmp(before[k], "10.0.0.4:80") != 0)
            ck_assert_msg(strcmp(after[k], before[k]) == 0, "key %u moved from %s to %s",
                          k, before[k], after[k]);
    }

    /* All down: nobody. */
    for (int i = 0; i < 5; i++)
        atomic_store(&tp.shm[i].admin_state, LB_BACKEND_DRAIN);
    hash_map(&tp, after);
    ck_assert_ptr_null(after[0]);
}
END_TEST

/* ---- max_requests ---------------------------------------------------------------- */

/* A key's ring position, from a number. */
static uint64_t key_of(uint64_t n)
{
    return lb_balancer_key(&n, sizeof(n));
}

START_TEST(test_max_requests_skip)
{
    static const unsigned w[] = { 1, 1 };
    static const enum lb_strategy all[] = {
        LB_STRATEGY_ROUND_ROBIN, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, LB_STRATEGY_LEAST_CONNECTIONS,
        LB_STRATEGY_POWER_OF_TWO, LB_STRATEGY_RANDOM, LB_STRATEGY_HASH, LB_STRATEGY_LEAST_TIME,
    };
    for (size_t k = 0; k < LB_ARRAY_SIZE(all); k++) {
        struct test_pool tp;
        struct lb_balancer b;
        make_pool(&tp, all[k], w, 2);
        ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
        struct lb_pick_ctx ctx = { .now_ms = 1000, .key = 12345 };
        /* Server 0 at its max: every strategy skips it, like a full one. */
        atomic_store(&tp.shm[0].max_requests, 2);
        atomic_store(&tp.shm[0].inflight, 2);
        for (int i = 0; i < 50; i++)
            ck_assert_int_eq(lb_balancer_pick(&b, &ctx), 1);
        /* What a retry looks at: full is not usable, but up (worth a wait). */
        ck_assert(!lb_balancer_usable(&b, 0, &ctx));
        ck_assert(lb_balancer_up(&b, 0, &ctx));
        ck_assert(lb_balancer_usable(&b, 1, &ctx));
        /* Both full: no pick, and the pool is full (the request may wait). */
        atomic_store(&tp.shm[1].max_requests, 1);
        atomic_store(&tp.shm[1].inflight, 1);
        ck_assert_int_eq(lb_balancer_pick(&b, &ctx), -1);
        ck_assert(lb_balancer_full(&b, &ctx));
        /* One full, the other down: still full (worth waiting for). */
        atomic_store(&tp.shm[1].health, LB_HEALTH_DOWN);
        ck_assert_int_eq(lb_balancer_pick(&b, &ctx), -1);
        ck_assert(lb_balancer_full(&b, &ctx));
        ck_assert(!lb_balancer_up(&b, 1, &ctx));
        /* The full one down too, or out of rotation: nothing to wait for. */
        atomic_store(&tp.shm[0].weight, 0);
        ck_assert(!lb_balancer_full(&b, &ctx));
        atomic_store(&tp.shm[0].weight, 1);
        /* A place frees up: taken again. */
        atomic_store(&tp.shm[0].inflight, 1);
        ck_assert_int_eq(lb_balancer_pick(&b, &ctx), 0);
        ck_assert(!lb_balancer_full(&b, &ctx));
        lb_balancer_destroy(&b);
    }
}
END_TEST

START_TEST(test_backend_take)
{
    struct lb_shm_backend sb;
    memset(&sb, 0, sizeof(sb));
    /* No limit: always, counted. */
    for (int i = 0; i < 5; i++)
        ck_assert(lb_backend_take(&sb));
    ck_assert_int_eq(atomic_load(&sb.inflight), 5);
    atomic_store(&sb.inflight, 0);
    atomic_store(&sb.max_requests, 2);
    ck_assert(lb_backend_take(&sb));
    ck_assert(lb_backend_take(&sb));
    ck_assert(!lb_backend_take(&sb));
    ck_assert_int_eq(atomic_load(&sb.inflight), 2);
    lb_backend_put(&sb);
    ck_assert(lb_backend_has_room(&sb));
    ck_assert(lb_backend_take(&sb));
    ck_assert(!lb_backend_has_room(&sb));
    /* A gauge a reap left negative is room, not an error. */
    atomic_store(&sb.inflight, -1);
    ck_assert(lb_backend_take(&sb) && lb_backend_take(&sb) && lb_backend_take(&sb));
    ck_assert(!lb_backend_take(&sb));
}
END_TEST

/* Round robin's cursor is shared by the workers: one of two servers
 * drained, two processes picking at once. A process whose tickets all land
 * on the drained server (the other took the good ones in between) must
 * still find the usable one: never "no server" (a 503). */
START_TEST(test_rr_shared_cursor_never_misses_a_usable_server)
{
    static const unsigned w[] = { 1, 1 };
    struct test_pool tp;
    make_pool(&tp, LB_STRATEGY_ROUND_ROBIN, w, 2);
    atomic_store(&tp.shm[0].admin_state, LB_BACKEND_DRAIN);
    struct shared {
        lb_counter_t cursor;
        _Atomic uint64_t misses;
    } *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(sh, MAP_FAILED);
    memset(sh, 0, sizeof(*sh));
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        ck_assert_int_ge(kids[k], 0);
        if (kids[k] == 0) {
            struct lb_balancer b;
            if (lb_balancer_init(&b, &tp.pool, tp.backends, &sh->cursor) < 0)
                _exit(1);
            for (int i = 0; i < 1000000; i++)
                if (pick(&b) != 1)
                    atomic_fetch_add(&sh->misses, 1);
            lb_balancer_destroy(&b);
            _exit(0);
        }
    }
    for (int k = 0; k < 2; k++) {
        int st;
        ck_assert_int_eq(waitpid(kids[k], &st, 0), kids[k]);
        ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    uint64_t misses = atomic_load(&sh->misses);
    ck_assert_msg(misses == 0, "%llu picks found no server", (unsigned long long)misses);
    munmap(sh, sizeof(*sh));
}
END_TEST

/* Four processes race for 3 places of one server in shared memory, as
 * workers do: none ever sees more than 3 taken. */
START_TEST(test_backend_take_exact)
{
    struct shared {
        struct lb_shm_backend b;
        _Atomic int64_t seen_max;
        _Atomic uint64_t taken;
    } *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(sh, MAP_FAILED);
    memset(sh, 0, sizeof(*sh));
    atomic_store(&sh->b.max_requests, 3);
    pid_t kids[4];
    for (int k = 0; k < 4; k++) {
        kids[k] = fork();
        ck_assert_int_ge(kids[k], 0);
        if (kids[k] == 0) {
            for (int i = 0; i < 200000; i++) {
                if (!lb_backend_take(&sh->b))
                    continue;
                atomic_fetch_add(&sh->taken, 1);
                int64_t n = atomic_load(&sh->b.inflight), m = atomic_load(&sh->seen_max);
                while (n > m && !atomic_compare_exchange_weak(&sh->seen_max, &m, n))
                    ;
                lb_backend_put(&sh->b);
            }
            _exit(0);
        }
    }
    for (int k = 0; k < 4; k++) {
        int st;
        ck_assert_int_eq(waitpid(kids[k], &st, 0), kids[k]);
        ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    ck_assert_int_le(atomic_load(&sh->seen_max), 3);
    ck_assert_int_ge(atomic_load(&sh->seen_max), 1);
    ck_assert_uint_gt(atomic_load(&sh->taken), 0);
    ck_assert_int_eq(atomic_load(&sh->b.inflight), 0);
    munmap(sh, sizeof(*sh));
}
END_TEST

/* ---- slow start ----------------------------------------------------------------- */

START_TEST(test_slow_start_ramp)
{
    /* Off, never usable again, or over: the whole weight. */
    ck_assert_uint_eq(lb_slow_start_permille(5000, 6000, 0), 1000);
    ck_assert_uint_eq(lb_slow_start_permille(0, 6000, 30000), 1000);
    ck_assert_uint_eq(lb_slow_start_permille(5000, 35000, 30000), 1000);
    ck_assert_uint_eq(lb_slow_start_permille(5000, 99999999, 30000), 1000);
    /* Linear in the time since, clamped to 10 %..100 %. */
    ck_assert_uint_eq(lb_slow_start_permille(5000, 5000, 30000), 100);
    ck_assert_uint_eq(lb_slow_start_permille(5000, 6500, 30000), 100);     /* 5 % */
    ck_assert_uint_eq(lb_slow_start_permille(5000, 8000, 30000), 100);     /* 10 % */
    ck_assert_uint_eq(lb_slow_start_permille(5000, 8030, 30000), 101);
    ck_assert_uint_eq(lb_slow_start_permille(5000, 12500, 30000), 250);
    ck_assert_uint_eq(lb_slow_start_permille(5000, 20000, 30000), 500);
    ck_assert_uint_eq(lb_slow_start_permille(5000, 34999, 30000), 999);
    /* A clock behind the stamp (never expected): the least share. */
    ck_assert_uint_eq(lb_slow_start_permille(5000, 4000, 30000), 100);
    /* Monotonic, always within bounds. */
    unsigned prev = 0;
    for (uint64_t now = 1000; now < 50000; now += 7) {
        unsigned p = lb_slow_start_permille(1000, now, 40000);
        ck_assert_uint_ge(p, 100);
        ck_assert_uint_le(p, 1000);
        ck_assert_uint_ge(p, prev);
        prev = p;
    }
    ck_assert_uint_eq(prev, 1000);

    /* The ramp starts at the later of health/configuration and the breaker's closing. */
    struct lb_shm_backend sb;
    memset(&sb, 0, sizeof(sb));
    ck_assert_uint_eq(lb_shm_backend_usable_since(&sb), 0);
    atomic_store(&sb.usable_ms, 7000);
    ck_assert_uint_eq(lb_shm_backend_usable_since(&sb), 7000);
    atomic_store(&sb.breaker_closed_ms, 9000);
    ck_assert_uint_eq(lb_shm_backend_usable_since(&sb), 9000);
    atomic_store(&sb.usable_ms, 12000);
    ck_assert_uint_eq(lb_shm_backend_usable_since(&sb), 12000);
}
END_TEST

/* Server 1 of two (weight 1 each) became usable at 1000 ms, ramp 10 s:
 * its share of N picks at NOW_MS. */
static double ramp_share(enum lb_strategy strategy, uint64_t now_ms, unsigned n, bool breaker)
{
    static const unsigned w[] = { 1, 1 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, strategy, w, 2);
    tp.pool.slow_start_ms = 10000;
    if (breaker)
        atomic_store(&tp.shm[1].breaker_closed_ms, 1000);
    else
        atomic_store(&tp.shm[1].usable_ms, 1000);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    unsigned got = 0;
    for (unsigned k = 0; k < n; k++) {
        char key[32];
        int len = snprintf(key, sizeof(key), "k%u", k);
        struct lb_pick_ctx ctx = { .now_ms = now_ms, .key = lb_balancer_key(key, (size_t)len) };
        int s = lb_balancer_pick(&b, &ctx);
        ck_assert_int_ge(s, 0);
        got += s == 1;
    }
    lb_balancer_destroy(&b);
    return (double)got / n;
}

START_TEST(test_slow_start_shares)
{
    /* The weighted round robin cycle, round robin and random: the share of
     * effective weights f / (1 + f), for f = 10 %, 50 %, 100 %. */
    static const enum lb_strategy props[] = {
        LB_STRATEGY_ROUND_ROBIN, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, LB_STRATEGY_RANDOM,
        LB_STRATEGY_HASH,
    };
    for (size_t k = 0; k < LB_ARRAY_SIZE(props); k++) {
        double at0 = ramp_share(props[k], 1000, 20000, false);
        double at5 = ramp_share(props[k], 6000, 20000, k % 2 == 1);   /* the breaker's stamp too */
        double done = ramp_share(props[k], 11000, 20000, false);
        if (props[k] == LB_STRATEGY_HASH) {
            /* Its keys come back with the ramp: f of the half it owns. */
            ck_assert_msg(at0 > 0.03 && at0 < 0.08, "hash at 10 %%: %.3f", at0);
            ck_assert_msg(at5 > 0.2 && at5 < 0.3, "hash at 50 %%: %.3f", at5);
            ck_assert_msg(done > 0.4 && done < 0.6, "hash done: %.3f", done);
            continue;
        }
        ck_assert_msg(at0 > 0.075 && at0 < 0.107, "strategy %d at 10 %%: %.3f", props[k], at0);
        ck_assert_msg(at5 > 0.30 && at5 < 0.37, "strategy %d at 50 %%: %.3f", props[k], at5);
        ck_assert_msg(done > 0.47 && done < 0.53, "strategy %d done: %.3f", props[k], done);
    }
}
END_TEST

START_TEST(test_slow_start_load_strategies)
{
    /* Least connections divides the load by the effective weight: at 10 %,
     * server 1 idle is heavier than server 0 with 8 in flight
     * ((0 + 1) / 0.1 = 10 > 9), lighter than it with 10 (11). */
    static const unsigned w[] = { 1, 1 };
    struct test_pool tp;
    struct lb_balancer b;
    make_pool(&tp, LB_STRATEGY_LEAST_CONNECTIONS, w, 2);
    tp.pool.slow_start_ms = 10000;
    atomic_store(&tp.shm[1].usable_ms, 1000);
    ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
    struct lb_pick_ctx ctx = { .now_ms = 1500 };
    atomic_store(&tp.shm[0].inflight, 8);
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(lb_balancer_pick(&b, &ctx), 0);
    atomic_store(&tp.shm[0].inflight, 10);
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(lb_balancer_pick(&b, &ctx), 1);
    /* The ramp over: the idle one, of course. */
    atomic_store(&tp.shm[0].inflight, 1);
    ctx.now_ms = 11000;
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(lb_balancer_pick(&b, &ctx), 1);
    lb_balancer_destroy(&b);

    /* P2C and least time draw their two candidates by effective weight
     * and compare load (and response time) per effective weight: with
     * server 0 busy (4 in flight), the idle ramping server 1 gets far less
     * than once its ramp is over; alone it takes everything. */
    static const enum lb_strategy two[] = { LB_STRATEGY_POWER_OF_TWO, LB_STRATEGY_LEAST_TIME };
    for (size_t k = 0; k < LB_ARRAY_SIZE(two); k++) {
        make_pool(&tp, two[k], w, 2);
        tp.pool.slow_start_ms = 10000;
        atomic_store(&tp.shm[1].usable_ms, 1000);
        atomic_store(&tp.shm[0].inflight, 4);
        ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
        unsigned ramping = 0, over = 0;
        for (int i = 0; i < 4000; i++) {
            struct lb_pick_ctx c1 = { .now_ms = 1500 }, c2 = { .now_ms = 11000 };
            ramping += lb_balancer_pick(&b, &c1) == 1;
            over += lb_balancer_pick(&b, &c2) == 1;
        }
        ck_assert_msg(over > 3600 && ramping < 1000, "strategy %d: %u while ramping, %u after",
                      two[k], ramping, over);
        atomic_store(&tp.shm[0].health, LB_HEALTH_DOWN);
        struct lb_pick_ctx c0 = { .now_ms = 1000 };
        for (int i = 0; i < 50; i++)
            ck_assert_int_eq(lb_balancer_pick(&b, &c0), 1);
        lb_balancer_destroy(&b);
    }
}
END_TEST

START_TEST(test_slow_start_alone_and_hash_keys)
{
    /* A ramping server alone in rotation takes every request (the cycle
     * and the ring fall back on it). */
    static const enum lb_strategy all[] = {
        LB_STRATEGY_ROUND_ROBIN, LB_STRATEGY_WEIGHTED_ROUND_ROBIN, LB_STRATEGY_RANDOM,
        LB_STRATEGY_HASH,
    };
    static const unsigned w[] = { 1, 1 };
    for (size_t k = 0; k < LB_ARRAY_SIZE(all); k++) {
        struct test_pool tp;
        struct lb_balancer b;
        make_pool(&tp, all[k], w, 2);
        tp.pool.slow_start_ms = 10000;
        atomic_store(&tp.shm[1].usable_ms, 1000);
        atomic_store(&tp.shm[0].admin_state, LB_BACKEND_DRAIN);
        ck_assert_int_eq(lb_balancer_init(&b, &tp.pool, tp.backends, NULL), 0);
        for (uint64_t key = 0; key < 200; key++) {
            struct lb_pick_ctx ctx = { .now_ms = 1000, .key = key_of(key) };
            ck_assert_int_eq(lb_balancer_pick(&b, &ctx), 1);
        }
        lb_balancer_destroy(&b);
    }

    /* hash: during the ramp a key only ever moves to the ramping server,
     * once, and stays; at its end the map is the one without slow start. */
    static const unsigned w3[] = { 1, 1, 1 };
    static struct test_pool tp;
    make_pool(&tp, LB_STRATEGY_HASH, w3, 3);
    struct lb_balancer plain, slow;
    ck_assert_int_eq(lb_balancer_init(&plain, &tp.pool, tp.backends, NULL), 0);
    tp.pool.slow_start_ms = 10000;
    atomic_store(&tp.shm[2].usable_ms, 1000);
    ck_assert_int_eq(lb_balancer_init(&slow, &tp.pool, tp.backends, NULL), 0);
    static int prev[NKEYS];
    for (unsigned k = 0; k < NKEYS; k++)
        prev[k] = -1;
    unsigned moved = 0;
    for (uint64_t now = 1000; now <= 11000; now += 500) {
        unsigned on2 = 0;
        for (unsigned k = 0; k < NKEYS; k++) {
            struct lb_pick_ctx ctx = { .now_ms = now, .key = key_of(k + 1) };
            int s = lb_balancer_pick(&slow, &ctx);
            ck_assert_int_ge(s, 0);
            if (prev[k] >= 0 && s != prev[k]) {
                ck_assert_msg(s == 2 && prev[k] != 2, "key %u moved %d -> %d at %llu", k,
                              prev[k], s, (unsigned long long)now);
                moved++;
            }
            prev[k] = s;
            on2 += s == 2;
        }
        (void)on2;
    }
    ck_assert_uint_gt(moved, NKEYS / 5);
    for (unsigned k = 0; k < NKEYS; k++) {
        struct lb_pick_ctx ctx = { .now_ms = 11000, .key = key_of(k + 1) };
        ck_assert_int_eq(prev[k], lb_balancer_pick(&plain, &ctx));
    }
    lb_balancer_destroy(&plain);
    lb_balancer_destroy(&slow);
}
END_TEST

Suite *balancer_suite(void)
{
    Suite *s = suite_create("balancer");
    TCase *tc = tcase_create("swrr");
    tcase_add_test(tc, test_swrr_nginx_5_1_1);
    tcase_add_test(tc, test_swrr_equal);
    tcase_add_test(tc, test_swrr_gcd);
    tcase_add_test(tc, test_swrr_zero_weights);
    tcase_add_test(tc, test_swrr_all_zero);
    tcase_add_test(tc, test_swrr_proportions_random);
    tcase_add_test(tc, test_swrr_smoothness);
    tcase_add_test(tc, test_swrr_capacity);
    suite_add_tcase(s, tc);

    tc = tcase_create("pick");
    tcase_add_test(tc, test_rr_ignores_weights);
    tcase_add_test(tc, test_wrr_follows_weights);
    tcase_add_test(tc, test_all_zero_picks_none);
    tcase_add_test(tc, test_split_exact);
    tcase_add_test(tc, test_shared_cursor);
    tcase_add_test(tc, test_cursor_wraps);
    tcase_add_test(tc, test_rr_skips_unusable);
    tcase_add_test(tc, test_rr_shared_cursor_never_misses_a_usable_server);
    tcase_add_test(tc, test_rr_proportions_with_one_down);
    suite_add_tcase(s, tc);

    tc = tcase_create("strategies");
    tcase_add_test(tc, test_least_connections);
    tcase_add_test(tc, test_random);
    tcase_add_test(tc, test_power_of_two);
    tcase_add_test(tc, test_least_time);
    tcase_add_test(tc, test_hash_consistent);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_add_test(tc, test_max_requests_skip);
    tcase_add_test(tc, test_backend_take);
    tcase_add_test(tc, test_backend_take_exact);
    suite_add_tcase(s, tc);

    tc = tcase_create("slow_start");
    tcase_add_test(tc, test_slow_start_ramp);
    tcase_add_test(tc, test_slow_start_shares);
    tcase_add_test(tc, test_slow_start_load_strategies);
    tcase_add_test(tc, test_slow_start_alone_and_hash_keys);
    suite_add_tcase(s, tc);
    return s;
}
