#include "master/admin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "master/dashboard.h"
#include "master/metrics.h"
#include "master/snapshot.h"
#include "shared/json.h"
#include "shared/list.h"
#include "shared/log.h"
#include "shared/runtime.h"
#include "shared/shm.h"
#include "shared/util.h"
#include "worker/http.h"

#define LB_ADMIN_MAX_HEAD 8192
#define LB_ADMIN_LINGER_MS 2000
#define LB_ADMIN_RETRY_MS 500       /* after a failed accept(), as the workers */
#define LB_ADMIN_MAX_BODY (64 * 1024)   /* request bodies (admin API): 413 beyond */
#define LB_ADMIN_SEG_MAX 256            /* a path segment, decoded */

struct lb_admin {
    struct evconnlistener *listener;
    const struct lb_config *cfg;
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
    char peer[LB_ADDR_STR_MAX];     /* for the log of changes */
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

/* HEAD gets the headers GET would (Content-Length included), no body.
 * EXTRA: more header lines, each ending in CRLF, or NULL. */
static void lb_admin_reply_ex(struct lb_admin_conn *c, int status, const char *reason,
                              const char *type, const char *body, size_t len, bool head,
                              const char *extra)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                             "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                        status, reason, type, len, extra ? extra : "");
    if (!head)
        evbuffer_add(out, body, len);
    /* Whatever else the client sent is read and dropped from now on. */
    struct evbuffer *in = bufferevent_get_input(c->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    c->state = LB_ADMIN_ANSWER;
    lb_admin_conn_deadline(c, c->a->timeout_ms);
    bufferevent_enable(c->bev, EV_WRITE);
}

static void lb_admin_reply(struct lb_admin_conn *c, int status, const char *reason,
                           const char *type, const char *body, size_t len, bool head)
{
    lb_admin_reply_ex(c, status, reason, type, body, len, head, NULL);
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

/* ---- the admin API ------------------------------------------------------ */

#define LB_ADMIN_SEGS 6

/* One request as the handlers see it. A handler writes its JSON answer to
 * F and returns 200, or fills MSG and returns the error's status. */
struct lb_admin_req {
    struct lb_admin_conn *c;
    struct lb_admin *a;
    const struct lb_http_msg *m;
    char method[16];
    char path[512];                 /* as sent, without the query */
    char seg[LB_ADMIN_SEGS][LB_ADMIN_SEG_MAX];     /* percent-decoded */
    size_t nseg;
    const char *body;
    size_t body_len;
    FILE *f;
    const char *allow;              /* for 405 */
    char msg[384];
};

static int lb_admin_fail(struct lb_admin_req *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int lb_admin_fail(struct lb_admin_req *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof(r->msg), fmt, ap);
    va_end(ap);
    return status;
}

static bool lb_admin_method(const struct lb_admin_req *r, const char *m)
{
    return strcmp(r->method, m) == 0;
}

static bool lb_admin_get(const struct lb_admin_req *r)
{
    return lb_admin_method(r, "GET") || lb_admin_method(r, "HEAD");
}

static int lb_admin_not_allowed(struct lb_admin_req *r, const char *allow)
{
    r->allow = allow;
    return lb_admin_fail(r, 405, "method %s not allowed here (allowed: %s)", r->method, allow);
}

/* Changes need the configured token as a bearer token. Compared through
 * SHA-256 with CRYPTO_memcmp: the time taken says nothing of how much of
 * the token (or of its length) was right. */
static int lb_admin_auth(struct lb_admin_req *r)
{
    const char *token = r->a->cfg->admin_token;
    if (token == NULL)
        return lb_admin_fail(r, 403, "changes are disabled: no admin token is configured "
                                     "(set admin.token or admin.token_file and reload)");
    const struct lb_http_header *auth = NULL;
    for (size_t i = 0; i < r->m->nheaders; i++)
        if (lb_str_ieq(r->m->headers[i].name, r->m->headers[i].name_len, "authorization"))
            auth = &r->m->headers[i];
    if (auth == NULL)
        return lb_admin_fail(r, 401, "this change needs Authorization: Bearer <token>");
    if (auth->value_len < 7 || !lb_str_ieq(auth->value, 7, "bearer "))
        return lb_admin_fail(r, 401, "Authorization must be Bearer <token>");
    const char *v = auth->value + 7;
    size_t n = auth->value_len - 7;
    while (n > 0 && *v == ' ') {
        v++;
        n--;
    }
    unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)token, strlen(token), want);
    SHA256((const unsigned char *)v, n, got);
    if (CRYPTO_memcmp(want, got, sizeof(want)) != 0)
        return lb_admin_fail(r, 401, "wrong token");
    return 0;
}

