#include "worker/ratelimit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "shared/log.h"
#include "shared/rltable.h"
#include "shared/shm.h"
#include "shared/siphash.h"
#include "worker/fleet.h"
#include "worker/http.h"

/* One configured limit as this worker uses it. */
struct lb_rl_limit {
    const struct lb_ratelimit_cfg *cfg;
    struct lb_shm_limit *shared;        /* table, log throttle */
    struct lb_rl_entry *table;
    uint64_t cap;
    struct lb_gcra_params params;
    struct lb_shm_limit_stats *stats;   /* this worker's row */
    size_t header_len;                  /* key = header:NAME */
};

struct lb_ratelimit {
    const struct lb_config *cfg;
    struct lb_shm_header *shm;
    unsigned slot;
    uint64_t hash_key[2];
    struct lb_rl_limit *limits;         /* as cfg->rate_limits */
    uint64_t *route_keys;               /* key = route: one bucket per route */
    uint64_t global_key;
    struct lb_fleet *fleet;             /* scope = "fleet": redis; NULL when none */
    uint64_t *route_fleet_keys;         /* the same keys as every instance hashes them */
    uint64_t global_fleet_key;
    uint64_t *listener_salts;           /* max_connections_per_ip: per listener */
    struct lb_rl_entry *conns;          /* this worker's connection table */
    uint64_t conn_log_ms;               /* last "connection refused" line */
};

static uint64_t lb_rl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint32_t lb_rl_ceil_s(uint64_t ns)
{
    uint64_t s = ns / 1000000000ULL + (ns % 1000000000ULL != 0);
    return s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

static uint64_t lb_rl_hash(const struct lb_ratelimit *rl, const void *data, size_t len)
{
    return lb_rl_key(lb_siphash(rl->hash_key, data, len));
}

/* Fleet keys must be the same on every instance: a fixed SipHash key (the
 * redis key names them; a client aiming collisions there would need to
 * find 64-bit ones). */
static uint64_t lb_rl_fleet_hash(const void *data, size_t len)
{
    static const uint64_t k[2] = { 0x6c62642d666c6565ULL, 0x742d6b65792d3031ULL };
    return lb_siphash(k, data, len);
}

struct lb_ratelimit *lb_ratelimit_new(const struct lb_config *cfg, struct lb_shm_header *shm,
                                      unsigned slot, struct event_base *base)
{
    bool conns = false;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        conns = conns || cfg->listeners[i].max_connections_per_ip > 0;
    if (cfg->nrate_limits == 0 && !conns)
        return NULL;
    struct lb_ratelimit *rl = calloc(1, sizeof(*rl));
    if (rl == NULL)
        goto oom;
    rl->cfg = cfg;
    rl->shm = shm;
    rl->slot = slot;
    memcpy(rl->hash_key, shm->rl_hash_key, sizeof(rl->hash_key));
    rl->limits = calloc(cfg->nrate_limits + 1, sizeof(*rl->limits));
    rl->route_keys = calloc(cfg->nroutes + 1, sizeof(*rl->route_keys));
    rl->listener_salts = calloc(cfg->nlisteners + 1, sizeof(*rl->listener_salts));
    rl->route_fleet_keys = calloc(cfg->nroutes + 1, sizeof(*rl->route_fleet_keys));
    if (rl->limits == NULL || rl->route_keys == NULL || rl->listener_salts == NULL ||
        rl->route_fleet_keys == NULL)
        goto oom;
    for (size_t i = 0; i < cfg->nrate_limits; i++) {
        const struct lb_ratelimit_cfg *c = &cfg->rate_limits[i];
        struct lb_rl_limit *l = &rl->limits[i];
        l->cfg = c;
        l->shared = lb_shm_limit(shm, c->shm_id);
        l->table = lb_shm_limit_table(shm, l->shared);
        l->cap = l->shared->capacity;
        l->stats = lb_shm_limit_stats(shm, slot, c->shm_id);
        l->header_len = strlen(c->header);
        /* A token bucket never holds a request: its delay is the burst. */
        lb_gcra_params_init(&l->params, c->interval_ns, c->burst,
                            c->algorithm == LB_RL_LEAKY_BUCKET ? c->delay : c->burst);
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct lb_route_cfg *r = &cfg->routes[i];
        char buf[2 * LB_HOST_MAX + 2];
        int n = snprintf(buf, sizeof(buf), "%d %s %s", (int)r->host_match, r->host, r->path_prefix);
        rl->route_keys[i] = lb_rl_hash(rl, buf, n > 0 ? (size_t)n : 0);
        rl->route_fleet_keys[i] = lb_rl_fleet_hash(buf, n > 0 ? (size_t)n : 0);
    }
    rl->global_key = lb_rl_hash(rl, "global", 6);
    rl->global_fleet_key = lb_rl_fleet_hash("global", 6);
    rl->fleet = lb_fleet_new(cfg, base, lb_shm_worker(shm, slot));
    for (size_t i = 0; i < cfg->nlisteners; i++)
        rl->listener_salts[i] = lb_siphash(rl->hash_key, cfg->listeners[i].address,
                                           strlen(cfg->listeners[i].address));
    rl->conns = lb_shm_conn_table(shm, slot);
    return rl;
oom:
    lb_log_error("out of memory: rate limits and max_connections_per_ip are off in this worker");
    lb_ratelimit_free(rl);
    return NULL;
}

void lb_ratelimit_free(struct lb_ratelimit *rl)
{
    if (rl == NULL)
        return;
    lb_fleet_free(rl->fleet);
    free(rl->limits);
    free(rl->route_keys);
    free(rl->route_fleet_keys);
    free(rl->listener_salts);
    free(rl);
}

/* ---- keys ---------------------------------------------------------------- */

/* One X-Forwarded-For item ("1.2.3.4", "1.2.3.4:80", "2001:db8::1",
 * "[2001:db8::1]:80") as an address. */
static bool lb_rl_parse_item(const char *s, size_t len, struct sockaddr_storage *ss)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *host = buf;
    if (host[0] == '[') {
        char *close = strchr(host, ']');
        if (close == NULL)
            return false;
        *close = '\0';
        host++;
    } else {
        char *colon = strchr(host, ':');
        if (colon != NULL && strchr(colon + 1, ':') == NULL)
            *colon = '\0';          /* IPv4 with a port */
    }
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        return true;
    }
    return false;
}

