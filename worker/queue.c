#include "worker/queue.h"

void lb_queue_init(struct lb_queue *q, struct lb_shm_pool *shm, _Atomic uint32_t *mine)
{
    lb_list_init(&q->waiting);
    q->n = 0;
    q->shm = shm;
    q->mine = mine;
    q->tick = NULL;
}

void lb_queue_refused(struct lb_queue *q, enum lb_queue_refusal why)
{
    atomic_fetch_add_explicit(&q->shm->queue_refused[why], 1, memory_order_relaxed);
}

bool lb_queue_join(struct lb_queue *q, struct lb_list *node, unsigned size)
{
    uint32_t n = atomic_load_explicit(&q->shm->queue_depth, memory_order_relaxed);
    do {
        if (n >= size) {
            lb_queue_refused(q, LB_QUEUE_FULL);
            return false;
        }
    } while (!atomic_compare_exchange_weak_explicit(&q->shm->queue_depth, &n, n + 1,
                                                    memory_order_relaxed, memory_order_relaxed));
    /* The depth first, our share after (and the other way round when
     * leaving): a worker dying in between leaves the depth one too high,
     * never lower than what still waits, so the master's subtraction of
     * our share cannot wrap it below zero. */
    atomic_fetch_add_explicit(q->mine, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&q->shm->queued, 1, memory_order_relaxed);
    lb_list_push(&q->waiting, node);
    q->n++;
    return true;
}

void lb_queue_leave(struct lb_queue *q, struct lb_list *node)
{
    lb_list_remove(node);
    q->n--;
    atomic_fetch_sub_explicit(q->mine, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&q->shm->queue_depth, 1, memory_order_relaxed);
}
