#include "lbtop/sample.h"

#include <string.h>

#include "shared/shm.h"
#include "shared/util.h"

static const uint64_t lb_top_bounds_us[LB_DURATION_BUCKETS] = LB_DURATION_BOUNDS_US;

static void lb_top_copy_name(char *dst, const char *src, size_t n)
{
    /* The writer may be changing it (reload): never read past N. */
    memcpy(dst, src, n);
    dst[n - 1] = '\0';
}

static void lb_top_take_servers(const struct lb_shm_header *h, struct lb_top_sample *s)
{
    uint64_t now = lb_now_ms();
    s->nservers = 0;
    for (unsigned p = 0; p < h->max_pools && p < LB_SHM_MAX_POOLS; p++) {
        const struct lb_shm_pool *pool = lb_shm_pool(h, p);
        if (atomic_load(&pool->state) != LB_ENTRY_ACTIVE)
            continue;
        for (unsigned b = 0; b < h->max_backends && b < LB_SHM_MAX_BACKENDS; b++) {
            const struct lb_shm_backend *be = lb_shm_backend(h, b);
            if (atomic_load(&be->state) != LB_ENTRY_ACTIVE || be->pool_id != p)
                continue;
            struct lb_top_server *v = &s->servers[s->nservers++];
            struct lb_backend_totals t;
            lb_shm_backend_sum(h, b, &t);
            v->id = b;
            v->pool_id = p;
            lb_top_copy_name(v->pool, pool->name, sizeof(v->pool));
            lb_top_copy_name(v->address, lb_shm_backend_name(be), sizeof(v->address));
            v->weight = atomic_load(&be->weight);
            v->up = atomic_load(&be->health) == LB_HEALTH_UP;
            v->state = lb_backend_admin_state(be);
            v->file_weight = atomic_load(&be->file_weight);
            v->breaker = lb_shm_breaker_shown(be, now);
            v->inflight = atomic_load(&be->inflight);
            if (v->inflight < 0)
                v->inflight = 0;
            v->ewma_ms = (double)atomic_load(&be->ewma_us) / 1000.0;
            v->requests = t.requests;
            v->responses = 0;
            for (unsigned c = 0; c < LB_STATUS_CLASSES; c++)
                v->responses += t.responses[c];
            v->r5xx = t.responses[4];
            v->failures = t.failures;
            memcpy(v->duration, t.duration, sizeof(v->duration));
        }
    }
}

static void lb_top_take_workers(const struct lb_shm_header *h, struct lb_top_sample *s)
{
    s->nworkers = 0;
    unsigned used = atomic_load(&h->slots_used);
    for (unsigned i = 0; i < used && i < h->max_slots && i < LB_SHM_MAX_SLOTS; i++) {
        struct lb_shm_worker *w = lb_shm_worker(h, i);
        uint32_t st = atomic_load(&w->state);
        if (st == LB_SLOT_FREE)
            continue;
        struct lb_worker_totals t = { 0 };
        lb_shm_worker_add(w, &t);
        struct lb_top_worker *v = &s->workers[s->nworkers++];
        v->slot = i;
        v->id = atomic_load(&w->id);
        v->pid = atomic_load(&w->pid);
        v->state = st;
        v->generation = atomic_load(&w->generation);
        v->restarts = v->id < LB_MAX_WORKERS ? atomic_load(&h->worker_restarts[v->id]) : 0;
        v->connections = t.connections;
        v->active = t.active_connections;
        v->requests = t.requests;
    }
}

