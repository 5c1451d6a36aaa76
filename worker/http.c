#include "worker/http.h"

#include <arpa/inet.h>
#include <string.h>

#include "shared/util.h"

/* Character classes (RFC 9110 §5.6.2 token, §5.5 field-value, RFC 3986
 * request-target), as bit sets over bytes. */
#define C_TCHAR   0x01u     /* token character */
#define C_VALUE   0x02u     /* field-value: VCHAR, obs-text, SP, HTAB */
#define C_TARGET  0x04u     /* request-target: visible ASCII */
#define C_HOST    0x08u     /* reg-name without pct-encoding (RFC 3986 3.2.2) */

static uint8_t lb_http_cc[256];

__attribute__((constructor)) static void lb_http_cc_init(void)
{
    for (int c = 0; c < 256; c++) {
        uint8_t f = 0;
        bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (alnum || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL))
            f |= C_TCHAR;
        if ((c >= 0x20 && c != 0x7f) || c == '\t')
            f |= C_VALUE;
        if (c > 0x20 && c < 0x7f)
            f |= C_TARGET;
        if (alnum || (c != 0 && strchr("-._~!$&'()*+,;=", c) != NULL))
            f |= C_HOST;
        lb_http_cc[c] = f;
    }
}

static inline bool lb_is(unsigned char c, uint8_t cls)
{
    return (lb_http_cc[c] & cls) != 0;
}

size_t lb_http_head_end(const char *buf, size_t len, size_t *scanned)
{
    /* Each LF (memchr is vectorised; memmem with a 4-byte needle is not)
     * is checked for the CRLF CRLF it may end. LFs before *SCANNED were
     * checked by an earlier call. */
    size_t k = *scanned > 3 ? *scanned : 3;
    while (k < len) {
        const char *lf = memchr(buf + k, '\n', len - k);
        if (lf == NULL)
            break;
        if (memcmp(lf - 3, "\r\n\r", 3) == 0)
            return (size_t)(lf - buf) + 1;
        k = (size_t)(lf - buf) + 1;
    }
    *scanned = len;
    return 0;
}

int lb_http_check_partial(const char *buf, size_t len, const struct lb_http_limits *lim)
{
    for (const char *lf = memchr(buf, '\n', len); lf != NULL;
         lf = memchr(lf + 1, '\n', len - (size_t)(lf + 1 - buf)))
        if (lf == buf || lf[-1] != '\r')
            return 400;
    /* The request line's length is measured up to its CR, as in the parser. */
    const char *eol = memchr(buf, '\r', len < lim->max_request_line + 1 ? len : lim->max_request_line + 1);
    if (eol == NULL && len > lim->max_request_line)
        return 414;
    if (len > lim->max_head)
        return 431;
    return 0;
}

/* Parse "HTTP/1.x" at P; returns the minor version, -1 malformed, -2 other
 * (well-formed but unsupported) version. */
static int lb_http_version(const char *p, const char *end)
{
    if (end - p < 8 || memcmp(p, "HTTP/", 5) != 0)
        return -1;
    if (p[5] < '0' || p[5] > '9' || p[6] != '.' || p[7] < '0' || p[7] > '9')
        return -1;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return -2;
    return p[7] - '0';
}

