/* The admin listener, served by the control process:
 *   GET /metrics   Prometheus text format
 *   GET /status    JSON: pools, servers (state, weight, in-flight, requests,
 *                  errors, health details), workers (pid, counters)
 * One request per connection (Connection: close); never on the data path. */
#ifndef LB_ADMIN_H
#define LB_ADMIN_H

#include "shared/shm-t.h"

struct event_base;
struct lb_admin;

/* Serve on the listening FD (owned by the master; not closed here). */
struct lb_admin *lb_admin_start(struct event_base *base, int fd, struct lb_shm_header *shm);
void lb_admin_stop(struct lb_admin *a);

#endif
