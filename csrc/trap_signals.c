#define _GNU_SOURCE /* dladdr */
#include "trap_signals.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

/* sigaction takes signals 1 .. 64 on the platforms realm builds for; a larger number is
 * refused rather than indexed. */
#define MAX_SIG 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction saved[MAX_SIG + 1];
static unsigned char have_saved[MAX_SIG + 1];

static uintptr_t handler_of(const struct sigaction *sa) {
    return (sa->sa_flags & SA_SIGINFO) ? (uintptr_t)sa->sa_sigaction : (uintptr_t)sa->sa_handler;
}

int realm_signal_handler(int sig, uintptr_t *handler) {
    struct sigaction sa;
    if (sig < 1 || sig > MAX_SIG || !handler || sigaction(sig, NULL, &sa) != 0) return REALM_SIG_EINVAL;
    *handler = handler_of(&sa);
    return 0;
}

int realm_same_object(uintptr_t a, uintptr_t b) {
    Dl_info ia, ib;
    if (!a || !b || !dladdr((void *)a, &ia) || !dladdr((void *)b, &ib)) return 0;
    return ia.dli_fbase != NULL && ia.dli_fbase == ib.dli_fbase;
}

int realm_signal_save(int sig) {
    struct sigaction sa;
    if (sig < 1 || sig > MAX_SIG || sigaction(sig, NULL, &sa) != 0) return REALM_SIG_EINVAL;
    pthread_mutex_lock(&lock);
    saved[sig] = sa;
    have_saved[sig] = 1;
    pthread_mutex_unlock(&lock);
    return 0;
}

int realm_signal_restore(int sig) {
    if (sig < 1 || sig > MAX_SIG) return REALM_SIG_EINVAL;
    pthread_mutex_lock(&lock);
    int rc = !have_saved[sig] ? REALM_SIG_ENONE : sigaction(sig, &saved[sig], NULL) != 0 ? REALM_SIG_EINVAL : 0;
    pthread_mutex_unlock(&lock);
    return rc;
}
