#include "shared/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libconfig.h>
#include <netinet/in.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Defaults chosen to match what nginx/HAProxy users expect out of the box. */
#define LB_DEFAULT_SHUTDOWN_TIMEOUT_MS  30000
#define LB_DEFAULT_BACKLOG              511
#define LB_DEFAULT_WEIGHT               1

struct lb_loader {
    const char *path;       /* main file, for errors without a setting */
    char *err;
    size_t errlen;
    const struct lb_acme_cfg *acme;     /* the acme group, read before the listeners */
};

static int lb_cfg_fail(struct lb_loader *ld, const config_setting_t *s,
                       const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* libconfig stamps a string element of a list or array with the line of
 * the token after it: the last element, with the closing bracket on a line
 * of its own, comes out one line (or a few, past comments) late. Errors
 * only: find the element's quoted text between the line of the element
 * before it (or the list's start) and the stamped line, the last hit. */
static int lb_cfg_elem_line(const char *file, const config_setting_t *s, int line)
{
    const config_setting_t *parent = config_setting_parent(s);
    if (file == NULL || config_setting_type(s) != CONFIG_TYPE_STRING || parent == NULL ||
        (config_setting_type(parent) != CONFIG_TYPE_ARRAY &&
         config_setting_type(parent) != CONFIG_TYPE_LIST))
        return line;
    int idx = config_setting_index(s);
    int from = idx > 0 ? (int)config_setting_source_line(
                             config_setting_get_elem(parent, (unsigned)idx - 1))
                       : 1;
    char quoted[512];
    int qn = snprintf(quoted, sizeof(quoted), "\"%s\"", config_setting_get_string(s));
    FILE *f = fopen(file, "r");
    if (f == NULL || qn < 0 || (size_t)qn >= sizeof(quoted)) {
        if (f != NULL)
            fclose(f);
        return line;
    }
    char *buf = NULL;
    size_t cap = 0;
    int n = 0, found = 0;
    while (n < line && getline(&buf, &cap, f) >= 0) {
        n++;
        if (n >= from && strstr(buf, quoted) != NULL)
            found = n;
    }
    free(buf);
    fclose(f);
    return found ? found : line;
}

static int lb_cfg_fail(struct lb_loader *ld, const config_setting_t *s,
                       const char *fmt, ...)
{
    const char *file = s ? config_setting_source_file(s) : NULL;
    int line = s ? lb_cfg_elem_line(file, s, (int)config_setting_source_line(s)) : 0;
    int n = snprintf(ld->err, ld->errlen, "%s:%d: ", file ? file : ld->path, line);
    if (n < 0 || (size_t)n >= ld->errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* Refuse keys we do not know: a typo must not silently mean "default". */
static int lb_cfg_check_keys(struct lb_loader *ld, const config_setting_t *group,
                             const char *what, const char *const *allowed)
{
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(e);
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(name, *a) == 0)
                ok = true;
        if (!ok)
            return lb_cfg_fail(ld, e, "unknown key '%s' in %s", name, what);
    }
    return 0;
}

static const config_setting_t *lb_cfg_member(const config_setting_t *group,
                                             const char *name)
{
    return config_setting_get_member(group, name);
}

static int lb_cfg_string(struct lb_loader *ld, const config_setting_t *group,
                         const char *name, const char **out, bool required)
{
    const config_setting_t *s = lb_cfg_member(group, name);
    if (s == NULL) {
        if (required)
            return lb_cfg_fail(ld, group, "missing required key '%s'", name);
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return lb_cfg_fail(ld, s, "'%s' must be a string", name);
    *out = config_setting_get_string(s);
    return 0;
}

static int lb_cfg_int(struct lb_loader *ld, const config_setting_t *group,
                      const char *name, long long lo, long long hi, long long *out)
{
    const config_setting_t *s = lb_cfg_member(group, name);
    if (s == NULL)
        return 0;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return lb_cfg_fail(ld, s, "'%s' must be an integer", name);
    long long v = config_setting_get_int64(s);
    if (v < lo || v > hi)
        return lb_cfg_fail(ld, s, "'%s' must be between %lld and %lld", name, lo, hi);
    *out = v;
    return 0;
}

static int lb_cfg_duration(struct lb_loader *ld, const config_setting_t *group,
                           const char *name, uint64_t *out)
{
    const char *str = NULL;
    if (lb_cfg_string(ld, group, name, &str, false) < 0)
        return -1;
    if (str == NULL)
        return 0;
    if (lb_duration_parse(str, out) < 0)
        return lb_cfg_fail(ld, lb_cfg_member(group, name),
                           "'%s': invalid duration \"%s\" (use e.g. \"250ms\", \"2s\", \"1m\")",
                           name, str);
    return 0;
}

/* An optional true/false; *OUT keeps its default when absent. */
static int lb_cfg_bool(struct lb_loader *ld, const config_setting_t *group,
                       const char *name, bool *out)
{
    const config_setting_t *b = lb_cfg_member(group, name);
    if (b == NULL)
        return 0;
    if (config_setting_type(b) != CONFIG_TYPE_BOOL)
        return lb_cfg_fail(ld, b, "'%s' must be true or false", name);
    *out = config_setting_get_bool(b);
    return 0;
}

static int lb_cfg_list(struct lb_loader *ld, const config_setting_t *root,
                       const char *name, const config_setting_t **out, bool required)
{
    const config_setting_t *s = lb_cfg_member(root, name);
    if (s == NULL) {
        if (required)
            return lb_cfg_fail(ld, root, "missing required list '%s'", name);
        *out = NULL;
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_LIST)
        return lb_cfg_fail(ld, s, "'%s' must be a list: %s = ( { ... }, ... );",
                           name, name);
    *out = s;
    return 0;
}

static int lb_cfg_group_elem(struct lb_loader *ld, const config_setting_t *list,
                             unsigned i, const char *what, const config_setting_t **out)
{
    const config_setting_t *e = config_setting_get_elem(list, i);
    if (config_setting_type(e) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, e, "each %s must be a group { ... }", what);
    *out = e;
    return 0;
}

static int lb_cfg_address(struct lb_loader *ld, const config_setting_t *group,
                          bool wildcard, struct lb_addr *addr, char *canon)
{
    const char *str = NULL;
    const char *why = NULL;
    if (lb_cfg_string(ld, group, "address", &str, true) < 0)
        return -1;
    if (lb_addr_parse(str, wildcard, addr, &why) < 0)
        return lb_cfg_fail(ld, lb_cfg_member(group, "address"),
                           "bad address \"%s\": %s", str, why);
    lb_addr_format(addr, canon, LB_ADDR_STR_MAX);
    return 0;
}

static bool lb_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= LB_NAME_MAX)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* "FILE:LINE" of setting S (malloc'd), for errors found after the load
 * (certificate files, in worker/tls.c). NULL when out of memory. */
static char *lb_cfg_where(struct lb_loader *ld, const config_setting_t *s)
{
    const char *file = config_setting_source_file(s);
    int line = lb_cfg_elem_line(file, s, (int)config_setting_source_line(s));
    char *out = NULL;
    if (asprintf(&out, "%s:%d", file ? file : ld->path, line) < 0)
        return NULL;
    return out;
}

/* A string copied with its "FILE:LINE" (AT may be NULL). Required unless
 * OPTIONAL; *OUT stays NULL when an optional key is absent. */
static int lb_cfg_string_at(struct lb_loader *ld, const config_setting_t *g, const char *name,
                            bool required, char **out, char **at)
{
    const char *str = NULL;
    if (lb_cfg_string(ld, g, name, &str, required) < 0)
        return -1;
    if (str == NULL)
        return 0;
    const config_setting_t *s = lb_cfg_member(g, name);
    if (*str == '\0')
        return lb_cfg_fail(ld, s, "'%s' must not be empty", name);
    *out = strdup(str);
    if (*out == NULL || (at != NULL && (*at = lb_cfg_where(ld, s)) == NULL))
        return lb_cfg_fail(ld, s, "out of memory");
    return 0;
}

static int lb_cfg_tls_certs(struct lb_loader *ld, const config_setting_t *g, struct lb_tls_cfg *t)
{
    static const char *const keys[] = { "cert", "key", NULL };
    const config_setting_t *list;
    /* With acme names, the configured certificates may be none. */
    bool acme = lb_cfg_member(g, "acme") != NULL;
    if (lb_cfg_list(ld, g, "certificates", &list, !acme) < 0)
        return -1;
    if (list == NULL)
        return 0;
    int n = config_setting_length(list);
    if (n == 0)
        return lb_cfg_fail(ld, list, "'certificates' must not be empty");
    if (n > LB_TLS_MAX_CERTS)
        return lb_cfg_fail(ld, list, "at most %d certificates per listener", LB_TLS_MAX_CERTS);
    t->certs = calloc((size_t)n, sizeof(*t->certs));
    if (t->certs == NULL)
        return lb_cfg_fail(ld, list, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = NULL;
        struct lb_tls_cert_cfg *c = &t->certs[i];
        t->ncerts++;
        if (lb_cfg_group_elem(ld, list, (unsigned)i, "certificate", &e) < 0 ||
            lb_cfg_check_keys(ld, e, "certificate", keys) < 0 ||
            lb_cfg_string_at(ld, e, "cert", true, &c->cert, &c->cert_at) < 0 ||
            lb_cfg_string_at(ld, e, "key", true, &c->key, &c->key_at) < 0)
            return -1;
    }
    return 0;
}

/* alpn = [ "http/1.1" ]: names lbd speaks, in ALPN's wire format. */
static int lb_cfg_tls_alpn(struct lb_loader *ld, const config_setting_t *g, struct lb_tls_cfg *t)
{
    static const char *const known[] = { "http/1.1", "http/1.0", NULL };
    const config_setting_t *s = lb_cfg_member(g, "alpn");
    if (s == NULL) {
        t->alpn[0] = 8;
        memcpy(t->alpn + 1, "http/1.1", 8);
        t->alpn_len = 9;
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_ARRAY && config_setting_type(s) != CONFIG_TYPE_LIST)
        return lb_cfg_fail(ld, s, "'alpn' must be a list of protocol names: [ \"http/1.1\" ]");
    int n = config_setting_length(s);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *name = config_setting_type(e) == CONFIG_TYPE_STRING
                           ? config_setting_get_string(e) : NULL;
        bool ok = false;
        for (const char *const *k = known; name != NULL && *k != NULL; k++)
            ok = ok || strcmp(name, *k) == 0;
        if (!ok)
            return lb_cfg_fail(ld, e, "alpn: lbd speaks \"http/1.1\" and \"http/1.0\" only");
        size_t len = strlen(name);
        if (t->alpn_len + 1 + len > sizeof(t->alpn))
            return lb_cfg_fail(ld, e, "alpn: too many names");
        t->alpn[t->alpn_len] = (unsigned char)len;
        memcpy(t->alpn + t->alpn_len + 1, name, len);
        t->alpn_len += 1 + len;
    }
    return 0;
}

static int lb_cfg_tls_acme(struct lb_loader *ld, const config_setting_t *g, struct lb_tls_cfg *t);

static int lb_cfg_tls(struct lb_loader *ld, const config_setting_t *listener,
                      struct lb_listener_cfg *l)
{
    static const char *const keys[] = { "certificates", "protocols", "ciphers", "alpn",
                                        "session_tickets", "ticket_rotation", "hsts",
                                        "unknown_sni", "acme", NULL };
    const config_setting_t *g = lb_cfg_member(listener, "tls");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'tls' must be a group: tls = { certificates = "
                                  "( { cert = \"...\"; key = \"...\"; } ); };");
    struct lb_tls_cfg *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return lb_cfg_fail(ld, g, "out of memory");
    l->tls = t;
    t->protocols = LB_TLS_12_PLUS;
    t->session_tickets = true;
    t->ticket_rotation_ms = 3600 * 1000;
    const char *protocols = NULL, *unknown_sni = NULL;
    char *hsts = NULL;
    if (lb_cfg_check_keys(ld, g, "tls", keys) < 0 ||
        lb_cfg_tls_certs(ld, g, t) < 0 ||
        lb_cfg_string(ld, g, "protocols", &protocols, false) < 0 ||
        lb_cfg_string_at(ld, g, "ciphers", false, &t->ciphers, &t->ciphers_at) < 0 ||
        lb_cfg_tls_alpn(ld, g, t) < 0 ||
        lb_cfg_bool(ld, g, "session_tickets", &t->session_tickets) < 0 ||
        lb_cfg_duration(ld, g, "ticket_rotation", &t->ticket_rotation_ms) < 0 ||
        lb_cfg_string_at(ld, g, "hsts", false, &hsts, NULL) < 0 ||
        lb_cfg_string(ld, g, "unknown_sni", &unknown_sni, false) < 0 ||
        lb_cfg_tls_acme(ld, g, t) < 0)
        return -1;
    t->hsts = hsts;
    if (unknown_sni != NULL) {
        if (strcmp(unknown_sni, "default") == 0)
            t->unknown_sni = LB_SNI_DEFAULT;
        else if (strcmp(unknown_sni, "refuse") == 0)
            t->unknown_sni = LB_SNI_REFUSE;
        else
            return lb_cfg_fail(ld, lb_cfg_member(g, "unknown_sni"),
                               "unknown_sni must be \"default\" (serve the first certificate) "
                               "or \"refuse\" (alert unrecognized_name)");
    }
    if (protocols != NULL) {
        if (strcmp(protocols, "TLSv1.2+") == 0)
            t->protocols = LB_TLS_12_PLUS;
        else if (strcmp(protocols, "TLSv1.3") == 0)
            t->protocols = LB_TLS_13;
        else
            return lb_cfg_fail(ld, lb_cfg_member(g, "protocols"),
                               "unknown protocols \"%s\" (\"TLSv1.2+\": TLS 1.2 and 1.3, "
                               "\"TLSv1.3\": TLS 1.3 only)", protocols);
    }
    if (t->ticket_rotation_ms < LB_TLS_ROTATION_MIN_MS ||
        t->ticket_rotation_ms > LB_TLS_ROTATION_MAX_MS)
        return lb_cfg_fail(ld, lb_cfg_member(g, "ticket_rotation"),
                           "ticket_rotation must be between 1s and 7 days");
    if (hsts != NULL) {
        bool ok = strlen(hsts) <= 256;
        for (const char *c = hsts; ok && *c; c++)
            ok = *c >= 0x20 && *c < 0x7f;
        if (!ok)
            return lb_cfg_fail(ld, lb_cfg_member(g, "hsts"),
                               "hsts must be a header value of at most 256 printable ASCII "
                               "characters, e.g. \"max-age=31536000\"");
        t->hsts_len = strlen(hsts);
    }
    return 0;
}

/* redirect_https = true (to port 443) or a port number. */
static int lb_cfg_redirect(struct lb_loader *ld, const config_setting_t *g,
                           struct lb_listener_cfg *l)
{
    const config_setting_t *s = lb_cfg_member(g, "redirect_https");
    if (s == NULL)
        return 0;
    if (config_setting_type(s) == CONFIG_TYPE_BOOL) {
        l->redirect_https = config_setting_get_bool(s) ? 443 : 0;
    } else {
        long long port = 0;
        if (lb_cfg_int(ld, g, "redirect_https", 1, 65535, &port) < 0)
            return lb_cfg_fail(ld, s, "'redirect_https' must be true, false or a port number");
        l->redirect_https = (unsigned)port;
    }
    if (l->redirect_https != 0 && l->tls != NULL)
        return lb_cfg_fail(ld, s, "redirect_https on a TLS listener would redirect to itself");
    return 0;
}

/* steering = "client_ip" (default) or "kernel". */
static int lb_cfg_steering(struct lb_loader *ld, const config_setting_t *g,
                           struct lb_listener_cfg *l)
{
    const char *str = NULL;
    if (lb_cfg_string(ld, g, "steering", &str, false) < 0)
        return -1;
    if (str == NULL || strcmp(str, "client_ip") == 0)
        l->steering = LB_STEERING_CLIENT_IP;
    else if (strcmp(str, "kernel") == 0)
        l->steering = LB_STEERING_KERNEL;
    else
        return lb_cfg_fail(ld, lb_cfg_member(g, "steering"),
                           "unknown steering \"%s\" (\"client_ip\": a client keeps its worker, "
                           "\"kernel\": the kernel's reuseport hash)", str);
    return 0;
}

static int lb_cfg_listeners(struct lb_loader *ld, const config_setting_t *root,
                            struct lb_config *cfg)
{
    static const char *const keys[] = { "address", "backlog", "defer_accept",
                                        "max_connections_per_ip", "tls", "redirect_https",
                                        "steering", NULL };
    const config_setting_t *list;
    if (lb_cfg_list(ld, root, "listeners", &list, true) < 0)
        return -1;
    int n = config_setting_length(list);
    if (n == 0)
        return lb_cfg_fail(ld, list, "'listeners' must not be empty");
    if (n > LB_MAX_LISTENERS)
        return lb_cfg_fail(ld, list, "at most %d listeners", LB_MAX_LISTENERS);
    cfg->listeners = calloc((size_t)n, sizeof(*cfg->listeners));
    if (cfg->listeners == NULL)
        return lb_cfg_fail(ld, list, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = NULL;
        struct lb_listener_cfg *l = &cfg->listeners[i];
        long long backlog = LB_DEFAULT_BACKLOG, per_ip = 0;
        l->defer_accept = true;
        if (lb_cfg_group_elem(ld, list, (unsigned)i, "listener", &g) < 0 ||
            lb_cfg_check_keys(ld, g, "listener", keys) < 0 ||
            lb_cfg_address(ld, g, true, &l->addr, l->address) < 0 ||
            lb_cfg_int(ld, g, "backlog", 1, 65535, &backlog) < 0 ||
            lb_cfg_bool(ld, g, "defer_accept", &l->defer_accept) < 0 ||
            lb_cfg_int(ld, g, "max_connections_per_ip", 0, 1000000, &per_ip) < 0 ||
            lb_cfg_steering(ld, g, l) < 0)
            return -1;
        cfg->nlisteners++;      /* from here lb_config_free frees what it holds */
        if (lb_cfg_tls(ld, g, l) < 0 || lb_cfg_redirect(ld, g, l) < 0)
            return -1;
        cfg->ntls += l->tls != NULL;
        l->backlog = (int)backlog;
        l->max_connections_per_ip = (unsigned)per_ip;
        for (int j = 0; j < i; j++)
            if (lb_addr_equal(&cfg->listeners[j].addr, &l->addr))
                return lb_cfg_fail(ld, g, "duplicate listener address %s", l->address);
    }
    return 0;
}

static int lb_cfg_strategy(struct lb_loader *ld, const config_setting_t *g,
                           enum lb_strategy *out)
{
    static const struct { const char *name; enum lb_strategy s; } names[] = {
        { "round_robin", LB_STRATEGY_ROUND_ROBIN },
        { "weighted_round_robin", LB_STRATEGY_WEIGHTED_ROUND_ROBIN },
        { "least_connections", LB_STRATEGY_LEAST_CONNECTIONS },
        { "power_of_two", LB_STRATEGY_POWER_OF_TWO },
        { "random", LB_STRATEGY_RANDOM },
        { "hash", LB_STRATEGY_HASH },
        { "least_time", LB_STRATEGY_LEAST_TIME },
    };
    const char *str = NULL;
    if (lb_cfg_string(ld, g, "strategy", &str, false) < 0)
        return -1;
    if (str == NULL) {
        *out = LB_STRATEGY_ROUND_ROBIN;
        return 0;
    }
    for (size_t i = 0; i < LB_ARRAY_SIZE(names); i++) {
        if (strcmp(str, names[i].name) == 0) {
            *out = names[i].s;
            return 0;
        }
    }
    return lb_cfg_fail(ld, lb_cfg_member(g, "strategy"),
                       "unknown strategy \"%s\" (round_robin, weighted_round_robin, "
                       "least_connections, power_of_two, random, hash, least_time)", str);
}

const char *lb_strategy_name(enum lb_strategy s)
{
    switch (s) {
    case LB_STRATEGY_ROUND_ROBIN:          return "round_robin";
    case LB_STRATEGY_WEIGHTED_ROUND_ROBIN: return "weighted_round_robin";
    case LB_STRATEGY_LEAST_CONNECTIONS:    return "least_connections";
    case LB_STRATEGY_POWER_OF_TWO:         return "power_of_two";
    case LB_STRATEGY_RANDOM:               return "random";
    case LB_STRATEGY_HASH:                 return "hash";
    case LB_STRATEGY_LEAST_TIME:           return "least_time";
    }
    return "?";
}

static int lb_cfg_timeouts(struct lb_loader *ld, const config_setting_t *parent,
                           struct lb_timeouts *t, bool pool);

static int lb_cfg_hash_key(struct lb_loader *ld, const config_setting_t *g,
                           struct lb_pool_cfg *p)
{
    const char *key = NULL;
    if (lb_cfg_string(ld, g, "hash_key", &key, false) < 0)
        return -1;
    p->hash_key = LB_HASH_CLIENT_IP;
    if (key == NULL || strcmp(key, "client_ip") == 0)
        return 0;
    const char *name = NULL;
    if (strncmp(key, "header:", 7) == 0) {
        p->hash_key = LB_HASH_HEADER;
        name = key + 7;
    } else if (strncmp(key, "cookie:", 7) == 0) {
        p->hash_key = LB_HASH_COOKIE;
        name = key + 7;
    }
    bool ok = name != NULL && *name != '\0' && strlen(name) < sizeof(p->hash_name);
    for (const char *c = name; ok && *c; c++)
        ok = *c > 0x20 && *c < 0x7f && *c != ':' && *c != '=' && *c != ';';
    if (!ok)
        return lb_cfg_fail(ld, lb_cfg_member(g, "hash_key"),
                           "bad hash_key \"%s\" (client_ip, \"header:NAME\" or \"cookie:NAME\")",
                           key);
    snprintf(p->hash_name, sizeof(p->hash_name), "%s", name);
    return 0;
}

static int lb_cfg_status_range(const char *s, int *lo, int *hi)
{
    char *end;
    long a = strtol(s, &end, 10), b = a;
    if (end == s)
        return -1;
    if (*end == '-') {
        const char *t = end + 1;
        b = strtol(t, &end, 10);
        if (end == t)
            return -1;
    }
    if (*end != '\0' || a < 100 || b > 599 || a > b)
        return -1;
    *lo = (int)a;
    *hi = (int)b;
    return 0;
}

static int lb_cfg_health(struct lb_loader *ld, const config_setting_t *pool,
                         struct lb_health_cfg *h)
{
    static const char *const keys[] = { "path", "interval", "timeout", "rise", "fall",
                                        "expect_status", NULL };
    *h = (struct lb_health_cfg){ .interval_ms = 2000, .timeout_ms = 1000, .rise = 2,
                                 .fall = 3, .expect_lo = 200, .expect_hi = 399 };
    const config_setting_t *g = lb_cfg_member(pool, "health_check");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'health_check' must be a group { ... }");
    const char *path = NULL, *expect = NULL;
    long long rise = h->rise, fall = h->fall;
    if (lb_cfg_check_keys(ld, g, "health_check", keys) < 0 ||
        lb_cfg_string(ld, g, "path", &path, false) < 0 ||
        lb_cfg_duration(ld, g, "interval", &h->interval_ms) < 0 ||
        lb_cfg_duration(ld, g, "timeout", &h->timeout_ms) < 0 ||
        lb_cfg_int(ld, g, "rise", 1, 100, &rise) < 0 ||
        lb_cfg_int(ld, g, "fall", 1, 100, &fall) < 0 ||
        lb_cfg_string(ld, g, "expect_status", &expect, false) < 0)
        return -1;
    if (path != NULL) {
        bool ok = path[0] == '/' && strlen(path) < sizeof(h->path);
        for (const char *c = path; ok && *c; c++)
            ok = *c > 0x20 && *c < 0x7f;
        if (!ok)
            return lb_cfg_fail(ld, lb_cfg_member(g, "path"),
                               "health_check path must start with '/' and be plain ASCII");
        snprintf(h->path, sizeof(h->path), "%s", path);
    }
    if (expect != NULL && lb_cfg_status_range(expect, &h->expect_lo, &h->expect_hi) < 0)
        return lb_cfg_fail(ld, lb_cfg_member(g, "expect_status"),
                           "expect_status must be a status or range like \"200-399\"");
    if (h->interval_ms < 100 || h->timeout_ms == 0)
        return lb_cfg_fail(ld, g, "health_check: interval must be at least 100ms and timeout non-zero");
    h->rise = (unsigned)rise;
    h->fall = (unsigned)fall;
    h->enabled = true;
    return 0;
}

/* A number between LO and HI, integer or not ("0.5", "1"). */
static int lb_cfg_number(struct lb_loader *ld, const config_setting_t *group, const char *name,
                         double lo, double hi, double *out)
{
    const config_setting_t *s = lb_cfg_member(group, name);
    if (s == NULL)
        return 0;
    int t = config_setting_type(s);
    double v;
    if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
        v = (double)config_setting_get_int64(s);
    else if (t == CONFIG_TYPE_FLOAT)
        v = config_setting_get_float(s);
    else
        return lb_cfg_fail(ld, s, "'%s' must be a number", name);
    if (!(v >= lo && v <= hi))
        return lb_cfg_fail(ld, s, "'%s' must be between %g and %g", name, lo, hi);
    *out = v;
    return 0;
}

/* A duration that must not be "0". */
static int lb_cfg_duration_pos(struct lb_loader *ld, const config_setting_t *group,
                               const char *name, uint64_t max_ms, uint64_t *out)
{
    if (lb_cfg_duration(ld, group, name, out) < 0)
        return -1;
    const config_setting_t *s = lb_cfg_member(group, name);
    if (s != NULL && (*out == 0 || *out > max_ms))
        return lb_cfg_fail(ld, s, "'%s' must be more than 0 and at most %llus", name,
                           (unsigned long long)(max_ms / 1000));
    return 0;
}

#define LB_BREAKER_OPEN_MAX_MS  (24ull * 3600 * 1000)
#define LB_BREAKER_WINDOW_MAX_MS (3600ull * 1000)

/* passive_health = { failures; on_5xx; cooldown; } is the breaker with its
 * consecutive trigger alone, a fixed open interval (cooldown) and no
 * ejection limit: what passive health always did, as one state machine. */
static int lb_cfg_passive(struct lb_loader *ld, const config_setting_t *g,
                          struct lb_breaker_cfg *b)
{
    static const char *const keys[] = { "failures", "on_5xx", "cooldown", NULL };
    long long failures = 5;
    uint64_t cooldown = 10000;
    b->on_5xx = false;
    if (lb_cfg_check_keys(ld, g, "passive_health", keys) < 0 ||
        lb_cfg_int(ld, g, "failures", 1, 1000, &failures) < 0 ||
        lb_cfg_duration_pos(ld, g, "cooldown", LB_BREAKER_OPEN_MAX_MS, &cooldown) < 0 ||
        lb_cfg_bool(ld, g, "on_5xx", &b->on_5xx) < 0)
        return -1;
    b->failures = (unsigned)failures;
    b->ratio_ppm = 0;
    b->open_ms = b->open_max_ms = cooldown;
    b->half_open_requests = 1;
    b->max_ejection_percent = 100;
    return 0;
}

static int lb_cfg_breaker(struct lb_loader *ld, const config_setting_t *pool,
                          struct lb_pool_cfg *p)
{
    static const char *const keys[] = { "failures", "failure_ratio", "window", "min_requests",
                                        "on_5xx", "open", "open_max", "half_open_requests",
                                        "max_ejection_percent", NULL };
    struct lb_breaker_cfg *b = &p->breaker;
    *b = (struct lb_breaker_cfg){ .failures = 5, .ratio_ppm = LB_BREAKER_RATIO_ONE / 2,
                                  .window_ms = 10000, .min_requests = 20, .on_5xx = true,
                                  .open_ms = 5000, .open_max_ms = 300000,
                                  .half_open_requests = 1, .max_ejection_percent = 50 };
    const config_setting_t *g = lb_cfg_member(pool, "circuit_breaker");
    const config_setting_t *passive = lb_cfg_member(pool, "passive_health");
    if (g != NULL && passive != NULL)
        return lb_cfg_fail(ld, passive, "'passive_health' and 'circuit_breaker' are one mechanism: "
                           "keep circuit_breaker (passive_health = { failures = N; on_5xx = B; "
                           "cooldown = D; } is circuit_breaker = { failures = N; failure_ratio = 0; "
                           "on_5xx = B; open = D; open_max = D; max_ejection_percent = 100; })");
    if (passive != NULL) {
        if (config_setting_type(passive) != CONFIG_TYPE_GROUP)
            return lb_cfg_fail(ld, passive, "'passive_health' must be a group { ... }");
        if (lb_cfg_passive(ld, passive, b) < 0)
            return -1;
    } else if (g != NULL) {
        if (config_setting_type(g) != CONFIG_TYPE_GROUP)
            return lb_cfg_fail(ld, g, "'circuit_breaker' must be a group { ... }");
        long long failures = b->failures, min_requests = b->min_requests;
        long long trials = b->half_open_requests, eject = b->max_ejection_percent;
        double ratio = 0.5;
        if (lb_cfg_check_keys(ld, g, "circuit_breaker", keys) < 0 ||
            lb_cfg_int(ld, g, "failures", 0, 1000, &failures) < 0 ||
            lb_cfg_number(ld, g, "failure_ratio", 0.0, 1.0, &ratio) < 0 ||
            lb_cfg_duration(ld, g, "window", &b->window_ms) < 0 ||
            lb_cfg_int(ld, g, "min_requests", 1, 1000000, &min_requests) < 0 ||
            lb_cfg_bool(ld, g, "on_5xx", &b->on_5xx) < 0 ||
            lb_cfg_duration_pos(ld, g, "open", LB_BREAKER_OPEN_MAX_MS, &b->open_ms) < 0 ||
            lb_cfg_duration_pos(ld, g, "open_max", LB_BREAKER_OPEN_MAX_MS, &b->open_max_ms) < 0 ||
            lb_cfg_int(ld, g, "half_open_requests", 1, LB_BREAKER_MAX_TRIALS, &trials) < 0 ||
            lb_cfg_int(ld, g, "max_ejection_percent", 0, 100, &eject) < 0)
            return -1;
        if (b->window_ms < 1000 || b->window_ms > LB_BREAKER_WINDOW_MAX_MS)
            return lb_cfg_fail(ld, lb_cfg_member(g, "window"),
                               "circuit_breaker: window must be between 1s and 1h");
        if (b->open_ms > b->open_max_ms)
            return lb_cfg_fail(ld, lb_cfg_member(g, lb_cfg_member(g, "open_max") ? "open_max" : "open"),
                               "circuit_breaker: open (%llums) must not exceed open_max (%llums)",
                               (unsigned long long)b->open_ms, (unsigned long long)b->open_max_ms);
        b->failures = (unsigned)failures;
        b->ratio_ppm = (uint32_t)(ratio * LB_BREAKER_RATIO_ONE + 0.5);
        if (b->failures == 0 && b->ratio_ppm == 0)
            return lb_cfg_fail(ld, g, "circuit_breaker: failures and failure_ratio are both 0: "
                                      "it would never open (leave circuit_breaker out instead)");
        b->min_requests = (unsigned)min_requests;
        b->half_open_requests = (unsigned)trials;
        b->max_ejection_percent = (unsigned)eject;
    } else {
        *b = (struct lb_breaker_cfg){ .enabled = false };
        return 0;
    }
    /* A trial the breaker let through and never heard of again (its worker
     * died) must not hold the breaker half-open for good: after the time a
     * response head may take, its place goes to another trial. */
    uint64_t connect = p->timeouts.connect_ms ? p->timeouts.connect_ms : 60000;
    uint64_t response = p->timeouts.backend_response_ms ? p->timeouts.backend_response_ms : 60000;
    b->trial_timeout_ms = connect + response;
    b->enabled = true;
    return 0;
}

static int lb_cfg_size(struct lb_loader *ld, const config_setting_t *group, const char *name,
                       uint64_t lo, uint64_t hi, uint64_t *out);

#define LB_RETRY_BACKOFF_MAX_MS 60000

/* One entry of retries.on: "connect", "reset", "timeout", "5xx" or a
 * status 500-599. 0, or -1 if unknown. */
static int lb_cfg_retry_on(const char *v, struct lb_retry_cfg *r)
{
    if (strcmp(v, "connect") == 0) {
        r->on |= LB_RETRY_ON_CONNECT;
    } else if (strcmp(v, "reset") == 0) {
        r->on |= LB_RETRY_ON_RESET;
    } else if (strcmp(v, "timeout") == 0) {
        r->on |= LB_RETRY_ON_TIMEOUT;
    } else if (strcmp(v, "5xx") == 0) {
        r->on_status[0] = r->on_status[1] = UINT64_MAX;
    } else if (v[0] == '5' && v[1] >= '0' && v[1] <= '9' && v[2] >= '0' && v[2] <= '9' &&
               v[3] == '\0') {
        unsigned bit = (unsigned)((v[1] - '0') * 10 + (v[2] - '0'));
        r->on_status[bit / 64] |= 1ull << (bit % 64);
    } else {
        return -1;
    }
    return 0;
}

/* retries = { attempts; on; backoff; backoff_max; per_try_timeout; budget;
 * min_retries; methods; buffer; }: worker/retry.h. Without the group, or
 * with attempts = 1, nothing is retried (a stale pooled connection's
 * resend is not a retry: see the README). */
static int lb_cfg_retries_keys(struct lb_loader *ld, const config_setting_t *pool,
                               struct lb_retry_cfg *r)
{
    static const char *const keys[] = { "attempts", "on", "backoff", "backoff_max",
                                        "per_try_timeout", "budget", "min_retries", "methods",
                                        "buffer", NULL };
    *r = (struct lb_retry_cfg){ .attempts = 1,
                                .on = LB_RETRY_ON_CONNECT | LB_RETRY_ON_RESET | LB_RETRY_ON_TIMEOUT,
                                .on_status = { 7ull << 2, 0 },      /* 502, 503, 504 */
                                .backoff_ms = 25, .backoff_max_ms = 250, .budget_percent = 20,
                                .min_retries = 3, .buffer = 64 * 1024 };
    const config_setting_t *g = lb_cfg_member(pool, "retries");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'retries' must be a group { ... }");
    long long attempts = r->attempts, budget = r->budget_percent, min = r->min_retries;
    const char *methods = NULL;
    if (lb_cfg_check_keys(ld, g, "retries", keys) < 0 ||
        lb_cfg_int(ld, g, "attempts", 1, LB_RETRY_MAX_ATTEMPTS, &attempts) < 0 ||
        lb_cfg_duration(ld, g, "backoff", &r->backoff_ms) < 0 ||
        lb_cfg_duration(ld, g, "backoff_max", &r->backoff_max_ms) < 0 ||
        lb_cfg_duration(ld, g, "per_try_timeout", &r->per_try_timeout_ms) < 0 ||
        lb_cfg_int(ld, g, "budget", 0, 100, &budget) < 0 ||
        lb_cfg_int(ld, g, "min_retries", 0, 100000, &min) < 0 ||
        lb_cfg_string(ld, g, "methods", &methods, false) < 0 ||
        lb_cfg_size(ld, g, "buffer", 0, 64 << 20, &r->buffer) < 0)
        return -1;
    const config_setting_t *on = lb_cfg_member(g, "on");
    if (on != NULL) {
        if (config_setting_type(on) != CONFIG_TYPE_ARRAY &&
            config_setting_type(on) != CONFIG_TYPE_LIST)
            return lb_cfg_fail(ld, on, "retries: 'on' must be a list: "
                                       "[ \"connect\", \"reset\", \"timeout\", \"503\" ]");
        r->on = 0;
        r->on_status[0] = r->on_status[1] = 0;
        int n = config_setting_length(on);
        for (int i = 0; i < n; i++) {
            const config_setting_t *e = config_setting_get_elem(on, (unsigned)i);
            const char *v = config_setting_type(e) == CONFIG_TYPE_STRING
                                ? config_setting_get_string(e) : "";
            if (lb_cfg_retry_on(v, r) < 0)
                return lb_cfg_fail(ld, e, "retries: unknown 'on' entry \"%s\" (strings: "
                                          "\"connect\", \"reset\", \"timeout\", \"5xx\" or a "
                                          "status \"500\"-\"599\")", v);
        }
    }
    if (methods != NULL) {
        if (strcmp(methods, "all") != 0 && strcmp(methods, "idempotent") != 0)
            return lb_cfg_fail(ld, lb_cfg_member(g, "methods"),
                               "retries: methods must be \"idempotent\" or \"all\"");
        r->methods_all = strcmp(methods, "all") == 0;
    }
    if (r->backoff_max_ms > LB_RETRY_BACKOFF_MAX_MS)
        return lb_cfg_fail(ld, lb_cfg_member(g, "backoff_max"),
                           "retries: backoff_max must be at most 60s");
    if (r->backoff_ms > r->backoff_max_ms)
        return lb_cfg_fail(ld, lb_cfg_member(g, "backoff"),
                           "retries: backoff (%llums) must not exceed backoff_max (%llums)",
                           (unsigned long long)r->backoff_ms, (unsigned long long)r->backoff_max_ms);
    r->attempts = (unsigned)attempts;
    r->budget_percent = (unsigned)budget;
    r->min_retries = (unsigned)min;
    r->enabled = r->attempts > 1;
    return 0;
}

static int lb_cfg_retries(struct lb_loader *ld, const config_setting_t *pool,
                          struct lb_pool_cfg *p)
{
    struct lb_retry_cfg *r = &p->retries;
    if (lb_cfg_retries_keys(ld, pool, r) < 0)
        return -1;
    /* A try waits for its answer's head backend_response, or
     * per_try_timeout if that is shorter: one value for the data path. */
    uint64_t head = p->timeouts.backend_response_ms, per_try = r->per_try_timeout_ms;
    r->head_timeout_ms = per_try != 0 && (head == 0 || per_try < head) ? per_try : head;
    return 0;
}

/* ---- sticky sessions (worker/sticky.h) ---------------------------------- */

/* RFC 6265 cookie-name: an RFC 9110 token. */
static bool lb_cfg_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *c) != NULL))
            return false;
    return true;
}

