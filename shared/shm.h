/* The shared-memory segment: creation (master), attachment (readers) and
 * the master's bookkeeping of slots. Layout in shm-t.h. */
#ifndef LB_SHM_H
#define LB_SHM_H

#include <stdbool.h>
#include <stddef.h>

#include "shared/config.h"
#include "shared/shm-t.h"

struct lb_shm {
    int fd;                             /* memfd; -1 once closed */
    void *base;
    size_t size;
    struct lb_shm_header *hdr;
};

/* Master: create and initialise a new segment. 0, or -1 with errno. */
int lb_shm_create(struct lb_shm *shm);
/* Map an existing segment (read-only if readonly) and check its header.
 * 0, or -1 with *why set. Takes ownership of fd on success. */
int lb_shm_attach(int fd, bool readonly, struct lb_shm *shm, const char **why);
void lb_shm_close(struct lb_shm *shm);
/* Master: a read-only fd of its segment FD, for readers outside lbd
 * (lbd -s, lbtop: anyone may ask the rendezvous socket), and FD made
 * owner-only. -1 with errno on failure (no /proc). */
int lb_shm_reader_fd(int fd);
/* Mark the segment of FD, of any layout, as replaced (LB_SHM_MAGIC_RETIRED):
 * a reader mapping it (lbtop) sees that its master moved to another one. */
void lb_shm_retire(int fd);
/* Whether a reader's mapping H was replaced by its master since. */
bool lb_shm_retired(const struct lb_shm_header *h);
/* Whether a binary may adopt segment H (FILE_SIZE bytes) as its own, as
 * an upgraded master does: same magic, layout version and table sizes.
 * Otherwise *WHY says what differs. */
bool lb_shm_compatible(const struct lb_shm_header *h, size_t file_size, const char **why);

static inline struct lb_shm_worker *lb_shm_worker(const struct lb_shm_header *h, unsigned slot)
{
    return (struct lb_shm_worker *)((char *)h + h->off_workers) + slot;
}

static inline struct lb_shm_pool *lb_shm_pool(const struct lb_shm_header *h, unsigned id)
{
    return (struct lb_shm_pool *)((char *)h + h->off_pools) + id;
}

static inline struct lb_shm_backend *lb_shm_backend(const struct lb_shm_header *h, unsigned id)
{
    return (struct lb_shm_backend *)((char *)h + h->off_backends) + id;
}

static inline struct lb_shm_acme *lb_shm_acme(const struct lb_shm_header *h)
{
    return (struct lb_shm_acme *)((char *)h + h->off_acme);
}

static inline struct lb_shm_tls *lb_shm_tls(const struct lb_shm_header *h, unsigned id)
{
    return (struct lb_shm_tls *)((char *)h + h->off_tls) + id;
}

static inline struct lb_shm_fault *lb_shm_fault(const struct lb_shm_header *h, unsigned id)
{
    return (struct lb_shm_fault *)((char *)h + h->off_faults) + id;
}

/* The entry of the fault named NAME (active or retired), or -1. */
int lb_shm_fault_find(const struct lb_shm_header *h, const char *name);
/* After a change of F's override or enabled: store the live_ppm workers read. */
void lb_shm_fault_apply(struct lb_shm_fault *f);

static inline struct lb_shm_backend_stats *
lb_shm_stats(const struct lb_shm_header *h, unsigned slot, unsigned backend)
{
    return (struct lb_shm_backend_stats *)((char *)h + h->off_stats) +
           (size_t)slot * h->max_backends + backend;
}

static inline struct lb_shm_limit *lb_shm_limit(const struct lb_shm_header *h, unsigned id)
{
    return (struct lb_shm_limit *)((char *)h + h->off_limits) + id;
}

static inline struct lb_shm_limit_stats *
lb_shm_limit_stats(const struct lb_shm_header *h, unsigned slot, unsigned limit)
{
    return (struct lb_shm_limit_stats *)((char *)h + h->off_limit_stats) +
           (size_t)slot * h->max_limits + limit;
}

