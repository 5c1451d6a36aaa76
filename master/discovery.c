#include "master/discovery.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "master/consul.h"
#include "master/dns.h"
#include "master/etcd.h"
#include "master/httpc.h"
#include "master/zk.h"
#include "shared/log.h"
#include "shared/runtime.h"
#include "shared/shm.h"

#define LB_REAP_MS 1000

struct lb_watch {
    struct lb_discovery *owner;
    const struct lb_pool_cfg *pool;
    struct lb_shm_pool *shared;
    struct lb_addr resolvers[LB_DISCO_MAX_RESOLVERS];
    size_t nresolvers;
    size_t resolver;            /* the one asked now */
    int fd;                     /* UDP socket of the query in flight; -1 */
    struct event *rd;
    struct event *timer;        /* next query, or the end of the one in flight */
    bool in_flight;
    uint16_t id;
    uint16_t qtype;
    unsigned tries;             /* resolvers asked for this query */
    uint64_t backoff_ms;        /* next wait after a failure */
    bool had_good;              /* a non-empty set was in place */
    struct lb_dns_answer answer;
    struct lb_runtime_server *servers;  /* scratch: pool->nservers - nstatic */
    size_t max;
    char label[LB_HOST_MAX + 16];       /* "dns web.test", "etcd /services/web/" */
    /* etcd and consul (HTTP) */
    size_t endpoint;                    /* the one asked now */
    struct lb_httpc_req *req;           /* range (etcd), blocking query (consul) */
    struct lb_httpc_req *watch;         /* etcd's watch stream */
    int64_t revision;                   /* etcd: of the last range */
    bool again;                         /* etcd: read the range again when this one ends */
    char *stream;                       /* etcd: the watch's partial message */
    size_t stream_len, stream_cap;
    /* etcd: what the watch stream asked for, done out of curl's callback */
    struct event *kick;
    bool want_range;                    /* events: read the range again */
    bool rewatch;                       /* canceled (compacted): range, then a new watch */
    const char *watch_error;            /* a bad message: the watch ends as a failure */
    char index[24];                     /* consul: X-Consul-Index of the last answer */
    uint64_t asked_ms;                  /* consul: when the query in flight left */
    struct lb_zk *zk;                   /* zookeeper */
};

struct lb_discovery {
    struct event_base *base;
    struct lb_httpc *httpc;             /* NULL: no etcd or consul watcher */
    struct lb_shm_header *shm;
    uint64_t generation;
    struct lb_watch *watches;
    size_t nwatches;
    struct event *reap;
};

static void lb_watch_arm(struct lb_watch *w, uint64_t ms)
{
    struct timeval tv = lb_ms_timeval(ms);
    evtimer_add(w->timer, &tv);
}

static bool lb_watch_current(const struct lb_watch *w)
{
    return lb_shm_generation_current(w->owner->shm, w->owner->generation);
}

/* A failed round: the set stays. Logged at the first of an outage. */
static void lb_watch_failed(struct lb_watch *w, const char *fmt, const char *detail)
{
    char msg[512];
    snprintf(msg, sizeof(msg), fmt, detail);
    atomic_fetch_add(&w->shared->disco_errors, 1);
    if (atomic_exchange(&w->shared->disco_failing, 1) == 0)
        lb_log_warn("pool '%s': discovery (%s): %s; the last set stays (%s until it "
                    "answers again)", w->pool->name, w->label, msg, "no further line");
    uint64_t wait = w->backoff_ms;
    const struct lb_discovery_cfg *d = &w->pool->discovery;
    w->backoff_ms = w->backoff_ms * 2 > d->max_interval_ms ? d->max_interval_ms : w->backoff_ms * 2;
    lb_watch_arm(w, wait);
}

static void lb_watch_skipped(void *arg, const char *entry, const char *why)
{
    struct lb_watch *w = arg;
    lb_log_warn("pool '%s': discovery (%s): entry %s left out: %s", w->pool->name, w->label,
                entry, why);
}

