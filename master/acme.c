#include "master/acme.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "master/httpc.h"
#include "master/jws.h"
#include "shared/json.h"
#include "shared/log.h"
#include "shared/shm.h"
#include "shared/version.h"
#include "worker/tls.h"

#define LB_ACME_URL_MAX         1024
#define LB_ACME_NONCE_MAX       256
#define LB_ACME_BODY_MAX        (1024 * 1024)   /* a chain is a few KB */
#define LB_ACME_POLLS           90              /* per authorization or order */
#define LB_ACME_BACKOFF_MIN_S   10
#define LB_ACME_BACKOFF_MAX_S   3600
#define LB_ACME_NONCE_TRIES     5               /* badNonce: the request again */

struct lb_acme_name {
    char name[LB_ACME_NAME_MAX];
    char path[PATH_MAX];                /* STORAGE/NAME.pem */
    char subject[LB_TLS_SUBJECT_MAX];
    int64_t not_before, not_after;      /* of the stored certificate; 0: none */
    int64_t renew_at;                   /* wall seconds */
    unsigned backoff_s;
    uint32_t state;                     /* enum lb_acme_state */
    uint64_t orders[LB_ACME_RESULTS];
    char error[LB_ACME_ERROR_MAX];
};

struct lb_acme_resp {
    long status;
    char *body;                         /* NULL: none */
    size_t len;
    char location[LB_ACME_URL_MAX];
    char nonce[LB_ACME_NONCE_MAX];
    unsigned retry_after;
    struct lb_json *json;       /* the body as JSON, when it is */
};

struct lb_acme;
typedef void (*lb_acme_step)(struct lb_acme *a);

struct lb_acme {
    const struct lb_config *cfg;
    const struct lb_acme_cfg *ac;
    struct lb_shm_header *shm;
    uint64_t generation;
    struct event_base *base;
    bool ready;                         /* storage and account key usable */
    EVP_PKEY *account;
    char jwk[256], thumb[64];
    char kid[LB_ACME_URL_MAX];          /* account URL; "" until registered */
    char nonce[LB_ACME_NONCE_MAX];
    char new_nonce[LB_ACME_URL_MAX], new_account[LB_ACME_URL_MAX], new_order[LB_ACME_URL_MAX];
    struct lb_acme_name *names;
    size_t nnames;

    /* One request at a time (the protocol is a sequence). */
    struct lb_httpc *httpc;
    struct lb_httpc_req *req;           /* under way; NULL: none */
    char req_url[LB_ACME_URL_MAX];      /* its URL, for the log and errors */
    struct lb_acme_resp *r;             /* the answer of the last transfer */
    lb_acme_step on_answer;             /* run once it is in R (or failed: ANSWER_OK false) */
    bool answer_ok;

    /* A signed POST under way (sent again on badNonce). */
    char post_url[LB_ACME_URL_MAX];
    char *post_payload;                 /* NULL: POST-as-GET */
    const char *post_accept;
    int post_tries;
    lb_acme_step post_done;

    /* The order under way; CUR NULL when none. */
    struct lb_acme_name *cur;
    int lock_fd;
    char order[LB_ACME_URL_MAX], finalize[LB_ACME_URL_MAX], poll_url[LB_ACME_URL_MAX];
    char (*authz)[LB_ACME_URL_MAX];
    int nauth, iauth, polls;
    bool poll_ready_too;
    bool reread;                        /* an invalid authorization read again */
    lb_acme_step poll_done;
    char status[32];
    struct lb_shm_acme_challenge *chal; /* put in shm while validated */
    bool chal_put;
    EVP_PKEY *cert_key;
    char err[LB_ACME_ERROR_MAX];        /* why the order failed */
    unsigned retry_after;               /* the server's, with the failure */

    struct event *timer;                /* the next due name, or a poll's wait */
    lb_acme_step on_timer;
};

static const char *const lb_acme_challenge_names[] = { "http-01", "tls-alpn-01" };

static void lb_acme_fail(struct lb_acme *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lb_acme_done(struct lb_acme *a, int rc);

/* The order under way fails with a message (logged, in /status). */
static void lb_acme_fail(struct lb_acme *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->err, sizeof(a->err), fmt, ap);
    va_end(ap);
    lb_acme_done(a, -1);
}

static void lb_acme_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_acme *a = arg;
    lb_acme_step step = a->on_timer;
    a->on_timer = NULL;
    if (step != NULL)
        step(a);
}

static void lb_acme_after(struct lb_acme *a, uint64_t ms, lb_acme_step step)
{
    a->on_timer = step;
    struct timeval tv = lb_ms_timeval(ms);
    evtimer_add(a->timer, &tv);
}

/* ---- HTTP: one request at a time through master/httpc ------------------- */

/* The response headers the protocol reads, in lb_acme_resp_set's order. */
static const char *const lb_acme_headers[] = { "Replay-Nonce", "Location", "Retry-After", NULL };

static void lb_acme_resp_clear(struct lb_acme_resp *r)
{
    free(r->body);
    lb_json_free(r->json);
    memset(r, 0, sizeof(*r));
}

/* The answer into R, cleared when its request started: httpc frees
 * BODY and the header values once the answer is handed over, and the
 * steps read R later (after a poll's wait). */
