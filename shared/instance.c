#include "shared/instance.h"

#include <errno.h>
#include <stdio.h>
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

void lb_instance_serve(int listen_fd, int shm_fd)
{
    for (;;) {
        int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            return;
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