/* Parse header lines from P up to the blank line. Returns 0 or a status. */
static int lb_http_parse_fields(const char *p, const char *end, struct lb_http_msg *m,
                                size_t max_headers)
{
    /* END points at the CRLF of the blank line. */
    while (p < end) {
        if (*p == ' ' || *p == '\t')
            return 400;                 /* obs-fold */
        const char *name = p;
        while (p < end && lb_is((unsigned char)*p, C_TCHAR))
            p++;
        if (p == name || p >= end || *p != ':')
            return 400;                 /* empty name, bad byte, or space before ':' */
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *value = p;
        while (p < end && lb_is((unsigned char)*p, C_VALUE))
            p++;
        /* Only CRLF may end the value: a bare CR, LF, NUL or CTL is refused. */
        if (p >= end || p[0] != '\r' || p[1] != '\n')
            return 400;
        const char *vend = p;
        while (vend > value && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        if (m->nheaders == max_headers)
            return 431;
        if (name_len > UINT32_MAX || (size_t)(vend - value) > UINT32_MAX)
            return 431;
        m->headers[m->nheaders++] = (struct lb_http_header){
            .name = name, .name_len = (uint32_t)name_len,
            .value = value, .value_len = (uint32_t)(vend - value),
        };
        p += 2;
    }
    return 0;
}

static bool lb_is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* IP-literal without its brackets: IPv6address or IPvFuture (RFC 3986
 * 3.2.2). No zone identifier. */
static bool lb_ip_literal_valid(const char *p, size_t len)
{
    if (len > 1 && (p[0] == 'v' || p[0] == 'V')) {
        /* "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ) */
        size_t i = 1;
        while (i < len && lb_is_hex((unsigned char)p[i]))
            i++;
        if (i == 1 || i >= len || p[i] != '.' || ++i == len)
            return false;
        for (; i < len; i++)
            if (!lb_is((unsigned char)p[i], C_HOST) && p[i] != ':')
                return false;
        return true;
    }
    char buf[INET6_ADDRSTRLEN];
    unsigned char addr[16];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, p, len);
    buf[len] = '\0';
    return inet_pton(AF_INET6, buf, addr) == 1;
}

/* An authority as lbd routes by it and passes it on as Host:
 * host [ ":" port ], host = IP-literal / IPv4address / reg-name (RFC 3986
 * 3.2.2; an IPv4address is a reg-name too). Stricter than the grammar: the
 * host is not empty, reg-names carry no percent-encoding (routes match the
 * literal name: a backend that decoded it would see another host), and a
 * port has at most 5 digits, at most 65535. */
static bool lb_http_authority_valid(const char *s, size_t len)
{
    const char *p = s, *end = s + len;
    if (len > 0 && *p == '[') {
        const char *close = memchr(p, ']', len);
        if (close == NULL || !lb_ip_literal_valid(p + 1, (size_t)(close - p - 1)))
            return false;
        p = close + 1;
    } else {
        while (p < end && lb_is((unsigned char)*p, C_HOST))
            p++;
        if (p == s)
            return false;
    }
    if (p == end)
        return true;
    if (*p++ != ':' || end - p > 5)
        return false;
    unsigned port = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false;
        port = port * 10 + (unsigned)(*p - '0');
    }
    return port <= 65535;
}

static bool lb_hdr_is(const struct lb_http_header *h, const char *lower)
{
    return lb_str_ieq(h->name, h->name_len, lower);
}

/* Iterate comma-separated tokens of a header value. */
struct lb_tok {
    const char *p, *end;
};

static bool lb_tok_next(struct lb_tok *t, const char **tok, size_t *len)
{
    while (t->p < t->end) {
        while (t->p < t->end && (*t->p == ' ' || *t->p == '\t' || *t->p == ','))
            t->p++;
        const char *s = t->p;
        while (t->p < t->end && *t->p != ',')
            t->p++;
        const char *e = t->p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > s) {
            *tok = s;
            *len = (size_t)(e - s);
            return true;
        }
    }
    return false;
}

static bool lb_token_valid(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!lb_is((unsigned char)s[i], C_TCHAR))
            return false;
    return len > 0;
}

/* Content-Length: 1*DIGIT, nothing else (no sign, no list, no spaces). */
static bool lb_parse_length(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 18)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

#define LB_MSG_CONN_OTHER 0x100u        /* Connection names other headers */