static int lb_acme_resp_set(struct lb_acme_resp *r, long status, const char *body, size_t len,
                            const char *const *headers)
{
    r->status = status;
    if (len > 0) {
        if ((r->body = malloc(len + 1)) == NULL)
            return -1;
        memcpy(r->body, body, len + 1);
        r->len = len;
    }
    if (headers[0] != NULL)
        snprintf(r->nonce, sizeof(r->nonce), "%s", headers[0]);
    if (headers[1] != NULL)
        snprintf(r->location, sizeof(r->location), "%s", headers[1]);
    if (headers[2] != NULL)
        r->retry_after = (unsigned)strtoul(headers[2], NULL, 10);     /* a date reads as 0 */
    return 0;
}

/* The transfer ended: its answer (or failure) goes to the step waiting. */
static void lb_acme_answer(void *arg, const char *error, long status, const char *body,
                           size_t len, const char *const *headers)
{
    struct lb_acme *a = arg;
    a->req = NULL;
    if (error == NULL && lb_acme_resp_set(a->r, status, body, len, headers) < 0)
        error = "out of memory";
    a->answer_ok = error == NULL;
    if (a->answer_ok) {
        struct lb_acme_resp *r = a->r;
        const char *why;
        r->json = r->body != NULL ? lb_json_parse(r->body, r->len, &why) : NULL;
        lb_log_debug("acme: %s: %ld", a->req_url, r->status);
    } else {
        snprintf(a->err, sizeof(a->err), "%.256s: %s", a->req_url, error);
    }
    lb_acme_step step = a->on_answer;
    a->on_answer = NULL;
    if (step != NULL)
        step(a);
}

/* Start one request: GET (BODY NULL), HEAD or POST of BODY (freed here),
 * whose answer STEP gets in a->r (a->answer_ok false: none came, a->err
 * says why). */
static void lb_acme_request(struct lb_acme *a, const char *url, char *body, bool head,
                            const char *accept, lb_acme_step step)
{
    lb_acme_resp_clear(a->r);
    char ua[64];
    snprintf(ua, sizeof(ua), "lbd/%s (ACME)", LB_VERSION);
    struct lb_httpc_opts o = {
        .method = body != NULL ? LB_HTTPC_POST : head ? LB_HTTPC_HEAD : LB_HTTPC_GET,
        .body = body,
        .content_type = "application/jose+json",
        .accept = accept,
        .user_agent = ua,
        .ca_file = a->ac->ca_file,
        .https_only = true,
        .env_proxy = true,              /* the CA is on the internet */
        .timeout_ms = 30000,
        .connect_timeout_ms = 10000,
        .body_max = LB_ACME_BODY_MAX,
        .headers = lb_acme_headers,
    };
    snprintf(a->req_url, sizeof(a->req_url), "%s", url);
    a->on_answer = step;
    a->req = lb_httpc_request(a->httpc, url, &o, lb_acme_answer, a);
    free(body);
    if (a->req == NULL) {
        a->on_answer = NULL;
        lb_acme_fail(a, "%s: the request could not start (out of memory)", url);
    }
}

/* An error answer (RFC 7807 problem document) into A->err. */
static void lb_acme_problem(struct lb_acme *a, const char *what, const struct lb_acme_resp *r)
{
    char type[128], detail[256];
    lb_json_get_str(r->json, "type", type, sizeof(type));
    lb_json_get_str(r->json, "detail", detail, sizeof(detail));
    a->retry_after = r->retry_after;
    const char *t = strncmp(type, "urn:ietf:params:acme:error:", 27) == 0 ? type + 27 : type;
    lb_acme_fail(a, "%s: HTTP %ld %s%s%s", what, r->status, t, *detail ? ": " : "", detail);
}


/* ---- signed requests ------------------------------------------------------ */

static void lb_acme_post_send(struct lb_acme *a);

static void lb_acme_post_answer(struct lb_acme *a)
{
    struct lb_acme_resp *r = a->r;
    if (!a->answer_ok) {
        lb_acme_done(a, -1);
        return;
    }
    if (r->nonce[0] != '\0')
        snprintf(a->nonce, sizeof(a->nonce), "%s", r->nonce);
    char type[128];
    if (r->status == 400 && lb_json_get_str(r->json, "type", type, sizeof(type)) &&
        strcmp(type, "urn:ietf:params:acme:error:badNonce") == 0) {
        if (++a->post_tries >= LB_ACME_NONCE_TRIES) {
            lb_acme_fail(a, "%s: badNonce %d times in a row", a->post_url, LB_ACME_NONCE_TRIES);
            return;
        }
        lb_log_info("acme: %s: badNonce, sending again with a fresh nonce", a->post_url);
        lb_acme_post_send(a);
        return;
    }
    free(a->post_payload);
    a->post_payload = NULL;
    a->post_done(a);
}

static void lb_acme_nonce_answer(struct lb_acme *a)
{
    if (!a->answer_ok) {
        lb_acme_done(a, -1);
        return;
    }
    if (a->r->nonce[0] == '\0') {
        lb_acme_fail(a, "newNonce %s: no Replay-Nonce (HTTP %ld)", a->new_nonce, a->r->status);
        return;
    }
    snprintf(a->nonce, sizeof(a->nonce), "%s", a->r->nonce);
    lb_acme_post_send(a);
}

static void lb_acme_post_send(struct lb_acme *a)
{
    if (a->nonce[0] == '\0') {
        lb_acme_request(a, a->new_nonce, NULL, true, NULL, lb_acme_nonce_answer);
        return;
    }
    char *prot = lb_jws_protected(a->kid, a->jwk, a->nonce, a->post_url);
    if (prot == NULL) {
        lb_acme_fail(a, "out of memory");
        return;
    }
    char *jws = lb_jws_sign(a->account, prot, a->post_payload ? a->post_payload : "");
    free(prot);
    if (jws == NULL) {
        lb_acme_fail(a, "signing a request failed");
        return;
    }
    a->nonce[0] = '\0';     /* used */
    lb_acme_request(a, a->post_url, jws, false, a->post_accept, lb_acme_post_answer);
}

