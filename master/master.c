#include "master/master.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "master/control.h"
#include "master/listen.h"
#include "master/proctitle.h"
#include "master/upgrade.h"
#include "master/steer.h"
#include "shared/config.h"
#include "shared/fdbudget.h"
#include "shared/instance.h"
#include "shared/log.h"
#include "shared/shm.h"
#include "worker/sticky.h"
#include "shared/version.h"
#include "worker/tls.h"
#include "worker/worker.h"

/* After an upgrade, the previous binary's workers serve on this long beside
 * the new ones: if a new one dies meanwhile, the upgrade is undone. */
#define LB_UPGRADE_SETTLE_MS 2000
/* A worker that dies within this long of its start counts as crashing, and
 * its respawns back off: 100 ms, 200 ms, ... up to LB_RESPAWN_MAX_MS. */
#define LB_RESPAWN_FAST_MS  2000
#define LB_RESPAWN_BASE_MS  100
#define LB_RESPAWN_MAX_MS   10000
#define LB_FAST_STOP_MS     5000

struct lb_child {
    pid_t pid;                  /* 0: slot unused */
    unsigned id;
    uint64_t generation;
    uint64_t started_ms;
    uint64_t kill_at_ms;        /* draining: SIGKILL after this, 0 if not draining */
};

struct lb_master {
    const struct lb_master_options *opt;
    struct lb_config *cfg;
    struct lb_shm shm;
    int shm_reader_fd;              /* read-only, for the rendezvous socket's clients */
    struct lb_listen_set listen;
    struct lb_steer_set steer;
    unsigned scaled;                /* 0, or the count TTIN/TTOU/-S set (kept across reloads) */
    uint64_t generation;
    struct lb_child children[LB_SHM_MAX_SLOTS];     /* indexed by shm slot */
    unsigned crashes[LB_MAX_WORKERS];               /* consecutive fast deaths */
    uint64_t respawn_at[LB_MAX_WORKERS];            /* 0: none pending */
    bool backoff[LB_MAX_WORKERS];   /* no worker for a while: its sockets are parked */
    int instance_fd;
    struct lb_instance_clients instance_clients;    /* their request not read yet */
    int admin_fd;                   /* admin listener, -1 if none */
    struct lb_addr admin_addr;
    pid_t control_pid;              /* 0: none running */
    pid_t control_retired;          /* a replaced control still exiting */
    uint64_t control_started_ms;
    unsigned control_crashes;
    uint64_t control_respawn_at;    /* 0: none pending */
    const char *pid_file;
    unsigned fd_inherited;          /* fds open when lbd started (stdio and strays) */
    unsigned fd_before;             /* the soft fd limit lbd was started with */
    bool stopping;
    uint64_t stop_deadline_ms;
    char exe_path[4096];            /* the file a USR2 executes */
    struct lb_inherit in_fds;       /* from the previous binary (upgrade) */
    struct lb_inherit in_state;
    bool committed;                 /* upgrade: past the point of rollback */
    /* After an upgrade, until settle_until (0: not settling), the previous
     * binary's workers serve on beside the new ones; a new worker that
     * dies meanwhile sends us back to the previous binary (exe_fd). */
    uint64_t settle_until;
    uint64_t settle_gen;            /* the upgrade's first generation */
    bool settle_failed;
    int exe_fd;
};

static volatile sig_atomic_t lb_sig_child, lb_sig_term, lb_sig_int, lb_sig_hup, lb_sig_usr1,
    lb_sig_usr2, lb_sig_ttin, lb_sig_ttou;

static void lb_master_on_signal(int sig)
{
    switch (sig) {
    case SIGCHLD: lb_sig_child = 1; break;
    case SIGTERM:
    case SIGQUIT: lb_sig_term = 1; break;
    case SIGINT:  lb_sig_int = 1; break;
    case SIGHUP:  lb_sig_hup = 1; break;
    case SIGUSR1: lb_sig_usr1 = 1; break;
    case SIGUSR2: lb_sig_usr2 = 1; break;
    case SIGTTIN: lb_sig_ttin++; break;
    case SIGTTOU: lb_sig_ttou++; break;
    default: break;
    }
}

static const int lb_master_signals[] = { SIGCHLD, SIGTERM, SIGQUIT, SIGINT, SIGHUP, SIGUSR1,
                                          SIGUSR2, SIGTTIN, SIGTTOU };

static int lb_master_setup_signals(sigset_t *wait_mask)
{
    sigset_t block;
    sigemptyset(&block);
    struct sigaction sa = { .sa_handler = lb_master_on_signal };
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < LB_ARRAY_SIZE(lb_master_signals); i++) {
        sigaddset(&block, lb_master_signals[i]);
        if (sigaction(lb_master_signals[i], &sa, NULL) < 0)
            return -1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Blocked except inside ppoll(): no flag is ever missed between a check
     * and the wait. */
    if (sigprocmask(SIG_BLOCK, &block, wait_mask) < 0)
        return -1;
    for (size_t i = 0; i < LB_ARRAY_SIZE(lb_master_signals); i++)
        sigdelset(wait_mask, lb_master_signals[i]);
    return 0;
}

/* ---- workers ------------------------------------------------------------ */

/* MS from now; a timeout of ~584 million years does not wrap round to an
 * immediate kill. */
static uint64_t lb_master_deadline(uint64_t ms)
{
    uint64_t now = lb_now_ms();
    return ms > UINT64_MAX - now ? UINT64_MAX : now + ms;
}

/* Drain the workers of older generations that have a successor: worker
 * ID (all of them if ID is LB_MAX_WORKERS), or, with ONLY_GONE, those whose
 * number the current configuration no longer has. A worker whose successor
 * failed to start keeps serving its socket until one does. */
static void lb_master_drain_old(struct lb_master *m, unsigned id, bool only_gone)
{
    uint64_t deadline = lb_master_deadline(m->cfg->shutdown_timeout_ms);
    for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++) {
        struct lb_child *c = &m->children[s];
        if (c->pid == 0 || c->generation >= m->generation || c->kill_at_ms != 0)
            continue;
        if (m->settle_until != 0 && c->generation < m->settle_gen)
            continue;   /* an upgrade settling: the previous binary's are the fallback */
        if (only_gone ? c->id < m->cfg->workers : (id != LB_MAX_WORKERS && c->id != id))
            continue;
        c->kill_at_ms = deadline ? deadline : 1;
        kill(c->pid, SIGTERM);
    }
}

static void lb_master_park_waiting(struct lb_master *m);

/* The worker numbers that accept now: a running worker of any generation
 * that is not draining (during a reload the old worker of a number serves
 * its socket until its successor runs). */
static uint64_t lb_master_live_mask(const struct lb_master *m)
{
    uint64_t live = 0;
    for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++) {
        const struct lb_child *c = &m->children[s];
        if (c->pid != 0 && c->kill_at_ms == 0 && c->id < m->cfg->workers)
            live |= 1ULL << c->id;
    }
    return live;
}

static void lb_master_steer_shm(struct lb_master *m)
{
    struct lb_shm_header *h = m->shm.hdr;
    size_t steered = lb_steer_count(&m->steer);
    bool asked = false;
    for (size_t i = 0; i < m->cfg->nlisteners; i++)
        asked |= m->cfg->listeners[i].steering == LB_STEERING_CLIENT_IP;
    atomic_store(&h->steer_client_ip, (uint32_t)steered);
    atomic_store(&h->steer_kernel, (uint32_t)(m->cfg->nlisteners - steered));
    atomic_store(&h->steer_migrate, steered > 0 && m->steer.migrate);
    atomic_store(&h->steer_unavailable, asked && m->steer.available < 0);
    atomic_store(&h->workers_scaled, m->scaled);
    atomic_store(&h->workers, m->cfg->workers);
}

