/* ticker.h -- the epoch ticker of realm's deadlines (realm/limits.py).
 *
 * One detached thread advances the epoch of every registered Wasmtime engine
 * once per period, through the function it was given (wasmtime's
 * wasmtime_engine_increment_epoch, thread-safe).  It runs without the GIL, so
 * deadlines hold however busy the interpreter is, and it keeps the epoch at the
 * periods elapsed since it started: a late wake-up catches up rather than drifts. */
#ifndef REALM_TICKER_H
#define REALM_TICKER_H

#define REALM_TICKER_MAX_ENGINES 64
#define REALM_TICKER_EINVAL (-1)  /* a NULL argument, a period <= 0, another increment function */
#define REALM_TICKER_EFULL (-2)   /* REALM_TICKER_MAX_ENGINES engines are registered already */
#define REALM_TICKER_ETHREAD (-3) /* the thread could not be started */

typedef void (*realm_epoch_fn)(void *engine);

/* Register an engine (it must live as long as the process) and start the thread
 * on the first call; period_ns is fixed by the first call.  Returns 0 or a
 * REALM_TICKER_E* code. */
int realm_ticker_add(realm_epoch_fn increment, void *engine, long long period_ns);

/* Forget every engine (the thread goes on, touching none): called at exit, before
 * the interpreter frees the engines. */
void realm_ticker_clear(void);

/* Periods elapsed since the ticker started (0 before). */
long long realm_ticker_ticks(void);

#endif
