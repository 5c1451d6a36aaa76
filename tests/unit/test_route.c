/* worker/route.c: Host and path-prefix matching on hand-built configs. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "worker/http.h"
#include "worker/route.h"
#include "tests/unit/suites.h"

static struct lb_route_cfg mk(enum lb_host_match m, const char *host, const char *prefix,
                              size_t pool)
{
    struct lb_route_cfg r = { .host_match = m, .pool = pool };
    snprintf(r.host, sizeof(r.host), "%s", host);
    r.host_len = strlen(host);
    snprintf(r.path_prefix, sizeof(r.path_prefix), "%s", prefix);
    r.path_len = strlen(prefix);
    return r;
}

/* The pool index doubles as the route's name: -1 when nothing matches. */
static long route_of(const struct lb_config *cfg, const char *host, const char *path)
{
    const struct lb_route_cfg *r = lb_route_match(cfg, host, host ? strlen(host) : 0,
                                                  path, strlen(path));
    if (r == NULL)
        return -1;
    ck_assert(r >= cfg->routes && r < cfg->routes + cfg->nroutes);
    return (long)r->pool;
}

/* As the proxy routes an absolute-form target: its authority is the host,
 * its path the path (RFC 9112 3.2.2). */
static long route_abs(const struct lb_config *cfg, const char *target)
{
    const char *auth, *path;
    size_t auth_len, path_len;
    ck_assert_msg(lb_http_absolute_target(target, strlen(target), &auth, &auth_len, &path, &path_len),
                  "not absolute-form: %s", target);
    const struct lb_route_cfg *r = lb_route_match(cfg, auth, auth_len, path, path_len);
    return r == NULL ? -1 : (long)r->pool;
}

#define NROUTES 8
static struct lb_route_cfg routes[NROUTES];

static void setup_routes(bool reversed)
{
    struct lb_route_cfg r[NROUTES] = {
        mk(LB_HOST_ANY, "", "/", 0),
        mk(LB_HOST_ANY, "", "/api", 1),
        mk(LB_HOST_SUFFIX, ".example.com", "/", 2),
        mk(LB_HOST_SUFFIX, ".example.com", "/api", 3),
        mk(LB_HOST_EXACT, "www.example.com", "/", 4),
        mk(LB_HOST_EXACT, "www.example.com", "/api/v2", 5),
        mk(LB_HOST_SUFFIX, ".b.example.com", "/", 6),
        mk(LB_HOST_EXACT, "[::1]", "/", 7),
    };
    for (size_t i = 0; i < NROUTES; i++)
        routes[i] = r[reversed ? NROUTES - 1 - i : i];
}

