#include "master/health.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "shared/log.h"
#include "shared/shm.h"
#include "worker/http.h"
#include "worker/tls.h"

/* Probe lifecycle:
 *
 *   WAIT --interval--> CONNECTING --connected--> (path? SENT : pass)
 *    ^                     |                        |
 *    +--- result recorded -+-- error/deadline ------+-- response head read
 *
 * One deadline covers the whole probe (connect, request, response head):
 * a per-read timeout would let a backend that trickles its head stay UP
 * while real requests, bounded by backend_response, fail on it. The head
 * must be complete and valid by lbd's own response parser, and no larger
 * than limits.header_size, as it must be for the data path.
 */
struct lb_probe {
    struct lb_checker *owner;
    const struct lb_pool_cfg *pool;
    const struct lb_server_cfg *server;
    struct lb_shm_backend *shared;
    struct event *timer;        /* next probe */
    struct event *deadline;     /* end of the probe in flight */
    struct bufferevent *bev;
    size_t scanned;             /* lb_http_head_end's position */
    bool connected;
    /* The server this probe checks, copied at its start: a runtime
     * slot's may change between probes (shared/runtime.h). */
    struct lb_addr addr;
    char address[LB_ADDR_STR_MAX];
    uint32_t epoch;
};

struct lb_checker {
    struct event_base *base;
    struct lb_probe *probes;
    size_t nprobes;
    const struct lb_shm_header *shm;
    uint64_t generation;        /* of the configuration these checks are */
    struct lb_http_limits limits;
    struct lb_http_header *headers;     /* parser scratch, limits.max_headers */
    struct lb_log_limit skip_log;
};

int lb_health_record(struct lb_shm_backend *b, const struct lb_health_cfg *cfg,
                     const char *error)
{
    atomic_store(&b->last_check_ms, lb_wall_ms());
    uint32_t health = atomic_load(&b->health);
    if (error == NULL) {
        lb_counter_add(&b->checks_ok, 1);
        atomic_store(&b->check_failures, 0);
        uint32_t ok = atomic_fetch_add(&b->check_successes, 1) + 1;
        if (health == LB_HEALTH_DOWN && ok >= cfg->rise) {
            atomic_store(&b->down_reason, LB_DOWN_NONE);
            atomic_store(&b->last_change_ms, lb_wall_ms());
            atomic_store(&b->usable_ms, lb_now_ms());      /* slow start from now */
            atomic_store(&b->health, LB_HEALTH_UP);
            return 1;
        }
        return 0;
    }
    lb_counter_add(&b->checks_failed, 1);
    lb_shm_error_set(b, error);
    atomic_store(&b->check_successes, 0);
    uint32_t failed = atomic_fetch_add(&b->check_failures, 1) + 1;
    if (health == LB_HEALTH_UP && failed >= cfg->fall) {
        atomic_store(&b->down_reason, LB_DOWN_CHECK);
        atomic_store(&b->last_change_ms, lb_wall_ms());
        atomic_store(&b->health, LB_HEALTH_DOWN);
        return -1;
    }
    return 0;
}

static void lb_probe_schedule(struct lb_probe *p, uint64_t ms)
{
    struct timeval tv = lb_ms_timeval(ms);
    evtimer_add(p->timer, &tv);
}

static void lb_probe_done(struct lb_probe *p, const char *error)
{
    if (p->bev != NULL) {
        bufferevent_free(p->bev);
        p->bev = NULL;
    }
    evtimer_del(p->deadline);
    if (!lb_shm_generation_current(p->owner->shm, p->owner->generation))
        return;     /* retiring: a newer configuration owns health now */
    if (p->server->runtime && atomic_load(&p->shared->rt_epoch) != p->epoch) {
        /* Another server took the slot meanwhile: not its verdict. */
        lb_probe_schedule(p, p->pool->health.interval_ms);
        return;
    }
    int change = lb_health_record(p->shared, &p->pool->health, error);
    if (change > 0)
        lb_log_info("server %s of pool '%s' is UP (health check passed %u times)",
                    p->address, p->pool->name, p->pool->health.rise);
    else if (change < 0)
        lb_log_warn("server %s of pool '%s' is DOWN (%u failed health checks, last: %s)",
                    p->address, p->pool->name, p->pool->health.fall, error);
    lb_probe_schedule(p, p->pool->health.interval_ms);
}

