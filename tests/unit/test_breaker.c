/* worker/breaker.c: the circuit breaker's state machine as pure functions
 * over shared structs with a given clock: consecutive and ratio triggers,
 * the open interval's doubling, cap and reset, half-open trials, the
 * ejection limit, Retry-After; and the atomic admission raced by processes
 * on a shared mapping, as lbd's workers do. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shared/log.h"
#include "shared/shm.h"
#include "worker/breaker.h"
#include "tests/unit/suites.h"

/* A pool of up to 8 servers, with its shared state. */
struct bpool {
    struct lb_server_cfg servers[8];
    struct lb_pool_cfg cfg;
    struct lb_shm_pool pool;
    struct lb_shm_backend b[8];
};

static void bpool_init(struct bpool *p, size_t n, struct lb_breaker_cfg bc)
{
    lb_log_set_level(LB_LOG_ERROR);     /* transitions are logged: not here */
    memset(p, 0, sizeof(*p));
    snprintf(p->cfg.name, sizeof(p->cfg.name), "web");
    p->cfg.servers = p->servers;
    p->cfg.nservers = n;
    bc.enabled = true;
    if (bc.trial_timeout_ms == 0)
        bc.trial_timeout_ms = 60000;
    p->cfg.breaker = bc;
    for (size_t i = 0; i < n; i++) {
        snprintf(p->b[i].address, sizeof(p->b[i].address), "10.0.0.%zu:80", i + 1);
        atomic_store(&p->b[i].weight, 1);
        atomic_store(&p->b[i].health, LB_HEALTH_UP);
    }
}

static struct lb_breaker_site site(struct bpool *p, size_t i)
{
    return (struct lb_breaker_site){ &p->b[i], &p->pool, &p->cfg };
}

static enum lb_breaker_change report(struct bpool *p, size_t i, uint64_t ticket,
                                     enum lb_breaker_outcome o, uint64_t now)
{
    struct lb_breaker_site s = site(p, i);
    return lb_breaker_report(&s, ticket, o, 0, now);
}

static enum lb_breaker_change bfail(struct bpool *p, size_t i, uint64_t now)
{
    return report(p, i, 0, LB_BREAKER_FAILURE, now);
}

static enum lb_breaker_change bok(struct bpool *p, size_t i, uint64_t now)
{
    return report(p, i, 0, LB_BREAKER_SUCCESS, now);
}

/* Admit at NOW: the ticket, or -1 when refused. */
static int64_t admit(struct bpool *p, size_t i, uint64_t now)
{
    struct lb_breaker_site s = site(p, i);
    uint64_t ticket;
    return lb_breaker_admit(&s, now, &ticket) ? (int64_t)ticket : -1;
}

static unsigned state(struct bpool *p, size_t i)
{
    return LB_BRK_STATE(atomic_load(&p->b[i].breaker));
}

static uint64_t stamp(struct bpool *p, size_t i)
{
    return LB_BRK_STAMP(atomic_load(&p->b[i].breaker));
}

static bool usable(struct bpool *p, size_t i, uint64_t now)
{
    return lb_breaker_usable(&p->b[i], &p->cfg.breaker, now, true);
}

static const struct lb_breaker_cfg consecutive = {
    .failures = 3, .open_ms = 1000, .open_max_ms = 5000, .half_open_requests = 2,
    .max_ejection_percent = 100,
};

