/* lbd-testbackend: a small HTTP/1.1 origin server for lbd's end-to-end
 * tests and demos.
 *
 *   lbd-testbackend -l ADDR:PORT [-l ADDR:PORT ...] [-n NAME] [-t IDLE_SEC]
 *
 * It prints "ready" once every listener is bound, then answers each request
 * as its query string asks (status=, delay=, size=, chunked=, close=,
 * reset=, drop=, echo=, hang=, ws=, trickle=, trickle_head=, endless=,
 * hdrsize=, retry_after=, sts=, setcookie=, early_hints=; see request.h) so a test can provoke exactly the backend behaviour it
 * wants to see lbd handle. GET /stats reports counters as JSON; GET
 * /control?status=503 (or reset=1) makes every later request fail so until
 * a bare GET /control. Every answer to a request with a body says how much
 * of it arrived (X-Body-Bytes) and its FNV-1a 64 (X-Body-Sum, in hex).
 *
 * It is written on bare bufferevents rather than evhttp because the tests
 * need control of every byte and of the connection itself: keep-alive
 * accounting, pipelining, resets, half-written bodies.
 *
 * Each connection serves one request at a time: the next pipelined head is
 * not parsed until the previous response has left the output buffer. That
 * keeps the state machine linear and gives back-pressure for free.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "tests/backend/request.h"

#define PROG "lbd-testbackend"

#define LISTEN_BACKLOG       1024
#define IDLE_TIMEOUT_DEFAULT 120            /* seconds */
#define LINGER_TIMEOUT       2              /* seconds to drain after FIN */
#define NAME_MAX_LEN         200
#define CHUNK_MAX            (16 * 1024)    /* response chunk size */
#define PIECE_MAX            (64 * 1024)
#define FNV_OFFSET           0xcbf29ce484222325ULL
#define FNV_PRIME            0x100000001b3ULL    /* Content-Length body piece */
#define OUT_LOW_WATER        (256 * 1024)   /* refill below this... */
#define OUT_HIGH_WATER       (512 * 1024)   /* ...up to this */
#define IO_SINGLE_MAX        (256 * 1024)   /* per read()/write() call */
#define CHUNK_LINE_MAX       4096           /* chunk-size and trailer lines */

/* The size= body repeats this 64-byte line, so byte i of any body is
 * PATTERN_LINE[i % 64] and a test can verify content, not just length. */
