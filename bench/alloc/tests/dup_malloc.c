/*
 * A broken malloc for the tests: every 5000th malloc hands out again the block the previous
 * call returned (still live), so two owners share one block. free ignores the first free of
 * such a block. The benchmark must fail loudly when it runs under this. Single-threaded
 * workloads only (its bookkeeping has no lock).
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stddef.h>

extern void *__libc_malloc(size_t n);
extern void __libc_free(void *p);

static void *last;
static unsigned long calls;
static void *dups[4096];
static unsigned ndups;

void *malloc(size_t n) {
    calls++;
    if (calls % 5000 == 0 && last != NULL && malloc_usable_size(last) >= n && ndups < 4096) {
        dups[ndups++] = last;
        return last;
    }
    last = __libc_malloc(n);
    return last;
}

void free(void *p) {
    for (unsigned i = 0; i < ndups; i++) {
        if (dups[i] == p) {
            dups[i] = NULL;
            return;
        }
    }
    if (p == last) last = NULL;
    __libc_free(p);
}
