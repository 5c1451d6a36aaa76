/* worker/http.c: the strict HTTP/1.1 head parser and the chunked framer.
 *
 * Every head is parsed from a heap copy of exactly its bytes, so that under
 * AddressSanitizer a read past the head fails the test. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/http.h"
#include "tests/unit/suites.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static const struct lb_http_limits lim_default = {
    .max_request_line = 8192, .max_head = 32768, .max_headers = 100,
};

static struct lb_http_header hdrs[128];
static struct lb_http_msg msg;
static char *head_copy;         /* the parsed bytes; msg points into them */

static size_t head_len_of(const char *s, size_t len)
{
    size_t scanned = 0;
    size_t hl = lb_http_head_end(s, len, &scanned);
    ck_assert_msg(hl > 0, "test bug: no complete head in \"%.*s\"", (int)len, s);
    return hl;
}

static const char *copy_head(const char *s, size_t hl)
{
    free(head_copy);
    head_copy = malloc(hl);
    ck_assert_ptr_nonnull(head_copy);
    memcpy(head_copy, s, hl);
    msg = (struct lb_http_msg){ .headers = hdrs, .max_headers = ARRAY_SIZE(hdrs) };
    return head_copy;
}

static int req_lim(const char *s, size_t len, const struct lb_http_limits *lim)
{
    size_t hl = head_len_of(s, len);
    return lb_http_parse_request(copy_head(s, hl), hl, &msg, lim);
}

static int resp_n(const char *s, size_t len, bool head_request)
{
    size_t hl = head_len_of(s, len);
    return lb_http_parse_response(copy_head(s, hl), hl, &msg, head_request, &lim_default);
}

/* String literals, embedded NULs included. */
#define REQ(s) req_lim((s), sizeof(s) - 1, &lim_default)
#define RESP(s) resp_n((s), sizeof(s) - 1, false)
#define RESP_HEAD(s) resp_n((s), sizeof(s) - 1, true)

static const struct lb_http_header *hdr(const char *name)
{
    const struct lb_http_header *found = NULL;
    for (size_t i = 0; i < msg.nheaders; i++) {
        if (strlen(name) == msg.headers[i].name_len &&
            strncasecmp(msg.headers[i].name, name, msg.headers[i].name_len) == 0) {
            ck_assert_msg(found == NULL, "test bug: two '%s' headers", name);
            found = &msg.headers[i];
        }
    }
    ck_assert_msg(found != NULL, "header '%s' not parsed", name);
    return found;
}

static void ck_value(const char *name, const char *value)
{
    const struct lb_http_header *h = hdr(name);
    ck_assert_msg(h->value_len == strlen(value) && memcmp(h->value, value, h->value_len) == 0,
                  "%s: value \"%.*s\", want \"%s\"", name, (int)h->value_len, h->value, value);
}

static void ck_span(const char *p, uint32_t len, const char *want)
{
    ck_assert_msg(len == strlen(want) && memcmp(p, want, len) == 0,
                  "got \"%.*s\", want \"%s\"", (int)len, p, want);
}

/* ---- lb_http_head_end --------------------------------------------------------- */

START_TEST(test_head_end)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\n";
    size_t want = strlen("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    size_t scanned = 0;
    ck_assert_uint_eq(lb_http_head_end(req, sizeof(req) - 1, &scanned), want);

    /* Incrementally: one byte more per call, the scan position carried. */
    scanned = 0;
    size_t got = 0, at = 0;
    for (size_t len = 0; len <= sizeof(req) - 1 && got == 0; len++) {
        got = lb_http_head_end(req, len, &scanned);
        at = len;
        if (got == 0)
            ck_assert_uint_le(scanned, len);
    }
    ck_assert_uint_eq(got, want);
    ck_assert_uint_eq(at, want);

    /* In two pieces cut at every position. */
    for (size_t cut = 0; cut < want; cut++) {
        scanned = 0;
        ck_assert_uint_eq(lb_http_head_end(req, cut, &scanned), 0);
        ck_assert_uint_eq(lb_http_head_end(req, sizeof(req) - 1, &scanned), want);
    }

    /* Bare LFs do not end a head. */
    scanned = 0;
    ck_assert_uint_eq(lb_http_head_end("GET / HTTP/1.1\n\n", 16, &scanned), 0);
    scanned = 0;
    ck_assert_uint_eq(lb_http_head_end("GET / HTTP/1.1\r\n\n\r\n", 19, &scanned), 0);
    scanned = 0;
    ck_assert_uint_eq(lb_http_head_end("", 0, &scanned), 0);
}
END_TEST

/* ---- valid requests ------------------------------------------------------------ */

START_TEST(test_req_simple_get)
{
    static const char r[] = "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
    ck_assert_int_eq(REQ(r), 0);
    ck_span(msg.method, msg.method_len, "GET");
    ck_span(msg.target, msg.target_len, "/index.html?q=1");
    ck_assert_int_eq(msg.version_minor, 1);
    ck_assert_uint_eq(msg.head_len, sizeof(r) - 1);
    ck_assert_uint_eq(msg.nheaders, 1);
    ck_assert_int_eq(msg.host, 0);
    ck_value("Host", "example.com");
    ck_assert_int_eq(msg.body, LB_BODY_NONE);
    ck_assert_uint_eq(msg.flags, LB_MSG_SAFE);      /* GET may be retried */
    ck_assert_uint_eq(msg.headers[0].flags, 0);
    /* Zero-copy: the spans point into the parsed buffer. */
    ck_assert_ptr_eq(msg.method, head_copy);
    ck_assert_ptr_eq(msg.target, head_copy + 4);
}
END_TEST

START_TEST(test_req_headers_ows)
{
    ck_assert_int_eq(REQ("POST /x HTTP/1.1\r\n"
                         "Host:example.com\r\n"
                         "X-A:   spaced   \r\n"
                         "X-B:\t\ttabbed\t \r\n"
                         "X-C: inner  space \t kept\r\n"
                         "X-Empty:\r\n"
                         "X-Blank:    \r\n"
                         "x-lower: v\r\n"
                         "X-Obs: caf\xc3\xa9\r\n"
                         "\r\n"), 0);
    ck_assert_uint_eq(msg.nheaders, 8);
    ck_value("Host", "example.com");
    ck_value("X-A", "spaced");
    ck_value("X-B", "tabbed");
    ck_value("X-C", "inner  space \t kept");
    ck_value("X-Empty", "");
    ck_value("X-Blank", "");
    ck_value("x-lower", "v");
    ck_value("X-Obs", "caf\xc3\xa9");
    ck_span(msg.headers[1].name, msg.headers[1].name_len, "X-A");
    ck_assert_int_eq(msg.host, 0);
}
END_TEST