/* A signed POST of PAYLOAD (NULL: POST-as-GET) to URL, with the account's
 * kid, or its jwk while it has none (newAccount); DONE gets the answer. A
 * badNonce answer is sent again with the nonce it came with. */
static void lb_acme_post(struct lb_acme *a, const char *url, const char *payload,
                         const char *accept, lb_acme_step done)
{
    snprintf(a->post_url, sizeof(a->post_url), "%s", url);
    free(a->post_payload);
    a->post_payload = payload ? strdup(payload) : NULL;
    if (payload != NULL && a->post_payload == NULL) {
        lb_acme_fail(a, "out of memory");
        return;
    }
    a->post_accept = accept;
    a->post_tries = 0;
    a->post_done = done;
    lb_acme_post_send(a);
}

/* POST-as-GET URL until its "status" is none of pending, processing (and
 * ready, with READY_TOO); then DONE, with the last status in a->status. */
static void lb_acme_poll_send(struct lb_acme *a);

static void lb_acme_poll_answer(struct lb_acme *a)
{
    struct lb_acme_resp *r = a->r;
    if (r->status != 200) {
        lb_acme_problem(a, a->poll_url, r);
        return;
    }
    lb_json_get_str(r->json, "status", a->status, sizeof(a->status));
    if (strcmp(a->status, "pending") != 0 && strcmp(a->status, "processing") != 0 &&
        !(a->poll_ready_too && strcmp(a->status, "ready") == 0)) {
        a->poll_done(a);
        return;
    }
    if (++a->polls >= LB_ACME_POLLS) {
        lb_acme_fail(a, "%s: still %s after %d polls", a->poll_url, a->status, LB_ACME_POLLS);
        return;
    }
    unsigned wait = r->retry_after > 0 && r->retry_after < 10 ? r->retry_after * 1000 : 500;
    lb_acme_after(a, wait, lb_acme_poll_send);
}

static void lb_acme_poll_send(struct lb_acme *a)
{
    lb_acme_post(a, a->poll_url, NULL, NULL, lb_acme_poll_answer);
}

static void lb_acme_poll(struct lb_acme *a, const char *url, bool ready_too, lb_acme_step done)
{
    snprintf(a->poll_url, sizeof(a->poll_url), "%s", url);
    a->poll_ready_too = ready_too;
    a->poll_done = done;
    a->polls = 0;
    lb_acme_poll_send(a);
}

/* ---- certificates --------------------------------------------------------- */

static int64_t lb_acme_time(const ASN1_TIME *t)
{
    struct tm tm;
    return ASN1_TIME_to_tm(t, &tm) == 1 ? (int64_t)timegm(&tm) : 0;
}

/* N's stored certificate: its dates and subject. 0 when there is one whose
 * key matches and which has not expired. */
static int lb_acme_stored(struct lb_acme_name *n)
{
    n->not_before = n->not_after = 0;
    FILE *f = fopen(n->path, "r");
    if (f == NULL)
        return -1;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    rewind(f);
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    int rc = -1;
    if (x != NULL && k != NULL && X509_check_private_key(x, k) == 1) {
        n->not_before = lb_acme_time(X509_get0_notBefore(x));
        n->not_after = lb_acme_time(X509_get0_notAfter(x));
        lb_tls_subject(x, n->subject, sizeof(n->subject));
        rc = n->not_after > time(NULL) ? 0 : -1;
    }
    X509_free(x);
    EVP_PKEY_free(k);
    ERR_clear_error();
    return rc;
}

/* When N's certificate is to be renewed: renew_before ahead of notAfter
 * (a third of the lifetime when renew_before is longer than that), earlier
 * by a random tenth of it at most, so that many names do not renew at the
 * same moment; never later, so never past expiry. */
static void lb_acme_schedule(struct lb_acme *a, struct lb_acme_name *n)
{
    int64_t life = n->not_after - n->not_before;
    int64_t window = (int64_t)(a->ac->renew_before_ms / 1000);
    if (window < 1)
        window = 1;
    if (life > 0 && window >= life) {
        window = life / 3;
        lb_log_warn("acme: %s: renew_before is longer than the certificate's lifetime (%llds): "
                    "renewing a third of it before expiry", n->name, (long long)life);
    }
    uint32_t r = 0;
    if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
        r = (uint32_t)getpid();
    int64_t jitter = window / 10 > 0 ? (int64_t)(r % (uint32_t)(window / 10 + 1)) : 0;
    n->renew_at = n->not_after - window - jitter;
}

static X509_EXTENSION *lb_acme_san(const char *name)
{
    char san[LB_ACME_NAME_MAX + 8];
    snprintf(san, sizeof(san), "DNS:%s", name);
    return X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
}

/* CN=NAME into SUBJ when NAME fits a common name (64 bytes); a longer
 * one is in the subjectAltName only, which is what counts. */
static bool lb_acme_cn(X509_NAME *subj, const char *name)
{
    return strlen(name) > 64 ||
           X509_NAME_add_entry_by_NID(subj, NID_commonName, MBSTRING_ASC,
                                      (const unsigned char *)name, -1, -1, 0) == 1;
}

