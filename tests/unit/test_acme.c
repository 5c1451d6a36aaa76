/* The ACME client's helpers: JWS (master/jws.c; its JSON reader and
 * base64url are shared/json.c, tested in test_json.c); the protocol itself is tested against pebble
 * (tests/e2e/test_acme.py). */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "master/jws.h"
#include "shared/json.h"
#include "tests/unit/suites.h"

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

/* The header's kid, nonce and url come from the server: a quote or a
 * backslash in them must stay inside their strings. */
START_TEST(test_jws_protected_escapes)
{
    static const char url[] = "https://ca.test/acme/\"a\\b\"/order?x=\"}";
    static const char kid[] = "https://ca.test/acct/1\",\"url\":\"https://evil\\";
    char *p = lb_jws_protected(kid, "{}", "n\"1", url);
    ck_assert_ptr_nonnull(p);
    const char *why = NULL;
    struct lb_json *j = lb_json_parse(p, strlen(p), &why);
    ck_assert_msg(j != NULL, "not JSON (%s): %s", why ? why : "?", p);
    ck_assert_str_eq(lb_json_str(lb_json_get(j, "alg")), "ES256");
    ck_assert_str_eq(lb_json_str(lb_json_get(j, "kid")), kid);
    ck_assert_str_eq(lb_json_str(lb_json_get(j, "nonce")), "n\"1");
    ck_assert_str_eq(lb_json_str(lb_json_get(j, "url")), url);
    ck_assert_ptr_null(lb_json_get(j, "jwk"));
    lb_json_free(j);
    free(p);
    /* No kid yet (newAccount): the JWK, as JSON. */
    p = lb_jws_protected("", "{\"kty\":\"EC\"}", "n", url);
    ck_assert_ptr_nonnull(p);
    j = lb_json_parse(p, strlen(p), &why);
    ck_assert_msg(j != NULL, "not JSON (%s): %s", why ? why : "?", p);
    ck_assert_str_eq(lb_json_str(lb_json_get(lb_json_get(j, "jwk"), "kty")), "EC");
    ck_assert_ptr_null(lb_json_get(j, "kid"));
    ck_assert_str_eq(lb_json_str(lb_json_get(j, "url")), url);
    lb_json_free(j);
    free(p);
}
END_TEST

Suite *acme_suite(void)
{
    Suite *s = suite_create("acme");
    TCase *tc = tcase_create("helpers");
    tcase_add_test(tc, test_jws_key_and_signature);
    tcase_add_test(tc, test_jws_protected_escapes);
    suite_add_tcase(s, tc);
    return s;
}
