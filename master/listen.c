#include "master/listen.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shared/log.h"

/* SO_REUSEPORT lets any process of ours join a port silently, so before
 * creating a group we make sure nobody listens there: a plain bind (with
 * SO_REUSEADDR, so TIME_WAIT leftovers do not count) fails if someone does. */
static int lb_listen_check_free(const struct lb_addr *a)
{
    const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (sa->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    int rc = bind(fd, sa, a->len);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* Options a reload may change on a socket it keeps (new ones get them too).
 * They only cost speed if refused: a log line, and lbd goes on.
 * - Delayed ACKs from the first byte (TCP_QUICKACK 0, inherited by every
 *   accepted socket): the ACK of a request rides on its response instead
 *   of going out alone (HAProxy does the same).
 * - TCP_DEFER_ACCEPT: a connection is handed over once its request has
 *   arrived, so the read after accept() finds it; a client that stays
 *   silent is handed over after about a second. */
static void lb_listen_tune(int fd, const struct lb_listener_cfg *l)
{
    int zero = 0, defer = l->defer_accept ? 1 : 0;
    if (setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof(zero)) < 0)
        lb_log_warn("%s: TCP_QUICKACK refused (%d: %s)", l->address, errno, strerror(errno));
    if (setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer)) < 0)
        lb_log_warn("%s: TCP_DEFER_ACCEPT refused (%d: %s)", l->address, errno, strerror(errno));
}

static int lb_listen_socket(const struct lb_listener_cfg *l)
{
    const struct lb_addr *a = &l->addr;
    const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    /* TCP_NODELAY on the listener is inherited by every accepted socket:
     * one setsockopt per listener instead of one per connection. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
        (sa->sa_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
        bind(fd, sa, a->len) < 0 || listen(fd, l->backlog) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    lb_listen_tune(fd, l);
    return fd;
}

#define LB_MIGRATE_SYSCTL "/proc/sys/net/ipv4/tcp_migrate_req"

/* net.ipv4.tcp_migrate_req: 1, 0, or -1 when unreadable (before Linux 5.14,
 * no /proc). */
static int lb_listen_migrate_state(void)
{
    char c = 0;
    int fd = open(LB_MIGRATE_SYSCTL, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, &c, 1);
    close(fd);
    return n == 1 ? c == '1' : -1;
}

void lb_listen_migrate(const struct lb_config *cfg, bool needed)
{
    static bool warned;         /* once per master: every reload asks again */
    int state = lb_listen_migrate_state();
    if (state == 1 || !cfg->tcp_migrate_req || !needed)
        return;
    int fd = state < 0 ? -1 : open(LB_MIGRATE_SYSCTL, O_WRONLY | O_CLOEXEC);
    if (fd >= 0 && write(fd, "1\n", 2) == 2) {
        close(fd);
        lb_log_info("net.ipv4.tcp_migrate_req set to 1: connections queued on a socket a "
                    "reload closes go to the remaining workers");
        return;
    }
    int saved = errno;
    if (fd >= 0)
        close(fd);
    if (warned)
        return;
    warned = true;
    lb_log_warn("net.ipv4.tcp_migrate_req is off and cannot be set (%s): a reload that lowers "
                "the worker count resets connections still queued on the sockets it closes",
                state < 0 ? "no " LB_MIGRATE_SYSCTL ": Linux 5.14 or later has it"
                          : strerror(saved));
}

static struct lb_listen_group *lb_listen_find(struct lb_listen_set *set,
                                              const struct lb_addr *a)
{
    for (size_t i = 0; set != NULL && i < set->ngroups; i++)
        if (set->groups[i].fds != NULL && lb_addr_equal(&set->groups[i].addr, a))
            return &set->groups[i];
    return NULL;
}

static void lb_listen_group_close(struct lb_listen_group *g, unsigned from)
{
    for (unsigned i = from; g->fds != NULL && i < g->nfds; i++)
        if (g->fds[i] >= 0)
            close(g->fds[i]);
}

int lb_listen_check(const struct lb_config *cfg, struct lb_listen_set *old, char *err,
                    size_t errlen)
{
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct lb_listener_cfg *l = &cfg->listeners[i];
        if (lb_listen_find(old, &l->addr) == NULL && lb_listen_check_free(&l->addr) < 0) {
            snprintf(err, errlen, "cannot listen on %s: %s%s", l->address, strerror(errno),
                     errno == EADDRINUSE ? " (another process listens there)" : "");
            return -1;
        }
    }
    return 0;
}