static const char PATTERN_LINE[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n";
#define PATTERN_LINE_LEN 64
static char pattern[PIECE_MAX];   /* PATTERN_LINE repeated; pieces are
                                   * multiples of 64 so each starts at 0 */

static const char CONTINUE_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

struct conn;

struct server {
    struct event_base *base;
    const char *name;
    char *name_nl;              /* "NAME\n", the default body */
    size_t name_nl_len;
    struct timeval idle;
    uint64_t accepted;          /* connections since start; gives conn ids */
    uint64_t requests;          /* responses started since start */
    uint64_t active;            /* connections open now */
    uint64_t heads;             /* request heads but /stats and /control */
    uint64_t delayed;           /* requests waiting out their delay= now */
    uint64_t delayed_peak;      /* most of them at once since start */
    struct request fault;       /* set by GET /control: applies to every request */
    struct conn *conns;         /* every open connection, freed on exit */
};

enum conn_state {
    CS_HEAD,        /* waiting for (the rest of) a request head */
    CS_BODY_CL,     /* draining a Content-Length body */
    CS_CHUNK_SIZE,  /* chunked body: expecting a chunk-size line */
    CS_CHUNK_DATA,  /* chunked body: draining chunk data */
    CS_CHUNK_CRLF,  /* chunked body: expecting the CRLF after the data */
    CS_TRAILER,     /* chunked body: trailer lines up to the empty one */
    CS_DELAY,       /* request read; delay= timer pending */
    CS_TRICKLE,     /* trickle= or trickle_head=: the head a byte per timer tick */
    CS_HINTS,       /* early_hints=: 103 responses under back-pressure */
    CS_HEAD_STREAM, /* endless= or hdrsize=: header bytes under back-pressure */
    CS_SENDING,     /* streaming the response body under back-pressure */
    CS_DRAIN,       /* response queued; waiting for the output to empty */
    CS_HANG,        /* hang=1: discard input, never answer */
    CS_ECHO,        /* ws=1: after the 101, every byte read is written back */
    CS_LINGER,      /* write side shut down; discard input until EOF */
};

struct conn {
    struct server *srv;
    struct conn *prev, *next;
    struct bufferevent *bev;
    struct event *timer;        /* delay=, trickle= */
    enum conn_state state;
    uint64_t id;                /* 1-based among accepted connections */
    uint64_t seq;               /* 1-based request index on this conn */

    struct request req;
    bool bad;                   /* answering 400 instead of req */
    char *head;                 /* raw head, for echo=1 */
    size_t head_len;
    uint64_t body_left;         /* of the current CL body or chunk */
    uint64_t body_bytes;        /* decoded request body bytes so far */
    uint64_t body_sum;          /* their FNV-1a 64 (X-Body-Sum) */

    bool close_after;
    bool chunked_resp;
    const char *src;            /* fixed body, or NULL for the pattern */
    size_t src_off;
    uint64_t resp_left;         /* body bytes still to queue */
    uint64_t hints_left;        /* 103s still to send (REQ_FOREVER: no end) */
    char *trickle;              /* trickle=, trickle_head=: the head not yet sent */
    size_t trickle_len, trickle_off;
    uint64_t hdr_left;          /* hdrsize=: value bytes still to queue */
    char scratch[2048];         /* the /stats body lives here */
};

enum step {
    STEP_AGAIN,     /* state advanced; run the state machine again */
    STEP_WAIT,      /* need more input, a timer or the output to drain */
    STEP_GONE,      /* the connection was freed: do not touch it */
};

static void conn_process(struct conn *c);

/* ---- connection lifetime ---------------------------------------------- */

static void conn_free(struct conn *c)
{
    struct server *srv = c->srv;

    if (c->state == CS_DELAY)
        srv->delayed--;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    srv->active--;
    event_free(c->timer);
    bufferevent_free(c->bev);   /* BEV_OPT_CLOSE_ON_FREE closes the fd */
    free(c->head);
    free(c->trickle);
    free(c);
}

/* Close with RST: a zero linger time makes close() abort the connection. */
static enum step conn_reset(struct conn *c)
{
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };

    (void)setsockopt(bufferevent_getfd(c->bev), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    conn_free(c);
    return STEP_GONE;
}

/* Close cleanly: send FIN, then read and discard until the peer closes
 * too. Closing at once with unread input (say, more pipelined requests)
 * would make the kernel send RST, and an RST can destroy the response we
 * just sent before the client reads it. */
static enum step conn_linger(struct conn *c)
{
    struct timeval tv = { .tv_sec = LINGER_TIMEOUT, .tv_usec = 0 };
    struct evbuffer *in = bufferevent_get_input(c->bev);

    if (shutdown(bufferevent_getfd(c->bev), SHUT_WR) < 0) {
        conn_free(c);
        return STEP_GONE;
    }
    c->state = CS_LINGER;
    evtimer_del(c->timer);
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_set_timeouts(c->bev, &tv, NULL);
    bufferevent_enable(c->bev, EV_READ);
    return STEP_WAIT;
}

/* ---- responses ----------------------------------------------------------- */

static const char *reason_phrase(int status)
{
    static const struct {
        int status;
        const char *reason;
    } table[] = {
        { 100, "Continue" }, { 101, "Switching Protocols" }, { 103, "Early Hints" },
        { 200, "OK" }, { 201, "Created" }, { 202, "Accepted" }, { 204, "No Content" },
        { 206, "Partial Content" }, { 301, "Moved Permanently" }, { 302, "Found" },
        { 303, "See Other" }, { 304, "Not Modified" }, { 307, "Temporary Redirect" },
        { 308, "Permanent Redirect" }, { 400, "Bad Request" }, { 401, "Unauthorized" },
        { 403, "Forbidden" }, { 404, "Not Found" }, { 405, "Method Not Allowed" },
        { 408, "Request Timeout" }, { 409, "Conflict" }, { 411, "Length Required" },
        { 413, "Content Too Large" }, { 414, "URI Too Long" }, { 429, "Too Many Requests" },
        { 500, "Internal Server Error" }, { 501, "Not Implemented" }, { 502, "Bad Gateway" },
        { 503, "Service Unavailable" }, { 504, "Gateway Timeout" },
        { 505, "HTTP Version Not Supported" },
    };

    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].status == status)
            return table[i].reason;
    return "Unknown";
}

/* JSON string body (without quotes); the name is at most NAME_MAX_LEN
 * bytes, so 6 bytes per input byte always fits dst. */
static size_t json_escape(char *dst, size_t cap, const char *s)
{
    size_t n = 0;

    for (; *s != '\0' && n + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            dst[n++] = '\\';
            dst[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)snprintf(dst + n, cap - n, "\\u%04x", ch);
        } else {
            dst[n++] = (char)ch;
        }
    }
    dst[n] = '\0';
    return n;
}

static void stats_body(struct conn *c)
{
    const struct server *srv = c->srv;
    char name[NAME_MAX_LEN * 6 + 8];
    int n;

    json_escape(name, sizeof name, srv->name);
    n = snprintf(c->scratch, sizeof c->scratch,
                 "{\"name\":\"%s\",\"connections\":%" PRIu64 ",\"requests\":%" PRIu64
                 ",\"active\":%" PRIu64 ",\"heads\":%" PRIu64 ",\"delayed\":%" PRIu64
                 ",\"delayed_peak\":%" PRIu64 "}\n",
                 name, srv->accepted, srv->requests, srv->active, srv->heads, srv->delayed,
                 srv->delayed_peak);
    c->src = c->scratch;
    c->resp_left = n > 0 ? (uint64_t)n : 0;
}