/* The client behind trusted proxies: X-Forwarded-For read from the right,
 * past the addresses of trusted proxies (nginx's real_ip_recursive); the
 * last one read if all are trusted, nothing (false) when the first item
 * read is not an address. Canonical text into OUT. */
static bool lb_rl_forwarded_client(const struct lb_config *cfg, const struct lb_http_msg *m,
                                   char *out, size_t cap)
{
    bool have = false;
    for (size_t i = m->nheaders; i-- > 0;) {
        const struct lb_http_header *h = &m->headers[i];
        if (!(h->flags & LB_HDR_FORWARDED) || h->name_len != 15)
            continue;       /* X-Forwarded-For only */
        size_t end = h->value_len;
        while (end > 0) {
            size_t start = end;
            while (start > 0 && h->value[start - 1] != ',')
                start--;
            size_t a = start, b = end;
            while (a < b && (h->value[a] == ' ' || h->value[a] == '\t'))
                a++;
            while (b > a && (h->value[b - 1] == ' ' || h->value[b - 1] == '\t'))
                b--;
            end = start > 0 ? start - 1 : 0;
            if (a == b)
                continue;
            struct sockaddr_storage ss;
            if (!lb_rl_parse_item(h->value + a, b - a, &ss))
                return have;
            lb_addr_format_host((const struct sockaddr *)&ss, out, cap);
            have = true;
            if (!lb_cidr_match(cfg->trusted_proxies, cfg->ntrusted_proxies,
                               (const struct sockaddr *)&ss))
                return true;
        }
    }
    return have;
}

/* The key of request REQ under limit L in this instance's table, and with
 * FLEET (not NULL) the key every instance gives it; false when the limit
 * does not apply (key = header:NAME and no such header). */
