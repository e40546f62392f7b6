/* replication._dataplane: the FUSE layer's hot requests in C (issue 19 item 3).
 *
 * Why: a profile of the mount under database-like load (bench/fuse_ceiling.py,
 * docs/DESIGN.md "The native data plane") shows the time going to Python per FUSE
 * request, not to round trips: every read and attribute request crossed ctypes and
 * took the GIL in mfusepy to do one pread or fstat. Here those requests are served
 * by C functions that libfuse's worker threads call directly, without the GIL.
 *
 * What is here:
 *  - read = pread on the handle's descriptor (the Python layer uses the descriptor
 *    itself as the file handle); getattr = fstat on the handle or fstatat under the
 *    served directory.
 *  - write, when streamed writes are on (barrier durability): the local pwrite, then
 *    a record (path, offset, bytes written, the file's times) appended to a queue
 *    that Python drains into the replication channel (replication/native_fuse.py,
 *    NativeWrites). Only when every activity-log key the write touches is pinned
 *    here by Python (it was made durably active there); otherwise, and for a
 *    path-less or O_SYNC/O_DSYNC write, the request goes to Python's write, which
 *    applies the activity-log rule and pins the keys for the next writes.
 *  - open (not O_TRUNC/O_CREAT), and release of the handles it opened while Python
 *    has not adopted them (see dp_open). No flush at all (fuse_fs.ReplicatedFS.release).
 * Every other request stays in Python (replication/fuse_fs.py), and so do the rules:
 * channel order (the queue lock below is taken by Python around its own changes, and
 * its exclusive ordering lock holds the write lock below), the activity log (what is
 * pinned, and when a pin ends), barriers and peer loss.
 *
 * The functions are handed to Python as addresses (``addresses()``) and put into
 * libfuse's operations table in place of mfusepy's (replication/native_fuse.py).
 *
 * The primary's mount is served on libfuse's low-level API by default: _lowlevel.c,
 * included at the end of this file (one translation unit: it shares the write queue,
 * the pins, the gates and the counters above, so there is one C write path).
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define FUSE_USE_VERSION 312
#include <fuse.h>
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The served directory, opened before the mount covered it (-1: not set). */
static atomic_int root_fd = -1;
/* Requests served here (for tests and the bench: the C path was taken). */
static atomic_ullong n_read, n_getattr, n_write, n_write_python;
static atomic_ullong n_pump_unparked;   /* times a record woke the parked pump */
static atomic_int tree_durable = 0;     /* see dp_fsync */
static PyObject *ll_bridge;              /* the low-level API's Python half (_lowlevel.c) */

/* ---- streamed writes ------------------------------------------------------------ */

typedef int (*write_fn)(const char *, const char *, size_t, off_t, struct fuse_file_info *);

/* mfusepy's write (into Python), for what is not served here. */
static write_fn python_write = NULL;
static atomic_int writes_on = 0;
/* A write applied locally that could not be queued (errno): C writes stop, and Python
 * fails every later change (``failure()``): the copies would differ otherwise. */
static atomic_int write_failure = 0;
static int need_pins = 1;          /* 0: no activity log (a replicator without one) */
static long long region_size = 1 << 20;
#define NOTE_REGION (-1LL)        /* activity_log.NOTE: the whole path */

/* Held shared by a C write for its pwrite and queueing; held exclusively by a Python
 * thread that holds the ordering lock exclusively (ordering_lock.OrderingLock hooks).
 * Writers preferred: a namespace change is not starved by a stream of writes. */
static pthread_rwlock_t write_gate;
/* Guards the queue and the pins. A C write holds it from its pwrite to its queueing,
 * and Python holds it around its own data changes and their submission: the queue's
 * order is the order the changes were made to the local directory. */
static pthread_mutex_t queue_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cv = PTHREAD_COND_INITIALIZER;   /* writers waiting for room */
/* The pump waits here for a batch: woken by a full batch, or, when it is parked (no
 * record came for a while), by the first record. While writes keep coming it wakes
 * once per linger period, not per write: a barrier drains the queue itself, so a
 * wake-up per write (and the Python lock it takes) bought nothing but CPU. */
static pthread_cond_t pump_cv = PTHREAD_COND_INITIALIZER;
static int pump_parked = 0;       /* under queue_mu */
#define BATCH_RECORDS 256
#define BATCH_BYTES (1u << 20)