static void check_all(const struct lb_config *cfg)
{
    /* Exact host beats *.example.com beats *, whatever the prefixes. */
    ck_assert_int_eq(route_of(cfg, "www.example.com", "/"), 4);
    ck_assert_int_eq(route_of(cfg, "www.example.com", "/index.html"), 4);
    ck_assert_int_eq(route_of(cfg, "www.example.com", "/api/x"), 4);
    ck_assert_int_eq(route_of(cfg, "a.example.com", "/x"), 2);
    ck_assert_int_eq(route_of(cfg, "other.org", "/x"), 0);
    /* Longest prefix within a host. */
    ck_assert_int_eq(route_of(cfg, "www.example.com", "/api/v2"), 5);
    ck_assert_int_eq(route_of(cfg, "www.example.com", "/api/v2/users"), 5);
    ck_assert_int_eq(route_of(cfg, "www.example.com", "/api/v1"), 4);
    ck_assert_int_eq(route_of(cfg, "a.example.com", "/api/x"), 3);
    ck_assert_int_eq(route_of(cfg, "a.example.com", "/ap"), 2);
    ck_assert_int_eq(route_of(cfg, "other.org", "/api"), 1);
    ck_assert_int_eq(route_of(cfg, "other.org", "/api/x"), 1);
    ck_assert_int_eq(route_of(cfg, "other.org", "/ap"), 0);
    /* The longest suffix wins over a shorter one, before prefixes count. */
    ck_assert_int_eq(route_of(cfg, "x.b.example.com", "/api"), 6);
    ck_assert_int_eq(route_of(cfg, "b.example.com", "/api"), 3);
    /* Port and case do not matter; a trailing dot is the same name. */
    ck_assert_int_eq(route_of(cfg, "www.example.com:8080", "/"), 4);
    ck_assert_int_eq(route_of(cfg, "WWW.Example.COM", "/api/v2"), 5);
    ck_assert_int_eq(route_of(cfg, "WWW.EXAMPLE.COM:443", "/api/v2/x"), 5);
    ck_assert_int_eq(route_of(cfg, "A.Example.Com:80", "/api"), 3);
    ck_assert_int_eq(route_of(cfg, "www.example.com.", "/"), 4);
    /* *.example.com is subdomains only: not the apex, not lookalikes. */
    ck_assert_int_eq(route_of(cfg, "example.com", "/api"), 1);
    ck_assert_int_eq(route_of(cfg, "example.com", "/"), 0);
    ck_assert_int_eq(route_of(cfg, "EXAMPLE.COM:80", "/"), 0);
    ck_assert_int_eq(route_of(cfg, "badexample.com", "/"), 0);
    ck_assert_int_eq(route_of(cfg, "www.example.com.evil.org", "/"), 0);
    ck_assert_int_eq(route_of(cfg, "www.example.co", "/"), 0);
    ck_assert_int_eq(route_of(cfg, "wwww.example.com", "/"), 2);
    /* IPv6 literal with port. */
    ck_assert_int_eq(route_of(cfg, "[::1]:8080", "/"), 7);
    ck_assert_int_eq(route_of(cfg, "[::1]", "/"), 7);
    /* No Host (HTTP/1.0): only "*" routes. */
    ck_assert_int_eq(route_of(cfg, NULL, "/api"), 1);
    ck_assert_int_eq(route_of(cfg, NULL, "/"), 0);
    ck_assert_int_eq(route_of(cfg, "", "/"), 0);
    /* Absolute-form targets, split as the proxy does: on their path, and
     * on their authority as the host. */
    ck_assert_int_eq(route_abs(cfg, "http://h/api/x"), 1);
    ck_assert_int_eq(route_abs(cfg, "http://h/x"), 0);
    ck_assert_int_eq(route_abs(cfg, "http://h"), 0);
    ck_assert_int_eq(route_abs(cfg, "https://www.example.com/api/v2/x"), 5);
    ck_assert_int_eq(route_abs(cfg, "HTTP://WWW.example.com:80/api/v2"), 5);
    ck_assert_int_eq(route_abs(cfg, "http://a.example.com/api?x=1"), 3);
    /* OPTIONS *: no path matches a prefix. */
    ck_assert_int_eq(route_of(cfg, "www.example.com", "*"), -1);
}

START_TEST(test_route_precedence)
{
    struct lb_config cfg = { .routes = routes, .nroutes = NROUTES };
    setup_routes(false);
    check_all(&cfg);
}
END_TEST

START_TEST(test_route_order_independent)
{
    struct lb_config cfg = { .routes = routes, .nroutes = NROUTES };
    setup_routes(true);
    check_all(&cfg);
}
END_TEST

START_TEST(test_route_no_match)
{
    struct lb_route_cfg r[2] = {
        mk(LB_HOST_EXACT, "www.example.com", "/", 0),
        mk(LB_HOST_ANY, "", "/api", 1),
    };
    struct lb_config cfg = { .routes = r, .nroutes = 2 };
    ck_assert_int_eq(route_of(&cfg, "other.org", "/"), -1);
    ck_assert_int_eq(route_of(&cfg, "other.org", "/ap"), -1);
    ck_assert_int_eq(route_of(&cfg, "other.org", "/api"), 1);
    ck_assert_int_eq(route_of(&cfg, "www.example.com", "/x"), 0);
    ck_assert_int_eq(route_of(&cfg, NULL, "/x"), -1);

    struct lb_config empty = { .routes = r, .nroutes = 0 };
    ck_assert_int_eq(route_of(&empty, "www.example.com", "/"), -1);
}
END_TEST

START_TEST(test_route_long_host)
{
    /* A Host longer than any valid name must not overflow the
     * normalisation buffer (ASan checks); it still gets a route. */
    struct lb_route_cfg r[2] = {
        mk(LB_HOST_SUFFIX, ".example.com", "/", 0),
        mk(LB_HOST_ANY, "", "/", 1),
    };
    struct lb_config cfg = { .routes = r, .nroutes = 2 };
    char host[1024];
    memset(host, 'a', sizeof(host));
    snprintf(host + sizeof(host) - 20, 20, ".example.com");
    long got = route_of(&cfg, host, "/");
    ck_assert(got == 0 || got == 1);
}
END_TEST

Suite *route_suite(void)
{
    Suite *s = suite_create("route");
    TCase *tc = tcase_create("match");
    tcase_add_test(tc, test_route_precedence);
    tcase_add_test(tc, test_route_order_independent);
    tcase_add_test(tc, test_route_no_match);
    tcase_add_test(tc, test_route_long_host);
    suite_add_tcase(s, tc);
    return s;
}
