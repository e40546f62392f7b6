/* replication._dataplane: the FUSE layer's hot requests in C (issue 19 item 3).
 *
 * Why: a profile of the mount under database-like load (bench/fuse_ceiling.py,
 * docs/DESIGN.md "The native data plane") shows the time going to Python per FUSE
 * request, not to round trips: every read and attribute request crossed ctypes and
 * took the GIL in mfusepy to do one pread or fstat. Here those requests are served
 * by C functions that libfuse's worker threads call directly, without the GIL.
 *
 * What is here, and nothing more: requests that change nothing. read = pread on the
 * handle's descriptor (the Python layer uses the descriptor itself as the file
 * handle), getattr = fstat on the handle or fstatat under the served directory.
 * Every request that changes something stays in Python (replication/fuse_fs.py),
 * where the ordering, activity-log and barrier rules live, once.
 *
 * The functions are handed to Python as addresses (``addresses()``) and put into
 * libfuse's operations table in place of mfusepy's (replication/native_fuse.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#include <fuse.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* The served directory, opened before the mount covered it (-1: not set). */
static atomic_int root_fd = -1;
/* Requests served here (for tests and the bench: the C path was taken). */
static atomic_ullong n_read, n_getattr;

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
    return Py_BuildValue("{s:K,s:K}", "read", (unsigned long long)(uintptr_t)&dp_read,
                         "getattr", (unsigned long long)(uintptr_t)&dp_getattr);
}

static PyObject *py_counters(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_BuildValue("{s:K,s:K}", "read", (unsigned long long)atomic_load(&n_read),
                         "getattr", (unsigned long long)atomic_load(&n_getattr));
}

static PyMethodDef methods[] = {
    {"set_root", py_set_root, METH_O,
     "set_root(fd): the served directory's descriptor (opened before the mount)."},
    {"addresses", py_addresses, METH_NOARGS,
     "addresses() -> {operation: address of its C function}."},
    {"counters", py_counters, METH_NOARGS,
     "counters() -> {operation: requests served in C so far}."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_dataplane",
    "The FUSE layer's read-only hot requests in C (see replication/native_fuse.py).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dataplane(void) {
    return PyModule_Create(&module);
}