typedef struct record {
    struct record *next;
    char *path;                   /* relative ("a/b") */
    long long offset;
    long long atime_ns, mtime_ns;
    size_t len;
    char data[];
} record;

static record *q_head = NULL, *q_tail = NULL;
static size_t q_len = 0, q_bytes = 0;
#define QUEUE_BYTES_MAX (64u << 20)   /* writers wait beyond this (Python drains) */

/* Pinned activity-log keys: (path, region) -> last use. A chained hash table. */
typedef struct pin {
    struct pin *next;
    long long region;
    double last_use;
    char path[];
} pin;

static pin **pins = NULL;
static size_t n_buckets = 0, n_pins = 0;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t hash_key(const char *path, long long region) {
    uint64_t h = 1469598103934665603ULL;            /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)path; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return (h ^ (uint64_t)region) * 1099511628211ULL;
}

static pin *pin_find(const char *path, long long region) {
    if (n_buckets == 0)
        return NULL;
    for (pin *p = pins[hash_key(path, region) % n_buckets]; p; p = p->next)
        if (p->region == region && strcmp(p->path, path) == 0)
            return p;
    return NULL;
}

static int pins_grow(void) {
    size_t nb = n_buckets ? n_buckets * 2 : 1024;
    pin **nt = calloc(nb, sizeof *nt);
    if (nt == NULL)
        return -1;
    for (size_t i = 0; i < n_buckets; i++)
        for (pin *p = pins[i], *next; p; p = next) {
            next = p->next;
            size_t b = hash_key(p->path, p->region) % nb;
            p->next = nt[b];
            nt[b] = p;
        }
    free(pins);
    pins = nt;
    n_buckets = nb;
    return 0;
}

/* Caller holds queue_mu. The regions of [offset, offset+len) of path are all pinned
 * (or the path's NOTE key is); their last use is now. */
static int pinned_and_touched(const char *path, long long offset, size_t len) {
    if (len == 0)
        return 1;
    double t = now_s();
    pin *note = pin_find(path, NOTE_REGION);
    if (note != NULL) {
        note->last_use = t;
        return 1;
    }
    /* one lookup per region (those found before a missing one are touched too: they
     * stay pinned a little longer, which only keeps them covered longer) */
    long long first = offset / region_size, last = (offset + (long long)len - 1) / region_size;
    for (long long r = first; r <= last; r++) {
        pin *p = pin_find(path, r);
        if (p == NULL)
            return 0;
        p->last_use = t;
    }
    return 1;
}

/* The C write: the local pwrite and its record queued, when the activity log allows
 * (every key the write touches pinned). rel: the file's path, or NULL: the path of
 * what fd is open on, found under the write gate (the low-level API: a rename holds
 * the gate, see _lowlevel.c). *to_python: not served here (nothing was done). */
static int fd_rel_cached(int fd, char *out, size_t cap);
static void names_changing(void);