START_TEST(test_consecutive_opens)
{
    static struct bpool p;
    bpool_init(&p, 2, consecutive);
    ck_assert_int_eq(bfail(&p, 0, 100), LB_BREAKER_SAME);
    ck_assert_int_eq(bfail(&p, 0, 100), LB_BREAKER_SAME);
    ck_assert_int_eq(bok(&p, 0, 100), LB_BREAKER_SAME);      /* a success breaks the row */
    ck_assert_int_eq(bfail(&p, 0, 100), LB_BREAKER_SAME);
    ck_assert_int_eq(bfail(&p, 0, 100), LB_BREAKER_SAME);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_CLOSED);
    ck_assert(usable(&p, 0, 100));
    ck_assert_int_eq(admit(&p, 0, 100), 0);                 /* closed: an ordinary request */
    ck_assert_int_eq(bfail(&p, 0, 200), LB_BREAKER_OPENED);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_OPEN);
    ck_assert_uint_eq(stamp(&p, 0), 1200);                  /* open until now + open */
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_interval_ms), 1000);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_transitions[LB_BREAKER_OPEN]), 1);
    ck_assert_uint_eq(atomic_load(&p.pool.breakers_open), 1);
    /* Once open, late failures of requests let through before change nothing. */
    ck_assert_int_eq(bfail(&p, 0, 300), LB_BREAKER_SAME);
    ck_assert_uint_eq(stamp(&p, 0), 1200);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_transitions[LB_BREAKER_OPEN]), 1);
    /* Open: not usable, not admitted, by nobody. */
    ck_assert(!usable(&p, 0, 1199));
    ck_assert_int_eq(admit(&p, 0, 1199), -1);
    ck_assert_uint_eq(lb_shm_breaker_shown(&p.b[0], 1199), LB_BREAKER_OPEN);
    /* The other server is untouched. */
    ck_assert_uint_eq(state(&p, 1), LB_BREAKER_CLOSED);
    ck_assert(usable(&p, 1, 1199));

    /* The interval over: shown half-open, usable for a trial (not by a
     * worker that may take none). */
    ck_assert_uint_eq(lb_shm_breaker_shown(&p.b[0], 1200), LB_BREAKER_HALF_OPEN);
    ck_assert(usable(&p, 0, 1200));
    ck_assert(!lb_breaker_usable(&p.b[0], &p.cfg.breaker, 1200, false));
}
END_TEST

START_TEST(test_half_open_trials_close)
{
    static struct bpool p;
    bpool_init(&p, 1, consecutive);
    for (int i = 0; i < 3; i++)
        bfail(&p, 0, 0 + 100);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_OPEN);
    /* Exactly half_open_requests (2) trials, in the round of the first. */
    int64_t t1 = admit(&p, 0, 1500);
    ck_assert_int_eq(t1, 1500);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_HALF_OPEN);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_transitions[LB_BREAKER_HALF_OPEN]), 1);
    int64_t t2 = admit(&p, 0, 1600);
    ck_assert_int_eq(t2, 1500);
    ck_assert(!usable(&p, 0, 1700));
    ck_assert_int_eq(admit(&p, 0, 1700), -1);
    ck_assert_int_eq(admit(&p, 0, 1800), -1);
    /* An ordinary late success is no trial's. */
    ck_assert_int_eq(bok(&p, 0, 1800), LB_BREAKER_SAME);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_HALF_OPEN);
    /* One trial succeeds: still half-open; the second closes it. */
    ck_assert_int_eq(report(&p, 0, (uint64_t)t1, LB_BREAKER_SUCCESS, 1900), LB_BREAKER_SAME);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_HALF_OPEN);
    ck_assert_int_eq(report(&p, 0, (uint64_t)t2, LB_BREAKER_SUCCESS, 2000),
                     LB_BREAKER_CLOSED_AGAIN);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker), 0);
    ck_assert_uint_eq(atomic_load(&p.b[0].fails_in_row), 0);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_closed_ms), 2000);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_transitions[LB_BREAKER_CLOSED]), 1);
    ck_assert_uint_eq(atomic_load(&p.pool.breakers_open), 0);
    ck_assert_int_eq(admit(&p, 0, 2000), 0);
    /* Closed again: it takes `failures` failures anew. */
    ck_assert_int_eq(bfail(&p, 0, 2100), LB_BREAKER_SAME);
    ck_assert_int_eq(bfail(&p, 0, 2100), LB_BREAKER_SAME);
    ck_assert_int_eq(bfail(&p, 0, 2100), LB_BREAKER_OPENED);
}
END_TEST

