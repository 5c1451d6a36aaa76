#include "master/jws.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "shared/json.h"

EVP_PKEY *lb_jws_key_new(void)
{
    return EVP_EC_gen("P-256");
}

char *lb_jws_key_pem(EVP_PKEY *key)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b != NULL && PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) == 1) {
        char *data;
        long n = BIO_get_mem_data(b, &data);
        if (n > 0 && (out = malloc((size_t)n + 1)) != NULL) {
            memcpy(out, data, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(b);
    return out;
}

int lb_jws_write_file(const char *path, const void *data, size_t len)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            goto fail;
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) < 0 || close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0)
        goto fail;
    /* The rename itself survives a crash once the directory is synced. */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
fail:;
    int saved = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    errno = saved;
    return -1;
}

EVP_PKEY *lb_jws_key_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
        if (k == NULL || !EVP_PKEY_is_a(k, "EC") || EVP_PKEY_get_bits(k) != 256) {
            snprintf(err, errlen, "%s: not a P-256 private key in PEM", path);
            EVP_PKEY_free(k);
            ERR_clear_error();
            return NULL;
        }
        return k;
    }
    if (errno != ENOENT) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *k = lb_jws_key_new();
    char *pem = k ? lb_jws_key_pem(k) : NULL;
    if (pem == NULL) {
        snprintf(err, errlen, "making a P-256 key failed");
        EVP_PKEY_free(k);
        ERR_clear_error();
        return NULL;
    }
    int rc = lb_jws_write_file(path, pem, strlen(pem));
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
    if (rc < 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        EVP_PKEY_free(k);
        return NULL;
    }
    return k;
}

int lb_jws_jwk(EVP_PKEY *key, char *out, size_t cap)
{
    BIGNUM *x = NULL, *y = NULL;
    unsigned char bx[32], by[32];
    int rc = -1;
    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &x) == 1 &&
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &y) == 1 &&
        BN_bn2binpad(x, bx, 32) == 32 && BN_bn2binpad(y, by, 32) == 32) {
        char sx[48], sy[48];
        lb_base64_encode(bx, 32, sx, sizeof(sx), true);
        lb_base64_encode(by, 32, sy, sizeof(sy), true);
        int n = snprintf(out, cap, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}",
                         sx, sy);
        rc = n > 0 && (size_t)n < cap ? 0 : -1;
    }
    BN_free(x);
    BN_free(y);
    ERR_clear_error();
    return rc;
}

int lb_jws_thumbprint(const char *jwk, char *out)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (EVP_Digest(jwk, strlen(jwk), md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return -1;
    lb_base64_encode(md, 32, out, 44, true);
    return 0;
}

/* ES256: the DER ECDSA signature as r || s, 32 bytes each (RFC 7518 3.4). */
static int lb_jws_es256(EVP_PKEY *key, const char *in, size_t len, unsigned char raw[64])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[80];
    size_t dlen = sizeof(der);
    int rc = -1;
    if (md != NULL && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestSign(md, der, &dlen, (const unsigned char *)in, len) == 1) {
        const unsigned char *p = der;
        ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
        if (sig != NULL && BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) == 32 &&
            BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) == 32)
            rc = 0;
        ECDSA_SIG_free(sig);
    }
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    return rc;
}

char *lb_jws_protected(const char *kid, const char *jwk, const char *nonce, const char *url)
{
    char *prot = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&prot, &len);
    if (f == NULL)
        return NULL;
    fputs("{\"alg\":\"ES256\",", f);
    if (kid[0] != '\0') {
        fputs("\"kid\":", f);
        lb_json_write_string(f, kid);
    } else {
        fprintf(f, "\"jwk\":%s", jwk);
    }
    fputs(",\"nonce\":", f);
    lb_json_write_string(f, nonce);
    fputs(",\"url\":", f);
    lb_json_write_string(f, url);
    fputc('}', f);
    if (ferror(f)) {
        fclose(f);
        free(prot);
        return NULL;
    }
    if (fclose(f) != 0) {
        free(prot);
        return NULL;
    }
    return prot;
}

char *lb_jws_sign(EVP_PKEY *key, const char *protected_json, const char *payload)
{
    size_t plen = strlen(protected_json), ylen = strlen(payload);
    size_t pcap = plen * 4 / 3 + 4, ycap = ylen * 4 / 3 + 4;
    char *p64 = malloc(pcap), *y64 = malloc(ycap);
    char *input = NULL, *out = NULL;
    if (p64 == NULL || y64 == NULL)
        goto done;
    lb_base64_encode(protected_json, plen, p64, pcap, true);
    lb_base64_encode(payload, ylen, y64, ycap, true);
    if (asprintf(&input, "%s.%s", p64, y64) < 0) {
        input = NULL;
        goto done;
    }
    unsigned char raw[64];
    char sig[96];
    if (lb_jws_es256(key, input, strlen(input), raw) < 0)
        goto done;
    lb_base64_encode(raw, 64, sig, sizeof(sig), true);
    if (asprintf(&out, "{\"protected\":\"%s\",\"payload\":\"%s\",\"signature\":\"%s\"}", p64, y64,
                 sig) < 0)
        out = NULL;
done:
    free(p64);
    free(y64);
    free(input);
    return out;
}
