#include "shared/shm.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/version.h"

#define LB_ALIGN(x) (((x) + (LB_CACHELINE - 1)) & ~(uint64_t)(LB_CACHELINE - 1))
#define LB_PAGE_ALIGN(x) (((x) + 4095) & ~(uint64_t)4095)

static void lb_shm_layout(struct lb_shm_header *h)
{
    uint64_t off = LB_ALIGN(sizeof(*h));
    h->off_workers = off;
    off = LB_ALIGN(off + sizeof(struct lb_shm_worker) * LB_SHM_MAX_SLOTS);
    h->off_pools = off;
    off = LB_ALIGN(off + sizeof(struct lb_shm_pool) * LB_SHM_MAX_POOLS);
    h->off_backends = off;
    off = LB_ALIGN(off + sizeof(struct lb_shm_backend) * LB_SHM_MAX_BACKENDS);
    h->off_stats = off;
    /* Each slot's row is a multiple of the cache line: rows never share one. */
    uint64_t row = LB_ALIGN(sizeof(struct lb_shm_backend_stats) * LB_SHM_MAX_BACKENDS);
    off += row * LB_SHM_MAX_SLOTS;
    off = LB_ALIGN(off);
    h->off_tls = off;
    off = LB_ALIGN(off + sizeof(struct lb_shm_tls) * LB_SHM_MAX_TLS);
    h->off_faults = off;
    off = LB_ALIGN(off + sizeof(struct lb_shm_fault) * LB_SHM_MAX_FAULTS);
    h->off_acme = off;
    off = LB_ALIGN(off + sizeof(struct lb_shm_acme));
    h->off_limits = off;
    off += sizeof(struct lb_shm_limit) * LB_SHM_MAX_LIMITS;
    off = LB_ALIGN(off);
    h->off_limit_stats = off;
    off += sizeof(struct lb_shm_limit_stats) * LB_SHM_MAX_LIMITS * LB_SHM_MAX_SLOTS;
    /* Page-aligned: a worker's table and a limit's are given back to the
     * kernel (MADV_REMOVE) when their owner goes. */
    off = LB_PAGE_ALIGN(off);
    h->off_conn = off;
    off += sizeof(struct lb_rl_entry) * LB_SHM_CONN_ENTRIES * LB_SHM_MAX_SLOTS;
    off = LB_PAGE_ALIGN(off);
    h->off_arena = off;
    h->arena_size = LB_SHM_ARENA_SIZE;
    off += LB_SHM_ARENA_SIZE;
    h->size = LB_PAGE_ALIGN(off);
}

int lb_shm_create(struct lb_shm *shm)
{
    struct lb_shm_header probe = { 0 };
    lb_shm_layout(&probe);

    int fd = memfd_create("lbd-shm", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    /* The file is sparse: pages cost memory only once a counter is touched. */
    if (ftruncate(fd, (off_t)probe.size) < 0)
        goto err;
    void *base = mmap(NULL, probe.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        goto err;

    struct lb_shm_header *h = base;
    *h = probe;
    h->magic = LB_SHM_MAGIC;
    h->layout_version = lb_shm_layout_version;
    h->header_size = sizeof(*h);
    h->max_slots = LB_SHM_MAX_SLOTS;
    h->max_pools = LB_SHM_MAX_POOLS;
    h->max_backends = LB_SHM_MAX_BACKENDS;
    h->max_workers = LB_MAX_WORKERS;
    h->max_limits = LB_SHM_MAX_LIMITS;
    h->conn_entries = LB_SHM_CONN_ENTRIES;
    /* Secret, so clients cannot aim collisions at the tables. */
    if (getrandom(h->rl_hash_key, sizeof(h->rl_hash_key), 0) != (ssize_t)sizeof(h->rl_hash_key)) {
        h->rl_hash_key[0] = lb_hash64(&probe, sizeof(probe)) ^ lb_wall_us();
        h->rl_hash_key[1] = ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)base;
    }
    h->max_tls = LB_SHM_MAX_TLS;
    h->max_faults = LB_SHM_MAX_FAULTS;
    snprintf(h->version, sizeof(h->version), "%s", lb_version);
    atomic_store(&h->master_pid, (int32_t)getpid());
    atomic_store(&h->started_ms, lb_wall_ms());

    shm->fd = fd;
    shm->base = base;
    shm->size = probe.size;
    shm->hdr = h;
    return 0;
err:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

bool lb_shm_compatible(const struct lb_shm_header *h, size_t file_size, const char **why)
{
    struct lb_shm_header probe = { 0 };
    lb_shm_layout(&probe);
    if (file_size < sizeof(*h))
        *why = "segment too small";
    else if (h->magic != LB_SHM_MAGIC)
        *why = "not an lbd segment (bad magic)";
    else if (h->layout_version != lb_shm_layout_version)
        *why = "segment layout version differs from this binary's";
    else if (h->size > (uint64_t)file_size)
        *why = "segment truncated";
    /* Same version, other sizes: a build with other table limits. */
    else if (h->header_size != sizeof(*h) || h->size != probe.size ||
             h->max_slots != LB_SHM_MAX_SLOTS || h->max_backends != LB_SHM_MAX_BACKENDS ||
             h->max_pools != LB_SHM_MAX_POOLS || h->off_arena != probe.off_arena)
        *why = "segment tables sized differently from this binary's";
    else
        return true;
    return false;
}

int lb_shm_attach(int fd, bool readonly, struct lb_shm *shm, const char **why)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof(struct lb_shm_header)) {
        *why = "segment too small";
        return -1;
    }
    int prot = PROT_READ | (readonly ? 0 : PROT_WRITE);
    void *base = mmap(NULL, (size_t)st.st_size, prot, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        *why = "mmap failed";
        return -1;
    }
    if (lb_shm_compatible(base, (size_t)st.st_size, why)) {
        shm->fd = fd;
        shm->base = base;
        shm->size = (size_t)st.st_size;
        shm->hdr = base;
        return 0;
    }
    munmap(base, (size_t)st.st_size);
    return -1;
}

int lb_shm_reader_fd(int fd)
{
    /* Owner only: a reader's fd could otherwise be reopened for writing
     * through /proc (a memfd is created 0777). */
    if (fchmod(fd, 0600) < 0)
        return -1;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    return open(path, O_RDONLY | O_CLOEXEC);
}

void lb_shm_retire(int fd)
{
    _Static_assert(offsetof(struct lb_shm_header, magic) == 0, "the magic comes first");
    struct stat st;
    if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof(uint64_t))
        return;
    uint64_t *magic = mmap(NULL, sizeof(*magic), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (magic == MAP_FAILED)
        return;
    uint64_t want = LB_SHM_MAGIC;
    __atomic_compare_exchange_n(magic, &want, LB_SHM_MAGIC_RETIRED, false, __ATOMIC_RELEASE,
                                __ATOMIC_RELAXED);
    munmap(magic, sizeof(*magic));
}

