/*
 * foreign_rseq.c - a harness plugin that does NOT follow the project's coexistence contract,
 * on purpose: it behaves like the rseq users that predate glibc's registration (older
 * tcmalloc, older librseq). In every thread where it gets there first, it registers an rseq
 * area of its *own* with the kernel. Every contract-following library in such a thread then
 * finds the kernel answering EINVAL when it registers glibc's reserved area ("another area is
 * registered") and must run its fallback path, exactly.
 *
 * What it does:
 *
 * - Registration. In each thread, on rhp_thread_start (the optional hook the harness calls
 *   first thing in every thread it creates), in rhp_setup (the loading thread) and on the
 *   first rhp_work of any other thread, it registers an area from its own table:
 *   rseq(own_area, 32, 0, RSEQ_SIG).
 *     0       the area is ours: its critical sections use it (RHP_MODE_REGISTERED_BY_US).
 *     EINVAL  another area is registered (glibc's, by glibc or a contract library; with
 *     EBUSY   glibc registering rseq that is every thread): if that area is glibc's and the
 *             kernel fills it for this thread (cpu_id >= 0), the plugin uses glibc's area,
 *             as a tcmalloc built for glibc 2.35 does (RHP_MODE_LIBC_OWNED where glibc
 *             registered, RHP_MODE_REGISTERED_BY_PEER where a library did); else fallback.
 *     ENOSYS  and anything else: fallback path (RHP_MODE_UNAVAILABLE with the errno).
 *   The registration takes effect only in threads nobody registered before, which in
 *   practice means GLIBC_TUNABLES=glibc.pthread.rseq=0 (the harness's --mode reserved).
 *
 * - Where its areas live. Not in its own TLS: glibc frees a dlopened library's TLS block at
 *   dlclose, malloc reuses it and the kernel keeps writing cpu_id into it (measured: SIGSEGV
 *   later). Its areas are slots of one anonymous mapping that is never unmapped; a slot is
 *   used by one thread at a time. At thread exit a pthread key destructor unregisters the
 *   area (RSEQ_FLAG_UNREGISTER) and only then puts the slot back on a free list, so the
 *   table holds one slot per thread alive, not per thread ever created.
 *
 * - Its counter. Own per-CPU counter (one 64-byte line per possible CPU) with its own x86_64 (or aarch64)
 *   critical section and rseq_cs descriptor. Like those older users it sets rseq_cs lazily:
 *   it stores its descriptor before each section and never clears it afterwards (the kernel
 *   clears it when it finds the thread outside the section). That is harmless to the kernel
 *   and to other libraries (each stores its own descriptor before its own sections) as long
 *   as the descriptor stays mapped — so this plugin must never be unloaded: it says so with
 *   RHP_FLAG_NEVER_UNLOAD (the harness leaves it out of the reload disturbance and never
 *   dlcloses it) and is linked with -z nodelete as well. Fallback path: atomic adds on a
 *   separate array the critical section never writes.
 *
 * Invariant (rhp_check, while quiescent): the per-CPU words plus the fallback words add up to
 * exactly the amounts rhp_work added.
 *
 * Build: cc -shared -fPIC -O2 -Wall -Wextra -Werror -Wl,-z,nodelete -I../include \
 *            foreign_rseq.c -o libforeign_rseq.so -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rseq_harness_plugin.h"

#define API __attribute__((visibility("default")))

#define SLOT_SHIFT 6
struct line {
    uint64_t v;
    char pad[(1 << SLOT_SHIFT) - sizeof(uint64_t)];
};

/* The kernel's struct rseq (the original 32 bytes), 32-byte aligned. */
struct area {
    uint32_t cpu_id_start;
    uint32_t cpu_id;
    uint64_t rseq_cs;
    uint32_t flags;
    uint32_t node_id;
    uint32_t mm_cid;
    uint32_t pad;
} __attribute__((aligned(32)));

#define RSEQ_CPU_ID_OFFSET 4
#define RSEQ_MM_CID_OFFSET 24
#define PLUGIN_AT_RSEQ_FEATURE_SIZE 27
#define MAX_RESTARTS 256
#define RSEQ_REGISTER_LEN 32
#if defined(__x86_64__)
#define RSEQ_SIG 0x53053053
#elif defined(__aarch64__)
/* The encoding of `brk #0x45e0`, placed before each abort handler. */
#define RSEQ_SIG 0xd428bc00
#endif
/* Architectures with a critical section here; elsewhere every operation takes the fallback path. */
#if defined(__x86_64__) || defined(__aarch64__)
#define HAVE_RSEQ_ASM 1
#endif
#define RSEQ_FLAG_UNREGISTER 1

