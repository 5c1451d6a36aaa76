#include "master/admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "master/dashboard.h"
#include "master/metrics.h"
#include "master/snapshot.h"
#include "shared/list.h"
#include "shared/log.h"
#include "shared/util.h"
#include "worker/http.h"

#define LB_ADMIN_MAX_HEAD 8192
#define LB_ADMIN_LINGER_MS 2000
#define LB_ADMIN_RETRY_MS 500       /* after a failed accept(), as the workers */

struct lb_admin {
    struct evconnlistener *listener;
    struct lb_shm_header *shm;
    struct event_base *base;
    struct event *retry;            /* resumes accepting after a failed accept() */
    struct lb_list conns;
    unsigned nconns;
    unsigned max_conns;
    unsigned paused;                /* 0, or 1 + lb_pause_reason */
    uint64_t timeout_ms;
    struct lb_log_limit pause_log[LB_PAUSE_REASONS];
};

enum lb_admin_state { LB_ADMIN_HEAD, LB_ADMIN_ANSWER, LB_ADMIN_LINGER };

struct lb_admin_conn {
    struct lb_admin *a;
    struct bufferevent *bev;
    struct event *timer;            /* the state's deadline */
    struct lb_list node;
    enum lb_admin_state state;
    bool eof;                       /* the client's FIN came */
};

static void lb_admin_pause(struct lb_admin *a, enum lb_pause_reason why, int err)
{
    evconnlistener_disable(a->listener);
    a->paused = 1 + why;
    atomic_fetch_add(&a->shm->admin_accept_pauses[why], 1);
    if (why == LB_PAUSE_FD) {
        struct timeval tv = lb_ms_timeval(LB_ADMIN_RETRY_MS);
        evtimer_add(a->retry, &tv);
    }
    uint64_t n;
    if (!lb_log_limit_hit(&a->pause_log[why], lb_now_ms(), &n))
        return;
    if (why == LB_PAUSE_CAP)
        lb_log_warn("admin: %u connections open (admin.max_connections): not accepting until "
                    "one closes (%llu time(s) since the last such line)", a->max_conns,
                    (unsigned long long)n);
    else
        lb_log_error("admin: accept() failed (%d: %s): not accepting for %d ms "
                     "(%llu time(s) since the last such line)", err,
                     evutil_socket_error_to_string(err), LB_ADMIN_RETRY_MS,
                     (unsigned long long)n);
}

static void lb_admin_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_admin *a = arg;
    if (a->nconns >= a->max_conns) {
        a->paused = 1 + LB_PAUSE_CAP;       /* a close will resume */
        return;
    }
    a->paused = 0;
    evconnlistener_enable(a->listener);
}

static void lb_admin_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    /* EMFILE and friends: without a pause libevent would call accept()
     * again at once, for ever, and log each failure. */
    lb_admin_pause(arg, LB_PAUSE_FD, EVUTIL_SOCKET_ERROR());
}

static void lb_admin_conn_free(struct lb_admin_conn *c)
{
    struct lb_admin *a = c->a;
    lb_list_remove(&c->node);
    bufferevent_free(c->bev);
    event_free(c->timer);
    free(c);
    a->nconns--;
    atomic_store(&a->shm->admin_connections, a->nconns);
    if (a->paused == 1 + LB_PAUSE_CAP && a->nconns < a->max_conns) {
        a->paused = 0;
        evconnlistener_enable(a->listener);
    }
}

static void lb_admin_conn_deadline(struct lb_admin_conn *c, uint64_t ms)
{
    struct timeval tv = lb_ms_timeval(ms);
    evtimer_add(c->timer, &tv);
}

static void lb_admin_conn_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct lb_admin_conn *c = arg;
    /* A client that half-closes after its request still reads the answer. */
    if ((what & BEV_EVENT_EOF) && c->state == LB_ADMIN_ANSWER) {
        c->eof = true;
        return;
    }
    lb_admin_conn_free(c);
}

static void lb_admin_conn_write(struct bufferevent *bev, void *arg)
{
    struct lb_admin_conn *c = arg;
    if (c->state != LB_ADMIN_ANSWER || evbuffer_get_length(bufferevent_get_output(bev)) != 0)
        return;
    if (c->eof) {
        lb_admin_conn_free(c);
        return;
    }
    /* Our FIN first; the client's then ends it (lingering close). */
    shutdown(bufferevent_getfd(bev), SHUT_WR);
    c->state = LB_ADMIN_LINGER;
    lb_admin_conn_deadline(c, LB_ADMIN_LINGER_MS);
}

/* HEAD gets the headers GET would (Content-Length included), no body. */
static void lb_admin_reply(struct lb_admin_conn *c, int status, const char *reason,
                           const char *type, const char *body, size_t len, bool head)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                             "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                        status, reason, type, len);
    if (!head)
        evbuffer_add(out, body, len);
    /* Whatever else the client sent is read and dropped from now on. */
    struct evbuffer *in = bufferevent_get_input(c->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    c->state = LB_ADMIN_ANSWER;
    lb_admin_conn_deadline(c, c->a->timeout_ms);
    bufferevent_enable(c->bev, EV_WRITE);
}

static void lb_admin_conn_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_admin_conn *c = arg;
    if (c->state == LB_ADMIN_HEAD) {
        atomic_fetch_add(&c->a->shm->admin_timeouts, 1);
        static const char msg[] = "request head not received in time\n";
        lb_admin_reply(c, 408, "Request Timeout", "text/plain", msg, sizeof(msg) - 1, false);
        return;
    }
    if (c->state == LB_ADMIN_ANSWER)
        atomic_fetch_add(&c->a->shm->admin_timeouts, 1);
    lb_admin_conn_free(c);
}