bool lb_shm_retired(const struct lb_shm_header *h)
{
    return __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != LB_SHM_MAGIC;
}

void lb_shm_close(struct lb_shm *shm)
{
    if (shm->base != NULL)
        munmap(shm->base, shm->size);
    if (shm->fd >= 0)
        close(shm->fd);
    shm->base = NULL;
    shm->hdr = NULL;
    shm->fd = -1;
}

static int lb_shm_pool_id(struct lb_shm_header *h, const char *name)
{
    int free_id = -1;
    for (unsigned i = 0; i < h->max_pools; i++) {
        struct lb_shm_pool *p = lb_shm_pool(h, i);
        uint32_t st = atomic_load(&p->state);
        if (st != LB_ENTRY_FREE && strcmp(p->name, name) == 0)
            return (int)i;
        if (st == LB_ENTRY_FREE && free_id < 0)
            free_id = (int)i;
    }
    if (free_id >= 0) {
        struct lb_shm_pool *p = lb_shm_pool(h, (unsigned)free_id);
        snprintf(p->name, sizeof(p->name), "%s", name);
        atomic_store(&p->rr_next, 0);
        atomic_store(&p->breakers_open, 0);
        atomic_store(&p->breaker_refused, 0);
        atomic_store(&p->queue_depth, 0);
        atomic_store(&p->queued, 0);
        for (unsigned k = 0; k < LB_QUEUE_REFUSALS; k++)
            atomic_store(&p->queue_refused[k], 0);
        for (unsigned k = 0; k < LB_RETRY_REASONS; k++)
            atomic_store(&p->retries[k], 0);
        atomic_store(&p->retry_budget_exhausted, 0);
        atomic_store(&p->disco_failing, 0);
        atomic_store(&p->disco_errors, 0);
        atomic_store(&p->disco_updates, 0);
        atomic_store(&p->disco_last_success_ms, 0);
        atomic_store(&p->disco_last_update_ms, 0);
    }
    return free_id;
}

/* Closed, with no history: a new server, or a pool whose breaker a reload
 * removed. */
static void lb_shm_breaker_reset(struct lb_shm_backend *b)
{
    atomic_store(&b->breaker, 0);
    atomic_store(&b->fails_in_row, 0);
    atomic_store(&b->breaker_interval_ms, 0);
    atomic_store(&b->breaker_closed_ms, 0);
    for (unsigned k = 0; k < LB_BREAKER_BUCKETS; k++)
        atomic_store(&b->breaker_window[k], 0);
}

/* The id of POOL's server ADDRESS; *ADDED when it was not in use (a new
 * entry, or one a previous reload retired). */
static int lb_shm_backend_id(struct lb_shm_header *h, const char *pool, const char *address,
                             bool *added)
{
    int free_id = -1;
    *added = true;
    for (unsigned i = 0; i < h->max_backends; i++) {
        struct lb_shm_backend *b = lb_shm_backend(h, i);
        uint32_t st = atomic_load(&b->state);
        if (st != LB_ENTRY_FREE && strcmp(b->pool, pool) == 0 &&
            strcmp(b->address, address) == 0) {
            *added = st == LB_ENTRY_RETIRED;
            return (int)i;
        }
        if (st == LB_ENTRY_FREE && free_id < 0)
            free_id = (int)i;
    }
    if (free_id >= 0) {
        struct lb_shm_backend *b = lb_shm_backend(h, (unsigned)free_id);
        lb_shm_backend_fresh(h, (unsigned)free_id);
        snprintf(b->pool, sizeof(b->pool), "%s", pool);
        snprintf(b->address, sizeof(b->address), "%s", address);
    }
    return free_id;
}

void lb_shm_backend_fresh(struct lb_shm_header *h, unsigned id)
{
    {
        /* A reused id starts from zero: no worker writes a FREE entry (nor
         * an EMPTY runtime slot: none has a request in flight there). */
        unsigned used = atomic_load(&h->slots_used);
        for (unsigned s = 0; s < used; s++)
            memset(lb_shm_stats(h, s, id), 0, sizeof(struct lb_shm_backend_stats));
        struct lb_shm_backend *b = lb_shm_backend(h, id);
        atomic_store(&b->health, LB_HEALTH_UP);
        atomic_store(&b->down_reason, LB_DOWN_NONE);
        atomic_store(&b->admin_state, LB_BACKEND_READY);
        atomic_store(&b->weight_override, LB_WEIGHT_NONE);
        atomic_store(&b->check_successes, 0);
        atomic_store(&b->check_failures, 0);
        atomic_store(&b->checks_ok, 0);
        atomic_store(&b->checks_failed, 0);
        atomic_store(&b->last_check_ms, 0);
        atomic_store(&b->last_change_ms, lb_wall_ms());
        atomic_store(&b->inflight, 0);
        atomic_store(&b->retries, 0);
        atomic_store(&b->retries_waiting, 0);
        atomic_store(&b->ewma_us, 0);
        atomic_store(&b->ewma_stamp_us, 0);
        atomic_store(&b->usable_ms, 0);
        lb_shm_breaker_reset(b);
        for (unsigned k = 0; k < LB_BREAKER_STATES; k++)
            atomic_store(&b->breaker_transitions[k], 0);
        lb_shm_error_set(b, "");
    }
}

static bool lb_shm_has_pool(const struct lb_shm_header *h, const char *name)
{
    for (unsigned i = 0; i < h->max_pools; i++) {
        struct lb_shm_pool *p = lb_shm_pool(h, i);
        if (atomic_load(&p->state) != LB_ENTRY_FREE && strcmp(p->name, name) == 0)
            return true;
    }
    return false;
}

static bool lb_shm_has_backend(const struct lb_shm_header *h, const char *pool,
                               const char *address)
{
    for (unsigned i = 0; i < h->max_backends; i++) {
        struct lb_shm_backend *b = lb_shm_backend(h, i);
        if (atomic_load(&b->state) != LB_ENTRY_FREE && strcmp(b->pool, pool) == 0 &&
            strcmp(b->address, address) == 0)
            return true;
    }
    return false;
}

/* ---- rate-limit tables ---- */

/* What a limit's buckets mean: a reload keeps its table (and every key's
 * state) while this and the name stay the same. */
static uint64_t lb_shm_limit_signature(const struct lb_ratelimit_cfg *rl, uint64_t capacity)
{
    char buf[256];
    char header[LB_NAME_MAX];
    size_t i = 0;
    for (; rl->header[i] != '\0' && i + 1 < sizeof(header); i++)
        header[i] = (char)(rl->header[i] >= 'A' && rl->header[i] <= 'Z' ? rl->header[i] + 32
                                                                          : rl->header[i]);
    header[i] = '\0';
    int n = snprintf(buf, sizeof(buf), "%d|%s|%llu|%u|%llu", (int)rl->key, header,
                     (unsigned long long)rl->interval_ns, rl->burst,
                     (unsigned long long)capacity);
    return lb_hash64(buf, n > 0 ? (size_t)n : 0);
}

