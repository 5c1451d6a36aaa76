#include "master/json.h"

#include <stdlib.h>
#include <string.h>

struct lb_json_in {
    const char *p, *end;
    const char *why;
};

static void lb_json_ws(struct lb_json_in *in)
{
    while (in->p < in->end && (*in->p == ' ' || *in->p == '\t' || *in->p == '\n' || *in->p == '\r'))
        in->p++;
}

static int lb_json_hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t lb_utf8_put(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A string at in->p (past its opening quote) into a new buffer. */
static char *lb_json_string(struct lb_json_in *in, size_t *len)
{
    const char *start = in->p;
    const char *q = start;
    while (q < in->end && *q != '"') {
        if (*q == '\\')
            q++;
        q++;
    }
    if (q >= in->end) {
        in->why = "unterminated string";
        return NULL;
    }
    /* Unescaped is never longer than escaped (\u0800+ is 6 in, 3 out). */
    char *out = malloc((size_t)(q - start) + 1);
    if (out == NULL) {
        in->why = "out of memory";
        return NULL;
    }
    size_t o = 0;
    const char *p = start;
    while (p < q) {
        unsigned char c = (unsigned char)*p++;
        if (c < 0x20) {
            in->why = "control character in a string";
            free(out);
            return NULL;
        }
        if (c != '\\') {
            out[o++] = (char)c;
            continue;
        }
        char e = *p++;
        switch (e) {
        case '"': out[o++] = '"'; break;
        case '\\': out[o++] = '\\'; break;
        case '/': out[o++] = '/'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (q - p < 4 || lb_json_hex4(p, &cp) < 0)
                goto bad;
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (q - p < 6 || p[0] != '\\' || p[1] != 'u' || lb_json_hex4(p + 2, &lo) < 0 ||
                    lo < 0xdc00 || lo > 0xdfff)
                    goto bad;
                p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                goto bad;
            }
            o += lb_utf8_put(out + o, cp);
            break;
        }
        default:
            goto bad;
        }
    }
    out[o] = '\0';
    *len = o;
    in->p = q + 1;
    return out;
bad:
    in->why = "bad escape in a string";
    free(out);
    return NULL;
}

static struct lb_json *lb_json_value(struct lb_json_in *in, int depth);

static struct lb_json *lb_json_node(struct lb_json_in *in, enum lb_json_type t)
{
    struct lb_json *j = calloc(1, sizeof(*j));
    if (j == NULL)
        in->why = "out of memory";
    else
        j->type = t;
    return j;
}

static struct lb_json *lb_json_container(struct lb_json_in *in, int depth, bool object)
{
    struct lb_json *j = lb_json_node(in, object ? LB_JSON_OBJECT : LB_JSON_ARRAY);
    if (j == NULL)
        return NULL;
    struct lb_json **tail = &j->child;
    char close = object ? '}' : ']';
    lb_json_ws(in);
    if (in->p < in->end && *in->p == close) {
        in->p++;
        return j;
    }
    for (;;) {
        char *key = NULL;
        lb_json_ws(in);
        if (object) {
            size_t klen;
            if (in->p >= in->end || *in->p != '"') {
                in->why = "object member without a name";
                goto fail;
            }
            in->p++;
            key = lb_json_string(in, &klen);
            if (key == NULL)
                goto fail;
            lb_json_ws(in);
            if (in->p >= in->end || *in->p != ':') {
                free(key);
                in->why = "':' expected";
                goto fail;
            }
            in->p++;
        }
        struct lb_json *v = lb_json_value(in, depth + 1);
        if (v == NULL) {
            free(key);
            goto fail;
        }
        v->key = key;
        *tail = v;
        tail = &v->next;
        lb_json_ws(in);
        if (in->p < in->end && *in->p == ',') {
            in->p++;
            continue;
        }
        if (in->p < in->end && *in->p == close) {
            in->p++;
            return j;
        }
        in->why = object ? "',' or '}' expected" : "',' or ']' expected";
        goto fail;
    }
fail:
    lb_json_free(j);
    return NULL;
}

