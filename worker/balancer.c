#include "worker/balancer.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "shared/shm.h"
#include "shared/util.h"
#include "worker/breaker.h"

/* ---- helpers shared by the strategies --------------------------------- */

static inline unsigned lb_weight(const struct lb_balancer *b, size_t i)
{
    return atomic_load_explicit(&b->backends[i]->weight, memory_order_relaxed);
}

/* Usable but for its max_requests. (Inlined by force: each strategy's
 * loop runs these per server, and GCC would otherwise call them.) */
static inline __attribute__((always_inline))
bool lb_up(const struct lb_balancer *b, size_t i, const struct lb_pick_ctx *ctx)
{
    return lb_backend_accepts_new(b->backends[i]) &&
           lb_breaker_usable(b->backends[i], &b->pool->breaker, ctx->now_ms, ctx->trials);
}

static inline __attribute__((always_inline))
bool lb_usable(const struct lb_balancer *b, size_t i, const struct lb_pick_ctx *ctx)
{
    return lb_up(b, i, ctx) && lb_backend_has_room(b->backends[i]);
}

bool lb_balancer_full(const struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    for (size_t i = 0; i < b->n; i++)
        if (lb_up(b, i, ctx) && !lb_backend_has_room(b->backends[i]))
            return true;
    return false;
}

/* Slow start: the share of its weight server I has now, per mille. */
static inline unsigned lb_ramp(const struct lb_balancer *b, size_t i, const struct lb_pick_ctx *ctx)
{
    if (b->slow_start_ms == 0)
        return 1000;
    return lb_slow_start_permille(lb_shm_backend_usable_since(b->backends[i]), ctx->now_ms,
                                  b->slow_start_ms);
}

/* The weight the weighted strategies use: with slow start, the ramp's
 * share of it (all servers of a pool on the same scale, x1000). */
static inline uint64_t lb_eff_weight(const struct lb_balancer *b, size_t i,
                                     const struct lb_pick_ctx *ctx)
{
    uint64_t w = lb_weight(b, i);
    return b->slow_start_ms == 0 ? w : w * lb_ramp(b, i, ctx);
}

static inline int64_t lb_inflight(const struct lb_balancer *b, size_t i)
{
    int64_t n = atomic_load_explicit(&b->backends[i]->inflight, memory_order_relaxed);
    return n > 0 ? n : 0;
}

