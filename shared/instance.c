#include "shared/instance.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "shared/util.h"

/* One byte of payload carrying one descriptor (SCM_RIGHTS). */
struct lb_fd_msg {
    char byte;
    struct iovec iov;
    struct msghdr msg;
    union {                     /* last: clang sees CMSG_SPACE as variable */
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
};

static void lb_fd_msg_init(struct lb_fd_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->byte = 'L';
    m->iov = (struct iovec){ .iov_base = &m->byte, .iov_len = 1 };
    m->msg = (struct msghdr){ .msg_iov = &m->iov, .msg_iovlen = 1,
                              .msg_control = m->u.buf, .msg_controllen = sizeof(m->u.buf) };
}

static socklen_t lb_instance_addr(const char *config_path, struct sockaddr_un *sun)
{
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    /* Abstract namespace: sun_path[0] == '\0'. */
    int n = snprintf(sun->sun_path + 1, sizeof(sun->sun_path) - 1, "lbd-%016llx",
                     (unsigned long long)lb_hash64(config_path, strlen(config_path)));
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

int lb_instance_listen(const char *config_path)
{
    struct sockaddr_un sun;
    socklen_t len = lb_instance_addr(config_path, &sun);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&sun, len) < 0 || listen(fd, 16) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* A request: "G" (the memfd; also what a client that says nothing within
 * LB_INSTANCE_WAIT_MS gets) or "S <n>" (scale to n workers; from root or
 * lbd's own user only: anyone may connect to an abstract socket). */
#define LB_INSTANCE_WAIT_MS 200

static void lb_instance_scale(int c, const char *req, lb_instance_scale_fn fn, void *arg)
{
    char reply[160];
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    char *end;
    long n = strtol(req + 1, &end, 10);
    int rc = -1;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 ||
        (cred.uid != 0 && cred.uid != geteuid()))
        snprintf(reply, sizeof(reply), "refused: only root or lbd's user may scale");
    else if (end == req + 1 || n < 0 || n > 1000000)
        snprintf(reply, sizeof(reply), "bad worker count");
    else
        rc = fn(arg, (unsigned)n, reply, sizeof(reply));
    char line[200];
    int len = snprintf(line, sizeof(line), "%s %s\n", rc == 0 ? "ok" : "error", reply);
    (void)send(c, line, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void lb_instance_send_fd(int c, int shm_fd)
{
    struct lb_fd_msg m;
    lb_fd_msg_init(&m);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m.msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &shm_fd, sizeof(int));
    /* A fresh unix socket's buffer takes one byte at once: no blocking. */
    (void)sendmsg(c, &m.msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Answer client C if its request came (or it closed, or its wait is
 * over: an old client that sends nothing) and close it; false while it
 * may still send one. Never blocks. */
static bool lb_instance_answer(int c, bool waited, int shm_fd, lb_instance_scale_fn fn,
                               void *arg)
{
    char req[32];
    ssize_t got = recv(c, req, sizeof(req) - 1, MSG_DONTWAIT);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) && !waited)
        return false;
    req[got > 0 ? got : 0] = '\0';
    if (req[0] == 'S')
        lb_instance_scale(c, req, fn, arg);
    else
        lb_instance_send_fd(c, shm_fd);
    close(c);
    return true;
}

void lb_instance_clients_init(struct lb_instance_clients *cl)
{
    cl->n = 0;
}

void lb_instance_clients_close(struct lb_instance_clients *cl)
{
    for (unsigned i = 0; i < cl->n; i++)
        close(cl->fd[i]);
    cl->n = 0;
}

size_t lb_instance_pollfds(int listen_fd, const struct lb_instance_clients *cl,
                           struct pollfd *pfd)
{
    size_t n = 0;
    /* Full: the next ones wait in the backlog (their connect too). */
    if (cl->n < LB_INSTANCE_CLIENTS)
        pfd[n++] = (struct pollfd){ .fd = listen_fd, .events = POLLIN };
    for (unsigned i = 0; i < cl->n; i++)
        pfd[n++] = (struct pollfd){ .fd = cl->fd[i], .events = POLLIN };
    return n;
}

int lb_instance_timeout(const struct lb_instance_clients *cl)
{
    uint64_t now = lb_now_ms(), next = UINT64_MAX;
    for (unsigned i = 0; i < cl->n; i++)
        if (cl->deadline[i] < next)
            next = cl->deadline[i];
    if (next == UINT64_MAX)
        return -1;
    return next <= now ? 0 : (int)(next - now);
}

void lb_instance_serve(int listen_fd, struct lb_instance_clients *cl, int shm_fd,
                       lb_instance_scale_fn fn, void *arg)
{
    uint64_t now = lb_now_ms();
    while (cl->n < LB_INSTANCE_CLIENTS) {
        int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0)
            break;
        cl->fd[cl->n] = c;
        cl->deadline[cl->n++] = now + LB_INSTANCE_WAIT_MS;
    }
    /* Clients write their request as soon as they are connected: the wait
     * is for an old client that sends nothing, and it is spent in the
     * master's loop, not here. A client stays in the list while it is
     * answered: a worker a scaling forks closes it with the others. */
    for (unsigned i = 0; i < cl->n;) {
        if (lb_instance_answer(cl->fd[i], now >= cl->deadline[i], shm_fd, fn, arg)) {
            cl->fd[i] = cl->fd[cl->n - 1];
            cl->deadline[i] = cl->deadline[cl->n - 1];
            cl->n--;
        } else {
            i++;
        }
    }
}

int lb_instance_fetch(const char *config_path)
{
    struct sockaddr_un sun;
    socklen_t len = lb_instance_addr(config_path, &sun);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int shm_fd = -1;
    if (connect(fd, (struct sockaddr *)&sun, len) < 0)
        goto out;
    /* A failed send is no failure: a master that got nothing from us
     * within LB_INSTANCE_WAIT_MS (we were slow to run after connect) took
     * us for an old client, sent the memfd and closed; the answer waits in
     * our queue all the same. */
    (void)send(fd, "G", 1, MSG_NOSIGNAL);
    struct timeval tv = { .tv_sec = 5 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct lb_fd_msg m;
    lb_fd_msg_init(&m);
    if (recvmsg(fd, &m.msg, MSG_CMSG_CLOEXEC) <= 0) {
        errno = errno ? errno : ECONNRESET;
        goto out;
    }
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m.msg);
    if (cm == NULL || cm->cmsg_type != SCM_RIGHTS) {
        errno = EPROTO;
        goto out;
    }
    memcpy(&shm_fd, CMSG_DATA(cm), sizeof(int));
out:;
    int saved = errno;
    close(fd);
    errno = saved;
    return shm_fd;
}

/* One scale request: 1 when the master took us for an old client (our
 * request came after LB_INSTANCE_WAIT_MS: it sent the memfd, ignored
 * here, and closed before reading a byte), so asking again is safe. */
static int lb_instance_scale_once(const char *config_path, unsigned n, char *reply, size_t len)
{
    struct sockaddr_un sun;
    socklen_t alen = lb_instance_addr(config_path, &sun);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    char req[32];
    int rlen = snprintf(req, sizeof(req), "S%u", n);
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ssize_t got = -1;
    bool again = false;
    if (connect(fd, (struct sockaddr *)&sun, alen) == 0) {
        /* EPIPE: the master closed before our request came (see above). */
        again = send(fd, req, (size_t)rlen, MSG_NOSIGNAL) != rlen && errno == EPIPE;
        size_t have = 0;
        while (!again && have + 1 < len &&
               (got = recv(fd, reply + have, len - 1 - have, 0)) > 0)
            have += (size_t)got;
        reply[have] = '\0';
        again |= have == 1 && reply[0] == 'L';      /* the memfd's byte */
        got = have > 0 ? (ssize_t)have : -1;
        if (have == 0)
            errno = errno ? errno : ECONNRESET;
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return again ? 1 : got < 0 ? -1 : 0;
}

int lb_instance_scale_request(const char *config_path, unsigned n, char *reply, size_t len)
{
    int rc = 1;
    for (int i = 0; i < 5 && rc == 1; i++)
        rc = lb_instance_scale_once(config_path, n, reply, len);
    if (rc == 1) {
        snprintf(reply, len, "no answer from lbd");
        errno = ETIMEDOUT;
        rc = -1;
    }
    return rc;
}