static struct lb_json *lb_json_value(struct lb_json_in *in, int depth)
{
    if (depth > LB_JSON_DEPTH) {
        in->why = "nested too deep";
        return NULL;
    }
    lb_json_ws(in);
    if (in->p >= in->end) {
        in->why = "value expected";
        return NULL;
    }
    char c = *in->p;
    if (c == '{' || c == '[') {
        in->p++;
        return lb_json_container(in, depth, c == '{');
    }
    if (c == '"') {
        in->p++;
        size_t len;
        char *s = lb_json_string(in, &len);
        if (s == NULL)
            return NULL;
        struct lb_json *j = lb_json_node(in, LB_JSON_STRING);
        if (j == NULL) {
            free(s);
            return NULL;
        }
        j->str = s;
        j->len = len;
        return j;
    }
    static const struct { const char *word; enum lb_json_type t; } words[] = {
        { "null", LB_JSON_NULL }, { "true", LB_JSON_TRUE }, { "false", LB_JSON_FALSE },
    };
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(words[i].word);
        if ((size_t)(in->end - in->p) >= n && memcmp(in->p, words[i].word, n) == 0) {
            in->p += n;
            return lb_json_node(in, words[i].t);
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        char buf[64];
        size_t n = 0;
        while (in->p + n < in->end && n < sizeof(buf) - 1 &&
               strchr("0123456789+-.eE", in->p[n]) != NULL) {
            buf[n] = in->p[n];
            n++;
        }
        buf[n] = '\0';
        char *endp;
        double v = strtod(buf, &endp);
        if (endp != buf + n || n == 0) {
            in->why = "bad number";
            return NULL;
        }
        in->p += n;
        struct lb_json *j = lb_json_node(in, LB_JSON_NUMBER);
        if (j != NULL)
            j->num = v;
        return j;
    }
    in->why = "unexpected character";
    return NULL;
}

struct lb_json *lb_json_parse(const char *text, size_t len, const char **why)
{
    struct lb_json_in in = { text, text + len, NULL };
    struct lb_json *j = lb_json_value(&in, 0);
    if (j != NULL) {
        lb_json_ws(&in);
        if (in.p != in.end) {
            lb_json_free(j);
            j = NULL;
            in.why = "text after the value";
        }
    }
    if (j == NULL)
        *why = in.why ? in.why : "not JSON";
    return j;
}

void lb_json_free(struct lb_json *j)
{
    while (j != NULL) {
        struct lb_json *next = j->next;
        lb_json_free(j->child);
        free(j->key);
        free(j->str);
        free(j);
        j = next;
    }
}

const struct lb_json *lb_json_get(const struct lb_json *j, const char *key)
{
    if (j == NULL || j->type != LB_JSON_OBJECT)
        return NULL;
    for (const struct lb_json *c = j->child; c != NULL; c = c->next)
        if (strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

const char *lb_json_str(const struct lb_json *j)
{
    return j != NULL && j->type == LB_JSON_STRING ? j->str : NULL;
}

bool lb_json_int(const struct lb_json *j, int64_t *out)
{
    if (j == NULL)
        return false;
    if (j->type == LB_JSON_NUMBER) {
        if (j->num < -9.2e18 || j->num > 9.2e18 || j->num != (double)(int64_t)j->num)
            return false;
        *out = (int64_t)j->num;
        return true;
    }
    if (j->type != LB_JSON_STRING || j->len == 0 || j->len > 19)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < j->len; i++) {
        if (j->str[i] < '0' || j->str[i] > '9')
            return false;
        v = v * 10 + (j->str[i] - '0');
    }
    *out = v;
    return true;
}

static int lb_b64_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

long lb_base64_decode(const char *in, size_t len, char *out, size_t cap)
{
    while (len > 0 && in[len - 1] == '=')
        len--;
    if (len % 4 == 1 || cap == 0)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = lb_b64_val(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= cap)
                return -1;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return (long)o;
}

long lb_base64_encode(const void *in, size_t len, char *out, size_t cap)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = in;
    size_t need = (len + 2) / 3 * 4;
    if (need + 1 > cap)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
    return (long)o;
}
