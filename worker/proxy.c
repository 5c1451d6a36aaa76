#include "worker/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/util.h>

#include "shared/log.h"
#include "worker/accesslog.h"
#include "worker/fault.h"
#include "worker/breaker.h"
#include "worker/challenge.h"
#include "worker/conn.h"
#include "worker/freelist.h"
#include "worker/ratelimit.h"
#include "worker/retry.h"
#include "worker/route.h"
#include "worker/sticky.h"
#include "worker/tls.h"
#include "worker/upstream.h"

enum lb_session_state {
    LB_S_HEAD,          /* waiting for a request head */
    LB_S_QUEUED,        /* a request waiting in its pool's queue (max_requests) */
    LB_S_PROXY,         /* forwarding a request, relaying its response */
    LB_S_RETRY,         /* a try failed: waiting out the backoff before the next */
    LB_S_TUNNEL,        /* after 101: bytes both ways until either side ends */
    LB_S_CLOSING,       /* flushing the last response, then close */
    LB_S_DELAYED,       /* a leaky bucket holds the request (the session timer),
                         * or a fleet limit asked redis (x->rl_pending) */
};

/* What one exchange (a request and its response) needs while it is under
 * way, from the first byte of its head to the end of its response: an idle
 * keep-alive connection holds none (its memory is what 10,000 idle clients
 * cost). From a per-worker free list, like the session timers. */
struct lb_exchange {
    size_t head_len;
    size_t scan;                        /* head-end scan position (client) */
    size_t resp_scan;                   /* head-end scan position (backend) */
    enum lb_http_body req_body;
    enum lb_http_body resp_body;
    uint64_t req_left;
    uint64_t resp_left;
    uint64_t req_body_bytes;            /* received so far (limits.body) */
    uint64_t sent_us;                   /* request dispatched (wall clock) */
    uint64_t breaker_ticket;            /* a half-open breaker's trial: its round */
    uint64_t breaker_ms;                /* CLOCK_MONOTONIC at the pick (breaker on) */
    uint64_t body_progress;             /* bytes since the client_body timer was armed */
    uint64_t request_id[2];             /* the X-Request-Id made for it, if it had none */
    /* Retries (worker/retry.h). */
    struct evbuffer *replay;            /* a request with a body: its head and the body
                                         * so far, kept to send again; NULL: not kept */
    struct lb_server_rt *retry_held;    /* whose retry count holds this request's retry */
    uint64_t tried;                     /* servers tried: bit (index % 64) */
    uint8_t retries;                    /* retries made (a stale connection's resend is none) */
    bool retry_waiting;                 /* the held retry waits out its backoff */
    bool sticky;                        /* its pool has sticky sessions (worker/sticky.h) */
    uint16_t sticky_pin;                /* ... 1 + the server its cookie named; 0: none */
    uint64_t interim_out;               /* queued to the client before the final
                                         * head: 1xx heads, a probe */
    struct lb_chunked req_chunk;
    struct lb_chunked resp_chunk;
    struct lb_rl_pending *rl_pending;   /* asking redis (a fleet limit) */
    uint16_t fault_abort;               /* after the fault's delay: answer this status */
    /* QUEUED: the place in the pool's queue (worker/queue.h). Set when a
     * request joins the queue, left alone by the reset between requests
     * (lb_session_reset_request zeroes what comes before). */
    struct lb_list qnode;
    struct lb_session *qsession;
    struct lb_pool_rt *qpool;
    /* Last: between requests only its n and mark are reset (the rest is
     * read only as far as they say). */
    struct lb_rl_note rl;               /* rate limits: response fields, log mark */
};

struct lb_session {
    struct lb_list node;
    struct lb_worker *w;
    struct lb_conn *client;
    struct lb_upconn *up;               /* NULL outside PROXY */
    struct lb_server_rt *server;
    struct event *timer;                /* client_header, client_body progress,
                                         * linger, tunnel idle; NULL when none */
    struct event *deadline_timer;       /* only once a pool has a deadline */
    char client_ip[INET6_ADDRSTRLEN];
    struct lb_access_entry *acc;        /* with x, when access_log is on */
    struct lb_exchange *x;              /* NULL while idle */
    unsigned served;                    /* exchanges completed on this connection */
    uint32_t req_flags;
    uint32_t conn_token;                /* max_connections_per_ip count to give back */
    uint64_t rl_ip_key;                 /* rate limits: the peer's key, once hashed (0: not yet) */
    uint8_t state;
    uint8_t req_minor;
    uint16_t listener;                  /* index in cfg->listeners */
    /* Bits: the session is what every idle client costs. */
    bool keepalive : 1;                 /* client may keep the connection */
    bool client_eof : 1;
    bool head_pending : 1;              /* request head still in client input */
    bool up_reused : 1;
    bool stale_resent : 1;              /* this try went again on a new connection */
    bool resp_head_done : 1;
    bool resp_started : 1;              /* response bytes queued to the client */
    bool interim_sent : 1;              /* a backend's 1xx head went to the client */
    bool req_done : 1;
    bool resp_done : 1;
    bool up_eof : 1;                    /* the backend closed its side */
    bool counted_failure : 1;           /* a 5xx already reported (on_5xx) */
    bool shut : 1;                      /* CLOSING: our FIN is sent */
    bool quick_close : 1;               /* CLOSING without lingering */
    bool resume_head : 1;               /* parse the next request once flushed */
    bool peer_trusted : 1;              /* client is in trusted_proxies */
    bool upgrade : 1;                   /* request asks for a protocol upgrade */
    bool slot : 1;                      /* counted in flight to server (max_requests) */
    bool rl_passed : 1;                 /* held by a leaky bucket: not judged again */
    bool fault_passed : 1;              /* faults drawn for this request (worker/fault.h) */
    bool tls : 1;                       /* accepted on a TLS listener */
    bool hsts : 1;                      /* ... with hsts: answers carry it */
    bool redirect : 1;                  /* accepted on a redirect_https listener */
};

static const struct lb_listener_cfg *lb_session_listener(const struct lb_session *s)
{
    return &s->w->cfg->listeners[s->listener];
}

static void lb_session_close(struct lb_session *s);
static void lb_session_try_head(struct lb_session *s);
static void lb_session_error(struct lb_session *s, int status);
static void lb_up_read(struct lb_conn *conn, void *arg);
static void lb_up_write(struct lb_conn *conn, void *arg);
static void lb_up_event(struct lb_conn *conn, short what, void *arg);

static unsigned lb_status_class(int status)
{
    unsigned c = (unsigned)(status / 100);
    return c >= 1 && c <= 5 ? c - 1 : 4;
}

static const char *lb_reason(int status)
{
    switch (status) {
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default:  return "Error";
    }
}

/* ---- timers and teardown -------------------------------------------- */

/* Times are on the wall clock (the access log prints them): one set back
 * must not make a duration of 584,000 years. */
static uint64_t lb_elapsed_us(uint64_t from, uint64_t to)
{
    return to > from ? to - from : 0;
}

/* Bytes queued to the client, for the counters and the access log. */
static void lb_session_sent(struct lb_session *s, size_t n)
{
    lb_counter_add(&s->w->slot_stats->bytes_out, n);
    if (s->acc != NULL)
        s->acc->bytes += n;
}

/* The current exchange ended, however it ended: its log line, once. */
static void lb_session_log(struct lb_session *s)
{
    struct lb_access_entry *e = s->acc;
    if (e == NULL || e->start_us == 0)
        return;
    /* Tries: the first and each retry started (a stale connection's resend
     * is none). */
    e->attempts = s->server == NULL ? 0 : 1u + (s->x != NULL ? s->x->retries : 0);
    lb_accesslog_write(e, s->client_ip, s->server ? s->server->cfg->address : NULL,
                       e->request_id, s->tls ? lb_tls_version(s->client) : NULL,
                       s->tls ? lb_tls_cipher(s->client) : NULL, lb_wall_us());
    e->start_us = e->connect_us = e->header_us = e->bytes = 0;
    e->status = e->upstream_status = 0;
    e->limited[0] = '\0';
    e->fault[0] = '\0';
}

static void lb_session_log_start(struct lb_session *s, const char *buf, size_t head_len,
                                 const struct lb_http_msg *m)
{
    struct lb_access_entry *e = s->acc;
    if (e == NULL)
        return;
    const char *eol = memchr(buf, '\r', head_len);
    lb_accesslog_copy(e->request, sizeof(e->request), buf, eol ? (size_t)(eol - buf) : 0);
    e->referer[0] = e->user_agent[0] = '\0';
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct lb_http_header *h = &m->headers[i];
        if (h->name_len == 7 && lb_str_ieq(h->name, 7, "referer"))
            lb_accesslog_copy(e->referer, sizeof(e->referer), h->value, h->value_len);
        else if (h->name_len == 10 && lb_str_ieq(h->name, 10, "user-agent"))
            lb_accesslog_copy(e->user_agent, sizeof(e->user_agent), h->value, h->value_len);
    }
    e->request_id[0] = '\0';
    e->start_us = lb_wall_us();
}

static void lb_count_timeout(struct lb_session *s, enum lb_timeout_kind k)
{
    lb_counter_add(&s->w->slot_stats->timeouts[k], 1);
}

static void lb_timer_arm(struct event *ev, uint64_t ms);
static void lb_deadline_timeout(evutil_socket_t fd, short what, void *arg);

static void lb_session_deadline_off(struct lb_session *s)
{
    if (s->deadline_timer != NULL)
        event_del(s->deadline_timer);
}

static void lb_client_timeout(evutil_socket_t fd, short what, void *arg);

/* What an idle connection gives back waits here for the next request. Up
 * to this many of each are kept: more than a worker has requests in flight
 * under the benchmarks' loads, and ~1.5 MiB in all (most of it log
 * entries). */
#define LB_FREELIST_KEEP 1024
static struct lb_freelist lb_timers = LB_FREELIST_INIT(sizeof(struct event), LB_FREELIST_KEEP);
static struct lb_freelist lb_exchanges =
    LB_FREELIST_INIT(sizeof(struct lb_exchange), LB_FREELIST_KEEP);
static struct lb_freelist lb_log_entries =
    LB_FREELIST_INIT(sizeof(struct lb_access_entry), LB_FREELIST_KEEP);

static void lb_session_timer_stop(struct lb_session *s)
{
    struct event *t = s->timer;
    if (t == NULL)
        return;
    event_del(t);
    lb_freelist_put(&lb_timers, t);
    s->timer = NULL;
}

static bool lb_session_timer_pending(const struct lb_session *s)
{
    return s->timer != NULL && evtimer_pending(s->timer, NULL);
}

/* (Re)arm the session's timer MS from now; 0 stops it. */
static void lb_session_timer_arm(struct lb_session *s, uint64_t ms)
{
    if (ms == 0) {
        lb_session_timer_stop(s);
        return;
    }
    if (s->timer == NULL) {
        struct event *t = lb_freelist_take(&lb_timers);
        if (t == NULL)
            return;     /* out of memory: this wait goes unbounded */
        evtimer_assign(t, s->w->base, lb_client_timeout, s);
        s->timer = t;
    }
    lb_timer_arm(s->timer, ms);
}

/* The exchange state (and access-log entry) for S's next request, zeroed.
 * false when out of memory. */
static bool lb_session_exchange_take(struct lb_session *s)
{
    if (s->x != NULL)
        return true;
    struct lb_exchange *x = lb_freelist_take(&lb_exchanges);
    if (x == NULL)
        return false;
    if (s->w->cfg->access_log != NULL && (s->acc = lb_freelist_take(&lb_log_entries)) == NULL) {
        lb_freelist_put(&lb_exchanges, x);
        return false;
    }
    s->x = x;
    return true;
}

/* The request's retry (worker/retry.h) is over: the try it started was
 * answered, or the request ends. */
static void lb_session_retry_release(struct lb_session *s)
{
    struct lb_exchange *x = s->x;
    struct lb_server_rt *held = x->retry_held;
    if (held == NULL)
        return;
    if (x->retry_waiting)
        lb_retry_gauge(&held->shared->retries_waiting, &held->stats->retries_waiting, -1);
    lb_retry_gauge(&held->shared->retries, &held->stats->retries, -1);
    x->retry_held = NULL;
    x->retry_waiting = false;
}

/* The exchange no longer needs to send its request again: its final
 * answer began, or it ends in an error or a close. (Cleared there, so that
 * an exchange that ends well costs no check at its end.) */
static void lb_session_retry_clear(struct lb_session *s)
{
    struct lb_exchange *x = s->x;
    if (x == NULL)
        return;
    lb_session_retry_release(s);
    if (x->replay != NULL) {
        evbuffer_free(x->replay);
        x->replay = NULL;
    }
}

/* Give them back: the exchange is over and logged (or never started). */
static void lb_session_exchange_put(struct lb_session *s)
{
    lb_freelist_put(&lb_exchanges, s->x);
    lb_freelist_put(&lb_log_entries, s->acc);
    s->x = NULL;
    s->acc = NULL;
}

static void lb_timer_arm(struct event *ev, uint64_t ms)
{
    struct timeval scratch;
    if (ms != 0)
        evtimer_add(ev, lb_conn_timeout(ms, &scratch));
}

/* Backend connection timeouts once connected, from the pool's timeouts:
 * stalled writes always; backend_response only once the whole request is
 * sent (a slow upload is the client's time, judged by client_body). Until
 * the response head is complete, backend_response runs on the session
 * timer, from the request to the end of the final head: the connection's
 * read clock restarts at every byte, and a backend trickling its head or
 * sending 1xx heads without end would never run out of it. After the head
 * it bounds each pause between body reads. */
static void lb_session_up_timeouts(struct lb_session *s)
{
    const struct lb_timeouts *t = &s->server->pool->cfg->timeouts;
    bool head_wait = s->req_done && !s->resp_head_done;
    lb_conn_set_timeouts(s->up->conn, s->req_done && !head_wait ? t->backend_response_ms : 0,
                         t->send_ms);
    if (head_wait)     /* (retries.per_try_timeout if shorter) */
        lb_session_timer_arm(s, s->server->pool->cfg->retries.head_timeout_ms);
}

/* Between requests. A draining worker keeps an idle keep-alive connection
 * open for its next request (answered with Connection: close, then closed)
 * for drain_idle at most: closing it at once would race a client that is
 * sending on it at that instant, and lose that request. */
static void lb_session_set_idle(struct lb_session *s)
{
    struct lb_worker *w = s->w;
    lb_conn_set_timeouts(s->client, w->draining ? w->drain_idle_ms : w->cfg->timeouts.client_idle_ms,
                         w->cfg->timeouts.send_ms);
}