/* An attribute value of Set-Cookie: printable, no ';' (it would end it). */
static bool lb_cfg_attr_value(const char *s)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c < 0x21 || *c > 0x7e || *c == ';' || *c == ',')
            return false;
    return true;
}

/* The secret of secret_file: the file's bytes, one trailing newline (and
 * CR) dropped, so `openssl rand -hex 32 > FILE` works as it is. */
static int lb_cfg_secret_file(struct lb_loader *ld, const config_setting_t *s, const char *path,
                              struct lb_sticky_cfg *st)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return lb_cfg_fail(ld, s, "secret_file \"%s\": %s", path, strerror(errno));
    char *buf = malloc(LB_STICKY_SECRET_MAX + 2);
    size_t n = buf ? fread(buf, 1, LB_STICKY_SECRET_MAX + 2, f) : 0;
    bool err = ferror(f) != 0;
    fclose(f);
    if (buf == NULL)
        return lb_cfg_fail(ld, s, "out of memory");
    if (err) {
        free(buf);
        return lb_cfg_fail(ld, s, "secret_file \"%s\": read error", path);
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n < LB_STICKY_SECRET_MIN || n > LB_STICKY_SECRET_MAX) {
        free(buf);
        return lb_cfg_fail(ld, s, "secret_file \"%s\": the secret must be %d to %d bytes",
                           path, LB_STICKY_SECRET_MIN, LB_STICKY_SECRET_MAX);
    }
    st->secret = buf;
    st->secret_len = n;
    return 0;
}

