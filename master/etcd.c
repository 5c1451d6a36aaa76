#include "master/etcd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "master/discovery.h"
#include "shared/json.h"

/* The key just past every key that starts with PREFIX: the prefix with
 * its last byte below 0xff incremented (etcd's clientv3.GetPrefixRangeEnd). */
static size_t lb_etcd_prefix_end(const char *prefix, char *out)
{
    size_t n = strlen(prefix);
    memcpy(out, prefix, n);
    while (n > 0) {
        if ((unsigned char)out[n - 1] < 0xff) {
            out[n - 1]++;
            return n;
        }
        n--;
    }
    out[0] = '\0';      /* all 0xff: to the end of the keyspace */
    return 1;
}

static int lb_etcd_keys(const char *prefix, char *k, size_t kcap, char *e, size_t ecap)
{
    char end[512];
    size_t n = strlen(prefix);
    if (n == 0 || n >= sizeof(end))
        return -1;
    size_t en = lb_etcd_prefix_end(prefix, end);
    if (lb_base64_encode(prefix, n, k, kcap, false) < 0 ||
        lb_base64_encode(end, en, e, ecap, false) < 0)
        return -1;
    return 0;
}

int lb_etcd_range_body(const char *prefix, char *out, size_t cap)
{
    char k[800], e[800];
    if (lb_etcd_keys(prefix, k, sizeof(k), e, sizeof(e)) < 0)
        return -1;
    int n = snprintf(out, cap, "{\"key\":\"%s\",\"range_end\":\"%s\"}", k, e);
    return n > 0 && (size_t)n < cap ? n : -1;
}

int lb_etcd_watch_body(const char *prefix, int64_t start_revision, char *out, size_t cap)
{
    char k[800], e[800];
    if (lb_etcd_keys(prefix, k, sizeof(k), e, sizeof(e)) < 0)
        return -1;
    int n = snprintf(out, cap, "{\"create_request\":{\"key\":\"%s\",\"range_end\":\"%s\","
                     "\"start_revision\":\"%lld\"}}", k, e, (long long)start_revision);
    return n > 0 && (size_t)n < cap ? n : -1;
}

static int lb_etcd_address(const char *text, unsigned weight, struct lb_runtime_server *out,
                           const char **why)
{
    memset(out, 0, sizeof(*out));
    if (lb_addr_parse(text, false, &out->addr, why) < 0)
        return -1;
    lb_addr_format(&out->addr, out->address, sizeof(out->address));
    out->weight = weight;
    return 0;
}

int lb_etcd_value(const char *value, size_t len, struct lb_runtime_server *out, const char **why)
{
    while (len > 0 && (value[len - 1] == '\n' || value[len - 1] == ' '))
        len--;
    if (len == 0) {
        *why = "empty value";
        return -1;
    }
    if (value[0] != '{') {
        char text[128];
        if (len >= sizeof(text) || memchr(value, '\0', len) != NULL) {
            *why = "not an address";
            return -1;
        }
        memcpy(text, value, len);
        text[len] = '\0';
        return lb_etcd_address(text, 1, out, why);
    }
    struct lb_json *j = lb_json_parse(value, len, why);
    if (j == NULL)
        return -1;
    int rc = -1;
    const char *addr = lb_json_str(lb_json_get(j, "address"));
    const struct lb_json *w = lb_json_get(j, "weight");
    int64_t weight = 1;
    if (addr == NULL)
        *why = "no \"address\" string";
    else if (w != NULL && (!lb_json_int(w, &weight) || weight < 1 || weight > LB_WEIGHT_MAX))
        *why = "\"weight\" must be an integer 1-1000";
    else
        rc = lb_etcd_address(addr, (unsigned)weight, out, why);
    lb_json_free(j);
    return rc;
}

int lb_etcd_parse_range(const char *body, size_t len, int64_t *revision,
                        struct lb_runtime_server *out, size_t max, size_t *n,
                        void (*skipped)(void *arg, const char *entry, const char *why), void *arg,
                        const char **why)
{
    *n = 0;
    struct lb_json *j = lb_json_parse(body, len, why);
    if (j == NULL)
        return -1;
    int rc = -1;
    const struct lb_json *kvs = lb_json_get(j, "kvs");
    if (!lb_json_int(lb_json_get(lb_json_get(j, "header"), "revision"), revision)) {
        *why = lb_json_get(j, "error") != NULL ? "etcd answered an error" : "no header.revision";
        goto out;
    }
    if (kvs != NULL && kvs->type != LB_JSON_ARRAY) {
        *why = "\"kvs\" is not an array";
        goto out;
    }
    for (const struct lb_json *kv = kvs ? kvs->child : NULL; kv != NULL; kv = kv->next) {
        char key[512], val[1024];
        const char *k64 = lb_json_str(lb_json_get(kv, "key"));
        const char *v64 = lb_json_str(lb_json_get(kv, "value"));
        const char *bad = NULL;
        long klen = k64 ? lb_base64_decode(k64, strlen(k64), key, sizeof(key)) : -1;
        if (klen < 0)
            snprintf(key, sizeof(key), "(a key that is not base64)");
        long vlen = v64 ? lb_base64_decode(v64, strlen(v64), val, sizeof(val)) : 0;
        struct lb_runtime_server s;
        if (klen < 0)
            bad = "bad key";
        else if (vlen < 0)
            bad = "value not base64 or over 1 KB";
        else if (lb_etcd_value(val, (size_t)vlen, &s, &bad) == 0)
            bad = lb_discovery_add(out, n, max, &s);
        if (bad != NULL && skipped != NULL)
            skipped(arg, key, bad);
    }
    rc = 0;
out:
    lb_json_free(j);
    return rc;
}

int lb_etcd_watch_parse(const char *msg, size_t len, struct lb_etcd_watch_msg *out,
                        const char **why)
{
    memset(out, 0, sizeof(*out));
    struct lb_json *j = lb_json_parse(msg, len, why);
    if (j == NULL)
        return -1;
    const struct lb_json *r = lb_json_get(j, "result");
    if (r == NULL) {
        *why = lb_json_get(j, "error") != NULL ? "etcd answered an error" : "no result";
        lb_json_free(j);
        return -1;
    }
    lb_json_int(lb_json_get(lb_json_get(r, "header"), "revision"), &out->revision);
    lb_json_int(lb_json_get(r, "compact_revision"), &out->compact_revision);
    const struct lb_json *c = lb_json_get(r, "created");
    out->created = c != NULL && c->type == LB_JSON_BOOL && c->boolean;
    c = lb_json_get(r, "canceled");
    out->canceled = (c != NULL && c->type == LB_JSON_BOOL && c->boolean) ||
                    out->compact_revision > 0;
    const struct lb_json *ev = lb_json_get(r, "events");
    out->events = ev != NULL && ev->type == LB_JSON_ARRAY && ev->child != NULL;
    lb_json_free(j);
    return 0;
}
