/* worker/tls.c without sockets: SNI name matching, contexts built from
 * certificate files (made here with OpenSSL, in /tmp), certificates that
 * share names and differ in key type, errors with FILE:LINE, a worker's
 * rebuild when the listener's cert_generation moves; and the ticket keys in
 * shm (shared/shm.c): rotation keeps the two previous keys. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "shared/config.h"
#include "shared/shm.h"
#include "worker/tls.h"
#include "tests/unit/suites.h"

START_TEST(test_name_match)
{
    static const struct { const char *pattern, *name; bool match; } v[] = {
        { "example.com", "example.com", true },
        { "example.com", "EXAMPLE.Com", true },
        { "example.com", "example.co", false },
        { "example.com", "www.example.com", false },
        { "*.example.com", "www.example.com", true },
        { "*.example.com", "WWW.EXAMPLE.COM", true },
        { "*.example.com", "example.com", false },          /* not the apex */
        { "*.example.com", "a.b.example.com", false },      /* one label */
        { "*.example.com", ".example.com", false },
        { "*.example.com", "wwwexample.com", false },
        { "*.example.com", "www.example.comx", false },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        ck_assert_msg(lb_tls_name_match(v[i].pattern, v[i].name, strlen(v[i].name)) == v[i].match,
                      "%s ~ %s", v[i].pattern, v[i].name);
}
END_TEST

/* A self-signed certificate for CN with the DNS names SANS (comma
 * separated), its key of KIND ("EC" or "RSA"), written to PEM and KEY.
 * DAYS may be negative (expired). */
static void make_cert(const char *cn, const char *sans, const char *kind, long days,
                      const char *pem, const char *key)
{
    EVP_PKEY *pk = strcmp(kind, "RSA") == 0 ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
                                            : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ck_assert_ptr_nonnull(pk);
    X509 *x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), days < 0 ? 2 * days * 86400 : 0);
    X509_gmtime_adj(X509_getm_notAfter(x), days * 86400);
    X509_set_pubkey(x, pk);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, n);
    if (sans != NULL) {
        char value[512];
        snprintf(value, sizeof(value), "%s", sans);
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, value);
        ck_assert_ptr_nonnull(ext);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    ck_assert(X509_sign(x, pk, EVP_sha256()) > 0);
    FILE *f = fopen(pem, "w");
    ck_assert_ptr_nonnull(f);
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(key, "w");
    ck_assert_ptr_nonnull(f);
    PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pk);
}

static char dir[64];

