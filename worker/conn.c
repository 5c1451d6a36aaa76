#include "worker/conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "shared/util.h"

/* Read sizes (less a chain header, so libevent allocates 4 or 64 KiB, not
 * the next power of two): a first read of 4 KiB suits requests and small
 * responses;
 * a read that fills it is followed by bigger ones, up to 4 per wakeup. */
#define LB_CONN_READ_FIRST (4 * 1024 - 128)
#define LB_CONN_READ_MORE  (64 * 1024 - 128)
#define LB_CONN_READS      4
/* Smaller moves are copied next to what the output holds (a head, say):
 * one block, one send(); bigger ones move whole chains without a copy. */
#define LB_CONN_COPY_MAX   2048
/* The blocks of one move looked at (a wakeup reads into at most 5). */
#define LB_CONN_PEEK       8

/* A pair of buffers with their callbacks registered once. A connection
 * takes a pair when it has something to hold and gives it back when idle,
 * so a keep-alive request allocates no evbuffer and registers no callback;
 * idle connections still hold no buffers. */
struct lb_conn_bufs {
    struct evbuffer *in, *out;
    struct lb_conn *owner;              /* NULL while in the pool */
    struct lb_conn_bufs *next;          /* in the pool */
};
#define LB_CONN_BUFS_POOL 128           /* pairs kept per worker */

/* Read timeouts: one FIFO of connections per duration, oldest deadline
 * first, and one timer per FIFO, due no later than its head. A read
 * restarts a connection's clock by moving it to the tail (a few stores),
 * where a timed libevent event costs an event_add() of a few hundred
 * instructions at every wakeup (a persistent event's timeout is re-added
 * each time) and at every change of phase. The timer is re-armed only
 * when it fires. */
struct lb_conn_tq {
    uint32_t ms;
    struct lb_list conns;               /* by deadline: the oldest first */
    struct event *timer;
};
#define LB_CONN_COMMON_MAX 32           /* distinct timeout durations */

static struct {
    struct event_base *base;
    struct event *flush_ev;
    struct lb_conn *head, *tail;        /* connections with output to write */
    struct {
        uint64_t ms;
        const struct timeval *tv;
    } common[LB_CONN_COMMON_MAX];       /* libevent common timeouts by duration */
    unsigned ncommon;
    struct lb_conn_bufs *pool;          /* free pairs: no data, at most an
                                         * empty 4 KiB block reserved by a
                                         * read that found nothing */
    unsigned npool;
    struct lb_conn_tq **tq;             /* read-timeout FIFOs by duration (each
                                         * at a fixed address: the list heads) */
    unsigned ntq;
    int fd_mapped;                      /* libevent has entries for fds below */
} lb_loop;

/* libevent allocates a small entry (about 40 bytes) for an fd number the
 * first time it is watched, and keeps it until the loop is freed. Made one
 * at a time as a burst of connections reaches new fd numbers, these would
 * sit every few KiB among the burst's buffers and pin those pages once the
 * burst is over (malloc_trim returns whole free pages only): 3,000
 * connections left 13 MiB that way. So they are made ahead, a block of fd
 * numbers at a time, side by side. */
#define LB_CONN_FD_BLOCK 1024

static void lb_conn_map_noop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static void lb_conn_map_fds(int fd)
{
    int to = (fd / LB_CONN_FD_BLOCK + 1) * LB_CONN_FD_BLOCK;
    struct event ev;
    for (int i = lb_loop.fd_mapped; i < to; i++) {
        /* With the epoll changelist an add undone before the next wait is
         * no system call; the entry stays. */
        event_assign(&ev, lb_loop.base, i, EV_READ, lb_conn_map_noop, NULL);
        if (event_add(&ev, NULL) == 0)
            event_del(&ev);
    }
    lb_loop.fd_mapped = to;
}

/* The largest read of at most ROOM bytes whose block (libevent adds a
 * header and rounds up to a power of two) is filled: a read limited by the
 * room left (32 KiB once a peer's output has drained to half the limit)
 * would otherwise take a block twice its size. The rest is read next. */
static size_t lb_conn_block_fit(size_t room)
{
    size_t block = 4 * 1024;
    while (block * 2 - 128 <= room)
        block *= 2;
    return block - 128;
}

/* A streaming read: 64 KiB, or a quarter of a smaller limit. The block
 * the socket is taking bytes from when a peer stops reading keeps its
 * size whatever is left in it: with blocks of a quarter of the limit at
 * most, that costs a quarter of the limit, not all of it again. */
static size_t lb_conn_read_more(const struct lb_conn *c)
{
    return c->read_limit >= 4 * (LB_CONN_READ_MORE + 128) ? LB_CONN_READ_MORE
                                                        : lb_conn_block_fit(c->read_limit / 4);
}