static void lb_watch_close(struct lb_watch *w)
{
    if (w->rd != NULL) {
        event_free(w->rd);
        w->rd = NULL;
    }
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    w->in_flight = false;
}

/* A good answer naming W->servers[0..n): the set follows it, but for an
 * empty one after a good one (EMPTY says how it was empty) unless
 * empty_removes. false: it was such an empty answer (counted, logged). */
static bool lb_watch_apply(struct lb_watch *w, size_t n, const char *empty)
{
    const struct lb_discovery_cfg *d = &w->pool->discovery;
    w->backoff_ms = d->min_interval_ms;
    if (n == 0 && w->had_good && !d->empty_removes) {
        /* A registry that lost its records is more likely broken than
         * the service gone: keep serving what was there. */
        atomic_fetch_add(&w->shared->disco_errors, 1);
        if (atomic_exchange(&w->shared->disco_failing, 1) == 0)
            lb_log_warn("pool '%s': discovery (%s): %s; the last set stays "
                        "(empty_removes = false)", w->pool->name, w->label, empty);
        return false;
    }
    if (atomic_exchange(&w->shared->disco_failing, 0) != 0)
        lb_log_info("pool '%s': discovery (%s) answers again", w->pool->name, w->label);
    uint64_t now = lb_wall_ms();
    atomic_store(&w->shared->disco_last_success_ms, now);
    struct lb_runtime_diff diff;
    lb_runtime_set(w->owner->shm, w->pool->shm_id, w->servers, n, lb_now_ms(), &diff);
    w->had_good = n > 0;
    if (diff.added || diff.removed || diff.reweighted) {
        atomic_fetch_add(&w->shared->disco_updates, 1);
        atomic_store(&w->shared->disco_last_update_ms, now);
        lb_log_info("pool '%s': discovery (%s): %zu server(s): %u added, %u removed, "
                    "%u reweighted", w->pool->name, w->label, n, diff.added, diff.removed,
                    diff.reweighted);
    }
    if (diff.full)
        lb_log_warn("pool '%s': discovery: %u server(s) not added: every runtime slot is in "
                    "use (max_servers; draining ones free up %u ms after their last request)",
                    w->pool->name, diff.full, LB_RUNTIME_GRACE_MS);
    return true;
}

/* A DNS answer. */
static void lb_watch_answered(struct lb_watch *w, const struct lb_dns_answer *a)
{
    const struct lb_discovery_cfg *d = &w->pool->discovery;
    size_t n = 0;
    if (a->rcode == 0)
        n = lb_dns_servers(a, d, w->servers, w->max, lb_watch_skipped, w);
    uint64_t next = a->ttl * 1000ull;
    next = next < d->min_interval_ms ? d->min_interval_ms
                                     : next > d->max_interval_ms ? d->max_interval_ms : next;
    lb_watch_apply(w, n, a->rcode == LB_DNS_RCODE_NXDOMAIN ? "NXDOMAIN" : "no usable record");
    lb_watch_arm(w, next);
}

/* ---- etcd -------------------------------------------------------------

 * A range of the prefix, then a watch from the revision after it; every
 * watch message with events reads the range again (the whole set, so
 * nothing is missed however events are cut). The range is also read every
 * max_interval, should the watch hang unseen. A failure (the range, or the
 * watch ending) waits out the backoff, then the next endpoint's range and
 * a new watch resume from the last revision. */

static void lb_etcd_range(struct lb_watch *w);

static void lb_etcd_stop(struct lb_watch *w)
{
    if (w->kick != NULL)
        evtimer_del(w->kick);
    w->want_range = w->rewatch = false;
    w->watch_error = NULL;
    lb_httpc_cancel(w->req);
    w->req = NULL;
    lb_httpc_cancel(w->watch);
    w->watch = NULL;
    w->stream_len = 0;
}

static void lb_etcd_fail(struct lb_watch *w, const char *fmt, const char *detail)
{
    lb_etcd_stop(w);
    w->endpoint++;
    lb_watch_failed(w, fmt, detail);
}

/* One message of the watch stream (in curl's write callback: it only
 * notes what to do). false: end the watch. */