static inline struct lb_rl_entry *lb_shm_limit_table(const struct lb_shm_header *h,
                                                     const struct lb_shm_limit *l)
{
    return (struct lb_rl_entry *)((char *)h + l->off_table);
}

/* Worker slot SLOT's table of connections per client address. */
static inline struct lb_rl_entry *lb_shm_conn_table(const struct lb_shm_header *h, unsigned slot)
{
    return (struct lb_rl_entry *)((char *)h + h->off_conn) + (size_t)slot * h->conn_entries;
}

/* Single-writer counters: a relaxed load and store is exact (one writer)
 * and costs a plain add, not a locked instruction. */
static inline void lb_counter_add(lb_counter_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t lb_counter_get(lb_counter_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Whether GENERATION is the running configuration's. Health and breaker
 * state is written only by the current generation's processes: a retiring
 * worker or control process still applying the old configuration's rules
 * (checks that no longer exist, say) would undo what the reload carried
 * over. */
static inline bool lb_shm_generation_current(const struct lb_shm_header *h, uint64_t generation)
{
    return atomic_load_explicit(&h->generation, memory_order_relaxed) == generation;
}

/* What an operator set for B (admin API): READY, DRAIN (no new requests;
 * a sticky client already on it may still be sent there) or MAINT (no
 * traffic at all). One relaxed load: cheap enough for any data path. */
static inline enum lb_backend_admin lb_backend_admin_state(const struct lb_shm_backend *b)
{
    return (enum lb_backend_admin)atomic_load_explicit(&b->admin_state, memory_order_relaxed);
}

/* Whether a backend may take a new request as far as health and the
 * operator go (READY and UP). Weight 0 and the breaker are the balancer's
 * business. */
static inline bool lb_backend_usable(const struct lb_shm_backend *b)
{
    return atomic_load_explicit(&b->admin_state, memory_order_relaxed) == LB_BACKEND_READY &&
           atomic_load_explicit(&b->health, memory_order_relaxed) == LB_HEALTH_UP;
}

/* Whether B takes new clients (the strategies' picks), as far as its
 * health, drain and weight go. */
static inline bool lb_backend_accepts_new(const struct lb_shm_backend *b)
{
    return atomic_load_explicit(&b->weight, memory_order_relaxed) > 0 && lb_backend_usable(b);
}

/* Whether B takes the clients its sticky cookie pins to it (the breaker
 * and max_requests aside): a server of weight 0 or drained keeps them, so
 * an operator empties it without breaking sessions; one that is down or
 * in maintenance does not. */
static inline bool lb_backend_accepts_sticky(const struct lb_shm_backend *b)
{
    return lb_backend_admin_state(b) != LB_BACKEND_MAINT &&
           atomic_load_explicit(&b->health, memory_order_relaxed) == LB_HEALTH_UP;
}
/* Admin API (control process): set B's runtime weight (LB_WEIGHT_NONE:
 * back to the file's) and tell POOL's workers to rebuild their cycles. */
void lb_shm_backend_set_weight(struct lb_shm_pool *pool, struct lb_shm_backend *b,
                               uint32_t weight_override);

/* The breaker state as shown (/status, metrics) at NOW_MS (CLOCK_MONOTONIC):
 * an OPEN breaker whose interval is over is half-open already, though the
 * transition is made (and counted) by the first trial let through. */
static inline enum lb_breaker_state lb_shm_breaker_shown(const struct lb_shm_backend *b,
                                                         uint64_t now_ms)
{
    uint64_t w = atomic_load_explicit(&b->breaker, memory_order_relaxed);
    unsigned st = LB_BRK_STATE(w);
    if (st == LB_BREAKER_OPEN && now_ms >= LB_BRK_STAMP(w))
        return LB_BREAKER_HALF_OPEN;
    return st < LB_BREAKER_STATES ? (enum lb_breaker_state)st : LB_BREAKER_CLOSED;
}

/* Slow start: the share of its weight (per mille, 100-1000) a server has
 * NOW_MS, having become usable again at SINCE_MS (0: not since it was
 * first assigned), for a ramp of WINDOW_MS (0: none). Linear in the time
 * since, clamped to 10 %..100 % (Envoy's min_weight_percent): a server
 * back a tenth of the way into its ramp, or less, gets a tenth. */
static inline unsigned lb_slow_start_permille(uint64_t since_ms, uint64_t now_ms,
                                              uint64_t window_ms)
{
    if (window_ms == 0 || since_ms == 0 || now_ms >= since_ms + window_ms)
        return 1000;
    uint64_t p = (now_ms > since_ms ? now_ms - since_ms : 0) * 1000 / window_ms;
    return p < 100 ? 100 : (unsigned)p;
}

/* When B last became usable again: health UP, a reload that (re)added it
 * or gave it weight, or its breaker closing, whichever came last. */
static inline uint64_t lb_shm_backend_usable_since(const struct lb_shm_backend *b)
{
    uint64_t a = atomic_load_explicit(&b->usable_ms, memory_order_relaxed);
    uint64_t c = atomic_load_explicit(&b->breaker_closed_ms, memory_order_relaxed);
    return a > c ? a : c;
}

/* Master: give every pool and server of CFG a stable id (same name, same
 * address: same id as before), and every rate limit its table (the same
 * one while its name and signature stay: its buckets carry over), record
 * them in the segment, and retire those CFG no longer has, marking them
 * with GENERATION. -1 (and nothing changed) when a table is full. */
int lb_shm_assign(struct lb_shm_header *h, struct lb_config *cfg, uint64_t generation,
                  char *err, size_t errlen);
/* Whether lb_shm_assign() would find room for CFG (it changes nothing). */
bool lb_shm_assign_fits(const struct lb_shm_header *h, const struct lb_config *cfg);
/* A seqlock's writer side: the sequence from even to odd by compare-and-
 * swap (two writers never interleave), and back to even. */
uint32_t lb_shm_seq_lock(_Atomic uint32_t *seq);
void lb_shm_seq_unlock(_Atomic uint32_t *seq, uint32_t locked);

/* Backend row ID as new: zero counters (every slot's stats row), UP,
 * breaker closed, no check history. Its pool and address are kept. */
void lb_shm_backend_fresh(struct lb_shm_header *h, unsigned id);

/* What a backend row is called: a runtime slot by its server's address. */
static inline const char *lb_shm_backend_name(const struct lb_shm_backend *b)
{
    return b->runtime ? b->rt_address : b->address;
}

/* Whether a row stands for a server to show (a runtime slot with none
 * does not). */
static inline bool lb_shm_backend_shown(const struct lb_shm_backend *b)
{
    return !b->runtime || atomic_load_explicit(&b->rt_state, memory_order_acquire) != LB_RT_EMPTY;
}

/* Master: free entries retired before OLDEST_LIVE_GEN (no worker of an older
 * generation is left to write them); a freed rate-limit table's pages go
 * back to the kernel. */
void lb_shm_reclaim(struct lb_shm_header *h, uint64_t oldest_live_gen);

/* Master: take a free worker slot for worker ID of GENERATION. -1 if none. */
int lb_shm_slot_take(struct lb_shm_header *h, unsigned id, uint64_t generation);
/* Master, after reaping the slot's process: zero its gauges, free it. */
void lb_shm_slot_release(struct lb_shm_header *h, unsigned slot);

/* A reader's copy of lb_shm_backend_stats, summed over all slots. */
struct lb_backend_totals {
    uint64_t requests;
    uint64_t responses[LB_STATUS_CLASSES];
    uint64_t active;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t failures;
    uint64_t duration[LB_DURATION_BUCKETS];
    uint64_t duration_sum_us;
    uint64_t sticky[LB_STICKY_RESULTS];
    uint64_t tls_handshakes[LB_TLS_RESULTS];    /* pools[].tls */
};

void lb_shm_backend_sum(const struct lb_shm_header *h, unsigned backend,
                        struct lb_backend_totals *out);
/* Add BACKEND's sticky counters, all slots, to OUT[LB_STICKY_RESULTS]. */
void lb_shm_sticky_sum(const struct lb_shm_header *h, unsigned backend, uint64_t *out);

/* A reader's copy of lb_shm_worker's counters. */
struct lb_worker_totals {
    uint64_t connections;
    uint64_t conn_limited;
    uint64_t rl_redis_errors;
    uint64_t active_connections;
    uint64_t requests;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t responses[LB_STATUS_CLASSES];
    uint64_t timeouts[LB_TIMEOUT_KINDS];
    uint64_t accept_pauses[LB_PAUSE_REASONS];
    uint64_t client_aborts;
    uint64_t tls_handshakes[LB_TLS_RESULTS];
    uint64_t tls_failures[LB_TLS_FAILURES];
    uint64_t header_faults[2];          /* X-Lbd-Fault-Delay, -Abort honoured */
    uint64_t tls_unknown_sni;
};

/* A reader's copy of one limit's counters, summed over all slots, and
 * the keys its table holds. */
struct lb_limit_totals {
    uint64_t allowed;
    uint64_t limited;
    uint64_t delayed;
    uint64_t dry_run;
    uint64_t evictions;
    uint64_t keys;
};

void lb_shm_limit_sum(const struct lb_shm_header *h, unsigned limit, struct lb_limit_totals *out);

/* Add worker slot W's counters to OUT. */
void lb_shm_worker_add(struct lb_shm_worker *w, struct lb_worker_totals *out);

/* Control process: a new current ticket key for T; the current one and
 * the one before it are kept for decryption (see lb_shm_tls). */
void lb_shm_tls_rotate(struct lb_shm_tls *t, uint64_t now_ms);
/* Worker: copy the ticket key named NAME (16 bytes), or the current one
 * when NAME is NULL, into OUT. Its index (0: the current one), or -1 when
 * there is no such key. */
int lb_shm_tls_key(const struct lb_shm_tls *t, const uint8_t *name,
                   struct lb_shm_ticket_key *out);
/* Reader: copy T's certificates (LB_SHM_TLS_CERTS at most) into OUT. */
/* Writer (the control process): certificate IDX of T's after ACME
 * replaced it (its subject and notAfter, for /status and the metrics). */
void lb_shm_tls_cert_set(struct lb_shm_tls *t, uint32_t idx, const char *subject,
                         int64_t not_after);

/* ACME (shared/shm-t.h: lb_shm_acme). Writer: the control process. A
 * challenge is put when its order asks for it and removed once validated;
 * readers copy one out: HTTP-01 by token (LEN bytes), TLS-ALPN-01 by name. */
void lb_shm_acme_challenge_put(struct lb_shm_acme *a, const struct lb_shm_acme_challenge *c);
void lb_shm_acme_challenge_del(struct lb_shm_acme *a, const char *token);
/* Every challenge dropped (what a control process that died left). */
void lb_shm_acme_challenges_clear(struct lb_shm_acme *a);
bool lb_shm_acme_http01(const struct lb_shm_acme *a, const char *token, size_t len,
                        struct lb_shm_acme_challenge *out);
bool lb_shm_acme_tlsalpn01(const struct lb_shm_acme *a, const char *name,
                           struct lb_shm_acme_challenge *out);
/* Each ACME name's state, written whole; read into OUT (LB_ACME_MAX_NAMES). */
void lb_shm_acme_names_set(struct lb_shm_acme *a, const struct lb_shm_acme_name *names, uint32_t n);
void lb_shm_acme_names_get(const struct lb_shm_acme *a, struct lb_shm_acme_name *out, uint32_t *n);

void lb_shm_tls_certs_get(const struct lb_shm_tls *t, struct lb_shm_tls_cert *out, uint32_t *n);

/* A backend's last check error: one writer at a time (the control process,
 * or the master while it assigns the entry), readers in any process get a
 * whole text, never half of an old one and half of a new one. */
void lb_shm_error_set(struct lb_shm_backend *b, const char *text);
/* Copy it into OUT (N bytes, NUL-terminated); "" if it keeps changing. */
void lb_shm_error_get(const struct lb_shm_backend *b, char *out, size_t n);

#endif
