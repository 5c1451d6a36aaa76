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
 *
 * Paired connections (a client and its backend, lb_conn_pair): what one
 * reads ends up in the other's output, and read_limit bounds the two
 * together, the input plus the peer's unwritten output, so a side that does
 * not read holds read_limit bytes in all, not read_limit in each buffer.
 */
#ifndef LB_CONN_H
#define LB_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

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

/* A transport under the connection other than plain TCP (TLS: worker/tls.c),
 * as Redis' ConnectionType: the connection layer keeps its buffers, reads,
 * back-pressure and timeouts, and calls these for the bytes themselves. A
 * plain connection has none (tr == NULL) and never looks at it on its read
 * path (its own read callback) and once per write (one branch). */
struct lb_conn_transport {
    /* As recv(): bytes read (> 0), 0 at the peer's orderly end, -1 with
     * errno (EAGAIN: nothing now; the transport sets want_write when what
     * it waits for is the socket becoming writable). Before the transport
     * is ready (a handshake) it works on that and sets ready once done. */
    ssize_t (*read)(struct lb_conn *c, void *buf, size_t len);
    /* As send(): bytes taken (> 0) or -1 with errno (EAGAIN: wait for
     * writable, or for readable when it sets want_read). Only once ready. */
    ssize_t (*write)(struct lb_conn *c, const void *buf, size_t len);
    /* Input the transport holds already (read ahead or decrypted), which
     * epoll will not announce. */
    bool (*pending)(struct lb_conn *c);
    /* The end of our sending side (TLS close_notify), best effort, before
     * shutdown(SHUT_WR) or close(). */
    void (*shutdown)(struct lb_conn *c);
    void (*free)(struct lb_conn *c);
};

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
    const struct lb_conn_transport *tr; /* NULL: plain TCP */
    void *tr_ctx;                       /* the transport's (an SSL *) */
    struct lb_conn *peer;               /* paired: reads go to its output */
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
    uint8_t tr_ready : 1;               /* transport: handshake done */
    uint8_t tr_want_write : 1;          /* transport: its read waits for writable */
    uint8_t tr_want_read : 1;           /* transport: its write waits for readable */
    uint8_t tr_shut : 1;                /* transport: our end is sent */
    uint8_t tr_connecting : 1;          /* transport: TCP connected, its handshake
                                         * under way; CONNECTED is reported after */
    uint16_t tail_slack;                /* free space in IN's last block after
                                         * the last read */
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
/* Put transport TR (state CTX, owned from now on: TR->free frees it) under
 * C, before any read. On a connection being connected (a backend), the
 * transport's handshake runs once TCP is connected (its read starts it),
 * bounded by the read timeout, and CONNECTED is reported when it is done;
 * a failed one is reported as an ERROR (or EOF) of a connection that never
 * was CONNECTED. The CONNECTED callback must not free C then. */
void lb_conn_set_transport(struct lb_conn *c, const struct lb_conn_transport *tr, void *ctx);
/* End our sending side once the output has left: the transport's end
 * (close_notify), then shutdown(SHUT_WR). */
void lb_conn_shutdown(struct lb_conn *c);
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
/* Pair A and B while what each reads is passed to the other: each reads
 * only while its input plus the other's output hold less than its
 * read_limit, and resumes once the other's output is written down to the
 * other's write_low. lb_conn_free unpairs. */
void lb_conn_pair(struct lb_conn *a, struct lb_conn *b);
/* Undo the pairing of C (if any) and its peer; a side that only its peer's
 * output held back reads again. */
void lb_conn_unpair(struct lb_conn *c);
/* Bytes C has read and not yet passed on: its input, plus its peer's
 * output when paired. Reading stops at read_limit. */
size_t lb_conn_held(const struct lb_conn *c);
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
/* Move N bytes from FROM's input to TO's output: small amounts are copied
 * onto the output's last block (so a head and a small body leave in one
 * send), large ones move whole blocks (no copy); while TO's socket is full,
 * a last block the last read left less than half full has its bytes copied
 * instead (held a while, it would waste that much). */
void lb_conn_move(struct lb_conn *from, struct lb_conn *to, size_t n);
/* Bytes in the input / output (0 while shrunk). */
size_t lb_conn_in_len(const struct lb_conn *c);
size_t lb_conn_out_len(const struct lb_conn *c);
/* What the output holds now is the last of the connection, and a close()
 * or shutdown() follows once it is written: the tail is held back
 * (MSG_MORE) so that our FIN leaves in the same segment as the end of the
 * data, and the client gets one packet and one wakeup instead of two. */
void lb_conn_set_last(struct lb_conn *c);

#endif