static bool lb_etcd_message(struct lb_watch *w, const char *msg, size_t len)
{
    struct lb_etcd_watch_msg m;
    const char *why;
    if (lb_etcd_watch_parse(msg, len, &m, &why) < 0) {
        w->watch_error = why;
        return false;
    }
    if (m.canceled) {
        /* Compacted past our revision, or refused: read it all again. */
        w->rewatch = true;
        return false;
    }
    if (m.events) {
        w->want_range = true;
        struct timeval now = { 0, 0 };
        evtimer_add(w->kick, &now);
    }
    return true;
}

static bool lb_etcd_stream(void *arg, const char *data, size_t len)
{
    struct lb_watch *w = arg;
    if (w->stream_len + len > (1u << 20)) {
        w->watch_error = "a watch message over 1 MB";
        return false;
    }
    if (w->stream_len + len > w->stream_cap) {
        size_t cap = w->stream_cap ? w->stream_cap * 2 : 4096;
        while (cap < w->stream_len + len)
            cap *= 2;
        char *b = realloc(w->stream, cap);
        if (b == NULL) {
            w->watch_error = "out of memory";
            return false;
        }
        w->stream = b;
        w->stream_cap = cap;
    }
    memcpy(w->stream + w->stream_len, data, len);
    w->stream_len += len;
    /* One JSON object a line. */
    size_t start = 0;
    for (size_t i = 0; i < w->stream_len; i++) {
        if (w->stream[i] != '\n')
            continue;
        if (i > start && !lb_etcd_message(w, w->stream + start, i - start))
            return false;
        start = i + 1;
    }
    memmove(w->stream, w->stream + start, w->stream_len - start);
    w->stream_len -= start;
    return true;
}

static void lb_etcd_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_watch *w = arg;
    if (w->want_range) {
        w->want_range = false;
        lb_etcd_range(w);
    }
}

static void lb_etcd_watch_done(void *arg, const char *error, long status, const char *body,
                               size_t len, const char *const *headers)
{
    (void)body;
    (void)len;
    (void)headers;
    struct lb_watch *w = arg;
    w->watch = NULL;
    w->stream_len = 0;
    if (w->rewatch) {
        w->rewatch = false;
        w->revision = 0;
        lb_etcd_range(w);       /* and a new watch from its revision */
        return;
    }
    char why[200];
    snprintf(why, sizeof(why), "%s", w->watch_error ? w->watch_error : error ? error
                                     : status != 200 ? "HTTP error" : "ended");
    w->watch_error = NULL;
    lb_etcd_fail(w, "watch: %s", why);
}

static void lb_etcd_watch(struct lb_watch *w)
{
    char url[LB_DISCO_URL_MAX + 16], body[2048];
    const struct lb_discovery_cfg *d = &w->pool->discovery;
    snprintf(url, sizeof(url), "%s/v3/watch", d->endpoints[w->endpoint % d->nendpoints]);
    if (lb_etcd_watch_body(d->prefix, w->revision + 1, body, sizeof(body)) < 0) {
        lb_etcd_fail(w, "%s", "prefix too long");
        return;
    }
    w->stream_len = 0;
    struct lb_httpc_opts o = { .method = LB_HTTPC_POST, .body = body, .stream = lb_etcd_stream };
    w->watch = lb_httpc_request(w->owner->httpc, url, &o, lb_etcd_watch_done, w);
    if (w->watch == NULL)
        lb_etcd_fail(w, "%s", "out of memory");
}

