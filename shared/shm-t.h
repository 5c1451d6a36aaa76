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
#define LB_SHM_LAYOUT_VERSION   4u
#define LB_SHM_MAX_SLOTS        128     /* 2x workers: old and new generation */
#define LB_SHM_MAX_POOLS        256
#define LB_SHM_MAX_BACKENDS     1024
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

typedef _Atomic uint64_t lb_counter_t;

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
    lb_counter_t conn_limited;          /* closed at accept: max_connections_per_ip */
    lb_counter_t rl_redis_errors;       /* fleet rate limits judged locally: redis down or slow */
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
} __attribute__((aligned(LB_CACHELINE)));

/* Backend health, as every worker sees it:
 *
 *          fall failed checks, or N failed requests in a row (passive)
 *     UP ---------------------------------------------------------> DOWN
 *      ^                                                             |
 *      +---- rise passed checks (or, without active checks, the -----+
 *            passive cooldown ends and a request succeeds)
 *
 * Independently an operator may set a server to drain (no new requests).
 */
enum lb_health {
    LB_HEALTH_UP = 0,
    LB_HEALTH_DOWN,
};

enum lb_down_reason {
    LB_DOWN_NONE = 0,
    LB_DOWN_CHECK,              /* active health check */
    LB_DOWN_PASSIVE,            /* failed requests in a row */
};

#define LB_ERROR_TEXT 96

struct lb_shm_backend {
    /* Read-mostly: written on reload (master) and on health changes. */
    _Atomic uint32_t state;             /* lb_shm_entry_state */
    uint32_t retired_gen;
    uint32_t pool_id;
    _Atomic uint32_t weight;
    _Atomic uint32_t health;            /* lb_health */
    _Atomic uint32_t down_reason;       /* lb_down_reason */
    _Atomic uint32_t drain;             /* 1: no new requests (operator) */
    _Atomic uint32_t check_successes;   /* consecutive, control process */
    _Atomic uint32_t check_failures;    /* consecutive, control process */
    _Atomic uint32_t error_seq;         /* last_error's seqlock: odd while written */
    lb_counter_t checks_ok;
    lb_counter_t checks_failed;
    lb_counter_t last_check_ms;         /* wall clock */
    lb_counter_t last_change_ms;        /* wall clock of the last UP/DOWN change */
    lb_counter_t passive_until_ms;      /* passive DOWN without checks: retry after */
    char last_error[LB_ERROR_TEXT];     /* of the last failed check: lb_shm_error_* */
    char pool[LB_NAME_MAX];
    char address[LB_ADDR_STR_MAX];
    /* Hot: written by every worker on the data path, on its own line. */
    _Atomic int64_t inflight __attribute__((aligned(LB_CACHELINE)));
    _Atomic uint64_t fails_in_row;      /* passive health */
    _Atomic uint64_t ewma_us;           /* peak EWMA of response time (least_time) */
    _Atomic uint64_t ewma_stamp_us;
} __attribute__((aligned(LB_CACHELINE)));

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

    /* Written by the master. */
    _Atomic uint64_t generation;        /* configuration generation, +1 per reload */
    _Atomic int32_t master_pid;
    _Atomic uint32_t workers;           /* configured worker count */
    _Atomic uint32_t slots_used;        /* high-water mark: readers scan [0, slots_used) */
    lb_counter_t started_ms;
    lb_counter_t reloads;
    lb_counter_t reload_failures;
    lb_counter_t worker_restarts[LB_MAX_WORKERS];   /* by worker number */

    /* Rate limits (set at creation). */
    uint32_t max_limits;
    uint32_t conn_entries;              /* per slot */
    uint64_t off_limits;
    uint64_t off_limit_stats;
    uint64_t off_conn;
    uint64_t off_arena;
    uint64_t arena_size;
    uint64_t rl_hash_key[2];            /* SipHash key, random per instance */
};

#endif
