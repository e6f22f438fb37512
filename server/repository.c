/* repository.c: scan, version policy, registry, control thread. See
 * repository.h. */
#include "repository.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cpu.h"
#include "gemm.h"
#include "log.h"
#include "text.h"

_Static_assert(METRICS_MAX_BATCH_SIZE >= CONFIG_MAX_BATCH_SIZE, "the statistics count every batch size");

/* The keys a model's serve.conf may set: how its batcher and workers run,
 * which versions it serves. The rest (ports, limits of a request, auth)
 * belong to the daemon. */
static const char *const per_model_keys[] = {
    "max-batch-size", "max-batch-tokens", "max-queue-delay-us", "max-queue-size", "workers",
    "gemm-threads",   "precision",        "gemm-backend",       "version-policy", NULL};
#define SETTINGS_FILE "serve.conf"

static const char *state_names[MODEL_STATE_COUNT] = {"LOADING", "READY", "UNLOADING", "UNAVAILABLE"};

const char *model_state_name(int state) {
    return state >= 0 && state < MODEL_STATE_COUNT ? state_names[state] : "UNAVAILABLE";
}

/* A directory whose name cannot name a model; why: a string literal. */
typedef struct {
    char name[256];
    const char *why;
} bad_name;

/* What cures a failed load: main's exit status for --model. */
typedef enum {
    LOAD_OK = 0,
    LOAD_BAD_MODEL,   /* its files, or anything else err names: exit 1 */
    LOAD_REFUSED,     /* the OS refused it memory or a thread: waiting may cure it, exit 3 */
    LOAD_BAD_SETTING, /* the batch limits ask for more memory than there is: exit 2 */
} load_failure;

/* What the index says of one version of a model. */
typedef struct {
    int version;
    int state;
    char reason[1024];
    unsigned long long failed_signature; /* files of the last failed load: a poll does not retry them */
    load_failure failure;                /* the last failed load's kind: what cures it */
} version_status;

typedef struct {
    char name[256];
    served_model **serving; /* ready versions, ascending */
    int nserving;
    version_status *status;
    int nstatus;
    int wanted; /* explicit mode: asked for (load-model or the load API) */
    unsigned long long failures;
} model_entry;

/* A load or unload asked through the API, waiting for the control thread. */
typedef struct control_req {
    char name[256];
    int load;
    repository_done_fn done;
    void *arg;
    struct control_req *next;
} control_req;

struct repository {
    repository_params p;
    int single; /* --model: one entry, no directory to scan */
    pthread_mutex_t lock;
    pthread_cond_t wake; /* control thread: a request, a rescan, a retired version free, stop */
    forward_gate *gate;  /* the CPU budget every model's forwards share (gate.h) */
    model_entry *models; /* by name, in scan order (sorted) */
    int nmodels;
    served_model *retired;
    int started; /* the start-up load is over */
    int rescan;
    control_req *reqs, *reqs_tail;
    int stopping;
    int busy; /* the control thread runs a load, unload or rescan */
    pthread_t thread;
    int thread_started;
    unsigned long long skipped_names; /* what the last scan left out, as a hash: said once */
    /* the directories the last scan left out whose names JSON can carry
     * (repository_name_problem), by name: listed in the index with why */
    bad_name *bad_names;
    int nbad_names;
    char root_error[256]; /* why the last scan could not read the root; "" when it could */
    /* the models whose directory the last scan could not read, as
     * "\nname\twhy\n" lines (NULL: none): said when that starts and ends.
     * The scanning thread's alone (start-up, then the control thread) */
    char *unreadable;
};

/* One version directory found by a scan. Its paths are built again when
 * needed (candidate_paths), not kept: two of CONFIG_PATH_MAX each made a
 * scan take 8.6 KB a version, 170 MB for a model of 20,000 versions, at
 * every poll. */
typedef struct {
    char name[256];
    int version; /* unreadable: the version whose directory could not be read, 0: the model's */
    int flat;    /* config.json in the model's directory: version 1 there */
    /* "": a version found. Else why the model's directory could not be
     * read (the only candidate of its model): kept as it is */
    char unreadable[128];
} candidate;

/* c's model directory (where serve.conf lives) and version directory, each
 * into CONFIG_PATH_MAX bytes (a scan left out what does not fit). */
static void candidate_paths(const repository *r, const candidate *c, char *model_dir, char *dir) {
    const server_config *cfg = r->p.cfg;
    if (r->single) snprintf(model_dir, CONFIG_PATH_MAX, "%s", cfg->model);
    else if (snprintf(model_dir, CONFIG_PATH_MAX, "%s/%s", cfg->model_repository, c->name) < 0)
        model_dir[0] = '\0';
    if (c->flat || c->version == 0) snprintf(dir, CONFIG_PATH_MAX, "%s", model_dir);
    else if (snprintf(dir, CONFIG_PATH_MAX, "%s/%d", model_dir, c->version) < 0) dir[0] = '\0';
}

/* --- settings and policy --------------------------------------------------- */

/* The global settings with the model's serve.conf (if any) over them. */
static int model_settings(const repository *r, const char *model_dir, server_config *out, char *err,
                          size_t errlen) {
    *out = *r->p.cfg;
    char path[CONFIG_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/%s", model_dir, SETTINGS_FILE);
    /* read on the control thread (or the start-up load), so it must be a
     * regular file of bounded size (config_read_file): a FIFO blocked it for
     * good (no load, unload or rescan, a stop that could not finish),
     * /dev/zero was read without end. None there (told by the open itself,
     * no stat before it to race with): the global settings. Any other
     * failure fails the load naming it (read as none, the model would run
     * on settings not its own). */
    int rc = config_load_file_only(out, path, per_model_keys, err, errlen);
    if (rc == SMALL_FILE_MISSING) { /* nothing read, *out untouched */
        if (errlen) err[0] = '\0';
        return 0;
    }
    return rc;
}

static int cmp_int_desc(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x < y) - (x > y);
}

/* The lowest version latest:N keeps, of the n versions found (sorted here,
 * in place): the N-th highest, INT_MIN when there are no more than N (or
 * the policy is not latest:N). A version is kept when fewer than N are
 * higher, that is when it is at least the N-th highest; one sort, where a
 * count of the higher ones for each version was quadratic (60,000
 * versions: 1.6 s a rescan). */
static int latest_floor(const version_policy *p, int *versions, int n) {
    if (p->all || !p->latest || n <= p->latest) return INT_MIN;
    qsort(versions, (size_t)n, sizeof(int), cmp_int_desc);
    return versions[p->latest - 1];
}

/* Whether a selected version passes the policy (keep_from: latest_floor's). */
static int policy_keeps(const version_policy *p, int keep_from, int v) {
    if (p->all) return 1;
    if (p->latest) return v >= keep_from;
    for (int i = 0; i < p->nspecific; i++)
        if (p->specific[i] == v) return 1;
    return 0;
}

/* What sync_models selects of one model: its candidates [c, c + n), its
 * policy and the lowest version that policy keeps (latest_floor). */
typedef struct {
    const candidate *c;
    int n;
    const version_policy *pol;
    int keep_from;
} selection;

/* Whether sel keeps version v: its files are there and its policy keeps
 * it (a serving version it does not keep is retired once the loads are
 * done). */
static int selected(const selection *sel, int v) {
    for (int k = 0; k < sel->n; k++)
        if (sel->c[k].version == v) return policy_keeps(sel->pol, sel->keep_from, v);
    return 0;
}

/* A version's files, as a number that changes when one of them does
 * (replaced, rewritten, touched). */
static unsigned long long files_signature(const repository *r, const candidate *c) {
    const char *files[] = {"config.json", "model.safetensors", "preprocessor_config.json", SETTINGS_FILE};
    unsigned long long h = 1469598103934665603ULL;
    char path[CONFIG_PATH_MAX + 64], dir[CONFIG_PATH_MAX], model_dir[CONFIG_PATH_MAX];
    candidate_paths(r, c, model_dir, dir);
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof(path), "%s/%s", i == 3 ? model_dir : dir, files[i]);
        struct stat st;
        unsigned long long parts[4] = {0, 0, 0, 0};
        if (stat(path, &st) == 0)
            parts[0] = (unsigned long long)st.st_mtim.tv_sec,
            parts[1] = (unsigned long long)st.st_mtim.tv_nsec, parts[2] = (unsigned long long)st.st_size,
            parts[3] = (unsigned long long)st.st_ino;
        for (int k = 0; k < 4; k++) h = (h ^ parts[k]) * 1099511628211ULL;
    }
    return h;
}

/* --- scanning ---------------------------------------------------------------- */

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* stat, telling "not there" (ENOENT, ENOTDIR: removed, or a file where a
 * directory was) from "cannot tell" (EIO, EACCES, ELOOP...): 0 found, 1
 * not there, or -1 with errno set. A scan that read "cannot tell" as "not
 * there" unloaded a model whose disk failed for a moment. */
static int stat_found(const char *path, struct stat *st) {
    if (stat(path, st) == 0) return 0;
    return errno == ENOENT || errno == ENOTDIR ? 1 : -1;
}

/* Whether dir holds a config.json: stat_found's answer. */
static int has_config(const char *dir) {
    char path[CONFIG_PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    struct stat st;
    return stat_found(path, &st);
}

/* Why `name` cannot be written in JSON or a Prometheus label, or NULL. */
static const char *name_unprintable(const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)name[i];
        if (ch < 0x20 || ch == 0x7f) return "it holds a control character";
        size_t len = proto_utf8_length((const unsigned char *)name + i, n - i);
        if (len == 0) return "it is not UTF-8";
        i += len;
    }
    return NULL;
}

