/* Listen sockets: one SO_REUSEPORT socket per (listener, worker) pair, all
 * owned by the master, so a worker's exit never closes a socket and
 * connections queued on it wait for its successor. A reload to fewer
 * workers closes sockets (lb_listen_migrate), and so does a worker's respawn
 * backoff for as long as it lasts (lb_listen_park). */
#ifndef LB_LISTEN_H
#define LB_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

#include "shared/config.h"

struct lb_listen_group {
    struct lb_addr addr;
    char address[LB_ADDR_STR_MAX];
    int *fds;                   /* one per worker number; -1: parked */
    unsigned nfds;
    bool migrating;             /* the steering program places closing sockets' queues */
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
/* Whether lb_listen_open(CFG, OLD) would find its new addresses free,
 * opening nothing that stays (an upgrade's probe: its sockets would join
 * the running groups and reset what queues on them when it exits). */
int lb_listen_check(const struct lb_config *cfg, struct lb_listen_set *old, char *err,
                    size_t errlen);
/* A listening socket closed with connections in its queue resets them,
 * unless net.ipv4.tcp_migrate_req (Linux 5.14) hands them to another socket
 * of its SO_REUSEPORT group; a reload that lowers the worker count closes
 * sockets. Turn it on when CFG allows and the kernel lets us (a log line
 * says when it does not). Not NEEDED: the steering program moves them
 * (master/steer.c), nothing to do. */
void lb_listen_migrate(const struct lb_config *cfg, bool needed);
/* Close every socket of SET. */
void lb_listen_close(struct lb_listen_set *set);
/* Worker ID waits out a respawn backoff: close its sockets, so that the
 * kernel hands new connections to the other sockets of each group instead
 * of queueing them where nobody accepts (its queue moves with
 * tcp_migrate_req, as on a reload). A group's last open socket is kept:
 * with no other worker, waiting in its queue is the best there is. */
void lb_listen_park(struct lb_listen_set *set, unsigned id);
/* Open worker ID's parked sockets again (from CFG, the configuration SET
 * was opened for): they join the groups the other sockets hold. 0, or -1
 * (logged) when one cannot be opened. */
int lb_listen_unpark(struct lb_listen_set *set, const struct lb_config *cfg, unsigned id);
/* Live scaling to N workers: open sockets for the new worker numbers, or
 * close the master's copies of those that go (a draining worker's own copy
 * keeps its socket until it exits). -1 (logged, nothing changed) when a
 * new socket cannot be opened. */
int lb_listen_resize(struct lb_listen_set *set, const struct lb_config *cfg, unsigned n);
/* Fill FDS (cfg->nlisteners entries) with worker ID's sockets. */
void lb_listen_fds_for(const struct lb_listen_set *set, unsigned id, int *fds);

#endif
