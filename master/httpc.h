/* HTTP requests from the control process with libcurl's multi interface on
 * its libevent loop: the registries' APIs (etcd's JSON gateway, Consul)
 * and the ACME server. Nothing blocks: curl tells which sockets and
 * timeout to watch. */
#ifndef LB_HTTPC_H
#define LB_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#define LB_HTTPC_HEADERS_MAX 4          /* response headers one request asks for */

struct lb_httpc;
struct lb_httpc_req;

enum lb_httpc_method { LB_HTTPC_GET, LB_HTTPC_HEAD, LB_HTTPC_POST };

/* Each piece of a streamed body (etcd's watch) as it arrives. false ends
 * the request (DONE then gets an error). It must not start or cancel
 * requests: curl is in the middle of a transfer. */
typedef bool (*lb_httpc_data_cb)(void *arg, const char *data, size_t len);
/* The end: ERROR NULL and the HTTP STATUS, the BODY (when not streamed;
 * NUL-terminated, "" for none) and HEADERS, the values of the response
 * headers asked for in the same order (NULL: not in the answer); or ERROR
 * says what failed. All of it is freed after this returns. DONE may start
 * requests, and must forget this one. */
typedef void (*lb_httpc_done_cb)(void *arg, const char *error, long status, const char *body,
                                 size_t len, const char *const *headers);

/* What a request asks for besides its URL. Zeroed: a GET over http or
 * https, no proxy, 2 s to connect, no overall timeout, up to 4 MB of body
 * buffered, no response header. */
struct lb_httpc_opts {
    enum lb_httpc_method method;
    const char *body;                   /* POST's (copied) */
    const char *content_type;           /* of BODY; NULL: application/json */
    const char *accept;                 /* NULL: curl's */
    const char *user_agent;             /* NULL: none */
    const char *ca_file;                /* NULL: the system's CAs */
    bool https_only;
    bool env_proxy;                     /* the https_proxy... environment applies */
    uint64_t timeout_ms;                /* the whole request; 0: none (a stream) */
    uint64_t connect_timeout_ms;        /* 0: 2 s */
    size_t body_max;                    /* 0: 4 MB */
    /* Names of the response headers DONE gets, NULL-terminated (NULL:
     * none), up to LB_HTTPC_HEADERS_MAX. */
    const char *const *headers;
    lb_httpc_data_cb stream;            /* NULL: the body is buffered */
};

/* The first one in the process initializes libcurl, once. */
struct lb_httpc *lb_httpc_new(struct event_base *base);
/* Requests still under way must have been cancelled. */
void lb_httpc_free(struct lb_httpc *c);

/* Start a request to URL as O says (NULL: zeroed); DONE gets its end.
 * NULL when out of memory or O is not valid; DONE is then not called. */
struct lb_httpc_req *lb_httpc_request(struct lb_httpc *c, const char *url,
                                      const struct lb_httpc_opts *o, lb_httpc_done_cb done,
                                      void *arg);
/* Abandon REQ: DONE is not called. */
void lb_httpc_cancel(struct lb_httpc_req *req);

#endif
