#include "shared/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct {
    int fd;                 /* 2 (stderr) or an owned file */
    char *path;             /* NULL for stderr */
    enum lb_log_level level;
    char role[32];
} lb_log_state = { .fd = 2, .level = LB_LOG_INFO, .role = "lbd" };

static const char *const lb_log_names[] = { "error", "warn", "info", "debug" };

void lb_log_set_role(const char *role)
{
    snprintf(lb_log_state.role, sizeof(lb_log_state.role), "%s", role);
}

void lb_log_set_level(enum lb_log_level level)
{
    lb_log_state.level = level;
}

int lb_log_level_parse(const char *name, enum lb_log_level *out)
{
    for (size_t i = 0; i < sizeof(lb_log_names) / sizeof(lb_log_names[0]); i++) {
        if (strcmp(name, lb_log_names[i]) == 0) {
            *out = (enum lb_log_level)i;
            return 0;
        }
    }
    return -1;
}

static int lb_log_open_file(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

int lb_log_open(const char *path)
{
    if (path == NULL) {
        if (lb_log_state.fd != 2)
            close(lb_log_state.fd);
        free(lb_log_state.path);
        lb_log_state.path = NULL;
        lb_log_state.fd = 2;
        return 0;
    }
    char *copy = strdup(path);
    if (copy == NULL)
        return -1;
    int fd = lb_log_open_file(path);
    if (fd < 0) {
        int saved = errno;
        free(copy);
        errno = saved;
        return -1;
    }
    if (lb_log_state.fd != 2)
        close(lb_log_state.fd);
    free(lb_log_state.path);
    lb_log_state.path = copy;
    lb_log_state.fd = fd;
    return 0;
}

int lb_log_reopen(void)
{
    if (lb_log_state.path == NULL)
        return 0;
    int fd = lb_log_open_file(lb_log_state.path);
    if (fd < 0)
        return -1;
    /* dup2 keeps the fd number, so nothing that cached it goes stale. */
    if (dup3(fd, lb_log_state.fd, O_CLOEXEC) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    close(fd);
    return 0;
}

int lb_log_fd(void)
{
    return lb_log_state.fd;
}

void lb_log(enum lb_log_level level, const char *fmt, ...)
{
    if (level > lb_log_state.level)
        return;

    int saved_errno = errno;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(line, sizeof(line), "%Y/%m/%d %H:%M:%S", &tm);
    int k = snprintf(line + n, sizeof(line) - n, " [%s] %d#%s: ",
                     lb_log_names[level], (int)getpid(), lb_log_state.role);
    if (k > 0)
        n += (size_t)k;

    va_list ap;
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (k > 0)
        n += (size_t)k;
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;   /* truncated: keep the newline */
    line[n++] = '\n';

    ssize_t w = write(lb_log_state.fd, line, n);
    (void)w;                    /* nowhere left to report a failed log write */
    errno = saved_errno;
}

bool lb_log_limit_hit(struct lb_log_limit *l, uint64_t now_ms, uint64_t *events)
{
    l->events++;
    if (now_ms < l->next_ms)
        return false;
    *events = l->events;
    l->events = 0;
    l->next_ms = now_ms + 1000;
    return true;
}
