/* Finding the running lbd of a configuration file.
 *
 * The master listens on an abstract unix socket named after the realpath of
 * its configuration file and hands the shm memfd to whoever connects
 * (SCM_RIGHTS). `lbd -s -c FILE` and lbtop use it; nothing on disk can go
 * stale after a crash, because the name dies with the master.
 */
#ifndef LB_INSTANCE_H
#define LB_INSTANCE_H

/* Master: bind the rendezvous socket for CONFIG_PATH (absolute). Returns a
 * non-blocking listening fd, or -1 with errno (EADDRINUSE: an lbd already
 * runs this configuration). */
int lb_instance_listen(const char *config_path);
/* Master: accept one pending client and send it SHM_FD. Never blocks. */
void lb_instance_serve(int listen_fd, int shm_fd);
/* Client: fetch the memfd of the lbd running CONFIG_PATH. Returns the fd, or
 * -1 with errno (ECONNREFUSED/ENOENT: none running). */
int lb_instance_fetch(const char *config_path);

#endif
