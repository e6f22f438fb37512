/* fuzz_config.c: the daemon's config file (config_load_file) and the
 * cgroup cpu.max reader (config_cpu_limit), both parsers of text that
 * comes from outside. */
#include <stdint.h>
#include <unistd.h>

#include "config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512], path[64];
    int fd = fuzz_memfile(data, size, path, sizeof(path));
    if (fd < 0) return 0;
    server_config cfg;
    config_defaults(&cfg);
    config_load_file(&cfg, path, err, sizeof(err));
    (void)config_cpu_limit(path);
    close(fd);
    return 0;
}
