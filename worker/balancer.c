#include "worker/balancer.h"

#include <errno.h>
#include <stdlib.h>

static unsigned lb_gcd(unsigned a, unsigned b)
{
    while (b != 0) {
        unsigned t = a % b;
        a = b;
        b = t;
    }
    return a;
}

size_t lb_swrr_cycle(const unsigned *weights, size_t n, uint16_t *out, size_t max)
{
    unsigned g = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        g = lb_gcd(g, weights[i]);
    if (g == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        total += weights[i] / g;
    if (total > max)
        return (size_t)-1;

    /* nginx's smooth WRR: each step every server gains its weight, the
     * richest is chosen and pays the total. Over one cycle of TOTAL steps
     * each server is chosen exactly weight/g times, spread out. */
    int64_t *current = calloc(n, sizeof(*current));
    if (current == NULL)
        return (size_t)-1;
    for (uint64_t k = 0; k < total; k++) {
        size_t best = 0;
        bool found = false;
        for (size_t i = 0; i < n; i++) {
            if (weights[i] == 0)
                continue;
            current[i] += weights[i] / g;
            if (!found || current[i] > current[best]) {
                best = i;
                found = true;
            }
        }
        current[best] -= (int64_t)total;
        out[k] = (uint16_t)best;
    }
    free(current);
    return (size_t)total;
}

/* The cycle is bounded so a silly config cannot eat memory per worker. */
#define LB_SWRR_MAX_CYCLE (1u << 20)

static int lb_rr_init(struct lb_balancer *b)
{
    const struct lb_pool_cfg *p = b->pool;
    if (p->nservers > UINT16_MAX)
        return -1;
    unsigned *w = calloc(p->nservers ? p->nservers : 1, sizeof(*w));
    if (w == NULL)
        return -1;
    uint64_t total = 0;
    for (size_t i = 0; i < p->nservers; i++) {
        /* round_robin: equal shares; weight 0 still means "not this one". */
        w[i] = p->strategy == LB_STRATEGY_ROUND_ROBIN ? (p->servers[i].weight > 0)
                                                      : p->servers[i].weight;
        total += w[i];
    }
    size_t cap = total < LB_SWRR_MAX_CYCLE ? (size_t)total : LB_SWRR_MAX_CYCLE;
    b->seq = calloc(cap ? cap : 1, sizeof(*b->seq));
    size_t len = b->seq ? lb_swrr_cycle(w, p->nservers, b->seq, cap) : (size_t)-1;
    free(w);
    if (len == (size_t)-1)
        return -1;
    b->seq_len = len;
    return 0;
}

static int lb_rr_pick(struct lb_balancer *b)
{
    if (b->seq_len == 0)
        return -1;
    uint64_t k = atomic_fetch_add_explicit(b->cursor, 1, memory_order_relaxed);
    return b->seq[k % b->seq_len];
}

static void lb_rr_destroy(struct lb_balancer *b)
{
    free(b->seq);
    b->seq = NULL;
}

static const struct lb_balancer_ops lb_rr_ops = {
    .name = "round_robin",
    .init = lb_rr_init,
    .pick = lb_rr_pick,
    .destroy = lb_rr_destroy,
};

static const struct lb_balancer_ops *lb_balancer_ops_for(enum lb_strategy s)
{
    switch (s) {
    case LB_STRATEGY_ROUND_ROBIN:
    case LB_STRATEGY_WEIGHTED_ROUND_ROBIN:
        return &lb_rr_ops;
    }
    return NULL;
}

int lb_balancer_init(struct lb_balancer *b, const struct lb_pool_cfg *pool,
                     lb_counter_t *cursor)
{
    *b = (struct lb_balancer){ .pool = pool, .ops = lb_balancer_ops_for(pool->strategy) };
    b->cursor = cursor ? cursor : &b->private_cursor;
    if (b->ops == NULL || b->ops->init(b) < 0) {
        lb_balancer_destroy(b);
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

void lb_balancer_destroy(struct lb_balancer *b)
{
    if (b->ops != NULL && b->ops->destroy != NULL)
        b->ops->destroy(b);
    b->ops = NULL;
}