/* Workers came or went: the steering programs' sockets and slots follow. */
static void lb_master_steer_sync(struct lb_master *m)
{
    if (m->steer.ngroups > 0 && !m->stopping)
        lb_steer_sync(&m->steer, &m->listen, lb_master_live_mask(m));
}

static int lb_master_spawn(struct lb_master *m, unsigned id)
{
    struct lb_shm_header *h = m->shm.hdr;
    if (lb_listen_unpark(&m->listen, m->cfg, id) < 0)
        return -1;
    int slot = lb_shm_slot_take(h, id, m->generation);
    if (slot < 0) {
        lb_log_error("no free worker slot in shared memory for worker %u", id);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        lb_log_error("fork() failed (%d: %s)", errno, strerror(errno));
        lb_shm_slot_release(h, (unsigned)slot);
        return -1;
    }
    if (pid == 0) {
        /* Own process group: a terminal's Ctrl-C reaches the master only,
         * which then stops the workers in order. */
        setpgid(0, 0);
        char role[32];
        snprintf(role, sizeof(role), "worker %u", id);
        lb_log_set_role(role);
        lb_proctitle_set("lbd: worker %u", id);
        if (m->instance_fd >= 0)
            close(m->instance_fd);
        lb_instance_clients_close(&m->instance_clients);
        if (m->exe_fd >= 0)
            close(m->exe_fd);       /* the previous binary, while settling */
        /* Keep this worker's sockets only: a socket's life must not depend
         * on workers that never use it. */
        int fds[m->cfg->nlisteners];
        lb_listen_fds_for(&m->listen, id, fds);
        for (size_t g = 0; g < m->listen.ngroups; g++)
            for (unsigned k = 0; k < m->listen.groups[g].nfds; k++)
                if (k != id && m->listen.groups[g].fds[k] >= 0)
                    close(m->listen.groups[g].fds[k]);
        close(m->shm.fd);
        if (m->shm_reader_fd >= 0)
            close(m->shm_reader_fd);
        if (m->admin_fd >= 0)
            close(m->admin_fd);
        lb_steer_free(&m->steer);
        if (lb_test_workers_exit)
            _exit(70);      /* build/lbd-crash, a test build */
        lb_worker_main(m->cfg, h, id, (unsigned)slot, fds);
    }
    struct lb_child *c = &m->children[slot];
    *c = (struct lb_child){ .pid = pid, .id = id, .generation = m->generation,
                            .started_ms = lb_now_ms() };
    /* The successor is up: the previous generation's worker ID may go. */
    lb_master_drain_old(m, id, false);
    atomic_store(&lb_shm_worker(h, (unsigned)slot)->pid, (int32_t)pid);
    lb_log_info("worker %u started (pid %d, generation %llu)", id, (int)pid,
                (unsigned long long)m->generation);
    m->backoff[id] = false;
    lb_master_park_waiting(m);      /* one kept as the port's last may go now */
    lb_master_steer_sync(m);
    return 0;
}

/* Whether a worker of the current generation, other than ID, runs. */
static bool lb_master_other_serves(const struct lb_master *m, unsigned id)
{
    for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++) {
        const struct lb_child *c = &m->children[s];
        if (c->pid != 0 && c->generation == m->generation && c->kill_at_ms == 0 && c->id != id)
            return true;
    }
    return false;
}

/* The sockets of a worker waiting out a respawn backoff leave their
 * SO_REUSEPORT groups: otherwise the kernel's hash keeps sending it a
 * share of the new connections, to wait for seconds in a queue nobody
 * accepts from. With no other worker running they stay (nobody else to
 * send them to); lb_master_spawn calls this again once one runs, and opens
 * a worker's own sockets again before it starts. */
static void lb_master_park_waiting(struct lb_master *m)
{
    for (unsigned id = 0; id < m->cfg->workers && id < LB_MAX_WORKERS; id++)
        if (m->backoff[id] && lb_master_other_serves(m, id))
            lb_listen_park(&m->listen, id);
}

/* Listening socket for the admin address (no SO_REUSEPORT: exactly one). */
static int lb_master_admin_socket(const struct lb_addr *a, char *err, size_t errlen,
                                  const char *address)
{
    const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, sa, a->len) < 0 || listen(fd, 64) < 0) {
        snprintf(err, errlen, "cannot listen on admin address %s: %s", address, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int lb_master_spawn_control(struct lb_master *m)
{
    pid_t pid = fork();
    if (pid < 0) {
        lb_log_error("fork() failed (%d: %s)", errno, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        lb_log_set_role("control");
        lb_proctitle_set("lbd: control");
        if (m->instance_fd >= 0)
            close(m->instance_fd);
        lb_instance_clients_close(&m->instance_clients);
        if (m->exe_fd >= 0)
            close(m->exe_fd);       /* the previous binary, while settling */
        lb_listen_close(&m->listen);
        lb_steer_free(&m->steer);
        close(m->shm.fd);
        if (m->shm_reader_fd >= 0)
            close(m->shm_reader_fd);
        lb_control_main(m->cfg, m->shm.hdr, m->admin_fd);
    }
    m->control_pid = pid;
    m->control_started_ms = lb_now_ms();
    lb_log_info("control process started (pid %d)", (int)pid);
    return 0;
}

static size_t lb_master_live(const struct lb_master *m)
{
    size_t n = (m->control_pid != 0) + (m->control_retired != 0);
    for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++)
        n += m->children[s].pid != 0;
    return n;
}

static void lb_master_signal_all(struct lb_master *m, int sig)
{
    for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++)
        if (m->children[s].pid != 0)
            kill(m->children[s].pid, sig);
    if (m->control_pid != 0)
        kill(m->control_pid, sig);
    if (m->control_retired != 0)
        kill(m->control_retired, sig);
}

static void lb_master_reclaim(struct lb_master *m)
{
    /* A replaced control process may still be checking old backends and
     * writing their entries: nothing is reused before it is gone (its exit
     * brings us back here). */
    if (m->control_retired != 0)
        return;
    uint64_t oldest = m->generation;
    for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++)
        if (m->children[s].pid != 0 && m->children[s].generation < oldest)
            oldest = m->children[s].generation;
    lb_shm_reclaim(m->shm.hdr, oldest);
}

static void lb_master_describe_exit(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
}

static uint64_t lb_master_backoff(unsigned crashes)
{
    if (crashes == 0)
        return 0;
    unsigned shift = crashes - 1 < 7 ? crashes - 1 : 7;
    uint64_t delay = (uint64_t)LB_RESPAWN_BASE_MS << shift;
    return delay > LB_RESPAWN_MAX_MS ? LB_RESPAWN_MAX_MS : delay;
}

static void lb_master_reap_control(struct lb_master *m, int status)
{
    char how[96];
    lb_master_describe_exit(status, how, sizeof(how));
    m->control_pid = 0;
    if (m->stopping) {
        lb_log_info("control process %s", how);
        return;
    }
    uint64_t now = lb_now_ms();
    m->control_crashes = now - m->control_started_ms < LB_RESPAWN_FAST_MS
                         ? m->control_crashes + 1 : 0;
    uint64_t delay = lb_master_backoff(m->control_crashes);
    lb_log_error("control process %s; respawning in %llu ms", how, (unsigned long long)delay);
    m->control_respawn_at = now + delay + (delay == 0);
}

