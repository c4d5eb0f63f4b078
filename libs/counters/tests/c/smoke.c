/*
 * Uses libpcounters through its installed header only, the way a C program would, and
 * checks every result exactly. Exits 0 when everything matched, 1 (after printing what
 * did not) otherwise.
 *
 * Build: cc -std=c99 -pedantic -Wall -Wextra -Werror -pthread smoke.c $(pkg-config --cflags --libs pcounters)
 */
#define _POSIX_C_SOURCE 200809L

#include <pcounters.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "smoke.c:%d: check failed: %s\n", __LINE__, #cond);      \
            failures++;                                                              \
        }                                                                            \
    } while (0)

#define CHECK_RC(expr, want)                                                         \
    do {                                                                             \
        int rc_ = (expr);                                                            \
        if (rc_ != (want)) {                                                         \
            fprintf(stderr, "smoke.c:%d: %s returned %d (%s), expected %d (%s)\n",   \
                    __LINE__, #expr, rc_, pcounters_strerror(rc_), (want),           \
                    pcounters_strerror(want));                                       \
            failures++;                                                              \
        }                                                                            \
    } while (0)

static int64_t value_of(pcounters_counter c) {
    int64_t v = -12345;
    CHECK_RC(pcounters_get(c, &v), PCOUNTERS_OK);
    return v;
}

/* ---- threads ------------------------------------------------------------------------ */

#define THREADS 4
#define ADDS_PER_THREAD 200000

static pcounters_counter by_cpu, by_cid;

static void *adder(void *arg) {
    long id = (long)arg;
    int64_t mine = 0;
    for (long i = 0; i < ADDS_PER_THREAD; i++) {
        int64_t amount = (i % 3 == 2) ? -2 : 3 + id;
        if (pcounters_add(by_cpu, amount) != PCOUNTERS_OK || pcounters_add(by_cid, 1) != PCOUNTERS_OK) {
            return (void *)1;
        }
        mine += amount;
    }
    return (void *)(intptr_t)(mine == 0 ? 2 : 0);
}

static int64_t expected_by_cpu(void) {
    int64_t total = 0;
    for (long id = 0; id < THREADS; id++) {
        for (long i = 0; i < ADDS_PER_THREAD; i++) {
            total += (i % 3 == 2) ? -2 : 3 + id;
        }
    }
    return total;
}

/* ---- signal handler ----------------------------------------------------------------- */

static pcounters_counter in_handler;
static volatile sig_atomic_t handled;
static volatile sig_atomic_t handler_errors;

static void on_signal(int sig) {
    (void)sig;
    if (pcounters_add(in_handler, 7) != PCOUNTERS_OK) {
        handler_errors++;
    }
    handled++;
}

/* ---- foreach ------------------------------------------------------------------------ */

struct visit_state {
    int calls;
    int64_t sum;
    char last[PCOUNTERS_NAME_MAX + 1];
    int sorted;
};

static int visit_all(const char *name, int64_t value, pcounters_counter c, void *arg) {
    struct visit_state *s = arg;
    int64_t again = 0;
    s->calls++;
    s->sum += value;
    if (s->calls > 1 && strcmp(s->last, name) >= 0) {
        s->sorted = 0;
    }
    snprintf(s->last, sizeof s->last, "%s", name);
    /* The callback may call back into the library. */
    if (pcounters_get(c, &again) != PCOUNTERS_OK || again != value) {
        s->sorted = 0;
    }
    return 0;
}

static int visit_stop(const char *name, int64_t value, pcounters_counter c, void *arg) {
    (void)name;
    (void)value;
    (void)c;
    ++*(int *)arg;
    return 42;
}

