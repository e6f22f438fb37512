/* notify.c: sd_notify messages (see notify.h). libsystemd's sd_notify does
 * the socket work (abstract or path sockets, credentials); it returns 0
 * without $NOTIFY_SOCKET. A failure to notify is not a reason to stop
 * serving, so results are ignored. */
#include "notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>

static void send_state(const char *state, const char *fmt, va_list ap) {
    char status[512], msg[600];
    vsnprintf(status, sizeof(status), fmt, ap);
    snprintf(msg, sizeof(msg), "%s%sSTATUS=%s", state, state[0] ? "\n" : "", status);
    sd_notify(0, msg);
}

void notify_status(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    send_state("", fmt, ap);
    va_end(ap);
}

void notify_ready(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    send_state("READY=1", fmt, ap);
    va_end(ap);
}

void notify_stopping(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    send_state("STOPPING=1", fmt, ap);
    va_end(ap);
}