/* Areas: a table of AREA_SLOTS slots, reserved once, populated as threads use it, never
 * unmapped (threads may still be registered on it at any time). More threads alive at once
 * than slots: those threads run the fallback path. */
#define AREA_SLOTS (1u << 16)
static struct area *areas;
/* Free list of slot numbers (Treiber stack; head = generation << 32 | (slot + 1)). */
static uint32_t *area_next;
static _Atomic uint64_t area_free_head;
/* Slots ever handed out (the table's high-water mark). */
static _Atomic uint32_t area_high;

static struct line *rseq_lines;     /* written only by the critical section */
static struct line *fallback_lines; /* written only by atomic adds */
static uint64_t nr_lines;
static size_t lines_bytes;
static uint64_t index_off;

static ptrdiff_t glibc_offset;
static int glibc_offset_present;
static int glibc_registers; /* __rseq_size > 0 */
static pthread_key_t exit_key;
static int initialised;

enum { T_UNTRIED, T_OWN, T_GLIBC_AREA, T_FAILED };
static __thread int thread_state;
static __thread int thread_errno;
static __thread struct area *thread_area_ptr;
static __thread uint32_t thread_slot;

static atomic_uint_fast64_t expected_total;
static atomic_uint_fast64_t ops_count;
static atomic_uint_fast64_t abort_count;
static atomic_uint_fast64_t fallback_count;
static atomic_uint_fast64_t check_count;
static atomic_uint_fast64_t own_registrations;
static atomic_uint_fast64_t glibc_area_uses;
static atomic_uint_fast64_t failed_registrations;
static atomic_uint_fast64_t unregistrations;
static atomic_uint_fast64_t table_full;

static uint64_t possible_cpus(void)
{
    uint64_t max = 0;
    int found = 0;
    FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
    if (f) {
        char buf[4096];
        if (fgets(buf, sizeof buf, f)) {
            for (char *p = buf; *p;) {
                if (*p >= '0' && *p <= '9') {
                    char *end;
                    unsigned long long n = strtoull(p, &end, 10);
                    if (n > max)
                        max = n;
                    found = 1;
                    p = end;
                } else {
                    p++;
                }
            }
        }
        fclose(f);
    }
    if (!found) {
        long n = sysconf(_SC_NPROCESSORS_CONF);
        return n > 0 ? (uint64_t)n : 1;
    }
    return max + 1;
}

static char *thread_pointer(void)
{
#if defined(__x86_64__)
    char *tp;
    __asm__("movq %%fs:0, %0" : "=r"(tp));
    return tp;
#elif defined(__aarch64__)
    char *tp;
    __asm__("mrs %0, tpidr_el0" : "=r"(tp));
    return tp;
#else
    return NULL;
#endif
}

static int take_slot(uint32_t *slot)
{
    uint64_t head = atomic_load(&area_free_head);
    while ((uint32_t)head != 0) {
        uint32_t s = (uint32_t)head - 1;
        uint64_t next = ((head >> 32) + 1) << 32 | area_next[s];
        if (atomic_compare_exchange_weak(&area_free_head, &head, next)) {
            *slot = s;
            return 1;
        }
    }
    uint32_t s = atomic_fetch_add(&area_high, 1);
    if (s >= AREA_SLOTS) {
        atomic_fetch_sub(&area_high, 1);
        return 0;
    }
    *slot = s;
    return 1;
}

static void put_slot(uint32_t s)
{
    uint64_t head = atomic_load(&area_free_head);
    for (;;) {
        area_next[s] = (uint32_t)head;
        uint64_t next = ((head >> 32) + 1) << 32 | (uint64_t)(s + 1);
        if (atomic_compare_exchange_weak(&area_free_head, &head, next))
            return;
    }
}

/* Thread exit (pthread key destructor): the kernel stops using the area before the slot is
 * handed to another thread. */
static void on_thread_exit(void *p)
{
    (void)p;
    if (thread_state != T_OWN)
        return;
    struct area *a = &areas[thread_slot];
    if (syscall(SYS_rseq, a, RSEQ_REGISTER_LEN, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) == 0) {
        atomic_fetch_add_explicit(&unregistrations, 1, memory_order_relaxed);
        thread_state = T_FAILED;
        thread_errno = 0;
        memset(a, 0, sizeof *a);
        put_slot(thread_slot);
    }
    /* Unregistering failed: the slot stays taken for good (never reused while the kernel
     * may write it). */
}

