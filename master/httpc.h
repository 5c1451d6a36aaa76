/* HTTP requests from the control process with libcurl's multi interface on
 * its libevent loop (the registries' APIs: etcd's JSON gateway, Consul).
 * Nothing blocks: curl tells which sockets and timeout to watch. */
#ifndef LB_HTTPC_H
#define LB_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

struct lb_httpc;
struct lb_httpc_req;

/* Each piece of a streamed body (etcd's watch) as it arrives. false ends
 * the request (DONE then gets an error). It must not start or cancel
 * requests: curl is in the middle of a transfer. */
typedef bool (*lb_httpc_data_cb)(void *arg, const char *data, size_t len);
/* The end: ERROR NULL and the HTTP STATUS, the BODY (when not streamed;
 * NUL-terminated) and the value of the header asked for (NULL if none); or
 * ERROR says what failed. The request is freed after this returns. */
typedef void (*lb_httpc_done_cb)(void *arg, const char *error, long status, const char *body,
                                 size_t len, const char *header);

struct lb_httpc *lb_httpc_new(struct event_base *base);
void lb_httpc_free(struct lb_httpc *c);

/* GET URL, or POST BODY (JSON) when not NULL. TIMEOUT_MS: the whole
 * request (0: none, for a stream). STREAM: pieces of the body as they
 * come (NULL: buffered, up to 4 MB). HEADER: the name of a response header
 * whose value DONE gets (NULL: none). NULL when out of memory. */
struct lb_httpc_req *lb_httpc_request(struct lb_httpc *c, const char *url, const char *body,
                                      uint64_t timeout_ms, const char *header,
                                      lb_httpc_data_cb stream, lb_httpc_done_cb done, void *arg);
/* Abandon REQ: DONE is not called. */
void lb_httpc_cancel(struct lb_httpc_req *req);

#endif
