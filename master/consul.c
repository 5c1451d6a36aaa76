#include "master/consul.h"

#include <stdio.h>
#include <string.h>

#include "master/discovery.h"
#include "shared/json.h"

int lb_consul_url(const struct lb_discovery_cfg *d, const char *index, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/v1/health/service/%s?index=%s&wait=%llus%s%s%s",
                     d->endpoints[0], d->service, index[0] ? index : "0",
                     (unsigned long long)(d->wait_ms / 1000), d->passing_only ? "&passing=1" : "",
                     d->tag[0] ? "&tag=" : "", d->tag);
    return n > 0 && (size_t)n < cap ? n : -1;
}

static bool lb_consul_passing(const struct lb_json *entry)
{
    const struct lb_json *checks = lb_json_get(entry, "Checks");
    if (checks == NULL || checks->type != LB_JSON_ARRAY)
        return true;
    for (const struct lb_json *c = checks->child; c != NULL; c = c->next) {
        const char *st = lb_json_str(lb_json_get(c, "Status"));
        if (st == NULL || strcmp(st, "passing") != 0)
            return false;
    }
    return true;
}

int lb_consul_parse(const char *body, size_t len, bool passing_only,
                    struct lb_runtime_server *out, size_t max, size_t *n,
                    void (*skipped)(void *arg, const char *entry, const char *why), void *arg,
                    const char **why)
{
    *n = 0;
    struct lb_json *j = lb_json_parse(body, len, why);
    if (j == NULL)
        return -1;
    if (j->type != LB_JSON_ARRAY) {
        *why = "not an array of instances";
        lb_json_free(j);
        return -1;
    }
    for (const struct lb_json *e = j->child; e != NULL; e = e->next) {
        const struct lb_json *svc = lb_json_get(e, "Service");
        const char *id = lb_json_str(lb_json_get(svc, "ID"));
        const char *addr = lb_json_str(lb_json_get(svc, "Address"));
        if (addr == NULL || addr[0] == '\0')
            addr = lb_json_str(lb_json_get(lb_json_get(e, "Node"), "Address"));
        int64_t port = 0, weight = 1;
        const struct lb_json *wj = lb_json_get(lb_json_get(svc, "Weights"), "Passing");
        const char *bad = NULL;
        char entry[160], text[128];
        snprintf(entry, sizeof(entry), "%s", id ? id : "(an instance without an ID)");
        struct lb_runtime_server s;
        if (svc == NULL || svc->type != LB_JSON_OBJECT)
            bad = "no Service object";
        else if (addr == NULL || addr[0] == '\0')
            bad = "no address";
        else if (!lb_json_int(lb_json_get(svc, "Port"), &port) || port < 1 || port > 65535)
            bad = "no port 1-65535";
        else if (wj != NULL && (!lb_json_int(wj, &weight) || weight < 0))
            bad = "bad Weights.Passing";
        else if (passing_only && !lb_consul_passing(e))
            bad = NULL, addr = NULL;            /* not passing: left out, quietly */
        if (bad == NULL && addr != NULL) {
            snprintf(text, sizeof(text), strchr(addr, ':') ? "[%s]:%lld" : "%s:%lld", addr,
                     (long long)port);
            memset(&s, 0, sizeof(s));
            if (lb_addr_parse(text, false, &s.addr, &bad) == 0) {
                lb_addr_format(&s.addr, s.address, sizeof(s.address));
                s.weight = weight < 1 ? 1 : weight > LB_WEIGHT_MAX ? LB_WEIGHT_MAX : (unsigned)weight;
                bad = lb_discovery_add(out, n, max, &s);
            }
        }
        if (bad != NULL && skipped != NULL)
            skipped(arg, entry, bad);
    }
    lb_json_free(j);
    return 0;
}