/* sticky = { cookie; max_age; secure; httponly; samesite; path; domain;
 * secret or secret_file; strip; }: lbd's cookie pins a client to the
 * server that first answered it. The Set-Cookie attributes are built here
 * once; the values (a MAC per server) by lb_sticky_config_load. */
static int lb_cfg_sticky(struct lb_loader *ld, const config_setting_t *pool,
                         struct lb_pool_cfg *p)
{
    static const char *const keys[] = { "cookie", "max_age", "secure", "httponly", "samesite",
                                        "path", "domain", "secret", "secret_file", "strip",
                                        NULL };
    struct lb_sticky_cfg *st = &p->sticky;
    const config_setting_t *g = lb_cfg_member(pool, "sticky");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'sticky' must be a group: sticky = { cookie = \"lbd_srv\"; ... };");
    const char *cookie = "lbd_srv", *samesite = "Lax", *path = "/", *domain = "";
    const char *secret = NULL, *secret_file = NULL;
    uint64_t max_age_ms = 0;
    bool secure = false, httponly = true;
    st->strip = true;
    if (lb_cfg_check_keys(ld, g, "sticky", keys) < 0 ||
        lb_cfg_string(ld, g, "cookie", &cookie, false) < 0 ||
        lb_cfg_duration(ld, g, "max_age", &max_age_ms) < 0 ||
        lb_cfg_bool(ld, g, "secure", &secure) < 0 ||
        lb_cfg_bool(ld, g, "httponly", &httponly) < 0 ||
        lb_cfg_string(ld, g, "samesite", &samesite, false) < 0 ||
        lb_cfg_string(ld, g, "path", &path, false) < 0 ||
        lb_cfg_string(ld, g, "domain", &domain, false) < 0 ||
        lb_cfg_string(ld, g, "secret", &secret, false) < 0 ||
        lb_cfg_string(ld, g, "secret_file", &secret_file, false) < 0 ||
        lb_cfg_bool(ld, g, "strip", &st->strip) < 0)
        return -1;
    if (!lb_cfg_token(cookie) || strlen(cookie) >= sizeof(st->cookie))
        return lb_cfg_fail(ld, lb_cfg_member(g, "cookie"),
                           "sticky: bad cookie name \"%s\" (1-63 token characters: "
                           "A-Z a-z 0-9 !#$%%&'*+-.^_`|~)", cookie);
    if (max_age_ms != 0 && (max_age_ms < 1000 || max_age_ms / 1000 > LB_STICKY_MAX_AGE_MAX_S))
        return lb_cfg_fail(ld, lb_cfg_member(g, "max_age"),
                           "sticky: max_age must be \"0\" (a session cookie) or 1s to 9600h (400 days)");
    const char *ss = NULL;
    if (strcasecmp(samesite, "strict") == 0)
        ss = "Strict";
    else if (strcasecmp(samesite, "lax") == 0)
        ss = "Lax";
    else if (strcasecmp(samesite, "none") == 0)
        ss = "None";
    else if (*samesite != '\0')
        return lb_cfg_fail(ld, lb_cfg_member(g, "samesite"),
                           "sticky: samesite must be \"Strict\", \"Lax\", \"None\" or \"\" (left out)");
    if (ss != NULL && strcmp(ss, "None") == 0 && !secure)
        return lb_cfg_fail(ld, lb_cfg_member(g, "samesite"),
                           "sticky: samesite = \"None\" needs secure = true (browsers drop it otherwise)");
    if (path[0] != '/' || strlen(path) > 255 || !lb_cfg_attr_value(path))
        return lb_cfg_fail(ld, lb_cfg_member(g, "path"),
                           "sticky: bad path \"%s\" (starts with /, at most 255 printable "
                           "characters, no ; or ,)", path);
    bool dom_ok = strlen(domain) <= 253;
    for (const char *c = domain; dom_ok && *c; c++)
        dom_ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                 (*c >= '0' && *c <= '9') || *c == '-' || *c == '.';
    if (!dom_ok)
        return lb_cfg_fail(ld, lb_cfg_member(g, "domain"),
                           "sticky: bad domain \"%s\" (a host name, or \"\": none)", domain);
    if (secret != NULL && secret_file != NULL)
        return lb_cfg_fail(ld, lb_cfg_member(g, "secret_file"),
                           "sticky: 'secret' and 'secret_file' are exclusive");
    if (secret != NULL) {
        size_t n = strlen(secret);
        if (n < LB_STICKY_SECRET_MIN || n > LB_STICKY_SECRET_MAX)
            return lb_cfg_fail(ld, lb_cfg_member(g, "secret"),
                               "sticky: the secret must be %d to %d bytes (e.g. openssl rand -hex 32)",
                               LB_STICKY_SECRET_MIN, LB_STICKY_SECRET_MAX);
        if ((st->secret = strdup(secret)) == NULL)
            return lb_cfg_fail(ld, g, "out of memory");
        st->secret_len = n;
    } else if (secret_file != NULL &&
               lb_cfg_secret_file(ld, lb_cfg_member(g, "secret_file"), secret_file, st) < 0) {
        return -1;
    }
    snprintf(st->cookie, sizeof(st->cookie), "%s", cookie);
    st->cookie_len = strlen(st->cookie);
    char *attrs = NULL;
    char age[40] = "";
    if (max_age_ms != 0)
        snprintf(age, sizeof(age), "; Max-Age=%llu", (unsigned long long)(max_age_ms / 1000));
    int n = asprintf(&attrs, "; Path=%s%s%s%s%s%s%s%s\r\n", path, *domain ? "; Domain=" : "",
                     domain, age, secure ? "; Secure" : "", httponly ? "; HttpOnly" : "",
                     ss ? "; SameSite=" : "", ss ? ss : "");
    if (n < 0)
        return lb_cfg_fail(ld, g, "out of memory");
    st->attrs = attrs;
    st->attrs_len = (size_t)n;
    st->enabled = true;
    return 0;
}
static int lb_cfg_admin_token(struct lb_loader *ld, const config_setting_t *g,
                              struct lb_config *cfg);

