/* Layout of the shared-memory segment (types only; functions in shm.h).
 *
 * One memfd, created by the master before it forks anything, mapped by every
 * lbd process and read live by `lbd -s` (and later lbtop). Rules:
 *   - the segment holds offsets, never pointers: another binary (USR2
 *     upgrade) maps it at another address;
 *   - every counter has exactly one writer; readers sum, never lock;
 *   - per-worker rows start on their own cache lines so workers never share
 *     a line they write;
 *   - a layout change bumps LB_SHM_LAYOUT_VERSION.
 *
 *   +-----------------+ 0
 *   | lb_shm_header   |  magic, version, size, generation, offsets
 *   +-----------------+ off_workers
 *   | lb_shm_worker   |  LB_SHM_MAX_SLOTS rows, one per live worker process
 *   +-----------------+ off_pools
 *   | lb_shm_pool     |  LB_SHM_MAX_POOLS, stable ids by name
 *   +-----------------+ off_backends
 *   | lb_shm_backend  |  LB_SHM_MAX_BACKENDS, stable ids by (pool, address)
 *   +-----------------+ off_stats
 *   | backend stats   |  [slot][backend] lb_shm_backend_stats, a row per slot
 *   +-----------------+ off_limits
 *   | lb_shm_limit    |  LB_SHM_MAX_LIMITS rate limits, stable ids by (name, signature)
 *   +-----------------+ off_limit_stats
 *   | limit stats     |  [slot][limit] lb_shm_limit_stats
 *   +-----------------+ off_conn (page aligned)
 *   | conn tables     |  [slot] LB_SHM_CONN_ENTRIES lb_rl_entry: connections per address
 *   +-----------------+ off_arena (page aligned)
 *   | rate-limit      |  LB_SHM_ARENA_SIZE bytes: each limit's table of lb_rl_entry,
 *   | tables          |  a page-aligned region given out by the master
 *   +-----------------+ off_tls
 *   | lb_shm_tls      |  LB_SHM_MAX_TLS, one per TLS listener, stable ids by address
 *   +-----------------+ off_faults
 *   | lb_shm_fault    |  LB_SHM_MAX_FAULTS, stable ids by name
 *   +-----------------+ off_acme
 *   | lb_shm_acme     |  ACME: pending challenges, each name's state (master/acme.c)
 *   +-----------------+ size
 *
 * The file is sparse and its pages are touched lazily: the connection
 * tables and the arena cost nothing until keys land in them.
 */
#ifndef LB_SHM_T_H
#define LB_SHM_T_H

#include <stdatomic.h>
#include <stdint.h>

#include "shared/config.h"

#define LB_SHM_MAGIC            0x314d485344424cULL   /* "LBDSHM1" */
/* A segment an upgrade replaced (another layout): the new image writes this
 * over the magic, which every layout has first, so readers let it go. */
#define LB_SHM_MAGIC_RETIRED    0x304d485344424cULL   /* "LBDSHM0" */
#define LB_SHM_LAYOUT_VERSION   7u
#define LB_SHM_MAX_SLOTS        128     /* 2x workers: old and new generation */
#define LB_SHM_MAX_POOLS        256
#define LB_SHM_MAX_BACKENDS     1024
#define LB_SHM_MAX_TLS          64      /* TLS listeners */
#define LB_SHM_MAX_FAULTS       (2 * LB_MAX_FAULTS)  /* old and new generation */
#define LB_CACHELINE            64
#define LB_SHM_MAX_LIMITS       LB_RL_MAX_LIMITS
#define LB_SHM_CONN_ENTRIES     65536   /* client addresses with connections, per worker */
#define LB_SHM_ARENA_SIZE       (2 * LB_RL_TABLES_MAX_BYTES)

/* Response status classes 1xx..5xx, index 0..4. */
#define LB_STATUS_CLASSES       5

/* Request duration histogram buckets, upper bounds in microseconds (the
 * last is +Inf): Prometheus' defaults. */
#define LB_DURATION_BUCKETS 12
#define LB_DURATION_BOUNDS_US { 5000, 10000, 25000, 50000, 100000, 250000, 500000, \
                                1000000, 2500000, 5000000, 10000000, UINT64_MAX }