static uint64_t lb_conn_clock_ms(void)
{
    /* The clock libevent's own timeouts use (no precise-timer mode). */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool lb_conn_tq_linked(const struct lb_conn *c)
{
    return !lb_list_empty(&c->tq_node);
}

static void lb_conn_tq_unlink(struct lb_conn *c)
{
    /* The timer stays: due early now, it finds nothing and moves on. */
    lb_list_remove(&c->tq_node);
}

static struct lb_conn *lb_conn_tq_head(struct lb_conn_tq *q)
{
    return lb_list_empty(&q->conns) ? NULL
                                    : LB_CONTAINER_OF(q->conns.next, struct lb_conn, tq_node);
}

static void lb_conn_tq_expire(evutil_socket_t fd, short what, void *arg);

/* The FIFO for MS, made on first use: durations come from the config, so
 * there are a handful. NULL when out of memory. */
static struct lb_conn_tq *lb_conn_tq_find(uint32_t ms)
{
    for (unsigned i = 0; i < lb_loop.ntq; i++)
        if (lb_loop.tq[i]->ms == ms)
            return lb_loop.tq[i];
    struct lb_conn_tq **v = realloc(lb_loop.tq, (lb_loop.ntq + 1) * sizeof(*v));
    if (v == NULL)
        return NULL;
    lb_loop.tq = v;
    struct lb_conn_tq *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->ms = ms;
    lb_list_init(&q->conns);
    q->timer = evtimer_new(lb_loop.base, lb_conn_tq_expire, q);
    if (q->timer == NULL) {
        free(q);
        return NULL;
    }
    v[lb_loop.ntq++] = q;
    return q;
}

static void lb_conn_tq_schedule(struct lb_conn_tq *q, uint64_t in_ms)
{
    struct timeval tv = lb_ms_timeval(in_ms);
    evtimer_add(q->timer, &tv);
}

/* (Re)start C's read clock: its timeout is due READ_TIMEOUT_MS from now. */
static void lb_conn_tq_touch(struct lb_conn *c)
{
    lb_conn_tq_unlink(c);
    if (c->read_timeout_ms == 0)
        return;
    struct lb_conn_tq *q = lb_conn_tq_find(c->read_timeout_ms);
    if (q == NULL)
        return;     /* out of memory: this connection goes without */
    c->read_deadline_ms = lb_conn_clock_ms() + c->read_timeout_ms;
    if (lb_list_empty(&q->conns) && !evtimer_pending(q->timer, NULL))
        lb_conn_tq_schedule(q, c->read_timeout_ms);
    lb_list_push(q->conns.prev, &c->tq_node);       /* at the tail */
}

static void lb_conn_disarm_read(struct lb_conn *c);

/* A FIFO's timer: time out every connection whose deadline has passed,
 * then set the timer for the new head. */
static void lb_conn_tq_expire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_conn_tq *q = arg;
    uint64_t now = lb_conn_clock_ms();
    struct lb_conn *c;
    /* The callback may free or re-arm any connection, this FIFO's too:
     * re-read the head each time. */
    while ((c = lb_conn_tq_head(q)) != NULL && c->read_deadline_ms <= now) {
        lb_conn_disarm_read(c);
        c->ops->event(c, LB_CONN_TIMEOUT | LB_CONN_READING, c->arg);
    }
    if ((c = lb_conn_tq_head(q)) != NULL)
        lb_conn_tq_schedule(q, c->read_deadline_ms - now);
}

const struct timeval *lb_conn_timeout(uint64_t ms, struct timeval *scratch)
{
    for (unsigned i = 0; i < lb_loop.ncommon; i++)
        if (lb_loop.common[i].ms == ms)
            return lb_loop.common[i].tv;
    *scratch = lb_ms_timeval(ms);
    if (lb_loop.ncommon == LB_CONN_COMMON_MAX)
        return scratch;
    const struct timeval *tv = event_base_init_common_timeout(lb_loop.base, scratch);
    if (tv == NULL)
        return scratch;
    lb_loop.common[lb_loop.ncommon].ms = ms;
    lb_loop.common[lb_loop.ncommon].tv = tv;
    lb_loop.ncommon++;
    return tv;
}

/* event_add() with no timeout keeps a pending event's old timeout: drop
 * the event first when a timeout is being removed. */
static void lb_conn_arm(struct event *ev, bool armed, uint32_t ms)
{
    struct timeval scratch;
    if (armed && ms == 0)
        event_del(ev);
    event_add(ev, ms ? lb_conn_timeout(ms, &scratch) : NULL);
}

/* Input a transport holds has no wakeup of its own: made one. */
static __attribute__((noinline, cold)) void lb_conn_tr_kick(struct lb_conn *c)
{
    if (c->tr->pending(c))
        event_active(&c->rev, EV_READ, 1);
}

static inline __attribute__((always_inline)) void lb_conn_arm_read(struct lb_conn *c)
{
    if (!c->read_armed) {
        event_add(&c->rev, NULL);
        if (__builtin_expect(c->tr != NULL, 0))
            lb_conn_tr_kick(c);
    }
    c->read_armed = 1;
    lb_conn_tq_touch(c);
}

