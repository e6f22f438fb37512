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

#endif
