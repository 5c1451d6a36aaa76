#include "shared/runtime.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "shared/shm.h"

/* The pool's runtime slots, in row order: the backend rows it uses. */
static size_t lb_runtime_slots(const struct lb_shm_header *h, unsigned pool_id, unsigned *ids,
                               size_t max)
{
    size_t n = 0;
    for (unsigned i = 0; i < h->max_backends && n < max; i++) {
        const struct lb_shm_backend *b = lb_shm_backend(h, i);
        if (b->runtime && b->pool_id == pool_id &&
            atomic_load_explicit(&b->state, memory_order_acquire) == LB_ENTRY_ACTIVE)
            ids[n++] = i;
    }
    return n;
}

static int lb_runtime_find(const struct lb_shm_header *h, const unsigned *ids, size_t n,
                           const char *address, uint32_t state)
{
    for (size_t k = 0; k < n; k++) {
        const struct lb_shm_backend *b = lb_shm_backend(h, ids[k]);
        if (atomic_load(&b->rt_state) == state && strcmp(b->rt_address, address) == 0)
            return (int)k;
    }
    return -1;
}

/* Under the pool's seqlock: S into the pool (its slot if it has one, one
 * it is draining from, else an EMPTY one). 1: added, 0: there already
 * (weight set), -1: no room. */
static int lb_runtime_put(struct lb_shm_header *h, const unsigned *ids, size_t n,
                          const struct lb_runtime_server *s, uint64_t now_ms, bool *reweighted)
{
    int k = lb_runtime_find(h, ids, n, s->address, LB_RT_ACTIVE);
    if (k >= 0) {
        struct lb_shm_backend *b = lb_shm_backend(h, ids[k]);
        if (atomic_load(&b->weight) != s->weight) {
            atomic_store(&b->weight, s->weight);
            *reweighted = true;
        }
        return 0;
    }
    k = lb_runtime_find(h, ids, n, s->address, LB_RT_DRAINING);
    if (k >= 0) {
        /* Back before its slot went: with its history, ramping again. */
        struct lb_shm_backend *b = lb_shm_backend(h, ids[k]);
        atomic_store(&b->usable_ms, now_ms);
        atomic_store(&b->weight, s->weight);
        atomic_store_explicit(&b->rt_state, LB_RT_ACTIVE, memory_order_release);
        return 1;
    }
    k = lb_runtime_find(h, ids, n, "", LB_RT_EMPTY);
    for (size_t j = 0; k < 0 && j < n; j++)
        if (atomic_load(&lb_shm_backend(h, ids[j])->rt_state) == LB_RT_EMPTY)
            k = (int)j;
    if (k < 0)
        return -1;
    struct lb_shm_backend *b = lb_shm_backend(h, ids[k]);
    lb_shm_backend_fresh(h, ids[k]);
    snprintf(b->rt_address, sizeof(b->rt_address), "%s", s->address);
    b->rt_addr = s->addr;
    atomic_fetch_add(&b->rt_epoch, 1);
    /* Slow start from now, like a server a reload adds. */
    atomic_store(&b->usable_ms, now_ms);
    atomic_store(&b->weight, s->weight);
    atomic_store_explicit(&b->rt_state, LB_RT_ACTIVE, memory_order_release);
    return 1;
}

/* Under the seqlock: the pool's count of ACTIVE runtime servers. */
static void lb_runtime_count(struct lb_shm_header *h, struct lb_shm_pool *p, const unsigned *ids,
                             size_t n)
{
    uint32_t active = 0;
    for (size_t k = 0; k < n; k++)
        active += atomic_load(&lb_shm_backend(h, ids[k])->rt_state) == LB_RT_ACTIVE;
    atomic_store(&p->runtime_active, active);
}

static void lb_runtime_drain(struct lb_shm_backend *b, uint64_t now_ms)
{
    atomic_store(&b->weight, 0);
    atomic_store(&b->rt_removed_ms, now_ms);
    atomic_store_explicit(&b->rt_state, LB_RT_DRAINING, memory_order_release);
}

size_t lb_runtime_set(struct lb_shm_header *h, unsigned pool_id,
                      const struct lb_runtime_server *v, size_t n, uint64_t now_ms,
                      struct lb_runtime_diff *diff)
{
    unsigned ids[LB_SHM_MAX_BACKENDS];
    size_t nslots = lb_runtime_slots(h, pool_id, ids, LB_SHM_MAX_BACKENDS);
    memset(diff, 0, sizeof(*diff));
    if (nslots == 0)
        return 0;
    struct lb_shm_pool *p = lb_shm_pool(h, pool_id);
    uint32_t locked = lb_shm_seq_lock(&p->servers_seq);
    /* Removals first: a full pool whose answer replaces some servers
     * takes the new ones into the slots that drain no sooner than their
     * grace, so a replacement may find no room yet; the next answer adds
     * it. */
    for (size_t k = 0; k < nslots; k++) {
        struct lb_shm_backend *b = lb_shm_backend(h, ids[k]);
        if (atomic_load(&b->rt_state) != LB_RT_ACTIVE)
            continue;
        bool keep = false;
        for (size_t i = 0; i < n && !keep; i++)
            keep = strcmp(v[i].address, b->rt_address) == 0;
        if (!keep) {
            lb_runtime_drain(b, now_ms);
            diff->removed++;
        }
    }
    for (size_t i = 0; i < n; i++) {
        bool rw = false;
        int r = lb_runtime_put(h, ids, nslots, &v[i], now_ms, &rw);
        diff->added += r > 0;
        diff->full += r < 0;
        diff->reweighted += rw;
    }
    lb_runtime_count(h, p, ids, nslots);
    lb_shm_seq_unlock(&p->servers_seq, locked);
    return nslots;
}