static void lb_admin_request(struct lb_admin_conn *c, struct evbuffer *in)
{
    struct lb_admin *a = c->a;
    size_t len = evbuffer_get_length(in);
    size_t n = len < LB_ADMIN_MAX_HEAD ? len : LB_ADMIN_MAX_HEAD;
    const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    size_t scanned = 0;
    size_t head = lb_http_head_end(buf, n, &scanned);
    if (head == 0) {
        if (len >= LB_ADMIN_MAX_HEAD)
            lb_admin_reply(c, 431, "Request Header Fields Too Large", "text/plain", "", 0, false);
        return;
    }
    struct lb_http_header hdrs[64];
    struct lb_http_msg m = { .headers = hdrs, .max_headers = 64 };
    struct lb_http_limits lim = { .max_request_line = 4096, .max_head = LB_ADMIN_MAX_HEAD,
                                  .max_headers = 64 };
    if (lb_http_parse_request(buf, head, &m, &lim) != 0) {
        static const char bad[] = "bad request\n";
        lb_admin_reply(c, 400, "Bad Request", "text/plain", bad, sizeof(bad) - 1, false);
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
        lb_admin_reply(c, 500, "Internal Server Error", "text/plain", "", 0, false);
        return;
    }
    if (get && plen == 8 && memcmp(m.target, "/metrics", 8) == 0) {
        lb_metrics_write(a->shm, f);
        type = "text/plain; version=0.0.4; charset=utf-8";
    } else if (get && plen == 7 && memcmp(m.target, "/status", 7) == 0) {
        lb_snapshot_write(a->shm, f);
        type = "application/json";
    } else if (get && plen == 1 && m.target[0] == '/') {
        size_t page_len;
        const char *page = lb_dashboard_page(&page_len);
        fwrite(page, 1, page_len, f);
        type = "text/html; charset=utf-8";
    }
    fclose(f);
    if (type == NULL) {
        static const char nf[] = "not found: try /, /metrics or /status\n";
        lb_admin_reply(c, 404, "Not Found", "text/plain", nf, sizeof(nf) - 1,
                       (m.flags & LB_MSG_HEAD) != 0);
    } else {
        lb_admin_reply(c, 200, "OK", type, body, blen, (m.flags & LB_MSG_HEAD) != 0);
    }
    free(body);
}

static void lb_admin_conn_read(struct bufferevent *bev, void *arg)
{
    struct lb_admin_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->state != LB_ADMIN_HEAD) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    lb_admin_request(c, in);
}

static void lb_admin_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                            int socklen, void *arg)
{
    (void)l;
    (void)sa;
    (void)socklen;
    struct lb_admin *a = arg;
    struct lb_admin_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->a = a;
    c->bev = bufferevent_socket_new(a->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(a->base, lb_admin_conn_timeout, c);
    if (c->bev == NULL || c->timer == NULL) {
        if (c->bev != NULL)
            bufferevent_free(c->bev);
        else
            close(fd);
        if (c->timer != NULL)
            event_free(c->timer);
        free(c);
        return;
    }
    lb_list_push(&a->conns, &c->node);
    a->nconns++;
    atomic_store(&a->shm->admin_connections, a->nconns);
    /* One deadline for the whole head, not restarted by each byte: a
     * client sending a byte now and then cannot hold its place. */
    lb_admin_conn_deadline(c, a->timeout_ms);
    bufferevent_setcb(c->bev, lb_admin_conn_read, lb_admin_conn_write, lb_admin_conn_event, c);
    bufferevent_enable(c->bev, EV_READ);
    /* Disabled inside its callback, libevent's accept loop stops here. */
    if (a->nconns >= a->max_conns && a->paused == 0)
        lb_admin_pause(a, LB_PAUSE_CAP, 0);
}

struct lb_admin *lb_admin_start(struct event_base *base, int fd, struct lb_shm_header *shm,
                                unsigned max_connections, uint64_t timeout_ms)
{
    struct lb_admin *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->shm = shm;
    a->base = base;
    a->max_conns = max_connections ? max_connections : 1;
    a->timeout_ms = timeout_ms;
    lb_list_init(&a->conns);
    atomic_store(&shm->admin_max_connections, a->max_conns);
    atomic_store(&shm->admin_connections, 0);
    a->retry = evtimer_new(base, lb_admin_retry, a);
    /* No LEV_OPT_CLOSE_ON_FREE: the socket is the master's, and survives us. */
    a->listener = a->retry ? evconnlistener_new(base, lb_admin_accept, a, LEV_OPT_CLOSE_ON_EXEC,
                                                -1, fd)
                           : NULL;
    if (a->listener == NULL) {
        lb_admin_stop(a);
        return NULL;
    }
    evconnlistener_set_error_cb(a->listener, lb_admin_accept_error);
    return a;
}

void lb_admin_stop(struct lb_admin *a)
{
    if (a == NULL)
        return;
    if (a->listener != NULL)
        evconnlistener_free(a->listener);
    while (!lb_list_empty(&a->conns)) {
        struct lb_admin_conn *c = LB_CONTAINER_OF(a->conns.next, struct lb_admin_conn, node);
        lb_list_remove(&c->node);
        bufferevent_free(c->bev);
        event_free(c->timer);
        free(c);
    }
    if (a->retry != NULL)
        event_free(a->retry);
    free(a);
}
