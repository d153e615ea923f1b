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
 *   the SQE      (fill_sqe) where each kind's arguments go
 *
 * A call's arguments are the six 64-bit words of its submit entry.
 */
#ifndef KSVC_TRANSLATION_H
#define KSVC_TRANSLATION_H

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
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
    K_LIMIT
};

/* Do the arguments a[0..5] of a call of this kind fit its SQE, with the syscall's meaning? */
static inline int args_fit(int kind, const uint64_t *a)
{
    int64_t fd = (int64_t)a[0];
    if (fd < INT32_MIN || fd > INT32_MAX) return 0;
    switch (kind) {
    case K_STREAM: case K_POSITIONED: case K_SOCKET:
        if (a[2] > UINT32_MAX) return 0;
        if (kind == K_POSITIONED && (int64_t)a[3] < 0) return 0;
        if (kind == K_SOCKET && (a[4] || a[5] || a[3] > UINT32_MAX)) return 0;
        return 1;
    case K_ACCEPT:
        return a[3] <= UINT32_MAX;
    case K_CONNECT:
        return a[2] <= UINT32_MAX;
    default:
        return 1;
    }
}

/* Would io_uring give exactly the syscall's answer on this descriptor? (One or two syscalls.) */
static inline int fd_suits(int kind, int32_t fd)
{
    if (kind == K_POSITIONED)
        return syscall(SYS_lseek, fd, 0L, SEEK_CUR) >= 0;
    if (kind == K_STREAM || kind == K_SOCKET || kind == K_ACCEPT || kind == K_ACCEPT_PLAIN || kind == K_CONNECT) {
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

#endif
