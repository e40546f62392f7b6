/* The primary's FUSE layer on libfuse's low-level API (issue 19; docs/DESIGN.md "The
 * floor"). Compiled as part of _dataplane.c (included at its end): it shares that
 * file's write queue, activity-log pins, gates and counters, so there is one C write
 * path and one set of rules for both APIs.
 *
 * Why a second API: libfuse's high-level API gives the kernel one inode per *name*, so
 * a hard link's other names keep stale pages and attributes, and it needs a path for
 * every request. Here the kernel gets one inode per file: a node per (device, inode),
 * holding an O_PATH descriptor until the kernel forgets it. That makes a trusted page
 * cache and long entry/attribute timeouts safe on the primary, whose every change
 * comes through this mount (replication/fuse_lowlevel.py says which are on).
 *
 * Names. Nodes keep no names: the kernel keeps them for us. The path of a node (or of
 * an open file) is read back from /proc/self/fd (the kernel's d_path of our own
 * descriptor, which follows every rename made under it) and confirmed by looking the
 * path up again; a file whose looked-up name was unlinked has no path here (None), and
 * Python finds another name for it if it still has one (fuse_fs._data_path). A path is
 * used only while it cannot change:
 *  - C writes compute theirs under the write gate, which a rename's exclusive ordering
 *    lock holds (native_fuse: its hook blocks C writes);
 *  - Python's data operations on a handle resolve theirs under the ordering lock
 *    (fd_path, called by fuse_fs._data_path);
 *  - every other request that names a node resolves the node's path in Python while
 *    this file holds ``names_lock`` shared; a rename of a directory (which moves the
 *    paths of everything under it) holds it exclusively. The kernel's own locks already
 *    keep the parent directories and the inode a request names from changing under it;
 *    only a renamed ancestor directory could, and that is what names_lock excludes.
 *
 * What is served here, without Python: lookup, forget, getattr, readlink, open (not
 * O_TRUNC), read, write (the C write path of _dataplane.c), release of C's handles,
 * fsync while the tree is durable, opendir, readdir, releasedir, statfs. Everything
 * that changes the tree goes to Python (``bridge``: replication/fuse_lowlevel.py),
 * which applies the rules (activity log, channel order, barriers) as for the
 * high-level API, and answers with the node's path-based operation of fuse_fs.
 */
#include <dirent.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/statvfs.h>

#define LL_TABLE_MIN 1024

typedef struct ll_node {
    struct ll_node *next;        /* hash chain, by (dev, ino) */
    dev_t dev;
    ino_t ino;
    int fd;                      /* O_PATH */
    uint64_t nlookup;            /* the kernel's references (under nodes_mu) */
} ll_node;

static ll_node ll_root = {.fd = -1, .nlookup = 2};
static pthread_mutex_t nodes_mu = PTHREAD_MUTEX_INITIALIZER;
static ll_node **node_tab = NULL;
static size_t node_nb = 0, node_n = 0;
static pthread_rwlock_t names_lock;          /* see the file's comment */
static char root_prefix[PATH_MAX];
static size_t root_prefix_len = 0;
static PyObject *ll_bridge = NULL;           /* fuse_lowlevel.Bridge */
static double ll_entry_timeout = 1.0, ll_attr_timeout = 1.0;
static int ll_trust_cache = 0;               /* no auto_inval_data */
static struct fuse_session *ll_session = NULL;
static atomic_ullong n_lookup, n_forget, n_bridge, n_readdir;

static __thread uid_t req_uid;
static __thread gid_t req_gid;
static __thread pid_t req_pid;

static ll_node *node_of(fuse_ino_t ino) {
    return ino == FUSE_ROOT_ID ? &ll_root : (ll_node *)(uintptr_t)ino;
}

static size_t node_hash(dev_t dev, ino_t ino, size_t nb) {
    return (size_t)(((uint64_t)dev * 1099511628211ULL) ^ (uint64_t)ino) % nb;
}

/* Caller holds nodes_mu. */
static int node_tab_grow(void) {
    size_t nb = node_nb ? node_nb * 2 : LL_TABLE_MIN;
    ll_node **nt = calloc(nb, sizeof *nt);
    if (nt == NULL)
        return -1;
    for (size_t i = 0; i < node_nb; i++)
        for (ll_node *n = node_tab[i], *next; n; n = next) {
            next = n->next;
            size_t b = node_hash(n->dev, n->ino, nb);
            n->next = nt[b];
            nt[b] = n;
        }
    free(node_tab);
    node_tab = nt;
    node_nb = nb;
    return 0;
}

