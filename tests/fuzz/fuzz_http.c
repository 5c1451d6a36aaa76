/* libFuzzer target over the HTTP/1.1 parser and the chunked framer.
 *
 * Input layout: byte 0 picks the mode, the rest is the message.
 *   mode & 3 == 0: request head      1: response head
 *             2: chunked body        3: request head, then its body framing
 * Besides crashes (ASan/UBSan), it checks the invariants lbd relies on:
 * every pointer the parser returns lies inside the input, a parsed head
 * never holds CL together with TE, and the chunked framer consumes the same
 * bytes whether it is fed at once or byte by byte (a split read must never
 * change where a body ends: that difference is what smuggling exploits).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void lb_fuzz_check_inside(const char *buf, size_t len, const char *p, size_t n)
{
    if (n == 0)
        return;
    if (p < buf || p + n > buf + len)
        abort();
}

static void lb_fuzz_chunked(const char *buf, size_t len)
{
    struct lb_chunked whole, bytes;
    lb_chunked_init(&whole);
    lb_chunked_init(&bytes);
    ssize_t a = lb_chunked_feed(&whole, buf, len);
    ssize_t b = 0;
    for (size_t i = 0; i < len && !lb_chunked_done(&bytes); i++) {
        ssize_t r = lb_chunked_feed(&bytes, buf + i, 1);
        if (r < 0) {
            b = -1;
            break;
        }
        b += r;
    }
    if (a < 0 ? b >= 0 : (b != a || lb_chunked_done(&whole) != lb_chunked_done(&bytes)))
        abort();
    if (a > (ssize_t)len)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned mode = data[0] & 3;
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;
    struct lb_http_limits lim = { .max_request_line = 8192, .max_head = 32768,
                                  .max_headers = 100 };
    struct lb_http_header hdrs[100];
    struct lb_http_msg m = { .headers = hdrs, .max_headers = 100 };

    if (mode == 2) {
        lb_fuzz_chunked(buf, len);
        return 0;
    }
    size_t scanned = 0;
    size_t head = lb_http_head_end(buf, len, &scanned);
    if (head == 0) {
        (void)lb_http_check_partial(buf, len, &lim);
        return 0;
    }
    /* The same end is found when the bytes arrive in two reads. */
    size_t scanned2 = 0;
    if (lb_http_head_end(buf, len / 2, &scanned2) == 0 &&
        lb_http_head_end(buf, len, &scanned2) != head)
        abort();

    int rc = mode == 1 ? lb_http_parse_response(buf, head, &m, false, &lim)
                       : lb_http_parse_request(buf, head, &m, &lim);
    if (rc != 0)
        return 0;
    if (m.head_len != head)
        abort();
    for (size_t i = 0; i < m.nheaders; i++) {
        lb_fuzz_check_inside(buf, head, m.headers[i].name, m.headers[i].name_len);
        lb_fuzz_check_inside(buf, head, m.headers[i].value, m.headers[i].value_len);
    }
    if (mode != 1) {
        lb_fuzz_check_inside(buf, head, m.method, m.method_len);
        lb_fuzz_check_inside(buf, head, m.target, m.target_len);
        if (m.host >= 0 && (size_t)m.host >= m.nheaders)
            abort();
    }
    if (mode == 3 && m.body == LB_BODY_CHUNKED)
        lb_fuzz_chunked(buf + head, len - head);
    return 0;
}