/* Tell the server's circuit breaker what became of the request. Only the
 * current generation's workers change breaker state (see
 * lb_shm_generation_current), except that a trial's outcome is always
 * reported: its round would otherwise wait for the trial timeout. */
static void lb_session_report(struct lb_session *s, enum lb_breaker_outcome outcome,
                              uint64_t retry_after_ms)
{
    const struct lb_pool_rt *pool = s->server->pool;
    if (!pool->cfg->breaker.enabled)
        return;
    uint64_t ticket = s->x != NULL ? s->x->breaker_ticket : 0;
    if (ticket != 0)
        s->x->breaker_ticket = 0;
    else if (!lb_shm_generation_current(s->w->shm, s->w->generation))
        return;
    /* A success counts at its pick's time; anything else reads the clock. */
    uint64_t now_ms = outcome == LB_BREAKER_SUCCESS && s->x != NULL ? s->x->breaker_ms : 0;
    const struct lb_breaker_site site = { s->server->shared, pool->shm, pool->cfg };
    lb_breaker_report(&site, ticket, outcome, retry_after_ms, now_ms);
}

/* The exchange ends in an error or a close: a trial it still holds had no
 * verdict (the client left, or the request was never sent), and goes back
 * to the breaker. (An exchange that ends well has reported its outcome.) */
static void lb_session_trial_end(struct lb_session *s)
{
    if (s->x != NULL && s->x->breaker_ticket != 0 && s->server != NULL)
        lb_session_report(s, LB_BREAKER_ABANDONED, 0);
}

/* A failure that counts against the backend: counters and breaker. */
static void lb_session_backend_failed(struct lb_session *s)
{
    lb_counter_add(&s->server->stats->failures, 1);
    lb_session_report(s, LB_BREAKER_FAILURE, 0);
}

/* The exchange went through: duration histogram, breaker. */
static void lb_session_backend_done(struct lb_session *s)
{
    static const uint64_t bounds[LB_DURATION_BUCKETS] = LB_DURATION_BOUNDS_US;
    uint64_t d = lb_elapsed_us(s->x->sent_us, lb_wall_us());
    unsigned k = 0;
    while (k + 1 < LB_DURATION_BUCKETS && d > bounds[k])
        k++;
    lb_counter_add(&s->server->stats->duration[k], 1);
    lb_counter_add(&s->server->stats->duration_sum_us, d);
    if (!s->counted_failure)
        lb_session_report(s, LB_BREAKER_SUCCESS, 0);
}

static void lb_queue_kick(struct lb_pool_rt *pool);

/* The request's place in flight to its server (taken by lb_session_pick)
 * is given back: a request of the pool that waits in this worker's queue
 * may take it (after the callback in progress). */
static inline void lb_session_slot_put(struct lb_session *s)
{
    if (!s->slot)
        return;
    s->slot = false;
    struct lb_server_rt *srv = s->server;
    lb_counter_add(&srv->stats->active, (uint64_t)-1);
    lb_backend_put(srv->shared);
    if (srv->pool->queue.n > 0)
        lb_queue_kick(srv->pool);
}

/* The backend connection goes (to the pool when REUSABLE); the request's
 * place in flight stays (a stale pooled connection's retry). */
static void lb_session_drop_up(struct lb_session *s, bool reusable)
{
    if (s->up == NULL)
        return;
    if (reusable)
        s->up->requests++;
    lb_conn_unpair(s->client);
    lb_upconn_release(s->up, reusable);
    s->up = NULL;
}

/* The exchange with the server is over: its connection and its place. */
static void lb_session_release_up(struct lb_session *s, bool reusable)
{
    lb_session_slot_put(s);
    lb_session_drop_up(s, reusable);
}

/* A request waiting in its pool's queue leaves it (to be answered by lbd,
 * or closed); lb_queue_run takes the ones it sends out itself. */
static void lb_session_unqueue(struct lb_session *s)
{
    if (s->state != LB_S_QUEUED)
        return;
    lb_queue_leave(&s->x->qpool->queue, &s->x->qnode);
    s->state = LB_S_HEAD;
}

static void lb_session_close(struct lb_session *s)
{
    struct lb_worker *w = s->w;
    lb_session_unqueue(s);
    lb_session_trial_end(s);
    lb_session_retry_clear(s);
    lb_session_log(s);
    lb_session_release_up(s, false);
    lb_session_timer_stop(s);
    if (s->x != NULL && s->x->rl_pending != NULL) {
        lb_ratelimit_cancel(s->x->rl_pending);
        s->x->rl_pending = NULL;
    }
    lb_session_exchange_put(s);
    if (s->deadline_timer != NULL)
        event_free(s->deadline_timer);
    lb_ratelimit_conn_close(w->rl, s->conn_token);
    lb_conn_free(s->client);
    lb_list_remove(&s->node);
    w->nsessions--;
    lb_counter_add(&w->slot_stats->active_connections, (uint64_t)-1);
    free(s);
    lb_worker_session_gone(w);
}

/* Close after the client has everything queued. Like nginx's lingering
 * close: send our FIN first and read (and drop) until the client's, so
 * unread request bytes cannot make the kernel reset the connection and
 * destroy the response in flight. */
#define LB_LINGER_MS 5000
#define LB_BODY_PROGRESS 8192

/* Our FIN is sent: the client has LB_LINGER_MS in all to send its own (a
 * client trickling bytes cannot hold the connection). */
static void lb_session_shut(struct lb_session *s)
{
    if (s->shut)
        return;
    s->shut = true;
    lb_conn_shutdown(s->client);        /* (TLS: close_notify first) */
    lb_session_timer_arm(s, LB_LINGER_MS);
}

static void lb_session_linger(struct lb_session *s)
{
    lb_session_unqueue(s);
    lb_session_retry_clear(s);
    lb_session_log(s);
    s->state = LB_S_CLOSING;
    lb_session_release_up(s, false);
    lb_session_deadline_off(s);
    lb_session_timer_stop(s);
    /* Sending the rest is bounded by the send timeout (a slow reader gets
     * every byte, and what it sends meanwhile is read and dropped without a
     * clock); only then does the bounded linger start (lb_session_shut). */
    lb_conn_set_timeouts(s->client, 0, s->w->cfg->timeouts.send_ms);
    lb_conn_set_last(s->client);
    bool flushed = lb_conn_out_len(s->client) == 0;
    if (s->client_eof || s->quick_close) {
        /* The client already sent its FIN, or has nothing left to send
         * (request read whole, nothing buffered): flush, then close. */
        lb_conn_read_disable(s->client);
        if (flushed)
            lb_session_close(s);
        return;
    }
    lb_conn_read_enable(s->client);
    if (flushed)
        lb_session_shut(s);
}

/* Between exchanges with the last answer still leaving: close once it has
 * left, bounded by the send timeout (a graceful stop and a client's FIN must
 * not cut what the client was sent). Lingering does just that; the exchange
 * is already logged, and lb_session_log does not log it twice. */
static void lb_session_close_when_sent(struct lb_session *s)
{
    s->keepalive = false;
    s->quick_close = true;
    lb_session_linger(s);
}

static void lb_session_reset_request(struct lb_session *s)
{
    s->state = LB_S_HEAD;
    s->server = NULL;
    s->head_pending = s->up_reused = s->stale_resent = s->upgrade = s->rl_passed = false;
    s->fault_passed = false;
    s->resp_head_done = s->resp_started = s->req_done = s->resp_done = s->up_eof = false;
    s->counted_failure = s->interim_sent = false;
    if (s->x != NULL) {
        /* (retry state cleared already; the queue's node is set when it
         * joins; the rate-limit note is reset by its count) */
        memset(s->x, 0, offsetof(struct lb_exchange, qnode));
        s->x->rl.n = s->x->rl.mark = 0;
    }
    s->req_flags = 0;
    lb_session_timer_stop(s);
    lb_session_deadline_off(s);
}

/* ---- responses lbd writes itself -------------------------------------- */

static void lb_session_count_response(struct lb_session *s, int status)
{
    lb_counter_add(&s->w->slot_stats->responses[lb_status_class(status)], 1);
    if (s->acc != NULL)
        s->acc->status = status;
}

/* An answer lbd made itself (an error, a refusal, an ACME challenge) is in
 * the client's buffer, SENT bytes: count and log it, then end the
 * connection or wait for the next request on it. */
static void lb_session_answered(struct lb_session *s, int status, size_t sent, bool keep)
{
    if (s->acc != NULL && s->acc->start_us == 0) {
        /* Answered before a head was parsed (408, 414, 431, 400): logged too. */
        snprintf(s->acc->request, sizeof(s->acc->request), "-");
        s->acc->referer[0] = s->acc->user_agent[0] = s->acc->request_id[0] = '\0';
        s->acc->start_us = lb_wall_us();
    }
    lb_session_sent(s, sent);
    lb_session_count_response(s, status);
    lb_session_log(s);
    if (!keep) {
        lb_session_linger(s);
        return;
    }
    if (s->head_pending) {
        evbuffer_drain(s->client->in, s->x->head_len);
        lb_counter_add(&s->w->slot_stats->bytes_in, s->x->head_len);
    }
    s->served++;
    lb_session_reset_request(s);
    lb_session_set_idle(s);
    s->resume_head = lb_conn_in_len(s->client) > 0;     /* see lb_client_write */
}

/* Answer STATUS, with the header lines EXTRA (EXTRA_LEN bytes) when given.
 * Once response bytes went out nothing can be said any more: the connection
 * is cut so the client sees a truncated response. A refusal by a rate limit
 * (LIMITED) keeps the connection like a backend's error: the request was
 * read whole and said nothing wrong. */
static void lb_session_answer(struct lb_session *s, int status, const char *extra,
                              size_t extra_len, bool limited)
{
    lb_session_unqueue(s);
    lb_session_trial_end(s);
    lb_session_retry_clear(s);
    if (s->resp_started) {
        lb_session_linger(s);
        return;
    }
    /* Keep the connection only when the request was consumed whole and the
     * error is the backend's, not the request's. */
    bool keep = s->keepalive && s->req_done && !s->w->draining && !s->client_eof &&
                (limited || status == 404 || status == 308 ||
                 (status >= 500 && status != 501 && status != 505));
    lb_session_release_up(s, false);
    if (lb_conn_ensure_buffers(s->client) < 0) {
        lb_session_close(s);    /* out of memory: no answer possible */
        return;
    }

    /* Assembled by hand, not printf: under a flood, refusals are most of
     * what a worker does, and must cost less than proxying. */
    const char *reason = lb_reason(status);
    size_t rlen = strlen(reason);
    char code[3] = { (char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                     (char)('0' + status % 10) };
    size_t blen = sizeof(code) + 1 + rlen + 1;         /* "429 Too Many Requests\n" */
    char clen[2] = { (char)('0' + blen / 10 % 10), (char)('0' + blen % 10) };  /* < 100 */
    const struct lb_tls_cfg *hsts = s->hsts ? lb_session_listener(s)->tls : NULL;
    struct evbuffer *out = s->client->out;
    size_t before = evbuffer_get_length(out);
    /* Reserved whole and committed once (as a forwarded head is): 128
     * bytes cover the status lines and fixed fields. */
    size_t need = 128 + 2 * rlen + extra_len + (hsts ? sizeof("Strict-Transport-Security: \r\n") +
                                                      hsts->hsts_len : 0);
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)need, &v, 1) < 1 || v.iov_len < need) {
        lb_session_close(s);    /* out of memory: no answer possible */
        return;
    }
    char *buf = v.iov_base;
    size_t n = 0;
#define LB_ANSWER_PUT(p, len) do { memcpy(buf + n, (p), (len)); n += (len); } while (0)
#define LB_ANSWER_STR(lit) LB_ANSWER_PUT(lit, sizeof(lit) - 1)
    LB_ANSWER_STR("HTTP/1.1 ");
    LB_ANSWER_PUT(code, sizeof(code));
    LB_ANSWER_STR(" ");
    LB_ANSWER_PUT(reason, rlen);
    /* 204 and 304 have no content, and an answer to HEAD none of its own
     * (RFC 9110 6.4.1): a body after the head would be read by the client
     * as the start of the next answer on the connection. (Both come from
     * a fault's abort: X-Lbd-Fault-Abort is any of 200-599.) */
    bool no_content = status == 204 || status == 304;
    bool body = !no_content && !(s->req_flags & LB_MSG_HEAD);
    if (!no_content) {
        LB_ANSWER_STR("\r\nContent-Type: text/plain\r\nContent-Length: ");
        LB_ANSWER_PUT(clen + (blen < 10), 2 - (blen < 10));
    }
    LB_ANSWER_STR("\r\n");
    if (extra_len > 0)
        LB_ANSWER_PUT(extra, extra_len);
    if (hsts) {
        LB_ANSWER_STR("Strict-Transport-Security: ");
        LB_ANSWER_PUT(hsts->hsts, hsts->hsts_len);
        LB_ANSWER_STR("\r\n");
    }
    if (!keep)
        LB_ANSWER_STR("Connection: close\r\n");
    LB_ANSWER_STR("\r\n");
    if (body) {
        LB_ANSWER_PUT(code, sizeof(code));
        LB_ANSWER_STR(" ");
        LB_ANSWER_PUT(reason, rlen);
        LB_ANSWER_STR("\n");
    }
#undef LB_ANSWER_STR
#undef LB_ANSWER_PUT
    v.iov_len = n;
    evbuffer_commit_space(out, &v, 1);
    lb_session_answered(s, status, evbuffer_get_length(out) - before, keep);
}

static void lb_session_error(struct lb_session *s, int status)
{
    lb_session_answer(s, status, NULL, 0, false);
}

/* ---- request: client -> backend ---------------------------------------- */

/* A head is written into one block reserved for its whole bound and
 * committed once: one copy per piece, one buffer update and one callback
 * per head instead of one per piece. The bound comes from the parsed head,
 * so a put past it would be a bug: it is refused and the head dropped. */
struct lb_head_out {
    struct evbuffer *buf;
    struct evbuffer_iovec v;
    char *p, *end;
};

static bool lb_head_begin(struct lb_head_out *o, struct evbuffer *buf, size_t bound)
{
    o->buf = buf;
    if (evbuffer_reserve_space(buf, (ev_ssize_t)bound, &o->v, 1) < 1)
        return false;
    o->p = o->v.iov_base;
    o->end = o->p + bound;
    return true;
}

static void lb_head_put(struct lb_head_out *o, const void *s, size_t n)
{
    if (o->p == NULL || (size_t)(o->end - o->p) < n) {
        o->p = o->end = NULL;
        return;
    }
    memcpy(o->p, s, n);
    o->p += n;
}

