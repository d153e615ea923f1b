/* KSVC express lane (ksvc-basic): the dispatcher's plain reads and writes, submit entry to SQE
 * and CQE to completion entry, in C.
 *
 * The loops, each mirrored line for line by ksvc_basic/express_reference.py,
 * which is the specification; the tests run both and compare:
 *
 *   ksvc_express_submit  drain simple read/write entries at the submit ring's head into SQEs
 *   ksvc_express_reap    CQEs of those entries into completion entries
 *   ksvc_express_turn    the two above in one call (reap, then submit)
 *
 * Layouts are the channel ABI (ksvc_host/abi/layout.py) and the io_uring ABI
 * (ksvc_host/abi/io_uring.py); the offsets below are pinned by tests. Heads
 * and tails written by the other side are loaded with acquire, ours
 * published with release.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "translation.h"   /* which calls become which SQE: shared with lane.c */

#define RING_HEAD 16
#define RING_TAIL 24
#define RING_ENTRIES 64
#define SUBMIT_SIZE 64
#define COMPLETE_SIZE 32
#define CQE_SIZE 16
#define FD_CACHE 8

static inline uint64_t load_acquire64(const uint8_t *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
static inline void store_release64(uint8_t *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }
static inline uint32_t load_acquire32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Keep in step with STRUCTS in ksvc_basic/express_cdef.py. */
struct ksvc_express {
    uint8_t *sring; uint64_t shead; uint32_t smask;
    uint8_t *cring; uint64_t ctail; uint32_t csize;
    uint32_t *sq_head; uint32_t *sq_tail; uint32_t *sq_flags; uint32_t *sq_array;
    uint32_t sq_mask; uint32_t sq_entries;
    uint32_t *cq_head; uint32_t *cq_tail; uint32_t cq_mask;
    uint8_t *sqes; uint8_t *cqes;
    int32_t ring_fd; int32_t sqpoll;
    uint8_t opcode[512]; uint8_t kind[512];  /* per syscall: io_uring opcode, and kind (translation.h; 0: not taken) */
    uint64_t excl_lo; uint64_t excl_hi;
    uint64_t tag;
    uint32_t room;
    uint32_t taken; uint32_t completed; uint32_t unsubmitted;
    int32_t error;
    uint32_t cq_left;   /* CQEs the last reap left in the CQs (not ours, or no room) */
    uint32_t s_left;    /* submit entries the last submit left in the ring (for the generic loop) */
    /* The assist ring beside an SQPOLL ring (a_ring_fd < 0: none). Positioned entries go to it
     * once the poller has a_backlog SQEs it has not consumed yet (0: never), or when the poller's
     * SQ is full; the submitting thread's own io_uring_enter then runs them (page-cached data:
     * before it returns). */
    int32_t a_ring_fd; uint32_t a_backlog;
    uint32_t *a_sq_head; uint32_t *a_sq_tail; uint32_t *a_sq_array; uint32_t a_sq_mask; uint32_t a_sq_entries;
    uint32_t *a_cq_head; uint32_t *a_cq_tail; uint32_t a_cq_mask;
    uint8_t *a_sqes; uint8_t *a_cqes;
    uint32_t ephemeral;  /* nonzero: the thread running this turn may exit before the work ends (the
                          * kernel ends a request when its submitter exits): no assist ring */
    uint32_t a_pending;  /* published to the assist ring, not yet entered (EAGAIN/EBUSY) */
    uint32_t a_taken;    /* of the last submit, entries run on the assist ring */
    uint64_t a_total;    /* entries run on the assist ring since the lane was built */
};

#define NEED_WAKEUP 1u
#define ENTER_SQ_WAKEUP 2u

struct fd_cache { int32_t fd[FD_CACHE]; int8_t ok[FD_CACHE]; int n; };

/* fd_suits (translation.h), remembered for the descriptors of one submit. */
static int fd_ok(struct fd_cache *c, int32_t fd, int kind)
{
    for (int i = 0; i < c->n; i++)
        if (c->fd[i] == fd) return c->ok[i];
    int ok = fd_suits(kind, fd);
    if (c->n < FD_CACHE) { c->fd[c->n] = fd; c->ok[c->n] = (int8_t)ok; c->n++; }
    return ok;
}

/* io_uring_enter, retried on EINTR; returns what the kernel took, or -errno. */
static long enter(int fd, uint32_t n, uint32_t flags)
{
    for (;;) {
        long r = syscall(SYS_io_uring_enter, fd, n, 0, flags, NULL, 0);
        if (r < 0 && errno == EINTR) continue;
        return r < 0 ? -errno : r;
    }
}

int ksvc_express_submit(struct ksvc_express *x, uint32_t max_take)
{
    struct fd_cache cache = {.n = 0};
    uint64_t head = x->shead;
    uint64_t stail = load_acquire64(x->sring + RING_TAIL);
    uint64_t avail = stail - head;
    uint32_t sq_tail = *x->sq_tail;
    uint32_t backlog = sq_tail - load_acquire32(x->sq_head);   /* SQEs the kernel has not consumed */
    uint32_t sq_free = x->sq_entries - backlog;
    int assist = x->a_ring_fd >= 0 && !x->ephemeral;
    uint32_t a_tail = assist ? *x->a_sq_tail : 0;
    uint32_t a_free = assist ? x->a_sq_entries - (a_tail - load_acquire32(x->a_sq_head)) : 0;
    uint32_t limit = max_take;
    uint32_t n = 0, nm = 0, na = 0;
    x->taken = 0; x->unsubmitted = 0; x->error = 0; x->a_taken = 0; x->s_left = (uint32_t)avail;
    if (avail > x->smask + 1) return -EUCLEAN;  /* corrupted counters: let the reference path report it */
    if (limit > avail) limit = (uint32_t)avail;
    if (limit > x->room) limit = x->room;
    while (n < limit) {
        const uint8_t *e = x->sring + RING_ENTRIES + (size_t)((head + n) & x->smask) * SUBMIT_SIZE;
        uint64_t w[8];
        memcpy(w, e, sizeof w);
        uint32_t nr = (uint32_t)w[1], flags = (uint32_t)(w[1] >> 32);
        if (flags || nr >= NR_TABLE || !x->kind[nr]) break;
        int kind = x->kind[nr];   /* K_STREAM, K_POSITIONED or K_SOCKET (express.py builds the table) */
        const uint64_t *a = w + 2;
        if (w[0] >= x->tag || !args_fit(kind, a)) break;
        uint64_t addr = a[1], len = a[2];
        if (x->excl_lo < x->excl_hi && addr < x->excl_hi && addr + len > x->excl_lo) break;
        /* Only positioned calls go to the assist ring: a file read or write always finishes, a stream may wait. */
        int pos = kind == K_POSITIONED;
        int assist_ok = pos && assist && na < a_free;
        int to_assist = assist_ok && ((x->a_backlog && backlog + nm >= x->a_backlog) || nm >= sq_free);
        if (!to_assist && nm >= sq_free) break;
        if (!fd_ok(&cache, (int32_t)a[0], kind)) break;
        uint64_t ud = x->tag | w[0];
        if (to_assist) {
            uint32_t idx = (a_tail + na) & x->a_sq_mask;
            fill_sqe(x->a_sqes + (size_t)idx * SQE_SIZE, x->opcode[nr], kind, a, ud);
            x->a_sq_array[idx] = idx;
            na++;
        } else {
            uint32_t idx = (sq_tail + nm) & x->sq_mask;
            fill_sqe(x->sqes + (size_t)idx * SQE_SIZE, x->opcode[nr], kind, a, ud);
            x->sq_array[idx] = idx;
            nm++;
        }
        n++;
    }
    x->s_left = (uint32_t)(avail - n);
    if (!n) return 0;
    x->shead = head + n;
    store_release64(x->sring + RING_HEAD, x->shead);
    x->taken = n;
    if (nm) {
        store_release32(x->sq_tail, sq_tail + nm);
        int wake = 1;
        uint32_t enter_flags = 0;
        if (x->sqpoll) {
            wake = (load_acquire32(x->sq_flags) & NEED_WAKEUP) != 0;
            enter_flags = ENTER_SQ_WAKEUP;
        }
        if (wake) {
            long r = enter(x->ring_fd, nm, enter_flags);
            if (r == -EAGAIN || r == -EBUSY) x->unsubmitted = nm;
            else if (r < 0) { x->error = (int32_t)r; x->unsubmitted = nm; }
            else if (!x->sqpoll && (uint32_t)r < nm) x->unsubmitted = nm - (uint32_t)r;
        }
    }
    if (na) {
        store_release32(x->a_sq_tail, a_tail + na);
        x->a_taken = na;
        x->a_total += na;
    }
    if (na || (x->a_pending && assist)) {
        uint32_t want = x->a_pending + na;
        long r = enter(x->a_ring_fd, want, 0);   /* runs them here, on this thread */
        if (r == -EAGAIN || r == -EBUSY) x->a_pending = want;
        else if (r < 0) { x->error = (int32_t)r; x->a_pending = want; }
        else x->a_pending = want - (uint32_t)r;
    }
    return (int)n;
}

/* Move the express CQEs at the head of one CQ into the completion ring; return how many. */
static uint32_t reap_cq(struct ksvc_express *x, uint32_t *cq_head, uint32_t *cq_tail, uint32_t cq_mask,
                        const uint8_t *cqes, uint64_t chead, uint32_t *left)
{
    uint32_t head = *cq_head;
    uint32_t tail = load_acquire32(cq_tail);
    uint32_t n = 0;
    while (head != tail) {
        const uint8_t *c = cqes + (size_t)(head & cq_mask) * CQE_SIZE;
        uint64_t ud; int32_t res;
        memcpy(&ud, c, 8); memcpy(&res, c + 8, 4);
        if ((ud & ~(x->tag - 1)) != x->tag) break;   /* not ours: the backend's reap takes it */
        if (x->ctail - chead >= x->csize) break;      /* completion ring full: back-pressure */
        uint8_t *d = x->cring + RING_ENTRIES + (size_t)(x->ctail & (x->csize - 1)) * COMPLETE_SIZE;
        uint64_t w[4] = {ud & (x->tag - 1), (uint64_t)(int64_t)res, 0, 0};
        memcpy(d, w, sizeof w);
        x->ctail++;
        head++;
        n++;
    }
    if (n) store_release32(cq_head, head);
    *left += tail - head;
    return n;
}

int ksvc_express_reap(struct ksvc_express *x)
{
    uint64_t chead = load_acquire64(x->cring + RING_HEAD);
    uint32_t left = 0;
    uint32_t n = reap_cq(x, x->cq_head, x->cq_tail, x->cq_mask, x->cqes, chead, &left);
    if (x->a_ring_fd >= 0)
        n += reap_cq(x, x->a_cq_head, x->a_cq_tail, x->a_cq_mask, x->a_cqes, chead, &left);
    x->completed = n;
    x->cq_left = left;
    return (int)n;
}

/* One turn of the lane: completions first (room in the completion ring for what follows), then
 * submissions. x->completed holds what the reap moved. */
int ksvc_express_turn(struct ksvc_express *x, uint32_t max_take)
{
    ksvc_express_reap(x);
    uint32_t completed = x->completed;
    int n = ksvc_express_submit(x, max_take);
    x->completed = completed;
    return n;
}