static int lb_cfg_admin(struct lb_loader *ld, const config_setting_t *root,
                        struct lb_config *cfg)
{
    static const char *const keys[] = { "address", "max_connections", "timeout", "token",
                                        "token_file", NULL };
    cfg->admin_max_connections = LB_ADMIN_MAX_CONNECTIONS;
    cfg->admin_timeout_ms = 10000;
    const config_setting_t *g = lb_cfg_member(root, "admin");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'admin' must be a group: admin = { address = \"127.0.0.1:9090\"; };");
    long long maxconn = cfg->admin_max_connections;
    if (lb_cfg_check_keys(ld, g, "admin", keys) < 0 ||
        lb_cfg_address(ld, g, true, &cfg->admin_addr, cfg->admin_address) < 0 ||
        lb_cfg_int(ld, g, "max_connections", 1, 65536, &maxconn) < 0 ||
        lb_cfg_duration(ld, g, "timeout", &cfg->admin_timeout_ms) < 0 ||
        lb_cfg_admin_token(ld, g, cfg) < 0)
        return -1;
    if (cfg->admin_timeout_ms == 0)
        return lb_cfg_fail(ld, lb_cfg_member(g, "timeout"),
                           "admin timeout must not be \"0\": a connection that never sends "
                           "its request would hold its place for ever");
    cfg->admin_max_connections = (unsigned)maxconn;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (lb_addr_equal(&cfg->listeners[i].addr, &cfg->admin_addr))
            return lb_cfg_fail(ld, g, "admin address %s is also a listener", cfg->admin_address);
    cfg->admin = true;
    return 0;
}

static int lb_cfg_servers(struct lb_loader *ld, const config_setting_t *pool_group,
                          struct lb_pool_cfg *p)
{
    static const char *const keys[] = { "address", "weight", "max_requests", NULL };
    const config_setting_t *list;
    /* Optional with discovery (lb_cfg_discovery checks a pool has some). */
    if (lb_cfg_list(ld, pool_group, "servers", &list, false) < 0)
        return -1;
    int n = list != NULL ? config_setting_length(list) : 0;
    p->servers = calloc(n > 0 ? (size_t)n : 1, sizeof(*p->servers));
    if (p->servers == NULL)
        return lb_cfg_fail(ld, list, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = NULL;
        struct lb_server_cfg *s = &p->servers[i];
        long long weight = LB_DEFAULT_WEIGHT, max_requests = 0;
        if (lb_cfg_group_elem(ld, list, (unsigned)i, "server", &g) < 0 ||
            lb_cfg_check_keys(ld, g, "server", keys) < 0 ||
            lb_cfg_address(ld, g, false, &s->addr, s->address) < 0 ||
            lb_cfg_int(ld, g, "weight", 0, LB_WEIGHT_MAX, &weight) < 0 ||
            lb_cfg_int(ld, g, "max_requests", 0, LB_MAX_REQUESTS_LIMIT, &max_requests) < 0)
            return -1;
        s->weight = (unsigned)weight;
        s->max_requests = (unsigned)max_requests;
        p->nservers++;
        for (int j = 0; j < i; j++)
            if (lb_addr_equal(&p->servers[j].addr, &s->addr))
                return lb_cfg_fail(ld, g, "duplicate server %s in pool '%s'",
                                   s->address, p->name);
    }
    return 0;
}

#define LB_QUEUE_TIMEOUT_MAX_MS  (3600ull * 1000)
#define LB_SLOW_START_MAX_MS     (3600ull * 1000)

/* queue = { size; timeout; }: where requests wait while every usable
 * server is at its max_requests. Defaults apply without the key (they
 * matter only once a server has max_requests). */
static int lb_cfg_queue(struct lb_loader *ld, const config_setting_t *pool,
                        struct lb_pool_cfg *p)
{
    static const char *const keys[] = { "size", "timeout", NULL };
    p->queue.size = 1000;
    p->queue.timeout_ms = 5000;
    const config_setting_t *g = lb_cfg_member(pool, "queue");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'queue' must be a group: queue = { size = 1000; timeout = \"5s\"; };");
    long long size = p->queue.size;
    if (lb_cfg_check_keys(ld, g, "queue", keys) < 0 ||
        lb_cfg_int(ld, g, "size", 0, LB_MAX_REQUESTS_LIMIT, &size) < 0 ||
        lb_cfg_duration_pos(ld, g, "timeout", LB_QUEUE_TIMEOUT_MAX_MS, &p->queue.timeout_ms) < 0)
        return -1;
    p->queue.size = (unsigned)size;
    return 0;
}

/* slow_start = "30s": a server that becomes usable again ramps up over
 * that time ("0", the default: at once). */
static int lb_cfg_slow_start(struct lb_loader *ld, const config_setting_t *pool,
                             struct lb_pool_cfg *p)
{
    p->slow_start_ms = 0;
    if (lb_cfg_duration(ld, pool, "slow_start", &p->slow_start_ms) < 0)
        return -1;
    if (p->slow_start_ms > LB_SLOW_START_MAX_MS)
        return lb_cfg_fail(ld, lb_cfg_member(pool, "slow_start"),
                           "'slow_start' must be at most 3600s (\"0\": off)");
    return 0;
}

/* "auto" (the default): as many idle connections as the recent peak of
 * requests in flight needs (worker/upstream.c); a number fixes the bound,
 * 0 turns pooling off. */
static int lb_cfg_keepalive(struct lb_loader *ld, const config_setting_t *g,
                            struct lb_pool_cfg *p)
{
    const config_setting_t *s = lb_cfg_member(g, "keepalive");
    p->keepalive_auto = true;
    p->keepalive = 0;
    if (s == NULL)
        return 0;
    if (config_setting_type(s) == CONFIG_TYPE_STRING) {
        if (strcmp(config_setting_get_string(s), "auto") != 0)
            return lb_cfg_fail(ld, s, "'keepalive' must be a number or \"auto\"");
        return 0;
    }
    long long n = 0;
    if (lb_cfg_int(ld, g, "keepalive", 0, 100000, &n) < 0)
        return -1;
    p->keepalive_auto = false;
    p->keepalive = (unsigned)n;
    return 0;
}

/* ---- pools[].tls: TLS to the servers (worker/tls.c) ---- */

static int lb_cfg_pool_tls(struct lb_loader *ld, const config_setting_t *pool,
                           struct lb_pool_cfg *p)
{
    static const char *const keys[] = { "verify", "ca_file", "sni", "cert", "key", NULL };
    const config_setting_t *g = lb_cfg_member(pool, "tls");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "a pool's 'tls' must be a group: tls = { verify = true; "
                                  "ca_file = \"...\"; sni = \"...\"; };");
    struct lb_pool_tls_cfg *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return lb_cfg_fail(ld, g, "out of memory");
    p->tls = t;
    t->verify = true;
    if ((t->at = lb_cfg_where(ld, g)) == NULL)
        return lb_cfg_fail(ld, g, "out of memory");
    if (lb_cfg_check_keys(ld, g, "tls", keys) < 0 ||
        lb_cfg_bool(ld, g, "verify", &t->verify) < 0 ||
        lb_cfg_string_at(ld, g, "ca_file", false, &t->ca_file, &t->ca_file_at) < 0 ||
        lb_cfg_string_at(ld, g, "sni", false, &t->sni, NULL) < 0 ||
        lb_cfg_string_at(ld, g, "cert", false, &t->cert, &t->cert_at) < 0 ||
        lb_cfg_string_at(ld, g, "key", false, &t->key, &t->key_at) < 0)
        return -1;
    if ((t->cert == NULL) != (t->key == NULL))
        return lb_cfg_fail(ld, lb_cfg_member(g, t->cert ? "cert" : "key"),
                           "a client certificate needs both 'cert' and 'key'");
    if (t->sni != NULL) {
        bool ok = strlen(t->sni) < LB_HOST_MAX;
        for (const char *c = t->sni; ok && *c; c++)
            ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                 (*c >= '0' && *c <= '9') || *c == '-' || *c == '.';
        if (!ok)
            return lb_cfg_fail(ld, lb_cfg_member(g, "sni"),
                               "sni must be a host name (letters, digits, '-' and '.')");
    }
    return 0;
}

/* ---- service discovery (issue 18) ---------------------------------------- */

#define LB_DISCO_INTERVAL_MAX_MS (24ull * 3600 * 1000)

static int lb_cfg_discovery_common(struct lb_loader *ld, const config_setting_t *g,
                                   struct lb_discovery_cfg *d);

/* discovery = { type = "dns"; name; port; record; resolvers; min_interval;
 * max_interval; timeout; weight; empty_removes; } */
static int lb_cfg_discovery_dns(struct lb_loader *ld, const config_setting_t *g,
                                struct lb_discovery_cfg *d)
{
    static const char *const keys[] = { "type", "name", "port", "record", "resolvers",
                                        "min_interval", "max_interval", "timeout", "weight",
                                        "empty_removes", NULL };
    const char *name = NULL, *record = "A";
    long long port = 0, weight = 1;
    if (lb_cfg_check_keys(ld, g, "discovery", keys) < 0 ||
        lb_cfg_string(ld, g, "name", &name, true) < 0 ||
        lb_cfg_string(ld, g, "record", &record, false) < 0 ||
        lb_cfg_int(ld, g, "port", 1, 65535, &port) < 0 ||
        lb_cfg_int(ld, g, "weight", 1, LB_WEIGHT_MAX, &weight) < 0)
        return -1;
    size_t n = strlen(name);
    if (n == 0 || n >= 254 || name[0] == '.')
        return lb_cfg_fail(ld, lb_cfg_member(g, "name"), "discovery: bad DNS name \"%s\"", name);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return lb_cfg_fail(ld, lb_cfg_member(g, "name"),
                               "discovery: bad DNS name \"%s\"", name);
    }
    snprintf(d->name, sizeof(d->name), "%s", name);
    if (strcmp(record, "A") == 0)
        d->record = LB_DNS_A;
    else if (strcmp(record, "AAAA") == 0)
        d->record = LB_DNS_AAAA;
    else if (strcmp(record, "SRV") == 0)
        d->record = LB_DNS_SRV;
    else
        return lb_cfg_fail(ld, lb_cfg_member(g, "record"),
                           "discovery: 'record' must be \"A\", \"AAAA\" or \"SRV\"");
    if (d->record != LB_DNS_SRV && port == 0)
        return lb_cfg_fail(ld, g, "discovery: record \"%s\" needs a 'port' (SRV brings its own)",
                           record);
    if (d->record == LB_DNS_SRV && lb_cfg_member(g, "port") != NULL)
        return lb_cfg_fail(ld, lb_cfg_member(g, "port"),
                           "discovery: SRV records bring their ports: no 'port'");
    d->port = (unsigned)port;
    d->weight = (unsigned)weight;
    if (lb_cfg_discovery_common(ld, g, d) < 0)
        return -1;
    const config_setting_t *r = lb_cfg_member(g, "resolvers");
    if (r == NULL)
        return 0;
    if (config_setting_type(r) != CONFIG_TYPE_ARRAY && config_setting_type(r) != CONFIG_TYPE_LIST)
        return lb_cfg_fail(ld, r, "discovery: 'resolvers' must be a list of \"IP:PORT\" strings");
    int k = config_setting_length(r);
    if (k == 0 || k > LB_DISCO_MAX_RESOLVERS)
        return lb_cfg_fail(ld, r, "discovery: 1 to %d resolvers", LB_DISCO_MAX_RESOLVERS);
    for (int i = 0; i < k; i++) {
        const config_setting_t *e = config_setting_get_elem(r, (unsigned)i);
        const char *why = NULL;
        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return lb_cfg_fail(ld, e, "discovery: each resolver must be a string \"IP:PORT\"");
        const char *str = config_setting_get_string(e);
        if (lb_addr_parse(str, false, &d->resolvers[i], &why) < 0)
            return lb_cfg_fail(ld, e, "discovery: bad resolver \"%s\": %s", str, why);
        d->nresolvers++;
    }
    return 0;
}

static void lb_cfg_pool_tls_free(struct lb_pool_tls_cfg *t)
{
    if (t == NULL)
        return;
    free(t->ca_file);
    free(t->ca_file_at);
    free(t->sni);
    free(t->cert);
    free(t->cert_at);
    free(t->key);
    free(t->key_at);
    free(t->at);
    free(t);
}

/* The keys every source has: intervals (dns: re-ask bounds; the others:
 * the retry backoff's), timeout, empty_removes. */
static int lb_cfg_discovery_common(struct lb_loader *ld, const config_setting_t *g,
                                   struct lb_discovery_cfg *d)
{
    d->min_interval_ms = 1000;
    d->max_interval_ms = 60000;
    d->timeout_ms = 2000;
    if (lb_cfg_duration(ld, g, "min_interval", &d->min_interval_ms) < 0 ||
        lb_cfg_duration(ld, g, "max_interval", &d->max_interval_ms) < 0 ||
        lb_cfg_duration(ld, g, "timeout", &d->timeout_ms) < 0 ||
        lb_cfg_bool(ld, g, "empty_removes", &d->empty_removes) < 0)
        return -1;
    if (d->min_interval_ms < 100 || d->max_interval_ms > LB_DISCO_INTERVAL_MAX_MS ||
        d->min_interval_ms > d->max_interval_ms)
        return lb_cfg_fail(ld, g, "discovery: need 100ms <= min_interval <= max_interval <= 24h");
    if (d->timeout_ms < 10 || d->timeout_ms > 60000)
        return lb_cfg_fail(ld, lb_cfg_member(g, "timeout"),
                           "discovery: 'timeout' must be between 10ms and 60s");
    return 0;
}

/* An "http://HOST:PORT" base URL (no path: lbd adds the API's). */
static int lb_cfg_base_url(struct lb_loader *ld, const config_setting_t *at, const char *url,
                           char *out)
{
    size_t n = strlen(url);
    if ((strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) ||
        n >= LB_DISCO_URL_MAX || strchr(url + 8, '/') != NULL || strpbrk(url, " \"\r\n") != NULL ||
        n <= 8)
        return lb_cfg_fail(ld, at, "discovery: bad URL \"%s\" (\"http://HOST:PORT\", no path)",
                           url);
    snprintf(out, LB_DISCO_URL_MAX, "%s", url);
    return 0;
}

/* discovery = { type = "etcd"; endpoints = [ "http://127.0.0.1:2379" ];
 * prefix = "/services/web/"; } */