/* Registers an area of our own for the calling thread, once. */
static void register_thread(void)
{
    if (thread_state != T_UNTRIED || !initialised)
        return;
#if defined(HAVE_RSEQ_ASM)
    uint32_t s;
    if (!take_slot(&s)) {
        atomic_fetch_add_explicit(&table_full, 1, memory_order_relaxed);
        thread_state = T_FAILED;
        thread_errno = ENOSPC;
        return;
    }
    struct area *a = &areas[s];
    memset(a, 0, sizeof *a);
    a->cpu_id = (uint32_t)-1;
    if (syscall(SYS_rseq, a, RSEQ_REGISTER_LEN, 0, RSEQ_SIG) == 0) {
        thread_slot = s;
        thread_area_ptr = a;
        thread_state = T_OWN;
        atomic_fetch_add_explicit(&own_registrations, 1, memory_order_relaxed);
        /* The key's value only has to be non-NULL for the destructor to run. */
        pthread_setspecific(exit_key, a);
        return;
    }
    int e = errno;
    put_slot(s);
    if ((e == EINVAL || e == EBUSY) && glibc_offset_present) {
        /* Another area is registered. glibc's? Then the kernel fills it for us. */
        struct area *g = (struct area *)(thread_pointer() + glibc_offset);
        int32_t cpu = (int32_t)__atomic_load_n(&g->cpu_id, __ATOMIC_RELAXED);
        if (cpu >= 0) {
            thread_area_ptr = g;
            thread_state = T_GLIBC_AREA;
            thread_errno = e;
            atomic_fetch_add_explicit(&glibc_area_uses, 1, memory_order_relaxed);
            return;
        }
    }
    thread_errno = e;
    thread_state = T_FAILED;
    atomic_fetch_add_explicit(&failed_registrations, 1, memory_order_relaxed);
#else
    thread_state = T_FAILED;
    thread_errno = ENOSYS;
#endif
}

#if defined(__x86_64__)
/*
 * One critical section: rseq_lines[index].v += amount. Returns 0 committed, 1 no valid
 * index (nothing written), 2 aborted (nothing written). rseq_cs is set before the section
 * and deliberately left set afterwards (lazy, as older rseq users do).
 */
static int rseq_add_lazy(struct area *area, uint64_t amount)
{
    int status;
    uint64_t idx;
    __asm__ __volatile__(
        ".pushsection __rseq_cs, \"aw\"\n\t"
        ".balign 32\n\t"
        "76:\n\t"
        ".long 0, 0\n\t"
        ".quad 71f, (72f - 71f), 74f\n\t"
        ".popsection\n\t"
        "leaq 76b(%%rip), %[idx]\n\t"
        "movq %[idx], 8(%[area])\n\t"
        "71:\n\t"
        "movl (%[area], %[ioff]), %k[idx]\n\t"
        "cmpq %[nr], %[idx]\n\t"
        "jae 73f\n\t"
        "shlq $6, %[idx]\n\t"
        "addq %[amount], (%[lines], %[idx])\n\t"
        "72:\n\t"
        "xorl %[status], %[status]\n\t"
        "jmp 75f\n\t"
        "73:\n\t"
        "movl $1, %[status]\n\t"
        "jmp 75f\n\t"
        ".byte 0x0f, 0xb9, 0x3d\n\t"
        ".long 0x53053053\n\t"
        "74:\n\t"
        "movl $2, %[status]\n\t"
        "75:\n\t"
        : [status] "=&r"(status), [idx] "=&r"(idx)
        : [area] "r"(area), [ioff] "r"(index_off), [nr] "r"(nr_lines), [lines] "r"(rseq_lines),
          [amount] "r"(amount)
        : "memory", "cc");
    return status;
}
#elif defined(__aarch64__)
/* The same section for aarch64. */
static int rseq_add_lazy(struct area *area, uint64_t amount)
{
    int status;
    uint64_t idx, v;
    __asm__ __volatile__(
        ".pushsection __rseq_cs, \"aw\"\n\t"
        ".balign 32\n\t"
        "76:\n\t"
        ".long 0, 0\n\t"
        ".quad 71f, (72f - 71f), 74f\n\t"
        ".popsection\n\t"
        "adrp %[idx], 76b\n\t"
        "add %[idx], %[idx], :lo12:76b\n\t"
        "str %[idx], [%[area], #8]\n\t"
        "71:\n\t"
        "ldr %w[idx], [%[area], %[ioff]]\n\t"
        "cmp %[idx], %[nr]\n\t"
        "b.hs 73f\n\t"
        "add %[idx], %[lines], %[idx], lsl #6\n\t"
        "ldr %[v], [%[idx]]\n\t"
        "add %[v], %[v], %[amount]\n\t"
        "str %[v], [%[idx]]\n\t"
        "72:\n\t"
        "mov %w[status], #0\n\t"
        "b 75f\n\t"
        "73:\n\t"
        "mov %w[status], #1\n\t"
        "b 75f\n\t"
        /* The signature: the 4 bytes before the abort handler. */
        ".inst 0xd428bc00\n\t"
        "74:\n\t"
        "mov %w[status], #2\n\t"
        "75:\n\t"
        : [status] "=&r"(status), [idx] "=&r"(idx), [v] "=&r"(v)
        : [area] "r"(area), [ioff] "r"(index_off), [nr] "r"(nr_lines), [lines] "r"(rseq_lines),
          [amount] "r"(amount)
        : "memory", "cc");
    return status;
}
#endif

