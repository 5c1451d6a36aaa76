/* `lbd -s`: a JSON snapshot of a running instance's shared memory. */
#ifndef LB_SNAPSHOT_H
#define LB_SNAPSHOT_H

#include <stdio.h>

#include "shared/shm.h"

/* Print the segment of the lbd running CONFIG_PATH to OUT. Returns the exit
 * status (0, or 1 with the reason on stderr). */
int lb_snapshot_run(const char *config_path, FILE *out);
/* Write H as JSON (used by lb_snapshot_run; separate for tests). */
void lb_snapshot_write(const struct lb_shm_header *h, FILE *out);

/* B's weight as the balancer uses it NOW_MS: its slow start's share of it
 * for its pool's SLOW_START_MS (also /metrics). */
double lb_snapshot_effective_weight(const struct lb_shm_backend *b, uint64_t slow_start_ms,
                                    uint64_t now_ms);

/* "closed", "open", "half_open", by enum lb_breaker_state (also /metrics). */
extern const char *const lb_breaker_state_names[LB_BREAKER_STATES];
/* Names of enum lb_backend_admin: "ready", "drain", "maint" (admin API). */
extern const char *const lb_backend_admin_names[LB_BACKEND_ADMIN_STATES];
/* "connect", "reset", "timeout", "502", "503", "504", "5xx", by enum
 * lb_retry_reason (also /metrics). */
extern const char *const lb_retry_reason_names[LB_RETRY_REASONS];
/* "full", "resumed", "failed"; "version", "cipher", "http", "protocol",
 * "closed" (also /metrics). */
extern const char *const lb_tls_result_names[LB_TLS_RESULTS];
extern const char *const lb_tls_failure_names[LB_TLS_FAILURES];
extern const char *const lb_acme_state_names[LB_ACME_STATES];
extern const char *const lb_acme_result_names[LB_ACME_RESULTS];

#endif
