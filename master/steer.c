#include "master/steer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf/steer.h"
#include "shared/log.h"
#include "steer.skel.h"         /* bpftool gen skeleton, in $(BUILD)/bpf */

#ifndef SO_ATTACH_REUSEPORT_EBPF
#define SO_ATTACH_REUSEPORT_EBPF 52
#endif
#ifndef SO_DETACH_REUSEPORT_BPF
#define SO_DETACH_REUSEPORT_BPF 68
#endif
#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

_Static_assert(LB_STEER_WORKERS == LB_MAX_WORKERS, "one socket array entry per worker number");

struct lb_steer_prog {
    struct lb_steer_bpf *skel;
    int prog_fd;                        /* the attached program */
};

/* libbpf's own messages: its verifier dumps are for a developer, not the
 * error log (our warning says what failed). */
static int lb_steer_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    (void)level;
    (void)fmt;
    (void)ap;
    return 0;
}

static bool lb_steer_required(void)
{
    const char *v = getenv("LBD_REQUIRE_BPF");
    return v != NULL && strcmp(v, "1") == 0;
}

/* Load one copy (each listener needs its own maps). MIGRATE: with the
 * program the kernel also runs for a closing listener's queue (Linux
 * 5.14); without it, the select-only one. */
static struct lb_steer_bpf *lb_steer_load(bool migrate, int *err)
{
    struct lb_steer_bpf *skel = lb_steer_bpf__open();
    if (skel == NULL) {
        *err = errno;
        return NULL;
    }
    bpf_program__set_autoload(migrate ? skel->progs.lb_steer_select
                                      : skel->progs.lb_steer_migrate, false);
    if (lb_steer_bpf__load(skel) < 0) {
        *err = errno;
        lb_steer_bpf__destroy(skel);
        return NULL;
    }
    return skel;
}

static void lb_steer_prog_free(struct lb_steer_prog *p)
{
    if (p == NULL)
        return;
    lb_steer_bpf__destroy(p->skel);
    free(p);
}

/* An open socket of group G, or -1. */
static int lb_steer_any_fd(const struct lb_listen_group *g)
{
    for (unsigned k = 0; k < g->nfds; k++)
        if (g->fds[k] >= 0)
            return g->fds[k];
    return -1;
}

static struct lb_steer_prog *lb_steer_attach(struct lb_steer_set *s, struct lb_listen_group *g,
                                             int *err)
{
    struct lb_steer_prog *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        *err = ENOMEM;
        return NULL;
    }
    /* The first load tells whether the kernel has migration. */
    if (s->available == 0 || s->migrate)
        p->skel = lb_steer_load(true, err);
    if (p->skel != NULL) {
        s->migrate = true;
    } else {
        p->skel = lb_steer_load(false, err);
        s->migrate = false;
    }
    if (p->skel == NULL) {
        free(p);
        return NULL;
    }
    p->prog_fd = bpf_program__fd(s->migrate ? p->skel->progs.lb_steer_migrate
                                            : p->skel->progs.lb_steer_select);
    int fd = lb_steer_any_fd(g);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &p->prog_fd,
                             sizeof(p->prog_fd)) < 0) {
        *err = fd < 0 ? EBADF : errno;
        lb_steer_prog_free(p);
        return NULL;
    }
    g->migrating = s->migrate;
    return p;
}

static struct lb_steer_group *lb_steer_find(struct lb_steer_set *s, const struct lb_addr *a)
{
    for (size_t i = 0; i < s->ngroups; i++)
        if (s->groups[i].prog != NULL && lb_addr_equal(&s->groups[i].addr, a))
            return &s->groups[i];
    return NULL;
}

int lb_steer_apply(struct lb_steer_set *s, const struct lb_config *cfg,
                   struct lb_listen_set *ls, uint64_t live, char *err, size_t errlen)
{
    static bool warned;
    libbpf_set_print(lb_steer_libbpf_print);
    struct lb_steer_group *groups = calloc(ls->ngroups ? ls->ngroups : 1, sizeof(*groups));
    if (groups == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < ls->ngroups; i++) {
        struct lb_listen_group *g = &ls->groups[i];
        groups[i].addr = g->addr;
        struct lb_steer_group *prev = lb_steer_find(s, &g->addr);
        bool want = cfg->listeners[i].steering == LB_STEERING_CLIENT_IP && s->available >= 0;
        if (prev != NULL && want) {
            groups[i].prog = prev->prog;    /* still attached to the group */
            prev->prog = NULL;
            g->migrating = s->migrate;
            continue;
        }
        if (prev != NULL) {
            int fd = lb_steer_any_fd(g), zero = 0;    /* the kernel wants an int */
            if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &zero,
                                      sizeof(zero)) < 0)
                lb_log_warn("%s: detaching the steering program failed (%d: %s)", g->address,
                            errno, strerror(errno));
            g->migrating = false;
            continue;       /* prev's program is freed below */
        }
        if (!want) {
            g->migrating = false;
            continue;
        }
        int e = 0;
        groups[i].prog = lb_steer_attach(s, g, &e);
        if (groups[i].prog != NULL) {
            s->available = 1;
            continue;
        }
        g->migrating = false;
        if (lb_steer_required()) {
            snprintf(err, errlen, "%s: cannot load the eBPF steering program (%s) and "
                     "LBD_REQUIRE_BPF=1", g->address, strerror(e));
            rc = -1;
            break;
        }
        if (s->available == 0)
            s->available = -1;      /* the rest go to the kernel's hash too */
        if (!warned) {
            warned = true;
            lb_log_warn("%s: cannot load the eBPF steering program (%s%s): steering = "
                        "\"kernel\" instead (a client's connections spread over the workers)",
                        g->address, strerror(e),
                        e == EPERM ? ": needs root or CAP_BPF and CAP_NET_ADMIN" : "");
        }
    }
    lb_steer_free(s);
    s->groups = groups;
    s->ngroups = ls->ngroups;
    if (rc == 0)
        lb_steer_sync(s, ls, live);
    return rc;
}

