/* A minimal C pass-through FUSE file system (libfuse 3 high-level API), mounted
 * the way replication/fuse_fs.py mounts its Python one: over the directory it
 * serves, every operation done relative to a descriptor of that directory opened
 * before the mount, multithreaded, kernel_cache, hard_remove, use_ino.
 *
 * A measuring instrument for issue 19 (bench/native_passthrough.py, and the
 * fuse_floor side of bench/pgbench_bench.py): the ceiling a native data plane would
 * start from. Nothing is replicated here and it is no part of the product. As the
 * product's layer does, what it creates belongs to the caller (PostgreSQL runs as
 * its own user), and fsync of a directory reaches the directory.
 *
 *   passthrough MOUNTPOINT          (foreground, multithreaded)
 */
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#include <fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static int root_fd = -1;

/* "/a/b" -> "a/b"; "/" -> "." */
static const char *rel(const char *path) {
    return (path == NULL || path[1] == '\0') ? "." : path + 1;
}

static void *pt_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)conn;
    cfg->use_ino = 1;
    cfg->hard_remove = 1;
    cfg->kernel_cache = 1;
    return NULL;
}

static int pt_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    int r = fi ? fstat((int)fi->fh, st) : fstatat(root_fd, rel(path), st, AT_SYMLINK_NOFOLLOW);
    return r == -1 ? -errno : 0;
}

static int pt_access(const char *path, int mask) {
    struct stat st;
    (void)mask;
    return fstatat(root_fd, rel(path), &st, AT_SYMLINK_NOFOLLOW) == -1 ? -errno : 0;
}

static int pt_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)off; (void)fi; (void)flags;
    int fd = openat(root_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1)
        return -errno;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int e = errno;
        close(fd);
        return -e;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        memset(&st, 0, sizeof st);
        st.st_ino = de->d_ino;
        st.st_mode = (mode_t)de->d_type << 12;
        if (fill(buf, de->d_name, &st, 0, 0))
            break;
    }
    closedir(d);
    return 0;
}

static int pt_open(const char *path, struct fuse_file_info *fi) {
    int fd = openat(root_fd, rel(path), (fi->flags & ~(O_APPEND | O_DIRECT)) | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int pt_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    int fd = openat(root_fd, rel(path), (fi->flags & ~(O_APPEND | O_DIRECT)) | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
                    mode);
    if (fd == -1)
        return -errno;
    struct fuse_context *ctx = fuse_get_context();
    if (fchown(fd, ctx->uid, ctx->gid) == -1) {
        int e = errno;
        close(fd);
        return -e;
    }
    fi->fh = (uint64_t)fd;
    return 0;
}

static int pt_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pread((int)fi->fh, buf, size, off);
    return n == -1 ? -errno : (int)n;
}

static int pt_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pwrite((int)fi->fh, buf, size, off);
    return n == -1 ? -errno : (int)n;
}

static int pt_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int pt_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path;
    int r = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
    return r == -1 ? -errno : 0;
}

static int pt_unlink(const char *path) {
    return unlinkat(root_fd, rel(path), 0) == -1 ? -errno : 0;
}

static int pt_mkdir(const char *path, mode_t mode) {
    if (mkdirat(root_fd, rel(path), mode) == -1)
        return -errno;
    struct fuse_context *ctx = fuse_get_context();
    return fchownat(root_fd, rel(path), ctx->uid, ctx->gid, AT_SYMLINK_NOFOLLOW) == -1 ? -errno : 0;
}

static int pt_rmdir(const char *path) {
    return unlinkat(root_fd, rel(path), AT_REMOVEDIR) == -1 ? -errno : 0;
}

static int pt_rename(const char *from, const char *to, unsigned int flags) {
    return renameat2(root_fd, rel(from), root_fd, rel(to), flags) == -1 ? -errno : 0;
}

static int pt_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    if (fi)
        return ftruncate((int)fi->fh, size) == -1 ? -errno : 0;
    int fd = openat(root_fd, rel(path), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1)
        return -errno;
    int r = ftruncate(fd, size) == -1 ? -errno : 0;
    close(fd);
    return r;
}

static int pt_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    int r = fi ? futimens((int)fi->fh, tv) : utimensat(root_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW);
    return r == -1 ? -errno : 0;
}

static int pt_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    int r = fi ? fchmod((int)fi->fh, mode) : fchmodat(root_fd, rel(path), mode, 0);
    return r == -1 ? -errno : 0;
}

static int pt_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
    int r = fi ? fchown((int)fi->fh, uid, gid) : fchownat(root_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);
    return r == -1 ? -errno : 0;
}

static int pt_statfs(const char *path, struct statvfs *sv) {
    (void)path;
    return fstatvfs(root_fd, sv) == -1 ? -errno : 0;
}

static int pt_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)fi;
    int fd = openat(root_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1)
        return -errno;
    int r = datasync ? fdatasync(fd) : fsync(fd);
    int e = errno;
    close(fd);
    return r == -1 ? -e : 0;
}

static const struct fuse_operations ops = {
    .init = pt_init, .getattr = pt_getattr, .access = pt_access, .readdir = pt_readdir,
    .open = pt_open, .create = pt_create, .read = pt_read, .write = pt_write,
    .release = pt_release, .fsync = pt_fsync, .unlink = pt_unlink, .mkdir = pt_mkdir,
    .rmdir = pt_rmdir, .rename = pt_rename, .truncate = pt_truncate, .utimens = pt_utimens,
    .chmod = pt_chmod, .chown = pt_chown, .statfs = pt_statfs, .fsyncdir = pt_fsyncdir,
};

int main(int argc, char *argv[]) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]);
        return 2;
    }
    root_fd = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);   /* before the mount hides it */
    if (root_fd == -1) {
        perror(argv[1]);
        return 1;
    }
    umask(0);
    char *args[] = {argv[0], "-f", "-o", "allow_other,default_permissions,fsname=native-passthrough",
                    argv[1], NULL};
    return fuse_main(5, args, &ops, NULL);
}
