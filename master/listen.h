/* Listen sockets: one SO_REUSEPORT socket per (listener, worker) pair, all
 * owned by the master, so a worker's exit never closes a socket and
 * connections queued on it wait for its successor. Only a reload to fewer
 * workers closes sockets (lb_listen_migrate). */
#ifndef LB_LISTEN_H
#define LB_LISTEN_H

#include <stddef.h>

#include "shared/config.h"

struct lb_listen_group {
    struct lb_addr addr;
    char address[LB_ADDR_STR_MAX];
    int *fds;                   /* one per worker number */
    unsigned nfds;
};

struct lb_listen_set {
    struct lb_listen_group *groups;     /* in cfg->listeners order */
    size_t ngroups;
};

/* Build the sockets CFG needs for its worker count, taking over groups of
 * OLD (may be NULL) with the same address, and opening the rest after
 * checking that no other process listens there. On failure nothing of OLD
 * is touched and ERR says why. */
int lb_listen_open(struct lb_listen_set *set, const struct lb_config *cfg,
                   struct lb_listen_set *old, char *err, size_t errlen);
/* A listening socket closed with connections in its queue resets them,
 * unless net.ipv4.tcp_migrate_req (Linux 5.14) hands them to another socket
 * of its SO_REUSEPORT group; a reload that lowers the worker count closes
 * sockets. Turn it on when CFG allows and the kernel lets us (a log line
 * says when it does not). */
void lb_listen_migrate(const struct lb_config *cfg);
/* Close every socket of SET. */
void lb_listen_close(struct lb_listen_set *set);
/* Fill FDS (cfg->nlisteners entries) with worker ID's sockets. */
void lb_listen_fds_for(const struct lb_listen_set *set, unsigned id, int *fds);

#endif
