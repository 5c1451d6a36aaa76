/* shared/shm.c: the segment, stable ids across configurations, worker
 * slots, summing, attaching read-only. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "master/snapshot.h"
#include "shared/json.h"
#include "shared/shm.h"
#include "shared/version.h"
#include "tests/unit/suites.h"

/* ---- hand-built configurations ------------------------------------------------- */

#define MAXS 8

struct test_cfg {
    struct lb_config cfg;
    struct lb_pool_cfg pools[4];
    struct lb_server_cfg servers[4][MAXS];
};

/* POOLS: pool names; SERVERS[i]: NULL-terminated "address" list of pool i
 * (weight = position + 1). */
static void build(struct test_cfg *t, const char *const *pools, size_t npools,
                  const char *const servers[][MAXS])
{
    memset(t, 0, sizeof(*t));
    for (size_t i = 0; i < npools; i++) {
        struct lb_pool_cfg *p = &t->pools[i];
        snprintf(p->name, sizeof(p->name), "%s", pools[i]);
        p->servers = t->servers[i];
        for (size_t j = 0; j < MAXS && servers[i][j] != NULL; j++) {
            snprintf(p->servers[j].address, sizeof(p->servers[j].address), "%s", servers[i][j]);
            p->servers[j].weight = (unsigned)j + 1;
            p->nservers++;
        }
    }
    t->cfg.pools = t->pools;
    t->cfg.npools = npools;
}

static struct lb_server_cfg *server(struct test_cfg *t, const char *pool, const char *address)
{
    for (size_t i = 0; i < t->cfg.npools; i++)
        for (size_t j = 0; j < t->pools[i].nservers; j++)
            if (strcmp(t->pools[i].name, pool) == 0 &&
                strcmp(t->pools[i].servers[j].address, address) == 0)
                return &t->pools[i].servers[j];
    ck_abort_msg("test bug: no server %s in %s", address, pool);
    return NULL;
}

static struct lb_shm shm;

static void shm_setup(void)
{
    ck_assert_msg(lb_shm_create(&shm) == 0, "lb_shm_create: %s", strerror(errno));
}

static void shm_teardown(void)
{
    lb_shm_close(&shm);
}

static void assign(struct test_cfg *t, uint64_t gen)
{
    char err[256] = "";
    ck_assert_msg(lb_shm_assign(shm.hdr, &t->cfg, gen, err, sizeof(err)) == 0, "assign: %s", err);
}

/* ---- create ------------------------------------------------------------------------ */

START_TEST(test_create)
{
    const struct lb_shm_header *h = shm.hdr;
    ck_assert_int_ge(shm.fd, 0);
    ck_assert_ptr_eq(shm.base, (void *)h);
    ck_assert_uint_eq(h->magic, LB_SHM_MAGIC);
    ck_assert_uint_eq(h->layout_version, lb_shm_layout_version);
    ck_assert_uint_eq(h->header_size, sizeof(*h));
    ck_assert_uint_eq(h->size, shm.size);
    ck_assert_uint_eq(h->size % 4096, 0);
    ck_assert_uint_eq(h->max_slots, LB_SHM_MAX_SLOTS);
    ck_assert_uint_eq(h->max_pools, LB_SHM_MAX_POOLS);
    ck_assert_uint_eq(h->max_backends, LB_SHM_MAX_BACKENDS);
    ck_assert_uint_eq(h->max_workers, LB_MAX_WORKERS);
    ck_assert_int_eq(atomic_load(&h->master_pid), getpid());
    ck_assert_uint_eq(atomic_load(&h->generation), 0);
    ck_assert_uint_eq(atomic_load(&h->slots_used), 0);
    ck_assert_uint_gt(atomic_load(&h->started_ms), 0);

    /* Regions in order, cache-line aligned, inside the segment. */
    ck_assert_uint_ge(h->off_workers, sizeof(*h));
    ck_assert_uint_eq(h->off_workers % LB_CACHELINE, 0);
    ck_assert_uint_eq(h->off_pools % LB_CACHELINE, 0);
    ck_assert_uint_eq(h->off_backends % LB_CACHELINE, 0);
    ck_assert_uint_eq(h->off_stats % LB_CACHELINE, 0);
    ck_assert_uint_ge(h->off_pools, h->off_workers + sizeof(struct lb_shm_worker) * LB_SHM_MAX_SLOTS);
    ck_assert_uint_ge(h->off_backends, h->off_pools + sizeof(struct lb_shm_pool) * LB_SHM_MAX_POOLS);
    ck_assert_uint_ge(h->off_stats, h->off_backends + sizeof(struct lb_shm_backend) * LB_SHM_MAX_BACKENDS);
    const char *end = (const char *)h + h->size;
    ck_assert((const char *)(lb_shm_stats(h, LB_SHM_MAX_SLOTS - 1, LB_SHM_MAX_BACKENDS - 1) + 1) <= end);
    /* Rows of different slots never share a cache line. */
    ck_assert_uint_eq(((const char *)lb_shm_stats(h, 1, 0) - (const char *)h) % LB_CACHELINE, 0);
    ck_assert_uint_eq(((uintptr_t)lb_shm_worker(h, 1)) % LB_CACHELINE, 0);

    /* Everything starts FREE and zero; the whole segment is writable. */
    for (unsigned i = 0; i < LB_SHM_MAX_BACKENDS; i++)
        ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, i)->state), LB_ENTRY_FREE);
    lb_counter_add(&lb_shm_stats(h, LB_SHM_MAX_SLOTS - 1, LB_SHM_MAX_BACKENDS - 1)->failures, 3);
    ck_assert_uint_eq(lb_counter_get(&lb_shm_stats(h, LB_SHM_MAX_SLOTS - 1, LB_SHM_MAX_BACKENDS - 1)->failures), 3);

    lb_shm_close(&shm);
    ck_assert_int_eq(shm.fd, -1);
    ck_assert_ptr_null(shm.base);
    ck_assert_ptr_null(shm.hdr);
    lb_shm_close(&shm);     /* twice is harmless */
}
END_TEST