static uint64_t lb_steer_cookie(int fd)
{
    uint64_t c = 0;
    socklen_t len = sizeof(c);
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &len) < 0)
        return 0;
    return c;
}

void lb_steer_fill(uint8_t *ring, uint64_t live)
{
    for (uint32_t slot = 0; slot < LB_STEER_SLOTS; slot++) {
        uint32_t best = 0, best_score = 0;
        bool any = false;
        for (uint32_t k = 0; k < LB_STEER_WORKERS; k++) {
            if (!(live & (1ULL << k)))
                continue;
            uint32_t sc = lb_steer_score(slot, k);
            if (!any || sc > best_score) {
                best = k;
                best_score = sc;
                any = true;
            }
        }
        ring[slot] = (uint8_t)best;
    }
}

unsigned lb_steer_choose(const uint8_t *ring, const uint32_t *w, int nwords)
{
    return ring[lb_steer_hash_addr(w, nwords) & (LB_STEER_SLOTS - 1)];
}

/* One group: sockets in first, then the slots, then the dead out, so the
 * program never sends a slot to a socket that has left (and if it does in
 * between, it tries the next slots). */
static void lb_steer_sync_group(struct lb_steer_prog *p, const struct lb_listen_group *g,
                                uint64_t live, const char *address)
{
    int socks = bpf_map__fd(p->skel->maps.socks), ring_fd = bpf_map__fd(p->skel->maps.ring);
    uint64_t in = 0;
    for (uint32_t k = 0; k < LB_STEER_WORKERS; k++) {
        if (!(live & (1ULL << k)) || k >= g->nfds || g->fds[k] < 0)
            continue;
        uint64_t have = 0, want = lb_steer_cookie(g->fds[k]);
        /* A socket sits in one entry at most (the kernel says EBUSY to
         * putting it in again): compare cookies. */
        if (bpf_map_lookup_elem(socks, &k, &have) == 0 && have == want && want != 0) {
            in |= 1ULL << k;
            continue;
        }
        uint64_t fd = (uint64_t)g->fds[k];
        if (bpf_map_update_elem(socks, &k, &fd, BPF_ANY) == 0)
            in |= 1ULL << k;
        else
            lb_log_warn("%s: worker %u's socket cannot join the steering map (%d: %s)",
                        address, k, errno, strerror(errno));
    }
    struct lb_steer_ring r = { .live = (uint32_t)__builtin_popcountll(in) };
    lb_steer_fill(r.slot, in);
    uint32_t zero = 0;
    if (bpf_map_update_elem(ring_fd, &zero, &r, BPF_ANY) < 0)
        lb_log_warn("%s: steering slots not updated (%d: %s)", address, errno, strerror(errno));
    for (uint32_t k = 0; k < LB_STEER_WORKERS; k++)
        if (!(in & (1ULL << k)) && bpf_map_delete_elem(socks, &k) < 0 && errno != ENOENT)
            lb_log_warn("%s: worker %u's socket cannot leave the steering map (%d: %s)",
                        address, k, errno, strerror(errno));
}

void lb_steer_sync(struct lb_steer_set *s, const struct lb_listen_set *ls, uint64_t live)
{
    for (size_t i = 0; i < s->ngroups && i < ls->ngroups; i++)
        if (s->groups[i].prog != NULL)
            lb_steer_sync_group(s->groups[i].prog, &ls->groups[i], live, ls->groups[i].address);
}

bool lb_steer_migrates(const struct lb_steer_set *s, const struct lb_config *cfg)
{
    /* Before the first load: expect success (a failure turns the sysctl on
     * then, lb_master_steer). */
    if (s->available < 0 || (s->available > 0 && !s->migrate))
        return false;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (cfg->listeners[i].steering != LB_STEERING_CLIENT_IP)
            return false;
    return true;
}

size_t lb_steer_count(const struct lb_steer_set *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->ngroups; i++)
        n += s->groups[i].prog != NULL;
    return n;
}

void lb_steer_free(struct lb_steer_set *s)
{
    for (size_t i = 0; i < s->ngroups; i++)
        lb_steer_prog_free(s->groups[i].prog);
    free(s->groups);
    s->groups = NULL;
    s->ngroups = 0;
}