/* Why a directory name cannot be a model's name, or NULL. A name is
 * printed in JSON (which must be UTF-8), in Prometheus label values (UTF-8:
 * one byte that is not fails the whole scrape) and in the log: any byte but
 * '/' may name a directory, so names that are not UTF-8 or hold control
 * characters are left out, not served half-broken. */
const char *repository_name_problem(const char *name) {
    size_t n = strlen(name);
    if (n == 0) return "it is empty";
    /* a name is one segment of its routes' paths: "a/b" (a --model-name)
     * was listed and served by /v1/classify but no /v2/models/<name> route
     * could address it (%2F is decoded before routing); "." and ".." are
     * taken out of a path by every URL parser, browsers' and curl's */
    if (memchr(name, '/', n)) return "it holds a '/'";
    if (!strcmp(name, ".") || !strcmp(name, "..")) return "it is . or ..";
    const char *unprintable = name_unprintable(name);
    if (unprintable) return unprintable;
    /* Triton's route too: GET /v2/models/stats is every model's
     * statistics, so a model "stats" would get them for its metadata (and
     * tritonclient's get_model_metadata("stats") no error) */
    if (!strcmp(name, "stats")) return "GET /v2/models/stats is every model's statistics, not its metadata";
    /* load-model's list splits "a,b" into a and b: not a name it can give */
    if (memchr(name, ',', n)) return "it holds a ',', which separates load-model's names";
    return NULL;
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static int cmp_bad_name(const void *a, const void *b) {
    return strcmp(((const bad_name *)a)->name, ((const bad_name *)b)->name);
}

static int push_candidate(candidate **c, int *n, int *cap, const char *name, int version, int flat) {
    if (*n == *cap) {
        int ncap = *cap ? 2 * *cap : 16;
        candidate *g = realloc(*c, sizeof(candidate) * (size_t)ncap);
        if (!g) return -1;
        *c = g;
        *cap = ncap;
    }
    candidate *k = &(*c)[(*n)++];
    snprintf(k->name, sizeof(k->name), "%s", name);
    k->version = version;
    k->flat = flat;
    k->unreadable[0] = '\0';
    return 0;
}

/* The version directories of one model directory: a flat one (config.json
 * in it) is version 1; else its numeric subdirectories holding a
 * config.json. Where the directory, its listing or a version's cannot be
 * read (otherwise than "not there"), the model is one candidate marked
 * unreadable instead, so that it is kept as it is: the root's rule
 * (scan), for one model. */
static int scan_model(const char *name, const char *model_dir, candidate **c, int *n, int *cap) {
    int first = *n, found = has_config(model_dir), why = 0;
    char path[CONFIG_PATH_MAX];
    int where = 0; /* what could not be read: a version's directory, 0: the model's */
    if (found == 0) return push_candidate(c, n, cap, name, 1, 1);
    if (found < 0) {
        why = errno;
        goto unreadable;
    }
    DIR *d = opendir(model_dir);
    if (!d) {
        if (errno == ENOENT || errno == ENOTDIR) return 0; /* gone since the root's listing */
        why = errno;
        goto unreadable;
    }
    struct dirent *e;
    int rc = 0;
    for (;;) {
        errno = 0;
        if (!(e = readdir(d))) {
            why = errno; /* the end, or an error when set */
            break;
        }
        const char *v = e->d_name;
        /* a version is its number in decimal: "01" is not version 1, or
         * "1" and "01" would both be it, loaded in turn on every scan */
        if (*v < '1' || *v > '9' || strspn(v, "0123456789") != strlen(v) || strlen(v) > 9) continue;
        int version = atoi(v);
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", model_dir, v) >= sizeof(path)) continue;
        found = has_config(path);
        if (found < 0) {
            why = errno;
            where = version;
            break;
        }
        if (found == 0 && (rc = push_candidate(c, n, cap, name, version, 0))) break;
    }
    closedir(d);
    if (rc || !why) return rc;
unreadable:
    *n = first; /* the versions read before the failure are not all there are */
    if (push_candidate(c, n, cap, name, where, 0)) return -1;
    snprintf((*c)[*n - 1].unreadable, sizeof((*c)[*n - 1].unreadable), "%s", strerror(why));
    return 0;
}

/* Logs the models whose directory a scan could not read (c[0..n)) when
 * that starts or its reason changes, and when it ends, not on every
 * rescan; r->unreadable keeps the set until the next scan. */
static void say_unreadable(repository *r, const candidate *c, int n) {
    text now = {0};
    char line[512], model_dir[CONFIG_PATH_MAX], dir[CONFIG_PATH_MAX];
    text_put(&now, "\n");
    for (int i = 0; i < n; i++) {
        if (!c[i].unreadable[0]) continue;
        text_put(&now, "%s\t%s\n", c[i].name, c[i].unreadable);
        snprintf(line, sizeof(line), "\n%s\t%s\n", c[i].name, c[i].unreadable);
        candidate_paths(r, &c[i], model_dir, dir);
        if (!r->unreadable || !strstr(r->unreadable, line))
            log_event("error", "model %s: cannot read %s: %s (kept as it is until it can)", c[i].name, dir,
                      c[i].unreadable);
    }
    if (now.failed) { /* out of memory: the set said stays the one to compare with */
        free(now.data);
        return;
    }
    /* names hold no tab or newline (repository_name_problem) */
    for (const char *p = r->unreadable; p && *p && p[1];) {
        p++;
        size_t len = strcspn(p, "\t");
        snprintf(line, sizeof(line), "\n%.*s\t", (int)len, p);
        if (!strstr(now.data, line))
            for (int i = 0; i < n; i++)
                if (strlen(c[i].name) == len && !strncmp(c[i].name, p, len)) {
                    candidate_paths(r, &c[i], model_dir, dir);
                    log_event("info", "model %s: %s can be read again", c[i].name, model_dir);
                    break;
                }
        p += strcspn(p, "\n");
    }
    free(r->unreadable);
    r->unreadable = now.data;
}

/* The repository's directory cannot be read (errno err): r->root_error
 * says why, logged when that starts or its reason changes. */
static void root_unreadable(repository *r, int err) {
    char why[sizeof(r->root_error)];
    snprintf(why, sizeof(why), "%s", strerror(err));
    if (strcmp(why, r->root_error) != 0)
        log_event("error", "model-repository: cannot read %s: %s (a rescan changes nothing until it can)",
                  r->p.cfg->model_repository, why);
    snprintf(r->root_error, sizeof(r->root_error), "%s", why);
}

/* the registry's lookup, below: scan keeps an unreadable directory only for a known model */
static model_entry *find_entry(repository *r, const char *name, size_t len);

/* Every version directory of the repository (or the one model of
 * --model), models in name order. Returns the count, -1 (out of memory),
 * or -3 when the repository's directory cannot be read (r->root_error
 * says why; logged when that starts and when it ends). */
static int scan(repository *r, candidate **out) {
    const server_config *cfg = r->p.cfg;
    candidate *c = NULL;
    int n = 0, cap = 0;
    *out = NULL;
    if (r->single) {
        if (push_candidate(&c, &n, &cap, cfg->model_name, 1, 1)) return -1;
        *out = c;
        return n;
    }
    /* Read as empty, a root renamed away for a moment (a deploy swapping
     * directories) or an NFS error unloaded every model at the next poll
     * (read in part, those past the error): nothing tells that from a
     * transient failure, so nothing changes */
    DIR *d = opendir(cfg->model_repository);
    if (!d) {
        root_unreadable(r, errno);
        return -3;
    }
    char **names = NULL;
    int nn = 0, ncap = 0, rc = 0;
    struct dirent *e;
    char path[CONFIG_PATH_MAX];
    unsigned long long skipped = 0;
    text left_out = {0};
    bad_name *bad = NULL;
    int nbad = 0, bcap = 0;
    for (;;) {
        errno = 0;
        if (!(e = readdir(d))) break;
        if (e->d_name[0] == '.' || strlen(e->d_name) >= sizeof(c->name)) continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", cfg->model_repository, e->d_name) >= sizeof(path))
            continue;
        /* a directory, or what cannot be told from one (scan_model marks
         * it unreadable); not a file, and not what is gone */
        struct stat st;
        int found = stat_found(path, &st);
        if (found > 0 || (found == 0 && !S_ISDIR(st.st_mode))) continue;
        const char *why = repository_name_problem(e->d_name);
        if (why) {
            unsigned long long h = 1469598103934665603ULL;
            for (const unsigned char *p = (const unsigned char *)e->d_name; *p; p++)
                h = (h ^ *p) * 1099511628211ULL;
            skipped += h; /* the set left out, whatever the order */
            text_put(&left_out, "%s\"%s\" (%s)", left_out.len ? ", " : "", e->d_name, why);
            if (name_unprintable(e->d_name)) continue;
            if (nbad == bcap) { /* out of memory: logged, not indexed */
                int ncap = bcap ? 2 * bcap : 4;
                bad_name *g = realloc(bad, sizeof(*g) * (size_t)ncap);
                if (!g) continue;
                bad = g;
                bcap = ncap;
            }
            snprintf(bad[nbad].name, sizeof(bad[nbad].name), "%s", e->d_name);
            bad[nbad++].why = why;
            continue;
        }
        if (nn == ncap) {
            ncap = ncap ? 2 * ncap : 16;
            char **g = realloc(names, sizeof(char *) * (size_t)ncap);
            if (!g) {
                rc = -1;
                break;
            }
            names = g;
        }
        if (!(names[nn] = strdup(e->d_name))) {
            rc = -1;
            break;
        }
        nn++;
    }
    int read_errno = errno; /* readdir's NULL: the end, or an error when set */
    closedir(d);
    if (!e && read_errno) {
        for (int i = 0; i < nn; i++) free(names[i]);
        free(names);
        free(left_out.data);
        free(bad);
        root_unreadable(r, read_errno);
        return -3;
    }
    if (r->root_error[0]) {
        log_event("info", "model-repository: %s can be read again", cfg->model_repository);
        r->root_error[0] = '\0';
    }
    /* said when the set left out changes, not on every poll (log_event
     * escapes the names) */
    if (skipped != r->skipped_names && left_out.len)
        log_event("warning", "model-repository: not served, a name no model can have: %s", left_out.data);
    r->skipped_names = skipped;
    free(left_out.data);
    if (nbad) qsort(bad, (size_t)nbad, sizeof(*bad), cmp_bad_name);
    pthread_mutex_lock(&r->lock); /* the index reads them */
    free(r->bad_names);
    r->bad_names = bad;
    r->nbad_names = nbad;
    pthread_mutex_unlock(&r->lock);
    if (nn) qsort(names, (size_t)nn, sizeof(char *), cmp_name);
    for (int i = 0; i < nn; i++) {
        if (!rc &&
            (size_t)snprintf(path, sizeof(path), "%s/%s", cfg->model_repository, names[i]) < sizeof(path))
            rc = scan_model(names[i], path, &c, &n, &cap);
        free(names[i]);
    }
    free(names);
    if (rc) {
        free(c);
        return -1;
    }
    /* A directory that cannot be read is kept as it is only when it was
     * a model's: one never seen as a model is not taken for one, as
     * before it was read (lost+found, root's and 0700 on every ext4
     * volume mounted as the repository, listed as an unavailable model
     * and logged as an error at every start otherwise). */
    pthread_mutex_lock(&r->lock);
    int kept = 0;
    for (int i = 0; i < n; i++)
        if (!c[i].unreadable[0] || find_entry(r, c[i].name, strlen(c[i].name))) c[kept++] = c[i];
    pthread_mutex_unlock(&r->lock);
    n = kept;
    say_unreadable(r, c, n);
    *out = c;
    return n;
}

/* --- the registry (lock held unless said) ------------------------------------- */

static model_entry *find_entry(repository *r, const char *name, size_t len) {
    for (int i = 0; i < r->nmodels; i++)
        if (strlen(r->models[i].name) == len && strncmp(r->models[i].name, name, len) == 0)
            return &r->models[i];
    return NULL;
}

static model_entry *get_entry(repository *r, const char *name) {
    model_entry *e = find_entry(r, name, strlen(name));
    if (e) return e;
    model_entry *g = realloc(r->models, sizeof(model_entry) * (size_t)(r->nmodels + 1));
    if (!g) return NULL;
    r->models = g;
    /* kept in name order: the default model is the first */
    int at = 0;
    while (at < r->nmodels && strcmp(r->models[at].name, name) < 0) at++;
    memmove(&r->models[at + 1], &r->models[at], sizeof(model_entry) * (size_t)(r->nmodels - at));
    r->nmodels++;
    e = &r->models[at];
    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", name);
    return e;
}

static version_status *get_status(model_entry *e, int version) {
    for (int i = 0; i < e->nstatus; i++)
        if (e->status[i].version == version) return &e->status[i];
    version_status *g = realloc(e->status, sizeof(version_status) * (size_t)(e->nstatus + 1));
    if (!g) return NULL;
    e->status = g;
    int at = 0;
    while (at < e->nstatus && e->status[at].version < version) at++;
    memmove(&e->status[at + 1], &e->status[at], sizeof(version_status) * (size_t)(e->nstatus - at));
    e->nstatus++;
    e->status[at] =
        (version_status){.version = version, .state = MODEL_UNAVAILABLE, .reason = "", .failed_signature = 0};
    return &e->status[at];
}

static void set_status(model_entry *e, int version, int state, const char *reason) {
    version_status *s = get_status(e, version);
    if (!s) return;
    s->state = state;
    snprintf(s->reason, sizeof(s->reason), "%.*s", (int)sizeof(s->reason) - 1, reason ? reason : "");
}

static served_model *serving_version(model_entry *e, int version) {
    for (int i = 0; i < e->nserving; i++)
        if (e->serving[i]->version == version) return e->serving[i];
    return NULL;
}

/* Takes m out of the registry: no new request finds it; freed once its
 * references are released. `replaced`: a new copy of the version serves
 * (its status stays READY). */
static void retire(repository *r, model_entry *e, served_model *m, int replaced) {
    for (int i = 0; i < e->nserving; i++)
        if (e->serving[i] == m) {
            memmove(&e->serving[i], &e->serving[i + 1],
                    sizeof(served_model *) * (size_t)(e->nserving - i - 1));
            e->nserving--;
            break;
        }
    m->retired = 1;
    m->next = r->retired;
    r->retired = m;
    if (!replaced) set_status(e, m->version, MODEL_UNLOADING, "");
    pthread_cond_broadcast(&r->wake);
}

/* Puts m into the registry, in place of the copy of its version serving. */
static int install(repository *r, model_entry *e, served_model *m) {
    served_model *old = serving_version(e, m->version);
    if (old) {
        for (int i = 0; i < e->nserving; i++)
            if (e->serving[i] == old) e->serving[i] = m; /* the swap: atomic under the lock */
        old->retired = 1;
        old->next = r->retired;
        r->retired = old;
        pthread_cond_broadcast(&r->wake);
    } else {
        served_model **g = realloc(e->serving, sizeof(served_model *) * (size_t)(e->nserving + 1));
        if (!g) return -1;
        e->serving = g;
        int at = 0;
        while (at < e->nserving && e->serving[at]->version < m->version) at++;
        memmove(&e->serving[at + 1], &e->serving[at], sizeof(served_model *) * (size_t)(e->nserving - at));
        e->serving[at] = m;
        e->nserving++;
    }
    set_status(e, m->version, MODEL_READY, "");
    version_status *vs = get_status(e, m->version);
    if (vs) vs->failed_signature = 0;
    return 0;
}

/* --- loading (control thread, or main at start; no lock) ------------------------ */

static void reap(repository *r);
static int retired_free(repository *r);

/* The engine's kernels as isa names them (auto: the best this CPU runs). */
static int engine_isa(const server_config *cfg, int *isa, const char **name) {
    for (int i = 0; i < config_num_options; i++)
        if (strcmp(config_options[i].name, "isa") == 0 &&
            cpu_isa_parse(config_options[i].choices[cfg->isa], isa) != 0)
            return -1;
    *name = cpu_isa_name(*isa == CPU_ISA_BEST ? cpu_best_isa() : (cpu_isa)*isa);
    return 0;
}

static void free_served(served_model *m) {
    if (!m) return;
    batcher_free(m->batcher);
    metrics_series_close(m->series); /* after its batcher: no batch counts in it any more */
    vit_free(m->model);
    free(m);
}

/* Appends to a failed load's message what cures it, where that is not
 * the files: a load the OS refused memory or a thread may succeed with
 * the same files once other processes have exited (a --model start exits
 * 3, main.c, not 1); a workspace larger than the memory there is needs
 * smaller batch limits (exit 2, a bad setting). The log and the index say
 * so. Returns the kind of failure it was. */
static load_failure say_cure(char *err, size_t errlen, batcher_failure failure) {
    size_t n = strlen(err);
    switch (failure) {
    case BATCHER_NO_MEMORY:
    case BATCHER_NO_THREAD:
        snprintf(err + n, errlen - n, " (the OS refused %s: waiting may cure it)",
                 failure == BATCHER_NO_THREAD ? "a thread" : "memory");
        return LOAD_REFUSED;
    case BATCHER_WORKSPACE_TOO_LARGE:
        snprintf(err + n, errlen - n, ": lower max-batch-tokens or max-batch-size (or workers)");
        return LOAD_BAD_SETTING;
    default: return LOAD_BAD_MODEL;
    }
}

/* Appends "model M version V: N MiB" for m to t (len: its size, *at: where
 * it ends); a list too long for t ends with "...". */
static void say_holder(char *t, size_t len, size_t *at, const served_model *m, size_t bytes,
                       const char *how) {
    if (*at >= len) return;
    int n = snprintf(t + *at, len - *at, "%smodel %s version %d%s: %zu MiB", *at ? ", " : "", m->name,
                     m->version, how, bytes >> 20);
    if (n < 0 || (size_t)n >= len - *at) {
        snprintf(t + (len > 4 ? len - 4 : 0), len > 4 ? 4 : len, "...");
        *at = len;
    } else *at += (size_t)n;
}

/* The memory the copies held already take, weights and workspaces, and
 * who holds it in `who` ("" for none): every version serving, and the
 * retired ones not yet freed (their last requests being answered). The
 * copy a reload of c replaces counts its weights only: both copies'
 * weights are held while the new one loads, but the old one's workspaces
 * go at the swap (batches go to it until then, to the new one after).
 * So do the versions of c's model that `sel` no longer keeps (a version 2
 * under latest:1 supersedes version 1): they are retired once the loads
 * are done; counted whole, an upgrade that fits once swapped was refused.
 * A version kept serving because what its policy selects failed to load
 * (retire_unselected) counts so for a load of a version that does not
 * serve (its success retires the kept one), whole for a reload of one
 * that serves (the kept one stays after it).
 * The retired copies nothing holds are freed first: an unload asked
 * just before makes room for this load. Lock not held. */
static size_t memory_held(repository *r, const candidate *c, const selection *sel, char *who, size_t wholen) {
    size_t held = 0, at = 0;
    who[0] = '\0';
    pthread_mutex_lock(&r->lock);
    if (retired_free(r)) reap(r);
    for (int k = 0; k < r->nmodels; k++) {
        /* a reload (c serves): a kept version stays kept after it */
        int c_serving = serving_version(&r->models[k], c->version) != NULL;
        for (int i = 0; i < r->models[k].nserving; i++) {
            const served_model *m = r->models[k].serving[i];
            int same = strcmp(m->name, c->name) == 0, replaced = same && m->version == c->version;
            int superseded = same && !replaced && !selected(sel, m->version) && (!m->kept || !c_serving);
            size_t bytes = m->weight_bytes + (replaced || superseded ? 0 : m->workspace_bytes);
            say_holder(who, wholen, &at, m, bytes,
                       replaced     ? " (weights of the copy this reload replaces)"
                       : superseded ? " (weights of a version this load supersedes)"
                                    : "");
            held += bytes;
        }
    }
    for (const served_model *m = r->retired; m; m = m->next) {
        say_holder(who, wholen, &at, m, m->weight_bytes + m->workspace_bytes,
                   " (unloading: requests in flight)");
        held += m->weight_bytes + m->workspace_bytes;
    }
    pthread_mutex_unlock(&r->lock);
    return held;
}

/* *failure: the kind of a failed load, with err saying what cures it
 * (say_cure). `signature`: c's files_signature, taken before they are read. */
static served_model *load_version(repository *r, const candidate *c, const selection *sel,
                                  const server_config *settings, unsigned long long signature,
                                  load_failure *failure, char *err, size_t errlen) {
    batcher_failure kind = BATCHER_FAILED;
    served_model *m = calloc(1, sizeof(*m));
    if (!m) {
        snprintf(err, errlen, "out of memory");
        kind = BATCHER_NO_MEMORY;
        goto fail;
    }
    snprintf(m->name, sizeof(m->name), "%s", c->name);
    m->version = c->version;
    snprintf(m->version_text, sizeof(m->version_text), "%d", c->version);
    m->cfg = *settings;
    m->signature = signature;
    char model_dir[CONFIG_PATH_MAX];
    candidate_paths(r, c, model_dir, m->dir);
    /* the contexts' ISA first: the precision auto picks depends on it */
    vit_context_params engine = vit_context_default_params();
    const char *isa;
    if (engine_isa(&m->cfg, &engine.isa, &isa)) {
        snprintf(err, errlen, "isa: unknown level");
        goto fail;
    }
    snprintf(m->isa, sizeof(m->isa), "%s", isa);
    vit_options vopt = vit_default_options();
    vopt.isa = engine.isa;
    for (int i = 0; i < config_num_options; i++)
        if (strcmp(config_options[i].name, "precision") == 0 &&
            precision_parse(config_options[i].choices[m->cfg.precision], &vopt.precision)) {
            snprintf(err, errlen, "precision: unknown value");
            goto fail;
        } else if (strcmp(config_options[i].name, "gemm-backend") == 0 &&
                   gemm_backend_parse(config_options[i].choices[m->cfg.gemm_backend], &vopt.gemm_backend)) {
            snprintf(err, errlen, "gemm-backend: unknown value");
            goto fail;
        }
    int loaded = vit_load(m->dir, &vopt, &m->model, err, errlen);
    if (loaded) {
        kind = loaded == ENGINE_ERR_MEMORY ? BATCHER_NO_MEMORY : BATCHER_FAILED;
        goto fail;
    }
    const precision_choice *pc = &m->model->choice;
    const char *precision = precision_name(m->model->precision);
    if (pc->warn)
        log_event("warning",
                  "model %s version %d: precision bf16 as asked, but bf16 does not pay on this "
                  "CPU (%s); --precision auto or fp32 would be faster",
                  m->name, m->version, pc->why);
    else if (pc->requested == PRECISION_AUTO)
        log_event("info", "model %s version %d: precision auto: %s (%s)", m->name, m->version, precision,
                  pc->why);
    if (m->model->precision == GEMM_BF16)
        log_event("info", "model %s version %d: bf16 GEMMs: %s", m->name, m->version,
                  m->model->backend == GEMM_BACKEND_ONEDNN ? "oneDNN's matmul primitive"
                  : m->model->backend == GEMM_BACKEND_AMX  ? "our AMX tile kernel"
                                                           : "our vdpbf16ps kernel");
    /* thread counts left to derive depend on how heavy the model is */
    const vit_model *vm = m->model;
    config_derive_threads(&m->cfg, r->p.cpu_limit, vit_gflop(vm, vm->cfg.image_size, vm->cfg.image_size));
    /* Each worker's context: its own pool of gemm-threads (the pools also
     * keep OpenBLAS at one thread), kernels of the chosen ISA, and a
     * workspace for one batch at the batch limits. */
    engine.threads = m->cfg.gemm_threads;
    engine.memory_bytes = (size_t)r->p.memory_limit;
    /* The models share the memory: the workspaces get what the others
     * (and this copy's weights) leave, so that models that fit one by one
     * but not together are refused here, not OOM-killed under load */
    char holders[400];
    size_t others = memory_held(r, c, sel, holders, sizeof(holders));
    m->weight_bytes = vit_model_bytes(vm);
    engine.memory_held = others + m->weight_bytes;
    const server_config *g = &m->cfg;
    batcher_params bp = {
        .workers = g->workers,
        .max_batch_size = g->max_batch_size,
        .max_batch_tokens = g->max_batch_tokens,
        .max_queue_delay_us = g->max_queue_delay_us,
        .max_queue_size = g->max_queue_size,
        .limits = {.max_width = g->max_image_side,
                   .max_height = g->max_image_side,
                   .max_pixels = g->max_image_pixels},
        .max_request_images = g->max_request_images,
        .max_request_tokens = g->max_request_tokens,
        .pixel_budget_bytes = g->pixel_budget_bytes,
        .engine = engine,
        .max_queue_wait_ms = g->max_queue_wait_ms,
    };
    char why[512];
    m->series = metrics_series_open(r->p.mx, m->name, m->version_text, pe_type_name(vm->cfg.custom_pe_type),
                                    vm->cfg.image_size);
    if (!m->series) {
        snprintf(err, errlen, "out of memory");
        kind = BATCHER_NO_MEMORY;
        goto fail;
    }
    m->batcher = batcher_new(vm, m->series, bp, &kind, why, sizeof(why));
    /* Workers derived from the CPUs (workers not set) whose workspaces
     * together pass the memory: fewer of them, each with more gemm-threads
     * where those are derived too, rather than a daemon that will not
     * start where it served before the bound (--memory 1g on a 32-CPU
     * host). Workers set are refused: the operator asked for them. */
    int derived_workers = bp.workers;
    char first_why[sizeof(why)];
    snprintf(first_why, sizeof(first_why), "%s", why);
    while (!m->batcher && kind == BATCHER_WORKSPACE_TOO_LARGE && settings->workers == 0 && bp.workers > 1) {
        bp.workers--;
        if (settings->gemm_threads == 0)
            bp.engine.threads = r->p.cpu_limit / bp.workers > 1 ? r->p.cpu_limit / bp.workers : 1;
        m->batcher = batcher_new(vm, m->series, bp, &kind, why, sizeof(why));
    }
    if (m->batcher && bp.workers < derived_workers) {
        log_event("warning",
                  "model %s version %d: %d workers (derived from %d CPUs) lowered to %d, %d gemm threads "
                  "each, so that their workspaces fit: %s",
                  m->name, m->version, derived_workers, r->p.cpu_limit, bp.workers, bp.engine.threads,
                  first_why);
        m->cfg.workers = bp.workers;
        m->cfg.gemm_threads = bp.engine.threads;
    }
    /* the engine says how much is held, not by whom: with nothing else
     * loaded (--model) the holder is this version's weights alone */
    if (!m->batcher && kind == BATCHER_WORKSPACE_TOO_LARGE) {
        if (others)
            snprintf(err, errlen,
                     "%s (memory held: %s; this version's weights: %zu MiB; unload a model to make room)",
                     why, holders, m->weight_bytes >> 20);
        else
            snprintf(err, errlen, "%s (memory held: this version's weights: %zu MiB)", why,
                     m->weight_bytes >> 20);
        goto fail;
    }
    if (!m->batcher) {
        snprintf(err, errlen, "%s", why);
        goto fail;
    }
    m->workspace_bytes = batcher_workspace_bytes(m->batcher);
    batcher_set_gate(m->batcher, r->gate);
    m->pm = (proto_model){
        .name = m->name,
        .pe_type = pe_type_name(vm->cfg.custom_pe_type),
        .num_channels = vm->cfg.num_channels,
        .num_class = vm->cfg.num_class,
        .image_size = vm->cfg.image_size,
        .patch_size = vm->cfg.patch_size,
        .max_tokens = vm->max_tokens,
        .labels = vm->cfg.labels,
        .version = r->p.build_version,
        .isa = m->isa,
        .precision = precision,
        .precision_requested = precision_name(pc->requested),
        .bf16_pays = pc->bf16_pays,
        .precision_warning = pc->warn ? pc->why : NULL,
        .gemm_backend = vm->precision == GEMM_BF16 ? gemm_backend_name(vm->backend) : NULL,
        .model_version = m->version_text,
        .max_images = bp.max_request_images,
    };
    *failure = LOAD_OK;
    return m;
fail:
    free_served(m);
    *failure = say_cure(err, errlen, kind);
    return NULL;
}

/* Loads c (settings already read) and swaps it in; on failure records
 * why, and what served goes on serving. Returns 0 when it serves; on
 * failure the reason also goes to `why` if it is still empty. */
static int load_and_install(repository *r, const candidate *c, const selection *sel,
                            const server_config *settings, char *why, size_t whylen) {
    char err[1024];
    pthread_mutex_lock(&r->lock);
    model_entry *e = get_entry(r, c->name);
    int reload = e && serving_version(e, c->version) != NULL;
    if (e && !reload) set_status(e, c->version, MODEL_LOADING, "");
    pthread_mutex_unlock(&r->lock);
    char model_dir[CONFIG_PATH_MAX], dir[CONFIG_PATH_MAX];
    candidate_paths(r, c, model_dir, dir);
    log_event("info", "%s model %s version %d from %s", reload ? "reloading" : "loading", c->name, c->version,
              dir);
    load_failure failure;
    /* the files as read, not as they are once the load failed: rewritten
     * during it (safetensors_check_unchanged), the files there now are not
     * those that failed, and the next poll loads them */
    unsigned long long read_signature = files_signature(r, c);
    served_model *m = load_version(r, c, sel, settings, read_signature, &failure, err, sizeof(err));
    pthread_mutex_lock(&r->lock);
    e = get_entry(r, c->name);
    int rc = -1;
    if (m && e && install(r, e, m) == 0) {
        rc = 0;
        /* serving now: comrope_model_info names its files (a reload's
         * series kept the old copy's labels until here) */
        metrics_series_label(m->series, m->pm.pe_type, m->pm.image_size);
        metrics_series_memory(m->series, m->weight_bytes, m->workspace_bytes);
    } else if (m) {
        snprintf(err, sizeof(err), "out of memory");
        failure = say_cure(err, sizeof(err), BATCHER_NO_MEMORY);
    }
    if (rc && e) {
        e->failures++;
        set_status(e, c->version, reload ? MODEL_READY : MODEL_UNAVAILABLE, err);
        version_status *vs = get_status(e, c->version);
        if (vs) {
            vs->failed_signature = read_signature;
            vs->failure = failure;
        }
    }
    pthread_mutex_unlock(&r->lock);
    if (rc) {
        free_served(m);
        log_event("error", "model %s version %d failed to load%s: %s", c->name, c->version,
                  reload ? " (the loaded copy goes on serving)" : "", err);
        if (why && !why[0])
            snprintf(why, whylen, "version %d: %.700s%s", c->version, err,
                     reload ? " (the loaded copy goes on serving)" : "");
        return -1;
    }
    /* what load_version counted against the memory bound, also in
     * comrope_model_memory_bytes */
    log_event("info",
              "model %s version %d ready (%s, isa %s, precision %s, %dx%d, %d classes; %d workers x %d gemm "
              "threads, batch %d images / %d tokens; memory: weights %.1f MiB, workspaces %.1f MiB at most "
              "(all workers together, rotation tables included))",
              m->name, m->version, m->pm.pe_type, m->isa, m->pm.precision, m->pm.image_size, m->pm.image_size,
              m->pm.num_class, m->cfg.workers, m->cfg.gemm_threads, m->cfg.max_batch_size,
              m->cfg.max_batch_tokens, (double)m->weight_bytes / (1 << 20),
              (double)m->workspace_bytes / (1 << 20));
    return 0;
}

/* load-model's list: names separated by commas, '*' for every model;
 * empty names (",,", a trailing comma) are skipped. Returns the next name
 * from *p, its length in *len, and moves *p past it; NULL at the end. */
static const char *next_listed_name(const char **p, size_t *len) {
    while (**p == ',') (*p)++;
    if (!**p) return NULL;
    const char *name = *p;
    *len = strcspn(name, ",");
    *p += *len;
    return name;
}

/* Whether the listed name s (len l) names the model `name`. */
static int listed_names(const char *s, size_t l, const char *name) {
    return (l == 1 && *s == '*') || (strlen(name) == l && strncmp(s, name, l) == 0);
}

/* Whether load-model's list names the model `name`. */
static int named_at_start(const char *list, const char *name) {
    size_t l;
    for (const char *s; (s = next_listed_name(&list, &l));)
        if (listed_names(s, l, name)) return 1;
    return 0;
}

/* The first name of load-model's list that none of the n candidates c
 * has ('*' has every one), or NULL; its length in *len. */
static const char *named_but_absent(const char *list, const candidate *c, int n, size_t *len) {
    for (const char *s; (s = next_listed_name(&list, len));) {
        int found = *len == 1 && *s == '*';
        for (int i = 0; i < n && !found; i++) found = listed_names(s, *len, c[i].name);
        if (!found) return s;
    }
    return NULL;
}

/* Drops the index entries of e's versions neither among its n candidates
 * (on disk) nor held by a copy (serving, loading, or retired and still
 * draining: its entry goes at the first scan after the copy is freed).
 * Kept for ever, they grew the index and every scrape by one entry and
 * four comrope_model_state lines per version ever seen: a version
 * published an hour made 8,760 a year. Triton's index lists what is on
 * disk and what is loaded. Lock held; no pointer into e->status is held
 * across an unlock, so none is left dangling. */
static void forget_gone_versions(repository *r, model_entry *e, const candidate *c, int n) {
    int kept = 0;
    for (int k = 0; k < e->nstatus; k++) {
        const version_status *s = &e->status[k];
        int keep = s->state == MODEL_LOADING || serving_version(e, s->version) != NULL;
        for (int i = 0; i < n && !keep; i++) keep = c[i].version == s->version;
        for (const served_model *m = r->retired; m && !keep; m = m->next)
            keep = m->version == s->version && strcmp(m->name, e->name) == 0;
        if (keep && kept != k) e->status[kept] = *s;
        kept += keep;
    }
    e->nstatus = kept;
}

#define KEPT_REASON "kept serving: "

/* Sets a kept version's index reason, its own failed reload's reason
 * (if any) after it; kept 0 takes KEPT_REASON's part off. Lock held. */
static void say_kept(model_entry *e, int version, int kept, const char *why) {
    version_status *vs = get_status(e, version);
    if (!vs) return;
    const char *own = vs->reason;
    if (strncmp(own, KEPT_REASON, strlen(KEPT_REASON)) == 0) {
        const char *after = strstr(own, "; ");
        own = after ? after + 2 : "";
    }
    char reason[sizeof(vs->reason)];
    if (kept) snprintf(reason, sizeof(reason), KEPT_REASON "%s%s%.700s", why, own[0] ? "; " : "", own);
    else snprintf(reason, sizeof(reason), "%s", own);
    snprintf(vs->reason, sizeof(vs->reason), "%s", reason);
}

/* Retires the versions serving that sel no longer selects, but for those
 * kept: while versions sel selects do not serve (their load failed), as
 * many of the versions they supersede go on serving, highest first, if
 * their files are still there (a version removed is retired). Retired
 * regardless, a version 2 under latest:1 that failed to load (corrupt
 * checkpoint, memory refused) left the model nothing to serve: a rolling
 * upgrade must not take down what served until its successor is ready
 * (Triton: a model's reload that fails leaves the loaded model as it
 * was, its versions included; server PR #2162). The pass that loads the selected versions retires the kept
 * ones. Requests without a version go to the highest serving: a kept one
 * while its successor fails. Lock held. */
static void retire_unselected(repository *r, model_entry *e, const selection *sel) {
    int missing = 0;
    char failed[200] = "";
    size_t at = 0;
    for (int k = 0; k < sel->n; k++) {
        int v = sel->c[k].version;
        if (!policy_keeps(sel->pol, sel->keep_from, v) || serving_version(e, v)) continue;
        missing++;
        if (at < sizeof(failed))
            at += (size_t)snprintf(failed + at, sizeof(failed) - at, "%s%d", at ? ", " : "", v);
    }
    char why[300];
    snprintf(why, sizeof(why), "version%s %s that its version-policy selects failed to load",
             missing > 1 ? "s" : "", failed);
    for (int s = e->nserving - 1; s >= 0; s--) {
        served_model *m = e->serving[s];
        int on_disk = 0;
        for (int k = 0; k < sel->n && !on_disk; k++) on_disk = sel->c[k].version == m->version;
        if (selected(sel, m->version) || (on_disk && missing > 0)) {
            int kept = !selected(sel, m->version);
            missing -= kept;
            if (kept && !m->kept)
                log_event("warning", "model %s version %d: kept serving (%s)", m->name, m->version, why);
            if (kept || m->kept) say_kept(e, m->version, kept, why);
            m->kept = kept;
            continue;
        }
        log_event("info", "model %s version %d: unloading (no longer selected by its files or policy)",
                  m->name, m->version);
        retire(r, e, m, 0);
    }
}

/* Brings the registry in line with the files: for every model to serve
 * (only: just that one), the versions its policy selects are loaded, or
 * reloaded when their files changed; versions no longer selected or no
 * longer there are retired. Models that left the repository are retired.
 * The index forgets the versions gone from disk (forget_gone_versions).
 * `want`: `only` is asked for (explicit mode's load). `retry`: a load that
 * failed is tried again on the same files (want, or SIGHUP: the operator
 * asks, maybe having cured a passing cause: memory, threads, a file
 * unreadable for a moment); a poll does not (it would fail the same load,
 * log it and count it every repository-poll-s). Returns 0, -1
 * when `only` is not in the repository, -2 when it stopped short for
 * the daemon's stop (a load left undone, nothing retired), or -3 when the
 * repository's directory, or `only`'s, cannot be read (nothing done to
 * it; why in `failed`). A model whose directory cannot be read is kept as
 * it is. The first load that failed on this pass says why in `failed`
 * (when not NULL; empty if none did). */
static int sync_models(repository *r, const char *only, int want, int retry, char *failed,
                       size_t failed_len) {
    candidate *c;
    if (failed) failed[0] = '\0';
    int n = scan(r, &c);
    if (n == -3) { /* the root cannot be read: nothing loaded, nothing retired */
        if (failed)
            snprintf(failed, failed_len, "model-repository %.300s cannot be read: %s",
                     r->p.cfg->model_repository, r->root_error);
        return -3;
    }
    if (n < 0) {
        log_event("error", "model repository: out of memory while scanning");
        return -1;
    }
    int found = 0, unreadable = 0;
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && strcmp(c[j].name, c[i].name) == 0) j++;
        const char *name = c[i].name;
        if (only && strcmp(only, name) != 0) {
            i = j;
            continue;
        }
        found = 1;
        char model_dir[CONFIG_PATH_MAX], dir[CONFIG_PATH_MAX];
        candidate_paths(r, &c[i], model_dir, dir);
        if (c[i].unreadable[0]) { /* kept as it is: nothing loaded, nothing retired (scan said why) */
            if (only) {
                unreadable = 1;
                if (failed)
                    snprintf(failed, failed_len, "its directory %.300s cannot be read: %s", dir,
                             c[i].unreadable);
            }
            i = j;
            continue;
        }
        pthread_mutex_lock(&r->lock);
        model_entry *e = get_entry(r, name);
        if (e && want) e->wanted = 1;
        int wanted = e && (r->p.cfg->model_control_mode != MODEL_CONTROL_EXPLICIT || r->single || e->wanted);
        pthread_mutex_unlock(&r->lock);
        if (!e || !wanted) {
            i = j;
            continue;
        }
        server_config settings;
        version_policy pol;
        char err[1024], why[300];
        int bad = model_settings(r, model_dir, &settings, err, sizeof(err));
        /* the one parse of the policy, where it applies: config_set checked
         * its text from every source, so only a config built by hand fails */
        if (!bad && config_parse_version_policy(settings.version_policy, &pol, why, sizeof(why))) {
            snprintf(err, sizeof(err), "version-policy: %s", why);
            bad = 1;
        }
        if (bad) {
            pthread_mutex_lock(&r->lock);
            e = get_entry(r, name);
            int counted = 0;
            for (int k = i; e && k < j; k++) {
                unsigned long long sig = files_signature(r, &c[k]);
                version_status *vs = get_status(e, c[k].version);
                if (!vs || (vs->failed_signature == sig && !retry)) continue; /* said already */
                served_model *s = serving_version(e, c[k].version);
                /* a kept version's reason stays its own: it is never
                 * reloaded, so err written there outlived its cure (the
                 * versions its policy selects say err) */
                if (s && s->kept) continue;
                set_status(e, c[k].version, s ? MODEL_READY : MODEL_UNAVAILABLE, err);
                vs->failed_signature = sig;
                counted = 1;
            }
            if (counted) e->failures++;
            pthread_mutex_unlock(&r->lock);
            if (counted) log_event("error", "model %s failed to load: %s", name, err);
            if (failed && !failed[0]) snprintf(failed, failed_len, "%.900s", err);
            i = j;
            continue;
        }
        /* every version found, however many: latest:N judged against
         * the first 1024 (in readdir's order) kept the highest of those
         * and every higher one past them */
        int nv = j - i, *versions = malloc(sizeof(int) * (size_t)nv);
        if (!versions) {
            log_event("error", "model %s: out of memory while listing its versions", name);
            i = j;
            continue;
        }
        for (int k = i; k < j; k++) versions[k - i] = c[k].version;
        selection sel = {.c = c + i, .n = nv, .pol = &pol, .keep_from = latest_floor(&pol, versions, nv)};
        for (int k = i; k < j; k++) {
            if (!policy_keeps(&pol, sel.keep_from, c[k].version)) continue;
            pthread_mutex_lock(&r->lock);
            e = get_entry(r, name);
            served_model *s = e ? serving_version(e, c[k].version) : NULL;
            unsigned long long sig = files_signature(r, &c[k]);
            int fresh = s && s->signature == sig;
            /* a load that failed is not retried on the same files unless
             * asked (`retry`) */
            version_status *vs = e ? get_status(e, c[k].version) : NULL;
            int failed_before = !retry && vs && vs->failed_signature == sig;
            /* a stop waits for the load under way, not for the rest, and
             * retires nothing: the versions the files select were not all
             * loaded (a serving z/1 would go for a z/2 never loaded) */
            int stopping = r->stopping;
            pthread_mutex_unlock(&r->lock);
            if (stopping) {
                free(versions);
                free(c);
                return -2;
            }
            if (!fresh && !failed_before) load_and_install(r, &c[k], &sel, &settings, failed, failed_len);
        }
        /* versions serving that the policy or the files no longer select */
        pthread_mutex_lock(&r->lock);
        e = get_entry(r, name);
        if (e) retire_unselected(r, e, &sel);
        pthread_mutex_unlock(&r->lock);
        free(versions);
        i = j;
    }
    /* models gone from the repository */
    pthread_mutex_lock(&r->lock);
    for (int k = 0; k < r->nmodels; k++) {
        model_entry *e = &r->models[k];
        if (only && strcmp(only, e->name) != 0) continue;
        int at = 0;
        while (at < n && strcmp(c[at].name, e->name) != 0) at++;
        int end = at;
        while (end < n && strcmp(c[end].name, e->name) == 0) end++;
        if (at == n)
            while (e->nserving) {
                log_event("info", "model %s version %d: unloading (gone from the repository)", e->name,
                          e->serving[0]->version);
                retire(r, e, e->serving[0], 0);
            }
        if (at == end || !c[at].unreadable[0]) forget_gone_versions(r, e, c + at, end - at);
    }
    pthread_mutex_unlock(&r->lock);
    free(c);
    if (unreadable) return -3;
    return found || !only ? 0 : -1;
}

