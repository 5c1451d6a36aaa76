/* Rate-limit arithmetic and the shared tables it runs on (types in
 * shm-t.h: struct lb_rl_entry). No locks: every update is one
 * compare-and-swap on one 64-bit word, so any number of workers share a
 * limit exactly.
 *
 * GCRA (the generic cell rate algorithm, ITU-T I.371; Brandur Leach's
 * "throttled" explains it well): a key's whole state is its theoretical
 * arrival time (TAT), the time at which its bucket would be full again if
 * no more requests came. With T = 1/rate, a request at NOW is admitted when
 *
 *     max(TAT, NOW) + T - NOW <= (burst + 1) * T
 *
 * and then TAT becomes max(TAT, NOW) + T. A TAT at or before NOW is a full
 * bucket, the same as no entry at all: such entries are reused freely. A
 * leaky bucket (nginx's limit_req) admits the same requests but holds one
 * whose TAT runs more than (delay + 1) * T ahead until it does not.
 *
 * A table is CAP entries, a key's place a SipHash of it: linear probing over
 * at most LB_RL_PROBE entries. A key not found takes the first empty entry,
 * else the one whose bucket is the fullest (smallest TAT: a refilled bucket
 * costs nothing to drop, an active key's TAT keeps moving ahead, so this is
 * least-recently-used in effect); dropping one that still held a debt is an
 * eviction, counted. Entries are never emptied, so a search stops at the
 * first empty one.
 */
#ifndef LB_RLTABLE_H
#define LB_RLTABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "shared/shm-t.h"

#define LB_RL_PROBE     8       /* entries looked at per key */
#define LB_RL_KEY_FREE  0       /* entry.key: never used */
#define LB_RL_KEY_BUSY  1       /* entry.key: being claimed (for a few instructions) */
#define LB_GCRA_SLACK_NS 1000000000ULL  /* a TAT this far beyond any admission: clock set back */

struct lb_gcra_params {
    uint64_t interval_ns;       /* T: 1 s / rate */
    uint64_t limit_ns;          /* (burst + 1) * T: how far the TAT may run ahead */
    uint64_t delay_ns;          /* (delay + 1) * T, leaky bucket; limit_ns for a token bucket */
};

struct lb_gcra {
    bool admit;
    uint64_t tat;               /* the key's TAT after this request */
    uint64_t wait_ns;           /* admitted: hold it this long first (leaky bucket) */
    uint64_t retry_ns;          /* refused: until a request would be admitted */
    uint64_t remaining;         /* requests that would be admitted now, after this one */
    uint64_t reset_ns;          /* until the bucket is full again */
};

/* Fill P for a limit of one request per INTERVAL_NS, BURST excess at once,
 * and (leaky bucket) DELAY of them passed without waiting. */
void lb_gcra_params_init(struct lb_gcra_params *p, uint64_t interval_ns, uint64_t burst,
                         uint64_t delay);

/* The verdict on a request at NOW for a key whose TAT is TAT (0: none).
 * Pure arithmetic: nothing is written. Saturates instead of wrapping, and
 * bounds a TAT left too far ahead by a clock set back. */
void lb_gcra_decide(uint64_t tat, uint64_t now, const struct lb_gcra_params *p,
                    struct lb_gcra *out);

/* Never 0 or 1 (the free and busy markers). */
static inline uint64_t lb_rl_key(uint64_t hash)
{
    return hash > LB_RL_KEY_BUSY ? hash : hash + 2;
}

enum lb_rl_taken {
    LB_RL_FOUND,                /* the key was there */
    LB_RL_NEW,                  /* took an empty entry */
    LB_RL_REUSED,               /* took an entry whose bucket had refilled */
    LB_RL_EVICTED,              /* took an entry whose key still had a debt */
};

/* The entry of KEY (lb_rl_key) in the table T of CAP entries, or a claimed
 * one with TAT 0 (*HOW says which). NULL when none could be had: every
 * entry of the window was being claimed by others at that instant. */
struct lb_rl_entry *lb_rltable_get(struct lb_rl_entry *t, uint64_t cap, uint64_t key,
                                   uint64_t now, enum lb_rl_taken *how);

/* Decide on a request at NOW against entry E and, if it is admitted and
 * COMMIT, record it (CAS; retried while others update it). A refusal
 * changes nothing (but a TAT a clock set back left far ahead). */
void lb_rltable_consume(struct lb_rl_entry *e, uint64_t now, const struct lb_gcra_params *p,
                        bool commit, struct lb_gcra *out);

/* Give back one admitted request (another limit refused it): TAT - T,
 * unless the entry has gone to another key meanwhile. */
void lb_rltable_refund(struct lb_rl_entry *e, uint64_t key, uint64_t interval_ns);

/* ---- connection counts (max_connections_per_ip) ----
 * One table per worker slot, written by that worker alone: a plain find or
 * claim, no CAS. Others read the counts to sum them over all workers. */

/* Owner: the entry of KEY, or a claimed empty or zero-count one (count 0).
 * NULL when every entry of the window holds another key's connections. */
struct lb_rl_entry *lb_conntable_get(struct lb_rl_entry *t, uint64_t cap, uint64_t key);
/* Anyone: KEY's count in table T (0 if absent). */
uint64_t lb_conntable_count(const struct lb_rl_entry *t, uint64_t cap, uint64_t key);

#endif
