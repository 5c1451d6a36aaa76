#include "worker/worker.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <event2/event.h>

#include "shared/fdbudget.h"
#include "shared/log.h"
#include "worker/accesslog.h"
#include "worker/conn.h"
#include "worker/proxy.h"
#include "worker/ratelimit.h"
#include "worker/tls.h"
#include "worker/upstream.h"

/* After a failed accept(), as nginx: the fds a closing connection gives
 * back are the likely cure, and retrying at once would spin. */
#define LB_ACCEPT_RETRY_MS 500

/* Connections a TLS listener accepts per wakeup. Its first handshake step
 * runs at the accept (TCP_DEFER_ACCEPT: the ClientHello is there) and costs
 * hundreds of us (a key exchange, a signature); taking the whole queue at
 * once would run every handshake before the clients already waiting on
 * us (their Finished, their request, the backend's answer) are even
 * polled. One per wakeup interleaves them, as nginx's multi_accept off.
 * A plain listener takes the whole queue: a connection costs a few us
 * there, and a poll per connection would cost more than it saves. */
#define LB_ACCEPT_BURST_TLS 1

static void lb_worker_listeners_set(struct lb_worker *w, bool on)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        struct lb_worker_listener *lw = &w->listeners[i];
        if (lw->fd < 0 || lw->on == on)
            continue;
        if (on ? event_add(&lw->ev, NULL) == 0 : event_del(&lw->ev) == 0)
            lw->on = on;
    }
}

/* Stop accepting for a while: new clients wait in the kernel's backlog
 * instead of a busy loop of failed accept() calls (or connections that
 * could not get a backend fd). ERR: accept()'s errno for LB_PAUSE_FD. */
static void lb_worker_pause(struct lb_worker *w, enum lb_pause_reason why, int err)
{
    lb_worker_listeners_set(w, false);
    w->accept_paused = 1 + why;
    lb_counter_add(&w->slot_stats->accept_pauses[why], 1);
    if (why == LB_PAUSE_FD) {
        struct timeval tv = lb_ms_timeval(LB_ACCEPT_RETRY_MS);
        evtimer_add(w->accept_timer, &tv);
    }
    uint64_t n;
    if (!lb_log_limit_hit(&w->pause_log[why], lb_now_ms(), &n))
        return;
    if (why == LB_PAUSE_CAP)
        lb_log_warn("max_connections (%u) reached: not accepting until a connection closes "
                    "(%llu time(s) since the last such line)", w->max_connections,
                    (unsigned long long)n);
    else
        lb_log_error("accept() failed (%d: %s): not accepting for %d ms "
                     "(%llu time(s) since the last such line)", err,
                     evutil_socket_error_to_string(err), LB_ACCEPT_RETRY_MS,
                     (unsigned long long)n);
}

static void lb_worker_resume(struct lb_worker *w)
{
    w->accept_paused = 0;
    if (!w->draining)
        lb_worker_listeners_set(w, true);
}

static void lb_worker_accepted(struct lb_worker *w, int fd, const struct sockaddr *sa,
                               const struct lb_listener_cfg *l)
{
    lb_proxy_accept(w, fd, sa, l);
    /* The new client's fd and the backend connection it may need come
     * first: an idle backend connection goes if it must. */
    if (w->nsessions + w->nupconns > w->fd_avail)
        lb_upstream_make_room(w, 0);
    if (w->nsessions >= w->max_connections && w->accept_paused == 0)
        lb_worker_pause(w, LB_PAUSE_CAP, 0);
}

/* Connections queued on a listen socket: up to the listener's burst of
 * them now; the socket, still readable, is reported again by the next
 * poll (epoll is level-triggered) along with everything else ready. */
static void lb_worker_on_accept(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    struct lb_worker_listener *lw = arg;
    struct lb_worker *w = lw->w;
    for (unsigned n = 0; n < lw->burst && lw->on; n++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM pause; the connection stays
             * queued in the kernel. The rest waits for the next wakeup. */
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                lb_worker_pause(w, LB_PAUSE_FD, errno);
            return;
        }
        lb_worker_accepted(w, fd, (struct sockaddr *)&ss, lw->cfg);
    }
}

static void lb_worker_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_worker *w = arg;
    if (w->nsessions >= w->max_connections)
        w->accept_paused = 1 + LB_PAUSE_CAP;    /* a close will resume */
    else
        lb_worker_resume(w);
}

static void lb_worker_close_listeners(struct lb_worker *w)
{
    for (size_t i = 0; w->listeners != NULL && i < w->nlisteners; i++) {
        struct lb_worker_listener *lw = &w->listeners[i];
        if (lw->fd < 0)
            continue;
        if (lw->on)
            event_del(&lw->ev);
        lw->on = false;
        close(lw->fd);
        lw->fd = -1;
    }
}

/* A burst worth trimming after: below this many sessions at the peak the
 * memory at stake (about 7 KiB per connection with a request in flight) is
 * not worth a malloc_trim. */
#define LB_TRIM_MIN_PEAK  512
#define LB_TRIM_CALM_S    3     /* seconds at most half the peak */