static void lb_master_reap(struct lb_master *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == m->control_retired) {
            m->control_retired = 0;
            continue;
        }
        if (pid == m->control_pid) {
            lb_master_reap_control(m, status);
            continue;
        }
        size_t s = 0;
        while (s < LB_SHM_MAX_SLOTS && m->children[s].pid != pid)
            s++;
        if (s == LB_SHM_MAX_SLOTS)
            continue;
        struct lb_child c = m->children[s];
        m->children[s].pid = 0;
        lb_shm_slot_release(m->shm.hdr, (unsigned)s);

        char how[96];
        lb_master_describe_exit(status, how, sizeof(how));
        bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        bool expected = m->stopping || c.kill_at_ms != 0;
        if (expected) {
            if (clean)
                lb_log_info("worker %u (pid %d) %s", c.id, (int)pid, how);
            else
                lb_log_warn("worker %u (pid %d) %s while stopping", c.id, (int)pid, how);
            continue;
        }
        /* An unexpected death of a current worker: count it and respawn. */
        atomic_fetch_add(&m->shm.hdr->worker_restarts[c.id], 1);
        if (m->settle_until != 0 && c.generation >= m->settle_gen)
            m->settle_failed = true;
        uint64_t now = lb_now_ms();
        if (now - c.started_ms < LB_RESPAWN_FAST_MS)
            m->crashes[c.id]++;
        else
            m->crashes[c.id] = 0;
        uint64_t delay = lb_master_backoff(m->crashes[c.id]);
        lb_log_error("worker %u (pid %d) %s; respawning in %llu ms", c.id, (int)pid, how,
                     (unsigned long long)delay);
        if (c.generation == m->generation && c.id < m->cfg->workers) {
            m->respawn_at[c.id] = now + delay + (delay == 0);
            m->backoff[c.id] = delay > 0;
        }
    }
    lb_master_park_waiting(m);
    lb_master_steer_sync(m);        /* a dead worker's clients go to the others now */
    lb_master_reclaim(m);
}

static void lb_master_respawn_due(struct lb_master *m)
{
    uint64_t now = lb_now_ms();
    if (m->control_respawn_at != 0 && m->control_respawn_at <= now && !m->stopping) {
        m->control_respawn_at = 0;
        if (lb_master_spawn_control(m) < 0)
            m->control_respawn_at = now + LB_RESPAWN_MAX_MS;
    }
    for (unsigned id = 0; id < LB_MAX_WORKERS; id++) {
        if (m->respawn_at[id] == 0 || m->respawn_at[id] > now)
            continue;
        m->respawn_at[id] = 0;
        if (!m->stopping && lb_master_spawn(m, id) < 0) {
            m->respawn_at[id] = now + LB_RESPAWN_MAX_MS;
            m->backoff[id] = true;
            lb_master_park_waiting(m);
        }
    }
}

/* Draining workers past their deadline are killed. */
static void lb_master_enforce_deadlines(struct lb_master *m)
{
    uint64_t now = lb_now_ms();
    for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++) {
        struct lb_child *c = &m->children[s];
        if (c->pid != 0 && c->kill_at_ms != 0 && c->kill_at_ms <= now) {
            lb_log_warn("worker %u (pid %d) still busy after shutdown_timeout: killing it",
                        c->id, (int)c->pid);
            kill(c->pid, SIGKILL);
            c->kill_at_ms = UINT64_MAX;     /* once */
        }
    }
}

/* ---- reload ------------------------------------------------------------- */

static void lb_master_apply_overrides(const struct lb_master *m, struct lb_config *cfg)
{
    if (m->opt->workers != 0)
        cfg->workers = m->opt->workers;
    if (m->scaled != 0)
        cfg->workers = m->scaled;   /* a live scaling holds until the next start */
}

/* The log files CFG names can be opened for appending (created if need
 * be). Checked before anything is touched: a bad path is a refused start
 * or reload, not a worker-side error or a reload half applied. */
static int lb_master_check_logs(const struct lb_config *cfg, char *err, size_t errlen)
{
    const char *const paths[] = { cfg->access_log, cfg->error_log };
    const char *const keys[] = { "access_log", "error_log" };
    for (size_t i = 0; i < LB_ARRAY_SIZE(paths); i++) {
        if (paths[i] == NULL)
            continue;
        int fd = open(paths[i], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            snprintf(err, errlen, "cannot open %s %s (%d: %s)", keys[i], paths[i], errno,
                     strerror(errno));
            return -1;
        }
        close(fd);
    }
    return 0;
}

static int lb_master_open_log(const struct lb_config *cfg)
{
    lb_log_set_level(cfg->log_level);
    if (lb_log_open(cfg->error_log) < 0) {
        lb_log_error("cannot open error_log %s (%d: %s)", cfg->error_log, errno, strerror(errno));
        return -1;
    }
    return 0;
}


/* Raise the fd limit (soft to hard) and say what it allows per process
 * of CFG. Workers and the control process compute the same from the fds
 * they really hold (shared/fdbudget.h). */
static void lb_master_fd_budget(struct lb_master *m, const struct lb_config *cfg)
{
    unsigned before = m->fd_before, now = 0, limit = 0;
    if (lb_fdbudget_raise(&now, &limit) < 0)
        lb_log_warn("raising the fd limit from %u failed (%d: %s)", now, errno,
                    strerror(errno));
    limit = lb_fdbudget_limit();
    m->fd_before = limit;       /* a reload says "raised" only if it raised it */
    atomic_store(&m->shm.hdr->fd_limit, limit);
    struct lb_fdbudget wb;
    lb_fdbudget_worker(cfg, limit, m->fd_inherited + lb_fdbudget_worker_own(cfg), &wb);
    if (wb.lowered)
        lb_log_warn("max_connections %u does not fit in the fd limit %u: %u per worker",
                    cfg->max_connections, limit, wb.max_connections);
    if (wb.starved)
        lb_log_warn("the fd limit %u leaves no room for connections: raise it "
                    "(ulimit -n, LimitNOFILE=)", limit);
    char raised[48] = "";
    if (before != limit)
        snprintf(raised, sizeof(raised), " (raised from %u)", before);
    char admin[128] = "";
    if (cfg->admin) {
        struct lb_fdbudget_control cb;
        lb_fdbudget_control(cfg, limit, m->fd_inherited + lb_fdbudget_control_own(cfg), &cb);
        if (cb.lowered)
            lb_log_warn("admin.max_connections %u does not fit in the fd limit %u with %u "
                        "health checks: %u", cfg->admin_max_connections, limit, cb.health,
                        cb.admin_max);
        snprintf(admin, sizeof(admin), "; control: %u admin connections, %u fds for health checks",
                 cb.admin_max, cb.health);
    }
    lb_log_info("fd limit %u%s; per worker: %u client connections (max_connections), "
                "a backend connection for each, idle backend connections in what they "
                "leave (at most %u), %u fds held or spare%s", limit, raised,
                wb.max_connections, wb.idle_max, wb.held + LB_FD_SLACK, admin);
}

