#include "shared/fdbudget.h"

#include <dirent.h>
#include <sys/resource.h>

static unsigned lb_fdbudget_clamp(rlim_t v)
{
    return v == RLIM_INFINITY || v > (rlim_t)UINT32_MAX / 2 ? UINT32_MAX / 2 : (unsigned)v;
}

int lb_fdbudget_raise(unsigned *before, unsigned *after)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    *before = *after = lb_fdbudget_clamp(rl.rlim_cur);
    if (rl.rlim_cur == rl.rlim_max)
        return 0;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    *after = lb_fdbudget_clamp(rl.rlim_cur);
    return 0;
}

unsigned lb_fdbudget_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 1024;
    return lb_fdbudget_clamp(rl.rlim_cur);
}

unsigned lb_fdbudget_count_open(unsigned fallback)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return fallback;
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n > 0 ? n - 1 : 0;      /* the directory's own fd */
}

unsigned lb_fdbudget_worker_own(const struct lb_config *cfg)
{
    /* listen sockets, epoll, libevent's signal pipe (two ends), the
     * error_log the master opened, the access_log the worker opens */
    return (unsigned)cfg->nlisteners + 3 + (cfg->error_log != NULL) + (cfg->access_log != NULL);
}

unsigned lb_fdbudget_control_own(const struct lb_config *cfg)
{
    /* epoll, the signal pipe, the admin listen socket, the error_log */
    return 3 + cfg->admin + (cfg->error_log != NULL);
}

static unsigned lb_fdbudget_avail(unsigned limit, unsigned held)
{
    return limit > held + LB_FD_SLACK ? limit - held - LB_FD_SLACK : 0;
}

void lb_fdbudget_worker(const struct lb_config *cfg, unsigned limit, unsigned held,
                        struct lb_fdbudget *out)
{
    *out = (struct lb_fdbudget){ .limit = limit, .held = held };
    out->avail = lb_fdbudget_avail(limit, held);
    out->idle_max = out->avail / 4;
    out->max_connections = out->avail / 2;
    if (cfg->max_connections != 0 && cfg->max_connections <= out->max_connections)
        out->max_connections = cfg->max_connections;
    else if (cfg->max_connections != 0)
        out->lowered = true;
    if (out->max_connections == 0) {
        out->max_connections = 1;
        out->starved = true;
    }
}

void lb_fdbudget_control(const struct lb_config *cfg, unsigned limit, unsigned held,
                         struct lb_fdbudget_control *out)
{
    *out = (struct lb_fdbudget_control){ .limit = limit, .held = held };
    unsigned avail = lb_fdbudget_avail(limit, held);
    for (size_t i = 0; i < cfg->npools; i++)
        if (cfg->pools[i].health.enabled)
            out->health += (unsigned)cfg->pools[i].nservers;
    unsigned room = avail > out->health ? avail - out->health : 0;
    out->admin_max = cfg->admin_max_connections;
    if (out->admin_max > room) {
        out->admin_max = room;
        out->lowered = true;
    }
    if (out->admin_max == 0)
        out->admin_max = 1;     /* an admin listener that never accepts helps nobody */
}
