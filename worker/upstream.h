/* Backend connections and the per-worker keep-alive pool.
 *
 * An lb_upconn is owned either by one session (busy) or by its server's idle
 * list (pooled). A pooled connection is watched: any byte or EOF from the
 * backend while idle closes it, and so does backend_idle.
 *
 *   connect --> BUSY --response read to its end, reusable--> IDLE
 *                 ^                                            |
 *                 +------------taken by a session--------------+
 *   BUSY or IDLE --error/EOF/timeout/not reusable--> closed
 *
 * How many idle connections a server keeps (per worker): `keepalive = N`
 * fixes it; "auto" (the default) keeps as many as were busy at once lately.
 * The peak of busy connections is tracked per request at the cost of a
 * compare, and the allowance rises with it at once; once a second it falls
 * halfway toward the last second's peak and the surplus idle connections,
 * least recently used first, are closed. Either way a worker keeps no more
 * idle connections in all than w->idle_cap, the fds its budget sets aside
 * for them (shared/fdbudget.h).
 */
#ifndef LB_UPSTREAM_H
#define LB_UPSTREAM_H

#include <stdbool.h>

#include "worker/worker.h"

struct lb_conn;

struct lb_upconn {
    struct lb_conn *conn;
    struct lb_server_rt *server;
    struct lb_worker *w;
    struct lb_list idle_node;
    unsigned requests;                  /* requests completed on it */
    bool connected;
};

/* Build the per-pool runtime (balancers, server rows) of W. 0 or -1. */
int lb_upstream_init(struct lb_worker *w);
void lb_upstream_destroy(struct lb_worker *w);

/* A connection to S: a pooled one if POOLED and there is one (*reused =
 * true), else a new non-blocking connect. NULL if no socket could be made. */
struct lb_upconn *lb_upconn_get(struct lb_worker *w, struct lb_server_rt *s, bool pooled,
                                bool *reused);
/* Give UP back: to the idle pool when REUSABLE and there is room, else
 * close it. Callbacks must be the caller's no more after this. */
void lb_upconn_release(struct lb_upconn *up, bool reusable);
/* The pool's runtime servers changed (another servers_seq than P's):
 * copy them, close idle connections to servers gone, rebuild the
 * balancer. */
void lb_upstream_resync(struct lb_worker *w, struct lb_pool_rt *p);

/* Before a pick: one load and a compare for a pool with runtime slots,
 * nothing for the others. */
static inline void lb_upstream_sync(struct lb_worker *w, struct lb_pool_rt *p)
{
    if (__builtin_expect(p->runtime, 0) &&
        atomic_load_explicit(&p->shm->servers_seq, memory_order_acquire) != p->seen_seq)
        lb_upstream_resync(w, p);
}

/* Close every idle connection (draining). */
void lb_upstream_close_idle(struct lb_worker *w);
/* Close idle connections until MORE fds fit in W's budget beside its
 * sessions and backend connections (or none is idle). */
void lb_upstream_make_room(struct lb_worker *w, unsigned more);

/* The "auto" allowance after a tick whose busy peak was PEAK: halfway from
 * KEEP down to PEAK, never below PEAK. Pure. */
unsigned lb_upstream_keep_next(unsigned keep, unsigned peak);

#endif