int lb_master_config_load(const char *path, struct lb_config **out, char *err, size_t errlen)
{
    struct lb_config *cfg = NULL;
    if (lb_config_load(path, &cfg, err, errlen) < 0)
        return -1;
    if (lb_tls_config_load(cfg, err, errlen) < 0 || lb_sticky_config_load(cfg, err, errlen) < 0) {
        lb_config_free(cfg);
        return -1;
    }
    *out = cfg;
    return 0;
}

static void lb_master_reload(struct lb_master *m)
{
    char err[512];
    struct lb_config *cfg = NULL;
    lb_log_info("reloading %s", m->cfg->path);
    if (lb_master_config_load(m->opt->config_path, &cfg, err, sizeof(err)) < 0)
        goto fail;
    lb_master_apply_overrides(m, cfg);
    uint64_t gen = m->generation + 1;
    struct lb_listen_set listen;
    /* Every check that can fail comes before anything running is touched. */
    if (!lb_shm_assign_fits(m->shm.hdr, cfg)) {
        snprintf(err, sizeof(err), "too many pools or servers for the shared memory tables");
        goto fail;
    }
    int admin_fd = m->admin_fd;
    bool admin_changed = cfg->admin != (m->admin_fd >= 0) ||
                         (cfg->admin && !lb_addr_equal(&cfg->admin_addr, &m->admin_addr));
    if (admin_changed && cfg->admin) {
        admin_fd = lb_master_admin_socket(&cfg->admin_addr, err, sizeof(err), cfg->admin_address);
        if (admin_fd < 0)
            goto fail;
    }
    /* Before the sockets of a shrink close. It touches the host, not the
     * running lbd: harmless if a check below then fails. */
    lb_listen_migrate(cfg, !lb_steer_migrates(&m->steer, cfg));
    if (lb_master_check_logs(cfg, err, sizeof(err)) < 0 ||
        lb_listen_open(&listen, cfg, &m->listen, err, sizeof(err)) < 0) {
        if (admin_changed && admin_fd >= 0)
            close(admin_fd);
        goto fail;
    }
    if (lb_shm_assign(m->shm.hdr, cfg, gen, err, sizeof(err)) < 0) {
        lb_log_error("BUG: shared memory assignment failed after its check: %s", err);
        abort();
    }
    lb_listen_close(&m->listen);    /* only what the new set did not take over */
    m->listen = listen;
    struct lb_config *old = m->cfg;
    m->cfg = cfg;
    m->generation = gen;
    atomic_store(&m->shm.hdr->generation, gen);
    atomic_store(&m->shm.hdr->workers, cfg->workers);
    lb_master_open_log(cfg);
    lb_master_fd_budget(m, cfg);
    /* The running workers keep their sockets in the programs (taken over
     * with their groups); a listener that is new gets its program here. A
     * failure falls back to the kernel's hash even with LBD_REQUIRE_BPF:
     * the start proved BPF loads, and the reload is past its point of no
     * return. */
    if (lb_steer_apply(&m->steer, cfg, &m->listen, lb_master_live_mask(m), err,
                       sizeof(err)) < 0)
        lb_log_error("%s", err);
    lb_master_steer_shm(m);
    /* A first load that failed just now leaves the queues to the sysctl. */
    lb_listen_migrate(cfg, !lb_steer_migrates(&m->steer, cfg));

    /* Before any fork: a new worker closes m->admin_fd, which must be the
     * new admin socket, not keep it open (and listening) for its life. */
    if (admin_changed) {
        if (m->admin_fd >= 0)
            close(m->admin_fd);
        m->admin_fd = cfg->admin ? admin_fd : -1;
        m->admin_addr = cfg->admin_addr;
    }

    /* New workers first, then the old ones drain: the sockets are never
     * without a worker that accepts. */
    for (unsigned id = 0; id < LB_MAX_WORKERS; id++) {
        m->respawn_at[id] = 0;
        m->backoff[id] = false;
    }
    for (unsigned id = 0; id < cfg->workers; id++) {
        m->crashes[id] = 0;
        if (lb_master_spawn(m, id) < 0) {
            m->respawn_at[id] = lb_now_ms() + LB_RESPAWN_MAX_MS;
            m->backoff[id] = true;
        }
    }
    lb_master_park_waiting(m);
    lb_master_drain_old(m, LB_MAX_WORKERS, true);  /* numbers that are gone */

    /* The control process restarts with the new configuration; its state
     * (health) is in shm and carries over. */
    if (m->control_pid != 0) {
        if (m->control_retired != 0)
            kill(m->control_retired, SIGKILL);
        m->control_retired = m->control_pid;
        kill(m->control_pid, SIGTERM);
        m->control_pid = 0;
    }
    m->control_respawn_at = 0;
    m->control_crashes = 0;
    if (lb_master_spawn_control(m) < 0)
        m->control_respawn_at = lb_now_ms() + LB_RESPAWN_MAX_MS;
    lb_config_free(old);
    atomic_fetch_add(&m->shm.hdr->reloads, 1);
    lb_log_info("configuration reloaded (generation %llu, %u workers)",
                (unsigned long long)gen, cfg->workers);
    return;
fail:
    lb_log_error("reload failed, keeping the running configuration: %s", err);
    atomic_fetch_add(&m->shm.hdr->reload_failures, 1);
    lb_config_free(cfg);
}

/* ---- live scaling ------------------------------------------------------- */

/* Run N workers from now on (TTIN, TTOU, lbd -S), kept across reloads. Up:
 * sockets for the new numbers, then their workers. Down: the numbers that
 * go leave the steering first (no new client is sent there), then their
 * workers drain as on a reload, and the master's copies of their sockets
 * close (the queues move to the others: the migrate program, or
 * tcp_migrate_req). 0, or -1 with WHY set. */
static int lb_master_scale(struct lb_master *m, unsigned n, char *why, size_t whylen)
{
    unsigned cur = m->cfg->workers;
    if (m->stopping) {
        snprintf(why, whylen, "lbd is stopping");
        return -1;
    }
    if (n < 1 || n > LB_MAX_WORKERS) {
        snprintf(why, whylen, "a worker count is from 1 to %d", LB_MAX_WORKERS);
        return -1;
    }
    m->scaled = n;
    if (n > cur) {
        if (lb_listen_resize(&m->listen, m->cfg, n) < 0) {
            m->scaled = cur;
            snprintf(why, whylen, "cannot open listening sockets for %u workers", n);
            return -1;
        }
        m->cfg->workers = n;
        for (unsigned id = cur; id < n; id++) {
            m->crashes[id] = 0;
            m->respawn_at[id] = 0;
            m->backoff[id] = false;
            if (lb_master_spawn(m, id) < 0) {
                m->respawn_at[id] = lb_now_ms() + LB_RESPAWN_MAX_MS;
                m->backoff[id] = true;
            }
        }
        lb_master_park_waiting(m);
    } else if (n < cur) {
        m->cfg->workers = n;
        lb_master_steer_sync(m);
        uint64_t deadline = lb_master_deadline(m->cfg->shutdown_timeout_ms);
        for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++) {
            struct lb_child *c = &m->children[s];
            if (c->pid == 0 || c->id < n || c->kill_at_ms != 0)
                continue;
            c->kill_at_ms = deadline ? deadline : 1;
            kill(c->pid, SIGTERM);
        }
        for (unsigned id = n; id < cur; id++) {
            m->respawn_at[id] = 0;
            m->backoff[id] = false;
        }
        lb_listen_resize(&m->listen, m->cfg, n);
    }
    lb_master_steer_shm(m);
    lb_master_steer_sync(m);
    if (n != cur)
        lb_log_info("scaled from %u to %u worker(s)", cur, n);
    return 0;
}

