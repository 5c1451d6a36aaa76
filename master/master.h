/* The master process: owns the configuration, the shm segment and every
 * listen socket; forks, supervises and replaces workers. Nothing else, so
 * it has nothing that can make it fall over.
 *
 * Signals (handlers only set flags; the loop handles them in this order):
 *   CHLD        reap, respawn crashed workers (with backoff)
 *   INT         fast stop
 *   TERM, QUIT  graceful stop within shutdown_timeout, exit 0
 *   HUP         reload: a bad file is refused (FILE:LINE logged) and the
 *               running generation keeps serving
 *   USR1        reopen log files (and tell the workers)
 *   USR2        binary upgrade in place, same pid (master/upgrade.h); a
 *               file that fails its check changes nothing
 */
#ifndef LB_MASTER_H
#define LB_MASTER_H

#include <stdbool.h>
#include <stddef.h>

struct lb_master_options {
    const char *config_path;
    const char *pid_file;       /* -p, overrides pid_file */
    unsigned workers;           /* -w, 0: from the config */
    bool daemonize;             /* -d */
};

struct lb_config;

/* Load and check PATH as a start, -t and a reload do: the file, then what
 * it names (TLS certificates and keys, read and built into contexts the
 * workers inherit). 0, or -1 with "FILE:LINE: why" in ERR. */
int lb_master_config_load(const char *path, struct lb_config **out, char *err, size_t errlen);

/* Run the master until it stops. Returns the process exit status. */
int lb_master_run(const struct lb_master_options *opt);

#endif