/* Frees the retired versions no request holds any more. Lock held (it is
 * let go around the frees: a batcher joins its threads). */
static void reap(repository *r) {
    for (;;) {
        served_model **p = &r->retired;
        while (*p && (*p)->refs > 0) p = &(*p)->next;
        served_model *m = *p;
        if (!m) return;
        *p = m->next;
        model_entry *e = find_entry(r, m->name, strlen(m->name));
        version_status *vs = e ? get_status(e, m->version) : NULL;
        /* a load of it again (memory_held reaps first) says LOADING */
        if (vs && vs->state != MODEL_LOADING && !serving_version(e, m->version))
            set_status(e, m->version, MODEL_UNAVAILABLE, "unloaded");
        pthread_mutex_unlock(&r->lock);
        log_event("info", "model %s version %d unloaded (its last request answered)", m->name, m->version);
        free_served(m);
        pthread_mutex_lock(&r->lock);
    }
}

static int retired_free(repository *r) {
    for (served_model *m = r->retired; m; m = m->next)
        if (m->refs == 0) return 1;
    return 0;
}

static void run_request(repository *r, control_req *q) {
    char msg[1024];
    int status = 200;
    if (q->load) {
        model_entry *e;
        char failed[1024];
        int synced = sync_models(r, q->name, 1, 1, failed, sizeof(failed));
        if (synced == -2) {
            status = 503;
            snprintf(msg, sizeof(msg), "the load of \"%s\" was cut short: server is shutting down", q->name);
        } else if (synced == -3) {
            status = 503;
            snprintf(msg, sizeof(msg), "failed to load \"%s\": %.700s", q->name, failed);
        } else if (synced) {
            status = 404;
            snprintf(msg, sizeof(msg), "failed to load \"%s\": no such model in the repository", q->name);
        } else {
            pthread_mutex_lock(&r->lock);
            e = find_entry(r, q->name, strlen(q->name));
            const char *why = "no version selected by its version policy";
            for (int i = 0; e && i < e->nstatus; i++)
                if (e->status[i].reason[0]) why = e->status[i].reason;
            if (failed[0]) { /* 200 only for a load that did what it was asked */
                status = 400;
                snprintf(msg, sizeof(msg), "failed to load \"%s\": %.700s", q->name, failed);
                if (e && !e->nserving) e->wanted = 0;
            } else if (e && e->nserving) {
                snprintf(msg, sizeof(msg), "model \"%s\" loaded", q->name);
            } else {
                /* not asked for any more: the daemon's readiness does not wait for it */
                if (e) e->wanted = 0;
                status = 400;
                snprintf(msg, sizeof(msg), "failed to load \"%s\": %.500s", q->name, why);
            }
            pthread_mutex_unlock(&r->lock);
        }
    } else {
        pthread_mutex_lock(&r->lock);
        model_entry *e = find_entry(r, q->name, strlen(q->name));
        if (!e) {
            status = 404;
            snprintf(msg, sizeof(msg), "failed to unload \"%s\": no such model is loaded", q->name);
        } else {
            e->wanted = 0;
            while (e->nserving) {
                log_event("info", "model %s version %d: unloading (asked)", e->name, e->serving[0]->version);
                retire(r, e, e->serving[0], 0);
            }
            snprintf(msg, sizeof(msg), "model \"%s\" unloaded", q->name);
        }
        pthread_mutex_unlock(&r->lock);
    }
    q->done(q->arg, status, msg);
}