static int c_write(const char *rel, int fd, const char *buf, size_t size, off_t off,
                   int *to_python) {
    char found[PATH_MAX];
    *to_python = 0;
    pthread_rwlock_rdlock(&write_gate);
    if (rel == NULL) {
        if (fd_rel_cached(fd, found, sizeof found) != 1 || found[0] == '\0') {
            pthread_rwlock_unlock(&write_gate);
            *to_python = 1;
            return -1;
        }
        rel = found;
    }
    size_t plen = strlen(rel);
    pthread_mutex_lock(&queue_mu);
    while (q_bytes > QUEUE_BYTES_MAX && atomic_load(&writes_on))
        pthread_cond_wait(&queue_cv, &queue_mu);
    if (!atomic_load(&writes_on) || (need_pins && !pinned_and_touched(rel, off, size))) {
        pthread_mutex_unlock(&queue_mu);
        pthread_rwlock_unlock(&write_gate);
        *to_python = 1;
        return -1;
    }
    ssize_t n = pwrite(fd, buf, size, off);
    int err = n < 0 ? errno : 0;
    struct stat st;
    if (n > 0 && fstat(fd, &st) < 0)
        err = errno;          /* written, not describable: handled as not queued below */
    if (n > 0 && err == 0) {
        record *r = malloc(sizeof *r + (size_t)n);
        char *p = malloc(plen + 1);
        if (r == NULL || p == NULL) {
            free(r);
            free(p);
            err = ENOMEM;
        } else {
            memcpy(p, rel, plen + 1);
            memcpy(r->data, buf, (size_t)n);
            r->next = NULL;
            r->path = p;
            r->offset = (long long)off;
            r->len = (size_t)n;
            r->atime_ns = (long long)st.st_atim.tv_sec * 1000000000LL + st.st_atim.tv_nsec;
            r->mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
            if (q_tail)
                q_tail->next = r;
            else
                q_head = r;
            q_tail = r;
            q_len++;
            q_bytes += (size_t)n;
            atomic_store(&tree_durable, 0);   /* before this write is answered */
            if (q_len == 1 && pump_parked) {
                pump_parked = 0;    /* one signal is enough */
                atomic_fetch_add_explicit(&n_pump_unparked, 1, memory_order_relaxed);
                pthread_cond_signal(&pump_cv);
            } else if (q_len == BATCH_RECORDS
                       || (q_bytes >= BATCH_BYTES && q_bytes - (size_t)n < BATCH_BYTES)) {
                pthread_cond_signal(&pump_cv);
            }
        }
    }
    if (n > 0 && err != 0) {
        /* The write is on the local disk and will never reach the channel: stop
         * here (the key stays pinned, so the activity log covers the region). */
        atomic_store(&write_failure, err);
        atomic_store(&writes_on, 0);
        atomic_store(&tree_durable, 0);
        pthread_cond_broadcast(&pump_cv);
    }
    pthread_mutex_unlock(&queue_mu);
    pthread_rwlock_unlock(&write_gate);
    atomic_fetch_add_explicit(&n_write, 1, memory_order_relaxed);
    return err ? -err : (int)n;
}

static int dp_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    int to_python = 1, r = -EIO;
    if (atomic_load(&writes_on) && path != NULL && path[1] != '\0'
            && !(fi->flags & (O_SYNC | O_DSYNC)))
        r = c_write(path + 1, (int)fi->fh, buf, size, off, &to_python);
    if (to_python) {
        atomic_fetch_add_explicit(&n_write_python, 1, memory_order_relaxed);
        return python_write(path, buf, size, off, fi);
    }
    return r;
}

/* "/a/b" -> "a/b"; "/" -> "." */
static const char *rel_of(const char *path) {
    return path[1] == '\0' ? "." : path + 1;
}

