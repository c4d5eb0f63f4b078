#include <plocks.h>
#include <stdio.h>
int main(void) {
    plock_mutex_t *m = plock_mutex_create();
    int i = plock_mutex_lock(m);
    if (i < 0 || plock_mutex_destroy(m) != PLOCK_EBUSY || plock_mutex_unlock(m, i) != 0) return 1;
    if (plock_mutex_destroy(m) != 0) return 2;
    plock_rwlock_t *l = plock_rwlock_create();
    if (plock_rwlock_read_lock(l) || plock_rwlock_read_unlock(l) || plock_rwlock_write_lock(l) || plock_rwlock_write_unlock(l)) return 3;
    if (plock_mutex_create_flags(2) != NULL || plock_rwlock_create_flags(0x80) != NULL) return 4;
    plock_mutex_t *s = plock_mutex_create_flags(PLOCK_SLICE_EXTENSION);
    plock_rwlock_t *w = plock_rwlock_create_flags(PLOCK_SLICE_EXTENSION);
    int supported = plock_slice_supported();
    if (!s || !w || (supported != 0 && supported != 1)) return 5;
    int j = plock_mutex_lock(s);
    if (j < 0 || plock_rwlock_write_lock(w) || plock_rwlock_write_unlock(w) || plock_mutex_unlock(s, j)) return 6;
    struct plock_slice_statistics st;
    if (plock_slice_stats(NULL) != PLOCK_EINVAL || plock_slice_stats(&st) != 0) return 7;
    /* Without the kernel feature nothing is requested; with it the mutex requested and the
     * nested writer left the request alone. */
    if (supported ? (st.requests != 1 || st.nested != 1) : (st.requests != 0 || st.nested != 0)) return 8;
    if (plock_mutex_destroy(s) || plock_rwlock_destroy(w)) return 9;
    printf("ok %s %s\n", plock_version(), plock_strerror(PLOCK_EPERM));
    return plock_rwlock_destroy(l);
}
