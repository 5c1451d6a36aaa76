/* worker/upstream.c: the "auto" keep-alive policy's pure parts. */
#include <check.h>
#include <limits.h>

#include "tests/unit/suites.h"
#include "worker/upstream.h"

START_TEST(test_keep_next_follows_the_peak)
{
    /* A steady load keeps what it needs. */
    ck_assert_uint_eq(lb_upstream_keep_next(90, 90), 90);
    /* Never below the peak that just ended. */
    ck_assert_uint_eq(lb_upstream_keep_next(10, 9), 9);
    ck_assert_uint_eq(lb_upstream_keep_next(10, 7), 8);
    /* Halfway down toward a lower peak. */
    ck_assert_uint_eq(lb_upstream_keep_next(90, 30), 60);
    ck_assert_uint_eq(lb_upstream_keep_next(UINT_MAX, UINT_MAX - 2), UINT_MAX - 1);
    /* No load: 40 idle connections are all gone after six ticks. */
    unsigned keep = 40, ticks = 0;
    while (keep > 0 && ticks < 100) {
        keep = lb_upstream_keep_next(keep, 0);
        ticks++;
    }
    ck_assert_uint_eq(keep, 0);
    ck_assert_uint_eq(ticks, 6);
}
END_TEST

Suite *upstream_suite(void)
{
    Suite *s = suite_create("upstream");
    TCase *tc = tcase_create("upstream");
    tcase_add_test(tc, test_keep_next_follows_the_peak);
    suite_add_tcase(s, tc);
    return s;
}
