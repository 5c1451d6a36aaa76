/* Finding the running lbd of a configuration file.
 *
 * The master listens on an abstract unix socket named after the realpath of
 * its configuration file and hands the shm memfd to whoever connects
 * (SCM_RIGHTS). `lbd -s -c FILE` and lbtop use it; nothing on disk can go
 * stale after a crash, because the name dies with the master.
 */
#ifndef LB_INSTANCE_H
#define LB_INSTANCE_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

/* Master: bind the rendezvous socket for CONFIG_PATH (absolute). Returns a
 * non-blocking listening fd, or -1 with errno (EADDRINUSE: an lbd already
 * runs this configuration). */
int lb_instance_listen(const char *config_path);
/* Master: scale to N workers; 0 and a REPLY, or -1 and why in REPLY. */
typedef int (*lb_instance_scale_fn)(void *arg, unsigned n, char *reply, size_t len);

/* Master: the clients connected to the rendezvous socket whose request has
 * not come yet. Held without blocking: anyone on the host may connect and
 * say nothing. */
#define LB_INSTANCE_CLIENTS 16
struct lb_instance_clients {
    int fd[LB_INSTANCE_CLIENTS];
    uint64_t deadline[LB_INSTANCE_CLIENTS];     /* lb_now_ms(): served as "G" then */
    unsigned n;
};
void lb_instance_clients_init(struct lb_instance_clients *cl);
/* Close them all (a forked child, the master's exit). */
void lb_instance_clients_close(struct lb_instance_clients *cl);
/* The fds to poll for POLLIN (at most 1 + LB_INSTANCE_CLIENTS): the
 * listening one while there is room, and the waiting clients. */
size_t lb_instance_pollfds(int listen_fd, const struct lb_instance_clients *cl,
                           struct pollfd *pfd);
/* ms until a waiting client is due, -1 if none waits. */
int lb_instance_timeout(const struct lb_instance_clients *cl);
/* Serve what is ready, never waiting: the shm fd SHM_FD to a "G" request
 * (or a client silent for 200 ms: an older lbd -s), a scaling through FN
 * to "S <n>" ("lbd -S"); accept new clients while there is room. */
void lb_instance_serve(int listen_fd, struct lb_instance_clients *cl, int shm_fd,
                       lb_instance_scale_fn fn, void *arg);
/* Client: fetch the memfd of the lbd running CONFIG_PATH. Returns the fd, or
 * -1 with errno (ECONNREFUSED/ENOENT: none running). */
int lb_instance_fetch(const char *config_path);
/* Client: ask the lbd running CONFIG_PATH for N workers. 0 with its answer
 * ("ok ..." or "error ...") in REPLY, or -1 with errno (not running). */
int lb_instance_scale_request(const char *config_path, unsigned n, char *reply, size_t len);

#endif
