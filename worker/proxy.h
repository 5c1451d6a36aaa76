/* The HTTP/1.1 reverse proxy: one lb_session per client connection.
 *
 * Session states:
 *
 *              accept                                     a try failed, retried
 *                |                                         +---------------> RETRY
 *                v        head complete, routed, backend picked   |  backoff over: |
 *   +-------> HEAD -------------------------------------------> PROXY <---------------+
 *   |            |  bad head / no route / no backend             |   |   the next try
 *   |            +--> error response ---+                        |   | 101 to an
 *   |                                   v                        |   | Upgrade:
 *   +---- keep-alive, next request -- (exchange done) <----------+   | websocket
 *                                       |                            v
 *                                       v  close wanted           TUNNEL
 *                                    CLOSING <--- either side ends ---+
 *                                       |
 *                 output sent, our FIN, the client's FIN (<= 5 s) --> freed
 *
 * RETRY (worker/retry.h) holds no backend connection: the session timer
 * brings the next try, on a server picked then.
 *
 * QUEUED (worker/queue.h): between HEAD (or RETRY) and PROXY when every
 * server that could take the request is at its max_requests; it holds no
 * backend connection and no place in flight until it is sent.
 *
 * In PROXY the request and the response advance independently: the request
 * body streams to the backend while the response may already stream back.
 * Each direction moves whole evbuffer chains (lb_conn_move) and stops
 * reading its source once the source's input and the destination's output
 * hold buffer_limit bytes together (the two connections are paired:
 * lb_conn_pair), resuming when the output drains to half of it.
 */
#ifndef LB_PROXY_H
#define LB_PROXY_H

#include <sys/socket.h>

#include "worker/worker.h"

/* Take ownership of FD, accepted from PEER on listener L, and start serving
 * it (or close it: max_connections_per_ip). */
void lb_proxy_accept(struct lb_worker *w, int fd, const struct sockaddr *peer,
                     const struct lb_listener_cfg *l);
/* Graceful stop: close idle client connections, let busy ones finish their
 * current exchange and close. */
void lb_proxy_drain(struct lb_worker *w);
/* Free every session at once (fast stop), and the free lists. */
void lb_proxy_close_all(struct lb_worker *w);
/* Free the free lists' objects (after a burst: see lb_worker_trim). */
void lb_proxy_lists_clear(void);

#endif
