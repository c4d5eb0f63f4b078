/*
 * Allocation workloads for alloc-bench, one process per run:
 *
 *   alloc-workload WORKLOAD THREADS SIZE SEED
 *
 * The process is plain C calling malloc/free; the runner picks the allocator with LD_PRELOAD.
 * On success it prints one line to stdout:
 *
 *   ops=N elapsed_ns=N malloc_from=PATH
 *
 * where ops counts allocations (each one is freed again: one op is one malloc/free pair),
 * elapsed_ns is the measured phase (CLOCK_MONOTONIC) and malloc_from is the object that
 * defines the `malloc` this process calls (so a preload that did not take over is seen).
 *
 * Every block carries a pattern (a tag at its start, at every 4 KiB and its complement at its
 * end) that is checked before the block is freed; a mismatch, a NULL from malloc, a misaligned
 * block or a live block handed out twice ends the process with a message on stderr and exit
 * status 3.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *g_workload = "?";
static int g_threads;
static unsigned long long g_seed;

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "alloc-workload: %s threads=%d seed=%llu: CHECK FAILED: %s\n", g_workload, g_threads,
            g_seed, msg);
    fflush(stderr);
    _exit(3);
}

/* splitmix64: small, fast, and good enough to pick sizes and slots. */
typedef struct {
    uint64_t s;
} rng_t;

