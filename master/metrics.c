#include "master/metrics.h"

#include <stdlib.h>
#include <string.h>

#include "master/snapshot.h"
#include "shared/version.h"

static const char *const lb_codes[LB_STATUS_CLASSES] = { "1xx", "2xx", "3xx", "4xx", "5xx" };
static const char *const lb_timeout_kinds[LB_TIMEOUT_KINDS] = {
    "client_header", "client_body", "client_idle", "connect", "backend_response",
    "send", "deadline", "tunnel",
};

static void lb_family(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Backends that exist (active or retired but still counted), with totals. */
struct lb_metrics_backend {
    const struct lb_shm_backend *b;
    struct lb_backend_totals t;
};

static size_t lb_metrics_backends(const struct lb_shm_header *h, struct lb_metrics_backend **out)
{
    size_t n = 0;
    struct lb_metrics_backend *v = calloc(h->max_backends, sizeof(*v));
    if (v == NULL)
        return 0;
    for (unsigned i = 0; i < h->max_backends; i++) {
        const struct lb_shm_backend *b = lb_shm_backend(h, i);
        if (atomic_load(&b->state) != LB_ENTRY_ACTIVE || !lb_shm_backend_shown(b))
            continue;
        v[n].b = b;
        lb_shm_backend_sum(h, i, &v[n].t);
        n++;
    }
    *out = v;
    return n;
}

#define LB_LABELS "pool=\"%s\",server=\"%s\""

static void lb_metrics_backend_counter(FILE *out, const struct lb_metrics_backend *v, size_t n,
                                       const char *name, const char *help, size_t offset)
{
    lb_family(out, name, "counter", help);
    for (size_t i = 0; i < n; i++)
        fprintf(out, "%s{" LB_LABELS "} %llu\n", name, v[i].b->pool, lb_shm_backend_name(v[i].b),
                (unsigned long long)*(const uint64_t *)((const char *)&v[i].t + offset));
}

/* One family with a sample per live worker slot, of the counter at OFFSET. */
static void lb_metrics_live_workers(FILE *out, const struct lb_shm_header *h, const char *name,
                                    const char *type, const char *help, size_t offset)
{
    lb_family(out, name, type, help);
    unsigned used = atomic_load(&h->slots_used);
    for (unsigned s = 0; s < used && s < h->max_slots; s++) {
        struct lb_shm_worker *w = lb_shm_worker(h, s);
        if (atomic_load(&w->state) == LB_SLOT_FREE)
            continue;
        fprintf(out, "%s{worker=\"%u\",slot=\"%u\"} %llu\n", name, atomic_load(&w->id), s,
                (unsigned long long)lb_counter_get((lb_counter_t *)((char *)w + offset)));
    }
}

/* The current configuration's rate limits (no families without any). */
static void lb_metrics_limits(const struct lb_shm_header *h, FILE *out)
{
    static const char *const results[] = { "allowed", "limited", "delayed", "dry_run" };
    struct lb_limit_totals t[LB_SHM_MAX_LIMITS];
    const struct lb_shm_limit *l[LB_SHM_MAX_LIMITS];
    size_t n = 0;
    for (unsigned i = 0; i < h->max_limits && n < LB_SHM_MAX_LIMITS; i++) {
        l[n] = lb_shm_limit(h, i);
        if (atomic_load(&l[n]->state) != LB_ENTRY_ACTIVE)
            continue;
        lb_shm_limit_sum(h, i, &t[n]);
        n++;
    }
    if (n == 0)
        return;
    lb_family(out, "lbd_ratelimit_requests_total", "counter",
              "Requests judged by a rate limit, by result (dry_run: would have been refused).");
    for (size_t i = 0; i < n; i++) {
        const uint64_t v[] = { t[i].allowed, t[i].limited, t[i].delayed, t[i].dry_run };
        for (size_t k = 0; k < LB_ARRAY_SIZE(results); k++)
            fprintf(out, "lbd_ratelimit_requests_total{limit=\"%s\",result=\"%s\"} %llu\n",
                    l[i]->name, results[k], (unsigned long long)v[k]);
    }
    lb_family(out, "lbd_ratelimit_evictions_total", "counter",
              "Keys dropped from a full table while their bucket was not full.");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "lbd_ratelimit_evictions_total{limit=\"%s\"} %llu\n", l[i]->name,
                (unsigned long long)t[i].evictions);
    lb_family(out, "lbd_ratelimit_keys", "gauge", "Keys held in a rate limit's table.");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "lbd_ratelimit_keys{limit=\"%s\"} %llu\n", l[i]->name,
                (unsigned long long)t[i].keys);
    lb_family(out, "lbd_ratelimit_table_size", "gauge", "Keys a rate limit's table can hold.");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "lbd_ratelimit_table_size{limit=\"%s\"} %llu\n", l[i]->name,
                (unsigned long long)l[i]->capacity);
}

