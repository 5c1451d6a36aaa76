#include "master/tickets.h"

#include <stdlib.h>

#include <event2/event.h>

#include "shared/log.h"
#include "shared/shm.h"

struct lb_tickets {
    const struct lb_config *cfg;
    struct lb_shm_header *shm;
    uint64_t generation;            /* of CFG: a retiring control stops rotating */
    struct event *timer;
};

/* Rotate what is due, then sleep until the next one is. */
static void lb_tickets_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_tickets *t = arg;
    if (!lb_shm_generation_current(t->shm, t->generation))
        return;     /* a reload's new control process has taken over */
    uint64_t now = lb_now_ms(), next = UINT64_MAX;
    for (size_t i = 0; i < t->cfg->nlisteners; i++) {
        const struct lb_listener_cfg *l = &t->cfg->listeners[i];
        if (l->tls == NULL || !l->tls->session_tickets)
            continue;
        struct lb_shm_tls *st = lb_shm_tls(t->shm, l->tls->shm_id);
        uint64_t every = l->tls->ticket_rotation_ms;
        uint64_t due = lb_counter_get(&st->rotated_ms) + every;
        if (due <= now) {
            lb_shm_tls_rotate(st, now);
            lb_log_info("listener %s: session ticket keys rotated (%llu so far)", l->address,
                        (unsigned long long)lb_counter_get(&st->rotations));
            due = now + every;
        }
        if (due - now < next)
            next = due - now;
    }
    if (next == UINT64_MAX)
        return;
    struct timeval tv = lb_ms_timeval(next);
    evtimer_add(t->timer, &tv);
}

struct lb_tickets *lb_tickets_start(struct event_base *base, const struct lb_config *cfg,
                                    struct lb_shm_header *shm)
{
    bool any = false;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        any = any || (cfg->listeners[i].tls != NULL && cfg->listeners[i].tls->session_tickets);
    if (!any)
        return NULL;
    struct lb_tickets *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->timer = evtimer_new(base, lb_tickets_tick, t)) == NULL) {
        lb_log_error("session ticket key rotation could not start (out of memory): "
                     "the keys stay as they are");
        free(t);
        return NULL;
    }
    t->cfg = cfg;
    t->shm = shm;
    t->generation = atomic_load(&shm->generation);      /* set before the fork */
    lb_tickets_tick(-1, 0, t);      /* what fell due while no control ran */
    return t;
}

void lb_tickets_stop(struct lb_tickets *t)
{
    if (t == NULL)
        return;
    event_free(t->timer);
    free(t);
}
