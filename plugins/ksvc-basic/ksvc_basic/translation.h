/* KSVC lanes' translation (ksvc-basic): when a syscall becomes an io_uring SQE, and which SQE.
 *
 * The one statement of it for both compiled lanes: the thread lanes (lane.c)
 * and the dispatcher's express lane (express.c). ksvc_basic/translation.py
 * says the same in Python for their pure-Python twins, and holds the table
 * of calls (CALLS: syscall -> io_uring opcode, kind) each lane is given when
 * it is built. The rules are those of ksvc_host/translate.py, the generic
 * path: a lane takes a call only where the io_uring operation gives exactly
 * the direct syscall's answer.
 *
 *   arguments    (args_fit) a descriptor, length and flags that fit the SQE's
 *                fields; a positioned call's offset >= 0 (io_uring reads -1 as
 *                "at the file position", the syscall says EINVAL); sendto and
 *                recvfrom without an address (RECV/SEND take none)
 *   descriptor   (fd_suits) a positioned call on a seekable file (on a pipe or
 *                socket the syscall says ESPIPE, io_uring would wait); a stream,
 *                socket, accept or connect call on a blocking descriptor (with
 *                O_NONBLOCK the syscall says EAGAIN at once, io_uring would wait)
 *   the SQE      (fill_sqe) where each kind's arguments go; the stat calls
 *                (fill_statx_sqe) run as STATX into the lane's buffer, converted
 *                into the caller's struct stat once it completes (statx_to_stat)
 *
 * A call's arguments are the six 64-bit words of its submit entry.
 */
#ifndef KSVC_TRANSLATION_H
#define KSVC_TRANSLATION_H

#include <fcntl.h>
#include <errno.h>
#include <linux/stat.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define NR_TABLE 512              /* syscall numbers a lane's tables cover */
#define SQE_SIZE 64
#define FSYNC_DATASYNC (1u << 0)  /* sqe.fsync_flags */

/* What kind of call a syscall is: where its arguments go, and which rules apply. */
enum kind {
    K_NONE = 0,
    K_STREAM,      /* read, write: fd, buf, len at the file position; a blocking descriptor */
    K_POSITIONED,  /* pread64, pwrite64: fd, buf, len, off >= 0; a seekable descriptor */
    K_SOCKET,      /* recvfrom, sendto without an address: fd, buf, len, flags; a blocking socket */
    K_CLOSE,       /* close: fd */
    K_FSYNC,       /* fsync: fd */
    K_FDATASYNC,   /* fdatasync: fd */
    K_OPENAT,      /* openat: dirfd, path, flags, mode */
    K_ACCEPT,      /* accept4: fd, addr, addrlen*, flags; a blocking socket */
    K_ACCEPT_PLAIN,/* accept: fd, addr, addrlen* */
    K_CONNECT,     /* connect: fd, addr, addrlen; a blocking socket */
    K_STAT,        /* stat: path, statbuf (STATX at AT_FDCWD) */
    K_LSTAT,       /* lstat: path, statbuf (STATX, AT_SYMLINK_NOFOLLOW) */
    K_FSTAT,       /* fstat: fd, statbuf (STATX of "", AT_EMPTY_PATH) */
    K_FSTATAT,     /* newfstatat: dirfd, path, statbuf, flags */
    K_VECTORED,    /* readv, writev: fd, iov, iovcnt at the file position; a blocking descriptor */
    K_VECTORED_POSITIONED, /* preadv, pwritev: fd, iov, iovcnt, off >= 0; a seekable descriptor */
    K_VECTORED_V2, /* preadv2, pwritev2: fd, iov, iovcnt, off >= -1 (-1: the file position), -, flags;
                    * a blocking, seekable descriptor (a pipe at its position is left to the host) */
    K_LIMIT
};

#define STATX_BUF_SIZE 256        /* struct statx */
#define STAT_MASK 0x7ffu          /* STATX_BASIC_STATS: every field struct stat has */
#define AT_EMPTY_PATH_FLAG 0x1000 /* AT_EMPTY_PATH (fcntl.h has it only with _GNU_SOURCE) */

static inline int is_stat_kind(int kind) { return kind >= K_STAT && kind <= K_FSTATAT; }

