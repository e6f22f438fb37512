/* probe.h: `comrope-serve --health-probe`, a health check that needs no
 * curl in the image: asks the daemon on this machine for /v2/health/ready.
 *
 * Owns: which daemon to ask (the port and host the daemon's own settings
 * give: --port, COMROPE_PORT, the config file) and one HTTP/1.0 GET, over
 * TLS when tls-cert-file is set (the daemon speaks HTTPS only then).
 * Exit status: 0 ready (200), 1 not ready (503 while loading or draining,
 * refused, timed out), 2 the probe cannot tell where to ask (port 0, a
 * bad setting). */
#ifndef COMROPE_PROBE_H
#define COMROPE_PROBE_H

#include <stddef.h>

#include "config.h"

/* Removes every "--health-probe" from argv (argc updated, argv stays
 * NULL-terminated); returns 1 if there was one. */
int probe_take_flag(int *argc, char **argv);

/* The probe's arguments: in a container whose PID 1 is this same binary
 * (`podman run IMAGE --port 9000`: a HEALTHCHECK command does not see
 * those flags), PID 1's own arguments followed by the probe's; else the
 * probe's. Returns a malloc'ed NULL-terminated array (free with
 * probe_free_args; the strings live in the same block), NULL on no memory. */
char **probe_args(int argc, char **argv, int *out_argc);
void probe_free_args(char **args);

/* GET /v2/health/ready on cfg's host (a wildcard address: the loopback)
 * and port, within timeout_ms. Returns the exit status described above,
 * with a one-line message in msg either way. */
int health_probe(const server_config *cfg, int timeout_ms, char *msg, size_t msglen);

#endif