static bool lb_rl_request_key(struct lb_ratelimit *rl, const struct lb_rl_limit *l,
                              const struct lb_rl_request *req, uint64_t *key, uint64_t *fleet)
{
    const char *data;
    size_t len;
    char real[INET6_ADDRSTRLEN];
    switch (l->cfg->key) {
    case LB_RL_KEY_GLOBAL:
        *key = rl->global_key;
        if (fleet != NULL)
            *fleet = rl->global_fleet_key;
        return true;
    case LB_RL_KEY_ROUTE:
        *key = rl->route_keys[req->route - rl->cfg->routes];
        if (fleet != NULL)
            *fleet = rl->route_fleet_keys[req->route - rl->cfg->routes];
        return true;
    case LB_RL_KEY_HEADER: {
        const struct lb_http_msg *m = req->m;
        size_t i = 0;
        while (i < m->nheaders && !(m->headers[i].name_len == l->header_len &&
                                    strncasecmp(m->headers[i].name, l->cfg->header,
                                                l->header_len) == 0))
            i++;
        if (i == m->nheaders)
            return false;
        data = m->headers[i].value;
        len = m->headers[i].value_len;
        break;
    }
    default:
        if (req->trusted && lb_rl_forwarded_client(rl->cfg, req->m, real, sizeof(real))) {
            data = real;
            len = strlen(real);
            break;
        }
        /* The peer's key: the same for every request of the connection. */
        if (*req->ip_key == 0)
            *req->ip_key = lb_rl_hash(rl, req->client_ip, strlen(req->client_ip));
        *key = *req->ip_key;
        if (fleet != NULL)
            *fleet = lb_rl_fleet_hash(req->client_ip, strlen(req->client_ip));
        return true;
    }
    *key = lb_rl_hash(rl, data, len);
    if (fleet != NULL)
        *fleet = lb_rl_fleet_hash(data, len);
    return true;
}

/* ---- the decision ---------------------------------------------------------- */

/* A line about limit L, at most once a second over all workers (the slot
 * in shm is the throttle), so a flood cannot flood the log. */
static void lb_rl_log(struct lb_rl_limit *l, uint64_t now_ns, const char *client_ip,
                      const char *what)
{
    uint64_t now_ms = now_ns / 1000000, last = atomic_load_explicit(&l->shared->log_ms,
                                                                    memory_order_relaxed);
    if (last != 0 && now_ms - last < 1000)
        return;
    if (!atomic_compare_exchange_strong(&l->shared->log_ms, &last, now_ms))
        return;
    lb_log_info("rate limit '%s' %s client %s (logged at most once a second per limit)",
                l->cfg->name, what, client_ip);
}

static void lb_rl_mark(struct lb_rl_note *note, enum lb_rl_mark mark, size_t limit)
{
    /* A refusal beats a wait, which beats a dry run's would-be refusal. */
    if (note->mark != LB_RL_MARK_NONE && note->mark <= mark)
        return;
    note->mark = (uint8_t)mark;
    note->marked = (uint8_t)limit;
}

/* A limit that let a request through, until the others have spoken. */
struct lb_rl_passed {
    struct lb_rl_entry *e;              /* NULL: a fleet limit (nothing to refund here) */
    uint64_t key;
    uint64_t wait_ns;
    struct lb_rl_limit *l;
};

/* A request's judgement so far, kept while a fleet limit asks redis. */
struct lb_rl_state {
    struct lb_rl_passed taken[LB_RL_ROUTE_MAX];
    size_t ntaken;
    uint64_t wait;                      /* the longest hold asked so far */
    uint64_t now;
    struct lb_rl_note *note;
    const char *client;                 /* for log lines (the session's, which outlives us) */
};

/* A request waiting for redis's word on its fleet limit. */
struct lb_rl_pending {
    struct lb_ratelimit *rl;
    struct lb_rl_state st;
    size_t li;                          /* the fleet limit */
    uint64_t key;                       /* its key in this instance's table */
    struct lb_fleet_ask *ask;
    lb_rl_done_fn done;
    void *arg;
};

/* Limit LI's verdict G on the request. false when it refused (D says how,
 * the limits before it got their tokens back). */