/* The body as one flat JSON object (shared/json.h). */
static int lb_admin_body(struct lb_admin_req *r, struct lb_json_field *f, size_t max)
{
    const char *why = NULL;
    int n = lb_json_parse_flat(r->body, r->body_len, f, max, &why);
    if (n < 0) {
        lb_admin_fail(r, 400, "bad JSON body: %s", why);
        return -1;
    }
    if (n == 0) {
        lb_admin_fail(r, 400, "the body's object is empty: nothing to change");
        return -1;
    }
    return n;
}

static const struct lb_pool_cfg *lb_admin_find_pool(const struct lb_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->npools; i++)
        if (strcmp(cfg->pools[i].name, name) == 0)
            return &cfg->pools[i];
    return NULL;
}

/* A server as the API shows it: a static one of the file, or one in a
 * runtime slot (discovery or POST; shared/runtime.h) under its address. */
struct lb_admin_srv {
    unsigned id;                        /* backend row */
    const char *address;
    unsigned file_weight;               /* the file's, or the source's for a runtime one */
    bool runtime;
};

/* ADDRESS's canonical form into CANON ("" when it does not parse). */
static void lb_admin_canon(const char *address, char *canon, size_t len)
{
    struct lb_addr ad;
    const char *why;
    canon[0] = '\0';
    if (lb_addr_parse(address, false, &ad, &why) == 0)
        lb_addr_format(&ad, canon, len);
}

/* Pool PC's server at index J into OUT: false for a runtime slot with no
 * server (or, unless DRAINING_TOO, one being removed). */
static bool lb_admin_srv_at(const struct lb_shm_header *h, const struct lb_pool_cfg *pc, size_t j,
                            bool draining_too, struct lb_admin_srv *out)
{
    const struct lb_server_cfg *sc = &pc->servers[j];
    const struct lb_shm_backend *b = lb_shm_backend(h, sc->shm_id);
    out->id = sc->shm_id;
    out->runtime = sc->runtime;
    if (!sc->runtime) {
        out->address = sc->address;
        out->file_weight = sc->weight;
        return true;
    }
    uint32_t st = atomic_load_explicit(&b->rt_state, memory_order_acquire);
    if (st != LB_RT_ACTIVE && !(draining_too && st == LB_RT_DRAINING))
        return false;
    out->address = b->rt_address;
    out->file_weight = atomic_load(&b->file_weight);
    return true;
}

/* POOL's server ADDRESS, as written in the file or in any form that
 * parses to the same address ("localhost:80", "[::1]:80"); a runtime one
 * only while it is in the pool (not being removed). */
static bool lb_admin_find_server(const struct lb_shm_header *h, const struct lb_pool_cfg *pc,
                                 const char *address, struct lb_admin_srv *out)
{
    char canon[LB_ADDR_STR_MAX];
    lb_admin_canon(address, canon, sizeof(canon));
    for (size_t i = 0; i < pc->nservers; i++)
        if (lb_admin_srv_at(h, pc, i, false, out) &&
            (strcmp(out->address, address) == 0 ||
             (canon[0] != '\0' && strcmp(out->address, canon) == 0)))
            return true;
    return false;
}