struct lb_limit_plan {
    int id[LB_RL_MAX_LIMITS];           /* descriptor for cfg->rate_limits[i] */
    bool fresh[LB_RL_MAX_LIMITS];       /* a new table: off and region below */
    uint64_t off[LB_RL_MAX_LIMITS];
    uint64_t region;                    /* bytes of every new table */
};

/* First fit in the arena beside the regions held by descriptors in use
 * and those planned so far. 0 when nothing fits. */
static uint64_t lb_shm_arena_fit(const struct lb_shm_header *h, const struct lb_limit_plan *plan,
                                 size_t nplanned, uint64_t size)
{
    uint64_t start = h->off_arena, end = h->off_arena + h->arena_size;
    uint64_t cand = start;
    for (;;) {
        uint64_t bump = 0;
        for (unsigned d = 0; d < h->max_limits; d++) {
            const struct lb_shm_limit *l = lb_shm_limit(h, d);
            if (atomic_load(&l->state) == LB_ENTRY_FREE)
                continue;
            if (cand < l->off_table + l->region && l->off_table < cand + size &&
                l->off_table + l->region > bump)
                bump = l->off_table + l->region;
        }
        for (size_t i = 0; i < nplanned; i++)
            if (plan->fresh[i] && cand < plan->off[i] + plan->region &&
                plan->off[i] < cand + size && plan->off[i] + plan->region > bump)
                bump = plan->off[i] + plan->region;
        if (bump == 0)
            return cand + size <= end ? cand : 0;
        cand = bump;    /* past what overlapped; try again from there */
        if (cand + size > end)
            return 0;
    }
}

/* Where each of CFG's limits goes: the descriptor with the same name and
 * signature (kept, with its table), or a free descriptor and a free region
 * of the arena. false when either runs out. */
static bool lb_shm_limits_plan(const struct lb_shm_header *h, const struct lb_config *cfg,
                               struct lb_limit_plan *plan)
{
    bool taken[LB_SHM_MAX_LIMITS] = { false };
    uint64_t cap = cfg->rate_limit_table_size;
    plan->region = LB_PAGE_ALIGN(cap * sizeof(struct lb_rl_entry));
    for (size_t i = 0; i < cfg->nrate_limits; i++) {
        const struct lb_ratelimit_cfg *rl = &cfg->rate_limits[i];
        uint64_t sig = lb_shm_limit_signature(rl, cap);
        plan->id[i] = -1;
        plan->fresh[i] = false;
        for (unsigned d = 0; d < h->max_limits && plan->id[i] < 0; d++) {
            const struct lb_shm_limit *l = lb_shm_limit(h, d);
            if (!taken[d] && atomic_load(&l->state) != LB_ENTRY_FREE &&
                l->signature == sig && l->capacity == cap && strcmp(l->name, rl->name) == 0)
                plan->id[i] = (int)d;
        }
        if (plan->id[i] >= 0) {
            taken[plan->id[i]] = true;
            continue;
        }
        for (unsigned d = 0; d < h->max_limits && plan->id[i] < 0; d++)
            if (!taken[d] && atomic_load(&lb_shm_limit(h, d)->state) == LB_ENTRY_FREE)
                plan->id[i] = (int)d;
        if (plan->id[i] < 0)
            return false;
        taken[plan->id[i]] = true;
        plan->off[i] = lb_shm_arena_fit(h, plan, i, plan->region);
        if (plan->off[i] == 0)
            return false;
        plan->fresh[i] = true;
    }
    return true;
}

static const char *lb_shm_limit_key_text(const struct lb_ratelimit_cfg *rl)
{
    switch (rl->key) {
    case LB_RL_KEY_GLOBAL: return "global";
    case LB_RL_KEY_ROUTE:  return "route";
    case LB_RL_KEY_HEADER: return "header:";
    default:               return "client_ip";
    }
}

/* Apply PLAN: fresh descriptors get their region (zero: a never-used part
 * of the sparse file, or one MADV_REMOVE gave back) and zeroed counters. */
static void lb_shm_limits_assign(struct lb_shm_header *h, struct lb_config *cfg,
                                 const struct lb_limit_plan *plan, bool used[])
{
    uint64_t cap = cfg->rate_limit_table_size;
    for (size_t i = 0; i < cfg->nrate_limits; i++) {
        struct lb_ratelimit_cfg *rl = &cfg->rate_limits[i];
        unsigned id = (unsigned)plan->id[i];
        struct lb_shm_limit *l = lb_shm_limit(h, id);
        if (plan->fresh[i]) {
            unsigned slots = atomic_load(&h->slots_used);
            for (unsigned s = 0; s < slots; s++)
                memset(lb_shm_limit_stats(h, s, id), 0, sizeof(struct lb_shm_limit_stats));
            snprintf(l->name, sizeof(l->name), "%s", rl->name);
            l->signature = lb_shm_limit_signature(rl, cap);
            l->capacity = cap;
            l->off_table = plan->off[i];
            l->region = plan->region;
            atomic_store(&l->log_ms, 0);
        }
        /* What may change without touching the buckets. */
        snprintf(l->key, sizeof(l->key), "%s%s", lb_shm_limit_key_text(rl),
                 rl->key == LB_RL_KEY_HEADER ? rl->header : "");
        snprintf(l->rate, sizeof(l->rate), "%s", rl->rate_text);
        l->burst = rl->burst;
        l->algorithm = (uint32_t)rl->algorithm;
        l->dry_run = rl->dry_run;
        l->status = (uint32_t)rl->status;
        rl->shm_id = id;
        used[id] = true;
        atomic_store(&l->state, LB_ENTRY_ACTIVE);
    }
}

void lb_shm_limit_sum(const struct lb_shm_header *h, unsigned limit, struct lb_limit_totals *out)
{
    memset(out, 0, sizeof(*out));
    unsigned used = atomic_load(&h->slots_used);
    for (unsigned s = 0; s < used && s < h->max_slots; s++) {
        struct lb_shm_limit_stats *st = lb_shm_limit_stats(h, s, limit);
        out->allowed += lb_counter_get(&st->allowed);
        out->limited += lb_counter_get(&st->limited);
        out->delayed += lb_counter_get(&st->delayed);
        out->dry_run += lb_counter_get(&st->dry_run);
        out->evictions += lb_counter_get(&st->evictions);
        out->keys += lb_counter_get(&st->inserts);
    }
    uint64_t cap = lb_shm_limit(h, limit)->capacity;
    if (out->keys > cap)
        out->keys = cap;        /* two workers may have raced for one empty entry */
}

/* Give a region back to the kernel; it reads as zeros from then on. */
static void lb_shm_discard(void *p, uint64_t len)
{
    if (madvise(p, len, MADV_REMOVE) < 0)
        memset(p, 0, len);
}

/* ---- faults ---- */

