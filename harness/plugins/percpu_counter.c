/*
 * percpu_counter.c - an example harness plugin written outside the project's Rust build.
 *
 * It is an independent rseq user, as someone else's library would be: its own per-CPU
 * counter, its own x86_64 or aarch64 critical section with its own rseq_cs descriptor, on the rseq
 * area in libc's thread control block (found through __rseq_offset / __rseq_size at run
 * time). When libc registered that area (__rseq_size > 0) every thread has it. When libc
 * only reserved it (__rseq_size == 0, e.g. GLIBC_TUNABLES=glibc.pthread.rseq=0), the plugin
 * registers that same area for each thread on the thread's first use; if another library
 * did so first, the kernel answers EBUSY and the area is just as usable. Where registering
 * fails (no rseq in the kernel, a seccomp filter), where there is no area at all, and on
 * other architectures it uses its fallback path: atomic adds on a separate array that the
 * critical section never writes.
 *
 * Invariant (rhp_check, while quiescent): the per-CPU words plus the fallback words add up to
 * exactly the amounts that rhp_work added.
 *
 * Build: cc -shared -fPIC -O2 -Wall -Wextra -Werror -I../include percpu_counter.c \
 *            -o libpercpu_counter.so
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
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

/* One 64-byte line per index, so that CPUs do not share lines. */
#define SLOT_SHIFT 6
struct slot {
    uint64_t v;
    char pad[(1 << SLOT_SHIFT) - sizeof(uint64_t)];
};

/* Offsets in the kernel's struct rseq. */
#define RSEQ_CPU_ID_OFFSET 4
#define RSEQ_CS_OFFSET 8
#define RSEQ_MM_CID_OFFSET 24
/* getauxval key of the kernel's rseq feature size (Linux 6.3+). */
#define PLUGIN_AT_RSEQ_FEATURE_SIZE 27
/* Restarts after which one add takes the fallback path. */
#define MAX_RESTARTS 256
/* Registration of libc's reserved area: its length (the original struct rseq) and the
 * signature before every abort handler (per architecture; see rseq_add). */
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

/* Written only by the critical section. */
static struct slot *rseq_slots;
/* Written only by atomic adds: never the same words as rseq_slots. */
static struct slot *fallback_slots;
static uint64_t nr_slots;
static size_t slots_bytes;

static ptrdiff_t rseq_offset;
static int have_area;      /* libc registered the area (__rseq_size > 0) */
static int reserved_area;  /* libc only reserved it (__rseq_offset without __rseq_size) */

/* Per thread: registering libc's reserved area. */
enum { REG_UNTRIED, REG_OURS, REG_PEER, REG_FAILED };
static __thread int thread_reg;
static __thread int thread_reg_errno;
static uint64_t index_off; /* RSEQ_CPU_ID_OFFSET or RSEQ_MM_CID_OFFSET */
static int forced_fallback;

static atomic_uint_fast64_t expected_total;
static atomic_uint_fast64_t ops_count;
static atomic_uint_fast64_t abort_count;
static atomic_uint_fast64_t fallback_count;
static atomic_uint_fast64_t check_count;

/* Largest possible CPU id + 1, from /sys/devices/system/cpu/possible ("0-3", "0", "0-3,8-11"). */
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

#if defined(HAVE_RSEQ_ASM)
/* Registers libc's reserved area for the calling thread, once, and remembers the outcome. */
static int register_reserved_area(char *area)
{
    if (thread_reg == REG_UNTRIED) {
        if (syscall(SYS_rseq, area, RSEQ_REGISTER_LEN, 0, RSEQ_SIG) == 0) {
            thread_reg = REG_OURS;
        } else if (errno == EBUSY) {
            thread_reg = REG_PEER; /* another library registered it first */
        } else {
            thread_reg_errno = errno;
            thread_reg = REG_FAILED;
        }
    }
    return thread_reg;
}
#endif

/* The calling thread's area, or NULL when the fallback path must run. */
static char *thread_area(void)
{
#if defined(HAVE_RSEQ_ASM)
    if (forced_fallback)
        return NULL;
    if (have_area)
        return thread_pointer() + rseq_offset;
    if (reserved_area) {
        char *area = thread_pointer() + rseq_offset;
        return register_reserved_area(area) == REG_FAILED ? NULL : area;
    }
    return NULL;
#else
    return NULL;
#endif
}

#if defined(__x86_64__)
/*
 * One critical section: rseq_slots[index].v += amount, index read from the area at
 * `index_off` (cpu_id or mm_cid). Returns 0 committed, 1 no valid index (nothing written),
 * 2 aborted by the kernel (nothing written). rseq_cs is cleared on every exit.
 */