int lb_runtime_add(struct lb_shm_header *h, unsigned pool_id, const struct lb_runtime_server *s,
                   uint64_t now_ms)
{
    unsigned ids[LB_SHM_MAX_BACKENDS];
    size_t nslots = lb_runtime_slots(h, pool_id, ids, LB_SHM_MAX_BACKENDS);
    if (nslots == 0) {
        errno = ENOENT;
        return -1;
    }
    struct lb_shm_pool *p = lb_shm_pool(h, pool_id);
    uint32_t locked = lb_shm_seq_lock(&p->servers_seq);
    bool rw = false;
    int r = lb_runtime_put(h, ids, nslots, s, now_ms, &rw);
    lb_runtime_count(h, p, ids, nslots);
    lb_shm_seq_unlock(&p->servers_seq, locked);
    if (r < 0) {
        errno = ENOSPC;
        return -1;
    }
    return 0;
}

int lb_runtime_remove(struct lb_shm_header *h, unsigned pool_id, const char *address,
                      uint64_t now_ms)
{
    unsigned ids[LB_SHM_MAX_BACKENDS];
    size_t nslots = lb_runtime_slots(h, pool_id, ids, LB_SHM_MAX_BACKENDS);
    int k = lb_runtime_find(h, ids, nslots, address, LB_RT_ACTIVE);
    if (k < 0) {
        errno = ENOENT;
        return -1;
    }
    struct lb_shm_pool *p = lb_shm_pool(h, pool_id);
    uint32_t locked = lb_shm_seq_lock(&p->servers_seq);
    lb_runtime_drain(lb_shm_backend(h, ids[k]), now_ms);
    lb_runtime_count(h, p, ids, nslots);
    lb_shm_seq_unlock(&p->servers_seq, locked);
    return 0;
}

unsigned lb_runtime_reap(struct lb_shm_header *h, uint64_t now_ms, uint64_t grace_ms)
{
    unsigned freed = 0;
    for (unsigned i = 0; i < h->max_backends; i++) {
        struct lb_shm_backend *b = lb_shm_backend(h, i);
        if (!b->runtime || atomic_load(&b->state) != LB_ENTRY_ACTIVE ||
            atomic_load(&b->rt_state) != LB_RT_DRAINING)
            continue;
        /* In flight anywhere restarts the grace: the last request's end
         * is what counts. */
        if (atomic_load(&b->inflight) > 0)
            atomic_store(&b->rt_removed_ms, now_ms);
        if (now_ms < atomic_load(&b->rt_removed_ms) + grace_ms)
            continue;
        struct lb_shm_pool *p = lb_shm_pool(h, b->pool_id);
        uint32_t locked = lb_shm_seq_lock(&p->servers_seq);
        atomic_store(&b->rt_state, LB_RT_EMPTY);
        lb_shm_seq_unlock(&p->servers_seq, locked);
        freed++;
    }
    return freed;
}

size_t lb_runtime_list(const struct lb_shm_header *h, unsigned pool_id,
                       struct lb_runtime_server *out, size_t max)
{
    size_t n = 0;
    for (unsigned i = 0; i < h->max_backends && n < max; i++) {
        const struct lb_shm_backend *b = lb_shm_backend(h, i);
        if (!b->runtime || b->pool_id != pool_id ||
            atomic_load(&b->state) != LB_ENTRY_ACTIVE ||
            atomic_load(&b->rt_state) != LB_RT_ACTIVE)
            continue;
        snprintf(out[n].address, sizeof(out[n].address), "%s", b->rt_address);
        out[n].addr = b->rt_addr;
        out[n].weight = atomic_load(&b->weight);
        n++;
    }
    return n;
}

bool lb_runtime_read(const struct lb_shm_header *h, unsigned pool_id, const uint32_t *ids,
                     size_t n, struct lb_runtime_slot *out, uint32_t *seq)
{
    _Atomic uint32_t *sq = (_Atomic uint32_t *)&lb_shm_pool(h, pool_id)->servers_seq;
    for (int tries = 0; tries < 100; tries++) {
        uint32_t before = atomic_load_explicit(sq, memory_order_acquire);
        if (before & 1) {
            sched_yield();
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            const struct lb_shm_backend *b = lb_shm_backend(h, ids[k]);
            out[k].state = atomic_load_explicit(&b->rt_state, memory_order_relaxed);
            out[k].epoch = atomic_load_explicit(&b->rt_epoch, memory_order_relaxed);
            memcpy(out[k].address, b->rt_address, sizeof(out[k].address));
            out[k].address[sizeof(out[k].address) - 1] = '\0';
            out[k].addr = b->rt_addr;
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(sq, memory_order_relaxed) == before) {
            *seq = before;
            return true;
        }
    }
    return false;
}