/* lbd -S N, through the rendezvous socket. */
static int lb_master_on_scale(void *arg, unsigned n, char *reply, size_t len)
{
    struct lb_master *m = arg;
    unsigned cur = m->cfg->workers;
    if (lb_master_scale(m, n, reply, len) < 0)
        return -1;
    snprintf(reply, len, "%u worker(s), was %u", n, cur);
    return 0;
}

/* ---- start and stop ----------------------------------------------------- */

static int lb_master_write_pid(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "%d\n", (int)getpid());
    if (fclose(f) != 0 || rename(tmp, path) < 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int lb_master_daemonize(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid > 0)
        _exit(0);
    if (setsid() < 0)
        return -1;
    int fd = open("/dev/null", O_RDWR);
    if (fd < 0)
        return -1;
    /* Keep no tie to the caller's terminal or pipe: a pipe reader would
     * otherwise wait for the daemon's end. */
    dup2(fd, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    if (fd > 2)
        close(fd);
    return 0;
}

static void lb_master_begin_stop(struct lb_master *m, bool graceful)
{
    if (m->stopping && graceful)
        return;
    m->stopping = true;
    uint64_t wait = graceful ? m->cfg->shutdown_timeout_ms : LB_FAST_STOP_MS;
    m->stop_deadline_ms = lb_master_deadline(wait);
    m->control_respawn_at = 0;      /* nothing respawns now: no wake-up for it */
    lb_log_info("%s stop: %zu process(es) to wait for", graceful ? "graceful" : "fast",
                lb_master_live(m));
    /* Listeners close now: the workers close their copies as they drain. */
    lb_listen_close(&m->listen);
    lb_master_signal_all(m, graceful ? SIGTERM : SIGINT);
}

static int lb_master_timeout(const struct lb_master *m)
{
    uint64_t now = lb_now_ms(), next = UINT64_MAX;
    for (unsigned id = 0; id < LB_MAX_WORKERS; id++)
        if (m->respawn_at[id] != 0 && m->respawn_at[id] < next)
            next = m->respawn_at[id];
    if (m->control_respawn_at != 0 && m->control_respawn_at < next)
        next = m->control_respawn_at;
    for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++)
        if (m->children[s].pid != 0 && m->children[s].kill_at_ms != 0 &&
            m->children[s].kill_at_ms < next)
            next = m->children[s].kill_at_ms;
    if (m->stopping && m->stop_deadline_ms < next)
        next = m->stop_deadline_ms;
    if (m->settle_until != 0 && m->settle_until < next)
        next = m->settle_until;
    if (next == UINT64_MAX)
        return -1;
    return next <= now ? 0 : (int)(next - now < 60000 ? next - now : 60000);
}

/* ---- binary upgrade (master/upgrade.h) ------------------------------------ */

/* The command line every image of this master runs with (never -d: the
 * pid must stay). Points into M and static storage. */
static char **lb_master_argv(const struct lb_master *m)
{
    static char *argv[10];
    static char workers[16];
    size_t n = 0;
    argv[n++] = (char *)m->exe_path;
    argv[n++] = "-c";
    argv[n++] = (char *)m->opt->config_path;
    if (m->opt->workers != 0) {
        snprintf(workers, sizeof(workers), "%u", m->opt->workers);
        argv[n++] = "-w";
        argv[n++] = workers;
    }
    if (m->opt->pid_file != NULL) {
        argv[n++] = "-p";
        argv[n++] = (char *)m->opt->pid_file;
    }
    argv[n] = NULL;
    return argv;
}

/* What an exec passes to the next image: FDS (the shm, the sockets, EXE
 * as "exe" when >= 0) and STATE (our children, counters). */
static bool lb_master_handover(const struct lb_master *m, int exe, struct lb_inherit *fds,
                               struct lb_inherit *st)
{
    bool ok = lb_inherit_add(fds, "shm", m->shm.fd) == 0 &&
              lb_inherit_add(fds, "instance", m->instance_fd) == 0 &&
              (m->admin_fd < 0 || lb_inherit_add(fds, "admin", m->admin_fd) == 0) &&
              (exe < 0 || lb_inherit_add(fds, "exe", exe) == 0);
    for (size_t g = 0; ok && g < m->listen.ngroups; g++)
        for (unsigned k = 0; ok && k < m->listen.groups[g].nfds; k++) {
            char name[LB_INHERIT_NAME_MAX];
            snprintf(name, sizeof(name), "listen.%u", k);
            if (m->listen.groups[g].fds[k] >= 0)
                ok = lb_inherit_add(fds, name, m->listen.groups[g].fds[k]) == 0;
        }
    /* The steering program and its maps are not handed over: the new image
     * loads its own and attaching it to the inherited groups replaces the
     * old one at once; until its workers are in its map the program leaves
     * the choice to the kernel, over every socket of the group. An fd a
     * later binary adds here is closed, with a log line, by one that does
     * not know it. */
    for (size_t s = 0; ok && s < LB_SHM_MAX_SLOTS; s++) {
        if (m->children[s].pid == 0)
            continue;
        char name[LB_INHERIT_NAME_MAX];
        snprintf(name, sizeof(name), "worker.%u", m->children[s].id);
        ok = lb_inherit_add(st, name, m->children[s].pid) == 0;
    }
    return ok && (m->control_pid == 0 || lb_inherit_add(st, "control", m->control_pid) == 0) &&
           (m->control_retired == 0 || lb_inherit_add(st, "control_old", m->control_retired) == 0) &&
           (m->scaled == 0 || lb_inherit_add(st, "scaled", (long long)m->scaled) == 0) &&
           lb_inherit_add(st, "generation", (long long)m->generation) == 0 &&
           lb_inherit_add(st, "upgrades", (long long)atomic_load(&m->shm.hdr->upgrades)) == 0 &&
           lb_inherit_add(st, "upgrade_failures",
                          (long long)atomic_load(&m->shm.hdr->upgrade_failures)) == 0;
}

/* USR2: check the file at exe_path, then become it. Returns only when the
 * upgrade is refused, with everything still running as it was. */
static void lb_master_upgrade(struct lb_master *m)
{
    char err[512];
    struct lb_upgrade_probe pr;
    struct lb_inherit fds = { 0 }, st = { 0 };
    int exe = -1;
    lb_log_info("upgrade: checking %s", m->exe_path);
    if (m->settle_until != 0) {
        snprintf(err, sizeof(err), "the previous upgrade is not settled yet");
        goto fail;
    }
    /* The running binary, for a rollback by the new image: its file may be
     * gone from the file system by then. */
    exe = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (!lb_master_handover(m, exe, &fds, &st)) {
        snprintf(err, sizeof(err), "out of memory");
        goto fail;
    }
    if (lb_upgrade_probe(m->exe_path, lb_master_argv(m), &fds, &st, &pr, err, sizeof(err)) < 0)
        goto fail;
    lb_log_info("upgrade: %s is lbd %s (running: %s), shm layout %u (%s): executing it",
                m->exe_path, pr.version, lb_version, pr.layout,
                pr.adopt_shm ? "adopted: counters and state carry over"
                             : "not adoptable: its state starts afresh");
    lb_upgrade_exec(-1, m->exe_path, lb_master_argv(m), &fds, &st, err, sizeof(err));
fail:
    lb_log_error("upgrade refused, the running binary keeps serving: %s", err);
    atomic_fetch_add(&m->shm.hdr->upgrade_failures, 1);
    if (exe >= 0)
        close(exe);
    lb_inherit_free(&fds);
    lb_inherit_free(&st);
}