static int rseq_add(char *area, uint64_t amount)
{
    int status;
    uint64_t idx;
    __asm__ __volatile__(
        ".pushsection __rseq_cs, \"aw\"\n\t"
        ".balign 32\n\t"
        "66:\n\t"
        ".long 0, 0\n\t"
        ".quad 61f, (62f - 61f), 64f\n\t"
        ".popsection\n\t"
        "leaq 66b(%%rip), %[idx]\n\t"
        "movq %[idx], 8(%[area])\n\t"
        "61:\n\t"
        "movl (%[area], %[ioff]), %k[idx]\n\t"
        "cmpq %[nr], %[idx]\n\t"
        "jae 63f\n\t"
        "shlq $6, %[idx]\n\t"
        "addq %[amount], (%[slots], %[idx])\n\t"
        "62:\n\t"
        "xorl %[status], %[status]\n\t"
        "jmp 65f\n\t"
        "63:\n\t"
        "movl $1, %[status]\n\t"
        "jmp 65f\n\t"
        /* The signature: the 4 bytes before the abort handler (ud1 encoding). */
        ".byte 0x0f, 0xb9, 0x3d\n\t"
        ".long 0x53053053\n\t"
        "64:\n\t"
        "movl $2, %[status]\n\t"
        "65:\n\t"
        "movq $0, 8(%[area])\n\t"
        : [status] "=&r"(status), [idx] "=&r"(idx)
        : [area] "r"(area), [ioff] "r"(index_off), [nr] "r"(nr_slots), [slots] "r"(rseq_slots),
          [amount] "r"(amount)
        : "memory", "cc");
    return status;
}
#elif defined(__aarch64__)
/* The same section for aarch64. */
static int rseq_add(char *area, uint64_t amount)
{
    int status;
    uint64_t idx, v;
    __asm__ __volatile__(
        ".pushsection __rseq_cs, \"aw\"\n\t"
        ".balign 32\n\t"
        "66:\n\t"
        ".long 0, 0\n\t"
        ".quad 61f, (62f - 61f), 64f\n\t"
        ".popsection\n\t"
        "adrp %[idx], 66b\n\t"
        "add %[idx], %[idx], :lo12:66b\n\t"
        "str %[idx], [%[area], #8]\n\t"
        "61:\n\t"
        "ldr %w[idx], [%[area], %[ioff]]\n\t"
        "cmp %[idx], %[nr]\n\t"
        "b.hs 63f\n\t"
        "add %[idx], %[slots], %[idx], lsl #6\n\t"
        "ldr %[v], [%[idx]]\n\t"
        "add %[v], %[v], %[amount]\n\t"
        "str %[v], [%[idx]]\n\t"
        "62:\n\t"
        "mov %w[status], #0\n\t"
        "b 65f\n\t"
        "63:\n\t"
        "mov %w[status], #1\n\t"
        "b 65f\n\t"
        /* The signature: the 4 bytes before the abort handler. */
        ".inst 0xd428bc00\n\t"
        "64:\n\t"
        "mov %w[status], #2\n\t"
        "65:\n\t"
        "str xzr, [%[area], #8]\n\t"
        : [status] "=&r"(status), [idx] "=&r"(idx), [v] "=&r"(v)
        : [area] "r"(area), [ioff] "r"(index_off), [nr] "r"(nr_slots), [slots] "r"(rseq_slots),
          [amount] "r"(amount)
        : "memory", "cc");
    return status;
}
#endif

static void fallback_add(uint64_t amount)
{
    int cpu = sched_getcpu();
    uint64_t i = cpu >= 0 ? (uint64_t)cpu % nr_slots : 0;
    __atomic_fetch_add(&fallback_slots[i].v, amount, __ATOMIC_RELAXED);
}