static void lb_etcd_range_done(void *arg, const char *error, long status, const char *body,
                               size_t len, const char *const *headers)
{
    (void)headers;
    struct lb_watch *w = arg;
    w->req = NULL;
    char why[200];
    if (error != NULL || status != 200) {
        snprintf(why, sizeof(why), "%s%s", error ? error : "HTTP status ",
                 error ? "" : (status >= 500 ? "5xx" : "not 200"));
        lb_etcd_fail(w, "range: %s", why);
        return;
    }
    if (!lb_watch_current(w)) {
        lb_etcd_stop(w);
        return;     /* retiring */
    }
    size_t n = 0;
    int64_t rev = 0;
    const char *bad;
    if (lb_etcd_parse_range(body, len, &rev, w->servers, w->max, &n, lb_watch_skipped, w,
                            &bad) < 0) {
        lb_etcd_fail(w, "range: %s", bad);
        return;
    }
    w->revision = rev;
    lb_watch_apply(w, n, "no key under the prefix");
    if (w->watch == NULL)
        lb_etcd_watch(w);
    if (w->again) {
        w->again = false;
        lb_etcd_range(w);
        return;
    }
    lb_watch_arm(w, w->pool->discovery.max_interval_ms);
}

static void lb_etcd_range(struct lb_watch *w)
{
    if (w->req != NULL) {
        w->again = true;        /* one more once this one is in */
        return;
    }
    char url[LB_DISCO_URL_MAX + 16], body[2048];
    const struct lb_discovery_cfg *d = &w->pool->discovery;
    snprintf(url, sizeof(url), "%s/v3/kv/range", d->endpoints[w->endpoint % d->nendpoints]);
    if (lb_etcd_range_body(d->prefix, body, sizeof(body)) < 0) {
        lb_etcd_fail(w, "%s", "prefix too long");
        return;
    }
    struct lb_httpc_opts o = { .method = LB_HTTPC_POST, .body = body, .timeout_ms = d->timeout_ms };
    w->req = lb_httpc_request(w->owner->httpc, url, &o, lb_etcd_range_done, w);
    if (w->req == NULL)
        lb_etcd_fail(w, "%s", "out of memory");
}

static void lb_watch_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct lb_watch *w = arg;
    static uint8_t buf[LB_DNS_UDP_MAX + 512];
    ssize_t r = recv(fd, buf, sizeof(buf), 0);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        /* ECONNREFUSED: nobody listens there. The timer tries the next. */
        char why[128];
        snprintf(why, sizeof(why), "resolver: %s", strerror(errno));
        lb_watch_close(w);
        evtimer_del(w->timer);
        if (lb_watch_current(w))
            lb_watch_failed(w, "%s", why);
        return;
    }
    const char *why = NULL;
    const struct lb_discovery_cfg *d = &w->pool->discovery;
    if (lb_dns_parse(buf, (size_t)r, w->id, d->name, w->qtype, &w->answer, &why) < 0) {
        if (strcmp(why, "not the answer to our query") == 0)
            return;     /* a late answer to an earlier query: wait for ours */
        lb_watch_close(w);
        evtimer_del(w->timer);
        if (lb_watch_current(w))
            lb_watch_failed(w, "malformed answer: %s", why);
        return;
    }
    lb_watch_close(w);
    evtimer_del(w->timer);
    if (!lb_watch_current(w))
        return;     /* retiring: the new control process's watcher owns the set */
    if (w->answer.rcode != 0 && w->answer.rcode != LB_DNS_RCODE_NXDOMAIN) {
        static const char *const names[] = { "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN",
                                             "NOTIMP", "REFUSED" };
        lb_watch_failed(w, "resolver answered %s",
                        w->answer.rcode < 6 ? names[w->answer.rcode] : "an error");
        return;
    }
    if (w->answer.truncated && w->answer.nanswer == 0) {
        lb_watch_failed(w, "%s", "answer truncated (too large for UDP)");
        return;
    }
    lb_watch_answered(w, &w->answer);
}