static void lb_conn_disarm_read(struct lb_conn *c)
{
    if (c->read_armed) {
        event_del(&c->rev);
        c->read_armed = 0;
    }
    lb_conn_tq_unlink(c);
}

static void lb_conn_on_write(evutil_socket_t fd, short what, void *arg);

static bool lb_conn_make_wev(struct lb_conn *c)
{
    if (c->wev == NULL)
        c->wev = event_new(lb_loop.base, c->fd, EV_WRITE | EV_PERSIST, lb_conn_on_write, c);
    return c->wev != NULL;
}

static void lb_conn_arm_write(struct lb_conn *c)
{
    if (!lb_conn_make_wev(c))
        return;     /* out of memory: the write timeout will not save us */
    lb_conn_arm(c->wev, c->write_armed, c->write_timeout_ms);
    c->write_armed = 1;
}

static void lb_conn_disarm_write(struct lb_conn *c)
{
    if (c->write_armed) {
        event_del(c->wev);
        c->write_armed = 0;
    }
}

size_t lb_conn_in_len(const struct lb_conn *c)
{
    return c->in ? evbuffer_get_length(c->in) : 0;
}

size_t lb_conn_out_len(const struct lb_conn *c)
{
    return c->out ? evbuffer_get_length(c->out) : 0;
}

size_t lb_conn_held(const struct lb_conn *c)
{
    return lb_conn_in_len(c) + (c->peer != NULL ? lb_conn_out_len(c->peer) : 0);
}

/* Whether reading should be on: wanted, no EOF yet, room under the limit. */
static bool lb_conn_should_read(const struct lb_conn *c)
{
    return c->read_enabled && !c->eof && !c->connecting && lb_conn_held(c) < c->read_limit;
}

static void lb_conn_update_read(struct lb_conn *c)
{
    if (lb_conn_should_read(c)) {
        if (!c->read_armed)
            lb_conn_arm_read(c);
    } else {
        lb_conn_disarm_read(c);
    }
}

/* Only a side not reading while it wants to may have been held back by
 * its peer's output: the other needs no look. */
static void lb_conn_recheck_read(struct lb_conn *c)
{
    if (!c->read_armed && c->read_enabled)
        lb_conn_update_read(c);
}

static void lb_conn_unlink_pending(struct lb_conn *c)
{
    if (!c->pending)
        return;
    struct lb_conn **pp = &lb_loop.head, *prev = NULL;
    while (*pp != NULL && *pp != c) {
        prev = *pp;
        pp = &(*pp)->next_pending;
    }
    if (*pp == c) {
        *pp = c->next_pending;
        if (lb_loop.tail == c)
            lb_loop.tail = prev;
    }
    c->next_pending = NULL;
    c->pending = 0;
}

static void lb_conn_schedule(struct lb_conn *c)
{
    if (c->pending || c->write_armed || c->connecting)
        return;         /* already queued, or waiting for the socket */
    c->pending = 1;
    c->next_pending = NULL;
    if (lb_loop.tail != NULL)
        lb_loop.tail->next_pending = c;
    else
        lb_loop.head = c;
    lb_loop.tail = c;
    event_active(lb_loop.flush_ev, EV_WRITE, 1);
}

/* The last output of a connection in several blocks: one sendmsg() with
 * MSG_MORE (see lb_conn_set_last), up to LB_CONN_IOV blocks at a time. */
#define LB_CONN_IOV 16
static int lb_conn_sendmsg_more(struct lb_conn *c)
{
    struct evbuffer_iovec v[LB_CONN_IOV];
    struct iovec iov[LB_CONN_IOV];
    int nv = evbuffer_peek(c->out, -1, NULL, v, LB_CONN_IOV);
    if (nv > LB_CONN_IOV)
        nv = LB_CONN_IOV;
    for (int i = 0; i < nv; i++)
        iov[i] = (struct iovec){ .iov_base = v[i].iov_base, .iov_len = v[i].iov_len };
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)nv };
    ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_MORE);
    if (n > 0)
        evbuffer_drain(c->out, (size_t)n);
    return (int)n;
}

/* Write now; arm EPOLLOUT only if the socket took less than everything.
 * May call back into the user (write, event): C may be gone after. */
static void lb_conn_write_tr(struct lb_conn *c);

