/* Request-head parsing for the test backend; see request.h. */
#include "tests/backend/request.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Lengths are capped well below UINT64_MAX so that sums never overflow. */
#define REQ_NUM_MAX ((uint64_t)1 << 62)

size_t req_head_end(const char *buf, size_t len)
{
    /* The head ends at the first empty line: "\n\n" or "\n\r\n". The head
     * itself cannot start with an empty line (the caller skips those). */
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (i + 1 < len && buf[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* RFC 9110 tchar: what method names and header names are made of. */
static bool is_tchar(unsigned char ch)
{
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
        return true;
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool is_token(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i]))
            return false;
    return true;
}

/* Decimal digits only (no sign, no spaces, no "0x"), capped. */
static int parse_u64(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
        if (v > max)
            return -1;
    }
    *out = v;
    return 0;
}

int req_parse_chunk_size(const char *line, uint64_t *size)
{
    uint64_t v = 0;
    size_t i = 0;

    for (; line[i] != '\0'; i++) {
        char ch = line[i];
        unsigned d;

        if (ch >= '0' && ch <= '9')
            d = (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            d = (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            d = (unsigned)(ch - 'A' + 10);
        else
            break;
        v = v * 16 + d;
        if (v > REQ_NUM_MAX)
            return -1;
    }
    if (i == 0)
        return -1;
    /* Whitespace before a chunk extension is tolerated (BWS); anything else
     * after the digits must be an extension, which we ignore. */
    while (line[i] == ' ' || line[i] == '\t')
        i++;
    if (line[i] != '\0' && line[i] != ';')
        return -1;
    *size = v;
    return 0;
}

/* Case-insensitive search of a comma-separated header value for a token. */
static bool list_has(const char *v, const char *tok)
{
    size_t tl = strlen(tok);

    while (*v != '\0') {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        const char *end = v;
        while (*end != '\0' && *end != ',')
            end++;
        const char *last = end;
        while (last > v && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        if ((size_t)(last - v) == tl && strncasecmp(v, tok, tl) == 0)
            return true;
        v = end;
    }
    return false;
}

/* The last coding of a Transfer-Encoding list, which must be chunked for a
 * request: any other final coding leaves the body length undeterminable. */
static bool te_final_is_chunked(const char *v)
{
    const char *end = v + strlen(v);

    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    const char *start = end;
    while (start > v && start[-1] != ',')
        start--;
    while (start < end && (*start == ' ' || *start == '\t'))
        start++;
    return end - start == 7 && strncasecmp(start, "chunked", 7) == 0;
}

struct hdr_state {
    bool have_cl;
    bool have_te;
    bool conn_close;
    bool conn_keep_alive;
};

static int apply_header(struct request *req, struct hdr_state *hs, const char *name,
                        size_t name_len, const char *value)
{
#define NAME_IS(lit) (name_len == sizeof(lit) - 1 && strncasecmp(name, lit, name_len) == 0)
    if (NAME_IS("content-length")) {
        uint64_t cl;

        if (parse_u64(value, strlen(value), REQ_NUM_MAX, &cl) < 0)
            return -1;
        /* Repeats are only harmless when they agree (RFC 9112 6.3). */
        if (hs->have_cl && cl != req->content_length)
            return -1;
        hs->have_cl = true;
        req->content_length = cl;
    } else if (NAME_IS("transfer-encoding")) {
        /* Only the last Transfer-Encoding line counts for "final coding";
         * several lines are one list, so the last line's last entry wins. */
        hs->have_te = true;
        req->chunked_body = te_final_is_chunked(value);
        if (!req->chunked_body)
            return -1;
    } else if (NAME_IS("connection")) {
        if (list_has(value, "close"))
            hs->conn_close = true;
        if (list_has(value, "keep-alive"))
            hs->conn_keep_alive = true;
    } else if (NAME_IS("expect")) {
        if (strcasecmp(value, "100-continue") == 0)
            req->expect_continue = true;
    }
#undef NAME_IS
    return 0;
}

/* Value of a boolean query flag: any decimal number, non-zero is true. */
static int parse_flag(const char *v, size_t n, bool *out)
{
    uint64_t x;

    if (parse_u64(v, n, REQ_NUM_MAX, &x) < 0)
        return -1;
    *out = x != 0;
    return 0;
}

static int apply_param(struct request *req, const char *k, size_t kn, const char *v, size_t vn)
{
    uint64_t x;

#define KEY_IS(lit) (kn == sizeof(lit) - 1 && memcmp(k, lit, kn) == 0)
    if (KEY_IS("status")) {
        if (parse_u64(v, vn, 999, &x) < 0 || x < 100)
            return -1;
        req->status = (int)x;
    } else if (KEY_IS("delay")) {
        /* A day is more than any test waits; the cap keeps timeval sane. */
        if (parse_u64(v, vn, 86400000, &req->delay_ms) < 0)
            return -1;
    } else if (KEY_IS("size")) {
        if (parse_u64(v, vn, REQ_NUM_MAX, &req->size) < 0)
            return -1;
        req->has_size = true;
    } else if (KEY_IS("chunked")) {
        return parse_flag(v, vn, &req->chunked);
    } else if (KEY_IS("close")) {
        return parse_flag(v, vn, &req->close);
    } else if (KEY_IS("reset")) {
        return parse_flag(v, vn, &req->reset);
    } else if (KEY_IS("drop")) {
        return parse_flag(v, vn, &req->drop);
    } else if (KEY_IS("echo")) {
        return parse_flag(v, vn, &req->echo);
    } else if (KEY_IS("hang")) {
        return parse_flag(v, vn, &req->hang);
    } else if (KEY_IS("ws")) {
        return parse_flag(v, vn, &req->ws);
    } else if (KEY_IS("trickle")) {
        if (parse_u64(v, vn, 86400000, &req->trickle_ms) < 0)
            return -1;
    } else if (KEY_IS("endless")) {
        return parse_flag(v, vn, &req->endless);
    } else if (KEY_IS("hdrsize")) {
        if (parse_u64(v, vn, REQ_NUM_MAX, &req->hdrsize) < 0)
            return -1;
    } else if (KEY_IS("sts")) {
        return parse_flag(v, vn, &req->sts);
    } else if (KEY_IS("setcookie")) {
        return parse_flag(v, vn, &req->setcookie);
    } else if (KEY_IS("retry_after")) {
        if (parse_u64(v, vn, 86400, &req->retry_after) < 0)
            return -1;
        req->has_retry_after = true;
    } else if (KEY_IS("trickle_head")) {
        if (parse_u64(v, vn, 86400000, &req->trickle_head_ms) < 0)
            return -1;
    } else if (KEY_IS("early_hints")) {
        if (vn == 7 && memcmp(v, "forever", 7) == 0)
            req->early_hints = REQ_FOREVER;
        else if (parse_u64(v, vn, REQ_NUM_MAX, &req->early_hints) < 0)
            return -1;
    }
    /* Unknown keys are ignored, so tests can add cache-busters and such. */
#undef KEY_IS
    return 0;
}

/* Split the request target into path and query and apply the query. A bad
 * value for a known key is an error: a silently ignored typo in a test's
 * URL would make the test pass for the wrong reason. */
static int parse_target(struct request *req, const char *target)
{
    const char *path = target;

    /* absolute-form (a proxy-style request): skip scheme and authority */
    if (*path != '/') {
        const char *p = strstr(path, "://");
        if (p != NULL) {
            p += 3;
            path = p + strcspn(p, "/?");
        }
    }
    size_t path_len = strcspn(path, "?");
    req->stats = path_len == 6 && memcmp(path, "/stats", 6) == 0 &&
                 (req->is_get || req->is_head);
    req->control = path_len == 8 && memcmp(path, "/control", 8) == 0 && req->is_get;
    /* /stats ignores its query: it must answer even in a test that appends
     * behaviour parameters to every URL. */
    if (req->stats || path[path_len] != '?')
        return 0;

    const char *q = path + path_len + 1;
    while (*q != '\0') {
        size_t n = strcspn(q, "&");
        const char *eq = memchr(q, '=', n);
        size_t kn = eq != NULL ? (size_t)(eq - q) : n;
        const char *v = eq != NULL ? eq + 1 : q + n;
        size_t vn = eq != NULL ? n - kn - 1 : 0;

        if (kn > 0 && apply_param(req, q, kn, v, vn) < 0)
            return -1;
        q += n;
        if (*q == '&')
            q++;
    }
    return 0;
}

/* Request line: METHOD SP TARGET SP HTTP/1.x (single spaces, as RFC 9112
 * asks of senders; we are the strict recipient a test backend should be). */
static int parse_request_line(struct request *req, char *line, char **target)
{
    char *sp1 = strchr(line, ' ');
    if (sp1 == NULL || !is_token(line, (size_t)(sp1 - line)))
        return -1;
    *sp1 = '\0';
    req->is_head = strcmp(line, "HEAD") == 0;
    req->is_get = strcmp(line, "GET") == 0;

    char *t = sp1 + 1;
    char *sp2 = strchr(t, ' ');
    if (sp2 == NULL || sp2 == t)
        return -1;
    *sp2 = '\0';
    for (char *p = t; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return -1;
    *target = t;

    const char *ver = sp2 + 1;
    if (strncmp(ver, "HTTP/1.", 7) != 0 || (ver[7] != '0' && ver[7] != '1') || ver[8] != '\0')
        return -1;
    req->minor = ver[7] - '0';
    return 0;
}

/* Split off the next line of a NUL-terminated head, stripping CRLF or LF. */
static char *next_line(char **cursor)
{
    char *line = *cursor;
    char *nl = strchr(line, '\n');

    if (nl == NULL)
        return NULL;
    *nl = '\0';
    *cursor = nl + 1;
    if (nl > line && nl[-1] == '\r')
        nl[-1] = '\0';
    return line;
}

static int parse_header_line(struct request *req, struct hdr_state *hs, char *line)
{
    /* obs-fold (a line starting with whitespace) is rejected: RFC 9112
     * allows that, and folding is a classic smuggling vector. */
    char *colon = strchr(line, ':');
    if (colon == NULL || !is_token(line, (size_t)(colon - line)))
        return -1;

    char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    char *end = v + strlen(v);
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *end = '\0';
    for (char *p = v; *p != '\0'; p++)
        if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f)
            return -1;
    return apply_header(req, hs, line, (size_t)(colon - line), v);
}

static int parse_copy(char *buf, struct request *req)
{
    struct hdr_state hs = { 0 };
    char *cursor = buf;
    char *target = NULL;
    char *line = next_line(&cursor);

    if (line == NULL || parse_request_line(req, line, &target) < 0)
        return -1;
    while ((line = next_line(&cursor)) != NULL && *line != '\0')
        if (parse_header_line(req, &hs, line) < 0)
            return -1;
    if (line == NULL)
        return -1;      /* no blank line: not a whole head */

    if (hs.have_te && hs.have_cl) {
        req->te_and_cl = true;
        req->content_length = 0;
    }
    req->keep_alive = !hs.conn_close && (req->minor >= 1 || hs.conn_keep_alive);
    /* HTTP/1.0 clients do not know 100 Continue (RFC 9110 10.1.1). */
    if (req->minor == 0)
        req->expect_continue = false;
    return parse_target(req, target);
}

int req_parse(const char *head, size_t len, struct request *req)
{
    memset(req, 0, sizeof *req);
    req->status = 200;

    /* A NUL byte would silently truncate the string functions below. */
    if (memchr(head, '\0', len) != NULL)
        return -1;
    char *buf = malloc(len + 1);
    if (buf == NULL)
        return -1;
    memcpy(buf, head, len);
    buf[len] = '\0';
    int rc = parse_copy(buf, req);
    free(buf);
    return rc;
}
