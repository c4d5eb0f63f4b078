#include <plocks.h>
#include <stdio.h>
int main(void) {
    plock_mutex_t *m = plock_mutex_create();
    int i = plock_mutex_lock(m);
    if (i < 0 || plock_mutex_destroy(m) != PLOCK_EBUSY || plock_mutex_unlock(m, i) != 0) return 1;
    if (plock_mutex_destroy(m) != 0) return 2;
    plock_rwlock_t *l = plock_rwlock_create();
    if (plock_rwlock_read_lock(l) || plock_rwlock_read_unlock(l) || plock_rwlock_write_lock(l) || plock_rwlock_write_unlock(l)) return 3;
    printf("ok %s %s\n", plock_version(), plock_strerror(PLOCK_EPERM));
    return plock_rwlock_destroy(l);
}