static void path(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

/* Write TEXT as the config, load it and its TLS. 0 or -1 (ERR). */
static int load_tls(const char *text, struct lb_config **cfg, char *err, size_t errlen)
{
    char conf[128];
    path(conf, sizeof(conf), "lbd.conf");
    FILE *f = fopen(conf, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    *cfg = NULL;
    if (lb_config_load(conf, cfg, err, errlen) < 0)
        return -1;
    if (lb_tls_config_load(*cfg, err, errlen) < 0) {
        lb_config_free(*cfg);
        *cfg = NULL;
        return -1;
    }
    return 0;
}

static void config_text(char *out, size_t len, const char *const *files, size_t n)
{
    int k = snprintf(out, len, "listeners = ( { address = \"127.0.0.1:8443\";\n"
                               "  tls = { certificates = (\n");
    for (size_t i = 0; i < n; i++)
        k += snprintf(out + k, len - (size_t)k, "    %s{ cert = \"%s/%s.pem\";\n"
                      "      key = \"%s/%s.key\"; }\n", i ? ", " : "", dir, files[i], dir,
                      files[i]);
    snprintf(out + k, len - (size_t)k, "  ); }; } );\n"
             "pools = ( { name = \"web\"; servers = ( { address = \"127.0.0.1:9001\"; } ); } );\n");
}

static void cert_files(const char *base, const char *cn, const char *sans, const char *kind,
                       long days)
{
    char pem[128], key[128], name[64];
    snprintf(name, sizeof(name), "%s.pem", base);
    path(pem, sizeof(pem), name);
    snprintf(name, sizeof(name), "%s.key", base);
    path(key, sizeof(key), name);
    make_cert(cn, sans, kind, days, pem, key);
}

/* The CN of the certificate NAME picks on T; KEYTYPE: its key's type. */
static const char *picked(const struct lb_tls_cfg *t, const char *name, int *keytype)
{
    static char cn[128];
    SSL_CTX *ctx = lb_tls_ctx_for(t, name);
    ck_assert_ptr_nonnull(ctx);
    X509 *x = SSL_CTX_get0_certificate(ctx);
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn));
    if (keytype != NULL)
        *keytype = EVP_PKEY_get_base_id(X509_get0_pubkey(x));
    return cn;
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/lbd-unit-tls-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_contexts_and_sni)
{
    cert_files("a", "a.test", "DNS:a.test,DNS:*.w.test", "EC", 1);
    cert_files("a-rsa", "a.test", "DNS:*.w.test,DNS:a.test", "RSA", 1);
    cert_files("b", "b.test", NULL, "EC", 1);           /* no SAN: its CN */
    static const char *const files[] = { "a", "a-rsa", "b" };
    char text[2048], err[512];
    config_text(text, sizeof(text), files, 3);
    struct lb_config *cfg;
    ck_assert_msg(load_tls(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    const struct lb_tls_cfg *t = cfg->listeners[0].tls;
    ck_assert_str_eq(picked(t, "a.test", NULL), "a.test");
    ck_assert_str_eq(picked(t, "B.test", NULL), "b.test");
    ck_assert_str_eq(picked(t, "x.w.test", NULL), "a.test");
    ck_assert_str_eq(picked(t, "nothing.test", NULL), "a.test");
    ck_assert_str_eq(picked(t, NULL, NULL), "a.test");
    /* The RSA certificate of the same names went into a.test's context:
     * it holds both (OpenSSL picks by what the client supports). */
    SSL_CTX *ctx = lb_tls_ctx_for(t, "a.test");
    ck_assert_int_eq(SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_FIRST), 1);
    int types = 0;
    do
        types |= EVP_PKEY_get_base_id(X509_get0_pubkey(SSL_CTX_get0_certificate(ctx))) ==
                 EVP_PKEY_RSA ? 2 : 1;
    while (SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_NEXT) == 1);
    ck_assert_int_eq(types, 3);
    ck_assert_ptr_ne(lb_tls_ctx_for(t, "b.test"), ctx);
    /* Subjects and expiry for /status. */
    ck_assert_str_eq(t->certs[0].subject, "CN=a.test");
    ck_assert_str_eq(t->certs[2].subject, "CN=b.test");
    ck_assert(t->certs[0].not_after > time(NULL) && t->certs[0].not_after < time(NULL) + 2 * 86400);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_errors)
{
    cert_files("a", "a.test", "DNS:a.test", "EC", 1);
    cert_files("b", "b.test", "DNS:b.test", "EC", 1);
    cert_files("old", "old.test", "DNS:old.test", "EC", -1);
    static const char *const a[] = { "a" }, *const old[] = { "old" }, *const missing[] = { "x" };
    char text[2048], err[512], pem[128];
    struct lb_config *cfg;
    config_text(text, sizeof(text), old, 1);
    ck_assert_int_eq(load_tls(text, &cfg, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "/lbd.conf:3: certificate ") && strstr(err, "expired"), "%s", err);
    config_text(text, sizeof(text), missing, 1);
    ck_assert_int_eq(load_tls(text, &cfg, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "/lbd.conf:3: cannot read certificate"), "%s", err);
    /* b's key with a's certificate: the key's line. */
    config_text(text, sizeof(text), a, 1);
    path(pem, sizeof(pem), "a.key");
    char *k = strstr(text, pem);
    ck_assert_ptr_nonnull(k);
    k[strlen(pem) - 5] = 'b';
    ck_assert_int_eq(load_tls(text, &cfg, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "/lbd.conf:4: key ") && strstr(err, "does not match"), "%s", err);
}
END_TEST

