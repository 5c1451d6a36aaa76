/* Logging shared by every lbd process.
 *
 * One line per message, written with a single write(2) on an O_APPEND fd so
 * that the master, the workers and the control process can share one file
 * without interleaving. Format (nginx users will recognise it):
 *
 *   2026/11/30 01:30:00 [error] 1234#worker 0: connect() to 127.0.0.1:9001 failed (111: Connection refused)
 */
#ifndef LB_LOG_H
#define LB_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum lb_log_level {
    LB_LOG_ERROR,
    LB_LOG_WARN,
    LB_LOG_INFO,
    LB_LOG_DEBUG,
};

/* Name this process in every later line ("master", "worker 3"). */
void lb_log_set_role(const char *role);
void lb_log_set_level(enum lb_log_level level);
/* Parse "error", "warn", "info", "debug". Returns -1 on an unknown name. */
int lb_log_level_parse(const char *name, enum lb_log_level *out);

/* Log to PATH (appended) or, when PATH is NULL, to stderr. On failure the
 * previous destination stays and -1 is returned with errno set. */
int lb_log_open(const char *path);
/* Reopen the current file (USR1, after logrotate moved it). */
int lb_log_reopen(void);
/* The fd log lines go to; daemonize() keeps it open. */
int lb_log_fd(void);

void lb_log(enum lb_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A line for an event that may recur thousands of times a second (accept()
 * out of fds, a cap reached): at most one per second, saying how many
 * events it stands for. */
struct lb_log_limit {
    uint64_t next_ms;           /* no line before this (monotonic ms) */
    uint64_t events;            /* since that line */
};

/* Count one event at NOW_MS; true when a line is due, with *EVENTS set to
 * how many it stands for (this one included). */
bool lb_log_limit_hit(struct lb_log_limit *l, uint64_t now_ms, uint64_t *events);

#define lb_log_error(...) lb_log(LB_LOG_ERROR, __VA_ARGS__)
#define lb_log_warn(...)  lb_log(LB_LOG_WARN, __VA_ARGS__)
#define lb_log_info(...)  lb_log(LB_LOG_INFO, __VA_ARGS__)
#define lb_log_debug(...) lb_log(LB_LOG_DEBUG, __VA_ARGS__)

#endif
