#include "worker/upstream.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "shared/log.h"
#include "shared/runtime.h"
#include "worker/conn.h"
#include "worker/tls.h"

/* How often the allowances of "auto" pools decay. */
#define LB_POOL_TICK_MS 1000

unsigned lb_upstream_keep_next(unsigned keep, unsigned peak)
{
    unsigned half = (unsigned)(((unsigned long long)keep + peak) / 2);
    return half > peak ? half : peak;
}

static void lb_upconn_free(struct lb_upconn *up);

/* Once per LB_POOL_TICK_MS: every "auto" allowance falls halfway toward
 * the peak of the tick that ends (never below it), the peak starts again
 * from what is busy now, and idle connections beyond the allowance close,
 * least recently used first (the ones reuse would reach last). */
static void lb_upstream_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_worker *w = arg;
    for (size_t i = 0; i < w->cfg->npools; i++) {
        struct lb_pool_rt *p = &w->pools[i];
        if (!p->cfg->keepalive_auto)
            continue;
        for (size_t j = 0; j < p->cfg->nservers; j++) {
            struct lb_server_rt *s = &p->servers[j];
            s->keep = lb_upstream_keep_next(s->keep, s->peak);
            s->peak = s->busy;
            while (s->nidle > 0 && s->busy + s->nidle > s->keep)
                lb_upconn_free(LB_CONTAINER_OF(s->idle.prev, struct lb_upconn, idle_node));
        }
    }
}

int lb_upstream_init(struct lb_worker *w)
{
    const struct lb_config *cfg = w->cfg;
    bool any_auto = false;
    w->pools = calloc(cfg->npools, sizeof(*w->pools));
    if (w->pools == NULL)
        return -1;
    for (size_t i = 0; i < cfg->npools; i++) {
        const struct lb_pool_cfg *pc = &cfg->pools[i];
        struct lb_pool_rt *p = &w->pools[i];
        p->cfg = pc;
        p->shm = lb_shm_pool(w->shm, pc->shm_id);
        lb_queue_init(&p->queue, p->shm, &w->slot_stats->queued[pc->shm_id]);
        p->servers = calloc(pc->nservers ? pc->nservers : 1, sizeof(*p->servers));
        p->shared = calloc(pc->nservers ? pc->nservers : 1, sizeof(*p->shared));
        if (p->servers == NULL || p->shared == NULL)
            return -1;
        p->runtime = lb_pool_has_runtime(pc);
        if (p->runtime) {
            size_t nrt = pc->nservers - pc->nstatic;
            p->rt_ids = calloc(nrt, sizeof(*p->rt_ids));
            p->rt_copy = calloc(nrt, sizeof(*p->rt_copy));
            p->names = calloc(pc->nservers, sizeof(*p->names));
            if (p->rt_ids == NULL || p->rt_copy == NULL || p->names == NULL)
                return -1;
        }
        for (size_t j = 0; j < pc->nservers; j++) {
            struct lb_server_rt *s = &p->servers[j];
            s->cfg = &pc->servers[j];
            s->pool = p;
            s->stats = lb_shm_stats(w->shm, w->slot, s->cfg->shm_id);
            s->shared = lb_shm_backend(w->shm, s->cfg->shm_id);
            p->shared[j] = s->shared;
            lb_list_init(&s->idle);
            s->keep = pc->keepalive_auto ? 0 : pc->keepalive;
            if (s->cfg->runtime) {
                /* Nothing until the first resync: no address yet. */
                s->rt_cfg = *s->cfg;
                s->rt_cfg.address[0] = '\0';
                s->rt_epoch = UINT32_MAX;
                s->gone = true;
                s->cfg = &s->rt_cfg;
                p->rt_ids[j - pc->nstatic] = pc->servers[j].shm_id;
            }
            if (p->names != NULL)
                p->names[j] = s->cfg->address;
            if (pc->tls != NULL &&
                (s->tls = lb_tls_peer_new(pc->name, s->cfg->address, s->stats->tls_handshakes)) == NULL)
                return -1;
        }
        any_auto |= pc->keepalive_auto;
        lb_counter_t *cursor = &lb_shm_pool(w->shm, pc->shm_id)->rr_next;
        p->balancer.names = NULL;
        if (p->runtime) {
            p->seen_seq = 1;    /* odd: never a generation, so the first pick resyncs */
            lb_upstream_resync(w, p);
        }
        if (lb_balancer_init_watched(&p->balancer, pc, p->shared, cursor,
                                     &p->shm->weights_gen) < 0) {
            lb_log_error("pool '%s': cannot build the balancer", pc->name);
            return -1;
        }
        p->balancer.names = p->names;
        if (p->runtime && lb_balancer_rebuild(&p->balancer) < 0) {
            lb_log_error("pool '%s': cannot build the balancer", pc->name);
            return -1;
        }
    }
    if (any_auto) {
        w->pool_tick = event_new(w->base, -1, EV_PERSIST, lb_upstream_tick, w);
        struct timeval tv = { LB_POOL_TICK_MS / 1000, (LB_POOL_TICK_MS % 1000) * 1000 };
        if (w->pool_tick == NULL || event_add(w->pool_tick, &tv) < 0) {
            lb_log_error("cannot start the keep-alive pool timer");
            return -1;
        }
    }
    return 0;
}