START_TEST(test_req_http10)
{
    ck_assert_int_eq(REQ("GET / HTTP/1.0\r\n\r\n"), 0);
    ck_assert_int_eq(msg.version_minor, 0);
    ck_assert_int_eq(msg.host, -1);
    ck_assert_uint_eq(msg.nheaders, 0);
    ck_assert_int_eq(msg.body, LB_BODY_NONE);

    ck_assert_int_eq(REQ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags & LB_MSG_CONN_KEEPALIVE, LB_MSG_CONN_KEEPALIVE);
    ck_assert_uint_eq(msg.flags & LB_MSG_CONN_CLOSE, 0);
}
END_TEST

START_TEST(test_req_connection_flags)
{
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_CONN_CLOSE | LB_MSG_SAFE);
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_CONN_KEEPALIVE | LB_MSG_SAFE);
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_CONN_CLOSE | LB_MSG_SAFE);
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: a\r\n"
                         "Connection: ,keep-alive , Upgrade,\r\nUpgrade: websocket\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_CONN_KEEPALIVE | LB_MSG_CONN_UPGRADE | LB_MSG_SAFE);
    /* Tokens, not substrings. */
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: closed, keep-alives\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags & (LB_MSG_CONN_CLOSE | LB_MSG_CONN_KEEPALIVE), 0);
    /* Two Connection headers add up. */
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nConnection: keep-alive\r\nHost: a\r\n"
                         "Connection: close\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags & (LB_MSG_CONN_CLOSE | LB_MSG_CONN_KEEPALIVE),
                      LB_MSG_CONN_CLOSE | LB_MSG_CONN_KEEPALIVE);
}
END_TEST

START_TEST(test_req_content_length)
{
    ck_assert_int_eq(REQ("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_LENGTH);
    ck_assert_uint_eq(msg.content_length, 42);
    ck_assert_uint_eq(hdr("Content-Length")->flags, LB_HDR_FRAMING);

    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_NONE);
    ck_assert_uint_eq(msg.content_length, 0);

    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 000123\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.content_length, 123);

    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999999999\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.content_length, 999999999999999999ULL);

    /* HTTP/1.0 bodies need a length too. */
    ck_assert_int_eq(REQ("POST / HTTP/1.0\r\nContent-Length: 7\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_LENGTH);
}
END_TEST

START_TEST(test_req_duplicate_cl)
{
    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                         "X-Between: 1\r\ncontent-length: 5\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_LENGTH);
    ck_assert_uint_eq(msg.content_length, 5);
    ck_assert_uint_eq(msg.headers[1].flags, LB_HDR_FRAMING);
    ck_assert_uint_eq(msg.headers[3].flags, LB_HDR_FRAMING | LB_HDR_DUPLICATE);
}
END_TEST

START_TEST(test_req_chunked)
{
    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_CHUNKED);
    ck_assert_uint_eq(hdr("Transfer-Encoding")->flags, LB_HDR_FRAMING);

    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_CHUNKED);
    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_CHUNKED);
    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_CHUNKED);
}
END_TEST

