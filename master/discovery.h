/* Service discovery in the control process: one watcher per pool with a
 * `discovery` group keeps the pool's runtime servers (shared/runtime.h)
 * to what its source answers.
 *
 * dns: a query of `record` for `name` to the resolvers in turn (UDP,
 * EDNS0), asked again when the answer's TTL runs out, within
 * [min_interval, max_interval]; after a failure again at min_interval,
 * doubling up to max_interval.
 *
 * A source that fails (no answer, garbage, an error code) never changes
 * the set: the last good one stays. Nor does an empty answer or NXDOMAIN
 * after a good one, unless empty_removes. The first failure of an outage
 * is logged, then nothing until it ends (logged too); every failure counts
 * in lbd_discovery_errors_total. Entries that cannot be used are left out
 * one by one, with a log line each.
 *
 * Also here: every second, runtime slots drained long enough are freed
 * (lb_runtime_reap), for discovery and the admin API alike.
 */
#ifndef LB_DISCOVERY_H
#define LB_DISCOVERY_H

#include <event2/event.h>

#include "shared/config.h"
#include "shared/runtime.h"
#include "shared/shm-t.h"

struct lb_discovery;

/* Start the watchers of CFG's pools. NULL only when out of memory; a
 * watcher that cannot start logs it and tries again later. */
struct lb_discovery *lb_discovery_start(struct event_base *base, const struct lb_config *cfg,
                                        struct lb_shm_header *shm);
void lb_discovery_stop(struct lb_discovery *d);

/* Every source's parser: add S to OUT (*N of MAX in use) unless a server
 * of that address is there already or OUT is full. NULL when added, else
 * why not, for the entry's skipped line. */
const char *lb_discovery_add(struct lb_runtime_server *out, size_t *n, size_t max,
                             const struct lb_runtime_server *s);

#endif
