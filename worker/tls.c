#include "worker/tls.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "shared/log.h"
#include "shared/shm.h"
#include "worker/challenge.h"
#include "worker/conn.h"

/* Mozilla's "intermediate" TLS 1.2 ciphers (v5.7); TLS 1.3 keeps OpenSSL's
 * suites, which are the same as Mozilla's. */
#define LB_TLS_INTERMEDIATE                                                        \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                   \
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
#define LB_TLS_GROUPS "X25519:P-256:P-384"
#define LB_TLS_MAX_NAMES 64             /* names kept per certificate */

/* A name a certificate is for, and the context that holds it. */
struct lb_tls_name {
    char *name;                         /* lowercase; "*.example.com" */
    SSL_CTX *ctx;
};

/* One build of a listener's contexts. */
struct lb_tls_set {
    SSL_CTX *ctx[LB_TLS_MAX_CERTS];     /* ctx[0]: the default */
    size_t nctx;
    struct lb_tls_name *names;          /* exact names first, then wildcards */
    size_t nnames;
};

struct lb_tls_rt {
    struct lb_tls_set set;
    char address[LB_ADDR_STR_MAX];      /* the listener's (session id context) */
    uint64_t generation;                /* worker: cert_generation the set is from */
};

/* A connection's transport state. */
struct lb_tls_conn {
    SSL *ssl;
    struct lb_tls_peer *peer;           /* a backend connection's server; NULL: a client's */
    bool fatal;                         /* a fatal error: no close_notify */
    bool counted;                       /* its handshake's outcome is counted */
    bool started;                       /* the handshake has begun */
    bool sni_refused;                   /* unknown_sni = "refuse" said no */
};

/* What one worker keeps of one server of a TLS pool: the session its next
 * connection resumes, and the failure reasons it has logged. */
#define LB_TLS_PEER_LOGGED 8
struct lb_tls_peer {
    SSL_SESSION *sess;                  /* the newest the server gave; NULL: none */
    lb_counter_t *counts;               /* the server's tls_handshakes in shm */
    char pool[LB_NAME_MAX];
    char address[LB_ADDR_STR_MAX];
    char ip[LB_ADDR_STR_MAX];           /* verified when the pool has no sni */
    uint64_t logged[LB_TLS_PEER_LOGGED];
    unsigned nlogged;
};

static struct {
    struct lb_shm_header *shm;          /* NULL in the master */
    struct lb_shm_worker *stats;
    EVP_CIPHER *aes;                    /* ticket encryption, fetched once */
} lb_tls;

/* ---- names -------------------------------------------------------------- */

bool lb_tls_name_match(const char *pattern, const char *name, size_t len)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = memchr(name, '.', len);
        if (dot == NULL || dot == name)
            return false;
        return lb_str_ieq(dot, len - (size_t)(dot - name), pattern + 1);
    }
    return lb_str_ieq(name, len, pattern);
}

/* The context for server name NAME: an exact name first, then a wildcard;
 * NULL when no certificate has the name. */
static SSL_CTX *lb_tls_find(const struct lb_tls_set *set, const char *name, size_t len)
{
    for (size_t i = 0; i < set->nnames; i++)
        if (lb_tls_name_match(set->names[i].name, name, len))
            return set->names[i].ctx;
    return NULL;
}

/* As lb_tls_find, with the default when no certificate has the name. */
static SSL_CTX *lb_tls_pick(const struct lb_tls_set *set, const char *name, size_t len)
{
    SSL_CTX *ctx = lb_tls_find(set, name, len);
    return ctx ? ctx : set->ctx[0];
}

SSL_CTX *lb_tls_ctx_for(const struct lb_tls_cfg *t, const char *name)
{
    if (t->rt == NULL)
        return NULL;
    return name ? lb_tls_pick(&t->rt->set, name, strlen(name)) : t->rt->set.ctx[0];
}

static void lb_tls_names_free(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
}

/* The DNS names of X (its subjectAltName, or its common name when it has
 * none), lowercase, into NAMES (LB_TLS_MAX_NAMES at most). */
static size_t lb_tls_cert_names(X509 *x, char **names)
{
    size_t n = 0;
    GENERAL_NAMES *san = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; san != NULL && i < sk_GENERAL_NAME_num(san) && n < LB_TLS_MAX_NAMES; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(san, i);
        if (g->type != GEN_DNS)
            continue;
        const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
        int len = ASN1_STRING_length(g->d.dNSName);
        if (len <= 0 || memchr(d, '\0', (size_t)len) != NULL)
            continue;
        char *s = strndup((const char *)d, (size_t)len);
        if (s == NULL)
            break;
        for (char *p = s; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        names[n++] = s;
    }
    GENERAL_NAMES_free(san);
    if (n == 0) {
        char cn[256];
        int len = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
                                            sizeof(cn));
        if (len > 0 && (names[0] = strdup(cn)) != NULL) {
            for (char *p = names[0]; *p; p++)
                if (*p >= 'A' && *p <= 'Z')
                    *p = (char)(*p - 'A' + 'a');
            n = 1;
        }
    }
    return n;
}