/* Sticky sessions, per pool that has them (no families without any). */
static void lb_metrics_sticky(const struct lb_shm_header *h, FILE *out,
                              const struct lb_metrics_backend *v, size_t n)
{
    static const char *const fam[LB_STICKY_RESULTS][2] = {
        { "lbd_sticky_hits_total", "Requests sent to the server their sticky cookie named." },
        { "lbd_sticky_repins_total",
          "Requests whose sticky cookie named a server that could not take them (down, breaker "
          "open or full): balanced and given a new cookie." },
        { "lbd_sticky_invalid_total",
          "Requests with a sticky cookie naming no server of the pool (forged, malformed, "
          "another pool's or a removed server's): balanced and given a new cookie." },
    };
    bool any = false;
    for (unsigned p = 0; p < h->max_pools && !any; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        any = atomic_load(&pool->state) == LB_ENTRY_ACTIVE && atomic_load(&pool->sticky);
    }
    if (!any)
        return;
    for (unsigned k = 0; k < LB_STICKY_RESULTS; k++) {
        lb_family(out, fam[k][0], "counter", fam[k][1]);
        for (unsigned p = 0; p < h->max_pools; p++) {
            struct lb_shm_pool *pool = lb_shm_pool(h, p);
            if (atomic_load(&pool->state) != LB_ENTRY_ACTIVE || !atomic_load(&pool->sticky))
                continue;
            uint64_t sum = 0;
            for (size_t i = 0; i < n; i++)
                if (v[i].b->pool_id == p)
                    sum += v[i].t.sticky[k];
            fprintf(out, "%s{pool=\"%s\"} %llu\n", fam[k][0], pool->name, (unsigned long long)sum);
        }
    }
}

/* Fault injection: configured faults by name and type; those asked for
 * by request headers as fault="headers". */
static void lb_metrics_faults(const struct lb_shm_header *h, FILE *out)
{
    lb_family(out, "lbd_faults_injected_total", "counter",
              "Requests a fault was injected into, by fault and type (delay, abort, reset).");
    for (unsigned i = 0; i < h->max_faults; i++) {
        struct lb_shm_fault *f = lb_shm_fault(h, i);
        if (atomic_load(&f->state) != LB_ENTRY_ACTIVE)
            continue;
        fprintf(out, "lbd_faults_injected_total{fault=\"%s\",type=\"%s\"} %llu\n", f->name,
                lb_fault_type_name((enum lb_fault_type)f->type),
                (unsigned long long)atomic_load(&f->injected));
    }
    struct lb_worker_totals all = { 0 };
    unsigned used = atomic_load(&h->slots_used);
    for (unsigned s = 0; s < used && s < h->max_slots; s++)
        lb_shm_worker_add(lb_shm_worker(h, s), &all);
    fprintf(out, "lbd_faults_injected_total{fault=\"headers\",type=\"delay\"} %llu\n",
            (unsigned long long)all.header_faults[0]);
    fprintf(out, "lbd_faults_injected_total{fault=\"headers\",type=\"abort\"} %llu\n",
            (unsigned long long)all.header_faults[1]);
    lb_family(out, "lbd_fault_percent", "gauge",
              "Share of its pool's requests a fault is injected into now (0 when disabled).");
    for (unsigned i = 0; i < h->max_faults; i++) {
        struct lb_shm_fault *f = lb_shm_fault(h, i);
        if (atomic_load(&f->state) == LB_ENTRY_ACTIVE)
            fprintf(out, "lbd_fault_percent{fault=\"%s\"} %g\n", f->name,
                    (double)atomic_load(&f->live_ppm) / (LB_FAULT_PPM_ONE / 100));
    }
}