static int dp_read(const char *path, char *buf, size_t size, off_t off,
                   struct fuse_file_info *fi) {
    (void)path;
    atomic_fetch_add_explicit(&n_read, 1, memory_order_relaxed);
    ssize_t n = pread((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int dp_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    atomic_fetch_add_explicit(&n_getattr, 1, memory_order_relaxed);
    int r;
    if (fi != NULL) {
        r = fstat((int)fi->fh, st);
    } else {
        int root = atomic_load(&root_fd);
        if (path == NULL)
            return -ESTALE;         /* as fuse_fs.ReplicatedFS.getattr */
        if (root < 0)
            return -EIO;
        r = fstatat(root, rel_of(path), st, AT_SYMLINK_NOFOLLOW);
    }
    return r < 0 ? -errno : 0;
}

/* Opens served here: the descriptor opened under the served directory, with the
 * flags Python's open would use (fuse_fs._local_flags), becomes the handle. Python
 * never learns of it unless it needs it: it then adopts it (``adopt``: the open
 * flags, and the descriptor is Python's from then on, closed by its release). A
 * handle C opened and nobody adopted is released (closed) here. Why: PostgreSQL
 * fsyncs every file of its data directory when it starts after a crash, opening each
 * twice; the Python open and release cost ~80 us each there. Not here: O_TRUNC and
 * O_CREAT (they change the file), a writable open on a read-only mount (EROFS from
 * Python), and a descriptor beyond the table. */
#define FD_TABLE 65536
static atomic_int c_opened[FD_TABLE];      /* open flags + 1 while C owns it, else 0 */
static atomic_int opens_writable = 0;      /* the mount is not read-only */
static atomic_ullong n_open, n_release, n_fsync;
typedef int (*fi_fn)(const char *, struct fuse_file_info *);
typedef int (*fsync_fn)(const char *, int, struct fuse_file_info *);
static fi_fn python_open, python_release;
static fsync_fn python_fsync;
#define STRIP_FLAGS (O_APPEND | O_DIRECT | O_CREAT | O_EXCL | O_NOCTTY)

static int dp_open(const char *path, struct fuse_file_info *fi) {
    int flags = fi->flags;
    int root = atomic_load(&root_fd);
    if (python_open == NULL)
        return -EIO;
    if (path == NULL || root < 0 || (flags & (O_TRUNC | O_CREAT))
            || ((flags & O_ACCMODE) != O_RDONLY && !atomic_load(&opens_writable)))
        return python_open(path, fi);
    int fd = openat(root, rel_of(path), (flags & ~STRIP_FLAGS) | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    if (fd >= FD_TABLE) {
        close(fd);
        return python_open(path, fi);
    }
    atomic_store(&c_opened[fd], flags + 1);
    fi->fh = (uint64_t)fd;
    atomic_fetch_add_explicit(&n_open, 1, memory_order_relaxed);
    return 0;
}

static int c_owns(const struct fuse_file_info *fi) {
    return fi != NULL && fi->fh < FD_TABLE && atomic_load(&c_opened[fi->fh]) != 0;
}

static int dp_release(const char *path, struct fuse_file_info *fi) {
    /* no other request of this handle is in flight: the kernel releases it last */
    if (fi != NULL && fi->fh < FD_TABLE && atomic_exchange(&c_opened[fi->fh], 0) != 0) {
        close((int)fi->fh);
        atomic_fetch_add_explicit(&n_release, 1, memory_order_relaxed);
        return 0;
    }
    return python_release != NULL ? python_release(path, fi) : -EIO;
}

/* tree_durable is 1 while every change made through this mount is durable on the peer
 * too: set by Python (``tree_durable``) when its barrier found the whole tree covered by
 * the receiver's durable mark, with nothing queued here; cleared by every C write it
 * queues and by Python at every change it submits. While set, an fsync of a handle C
 * owns is the local sync alone, as the barrier Python would answer from the mark (a
 * crashed PostgreSQL's next start fsyncs every file of its data directory). */
static int dp_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    if (atomic_load(&tree_durable) && c_owns(fi)) {
        atomic_fetch_add_explicit(&n_fsync, 1, memory_order_relaxed);
        return (datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh)) < 0 ? -errno : 0;
    }
    return python_fsync != NULL ? python_fsync(path, datasync, fi) : -EIO;
}

static void lock_queue(void);

/* tree_durable(on, locked) -> bool: on is taken only with nothing queued (a queued
 * record is a change the peer does not have); off always. locked: the caller holds the
 * queue lock (``lock``). Returns the flag as set. */
static PyObject *py_tree_durable(PyObject *self, PyObject *args) {
    (void)self;
    int on, locked;
    if (!PyArg_ParseTuple(args, "pp", &on, &locked))
        return NULL;
    if (!on) {
        atomic_store(&tree_durable, 0);
        Py_RETURN_FALSE;
    }
    if (!locked)
        lock_queue();
    int set = q_head == NULL && !atomic_load(&write_failure);
    atomic_store(&tree_durable, set);
    if (!locked)
        pthread_mutex_unlock(&queue_mu);
    return PyBool_FromLong(set);
}

/* adopt(fd) -> flags or -1: the open flags of a handle C opened, now Python's (its
 * release goes to Python, which closes it); -1: C did not open it. */
static PyObject *py_adopt(PyObject *self, PyObject *arg) {
    (void)self;
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd >= FD_TABLE)
        return PyLong_FromLong(-1);
    int v = atomic_exchange(&c_opened[fd], 0);
    return PyLong_FromLong(v ? v - 1 : -1);
}

/* set_python_ops(open, release, fsync, writable): mfusepy's callbacks, for what C
 * does not serve; writable: writable opens may be served here. */
static PyObject *py_set_python_ops(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long o, r, y;
    int writable;
    if (!PyArg_ParseTuple(args, "KKKp", &o, &r, &y, &writable))
        return NULL;
    python_open = (fi_fn)(uintptr_t)o;
    python_release = (fi_fn)(uintptr_t)r;
    python_fsync = (fsync_fn)(uintptr_t)y;
    atomic_store(&opens_writable, writable);
    Py_RETURN_NONE;
}

