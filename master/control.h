/* The control process ("lbd: control"): active health checks, the admin
 * listener and the rotation of TLS session ticket keys, off the data path. Forked by the master, which restarts it on
 * every reload (with the new configuration) and respawns it if it dies;
 * everything it learns lives in shm, so nothing is lost with it. */
#ifndef LB_CONTROL_H
#define LB_CONTROL_H

#include "shared/config.h"
#include "shared/shm-t.h"

/* Run the control process. ADMIN_FD is the admin listener (-1 if none).
 * Never returns. */
__attribute__((noreturn))
void lb_control_main(const struct lb_config *cfg, struct lb_shm_header *shm, int admin_fd);

#endif
