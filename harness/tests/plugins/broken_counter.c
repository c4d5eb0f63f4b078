/*
 * broken_counter.c - a deliberately broken harness plugin, for the tests of the failure
 * path (violation report, replay file, `harness replay`). Every 500th unit of work forgets
 * to count one of its adds, so rhp_check fails as soon as 500 units have run.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "rseq_harness_plugin.h"

static atomic_uint_fast64_t counted;
static atomic_uint_fast64_t expected;
static atomic_uint_fast64_t units;
static atomic_uint_fast64_t checks;

uint32_t rhp_plugin_abi_version(void)
{
    return RHP_ABI_VERSION;
}

const char *rhp_plugin_name(void)
{
    return "broken_counter";
}

int rhp_setup(const char *config)
{
    (void)config;
    return 0;
}

int rhp_work(uint64_t seed)
{
    uint64_t amount = 1 + seed % 100;
    uint64_t n = atomic_fetch_add(&units, 1) + 1;
    if (n % 500 != 0)
        atomic_fetch_add(&counted, amount);
    atomic_fetch_add(&expected, amount);
    return 0;
}

int rhp_check(char *msg, size_t len)
{
    atomic_fetch_add(&checks, 1);
    uint64_t c = atomic_load(&counted), e = atomic_load(&expected);
    if (c != e) {
        snprintf(msg, len, "counted %llu but %llu were added", (unsigned long long)c, (unsigned long long)e);
        return 1;
    }
    return 0;
}

void rhp_report(struct rhp_counts *out)
{
    memset(out, 0, sizeof *out);
    /* It has no critical section: it claims libc's mode only to keep the other invariants
     * quiet, so that the test sees the broken check alone. */
    const unsigned int *size = dlsym(RTLD_DEFAULT, "__rseq_size");
    int libc_owned = size && *size > 0;
    out->ops = atomic_load(&units);
    out->fallback_ops = libc_owned ? 0 : out->ops;
    out->checks = atomic_load(&checks);
    out->thread_mode = libc_owned ? RHP_MODE_LIBC_OWNED : RHP_MODE_UNAVAILABLE;
}

void rhp_teardown(void)
{
}