int lb_shm_fault_find(const struct lb_shm_header *h, const char *name)
{
    for (unsigned i = 0; i < h->max_faults; i++) {
        struct lb_shm_fault *f = lb_shm_fault(h, i);
        if (atomic_load(&f->state) != LB_ENTRY_FREE && strcmp(f->name, name) == 0)
            return (int)i;
    }
    return -1;
}

void lb_shm_fault_apply(struct lb_shm_fault *f)
{
    uint32_t over = atomic_load(&f->ppm_override);
    uint32_t ppm = over != LB_PPM_NONE ? over : atomic_load(&f->file_ppm);
    atomic_store(&f->live_ppm, atomic_load(&f->enabled) ? ppm : 0);
}

/* Every fault of CFG keeps the entry of its name (the admin API's
 * percent and enabled with it) or takes a free one. */
static void lb_shm_faults_assign(struct lb_shm_header *h, struct lb_config *cfg,
                                 uint64_t generation)
{
    bool used[LB_SHM_MAX_FAULTS] = { false };
    for (size_t i = 0; i < cfg->nfaults; i++) {
        struct lb_fault_cfg *fc = &cfg->faults[i];
        int id = lb_shm_fault_find(h, fc->name);
        /* Removed by a reload and back now: it starts afresh. */
        bool fresh = id < 0 ||
                     atomic_load(&lb_shm_fault(h, (unsigned)id)->state) == LB_ENTRY_RETIRED;
        for (unsigned k = 0; k < h->max_faults && id < 0; k++)
            if (atomic_load(&lb_shm_fault(h, k)->state) == LB_ENTRY_FREE)
                id = (int)k;
        if (id < 0)
            continue;   /* lb_shm_assign_fits said it fits: cannot happen */
        struct lb_shm_fault *f = lb_shm_fault(h, (unsigned)id);
        if (fresh) {
            snprintf(f->name, sizeof(f->name), "%s", fc->name);
            atomic_store(&f->ppm_override, LB_PPM_NONE);
            atomic_store(&f->enabled, 1);
            atomic_store(&f->injected, 0);
        }
        snprintf(f->pool, sizeof(f->pool), "%s", cfg->pools[fc->pool].name);
        f->type = (uint32_t)fc->type;
        f->abort_status = (uint32_t)fc->abort_status;
        f->delay_ms = fc->delay_ms;
        atomic_store(&f->file_ppm, fc->ppm);
        lb_shm_fault_apply(f);
        fc->shm_id = (uint32_t)id;
        used[id] = true;
        atomic_store(&f->state, LB_ENTRY_ACTIVE);
    }
    for (unsigned k = 0; k < h->max_faults; k++) {
        struct lb_shm_fault *f = lb_shm_fault(h, k);
        if (!used[k] && atomic_load(&f->state) == LB_ENTRY_ACTIVE) {
            f->retired_gen = (uint32_t)generation;
            atomic_store(&f->state, LB_ENTRY_RETIRED);
        }
    }
}

bool lb_shm_assign_fits(const struct lb_shm_header *h, const struct lb_config *cfg)
{
    struct lb_limit_plan plan;
    if (!lb_shm_limits_plan(h, cfg, &plan))
        return false;
    unsigned free_pools = 0, free_backends = 0, new_pools = 0, new_backends = 0;
    for (unsigned i = 0; i < h->max_pools; i++)
        free_pools += atomic_load(&lb_shm_pool(h, i)->state) == LB_ENTRY_FREE;
    for (unsigned i = 0; i < h->max_backends; i++)
        free_backends += atomic_load(&lb_shm_backend(h, i)->state) == LB_ENTRY_FREE;
    for (size_t i = 0; i < cfg->npools; i++) {
        const struct lb_pool_cfg *pc = &cfg->pools[i];
        new_pools += !lb_shm_has_pool(h, pc->name);
        for (size_t j = 0; j < pc->nservers; j++)
            new_backends += !lb_shm_has_backend(h, pc->name, pc->servers[j].address);
    }
    unsigned free_faults = 0, new_faults = 0;
    for (unsigned i = 0; i < h->max_faults; i++)
        free_faults += atomic_load(&lb_shm_fault(h, i)->state) == LB_ENTRY_FREE;
    for (size_t i = 0; i < cfg->nfaults; i++)
        new_faults += lb_shm_fault_find(h, cfg->faults[i].name) < 0;
    /* TLS entries of listeners gone are freed first (lb_shm_tls_assign). */
    return new_pools <= free_pools && new_backends <= free_backends &&
           cfg->ntls <= h->max_tls && new_faults <= free_faults;
}

/* A server keeps its health and its breaker over a reload, unless what
 * would bring it back is gone: with no health_check left in its pool, a
 * server a check took down is UP again; with no breaker left, the breaker
 * is closed. */
static void lb_shm_health_carry(struct lb_shm_backend *b, const struct lb_pool_cfg *pc)
{
    if (!pc->breaker.enabled && atomic_load(&b->breaker) != 0) {
        lb_shm_breaker_reset(b);
        atomic_store(&b->usable_ms, lb_now_ms());      /* back in rotation: slow start */
    }
    if (pc->health.enabled || atomic_load(&b->health) != LB_HEALTH_DOWN)
        return;
    atomic_store(&b->down_reason, LB_DOWN_NONE);
    atomic_store(&b->last_change_ms, lb_wall_ms());
    atomic_store(&b->usable_ms, lb_now_ms());
    atomic_store(&b->health, LB_HEALTH_UP);
}

/* ---- TLS ------------------------------------------------------------- */

/* Take a seqlock for writing: even -> odd by compare-and-swap, so two
 * writers (a retiring control process and its successor, for a moment)
 * never interleave. One that died holding it left it odd for good: after a
 * while the next writer goes on from there. */
uint32_t lb_shm_seq_lock(_Atomic uint32_t *seq)
{
    for (int tries = 0;; tries++) {
        uint32_t s = atomic_load(seq);
        if ((s & 1) == 0 || tries >= 1000) {
            uint32_t next = (s | 1) + ((s & 1) ? 2 : 0);
            if (atomic_compare_exchange_weak(seq, &s, next))
                return next;
            continue;
        }
        sched_yield();
    }
}

void lb_shm_seq_unlock(_Atomic uint32_t *seq, uint32_t locked)
{
    atomic_store_explicit(seq, locked + 1, memory_order_release);
}

/* A seqlock reader's copy of an array of at most MAX elements of ELEM
 * bytes, *COUNT of them, made while no writer held SEQ: their number in
 * *N (0 when 100 tries all met a writer). */