/* ---- stable ids ------------------------------------------------------------------- */

static const char *const pools1[] = { "web", "api" };
static const char *const servers1[][MAXS] = {
    { "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", NULL },
    { "127.0.0.1:9101", "127.0.0.1:9001", NULL },
};
/* web loses 9002, reorders; api gains 9102; pool "new" appears first. */
static const char *const pools2[] = { "new", "web", "api" };
static const char *const servers2[][MAXS] = {
    { "[::1]:9201", NULL },
    { "127.0.0.1:9003", "127.0.0.1:9001", NULL },
    { "127.0.0.1:9101", "127.0.0.1:9001", "127.0.0.1:9102", NULL },
};

START_TEST(test_assign_first)
{
    static struct test_cfg t;
    build(&t, pools1, 2, servers1);
    assign(&t, 1);
    const struct lb_shm_header *h = shm.hdr;

    /* Distinct ids; the same address in two pools is two backends. */
    uint32_t ids[5];
    size_t n = 0;
    for (size_t i = 0; i < 2; i++) {
        const struct lb_pool_cfg *p = &t.pools[i];
        const struct lb_shm_pool *sp = lb_shm_pool(h, p->shm_id);
        ck_assert_uint_lt(p->shm_id, LB_SHM_MAX_POOLS);
        ck_assert_uint_eq(atomic_load(&sp->state), LB_ENTRY_ACTIVE);
        ck_assert_str_eq(sp->name, p->name);
        for (size_t j = 0; j < p->nservers; j++) {
            const struct lb_server_cfg *s = &p->servers[j];
            const struct lb_shm_backend *b = lb_shm_backend(h, s->shm_id);
            ck_assert_uint_lt(s->shm_id, LB_SHM_MAX_BACKENDS);
            ck_assert_uint_eq(atomic_load(&b->state), LB_ENTRY_ACTIVE);
            ck_assert_str_eq(b->pool, p->name);
            ck_assert_str_eq(b->address, s->address);
            ck_assert_uint_eq(b->pool_id, p->shm_id);
            ck_assert_uint_eq(atomic_load(&b->weight), s->weight);
            for (size_t k = 0; k < n; k++)
                ck_assert_uint_ne(ids[k], s->shm_id);
            ids[n++] = s->shm_id;
        }
    }
    ck_assert_uint_ne(t.pools[0].shm_id, t.pools[1].shm_id);

    /* The same configuration again: the same ids, nothing retired. */
    static struct test_cfg again;
    build(&again, pools1, 2, servers1);
    assign(&again, 2);
    for (size_t i = 0; i < 2; i++) {
        ck_assert_uint_eq(again.pools[i].shm_id, t.pools[i].shm_id);
        for (size_t j = 0; j < t.pools[i].nservers; j++) {
            ck_assert_uint_eq(again.pools[i].servers[j].shm_id, t.pools[i].servers[j].shm_id);
            ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, t.pools[i].servers[j].shm_id)->state),
                              LB_ENTRY_ACTIVE);
        }
    }
}
END_TEST