static void lb_upconn_free(struct lb_upconn *up)
{
    if (!lb_list_empty(&up->idle_node)) {
        lb_list_remove(&up->idle_node);
        up->server->nidle--;
        up->w->nidle--;
    }
    up->w->nupconns--;
    lb_conn_free(up->conn);
    free(up);
}

void lb_upstream_make_room(struct lb_worker *w, unsigned more)
{
    while (w->nsessions + w->nupconns + more > w->fd_avail && w->nidle > 0) {
        /* The least recently used connection of the server that keeps the
         * most: what reuse would reach last. Rare (fds short), so a scan. */
        struct lb_server_rt *most = NULL;
        for (size_t i = 0; i < w->cfg->npools; i++)
            for (size_t j = 0; j < w->pools[i].cfg->nservers; j++) {
                struct lb_server_rt *s = &w->pools[i].servers[j];
                if (most == NULL || s->nidle > most->nidle)
                    most = s;
            }
        lb_upconn_free(LB_CONTAINER_OF(most->idle.prev, struct lb_upconn, idle_node));
    }
}

void lb_upstream_destroy(struct lb_worker *w)
{
    if (w->pool_tick != NULL)
        event_free(w->pool_tick);
    w->pool_tick = NULL;
    if (w->pools == NULL)
        return;
    lb_upstream_close_idle(w);
    for (size_t i = 0; i < w->cfg->npools; i++) {
        for (size_t j = 0; w->pools[i].cfg != NULL && w->pools[i].servers != NULL &&
                           j < w->pools[i].cfg->nservers; j++)
            lb_tls_peer_free(w->pools[i].servers[j].tls);
        if (w->pools[i].queue.tick != NULL)
            event_free(w->pools[i].queue.tick);
        lb_balancer_destroy(&w->pools[i].balancer);
        free(w->pools[i].servers);
        free(w->pools[i].shared);
        free(w->pools[i].rt_ids);
        free(w->pools[i].rt_copy);
        free(w->pools[i].names);
    }
    free(w->pools);
    w->pools = NULL;
}

static void lb_server_close_idle(struct lb_server_rt *s)
{
    while (!lb_list_empty(&s->idle))
        lb_upconn_free(LB_CONTAINER_OF(s->idle.next, struct lb_upconn, idle_node));
}

void lb_upstream_resync(struct lb_worker *w, struct lb_pool_rt *p)
{
    (void)w;
    const struct lb_pool_cfg *pc = p->cfg;
    size_t nrt = pc->nservers - pc->nstatic;
    uint32_t seq;
    if (!lb_runtime_read(w->shm, pc->shm_id, p->rt_ids, nrt, p->rt_copy, &seq))
        return;         /* being written: the next pick tries again */
    unsigned changed = 0;
    for (size_t k = 0; k < nrt; k++) {
        const struct lb_runtime_slot *rs = &p->rt_copy[k];
        struct lb_server_rt *s = &p->servers[pc->nstatic + k];
        bool gone = rs->state != LB_RT_ACTIVE;
        if (rs->epoch != s->rt_epoch) {
            /* Another server in the slot: connections kept were to the
             * one before (none is busy: the slot was EMPTY, drained). */
            lb_server_close_idle(s);
            snprintf(s->rt_cfg.address, sizeof(s->rt_cfg.address), "%s", rs->address);
            s->rt_cfg.addr = rs->addr;
            s->rt_epoch = rs->epoch;
            changed++;
        }
        if (gone && !s->gone)
            lb_server_close_idle(s);    /* removed: drains; busy ones finish */
        changed += gone != s->gone;
        s->gone = gone;
    }
    p->seen_seq = seq;
    /* Weights may have changed without a slot changing: always rebuild. */
    if (p->balancer.ops != NULL && lb_balancer_rebuild(&p->balancer) < 0)
        lb_log_error("pool '%s': cannot rebuild the balancer (keeps the old one)", pc->name);
    lb_log_debug("pool '%s': runtime servers changed (generation %u, %u slot(s))", pc->name,
                 seq / 2, changed);
}

