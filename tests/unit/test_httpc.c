/* master/httpc against a one-shot HTTP server on the same event loop: the
 * request it sends (method, headers, body) and what DONE gets (status,
 * body, the response headers asked for). */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "master/httpc.h"
#include "tests/unit/suites.h"

/* One connection: reads a request whole, writes ANSWER, closes. */
struct srv {
    struct event_base *base;
    int lfd, cfd;
    struct event *lev, *cev;
    char req[8192];
    size_t len;
    const char *answer;
    char url[64];
};

/* What DONE got. */
struct got {
    bool done;
    char error[256];
    long status;
    char body[256];
    size_t len;
    char *headers[LB_HTTPC_HEADERS_MAX];
    struct event_base *base;
};

static bool srv_complete(const struct srv *s)
{
    const char *end = strstr(s->req, "\r\n\r\n");
    if (end == NULL)
        return false;
    const char *cl = strcasestr(s->req, "\r\nContent-Length:");
    size_t want = cl != NULL && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
    return s->len >= (size_t)(end + 4 - s->req) + want;
}

static void srv_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct srv *s = arg;
    ssize_t n = read(fd, s->req + s->len, sizeof(s->req) - 1 - s->len);
    if (n > 0) {
        s->len += (size_t)n;
        s->req[s->len] = '\0';
        if (!srv_complete(s))
            return;
        ck_assert_int_eq(write(fd, s->answer, strlen(s->answer)), (ssize_t)strlen(s->answer));
    }
    event_del(s->cev);
    close(fd);
    s->cfd = -1;
}

static void srv_accept(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct srv *s = arg;
    s->cfd = accept(fd, NULL, NULL);
    ck_assert_int_ge(s->cfd, 0);
    s->cev = event_new(s->base, s->cfd, EV_READ | EV_PERSIST, srv_read, s);
    event_add(s->cev, NULL);
}