static inline uint64_t rng_next(rng_t *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rng_below(rng_t *r, uint64_t n) { return rng_next(r) % n; }

static rng_t rng_for(uint64_t a, uint64_t b) {
    rng_t r = {g_seed * 0x100000001B3ull ^ (a << 32) ^ b};
    rng_next(&r);
    return r;
}

static inline uint64_t mix(uint64_t a, uint64_t b) {
    rng_t r = {a ^ (b * 0xD6E8FEB86659FD93ull)};
    return rng_next(&r);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- block pattern ---------------------------------------------------------------------- */

#define PAGE 4096u

static inline void put64(void *p, size_t off, uint64_t v) { memcpy((char *)p + off, &v, 8); }
static inline uint64_t get64(const void *p, size_t off) {
    uint64_t v;
    memcpy(&v, (const char *)p + off, 8);
    return v;
}

static inline void check_alignment(const void *p, size_t n) {
    uintptr_t need = n >= 16 ? 16 : 8;
    if ((uintptr_t)p % need != 0) fail("block %p of %zu bytes is not %zu-aligned", p, n, (size_t)need);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (p == NULL) fail("malloc(%zu) returned NULL", n);
    check_alignment(p, n);
    return p;
}

/* Writes the pattern of a block of n >= 8 bytes. */
static inline void mark(void *p, size_t n, uint64_t tag) {
    put64(p, 0, tag);
    for (size_t off = PAGE; off + 16 <= n; off += PAGE) put64(p, off, tag ^ off);
    if (n >= 16) put64(p, n - 8, ~tag);
}

/* Checks the pattern of the first `n` bytes of a block marked with `tag` (end mark only when
 * `with_end`, i.e. when n is the size it was marked with). */
static inline void check(const void *p, size_t n, uint64_t tag, int with_end) {
    if (get64(p, 0) != tag)
        fail("block %p (%zu bytes): first word %016llx, expected %016llx", p, n, (unsigned long long)get64(p, 0),
             (unsigned long long)tag);
    for (size_t off = PAGE; off + 16 <= n; off += PAGE)
        if (get64(p, off) != (tag ^ off)) fail("block %p (%zu bytes): word at offset %zu overwritten", p, n, off);
    if (with_end && n >= 16 && get64(p, n - 8) != ~tag) fail("block %p (%zu bytes): last word overwritten", p, n);
}

/* Marks a block whose size is stored in its second word (for blocks handed around by pointer,
 * n >= 24, so that the size word and the end mark do not overlap). */
static inline void self_described_mark(void *p, size_t n, uint64_t tag) {
    mark(p, n, tag);
    put64(p, 8, n);
}

/* Checks a self-described block and frees it. */
static void self_described_free(void *p, size_t min, size_t max, uint64_t expect_tag, int tag_known) {
    size_t n = (size_t)get64(p, 8);
    if (n < min || n > max) fail("block %p: size word %zu outside [%zu, %zu] (overwritten)", p, n, min, max);
    uint64_t tag = tag_known ? expect_tag : get64(p, 0);
    /* The size word sits where the pattern has no mark, so check() sees the tag words only. */
    check(p, n, tag, 1);
    free(p);
}

typedef struct {
    void *p;
    size_t n;
    uint64_t tag;
} item_t;

static void item_free(item_t *it) {
    if (it->p == NULL) return;
    check(it->p, it->n, it->tag, 1);
    free(it->p);
    it->p = NULL;
}

static void item_new(item_t *it, size_t n, rng_t *r) {
    it->p = xmalloc(n);
    it->n = n;
    it->tag = rng_next(r) | 1;
    mark(it->p, n, it->tag);
}

static pthread_t spawn(void *(*fn)(void *), void *arg) {
    pthread_t t;
    int e = pthread_create(&t, NULL, fn, arg);
    if (e != 0) fail("pthread_create: error %d", e);
    return t;
}

static void join(pthread_t t) {
    int e = pthread_join(t, NULL);
    if (e != 0) fail("pthread_join: error %d", e);
}

static _Atomic uint64_t g_ops;

/* ---- larson: threads replace random slots of one shared array --------------------------- */
/* Blocks of 24..1000 bytes live in a shared array of 5000 slots per thread. Each step
 * allocates a block, swaps it into a random slot and frees the block it displaced, which was
 * usually allocated by another thread. The threads retire after each of 8 generations and new
 * ones take over the array, so blocks also outlive the thread that allocated them. */

#define LARSON_SLOTS_PER_THREAD 5000
#define LARSON_GENERATIONS 8
#define LARSON_MIN 24
#define LARSON_MAX 1000

static _Atomic(void *) *larson_slots;
static size_t larson_nslots;
static uint64_t larson_steps;

static inline uint64_t larson_tag(const void *p, size_t slot) { return mix((uintptr_t)p, slot) | 1; }

static void larson_release(void *old, size_t slot) {
    self_described_free(old, LARSON_MIN, LARSON_MAX, larson_tag(old, slot), 1);
}

static void *larson_worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    rng_t r = rng_for(1, id);
    for (uint64_t i = 0; i < larson_steps; i++) {
        size_t slot = rng_below(&r, larson_nslots);
        size_t n = LARSON_MIN + rng_below(&r, LARSON_MAX - LARSON_MIN + 1);
        void *p = xmalloc(n);
        self_described_mark(p, n, larson_tag(p, slot));
        void *old = atomic_exchange_explicit(&larson_slots[slot], p, memory_order_acq_rel);
        if (old == p) fail("malloc returned block %p that is still live (slot %zu)", p, slot);
        if (old != NULL) larson_release(old, slot);
    }
    atomic_fetch_add(&g_ops, larson_steps);
    return NULL;
}

static uint64_t run_larson(int threads, uint64_t size) {
    larson_nslots = (size_t)threads * LARSON_SLOTS_PER_THREAD;
    larson_slots = calloc(larson_nslots, sizeof *larson_slots);
    if (larson_slots == NULL) fail("calloc of the slot array returned NULL");
    rng_t r = rng_for(1, 0xffff);
    for (size_t s = 0; s < larson_nslots; s++) {
        size_t n = LARSON_MIN + rng_below(&r, LARSON_MAX - LARSON_MIN + 1);
        void *p = xmalloc(n);
        self_described_mark(p, n, larson_tag(p, s));
        atomic_store(&larson_slots[s], p);
    }
    larson_steps = size / ((uint64_t)threads * LARSON_GENERATIONS) + 1;
    pthread_t t[threads];
    uint64_t start = now_ns();
    for (int g = 0; g < LARSON_GENERATIONS; g++) {
        for (int i = 0; i < threads; i++) t[i] = spawn(larson_worker, (void *)(uintptr_t)(g * threads + i));
        for (int i = 0; i < threads; i++) join(t[i]);
    }
    uint64_t elapsed = now_ns() - start;
    for (size_t s = 0; s < larson_nslots; s++) larson_release(atomic_load(&larson_slots[s]), s);
    free(larson_slots);
    return elapsed;
}

/* ---- xmalloc-test: producers allocate, consumers free ----------------------------------- */
/* THREADS producer threads allocate batches of 256 blocks of 16..128 bytes and queue them;
 * THREADS consumer threads take batches, check and free every block and the batch itself. */

#define XM_BATCH 256
#define XM_QUEUE 64

typedef struct {
    item_t items[XM_BATCH];
} xm_batch_t;

static pthread_mutex_t xm_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t xm_not_empty = PTHREAD_COND_INITIALIZER;
static pthread_cond_t xm_not_full = PTHREAD_COND_INITIALIZER;
static xm_batch_t *xm_queue[XM_QUEUE];
static size_t xm_head, xm_count;
static uint64_t xm_batches_per_producer;

static void xm_push(xm_batch_t *b) {
    pthread_mutex_lock(&xm_lock);
    while (xm_count == XM_QUEUE) pthread_cond_wait(&xm_not_full, &xm_lock);
    xm_queue[(xm_head + xm_count) % XM_QUEUE] = b;
    xm_count++;
    pthread_cond_signal(&xm_not_empty);
    pthread_mutex_unlock(&xm_lock);
}

static xm_batch_t *xm_pop(void) {
    pthread_mutex_lock(&xm_lock);
    while (xm_count == 0) pthread_cond_wait(&xm_not_empty, &xm_lock);
    xm_batch_t *b = xm_queue[xm_head];
    xm_head = (xm_head + 1) % XM_QUEUE;
    xm_count--;
    pthread_cond_signal(&xm_not_full);
    pthread_mutex_unlock(&xm_lock);
    return b;
}

static void *xm_producer(void *arg) {
    rng_t r = rng_for(2, (uintptr_t)arg);
    for (uint64_t b = 0; b < xm_batches_per_producer; b++) {
        xm_batch_t *batch = xmalloc(sizeof *batch);
        for (int i = 0; i < XM_BATCH; i++) item_new(&batch->items[i], 16 + rng_below(&r, 113), &r);
        xm_push(batch);
    }
    atomic_fetch_add(&g_ops, xm_batches_per_producer * (XM_BATCH + 1));
    return NULL;
}

static void *xm_consumer(void *arg) {
    (void)arg;
    for (;;) {
        xm_batch_t *batch = xm_pop();
        if (batch == NULL) return NULL;
        for (int i = 0; i < XM_BATCH; i++) item_free(&batch->items[i]);
        free(batch);
    }
}

static uint64_t run_xmalloc(int threads, uint64_t size) {
    xm_batches_per_producer = size / ((uint64_t)threads * (XM_BATCH + 1)) + 1;
    pthread_t prod[threads], cons[threads];
    uint64_t start = now_ns();
    for (int i = 0; i < threads; i++) cons[i] = spawn(xm_consumer, NULL);
    for (int i = 0; i < threads; i++) prod[i] = spawn(xm_producer, (void *)(uintptr_t)i);
    for (int i = 0; i < threads; i++) join(prod[i]);
    for (int i = 0; i < threads; i++) xm_push(NULL);
    for (int i = 0; i < threads; i++) join(cons[i]);
    return now_ns() - start;
}

/* ---- cache-scratch: passive false sharing ---------------------------------------------- */
/* The main thread allocates one 8-byte object per thread, back to back (so they share cache
 * lines), and hands one to each thread, which frees it; then each thread repeatedly allocates
 * an 8-byte object, writes it 500 times and frees it. An allocator that gives a thread the
 * block another thread's object shares a line with makes the writes contend. */

#define CS_WRITES 500

static void **cs_objects;
static uint64_t cs_iters;

static void *cs_worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    void *first = cs_objects[id];
    check(first, 8, mix(id, 3), 0);
    free(first);
    for (uint64_t i = 0; i < cs_iters; i++) {
        volatile uint64_t *p = xmalloc(8);
        for (uint64_t w = 0; w < CS_WRITES; w++) *p = w ^ i;
        if (*p != ((CS_WRITES - 1) ^ i)) fail("object %p lost a write", (void *)p);
        free((void *)p);
    }
    atomic_fetch_add(&g_ops, cs_iters + 1);
    return NULL;
}

