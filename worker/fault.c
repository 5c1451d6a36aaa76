#include "worker/fault.h"

#include <string.h>

#include "shared/shm.h"
#include "shared/util.h"

static uint64_t lb_fault_rand(uint64_t rng[2])
{
    uint64_t x = rng[0], y = rng[1];
    rng[0] = y;
    x ^= x << 23;
    rng[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return rng[1] + y;
}

bool lb_fault_pick(const struct lb_config *cfg, const struct lb_shm_header *h,
                   const struct lb_pool_cfg *pc, uint64_t rng[2], struct lb_fault_action *a)
{
    uint64_t draw = UINT64_MAX, from = 0;
    for (size_t i = 0; i < pc->nfaults; i++) {
        const struct lb_fault_cfg *fc = &cfg->faults[pc->faults[i]];
        struct lb_shm_fault *f = lb_shm_fault(h, fc->shm_id);
        uint32_t ppm = atomic_load_explicit(&f->live_ppm, memory_order_relaxed);
        if (ppm == 0)
            continue;
        if (draw == UINT64_MAX)
            draw = lb_fault_rand(rng) % LB_FAULT_PPM_ONE;
        from += ppm;
        if (draw >= from)
            continue;
        *a = (struct lb_fault_action){ .name = fc->name, .shm = f };
        if (fc->type == LB_FAULT_DELAY)
            a->delay_ms = fc->delay_ms;
        else if (fc->type == LB_FAULT_ABORT)
            a->abort_status = fc->abort_status;
        else
            a->reset = true;
        return true;
    }
    return false;
}

/* A header value as an integer in [LO, HI], or -1. */
static long long lb_fault_number(const struct lb_http_header *hd, long long lo, long long hi)
{
    if (hd->value_len == 0 || hd->value_len > 9)
        return -1;
    long long v = 0;
    for (uint32_t i = 0; i < hd->value_len; i++) {
        char c = hd->value[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    return v >= lo && v <= hi ? v : -1;
}

bool lb_fault_from_headers(const struct lb_http_msg *m, struct lb_fault_action *a)
{
    *a = (struct lb_fault_action){ .name = "headers" };
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct lb_http_header *hd = &m->headers[i];
        if (hd->name_len != 17)     /* both names are 17 bytes */
            continue;
        long long v;
        if (lb_str_ieq(hd->name, hd->name_len, "x-lbd-fault-delay")) {
            if ((v = lb_fault_number(hd, 1, 3600000)) > 0)
                a->delay_ms = (uint64_t)v;
        } else if (lb_str_ieq(hd->name, hd->name_len, "x-lbd-fault-abort")) {
            if ((v = lb_fault_number(hd, 200, 599)) > 0)
                a->abort_status = (int)v;
        }
    }
    return a->delay_ms != 0 || a->abort_status != 0;
}
