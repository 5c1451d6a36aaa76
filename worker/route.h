/* Request routing: Host (exact, "*.suffix" or "*") and longest path prefix. */
#ifndef LB_ROUTE_H
#define LB_ROUTE_H

#include <stddef.h>

#include "shared/config.h"

/* The route for HOST (a Host header value, port allowed, may be NULL) and
 * PATH (origin-form: the caller turns an absolute-form target into its
 * authority and path first). Among the routes whose host and prefix both
 * match, the most specific host wins (exact, then the longest "*.suffix",
 * then "*"), then the longest prefix. NULL if none matches. */
const struct lb_route_cfg *lb_route_match(const struct lb_config *cfg,
                                          const char *host, size_t host_len,
                                          const char *path, size_t path_len);

#endif