static void lb_admin_server_json(FILE *f, const struct lb_shm_header *h,
                                 const struct lb_admin_srv *sv)
{
    struct lb_shm_backend *b = lb_shm_backend(h, sv->id);
    uint32_t over = atomic_load(&b->weight_override);
    enum lb_backend_admin st = lb_backend_admin_state(b);
    if (st >= LB_BACKEND_ADMIN_STATES)
        st = LB_BACKEND_READY;
    bool removed = sv->runtime && atomic_load(&b->rt_state) != LB_RT_ACTIVE;
    int64_t inflight = atomic_load(&b->inflight);
    fputs("{\"address\":", f);
    lb_json_write_string(f, sv->address);
    fprintf(f, ",\"origin\":\"%s\",\"file\":{\"weight\":%u,\"state\":\"ready\"},"
               "\"runtime\":{\"weight\":%u,\"state\":\"%s\"},\"weight_override\":",
            sv->runtime ? "runtime" : "file", sv->file_weight, atomic_load(&b->weight),
            lb_backend_admin_names[st]);
    if (over == LB_WEIGHT_NONE)
        fputs("null", f);
    else
        fprintf(f, "%u", over);
    fprintf(f, ",\"overridden\":%s,\"removed\":%s,\"health\":\"%s\",\"breaker\":\"%s\","
               "\"in_flight\":%lld}",
            over != LB_WEIGHT_NONE || st != LB_BACKEND_READY ? "true" : "false",
            removed ? "true" : "false",
            atomic_load(&b->health) == LB_HEALTH_UP ? "up" : "down",
            lb_breaker_state_names[lb_shm_breaker_shown(b, lb_now_ms())],
            (long long)(inflight > 0 ? inflight : 0));
}

static int lb_admin_pools(struct lb_admin_req *r)
{
    if (!lb_admin_get(r))
        return lb_admin_not_allowed(r, "GET, HEAD");
    const struct lb_config *cfg = r->a->cfg;
    fputs("{\"pools\":[", r->f);
    for (size_t i = 0; i < cfg->npools; i++) {
        const struct lb_pool_cfg *pc = &cfg->pools[i];
        fputs(i ? ",{\"name\":" : "{\"name\":", r->f);
        lb_json_write_string(r->f, pc->name);
        fprintf(r->f, ",\"strategy\":\"%s\",\"max_servers\":%zu,\"servers\":[",
                lb_strategy_name(pc->strategy), pc->nservers);
        /* Empty runtime slots are no servers; draining ones show with
         * "removed": true until their requests are over. */
        bool first = true;
        for (size_t j = 0; j < pc->nservers; j++) {
            struct lb_admin_srv sv;
            if (!lb_admin_srv_at(r->a->shm, pc, j, true, &sv))
                continue;
            if (!first)
                fputc(',', r->f);
            first = false;
            lb_admin_server_json(r->f, r->a->shm, &sv);
        }
        fputs("]}", r->f);
    }
    fputs("]}\n", r->f);
    return 200;
}

/* POST {"address": "IP:PORT", "weight": N}: a runtime server into one of
 * the pool's free slots (max_servers), as a discovery answer would. */