static bool lb_rl_apply(struct lb_ratelimit *rl, struct lb_rl_state *st, size_t li,
                        struct lb_rl_entry *e, uint64_t key, const struct lb_gcra *g,
                        struct lb_rl_decision *d)
{
    struct lb_rl_limit *l = &rl->limits[li];
    struct lb_rl_note *note = st->note;
    if (!g->admit && l->cfg->dry_run) {
        lb_counter_add(&l->stats->dry_run, 1);
        lb_rl_mark(note, LB_RL_MARK_DRY_RUN, li);
        lb_rl_log(l, st->now, st->client, "(dry run) would refuse");
        return true;
    }
    if (!g->admit) {
        /* The limits before this one let it through: their tokens go
         * back, as the request goes nowhere. */
        for (size_t i = 0; i < st->ntaken; i++)
            if (st->taken[i].e != NULL)
                lb_rltable_refund(st->taken[i].e, st->taken[i].key,
                                  st->taken[i].l->cfg->interval_ns);
        lb_counter_add(&l->stats->limited, 1);
        lb_rl_mark(note, LB_RL_MARK_REFUSED, li);
        d->verdict = LB_RL_REFUSE;
        d->status = l->cfg->status;
        d->retry_after_s = lb_rl_ceil_s(g->retry_ns);
        note->n = 1;
        note->limit[0] = (uint8_t)li;
        note->remaining[0] = 0;
        note->reset_s[0] = d->retry_after_s;
        lb_rl_log(l, st->now, st->client, "refused");
        return false;
    }
    uint64_t w = l->cfg->dry_run ? 0 : g->wait_ns;
    st->taken[st->ntaken++] = (struct lb_rl_passed){ e, key, w, l };
    if (w > st->wait) {
        st->wait = w;
        lb_rl_mark(note, LB_RL_MARK_DELAYED, li);
    }
    if (l->cfg->headers) {
        note->limit[note->n] = (uint8_t)li;
        note->remaining[note->n] = g->remaining > UINT32_MAX ? UINT32_MAX : (uint32_t)g->remaining;
        note->reset_s[note->n] = lb_rl_ceil_s(g->reset_ns);
        note->n++;
    }
    return true;
}

/* Limit LI judged by this instance's table. */
static bool lb_rl_local(struct lb_ratelimit *rl, struct lb_rl_state *st, size_t li, uint64_t key,
                        struct lb_rl_decision *d)
{
    struct lb_rl_limit *l = &rl->limits[li];
    enum lb_rl_taken how;
    struct lb_rl_entry *e = lb_rltable_get(l->table, l->cap, key, st->now, &how);
    if (e == NULL)
        return true;        /* the window was being claimed by others: let it pass */
    if (how == LB_RL_NEW)
        lb_counter_add(&l->stats->inserts, 1);
    else if (how == LB_RL_EVICTED)
        lb_counter_add(&l->stats->evictions, 1);
    struct lb_gcra g;
    lb_rltable_consume(e, st->now, &l->params, true, &g);
    return lb_rl_apply(rl, st, li, e, key, &g, d);
}

/* Every limit let the request through: count them, hold it if asked. */
static void lb_rl_finish(struct lb_rl_state *st, struct lb_rl_decision *d)
{
    for (size_t i = 0; i < st->ntaken; i++)
        lb_counter_add(st->taken[i].wait_ns > 0 ? &st->taken[i].l->stats->delayed
                                                : &st->taken[i].l->stats->allowed, 1);
    if (st->wait > 0) {
        d->verdict = LB_RL_DELAY;
        d->delay_ms = (st->wait + 999999) / 1000000;
        st->note->delay_ms = d->delay_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)d->delay_ms;
    }
}

/* Redis's word (OK) or its silence (judged here instead). */
static void lb_rl_fleet_done(void *arg, bool ok, const struct lb_gcra *g)
{
    struct lb_rl_pending *p = arg;
    struct lb_ratelimit *rl = p->rl;
    struct lb_rl_decision d = { .verdict = LB_RL_ADMIT };
    p->st.now = lb_rl_now_ns();
    bool pass = ok ? lb_rl_apply(rl, &p->st, p->li, NULL, 0, g, &d)
                   : lb_rl_local(rl, &p->st, p->li, p->key, &d);
    if (pass)
        lb_rl_finish(&p->st, &d);
    lb_rl_done_fn done = p->done;
    void *done_arg = p->arg;
    free(p);
    done(done_arg, &d);
}