static uint64_t next_random(uint64_t *x)
{
    /* xorshift64 */
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

API uint32_t rhp_plugin_abi_version(void)
{
    return RHP_ABI_VERSION;
}

API const char *rhp_plugin_name(void)
{
    return "percpu_counter";
}

API int rhp_setup(const char *config)
{
    nr_slots = possible_cpus();
    slots_bytes = (size_t)nr_slots << SLOT_SHIFT;
    void *a = mmap(NULL, slots_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED)
        return -1;
    void *b = mmap(NULL, slots_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) {
        munmap(a, slots_bytes);
        return -1;
    }
    rseq_slots = a;
    fallback_slots = b;

    const ptrdiff_t *off = dlsym(RTLD_DEFAULT, "__rseq_offset");
    const unsigned int *size = dlsym(RTLD_DEFAULT, "__rseq_size");
    have_area = off && size && *size > 0;
    reserved_area = off && !have_area;
    rseq_offset = off ? *off : 0;

    index_off = RSEQ_CPU_ID_OFFSET;
    if (config_has(config, "index=mm_cid") && getauxval(PLUGIN_AT_RSEQ_FEATURE_SIZE) >= 28)
        index_off = RSEQ_MM_CID_OFFSET;
    forced_fallback = config_has(config, "force_fallback=1");
    return 0;
}

API int rhp_work(uint64_t seed)
{
    uint64_t x = seed | 1;
    unsigned n = 16 + (unsigned)(seed % 48);
    uint64_t total = 0, aborted = 0, fallback = 0;
    char *area = thread_area();
    for (unsigned i = 0; i < n; i++) {
        uint64_t amount = 1 + next_random(&x) % 1000;
        int done = 0;
#if defined(HAVE_RSEQ_ASM)
        if (area) {
            for (int tries = 0; tries < MAX_RESTARTS; tries++) {
                int s = rseq_add(area, amount);
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
    for (uint64_t i = 0; i < nr_slots; i++) {
        sum_rseq += __atomic_load_n(&rseq_slots[i].v, __ATOMIC_RELAXED);
        sum_fallback += __atomic_load_n(&fallback_slots[i].v, __ATOMIC_RELAXED);
    }
    uint64_t want = atomic_load(&expected_total);
    atomic_fetch_add(&check_count, 1);
    if (sum_rseq + sum_fallback != want) {
        if (msg && len)
            snprintf(msg, len,
                     "per-CPU sum %llu (critical sections %llu + fallback %llu) != %llu added "
                     "(off by %lld)",
                     (unsigned long long)(sum_rseq + sum_fallback), (unsigned long long)sum_rseq,
                     (unsigned long long)sum_fallback, (unsigned long long)want,
                     (long long)(sum_rseq + sum_fallback - want));
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
#if defined(HAVE_RSEQ_ASM)
    out->flags = RHP_FLAG_REGISTERS_RESERVED_AREA;
#endif
    /* Reporting registers nothing: a thread that has not worked yet says what it finds. */
    char *area = (have_area || reserved_area) ? thread_pointer() + rseq_offset : NULL;
    int32_t cpu = -1;
    if (area)
        cpu = (int32_t)__atomic_load_n((uint32_t *)(area + RSEQ_CPU_ID_OFFSET), __ATOMIC_RELAXED);
    if (forced_fallback) {
        out->thread_mode = RHP_MODE_DISABLED;
    } else if (have_area) {
        out->thread_mode = cpu >= 0 ? RHP_MODE_LIBC_OWNED : RHP_MODE_UNAVAILABLE;
    } else if (reserved_area && thread_reg == REG_OURS) {
        out->thread_mode = RHP_MODE_REGISTERED_BY_US;
    } else if (reserved_area && (thread_reg == REG_PEER || (thread_reg == REG_UNTRIED && cpu >= 0))) {
        out->thread_mode = RHP_MODE_REGISTERED_BY_PEER;
    } else if (reserved_area && thread_reg == REG_UNTRIED) {
        out->thread_mode = RHP_MODE_UNKNOWN; /* decided at the thread's first rhp_work */
    } else {
        out->thread_mode = RHP_MODE_UNAVAILABLE;
        out->unavailable_errno = thread_reg == REG_FAILED ? thread_reg_errno : 0;
    }
}

/* Optional entry (ABI minor 1): the pages of its two arrays that are resident, and their size. */
API int rhp_memory(uint64_t *resident_bytes, uint64_t *reserved_bytes)
{
    if (!rseq_slots || !fallback_slots)
        return -1;
    long page = sysconf(_SC_PAGESIZE);
    size_t pages = (slots_bytes + (size_t)page - 1) / (size_t)page;
    uint64_t resident = 0;
    struct slot *arrays[2] = {rseq_slots, fallback_slots};
    for (int k = 0; k < 2; k++) {
        for (size_t off = 0; off < pages;) {
            unsigned char vec[256];
            size_t n = pages - off < sizeof vec ? pages - off : sizeof vec;
            if (mincore((char *)arrays[k] + off * (size_t)page, n * (size_t)page, vec) != 0)
                return -1;
            for (size_t i = 0; i < n; i++)
                resident += (vec[i] & 1) ? (uint64_t)page : 0;
            off += n;
        }
    }
    if (resident_bytes)
        *resident_bytes = resident;
    if (reserved_bytes)
        *reserved_bytes = 2 * (uint64_t)pages * (uint64_t)page; /* mappings are whole pages */
    return 0;
}

API void rhp_teardown(void)
{
    if (rseq_slots)
        munmap(rseq_slots, slots_bytes);
    if (fallback_slots)
        munmap(fallback_slots, slots_bytes);
    rseq_slots = NULL;
    fallback_slots = NULL;
}
