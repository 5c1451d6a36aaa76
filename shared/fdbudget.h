/* File descriptor budgets: how many client connections a worker may hold,
 * and how many admin connections the control process may hold, so that
 * what is already accepted never fails for lack of an fd.
 *
 * The master raises RLIMIT_NOFILE's soft limit to the hard one at start;
 * every process it forks inherits that limit and has a table of its own.
 *
 * A worker's table:
 *
 *   limit = held + LB_FD_SLACK + avail
 *
 *   held          stdio and other inherited fds, listen sockets, epoll, the
 *                 signal pipe, error_log, access_log (counted at start)
 *   LB_FD_SLACK   a log reopened on USR1 (the new file opens before the old
 *                 one closes), reading /proc, the accept() of a connection
 *   avail         client connections and backend connections, busy or idle
 *
 * A client connection may need one backend connection (one at a time: a
 * retry releases the first), so max_connections = avail / 2, HAProxy's
 * rule. Idle pooled backend connections live on what the clients leave:
 * the worker keeps sessions + backend connections <= avail by closing an
 * idle one, least recently used, when an accept() or a new backend
 * connection would pass it (HAProxy kills idle server connections when it
 * needs their fds too). They are also capped at a quarter of avail
 * (tune.pool-high-fd-ratio's 25 %).
 *
 * The control process's table: held + LB_FD_SLACK + one fd per health
 * probe (a probe holds one socket at a time) + admin connections, capped
 * so that admin traffic can never take an fd a health check needs.
 */
#ifndef LB_FDBUDGET_H
#define LB_FDBUDGET_H

#include <stdbool.h>
#include <stdint.h>

#include "shared/config.h"

#define LB_FD_SLACK 8

struct lb_fdbudget {
    unsigned limit;             /* RLIMIT_NOFILE (soft) */
    unsigned held;              /* fds the process holds for itself */
    unsigned avail;             /* for client and backend connections */
    unsigned max_connections;   /* client connections per worker */
    unsigned idle_max;          /* idle pooled backend connections per worker */
    bool lowered;               /* the configured max_connections did not fit */
    bool starved;               /* the limit leaves room for less than one of each */
};

struct lb_fdbudget_control {
    unsigned limit;
    unsigned held;
    unsigned health;            /* fds kept for health probes */
    unsigned admin_max;         /* admin connections at once */
    bool lowered;               /* admin.max_connections did not fit */
};

/* Raise the soft RLIMIT_NOFILE to the hard limit. *BEFORE and *AFTER get
 * the soft limit before and after (capped to what an unsigned holds).
 * 0, or -1 with errno (the limit is then unchanged). */
int lb_fdbudget_raise(unsigned *before, unsigned *after);
/* The soft RLIMIT_NOFILE now. */
unsigned lb_fdbudget_limit(void);
/* How many fds this process has open (from /proc/self/fd); FALLBACK if
 * that cannot be read. */
unsigned lb_fdbudget_count_open(unsigned fallback);
/* The fds a worker of CFG opens for itself beyond what it inherits. */
unsigned lb_fdbudget_worker_own(const struct lb_config *cfg);
/* The fds the control process of CFG opens for itself beyond what it inherits. */
unsigned lb_fdbudget_control_own(const struct lb_config *cfg);

/* A worker's budget under LIMIT when it holds HELD fds for itself. */
void lb_fdbudget_worker(const struct lb_config *cfg, unsigned limit, unsigned held,
                        struct lb_fdbudget *out);
/* The control process's budget under LIMIT when it holds HELD fds. */
void lb_fdbudget_control(const struct lb_config *cfg, unsigned limit, unsigned held,
                         struct lb_fdbudget_control *out);

#endif