void lb_ratelimit_check(struct lb_ratelimit *rl, const struct lb_rl_request *req,
                        struct lb_rl_note *note, struct lb_rl_decision *d,
                        struct lb_rl_pending **pending)
{
    struct lb_rl_state st;
    st.ntaken = 0;
    st.wait = 0;
    st.now = lb_rl_now_ns();
    st.note = note;
    st.client = req->client_ip;
    *d = (struct lb_rl_decision){ .verdict = LB_RL_ADMIT };
    *pending = NULL;
    size_t fleet_li = SIZE_MAX;
    uint64_t fleet_local = 0, fleet_key = 0;
    const struct lb_route_cfg *r = req->route;
    for (size_t k = 0; k < r->nrate_limits; k++) {
        size_t li = r->rate_limits[k];
        struct lb_rl_limit *l = &rl->limits[li];
        bool fleet = l->cfg->scope == LB_RL_SCOPE_FLEET && rl->fleet != NULL;
        uint64_t key;
        if (!lb_rl_request_key(rl, l, req, &key, fleet ? &fleet_key : NULL))
            continue;
        if (fleet) {
            /* One per route (config): asked last, once the local limits
             * passed, so that nothing after it can refuse. */
            fleet_li = li;
            fleet_local = key;
            continue;
        }
        if (!lb_rl_local(rl, &st, li, key, d))
            return;
    }
    if (fleet_li != SIZE_MAX) {
        struct lb_rl_pending *p = malloc(sizeof(*p));
        if (p != NULL) {
            *p = (struct lb_rl_pending){ .rl = rl, .st = st, .li = fleet_li, .key = fleet_local,
                                         .done = req->done, .arg = req->arg };
            p->ask = lb_fleet_ask(rl->fleet, rl->limits[fleet_li].cfg, fleet_key,
                                  &rl->limits[fleet_li].params, lb_rl_fleet_done, p);
            if (p->ask != NULL) {
                d->verdict = LB_RL_ASK;
                *pending = p;
                return;
            }
            free(p);
        } else {
            lb_fleet_fallback(rl->fleet, "out of memory");
        }
        /* Redis is down: this instance judges alone (counted, logged). */
        if (!lb_rl_local(rl, &st, fleet_li, fleet_local, d))
            return;
    }
    lb_rl_finish(&st, d);
}

void lb_ratelimit_cancel(struct lb_rl_pending *p)
{
    if (p == NULL)
        return;
    lb_fleet_cancel(p->ask);
    free(p);
}

/* ---- what the client and the log see --------------------------------------- */

/* Appending to a bounded buffer without printf: a refusal must cost less
 * than the request it spares the backend, and printf alone would cost more
 * than lbd's whole handling of a request. P is NULL once out of room. */
static char *lb_rl_put(char *p, const char *end, const char *s, size_t n)
{
    if (p == NULL || (size_t)(end - p) < n)
        return NULL;
    memcpy(p, s, n);
    return p + n;
}

static char *lb_rl_put_str(char *p, const char *end, const char *s)
{
    return lb_rl_put(p, end, s, strlen(s));
}

static char *lb_rl_put_u64(char *p, const char *end, uint64_t v)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[sizeof(digits) - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return lb_rl_put(p, end, digits + sizeof(digits) - n, n);
}

size_t lb_ratelimit_fields(const struct lb_ratelimit *rl, const struct lb_rl_note *note,
                           uint32_t retry_after_s, char *buf, size_t cap)
{
    char *p = buf;
    const char *end = buf + cap;
    if (retry_after_s > 0) {
        p = lb_rl_put_str(p, end, "Retry-After: ");
        p = lb_rl_put_u64(p, end, retry_after_s);
        p = lb_rl_put(p, end, "\r\n", 2);
    }
    if (note->n > 0) {
        /* draft-ietf-httpapi-ratelimit-headers: Structured Field lists of
         * a quoted policy name with parameters. The policy is the
         * configured rate (q requests per w seconds); the service limit
         * what is left now (r) and the seconds until the bucket is full
         * again (t), or on a refusal until a request will pass. Names need
         * no escaping: the config allows A-Z a-z 0-9 _ - . only. */
        p = lb_rl_put_str(p, end, "RateLimit-Policy: ");
        for (unsigned i = 0; i < note->n; i++) {
            const struct lb_ratelimit_cfg *c = rl->limits[note->limit[i]].cfg;
            p = lb_rl_put_str(p, end, i ? ", \"" : "\"");
            p = lb_rl_put_str(p, end, c->name);
            p = lb_rl_put_str(p, end, "\";q=");
            p = lb_rl_put_u64(p, end, c->rate);
            p = lb_rl_put_str(p, end, c->per_minute ? ";w=60" : ";w=1");
        }
        p = lb_rl_put_str(p, end, "\r\nRateLimit: ");
        for (unsigned i = 0; i < note->n; i++) {
            p = lb_rl_put_str(p, end, i ? ", \"" : "\"");
            p = lb_rl_put_str(p, end, rl->limits[note->limit[i]].cfg->name);
            p = lb_rl_put_str(p, end, "\";r=");
            p = lb_rl_put_u64(p, end, note->remaining[i]);
            p = lb_rl_put_str(p, end, ";t=");
            p = lb_rl_put_u64(p, end, note->reset_s[i]);
        }
        p = lb_rl_put(p, end, "\r\n", 2);
    }
    return p == NULL ? 0 : (size_t)(p - buf);
}