/* Timeouts that fired, by kind (README: timeouts). */
enum lb_timeout_kind {
    LB_TO_CLIENT_HEADER,
    LB_TO_CLIENT_BODY,
    LB_TO_CLIENT_IDLE,
    LB_TO_CONNECT,
    LB_TO_BACKEND_RESPONSE,
    LB_TO_SEND,
    LB_TO_DEADLINE,
    LB_TO_TUNNEL,
    LB_TIMEOUT_KINDS
};

/* Why a listener stopped accepting for a while (README: max_connections). */
enum lb_pause_reason {
    LB_PAUSE_CAP,               /* max_connections reached: until one closes */
    LB_PAUSE_FD,                /* accept() failed (EMFILE, ENFILE, ENOBUFS...): 500 ms */
    LB_PAUSE_REASONS
};

/* Why a request was sent again (worker/retry.h): lbd_retries_total's
 * `reason` label. */
enum lb_retry_reason {
    LB_RETRY_CONNECT,           /* the connection could not be made */
    LB_RETRY_RESET,             /* reset, closed or an invalid head before an answer */
    LB_RETRY_TIMEOUT,           /* no answer in time, or the request not taken */
    LB_RETRY_502,
    LB_RETRY_503,
    LB_RETRY_504,
    LB_RETRY_5XX,               /* any other 5xx answer */
    LB_RETRY_REASONS
};

/* TLS handshakes by outcome, and failed ones by reason (README: TLS). */
enum lb_tls_result {
    LB_TLS_FULL,                /* a full handshake */
    LB_TLS_RESUMED,             /* resumed with a session ticket */
    LB_TLS_FAILED,
    LB_TLS_RESULTS
};

enum lb_tls_failure {
    LB_TLS_FAIL_VERSION,        /* no protocol version in common (TLS 1.2 to a TLSv1.3 port) */
    LB_TLS_FAIL_CIPHER,         /* no cipher, group or signature algorithm in common */
    LB_TLS_FAIL_HTTP,           /* plain HTTP on a TLS port (answered 400 in clear) */
    LB_TLS_FAIL_PROTOCOL,       /* anything else malformed or refused */
    LB_TLS_FAIL_CLOSED,         /* the connection ended (or timed out) first */
    LB_TLS_FAIL_SNI,            /* a name no certificate has (unknown_sni = "refuse") */
    LB_TLS_FAILURES
};

typedef _Atomic uint64_t lb_counter_t;

/* Why a pool's queue turned a request away with 503 (README: queue). */
enum lb_queue_refusal {
    LB_QUEUE_FULL,              /* queue.size requests were waiting already */
    LB_QUEUE_TIMEOUT,           /* no server had room within queue.timeout */
    LB_QUEUE_REFUSALS
};

/* Worker slot lifecycle (written by the master; the owner only sets DRAINING):
 *
 *   FREE --fork--> RUNNING --TERM/reload--> DRAINING
 *     ^               |                        |
 *     +----reaped-----+------------reaped------+
 */
enum lb_shm_slot_state {
    LB_SLOT_FREE = 0,
    LB_SLOT_RUNNING,
    LB_SLOT_DRAINING,
};

struct lb_shm_worker {
    /* Written by the master. */
    _Atomic uint32_t state;
    _Atomic int32_t pid;
    _Atomic uint32_t id;                /* worker number 0..N-1 */
    _Atomic uint32_t generation;
    lb_counter_t started_ms;            /* wall clock */
    /* Written by the worker that owns the slot; cumulative across owners. */
    lb_counter_t connections;           /* accepted */
    lb_counter_t active_connections;    /* gauge; the master zeroes it on reap */
    lb_counter_t requests;
    lb_counter_t responses[LB_STATUS_CLASSES];  /* sent to clients */
    lb_counter_t bytes_in;              /* from clients */
    lb_counter_t bytes_out;             /* to clients */
    lb_counter_t timeouts[LB_TIMEOUT_KINDS];
    lb_counter_t max_connections;       /* gauge: this owner's cap, set at its start */
    lb_counter_t accept_pauses[LB_PAUSE_REASONS];
    lb_counter_t client_aborts;         /* clients gone before their answer began */
    lb_counter_t conn_limited;          /* closed at accept: max_connections_per_ip */
    lb_counter_t rl_redis_errors;       /* fleet rate limits judged locally: redis down or slow */
    lb_counter_t tls_handshakes[LB_TLS_RESULTS];
    lb_counter_t tls_failures[LB_TLS_FAILURES];
    /* Faults injected by X-Lbd-Fault-Delay / -Abort (faults_from_headers). */
    lb_counter_t header_faults[2];      /* [0] delays, [1] aborts */
    lb_counter_t tls_unknown_sni;       /* SNI names no certificate has (served or refused) */
    /* Requests this worker has waiting in each pool's queue (by pool id):
     * its share of lb_shm_pool.queue_depth, which the master takes back
     * when it reaps the slot (a worker that died left them counted). */
    _Atomic uint32_t queued[LB_SHM_MAX_POOLS];
} __attribute__((aligned(LB_CACHELINE)));