static void lb_top_take_limits(const struct lb_shm_header *h, struct lb_top_sample *s)
{
    s->nlimits = 0;
    for (unsigned i = 0; i < h->max_limits && i < LB_SHM_MAX_LIMITS; i++) {
        const struct lb_shm_limit *l = lb_shm_limit(h, i);
        if (atomic_load(&l->state) != LB_ENTRY_ACTIVE)
            continue;
        struct lb_limit_totals t;
        lb_shm_limit_sum(h, i, &t);
        struct lb_top_limit *v = &s->limits[s->nlimits++];
        v->id = i;
        lb_top_copy_name(v->name, l->name, sizeof(v->name));
        lb_top_copy_name(v->key, l->key, sizeof(v->key));
        lb_top_copy_name(v->rate, l->rate, sizeof(v->rate));
        v->burst = l->burst;
        v->dry_run = l->dry_run != 0;
        v->keys = t.keys;
        v->allowed = t.allowed + t.delayed;
        v->limited = t.limited + t.dry_run;
    }
}

void lb_top_sample_take(const struct lb_shm_header *h, struct lb_top_sample *s)
{
    s->taken_ms = lb_now_ms();
    s->master_pid = atomic_load(&h->master_pid);
    s->generation = atomic_load(&h->generation);
    s->started_ms = atomic_load(&h->started_ms);
    s->reloads = atomic_load(&h->reloads);
    s->workers_configured = atomic_load(&h->workers);
    lb_top_take_servers(h, s);
    lb_top_take_workers(h, s);
    lb_top_take_limits(h, s);
}

/* A sample of another instance (restart) shares no entity with this one:
 * counters started again from zero. */
static bool lb_top_comparable(const struct lb_top_sample *prev)
{
    return prev != NULL && prev->taken_ms != 0;
}

bool lb_top_server_prev(const struct lb_top_sample *prev, const struct lb_top_server *cur,
                        const struct lb_top_server **out)
{
    if (!lb_top_comparable(prev))
        return false;
    for (unsigned i = 0; i < prev->nservers; i++) {
        const struct lb_top_server *p = &prev->servers[i];
        if (p->id == cur->id && strcmp(p->address, cur->address) == 0 &&
            strcmp(p->pool, cur->pool) == 0 && p->requests <= cur->requests) {
            *out = p;
            return true;
        }
    }
    return false;
}

bool lb_top_worker_prev(const struct lb_top_sample *prev, const struct lb_top_worker *cur,
                        const struct lb_top_worker **out)
{
    if (!lb_top_comparable(prev))
        return false;
    for (unsigned i = 0; i < prev->nworkers; i++) {
        const struct lb_top_worker *p = &prev->workers[i];
        /* Counters are per slot and cumulative across owners. */
        if (p->slot == cur->slot && p->requests <= cur->requests) {
            *out = p;
            return true;
        }
    }
    return false;
}

bool lb_top_limit_prev(const struct lb_top_sample *prev, const struct lb_top_limit *cur,
                       const struct lb_top_limit **out)
{
    if (!lb_top_comparable(prev))
        return false;
    for (unsigned i = 0; i < prev->nlimits; i++) {
        const struct lb_top_limit *p = &prev->limits[i];
        if (p->id == cur->id && strcmp(p->name, cur->name) == 0 && p->allowed <= cur->allowed &&
            p->limited <= cur->limited) {
            *out = p;
            return true;
        }
    }
    return false;
}

double lb_top_quantile_ms(const uint64_t *buckets, double q)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < LB_DURATION_BUCKETS; i++)
        total += buckets[i];
    if (total == 0)
        return -1;
    double rank = q * (double)total;
    uint64_t below = 0;
    for (unsigned i = 0; i < LB_DURATION_BUCKETS; i++) {
        if (buckets[i] == 0 || (double)(below + buckets[i]) < rank) {
            below += buckets[i];
            continue;
        }
        double lo = i ? (double)lb_top_bounds_us[i - 1] : 0;
        if (lb_top_bounds_us[i] == UINT64_MAX)
            return lo / 1000.0;         /* +Inf bucket: its lower bound, as Prometheus */
        double hi = (double)lb_top_bounds_us[i];
        return (lo + (hi - lo) * (rank - (double)below) / (double)buckets[i]) / 1000.0;
    }
    return (double)lb_top_bounds_us[LB_DURATION_BUCKETS - 2] / 1000.0;
}
