/* worker/sticky.c: the cookie value (against HMAC-SHA256 computed by
 * Python's hmac module with the documented input), finding lbd's cookie
 * among a request's Cookie headers, and stripping it. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/sticky.h"
#include "tests/unit/suites.h"

#define SECRET "0123456789abcdef-sticky-test-secret"

/* python3: base64.urlsafe_b64encode(hmac.new(KEY, b"lbd-sticky-v1\0" +
 * POOL + b"\0" + ADDRESS, hashlib.sha256).digest()[:12]) */
START_TEST(test_value)
{
    char v[LB_STICKY_VALUE_LEN + 1];
    ck_assert_int_eq(lb_sticky_value(SECRET, strlen(SECRET), "web", "127.0.0.1:9001", v), 0);
    ck_assert_str_eq(v, "OYaUC_uY2WCVUbxt");
    ck_assert_int_eq(lb_sticky_value(SECRET, strlen(SECRET), "web", "[::1]:9002", v), 0);
    ck_assert_str_eq(v, "LI-KAAxTkolgIr6M");
    /* Another pool, another secret: another value. */
    char w[LB_STICKY_VALUE_LEN + 1];
    ck_assert_int_eq(lb_sticky_value(SECRET, strlen(SECRET), "api", "127.0.0.1:9001", w), 0);
    ck_assert_str_ne(w, "OYaUC_uY2WCVUbxt");
    ck_assert_int_eq(lb_sticky_value("another secret!!", 16, "web", "127.0.0.1:9001", w), 0);
    ck_assert_str_ne(w, "OYaUC_uY2WCVUbxt");
}
END_TEST

/* A pool "web" of three servers, its values made by lb_sticky_config_load. */
static struct lb_server_cfg servers[3];
static struct lb_pool_cfg pool;
static struct lb_config cfg;

static void pool_setup(const char *secret)
{
    memset(servers, 0, sizeof(servers));
    memset(&pool, 0, sizeof(pool));
    snprintf(pool.name, sizeof(pool.name), "web");
    snprintf(servers[0].address, LB_ADDR_STR_MAX, "127.0.0.1:9001");
    snprintf(servers[1].address, LB_ADDR_STR_MAX, "[::1]:9002");
    snprintf(servers[2].address, LB_ADDR_STR_MAX, "10.0.0.3:80");
    pool.servers = servers;
    pool.nservers = 3;
    pool.sticky.enabled = true;
    pool.sticky.strip = true;
    snprintf(pool.sticky.cookie, sizeof(pool.sticky.cookie), "lbd_srv");
    pool.sticky.cookie_len = 7;
    pool.sticky.secret = (char *)secret;
    pool.sticky.secret_len = secret ? strlen(secret) : 0;
    cfg = (struct lb_config){ .path = (char *)"/test.conf", .pools = &pool, .npools = 1 };
    char err[256];
    ck_assert_int_eq(lb_sticky_config_load(&cfg, err, sizeof(err)), 0);
}

START_TEST(test_config_load)
{
    pool_setup(SECRET);
    ck_assert_str_eq(servers[0].sticky, "OYaUC_uY2WCVUbxt");
    ck_assert_str_eq(servers[1].sticky, "LI-KAAxTkolgIr6M");
    /* Without a secret: the fixed key, the same on every lbd. */
    pool_setup(NULL);
    ck_assert_str_eq(servers[0].sticky, "4Phkxh4-W7W1DBeN");
}
END_TEST

/* lb_sticky_find over headers NAMES[i]: VALUES[i]. */
static struct lb_http_header hdrs[8];

static const lb_sticky_value_t *find_runtime;      /* lb_sticky_find's RUNTIME */

static int find(bool strip, size_t n, const char *const *names, const char *const *values)
{
    struct lb_http_msg m = { .headers = hdrs, .nheaders = n, .max_headers = 8 };
    for (size_t i = 0; i < n; i++)
        hdrs[i] = (struct lb_http_header){ .name = names[i], .name_len = (uint32_t)strlen(names[i]),
                                           .value = values[i],
                                           .value_len = (uint32_t)strlen(values[i]) };
    return lb_sticky_find(&pool, find_runtime, &m, strip);
}

static int find1(const char *cookie)
{
    const char *names[] = { "Host", "Cookie" };
    const char *values[] = { "lbd.test", cookie };
    return find(true, 2, names, values);
}