/* Classify headers and derive framing. Returns 0 or an error status. */
static int lb_http_semantics(struct lb_http_msg *m, bool request)
{
    bool have_cl = false, have_te = false, te_chunked_last = false;
    int te_chunked_seen = 0;

    m->host = -1;
    for (size_t i = 0; i < m->nheaders; i++) {
        struct lb_http_header *h = &m->headers[i];
        switch (h->name_len) {
        case 4:
            if (lb_hdr_is(h, "host")) {
                /* Empty when the target has no authority (RFC 9112 3.2). */
                if (m->host >= 0 ||
                    (h->value_len > 0 && !lb_http_authority_valid(h->value, h->value_len)))
                    return 400;
                m->host = (int)i;
            }
            break;
        case 2:
            if (lb_hdr_is(h, "te"))
                h->flags |= LB_HDR_HOP_BY_HOP;
            break;
        case 9:
            if (lb_hdr_is(h, "forwarded"))
                h->flags |= LB_HDR_FORWARDED;
            break;
        case 12:
            if (lb_hdr_is(h, "x-request-id") && m->request_id < 0)
                m->request_id = (int)i;
            break;
        case 6:
            if (lb_hdr_is(h, "expect") && request &&
                lb_str_ieq(h->value, h->value_len, "100-continue"))
                m->flags |= LB_MSG_EXPECT_CONTINUE;
            break;
        case 7:
            if (lb_hdr_is(h, "upgrade")) {
                h->flags |= LB_HDR_HOP_BY_HOP;
                if (m->upgrade >= 0)
                    return 400;
                m->upgrade = (int)i;
            }
            break;
        case 10:
            if (lb_hdr_is(h, "connection")) {
                h->flags |= LB_HDR_HOP_BY_HOP;
                struct lb_tok t = { h->value, h->value + h->value_len };
                const char *tok;
                size_t len;
                while (lb_tok_next(&t, &tok, &len)) {
                    if (lb_str_ieq(tok, len, "close"))
                        m->flags |= LB_MSG_CONN_CLOSE;
                    else if (lb_str_ieq(tok, len, "keep-alive"))
                        m->flags |= LB_MSG_CONN_KEEPALIVE;
                    else if (lb_str_ieq(tok, len, "upgrade"))
                        m->flags |= LB_MSG_CONN_UPGRADE;
                    else
                        m->flags |= LB_MSG_CONN_OTHER;
                }
            } else if (lb_hdr_is(h, "keep-alive")) {
                h->flags |= LB_HDR_HOP_BY_HOP;
            }
            break;
        case 14:
            if (lb_hdr_is(h, "content-length")) {
                uint64_t v;
                if (!lb_parse_length(h->value, h->value_len, &v))
                    return 400;
                if (have_cl && v != m->content_length)
                    return 400;
                h->flags |= have_cl ? LB_HDR_DUPLICATE | LB_HDR_FRAMING : LB_HDR_FRAMING;
                have_cl = true;
                m->content_length = v;
            }
            break;
        case 15:
            if (lb_hdr_is(h, "x-forwarded-for"))
                h->flags |= LB_HDR_FORWARDED;
            break;
        case 16:
            if (lb_hdr_is(h, "proxy-connection"))
                h->flags |= LB_HDR_HOP_BY_HOP;
            break;
        case 17:
            if (lb_hdr_is(h, "transfer-encoding")) {
                h->flags |= LB_HDR_FRAMING;
                have_te = true;
                struct lb_tok t = { h->value, h->value + h->value_len };
                const char *tok;
                size_t len;
                bool any = false;
                while (lb_tok_next(&t, &tok, &len)) {
                    any = true;
                    if (!lb_token_valid(tok, len))
                        return 400;     /* parameters on codings: refused */
                    te_chunked_last = lb_str_ieq(tok, len, "chunked");
                    te_chunked_seen += te_chunked_last;
                }
                if (!any)
                    return 400;
            } else if (lb_hdr_is(h, "x-forwarded-proto")) {
                h->flags |= LB_HDR_FORWARDED;
            }
            break;
        case 19:
            if (lb_hdr_is(h, "proxy-authorization"))
                h->flags |= LB_HDR_HOP_BY_HOP;
            break;
        default:
            break;
        }
    }

    if (have_te) {
        /* Both framings: the classic smuggling vector. Chunked twice, or
         * chunked not last: the length is not reliably known. */
        if (have_cl || te_chunked_seen > 1 || (te_chunked_seen == 1 && !te_chunked_last))
            return 400;
        if (!te_chunked_last) {
            if (request)
                return 400;
            m->body = LB_BODY_CLOSE;
        } else {
            if (m->version_minor == 0 && request)
                return 400;
            m->body = LB_BODY_CHUNKED;
        }
    } else if (have_cl) {
        m->body = m->content_length > 0 ? LB_BODY_LENGTH : LB_BODY_NONE;
    } else {
        m->body = request ? LB_BODY_NONE : LB_BODY_CLOSE;
    }

    if (m->flags & LB_MSG_CONN_OTHER) {
        /* Headers named in Connection are hop-by-hop too, except those lbd
         * frames or routes by: dropping Content-Length or Transfer-Encoding
         * would let the backend read the body as another request, dropping
         * Host would route there by something else than here. A request
         * asking for that is refused; a response's token is ignored. */
        for (size_t i = 0; i < m->nheaders; i++) {
            struct lb_http_header *h = &m->headers[i];
            if (!lb_http_named_by_connection(m, h))
                continue;
            if ((h->flags & LB_HDR_FRAMING) || (int)i == m->host) {
                if (request)
                    return 400;
                continue;
            }
            h->flags |= LB_HDR_HOP_BY_HOP;
            if ((int)i == m->request_id)
                m->request_id = -1;     /* not passed on: one is generated */
        }
    }
    return 0;
}

