/* worker/conn.c: what a connection holds. Paired connections share one
 * read limit (input plus the peer's unwritten output), and a move gives up
 * a block the last read left mostly empty. Real sockets (socketpairs) and a
 * real loop, run without waiting. */
#include <check.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "tests/unit/suites.h"
#include "worker/conn.h"

#define LIMIT (64 * 1024)

static struct event_base *base;
static int reads;

static void on_read(struct lb_conn *c, void *arg)
{
    (void)c;
    (void)arg;
    reads++;            /* input stays: the user has nowhere to put it */
}

static void on_event(struct lb_conn *c, short what, void *arg)
{
    (void)c;
    (void)arg;
    ck_abort_msg("unexpected event 0x%x", (unsigned)what);
}

static const struct lb_conn_ops ops = { on_read, NULL, on_event };

/* A connection over one end of a socketpair; *OTHER is the far end. */
static struct lb_conn *conn_pair_end(int *other)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct lb_conn *c = lb_conn_new(sv[0]);
    ck_assert_ptr_nonnull(c);
    lb_conn_setcb(c, &ops, NULL);
    lb_conn_set_limits(c, LIMIT, LIMIT / 2);
    *other = sv[1];
    return c;
}

/* Write N bytes into FD (all must fit). */
static void put(int fd, size_t n)
{
    static char buf[4096];
    memset(buf, 'x', sizeof(buf));
    while (n > 0) {
        ssize_t k = write(fd, buf, n < sizeof(buf) ? n : sizeof(buf));
        ck_assert_int_gt(k, 0);
        n -= (size_t)k;
    }
}