static void lb_head_str(struct lb_head_out *o, const char *s)
{
    lb_head_put(o, s, strlen(s));
}

/* Bytes committed: 0 if the head outgrew its bound (nothing is added). */
static size_t lb_head_commit(struct lb_head_out *o)
{
    if (o->p == NULL) {
        lb_log_error("a message head outgrew its bound: not forwarded");
        evbuffer_commit_space(o->buf, &o->v, 0);
        return 0;
    }
    o->v.iov_len = (size_t)(o->p - (char *)o->v.iov_base);
    evbuffer_commit_space(o->buf, &o->v, 1);
    return o->v.iov_len;
}

/* A head rewritten from M: M's bytes, plus ": " where the sender wrote ":"
 * (one byte per header, two for safety), plus EXTRA for what is added. */
static size_t lb_head_bound(const struct lb_http_msg *m, size_t extra)
{
    return m->head_len + 2 * m->nheaders + extra;
}

static void lb_add_header(struct lb_head_out *o, const struct lb_http_header *h)
{
    lb_head_put(o, h->name, h->name_len);
    lb_head_put(o, ": ", 2);
    lb_head_put(o, h->value, h->value_len);
    lb_head_put(o, "\r\n", 2);
}

/* A Cookie header without lbd's sticky cookie (strip = true), or nothing
 * when only that was in it. Never longer than the header as it came. */
static void lb_add_cookie_stripped(struct lb_head_out *o, const struct lb_sticky_cfg *st,
                                   const struct lb_http_header *h)
{
    if (o->p == NULL || (size_t)(o->end - o->p) < h->name_len + h->value_len + 4) {
        o->p = o->end = NULL;
        return;
    }
    size_t n = lb_sticky_strip(st, h->value, h->value_len, o->p + h->name_len + 2);
    if (n == 0)
        return;
    memcpy(o->p, h->name, h->name_len);
    memcpy(o->p + h->name_len, ": ", 2);
    o->p += h->name_len + 2 + n;
    memcpy(o->p, "\r\n", 2);
    o->p += 2;
}

static uint64_t lb_rand64(struct lb_worker *w)
{
    uint64_t a = w->rng[0], b = w->rng[1];
    w->rng[0] = b;
    a ^= a << 23;
    w->rng[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return w->rng[1] + b;
}

/* Values of every header of kind NAME_LEN (X-Forwarded-For 15, -Proto 17,
 * Forwarded 9) joined by ", ", followed by ", " when APPEND. */
static void lb_add_joined(struct lb_head_out *out, const struct lb_http_msg *m,
                          uint32_t name_len, bool append)
{
    bool any = false;
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct lb_http_header *h = &m->headers[i];
        if (!(h->flags & LB_HDR_FORWARDED) || h->name_len != name_len || h->value_len == 0)
            continue;
        if (any)
            lb_head_put(out, ", ", 2);
        lb_head_put(out, h->value, h->value_len);
        any = true;
    }
    if (any && append)
        lb_head_put(out, ", ", 2);
}

static bool lb_has_kind(const struct lb_http_msg *m, uint32_t name_len)
{
    for (size_t i = 0; i < m->nheaders; i++)
        if ((m->headers[i].flags & LB_HDR_FORWARDED) && m->headers[i].name_len == name_len)
            return true;
    return false;
}

/* Serialise the request head as the backend must see it: hop-by-hop headers
 * gone, one Content-Length at most, an absolute-form target turned into
 * origin-form plus Host (so lbd and the backend agree on the host), and the
 * forwarding headers ours. A trusted peer's X-Forwarded-For / Forwarded are
 * kept and appended to; anyone else's are replaced. */
static size_t lb_write_request_head(struct lb_session *s, const struct lb_http_msg *m,
                                    struct evbuffer *buf, bool again)
{
    const char *target = m->target, *auth = NULL;
    size_t tlen = m->target_len, alen = 0;
    bool absolute = lb_http_absolute_target(m->target, m->target_len, &auth, &alen,
                                            &target, &tlen);
    bool trusted = s->peer_trusted;
    struct lb_head_out o, *out = &o;
    /* Beyond the request's own bytes: "/" before "?q", the 1.0 keep-alive
     * line, Connection: upgrade, our forwarding headers (the client's
     * address in two of them) and the request id. */
    if (!lb_head_begin(out, buf, lb_head_bound(m, 2 * sizeof(s->client_ip) + 320)))
        return 0;

    lb_head_put(out, m->method, m->method_len);
    lb_head_put(out, target[0] == '?' ? " /" : " ", target[0] == '?' ? 2 : 1);
    lb_head_put(out, target, tlen);
    /* HTTP/1.0 clients cannot read chunked responses: ask the backend for a
     * 1.0 response, kept alive so the backend connection is still pooled. */
    if (m->version_minor == 0)
        lb_head_str(out, " HTTP/1.0\r\nConnection: keep-alive\r\n");
    else
        lb_head_str(out, " HTTP/1.1\r\n");
    if (absolute) {
        lb_head_str(out, "Host: ");
        lb_head_put(out, auth, alen);
        lb_head_put(out, "\r\n", 2);
    }
    if (s->upgrade) {
        lb_head_str(out, "Connection: upgrade\r\n");
        lb_add_header(out, &m->headers[m->upgrade]);
    }
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct lb_http_header *h = &m->headers[i];
        if (h->flags & (LB_HDR_HOP_BY_HOP | LB_HDR_FORWARDED | LB_HDR_DUPLICATE | LB_HDR_STICKY)) {
            /* (the sticky mark is only ever set on a sticky pool's request) */
            if ((h->flags & (LB_HDR_STICKY | LB_HDR_HOP_BY_HOP)) == LB_HDR_STICKY)
                lb_add_cookie_stripped(out, &s->server->pool->cfg->sticky, h);
            continue;
        }
        if (absolute && (int)i == m->host)
            continue;
        lb_add_header(out, h);
    }

    lb_head_str(out, "X-Forwarded-For: ");
    if (trusted)
        lb_add_joined(out, m, 15, true);
    lb_head_str(out, s->client_ip);
    lb_head_str(out, "\r\nX-Forwarded-Proto: ");
    if (trusted && lb_has_kind(m, 17))
        lb_add_joined(out, m, 17, false);
    else if (s->tls)
        lb_head_put(out, "https", 5);
    else
        lb_head_put(out, "http", 4);
    if (lb_has_kind(m, 9)) {
        lb_head_str(out, "\r\nForwarded: ");
        if (trusted)
            lb_add_joined(out, m, 9, true);
        bool v6 = strchr(s->client_ip, ':') != NULL;
        lb_head_str(out, v6 ? "for=\"[" : "for=");
        lb_head_str(out, s->client_ip);
        lb_head_str(out, v6 ? "]\"" : "");
        lb_head_str(out, s->tls ? ";proto=https" : ";proto=http");
    }
    lb_head_str(out, "\r\nVia: 1.1 lbd\r\n");
    char generated[32];
    const char *rid = generated;
    size_t rid_len = sizeof(generated);
    if (m->request_id < 0) {
        /* 128 random bits in hex, without printf: this runs per request.
         * Every try of the request (AGAIN) carries the same. */
        static const char hex[] = "0123456789abcdef";
        uint64_t *id = s->x->request_id;
        if (!again) {
            id[0] = lb_rand64(s->w);
            id[1] = lb_rand64(s->w);
        }
        for (size_t half = 0; half < 2; half++) {
            uint64_t v = id[half];
            for (size_t i = 0; i < 16; i++)
                generated[half * 16 + i] = hex[(v >> (60 - 4 * i)) & 15];
        }
        lb_head_str(out, "X-Request-Id: ");
        lb_head_put(out, generated, 32);
        lb_head_put(out, "\r\n", 2);
    } else {
        rid = m->headers[m->request_id].value;
        rid_len = m->headers[m->request_id].value_len;
    }
    if (s->acc != NULL)
        lb_accesslog_copy(s->acc->request_id, sizeof(s->acc->request_id), rid, rid_len);
    lb_head_put(out, "\r\n", 2);
    return lb_head_commit(out);
}

/* Bytes of a chunked body available in SRC, feeding the framer. -1 on bad
 * framing. The bytes are not consumed. */
static ssize_t lb_chunked_scan(struct lb_chunked *c, struct evbuffer *src)
{
    size_t avail = evbuffer_get_length(src);
    size_t total = 0;
    while (total < avail && !lb_chunked_done(c)) {
        uint64_t skip = lb_chunked_data_left(c);
        if (skip > 0) {
            /* Chunk data is never looked at: only counted. */
            size_t n = skip < avail - total ? (size_t)skip : avail - total;
            lb_chunked_skip(c, n);
            total += n;
            continue;
        }
        struct evbuffer_ptr pos;
        struct evbuffer_iovec v[8];
        evbuffer_ptr_set(src, &pos, total, EVBUFFER_PTR_SET);
        int nv = evbuffer_peek(src, (ev_ssize_t)(avail - total), &pos, v, 8);
        if (nv > 8)
            nv = 8;
        bool progressed = false;
        for (int i = 0; i < nv && !lb_chunked_done(c); i++) {
            ssize_t r = lb_chunked_feed(c, v[i].iov_base, v[i].iov_len);
            if (r < 0)
                return -1;
            total += (size_t)r;
            progressed = progressed || r > 0;
            if ((size_t)r < v[i].iov_len || lb_chunked_data_left(c) > 0)
                break;
        }
        if (!progressed)
            break;
    }
    return (ssize_t)total;
}

/* Append LEN bytes of SRC from offset OFF to DST, copied (SRC keeps
 * them). 0, or -1 when out of memory. */
static int lb_buffer_copy(struct evbuffer *dst, struct evbuffer *src, size_t off, size_t len)
{
    while (len > 0) {
        struct evbuffer_ptr pos;
        struct evbuffer_iovec v[8];
        if (evbuffer_ptr_set(src, &pos, off, EVBUFFER_PTR_SET) < 0)
            return -1;
        int nv = evbuffer_peek(src, (ev_ssize_t)len, &pos, v, 8);
        if (nv <= 0)
            return -1;
        for (int i = 0; i < nv && i < 8 && len > 0; i++) {
            size_t n = v[i].iov_len < len ? v[i].iov_len : len;
            if (evbuffer_add(dst, v[i].iov_base, n) < 0)
                return -1;
            off += n;
            len -= n;
        }
    }
    return 0;
}

/* The next N body bytes (at the start of IN) are kept to send again, up
 * to retries.buffer: beyond, or out of memory, the request can no longer
 * be sent again. A copy: the request's bytes go to the backend as ever. */
static void lb_session_keep_body(struct lb_session *s, struct evbuffer *in, size_t n)
{
    struct evbuffer *r = s->x->replay;
    if (evbuffer_get_length(r) - s->x->head_len + n > s->server->pool->cfg->retries.buffer ||
        lb_buffer_copy(r, in, 0, n) < 0) {
        evbuffer_free(r);
        s->x->replay = NULL;
    }
}

/* Move what is available of the request body to the backend. */
static void lb_forward_request_body(struct lb_session *s)
{
    struct evbuffer *in = s->client->in;
    struct evbuffer *out = s->up->conn->out;
    if (evbuffer_get_length(out) >= s->w->buffer_limit)
        return;         /* resumed by lb_up_write */
    size_t avail = evbuffer_get_length(in);
    size_t n = 0;
    if (s->x->req_body == LB_BODY_LENGTH) {
        n = avail < s->x->req_left ? avail : (size_t)s->x->req_left;
        s->x->req_left -= n;
        s->req_done = s->x->req_left == 0;
    } else if (s->x->req_body == LB_BODY_CHUNKED) {
        ssize_t r = lb_chunked_scan(&s->x->req_chunk, in);
        if (r < 0) {
            lb_log_info("client %s: malformed chunked request body", s->client_ip);
            lb_session_error(s, 400);
            return;
        }
        n = (size_t)r;
        s->req_done = lb_chunked_done(&s->x->req_chunk);
    }
    if (n > 0) {
        /* The limit is on the body, not on its chunked framing. */
        s->x->req_body_bytes = s->x->req_body == LB_BODY_CHUNKED ? s->x->req_chunk.data_bytes
                                                                 : s->x->req_body_bytes + n;
        uint64_t max = s->w->cfg->limits.body;
        if (max != 0 && s->x->req_body_bytes > max) {
            /* Only chunked bodies get here: a declared length is checked
             * before anything is forwarded. */
            lb_log_info("client %s: request body over %llu bytes", s->client_ip,
                        (unsigned long long)max);
            s->keepalive = false;
            lb_session_error(s, 413);
            return;
        }
        if (s->x->replay != NULL)
            lb_session_keep_body(s, in, n);
        lb_conn_move(s->client, s->up->conn, n);
        lb_counter_add(&s->w->slot_stats->bytes_in, n);
        lb_counter_add(&s->server->stats->bytes_out, n);
        s->x->body_progress += n;
    }
    /* client_body bounds the time for each further 8 KiB: a client
     * dripping a byte a second is cut, a slow but honest upload is not. */
    if (s->req_done) {
        lb_session_timer_stop(s);
        if (s->up->connected)
            lb_session_up_timeouts(s);
    } else if (s->x->body_progress >= LB_BODY_PROGRESS || !lb_session_timer_pending(s)) {
        s->x->body_progress = 0;
        lb_session_timer_arm(s, s->server->pool->cfg->timeouts.client_body_ms);
    }
}

/* ---- response: backend -> client --------------------------------------- */

#define LB_HSTS "Strict-Transport-Security: "
#define LB_SET_COOKIE "Set-Cookie: "

/* Inlined twice: HSTS (known at compile time) off, as on every plain
 * listener, costs nothing. With it our header replaces the backend's. */