START_TEST(test_trial_failure_doubles_up_to_max)
{
    static struct bpool p;
    bpool_init(&p, 1, consecutive);         /* open 1000, open_max 5000 */
    for (int i = 0; i < 3; i++)
        bfail(&p, 0, 0 + 10);
    uint64_t now = 10, want[] = { 2000, 4000, 5000, 5000 };
    ck_assert_uint_eq(stamp(&p, 0), now + 1000);
    for (size_t k = 0; k < LB_ARRAY_SIZE(want); k++) {
        now = stamp(&p, 0);
        int64_t t = admit(&p, 0, now);
        ck_assert_int_eq(t, (int64_t)now);
        /* Any failed trial opens it again, the other trial still out. */
        ck_assert_int_ge(admit(&p, 0, now), 0);
        now += 5;
        ck_assert_int_eq(report(&p, 0, (uint64_t)t, LB_BREAKER_FAILURE, now), LB_BREAKER_REOPENED);
        ck_assert_uint_eq(state(&p, 0), LB_BREAKER_OPEN);
        ck_assert_uint_eq(stamp(&p, 0), now + want[k]);
        ck_assert_uint_eq(atomic_load(&p.b[0].breaker_interval_ms), want[k]);
        /* The other trial's late verdict is no longer a trial's. */
        ck_assert_int_eq(report(&p, 0, (uint64_t)t, LB_BREAKER_SUCCESS, now), LB_BREAKER_SAME);
        ck_assert_uint_eq(state(&p, 0), LB_BREAKER_OPEN);
    }
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_transitions[LB_BREAKER_OPEN]), 5);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_transitions[LB_BREAKER_HALF_OPEN]), 4);
    ck_assert_uint_eq(atomic_load(&p.pool.breakers_open), 1);   /* one server, all along */
}
END_TEST

/* Open server 0 of P at NOW, then close it through its trials; returns the
 * time it closed. */
static uint64_t open_and_close(struct bpool *p, uint64_t now)
{
    for (unsigned i = 0; i < p->cfg.breaker.failures; i++)
        bfail(p, 0, now);
    ck_assert_uint_eq(state(p, 0), LB_BREAKER_OPEN);
    now = stamp(p, 0);
    int64_t t[2] = { admit(p, 0, now), admit(p, 0, now) };
    for (int k = 0; k < 2; k++)
        report(p, 0, (uint64_t)t[k], LB_BREAKER_SUCCESS, now);
    ck_assert_uint_eq(state(p, 0), LB_BREAKER_CLOSED);
    return now;
}

START_TEST(test_doubling_resets_after_a_while_closed)
{
    static struct bpool p;
    bpool_init(&p, 1, consecutive);         /* open 1000, open_max 5000 */
    uint64_t now = open_and_close(&p, 100);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_interval_ms), 1000);
    /* Soon after closing: the next open doubles. */
    now = open_and_close(&p, now + 10);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_interval_ms), 2000);
    now = open_and_close(&p, now + 4999);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_interval_ms), 4000);
    /* Closed for open_max: back to `open`. */
    for (unsigned i = 0; i < 3; i++)
        bfail(&p, 0, now + 5000);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_interval_ms), 1000);
    ck_assert_uint_eq(stamp(&p, 0), now + 5000 + 1000);
}
END_TEST

