#ifndef LB_VERSION_H
#define LB_VERSION_H

#include <stdbool.h>

#define LB_VERSION "0.2.0"

/* LB_VERSION, plus "+EXTRA" for a build made with `make LBD_VERSION_EXTRA=`
 * (two builds of one tree that differ, for the upgrade tests): what
 * `lbd -v`, `lbd -s` and /metrics show. Only shared/version.c sees the
 * make variable, so changing it relinks, not rebuilds. */
extern const char lb_version[];

/* True only in build/lbd-crash, a test build whose workers exit as they
 * start: the upgrade to a binary that fails once running
 * (tests/e2e/test_upgrade.py). */
extern const bool lb_test_workers_exit;

/* The shm layout version this binary writes and adopts: LB_SHM_LAYOUT_VERSION,
 * but LB_SHM_LAYOUT_VERSION + 1000 in build/lbd-layout, a test build that
 * cannot adopt the others' segments nor they its (an upgrade across a
 * layout change, without a second build of the whole tree). */
extern const unsigned lb_shm_layout_version;

#endif
