/* master/health.c: the exact rise/fall counting of active checks
 * (lb_health_record): an off-by-one would pass every end-to-end test.
 * Failed requests are the circuit breaker's (test_breaker.c), not health's. */
#include <check.h>
#include <stdatomic.h>
#include <string.h>

#include "master/health.h"
#include "shared/shm.h"
#include "tests/unit/suites.h"

static struct lb_shm_backend sb;

static struct lb_health_cfg check(unsigned rise, unsigned fall)
{
    return (struct lb_health_cfg){ .enabled = true, .path = "/h", .interval_ms = 1000,
                                   .timeout_ms = 1000, .rise = rise, .fall = fall,
                                   .expect_lo = 200, .expect_hi = 399 };
}

static bool is_up(void)
{
    return atomic_load(&sb.health) == LB_HEALTH_UP;
}

/* Feed the checks of SEQ ('P' pass, 'F' fail) and compare each result with
 * WANT ('+' went UP, '-' went DOWN, '.' no change). */
static void feed(const struct lb_health_cfg *cfg, const char *seq, const char *want)
{
    ck_assert_uint_eq(strlen(seq), strlen(want));
    for (size_t i = 0; seq[i] != '\0'; i++) {
        int rc = lb_health_record(&sb, cfg, seq[i] == 'P' ? NULL : "refused");
        char got = rc > 0 ? '+' : rc < 0 ? '-' : '.';
        ck_assert_msg(got == want[i], "rise %u fall %u: check %zu of %s gave %c, want %s",
                      cfg->rise, cfg->fall, i + 1, seq, got, want);
    }
}

static void fresh(void)
{
    memset(&sb, 0, sizeof(sb));        /* servers start UP */
}

START_TEST(test_fall_exact)
{
    /* fall = N: N-1 failures leave it UP, the Nth takes it DOWN. */
    for (unsigned fall = 1; fall <= 5; fall++) {
        struct lb_health_cfg cfg = check(2, fall);
        fresh();
        for (unsigned i = 1; i < fall; i++) {
            ck_assert_int_eq(lb_health_record(&sb, &cfg, "refused"), 0);
            ck_assert_msg(is_up(), "fall %u: DOWN after %u failures", fall, i);
        }
        ck_assert_int_eq(lb_health_record(&sb, &cfg, "refused"), -1);
        ck_assert(!is_up());
        ck_assert_uint_eq(atomic_load(&sb.down_reason), LB_DOWN_CHECK);
        ck_assert_uint_eq(atomic_load(&sb.check_failures), fall);
        /* Further failures change nothing (and are not announced again). */
        ck_assert_int_eq(lb_health_record(&sb, &cfg, "refused"), 0);
        ck_assert(!is_up());
    }
}
END_TEST

START_TEST(test_rise_exact)
{
    /* rise = N: from DOWN, N-1 passes leave it DOWN, the Nth brings it UP. */
    for (unsigned rise = 1; rise <= 5; rise++) {
        struct lb_health_cfg cfg = check(rise, 1);
        fresh();
        ck_assert_int_eq(lb_health_record(&sb, &cfg, "refused"), -1);
        for (unsigned i = 1; i < rise; i++) {
            ck_assert_int_eq(lb_health_record(&sb, &cfg, NULL), 0);
            ck_assert_msg(!is_up(), "rise %u: UP after %u passes", rise, i);
        }
        ck_assert_int_eq(lb_health_record(&sb, &cfg, NULL), 1);
        ck_assert(is_up());
        ck_assert_uint_eq(atomic_load(&sb.down_reason), LB_DOWN_NONE);
        ck_assert_uint_eq(atomic_load(&sb.check_successes), rise);
        ck_assert_int_eq(lb_health_record(&sb, &cfg, NULL), 0);
        ck_assert(is_up());
    }
}
END_TEST

START_TEST(test_fall1_rise1)
{
    struct lb_health_cfg cfg = check(1, 1);
    fresh();
    feed(&cfg, "PPF", "..-");
    feed(&cfg, "FP", ".+");
    feed(&cfg, "PF", ".-");
    feed(&cfg, "P", "+");
}
END_TEST

START_TEST(test_counts_reset_in_between)
{
    /* fall = 3: two failures then a pass start the count again. */
    struct lb_health_cfg cfg = check(2, 3);
    fresh();
    feed(&cfg, "FF", "..");
    ck_assert(is_up());
    feed(&cfg, "PFFPFF", "......");
    ck_assert(is_up());
    ck_assert_uint_eq(atomic_load(&sb.check_failures), 2);
    feed(&cfg, "F", "-");
    /* rise = 2: pass, fail, pass is not two in a row. */
    feed(&cfg, "PFP", "...");
    ck_assert(!is_up());
    ck_assert_uint_eq(atomic_load(&sb.check_successes), 1);
    feed(&cfg, "P", "+");
    /* Passes while UP do not shorten a later fall. */
    feed(&cfg, "PPPPP", ".....");
    feed(&cfg, "FFF", "..-");
}
END_TEST

START_TEST(test_record_counters)
{
    struct lb_health_cfg cfg = check(2, 2);
    fresh();
    feed(&cfg, "PPF", "...");
    ck_assert_uint_eq(atomic_load(&sb.checks_ok), 2);
    ck_assert_uint_eq(atomic_load(&sb.checks_failed), 1);
    ck_assert_uint_eq(atomic_load(&sb.check_successes), 0);
    ck_assert_uint_eq(atomic_load(&sb.check_failures), 1);
    ck_assert_uint_eq(atomic_load(&sb.last_change_ms), 0);     /* no change yet */
    ck_assert_uint_ne(atomic_load(&sb.last_check_ms), 0);
    ck_assert_int_eq(lb_health_record(&sb, &cfg, "status 500"), -1);
    ck_assert_uint_ne(atomic_load(&sb.last_change_ms), 0);
    char err[LB_ERROR_TEXT];
    lb_shm_error_get(&sb, err, sizeof(err));
    ck_assert_str_eq(err, "status 500");
    /* A pass keeps the last error: it tells why the server went DOWN. */
    feed(&cfg, "P", ".");
    lb_shm_error_get(&sb, err, sizeof(err));
    ck_assert_str_eq(err, "status 500");
}
END_TEST

Suite *health_suite(void)
{
    Suite *s = suite_create("health");
    TCase *tc = tcase_create("rise_fall");
    tcase_add_test(tc, test_fall_exact);
    tcase_add_test(tc, test_rise_exact);
    tcase_add_test(tc, test_fall1_rise1);
    tcase_add_test(tc, test_counts_reset_in_between);
    tcase_add_test(tc, test_record_counters);
    suite_add_tcase(s, tc);
    return s;
}