static void *control_main(void *arg) {
    repository *r = arg;
    int64_t next_poll = monotonic_ns() + (int64_t)r->p.cfg->repository_poll_s * 1000000000;
    int poll_mode = r->p.cfg->model_control_mode == MODEL_CONTROL_POLL && !r->single;
    pthread_mutex_lock(&r->lock);
    while (!r->stopping) {
        if (r->reqs) {
            control_req *q = r->reqs;
            r->reqs = q->next;
            if (!r->reqs) r->reqs_tail = NULL;
            r->busy = 1;
            pthread_mutex_unlock(&r->lock);
            run_request(r, q);
            free(q);
            pthread_mutex_lock(&r->lock);
            r->busy = 0;
            continue;
        }
        int64_t now = monotonic_ns();
        if (r->rescan || (poll_mode && now >= next_poll)) {
            /* SIGHUP: failed loads are tried again, and its end is logged
             * (a poll does neither: it comes every repository-poll-s) */
            int asked = r->rescan;
            r->rescan = 0;
            r->busy = 1;
            pthread_mutex_unlock(&r->lock);
            sync_models(r, NULL, 0, asked, NULL, 0);
            if (asked) log_event("info", "rescan done");
            pthread_mutex_lock(&r->lock);
            r->busy = 0;
            next_poll = monotonic_ns() + (int64_t)r->p.cfg->repository_poll_s * 1000000000;
            continue;
        }
        if (retired_free(r)) {
            reap(r);
            continue;
        }
        if (poll_mode) {
            struct timespec ts = {(time_t)(next_poll / 1000000000), (long)(next_poll % 1000000000)};
            pthread_cond_timedwait(&r->wake, &r->lock, &ts);
        } else {
            pthread_cond_wait(&r->wake, &r->lock);
        }
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* --- the API --------------------------------------------------------------------- */

repository *repository_new(const repository_params *p, char *err, size_t errlen) {
    if (p->cfg->model_repository[0] && !is_dir(p->cfg->model_repository)) {
        snprintf(err, errlen, "model-repository: %s is not a directory", p->cfg->model_repository);
        return NULL;
    }
    const char *why = p->cfg->model_repository[0] ? NULL : repository_name_problem(p->cfg->model_name);
    if (why) {
        snprintf(err, errlen,
                 "model-name: \"%.300s\" cannot be served: %s (set model-name to UTF-8 without control "
                 "characters, '/' or ',', not ., .. or stats)",
                 p->cfg->model_name, why);
        return NULL;
    }
    repository *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->p = *p;
    r->single = p->cfg->model_repository[0] == '\0';
    /* the bound load_version's workspaces are checked against (memory_bytes) */
    metrics_set_memory_limit(p->mx, vit_memory_bound((size_t)p->memory_limit, NULL));
    r->gate = forward_gate_new(p->cpu_limit);
    if (!r->gate) {
        free(r);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&r->wake, &a);
    pthread_condattr_destroy(&a);
    return r;
}

int repository_start(repository *r, char *err, size_t errlen) {
    const server_config *cfg = r->p.cfg;
    if (!r->single && cfg->model_control_mode == MODEL_CONTROL_EXPLICIT) {
        /* the names of load-model are wanted; the others wait for the API */
        candidate *c;
        int n = scan(r, &c);
        size_t len;
        /* A name no model has is a typo or a missing model: not served,
         * and readiness would not wait for it (Triton refuses to start) */
        const char *absent = n >= 0 ? named_but_absent(cfg->load_model, c, n, &len) : NULL;
        if (absent) {
            int w = snprintf(err, errlen,
                             "load-model: model-repository %.300s has no model \"%.*s\" (models there:",
                             cfg->model_repository, (int)(len > 255 ? 255 : len), absent);
            for (int i = 0; i < n && w > 0 && (size_t)w < errlen; i++)
                if (i == 0 || strcmp(c[i].name, c[i - 1].name))
                    w += snprintf(err + w, errlen - (size_t)w, " %s", c[i].name);
            if (w > 0 && (size_t)w < errlen)
                w += snprintf(err + w, errlen - (size_t)w, "%s)", n ? "" : " none");
            /* "a,b" names a and b: a directory so named was left out, say why */
            pthread_mutex_lock(&r->lock);
            for (int i = 0; i < r->nbad_names && w > 0 && (size_t)w < errlen; i++)
                w += snprintf(err + w, errlen - (size_t)w, "%s\"%s\" (%s)",
                              i ? ", " : "; not served: ", r->bad_names[i].name, r->bad_names[i].why);
            pthread_mutex_unlock(&r->lock);
            if (n > 0) free(c);
            return -2;
        }
        pthread_mutex_lock(&r->lock);
        for (int i = 0; i < n; i++) {
            model_entry *e = get_entry(r, c[i].name);
            if (e && named_at_start(cfg->load_model, c[i].name)) e->wanted = 1;
        }
        pthread_mutex_unlock(&r->lock);
        if (n > 0) free(c);
    }
    if (sync_models(r, NULL, 0, 0, NULL, 0) == -3) { /* nothing to serve from: not a start */
        snprintf(err, errlen, "model-repository: cannot read %s: %s", cfg->model_repository, r->root_error);
        return -1;
    }
    pthread_mutex_lock(&r->lock);
    r->started = 1;
    int failed = r->single && (r->nmodels == 0 || r->models[0].nserving == 0);
    load_failure failure = LOAD_BAD_MODEL;
    if (failed) {
        const version_status *vs = r->nmodels && r->models[0].nstatus ? &r->models[0].status[0] : NULL;
        snprintf(err, errlen, "%s", vs ? vs->reason : "not loaded");
        if (vs) failure = vs->failure;
    }
    pthread_mutex_unlock(&r->lock);
    if (failed) return failure == LOAD_REFUSED ? -3 : failure == LOAD_BAD_SETTING ? -2 : -1;
    /* Without it SIGHUP and poll would change nothing, silently, and a load
     * request would be told "shutting down": a start under a thread limit
     * (RLIMIT_NPROC, pids.max) went on so. A start-up failure instead. */
    int rc = pthread_create(&r->thread, NULL, control_main, r);
    if (rc) {
        snprintf(err, errlen, "cannot start the model control thread: %s", strerror(rc));
        return -3;
    }
    r->thread_started = 1;
    return 0;
}

int repository_ready(repository *r) {
    pthread_mutex_lock(&r->lock);
    int ready = r->started;
    for (int i = 0; ready && i < r->nmodels; i++) {
        const model_entry *e = &r->models[i];
        int asked = !r->single && r->p.cfg->model_control_mode == MODEL_CONTROL_EXPLICIT ? e->wanted : 1;
        if (asked && e->nserving == 0) ready = 0;
    }
    pthread_mutex_unlock(&r->lock);
    return ready;
}

served_model *repository_acquire(repository *r, const char *name, size_t len, const char *version,
                                 int *status, char *err, size_t errlen) {
    served_model *m = NULL;
    pthread_mutex_lock(&r->lock);
    model_entry *e = NULL;
    if (name) {
        e = find_entry(r, name, len);
    } else if (r->single || r->p.cfg->model_name[0] == '\0') {
        for (int i = 0; i < r->nmodels && !e; i++)
            if (r->models[i].nserving) e = &r->models[i];
    } else {
        e = find_entry(r, r->p.cfg->model_name, strlen(r->p.cfg->model_name));
    }
    if (!r->started) {
        *status = 503;
        snprintf(err, errlen, "the model is loading");
        goto out;
    }
    if (!e || (name && e->nserving == 0 && e->nstatus == 0)) {
        *status = name ? 404 : 503;
        if (name) snprintf(err, errlen, "unknown model \"%.*s\"", (int)(len > 200 ? 200 : len), name);
        else snprintf(err, errlen, "no model is loaded");
        goto out;
    }
    if (version && version[0]) {
        char *end;
        long v = strtol(version, &end, 10);
        /* a version is its number in decimal, as its directory's name:
         * "+1", " 1" and "01" name none (strtol takes them) */
        int decimal = version[0] >= '1' && version[0] <= '9' && !*end;
        if (!decimal || v > 1000000000 || !(m = serving_version(e, (int)v))) {
            int known = 0;
            for (int i = 0; decimal && i < e->nstatus; i++)
                known |= e->status[i].version == v && e->status[i].state != MODEL_UNAVAILABLE;
            *status = known ? 503 : 404;
            snprintf(err, errlen,
                     known ? "version \"%s\" of model \"%s\" is not ready"
                           : "unknown version \"%s\" of model \"%s\"",
                     version, e->name);
            if (!known && e->nserving) {
                size_t n = strlen(err);
                snprintf(err + n, errlen - n, " (ready: %s)", e->serving[e->nserving - 1]->version_text);
            }
            goto out;
        }
    } else if (e->nserving) {
        m = e->serving[e->nserving - 1];
    } else {
        *status = 503;
        snprintf(err, errlen, "model \"%s\" has no ready version", e->name);
        goto out;
    }
    m->refs++;
out:
    pthread_mutex_unlock(&r->lock);
    return m;
}

char *repository_model_json(repository *r, const served_model *m) {
    char *json = NULL;
    pthread_mutex_lock(&r->lock);
    model_entry *e = find_entry(r, m->name, strlen(m->name));
    int n = e ? e->nserving : 0;
    /* every ready version, highest first (a copy of 64 at most left the
     * others out of a model served under "all"); under the lock: no
     * version is retired while its text is read */
    const char **versions = malloc(sizeof(*versions) * (size_t)(n ? n : 1));
    if (versions) {
        for (int i = 0; i < n; i++) versions[i] = e->serving[n - 1 - i]->version_text;
        json = v2_model_json(&m->pm, versions, n);
    }
    pthread_mutex_unlock(&r->lock);
    free(versions);
    return json;
}

char *repository_v1_models_json(repository *r, const served_model *first) {
    pthread_mutex_lock(&r->lock);
    const proto_model **pms = malloc(sizeof(*pms) * (size_t)(r->nmodels + 1));
    int n = 0;
    if (pms && first) pms[n++] = &first->pm;
    for (int i = 0; pms && i < r->nmodels; i++)
        if (r->models[i].nserving && (!first || strcmp(r->models[i].name, first->name) != 0))
            pms[n++] = &r->models[i].serving[r->models[i].nserving - 1]->pm;
    /* under the lock: no version is retired while its metadata is read */
    char *json = pms ? v1_models_json(pms, n) : NULL;
    pthread_mutex_unlock(&r->lock);
    free(pms);
    return json;
}

int repository_acquire_all(repository *r, const served_model *m, served_model ***out) {
    *out = NULL;
    pthread_mutex_lock(&r->lock);
    int n = 0;
    for (int i = 0; i < r->nmodels; i++)
        if (!m || strcmp(r->models[i].name, m->name) == 0) n += r->models[i].nserving;
    served_model **list = malloc(sizeof(*list) * (size_t)(n ? n : 1));
    if (!list) {
        pthread_mutex_unlock(&r->lock);
        return -1;
    }
    n = 0;
    for (int i = 0; i < r->nmodels; i++) {
        model_entry *e = &r->models[i];
        if (m && strcmp(e->name, m->name) != 0) continue;
        for (int k = e->nserving - 1; k >= 0; k--) {
            e->serving[k]->refs++;
            list[n++] = e->serving[k];
        }
    }
    pthread_mutex_unlock(&r->lock);
    *out = list;
    return n;
}

void repository_release(repository *r, served_model *m) {
    if (!m) return;
    pthread_mutex_lock(&r->lock);
    if (--m->refs == 0 && m->retired) pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->lock);
}

void repository_retain(repository *r, served_model *m) {
    pthread_mutex_lock(&r->lock);
    m->refs++;
    pthread_mutex_unlock(&r->lock);
}

void repository_rescan(repository *r) {
    pthread_mutex_lock(&r->lock);
    r->rescan = 1;
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->lock);
}