static int lb_cfg_discovery_etcd(struct lb_loader *ld, const config_setting_t *g,
                                 struct lb_discovery_cfg *d)
{
    static const char *const keys[] = { "type", "endpoints", "prefix", "min_interval",
                                        "max_interval", "timeout", "empty_removes", NULL };
    const char *prefix = NULL;
    if (lb_cfg_check_keys(ld, g, "discovery", keys) < 0 ||
        lb_cfg_string(ld, g, "prefix", &prefix, true) < 0 ||
        lb_cfg_discovery_common(ld, g, d) < 0)
        return -1;
    if (prefix[0] == '\0' || strlen(prefix) >= sizeof(d->prefix))
        return lb_cfg_fail(ld, lb_cfg_member(g, "prefix"), "discovery: 'prefix' must be 1-255 bytes");
    snprintf(d->prefix, sizeof(d->prefix), "%s", prefix);
    const config_setting_t *e = lb_cfg_member(g, "endpoints");
    if (e == NULL)
        return lb_cfg_fail(ld, g, "discovery: missing required key 'endpoints'");
    if (config_setting_type(e) != CONFIG_TYPE_ARRAY && config_setting_type(e) != CONFIG_TYPE_LIST)
        return lb_cfg_fail(ld, e, "discovery: 'endpoints' must be a list of \"http://HOST:PORT\"");
    int k = config_setting_length(e);
    if (k == 0 || k > LB_DISCO_MAX_ENDPOINTS)
        return lb_cfg_fail(ld, e, "discovery: 1 to %d endpoints", LB_DISCO_MAX_ENDPOINTS);
    for (int i = 0; i < k; i++) {
        const config_setting_t *u = config_setting_get_elem(e, (unsigned)i);
        if (config_setting_type(u) != CONFIG_TYPE_STRING)
            return lb_cfg_fail(ld, u, "discovery: each endpoint must be a string");
        if (lb_cfg_base_url(ld, u, config_setting_get_string(u), d->endpoints[i]) < 0)
            return -1;
        d->nendpoints++;
    }
    return 0;
}

/* discovery = { type = "consul"; address = "http://127.0.0.1:8500";
 * service = "web"; passing_only = true; tag = "v2"; } */
static int lb_cfg_discovery_consul(struct lb_loader *ld, const config_setting_t *g,
                                   struct lb_discovery_cfg *d)
{
    static const char *const keys[] = { "type", "address", "service", "passing_only", "tag",
                                        "wait", "min_interval", "max_interval", "timeout",
                                        "empty_removes", NULL };
    const char *address = NULL, *service = NULL, *tag = NULL;
    d->passing_only = true;
    d->wait_ms = 60000;
    if (lb_cfg_check_keys(ld, g, "discovery", keys) < 0 ||
        lb_cfg_string(ld, g, "address", &address, true) < 0 ||
        lb_cfg_string(ld, g, "service", &service, true) < 0 ||
        lb_cfg_string(ld, g, "tag", &tag, false) < 0 ||
        lb_cfg_bool(ld, g, "passing_only", &d->passing_only) < 0 ||
        lb_cfg_duration(ld, g, "wait", &d->wait_ms) < 0 ||
        lb_cfg_discovery_common(ld, g, d) < 0)
        return -1;
    if (lb_cfg_base_url(ld, lb_cfg_member(g, "address"), address, d->endpoints[0]) < 0)
        return -1;
    d->nendpoints = 1;
    if (!lb_name_valid(service))
        return lb_cfg_fail(ld, lb_cfg_member(g, "service"),
                           "discovery: bad service name \"%s\" (1-63 of A-Z a-z 0-9 _ - .)", service);
    snprintf(d->service, sizeof(d->service), "%s", service);
    if (tag != NULL && !lb_name_valid(tag))
        return lb_cfg_fail(ld, lb_cfg_member(g, "tag"),
                           "discovery: bad tag \"%s\" (1-63 of A-Z a-z 0-9 _ - .)", tag);
    snprintf(d->tag, sizeof(d->tag), "%s", tag ? tag : "");
    if (d->wait_ms < 1000 || d->wait_ms > 600000)
        return lb_cfg_fail(ld, lb_cfg_member(g, "wait"), "discovery: 'wait' must be 1s-10m");
    return 0;
}

/* discovery = { type = "zookeeper"; hosts = "127.0.0.1:2181"; path =
 * "/services/web"; session_timeout = "10s"; } */
static int lb_cfg_discovery_zk(struct lb_loader *ld, const config_setting_t *g,
                               struct lb_discovery_cfg *d)
{
    static const char *const keys[] = { "type", "hosts", "path", "session_timeout",
                                        "min_interval", "max_interval", "timeout",
                                        "empty_removes", NULL };
    const char *hosts = NULL, *path = NULL;
    d->session_ms = 10000;
    if (lb_cfg_check_keys(ld, g, "discovery", keys) < 0 ||
        lb_cfg_string(ld, g, "hosts", &hosts, true) < 0 ||
        lb_cfg_string(ld, g, "path", &path, true) < 0 ||
        lb_cfg_duration(ld, g, "session_timeout", &d->session_ms) < 0 ||
        lb_cfg_discovery_common(ld, g, d) < 0)
        return -1;
    if (hosts[0] == '\0' || strlen(hosts) >= sizeof(d->endpoints[0]) ||
        strpbrk(hosts, " /\t") != NULL)
        return lb_cfg_fail(ld, lb_cfg_member(g, "hosts"),
                           "discovery: 'hosts' must be \"HOST:PORT[,HOST:PORT...]\"");
    size_t n = strlen(path);
    if (path[0] != '/' || n >= sizeof(d->prefix) || (n > 1 && path[n - 1] == '/'))
        return lb_cfg_fail(ld, lb_cfg_member(g, "path"),
                           "discovery: 'path' must be a node's path (\"/services/web\")");
    if (d->session_ms < 1000 || d->session_ms > 600000)
        return lb_cfg_fail(ld, lb_cfg_member(g, "session_timeout"),
                           "discovery: 'session_timeout' must be 1s-10m");
    snprintf(d->endpoints[0], sizeof(d->endpoints[0]), "%s", hosts);
    d->nendpoints = 1;
    snprintf(d->prefix, sizeof(d->prefix), "%s", path);
    return 0;
}

/* discovery = { type = ...; } and max_servers: how many runtime slots
 * follow the file's servers (shared/runtime.h). */
static int lb_cfg_discovery(struct lb_loader *ld, const config_setting_t *pool,
                            struct lb_pool_cfg *p)
{
    const config_setting_t *g = lb_cfg_member(pool, "discovery");
    const char *type = NULL;
    long long max = (long long)p->nservers;
    p->nstatic = p->nservers;
    if (g != NULL) {
        if (config_setting_type(g) != CONFIG_TYPE_GROUP)
            return lb_cfg_fail(ld, g, "'discovery' must be a group: discovery = { type = \"dns\"; ... };");
        if (lb_cfg_string(ld, g, "type", &type, true) < 0)
            return -1;
        int rc;
        if (strcmp(type, "dns") == 0) {
            p->discovery.type = LB_DISCO_DNS;
            rc = lb_cfg_discovery_dns(ld, g, &p->discovery);
        } else if (strcmp(type, "etcd") == 0) {
            p->discovery.type = LB_DISCO_ETCD;
            rc = lb_cfg_discovery_etcd(ld, g, &p->discovery);
        } else if (strcmp(type, "consul") == 0) {
            p->discovery.type = LB_DISCO_CONSUL;
            rc = lb_cfg_discovery_consul(ld, g, &p->discovery);
        } else if (strcmp(type, "zookeeper") == 0) {
            p->discovery.type = LB_DISCO_ZOOKEEPER;
            rc = lb_cfg_discovery_zk(ld, g, &p->discovery);
        } else {
            return lb_cfg_fail(ld, lb_cfg_member(g, "type"),
                               "discovery: unknown type \"%s\" (\"dns\", \"etcd\", \"consul\", "
                               "\"zookeeper\")", type);
        }
        if (rc < 0)
            return -1;
        max = (long long)p->nservers + LB_DISCO_DEFAULT_SERVERS;
    }
    if (lb_cfg_int(ld, pool, "max_servers", 1, LB_DISCO_MAX_SERVERS, &max) < 0)
        return -1;
    if ((size_t)max < p->nservers)
        return lb_cfg_fail(ld, lb_cfg_member(pool, "max_servers"),
                           "'max_servers' (%lld) is less than the pool's %zu servers",
                           max, p->nservers);
    if (g == NULL && p->nservers == 0)
        return lb_cfg_fail(ld, pool, "pool '%s' has no servers and no discovery", p->name);
    if ((size_t)max == p->nservers)
        return 0;
    struct lb_server_cfg *v = realloc(p->servers, (size_t)max * sizeof(*v));
    if (v == NULL)
        return lb_cfg_fail(ld, pool, "out of memory");
    p->servers = v;
    /* Runtime slots: a row each in shm, found again by this name across
     * reloads; their address is the runtime one (shared/runtime.h). */
    for (size_t i = p->nservers; i < (size_t)max; i++) {
        memset(&v[i], 0, sizeof(v[i]));
        snprintf(v[i].address, sizeof(v[i].address), "runtime#%zu", i - p->nstatic);
        v[i].runtime = true;
    }
    p->nservers = (size_t)max;
    return 0;
}

static int lb_cfg_pools(struct lb_loader *ld, const config_setting_t *root,
                        struct lb_config *cfg)
{
    static const char *const keys[] = { "name", "strategy", "servers", "keepalive",
                                        "timeouts", "hash_key", "health_check",
                                        "passive_health", "circuit_breaker", "queue",
                                        "slow_start", "retries", "sticky", "tls", "discovery",
                                        "max_servers", NULL };
    const config_setting_t *list;
    if (lb_cfg_list(ld, root, "pools", &list, true) < 0)
        return -1;
    int n = config_setting_length(list);
    if (n == 0)
        return lb_cfg_fail(ld, list, "'pools' must not be empty");
    cfg->pools = calloc((size_t)n, sizeof(*cfg->pools));
    if (cfg->pools == NULL)
        return lb_cfg_fail(ld, list, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = NULL;
        struct lb_pool_cfg *p = &cfg->pools[i];
        const char *name = NULL;
        if (lb_cfg_group_elem(ld, list, (unsigned)i, "pool", &g) < 0 ||
            lb_cfg_check_keys(ld, g, "pool", keys) < 0 ||
            lb_cfg_string(ld, g, "name", &name, true) < 0)
            return -1;
        cfg->npools++;
        if (!lb_name_valid(name))
            return lb_cfg_fail(ld, lb_cfg_member(g, "name"),
                               "bad pool name \"%s\" (1-63 of A-Z a-z 0-9 _ - .)", name);
        snprintf(p->name, sizeof(p->name), "%s", name);
        for (int j = 0; j < i; j++)
            if (strcmp(cfg->pools[j].name, name) == 0)
                return lb_cfg_fail(ld, lb_cfg_member(g, "name"),
                                   "duplicate pool name '%s'", name);
        p->timeouts = cfg->timeouts;
        if (lb_cfg_timeouts(ld, g, &p->timeouts, true) < 0 ||
            lb_cfg_strategy(ld, g, &p->strategy) < 0 ||
            lb_cfg_hash_key(ld, g, p) < 0 ||
            lb_cfg_health(ld, g, &p->health) < 0 ||
            lb_cfg_breaker(ld, g, p) < 0 ||
            lb_cfg_queue(ld, g, p) < 0 ||
            lb_cfg_slow_start(ld, g, p) < 0 ||
            lb_cfg_retries(ld, g, p) < 0 ||
            lb_cfg_sticky(ld, g, p) < 0 ||
            lb_cfg_keepalive(ld, g, p) < 0 ||
            lb_cfg_pool_tls(ld, g, p) < 0 ||
            lb_cfg_servers(ld, g, p) < 0 ||
            lb_cfg_discovery(ld, g, p) < 0)
            return -1;
    }
    return 0;
}

static int lb_cfg_route_host(struct lb_loader *ld, const config_setting_t *g,
                             struct lb_route_cfg *r)
{
    const char *host = "*";
    if (lb_cfg_string(ld, g, "host", &host, false) < 0)
        return -1;
    if (strcmp(host, "*") == 0) {
        r->host_match = LB_HOST_ANY;
        return 0;
    }
    const char *name = host;
    r->host_match = LB_HOST_EXACT;
    if (strncmp(host, "*.", 2) == 0) {
        r->host_match = LB_HOST_SUFFIX;
        name = host + 1;        /* keep the dot: ".example.com" */
    }
    size_t n = strlen(name);
    bool ok = n > (r->host_match == LB_HOST_SUFFIX ? 1u : 0u) && n < sizeof(r->host);
    for (size_t i = 0; ok && i < n; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
        r->host[i] = c;
    }
    if (!ok)
        return lb_cfg_fail(ld, lb_cfg_member(g, "host"),
                           "bad host \"%s\" (use \"*\", \"name.example.com\" or \"*.example.com\")",
                           host);
    r->host[n] = '\0';
    r->host_len = n;
    return 0;
}

static int lb_cfg_route_limits(struct lb_loader *ld, const config_setting_t *g,
                               const struct lb_config *cfg, struct lb_route_cfg *r);

static int lb_cfg_routes(struct lb_loader *ld, const config_setting_t *root,
                         struct lb_config *cfg)
{
    static const char *const keys[] = { "host", "path_prefix", "pool", "rate_limits",
                                        "faults_from_headers", NULL };
    const config_setting_t *list;
    if (lb_cfg_list(ld, root, "routes", &list, false) < 0)
        return -1;
    if (list == NULL) {
        /* One pool and no routes: everything goes to it. */
        if (cfg->npools != 1)
            return lb_cfg_fail(ld, root, "missing 'routes' (required when there is more than one pool)");
        cfg->routes = calloc(1, sizeof(*cfg->routes));
        if (cfg->routes == NULL)
            return lb_cfg_fail(ld, root, "out of memory");
        cfg->routes[0] = (struct lb_route_cfg){ .host_match = LB_HOST_ANY,
                                                .path_prefix = "/", .path_len = 1,
                                                .faults = cfg->pools[0].nfaults > 0 };
        cfg->nroutes = 1;
        return 0;
    }
    int n = config_setting_length(list);
    cfg->routes = calloc(n > 0 ? (size_t)n : 1, sizeof(*cfg->routes));
    if (cfg->routes == NULL)
        return lb_cfg_fail(ld, list, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = NULL;
        struct lb_route_cfg *r = &cfg->routes[i];
        const char *prefix = "/";
        const char *pool = NULL;
        if (lb_cfg_group_elem(ld, list, (unsigned)i, "route", &g) < 0 ||
            lb_cfg_check_keys(ld, g, "route", keys) < 0 ||
            lb_cfg_route_host(ld, g, r) < 0 ||
            lb_cfg_string(ld, g, "path_prefix", &prefix, false) < 0 ||
            lb_cfg_string(ld, g, "pool", &pool, true) < 0 ||
            lb_cfg_bool(ld, g, "faults_from_headers", &r->faults_from_headers) < 0)
            return -1;
        cfg->nroutes++;
        if (prefix[0] != '/' || strlen(prefix) >= sizeof(r->path_prefix))
            return lb_cfg_fail(ld, lb_cfg_member(g, "path_prefix"),
                               "path_prefix must start with '/' (got \"%s\")", prefix);
        snprintf(r->path_prefix, sizeof(r->path_prefix), "%s", prefix);
        r->path_len = strlen(prefix);
        size_t p = 0;
        while (p < cfg->npools && strcmp(cfg->pools[p].name, pool) != 0)
            p++;
        if (p == cfg->npools)
            return lb_cfg_fail(ld, lb_cfg_member(g, "pool"),
                               "route to unknown pool '%s'", pool);
        r->pool = p;
        r->faults = r->faults_from_headers || cfg->pools[p].nfaults > 0;
        if (lb_cfg_route_limits(ld, g, cfg, r) < 0)
            return -1;
    }
    return 0;
}