void lb_worker_new_peak(struct lb_worker *w)
{
    w->peak_sessions = w->nsessions;
    w->calm_ticks = 0;
    if (w->peak_sessions >= LB_TRIM_MIN_PEAK && w->trim_timer != NULL &&
        !evtimer_pending(w->trim_timer, NULL)) {
        struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
        evtimer_add(w->trim_timer, &tv);
    }
}

static size_t lb_worker_rss_kib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return (size_t)resident * (size_t)(sysconf(_SC_PAGESIZE) / 1024);
}

/* Hand back what a burst took, once it is over. The free lists and the
 * buffer pool refill from malloc as requests come; M_TRIM_THRESHOLD still
 * keeps the heap's top through ordinary request churn. */
static void lb_worker_trim_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_worker *w = arg;
    if (w->nsessions > w->peak_sessions / 2) {
        w->calm_ticks = 0;
    } else if (++w->calm_ticks >= LB_TRIM_CALM_S) {
        size_t before = lb_worker_rss_kib();
        lb_proxy_lists_clear();
        lb_conn_pool_clear();
        malloc_trim(0);
        lb_log_info("memory returned after a peak of %zu connections (%zu now): "
                    "RSS %zu -> %zu KiB",
                     w->peak_sessions, w->nsessions, before, lb_worker_rss_kib());
        w->peak_sessions = w->nsessions;
        w->calm_ticks = 0;
        return;         /* re-armed by the next big peak */
    }
    struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
    evtimer_add(w->trim_timer, &tv);
}

void lb_worker_session_gone(struct lb_worker *w)
{
    if (w->accept_paused == 1 + LB_PAUSE_CAP && w->nsessions < w->max_connections)
        lb_worker_resume(w);
    if (w->draining && w->nsessions == 0)
        event_base_loopexit(w->base, NULL);
}

/* How long a draining worker waits for an idle connection's next request:
 * drain_idle, or client_idle when shorter (or drain_idle is 0), and never
 * more than half the shutdown timeout, so that the worker closes its idle
 * connections itself, cleanly, before the master would kill it. */
uint64_t lb_worker_drain_idle_ms(const struct lb_config *cfg)
{
    uint64_t idle = cfg->timeouts.drain_idle_ms, client = cfg->timeouts.client_idle_ms;
    if (idle == 0 || (client != 0 && client < idle))
        idle = client;
    uint64_t cap = cfg->shutdown_timeout_ms / 2;
    if (cap != 0 && (idle == 0 || idle > cap))
        idle = cap;
    return idle;
}

static void lb_worker_drain(struct lb_worker *w)
{
    if (w->draining)
        return;
    w->drain_idle_ms = lb_worker_drain_idle_ms(w->cfg);
    lb_log_info("draining: %zu connection(s) open", w->nsessions);
    w->draining = true;
    atomic_store(&w->slot_stats->state, LB_SLOT_DRAINING);
    /* Our copies only: the master still holds every listen socket, so the
     * connections queued on it wait for the next worker instead of being
     * reset. A reload to fewer workers closes the sockets of the slots that
     * go; their queues move to the others (tcp_migrate_req, listen.c). */
    lb_worker_close_listeners(w);
    lb_upstream_close_idle(w);
    lb_proxy_drain(w);
    lb_worker_session_gone(w);
}

static void lb_worker_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct lb_worker *w = arg;
    switch (sig) {
    case SIGTERM:
    case SIGQUIT:
        lb_worker_drain(w);
        break;
    case SIGINT:
        event_base_loopbreak(w->base);
        break;
    case SIGUSR1:
        if (lb_log_reopen() < 0)
            lb_log_error("reopening the log failed (%d: %s)", errno, strerror(errno));
        if (lb_accesslog_reopen() < 0)
            lb_log_error("reopening the access log failed (%d: %s)", errno, strerror(errno));
        break;
    default:
        break;
    }
}