enum lb_shm_entry_state {
    LB_ENTRY_FREE = 0,
    LB_ENTRY_ACTIVE,                    /* in the current configuration */
    LB_ENTRY_RETIRED,                   /* removed; old workers may still use it */
};

struct lb_shm_pool {
    _Atomic uint32_t state;
    uint32_t retired_gen;
    char name[LB_NAME_MAX];
    /* Shared round-robin cursor: every worker takes the next position of
     * one sequence, so the order is global, not per worker. */
    lb_counter_t rr_next __attribute__((aligned(LB_CACHELINE)));
    /* Circuit breakers (worker/breaker.h). Servers whose breaker is not
     * CLOSED, for max_ejection_percent: the winner of each transition adds
     * or takes one; the master recounts it at every assignment. */
    _Atomic uint32_t breakers_open __attribute__((aligned(LB_CACHELINE)));
    /* Requests answered 503 at once because every server that could take
     * them had its breaker open: any worker, atomic add (only then). */
    lb_counter_t breaker_refused;
    /* The queue (worker/queue.h), for requests that find every usable
     * server at its max_requests. Depth: requests waiting in every worker;
     * joined by compare-and-swap below queue.size, left by a subtraction;
     * the master takes a dead worker's share back (lb_shm_worker.queued).
     * The counters: any worker, atomic add, off the common path. */
    _Atomic uint32_t queue_depth __attribute__((aligned(LB_CACHELINE)));
    lb_counter_t queued;                /* requests that had to wait */
    lb_counter_t queue_refused[LB_QUEUE_REFUSALS];
    /* Written by the master at each assignment, for readers. */
    _Atomic uint32_t queue_size;
    _Atomic uint64_t slow_start_ms;
    _Atomic uint32_t sticky;            /* 1: sticky sessions (their counters shown) */
    /* Retries (worker/retry.h): any worker, atomic add, on the retry path
     * only. Requests sent again, by reason; retries the budget refused. */
    lb_counter_t retries[LB_RETRY_REASONS];
    lb_counter_t retry_budget_exhausted;
    /* Bumped (after the new weight is stored) by whoever changes a
     * server's weight at run time (admin API, control process): workers
     * compare it per pick and rebuild what they derived from the weights
     * (the round-robin cycle, the hash ring) when it moved. */
    _Atomic uint32_t weights_gen;
    /* Runtime servers (shared/runtime.h): the seqlock of the pool's
     * runtime slots (their lb_shm_backend rt_* fields). Odd while the
     * control process writes them; each even value is a generation of the
     * set, which workers compare with the one they built from. */
    _Atomic uint32_t servers_seq __attribute__((aligned(LB_CACHELINE)));
    _Atomic uint32_t runtime_active;    /* ACTIVE runtime servers (max_ejection_percent) */
    /* Service discovery (master/discovery.c), control process. */
    _Atomic uint32_t disco_failing;     /* 1 while the source fails (logged once) */
    lb_counter_t disco_errors;          /* failed or unusable answers */
    lb_counter_t disco_updates;         /* answers that changed the set */
    lb_counter_t disco_last_success_ms; /* wall clock of the last good answer */
    lb_counter_t disco_last_update_ms;  /* wall clock of the last change */
    char disco_type[16];                /* "" (none), "dns" */
    char disco_source[2 * LB_HOST_MAX + 16];    /* "SRV _http._tcp.example" */
} __attribute__((aligned(LB_CACHELINE)));

/* A runtime slot's state (lb_shm_backend.rt_state). */
enum lb_rt_state {
    LB_RT_EMPTY = 0,                    /* no server; weight 0 */
    LB_RT_ACTIVE,                       /* a server, taking requests by its weight */
    LB_RT_DRAINING,                     /* removed: weight 0, in-flight requests finish */
};