static inline __attribute__((always_inline)) size_t
lb_write_response_head_t(struct lb_session *s, const char *raw, const struct lb_http_msg *m,
                         struct evbuffer *buf, const bool hsts)
{
    struct lb_head_out o;
    char fields[LB_RL_FIELDS_MAX];
    size_t nfields = 0;
    if (s->x->rl.n > 0)     /* limits with headers = true */
        nfields = lb_ratelimit_fields(s->w->rl, &s->x->rl, 0, fields, sizeof(fields));
    const struct lb_tls_cfg *t = hsts ? lb_session_listener(s)->tls : NULL;
    size_t extra = sizeof("Connection: keep-alive\r\n\r\n") + nfields +
                   (hsts ? sizeof(LB_HSTS "\r\n") + t->hsts_len : 0);
    /* Sticky: a cookie naming the server that answered, unless the client
     * sent that one already. */
    const struct lb_sticky_cfg *st = NULL;
    const char *pin = NULL;
    if (s->x->sticky) {
        struct lb_pool_rt *pool = s->server->pool;
        size_t idx = (size_t)(s->server - pool->servers);
        if (s->x->sticky_pin != idx + 1) {
            st = &pool->cfg->sticky;
            pin = s->server->cfg->sticky;
            extra += sizeof(LB_SET_COOKIE "=") + st->cookie_len + LB_STICKY_VALUE_LEN +
                     st->attrs_len;
        }
    }
    if (!lb_head_begin(&o, buf, lb_head_bound(m, extra)))
        return 0;
    const char *eol = memchr(raw, '\r', m->head_len);
    lb_head_put(&o, raw, (size_t)(eol - raw) + 2);       /* status line as is */
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct lb_http_header *h = &m->headers[i];
        if (h->flags & (LB_HDR_HOP_BY_HOP | LB_HDR_DUPLICATE))
            continue;
        if (hsts && h->name_len == sizeof(LB_HSTS) - 3 &&
            lb_str_ieq(h->name, h->name_len, "strict-transport-security"))
            continue;
        lb_add_header(&o, h);
    }
    if (st != NULL) {
        lb_head_put(&o, LB_SET_COOKIE, sizeof(LB_SET_COOKIE) - 1);
        lb_head_put(&o, st->cookie, st->cookie_len);
        lb_head_put(&o, "=", 1);
        lb_head_put(&o, pin, LB_STICKY_VALUE_LEN);
        lb_head_put(&o, st->attrs, st->attrs_len);
    }
    if (nfields > 0)
        lb_head_put(&o, fields, nfields);
    if (hsts) {
        lb_head_put(&o, LB_HSTS, sizeof(LB_HSTS) - 1);
        lb_head_put(&o, t->hsts, t->hsts_len);
        lb_head_put(&o, "\r\n", 2);
    }
    if (!s->keepalive)
        lb_head_str(&o, "Connection: close\r\n\r\n");
    else if (s->req_minor == 0)
        lb_head_str(&o, "Connection: keep-alive\r\n\r\n");
    else
        lb_head_put(&o, "\r\n", 2);
    return lb_head_commit(&o);
}

static size_t lb_write_response_head(struct lb_session *s, const char *raw,
                                     const struct lb_http_msg *m, struct evbuffer *buf)
{
    return s->hsts ? lb_write_response_head_t(s, raw, m, buf, true)
                   : lb_write_response_head_t(s, raw, m, buf, false);
}

/* The exchange is over on both sides: pool the backend connection if it
 * is clean, and either wait for the next request or close. */
static void lb_session_finish(struct lb_session *s)
{
    bool reusable = s->req_done && s->x->resp_body != LB_BODY_CLOSE && !s->up_eof &&
                    !(s->req_flags & LB_MSG_CONN_CLOSE);
    if (s->server != NULL)
        lb_session_backend_done(s);
    lb_session_release_up(s, reusable);
    lb_session_log(s);
    s->served++;
    /* A draining worker closes only after an answer that said so: one that
     * promised keep-alive before the drain began waits for the next request
     * like any idle connection (lb_session_set_idle). */
    if (!s->keepalive || !s->req_done || s->client_eof) {
        /* Lingering is for clients that may still be sending: not for one
         * whose request was read whole with nothing after it. */
        s->quick_close = s->req_done && evbuffer_get_length(s->client->in) == 0;
        lb_session_linger(s);
        return;
    }
    lb_session_reset_request(s);
    lb_session_set_idle(s);
    lb_conn_read_enable(s->client);
    lb_session_try_head(s);     /* a pipelined request may be waiting */
}

static void lb_relay_response_body(struct lb_session *s)
{
    struct evbuffer *in = s->up->conn->in;
    struct evbuffer *out = s->client->out;
    if (evbuffer_get_length(out) >= s->w->buffer_limit) {
        /* The client is the one not reading: stop reading the backend, and
         * its response clock with it (a slow reader is the client's send
         * timeout's to judge, not the backend's fault). lb_client_write
         * resumes. */
        lb_conn_read_disable(s->up->conn);
        return;
    }
    lb_conn_read_enable(s->up->conn);
    size_t avail = evbuffer_get_length(in);
    size_t n = 0;
    switch (s->x->resp_body) {
    case LB_BODY_NONE:
        s->resp_done = true;
        break;
    case LB_BODY_LENGTH:
        n = avail < s->x->resp_left ? avail : (size_t)s->x->resp_left;
        s->x->resp_left -= n;
        s->resp_done = s->x->resp_left == 0;
        break;
    case LB_BODY_CHUNKED: {
        ssize_t r = lb_chunked_scan(&s->x->resp_chunk, in);
        if (r < 0) {
            lb_log_warn("backend %s: malformed chunked response", s->server->cfg->address);
            lb_session_backend_failed(s);
            lb_session_linger(s);
            return;
        }
        n = (size_t)r;
        s->resp_done = lb_chunked_done(&s->x->resp_chunk);
        break;
    }
    case LB_BODY_CLOSE:
        n = avail;      /* ends at the backend's EOF */
        break;
    }
    if (n > 0) {
        lb_conn_move(s->up->conn, s->client, n);
        lb_counter_add(&s->server->stats->bytes_in, n);
        lb_session_sent(s, n);
    }
    if (!s->resp_done && s->up_eof && evbuffer_get_length(in) == 0) {
        if (s->x->resp_body != LB_BODY_CLOSE) {
            /* Cut mid-response: nothing to answer, so cut the client too. */
            lb_log_warn("backend %s closed the connection mid-response",
                        s->server->cfg->address);
            lb_session_backend_failed(s);
            lb_session_linger(s);
            return;
        }
        s->resp_done = true;
    }
    if (s->resp_done) {
        if (s->req_done)
            lb_session_finish(s);
        else
            lb_session_linger(s);   /* answered before the body was read: close */
    }
}

/* ---- tunnel (after 101 Switching Protocols) ----------------------------- */

static void lb_tunnel_arm(struct lb_session *s)
{
    lb_session_timer_arm(s, s->server->pool->cfg->timeouts.tunnel_ms);
}

/* Move what each side has to the other, bounded by buffer_limit, and end
 * the tunnel once a side has closed and everything it sent is passed on:
 * the client's FIN is passed to the backend as ours; the backend's close
 * ends the session after the client got every byte. */
static void lb_tunnel_pump(struct lb_session *s)
{
    struct evbuffer *cin = s->client->in;
    struct evbuffer *cout = s->client->out;
    struct evbuffer *uin = s->up->conn->in;
    struct evbuffer *uout = s->up->conn->out;
    size_t limit = s->w->buffer_limit, moved = 0;

    size_t n = evbuffer_get_length(cin);
    if (n > 0 && evbuffer_get_length(uout) < limit) {
        lb_conn_move(s->client, s->up->conn, n);
        lb_counter_add(&s->w->slot_stats->bytes_in, n);
        lb_counter_add(&s->server->stats->bytes_out, n);
        moved += n;
    }
    n = evbuffer_get_length(uin);
    if (n > 0 && evbuffer_get_length(cout) < limit) {
        lb_conn_move(s->up->conn, s->client, n);
        lb_counter_add(&s->server->stats->bytes_in, n);
        lb_session_sent(s, n);
        moved += n;
    }
    if (moved > 0)
        lb_tunnel_arm(s);
    if (s->client_eof && !s->shut && evbuffer_get_length(cin) == 0 &&
        evbuffer_get_length(uout) == 0) {
        s->shut = true;     /* here: our FIN towards the backend is sent */
        lb_conn_shutdown(s->up->conn);
    }
    if (s->up_eof && evbuffer_get_length(uin) == 0) {
        s->shut = false;
        lb_session_linger(s);
    }
}

static void lb_tunnel_start(struct lb_session *s)
{
    s->state = LB_S_TUNNEL;
    s->keepalive = false;
    /* Bytes both ways have no exchange state: idle WebSockets, which can
     * be many, hold none. */
    lb_session_retry_clear(s);
    lb_session_exchange_put(s);
    lb_session_deadline_off(s);
    const struct lb_timeouts *t = &s->server->pool->cfg->timeouts;
    /* Idleness is judged on both directions together (the timer), not per
     * side: a quiet client under a busy server push is not idle. */
    lb_conn_set_timeouts(s->client, 0, t->send_ms);
    lb_conn_set_timeouts(s->up->conn, 0, t->send_ms);
    lb_conn_read_enable(s->client);
    lb_tunnel_arm(s);
    lb_tunnel_pump(s);
}

/* A 503's Retry-After, for the breaker: ms from now, 0 if none. */
static uint64_t lb_retry_after_ms(const struct lb_http_msg *m)
{
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct lb_http_header *h = &m->headers[i];
        if (h->name_len == 11 && lb_str_ieq(h->name, 11, "retry-after"))
            return lb_breaker_retry_after_ms(h->value, h->value_len, lb_wall_ms());
    }
    return 0;
}

/* ---- retries (worker/retry.h) ------------------------------------------- */

static int lb_session_connect(struct lb_session *s, bool pooled);
static int lb_session_resend(struct lb_session *s, struct evbuffer *out);

/* Whether the request may be sent again: its method allows it (with
 * retries: the policy's methods; without: the safe ones, for a stale
 * connection's resend) and it is whole at hand: a body-less one's head is
 * still in the client's input, or the head and body were kept. */
static bool lb_session_replayable(const struct lb_session *s)
{
    const struct lb_retry_cfg *rc = &s->server->pool->cfg->retries;
    bool method = !rc->enabled ? (s->req_flags & LB_MSG_SAFE) != 0
                  : rc->methods_all || (s->req_flags & (LB_MSG_SAFE | LB_MSG_IDEMPOTENT));
    return method && (s->head_pending || s->x->replay != NULL) && !s->interim_sent;
}

static bool lb_tried(uint64_t tried, size_t idx)
{
    return (tried >> (idx % 64)) & 1;
}

/* A try failed before any byte of its answer reached the client, and its
 * outcome is reported. The pool's verdict: the delay before the next try
 * (the retry is then held, counted and the server marked tried), or -1:
 * give up, and answer as without retries. */
static int64_t lb_session_retry_verdict(struct lb_session *s, enum lb_retry_reason reason,
                                        int status)
{
    struct lb_pool_rt *pool = s->server->pool;
    const struct lb_retry_cfg *rc = &pool->cfg->retries;
    if (!rc->enabled)
        return -1;
    struct lb_exchange *x = s->x;
    const struct lb_retry_try t = {
        .reason = reason, .status = status, .retries = x->retries,
        .replayable = lb_session_replayable(s),
        .answered = s->resp_started || s->interim_sent,
        .holding = x->retry_held != NULL,
    };
    const struct lb_retry_site site = { pool->shared, pool->cfg->nservers, pool->shm, rc };
    uint64_t delay = 0;
    enum lb_retry_verdict v = lb_retry_decide(&site, &t, lb_rand64(s->w), &delay);
    if (v != LB_RETRY_AFTER) {
        if (v == LB_RETRY_NO_BUDGET)
            lb_log_debug("pool '%s': retry budget spent, not retried", pool->cfg->name);
        return -1;
    }
    struct lb_server_rt *srv = s->server;
    lb_session_retry_release(s);
    lb_retry_gauge(&srv->shared->retries, &srv->stats->retries, 1);
    x->retry_held = srv;
    x->tried |= 1ull << ((size_t)(srv - pool->servers) % 64);
    return (int64_t)delay;
}

static void lb_session_retry_go(struct lb_session *s);

/* Wait DELAY_MS before the next try, on the session timer: the backend
 * connection is closed (it may hold the rest of an answer), the worker
 * serves others meanwhile, and lb_session_retry_go runs when it fires. */
static void lb_session_retry_wait(struct lb_session *s, uint64_t delay_ms)
{
    struct lb_exchange *x = s->x;
    struct lb_server_rt *held = x->retry_held;
    lb_session_release_up(s, false);
    lb_session_timer_stop(s);
    s->state = LB_S_RETRY;
    s->up_eof = false;
    x->resp_scan = 0;
    lb_retry_gauge(&held->shared->retries_waiting, &held->stats->retries_waiting, 1);
    x->retry_waiting = true;
    lb_session_timer_arm(s, delay_ms > 0 ? delay_ms : 1);
    if (s->timer == NULL)
        lb_session_retry_go(s);     /* out of memory for a timer: no wait */
}

/* Verdict, and the wait when it says retry. True: the request goes again,
 * the caller stops there; false: the caller answers as it would have. */
static bool lb_session_retry(struct lb_session *s, enum lb_retry_reason reason)
{
    int64_t delay = lb_session_retry_verdict(s, reason, 0);
    if (delay < 0)
        return false;
    lb_session_retry_wait(s, (uint64_t)delay);
    return true;
}

/* A 5xx answer, nothing of it sent yet. When it is retried, the try counts
 * as the answer it got (a failure with the breaker's on_5xx, as when it is
 * relayed) and true is returned; false: the caller relays it. */
static bool lb_session_retry_answer(struct lb_session *s, const struct lb_http_msg *m,
                                    size_t head_len)
{
    int64_t delay = lb_session_retry_verdict(s, lb_retry_reason_of(m->status), m->status);
    if (delay < 0)
        return false;
    struct lb_server_rt *srv = s->server;
    lb_counter_add(&srv->stats->bytes_in, head_len);
    lb_counter_add(&srv->stats->responses[4], 1);
    if (srv->pool->cfg->breaker.on_5xx) {
        lb_counter_add(&srv->stats->failures, 1);
        lb_session_report(s, LB_BREAKER_FAILURE, m->status == 503 ? lb_retry_after_ms(m) : 0);
    } else {
        lb_session_report(s, LB_BREAKER_SUCCESS, 0);
    }
    lb_log_info("backend %s answered %d: retried", srv->cfg->address, m->status);
    lb_session_retry_wait(s, (uint64_t)delay);
    return true;
}

/* Parse response heads in the backend input; relay interim 1xx ones.
 * True when the final head is done and the body can be relayed; false when
 * more bytes are needed or the session was ended (S may be gone). */
