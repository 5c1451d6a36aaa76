/* A small JSON reader for the registries' answers (etcd's gateway, Consul):
 * the whole text parsed at once into a tree of nodes, strings unescaped.
 * Bounded: depth LB_JSON_DEPTH, and the caller's text size. */
#ifndef LB_JSON_H
#define LB_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LB_JSON_DEPTH 32

enum lb_json_type {
    LB_JSON_NULL,
    LB_JSON_FALSE,
    LB_JSON_TRUE,
    LB_JSON_NUMBER,
    LB_JSON_STRING,
    LB_JSON_ARRAY,
    LB_JSON_OBJECT,
};

struct lb_json {
    enum lb_json_type type;
    char *key;                          /* member of an object: its name */
    char *str;                          /* STRING: unescaped, NUL-terminated (may hold NULs) */
    size_t len;                         /* STRING: its length */
    double num;                         /* NUMBER */
    struct lb_json *child;              /* ARRAY, OBJECT: first element */
    struct lb_json *next;               /* next sibling */
};

/* Parse TEXT[0..len) (one value, whitespace around it). NULL, with *why,
 * when it is not JSON or runs out of memory. Free with lb_json_free. */
struct lb_json *lb_json_parse(const char *text, size_t len, const char **why);
void lb_json_free(struct lb_json *j);

/* Member KEY of object J (NULL: none, or J is not an object). */
const struct lb_json *lb_json_get(const struct lb_json *j, const char *key);
/* J's string, or NULL when it is not one. */
const char *lb_json_str(const struct lb_json *j);
/* J as an integer: a number, or a string of digits (etcd writes int64 as
 * strings). false when it is neither. */
bool lb_json_int(const struct lb_json *j, int64_t *out);

/* Decode base64 IN (standard alphabet, padding optional) into OUT (at
 * most CAP bytes, NUL-terminated: CAP - 1 data bytes). Its length, or -1. */
long lb_base64_decode(const char *in, size_t len, char *out, size_t cap);
/* Encode IN[0..len) into OUT (CAP bytes with the NUL). Its length, or -1. */
long lb_base64_encode(const void *in, size_t len, char *out, size_t cap);

#endif