/* Queue body pieces until the output holds OUT_HIGH_WATER bytes; the
 * write callback calls again once it drains below OUT_LOW_WATER. This is
 * what lets size=1073741824 stream in constant memory. */
static enum step fill(struct conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);

    while (c->resp_left > 0 && evbuffer_get_length(out) < OUT_HIGH_WATER) {
        size_t max = c->chunked_resp ? CHUNK_MAX : PIECE_MAX;
        size_t n = c->resp_left < max ? (size_t)c->resp_left : max;
        int rc = 0;

        if (c->chunked_resp && evbuffer_add_printf(out, "%zx\r\n", n) < 0)
            rc = -1;
        if (rc == 0 && c->src != NULL)
            rc = evbuffer_add(out, c->src + c->src_off, n);
        else if (rc == 0)
            rc = evbuffer_add_reference(out, pattern, n, NULL, NULL);
        if (rc == 0 && c->chunked_resp)
            rc = evbuffer_add(out, "\r\n", 2);
        if (rc != 0) {
            conn_free(c);
            return STEP_GONE;
        }
        c->src_off += n;
        c->resp_left -= n;
    }
    if (c->resp_left > 0) {
        c->state = CS_SENDING;
        bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW_WATER, 0);
        return STEP_WAIT;
    }
    if (c->chunked_resp && evbuffer_add(out, "0\r\n\r\n", 5) != 0) {
        conn_free(c);
        return STEP_GONE;
    }
    /* The write callback fires once the output is empty: the response is
     * then on the wire (in the kernel), and the next request may start. */
    c->state = CS_DRAIN;
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    return STEP_WAIT;
}

/* endless=: HDR_LINE repeated, 64 bytes each; hdrsize=: 'v' repeated. */
#define HDR_LINE "X-Endless: 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNO\r\n"
#define HDR_LINE_LEN 64
static char hdr_lines[PIECE_MAX];
static char hdr_value[PIECE_MAX];

/* endless= or hdrsize=: queue header bytes while the output drains, as
 * fill() does for bodies; hdrsize= then ends the head and sends the body. */
static enum step fill_head(struct conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);

    while ((c->req.endless || c->hdr_left > 0) && evbuffer_get_length(out) < OUT_HIGH_WATER) {
        size_t n = c->req.endless || c->hdr_left > PIECE_MAX ? PIECE_MAX : (size_t)c->hdr_left;
        if (evbuffer_add_reference(out, c->req.endless ? hdr_lines : hdr_value, n,
                                   NULL, NULL) != 0) {
            conn_free(c);
            return STEP_GONE;
        }
        if (!c->req.endless)
            c->hdr_left -= n;
    }
    if (c->req.endless || c->hdr_left > 0) {
        c->state = CS_HEAD_STREAM;
        bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW_WATER, 0);
        return STEP_WAIT;
    }
    if (evbuffer_add(out, "\r\n\r\n", 4) != 0) {
        conn_free(c);
        return STEP_GONE;
    }
    return fill(c);
}

/* trickle= (the whole head) or trickle_head= (all but the status line,
 * sent at once: a backend "responding" that never ends its head): one byte
 * of the head per tick, then the body at once. */
static enum step trickle_step(struct conn *c)
{
    if (bufferevent_write(c->bev, c->trickle + c->trickle_off, 1) < 0) {
        conn_free(c);
        return STEP_GONE;
    }
    if (++c->trickle_off < c->trickle_len) {
        uint64_t ms = c->req.trickle_ms ? c->req.trickle_ms : c->req.trickle_head_ms;
        struct timeval tv = {
            .tv_sec = (time_t)(ms / 1000),
            .tv_usec = (suseconds_t)(ms % 1000) * 1000,
        };
        if (evtimer_add(c->timer, &tv) < 0) {
            conn_free(c);
            return STEP_GONE;
        }
        return STEP_WAIT;
    }
    free(c->trickle);
    c->trickle = NULL;
    return fill(c);
}

/* Choose the body source and length for the current request. */
static void choose_body(struct conn *c)
{
    const struct request *r = &c->req;
    static const char bad_body[] = "bad request\n";

    c->src_off = 0;
    if (c->bad) {
        c->src = bad_body;
        c->resp_left = sizeof bad_body - 1;
    } else if (r->stats) {
        stats_body(c);
    } else if (r->echo) {
        c->src = c->head;
        c->resp_left = c->head_len;
    } else if (r->has_size) {
        c->src = NULL;
        c->resp_left = r->size;
    } else {
        c->src = c->srv->name_nl;
        c->resp_left = c->srv->name_nl_len;
    }
}

