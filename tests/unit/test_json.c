/* shared/json.c: lbd's one JSON reader (the tree, and the admin API's flat
 * view of it), its string writer and base64. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/json.h"
#include "tests/unit/suites.h"

static int parse(const char *s, struct lb_json_field *f, size_t max, const char **why)
{
    *why = NULL;
    return lb_json_parse_flat(s, strlen(s), f, max, why);
}

START_TEST(test_json_tree)
{
    const char *why = NULL;
    const char *text = " {\"a\": [1, -2.5e1, \"x\\u00e9\\n\\ud83d\\ude00\"], \"b\": {\"c\": null, "
                       "\"d\": true}, \"n\": \"123\", \"big\": 9007199254740993} ";
    struct lb_json *j = lb_json_parse(text, strlen(text), &why);
    ck_assert_msg(j != NULL, "%s", why);
    const struct lb_json *a = lb_json_get(j, "a");
    ck_assert_int_eq(a->type, LB_JSON_ARRAY);
    ck_assert(lb_json_elems(a) == a->child);
    ck_assert(a->child->num == 1.0);
    ck_assert(a->child->next->num == -25.0);
    ck_assert_str_eq(lb_json_str(a->child->next->next), "x\xc3\xa9\n\xf0\x9f\x98\x80");
    const struct lb_json *d = lb_json_get(lb_json_get(j, "b"), "d");
    ck_assert_int_eq(d->type, LB_JSON_BOOL);
    ck_assert(d->boolean);
    ck_assert_int_eq(lb_json_get(lb_json_get(j, "b"), "c")->type, LB_JSON_NULL);
    ck_assert_ptr_null(lb_json_elems(lb_json_get(j, "b")));     /* not an array */
    int64_t v;
    ck_assert(lb_json_int(lb_json_get(j, "n"), &v));
    ck_assert_int_eq(v, 123);
    /* An integer past 2^53 keeps its last digit (not read through a double). */
    ck_assert(lb_json_int(lb_json_get(j, "big"), &v));
    ck_assert(v == 9007199254740993LL);
    ck_assert(!lb_json_int(lb_json_get(j, "b"), &v));
    ck_assert(!lb_json_int(lb_json_get(a, "x"), &v));
    ck_assert_ptr_null(lb_json_get(j, "missing"));
    lb_json_free(j);
    /* A \u0000 in a string value is kept with its length; in a key, refused. */
    j = lb_json_parse("[\"a\\u0000b\"]", 12, &why);
    ck_assert_ptr_nonnull(j);
    ck_assert_uint_eq(j->child->len, 3);
    char out[8];
    ck_assert(!lb_json_copy_str(j->child, out, sizeof(out)));
    lb_json_free(j);
    ck_assert_ptr_null(lb_json_parse("{\"a\\u0000\":1}", 13, &why));
}
END_TEST

/* The ACME server's answers: members found after nested values, strings
 * copied out whole or not at all. */
START_TEST(test_json_acme_answer)
{
    static const char js[] =
        "{ \"status\": \"pending\", \"expires\": \"2026-12-07T00:00:00Z\",\n"
        "  \"identifiers\": [ { \"type\": \"dns\", \"value\": \"a.example.com\" } ],\n"
        "  \"authorizations\": [ \"https://ca/authz/1\", \"https://ca/authz/2\" ],\n"
        "  \"finalize\": \"https:\\/\\/ca\\/finalize\\/1\", \"n\": 12, \"ok\": true,\n"
        "  \"challenges\": [ { \"type\": \"http-01\", \"token\": \"t1\" },\n"
        "                    { \"type\": \"tls-alpn-01\", \"token\": \"t2\", \"x\": {\"a\":[1,2]} } ],\n"
        "  \"detail\": \"quote \\\" and \\u0041\\u00e9\" }";
    const char *why;
    struct lb_json *j = lb_json_parse(js, strlen(js), &why);
    ck_assert_ptr_nonnull(j);
    char out[128];
    ck_assert(lb_json_get_str(j, "status", out, sizeof(out)));
    ck_assert_str_eq(out, "pending");
    ck_assert(lb_json_get_str(j, "finalize", out, sizeof(out)));
    ck_assert_str_eq(out, "https://ca/finalize/1");
    ck_assert(lb_json_get_str(j, "detail", out, sizeof(out)));
    ck_assert_str_eq(out, "quote \" and A\xc3\xa9");
    ck_assert(!lb_json_get_str(j, "missing", out, sizeof(out)));
    ck_assert_str_eq(out, "");
    ck_assert(!lb_json_get_str(j, "n", out, sizeof(out)));      /* not a string */
    ck_assert_str_eq(out, "");
    const struct lb_json *authz = lb_json_elems(lb_json_get(j, "authorizations"));
    ck_assert_ptr_nonnull(authz);
    ck_assert_ptr_nonnull(authz->next);
    ck_assert_ptr_null(authz->next->next);
    ck_assert(lb_json_copy_str(authz->next, out, sizeof(out)));
    ck_assert_str_eq(out, "https://ca/authz/2");
    const struct lb_json *ch = lb_json_elems(lb_json_get(j, "challenges"));
    ck_assert(lb_json_get_str(ch->next, "token", out, sizeof(out)));
    ck_assert_str_eq(out, "t2");
    /* Too small an output is refused, not truncated ("pending" needs 8). */
    ck_assert(!lb_json_get_str(j, "status", out, 7));
    ck_assert_str_eq(out, "");
    ck_assert(lb_json_get_str(j, "status", out, 8));
    lb_json_free(j);
}
END_TEST