static void lb_watch_send(struct lb_watch *w)
{
    const struct lb_discovery_cfg *d = &w->pool->discovery;
    uint8_t q[LB_DNS_NAME_MAX + 64];
    w->qtype = d->record == LB_DNS_A ? LB_DNS_TYPE_A
             : d->record == LB_DNS_AAAA ? LB_DNS_TYPE_AAAA : LB_DNS_TYPE_SRV;
    if (getrandom(&w->id, sizeof(w->id), GRND_NONBLOCK) != (ssize_t)sizeof(w->id))
        w->id = (uint16_t)(lb_now_ms() ^ (uint64_t)getpid());
    size_t n = lb_dns_query(q, sizeof(q), w->id, d->name, w->qtype);
    const struct lb_addr *ra = &w->resolvers[w->resolver % w->nresolvers];
    int fd = socket(ra->ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (n == 0 || fd < 0) {
        if (fd >= 0)
            close(fd);
        lb_watch_failed(w, "%s", n == 0 ? "name does not fit a query" : "no socket");
        return;
    }
    /* Connected: only the resolver's answers arrive, and a refusal shows
     * as ECONNREFUSED at once. */
    if (connect(fd, (const struct sockaddr *)&ra->ss, ra->len) < 0 ||
        send(fd, q, n, 0) != (ssize_t)n) {
        char why[128];
        snprintf(why, sizeof(why), "resolver: %s", strerror(errno));
        close(fd);
        lb_watch_failed(w, "%s", why);
        return;
    }
    w->fd = fd;
    w->rd = event_new(w->owner->base, fd, EV_READ | EV_PERSIST, lb_watch_read, w);
    if (w->rd == NULL || event_add(w->rd, NULL) < 0) {
        lb_watch_close(w);
        lb_watch_failed(w, "%s", "out of memory");
        return;
    }
    w->in_flight = true;
    lb_watch_arm(w, d->timeout_ms);
}

static void lb_consul_query(struct lb_watch *w);

static void lb_watch_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_watch *w = arg;
    if (w->pool->discovery.type != LB_DISCO_DNS) {
        if (!lb_watch_current(w)) {
            lb_etcd_stop(w);
            lb_watch_arm(w, w->pool->discovery.min_interval_ms);
            return;     /* retiring: ask nothing, write nothing */
        }
        if (w->pool->discovery.type == LB_DISCO_ETCD)
            lb_etcd_range(w);
        else if (w->pool->discovery.type == LB_DISCO_ZOOKEEPER)
            lb_zk_relist(w->zk);
        else if (w->req == NULL)
            lb_consul_query(w);
        return;
    }
    if (w->in_flight) {
        /* No answer in time: the next resolver, until each had its try. */
        lb_watch_close(w);
        w->resolver++;
        if (++w->tries < w->nresolvers) {
            lb_watch_send(w);
            return;
        }
        w->tries = 0;
        if (lb_watch_current(w))
            lb_watch_failed(w, "%s", "no answer in time from any resolver");
        else
            lb_watch_arm(w, w->pool->discovery.min_interval_ms);
        return;
    }
    w->tries = 0;
    if (!lb_watch_current(w)) {
        lb_watch_arm(w, w->pool->discovery.min_interval_ms);
        return;     /* retiring: ask nothing, write nothing */
    }
    lb_watch_send(w);
}

/* ---- zookeeper (master/zk.c does the talking) -------------------------- */

static void lb_zkw_servers(void *arg, const struct lb_runtime_server *v, size_t n)
{
    struct lb_watch *w = arg;
    if (!lb_watch_current(w))
        return;
    memcpy(w->servers, v, n * sizeof(*v));
    lb_watch_apply(w, n, "no child node");
}

static void lb_zkw_failed(void *arg, const char *why)
{
    struct lb_watch *w = arg;
    if (!lb_watch_current(w))
        return;
    /* The library reconnects by itself; the timer lists again meanwhile
     * (backoff), which is what ends an outage of a missing path. */
    lb_watch_failed(w, "%s", why);
}

static void lb_zkw_info(void *arg, const char *what)
{
    struct lb_watch *w = arg;
    lb_log_warn("pool '%s': discovery (%s): %s", w->pool->name, w->label, what);
}

static const struct lb_zk_ops lb_zk_watch_ops = {
    .servers = lb_zkw_servers,
    .failed = lb_zkw_failed,
    .skipped = lb_watch_skipped,
    .info = lb_zkw_info,
};