/* Backend health (active checks), as every worker sees it:
 *
 *          fall failed checks
 *     UP ----------------------> DOWN
 *      ^                          |
 *      +---- rise passed checks --+
 *
 * Independently an operator may set a server to drain or maint (admin API,
 * lb_backend_admin below), and its circuit breaker (below) may be open: a
 * server takes requests when it is UP, READY, of non-zero weight and its
 * breaker admits them.
 */
enum lb_health {
    LB_HEALTH_UP = 0,
    LB_HEALTH_DOWN,
};

/* What an operator set (admin API): READY is the file's state; DRAIN takes
 * no new requests but those of sticky clients already on it; MAINT takes
 * no traffic at all. Kept over reloads (while the server stays in the
 * file), worker respawns and binary upgrades: it lives in the backend's row. */
enum lb_backend_admin {
    LB_BACKEND_READY = 0,
    LB_BACKEND_DRAIN,
    LB_BACKEND_MAINT,
    LB_BACKEND_ADMIN_STATES
};

/* lb_shm_backend.weight_override: no runtime weight, the file's applies. */
#define LB_WEIGHT_NONE UINT32_MAX

enum lb_down_reason {
    LB_DOWN_NONE = 0,
    LB_DOWN_CHECK,              /* active health check */
};

/* Circuit breaker of one server (worker/breaker.h: the state machine), one
 * for every worker together; `passive_health` is a preset of it:
 *
 *             `failures` failures in a row, or `failure_ratio` of the
 *             requests of `window` (at least `min_requests`) failed, and
 *             fewer than max_ejection_percent of the pool's servers open
 *   CLOSED -----------------------------------------------------------> OPEN
 *     ^                                                               |   ^
 *     |                                the open interval has elapsed: |   | a trial failed:
 *     |                                the first trial is let through |   | open again, the
 *     |                                                               v   | interval doubled
 *     +------ all `half_open_requests` trials succeeded ------- HALF_OPEN  (<= open_max)
 *
 * While OPEN no worker sends the server a request; once the interval is
 * over it shows as half-open, and the first request admitted takes it to
 * HALF_OPEN. There exactly half_open_requests trials are let through, all
 * workers together. A trial that gets no verdict (its client left) frees
 * its place; one never heard of (its worker died) is given up after
 * breaker.trial_timeout_ms. The interval goes back to `open` once the
 * breaker has stayed closed for open_max.
 *
 * The whole state is one word, changed only by compare-and-swap, so exactly
 * one worker wins each transition (and alone logs and counts it):
 *   bits  0-1   state
 *   bits  2-11  trials let through in this half-open round
 *   bits 12-21  trials of this round that succeeded
 *   bits 22-63  OPEN: when it may half-open; HALF_OPEN: when this round
 *               began, which is also the round's id (CLOCK_MONOTONIC ms)
 * CLOSED is the word 0: the data path's test is a load and a compare.
 */
enum lb_breaker_state {
    LB_BREAKER_CLOSED = 0,
    LB_BREAKER_OPEN,
    LB_BREAKER_HALF_OPEN,
    LB_BREAKER_STATES
};

#define LB_BRK_STATE(w)         ((unsigned)((w) & 3u))
#define LB_BRK_ADMITTED(w)      ((unsigned)(((w) >> 2) & 0x3ffu))
#define LB_BRK_SUCCEEDED(w)     ((unsigned)(((w) >> 12) & 0x3ffu))
#define LB_BRK_STAMP(w)         ((uint64_t)(w) >> 22)
#define LB_BRK_WORD(state, admitted, succeeded, stamp)                             \
    ((uint64_t)(state) | ((uint64_t)(admitted) << 2) | ((uint64_t)(succeeded) << 12) | \
     ((uint64_t)(stamp) << 22))

/* The failure-ratio window: a ring of buckets, each one word (a period
 * number's low 24 bits, failures, requests: 20 bits each), replaced whole
 * by compare-and-swap when its period comes round again. */
#define LB_BREAKER_BUCKETS      16
#define LB_BRK_BUCKET_MAX       0xfffffu
#define LB_BRK_BUCKET_TAG(w)    ((uint32_t)((uint64_t)(w) >> 40))
#define LB_BRK_BUCKET_FAILS(w)  ((uint32_t)(((w) >> 20) & LB_BRK_BUCKET_MAX))
#define LB_BRK_BUCKET_TOTAL(w)  ((uint32_t)((w) & LB_BRK_BUCKET_MAX))

