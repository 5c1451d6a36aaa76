/* Session ticket keys, a job of the control process: every TLS listener
 * with session_tickets gets a new current key each ticket_rotation, the two
 * before it kept for decryption (lb_shm_tls, written through
 * lb_shm_tls_rotate). The clock is the one in shm (rotated_ms, monotonic),
 * so a reload or a respawned control process goes on where the last one
 * was: a key lives ticket_rotation as the current one whatever happens to
 * the processes. Only the current generation's control process rotates. */
#ifndef LB_TICKETS_H
#define LB_TICKETS_H

#include "shared/config.h"
#include "shared/shm-t.h"

struct event_base;
struct lb_tickets;

/* Start rotating CFG's listeners' keys on BASE. NULL when there is nothing
 * to rotate or out of memory (logged). */
struct lb_tickets *lb_tickets_start(struct event_base *base, const struct lb_config *cfg,
                                    struct lb_shm_header *shm);
void lb_tickets_stop(struct lb_tickets *t);

#endif