/* The nameservers of /etc/resolv.conf (port 53), N at most. */
static size_t lb_resolv_conf(struct lb_addr *out, size_t max)
{
    FILE *f = fopen("/etc/resolv.conf", "re");
    size_t n = 0;
    char line[256];
    while (f != NULL && n < max && fgets(line, sizeof(line), f) != NULL) {
        char ip[128], text[160];
        const char *why;
        if (sscanf(line, " nameserver %127s", ip) != 1)
            continue;
        snprintf(text, sizeof(text), strchr(ip, ':') ? "[%s]:53" : "%s:53", ip);
        if (lb_addr_parse(text, false, &out[n], &why) == 0)
            n++;
    }
    if (f != NULL)
        fclose(f);
    return n;
}

static void lb_discovery_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_discovery *d = arg;
    if (lb_shm_generation_current(d->shm, d->generation))
        lb_runtime_reap(d->shm, lb_now_ms(), LB_RUNTIME_GRACE_MS);
}

struct lb_discovery *lb_discovery_start(struct event_base *base, const struct lb_config *cfg,
                                        struct lb_shm_header *shm)
{
    struct lb_discovery *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->base = base;
    d->shm = shm;
    d->generation = atomic_load(&shm->generation);
    d->watches = calloc(cfg->npools ? cfg->npools : 1, sizeof(*d->watches));
    bool any_runtime = false;
    if (d->watches == NULL)
        goto fail;
    for (size_t i = 0; i < cfg->npools; i++) {
        const struct lb_pool_cfg *pc = &cfg->pools[i];
        any_runtime |= lb_pool_has_runtime(pc);
        if (pc->discovery.type == LB_DISCO_NONE)
            continue;
        if ((pc->discovery.type == LB_DISCO_ETCD || pc->discovery.type == LB_DISCO_CONSUL) &&
            d->httpc == NULL &&
            (d->httpc = lb_httpc_new(base)) == NULL)
            goto fail;
        struct lb_watch *w = &d->watches[d->nwatches++];
        w->owner = d;
        w->pool = pc;
        w->fd = -1;
        w->shared = lb_shm_pool(shm, pc->shm_id);
        w->max = pc->nservers - pc->nstatic;
        w->servers = calloc(w->max, sizeof(*w->servers));
        w->timer = evtimer_new(base, lb_watch_timer, w);
        w->kick = evtimer_new(base, lb_etcd_kick, w);
        if (w->servers == NULL || w->timer == NULL || w->kick == NULL)
            goto fail;
        w->backoff_ms = pc->discovery.min_interval_ms;
        switch (pc->discovery.type) {
        case LB_DISCO_ETCD:
            snprintf(w->label, sizeof(w->label), "etcd %s", pc->discovery.prefix);
            break;
        case LB_DISCO_CONSUL:
            snprintf(w->label, sizeof(w->label), "consul %s", pc->discovery.service);
            break;
        case LB_DISCO_ZOOKEEPER:
            snprintf(w->label, sizeof(w->label), "zookeeper %s", pc->discovery.prefix);
            break;
        default:
            snprintf(w->label, sizeof(w->label), "dns %s", pc->discovery.name);
            break;
        }
        if (pc->discovery.nresolvers > 0) {
            memcpy(w->resolvers, pc->discovery.resolvers, sizeof(w->resolvers));
            w->nresolvers = pc->discovery.nresolvers;
        } else {
            w->nresolvers = lb_resolv_conf(w->resolvers, LB_DISCO_MAX_RESOLVERS);
        }
        if (w->nresolvers == 0) {
            const char *why;
            lb_addr_parse("127.0.0.1:53", false, &w->resolvers[0], &why);
            w->nresolvers = 1;
        }
        /* What a previous control process left (a reload) is the last
         * good set until the source says otherwise. */
        struct lb_runtime_server tmp;
        w->had_good = lb_runtime_list(shm, pc->shm_id, &tmp, 1) > 0;
        if (pc->discovery.type == LB_DISCO_ZOOKEEPER) {
            /* Its session's first CONNECTED lists: no timer to start. */
            w->zk = lb_zk_start(base, pc->discovery.endpoints[0], pc->discovery.prefix,
                                (unsigned)pc->discovery.session_ms, w->max, &lb_zk_watch_ops, w);
            if (w->zk == NULL)
                goto fail;
            continue;
        }
        lb_watch_arm(w, 0);
    }
    if (any_runtime) {
        d->reap = event_new(base, -1, EV_PERSIST, lb_discovery_reap, d);
        struct timeval tv = lb_ms_timeval(LB_REAP_MS);
        if (d->reap == NULL || event_add(d->reap, &tv) < 0)
            goto fail;
    }
    return d;
fail:
    lb_discovery_stop(d);
    return NULL;
}