#define LB_ERROR_TEXT 96

struct lb_shm_backend {
    /* Read-mostly: written on reload (master) and on health changes. */
    _Atomic uint32_t state;             /* lb_shm_entry_state */
    uint32_t retired_gen;
    uint32_t pool_id;
    /* The weight the balancers use: the runtime override when there is
     * one, else the file's. The master writes all three at assignment;
     * the control process (admin API) the override and the weight. */
    _Atomic uint32_t weight;
    _Atomic uint32_t file_weight;
    _Atomic uint32_t weight_override;   /* LB_WEIGHT_NONE: none */
    /* Requests in flight (`inflight`) at most, all workers and generations
     * together; 0: no limit. Master, at each assignment. */
    _Atomic uint32_t max_requests;
    /* Slow start: CLOCK_MONOTONIC ms when the server last became usable
     * again by its health or its configuration (0: never since it was
     * first assigned; the breaker's closing is breaker_closed_ms).
     * Written by whoever made it so: the control process when a check
     * brings it UP, the master when a reload adds it, gives it weight
     * again or brings it UP by dropping its health check (the master
     * assigns before the new control process starts, and a retiring one
     * no longer writes health). */
    _Atomic uint64_t usable_ms;
    /* Breaker state word (above), read on every pick: changed only by
     * compare-and-swap, by the current generation's workers (and by the
     * worker that let a trial through, whatever its generation); reset by
     * the master when a reload removes the breaker. */
    _Atomic uint64_t breaker;
    _Atomic uint32_t health;            /* lb_health */
    _Atomic uint32_t down_reason;       /* lb_down_reason */
    _Atomic uint32_t admin_state;       /* lb_backend_admin (control process: admin API) */
    _Atomic uint32_t check_successes;   /* consecutive, control process */
    _Atomic uint32_t check_failures;    /* consecutive, control process */
    _Atomic uint32_t error_seq;         /* last_error's seqlock: odd while written */
    lb_counter_t checks_ok;
    lb_counter_t checks_failed;
    lb_counter_t last_check_ms;         /* wall clock */
    lb_counter_t last_change_ms;        /* wall clock of the last UP/DOWN change */
    /* Breaker bookkeeping, written by the winner of a transition. */
    _Atomic uint64_t breaker_interval_ms;   /* current open interval (->OPEN) */
    _Atomic uint64_t breaker_closed_ms;     /* monotonic ms of the last ->CLOSED */
    lb_counter_t breaker_transitions[LB_BREAKER_STATES];   /* by new state; atomic add */
    char last_error[LB_ERROR_TEXT];     /* of the last failed check: lb_shm_error_* */
    char pool[LB_NAME_MAX];
    char address[LB_ADDR_STR_MAX];      /* a runtime slot's key: "runtime#N" */
    /* Runtime slots (shared/runtime.h): `runtime` set by the master; the
     * rest written by the control process under the pool's servers_seq.
     * rt_address and rt_addr change only while the slot is EMPTY, and
     * rt_epoch then goes up by one. */
    uint32_t runtime;
    _Atomic uint32_t rt_state;          /* lb_rt_state */
    _Atomic uint32_t rt_epoch;
    lb_counter_t rt_removed_ms;         /* CLOCK_MONOTONIC: when it began to drain */
    char rt_address[LB_ADDR_STR_MAX];
    struct lb_addr rt_addr;
    /* Hot: written by every worker on the data path, on its own line.
     * inflight: requests admitted and not yet over; with max_requests, a
     * compare-and-swap below it admits one (worker/balancer.h). */
    _Atomic int64_t inflight __attribute__((aligned(LB_CACHELINE)));
    _Atomic uint64_t fails_in_row;      /* breaker: atomic add per failure, reset by a success */
    _Atomic uint64_t ewma_us;           /* peak EWMA of response time (least_time) */
    _Atomic uint64_t ewma_stamp_us;
    /* Retries under way that a failed try here started (from the decision
     * to the answer of the next try, or the end of the request), and those
     * of them waiting out their backoff: the pool's retry budget sums them.
     * Atomic add by any worker on the retry path; each worker's share is
     * also in its stats row, so a dead worker's is taken back. */
    _Atomic int64_t retries;
    _Atomic int64_t retries_waiting;
    /* Breaker's failure-ratio window: every worker, a CAS per report, on
     * lines of their own. */
    _Atomic uint64_t breaker_window[LB_BREAKER_BUCKETS] __attribute__((aligned(LB_CACHELINE)));
} __attribute__((aligned(LB_CACHELINE)));

