/* ACME client (RFC 8555), a job of the control process: for every name in
 * some listener's tls.acme, a certificate is obtained from acme.directory,
 * stored as STORAGE/NAME.pem (chain, then key; 0600, replaced atomically)
 * and renewed renew_before its expiry. A new certificate goes live by
 * bumping the cert_generation of each listener with the name: workers
 * build their contexts again from the files at their next handshake (no
 * reload, no connection dropped). Challenges are answered by the workers
 * from shm (worker/challenge.h).
 *
 * The protocol runs on the control process's event loop: libcurl's multi
 * interface with its sockets and timer as libevent events, one request at
 * a time (an order is a sequence), each answer handled by the next step
 * of the order (a callback), polls waiting on a timer. Health checks,
 * /status and ticket rotation go on between the steps.
 *
 * Per name:
 *
 *   NONE/VALID --due (renew_at)--> ORDERING --certificate--> VALID
 *                                     |
 *                                     +--error--> FAILED --backoff--> ORDERING
 *
 * renew_at = notAfter - renew_before - jitter (up to a tenth of
 * renew_before, never later), so renewal never waits past expiry; a
 * renew_before longer than the certificate's lifetime is taken as a third
 * of it. A failed order is retried after 10 s, doubling to 1 h. */
#ifndef LB_ACME_H
#define LB_ACME_H

#include "shared/config.h"
#include "shared/shm-t.h"

struct event_base;
struct lb_acme;

/* Start the client for CFG's acme names on BASE. NULL when there are none,
 * or when it could not start (logged). */
struct lb_acme *lb_acme_start(struct event_base *base, const struct lb_config *cfg,
                              struct lb_shm_header *shm);

/* Stop (an order under way is dropped: the next control process makes it
 * again) and free A. */
void lb_acme_stop(struct lb_acme *a);

#endif