START_TEST(test_find)
{
    pool_setup(SECRET);
    char c[128];
    ck_assert_int_eq(find1("a=1"), LB_STICKY_NO_COOKIE);
    ck_assert_int_eq(find1(""), LB_STICKY_NO_COOKIE);
    ck_assert(!(hdrs[1].flags & LB_HDR_STICKY));
    snprintf(c, sizeof(c), "lbd_srv=%s", servers[1].sticky);
    ck_assert_int_eq(find1(c), 1);
    ck_assert(hdrs[1].flags & LB_HDR_STICKY);
    ck_assert(!(hdrs[0].flags & LB_HDR_STICKY));
    snprintf(c, sizeof(c), "a=1;  lbd_srv=%s ;b=2", servers[2].sticky);
    ck_assert_int_eq(find1(c), 2);
    snprintf(c, sizeof(c), "lbd_srv=\"%s\"", servers[0].sticky);
    ck_assert_int_eq(find1(c), 0);                  /* quoted */
    snprintf(c, sizeof(c), "lbd_srv=forged; lbd_srv=%s", servers[2].sticky);
    ck_assert_int_eq(find1(c), 2);                  /* the first valid one */
    snprintf(c, sizeof(c), "lbd_srv=%s; lbd_srv=%s", servers[1].sticky, servers[2].sticky);
    ck_assert_int_eq(find1(c), 1);
    ck_assert_int_eq(find1("lbd_srv=forged"), LB_STICKY_BAD_COOKIE);
    ck_assert(hdrs[1].flags & LB_HDR_STICKY);       /* stripped all the same */
    ck_assert_int_eq(find1("lbd_srv="), LB_STICKY_BAD_COOKIE);
    ck_assert_int_eq(find1("lbd_srv=AAAAAAAAAAAAAAAA"), LB_STICKY_BAD_COOKIE);
    snprintf(c, sizeof(c), "lbd_srv=%.15s", servers[1].sticky);
    ck_assert_int_eq(find1(c), LB_STICKY_BAD_COOKIE);
    snprintf(c, sizeof(c), "lbd_srv=%sX", servers[1].sticky);
    ck_assert_int_eq(find1(c), LB_STICKY_BAD_COOKIE);
    /* Names are case-sensitive and whole; other cookies' values are not ours. */
    snprintf(c, sizeof(c), "LBD_SRV=%s; lbd_srvx=%s; x=lbd_srv=%s; lbd_srv", servers[1].sticky,
             servers[1].sticky, servers[1].sticky);
    ck_assert_int_eq(find1(c), LB_STICKY_NO_COOKIE);
    ck_assert(!(hdrs[1].flags & LB_HDR_STICKY));

    /* Several Cookie headers (any case): each that holds ours is marked. */
    char c2[128];
    snprintf(c2, sizeof(c2), "b=2; lbd_srv=%s", servers[0].sticky);
    const char *names[] = { "cookie", "Accept", "COOKIE", "Cookie" };
    const char *values[] = { "a=1", "lbd_srv=x", c2, "lbd_srv=forged" };
    ck_assert_int_eq(find(true, 4, names, values), 0);
    ck_assert_uint_eq(hdrs[0].flags | hdrs[1].flags, 0);
    ck_assert(hdrs[2].flags & LB_HDR_STICKY);
    ck_assert(hdrs[3].flags & LB_HDR_STICKY);
    /* Without strip nothing is marked. */
    ck_assert_int_eq(find(false, 4, names, values), 0);
    ck_assert_uint_eq(hdrs[2].flags | hdrs[3].flags, 0);
}
END_TEST

static const char *strip(const char *v)
{
    static char out[256];
    size_t n = lb_sticky_strip(&pool.sticky, v, strlen(v), out);
    ck_assert_uint_le(n, strlen(v));
    out[n] = '\0';
    return out;
}

/* A pool whose third server is a runtime slot: no value from the file's
 * load; the worker's value for the server it holds names it, the same
 * as a static server's of that address; none while the slot is empty. */
START_TEST(test_runtime_slot)
{
    char c[128];
    lb_sticky_value_t rt[1];
    pool_setup(SECRET);
    char static_value[LB_STICKY_VALUE_LEN + 1];
    memcpy(static_value, servers[2].sticky, sizeof(static_value));
    servers[2].runtime = true;
    snprintf(servers[2].address, LB_ADDR_STR_MAX, "runtime#0");
    pool.nstatic = 2;
    char err[256];
    ck_assert_int_eq(lb_sticky_config_load(&cfg, err, sizeof(err)), 0);
    ck_assert_str_eq(servers[2].sticky, "");
    ck_assert_int_eq(lb_sticky_server_value(&pool, "10.0.0.3:80", rt[0]), 0);
    ck_assert_str_eq(rt[0], static_value);
    find_runtime = rt;
    snprintf(c, sizeof(c), "lbd_srv=%s", rt[0]);
    ck_assert_int_eq(find1(c), 2);
    snprintf(c, sizeof(c), "lbd_srv=%s", servers[0].sticky);
    ck_assert_int_eq(find1(c), 0);
    rt[0][0] = '\0';
    snprintf(c, sizeof(c), "lbd_srv=%s", static_value);
    ck_assert_int_eq(find1(c), LB_STICKY_BAD_COOKIE);
    find_runtime = NULL;
    ck_assert_int_eq(find1(c), LB_STICKY_BAD_COOKIE);
}
END_TEST

START_TEST(test_strip)
{
    pool_setup(SECRET);
    ck_assert_str_eq(strip("lbd_srv=x"), "");
    ck_assert_str_eq(strip("a=1; lbd_srv=x; b=2"), "a=1; b=2");
    ck_assert_str_eq(strip("a=1;lbd_srv=x;b=2"), "a=1;b=2");
    ck_assert_str_eq(strip("lbd_srv=x; a=1"), "a=1");
    ck_assert_str_eq(strip("a=1; lbd_srv=x"), "a=1");
    ck_assert_str_eq(strip("lbd_srv=x;lbd_srv=y; a=1 ;lbd_srv=z"), "a=1");
    ck_assert_str_eq(strip("x=lbd_srv; lbd_srvx=1; LBD_SRV=2; lbd_srv"),
                     "x=lbd_srv; lbd_srvx=1; LBD_SRV=2; lbd_srv");
    ck_assert_str_eq(strip("a=1;;  ; b=2; lbd_srv=\"q\""), "a=1; b=2");
    /* Never longer than what came: separators as the client wrote them. */
    ck_assert_str_eq(strip("a=1;b=2;c=3;d=4;lbd_srv=x"), "a=1;b=2;c=3;d=4");
}
END_TEST

Suite *sticky_suite(void)
{
    Suite *s = suite_create("sticky");
    TCase *tc = tcase_create("sticky");
    tcase_add_test(tc, test_value);
    tcase_add_test(tc, test_config_load);
    tcase_add_test(tc, test_find);
    tcase_add_test(tc, test_strip);
    tcase_add_test(tc, test_runtime_slot);
    suite_add_tcase(s, tc);
    return s;
}
