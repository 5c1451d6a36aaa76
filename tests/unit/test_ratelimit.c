/* shared/siphash.c and shared/rltable.c: SipHash-2-4 against the reference
 * vectors, GCRA arithmetic (first request, bursts, leaky delays, clocks
 * set back, huge gaps), the shared tables (claims, reuse, eviction,
 * exactness over processes) and the connection-count tables; shm.c's rate
 * limit descriptors across reloads. */
#include <check.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shared/rltable.h"
#include "shared/shm.h"
#include "shared/siphash.h"
#include "worker/http.h"
#include "worker/ratelimit.h"
#include "tests/unit/suites.h"

#define MS 1000000ULL           /* ns */
#define SEC 1000000000ULL

/* ---- SipHash ------------------------------------------------------------------- */

START_TEST(test_siphash_vectors)
{
    /* The reference implementation's vectors (veorq/SipHash vectors.h,
     * the paper's Appendix A for 15 bytes): key 00 01 .. 0f, message
     * 00 01 .. (len - 1). */
    static const struct { size_t len; uint64_t hash; } v[] = {
        { 0, 0x726fdb47dd0e0e31ULL }, { 1, 0x74f839c593dc67fdULL },
        { 2, 0x0d6c8009d9a94f5aULL }, { 7, 0xab0200f58b01d137ULL },
        { 8, 0x93f5f5799a932462ULL }, { 9, 0x9e0082df0ba9e4b0ULL },
        { 15, 0xa129ca6149be45e5ULL }, { 16, 0x3f2acc7f57c29bdbULL },
        { 17, 0x699ae9f52cbe4794ULL }, { 31, 0x32d892fad841c342ULL },
        { 32, 0x7127512f72f27cceULL }, { 63, 0x958a324ceb064572ULL },
    };
    const uint64_t key[2] = { 0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL };
    unsigned char msg[64];
    for (unsigned i = 0; i < sizeof(msg); i++)
        msg[i] = (unsigned char)i;
    for (size_t i = 0; i < LB_ARRAY_SIZE(v); i++)
        ck_assert_msg(lb_siphash(key, msg, v[i].len) == v[i].hash,
                      "length %zu: %016llx", v[i].len,
                      (unsigned long long)lb_siphash(key, msg, v[i].len));
    /* Another key, another hash: the point of keying it. */
    const uint64_t other[2] = { 1, 2 };
    ck_assert(lb_siphash(other, msg, 15) != 0xa129ca6149be45e5ULL);
}
END_TEST

/* ---- GCRA arithmetic ----------------------------------------------------------- */

START_TEST(test_gcra_first_request_and_burst)
{
    struct lb_gcra_params p;
    lb_gcra_params_init(&p, 100 * MS, 4, 4);        /* 10r/s, burst 4: 5 at once */
    const uint64_t now = 1000 * SEC;
    struct lb_gcra g;
    lb_gcra_decide(0, now, &p, &g);                  /* first request: no state */
    ck_assert(g.admit);
    ck_assert_uint_eq(g.tat, now + 100 * MS);
    ck_assert_uint_eq(g.remaining, 4);
    ck_assert_uint_eq(g.wait_ns, 0);
    ck_assert_uint_eq(g.reset_ns, 100 * MS);
    uint64_t tat = 0;
    for (unsigned i = 0; i < 5; i++) {
        lb_gcra_decide(tat, now, &p, &g);
        ck_assert_msg(g.admit, "request %u of the burst refused", i);
        ck_assert_uint_eq(g.remaining, 4 - i);
        ck_assert_uint_eq(g.wait_ns, 0);
        tat = g.tat;
    }
    lb_gcra_decide(tat, now, &p, &g);
    ck_assert(!g.admit);
    ck_assert_uint_eq(g.tat, tat);                   /* a refusal changes nothing */
    ck_assert_uint_eq(g.retry_ns, 100 * MS);         /* the next token */
    ck_assert_uint_eq(g.remaining, 0);
    ck_assert_uint_eq(g.reset_ns, 500 * MS);         /* full again after 5 tokens */
    /* Just before the token: refused; at it: admitted, bucket empty again. */
    lb_gcra_decide(tat, now + 100 * MS - 1, &p, &g);
    ck_assert(!g.admit);
    ck_assert_uint_eq(g.retry_ns, 1);
    lb_gcra_decide(tat, now + 100 * MS, &p, &g);
    ck_assert(g.admit);
    ck_assert_uint_eq(g.remaining, 0);
    /* A TAT in the past is a full bucket, however long ago. */
    lb_gcra_decide(now - 5 * SEC, now, &p, &g);
    ck_assert(g.admit);
    ck_assert_uint_eq(g.remaining, 4);
}
END_TEST