static int lb_admin_add_server(struct lb_admin_req *r)
{
    if (!lb_admin_method(r, "POST"))
        return lb_admin_not_allowed(r, "POST");
    int rc = lb_admin_auth(r);
    if (rc != 0)
        return rc;
    const struct lb_pool_cfg *pc = lb_admin_find_pool(r->a->cfg, r->seg[2]);
    if (pc == NULL)
        return lb_admin_fail(r, 404, "no pool named '%s'", r->seg[2]);
    struct lb_json_field f[4];
    int n = lb_admin_body(r, f, LB_ARRAY_SIZE(f));
    if (n < 0)
        return 400;
    const char *address = NULL;
    long long weight = 1;
    for (int i = 0; i < n; i++) {
        if (strcmp(f[i].key, "address") == 0) {
            if (f[i].type != LB_JSON_STRING)
                return lb_admin_fail(r, 400, "address must be a string \"IP:PORT\"");
            address = f[i].str;
        } else if (strcmp(f[i].key, "weight") == 0) {
            if (f[i].type != LB_JSON_NUMBER || !f[i].integer || f[i].i < 1 ||
                f[i].i > LB_WEIGHT_MAX)
                return lb_admin_fail(r, 400, "weight must be an integer from 1 to %d",
                                     LB_WEIGHT_MAX);
            weight = f[i].i;
        } else {
            return lb_admin_fail(r, 400, "unknown key \"%s\" (address, weight)", f[i].key);
        }
    }
    if (address == NULL)
        return lb_admin_fail(r, 400, "address is missing: {\"address\": \"IP:PORT\"}");
    struct lb_runtime_server s = { .weight = (unsigned)weight };
    const char *why = NULL;
    if (lb_addr_parse(address, false, &s.addr, &why) < 0)
        return lb_admin_fail(r, 400, "bad address \"%s\": %s", address, why);
    lb_addr_format(&s.addr, s.address, sizeof(s.address));
    if (!lb_pool_has_runtime(pc))
        return lb_admin_fail(r, 409, "pool '%s' has no room for runtime servers: set its "
                                     "max_servers above its %zu server(s) and reload",
                             pc->name, pc->nservers);
    struct lb_admin_srv sv;
    if (lb_admin_find_server(r->a->shm, pc, s.address, &sv))
        return lb_admin_fail(r, 409, "pool '%s' has server %s already (PUT changes its weight)",
                             pc->name, s.address);
    if (lb_runtime_add(r->a->shm, pc->shm_id, &s, lb_now_ms()) < 0)
        return lb_admin_fail(r, 507, "pool '%s' is full: its %zu runtime slot(s) (max_servers "
                                     "%zu) are in use or still draining a removed server "
                                     "(free %d s after its last request)",
                             pc->name, pc->nservers - pc->nstatic, pc->nservers,
                             LB_RUNTIME_GRACE_MS / 1000);
    lb_log_info("admin: POST from %s: pool '%s' server %s added (weight %lld)%s", r->c->peer,
                pc->name, s.address, weight,
                pc->discovery.type != LB_DISCO_NONE ? "; the pool's next discovery answer "
                                                      "replaces it" : "");
    if (!lb_admin_find_server(r->a->shm, pc, s.address, &sv))
        return lb_admin_fail(r, 500, "server %s added but not found", s.address);
    lb_admin_server_json(r->f, r->a->shm, &sv);
    fputc('\n', r->f);
    return 201;
}

/* An object the API reads (GET, HEAD), changes (PUT) or resets (DELETE):
 * the method checked, and the token for a change. 0, or the answer's
 * status already written. */
static int lb_admin_object_method(struct lb_admin_req *r, bool *put, bool *del)
{
    *put = lb_admin_method(r, "PUT");
    *del = lb_admin_method(r, "DELETE");
    if (!*put && !*del && !lb_admin_get(r))
        return lb_admin_not_allowed(r, "GET, HEAD, PUT, DELETE");
    return (*put || *del) ? lb_admin_auth(r) : 0;
}

/* PUT {"weight": N, "state": "drain"|"maint"|"ready"} (either or both),
 * DELETE (a static server: back to the file's values; a runtime one:
 * removed, it drains), GET. */
