/* The steering program's choice (bpf/steer.h, shared by the program and the
 * master): the hash of a client address, and the slots the master deals to
 * the live workers. A sk_reuseport program cannot be run by
 * BPF_PROG_TEST_RUN; tests/e2e/test_steering.py checks that the kernel
 * picks what this code predicts. */
#include <arpa/inet.h>
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "bpf/steer.h"
#include "master/steer.h"
#include "tests/unit/suites.h"

static unsigned choose4(const uint8_t *ring, const char *ip)
{
    uint32_t w[4];
    ck_assert_int_eq(inet_pton(AF_INET, ip, w), 1);
    return lb_steer_choose(ring, w, 1);
}

static unsigned owned(const uint8_t *ring, unsigned k)
{
    unsigned n = 0;
    for (unsigned s = 0; s < LB_STEER_SLOTS; s++)
        n += ring[s] == k;
    return n;
}

START_TEST(test_steer_only_live_workers)
{
    uint8_t ring[LB_STEER_SLOTS];
    uint64_t live = (1u << 1) | (1u << 5) | (1ULL << 63);
    lb_steer_fill(ring, live);
    for (unsigned s = 0; s < LB_STEER_SLOTS; s++)
        ck_assert(live & (1ULL << ring[s]));
    lb_steer_fill(ring, 1u << 7);
    ck_assert_uint_eq(owned(ring, 7), LB_STEER_SLOTS);
}
END_TEST

/* Four workers share the slots about evenly (what the e2e spread test
 * needs: no worker over twice the mean). */
START_TEST(test_steer_balance)
{
    uint8_t ring[LB_STEER_SLOTS];
    for (unsigned n = 2; n <= 16; n++) {
        lb_steer_fill(ring, (1ULL << n) - 1);
        unsigned mean = LB_STEER_SLOTS / n;
        for (unsigned k = 0; k < n; k++) {
            ck_assert_msg(owned(ring, k) > mean * 6 / 10 && owned(ring, k) < mean * 14 / 10,
                          "%u workers: worker %u owns %u slots", n, k, owned(ring, k));
        }
    }
}
END_TEST

/* A worker that goes moves only its own slots; when it is back, every
 * slot is as before (its clients return); one added takes only slots. */
START_TEST(test_steer_consistent)
{
    uint8_t all[LB_STEER_SLOTS], less[LB_STEER_SLOTS], again[LB_STEER_SLOTS],
        more[LB_STEER_SLOTS];
    lb_steer_fill(all, 0xf);
    lb_steer_fill(less, 0xf & ~(1u << 2));
    lb_steer_fill(again, 0xf);
    lb_steer_fill(more, 0x1f);
    unsigned moved_to_new = 0;
    for (unsigned s = 0; s < LB_STEER_SLOTS; s++) {
        if (all[s] != 2)
            ck_assert_uint_eq(less[s], all[s]);
        ck_assert_uint_eq(again[s], all[s]);
        if (more[s] != all[s]) {
            ck_assert_uint_eq(more[s], 4);
            moved_to_new++;
        }
    }
    ck_assert_uint_gt(moved_to_new, LB_STEER_SLOTS / 5 * 6 / 10);
    ck_assert_uint_lt(moved_to_new, LB_STEER_SLOTS / 5 * 14 / 10);
}
END_TEST

/* The hash of an address is fixed (the program computes the same in the
 * kernel, the e2e test in Python): IPv4 in one word, IPv6 in four, both in
 * network byte order. */
START_TEST(test_steer_hash_vectors)
{
    uint32_t w4[4] = { 0 }, w6[4];
    ck_assert_int_eq(inet_pton(AF_INET, "127.0.0.1", w4), 1);
    ck_assert_int_eq(inet_pton(AF_INET6, "::1", w6), 1);
    ck_assert_uint_eq(lb_steer_hash_addr(w4, 1), 0xf6ee35a4u);
    ck_assert_uint_eq(lb_steer_hash_addr(w6, 4), 0xd5751ca9u);
    /* Four workers: the choice for a few addresses, as the kernel makes it. */
    uint8_t ring[LB_STEER_SLOTS];
    lb_steer_fill(ring, 0xf);
    ck_assert_uint_eq(choose4(ring, "127.0.1.1"), 0);
    ck_assert_uint_eq(choose4(ring, "127.0.2.2"), 1);
    ck_assert_uint_eq(choose4(ring, "127.0.18.18"), 3);
    /* Addresses spread: 1000 of them over 4 workers. */
    unsigned per[4] = { 0 };
    for (unsigned i = 0; i < 1000; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.%u.%u.%u", i >> 8, i & 255, (i * 7) & 255);
        per[choose4(ring, ip)]++;
    }
    for (unsigned k = 0; k < 4; k++)
        ck_assert_msg(per[k] > 150 && per[k] < 350, "worker %u: %u of 1000", k, per[k]);
}
END_TEST

Suite *steer_suite(void)
{
    Suite *s = suite_create("steer");
    TCase *tc = tcase_create("steer");
    tcase_add_test(tc, test_steer_only_live_workers);
    tcase_add_test(tc, test_steer_balance);
    tcase_add_test(tc, test_steer_consistent);
    tcase_add_test(tc, test_steer_hash_vectors);
    suite_add_tcase(s, tc);
    return s;
}