/* Do the arguments a[0..5] of a call of this kind fit its SQE, with the syscall's meaning? */
static inline int args_fit(int kind, const uint64_t *a)
{
    int64_t fd = (int64_t)a[0];
    if (kind == K_STAT || kind == K_LSTAT) return 1;   /* a[0] is the path */
    if (fd < INT32_MIN || fd > INT32_MAX) return 0;
    switch (kind) {
    case K_VECTORED_V2:
        return a[2] <= UINT32_MAX && (int64_t)a[3] >= -1 && a[5] <= UINT32_MAX;
    case K_STREAM: case K_POSITIONED: case K_SOCKET: case K_VECTORED: case K_VECTORED_POSITIONED:
        if (a[2] > UINT32_MAX) return 0;
        if ((kind == K_POSITIONED || kind == K_VECTORED_POSITIONED) && (int64_t)a[3] < 0) return 0;
        if (kind == K_SOCKET && (a[4] || a[5] || a[3] > UINT32_MAX)) return 0;
        return 1;
    case K_ACCEPT:
        return a[3] <= UINT32_MAX;
    case K_CONNECT:
        return a[2] <= UINT32_MAX;
    case K_FSTATAT:
        return a[3] <= UINT32_MAX;
    default:
        return 1;
    }
}

/* Would io_uring give exactly the syscall's answer on this descriptor? (One or two syscalls.) */
static inline int fd_suits(int kind, int32_t fd)
{
    if (kind == K_POSITIONED || kind == K_VECTORED_POSITIONED || kind == K_VECTORED_V2)
        if (syscall(SYS_lseek, fd, 0L, SEEK_CUR) < 0) return 0;
    if (kind == K_STREAM || kind == K_SOCKET || kind == K_ACCEPT || kind == K_ACCEPT_PLAIN || kind == K_CONNECT
        || kind == K_VECTORED || kind == K_VECTORED_V2) {
        long fl = syscall(SYS_fcntl, fd, F_GETFL);
        return !(fl >= 0 && (fl & O_NONBLOCK));
    }
    return 1;
}

/* Write the SQE of a call of this kind (arguments a[0..5], taken by args_fit) at s: opcode, fd,
 * off, addr, len, the op's flags and user_data; the rest zero (a lane may set flags, ioprio and
 * the buffer group after). */
static inline void fill_sqe(uint8_t *s, uint8_t opcode, int kind, const uint64_t *a, uint64_t user_data)
{
    uint64_t off = 0, addr = 0;
    uint32_t len = 0, op_flags = 0;
    int32_t fd = (int32_t)a[0];
    switch (kind) {
    case K_STREAM: addr = a[1]; len = (uint32_t)a[2]; off = UINT64_MAX; break;   /* -1: the file position */
    case K_POSITIONED: addr = a[1]; len = (uint32_t)a[2]; off = a[3]; break;
    case K_VECTORED: addr = a[1]; len = (uint32_t)a[2]; off = UINT64_MAX; break;   /* len: the iovec count */
    case K_VECTORED_POSITIONED: addr = a[1]; len = (uint32_t)a[2]; off = a[3]; break;
    case K_VECTORED_V2: addr = a[1]; len = (uint32_t)a[2]; off = a[3]; op_flags = (uint32_t)a[5]; break;
    case K_SOCKET: addr = a[1]; len = (uint32_t)a[2]; op_flags = (uint32_t)a[3]; break;
    case K_FDATASYNC: op_flags = FSYNC_DATASYNC; break;
    case K_OPENAT: addr = a[1]; op_flags = (uint32_t)a[2]; len = (uint32_t)a[3]; break;
    case K_ACCEPT: addr = a[1]; off = a[2]; op_flags = (uint32_t)a[3]; break;   /* off: the addrlen pointer */
    case K_ACCEPT_PLAIN: addr = a[1]; off = a[2]; break;
    case K_CONNECT: addr = a[1]; off = a[2] & UINT32_MAX; break;               /* off: the address length */
    default: break;
    }
    memset(s, 0, SQE_SIZE);
    s[0] = opcode;
    memcpy(s + 4, &fd, 4);
    memcpy(s + 8, &off, 8);
    memcpy(s + 16, &addr, 8);
    memcpy(s + 24, &len, 4);
    memcpy(s + 28, &op_flags, 4);
    memcpy(s + 32, &user_data, 8);
}