static void lb_conn_write(struct lb_conn *c)
{
    if (c->tr != NULL) {
        lb_conn_write_tr(c);
        return;
    }
    if (lb_conn_out_len(c) > 0) {
        /* One contiguous block (the common small response): send(), which
         * costs the kernel less than writev() and its iovec import. */
        struct evbuffer_iovec v[2];
        int n;
        if (evbuffer_peek(c->out, -1, NULL, v, 2) == 1) {
            n = (int)send(c->fd, v[0].iov_base, v[0].iov_len,
                          MSG_NOSIGNAL | MSG_DONTWAIT | (c->last ? MSG_MORE : 0));
            if (n > 0)
                evbuffer_drain(c->out, (size_t)n);
        } else if (c->last) {
            n = lb_conn_sendmsg_more(c);
        } else {
            n = evbuffer_write(c->out, c->fd);
        }
        if (c->last && n > 0)
            c->corked = 1;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            int err = errno;
            lb_conn_disarm_write(c);
            evbuffer_drain(c->out, evbuffer_get_length(c->out));
            errno = err;
            c->ops->event(c, LB_CONN_ERROR | LB_CONN_WRITING, c->arg);
            return;
        }
        if (evbuffer_get_length(c->out) > 0) {
            if (!c->write_armed || (n > 0 && c->write_timeout_ms))
                lb_conn_arm_write(c);   /* (progress restarts the write timeout) */
        } else {
            lb_conn_disarm_write(c);
        }
    } else {
        lb_conn_disarm_write(c);
    }
    /* Below the low mark the user may add more: streaming never waits for
     * the socket to drain completely. The peer, if this output is what
     * held its reading back, reads again (not at every byte written: a
     * read per write wakeup would arm and disarm it each time). */
    if (lb_conn_out_len(c) <= c->write_low) {
        if (c->peer != NULL)
            lb_conn_recheck_read(c->peer);
        if (c->ops->write != NULL)
            c->ops->write(c, c->arg);
    }
}

/* A transport's records hold 16 KiB at most: the output is handed over in
 * pieces of that size, small blocks joined (a head and the start of its
 * body in one record, not two). */
#define LB_CONN_RECORD 16384

/* lb_conn_write through a transport. Its write is retried with the same
 * bytes (they stay first in OUT until it has taken them), as TLS needs. */
static void lb_conn_write_tr(struct lb_conn *c)
{
    if (c->tr_want_write) {
        /* The transport's read waited for this: it goes on in this pass. */
        c->tr_want_write = 0;
        if (c->read_armed)
            event_active(&c->rev, EV_READ, 1);
    }
    if (!c->tr_ready) {
        lb_conn_disarm_write(c);    /* output waits for the handshake */
        return;
    }
    int err = 0;
    bool progress = false;
    while (lb_conn_out_len(c) > 0) {
        size_t len = evbuffer_get_length(c->out);
        size_t n = len < LB_CONN_RECORD ? len : LB_CONN_RECORD;
        unsigned char *p = evbuffer_pullup(c->out, (ev_ssize_t)n);
        if (p == NULL) {
            err = ENOMEM;
            break;
        }
        ssize_t w = c->tr->write(c, p, n);
        if (w <= 0) {
            err = w < 0 ? errno : EPIPE;
            break;
        }
        evbuffer_drain(c->out, (size_t)w);
        progress = true;
    }
    if (err != 0 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
        lb_conn_disarm_write(c);
        evbuffer_drain(c->out, evbuffer_get_length(c->out));
        errno = err;
        c->ops->event(c, LB_CONN_ERROR | LB_CONN_WRITING, c->arg);
        return;
    }
    if (lb_conn_out_len(c) > 0) {
        if (!c->write_armed || (progress && c->write_timeout_ms))
            lb_conn_arm_write(c);
    } else if (!c->tr_want_write) {
        lb_conn_disarm_write(c);
    }
    if (c->ops->write != NULL && lb_conn_out_len(c) <= c->write_low)
        c->ops->write(c, c->arg);
}

void lb_conn_flush(struct lb_conn *c)
{
    lb_conn_unlink_pending(c);
    if (!c->connecting)
        lb_conn_write(c);
}

/* End of a pass of callbacks: write every connection that got output. */
static void lb_conn_flush_all(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    while (lb_loop.head != NULL) {
        struct lb_conn *c = lb_loop.head;
        lb_loop.head = c->next_pending;
        if (lb_loop.head == NULL)
            lb_loop.tail = NULL;
        c->next_pending = NULL;
        c->pending = 0;
        lb_conn_write(c);
    }
}

static void lb_conn_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    struct lb_conn_bufs *b = arg;
    if (info->n_added > 0 && b->owner != NULL)
        lb_conn_schedule(b->owner);
}

/* Input drained below the limit: reading may resume (back-pressure off). */
static void lb_conn_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    struct lb_conn *c = ((struct lb_conn_bufs *)arg)->owner;
    if (c != NULL && info->n_deleted > 0 && !c->read_armed && lb_conn_should_read(c))
        lb_conn_arm_read(c);
}

/* The read loop, inlined twice: for plain TCP (TLS false: what the
 * compiler makes of it has no trace of a transport) and for a transport.
 * C may be gone when it returns. */