static PyObject *py_set_root(PyObject *self, PyObject *arg) {
    (void)self;
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    atomic_store(&root_fd, (int)fd);
    Py_RETURN_NONE;
}

static PyObject *py_addresses(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K}",
                         "read", (unsigned long long)(uintptr_t)&dp_read,
                         "getattr", (unsigned long long)(uintptr_t)&dp_getattr,
                         "write", (unsigned long long)(uintptr_t)&dp_write,
                         "open", (unsigned long long)(uintptr_t)&dp_open,
                         "release", (unsigned long long)(uintptr_t)&dp_release,
                         "fsync", (unsigned long long)(uintptr_t)&dp_fsync);
}

static PyObject *py_counters(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}",
                         "read", (unsigned long long)atomic_load(&n_read),
                         "fsync", (unsigned long long)atomic_load(&n_fsync),
                         "getattr", (unsigned long long)atomic_load(&n_getattr),
                         "open", (unsigned long long)atomic_load(&n_open),
                         "release", (unsigned long long)atomic_load(&n_release),
                         "write", (unsigned long long)atomic_load(&n_write),
                         "write_python", (unsigned long long)atomic_load(&n_write_python),
                         "pump_unparked", (unsigned long long)atomic_load(&n_pump_unparked));
}

/* set_python_write(address): mfusepy's write callback, for what C does not serve. */
static PyObject *py_set_python_write(PyObject *self, PyObject *arg) {
    (void)self;
    unsigned long long a = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    python_write = (write_fn)(uintptr_t)a;
    Py_RETURN_NONE;
}

/* The queue lock from Python: the GIL is let go while waiting, since the holder may be
 * another Python thread that needs the GIL to get to its unlock (C writes never call
 * into Python while they hold it). */
static void lock_queue(void) {
    if (pthread_mutex_trylock(&queue_mu) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&queue_mu);
        Py_END_ALLOW_THREADS
    }
}

static PyObject *py_writes(PyObject *self, PyObject *args) {
    (void)self;
    int on, pins_needed = 1;
    long long rs;
    if (!PyArg_ParseTuple(args, "pL|p", &on, &rs, &pins_needed))
        return NULL;
    if (rs <= 0) {
        PyErr_SetString(PyExc_ValueError, "region size must be positive");
        return NULL;
    }
    lock_queue();
    if (on && python_write == NULL && ll_bridge == NULL) {
        pthread_mutex_unlock(&queue_mu);
        PyErr_SetString(PyExc_RuntimeError, "set_python_write (or ll_set_bridge) first");
        return NULL;
    }
    region_size = rs;
    need_pins = pins_needed;
    atomic_store(&writes_on, on);
    pthread_cond_broadcast(&queue_cv);
    pthread_cond_broadcast(&pump_cv);
    pthread_mutex_unlock(&queue_mu);
    Py_RETURN_NONE;
}

/* writes_off(): C writes go to Python from now on; callable with the queue lock held. */
static PyObject *py_writes_off(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    atomic_store(&writes_on, 0);
    pthread_cond_broadcast(&queue_cv);
    pthread_cond_broadcast(&pump_cv);
    Py_RETURN_NONE;
}

static PyObject *py_lock(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    lock_queue();
    Py_RETURN_NONE;
}

static PyObject *py_unlock(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    pthread_mutex_unlock(&queue_mu);
    Py_RETURN_NONE;
}

static PyObject *py_block_writes(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    Py_BEGIN_ALLOW_THREADS
    pthread_rwlock_wrlock(&write_gate);
    Py_END_ALLOW_THREADS
    names_changing();   /* the holder may change names: remembered paths expire */
    Py_RETURN_NONE;
}

static PyObject *py_unblock_writes(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    names_changing();   /* and what was remembered while it held them */
    pthread_rwlock_unlock(&write_gate);
    Py_RETURN_NONE;
}

/* Caller holds queue_mu: every queued record, oldest first, as
 * (path, offset, data, atime_ns, mtime_ns); the queue is left empty. */