static uint64_t lb_rand(struct lb_balancer *b)
{
    /* xorshift128+: per worker, never shared, good enough to spread load. */
    uint64_t x = b->rng[0], y = b->rng[1];
    b->rng[0] = y;
    x ^= x << 23;
    b->rng[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return b->rng[1] + y;
}

/* splitmix64's finaliser: spreads FNV output over the whole ring. */
static uint64_t lb_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t lb_balancer_key(const void *data, size_t len)
{
    return lb_mix64(lb_hash64(data, len));
}

/* Load per unit of weight, compared without division:
 * a is lighter than b when (load_a + 1) * w_b < (load_b + 1) * w_a. */
static bool lb_lighter(uint64_t load_a, uint64_t w_a, uint64_t load_b, uint64_t w_b)
{
    return (load_a + 1) * w_b < (load_b + 1) * w_a;
}

/* ---- round robin ------------------------------------------------------- */

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
        unsigned wt = lb_weight(b, i);          /* the runtime weight: admin API */
        w[i] = p->strategy == LB_STRATEGY_ROUND_ROBIN ? (wt > 0) : wt;
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

/* The cursor is shared by the workers: another one's tickets taken
 * between ours can leave us only the turns of unusable servers (one of two
 * drained: we take the first ticket, it takes the second, we take the
 * third). Before saying "no server", look at the whole cycle once. */
static int lb_rr_scan(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    for (size_t j = 0; j < b->seq_len; j++)
        if (lb_usable(b, b->seq[j], ctx))
            return (int)b->seq[j];
    return -1;
}

/* Slow start for the cycle and the ring: whether server I, usable, lets
 * this turn go (a random draw) or this key (its rank), at the share of
 * its ramp it is at. The draw only while it ramps. */
static bool lb_ramp_skips(struct lb_balancer *b, size_t i, const struct lb_pick_ctx *ctx,
                          const uint64_t *rank)
{
    unsigned p = lb_ramp(b, i, ctx);
    return p < 1000 && (rank != NULL ? *rank : lb_rand(b)) % 1000 >= p;
}

/* With slow start: a ramping server's turn is skipped too, with the
 * probability of the share it does not have yet; when every usable server
 * skipped, the first of them is the answer. (Apart, so that the common
 * loop stays as small as it was.) */
static int lb_rr_pick_ramp(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    int ramping = -1;
    for (size_t step = 0; step < b->seq_len; step++) {
        uint64_t k = atomic_fetch_add_explicit(b->cursor, 1, memory_order_relaxed);
        size_t i = b->seq[k % b->seq_len];
        if (!lb_usable(b, i, ctx))
            continue;
        if (!lb_ramp_skips(b, i, ctx, NULL))
            return (int)i;
        if (ramping < 0)
            ramping = (int)i;
    }
    return ramping >= 0 ? ramping : lb_rr_scan(b, ctx);
}

static int lb_rr_pick(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    if (b->seq_len == 0)
        return -1;
    if (b->slow_start_ms != 0)
        return lb_rr_pick_ramp(b, ctx);
    /* An unusable server's turn is skipped by taking the next ticket, so
     * the others keep their proportions (not: its share to its successor). */
    for (size_t step = 0; step < b->seq_len; step++) {
        uint64_t k = atomic_fetch_add_explicit(b->cursor, 1, memory_order_relaxed);
        size_t i = b->seq[k % b->seq_len];
        if (lb_usable(b, i, ctx))
            return (int)i;
    }
    return lb_rr_scan(b, ctx);
}

static void lb_rr_destroy(struct lb_balancer *b)
{
    free(b->seq);
    b->seq = NULL;
}

/* ---- least connections ------------------------------------------------- */

static int lb_lc_pick(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    int best = -1;
    uint64_t best_load = 0, best_w = 0;
    size_t start = b->n ? b->rotor++ % b->n : 0;
    for (size_t k = 0; k < b->n; k++) {
        size_t i = (start + k) % b->n;
        if (!lb_usable(b, i, ctx))
            continue;
        uint64_t load = (uint64_t)lb_inflight(b, i);
        uint64_t w = lb_eff_weight(b, i, ctx);
        if (best < 0 || lb_lighter(load, w, best_load, best_w)) {
            best = (int)i;
            best_load = load;
            best_w = w;
        }
    }
    return best;
}

/* ---- random and power of two ------------------------------------------ */

static int lb_random_pick(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    uint64_t total = 0;
    for (size_t i = 0; i < b->n; i++)
        if (lb_usable(b, i, ctx))
            total += lb_eff_weight(b, i, ctx);
    if (total == 0)
        return -1;
    uint64_t r = lb_rand(b) % total;
    for (size_t i = 0; i < b->n; i++) {
        if (!lb_usable(b, i, ctx))
            continue;
        uint64_t w = lb_eff_weight(b, i, ctx);
        if (r < w)
            return (int)i;
        r -= w;
    }
    return -1;
}

/* Two distinct usable servers at random (weighted), or one if only one is. */
static int lb_two_choices(struct lb_balancer *b, const struct lb_pick_ctx *ctx, int *second)
{
    int a = lb_random_pick(b, ctx);
    *second = -1;
    if (a < 0)
        return -1;
    for (int tries = 0; tries < 4 && *second < 0; tries++) {
        int c = lb_random_pick(b, ctx);
        if (c != a)
            *second = c;
    }
    return a;
}

static int lb_p2c_pick(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    int c;
    int a = lb_two_choices(b, ctx, &c);
    if (a < 0 || c < 0)
        return a;
    return lb_lighter((uint64_t)lb_inflight(b, (size_t)c), lb_eff_weight(b, (size_t)c, ctx),
                      (uint64_t)lb_inflight(b, (size_t)a), lb_eff_weight(b, (size_t)a, ctx)) ? c : a;
}

/* ---- least time (peak EWMA) -------------------------------------------- */

/* A server with no sample yet is assumed fast, so it gets tried. */
#define LB_EWMA_DEFAULT_US 1000
#define LB_EWMA_TAU_US     10000000.0       /* 10 s decay */

static double lb_cost(struct lb_balancer *b, size_t i, const struct lb_pick_ctx *ctx)
{
    uint64_t ewma = atomic_load_explicit(&b->backends[i]->ewma_us, memory_order_relaxed);
    double latency = ewma ? (double)ewma : LB_EWMA_DEFAULT_US;
    return latency * (double)(lb_inflight(b, i) + 1) / (double)lb_eff_weight(b, i, ctx);
}

static int lb_lt_pick(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    int c;
    int a = lb_two_choices(b, ctx, &c);
    if (a < 0 || c < 0)
        return a;
    return lb_cost(b, (size_t)c, ctx) < lb_cost(b, (size_t)a, ctx) ? c : a;
}

void lb_backend_observe(struct lb_shm_backend *b, uint64_t sample_us, uint64_t now_us)
{
    /* Several workers may race here; a lost update only loses one sample. */
    uint64_t old = atomic_load_explicit(&b->ewma_us, memory_order_relaxed);
    uint64_t stamp = atomic_load_explicit(&b->ewma_stamp_us, memory_order_relaxed);
    uint64_t next;
    if (old == 0 || sample_us > old) {
        next = sample_us;       /* peak: react to a slowdown at once */
    } else {
        double dt = now_us > stamp ? (double)(now_us - stamp) : 0.0;
        double w = exp(-dt / LB_EWMA_TAU_US);
        next = (uint64_t)((double)old * w + (double)sample_us * (1.0 - w));
    }
    atomic_store_explicit(&b->ewma_us, next ? next : 1, memory_order_relaxed);
    atomic_store_explicit(&b->ewma_stamp_us, now_us, memory_order_relaxed);
}

/* ---- consistent hashing (ketama) ---------------------------------------- */

#define LB_KETAMA_POINTS 160            /* per unit of weight */
#define LB_KETAMA_MAX    (1u << 20)

static int lb_ring_cmp(const void *a, const void *b)
{
    const struct lb_ring_point *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->server < y->server ? -1 : x->server > y->server;
}

static int lb_hash_init(struct lb_balancer *b)
{
    const struct lb_pool_cfg *p = b->pool;
    uint64_t total = 0;
    for (size_t i = 0; i < p->nservers; i++)
        total += (uint64_t)lb_weight(b, i) * LB_KETAMA_POINTS;
    /* Scale down uniformly if the ring would be too large. */
    uint64_t per = LB_KETAMA_POINTS;
    while (total > LB_KETAMA_MAX && per > 1) {
        per /= 2;
        total = 0;
        for (size_t i = 0; i < p->nservers; i++)
            total += (uint64_t)lb_weight(b, i) * per;
    }
    b->ring = calloc(total ? total : 1, sizeof(*b->ring));
    if (b->ring == NULL)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < p->nservers; i++) {
        /* Points depend on the server's address only, never on its place in
         * the list: the same server lands on the same points in every
         * configuration, which is what keeps keys from moving. */
        const char *addr = b->names != NULL ? b->names[i] : p->servers[i].address;
        size_t alen = strlen(addr);
        uint64_t base = lb_hash64(addr, alen);
        uint64_t points = (uint64_t)lb_weight(b, i) * per;
        if (k + points > total)
            points = total - k;         /* a weight raised since the count */
        for (uint64_t j = 0; j < points; j++) {
            b->ring[k].hash = lb_mix64(base ^ lb_mix64(j + 1));
            b->ring[k].server = (uint32_t)i;
            k++;
        }
    }
    qsort(b->ring, k, sizeof(*b->ring), lb_ring_cmp);
    b->ring_len = k;
    return 0;
}

