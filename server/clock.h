/* clock.h: the daemon's one clock for deadlines and durations.
 *
 * Owns: monotonic_ns, CLOCK_MONOTONIC in nanoseconds. Request deadlines
 * and queue times (batcher), receive deadlines (conn_guard) and request
 * timings (http) all read it, so any two of them compare; the wall clock
 * is only for the log's timestamps (log.c). */
#ifndef COMROPE_CLOCK_H
#define COMROPE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A monotonic_ns instant as the timespec of a timed wait on a condition
 * variable set to CLOCK_MONOTONIC. */
static inline struct timespec monotonic_timespec(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    return ts;
}

#endif