static PyObject *take_locked(void) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    while (q_head != NULL) {
        record *r = q_head;
        /* names as mfusepy gives them to Python: UTF-8 with surrogateescape */
        PyObject *name = PyUnicode_DecodeUTF8(r->path, (Py_ssize_t)strlen(r->path),
                                              "surrogateescape");
        PyObject *t = name == NULL ? NULL
            : Py_BuildValue("(NLy#LL)", name, r->offset, r->data, (Py_ssize_t)r->len,
                            r->atime_ns, r->mtime_ns);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
        q_head = r->next;
        if (q_head == NULL)
            q_tail = NULL;
        q_len--;
        q_bytes -= r->len;
        free(r->path);
        free(r);
    }
    pthread_cond_broadcast(&queue_cv);
    return out;
}

/* take_locked(): every queued record, for a caller that holds the queue lock (lock()). */
static PyObject *py_take_locked(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return take_locked();
}

static struct timespec deadline_in(double seconds) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    long long ns = until.tv_nsec + (long long)(seconds * 1e9);
    until.tv_sec += ns / 1000000000LL;
    until.tv_nsec = ns % 1000000000LL;
    return until;
}

/* Caller holds queue_mu: until a batch is full or linger seconds passed. */
static void wait_batch(double linger) {
    struct timespec until = deadline_in(linger);
    while (q_len < BATCH_RECORDS && q_bytes < BATCH_BYTES && atomic_load(&writes_on))
        if (pthread_cond_timedwait(&pump_cv, &queue_mu, &until) == ETIMEDOUT)
            break;
}

/* wait(timeout, linger, park) -> bool: a record is queued. First up to linger seconds
 * for a batch (not woken by single records); then, if nothing is queued and park,
 * parked up to timeout seconds for the first record, and up to linger more for a
 * batch. */
static PyObject *py_wait(PyObject *self, PyObject *args) {
    (void)self;
    double timeout, linger;
    int park;
    if (!PyArg_ParseTuple(args, "ddp", &timeout, &linger, &park))
        return NULL;
    lock_queue();
    Py_BEGIN_ALLOW_THREADS
    if (linger > 0)
        wait_batch(linger);
    if (q_head == NULL && park && timeout > 0) {
        struct timespec until = deadline_in(timeout);
        while (q_head == NULL && atomic_load(&writes_on)) {
            pump_parked = 1;   /* again after a wake-up whose record a barrier took */
            if (pthread_cond_timedwait(&pump_cv, &queue_mu, &until) == ETIMEDOUT)
                break;
        }
        pump_parked = 0;
        if (q_head != NULL && linger > 0)
            wait_batch(linger);
    }
    Py_END_ALLOW_THREADS
    int any = q_head != NULL;
    pthread_mutex_unlock(&queue_mu);
    return PyBool_FromLong(any);
}

/* Caller holds queue_mu (pin and unpin are called by Python under lock()). */
static PyObject *py_pin(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *name;
    long long region;
    if (!PyArg_ParseTuple(args, "UL", &name, &region))
        return NULL;
    PyObject *raw = PyUnicode_AsEncodedString(name, "utf-8", "surrogateescape");
    if (raw == NULL)
        return NULL;
    const char *path = PyBytes_AS_STRING(raw);
    if ((size_t)PyBytes_GET_SIZE(raw) != strlen(path)) {
        Py_DECREF(raw);
        PyErr_SetString(PyExc_ValueError, "a path with a NUL byte");
        return NULL;
    }
    if (pin_find(path, region) != NULL) {
        Py_DECREF(raw);
        Py_RETURN_FALSE;
    }
    if (n_pins + 1 > n_buckets && pins_grow() < 0) {
        Py_DECREF(raw);
        return PyErr_NoMemory();
    }
    size_t plen = strlen(path);
    pin *p = malloc(sizeof *p + plen + 1);
    if (p == NULL) {
        Py_DECREF(raw);
        return PyErr_NoMemory();
    }
    memcpy(p->path, path, plen + 1);
    p->region = region;
    p->last_use = now_s();
    size_t b = hash_key(path, region) % n_buckets;
    p->next = pins[b];
    pins[b] = p;
    n_pins++;
    Py_DECREF(raw);
    Py_RETURN_TRUE;
}

/* unpin_idle(idle_s): caller holds queue_mu; removes and returns the pins not used
 * for idle_s seconds (every pin with idle_s < 0), as [(path, region)]. */