/* The node of (dev, ino) with one more lookup; fd (O_PATH, of that inode) becomes its
 * descriptor when the node is new, else it is closed. NULL: no memory (fd closed). */
static ll_node *node_ref(int fd, const struct stat *st) {
    pthread_mutex_lock(&nodes_mu);
    if (node_nb) {
        for (ll_node *n = node_tab[node_hash(st->st_dev, st->st_ino, node_nb)]; n; n = n->next)
            if (n->dev == st->st_dev && n->ino == st->st_ino) {
                n->nlookup++;
                pthread_mutex_unlock(&nodes_mu);
                close(fd);
                return n;
            }
    }
    ll_node *n = NULL;
    if ((node_n + 1 <= node_nb || node_tab_grow() == 0) && (n = malloc(sizeof *n)) != NULL) {
        n->dev = st->st_dev;
        n->ino = st->st_ino;
        n->fd = fd;
        n->nlookup = 1;
        size_t b = node_hash(n->dev, n->ino, node_nb);
        n->next = node_tab[b];
        node_tab[b] = n;
        node_n++;
    }
    pthread_mutex_unlock(&nodes_mu);
    if (n == NULL)
        close(fd);
    return n;
}

static void node_unref(ll_node *n, uint64_t count) {
    if (n == &ll_root)
        return;
    pthread_mutex_lock(&nodes_mu);
    n->nlookup = count >= n->nlookup ? 0 : n->nlookup - count;
    if (n->nlookup == 0) {
        ll_node **pp = &node_tab[node_hash(n->dev, n->ino, node_nb)];
        while (*pp != n)
            pp = &(*pp)->next;
        *pp = n->next;
        node_n--;
    } else {
        n = NULL;
    }
    pthread_mutex_unlock(&nodes_mu);
    if (n != NULL) {
        close(n->fd);
        free(n);
    }
}

static void nodes_free_all(void) {
    pthread_mutex_lock(&nodes_mu);
    for (size_t i = 0; i < node_nb; i++)
        for (ll_node *n = node_tab[i], *next; n; n = next) {
            next = n->next;
            close(n->fd);
            free(n);
        }
    free(node_tab);
    node_tab = NULL;
    node_nb = node_n = 0;
    pthread_mutex_unlock(&nodes_mu);
}

/* The path below the served directory of what descriptor fd is open on, into out
 * ("" for the directory itself): 1 found (and confirmed: that path is this inode now),
 * 0 no such path (unlinked under the name it was reached by, or outside), -errno. */
static int fd_rel(int fd, char *out, size_t cap) {
    char link[64], buf[PATH_MAX + 16];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, sizeof buf - 1);
    if (n < 0)
        return -errno;
    if ((size_t)n >= sizeof buf - 1)
        return -ENAMETOOLONG;
    buf[n] = '\0';
    const char *rel;
    if ((size_t)n == root_prefix_len && memcmp(buf, root_prefix, (size_t)n) == 0)
        rel = "";
    else if ((size_t)n > root_prefix_len && memcmp(buf, root_prefix, root_prefix_len) == 0
             && (root_prefix_len == 1 || buf[root_prefix_len] == '/'))
        rel = buf + root_prefix_len + (root_prefix_len == 1 ? 0 : 1);
    else
        return 0;
    size_t len = strlen(rel);
    if (len + 1 > cap)
        return -ENAMETOOLONG;
    if (len) {
        /* the link text of an unlinked name ends in " (deleted)": it names nothing, or
         * another file; only a path that leads to this very inode is its path */
        struct stat a, b;
        int root = atomic_load(&root_fd);
        if (fstat(fd, &a) < 0)
            return -errno;
        if (root < 0 || fstatat(root, rel, &b, AT_SYMLINK_NOFOLLOW) < 0
                || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
            return 0;
    }
    memcpy(out, rel, len + 1);
    return 1;
}

/* fd -> its path, remembered while no name in the tree changed. Every change of a name
 * is made under the exclusive ordering lock, whose hooks bump names_gen when it is
 * taken and again before it is let go (fuse_lowlevel.serve_lowlevel installs them), so
 * a path remembered at one generation is the fd's path for as long as the generation
 * lasts, and its holders (the write gate, the shared ordering lock) keep it from
 * changing. Why: a C write needs its file's path, and fd_rel costs a readlink and two
 * stats (bench write-path: 20 % of the commits of a 4 KiB write + fdatasync loop); a
 * hit costs one fstat (a reused descriptor is told apart by its inode). */
typedef struct {
    uint64_t gen;
    dev_t dev;
    ino_t ino;
    char *path;
} fd_path_entry;