START_TEST(test_assign_stable_and_retire)
{
    struct lb_shm_header *h = shm.hdr;
    static struct test_cfg t1, t2;
    build(&t1, pools1, 2, servers1);
    assign(&t1, 1);
    ck_assert_int_eq(lb_shm_slot_take(h, 0, 1), 0);

    /* Traffic on every backend of generation 1. */
    for (size_t i = 0; i < 2; i++)
        for (size_t j = 0; j < t1.pools[i].nservers; j++)
            lb_counter_add(&lb_shm_stats(h, 0, t1.pools[i].servers[j].shm_id)->requests, 10 + j);

    build(&t2, pools2, 3, servers2);
    /* A new weight is published with the same id. */
    server(&t2, "web", "127.0.0.1:9001")->weight = 7;
    assign(&t2, 2);

    /* Same pool + address: same id. */
    ck_assert_uint_eq(t2.pools[1].shm_id, t1.pools[0].shm_id);
    ck_assert_uint_eq(t2.pools[2].shm_id, t1.pools[1].shm_id);
    static const char *const kept[][2] = {
        { "web", "127.0.0.1:9001" }, { "web", "127.0.0.1:9003" },
        { "api", "127.0.0.1:9101" }, { "api", "127.0.0.1:9001" },
    };
    for (size_t k = 0; k < LB_ARRAY_SIZE(kept); k++) {
        uint32_t id1 = server(&t1, kept[k][0], kept[k][1])->shm_id;
        uint32_t id2 = server(&t2, kept[k][0], kept[k][1])->shm_id;
        ck_assert_msg(id1 == id2, "%s %s: id %u became %u", kept[k][0], kept[k][1], id1, id2);
        ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, id2)->state), LB_ENTRY_ACTIVE);
        /* Its counters carry on. */
        struct lb_backend_totals tot;
        lb_shm_backend_sum(h, id2, &tot);
        ck_assert_uint_ge(tot.requests, 10);
    }
    ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, server(&t2, "web", "127.0.0.1:9001")->shm_id)->weight), 7);
    ck_assert_uint_eq(lb_shm_backend(h, server(&t2, "web", "127.0.0.1:9001")->shm_id)->pool_id,
                      t2.pools[1].shm_id);

    /* The removed server is RETIRED, marked with the new generation. */
    uint32_t gone = server(&t1, "web", "127.0.0.1:9002")->shm_id;
    const struct lb_shm_backend *b = lb_shm_backend(h, gone);
    ck_assert_uint_eq(atomic_load(&b->state), LB_ENTRY_RETIRED);
    ck_assert_uint_eq(b->retired_gen, 2);
    ck_assert_str_eq(b->address, "127.0.0.1:9002");

    /* New servers and pools got ids of their own, not the retired one. */
    uint32_t fresh[] = {
        server(&t2, "api", "127.0.0.1:9102")->shm_id,
        server(&t2, "new", "[::1]:9201")->shm_id,
    };
    for (size_t k = 0; k < LB_ARRAY_SIZE(fresh); k++) {
        ck_assert_uint_ne(fresh[k], gone);
        for (size_t i = 0; i < 2; i++)
            for (size_t j = 0; j < t1.pools[i].nservers; j++)
                ck_assert_uint_ne(fresh[k], t1.pools[i].servers[j].shm_id);
        struct lb_backend_totals tot;
        lb_shm_backend_sum(h, fresh[k], &tot);
        ck_assert_uint_eq(tot.requests, 0);
    }
    ck_assert_uint_ne(t2.pools[0].shm_id, t1.pools[0].shm_id);
    ck_assert_uint_ne(t2.pools[0].shm_id, t1.pools[1].shm_id);

    /* Reclaim: not while a generation older than the retirement lives. */
    lb_shm_reclaim(h, 1);
    ck_assert_uint_eq(atomic_load(&b->state), LB_ENTRY_RETIRED);
    lb_shm_reclaim(h, 2);
    ck_assert_uint_eq(atomic_load(&b->state), LB_ENTRY_FREE);
    /* Active entries are never reclaimed. */
    lb_shm_reclaim(h, 100);
    for (size_t k = 0; k < LB_ARRAY_SIZE(kept); k++)
        ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, server(&t2, kept[k][0], kept[k][1])->shm_id)->state),
                          LB_ENTRY_ACTIVE);

    /* Generation 3 adds a server: it reuses the freed id (the lowest free
     * one) and its statistics start from zero, not from 9002's. */
    struct lb_backend_totals tot;
    lb_shm_backend_sum(h, gone, &tot);
    ck_assert_uint_eq(tot.requests, 11);       /* still there until reused */
    static struct test_cfg t3;
    static const char *const servers3[][MAXS] = {
        { "[::1]:9201", NULL },
        { "127.0.0.1:9003", "127.0.0.1:9001", "127.0.0.1:9999", NULL },
        { "127.0.0.1:9101", "127.0.0.1:9001", "127.0.0.1:9102", NULL },
    };
    build(&t3, pools2, 3, servers3);
    assign(&t3, 3);
    uint32_t reused = server(&t3, "web", "127.0.0.1:9999")->shm_id;
    ck_assert_uint_eq(reused, gone);
    ck_assert_uint_eq(atomic_load(&b->state), LB_ENTRY_ACTIVE);
    ck_assert_str_eq(b->address, "127.0.0.1:9999");
    ck_assert_str_eq(b->pool, "web");
    lb_shm_backend_sum(h, reused, &tot);
    ck_assert_uint_eq(tot.requests, 0);
    ck_assert_uint_eq(tot.bytes_in, 0);
    ck_assert_uint_eq(tot.failures, 0);
}
END_TEST

START_TEST(test_assign_readd_before_reclaim)
{
    /* A server removed and put back before its id is reclaimed gets the same
     * id back, counters included. */
    struct lb_shm_header *h = shm.hdr;
    static struct test_cfg t1, t2, t3;
    build(&t1, pools1, 2, servers1);
    assign(&t1, 1);
    ck_assert_int_eq(lb_shm_slot_take(h, 0, 1), 0);
    uint32_t id = server(&t1, "web", "127.0.0.1:9002")->shm_id;
    lb_counter_add(&lb_shm_stats(h, 0, id)->requests, 5);

    build(&t2, pools2, 3, servers2);
    assign(&t2, 2);
    ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, id)->state), LB_ENTRY_RETIRED);

    build(&t3, pools1, 2, servers1);
    assign(&t3, 3);
    ck_assert_uint_eq(server(&t3, "web", "127.0.0.1:9002")->shm_id, id);
    ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, id)->state), LB_ENTRY_ACTIVE);
    struct lb_backend_totals tot;
    lb_shm_backend_sum(h, id, &tot);
    ck_assert_uint_eq(tot.requests, 5);
    /* ... and reclaim leaves it alone. */
    lb_shm_reclaim(h, 3);
    ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, id)->state), LB_ENTRY_ACTIVE);
    /* Pool "new" of generation 2 is gone in generation 3. */
    const struct lb_shm_pool *np = lb_shm_pool(h, t2.pools[0].shm_id);
    ck_assert_uint_eq(atomic_load(&np->state), LB_ENTRY_FREE);
}
END_TEST