/* The DER CSR for NAME with KEY, base64url, into OUT (malloc'd). */
static int lb_acme_csr(const char *name, EVP_PKEY *key, char **out)
{
    X509_REQ *req = X509_REQ_new();
    X509_NAME *subj = X509_NAME_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *san = lb_acme_san(name);
    unsigned char *der = NULL;
    int rc = -1, len = 0;
    *out = NULL;
    if (req != NULL && subj != NULL && exts != NULL && san != NULL && lb_acme_cn(subj, name) &&
        X509_REQ_set_subject_name(req, subj) == 1 && X509_REQ_set_pubkey(req, key) == 1 &&
        sk_X509_EXTENSION_push(exts, san) > 0) {
        san = NULL;     /* the stack's */
        if (X509_REQ_add_extensions(req, exts) == 1 && X509_REQ_sign(req, key, EVP_sha256()) > 0 &&
            (len = i2d_X509_REQ(req, &der)) > 0 && (*out = malloc((size_t)len * 4 / 3 + 4)) != NULL) {
            lb_base64_encode(der, (size_t)len, *out, (size_t)len * 4 / 3 + 4, true);
            rc = 0;
        }
    }
    OPENSSL_free(der);
    X509_EXTENSION_free(san);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_NAME_free(subj);
    X509_REQ_free(req);
    ERR_clear_error();
    return rc;
}

/* The TLS-ALPN-01 certificate of RFC 8737 for C->name: self-signed, its
 * only name C->name, and the critical id-pe-acmeIdentifier extension
 * holding SHA-256(key authorization). PEMs into C. */
static int lb_acme_alpn_cert(struct lb_shm_acme_challenge *c)
{
    EVP_PKEY *k = lb_jws_key_new();
    X509 *x = X509_new();
    X509_NAME *subj = X509_NAME_new();
    X509_EXTENSION *san = lb_acme_san(c->name), *id = NULL;
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());
    unsigned char value[2 + 32];
    unsigned int mdlen = 0;
    int rc = -1;
    value[0] = 0x04;        /* extnValue holds the DER of an OCTET STRING (32) */
    value[1] = 0x20;
    if (k == NULL || x == NULL || subj == NULL || san == NULL || oid == NULL || os == NULL ||
        cb == NULL || kb == NULL ||
        EVP_Digest(c->keyauth, strlen(c->keyauth), value + 2, &mdlen, EVP_sha256(), NULL) != 1 ||
        ASN1_OCTET_STRING_set(os, value, sizeof(value)) != 1 ||
        (id = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, os)) == NULL)
        goto out;
    uint64_t serial = 0;
    RAND_bytes((unsigned char *)&serial, sizeof(serial));
    if (X509_set_version(x, 2) != 1 ||
        ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial >> 1) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), 7 * 86400) == NULL ||
        !lb_acme_cn(subj, c->name) ||
        X509_set_subject_name(x, subj) != 1 || X509_set_issuer_name(x, subj) != 1 ||
        X509_set_pubkey(x, k) != 1 || X509_add_ext(x, san, -1) != 1 ||
        X509_add_ext(x, id, -1) != 1 || X509_sign(x, k, EVP_sha256()) <= 0 ||
        PEM_write_bio_X509(cb, x) != 1 ||
        PEM_write_bio_PrivateKey(kb, k, NULL, NULL, 0, NULL, NULL) != 1)
        goto out;
    char *data;
    long n = BIO_get_mem_data(cb, &data);
    if (n <= 0 || (size_t)n >= sizeof(c->cert_pem))
        goto out;
    memcpy(c->cert_pem, data, (size_t)n);
    c->cert_pem[n] = '\0';
    n = BIO_get_mem_data(kb, &data);
    if (n <= 0 || (size_t)n >= sizeof(c->key_pem))
        goto out;
    memcpy(c->key_pem, data, (size_t)n);
    c->key_pem[n] = '\0';
    rc = 0;
out:
    BIO_free(cb);
    BIO_free_all(kb);
    ASN1_OCTET_STRING_free(os);
    ASN1_OBJECT_free(oid);
    X509_EXTENSION_free(id);
    X509_EXTENSION_free(san);
    X509_NAME_free(subj);
    X509_free(x);
    EVP_PKEY_free(k);
    ERR_clear_error();
    return rc;
}



/* ---- an order, step by step ----------------------------------------------- *
 *
 *   directory -> newAccount -> newOrder -> for each authorization:
 *       [valid: next] challenge in shm, POST {} to it, poll the authorization
 *   -> finalize (CSR) -> poll the order -> download the chain -> store
 */

static void lb_acme_next_authz(struct lb_acme *a);
static void lb_acme_finalize(struct lb_acme *a);

