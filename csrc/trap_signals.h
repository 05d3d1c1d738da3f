/* trap_signals.h -- the signal handlers through which Wasmtime turns a guest's faults into
 * traps (realm/limits.py).
 *
 * On Linux Wasmtime catches an out-of-bounds access, `unreachable` or an integer division
 * trap of compiled wasm as SIGSEGV, SIGILL or SIGFPE, in process-wide handlers it installs
 * when the first engine is made.  A library that installs its own handlers afterwards without
 * chaining to them (a crash reporter, Ray's driver) turns the next guest fault into the death
 * of the process.  realm saves Wasmtime's actions once, checks before each guest call that
 * they are still in place, and can put them back on request. */
#ifndef REALM_TRAP_SIGNALS_H
#define REALM_TRAP_SIGNALS_H

#include <stdint.h>

#define REALM_SIG_EINVAL (-1) /* not a signal number, or sigaction refused it */
#define REALM_SIG_ENONE (-2)  /* restore: no action saved for that signal */

/* The handler now installed for sig (sa_sigaction or sa_handler; SIG_DFL is 0) into
 * *handler.  Returns 0 or REALM_SIG_EINVAL. */
int realm_signal_handler(int sig, uintptr_t *handler);

/* 1 if the code addresses a and b lie in the same loaded object (executable or shared
 * library), else 0. */
int realm_same_object(uintptr_t a, uintptr_t b);

/* Save sig's current action (handler, mask and flags), replacing any saved before.
 * Returns 0 or REALM_SIG_EINVAL. */
int realm_signal_save(int sig);

/* Install sig's saved action again.  Returns 0, REALM_SIG_ENONE or REALM_SIG_EINVAL. */
int realm_signal_restore(int sig);

#endif