static int lb_admin_server(struct lb_admin_req *r)
{
    bool put, del;
    int rc = lb_admin_object_method(r, &put, &del);
    if (rc != 0)
        return rc;
    const struct lb_pool_cfg *pc = lb_admin_find_pool(r->a->cfg, r->seg[2]);
    if (pc == NULL)
        return lb_admin_fail(r, 404, "no pool named '%s'", r->seg[2]);
    struct lb_admin_srv sv;
    if (!lb_admin_find_server(r->a->shm, pc, r->seg[4], &sv))
        return lb_admin_fail(r, 404, "pool '%s' has no server '%s'", pc->name, r->seg[4]);
    struct lb_shm_backend *b = lb_shm_backend(r->a->shm, sv.id);
    struct lb_shm_pool *sp = lb_shm_pool(r->a->shm, pc->shm_id);
    if (put) {
        struct lb_json_field f[4];
        int n = lb_admin_body(r, f, LB_ARRAY_SIZE(f));
        if (n < 0)
            return 400;
        long long weight = -1;
        int state = -1;
        for (int i = 0; i < n; i++) {
            if (strcmp(f[i].key, "weight") == 0) {
                if (f[i].type != LB_JSON_NUMBER || !f[i].integer || f[i].i < 0 ||
                    f[i].i > LB_WEIGHT_MAX)
                    return lb_admin_fail(r, 400, "weight must be an integer from 0 to %d",
                                         LB_WEIGHT_MAX);
                weight = f[i].i;
            } else if (strcmp(f[i].key, "state") == 0) {
                for (int k = 0; k < LB_BACKEND_ADMIN_STATES && f[i].type == LB_JSON_STRING; k++)
                    if (strcmp(f[i].str, lb_backend_admin_names[k]) == 0)
                        state = k;
                if (state < 0)
                    return lb_admin_fail(r, 400, "state must be \"ready\", \"drain\" or \"maint\"");
            } else {
                return lb_admin_fail(r, 400, "unknown key \"%s\" (weight, state)", f[i].key);
            }
        }
        if (weight >= 0)
            lb_shm_backend_set_weight(sp, b, (uint32_t)weight);
        if (state >= 0)
            atomic_store(&b->admin_state, (uint32_t)state);
        char what[64] = "";
        if (weight >= 0)
            snprintf(what, sizeof(what), " weight %lld (%s %u)", weight,
                     sv.runtime ? "source" : "file", sv.file_weight);
        lb_log_info("admin: PUT from %s: pool '%s' server %s:%s%s%s", r->c->peer, pc->name,
                    sv.address, what, state >= 0 ? " state " : "",
                    state >= 0 ? lb_backend_admin_names[state] : "");
    } else if (del && sv.runtime) {
        char address[LB_ADDR_STR_MAX];
        snprintf(address, sizeof(address), "%s", sv.address);
        if (lb_runtime_remove(r->a->shm, pc->shm_id, address, lb_now_ms()) < 0)
            return lb_admin_fail(r, 404, "pool '%s' has no server '%s'", pc->name, address);
        lb_log_info("admin: DELETE from %s: pool '%s' runtime server %s removed (drains)%s",
                    r->c->peer, pc->name, address,
                    pc->discovery.type != LB_DISCO_NONE ? "; the pool's next discovery answer "
                                                          "may bring it back" : "");
    } else if (del) {
        lb_shm_backend_set_weight(sp, b, LB_WEIGHT_NONE);
        atomic_store(&b->admin_state, LB_BACKEND_READY);
        lb_log_info("admin: DELETE from %s: pool '%s' server %s: back to the file's weight %u, "
                    "ready", r->c->peer, pc->name, sv.address, sv.file_weight);
    }
    lb_admin_server_json(r->f, r->a->shm, &sv);
    fputc('\n', r->f);
    return 200;
}

static void lb_admin_percent(FILE *f, uint32_t ppm)
{
    fprintf(f, "%g", (double)ppm / (LB_FAULT_PPM_ONE / 100));
}

static void lb_admin_fault_json(FILE *f, const struct lb_config *cfg, const struct lb_shm_header *h,
                                const struct lb_fault_cfg *fc)
{
    struct lb_shm_fault *sf = lb_shm_fault(h, fc->shm_id);
    uint32_t over = atomic_load(&sf->ppm_override);
    bool enabled = atomic_load(&sf->enabled) != 0;
    fputs("{\"name\":", f);
    lb_json_write_string(f, fc->name);
    fputs(",\"pool\":", f);
    lb_json_write_string(f, cfg->pools[fc->pool].name);
    fprintf(f, ",\"type\":\"%s\"", lb_fault_type_name(fc->type));
    if (fc->type == LB_FAULT_DELAY)
        fprintf(f, ",\"delay_ms\":%llu", (unsigned long long)fc->delay_ms);
    else if (fc->type == LB_FAULT_ABORT)
        fprintf(f, ",\"status\":%d", fc->abort_status);
    fputs(",\"file\":{\"percent\":", f);
    lb_admin_percent(f, fc->ppm);
    fputs(",\"enabled\":true},\"runtime\":{\"percent\":", f);
    lb_admin_percent(f, over != LB_PPM_NONE ? over : fc->ppm);
    fprintf(f, ",\"enabled\":%s},\"percent_override\":", enabled ? "true" : "false");
    if (over == LB_PPM_NONE)
        fputs("null", f);
    else
        lb_admin_percent(f, over);
    fprintf(f, ",\"overridden\":%s,\"injected\":%llu}",
            over != LB_PPM_NONE || !enabled ? "true" : "false",
            (unsigned long long)atomic_load(&sf->injected));
}