static bool lb_tls_same_names(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        bool found = false;
        for (size_t j = 0; j < nb && !found; j++)
            found = strcmp(a[i], b[j]) == 0;
        if (!found)
            return false;
    }
    return true;
}

/* ---- callbacks (workers) ------------------------------------------------- */

static int lb_tls_sni_cb(SSL *ssl, int *alert, void *arg)
{
    struct lb_tls_cfg *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL)
        return SSL_TLSEXT_ERR_NOACK;       /* no SNI: the default certificate */
    SSL_CTX *ctx = lb_tls_find(&t->rt->set, name, strlen(name));
    if (ctx == NULL) {
        if (lb_tls.stats != NULL)
            lb_counter_add(&lb_tls.stats->tls_unknown_sni, 1);
        if (t->unknown_sni == LB_SNI_REFUSE) {
            struct lb_tls_conn *tc = SSL_get_app_data(ssl);
            if (tc != NULL)
                tc->sni_refused = true;
            *alert = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        ctx = t->rt->set.ctx[0];
    }
    if (ctx != SSL_get_SSL_CTX(ssl) && SSL_set_SSL_CTX(ssl, ctx) == NULL)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    return SSL_TLSEXT_ERR_OK;
}

static int lb_tls_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    const struct lb_tls_cfg *t = arg;
    unsigned char *sel = NULL, sellen = 0;
    if (SSL_select_next_proto(&sel, &sellen, t->alpn, (unsigned)t->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;       /* none in common: go on without ALPN */
    *out = sel;
    *outlen = sellen;
    return SSL_TLSEXT_ERR_OK;
}

/* Session tickets with the listener's keys in shm (OpenSSL 3's callback):
 * encrypt with the current key, decrypt with the one the ticket names. */
static int lb_tls_ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                            EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    static char digest[] = "SHA256";
    const struct lb_tls_cfg *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (lb_tls.shm == NULL || lb_tls.aes == NULL || t == NULL)
        return 0;       /* no ticket; or a full handshake */
    struct lb_shm_ticket_key k;
    int idx = lb_shm_tls_key(lb_shm_tls(lb_tls.shm, t->shm_id), enc ? NULL : key_name, &k);
    if (idx < 0)
        return 0;       /* encrypting: no ticket; decrypting: a full handshake */
    int ok;
    if (enc) {
        memcpy(key_name, k.name, sizeof(k.name));
        ok = RAND_bytes(iv, EVP_CIPHER_get_iv_length(lb_tls.aes)) > 0 &&
             EVP_EncryptInit_ex(cctx, lb_tls.aes, NULL, k.aes_key, iv);
    } else {
        ok = EVP_DecryptInit_ex(cctx, lb_tls.aes, NULL, k.aes_key, iv);
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac_key, sizeof(k.hmac_key)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    ok = ok && EVP_MAC_CTX_set_params(hctx, params);
    OPENSSL_cleanse(&k, sizeof(k));
    if (!ok)
        return -1;
    /* 2: a new ticket for the client. With TLS 1.3 always: OpenSSL's client
     * (as wrk, curl) uses a ticket once, and without a new one its next
     * connection is a full handshake (every other one, measured). With
     * TLS 1.2 when the key is not the current one. */
    return enc || (idx == 0 && SSL_version(ssl) < TLS1_3_VERSION) ? 1 : 2;
}

/* A key with a passphrase is refused, not asked for on a terminal. */
static int lb_tls_no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* ---- building contexts (master at load, worker at a refresh) ------------ */

static void lb_tls_set_free(struct lb_tls_set *set)
{
    for (size_t i = 0; i < set->nctx; i++)
        SSL_CTX_free(set->ctx[i]);
    for (size_t i = 0; i < set->nnames; i++)
        free(set->names[i].name);
    free(set->names);
    memset(set, 0, sizeof(*set));
}

/* OpenSSL's reason for the last failure, for a message; the queue is
 * emptied (SSL_get_error relies on an empty one). */
static const char *lb_tls_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (e == 0)
        snprintf(buf, len, "unknown error");
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

static SSL_CTX *lb_tls_ctx_new(struct lb_tls_cfg *t, const unsigned char sid[32], char *err,
                               size_t errlen)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "SSL_CTX_new() failed: %s", lb_tls_reason(why, sizeof(why)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, t->protocols == LB_TLS_13 ? TLS1_3_VERSION
                                                                 : TLS1_2_VERSION);
    /* No renegotiation: a write never waits for a read. A peer's FIN
     * without close_notify is an end like any other (HTTP frames its
     * messages itself). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                             SSL_OP_NO_COMPRESSION |
                             (t->session_tickets ? 0 : SSL_OP_NO_TICKET));
    /* The server's order of the ciphers (AES-GCM first), except for a
     * client that puts ChaCha20 first (no AES instructions: phones). Every
     * cipher of the list is strong, but a client's odd order would
     * otherwise pick (testssl rates "no cipher order" high). */
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
    /* Buffers only while a record is under way (an idle keep-alive
     * connection holds none); writes of up to a record, retried with the
     * same bytes wherever the evbuffer keeps them. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* One read() takes what the socket has, not a record header first. */
    SSL_CTX_set_read_ahead(ctx, 1);
    /* Tickets or a full handshake: no per-worker session cache, which a
     * client's next connection would most likely miss (another worker). */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, sid, 32);
    /* A ticket is good while its key may still decrypt it: three
     * rotations at most. */
    SSL_CTX_set_timeout(ctx, (long)(3 * t->ticket_rotation_ms / 1000));
    SSL_CTX_set_num_tickets(ctx, t->session_tickets ? 1 : 0);
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_default_passwd_cb(ctx, lb_tls_no_password);
    SSL_CTX_set_app_data(ctx, t);
    SSL_CTX_set_tlsext_servername_callback(ctx, lb_tls_sni_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, t);
    if (t->alpn_len > 0)
        SSL_CTX_set_alpn_select_cb(ctx, lb_tls_alpn_cb, t);
    if (t->session_tickets)
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, lb_tls_ticket_cb);
    if (t->nacme > 0)
        lb_challenge_tls_setup(ctx);        /* ACME TLS-ALPN-01 (worker/challenge.c) */
    if (SSL_CTX_set1_groups_list(ctx, LB_TLS_GROUPS) != 1) {
        snprintf(err, errlen, "TLS groups %s: %s", LB_TLS_GROUPS, lb_tls_reason(why, sizeof(why)));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_set_cipher_list(ctx, t->ciphers ? t->ciphers : LB_TLS_INTERMEDIATE) != 1) {
        snprintf(err, errlen, "%s: ciphers \"%s\": no usable cipher (%s)",
                 t->ciphers_at ? t->ciphers_at : "?", t->ciphers ? t->ciphers : "",
                 lb_tls_reason(why, sizeof(why)));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Whether FILE can be opened: the usual reason a load fails, said plainly
 * (OpenSSL's own message is about a BIO). */
static int lb_tls_readable(const char *file, const char *at, const char *what, char *err,
                           size_t errlen)
{
    FILE *f = fopen(file, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot read %s %s: %s", at, what, file, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

/* Load certificate C (its chain and key) into CTX and check them. */
static int lb_tls_load_cert(SSL_CTX *ctx, const struct lb_tls_cert_cfg *c, char *err,
                            size_t errlen)
{
    char why[256];
    if (lb_tls_readable(c->cert, c->cert_at, "certificate", err, errlen) < 0 ||
        lb_tls_readable(c->key, c->key_at, "key", err, errlen) < 0)
        return -1;
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        snprintf(err, errlen, "%s: certificate %s: not a PEM certificate (chain): %s",
                 c->cert_at, c->cert, lb_tls_reason(why, sizeof(why)));
        return -1;
    }
    BIO *b = BIO_new_file(c->key, "r");
    EVP_PKEY *pk = b ? PEM_read_bio_PrivateKey(b, NULL, lb_tls_no_password, NULL) : NULL;
    BIO_free(b);
    if (pk == NULL) {
        snprintf(err, errlen, "%s: key %s: not a usable PEM private key (an encrypted key "
                 "is not: lbd asks for no passphrase): %s", c->key_at, c->key,
                 lb_tls_reason(why, sizeof(why)));
        return -1;
    }
    int ok = SSL_CTX_use_PrivateKey(ctx, pk);
    EVP_PKEY_free(pk);
    if (ok != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "%s: key %s does not match certificate %s: %s", c->key_at, c->key,
                 c->cert, lb_tls_reason(why, sizeof(why)));
        return -1;
    }
    return 0;
}

void lb_tls_subject(struct x509_st *x, char *out, size_t outlen)
{
    out[0] = '\0';
    BIO *b = BIO_new(BIO_s_mem());
    if (b != NULL) {
        X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
        int n = BIO_read(b, out, (int)outlen - 1);
        out[n > 0 ? n : 0] = '\0';
        BIO_free(b);
    }
    /* What reaches the JSON and the metrics' labels stays printable. */
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '"' || *p == '\\')
            *p = '_';
}

/* Subject (RFC 2253) and notAfter of X into C; -1 with ERR when expired. */
static int lb_tls_describe(X509 *x, struct lb_tls_cert_cfg *c, char *err, size_t errlen)
{
    lb_tls_subject(x, c->subject, sizeof(c->subject));
    struct tm tm;
    const ASN1_TIME *na = X509_get0_notAfter(x);
    c->not_after = ASN1_TIME_to_tm(na, &tm) == 1 ? (int64_t)timegm(&tm) : 0;
    if (X509_cmp_current_time(na) <= 0) {
        char when[32] = "?";
        if (c->not_after != 0)
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
        snprintf(err, errlen, "%s: certificate %s expired (notAfter %s)", c->cert_at, c->cert,
                 when);
        ERR_clear_error();
        return -1;
    }
    ERR_clear_error();
    return 0;
}

/* ---- ACME names' certificates (master/acme.c writes them) --------------- */

/* Whether the stored certificate of an ACME name can be served: readable,
 * a key that matches, not expired. One that is not yet (or no more) is
 * left out, not an error: it is on its way. Its subject says so. */
static bool lb_tls_acme_usable(struct lb_tls_cert_cfg *c)
{
    char err[512];
    bool ok = false;
    snprintf(c->subject, sizeof(c->subject), "CN=%s (acme: none yet)", c->acme_name);
    c->not_after = 0;
    SSL_CTX *ctx = access(c->cert, R_OK) == 0 ? SSL_CTX_new(TLS_server_method()) : NULL;
    if (ctx != NULL) {
        struct lb_tls_cert_cfg probe = *c;
        ok = lb_tls_load_cert(ctx, &probe, err, sizeof(err)) == 0 &&
             lb_tls_describe(SSL_CTX_get0_certificate(ctx), &probe, err, sizeof(err)) == 0;
        if (!ok)
            lb_log_warn("acme name %s: stored certificate not used: %s", c->acme_name, err);
        SSL_CTX_free(ctx);
    }
    ERR_clear_error();
    return ok;
}

/* Build the contexts of T (listener ADDRESS) into SET. 0, or -1 with
 * "FILE:LINE: why" in ERR (SET then holds nothing). */
static int lb_tls_build(struct lb_tls_cfg *t, const char *address, struct lb_tls_set *set,
                        char *err, size_t errlen)
{
    unsigned char sid[32];
    unsigned int sidlen = 0;
    /* Session id context: a session of one listener never resumes on
     * another (whose certificates may differ). */
    if (EVP_Digest(address, strlen(address), sid, &sidlen, EVP_sha256(), NULL) != 1 ||
        sidlen != sizeof(sid)) {
        snprintf(err, errlen, "SHA-256 unavailable");
        return -1;
    }
    memset(set, 0, sizeof(*set));
    char *names[LB_TLS_MAX_CERTS][LB_TLS_MAX_NAMES];
    size_t nnames[LB_TLS_MAX_CERTS] = { 0 };
    int owner[LB_TLS_MAX_CERTS];        /* certificate -> context */
    bool joined[LB_TLS_MAX_CERTS] = { false };  /* in an earlier one's context */
    int keytypes[LB_TLS_MAX_CERTS][4];  /* per context: key types held */
    size_t nkt[LB_TLS_MAX_CERTS] = { 0 };
    size_t total = 0;
    int rc = -1;
    for (size_t i = 0; i < t->ncerts; i++) {
        struct lb_tls_cert_cfg *c = &t->certs[i];
        owner[i] = -1;
        if (c->acme_name != NULL && !lb_tls_acme_usable(c))
            continue;
        SSL_CTX *ctx = lb_tls_ctx_new(t, sid, err, errlen);
        if (ctx == NULL)
            goto out;
        if (lb_tls_load_cert(ctx, c, err, errlen) < 0) {
            SSL_CTX_free(ctx);
            goto out;
        }
        X509 *x = SSL_CTX_get0_certificate(ctx);
        int kt = EVP_PKEY_get_base_id(X509_get0_pubkey(x));
        if (lb_tls_describe(x, c, err, errlen) < 0) {
            SSL_CTX_free(ctx);
            goto out;
        }
        nnames[i] = lb_tls_cert_names(x, names[i]);
        /* Same names as an earlier certificate, another key type: both in
         * one context (OpenSSL picks by what the client supports). */
        owner[i] = -1;
        for (size_t j = 0; j < i && owner[i] < 0; j++) {
            int o = owner[j];
            if (o < 0)
                continue;       /* an ACME name's, left out */
            bool has = false;
            for (size_t k = 0; k < nkt[o]; k++)
                has = has || keytypes[o][k] == kt;
            if (!has && nkt[o] < 4 &&
                lb_tls_same_names(names[i], nnames[i], names[j], nnames[j]))
                owner[i] = o;
        }
        if (owner[i] >= 0) {
            SSL_CTX_free(ctx);
            if (lb_tls_load_cert(set->ctx[owner[i]], c, err, errlen) < 0)
                goto out;
            keytypes[owner[i]][nkt[owner[i]]++] = kt;
            joined[i] = true;   /* its names are that one's */
            continue;
        }
        owner[i] = (int)set->nctx;
        keytypes[set->nctx][nkt[set->nctx]++] = kt;
        set->ctx[set->nctx++] = ctx;
        total += nnames[i];
    }
    if (set->nctx == 0) {
        /* Only ACME names, none obtained yet: a context without a
         * certificate, which refuses handshakes but TLS-ALPN-01's. */
        if ((set->ctx[0] = lb_tls_ctx_new(t, sid, err, errlen)) == NULL)
            goto out;
        set->nctx = 1;
    }
    set->names = calloc(total ? total : 1, sizeof(*set->names));
    if (set->names == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    /* Exact names before wildcards, each in the order of the certificates. */
    for (int wild = 0; wild < 2; wild++)
        for (size_t i = 0; i < t->ncerts; i++) {
            if (joined[i])
                continue;
            for (size_t k = 0; k < nnames[i]; k++) {
                bool is_wild = names[i][k][0] == '*';
                if (is_wild != (wild == 1) || (is_wild && names[i][k][1] != '.'))
                    continue;
                char *dup = strdup(names[i][k]);
                if (dup == NULL) {
                    snprintf(err, errlen, "out of memory");
                    goto out;
                }
                set->names[set->nnames++] = (struct lb_tls_name){ dup, set->ctx[owner[i]] };
            }
        }
    rc = 0;
out:
    for (size_t i = 0; i < t->ncerts; i++)
        lb_tls_names_free(names[i], nnames[i]);
    if (rc < 0)
        lb_tls_set_free(set);
    return rc;
}

/* ---- client contexts (pools[].tls) --------------------------------------- */

static int lb_tls_new_session(SSL *ssl, SSL_SESSION *sess);

/* The client context of pool P: built by the master at each load, so a
 * missing or bad file is an error with its FILE:LINE. */
static SSL_CTX *lb_tls_client_ctx(const struct lb_pool_cfg *p, char *err, size_t errlen)
{
    const struct lb_pool_tls_cfg *t = p->tls;
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "SSL_CTX_new() failed: %s", lb_tls_reason(why, sizeof(why)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                             SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    /* Sessions are kept per server by the worker (lb_tls_peer), not in
     * OpenSSL's cache: the new-session callback hands each one over. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, lb_tls_new_session);
    SSL_CTX_set_default_passwd_cb(ctx, lb_tls_no_password);
    if (SSL_CTX_set1_groups_list(ctx, LB_TLS_GROUPS) != 1 ||
        SSL_CTX_set_cipher_list(ctx, LB_TLS_INTERMEDIATE) != 1) {
        snprintf(err, errlen, "%s: pool '%s': TLS setup failed: %s", t->at, p->name,
                 lb_tls_reason(why, sizeof(why)));
        goto fail;
    }
    if (t->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (t->ca_file != NULL) {
            if (lb_tls_readable(t->ca_file, t->ca_file_at, "ca_file", err, errlen) < 0)
                goto fail;
            if (SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL) != 1) {
                snprintf(err, errlen, "%s: ca_file %s: no PEM certificate in it: %s",
                         t->ca_file_at, t->ca_file, lb_tls_reason(why, sizeof(why)));
                goto fail;
            }
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            snprintf(err, errlen, "%s: pool '%s': the system's trust store: %s", t->at, p->name,
                     lb_tls_reason(why, sizeof(why)));
            goto fail;
        }
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (t->cert != NULL) {
        struct lb_tls_cert_cfg c = { .cert = t->cert, .key = t->key, .cert_at = t->cert_at,
                                     .key_at = t->key_at };
        if (lb_tls_load_cert(ctx, &c, err, errlen) < 0)
            goto fail;
    }
    ERR_clear_error();
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static void lb_tls_config_free(struct lb_config *cfg)
{
    for (size_t i = 0; i < cfg->npools; i++) {
        struct lb_pool_tls_cfg *t = cfg->pools[i].tls;
        if (t != NULL && t->ctx != NULL) {
            SSL_CTX_free(t->ctx);
            t->ctx = NULL;
        }
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct lb_tls_cfg *t = cfg->listeners[i].tls;
        if (t == NULL || t->rt == NULL)
            continue;
        lb_tls_set_free(&t->rt->set);
        free(t->rt);
        t->rt = NULL;
    }
}

int lb_tls_config_load(struct lb_config *cfg, char *err, size_t errlen)
{
    cfg->tls_free = lb_tls_config_free;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct lb_listener_cfg *l = &cfg->listeners[i];
        if (l->tls == NULL)
            continue;
        struct lb_tls_rt *rt = calloc(1, sizeof(*rt));
        if (rt == NULL) {
            snprintf(err, errlen, "%s: out of memory", cfg->path);
            return -1;
        }
        snprintf(rt->address, sizeof(rt->address), "%s", l->address);
        if (lb_tls_build(l->tls, l->address, &rt->set, err, errlen) < 0) {
            free(rt);
            return -1;
        }
        l->tls->rt = rt;
    }
    for (size_t i = 0; i < cfg->npools; i++) {
        struct lb_pool_cfg *p = &cfg->pools[i];
        if (p->tls == NULL)
            continue;
        if ((p->tls->ctx = lb_tls_client_ctx(p, err, errlen)) == NULL)
            return -1;
        if (!p->tls->verify)
            lb_log_warn("%s: pool '%s': tls.verify = false: its servers' certificates are "
                        "not checked (anyone on the path can pose as them)", p->tls->at,
                        p->name);
    }
    return 0;
}

/* ---- the transport ------------------------------------------------------- */

static void lb_tls_count(struct lb_tls_conn *tc, enum lb_tls_result r)
{
    tc->counted = true;
    if (tc->peer != NULL)
        lb_counter_add(&tc->peer->counts[r], 1);
    else if (lb_tls.stats != NULL)
        lb_counter_add(&lb_tls.stats->tls_handshakes[r], 1);
}

/* A backend handshake failed: counted, and logged once per server and
 * reason in this worker (a server with a bad certificate fails every
 * connection; its failures are counted, and the breaker and retries see
 * them as connect failures). KEY tells reasons apart. */
static void lb_tls_peer_failed(struct lb_tls_conn *tc, uint64_t key, const char *why)
{
    struct lb_tls_peer *p = tc->peer;
    if (tc->counted)
        return;
    lb_tls_count(tc, LB_TLS_FAILED);
    for (unsigned i = 0; i < p->nlogged; i++)
        if (p->logged[i] == key) {
            lb_log_debug("pool '%s': TLS handshake with %s failed: %s", p->pool, p->address, why);
            return;
        }
    if (p->nlogged < LB_TLS_PEER_LOGGED)
        p->logged[p->nlogged++] = key;
    lb_log_warn("pool '%s': TLS handshake with %s failed: %s (logged once per reason; "
                "counted in lbd_backend_tls_handshakes_total{result=\"failed\"})", p->pool,
                p->address, why);
}

static void lb_tls_count_failure(struct lb_tls_conn *tc, enum lb_tls_failure why)
{
    if (tc->peer != NULL) {
        lb_tls_peer_failed(tc, 1u + (unsigned)why, why == LB_TLS_FAIL_CLOSED
                           ? "the connection ended during the handshake"
                           : "protocol error");
        return;
    }
    lb_tls_count(tc, LB_TLS_FAILED);
    if (lb_tls.stats != NULL)
        lb_counter_add(&lb_tls.stats->tls_failures[why], 1);
}

static enum lb_tls_failure lb_tls_classify(unsigned long e)
{
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return LB_TLS_FAIL_PROTOCOL;
    switch (ERR_GET_REASON(e)) {
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
        return LB_TLS_FAIL_HTTP;
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_VERSION_TOO_HIGH:
        return LB_TLS_FAIL_VERSION;     /* (a bad record version is garbage: protocol) */
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SHARED_GROUPS:
    case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
    case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
        return LB_TLS_FAIL_CIPHER;
    default:
        return LB_TLS_FAIL_PROTOCOL;
    }
}

/* Plain HTTP on a TLS port: as nginx, a 400 in clear says what happened
 * (OpenSSL sent nothing: it recognises such requests before any alert).
 * Best effort: what the client still sends is read and dropped first, so
 * our close does not reset the answer away. */
static void lb_tls_answer_plain(int fd)
{
    static const char body[] = "plain HTTP request sent to a TLS port\n";
    char resp[256];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     sizeof(body) - 1, body);
    char sink[4096];
    for (int i = 0; i < 16 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
        ;
    if (send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) == n)
        shutdown(fd, SHUT_WR);
}

/* A failed SSL call R of C's: errno and the return value of a read or a
 * write (-1, or 0 at the peer's end). */
static ssize_t lb_tls_failed(struct lb_conn *c, int r)
{
    struct lb_tls_conn *tc = c->tr_ctx;
    int err = errno;
    switch (SSL_get_error(tc->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        c->tr_want_write = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        if (!c->tr_ready)
            lb_tls_count_failure(tc, LB_TLS_FAIL_CLOSED);
        return 0;
    case SSL_ERROR_SYSCALL:
        tc->fatal = true;
        ERR_clear_error();
        if (!c->tr_ready)
            lb_tls_count_failure(tc, LB_TLS_FAIL_CLOSED);
        if (err == 0)
            return 0;       /* EOF: the peer closed */
        errno = err;
        return -1;
    default: {
        tc->fatal = true;
        unsigned long e = ERR_peek_last_error();
        if (!c->tr_ready && tc->peer != NULL) {
            /* A backend: its certificate failing verification says why
             * best; else OpenSSL's reason. */
            long v = SSL_get_verify_result(tc->ssl);
            char buf[256];
            if (v != X509_V_OK)
                lb_tls_peer_failed(tc, (1ull << 32) | (uint64_t)v,
                                   X509_verify_cert_error_string(v));
            else
                lb_tls_peer_failed(tc, (2ull << 32) | (uint64_t)ERR_GET_REASON(e),
                                   lb_tls_reason(buf, sizeof(buf)));
        } else if (!c->tr_ready) {
            enum lb_tls_failure why = tc->sni_refused ? LB_TLS_FAIL_SNI : lb_tls_classify(e);
            lb_tls_count_failure(tc, why);
            if (why == LB_TLS_FAIL_HTTP)
                lb_tls_answer_plain(c->fd);
            char buf[256];
            lb_log_debug("TLS handshake failed: %s", lb_tls_reason(buf, sizeof(buf)));
        }
        ERR_clear_error();
        errno = EPROTO;
        return -1;
    }
    }
}

static ssize_t lb_tls_read(struct lb_conn *c, void *buf, size_t len)
{
    struct lb_tls_conn *tc = c->tr_ctx;
    errno = 0;      /* what SSL_ERROR_SYSCALL reports is the socket's */
    if (!c->tr_ready) {
        tc->started = true;
        int r = SSL_do_handshake(tc->ssl);
        if (r != 1)
            return lb_tls_failed(c, r);
        c->tr_ready = 1;
        lb_tls_count(tc, SSL_session_reused(tc->ssl) ? LB_TLS_RESUMED : LB_TLS_FULL);
    }
    int n = SSL_read(tc->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    return n > 0 ? n : lb_tls_failed(c, n);
}

static ssize_t lb_tls_write(struct lb_conn *c, const void *buf, size_t len)
{
    struct lb_tls_conn *tc = c->tr_ctx;
    errno = 0;
    int n = SSL_write(tc->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    if (n > 0)
        return n;
    int err = errno;
    int e = SSL_get_error(tc->ssl, n);
    if (e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;     /* the connection's write watch waits for it */
        return -1;
    }
    /* Anything else ends the connection. (A write waiting for a read,
     * SSL_ERROR_WANT_READ, would be renegotiation, which is off.) */
    tc->fatal = true;
    ERR_clear_error();
    errno = e == SSL_ERROR_SYSCALL && err != 0 ? err : e == SSL_ERROR_SSL ? EPROTO : EPIPE;
    return -1;
}

static bool lb_tls_pending(struct lb_conn *c)
{
    struct lb_tls_conn *tc = c->tr_ctx;
    return SSL_has_pending(tc->ssl) == 1;
}

static void lb_tls_shutdown(struct lb_conn *c)
{
    struct lb_tls_conn *tc = c->tr_ctx;
    if (tc->fatal || !c->tr_ready)
        return;
    /* close_notify, if the socket takes it now; nothing is waited for. */
    if (SSL_shutdown(tc->ssl) < 0)
        ERR_clear_error();
}

static void lb_tls_free(struct lb_conn *c)
{
    struct lb_tls_conn *tc = c->tr_ctx;
    /* (A backend connection that never got to its handshake, refused or
     * timed out connecting, failed as TCP, not as TLS.) */
    if (!c->tr_ready && !tc->counted && (tc->peer == NULL || tc->started))
        lb_tls_count_failure(tc, LB_TLS_FAIL_CLOSED);
    SSL_free(tc->ssl);
    free(tc);
    c->tr_ctx = NULL;
}

static const struct lb_conn_transport lb_tls_transport = {
    .read = lb_tls_read,
    .write = lb_tls_write,
    .pending = lb_tls_pending,
    .shutdown = lb_tls_shutdown,
    .free = lb_tls_free,
};

int lb_tls_refresh(struct lb_tls_cfg *t)
{
    if (lb_tls.shm == NULL || t->rt == NULL)
        return 0;
    struct lb_tls_rt *rt = t->rt;
    uint64_t g = atomic_load_explicit(&lb_shm_tls(lb_tls.shm, t->shm_id)->cert_generation,
                                      memory_order_acquire);
    if (g == rt->generation)
        return 0;
    rt->generation = g;     /* tried once per change, failed or not */
    char err[512];
    struct lb_tls_set set;
    if (lb_tls_build(t, rt->address, &set, err, sizeof(err)) < 0) {
        lb_log_error("listener %s: certificates changed, but loading them failed (the "
                     "previous ones stay): %s", rt->address, err);
        return -1;
    }
    /* Connections under way hold references to the old contexts. */
    lb_tls_set_free(&rt->set);
    rt->set = set;
    lb_log_info("listener %s: certificates loaded again (generation %llu)", rt->address,
                (unsigned long long)g);
    return 1;
}

void lb_tls_worker_init(const struct lb_config *cfg, struct lb_shm_header *shm,
                        struct lb_shm_worker *stats)
{
    lb_tls.shm = shm;
    lb_tls.stats = stats;
    lb_challenge_init(shm);
    if (shm == NULL || cfg->ntls == 0)
        return;
    if (lb_tls.aes == NULL)
        lb_tls.aes = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (lb_tls.aes == NULL)
        lb_log_error("AES-256-CBC unavailable: no session tickets");
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct lb_tls_cfg *t = cfg->listeners[i].tls;
        /* A listener with ACME names keeps the master's 0: if ACME replaced
         * a certificate since the master built the contexts (a worker
         * respawned later inherits them), the first handshake loads the
         * files. */
        if (t != NULL && t->rt != NULL && t->nacme == 0)
            t->rt->generation = atomic_load(&lb_shm_tls(shm, t->shm_id)->cert_generation);
    }
}

int lb_tls_accept(struct lb_conn *c, struct lb_tls_cfg *t)
{
    lb_tls_refresh(t);
    struct lb_tls_conn *tc = calloc(1, sizeof(*tc));
    if (tc == NULL)
        return -1;
    tc->ssl = SSL_new(t->rt->set.ctx[0]);
    if (tc->ssl == NULL || SSL_set_fd(tc->ssl, c->fd) != 1) {
        ERR_clear_error();
        SSL_free(tc->ssl);
        free(tc);
        return -1;
    }
    SSL_set_accept_state(tc->ssl);
    SSL_set_app_data(tc->ssl, tc);
    lb_conn_set_transport(c, &lb_tls_transport, tc);
    return 0;
}

/* ---- backend connections (pools[].tls) ------------------------------------ */

/* A session (ticket) the server sent: kept for its next connection, in
 * place of the one before. TLS 1.3 sends it after the handshake, on the
 * first read. 1: the reference is ours. */
static int lb_tls_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct lb_tls_conn *tc = SSL_get_app_data(ssl);
    if (tc == NULL || tc->peer == NULL)
        return 0;
    SSL_SESSION_free(tc->peer->sess);
    tc->peer->sess = sess;
    return 1;
}

struct lb_tls_peer *lb_tls_peer_new(const char *pool, const char *address,
                                    lb_counter_t *counts)
{
    struct lb_tls_peer *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->counts = counts;
    snprintf(p->pool, sizeof(p->pool), "%s", pool);
    snprintf(p->address, sizeof(p->address), "%s", address);
    lb_tls_address_host(address, p->ip, sizeof(p->ip));
    return p;
}

void lb_tls_peer_set_address(struct lb_tls_peer *p, const char *address)
{
    SSL_SESSION_free(p->sess);
    p->sess = NULL;
    p->nlogged = 0;
    snprintf(p->address, sizeof(p->address), "%s", address);
    lb_tls_address_host(address, p->ip, sizeof(p->ip));
}

void lb_tls_peer_free(struct lb_tls_peer *p)
{
    if (p == NULL)
        return;
    SSL_SESSION_free(p->sess);
    free(p);
}

SSL *lb_tls_client_new(const struct lb_pool_tls_cfg *t, const char *ip)
{
    SSL *ssl = SSL_new(t->ctx);
    if (ssl == NULL)
        goto fail;
    if (t->sni != NULL && SSL_set_tlsext_host_name(ssl, t->sni) != 1)
        goto fail;
    if (t->verify) {
        /* The name checked: sni when set, else the address connected to. */
        int ok = t->sni != NULL ? SSL_set1_host(ssl, t->sni)
                                : X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip);
        if (ok != 1)
            goto fail;
    }
    return ssl;
fail:
    ERR_clear_error();
    SSL_free(ssl);
    return NULL;
}

void lb_tls_address_host(const char *address, char *out, size_t outlen)
{
    /* "1.2.3.4:443" or "[::1]:443": the address without its port. */
    const char *a = address, *end = strrchr(address, ':');
    if (a[0] == '[') {
        a++;
        end = strchr(a, ']');
    }
    size_t n = end ? (size_t)(end - a) : strlen(a);
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, a, n);
    out[n] = '\0';
}

int lb_tls_connect(struct lb_conn *c, const struct lb_pool_tls_cfg *t, struct lb_tls_peer *p)
{
    struct lb_tls_conn *tc = calloc(1, sizeof(*tc));
    if (tc == NULL)
        return -1;
    tc->peer = p;
    tc->ssl = lb_tls_client_new(t, p->ip);
    if (tc->ssl == NULL || SSL_set_fd(tc->ssl, c->fd) != 1)
        goto fail;
    if (p->sess != NULL) {
        /* Resumed: the server's next ticket replaces it. A session that
         * can no longer resume is dropped. */
        if (!SSL_SESSION_is_resumable(p->sess) || SSL_set_session(tc->ssl, p->sess) != 1) {
            SSL_SESSION_free(p->sess);
            p->sess = NULL;
        }
    }
    SSL_set_connect_state(tc->ssl);
    SSL_set_app_data(tc->ssl, tc);
    lb_conn_set_transport(c, &lb_tls_transport, tc);
    return 0;
fail:
    ERR_clear_error();
    SSL_free(tc->ssl);
    free(tc);
    return -1;
}

bool lb_tls_handshake_failed(const struct lb_conn *c)
{
    if (c->tr != &lb_tls_transport || c->tr_ready)
        return false;
    const struct lb_tls_conn *tc = c->tr_ctx;
    return tc->peer != NULL && tc->started;
}

const char *lb_tls_version(const struct lb_conn *c)
{
    if (c->tr != &lb_tls_transport)
        return NULL;
    return SSL_get_version(((const struct lb_tls_conn *)c->tr_ctx)->ssl);
}

const char *lb_tls_cipher(const struct lb_conn *c)
{
    if (c->tr != &lb_tls_transport)
        return NULL;
    return SSL_get_cipher_name(((const struct lb_tls_conn *)c->tr_ctx)->ssl);
}
