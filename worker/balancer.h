/* Backend selection. Each strategy is a table of functions (as h2o's
 * balancer.h), so strategies plug in without touching the proxy. Every
 * strategy skips servers that are down, draining, of weight 0, whose
 * breaker is open or that are at their max_requests, reading their state
 * from shared memory, so what one worker or the control process learns
 * every worker honours at once.
 *
 * round_robin, weighted_round_robin: one cycle of server indexes computed
 *   per configuration and again when a weight changes at run time (smooth
 *   WRR, as nginx: weights 5,1,1 give
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
 *
 * Slow start (pool slow_start): a server usable again for less than
 * slow_start has a share of its weight, 10 % to 100 % over that time
 * (lb_slow_start_permille). The weighted strategies use that effective
 * weight; the two round robins keep their cycle and skip such a server's
 * turn with the probability of the share it does not have yet (its turn
 * goes to the next ticket), which gives it the same proportion without
 * rebuilding the cycle; hash keeps its ring and sends a key to such a
 * server only once the ramp has passed the key's rank (a second hash of
 * the key, 0-999), so each key comes back once and stays.
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
    uint64_t now_ms;                    /* CLOCK_MONOTONIC, for breakers and slow start
                                         * (when the pool has them) */
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
    uint64_t slow_start_ms;             /* pool->slow_start_ms */
    lb_counter_t *cursor;               /* in shm; private if NULL was given */
    lb_counter_t private_cursor;
    uint64_t rng[2];
    uint32_t rotor;                     /* least_connections tie-breaking */
    uint16_t *seq;                      /* round robin cycle */
    size_t seq_len;
    struct lb_ring_point *ring;         /* hash */
    size_t ring_len;
    /* The pool's lb_shm_pool.weights_gen (NULL: weights never change at
     * run time) and its value when the cycle or ring was built. */
    const _Atomic uint32_t *weights_gen;
    uint32_t seen_gen;
    /* Each server's address for the ring, when not pool->servers[i]'s
     * (runtime slots: shared/runtime.h); NULL: the pool's. */
    const char *const *names;
};

/* Set up B for POOL. BACKENDS[i] is the shared state of pool->servers[i]
 * (owned by the caller); CURSOR may be NULL (a private cursor is used). */
int lb_balancer_init(struct lb_balancer *b, const struct lb_pool_cfg *pool,
                     struct lb_shm_backend **backends, lb_counter_t *cursor);
/* The same, and B follows weight changes made at run time (admin API):
 * when *WEIGHTS_GEN moves, the next pick rebuilds what the strategy
 * derived from the weights (the round-robin cycle, the hash ring), from
 * the weights in BACKENDS. */
int lb_balancer_init_watched(struct lb_balancer *b, const struct lb_pool_cfg *pool,
                             struct lb_shm_backend **backends, lb_counter_t *cursor,
                             const _Atomic uint32_t *weights_gen);
void lb_balancer_destroy(struct lb_balancer *b);
/* Build B's tables again (the round robin cycle, the ring) from the
 * weights in shared memory and the names: the pool's runtime servers
 * changed. Keeps its cursor. 0, or -1 (B keeps its old tables). */
int lb_balancer_rebuild(struct lb_balancer *b);

/* Rebuild B from the current weights (out of line: rare). */
void lb_balancer_refresh(struct lb_balancer *b);

static inline int lb_balancer_pick(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    /* One load and compare per pick: weights changed since the build? */
    if (__builtin_expect(b->weights_gen != NULL &&
                         atomic_load_explicit(b->weights_gen, memory_order_acquire) != b->seen_gen,
                         0))
        lb_balancer_refresh(b);
    return b->ops->pick(b, ctx);
}

/* Whether B has room for one more request under its max_requests. */
static inline bool lb_backend_has_room(const struct lb_shm_backend *b)
{
    uint32_t max = atomic_load_explicit(&b->max_requests, memory_order_relaxed);
    return max == 0 || atomic_load_explicit(&b->inflight, memory_order_relaxed) < (int64_t)max;
}

/* Count one request in flight to B, all workers together: with
 * max_requests a compare-and-swap below it, so that never more are in
 * flight however many workers race for the last place. false: full. */
static inline bool lb_backend_take(struct lb_shm_backend *b)
{
    uint32_t max = atomic_load_explicit(&b->max_requests, memory_order_relaxed);
    if (max == 0) {
        atomic_fetch_add_explicit(&b->inflight, 1, memory_order_relaxed);
        return true;
    }
    int64_t n = atomic_load_explicit(&b->inflight, memory_order_relaxed);
    do {
        if (n >= (int64_t)max)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&b->inflight, &n, n + 1,
                                                    memory_order_relaxed, memory_order_relaxed));
    return true;
}

static inline void lb_backend_put(struct lb_shm_backend *b)
{
    atomic_fetch_sub_explicit(&b->inflight, 1, memory_order_relaxed);
}

/* After a pick that found no server: whether that is because servers that
 * could take the request are at their max_requests (it may wait in the
 * pool's queue), rather than because none is usable at all. */
bool lb_balancer_full(const struct lb_balancer *b, const struct lb_pick_ctx *ctx);

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

/* The same but for its max_requests: whether server I would be usable
 * with room (a retry waits for such a server rather than go back to one
 * it tried). */
bool lb_balancer_up(const struct lb_balancer *b, size_t i, const struct lb_pick_ctx *ctx);

#endif
