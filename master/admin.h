/* The admin listener, served by the control process:
 *   GET /metrics   Prometheus text format
 *   GET /status    JSON: pools, servers (state, weight, in-flight, requests,
 *                  errors, health details), workers (pid, counters)
 *   the admin API (README "Admin API"): GET /api/pools, GET/PUT/DELETE
 *   /api/pools/POOL/servers/ADDRESS, GET /api/faults, GET/PUT/DELETE
 *   /api/faults/NAME; changes need admin.token as a bearer token, their
 *   state lives in shm (every worker applies it at once), and each is
 *   logged with the client's address. Errors are JSON:
 *   {"status": N, "error": "Reason", "message": "..."}.
 * One request per connection (Connection: close); never on the data path.
 *
 * Bounded so that no admin traffic can starve the health checks that share
 * the process: at most MAX_CONNECTIONS at once (then the listener pauses
 * and new clients wait in the backlog), each with TIMEOUT from accept to
 * the end of its request head and TIMEOUT again for its answer to leave.
 *
 *   HEAD --head, bad head, too long, timeout (408)--> ANSWER
 *   ANSWER --sent, our FIN--> LINGER --the client's FIN, or 2 s--> freed
 *
 * ANSWER and LINGER read and drop what the client still sends (pipelined
 * requests, the rest of an oversized head), so that closing with unread
 * bytes cannot turn into a reset that destroys the answer in flight. */
#ifndef LB_ADMIN_H
#define LB_ADMIN_H

#include <stdint.h>

#include "shared/shm-t.h"

struct event_base;
struct lb_admin;

/* Serve on the listening FD (owned by the master; not closed here). */
struct lb_admin *lb_admin_start(struct event_base *base, int fd, const struct lb_config *cfg,
                                struct lb_shm_header *shm, unsigned max_connections,
                                uint64_t timeout_ms);
void lb_admin_stop(struct lb_admin *a);

#endif