#define FD_PATH_STRIPES 64
static fd_path_entry fd_paths[FD_TABLE];
static pthread_mutex_t fd_path_mu[FD_PATH_STRIPES];
static atomic_ullong names_gen = 1;
static atomic_int fd_path_cache_on = 0;
static atomic_ullong n_path_hits, n_path_misses;

static int fd_rel_cached(int fd, char *out, size_t cap) {
    if (!atomic_load(&fd_path_cache_on) || fd < 0 || fd >= FD_TABLE)
        return fd_rel(fd, out, cap);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    uint64_t gen = atomic_load(&names_gen);
    pthread_mutex_t *mu = &fd_path_mu[fd % FD_PATH_STRIPES];
    fd_path_entry *e = &fd_paths[fd];
    pthread_mutex_lock(mu);
    if (e->path != NULL && e->gen == gen && e->dev == st.st_dev && e->ino == st.st_ino) {
        size_t len = strlen(e->path);
        if (len < cap) {
            memcpy(out, e->path, len + 1);
            pthread_mutex_unlock(mu);
            atomic_fetch_add_explicit(&n_path_hits, 1, memory_order_relaxed);
            return 1;
        }
    }
    pthread_mutex_unlock(mu);
    atomic_fetch_add_explicit(&n_path_misses, 1, memory_order_relaxed);
    int r = fd_rel(fd, out, cap);
    if (r == 1) {
        char *copy = strdup(out);
        pthread_mutex_lock(mu);
        if (copy != NULL && atomic_load(&names_gen) == gen) {   /* no change began since */
            free(e->path);
            e->path = copy;
            e->gen = gen;
            e->dev = st.st_dev;
            e->ino = st.st_ino;
            copy = NULL;
        }
        pthread_mutex_unlock(mu);
        free(copy);
    }
    return r;
}

static void names_changing(void) {
    atomic_fetch_add(&names_gen, 1);
}

static void fd_paths_clear(void) {
    for (int i = 0; i < FD_TABLE; i++) {
        pthread_mutex_t *mu = &fd_path_mu[i % FD_PATH_STRIPES];
        pthread_mutex_lock(mu);
        free(fd_paths[i].path);
        fd_paths[i].path = NULL;
        pthread_mutex_unlock(mu);
    }
}

/* fd_path_cache(on): remember fds' paths (only with the ordering lock's hooks calling
 * names_changed); off forgets them all. */
