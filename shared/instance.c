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

void lb_instance_serve(int listen_fd, int shm_fd, lb_instance_scale_fn fn, void *arg)
{
    for (;;) {
        int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            return;
        /* Clients write their request as soon as they are connected: the
         * wait is for an old client that sends nothing. */
        char req[32] = "";
        struct pollfd p = { .fd = c, .events = POLLIN };
        if (poll(&p, 1, LB_INSTANCE_WAIT_MS) > 0) {
            ssize_t got = recv(c, req, sizeof(req) - 1, MSG_DONTWAIT);
            req[got > 0 ? got : 0] = '\0';
        }
        if (req[0] == 'S') {
            lb_instance_scale(c, req, fn, arg);
            close(c);
            continue;
        }
        struct lb_fd_msg m;
        lb_fd_msg_init(&m);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m.msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &shm_fd, sizeof(int));
        /* A fresh unix socket's buffer takes one byte at once: no blocking. */
        (void)sendmsg(c, &m.msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        close(c);
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
