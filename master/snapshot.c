#include "master/snapshot.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shared/instance.h"
#include "shared/json.h"

const char *const lb_breaker_state_names[LB_BREAKER_STATES] = { "closed", "open", "half_open" };
const char *const lb_backend_admin_names[LB_BACKEND_ADMIN_STATES] = { "ready", "drain", "maint" };
const char *const lb_retry_reason_names[LB_RETRY_REASONS] = { "connect", "reset", "timeout",
                                                               "502", "503", "504", "5xx" };

static const char *const lb_class_names[LB_STATUS_CLASSES] = { "1xx", "2xx", "3xx", "4xx", "5xx" };

static void lb_snapshot_classes(FILE *out, const uint64_t *c)
{
    fputc('{', out);
    for (unsigned i = 0; i < LB_STATUS_CLASSES; i++)
        fprintf(out, "%s\"%s\":%llu", i ? "," : "", lb_class_names[i], (unsigned long long)c[i]);
    fputc('}', out);
}

static const char *const lb_timeout_names[LB_TIMEOUT_KINDS] = {
    "client_header", "client_body", "client_idle", "connect", "backend_response",
    "send", "deadline", "tunnel",
};

static void lb_snapshot_timeouts(FILE *out, const uint64_t *c)
{
    fputc('{', out);
    for (unsigned i = 0; i < LB_TIMEOUT_KINDS; i++)
        fprintf(out, "%s\"%s\":%llu", i ? "," : "", lb_timeout_names[i], (unsigned long long)c[i]);
    fputc('}', out);
}

static void lb_snapshot_pauses(FILE *out, const uint64_t *c)
{
    fprintf(out, "{\"cap\":%llu,\"fd\":%llu}", (unsigned long long)c[LB_PAUSE_CAP],
            (unsigned long long)c[LB_PAUSE_FD]);
}

const char *const lb_tls_result_names[LB_TLS_RESULTS] = { "full", "resumed", "failed" };
const char *const lb_tls_failure_names[LB_TLS_FAILURES] = { "version", "cipher", "http",
                                                            "protocol", "closed", "sni" };

static void lb_snapshot_tls_counts(FILE *out, const uint64_t *hs, const uint64_t *fails,
                                   uint64_t unknown_sni)
{
    fputs("\"tls_handshakes\":{", out);
    for (unsigned i = 0; i < LB_TLS_RESULTS; i++)
        fprintf(out, "%s\"%s\":%llu", i ? "," : "", lb_tls_result_names[i],
                (unsigned long long)hs[i]);
    fputs("},\"tls_failures\":{", out);
    for (unsigned i = 0; i < LB_TLS_FAILURES; i++)
        fprintf(out, "%s\"%s\":%llu", i ? "," : "", lb_tls_failure_names[i],
                (unsigned long long)fails[i]);
    fprintf(out, "},\"tls_unknown_sni\":%llu", (unsigned long long)unknown_sni);
}

const char *const lb_acme_state_names[LB_ACME_STATES] = { "none", "ordering", "valid", "failed" };
const char *const lb_acme_result_names[LB_ACME_RESULTS] = { "valid", "failed" };

static void lb_snapshot_time(FILE *out, const char *key, int64_t s)
{
    char when[32] = "";
    time_t t = (time_t)s;
    struct tm tm;
    if (t != 0 && gmtime_r(&t, &tm) != NULL)
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(out, ",\"%s\":\"%s\",\"%s_s\":%lld", key, when, key, (long long)s);
}

