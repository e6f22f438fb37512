/* notify.h: telling a service manager how comrope-serve is doing, through
 * systemd's notify protocol (sd_notify(3); a Type=notify unit).
 *
 * Owns: the messages only. READY=1 once the model is loaded and the port
 * listens, STOPPING=1 when a drain starts, and STATUS= lines a person reads
 * in `systemctl status`. Without $NOTIFY_SOCKET (not under systemd) every
 * call does nothing, so callers need no check of their own. */
#ifndef COMROPE_NOTIFY_H
#define COMROPE_NOTIFY_H

/* STATUS=<formatted text> */
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* READY=1 with a STATUS line, in one message */
void notify_ready(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* STOPPING=1 with a STATUS line, in one message */
void notify_stopping(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