START_TEST(test_assign_breakers)
{
    /* Reloads keep breaker state while the pool has a breaker, reset it when
     * the breaker goes, and recount the pool's open breakers either way. */
    struct lb_shm_header *h = shm.hdr;
    static struct test_cfg t1, t2, t3;
    build(&t1, pools1, 2, servers1);
    t1.pools[0].breaker.enabled = true;
    assign(&t1, 1);
    struct lb_shm_backend *b = lb_shm_backend(h, server(&t1, "web", "127.0.0.1:9002")->shm_id);
    struct lb_shm_pool *web = lb_shm_pool(h, t1.pools[0].shm_id);
    uint64_t open = LB_BRK_WORD(LB_BREAKER_OPEN, 0, 0, 123456);
    atomic_store(&b->breaker, open);
    atomic_store(&b->fails_in_row, 7);
    atomic_store(&web->breakers_open, 5);         /* drifted */

    build(&t2, pools1, 2, servers1);
    t2.pools[0].breaker.enabled = true;
    assign(&t2, 2);
    ck_assert_uint_eq(atomic_load(&b->breaker), open);
    ck_assert_uint_eq(atomic_load(&web->breakers_open), 1);

    ck_assert_uint_eq(atomic_load(&b->usable_ms), 0);

    build(&t3, pools1, 2, servers1);
    uint64_t before = lb_now_ms();
    assign(&t3, 3);
    ck_assert_uint_eq(atomic_load(&b->breaker), 0);
    ck_assert_uint_eq(atomic_load(&b->fails_in_row), 0);
    ck_assert_uint_eq(atomic_load(&web->breakers_open), 0);
    ck_assert_uint_ge(atomic_load(&b->usable_ms), before);     /* back in rotation: ramps */
}
END_TEST

START_TEST(test_assign_limits_and_slow_start)
{
    /* max_requests, the queue's size and slow_start reach the segment; the
     * slow start stamp is set by what a reload brings into rotation (a new
     * server, one back from weight 0 or from removal, one a dropped health
     * check brings UP), never at the first start, and kept otherwise. */
    struct lb_shm_header *h = shm.hdr;
    static struct test_cfg t1, t2, t3, t4, t5;
    build(&t1, pools1, 2, servers1);
    server(&t1, "web", "127.0.0.1:9001")->max_requests = 7;
    server(&t1, "web", "127.0.0.1:9003")->weight = 0;
    t1.pools[0].queue.size = 33;
    t1.pools[0].slow_start_ms = 30000;
    t1.pools[0].health.enabled = true;
    assign(&t1, 1);
    struct lb_shm_backend *b1 = lb_shm_backend(h, server(&t1, "web", "127.0.0.1:9001")->shm_id);
    struct lb_shm_backend *b2 = lb_shm_backend(h, server(&t1, "web", "127.0.0.1:9002")->shm_id);
    struct lb_shm_backend *b3 = lb_shm_backend(h, server(&t1, "web", "127.0.0.1:9003")->shm_id);
    struct lb_shm_pool *web = lb_shm_pool(h, t1.pools[0].shm_id);
    ck_assert_uint_eq(atomic_load(&b1->max_requests), 7);
    ck_assert_uint_eq(atomic_load(&b2->max_requests), 0);
    ck_assert_uint_eq(atomic_load(&web->queue_size), 33);
    ck_assert_uint_eq(atomic_load(&web->slow_start_ms), 30000);
    for (size_t i = 0; i < 2; i++)
        for (size_t j = 0; j < t1.pools[i].nservers; j++)
            ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, t1.pools[i].servers[j].shm_id)->usable_ms), 0);

    /* Generation 2: 9003 gets weight, 9002 goes DOWN by its check and is
     * removed; the limit changes. */
    atomic_store(&b2->health, LB_HEALTH_DOWN);
    build(&t2, pools1, 2, servers1);
    t2.pools[0].servers[1] = t2.pools[0].servers[2];        /* drop 9002 */
    t2.pools[0].nservers = 2;
    server(&t2, "web", "127.0.0.1:9001")->max_requests = 9;
    t2.pools[0].health.enabled = true;
    uint64_t before = lb_now_ms();
    assign(&t2, 2);
    ck_assert_uint_eq(atomic_load(&b1->max_requests), 9);
    ck_assert_uint_eq(atomic_load(&b1->usable_ms), 0);
    ck_assert_uint_ge(atomic_load(&b3->usable_ms), before);
    ck_assert_uint_eq(atomic_load(&b2->state), LB_ENTRY_RETIRED);
    ck_assert_uint_eq(atomic_load(&web->slow_start_ms), 0);

    /* Generation 3: 9002 back before its id is reclaimed (still DOWN: its
     * check decides, the stamp says when it was added); the others keep
     * their stamps. */
    atomic_store(&b3->usable_ms, 5);
    build(&t3, pools1, 2, servers1);
    t3.pools[0].health.enabled = true;
    before = lb_now_ms();
    assign(&t3, 3);
    ck_assert_uint_ge(atomic_load(&b2->usable_ms), before);
    ck_assert_uint_eq(atomic_load(&b3->usable_ms), 5);
    ck_assert_uint_eq(atomic_load(&b1->usable_ms), 0);

    /* Generation 4: the health check goes, 9002 is UP: its ramp starts. */
    atomic_store(&b2->usable_ms, 5);
    build(&t4, pools1, 2, servers1);
    before = lb_now_ms();
    assign(&t4, 4);
    ck_assert_uint_eq(atomic_load(&b2->health), LB_HEALTH_UP);
    ck_assert_uint_ge(atomic_load(&b2->usable_ms), before);
    ck_assert_uint_eq(atomic_load(&b1->usable_ms), 0);

    /* Generation 5: weight 0 is no ramp; a server new to the segment is. */
    atomic_store(&b2->usable_ms, 5);
    static const char *const more[][MAXS] = {
        { "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", "127.0.0.1:9004", NULL },
        { "127.0.0.1:9101", "127.0.0.1:9001", NULL },
    };
    build(&t5, pools1, 2, more);
    server(&t5, "web", "127.0.0.1:9002")->weight = 0;
    before = lb_now_ms();
    assign(&t5, 5);
    ck_assert_uint_eq(atomic_load(&b2->usable_ms), 5);
    ck_assert_uint_ge(atomic_load(&lb_shm_backend(h, server(&t5, "web", "127.0.0.1:9004")->shm_id)->usable_ms),
                      before);
}
END_TEST