bool lb_http_named_by_connection(const struct lb_http_msg *m, const struct lb_http_header *h)
{
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct lb_http_header *c = &m->headers[i];
        if (c->name_len != 10 || !lb_hdr_is(c, "connection"))
            continue;
        struct lb_tok t = { c->value, c->value + c->value_len };
        const char *tok;
        size_t len;
        while (lb_tok_next(&t, &tok, &len)) {
            if (len != h->name_len)
                continue;
            bool eq = true;
            for (size_t k = 0; k < len && eq; k++) {
                char a = tok[k], b = h->name[k];
                if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
                if (b >= 'A' && b <= 'Z') b = (char)(b - 'A' + 'a');
                eq = a == b;
            }
            if (eq)
                return true;
        }
    }
    return false;
}

static void lb_http_msg_reset(struct lb_http_msg *m)
{
    struct lb_http_header *hdrs = m->headers;
    size_t max = m->max_headers;
    memset(m, 0, sizeof(*m));
    m->headers = hdrs;
    m->max_headers = max;
    m->host = -1;
    m->request_id = -1;
    m->upgrade = -1;
}

bool lb_http_absolute_target(const char *target, size_t len, const char **auth,
                             size_t *auth_len, const char **path, size_t *path_len)
{
    size_t skip;
    if (len > 7 && lb_str_ieq(target, 7, "http://"))
        skip = 7;
    else if (len > 8 && lb_str_ieq(target, 8, "https://"))
        skip = 8;
    else
        return false;
    const char *a = target + skip, *end = target + len;
    const char *p = a;
    while (p < end && *p != '/' && *p != '?')
        p++;
    *auth = a;
    *auth_len = (size_t)(p - a);
    /* "http://h" and "http://h?q" have the path "/" (RFC 9112 3.2.1): the
     * caller adds it before a query. */
    *path = p == end ? "/" : p;
    *path_len = p == end ? 1 : (size_t)(end - p);
    return true;
}