void lb_upstream_close_idle(struct lb_worker *w)
{
    for (size_t i = 0; i < w->cfg->npools; i++) {
        struct lb_pool_rt *p = &w->pools[i];
        for (size_t j = 0; j < p->cfg->nservers; j++) {
            struct lb_server_rt *s = &p->servers[j];
            while (!lb_list_empty(&s->idle))
                lb_upconn_free(LB_CONTAINER_OF(s->idle.next, struct lb_upconn, idle_node));
        }
    }
}

/* While pooled, anything from the backend (a late byte, EOF, RST) or the
 * idle timeout means the connection is no longer safe to reuse. */
static void lb_upconn_idle_read(struct lb_conn *conn, void *arg)
{
    (void)conn;
    lb_upconn_free(arg);
}

static void lb_upconn_idle_event(struct lb_conn *conn, short what, void *arg)
{
    (void)conn;
    (void)what;
    lb_upconn_free(arg);
}

/* One more connection of S carries a request. Per request this is an
 * increment and a compare (no clock): the peak of the tick, and an "auto"
 * allowance that follows it up at once, so that every connection a burst
 * opened is kept. */
static void lb_upstream_busy(struct lb_server_rt *s)
{
    if (++s->busy > s->peak) {
        s->peak = s->busy;
        if (s->peak > s->keep && s->pool->cfg->keepalive_auto)
            s->keep = s->peak;
    }
}

struct lb_upconn *lb_upconn_get(struct lb_worker *w, struct lb_server_rt *s, bool pooled,
                                bool *reused)
{
    /* Most recently used first: under a steady load the same connections
     * serve, and those beyond what it needs stay at the tail, where the
     * tick and backend_idle close them. */
    if (pooled && !lb_list_empty(&s->idle)) {
        struct lb_upconn *up = LB_CONTAINER_OF(s->idle.next, struct lb_upconn, idle_node);
        lb_list_remove(&up->idle_node);
        s->nidle--;
        w->nidle--;
        lb_upstream_busy(s);
        *reused = true;
        return up;
    }
    *reused = false;

    lb_upstream_make_room(w, 1);
    const struct sockaddr *sa = (const struct sockaddr *)&s->cfg->addr.ss;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        lb_log_error("socket() for %s failed (%d: %s)", s->cfg->address, errno, strerror(errno));
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    struct lb_upconn *up = calloc(1, sizeof(*up));
    if (up == NULL) {
        close(fd);
        return NULL;
    }
    up->conn = lb_conn_new(fd);
    if (up->conn == NULL) {
        free(up);
        return NULL;
    }
    if (s->tls != NULL && lb_tls_connect(up->conn, s->pool->cfg->tls, s->tls) < 0) {
        lb_conn_free(up->conn);
        free(up);
        return NULL;
    }
    up->server = s;
    up->w = w;
    w->nupconns++;
    lb_list_init(&up->idle_node);
    /* Bounded input: the kernel holds the rest until we have room. */
    lb_conn_set_limits(up->conn, (uint32_t)w->buffer_limit, (uint32_t)w->buffer_limit / 2);
    lb_upstream_busy(s);
    return up;
}

void lb_upconn_release(struct lb_upconn *up, bool reusable)
{
    struct lb_server_rt *s = up->server;
    struct lb_worker *w = up->w;
    s->busy--;
    if (!reusable || w->draining || s->gone || s->nidle >= s->keep || w->nidle >= w->idle_cap ||
        evbuffer_get_length(up->conn->in) != 0 ||
        evbuffer_get_length(up->conn->out) != 0) {
        lb_upconn_free(up);
        return;
    }
    static const struct lb_conn_ops idle_ops = { lb_upconn_idle_read, NULL, lb_upconn_idle_event };
    lb_conn_setcb(up->conn, &idle_ops, up);
    lb_conn_set_timeouts(up->conn, s->pool->cfg->timeouts.backend_idle_ms, 0);
    lb_conn_read_enable(up->conn);
    lb_list_push(&s->idle, &up->idle_node);
    s->nidle++;
    w->nidle++;
}