static bool lb_handle_response_head(struct lb_session *s)
{
    struct lb_worker *w = s->w;
    struct evbuffer *in = s->up->conn->in;
    for (;;) {
        size_t len = evbuffer_get_length(in);
        size_t n = len < w->limits.max_head + 4 ? len : w->limits.max_head + 4;
        if (n == 0)
            return false;
        const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
        if (buf == NULL) {          /* out of memory */
            lb_session_error(s, 502);
            return false;
        }
        size_t head_len = lb_http_head_end(buf, n, &s->x->resp_scan);
        if (head_len == 0) {
            if (len > w->limits.max_head) {
                lb_log_warn("backend %s: response head over %zu bytes",
                            s->server->cfg->address, w->limits.max_head);
                lb_session_backend_failed(s);
                if (!lb_session_retry(s, LB_RETRY_RESET))
                    lb_session_error(s, 502);
            }
            return false;
        }
        struct lb_http_msg m = { .headers = w->scratch, .max_headers = w->limits.max_headers };
        if (lb_http_parse_response(buf, head_len, &m, s->req_flags & LB_MSG_HEAD,
                                   &w->limits) < 0 || (m.status == 101 && !s->upgrade)) {
            lb_log_warn("backend %s: invalid response head", s->server->cfg->address);
            lb_session_backend_failed(s);
            if (!lb_session_retry(s, LB_RETRY_RESET))
                lb_session_error(s, 502);
            return false;
        }
        s->x->resp_scan = 0;
        if (m.status >= 500 && s->server->pool->cfg->retries.enabled &&
            lb_session_retry_answer(s, &m, head_len))
            return false;
        if (s->head_pending) {
            /* The backend answered: the request can no longer be retried. */
            evbuffer_drain(s->client->in, s->x->head_len);
            lb_counter_add(&w->slot_stats->bytes_in, s->x->head_len);
            s->head_pending = false;
        }
        struct evbuffer *out = s->client->out;
        size_t before = evbuffer_get_length(out);
        if (m.status == 101) {
            /* Switching protocols: the head goes to the client as the
             * backend wrote it (its Upgrade and Connection are the point). */
            evbuffer_remove_buffer(in, out, head_len);
            lb_counter_add(&s->server->stats->bytes_in, head_len);
            lb_counter_add(&s->server->stats->responses[0], 1);
            lb_session_sent(s, head_len);
            lb_session_count_response(s, 101);
            if (s->acc != NULL)
                s->acc->upstream_status = 101;
            lb_session_log(s);
            lb_session_report(s, LB_BREAKER_SUCCESS, 0);
            lb_tunnel_start(s);
            return false;
        }
        if (m.status < 200) {
            /* 100 Continue and friends: pass on to 1.1 clients only. */
            if (s->req_minor == 1) {
                evbuffer_add(out, buf, head_len);
                s->interim_sent = true;     /* no retry from now on */
            }
            evbuffer_drain(in, head_len);
            lb_counter_add(&s->server->stats->bytes_in, head_len);
            size_t queued = evbuffer_get_length(out) - before;
            lb_session_sent(s, queued);
            s->x->interim_out += queued;
            if (evbuffer_get_length(out) >= w->buffer_limit) {
                /* A client not reading a stream of them: held back like a
                 * body, resumed by lb_client_write (backend_response runs
                 * on regardless). */
                lb_conn_read_disable(s->up->conn);
                return false;
            }
            continue;
        }
        s->x->resp_body = m.body;
        s->x->resp_left = m.content_length;
        lb_chunked_init(&s->x->resp_chunk);
        bool backend_keep = m.version_minor == 1 ? !(m.flags & LB_MSG_CONN_CLOSE)
                                                 : (m.flags & LB_MSG_CONN_KEEPALIVE) != 0;
        if (!backend_keep)
            s->req_flags |= LB_MSG_CONN_CLOSE;     /* do not pool this connection */
        if (m.body == LB_BODY_CLOSE || w->draining || s->client_eof)
            s->keepalive = false;
        if (lb_write_response_head(s, buf, &m, out) == 0) {
            lb_session_error(s, 502);   /* nothing sent yet: the client gets it */
            return false;
        }
        s->resp_head_done = true;
        s->resp_started = true;
        if (s->x->retry_held != NULL || s->x->replay != NULL)
            lb_session_retry_clear(s);      /* answered: no other try from now on */
        evbuffer_drain(in, head_len);
        lb_counter_add(&s->server->stats->bytes_in, head_len);
        lb_counter_add(&s->server->stats->responses[lb_status_class(m.status)], 1);
        lb_session_sent(s, evbuffer_get_length(out) - before);
        lb_session_count_response(s, m.status);
        uint64_t now_us = lb_wall_us();
        lb_backend_observe(s->server->shared, lb_elapsed_us(s->x->sent_us, now_us), now_us);
        if (m.status >= 500 && s->server->pool->cfg->breaker.on_5xx) {
            lb_counter_add(&s->server->stats->failures, 1);
            lb_session_report(s, LB_BREAKER_FAILURE, m.status == 503 ? lb_retry_after_ms(&m) : 0);
            s->counted_failure = true;
        }
        if (s->acc != NULL) {
            s->acc->upstream_status = m.status;
            s->acc->header_us = lb_wall_us();
        }
        /* From here the response streams: each pause of the backend is
         * bounded by backend_response, not the whole of it. */
        if (s->req_done)
            lb_session_timer_stop(s);   /* else client_body's, still running */
        lb_session_up_timeouts(s);
        return true;
    }
}

/* ---- backend events ----------------------------------------------------- */

static void lb_up_read(struct lb_conn *conn, void *arg)
{
    (void)conn;
    struct lb_session *s = arg;
    if (s->state == LB_S_TUNNEL) {
        lb_tunnel_pump(s);
        return;
    }
    if (!s->resp_head_done && !lb_handle_response_head(s))
        return;
    lb_relay_response_body(s);
}

static void lb_up_write(struct lb_conn *conn, void *arg)
{
    (void)conn;
    struct lb_session *s = arg;
    if (s->state == LB_S_TUNNEL) {
        lb_tunnel_pump(s);
        return;
    }
    if (!s->req_done)
        lb_forward_request_body(s);
}

static void lb_up_event(struct lb_conn *conn, short what, void *arg)
{
    struct lb_session *s = arg;
    struct lb_upconn *up = s->up;
    const char *addr = s->server->cfg->address;

    if (what & LB_CONN_CONNECTED) {
        (void)conn;
        up->connected = true;
        if (s->acc != NULL)
            s->acc->connect_us = lb_wall_us();
        lb_session_up_timeouts(s);
        return;
    }
    if (s->state == LB_S_TUNNEL) {
        if (what & LB_CONN_EOF) {
            s->up_eof = true;
            lb_tunnel_pump(s);
        } else {
            lb_session_linger(s);
        }
        return;
    }
    if (s->resp_head_done) {
        /* Relay what is buffered; the relay decides whether the response
         * ended (close-delimited) or was cut. */
        if (!(what & LB_CONN_EOF)) {
            if (what & LB_CONN_TIMEOUT)
                lb_count_timeout(s, (what & LB_CONN_READING) ? LB_TO_BACKEND_RESPONSE
                                                               : LB_TO_SEND);
            lb_log_warn("backend %s: %s mid-response", addr,
                        (what & LB_CONN_TIMEOUT) ? "timeout" : "connection error");
            lb_session_backend_failed(s);
            lb_session_linger(s);
            return;
        }
        s->up_eof = true;
        lb_relay_response_body(s);
        return;
    }
    int err = errno;
    /* A pooled connection the backend closed just as we reused it, before
     * a byte of answer: the request most likely never reached it. Sent
     * again once on a new connection to the same server if sending it
     * twice is harmless (without retries: a safe method, no body), as
     * nginx and HAProxy do. Free: no retry, no breaker verdict. */
    if (!(what & LB_CONN_TIMEOUT) && s->up_reused && !s->stale_resent &&
        lb_conn_in_len(up->conn) == 0 && lb_session_replayable(s)) {
        s->stale_resent = true;
        lb_session_timer_stop(s);       /* backend_response starts again */
        lb_session_drop_up(s, false);   /* same server: it keeps its place */
        int rc = lb_session_connect(s, false);
        if (rc != -1)           /* the same request: counted once */
            lb_counter_add(&s->server->stats->requests, (uint64_t)-1);
        if (rc < 0 || lb_session_resend(s, s->up->conn->out) < 0)
            lb_session_error(s, 502);
        else if (!s->req_done)
            lb_forward_request_body(s);
        return;
    }
    lb_session_backend_failed(s);
    bool connected = up->connected;
    if (what & LB_CONN_TIMEOUT) {
        lb_count_timeout(s, !connected ? LB_TO_CONNECT
                            : (what & LB_CONN_READING) ? LB_TO_BACKEND_RESPONSE : LB_TO_SEND);
        lb_log_warn("backend %s timed out %s", addr,
                    !connected ? "while connecting"
                    : (what & LB_CONN_READING) ? "waiting for the response"
                                                 : "taking the request");
        if (!lb_session_retry(s, connected ? LB_RETRY_TIMEOUT : LB_RETRY_CONNECT))
            lb_session_error(s, 504);
    } else if (!connected) {
        if (!lb_tls_handshake_failed(up->conn))     /* (that one logged why) */
            lb_log_warn("connect() to %s failed (%d: %s)", addr, err,
                        evutil_socket_error_to_string(err));
        if (!lb_session_retry(s, LB_RETRY_CONNECT))
            lb_session_error(s, 502);
    } else {
        lb_log_warn("backend %s %s before responding", addr,
                    (what & LB_CONN_EOF) ? "closed the connection" : "reset the connection");
        if (!lb_session_retry(s, LB_RETRY_RESET))
            lb_session_error(s, 502);
    }
}

/* ---- dispatch ----------------------------------------------------------- */

/* Send the request again on a new try: its head re-serialised from the
 * bytes kept (still in the client's input for a body-less request, else in
 * x->replay), then the body kept so far. 0, or -1. */
static int lb_session_resend(struct lb_session *s, struct evbuffer *out)
{
    struct lb_worker *w = s->w;
    struct evbuffer *src = s->head_pending ? s->client->in : s->x->replay;
    size_t head_len = s->x->head_len;
    const char *buf = src != NULL ? (const char *)evbuffer_pullup(src, (ev_ssize_t)head_len) : NULL;
    /* Same bytes, same result. */
    struct lb_http_msg m = { .headers = w->scratch, .max_headers = w->limits.max_headers };
    if (buf == NULL || lb_http_parse_request(buf, head_len, &m, &w->limits) != 0)
        return -1;
    const struct lb_pool_cfg *pc = s->server->pool->cfg;
    if (s->x->sticky && pc->sticky.strip)
        /* marks lbd's cookie again, to strip it */
        lb_sticky_find(pc, s->server->pool->rt_sticky, &m, true);
    size_t n = lb_write_request_head(s, &m, out, true);
    size_t body = s->head_pending ? 0 : evbuffer_get_length(src) - head_len;
    if (n == 0 || lb_buffer_copy(out, src, head_len, body) < 0)
        return -1;
    lb_counter_add(&s->server->stats->bytes_out, n + body);
    return 0;
}

/* Start a try of the request at s->server on a pooled (if POOLED) or new
 * connection; the caller sends the request. 0; -1 when no connection
 * could be had (nothing counted); -2 when connect() failed at once (the
 * request counted, the server's failure reported). */
static int lb_session_connect(struct lb_session *s, bool pooled)
{
    struct lb_worker *w = s->w;
    bool reused;
    struct lb_upconn *up = lb_upconn_get(w, s->server, pooled, &reused);
    if (up == NULL)
        return -1;
    s->up = up;
    s->up_reused = reused;
    /* limits.buffer bounds each direction as a whole: what one side sent
     * and the other has not taken yet, read and unwritten together. (The
     * place in flight was taken at the pick: lb_session_pick.) */
    lb_conn_pair(s->client, up->conn);
    lb_counter_add(&s->server->stats->requests, 1);
    static const struct lb_conn_ops up_ops = { lb_up_read, lb_up_write, lb_up_event };
    lb_conn_setcb(up->conn, &up_ops, s);
    if (!s->up_reused) {
        uint64_t ct = s->server->pool->cfg->timeouts.connect_ms;
        lb_conn_set_timeouts(up->conn, ct, ct);
        const struct lb_addr *a = &s->server->cfg->addr;
        if (lb_conn_connect(up->conn, (const struct sockaddr *)&a->ss,
                                       (int)a->len) < 0) {
            int err = errno;
            lb_log_warn("connect() to %s failed (%d: %s)", s->server->cfg->address, err,
                        evutil_socket_error_to_string(err));
            lb_session_backend_failed(s);
            lb_session_release_up(s, false);
            return -2;
        }
    } else {
        lb_session_up_timeouts(s);
        if (s->acc != NULL)
            s->acc->connect_us = lb_wall_us();
    }
    lb_conn_read_enable(up->conn);
    return 0;
}

/* Cookie NAME's value in a Cookie header value ("a=1; b=2"), or NULL. */
static const char *lb_cookie_value(const char *v, size_t len, const char *name,
                                   size_t *out_len)
{
    size_t nlen = strlen(name);
    const char *p = v, *end = v + len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == ';'))
            p++;
        const char *pair = p;
        while (p < end && *p != ';')
            p++;
        if ((size_t)(p - pair) > nlen && memcmp(pair, name, nlen) == 0 && pair[nlen] == '=') {
            *out_len = (size_t)(p - pair) - nlen - 1;
            return pair + nlen + 1;
        }
    }
    return NULL;
}

/* The hash strategy's key: the configured header or cookie, else (absent)
 * the client address, so a request always lands somewhere stable. */
static uint64_t lb_session_hash_key(struct lb_session *s, const struct lb_http_msg *m,
                                    const struct lb_pool_cfg *pool)
{
    if (pool->hash_key != LB_HASH_CLIENT_IP) {
        size_t nlen = strlen(pool->hash_name);
        for (size_t i = 0; i < m->nheaders; i++) {
            const struct lb_http_header *h = &m->headers[i];
            if (pool->hash_key == LB_HASH_HEADER) {
                if (h->name_len == nlen && strncasecmp(h->name, pool->hash_name, nlen) == 0)
                    return lb_balancer_key(h->value, h->value_len);
            } else if (h->name_len == 6 && lb_str_ieq(h->name, 6, "cookie")) {
                size_t vlen;
                const char *v = lb_cookie_value(h->value, h->value_len, pool->hash_name, &vlen);
                if (v != NULL)
                    return lb_balancer_key(v, vlen);
            }
        }
    }
    return lb_balancer_key(s->client_ip, strlen(s->client_ip));
}

/* ---- rate limits -------------------------------------------------------- */

/* What the limits said (D, not LB_RL_ASK). True when they took the
 * request over: refused (answered) or held (dispatched by the timer). */