/* Sticky requests by outcome (worker/sticky.h), counted at the server
 * that took them: lbd_sticky_*_total. */
enum lb_sticky_result {
    LB_STICKY_HIT,              /* sent to the server its cookie named */
    LB_STICKY_REPIN,            /* its cookie's server could not take it: sent here, re-pinned */
    LB_STICKY_INVALID,          /* a cookie of ours naming no server: ignored, pinned here */
    LB_STICKY_RESULTS
};

/* One per (worker slot, backend). Written by the slot's worker only. */
struct lb_shm_backend_stats {
    lb_counter_t requests;
    lb_counter_t responses[LB_STATUS_CLASSES];
    lb_counter_t active;                /* gauge; the master zeroes it on reap */
    lb_counter_t bytes_in;              /* from the backend */
    lb_counter_t bytes_out;             /* to the backend */
    lb_counter_t failures;              /* connect errors, resets, bad responses */
    lb_counter_t duration[LB_DURATION_BUCKETS];     /* request durations, not cumulative */
    lb_counter_t duration_sum_us;
    lb_counter_t retries;               /* gauges: this worker's share of lb_shm_backend's */
    lb_counter_t retries_waiting;
    lb_counter_t sticky[LB_STICKY_RESULTS];
    /* TLS to the backend (pools[].tls): handshakes by outcome. */
    lb_counter_t tls_handshakes[LB_TLS_RESULTS];
};

/* ---- rate limits (shared/rltable.h, worker/ratelimit.c) ---- */

/* One key of a table, 16 bytes. Rate-limit tables: KEY is claimed and
 * VAL (the key's GCRA TAT, ns on CLOCK_MONOTONIC) updated by compare-and-
 * swap from any worker. Connection tables: both written by the slot's
 * worker alone, VAL the key's open connections. */
struct lb_rl_entry {
    _Atomic uint64_t key;               /* 0: never used, 1: being claimed, else SipHash */
    _Atomic uint64_t val;
};

/* A rate limit's table, kept over reloads while the limit keeps its name
 * and signature (what its buckets mean: key, rate, burst, table size).
 * Written by the master (assign, reclaim); log_ms by any worker. */
struct lb_shm_limit {
    _Atomic uint32_t state;             /* lb_shm_entry_state */
    uint32_t retired_gen;
    char name[LB_NAME_MAX];
    char key[LB_NAME_MAX + 16];         /* "client_ip", "header:X-Api-Key", ... */
    char rate[24];                      /* "10r/s" */
    uint32_t burst;
    uint32_t algorithm;                 /* enum lb_rl_algorithm */
    uint32_t dry_run;
    uint32_t status;
    uint64_t signature;
    uint64_t off_table;                 /* from the segment's start */
    uint64_t capacity;                  /* entries */
    uint64_t region;                    /* bytes of the arena held (page multiple) */
    _Atomic uint64_t log_ms;            /* last rate-limited log line, CLOCK_MONOTONIC ms */
} __attribute__((aligned(LB_CACHELINE)));

/* One per (worker slot, limit), written by the slot's worker only. */
struct lb_shm_limit_stats {
    lb_counter_t allowed;               /* admitted at once */
    lb_counter_t limited;               /* refused */
    lb_counter_t delayed;               /* admitted after a wait (leaky bucket) */
    lb_counter_t dry_run;               /* would have been refused (dry_run) */
    lb_counter_t evictions;             /* a key with a debt dropped for another */
    lb_counter_t inserts;               /* empty entries taken: keys held = their sum */
    lb_counter_t pad[2];
};

/* TLS of one listener, found again by its address after a reload (so its
 * session ticket keys outlive the workers and the control process that
 * used them).
 *
 * Ticket keys: keys[0] encrypts every new ticket; keys[1] and keys[2],
 * the previous two, still decrypt. The master makes the first key when it
 * takes the entry, before any process uses it; from then on the control
 * process alone writes them: every ticket_rotation it shifts them down and
 * makes a new keys[0]. Writers take key_seq from even to odd by
 * compare-and-swap and back to even when done (a seqlock: workers copy a
 * key and retry when the sequence was odd or moved). */