static enum step respond(struct conn *c)
{
    struct server *srv = c->srv;
    const struct request *r = &c->req;
    int status = c->bad ? 400 : r->stats ? 200 : r->status;
    /* 1xx, 204 and 304 never have a body nor a length (RFC 9112 6.3);
     * HEAD has the length a GET would have, but no body. */
    bool bodyless_status = status < 200 || status == 204 || status == 304;
    char head[1024];
    size_t n = 0;

    srv->requests++;
    choose_body(c);
    c->chunked_resp = !c->bad && r->chunked && r->minor >= 1 && !bodyless_status;
    c->close_after = c->bad || !r->keep_alive || r->close || r->te_and_cl;

#define HEAD_ADD(...) \
    (n += (size_t)snprintf(head + n, n < sizeof head ? sizeof head - n : 0, __VA_ARGS__))
    HEAD_ADD("HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
    HEAD_ADD("Content-Type: %s\r\n", r->stats && !c->bad ? "application/json" : "text/plain");
    if (c->chunked_resp)
        HEAD_ADD("Transfer-Encoding: chunked\r\n");
    else if (!bodyless_status)
        HEAD_ADD("Content-Length: %" PRIu64 "\r\n", c->resp_left);
    HEAD_ADD("X-Backend: %s\r\n", srv->name);
    HEAD_ADD("X-Conn-Id: %" PRIu64 "\r\n", c->id);
    HEAD_ADD("X-Conn-Seq: %" PRIu64 "\r\n", c->seq);
    HEAD_ADD("X-Body-Bytes: %" PRIu64 "\r\n", c->body_bytes);
    if (c->body_bytes > 0)
        HEAD_ADD("X-Body-Sum: %016" PRIx64 "\r\n", c->body_sum);
    if (!c->bad && r->sts)
        HEAD_ADD("Strict-Transport-Security: max-age=5\r\n");
    if (!c->bad && r->setcookie)
        HEAD_ADD("Set-Cookie: app=1; Path=/\r\n");
    if (!c->bad && r->has_retry_after)
        HEAD_ADD("Retry-After: %" PRIu64 "\r\n", r->retry_after);
    if (c->close_after)
        HEAD_ADD("Connection: close\r\n");
    else if (r->minor == 0)
        HEAD_ADD("Connection: keep-alive\r\n");
    bool stream = !c->bad && !r->stats && (r->endless || r->hdrsize > 0);
    if (stream && r->hdrsize > 0 && !r->endless)
        HEAD_ADD("X-Big: ");
    else if (!stream)
        HEAD_ADD("\r\n");
#undef HEAD_ADD
    if (r->is_head || bodyless_status) {
        c->resp_left = 0;
        c->chunked_resp = false;    /* no body means no last-chunk either */
    }
    /* Cannot overflow: the name is capped at NAME_MAX_LEN bytes. */
    if (n >= sizeof head) {
        conn_free(c);
        return STEP_GONE;
    }
    if (!c->bad && !r->stats && (r->trickle_ms > 0 || r->trickle_head_ms > 0) && !stream) {
        size_t line = r->trickle_ms > 0 ? 0 : (size_t)(strstr(head, "\r\n") - head) + 2;
        c->trickle = malloc(n - line);
        if (c->trickle == NULL || (line > 0 && bufferevent_write(c->bev, head, line) < 0)) {
            conn_free(c);
            return STEP_GONE;
        }
        memcpy(c->trickle, head + line, n - line);
        c->trickle_len = n - line;
        c->trickle_off = 0;
        c->state = CS_TRICKLE;
        return trickle_step(c);
    }
    if (bufferevent_write(c->bev, head, n) < 0) {
        conn_free(c);
        return STEP_GONE;
    }
    if (stream) {
        c->hdr_left = r->hdrsize;
        return fill_head(c);
    }
    return fill(c);
}

static enum step bad_request(struct conn *c)
{
    c->bad = true;
    memset(&c->req, 0, sizeof c->req);
    c->req.minor = 1;
    bufferevent_disable(c->bev, EV_READ);
    return respond(c);
}

/* The response to the current request is on its way: start the next. */
static void response_done(struct conn *c)
{
    free(c->head);
    c->head = NULL;
    c->head_len = 0;
    c->src = NULL;
    if (c->close_after) {
        conn_linger(c);
        return;
    }
    c->state = CS_HEAD;
    bufferevent_enable(c->bev, EV_READ);
    /* Pipelined requests may already be buffered: no read event will come
     * for them, so look now. */
    conn_process(c);
}

/* early_hints=: queue 103s up to the high-water mark; the write callback
 * asks for more as they drain, and the answer follows the last one. */
static enum step send_hints(struct conn *c)
{
    static const char hint[] = "HTTP/1.1 103 Early Hints\r\n"
                               "Link: </style.css>; rel=preload; as=style\r\n\r\n";
    struct evbuffer *out = bufferevent_get_output(c->bev);