int repository_control(repository *r, const char *name, size_t len, int load, repository_done_fn done,
                       void *arg, char *err, size_t errlen) {
    if (r->single || r->p.cfg->model_control_mode != MODEL_CONTROL_EXPLICIT) {
        snprintf(err, errlen, "explicit model %s of \"%.*s\" is not allowed: model-control-mode is %s%s",
                 load ? "load" : "unload", (int)(len > 200 ? 200 : len), name,
                 r->single                                            ? "none (one --model)"
                 : r->p.cfg->model_control_mode == MODEL_CONTROL_POLL ? "poll"
                                                                      : "none",
                 " (explicit allows it)");
        return 400;
    }
    if (len == 0 || len >= sizeof(((control_req *)0)->name) || memchr(name, '/', len) || name[0] == '.') {
        snprintf(err, errlen, "model name \"%.*s\" is not a directory name", (int)(len > 200 ? 200 : len),
                 name);
        return 400;
    }
    char named[sizeof(((control_req *)0)->name)];
    snprintf(named, sizeof(named), "%.*s", (int)len, name);
    const char *why = repository_name_problem(named);
    if (why) { /* a scan leaves such a directory out: not a 404, why */
        snprintf(err, errlen, "model name \"%.200s\" cannot be served: %s", named, why);
        return 400;
    }
    if (!done) return 0; /* the route's check: queued once the body is read */
    control_req *q = calloc(1, sizeof(*q));
    if (!q) {
        snprintf(err, errlen, "out of memory");
        return 500;
    }
    snprintf(q->name, sizeof(q->name), "%.*s", (int)len, name);
    q->load = load;
    q->done = done;
    q->arg = arg;
    pthread_mutex_lock(&r->lock);
    if (r->stopping || !r->thread_started) {
        pthread_mutex_unlock(&r->lock);
        free(q);
        snprintf(err, errlen, "server is shutting down");
        return 503;
    }
    if (r->reqs_tail) r->reqs_tail->next = q;
    else r->reqs = q;
    r->reqs_tail = q;
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

/* --- what is reported ---------------------------------------------------------- */

/* A model name or a reason as a JSON string or a Prometheus label value:
 * \, " and newlines escaped, other control bytes and bytes that are not
 * UTF-8 replaced (a reason may quote a file's bytes); UTF-8 kept as it is,
 * so that a name reads as it is served ("é" was "??", and two names could
 * become one series). */
static void put_escaped(text *t, const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)s[i];
        size_t len = proto_utf8_length((const unsigned char *)s + i, n - i);
        if (ch == '\\' || ch == '"') text_put(t, "\\%c", ch);
        else if (ch == '\n') text_put(t, "\\n");
        else if (ch < 0x20 || ch == 0x7f || len == 0) text_put(t, "?");
        else text_put(t, "%.*s", (int)len, s + i);
        i += len ? len : 1;
    }
}

