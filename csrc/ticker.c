/* The epoch ticker (ticker.h). */
#include "ticker.h"

#include <pthread.h>
#include <time.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *engines[REALM_TICKER_MAX_ENGINES];
static int n_engines;
static realm_epoch_fn increment_fn;
static long long period;
static long long ticks; /* periods done, read with __atomic */
static int started;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *run(void *arg) {
    (void)arg;
    const long long start = now_ns();
    for (long long done = 0;;) {
        const long long next = start + (done + 1) * period;
        const struct timespec at = {(time_t)(next / 1000000000LL), (long)(next % 1000000000LL)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
        const long long due = (now_ns() - start) / period;
        pthread_mutex_lock(&lock);
        for (int i = 0; i < n_engines; i++)
            for (long long t = done; t < due; t++) increment_fn(engines[i]);
        pthread_mutex_unlock(&lock);
        if (due > done) done = due;
        __atomic_store_n(&ticks, done, __ATOMIC_RELAXED);
    }
    return NULL;
}

int realm_ticker_add(realm_epoch_fn increment, void *engine, long long period_ns) {
    if (!increment || !engine || period_ns <= 0) return REALM_TICKER_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&lock);
    if (increment_fn && increment_fn != increment) {
        rc = REALM_TICKER_EINVAL;
    } else if (n_engines == REALM_TICKER_MAX_ENGINES) {
        rc = REALM_TICKER_EFULL;
    } else {
        increment_fn = increment;
        engines[n_engines++] = engine;
        if (!started) {
            period = period_ns;
            pthread_attr_t attr;
            pthread_t thread;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            if (pthread_create(&thread, &attr, run, NULL) == 0) {
                started = 1;
            } else {
                n_engines--;
                rc = REALM_TICKER_ETHREAD;
            }
            pthread_attr_destroy(&attr);
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

void realm_ticker_clear(void) {
    pthread_mutex_lock(&lock);
    n_engines = 0;
    pthread_mutex_unlock(&lock);
}

long long realm_ticker_ticks(void) { return __atomic_load_n(&ticks, __ATOMIC_RELAXED); }
