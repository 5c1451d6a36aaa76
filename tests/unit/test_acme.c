/* The ACME client's helpers: its JSON reader (master/json.c) and JWS
 * (master/jws.c); the protocol itself is tested against pebble
 * (tests/e2e/test_acme.py). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "master/jsontok.h"
#include "master/jws.h"
#include "tests/unit/suites.h"

START_TEST(test_json_order)
{
    static const char js[] =
        "{ \"status\": \"pending\", \"expires\": \"2026-12-07T00:00:00Z\",\n"
        "  \"identifiers\": [ { \"type\": \"dns\", \"value\": \"a.example.com\" } ],\n"
        "  \"authorizations\": [ \"https://ca/authz/1\", \"https://ca/authz/2\" ],\n"
        "  \"finalize\": \"https:\\/\\/ca\\/finalize\\/1\", \"n\": 12, \"ok\": true,\n"
        "  \"challenges\": [ { \"type\": \"http-01\", \"token\": \"t1\" },\n"
        "                    { \"type\": \"tls-alpn-01\", \"token\": \"t2\", \"x\": {\"a\":[1,2]} } ],\n"
        "  \"detail\": \"quote \\\" and \\u0041\\u00e9\" }";
    struct lb_jsontok toks[64];
    int n = lb_jsontok_parse(js, strlen(js), toks, 64);
    ck_assert_int_gt(n, 0);
    char out[128];
    ck_assert(lb_jsontok_get_str(js, toks, n, 0, "status", out, sizeof(out)));
    ck_assert_str_eq(out, "pending");
    ck_assert(lb_jsontok_get_str(js, toks, n, 0, "finalize", out, sizeof(out)));
    ck_assert_str_eq(out, "https://ca/finalize/1");
    ck_assert(lb_jsontok_get_str(js, toks, n, 0, "detail", out, sizeof(out)));
    ck_assert_str_eq(out, "quote \" and A?");
    ck_assert(!lb_jsontok_get_str(js, toks, n, 0, "missing", out, sizeof(out)));
    ck_assert_str_eq(out, "");
    ck_assert(!lb_jsontok_get_str(js, toks, n, 0, "n", out, sizeof(out)));     /* not a string */
    int authz = lb_jsontok_get(js, toks, n, 0, "authorizations");
    ck_assert_int_eq(toks[authz].children, 2);
    ck_assert(lb_jsontok_str(js, toks, n, lb_jsontok_elem(toks, n, authz, 1), out, sizeof(out)));
    ck_assert_str_eq(out, "https://ca/authz/2");
    ck_assert_int_eq(lb_jsontok_elem(toks, n, authz, 2), -1);
    /* Members after nested values are found (skipping counts right). */
    int ch = lb_jsontok_get(js, toks, n, 0, "challenges");
    int second = lb_jsontok_elem(toks, n, ch, 1);
    ck_assert(lb_jsontok_get_str(js, toks, n, second, "token", out, sizeof(out)));
    ck_assert_str_eq(out, "t2");
    /* Too small an output is refused, not truncated. */
    ck_assert(!lb_jsontok_get_str(js, toks, n, 0, "status", out, 4));
}
END_TEST

START_TEST(test_json_malformed)
{
    static const char *const bad[] = { "", "{", "{\"a\"}", "{\"a\":}", "[1,]x", "{\"a\":1,}",
                                       "\"abc", "[1 2]", "{\"a\":\"\x01\"}", "{} {}", NULL };
    struct lb_jsontok toks[16];
    for (int i = 0; bad[i] != NULL; i++)
        ck_assert_msg(lb_jsontok_parse(bad[i], strlen(bad[i]), toks, 16) < 0, "accepted %s", bad[i]);
    /* More tokens than room: refused. */
    ck_assert_int_lt(lb_jsontok_parse("[1,2,3,4]", 9, toks, 3), 0);
    /* Deep nesting is bounded. */
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    struct lb_jsontok many[128];
    ck_assert_int_lt(lb_jsontok_parse(deep, 200, many, 128), 0);
}
END_TEST