START_TEST(test_slot_release_queue)
{
    /* A worker that dies with requests in a pool's queue: the master takes
     * its share out of the pool's depth, leaves the others' alone. */
    struct lb_shm_header *h = shm.hdr;
    ck_assert_int_eq(lb_shm_slot_take(h, 0, 1), 0);
    ck_assert_int_eq(lb_shm_slot_take(h, 1, 1), 1);
    struct lb_shm_pool *p3 = lb_shm_pool(h, 3), *p200 = lb_shm_pool(h, 200);
    atomic_store(&p3->queue_depth, 5);
    atomic_store(&lb_shm_worker(h, 0)->queued[3], 2);
    atomic_store(&lb_shm_worker(h, 1)->queued[3], 3);
    atomic_store(&p200->queue_depth, 4);
    atomic_store(&lb_shm_worker(h, 1)->queued[200], 4);
    lb_shm_slot_release(h, 1);
    ck_assert_uint_eq(atomic_load(&p3->queue_depth), 2);
    ck_assert_uint_eq(atomic_load(&p200->queue_depth), 0);
    ck_assert_uint_eq(atomic_load(&lb_shm_worker(h, 1)->queued[3]), 0);
    ck_assert_uint_eq(atomic_load(&lb_shm_worker(h, 1)->queued[200]), 0);
    ck_assert_uint_eq(atomic_load(&lb_shm_worker(h, 0)->queued[3]), 2);
}
END_TEST

START_TEST(test_pool_retire_reclaim)
{
    struct lb_shm_header *h = shm.hdr;
    static struct test_cfg t1, t2, t3;
    build(&t1, pools1, 2, servers1);
    assign(&t1, 1);
    uint32_t api = t1.pools[1].shm_id;
    lb_counter_add(&lb_shm_pool(h, api)->rr_next, 12345);

    static const char *const only_web[] = { "web" };
    build(&t2, only_web, 1, servers1);
    assign(&t2, 2);
    const struct lb_shm_pool *p = lb_shm_pool(h, api);
    ck_assert_uint_eq(atomic_load(&p->state), LB_ENTRY_RETIRED);
    ck_assert_uint_eq(p->retired_gen, 2);
    /* Its servers too. */
    ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, server(&t1, "api", "127.0.0.1:9101")->shm_id)->state),
                      LB_ENTRY_RETIRED);
    lb_shm_reclaim(h, 2);
    ck_assert_uint_eq(atomic_load(&p->state), LB_ENTRY_FREE);

    /* A new pool reuses the id with a fresh round-robin cursor. */
    static const char *const other[] = { "web", "other" };
    build(&t3, other, 2, servers1);
    assign(&t3, 3);
    ck_assert_uint_eq(t3.pools[1].shm_id, api);
    ck_assert_str_eq(p->name, "other");
    ck_assert_uint_eq(lb_counter_get((lb_counter_t *)&p->rr_next), 0);
}
END_TEST

START_TEST(test_assign_full)
{
    /* More servers than the table holds: -1 with a message, and nothing
     * in the segment changed. */
    struct lb_shm_header *h = shm.hdr;
    static struct lb_server_cfg many[LB_SHM_MAX_BACKENDS + 1];
    for (size_t i = 0; i < LB_ARRAY_SIZE(many); i++)
        snprintf(many[i].address, sizeof(many[i].address), "10.0.%zu.%zu:80", i / 250, i % 250 + 1);
    struct lb_pool_cfg pool = { .name = "big", .servers = many, .nservers = LB_ARRAY_SIZE(many) };
    struct lb_config cfg = { .pools = &pool, .npools = 1 };
    char err[256] = "";
    ck_assert(!lb_shm_assign_fits(h, &cfg));
    ck_assert_int_eq(lb_shm_assign(h, &cfg, 1, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "servers") != NULL, "%s", err);
    for (unsigned i = 0; i < LB_SHM_MAX_POOLS; i++)
        ck_assert_uint_eq(atomic_load(&lb_shm_pool(h, i)->state), LB_ENTRY_FREE);
    for (unsigned i = 0; i < LB_SHM_MAX_BACKENDS; i++)
        ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, i)->state), LB_ENTRY_FREE);

    /* Exactly full is fine. */
    pool.nservers = LB_SHM_MAX_BACKENDS;
    ck_assert(lb_shm_assign_fits(h, &cfg));
    ck_assert_int_eq(lb_shm_assign(h, &cfg, 1, err, sizeof(err)), 0);
    ck_assert(lb_shm_assign_fits(h, &cfg));

    /* Replace one server: the old one is retired but still held (old
     * workers may write it), so the new one does not fit yet. */
    struct lb_server_cfg saved = many[0];
    snprintf(many[0].address, sizeof(many[0].address), "10.9.9.9:80");
    ck_assert(!lb_shm_assign_fits(h, &cfg));
    static char before[sizeof(struct lb_shm_pool) * LB_SHM_MAX_POOLS +
                       sizeof(struct lb_shm_backend) * LB_SHM_MAX_BACKENDS];
    memcpy(before, (char *)h + h->off_pools, sizeof(before));
    ck_assert_int_eq(lb_shm_assign(h, &cfg, 2, err, sizeof(err)), -1);
    ck_assert_int_eq(memcmp(before, (char *)h + h->off_pools, sizeof(before)), 0);

    /* Drop it first (generation 2), reclaim once gen-1 workers are gone,
     * then the new server fits and takes the freed id. */
    uint32_t old_id = saved.shm_id;
    struct lb_pool_cfg smaller = pool;
    smaller.servers = many + 1;
    smaller.nservers = LB_SHM_MAX_BACKENDS - 1;
    struct lb_config cfg2 = { .pools = &smaller, .npools = 1 };
    ck_assert_int_eq(lb_shm_assign(h, &cfg2, 2, err, sizeof(err)), 0);
    ck_assert_uint_eq(atomic_load(&lb_shm_backend(h, old_id)->state), LB_ENTRY_RETIRED);
    ck_assert(!lb_shm_assign_fits(h, &cfg));
    lb_shm_reclaim(h, 2);
    ck_assert(lb_shm_assign_fits(h, &cfg));
    ck_assert_int_eq(lb_shm_assign(h, &cfg, 3, err, sizeof(err)), 0);
    ck_assert_uint_eq(many[0].shm_id, old_id);
    ck_assert_str_eq(lb_shm_backend(h, old_id)->address, "10.9.9.9:80");
}
END_TEST