static void lb_acme_cert_answer(struct lb_acme *a)
{
    struct lb_acme_resp *r = a->r;
    struct lb_acme_name *n = a->cur;
    if (r->status != 200 || r->body == NULL) {
        lb_acme_problem(a, "certificate download", r);
        return;
    }
    /* What is stored must be what workers load: its first certificate is
     * for our key. */
    BIO *b = BIO_new_mem_buf(r->body, (int)r->len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    bool match = x != NULL && X509_check_private_key(x, a->cert_key) == 1;
    X509_free(x);
    ERR_clear_error();
    if (!match) {
        lb_acme_fail(a, "the certificate downloaded for %s is not for its key", n->name);
        return;
    }
    char *kpem = lb_jws_key_pem(a->cert_key), *pem = NULL;
    if (kpem == NULL || asprintf(&pem, "%s%s%s", r->body,
                                 r->len > 0 && r->body[r->len - 1] != '\n' ? "\n" : "", kpem) < 0)
        pem = NULL;
    if (kpem != NULL) {
        OPENSSL_cleanse(kpem, strlen(kpem));
        free(kpem);
    }
    if (pem == NULL) {
        lb_acme_fail(a, "out of memory");
        return;
    }
    int rc = lb_jws_write_file(n->path, pem, strlen(pem));
    int saved = errno;
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
    if (rc < 0) {
        lb_acme_fail(a, "writing %s failed: %s", n->path, strerror(saved));
        return;
    }
    lb_acme_done(a, 0);
}

static void lb_acme_order_valid(struct lb_acme *a)
{
    char cert[LB_ACME_URL_MAX];
    if (strcmp(a->status, "valid") != 0 ||
        !lb_json_get_str(a->r->json, "certificate", cert, sizeof(cert))) {
        lb_acme_fail(a, "order for %s ended %s", a->cur->name, a->status);
        return;
    }
    lb_acme_post(a, cert, NULL, "application/pem-certificate-chain", lb_acme_cert_answer);
}

static void lb_acme_finalize_answer(struct lb_acme *a)
{
    if (a->r->status != 200) {
        lb_acme_problem(a, "finalize", a->r);
        return;
    }
    lb_json_get_str(a->r->json, "status", a->status, sizeof(a->status));
    if (strcmp(a->status, "valid") == 0)
        lb_acme_order_valid(a);
    else
        lb_acme_poll(a, a->order, true, lb_acme_order_valid);
}

static void lb_acme_finalize(struct lb_acme *a)
{
    /* The certificate's key is new at every order. */
    char *csr = NULL, *body = NULL;
    a->cert_key = lb_jws_key_new();
    if (a->cert_key == NULL || lb_acme_csr(a->cur->name, a->cert_key, &csr) < 0) {
        lb_acme_fail(a, "making the key and CSR for %s failed", a->cur->name);
        return;
    }
    int n = asprintf(&body, "{\"csr\":\"%s\"}", csr);
    free(csr);
    if (n < 0) {
        lb_acme_fail(a, "out of memory");
        return;
    }
    lb_acme_post(a, a->finalize, body, NULL, lb_acme_finalize_answer);
    free(body);
}

static void lb_acme_chal_drop(struct lb_acme *a)
{
    if (a->chal == NULL)
        return;
    if (a->chal_put)
        lb_shm_acme_challenge_del(lb_shm_acme(a->shm), a->chal->token);
    OPENSSL_cleanse(a->chal, sizeof(*a->chal));
    free(a->chal);
    a->chal = NULL;
    a->chal_put = false;
}

static void lb_acme_authz_validated(struct lb_acme *a)
{
    struct lb_acme_resp *r = a->r;
    const char *want = lb_acme_challenge_names[a->ac->challenge];
    lb_acme_chal_drop(a);
    if (strcmp(a->status, "valid") != 0) {
        /* The challenge's error says why (connection refused, wrong answer). */
        char detail[256] = "";
        for (const struct lb_json *ch = lb_json_elems(lb_json_get(r->json, "challenges")); ch;
             ch = ch->next)
            if (lb_json_get_str(lb_json_get(ch, "error"), "detail", detail, sizeof(detail)))
                break;
        if (*detail == '\0' && !a->reread) {
            /* The server may mark the authorization invalid a moment
             * before it holds the challenge's error: read it once more. */
            a->reread = true;
            lb_acme_poll(a, a->authz[a->iauth], false, lb_acme_authz_validated);
            return;
        }
        lb_acme_fail(a, "%s for %s: authorization %s%s%s", want, a->cur->name, a->status,
                     *detail ? ": " : "", detail);
        return;
    }
    a->iauth++;
    lb_acme_next_authz(a);
}

static void lb_acme_challenge_answer(struct lb_acme *a)
{
    if (a->r->status != 200) {
        lb_acme_problem(a, "challenge", a->r);
        return;
    }
    a->reread = false;
    lb_acme_poll(a, a->authz[a->iauth], false, lb_acme_authz_validated);
}

/* An authorization: valid already (reused), or its challenge of our type
 * put in shm for the workers and the server told to validate it. */
static void lb_acme_authz_answer(struct lb_acme *a)
{
    struct lb_acme_resp *r = a->r;
    const char *name = a->cur->name;
    if (r->status != 200) {
        lb_acme_problem(a, "authorization", r);
        return;
    }
    lb_json_get_str(r->json, "status", a->status, sizeof(a->status));
    if (strcmp(a->status, "valid") == 0) {
        a->iauth++;
        lb_acme_next_authz(a);
        return;
    }
    const char *want = lb_acme_challenge_names[a->ac->challenge];
    struct lb_shm_acme_challenge *c = calloc(1, sizeof(*c));
    char url[LB_ACME_URL_MAX] = "";
    if (c == NULL) {
        lb_acme_fail(a, "out of memory");
        return;
    }
    a->chal = c;
    for (const struct lb_json *ch = lb_json_elems(lb_json_get(r->json, "challenges")); ch;
         ch = ch->next) {
        char type[32];
        lb_json_get_str(ch, "type", type, sizeof(type));
        if (strcmp(type, want) == 0 && lb_json_get_str(ch, "url", url, sizeof(url)) &&
            lb_json_get_str(ch, "token", c->token, sizeof(c->token)))
            break;
        url[0] = '\0';
    }
    if (url[0] == '\0' || c->token[0] == '\0') {
        lb_acme_fail(a, "authorization for %s offers no %s challenge", name, want);
        return;
    }
    for (const char *p = c->token; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_')) {
            lb_acme_fail(a, "challenge token for %s is not base64url", name);
            return;
        }
    c->type = a->ac->challenge;
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->keyauth, sizeof(c->keyauth), "%s.%s", c->token, a->thumb);
    if (c->type == LB_ACME_TLSALPN01 && lb_acme_alpn_cert(c) < 0) {
        lb_acme_fail(a, "making the TLS-ALPN-01 certificate for %s failed", name);
        return;
    }
    lb_shm_acme_challenge_put(lb_shm_acme(a->shm), c);
    a->chal_put = true;
    lb_acme_post(a, url, "{}", NULL, lb_acme_challenge_answer);
}

