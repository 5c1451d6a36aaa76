/* worker/queue.c: the bookkeeping of a pool's queue. Two workers' queues
 * of one pool on a real segment: FIFO per worker, the size bound over
 * both, the depth and each worker's share, what is counted. */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "shared/shm.h"
#include "worker/queue.h"
#include "tests/unit/suites.h"

static struct lb_shm shm;

static void setup(void)
{
    ck_assert_msg(lb_shm_create(&shm) == 0, "lb_shm_create: %s", strerror(errno));
    ck_assert_int_eq(lb_shm_slot_take(shm.hdr, 0, 1), 0);
    ck_assert_int_eq(lb_shm_slot_take(shm.hdr, 1, 1), 1);
}

static void teardown(void)
{
    lb_shm_close(&shm);
}

#define POOL 5

/* The queue of pool POOL in the worker of SLOT. */
static void worker_queue(struct lb_queue *q, unsigned slot)
{
    lb_queue_init(q, lb_shm_pool(shm.hdr, POOL), &lb_shm_worker(shm.hdr, slot)->queued[POOL]);
}

static uint32_t depth(void)
{
    return atomic_load(&lb_shm_pool(shm.hdr, POOL)->queue_depth);
}

static uint32_t share(unsigned slot)
{
    return atomic_load(&lb_shm_worker(shm.hdr, slot)->queued[POOL]);
}

START_TEST(test_fifo)
{
    struct lb_queue q;
    struct lb_list n[4];
    worker_queue(&q, 0);
    ck_assert_ptr_null(lb_queue_oldest(&q));
    for (int i = 0; i < 4; i++)
        ck_assert(lb_queue_join(&q, &n[i], 10));
    ck_assert_uint_eq(q.n, 4);
    /* Oldest first, whatever leaves in between. */
    ck_assert_ptr_eq(lb_queue_oldest(&q), &n[0]);
    lb_queue_leave(&q, &n[2]);              /* timed out */
    ck_assert_ptr_eq(lb_queue_oldest(&q), &n[0]);
    lb_queue_leave(&q, &n[0]);
    ck_assert_ptr_eq(lb_queue_oldest(&q), &n[1]);
    lb_queue_leave(&q, &n[1]);
    ck_assert_ptr_eq(lb_queue_oldest(&q), &n[3]);
    ck_assert(lb_queue_join(&q, &n[0], 10));
    ck_assert_ptr_eq(lb_queue_oldest(&q), &n[3]);
    lb_queue_leave(&q, &n[3]);
    ck_assert_ptr_eq(lb_queue_oldest(&q), &n[0]);
    lb_queue_leave(&q, &n[0]);
    ck_assert_ptr_null(lb_queue_oldest(&q));
    ck_assert_uint_eq(q.n, 0);
    ck_assert_uint_eq(depth(), 0);
    ck_assert_uint_eq(share(0), 0);
}
END_TEST

START_TEST(test_size_over_workers)
{
    /* Size 3 for the pool: two in one worker and one in the other fill
     * it; the next is refused in either, and counted; once one leaves
     * the other worker may join. */
    struct lb_queue a, b;
    struct lb_list n[6];
    worker_queue(&a, 0);
    worker_queue(&b, 1);
    struct lb_shm_pool *p = lb_shm_pool(shm.hdr, POOL);
    ck_assert(lb_queue_join(&a, &n[0], 3));
    ck_assert(lb_queue_join(&b, &n[1], 3));
    ck_assert(lb_queue_join(&a, &n[2], 3));
    ck_assert_uint_eq(depth(), 3);
    ck_assert_uint_eq(share(0), 2);
    ck_assert_uint_eq(share(1), 1);
    ck_assert(!lb_queue_join(&b, &n[3], 3));
    ck_assert(!lb_queue_join(&a, &n[4], 3));
    ck_assert_uint_eq(atomic_load(&p->queue_refused[LB_QUEUE_FULL]), 2);
    ck_assert_uint_eq(b.n, 1);
    ck_assert_uint_eq(a.n, 2);
    lb_queue_leave(&a, &n[0]);
    ck_assert(lb_queue_join(&b, &n[3], 3));
    ck_assert_uint_eq(share(0), 1);
    ck_assert_uint_eq(share(1), 2);
    ck_assert_uint_eq(atomic_load(&p->queued), 4);
    /* A timeout is counted by its kind. */
    lb_queue_leave(&b, &n[1]);
    lb_queue_refused(&b, LB_QUEUE_TIMEOUT);
    ck_assert_uint_eq(atomic_load(&p->queue_refused[LB_QUEUE_TIMEOUT]), 1);
    ck_assert_uint_eq(atomic_load(&p->queue_refused[LB_QUEUE_FULL]), 2);
    /* Size 0: nothing ever waits. */
    ck_assert(!lb_queue_join(&a, &n[5], 0));
    /* A smaller size after a reload: no more join until below it. */
    ck_assert_uint_eq(depth(), 2);
    ck_assert(!lb_queue_join(&a, &n[5], 2));
    ck_assert(lb_queue_join(&a, &n[5], 4));
    ck_assert_uint_eq(depth(), 3);
    /* The worker of slot 1 dies: the master takes its share back. */
    lb_shm_slot_release(shm.hdr, 1);
    ck_assert_uint_eq(depth(), 2);
    ck_assert_uint_eq(share(0), 2);
}
END_TEST

Suite *queue_suite(void)
{
    Suite *s = suite_create("queue");
    TCase *tc = tcase_create("bookkeeping");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_fifo);
    tcase_add_test(tc, test_size_over_workers);
    suite_add_tcase(s, tc);
    return s;
}