static uint64_t run_cache_scratch(int threads, uint64_t size) {
    cs_objects = xmalloc(sizeof(void *) * (size_t)threads);
    for (int i = 0; i < threads; i++) {
        cs_objects[i] = xmalloc(8);
        mark(cs_objects[i], 8, mix((uint64_t)i, 3));
    }
    cs_iters = size / (uint64_t)threads + 1;
    pthread_t t[threads];
    uint64_t start = now_ns();
    for (int i = 0; i < threads; i++) t[i] = spawn(cs_worker, (void *)(uintptr_t)i);
    for (int i = 0; i < threads; i++) join(t[i]);
    uint64_t elapsed = now_ns() - start;
    free(cs_objects);
    return elapsed;
}

/* ---- mstress: mixed sizes, many live objects, threads retire and restart ----------------- */
/* Each thread slot keeps 2000 live objects of mixed sizes (85% 24..256 B, 13% up to 4 KiB,
 * 1.8% up to 64 KiB, 0.2% up to 512 KiB) that survive the thread: 10 rounds each start fresh
 * threads that take over the previous round's objects. A step replaces a random object: by
 * free + malloc (5% calloc, checked zero; 1% posix_memalign, checked aligned), by realloc
 * (4%, prefix checked), or by swapping it into a shared transfer array (2%) so that another
 * thread frees it. */