static inline __attribute__((always_inline)) void lb_conn_read_loop(struct lb_conn *c, int fd,
                                                                    const bool tls)
{
    /* Activity restarts the read clock; a transport's handshake does not:
     * the first deadline bounds it whole. */
    if (lb_conn_tq_linked(c) && (!tls || c->tr_ready))
        lb_conn_tq_touch(c);
    if (c->held_error != 0 || lb_conn_ensure_buffers(c) < 0) {
        /* An error held back while its wakeup's data went to the user
         * (-1: a transport's end, which it reports only once). */
        int err = c->held_error ? c->held_error : ENOMEM;
        c->eof = 1;
        lb_conn_disarm_read(c);
        errno = err;
        c->ops->event(c, tls && err == -1 ? LB_CONN_EOF | LB_CONN_READING
                                          : LB_CONN_ERROR | LB_CONN_READING, c->arg);
        return;
    }
    if (tls && c->tr_want_read) {
        c->tr_want_read = 0;    /* a write waited for this wakeup */
        lb_conn_schedule(c);
    }
    bool was_ready = !tls || c->tr_ready;
    bool drained = false;       /* the transport has read all the socket had */
    /* A connection that streamed last time starts with a big read. */
    size_t want = c->bulk ? lb_conn_read_more(c) : LB_CONN_READ_FIRST;
    c->bulk = 0;
    /* What the peer has yet to write counts: it does not change while
     * reading (the user runs after). */
    size_t passed = c->peer != NULL ? lb_conn_out_len(c->peer) : 0;
    /* A transport hands out a record at a time (16 KiB at most): more
     * rounds for the same amount. */
    for (int i = 0; i < (tls ? 4 * LB_CONN_READS : LB_CONN_READS); i++) {
        size_t len = evbuffer_get_length(c->in) + passed;
        if (len >= c->read_limit)
            break;
        size_t room = c->read_limit - len;
        if (room > want)
            room = want;
        else if (room > LB_CONN_READ_FIRST)
            room = lb_conn_block_fit(room);
        if (room > LB_CONN_READ_FIRST)
            c->big_block = 1;
        struct evbuffer_iovec v[2];
        int nv = evbuffer_reserve_space(c->in, (ev_ssize_t)room, v, 2);
        if (nv <= 0)
            break;
        struct iovec iov[2];
        size_t left = room;
        for (int k = 0; k < nv; k++) {
            iov[k].iov_base = v[k].iov_base;
            iov[k].iov_len = v[k].iov_len < left ? v[k].iov_len : left;
            left -= iov[k].iov_len;
        }
        ssize_t n;
        if (tls) {
            nv = 1;                 /* one buffer at a time */
            room = iov[0].iov_len;
            n = c->tr->read(c, iov[0].iov_base, iov[0].iov_len);
        } else {
            n = (nv == 1 || iov[1].iov_len == 0) ? recv(fd, iov[0].iov_base, iov[0].iov_len, 0)
                                                 : readv(fd, iov, nv);
        }
        if (n <= 0) {
            int err = errno;
            evbuffer_commit_space(c->in, v, 0);
            if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)) {
                drained = true;
                break;
            }
            /* Data read in this wakeup goes to the user first; the end is
             * reported on the next wakeup (EOF: read() says so again; an
             * error is kept for it), so no callback ever runs after one
             * that may have freed C. */
            if (i > 0) {
                if (n < 0)
                    c->held_error = err;
                else if (tls)
                    c->held_error = -1;     /* a transport says its end once */
                break;
            }
            c->eof = 1;
            lb_conn_disarm_read(c);
            errno = err;
            c->ops->event(c, n == 0 ? LB_CONN_EOF | LB_CONN_READING
                                  : LB_CONN_ERROR | LB_CONN_READING, c->arg);
            return;
        }
        size_t got = (size_t)n, slack = 0;
        for (int k = 0; k < nv; k++) {
            size_t put = got < iov[k].iov_len ? got : iov[k].iov_len;
            if (put > 0)
                slack = v[k].iov_len - put;     /* (iov_len: the block's space) */
            v[k].iov_len = put;
            got -= put;
        }
        c->tail_slack = slack < UINT16_MAX ? (uint16_t)slack : UINT16_MAX;
        evbuffer_commit_space(c->in, v, nv);
        if ((size_t)n < room && (!tls || !c->tr->pending(c))) {
            drained = true;
            break;      /* the socket is empty (most likely) */
        }
        want = lb_conn_read_more(c);
        c->bulk = 1;
    }
    if (tls) {
        if (c->tr_want_write)
            lb_conn_arm_write(c);       /* the transport's read goes on when writable */
        if (!was_ready && c->tr_ready) {
            /* Handshake done: its clock stops, the idle one starts, and
             * output held back meanwhile may leave. */
            lb_conn_tq_touch(c);
            if (lb_conn_out_len(c) > 0)
                lb_conn_schedule(c);
            if (c->tr_connecting) {
                /* A backend's: connected now (the callback sets the
                 * timeouts of the exchange; it does not free C). */
                c->tr_connecting = 0;
                c->ops->event(c, LB_CONN_CONNECTED, c->arg);
            }
        }
        /* What the socket will not announce: input the transport holds
         * when this pass stopped short of it, or an end it reported that
         * waits for the next pass. (Not after the transport waited for
         * the socket: what it holds then is part of a record, and a
         * wakeup would find just that again, without end.) */
        if (c->read_armed && (c->held_error != 0 || (!drained && c->tr->pending(c))))
            event_active(&c->rev, EV_READ, 1);
    }
    if (evbuffer_get_length(c->in) + passed >= c->read_limit)
        lb_conn_disarm_read(c);     /* back-pressure until the user drains */
    if (evbuffer_get_length(c->in) > 0) {
        c->ops->read(c, c->arg);
        /* What this input produced leaves now, not after every other ready
         * event of the pass: the peer (a backend, the client) starts on it
         * while we go on, instead of waiting for a burst. C may be gone;
         * the list holds only live connections. */
        lb_conn_flush_all(-1, 0, NULL);
    }
}