static PyObject *py_fd_path_cache(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    names_changing();
    atomic_store(&fd_path_cache_on, on);
    if (!on) {
        Py_BEGIN_ALLOW_THREADS
        fd_paths_clear();
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

/* names_changed(): a name in the tree may change (exclusive ordering lock hooks). */
static PyObject *py_names_changed(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    names_changing();
    Py_RETURN_NONE;
}

static PyObject *rel_object(int r, const char *rel) {
    if (r < 0) {
        errno = -r;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (r == 0)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(rel, (Py_ssize_t)strlen(rel), "surrogateescape");
}

/* fd_path(fd) -> str | None (with the GIL: Python's data operations, under its lock). */
static PyObject *py_fd_path(PyObject *self, PyObject *arg) {
    (void)self;
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    char rel[PATH_MAX];
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = fd_rel_cached((int)fd, rel, sizeof rel);
    Py_END_ALLOW_THREADS
    return rel_object(r, rel);
}

/* node_path(nodeid) -> str | None: for the bridge, while this file holds names_lock. */
static PyObject *py_node_path(PyObject *self, PyObject *arg) {
    (void)self;
    unsigned long long ino = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    char rel[PATH_MAX];
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = fd_rel(node_of((fuse_ino_t)ino)->fd, rel, sizeof rel);
    Py_END_ALLOW_THREADS
    return rel_object(r, rel);
}

/* req_context() -> (uid, gid, pid) of the request this thread serves (bridge calls). */
static PyObject *py_req_context(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_BuildValue("(IIi)", (unsigned)req_uid, (unsigned)req_gid, (int)req_pid);
}

/* ---- calls into Python ---------------------------------------------------------- */

enum { NAMES_NONE, NAMES_SHARED, NAMES_EXCLUSIVE };

/* bridge.<name>(*args), args built from fmt; with names_lock held as ``names`` says
 * around the call (NAMES_NONE: the call resolves no node's path; a handle's path is
 * resolved in Python under the ordering lock). Returns the result's integer value
 * (>= 0), or -errno: an OSError's errno, EIO for anything else (the bridge logs
 * those). */
static long long call_bridge(fuse_req_t req, int names, const char *name, const char *fmt, ...) {
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    req_uid = ctx->uid;
    req_gid = ctx->gid;
    req_pid = ctx->pid;
    atomic_fetch_add_explicit(&n_bridge, 1, memory_order_relaxed);
    if (names == NAMES_EXCLUSIVE)
        pthread_rwlock_wrlock(&names_lock);
    else if (names == NAMES_SHARED)
        pthread_rwlock_rdlock(&names_lock);
    long long out = -EIO;
    PyGILState_STATE g = PyGILState_Ensure();
    va_list va;
    va_start(va, fmt);
    PyObject *args = Py_VaBuildValue(fmt, va);
    va_end(va);
    PyObject *method = ll_bridge != NULL ? PyObject_GetAttrString(ll_bridge, name) : NULL;
    PyObject *res = NULL;
    if (args != NULL && method != NULL)
        res = PyObject_CallObject(method, PyTuple_Check(args) ? args : NULL);
    if (res != NULL) {
        out = res == Py_None ? 0 : PyLong_AsLongLong(res);
        if (out == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            out = -EIO;
        }
    } else if (PyErr_ExceptionMatches(PyExc_OSError)) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyObject *e = value != NULL ? PyObject_GetAttrString(value, "errno") : NULL;
        long v = e != NULL && PyLong_Check(e) ? PyLong_AsLong(e) : EIO;
        out = v > 0 ? -v : -EIO;
        Py_XDECREF(e);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        PyErr_Clear();
    } else {
        PyErr_WriteUnraisable(method);
        out = -EIO;
    }
    Py_XDECREF(res);
    Py_XDECREF(method);
    Py_XDECREF(args);
    PyGILState_Release(g);
    if (names != NAMES_NONE)
        pthread_rwlock_unlock(&names_lock);
    return out;
}

/* ---- replies ---------------------------------------------------------------------- */

/* The entry of name under parent (one more lookup of its node). */
static int ll_entry(fuse_ino_t parent, const char *name, struct fuse_entry_param *e) {
    ll_node *p = node_of(parent);
    memset(e, 0, sizeof *e);
    int fd = openat(p->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno;
    if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
        int err = errno;
        close(fd);
        return err;
    }
    ll_node *n = node_ref(fd, &e->attr);
    if (n == NULL)
        return ENOMEM;
    e->ino = (fuse_ino_t)(uintptr_t)n;
    e->attr_timeout = ll_attr_timeout;
    e->entry_timeout = ll_entry_timeout;
    return 0;
}

static void reply_entry_of(fuse_req_t req, fuse_ino_t parent, const char *name) {
    struct fuse_entry_param e;
    int err = ll_entry(parent, name, &e);
    if (err)
        fuse_reply_err(req, err);
    else if (fuse_reply_entry(req, &e) == -ENOENT)     /* interrupted: not the kernel's */
        node_unref(node_of(e.ino), 1);
}

/* Always by the node's own descriptor: the kernel passes a handle with a regular file's
 * requests only, and a directory's handle here is not a descriptor (ll_dir). */
static void reply_attr_of(fuse_req_t req, fuse_ino_t ino) {
    struct stat st;
    int r = fstatat(node_of(ino)->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    if (r < 0)
        fuse_reply_err(req, errno);
    else
        fuse_reply_attr(req, &st, ll_attr_timeout);
}

/* ---- operations ----------------------------------------------------------------------- */

static void ll_init(void *userdata, struct fuse_conn_info *conn) {
    (void)userdata;
    if (ll_trust_cache)
        conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *info = Py_BuildValue(
        "{s:s,s:I,s:I,s:I,s:I,s:I,s:K,s:K}",
        "api", "lowlevel", "proto_major", conn->proto_major, "proto_minor", conn->proto_minor,
        "max_write", conn->max_write, "max_readahead", conn->max_readahead,
        "max_background", conn->max_background,
        "capable", (unsigned long long)conn->capable, "want", (unsigned long long)conn->want);
    PyObject *res = info != NULL && ll_bridge != NULL
        ? PyObject_CallMethod(ll_bridge, "init", "(O)", info) : NULL;
    if (res == NULL)
        PyErr_WriteUnraisable(ll_bridge);
    Py_XDECREF(res);
    Py_XDECREF(info);
    PyGILState_Release(g);
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    atomic_fetch_add_explicit(&n_lookup, 1, memory_order_relaxed);
    reply_entry_of(req, parent, name);
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    atomic_fetch_add_explicit(&n_forget, 1, memory_order_relaxed);
    node_unref(node_of(ino), nlookup);
    fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
    for (size_t i = 0; i < count; i++) {
        atomic_fetch_add_explicit(&n_forget, 1, memory_order_relaxed);
        node_unref(node_of(forgets[i].ino), forgets[i].nlookup);
    }
    fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    atomic_fetch_add_explicit(&n_getattr, 1, memory_order_relaxed);
    reply_attr_of(req, ino);
}

static long long ns_of(const struct timespec *ts) {
    return (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi) {
    long long atime = UTIME_OMIT, mtime = UTIME_OMIT;
    if (to_set & FUSE_SET_ATTR_ATIME_NOW)
        atime = UTIME_NOW;
    else if (to_set & FUSE_SET_ATTR_ATIME)
        atime = ns_of(&attr->st_atim);
    if (to_set & FUSE_SET_ATTR_MTIME_NOW)
        mtime = UTIME_NOW;
    else if (to_set & FUSE_SET_ATTR_MTIME)
        mtime = ns_of(&attr->st_mtim);
    long long r = call_bridge(req, NAMES_SHARED, "setattr", "(KLiIIILLL)", (unsigned long long)ino,
                              fi != NULL ? (long long)fi->fh : -1LL, to_set,
                              (unsigned)attr->st_mode, (unsigned)attr->st_uid,
                              (unsigned)attr->st_gid, (long long)attr->st_size, atime, mtime);
    if (r < 0)
        fuse_reply_err(req, (int)-r);
    else
        reply_attr_of(req, ino);
}

static void ll_readlink(fuse_req_t req, fuse_ino_t ino) {
    char buf[PATH_MAX + 1];
    ssize_t n = readlinkat(node_of(ino)->fd, "", buf, sizeof buf);
    if (n < 0)
        fuse_reply_err(req, errno);
    else if ((size_t)n >= sizeof buf)
        fuse_reply_err(req, ENAMETOOLONG);
    else {
        buf[n] = '\0';
        fuse_reply_readlink(req, buf);
    }
}

static void ll_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
    long long r = call_bridge(req, NAMES_SHARED, "mknod", "(KyIK)", (unsigned long long)parent, name,
                              (unsigned)mode, (unsigned long long)rdev);
    if (r < 0)
        fuse_reply_err(req, (int)-r);
    else
        reply_entry_of(req, parent, name);
}

static void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
    long long r = call_bridge(req, NAMES_SHARED, "mkdir", "(KyI)", (unsigned long long)parent, name,
                              (unsigned)mode);
    if (r < 0)
        fuse_reply_err(req, (int)-r);
    else
        reply_entry_of(req, parent, name);
}

static void ll_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
    long long r = call_bridge(req, NAMES_SHARED, "symlink", "(Kyy)", (unsigned long long)parent, name, link);
    if (r < 0)
        fuse_reply_err(req, (int)-r);
    else
        reply_entry_of(req, parent, name);
}

static void ll_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
    long long r = call_bridge(req, NAMES_SHARED, "link", "(KKy)", (unsigned long long)ino,
                              (unsigned long long)newparent, newname);
    if (r < 0)
        fuse_reply_err(req, (int)-r);
    else
        reply_entry_of(req, newparent, newname);
}

