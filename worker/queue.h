/* A pool's queue: requests that find every usable server of their pool at
 * its max_requests wait here for a place, as behind HAProxy's per-server
 * maxconn and `timeout queue`.
 *
 * Bookkeeping (this module, no libevent): each worker keeps its own FIFO
 * of waiting requests per pool, an intrusive list (joining allocates
 * nothing). The pool's bound, queue.size, is over all workers: the depth
 * in shared memory is joined by compare-and-swap below the size, so never
 * more wait in all; each worker also counts its own share in its slot's
 * row, which the master takes back from the depth when it reaps a worker
 * that died with requests waiting.
 *
 * Waking (worker/proxy.c): max_requests is counted over all workers, so
 * the place a waiting request needs may be freed by any worker. A worker
 * re-tries the oldest request of a pool's queue when one of its own
 * requests to that pool ends (after the callback in progress), and every
 * LB_QUEUE_TICK_MS while the queue is not empty, for places others free.
 * Per-worker FIFO, not global: a worker serves its own waiting requests in
 * order, and while it has any its new requests join them; across workers
 * the one that frees a place or ticks first takes it.
 *
 *   dispatch --every usable server full--> WAITING --a place--> sent
 *                                             |
 *                    queue.timeout, deadline, +--> 503 / 504 / client gone
 *                    the client left
 */
#ifndef LB_QUEUE_H
#define LB_QUEUE_H

#include <stdbool.h>

#include "shared/list.h"
#include "shared/shm-t.h"

#define LB_QUEUE_TICK_MS 10

struct event;

struct lb_queue {
    struct lb_list waiting;             /* oldest at the tail */
    unsigned n;
    struct lb_shm_pool *shm;            /* the depth and counters of all workers */
    _Atomic uint32_t *mine;             /* this worker's share of the depth */
    struct event *tick;                 /* the proxy's: armed while n > 0 */
};

void lb_queue_init(struct lb_queue *q, struct lb_shm_pool *shm, _Atomic uint32_t *mine);

/* NODE joins the tail if the pool has fewer than SIZE waiting, all
 * workers together; false (counted as refused, full) when it has. */
bool lb_queue_join(struct lb_queue *q, struct lb_list *node, unsigned size);

/* NODE, which joined Q, leaves it (served, timed out, gone). */
void lb_queue_leave(struct lb_queue *q, struct lb_list *node);

/* The node that waited longest, or NULL. */
static inline struct lb_list *lb_queue_oldest(struct lb_queue *q)
{
    return q->n > 0 ? q->waiting.prev : NULL;
}

/* Count a request the queue turned away after it had joined (timeout). */
void lb_queue_refused(struct lb_queue *q, enum lb_queue_refusal why);

#endif