#define LB_TLS_KEYS             3
#define LB_SHM_TLS_CERTS        16      /* = LB_TLS_MAX_CERTS */

struct lb_shm_ticket_key {
    uint8_t name[16];
    uint8_t aes_key[32];                /* AES-256-CBC */
    uint8_t hmac_key[32];               /* HMAC-SHA256 */
};

struct lb_shm_tls_cert {
    char subject[LB_TLS_SUBJECT_MAX];
    int64_t not_after;                  /* seconds since the epoch */
};

struct lb_shm_tls {
    /* Written by the master (at start and reload), under cert_seq. */
    _Atomic uint32_t state;             /* lb_shm_entry_state: FREE or ACTIVE */
    _Atomic uint32_t cert_seq;          /* seqlock of what follows */
    char address[LB_ADDR_STR_MAX];
    uint32_t ncerts;
    struct lb_shm_tls_cert certs[LB_SHM_TLS_CERTS];
    /* Bumped by whoever replaces the listener's certificate files at run
     * time (none yet; ACME in the control process): a worker that sees
     * another value than the one it started with builds its contexts
     * again from the files on its next handshake (worker/tls.c). A reload
     * does not bump it: its new workers read the files anyway. */
    _Atomic uint64_t cert_generation;
    /* Ticket keys (above). */
    _Atomic uint32_t key_seq __attribute__((aligned(LB_CACHELINE)));
    uint32_t nkeys;                     /* 1..LB_TLS_KEYS */
    struct lb_shm_ticket_key keys[LB_TLS_KEYS];
    lb_counter_t rotated_ms;            /* CLOCK_MONOTONIC of keys[0]'s making */
    lb_counter_t rotations;             /* since the entry was taken */
} __attribute__((aligned(LB_CACHELINE)));

/* A fault (README "Fault injection"), found again by its name after a
 * reload, so that what the admin API set at run time carries over.
 * Descriptive fields: the master, at assignment. file_ppm too; the
 * override and `enabled` the control process (admin API), which then
 * stores live_ppm, the one word workers read per request (0: off). */
#define LB_PPM_NONE UINT32_MAX

struct lb_shm_fault {
    _Atomic uint32_t state;             /* lb_shm_entry_state */
    uint32_t retired_gen;
    char name[LB_NAME_MAX];
    char pool[LB_NAME_MAX];
    uint32_t type;                      /* lb_fault_type */
    uint32_t abort_status;
    uint64_t delay_ms;
    _Atomic uint32_t file_ppm;
    _Atomic uint32_t ppm_override;      /* LB_PPM_NONE: the file's */
    _Atomic uint32_t enabled;           /* 1 unless the admin API turned it off */
    _Atomic uint32_t live_ppm;
    /* Requests it was injected into: atomic add by any worker, only then. */
    lb_counter_t injected __attribute__((aligned(LB_CACHELINE)));
} __attribute__((aligned(LB_CACHELINE)));

/* ACME (master/acme.c, the control process, is the only writer; workers
 * read the challenges, lbd -s and /status the names). One seqlock covers
 * the whole region: writes are a few per order, reads one per challenge
 * request. */
#define LB_ACME_MAX_CHALLENGES  16
#define LB_ACME_MAX_NAMES       64
#define LB_ACME_TOKEN_MAX       128
#define LB_ACME_KEYAUTH_MAX     256
#define LB_ACME_CERT_PEM_MAX    2048
#define LB_ACME_KEY_PEM_MAX     512
#define LB_ACME_ERROR_MAX       384

enum lb_acme_state {
    LB_ACME_NONE,                       /* no certificate yet, none asked for */
    LB_ACME_ORDERING,                   /* an order under way */
    LB_ACME_VALID,                      /* a certificate, not due for renewal */
    LB_ACME_FAILED,                     /* the last order failed: retried after a backoff */
    LB_ACME_STATES
};

enum lb_acme_result {
    LB_ACME_ORDER_VALID,                /* a certificate obtained */
    LB_ACME_ORDER_FAILED,
    LB_ACME_RESULTS
};

