#include "shared/version.h"

#ifdef LB_VERSION_EXTRA
const char lb_version[] = LB_VERSION "+" LB_VERSION_EXTRA;
#else
const char lb_version[] = LB_VERSION;
#endif
