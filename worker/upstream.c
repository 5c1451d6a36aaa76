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
#include "worker/conn.h"

int lb_upstream_init(struct lb_worker *w)
{
    const struct lb_config *cfg = w->cfg;
    w->pools = calloc(cfg->npools, sizeof(*w->pools));
    if (w->pools == NULL)
        return -1;
    for (size_t i = 0; i < cfg->npools; i++) {
        const struct lb_pool_cfg *pc = &cfg->pools[i];
        struct lb_pool_rt *p = &w->pools[i];
        p->cfg = pc;
        p->shm = lb_shm_pool(w->shm, pc->shm_id);
        p->servers = calloc(pc->nservers ? pc->nservers : 1, sizeof(*p->servers));
        p->shared = calloc(pc->nservers ? pc->nservers : 1, sizeof(*p->shared));
        if (p->servers == NULL || p->shared == NULL)
            return -1;
        for (size_t j = 0; j < pc->nservers; j++) {
            struct lb_server_rt *s = &p->servers[j];
            s->cfg = &pc->servers[j];
            s->pool = p;
            s->stats = lb_shm_stats(w->shm, w->slot, s->cfg->shm_id);
            s->shared = lb_shm_backend(w->shm, s->cfg->shm_id);
            p->shared[j] = s->shared;
            lb_list_init(&s->idle);
        }
        lb_counter_t *cursor = &lb_shm_pool(w->shm, pc->shm_id)->rr_next;
        if (lb_balancer_init(&p->balancer, pc, p->shared, cursor) < 0) {
            lb_log_error("pool '%s': cannot build the balancer", pc->name);
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
    }
    lb_conn_free(up->conn);
    free(up);
}

void lb_upstream_destroy(struct lb_worker *w)
{
    if (w->pools == NULL)
        return;
    lb_upstream_close_idle(w);
    for (size_t i = 0; i < w->cfg->npools; i++) {
        lb_balancer_destroy(&w->pools[i].balancer);
        free(w->pools[i].servers);
        free(w->pools[i].shared);
    }
    free(w->pools);
    w->pools = NULL;
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

struct lb_upconn *lb_upconn_get(struct lb_worker *w, struct lb_server_rt *s, bool pooled,
                                bool *reused)
{
    if (pooled && !lb_list_empty(&s->idle)) {
        struct lb_upconn *up = LB_CONTAINER_OF(s->idle.next, struct lb_upconn, idle_node);
        lb_list_remove(&up->idle_node);
        s->nidle--;
        *reused = true;
        return up;
    }
    *reused = false;

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
    up->server = s;
    up->w = w;
    lb_list_init(&up->idle_node);
    /* Bounded input: the kernel holds the rest until we have room. */
    lb_conn_set_limits(up->conn, (uint32_t)w->buffer_limit, (uint32_t)w->buffer_limit / 2);
    return up;
}

void lb_upconn_release(struct lb_upconn *up, bool reusable)
{
    struct lb_server_rt *s = up->server;
    struct lb_worker *w = up->w;
    if (!reusable || w->draining || s->nidle >= s->pool->cfg->keepalive ||
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
}
