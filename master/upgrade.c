#include "master/upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shared/log.h"
#include "shared/shm-t.h"
#include "shared/util.h"
#include "shared/version.h"

#define LB_UPGRADE_PROBE_MS     20000
#define LB_UPGRADE_PROBE_OUT    4096
#define LB_PROBE_TAG            "lbd-upgrade-probe"

extern char **environ;

/* ---- name=value lists ----------------------------------------------------- */

static bool lb_inherit_name_ok(const char *name, size_t len)
{
    if (len == 0 || len >= LB_INHERIT_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int lb_inherit_addn(struct lb_inherit *l, const char *name, size_t len, long long value)
{
    if (!lb_inherit_name_ok(name, len) || value < 0 || l->n >= LB_INHERIT_MAX)
        return -1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct lb_inherit_entry *v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    memcpy(l->v[l->n].name, name, len);
    l->v[l->n].name[len] = '\0';
    l->v[l->n].value = value;
    l->n++;
    return 0;
}

int lb_inherit_add(struct lb_inherit *l, const char *name, long long value)
{
    return lb_inherit_addn(l, name, strlen(name), value);
}

int lb_inherit_parse(struct lb_inherit *l, const char *text, char *err, size_t errlen)
{
    size_t n0 = l->n;
    const char *p = text;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (eq == NULL) {
            snprintf(err, errlen, "'%.*s': no '='", (int)(len < 64 ? len : 64), p);
            goto fail;
        }
        const char *v = eq + 1;
        long long value = 0;
        if (v == p + len) {
            snprintf(err, errlen, "'%.*s': no value", (int)(eq - p), p);
            goto fail;
        }
        for (; v < p + len; v++) {
            if (*v < '0' || *v > '9' || value > (LLONG_MAX - 9) / 10) {
                snprintf(err, errlen, "'%.*s': not a number", (int)(len < 64 ? len : 64), p);
                goto fail;
            }
            value = value * 10 + (*v - '0');
        }
        if (lb_inherit_addn(l, p, (size_t)(eq - p), value) < 0) {
            snprintf(err, errlen, "'%.*s': bad name (or too many entries)",
                     (int)(len < 64 ? len : 64), p);
            goto fail;
        }
        if (end == NULL)
            break;
        p = end + 1;
        if (*p == '\0') {
            snprintf(err, errlen, "trailing ','");
            goto fail;
        }
    }
    return 0;
fail:
    l->n = n0;
    return -1;
}

char *lb_inherit_format(const struct lb_inherit *l)
{
    size_t len = 1;
    for (size_t i = 0; i < l->n; i++)
        len += strlen(l->v[i].name) + 22;
    char *out = malloc(len), *p = out;
    if (out == NULL)
        return NULL;
    *p = '\0';
    for (size_t i = 0; i < l->n; i++)
        p += sprintf(p, "%s%s=%lld", i ? "," : "", l->v[i].name, l->v[i].value);
    return out;
}

static void lb_inherit_remove(struct lb_inherit *l, size_t i)
{
    memmove(&l->v[i], &l->v[i + 1], (l->n - i - 1) * sizeof(l->v[0]));
    l->n--;
}

bool lb_inherit_take(struct lb_inherit *l, const char *name, long long *value)
{
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->v[i].name, name) == 0) {
            *value = l->v[i].value;
            lb_inherit_remove(l, i);
            return true;
        }
    }
    return false;
}

bool lb_inherit_take_prefix(struct lb_inherit *l, const char *prefix, long long *suffix,
                            long long *value)
{
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < l->n; i++) {
        if (strncmp(l->v[i].name, prefix, plen) != 0)
            continue;
        const char *s = l->v[i].name + plen;
        char *end;
        long long k = strtoll(s, &end, 10);
        *suffix = (*s >= '0' && *s <= '9' && *end == '\0') ? k : -1;
        *value = l->v[i].value;
        lb_inherit_remove(l, i);
        return true;
    }
    return false;
}

void lb_inherit_free(struct lb_inherit *l)
{
    free(l->v);
    *l = (struct lb_inherit){ 0 };
}

/* ---- the probe ------------------------------------------------------------- */

bool lb_upgrade_probing(void)
{
    return getenv(LB_UPGRADE_ENV_PROBE) != NULL;
}

