#include "shared/version.h"

#include "shared/shm-t.h"

#ifdef LB_VERSION_EXTRA
const char lb_version[] = LB_VERSION "+" LB_VERSION_EXTRA;
#else
const char lb_version[] = LB_VERSION;
#endif

#ifdef LB_TEST_WORKERS_EXIT
const bool lb_test_workers_exit = true;
#else
const bool lb_test_workers_exit = false;
#endif

#ifdef LB_TEST_LAYOUT
const unsigned lb_shm_layout_version = LB_SHM_LAYOUT_VERSION + 1000;
#else
const unsigned lb_shm_layout_version = LB_SHM_LAYOUT_VERSION;
#endif