START_TEST(test_abandoned_and_lost_trials)
{
    static struct bpool p;
    struct lb_breaker_cfg c = consecutive;
    c.half_open_requests = 1;
    c.trial_timeout_ms = 3000;
    bpool_init(&p, 1, c);
    for (int i = 0; i < 3; i++)
        bfail(&p, 0, 0 + 1);
    int64_t t = admit(&p, 0, 2000);
    ck_assert_int_eq(t, 2000);
    ck_assert_int_eq(admit(&p, 0, 2000), -1);
    /* The client left before the answer: the place goes to the next one,
     * in the same round. */
    ck_assert_int_eq(report(&p, 0, (uint64_t)t, LB_BREAKER_ABANDONED, 2100), LB_BREAKER_SAME);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_HALF_OPEN);
    t = admit(&p, 0, 2200);
    ck_assert_int_eq(t, 2000);
    ck_assert_int_eq(admit(&p, 0, 2200), -1);
    /* That one's worker dies: nobody will ever report it. After the trial
     * timeout (from the round's start) a new round begins. */
    ck_assert_int_eq(admit(&p, 0, 4999), -1);
    ck_assert(!usable(&p, 0, 4999));
    ck_assert(usable(&p, 0, 5000));
    int64_t t2 = admit(&p, 0, 5000);
    ck_assert_int_eq(t2, 5000);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_transitions[LB_BREAKER_HALF_OPEN]), 1);
    /* The lost trial turns up after all: no longer this round's. */
    ck_assert_int_eq(report(&p, 0, (uint64_t)t, LB_BREAKER_FAILURE, 5100), LB_BREAKER_SAME);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_HALF_OPEN);
    ck_assert_int_eq(report(&p, 0, (uint64_t)t2, LB_BREAKER_SUCCESS, 5200),
                     LB_BREAKER_CLOSED_AGAIN);
}
END_TEST

START_TEST(test_ratio_window)
{
    static struct bpool p;
    /* failure_ratio 0.5 among at least 10 requests of a 16 s window
     * (16 buckets of 1 s); consecutive trigger off. */
    struct lb_breaker_cfg c = { .failures = 0, .ratio_ppm = 500000, .window_ms = 16000,
                                .min_requests = 10, .open_ms = 1000, .open_max_ms = 1000,
                                .half_open_requests = 1, .max_ejection_percent = 100 };
    bpool_init(&p, 1, c);
    /* Alternating: never two failures in a row, half of them failed. */
    uint64_t now = 100000;
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(bok(&p, 0, now), LB_BREAKER_SAME);
        ck_assert_int_eq(bfail(&p, 0, now), LB_BREAKER_SAME);    /* below min_requests */
    }
    ck_assert_int_eq(bok(&p, 0, now + 1000), LB_BREAKER_SAME);
    /* 10 requests, 5 failed: the ratio is reached. */
    ck_assert_int_eq(bfail(&p, 0, now + 2000), LB_BREAKER_OPENED);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_OPEN);

    /* Old requests leave the window: failures of 16 s ago do not count. */
    bpool_init(&p, 1, c);
    for (int i = 0; i < 9; i++)
        bfail(&p, 0, now);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_CLOSED);
    now += 16000;
    for (int i = 0; i < 9; i++)
        bok(&p, 0, now);
    /* 9 old failures gone: 1 failure in 10 requests. */
    ck_assert_int_eq(bfail(&p, 0, now), LB_BREAKER_SAME);
    /* Within the window they would have counted: 9 + 1 of 19. */
    bpool_init(&p, 1, c);
    for (int i = 0; i < 9; i++)
        bfail(&p, 0, now);
    for (int i = 0; i < 9; i++)
        bok(&p, 0, now + 14000);
    ck_assert_int_eq(bfail(&p, 0, now + 14000), LB_BREAKER_OPENED);

    /* Below the ratio: 4 of 10. */
    bpool_init(&p, 1, c);
    for (int i = 0; i < 6; i++)
        bok(&p, 0, now);
    for (int i = 0; i < 3; i++)
        bfail(&p, 0, now);
    ck_assert_int_eq(bfail(&p, 0, now), LB_BREAKER_SAME);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_CLOSED);

    /* Once closed again, the window starts empty. */
    bpool_init(&p, 1, c);
    for (int i = 0; i < 10; i++)
        bfail(&p, 0, now);
    ck_assert_uint_eq(state(&p, 0), LB_BREAKER_OPEN);
    int64_t t = admit(&p, 0, now + 1000);
    ck_assert_int_eq(report(&p, 0, (uint64_t)t, LB_BREAKER_SUCCESS, now + 1000),
                     LB_BREAKER_CLOSED_AGAIN);
    for (int i = 0; i < 9; i++)
        ck_assert_int_eq(bfail(&p, 0, now + 1000), LB_BREAKER_SAME);
    ck_assert_int_eq(bfail(&p, 0, now + 1000), LB_BREAKER_OPENED);
}
END_TEST