/* ACME: orders by result, each name's state and certificate expiry. */
static void lb_snapshot_acme(const struct lb_shm_header *h, FILE *out)
{
    struct lb_shm_acme *a = lb_shm_acme(h);
    struct lb_shm_acme_name *names = calloc(LB_ACME_MAX_NAMES, sizeof(*names));
    uint32_t n = 0;
    if (names != NULL)
        lb_shm_acme_names_get(a, names, &n);
    fputs(",\"acme\":{\"orders\":{", out);
    for (unsigned r = 0; r < LB_ACME_RESULTS; r++)
        fprintf(out, "%s\"%s\":%llu", r ? "," : "", lb_acme_result_names[r],
                (unsigned long long)lb_counter_get(&a->orders[r]));
    fputs("},\"names\":[", out);
    for (uint32_t i = 0; i < n; i++) {
        const struct lb_shm_acme_name *e = &names[i];
        fprintf(out, "%s{\"name\":", i ? "," : "");
        lb_json_write_stringn(out, e->name, sizeof(e->name));
        fprintf(out, ",\"state\":\"%s\"",
                lb_acme_state_names[e->state < LB_ACME_STATES ? e->state : LB_ACME_NONE]);
        lb_snapshot_time(out, "not_after", e->not_after);
        lb_snapshot_time(out, "renew_at", e->renew_at);
        fprintf(out, ",\"orders\":{\"valid\":%llu,\"failed\":%llu},\"error\":",
                (unsigned long long)e->orders[LB_ACME_ORDER_VALID],
                (unsigned long long)e->orders[LB_ACME_ORDER_FAILED]);
        lb_json_write_stringn(out, e->error, sizeof(e->error));
        fputc('}', out);
    }
    fputs("]}", out);
    free(names);
}

/* Per TLS listener: its certificates and its session ticket keys. */
static void lb_snapshot_tls(const struct lb_shm_header *h, FILE *out)
{
    fputs(",\"tls\":[", out);
    bool first = true;
    for (unsigned i = 0; i < h->max_tls; i++) {
        const struct lb_shm_tls *t = lb_shm_tls(h, i);
        if (atomic_load(&t->state) != LB_ENTRY_ACTIVE)
            continue;
        struct lb_shm_tls_cert certs[LB_SHM_TLS_CERTS];
        uint32_t n = 0;
        lb_shm_tls_certs_get(t, certs, &n);
        fprintf(out, "%s{\"listener\":", first ? "" : ",");
        lb_json_write_stringn(out, t->address, sizeof(t->address));
        fprintf(out, ",\"ticket_keys\":%u,\"ticket_rotations\":%llu,"
                     "\"cert_generation\":%llu,\"certificates\":[",
                t->nkeys,
                (unsigned long long)atomic_load(&t->rotations),
                (unsigned long long)atomic_load(&t->cert_generation));
        for (uint32_t c = 0; c < n; c++) {
            char when[32] = "";
            time_t na = (time_t)certs[c].not_after;
            struct tm tm;
            if (na != 0 && gmtime_r(&na, &tm) != NULL)
                strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
            fprintf(out, "%s{\"subject\":", c ? "," : "");
            lb_json_write_stringn(out, certs[c].subject, sizeof(certs[c].subject));
            fprintf(out, ",\"not_after\":\"%s\",\"not_after_s\":%lld}", when,
                    (long long)certs[c].not_after);
        }
        fputs("]}", out);
        first = false;
    }
    fputc(']', out);
}

static const char *lb_slot_state_name(uint32_t st)
{
    return st == LB_SLOT_RUNNING ? "running" : st == LB_SLOT_DRAINING ? "draining" : "free";
}

double lb_snapshot_effective_weight(const struct lb_shm_backend *b, uint64_t slow_start_ms,
                                    uint64_t now_ms)
{
    unsigned p = lb_slow_start_permille(lb_shm_backend_usable_since(b), now_ms, slow_start_ms);
    return (double)atomic_load(&b->weight) * p / 1000.0;
}