static void srv_start(struct srv *s, struct event_base *base, const char *answer)
{
    memset(s, 0, sizeof(*s));
    s->base = base;
    s->answer = answer;
    s->cfd = -1;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(s->lfd, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof(sa);
    ck_assert_int_eq(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(s->lfd, 4), 0);
    ck_assert_int_eq(getsockname(s->lfd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%u/x", ntohs(sa.sin_port));
    s->lev = event_new(base, s->lfd, EV_READ | EV_PERSIST, srv_accept, s);
    event_add(s->lev, NULL);
}

static void srv_stop(struct srv *s)
{
    event_free(s->lev);
    if (s->cev != NULL)
        event_free(s->cev);
    if (s->cfd >= 0)
        close(s->cfd);
    close(s->lfd);
}

static void done(void *arg, const char *error, long status, const char *body, size_t len,
                 const char *const *headers)
{
    struct got *g = arg;
    g->done = true;
    snprintf(g->error, sizeof(g->error), "%s", error ? error : "");
    g->status = status;
    snprintf(g->body, sizeof(g->body), "%s", body);
    g->len = len;
    for (int i = 0; i < LB_HTTPC_HEADERS_MAX; i++)
        g->headers[i] = headers[i] ? strdup(headers[i]) : NULL;
    event_base_loopbreak(g->base);
}

/* Run one request to its end (bounded: the check's own timeout). */
static void run(const char *answer, const char *url, const struct lb_httpc_opts *o,
                struct got *g, struct srv *s)
{
    struct event_base *base = event_base_new();
    struct lb_httpc *c = lb_httpc_new(base);
    ck_assert_ptr_nonnull(c);
    srv_start(s, base, answer);
    memset(g, 0, sizeof(*g));
    g->base = base;
    ck_assert_ptr_nonnull(lb_httpc_request(c, url ? url : s->url, o, done, g));
    while (!g->done)
        ck_assert_int_ge(event_base_loop(base, EVLOOP_ONCE), 0);
    lb_httpc_free(c);
    srv_stop(s);
    event_base_free(base);
}

static void got_free(struct got *g)
{
    for (int i = 0; i < LB_HTTPC_HEADERS_MAX; i++)
        free(g->headers[i]);
}

START_TEST(test_httpc_get_headers)
{
    static const char *const want[] = { "Replay-Nonce", "Location", "X-None", NULL };
    struct lb_httpc_opts o = { .headers = want, .timeout_ms = 3000 };
    struct got g;
    struct srv s;
    run("HTTP/1.1 201 Created\r\nreplay-nonce:  abc-1 \r\nLocation: /order/7\r\n"
        "Content-Length: 5\r\nConnection: close\r\n\r\nhello",
        NULL, &o, &g, &s);
    ck_assert_str_eq(g.error, "");
    ck_assert_int_eq(g.status, 201);
    ck_assert_str_eq(g.body, "hello");
    ck_assert_uint_eq(g.len, 5);
    ck_assert_str_eq(g.headers[0], "abc-1");
    ck_assert_str_eq(g.headers[1], "/order/7");
    ck_assert_ptr_null(g.headers[2]);
    ck_assert(strncmp(s.req, "GET /x HTTP/1.1\r\n", 17) == 0);
    ck_assert_ptr_null(strcasestr(s.req, "User-Agent:"));
    got_free(&g);
}
END_TEST

START_TEST(test_httpc_head_and_post)
{
    struct lb_httpc_opts o = { .method = LB_HTTPC_HEAD, .timeout_ms = 3000 };
    struct got g;
    struct srv s;
    run("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", NULL, &o, &g, &s);
    ck_assert_str_eq(g.error, "");
    ck_assert_int_eq(g.status, 200);
    ck_assert_uint_eq(g.len, 0);
    ck_assert(strncmp(s.req, "HEAD /x HTTP/1.1\r\n", 18) == 0);
    got_free(&g);

    o = (struct lb_httpc_opts){ .method = LB_HTTPC_POST, .body = "{\"a\":1}",
                                .content_type = "application/jose+json", .accept = "text/x",
                                .user_agent = "ua/1", .timeout_ms = 3000 };
    run("HTTP/1.1 400 Bad\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno", NULL, &o, &g, &s);
    ck_assert_str_eq(g.error, "");
    ck_assert_int_eq(g.status, 400);
    ck_assert_str_eq(g.body, "no");
    ck_assert(strncmp(s.req, "POST /x HTTP/1.1\r\n", 18) == 0);
    ck_assert_ptr_nonnull(strstr(s.req, "\r\nContent-Type: application/jose+json\r\n"));
    ck_assert_ptr_nonnull(strstr(s.req, "\r\nAccept: text/x\r\n"));
    ck_assert_ptr_nonnull(strstr(s.req, "\r\nUser-Agent: ua/1\r\n"));
    ck_assert_ptr_nonnull(strstr(s.req, "\r\n\r\n{\"a\":1}"));
    got_free(&g);

    /* Without a content type: JSON (the registries'). */
    o = (struct lb_httpc_opts){ .method = LB_HTTPC_POST, .body = "{}", .timeout_ms = 3000 };
    run("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", NULL, &o, &g, &s);
    ck_assert_ptr_nonnull(strstr(s.req, "\r\nContent-Type: application/json\r\n"));
    got_free(&g);
}
END_TEST

START_TEST(test_httpc_limits)
{
    /* A body over the limit fails the request. */
    struct lb_httpc_opts o = { .body_max = 16, .timeout_ms = 3000 };
    struct got g;
    struct srv s;
    run("HTTP/1.1 200 OK\r\nContent-Length: 40\r\nConnection: close\r\n\r\n"
        "0123456789012345678901234567890123456789", NULL, &o, &g, &s);
    ck_assert_str_eq(g.error, "answer over 16 bytes");
    got_free(&g);

    /* https only: an http URL is refused by curl, DONE says so. */
    o = (struct lb_httpc_opts){ .https_only = true, .timeout_ms = 3000 };
    run("", NULL, &o, &g, &s);
    ck_assert_str_ne(g.error, "");
    ck_assert_uint_eq(s.len, 0);
    got_free(&g);

    /* Options that do not hold together: no request. */
    struct event_base *base = event_base_new();
    struct lb_httpc *c = lb_httpc_new(base);
    o = (struct lb_httpc_opts){ .method = LB_HTTPC_POST };
    ck_assert_ptr_null(lb_httpc_request(c, "http://127.0.0.1:1/", &o, done, &g));
    o = (struct lb_httpc_opts){ .body = "x" };
    ck_assert_ptr_null(lb_httpc_request(c, "http://127.0.0.1:1/", &o, done, &g));
    static const char *const many[] = { "a", "b", "c", "d", "e", NULL };
    o = (struct lb_httpc_opts){ .headers = many };
    ck_assert_ptr_null(lb_httpc_request(c, "http://127.0.0.1:1/", &o, done, &g));
    lb_httpc_free(c);
    event_base_free(base);
}
END_TEST

Suite *httpc_suite(void)
{
    Suite *s = suite_create("httpc");
    TCase *tc = tcase_create("requests");
    tcase_add_test(tc, test_httpc_get_headers);
    tcase_add_test(tc, test_httpc_head_and_post);
    tcase_add_test(tc, test_httpc_limits);
    suite_add_tcase(s, tc);
    return s;
}