#define MS_LIVE 2000
#define MS_ROUNDS 10
#define MS_TRANSFER_PER_THREAD 500
#define MS_MAX (512u * 1024u)

static item_t (*ms_live)[MS_LIVE];
static _Atomic(void *) *ms_transfer;
static size_t ms_ntransfer;
static uint64_t ms_steps;

static size_t ms_size(rng_t *r) {
    uint64_t k = rng_below(r, 1000);
    if (k < 850) return 24 + rng_below(r, 233);
    if (k < 980) return 256 + rng_below(r, 4096 - 256 + 1);
    if (k < 998) return 4096 + rng_below(r, 65536 - 4096 + 1);
    return 65536 + rng_below(r, MS_MAX - 65536 + 1);
}

static void ms_new(item_t *it, rng_t *r) {
    size_t n = ms_size(r);
    uint64_t k = rng_below(r, 100);
    if (k < 5) {
        it->p = calloc(1, n);
        if (it->p == NULL) fail("calloc(1, %zu) returned NULL", n);
        check_alignment(it->p, n);
        for (size_t off = 0; off + 8 <= n; off += PAGE)
            if (get64(it->p, off) != 0) fail("calloc block %p (%zu bytes) not zero at %zu", it->p, n, off);
        if (get64(it->p, n - 8) != 0) fail("calloc block %p (%zu bytes) not zero at its end", it->p, n);
    } else if (k < 6) {
        size_t align = (size_t)1 << (4 + rng_below(r, 9));
        int e = posix_memalign(&it->p, align, n);
        if (e != 0) fail("posix_memalign(%zu, %zu) failed: %d", align, n, e);
        if ((uintptr_t)it->p % align != 0) fail("posix_memalign(%zu) returned %p", align, it->p);
    } else {
        it->p = xmalloc(n);
    }
    it->n = n;
    it->tag = rng_next(r) | 1;
    self_described_mark(it->p, n, it->tag);
}

static void ms_free(item_t *it) {
    if (it->p == NULL) return;
    if (get64(it->p, 8) != it->n) fail("block %p: size word overwritten", it->p);
    item_free(it);
}

static void *ms_worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    size_t slot = id % (size_t)g_threads;
    item_t *live = ms_live[slot];
    rng_t r = rng_for(4, id);
    for (uint64_t s = 0; s < ms_steps; s++) {
        item_t *it = &live[rng_below(&r, MS_LIVE)];
        uint64_t k = rng_below(&r, 100);
        if (it->p != NULL && k < 4) {
            size_t n = ms_size(&r);
            size_t keep = n < it->n ? n : it->n;
            void *q = realloc(it->p, n);
            if (q == NULL) fail("realloc(%p, %zu) returned NULL", it->p, n);
            check_alignment(q, n);
            check(q, keep, it->tag, keep == it->n);
            if (get64(q, 8) != it->n) fail("realloc to %p lost the size word", q);
            it->p = q;
            it->n = n;
            it->tag = rng_next(&r) | 1;
            self_described_mark(q, n, it->tag);
        } else if (it->p != NULL && k < 6) {
            void *got = atomic_exchange_explicit(&ms_transfer[rng_below(&r, ms_ntransfer)], it->p,
                                                 memory_order_acq_rel);
            it->p = NULL;
            if (got != NULL) {
                it->p = got;
                it->n = (size_t)get64(got, 8);
                it->tag = get64(got, 0);
                if (it->n < 24 || it->n > MS_MAX) fail("transferred block %p: size word %zu overwritten", got, it->n);
                check(got, it->n, it->tag, 1);
            }
        } else {
            ms_free(it);
            ms_new(it, &r);
        }
    }
    atomic_fetch_add(&g_ops, ms_steps);
    return NULL;
}