const char *lb_discovery_add(struct lb_runtime_server *out, size_t *n, size_t max,
                             const struct lb_runtime_server *s)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(out[i].address, s->address) == 0)
            return "duplicate address";
    if (*n >= max)
        return "no room (max_servers)";
    out[(*n)++] = *s;
    return NULL;
}

void lb_discovery_stop(struct lb_discovery *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < d->nwatches; i++) {
        struct lb_watch *w = &d->watches[i];
        lb_watch_close(w);
        lb_etcd_stop(w);
        lb_zk_stop(w->zk);
        if (w->kick != NULL)
            event_free(w->kick);
        if (w->timer != NULL)
            event_free(w->timer);
        free(w->servers);
        free(w->stream);
    }
    if (d->reap != NULL)
        event_free(d->reap);
    lb_httpc_free(d->httpc);
    free(d->watches);
    free(d);
}

/* ---- consul ----------------------------------------------------------

 * Blocking queries: each answer's X-Consul-Index goes into the next query,
 * which Consul holds until the service changes or `wait` passes. An index
 * that went backwards starts again from 0 (Consul's advice); an answer
 * that came back early with the same index waits min_interval first, so a
 * server that does not block is not asked in a loop. */

static void lb_consul_done(void *arg, const char *error, long status, const char *body,
                           size_t len, const char *const *headers)
{
    struct lb_watch *w = arg;
    w->req = NULL;
    const char *header = headers[0];
    const struct lb_discovery_cfg *d = &w->pool->discovery;
    if (!lb_watch_current(w))
        return;     /* retiring; its timer stops it */
    char why[200];
    if (error != NULL || status != 200) {
        if (error != NULL)
            snprintf(why, sizeof(why), "%s", error);
        else
            snprintf(why, sizeof(why), "HTTP status %ld", status);
        lb_watch_failed(w, "%s", why);
        return;
    }
    size_t n = 0;
    const char *bad;
    if (lb_consul_parse(body, len, d->passing_only, w->servers, w->max, &n, lb_watch_skipped, w,
                        &bad) < 0) {
        lb_watch_failed(w, "malformed answer: %s", bad);
        return;
    }
    lb_watch_apply(w, n, "no instance");
    unsigned long long prev = strtoull(w->index, NULL, 10);
    unsigned long long next = header != NULL ? strtoull(header, NULL, 10) : 0;
    uint64_t now = lb_now_ms();
    bool early = now - w->asked_ms < d->wait_ms / 2;
    if (next < prev)
        next = 0;
    snprintf(w->index, sizeof(w->index), "%llu", next);
    lb_watch_arm(w, header == NULL || (next == prev && early) ? d->min_interval_ms : 0);
}

static void lb_consul_query(struct lb_watch *w)
{
    const struct lb_discovery_cfg *d = &w->pool->discovery;
    char url[LB_DISCO_URL_MAX + 256];
    if (lb_consul_url(d, w->index, url, sizeof(url)) < 0) {
        lb_watch_failed(w, "%s", "URL too long");
        return;
    }
    w->asked_ms = lb_now_ms();
    /* Consul adds up to wait/16 of jitter to the wait. */
    uint64_t timeout = d->wait_ms + d->wait_ms / 16 + d->timeout_ms;
    static const char *const index[] = { "X-Consul-Index", NULL };
    struct lb_httpc_opts o = { .timeout_ms = timeout, .headers = index };
    w->req = lb_httpc_request(w->owner->httpc, url, &o, lb_consul_done, w);
    if (w->req == NULL)
        lb_watch_failed(w, "%s", "out of memory");
}