static PyObject *py_unpin_idle(PyObject *self, PyObject *arg) {
    (void)self;
    double idle = PyFloat_AsDouble(arg);
    if (idle == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    double t = now_s();
    for (size_t i = 0; i < n_buckets; i++) {
        pin **pp = &pins[i];
        while (*pp) {
            pin *p = *pp;
            if (idle < 0 || t - p->last_use >= idle) {
                PyObject *k = Py_BuildValue(
                    "(NL)", PyUnicode_DecodeUTF8(p->path, (Py_ssize_t)strlen(p->path),
                                                 "surrogateescape"), p->region);
                if (k == NULL || PyList_Append(out, k) < 0) {
                    Py_XDECREF(k);
                    Py_DECREF(out);
                    return NULL;
                }
                Py_DECREF(k);
                *pp = p->next;
                free(p);
                n_pins--;
            } else {
                pp = &p->next;
            }
        }
    }
    return out;
}

/* failure() -> errno of a write applied locally that could not be queued, or 0. */
static PyObject *py_failure(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(atomic_load(&write_failure));
}

static PyObject *py_pending(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_BuildValue("(nn)", (Py_ssize_t)q_len, (Py_ssize_t)q_bytes);
}

/* The low-level API's layer: one translation unit, so both share the statics above. */
#include "_lowlevel.c"

static PyMethodDef methods[] = {
    LL_METHODS
    {"set_root", py_set_root, METH_O,
     "set_root(fd): the served directory's descriptor (opened before the mount)."},
    {"addresses", py_addresses, METH_NOARGS,
     "addresses() -> {operation: address of its C function}."},
    {"counters", py_counters, METH_NOARGS,
     "counters() -> {operation: requests served in C so far}."},
    {"adopt", py_adopt, METH_O,
     "adopt(fd) -> open flags, or -1: a handle C opened becomes Python's."},
    {"set_python_ops", py_set_python_ops, METH_VARARGS,
     "set_python_ops(open, release, fsync, writable): Python's callbacks."},
    {"tree_durable", py_tree_durable, METH_VARARGS,
     "tree_durable(on, locked) -> bool: fsyncs of C-owned handles are local while set."},
    {"set_python_write", py_set_python_write, METH_O,
     "set_python_write(address): the Python write callback, for what C does not serve."},
    {"writes", py_writes, METH_VARARGS,
     "writes(on, region_size, need_pins=True): streamed writes served in C (on) or all "
     "in Python; without need_pins no activity-log key is asked for."},
    {"writes_off", py_writes_off, METH_NOARGS,
     "Every later write to Python; may be called with the queue lock held."},
    {"lock", py_lock, METH_NOARGS, "Take the queue lock (C writes wait)."},
    {"unlock", py_unlock, METH_NOARGS, "Let go of the queue lock."},
    {"block_writes", py_block_writes, METH_NOARGS,
     "Wait for C writes in progress, and hold new ones (the exclusive ordering lock)."},
    {"unblock_writes", py_unblock_writes, METH_NOARGS, "Let C writes go on."},
    {"take_locked", py_take_locked, METH_NOARGS,
     "take_locked() -> [(path, offset, data, atime_ns, mtime_ns)], oldest first, the queue "
     "left empty: for a holder of the queue lock."},
    {"wait", py_wait, METH_VARARGS,
     "wait(timeout, linger, park) -> bool: a record is queued (module source: when it wakes)."},
    {"pin", py_pin, METH_VARARGS,
     "pin(path, region) -> bool (new): under the queue lock; C writes may touch it."},
    {"unpin_idle", py_unpin_idle, METH_O,
     "unpin_idle(idle_s) -> [(path, region)]: under the queue lock."},
    {"pending", py_pending, METH_NOARGS, "pending() -> (records, bytes) queued."},
    {"failure", py_failure, METH_NOARGS,
     "failure() -> errno of a write applied locally that could not be queued, or 0."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_dataplane",
    "The FUSE layer's hot requests in C, on libfuse's high- and low-level APIs "
    "(see replication/native_fuse.py and replication/fuse_lowlevel.py).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dataplane(void) {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&write_gate, &attr);
    pthread_rwlockattr_destroy(&attr);
    ll_module_init();
    return PyModule_Create(&module);
}
