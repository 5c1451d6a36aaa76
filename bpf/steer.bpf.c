/* lbd's SO_REUSEPORT steering: a client address picks the same worker's
 * listening socket connection after connection (README "Steering").
 *
 * Loaded by the master (master/steer.c), one copy per listener: a
 * REUSEPORT_SOCKARRAY can only select sockets of one reuseport group. The
 * master keeps SOCKS (worker number -> its listening socket, live workers
 * only) and RING (slot -> worker number) current. A slot whose worker is
 * gone (its socket left SOCKS before the master redid RING) fails to
 * select: the next slots are tried, then the kernel's own choice. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "steer.h"

struct {
    __uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
    __uint(max_entries, LB_STEER_WORKERS);
    __type(key, __u32);
    __type(value, __u64);
} socks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct lb_steer_ring);
} ring SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, LB_STEER_STATS);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

static __always_inline void lb_steer_count(__u32 what)
{
    __u64 *n = bpf_map_lookup_elem(&stats, &what);
    if (n)
        *n += 1;
}

static __always_inline int lb_steer_pick(struct sk_reuseport_md *md)
{
    __u32 zero = 0, w[4] = { 0 }, h;
    struct lb_steer_ring *r = bpf_map_lookup_elem(&ring, &zero);
    if (!r || r->live == 0)
        goto kernel;
    /* A connection a closing listener hands over has no packet (an empty
     * skb): its 4-tuple hash still picks a live worker. */
    if (md->eth_protocol == bpf_htons(ETH_P_IP) &&
        bpf_skb_load_bytes_relative(md, 12, w, 4, BPF_HDR_START_NET) == 0)
        h = lb_steer_hash_addr(w, 1);
    else if (md->eth_protocol == bpf_htons(ETH_P_IPV6) &&
             bpf_skb_load_bytes_relative(md, 8, w, 16, BPF_HDR_START_NET) == 0)
        h = lb_steer_hash_addr(w, 4);
    else
        h = md->hash;
    for (__u32 i = 0; i < LB_STEER_PROBES; i++) {
        __u32 k = r->slot[(h + i) & (LB_STEER_SLOTS - 1)];
        if (bpf_sk_select_reuseport(md, &socks, &k, 0) == 0) {
            lb_steer_count(LB_STEER_STAT_STEERED);
            return SK_PASS;
        }
    }
kernel:
    lb_steer_count(LB_STEER_STAT_KERNEL);
    return SK_PASS;             /* nothing selected: the kernel's hash */
}

/* Selects for new connections and, from Linux 5.14, also places the
 * connections a closing listener had queued (the master attaches this one
 * when the kernel takes it). */
SEC("sk_reuseport/migrate")
int lb_steer_migrate(struct sk_reuseport_md *md)
{
    return lb_steer_pick(md);
}

/* The same choice for kernels without migration. */
SEC("sk_reuseport")
int lb_steer_select(struct sk_reuseport_md *md)
{
    return lb_steer_pick(md);
}

char LICENSE[] SEC("license") = "GPL";
