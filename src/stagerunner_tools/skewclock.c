/* skewclock: an LD_PRELOAD shim that moves this process's wall clock by
 * SKEWCLOCK_OFFSET_S seconds (may be negative or fractional), as on a machine whose
 * clock is off. Only the wall clock moves (CLOCK_REALTIME and its coarse twin,
 * gettimeofday, time): CLOCK_MONOTONIC and CLOCK_BOOTTIME, and timers on them, keep
 * the machine's true time, as they do on a machine with a skewed clock. (libfaketime
 * also rewrites timers and absolute sleeps, wrongly for CLOCK_BOOTTIME ones: see
 * tests/fault/test_several_nodes.py.) Built by the tests: cc -shared -fPIC -O2 -o
 * skewclock.so skewclock.c -ldl. Harness code. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static double offset(void) {
    const char *text = getenv("SKEWCLOCK_OFFSET_S");
    return text ? atof(text) : 0.0;
}

static void shift(struct timespec *ts, double by) {
    long long ns = (long long)ts->tv_nsec + (long long)((by - (long long)by) * 1e9);
    ts->tv_sec += (time_t)(long long)by + (time_t)(ns / 1000000000LL);
    ns %= 1000000000LL;
    if (ns < 0) { ns += 1000000000LL; ts->tv_sec -= 1; }
    ts->tv_nsec = (long)ns;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(clock, ts);
    if (rc == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE))
        shift(ts, offset());
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    (void)tz;
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