/* Read until the response head is complete; judge it. */
static void lb_probe_read(struct bufferevent *bev, void *arg)
{
    struct lb_probe *p = arg;
    const struct lb_http_limits *lim = &p->owner->limits;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    size_t n = len < lim->max_head + 4 ? len : lim->max_head + 4;
    const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    if (buf == NULL) {
        lb_probe_done(p, "out of memory");
        return;
    }
    size_t head_len = lb_http_head_end(buf, n, &p->scanned);
    char why[LB_ERROR_TEXT];
    if (head_len == 0 || head_len > lim->max_head) {
        if (len > lim->max_head) {
            snprintf(why, sizeof(why), "response head over %zu bytes (limits.header_size)",
                     lim->max_head);
            lb_probe_done(p, why);
        }
        return;
    }
    struct lb_http_msg m = { .headers = p->owner->headers, .max_headers = lim->max_headers };
    if (lb_http_parse_response(buf, head_len, &m, false, lim) < 0) {
        lb_probe_done(p, "invalid response head");
        return;
    }
    const struct lb_health_cfg *h = &p->pool->health;
    if (m.status < h->expect_lo || m.status > h->expect_hi) {
        snprintf(why, sizeof(why), "status %d", m.status);
        lb_probe_done(p, why);
        return;
    }
    lb_probe_done(p, NULL);
}

static void lb_probe_event(struct bufferevent *bev, short what, void *arg)
{
    struct lb_probe *p = arg;
    if (what & BEV_EVENT_CONNECTED) {
        const struct lb_health_cfg *h = &p->pool->health;
        if (h->path[0] == '\0') {
            lb_probe_done(p, NULL);     /* TCP check: connected is healthy */
            return;
        }
        p->connected = true;
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: lbd-health\r\n"
                            "Connection: close\r\n\r\n", h->path, p->address);
        /* Reading stops just past the largest head there may be. */
        bufferevent_setwatermark(bev, EV_READ, 0, p->owner->limits.max_head + 4);
        bufferevent_enable(bev, EV_READ | EV_WRITE);
        return;
    }
    char why[LB_ERROR_TEXT];
    if (what & BEV_EVENT_EOF) {
        snprintf(why, sizeof(why), "connection closed before the response head ended");
    } else if (p->pool->tls != NULL && bufferevent_get_openssl_error(bev) != 0) {
        /* The handshake: the certificate's verdict says why best. */
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
        unsigned long e = bufferevent_get_openssl_error(bev);
        while (bufferevent_get_openssl_error(bev) != 0)
            ;
        if (v != X509_V_OK)
            snprintf(why, sizeof(why), "TLS: %s", X509_verify_cert_error_string(v));
        else
            snprintf(why, sizeof(why), "TLS: %s", ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "handshake failed");
    } else {
        int err = EVUTIL_SOCKET_ERROR();
        snprintf(why, sizeof(why), "%s", evutil_socket_error_to_string(err));
    }
    lb_probe_done(p, why);
}

static void lb_probe_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_probe *p = arg;
    char why[LB_ERROR_TEXT];
    uint64_t ms = p->pool->health.timeout_ms;
    if (!p->connected)
        snprintf(why, sizeof(why), "timeout: not connected after %llu ms",
                 (unsigned long long)ms);
    else
        snprintf(why, sizeof(why), "timeout: no complete response head after %llu ms (%zu bytes)",
                 (unsigned long long)ms, evbuffer_get_length(bufferevent_get_input(p->bev)));
    lb_probe_done(p, why);
}

/* The check could not even start for a reason of our own (no fd, no
 * memory): that says nothing about the server, so no verdict is recorded;
 * the probe tries again after its interval. */
static void lb_probe_skip(struct lb_probe *p, const char *what, int err)
{
    uint64_t n;
    if (lb_log_limit_hit(&p->owner->skip_log, lb_now_ms(), &n))
        lb_log_error("health check of %s skipped: %s failed (%d: %s) (%llu check(s) skipped "
                     "since the last such line)", p->address, what, err, strerror(err),
                     (unsigned long long)n);
    lb_probe_schedule(p, p->pool->health.interval_ms);
}