static void lb_acme_next_authz(struct lb_acme *a)
{
    if (a->iauth >= a->nauth) {
        lb_acme_finalize(a);
        return;
    }
    lb_acme_post(a, a->authz[a->iauth], NULL, NULL, lb_acme_authz_answer);
}

static void lb_acme_new_order_answer(struct lb_acme *a)
{
    struct lb_acme_resp *r = a->r;
    if (r->status != 201 || r->location[0] == '\0') {
        lb_acme_problem(a, "newOrder", r);
        return;
    }
    snprintf(a->order, sizeof(a->order), "%s", r->location);
    if (!lb_json_get_str(r->json, "finalize", a->finalize, sizeof(a->finalize))) {
        lb_acme_fail(a, "order %s has no finalize URL", a->order);
        return;
    }
    const struct lb_json *list = lb_json_elems(lb_json_get(r->json, "authorizations"));
    a->nauth = 0;
    for (const struct lb_json *e = list; e != NULL; e = e->next)
        a->nauth++;
    a->authz = calloc((size_t)a->nauth + 1, sizeof(*a->authz));
    if (a->authz == NULL) {
        lb_acme_fail(a, "out of memory");
        return;
    }
    for (int i = 0; list != NULL; list = list->next, i++)
        lb_json_copy_str(list, a->authz[i], sizeof(a->authz[i]));
    a->iauth = 0;
    lb_acme_next_authz(a);
}

static void lb_acme_new_order(struct lb_acme *a)
{
    char payload[LB_ACME_NAME_MAX + 64];
    snprintf(payload, sizeof(payload), "{\"identifiers\":[{\"type\":\"dns\",\"value\":\"%s\"}]}",
             a->cur->name);
    lb_acme_post(a, a->new_order, payload, NULL, lb_acme_new_order_answer);
}

static void lb_acme_account_answer(struct lb_acme *a)
{
    struct lb_acme_resp *r = a->r;
    if ((r->status != 200 && r->status != 201) || r->location[0] == '\0') {
        lb_acme_problem(a, "newAccount", r);
        return;
    }
    snprintf(a->kid, sizeof(a->kid), "%s", r->location);
    lb_log_info("acme: account %s (%s)", a->kid, r->status == 201 ? "created" : "existing");
    lb_acme_new_order(a);
}

static void lb_acme_account(struct lb_acme *a)
{
    if (a->kid[0] != '\0') {
        lb_acme_new_order(a);
        return;
    }
    char payload[512];
    if (a->ac->email != NULL)
        snprintf(payload, sizeof(payload),
                 "{\"termsOfServiceAgreed\":true,\"contact\":[\"mailto:%s\"]}", a->ac->email);
    else
        snprintf(payload, sizeof(payload), "{\"termsOfServiceAgreed\":true}");
    lb_acme_post(a, a->new_account, payload, NULL, lb_acme_account_answer);
}

static void lb_acme_directory_answer(struct lb_acme *a)
{
    struct lb_acme_resp *r = a->r;
    if (!a->answer_ok) {
        lb_acme_done(a, -1);
        return;
    }
    if (r->status != 200) {
        lb_acme_problem(a, "directory", r);
        return;
    }
    if (!lb_json_get_str(r->json, "newNonce", a->new_nonce, sizeof(a->new_nonce)) ||
        !lb_json_get_str(r->json, "newAccount", a->new_account, sizeof(a->new_account)) ||
        !lb_json_get_str(r->json, "newOrder", a->new_order, sizeof(a->new_order))) {
        a->new_order[0] = '\0';
        lb_acme_fail(a, "directory %s: no newNonce, newAccount or newOrder", a->ac->directory);
        return;
    }
    lb_acme_account(a);
}

/* ---- going live ------------------------------------------------------------ */

static void lb_acme_publish(struct lb_acme *a)
{
    struct lb_shm_acme_name out[LB_ACME_MAX_NAMES];
    uint32_t k = 0;
    memset(out, 0, sizeof(out));
    for (size_t i = 0; i < a->nnames && k < LB_ACME_MAX_NAMES; i++, k++) {
        const struct lb_acme_name *n = &a->names[i];
        snprintf(out[k].name, sizeof(out[k].name), "%s", n->name);
        out[k].state = n->state;
        out[k].not_after = n->not_after;
        out[k].renew_at = n->renew_at;
        memcpy(out[k].orders, n->orders, sizeof(out[k].orders));
        snprintf(out[k].error, sizeof(out[k].error), "%s", n->error);
    }
    lb_shm_acme_names_set(lb_shm_acme(a->shm), out, k);
}

/* N's new certificate goes live: every listener with the name gets a new
 * cert_generation (its workers load the files again at their next
 * handshake), and its subject and expiry for /status and the metrics. */
