/* Process titles as ps shows them ("lbd: master", "lbd: worker 0"), by
 * rewriting the argv area as nginx does (environ is moved out of the way). */
#ifndef LB_PROCTITLE_H
#define LB_PROCTITLE_H

/* Call once, early in main(), before anything reads environ's strings. */
void lb_proctitle_init(int argc, char **argv);
void lb_proctitle_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
