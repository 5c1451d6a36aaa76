/* Request-head parsing for the test backend.
 *
 * Pure functions over a byte buffer, no libevent: the server hands over a
 * complete head (request line, header lines, blank line) and gets back what
 * it needs to frame the body and to choose the response. Strict where a
 * load balancer could be fooled (duplicate or bad Content-Length, unknown
 * transfer codings, obs-fold), lenient where real clients differ (bare LF).
 */
#ifndef LB_TESTBACKEND_REQUEST_H
#define LB_TESTBACKEND_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A head longer than this is answered with 400: no sane test sends one. */
#define REQ_HEAD_MAX (64 * 1024)

struct request {
    /* framing, from the request line and the headers */
    bool is_head;           /* method HEAD: no response body */
    bool is_get;
    int minor;              /* HTTP/1.<minor>, 0 or 1 */
    bool keep_alive;        /* version default adjusted by Connection */
    bool expect_continue;   /* Expect: 100-continue */
    bool chunked_body;      /* Transfer-Encoding ends in chunked */
    bool te_and_cl;         /* both framings sent: chunked wins, then close */
    uint64_t content_length;

    /* behaviour, from the query string */
    bool stats;             /* path is exactly /stats */
    int status;             /* 100..999, default 200 */
    uint64_t delay_ms;
    bool has_size;
    uint64_t size;
    bool chunked;           /* respond with Transfer-Encoding: chunked */
    bool close;
    bool reset;
    bool drop;
    bool echo;
    bool hang;
    bool ws;                /* ws=1: answer 101 and echo every byte after it */
    uint64_t trickle_ms;    /* trickle=MS: the response head, a byte per MS ms */
    bool endless;           /* endless=1: header lines without end */
    uint64_t hdrsize;       /* hdrsize=N: one header line with an N-byte value */
    bool sts;               /* sts=1: a Strict-Transport-Security header of its own */
    bool setcookie;         /* setcookie=1: a Set-Cookie of its own (app=1) */
    bool has_retry_after;   /* retry_after=S: a Retry-After: S header */
    uint64_t retry_after;
    /* GET /control?...: the query (status=, reset=, delay=, retry_after=) applies to
     * every later request but /stats and /control until the next /control;
     * a bare /control goes back to normal. A test makes a server fail and
     * recover this way, without restarting it. */
    bool control;
    uint64_t trickle_head_ms;   /* trickle_head=MS: the head after its status
                                 * line goes out one byte per MS ms */
    uint64_t early_hints;       /* early_hints=N: N "103 Early Hints" before the
                                 * answer; early_hints=forever: without end */
};

#define REQ_FOREVER UINT64_MAX

/* Length of the head at the start of buf (through its terminating blank
 * line, CRLF or bare LF), or 0 when buf does not hold a whole head yet. */
size_t req_head_end(const char *buf, size_t len);

/* Parse a whole head as delimited by req_head_end. Returns 0 and fills *req,
 * or -1 when the head is malformed (the caller answers 400). */
int req_parse(const char *head, size_t len, struct request *req);

/* Parse a chunk-size line ("1a2b", optionally ";ext..."), without its line
 * ending. Returns 0 and sets *size, or -1 when malformed or too large. */
int req_parse_chunk_size(const char *line, uint64_t *size);

#endif
