#include "shared/rltable.h"

void lb_gcra_params_init(struct lb_gcra_params *p, uint64_t interval_ns, uint64_t burst,
                         uint64_t delay)
{
    p->interval_ns = interval_ns;
    p->limit_ns = interval_ns * (burst + 1);
    p->delay_ns = interval_ns * ((delay < burst ? delay : burst) + 1);
}

static uint64_t lb_sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

void lb_gcra_decide(uint64_t tat, uint64_t now, const struct lb_gcra_params *p,
                    struct lb_gcra *out)
{
    /* No admission puts a TAT more than limit_ns ahead of the clock that
     * admitted it: one much further ahead was left by a clock set back
     * (another worker's reading a little later than ours is normal, hence
     * the slack). Count it as an empty bucket now, not as a debt as long as
     * the jump: the caller stores that (out->tat) even when refusing. */
    if (tat > now && tat - now > p->limit_ns + LB_GCRA_SLACK_NS)
        tat = now + p->limit_ns;
    uint64_t base = tat > now ? tat : now;
    uint64_t next = lb_sat_add(base, p->interval_ns);
    uint64_t ahead = next - now;
    if (ahead > p->limit_ns) {
        *out = (struct lb_gcra){ .admit = false, .tat = tat, .retry_ns = ahead - p->limit_ns,
                                 .remaining = 0, .reset_ns = base - now };
        return;
    }
    *out = (struct lb_gcra){ .admit = true, .tat = next,
                             .wait_ns = ahead > p->delay_ns ? ahead - p->delay_ns : 0,
                             .remaining = (p->limit_ns - ahead) / p->interval_ns,
                             .reset_ns = ahead };
}

/* Where KEY's probe window starts: the high half of the hash scaled to
 * CAP (any CAP below 2^32, no power of two needed, no modulo). */
static inline uint64_t lb_rl_home(uint64_t key, uint64_t cap)
{
    return ((key >> 32) * cap) >> 32;
}

struct lb_rl_entry *lb_rltable_get(struct lb_rl_entry *t, uint64_t cap, uint64_t key,
                                   uint64_t now, enum lb_rl_taken *how)
{
    uint64_t home = lb_rl_home(key, cap);
    unsigned window = cap < LB_RL_PROBE ? (unsigned)cap : LB_RL_PROBE;
    /* A lost race for an entry (another worker claimed it first) starts
     * over: the winner may have been claiming it for this very key. */
    for (int attempt = 0; attempt < 4; attempt++) {
        struct lb_rl_entry *victim = NULL;
        uint64_t victim_key = 0, victim_tat = UINT64_MAX;
        uint64_t i = home;
        for (unsigned n = 0; n < window; n++, i = i + 1 == cap ? 0 : i + 1) {
            struct lb_rl_entry *e = &t[i];
            uint64_t k = atomic_load_explicit(&e->key, memory_order_acquire);
            if (k == key)
                return (*how = LB_RL_FOUND, e);
            if (k == LB_RL_KEY_FREE) {
                victim = e;
                victim_key = k;
                victim_tat = 0;
                break;      /* never emptied: the key is not further on */
            }
            if (k == LB_RL_KEY_BUSY)
                continue;
            uint64_t tat = atomic_load_explicit(&e->val, memory_order_relaxed);
            if (tat < victim_tat) {
                victim = e;
                victim_key = k;
                victim_tat = tat;
            }
        }
        if (victim == NULL)
            continue;
        uint64_t expect = victim_key;
        if (!atomic_compare_exchange_strong_explicit(&victim->key, &expect, LB_RL_KEY_BUSY,
                                                     memory_order_acq_rel, memory_order_acquire))
            continue;
        /* Ours: a fresh bucket, then the key, published with release so
         * a reader that sees the key sees the TAT. */
        atomic_store_explicit(&victim->val, 0, memory_order_relaxed);
        atomic_store_explicit(&victim->key, key, memory_order_release);
        *how = victim_key == LB_RL_KEY_FREE ? LB_RL_NEW
               : victim_tat <= now ? LB_RL_REUSED : LB_RL_EVICTED;
        return victim;
    }
    return NULL;
}

void lb_rltable_consume(struct lb_rl_entry *e, uint64_t now, const struct lb_gcra_params *p,
                        bool commit, struct lb_gcra *out)
{
    uint64_t tat = atomic_load_explicit(&e->val, memory_order_relaxed);
    for (;;) {
        lb_gcra_decide(tat, now, p, out);
        /* A refusal writes nothing, unless a TAT left by a clock set back
         * was pulled in (lb_gcra_decide). */
        if (!commit || (!out->admit && out->tat == tat))
            return;
        /* On failure TAT holds what another worker wrote: decide again. */
        if (atomic_compare_exchange_weak_explicit(&e->val, &tat, out->tat, memory_order_relaxed,
                                                  memory_order_relaxed))
            return;
    }
}

void lb_rltable_refund(struct lb_rl_entry *e, uint64_t key, uint64_t interval_ns)
{
    uint64_t tat = atomic_load_explicit(&e->val, memory_order_relaxed);
    do {
        if (atomic_load_explicit(&e->key, memory_order_relaxed) != key)
            return;
    } while (!atomic_compare_exchange_weak_explicit(&e->val, &tat,
                                                    tat > interval_ns ? tat - interval_ns : 0,
                                                    memory_order_relaxed, memory_order_relaxed));
}

struct lb_rl_entry *lb_conntable_get(struct lb_rl_entry *t, uint64_t cap, uint64_t key)
{
    uint64_t i = lb_rl_home(key, cap);
    unsigned window = cap < LB_RL_PROBE ? (unsigned)cap : LB_RL_PROBE;
    struct lb_rl_entry *spare = NULL;
    for (unsigned n = 0; n < window; n++, i = i + 1 == cap ? 0 : i + 1) {
        struct lb_rl_entry *e = &t[i];
        uint64_t k = atomic_load_explicit(&e->key, memory_order_relaxed);
        if (k == key)
            return e;
        if (k == LB_RL_KEY_FREE) {
            if (spare == NULL)
                spare = e;
            break;
        }
        if (spare == NULL && atomic_load_explicit(&e->val, memory_order_relaxed) == 0)
            spare = e;
    }
    if (spare != NULL) {
        /* Readers may see the new key with count 0 for a moment: right. */
        atomic_store_explicit(&spare->val, 0, memory_order_relaxed);
        atomic_store_explicit(&spare->key, key, memory_order_release);
    }
    return spare;
}

uint64_t lb_conntable_count(const struct lb_rl_entry *t, uint64_t cap, uint64_t key)
{
    uint64_t i = lb_rl_home(key, cap);
    unsigned window = cap < LB_RL_PROBE ? (unsigned)cap : LB_RL_PROBE;
    for (unsigned n = 0; n < window; n++, i = i + 1 == cap ? 0 : i + 1) {
        uint64_t k = atomic_load_explicit((_Atomic uint64_t *)&t[i].key, memory_order_acquire);
        if (k == key)
            return atomic_load_explicit((_Atomic uint64_t *)&t[i].val, memory_order_relaxed);
        if (k == LB_RL_KEY_FREE)
            return 0;
    }
    return 0;
}
