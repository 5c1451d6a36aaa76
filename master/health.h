/* Active health checks, run by the control process: one probe per server
 * per interval for the whole instance, whatever the number of workers.
 * Results go to the server's shm entry, which every worker's balancer reads
 * on its next pick.
 *
 * A probe: TCP connect (the check when the pool's health_check has no
 * path), then "GET path HTTP/1.1" with Connection: close; its response head
 * must be whole, valid for lbd's response parser and within
 * limits.header_size, and its status in expect_status; all within timeout.
 */
#ifndef LB_HEALTH_H
#define LB_HEALTH_H

#include "shared/config.h"
#include "shared/shm-t.h"

struct event_base;
struct lb_checker;

/* Start probing every server of CFG's pools that have a health_check. */
struct lb_checker *lb_health_start(struct event_base *base, const struct lb_config *cfg,
                                  struct lb_shm_header *shm);
void lb_health_stop(struct lb_checker *h);

/* Record one probe result for B (exported for unit tests): moves the
 * consecutive counters and flips UP/DOWN at rise/fall. ERROR is NULL on
 * success. Returns 1 if B went UP, -1 if it went DOWN, 0 otherwise. */
int lb_health_record(struct lb_shm_backend *b, const struct lb_health_cfg *cfg,
                     const char *error);

#endif