static void lb_conn_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    lb_conn_read_loop(arg, fd, false);
}

static void lb_conn_on_read_tr(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    lb_conn_read_loop(arg, fd, true);
}

/* The peer's end (EOF) is read, and its reset is what is watched for: a
 * wakeup of the edge-triggered watch with a pending socket error. */
static void lb_conn_on_reset(evutil_socket_t fd, short what, void *arg)
{
    struct lb_conn *c = arg;
    (void)what;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == 0)
        return;     /* the wakeup of the watch's start (the EOF is there) */
    lb_conn_disarm_read(c);
    errno = err;
    c->ops->event(c, LB_CONN_ERROR | LB_CONN_READING, c->arg);
}

void lb_conn_watch_reset(struct lb_conn *c)
{
    if (!c->eof || c->read_armed)
        return;
    /* Edge-triggered: the socket stays readable (EOF) for good, and a
     * level-triggered watch would wake the loop without end. */
    event_assign(&c->rev, lb_loop.base, c->fd, EV_READ | EV_ET | EV_PERSIST, lb_conn_on_reset, c);
    if (event_add(&c->rev, NULL) == 0)
        c->read_armed = 1;
}

/* TCP is connected under a transport: its handshake starts now (a read
 * makes the first flight), reading whether the user asked for it yet or
 * not; the read loop reports CONNECTED once it is done. */
static __attribute__((noinline, cold)) void lb_conn_tr_connected(struct lb_conn *c)
{
    c->tr_connecting = 1;
    lb_conn_arm_read(c);
    event_active(&c->rev, EV_READ, 1);
}

static void lb_conn_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct lb_conn *c = arg;
    if (c->connecting) {
        int err = c->held_error;
        if (what & EV_TIMEOUT) {
            lb_conn_disarm_write(c);
            c->ops->event(c, LB_CONN_TIMEOUT | LB_CONN_WRITING, c->arg);
            return;
        }
        if (err == 0) {
            socklen_t len = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
        }
        if (err == EINPROGRESS)
            return;     /* spurious: still connecting */
        lb_conn_disarm_write(c);
        c->connecting = 0;
        if (err != 0) {
            c->eof = 1;
            errno = err;
            c->ops->event(c, LB_CONN_ERROR | LB_CONN_WRITING, c->arg);
            return;
        }
        if (__builtin_expect(c->tr != NULL, 0)) {
            lb_conn_tr_connected(c);
            return;
        }
        if (lb_conn_out_len(c) > 0)
            lb_conn_schedule(c);    /* written at the end of this pass */
        lb_conn_update_read(c);
        c->ops->event(c, LB_CONN_CONNECTED, c->arg);
        return;
    }
    if (what & EV_TIMEOUT) {
        lb_conn_disarm_write(c);
        c->ops->event(c, LB_CONN_TIMEOUT | LB_CONN_WRITING, c->arg);
        return;
    }
    lb_conn_write(c);
}

int lb_conn_loop_init(struct event_base *base)
{
    lb_loop.base = base;
    lb_loop.fd_mapped = 0;
    lb_loop.ncommon = 0;
    lb_loop.head = lb_loop.tail = NULL;
    lb_loop.flush_ev = event_new(base, -1, 0, lb_conn_flush_all, NULL);
    return lb_loop.flush_ev ? 0 : -1;
}

static void lb_conn_bufs_free(struct lb_conn_bufs *b)
{
    if (b->in != NULL)
        evbuffer_free(b->in);
    if (b->out != NULL)
        evbuffer_free(b->out);
    free(b);
}

static struct lb_conn_bufs *lb_conn_bufs_new(void)
{
    struct lb_conn_bufs *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->in = evbuffer_new();
    b->out = evbuffer_new();
    if (b->in == NULL || b->out == NULL || evbuffer_add_cb(b->out, lb_conn_out_cb, b) == NULL ||
        evbuffer_add_cb(b->in, lb_conn_in_cb, b) == NULL) {
        lb_conn_bufs_free(b);
        return NULL;
    }
    return b;
}