static void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
    long long r = call_bridge(req, NAMES_SHARED, "unlink", "(Ky)", (unsigned long long)parent, name);
    fuse_reply_err(req, r < 0 ? (int)-r : 0);
}

static void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
    long long r = call_bridge(req, NAMES_SHARED, "rmdir", "(Ky)", (unsigned long long)parent, name);
    fuse_reply_err(req, r < 0 ? (int)-r : 0);
}

static void ll_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags) {
    /* a directory moved (or exchanged with one) moves every path under it: exclusive */
    struct stat st;
    int dir = fstatat(node_of(parent)->fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0
        && S_ISDIR(st.st_mode);
    if (!dir && (flags & RENAME_EXCHANGE))
        dir = fstatat(node_of(newparent)->fd, newname, &st, AT_SYMLINK_NOFOLLOW) == 0
            && S_ISDIR(st.st_mode);
    long long r = call_bridge(req, dir ? NAMES_EXCLUSIVE : NAMES_SHARED, "rename", "(KyKyI)", (unsigned long long)parent, name,
                              (unsigned long long)newparent, newname, flags);
    fuse_reply_err(req, r < 0 ? (int)-r : 0);
}

/* The open served here (as dp_open): a new descriptor of the node's inode. */
static int reopen_node(ll_node *n, int flags) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", n->fd);
    return open(link, (flags & ~STRIP_FLAGS & ~O_NOFOLLOW) | O_CLOEXEC);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    int flags = fi->flags;
    int fd = -1;
    if (!(flags & (O_TRUNC | O_CREAT))
            && ((flags & O_ACCMODE) == O_RDONLY || atomic_load(&opens_writable))) {
        fd = reopen_node(node_of(ino), flags);
        if (fd < 0) {
            fuse_reply_err(req, errno);
            return;
        }
        if (fd >= FD_TABLE) {
            close(fd);
            fd = -1;
        } else {
            atomic_store(&c_opened[fd], flags + 1);
            atomic_fetch_add_explicit(&n_open, 1, memory_order_relaxed);
        }
    }
    if (fd < 0) {
        long long r = call_bridge(req, NAMES_SHARED, "open", "(Ki)", (unsigned long long)ino, flags);
        if (r < 0) {
            fuse_reply_err(req, (int)-r);
            return;
        }
        fd = (int)r;
    }
    fi->fh = (uint64_t)fd;
    fi->keep_cache = 1;   /* kernel_cache: the primary's mount is the only writer */
    if (fuse_reply_open(req, fi) == -ENOENT) {   /* interrupted: never the kernel's */
        if (fd < FD_TABLE && atomic_exchange(&c_opened[fd], 0) != 0)
            close(fd);
        else
            call_bridge(req, NAMES_NONE, "release", "(i)", fd);
    }
}

