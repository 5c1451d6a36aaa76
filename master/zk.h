/* ZooKeeper discovery with libzookeeper_mt: the children of `path` are the
 * servers (each child's data "IP:PORT" or {"address": ..., "weight": N}),
 * with watches on the children and on each child's data. The library's
 * threads only note what happened and wake the control process's loop
 * through a pipe; everything else runs there.
 *
 *   connected (or reconnected) ---> list the children, read each, apply
 *   a watch fires -----------------> list again
 *   connection lost ---------------> a failure: the set stays (logged once)
 *   session expired ---------------> a new session, its watches set again
 */
#ifndef LB_ZK_H
#define LB_ZK_H

#include <stddef.h>

#include <event2/event.h>

#include "shared/runtime.h"

struct lb_zk;

/* What the watcher is told. SERVERS[0..n) valid during the call. */
struct lb_zk_ops {
    void (*servers)(void *arg, const struct lb_runtime_server *servers, size_t n);
    void (*failed)(void *arg, const char *why);
    void (*skipped)(void *arg, const char *entry, const char *why);
    void (*info)(void *arg, const char *what);
};

/* Watch PATH on HOSTS ("h1:2181,h2:2181") with SESSION_MS; at most MAX
 * servers. NULL when out of memory. */
struct lb_zk *lb_zk_start(struct event_base *base, const char *hosts, const char *path,
                          unsigned session_ms, size_t max, const struct lb_zk_ops *ops, void *arg);
/* List again now (a retry after a failure). */
void lb_zk_relist(struct lb_zk *z);
void lb_zk_stop(struct lb_zk *z);

#endif