static void lb_acme_golive(struct lb_acme *a, const struct lb_acme_name *n)
{
    for (size_t i = 0; i < a->cfg->nlisteners; i++) {
        const struct lb_tls_cfg *t = a->cfg->listeners[i].tls;
        if (t == NULL)
            continue;
        for (size_t c = 0; c < t->ncerts; c++) {
            if (t->certs[c].acme_name == NULL || strcmp(t->certs[c].acme_name, n->name) != 0)
                continue;
            struct lb_shm_tls *st = lb_shm_tls(a->shm, t->shm_id);
            lb_shm_tls_cert_set(st, (uint32_t)c, n->subject, n->not_after);
            uint64_t g = atomic_fetch_add(&st->cert_generation, 1) + 1;
            lb_log_info("acme: %s: certificate live on listener %s (generation %llu)", n->name,
                        a->cfg->listeners[i].address, (unsigned long long)g);
        }
    }
}


/* ---- scheduling ----------------------------------------------------------- */

static void lb_acme_tick(struct lb_acme *a);

/* What an order leaves behind, freed. */
static void lb_acme_order_clear(struct lb_acme *a)
{
    lb_acme_chal_drop(a);
    free(a->authz);
    a->authz = NULL;
    a->nauth = a->iauth = 0;
    EVP_PKEY_free(a->cert_key);
    a->cert_key = NULL;
    free(a->post_payload);
    a->post_payload = NULL;
    if (a->lock_fd >= 0)
        close(a->lock_fd);     /* the storage lock goes with it */
    a->lock_fd = -1;
    a->cur = NULL;
}

/* The order for a->cur ended: RC 0 with its certificate stored. */
static void lb_acme_done(struct lb_acme *a, int rc)
{
    struct lb_acme_name *n = a->cur;
    if (n == NULL)
        return;
    lb_acme_order_clear(a);
    enum lb_acme_result res = rc == 0 ? LB_ACME_ORDER_VALID : LB_ACME_ORDER_FAILED;
    n->orders[res]++;
    atomic_fetch_add(&lb_shm_acme(a->shm)->orders[res], 1);
    if (rc == 0 && lb_acme_stored(n) == 0) {
        lb_acme_schedule(a, n);
        n->state = LB_ACME_VALID;
        n->backoff_s = 0;
        n->error[0] = '\0';
        char when[32], renew[32];
        time_t na = (time_t)n->not_after, ra = (time_t)n->renew_at;
        struct tm tm;
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", gmtime_r(&na, &tm));
        strftime(renew, sizeof(renew), "%Y-%m-%d %H:%M:%S", gmtime_r(&ra, &tm));
        lb_log_info("acme: %s: certificate obtained, valid until %s UTC, renewal at %s UTC",
                    n->name, when, renew);
        lb_acme_golive(a, n);
    } else {
        if (rc == 0)
            snprintf(a->err, sizeof(a->err), "the stored certificate is unusable");
        n->backoff_s = n->backoff_s == 0 ? LB_ACME_BACKOFF_MIN_S
                       : n->backoff_s * 2 > LB_ACME_BACKOFF_MAX_S ? LB_ACME_BACKOFF_MAX_S
                       : n->backoff_s * 2;
        unsigned wait = a->retry_after > n->backoff_s && a->retry_after < 86400 ? a->retry_after
                                                                                 : n->backoff_s;
        n->renew_at = time(NULL) + wait;
        n->state = LB_ACME_FAILED;
        snprintf(n->error, sizeof(n->error), "%s", a->err);
        lb_log_warn("acme: %s: order failed (again in %us): %s", n->name, wait, a->err);
        /* Directory and account are fetched again next time (a new server?). */
        a->new_order[0] = '\0';
        a->kid[0] = '\0';
        a->nonce[0] = '\0';
        lb_acme_stored(n);      /* the expiry of the one still served, if any */
    }
    lb_acme_publish(a);
    lb_acme_after(a, 0, lb_acme_tick);      /* the next name due */
}

/* An order for N now, under the storage lock (a retiring control process
 * may be at it too). False when it did not start. */
static bool lb_acme_start_order(struct lb_acme *a, struct lb_acme_name *n)
{
    char lock[PATH_MAX];
    snprintf(lock, sizeof(lock), "%s/.lock", a->ac->storage);
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (fd >= 0)
            close(fd);
        n->renew_at = time(NULL) + 1;       /* another order holds it: soon again */
        return false;
    }
    /* Someone else may have renewed it meanwhile. */
    if (lb_acme_stored(n) == 0) {
        lb_acme_schedule(a, n);
        if (n->renew_at > time(NULL)) {
            n->state = LB_ACME_VALID;
            close(fd);
            return false;
        }
    }
    a->cur = n;
    a->lock_fd = fd;
    a->err[0] = '\0';
    a->retry_after = 0;
    n->state = LB_ACME_ORDERING;
    lb_acme_publish(a);
    lb_log_info("acme: %s: ordering a certificate (%s) from %s", n->name,
                lb_acme_challenge_names[a->ac->challenge], a->ac->directory);
    if (a->new_order[0] == '\0')
        lb_acme_request(a, a->ac->directory, NULL, false, NULL, lb_acme_directory_answer);
    else
        lb_acme_account(a);
    return true;
}

static int lb_acme_setup(struct lb_acme *a);

