/* One liburcu flavour (memb or qsbr), called through the shared library's exported
 * functions or inlined from its headers (_LGPL_SOURCE): the including file defines
 * FLAVOR (memb, qsbr) and NAME (the prefix of the functions below), and includes the
 * flavour's header first. Each loop runs in C so that an inlined read pair stays inlined. */
#include <pthread.h>
#include <stdint.h>

#define CAT3_(a, b, c) a##b##c
#define CAT3(a, b, c) CAT3_(a, b, c)
#define URCU(fn) CAT3(urcu_, FLAVOR, fn)
#define SHIM(fn) CAT3(NAME, _, fn)

void SHIM(register_thread)(void) { URCU(_register_thread)(); }
void SHIM(unregister_thread)(void) { URCU(_unregister_thread)(); }
void SHIM(synchronize)(void) { URCU(_synchronize_rcu)(); }

/* `iters` read-side pairs. qsbr threads also announce a quiescent state every 1024 pairs,
 * as a qsbr reader must; the announcement is outside the measured pair in effect (1/1024). */
void SHIM(pairs)(uint64_t iters)
{
	for (uint64_t i = 0; i < iters; i++) {
		URCU(_read_lock)();
		__asm__ __volatile__("" ::: "memory");
		URCU(_read_unlock)();
#ifdef QSBR
		if ((i & 1023) == 1023)
			URCU(_quiescent_state)();
#endif
	}
#ifdef QSBR
	URCU(_quiescent_state)();
#endif
}

/* A reader that keeps reading until *stop is set (for synchronize latency). */
void SHIM(read_until)(const volatile int *stop)
{
	while (!__atomic_load_n(stop, __ATOMIC_RELAXED))
		SHIM(pairs)(1024);
}

/* An idle thread as liburcu needs it: registered, and (qsbr) offline while it sleeps, or
 * every qsbr grace period would wait for it. */
void SHIM(idle_begin)(void)
{
	URCU(_register_thread)();
#ifdef QSBR
	URCU(_thread_offline)();
#endif
}

void SHIM(idle_end)(void)
{
#ifdef QSBR
	URCU(_thread_online)();
#endif
	URCU(_unregister_thread)();
}
