/* A non-blocking TCP connection with an input and an output evbuffer: the
 * I/O layer under the proxy (clients and backends alike).
 *
 * Why not libevent's bufferevent: a bufferevent writes on the next loop
 * iteration, after arming EPOLLOUT, and reads after an ioctl(FIONREAD); that
 * is four epoll_ctl and two ioctl calls per proxied request. Here output is
 * written at the end of the current pass of callbacks (all additions to one
 * connection in one writev), EPOLLOUT is armed only when the socket is full,
 * and reads go straight into reserved evbuffer space.
 *
 *   connect() --EINPROGRESS--> CONNECTING --writable, SO_ERROR 0--> OPEN
 *   accept()  -------------------------------------------------->  OPEN
 *   OPEN: reading while enabled and the input holds < read_limit bytes;
 *         writing whenever the output holds bytes; EOF and errors reported
 *         once through the event callback.
 */
#ifndef LB_CONN_H
#define LB_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event_struct.h>

#include "shared/list.h"

struct event_base;
struct evbuffer;

/* Event callback flags (the same values as libevent's BEV_EVENT_*). */
#define LB_CONN_READING   0x01
#define LB_CONN_WRITING   0x02
#define LB_CONN_EOF       0x10
#define LB_CONN_ERROR     0x20
#define LB_CONN_TIMEOUT   0x40
#define LB_CONN_CONNECTED 0x80

struct lb_conn;
typedef void (*lb_conn_data_cb)(struct lb_conn *c, void *arg);
typedef void (*lb_conn_event_cb)(struct lb_conn *c, short what, void *arg);

struct lb_conn_bufs;
struct timeval;

/* Whom a connection reports to: one table per kind of connection (client,
 * backend, pooled backend), so a connection holds one pointer, not three. */
struct lb_conn_ops {
    lb_conn_data_cb read;               /* new input */
    lb_conn_data_cb write;              /* output drained to <= write_low; may be NULL */
    lb_conn_event_cb event;
};

struct lb_conn {
    int fd;
    struct event rev;
    struct event *wev;                  /* made when first needed: most
                                         * client sockets never fill up */
    struct evbuffer *in;                /* NULL while shrunk (idle) */
    struct evbuffer *out;
    struct lb_conn_bufs *bufs;          /* the pair IN and OUT belong to */
    const struct lb_conn_ops *ops;
    void *arg;
    struct lb_conn *next_pending;       /* in the flush list */
    struct lb_list tq_node;             /* in a read-timeout FIFO: the clock runs */
    uint64_t read_deadline_ms;          /* CLOCK_MONOTONIC_COARSE */
    uint32_t read_limit;                /* stop reading at this much input */
    uint32_t write_low;
    uint32_t read_timeout_ms;
    uint32_t write_timeout_ms;
    int held_error;                     /* connecting: an immediate connect()
                                         * failure; open: a read error, reported
                                         * on the next read wakeup */
    uint8_t read_enabled : 1;           /* the user wants input */
    uint8_t read_armed : 1;             /* rev is added */
    uint8_t write_armed : 1;            /* wev is added (socket was full) */
    uint8_t pending : 1;                /* in the flush list */
    uint8_t connecting : 1;
    uint8_t eof : 1;                    /* read side saw EOF or an error */
    uint8_t bulk : 1;                   /* last wakeup filled its reads: start big */
    uint8_t last : 1;                   /* the output ends the connection */
    uint8_t corked : 1;                 /* sent with MSG_MORE: push before close */
    uint8_t big_block : 1;              /* IN has had a read of more than 4 KiB */
};

/* Once per process, before any connection: the loop whose pass ends with
 * the flush of every connection that got output. */
int lb_conn_loop_init(struct event_base *base);
void lb_conn_loop_free(void);
/* Free the pooled buffer pairs (after a burst: see lb_worker_trim). */
void lb_conn_pool_clear(void);
/* The timeval to give event_add() for a timeout of MS: one of libevent's
 * common timeouts (events of one duration wait in a FIFO, so re-arming one
 * per request costs O(1) instead of a heap update), or SCRATCH filled in. */
const struct timeval *lb_conn_timeout(uint64_t ms, struct timeval *scratch);

/* Wrap FD (non-blocking, owned from now on). NULL if out of memory (FD is
 * then closed). Reading starts disabled. */
struct lb_conn *lb_conn_new(int fd);
void lb_conn_free(struct lb_conn *c);

void lb_conn_setcb(struct lb_conn *c, const struct lb_conn_ops *ops, void *arg);
/* Start a non-blocking connect; the event callback reports CONNECTED or an
 * ERROR (also for an immediate failure). 0, or -1 if not even started. */
int lb_conn_connect(struct lb_conn *c, const struct sockaddr *sa, socklen_t len);

void lb_conn_read_enable(struct lb_conn *c);
/* Try a read in this pass, without waiting for epoll to report one: for a
 * just-accepted socket whose request is most likely there already. */
void lb_conn_read_now(struct lb_conn *c);
void lb_conn_read_disable(struct lb_conn *c);
/* Timeouts in ms, 0 for none: read while reading is enabled and no byte
 * comes; write while output is pending and no byte leaves (and connect). */
void lb_conn_set_timeouts(struct lb_conn *c, uint64_t read_ms, uint64_t write_ms);
void lb_conn_set_limits(struct lb_conn *c, uint32_t read_limit, uint32_t write_low);
/* After the peer's EOF: report an ERROR event if the connection is then
 * reset (the peer had closed its socket, not only its sending side, and
 * answers what we send with a reset). Ends with the connection, or when
 * reading is disabled. */
void lb_conn_watch_reset(struct lb_conn *c);
/* Write what can be written now (normally done at the end of the pass). */
void lb_conn_flush(struct lb_conn *c);
/* An idle connection gives its (empty) buffers back; the next read brings
 * them again. Only while both are empty and nothing is being written. */
void lb_conn_shrink(struct lb_conn *c);
/* Bring the buffers back before writing to a shrunk connection outside a
 * read (an answer from a timer). 0, or -1 when out of memory. */
int lb_conn_ensure_buffers(struct lb_conn *c);
/* Move N bytes from SRC to DST: small amounts are copied onto DST's last
 * block (so a head and a small body leave in one send), large ones move
 * whole chains (no copy). */
void lb_conn_move(struct evbuffer *src, struct evbuffer *dst, size_t n);
/* Bytes in the input / output (0 while shrunk). */
size_t lb_conn_in_len(const struct lb_conn *c);
size_t lb_conn_out_len(const struct lb_conn *c);
/* What the output holds now is the last of the connection, and a close()
 * or shutdown() follows once it is written: the tail is held back
 * (MSG_MORE) so that our FIN leaves in the same segment as the end of the
 * data, and the client gets one packet and one wakeup instead of two. */
void lb_conn_set_last(struct lb_conn *c);

#endif
