/* Per-worker free lists of fixed-size objects; see freelist.h. */
#include "worker/freelist.h"

#include <stdlib.h>
#include <string.h>

void *lb_freelist_take(struct lb_freelist *l)
{
    void *o = l->head;
    if (o == NULL)
        return calloc(1, l->size);
    memcpy(&l->head, o, sizeof(void *));
    l->count--;
    memset(o, 0, l->size);
    return o;
}

void lb_freelist_put(struct lb_freelist *l, void *o)
{
    if (o == NULL)
        return;
    if (l->count >= l->max) {
        free(o);
        return;
    }
    memcpy(o, &l->head, sizeof(void *));
    l->head = o;
    l->count++;
}

void lb_freelist_clear(struct lb_freelist *l)
{
    while (l->head != NULL) {
        void *o = l->head;
        memcpy(&l->head, o, sizeof(void *));
        free(o);
    }
    l->count = 0;
}