START_TEST(test_max_ejection)
{
    static struct bpool p;
    struct lb_breaker_cfg c = consecutive;
    c.failures = 1;
    c.max_ejection_percent = 50;
    bpool_init(&p, 4, c);
    ck_assert_int_eq(bfail(&p, 0, 10), LB_BREAKER_OPENED);
    ck_assert_int_eq(bfail(&p, 1, 10), LB_BREAKER_OPENED);
    /* Half the pool is open: the third stays in rotation. */
    ck_assert_int_eq(bfail(&p, 2, 10), LB_BREAKER_HELD);
    ck_assert_int_eq(bfail(&p, 2, 10), LB_BREAKER_HELD);
    ck_assert_uint_eq(state(&p, 2), LB_BREAKER_CLOSED);
    ck_assert_uint_eq(atomic_load(&p.pool.breakers_open), 2);
    /* One closes: the next may open. */
    int64_t t = admit(&p, 0, 2000);
    report(&p, 0, (uint64_t)t, LB_BREAKER_SUCCESS, 2000);
    t = admit(&p, 0, 2000);
    ck_assert_int_eq(report(&p, 0, (uint64_t)t, LB_BREAKER_SUCCESS, 2000),
                     LB_BREAKER_CLOSED_AGAIN);
    ck_assert_int_eq(bfail(&p, 2, 2000), LB_BREAKER_OPENED);
    ck_assert_uint_eq(atomic_load(&p.pool.breakers_open), 2);

    /* At least one may open, whatever the percentage: a pool of one. */
    bpool_init(&p, 1, c);
    ck_assert_int_eq(bfail(&p, 0, 10), LB_BREAKER_OPENED);
    /* ... and then the pool has nobody left: its breakers refused all. */
    struct lb_shm_backend *list[1] = { &p.b[0] };
    ck_assert(lb_breaker_refused_all(list, 1));
    atomic_store(&p.b[0].health, LB_HEALTH_DOWN);       /* down anyway: not the breaker's */
    ck_assert(!lb_breaker_refused_all(list, 1));
    c.max_ejection_percent = 0;
    bpool_init(&p, 3, c);
    ck_assert_int_eq(bfail(&p, 0, 10), LB_BREAKER_OPENED);
    ck_assert_int_eq(bfail(&p, 1, 10), LB_BREAKER_HELD);
}
END_TEST