void lb_metrics_write(const struct lb_shm_header *h, FILE *out)
{
    static const uint64_t bounds[LB_DURATION_BUCKETS] = LB_DURATION_BOUNDS_US;

    lb_family(out, "lbd_build_info", "gauge", "lbd version; always 1.");
    fprintf(out, "lbd_build_info{version=\"%s\",shm_layout=\"%u\"} 1\n", lb_version,
            h->layout_version);
    lb_family(out, "lbd_start_time_seconds", "gauge", "When the master started, seconds since the epoch.");
    fprintf(out, "lbd_start_time_seconds %.3f\n", (double)atomic_load(&h->started_ms) / 1000.0);
    lb_family(out, "lbd_config_generation", "gauge", "Configuration generation, +1 per reload.");
    fprintf(out, "lbd_config_generation %llu\n", (unsigned long long)atomic_load(&h->generation));
    lb_family(out, "lbd_config_reloads_total", "counter", "Successful configuration reloads.");
    fprintf(out, "lbd_config_reloads_total %llu\n", (unsigned long long)atomic_load(&h->reloads));
    lb_family(out, "lbd_config_reload_failures_total", "counter", "Refused configuration reloads.");
    fprintf(out, "lbd_config_reload_failures_total %llu\n",
            (unsigned long long)atomic_load(&h->reload_failures));
    lb_family(out, "lbd_upgrades_total", "counter", "Binary upgrades (USR2) that took over.");
    fprintf(out, "lbd_upgrades_total %llu\n", (unsigned long long)atomic_load(&h->upgrades));
    lb_family(out, "lbd_upgrade_failures_total", "counter",
              "Binary upgrades refused or rolled back; the running binary kept serving.");
    fprintf(out, "lbd_upgrade_failures_total %llu\n",
            (unsigned long long)atomic_load(&h->upgrade_failures));

    struct lb_metrics_backend *v = NULL;
    size_t n = lb_metrics_backends(h, &v);
    lb_metrics_backend_counter(out, v, n, "lbd_backend_requests_total",
                               "Requests sent to a server.",
                               offsetof(struct lb_backend_totals, requests));
    lb_family(out, "lbd_backend_responses_total", "counter", "Responses from a server by status class.");
    for (size_t i = 0; i < n; i++)
        for (unsigned c = 0; c < LB_STATUS_CLASSES; c++)
            fprintf(out, "lbd_backend_responses_total{" LB_LABELS ",code=\"%s\"} %llu\n",
                    v[i].b->pool, lb_shm_backend_name(v[i].b), lb_codes[c],
                    (unsigned long long)v[i].t.responses[c]);
    lb_metrics_backend_counter(out, v, n, "lbd_backend_failures_total",
                               "Failed exchanges with a server (connect, reset, timeout, bad response).",
                               offsetof(struct lb_backend_totals, failures));
    lb_metrics_backend_counter(out, v, n, "lbd_backend_received_bytes_total",
                               "Bytes received from a server.",
                               offsetof(struct lb_backend_totals, bytes_in));
    lb_metrics_backend_counter(out, v, n, "lbd_backend_sent_bytes_total",
                               "Bytes sent to a server.",
                               offsetof(struct lb_backend_totals, bytes_out));
    lb_family(out, "lbd_backend_tls_handshakes_total", "counter",
              "TLS handshakes with a server (pools[].tls): full, resumed (session reused), "
              "failed (verification or protocol: counted as connect failures).");
    for (size_t i = 0; i < n; i++)
        for (unsigned r = 0; r < LB_TLS_RESULTS; r++)
            fprintf(out, "lbd_backend_tls_handshakes_total{" LB_LABELS ",result=\"%s\"} %llu\n",
                    v[i].b->pool, lb_shm_backend_name(v[i].b), lb_tls_result_names[r],
                    (unsigned long long)v[i].t.tls_handshakes[r]);
    lb_family(out, "lbd_backend_active_requests", "gauge", "Requests in flight to a server, all workers.");
    for (size_t i = 0; i < n; i++) {
        int64_t a = atomic_load(&v[i].b->inflight);
        fprintf(out, "lbd_backend_active_requests{" LB_LABELS "} %lld\n", v[i].b->pool,
                lb_shm_backend_name(v[i].b), (long long)(a > 0 ? a : 0));
    }
    lb_family(out, "lbd_backend_up", "gauge", "1 if the server is healthy (active checks) and ready (not drain or maint); its breaker: lbd_backend_breaker_state.");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "lbd_backend_up{" LB_LABELS "} %d\n", v[i].b->pool, lb_shm_backend_name(v[i].b),
                lb_backend_usable(v[i].b));
    lb_family(out, "lbd_backend_admin_state", "gauge",
              "1 for the state an operator set on a server (admin API): ready, drain or maint.");
    for (size_t i = 0; i < n; i++)
        for (unsigned k = 0; k < LB_BACKEND_ADMIN_STATES; k++)
            fprintf(out, "lbd_backend_admin_state{" LB_LABELS ",state=\"%s\"} %d\n", v[i].b->pool,
                    lb_shm_backend_name(v[i].b), lb_backend_admin_names[k],
                    (unsigned)lb_backend_admin_state(v[i].b) == k);
    lb_family(out, "lbd_backend_breaker_state", "gauge",
              "Circuit breaker of a server: 0 closed, 1 open, 2 half-open.");
    uint64_t now_ms = lb_now_ms();
    for (size_t i = 0; i < n; i++)
        fprintf(out, "lbd_backend_breaker_state{" LB_LABELS "} %d\n", v[i].b->pool,
                lb_shm_backend_name(v[i].b), (int)lb_shm_breaker_shown(v[i].b, now_ms));
    lb_family(out, "lbd_backend_breaker_transitions_total", "counter",
              "Circuit breaker transitions of a server, by the state entered.");
    for (size_t i = 0; i < n; i++)
        for (unsigned k = 0; k < LB_BREAKER_STATES; k++)
            fprintf(out, "lbd_backend_breaker_transitions_total{" LB_LABELS ",to=\"%s\"} %llu\n",
                    v[i].b->pool, lb_shm_backend_name(v[i].b), lb_breaker_state_names[k],
                    (unsigned long long)atomic_load(&v[i].b->breaker_transitions[k]));
    lb_family(out, "lbd_backend_weight", "gauge",
              "Current weight of a server: the admin API's runtime weight if set, else the file's.");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "lbd_backend_weight{" LB_LABELS "} %u\n", v[i].b->pool, lb_shm_backend_name(v[i].b),
                atomic_load(&v[i].b->weight));
    lb_family(out, "lbd_backend_effective_weight", "gauge",
              "Weight of a server as the balancer uses it now: less than lbd_backend_weight while it slow-starts.");
    for (size_t i = 0; i < n; i++) {
        uint64_t slow = atomic_load(&lb_shm_pool(h, v[i].b->pool_id)->slow_start_ms);
        fprintf(out, "lbd_backend_effective_weight{" LB_LABELS "} %g\n", v[i].b->pool,
                lb_shm_backend_name(v[i].b), lb_snapshot_effective_weight(v[i].b, slow, now_ms));
    }
    lb_family(out, "lbd_backend_max_requests", "gauge",
              "Requests in flight a server takes at most, all workers (0: no limit).");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "lbd_backend_max_requests{" LB_LABELS "} %u\n", v[i].b->pool,
                lb_shm_backend_name(v[i].b), atomic_load(&v[i].b->max_requests));
    lb_family(out, "lbd_health_checks_total", "counter", "Active health check results.");
    for (size_t i = 0; i < n; i++) {
        fprintf(out, "lbd_health_checks_total{" LB_LABELS ",result=\"ok\"} %llu\n",
                v[i].b->pool, lb_shm_backend_name(v[i].b),
                (unsigned long long)atomic_load(&v[i].b->checks_ok));
        fprintf(out, "lbd_health_checks_total{" LB_LABELS ",result=\"failed\"} %llu\n",
                v[i].b->pool, lb_shm_backend_name(v[i].b),
                (unsigned long long)atomic_load(&v[i].b->checks_failed));
    }
    lb_family(out, "lbd_backend_response_time_ewma_seconds", "gauge",
              "Peak EWMA of time to response head (least_time).");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "lbd_backend_response_time_ewma_seconds{" LB_LABELS "} %.6f\n",
                v[i].b->pool, lb_shm_backend_name(v[i].b),
                (double)atomic_load(&v[i].b->ewma_us) / 1e6);
    lb_family(out, "lbd_request_duration_seconds", "histogram",
              "Time from dispatch to the last response byte, by server.");
    for (size_t i = 0; i < n; i++) {
        uint64_t cum = 0;
        for (unsigned k = 0; k < LB_DURATION_BUCKETS; k++) {
            cum += v[i].t.duration[k];
            if (k + 1 < LB_DURATION_BUCKETS)
                fprintf(out, "lbd_request_duration_seconds_bucket{" LB_LABELS ",le=\"%g\"} %llu\n",
                        v[i].b->pool, lb_shm_backend_name(v[i].b), (double)bounds[k] / 1e6,
                        (unsigned long long)cum);
            else
                fprintf(out, "lbd_request_duration_seconds_bucket{" LB_LABELS ",le=\"+Inf\"} %llu\n",
                        v[i].b->pool, lb_shm_backend_name(v[i].b), (unsigned long long)cum);
        }
        fprintf(out, "lbd_request_duration_seconds_sum{" LB_LABELS "} %.6f\n", v[i].b->pool,
                lb_shm_backend_name(v[i].b), (double)v[i].t.duration_sum_us / 1e6);
        fprintf(out, "lbd_request_duration_seconds_count{" LB_LABELS "} %llu\n", v[i].b->pool,
                lb_shm_backend_name(v[i].b), (unsigned long long)cum);
    }
    lb_metrics_sticky(h, out, v, n);
    free(v);

    lb_family(out, "lbd_pool_breaker_refused_total", "counter",
              "Requests a pool answered 503 at once: every usable server's circuit breaker was open.");
    for (unsigned p = 0; p < h->max_pools; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        if (atomic_load(&pool->state) == LB_ENTRY_ACTIVE)
            fprintf(out, "lbd_pool_breaker_refused_total{pool=\"%s\"} %llu\n", pool->name,
                    (unsigned long long)atomic_load(&pool->breaker_refused));
    }

    lb_family(out, "lbd_pool_queue_depth", "gauge",
              "Requests waiting in a pool's queue for a server under its max_requests, all workers.");
    for (unsigned p = 0; p < h->max_pools; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        if (atomic_load(&pool->state) == LB_ENTRY_ACTIVE)
            fprintf(out, "lbd_pool_queue_depth{pool=\"%s\"} %u\n", pool->name,
                    atomic_load(&pool->queue_depth));
    }
    lb_family(out, "lbd_pool_queued_total", "counter",
              "Requests that waited in a pool's queue (every usable server was at its max_requests).");
    for (unsigned p = 0; p < h->max_pools; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        if (atomic_load(&pool->state) == LB_ENTRY_ACTIVE)
            fprintf(out, "lbd_pool_queued_total{pool=\"%s\"} %llu\n", pool->name,
                    (unsigned long long)atomic_load(&pool->queued));
    }
    static const char *const refusals[LB_QUEUE_REFUSALS] = { "full", "timeout" };
    lb_family(out, "lbd_pool_queue_refused_total", "counter",
              "Requests a pool's queue answered 503: it was full, or no server had room within queue.timeout.");
    for (unsigned p = 0; p < h->max_pools; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        if (atomic_load(&pool->state) != LB_ENTRY_ACTIVE)
            continue;
        for (unsigned r = 0; r < LB_QUEUE_REFUSALS; r++)
            fprintf(out, "lbd_pool_queue_refused_total{pool=\"%s\",reason=\"%s\"} %llu\n",
                    pool->name, refusals[r],
                    (unsigned long long)atomic_load(&pool->queue_refused[r]));
    }

    lb_family(out, "lbd_discovery_errors_total", "counter",
              "Service discovery answers that failed or could not be used, by pool and source type.");
    for (unsigned p = 0; p < h->max_pools; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        if (atomic_load(&pool->state) == LB_ENTRY_ACTIVE && pool->disco_type[0] != '\0')
            fprintf(out, "lbd_discovery_errors_total{pool=\"%s\",type=\"%s\"} %llu\n",
                    pool->name, pool->disco_type,
                    (unsigned long long)atomic_load(&pool->disco_errors));
    }
    lb_family(out, "lbd_discovery_last_success_seconds", "gauge",
              "Wall clock of the last good service discovery answer of a pool (0: none yet).");
    for (unsigned p = 0; p < h->max_pools; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        if (atomic_load(&pool->state) == LB_ENTRY_ACTIVE && pool->disco_type[0] != '\0')
            fprintf(out, "lbd_discovery_last_success_seconds{pool=\"%s\"} %.3f\n", pool->name,
                    (double)atomic_load(&pool->disco_last_success_ms) / 1000.0);
    }

    lb_family(out, "lbd_retries_total", "counter",
              "Requests sent again after a failed try, by pool and reason.");
    for (unsigned p = 0; p < h->max_pools; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        if (atomic_load(&pool->state) != LB_ENTRY_ACTIVE)
            continue;
        for (unsigned k = 0; k < LB_RETRY_REASONS; k++)
            fprintf(out, "lbd_retries_total{pool=\"%s\",reason=\"%s\"} %llu\n", pool->name,
                    lb_retry_reason_names[k], (unsigned long long)atomic_load(&pool->retries[k]));
    }
    lb_family(out, "lbd_retry_budget_exhausted_total", "counter",
              "Retries not made because the pool's retry budget was spent.");
    for (unsigned p = 0; p < h->max_pools; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        if (atomic_load(&pool->state) == LB_ENTRY_ACTIVE)
            fprintf(out, "lbd_retry_budget_exhausted_total{pool=\"%s\"} %llu\n", pool->name,
                    (unsigned long long)atomic_load(&pool->retry_budget_exhausted));
    }

    /* Client side, summed over every worker slot ever used. */
    struct lb_worker_totals all = { 0 };
    unsigned used = atomic_load(&h->slots_used);
    for (unsigned s = 0; s < used && s < h->max_slots; s++)
        lb_shm_worker_add(lb_shm_worker(h, s), &all);
    lb_family(out, "lbd_connections_total", "counter", "Client connections accepted.");
    fprintf(out, "lbd_connections_total %llu\n", (unsigned long long)all.connections);
    lb_family(out, "lbd_active_connections", "gauge", "Client connections open now.");
    fprintf(out, "lbd_active_connections %llu\n", (unsigned long long)all.active_connections);
    lb_family(out, "lbd_requests_total", "counter", "Client requests parsed (valid or not).");
    fprintf(out, "lbd_requests_total %llu\n", (unsigned long long)all.requests);
    lb_family(out, "lbd_responses_total", "counter", "Responses sent to clients by status class.");
    for (unsigned c = 0; c < LB_STATUS_CLASSES; c++)
        fprintf(out, "lbd_responses_total{code=\"%s\"} %llu\n", lb_codes[c],
                (unsigned long long)all.responses[c]);
    lb_family(out, "lbd_received_bytes_total", "counter", "Bytes received from clients.");
    fprintf(out, "lbd_received_bytes_total %llu\n", (unsigned long long)all.bytes_in);
    lb_family(out, "lbd_sent_bytes_total", "counter", "Bytes sent to clients.");
    fprintf(out, "lbd_sent_bytes_total %llu\n", (unsigned long long)all.bytes_out);
    lb_family(out, "lbd_client_aborts_total", "counter",
              "Clients gone before their answer began (logged as 499).");
    fprintf(out, "lbd_client_aborts_total %llu\n", (unsigned long long)all.client_aborts);
    lb_family(out, "lbd_connections_limited_total", "counter",
              "Client connections closed at accept: max_connections_per_ip reached.");
    fprintf(out, "lbd_connections_limited_total %llu\n", (unsigned long long)all.conn_limited);
    lb_family(out, "lbd_ratelimit_redis_errors_total", "counter",
              "Requests a fleet rate limit judged locally: redis unreachable or slower than its timeout.");
    fprintf(out, "lbd_ratelimit_redis_errors_total %llu\n", (unsigned long long)all.rl_redis_errors);
    lb_family(out, "lbd_timeouts_total", "counter", "Timeouts that fired, by kind.");
    for (unsigned k = 0; k < LB_TIMEOUT_KINDS; k++)
        fprintf(out, "lbd_timeouts_total{kind=\"%s\"} %llu\n", lb_timeout_kinds[k],
                (unsigned long long)all.timeouts[k]);

    static const char *const reasons[LB_PAUSE_REASONS] = { "cap", "fd" };
    lb_family(out, "lbd_accept_pauses_total", "counter",
              "Times a worker stopped accepting: max_connections reached (cap), "
              "accept() failed (fd).");
    for (unsigned r = 0; r < LB_PAUSE_REASONS; r++)
        fprintf(out, "lbd_accept_pauses_total{reason=\"%s\"} %llu\n", reasons[r],
                (unsigned long long)all.accept_pauses[r]);
    lb_family(out, "lbd_tls_handshakes_total", "counter",
              "TLS handshakes on client connections: full, resumed (session ticket), failed.");
    for (unsigned r = 0; r < LB_TLS_RESULTS; r++)
        fprintf(out, "lbd_tls_handshakes_total{result=\"%s\"} %llu\n", lb_tls_result_names[r],
                (unsigned long long)all.tls_handshakes[r]);
    lb_family(out, "lbd_tls_handshake_failures_total", "counter",
              "Failed TLS handshakes by reason: version, cipher (nothing in common), http "
              "(plain HTTP on a TLS port), protocol (malformed, refused), closed (ended first), "
              "sni (a name no certificate has, unknown_sni = \"refuse\").");
    for (unsigned r = 0; r < LB_TLS_FAILURES; r++)
        fprintf(out, "lbd_tls_handshake_failures_total{reason=\"%s\"} %llu\n",
                lb_tls_failure_names[r], (unsigned long long)all.tls_failures[r]);
    lb_family(out, "lbd_tls_unknown_sni_total", "counter",
              "TLS handshakes asking for a name no certificate has (served the default or refused).");
    fprintf(out, "lbd_tls_unknown_sni_total %llu\n", (unsigned long long)all.tls_unknown_sni);
    lb_family(out, "lbd_tls_ticket_key_rotations_total", "counter",
              "Session ticket key rotations of a TLS listener.");
    for (unsigned i = 0; i < h->max_tls; i++) {
        const struct lb_shm_tls *t = lb_shm_tls(h, i);
        if (atomic_load(&t->state) == LB_ENTRY_ACTIVE)
            fprintf(out, "lbd_tls_ticket_key_rotations_total{listener=\"%s\"} %llu\n",
                    t->address, (unsigned long long)atomic_load(&t->rotations));
    }
    lb_family(out, "lbd_tls_certificate_expiry_timestamp_seconds", "gauge",
              "When a TLS listener's certificate expires (notAfter), seconds since the epoch.");
    for (unsigned i = 0; i < h->max_tls; i++) {
        const struct lb_shm_tls *t = lb_shm_tls(h, i);
        if (atomic_load(&t->state) != LB_ENTRY_ACTIVE)
            continue;
        struct lb_shm_tls_cert certs[LB_SHM_TLS_CERTS];
        uint32_t nc = 0;
        lb_shm_tls_certs_get(t, certs, &nc);
        for (uint32_t c = 0; c < nc; c++)
            if (certs[c].not_after != 0)    /* 0: an ACME name without one yet */
                fprintf(out, "lbd_tls_certificate_expiry_timestamp_seconds{listener=\"%s\","
                             "cert=\"%u\",subject=\"%s\"} %lld\n", t->address, c,
                        certs[c].subject, (long long)certs[c].not_after);
    }
    lb_family(out, "lbd_acme_orders_total", "counter",
              "ACME orders by result (valid: a certificate obtained).");
    for (unsigned r = 0; r < LB_ACME_RESULTS; r++)
        fprintf(out, "lbd_acme_orders_total{result=\"%s\"} %llu\n", lb_acme_result_names[r],
                (unsigned long long)lb_counter_get(&lb_shm_acme(h)->orders[r]));
    lb_family(out, "lbd_fd_limit", "gauge", "RLIMIT_NOFILE of every lbd process.");
    fprintf(out, "lbd_fd_limit %llu\n", (unsigned long long)atomic_load(&h->fd_limit));
    lb_family(out, "lbd_workers", "gauge",
              "Worker count in force (the file, -w, or a live scaling: TTIN, TTOU, lbd -S).");
    fprintf(out, "lbd_workers %u\n", atomic_load(&h->workers));
    lb_family(out, "lbd_workers_scaled", "gauge",
              "Worker count a live scaling set (0: none since the start; it holds across reloads).");
    fprintf(out, "lbd_workers_scaled %u\n", atomic_load(&h->workers_scaled));
    lb_family(out, "lbd_steering_listeners", "gauge",
              "Listeners by how new connections pick a worker (client_ip: the eBPF program).");
    fprintf(out, "lbd_steering_listeners{mode=\"client_ip\"} %u\n",
            atomic_load(&h->steer_client_ip));
    fprintf(out, "lbd_steering_listeners{mode=\"kernel\"} %u\n", atomic_load(&h->steer_kernel));
    lb_family(out, "lbd_steering_bpf_unavailable", "gauge",
              "1: client_ip steering was asked but BPF could not be loaded (kernel hash instead).");
    fprintf(out, "lbd_steering_bpf_unavailable %u\n", atomic_load(&h->steer_unavailable));
    lb_family(out, "lbd_admin_connections", "gauge", "Admin connections open now.");
    fprintf(out, "lbd_admin_connections %llu\n",
            (unsigned long long)atomic_load(&h->admin_connections));
    lb_family(out, "lbd_admin_max_connections", "gauge",
              "Admin connections open at once at most (admin.max_connections, fd budget).");
    fprintf(out, "lbd_admin_max_connections %llu\n",
            (unsigned long long)atomic_load(&h->admin_max_connections));
    lb_family(out, "lbd_admin_accept_pauses_total", "counter",
              "Times the admin listener stopped accepting, by reason (cap, fd).");
    for (unsigned r = 0; r < LB_PAUSE_REASONS; r++)
        fprintf(out, "lbd_admin_accept_pauses_total{reason=\"%s\"} %llu\n", reasons[r],
                (unsigned long long)atomic_load(&h->admin_accept_pauses[r]));
    lb_family(out, "lbd_admin_timeouts_total", "counter",
              "Admin connections cut at admin.timeout (request head or answer).");
    fprintf(out, "lbd_admin_timeouts_total %llu\n",
            (unsigned long long)atomic_load(&h->admin_timeouts));

    lb_family(out, "lbd_worker_restarts_total", "counter", "Unexpected worker deaths (each respawned).");
    unsigned nworkers = atomic_load(&h->workers);
    for (unsigned i = 0; i < nworkers && i < LB_MAX_WORKERS; i++)
        fprintf(out, "lbd_worker_restarts_total{worker=\"%u\"} %llu\n", i,
                (unsigned long long)atomic_load(&h->worker_restarts[i]));
    lb_metrics_live_workers(out, h, "lbd_worker_requests_total", "counter",
                            "Requests parsed by the live worker processes.",
                            offsetof(struct lb_shm_worker, requests));
    lb_metrics_live_workers(out, h, "lbd_worker_active_connections", "gauge",
                            "Client connections open per live worker.",
                            offsetof(struct lb_shm_worker, active_connections));
    lb_metrics_live_workers(out, h, "lbd_worker_max_connections", "gauge",
                            "Client connections a live worker holds at most (max_connections).",
                            offsetof(struct lb_shm_worker, max_connections));
    lb_metrics_limits(h, out);
    lb_metrics_faults(h, out);
}