/* Give C's pair back: to the pool when empty and there is room. */
static void lb_conn_bufs_release(struct lb_conn *c)
{
    struct lb_conn_bufs *b = c->bufs;
    if (b == NULL)
        return;
    c->bufs = NULL;
    c->in = c->out = NULL;
    b->owner = NULL;
    /* A pair that had big reads may keep an empty 64 KiB block: not kept. */
    if (lb_loop.npool < LB_CONN_BUFS_POOL && !c->big_block && evbuffer_get_length(b->in) == 0 &&
        evbuffer_get_length(b->out) == 0) {
        b->next = lb_loop.pool;
        lb_loop.pool = b;
        lb_loop.npool++;
    } else {
        lb_conn_bufs_free(b);
    }
}

/* Make the buffers if they are not there. 0, or -1 (nothing changed). */
int lb_conn_ensure_buffers(struct lb_conn *c)
{
    if (c->bufs != NULL)
        return 0;
    struct lb_conn_bufs *b = lb_loop.pool;
    if (b != NULL) {
        lb_loop.pool = b->next;
        lb_loop.npool--;
    } else if ((b = lb_conn_bufs_new()) == NULL) {
        return -1;
    }
    b->owner = c;
    b->next = NULL;
    c->bufs = b;
    c->big_block = 0;
    c->in = b->in;
    c->out = b->out;
    return 0;
}

void lb_conn_shrink(struct lb_conn *c)
{
    if (c->in == NULL || c->pending || c->write_armed || c->connecting ||
        evbuffer_get_length(c->in) != 0 || evbuffer_get_length(c->out) != 0)
        return;
    lb_conn_bufs_release(c);
}

void lb_conn_pool_clear(void)
{
    while (lb_loop.pool != NULL) {
        struct lb_conn_bufs *b = lb_loop.pool;
        lb_loop.pool = b->next;
        lb_conn_bufs_free(b);
    }
    lb_loop.npool = 0;
}

void lb_conn_loop_free(void)
{
    lb_conn_pool_clear();
    for (unsigned i = 0; i < lb_loop.ntq; i++) {
        event_free(lb_loop.tq[i]->timer);
        free(lb_loop.tq[i]);
    }
    free(lb_loop.tq);
    lb_loop.tq = NULL;
    lb_loop.ntq = 0;
    if (lb_loop.flush_ev != NULL)
        event_free(lb_loop.flush_ev);
    lb_loop.flush_ev = NULL;
}

struct lb_conn *lb_conn_new(int fd)
{
    struct lb_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    lb_list_init(&c->tq_node);
    if (lb_conn_ensure_buffers(c) < 0) {
        close(fd);
        free(c);
        return NULL;
    }
    if (fd >= lb_loop.fd_mapped)
        lb_conn_map_fds(fd);
    event_assign(&c->rev, lb_loop.base, fd, EV_READ | EV_PERSIST, lb_conn_on_read, c);
    c->read_limit = 256 * 1024;
    return c;
}

void lb_conn_free(struct lb_conn *c)
{
    if (c == NULL)
        return;
    if (c->peer != NULL) {
        struct lb_conn *p = c->peer;
        c->peer = p->peer = NULL;
        lb_conn_recheck_read(p);
    }
    lb_conn_unlink_pending(c);
    lb_conn_disarm_read(c);
    lb_conn_disarm_write(c);
    if (c->wev != NULL)
        event_free(c->wev);
    lb_conn_bufs_release(c);
    if (c->tr != NULL) {
        if (!c->tr_shut)
            c->tr->shutdown(c);
        c->tr->free(c);
    }
    /* Held-back output leaves with the FIN of shutdown(); a bare close()
     * with unread input would reset the connection and drop it instead. */
    if (c->corked)
        shutdown(c->fd, SHUT_WR);
    close(c->fd);
    free(c);
}

void lb_conn_setcb(struct lb_conn *c, const struct lb_conn_ops *ops, void *arg)
{
    c->ops = ops;
    c->arg = arg;
}

void lb_conn_set_transport(struct lb_conn *c, const struct lb_conn_transport *tr, void *ctx)
{
    bool armed = c->read_armed;
    if (armed)
        event_del(&c->rev);
    c->tr = tr;
    c->tr_ctx = ctx;
    event_assign(&c->rev, lb_loop.base, c->fd, EV_READ | EV_PERSIST, lb_conn_on_read_tr, c);
    if (armed)
        event_add(&c->rev, NULL);
}

void lb_conn_shutdown(struct lb_conn *c)
{
    if (c->tr != NULL && !c->tr_shut) {
        c->tr_shut = 1;
        c->tr->shutdown(c);
    }
    shutdown(c->fd, SHUT_WR);
}