static void ll_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi) {
    long long r = call_bridge(req, NAMES_SHARED, "create", "(KyIi)", (unsigned long long)parent, name,
                              (unsigned)mode, fi->flags);
    if (r < 0) {
        fuse_reply_err(req, (int)-r);
        return;
    }
    struct fuse_entry_param e;
    int err = ll_entry(parent, name, &e);
    fi->fh = (uint64_t)r;
    fi->keep_cache = 1;   /* kernel_cache: the primary's mount is the only writer */
    if (err) {
        call_bridge(req, NAMES_NONE, "release", "(i)", (int)r);
        fuse_reply_err(req, err);
    } else if (fuse_reply_create(req, &e, fi) == -ENOENT) {
        node_unref(node_of(e.ino), 1);
        call_bridge(req, NAMES_NONE, "release", "(i)", (int)r);
    }
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    (void)ino;
    atomic_fetch_add_explicit(&n_read, 1, memory_order_relaxed);
    struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
    buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    buf.buf[0].fd = (int)fi->fh;
    buf.buf[0].pos = off;
    fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
    int r = -1, to_python = 1;
    if (atomic_load(&writes_on) && !(fi->flags & (O_SYNC | O_DSYNC)))
        r = c_write(NULL, (int)fi->fh, buf, size, off, &to_python);
    if (to_python) {
        atomic_fetch_add_explicit(&n_write_python, 1, memory_order_relaxed);
        long long n = call_bridge(req, NAMES_NONE, "write", "(KLy#L)", (unsigned long long)ino,
                                  (long long)fi->fh, buf, (Py_ssize_t)size, (long long)off);
        r = (int)n;
    }
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_write(req, (size_t)r);
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    if (fi->fh < FD_TABLE && atomic_exchange(&c_opened[fi->fh], 0) != 0) {
        close((int)fi->fh);
        atomic_fetch_add_explicit(&n_release, 1, memory_order_relaxed);
        fuse_reply_err(req, 0);
        return;
    }
    long long r = call_bridge(req, NAMES_NONE, "release", "(i)", (int)fi->fh);
    fuse_reply_err(req, r < 0 ? (int)-r : 0);
}

static void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    if (atomic_load(&tree_durable) && c_owns(fi)) {
        atomic_fetch_add_explicit(&n_fsync, 1, memory_order_relaxed);
        int r = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
        fuse_reply_err(req, r < 0 ? errno : 0);
        return;
    }
    long long r = call_bridge(req, NAMES_NONE, "fsync", "(KLi)", (unsigned long long)ino,
                              (long long)fi->fh, datasync);
    fuse_reply_err(req, r < 0 ? (int)-r : 0);
}

static void ll_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi) {
    long long r = call_bridge(req, NAMES_NONE, "fallocate", "(KLiLL)", (unsigned long long)ino,
                              (long long)fi->fh, mode, (long long)offset, (long long)length);
    fuse_reply_err(req, r < 0 ? (int)-r : 0);
}