/* Fill FD's socket until it takes no more. */
static void fill(int fd)
{
    static char buf[4096];
    memset(buf, 'f', sizeof(buf));
    while (write(fd, buf, sizeof(buf)) > 0 || errno == EINTR)
        ;
    while (write(fd, buf, 1) > 0 || errno == EINTR)
        ;
    ck_assert(errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Read and drop everything FD has. */
static void drain(int fd)
{
    char buf[65536];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
}

static void spin(void)
{
    for (int i = 0; i < 20; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
}

static void setup(void)
{
    /* As the worker makes it: lb_conn maps fd numbers ahead with adds
     * undone in the same pass, which the changelist makes free. */
    struct event_config *ec = event_config_new();
    ck_assert_ptr_nonnull(ec);
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK | EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    base = event_base_new_with_config(ec);
    event_config_free(ec);
    ck_assert_ptr_nonnull(base);
    ck_assert_int_eq(lb_conn_loop_init(base), 0);
    reads = 0;
}

static void teardown(void)
{
    lb_conn_loop_free();
    event_base_free(base);
}

START_TEST(test_pair_bounds_input_and_peer_output_together)
{
    int rfar, wfar;
    struct lb_conn *r = conn_pair_end(&rfar);   /* reads what rfar sends */
    struct lb_conn *w = conn_pair_end(&wfar);   /* writes to wfar, which does not read */
    lb_conn_pair(r, w);
    lb_conn_read_enable(r);

    /* W's socket is full: what W's output holds stays there. */
    fill(w->fd);
    static char block[40 * 1024];
    evbuffer_add(w->out, block, sizeof(block));
    spin();
    size_t held_out = lb_conn_out_len(w);
    ck_assert_uint_gt(held_out, 0);

    /* R is sent more than the limit: it reads only what fits beside W's
     * output, and stops there. */
    put(rfar, 2 * LIMIT);
    spin();
    ck_assert_int_gt(reads, 0);
    ck_assert_uint_eq(lb_conn_in_len(r), LIMIT - held_out);
    ck_assert_uint_eq(lb_conn_held(r), LIMIT);
    ck_assert_uint_eq(lb_conn_out_len(w), held_out);

    /* The reader of W's far end catches up: W's output leaves, and R reads
     * again, up to the limit of its own input. */
    drain(wfar);
    spin();
    ck_assert_uint_eq(lb_conn_out_len(w), 0);
    ck_assert_uint_eq(lb_conn_in_len(r), LIMIT);

    /* Freeing one side unpairs the other. */
    lb_conn_free(w);
    ck_assert_ptr_null(r->peer);
    ck_assert_uint_eq(lb_conn_held(r), LIMIT);
    lb_conn_free(r);
    close(rfar);
    close(wfar);
}
END_TEST

START_TEST(test_unpaired_input_alone_counts)
{
    int rfar, wfar;
    struct lb_conn *r = conn_pair_end(&rfar);
    struct lb_conn *w = conn_pair_end(&wfar);
    lb_conn_read_enable(r);
    fill(w->fd);
    static char block[40 * 1024];
    evbuffer_add(w->out, block, sizeof(block));
    put(rfar, 2 * LIMIT);
    spin();
    ck_assert_uint_gt(lb_conn_out_len(w), 0);
    ck_assert_uint_eq(lb_conn_in_len(r), LIMIT);
    /* Paired now, over the limit together: no more is read until W's
     * output drains, and unpairing lets R go on (its input is full). */
    lb_conn_pair(r, w);
    ck_assert_uint_gt(lb_conn_held(r), LIMIT);
    lb_conn_unpair(r);
    ck_assert_ptr_null(w->peer);
    ck_assert_uint_eq(lb_conn_held(r), LIMIT);
    lb_conn_free(w);
    lb_conn_free(r);
    close(rfar);
    close(wfar);
}
END_TEST

/* The address of the last block's data in BUF. */
static const void *last_block(struct evbuffer *buf)
{
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(buf, -1, NULL, v, 16);
    ck_assert_int_ge(n, 1);
    ck_assert_int_le(n, 16);
    while (n > 1 && v[n - 1].iov_len == 0)
        n--;
    return v[n - 1].iov_base;
}

/* Free space after the data of BUF's last block. */
static size_t tail_space(struct evbuffer *buf)
{
    struct evbuffer_iovec v;
    ck_assert_int_eq(evbuffer_reserve_space(buf, 1, &v, 1), 1);
    size_t space = v.iov_len;
    evbuffer_commit_space(buf, &v, 0);
    return space;
}

START_TEST(test_move_copies_a_mostly_empty_last_block)
{
    int rfar, wfar;
    struct lb_conn *r = conn_pair_end(&rfar);
    struct lb_conn *w = conn_pair_end(&wfar);
    lb_conn_read_enable(r);

    /* A peer that keeps up: blocks move as they are, even a mostly empty
     * one (a streaming read, 64 KiB, that found 5,000 bytes). */
    r->bulk = 1;
    put(rfar, 5000);
    spin();
    ck_assert_uint_eq(lb_conn_in_len(r), 5000);
    const void *block = last_block(r->in);
    lb_conn_move(r, w, 5000);
    ck_assert_uint_eq(lb_conn_out_len(w), 5000);
    ck_assert_ptr_eq(last_block(w->out), block);
    spin();
    ck_assert_uint_eq(lb_conn_out_len(w), 0);     /* written */

    /* A peer that is behind (its socket full, part of its output left). */
    fill(w->fd);
    evbuffer_add(w->out, "behind", 6);
    spin();
    ck_assert(w->write_armed);

    /* The same read: its bytes are copied into a block their size, not
     * held in the 64 KiB one. */
    r->bulk = 1;
    put(rfar, 5000);
    spin();
    ck_assert_uint_eq(lb_conn_in_len(r), 5000);
    block = last_block(r->in);
    lb_conn_move(r, w, 5000);
    ck_assert_uint_eq(lb_conn_in_len(r), 0);
    ck_assert_uint_eq(lb_conn_out_len(w), 6 + 5000);
    ck_assert_ptr_ne(last_block(w->out), block);
    ck_assert_uint_lt(tail_space(w->out), 16 * 1024);

    /* A full first read (4 KiB) is passed on as it is, without a copy. */
    r->bulk = 0;
    put(rfar, 3968);
    spin();
    ck_assert_uint_eq(lb_conn_in_len(r), 3968);
    block = last_block(r->in);
    lb_conn_move(r, w, 3968);
    ck_assert_uint_eq(lb_conn_out_len(w), 6 + 5000 + 3968);
    ck_assert_ptr_eq(last_block(w->out), block);

    lb_conn_free(w);
    lb_conn_free(r);
    close(rfar);
    close(wfar);
}
END_TEST

Suite *conn_suite(void)
{
    Suite *s = suite_create("conn");
    TCase *tc = tcase_create("conn");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_pair_bounds_input_and_peer_output_together);
    tcase_add_test(tc, test_unpaired_input_alone_counts);
    tcase_add_test(tc, test_move_copies_a_mostly_empty_last_block);
    suite_add_tcase(s, tc);
    return s;
}
