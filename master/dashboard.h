/* The HTML dashboard served at GET / by the admin listener: one page with
 * its CSS and JavaScript inline (master/dashboard.html, turned into a C
 * array at build time), so it works offline and from a single binary. It
 * polls /status and changes servers through the admin API. */
#ifndef LB_DASHBOARD_H
#define LB_DASHBOARD_H

#include <stddef.h>

/* The page's bytes (UTF-8 HTML) and their number in *LEN. */
const char *lb_dashboard_page(size_t *len);

#endif
