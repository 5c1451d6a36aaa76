#include "shared/siphash.h"

#include <string.h>

static inline uint64_t lb_rotl(uint64_t x, unsigned b)
{
    return (x << b) | (x >> (64 - b));
}

static inline uint64_t lb_le64(const unsigned char *p)
{
    /* Byte by byte: the result is the same on any host, and compilers
     * turn it into one load where the host is little-endian. */
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
           (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
           (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

#define LB_SIPROUND(v0, v1, v2, v3) do { \
        v0 += v1; v1 = lb_rotl(v1, 13); v1 ^= v0; v0 = lb_rotl(v0, 32); \
        v2 += v3; v3 = lb_rotl(v3, 16); v3 ^= v2; \
        v0 += v3; v3 = lb_rotl(v3, 21); v3 ^= v0; \
        v2 += v1; v1 = lb_rotl(v1, 17); v1 ^= v2; v2 = lb_rotl(v2, 32); \
    } while (0)

uint64_t lb_siphash(const uint64_t key[2], const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t v0 = key[0] ^ 0x736f6d6570736575ULL;   /* "somepseudorandomlygeneratedbytes" */
    uint64_t v1 = key[1] ^ 0x646f72616e646f6dULL;
    uint64_t v2 = key[0] ^ 0x6c7967656e657261ULL;
    uint64_t v3 = key[1] ^ 0x7465646279746573ULL;
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = lb_le64(p + i);
        v3 ^= m;
        LB_SIPROUND(v0, v1, v2, v3);
        LB_SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    /* The last block: the remaining bytes, and the length's low byte on top. */
    unsigned char tail[8] = { 0 };
    memcpy(tail, p + whole, len - whole);
    uint64_t b = lb_le64(tail) | (uint64_t)(len & 0xff) << 56;
    v3 ^= b;
    LB_SIPROUND(v0, v1, v2, v3);
    LB_SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    LB_SIPROUND(v0, v1, v2, v3);
    LB_SIPROUND(v0, v1, v2, v3);
    LB_SIPROUND(v0, v1, v2, v3);
    LB_SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}