static void fallback_add(uint64_t amount)
{
    int cpu = sched_getcpu();
    uint64_t i = cpu >= 0 ? (uint64_t)cpu % nr_lines : 0;
    __atomic_fetch_add(&fallback_lines[i].v, amount, __ATOMIC_RELAXED);
}

static uint64_t next_random(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static int config_has(const char *config, const char *pair)
{
    size_t n = strlen(pair);
    for (const char *p = config; p && *p;) {
        if (strncmp(p, pair, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return 1;
        p = strchr(p, ',');
        if (p)
            p++;
    }
    return 0;
}

static size_t resident(const void *p, size_t len)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t pages = (len + (size_t)page - 1) / (size_t)page;
    unsigned char vec[256];
    size_t n = 0;
    for (size_t off = 0; off < pages; off += sizeof vec) {
        size_t k = pages - off < sizeof vec ? pages - off : sizeof vec;
        if (mincore((char *)p + off * (size_t)page, k * (size_t)page, vec) != 0)
            return 0;
        for (size_t i = 0; i < k; i++)
            n += vec[i] & 1;
    }
    return n * (size_t)page;
}

API uint32_t rhp_plugin_abi_version(void)
{
    return RHP_ABI_VERSION;
}

API const char *rhp_plugin_name(void)
{
    return "foreign_rseq";
}

API int rhp_setup(const char *config)
{
    if (!initialised) {
        nr_lines = possible_cpus();
        lines_bytes = (size_t)nr_lines << SLOT_SHIFT;
        void *a = mmap(NULL, lines_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        void *b = mmap(NULL, lines_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        void *t = mmap(NULL, (size_t)AREA_SLOTS * sizeof(struct area), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        void *n = mmap(NULL, (size_t)AREA_SLOTS * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (a == MAP_FAILED || b == MAP_FAILED || t == MAP_FAILED || n == MAP_FAILED)
            return -1;
        if (pthread_key_create(&exit_key, on_thread_exit) != 0)
            return -1;
        rseq_lines = a;
        fallback_lines = b;
        areas = t;
        area_next = n;
        const ptrdiff_t *off = dlsym(RTLD_DEFAULT, "__rseq_offset");
        const unsigned int *size = dlsym(RTLD_DEFAULT, "__rseq_size");
        glibc_offset_present = off != NULL;
        glibc_offset = off ? *off : 0;
        glibc_registers = size && *size > 0;
        initialised = 1;
    }
    index_off = RSEQ_CPU_ID_OFFSET;
    if (config_has(config, "index=mm_cid") && getauxval(PLUGIN_AT_RSEQ_FEATURE_SIZE) >= 28)
        index_off = RSEQ_MM_CID_OFFSET;
    register_thread();
    return 0;
}

API void rhp_thread_start(void)
{
    register_thread();
}

API int rhp_work(uint64_t seed)
{
    register_thread();
    uint64_t x = seed | 1;
    unsigned n = 16 + (unsigned)(seed % 48);
    uint64_t total = 0, aborted = 0, fallback = 0;
    struct area *area = thread_state == T_OWN || thread_state == T_GLIBC_AREA ? thread_area_ptr : NULL;
    for (unsigned i = 0; i < n; i++) {
        uint64_t amount = 1 + next_random(&x) % 1000;
        int done = 0;
#if defined(HAVE_RSEQ_ASM)
        if (area) {
            for (int tries = 0; tries < MAX_RESTARTS; tries++) {
                int s = rseq_add_lazy(area, amount);
                if (s == 0) {
                    done = 1;
                    break;
                }
                if (s == 1)
                    break;
                aborted++;
            }
        }
#else
        (void)area;
#endif
        if (!done) {
            fallback_add(amount);
            fallback++;
        }
        total += amount;
    }
    atomic_fetch_add_explicit(&expected_total, total, memory_order_relaxed);
    atomic_fetch_add_explicit(&ops_count, n, memory_order_relaxed);
    if (aborted)
        atomic_fetch_add_explicit(&abort_count, aborted, memory_order_relaxed);
    if (fallback)
        atomic_fetch_add_explicit(&fallback_count, fallback, memory_order_relaxed);
    return 0;
}

API int rhp_check(char *msg, size_t len)
{
    uint64_t sum_rseq = 0, sum_fallback = 0;
    for (uint64_t i = 0; i < nr_lines; i++) {
        sum_rseq += __atomic_load_n(&rseq_lines[i].v, __ATOMIC_RELAXED);
        sum_fallback += __atomic_load_n(&fallback_lines[i].v, __ATOMIC_RELAXED);
    }
    uint64_t want = atomic_load(&expected_total);
    atomic_fetch_add(&check_count, 1);
    if (sum_rseq + sum_fallback != want) {
        if (msg && len)
            snprintf(msg, len,
                     "per-CPU sum %llu (critical sections %llu + fallback %llu) != %llu added "
                     "(off by %lld); own areas registered %llu, glibc's used %llu, failed %llu",
                     (unsigned long long)(sum_rseq + sum_fallback), (unsigned long long)sum_rseq,
                     (unsigned long long)sum_fallback, (unsigned long long)want,
                     (long long)(sum_rseq + sum_fallback - want),
                     (unsigned long long)atomic_load(&own_registrations),
                     (unsigned long long)atomic_load(&glibc_area_uses),
                     (unsigned long long)atomic_load(&failed_registrations));
        return 1;
    }
    return 0;
}

API void rhp_report(struct rhp_counts *out)
{
    memset(out, 0, sizeof *out);
    out->ops = atomic_load_explicit(&ops_count, memory_order_relaxed);
    out->aborts = atomic_load_explicit(&abort_count, memory_order_relaxed);
    out->fallback_ops = atomic_load_explicit(&fallback_count, memory_order_relaxed);
    out->checks = atomic_load_explicit(&check_count, memory_order_relaxed);
    out->flags = RHP_FLAG_FOREIGN_AREA | RHP_FLAG_NEVER_UNLOAD;
    switch (thread_state) {
    case T_OWN:
        out->thread_mode = RHP_MODE_REGISTERED_BY_US;
        break;
    case T_GLIBC_AREA:
        out->thread_mode = glibc_registers ? RHP_MODE_LIBC_OWNED : RHP_MODE_REGISTERED_BY_PEER;
        break;
    case T_FAILED:
        out->thread_mode = RHP_MODE_UNAVAILABLE;
        out->unavailable_errno = thread_errno;
        break;
    default:
        out->thread_mode = RHP_MODE_UNKNOWN;
        break;
    }
}

API int rhp_memory(uint64_t *resident_bytes, uint64_t *reserved_bytes)
{
    if (!initialised)
        return -1;
    size_t table = (size_t)AREA_SLOTS * sizeof(struct area);
    size_t next = (size_t)AREA_SLOTS * sizeof(uint32_t);
    if (resident_bytes)
        *resident_bytes = resident(rseq_lines, lines_bytes) + resident(fallback_lines, lines_bytes) +
                          resident(areas, table) + resident(area_next, next);
    if (reserved_bytes)
        *reserved_bytes = 2 * lines_bytes + table + next;
    return 0;
}

API void rhp_teardown(void)
{
    /* Nothing is freed: threads may still be registered on the areas, and rseq_cs of any
     * thread may still point at the descriptor (the harness never unloads this plugin). */
}