    while (c->hints_left > 0 && evbuffer_get_length(out) < OUT_HIGH_WATER) {
        if (evbuffer_add(out, hint, sizeof hint - 1) < 0) {
            conn_free(c);
            return STEP_GONE;
        }
        if (c->hints_left != REQ_FOREVER)
            c->hints_left--;
    }
    if (c->hints_left > 0) {
        c->state = CS_HINTS;
        bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW_WATER, 0);
        return STEP_WAIT;
    }
    return respond(c);
}

/* The request is read and its delay over: interim responses, then the answer. */
static enum step answer(struct conn *c)
{
    return c->hints_left > 0 ? send_hints(c) : respond(c);
}

static void delay_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    (void)what;
    if (c->state == CS_TRICKLE) {
        trickle_step(c);
        return;
    }
    if (c->state == CS_DELAY) {
        c->srv->delayed--;
        c->state = CS_DRAIN;    /* what answer() queues sets the next state */
    }
    answer(c);
}

/* ---- requests ------------------------------------------------------------ */

/* The whole request, body included, has been read. */
static enum step request_complete(struct conn *c)
{
    const struct request *r = &c->req;

    if (r->ws) {
        /* A stand-in for a WebSocket server: the upgrade, then raw echo
         * (framing is the endpoints' business, not the proxy's). */
        static const char up[] = "HTTP/1.1 101 Switching Protocols\r\n"
                                 "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        c->srv->requests++;
        bufferevent_write(c->bev, up, sizeof(up) - 1);
        c->state = CS_ECHO;
        return STEP_AGAIN;
    }
    if (r->hang) {
        /* Never answer, and no idle timeout either: the peer decides. */
        c->state = CS_HANG;
        bufferevent_set_timeouts(c->bev, NULL, NULL);
        return STEP_AGAIN;
    }
    /* Stop reading while we answer: pipelined data waits in the kernel. */
    bufferevent_disable(c->bev, EV_READ);
    c->hints_left = r->early_hints;
    if (r->delay_ms > 0) {
        struct timeval tv = {
            .tv_sec = (time_t)(r->delay_ms / 1000),
            .tv_usec = (suseconds_t)(r->delay_ms % 1000) * 1000,
        };
        c->state = CS_DELAY;
        if (++c->srv->delayed > c->srv->delayed_peak)
            c->srv->delayed_peak = c->srv->delayed;
        if (evtimer_add(c->timer, &tv) < 0) {
            conn_free(c);
            return STEP_GONE;
        }
        return STEP_WAIT;
    }
    return answer(c);
}

/* A head has been parsed: act on it before any body arrives. */
static enum step request_start(struct conn *c)
{
    const struct request *r = &c->req;

    if (r->reset)
        return conn_reset(c);
    if (r->drop)
        return conn_linger(c);
    if (r->expect_continue && (r->chunked_body || r->content_length > 0) &&
        bufferevent_write(c->bev, CONTINUE_100, sizeof CONTINUE_100 - 1) < 0) {
        conn_free(c);
        return STEP_GONE;
    }
    if (r->chunked_body) {
        c->state = CS_CHUNK_SIZE;
    } else if (r->content_length > 0) {
        c->body_left = r->content_length;
        c->state = CS_BODY_CL;
    } else {
        return request_complete(c);
    }
    return STEP_AGAIN;
}

/* RFC 9112 2.2: ignore empty lines before a request line (some clients
 * send a stray CRLF after a POST body). */
static void skip_empty_lines(struct evbuffer *in)
{
    for (;;) {
        char b[2];
        ev_ssize_t n = evbuffer_copyout(in, b, sizeof b);

        if (n >= 1 && b[0] == '\n')
            evbuffer_drain(in, 1);
        else if (n == 2 && b[0] == '\r' && b[1] == '\n')
            evbuffer_drain(in, 2);
        else
            return;
    }
}

/* GET /control sets the server's fault (answered 200, counted as /stats
 * is); every other request but /stats gets it and is counted in heads. */
static void apply_fault(struct conn *c)
{
    struct server *srv = c->srv;
    struct request *r = &c->req;

    if (r->stats)
        return;
    if (r->control) {
        srv->fault = *r;
        r->status = 200;
        r->reset = false;
        r->delay_ms = 0;
        r->has_retry_after = false;
        return;
    }
    srv->heads++;
    if (!srv->fault.control)
        return;
    if (srv->fault.status != 200)
        r->status = srv->fault.status;
    r->reset = r->reset || srv->fault.reset;
    if (srv->fault.delay_ms > 0)
        r->delay_ms = srv->fault.delay_ms;
    if (srv->fault.has_retry_after) {
        r->has_retry_after = true;
        r->retry_after = srv->fault.retry_after;
    }
}