int lb_conn_connect(struct lb_conn *c, const struct sockaddr *sa, socklen_t len)
{
    c->connecting = 1;
    if (connect(c->fd, sa, len) < 0 && errno != EINPROGRESS) {
        if (errno != ECONNREFUSED && errno != ENETUNREACH && errno != EHOSTUNREACH &&
            errno != EADDRNOTAVAIL && errno != ECONNRESET) {
            c->connecting = 0;
            return -1;
        }
        /* Refused at once (loopback): reported like any other failure,
         * from the loop, so the caller's state is set up first. */
        c->held_error = errno;
        if (!lb_conn_make_wev(c)) {
            c->connecting = 0;
            return -1;
        }
        event_active(c->wev, EV_WRITE, 1);
        return 0;
    }
    lb_conn_arm_write(c);       /* writable = connected (or failed) */
    return 0;
}

void lb_conn_read_enable(struct lb_conn *c)
{
    /* Reading already: nothing to look at (a read finds the limit
     * reached, if it is, and stops). Called at every request. */
    if (c->read_enabled && c->read_armed && !c->eof)
        return;
    c->read_enabled = 1;
    lb_conn_update_read(c);
}

void lb_conn_read_now(struct lb_conn *c)
{
    if (c->read_armed)
        event_active(&c->rev, EV_READ, 1);
}

void lb_conn_read_disable(struct lb_conn *c)
{
    c->read_enabled = 0;
    lb_conn_disarm_read(c);
}

void lb_conn_set_timeouts(struct lb_conn *c, uint64_t read_ms, uint64_t write_ms)
{
    uint32_t r = read_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)read_ms;
    uint32_t w = write_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)write_ms;
    c->read_timeout_ms = r;
    c->write_timeout_ms = w;
    /* Setting timeouts marks a new phase (idle, waiting for a response, a
     * pooled connection taken): armed events count from now, even when the
     * value is the same as before. */
    if (c->read_armed && !c->eof)   /* (after EOF: a reset watch, no clock) */
        lb_conn_arm_read(c);
    if (c->write_armed)
        lb_conn_arm_write(c);
}

/* Copy N bytes from SRC onto DST's last block (a new one if it has no
 * room, sized for them). False when out of memory (nothing moved). */
static bool lb_conn_copy(struct evbuffer *src, struct evbuffer *dst, size_t n)
{
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(dst, (ev_ssize_t)n, &v, 1) != 1 || v.iov_len < n)
        return false;
    evbuffer_copyout(src, v.iov_base, n);
    v.iov_len = n;
    evbuffer_commit_space(dst, &v, 1);
    evbuffer_drain(src, n);
    return true;
}

void lb_conn_move(struct lb_conn *from, struct lb_conn *to, size_t n)
{
    struct evbuffer *src = from->in, *dst = to->out;
    size_t copy = n;    /* the bytes at the end that are copied */
    if (n > LB_CONN_COPY_MAX) {
        /* Whole blocks move. But when the peer is behind (its socket did
         * not take all of its output: what moves now stays a while), a
         * last block the last read left less than half full (a 64 KiB read
         * that found a few KiB) has its bytes copied into a block at most
         * half its size, and is freed, rather than held at that ratio.
         * Blocks held for a slow peer are then at least half full; a peer
         * that keeps up costs no copy. */
        copy = 0;
        if (to->write_armed && from->tail_slack > 0 && n == evbuffer_get_length(src)) {
            struct evbuffer_iovec v[LB_CONN_PEEK];
            int nv = evbuffer_peek(src, (ev_ssize_t)n, NULL, v, LB_CONN_PEEK);
            if (nv >= 1 && nv <= LB_CONN_PEEK && v[nv - 1].iov_len < from->tail_slack)
                copy = v[nv - 1].iov_len;
            from->tail_slack = 0;
        }
        if (n > copy)
            evbuffer_remove_buffer(src, dst, n - copy);
    }
    if (copy > 0 && !lb_conn_copy(src, dst, copy))
        evbuffer_remove_buffer(src, dst, copy);
}

void lb_conn_set_last(struct lb_conn *c)
{
    c->last = 1;
}

void lb_conn_pair(struct lb_conn *a, struct lb_conn *b)
{
    if (a->peer != NULL)
        lb_conn_unpair(a);
    if (b->peer != NULL)
        lb_conn_unpair(b);
    a->peer = b;
    b->peer = a;
}

void lb_conn_unpair(struct lb_conn *c)
{
    struct lb_conn *p = c->peer;
    if (p == NULL)
        return;
    c->peer = p->peer = NULL;
    lb_conn_recheck_read(c);
    lb_conn_recheck_read(p);
}

void lb_conn_set_limits(struct lb_conn *c, uint32_t read_limit, uint32_t write_low)
{
    c->read_limit = read_limit ? read_limit : 1;
    c->write_low = write_low;
    lb_conn_update_read(c);
}