typedef struct ll_dir {
    DIR *dp;
    struct dirent *entry;
    off_t offset;
} ll_dir;

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    ll_dir *d = calloc(1, sizeof *d);
    if (d == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int fd = openat(node_of(ino)->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (d->dp = fdopendir(fd)) == NULL) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        free(d);
        fuse_reply_err(req, err);
        return;
    }
    fi->fh = (uint64_t)(uintptr_t)d;
    if (fuse_reply_open(req, fi) == -ENOENT) {
        closedir(d->dp);
        free(d);
    }
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                       struct fuse_file_info *fi) {
    (void)ino;
    atomic_fetch_add_explicit(&n_readdir, 1, memory_order_relaxed);
    ll_dir *d = (ll_dir *)(uintptr_t)fi->fh;
    char *buf = malloc(size);
    if (buf == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    if (offset != d->offset) {
        seekdir(d->dp, offset);
        d->entry = NULL;
        d->offset = offset;
    }
    size_t rem = size;
    char *p = buf;
    int err = 0;
    for (;;) {
        if (d->entry == NULL) {
            errno = 0;
            d->entry = readdir(d->dp);
            if (d->entry == NULL) {
                err = errno;
                break;
            }
        }
        struct stat st = {.st_ino = d->entry->d_ino, .st_mode = (mode_t)d->entry->d_type << 12};
        off_t next = d->entry->d_off;
        size_t len = fuse_add_direntry(req, p, rem, d->entry->d_name, &st, next);
        if (len > rem)
            break;
        p += len;
        rem -= len;
        d->entry = NULL;
        d->offset = next;
    }
    if (err && rem == size)
        fuse_reply_err(req, err);
    else
        fuse_reply_buf(req, buf, size - rem);
    free(buf);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    ll_dir *d = (ll_dir *)(uintptr_t)fi->fh;
    closedir(d->dp);
    free(d);
    fuse_reply_err(req, 0);
}

static void ll_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    (void)fi;
    long long r = call_bridge(req, NAMES_SHARED, "fsyncdir", "(Ki)", (unsigned long long)ino, datasync);
    fuse_reply_err(req, r < 0 ? (int)-r : 0);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) {
    (void)ino;
    struct statvfs sv;
    if (fstatvfs(ll_root.fd, &sv) < 0)
        fuse_reply_err(req, errno);
    else
        fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops ll_ops = {
    .init = ll_init,
    .lookup = ll_lookup,
    .forget = ll_forget,
    .forget_multi = ll_forget_multi,
    .getattr = ll_getattr,
    .setattr = ll_setattr,
    .readlink = ll_readlink,
    .mknod = ll_mknod,
    .mkdir = ll_mkdir,
    .symlink = ll_symlink,
    .link = ll_link,
    .unlink = ll_unlink,
    .rmdir = ll_rmdir,
    .rename = ll_rename,
    .open = ll_open,
    .create = ll_create,
    .read = ll_read,
    .write = ll_write,
    .release = ll_release,
    .fsync = ll_fsync,
    .fallocate = ll_fallocate,
    .opendir = ll_opendir,
    .readdir = ll_readdir,
    .releasedir = ll_releasedir,
    .fsyncdir = ll_fsyncdir,
    .statfs = ll_statfs,
};

/* ---- serving -------------------------------------------------------------------------- */

/* ll_set_bridge(bridge | None): the Python object the requests not served here go to
 * (before ``writes`` turns C writes on, and before ll_serve). */
static PyObject *py_ll_set_bridge(PyObject *self, PyObject *arg) {
    (void)self;
    if (ll_session != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "serving: the bridge stays");
        return NULL;
    }
    Py_XDECREF(ll_bridge);
    ll_bridge = NULL;
    if (arg != Py_None) {
        Py_INCREF(arg);
        ll_bridge = arg;
    }
    Py_RETURN_NONE;
}

/* ll_serve(mountpoint, options, max_threads, entry_timeout, attr_timeout, trust_cache)
 * -> loop's result: mounts the served directory (set_root and
 * ll_set_bridge first) at mountpoint and serves it until it is unmounted. */
