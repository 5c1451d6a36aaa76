/* Backend selection. Each strategy is a table of functions (as h2o's
 * balancer.h), so strategies plug in without touching the proxy.
 *
 * round_robin and weighted_round_robin share one mechanism: a cycle of server
 * indexes computed once per configuration (smooth weighted round robin, as
 * nginx: weights 5,1,1 give a a b a c a a), walked by a cursor in shared
 * memory that every worker advances atomically. The order is therefore
 * global across workers, and exact over every full cycle.
 */
#ifndef LB_BALANCER_H
#define LB_BALANCER_H

#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"
#include "shared/shm-t.h"

struct lb_balancer;

struct lb_balancer_ops {
    const char *name;
    int (*init)(struct lb_balancer *b);
    /* Index into pool->servers, or -1 when no server can take a request. */
    int (*pick)(struct lb_balancer *b);
    void (*destroy)(struct lb_balancer *b);
};

struct lb_balancer {
    const struct lb_balancer_ops *ops;
    const struct lb_pool_cfg *pool;
    lb_counter_t *cursor;               /* in shm; private if no shm (tests) */
    lb_counter_t private_cursor;
    uint16_t *seq;                      /* the cycle of server indexes */
    size_t seq_len;
};

/* Set up B for POOL. CURSOR may be NULL (a private cursor is used). */
int lb_balancer_init(struct lb_balancer *b, const struct lb_pool_cfg *pool,
                     lb_counter_t *cursor);
void lb_balancer_destroy(struct lb_balancer *b);

static inline int lb_balancer_pick(struct lb_balancer *b)
{
    return b->ops->pick(b);
}

/* Smooth weighted round robin over WEIGHTS[0..n), reduced by their gcd:
 * writes one full cycle to OUT (capacity MAX) and returns its length, 0 if
 * every weight is 0, or (size_t)-1 if the cycle would exceed MAX. */
size_t lb_swrr_cycle(const unsigned *weights, size_t n, uint16_t *out, size_t max);

#endif