/* The end of an upgrade's settling: the new workers lived through it, so
 * the previous binary's drain; or one died, so we go back to that binary
 * (which takes over the same way, and starts workers of its own). */
static void lb_master_settle(struct lb_master *m)
{
    if (m->settle_until == 0 || m->stopping)
        return;
    if (m->settle_failed) {
        struct lb_inherit fds = { 0 }, st = { 0 };
        char err[256] = "out of memory";
        lb_log_error("upgrade: a new worker died within %d ms of the upgrade: going back to "
                     "the previous binary", LB_UPGRADE_SETTLE_MS);
        if (m->exe_fd >= 0 && lb_master_handover(m, m->exe_fd, &fds, &st) &&
            lb_inherit_add(&st, "rollback", 1) == 0)
            lb_upgrade_exec(m->exe_fd, m->exe_path, lb_master_argv(m), &fds, &st, err,
                            sizeof(err));
        lb_inherit_free(&fds);
        lb_inherit_free(&st);
        /* Still here: the old workers are not drained and serve on; the
         * new ones are respawned with backoff. */
        lb_log_error("upgrade: going back failed (%s): the previous binary's workers serve on "
                     "until the next reload", err);
        m->settle_until = 0;
        if (m->exe_fd >= 0)
            close(m->exe_fd);
        m->exe_fd = -1;
        return;
    }
    if (lb_now_ms() < m->settle_until)
        return;
    m->settle_until = 0;
    if (m->exe_fd >= 0)
        close(m->exe_fd);
    m->exe_fd = -1;
    lb_log_info("upgrade: the new workers are up: the previous binary's drain");
    atomic_fetch_add(&m->shm.hdr->upgrades, 1);
    for (unsigned id = 0; id < m->cfg->workers; id++)
        for (size_t s = 0; s < LB_SHM_MAX_SLOTS; s++)
            if (m->children[s].pid != 0 && m->children[s].id == id &&
                m->children[s].generation == m->generation) {
                lb_master_drain_old(m, id, false);
                break;
            }
    lb_master_drain_old(m, LB_MAX_WORKERS, true);
}

/* The listening sockets the previous image passed ("listen.K": worker K's
 * socket of some listener), grouped by the address they are bound to, as
 * lb_listen_open takes them over. */
static int lb_master_inherited_listen(struct lb_master *m, struct lb_listen_set *set)
{
    *set = (struct lb_listen_set){ 0 };
    long long k, fd;
    while (lb_inherit_take_prefix(&m->in_fds, "listen.", &k, &fd)) {
        struct lb_addr a = { .len = sizeof(a.ss) };
        if (k < 0 || k >= LB_MAX_WORKERS ||
            getsockname((int)fd, (struct sockaddr *)&a.ss, &a.len) < 0) {
            lb_log_warn("upgrade: inherited socket listen.%lld (fd %lld) unusable: closed", k, fd);
            close((int)fd);
            continue;
        }
        struct lb_listen_group *g = NULL;
        for (size_t i = 0; i < set->ngroups; i++)
            if (lb_addr_equal(&set->groups[i].addr, &a))
                g = &set->groups[i];
        if (g == NULL) {
            struct lb_listen_group *gs = realloc(set->groups, (set->ngroups + 1) * sizeof(*gs));
            int *f = malloc(LB_MAX_WORKERS * sizeof(*f));
            if (gs != NULL)
                set->groups = gs;
            if (gs == NULL || f == NULL) {
                free(f);
                close((int)fd);
                return -1;
            }
            g = &set->groups[set->ngroups++];
            *g = (struct lb_listen_group){ .addr = a, .fds = f, .nfds = 0 };
            for (unsigned i = 0; i < LB_MAX_WORKERS; i++)
                f[i] = -1;
        }
        if (g->fds[k] >= 0)
            close(g->fds[k]);
        g->fds[k] = (int)fd;
        if ((unsigned)k >= g->nfds)
            g->nfds = (unsigned)k + 1;  /* as the previous image had them */
    }
    return 0;
}

static int lb_master_inherited_fd(struct lb_master *m, const char *name)
{
    long long fd;
    return lb_inherit_take(&m->in_fds, name, &fd) ? (int)fd : -1;
}

static long long lb_master_inherited_value(struct lb_master *m, const char *name)
{
    long long v;
    return lb_inherit_take(&m->in_state, name, &v) ? v : -1;
}

/* Make the previous image's workers and control process ours: they are
 * our children already (same pid), and drain once the new ones run. */
static void lb_master_adopt_children(struct lb_master *m, bool adopted_shm)
{
    struct lb_shm_header *h = m->shm.hdr;
    long long id, pid;
    while (lb_inherit_take_prefix(&m->in_state, "worker.", &id, &pid)) {
        if (id < 0 || id >= LB_MAX_WORKERS || pid <= 0)
            continue;
        int slot = -1;
        uint64_t gen = m->generation - 1;
        for (unsigned s = 0; adopted_shm && s < h->max_slots && slot < 0; s++) {
            struct lb_shm_worker *w = lb_shm_worker(h, s);
            if (atomic_load(&w->state) != LB_SLOT_FREE && atomic_load(&w->pid) == (int32_t)pid) {
                slot = (int)s;
                gen = atomic_load(&w->generation);
            }
        }
        /* A fresh segment: a slot for the bookkeeping (its counters stay
         * in the old segment, which the old worker still writes). */
        if (slot < 0 && (slot = lb_shm_slot_take(h, (unsigned)id, gen)) >= 0)
            atomic_store(&lb_shm_worker(h, (unsigned)slot)->pid, (int32_t)pid);
        if (slot < 0) {
            lb_log_error("upgrade: no shm slot for the old worker %lld (pid %lld): stopping it",
                         id, pid);
            kill((pid_t)pid, SIGTERM);
            continue;
        }
        m->children[slot] = (struct lb_child){ .pid = (pid_t)pid, .id = (unsigned)id,
                                               .generation = gen, .started_ms = lb_now_ms() };
    }
    long long control = lb_master_inherited_value(m, "control");
    long long control_old = lb_master_inherited_value(m, "control_old");
    if (control_old > 0)
        kill((pid_t)control_old, SIGKILL);      /* reaped as a stranger */
    if (control > 0) {
        m->control_retired = (pid_t)control;
        kill((pid_t)control, SIGTERM);
    }
}

/* Sockets (instance, admin) and the segment, from the previous image or
 * new. Nothing inherited is closed here: a rollback passes it all on. */
