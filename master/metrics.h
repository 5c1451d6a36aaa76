/* Prometheus text exposition (format 0.0.4) of the shm segment, for the
 * admin listener's GET /metrics. Every name has the lbd_ prefix; counters end
 * in _total; durations are seconds; labels pool, server, code, worker, kind. */
#ifndef LB_METRICS_H
#define LB_METRICS_H

#include <stdio.h>

#include "shared/shm.h"

void lb_metrics_write(const struct lb_shm_header *h, FILE *out);

#endif
