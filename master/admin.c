#include "master/admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "master/metrics.h"
#include "master/snapshot.h"
#include "shared/log.h"
#include "worker/http.h"

#define LB_ADMIN_MAX_HEAD 8192
#define LB_ADMIN_TIMEOUT_S 10

struct lb_admin {
    struct evconnlistener *listener;
    struct lb_shm_header *shm;
};

static void lb_admin_conn_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    (void)arg;
    bufferevent_free(bev);
}

static void lb_admin_conn_write(struct bufferevent *bev, void *arg)
{
    (void)arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_free(bev);
}

/* HEAD gets the headers GET would (Content-Length included), no body. */
static void lb_admin_reply(struct bufferevent *bev, int status, const char *reason,
                           const char *type, const char *body, size_t len, bool head)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                             "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                        status, reason, type, len);
    if (!head)
        evbuffer_add(out, body, len);
    bufferevent_disable(bev, EV_READ);
    bufferevent_setcb(bev, NULL, lb_admin_conn_write, lb_admin_conn_event, NULL);
    bufferevent_enable(bev, EV_WRITE);
}

static void lb_admin_conn_read(struct bufferevent *bev, void *arg)
{
    struct lb_admin *a = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    size_t n = len < LB_ADMIN_MAX_HEAD ? len : LB_ADMIN_MAX_HEAD;
    const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    size_t scanned = 0;
    size_t head = lb_http_head_end(buf, n, &scanned);
    if (head == 0) {
        if (len >= LB_ADMIN_MAX_HEAD)
            lb_admin_reply(bev, 431, "Request Header Fields Too Large", "text/plain", "", 0, false);
        return;
    }
    struct lb_http_header hdrs[64];
    struct lb_http_msg m = { .headers = hdrs, .max_headers = 64 };
    struct lb_http_limits lim = { .max_request_line = 4096, .max_head = LB_ADMIN_MAX_HEAD,
                                  .max_headers = 64 };
    if (lb_http_parse_request(buf, head, &m, &lim) != 0) {
        static const char bad[] = "bad request\n";
        lb_admin_reply(bev, 400, "Bad Request", "text/plain", bad, sizeof(bad) - 1, false);
        return;
    }
    /* The path without its query string. */
    size_t plen = m.target_len;
    const char *q = memchr(m.target, '?', plen);
    if (q != NULL)
        plen = (size_t)(q - m.target);
    bool get = (m.method_len == 3 && memcmp(m.method, "GET", 3) == 0) ||
               (m.method_len == 4 && memcmp(m.method, "HEAD", 4) == 0);

    char *body = NULL;
    size_t blen = 0;
    const char *type = NULL;
    FILE *f = open_memstream(&body, &blen);
    if (f == NULL) {
        lb_admin_reply(bev, 500, "Internal Server Error", "text/plain", "", 0, false);
        return;
    }
    if (get && plen == 8 && memcmp(m.target, "/metrics", 8) == 0) {
        lb_metrics_write(a->shm, f);
        type = "text/plain; version=0.0.4; charset=utf-8";
    } else if (get && plen == 7 && memcmp(m.target, "/status", 7) == 0) {
        lb_snapshot_write(a->shm, f);
        type = "application/json";
    }
    fclose(f);
    if (type == NULL) {
        static const char nf[] = "not found: try /metrics or /status\n";
        lb_admin_reply(bev, 404, "Not Found", "text/plain", nf, sizeof(nf) - 1,
                       (m.flags & LB_MSG_HEAD) != 0);
    } else {
        lb_admin_reply(bev, 200, "OK", type, body, blen, (m.flags & LB_MSG_HEAD) != 0);
    }
    free(body);
}

static void lb_admin_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                            int socklen, void *arg)
{
    (void)sa;
    (void)socklen;
    struct bufferevent *bev = bufferevent_socket_new(evconnlistener_get_base(l), fd,
                                                     BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        close(fd);
        return;
    }
    struct timeval tv = { .tv_sec = LB_ADMIN_TIMEOUT_S };
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_setcb(bev, lb_admin_conn_read, NULL, lb_admin_conn_event, arg);
    bufferevent_enable(bev, EV_READ);
}

struct lb_admin *lb_admin_start(struct event_base *base, int fd, struct lb_shm_header *shm)
{
    struct lb_admin *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->shm = shm;
    /* No LEV_OPT_CLOSE_ON_FREE: the socket is the master's, and survives us. */
    a->listener = evconnlistener_new(base, lb_admin_accept, a, LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (a->listener == NULL) {
        free(a);
        return NULL;
    }
    return a;
}

void lb_admin_stop(struct lb_admin *a)
{
    if (a == NULL)
        return;
    evconnlistener_free(a->listener);
    free(a);
}