static int lb_master_open_shared(struct lb_master *m, bool *adopted_shm, char *err, size_t errlen)
{
    int fd = lb_master_inherited_fd(m, "instance");
    m->instance_fd = fd >= 0 ? fd : lb_instance_listen(m->cfg->path);
    if (m->instance_fd < 0) {
        if (errno == EADDRINUSE)
            snprintf(err, errlen, "an lbd for %s is already running", m->cfg->path);
        else
            snprintf(err, errlen, "rendezvous socket failed (%d: %s)", errno, strerror(errno));
        return -1;
    }
    fd = lb_master_inherited_fd(m, "admin");
    if (fd >= 0) {
        struct lb_addr a = { .len = sizeof(a.ss) };
        if (m->cfg->admin && getsockname(fd, (struct sockaddr *)&a.ss, &a.len) == 0 &&
            lb_addr_equal(&a, &m->cfg->admin_addr)) {
            m->admin_fd = fd;
            m->admin_addr = m->cfg->admin_addr;
        } else {
            lb_inherit_add(&m->in_fds, "admin", fd);    /* closed once committed */
        }
    }
    if (m->cfg->admin && m->admin_fd < 0) {
        m->admin_fd = lb_master_admin_socket(&m->cfg->admin_addr, err, errlen,
                                             m->cfg->admin_address);
        if (m->admin_fd < 0)
            return -1;
        m->admin_addr = m->cfg->admin_addr;
    }
    fd = lb_master_inherited_fd(m, "shm");
    *adopted_shm = false;
    if (fd >= 0) {
        const char *why = "";
        if (lb_shm_attach(fd, false, &m->shm, &why) == 0) {
            *adopted_shm = true;
            lb_log_info("upgrade: shared memory adopted (layout %u): counters, health, breakers, "
                        "rate limits and ticket keys carry over", lb_shm_layout_version);
            return 0;
        }
        lb_log_warn("upgrade: the previous binary's shared memory cannot be adopted (%s): "
                    "starting fresh (counters from zero, health as configured)", why);
        lb_inherit_add(&m->in_fds, "shm", fd);          /* closed once committed */
    }
    if (lb_shm_create(&m->shm) < 0) {
        snprintf(err, errlen, "shared memory: memfd_create() failed (%d: %s)", errno,
                 strerror(errno));
        return -1;
    }
    return 0;
}

static int lb_master_start(struct lb_master *m, bool upgraded)
{
    char err[512];
    if (lb_master_config_load(m->opt->config_path, &m->cfg, err, sizeof(err)) < 0) {
        lb_log_error("%s", err);
        return -1;
    }
    if (upgraded) {
        /* A live scaling holds across an upgrade as across a reload. */
        long long scaled = lb_master_inherited_value(m, "scaled");
        if (scaled > 0 && scaled <= LB_MAX_WORKERS)
            m->scaled = (unsigned)scaled;
    }
    lb_master_apply_overrides(m, m->cfg);
    m->pid_file = m->opt->pid_file ? m->opt->pid_file : m->cfg->pid_file;

    bool adopted_shm = false;
    if (lb_master_open_shared(m, &adopted_shm, err, sizeof(err)) < 0) {
        lb_log_error("%s", err);
        return -1;
    }
    m->generation = 1;
    if (adopted_shm)
        m->generation = atomic_load(&m->shm.hdr->generation) + 1;
    else if (upgraded)
        m->generation = (uint64_t)lb_master_inherited_value(m, "generation") + 1;
    if (m->generation < 2 && upgraded)
        m->generation = 2;      /* the old workers' generation, 1, is older */
    if (!lb_shm_assign_fits(m->shm.hdr, m->cfg)) {
        lb_log_error("too many pools or servers for the shared memory tables");
        return -1;
    }
    if (lb_master_check_logs(m->cfg, err, sizeof(err)) < 0) {
        lb_log_error("%s", err);
        return -1;
    }
    struct lb_listen_set inherited = { 0 };
    if (upgraded && lb_master_inherited_listen(m, &inherited) < 0) {
        lb_log_error("out of memory");
        return -1;
    }
    if (lb_upgrade_probing()) {
        /* Checked all an upgrade can check: say so and leave everything as
         * it is (our fds are copies; the caller keeps its own). */
        if (lb_listen_check(m->cfg, &inherited, err, sizeof(err)) < 0) {
            lb_log_error("%s", err);
            _exit(1);
        }
        lb_upgrade_probe_answer(adopted_shm);
        _exit(0);
    }
    /* The last step that can fail: the previous image's sockets stay as
     * they were if it does. */
    if (lb_listen_open(&m->listen, m->cfg, upgraded ? &inherited : NULL, err, sizeof(err)) < 0) {
        lb_log_error("%s", err);
        return -1;
    }
    /* Committed: from here on a failure no longer goes back. */
    m->committed = true;
    lb_listen_close(&inherited);        /* sockets of listeners now gone */
    if (lb_shm_assign(m->shm.hdr, m->cfg, m->generation, err, sizeof(err)) < 0) {
        lb_log_error("BUG: shared memory assignment failed after its check: %s", err);
        abort();
    }
    atomic_store(&m->shm.hdr->generation, m->generation);
    atomic_store(&m->shm.hdr->workers, m->cfg->workers);
    snprintf(m->shm.hdr->version, sizeof(m->shm.hdr->version), "%s", lb_version);
    if (lb_master_open_log(m->cfg) < 0 && !upgraded)
        return -1;
    lb_master_fd_budget(m, m->cfg);
    m->shm_reader_fd = lb_shm_reader_fd(m->shm.fd);
    if (m->shm_reader_fd < 0)
        lb_log_warn("no read-only copy of the shared memory for lbd -s and lbtop (%d: %s): "
                    "they get a writable one", errno, strerror(errno));
    /* Attached before any worker runs (its log line goes to error_log). */
    if (lb_steer_apply(&m->steer, m->cfg, &m->listen, 0, err, sizeof(err)) < 0) {
        lb_log_error("%s", err);
        return -1;
    }
    lb_master_steer_shm(m);
    lb_listen_migrate(m->cfg, !lb_steer_migrates(&m->steer, m->cfg));
    if (!upgraded && m->opt->daemonize && m->cfg->error_log == NULL)
        lb_log_warn("running in the background without error_log: log lines are discarded");
    if (!upgraded && m->opt->daemonize && lb_master_daemonize() < 0) {
        lb_log_error("daemonizing failed (%d: %s)", errno, strerror(errno));
        return -1;
    }
    atomic_store(&m->shm.hdr->master_pid, (int32_t)getpid());
    if (m->pid_file != NULL && lb_master_write_pid(m->pid_file) < 0) {
        lb_log_error("cannot write pid file %s (%d: %s)", m->pid_file, errno, strerror(errno));
        if (!upgraded)      /* else the file the previous image wrote says the same pid */
            return -1;
    }
    lb_proctitle_set("lbd: master");
    if (upgraded) {
        lb_master_adopt_children(m, adopted_shm);
        long long failures = lb_master_inherited_value(m, "upgrade_failures");
        long long upgrades = lb_master_inherited_value(m, "upgrades");
        bool rollback = lb_master_inherited_value(m, "rollback") > 0;
        if (!adopted_shm) {     /* a fresh segment goes on counting */
            atomic_store(&m->shm.hdr->upgrades, upgrades > 0 ? (uint64_t)upgrades : 0);
            atomic_store(&m->shm.hdr->upgrade_failures, failures > 0 ? (uint64_t)failures : 0);
        }
        /* The previous binary, to go back to while settling; the upgrade
         * counts once settled (lbd -s: its verdict). */
        long long fd;
        if (!rollback && lb_inherit_take(&m->in_fds, "exe", &fd)) {
            m->exe_fd = (int)fd;
            m->settle_until = lb_now_ms() + LB_UPGRADE_SETTLE_MS;
            m->settle_gen = m->generation;
        } else {
            atomic_fetch_add(rollback ? &m->shm.hdr->upgrade_failures : &m->shm.hdr->upgrades, 1);
        }
        /* What is left is from a binary that knew more than this one. */
        while (m->in_fds.n > 0) {
            struct lb_inherit_entry e = m->in_fds.v[0];
            lb_inherit_take(&m->in_fds, e.name, &fd);
            if (strcmp(e.name, "shm") == 0)
                lb_shm_retire((int)fd);     /* not adopted: lbtop lets it go */
            else if (strcmp(e.name, "exe") != 0 && strcmp(e.name, "admin") != 0)
                lb_log_warn("upgrade: inherited fd %s unknown to this binary: closed", e.name);
            close((int)fd);
        }
        lb_log_info("%s: lbd %s running %s, %u worker(s), %zu listener(s); the previous "
                    "binary's workers %s", rollback ? "upgrade rolled back" : "upgraded",
                    lb_version, m->cfg->path, m->cfg->workers, m->cfg->nlisteners,
                    m->settle_until ? "serve on until the new ones are settled" : "drain");
    } else {
        lb_log_info("lbd %s starting: %s, %u worker(s), %zu listener(s)", lb_version,
                    m->cfg->path, m->cfg->workers, m->cfg->nlisteners);
    }
    for (unsigned id = 0; id < m->cfg->workers; id++)
        if (lb_master_spawn(m, id) < 0) {
            if (!upgraded)
                return -1;
            /* Its predecessor keeps serving, as after a reload. */
            m->respawn_at[id] = lb_now_ms() + LB_RESPAWN_MAX_MS;
            m->backoff[id] = true;
        }
    lb_master_drain_old(m, LB_MAX_WORKERS, true);  /* numbers that are gone */
    if (lb_master_spawn_control(m) < 0) {
        if (!upgraded)
            return -1;
        m->control_respawn_at = lb_now_ms() + LB_RESPAWN_MAX_MS;
    }
    return 0;
}