int main(void) {
    pcounters_counter c, other;
    char buf[256];

    /* Version: the header and the library agree. */
    CHECK(strcmp(pcounters_version(), PCOUNTERS_VERSION) == 0);
    CHECK(pcounters_count() == 0);

    /* ---- create: argument checking --------------------------------------------------- */
    CHECK_RC(pcounters_create(NULL, PCOUNTERS_INDEX_CPU_ID, &c), PCOUNTERS_EINVAL);
    CHECK_RC(pcounters_create("ok_name", PCOUNTERS_INDEX_CPU_ID, NULL), PCOUNTERS_EINVAL);
    CHECK_RC(pcounters_create("", PCOUNTERS_INDEX_CPU_ID, &c), PCOUNTERS_EINVAL);
    CHECK_RC(pcounters_create("1starts_with_digit", PCOUNTERS_INDEX_CPU_ID, &c), PCOUNTERS_EINVAL);
    CHECK_RC(pcounters_create("has-dash", PCOUNTERS_INDEX_CPU_ID, &c), PCOUNTERS_EINVAL);
    CHECK_RC(pcounters_create("has space", PCOUNTERS_INDEX_CPU_ID, &c), PCOUNTERS_EINVAL);
    CHECK_RC(pcounters_create("ok_name", 7, &c), PCOUNTERS_EINVAL);
    CHECK_RC(pcounters_create("ok_name", -1, &c), PCOUNTERS_EINVAL);
    {
        char longest[PCOUNTERS_NAME_MAX + 2];
        memset(longest, 'x', sizeof longest - 1);
        longest[sizeof longest - 1] = '\0'; /* 128 bytes: one too many */
        CHECK_RC(pcounters_create(longest, PCOUNTERS_INDEX_CPU_ID, &c), PCOUNTERS_ENAMETOOLONG);
        longest[PCOUNTERS_NAME_MAX] = '\0'; /* 127 bytes: the longest allowed */
        CHECK_RC(pcounters_create(longest, PCOUNTERS_INDEX_CPU_ID, &c), PCOUNTERS_OK);
        CHECK_RC(pcounters_name(c, buf, sizeof buf), PCOUNTERS_OK);
        CHECK(strcmp(buf, longest) == 0);
        CHECK_RC(pcounters_delete(c), PCOUNTERS_OK);
    }
    CHECK(pcounters_count() == 0);

    /* ---- create, index modes, duplicates, lookup ------------------------------------- */
    CHECK_RC(pcounters_create("smoke_by_cpu", PCOUNTERS_INDEX_CPU_ID, &by_cpu), PCOUNTERS_OK);
    CHECK_RC(pcounters_create("smoke_by_cid", PCOUNTERS_INDEX_MM_CID, &by_cid), PCOUNTERS_OK);
    CHECK(by_cpu.id != 0 && by_cid.id != 0 && by_cpu.id != by_cid.id);
    CHECK_RC(pcounters_create("smoke_by_cpu", PCOUNTERS_INDEX_MM_CID, &c), PCOUNTERS_EEXIST);
    {
        int index = -1;
        CHECK_RC(pcounters_index(by_cpu, &index), PCOUNTERS_OK);
        CHECK(index == PCOUNTERS_INDEX_CPU_ID);
        CHECK_RC(pcounters_index(by_cid, &index), PCOUNTERS_OK);
        CHECK(index == PCOUNTERS_INDEX_CPU_ID || index == PCOUNTERS_INDEX_MM_CID);
        printf("mm_cid counter uses index %s\n", index == PCOUNTERS_INDEX_MM_CID ? "mm_cid" : "cpu_id");
        CHECK_RC(pcounters_index(by_cid, NULL), PCOUNTERS_EINVAL);
    }
    CHECK_RC(pcounters_lookup("smoke_by_cid", &c), PCOUNTERS_OK);
    CHECK(c.id == by_cid.id);
    CHECK_RC(pcounters_lookup("smoke_missing", &c), PCOUNTERS_ENOENT);
    CHECK_RC(pcounters_lookup(NULL, &c), PCOUNTERS_EINVAL);
    CHECK_RC(pcounters_lookup("smoke_by_cid", NULL), PCOUNTERS_EINVAL);
    CHECK(value_of(by_cpu) == 0 && value_of(by_cid) == 0);

    /* ---- invalid handles ------------------------------------------------------------- */
    CHECK_RC(pcounters_add(PCOUNTERS_COUNTER_NONE, 1), PCOUNTERS_EINVAL);
    CHECK_RC(pcounters_get(PCOUNTERS_COUNTER_NONE, NULL), PCOUNTERS_EINVAL);
    {
        int64_t v;
        pcounters_counter forged = {UINT64_MAX};
        CHECK_RC(pcounters_get(PCOUNTERS_COUNTER_NONE, &v), PCOUNTERS_EINVAL);
        CHECK_RC(pcounters_add(forged, 1), PCOUNTERS_EINVAL);
        CHECK_RC(pcounters_delete(forged), PCOUNTERS_EINVAL);
        forged.id = by_cpu.id + ((uint64_t)1 << 40); /* a generation not issued yet */
        CHECK_RC(pcounters_add(forged, 1), PCOUNTERS_EINVAL);
        forged.id = 0x0123456789abcdefULL;
        CHECK(pcounters_add(forged, 1) == PCOUNTERS_EINVAL || pcounters_add(forged, 1) == PCOUNTERS_ENOENT);
        CHECK_RC(pcounters_get(by_cpu, NULL), PCOUNTERS_EINVAL);
        CHECK(value_of(by_cpu) == 0);
    }

    /* ---- threads: exact sums --------------------------------------------------------- */
    {
        pthread_t t[THREADS];
        for (long i = 0; i < THREADS; i++) {
            CHECK(pthread_create(&t[i], NULL, adder, (void *)i) == 0);
        }
        for (long i = 0; i < THREADS; i++) {
            void *ret = NULL;
            CHECK(pthread_join(t[i], &ret) == 0);
            CHECK(ret == NULL);
        }
        CHECK(value_of(by_cpu) == expected_by_cpu());
        CHECK(value_of(by_cid) == (int64_t)THREADS * ADDS_PER_THREAD);
        CHECK_RC(pcounters_add(by_cid, INT64_MIN), PCOUNTERS_OK);
        CHECK(value_of(by_cid) == INT64_MIN + (int64_t)THREADS * ADDS_PER_THREAD);
        CHECK_RC(pcounters_add(by_cid, INT64_MIN), PCOUNTERS_OK); /* wraps back */
        CHECK(value_of(by_cid) == (int64_t)THREADS * ADDS_PER_THREAD);
    }

    /* ---- adds inside a signal handler ------------------------------------------------ */
    {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        CHECK_RC(pcounters_create("smoke_in_handler", PCOUNTERS_INDEX_CPU_ID, &in_handler), PCOUNTERS_OK);
        CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
        for (int i = 0; i < 1000; i++) {
            raise(SIGUSR1);
            CHECK_RC(pcounters_add(in_handler, 1), PCOUNTERS_OK);
        }
        CHECK(handled == 1000 && handler_errors == 0);
        CHECK(value_of(in_handler) == 1000 * 8);
    }

    /* ---- snapshot -------------------------------------------------------------------- */
    {
        size_t count = 0;
        pcounters_value values[8], one[1];
        CHECK(pcounters_count() == 3);
        CHECK_RC(pcounters_snapshot(NULL, 0, &count), PCOUNTERS_ERANGE);
        CHECK(count == 3);
        CHECK_RC(pcounters_snapshot(NULL, 0, NULL), PCOUNTERS_EINVAL);
        CHECK_RC(pcounters_snapshot(NULL, 2, &count), PCOUNTERS_EINVAL);
        CHECK_RC(pcounters_snapshot(one, 1, &count), PCOUNTERS_ERANGE);
        CHECK(count == 3 && strcmp(one[0].name, "smoke_by_cid") == 0);
        CHECK_RC(pcounters_snapshot(values, 8, &count), PCOUNTERS_OK);
        CHECK(count == 3);
        CHECK(strcmp(values[0].name, "smoke_by_cid") == 0 && values[0].counter.id == by_cid.id);
        CHECK(strcmp(values[1].name, "smoke_by_cpu") == 0 && values[1].counter.id == by_cpu.id);
        CHECK(strcmp(values[2].name, "smoke_in_handler") == 0 && values[2].counter.id == in_handler.id);
        CHECK(values[0].value == (int64_t)THREADS * ADDS_PER_THREAD);
        CHECK(values[1].value == expected_by_cpu());
        CHECK(values[2].value == 8000);
    }

    /* ---- foreach --------------------------------------------------------------------- */
    {
        struct visit_state s;
        int stops = 0;
        memset(&s, 0, sizeof s);
        s.sorted = 1;
        CHECK_RC(pcounters_foreach(visit_all, &s), PCOUNTERS_OK);
        CHECK(s.calls == 3 && s.sorted);
        CHECK(s.sum == (int64_t)THREADS * ADDS_PER_THREAD + expected_by_cpu() + 8000);
        CHECK_RC(pcounters_foreach(visit_stop, &stops), 42);
        CHECK(stops == 1);
        CHECK_RC(pcounters_foreach(NULL, NULL), PCOUNTERS_EINVAL);
    }

    /* ---- Prometheus text ------------------------------------------------------------- */
    {
        char expect[512], small[10];
        size_t len = 0, need;
        CHECK_RC(pcounters_add(by_cpu, -expected_by_cpu() - 5), PCOUNTERS_OK); /* now -5 */
        snprintf(expect, sizeof expect,
                 /* both received negative adds: gauges, not counters */
                 "# TYPE smoke_by_cid gauge\nsmoke_by_cid %lld\n"
                 "# TYPE smoke_by_cpu gauge\nsmoke_by_cpu -5\n"
                 "# TYPE smoke_in_handler counter\nsmoke_in_handler 8000\n",
                 (long long)THREADS * ADDS_PER_THREAD);
        need = strlen(expect);
        CHECK_RC(pcounters_prometheus(NULL, 0, &len), PCOUNTERS_ERANGE);
        CHECK(len == need);
        CHECK_RC(pcounters_prometheus(NULL, 5, &len), PCOUNTERS_EINVAL);
        CHECK_RC(pcounters_prometheus(buf, sizeof buf, NULL), PCOUNTERS_EINVAL);
        CHECK_RC(pcounters_prometheus(small, sizeof small, &len), PCOUNTERS_ERANGE);
        CHECK(len == need && strlen(small) == sizeof small - 1 && strncmp(small, expect, sizeof small - 1) == 0);
        {
            char *exact = malloc(need + 1);
            CHECK(exact != NULL);
            if (exact) {
                CHECK_RC(pcounters_prometheus(exact, need, &len), PCOUNTERS_ERANGE); /* no room for NUL */
                CHECK_RC(pcounters_prometheus(exact, need + 1, &len), PCOUNTERS_OK);
                CHECK(strcmp(exact, expect) == 0);
                if (strcmp(exact, expect) != 0) {
                    fprintf(stderr, "got:\n%s\nexpected:\n%s\n", exact, expect);
                }
                free(exact);
            }
        }
    }

    /* ---- names ----------------------------------------------------------------------- */
    {
        char tiny[5];
        CHECK_RC(pcounters_name(by_cpu, buf, sizeof buf), PCOUNTERS_OK);
        CHECK(strcmp(buf, "smoke_by_cpu") == 0);
        CHECK_RC(pcounters_name(by_cpu, tiny, sizeof tiny), PCOUNTERS_ERANGE);
        CHECK(strcmp(tiny, "smok") == 0);
        CHECK_RC(pcounters_name(by_cpu, NULL, 10), PCOUNTERS_EINVAL);
        CHECK_RC(pcounters_name(by_cpu, buf, 0), PCOUNTERS_EINVAL);
    }

    /* ---- fork: the child starts from the parent's values ----------------------------- */
    {
        int64_t at_fork = value_of(by_cid);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            int64_t v = 0;
            pcounters_counter fresh;
            int bad = 0;
            bad |= pcounters_get(by_cid, &v) != PCOUNTERS_OK || v != at_fork;
            bad |= pcounters_add(by_cid, 100) != PCOUNTERS_OK;
            bad |= pcounters_get(by_cid, &v) != PCOUNTERS_OK || v != at_fork + 100;
            bad |= pcounters_create("smoke_in_child", PCOUNTERS_INDEX_CPU_ID, &fresh) != PCOUNTERS_OK;
            bad |= pcounters_add(fresh, 3) != PCOUNTERS_OK;
            bad |= pcounters_get(fresh, &v) != PCOUNTERS_OK || v != 3;
            _exit(bad ? 3 : 0);
        }
        if (pid > 0) {
            int status = 0;
            CHECK(waitpid(pid, &status, 0) == pid);
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
            CHECK(value_of(by_cid) == at_fork);
            CHECK_RC(pcounters_lookup("smoke_in_child", &c), PCOUNTERS_ENOENT);
        }
    }

    /* ---- diagnostics ----------------------------------------------------------------- */
    {
        int err = -1;
        int mode = pcounters_rseq_mode(&err);
        pcounters_rseq_statistics before, after;
        printf("rseq mode %d (errno %d)\n", mode, err);
        CHECK(mode >= PCOUNTERS_MODE_LIBC_OWNED && mode <= PCOUNTERS_MODE_UNAVAILABLE);
        CHECK(mode == PCOUNTERS_MODE_UNAVAILABLE || err == 0);
        CHECK(pcounters_rseq_mode(NULL) == mode);
        CHECK_RC(pcounters_rseq_stats(NULL), PCOUNTERS_EINVAL);
        CHECK_RC(pcounters_rseq_stats(&before), PCOUNTERS_OK);
        CHECK_RC(pcounters_force_fallback(1), PCOUNTERS_OK);
        CHECK(pcounters_rseq_mode(NULL) == PCOUNTERS_MODE_DISABLED);
        for (int i = 0; i < 100; i++) {
            CHECK_RC(pcounters_add(by_cpu, 1), PCOUNTERS_OK);
        }
        CHECK_RC(pcounters_force_fallback(0), PCOUNTERS_OK);
        CHECK(pcounters_rseq_mode(NULL) == mode);
        CHECK_RC(pcounters_rseq_stats(&after), PCOUNTERS_OK);
        CHECK(after.fallback_ops >= before.fallback_ops + 100);
        CHECK(value_of(by_cpu) == 95);
    }

    /* ---- delete ---------------------------------------------------------------------- */
    {
        int64_t v;
        CHECK_RC(pcounters_delete(by_cpu), PCOUNTERS_OK);
        CHECK_RC(pcounters_delete(by_cpu), PCOUNTERS_ENOENT);
        CHECK_RC(pcounters_add(by_cpu, 1), PCOUNTERS_ENOENT);
        CHECK_RC(pcounters_get(by_cpu, &v), PCOUNTERS_ENOENT);
        CHECK_RC(pcounters_name(by_cpu, buf, sizeof buf), PCOUNTERS_ENOENT);
        CHECK_RC(pcounters_lookup("smoke_by_cpu", &c), PCOUNTERS_ENOENT);
        CHECK_RC(pcounters_create("smoke_by_cpu", PCOUNTERS_INDEX_CPU_ID, &other), PCOUNTERS_OK);
        CHECK(other.id != by_cpu.id);
        CHECK(value_of(other) == 0);
        CHECK_RC(pcounters_add(by_cpu, 1), PCOUNTERS_ENOENT);
        CHECK(value_of(other) == 0);
        CHECK(pcounters_count() == 3);
    }

    /* ---- error descriptions ---------------------------------------------------------- */
    {
        int codes[] = {PCOUNTERS_OK, PCOUNTERS_EINVAL, PCOUNTERS_ENOENT, PCOUNTERS_EEXIST,
                       PCOUNTERS_ENAMETOOLONG, PCOUNTERS_ENOMEM, PCOUNTERS_ENOSPC, PCOUNTERS_ERANGE,
                       PCOUNTERS_EINTERNAL, 12345};
        for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
            const char *s = pcounters_strerror(codes[i]);
            CHECK(s != NULL && s[0] != '\0');
            for (size_t j = 0; j < i; j++) {
                CHECK(strcmp(s, pcounters_strerror(codes[j])) != 0);
            }
        }
    }

    if (failures) {
        fprintf(stderr, "smoke.c: %d check(s) failed\n", failures);
        return 1;
    }
    printf("smoke.c: all checks passed\n");
    return 0;
}
