/* An LD_PRELOAD shim for the fault-injection tests (tests/integration/faults.rs): storage
 * calls fail while a flag file exists.
 *
 *   FAULT_SHIM_FLAG=/path/flag   the flag file, read at every call; what it says:
 *       fsync          fsync/fdatasync/sync_file_range fail with EIO (writes succeed);
 *       fsync SUFFIX   only on files whose path ends with SUFFIX (e.g. trimtab.redb);
 *       enospc DIR     writes to files under DIR fail with ENOSPC (a full disk); other files
 *                      (the log on stderr, sockets) are untouched.
 *
 * Built by the test with `cc -shared -fPIC -o shim.so shim.c -ldl`. Nothing here is used by
 * the server itself. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* The flag file's content, per thread (empty when there is none). */
static __thread char flag_text[4096];

/* 0: no fault, 1: fsync (flag_text + 6 may be a path suffix), 2: enospc (flag_text + 7 is the
 * dir). */
static int fault(void) {
    const char *flag = getenv("FAULT_SHIM_FLAG");
    if (!flag) return 0;
    int saved = errno;
    int fd = open(flag, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        errno = saved;
        return 0;
    }
    ssize_t n = read(fd, flag_text, sizeof flag_text - 1);
    close(fd);
    errno = saved;
    if (n <= 0) return 0;
    flag_text[n] = 0;
    while (n > 0 && (flag_text[n - 1] == '\n' || flag_text[n - 1] == ' ')) flag_text[--n] = 0;
    if (strncmp(flag_text, "fsync", 5) == 0 && (flag_text[5] == 0 || flag_text[5] == ' ')) return 1;
    if (strncmp(flag_text, "enospc ", 7) == 0) return 2;
    return 0;
}

/* The path fd is open on, into path (size bytes); its length, or 0 when unknown. errno is
 * kept as it was. */
static size_t fd_path(int fd, char *path, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int saved = errno;
    ssize_t n = readlink(link, path, size - 1);
    errno = saved;
    if (n <= 0) return 0;
    path[n] = 0;
    return (size_t)n;
}

/* Whether fd is a file under the enospc fault's dir. */
static int in_dir(int fd) {
    const char *dir = flag_text + 7;
    char path[4096];
    if (fd_path(fd, path, sizeof path) == 0) return 0;
    size_t d = strlen(dir);
    return strncmp(path, dir, d) == 0 && (path[d] == '/' || path[d] == 0);
}

#define REAL(name, ret, ...)                                                  \
    static ret (*real_##name)(__VA_ARGS__);                                   \
    if (!real_##name) real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

/* Whether fd's path ends with the fsync fault's suffix (any fd when there is none). */
static int suffix_matches(int fd) {
    if (flag_text[5] != ' ') return 1;
    const char *suffix = flag_text + 6;
    char path[4096];
    size_t n = fd_path(fd, path, sizeof path);
    if (n == 0) return 0;
    size_t s = strlen(suffix);
    return n >= s && strcmp(path + n - s, suffix) == 0;
}

static int sync_fails(int fd) {
    return fault() == 1 && suffix_matches(fd);
}

int fsync(int fd) {
    REAL(fsync, int, int);
    if (sync_fails(fd)) {
        errno = EIO;
        return -1;
    }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, int, int);
    if (sync_fails(fd)) {
        errno = EIO;
        return -1;
    }
    return real_fdatasync(fd);
}

int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags) {
    REAL(sync_file_range, int, int, off64_t, off64_t, unsigned int);
    if (sync_fails(fd)) {
        errno = EIO;
        return -1;
    }
    return real_sync_file_range(fd, off, n, flags);
}

static int full(int fd) {
    if (fault() == 2 && in_dir(fd)) {
        errno = ENOSPC;
        return 1;
    }
    return 0;
}

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write, ssize_t, int, const void *, size_t);
    if (full(fd)) return -1;
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite, ssize_t, int, const void *, size_t, off_t);
    if (full(fd)) return -1;
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    REAL(pwrite64, ssize_t, int, const void *, size_t, off64_t);
    if (full(fd)) return -1;
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(writev, ssize_t, int, const struct iovec *, int);
    if (full(fd)) return -1;
    return real_writev(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    REAL(pwritev, ssize_t, int, const struct iovec *, int, off_t);
    if (full(fd)) return -1;
    return real_pwritev(fd, iov, cnt, off);
}

int fallocate(int fd, int mode, off_t off, off_t len) {
    REAL(fallocate, int, int, int, off_t, off_t);
    if (full(fd)) return -1;
    return real_fallocate(fd, mode, off, len);
}

int ftruncate(int fd, off_t len) {
    REAL(ftruncate, int, int, off_t);
    if (full(fd)) return -1;
    return real_ftruncate(fd, len);
}