int lb_http_parse_request(const char *buf, size_t head_len, struct lb_http_msg *m,
                          const struct lb_http_limits *lim)
{
    lb_http_msg_reset(m);
    if (head_len > lim->max_head)
        return 431;
    const char *p = buf, *end = buf + head_len - 2;

    const char *eol = memchr(buf, '\r', head_len);
    if (eol == NULL)
        return 400;
    if ((size_t)(eol - buf) > lim->max_request_line)
        return 414;

    m->method = p;
    while (p < eol && lb_is((unsigned char)*p, C_TCHAR))
        p++;
    if (p == m->method || p >= eol || *p != ' ')
        return 400;
    m->method_len = (uint32_t)(p - m->method);
    p++;
    m->target = p;
    while (p < eol && lb_is((unsigned char)*p, C_TARGET))
        p++;
    if (p == m->target || p >= eol || *p != ' ')
        return 400;
    m->target_len = (uint32_t)(p - m->target);
    p++;
    if (eol - p != 8)
        return 400;
    int minor = lb_http_version(p, eol);
    if (minor == -2)
        return 505;
    if (minor < 0)
        return 400;
    m->version_minor = minor;
    if (eol[1] != '\n')
        return 400;

    /* Request-target forms: origin ("/..."), asterisk ("*" with OPTIONS),
     * absolute ("http://..."). CONNECT's authority form is not proxied. */
    bool options = m->method_len == 7 && memcmp(m->method, "OPTIONS", 7) == 0;
    if (m->method_len == 7 && memcmp(m->method, "CONNECT", 7) == 0)
        return 501;
    if (m->target[0] == '*') {
        if (m->target_len != 1 || !options)
            return 400;
    } else if (m->target[0] != '/') {
        const char *auth, *path;
        size_t alen, plen;
        /* Userinfo ('@') is not sent to a proxy; an empty host is
         * invalid in an http URI (RFC 9110 4.2.1). */
        if (!lb_http_absolute_target(m->target, m->target_len, &auth, &alen, &path, &plen) ||
            !lb_http_authority_valid(auth, alen))
            return 400;
    }
    if (m->method_len == 4 && memcmp(m->method, "HEAD", 4) == 0)
        m->flags |= LB_MSG_HEAD | LB_MSG_SAFE;
    else if ((m->method_len == 3 && memcmp(m->method, "GET", 3) == 0) || options ||
             (m->method_len == 5 && memcmp(m->method, "TRACE", 5) == 0))
        m->flags |= LB_MSG_SAFE;
    else if ((m->method_len == 3 && memcmp(m->method, "PUT", 3) == 0) ||
             (m->method_len == 6 && memcmp(m->method, "DELETE", 6) == 0))
        m->flags |= LB_MSG_IDEMPOTENT;

    size_t max = m->max_headers < lim->max_headers ? m->max_headers : lim->max_headers;
    int rc = lb_http_parse_fields(eol + 2, end, m, max);
    if (rc != 0)
        return rc;
    rc = lb_http_semantics(m, true);
    if (rc != 0)
        return rc;
    if (m->version_minor == 1 && m->host < 0)
        return 400;                     /* RFC 9112 §3.2: Host is required */
    m->head_len = head_len;
    return 0;
}

int lb_http_parse_response(const char *buf, size_t head_len, struct lb_http_msg *m,
                           bool head_request, const struct lb_http_limits *lim)
{
    lb_http_msg_reset(m);
    if (head_len > lim->max_head)
        return -1;
    const char *end = buf + head_len - 2;
    const char *eol = memchr(buf, '\r', head_len);
    if (eol == NULL || eol[1] != '\n')
        return -1;
    int minor = lb_http_version(buf, eol);
    if (minor < 0)
        return -1;
    m->version_minor = minor;
    const char *p = buf + 8;
    if (eol - p < 4 || p[0] != ' ')
        return -1;
    p++;
    int status = 0;
    for (int i = 0; i < 3; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        status = status * 10 + (p[i] - '0');
    }
    if (status < 100 || status > 599)
        return -1;
    m->status = status;
    p += 3;
    if (p < eol) {
        if (*p != ' ')
            return -1;
        p++;
        m->reason = p;
        while (p < eol && lb_is((unsigned char)*p, C_VALUE))
            p++;
        if (p != eol)
            return -1;
        m->reason_len = (uint32_t)(eol - m->reason);
    }
    size_t max = m->max_headers < lim->max_headers ? m->max_headers : lim->max_headers;
    if (lb_http_parse_fields(eol + 2, end, m, max) != 0)
        return -1;
    if (lb_http_semantics(m, false) != 0)
        return -1;
    if (head_request || status < 200 || status == 204 || status == 304)
        m->body = LB_BODY_NONE;
    m->head_len = head_len;
    return 0;
}

/* Chunked framing: RFC 9112 §7.1.
 *   chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 *   last-chunk = 1*"0" [ chunk-ext ] CRLF, then trailer fields, then CRLF */