static uint64_t run_mstress(int threads, uint64_t size) {
    ms_live = calloc((size_t)threads, sizeof *ms_live);
    ms_ntransfer = (size_t)threads * MS_TRANSFER_PER_THREAD;
    ms_transfer = calloc(ms_ntransfer, sizeof *ms_transfer);
    if (ms_live == NULL || ms_transfer == NULL) fail("calloc of the tables returned NULL");
    ms_steps = size / ((uint64_t)threads * MS_ROUNDS) + 1;
    pthread_t t[threads];
    uint64_t start = now_ns();
    for (int round = 0; round < MS_ROUNDS; round++) {
        for (int i = 0; i < threads; i++) t[i] = spawn(ms_worker, (void *)(uintptr_t)(round * threads + i));
        for (int i = 0; i < threads; i++) join(t[i]);
    }
    uint64_t elapsed = now_ns() - start;
    for (int i = 0; i < threads; i++)
        for (int j = 0; j < MS_LIVE; j++) ms_free(&ms_live[i][j]);
    for (size_t i = 0; i < ms_ntransfer; i++) {
        void *p = atomic_load(&ms_transfer[i]);
        if (p != NULL) self_described_free(p, 24, MS_MAX, 0, 0);
    }
    free(ms_live);
    free(ms_transfer);
    return elapsed;
}

/* ---- glibc-simple: one thread, batches of one size allocated then freed ----------------- */

static uint64_t run_glibc_simple(int threads, uint64_t size) {
    (void)threads;
    static const size_t sizes[] = {16, 32, 48, 64, 128, 256, 512, 1024, 2048};
    static const size_t batches[] = {25, 100, 400};
    item_t items[400];
    rng_t r = rng_for(5, 0);
    uint64_t done = 0;
    uint64_t start = now_ns();
    for (uint64_t round = 0; done < size; round++) {
        size_t n = sizes[round % (sizeof sizes / sizeof sizes[0])];
        size_t b = batches[(round / 9) % 3];
        for (size_t i = 0; i < b; i++) item_new(&items[i], n, &r);
        for (size_t i = 0; i < b; i++) item_free(&items[i]);
        done += b;
    }
    uint64_t elapsed = now_ns() - start;
    atomic_fetch_add(&g_ops, done);
    return elapsed;
}

/* ---- glibc-thread: each thread replaces random slots of its own 1024 blocks -------------- */
/* Sizes 8..2 KiB, skewed towards small ones; no block crosses threads. */

#define GT_SLOTS 1024

static uint64_t gt_steps;

static void *gt_worker(void *arg) {
    rng_t r = rng_for(6, (uintptr_t)arg);
    item_t *items = calloc(GT_SLOTS, sizeof *items);
    if (items == NULL) fail("calloc of the slots returned NULL");
    for (uint64_t s = 0; s < gt_steps; s++) {
        item_t *it = &items[rng_below(&r, GT_SLOTS)];
        item_free(it);
        size_t n = 8 + (rng_next(&r) & (((size_t)1 << (4 + rng_below(&r, 8))) - 1));
        item_new(it, n, &r);
    }
    for (int i = 0; i < GT_SLOTS; i++) item_free(&items[i]);
    free(items);
    atomic_fetch_add(&g_ops, gt_steps);
    return NULL;
}

static uint64_t run_glibc_thread(int threads, uint64_t size) {
    gt_steps = size / (uint64_t)threads + 1;
    pthread_t t[threads];
    uint64_t start = now_ns();
    for (int i = 0; i < threads; i++) t[i] = spawn(gt_worker, (void *)(uintptr_t)i);
    for (int i = 0; i < threads; i++) join(t[i]);
    return now_ns() - start;
}

/* ---- thread-churn: SIZE short-lived threads, at most THREADS alive at once -------------- */
/* Each thread allocates 31 blocks (16..1024 bytes, one in eight up to 8 KiB), frees them in a
 * shuffled order, and swaps one more block into a shared array of 64 slots, freeing the block
 * an earlier (by then usually finished) thread left there. */