void lb_upgrade_probe_answer(bool adopt_shm)
{
    printf(LB_PROBE_TAG " version=%s layout=%u shm=%s\n", lb_version, lb_shm_layout_version,
           adopt_shm ? "adopted" : "fresh");
    fflush(stdout);
}

int lb_upgrade_probe_parse(const char *output, struct lb_upgrade_probe *out)
{
    const char *p = output;
    while ((p = strstr(p, LB_PROBE_TAG " ")) != NULL) {
        if (p == output || p[-1] == '\n') {
            char version[sizeof(out->version)], shm[16];
            unsigned layout;
            char nl;
            if (sscanf(p, LB_PROBE_TAG " version=%47s layout=%u shm=%15[a-z]%c", version, &layout,
                       shm, &nl) == 4 && nl == '\n' &&
                (strcmp(shm, "adopted") == 0 || strcmp(shm, "fresh") == 0)) {
                snprintf(out->version, sizeof(out->version), "%s", version);
                out->layout = layout;
                out->adopt_shm = strcmp(shm, "adopted") == 0;
                return 0;
            }
        }
        p++;
    }
    return -1;
}

/* The line of TEXT that says why the probe failed: the first "[error]"
 * log line, else the last line. */
static void lb_upgrade_why(const char *text, char *out, size_t len)
{
    const char *e = strstr(text, "[error] ");
    if (e != NULL) {
        const char *colon = strstr(e, ": ");
        const char *from = colon && colon < strchrnul(e, '\n') ? colon + 2 : e;
        snprintf(out, len, "%.*s", (int)(strchrnul(from, '\n') - from), from);
        return;
    }
    size_t n = strlen(text);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        n--;
    size_t start = n;
    while (start > 0 && text[start - 1] != '\n')
        start--;
    snprintf(out, len, "%.*s", (int)(n - start), text + start);
}

static char **lb_upgrade_env(char *const vars[], size_t nvars);
static char *lb_upgrade_var(const char *name, const char *value);
static void lb_upgrade_cloexec(const struct lb_inherit *fds, bool on);

/* The probe: the new binary started as the upgrade will start it, told
 * to stop before it changes anything. */
static void lb_upgrade_probe_child(const char *path, char *const argv[],
                                   const struct lb_inherit *fds, const struct lb_inherit *state,
                                   int out_fd)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0 && null != 0) {
        dup2(null, 0);
        close(null);
    }
    dup2(out_fd, 1);
    dup2(out_fd, 2);
    char *f = lb_inherit_format(fds), *s = lb_inherit_format(state);
    char *vars[4] = { lb_upgrade_var(LB_UPGRADE_ENV_FDS, f),
                      lb_upgrade_var(LB_UPGRADE_ENV_STATE, s),
                      lb_upgrade_var(LB_UPGRADE_ENV_PATH, path),
                      LB_UPGRADE_ENV_PROBE "=1" };
    char **env = vars[0] && vars[1] && vars[2] ? lb_upgrade_env(vars, 4) : NULL;
    if (env == NULL) {
        dprintf(2, "out of memory\n");
        _exit(127);
    }
    /* Our copies only: the master's fds keep their flags. */
    lb_upgrade_cloexec(fds, false);
    execve(path, argv, env);
    dprintf(2, "cannot execute %s: %s\n", path, strerror(errno));
    _exit(127);
}