static int lb_admin_faults(struct lb_admin_req *r)
{
    if (!lb_admin_get(r))
        return lb_admin_not_allowed(r, "GET, HEAD");
    const struct lb_config *cfg = r->a->cfg;
    fputs("{\"faults\":[", r->f);
    for (size_t i = 0; i < cfg->nfaults; i++) {
        if (i)
            fputc(',', r->f);
        lb_admin_fault_json(r->f, cfg, r->a->shm, &cfg->faults[i]);
    }
    fputs("]}\n", r->f);
    return 200;
}

/* PUT {"percent": P, "enabled": B} (either or both), DELETE, GET. */
static int lb_admin_fault(struct lb_admin_req *r)
{
    bool put, del;
    int rc = lb_admin_object_method(r, &put, &del);
    if (rc != 0)
        return rc;
    const struct lb_config *cfg = r->a->cfg;
    const struct lb_fault_cfg *fc = NULL;
    for (size_t i = 0; i < cfg->nfaults && fc == NULL; i++)
        if (strcmp(cfg->faults[i].name, r->seg[2]) == 0)
            fc = &cfg->faults[i];
    if (fc == NULL)
        return lb_admin_fail(r, 404, "no fault named '%s'", r->seg[2]);
    struct lb_shm_fault *sf = lb_shm_fault(r->a->shm, fc->shm_id);
    if (put) {
        struct lb_json_field f[4];
        int n = lb_admin_body(r, f, LB_ARRAY_SIZE(f));
        if (n < 0)
            return 400;
        long long ppm = -1;
        int enabled = -1;
        for (int i = 0; i < n; i++) {
            if (strcmp(f[i].key, "percent") == 0) {
                if (f[i].type != LB_JSON_NUMBER || !(f[i].num >= 0 && f[i].num <= 100))
                    return lb_admin_fail(r, 400, "percent must be a number from 0 to 100");
                ppm = (long long)(f[i].num * (LB_FAULT_PPM_ONE / 100) + 0.5);
            } else if (strcmp(f[i].key, "enabled") == 0) {
                if (f[i].type != LB_JSON_BOOL)
                    return lb_admin_fail(r, 400, "enabled must be true or false");
                enabled = f[i].boolean;
            } else {
                return lb_admin_fail(r, 400, "unknown key \"%s\" (percent, enabled)", f[i].key);
            }
        }
        /* The pool's faults share one draw (worker/fault.c): their live
         * shares may not pass 100 %, as lbd -t checks for the file's. */
        uint64_t mine = !(enabled >= 0 ? enabled : (int)atomic_load(&sf->enabled)) ? 0
                      : ppm >= 0 ? (uint64_t)ppm
                      : atomic_load(&sf->ppm_override) != LB_PPM_NONE
                          ? atomic_load(&sf->ppm_override) : atomic_load(&sf->file_ppm);
        uint64_t others = 0;
        for (size_t i = 0; i < cfg->nfaults; i++)
            if (&cfg->faults[i] != fc && cfg->faults[i].pool == fc->pool)
                others += atomic_load(&lb_shm_fault(r->a->shm, cfg->faults[i].shm_id)->live_ppm);
        if (mine + others > LB_FAULT_PPM_ONE)
            return lb_admin_fail(r, 409, "the faults of pool '%s' would add up to %g %% "
                                 "(at most 100 %%)", cfg->pools[fc->pool].name,
                                 (double)(mine + others) / (LB_FAULT_PPM_ONE / 100));
        if (ppm >= 0)
            atomic_store(&sf->ppm_override, (uint32_t)ppm);
        if (enabled >= 0)
            atomic_store(&sf->enabled, (uint32_t)enabled);
        lb_shm_fault_apply(sf);
        char what[48] = "";
        if (ppm >= 0)
            snprintf(what, sizeof(what), " percent %g", (double)ppm / 10000);
        lb_log_info("admin: PUT from %s: fault '%s':%s%s%s", r->c->peer, fc->name, what,
                    enabled >= 0 ? " enabled " : "",
                    enabled >= 0 ? (enabled ? "true" : "false") : "");
    } else if (del) {
        atomic_store(&sf->ppm_override, LB_PPM_NONE);
        atomic_store(&sf->enabled, 1);
        lb_shm_fault_apply(sf);
        lb_log_info("admin: DELETE from %s: fault '%s': back to the file's percent",
                    r->c->peer, fc->name);
    }
    lb_admin_fault_json(r->f, cfg, r->a->shm, fc);
    fputc('\n', r->f);
    return 200;
}

