/* SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF",
 * 2012): a keyed 64-bit hash. Rate-limit keys are hashed with a key random
 * per instance, so a client cannot choose addresses or header values that
 * collide in the tables and push other clients' buckets out. */
#ifndef LB_SIPHASH_H
#define LB_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

/* KEY is the 128-bit key as two little-endian words: bytes 0-7, 8-15. */
uint64_t lb_siphash(const uint64_t key[2], const void *data, size_t len);

#endif