static enum step step_head(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);

    skip_empty_lines(in);
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return STEP_WAIT;

    size_t n = len < REQ_HEAD_MAX ? len : REQ_HEAD_MAX;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    if (p == NULL) {
        conn_free(c);
        return STEP_GONE;
    }
    size_t end = req_head_end(p, n);
    if (end == 0) {
        if (len < REQ_HEAD_MAX)
            return STEP_WAIT;
        c->seq++;
        c->body_bytes = 0;
        c->body_sum = FNV_OFFSET;
        return bad_request(c);
    }

    free(c->head);
    c->head = malloc(end);
    if (c->head == NULL) {
        conn_free(c);
        return STEP_GONE;
    }
    memcpy(c->head, p, end);
    c->head_len = end;
    evbuffer_drain(in, end);
    c->seq++;
    c->body_bytes = 0;
    c->body_sum = FNV_OFFSET;
    c->bad = false;
    if (req_parse(c->head, end, &c->req) < 0)
        return bad_request(c);
    apply_fault(c);
    return request_start(c);
}

static enum step step_body_data(struct conn *c, enum conn_state next)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    size_t n = (uint64_t)len < c->body_left ? len : (size_t)c->body_left;

    if (n == 0)
        return STEP_WAIT;
    /* The body's checksum, so a test can tell it arrived intact. */
    for (size_t done = 0; done < n;) {
        struct evbuffer_ptr pos;
        struct evbuffer_iovec v[16];
        evbuffer_ptr_set(in, &pos, done, EVBUFFER_PTR_SET);
        int nv = evbuffer_peek(in, (ev_ssize_t)(n - done), &pos, v, 16);
        for (int i = 0; i < nv && i < 16 && done < n; i++) {
            const unsigned char *b = v[i].iov_base;
            size_t k = v[i].iov_len < n - done ? v[i].iov_len : n - done;
            for (size_t j = 0; j < k; j++)
                c->body_sum = (c->body_sum ^ b[j]) * FNV_PRIME;
            done += k;
        }
    }
    evbuffer_drain(in, n);
    c->body_left -= n;
    c->body_bytes += n;
    if (c->body_left > 0)
        return STEP_WAIT;
    if (next == CS_HEAD)
        return request_complete(c);
    c->state = next;
    return STEP_AGAIN;
}

/* One line of chunked framing (CRLF or bare LF stripped), or NULL when it
 * has not fully arrived. *bad reports a line too long to be legitimate. */
static char *read_line(struct conn *c, size_t *len, bool *bad)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    char *line = evbuffer_readln(in, len, EVBUFFER_EOL_CRLF);

    *bad = false;
    if (line == NULL) {
        *bad = evbuffer_get_length(in) > CHUNK_LINE_MAX;
        return NULL;
    }
    /* An embedded NUL would hide the rest of the line from the parser. */
    if (*len > CHUNK_LINE_MAX || strlen(line) != *len) {
        free(line);
        *bad = true;
        return NULL;
    }
    return line;
}

static enum step step_chunk_line(struct conn *c)
{
    size_t len;
    bool bad;
    char *line = read_line(c, &len, &bad);
    uint64_t size = 0;
    int rc = 0;

    if (line == NULL)
        return bad ? bad_request(c) : STEP_WAIT;

    switch (c->state) {
    case CS_CHUNK_SIZE:
        rc = req_parse_chunk_size(line, &size);
        break;
    case CS_CHUNK_CRLF:
        rc = len == 0 ? 0 : -1;
        break;
    default:    /* CS_TRAILER: field lines are ignored until the empty one */
        break;
    }
    free(line);
    if (rc < 0)
        return bad_request(c);

    if (c->state == CS_CHUNK_SIZE) {
        c->body_left = size;
        c->state = size > 0 ? CS_CHUNK_DATA : CS_TRAILER;
    } else if (c->state == CS_CHUNK_CRLF) {
        c->state = CS_CHUNK_SIZE;
    } else if (len == 0) {
        return request_complete(c);
    }
    return STEP_AGAIN;
}

/* Run the state machine over whatever input is buffered. */
static void conn_process(struct conn *c)
{
    for (;;) {
        struct evbuffer *in = bufferevent_get_input(c->bev);
        enum step s;

        switch (c->state) {
        case CS_HEAD:
            s = step_head(c);
            break;
        case CS_BODY_CL:
            s = step_body_data(c, CS_HEAD);
            break;
        case CS_CHUNK_DATA:
            s = step_body_data(c, CS_CHUNK_CRLF);
            break;
        case CS_CHUNK_SIZE:
        case CS_CHUNK_CRLF:
        case CS_TRAILER:
            s = step_chunk_line(c);
            break;
        case CS_ECHO:
            bufferevent_write_buffer(c->bev, in);
            return;
        case CS_HANG:
        case CS_LINGER:
            evbuffer_drain(in, evbuffer_get_length(in));
            return;
        default:
            return;     /* waiting for a timer or for the output */
        }
        if (s != STEP_AGAIN)
            return;
    }
}

