/* shared/util.c: durations, socket addresses, string helpers; shared/log.c's
 * rate limit. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "shared/log.h"
#include "shared/util.h"
#include "tests/unit/suites.h"

/* ---- lb_duration_parse ---------------------------------------------------- */

START_TEST(test_duration_units)
{
    static const struct { const char *s; uint64_t ms; } ok[] = {
        { "0", 0 },
        { "00", 0 },
        { "0ms", 0 },
        { "0s", 0 },
        { "1ms", 1 },
        { "250ms", 250 },
        { "1s", 1000 },
        { "2s", 2000 },
        { "90s", 90000 },
        { "1m", 60000 },
        { "15m", 900000 },
        { "1h", 3600000 },
        { "24h", 86400000 },
        { "18446744073709551615ms", UINT64_MAX },
        { "5124095576030h", 5124095576030ULL * 3600000ULL },
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(ok); i++) {
        uint64_t ms = 12345;
        ck_assert_msg(lb_duration_parse(ok[i].s, &ms) == 0, "\"%s\" refused", ok[i].s);
        ck_assert_msg(ms == ok[i].ms, "\"%s\" gave %llu, want %llu", ok[i].s,
                      (unsigned long long)ms, (unsigned long long)ok[i].ms);
    }
}
END_TEST

START_TEST(test_duration_rejects)
{
    static const char *const bad[] = {
        /* bare numbers: a unit is required */
        "1", "10", "30", "1000",
        /* junk */
        "", "ms", "s", "m", "h", "x", "1x", "1d", "1sec", "1mss", "1ms2", "1S", "1MS",
        "5 s", " 1s", "1s ", "+1s", "-1s", "-0", "1.5s", "0x10s", "1e3ms", "s1",
        /* overflow: of strtoull, and of the unit multiplication */
        "18446744073709551616ms", "99999999999999999999999s",
        "18446744073709551615s", "5124095576031h", "307445734561825861m",
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(bad); i++) {
        uint64_t ms = 0;
        ck_assert_msg(lb_duration_parse(bad[i], &ms) == -1, "\"%s\" accepted (%llu ms)",
                      bad[i], (unsigned long long)ms);
    }
    uint64_t ms = 0;
    ck_assert_int_eq(lb_duration_parse(NULL, &ms), -1);
}
END_TEST

/* ---- lb_size_parse ----------------------------------------------------------- */

START_TEST(test_size_parse)
{
    static const struct { const char *s; uint64_t bytes; } ok[] = {
        { "0", 0 }, { "1", 1 }, { "8192", 8192 }, { "1k", 1024 }, { "64k", 65536 },
        { "64K", 65536 }, { "1m", 1048576 }, { "3M", 3145728 }, { "2g", 2147483648ULL },
        { "0k", 0 }, { "18446744073709551615", UINT64_MAX },
        { "17179869183g", 17179869183ULL << 30 },
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(ok); i++) {
        uint64_t v = 12345;
        ck_assert_msg(lb_size_parse(ok[i].s, &v) == 0, "\"%s\" refused", ok[i].s);
        ck_assert_msg(v == ok[i].bytes, "\"%s\" gave %llu", ok[i].s, (unsigned long long)v);
    }
    static const char *const bad[] = {
        "", "k", "-1", "+1", " 1", "1 k", "1kb", "1K ", "1.5k", "1t", "1b", "0x10", "1e3",
        "18446744073709551616", "17179869184g", "18014398509481984k",
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(bad); i++) {
        uint64_t v = 0;
        ck_assert_msg(lb_size_parse(bad[i], &v) == -1, "\"%s\" accepted", bad[i]);
    }
    uint64_t v;
    ck_assert_int_eq(lb_size_parse(NULL, &v), -1);
}
END_TEST

/* ---- lb_addr_parse / lb_addr_format --------------------------------------- */