void lb_ratelimit_log_mark(const struct lb_ratelimit *rl, const struct lb_rl_note *note,
                           char *buf, size_t cap)
{
    buf[0] = '\0';
    if (note->mark == LB_RL_MARK_NONE || rl == NULL)
        return;
    const char *name = rl->limits[note->marked].cfg->name;
    if (note->mark == LB_RL_MARK_REFUSED)
        snprintf(buf, cap, " limited=%s", name);
    else if (note->mark == LB_RL_MARK_DRY_RUN)
        snprintf(buf, cap, " limited=%s:dry_run", name);
    else
        snprintf(buf, cap, " limited=%s:delayed=%ums", name, note->delay_ms);
}

/* ---- connections per client address --------------------------------------- */

bool lb_ratelimit_conn_open(struct lb_ratelimit *rl, size_t listener, const struct sockaddr *peer,
                            uint32_t *token)
{
    *token = 0;
    unsigned max = rl->cfg->listeners[listener].max_connections_per_ip;
    if (max == 0)
        return true;
    /* The address (IPv4 as mapped IPv6) and the listener: a limit per
     * listener, kept over reloads that keep the listener's address. */
    unsigned char buf[24] = { 0 };
    if (peer->sa_family == AF_INET) {
        buf[10] = buf[11] = 0xff;
        memcpy(buf + 12, &((const struct sockaddr_in *)peer)->sin_addr, 4);
    } else if (peer->sa_family == AF_INET6) {
        memcpy(buf, &((const struct sockaddr_in6 *)peer)->sin6_addr, 16);
    } else {
        return true;
    }
    memcpy(buf + 16, &rl->listener_salts[listener], 8);
    uint64_t key = lb_rl_hash(rl, buf, sizeof(buf));
    uint64_t cap = rl->shm->conn_entries;
    struct lb_rl_entry *e = lb_conntable_get(rl->conns, cap, key);
    if (e == NULL)
        return true;        /* more addresses than the window holds: untracked */
    /* Count ours first, then read the others': two workers accepting the
     * same address at once may both refuse, never both exceed the limit. */
    uint64_t mine = atomic_load_explicit(&e->val, memory_order_relaxed) + 1;
    atomic_store_explicit(&e->val, mine, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t total = mine;
    unsigned used = atomic_load_explicit(&rl->shm->slots_used, memory_order_relaxed);
    for (unsigned s = 0; s < used && total <= max; s++) {
        if (s == rl->slot ||
            atomic_load_explicit(&lb_shm_worker(rl->shm, s)->state, memory_order_relaxed) ==
                LB_SLOT_FREE)
            continue;
        total += lb_conntable_count(lb_shm_conn_table(rl->shm, s), cap, key);
    }
    if (total <= max) {
        *token = (uint32_t)(e - rl->conns) + 1;
        return true;
    }
    atomic_store_explicit(&e->val, mine - 1, memory_order_relaxed);
    lb_counter_add(&lb_shm_worker(rl->shm, rl->slot)->conn_limited, 1);
    uint64_t now_ms = lb_rl_now_ns() / 1000000;
    if (rl->conn_log_ms == 0 || now_ms - rl->conn_log_ms >= 1000) {
        rl->conn_log_ms = now_ms;
        char addr[INET6_ADDRSTRLEN];
        lb_addr_format_host(peer, addr, sizeof(addr));
        lb_log_info("listener %s: connection from %s refused: max_connections_per_ip (%u) "
                    "reached (logged at most once a second per worker)",
                    rl->cfg->listeners[listener].address, addr, max);
    }
    return false;
}

void lb_ratelimit_conn_close(struct lb_ratelimit *rl, uint32_t token)
{
    if (rl == NULL || token == 0)
        return;
    struct lb_rl_entry *e = &rl->conns[token - 1];
    uint64_t n = atomic_load_explicit(&e->val, memory_order_relaxed);
    if (n > 0)
        atomic_store_explicit(&e->val, n - 1, memory_order_relaxed);
}