/* Not JSON: refused by the tree parser and by the admin API's flat reader
 * alike, with a reason. */
START_TEST(test_json_malformed)
{
    static const char *const bad[] = {
        "", " ", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{\"a\":1 \"b\":2}", "{\"a\" 1}",
        "{a:1}", "{1:2}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":1e}", "{\"a\":+1}",
        "{\"a\":-}", "{\"a\":tru}", "{\"a\":nul}", "{\"a\":1}x", "{\"a\":1} x", "{\"a\":1}{",
        "{} {}", "{\"a\":\"x\ty\"}", "{\"a\":\"\x01\"}", "{\"a\":\"unterminated}", "{\"a\":\"x\\",
        "{\"a\":\"\\q\"}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}", "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"\\ud83d\"}", "{\"a\":\"\\ud83dx\"}", "{\"a\":\"\\ud83d\\u0041\"}",
        "{\"a\":\"\\ude00\"}", "{\"a\":[1,]}", "{\"a\":[1 2]}", "{\"a\":[}", "{\"a\":{\"b\"}}",
        "{\"a\":99999999999999999999999999999999999999999999999999999999999999999999}",
    };
    static const char *const bad_values[] = {   /* not objects: the tree parser's cases */
        "[1,]", "[1,]x", "[1 2]", "\"abc", "\"\\q\"", "\"\\ud800\"", "\"a\x01\"", "nul", "-",
        "[", "]", "}",
    };
    struct lb_json_field f[4];
    const char *why;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        ck_assert_msg(lb_json_parse(bad[i], strlen(bad[i]), &why) == NULL, "accepted: %s", bad[i]);
        ck_assert_ptr_nonnull(why);
        ck_assert_msg(parse(bad[i], f, 4, &why) == -1, "flat accepted: %s", bad[i]);
        ck_assert_ptr_nonnull(why);
    }
    for (size_t i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++) {
        why = NULL;
        ck_assert_msg(lb_json_parse(bad_values[i], strlen(bad_values[i]), &why) == NULL,
                      "accepted: %s", bad_values[i]);
        ck_assert_ptr_nonnull(why);
    }
    /* Deep nesting is bounded: LB_JSON_DEPTH levels, not one more. */
    char deep[2 * LB_JSON_DEPTH + 3];
    memset(deep, '[', LB_JSON_DEPTH);
    memset(deep + LB_JSON_DEPTH, ']', LB_JSON_DEPTH);
    struct lb_json *j = lb_json_parse(deep, 2 * LB_JSON_DEPTH, &why);
    ck_assert_ptr_nonnull(j);
    lb_json_free(j);
    memset(deep, '[', LB_JSON_DEPTH + 1);
    memset(deep + LB_JSON_DEPTH + 1, ']', LB_JSON_DEPTH + 1);
    ck_assert_ptr_null(lb_json_parse(deep, 2 * LB_JSON_DEPTH + 2, &why));
    ck_assert_str_eq(why, "nested too deep");
    /* The admin API's reasons, as its clients read them. */
    ck_assert_int_eq(parse("{\"a\":1}x", f, 4, &why), -1);
    ck_assert_str_eq(why, "trailing bytes after the object");
    ck_assert_int_eq(parse("{\"a\":1 \"b\":2}", f, 4, &why), -1);
    ck_assert_str_eq(why, "expected ',' or '}'");
    ck_assert_int_eq(parse("{a:1}", f, 4, &why), -1);
    ck_assert_str_eq(why, "expected a quoted key");
}
END_TEST

START_TEST(test_json_flat_values)
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
    ck_assert_int_eq(parse("{\"s\":\"a\\\"b\\\\c\\/d\\n\\u00e9\\u20ac\\ud83d\\ude00\"}", f, 2, &why), 1);
    ck_assert_str_eq(f[0].str, "a\"b\\c/d\n\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    /* A huge integer is still a number, not an integer. */
    ck_assert_int_eq(parse("{\"a\":123456789012345678901234}", f, 4, &why), 1);
    ck_assert(!f[0].integer);
}
END_TEST

static void flat_refuses(const char *s, size_t max, const char *reason)
{
    struct lb_json_field f[4];
    const char *why;
    ck_assert_msg(parse(s, f, max, &why) == -1, "accepted: %s", s);
    ck_assert_msg(why != NULL && strcmp(why, reason) == 0, "%s: %s", s, why);
}

