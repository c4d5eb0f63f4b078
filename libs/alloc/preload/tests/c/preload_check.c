/* Run under LD_PRELOAD=libpalloc_preload.so: the C allocation API with glibc's semantics,
 * and pointers from glibc's own allocator passed to ours. Prints "preload_check: ok". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);

#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "preload_check: %s:%d: %s\n", __FILE__, __LINE__, #c); \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static int aligned(void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* Sizes the compiler cannot see, so that it does not reject the overflowing calls. */
static volatile size_t huge = SIZE_MAX / 2;

int main(void) {
    Dl_info info;
    CHECK(dladdr((void *)dlsym(RTLD_DEFAULT, "malloc"), &info) && strstr(info.dli_fname, "palloc_preload"));

    /* free keeps errno, for small and large blocks and for NULL. */
    void *a = malloc(10), *b = malloc(1 << 22);
    errno = EILSEQ;
    free(a);
    free(b);
    free(NULL);
    CHECK(errno == EILSEQ);

    /* calloc overflow, reallocarray overflow. */
    errno = 0;
    CHECK(calloc(huge, 3) == NULL && errno == ENOMEM);
    char *z = calloc(100, 10);
    for (int i = 0; i < 1000; i++) CHECK(z[i] == 0);
    errno = 0;
    CHECK(reallocarray(z, huge, 3) == NULL && errno == ENOMEM);
    free(z);

    /* realloc(NULL, n), realloc(p, 0). */
    char *r = realloc(NULL, 33);
    CHECK(r != NULL);
    memset(r, 'x', 33);
    r = realloc(r, 5000);
    CHECK(r[0] == 'x' && r[32] == 'x');
    CHECK(realloc(r, 0) == NULL);

    /* Alignment: EINVAL for bad ones, honoured for good ones. */
    void *p = NULL;
    CHECK(posix_memalign(&p, 3, 10) == EINVAL);
    CHECK(posix_memalign(&p, sizeof(void *) / 2, 10) == EINVAL);
    for (size_t al = sizeof(void *); al <= (1u << 21); al *= 2) {
        CHECK(posix_memalign(&p, al, 100) == 0 && aligned(p, al));
        free(p);
    }
    errno = 0;
    CHECK(aligned_alloc(24, 48) == NULL && errno == EINVAL);
    p = aligned_alloc(64, 128);
    CHECK(p && aligned(p, 64));
    free(p);
    p = memalign(100, 10); /* rounded up to 128, as glibc does */
    CHECK(p && aligned(p, 128));
    free(p);
    long pg = sysconf(_SC_PAGESIZE);
    p = valloc(10);
    CHECK(p && aligned(p, pg));
    free(p);
    p = pvalloc(1);
    CHECK(p && aligned(p, pg) && malloc_usable_size(p) >= (size_t)pg);
    free(p);
    CHECK(malloc_usable_size(NULL) == 0);
    p = malloc(1000);
    CHECK(malloc_usable_size(p) >= 1000);
    free(p);

    /* Pointers from glibc's allocator: freed, resized and measured by glibc. */
    char *g = __libc_malloc(100);
    memset(g, 'g', 100);
    CHECK(malloc_usable_size(g) >= 100);
    g = realloc(g, 300);
    CHECK(g && g[0] == 'g' && g[99] == 'g');
    free(g);
    free(__libc_malloc(1 << 20));

    /* The statistics entry points work. */
    int trimmed = malloc_trim(0);
    CHECK(trimmed == 0 || trimmed == 1);
    CHECK(malloc_info(0, stdout) == 0);
    errno = 0;
    CHECK(malloc_info(1, stdout) == -1 && errno == EINVAL);
    malloc_stats();
    printf("preload_check: ok\n");
    return 0;
}