static int lb_hash_pick(struct lb_balancer *b, const struct lb_pick_ctx *ctx)
{
    if (b->ring_len == 0)
        return -1;
    size_t lo = 0, hi = b->ring_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b->ring[mid].hash < ctx->key)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* Walk clockwise past unusable servers: their keys spread over the
     * others, and come back when they do. Past a ramping server too for
     * the keys whose rank its ramp has not reached yet (the rank: another
     * hash of the key, so it is independent of the ring position). */
    uint64_t rank = b->slow_start_ms != 0 ? lb_mix64(ctx->key ^ 0x9e3779b97f4a7c15ULL) : 0;
    int ramping = -1;
    for (size_t step = 0; step < b->ring_len; step++) {
        uint32_t s = b->ring[(lo + step) % b->ring_len].server;
        if (!lb_usable(b, s, ctx))
            continue;
        if (b->slow_start_ms == 0 || !lb_ramp_skips(b, s, ctx, &rank))
            return (int)s;
        if (ramping < 0)
            ramping = (int)s;
    }
    return ramping;
}

static void lb_hash_destroy(struct lb_balancer *b)
{
    free(b->ring);
    b->ring = NULL;
}

/* ---- the table ----------------------------------------------------------- */

static const struct lb_balancer_ops lb_rr_ops = {
    .name = "round_robin", .init = lb_rr_init, .pick = lb_rr_pick, .destroy = lb_rr_destroy,
};
static const struct lb_balancer_ops lb_lc_ops = {
    .name = "least_connections", .pick = lb_lc_pick,
};
static const struct lb_balancer_ops lb_p2c_ops = {
    .name = "power_of_two", .pick = lb_p2c_pick,
};
static const struct lb_balancer_ops lb_random_ops = {
    .name = "random", .pick = lb_random_pick,
};
static const struct lb_balancer_ops lb_hash_ops = {
    .name = "hash", .init = lb_hash_init, .pick = lb_hash_pick, .destroy = lb_hash_destroy,
};
static const struct lb_balancer_ops lb_lt_ops = {
    .name = "least_time", .pick = lb_lt_pick,
};