char *repository_index_json(repository *r) {
    text t = {0};
    text_put(&t, "[");
    int first = 1, b = 0;
    pthread_mutex_lock(&r->lock);
    /* both lists are in name order (get_entry, the scan's qsort): merged,
     * the index is too, as Triton's */
    for (int i = 0; i <= r->nmodels; i++) {
        for (; b < r->nbad_names && (i == r->nmodels || strcmp(r->bad_names[b].name, r->models[i].name) < 0);
             b++) {
            text_put(&t, "%s{\"name\":\"", first ? "" : ",");
            put_escaped(&t, r->bad_names[b].name);
            text_put(&t, "\",\"version\":\"\",\"state\":\"UNAVAILABLE\",\"reason\":\"not served: ");
            put_escaped(&t, r->bad_names[b].why);
            text_put(&t, "\"}");
            first = 0;
        }
        if (i == r->nmodels) break;
        const model_entry *e = &r->models[i];
        for (int k = 0; k < e->nstatus || (k == 0 && e->nstatus == 0); k++) {
            const version_status *s = e->nstatus ? &e->status[k] : NULL;
            text_put(&t, "%s{\"name\":\"", first ? "" : ",");
            put_escaped(&t, e->name);
            if (s) {
                text_put(&t, "\",\"version\":\"%d\",\"state\":\"%s\",\"reason\":\"", s->version,
                         model_state_name(s->state));
                put_escaped(&t, s->reason);
                text_put(&t, "\"}");
            } else {
                text_put(&t, "\",\"version\":\"\",\"state\":\"UNAVAILABLE\",\"reason\":\"not loaded\"}");
            }
            first = 0;
        }
    }
    pthread_mutex_unlock(&r->lock);
    text_put(&t, "]");
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    return t.data;
}

