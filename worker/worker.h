/* A worker process: one libevent loop that accepts on its own listen
 * sockets, proxies, and records what happened in its shm slot.
 *
 * Worker states (the shm slot mirrors RUNNING/DRAINING):
 *
 *   RUNNING --SIGTERM--> DRAINING --last session closed--> exit 0
 *      |                    |
 *      +------SIGINT--------+---------------------------> exit 0 at once
 *
 * DRAINING: listeners are closed (the master keeps the sockets, so queued
 * connections wait for the next generation instead of being reset), idle
 * client connections are closed, busy ones get `Connection: close` on their
 * current response.
 */
#ifndef LB_WORKER_H
#define LB_WORKER_H

#include <stdbool.h>

#include <event2/event_struct.h>

#include "shared/config.h"
#include "shared/list.h"
#include "shared/log.h"
#include "shared/shm.h"
#include "worker/balancer.h"
#include "worker/http.h"
#include "worker/queue.h"

struct event_base;

struct lb_pool_rt;
struct lb_ratelimit;

/* Per-worker state of one configured server. */
struct lb_server_rt {
    const struct lb_server_cfg *cfg;
    struct lb_pool_rt *pool;
    struct lb_shm_backend_stats *stats;     /* this worker's row */
    struct lb_shm_backend *shared;          /* health, in-flight, EWMA */
    struct lb_list idle;                    /* idle keep-alive lb_upconn, most recent first */
    unsigned nidle;
    unsigned busy;                          /* connections carrying a request now */
    unsigned peak;                          /* most busy at once since the last pool tick */
    unsigned keep;                          /* idle connections allowed (upstream.c) */
    struct lb_tls_peer *tls;                /* pools[].tls: its session (worker/tls.h) */
    /* A runtime slot (shared/runtime.h): cfg points here, at this
     * worker's copy of the slot's server as of rt_epoch. */
    struct lb_server_cfg rt_cfg;
    uint32_t rt_epoch;
    bool gone;                              /* no server now: connections are not kept */
};

struct lb_runtime_slot;

struct lb_pool_rt {
    const struct lb_pool_cfg *cfg;
    struct lb_balancer balancer;
    struct lb_server_rt *servers;
    struct lb_shm_backend **shared;         /* per server, for the balancer */
    struct lb_shm_pool *shm;                /* shared pool state (breakers, queue) */
    struct lb_queue queue;                  /* requests waiting for a max_requests place */
    /* Runtime slots (cfg->nstatic < cfg->nservers): the servers_seq the
     * balancer was built from (lb_upstream_sync). */
    bool runtime;
    uint32_t seen_seq;
    uint32_t *rt_ids;                       /* backend rows of the runtime slots */
    struct lb_runtime_slot *rt_copy;        /* lb_runtime_read's scratch */
    const char **names;                     /* per server, for the ring */
};

/* A listen socket of the worker's and what its accepted connections need
 * to know of it. */
struct lb_worker_listener {
    struct lb_worker *w;
    const struct lb_listener_cfg *cfg;
    struct event ev;                    /* readable: connections are queued */
    int fd;                             /* -1: closed (draining) */
    unsigned burst;                     /* accepted per wakeup at most */
    bool on;                            /* ev is added */
};

struct lb_worker {
    struct event_base *base;
    const struct lb_config *cfg;
    struct lb_shm_header *shm;
    struct lb_shm_worker *slot_stats;
    unsigned id;
    unsigned slot;
    uint64_t generation;        /* of the configuration this worker runs */
    bool draining;
    uint64_t drain_idle_ms;     /* set when draining: lb_worker_drain_idle_ms */

    struct lb_worker_listener *listeners;   /* one per cfg->listeners */
    size_t nlisteners;
    /* The fd budget (shared/fdbudget.h), fixed at start. Invariant kept by
     * closing idle backend connections (lb_upstream_make_room):
     * nsessions + nupconns <= fd_avail. */
    unsigned fd_limit;
    unsigned fd_avail;                      /* for client and backend connections */
    unsigned max_connections;               /* client connections (sessions) */
    unsigned nupconns;                      /* backend connections, busy or idle */
    /* Accepting, or paused: 1 + lb_pause_reason. At the cap the listeners
     * resume when a session closes below it; after a failed accept() when
     * accept_timer fires. */
    unsigned accept_paused;
    struct event *accept_timer;
    struct lb_log_limit pause_log[LB_PAUSE_REASONS];
    struct lb_pool_rt *pools;
    unsigned nidle;                         /* idle backend connections, all servers */
    unsigned idle_cap;                      /* at most that many (the fd budget's share) */
    struct event *pool_tick;                /* decays "auto" keep-alive allowances */
    struct lb_list sessions;
    size_t nsessions;
    size_t peak_sessions;       /* since the last trim (lb_worker_new_peak) */
    unsigned calm_ticks;        /* seconds in a row well below the peak */
    struct event *trim_timer;   /* armed while a big peak may be trimmed */
    struct lb_ratelimit *rl;                /* NULL: no rate or connection limits */
    struct event *signals[4];

    struct lb_http_limits limits;
    uint64_t rng[2];                        /* xorshift128+ for request ids */
    size_t buffer_limit;                    /* per direction, per connection */
    /* Scratch headers (limits.headers of them): a head is parsed and
     * re-serialised in one go, so one array per worker serves every
     * connection. */
    struct lb_http_header *scratch;
};

/* Run worker ID in shm slot SLOT on LISTEN_FDS (one per cfg->listeners,
 * owned from now on). Never returns. */
__attribute__((noreturn))
void lb_worker_main(const struct lb_config *cfg, struct lb_shm_header *shm,
                    unsigned id, unsigned slot, const int *listen_fds);

/* How long a draining worker keeps an idle keep-alive connection open for
 * its next request (see the README's drain_idle). */
uint64_t lb_worker_drain_idle_ms(const struct lb_config *cfg);

/* Called by the proxy when a session ends: exits the loop once draining and
 * nothing is left. */
void lb_worker_session_gone(struct lb_worker *w);

/* Called by the proxy when the session count passes peak_sessions. Memory
 * after a burst: once the count has stayed well below a big peak for a few
 * seconds, the worker frees its free lists and pooled buffers and hands
 * the heap's free pages back to the kernel (malloc_trim). Checked by a
 * once-a-second timer armed only after such a peak, never per request. */
void lb_worker_new_peak(struct lb_worker *w);

#endif