/* A challenge being validated: HTTP-01 answers KEYAUTH at
 * /.well-known/acme-challenge/TOKEN; TLS-ALPN-01 serves CERT_PEM/KEY_PEM
 * for NAME to a client offering ALPN acme-tls/1. */
struct lb_shm_acme_challenge {
    uint32_t used;
    uint32_t type;                      /* enum lb_acme_challenge */
    char name[LB_ACME_NAME_MAX];
    char token[LB_ACME_TOKEN_MAX];
    char keyauth[LB_ACME_KEYAUTH_MAX];
    char cert_pem[LB_ACME_CERT_PEM_MAX];
    char key_pem[LB_ACME_KEY_PEM_MAX];
};

struct lb_shm_acme_name {
    char name[LB_ACME_NAME_MAX];
    uint32_t state;                     /* enum lb_acme_state */
    int64_t not_after;                  /* of the stored certificate; 0: none */
    int64_t renew_at;                   /* wall seconds: next order (renewal or retry) */
    uint64_t orders[LB_ACME_RESULTS];
    char error[LB_ACME_ERROR_MAX];      /* the last failure, "" when none */
};

struct lb_shm_acme {
    _Atomic uint32_t seq;               /* seqlock of everything below */
    uint32_t nnames;
    struct lb_shm_acme_challenge challenges[LB_ACME_MAX_CHALLENGES];
    struct lb_shm_acme_name names[LB_ACME_MAX_NAMES];
    lb_counter_t orders[LB_ACME_RESULTS];  /* since the start, every name */
} __attribute__((aligned(LB_CACHELINE)));

struct lb_shm_header {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t header_size;
    uint64_t size;
    uint32_t max_slots;
    uint32_t max_pools;
    uint32_t max_backends;
    uint32_t max_workers;
    uint64_t off_workers;
    uint64_t off_pools;
    uint64_t off_backends;
    uint64_t off_stats;
    uint64_t off_tls;
    uint32_t max_tls;

    /* Written by the master. */
    _Atomic uint64_t generation;        /* configuration generation, +1 per reload */
    _Atomic int32_t master_pid;
    _Atomic uint32_t workers;           /* configured worker count */
    _Atomic uint32_t slots_used;        /* high-water mark: readers scan [0, slots_used) */
    lb_counter_t started_ms;
    lb_counter_t reloads;
    lb_counter_t reload_failures;
    lb_counter_t worker_restarts[LB_MAX_WORKERS];   /* by worker number */
    lb_counter_t fd_limit;              /* RLIMIT_NOFILE of every lbd process */
    /* Steering and scaling (master/steer.c, README "Steering"). */
    _Atomic uint32_t steer_client_ip;   /* listeners the eBPF program steers */
    _Atomic uint32_t steer_kernel;      /* listeners on the kernel's reuseport hash */
    _Atomic uint32_t steer_migrate;     /* 1: the program also places closing listeners' queues */
    _Atomic uint32_t steer_unavailable; /* 1: client_ip asked, BPF refused: kernel instead */
    _Atomic uint32_t workers_scaled;    /* 0, or the count TTIN/TTOU/-S set */

    /* Written by the control process. A retiring one may overlap its
     * successor for a moment: counters are added atomically (the only
     * multi-writer counters), gauges stored whole. */
    lb_counter_t admin_max_connections; /* gauge */
    lb_counter_t admin_connections;     /* gauge: open now */
    lb_counter_t admin_accept_pauses[LB_PAUSE_REASONS];
    lb_counter_t admin_timeouts;        /* head or answer not done in admin.timeout */

    /* Rate limits (set at creation). */
    uint32_t max_limits;
    uint32_t conn_entries;              /* per slot */
    uint64_t off_limits;
    uint64_t off_limit_stats;
    uint64_t off_conn;
    uint64_t off_arena;
    uint64_t arena_size;
    uint64_t rl_hash_key[2];            /* SipHash key, random per instance */

    /* Fault injection (set at creation). */
    uint64_t off_faults;
    uint32_t max_faults;
    /* Binary upgrades (master/upgrade.h), written by the master: kept by
     * every binary that adopts the segment. */
    lb_counter_t upgrades;              /* new binaries that took over */
    lb_counter_t upgrade_failures;      /* refused or rolled back */
    char version[48];                   /* the running master's LB_VERSION_FULL */
    uint64_t off_acme;                  /* one lb_shm_acme */
};

#endif
