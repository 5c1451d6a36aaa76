/* Per-worker free lists of fixed-size objects (session timers, exchange
 * state, access-log entries): what an idle connection gives back waits,
 * warm, for the next request, so a request mallocs none of them.
 *
 * A list keeps at most MAX objects; beyond that they go back to malloc, so
 * a burst of connections does not pin its peak in the worker forever.
 * Single-threaded: each worker owns its lists. */
#ifndef LB_FREELIST_H
#define LB_FREELIST_H

#include <stddef.h>

struct lb_freelist {
    void *head;             /* a listed object's first bytes hold the link */
    size_t size;            /* of each object, at least a pointer */
    unsigned count;         /* objects listed */
    unsigned max;           /* most kept */
};

#define LB_FREELIST_INIT(obj_size, max_kept) \
    { .head = NULL, .size = (obj_size), .count = 0, .max = (max_kept) }

/* A zeroed object: a listed one, or a new one; NULL when out of memory. */
void *lb_freelist_take(struct lb_freelist *l);

/* Give O (may be NULL) back: listed while there is room, else freed. */
void lb_freelist_put(struct lb_freelist *l, void *o);

/* Free every listed object (worker exit). */
void lb_freelist_clear(struct lb_freelist *l);

#endif