static bool lb_session_limited(struct lb_session *s, const struct lb_rl_decision *d)
{
    struct lb_worker *w = s->w;
    if (s->acc != NULL && s->x->rl.mark != LB_RL_MARK_NONE)
        lb_ratelimit_log_mark(w->rl, &s->x->rl, s->acc->limited, sizeof(s->acc->limited));
    if (d->verdict == LB_RL_ADMIT)
        return false;
    if (d->verdict == LB_RL_DELAY) {
        /* The head stays in the client buffer; the timer parses it again
         * and dispatches it (lb_session_delay_done). The client's further
         * bytes wait in the buffer, bounded by its read limit. */
        s->state = LB_S_DELAYED;
        lb_session_timer_arm(s, d->delay_ms);
        if (s->timer != NULL)
            return true;
        s->state = LB_S_HEAD;   /* out of memory for a timer: no wait then */
        return false;
    }
    char fields[LB_RL_FIELDS_MAX];
    size_t n = lb_ratelimit_fields(w->rl, &s->x->rl, d->retry_after_s, fields, sizeof(fields));
    lb_session_answer(s, d->status, fields, n, true);
    return true;
}

static void lb_session_dispatch(struct lb_session *s, const struct lb_http_msg *m);
static void lb_session_delay_done(struct lb_session *s);

/* Redis's verdict on a fleet limit (or this instance's, redis being down
 * or slow): dispatched past the limits, held, or refused. */
static void lb_session_rl_done(void *arg, const struct lb_rl_decision *d)
{
    struct lb_session *s = arg;
    s->x->rl_pending = NULL;
    if (!lb_session_limited(s, d))
        lb_session_delay_done(s);
}

/* Route R's rate limits on request M. True when they took the request
 * over: refused, held, or waiting for redis. */
static bool lb_session_limit(struct lb_session *s, const struct lb_route_cfg *r,
                             const struct lb_http_msg *m)
{
    struct lb_rl_request req = { .route = r, .client_ip = s->client_ip,
                                 .trusted = s->peer_trusted, .ip_key = &s->rl_ip_key, .m = m,
                                 .done = lb_session_rl_done, .arg = s };
    struct lb_rl_decision d;
    lb_ratelimit_check(s->w->rl, &req, &s->x->rl, &d, &s->x->rl_pending);
    if (d.verdict != LB_RL_ASK)
        return lb_session_limited(s, &d);
    /* The head stays buffered as for a hold; no clock runs meanwhile but
     * redis.timeout's (the client_header one must not dispatch it). */
    s->state = LB_S_DELAYED;
    lb_session_timer_stop(s);
    return true;
}

/* A held request's time has come: the head, still buffered, is parsed
 * again (same bytes, same result) and dispatched past its limits. */
static void lb_session_delay_done(struct lb_session *s)
{
    struct lb_worker *w = s->w;
    struct evbuffer *in = s->client->in;
    const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)s->x->head_len);
    struct lb_http_msg m = { .headers = w->scratch, .max_headers = w->limits.max_headers };
    s->state = LB_S_HEAD;
    s->rl_passed = true;
    if (buf == NULL || lb_http_parse_request(buf, s->x->head_len, &m, &w->limits) != 0) {
        lb_session_error(s, 500);
        return;
    }
    lb_session_dispatch(s, &m);
}

/* Faults (worker/fault.h) for route R's request M, drawn once per
 * request. True when they took it over: a reset, an abort, or a delay
 * (the session timer; lb_session_delay_done dispatches it again, and an
 * abort that goes with the delay is answered then). */
static bool lb_session_fault(struct lb_session *s, const struct lb_route_cfg *r,
                             const struct lb_http_msg *m)
{
    struct lb_worker *w = s->w;
    if (s->fault_passed) {
        if (s->x->fault_abort == 0)
            return false;
        lb_session_answer(s, s->x->fault_abort, NULL, 0, true);
        return true;
    }
    s->fault_passed = true;
    struct lb_fault_action a;
    const struct lb_pool_cfg *pc = &w->cfg->pools[r->pool];
    if (!lb_fault_pick(w->cfg, w->shm, pc, w->rng, &a) &&
        !(r->faults_from_headers && lb_fault_from_headers(m, &a)))
        return false;
    /* Counted where the fault is: a configured one in its shm entry (any
     * worker, an atomic add, only when one fires), headers per worker. */
    if (a.shm != NULL) {
        atomic_fetch_add_explicit(&a.shm->injected, 1, memory_order_relaxed);
    } else {
        if (a.delay_ms != 0)
            lb_counter_add(&w->slot_stats->header_faults[0], 1);
        if (a.abort_status != 0)
            lb_counter_add(&w->slot_stats->header_faults[1], 1);
    }
    if (s->acc != NULL)
        snprintf(s->acc->fault, sizeof(s->acc->fault), " fault=%s", a.name);
    if (a.reset) {
        /* SO_LINGER 0: close() sends a RST, as a crashed peer would. */
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(s->client->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        lb_session_close(s);
        return true;
    }
    if (a.delay_ms != 0) {
        s->x->fault_abort = (uint16_t)a.abort_status;
        s->state = LB_S_DELAYED;
        lb_session_timer_arm(s, a.delay_ms);
        if (s->timer != NULL)
            return true;
        s->state = LB_S_HEAD;   /* out of memory for a timer: no delay then */
    }
    if (a.abort_status != 0) {
        lb_session_answer(s, a.abort_status, NULL, 0, true);
        return true;
    }
    return false;
}

#define LB_PICK_FULL (-2)

/* What the pick of a server of POOL for S's request M looks at (M NULL:
 * a retry, which has no hash key: its pick looks past the servers tried). */
static inline __attribute__((always_inline))
void lb_session_pick_ctx(struct lb_session *s, struct lb_pool_rt *pool, const struct lb_http_msg *m,
                         struct lb_pick_ctx *ctx)
{
    *ctx = (struct lb_pick_ctx){ .now_ms = 0 };
    if (pool->cfg->breaker.enabled) {
        ctx->now_ms = lb_now_ms();
        /* A retiring worker takes no trial: it may not report them. */
        ctx->trials = lb_shm_generation_current(s->w->shm, s->w->generation);
    } else if (pool->cfg->slow_start_ms != 0) {
        ctx->now_ms = lb_now_ms();
    }
    if (pool->cfg->strategy == LB_STRATEGY_HASH && m != NULL)
        ctx->key = lb_session_hash_key(s, m, pool->cfg);
}

/* S holds a place in flight to SRV (lb_backend_take). */
static inline void lb_session_slot_take(struct lb_session *s, struct lb_server_rt *srv)
{
    s->server = srv;
    s->slot = true;
    lb_counter_add(&srv->stats->active, 1);
}

/* Admit S's request to server IDX of POOL: a place in flight under its
 * max_requests (all workers: lb_backend_take), then its breaker's
 * admission (a half-open trial place). True: s->server is IDX, holding
 * its place; false: nothing taken. */
static bool lb_session_admit(struct lb_session *s, struct lb_pool_rt *pool,
                             const struct lb_pick_ctx *ctx, int idx)
{
    struct lb_server_rt *srv = &pool->servers[idx];
    if (!lb_backend_take(srv->shared))
        return false;
    const struct lb_breaker_site site = { srv->shared, pool->shm, pool->cfg };
    if (pool->cfg->breaker.enabled && !lb_breaker_admit(&site, ctx->now_ms, &s->x->breaker_ticket)) {
        lb_backend_put(srv->shared);
        return false;
    }
    lb_session_slot_take(s, srv);
    return true;
}

/* lb_session_pick's loop when the pool has a breaker, or the first pick
 * found no place. */
static int lb_session_pick_more(struct lb_session *s, struct lb_pool_rt *pool,
                                const struct lb_pick_ctx *ctx, int idx)
{
    s->x->breaker_ms = ctx->now_ms;
    for (int tries = 0; idx >= 0 && tries < 4; tries++) {
        if (lb_session_admit(s, pool, ctx, idx))
            return idx;
        idx = lb_balancer_pick(&pool->balancer, ctx);
    }
    return lb_balancer_full(&pool->balancer, ctx) ? LB_PICK_FULL : -1;
}

/* Pick a server of POOL and admit the request to it (lb_session_admit).
 * Another worker may have taken the last place since the pick, which then
 * skips that server: pick again, a few times. The server's index
 * (s->server, holding its place), LB_PICK_FULL when every server that
 * could take it is at its max_requests (the request may wait), or -1.
 * Inline: the common case, no breaker and a place at the first pick, costs
 * what the pick did before. */
static inline __attribute__((always_inline))
int lb_session_pick(struct lb_session *s, struct lb_pool_rt *pool, const struct lb_pick_ctx *ctx)
{
    lb_upstream_sync(s->w, pool);
    int idx = lb_balancer_pick(&pool->balancer, ctx);
    if (idx >= 0 && !pool->cfg->breaker.enabled && lb_backend_take(pool->servers[idx].shared)) {
        lb_session_slot_take(s, &pool->servers[idx]);
        return idx;
    }
    return lb_session_pick_more(s, pool, ctx, idx);
}

/* A sticky pool's pick (worker/sticky.h): the server the request's
 * cookie names when it takes sticky clients, its breaker lets the request
 * through and it has room; else the strategy's pick, which re-pins the
 * client (the response's Set-Cookie names the new server). Returns as
 * lb_session_pick. Out of line: a pool without sticky never comes here. */
static __attribute__((noinline)) int lb_session_pick_sticky(struct lb_session *s,
                                                            struct lb_pool_rt *pool,
                                                            const struct lb_http_msg *m,
                                                            const struct lb_pick_ctx *ctx)
{
    const struct lb_pool_cfg *pc = pool->cfg;
    /* The runtime slots' cookie values as of now: a removed server's
     * names nothing from the first request after its removal. */
    lb_upstream_sync(s->w, pool);
    int pin = lb_sticky_find(pc, pool->rt_sticky, m, pc->sticky.strip);
    s->x->sticky = true;
    s->x->sticky_pin = pin >= 0 ? (uint16_t)(pin + 1) : 0;
    if (pin >= 0) {
        struct lb_server_rt *srv = &pool->servers[pin];
        s->x->breaker_ms = ctx->now_ms;
        if (lb_backend_accepts_sticky(srv->shared) &&
            lb_breaker_usable(srv->shared, &pc->breaker, ctx->now_ms, ctx->trials) &&
            lb_session_admit(s, pool, ctx, pin)) {
            lb_counter_add(&srv->stats->sticky[LB_STICKY_HIT], 1);
            return pin;
        }
    }
    int idx = lb_session_pick(s, pool, ctx);
    if (idx >= 0 && idx != pin && pin != LB_STICKY_NO_COOKIE)
        lb_counter_add(&pool->servers[idx].stats->sticky[pin >= 0 ? LB_STICKY_REPIN
                                                                   : LB_STICKY_INVALID], 1);
    return idx;
}

/* A request's first pick: sticky first when its pool has it. */
static inline __attribute__((always_inline))
int lb_session_pick_first(struct lb_session *s, struct lb_pool_rt *pool,
                          const struct lb_http_msg *m, const struct lb_pick_ctx *ctx)
{
    if (pool->cfg->sticky.enabled)
        return lb_session_pick_sticky(s, pool, m, ctx);
    return lb_session_pick(s, pool, ctx);
}

/* No server of POOL can take S's request: 503. */
static void lb_session_no_server(struct lb_session *s, struct lb_pool_rt *pool)
{
    if (pool->cfg->breaker.enabled && lb_breaker_refused_all(pool->shared, pool->cfg->nservers)) {
        /* Every server left is open: 503 at once, no connect tried. */
        atomic_fetch_add_explicit(&pool->shm->breaker_refused, 1, memory_order_relaxed);
        lb_log_debug("pool '%s': every usable server's circuit breaker is open", pool->cfg->name);
    } else {
        lb_log_warn("pool '%s': no server available", pool->cfg->name);
    }
    lb_session_error(s, 503);
}

/* Whether a request with a body to POOL is kept as it is sent, to send it
 * again: retries on, a method they allow, a body that may fit. */
static bool lb_session_keeps_body(const struct lb_session *s, const struct lb_pool_rt *pool)
{
    const struct lb_retry_cfg *rc = &pool->cfg->retries;
    return rc->enabled && rc->buffer > 0 &&
           (rc->methods_all || (s->req_flags & (LB_MSG_SAFE | LB_MSG_IDEMPOTENT))) &&
           (s->x->req_body != LB_BODY_LENGTH || s->x->req_left <= rc->buffer);
}

/* S's request M goes to the server lb_session_pick gave it. */
static inline void lb_session_send(struct lb_session *s, const struct lb_http_msg *m)
{
    struct lb_worker *w = s->w;
    s->state = LB_S_PROXY;
    lb_session_timer_stop(s);
    s->x->sent_us = lb_wall_us();
    if (lb_session_connect(s, true) < 0) {
        lb_session_error(s, 502);
        return;
    }
    size_t n = lb_write_request_head(s, m, s->up->conn->out, false);
    if (n == 0) {
        lb_counter_add(&s->server->stats->requests, (uint64_t)-1);     /* never sent */
        lb_session_error(s, 500);
        return;
    }
    lb_counter_add(&s->server->stats->bytes_out, n);

    if (s->x->req_body == LB_BODY_NONE) {
        /* A client that will be closed after this answer has nothing more
         * to say: stop watching it (undone in the same pass, the watch
         * never reaches epoll). A vanished client shows when we write. */
        if (!s->keepalive)
            lb_conn_read_disable(s->client);
        return;     /* the head stays buffered (for a retry) until answered */
    }
    /* With retries, the head and body are kept as they go, to be sent
     * again (a body-less request's head stays in the client's input). */
    size_t kept = 0;
    if (lb_session_keeps_body(s, s->server->pool) && (s->x->replay = evbuffer_new()) != NULL) {
        int moved = evbuffer_remove_buffer(s->client->in, s->x->replay, m->head_len);
        kept = moved > 0 ? (size_t)moved : 0;
        if (kept != m->head_len) {         /* out of memory: not kept */
            evbuffer_free(s->x->replay);
            s->x->replay = NULL;
        }
    }
    evbuffer_drain(s->client->in, m->head_len - kept);
    lb_counter_add(&w->slot_stats->bytes_in, m->head_len);
    s->head_pending = false;
    lb_forward_request_body(s);
}

/* ---- a retry's pick and send (worker/retry.h) --------------------------- */

/* A retry's candidate: another server than those tried when one is usable
 * (the strategy asked again a few times, then the next usable one after
 * its pick); LB_PICK_FULL when the others that are up are only at their
 * max_requests (the retry waits for one of them rather than go back to a
 * server that failed it); else the strategy's pick, a server tried. */
static int lb_session_retry_candidate(struct lb_session *s, struct lb_pool_rt *pool,
                                      const struct lb_pick_ctx *ctx)
{
    uint64_t tried = s->x->tried;
    lb_upstream_sync(s->w, pool);
    int idx = lb_balancer_pick(&pool->balancer, ctx);
    for (int k = 0; k < 3 && idx >= 0 && lb_tried(tried, (size_t)idx); k++)
        idx = lb_balancer_pick(&pool->balancer, ctx);
    if (idx < 0 || !lb_tried(tried, (size_t)idx))
        return idx;
    size_t n = pool->cfg->nservers;
    bool full = false;
    for (size_t k = 1; k < n; k++) {
        size_t j = ((size_t)idx + k) % n;
        if (lb_tried(tried, j))
            continue;
        if (lb_balancer_usable(&pool->balancer, j, ctx))
            return (int)j;
        full = full || lb_balancer_up(&pool->balancer, j, ctx);
    }
    return full ? LB_PICK_FULL : idx;
}

/* A retry's server (lb_session_retry_candidate), admitted as
 * lb_session_pick admits a request: max_requests, breaker. Returns as
 * lb_session_pick. */
static int lb_session_pick_retry(struct lb_session *s, struct lb_pool_rt *pool,
                                 const struct lb_pick_ctx *ctx)
{
    s->x->breaker_ms = ctx->now_ms;
    int idx = lb_session_retry_candidate(s, pool, ctx);
    for (int tries = 0; idx >= 0 && tries < 4; tries++) {
        if (lb_session_admit(s, pool, ctx, idx))
            return idx;
        idx = lb_session_retry_candidate(s, pool, ctx);
    }
    if (idx == LB_PICK_FULL)
        return idx;
    return lb_balancer_full(&pool->balancer, ctx) ? LB_PICK_FULL : -1;
}

/* The next try of S's request, on server IDX that lb_session_pick_retry
 * admitted it to (-1: none, 503). */
static void lb_session_retry_send(struct lb_session *s, struct lb_pool_rt *pool, int idx)
{
    struct lb_exchange *x = s->x;
    struct lb_server_rt *held = x->retry_held;
    lb_retry_gauge(&held->shared->retries_waiting, &held->stats->retries_waiting, -1);
    x->retry_waiting = false;
    s->state = LB_S_PROXY;
    lb_session_timer_stop(s);
    if (idx < 0) {
        lb_session_no_server(s, pool);
        return;
    }
    s->stale_resent = false;
    x->sent_us = lb_wall_us();
    x->retries++;
    if (lb_session_connect(s, true) < 0 || lb_session_resend(s, s->up->conn->out) < 0) {
        lb_session_error(s, 502);
        return;
    }
    if (!s->req_done)
        lb_forward_request_body(s);
}

static void lb_session_enqueue(struct lb_session *s, struct lb_pool_rt *pool);

/* The backoff is over: the next try, on a server picked now. When every
 * server that could take it is at its max_requests, or requests of the
 * pool wait in this worker's queue already, it waits in the queue as a new
 * request would (still counted as a retry waiting: see lb_queue_run). */
static void lb_session_retry_go(struct lb_session *s)
{
    struct lb_pool_rt *pool = s->server->pool;
    if (pool->queue.n > 0) {
        lb_session_enqueue(s, pool);
        return;
    }
    struct lb_pick_ctx ctx;
    lb_session_pick_ctx(s, pool, NULL, &ctx);
    int idx = lb_session_pick_retry(s, pool, &ctx);
    if (idx == LB_PICK_FULL)
        lb_session_enqueue(s, pool);
    else
        lb_session_retry_send(s, pool, idx);
}

/* ---- the pool's queue (max_requests; worker/queue.h) -------------------- */

static void lb_queue_tick(evutil_socket_t fd, short what, void *arg);

/* While requests wait, the queue is re-tried every LB_QUEUE_TICK_MS for
 * places other workers free. */
static void lb_queue_arm(struct lb_pool_rt *pool)
{
    if (pool->queue.n > 0 && !evtimer_pending(pool->queue.tick, NULL))
        lb_timer_arm(pool->queue.tick, LB_QUEUE_TICK_MS);
}

/* One of this worker's requests to POOL gave its place back: re-try the
 * queue once the callback in progress is over. */
static void lb_queue_kick(struct lb_pool_rt *pool)
{
    event_active(pool->queue.tick, EV_TIMEOUT, 1);
}

/* S's request waits in POOL's queue for a place: 503 when the queue is
 * full. queue.timeout bounds the wait (lb_client_timeout), and so does the
 * pool's deadline. */
static void lb_session_enqueue(struct lb_session *s, struct lb_pool_rt *pool)
{
    struct lb_queue *q = &pool->queue;
    if (q->tick == NULL && (q->tick = evtimer_new(s->w->base, lb_queue_tick, pool)) == NULL) {
        lb_session_error(s, 503);       /* out of memory */
        return;
    }
    if (!lb_queue_join(q, &s->x->qnode, pool->cfg->queue.size)) {
        lb_log_debug("pool '%s': queue full (%u requests waiting): 503", pool->cfg->name,
                     pool->cfg->queue.size);
        lb_session_error(s, 503);
        return;
    }
    s->x->qsession = s;
    s->x->qpool = pool;
    s->state = LB_S_QUEUED;
    lb_session_timer_arm(s, pool->cfg->queue.timeout_ms);
    lb_queue_arm(pool);
}

/* Send the requests of POOL's queue, oldest first, while servers have
 * room. A first try's head was parsed when the request arrived and is
 * still in the client's buffer: the same bytes parse the same way again.
 * A retry (it holds one) is picked and sent as lb_session_retry_go does. */
static void lb_queue_run(struct lb_pool_rt *pool)
{
    struct lb_list *node;
    while ((node = lb_queue_oldest(&pool->queue)) != NULL) {
        struct lb_session *s = LB_CONTAINER_OF(node, struct lb_exchange, qnode)->qsession;
        struct lb_worker *w = s->w;
        struct lb_pick_ctx ctx;
        if (s->x->retry_held != NULL) {
            lb_session_pick_ctx(s, pool, NULL, &ctx);
            int idx = lb_session_pick_retry(s, pool, &ctx);
            if (idx == LB_PICK_FULL)
                break;
            lb_session_unqueue(s);
            lb_session_retry_send(s, pool, idx);
            continue;
        }
        const char *buf = (const char *)evbuffer_pullup(s->client->in,
                                                        (ev_ssize_t)s->x->head_len);
        struct lb_http_msg m = { .headers = w->scratch, .max_headers = w->limits.max_headers };
        if (buf == NULL || lb_http_parse_request(buf, s->x->head_len, &m, &w->limits) != 0) {
            lb_session_error(s, 500);   /* out of memory */
            continue;
        }
        lb_session_pick_ctx(s, pool, &m, &ctx);
        int idx = lb_session_pick_first(s, pool, &m, &ctx);
        if (idx == LB_PICK_FULL)
            break;                      /* still no room: the others wait too */
        lb_session_unqueue(s);
        if (idx < 0)
            lb_session_no_server(s, pool);
        else
            lb_session_send(s, &m);
    }
    lb_queue_arm(pool);
}

static void lb_queue_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lb_queue_run(arg);
}