/* Timeout keys; the pool column says whether a pool may override it (the
 * client-side ones run before routing knows the pool). */
static const struct {
    const char *name;
    size_t offset;
    bool per_pool;
} lb_timeout_keys[] = {
    { "client_header", offsetof(struct lb_timeouts, client_header_ms), false },
    { "client_body", offsetof(struct lb_timeouts, client_body_ms), true },
    { "client_idle", offsetof(struct lb_timeouts, client_idle_ms), false },
    { "connect", offsetof(struct lb_timeouts, connect_ms), true },
    { "backend_response", offsetof(struct lb_timeouts, backend_response_ms), true },
    { "backend_idle", offsetof(struct lb_timeouts, backend_idle_ms), true },
    { "send", offsetof(struct lb_timeouts, send_ms), true },
    { "deadline", offsetof(struct lb_timeouts, deadline_ms), true },
    { "tunnel", offsetof(struct lb_timeouts, tunnel_ms), true },
    { "drain_idle", offsetof(struct lb_timeouts, drain_idle_ms), false },
};

/* Read the 'timeouts' group of PARENT (root or a pool) over T. */
static int lb_cfg_timeouts(struct lb_loader *ld, const config_setting_t *parent,
                           struct lb_timeouts *t, bool pool)
{
    const config_setting_t *g = lb_cfg_member(parent, "timeouts");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'timeouts' must be a group { ... }");
    int n = config_setting_length(g);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(e);
        size_t k = 0;
        while (k < LB_ARRAY_SIZE(lb_timeout_keys) && strcmp(lb_timeout_keys[k].name, name) != 0)
            k++;
        if (k == LB_ARRAY_SIZE(lb_timeout_keys))
            return lb_cfg_fail(ld, e, "unknown key '%s' in timeouts", name);
        if (pool && !lb_timeout_keys[k].per_pool)
            return lb_cfg_fail(ld, e, "timeout '%s' is global only (not per pool)", name);
        if (lb_cfg_duration(ld, g, name, (uint64_t *)((char *)t + lb_timeout_keys[k].offset)) < 0)
            return -1;
    }
    return 0;
}

/* A size: an integer (bytes) or a string with a unit ("64k", "1m"). */
static int lb_cfg_size(struct lb_loader *ld, const config_setting_t *group, const char *name,
                       uint64_t lo, uint64_t hi, uint64_t *out)
{
    const config_setting_t *s = lb_cfg_member(group, name);
    if (s == NULL)
        return 0;
    uint64_t v;
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
        long long x = config_setting_get_int64(s);
        if (x < 0)
            return lb_cfg_fail(ld, s, "'%s' must not be negative", name);
        v = (uint64_t)x;
    } else if (t == CONFIG_TYPE_STRING) {
        if (lb_size_parse(config_setting_get_string(s), &v) < 0)
            return lb_cfg_fail(ld, s, "'%s': invalid size \"%s\" (use e.g. 8192, \"64k\", \"1m\")",
                               name, config_setting_get_string(s));
    } else {
        return lb_cfg_fail(ld, s, "'%s' must be a size (8192 or \"8k\")", name);
    }
    if (v < lo || v > hi)
        return lb_cfg_fail(ld, s, "'%s' must be between %llu and %llu bytes", name,
                           (unsigned long long)lo, (unsigned long long)hi);
    *out = v;
    return 0;
}

static int lb_cfg_limits(struct lb_loader *ld, const config_setting_t *root,
                         struct lb_limits *l)
{
    static const char *const keys[] = { "request_line", "header_size", "headers", "body",
                                        "buffer", NULL };
    const config_setting_t *g = lb_cfg_member(root, "limits");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'limits' must be a group { ... }");
    if (lb_cfg_check_keys(ld, g, "limits", keys) < 0 ||
        lb_cfg_size(ld, g, "request_line", 64, 1 << 20, &l->request_line) < 0 ||
        lb_cfg_size(ld, g, "header_size", 256, 1 << 20, &l->header_size) < 0 ||
        lb_cfg_size(ld, g, "headers", 1, LB_MAX_HEADERS_LIMIT, &l->headers) < 0 ||
        lb_cfg_size(ld, g, "body", 0, UINT64_MAX, &l->body) < 0 ||
        lb_cfg_size(ld, g, "buffer", 4096, 64 << 20, &l->buffer) < 0)
        return -1;
    if (l->request_line > l->header_size)
        return lb_cfg_fail(ld, g, "limits: request_line must not exceed header_size");
    /* A head must fit in what a connection may buffer, or it never completes. */
    if (l->buffer < l->header_size + 4)
        return lb_cfg_fail(ld, g, "limits: buffer must be larger than header_size");
    return 0;
}

int lb_cidr_parse(const char *s, struct lb_cidr *out)
{
    char buf[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    memset(out, 0, sizeof(*out));
    unsigned max, base;
    struct in_addr v4;
    if (inet_pton(AF_INET, buf, &v4) == 1) {
        out->addr[10] = out->addr[11] = 0xff;
        memcpy(out->addr + 12, &v4, 4);
        max = 32;
        base = 96;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        max = 128;
        base = 0;
    } else {
        return -1;
    }
    unsigned prefix = max;
    if (slash != NULL) {
        char *end;
        errno = 0;
        if (slash[1] < '0' || slash[1] > '9')
            return -1;
        unsigned long p = strtoul(slash + 1, &end, 10);
        if (errno != 0 || end == slash + 1 || *end != '\0' || p > max)
            return -1;
        prefix = (unsigned)p;
    }
    out->prefix = base + prefix;
    return 0;
}

bool lb_cidr_match(const struct lb_cidr *blocks, size_t n, const struct sockaddr *sa)
{
    uint8_t a[16] = { 0 };
    if (sa->sa_family == AF_INET) {
        a[10] = a[11] = 0xff;
        memcpy(a + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(a, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    } else {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned bits = blocks[i].prefix, full = bits / 8, rest = bits % 8;
        if (memcmp(a, blocks[i].addr, full) != 0)
            continue;
        if (rest != 0) {
            uint8_t mask = (uint8_t)(0xff << (8 - rest));
            if ((a[full] & mask) != (blocks[i].addr[full] & mask))
                continue;
        }
        return true;
    }
    return false;
}

static int lb_cfg_trusted(struct lb_loader *ld, const config_setting_t *root,
                          struct lb_config *cfg)
{
    const config_setting_t *s = lb_cfg_member(root, "trusted_proxies");
    if (s == NULL)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_LIST && config_setting_type(s) != CONFIG_TYPE_ARRAY)
        return lb_cfg_fail(ld, s, "'trusted_proxies' must be a list of addresses: "
                                  "[ \"10.0.0.0/8\", \"::1\" ]");
    int n = config_setting_length(s);
    cfg->trusted_proxies = calloc(n > 0 ? (size_t)n : 1, sizeof(*cfg->trusted_proxies));
    if (cfg->trusted_proxies == NULL)
        return lb_cfg_fail(ld, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING ||
            lb_cidr_parse(config_setting_get_string(e), &cfg->trusted_proxies[i]) < 0)
            return lb_cfg_fail(ld, e, "trusted_proxies: expected an address or block "
                                      "like \"10.0.0.0/8\" or \"::1\"");
        cfg->ntrusted_proxies++;
    }
    return 0;
}

static int lb_cfg_workers(struct lb_loader *ld, const config_setting_t *root,
                          struct lb_config *cfg)
{
    const config_setting_t *s = lb_cfg_member(root, "workers");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1)
        ncpu = 1;
    if (ncpu > LB_MAX_WORKERS)
        ncpu = LB_MAX_WORKERS;
    if (s == NULL) {
        cfg->workers = (unsigned)ncpu;
        cfg->workers_auto = true;
        return 0;
    }
    if (config_setting_type(s) == CONFIG_TYPE_STRING) {
        if (strcmp(config_setting_get_string(s), "auto") != 0)
            return lb_cfg_fail(ld, s, "'workers' must be a number or \"auto\"");
        cfg->workers = (unsigned)ncpu;
        cfg->workers_auto = true;
        return 0;
    }
    long long n = 0;
    if (lb_cfg_int(ld, root, "workers", 1, LB_MAX_WORKERS, &n) < 0)
        return -1;
    cfg->workers = (unsigned)n;
    return 0;
}

/* "auto" (the default: from the fd limit, at start) or a number. */
static int lb_cfg_max_connections(struct lb_loader *ld, const config_setting_t *root,
                                  struct lb_config *cfg)
{
    const config_setting_t *s = lb_cfg_member(root, "max_connections");
    if (s == NULL)
        return 0;
    if (config_setting_type(s) == CONFIG_TYPE_STRING) {
        if (strcmp(config_setting_get_string(s), "auto") != 0)
            return lb_cfg_fail(ld, s, "'max_connections' must be a number or \"auto\"");
        return 0;
    }
    long long n = 0;
    if (lb_cfg_int(ld, root, "max_connections", 1, LB_MAX_CONNECTIONS_LIMIT, &n) < 0)
        return -1;
    cfg->max_connections = (unsigned)n;
    return 0;
}

static int lb_cfg_strdup(struct lb_loader *ld, const config_setting_t *root,
                         const char *name, char **out)
{
    const char *str = NULL;
    if (lb_cfg_string(ld, root, name, &str, false) < 0)
        return -1;
    if (str == NULL)
        return 0;
    if (*str == '\0')
        return lb_cfg_fail(ld, lb_cfg_member(root, name), "'%s' must not be empty", name);
    *out = strdup(str);
    if (*out == NULL)
        return lb_cfg_fail(ld, root, "out of memory");
    return 0;
}

/* ---- rate limits (worker/ratelimit.c) ----------------------------------- */

int lb_rate_parse(const char *s, uint64_t *rate, bool *per_minute, const char **why)
{
    const char *p = s;
    uint64_t n = 0;
    *why = "use e.g. \"10r/s\" or \"600r/m\"";
    if (*p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9') {
        if (n > 100000000)
            break;      /* far over any bound: refused below */
        n = n * 10 + (uint64_t)(*p - '0');
        p++;
    }
    if (*p >= '0' && *p <= '9') {
        *why = "too high";
        return -1;
    }
    if (strncmp(p, "r/", 2) != 0)
        return -1;
    if (strcmp(p + 2, "s") != 0 && strcmp(p + 2, "m") != 0) {
        *why = "the unit must be r/s or r/m";
        return -1;
    }
    *per_minute = p[2] == 'm';
    if (n == 0) {
        *why = "must be at least 1r/s or 1r/m";
        return -1;
    }
    if (n > (*per_minute ? 60000000u : 1000000u)) {
        *why = "at most 1000000r/s (60000000r/m)";
        return -1;
    }
    *rate = n;
    return 0;
}

/* "client_ip", "global", "route" or "header:NAME". */
static int lb_cfg_rl_key(struct lb_loader *ld, const config_setting_t *g,
                         struct lb_ratelimit_cfg *rl)
{
    const char *key = NULL;
    if (lb_cfg_string(ld, g, "key", &key, false) < 0)
        return -1;
    rl->key = LB_RL_KEY_CLIENT_IP;
    if (key == NULL || strcmp(key, "client_ip") == 0)
        return 0;
    if (strcmp(key, "global") == 0) {
        rl->key = LB_RL_KEY_GLOBAL;
        return 0;
    }
    if (strcmp(key, "route") == 0) {
        rl->key = LB_RL_KEY_ROUTE;
        return 0;
    }
    bool ok = strncmp(key, "header:", 7) == 0 && key[7] != '\0' &&
              strlen(key + 7) < sizeof(rl->header);
    /* A header name is an RFC 9110 token. */
    for (const char *c = key + 7; ok && *c; c++)
        ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
             strchr("!#$%&'*+-.^_`|~", *c) != NULL;
    if (!ok)
        return lb_cfg_fail(ld, lb_cfg_member(g, "key"),
                           "bad key \"%s\" (client_ip, global, route or \"header:NAME\")", key);
    rl->key = LB_RL_KEY_HEADER;
    snprintf(rl->header, sizeof(rl->header), "%s", key + 7);
    return 0;
}

static int lb_cfg_rl_one(struct lb_loader *ld, const config_setting_t *g,
                         const struct lb_config *cfg, struct lb_ratelimit_cfg *rl)
{
    static const char *const keys[] = { "name", "key", "rate", "burst", "algorithm", "delay",
                                        "status", "dry_run", "headers", "scope", NULL };
    const char *name = NULL, *rate = NULL, *algo = NULL, *scope = NULL, *why = NULL;
    long long burst = 0, delay = 0, status = 429;
    if (lb_cfg_check_keys(ld, g, "rate limit", keys) < 0 ||
        lb_cfg_string(ld, g, "name", &name, true) < 0)
        return -1;
    if (!lb_name_valid(name))
        return lb_cfg_fail(ld, lb_cfg_member(g, "name"),
                           "bad rate limit name \"%s\" (1-63 of A-Z a-z 0-9 _ - .)", name);
    snprintf(rl->name, sizeof(rl->name), "%s", name);
    for (size_t j = 0; j < cfg->nrate_limits; j++)
        if (strcmp(cfg->rate_limits[j].name, name) == 0)
            return lb_cfg_fail(ld, lb_cfg_member(g, "name"),
                               "duplicate rate limit name '%s'", name);
    if (lb_cfg_rl_key(ld, g, rl) < 0 ||
        lb_cfg_string(ld, g, "rate", &rate, true) < 0 ||
        lb_cfg_int(ld, g, "burst", 0, 1000000, &burst) < 0 ||
        lb_cfg_string(ld, g, "algorithm", &algo, false) < 0 ||
        lb_cfg_int(ld, g, "delay", 0, 1000000, &delay) < 0 ||
        lb_cfg_int(ld, g, "status", 400, 599, &status) < 0 ||
        lb_cfg_bool(ld, g, "dry_run", &rl->dry_run) < 0 ||
        lb_cfg_bool(ld, g, "headers", &rl->headers) < 0 ||
        lb_cfg_string(ld, g, "scope", &scope, false) < 0)
        return -1;
    if (lb_rate_parse(rate, &rl->rate, &rl->per_minute, &why) < 0)
        return lb_cfg_fail(ld, lb_cfg_member(g, "rate"), "bad rate \"%s\": %s", rate, why);
    snprintf(rl->rate_text, sizeof(rl->rate_text), "%s", rate);
    uint64_t unit = rl->per_minute ? 60000000000ULL : 1000000000ULL;
    rl->interval_ns = (unit + rl->rate / 2) / rl->rate;
    rl->burst = (unsigned)burst;
    rl->algorithm = LB_RL_TOKEN_BUCKET;
    if (algo != NULL && strcmp(algo, "leaky_bucket") == 0)
        rl->algorithm = LB_RL_LEAKY_BUCKET;
    else if (algo != NULL && strcmp(algo, "token_bucket") != 0)
        return lb_cfg_fail(ld, lb_cfg_member(g, "algorithm"),
                           "unknown algorithm \"%s\" (token_bucket, leaky_bucket)", algo);
    if (lb_cfg_member(g, "delay") != NULL) {
        if (rl->algorithm != LB_RL_LEAKY_BUCKET)
            return lb_cfg_fail(ld, lb_cfg_member(g, "delay"),
                               "'delay' applies to algorithm = \"leaky_bucket\" only");
        if (delay > burst)
            return lb_cfg_fail(ld, lb_cfg_member(g, "delay"),
                               "'delay' (%lld) must not exceed burst (%lld)", delay, burst);
    }
    rl->delay = (unsigned)delay;
    rl->status = (int)status;
    rl->scope = LB_RL_SCOPE_LOCAL;
    if (scope != NULL && strcmp(scope, "fleet") == 0) {
        /* Refused rather than quietly enforced per instance: a fleet limit
         * that is N times too generous is worse than no start. */
        if (!cfg->redis)
            return lb_cfg_fail(ld, lb_cfg_member(g, "scope"),
                               "scope = \"fleet\" needs a redis group: "
                               "redis = { address = \"127.0.0.1:6379\"; };");
        rl->scope = LB_RL_SCOPE_FLEET;
    } else if (scope != NULL && strcmp(scope, "local") != 0) {
        return lb_cfg_fail(ld, lb_cfg_member(g, "scope"),
                           "unknown scope \"%s\" (local, fleet)", scope);
    }
    return 0;
}

