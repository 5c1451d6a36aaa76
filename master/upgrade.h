/* Binary upgrade (USR2): the master re-executes itself in place, keeping
 * its pid, so the pid file and systemd's MainPID stay right.
 *
 *   old image                               new image (same pid)
 *   ---------                               --------------------
 *   USR2: FILE run as a child with all
 *   that is passed below (the probe): it
 *   checks the configuration, the shm and
 *   the ports, says its version and exits;
 *   any failure: refused, nothing changed
 *   execve(FILE) with the listening
 *   sockets, the shm memfd, the instance
 *   and admin sockets, an fd of the old
 *   binary (LBD_INHERIT) and the pids of
 *   the workers and control (LBD_UPGRADE)
 *                                           adopt the sockets; adopt the shm if
 *                                           its layout is compatible, else start
 *                                           a fresh one (logged); any failure so
 *                                           far: exec the old binary again
 *                                           (rollback) with the same fds
 *                                           new workers and control start; the
 *                                           old ones (still our children) drain
 *                                           and are reaped
 *
 * This module holds what does not need the master's state: the fd and
 * value lists passed over the exec, the probe, the exec itself. */
#ifndef LB_UPGRADE_H
#define LB_UPGRADE_H

#include <stdbool.h>
#include <stddef.h>

#define LB_UPGRADE_ENV_FDS      "LBD_INHERIT"       /* name=fd,... */
#define LB_UPGRADE_ENV_STATE    "LBD_UPGRADE"       /* name=number,... */
#define LB_UPGRADE_ENV_PATH     "LBD_UPGRADE_PATH"  /* the binary the next USR2 runs */
#define LB_UPGRADE_ENV_PROBE    "LBD_UPGRADE_PROBE" /* -t prints the probe line */
#define LB_INHERIT_NAME_MAX     32
#define LB_INHERIT_MAX          4096

/* A list of (name, number) pairs, as passed in LBD_INHERIT (numbers are
 * fds: "shm", "instance", "admin", "exe", "listen.K" for worker K's socket
 * of each listener, and whatever later modules add, e.g. BPF fds) and
 * LBD_UPGRADE (numbers are pids and flags: "control", "worker.K"). A name
 * may repeat. */
struct lb_inherit_entry {
    char name[LB_INHERIT_NAME_MAX];
    long long value;
};

struct lb_inherit {
    struct lb_inherit_entry *v;
    size_t n, cap;
};

/* Append; -1 on a bad name (empty, too long, not [A-Za-z0-9._-]), a
 * negative value, or no memory. */
int lb_inherit_add(struct lb_inherit *l, const char *name, long long value);
/* Append the pairs of TEXT ("name=value,name=value"; "" is an empty list).
 * -1 with ERR on anything malformed (then L holds nothing of TEXT). */
int lb_inherit_parse(struct lb_inherit *l, const char *text, char *err, size_t errlen);
/* The list as TEXT (malloc'd), or NULL without memory. */
char *lb_inherit_format(const struct lb_inherit *l);
/* Remove the first pair named NAME and give its value; false if none. */
bool lb_inherit_take(struct lb_inherit *l, const char *name, long long *value);
/* Remove the first pair whose name starts with PREFIX; *SUFFIX gets the
 * rest of its name as a number (-1 when not one). false if none. */
bool lb_inherit_take_prefix(struct lb_inherit *l, const char *prefix, long long *suffix,
                            long long *value);
void lb_inherit_free(struct lb_inherit *l);

/* What the new binary said about itself. */
struct lb_upgrade_probe {
    char version[48];
    unsigned layout;            /* its lb_shm_layout_version */
    bool adopt_shm;             /* it can adopt the running segment */
};

/* Whether this image is a probe (below): it stops before it changes
 * anything, after lb_upgrade_probe_answer. */
bool lb_upgrade_probing(void);
/* Print the probe line to stdout. */
void lb_upgrade_probe_answer(bool adopt_shm);
/* Find the probe line in OUTPUT. 0, or -1 when there is none. */
int lb_upgrade_probe_parse(const char *output, struct lb_upgrade_probe *out);
/* Run PATH with ARGV, FDS and STATE as lb_upgrade_exec will, but as a
 * child told to check everything the start needs (configuration, shm,
 * free ports) and exit before it changes anything; wait for it
 * (LB_UPGRADE_PROBE_MS at most). 0 when it exits 0 having printed the
 * probe line; else -1 with the reason (its first error line) in ERR. A
 * file that is not lbd, or does not start, fails here. */
int lb_upgrade_probe(const char *path, char *const argv[], const struct lb_inherit *fds,
                     const struct lb_inherit *state, struct lb_upgrade_probe *out,
                     char *err, size_t errlen);

/* execve(PATH, ARGV), or fexecve(EXE_FD) when EXE_FD >= 0 (PATH is then
 * what the next upgrade runs), with FDS and STATE in the environment and
 * the fds of FDS open across it. Returns only on failure (-1, ERR), with
 * every fd as it was. */
int lb_upgrade_exec(int exe_fd, const char *path, char *const argv[],
                    const struct lb_inherit *fds, const struct lb_inherit *state, char *err,
                    size_t errlen);

/* main(), before anything copies the environment (process titles):
 * take what the previous image passed out of it, so no child sees it. */
void lb_upgrade_take_env(void);
/* New image: what the previous one passed (false: a plain start), the fds
 * made close-on-exec again. */
bool lb_upgrade_inherited(struct lb_inherit *fds, struct lb_inherit *state);
/* New image, failing before it changed anything: exec the previous binary
 * (the "exe" fd) with what was inherited, marked as a rollback. Returns
 * only when that fails too. */
void lb_upgrade_rollback(char *const argv[], const char *why);

/* The binary a USR2 runs: LBD_UPGRADE_PATH when the previous image set it,
 * else the file this process was started from (its path now, whatever
 * file is there by then). */
void lb_upgrade_self_path(char *out, size_t len);

#endif