/* ---- dispatch: route, pick, send or wait ---------------------------------- */

/* ACME's HTTP-01 challenges must reach their answer over plain HTTP. */
static bool lb_acme_challenge(const char *path, size_t len)
{
    static const char prefix[] = "/.well-known/acme-challenge/";
    return len >= sizeof(prefix) - 1 && memcmp(path, prefix, sizeof(prefix) - 1) == 0;
}

/* ACME HTTP-01 (worker/challenge.h): a pending token's key authorization,
 * answered by lbd itself on a plain listener. False when TOKEN is not one
 * (the request goes on as usual). */
static bool lb_session_acme_http01(struct lb_session *s, const char *path, size_t plen)
{
    static const char prefix[] = "/.well-known/acme-challenge/";
    const char *token = path + sizeof(prefix) - 1;
    size_t tlen = plen - (sizeof(prefix) - 1);
    const char *q = memchr(token, '?', tlen);
    if (q != NULL)
        tlen = (size_t)(q - token);
    char keyauth[LB_ACME_KEYAUTH_MAX];
    if (!lb_challenge_http01(token, tlen, keyauth))
        return false;
    lb_session_unqueue(s);
    if (lb_conn_ensure_buffers(s->client) < 0) {
        lb_session_close(s);
        return true;
    }
    bool keep = s->keepalive && s->req_done && !s->w->draining && !s->client_eof;
    struct evbuffer *out = s->client->out;
    size_t before = evbuffer_get_length(out);
    size_t klen = strlen(keyauth);
    if (evbuffer_add_printf(out, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 "Content-Length: %zu\r\n%s\r\n%s", klen,
                            keep ? "" : "Connection: close\r\n", keyauth) < 0) {
        lb_session_close(s);
        return true;
    }
    lb_log_info("acme: HTTP-01 challenge answered for token %.*s", (int)tlen, token);
    lb_session_answered(s, 200, evbuffer_get_length(out) - before, keep);
    return true;
}

/* redirect_https: 308 to the same host (its port dropped) and target over
 * https, on the configured port. */
static void lb_session_redirect(struct lb_session *s, const char *host, size_t hlen,
                                const char *path, size_t plen)
{
    size_t n = hlen;
    if (n > 0 && host[0] == '[') {
        const char *end = memchr(host, ']', n);     /* an IPv6 literal, whole */
        n = end ? (size_t)(end - host) + 1 : n;
    } else {
        const char *colon = host ? memchr(host, ':', n) : NULL;
        n = colon ? (size_t)(colon - host) : n;
    }
    if (n == 0) {
        lb_session_error(s, 400);   /* no host (HTTP/1.0 without Host): nowhere to send it */
        return;
    }
    unsigned port = lb_session_listener(s)->redirect_https;
    size_t cap = n + plen + 48;
    char *loc = malloc(cap);
    if (loc == NULL) {
        lb_session_error(s, 500);
        return;
    }
    char pbuf[8] = "";
    if (port != 443)
        snprintf(pbuf, sizeof(pbuf), ":%u", port);
    /* Host and target passed the parser: no CR, LF or controls. */
    int len = snprintf(loc, cap, "Location: https://%.*s%s%.*s\r\n", (int)n, host, pbuf,
                       (int)plen, plen ? path : "/");
    lb_session_answer(s, 308, loc, (size_t)len, false);
    free(loc);
}

static void lb_session_dispatch(struct lb_session *s, const struct lb_http_msg *m)
{
    struct lb_worker *w = s->w;
    if (w->cfg->limits.body != 0 && s->x->req_body == LB_BODY_LENGTH &&
        s->x->req_left > w->cfg->limits.body) {
        /* Refused before a byte of it is read (or 100-continue sent). */
        s->keepalive = false;
        lb_session_error(s, 413);
        return;
    }
    const struct lb_http_header *host = m->host >= 0 ? &m->headers[m->host] : NULL;
    const char *hval = host ? host->value : NULL, *path = m->target;
    size_t hlen = host ? host->value_len : 0, plen = m->target_len;
    /* RFC 9112 3.2.2: an absolute-form target's authority replaces Host. */
    lb_http_absolute_target(m->target, m->target_len, &hval, &hlen, &path, &plen);
    char slash_query[LB_HOST_MAX + 1];
    if (plen == 1 && path[0] == '*') {
        path = "/";             /* OPTIONS *: the server as a whole */
    } else if (path[0] == '?') {
        /* "http://h?q" is routed as the "/?q" it is forwarded as; prefixes
         * are shorter than LB_HOST_MAX, so that much of it decides. */
        size_t n = plen < LB_HOST_MAX ? plen : LB_HOST_MAX;
        slash_query[0] = '/';
        memcpy(slash_query + 1, path, n);
        path = slash_query;
        plen = n + 1;
    }
    if (w->cfg->acme != NULL && !s->tls && lb_acme_challenge(path, plen) && m->method_len == 3 &&
        memcmp(m->method, "GET", 3) == 0 && lb_session_acme_http01(s, path, plen))
        return;
    if (s->redirect && !lb_acme_challenge(path, plen)) {
        lb_session_redirect(s, hval, hlen, path, plen);
        return;
    }
    const struct lb_route_cfg *r = lb_route_match(w->cfg, hval, hlen, path, plen);
    if (r == NULL) {
        lb_session_error(s, 404);
        return;
    }
    if (r->nrate_limits > 0 && w->rl != NULL && !s->rl_passed && lb_session_limit(s, r, m))
        return;
    if (r->faults && lb_session_fault(s, r, m))
        return;
    struct lb_pool_rt *pool = &w->pools[r->pool];
    /* The deadline runs from here: time spent in the queue counts. */
    if (pool->cfg->timeouts.deadline_ms != 0) {
        if (s->deadline_timer == NULL)
            s->deadline_timer = evtimer_new(w->base, lb_deadline_timeout, s);
        if (s->deadline_timer != NULL)
            lb_timer_arm(s->deadline_timer, pool->cfg->timeouts.deadline_ms);
    }
    if (pool->queue.n > 0) {
        /* Requests wait here already: behind them (FIFO in this worker). */
        lb_session_enqueue(s, pool);
        return;
    }
    struct lb_pick_ctx ctx;
    lb_session_pick_ctx(s, pool, m, &ctx);
    int idx = lb_session_pick_first(s, pool, m, &ctx);
    if (idx >= 0)
        lb_session_send(s, m);
    else if (idx == LB_PICK_FULL)
        lb_session_enqueue(s, pool);
    else
        lb_session_no_server(s, pool);
}

/* ---- client side -------------------------------------------------------- */