START_TEST(test_req_expect_head_options)
{
    /* (PUT is idempotent: LB_MSG_IDEMPOTENT, for retries.) */
    ck_assert_int_eq(REQ("PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                         "Content-Length: 10\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_EXPECT_CONTINUE | LB_MSG_IDEMPOTENT);
    ck_assert_int_eq(REQ("PUT /f HTTP/1.1\r\nHost: a\r\nexpect: 100-Continue\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_EXPECT_CONTINUE | LB_MSG_IDEMPOTENT);
    ck_assert_int_eq(REQ("PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_IDEMPOTENT);
    ck_assert_int_eq(REQ("DELETE /f HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_IDEMPOTENT);
    ck_assert_int_eq(REQ("POST /f HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, 0);
    ck_assert_int_eq(REQ("PATCH /f HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, 0);
    ck_assert_int_eq(REQ("put /f HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, 0);

    ck_assert_int_eq(REQ("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_HEAD | LB_MSG_SAFE);
    ck_span(msg.method, msg.method_len, "HEAD");
    /* Methods are case-sensitive: "head" is some other method. */
    ck_assert_int_eq(REQ("head / HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, 0);

    ck_assert_int_eq(REQ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ck_span(msg.target, msg.target_len, "*");
    ck_assert_int_eq(REQ("OPTIONS /x HTTP/1.1\r\nHost: a\r\n\r\n"), 0);

    /* Any token is a method. */
    ck_assert_int_eq(REQ("PROPFIND /dav HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ck_assert_int_eq(REQ("X-M!#$%&'*+-.^_`|~ / HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
}
END_TEST

START_TEST(test_req_absolute_form)
{
    ck_assert_int_eq(REQ("GET http://example.com/a/b?c HTTP/1.1\r\nHost: example.com\r\n\r\n"), 0);
    ck_span(msg.target, msg.target_len, "http://example.com/a/b?c");
    ck_assert_int_eq(REQ("GET https://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"), 0);
    ck_assert_int_eq(REQ("GET HTTP://EXAMPLE.COM/ HTTP/1.1\r\nHost: example.com\r\n\r\n"), 0);
}
END_TEST

START_TEST(test_req_hop_by_hop)
{
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\n"
                         "Host: a\r\n"
                         "Connection: keep-alive, X-Custom, upgrade\r\n"
                         "Keep-Alive: timeout=5\r\n"
                         "TE: trailers\r\n"
                         "Upgrade: websocket\r\n"
                         "Proxy-Connection: keep-alive\r\n"
                         "Proxy-Authorization: Basic eA==\r\n"
                         "x-custom: 1\r\n"
                         "X-Other: 2\r\n"
                         "X-Forwarded-For: 10.0.0.1\r\n"
                         "X-Forwarded-Proto: https\r\n"
                         "Accept: */*\r\n"
                         "\r\n"), 0);
    ck_assert_uint_eq(hdr("Host")->flags, 0);
    ck_assert_uint_eq(hdr("Connection")->flags, LB_HDR_HOP_BY_HOP);
    ck_assert_uint_eq(hdr("Keep-Alive")->flags, LB_HDR_HOP_BY_HOP);
    ck_assert_uint_eq(hdr("TE")->flags, LB_HDR_HOP_BY_HOP);
    ck_assert_uint_eq(hdr("Upgrade")->flags, LB_HDR_HOP_BY_HOP);
    ck_assert_uint_eq(hdr("Proxy-Connection")->flags, LB_HDR_HOP_BY_HOP);
    ck_assert_uint_eq(hdr("Proxy-Authorization")->flags, LB_HDR_HOP_BY_HOP);
    ck_assert_uint_eq(hdr("x-custom")->flags, LB_HDR_HOP_BY_HOP);
    ck_assert_uint_eq(hdr("X-Other")->flags, 0);
    ck_assert_uint_eq(hdr("X-Forwarded-For")->flags, LB_HDR_FORWARDED);
    ck_assert_uint_eq(hdr("X-Forwarded-Proto")->flags, LB_HDR_FORWARDED);
    ck_assert_uint_eq(hdr("Accept")->flags, 0);
    ck_assert(lb_http_named_by_connection(&msg, hdr("x-custom")));
    ck_assert(lb_http_named_by_connection(&msg, hdr("Upgrade")));
    ck_assert(!lb_http_named_by_connection(&msg, hdr("X-Other")));
    ck_assert(lb_http_named_by_connection(&msg, hdr("Keep-Alive")));
    ck_assert(!lb_http_named_by_connection(&msg, hdr("Host")));

    /* Lowercase names get the same flags. */
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\nte: trailers\r\n"
                         "x-forwarded-for: 1.2.3.4\r\n\r\n"), 0);
    ck_assert_uint_eq(hdr("connection")->flags, LB_HDR_HOP_BY_HOP);
    ck_assert_uint_eq(hdr("te")->flags, LB_HDR_HOP_BY_HOP);
    ck_assert_uint_eq(hdr("x-forwarded-for")->flags, LB_HDR_FORWARDED);
    ck_assert_int_eq(msg.host, 0);

    /* A Connection-named header listed before the Connection header. */
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nX-Early: 1\r\nHost: a\r\nConnection: x-early\r\n\r\n"), 0);
    ck_assert_uint_eq(hdr("X-Early")->flags, LB_HDR_HOP_BY_HOP);
}
END_TEST

/* Connection may not make lbd's own framing or routing hop-by-hop: the
 * backend would read the body as another request (smuggling). */
START_TEST(test_req_connection_names_framing)
{
    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n"
                         "Content-Length: 3\r\n\r\n"), 400);
    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nConnection: close, Transfer-Encoding\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n"), 400);
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n"), 400);
    /* A named X-Request-Id is dropped, so it counts as absent (one is made). */
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: x-request-id\r\n"
                         "X-Request-Id: abc\r\n\r\n"), 0);
    ck_assert_int_eq(msg.request_id, -1);
    ck_assert_uint_eq(msg.headers[2].flags & LB_HDR_HOP_BY_HOP, LB_HDR_HOP_BY_HOP);
    /* POST is not safe to retry; GET, HEAD, OPTIONS, TRACE are. */
    ck_assert_int_eq(REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags & LB_MSG_SAFE, 0);
}
END_TEST

START_TEST(test_req_upgrade_request_id)
{
    ck_assert_int_eq(REQ("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                         "Upgrade: websocket\r\nX-Request-Id: abc-123\r\n"
                         "Forwarded: for=192.0.2.1\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags, LB_MSG_CONN_UPGRADE | LB_MSG_SAFE);
    ck_assert_int_eq(msg.upgrade, 2);
    ck_assert_int_eq(msg.request_id, 3);
    ck_assert_uint_eq(hdr("Forwarded")->flags, LB_HDR_FORWARDED);
    ck_assert_uint_eq(hdr("X-Request-Id")->flags, 0);

    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ck_assert_int_eq(msg.upgrade, -1);
    ck_assert_int_eq(msg.request_id, -1);

    /* The first X-Request-Id is the one. */
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nx-request-id: 1\r\nHost: a\r\nX-Request-Id: 2\r\n\r\n"), 0);
    ck_assert_int_eq(msg.request_id, 0);

    /* Two Upgrade headers: which protocol? Refused. */
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                         "Upgrade: websocket\r\nupgrade: h2c\r\n\r\n"), 400);
}
END_TEST

START_TEST(test_absolute_target)
{
    const char *auth, *path;
    size_t alen, plen;
    static const struct { const char *t, *auth, *path; } ok[] = {
        { "http://example.com/a/b?c", "example.com", "/a/b?c" },
        { "http://h:8080/", "h:8080", "/" },
        { "http://h", "h", "/" },
        { "https://[::1]:443/x", "[::1]:443", "/x" },
        { "HTTP://H/P", "H", "/P" },
        { "hTtPs://h/", "h", "/" },
        { "http://h?q=1", "h", "?q=1" },      /* path "/", put in front by the caller */
        { "http://h:81?", "h:81", "?" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(ok); i++) {
        ck_assert_msg(lb_http_absolute_target(ok[i].t, strlen(ok[i].t), &auth, &alen, &path, &plen),
                      "not absolute: %s", ok[i].t);
        ck_span(auth, (uint32_t)alen, ok[i].auth);
        ck_span(path, (uint32_t)plen, ok[i].path);
    }
    static const char *const no[] = { "/a", "*", "http:/", "http://", "https://", "ftp://h/",
                                      "http:h/", "httpx://h/", "", "h/a" };
    for (size_t i = 0; i < ARRAY_SIZE(no); i++)
        ck_assert_msg(!lb_http_absolute_target(no[i], strlen(no[i]), &auth, &alen, &path, &plen),
                      "absolute: %s", no[i]);

    /* The parser refuses what cannot be forwarded as origin-form. */
    static const struct bad_req_abs { const char *r; int st; } reqs[] = {
        { "GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400 },
        { "GET http://user:pw@h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400 },
        { "GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400 },
        { "GET http://h\"/ HTTP/1.1\r\nHost: h\r\n\r\n", 400 },
        { "GET http://h{/ HTTP/1.1\r\nHost: h\r\n\r\n", 400 },
        { "GET http://h:80/x HTTP/1.1\r\nHost: h\r\n\r\n", 0 },
        { "GET http://[::1]:80/x HTTP/1.1\r\nHost: h\r\n\r\n", 0 },
        { "GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n", 0 },
    };
    for (size_t i = 0; i < ARRAY_SIZE(reqs); i++)
        ck_assert_msg(req_lim(reqs[i].r, strlen(reqs[i].r), &lim_default) == reqs[i].st,
                      "want %d: %s", reqs[i].st, reqs[i].r);
}
END_TEST

/* An authority, in an absolute-form target or as Host, is host [":" port]
 * with host = IP-literal / IPv4address / reg-name (RFC 3986 3.2.2). */
static const char *const authority_ok[] = {
    "h", "example.com", "EXAMPLE.com.", "h:80", "h:", "h:0", "h:65535", "127.0.0.1",
    "127.0.0.1:8080", "999.1.1.1" /* a reg-name */, "a-b_c~d", "a!$&'()*+,;=b",
    "[::1]", "[::1]:80", "[::]", "[2001:db8::1]", "[2001:DB8:0:0:0:0:0:1]:443",
    "[::ffff:192.0.2.1]", "[1:2:3:4:5:6:7::]", "[v1.x]", "[vF.a:b!]:80",
};

static const char *const authority_bad[] = {
    /* unclosed, stray or empty brackets, junk after the literal */
    "[::1", "[", "[::1]x", "[::1]x/", "[::1]]", "]", "]:80", "[]", "[]:80", "h]", "h[",
    "[::1][::2]", "a[::1]",
    /* not an IPv6 address (nor IPvFuture) */
    "[zz]", "[127.0.0.1]", "[::1%25eth0]", "[::1%eth0]", "[1:2:3:4:5:6:7:8:9]", "[:::1]",
    "[v1]", "[v.x]", "[v1.]", "[vz.x]", "[v1.x/y]",
    /* empty host, bad ports */
    ":80", ":", "h:80:90", "h:8o", "h:-1", "h:65536", "h:000080", "h: 80", "[::1]:x",
    /* characters outside reg-name: percent-encoding, userinfo, delimiters */
    "%61dmin", "h%", "user@h", "h\"", "h{", "h\\", "h#f", "h^", "h|x",
};

START_TEST(test_authority_forms)
{
    char buf[256];
    for (size_t i = 0; i < ARRAY_SIZE(authority_ok); i++) {
        snprintf(buf, sizeof(buf), "GET http://%s/p HTTP/1.1\r\nHost: h\r\n\r\n", authority_ok[i]);
        ck_assert_msg(req_lim(buf, strlen(buf), &lim_default) == 0, "target refused: %s", authority_ok[i]);
        snprintf(buf, sizeof(buf), "GET /p HTTP/1.1\r\nHost: %s\r\n\r\n", authority_ok[i]);
        ck_assert_msg(req_lim(buf, strlen(buf), &lim_default) == 0, "Host refused: %s", authority_ok[i]);
    }
    for (size_t i = 0; i < ARRAY_SIZE(authority_bad); i++) {
        /* Target authorities end at '/' or '?', so each bad one is tried
         * both ways: before a path and as the whole target. */
        snprintf(buf, sizeof(buf), "GET http://%s/p HTTP/1.1\r\nHost: h\r\n\r\n", authority_bad[i]);
        ck_assert_msg(req_lim(buf, strlen(buf), &lim_default) == 400, "target accepted: %s", authority_bad[i]);
        snprintf(buf, sizeof(buf), "GET http://%s HTTP/1.1\r\nHost: h\r\n\r\n", authority_bad[i]);
        ck_assert_msg(req_lim(buf, strlen(buf), &lim_default) == 400, "bare target accepted: %s", authority_bad[i]);
        snprintf(buf, sizeof(buf), "GET /p HTTP/1.1\r\nHost: %s\r\n\r\n", authority_bad[i]);
        ck_assert_msg(req_lim(buf, strlen(buf), &lim_default) == 400, "Host accepted: %s", authority_bad[i]);
    }
    /* The vector, and a good target with a bad Host (both are checked). */
    ck_assert_int_eq(REQ("GET http://[::1 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    ck_assert_int_eq(REQ("GET http://h/ HTTP/1.1\r\nHost: [::1\r\n\r\n"), 400);
    /* An empty Host is what a target without authority calls for (RFC 9112
     * 3.2); an empty authority in an http URI is invalid (RFC 9110 4.2.1). */
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 0);
    ck_assert_int_eq(REQ("GET / HTTP/1.1\r\nHost: \r\n\r\n"), 0);
    ck_assert_int_eq(REQ("GET http:///p HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    ck_assert_int_eq(REQ("GET http://?q HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
}
END_TEST

/* ---- rejected requests ----------------------------------------------------------- */

struct bad_req {
    const char *text;
    size_t len;
    int status;
};

#define BAD(s, st) { (s), sizeof(s) - 1, (st) }

static void check_bad(const struct bad_req *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int st = req_lim(b[i].text, b[i].len, &lim_default);
        char shown[256];
        size_t k = 0;
        for (size_t j = 0; j < b[i].len && k + 5 < sizeof(shown); j++) {
            unsigned char c = (unsigned char)b[i].text[j];
            if (c >= 0x20 && c < 0x7f)
                shown[k++] = (char)c;
            else
                k += (size_t)snprintf(shown + k, sizeof(shown) - k, "\\x%02x", c);
        }
        shown[k] = '\0';
        ck_assert_msg(st == b[i].status, "#%zu: got %d, want %d for \"%s\"", i, st, b[i].status, shown);
    }
}

START_TEST(test_rej_framing)
{
    static const struct bad_req bad[] = {
        /* CL + TE, both orders */
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", 400),
        /* differing duplicate CL */
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        /* malformed CL */
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
        /* TE whose final coding is not chunked, chunked twice, parameters */
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", 400),
        BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , ,\r\n\r\n", 400),
        /* TE in HTTP/1.0 */
        BAD("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        BAD("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    };
    check_bad(bad, ARRAY_SIZE(bad));
}
END_TEST

START_TEST(test_rej_header_syntax)
{
    static const struct bad_req bad[] = {
        /* obs-fold */
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n\ttwo\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
        /* whitespace before the colon, or in the name */
        BAD("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX A: 1\r\n\r\n", 400),
        /* no colon, empty name, separators in the name */
        BAD("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX(A): v\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX/A: v\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX\"A: v\r\n\r\n", 400),
        /* NUL, bare CR, bare LF, other CTLs in a value */
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: \0\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\nb\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\nX-B: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\nX-B: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\001b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\037b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\177b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\013b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\014b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\033b\r\n\r\n", 400),
        /* ... and in a name */
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-\0A: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-\rA: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-\nA: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-\001A: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-\177A: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nX-\xc3\xa9: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\n\x01: b\r\n\r\n", 400),
        /* a bare CR or LF as a line */
        BAD("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\n\n\r\n\r\n", 400),
    };
    check_bad(bad, ARRAY_SIZE(bad));
}
END_TEST

START_TEST(test_rej_request_line)
{
    static const struct bad_req bad[] = {
        /* bad method token */
        BAD("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GE@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("G\0T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("G\xc3\x89T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD(" / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        /* versions */
        BAD("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
        BAD("GET / HTTP/1.9\r\nHost: a\r\n\r\n", 505),
        BAD("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        BAD("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
        BAD("GET / HTTP/3.1\r\nHost: a\r\n\r\n", 505),
        BAD("GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET / http/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400),
        BAD("GET / HTTP/11.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET / HTTP/1\r\nHost: a\r\n\r\n", 400),
        BAD("GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400),
        BAD("GET / HTTP/1,1\r\nHost: a\r\n\r\n", 400),
        BAD("GET / \r\nHost: a\r\n\r\n", 400),
        BAD("GET /\r\nHost: a\r\n\r\n", 400),
        BAD("GET\r\nHost: a\r\n\r\n", 400),
        BAD("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        /* whitespace */
        BAD("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
        BAD("GET /\tHTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        /* request line ends: bare LF, bare CR */
        BAD("GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
        /* targets */
        BAD("GET  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET example.com HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        BAD("GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        /* CONNECT's authority form is not proxied */
        BAD("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
        BAD("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        /* Host */
        BAD("GET / HTTP/1.1\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nX-Host: a\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
        BAD("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n", 400),
    };
    check_bad(bad, ARRAY_SIZE(bad));

    /* The same requests without the defect are accepted (the fixtures test
     * one thing each). */
    static const struct bad_req good[] = {
        BAD("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0),
        BAD("GET / HTTP/1.1\r\nHost:\r\n\r\n", 0),
        BAD("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 0),
        BAD("GET / HTTP/1.1\r\nHost: xn--bcher-kva.example:80\r\n\r\n", 0),
        BAD("GET /a%20b HTTP/1.1\r\nHost: a\r\n\r\n", 0),
        BAD("GET /~user/!$&'()*+,;=:@?/x#frag HTTP/1.1\r\nHost: a\r\n\r\n", 0),
    };
    check_bad(good, ARRAY_SIZE(good));
}
END_TEST

/* ---- limits ----------------------------------------------------------------------- */

static const struct lb_http_limits small = {
    .max_request_line = 64, .max_head = 256, .max_headers = 4,
};

/* "GET /aaa... HTTP/1.1" of exactly LINE bytes (without CRLF). */
static void make_line(char *buf, size_t line)
{
    size_t fixed = strlen("GET / HTTP/1.1");
    ck_assert_uint_ge(line, fixed);
    memcpy(buf, "GET /", 5);
    memset(buf + 5, 'a', line - fixed);
    memcpy(buf + 5 + (line - fixed), " HTTP/1.1", 9);
    buf[line] = '\0';
}

START_TEST(test_limit_request_line)
{
    char buf[512];
    make_line(buf, 64);
    strcat(buf, "\r\nHost: a\r\n\r\n");
    ck_assert_int_eq(req_lim(buf, strlen(buf), &small), 0);
    make_line(buf, 65);
    strcat(buf, "\r\nHost: a\r\n\r\n");
    ck_assert_int_eq(req_lim(buf, strlen(buf), &small), 414);
    make_line(buf, 200);
    strcat(buf, "\r\nHost: a\r\n\r\n");
    ck_assert_int_eq(req_lim(buf, strlen(buf), &small), 414);
}
END_TEST

START_TEST(test_limit_head_size)
{
    char buf[1024];
    /* Pad with one header to exactly 256 bytes, then one more byte. */
    const char *start = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ";
    for (size_t total = 255; total <= 257; total++) {
        size_t pad = total - strlen(start) - 4;
        snprintf(buf, sizeof(buf), "%s", start);
        memset(buf + strlen(start), 'p', pad);
        memcpy(buf + strlen(start) + pad, "\r\n\r\n", 5);
        ck_assert_uint_eq(strlen(buf), total);
        ck_assert_int_eq(req_lim(buf, total, &small), total <= 256 ? 0 : 431);
    }
}
END_TEST

START_TEST(test_limit_header_count)
{
    static const char four[] = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    ck_assert_int_eq(req_lim(four, sizeof(four) - 1, &small), 0);
    ck_assert_uint_eq(msg.nheaders, 4);
    static const char five[] = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
    ck_assert_int_eq(req_lim(five, sizeof(five) - 1, &small), 431);
    ck_assert_uint_le(msg.nheaders, 4);

    /* The caller's array is a limit too, whatever the configured one. */
    size_t hl = head_len_of(five, sizeof(five) - 1);
    const char *copy = copy_head(five, hl);
    msg.max_headers = 3;
    ck_assert_int_eq(lb_http_parse_request(copy, hl, &msg, &lim_default), 431);
    msg.max_headers = 5;
    ck_assert_int_eq(lb_http_parse_request(copy, hl, &msg, &lim_default), 0);
    ck_assert_uint_eq(msg.nheaders, 5);
    ck_assert_uint_eq(msg.max_headers, 5);
}
END_TEST

START_TEST(test_check_partial)
{
    char buf[1024];
    /* Within limits: keep reading. */
    ck_assert_int_eq(lb_http_check_partial("GET / HT", 8, &small), 0);
    ck_assert_int_eq(lb_http_check_partial("", 0, &small), 0);
    make_line(buf, 64);
    ck_assert_int_eq(lb_http_check_partial(buf, 64, &small), 0);

    /* A request line longer than the limit, its end not seen yet: 414. */
    make_line(buf, 100);
    ck_assert_int_eq(lb_http_check_partial(buf, 65, &small), 414);
    ck_assert_int_eq(lb_http_check_partial(buf, 100, &small), 414);
    memset(buf, 'a', 300);
    ck_assert_int_eq(lb_http_check_partial(buf, 300, &small), 414);

    /* A short request line, then a head growing past max_head: 431. */
    snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ");
    size_t n = strlen(buf);
    memset(buf + n, 'p', sizeof(buf) - n);
    ck_assert_int_eq(lb_http_check_partial(buf, 256, &small), 0);
    ck_assert_int_eq(lb_http_check_partial(buf, 257, &small), 431);
    ck_assert_int_eq(lb_http_check_partial(buf, 1024, &small), 431);
}
END_TEST

START_TEST(test_check_partial_line_at_limit)
{
    /* A request line of exactly max_request_line bytes is accepted by
     * lb_http_parse_request (test_limit_request_line); while the rest of
     * the head is still on its way, lb_http_check_partial must not refuse
     * the same bytes with 414. */
    char buf[512];
    make_line(buf, 64);
    strcat(buf, "\r\nHost: a\r\n");
    ck_assert_int_eq(lb_http_check_partial(buf, strlen(buf), &small), 0);
    make_line(buf, 64);
    strcat(buf, "\r");
    ck_assert_int_eq(lb_http_check_partial(buf, strlen(buf), &small), 0);
    make_line(buf, 63);
    strcat(buf, "\r\nHost: a\r\n");
    ck_assert_int_eq(lb_http_check_partial(buf, strlen(buf), &small), 0);
}
END_TEST

/* ---- responses ---------------------------------------------------------------- */

START_TEST(test_resp_status_line)
{
    ck_assert_int_eq(RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), 0);
    ck_assert_int_eq(msg.status, 200);
    ck_span(msg.reason, msg.reason_len, "OK");
    ck_assert_int_eq(msg.version_minor, 1);
    ck_assert_int_eq(msg.body, LB_BODY_LENGTH);
    ck_assert_uint_eq(msg.content_length, 5);
    ck_assert_uint_eq(msg.head_len, strlen("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"));

    ck_assert_int_eq(RESP("HTTP/1.0 404 Not Found\r\n\r\n"), 0);
    ck_assert_int_eq(msg.status, 404);
    ck_assert_int_eq(msg.version_minor, 0);
    ck_span(msg.reason, msg.reason_len, "Not Found");

    ck_assert_int_eq(RESP("HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n"), 0);
    ck_assert_int_eq(msg.status, 503);
    ck_assert_uint_eq(msg.reason_len, 0);
    ck_assert_int_eq(msg.body, LB_BODY_NONE);

    ck_assert_int_eq(RESP("HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n"), 0);
    ck_assert_int_eq(msg.status, 299);
    ck_assert_uint_eq(msg.reason_len, 0);

    ck_assert_int_eq(RESP("HTTP/1.1 599 Whatever \t it says\r\nContent-Length: 0\r\n\r\n"), 0);
    ck_assert_int_eq(msg.status, 599);
    ck_span(msg.reason, msg.reason_len, "Whatever \t it says");

    ck_assert_int_eq(RESP("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags & LB_MSG_CONN_CLOSE, LB_MSG_CONN_CLOSE);
    ck_assert_uint_eq(hdr("Connection")->flags, LB_HDR_HOP_BY_HOP);
    /* Expect means nothing in a response. */
    ck_assert_int_eq(RESP("HTTP/1.1 200 OK\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"), 0);
    ck_assert_uint_eq(msg.flags & LB_MSG_EXPECT_CONTINUE, 0);
}
END_TEST

START_TEST(test_resp_no_body)
{
    static const char *const heads[] = {
        "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(heads); i++) {
        ck_assert_msg(resp_n(heads[i], strlen(heads[i]), false) == 0, "%s", heads[i]);
        ck_assert_msg(msg.body == LB_BODY_NONE, "%s: body %d", heads[i], msg.body);
    }
    /* A response to HEAD: no body, whatever the headers say. */
    ck_assert_int_eq(RESP_HEAD("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_NONE);
    ck_assert_uint_eq(msg.content_length, 100);
    ck_assert_int_eq(RESP_HEAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_NONE);
    ck_assert_int_eq(RESP_HEAD("HTTP/1.1 200 OK\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_NONE);
}
END_TEST

START_TEST(test_resp_framing)
{
    ck_assert_int_eq(RESP("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_CLOSE);
    ck_assert_int_eq(RESP("HTTP/1.0 200 OK\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_CLOSE);
    ck_assert_int_eq(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_CHUNKED);
    ck_assert_uint_eq(hdr("Transfer-Encoding")->flags, LB_HDR_FRAMING);
    ck_assert_int_eq(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_CHUNKED);
    /* A response may end with the connection instead of chunked. */
    ck_assert_int_eq(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_CLOSE);
    ck_assert_int_eq(RESP("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"), 0);
    ck_assert_int_eq(msg.body, LB_BODY_LENGTH);
    ck_assert_uint_eq(msg.headers[1].flags, LB_HDR_FRAMING | LB_HDR_DUPLICATE);
}
END_TEST

START_TEST(test_resp_invalid)
{
    static const char *const bad[] = {
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 2x0 OK\r\n\r\n",
        "HTTP/1.1 abc OK\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
        "HTTP/1.1 000 Zero\r\n\r\n",
        "HTTP/1.1 600 High\r\n\r\n",
        "HTTP/1.1 999 High\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n",
        "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/1.1 200\tOK\r\n\r\n",
        "HTTP/1.1 -200 OK\r\n\r\n",
        "HTTP/1.1\r\n\r\n",
        "HTTP/1.1 \r\n\r\n",
        "HTTP/1.2 200 OK\r\n\r\n",
        "HTTP/2 200\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTX/1.1 200 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\nServer: x\r\n\r\n",
        "HTTP/1.1 200 O\x01K\r\n\r\n",
        /* framing ambiguities */
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5,5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A : a\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: a\001b\r\n\r\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        ck_assert_msg(resp_n(bad[i], strlen(bad[i]), false) == -1, "accepted: %s", bad[i]);
    ck_assert_int_eq(RESP("HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n"), -1);
    /* Even for HEAD, and for 204/304: ambiguous framing is refused. */
    ck_assert_int_eq(RESP_HEAD("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), -1);
    ck_assert_int_eq(RESP("HTTP/1.1 304 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), -1);
}
END_TEST

START_TEST(test_resp_limits)
{
    static const char r[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n";
    size_t hl = head_len_of(r, sizeof(r) - 1);
    const char *copy = copy_head(r, hl);
    ck_assert_int_eq(lb_http_parse_response(copy, hl, &msg, false, &small), -1);
    ck_assert_int_eq(lb_http_parse_response(copy, hl, &msg, false, &lim_default), 0);
    ck_assert_uint_eq(msg.nheaders, 5);
    struct lb_http_limits tiny = { .max_request_line = 64, .max_head = hl - 1, .max_headers = 10 };
    ck_assert_int_eq(lb_http_parse_response(copy, hl, &msg, false, &tiny), -1);
}
END_TEST

/* ---- chunked framer ----------------------------------------------------------- */

static const char chunked_body[] =
    "5\r\nhello\r\n"
    "6;name=value;flag\r\n world\r\n"
    "A\r\n0123456789\r\n"
    "1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    "0;last=\"yes\"\r\n"
    "X-Checksum: abc\r\n"
    "X-Empty:\r\n"
    "\r\n";

static ssize_t feed_all(const char *p, size_t len, bool *done)
{
    struct lb_chunked c;
    lb_chunked_init(&c);
    ssize_t n = lb_chunked_feed(&c, p, len);
    *done = lb_chunked_done(&c);
    return n;
}

/* Feed in pieces of STEP bytes; returns the total consumed or -1. */
static ssize_t feed_steps(const char *p, size_t len, size_t step, bool *done)
{
    struct lb_chunked c;
    lb_chunked_init(&c);
    size_t off = 0;
    while (off < len && !lb_chunked_done(&c)) {
        size_t n = len - off < step ? len - off : step;
        ssize_t got = lb_chunked_feed(&c, p + off, n);
        if (got < 0)
            return -1;
        ck_assert_int_le(got, (ssize_t)n);
        if (!lb_chunked_done(&c))
            ck_assert_int_eq(got, (ssize_t)n);   /* short only at the end */
        off += (size_t)got;
    }
    *done = lb_chunked_done(&c);
    if (*done)
        ck_assert_int_eq(lb_chunked_feed(&c, "x", 1), 0);
    return (ssize_t)off;
}

START_TEST(test_chunked_valid)
{
    size_t len = sizeof(chunked_body) - 1;
    bool done = false;
    ck_assert_int_eq(feed_all(chunked_body, len, &done), (ssize_t)len);
    ck_assert(done);
    for (size_t step = 1; step <= len; step++) {
        done = false;
        ck_assert_int_eq(feed_steps(chunked_body, len, step, &done), (ssize_t)len);
        ck_assert_msg(done, "step %zu", step);
    }
    /* Cut in two at every position. */
    for (size_t cut = 0; cut <= len; cut++) {
        struct lb_chunked c;
        lb_chunked_init(&c);
        ck_assert_int_eq(lb_chunked_feed(&c, chunked_body, cut), (ssize_t)cut);
        ck_assert(cut == len || !lb_chunked_done(&c));
        ck_assert_int_eq(lb_chunked_feed(&c, chunked_body + cut, len - cut), (ssize_t)(len - cut));
        ck_assert(lb_chunked_done(&c));
    }

    static const char *const ok[] = {
        "0\r\n\r\n",
        "000\r\n\r\n",
        "1\r\nx\r\n0\r\n\r\n",
        "a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n",
        "0;ext\r\n\r\n",
        "2;a=b;c=\"d e\"\r\nhi\r\n0\r\n\r\n",
        "0\r\nTrailer: v\r\n\r\n",
        "0\r\nA: 1\r\nB: 2\r\n\r\n",
        "00000000000000f\r\n0123456789abcde\r\n0\r\n\r\n",
        /* up to 16 hex digits, leading zeros included */
        "0000000000000000\r\n\r\n",
        "0000000000000005\r\nhello\r\n0\r\n\r\n",
        "0fffffffffffffff\r\n",  /* (not done: 2^60-1 bytes to come) */
    };
    for (size_t i = 0; i < ARRAY_SIZE(ok); i++) {
        size_t n = strlen(ok[i]);
        bool open_ended = ok[i][0] == '0' && ok[i][1] == 'f';
        ck_assert_msg(feed_all(ok[i], n, &done) == (ssize_t)n && done != open_ended,
                      "refused: %s", ok[i]);
        ck_assert_msg(feed_steps(ok[i], n, 1, &done) == (ssize_t)n && done != open_ended,
                      "byte by byte: %s", ok[i]);
    }
}
END_TEST

START_TEST(test_chunked_stops_at_end)
{
    /* A pipelined request follows the body: not consumed. */
    static const char two[] = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    size_t body = strlen("3\r\nabc\r\n0\r\n\r\n");
    bool done = false;
    ck_assert_int_eq(feed_all(two, sizeof(two) - 1, &done), (ssize_t)body);
    ck_assert(done);
    for (size_t step = 1; step < sizeof(two); step++) {
        ck_assert_int_eq(feed_steps(two, sizeof(two) - 1, step, &done), (ssize_t)body);
        ck_assert(done);
    }
    /* Even junk right after the final CRLF. */
    ck_assert_int_eq(feed_all("0\r\n\r\n\x01\x02", 7, &done), 5);
    ck_assert(done);
}
END_TEST

START_TEST(test_chunked_invalid)
{
    static const char *const bad[] = {
        /* bad hex / size line */
        "g\r\n", "\r\n", ";ext\r\n", " 5\r\nhello\r\n", "5 \r\nhello\r\n", "-5\r\n",
        "+5\r\n", "0x5\r\nhello\r\n", "5\t\r\n", "5 ;ext\r\n",
        /* size overflow: 16 or more significant hex digits */
        "ffffffffffffffff\r\n", "1000000000000000\r\n", "10000000000000000\r\n",
        "fffffffffffffffff\r\n", "00001000000000000000\r\n",
        /* more than 16 hex digits, however many are leading zeros: a
         * backend that reads 16 at most would frame the body otherwise */
        "00000000000000000000000000000041\r\n"
        "POST /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n"
        "\r\n0\r\n\r\n",
        "00000000000000005\r\nhello\r\n0\r\n\r\n", "00000000000000000\r\n\r\n",
        "00000000000000000;ext\r\n\r\n",
        "00000000000000000000000000000000000000000005\r\nhello\r\n0\r\n\r\n",
        /* missing or wrong CRLF after the data */
        "5\r\nhelloX\r\n0\r\n\r\n", "5\r\nhello\n0\r\n\r\n", "5\r\nhello\r0\r\n\r\n",
        "5\r\nhello0\r\n\r\n", "3\r\nhello\r\n0\r\n\r\n",
        /* LF without CR, CR without LF */
        "5\nhello\r\n", "5;ext\nhello\r\n", "5\r\rhello\r\n", "0\n\r\n",
        "0\r\n\n", "0\r\nX: y\n\r\n", "0\r\nX: y\r\r\n",
        /* control bytes in an extension or trailer */
        "5;a\x01\r\nhello\r\n", "0\r\nX: a\x01\r\n\r\n",
        /* trailer lines start with a field name */
        "0\r\n: v\r\n\r\n", "0\r\n v\r\n\r\n", "0\r\n\tv\r\n\r\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        /* NUL bytes: below, with explicit lengths. */
        size_t n = strlen(bad[i]);
        bool done = false;
        ck_assert_msg(feed_all(bad[i], n, &done) == -1, "accepted (#%zu): %s", i, bad[i]);
        ck_assert_msg(feed_steps(bad[i], n, 1, &done) == -1, "accepted byte by byte (#%zu): %s", i, bad[i]);
    }
    bool done;
    ck_assert_int_eq(feed_all("5;a\0\r\nhello\r\n", 12, &done), -1);
    ck_assert_int_eq(feed_all("0\r\nX: a\0\r\n\r\n", 12, &done), -1);
    ck_assert_int_eq(feed_all("\0\r\n", 3, &done), -1);
}
END_TEST

START_TEST(test_chunked_line_limits)
{
    static char buf[LB_CHUNKED_MAX_TRAILER * 2];
    bool done;
    /* A size line with extensions up to the limit is fine; past it, -1. */
    size_t n = (size_t)snprintf(buf, sizeof(buf), "5;");
    memset(buf + n, 'e', LB_CHUNKED_MAX_LINE - 8);
    n += LB_CHUNKED_MAX_LINE - 8;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\nhello\r\n0\r\n\r\n");
    ck_assert_int_eq(feed_all(buf, n, &done), (ssize_t)n);
    ck_assert(done);

    n = (size_t)snprintf(buf, sizeof(buf), "5;");
    memset(buf + n, 'e', LB_CHUNKED_MAX_LINE + 10);
    n += LB_CHUNKED_MAX_LINE + 10;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\nhello\r\n0\r\n\r\n");
    ck_assert_int_eq(feed_all(buf, n, &done), -1);
    ck_assert_int_eq(feed_steps(buf, n, 1, &done), -1);
    ck_assert_int_eq(feed_steps(buf, n, 100, &done), -1);

    /* Leading zeros count towards the 16 digits, long before the line limit. */
    memset(buf, '0', LB_CHUNKED_MAX_LINE + 10);
    ck_assert_int_eq(feed_all(buf, LB_CHUNKED_MAX_LINE + 10, &done), -1);

    /* The limit is per line: many moderate size lines are fine. */
    n = 0;
    for (int i = 0; i < 10; i++) {
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "1;");
        memset(buf + n, 'e', LB_CHUNKED_MAX_LINE / 2);
        n += LB_CHUNKED_MAX_LINE / 2;
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\nx\r\n");
    }
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "0\r\n\r\n");
    ck_assert_int_eq(feed_all(buf, n, &done), (ssize_t)n);
    ck_assert(done);

    /* Trailers past their limit. */
    n = (size_t)snprintf(buf, sizeof(buf), "0\r\nX-Big: ");
    memset(buf + n, 'v', LB_CHUNKED_MAX_TRAILER + 10);
    n += LB_CHUNKED_MAX_TRAILER + 10;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\n\r\n");
    ck_assert_int_eq(feed_all(buf, n, &done), -1);
}
END_TEST

START_TEST(test_chunked_skip)
{
    struct lb_chunked c;
    lb_chunked_init(&c);
    ck_assert_uint_eq(lb_chunked_data_left(&c), 0);
    ck_assert_int_eq(lb_chunked_feed(&c, "a\r\n", 3), 3);
    ck_assert_uint_eq(lb_chunked_data_left(&c), 10);
    lb_chunked_skip(&c, 4);
    ck_assert_uint_eq(lb_chunked_data_left(&c), 6);
    /* More than is left: ignored. */
    lb_chunked_skip(&c, 7);
    ck_assert_uint_eq(lb_chunked_data_left(&c), 6);
    ck_assert_int_eq(lb_chunked_feed(&c, "45", 2), 2);
    ck_assert_uint_eq(lb_chunked_data_left(&c), 4);
    lb_chunked_skip(&c, 4);
    ck_assert_uint_eq(lb_chunked_data_left(&c), 0);
    ck_assert(!lb_chunked_done(&c));
    /* Skipping to the end of the data leaves the CRLF to check. */
    ck_assert_int_eq(lb_chunked_feed(&c, "X", 1), -1);

    lb_chunked_init(&c);
    ck_assert_int_eq(lb_chunked_feed(&c, "fffffffffffffff\r\n", 17), 17);
    ck_assert_uint_eq(lb_chunked_data_left(&c), 0xfffffffffffffffULL);
    lb_chunked_skip(&c, 0xfffffffffffffffULL - 1);
    ck_assert_uint_eq(lb_chunked_data_left(&c), 1);
    ck_assert_int_eq(lb_chunked_feed(&c, "z\r\n0\r\n\r\nrest", 12), 8);
    ck_assert(lb_chunked_done(&c));

    /* Outside chunk data, skip does nothing. */
    lb_chunked_init(&c);
    ck_assert_int_eq(lb_chunked_feed(&c, "5", 1), 1);
    lb_chunked_skip(&c, 1);
    ck_assert_int_eq(lb_chunked_feed(&c, "\r\nhello\r\n0\r\n\r\n", 14), 14);
    ck_assert(lb_chunked_done(&c));
}
END_TEST

Suite *http_suite(void)
{
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("request");
    tcase_add_test(tc, test_head_end);
    tcase_add_test(tc, test_req_simple_get);
    tcase_add_test(tc, test_req_headers_ows);
    tcase_add_test(tc, test_req_http10);
    tcase_add_test(tc, test_req_connection_flags);
    tcase_add_test(tc, test_req_content_length);
    tcase_add_test(tc, test_req_duplicate_cl);
    tcase_add_test(tc, test_req_chunked);
    tcase_add_test(tc, test_req_expect_head_options);
    tcase_add_test(tc, test_req_absolute_form);
    tcase_add_test(tc, test_req_hop_by_hop);
    tcase_add_test(tc, test_req_upgrade_request_id);
    tcase_add_test(tc, test_req_connection_names_framing);
    tcase_add_test(tc, test_absolute_target);
    tcase_add_test(tc, test_authority_forms);
    suite_add_tcase(s, tc);

    tc = tcase_create("smuggling");
    tcase_add_test(tc, test_rej_framing);
    tcase_add_test(tc, test_rej_header_syntax);
    tcase_add_test(tc, test_rej_request_line);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_add_test(tc, test_limit_request_line);
    tcase_add_test(tc, test_limit_head_size);
    tcase_add_test(tc, test_limit_header_count);
    tcase_add_test(tc, test_check_partial);
    tcase_add_test(tc, test_check_partial_line_at_limit);
    suite_add_tcase(s, tc);

    tc = tcase_create("response");
    tcase_add_test(tc, test_resp_status_line);
    tcase_add_test(tc, test_resp_no_body);
    tcase_add_test(tc, test_resp_framing);
    tcase_add_test(tc, test_resp_invalid);
    tcase_add_test(tc, test_resp_limits);
    suite_add_tcase(s, tc);

    tc = tcase_create("chunked");
    tcase_add_test(tc, test_chunked_valid);
    tcase_add_test(tc, test_chunked_stops_at_end);
    tcase_add_test(tc, test_chunked_invalid);
    tcase_add_test(tc, test_chunked_line_limits);
    tcase_add_test(tc, test_chunked_skip);
    suite_add_tcase(s, tc);
    return s;
}