static PyObject *py_ll_serve(PyObject *self, PyObject *args) {
    (void)self;
    const char *mountpoint, *options;
    int max_threads, trust_cache;
    double entry_to, attr_to;
    if (!PyArg_ParseTuple(args, "ysiddp", &mountpoint, &options, &max_threads,
                          &entry_to, &attr_to, &trust_cache))
        return NULL;
    int root = atomic_load(&root_fd);
    if (root < 0 || ll_bridge == NULL || ll_session != NULL) {
        PyErr_SetString(PyExc_RuntimeError, root < 0 ? "set_root first"
                        : ll_bridge == NULL ? "ll_set_bridge first" : "already serving");
        return NULL;
    }
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", root);
    ssize_t n = readlink(link, root_prefix, sizeof root_prefix - 1);
    if (n <= 0 || (size_t)n >= sizeof root_prefix - 1)
        return PyErr_SetFromErrno(PyExc_OSError);
    root_prefix[n] = '\0';
    root_prefix_len = (size_t)n;
    ll_root.fd = fcntl(root, F_DUPFD_CLOEXEC, 0);
    if (ll_root.fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    struct stat st;
    if (fstat(ll_root.fd, &st) == 0) {
        ll_root.dev = st.st_dev;
        ll_root.ino = st.st_ino;
    }
    ll_entry_timeout = entry_to;
    ll_attr_timeout = attr_to;
    ll_trust_cache = trust_cache;

    char *argv[] = {"hacluster", "-o", (char *)options, NULL};
    struct fuse_args fargs = FUSE_ARGS_INIT(3, argv);
    int rc = -1;
    const char *failed = NULL;
    Py_BEGIN_ALLOW_THREADS
    struct fuse_session *se = fuse_session_new(&fargs, &ll_ops, sizeof ll_ops, NULL);
    if (se == NULL) {
        failed = "fuse_session_new failed (options?)";
    } else if (fuse_session_mount(se, mountpoint) != 0) {
        failed = "fuse_session_mount failed";
        fuse_session_destroy(se);
    } else {
        ll_session = se;
        struct fuse_loop_config *cfg = fuse_loop_cfg_create();
        fuse_loop_cfg_set_max_threads(cfg, (unsigned)max_threads);
        fuse_loop_cfg_set_clone_fd(cfg, 0);
        rc = fuse_session_loop_mt(se, cfg);
        fuse_loop_cfg_destroy(cfg);
        fuse_session_unmount(se);
        ll_session = NULL;
        fuse_session_destroy(se);
    }
    Py_END_ALLOW_THREADS
    fuse_opt_free_args(&fargs);
    nodes_free_all();
    close(ll_root.fd);
    ll_root.fd = -1;
    if (failed != NULL) {
        PyErr_SetString(PyExc_RuntimeError, failed);
        return NULL;
    }
    return PyLong_FromLong(rc);
}

static PyObject *py_ll_counters(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    pthread_mutex_lock(&nodes_mu);
    size_t nodes = node_n;
    pthread_mutex_unlock(&nodes_mu);
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:n}",
                         "path_hits", (unsigned long long)atomic_load(&n_path_hits),
                         "path_misses", (unsigned long long)atomic_load(&n_path_misses),
                         "lookup", (unsigned long long)atomic_load(&n_lookup),
                         "forget", (unsigned long long)atomic_load(&n_forget),
                         "bridge", (unsigned long long)atomic_load(&n_bridge),
                         "readdir", (unsigned long long)atomic_load(&n_readdir),
                         "nodes", (Py_ssize_t)nodes);
}

static void ll_module_init(void) {
    for (int i = 0; i < FD_PATH_STRIPES; i++)
        pthread_mutex_init(&fd_path_mu[i], NULL);
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&names_lock, &attr);
    pthread_rwlockattr_destroy(&attr);
}

#define LL_METHODS \
    {"ll_set_bridge", py_ll_set_bridge, METH_O, \
     "ll_set_bridge(bridge | None): where the requests not served in C go."}, \
    {"ll_serve", py_ll_serve, METH_VARARGS, \
     "ll_serve(mountpoint, options, max_threads, entry_timeout, attr_timeout, " \
     "trust_cache) -> int: serve the low-level mount until unmounted."}, \
    {"ll_counters", py_ll_counters, METH_NOARGS, \
     "ll_counters() -> {path_hits, path_misses, lookup, forget, bridge, readdir, nodes}."}, \
    {"fd_path_cache", py_fd_path_cache, METH_O, \
     "fd_path_cache(on): remember the paths of fds while no name changes."}, \
    {"names_changed", py_names_changed, METH_NOARGS, \
     "names_changed(): a name may change now (the exclusive ordering lock's hooks)."}, \
    {"fd_path", py_fd_path, METH_O, \
     "fd_path(fd) -> str | None: the path below the served directory of an open file."}, \
    {"node_path", py_node_path, METH_O, \
     "node_path(nodeid) -> str | None: a low-level node's path (bridge calls only)."}, \
    {"req_context", py_req_context, METH_NOARGS, \
     "req_context() -> (uid, gid, pid) of the request being served (bridge calls)."},
