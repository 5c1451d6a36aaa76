/* What the steering program (bpf/steer.bpf.c) and the master
 * (master/steer.c) share: the map layout and the hash of a client address.
 * Built by clang -target bpf and by the C compiler, so: no libc, only
 * fixed-size types and inline functions.
 *
 * A client address hashes to one of LB_STEER_SLOTS slots; the master gives
 * every slot to a live worker (rendezvous hashing: each slot goes to the
 * worker that scores highest for it), so a worker that comes or goes moves
 * only the slots it wins or held, about 1/N of the clients. */
#ifndef LB_STEER_SHARED_H
#define LB_STEER_SHARED_H

#include <linux/types.h>

#define LB_STEER_SLOTS      1024u       /* power of two */
#define LB_STEER_WORKERS    64u         /* = LB_MAX_WORKERS */
#define LB_STEER_PROBES     4           /* ring positions tried before the kernel's choice */

/* The ring map's only value. */
struct lb_steer_ring {
    __u32 live;                         /* live workers; 0: let the kernel choose */
    __u8 slot[LB_STEER_SLOTS];          /* worker number (sockarray key) per slot */
};

/* Per-CPU counters of the program (index). */
enum { LB_STEER_STAT_STEERED, LB_STEER_STAT_KERNEL, LB_STEER_STATS };

/* murmur3's finalizer: every input bit reaches every output bit. */
static inline __u32 lb_steer_mix(__u32 h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* A client address as it is on the wire (network byte order words): 1
 * word for IPv4, 4 for IPv6. */
static inline __u32 lb_steer_hash_addr(const __u32 *w, int nwords)
{
    __u32 h = 0x9e3779b9u ^ (__u32)nwords;
    for (int i = 0; i < 4; i++)         /* bounded, for the verifier */
        if (i < nwords)
            h = lb_steer_mix(h ^ w[i]) + 0x7f4a7c15u;
    return lb_steer_mix(h);
}

/* Score of worker K for slot S: the highest live score owns the slot. */
static inline __u32 lb_steer_score(__u32 s, __u32 k)
{
    return lb_steer_mix(s * 0x9e3779b1u ^ lb_steer_mix(k + 0x632be5abu));
}

#endif
