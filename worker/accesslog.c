#include "worker/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "shared/log.h"

#define LB_ACCESS_BUF   65536
#define LB_ACCESS_FLUSH (LB_ACCESS_BUF - 2048)  /* a line never exceeds 2 KiB */

static struct {
    int fd;
    char *path;
    struct event *timer;
    size_t len;
    char buf[LB_ACCESS_BUF];
} lb_access = { .fd = -1 };

static void lb_accesslog_flush(void)
{
    size_t off = 0;
    while (off < lb_access.len) {
        ssize_t w = write(lb_access.fd, lb_access.buf + off, lb_access.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            lb_log_error("access log write failed (%d: %s): %zu bytes lost", errno,
                         strerror(errno), lb_access.len - off);
            break;
        }
        off += (size_t)w;
    }
    lb_access.len = 0;
}

static void lb_accesslog_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (lb_access.len > 0)
        lb_accesslog_flush();
}

int lb_accesslog_open(const char *path, struct event_base *base)
{
    lb_access.fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (lb_access.fd < 0)
        return -1;
    lb_access.path = strdup(path);
    lb_access.timer = event_new(base, -1, EV_PERSIST, lb_accesslog_tick, NULL);
    struct timeval sec = { .tv_sec = 1 };
    if (lb_access.path == NULL || lb_access.timer == NULL || event_add(lb_access.timer, &sec) < 0) {
        lb_accesslog_close();
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

int lb_accesslog_reopen(void)
{
    if (lb_access.fd < 0)
        return 0;
    lb_accesslog_flush();
    int fd = open(lb_access.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    dup3(fd, lb_access.fd, O_CLOEXEC);
    close(fd);
    return 0;
}

void lb_accesslog_close(void)
{
    if (lb_access.fd >= 0) {
        lb_accesslog_flush();
        close(lb_access.fd);
    }
    if (lb_access.timer != NULL)
        event_free(lb_access.timer);
    free(lb_access.path);
    lb_access.fd = -1;
    lb_access.timer = NULL;
    lb_access.path = NULL;
}

void lb_accesslog_copy(char *dst, size_t cap, const char *src, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = (src[i] == '"' || src[i] == '\\') ? '_' : src[i];
    dst[n] = '\0';
}

static void lb_sec(char *buf, size_t cap, uint64_t from, uint64_t to)
{
    if (from == 0 || to < from)
        snprintf(buf, cap, "-");
    else
        snprintf(buf, cap, "%llu.%03llu", (unsigned long long)((to - from) / 1000000),
                 (unsigned long long)((to - from) / 1000 % 1000));
}

void lb_accesslog_write(const struct lb_access_entry *e, const char *client,
                        const char *upstream, const char *request_id, const char *tls_version,
                        const char *tls_cipher, uint64_t now_us)
{
    if (lb_access.fd < 0)
        return;
    char when[64], rt[32], uct[32], uht[32];
    time_t t = (time_t)(e->start_us / 1000000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(when, sizeof(when), "%d/%b/%Y:%H:%M:%S %z", &tm);
    lb_sec(rt, sizeof(rt), e->start_us, now_us);
    lb_sec(uct, sizeof(uct), e->connect_us ? e->start_us : 0, e->connect_us);
    lb_sec(uht, sizeof(uht), e->header_us ? e->start_us : 0, e->header_us);
    int n = snprintf(lb_access.buf + lb_access.len, LB_ACCESS_BUF - lb_access.len,
                     "%s - - [%s] \"%s\" %d %llu \"%s\" \"%s\" upstream=%s upstream_status=%d "
                     "request_id=%s rt=%s uct=%s uht=%s attempts=%u%s%s%s%s%s%s\n",
                     client, when, e->request, e->status, (unsigned long long)e->bytes,
                     e->referer[0] ? e->referer : "-", e->user_agent[0] ? e->user_agent : "-",
                     upstream && upstream[0] ? upstream : "-", e->upstream_status,
                     request_id && request_id[0] ? request_id : "-", rt, uct, uht, e->attempts,
                     e->limited, e->fault,
                     tls_version ? " tls=" : "", tls_version ? tls_version : "",
                     tls_version ? " cipher=" : "",
                     tls_version ? (tls_cipher ? tls_cipher : "-") : "");
    if (n > 0 && (size_t)n < LB_ACCESS_BUF - lb_access.len)
        lb_access.len += (size_t)n;
    if (lb_access.len >= LB_ACCESS_FLUSH)
        lb_accesslog_flush();
}
