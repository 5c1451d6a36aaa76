#include "worker/challenge.h"

#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "shared/log.h"
#include "shared/shm.h"

static struct lb_shm_header *lb_challenge_shm;

static const unsigned char lb_acme_tls_alpn[] = "\x0a" "acme-tls/1";

void lb_challenge_init(struct lb_shm_header *shm)
{
    lb_challenge_shm = shm;
}

bool lb_challenge_http01(const char *token, size_t len, char *out)
{
    if (lb_challenge_shm == NULL || len == 0)
        return false;
    struct lb_shm_acme_challenge c;
    if (!lb_shm_acme_http01(lb_shm_acme(lb_challenge_shm), token, len, &c))
        return false;
    memcpy(out, c.keyauth, sizeof(c.keyauth));
    return true;
}

/* The challenge context answers SNI (acknowledged) and ALPN (acme-tls/1
 * only) itself: once a connection is on it, the listener's callbacks,
 * which would pick another certificate, are not called. */
static int lb_challenge_sni_cb(SSL *ssl, int *alert, void *arg)
{
    (void)ssl;
    (void)alert;
    (void)arg;
    return SSL_TLSEXT_ERR_OK;
}

static int lb_challenge_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    unsigned char *sel = NULL, sellen = 0;
    if (SSL_select_next_proto(&sel, &sellen, lb_acme_tls_alpn, sizeof(lb_acme_tls_alpn) - 1,
                              in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    *outlen = sellen;
    return SSL_TLSEXT_ERR_OK;
}

/* A context serving challenge C's certificate. NULL on failure (logged). */
static SSL_CTX *lb_challenge_ctx(const struct lb_shm_acme_challenge *c)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    BIO *cb = BIO_new_mem_buf(c->cert_pem, -1), *kb = BIO_new_mem_buf(c->key_pem, -1);
    X509 *x = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
    EVP_PKEY *pk = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    bool ok = ctx != NULL && x != NULL && pk != NULL &&
              SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1 &&
              SSL_CTX_use_certificate(ctx, x) == 1 && SSL_CTX_use_PrivateKey(ctx, pk) == 1;
    X509_free(x);
    EVP_PKEY_free(pk);
    BIO_free(cb);
    BIO_free(kb);
    if (!ok) {
        lb_log_error("acme: TLS-ALPN-01 challenge certificate for %s unusable", c->name);
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_tlsext_servername_callback(ctx, lb_challenge_sni_cb);
    SSL_CTX_set_alpn_select_cb(ctx, lb_challenge_alpn_cb, NULL);
    return ctx;
}

/* Whether ALPN extension data D (LEN bytes) offers acme-tls/1. */
static bool lb_challenge_offers_acme(const unsigned char *d, size_t len)
{
    if (len < 2 || (size_t)((d[0] << 8) | d[1]) != len - 2)
        return false;
    for (size_t i = 2; i < len;) {
        size_t n = d[i];
        if (i + 1 + n > len)
            return false;
        if (n == sizeof(lb_acme_tls_alpn) - 2 && memcmp(d + i + 1, lb_acme_tls_alpn + 1, n) == 0)
            return true;
        i += 1 + n;
    }
    return false;
}

/* The host name of SNI extension data D into NAME (lowercase). */
static bool lb_challenge_sni(const unsigned char *d, size_t len, char *name, size_t cap)
{
    if (len < 5 || (size_t)((d[0] << 8) | d[1]) != len - 2 || d[2] != TLSEXT_NAMETYPE_host_name)
        return false;
    size_t n = (size_t)((d[3] << 8) | d[4]);
    if (n == 0 || n + 5 > len || n >= cap)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = (char)d[5 + i];
        if (c == '\0')
            return false;
        name[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    name[n] = '\0';
    return true;
}

static int lb_challenge_hello_cb(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    (void)arg;
    const unsigned char *d;
    size_t len;
    if (lb_challenge_shm == NULL ||
        SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &d,
                                  &len) != 1 ||
        !lb_challenge_offers_acme(d, len))
        return SSL_CLIENT_HELLO_SUCCESS;
    char name[LB_ACME_NAME_MAX];
    struct lb_shm_acme_challenge c;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &d, &len) != 1 ||
        !lb_challenge_sni(d, len, name, sizeof(name)) ||
        !lb_shm_acme_tlsalpn01(lb_shm_acme(lb_challenge_shm), name, &c)) {
        lb_log_debug("acme: acme-tls/1 asked with no pending challenge for that name");
        return SSL_CLIENT_HELLO_SUCCESS;    /* the listener's own ALPN refuses it */
    }
    SSL_CTX *ctx = lb_challenge_ctx(&c);
    if (ctx == NULL)
        return SSL_CLIENT_HELLO_SUCCESS;
    SSL_CTX *set = SSL_set_SSL_CTX(ssl, ctx);
    SSL_CTX_free(ctx);      /* the connection holds its own reference */
    if (set == NULL)
        return SSL_CLIENT_HELLO_SUCCESS;
    lb_log_info("acme: TLS-ALPN-01 challenge certificate served for %s", name);
    return SSL_CLIENT_HELLO_SUCCESS;
}

void lb_challenge_tls_setup(SSL_CTX *ctx)
{
    SSL_CTX_set_client_hello_cb(ctx, lb_challenge_hello_cb, NULL);
}