/* Over a long run at a steady overload, admitted = elapsed / T + burst + 1. */
START_TEST(test_gcra_long_run_rate)
{
    struct lb_gcra_params p;
    lb_gcra_params_init(&p, 20 * MS, 10, 10);       /* 50r/s, burst 10 */
    uint64_t tat = 0, admitted = 0;
    const uint64_t start = 77 * SEC;
    uint64_t now = start;
    for (unsigned i = 0; i < 3000; i++, now += 1 * MS) {  /* 1000 r/s for 3 s */
        struct lb_gcra g;
        lb_gcra_decide(tat, now, &p, &g);
        if (g.admit) {
            admitted++;
            tat = g.tat;
        }
    }
    uint64_t elapsed = now - 1 * MS - start;
    ck_assert_uint_eq(admitted, elapsed / (20 * MS) + 10 + 1);
}
END_TEST

START_TEST(test_gcra_leaky_bucket)
{
    struct lb_gcra_params p;
    lb_gcra_params_init(&p, 100 * MS, 5, 0);        /* burst 5, delay 0: queue at the rate */
    const uint64_t now = 50 * SEC;
    uint64_t tat = 0;
    for (unsigned i = 0; i < 6; i++) {
        struct lb_gcra g;
        lb_gcra_decide(tat, now, &p, &g);
        ck_assert_msg(g.admit, "request %u refused", i);
        ck_assert_uint_eq(g.wait_ns, i * 100 * MS);  /* released 100 ms apart */
        tat = g.tat;
    }
    struct lb_gcra g;
    lb_gcra_decide(tat, now, &p, &g);
    ck_assert(!g.admit);                             /* beyond burst: refused */

    lb_gcra_params_init(&p, 100 * MS, 5, 2);        /* delay 2: three at once, then the rate */
    static const uint64_t waits[] = { 0, 0, 0, 100 * MS, 200 * MS, 300 * MS };
    tat = 0;
    for (unsigned i = 0; i < 6; i++) {
        lb_gcra_decide(tat, now, &p, &g);
        ck_assert(g.admit);
        ck_assert_uint_eq(g.wait_ns, waits[i]);
        tat = g.tat;
    }
    lb_gcra_decide(tat, now, &p, &g);
    ck_assert(!g.admit);
    /* A delay above the burst means the burst (nodelay). */
    lb_gcra_params_init(&p, 100 * MS, 5, 50);
    ck_assert_uint_eq(p.delay_ns, p.limit_ns);
}
END_TEST

START_TEST(test_gcra_clock_edges)
{
    struct lb_gcra_params p;
    lb_gcra_params_init(&p, 100 * MS, 4, 4);
    struct lb_gcra g;
    /* Another worker's reading a little later than ours: its TAT slightly
     * ahead of any admission of ours is a normal empty bucket. */
    uint64_t now = 100 * SEC;
    lb_gcra_decide(now + 500 * MS + 50 * MS, now, &p, &g);
    ck_assert(!g.admit);
    ck_assert_uint_eq(g.tat, now + 550 * MS);       /* kept as it was */
    ck_assert_uint_eq(g.retry_ns, 150 * MS);
    /* A clock set back by an hour: the TAT is pulled in to an empty bucket
     * now (written even on refusal), so the client waits one token, not
     * an hour. */
    lb_gcra_decide(now + 3600 * SEC, now, &p, &g);
    ck_assert(!g.admit);
    ck_assert_uint_eq(g.tat, now + 500 * MS);
    ck_assert_uint_eq(g.retry_ns, 100 * MS);
    uint64_t tat = g.tat;
    lb_gcra_decide(tat, now + 100 * MS, &p, &g);
    ck_assert(g.admit);
    /* Huge gaps: a TAT from long ago, a clock far ahead. */
    lb_gcra_decide(1, UINT64_C(1) << 62, &p, &g);
    ck_assert(g.admit);
    ck_assert_uint_eq(g.remaining, 4);
    ck_assert_uint_eq(g.tat, (UINT64_C(1) << 62) + 100 * MS);
    /* At the end of the clock: saturates, never wraps to a small TAT. */
    now = UINT64_MAX - 10;
    lb_gcra_decide(0, now, &p, &g);
    ck_assert(g.admit);
    ck_assert_uint_eq(g.tat, UINT64_MAX);
    lb_gcra_decide(UINT64_MAX, now, &p, &g);
    ck_assert(g.admit);
    ck_assert_uint_ge(g.tat, now);
    /* The slowest and fastest rates: no overflow in (burst + 1) * T. */
    lb_gcra_params_init(&p, 60 * SEC, 1000000, 1000000);    /* 1r/m, burst 10^6 */
    ck_assert_uint_eq(p.limit_ns, 60 * SEC * 1000001);
    lb_gcra_decide(0, 5 * SEC, &p, &g);
    ck_assert(g.admit);
    ck_assert_uint_eq(g.remaining, 1000000);
    lb_gcra_params_init(&p, 1000, 0, 0);                     /* 10^6 r/s, burst 0 */
    lb_gcra_decide(0, 5 * SEC, &p, &g);
    ck_assert(g.admit);
    tat = g.tat;
    lb_gcra_decide(tat, 5 * SEC, &p, &g);
    ck_assert(!g.admit);
    ck_assert_uint_eq(g.retry_ns, 1000);
}
END_TEST

