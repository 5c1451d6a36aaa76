/* Fleet rate limits (scope = "fleet"): the bucket lives in redis, shared
 * by every lbd instance that points at it. One asynchronous round trip per
 * request (hiredis on the worker's libevent loop): a Lua script runs GCRA
 * on redis's own clock, atomically. Never blocking, never a 5xx: while
 * redis is unreachable, or slower than redis.timeout, requests are judged
 * by the limit locally instead (per instance), counted, and logged once
 * per outage. A worker reconnects every second while it is down.
 */
#ifndef LB_FLEET_H
#define LB_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"
#include "shared/rltable.h"

struct event_base;
struct lb_shm_worker;
struct lb_fleet;
struct lb_fleet_ask;

/* The answer to an ask: OK false when redis did not give one in time. */
typedef void (*lb_fleet_done_fn)(void *arg, bool ok, const struct lb_gcra *g);

/* A worker's redis client for CFG's fleet limits on BASE; errors counted
 * in STATS. NULL when CFG has none (or out of memory: local then). */
struct lb_fleet *lb_fleet_new(const struct lb_config *cfg, struct event_base *base,
                              struct lb_shm_worker *stats);
void lb_fleet_free(struct lb_fleet *f);

/* Ask redis about one request of limit C for KEY (the same on every
 * instance) with parameters P. DONE(ARG, ...) is called once, later,
 * unless lb_fleet_cancel comes first. NULL when redis is down now: judge
 * locally (lb_fleet_ask counted the error). */
struct lb_fleet_ask *lb_fleet_ask(struct lb_fleet *f, const struct lb_ratelimit_cfg *c,
                                  uint64_t key, const struct lb_gcra_params *p,
                                  lb_fleet_done_fn done, void *arg);
/* The asker is gone: DONE is never called. */
void lb_fleet_cancel(struct lb_fleet_ask *a);

/* Count and log (once per outage) a request judged locally. */
void lb_fleet_fallback(struct lb_fleet *f, const char *why);

#endif