static void roundtrip(const char *in, bool wildcard, const char *canon, int family, unsigned port)
{
    struct lb_addr a;
    const char *why = NULL;
    ck_assert_msg(lb_addr_parse(in, wildcard, &a, &why) == 0, "\"%s\" refused: %s", in,
                  why ? why : "(no reason)");
    const struct sockaddr *sa = (const struct sockaddr *)&a.ss;
    ck_assert_int_eq(sa->sa_family, family);
    if (family == AF_INET) {
        ck_assert_uint_eq(a.len, sizeof(struct sockaddr_in));
        ck_assert_uint_eq(ntohs(((const struct sockaddr_in *)sa)->sin_port), port);
    } else {
        ck_assert_uint_eq(a.len, sizeof(struct sockaddr_in6));
        ck_assert_uint_eq(ntohs(((const struct sockaddr_in6 *)sa)->sin6_port), port);
    }
    char buf[64];
    lb_addr_format(&a, buf, sizeof(buf));
    ck_assert_str_eq(buf, canon);

    /* The canonical form parses back to the same address. */
    struct lb_addr b;
    ck_assert_msg(lb_addr_parse(buf, wildcard, &b, &why) == 0, "canonical \"%s\" refused", buf);
    ck_assert(lb_addr_equal(&a, &b));
    char buf2[64];
    lb_addr_format(&b, buf2, sizeof(buf2));
    ck_assert_str_eq(buf2, canon);
}

START_TEST(test_addr_ipv4)
{
    roundtrip("127.0.0.1:8080", false, "127.0.0.1:8080", AF_INET, 8080);
    roundtrip("10.1.2.3:1", false, "10.1.2.3:1", AF_INET, 1);
    roundtrip("192.168.0.1:65535", false, "192.168.0.1:65535", AF_INET, 65535);
    roundtrip("127.0.0.1:080", false, "127.0.0.1:80", AF_INET, 80);

    struct lb_addr a;
    const char *why = NULL;
    ck_assert_int_eq(lb_addr_parse("1.2.3.4:80", false, &a, &why), 0);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.ss;
    ck_assert_uint_eq(ntohl(sin->sin_addr.s_addr), 0x01020304u);
}
END_TEST