static void lb_shm_seq_copy(const _Atomic uint32_t *seq, void *out, const void *src,
                            const uint32_t *count, uint32_t max, size_t elem, uint32_t *n)
{
    _Atomic uint32_t *sq = (_Atomic uint32_t *)seq;
    *n = 0;
    for (int tries = 0; tries < 100; tries++) {
        uint32_t before = atomic_load_explicit(sq, memory_order_acquire);
        if (before & 1) {
            sched_yield();
            continue;
        }
        uint32_t k = *count < max ? *count : max;
        memcpy(out, src, elem * k);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(sq, memory_order_relaxed) == before) {
            *n = k;
            return;
        }
    }
}

static void lb_shm_tls_new_key(struct lb_shm_ticket_key *k)
{
    /* getrandom() of 80 bytes does not fail short once the pool is up;
     * if it did, the key would still differ from every other one by its
     * name, made from the clock. */
    if (getrandom(k, sizeof(*k), 0) != (ssize_t)sizeof(*k)) {
        uint64_t now = lb_wall_us() ^ ((uint64_t)getpid() << 40);
        memcpy(k->name, &now, sizeof(now));
    }
}

void lb_shm_tls_rotate(struct lb_shm_tls *t, uint64_t now_ms)
{
    uint32_t locked = lb_shm_seq_lock(&t->key_seq);
    memmove(&t->keys[1], &t->keys[0], sizeof(t->keys[0]) * (LB_TLS_KEYS - 1));
    lb_shm_tls_new_key(&t->keys[0]);
    if (t->nkeys < LB_TLS_KEYS)
        t->nkeys++;
    atomic_store(&t->rotated_ms, now_ms);
    atomic_fetch_add(&t->rotations, 1);
    lb_shm_seq_unlock(&t->key_seq, locked);
}

int lb_shm_tls_key(const struct lb_shm_tls *t, const uint8_t *name,
                   struct lb_shm_ticket_key *out)
{
    _Atomic uint32_t *seq = (_Atomic uint32_t *)&t->key_seq;
    for (int tries = 0; tries < 100; tries++) {
        uint32_t before = atomic_load_explicit(seq, memory_order_acquire);
        if (before & 1) {
            sched_yield();
            continue;
        }
        int found = -1;
        uint32_t n = t->nkeys < LB_TLS_KEYS ? t->nkeys : LB_TLS_KEYS;
        for (uint32_t i = 0; i < n && found < 0; i++)
            if (name == NULL || memcmp(t->keys[i].name, name, sizeof(t->keys[i].name)) == 0)
                found = (int)i;
        if (found >= 0)
            memcpy(out, &t->keys[found], sizeof(*out));
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(seq, memory_order_relaxed) == before)
            return found;
    }
    return -1;
}

void lb_shm_tls_certs_get(const struct lb_shm_tls *t, struct lb_shm_tls_cert *out, uint32_t *n)
{
    lb_shm_seq_copy(&t->cert_seq, out, t->certs, &t->ncerts, LB_SHM_TLS_CERTS, sizeof(*out), n);
    for (uint32_t i = 0; i < *n; i++)
        out[i].subject[sizeof(out[i].subject) - 1] = '\0';
}

/* Every TLS listener of CFG gets its entry: the one of its address if
 * there is one (its ticket keys carry over), else a free one with a first
 * key. Entries no listener has any more are freed first, so CFG's
 * listeners always fit (lb_shm_assign_fits: at most max_tls of them). A
 * draining worker of a removed listener may still read its old entry, even
 * once it is another listener's: its tickets then fail to decrypt or to
 * resume (the session id context differs), and it makes full handshakes. */
static void lb_shm_tls_assign(struct lb_shm_header *h, struct lb_config *cfg)
{
    bool used[LB_SHM_MAX_TLS] = { false };
    int ids[LB_MAX_LISTENERS];
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct lb_listener_cfg *l = &cfg->listeners[i];
        ids[i] = -1;
        for (unsigned k = 0; l->tls != NULL && k < h->max_tls && ids[i] < 0; k++) {
            struct lb_shm_tls *t = lb_shm_tls(h, k);
            if (atomic_load(&t->state) != LB_ENTRY_FREE && !used[k] &&
                strcmp(t->address, l->address) == 0) {
                ids[i] = (int)k;
                used[k] = true;
            }
        }
    }
    for (unsigned k = 0; k < h->max_tls; k++)
        if (!used[k])
            atomic_store(&lb_shm_tls(h, k)->state, LB_ENTRY_FREE);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct lb_listener_cfg *l = &cfg->listeners[i];
        if (l->tls == NULL)
            continue;
        int id = ids[i];
        for (unsigned k = 0; id < 0 && k < h->max_tls; k++)
            if (!used[k])
                id = (int)k;
        struct lb_shm_tls *t = lb_shm_tls(h, (unsigned)id);
        if (ids[i] < 0) {
            uint32_t locked = lb_shm_seq_lock(&t->key_seq);
            memset(t->keys, 0, sizeof(t->keys));
            lb_shm_tls_new_key(&t->keys[0]);
            t->nkeys = 1;
            atomic_store(&t->rotated_ms, lb_now_ms());
            atomic_store(&t->rotations, 0);
            lb_shm_seq_unlock(&t->key_seq, locked);
        }
        used[id] = true;
        l->tls->shm_id = (uint32_t)id;
        uint32_t locked = lb_shm_seq_lock(&t->cert_seq);
        snprintf(t->address, sizeof(t->address), "%s", l->address);
        t->ncerts = (uint32_t)(l->tls->ncerts < LB_SHM_TLS_CERTS ? l->tls->ncerts
                                                                  : LB_SHM_TLS_CERTS);
        for (uint32_t c = 0; c < t->ncerts; c++) {
            snprintf(t->certs[c].subject, sizeof(t->certs[c].subject), "%s",
                     l->tls->certs[c].subject);
            t->certs[c].not_after = l->tls->certs[c].not_after;
        }
        lb_shm_seq_unlock(&t->cert_seq, locked);
        atomic_store(&t->state, LB_ENTRY_ACTIVE);
    }
}

