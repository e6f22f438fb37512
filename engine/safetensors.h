/* safetensors.h: reads model.safetensors, validating everything.
 *
 * Owns: the open file, the parsed header (name, dtype, shape, byte range
 * of every tensor) and the conversion of F32/F16/BF16 data to float32. A
 * hostile file gets an error value naming the file and tensor, never a crash
 * or an allocation sized by the file's claims beyond its real size. */
#ifndef COMROPE_SAFETENSORS_H
#define COMROPE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define ST_MAX_DIMS 8

typedef enum { ST_F32 = 0, ST_F16, ST_BF16 } st_dtype;

typedef struct {
    char *name; /* owned */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t count;     /* number of elements */
    size_t begin, end; /* byte range, relative to the data section */
    int used;          /* set by safetensors_take: finds unexpected tensors */
} st_tensor;

typedef struct {
    char *path;           /* owned copy, for messages */
    int fd;               /* open until close; tensors are read with pread, not mapped:
                 * a file truncated in place while it loads (cp over it) then
                 * fails the load instead of raising SIGBUS in the daemon */
    uint64_t data_offset; /* start of the data section in the file */
    size_t data_size;
    st_tensor *tensors; /* n tensors, owned */
    int n;
    /* the file as opened: safetensors_check_unchanged compares */
    uint64_t size;
    struct timespec mtime;
} safetensors_file;

/* Opens and validates `path` (a regular file: a FIFO or a device is
 * refused without blocking): header length within the file, JSON object,
 * each entry's dtype (F32, F16, BF16; anything else refused by name), shape,
 * offsets inside the data section, sized as the shape says, and no two
 * tensors overlapping. Returns 0; or -1, or SMALL_FILE_MISSING
 * (small_file.h) when there is no such file, or ENGINE_ERR_MEMORY
 * (engine_error.h), with a message in err. */
int safetensors_open(const char *path, safetensors_file *f, char *err, size_t errlen);

void safetensors_close(safetensors_file *f);

/* Finds `name`, checks its shape against `shape` (ndim entries) and
 * converts it to float32 into dst (count floats), refusing NaN and infinity.
 * Marks the tensor as used. Returns 0, or -1 with a message naming the
 * tensor (missing, wrong shape, non-finite value, or the file shorter than
 * when it was opened: rewritten in place while it loads). */
int safetensors_take(safetensors_file *f, const char *name, int ndim, const int64_t *shape, float *dst,
                     char *err, size_t errlen);

/* 1 if the file holds `name`. */
int safetensors_has(const safetensors_file *f, const char *name);

/* After every expected tensor was taken: -1 naming the first tensor that was
 * not (an unexpected tensor means the config does not describe these weights). */
int safetensors_check_all_used(const safetensors_file *f, char *err, size_t errlen);

/* After the tensors were taken: -1 if the file was written to since it was
 * opened (its size or mtime changed). Rewritten in place (cp over it) with
 * a checkpoint of the same layout, the tensors read before the write came
 * from the old one and those after from the new: a model of neither, that
 * served with no error. (Not ctime: replacing the file by rename, as
 * meant, changes the ctime of the one read, which is whole.) */
int safetensors_check_unchanged(const safetensors_file *f, char *err, size_t errlen);

#endif