enum {
    CH_SIZE,            /* hex digits */
    CH_EXT,             /* after ';' until CR */
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER,         /* start of a trailer line (or the final CRLF) */
    CH_TRAILER_FIELD,   /* inside a trailer line */
    CH_TRAILER_LF,
    CH_FINAL_LF,
    CH_DONE,
};

void lb_chunked_init(struct lb_chunked *c)
{
    memset(c, 0, sizeof(*c));
    c->state = CH_SIZE;
}

bool lb_chunked_done(const struct lb_chunked *c)
{
    return c->state == CH_DONE;
}

uint64_t lb_chunked_data_left(const struct lb_chunked *c)
{
    return c->state == CH_DATA ? c->remaining : 0;
}

void lb_chunked_skip(struct lb_chunked *c, uint64_t n)
{
    if (c->state != CH_DATA || n > c->remaining)
        return;
    c->remaining -= n;
    c->data_bytes += n;
    if (c->remaining == 0)
        c->state = CH_DATA_CR;
}

static int lb_hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

ssize_t lb_chunked_feed(struct lb_chunked *c, const char *p, size_t len)
{
    size_t i = 0;
    while (i < len && c->state != CH_DONE) {
        unsigned char ch = (unsigned char)p[i];
        switch (c->state) {
        case CH_SIZE: {
            int v = lb_hexval(ch);
            if (v >= 0) {
                /* At most 16 hex digits, leading zeros included: a backend
                 * that reads no more (Go's net/http) must see the framing
                 * lbd saw, and RFC 9112 leaves the zeros' count open. The
                 * value stays below 2^60: far beyond any body, far below
                 * overflow. */
                if (c->digits == LB_CHUNKED_MAX_DIGITS || (c->remaining >> 56))
                    return -1;
                c->remaining = (c->remaining << 4) | (uint64_t)v;
                c->digits++;
            } else if (c->digits == 0) {
                return -1;
            } else if (ch == ';') {
                c->state = CH_EXT;
            } else if (ch == '\r') {
                c->state = CH_SIZE_LF;
            } else {
                return -1;      /* no whitespace, no junk after the size */
            }
            break;
        }
        case CH_EXT:
            /* Extensions are passed on, never interpreted; only bytes that
             * could end the line differently are refused. */
            if (ch == '\r')
                c->state = CH_SIZE_LF;
            else if (!lb_is(ch, C_VALUE))
                return -1;
            break;
        case CH_SIZE_LF:
            if (ch != '\n')
                return -1;
            c->digits = 0;
            c->line_len = 0;
            c->state = c->remaining == 0 ? CH_TRAILER : CH_DATA;
            break;
        case CH_DATA: {
            uint64_t n = len - i;
            if (n > c->remaining)
                n = c->remaining;
            c->remaining -= n;
            c->data_bytes += n;
            i += (size_t)n;
            if (c->remaining == 0)
                c->state = CH_DATA_CR;
            continue;
        }
        case CH_DATA_CR:
            if (ch != '\r')
                return -1;
            c->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (ch != '\n')
                return -1;
            c->state = CH_SIZE;
            break;
        case CH_TRAILER:
            if (ch == '\r') {
                c->state = CH_FINAL_LF;
            } else if (lb_is(ch, C_TCHAR)) {
                c->state = CH_TRAILER_FIELD;
            } else {
                return -1;
            }
            break;
        case CH_TRAILER_FIELD:
            if (ch == '\r')
                c->state = CH_TRAILER_LF;
            else if (!lb_is(ch, C_VALUE) && ch != ':')
                return -1;
            break;
        case CH_TRAILER_LF:
            if (ch != '\n')
                return -1;
            c->state = CH_TRAILER;
            break;
        case CH_FINAL_LF:
            if (ch != '\n')
                return -1;
            c->state = CH_DONE;
            break;
        default:
            return -1;
        }
        i++;
        if (c->state == CH_SIZE || c->state == CH_EXT) {
            if (++c->line_len > LB_CHUNKED_MAX_LINE)
                return -1;
        } else if (c->state >= CH_TRAILER && c->state <= CH_TRAILER_LF) {
            if (++c->trailer_len > LB_CHUNKED_MAX_TRAILER)
                return -1;
        }
    }
    return (ssize_t)i;
}