/* ---- worker slots ----------------------------------------------------------------- */

START_TEST(test_slots)
{
    struct lb_shm_header *h = shm.hdr;
    ck_assert_int_eq(lb_shm_slot_take(h, 0, 1), 0);
    ck_assert_int_eq(lb_shm_slot_take(h, 1, 1), 1);
    ck_assert_uint_eq(atomic_load(&h->slots_used), 2);
    struct lb_shm_worker *w = lb_shm_worker(h, 1);
    ck_assert_uint_eq(atomic_load(&w->state), LB_SLOT_RUNNING);
    ck_assert_uint_eq(atomic_load(&w->id), 1);
    ck_assert_uint_eq(atomic_load(&w->generation), 1);
    ck_assert_uint_gt(atomic_load(&w->started_ms), 0);

    /* The worker in slot 1 counts. */
    lb_counter_add(&w->connections, 10);
    lb_counter_add(&w->active_connections, 4);
    lb_counter_add(&w->requests, 33);
    lb_counter_add(&w->responses[1], 30);
    lb_counter_add(&w->bytes_in, 1000);
    struct lb_shm_backend_stats *st = lb_shm_stats(h, 1, 7);
    lb_counter_add(&st->requests, 9);
    lb_counter_add(&st->active, 2);
    lb_counter_add(&st->failures, 1);
    lb_counter_add(&lb_shm_stats(h, 1, LB_SHM_MAX_BACKENDS - 1)->active, 1);
    /* Retries under way (worker/retry.h): its share of backend 7's, beside
     * slot 0's share (one retry, waiting). */
    struct lb_shm_backend *b7 = lb_shm_backend(h, 7);
    lb_counter_add(&st->retries, 3);
    lb_counter_add(&st->retries_waiting, 2);
    lb_counter_add(&lb_shm_stats(h, 0, 7)->retries, 1);
    lb_counter_add(&lb_shm_stats(h, 0, 7)->retries_waiting, 1);
    atomic_store(&b7->retries, 4);
    atomic_store(&b7->retries_waiting, 3);
    atomic_store(&w->pid, 4242);

    /* Reaped: gauges zeroed, cumulative counters kept, slot free. */
    lb_shm_slot_release(h, 1);
    ck_assert_uint_eq(atomic_load(&w->state), LB_SLOT_FREE);
    ck_assert_int_eq(atomic_load(&w->pid), 0);
    ck_assert_uint_eq(lb_counter_get(&w->active_connections), 0);
    ck_assert_uint_eq(lb_counter_get(&w->connections), 10);
    ck_assert_uint_eq(lb_counter_get(&w->requests), 33);
    ck_assert_uint_eq(lb_counter_get(&w->responses[1]), 30);
    ck_assert_uint_eq(lb_counter_get(&w->bytes_in), 1000);
    ck_assert_uint_eq(lb_counter_get(&st->active), 0);
    ck_assert_uint_eq(lb_counter_get(&lb_shm_stats(h, 1, LB_SHM_MAX_BACKENDS - 1)->active), 0);
    ck_assert_uint_eq(lb_counter_get(&st->requests), 9);
    ck_assert_uint_eq(lb_counter_get(&st->failures), 1);
    /* The dead worker's retries are taken back: slot 0's remain. */
    ck_assert_uint_eq(lb_counter_get(&st->retries), 0);
    ck_assert_uint_eq(lb_counter_get(&st->retries_waiting), 0);
    ck_assert_int_eq(atomic_load(&b7->retries), 1);
    ck_assert_int_eq(atomic_load(&b7->retries_waiting), 1);
    /* Slot 0 is untouched. */
    ck_assert_uint_eq(atomic_load(&lb_shm_worker(h, 0)->state), LB_SLOT_RUNNING);

    /* The freed slot is taken again first; the new owner continues the counters. */
    ck_assert_int_eq(lb_shm_slot_take(h, 5, 2), 1);
    ck_assert_uint_eq(atomic_load(&w->id), 5);
    ck_assert_uint_eq(atomic_load(&w->generation), 2);
    ck_assert_uint_eq(lb_counter_get(&w->connections), 10);
    ck_assert_uint_eq(atomic_load(&h->slots_used), 2);

    /* Draining slots are not free. */
    atomic_store(&lb_shm_worker(h, 0)->state, LB_SLOT_DRAINING);
    for (unsigned s = 2; s < LB_SHM_MAX_SLOTS; s++)
        ck_assert_int_eq(lb_shm_slot_take(h, s % LB_MAX_WORKERS, 2), (int)s);
    ck_assert_uint_eq(atomic_load(&h->slots_used), LB_SHM_MAX_SLOTS);
    ck_assert_int_eq(lb_shm_slot_take(h, 0, 2), -1);
    lb_shm_slot_release(h, 0);
    ck_assert_int_eq(lb_shm_slot_take(h, 0, 3), 0);
}
END_TEST

