/* Runtime servers: a pool's servers that come and go while lbd runs
 * (service discovery, master/discovery.h; the admin API).
 *
 * A pool with `discovery` or `max_servers` has runtime slots after its
 * file's servers (shared/config.h): each a backend row of its own in shm,
 * kept across reloads. A slot holds one server at a time:
 *
 *   EMPTY --add--> ACTIVE --remove--> DRAINING --no request in flight for
 *     ^                ^                  |       LB_RUNTIME_GRACE_MS--+
 *     |                +---- added again -+                            |
 *     +----------------------------------------------------------------+
 *
 * A server keeps its slot, hence its counters, health, breaker and slow
 * start, for as long as it stays (or comes back while draining). Removal
 * sets its weight to 0 at once, which every strategy already skips; the
 * requests in flight on it finish, and every worker closes its idle
 * connections to it when it sees the new generation. Only an EMPTY slot
 * takes a new address, and only after the grace: a worker that picked it
 * just before the removal has long taken its place in flight by then.
 *
 * Writers: the control process only (discovery and the admin API run
 * there), under the pool's servers_seq seqlock. Readers: workers copy the
 * slots when servers_seq differs from the value they built from (one load
 * per pick), then rebuild their strategy (worker/upstream.c); no lock on
 * the data path.
 */
#ifndef LB_RUNTIME_H
#define LB_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/shm-t.h"

#define LB_RUNTIME_GRACE_MS 5000

struct lb_runtime_server {
    char address[LB_ADDR_STR_MAX];      /* canonical (lb_addr_format) */
    struct lb_addr addr;
    unsigned weight;                    /* 1..LB_WEIGHT_MAX */
};

/* What a change did. */
struct lb_runtime_diff {
    unsigned added;                     /* new servers (or back from draining) */
    unsigned removed;                   /* now draining */
    unsigned reweighted;
    unsigned full;                      /* not added: no EMPTY slot left */
};

/* The pool POOL_ID's runtime servers become exactly V[0..n) (entries
 * already there keep their slot): a source's new answer. NOW_MS:
 * CLOCK_MONOTONIC. Returns the number of slots the pool has (0: none,
 * nothing done). */
size_t lb_runtime_set(struct lb_shm_header *h, unsigned pool_id,
                      const struct lb_runtime_server *v, size_t n, uint64_t now_ms,
                      struct lb_runtime_diff *diff);
/* Add one server (or change its weight): 0; -1 with errno ENOENT (the
 * pool has no runtime slots) or ENOSPC (every slot in use). */
int lb_runtime_add(struct lb_shm_header *h, unsigned pool_id, const struct lb_runtime_server *s,
                   uint64_t now_ms);
/* Remove the server ADDRESS (canonical): it drains. 0, or -1 (ENOENT). */
int lb_runtime_remove(struct lb_shm_header *h, unsigned pool_id, const char *address,
                      uint64_t now_ms);
/* Slots drained for GRACE_MS with no request in flight become EMPTY.
 * Every pool; the number of slots freed. */
unsigned lb_runtime_reap(struct lb_shm_header *h, uint64_t now_ms, uint64_t grace_ms);
/* The pool's ACTIVE runtime servers into OUT (MAX at most); their count. */
size_t lb_runtime_list(const struct lb_shm_header *h, unsigned pool_id,
                       struct lb_runtime_server *out, size_t max);

/* A worker's copy of one slot. */
struct lb_runtime_slot {
    uint32_t state;                     /* lb_rt_state */
    uint32_t epoch;
    char address[LB_ADDR_STR_MAX];
    struct lb_addr addr;
};

/* Copy the slots of backend rows IDS[0..n) of pool POOL_ID into OUT, all
 * of one generation, which goes to *SEQ. false: being written (try at a
 * later pick; the old copy stays right but for new servers). */
bool lb_runtime_read(const struct lb_shm_header *h, unsigned pool_id, const uint32_t *ids,
                     size_t n, struct lb_runtime_slot *out, uint32_t *seq);

#endif
