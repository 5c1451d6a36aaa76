#include "master/proctitle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

extern char **environ;

static char *lb_title_start;
static size_t lb_title_len;

void lb_proctitle_init(int argc, char **argv)
{
    if (argc == 0 || argv[0] == NULL)
        return;
    /* argv strings and then environ strings are contiguous: find the end
     * of that area, then copy environ elsewhere so the area is ours. */
    char *end = argv[0] + strlen(argv[0]) + 1;
    for (int i = 1; i < argc; i++)
        if (argv[i] == end)
            end = argv[i] + strlen(argv[i]) + 1;
    size_t nenv = 0;
    while (environ[nenv] != NULL)
        nenv++;
    char **env = calloc(nenv + 1, sizeof(*env));
    if (env == NULL)
        return;
    for (size_t i = 0; i < nenv; i++) {
        if (environ[i] == end)
            end = environ[i] + strlen(environ[i]) + 1;
        env[i] = strdup(environ[i]);
        if (env[i] == NULL)
            return;     /* keep the old environ: titles just stay short */
    }
    environ = env;
    lb_title_start = argv[0];
    lb_title_len = (size_t)(end - argv[0]);
    for (int i = 1; i < argc; i++)
        argv[i] = NULL;
}

void lb_proctitle_set(const char *fmt, ...)
{
    char title[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(title, sizeof(title), fmt, ap);
    va_end(ap);
    prctl(PR_SET_NAME, title, 0, 0, 0);     /* comm: top, pgrep */
    if (lb_title_start == NULL)
        return;
    size_t n = strlen(title);
    if (n >= lb_title_len)
        n = lb_title_len - 1;
    memcpy(lb_title_start, title, n);
    memset(lb_title_start + n, 0, lb_title_len - n);
}