START_TEST(test_backend_sum)
{
    struct lb_shm_header *h = shm.hdr;
    const unsigned b = 17;
    struct lb_backend_totals tot;
    lb_shm_backend_sum(h, b, &tot);
    ck_assert_uint_eq(tot.requests, 0);

    for (unsigned s = 0; s < 3; s++) {
        ck_assert_int_eq(lb_shm_slot_take(h, s, 1), (int)s);
        struct lb_shm_backend_stats *st = lb_shm_stats(h, s, b);
        lb_counter_add(&st->requests, 100 * (s + 1));
        for (unsigned c = 0; c < LB_STATUS_CLASSES; c++)
            lb_counter_add(&st->responses[c], c + s);
        lb_counter_add(&st->active, 1);
        lb_counter_add(&st->bytes_in, 1000);
        lb_counter_add(&st->bytes_out, 7);
        lb_counter_add(&st->failures, s);
        /* Another backend's row must not leak into the sum. */
        lb_counter_add(&lb_shm_stats(h, s, b + 1)->requests, 1000000);
        lb_counter_add(&lb_shm_stats(h, s, b - 1)->requests, 1000000);
    }
    lb_shm_backend_sum(h, b, &tot);
    ck_assert_uint_eq(tot.requests, 600);
    for (unsigned c = 0; c < LB_STATUS_CLASSES; c++)
        ck_assert_uint_eq(tot.responses[c], 3 * c + 3);
    ck_assert_uint_eq(tot.active, 3);
    ck_assert_uint_eq(tot.bytes_in, 3000);
    ck_assert_uint_eq(tot.bytes_out, 21);
    ck_assert_uint_eq(tot.failures, 3);

    /* A released slot's cumulative counters still count; its gauge does not. */
    lb_shm_slot_release(h, 1);
    lb_shm_backend_sum(h, b, &tot);
    ck_assert_uint_eq(tot.requests, 600);
    ck_assert_uint_eq(tot.active, 2);
}
END_TEST

/* ---- last_error ------------------------------------------------------------------- */

START_TEST(test_error_text_never_torn)
{
    struct lb_shm_backend *b = lb_shm_backend(shm.hdr, 3);
    char a[LB_ERROR_TEXT], z[LB_ERROR_TEXT], got[LB_ERROR_TEXT];
    memset(a, 'a', sizeof(a) - 1);
    memset(z, 'z', sizeof(z) - 1);
    a[sizeof(a) - 1] = z[sizeof(z) - 1] = '\0';
    lb_shm_error_set(b, a);
    lb_shm_error_get(b, got, sizeof(got));
    ck_assert_str_eq(got, a);

    /* Another process rewrites it as fast as it can while we read. */
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        for (int i = 0; i < 4000000; i++)
            lb_shm_error_set(b, i & 1 ? a : z);
        _exit(0);
    }
    unsigned reads = 0, whole = 0;
    bool reaped = false;
    while (reads < 200000 && !(reaped = waitpid(pid, NULL, WNOHANG) == pid)) {
        lb_shm_error_get(b, got, sizeof(got));
        reads++;
        if (got[0] == '\0')
            continue;       /* gave up while the writer kept writing */
        ck_assert_msg(strcmp(got, a) == 0 || strcmp(got, z) == 0, "torn text: %s", got);
        whole++;
    }
    if (!reaped) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    ck_assert_uint_gt(whole, 0);

    /* A writer that died mid-write leaves the sequence odd: "" not garbage. */
    atomic_fetch_or(&b->error_seq, 1);
    lb_shm_error_get(b, got, sizeof(got));
    ck_assert_str_eq(got, "");
    /* The master's assign rewrites the entry whole and clears that. */
    lb_shm_error_set(b, "connect: refused");
    lb_shm_error_get(b, got, sizeof(got));
    ck_assert_str_eq(got, "connect: refused");
}
END_TEST

/* ---- attach ----------------------------------------------------------------------- */