static int lb_admin_hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Split R->path into percent-decoded segments. -1: too many, too long or
 * a bad escape. */
static int lb_admin_split(struct lb_admin_req *r)
{
    const char *p = r->path;
    r->nseg = 0;
    if (*p != '/')
        return -1;
    while (*p == '/') {
        p++;
        if (*p == '\0' && r->nseg > 0)
            break;      /* a trailing slash */
        if (r->nseg == LB_ADMIN_SEGS)
            return -1;
        char *out = r->seg[r->nseg++];
        size_t n = 0;
        for (; *p != '\0' && *p != '/'; p++) {
            char ch = *p;
            if (ch == '%') {
                int hi = lb_admin_hex(p[1]), lo = hi < 0 ? -1 : lb_admin_hex(p[2]);
                if (lo < 0 || (hi == 0 && lo == 0))
                    return -1;
                ch = (char)(hi * 16 + lo);
                p += 2;
            }
            if (n + 1 >= LB_ADMIN_SEG_MAX)
                return -1;
            out[n++] = ch;
        }
        out[n] = '\0';
    }
    return 0;
}

static const char *lb_admin_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 507: return "Insufficient Storage";
    default:  return "Internal Server Error";
    }
}

/* An error as JSON: {"status": N, "error": "Reason", "message": "..."}. */
static void lb_admin_error(struct lb_admin_conn *c, int status, const char *msg,
                           const char *allow, bool head)
{
    char *body = NULL;
    size_t blen = 0;
    FILE *f = open_memstream(&body, &blen);
    if (f == NULL) {
        lb_admin_reply(c, 500, "Internal Server Error", "text/plain", "", 0, false);
        return;
    }
    fprintf(f, "{\"status\":%d,\"error\":\"%s\",\"message\":", status, lb_admin_reason(status));
    lb_json_write_string(f, msg);
    fputs("}\n", f);
    fclose(f);
    char extra[160] = "";
    if (status == 405 && allow != NULL)
        snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
    else if (status == 401)
        snprintf(extra, sizeof(extra), "WWW-Authenticate: Bearer realm=\"lbd admin\"\r\n");
    lb_admin_reply_ex(c, status, lb_admin_reason(status), "application/json", body, blen, head,
                      extra);
    free(body);
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
    bool head_only = (m.flags & LB_MSG_HEAD) != 0;
    if (m.body == LB_BODY_CHUNKED) {
        lb_admin_error(c, 411, "send the body with a Content-Length", NULL, head_only);
        return;
    }
    size_t body_len = m.body == LB_BODY_LENGTH ? (size_t)m.content_length : 0;
    if (m.body == LB_BODY_LENGTH && m.content_length > LB_ADMIN_MAX_BODY) {
        lb_admin_error(c, 413, "request bodies are limited to 64 KiB", NULL, head_only);
        return;
    }
    if (len < head + body_len)
        return;         /* the rest of the body is on its way (within the deadline) */
    buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)(head + body_len));
    /* The parse pointed into the old pullup: parse again in place. */
    if (lb_http_parse_request(buf, head, &m, &lim) != 0) {
        lb_admin_reply(c, 400, "Bad Request", "text/plain", "", 0, false);
        return;
    }

    struct lb_admin_req *r = calloc(1, sizeof(*r));
    char *body = NULL;
    size_t blen = 0;
    FILE *f = r ? open_memstream(&body, &blen) : NULL;
    if (f == NULL) {
        free(r);
        lb_admin_reply(c, 500, "Internal Server Error", "text/plain", "", 0, false);
        return;
    }
    r->c = c;
    r->a = a;
    r->m = &m;
    r->f = f;
    r->body = buf + head;
    r->body_len = body_len;
    snprintf(r->method, sizeof(r->method), "%.*s", (int)m.method_len, m.method);
    /* The path without its query string. */
    size_t plen = m.target_len;
    const char *q = memchr(m.target, '?', plen);
    if (q != NULL)
        plen = (size_t)(q - m.target);
    const char *type = "application/json";
    int status;
    if (plen >= sizeof(r->path) || (snprintf(r->path, sizeof(r->path), "%.*s", (int)plen,
                                             m.target), lb_admin_split(r) < 0)) {
        status = lb_admin_fail(r, 404, "no such path");
    } else if (r->nseg == 1 && strcmp(r->path, "/metrics") == 0) {
        status = lb_admin_get(r) ? 200 : lb_admin_not_allowed(r, "GET, HEAD");
        if (status == 200)
            lb_metrics_write(a->shm, f);
        type = "text/plain; version=0.0.4; charset=utf-8";
    } else if (strcmp(r->path, "/") == 0) {
        status = lb_admin_get(r) ? 200 : lb_admin_not_allowed(r, "GET, HEAD");
        if (status == 200) {
            size_t page_len;
            const char *page = lb_dashboard_page(&page_len);
            fwrite(page, 1, page_len, f);
        }
        type = "text/html; charset=utf-8";
    } else if (r->nseg == 1 && strcmp(r->path, "/status") == 0) {
        status = lb_admin_get(r) ? 200 : lb_admin_not_allowed(r, "GET, HEAD");
        if (status == 200)
            lb_snapshot_write(a->shm, f);
    } else if (r->nseg >= 2 && strcmp(r->seg[0], "api") == 0 && strcmp(r->seg[1], "pools") == 0) {
        if (r->nseg == 2)
            status = lb_admin_pools(r);
        else if (r->nseg == 4 && strcmp(r->seg[3], "servers") == 0)
            status = lb_admin_add_server(r);
        else if (r->nseg == 5 && strcmp(r->seg[3], "servers") == 0)
            status = lb_admin_server(r);
        else
            status = lb_admin_fail(r, 404, "no such path: try /api/pools or "
                                           "/api/pools/POOL/servers/ADDRESS");
    } else if (r->nseg >= 2 && strcmp(r->seg[0], "api") == 0 && strcmp(r->seg[1], "faults") == 0) {
        if (r->nseg == 2)
            status = lb_admin_faults(r);
        else if (r->nseg == 3)
            status = lb_admin_fault(r);
        else
            status = lb_admin_fail(r, 404, "no such path: try /api/faults or /api/faults/NAME");
    } else {
        status = lb_admin_fail(r, 404, "not found: try /, /metrics, /status, /api/pools "
                                       "or /api/faults");
    }
    fclose(f);
    if (status == 200 || status == 201)
        lb_admin_reply(c, status, lb_admin_reason(status), type, body, blen, head_only);
    else
        lb_admin_error(c, status, r->msg, r->allow, head_only);
    free(body);
    free(r);
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
    struct lb_admin *a = arg;
    struct lb_admin_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->a = a;
    struct lb_addr peer = { .len = (socklen_t)socklen };
    if ((size_t)socklen <= sizeof(peer.ss)) {
        memcpy(&peer.ss, sa, (size_t)socklen);
        lb_addr_format(&peer, c->peer, sizeof(c->peer));
    }
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

struct lb_admin *lb_admin_start(struct event_base *base, int fd, const struct lb_config *cfg,
                                struct lb_shm_header *shm, unsigned max_connections,
                                uint64_t timeout_ms)
{
    struct lb_admin *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->cfg = cfg;
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