void repository_gauges(repository *r, int *queue_depth, int *in_flight, int *arriving) {
    *queue_depth = *in_flight = *arriving = 0;
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->nmodels; i++)
        for (int k = 0; k < r->models[i].nserving; k++) {
            batcher *b = r->models[i].serving[k]->batcher;
            *queue_depth += batcher_queue_depth(b);
            *in_flight += batcher_in_flight(b);
            *arriving += batcher_arriving(b);
        }
    for (served_model *m = r->retired; m; m = m->next) {
        *queue_depth += batcher_queue_depth(m->batcher);
        *in_flight += batcher_in_flight(m->batcher);
        *arriving += batcher_arriving(m->batcher);
    }
    pthread_mutex_unlock(&r->lock);
}

char *repository_metrics(repository *r, size_t *len) {
    text t = {0};
    text_put(&t, "# HELP comrope_model_state Each model version's state: 1 for the state it is in.\n"
                 "# TYPE comrope_model_state gauge\n");
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->nmodels; i++) {
        const model_entry *e = &r->models[i];
        for (int k = 0; k < e->nstatus; k++)
            for (int st = 0; st < MODEL_STATE_COUNT; st++) {
                text_put(&t, "comrope_model_state{model=\"");
                put_escaped(&t, e->name);
                text_put(&t, "\",version=\"%d\",state=\"%s\"} %d\n", e->status[k].version,
                         model_state_name(st), e->status[k].state == st);
            }
    }
    text_put(&t, "# HELP comrope_model_load_failures_total Loads of a model that failed (the loaded copy, if "
                 "any, went on serving).\n# TYPE comrope_model_load_failures_total counter\n");
    for (int i = 0; i < r->nmodels; i++) {
        text_put(&t, "comrope_model_load_failures_total{model=\"");
        put_escaped(&t, r->models[i].name);
        text_put(&t, "\"} %llu\n", r->models[i].failures);
    }
    pthread_mutex_unlock(&r->lock);
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    *len = t.len;
    return t.data;
}

