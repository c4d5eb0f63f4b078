/*
 * palloc: a per-CPU caching malloc on restartable sequences.
 *
 * libpalloc.so (SONAME libpalloc.so.0) exports only the functions below. Loading it, also
 * with RTLD_GLOBAL, replaces nobody's malloc: blocks from palloc_* go back to palloc_*.
 * The drop-in build libpalloc_preload.so (for LD_PRELOAD) exports the same functions plus
 * malloc, free, calloc, realloc, reallocarray, posix_memalign, aligned_alloc, memalign,
 * valloc, pvalloc, malloc_usable_size, malloc_trim, malloc_stats and malloc_info.
 *
 * Errors: allocation functions return NULL with errno ENOMEM (out of memory, sizes that
 * overflow) or EINVAL (bad alignment). A pointer palloc did not hand out, passed to
 * palloc_free, palloc_realloc or palloc_usable_size, ends the process with a message
 * naming it ("palloc_free(0x...): pointer not allocated by palloc"). With PALLOC_CHECK=1
 * in the environment, double frees and frees of addresses inside a block are detected
 * too (README.md: what is detected). Functions returning int return 0 or a negative errno.
 *
 * Environment (read when the library is loaded): PALLOC_CHECK=1 checking mode;
 * PALLOC_INDEX=cpu_id|mm_cid per-CPU index (default mm_cid where the kernel has it);
 * PALLOC_PERCPU=0 no per-CPU caches; PALLOC_STATS=1 count hits and print the statistics
 * to stderr at exit.
 */
#ifndef PALLOC_H
#define PALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void *palloc_malloc(size_t size);
void palloc_free(void *p);                       /* NULL: nothing; keeps errno */
void *palloc_calloc(size_t n, size_t size);      /* NULL + ENOMEM when n * size overflows */
void *palloc_realloc(void *p, size_t size);      /* NULL p: malloc; size 0: free, NULL */
void *palloc_aligned_alloc(size_t align, size_t size); /* align a power of two, else EINVAL */
size_t palloc_usable_size(void *p);              /* 0 for NULL */

/* Drains every CPU cache and gives free pages back to the kernel; 1 if memory was
 * released, else 0. */
int palloc_trim(void);

/* Process-wide statistics. Fields are only ever added at the end; pass sizeof. */
struct palloc_stats {
    uint64_t mapped_bytes;     /* address space: chunks, large blocks, metadata, per-CPU pool */
    uint64_t resident_bytes;   /* chunks measured with mincore; the rest counted whole */
    uint64_t metadata_bytes;
    uint64_t chunk_bytes;
    uint64_t large_count;      /* blocks above 256 KiB, each its own mapping */
    uint64_t large_bytes;
    uint64_t live_objects;     /* small blocks handed out and not freed (exact when quiet) */
    uint64_t live_bytes;       /* their class sizes */
    uint64_t cached_bytes;     /* in every CPU cache */
    uint64_t transfer_bytes;   /* on the central transfer stacks */
    uint64_t span_free_bytes;  /* free in spans whose pages are still backed */
    uint64_t spans;
    uint64_t backed_spans;
    uint64_t span_releases;    /* spans whose pages went back to the kernel */
    uint64_t drains;           /* CPU caches drained to the central layer */
    uint64_t drain_failures;   /* drains refused (no membarrier, concurrent drainer) */
    uint64_t drained_objects;
    uint64_t hits;             /* blocks served from a CPU cache (counted while enabled) */
    uint64_t misses;           /* refills of a CPU cache */
    uint64_t overflows;        /* batches a full CPU cache gave back */
    uint64_t ncpus;            /* copies of the per-CPU layer, 0 before the first allocation */
    int64_t index;             /* 0 cpu_id, 1 mm_cid, -1 no per-CPU layer */
};
int palloc_stats(struct palloc_stats *out, size_t size); /* 0, -EINVAL */

struct palloc_cpu_stats {
    uint64_t hits, misses, overflows, cached_objects, cached_bytes;
};
/* 0; -EINVAL (NULL), -ERANGE (no such copy), -ENODEV (no per-CPU layer yet). */
int palloc_cpu_stats(uint32_t cpu, struct palloc_cpu_stats *out);

/* The statistics as a table, to file descriptor fd. */
void palloc_print_stats(int fd);

#define PALLOC_INDEX_CPU_ID 0
#define PALLOC_INDEX_MM_CID 1 /* falls back to cpu_id where the kernel has no mm_cid */
/* Before the first allocation: 0, -EINVAL, or -EBUSY once the per-CPU layer exists. */
int palloc_set_index(int index);

/* Count per-CPU hits (1) or not (0, the default unless PALLOC_STATS=1); returns the
 * previous setting. */
int palloc_count_hits(int on);

/* Tests: send every per-CPU cache operation to its locked fallback half (1) or back (0). */
void palloc_force_fallback(int on);

/* The calling thread's rseq mode: 1 libc-owned, 2 registered, 4 unavailable (see
 * palloc_thread_errno), 5 disabled by palloc_force_fallback. */
int palloc_thread_mode(void);
int palloc_thread_errno(void);

const char *palloc_version(void); /* "0.1.0" */

#ifdef __cplusplus
}
#endif

#endif