int lb_shm_assign(struct lb_shm_header *h, struct lb_config *cfg, uint64_t generation,
                  char *err, size_t errlen)
{
    if (!lb_shm_assign_fits(h, cfg)) {
        snprintf(err, errlen, "shared memory: more than %u pools, %u servers or %u rate limits "
                 "in use, or no room for their tables (removed ones are freed once their old "
                 "workers exit)", h->max_pools, h->max_backends, h->max_limits);
        return -1;
    }
    /* Mark everything in use by CFG; whatever stays unmarked is retired. */
    bool pool_used[LB_SHM_MAX_POOLS] = { false };
    bool backend_used[LB_SHM_MAX_BACKENDS] = { false };
    bool limit_used[LB_SHM_MAX_LIMITS] = { false };
    struct lb_limit_plan plan;
    if (!lb_shm_limits_plan(h, cfg, &plan)) {
        snprintf(err, errlen, "shared memory: no room for the rate-limit tables");
        return -1;
    }
    lb_shm_limits_assign(h, cfg, &plan, limit_used);

    for (size_t i = 0; i < cfg->npools; i++) {
        struct lb_pool_cfg *pc = &cfg->pools[i];
        int pid = lb_shm_pool_id(h, pc->name);
        if (pid < 0) {
            snprintf(err, errlen, "shared memory: more than %u pools", h->max_pools);
            return -1;
        }
        pool_used[pid] = true;
        pc->shm_id = (uint32_t)pid;
        struct lb_shm_pool *sp = lb_shm_pool(h, (unsigned)pid);
        atomic_store(&sp->queue_size, pc->queue.size);
        atomic_store(&sp->slow_start_ms, pc->slow_start_ms);
        atomic_store(&sp->sticky, pc->sticky.enabled);
        /* Shown by /status and metrics; the control process does the rest. */
        const struct lb_discovery_cfg *dc = &pc->discovery;
        if (dc->type == LB_DISCO_DNS) {
            static const char *const records[] = { "A", "AAAA", "SRV" };
            snprintf(sp->disco_type, sizeof(sp->disco_type), "dns");
            snprintf(sp->disco_source, sizeof(sp->disco_source), "%s %s", records[dc->record],
                     dc->name);
        } else if (dc->type == LB_DISCO_ETCD) {
            snprintf(sp->disco_type, sizeof(sp->disco_type), "etcd");
            snprintf(sp->disco_source, sizeof(sp->disco_source), "%s %s", dc->endpoints[0],
                     dc->prefix);
        } else if (dc->type == LB_DISCO_ZOOKEEPER) {
            snprintf(sp->disco_type, sizeof(sp->disco_type), "zookeeper");
            snprintf(sp->disco_source, sizeof(sp->disco_source), "%s %s", dc->endpoints[0],
                     dc->prefix);
        } else if (dc->type == LB_DISCO_CONSUL) {
            snprintf(sp->disco_type, sizeof(sp->disco_type), "consul");
            snprintf(sp->disco_source, sizeof(sp->disco_source), "%s %s", dc->endpoints[0],
                     dc->service);
        } else {
            sp->disco_type[0] = '\0';
            sp->disco_source[0] = '\0';
        }
        atomic_store(&sp->state, LB_ENTRY_ACTIVE);
        for (size_t j = 0; j < pc->nservers; j++) {
            struct lb_server_cfg *sc = &pc->servers[j];
            bool added;
            int bid = lb_shm_backend_id(h, pc->name, sc->address, &added);
            if (bid < 0) {
                snprintf(err, errlen, "shared memory: more than %u servers", h->max_backends);
                return -1;
            }
            backend_used[bid] = true;
            sc->shm_id = (uint32_t)bid;
            struct lb_shm_backend *b = lb_shm_backend(h, (unsigned)bid);
            b->pool_id = (uint32_t)pid;
            if (sc->runtime) {
                /* Its server (if any) is the control process's business
                 * and carries over the reload (shared/runtime.h). */
                if (added || !b->runtime) {
                    atomic_store(&b->rt_state, LB_RT_EMPTY);
                    atomic_store(&b->weight, 0);
                    b->rt_address[0] = '\0';
                }
                b->runtime = 1;
                atomic_store(&b->max_requests, 0);
                atomic_store(&b->state, LB_ENTRY_ACTIVE);
                lb_shm_health_carry(b, pc);
                continue;
            }
            b->runtime = 0;
            /* Slow start for what a reload brings into rotation; at the
             * first start every server is there from the beginning (as
             * HAProxy: no ramp then). */
            if (added) {
                /* Back in the file after a reload removed it: the
                 * operator's overrides went with it. */
                atomic_store(&b->admin_state, LB_BACKEND_READY);
                atomic_store(&b->weight_override, LB_WEIGHT_NONE);
            }
            uint32_t over = atomic_load(&b->weight_override);
            uint32_t weight = over != LB_WEIGHT_NONE ? over : sc->weight;
            if (generation > 1 && weight > 0 &&
                (added || atomic_load(&b->weight) == 0))
                atomic_store(&b->usable_ms, lb_now_ms());
            atomic_store(&b->file_weight, sc->weight);
            atomic_store(&b->weight, weight);
            atomic_store(&b->max_requests, sc->max_requests);
            atomic_store(&b->state, LB_ENTRY_ACTIVE);
            lb_shm_health_carry(b, pc);
        }
        /* Transitions keep this count; recounting here heals what a worker
         * that died between its two steps of a transition left (see
         * worker/breaker.c), and forgets servers the pool no longer has. */
        uint32_t open = 0;
        for (size_t j = 0; j < pc->nservers; j++)
            open += atomic_load(&lb_shm_backend(h, pc->servers[j].shm_id)->breaker) != 0;
        atomic_store(&lb_shm_pool(h, (unsigned)pid)->breakers_open, open);
    }
    for (unsigned i = 0; i < h->max_pools; i++) {
        struct lb_shm_pool *p = lb_shm_pool(h, i);
        if (!pool_used[i] && atomic_load(&p->state) == LB_ENTRY_ACTIVE) {
            p->retired_gen = (uint32_t)generation;
            atomic_store(&p->state, LB_ENTRY_RETIRED);
        }
    }
    for (unsigned i = 0; i < h->max_backends; i++) {
        struct lb_shm_backend *b = lb_shm_backend(h, i);
        if (!backend_used[i] && atomic_load(&b->state) == LB_ENTRY_ACTIVE) {
            b->retired_gen = (uint32_t)generation;
            atomic_store(&b->state, LB_ENTRY_RETIRED);
        }
    }
    for (unsigned i = 0; i < h->max_limits; i++) {
        struct lb_shm_limit *l = lb_shm_limit(h, i);
        if (!limit_used[i] && atomic_load(&l->state) == LB_ENTRY_ACTIVE) {
            l->retired_gen = (uint32_t)generation;
            atomic_store(&l->state, LB_ENTRY_RETIRED);
        }
    }
    lb_shm_tls_assign(h, cfg);
    lb_shm_faults_assign(h, cfg, generation);
    return 0;
}

void lb_shm_reclaim(struct lb_shm_header *h, uint64_t oldest_live_gen)
{
    for (unsigned i = 0; i < h->max_pools; i++) {
        struct lb_shm_pool *p = lb_shm_pool(h, i);
        if (atomic_load(&p->state) == LB_ENTRY_RETIRED && p->retired_gen <= oldest_live_gen)
            atomic_store(&p->state, LB_ENTRY_FREE);
    }
    for (unsigned i = 0; i < h->max_backends; i++) {
        struct lb_shm_backend *b = lb_shm_backend(h, i);
        if (atomic_load(&b->state) == LB_ENTRY_RETIRED && b->retired_gen <= oldest_live_gen)
            atomic_store(&b->state, LB_ENTRY_FREE);
    }
    for (unsigned i = 0; i < h->max_faults; i++) {
        struct lb_shm_fault *f = lb_shm_fault(h, i);
        if (atomic_load(&f->state) == LB_ENTRY_RETIRED && f->retired_gen <= oldest_live_gen)
            atomic_store(&f->state, LB_ENTRY_FREE);
    }
    for (unsigned i = 0; i < h->max_limits; i++) {
        struct lb_shm_limit *l = lb_shm_limit(h, i);
        if (atomic_load(&l->state) != LB_ENTRY_RETIRED || l->retired_gen > oldest_live_gen)
            continue;
        /* No worker uses the table any more: its memory goes back, and
         * the region is zero for whichever limit gets it next. */
        lb_shm_discard((char *)h + l->off_table, l->region);
        atomic_store(&l->state, LB_ENTRY_FREE);
    }
}