int lb_master_run(const struct lb_master_options *opt)
{
    static struct lb_master master;
    struct lb_master *m = &master;
    m->opt = opt;
    m->instance_fd = -1;
    lb_instance_clients_init(&m->instance_clients);
    m->admin_fd = -1;
    m->shm.fd = -1;
    m->shm_reader_fd = -1;
    m->exe_fd = -1;
    lb_log_set_role("master");
    bool upgraded = lb_upgrade_inherited(&m->in_fds, &m->in_state);
    lb_upgrade_self_path(m->exe_path, sizeof(m->exe_path));
    /* Before lbd opens anything: what every process it forks inherits
     * (not what the previous binary passed on). */
    m->fd_inherited = lb_fdbudget_count_open(3) - (unsigned)m->in_fds.n;
    /* Raised at once (sockets opened at start count too); logged once the
     * log is open. */
    unsigned after;
    if (lb_fdbudget_raise(&m->fd_before, &after) < 0)
        m->fd_before = lb_fdbudget_limit();

    sigset_t wait_mask;
    if (lb_master_setup_signals(&wait_mask) < 0) {
        lb_log_error("signal setup failed (%d: %s)", errno, strerror(errno));
        return 1;
    }
    int rc = 1;
    if (lb_master_start(m, upgraded) < 0) {
        if (lb_upgrade_probing())
            _exit(1);       /* a probe: its failure is all the caller asked */
        if (upgraded && !m->committed)
            lb_upgrade_rollback(lb_master_argv(m), "the new binary could not start: see above");
        if (lb_master_live(m) > 0) {
            lb_master_signal_all(m, SIGINT);
            while (wait(NULL) > 0)
                ;
        }
        goto out;
    }

    for (;;) {
        if (lb_sig_child) {
            lb_sig_child = 0;
            lb_master_reap(m);
        }
        if (lb_sig_int) {
            lb_sig_int = 0;
            lb_master_begin_stop(m, false);
        }
        if (lb_sig_term) {
            lb_sig_term = 0;
            lb_master_begin_stop(m, true);
        }
        if (lb_sig_hup) {
            lb_sig_hup = 0;
            if (!m->stopping)
                lb_master_reload(m);
        }
        if (lb_sig_usr1) {
            lb_sig_usr1 = 0;
            if (lb_log_reopen() < 0)
                lb_log_error("reopening the log failed (%d: %s)", errno, strerror(errno));
            lb_master_signal_all(m, SIGUSR1);
        }
        if (lb_sig_usr2) {
            lb_sig_usr2 = 0;
            if (!m->stopping)
                lb_master_upgrade(m);   /* returns only if the upgrade was refused */
        }
        /* Counted, not flags: three TTINs in a row add three workers. */
        while ((lb_sig_ttin > 0 || lb_sig_ttou > 0) && !m->stopping) {
            char why[128];
            unsigned n = m->cfg->workers;
            if (lb_sig_ttin > 0) {
                lb_sig_ttin--;
                n++;
            } else {
                lb_sig_ttou--;
                if (n == 1) {
                    lb_log_warn("TTOU: already at one worker, the least there is");
                    continue;
                }
                n--;
            }
            if (lb_master_scale(m, n, why, sizeof(why)) < 0)
                lb_log_warn("scaling to %u worker(s) refused: %s", n, why);
        }
        lb_master_respawn_due(m);
        lb_master_settle(m);
        lb_master_enforce_deadlines(m);
        if (m->stopping) {
            if (lb_master_live(m) == 0)
                break;
            if (lb_now_ms() >= m->stop_deadline_ms) {
                lb_log_warn("shutdown_timeout reached: killing %zu process(es)", lb_master_live(m));
                lb_master_signal_all(m, SIGKILL);
                m->stop_deadline_ms = UINT64_MAX;
            }
        }

        struct pollfd pfd[1 + LB_INSTANCE_CLIENTS];
        size_t npfd = lb_instance_pollfds(m->instance_fd, &m->instance_clients, pfd);
        int t = lb_master_timeout(m), ti = lb_instance_timeout(&m->instance_clients);
        if (ti >= 0 && (t < 0 || ti < t))
            t = ti;
        struct timespec ts = { .tv_sec = t / 1000, .tv_nsec = (long)(t % 1000) * 1000000L };
        int n = ppoll(pfd, npfd, t < 0 ? NULL : &ts, &wait_mask);
        if (n >= 0)
            lb_instance_serve(m->instance_fd, &m->instance_clients,
                              m->shm_reader_fd >= 0 ? m->shm_reader_fd : m->shm.fd,
                              lb_master_on_scale, m);
    }
    lb_log_info("stopped");
    rc = 0;
out:
    if (m->pid_file != NULL && rc == 0)
        unlink(m->pid_file);
    if (m->instance_fd >= 0)
        close(m->instance_fd);
    lb_instance_clients_close(&m->instance_clients);
    if (m->admin_fd >= 0)
        close(m->admin_fd);
    if (m->exe_fd >= 0)
        close(m->exe_fd);
    lb_listen_close(&m->listen);
    lb_steer_free(&m->steer);
    if (m->shm_reader_fd >= 0)
        close(m->shm_reader_fd);
    if (m->shm.hdr != NULL)
        lb_shm_close(&m->shm);
    lb_config_free(m->cfg);
    lb_inherit_free(&m->in_fds);
    lb_inherit_free(&m->in_state);
    return rc;
}