/* The current configuration's rate limits with their counters. */
static void lb_snapshot_limits(const struct lb_shm_header *h, FILE *out)
{
    static const char *const algorithms[] = { "token_bucket", "leaky_bucket" };
    bool first = true;
    for (unsigned i = 0; i < h->max_limits; i++) {
        const struct lb_shm_limit *l = lb_shm_limit(h, i);
        if (atomic_load(&l->state) != LB_ENTRY_ACTIVE)
            continue;
        struct lb_limit_totals t;
        lb_shm_limit_sum(h, i, &t);
        fprintf(out, "%s{\"name\":\"%s\",\"key\":", first ? "" : ",", l->name);
        lb_json_write_stringn(out, l->key, sizeof(l->key));
        fprintf(out, ",\"rate\":\"%s\",\"burst\":%u,\"algorithm\":\"%s\",\"status\":%u,"
                     "\"dry_run\":%s,\"table_size\":%llu,\"keys\":%llu,\"evictions\":%llu,"
                     "\"requests\":{\"allowed\":%llu,\"limited\":%llu,\"delayed\":%llu,"
                     "\"dry_run\":%llu}}",
                l->rate, l->burst, algorithms[l->algorithm < 2 ? l->algorithm : 0], l->status,
                l->dry_run ? "true" : "false", (unsigned long long)l->capacity,
                (unsigned long long)t.keys, (unsigned long long)t.evictions,
                (unsigned long long)t.allowed, (unsigned long long)t.limited,
                (unsigned long long)t.delayed, (unsigned long long)t.dry_run);
        first = false;
    }
}

/* Names in shm were validated by the config loader (no quotes, no
 * backslashes, printable), so they need no escaping. */
/* Faults (admin API: runtime percent and enabled); retired ones while
 * old workers may still inject them. */
static void lb_snapshot_faults(const struct lb_shm_header *h, FILE *out)
{
    static const char *const entry_state[] = { "free", "active", "retired" };
    bool first = true;
    for (unsigned i = 0; i < h->max_faults; i++) {
        struct lb_shm_fault *f = lb_shm_fault(h, i);
        uint32_t st = atomic_load(&f->state);
        if (st == LB_ENTRY_FREE || st > LB_ENTRY_RETIRED)
            continue;
        uint32_t over = atomic_load(&f->ppm_override);
        fprintf(out, "%s{\"name\":", first ? "" : ",");
        lb_json_write_stringn(out, f->name, sizeof(f->name));
        fputs(",\"pool\":", out);
        lb_json_write_stringn(out, f->pool, sizeof(f->pool));
        fprintf(out, ",\"state\":\"%s\",\"type\":\"%s\",\"delay_ms\":%llu,\"status\":%u,"
                     "\"file_percent\":%g,\"percent\":%g,\"percent_override\":",
                entry_state[st], lb_fault_type_name((enum lb_fault_type)f->type),
                (unsigned long long)f->delay_ms, f->abort_status,
                (double)atomic_load(&f->file_ppm) / (LB_FAULT_PPM_ONE / 100),
                (double)(over != LB_PPM_NONE ? over : atomic_load(&f->file_ppm)) /
                    (LB_FAULT_PPM_ONE / 100));
        if (over == LB_PPM_NONE)
            fputs("null", out);
        else
            fprintf(out, "%g", (double)over / (LB_FAULT_PPM_ONE / 100));
        fprintf(out, ",\"enabled\":%s,\"injected\":%llu}",
                atomic_load(&f->enabled) ? "true" : "false",
                (unsigned long long)atomic_load(&f->injected));
        first = false;
    }
}

