#include "worker/fleet.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "shared/list.h"
#include "shared/log.h"
#include "shared/shm.h"

#define LB_FLEET_RECONNECT_MS 1000

/* GCRA on redis's clock, in microseconds (exact in Lua's doubles): the
 * same arithmetic as lb_gcra_decide. ARGV: T, (burst + 1) * T,
 * (delay + 1) * T. Returns { admit, wait, retry, remaining, reset }. The
 * key expires once its bucket would be full again. */
static const char lb_fleet_script[] =
    "local t = redis.call('TIME')\n"
    "local now = t[1] * 1000000 + t[2]\n"
    "local T, limit, delay = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1])) or 0\n"
    "if tat > now + limit + 1000000 then tat = now + limit end\n"
    "local base = tat\n"
    "if now > base then base = now end\n"
    "local ahead = base + T - now\n"
    "if ahead > limit then return {0, 0, ahead - limit, 0, base - now} end\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', base + T), 'PX',"
    " math.floor(ahead / 1000) + 1000)\n"
    "local wait = 0\n"
    "if ahead > delay then wait = ahead - delay end\n"
    "return {1, wait, 0, math.floor((limit - ahead) / T), ahead}\n";

struct lb_fleet_ask {
    struct lb_list node;                /* in f->waiting while an answer is due */
    struct lb_fleet *f;
    uint64_t deadline_ms;
    lb_fleet_done_fn done;
    void *arg;
    bool waiting;                       /* false: answered (timeout) or cancelled */
};

struct lb_fleet {
    const struct lb_config *cfg;
    struct event_base *base;
    struct lb_shm_worker *stats;
    redisAsyncContext *ac;              /* NULL between connections */
    bool connected;
    bool down;                          /* an outage is under way (and was logged) */
    struct event *reconnect;
    struct event *timeout;              /* the oldest waiting ask's deadline */
    struct lb_list waiting;             /* newest first: the oldest deadline is last */
};

static void lb_fleet_connect(struct lb_fleet *f);

/* An outage begins (logged once) or goes on. */
static void lb_fleet_outage(struct lb_fleet *f, const char *why)
{
    if (f->down)
        return;
    f->down = true;
    lb_log_warn("redis %s: %s; fleet rate limits are judged by this instance alone until it "
                "answers again", f->cfg->redis_address, why);
}

void lb_fleet_fallback(struct lb_fleet *f, const char *why)
{
    lb_counter_add(&f->stats->rl_redis_errors, 1);
    lb_fleet_outage(f, why);
}

static void lb_fleet_up(struct lb_fleet *f)
{
    if (!f->down)
        return;
    f->down = false;
    lb_log_info("redis %s answers again: fleet rate limits are shared again",
                f->cfg->redis_address);
}

static void lb_fleet_schedule(struct lb_fleet *f)
{
    struct timeval tv = lb_ms_timeval(LB_FLEET_RECONNECT_MS);
    evtimer_add(f->reconnect, &tv);
}

static void lb_fleet_arm(struct lb_fleet *f)
{
    if (lb_list_empty(&f->waiting)) {
        evtimer_del(f->timeout);
        return;
    }
    struct lb_fleet_ask *a = LB_CONTAINER_OF(f->waiting.prev, struct lb_fleet_ask, node);
    uint64_t now = lb_now_ms();
    struct timeval tv = lb_ms_timeval(a->deadline_ms > now ? a->deadline_ms - now : 0);
    evtimer_add(f->timeout, &tv);
}

/* The ask's answer, once: off the waiting list, then its owner told. */
static void lb_fleet_answer(struct lb_fleet_ask *a, bool ok, const struct lb_gcra *g)
{
    a->waiting = false;
    lb_list_remove(&a->node);
    a->done(a->arg, ok, g);
}

static void lb_fleet_on_connect(const redisAsyncContext *ac, int status)
{
    struct lb_fleet *f = ac->data;
    if (status != REDIS_OK) {
        f->ac = NULL;           /* hiredis frees it after this callback */
        lb_fleet_outage(f, ac->errstr[0] ? ac->errstr : "cannot connect");
        lb_fleet_schedule(f);
        return;
    }
    f->connected = true;
    if (f->down)
        lb_fleet_up(f);
    else
        lb_log_info("redis %s connected: fleet rate limits are shared", f->cfg->redis_address);
}

static void lb_fleet_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct lb_fleet *f = ac->data;
    if (f->ac == ac)
        f->ac = NULL;
    f->connected = false;
    if (status != REDIS_OK)
        lb_fleet_outage(f, ac->errstr[0] ? ac->errstr : "connection lost");
    if (!evtimer_pending(f->reconnect, NULL))
        lb_fleet_schedule(f);
}

static long long lb_fleet_int(const redisReply *r)
{
    return r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? r->integer : 0;
}

static void lb_fleet_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    struct lb_fleet_ask *a = privdata;
    const redisReply *r = reply;
    if (!a->waiting) {
        free(a);                /* answered already (timeout), or its session is gone */
        return;
    }
    struct lb_fleet *f = a->f;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 5) {
        lb_fleet_fallback(f, r == NULL ? "connection lost"
                             : r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        lb_fleet_answer(a, false, NULL);
    } else {
        lb_fleet_up(f);
        struct lb_gcra g = {
            .admit = lb_fleet_int(r->element[0]) != 0,
            .wait_ns = (uint64_t)lb_fleet_int(r->element[1]) * 1000,
            .retry_ns = (uint64_t)lb_fleet_int(r->element[2]) * 1000,
            .remaining = (uint64_t)lb_fleet_int(r->element[3]),
            .reset_ns = (uint64_t)lb_fleet_int(r->element[4]) * 1000,
        };
        lb_fleet_answer(a, true, &g);
    }
    free(a);
    lb_fleet_arm(f);
}