START_TEST(test_retry_after)
{
    static struct bpool p;
    struct lb_breaker_cfg c = consecutive;      /* open 1000, open_max 5000 */
    c.failures = 1;
    bpool_init(&p, 1, c);
    struct lb_breaker_site s = site(&p, 0);
    /* A 503 with Retry-After: 3 s that opens it: open 3 s, not 1. */
    ck_assert_int_eq(lb_breaker_report(&s, 0, LB_BREAKER_FAILURE, 3000, 100), LB_BREAKER_OPENED);
    ck_assert_uint_eq(stamp(&p, 0), 3100);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker_interval_ms), 1000);  /* doubling unchanged */
    /* Another, from a request let through before: at least 4 s from now. */
    lb_breaker_report(&s, 0, LB_BREAKER_FAILURE, 4000, 200);
    ck_assert_uint_eq(stamp(&p, 0), 4200);
    /* Shorter than what is left: no change; longer than open_max: capped. */
    lb_breaker_report(&s, 0, LB_BREAKER_FAILURE, 1000, 300);
    ck_assert_uint_eq(stamp(&p, 0), 4200);
    lb_breaker_report(&s, 0, LB_BREAKER_FAILURE, 3600000, 400);
    ck_assert_uint_eq(stamp(&p, 0), 5400);
    /* A failed trial with Retry-After. */
    int64_t t = admit(&p, 0, 5400);
    ck_assert_int_eq(lb_breaker_report(&s, (uint64_t)t, LB_BREAKER_FAILURE, 4500, 5500),
                     LB_BREAKER_REOPENED);
    ck_assert_uint_eq(stamp(&p, 0), 10000);

    /* The header's two forms. */
    ck_assert_uint_eq(lb_breaker_retry_after_ms("120", 3, 0), 120000);
    ck_assert_uint_eq(lb_breaker_retry_after_ms("0", 1, 0), 0);
    ck_assert_uint_eq(lb_breaker_retry_after_ms("12a", 3, 0), 0);
    ck_assert_uint_eq(lb_breaker_retry_after_ms("", 0, 0), 0);
    const char *date = "Wed, 21 Oct 2015 07:28:00 GMT";         /* 1445412480 */
    ck_assert_uint_eq(lb_breaker_retry_after_ms(date, strlen(date), 1445412470000ull), 10000);
    ck_assert_uint_eq(lb_breaker_retry_after_ms(date, strlen(date), 1445412490000ull), 0);
    ck_assert_uint_eq(lb_breaker_retry_after_ms("Wed, 21 Oct 2015", 16, 0), 0);
}
END_TEST

START_TEST(test_disabled)
{
    static struct bpool p;
    bpool_init(&p, 1, consecutive);
    p.cfg.breaker.enabled = false;
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(bfail(&p, 0, 10), LB_BREAKER_SAME);
    ck_assert_uint_eq(atomic_load(&p.b[0].breaker), 0);
    /* A word left over from before a reload removed the breaker is ignored. */
    atomic_store(&p.b[0].breaker, LB_BRK_WORD(LB_BREAKER_OPEN, 0, 0, 1000000));
    ck_assert(usable(&p, 0, 10));
    ck_assert_int_eq(admit(&p, 0, 10), 0);
}
END_TEST

/* ---- races: forked processes on a shared mapping, as lbd's workers ------ */

#define RACERS 8

struct race {
    struct bpool p;
    _Atomic unsigned ready, go;
    _Atomic uint64_t won[RACERS];
    _Atomic uint64_t changes[RACERS];
};

/* Run FN(r, i) in RACERS processes at once; wait for them all. */
static void race(struct race *r, void (*fn)(struct race *, unsigned))
{
    pid_t pids[RACERS];
    atomic_store(&r->go, 0);
    atomic_store(&r->ready, 0);
    for (unsigned i = 0; i < RACERS; i++) {
        atomic_store(&r->changes[i], 0);
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) {
            atomic_fetch_add(&r->ready, 1);
            while (atomic_load(&r->go) == 0)
                ;
            fn(r, i);
            _exit(0);
        }
    }
    /* Every racer started and spinning: they run into each other. */
    while (atomic_load(&r->ready) < RACERS)
        usleep(100);
    atomic_store(&r->go, 1);
    for (unsigned i = 0; i < RACERS; i++) {
        int st;
        ck_assert_int_eq(waitpid(pids[i], &st, 0), pids[i]);
        ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
}

static uint64_t sum(_Atomic uint64_t *v)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < RACERS; i++)
        n += atomic_load(&v[i]);
    return n;
}

static void racer_admit(struct race *r, unsigned i)
{
    struct lb_breaker_site s = site(&r->p, 0);
    for (int k = 0; k < 200; k++) {
        uint64_t ticket;
        enum lb_breaker_change c;
        if (lb_breaker_admit_slow(&s, 5000, &ticket, &c)) {
            if (ticket != 5000)
                _exit(1);
            atomic_fetch_add(&r->won[i], 1);
        }
        if (c == LB_BREAKER_HALF_OPENED)
            atomic_fetch_add(&r->changes[i], 1);
    }
}