/* ---- libevent callbacks ------------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_process(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;

    (void)bev;
    if (c->state == CS_SENDING)
        fill(c);
    else if (c->state == CS_HEAD_STREAM)
        fill_head(c);
    else if (c->state == CS_HINTS)
        send_hints(c);
    else if (c->state == CS_DRAIN)
        response_done(c);
    /* else: a 100 Continue went out; nothing to do */
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    /* EOF, error or idle timeout. Reading is disabled while a response is
     * pending, so EOF here means the peer left between requests, mid
     * request, or during hang/linger: in every case we are done. */
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        conn_free(arg);
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    struct server *srv = arg;
    struct conn *c;
    int one = 1;

    (void)lev;
    (void)sa;
    (void)socklen;
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        evutil_closesocket(fd);
        return;
    }
    c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    c->timer = evtimer_new(srv->base, delay_cb, c);
    if (c->timer == NULL) {
        bufferevent_free(c->bev);
        free(c);
        return;
    }
    /* Small responses must not wait for Nagle: tests measure latency. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    c->srv = srv;
    c->id = ++srv->accepted;
    c->state = CS_HEAD;
    c->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = c;
    srv->conns = c;
    srv->active++;

    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    if (srv->idle.tv_sec > 0)
        bufferevent_set_timeouts(c->bev, &srv->idle, &srv->idle);
    /* Larger single reads and writes than the 16 KiB default: 1 GiB bodies
     * would otherwise cost 65536 event-loop turns each way. */
    bufferevent_set_max_single_read(c->bev, IO_SINGLE_MAX);
    bufferevent_set_max_single_write(c->bev, IO_SINGLE_MAX);
    if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0)
        conn_free(c);
}

static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();

    (void)lev;
    (void)arg;
    /* EMFILE and friends: report and keep serving the connections we have. */
    fprintf(stderr, PROG ": accept: %s\n", evutil_socket_error_to_string(err));
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

/* ---- setup ---------------------------------------------------------------- */

/* ADDR:PORT with a mandatory port: "127.0.0.1:9001" or "[::1]:9001".
 * (libevent alone would accept a bare address and pick port 0.) */
static int parse_listen_addr(const char *s, struct sockaddr_storage *ss, int *sslen)
{
    const char *colon = strrchr(s, ':');

    if (colon == NULL || colon[1] == '\0')
        return -1;
    if (s[0] == '[' ? colon[-1] != ']' : strchr(s, ':') != colon)
        return -1;
    *sslen = (int)sizeof *ss;
    memset(ss, 0, sizeof *ss);
    return evutil_parse_sockaddr_port(s, (struct sockaddr *)ss, sslen);
}

static struct evconnlistener *open_listener(struct server *srv, const char *addr)
{
    struct sockaddr_storage ss;
    int sslen;
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
    struct evconnlistener *lev;

    if (parse_listen_addr(addr, &ss, &sslen) < 0) {
        fprintf(stderr, PROG ": bad listen address '%s' (want ADDR:PORT or [ADDR6]:PORT)\n",
                addr);
        return NULL;
    }
    /* So that [::]:P and 0.0.0.0:P can be listened on side by side. */
    if (ss.ss_family == AF_INET6)
        flags |= LEV_OPT_BIND_IPV6ONLY;
    lev = evconnlistener_new_bind(srv->base, accept_cb, srv, flags, LISTEN_BACKLOG,
                                  (struct sockaddr *)&ss, sslen);
    if (lev == NULL) {
        fprintf(stderr, PROG ": listen on %s: %s\n", addr, strerror(errno));
        return NULL;
    }
    evconnlistener_set_error_cb(lev, accept_error_cb);
    return lev;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " -l ADDR:PORT [-l ADDR:PORT ...] [-n NAME] [-t IDLE_SEC]\n"
            "  -l  listen address, IPv4 or [IPv6], repeatable\n"
            "  -n  backend name for X-Backend and the default body (default: first -l)\n"
            "  -t  idle connection timeout in seconds, 0 for none (default %d)\n"
            "Per-request behaviour comes from the query string:\n"
            "  status=N delay=MS size=N chunked=1 close=1 reset=1 drop=1 echo=1 hang=1 ws=1\n"
            "  trickle=MS trickle_head=MS endless=1 hdrsize=N retry_after=S sts=1 setcookie=1\n"
            "  early_hints=N|forever\n"
            "GET /stats returns counters as JSON (heads: requests but /stats and /control;\n"
            "delayed, delayed_peak: requests waiting out delay= now, and most at once).\n"
            "GET /control?status=N&reset=1&delay=MS&retry_after=S makes every later request\n"
            "behave so;\n"
            "a bare GET /control restores normal answers.\n"
            "Answers say X-Body-Bytes (request body received) and, for a body,\n"
            "X-Body-Sum (its FNV-1a 64 in hex).\n",
            IDLE_TIMEOUT_DEFAULT);
}