void lb_snapshot_write(const struct lb_shm_header *h, FILE *out)
{
    fprintf(out, "{\"layout_version\":%u,\"master_pid\":%d,\"generation\":%llu,"
                 "\"started_ms\":%llu,\"reloads\":%llu,\"reload_failures\":%llu,\"version\":",
            h->layout_version, (int)atomic_load(&h->master_pid),
            (unsigned long long)atomic_load(&h->generation),
            (unsigned long long)atomic_load(&h->started_ms),
            (unsigned long long)atomic_load(&h->reloads),
            (unsigned long long)atomic_load(&h->reload_failures));
    lb_json_write_stringn(out, h->version, sizeof(h->version));
    fprintf(out, ",\"upgrades\":%llu,\"upgrade_failures\":%llu,\"workers\":[",
            (unsigned long long)atomic_load(&h->upgrades),
            (unsigned long long)atomic_load(&h->upgrade_failures));
    unsigned used = atomic_load(&h->slots_used);
    bool first = true;
    struct lb_worker_totals all = { 0 };
    for (unsigned s = 0; s < used && s < h->max_slots; s++) {
        struct lb_shm_worker *w = lb_shm_worker(h, s);
        uint32_t st = atomic_load(&w->state);
        struct lb_worker_totals one = { 0 };
        lb_shm_worker_add(w, &one);
        lb_shm_worker_add(w, &all);
        if (st == LB_SLOT_FREE)
            continue;       /* its counts live on in the totals */
        unsigned id = atomic_load(&w->id);
        fprintf(out, "%s{\"id\":%u,\"slot\":%u,\"pid\":%d,\"state\":\"%s\",\"generation\":%u,"
                     "\"restarts\":%llu,\"connections\":%llu,\"active_connections\":%llu,"
                     "\"connections_limited\":%llu,"
                     "\"requests\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,"
                     "\"client_aborts\":%llu,\"responses\":",
                first ? "" : ",", id, s, (int)atomic_load(&w->pid), lb_slot_state_name(st),
                atomic_load(&w->generation),
                (unsigned long long)(id < LB_MAX_WORKERS ? atomic_load(&h->worker_restarts[id]) : 0),
                (unsigned long long)one.connections, (unsigned long long)one.active_connections,
                (unsigned long long)one.conn_limited,
                (unsigned long long)one.requests, (unsigned long long)one.bytes_in,
                (unsigned long long)one.bytes_out, (unsigned long long)one.client_aborts);
        lb_snapshot_classes(out, one.responses);
        fputs(",\"timeouts\":", out);
        lb_snapshot_timeouts(out, one.timeouts);
        fprintf(out, ",\"max_connections\":%llu,\"accept_pauses\":",
                (unsigned long long)lb_counter_get(&w->max_connections));
        lb_snapshot_pauses(out, one.accept_pauses);
        fputc(',', out);
        lb_snapshot_tls_counts(out, one.tls_handshakes, one.tls_failures, one.tls_unknown_sni);
        fputc('}', out);
        first = false;
    }
    /* Steering (master/steer.c) and the worker count a live scaling set. */
    uint32_t steered = atomic_load(&h->steer_client_ip), plain = atomic_load(&h->steer_kernel);
    fprintf(out, "],\"workers_configured\":%u,\"workers_scaled\":%u,"
                 "\"steering\":{\"mode\":\"%s\",\"client_ip_listeners\":%u,"
                 "\"kernel_listeners\":%u,\"migrate\":%s,\"bpf_unavailable\":%s}",
            atomic_load(&h->workers), atomic_load(&h->workers_scaled),
            steered == 0 ? "kernel" : plain == 0 ? "client_ip" : "mixed", steered, plain,
            atomic_load(&h->steer_migrate) ? "true" : "false",
            atomic_load(&h->steer_unavailable) ? "true" : "false");
    uint64_t restarts = 0;
    for (unsigned i = 0; i < LB_MAX_WORKERS; i++)
        restarts += atomic_load(&h->worker_restarts[i]);
    fprintf(out, ",\"totals\":{\"connections\":%llu,\"connections_limited\":%llu,"
                 "\"ratelimit_redis_errors\":%llu,\"requests\":%llu,"
                 "\"active_connections\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,"
                 "\"client_aborts\":%llu,\"worker_restarts\":%llu,\"timeouts\":",
            (unsigned long long)all.connections, (unsigned long long)all.conn_limited,
            (unsigned long long)all.rl_redis_errors, (unsigned long long)all.requests,
            (unsigned long long)all.active_connections, (unsigned long long)all.bytes_in,
            (unsigned long long)all.bytes_out, (unsigned long long)all.client_aborts,
            (unsigned long long)restarts);
    lb_snapshot_timeouts(out, all.timeouts);
    fprintf(out, ",\"header_faults\":{\"delay\":%llu,\"abort\":%llu}",
            (unsigned long long)all.header_faults[0], (unsigned long long)all.header_faults[1]);
    fputs(",\"accept_pauses\":", out);
    lb_snapshot_pauses(out, all.accept_pauses);
    fputc(',', out);
    lb_snapshot_tls_counts(out, all.tls_handshakes, all.tls_failures, all.tls_unknown_sni);
    lb_counter_t *ap = (lb_counter_t *)h->admin_accept_pauses;
    uint64_t admin_pauses[LB_PAUSE_REASONS] = { lb_counter_get(&ap[LB_PAUSE_CAP]),
                                                lb_counter_get(&ap[LB_PAUSE_FD]) };
    fprintf(out, "},\"fd_limit\":%llu,\"admin\":{\"connections\":%llu,"
                 "\"max_connections\":%llu,\"timeouts\":%llu,\"accept_pauses\":",
            (unsigned long long)atomic_load(&h->fd_limit),
            (unsigned long long)atomic_load(&h->admin_connections),
            (unsigned long long)atomic_load(&h->admin_max_connections),
            (unsigned long long)atomic_load(&h->admin_timeouts));
    lb_snapshot_pauses(out, admin_pauses);
    fputc('}', out);
    lb_snapshot_tls(h, out);
    lb_snapshot_acme(h, out);
    fputs(",\"pools\":[", out);

    static const char *const entry_state[] = { "free", "active", "retired" };
    uint64_t now_ms = lb_now_ms();
    first = true;
    for (unsigned p = 0; p < h->max_pools; p++) {
        struct lb_shm_pool *pool = lb_shm_pool(h, p);
        uint32_t pst = atomic_load(&pool->state);
        if (pst == LB_ENTRY_FREE)
            continue;
        uint64_t slow_start_ms = atomic_load(&pool->slow_start_ms);
        fprintf(out, "%s{\"name\":\"%s\",\"state\":\"%s\",\"breakers_open\":%u,"
                     "\"breaker_refused\":%llu,\"queue_size\":%u,\"queue_depth\":%u,"
                     "\"queued\":%llu,\"queue_refused\":{\"full\":%llu,\"timeout\":%llu},"
                     "\"slow_start_ms\":%llu,\"retries\":{", first ? "" : ",",
                pool->name, entry_state[pst], atomic_load(&pool->breakers_open),
                (unsigned long long)atomic_load(&pool->breaker_refused),
                atomic_load(&pool->queue_size), atomic_load(&pool->queue_depth),
                (unsigned long long)atomic_load(&pool->queued),
                (unsigned long long)atomic_load(&pool->queue_refused[LB_QUEUE_FULL]),
                (unsigned long long)atomic_load(&pool->queue_refused[LB_QUEUE_TIMEOUT]),
                (unsigned long long)slow_start_ms);
        for (unsigned k = 0; k < LB_RETRY_REASONS; k++)
            fprintf(out, "%s\"%s\":%llu", k ? "," : "", lb_retry_reason_names[k],
                    (unsigned long long)atomic_load(&pool->retries[k]));
        int64_t retrying = 0, waiting = 0;
        uint64_t sticky[LB_STICKY_RESULTS] = { 0 };
        bool is_sticky = atomic_load(&pool->sticky) != 0;
        for (unsigned b = 0; b < h->max_backends; b++) {
            struct lb_shm_backend *be = lb_shm_backend(h, b);
            if (atomic_load(&be->state) != LB_ENTRY_FREE && be->pool_id == p) {
                retrying += atomic_load(&be->retries);
                waiting += atomic_load(&be->retries_waiting);
                if (is_sticky)
                    lb_shm_sticky_sum(h, b, sticky);
            }
        }
        fprintf(out, "},\"retry_budget_exhausted\":%llu,\"retries_in_flight\":%lld,"
                     "\"retries_waiting\":%lld,",
                (unsigned long long)atomic_load(&pool->retry_budget_exhausted),
                (long long)(retrying > 0 ? retrying : 0), (long long)(waiting > 0 ? waiting : 0));
        if (is_sticky)
            fprintf(out, "\"sticky\":{\"hits\":%llu,\"repins\":%llu,\"invalid\":%llu},",
                    (unsigned long long)sticky[LB_STICKY_HIT],
                    (unsigned long long)sticky[LB_STICKY_REPIN],
                    (unsigned long long)sticky[LB_STICKY_INVALID]);
        fputs("\"servers\":[", out);
        first = false;
        bool sfirst = true;
        for (unsigned b = 0; b < h->max_backends; b++) {
            struct lb_shm_backend *be = lb_shm_backend(h, b);
            uint32_t bst = atomic_load(&be->state);
            if (bst == LB_ENTRY_FREE || be->pool_id != p || !lb_shm_backend_shown(be))
                continue;
            struct lb_backend_totals t;
            lb_shm_backend_sum(h, b, &t);
            static const char *const reasons[] = { "none", "health_check" };
            uint32_t reason = atomic_load(&be->down_reason);
            int64_t inflight = atomic_load(&be->inflight);
            fprintf(out, "%s{\"id\":%u,\"address\":\"%s\",\"state\":\"%s\",\"weight\":%u,"
                         "\"effective_weight\":%g,\"max_requests\":%u,"
                         "\"requests\":%llu,\"active\":%llu,\"failures\":%llu,"
                         "\"bytes_in\":%llu,\"bytes_out\":%llu,\"responses\":",
                    sfirst ? "" : ",", b, lb_shm_backend_name(be), entry_state[bst],
                    atomic_load(&be->weight), lb_snapshot_effective_weight(be, slow_start_ms, now_ms),
                    atomic_load(&be->max_requests), (unsigned long long)t.requests,
                    (unsigned long long)t.active, (unsigned long long)t.failures,
                    (unsigned long long)t.bytes_in, (unsigned long long)t.bytes_out);
            lb_snapshot_classes(out, t.responses);
            fputs(",\"tls_handshakes\":{", out);
            for (unsigned r = 0; r < LB_TLS_RESULTS; r++)
                fprintf(out, "%s\"%s\":%llu", r ? "," : "", lb_tls_result_names[r],
                        (unsigned long long)t.tls_handshakes[r]);
            fputc('}', out);
            fprintf(out, ",\"breaker\":\"%s\",\"breaker_opened\":%llu,"
                         "\"breaker_open_interval_ms\":%llu,\"breaker_transitions\":{"
                         "\"closed\":%llu,\"open\":%llu,\"half_open\":%llu}",
                    lb_breaker_state_names[lb_shm_breaker_shown(be, now_ms)],
                    (unsigned long long)atomic_load(&be->breaker_transitions[LB_BREAKER_OPEN]),
                    (unsigned long long)atomic_load(&be->breaker_interval_ms),
                    (unsigned long long)atomic_load(&be->breaker_transitions[LB_BREAKER_CLOSED]),
                    (unsigned long long)atomic_load(&be->breaker_transitions[LB_BREAKER_OPEN]),
                    (unsigned long long)atomic_load(&be->breaker_transitions[LB_BREAKER_HALF_OPEN]));
            uint32_t over = atomic_load(&be->weight_override);
            enum lb_backend_admin ast = lb_backend_admin_state(be);
            fprintf(out, ",\"admin_state\":\"%s\",\"file_weight\":%u,\"weight_override\":",
                    lb_backend_admin_names[ast < LB_BACKEND_ADMIN_STATES ? ast : 0],
                    atomic_load(&be->file_weight));
            if (over == LB_WEIGHT_NONE)
                fputs("null", out);
            else
                fprintf(out, "%u", over);
            fprintf(out, ",\"health\":\"%s\",\"drain\":%s,\"down_reason\":\"%s\","
                         "\"in_flight\":%lld,\"ewma_ms\":%.3f,\"checks\":{\"ok\":%llu,"
                         "\"failed\":%llu,\"consecutive_successes\":%u,"
                         "\"consecutive_failures\":%u,\"last_check_ms\":%llu,"
                         "\"last_change_ms\":%llu,\"last_error\":",
                    atomic_load(&be->health) == LB_HEALTH_UP ? "up" : "down",
                    ast != LB_BACKEND_READY ? "true" : "false",
                    reasons[reason < 2 ? reason : 0], (long long)(inflight > 0 ? inflight : 0),
                    (double)atomic_load(&be->ewma_us) / 1000.0,
                    (unsigned long long)atomic_load(&be->checks_ok),
                    (unsigned long long)atomic_load(&be->checks_failed),
                    atomic_load(&be->check_successes), atomic_load(&be->check_failures),
                    (unsigned long long)atomic_load(&be->last_check_ms),
                    (unsigned long long)atomic_load(&be->last_change_ms));
            char error[LB_ERROR_TEXT];
            lb_shm_error_get(be, error, sizeof(error));
            lb_json_write_stringn(out, error, sizeof(error));
            fputs("}", out);
            /* "removed" as GET /api/pools says it: a runtime server taken
             * out (discovery, DELETE) that still finishes its requests. */
            bool removed = be->runtime && atomic_load(&be->rt_state) != LB_RT_ACTIVE;
            if (be->runtime)
                fprintf(out, ",\"runtime\":\"%s\"", removed ? "draining" : "active");
            fprintf(out, ",\"removed\":%s", removed ? "true" : "false");
            fputs("}", out);
            sfirst = false;
        }
        fputs("]", out);
        if (pool->disco_type[0] != '\0') {
            /* Service discovery (master/discovery.c): its source and how it goes. */
            fprintf(out, ",\"discovery\":{\"type\":\"%s\",\"source\":", pool->disco_type);
            lb_json_write_stringn(out, pool->disco_source, sizeof(pool->disco_source));
            fprintf(out, ",\"failing\":%s,\"errors\":%llu,\"updates\":%llu,"
                         "\"last_success_ms\":%llu,\"last_update_ms\":%llu}",
                    atomic_load(&pool->disco_failing) ? "true" : "false",
                    (unsigned long long)atomic_load(&pool->disco_errors),
                    (unsigned long long)atomic_load(&pool->disco_updates),
                    (unsigned long long)atomic_load(&pool->disco_last_success_ms),
                    (unsigned long long)atomic_load(&pool->disco_last_update_ms));
        }
        fputs("}", out);
    }
    fputs("],\"faults\":[", out);
    lb_snapshot_faults(h, out);
    fputs("],\"rate_limits\":[", out);
    lb_snapshot_limits(h, out);
    fputs("]}\n", out);
}

int lb_snapshot_run(const char *config_path, FILE *out)
{
    char *path = realpath(config_path, NULL);
    if (path == NULL) {
        fprintf(stderr, "lbd: %s: %s\n", config_path, strerror(errno));
        return 1;
    }
    int fd = lb_instance_fetch(path);
    if (fd < 0) {
        fprintf(stderr, "lbd: no running lbd for %s (%s)\n", path, strerror(errno));
        free(path);
        return 1;
    }
    free(path);
    struct lb_shm shm;
    const char *why = NULL;
    if (lb_shm_attach(fd, true, &shm, &why) < 0) {
        fprintf(stderr, "lbd: cannot read the shared memory: %s\n", why);
        close(fd);
        return 1;
    }
    lb_snapshot_write(shm.hdr, out);
    lb_shm_close(&shm);
    return fflush(out) == 0 ? 0 : 1;
}
