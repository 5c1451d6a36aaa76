/* lbtop's view of the shared-memory segment: one sample is a plain copy of
 * what the screen shows (pools, servers, workers, rate limits), taken with
 * relaxed loads from a read-only mapping; rates come from two samples.
 * Nothing here writes to the segment or asks an lbd process anything. */
#ifndef LB_TOP_SAMPLE_H
#define LB_TOP_SAMPLE_H

#include <stdbool.h>
#include <stdint.h>

#include "shared/shm-t.h"

struct lb_top_server {
    unsigned id;                        /* backend slot in shm */
    unsigned pool_id;
    char pool[LB_NAME_MAX];
    char address[LB_ADDR_STR_MAX];
    uint32_t weight;
    bool up;
    enum lb_backend_admin state;        /* ready, drain, maint (admin API) */
    uint32_t file_weight;               /* the configuration's; weight is the one in use */
    enum lb_breaker_state breaker;
    int64_t inflight;
    double ewma_ms;
    uint64_t requests;
    uint64_t responses;                 /* all classes */
    uint64_t r5xx;
    uint64_t failures;                  /* connect errors, resets, bad answers */
    uint64_t duration[LB_DURATION_BUCKETS];
};

struct lb_top_worker {
    unsigned slot;
    unsigned id;
    int pid;
    uint32_t state;                     /* lb_shm_slot_state */
    uint32_t generation;
    uint64_t restarts;                  /* of worker number ID */
    uint64_t connections;
    uint64_t active;
    uint64_t requests;
};

struct lb_top_limit {
    unsigned id;
    char name[LB_NAME_MAX];
    char key[LB_NAME_MAX + 16];
    char rate[24];
    uint32_t burst;
    bool dry_run;
    uint64_t keys;
    uint64_t allowed;                   /* allowed + delayed */
    uint64_t limited;                   /* limited + would-be (dry run) */
};

struct lb_top_sample {
    uint64_t taken_ms;                  /* CLOCK_MONOTONIC */
    int master_pid;
    uint64_t generation;
    uint64_t started_ms;                /* wall clock */
    uint64_t reloads;
    unsigned workers_configured;
    unsigned nservers, nworkers, nlimits;
    struct lb_top_server servers[LB_SHM_MAX_BACKENDS];
    struct lb_top_worker workers[LB_SHM_MAX_SLOTS];
    struct lb_top_limit limits[LB_SHM_MAX_LIMITS];
};

/* Copy the current state of the segment H into S. Servers come in pool
 * order (pool slot, then backend slot); only active entries. */
void lb_top_sample_take(const struct lb_shm_header *h, struct lb_top_sample *s);

/* Rates between PREV and CUR for the entity at index I of CUR; each false
 * when PREV has no matching entity (new server, new worker process) or
 * no time passed. */
bool lb_top_server_prev(const struct lb_top_sample *prev, const struct lb_top_server *cur,
                        const struct lb_top_server **out);
bool lb_top_worker_prev(const struct lb_top_sample *prev, const struct lb_top_worker *cur,
                        const struct lb_top_worker **out);
bool lb_top_limit_prev(const struct lb_top_sample *prev, const struct lb_top_limit *cur,
                       const struct lb_top_limit **out);

/* Quantile Q (0..1) of a duration histogram (counts per bucket, not
 * cumulative) in milliseconds, interpolated inside its bucket as
 * Prometheus' histogram_quantile does; -1 when it is empty. */
double lb_top_quantile_ms(const uint64_t *buckets, double q);

#endif