void lb_worker_main(const struct lb_config *cfg, struct lb_shm_header *shm,
                    unsigned id, unsigned slot, const int *listen_fds)
{
    static struct lb_worker worker;
    struct lb_worker *w = &worker;
    static const int sigs[] = { SIGTERM, SIGQUIT, SIGINT, SIGUSR1 };
    int rc = 1;

    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);     /* the master's (upgrade), if sent to the whole group */
    signal(SIGPIPE, SIG_IGN);
    /* Body chains of 4-64 KiB come and go at every request: glibc would
     * hand the top of the heap back and take it again (brk twice per large
     * response) or mmap them. Keep what the worker has peaked at. */
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    /* If the master dies, drain rather than serve unsupervised forever. */
    lb_follow_parent(atomic_load(&shm->master_pid));

    w->cfg = cfg;
    w->shm = shm;
    w->generation = atomic_load(&shm->generation);      /* set before the fork */
    w->id = id;
    w->slot = slot;
    w->slot_stats = lb_shm_worker(shm, slot);
    w->limits = (struct lb_http_limits){
        .max_request_line = cfg->limits.request_line,
        .max_head = cfg->limits.header_size,
        .max_headers = cfg->limits.headers,
    };
    w->buffer_limit = cfg->limits.buffer;
    if (getrandom(w->rng, sizeof(w->rng), 0) != (ssize_t)sizeof(w->rng) ||
        (w->rng[0] | w->rng[1]) == 0) {
        w->rng[0] = lb_wall_ms() ^ ((uint64_t)getpid() << 32);
        w->rng[1] = ~w->rng[0] | 1;
    }
    lb_list_init(&w->sessions);     /* before any goto out: the exit walks it */
    w->scratch = calloc(cfg->limits.headers, sizeof(*w->scratch));
    if (w->scratch == NULL)
        goto out;

    struct event_config *ec = event_config_new();
    if (ec != NULL)
        /* Not EVENT_BASE_FLAG_PRECISE_TIMER: it arms a timerfd before every
         * wait. Timeouts are fine at the coarse clock's few ms; request
         * durations read the clock themselves (lb_wall_us). */
        event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK |
                                  /* epoll changes made and undone in one pass
                                   * (a connection read, answered and closed
                                   * before the next wait) cost no syscall */
                                  EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    w->base = ec ? event_base_new_with_config(ec) : NULL;
    event_config_free(ec);
    if (w->base == NULL) {
        lb_log_error("event_base_new() failed");
        goto out;
    }
    if (lb_conn_loop_init(w->base) < 0 || lb_upstream_init(w) < 0)
        goto out;
    w->trim_timer = evtimer_new(w->base, lb_worker_trim_tick, w);
    if (w->trim_timer == NULL)
        goto out;
    w->rl = lb_ratelimit_new(cfg, shm, slot, w->base);
    if (cfg->access_log != NULL && lb_accesslog_open(cfg->access_log, w->base) < 0)
        lb_log_error("cannot open access_log %s (%d: %s)", cfg->access_log, errno,
                     strerror(errno));

    lb_tls_worker_init(cfg, shm, w->slot_stats);
    w->listeners = calloc(cfg->nlisteners, sizeof(*w->listeners));
    if (w->listeners == NULL)
        goto out;
    w->nlisteners = cfg->nlisteners;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        w->listeners[i].fd = -1;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct lb_worker_listener *lw = &w->listeners[i];
        *lw = (struct lb_worker_listener){
            .w = w, .cfg = &cfg->listeners[i], .fd = listen_fds[i],
            .burst = cfg->listeners[i].tls != NULL ? LB_ACCEPT_BURST_TLS : UINT_MAX,
        };
        /* What evconnlistener did: our copy of the master's socket. */
        if (evutil_make_socket_nonblocking(lw->fd) < 0 ||
            evutil_make_socket_closeonexec(lw->fd) < 0 ||
            event_assign(&lw->ev, w->base, lw->fd, EV_READ | EV_PERSIST, lb_worker_on_accept,
                         lw) < 0) {
            lb_log_error("listener %s: cannot watch its socket", cfg->listeners[i].address);
            goto out;
        }
    }
    lb_worker_listeners_set(w, true);
    for (size_t i = 0; i < LB_ARRAY_SIZE(sigs); i++) {
        w->signals[i] = evsignal_new(w->base, sigs[i], lb_worker_signal, w);
        if (w->signals[i] == NULL || event_add(w->signals[i], NULL) < 0)
            goto out;
    }
    w->accept_timer = evtimer_new(w->base, lb_worker_accept_retry, w);
    if (w->accept_timer == NULL)
        goto out;
    /* Everything the worker holds for itself is open now: the rest of the
     * fd table is for connections. */
    struct lb_fdbudget fb;
    lb_fdbudget_worker(cfg, lb_fdbudget_limit(),
                       lb_fdbudget_count_open(3 + lb_fdbudget_worker_own(cfg)), &fb);
    w->fd_limit = fb.limit;
    w->fd_avail = fb.avail;
    w->max_connections = fb.max_connections;
    w->idle_cap = fb.idle_max;
    atomic_store(&w->slot_stats->max_connections, fb.max_connections);
    lb_log_debug("fd limit %u, %u held: max_connections %u, at most %u idle backend "
                 "connections", fb.limit, fb.held, fb.max_connections, fb.idle_max);
    /* The master forks with its signals blocked: unblock only now that
     * libevent handles them, so a TERM sent early is pending, not fatal. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    lb_log_debug("started in slot %u", slot);
    event_base_dispatch(w->base);
    rc = 0;
out:
    lb_proxy_close_all(w);
    lb_accesslog_close();
    lb_worker_close_listeners(w);
    free(w->listeners);
    lb_upstream_destroy(w);
    lb_ratelimit_free(w->rl);
    for (size_t i = 0; i < LB_ARRAY_SIZE(sigs); i++)
        if (w->signals[i] != NULL)
            event_free(w->signals[i]);
    if (w->trim_timer != NULL)
        event_free(w->trim_timer);
    if (w->accept_timer != NULL)
        event_free(w->accept_timer);
    lb_conn_loop_free();
    if (w->base != NULL)
        event_base_free(w->base);
    free(w->scratch);
    exit(rc);
}