/* Redis is slower than redis.timeout: those asks are judged locally, and
 * the connection goes (its late replies would only pile up); the next try
 * is in a second. */
static void lb_fleet_on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_fleet *f = arg;
    uint64_t now = lb_now_ms();
    bool expired = false;
    while (!lb_list_empty(&f->waiting)) {
        struct lb_fleet_ask *a = LB_CONTAINER_OF(f->waiting.prev, struct lb_fleet_ask, node);
        if (a->deadline_ms > now)
            break;
        if (!expired) {
            expired = true;
            f->connected = false;   /* what the answers below lead to asks locally */
            lb_fleet_fallback(f, "no answer within redis.timeout");
        } else {
            lb_counter_add(&f->stats->rl_redis_errors, 1);
        }
        lb_fleet_answer(a, false, NULL);    /* a stays with hiredis until its reply */
    }
    if (expired && f->ac != NULL) {
        redisAsyncContext *ac = f->ac;
        f->ac = NULL;
        redisAsyncFree(ac);     /* every pending callback: NULL reply */
        if (!evtimer_pending(f->reconnect, NULL))
            lb_fleet_schedule(f);
    }
    lb_fleet_arm(f);
}

static void lb_fleet_on_reconnect(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lb_fleet_connect(arg);
}

static void lb_fleet_connect(struct lb_fleet *f)
{
    if (f->ac != NULL)
        return;
    char host[INET6_ADDRSTRLEN];
    const struct sockaddr *sa = (const struct sockaddr *)&f->cfg->redis_addr.ss;
    lb_addr_format_host(sa, host, sizeof(host));
    int port = ntohs(sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                               : ((const struct sockaddr_in *)sa)->sin_port);
    redisAsyncContext *ac = redisAsyncConnect(host, port);
    if (ac == NULL || ac->err) {
        lb_fleet_outage(f, ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        lb_fleet_schedule(f);
        return;
    }
    ac->data = f;
    if (redisLibeventAttach(ac, f->base) != REDIS_OK) {
        redisAsyncFree(ac);
        lb_fleet_schedule(f);
        return;
    }
    redisAsyncSetConnectCallback(ac, lb_fleet_on_connect);
    redisAsyncSetDisconnectCallback(ac, lb_fleet_on_disconnect);
    f->ac = ac;
}

struct lb_fleet *lb_fleet_new(const struct lb_config *cfg, struct event_base *base,
                              struct lb_shm_worker *stats)
{
    bool any = false;
    for (size_t i = 0; i < cfg->nrate_limits; i++)
        any = any || cfg->rate_limits[i].scope == LB_RL_SCOPE_FLEET;
    if (!any || !cfg->redis)
        return NULL;
    struct lb_fleet *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->cfg = cfg;
    f->base = base;
    f->stats = stats;
    lb_list_init(&f->waiting);
    f->reconnect = evtimer_new(base, lb_fleet_on_reconnect, f);
    f->timeout = evtimer_new(base, lb_fleet_on_timeout, f);
    if (f->reconnect == NULL || f->timeout == NULL) {
        lb_fleet_free(f);
        return NULL;
    }
    lb_fleet_connect(f);
    return f;
}

void lb_fleet_free(struct lb_fleet *f)
{
    if (f == NULL)
        return;
    f->connected = false;
    if (f->ac != NULL) {
        redisAsyncContext *ac = f->ac;
        f->ac = NULL;
        redisAsyncFree(ac);     /* frees the asks still with hiredis */
    }
    /* Asks left here were answered or cancelled by their owners first
     * (sessions close before this); none is owned by us any more. */
    if (f->reconnect != NULL)
        event_free(f->reconnect);
    if (f->timeout != NULL)
        event_free(f->timeout);
    free(f);
}

struct lb_fleet_ask *lb_fleet_ask(struct lb_fleet *f, const struct lb_ratelimit_cfg *c,
                                  uint64_t key, const struct lb_gcra_params *p,
                                  lb_fleet_done_fn done, void *arg)
{
    if (!f->connected || f->ac == NULL) {
        lb_fleet_fallback(f, "not connected");
        return NULL;
    }
    struct lb_fleet_ask *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        lb_fleet_fallback(f, "out of memory");
        return NULL;
    }
    char rkey[LB_NAME_MAX + 32];
    int n = snprintf(rkey, sizeof(rkey), "lbd:rl:%s:%016llx", c->name, (unsigned long long)key);
    if (redisAsyncCommand(f->ac, lb_fleet_on_reply, a, "EVAL %s 1 %b %llu %llu %llu",
                          lb_fleet_script, rkey, (size_t)n,
                          (unsigned long long)(p->interval_ns / 1000),
                          (unsigned long long)(p->limit_ns / 1000),
                          (unsigned long long)(p->delay_ns / 1000)) != REDIS_OK) {
        free(a);
        lb_fleet_fallback(f, "command not sent");
        return NULL;
    }
    a->f = f;
    a->done = done;
    a->arg = arg;
    a->waiting = true;
    a->deadline_ms = lb_now_ms() + f->cfg->redis_timeout_ms;
    bool first = lb_list_empty(&f->waiting);
    lb_list_push(&f->waiting, &a->node);
    if (first)
        lb_fleet_arm(f);
    return a;
}

void lb_fleet_cancel(struct lb_fleet_ask *a)
{
    if (a == NULL || !a->waiting)
        return;
    a->waiting = false;
    lb_list_remove(&a->node);   /* hiredis frees it with its reply */
}