int lb_shm_slot_take(struct lb_shm_header *h, unsigned id, uint64_t generation)
{
    for (unsigned s = 0; s < h->max_slots; s++) {
        struct lb_shm_worker *w = lb_shm_worker(h, s);
        if (atomic_load(&w->state) != LB_SLOT_FREE)
            continue;
        atomic_store(&w->id, id);
        atomic_store(&w->generation, (uint32_t)generation);
        atomic_store(&w->pid, 0);
        atomic_store(&w->started_ms, lb_wall_ms());
        atomic_store(&w->state, LB_SLOT_RUNNING);
        if (atomic_load(&h->slots_used) <= s)
            atomic_store(&h->slots_used, s + 1);
        return (int)s;
    }
    return -1;
}

void lb_shm_slot_release(struct lb_shm_header *h, unsigned slot)
{
    struct lb_shm_worker *w = lb_shm_worker(h, slot);
    /* The owner is gone: its gauges would otherwise count dead connections
     * forever. Cumulative counters stay; the next owner continues them. */
    atomic_store(&w->active_connections, 0);
    atomic_store(&w->max_connections, 0);
    for (unsigned p = 0; p < h->max_pools && p < LB_SHM_MAX_POOLS; p++) {
        uint32_t n = atomic_load(&w->queued[p]);
        if (n == 0)
            continue;
        /* Requests it had waiting in a pool's queue died with it. */
        atomic_fetch_sub(&lb_shm_pool(h, p)->queue_depth, n);
        atomic_store(&w->queued[p], 0);
    }
    /* Its connections are closed: their counts go, and the pages too. */
    lb_shm_discard(lb_shm_conn_table(h, slot), (uint64_t)h->conn_entries * sizeof(struct lb_rl_entry));
    for (unsigned b = 0; b < h->max_backends; b++) {
        struct lb_shm_backend_stats *row = lb_shm_stats(h, slot, b);
        struct lb_shm_backend *be = lb_shm_backend(h, b);
        /* The shared in-flight and retry counts still hold the dead
         * worker's requests (retry budgets would shrink for good). */
        uint64_t n = lb_counter_get(&row->active);
        if (n != 0) {
            atomic_fetch_sub(&be->inflight, (int64_t)n);
            atomic_store(&row->active, 0);
        }
        n = lb_counter_get(&row->retries);
        if (n != 0) {
            atomic_fetch_sub(&be->retries, (int64_t)n);
            atomic_store(&row->retries, 0);
        }
        n = lb_counter_get(&row->retries_waiting);
        if (n != 0) {
            atomic_fetch_sub(&be->retries_waiting, (int64_t)n);
            atomic_store(&row->retries_waiting, 0);
        }
    }
    atomic_store(&w->pid, 0);
    atomic_store(&w->state, LB_SLOT_FREE);
}

void lb_shm_worker_add(struct lb_shm_worker *w, struct lb_worker_totals *out)
{
    out->connections += lb_counter_get(&w->connections);
    out->conn_limited += lb_counter_get(&w->conn_limited);
    out->rl_redis_errors += lb_counter_get(&w->rl_redis_errors);
    out->active_connections += lb_counter_get(&w->active_connections);
    out->requests += lb_counter_get(&w->requests);
    out->bytes_in += lb_counter_get(&w->bytes_in);
    out->bytes_out += lb_counter_get(&w->bytes_out);
    for (unsigned c = 0; c < LB_STATUS_CLASSES; c++)
        out->responses[c] += lb_counter_get(&w->responses[c]);
    for (unsigned k = 0; k < LB_TIMEOUT_KINDS; k++)
        out->timeouts[k] += lb_counter_get(&w->timeouts[k]);
    for (unsigned r = 0; r < LB_PAUSE_REASONS; r++)
        out->accept_pauses[r] += lb_counter_get(&w->accept_pauses[r]);
    out->client_aborts += lb_counter_get(&w->client_aborts);
    for (unsigned r = 0; r < LB_TLS_RESULTS; r++)
        out->tls_handshakes[r] += lb_counter_get(&w->tls_handshakes[r]);
    for (unsigned r = 0; r < LB_TLS_FAILURES; r++)
        out->tls_failures[r] += lb_counter_get(&w->tls_failures[r]);
    for (unsigned r = 0; r < 2; r++)
        out->header_faults[r] += lb_counter_get(&w->header_faults[r]);
    out->tls_unknown_sni += lb_counter_get(&w->tls_unknown_sni);
}

void lb_shm_backend_set_weight(struct lb_shm_pool *pool, struct lb_shm_backend *b,
                               uint32_t weight_override)
{
    uint32_t w = weight_override != LB_WEIGHT_NONE ? weight_override
                                                   : atomic_load(&b->file_weight);
    if (w > 0 && atomic_load(&b->weight) == 0)
        atomic_store(&b->usable_ms, lb_now_ms());      /* back in rotation: slow start */
    atomic_store(&b->weight_override, weight_override);
    atomic_store(&b->weight, w);
    /* After the weight: a worker that sees the new count reads it. */
    atomic_fetch_add_explicit(&pool->weights_gen, 1, memory_order_release);
}

void lb_shm_backend_sum(const struct lb_shm_header *h, unsigned backend,
                        struct lb_backend_totals *out)
{
    memset(out, 0, sizeof(*out));
    /* Only rows ever used: touching the others would fault in zero pages. */
    unsigned used = atomic_load(&h->slots_used);
    for (unsigned s = 0; s < used && s < h->max_slots; s++) {
        struct lb_shm_backend_stats *st = lb_shm_stats(h, s, backend);
        out->requests += lb_counter_get(&st->requests);
        for (unsigned c = 0; c < LB_STATUS_CLASSES; c++)
            out->responses[c] += lb_counter_get(&st->responses[c]);
        out->active += lb_counter_get(&st->active);
        out->bytes_in += lb_counter_get(&st->bytes_in);
        out->bytes_out += lb_counter_get(&st->bytes_out);
        out->failures += lb_counter_get(&st->failures);
        for (unsigned k = 0; k < LB_DURATION_BUCKETS; k++)
            out->duration[k] += lb_counter_get(&st->duration[k]);
        out->duration_sum_us += lb_counter_get(&st->duration_sum_us);
        for (unsigned k = 0; k < LB_STICKY_RESULTS; k++)
            out->sticky[k] += lb_counter_get(&st->sticky[k]);
        for (unsigned r = 0; r < LB_TLS_RESULTS; r++)
            out->tls_handshakes[r] += lb_counter_get(&st->tls_handshakes[r]);
    }
}

