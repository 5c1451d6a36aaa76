/* Consul's health API (GET /v1/health/service/NAME, blocking queries with
 * X-Consul-Index): answers parsed here, pure, for master/discovery.c and
 * the unit tests. */
#ifndef LB_CONSUL_H
#define LB_CONSUL_H

#include <stdbool.h>
#include <stddef.h>

#include "shared/config.h"
#include "shared/runtime.h"

/* The query's URL for D (its base URL, service, tag, passing_only) with
 * INDEX ("" or "0": the first, not blocking) and D's wait. Its length, or -1. */
int lb_consul_url(const struct lb_discovery_cfg *d, const char *index, char *out, size_t cap);

/* The instances of a health answer: Service.Address (else Node.Address)
 * and Service.Port, weight Service.Weights.Passing (1 when absent; 1-1000).
 * PASSING_ONLY: an instance with a check not "passing" is left out (as
 * Consul's ?passing does; we check again). Entries that cannot be used go
 * to SKIPPED with why. 0, or -1 with *why when it is no such answer. */
int lb_consul_parse(const char *body, size_t len, bool passing_only,
                    struct lb_runtime_server *out, size_t max, size_t *n,
                    void (*skipped)(void *arg, const char *entry, const char *why), void *arg,
                    const char **why);

#endif
