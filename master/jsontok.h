/* A small JSON reader for the ACME client (master/acme.c): the server's
 * answers are parsed into a flat array of tokens in document order, then
 * looked up by key. No allocation; strings are copied out unescaped. */
#ifndef LB_JSONTOK_H
#define LB_JSONTOK_H

#include <stdbool.h>
#include <stddef.h>

enum lb_jsontok_type { LB_JSONTOK_OBJECT, LB_JSONTOK_ARRAY, LB_JSONTOK_STRING, LB_JSONTOK_PRIMITIVE };

struct lb_jsontok {
    enum lb_jsontok_type type;
    size_t start, end;      /* bytes of the value (a string's without its quotes) */
    int children;           /* object: keys and values; array: elements */
};

/* Parse JS (LEN bytes) into at most MAX tokens; token 0 is the top value.
 * The number of tokens, or -1 when JS is not JSON or has too many. */
int lb_jsontok_parse(const char *js, size_t len, struct lb_jsontok *toks, int max);

/* The value of KEY in object OBJ (a token index), or -1. */
int lb_jsontok_get(const char *js, const struct lb_jsontok *toks, int n, int obj, const char *key);

/* Element I of array ARR, or -1. */
int lb_jsontok_elem(const struct lb_jsontok *toks, int n, int arr, int i);

/* String token T into OUT (CAP bytes, unescaped, NUL-terminated). False if
 * T is not a string or does not fit. */
bool lb_jsontok_str(const char *js, const struct lb_jsontok *toks, int n, int t, char *out,
                 size_t cap);

/* KEY of OBJ as a string (OUT emptied when absent): lb_jsontok_get + lb_jsontok_str. */
bool lb_jsontok_get_str(const char *js, const struct lb_jsontok *toks, int n, int obj,
                     const char *key, char *out, size_t cap);

#endif