/* ---- the shared table ---------------------------------------------------------- */

static struct lb_rl_entry *table_new(size_t cap)
{
    /* Shared, as in the segment: forked children update the same entries. */
    void *p = mmap(NULL, cap * sizeof(struct lb_rl_entry), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_msg(p != MAP_FAILED, "mmap: %s", strerror(errno));
    return p;
}

static void table_free(struct lb_rl_entry *t, size_t cap)
{
    munmap(t, cap * sizeof(struct lb_rl_entry));
}

static uint64_t key_of(unsigned i)
{
    static const uint64_t k[2] = { 0x1234, 0x5678 };
    return lb_rl_key(lb_siphash(k, &i, sizeof(i)));
}

START_TEST(test_table_claim_find_reuse)
{
    const size_t cap = 64;
    struct lb_rl_entry *t = table_new(cap);
    struct lb_gcra_params p;
    lb_gcra_params_init(&p, 100 * MS, 0, 0);
    uint64_t now = 10 * SEC;
    enum lb_rl_taken how;
    struct lb_rl_entry *e = lb_rltable_get(t, cap, key_of(1), now, &how);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(how, LB_RL_NEW);
    struct lb_gcra g;
    lb_rltable_consume(e, now, &p, true, &g);
    ck_assert(g.admit);
    ck_assert_uint_eq(atomic_load(&e->val), now + 100 * MS);
    /* The same key: the same entry, its bucket empty now. */
    ck_assert_ptr_eq(lb_rltable_get(t, cap, key_of(1), now, &how), e);
    ck_assert_int_eq(how, LB_RL_FOUND);
    lb_rltable_consume(e, now, &p, true, &g);
    ck_assert(!g.admit);
    ck_assert_uint_eq(atomic_load(&e->val), now + 100 * MS);    /* unchanged */
    /* Not committed (dry run): decided, nothing written. */
    lb_rltable_consume(e, now + 100 * MS, &p, false, &g);
    ck_assert(g.admit);
    ck_assert_uint_eq(atomic_load(&e->val), now + 100 * MS);
    /* A refund gives the token back. */
    lb_rltable_refund(e, key_of(1), 100 * MS);
    ck_assert_uint_eq(atomic_load(&e->val), now);
    lb_rltable_consume(e, now, &p, true, &g);
    ck_assert(g.admit);
    /* ... unless the entry went to another key. */
    lb_rltable_refund(e, key_of(2), 100 * MS);
    ck_assert_uint_eq(atomic_load(&e->val), now + 100 * MS);
    table_free(t, cap);
}
END_TEST

/* A small table under many keys: live keys are evicted (counted), refilled
 * ones are reused (not counted), the table never holds more than its
 * size, and a key found is always its own. */
START_TEST(test_table_eviction)
{
    const size_t cap = 64;
    struct lb_rl_entry *t = table_new(cap);
    struct lb_gcra_params p;
    lb_gcra_params_init(&p, 60 * SEC, 0, 0);        /* 1r/m: each key stays in debt */
    uint64_t now = 1000 * SEC;
    unsigned counts[4] = { 0 };
    for (unsigned i = 0; i < 10000; i++) {
        enum lb_rl_taken how;
        struct lb_rl_entry *e = lb_rltable_get(t, cap, key_of(i), now, &how);
        ck_assert_ptr_nonnull(e);
        counts[how]++;
        ck_assert_uint_eq(atomic_load(&e->key), key_of(i));
        struct lb_gcra g;
        lb_rltable_consume(e, now, &p, true, &g);
        ck_assert(g.admit);
        now += 1 * MS;
    }
    ck_assert_uint_eq(counts[LB_RL_FOUND], 0);
    ck_assert_uint_le(counts[LB_RL_NEW], cap);
    ck_assert_uint_ge(counts[LB_RL_NEW], cap / 2);  /* a window of 8 fills most of it */
    ck_assert_uint_eq(counts[LB_RL_REUSED], 0);
    ck_assert_uint_eq(counts[LB_RL_NEW] + counts[LB_RL_EVICTED], 10000);
    /* The eviction takes the fullest bucket: the oldest key of the window. */
    size_t held = 0;
    for (size_t i = 0; i < cap; i++)
        held += atomic_load(&t[i].key) > LB_RL_KEY_BUSY;
    ck_assert_uint_eq(held, counts[LB_RL_NEW]);

    /* A minute later every bucket has refilled: new keys reuse entries,
     * no eviction. */
    now += 61 * SEC;
    memset(counts, 0, sizeof(counts));
    for (unsigned i = 20000; i < 20200; i++) {
        enum lb_rl_taken how;
        ck_assert_ptr_nonnull(lb_rltable_get(t, cap, key_of(i), now, &how));
        counts[how]++;
    }
    ck_assert_uint_eq(counts[LB_RL_EVICTED], 0);
    ck_assert_uint_eq(counts[LB_RL_REUSED] + counts[LB_RL_NEW], 200);
    table_free(t, cap);
}
END_TEST

/* Four processes at one key, at one instant: exactly burst + 1 admitted
 * among them, however the CASes interleave. */
START_TEST(test_table_exact_across_processes)
{
    const size_t cap = 128;
    struct lb_rl_entry *t = table_new(cap);
    _Atomic uint64_t *admitted = mmap(NULL, sizeof(*admitted), PROT_READ | PROT_WRITE,
                                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert(admitted != MAP_FAILED);
    atomic_store(admitted, 0);
    struct lb_gcra_params p;
    lb_gcra_params_init(&p, 1 * MS, 999, 999);      /* 1000 at once */
    const uint64_t now = 5 * SEC;
    pid_t kids[4];
    for (int k = 0; k < 4; k++) {
        kids[k] = fork();
        ck_assert_int_ge(kids[k], 0);
        if (kids[k] == 0) {
            uint64_t mine = 0;
            for (int i = 0; i < 20000; i++) {
                enum lb_rl_taken how;
                struct lb_rl_entry *e = lb_rltable_get(t, cap, key_of(7), now, &how);
                if (e == NULL)
                    _exit(2);
                struct lb_gcra g;
                lb_rltable_consume(e, now, &p, true, &g);
                mine += g.admit;
            }
            atomic_fetch_add(admitted, mine);
            _exit(0);
        }
    }
    for (int k = 0; k < 4; k++) {
        int st;
        ck_assert_int_eq(waitpid(kids[k], &st, 0), kids[k]);
        ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    ck_assert_uint_eq(atomic_load(admitted), 1000);
    /* Racing first claims may leave a second copy of the key; the first
     * one in probe order is the one every process uses. */
    munmap((void *)admitted, sizeof(*admitted));
    table_free(t, cap);
}
END_TEST

START_TEST(test_conntable)
{
    const size_t cap = 64;
    struct lb_rl_entry *t = table_new(cap);
    struct lb_rl_entry *e = lb_conntable_get(t, cap, key_of(1));
    ck_assert_ptr_nonnull(e);
    atomic_store(&e->val, 3);
    ck_assert_uint_eq(lb_conntable_count(t, cap, key_of(1)), 3);
    ck_assert_uint_eq(lb_conntable_count(t, cap, key_of(2)), 0);
    ck_assert_ptr_eq(lb_conntable_get(t, cap, key_of(1)), e);
    /* Fill the table with open connections: beyond, keys get no entry
     * (the caller lets them in untracked) and held ones are never taken. */
    unsigned got = 1, refused = 0;
    for (unsigned i = 2; i < 1000; i++) {
        struct lb_rl_entry *x = lb_conntable_get(t, cap, key_of(i));
        if (x == NULL) {
            refused++;
            continue;
        }
        ck_assert_uint_eq(atomic_load(&x->val), 0);
        atomic_store(&x->val, 1);
        got++;
    }
    ck_assert_uint_le(got, cap);
    ck_assert_uint_gt(refused, 0);
    ck_assert_uint_eq(lb_conntable_count(t, cap, key_of(1)), 3);
    /* A count back at 0 frees the entry for another key. */
    atomic_store(&e->val, 0);
    unsigned reused = 0;
    for (unsigned i = 5000; i < 6000 && !reused; i++) {
        struct lb_rl_entry *x = lb_conntable_get(t, cap, key_of(i));
        reused = x == e;
        if (x != NULL)
            atomic_store(&x->val, 1);
    }
    ck_assert(reused);
    ck_assert_uint_eq(lb_conntable_count(t, cap, key_of(1)), 0);
    table_free(t, cap);
}
END_TEST

/* ---- descriptors in the segment ------------------------------------------------ */

static void limit_cfg(struct lb_ratelimit_cfg *rl, const char *name, uint64_t interval_ns,
                      unsigned burst)
{
    memset(rl, 0, sizeof(*rl));
    snprintf(rl->name, sizeof(rl->name), "%s", name);
    snprintf(rl->rate_text, sizeof(rl->rate_text), "x");
    rl->interval_ns = interval_ns;
    rl->burst = burst;
    rl->status = 429;
}

START_TEST(test_shm_limits_across_reloads)
{
    struct lb_shm shm;
    ck_assert_int_eq(lb_shm_create(&shm), 0);
    struct lb_shm_header *h = shm.hdr;
    ck_assert(h->rl_hash_key[0] != 0 || h->rl_hash_key[1] != 0);
    struct lb_ratelimit_cfg rls[3];
    struct lb_config cfg = { .rate_limits = rls, .nrate_limits = 2, .rate_limit_table_size = 1000 };
    limit_cfg(&rls[0], "a", 100 * MS, 5);
    limit_cfg(&rls[1], "b", 10 * MS, 0);
    rls[1].key = LB_RL_KEY_HEADER;
    snprintf(rls[1].header, sizeof(rls[1].header), "X-Key");
    char err[256];
    ck_assert_int_eq(lb_shm_assign(h, &cfg, 1, err, sizeof(err)), 0);
    unsigned a = rls[0].shm_id, b = rls[1].shm_id;
    ck_assert_uint_ne(a, b);
    struct lb_shm_limit *la = lb_shm_limit(h, a), *lb = lb_shm_limit(h, b);
    ck_assert_str_eq(lb->key, "header:X-Key");
    ck_assert_uint_eq(la->capacity, 1000);
    ck_assert_uint_ge(la->off_table, h->off_arena);
    ck_assert_uint_eq(la->off_table % 4096, 0);
    /* The tables do not overlap. */
    ck_assert(la->off_table + la->region <= lb->off_table ||
              lb->off_table + lb->region <= la->off_table);
    struct lb_rl_entry *ta = lb_shm_limit_table(h, la);
    atomic_store(&ta[3].key, 42);
    atomic_store(&ta[3].val, 4242);
    lb_counter_add(&lb_shm_limit_stats(h, 0, a)->allowed, 7);
    atomic_store(&h->slots_used, 1);

    /* Reload: same name and signature keeps the table; a changed rate (or
     * a header name differing in case only: the same header) decides. */
    rls[0].status = 503;                    /* not part of the signature */
    rls[0].algorithm = LB_RL_LEAKY_BUCKET;
    snprintf(rls[1].header, sizeof(rls[1].header), "x-key");
    limit_cfg(&rls[2], "c", 100 * MS, 5);
    cfg.nrate_limits = 3;
    ck_assert_int_eq(lb_shm_assign(h, &cfg, 2, err, sizeof(err)), 0);
    ck_assert_uint_eq(rls[0].shm_id, a);
    ck_assert_uint_eq(rls[1].shm_id, b);
    ck_assert_uint_eq(atomic_load(&ta[3].val), 4242);
    ck_assert_uint_eq(la->status, 503);
    struct lb_limit_totals tot;
    lb_shm_limit_sum(h, a, &tot);
    ck_assert_uint_eq(tot.allowed, 7);
    unsigned c = rls[2].shm_id;
    ck_assert_uint_ne(c, a);
    ck_assert_uint_ne(c, b);

    rls[0].interval_ns = 50 * MS;           /* 20r/s now: new buckets */
    ck_assert_int_eq(lb_shm_assign(h, &cfg, 3, err, sizeof(err)), 0);
    unsigned a2 = rls[0].shm_id;
    ck_assert_uint_ne(a2, a);
    ck_assert_uint_eq(atomic_load(&la->state), LB_ENTRY_RETIRED);
    lb_shm_limit_sum(h, a2, &tot);
    ck_assert_uint_eq(tot.allowed, 0);
    struct lb_shm_limit *la2 = lb_shm_limit(h, a2);
    ck_assert(la2->off_table + la2->region <= la->off_table ||
              la->off_table + la->region <= la2->off_table);
    /* Once generation 2's workers are gone the old table is freed, its
     * memory zero for the next limit that gets the region. */
    lb_shm_reclaim(h, 2);
    ck_assert_uint_eq(atomic_load(&la->state), LB_ENTRY_RETIRED);
    lb_shm_reclaim(h, 3);
    ck_assert_uint_eq(atomic_load(&la->state), LB_ENTRY_FREE);
    ck_assert_uint_eq(atomic_load(&ta[3].key), 0);
    ck_assert_uint_eq(atomic_load(&ta[3].val), 0);
    lb_shm_close(&shm);
}
END_TEST

START_TEST(test_shm_limits_full)
{
    struct lb_shm shm;
    ck_assert_int_eq(lb_shm_create(&shm), 0);
    static struct lb_ratelimit_cfg rls[LB_RL_MAX_LIMITS];
    struct lb_config cfg = { .rate_limits = rls, .nrate_limits = LB_RL_MAX_LIMITS,
                             .rate_limit_table_size = 64 };
    for (unsigned i = 0; i < LB_RL_MAX_LIMITS; i++) {
        char name[16];
        snprintf(name, sizeof(name), "l%u", i);
        limit_cfg(&rls[i], name, 100 * MS, 0);
    }
    char err[256];
    ck_assert_int_eq(lb_shm_assign(shm.hdr, &cfg, 1, err, sizeof(err)), 0);
    /* Every limit renamed while the old ones' workers still run: no room. */
    for (unsigned i = 0; i < LB_RL_MAX_LIMITS; i++)
        rls[i].name[0] = 'm';
    ck_assert(!lb_shm_assign_fits(shm.hdr, &cfg));
    ck_assert_int_eq(lb_shm_assign(shm.hdr, &cfg, 2, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "rate limits") != NULL, "%s", err);
    /* Once the old ones are retired and their workers gone: fits. */
    cfg.nrate_limits = 0;
    ck_assert_int_eq(lb_shm_assign(shm.hdr, &cfg, 2, err, sizeof(err)), 0);
    cfg.nrate_limits = LB_RL_MAX_LIMITS;
    ck_assert(!lb_shm_assign_fits(shm.hdr, &cfg));
    lb_shm_reclaim(shm.hdr, 2);
    ck_assert(lb_shm_assign_fits(shm.hdr, &cfg));
    ck_assert_int_eq(lb_shm_assign(shm.hdr, &cfg, 3, err, sizeof(err)), 0);
    lb_shm_close(&shm);
}
END_TEST

/* A worker slot's connection counts go with it. */
START_TEST(test_shm_conn_table_released)
{
    struct lb_shm shm;
    ck_assert_int_eq(lb_shm_create(&shm), 0);
    struct lb_shm_header *h = shm.hdr;
    int slot = lb_shm_slot_take(h, 0, 1);
    ck_assert_int_ge(slot, 0);
    struct lb_rl_entry *t = lb_shm_conn_table(h, (unsigned)slot);
    struct lb_rl_entry *e = lb_conntable_get(t, h->conn_entries, 12345);
    atomic_store(&e->val, 2);
    ck_assert_uint_eq(lb_conntable_count(t, h->conn_entries, 12345), 2);
    lb_shm_slot_release(h, (unsigned)slot);
    ck_assert_uint_eq(lb_conntable_count(t, h->conn_entries, 12345), 0);
    lb_shm_close(&shm);
}
END_TEST

/* ---- worker/ratelimit.c: the decision over a route's limits ------------------- */

struct rl_fixture {
    struct lb_shm shm;
    struct lb_config cfg;
    struct lb_ratelimit_cfg limits[3];
    struct lb_route_cfg route;
    struct lb_cidr trusted[2];
    struct lb_ratelimit *rl;
};

static void rl_fixture_init(struct rl_fixture *f)
{
    memset(f, 0, sizeof(*f));
    ck_assert_int_eq(lb_shm_create(&f->shm), 0);
    limit_cfg(&f->limits[0], "ip", 60 * SEC, 1);            /* 1r/m, burst 1 */
    f->limits[0].headers = true;
    limit_cfg(&f->limits[1], "key", 60 * SEC, 0);           /* header:X-Key, 1r/m */
    f->limits[1].key = LB_RL_KEY_HEADER;
    snprintf(f->limits[1].header, sizeof(f->limits[1].header), "X-Key");
    limit_cfg(&f->limits[2], "dry", 60 * SEC, 0);
    f->limits[2].dry_run = true;
    for (int i = 0; i < 3; i++) {
        f->limits[i].rate = 1;
        f->limits[i].per_minute = true;
    }
    f->cfg.rate_limits = f->limits;
    f->cfg.nrate_limits = 3;
    f->cfg.rate_limit_table_size = 1000;
    f->cfg.routes = &f->route;
    f->cfg.nroutes = 1;
    ck_assert_int_eq(lb_cidr_parse("10.0.0.0/8", &f->trusted[0]), 0);
    ck_assert_int_eq(lb_cidr_parse("2001:db8::/32", &f->trusted[1]), 0);
    f->cfg.trusted_proxies = f->trusted;
    f->cfg.ntrusted_proxies = 2;
    char err[256];
    ck_assert_int_eq(lb_shm_assign(f->shm.hdr, &f->cfg, 1, err, sizeof(err)), 0);
    ck_assert_int_eq(lb_shm_slot_take(f->shm.hdr, 0, 1), 0);
    f->rl = lb_ratelimit_new(&f->cfg, f->shm.hdr, 0, NULL);     /* no fleet: no loop */
    ck_assert_ptr_nonnull(f->rl);
}

static void rl_fixture_free(struct rl_fixture *f)
{
    lb_ratelimit_free(f->rl);
    lb_shm_close(&f->shm);
}

/* One request from PEER with headers NAME: VALUE pairs (NULL-terminated). */
static enum lb_rl_verdict rl_check(struct rl_fixture *f, const char *peer, bool trusted,
                                   const char *const *hdrs, struct lb_rl_note *note,
                                   struct lb_rl_decision *d)
{
    struct lb_http_header h[8];
    struct lb_http_msg m = { .headers = h, .max_headers = 8 };
    for (size_t i = 0; hdrs != NULL && hdrs[2 * i] != NULL; i++) {
        h[i] = (struct lb_http_header){ .name = hdrs[2 * i], .value = hdrs[2 * i + 1],
                                        .name_len = (uint32_t)strlen(hdrs[2 * i]),
                                        .value_len = (uint32_t)strlen(hdrs[2 * i + 1]) };
        if (strcasecmp(hdrs[2 * i], "X-Forwarded-For") == 0)
            h[i].flags = LB_HDR_FORWARDED;      /* as the parser marks it */
        m.nheaders++;
    }
    uint64_t ip_key = 0;
    memset(note, 0, sizeof(*note));
    struct lb_rl_request req = { .route = &f->route, .client_ip = peer, .trusted = trusted,
                                 .ip_key = &ip_key, .m = &m };
    struct lb_rl_pending *pending;
    lb_ratelimit_check(f->rl, &req, note, d, &pending);
    ck_assert_ptr_null(pending);
    return d->verdict;
}

START_TEST(test_check_limits_in_order_with_refunds)
{
    struct rl_fixture f;
    rl_fixture_init(&f);
    f.route.rate_limits[0] = 0;     /* ip (burst 1), then key (burst 0) */
    f.route.rate_limits[1] = 1;
    f.route.nrate_limits = 2;
    struct lb_rl_note note;
    struct lb_rl_decision d;
    static const char *const k1[] = { "x-key", "one", NULL };
    ck_assert_int_eq(rl_check(&f, "192.0.2.1", false, k1, &note, &d), LB_RL_ADMIT);
    ck_assert_uint_eq(note.n, 1);                   /* "ip" has headers = true */
    ck_assert_uint_eq(note.remaining[0], 1);
    /* "key" refuses: "ip" gets its token back, so it still has one left. */
    ck_assert_int_eq(rl_check(&f, "192.0.2.1", false, k1, &note, &d), LB_RL_REFUSE);
    ck_assert_int_eq(d.status, 429);
    ck_assert_uint_eq(d.retry_after_s, 60);
    ck_assert_int_eq(note.mark, LB_RL_MARK_REFUSED);
    ck_assert_uint_eq(note.marked, 1);
    char buf[LB_RL_FIELDS_MAX];
    size_t n = lb_ratelimit_fields(f.rl, &note, d.retry_after_s, buf, sizeof(buf));
    buf[n] = '\0';
    ck_assert_str_eq(buf, "Retry-After: 60\r\nRateLimit-Policy: \"key\";q=1;w=60\r\n"
                          "RateLimit: \"key\";r=0;t=60\r\n");
    /* Without the header "key" does not apply; "ip" had its token back. */
    ck_assert_int_eq(rl_check(&f, "192.0.2.1", false, NULL, &note, &d), LB_RL_ADMIT);
    ck_assert_uint_eq(note.remaining[0], 0);
    ck_assert_int_eq(rl_check(&f, "192.0.2.1", false, NULL, &note, &d), LB_RL_REFUSE);
    char mark[128];
    lb_ratelimit_log_mark(f.rl, &note, mark, sizeof(mark));
    ck_assert_str_eq(mark, " limited=ip");
    struct lb_limit_totals t;
    lb_shm_limit_sum(f.shm.hdr, f.limits[0].shm_id, &t);
    ck_assert_uint_eq(t.allowed, 2);
    ck_assert_uint_eq(t.limited, 1);
    ck_assert_uint_eq(t.keys, 1);
    lb_shm_limit_sum(f.shm.hdr, f.limits[1].shm_id, &t);
    ck_assert_uint_eq(t.allowed, 1);
    ck_assert_uint_eq(t.limited, 1);
    rl_fixture_free(&f);
}
END_TEST

START_TEST(test_check_dry_run)
{
    struct rl_fixture f;
    rl_fixture_init(&f);
    f.route.rate_limits[0] = 2;
    f.route.nrate_limits = 1;
    struct lb_rl_note note;
    struct lb_rl_decision d;
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(rl_check(&f, "192.0.2.9", false, NULL, &note, &d), LB_RL_ADMIT);
    ck_assert_int_eq(note.mark, LB_RL_MARK_DRY_RUN);
    char mark[128];
    lb_ratelimit_log_mark(f.rl, &note, mark, sizeof(mark));
    ck_assert_str_eq(mark, " limited=dry:dry_run");
    struct lb_limit_totals t;
    lb_shm_limit_sum(f.shm.hdr, f.limits[2].shm_id, &t);
    ck_assert_uint_eq(t.allowed, 1);
    ck_assert_uint_eq(t.dry_run, 4);
    ck_assert_uint_eq(t.limited, 0);
    rl_fixture_free(&f);
}
END_TEST

/* key = client_ip behind trusted proxies: X-Forwarded-For from the right,
 * past trusted hops, across several headers; ports and brackets dropped;
 * an untrusted peer's header ignored. Two requests share a bucket (the
 * second is refused, burst 1 allowing two: so three) when their client is
 * the same. */
START_TEST(test_check_forwarded_client)
{
    static const struct {
        const char *peer;
        bool trusted;
        const char *xff1, *xff2;
        const char *same_as;        /* a plain peer with the same bucket */
    } cases[] = {
        { "10.0.0.1", true, "192.0.2.1", NULL, "192.0.2.1" },
        { "10.0.0.1", true, "198.51.100.7, 10.9.9.9", NULL, "198.51.100.7" },
        { "10.0.0.1", true, "203.0.113.5:4711 , 10.1.1.1", NULL, "203.0.113.5" },
        { "10.0.0.1", true, "192.0.2.44", "10.2.2.2", "192.0.2.44" },          /* two headers */
        { "10.0.0.1", true, "[2001:db9::1]:80, 2001:db8::5", NULL, "2001:db9::1" },
        { "10.0.0.1", true, "::ffff:192.0.2.60", NULL, "192.0.2.60" },          /* canonical */
        { "10.0.0.1", true, "unknown, 192.0.2.61", NULL, "192.0.2.61" },       /* stops at junk */
        { "10.0.0.1", true, "10.3.3.3, 10.4.4.4", NULL, "10.3.3.3" },           /* all trusted */
        { "10.0.0.1", true, "garbage", NULL, "10.0.0.1" },                      /* the peer */
        { "192.0.2.99", false, "192.0.2.100", NULL, "192.0.2.99" },            /* untrusted */
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(cases); i++) {
        struct rl_fixture f;
        rl_fixture_init(&f);
        f.route.rate_limits[0] = 0;
        f.route.nrate_limits = 1;
        const char *hdrs[] = { "X-Forwarded-For", cases[i].xff1,
                               cases[i].xff2 ? "x-forwarded-for" : NULL, cases[i].xff2, NULL };
        struct lb_rl_note note;
        struct lb_rl_decision d;
        ck_assert_int_eq(rl_check(&f, cases[i].peer, cases[i].trusted, hdrs, &note, &d),
                         LB_RL_ADMIT);
        ck_assert_int_eq(rl_check(&f, cases[i].same_as, false, NULL, &note, &d), LB_RL_ADMIT);
        ck_assert_msg(rl_check(&f, cases[i].same_as, false, NULL, &note, &d) == LB_RL_REFUSE,
                      "case %zu: the forwarded client is not %s", i, cases[i].same_as);
        rl_fixture_free(&f);
    }
}
END_TEST

Suite *ratelimit_suite(void)
{
    Suite *s = suite_create("ratelimit");
    TCase *tc = tcase_create("siphash");
    tcase_add_test(tc, test_siphash_vectors);
    suite_add_tcase(s, tc);

    tc = tcase_create("gcra");
    tcase_add_test(tc, test_gcra_first_request_and_burst);
    tcase_add_test(tc, test_gcra_long_run_rate);
    tcase_add_test(tc, test_gcra_leaky_bucket);
    tcase_add_test(tc, test_gcra_clock_edges);
    suite_add_tcase(s, tc);

    tc = tcase_create("table");
    tcase_add_test(tc, test_table_claim_find_reuse);
    tcase_add_test(tc, test_table_eviction);
    tcase_add_test(tc, test_table_exact_across_processes);
    tcase_add_test(tc, test_conntable);
    suite_add_tcase(s, tc);

    tc = tcase_create("check");
    tcase_add_test(tc, test_check_limits_in_order_with_refunds);
    tcase_add_test(tc, test_check_dry_run);
    tcase_add_test(tc, test_check_forwarded_client);
    suite_add_tcase(s, tc);

    tc = tcase_create("shm");
    tcase_add_test(tc, test_shm_limits_across_reloads);
    tcase_add_test(tc, test_shm_limits_full);
    tcase_add_test(tc, test_shm_conn_table_released);
    suite_add_tcase(s, tc);
    return s;
}
