/* Finding the running lbd of a configuration file.
 *
 * The master listens on an abstract unix socket named after the realpath of
 * its configuration file and hands the shm memfd to whoever connects
 * (SCM_RIGHTS). `lbd -s -c FILE` and lbtop use it; nothing on disk can go
 * stale after a crash, because the name dies with the master.
 */
#ifndef LB_INSTANCE_H
#define LB_INSTANCE_H

#include <stddef.h>

/* Master: bind the rendezvous socket for CONFIG_PATH (absolute). Returns a
 * non-blocking listening fd, or -1 with errno (EADDRINUSE: an lbd already
 * runs this configuration). */
int lb_instance_listen(const char *config_path);
/* Master: scale to N workers; 0 and a REPLY, or -1 and why in REPLY. */
typedef int (*lb_instance_scale_fn)(void *arg, unsigned n, char *reply, size_t len);
/* Master: serve the pending clients: send SHM_FD, or scale through FN
 * ("lbd -S"). Waits at most 200 ms for a client's request. */
void lb_instance_serve(int listen_fd, int shm_fd, lb_instance_scale_fn fn, void *arg);
/* Client: fetch the memfd of the lbd running CONFIG_PATH. Returns the fd, or
 * -1 with errno (ECONNREFUSED/ENOENT: none running). */
int lb_instance_fetch(const char *config_path);
/* Client: ask the lbd running CONFIG_PATH for N workers. 0 with its answer
 * ("ok ..." or "error ...") in REPLY, or -1 with errno (not running). */
int lb_instance_scale_request(const char *config_path, unsigned n, char *reply, size_t len);

#endif