static void lb_client_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_session *s = arg;
    if (s->state == LB_S_CLOSING) {
        lb_session_close(s);    /* linger time is up (armed once flushed) */
        return;
    }
    if (s->state == LB_S_QUEUED) {
        /* queue.timeout: no server of the pool had room meanwhile. */
        lb_queue_refused(&s->x->qpool->queue, LB_QUEUE_TIMEOUT);
        lb_log_debug("client %s: no room in pool '%s' within queue.timeout: 503", s->client_ip,
                     s->x->qpool->cfg->name);
        lb_session_error(s, 503);
        return;
    }
    if (s->state == LB_S_DELAYED) {
        lb_session_delay_done(s);
        return;
    }
    if (s->state == LB_S_RETRY) {
        lb_session_retry_go(s);     /* the backoff is over */
        return;
    }
    if (s->state == LB_S_TUNNEL) {
        lb_count_timeout(s, LB_TO_TUNNEL);
        lb_session_close(s);
        return;
    }
    if (s->state == LB_S_PROXY && s->req_done && !s->resp_head_done && s->up != NULL) {
        /* backend_response, waiting for the response head (see
         * lb_session_up_timeouts): whatever interim heads came, none final. */
        if (lb_conn_held(s->up->conn) >= s->w->buffer_limit &&
            lb_conn_out_len(s->client) > s->x->interim_out) {
            /* Not read for want of room, taken by an earlier (pipelined)
             * answer the client has yet to read (its bytes leave first, so
             * some are left while the output holds more than this exchange
             * queued): the client's slowness, send's to judge. */
            lb_session_timer_arm(s, s->server->pool->cfg->timeouts.backend_response_ms);
            return;
        }
        lb_count_timeout(s, LB_TO_BACKEND_RESPONSE);
        lb_log_warn("backend %s timed out waiting for the response", s->server->cfg->address);
        lb_session_backend_failed(s);
        if (!lb_session_retry(s, LB_RETRY_TIMEOUT))
            lb_session_error(s, 504);
        return;
    }
    if (s->state == LB_S_HEAD) {
        lb_log_info("client %s: request head not received within client_header", s->client_ip);
        lb_count_timeout(s, LB_TO_CLIENT_HEADER);
    } else {
        /* Our own back-pressure is not the client's slowness. */
        if (s->up != NULL && lb_conn_held(s->client) >= s->w->buffer_limit) {
            lb_session_timer_arm(s, s->server->pool->cfg->timeouts.client_body_ms);
            return;
        }
        lb_log_info("client %s: request body too slow (client_body)", s->client_ip);
        lb_count_timeout(s, LB_TO_CLIENT_BODY);
    }
    s->keepalive = false;
    lb_session_error(s, 408);
}

static void lb_deadline_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_session *s = arg;
    lb_log_info("client %s: request deadline passed", s->client_ip);
    lb_count_timeout(s, LB_TO_DEADLINE);
    /* The whole request was sent and no answer came: the backend's timeout
     * (a slow upload is not). */
    if (s->state == LB_S_PROXY && s->server != NULL && s->req_done && !s->resp_head_done)
        lb_session_backend_failed(s);
    s->keepalive = false;
    lb_session_error(s, 504);
}

static void lb_session_try_head(struct lb_session *s)
{
    struct lb_worker *w = s->w;
    struct evbuffer *in = s->client->in;
    size_t len = evbuffer_get_length(in);

    if (!lb_session_exchange_take(s)) {
        lb_session_close(s);    /* out of memory: no answer possible */
        return;
    }

    /* RFC 9112 §2.2: ignore empty lines before a request line. */
    bool any = len > 0;
    while (len >= 2 && s->x->scan == 0) {
        unsigned char two[2];
        evbuffer_copyout(in, two, 2);
        if (two[0] != '\r' || two[1] != '\n')
            break;
        evbuffer_drain(in, 2);
        len -= 2;
    }
    const char *buf = NULL;
    size_t n = len < w->limits.max_head + 4 ? len : w->limits.max_head + 4;
    size_t head_len = 0;
    if (len > 0 && (buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)n)) != NULL)
        head_len = lb_http_head_end(buf, n, &s->x->scan);
    if (head_len == 0) {
        /* Any byte starts the client_header clock, empty lines included;
         * a head whole in its first read needs none. (Out of memory for
         * the pullup: the clock ends it.) */
        if (any && !lb_session_timer_pending(s))
            lb_session_timer_arm(s, w->cfg->timeouts.client_header_ms);
        int st = buf != NULL ? lb_http_check_partial(buf, n, &w->limits) : 0;
        if (st != 0) {
            s->keepalive = false;
            lb_session_error(s, st);
        }
        return;
    }

    struct lb_http_msg m = { .headers = w->scratch, .max_headers = w->limits.max_headers };
    int st = lb_http_parse_request(buf, head_len, &m, &w->limits);
    lb_counter_add(&w->slot_stats->requests, 1);
    lb_session_log_start(s, buf, head_len, &m);
    if (st != 0) {
        lb_log_info("client %s: bad request (%d)", s->client_ip, st);
        s->keepalive = false;
        lb_session_error(s, st);
        return;
    }
    s->x->head_len = head_len;
    s->req_minor = (uint8_t)m.version_minor;
    s->req_flags = m.flags & (LB_MSG_HEAD | LB_MSG_SAFE | LB_MSG_IDEMPOTENT);
    s->keepalive = m.version_minor == 1 ? !(m.flags & LB_MSG_CONN_CLOSE)
                                        : (m.flags & LB_MSG_CONN_KEEPALIVE) != 0;
    s->x->req_body = m.body;
    s->x->req_left = m.content_length;
    /* A tunnel only for a body-less HTTP/1.1 request that asks for one. */
    s->upgrade = (m.flags & LB_MSG_CONN_UPGRADE) && m.upgrade >= 0 &&
                 m.version_minor == 1 && m.body == LB_BODY_NONE &&
                 lb_str_ieq(m.headers[m.upgrade].value, m.headers[m.upgrade].value_len,
                            "websocket");
    s->req_done = m.body == LB_BODY_NONE;
    s->head_pending = true;
    lb_chunked_init(&s->x->req_chunk);
    lb_session_dispatch(s, &m);
}

static void lb_client_read(struct lb_conn *conn, void *arg)
{
    struct lb_session *s = arg;
    switch (s->state) {
    case LB_S_HEAD:
        lb_session_try_head(s);
        break;
    case LB_S_TUNNEL:
        lb_tunnel_pump(s);
        break;
    case LB_S_PROXY:
    case LB_S_RETRY:
        if (!s->req_done && s->up != NULL)
            lb_forward_request_body(s);
        /* else: a pipelined request (or, waiting to retry, the body) waits
         * in the buffer, bounded by the read watermark. */
        break;
    case LB_S_QUEUED:
    case LB_S_DELAYED:
        break;      /* the body or next request waits, bounded likewise */
    default:        /* CLOSING: whatever the client still sends is dropped */
        evbuffer_drain(conn->in, evbuffer_get_length(conn->in));
        break;
    }
}

static void lb_client_write(struct lb_conn *conn, void *arg)
{
    (void)conn;
    struct lb_session *s = arg;
    if (s->state == LB_S_CLOSING) {
        if (evbuffer_get_length(s->client->out) != 0)
            return;
        if (s->client_eof || s->quick_close)
            lb_session_close(s);
        else
            lb_session_shut(s);
        return;
    }
    if (s->state == LB_S_HEAD) {
        if (lb_conn_out_len(s->client) != 0)
            return;
        if (s->resume_head) {
            /* Pipelined requests after one lbd answered itself: parsed
             * only once that answer is out, so a client that does not
             * read cannot make the worker buffer (or recurse) without end. */
            s->resume_head = false;
            lb_session_try_head(s);
            return;
        }
        /* The answer is out and nothing else is buffered: an idle
         * keep-alive connection needs no buffers until its next request
         * (an answer from a timer, a 408, takes them again). */
        if (s->served > 0 && lb_conn_in_len(s->client) == 0) {
            lb_conn_shrink(s->client);
            lb_session_exchange_put(s);
        }
        return;
    }
    if (s->state == LB_S_TUNNEL) {
        lb_tunnel_pump(s);
    } else if (s->state == LB_S_PROXY && s->up != NULL && !s->resp_done) {
        if (s->resp_head_done) {
            lb_relay_response_body(s);
        } else if (!s->up->conn->read_enabled) {
            /* Interim heads held back (lb_handle_response_head): go on. */
            lb_conn_read_enable(s->up->conn);
            if (lb_handle_response_head(s))
                lb_relay_response_body(s);
        }
    }
}

/* The client's FIN while its answer is awaited: a half-close (RFC 9112
 * 9.6: it still gets its answer) and a close (nobody will read it) look the
 * same. A 100 Continue, which an HTTP/1.1 client must accept before any
 * answer, tells them apart: a closed socket answers data with a reset,
 * which ends the exchange (lb_client_event). HTTP/1.0 has no interim
 * responses: such a client is found gone only when its answer is written. */
static void lb_session_probe_client(struct lb_session *s)
{
    static const char probe[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (s->req_minor != 1 || lb_conn_ensure_buffers(s->client) < 0)
        return;
    evbuffer_add(s->client->out, probe, sizeof(probe) - 1);
    lb_session_sent(s, sizeof(probe) - 1);
    if (s->x != NULL)
        s->x->interim_out += sizeof(probe) - 1;
    lb_conn_watch_reset(s->client);
}

/* The client left before its answer began (a reset, or its FIN before the
 * whole request): the exchange stops, and its backend connection, with a
 * request in flight, is closed. Logged as nginx does, 499. */
static void lb_session_abort(struct lb_session *s)
{
    lb_counter_add(&s->w->slot_stats->client_aborts, 1);
    if (s->acc != NULL)
        s->acc->status = 499;
    lb_log_debug("client %s closed the connection before its response", s->client_ip);
    lb_session_close(s);
}

static void lb_client_event(struct lb_conn *conn, short what, void *arg)
{
    (void)conn;
    struct lb_session *s = arg;
    if (s->state == LB_S_CLOSING) {
        if ((what & LB_CONN_EOF) && !(what & LB_CONN_ERROR) &&
            evbuffer_get_length(s->client->out) != 0) {
            /* Their FIN before our last bytes left: finish sending first. */
            s->client_eof = true;
            lb_conn_read_disable(s->client);
            return;
        }
        lb_session_close(s);    /* the client's FIN, an error, or linger time up */
        return;
    }
    if (s->state == LB_S_TUNNEL && (what & LB_CONN_EOF) && !(what & LB_CONN_ERROR)) {
        s->client_eof = true;
        lb_tunnel_pump(s);
        return;
    }
    /* (Waiting in the queue or to retry, or held by a rate limit, is as
     * good as proxying for the client.) */
    bool proxying = s->state == LB_S_PROXY || s->state == LB_S_QUEUED ||
                    s->state == LB_S_RETRY || s->state == LB_S_DELAYED;
    if ((what & LB_CONN_EOF) && !(what & LB_CONN_ERROR) && proxying && s->req_done) {
        /* Half-close after a complete request: still deliver the answer
         * (unless the probe finds the client gone). */
        s->client_eof = true;
        s->keepalive = false;
        if (!s->resp_started)
            lb_session_probe_client(s);
        return;
    }
    if ((what & LB_CONN_TIMEOUT) && (what & LB_CONN_READING) &&
        (proxying || (s->state == LB_S_HEAD && lb_session_timer_pending(s)))) {
        /* Waiting on the backend is not the client's idleness, and a head
         * in progress is client_header's to judge (it answers 408). */
        lb_conn_read_enable(s->client);
        return;
    }
    if (s->state == LB_S_HEAD && (what & LB_CONN_READING) && !(what & LB_CONN_ERROR) &&
        lb_conn_out_len(s->client) != 0) {
        /* The last answer is still leaving. Its reader's pace is the send
         * timeout's to judge, not client_idle's; a FIN after the request
         * still gets the whole answer. */
        if (what & LB_CONN_EOF) {
            s->client_eof = true;
            lb_session_close_when_sent(s);
        } else {
            lb_conn_read_enable(s->client);
        }
        return;
    }
    if (proxying && !s->resp_started && !(what & LB_CONN_TIMEOUT)) {
        lb_session_abort(s);
        return;
    }
    /* An idle connection a draining worker closes is not a client_idle
     * timeout: its drain_idle is up. */
    if ((what & LB_CONN_TIMEOUT) && !(s->w->draining && (what & LB_CONN_READING)))
        lb_count_timeout(s, (what & LB_CONN_READING) ? LB_TO_CLIENT_IDLE : LB_TO_SEND);
    lb_session_close(s);
}

void lb_proxy_accept(struct lb_worker *w, int fd, const struct sockaddr *peer,
                     const struct lb_listener_cfg *l)
{
    uint32_t token = 0;
    if (w->rl != NULL &&
        !lb_ratelimit_conn_open(w->rl, (size_t)(l - w->cfg->listeners), peer, &token)) {
        close(fd);      /* max_connections_per_ip: counted and logged */
        return;
    }
    struct lb_session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        lb_ratelimit_conn_close(w->rl, token);
        close(fd);
        return;
    }
    s->client = lb_conn_new(fd);
    if (s->client == NULL) {
        lb_ratelimit_conn_close(w->rl, token);
        free(s);
        return;
    }
    s->conn_token = token;
    if (l->tls != NULL) {
        if (lb_tls_accept(s->client, l->tls) < 0) {
            lb_conn_free(s->client);
            free(s);
            return;
        }
        s->tls = true;
        s->hsts = l->tls->hsts != NULL;
    }
    s->redirect = l->redirect_https != 0;
    s->listener = (uint16_t)(l - w->cfg->listeners);
    s->w = w;       /* TCP_NODELAY: inherited from the listener */
    lb_addr_format_host(peer, s->client_ip, sizeof(s->client_ip));
    s->peer_trusted = w->cfg->ntrusted_proxies > 0 &&
                      lb_cidr_match(w->cfg->trusted_proxies, w->cfg->ntrusted_proxies, peer);
    lb_session_reset_request(s);
    lb_list_push(&w->sessions, &s->node);
    if (++w->nsessions > w->peak_sessions)
        lb_worker_new_peak(w);
    lb_counter_add(&w->slot_stats->connections, 1);
    lb_counter_add(&w->slot_stats->active_connections, 1);

    static const struct lb_conn_ops client_ops = { lb_client_read, lb_client_write,
                                                   lb_client_event };
    lb_conn_setcb(s->client, &client_ops, s);
    /* Bounded input; refill output once half of the limit has drained. */
    lb_conn_set_limits(s->client, (uint32_t)w->buffer_limit, (uint32_t)w->buffer_limit / 2);
    lb_session_set_idle(s);
    lb_conn_read_enable(s->client);
    lb_conn_read_now(s->client);
}

void lb_proxy_drain(struct lb_worker *w)
{
    struct lb_list *pos, *tmp;
    lb_list_foreach_safe(pos, tmp, &w->sessions) {
        struct lb_session *s = LB_CONTAINER_OF(pos, struct lb_session, node);
        /* Idle connections (fresh ones too: a first request may be on its
         * way) get drain_idle for their next request. The others finish
         * their exchange: an answer written from now on says
         * Connection: close (w->draining), one already promised keep-alive
         * goes idle as above. */
        if (s->state == LB_S_HEAD && lb_conn_in_len(s->client) == 0 && !lb_session_timer_pending(s))
            lb_session_set_idle(s);
    }
}

void lb_proxy_close_all(struct lb_worker *w)
{
    while (!lb_list_empty(&w->sessions))
        lb_session_close(LB_CONTAINER_OF(w->sessions.next, struct lb_session, node));
    lb_proxy_lists_clear();
}

void lb_proxy_lists_clear(void)
{
    lb_freelist_clear(&lb_timers);
    lb_freelist_clear(&lb_exchanges);
    lb_freelist_clear(&lb_log_entries);
}