static int lb_cfg_ratelimits(struct lb_loader *ld, const config_setting_t *root,
                             struct lb_config *cfg)
{
    long long size = 100000;
    cfg->rate_limit_table_size = (uint64_t)size;
    if (lb_cfg_int(ld, root, "rate_limit_table_size", 64, 16777216, &size) < 0)
        return -1;
    cfg->rate_limit_table_size = (uint64_t)size;
    const config_setting_t *list;
    if (lb_cfg_list(ld, root, "rate_limits", &list, false) < 0)
        return -1;
    if (list == NULL)
        return 0;
    int n = config_setting_length(list);
    if (n > LB_RL_MAX_LIMITS)
        return lb_cfg_fail(ld, list, "more than %d rate limits", LB_RL_MAX_LIMITS);
    cfg->rate_limits = calloc(n > 0 ? (size_t)n : 1, sizeof(*cfg->rate_limits));
    if (cfg->rate_limits == NULL)
        return lb_cfg_fail(ld, list, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = NULL;
        if (lb_cfg_group_elem(ld, list, (unsigned)i, "rate limit", &g) < 0 ||
            lb_cfg_rl_one(ld, g, cfg, &cfg->rate_limits[i]) < 0)
            return -1;
        cfg->nrate_limits++;
    }
    uint64_t bytes = (uint64_t)n * cfg->rate_limit_table_size * 16;
    if (bytes > LB_RL_TABLES_MAX_BYTES)
        return lb_cfg_fail(ld, lb_cfg_member(root, "rate_limit_table_size") ?
                               lb_cfg_member(root, "rate_limit_table_size") : list,
                           "%d rate limits of rate_limit_table_size %llu keys need %llu MiB "
                           "of shared memory, more than %llu", n,
                           (unsigned long long)cfg->rate_limit_table_size,
                           (unsigned long long)(bytes >> 20),
                           (unsigned long long)(LB_RL_TABLES_MAX_BYTES >> 20));
    return 0;
}

/* routes[].rate_limits = [ "per_ip", "api_key" ]: names of rate_limits. */
static int lb_cfg_route_limits(struct lb_loader *ld, const config_setting_t *g,
                               const struct lb_config *cfg, struct lb_route_cfg *r)
{
    const config_setting_t *s = lb_cfg_member(g, "rate_limits");
    if (s == NULL)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_ARRAY && config_setting_type(s) != CONFIG_TYPE_LIST)
        return lb_cfg_fail(ld, s, "'rate_limits' must be a list of names: [ \"per_ip\" ]");
    int n = config_setting_length(s);
    if (n > LB_RL_ROUTE_MAX)
        return lb_cfg_fail(ld, s, "more than %d rate limits on one route", LB_RL_ROUTE_MAX);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return lb_cfg_fail(ld, e, "'rate_limits' must be a list of names: [ \"per_ip\" ]");
        const char *name = config_setting_get_string(e);
        size_t k = 0;
        while (k < cfg->nrate_limits && strcmp(cfg->rate_limits[k].name, name) != 0)
            k++;
        if (k == cfg->nrate_limits)
            return lb_cfg_fail(ld, e, "route names unknown rate limit '%s'", name);
        for (size_t j = 0; j < r->nrate_limits; j++) {
            if (r->rate_limits[j] == k)
                return lb_cfg_fail(ld, e, "rate limit '%s' named twice on one route", name);
            /* One round trip to redis per request at most. */
            if (cfg->rate_limits[k].scope == LB_RL_SCOPE_FLEET &&
                cfg->rate_limits[r->rate_limits[j]].scope == LB_RL_SCOPE_FLEET)
                return lb_cfg_fail(ld, e, "a route may name one fleet rate limit at most");
        }
        r->rate_limits[r->nrate_limits++] = (uint8_t)k;
    }
    return 0;
}

/* redis = { address = "127.0.0.1:6379"; timeout = "50ms"; }: for
 * scope = "fleet" (accepted and checked; fleet limits are not built yet). */
static int lb_cfg_redis(struct lb_loader *ld, const config_setting_t *root,
                        struct lb_config *cfg)
{
    static const char *const keys[] = { "address", "timeout", NULL };
    const config_setting_t *g = lb_cfg_member(root, "redis");
    cfg->redis_timeout_ms = 50;
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'redis' must be a group: redis = { address = \"127.0.0.1:6379\"; };");
    if (lb_cfg_check_keys(ld, g, "redis", keys) < 0 ||
        lb_cfg_address(ld, g, false, &cfg->redis_addr, cfg->redis_address) < 0 ||
        lb_cfg_duration(ld, g, "timeout", &cfg->redis_timeout_ms) < 0)
        return -1;
    if (cfg->redis_timeout_ms == 0)
        return lb_cfg_fail(ld, lb_cfg_member(g, "timeout"), "redis timeout must not be 0");
    cfg->redis = true;
    return 0;
}

/* ---- admin API token, fault injection (master/admin.c, worker/fault.c) ---- */

/* A bearer token: visible ASCII, no spaces (RFC 6750's b64token is
 * narrower; any of these survives an Authorization header intact). */
static const char *lb_cfg_token_bad(const char *t)
{
    if (*t == '\0')
        return "is empty";
    if (strlen(t) > LB_ADMIN_TOKEN_MAX)
        return "is longer than 1024 bytes";
    for (; *t != '\0'; t++)
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7f)
            return "has a space, a control or a non-ASCII character";
    return NULL;
}

/* admin.token = "..." or admin.token_file = "PATH" (relative to the main
 * file's directory; its content, trailing newlines and spaces removed). */
static int lb_cfg_admin_token(struct lb_loader *ld, const config_setting_t *g,
                              struct lb_config *cfg)
{
    const char *token = NULL, *file = NULL;
    if (lb_cfg_string(ld, g, "token", &token, false) < 0 ||
        lb_cfg_string(ld, g, "token_file", &file, false) < 0)
        return -1;
    if (token != NULL && file != NULL)
        return lb_cfg_fail(ld, lb_cfg_member(g, "token_file"),
                           "admin: give token or token_file, not both");
    if (token != NULL) {
        const char *bad = lb_cfg_token_bad(token);
        if (bad != NULL)
            return lb_cfg_fail(ld, lb_cfg_member(g, "token"), "admin token %s", bad);
        cfg->admin_token = strdup(token);
        return cfg->admin_token ? 0 : lb_cfg_fail(ld, g, "out of memory");
    }
    if (file == NULL)
        return 0;
    const config_setting_t *at = lb_cfg_member(g, "token_file");
    char path[4096];
    const char *slash = strrchr(ld->path, '/');
    if (file[0] == '/' || slash == NULL)
        snprintf(path, sizeof(path), "%s", file);
    else
        snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - ld->path), ld->path, file);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return lb_cfg_fail(ld, at, "admin token_file %s: %s", path, strerror(errno));
    char buf[LB_ADMIN_TOKEN_MAX + 2];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    bool more = n == sizeof(buf) - 1 && fgetc(f) != EOF;
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
                     buf[n - 1] == '\t'))
        buf[--n] = '\0';
    const char *bad = more ? "is longer than 1024 bytes" : lb_cfg_token_bad(buf);
    if (bad != NULL)
        return lb_cfg_fail(ld, at, "admin token in %s %s", path, bad);
    cfg->admin_token = strdup(buf);
    return cfg->admin_token ? 0 : lb_cfg_fail(ld, g, "out of memory");
}

const char *lb_fault_type_name(enum lb_fault_type t)
{
    switch (t) {
    case LB_FAULT_DELAY: return "delay";
    case LB_FAULT_ABORT: return "abort";
    case LB_FAULT_RESET: return "reset";
    default:             return "?";
    }
}

#define LB_FAULT_DELAY_MAX_MS (3600ull * 1000)

/* faults = ( { name; pool; percent; delay = "200ms" | abort = 503 | reset = true; } ) */
static int lb_cfg_faults(struct lb_loader *ld, const config_setting_t *root,
                         struct lb_config *cfg)
{
    static const char *const keys[] = { "name", "pool", "percent", "delay", "abort", "reset",
                                        NULL };
    const config_setting_t *list;
    if (lb_cfg_list(ld, root, "faults", &list, false) < 0)
        return -1;
    if (list == NULL)
        return 0;
    int n = config_setting_length(list);
    if (n > LB_MAX_FAULTS)
        return lb_cfg_fail(ld, list, "at most %d faults", LB_MAX_FAULTS);
    cfg->faults = calloc(n > 0 ? (size_t)n : 1, sizeof(*cfg->faults));
    if (cfg->faults == NULL)
        return lb_cfg_fail(ld, list, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = NULL;
        struct lb_fault_cfg *f = &cfg->faults[i];
        const char *name = NULL, *pool = NULL;
        if (lb_cfg_group_elem(ld, list, (unsigned)i, "fault", &g) < 0 ||
            lb_cfg_check_keys(ld, g, "fault", keys) < 0 ||
            lb_cfg_string(ld, g, "name", &name, true) < 0 ||
            lb_cfg_string(ld, g, "pool", &pool, true) < 0)
            return -1;
        bool plain = true;
        for (const char *c = name; *c != '\0'; c++)
            plain &= (unsigned char)*c > 0x20 && *c != '/' && *c != '"' && *c != '\\';
        if (name[0] == '\0' || strlen(name) >= sizeof(f->name) || !plain)
            return lb_cfg_fail(ld, lb_cfg_member(g, "name"),
                               "fault name must be 1 to %d characters, without spaces, '/', '\"' or '\\'",
                               (int)sizeof(f->name) - 1);
        if (strcmp(name, "headers") == 0)
            return lb_cfg_fail(ld, lb_cfg_member(g, "name"),
                               "fault name \"headers\" is reserved (faults_from_headers' counts)");
        for (int k = 0; k < i; k++)
            if (strcmp(cfg->faults[k].name, name) == 0)
                return lb_cfg_fail(ld, lb_cfg_member(g, "name"), "duplicate fault '%s'", name);
        snprintf(f->name, sizeof(f->name), "%s", name);
        size_t p = 0;
        while (p < cfg->npools && strcmp(cfg->pools[p].name, pool) != 0)
            p++;
        if (p == cfg->npools)
            return lb_cfg_fail(ld, lb_cfg_member(g, "pool"), "fault '%s': unknown pool '%s'",
                               name, pool);
        f->pool = p;
        const config_setting_t *pc = lb_cfg_member(g, "percent");
        if (pc == NULL)
            return lb_cfg_fail(ld, g, "fault '%s': missing 'percent' (0 to 100)", name);
        double pct = config_setting_type(pc) == CONFIG_TYPE_INT ? config_setting_get_int(pc)
                   : config_setting_type(pc) == CONFIG_TYPE_FLOAT ? config_setting_get_float(pc)
                   : -1.0;
        if (!(pct >= 0.0 && pct <= 100.0))
            return lb_cfg_fail(ld, pc, "fault '%s': percent must be a number from 0 to 100",
                               name);
        f->ppm = (uint32_t)(pct * (LB_FAULT_PPM_ONE / 100) + 0.5);
        const config_setting_t *d = lb_cfg_member(g, "delay"), *a = lb_cfg_member(g, "abort"),
                               *rs = lb_cfg_member(g, "reset");
        if ((d != NULL) + (a != NULL) + (rs != NULL) != 1)
            return lb_cfg_fail(ld, g, "fault '%s': give exactly one of delay = \"200ms\", "
                                      "abort = 503 or reset = true", name);
        if (d != NULL) {
            f->type = LB_FAULT_DELAY;
            if (lb_cfg_duration(ld, g, "delay", &f->delay_ms) < 0)
                return -1;
            if (f->delay_ms == 0 || f->delay_ms > LB_FAULT_DELAY_MAX_MS)
                return lb_cfg_fail(ld, d, "fault '%s': delay must be from 1ms to 1h", name);
        } else if (a != NULL) {
            long long st = 0;
            f->type = LB_FAULT_ABORT;
            if (lb_cfg_int(ld, g, "abort", 200, 599, &st) < 0)
                return -1;
            f->abort_status = (int)st;
        } else {
            bool on = false;
            f->type = LB_FAULT_RESET;
            if (lb_cfg_bool(ld, g, "reset", &on) < 0)
                return -1;
            if (!on)
                return lb_cfg_fail(ld, rs, "fault '%s': reset = false means no fault: leave "
                                           "the fault out", name);
        }
        struct lb_pool_cfg *pl = &cfg->pools[p];
        /* One draw per request, each fault the next share of it: past 100 %
         * the later faults would get less than their percent (or none). */
        uint64_t sum = f->ppm;
        for (size_t k = 0; k < pl->nfaults; k++)
            sum += cfg->faults[pl->faults[k]].ppm;
        if (sum > LB_FAULT_PPM_ONE)
            return lb_cfg_fail(ld, pc, "pool '%s': its faults add up to %g %%, more than 100 "
                                       "(a request gets one fault at most)",
                               pl->name, (double)sum / (LB_FAULT_PPM_ONE / 100));
        pl->faults[pl->nfaults++] = (uint8_t)i;
        cfg->nfaults++;
    }
    return 0;
}

/* ---- ACME: the acme group and tls.acme names (master/acme.c) ---- */

/* A DNS name ACME can validate by HTTP-01 or TLS-ALPN-01: labels of
 * letters, digits and inner hyphens, 1-63 bytes, 253 in all; lowercased in
 * place. Why not, in *WHY. */