/* Order for the first name due, or sleep until one is. */
static void lb_acme_tick(struct lb_acme *a)
{
    if (a->cur != NULL || !lb_shm_generation_current(a->shm, a->generation))
        return;     /* an order under way; or a reload's control process took over */
    if (!a->ready)
        a->ready = lb_acme_setup(a) == 0;
    int64_t now = time(NULL), next = now + 3600;
    for (size_t i = 0; i < a->nnames; i++) {
        struct lb_acme_name *n = &a->names[i];
        if (n->renew_at <= now) {
            if (!a->ready) {
                n->state = LB_ACME_FAILED;
                snprintf(n->error, sizeof(n->error), "storage or account key unusable");
                n->renew_at = now + LB_ACME_BACKOFF_MAX_S;
            } else if (lb_acme_start_order(a, n)) {
                return;     /* lb_acme_done ticks again */
            }
        }
        if (n->renew_at < next)
            next = n->renew_at;
    }
    lb_acme_publish(a);
    lb_acme_after(a, next > now ? (uint64_t)(next - now) * 1000 : 0, lb_acme_tick);
}

static int lb_acme_setup(struct lb_acme *a)
{
    char err[512], path[PATH_MAX];
    if (mkdir(a->ac->storage, 0700) < 0 && errno != EEXIST) {
        lb_log_error("acme: cannot create storage %s: %s", a->ac->storage, strerror(errno));
        return -1;
    }
    /* Challenges of a control process that died in an order: with the
     * storage lock free, no order is under way. */
    snprintf(path, sizeof(path), "%s/.lock", a->ac->storage);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0)
        lb_shm_acme_challenges_clear(lb_shm_acme(a->shm));
    if (fd >= 0)
        close(fd);
    snprintf(path, sizeof(path), "%s/account.key", a->ac->storage);
    bool had = access(path, F_OK) == 0;
    EVP_PKEY_free(a->account);
    a->account = lb_jws_key_load(path, err, sizeof(err));
    if (a->account == NULL) {
        lb_log_error("acme: account key: %s", err);
        return -1;
    }
    if (!had)
        lb_log_info("acme: account key created in %s", path);
    if (lb_jws_jwk(a->account, a->jwk, sizeof(a->jwk)) < 0 ||
        lb_jws_thumbprint(a->jwk, a->thumb) < 0) {
        lb_log_error("acme: account key %s unusable", path);
        return -1;
    }
    return 0;
}

struct lb_acme *lb_acme_start(struct event_base *base, const struct lb_config *cfg,
                              struct lb_shm_header *shm)
{
    if (cfg->acme == NULL) {
        lb_shm_acme_names_set(lb_shm_acme(shm), NULL, 0);   /* a reload took them away */
        return NULL;
    }
    size_t total = 0;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        total += cfg->listeners[i].tls ? cfg->listeners[i].tls->nacme : 0;
    if (total == 0) {
        lb_shm_acme_names_set(lb_shm_acme(shm), NULL, 0);
        return NULL;
    }
    struct lb_acme *a = calloc(1, sizeof(*a));
    if (a == NULL || (a->names = calloc(total, sizeof(*a->names))) == NULL ||
        (a->r = calloc(1, sizeof(*a->r))) == NULL ||
        (a->timer = evtimer_new(base, lb_acme_timer_cb, a)) == NULL) {
        lb_log_error("acme: out of memory: no certificates obtained");
        lb_acme_stop(a);
        return NULL;
    }
    a->cfg = cfg;
    a->ac = cfg->acme;
    a->shm = shm;
    a->base = base;
    a->lock_fd = -1;
    a->generation = atomic_load(&shm->generation);
    /* Every acme name once, in the order of the listeners. */
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct lb_tls_cfg *t = cfg->listeners[i].tls;
        for (size_t k = 0; t != NULL && k < t->nacme; k++) {
            bool seen = false;
            for (size_t j = 0; j < a->nnames && !seen; j++)
                seen = strcmp(a->names[j].name, t->acme[k]) == 0;
            if (seen)
                continue;
            struct lb_acme_name *n = &a->names[a->nnames++];
            snprintf(n->name, sizeof(n->name), "%s", t->acme[k]);
            snprintf(n->path, sizeof(n->path), "%s/%s.pem", a->ac->storage, t->acme[k]);
        }
    }
    if (a->nnames > LB_ACME_MAX_NAMES)
        lb_log_warn("acme: %zu names; /status shows the first %d", a->nnames, LB_ACME_MAX_NAMES);
    if ((a->httpc = lb_httpc_new(base)) == NULL) {
        lb_log_error("acme: libcurl could not start: no certificates obtained");
        lb_acme_stop(a);
        return NULL;
    }
    int64_t now = time(NULL);
    for (size_t i = 0; i < a->nnames; i++) {
        struct lb_acme_name *n = &a->names[i];
        if (lb_acme_stored(n) == 0) {
            lb_acme_schedule(a, n);
            n->state = LB_ACME_VALID;
            if (n->renew_at > now)
                lb_log_info("acme: %s: stored certificate valid, renewal due in %llds", n->name,
                            (long long)(n->renew_at - now));
        } else {
            n->renew_at = now;
        }
    }
    lb_acme_publish(a);
    lb_acme_after(a, 0, lb_acme_tick);
    return a;
}

void lb_acme_stop(struct lb_acme *a)
{
    if (a == NULL)
        return;
    if (a->cur != NULL) {
        /* Stopped (a reload, a stop): not the CA's failure; the next
         * control process orders again. */
        lb_log_info("acme: %s: order interrupted by the stop", a->cur->name);
        lb_acme_order_clear(a);
    }
    lb_httpc_cancel(a->req);
    lb_httpc_free(a->httpc);
    if (a->timer != NULL)
        event_free(a->timer);
    if (a->r != NULL)
        lb_acme_resp_clear(a->r);
    free(a->r);
    EVP_PKEY_free(a->account);
    free(a->names);
    free(a);
}
