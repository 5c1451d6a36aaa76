/* Fault injection (README "Fault injection"): delays, aborts and resets
 * injected into a share of a pool's requests before they reach a backend,
 * to test how clients and callers cope.
 *
 * Configured faults of a pool share one draw per request: each takes the
 * next `percent` of [0, 100), in file order, so each gets its own share
 * exactly (as long as they add up to 100 % at most) and a request gets one
 * fault at most. The shares are read from shared memory at each request
 * (lb_shm_fault.live_ppm: what the admin API set, all workers at once); a
 * pool whose shares are all 0 costs a load per fault and no draw.
 *
 * A route with faults_from_headers also honours X-Lbd-Fault-Delay: <ms>
 * (1 to 3,600,000) and X-Lbd-Fault-Abort: <status> (200-599) on each
 * request, both together (the delay first); they are counted under the
 * fault name "headers". Without it those headers are forwarded like any. */
#ifndef LB_FAULT_H
#define LB_FAULT_H

#include <stdbool.h>
#include <stdint.h>

#include "shared/config.h"
#include "shared/shm-t.h"
#include "worker/http.h"

struct lb_fault_action {
    const char *name;                   /* the fault's, or "headers" */
    struct lb_shm_fault *shm;           /* its entry (counted there); NULL: from headers */
    uint64_t delay_ms;                  /* 0: none */
    int abort_status;                   /* 0: none */
    bool reset;
};

/* Whether one of pool PC's faults hits this request; RNG: the worker's
 * xorshift128+ state, drawn from only when a share is not 0. */
bool lb_fault_pick(const struct lb_config *cfg, const struct lb_shm_header *h,
                   const struct lb_pool_cfg *pc, uint64_t rng[2], struct lb_fault_action *a);

/* Whether request M asks for a fault by its headers (a valid one). */
bool lb_fault_from_headers(const struct lb_http_msg *m, struct lb_fault_action *a);

#endif
