/* Intrusive doubly linked list (as nginx's ngx_queue): nodes live inside the
 * objects they link, so linking never allocates. */
#ifndef LB_LIST_H
#define LB_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct lb_list {
    struct lb_list *prev, *next;
};

static inline void lb_list_init(struct lb_list *l)
{
    l->prev = l->next = l;
}

static inline bool lb_list_empty(const struct lb_list *l)
{
    return l->next == l;
}

static inline void lb_list_push(struct lb_list *head, struct lb_list *n)
{
    n->next = head->next;
    n->prev = head;
    head->next->prev = n;
    head->next = n;
}

static inline void lb_list_remove(struct lb_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#define lb_list_foreach_safe(pos, tmp, head) \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); \
         (pos) = (tmp), (tmp) = (pos)->next)

#endif