/* Stops the control thread; requests it had not run are answered 503. */
static void stop_control(repository *r) {
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    pthread_cond_broadcast(&r->wake);
    control_req *q = r->reqs;
    r->reqs = r->reqs_tail = NULL;
    int busy = r->busy;
    pthread_mutex_unlock(&r->lock);
    /* a load cannot be interrupted: the stop waits for it (the drain's
     * bound runs meanwhile, from the signal), and says so rather than seem
     * to hang */
    if (busy && r->thread_started)
        log_event("info", "stopping: waiting for the model load or unload under way to finish");
    if (r->thread_started) pthread_join(r->thread, NULL);
    r->thread_started = 0;
    while (q) {
        control_req *next = q->next;
        q->done(q->arg, 503, "server is shutting down");
        free(q);
        q = next;
    }
}

int repository_drain(repository *r, int timeout_s) {
    /* from the signal: the batchers work on while a load under way ends */
    int64_t deadline = monotonic_ns() + (int64_t)timeout_s * 1000000000;
    stop_control(r);
    /* The registry no longer changes: the control thread is gone. One
     * deadline for all (not whole seconds left each: a batcher after one
     * that took all but 0.9 s would have had none). */
    int left = 0;
    for (int i = 0; i < r->nmodels; i++)
        for (int k = 0; k < r->models[i].nserving; k++)
            left += batcher_drain(r->models[i].serving[k]->batcher, deadline);
    for (served_model *m = r->retired; m; m = m->next) left += batcher_drain(m->batcher, deadline);
    return left;
}

void repository_stop(repository *r) {
    stop_control(r);
    for (int i = 0; i < r->nmodels; i++)
        for (int k = 0; k < r->models[i].nserving; k++) batcher_stop(r->models[i].serving[k]->batcher);
    for (served_model *m = r->retired; m; m = m->next) batcher_stop(m->batcher);
}

void repository_free(repository *r) {
    if (!r) return;
    repository_stop(r);
    for (int i = 0; i < r->nmodels; i++) {
        for (int k = 0; k < r->models[i].nserving; k++) free_served(r->models[i].serving[k]);
        free(r->models[i].serving);
        free(r->models[i].status);
    }
    free(r->models);
    free(r->unreadable);
    free(r->bad_names);
    while (r->retired) {
        served_model *m = r->retired;
        r->retired = m->next;
        free_served(m);
    }
    forward_gate_free(r->gate); /* after the batchers: their workers are gone */
    pthread_cond_destroy(&r->wake);
    pthread_mutex_destroy(&r->lock);
    free(r);
}