static bool lb_acme_name_ok(char *name, const char **why)
{
    size_t n = strlen(name), label = 0;
    *why = "a DNS name: labels of letters, digits and '-', separated by dots";
    if (name[0] == '*') {
        *why = "wildcard names need the DNS-01 challenge, which lbd does not do";
        return false;
    }
    if (n == 0 || n > 253 || name[0] == '.' || name[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z')
            name[i] = c = (char)(c - 'A' + 'a');
        if (c == '.') {
            if (label == 0 || name[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
        if ((c == '-' && label == 0) || ++label > 63)
            return false;
    }
    return name[n - 1] != '-';
}

/* tls.acme = [ "www.example.com", ... ]: names whose certificates lbd
 * obtains. Each becomes a certificate entry after the configured ones,
 * read from STORAGE/NAME.pem (key and chain in one file, replaced
 * atomically). */
static int lb_cfg_tls_acme(struct lb_loader *ld, const config_setting_t *g, struct lb_tls_cfg *t)
{
    const config_setting_t *s = lb_cfg_member(g, "acme");
    if (s == NULL)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_ARRAY && config_setting_type(s) != CONFIG_TYPE_LIST)
        return lb_cfg_fail(ld, s, "'acme' must be a list of names: acme = [ \"www.example.com\" ]");
    int n = config_setting_length(s);
    if (n == 0)
        return lb_cfg_fail(ld, s, "'acme' must not be empty");
    if (ld->acme == NULL)
        return lb_cfg_fail(ld, s, "tls.acme needs a top-level acme group: acme = { directory = "
                                  "\"https://...\"; storage = \"/var/lib/lbd/acme\"; };");
    if (t->ncerts + (size_t)n > LB_TLS_MAX_CERTS)
        return lb_cfg_fail(ld, s, "at most %d certificates per listener, acme names included",
                           LB_TLS_MAX_CERTS);
    t->acme = calloc((size_t)n, sizeof(*t->acme));
    struct lb_tls_cert_cfg *certs = realloc(t->certs, (t->ncerts + (size_t)n) * sizeof(*certs));
    if (certs != NULL)
        t->certs = certs;
    if (t->acme == NULL || certs == NULL)
        return lb_cfg_fail(ld, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return lb_cfg_fail(ld, e, "acme: each name must be a string");
        char *name = strdup(config_setting_get_string(e));
        if (name == NULL)
            return lb_cfg_fail(ld, e, "out of memory");
        t->acme[t->nacme++] = name;
        const char *why;
        if (!lb_acme_name_ok(name, &why))
            return lb_cfg_fail(ld, e, "acme: \"%s\" is not %s", config_setting_get_string(e), why);
        for (size_t k = 0; k + 1 < t->nacme; k++)
            if (strcmp(t->acme[k], name) == 0)
                return lb_cfg_fail(ld, e, "acme: \"%s\" named twice", name);
        struct lb_tls_cert_cfg *c = &t->certs[t->ncerts];
        memset(c, 0, sizeof(*c));
        t->ncerts++;
        c->acme_name = name;
        if (asprintf(&c->cert, "%s/%s.pem", ld->acme->storage, name) < 0) {
            c->cert = NULL;
            return lb_cfg_fail(ld, e, "out of memory");
        }
        if ((c->key = strdup(c->cert)) == NULL || (c->cert_at = lb_cfg_where(ld, e)) == NULL ||
            (c->key_at = strdup(c->cert_at)) == NULL)
            return lb_cfg_fail(ld, e, "out of memory");
    }
    return 0;
}

/* "30d", or any duration lb_duration_parse takes. */
static int lb_acme_duration(const char *s, uint64_t *ms)
{
    size_t n = strlen(s);
    if (n >= 2 && s[n - 1] == 'd') {
        char *end;
        errno = 0;
        unsigned long long d = strtoull(s, &end, 10);
        if (errno != 0 || end != s + n - 1 || s[0] < '0' || s[0] > '9' || d > 3650)
            return -1;
        *ms = d * 86400000ull;
        return 0;
    }
    return lb_duration_parse(s, ms);
}

static int lb_cfg_acme(struct lb_loader *ld, const config_setting_t *root, struct lb_config *cfg)
{
    static const char *const keys[] = { "directory", "email", "storage", "ca_file", "challenge",
                                        "renew_before", NULL };
    const config_setting_t *g = lb_cfg_member(root, "acme");
    if (g == NULL)
        return 0;
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return lb_cfg_fail(ld, g, "'acme' must be a group: acme = { directory = \"https://...\"; "
                                  "storage = \"/var/lib/lbd/acme\"; };");
    struct lb_acme_cfg *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return lb_cfg_fail(ld, g, "out of memory");
    cfg->acme = a;
    a->challenge = LB_ACME_HTTP01;
    a->renew_before_ms = 30ull * 86400000;
    const char *challenge = NULL, *renew = NULL;
    if (lb_cfg_check_keys(ld, g, "acme", keys) < 0 ||
        lb_cfg_string_at(ld, g, "directory", true, &a->directory, NULL) < 0 ||
        lb_cfg_string_at(ld, g, "email", false, &a->email, NULL) < 0 ||
        lb_cfg_string_at(ld, g, "storage", true, &a->storage, NULL) < 0 ||
        lb_cfg_string(ld, g, "challenge", &challenge, false) < 0 ||
        lb_cfg_string(ld, g, "renew_before", &renew, false) < 0)
        return -1;
    /* ca_file = "" is the default: the system's trust store. */
    const char *ca = NULL;
    if (lb_cfg_string(ld, g, "ca_file", &ca, false) < 0)
        return -1;
    if (ca != NULL && *ca != '\0' && (a->ca_file = strdup(ca)) == NULL)
        return lb_cfg_fail(ld, g, "out of memory");
    if (a->ca_file != NULL && access(a->ca_file, R_OK) < 0)
        return lb_cfg_fail(ld, lb_cfg_member(g, "ca_file"), "acme ca_file: cannot read %s: %s",
                           a->ca_file, strerror(errno));
    if (strncmp(a->directory, "https://", 8) != 0 || strlen(a->directory) <= 8)
        return lb_cfg_fail(ld, lb_cfg_member(g, "directory"),
                           "acme directory must be an https:// URL (RFC 8555), not \"%s\"",
                           a->directory);
    for (const char *c = a->directory; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f || *c == '"')
            return lb_cfg_fail(ld, lb_cfg_member(g, "directory"),
                               "acme directory: not a URL (spaces, quotes or controls)");
    if (a->email != NULL) {
        const char *at = strchr(a->email, '@');
        bool ok = at != NULL && at != a->email && at[1] != '\0' && strlen(a->email) < 200;
        for (const char *c = a->email; ok && *c; c++)
            ok = (unsigned char)*c > 0x20 && (unsigned char)*c < 0x7f && *c != '"' &&
                 *c != '\\' && *c != ',';
        if (!ok)
            return lb_cfg_fail(ld, lb_cfg_member(g, "email"),
                               "acme email \"%s\" is not an address like ops@example.com",
                               a->email);
    }
    if (a->storage[0] != '/')
        return lb_cfg_fail(ld, lb_cfg_member(g, "storage"),
                           "acme storage must be an absolute path, not \"%s\"", a->storage);
    if (strlen(a->storage) > 512)
        return lb_cfg_fail(ld, lb_cfg_member(g, "storage"), "acme storage: path too long");
    if (challenge != NULL) {
        if (strcmp(challenge, "http-01") == 0)
            a->challenge = LB_ACME_HTTP01;
        else if (strcmp(challenge, "tls-alpn-01") == 0)
            a->challenge = LB_ACME_TLSALPN01;
        else
            return lb_cfg_fail(ld, lb_cfg_member(g, "challenge"),
                               "unknown acme challenge \"%s\" (\"http-01\" or \"tls-alpn-01\")",
                               challenge);
    }
    if (renew != NULL && (lb_acme_duration(renew, &a->renew_before_ms) < 0 ||
                          a->renew_before_ms < 1000))
        return lb_cfg_fail(ld, lb_cfg_member(g, "renew_before"),
                           "acme renew_before: \"%s\" is not a duration of 1s or more "
                           "(e.g. \"30d\", \"12h\", \"75s\")", renew);
    ld->acme = a;
    return 0;
}

/* After the listeners: HTTP-01 needs a plain listener to be asked on. */
static int lb_cfg_acme_check(struct lb_loader *ld, const config_setting_t *root,
                             const struct lb_config *cfg)
{
    if (cfg->acme == NULL || cfg->acme->challenge != LB_ACME_HTTP01)
        return 0;
    bool names = false, plain = false;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        names = names || (cfg->listeners[i].tls != NULL && cfg->listeners[i].tls->nacme > 0);
        plain = plain || cfg->listeners[i].tls == NULL;
    }
    const config_setting_t *g = lb_cfg_member(root, "acme");
    const config_setting_t *at = lb_cfg_member(g, "challenge");
    if (names && !plain)
        return lb_cfg_fail(ld, at ? at : g, "acme challenge http-01 needs a plain listener (port 80) to be "
                           "answered on; add one or use challenge = \"tls-alpn-01\"");
    return 0;
}

static int lb_cfg_root(struct lb_loader *ld, const config_setting_t *root,
                       struct lb_config *cfg)
{
    static const char *const keys[] = { "workers", "shutdown_timeout", "error_log",
                                        "log_level", "pid_file", "access_log", "timeouts",
                                        "limits", "trusted_proxies", "listeners", "pools",
                                        "routes", "admin", "tcp_migrate_req",
                                        "max_connections", "rate_limits", "rate_limit_table_size",
                                        "redis", "faults", "acme", NULL };
    const char *level = NULL;
    cfg->tcp_migrate_req = true;
    cfg->shutdown_timeout_ms = LB_DEFAULT_SHUTDOWN_TIMEOUT_MS;
    cfg->log_level = LB_LOG_INFO;
    cfg->timeouts = (struct lb_timeouts){
        .client_header_ms = 30000,
        .client_body_ms = 30000,
        .client_idle_ms = 60000,
        .connect_ms = 5000,
        .backend_response_ms = 60000,
        .backend_idle_ms = 30000,
        .send_ms = 60000,
        .deadline_ms = 0,
        .tunnel_ms = 3600000,
        .drain_idle_ms = 5000,
    };
    cfg->limits = (struct lb_limits){
        .request_line = 8192,
        .header_size = 32768,
        .headers = 100,
        .body = 0,
        .buffer = 256 * 1024,
    };
    if (lb_cfg_check_keys(ld, root, "the top level", keys) < 0 ||
        lb_cfg_workers(ld, root, cfg) < 0 ||
        lb_cfg_max_connections(ld, root, cfg) < 0 ||
        lb_cfg_duration(ld, root, "shutdown_timeout", &cfg->shutdown_timeout_ms) < 0 ||
        lb_cfg_strdup(ld, root, "error_log", &cfg->error_log) < 0 ||
        lb_cfg_strdup(ld, root, "pid_file", &cfg->pid_file) < 0 ||
        lb_cfg_strdup(ld, root, "access_log", &cfg->access_log) < 0 ||
        lb_cfg_string(ld, root, "log_level", &level, false) < 0 ||
        lb_cfg_bool(ld, root, "tcp_migrate_req", &cfg->tcp_migrate_req) < 0)
        return -1;
    if (level != NULL && lb_log_level_parse(level, &cfg->log_level) < 0)
        return lb_cfg_fail(ld, lb_cfg_member(root, "log_level"),
                           "unknown log_level \"%s\" (error, warn, info, debug)", level);
    if (lb_cfg_timeouts(ld, root, &cfg->timeouts, false) < 0 ||
        lb_cfg_limits(ld, root, &cfg->limits) < 0 ||
        lb_cfg_trusted(ld, root, cfg) < 0 ||
        lb_cfg_acme(ld, root, cfg) < 0 ||
        lb_cfg_listeners(ld, root, cfg) < 0 ||
        lb_cfg_acme_check(ld, root, cfg) < 0 ||
        lb_cfg_pools(ld, root, cfg) < 0 ||
        lb_cfg_faults(ld, root, cfg) < 0 ||
        lb_cfg_redis(ld, root, cfg) < 0 ||
        lb_cfg_ratelimits(ld, root, cfg) < 0 ||
        lb_cfg_routes(ld, root, cfg) < 0 ||
        lb_cfg_admin(ld, root, cfg) < 0)
        return -1;
    return 0;
}

int lb_config_load(const char *path, struct lb_config **out, char *err, size_t errlen)
{
    struct lb_loader ld = { .path = path, .err = err, .errlen = errlen };
    config_t lc;
    int rc = -1;
    struct lb_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    config_init(&lc);

    cfg->path = realpath(path, NULL);
    if (cfg->path == NULL) {
        snprintf(err, errlen, "%s:0: cannot open: %s", path, strerror(errno));
        goto out;
    }
    /* libconfig names settings by the path it read: errors without a
     * setting use the same one, so every message names the file alike. */
    ld.path = cfg->path;
    /* @include "x.conf" is relative to the main file's directory. */
    char *dir = strdup(cfg->path);
    if (dir == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash != NULL)
        *(slash == dir ? slash + 1 : slash) = '\0';
    config_set_include_dir(&lc, dir);
    int ok = config_read_file(&lc, cfg->path);
    free(dir);
    if (!ok) {
        if (config_error_type(&lc) == CONFIG_ERR_FILE_IO)
            snprintf(err, errlen, "%s:0: cannot read file", path);
        else
            snprintf(err, errlen, "%s:%d: %s",
                     config_error_file(&lc) ? config_error_file(&lc) : path,
                     config_error_line(&lc), config_error_text(&lc));
        goto out;
    }
    if (lb_cfg_root(&ld, config_root_setting(&lc), cfg) < 0)
        goto out;
    rc = 0;
    *out = cfg;
    cfg = NULL;
out:
    config_destroy(&lc);
    lb_config_free(cfg);
    return rc;
}

void lb_config_free(struct lb_config *cfg)
{
    if (cfg == NULL)
        return;
    if (cfg->tls_free != NULL)
        cfg->tls_free(cfg);
    for (size_t i = 0; i < cfg->npools; i++) {
        free(cfg->pools[i].servers);
        free(cfg->pools[i].sticky.secret);
        free(cfg->pools[i].sticky.attrs);
        lb_cfg_pool_tls_free(cfg->pools[i].tls);
    }
    free(cfg->pools);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct lb_tls_cfg *t = cfg->listeners[i].tls;
        if (t == NULL)
            continue;
        for (size_t k = 0; k < t->ncerts; k++) {
            free(t->certs[k].cert);
            free(t->certs[k].key);
            free(t->certs[k].cert_at);
            free(t->certs[k].key_at);
        }
        free(t->certs);
        for (size_t k = 0; k < t->nacme; k++)
            free(t->acme[k]);
        free(t->acme);
        free(t->ciphers);
        free(t->ciphers_at);
        free(t->hsts);
        free(t);
    }
    free(cfg->listeners);
    if (cfg->acme != NULL) {
        free(cfg->acme->directory);
        free(cfg->acme->email);
        free(cfg->acme->storage);
        free(cfg->acme->ca_file);
        free(cfg->acme);
    }
    free(cfg->routes);
    free(cfg->rate_limits);
    free(cfg->faults);
    free(cfg->error_log);
    free(cfg->pid_file);
    free(cfg->access_log);
    free(cfg->admin_token);
    free(cfg->trusted_proxies);
    free(cfg->path);
    free(cfg);
}