int lb_listen_open(struct lb_listen_set *set, const struct lb_config *cfg,
                   struct lb_listen_set *old, char *err, size_t errlen)
{
    unsigned n = cfg->workers;
    set->ngroups = cfg->nlisteners;
    set->groups = calloc(cfg->nlisteners, sizeof(*set->groups));
    if (set->groups == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* Phase 1: open what is new, touching nothing of OLD. */
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct lb_listener_cfg *l = &cfg->listeners[i];
        struct lb_listen_group *g = &set->groups[i];
        struct lb_listen_group *prev = lb_listen_find(old, &l->addr);
        g->addr = l->addr;
        snprintf(g->address, sizeof(g->address), "%s", l->address);
        g->nfds = n;
        g->fds = malloc(n * sizeof(*g->fds));
        if (g->fds == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        for (unsigned k = 0; k < n; k++)
            g->fds[k] = -1;
        if (prev == NULL && lb_listen_check_free(&l->addr) < 0) {
            snprintf(err, errlen, "cannot listen on %s: %s%s", l->address, strerror(errno),
                     errno == EADDRINUSE ? " (another process listens there)" : "");
            goto fail;
        }
        for (unsigned k = 0; k < n; k++) {
            if (prev != NULL && k < prev->nfds && prev->fds[k] >= 0)
                continue;   /* taken over in phase 2 (a parked one is opened) */
            g->fds[k] = lb_listen_socket(l);
            if (g->fds[k] < 0) {
                snprintf(err, errlen, "cannot listen on %s: %s", l->address, strerror(errno));
                goto fail;
            }
        }
    }
    /* Phase 2: take over the sockets OLD already has, with this config's
     * options. */
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct lb_listen_group *g = &set->groups[i];
        struct lb_listen_group *prev = lb_listen_find(old, &g->addr);
        if (prev == NULL)
            continue;
        for (unsigned k = 0; k < prev->nfds && k < n; k++) {
            if (prev->fds[k] < 0)
                continue;
            g->fds[k] = prev->fds[k];
            prev->fds[k] = -1;
            lb_listen_tune(g->fds[k], &cfg->listeners[i]);
            /* listen() again on a listening socket sets its new backlog. */
            if (listen(g->fds[k], cfg->listeners[i].backlog) < 0)
                lb_log_warn("%s: listen() refused (%d: %s)", g->address, errno, strerror(errno));
        }
        if (prev->nfds > n && !prev->migrating && lb_listen_migrate_state() != 1)
            lb_log_warn("%s: closing %u listening sockets without net.ipv4.tcp_migrate_req: "
                        "connections queued on them are reset", g->address, prev->nfds - n);
        lb_listen_group_close(prev, 0);     /* extra sockets of a shrink */
        free(prev->fds);
        prev->fds = NULL;
    }
    return 0;
fail:
    lb_listen_close(set);       /* only what phase 1 opened: OLD is untouched */
    return -1;
}

void lb_listen_close(struct lb_listen_set *set)
{
    for (size_t i = 0; i < set->ngroups; i++) {
        lb_listen_group_close(&set->groups[i], 0);
        free(set->groups[i].fds);
    }
    free(set->groups);
    set->groups = NULL;
    set->ngroups = 0;
}