/* The caller's struct stat of a stat call of this kind (arguments a). */
static inline uint64_t stat_out_of(int kind, const uint64_t *a) { return kind == K_FSTATAT ? a[2] : a[1]; }

/* The STATX SQE of a stat call of this kind, into the lane's buffer statx_buf. */
static inline void fill_statx_sqe(uint8_t *s, uint8_t opcode, int kind, const uint64_t *a, uint64_t statx_buf,
                                  uint64_t user_data)
{
    static const char empty_path[1] = "";
    int32_t dirfd = AT_FDCWD;
    uint64_t path = a[0];
    uint32_t flags = 0, mask = STAT_MASK;
    if (kind == K_LSTAT) flags = AT_SYMLINK_NOFOLLOW;
    if (kind == K_FSTAT) { dirfd = (int32_t)a[0]; path = (uint64_t)(uintptr_t)empty_path; flags = AT_EMPTY_PATH_FLAG; }
    if (kind == K_FSTATAT) { dirfd = (int32_t)a[0]; path = a[1]; flags = (uint32_t)a[3]; }
    memset(s, 0, SQE_SIZE);
    s[0] = opcode;
    memcpy(s + 4, &dirfd, 4);
    memcpy(s + 8, &statx_buf, 8);   /* off: the struct statx the kernel fills */
    memcpy(s + 16, &path, 8);
    memcpy(s + 24, &mask, 4);
    memcpy(s + 28, &flags, 4);
    memcpy(s + 32, &user_data, 8);
}

/* The kernel's new_encode_dev: how struct stat carries a device number. */
static inline uint64_t encode_dev(uint32_t major, uint32_t minor)
{
    return (uint64_t)(minor & 0xffu) | ((uint64_t)major << 8) | ((uint64_t)(minor & ~0xffu) << 12);
}

/* x86-64 struct stat (144 bytes), the layout the old calls return (ksvc_host/abi/linux.py: STAT). */
struct old_stat {
    uint64_t dev, ino, nlink;
    uint32_t mode, uid, gid, pad0;
    uint64_t rdev;
    int64_t size, blksize, blocks;
    uint64_t atime, atime_nsec, mtime, mtime_nsec, ctime, ctime_nsec;
    int64_t reserved[3];
};
_Static_assert(sizeof(struct old_stat) == 144, "struct stat is 144 bytes on x86-64");
_Static_assert(sizeof(struct statx) == STATX_BUF_SIZE, "struct statx is 256 bytes");

/* A filled struct statx into the struct stat at out (the conversion ksvc_host/translate.py makes): 0, or
 * -EFAULT when out is not writable (copied with process_vm_writev, as the dispatcher copies: the address is
 * the caller's, and a bad one must fail the call, not crash the process). */
static inline int statx_to_stat(const void *statx, uint64_t out)
{
    const struct statx *x = statx;
    struct old_stat st;
    memset(&st, 0, sizeof st);
    st.dev = encode_dev(x->stx_dev_major, x->stx_dev_minor);
    st.ino = x->stx_ino;
    st.nlink = x->stx_nlink;
    st.mode = x->stx_mode;
    st.uid = x->stx_uid;
    st.gid = x->stx_gid;
    st.rdev = encode_dev(x->stx_rdev_major, x->stx_rdev_minor);
    st.size = (int64_t)x->stx_size;
    st.blksize = x->stx_blksize;
    st.blocks = (int64_t)x->stx_blocks;
    st.atime = (uint64_t)x->stx_atime.tv_sec; st.atime_nsec = x->stx_atime.tv_nsec;
    st.mtime = (uint64_t)x->stx_mtime.tv_sec; st.mtime_nsec = x->stx_mtime.tv_nsec;
    st.ctime = (uint64_t)x->stx_ctime.tv_sec; st.ctime_nsec = x->stx_ctime.tv_nsec;
    struct iovec local = {&st, sizeof st}, remote = {(void *)(uintptr_t)out, sizeof st};
    long n = syscall(SYS_process_vm_writev, (long)syscall(SYS_getpid), &local, 1L, &remote, 1L, 0L);
    return n == (long)sizeof st ? 0 : -EFAULT;
}

#endif
