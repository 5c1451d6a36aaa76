/* shared/fdbudget.c: what a worker and the control process may hold under
 * an fd limit, so that what they accepted never lacks an fd. */
#include <check.h>
#include <stdlib.h>
#include <unistd.h>

#include "shared/fdbudget.h"
#include "tests/unit/suites.h"

/* A configuration with one pool of NSERVERS servers, KEEPALIVE each,
 * health-checked when HEALTH; MAX_CONNECTIONS 0 is "auto". */
struct fixture {
    struct lb_config cfg;
    struct lb_pool_cfg pool;
};

static void fixture_init(struct fixture *f, size_t nservers, unsigned keepalive, bool health,
                         unsigned max_connections)
{
    *f = (struct fixture){ 0 };
    f->pool.nservers = nservers;
    f->pool.keepalive = keepalive;
    f->pool.health.enabled = health;
    f->cfg.pools = &f->pool;
    f->cfg.npools = 1;
    f->cfg.nlisteners = 1;
    f->cfg.max_connections = max_connections;
    f->cfg.admin = true;
    f->cfg.admin_max_connections = 64;
}

/* Everything fits: the worker's own fds, the slack, a client and a backend
 * fd per connection; idle connections at most a quarter of the rest. */
static void assert_fits(const struct lb_fdbudget *b)
{
    ck_assert_uint_eq(b->avail, b->limit - b->held - LB_FD_SLACK);
    ck_assert_msg(2ull * b->max_connections <= b->avail, "limit %u: held %u, %u connections "
                  "do not fit", b->limit, b->held, b->max_connections);
    ck_assert_uint_le(b->idle_max, b->avail / 4);
}

START_TEST(test_worker_auto)
{
    struct fixture f;
    struct lb_fdbudget b;
    fixture_init(&f, 3, 32, false, 0);
    lb_fdbudget_worker(&f.cfg, 256, 11, &b);
    /* 256 - 11 - 8 = 237: a client and its backend each, idle a quarter. */
    ck_assert_uint_eq(b.avail, 237);
    ck_assert_uint_eq(b.max_connections, 118);
    ck_assert_uint_eq(b.idle_max, 59);
    ck_assert(!b.lowered && !b.starved);
    assert_fits(&b);

    /* As HAProxy under the same limit (maxconn about 9,990). */
    lb_fdbudget_worker(&f.cfg, 20000, 11, &b);
    ck_assert_uint_eq(b.max_connections, 9990);
    ck_assert_uint_eq(b.idle_max, 4995);
    assert_fits(&b);
}
END_TEST

START_TEST(test_worker_configured)
{
    struct fixture f;
    struct lb_fdbudget b;
    fixture_init(&f, 3, 32, false, 50);
    lb_fdbudget_worker(&f.cfg, 256, 11, &b);
    ck_assert_uint_eq(b.max_connections, 50);
    ck_assert(!b.lowered);
    assert_fits(&b);

    /* Above what fits: lowered to it, and flagged for the warning. */
    fixture_init(&f, 3, 32, false, 500);
    lb_fdbudget_worker(&f.cfg, 256, 11, &b);
    ck_assert_uint_eq(b.max_connections, 118);
    ck_assert(b.lowered);
    assert_fits(&b);
}
END_TEST

START_TEST(test_worker_starved_and_invariant)
{
    struct fixture f;
    struct lb_fdbudget b;
    fixture_init(&f, 2, 32, false, 0);
    lb_fdbudget_worker(&f.cfg, 16, 11, &b);
    ck_assert_uint_eq(b.avail, 0);
    ck_assert_uint_eq(b.max_connections, 1);
    ck_assert_uint_eq(b.idle_max, 0);
    ck_assert(b.starved);
    for (unsigned limit = 21; limit < 5000; limit += 7) {
        for (unsigned conf = 0; conf < 3000; conf += 499) {
            fixture_init(&f, 4, 16, false, conf);
            lb_fdbudget_worker(&f.cfg, limit, 11, &b);
            ck_assert(!b.starved);
            assert_fits(&b);
            ck_assert(b.lowered == (conf != 0 && conf > b.max_connections));
        }
    }
}
END_TEST

START_TEST(test_control)
{
    struct fixture f;
    struct lb_fdbudget_control c;
    fixture_init(&f, 3, 32, true, 0);
    lb_fdbudget_control(&f.cfg, 256, 10, &c);
    ck_assert_uint_eq(c.health, 3);
    ck_assert_uint_eq(c.admin_max, 64);
    ck_assert(!c.lowered);

    /* 64 - 10 - 8 = 46, of which 3 stay for the probes. */
    lb_fdbudget_control(&f.cfg, 64, 10, &c);
    ck_assert_uint_eq(c.admin_max, 43);
    ck_assert(c.lowered);

    /* Nothing left: one admin connection all the same. */
    lb_fdbudget_control(&f.cfg, 20, 10, &c);
    ck_assert_uint_eq(c.admin_max, 1);
    ck_assert(c.lowered);

    /* Servers of pools without checks need no fd here. */
    fixture_init(&f, 3, 32, false, 0);
    lb_fdbudget_control(&f.cfg, 64, 10, &c);
    ck_assert_uint_eq(c.health, 0);
    ck_assert_uint_eq(c.admin_max, 46);
}
END_TEST

START_TEST(test_count_open)
{
    unsigned n = lb_fdbudget_count_open(0);
    ck_assert_uint_ge(n, 3);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    ck_assert_uint_eq(lb_fdbudget_count_open(0), n + 2);
    close(fds[0]);
    close(fds[1]);
    ck_assert_uint_eq(lb_fdbudget_count_open(0), n);
}
END_TEST

Suite *fdbudget_suite(void)
{
    Suite *s = suite_create("fdbudget");
    TCase *tc = tcase_create("budget");
    tcase_add_test(tc, test_worker_auto);
    tcase_add_test(tc, test_worker_configured);
    tcase_add_test(tc, test_worker_starved_and_invariant);
    tcase_add_test(tc, test_control);
    tcase_add_test(tc, test_count_open);
    suite_add_tcase(s, tc);
    return s;
}