START_TEST(test_addr_ipv6)
{
    roundtrip("[::1]:80", false, "[::1]:80", AF_INET6, 80);
    roundtrip("[::1]:8443", true, "[::1]:8443", AF_INET6, 8443);
    roundtrip("[2001:DB8:0:0::1]:443", false, "[2001:db8::1]:443", AF_INET6, 443);
    roundtrip("[fe80::1:2]:65535", false, "[fe80::1:2]:65535", AF_INET6, 65535);

    struct lb_addr a;
    const char *why = NULL;
    ck_assert_int_eq(lb_addr_parse("[::1]:80", false, &a, &why), 0);
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a.ss;
    ck_assert(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
}
END_TEST

START_TEST(test_addr_wildcard)
{
    roundtrip("*:80", true, "0.0.0.0:80", AF_INET, 80);
    roundtrip("0.0.0.0:8080", true, "0.0.0.0:8080", AF_INET, 8080);
    roundtrip("[::]:80", true, "[::]:80", AF_INET6, 80);

    static const char *const wild[] = { "*:80", "0.0.0.0:80", "[::]:80", "[0:0::0]:80", ":80" };
    for (size_t i = 0; i < LB_ARRAY_SIZE(wild); i++) {
        struct lb_addr a;
        const char *why = NULL;
        ck_assert_msg(lb_addr_parse(wild[i], false, &a, &why) == -1,
                      "wildcard \"%s\" accepted where refused", wild[i]);
        ck_assert_ptr_nonnull(why);
        ck_assert_msg(strstr(why, "wildcard") != NULL, "\"%s\": %s", wild[i], why);
    }
}
END_TEST

START_TEST(test_addr_localhost)
{
    roundtrip("localhost:80", false, "127.0.0.1:80", AF_INET, 80);
    roundtrip("localhost:9001", true, "127.0.0.1:9001", AF_INET, 9001);
}
END_TEST

START_TEST(test_addr_equal)
{
    struct lb_addr a, b, c, d;
    const char *why;
    ck_assert_int_eq(lb_addr_parse("localhost:80", false, &a, &why), 0);
    ck_assert_int_eq(lb_addr_parse("127.0.0.1:80", false, &b, &why), 0);
    ck_assert_int_eq(lb_addr_parse("127.0.0.1:81", false, &c, &why), 0);
    ck_assert_int_eq(lb_addr_parse("[::1]:80", false, &d, &why), 0);
    ck_assert(lb_addr_equal(&a, &b));
    ck_assert(!lb_addr_equal(&a, &c));
    ck_assert(!lb_addr_equal(&a, &d));
    ck_assert(!lb_addr_equal(&d, &a));
}
END_TEST

START_TEST(test_addr_errors)
{
    static const struct { const char *s; const char *why; } bad[] = {
        { "", "host:port" },
        { "127.0.0.1", "host:port" },
        { "nonsense", "host:port" },
        { "127.0.0.1:", "port" },
        { "127.0.0.1:0", "port" },
        { "127.0.0.1:00", "port" },
        { "127.0.0.1:65536", "port" },
        { "127.0.0.1:99999", "port" },
        { "127.0.0.1:999999999999999999999", "port" },
        { "127.0.0.1:8o", "port" },
        { "127.0.0.1:-1", "port" },
        { "127.0.0.1:+80", "port" },
        { "127.0.0.1: 80", "port" },
        { "nonsense:80", "IPv4" },
        { "example.com:80", "IPv4" },
        { "256.0.0.1:80", "IPv4" },
        { "1.2.3:80", "IPv4" },
        { " 127.0.0.1:80", "IPv4" },
        { "::1:80", "bracketed" },
        { "::1", "bracketed" },
        { "[::1]", "[IPv6]:port" },
        { "[::1]80", "[IPv6]:port" },
        { "[::1:80", "[IPv6]:port" },
        { "[::1]:", "port" },
        { "[::1]:0", "port" },
        { "[::1]:65536", "port" },
        { "[127.0.0.1]:80", "IPv6" },
        { "[nonsense]:80", "IPv6" },
        { "[]:80", "IPv6" },
        { "[localhost]:80", "IPv6" },
        { "1111111111222222222233333333334444444444555555555566666666667777:80", "too long" },
        { "[1111111111222222222233333333334444444444555555555566666666667777]:80", "too long" },
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(bad); i++) {
        for (int wc = 0; wc < 2; wc++) {
            struct lb_addr a;
            const char *why = NULL;
            ck_assert_msg(lb_addr_parse(bad[i].s, wc, &a, &why) == -1, "\"%s\" accepted", bad[i].s);
            ck_assert_msg(why != NULL, "\"%s\": no reason", bad[i].s);
            ck_assert_msg(strstr(why, bad[i].why) != NULL, "\"%s\": reason \"%s\", want \"%s\"",
                          bad[i].s, why, bad[i].why);
        }
    }
}
END_TEST

START_TEST(test_addr_format_host)
{
    struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
    char buf[64];
    ck_assert_int_eq(inet_pton(AF_INET6, "::ffff:192.0.2.7", &sin6.sin6_addr), 1);
    lb_addr_format_host((const struct sockaddr *)&sin6, buf, sizeof(buf));
    ck_assert_str_eq(buf, "192.0.2.7");
    ck_assert_int_eq(inet_pton(AF_INET6, "2001:db8::7", &sin6.sin6_addr), 1);
    lb_addr_format_host((const struct sockaddr *)&sin6, buf, sizeof(buf));
    ck_assert_str_eq(buf, "2001:db8::7");
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
    lb_addr_format_host((const struct sockaddr *)&sin, buf, sizeof(buf));
    ck_assert_str_eq(buf, "127.0.0.1");
}
END_TEST

/* ---- strings, hashing, clocks ---------------------------------------------- */

START_TEST(test_str_ieq)
{
    ck_assert(lb_str_ieq("host", 4, "host"));
    ck_assert(lb_str_ieq("Host", 4, "host"));
    ck_assert(lb_str_ieq("HOST", 4, "host"));
    ck_assert(lb_str_ieq("Content-Length", 14, "content-length"));
    ck_assert(lb_str_ieq("X-Forwarded-For", 15, "x-forwarded-for"));
    /* Counted: the bytes after LEN do not matter. */
    ck_assert(lb_str_ieq("Host: example.com", 4, "host"));
    ck_assert(lb_str_ieq("", 0, ""));
    ck_assert(lb_str_ieq("abc", 0, ""));

    ck_assert(!lb_str_ieq("Hos", 3, "host"));
    ck_assert(!lb_str_ieq("Hosts", 5, "host"));
    ck_assert(!lb_str_ieq("Host", 4, "hosts"));
    ck_assert(!lb_str_ieq("Hist", 4, "host"));
    ck_assert(!lb_str_ieq("", 0, "host"));
    ck_assert(!lb_str_ieq("a", 1, ""));
    /* Only ASCII letters fold: '@' (0x40) is not '`' (0x60), '[' is not '{'. */
    ck_assert(!lb_str_ieq("@", 1, "`"));
    ck_assert(!lb_str_ieq("[", 1, "{"));
    ck_assert(!lb_str_ieq("a\0b", 3, "a"));
}
END_TEST

START_TEST(test_hash64)
{
    /* FNV-1a 64 reference values. */
    ck_assert_uint_eq(lb_hash64("", 0), 0xcbf29ce484222325ULL);
    ck_assert_uint_eq(lb_hash64("a", 1), 0xaf63dc4c8601ec8cULL);
    ck_assert_uint_eq(lb_hash64("foobar", 6), 0x85944171f73967e8ULL);
}
END_TEST

START_TEST(test_clocks)
{
    uint64_t a = lb_now_ms(), b = lb_now_ms();
    ck_assert_uint_ge(b, a);
    /* After 2020-01-01. */
    ck_assert_uint_gt(lb_wall_ms(), 1577836800000ULL);
}
END_TEST

/* ---- lb_log_limit_hit -------------------------------------------------------- */

START_TEST(test_log_limit)
{
    struct lb_log_limit l = { 0 };
    uint64_t n = 0;
    /* The first event is logged at once, even at clock 0. */
    ck_assert(lb_log_limit_hit(&l, 0, &n));
    ck_assert_uint_eq(n, 1);
    /* Then one line a second at most, saying how many events it stands for. */
    for (uint64_t t = 1; t < 1000; t += 10)
        ck_assert(!lb_log_limit_hit(&l, t, &n));
    ck_assert(lb_log_limit_hit(&l, 1000, &n));
    ck_assert_uint_eq(n, 101);
    ck_assert(!lb_log_limit_hit(&l, 1999, &n));
    ck_assert(lb_log_limit_hit(&l, 5000, &n));
    ck_assert_uint_eq(n, 2);
}
END_TEST

Suite *util_suite(void)
{
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("duration");
    tcase_add_test(tc, test_duration_units);
    tcase_add_test(tc, test_duration_rejects);
    tcase_add_test(tc, test_size_parse);
    suite_add_tcase(s, tc);

    tc = tcase_create("addr");
    tcase_add_test(tc, test_addr_ipv4);
    tcase_add_test(tc, test_addr_ipv6);
    tcase_add_test(tc, test_addr_wildcard);
    tcase_add_test(tc, test_addr_localhost);
    tcase_add_test(tc, test_addr_equal);
    tcase_add_test(tc, test_addr_errors);
    tcase_add_test(tc, test_addr_format_host);
    suite_add_tcase(s, tc);

    tc = tcase_create("misc");
    tcase_add_test(tc, test_str_ieq);
    tcase_add_test(tc, test_hash64);
    tcase_add_test(tc, test_clocks);
    tcase_add_test(tc, test_log_limit);
    suite_add_tcase(s, tc);
    return s;
}