static void racer_succeed(struct race *r, unsigned i)
{
    for (uint64_t k = 0; k < atomic_load(&r->won[i]); k++)
        if (report(&r->p, 0, 5000, LB_BREAKER_SUCCESS, 6000) == LB_BREAKER_CLOSED_AGAIN)
            atomic_fetch_add(&r->changes[i], 1);
}

static void racer_fail(struct race *r, unsigned i)
{
    for (int k = 0; k < 50; k++)
        if (bfail(&r->p, i % 2, 100) == LB_BREAKER_OPENED)
            atomic_fetch_add(&r->changes[i], 1);
}

START_TEST(test_race_exactly_n_trials)
{
    struct race *r = mmap(NULL, sizeof(*r), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                          -1, 0);
    ck_assert(r != MAP_FAILED);
    static const unsigned ns[] = { 1, 3, 7, 20, 1000 };
    for (size_t round = 0; round < 40; round++) {
        struct lb_breaker_cfg c = consecutive;
        c.half_open_requests = ns[round % LB_ARRAY_SIZE(ns)];
        bpool_init(&r->p, 2, c);
        atomic_store(&r->p.b[0].breaker, LB_BRK_WORD(LB_BREAKER_OPEN, 0, 0, 4000));
        atomic_store(&r->p.pool.breakers_open, 1);
        for (unsigned i = 0; i < RACERS; i++)
            atomic_store(&r->won[i], 0);
        /* 8 processes try 200 admissions each at once: exactly N get in,
         * and one of them made the OPEN -> HALF_OPEN transition. */
        race(r, racer_admit);
        ck_assert_uint_eq(sum(r->won), c.half_open_requests);
        ck_assert_uint_eq(sum(r->changes), 1);
        ck_assert_uint_eq(atomic_load(&r->p.b[0].breaker_transitions[LB_BREAKER_HALF_OPEN]), 1);
        /* Each reports its trials' success at once: exactly one closes it. */
        race(r, racer_succeed);
        ck_assert_uint_eq(sum(r->changes), 1);
        ck_assert_uint_eq(atomic_load(&r->p.b[0].breaker), 0);
        ck_assert_uint_eq(atomic_load(&r->p.b[0].breaker_transitions[LB_BREAKER_CLOSED]), 1);
        ck_assert_uint_eq(atomic_load(&r->p.pool.breakers_open), 0);
    }
    /* 8 processes fail two servers (max_ejection 50 % of 2: one may open)
     * 50 times each: exactly one opens, once. */
    for (size_t round = 0; round < 20; round++) {
        struct lb_breaker_cfg c = consecutive;
        c.max_ejection_percent = 50;
        bpool_init(&r->p, 2, c);
        race(r, racer_fail);
        ck_assert_uint_eq(sum(r->changes), 1);
        ck_assert_uint_eq((state(&r->p, 0) == LB_BREAKER_OPEN) + (state(&r->p, 1) == LB_BREAKER_OPEN), 1);
        ck_assert_uint_eq(atomic_load(&r->p.pool.breakers_open), 1);
    }
    munmap(r, sizeof(*r));
}
END_TEST

Suite *breaker_suite(void)
{
    Suite *s = suite_create("breaker");
    TCase *tc = tcase_create("state machine");
    tcase_add_test(tc, test_consecutive_opens);
    tcase_add_test(tc, test_half_open_trials_close);
    tcase_add_test(tc, test_trial_failure_doubles_up_to_max);
    tcase_add_test(tc, test_doubling_resets_after_a_while_closed);
    tcase_add_test(tc, test_abandoned_and_lost_trials);
    tcase_add_test(tc, test_ratio_window);
    tcase_add_test(tc, test_max_ejection);
    tcase_add_test(tc, test_retry_after);
    tcase_add_test(tc, test_disabled);
    suite_add_tcase(s, tc);
    tc = tcase_create("races");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_race_exactly_n_trials);
    suite_add_tcase(s, tc);
    return s;
}
