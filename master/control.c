#include "master/control.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "master/acme.h"
#include "master/admin.h"
#include "master/discovery.h"
#include "master/health.h"
#include "master/tickets.h"
#include "shared/fdbudget.h"
#include "shared/log.h"

static void lb_control_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct event_base *base = arg;
    if (sig == SIGUSR1) {
        if (lb_log_reopen() < 0)
            lb_log_error("reopening the log failed (%d: %s)", errno, strerror(errno));
        return;
    }
    event_base_loopbreak(base);     /* TERM, QUIT, INT: nothing to drain */
}

void lb_control_main(const struct lb_config *cfg, struct lb_shm_header *shm, int admin_fd)
{
    static const int sigs[] = { SIGTERM, SIGQUIT, SIGINT, SIGUSR1 };
    struct event *sev[4] = { NULL };
    struct lb_checker *health = NULL;
    struct lb_admin *admin = NULL;
    struct lb_tickets *tickets = NULL;
    struct lb_acme *acme = NULL;
    struct lb_discovery *disco = NULL;
    int rc = 1;

    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);     /* the master's (upgrade), if sent to the whole group */
    signal(SIGPIPE, SIG_IGN);
    lb_follow_parent(atomic_load(&shm->master_pid));

    struct event_base *base = event_base_new();
    if (base == NULL)
        goto out;
    for (size_t i = 0; i < 4; i++) {
        sev[i] = evsignal_new(base, sigs[i], lb_control_signal, base);
        if (sev[i] == NULL || event_add(sev[i], NULL) < 0)
            goto out;
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    health = lb_health_start(base, cfg, shm);
    if (health == NULL) {
        lb_log_error("health checks could not start");
        goto out;
    }
    tickets = lb_tickets_start(base, cfg, shm);
    acme = lb_acme_start(base, cfg, shm);
    disco = lb_discovery_start(base, cfg, shm);
    if (disco == NULL) {
        lb_log_error("service discovery could not start");
        goto out;
    }
    /* Health probes hold one fd each at most; admin connections get what
     * is left, never more (shared/fdbudget.h). */
    struct lb_fdbudget_control fb;
    lb_fdbudget_control(cfg, lb_fdbudget_limit(),
                        lb_fdbudget_count_open(3 + lb_fdbudget_control_own(cfg)), &fb);
    if (admin_fd >= 0)
        admin = lb_admin_start(base, admin_fd, cfg, shm, fb.admin_max, cfg->admin_timeout_ms);
    if (admin_fd >= 0 && admin == NULL) {
        lb_log_error("admin listener %s could not start", cfg->admin_address);
        goto out;
    }
    event_base_dispatch(base);
    rc = 0;
out:
    lb_admin_stop(admin);
    lb_acme_stop(acme);
    lb_tickets_stop(tickets);
    lb_discovery_stop(disco);
    lb_health_stop(health);
    for (size_t i = 0; i < 4; i++)
        if (sev[i] != NULL)
            event_free(sev[i]);
    if (base != NULL)
        event_base_free(base);
    exit(rc);
}