void lb_listen_park(struct lb_listen_set *set, unsigned id)
{
    unsigned closed = 0;
    for (size_t i = 0; i < set->ngroups; i++) {
        struct lb_listen_group *g = &set->groups[i];
        if (id >= g->nfds || g->fds[id] < 0)
            continue;
        unsigned open = 0;
        for (unsigned k = 0; k < g->nfds; k++)
            open += g->fds[k] >= 0;
        if (open < 2)
            continue;       /* the port's last socket: connections wait in it */
        close(g->fds[id]);
        g->fds[id] = -1;
        closed++;
    }
    if (closed == 0)
        return;
    bool migrating = set->ngroups > 0 && set->groups[0].migrating;
    if (migrating || lb_listen_migrate_state() == 1)
        lb_log_info("worker %u: its listening sockets leave their groups until it is respawned "
                    "(connections go to the other workers, those queued too)", id);
    else
        lb_log_warn("worker %u: its listening sockets leave their groups until it is respawned; "
                    "connections queued on them are reset (net.ipv4.tcp_migrate_req is off)", id);
}

int lb_listen_unpark(struct lb_listen_set *set, const struct lb_config *cfg, unsigned id)
{
    for (size_t i = 0; i < set->ngroups; i++) {
        struct lb_listen_group *g = &set->groups[i];
        if (id >= g->nfds || g->fds[id] >= 0)
            continue;
        /* Joins the group the others keep (same address, same user). */
        g->fds[id] = lb_listen_socket(&cfg->listeners[i]);
        if (g->fds[id] < 0) {
            lb_log_error("worker %u: cannot listen on %s again (%d: %s)", id, g->address, errno,
                         strerror(errno));
            return -1;
        }
    }
    return 0;
}

int lb_listen_resize(struct lb_listen_set *set, const struct lb_config *cfg, unsigned n)
{
    /* Room first, so that a failure leaves every group as it was. */
    for (size_t i = 0; i < set->ngroups; i++) {
        struct lb_listen_group *g = &set->groups[i];
        if (n <= g->nfds)
            continue;
        int *fds = realloc(g->fds, n * sizeof(*fds));
        if (fds == NULL) {
            lb_log_error("out of memory for %u workers' sockets", n);
            return -1;
        }
        g->fds = fds;
        for (unsigned k = g->nfds; k < n; k++)
            fds[k] = -1;
    }
    for (size_t i = 0; i < set->ngroups; i++) {
        struct lb_listen_group *g = &set->groups[i];
        for (unsigned k = g->nfds; k < n; k++) {
            g->fds[k] = lb_listen_socket(&cfg->listeners[i]);
            if (g->fds[k] >= 0)
                continue;
            lb_log_error("cannot listen on %s for worker %u (%d: %s)", g->address, k, errno,
                         strerror(errno));
            for (size_t j = 0; j <= i; j++) {
                struct lb_listen_group *o = &set->groups[j];
                for (unsigned q = o->nfds; q < n; q++)
                    if (o->fds[q] >= 0) {
                        close(o->fds[q]);
                        o->fds[q] = -1;
                    }
            }
            return -1;
        }
    }
    for (size_t i = 0; i < set->ngroups; i++) {
        struct lb_listen_group *g = &set->groups[i];
        if (n >= g->nfds) {
            g->nfds = n;
            continue;
        }
        /* The group must keep a socket (a parked worker's is closed). */
        bool kept = false;
        for (unsigned k = 0; k < n; k++)
            kept |= g->fds[k] >= 0;
        if (!kept && (g->fds[0] = lb_listen_socket(&cfg->listeners[i])) < 0)
            lb_log_error("cannot listen on %s again (%d: %s)", g->address, errno,
                         strerror(errno));
        if (!g->migrating && lb_listen_migrate_state() != 1)
            lb_log_warn("%s: closing %u listening sockets without net.ipv4.tcp_migrate_req: "
                        "connections queued on them are reset", g->address, g->nfds - n);
        lb_listen_group_close(g, n);
        g->nfds = n;
    }
    return 0;
}

void lb_listen_fds_for(const struct lb_listen_set *set, unsigned id, int *fds)
{
    for (size_t i = 0; i < set->ngroups; i++)
        fds[i] = id < set->groups[i].nfds ? set->groups[i].fds[id] : -1;
}