START_TEST(test_attach_readonly)
{
    struct lb_shm_header *h = shm.hdr;
    static struct test_cfg t;
    build(&t, pools1, 2, servers1);
    assign(&t, 1);
    ck_assert_int_eq(lb_shm_slot_take(h, 0, 1), 0);
    uint32_t id = t.pools[0].servers[0].shm_id;

    /* As `lbd -s` does: open the memfd read-only through /proc. */
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", shm.fd);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    struct lb_shm ro = { .fd = -1 };
    const char *why = NULL;
    ck_assert_msg(lb_shm_attach(fd, true, &ro, &why) == 0, "attach: %s", why);
    ck_assert_int_eq(ro.fd, fd);
    ck_assert_uint_eq(ro.size, shm.size);
    ck_assert_ptr_ne(ro.base, shm.base);
    ck_assert_uint_eq(ro.hdr->magic, LB_SHM_MAGIC);
    ck_assert_str_eq(lb_shm_backend(ro.hdr, id)->address, t.pools[0].servers[0].address);

    /* Live: the reader sees what the writer adds afterwards. */
    struct lb_backend_totals tot;
    lb_shm_backend_sum(ro.hdr, id, &tot);
    ck_assert_uint_eq(tot.requests, 0);
    lb_counter_add(&lb_shm_stats(h, 0, id)->requests, 42);
    lb_shm_backend_sum(ro.hdr, id, &tot);
    ck_assert_uint_eq(tot.requests, 42);
    lb_shm_close(&ro);

    /* Read-write attach of a dup (as a re-executed binary would). */
    int fd2 = dup(shm.fd);
    ck_assert_int_ge(fd2, 0);
    struct lb_shm rw = { .fd = -1 };
    ck_assert_msg(lb_shm_attach(fd2, false, &rw, &why) == 0, "attach: %s", why);
    lb_counter_add(&lb_shm_stats(rw.hdr, 0, id)->requests, 1);
    lb_shm_backend_sum(h, id, &tot);
    ck_assert_uint_eq(tot.requests, 43);
    lb_shm_close(&rw);
}
END_TEST

static int memfd_with(const void *data, size_t len, size_t size)
{
    int fd = memfd_create("lbd-unit", MFD_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
    if (len > 0)
        ck_assert_int_eq(pwrite(fd, data, len, 0), (ssize_t)len);
    return fd;
}

static void expect_attach_fails(int fd, const char *what)
{
    struct lb_shm s = { .fd = -1 };
    const char *why = NULL;
    ck_assert_int_eq(lb_shm_attach(fd, true, &s, &why), -1);
    ck_assert_ptr_nonnull(why);
    ck_assert_msg(strstr(why, what) != NULL, "why \"%s\", want \"%s\"", why, what);
    ck_assert_ptr_null(s.base);
    /* On failure the fd is still the caller's. */
    ck_assert_int_eq(fcntl(fd, F_GETFD), FD_CLOEXEC);
    close(fd);
}

START_TEST(test_attach_refuses)
{
    struct lb_shm_header hdr = *shm.hdr;

    /* A segment of the right size with a wrong magic. */
    struct lb_shm_header bad = hdr;
    bad.magic ^= 1;
    expect_attach_fails(memfd_with(&bad, sizeof(bad), shm.size), "magic");
    /* All zero. */
    expect_attach_fails(memfd_with(NULL, 0, shm.size), "magic");
    /* Another layout. */
    bad = hdr;
    bad.layout_version = LB_SHM_LAYOUT_VERSION + 1;
    expect_attach_fails(memfd_with(&bad, sizeof(bad), shm.size), "layout version");
    /* Shorter than the header says. */
    expect_attach_fails(memfd_with(&hdr, sizeof(hdr), shm.size / 2), "truncated");
    /* Smaller than a header. */
    expect_attach_fails(memfd_with(&hdr, 16, 16), "too small");
    expect_attach_fails(memfd_with(NULL, 0, 0), "too small");
    /* Not a segment at all. */
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    expect_attach_fails(fd, "too small");
}
END_TEST

/* The version comes from a make variable (LBD_VERSION_EXTRA): whatever it
 * holds reaches `lbd -s` and /status as it is, escaped. */
START_TEST(test_snapshot_version_escaped)
{
    static const char v[] = "1.0 \"quoted\" C:\\x";
    snprintf(shm.hdr->version, sizeof(shm.hdr->version), "%s", v);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    lb_snapshot_write(shm.hdr, f);
    fclose(f);
    const char *why = NULL;
    struct lb_json *j = lb_json_parse(buf, len, &why);
    ck_assert_msg(j != NULL, "not JSON: %s", why ? why : "?");
    ck_assert_str_eq(lb_json_str(lb_json_get(j, "version")), v);
    lb_json_free(j);
    free(buf);
    /* A version that fills the field, with no NUL: all of it, no more. */
    memset(shm.hdr->version, '"', sizeof(shm.hdr->version));
    f = open_memstream(&buf, &len);
    lb_snapshot_write(shm.hdr, f);
    fclose(f);
    j = lb_json_parse(buf, len, &why);
    ck_assert_msg(j != NULL, "not JSON: %s", why ? why : "?");
    const char *got = lb_json_str(lb_json_get(j, "version"));
    ck_assert_uint_eq(strlen(got), sizeof(shm.hdr->version));
    ck_assert(strspn(got, "\"") == sizeof(shm.hdr->version));
    lb_json_free(j);
    free(buf);
}
END_TEST

Suite *shm_suite(void)
{
    Suite *s = suite_create("shm");
    TCase *tc = tcase_create("segment");
    tcase_add_checked_fixture(tc, shm_setup, shm_teardown);
    tcase_add_test(tc, test_create);
    tcase_add_test(tc, test_assign_first);
    tcase_add_test(tc, test_assign_stable_and_retire);
    tcase_add_test(tc, test_assign_readd_before_reclaim);
    tcase_add_test(tc, test_assign_breakers);
    tcase_add_test(tc, test_assign_limits_and_slow_start);
    tcase_add_test(tc, test_slot_release_queue);
    tcase_add_test(tc, test_pool_retire_reclaim);
    tcase_add_test(tc, test_assign_full);
    tcase_add_test(tc, test_slots);
    tcase_add_test(tc, test_backend_sum);
    tcase_add_test(tc, test_error_text_never_torn);
    tcase_add_test(tc, test_attach_readonly);
    tcase_add_test(tc, test_attach_refuses);
    tcase_add_test(tc, test_snapshot_version_escaped);
    suite_add_tcase(s, tc);
    return s;
}