static bool name_ok(const char *name)
{
    size_t n = strlen(name);

    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    /* It goes into a header line verbatim. */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return false;
    return true;
}

struct options {
    const char **addrs;
    size_t naddrs;
    const char *name;
    long idle;
};

/* Returns 0 to run, or the exit status to leave with. */
static int parse_options(int argc, char **argv, struct options *o)
{
    int opt;
    char *end;

    o->idle = IDLE_TIMEOUT_DEFAULT;
    while ((opt = getopt(argc, argv, "l:n:t:h")) != -1) {
        switch (opt) {
        case 'l':
            o->addrs[o->naddrs++] = optarg;
            break;
        case 'n':
            o->name = optarg;
            break;
        case 't':
            errno = 0;
            o->idle = strtol(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || end == optarg || o->idle < 0 || o->idle > 86400) {
                fprintf(stderr, PROG ": bad idle timeout '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || o->naddrs == 0) {
        usage(stderr);
        return 2;
    }
    if (o->name == NULL)
        o->name = o->addrs[0];
    if (!name_ok(o->name)) {
        fprintf(stderr, PROG ": bad name (1..%d printable bytes)\n", NAME_MAX_LEN);
        return 2;
    }
    return 0;
}

static void init_pattern(void)
{
    for (size_t i = 0; i < sizeof pattern; i += PATTERN_LINE_LEN)
        memcpy(pattern + i, PATTERN_LINE, PATTERN_LINE_LEN);
    _Static_assert(sizeof HDR_LINE - 1 == HDR_LINE_LEN, "HDR_LINE is 64 bytes");
    for (size_t i = 0; i < sizeof hdr_lines; i += HDR_LINE_LEN)
        memcpy(hdr_lines + i, HDR_LINE, HDR_LINE_LEN);
    memset(hdr_value, 'v', sizeof hdr_value);
}

/* Everything main() may have to free, whichever step failed. */
struct runtime {
    struct server srv;
    struct evconnlistener **listeners;
    size_t nlisteners;
    struct event *sigterm, *sigint;
};

static void runtime_free(struct runtime *rt)
{
    while (rt->srv.conns != NULL)
        conn_free(rt->srv.conns);
    for (size_t i = 0; i < rt->nlisteners; i++)
        evconnlistener_free(rt->listeners[i]);
    free(rt->listeners);
    if (rt->sigterm != NULL)
        event_free(rt->sigterm);
    if (rt->sigint != NULL)
        event_free(rt->sigint);
    free(rt->srv.name_nl);
    if (rt->srv.base != NULL)
        event_base_free(rt->srv.base);
}

static int run(const struct options *o)
{
    struct runtime rt = { 0 };
    struct server *srv = &rt.srv;
    int status = 1;

    srv->name = o->name;
    srv->name_nl_len = strlen(o->name) + 1;
    srv->name_nl = malloc(srv->name_nl_len + 1);
    srv->idle.tv_sec = o->idle;
    rt.listeners = calloc(o->naddrs, sizeof *rt.listeners);
    srv->base = event_base_new();
    if (srv->name_nl == NULL || rt.listeners == NULL || srv->base == NULL) {
        fprintf(stderr, PROG ": out of memory\n");
        goto out;
    }
    snprintf(srv->name_nl, srv->name_nl_len + 1, "%s\n", o->name);

    for (size_t i = 0; i < o->naddrs; i++) {
        rt.listeners[i] = open_listener(srv, o->addrs[i]);
        if (rt.listeners[i] == NULL)
            goto out;
        rt.nlisteners++;
    }
    rt.sigterm = evsignal_new(srv->base, SIGTERM, signal_cb, srv->base);
    rt.sigint = evsignal_new(srv->base, SIGINT, signal_cb, srv->base);
    if (rt.sigterm == NULL || rt.sigint == NULL || evsignal_add(rt.sigterm, NULL) < 0 ||
        evsignal_add(rt.sigint, NULL) < 0) {
        fprintf(stderr, PROG ": cannot install signal handlers\n");
        goto out;
    }

    /* Tests block on this line: after it, connect() must succeed. */
    printf("ready\n");
    fflush(stdout);
    if (event_base_dispatch(srv->base) < 0) {
        fprintf(stderr, PROG ": event loop failed\n");
        goto out;
    }
    status = 0;
out:
    runtime_free(&rt);
    return status;
}

int main(int argc, char **argv)
{
    struct options o = { 0 };
    int rc;

    /* A peer that vanishes mid-response must cost an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);
    init_pattern();

    o.addrs = calloc((size_t)argc, sizeof *o.addrs);
    if (o.addrs == NULL) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    rc = parse_options(argc, argv, &o);
    if (rc == 0)
        rc = run(&o);
    else if (rc < 0)
        rc = 0;     /* -h */
    free(o.addrs);
    return rc;
}