static void lb_probe_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_probe *p = arg;
    struct event_base *base = p->owner->base;
    /* maint (admin API) means no traffic at all, checks included: the
     * server keeps its last health until it leaves maint. */
    if (lb_backend_admin_state(p->shared) == LB_BACKEND_MAINT) {
        lb_probe_schedule(p, p->pool->health.interval_ms);
        return;
    }
    if (p->server->runtime) {
        /* An EMPTY slot has no one to check; the address of one that is
         * not changes only while it is EMPTY (shared/runtime.h). */
        if (atomic_load(&p->shared->rt_state) == LB_RT_EMPTY) {
            lb_probe_schedule(p, p->pool->health.interval_ms);
            return;
        }
        p->epoch = atomic_load(&p->shared->rt_epoch);
        p->addr = p->shared->rt_addr;
        snprintf(p->address, sizeof(p->address), "%s", p->shared->rt_address);
    }
    const struct sockaddr *sa = (const struct sockaddr *)&p->addr.ss;
    p->scanned = 0;
    p->connected = false;
    int s = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0) {
        int err = errno;
        if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
            lb_probe_skip(p, "socket()", err);
        else
            lb_probe_done(p, "socket() failed");
        return;
    }
    if (p->pool->tls != NULL) {
        /* A TLS pool is checked over TLS, verified as its requests are: a
         * server that fails the handshake fails the check. The bufferevent
         * makes its own socket at the connect (one made before would be
         * handshaken before it is connected). */
        close(s);
        char ip[LB_ADDR_STR_MAX];
        lb_tls_address_host(p->server->address, ip, sizeof(ip));
        SSL *ssl = lb_tls_client_new(p->pool->tls, ip);
        p->bev = ssl ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
        if (p->bev == NULL) {
            SSL_free(ssl);
            lb_probe_skip(p, "bufferevent_openssl_socket_new()", ENOMEM);
            return;
        }
        bufferevent_openssl_set_allow_dirty_shutdown(p->bev, 1);
    } else {
        p->bev = bufferevent_socket_new(base, s, BEV_OPT_CLOSE_ON_FREE);
    }
    if (p->bev == NULL) {
        close(s);
        lb_probe_skip(p, "bufferevent_socket_new()", ENOMEM);
        return;
    }
    struct timeval tv = lb_ms_timeval(p->pool->health.timeout_ms);
    evtimer_add(p->deadline, &tv);
    bufferevent_setcb(p->bev, lb_probe_read, NULL, lb_probe_event, p);
    if (bufferevent_socket_connect(p->bev, sa, (int)p->addr.len) < 0) {
        int err = EVUTIL_SOCKET_ERROR();
        lb_probe_done(p, evutil_socket_error_to_string(err));
    }
}

struct lb_checker *lb_health_start(struct event_base *base, const struct lb_config *cfg,
                                  struct lb_shm_header *shm)
{
    struct lb_checker *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->base = base;
    h->shm = shm;
    h->generation = atomic_load(&shm->generation);     /* set before the fork */
    h->limits = (struct lb_http_limits){
        .max_request_line = cfg->limits.request_line,
        .max_head = cfg->limits.header_size,
        .max_headers = cfg->limits.headers,
    };
    h->headers = calloc(cfg->limits.headers ? cfg->limits.headers : 1, sizeof(*h->headers));
    if (h->headers == NULL) {
        free(h);
        return NULL;
    }
    size_t n = 0;
    for (size_t i = 0; i < cfg->npools; i++)
        if (cfg->pools[i].health.enabled)
            n += cfg->pools[i].nservers;
    h->probes = calloc(n ? n : 1, sizeof(*h->probes));
    if (h->probes == NULL) {
        free(h->headers);
        free(h);
        return NULL;
    }
    for (size_t i = 0; i < cfg->npools; i++) {
        const struct lb_pool_cfg *pool = &cfg->pools[i];
        if (!pool->health.enabled)
            continue;
        for (size_t j = 0; j < pool->nservers; j++) {
            struct lb_probe *p = &h->probes[h->nprobes];
            p->owner = h;
            p->pool = pool;
            p->server = &pool->servers[j];
            p->shared = lb_shm_backend(shm, pool->servers[j].shm_id);
            p->addr = pool->servers[j].addr;
            snprintf(p->address, sizeof(p->address), "%s", pool->servers[j].address);
            p->timer = evtimer_new(base, lb_probe_start, p);
            p->deadline = evtimer_new(base, lb_probe_deadline, p);
            h->nprobes++;
            if (p->timer == NULL || p->deadline == NULL) {
                lb_health_stop(h);
                return NULL;
            }
            /* Spread the first probes over the interval: no thundering herd. */
            lb_probe_schedule(p, pool->health.interval_ms * j / pool->nservers);
        }
    }
    return h;
}

void lb_health_stop(struct lb_checker *h)
{
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->nprobes; i++) {
        if (h->probes[i].bev != NULL)
            bufferevent_free(h->probes[i].bev);
        if (h->probes[i].timer != NULL)
            event_free(h->probes[i].timer);
        if (h->probes[i].deadline != NULL)
            event_free(h->probes[i].deadline);
    }
    free(h->probes);
    free(h->headers);
    free(h);
}