int lb_upgrade_probe(const char *path, char *const argv[], const struct lb_inherit *fds,
                     const struct lb_inherit *state, struct lb_upgrade_probe *out,
                     char *err, size_t errlen)
{
    if (access(path, X_OK) < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0)
        lb_upgrade_probe_child(path, argv, fds, state, p[1]);
    close(p[1]);

    /* Read its output to the end (it exits, or the deadline passes). */
    char buf[LB_UPGRADE_PROBE_OUT];
    size_t len = 0;
    uint64_t deadline = lb_now_ms() + LB_UPGRADE_PROBE_MS;
    bool timed_out = false;
    for (;;) {
        uint64_t now = lb_now_ms();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd pfd = { .fd = p[0], .events = POLLIN };
        int n = poll(&pfd, 1, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            continue;
        char tmp[512];
        ssize_t r = read(p[0], tmp, sizeof(tmp));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        /* Keep the first bytes (the probe line is short), and the end for
         * the error message: shift when full. */
        size_t k = (size_t)r;
        if (len + k >= sizeof(buf)) {
            size_t drop = len + k - (sizeof(buf) - 1);
            if (drop > len)
                drop = len;
            memmove(buf, buf + drop, len - drop);
            len -= drop;
            if (k > sizeof(buf) - 1 - len)
                k = sizeof(buf) - 1 - len;
        }
        memcpy(buf + len, tmp + (size_t)r - k, k);
        len += k;
    }
    buf[len] = '\0';
    close(p[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    int status = 0;
    /* Its output closed: the exit follows at once (or the kill). */
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    char last[256];
    lb_upgrade_why(buf, last, sizeof(last));
    if (timed_out) {
        snprintf(err, errlen, "%s did not finish its check within %d s", path,
                 LB_UPGRADE_PROBE_MS / 1000);
        return -1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(err, errlen, "%s failed its check (%s %d): %s", path,
                 WIFEXITED(status) ? "status" : "signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                 last[0] ? last : "no output");
        return -1;
    }
    if (lb_upgrade_probe_parse(buf, out) < 0) {
        snprintf(err, errlen, "%s exited without answering the check: not an lbd that can "
                 "take over", path);
        return -1;
    }
    return 0;
}

/* ---- the exec ---------------------------------------------------------------- */

static void lb_upgrade_cloexec(const struct lb_inherit *fds, bool on)
{
    for (size_t i = 0; i < fds->n; i++) {
        int fd = (int)fds->v[i].value;
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0)
            fcntl(fd, F_SETFD, on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC);
    }
}

/* environ without our variables, plus VARS ("NAME=VALUE" strings). */
static char **lb_upgrade_env(char *const vars[], size_t nvars)
{
    size_t n = 0;
    while (environ != NULL && environ[n] != NULL)
        n++;
    char **env = calloc(n + nvars + 1, sizeof(*env));
    if (env == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "LBD_INHERIT=", 12) != 0 &&
            strncmp(environ[i], "LBD_UPGRADE", 11) != 0)
            env[k++] = environ[i];
    for (size_t i = 0; i < nvars; i++)
        env[k++] = vars[i];
    env[k] = NULL;
    return env;
}

static char *lb_upgrade_var(const char *name, const char *value)
{
    if (value == NULL)
        return NULL;
    size_t len = strlen(name) + strlen(value) + 2;
    char *s = malloc(len);
    if (s != NULL)
        snprintf(s, len, "%s=%s", name, value);
    return s;
}

static int lb_upgrade_execve(int exe_fd, const char *path, char *const argv[],
                             const struct lb_inherit *fds, const struct lb_inherit *state,
                             char *err, size_t errlen)
{
    char *f = lb_inherit_format(fds), *s = lb_inherit_format(state);
    char *vars[3] = { lb_upgrade_var(LB_UPGRADE_ENV_FDS, f),
                      lb_upgrade_var(LB_UPGRADE_ENV_STATE, s),
                      lb_upgrade_var(LB_UPGRADE_ENV_PATH, path) };
    free(f);
    free(s);
    char **env = vars[0] && vars[1] && vars[2] ? lb_upgrade_env(vars, 3) : NULL;
    int saved = ENOMEM;
    if (env != NULL) {
        lb_upgrade_cloexec(fds, false);
        if (exe_fd >= 0)
            fexecve(exe_fd, argv, env);
        else
            execve(path, argv, env);
        saved = errno;
        lb_upgrade_cloexec(fds, true);
    }
    free(env);
    for (size_t i = 0; i < 3; i++)
        free(vars[i]);
    snprintf(err, errlen, "cannot execute %s: %s", path, strerror(saved));
    return -1;
}

int lb_upgrade_exec(int exe_fd, const char *path, char *const argv[],
                    const struct lb_inherit *fds, const struct lb_inherit *state, char *err,
                    size_t errlen)
{
    return lb_upgrade_execve(exe_fd, path, argv, fds, state, err, errlen);
}

/* ---- the new image ------------------------------------------------------------- */

static struct lb_inherit lb_upgrade_saved_fds, lb_upgrade_saved_state;
static char lb_upgrade_prev_path[4096];
static char lb_upgrade_path[4096];
static char *lb_upgrade_env_fds, *lb_upgrade_env_state;

void lb_upgrade_take_env(void)
{
    const char *path = getenv(LB_UPGRADE_ENV_PATH);
    const char *f = getenv(LB_UPGRADE_ENV_FDS), *s = getenv(LB_UPGRADE_ENV_STATE);
    if (path != NULL)
        snprintf(lb_upgrade_path, sizeof(lb_upgrade_path), "%s", path);
    if (f != NULL && s != NULL) {
        lb_upgrade_env_fds = strdup(f);
        lb_upgrade_env_state = strdup(s);
    }
    unsetenv(LB_UPGRADE_ENV_FDS);
    unsetenv(LB_UPGRADE_ENV_STATE);
    unsetenv(LB_UPGRADE_ENV_PATH);
}

bool lb_upgrade_inherited(struct lb_inherit *fds, struct lb_inherit *state)
{
    const char *f = lb_upgrade_env_fds, *s = lb_upgrade_env_state;
    bool ok = false;
    if (f != NULL && s != NULL) {
        char err[160];
        if (lb_inherit_parse(fds, f, err, sizeof(err)) < 0 ||
            lb_inherit_parse(state, s, err, sizeof(err)) < 0) {
            lb_log_error("%s/%s from the previous binary unreadable (%s): starting afresh",
                         LB_UPGRADE_ENV_FDS, LB_UPGRADE_ENV_STATE, err);
            lb_inherit_free(fds);
            lb_inherit_free(state);
        } else {
            ok = true;
            /* Copies for a rollback, which passes them on unchanged. */
            for (size_t i = 0; i < fds->n; i++)
                lb_inherit_add(&lb_upgrade_saved_fds, fds->v[i].name, fds->v[i].value);
            for (size_t i = 0; i < state->n; i++)
                lb_inherit_add(&lb_upgrade_saved_state, state->v[i].name, state->v[i].value);
            snprintf(lb_upgrade_prev_path, sizeof(lb_upgrade_prev_path), "%s", lb_upgrade_path);
            lb_upgrade_cloexec(fds, true);
        }
    }
    free(lb_upgrade_env_fds);
    free(lb_upgrade_env_state);
    lb_upgrade_env_fds = lb_upgrade_env_state = NULL;
    return ok;
}

void lb_upgrade_rollback(char *const argv[], const char *why)
{
    long long exe = -1;
    for (size_t i = 0; i < lb_upgrade_saved_fds.n; i++)
        if (strcmp(lb_upgrade_saved_fds.v[i].name, "exe") == 0)
            exe = lb_upgrade_saved_fds.v[i].value;
    long long dummy;
    if (exe < 0 || lb_inherit_take(&lb_upgrade_saved_state, "rollback", &dummy)) {
        lb_log_error("upgrade failed (%s) and no previous binary to go back to", why);
        return;
    }
    lb_inherit_add(&lb_upgrade_saved_state, "rollback", 1);
    lb_log_error("upgrade failed (%s): going back to the previous binary", why);
    char err[256];
    /* The old binary gets the path it was asked to run next time: the file
     * that failed may be fixed by then. */
    lb_upgrade_execve((int)exe, lb_upgrade_prev_path[0] ? lb_upgrade_prev_path : argv[0], argv,
                      &lb_upgrade_saved_fds, &lb_upgrade_saved_state, err, sizeof(err));
    lb_log_error("rollback failed: %s", err);
}

void lb_upgrade_self_path(char *out, size_t len)
{
    if (lb_upgrade_path[0] != '\0') {
        snprintf(out, len, "%s", lb_upgrade_path);
        return;
    }
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n < 0) {
        snprintf(out, len, "%s", "");
        return;
    }
    buf[n] = '\0';
    /* Replaced under us since the start: its path is still the one to run. */
    static const char deleted[] = " (deleted)";
    size_t dl = sizeof(deleted) - 1;
    if ((size_t)n > dl && strcmp(buf + n - dl, deleted) == 0)
        buf[n - dl] = '\0';
    snprintf(out, len, "%s", buf);
}