void lb_shm_sticky_sum(const struct lb_shm_header *h, unsigned backend, uint64_t *out)
{
    unsigned used = atomic_load(&h->slots_used);
    for (unsigned s = 0; s < used && s < h->max_slots; s++)
        for (unsigned k = 0; k < LB_STICKY_RESULTS; k++)
            out[k] += lb_counter_get(&lb_shm_stats(h, s, backend)->sticky[k]);
}

/* A seqlock: the writer makes the sequence odd, writes, makes it even; a
 * reader retries when it was odd or moved while it copied. A writer that
 * died mid-write left it odd: the next one goes on from there. */
void lb_shm_error_set(struct lb_shm_backend *b, const char *text)
{
    uint32_t seq = (atomic_load_explicit(&b->error_seq, memory_order_relaxed) + 1) | 1;
    atomic_store_explicit(&b->error_seq, seq, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    snprintf(b->last_error, sizeof(b->last_error), "%s", text);
    atomic_store_explicit(&b->error_seq, seq + 1, memory_order_release);
}

void lb_shm_error_get(const struct lb_shm_backend *b, char *out, size_t n)
{
    if (n == 0)
        return;
    size_t len = n < sizeof(b->last_error) ? n : sizeof(b->last_error);
    for (int tries = 0; tries < 100; tries++) {
        uint32_t before = atomic_load_explicit(&b->error_seq, memory_order_acquire);
        if (before & 1) {
            sched_yield();      /* the writer may have been preempted mid-text */
            continue;
        }
        memcpy(out, b->last_error, len);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&b->error_seq, memory_order_relaxed) == before) {
            out[len - 1] = '\0';
            return;
        }
    }
    out[0] = '\0';
}

/* ---- ACME -------------------------------------------------------------- */

void lb_shm_acme_challenge_put(struct lb_shm_acme *a, const struct lb_shm_acme_challenge *c)
{
    uint32_t locked = lb_shm_seq_lock(&a->seq);
    int slot = -1;
    for (int i = 0; i < LB_ACME_MAX_CHALLENGES; i++)
        if ((a->challenges[i].used && strcmp(a->challenges[i].token, c->token) == 0) ||
            (slot < 0 && !a->challenges[i].used))
            slot = i;
    if (slot >= 0) {
        a->challenges[slot] = *c;
        a->challenges[slot].used = 1;
    }
    lb_shm_seq_unlock(&a->seq, locked);
}

void lb_shm_acme_challenge_del(struct lb_shm_acme *a, const char *token)
{
    uint32_t locked = lb_shm_seq_lock(&a->seq);
    for (int i = 0; i < LB_ACME_MAX_CHALLENGES; i++)
        if (a->challenges[i].used && strcmp(a->challenges[i].token, token) == 0)
            memset(&a->challenges[i], 0, sizeof(a->challenges[i]));
    lb_shm_seq_unlock(&a->seq, locked);
}

void lb_shm_acme_challenges_clear(struct lb_shm_acme *a)
{
    uint32_t locked = lb_shm_seq_lock(&a->seq);
    memset(a->challenges, 0, sizeof(a->challenges));
    lb_shm_seq_unlock(&a->seq, locked);
}

/* Copy the challenge matching TOKEN (TLEN bytes) or NAME into OUT under the
 * seqlock. */
static bool lb_shm_acme_find(const struct lb_shm_acme *a, const char *token, size_t tlen,
                             const char *name, uint32_t type, struct lb_shm_acme_challenge *out)
{
    _Atomic uint32_t *seq = (_Atomic uint32_t *)&a->seq;
    for (int tries = 0; tries < 100; tries++) {
        uint32_t before = atomic_load_explicit(seq, memory_order_acquire);
        if (before & 1) {
            sched_yield();
            continue;
        }
        bool found = false;
        for (int i = 0; i < LB_ACME_MAX_CHALLENGES && !found; i++) {
            const struct lb_shm_acme_challenge *c = &a->challenges[i];
            if (!c->used || c->type != type)
                continue;
            if (token != NULL ? tlen < sizeof(c->token) && strncmp(c->token, token, tlen) == 0 &&
                                    c->token[tlen] == '\0'
                              : strncmp(c->name, name, sizeof(c->name)) == 0) {
                memcpy(out, c, sizeof(*out));
                found = true;
            }
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(seq, memory_order_relaxed) == before) {
            if (found) {
                out->keyauth[sizeof(out->keyauth) - 1] = '\0';
                out->cert_pem[sizeof(out->cert_pem) - 1] = '\0';
                out->key_pem[sizeof(out->key_pem) - 1] = '\0';
            }
            return found;
        }
    }
    return false;
}

bool lb_shm_acme_http01(const struct lb_shm_acme *a, const char *token, size_t len,
                        struct lb_shm_acme_challenge *out)
{
    return lb_shm_acme_find(a, token, len, NULL, LB_ACME_HTTP01, out);
}

bool lb_shm_acme_tlsalpn01(const struct lb_shm_acme *a, const char *name,
                           struct lb_shm_acme_challenge *out)
{
    return lb_shm_acme_find(a, NULL, 0, name, LB_ACME_TLSALPN01, out);
}

void lb_shm_acme_names_set(struct lb_shm_acme *a, const struct lb_shm_acme_name *names, uint32_t n)
{
    uint32_t locked = lb_shm_seq_lock(&a->seq);
    n = n < LB_ACME_MAX_NAMES ? n : LB_ACME_MAX_NAMES;
    if (n > 0)
        memcpy(a->names, names, sizeof(*names) * n);
    a->nnames = n;
    lb_shm_seq_unlock(&a->seq, locked);
}

void lb_shm_acme_names_get(const struct lb_shm_acme *a, struct lb_shm_acme_name *out, uint32_t *n)
{
    lb_shm_seq_copy(&a->seq, out, a->names, &a->nnames, LB_ACME_MAX_NAMES, sizeof(*out), n);
    for (uint32_t i = 0; i < *n; i++) {
        out[i].name[sizeof(out[i].name) - 1] = '\0';
        out[i].error[sizeof(out[i].error) - 1] = '\0';
    }
}

void lb_shm_tls_cert_set(struct lb_shm_tls *t, uint32_t idx, const char *subject,
                         int64_t not_after)
{
    if (idx >= LB_SHM_TLS_CERTS)
        return;
    uint32_t locked = lb_shm_seq_lock(&t->cert_seq);
    snprintf(t->certs[idx].subject, sizeof(t->certs[idx].subject), "%s", subject);
    t->certs[idx].not_after = not_after;
    lb_shm_seq_unlock(&t->cert_seq, locked);
}
