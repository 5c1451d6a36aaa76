/* eBPF steering of new connections to workers (bpf/steer.bpf.c; README
 * "Steering"): per listener whose steering is "client_ip", the master loads
 * the program, attaches it to the listener's SO_REUSEPORT group and keeps
 * its maps in step with the live workers: a client address goes to the same
 * worker connection after connection, a dead worker's clients go to the
 * others until it is back.
 *
 * Without the rights to load BPF (or a kernel without sk_reuseport), one
 * warning and the kernel's hash; LBD_REQUIRE_BPF=1 in the environment makes
 * that an error instead. */
#ifndef LB_STEER_H
#define LB_STEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "master/listen.h"
#include "shared/config.h"

struct lb_steer_prog;

struct lb_steer_group {
    struct lb_addr addr;
    struct lb_steer_prog *prog;         /* NULL: the kernel's hash */
};

struct lb_steer_set {
    struct lb_steer_group *groups;      /* in the listen set's order */
    size_t ngroups;
    int available;                      /* 0: not tried yet, 1: BPF loads, -1: it does not */
    bool migrate;                       /* the kernel takes the migrate program */
};

/* Give each group of LS the steering CFG asks for: load and attach the
 * program where it is new, detach it where a listener went back to
 * "kernel", keep it where it was (the group keeps its sockets across a
 * reload). Then lb_steer_sync. 0, or -1 with ERR set when BPF cannot be
 * loaded and LBD_REQUIRE_BPF=1. */
int lb_steer_apply(struct lb_steer_set *s, const struct lb_config *cfg,
                   struct lb_listen_set *ls, uint64_t live, char *err, size_t errlen);
/* The workers in LIVE (bit = worker number) accept: their sockets go in
 * each program's socket array and the slots are dealt among them; the
 * sockets of the others leave it first. */
void lb_steer_sync(struct lb_steer_set *s, const struct lb_listen_set *ls, uint64_t live);
/* Whether every listener of CFG will have the migrate program (with S as
 * it is after lb_steer_apply, or as expected before the first). */
bool lb_steer_migrates(const struct lb_steer_set *s, const struct lb_config *cfg);
/* Detach nothing (the groups keep what is attached until their sockets
 * close); free the programs' fds and memory. */
void lb_steer_free(struct lb_steer_set *s);
/* Listeners steered by the program, for shm. */
size_t lb_steer_count(const struct lb_steer_set *s);

/* The worker a client address goes to (for tests and `lbd -s`): W holds
 * NWORDS network-order words (1 for IPv4, 4 for IPv6), RING as the master
 * fills it. */
unsigned lb_steer_choose(const uint8_t *ring, const uint32_t *w, int nwords);
/* Deal LB_STEER_SLOTS slots among the workers of LIVE into RING. */
void lb_steer_fill(uint8_t *ring, uint64_t live);

#endif