#define CH_BLOCKS 31
#define CH_HANDOFF 64

static _Atomic(void *) ch_handoff[CH_HANDOFF];

static void *ch_worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    rng_t r = rng_for(7, id);
    item_t items[CH_BLOCKS];
    for (int i = 0; i < CH_BLOCKS; i++) {
        size_t n = rng_below(&r, 8) == 0 ? 16 + rng_below(&r, 8192 - 16 + 1) : 16 + rng_below(&r, 1009);
        item_new(&items[i], n, &r);
    }
    for (int i = CH_BLOCKS - 1; i > 0; i--) {
        int j = (int)rng_below(&r, (uint64_t)i + 1);
        item_t tmp = items[i];
        items[i] = items[j];
        items[j] = tmp;
    }
    for (int i = 0; i < CH_BLOCKS; i++) item_free(&items[i]);
    size_t n = 24 + rng_below(&r, 1001);
    void *p = xmalloc(n);
    self_described_mark(p, n, mix((uintptr_t)p, 7));
    void *old = atomic_exchange_explicit(&ch_handoff[id % CH_HANDOFF], p, memory_order_acq_rel);
    if (old == p) fail("malloc returned block %p that is still live", p);
    if (old != NULL) self_described_free(old, 24, 1024, mix((uintptr_t)old, 7), 1);
    return NULL;
}

static uint64_t run_thread_churn(int threads, uint64_t size) {
    pthread_t t[threads];
    uint64_t start = now_ns();
    for (uint64_t i = 0; i < size; i++) {
        size_t k = (size_t)(i % (uint64_t)threads);
        if (i >= (uint64_t)threads) join(t[k]);
        t[k] = spawn(ch_worker, (void *)(uintptr_t)i);
    }
    for (uint64_t i = 0; i < (size < (uint64_t)threads ? size : (uint64_t)threads); i++) join(t[i]);
    uint64_t elapsed = now_ns() - start;
    for (int i = 0; i < CH_HANDOFF; i++) {
        void *p = atomic_load(&ch_handoff[i]);
        if (p != NULL) self_described_free(p, 24, 1024, mix((uintptr_t)p, 7), 1);
    }
    atomic_fetch_add(&g_ops, size * (CH_BLOCKS + 1));
    return elapsed;
}

/* ---- main ------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    uint64_t (*run)(int threads, uint64_t size);
} workloads[] = {
    {"larson", run_larson},
    {"xmalloc-test", run_xmalloc},
    {"cache-scratch", run_cache_scratch},
    {"mstress", run_mstress},
    {"glibc-simple", run_glibc_simple},
    {"glibc-thread", run_glibc_thread},
    {"thread-churn", run_thread_churn},
};

static unsigned long long parse_number(const char *s, const char *what) {
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '\0' || *end != '\0') {
        fprintf(stderr, "alloc-workload: %s must be a number, got '%s'\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: alloc-workload WORKLOAD THREADS SIZE SEED\nworkloads:");
        for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++) fprintf(stderr, " %s", workloads[i].name);
        fprintf(stderr, "\n");
        return 2;
    }
    g_workload = argv[1];
    unsigned long long threads = parse_number(argv[2], "THREADS");
    unsigned long long size = parse_number(argv[3], "SIZE");
    g_seed = parse_number(argv[4], "SEED");
    if (threads < 1 || threads > 1024) {
        fprintf(stderr, "alloc-workload: THREADS must be in 1..1024, got %llu\n", threads);
        return 2;
    }
    g_threads = (int)threads;
    for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++) {
        if (strcmp(workloads[i].name, argv[1]) != 0) continue;
        uint64_t elapsed = workloads[i].run(g_threads, size);
        Dl_info info;
        void *m = dlsym(RTLD_DEFAULT, "malloc");
        const char *from = (m != NULL && dladdr(m, &info) != 0 && info.dli_fname != NULL) ? info.dli_fname : "?";
        printf("ops=%llu elapsed_ns=%llu malloc_from=%s\n", (unsigned long long)atomic_load(&g_ops),
               (unsigned long long)elapsed, from);
        return 0;
    }
    fprintf(stderr, "alloc-workload: unknown workload '%s'\n", argv[1]);
    return 2;
}
