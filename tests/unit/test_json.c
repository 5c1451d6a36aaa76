/* shared/json.c: the admin API's flat-object reader. */
#include <string.h>

#include "shared/json.h"
#include "tests/unit/suites.h"

static int parse(const char *s, struct lb_json_field *f, size_t max, const char **why)
{
    *why = NULL;
    return lb_json_parse_flat(s, strlen(s), f, max, why);
}

START_TEST(test_json_values)
{
    struct lb_json_field f[8];
    const char *why;
    int n = parse(" {\"weight\": 3, \"state\":\"drain\", \"on\":true, \"off\" : false,"
                  " \"x\":null, \"p\":-2.5e1}\n", f, 8, &why);
    ck_assert_int_eq(n, 6);
    const struct lb_json_field *w = lb_json_find(f, 6, "weight");
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(w->type, LB_JSON_NUMBER);
    ck_assert(w->integer);
    ck_assert_int_eq(w->i, 3);
    ck_assert_str_eq(lb_json_find(f, 6, "state")->str, "drain");
    ck_assert(lb_json_find(f, 6, "on")->boolean);
    ck_assert_int_eq(lb_json_find(f, 6, "off")->type, LB_JSON_BOOL);
    ck_assert(!lb_json_find(f, 6, "off")->boolean);
    ck_assert_int_eq(lb_json_find(f, 6, "x")->type, LB_JSON_NULL);
    const struct lb_json_field *p = lb_json_find(f, 6, "p");
    ck_assert(!p->integer);
    ck_assert(p->num == -25.0);
    ck_assert_ptr_null(lb_json_find(f, 6, "nope"));
    ck_assert_int_eq(parse("{}", f, 8, &why), 0);
    ck_assert_int_eq(parse(" { } ", f, 8, &why), 0);
}
END_TEST

START_TEST(test_json_escapes)
{
    struct lb_json_field f[2];
    const char *why;
    ck_assert_int_eq(parse("{\"s\":\"a\\\"b\\\\c\\/d\\n\\u00e9\\u20ac\\ud83d\\ude00\"}", f, 2, &why), 1);
    ck_assert_str_eq(f[0].str, "a\"b\\c/d\n\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    ck_assert_int_eq(parse("{\"s\":\"\\ud83d\"}", f, 2, &why), -1);
    ck_assert_int_eq(parse("{\"s\":\"\\u0000\"}", f, 2, &why), -1);
    ck_assert_int_eq(parse("{\"s\":\"\\x\"}", f, 2, &why), -1);
}
END_TEST

START_TEST(test_json_refused)
{
    static const char *const bad[] = {
        "", "[]", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{\"a\":1 \"b\":2}",
        "{a:1}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":1e}", "{\"a\":+1}",
        "{\"a\":tru}", "{\"a\":{}}", "{\"a\":[1]}", "{\"a\":1}x", "{\"a\":1,\"a\":2}",
        "{\"a\":\"x\ty\"}", "{\"a\":\"unterminated}", "{\"a\":1}{",
        "{\"a\":99999999999999999999999999999999999999999999999999999999999999999999}",
    };
    struct lb_json_field f[4];
    const char *why;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(parse(bad[i], f, 4, &why) == -1, "accepted: %s", bad[i]);
        ck_assert_ptr_nonnull(why);
    }
    /* Too many members for the room given. */
    ck_assert_int_eq(parse("{\"a\":1,\"b\":2,\"c\":3}", f, 2, &why), -1);
    /* A key or string longer than its room. */
    char big[600];
    memset(big, 'x', sizeof(big));
    memcpy(big, "{\"s\":\"", 6);
    memcpy(big + sizeof(big) - 4, "\"}", 3);
    ck_assert_int_eq(parse(big, f, 4, &why), -1);
    /* A huge integer is still a number, not an integer. */
    ck_assert_int_eq(parse("{\"a\":123456789012345678901234}", f, 4, &why), 1);
    ck_assert(!f[0].integer);
}
END_TEST

Suite *json_suite(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("flat");
    tcase_add_test(tc, test_json_values);
    tcase_add_test(tc, test_json_escapes);
    tcase_add_test(tc, test_json_refused);
    suite_add_tcase(s, tc);
    return s;
}