/* JSON, but not what the admin API takes. */
START_TEST(test_json_flat_refused)
{
    flat_refuses("[]", 4, "expected a JSON object");
    flat_refuses("\"a\"", 4, "expected a JSON object");
    flat_refuses("", 4, "expected a JSON object");
    flat_refuses("{\"a\":{}}", 4, "nested objects and arrays are not accepted here");
    flat_refuses("{\"a\":[1]}", 4, "nested objects and arrays are not accepted here");
    flat_refuses("{\"b\":1,\"a\":{\"c\":[]}}", 4,
                 "nested objects and arrays are not accepted here");
    flat_refuses("{\"a\":1,\"a\":2}", 4, "duplicate key");
    flat_refuses("{\"a\":1,\"b\":2,\"a\":\"x\"}", 4, "duplicate key");
    flat_refuses("{\"s\":\"\\u0000\"}", 4, "\\u0000 in a string");
    flat_refuses("{\"a\":1,\"b\":2,\"c\":3}", 2, "too many members");
    /* A key or string longer than its room. */
    char big[600];
    memset(big, 'x', sizeof(big));
    memcpy(big, "{\"s\":\"", 6);
    memcpy(big + sizeof(big) - 4, "\"}", 3);
    flat_refuses(big, 4, "string too long");
    memset(big, 'k', sizeof(big));
    big[0] = '{';
    big[1] = '"';
    memcpy(big + 2 + LB_JSON_KEY_MAX, "\":1}", 5);
    flat_refuses(big, 4, "string too long");
    big[1 + LB_JSON_KEY_MAX] = '"';          /* LB_JSON_KEY_MAX - 1 bytes: fits */
    memcpy(big + 2 + LB_JSON_KEY_MAX, ":1}", 4);
    struct lb_json_field f[1];
    const char *why;
    ck_assert_int_eq(parse(big, f, 1, &why), 1);
}
END_TEST

START_TEST(test_json_write)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(out);
    lb_json_write_string(out, "a\"b\\c\n\x01\x7f\xc3\xa9/");
    fputc(' ', out);
    lb_json_write_stringn(out, "abcdef", 3);        /* a field without its NUL */
    fputc(' ', out);
    lb_json_write_string(out, "");
    fclose(out);
    ck_assert_str_eq(buf, "\"a\\\"b\\\\c\\u000a\\u0001\\u007f\xc3\xa9/\" \"abc\" \"\"");
    /* What it writes reads back as what it was given. */
    const char *why;
    struct lb_json *j = lb_json_parse(buf, strcspn(buf, " "), &why);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(lb_json_str(j), "a\"b\\c\n\x01\x7f\xc3\xa9/");
    lb_json_free(j);
    free(buf);
}
END_TEST

START_TEST(test_json_base64)
{
    char out[64];
    ck_assert_int_eq(lb_base64_encode("/svc/web/", 9, out, sizeof(out), false), 12);
    ck_assert_str_eq(out, "L3N2Yy93ZWIv");
    ck_assert_int_eq(lb_base64_encode("/svc/web/", 9, out, 12, false), -1);   /* no room for NUL */
    ck_assert_int_eq(lb_base64_encode("\xfb\xff\xfe\x01", 4, out, sizeof(out), false), 8);
    ck_assert_str_eq(out, "+//+AQ==");
    /* base64url, unpadded (JWS). */
    ck_assert_int_eq(lb_base64_encode("", 0, out, sizeof(out), true), 0);
    ck_assert_str_eq(out, "");
    ck_assert_int_eq(lb_base64_encode("f", 1, out, sizeof(out), true), 2);
    ck_assert_str_eq(out, "Zg");
    ck_assert_int_eq(lb_base64_encode("foob", 4, out, sizeof(out), true), 6);
    ck_assert_str_eq(out, "Zm9vYg");
    ck_assert_int_eq(lb_base64_encode("\xfb\xff\xfe", 3, out, sizeof(out), true), 4);
    ck_assert_str_eq(out, "-__-");
    ck_assert_int_eq(lb_base64_encode("foob", 4, out, 7, true), 6);            /* exact room */
    ck_assert_int_eq(lb_base64_encode("foob", 4, out, 6, true), -1);
    ck_assert_int_eq(lb_base64_decode("-__-", 4, out, sizeof(out)), 3);      /* reads both */
    ck_assert(memcmp(out, "\xfb\xff\xfe", 3) == 0);
    ck_assert_int_eq(lb_base64_decode("L3N2Yy93ZWIvYQ==", 16, out, sizeof(out)), 10);
    ck_assert_str_eq(out, "/svc/web/a");
    ck_assert_int_eq(lb_base64_decode("L3N2Yy93ZWIvYQ", 14, out, sizeof(out)), 10);
    ck_assert_int_eq(lb_base64_decode("L3N*", 4, out, sizeof(out)), -1);
    ck_assert_int_eq(lb_base64_decode("L3N2Yy93ZWIvYQ==", 16, out, 5), -1);
}
END_TEST

Suite *json_suite(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("json");
    tcase_add_test(tc, test_json_tree);
    tcase_add_test(tc, test_json_acme_answer);
    tcase_add_test(tc, test_json_malformed);
    tcase_add_test(tc, test_json_flat_values);
    tcase_add_test(tc, test_json_flat_refused);
    tcase_add_test(tc, test_json_write);
    tcase_add_test(tc, test_json_base64);
    suite_add_tcase(s, tc);
    return s;
}