START_TEST(test_refresh_when_generation_moves)
{
    cert_files("a", "a.test", "DNS:a.test", "EC", 1);
    static const char *const a[] = { "a" };
    char text[2048], err[512];
    config_text(text, sizeof(text), a, 1);
    struct lb_config *cfg;
    ck_assert_msg(load_tls(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    struct lb_shm shm;
    ck_assert_int_eq(lb_shm_create(&shm), 0);
    ck_assert_int_eq(lb_shm_assign(shm.hdr, cfg, 1, err, sizeof(err)), 0);
    struct lb_tls_cfg *t = cfg->listeners[0].tls;
    struct lb_shm_tls *st = lb_shm_tls(shm.hdr, t->shm_id);
    lb_tls_worker_init(cfg, shm.hdr, lb_shm_worker(shm.hdr, 0));
    ck_assert_int_eq(lb_tls_refresh(t), 0);     /* nothing moved */
    /* New contents in the same files, and the generation moves. */
    cert_files("a", "new.test", "DNS:a.test", "EC", 1);
    ck_assert_str_eq(picked(t, "a.test", NULL), "a.test");
    atomic_fetch_add(&st->cert_generation, 1);
    ck_assert_int_eq(lb_tls_refresh(t), 1);
    ck_assert_str_eq(picked(t, "a.test", NULL), "new.test");
    ck_assert_int_eq(lb_tls_refresh(t), 0);
    /* A broken file: the contexts in use stay. */
    char key[128];
    path(key, sizeof(key), "a.key");
    FILE *f = fopen(key, "w");
    fputs("garbage\n", f);
    fclose(f);
    atomic_fetch_add(&st->cert_generation, 1);
    ck_assert_int_eq(lb_tls_refresh(t), -1);
    ck_assert_str_eq(picked(t, "a.test", NULL), "new.test");
    ck_assert_int_eq(lb_tls_refresh(t), 0);     /* tried once per change */
    lb_tls_worker_init(cfg, NULL, NULL);
    lb_shm_close(&shm);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_ticket_keys_rotate)
{
    struct lb_shm shm;
    char err[256];
    ck_assert_int_eq(lb_shm_create(&shm), 0);
    struct lb_config cfg = { 0 };
    struct lb_tls_cfg tls = { 0 };
    struct lb_listener_cfg l = { .address = "127.0.0.1:8443", .tls = &tls };
    cfg.listeners = &l;
    cfg.nlisteners = 1;
    cfg.ntls = 1;
    ck_assert_int_eq(lb_shm_assign(shm.hdr, &cfg, 1, err, sizeof(err)), 0);
    struct lb_shm_tls *t = lb_shm_tls(shm.hdr, tls.shm_id);
    ck_assert_uint_eq(t->nkeys, 1);             /* the master's first key */
    struct lb_shm_ticket_key k0, k, none;
    ck_assert_int_eq(lb_shm_tls_key(t, NULL, &k0), 0);
    lb_shm_tls_rotate(t, 1000);
    ck_assert_int_eq(lb_shm_tls_key(t, NULL, &k), 0);
    ck_assert(memcmp(k.name, k0.name, 16) != 0 && memcmp(k.aes_key, k0.aes_key, 32) != 0);
    ck_assert_int_eq(lb_shm_tls_key(t, k0.name, &k), 1);        /* still decrypts */
    ck_assert_mem_eq(k.aes_key, k0.aes_key, 32);
    lb_shm_tls_rotate(t, 2000);
    ck_assert_int_eq(lb_shm_tls_key(t, k0.name, &k), 2);
    lb_shm_tls_rotate(t, 3000);
    ck_assert_int_eq(lb_shm_tls_key(t, k0.name, &k), -1);       /* aged past two previous */
    ck_assert_uint_eq(t->nkeys, 3);
    ck_assert_uint_eq(atomic_load(&t->rotations), 3);
    memset(none.name, 0xab, 16);
    ck_assert_int_eq(lb_shm_tls_key(t, none.name, &k), -1);
    /* A reload keeps the keys of the same address; another address gets
     * its own entry, the first one's is freed. */
    struct lb_shm_ticket_key cur;
    lb_shm_tls_key(t, NULL, &cur);
    ck_assert_int_eq(lb_shm_assign(shm.hdr, &cfg, 2, err, sizeof(err)), 0);
    ck_assert_int_eq(lb_shm_tls_key(lb_shm_tls(shm.hdr, tls.shm_id), cur.name, &k), 0);
    snprintf(l.address, sizeof(l.address), "127.0.0.1:9443");
    uint32_t old_id = tls.shm_id;
    ck_assert_int_eq(lb_shm_assign(shm.hdr, &cfg, 3, err, sizeof(err)), 0);
    ck_assert_int_eq(lb_shm_tls_key(lb_shm_tls(shm.hdr, tls.shm_id), cur.name, &k), -1);
    ck_assert_uint_eq(atomic_load(&lb_shm_tls(shm.hdr, old_id)->state),
                      tls.shm_id == old_id ? LB_ENTRY_ACTIVE : LB_ENTRY_FREE);
    lb_shm_close(&shm);
}
END_TEST

/* A reload that replaces every TLS listener by another one, with the
 * table full: the old entries are freed first, so the new ones fit. */
START_TEST(test_tls_entries_replaced_when_full)
{
    struct lb_shm shm;
    char err[256];
    ck_assert_int_eq(lb_shm_create(&shm), 0);
    static struct lb_listener_cfg ls[LB_SHM_MAX_TLS];
    static struct lb_tls_cfg tls[LB_SHM_MAX_TLS];
    struct lb_config cfg = { .listeners = ls, .nlisteners = LB_SHM_MAX_TLS, .ntls = LB_SHM_MAX_TLS };
    for (int round = 0; round < 2; round++) {
        for (unsigned i = 0; i < LB_SHM_MAX_TLS; i++) {
            memset(&ls[i], 0, sizeof(ls[i]));
            snprintf(ls[i].address, sizeof(ls[i].address), "127.0.%d.1:%u", round, 8000 + i);
            ls[i].tls = &tls[i];
        }
        ck_assert(lb_shm_assign_fits(shm.hdr, &cfg));
        ck_assert_int_eq(lb_shm_assign(shm.hdr, &cfg, (uint64_t)round + 1, err, sizeof(err)), 0);
        bool seen[LB_SHM_MAX_TLS] = { false };
        for (unsigned i = 0; i < LB_SHM_MAX_TLS; i++) {
            ck_assert_uint_lt(tls[i].shm_id, LB_SHM_MAX_TLS);
            ck_assert(!seen[tls[i].shm_id]);
            seen[tls[i].shm_id] = true;
            struct lb_shm_tls *t = lb_shm_tls(shm.hdr, tls[i].shm_id);
            ck_assert_str_eq(t->address, ls[i].address);
            ck_assert_uint_eq(t->nkeys, 1);
        }
    }
    lb_shm_close(&shm);
}
END_TEST

Suite *tls_suite(void)
{
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("tls");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_name_match);
    tcase_add_test(tc, test_contexts_and_sni);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_refresh_when_generation_moves);
    tcase_add_test(tc, test_ticket_keys_rotate);
    tcase_add_test(tc, test_tls_entries_replaced_when_full);
    suite_add_tcase(s, tc);
    return s;
}