static const struct lb_balancer_ops *lb_balancer_ops_for(enum lb_strategy s)
{
    switch (s) {
    case LB_STRATEGY_ROUND_ROBIN:
    case LB_STRATEGY_WEIGHTED_ROUND_ROBIN:
        return &lb_rr_ops;
    case LB_STRATEGY_LEAST_CONNECTIONS: return &lb_lc_ops;
    case LB_STRATEGY_POWER_OF_TWO:      return &lb_p2c_ops;
    case LB_STRATEGY_RANDOM:            return &lb_random_ops;
    case LB_STRATEGY_HASH:              return &lb_hash_ops;
    case LB_STRATEGY_LEAST_TIME:        return &lb_lt_ops;
    }
    return NULL;
}

int lb_balancer_init(struct lb_balancer *b, const struct lb_pool_cfg *pool,
                     struct lb_shm_backend **backends, lb_counter_t *cursor)
{
    *b = (struct lb_balancer){ .pool = pool, .backends = backends, .n = pool->nservers,
                               .slow_start_ms = pool->slow_start_ms,
                               .ops = lb_balancer_ops_for(pool->strategy) };
    b->cursor = cursor ? cursor : &b->private_cursor;
    if (getrandom(b->rng, sizeof(b->rng), GRND_NONBLOCK) != (ssize_t)sizeof(b->rng) ||
        (b->rng[0] | b->rng[1]) == 0) {
        b->rng[0] = lb_wall_ms() ^ ((uint64_t)getpid() << 32);
        b->rng[1] = ~b->rng[0] | 1;
    }
    if (b->ops == NULL || (b->ops->init != NULL && b->ops->init(b) < 0)) {
        lb_balancer_destroy(b);
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

int lb_balancer_init_watched(struct lb_balancer *b, const struct lb_pool_cfg *pool,
                             struct lb_shm_backend **backends, lb_counter_t *cursor,
                             const _Atomic uint32_t *weights_gen)
{
    /* Read before the weights: a change made meanwhile shows as a newer
     * count at the first pick, which builds again. */
    uint32_t gen = atomic_load_explicit(weights_gen, memory_order_acquire);
    if (lb_balancer_init(b, pool, backends, cursor) < 0)
        return -1;
    b->weights_gen = weights_gen;
    b->seen_gen = gen;
    return 0;
}

void lb_balancer_refresh(struct lb_balancer *b)
{
    b->seen_gen = atomic_load_explicit(b->weights_gen, memory_order_acquire);
    (void)lb_balancer_rebuild(b);   /* out of memory: the old cycle rather than none */
}

int lb_balancer_rebuild(struct lb_balancer *b)
{
    if (b->ops == NULL || b->ops->init == NULL)
        return 0;       /* the others read everything live from shm */
    struct lb_balancer next = *b;
    next.seq = NULL;
    next.ring = NULL;
    if (next.ops->init(&next) < 0) {
        if (next.ops->destroy != NULL)
            next.ops->destroy(&next);
        return -1;
    }
    if (b->ops->destroy != NULL)
        b->ops->destroy(b);
    b->seq = next.seq;
    b->seq_len = next.seq_len;
    b->ring = next.ring;
    b->ring_len = next.ring_len;
    return 0;
}

void lb_balancer_destroy(struct lb_balancer *b)
{
    if (b->ops != NULL && b->ops->destroy != NULL)
        b->ops->destroy(b);
    b->ops = NULL;
}

bool lb_balancer_usable(const struct lb_balancer *b, size_t i, const struct lb_pick_ctx *ctx)
{
    return lb_usable(b, i, ctx);
}

bool lb_balancer_up(const struct lb_balancer *b, size_t i, const struct lb_pick_ctx *ctx)
{
    return lb_up(b, i, ctx);
}
