/* Backend selection. Each strategy is a table of functions (as h2o's
 * balancer.h), so strategies plug in without touching the proxy. Every
 * strategy skips servers that are down, draining or of weight 0, reading
 * their state from shared memory, so what one worker or the control
 * process learns every worker honours at once.
 *
 * round_robin, weighted_round_robin: one cycle of server indexes computed
 *   per configuration (smooth WRR, as nginx: weights 5,1,1 give
 *   a a b a c a a), walked by a cursor in shared memory that every worker
 *   advances atomically: the order is global across workers.
 * least_connections: fewest in-flight requests per unit of weight, counted
 *   across all workers in shared memory; ties go round the pool.
 * power_of_two: the less loaded of two random servers (Envoy's P2C).
 * random: weighted random.
 * hash: consistent hashing on a ketama ring (160 points per unit of weight);
 *   removing one of N servers moves only its keys.
 * least_time: P2C on peak-EWMA response time x (in-flight + 1) / weight
 *   (Finagle/Linkerd).
 */
#ifndef LB_BALANCER_H
#define LB_BALANCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"
#include "shared/shm-t.h"

struct lb_balancer;

/* What a pick may look at besides shared state. */
struct lb_pick_ctx {
    uint64_t now_ms;                    /* CLOCK_MONOTONIC, for breakers (when the pool has one) */
    uint64_t key;                       /* hash: the key's hash (lb_balancer_key) */
    bool trials;                        /* may take a half-open breaker's trial */
};

struct lb_balancer_ops {
    const char *name;
    int (*init)(struct lb_balancer *b);
    /* Index into pool->servers, or -1 when no server can take a request. */
    int (*pick)(struct lb_balancer *b, const struct lb_pick_ctx *ctx);
    void (*destroy)(struct lb_balancer *b);
};

struct lb_ring_point {
    uint64_t hash;
    uint32_t server;
};

struct lb_balancer {
    const struct lb_balancer_ops *ops;
    const struct lb_pool_cfg *pool;
    struct lb_shm_backend **backends;   /* per server; shared state */
    size_t n;
    lb_counter_t *cursor;               /* in shm; private if NULL was given */
    lb_counter_t private_cursor;
    uint64_t rng[2];
    uint32_t rotor;                     /* least_connections tie-breaking */
    uint16_t *seq;                      /* round robin cycle */
    size_t seq_len;
    struct lb_ring_point *ring;         /* hash */
    size_t ring_len;
};

/* Set up B for POOL. BACKENDS[i] is the shared state of pool->servers[i]
 * (owned by the caller); CURSOR may be NULL (a private cursor is used). */
int lb_balancer_init(struct lb_balancer *b, const struct lb_pool_cfg *pool,
                     struct lb_shm_backend **backends, lb_counter_t *cursor);
void lb_balancer_destroy(struct lb_balancer *b);

static inline int lb_balancer_pick(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    return b->ops->pick(b, ctx);
}

/* The ring position of a key (client address, header or cookie value). */
uint64_t lb_balancer_key(const void *data, size_t len);

/* Smooth weighted round robin over WEIGHTS[0..n), reduced by their gcd:
 * writes one full cycle to OUT (capacity MAX) and returns its length, 0 if
 * every weight is 0, or (size_t)-1 if the cycle would exceed MAX. */
size_t lb_swrr_cycle(const unsigned *weights, size_t n, uint16_t *out, size_t max);

/* Feedback from the data path. */
/* A response head arrived SAMPLE_US after the request was sent. */
void lb_backend_observe(struct lb_shm_backend *b, uint64_t sample_us, uint64_t now_us);

/* Whether server I of B may take a request now, as every strategy's pick
 * judges it: for a retry looking past the servers it tried. */
bool lb_balancer_usable(const struct lb_balancer *b, size_t i, const struct lb_pick_ctx *ctx);

#endif
