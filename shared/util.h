/* Small helpers with no dependencies beyond libc: durations, socket
 * addresses, monotonic time, hashing. */
#ifndef LB_UTIL_H
#define LB_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>

#define LB_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define LB_CONTAINER_OF(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* "250ms", "2s", "1m", "1h", "0". A bare number other than 0 is refused:
 * a unit is always required so "30" cannot mean seconds to one reader and
 * milliseconds to another. Returns 0, or -1 on malformed or overflowing. */
int lb_duration_parse(const char *s, uint64_t *ms);

/* "8192", "64k", "1m", "2g" (powers of 1024). 0 or -1. */
int lb_size_parse(const char *s, uint64_t *bytes);

/* A parsed socket address, IPv4 or IPv6. */
struct lb_addr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* Parse "127.0.0.1:8080", "[::1]:8080", "*:8080" (IPv4 any), "[::]:8080",
 * "localhost:8080". Ports 1-65535. Wildcards only if allow_wildcard.
 * No DNS: names other than localhost are refused (discovery resolves names).
 * Returns 0, or -1 with a reason in *why. */
int lb_addr_parse(const char *s, bool allow_wildcard, struct lb_addr *out,
                  const char **why);

/* Canonical text form: "127.0.0.1:8080" or "[::1]:8080". */
void lb_addr_format(const struct lb_addr *a, char *buf, size_t len);
bool lb_addr_equal(const struct lb_addr *a, const struct lb_addr *b);
/* Client address without the port, for X-Forwarded-For. */
void lb_addr_format_host(const struct sockaddr *sa, char *buf, size_t len);

/* Milliseconds on CLOCK_MONOTONIC (not affected by clock changes). */
uint64_t lb_now_ms(void);
/* MS milliseconds as a struct timeval (for libevent). */
struct timeval lb_ms_timeval(uint64_t ms);
/* Milliseconds / microseconds since the epoch (vDSO: no syscall). */
uint64_t lb_wall_ms(void);
uint64_t lb_wall_us(void);

/* FNV-1a, for names that must map to the same value in every process. */
uint64_t lb_hash64(const void *data, size_t len);

/* Case-insensitive compare of a counted string with a NUL-terminated
 * lowercase literal. */
bool lb_str_ieq(const char *s, size_t len, const char *lower);

/* In a child of PARENT: SIGTERM when the parent dies, also when it died
 * between our fork() and now (the death signal would never come then). */
void lb_follow_parent(pid_t parent);

#endif
