/* worker/freelist.c: per-worker free lists with a cap. */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "tests/unit/suites.h"
#include "worker/freelist.h"

struct obj {
    void *link;
    char bytes[40];
};

static bool lb_all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return false;
    return true;
}

START_TEST(test_freelist_reuses_zeroed)
{
    struct lb_freelist l = LB_FREELIST_INIT(sizeof(struct obj), 4);
    struct obj *a = lb_freelist_take(&l);
    ck_assert_ptr_nonnull(a);
    memset(a, 0xab, sizeof(*a));
    lb_freelist_put(&l, a);
    ck_assert_uint_eq(l.count, 1);
    struct obj *b = lb_freelist_take(&l);
    ck_assert_ptr_eq(b, a);                     /* the warm one comes back */
    ck_assert(lb_all_zero(b, sizeof(*b)));      /* link and data cleared */
    ck_assert_uint_eq(l.count, 0);
    lb_freelist_put(&l, NULL);                  /* nothing to give back */
    ck_assert_uint_eq(l.count, 0);
    lb_freelist_put(&l, b);
    lb_freelist_clear(&l);
}
END_TEST

START_TEST(test_freelist_keeps_at_most_max)
{
    struct lb_freelist l = LB_FREELIST_INIT(sizeof(struct obj), 3);
    struct obj *o[8];
    for (int i = 0; i < 8; i++)
        ck_assert_ptr_nonnull(o[i] = lb_freelist_take(&l));
    for (int i = 0; i < 8; i++)
        lb_freelist_put(&l, o[i]);              /* five go back to malloc */
    ck_assert_uint_eq(l.count, 3);
    /* The three kept are the first three given back, newest first. */
    ck_assert_ptr_eq(lb_freelist_take(&l), o[2]);
    ck_assert_ptr_eq(lb_freelist_take(&l), o[1]);
    ck_assert_ptr_eq(lb_freelist_take(&l), o[0]);
    ck_assert_uint_eq(l.count, 0);
    ck_assert_ptr_null(l.head);
    lb_freelist_put(&l, o[0]);
    lb_freelist_put(&l, o[1]);
    lb_freelist_put(&l, o[2]);
    lb_freelist_clear(&l);
    ck_assert_uint_eq(l.count, 0);
    ck_assert_ptr_null(l.head);
}
END_TEST

Suite *freelist_suite(void)
{
    Suite *s = suite_create("freelist");
    TCase *tc = tcase_create("freelist");
    tcase_add_test(tc, test_freelist_reuses_zeroed);
    tcase_add_test(tc, test_freelist_keeps_at_most_max);
    suite_add_tcase(s, tc);
    return s;
}
