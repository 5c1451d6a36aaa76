/* Strict HTTP/1.1 message-head parser and chunked-body framer (RFC 9112).
 *
 * Zero-copy: the parser fills a caller-supplied array of headers whose
 * pointers point into the caller's buffer, allocates nothing and has no
 * libevent dependency (unit tests and the fuzzer drive it alone). It parses a
 * head once it is complete: lb_http_head_end() finds the end incrementally, so
 * a slow client costs a scan of its new bytes only.
 *
 * Strictness is the point: whatever lbd accepts it re-serialises itself, and
 * everything a backend might read differently (CL+TE, duplicate lengths,
 * obs-fold, bare CR/LF, whitespace before ':', control bytes) is refused.
 */
#ifndef LB_HTTP_H
#define LB_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct lb_http_header {
    const char *name;
    const char *value;          /* trimmed of surrounding OWS */
    uint32_t name_len;
    uint32_t value_len;
    uint32_t flags;             /* LB_HDR_* */
};

/* Headers lbd itself rewrites or drops when forwarding. */
#define LB_HDR_HOP_BY_HOP   0x1u    /* Connection, Keep-Alive, TE, Upgrade, ... */
#define LB_HDR_FRAMING      0x2u    /* Content-Length, Transfer-Encoding */
#define LB_HDR_FORWARDED    0x4u    /* X-Forwarded-For/-Proto, Forwarded: ours */
#define LB_HDR_DUPLICATE    0x8u    /* repeat of an identical Content-Length */
#define LB_HDR_STICKY       0x10u   /* a Cookie holding lbd's sticky cookie: stripped (worker/sticky.h) */

enum lb_http_body {
    LB_BODY_NONE,
    LB_BODY_LENGTH,             /* content_length bytes */
    LB_BODY_CHUNKED,
    LB_BODY_CLOSE,              /* responses only: until the backend closes */
};

/* Message flags. */
#define LB_MSG_CONN_CLOSE       0x01u
#define LB_MSG_CONN_KEEPALIVE   0x02u
#define LB_MSG_CONN_UPGRADE     0x04u
#define LB_MSG_EXPECT_CONTINUE  0x08u
#define LB_MSG_HEAD             0x10u   /* request method is HEAD */
#define LB_MSG_SAFE             0x20u   /* GET, HEAD, OPTIONS, TRACE: may be retried */
#define LB_MSG_IDEMPOTENT       0x40u   /* PUT, DELETE: idempotent, not safe (RFC 9110 9.2.2) */

struct lb_http_limits {
    size_t max_request_line;    /* 414 beyond */
    size_t max_head;            /* 431 beyond (request line included) */
    size_t max_headers;         /* 431 beyond; at most the array size */
};

struct lb_http_msg {
    /* Request line. */
    const char *method;
    const char *target;
    uint32_t method_len;
    uint32_t target_len;
    /* Status line. */
    int status;
    const char *reason;
    uint32_t reason_len;

    int version_minor;          /* HTTP/1.x */
    size_t head_len;            /* bytes up to and including the blank line */
    struct lb_http_header *headers;     /* caller-supplied */
    size_t nheaders;
    size_t max_headers;         /* capacity of headers[] */
    int host;                   /* index of Host, or -1 */
    int request_id;             /* index of X-Request-Id, or -1 */
    int upgrade;                /* index of Upgrade, or -1 */
    enum lb_http_body body;
    uint64_t content_length;
    uint32_t flags;
};

/* Results of the parse functions besides a positive head length. */
#define LB_HTTP_AGAIN 0         /* head not complete yet */

/* Find the end of a head ("\r\n\r\n") in BUF[0..LEN). *SCANNED carries the
 * position between calls (start at 0). Returns the head length or 0. */
size_t lb_http_head_end(const char *buf, size_t len, size_t *scanned);

/* Parse a complete request head of HEAD_LEN bytes (from lb_http_head_end).
 * Returns 0 with M filled, or the HTTP status to answer (400, 414, 431, 501,
 * 505). M->headers / M->max_headers must be set by the caller. */
int lb_http_parse_request(const char *buf, size_t head_len, struct lb_http_msg *m,
                          const struct lb_http_limits *lim);

/* Status to answer before a head is complete: 400 for a bare LF (it can
 * only ever be refused, so waiting would just hold the connection), 414
 * if the request line alone is already too long, 431 beyond the head size,
 * 0 while all is well. */
int lb_http_check_partial(const char *buf, size_t len, const struct lb_http_limits *lim);

/* Parse a complete response head. HEAD_REQUEST: the request was HEAD (no body
 * whatever the headers say). Returns 0, or -1 for a malformed response. */
int lb_http_parse_response(const char *buf, size_t head_len, struct lb_http_msg *m,
                           bool head_request, const struct lb_http_limits *lim);

/* Split an absolute-form target ("http://host:port/p?q") into its
 * authority and its origin-form rest ("/p?q"; "/" when empty; "?q" when only
 * a query follows: the path is "/" then, which the caller puts in front).
 * False if TARGET is not absolute-form. */
bool lb_http_absolute_target(const char *target, size_t len, const char **auth,
                             size_t *auth_len, const char **path, size_t *path_len);

/* True if header H of M is named by one of M's Connection tokens. */
bool lb_http_named_by_connection(const struct lb_http_msg *m, const struct lb_http_header *h);

/* Chunked body framer: finds where a chunked body ends without decoding it
 * (bytes are forwarded as they are, so framing is validated, not rebuilt). */
struct lb_chunked {
    uint8_t state;
    uint8_t digits;             /* hex digits in the size line so far */
    uint16_t line_len;          /* bytes in the current size/trailer line */
    uint32_t trailer_len;
    uint64_t remaining;         /* data bytes left in the current chunk */
    uint64_t data_bytes;        /* chunk data seen so far (the body's size) */
};

#define LB_CHUNKED_MAX_DIGITS   16      /* chunk-size, leading zeros included */
#define LB_CHUNKED_MAX_LINE     4096    /* size line with extensions */
#define LB_CHUNKED_MAX_TRAILER  16384

void lb_chunked_init(struct lb_chunked *c);
/* Consume up to LEN bytes of body. Returns the number consumed (the message
 * ends there when lb_chunked_done()), or -1 on malformed framing. */
ssize_t lb_chunked_feed(struct lb_chunked *c, const char *p, size_t len);
bool lb_chunked_done(const struct lb_chunked *c);
/* While in chunk data: bytes that can be skipped without inspection. */
uint64_t lb_chunked_data_left(const struct lb_chunked *c);
/* Skip N <= lb_chunked_data_left() bytes of chunk data unseen. */
void lb_chunked_skip(struct lb_chunked *c, uint64_t n);

#endif