START_TEST(test_b64url)
{
    char out[32];
    lb_jws_b64url((const unsigned char *)"", 0, out);
    ck_assert_str_eq(out, "");
    lb_jws_b64url((const unsigned char *)"f", 1, out);
    ck_assert_str_eq(out, "Zg");
    lb_jws_b64url((const unsigned char *)"foob", 4, out);
    ck_assert_str_eq(out, "Zm9vYg");
    lb_jws_b64url((const unsigned char *)"\xfb\xff\xfe", 3, out);
    ck_assert_str_eq(out, "-__-");
}
END_TEST

/* Verify JWS's ES256 signature over "protected.payload" with KEY. */
static bool es256_ok(EVP_PKEY *key, const char *jws)
{
    char p[512], y[512], sig[128];
    if (sscanf(jws, "{\"protected\":\"%511[^\"]\",\"payload\":\"%511[^\"]\",\"signature\":\"%127[^\"]\"}",
               p, y, sig) != 3)
        return false;
    /* base64url back to r || s. */
    unsigned char raw[64];
    size_t n = 0;
    unsigned v = 0, bits = 0;
    for (const char *c = sig; *c; c++) {
        const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        v = (v << 6) | (unsigned)(strchr(tab, *c) - tab);
        bits += 6;
        if (bits >= 8 && n < sizeof(raw)) {
            raw[n++] = (unsigned char)(v >> (bits - 8));
            bits -= 8;
        }
    }
    if (n != 64)
        return false;
    ECDSA_SIG *s = ECDSA_SIG_new();
    ECDSA_SIG_set0(s, BN_bin2bn(raw, 32, NULL), BN_bin2bn(raw + 32, 32, NULL));
    unsigned char *der = NULL;
    int dlen = i2d_ECDSA_SIG(s, &der);
    char input[1100];
    snprintf(input, sizeof(input), "%s.%s", p, y);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
              EVP_DigestVerify(md, der, (size_t)dlen, (const unsigned char *)input,
                               strlen(input)) == 1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ECDSA_SIG_free(s);
    return ok;
}

START_TEST(test_jws_key_and_signature)
{
    char dir[] = "/tmp/lbd-unit-jws-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[128], err[256];
    snprintf(path, sizeof(path), "%s/account.key", dir);
    /* Created once, 0600; loaded the same next time. */
    EVP_PKEY *k = lb_jws_key_load(path, err, sizeof(err));
    ck_assert_msg(k != NULL, "%s", err);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    EVP_PKEY *again = lb_jws_key_load(path, err, sizeof(err));
    ck_assert_ptr_nonnull(again);
    char jwk[256], jwk2[256], thumb[64], thumb2[64];
    ck_assert_int_eq(lb_jws_jwk(k, jwk, sizeof(jwk)), 0);
    ck_assert_int_eq(lb_jws_jwk(again, jwk2, sizeof(jwk2)), 0);
    ck_assert_str_eq(jwk, jwk2);
    static const char prefix[] = "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"";
    ck_assert(strncmp(jwk, prefix, sizeof(prefix) - 1) == 0);
    ck_assert_int_eq(lb_jws_thumbprint(jwk, thumb), 0);
    ck_assert_int_eq(lb_jws_thumbprint(jwk2, thumb2), 0);
    ck_assert_str_eq(thumb, thumb2);
    ck_assert_uint_eq(strlen(thumb), 43);
    /* A signature that verifies with the public key. */
    char *jws = lb_jws_sign(k, "{\"alg\":\"ES256\",\"nonce\":\"n\",\"url\":\"u\"}", "{}");
    ck_assert_ptr_nonnull(jws);
    ck_assert(es256_ok(again, jws));
    free(jws);
    /* Not a key: an error, the file left alone. */
    FILE *f = fopen(path, "w");
    fputs("not a key\n", f);
    fclose(f);
    ck_assert_ptr_null(lb_jws_key_load(path, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "not a P-256 private key"));
    EVP_PKEY_free(k);
    EVP_PKEY_free(again);
    unlink(path);
    rmdir(dir);
}
END_TEST

Suite *acme_suite(void)
{
    Suite *s = suite_create("acme");
    TCase *tc = tcase_create("helpers");
    tcase_add_test(tc, test_json_order);
    tcase_add_test(tc, test_json_malformed);
    tcase_add_test(tc, test_b64url);
    tcase_add_test(tc, test_jws_key_and_signature);
    suite_add_tcase(s, tc);
    return s;
}
