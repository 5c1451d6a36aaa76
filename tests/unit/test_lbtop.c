/* lbtop/sample.c: quantiles from the duration histogram, a sample of a
 * segment (active entries only, counters summed over slots), matching an
 * entity with the previous sample for rates. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "lbtop/sample.c"       /* not part of lbd: compiled in here */
#include "tests/unit/suites.h"

START_TEST(test_quantile)
{
    uint64_t b[LB_DURATION_BUCKETS] = { 0 };
    ck_assert(lb_top_quantile_ms(b, 0.5) < 0);          /* empty */
    b[0] = 10;                                          /* all under 5 ms */
    ck_assert_double_eq_tol(lb_top_quantile_ms(b, 0.5), 2.5, 1e-9);
    ck_assert_double_eq_tol(lb_top_quantile_ms(b, 0.99), 4.95, 1e-9);
    b[0] = 50;
    b[1] = 50;                                          /* 5-10 ms */
    ck_assert_double_eq_tol(lb_top_quantile_ms(b, 0.5), 5.0, 1e-9);
    ck_assert_double_eq_tol(lb_top_quantile_ms(b, 0.99), 9.9, 1e-9);
    memset(b, 0, sizeof(b));
    b[LB_DURATION_BUCKETS - 1] = 3;                     /* +Inf: its lower bound */
    ck_assert_double_eq_tol(lb_top_quantile_ms(b, 0.5), 10000.0, 1e-9);
}
END_TEST

static void cfg_one_pool(struct lb_config *cfg, struct lb_pool_cfg *pool,
                         struct lb_server_cfg *servers, const char *const *addresses, size_t n)
{
    memset(cfg, 0, sizeof(*cfg));
    memset(pool, 0, sizeof(*pool));
    snprintf(pool->name, sizeof(pool->name), "web");
    pool->servers = servers;
    for (size_t i = 0; i < n; i++) {
        memset(&servers[i], 0, sizeof(servers[i]));
        snprintf(servers[i].address, sizeof(servers[i].address), "%s", addresses[i]);
        servers[i].weight = (unsigned)i + 1;
    }
    pool->nservers = n;
    cfg->pools = pool;
    cfg->npools = 1;
}

START_TEST(test_sample_and_rates)
{
    static struct lb_top_sample s1, s2;
    static struct lb_config cfg;
    static struct lb_pool_cfg pool;
    static struct lb_server_cfg servers[2];
    static const char *const two[] = { "127.0.0.1:1", "127.0.0.1:2" };
    struct lb_shm shm;
    char err[256];
    ck_assert_msg(lb_shm_create(&shm) == 0, "lb_shm_create: %s", strerror(errno));
    struct lb_shm_header *h = shm.hdr;
    cfg_one_pool(&cfg, &pool, servers, two, 2);
    ck_assert_int_eq(lb_shm_assign(h, &cfg, 1, err, sizeof(err)), 0);
    /* Two worker slots, each with its share of server 2's requests. */
    int a = lb_shm_slot_take(h, 0, 1), b = lb_shm_slot_take(h, 1, 1);
    ck_assert(a >= 0 && b >= 0);
    unsigned id2 = UINT32_MAX;
    for (unsigned i = 0; i < h->max_backends; i++)
        if (atomic_load(&lb_shm_backend(h, i)->state) == LB_ENTRY_ACTIVE &&
            strcmp(lb_shm_backend(h, i)->address, "127.0.0.1:2") == 0)
            id2 = i;
    ck_assert_uint_ne(id2, UINT32_MAX);
    lb_counter_add(&lb_shm_stats(h, (unsigned)a, id2)->requests, 7);
    lb_counter_add(&lb_shm_stats(h, (unsigned)b, id2)->requests, 5);
    lb_counter_add(&lb_shm_stats(h, (unsigned)b, id2)->responses[4], 2);
    lb_counter_add(&lb_shm_worker(h, (unsigned)a)->requests, 7);
    atomic_store(&lb_shm_backend(h, id2)->health, LB_HEALTH_DOWN);

    lb_top_sample_take(h, &s1);
    ck_assert_uint_eq(s1.nservers, 2);
    ck_assert_uint_eq(s1.nworkers, 2);
    const struct lb_top_server *v =
        strcmp(s1.servers[0].address, "127.0.0.1:2") == 0 ? &s1.servers[0] : &s1.servers[1];
    ck_assert_str_eq(v->address, "127.0.0.1:2");
    ck_assert_str_eq(v->pool, "web");
    ck_assert_uint_eq(v->requests, 12);
    ck_assert_uint_eq(v->r5xx, 2);
    ck_assert_uint_eq(v->weight, 2);
    ck_assert(!v->up);

    /* A reload without server 1: it is retired, not shown; server 2
     * keeps its id, so the new sample finds its previous counts. */
    cfg_one_pool(&cfg, &pool, servers, two + 1, 1);
    ck_assert_int_eq(lb_shm_assign(h, &cfg, 2, err, sizeof(err)), 0);
    lb_counter_add(&lb_shm_stats(h, (unsigned)a, id2)->requests, 3);
    lb_top_sample_take(h, &s2);
    ck_assert_uint_eq(s2.nservers, 1);
    const struct lb_top_server *p = NULL;
    ck_assert(lb_top_server_prev(&s1, &s2.servers[0], &p));
    ck_assert_uint_eq(s2.servers[0].requests - p->requests, 3);
    /* No previous sample (first frame, another segment): no rates. */
    s1.taken_ms = 0;
    ck_assert(!lb_top_server_prev(&s1, &s2.servers[0], &p));
    lb_shm_close(&shm);
}
END_TEST

Suite *lbtop_suite(void)
{
    Suite *s = suite_create("lbtop");
    TCase *tc = tcase_create("sample");
    tcase_add_test(tc, test_quantile);
    tcase_add_test(tc, test_sample_and_rates);
    suite_add_tcase(s, tc);
    return s;
}
