/* KSVC lane (ksvc-basic): a channel owned by one thread, with an io_uring of its own.
 *
 * A lane is the whole data flow of docs/design.md §5 for the calls programs
 * make in loops, in C, for the one thread that owns it:
 *
 *   entry       the caller's syscall as a 64-byte submit entry on the lane's submit ring
 *   turn        route it (the table the host filled from the router), translate it to
 *               an SQE, io_uring_enter once for the batch, reap CQEs into 32-byte
 *               completion entries on the lane's completion ring
 *   result      the caller's value built once, in place: bytes the kernel read into
 *               (never zeroed first), or the count; or an OSError
 *
 * One thread submits to a lane's io_uring, by construction: the lane belongs
 * to the thread that created it and refuses (returns None, and the caller
 * takes the shared channel) on any other. So no request can be ended by the
 * exit of a thread that did not wait for it, and the kernel's single-issuer
 * and deferred task-run modes apply (IORING_SETUP_SINGLE_ISSUER and
 * DEFER_TASKRUN, when the kernel has them; ksvc_basic/own_rings.py chooses
 * the flags).
 *
 * Two ways of driving a lane:
 *   blocking   call()/read(): write the entry, run the turn, wait in the
 *              kernel (GIL released) for this entry's completion
 *   loop       start()/start_read() write entries with a future each; turn()
 *              (an event loop callback: once per loop iteration, and when the
 *              lane's eventfd says the kernel completed something) submits them
 *              and resolves every future a reap produced, in one C call
 *
 * A lane accepts an entry only where its io_uring operation gives exactly the
 * direct syscall's result: the same checks as the dispatcher (a positioned
 * call on a seekable descriptor, a stream call on a blocking one, arguments
 * that fit the SQE). Anything else returns None: the caller's generic path
 * (the shared channel and the dispatcher) runs it.
 *
 * Interrupts (blocking): a signal ends the kernel wait with EINTR; the
 * signal's Python handler runs here (PyErr_CheckSignals) and when it raises,
 * the entry is cancelled in the kernel and its answer awaited (at most
 * settle_ns) before the exception propagates. Bytes a stream read received
 * before its cancellation took effect are kept (take_late()). An entry the
 * kernel still holds after that keeps its memory and the lane (dead()):
 * the host never reuses or frees it.
 *
 * Constants and layouts below are the kernel's io_uring ABI and the channel
 * ABI (ksvc_host/abi); tests pin them against the Python tables (CONSTANTS).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "translation.h"   /* which calls become which SQE: shared with express.c */
#include "waiter.h"        /* the futures of loop entries, woken in batches at the end of a turn */

/* io_uring ABI ------------------------------------------------------------- */
#define NR_IO_URING_SETUP 425
#define NR_IO_URING_ENTER 426
#define NR_IO_URING_REGISTER 427
#define OFF_SQ_RING 0ULL
#define OFF_CQ_RING 0x8000000ULL
#define OFF_SQES 0x10000000ULL
#define FEAT_SINGLE_MMAP (1u << 0)
#define FEAT_EXT_ARG (1u << 8)
#define SETUP_CLAMP (1u << 4)
#define SETUP_SUBMIT_ALL (1u << 7)
#define SETUP_COOP_TASKRUN (1u << 8)
#define SETUP_SINGLE_ISSUER (1u << 12)
#define SETUP_DEFER_TASKRUN (1u << 13)
#define ENTER_GETEVENTS (1u << 0)
#define ENTER_EXT_ARG (1u << 3)
#define REGISTER_EVENTFD 4
#define OP_FSYNC 3
#define OP_ACCEPT 13
#define OP_ASYNC_CANCEL 14
#define OP_CONNECT 16
#define OP_OPENAT 18
#define OP_CLOSE 19
#define OP_READ 22
#define OP_WRITE 23
#define OP_SEND 26
#define OP_RECV 27
#define RECVSEND_POLL_FIRST (1u << 0)   /* in sqe.ioprio: arm the poll before trying */
#define RECV_MULTISHOT (1u << 1)        /* in sqe.ioprio: one receive SQE, a CQE per arrival */
#define ACCEPT_MULTISHOT (1u << 0)      /* in sqe.ioprio of an accept: a CQE per connection */
#define SQE_BUFFER_SELECT (1u << 5)     /* sqe.flags: the kernel picks a provided buffer */
#define CQE_F_BUFFER (1u << 0)          /* cqe.flags: a provided buffer was used; its id is flags >> 16 */
#define CQE_F_MORE (1u << 1)            /* cqe.flags: a multishot request goes on */
#define CQE_BUFFER_SHIFT 16
#define REGISTER_PBUF_RING 22
struct buf_reg { uint64_t ring_addr; uint32_t ring_entries; uint16_t bgid; uint16_t flags; uint64_t resv[3]; };
#define CQE_SIZE 16

struct sqring_offsets { uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1; uint64_t user_addr; };
struct cqring_offsets { uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1; uint64_t user_addr; };
struct uring_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd, resv[3];
    struct sqring_offsets sq_off;
    struct cqring_offsets cq_off;
};
struct getevents_arg { uint64_t sigmask; uint32_t sigmask_sz; uint32_t min_wait_usec; uint64_t ts; };
struct kernel_ts { int64_t tv_sec; int64_t tv_nsec; };

/* Channel ABI: a submit entry is corr u64, nr u32, flags u32, args u64[6]; a completion
 * entry is corr u64, result i64, flags u32, pad u32, reserved u64. */
#define SUBMIT_SIZE 64
#define COMPLETE_SIZE 32
#define ENTRY_POLL_FIRST (1u << 0)   /* a submit entry's flags (lane-internal): a receive that polls first */
#define ENTRY_MULTISHOT (1u << 1)    /* a multishot receive into the lane's provided buffers */
#define ENTRY_ACCEPTS (1u << 2)      /* a multishot accept */
#define ENTRY_PREBUILT (1u << 3)     /* the caller built the SQE: args[0] points at its 64 bytes */


/* Lane limits. */
#define LANE_SLOTS 256          /* default entries in flight at once */
#define MAX_SLOTS (1u << 16)    /* a token keeps the slot in its low GEN_SHIFT bits */
#define MANY_CHUNK 256          /* read_many, rw_many: entries per chunk at most */
#define MAX_RW 0x7ffff000       /* the most one read or write moves (Linux's MAX_RW_COUNT) */
#define TURN_FLUSH 16           /* a loop turn submits what its callbacks started once this many are queued */
#define TURN_BUDGET 256         /* completions after which a turn ends, so the event loop's other callbacks run */
#define PBUF_COUNT 512          /* provided buffers of a lane's receive loops (a power of two) */
#define PBUF_SIZE 16384         /* bytes each: what one receive completion delivers at most */
#define PBUF_GROUP 0            /* their buffer group id */
#define WAIT_SLICE_NS 50000000  /* a blocked caller looks at the lane's closing deadline this often */
#define CANCEL_TAG (1ULL << 62) /* user_data of the lane's own cancel requests */
#define GEN_SHIFT 16            /* a token: generation << GEN_SHIFT | slot */

struct slot {
    PyObject *fut;     /* the loop lane's future (NULL: free, or a blocking call) */
    PyObject *obj;     /* bytes being read into, or what the buffer belongs to */
    PyObject *orphan;  /* a multishot receive's on_data exception, for on_end once the series ends */
    uint32_t gen;
    uint32_t len;      /* bytes requested (reads into obj) */
    uint8_t reads;     /* nonzero: obj is a bytes object the kernel reads into */
    uint8_t busy;
    uint8_t stream;    /* a stream read: bytes a cancelled one got are kept */
    uint8_t has_view;  /* view holds the buffer a write sends from */
    uint8_t ints;      /* deliver the result as an int, -errno included (the caller makes the error) */
    uint8_t call;      /* fut is a callable, called with the value (-errno as an int on failure) */
    uint8_t loop;      /* a receive loop: after each delivery the next receive is queued */
    uint8_t stopping;  /* a receive loop asked to end: no next receive */
    uint8_t cancelled; /* a callback entry whose cancel was asked: a receive loop delivers nothing more */
    uint8_t multi;     /* a receive loop as one multishot receive into the lane's provided buffers */
    uint8_t quiet;     /* a send whose callback runs only if it is short, fails, or was watched */
    uint8_t accepts;   /* an accept loop: one multishot accept, a callback per connection */
    uint8_t settles;   /* its waiter's cancel() asked the kernel to cancel it: a failure ends it cancelled */
    uint32_t group;    /* a read of a group (start_read_many): its leader's slot + 1 (0: none) */
    uint32_t left;     /* a group's leader: reads of the group not yet answered */
    PyObject *results; /* a group's leader: the list its future gets */
    int32_t fd;
    int32_t pos;       /* read_many: the entry's place in its chunk */
    uint32_t nr;       /* a receive loop's syscall */
    PyObject *end;     /* a receive loop's on_end callable */
    Py_buffer view;
    uint64_t stat_out; /* a stat call: the caller's struct stat, filled from the slot's statx buffer */
};

typedef struct {
    PyObject_HEAD
    PyObject *weakrefs;
    int ring_fd;
    int dead;              /* 1: closed, forked away, or memory still lent to the kernel */
    int refusing;          /* 1: closing; calls already waiting go on, new ones are refused */
    uint64_t owner;        /* thread_serial() of the one submitting thread */
    uint32_t setup_flags;
    uint32_t features;
    int poll_first;        /* the kernel knows IORING_RECVSEND_POLL_FIRST (5.19; implied by SINGLE_ISSUER, 6.0) */
    /* provided buffers (receive loops): a ring of PBUF_COUNT io_uring_buf entries, and the buffers */
    int pbuf_state;        /* 0: not tried yet, 1: registered, -1: the kernel has none (single receives) */
    uint8_t *pbuf_ring;
    uint8_t *pbufs;
    uint16_t pbuf_tail;
    /* io_uring */
    void *sq_map; size_t sq_map_len;
    void *cq_map; size_t cq_map_len;
    void *sqes_map; size_t sqes_map_len;
    uint32_t *sq_head, *sq_tail, *sq_array, sq_mask, sq_entries;
    uint32_t *cq_head, *cq_tail, cq_mask;
    uint8_t *sqes, *cqes;
    uint32_t unsubmitted;  /* SQEs written, not yet accepted by the kernel */
    /* the lane's channel: submit and completion entries */
    uint32_t nslots, slot_mask;   /* entries in flight at once (a power of two) */
    uint8_t *sring;        /* nslots submit entries */
    uint64_t s_head, s_tail;
    uint8_t *cring;        /* nslots completion entries */
    uint64_t c_head, c_tail;
    /* routing */
    uint8_t kind[NR_TABLE];
    uint8_t opcode[NR_TABLE];
    uint32_t recv_nr, send_nr;   /* the syscalls routed to RECV and SEND on a socket (NR_TABLE: none) */
    uint32_t accept_nr;          /* the syscall routed to ACCEPT with flags (accept4) */
    /* in flight */
    struct slot *slots;
    uint8_t *statx_bufs;   /* stat calls: a struct statx per slot, made on the first */
    uint32_t *free_list;
    uint32_t n_free;
    uint32_t inflight;
    /* lifetime */
    int64_t settle_ns;
    int64_t deadline_ns;   /* > 0: closing; a blocked caller cancels its entry once it passes */
    int busy_blocking;     /* a blocking call is inside the kernel wait */
    int in_turn;           /* turn() is delivering: a callback's own turn() call does nothing */
    int unfinished;        /* the last turn stopped at TURN_BUDGET: completions may be waiting */
    PyObject *late;        /* (fd, result, bytes or None) of an interrupted call, once settled; or NULL */
    uint64_t entries;      /* entries the lane ran */
    uint64_t enters;       /* io_uring_enter calls */
} Lane;

static PyObject *str_set_result, *str_set_exception;

/* A number for the calling thread that no other thread of the process ever gets: thread idents
 * (pthread_t) and even kernel tids are reused once a thread exits, and the kernel ties a
 * single-issuer ring to its first submitter for good. */
static uint64_t thread_serial(void)
{
    static uint64_t next = 0;
    static __thread uint64_t mine = 0;
    if (!mine) mine = __atomic_add_fetch(&next, 1, __ATOMIC_RELAXED);
    return mine;
}

static inline uint32_t load_acquire32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static long uring_enter(Lane *l, uint32_t submit, uint32_t min_complete, uint32_t flags, int64_t wait_ns)
{
    struct kernel_ts ts = {wait_ns / 1000000000, wait_ns % 1000000000};
    struct getevents_arg arg = {0, 0, 0, (uint64_t)(uintptr_t)&ts};
    l->enters++;
    long r;
    if (wait_ns >= 0 && (l->features & FEAT_EXT_ARG))
        r = syscall(NR_IO_URING_ENTER, l->ring_fd, submit, min_complete, flags | ENTER_EXT_ARG, &arg, sizeof arg);
    else
        r = syscall(NR_IO_URING_ENTER, l->ring_fd, submit, min_complete, flags, NULL, 0);
    return r < 0 ? -errno : r;
}

/* Routing and translation ------------------------------------------------------ */

/* May the lane take syscall nr with these arguments? The rules of translation.h. */
static int lane_accepts(Lane *l, uint32_t nr, const uint64_t *a)
{
    if (nr >= NR_TABLE || !l->kind[nr]) return 0;
    int kind = l->kind[nr];
    if (is_stat_kind(kind) && !l->statx_bufs && !(l->statx_bufs = PyMem_Malloc((size_t)l->nslots * STATX_BUF_SIZE)))
        return 0;   /* no memory for the buffers: the generic path */
    return args_fit(kind, a) && fd_suits(kind, (int32_t)a[0]);
}

/* The SQE of submit entry w (taken by lane_accepts): translation.h's, plus the lane's own entry
 * flags (a receive that polls first, multishot receives and accepts). */
static void translate(Lane *l, const uint64_t *w, uint8_t *s)
{
    uint32_t eflags = (uint32_t)(w[1] >> 32);
    if (eflags & ENTRY_PREBUILT) {   /* the slot holds the SQE's bytes until the completion */
        memcpy(s, (const void *)(uintptr_t)w[2], SQE_SIZE);
        memcpy(s + 32, &w[0], 8);    /* user_data: the entry's correlation id */
        return;
    }
    uint32_t nr = (uint32_t)w[1] % NR_TABLE;   /* checked when the entry was written */
    int kind = l->kind[nr];
    if (is_stat_kind(kind)) {   /* STATX into the slot's buffer; lane_reap converts it for the caller */
        uint32_t i = (uint32_t)(w[0] & ((1u << GEN_SHIFT) - 1)) & l->slot_mask;
        l->slots[i].stat_out = stat_out_of(kind, w + 2);
        fill_statx_sqe(s, l->opcode[nr], kind, w + 2, (uint64_t)(uintptr_t)(l->statx_bufs + (size_t)i * STATX_BUF_SIZE),
                       w[0]);
        return;
    }
    uint16_t ioprio = eflags & ENTRY_POLL_FIRST ? RECVSEND_POLL_FIRST : 0;
    uint8_t sqe_flags = 0;
    uint16_t buf_group = 0;
    if (eflags & ENTRY_MULTISHOT) { ioprio = RECV_MULTISHOT; sqe_flags = SQE_BUFFER_SELECT; buf_group = PBUF_GROUP; }
    if (eflags & ENTRY_ACCEPTS) ioprio = ACCEPT_MULTISHOT;
    fill_sqe(s, l->opcode[nr], l->kind[nr], w + 2, w[0]);   /* user_data: the entry's correlation id */
    s[1] = sqe_flags;
    memcpy(s + 2, &ioprio, 2);
    memcpy(s + 40, &buf_group, 2);
}

/* The turn ------------------------------------------------------------------------- */

static int push_sqe(Lane *l, const uint8_t *src)
{
    uint32_t tail = *l->sq_tail;
    if (tail - load_acquire32(l->sq_head) >= l->sq_entries) return 0;
    uint32_t idx = tail & l->sq_mask;
    memcpy(l->sqes + (size_t)idx * SQE_SIZE, src, SQE_SIZE);
    if (l->sq_array) l->sq_array[idx] = idx;
    store_release32(l->sq_tail, tail + 1);
    l->unsubmitted++;
    return 1;
}

/* What an io_uring_enter returned: SQEs the kernel took. */
static void sent(Lane *l, long r)
{
    if (r > 0) l->unsubmitted -= (uint32_t)r < l->unsubmitted ? (uint32_t)r : l->unsubmitted;
}

/* Submit entries into SQEs, then enter once for the batch (never waiting). */
static long lane_submit(Lane *l)
{
    uint8_t sqe[SQE_SIZE];
    while (l->s_head != l->s_tail) {
        const uint8_t *e = l->sring + (size_t)(l->s_head & l->slot_mask) * SUBMIT_SIZE;
        uint64_t w[8];
        memcpy(w, e, sizeof w);
        translate(l, w, sqe);
        if (!push_sqe(l, sqe)) break;   /* SQ full: the rest wait for the next turn */
        l->s_head++;
    }
    long r = 0;
    if (l->unsubmitted) {
        r = uring_enter(l, l->unsubmitted, 0, ENTER_GETEVENTS, -1);
        sent(l, r);
    }
    return r;
}

/* CQEs into completion entries (the lane's own cancel requests answer nobody). */
static uint32_t lane_reap(Lane *l)
{
    uint32_t head = *l->cq_head, tail = load_acquire32(l->cq_tail);
    uint32_t n = 0;
    while (head != tail && l->c_tail - l->c_head < l->nslots) {
        const uint8_t *c = l->cqes + (size_t)(head & l->cq_mask) * CQE_SIZE;
        uint64_t ud; int32_t res; uint32_t flags;
        memcpy(&ud, c, 8); memcpy(&res, c + 8, 4); memcpy(&flags, c + 12, 4);
        head++;
        if (ud & CANCEL_TAG) continue;
        uint32_t i = (uint32_t)(ud & ((1u << GEN_SHIFT) - 1));
        if (l->statx_bufs && i < l->nslots && l->slots[i].stat_out && l->slots[i].gen == (uint32_t)(ud >> GEN_SHIFT)) {
            if (res == 0) res = statx_to_stat(l->statx_bufs + (size_t)i * STATX_BUF_SIZE, l->slots[i].stat_out);
            l->slots[i].stat_out = 0;
        }
        uint64_t w[4] = {ud, (uint64_t)(int64_t)res, flags, 0};
        memcpy(l->cring + (size_t)(l->c_tail & l->slot_mask) * COMPLETE_SIZE, w, sizeof w);
        l->c_tail++;
        n++;
    }
    store_release32(l->cq_head, head);
    return n;
}

static int submit_cancel(Lane *l, uint64_t corr)
{
    uint8_t s[SQE_SIZE];
    memset(s, 0, SQE_SIZE);
    s[0] = OP_ASYNC_CANCEL;
    int32_t fd = -1; memcpy(s + 4, &fd, 4);
    memcpy(s + 16, &corr, 8);
    uint64_t ud = CANCEL_TAG | corr; memcpy(s + 32, &ud, 8);
    if (!push_sqe(l, s)) return 0;
    sent(l, uring_enter(l, l->unsubmitted, 0, ENTER_GETEVENTS, -1));
    return 1;
}

/* Slots -------------------------------------------------------------------------- */

static int slot_take(Lane *l)
{
    if (!l->n_free) return -1;
    uint32_t i = l->free_list[--l->n_free];
    struct slot *s = &l->slots[i];
    s->busy = 1; s->gen++; s->reads = 0; s->stream = 0; s->ints = 0;
    s->call = 0; s->loop = 0; s->stopping = 0; s->cancelled = 0; s->multi = 0; s->quiet = 0;
    s->group = 0; s->left = 0; s->accepts = 0; s->stat_out = 0; s->settles = 0;
    l->inflight++;
    return (int)i;
}

static void slot_free(Lane *l, uint32_t i)
{
    struct slot *s = &l->slots[i];
    Py_CLEAR(s->fut); Py_CLEAR(s->obj); Py_CLEAR(s->orphan); Py_CLEAR(s->end); Py_CLEAR(s->results);
    if (s->has_view) { PyBuffer_Release(&s->view); s->has_view = 0; }
    s->busy = 0;
    l->free_list[l->n_free++] = i;
    l->inflight--;
}

static uint64_t token_of(const Lane *l, uint32_t i) { return ((uint64_t)l->slots[i].gen << GEN_SHIFT) | i; }

/* Give slot s a new bytes object of read_len for the kernel to read into; point the entry's
 * buffer and length at it. 0 with MemoryError set. */
static int slot_read_into_bytes(struct slot *s, uint64_t *a, Py_ssize_t read_len, int stream)
{
    s->obj = PyBytes_FromStringAndSize(NULL, read_len);
    if (!s->obj) return 0;
    s->reads = 1;
    s->len = (uint32_t)read_len;
    s->stream = (uint8_t)stream;
    s->fd = (int32_t)a[0];
    a[1] = (uint64_t)(uintptr_t)PyBytes_AS_STRING(s->obj);
    a[2] = (uint64_t)read_len;
    return 1;
}

static void write_entry_flags(Lane *l, uint64_t corr, uint32_t nr, const uint64_t *a, uint32_t flags)
{
    uint64_t w[8] = {corr, (uint64_t)nr | (uint64_t)flags << 32, a[0], a[1], a[2], a[3], a[4], a[5]};
    memcpy(l->sring + (size_t)(l->s_tail & l->slot_mask) * SUBMIT_SIZE, w, sizeof w);
    l->s_tail++;
    l->entries++;
}

static void write_entry(Lane *l, uint64_t corr, uint32_t nr, const uint64_t *a) { write_entry_flags(l, corr, nr, a, 0); }

/* The value of a finished read or call (a new reference), or NULL with an error set. */
static PyObject *value_of(struct slot *s, int64_t res)
{
    if (res < 0) {
        int err = (int)-res;
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
        if (exc) { PyErr_SetObject((PyObject *)Py_TYPE(exc), exc); Py_DECREF(exc); }
        return NULL;
    }
    if (!s->reads) return PyLong_FromLongLong(res);
    PyObject *b = s->obj;
    s->obj = NULL;
    if ((uint64_t)res != s->len && _PyBytes_Resize(&b, (Py_ssize_t)res) < 0) return NULL;
    return b;
}

/* Python-facing ----------------------------------------------------------------------- */

static void lane_unmap(Lane *l)
{
    if (l->sqes_map) munmap(l->sqes_map, l->sqes_map_len);
    if (l->cq_map && l->cq_map != l->sq_map) munmap(l->cq_map, l->cq_map_len);
    if (l->sq_map) munmap(l->sq_map, l->sq_map_len);
    l->sq_map = l->cq_map = l->sqes_map = NULL;
}

static void *map_ring(int fd, size_t len, uint64_t off)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, (off_t)off);
    if (p == MAP_FAILED) return NULL;
    madvise(p, len, MADV_DONTFORK);   /* a forked child must never see or write the parent's ring */
    return p;
}

static int lane_setup(Lane *l, uint32_t entries, uint32_t flags)
{
    /* The kernel may lack some of the flags asked for: drop the newest first. */
    const uint32_t fallbacks[] = {0, SETUP_DEFER_TASKRUN, SETUP_DEFER_TASKRUN | SETUP_SINGLE_ISSUER,
                                  SETUP_DEFER_TASKRUN | SETUP_SINGLE_ISSUER | SETUP_COOP_TASKRUN | SETUP_SUBMIT_ALL};
    struct uring_params p;
    int fd = -1;
    for (size_t i = 0; i < sizeof fallbacks / sizeof fallbacks[0]; i++) {
        memset(&p, 0, sizeof p);
        p.flags = (flags & ~fallbacks[i]) | SETUP_CLAMP;
        p.cq_entries = 0;
        fd = (int)syscall(NR_IO_URING_SETUP, entries, &p);
        if (fd >= 0) break;
        if (errno != EINVAL) break;
    }
    if (fd < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    l->ring_fd = fd;
    l->setup_flags = p.flags & ~SETUP_CLAMP;
    l->poll_first = (l->setup_flags & SETUP_SINGLE_ISSUER) != 0;
    l->features = p.features;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * CQE_SIZE;
    if (p.features & FEAT_SINGLE_MMAP) {
        if (cq_len > sq_len) sq_len = cq_len;
        cq_len = sq_len;
    }
    l->sq_map = map_ring(fd, sq_len, OFF_SQ_RING);
    l->sq_map_len = sq_len;
    l->cq_map = (p.features & FEAT_SINGLE_MMAP) ? l->sq_map : map_ring(fd, cq_len, OFF_CQ_RING);
    l->cq_map_len = cq_len;
    l->sqes_map = map_ring(fd, p.sq_entries * SQE_SIZE, OFF_SQES);
    l->sqes_map_len = p.sq_entries * SQE_SIZE;
    if (!l->sq_map || !l->cq_map || !l->sqes_map) {
        PyErr_SetFromErrno(PyExc_OSError);
        lane_unmap(l);
        close(fd);
        l->ring_fd = -1;
        return -1;
    }
    uint8_t *sq = l->sq_map, *cq = l->cq_map;
    l->sq_head = (uint32_t *)(sq + p.sq_off.head);
    l->sq_tail = (uint32_t *)(sq + p.sq_off.tail);
    l->sq_mask = *(uint32_t *)(sq + p.sq_off.ring_mask);
    l->sq_entries = *(uint32_t *)(sq + p.sq_off.ring_entries);
    l->sq_array = (uint32_t *)(sq + p.sq_off.array);
    l->cq_head = (uint32_t *)(cq + p.cq_off.head);
    l->cq_tail = (uint32_t *)(cq + p.cq_off.tail);
    l->cq_mask = *(uint32_t *)(cq + p.cq_off.ring_mask);
    l->cqes = cq + p.cq_off.cqes;
    l->sqes = l->sqes_map;
    return 0;
}

static PyObject *Lane_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args; (void)kw;
    Lane *l = (Lane *)type->tp_alloc(type, 0);
    if (l) { l->ring_fd = -1; l->dead = 1; }
    return (PyObject *)l;
}

static int Lane_init(Lane *l, PyObject *args, PyObject *kw)
{
    static char *names[] = {"entries", "setup_flags", "settle_s", "slots", NULL};
    unsigned int entries = 64, flags = 0, nslots = LANE_SLOTS;
    double settle = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|IIdI", names, &entries, &flags, &settle, &nslots)) return -1;
    if (l->ring_fd >= 0 || l->sq_map || l->slots) { PyErr_SetString(PyExc_RuntimeError, "Lane already set up"); return -1; }
    if (nslots < 1 || nslots > MAX_SLOTS || (nslots & (nslots - 1))) {
        PyErr_Format(PyExc_ValueError, "slots must be a power of two from 1 to %u, not %u", MAX_SLOTS, nslots);
        return -1;
    }
    l->slots = PyMem_Calloc(nslots, sizeof *l->slots);
    l->free_list = PyMem_Calloc(nslots, sizeof *l->free_list);
    l->sring = PyMem_Calloc(nslots, SUBMIT_SIZE);
    l->cring = PyMem_Calloc(nslots, COMPLETE_SIZE);
    if (!l->slots || !l->free_list || !l->sring || !l->cring) { PyErr_NoMemory(); return -1; }
    l->nslots = nslots;
    l->recv_nr = l->send_nr = l->accept_nr = NR_TABLE;
    l->slot_mask = nslots - 1;
    l->owner = thread_serial();
    l->settle_ns = (int64_t)(settle * 1e9);
    for (uint32_t i = 0; i < nslots; i++) l->free_list[i] = nslots - 1 - i;
    l->n_free = nslots;
    if (lane_setup(l, entries, flags) < 0) return -1;
    l->dead = 0;
    return 0;
}

static void lane_close_ring(Lane *l)
{
    if (l->ring_fd >= 0) {
        lane_unmap(l);
        close(l->ring_fd);   /* unregisters the provided buffers with the ring */
        l->ring_fd = -1;
        if (l->pbuf_ring) munmap(l->pbuf_ring, PBUF_COUNT * 16);
        if (l->pbufs) munmap(l->pbufs, (size_t)PBUF_COUNT * PBUF_SIZE);
        l->pbuf_ring = l->pbufs = NULL;
    }
}

/* Provided buffers ------------------------------------------------------------------ */

/* Hand buffer bid back to the kernel (struct io_uring_buf: addr u64, len u32, bid u16, resv u16; the
 * ring's tail is the resv of entry 0, so entries are written field by field, never whole). */
static void pbuf_put(Lane *l, uint16_t bid)
{
    uint8_t *e = l->pbuf_ring + (size_t)(l->pbuf_tail & (PBUF_COUNT - 1)) * 16;
    uint64_t addr = (uint64_t)(uintptr_t)(l->pbufs + (size_t)bid * PBUF_SIZE);
    uint32_t len = PBUF_SIZE;
    memcpy(e, &addr, 8); memcpy(e + 8, &len, 4); memcpy(e + 12, &bid, 2);
    l->pbuf_tail++;
    __atomic_store_n((uint16_t *)(l->pbuf_ring + 14), l->pbuf_tail, __ATOMIC_RELEASE);
}

/* Register the lane's provided buffers once (kernels from 6.0, where multishot receives exist too). */
static int pbuf_ready(Lane *l)
{
    if (l->pbuf_state) return l->pbuf_state > 0;
    l->pbuf_state = -1;
    if (!l->poll_first) return 0;
    void *ring = mmap(NULL, PBUF_COUNT * 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *bufs = mmap(NULL, (size_t)PBUF_COUNT * PBUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED || bufs == MAP_FAILED) {
        if (ring != MAP_FAILED) munmap(ring, PBUF_COUNT * 16);
        if (bufs != MAP_FAILED) munmap(bufs, (size_t)PBUF_COUNT * PBUF_SIZE);
        return 0;
    }
    madvise(ring, PBUF_COUNT * 16, MADV_DONTFORK);
    madvise(bufs, (size_t)PBUF_COUNT * PBUF_SIZE, MADV_DONTFORK);
    struct buf_reg reg = {(uint64_t)(uintptr_t)ring, PBUF_COUNT, PBUF_GROUP, 0, {0, 0, 0}};
    if (syscall(NR_IO_URING_REGISTER, l->ring_fd, REGISTER_PBUF_RING, &reg, 1) < 0) {
        munmap(ring, PBUF_COUNT * 16);
        munmap(bufs, (size_t)PBUF_COUNT * PBUF_SIZE);
        return 0;
    }
    l->pbuf_ring = ring;
    l->pbufs = bufs;
    for (uint32_t i = 0; i < PBUF_COUNT; i++) pbuf_put(l, (uint16_t)i);
    l->pbuf_state = 1;
    return 1;
}

static void Lane_dealloc(Lane *l)
{
    /* Never freed while the kernel holds memory of ours (the host keeps such lanes for good). */
    for (uint32_t i = 0; i < l->nslots; i++)
        if (l->slots[i].busy) slot_free(l, i);
    lane_close_ring(l);
    PyMem_Free(l->slots); PyMem_Free(l->free_list); PyMem_Free(l->sring); PyMem_Free(l->cring);
    PyMem_Free(l->statx_bufs);
    Py_CLEAR(l->late);
    if (l->weakrefs) PyObject_ClearWeakRefs((PyObject *)l);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static int usable(Lane *l)
{
    return !l->dead && !l->refusing && l->ring_fd >= 0 && thread_serial() == l->owner;
}

/* Arguments as words: ints only (anything else: the generic path, which raises os's error). */
static int words(PyObject *const *args, Py_ssize_t n, uint64_t *out)
{
    for (Py_ssize_t i = 0; i < 6; i++) {
        if (i >= n) { out[i] = 0; continue; }
        PyObject *v = args[i];
        if (!PyLong_Check(v)) return 0;
        int overflow = 0;
        long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) {
            if (overflow < 0) return 0;
            unsigned long long u = PyLong_AsUnsignedLongLong(v);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
            out[i] = u;
        } else {
            out[i] = (uint64_t)s;
        }
    }
    return 1;
}

/* Wait in the kernel for entry corr's completion (blocking lanes). Returns 1 with *res set,
 * 0 when an exception was raised (the entry is settled first), -1 on a lane failure, 2 with *res
 * -ECANCELED when the closing deadline passed and the kernel still holds the entry (its slot stays). */
static int wait_for(Lane *l, uint64_t corr, uint32_t slot, int64_t *res);

static int find_completion(Lane *l, uint64_t corr, int64_t *res)
{
    /* A blocking lane has one entry in flight: its completion is the one at the head. */
    while (l->c_head != l->c_tail) {
        uint64_t w[2];
        memcpy(w, l->cring + (size_t)(l->c_head & l->slot_mask) * COMPLETE_SIZE, sizeof w);
        l->c_head++;
        if (w[0] == corr) { *res = (int64_t)w[1]; return 1; }
    }
    return 0;
}

static int settle(Lane *l, uint64_t corr, uint32_t slot, int64_t *res)
{
    /* Cancel in the kernel, then wait (bounded, not interruptible) for the entry's answer. */
    submit_cancel(l, corr);
    int64_t end = now_ns() + l->settle_ns;
    for (;;) {
        lane_reap(l);
        if (find_completion(l, corr, res)) return 1;
        int64_t left = end - now_ns();
        if (left <= 0) break;
        long r;
        Py_BEGIN_ALLOW_THREADS
        r = uring_enter(l, l->unsubmitted, 1, ENTER_GETEVENTS, left < WAIT_SLICE_NS ? left : WAIT_SLICE_NS);
        Py_END_ALLOW_THREADS
        sent(l, r);
    }
    /* Still in the kernel: its memory stays referenced by the slot, and the lane is never used again. */
    l->dead = 1;
    (void)slot;
    return 0;
}

static int wait_for(Lane *l, uint64_t corr, uint32_t slot, int64_t *res)
{
    for (;;) {
        lane_reap(l);
        if (find_completion(l, corr, res)) return 1;
        long r;
        Py_BEGIN_ALLOW_THREADS
        r = uring_enter(l, l->unsubmitted, 1, ENTER_GETEVENTS, WAIT_SLICE_NS);
        Py_END_ALLOW_THREADS
        sent(l, r);
        /* A signal may have gone to another thread: its handler is pending for this one (the main
         * thread) all the same, so look after every wake-up, not only on EINTR. */
        if ((r == -EINTR || r == -ETIME) && PyErr_CheckSignals() < 0) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);   /* the handler's exception, re-raised once settled */
            int settled = settle(l, corr, slot, res);
            if (settled) {
                struct slot *s = &l->slots[slot];
                PyObject *data = *res > 0 && s->reads ? value_of(s, *res) : NULL;
                PyErr_Clear();
                Py_XDECREF(l->late);
                l->late = Py_BuildValue("(iLN)", s->fd, (long long)*res, data ? data : (Py_INCREF(Py_None), Py_None));
                PyErr_Clear();
                slot_free(l, slot);
            }
            PyErr_Restore(type, value, tb);
            return 0;
        }
        if (r < 0 && r != -EINTR && r != -ETIME && r != -EAGAIN && r != -EBUSY) {
            errno = (int)-r;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (l->deadline_ns > 0 && now_ns() > l->deadline_ns) {
            /* The instance is closing and its drain time is over: cancel, as the dispatcher does. */
            if (settle(l, corr, slot, res)) return 1;
            *res = -ECANCELED;
            return 2;   /* the slot keeps the memory the kernel may still write: never freed */
        }
    }
}

/* Blocking: run one entry on this thread; return its value, or None when the lane does not take it. */
static PyObject *run_blocking(Lane *l, uint32_t nr, uint64_t *a, Py_ssize_t read_len, int stream, int raw,
                              PyObject *prebuilt)
{
    int i = slot_take(l);
    if (i < 0) Py_RETURN_NONE;
    struct slot *s = &l->slots[i];
    s->fd = prebuilt ? -1 : (int32_t)a[0];
    if (read_len >= 0 && !slot_read_into_bytes(s, a, read_len, stream)) { slot_free(l, (uint32_t)i); return NULL; }
    if (prebuilt) { Py_INCREF(prebuilt); s->obj = prebuilt; }   /* the SQE and what it points at */
    uint64_t corr = token_of(l, (uint32_t)i);
    write_entry_flags(l, corr, nr, a, prebuilt ? ENTRY_PREBUILT : 0);
    long r = lane_submit(l);
    if (r < 0 && r != -EAGAIN && r != -EBUSY) {
        /* Nothing reached the kernel (the ring itself refused): the generic path runs it. */
        l->s_head = l->s_tail;
        l->dead = 1;   /* a ring that refuses io_uring_enter is not used again */
        slot_free(l, (uint32_t)i);
        Py_RETURN_NONE;
    }
    int64_t res = 0;
    l->busy_blocking = 1;   /* close() leaves the ring alone while this thread may be inside the kernel */
    int w = wait_for(l, corr, (uint32_t)i, &res);
    l->busy_blocking = 0;
    if (w <= 0) {
        if (w < 0) l->dead = 1;
        return NULL;
    }
    if (w == 2) {
        errno = ECANCELED;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *v = raw ? PyLong_FromLongLong(res) : value_of(s, res);
    slot_free(l, (uint32_t)i);
    return v;
}

PyDoc_STRVAR(call_doc,
    "call(nr, *args) -> the syscall's result (-errno on failure), or None when the lane does not take it (blocking).");
static PyObject *Lane_call(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 7) { PyErr_SetString(PyExc_TypeError, "call(nr, *args): 1 to 7 arguments"); return NULL; }
    if (!usable(l) || !PyLong_Check(args[0])) Py_RETURN_NONE;
    unsigned long nr = PyLong_AsUnsignedLong(args[0]);
    if (PyErr_Occurred()) { PyErr_Clear(); Py_RETURN_NONE; }
    uint64_t a[6];
    if (!words(args + 1, nargs - 1, a) || nr >= NR_TABLE || !lane_accepts(l, (uint32_t)nr, a)) Py_RETURN_NONE;
    return run_blocking(l, (uint32_t)nr, a, -1, 0, 1, NULL);
}

/* A syscall number argument the lane routes to a read or write into a buffer; 0 otherwise. */
static int buffer_nr(const Lane *l, PyObject *obj, uint32_t *nr)
{
    if (!PyLong_Check(obj)) return 0;
    long v = PyLong_AsLong(obj);
    if (PyErr_Occurred()) { PyErr_Clear(); return 0; }
    if (v < 0 || v >= NR_TABLE) return 0;
    int kind = l->kind[v];
    if (kind != K_STREAM && kind != K_POSITIONED && kind != K_SOCKET) return 0;
    *nr = (uint32_t)v;
    return 1;
}

/* (fd, n, a3) of a read of syscall nr into new bytes; 0 when they are not plain ints in range. */
static int read_words(Lane *l, uint32_t nr, PyObject *const *args, uint64_t *a, Py_ssize_t *n)
{
    if (!PyLong_Check(args[0]) || !PyLong_Check(args[1]) || !PyLong_Check(args[2])) return 0;
    long fd = PyLong_AsLong(args[0]);
    Py_ssize_t len = PyLong_AsSsize_t(args[1]);
    long long a3 = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) { PyErr_Clear(); return 0; }
    if (fd < INT32_MIN || fd > INT32_MAX || len < 0 || len > MAX_RW) return 0;
    uint64_t w[6] = {(uint64_t)fd, 0, (uint64_t)len, (uint64_t)a3, 0, 0};
    memcpy(a, w, sizeof w);
    *n = len;
    return lane_accepts(l, nr, a);
}

/* (nr, fd, n, a3) of a read into new bytes. */
static int read_args(Lane *l, PyObject *const *args, Py_ssize_t nargs, uint32_t *nr, uint64_t *a, Py_ssize_t *n)
{
    return nargs == 4 && buffer_nr(l, args[0], nr) && read_words(l, *nr, args + 1, a, n);
}

PyDoc_STRVAR(read_doc,
    "read(nr, fd, n, offset_or_flags) -> bytes, or None when the lane does not take it (blocking).\n"
    "nr is read, pread64 or recvfrom; a failure raises OSError.");
static PyObject *Lane_read(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t nr; uint64_t a[6]; Py_ssize_t n;
    if (!usable(l) || !read_args(l, args, nargs, &nr, a, &n)) Py_RETURN_NONE;
    return run_blocking(l, nr, a, n, l->kind[nr] != K_POSITIONED, 0, NULL);
}

/* Wait for the entries of one read_many chunk; 0 with an exception (everything settled first). */
static int wait_chunk(Lane *l, const uint32_t *idx, int64_t *res, uint8_t *done, uint32_t m)
{
    for (uint32_t j = 0; j < m; j++) l->slots[idx[j]].pos = (int32_t)j;
    uint32_t left = m;
    int interrupted = 0;
    int64_t end = 0;
    for (;;) {
        lane_reap(l);
        while (l->c_head != l->c_tail) {
            uint64_t w[2];
            memcpy(w, l->cring + (size_t)(l->c_head & l->slot_mask) * COMPLETE_SIZE, sizeof w);
            l->c_head++;
            uint32_t slot = (uint32_t)(w[0] & ((1u << GEN_SHIFT) - 1));
            if (slot >= l->nslots || !l->slots[slot].busy || token_of(l, slot) != w[0]) continue;
            int32_t j = l->slots[slot].pos;
            if (j >= 0 && (uint32_t)j < m && idx[j] == slot && !done[j]) { done[j] = 1; res[j] = (int64_t)w[1]; left--; }
        }
        if (!left) return !interrupted;
        if (interrupted && now_ns() > end) { l->dead = 1; return 0; }   /* still in the kernel: kept */
        long r;
        Py_BEGIN_ALLOW_THREADS
        r = uring_enter(l, l->unsubmitted, 1, ENTER_GETEVENTS, WAIT_SLICE_NS);
        Py_END_ALLOW_THREADS
        sent(l, r);
        if (!interrupted && (r == -EINTR || r == -ETIME) && PyErr_CheckSignals() < 0) {
            interrupted = 1;   /* the exception stays set; cancel what is left and wait for the kernel */
            end = now_ns() + l->settle_ns;
            for (uint32_t j = 0; j < m; j++)
                if (!done[j]) submit_cancel(l, token_of(l, idx[j]));
        }
    }
}

/* Run n positioned entries of syscall nr on fd, size bytes each at offsets items[0..n), blocking, in
 * chunks; out[i] gets each result. base == 0: each reads into a new bytes object, and the result is the
 * bytes (a short read sliced) or -errno; else entry i reads into or writes from base + i * size, and the
 * result is the byte count or -errno. NULL with an exception (everything settled first; a lane whose
 * memory the kernel still holds is left dead). */
static PyObject *run_many(Lane *l, uint32_t nr, int32_t fd, Py_ssize_t size, PyObject **items, Py_ssize_t n,
                          uint64_t base)
{
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    uint32_t chunk = l->sq_entries < MANY_CHUNK ? l->sq_entries : MANY_CHUNK;
    if (chunk > l->nslots) chunk = l->nslots;
    uint32_t idx[MANY_CHUNK]; int64_t res[MANY_CHUNK]; uint8_t done[MANY_CHUNK];
    l->busy_blocking = 1;
    for (Py_ssize_t first = 0; first < n; first += chunk) {
        uint32_t m = (uint32_t)(n - first < chunk ? n - first : chunk);
        uint32_t taken = 0;
        for (uint32_t j = 0; j < m; j++) {
            int i = slot_take(l);
            if (i < 0) break;
            uint64_t at = base ? base + (uint64_t)(first + j) * (uint64_t)size : 0;
            uint64_t w[6] = {(uint64_t)(int64_t)fd, at, (uint64_t)size, (uint64_t)PyLong_AsLongLong(items[first + j]), 0, 0};
            if (!base && !slot_read_into_bytes(&l->slots[i], w, size, 0)) { slot_free(l, (uint32_t)i); break; }
            write_entry(l, token_of(l, (uint32_t)i), nr, w);
            idx[j] = (uint32_t)i; done[j] = 0;
            taken++;
        }
        if (taken < m) {
            /* No slot or no memory: what was written still runs, then the error is raised. */
            if (!PyErr_Occurred()) PyErr_NoMemory();
        }
        lane_submit(l);
        int w = wait_chunk(l, idx, res, done, taken);
        for (uint32_t j = 0; j < taken; j++) {
            struct slot *s = &l->slots[idx[j]];
            if (!done[j]) continue;   /* the kernel still holds it: the slot keeps its memory */
            if (w && !PyErr_Occurred()) {
                PyObject *v = res[j] < 0 || base ? PyLong_FromLongLong(res[j]) : value_of(s, res[j]);
                if (v) PyList_SET_ITEM(out, first + j, v);
            }
            slot_free(l, idx[j]);
        }
        if (!w || PyErr_Occurred()) {
            l->busy_blocking = 0;
            Py_DECREF(out);   /* unset items are NULL: fine for list dealloc */
            return NULL;
        }
    }
    l->busy_blocking = 0;
    return out;
}

/* offsets as a sequence of ints >= 0 (a new reference), or NULL (no exception) when it is not one. */
static PyObject *offsets_of(PyObject *obj)
{
    PyObject *seq = PySequence_Fast(obj, "offsets must be a sequence");
    if (!seq) { PyErr_Clear(); return NULL; }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyLong_Check(items[i]) || PyLong_AsLongLong(items[i]) < 0) {   /* the generic path gives EINVAL */
            PyErr_Clear();
            Py_DECREF(seq);
            return NULL;
        }
    }
    return seq;
}

PyDoc_STRVAR(read_many_doc,
    "read_many(nr, fd, size, offsets) -> list: for each offset, the bytes read (a short read sliced) or\n"
    "-errno; None when the lane does not take the reads (blocking; nr is pread64).");
static PyObject *Lane_read_many(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t nr; uint64_t a[6]; Py_ssize_t size;
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "read_many(nr, fd, size, offsets)"); return NULL; }
    PyObject *zero = PyLong_FromLong(0);
    PyObject *first[4] = {args[0], args[1], args[2], zero};
    int ok = usable(l) && read_args(l, first, 4, &nr, a, &size) && l->kind[nr] == K_POSITIONED;
    Py_DECREF(zero);
    if (!ok) Py_RETURN_NONE;
    PyObject *seq = offsets_of(args[3]);
    if (!seq) Py_RETURN_NONE;
    PyObject *out = run_many(l, nr, (int32_t)a[0], size, PySequence_Fast_ITEMS(seq), PySequence_Fast_GET_SIZE(seq), 0);
    Py_DECREF(seq);
    return out;
}

PyDoc_STRVAR(rw_many_doc,
    "rw_many(nr, fd, buffer, size, offsets) -> list: entry i reads into (nr pread64) or writes from (pwrite64)\n"
    "buffer[i*size:(i+1)*size] at offsets[i]; for each, the byte count or -errno. None when the lane does not\n"
    "take them (blocking).");
static PyObject *Lane_rw_many(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t nr;
    if (nargs != 5) { PyErr_SetString(PyExc_TypeError, "rw_many(nr, fd, buffer, size, offsets)"); return NULL; }
    if (!usable(l) || !buffer_nr(l, args[0], &nr) || l->kind[nr] != K_POSITIONED) Py_RETURN_NONE;
    if (!PyLong_Check(args[1]) || !PyLong_Check(args[3])) Py_RETURN_NONE;
    long fd = PyLong_AsLong(args[1]);
    Py_ssize_t size = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) { PyErr_Clear(); Py_RETURN_NONE; }
    if (fd < INT32_MIN || fd > INT32_MAX || size < 0 || size > MAX_RW) Py_RETURN_NONE;
    PyObject *seq = offsets_of(args[4]);
    if (!seq) Py_RETURN_NONE;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_buffer view;
    int reads = l->opcode[nr] == OP_READ;
    if (PyObject_GetBuffer(args[2], &view, reads ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); Py_DECREF(seq); Py_RETURN_NONE;
    }
    uint64_t base = (uint64_t)(uintptr_t)view.buf;
    uint64_t a[6] = {(uint64_t)fd, base, (uint64_t)size, n ? (uint64_t)PyLong_AsLongLong(items[0]) : 0, 0, 0};
    if ((size && n > view.len / size) || !base || !lane_accepts(l, nr, a)) {   /* n * size could overflow */
        PyBuffer_Release(&view); Py_DECREF(seq); Py_RETURN_NONE;
    }
    PyObject *out = run_many(l, nr, (int32_t)fd, size, items, n, base);
    Py_DECREF(seq);
    if (!l->dead || out) PyBuffer_Release(&view);   /* a lane that died holding it keeps it: the kernel may use it */
    return out;
}

/* (fd, data, a3) of a write of syscall nr from a buffer: the view is taken into *view; 0 when not taken. */
static int write_words(Lane *l, uint32_t nr, PyObject *const *args, uint64_t *a, Py_buffer *view)
{
    if (!PyLong_Check(args[0]) || !PyLong_Check(args[2])) return 0;
    long fd = PyLong_AsLong(args[0]);
    long long a3 = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) { PyErr_Clear(); return 0; }
    if (fd < INT32_MIN || fd > INT32_MAX) return 0;
    if (PyObject_GetBuffer(args[1], view, PyBUF_SIMPLE) < 0) { PyErr_Clear(); return 0; }
    uint64_t w[6] = {(uint64_t)fd, (uint64_t)(uintptr_t)view->buf, (uint64_t)view->len, (uint64_t)a3, 0, 0};
    memcpy(a, w, sizeof w);
    if (!lane_accepts(l, nr, a)) { PyBuffer_Release(view); return 0; }
    return 1;
}

/* (nr, fd, data, a3) of a write from a buffer. */
static int write_args(Lane *l, PyObject *const *args, Py_ssize_t nargs, uint32_t *nr, uint64_t *a, Py_buffer *view)
{
    return nargs == 4 && buffer_nr(l, args[0], nr) && write_words(l, *nr, args + 1, a, view);
}

PyDoc_STRVAR(write_doc,
    "write(nr, fd, data, offset_or_flags) -> int, or None when the lane does not take it (blocking).\n"
    "nr is write, pwrite64 or sendto; data is any object with the buffer protocol.");
static PyObject *Lane_write(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t nr; uint64_t a[6]; Py_buffer view;
    if (!usable(l) || !write_args(l, args, nargs, &nr, a, &view)) Py_RETURN_NONE;
    PyObject *r = run_blocking(l, nr, a, -1, 0, 0, NULL);
    if (!l->dead || r) PyBuffer_Release(&view);   /* a lane that died holding it keeps it: the kernel may read it */
    return r;
}

/* Loop lanes ------------------------------------------------------------------------ */

/* Queue one entry with its future. The slot holds, until the completion: a new bytes object to
 * read into (read_len >= 0), the buffer view a write sends from (view), or keep. ints: deliver
 * the raw result (-errno included) rather than a value or an OSError. None: no free slot. */
static PyObject *start_entry_flags(Lane *l, uint32_t nr, uint64_t *a, PyObject *fut, PyObject *keep,
                                   Py_ssize_t read_len, int stream, Py_buffer *view, int ints, uint32_t eflags)
{
    int i = slot_take(l);
    if (i < 0) Py_RETURN_NONE;
    struct slot *s = &l->slots[i];
    if (read_len >= 0) {
        if (!slot_read_into_bytes(s, a, read_len, stream)) { slot_free(l, (uint32_t)i); return NULL; }
    } else {
        Py_XINCREF(keep);
        s->obj = keep;
    }
    if (view) { s->view = *view; s->has_view = 1; }
    s->ints = (uint8_t)ints;
    Py_INCREF(fut);
    s->fut = fut;
    uint64_t t = token_of(l, (uint32_t)i);
    if (Py_IS_TYPE(fut, &WaiterType)) {   /* it settles its own cancellation through this lane */
        Waiter *w = (Waiter *)fut;
        Py_XSETREF(w->lane, Py_NewRef((PyObject *)l));
        w->token = t;
        w->entry = 1;
    }
    write_entry_flags(l, t, nr, a, eflags);
    return PyLong_FromUnsignedLongLong(t);
}

static PyObject *start_entry(Lane *l, uint32_t nr, uint64_t *a, PyObject *fut, PyObject *keep, Py_ssize_t read_len,
                             int stream, Py_buffer *view, int ints)
{
    return start_entry_flags(l, nr, a, fut, keep, read_len, stream, view, ints, 0);
}

/* A caller-built SQE (start_sqe, call_sqe): 64 bytes with no SQE flags, since a link, a provided buffer or
 * a skipped completion would tie it to the lane's other entries. 1: taken, *hold the tuple its slot keeps
 * (keep and the SQE) and a[0] the SQE's address; 0: refused (or the lane takes nothing now); -1: an error
 * is set. */
static int prebuilt_args(Lane *l, PyObject *keep, PyObject *sqe, uint64_t *a, PyObject **hold)
{
    if (!PyBytes_CheckExact(sqe) || PyBytes_GET_SIZE(sqe) != SQE_SIZE) {
        PyErr_Format(PyExc_ValueError, "an SQE is %d bytes (bytes), not %.100s", SQE_SIZE, Py_TYPE(sqe)->tp_name);
        return -1;
    }
    if (PyBytes_AS_STRING(sqe)[1] || !usable(l)) return 0;
    *hold = PyTuple_Pack(2, keep, sqe);
    if (!*hold) return -1;
    memset(a, 0, 6 * sizeof *a);
    a[0] = (uint64_t)(uintptr_t)PyBytes_AS_STRING(sqe);
    return 1;
}

PyDoc_STRVAR(start_sqe_doc,
    "start_sqe(fut, keep, sqe) -> token, or None: queue an SQE built by the caller (64 bytes, no SQE flags;\n"
    "its user_data is the lane's); turn() resolves fut with the CQE's result. keep and sqe stay referenced.");
static PyObject *Lane_start_sqe(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "start_sqe(fut, keep, sqe)"); return NULL; }
    uint64_t a[6]; PyObject *hold = NULL;
    int ok = prebuilt_args(l, args[1], args[2], a, &hold);
    if (ok <= 0) { if (ok < 0) return NULL; Py_RETURN_NONE; }
    PyObject *t = start_entry_flags(l, 0, a, args[0], hold, -1, 0, NULL, 1, ENTRY_PREBUILT);
    Py_DECREF(hold);
    return t;
}

PyDoc_STRVAR(call_sqe_doc,
    "call_sqe(keep, sqe) -> the CQE's result (-errno on failure), or None when the lane does not take it:\n"
    "run an SQE built by the caller (64 bytes, no SQE flags) on this thread, blocking.");
static PyObject *Lane_call_sqe(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "call_sqe(keep, sqe)"); return NULL; }
    uint64_t a[6]; PyObject *hold = NULL;
    int ok = prebuilt_args(l, args[0], args[1], a, &hold);
    if (ok <= 0) { if (ok < 0) return NULL; Py_RETURN_NONE; }
    PyObject *r = run_blocking(l, 0, a, -1, 0, 1, hold);
    Py_DECREF(hold);
    return r;
}

PyDoc_STRVAR(start_doc,
    "start(fut, keep, nr, *args) -> token, or None: queue an entry; turn() submits it and resolves fut\n"
    "with the syscall's result (-errno on failure); keep stays referenced until then.");
static PyObject *Lane_start(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 3 || nargs > 9) { PyErr_SetString(PyExc_TypeError, "start(fut, keep, nr, *args)"); return NULL; }
    if (!usable(l) || !PyLong_Check(args[2])) Py_RETURN_NONE;
    unsigned long nr = PyLong_AsUnsignedLong(args[2]);
    if (PyErr_Occurred()) { PyErr_Clear(); Py_RETURN_NONE; }
    uint64_t a[6];
    if (!words(args + 3, nargs - 3, a) || nr >= NR_TABLE || !lane_accepts(l, (uint32_t)nr, a)) Py_RETURN_NONE;
    return start_entry(l, (uint32_t)nr, a, args[0], args[1], -1, 0, NULL, 1);
}

PyDoc_STRVAR(start_write_doc,
    "start_write(fut, nr, fd, data, offset_or_flags) -> token, or None: queue a write from data's buffer.");
static PyObject *Lane_start_write(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t nr; uint64_t a[6]; Py_buffer view;
    if (nargs != 5) { PyErr_SetString(PyExc_TypeError, "start_write(fut, nr, fd, data, offset_or_flags)"); return NULL; }
    if (!usable(l) || !write_args(l, args + 1, 4, &nr, a, &view)) Py_RETURN_NONE;
    PyObject *t = start_entry(l, nr, a, args[0], NULL, -1, 0, &view, 0);   /* the slot holds the view */
    if (!t || t == Py_None) PyBuffer_Release(&view);
    return t;
}

PyDoc_STRVAR(start_read_doc,
    "start_read(fut, nr, fd, n, offset_or_flags) -> token, or None: queue a read into new bytes.");
static PyObject *Lane_start_read(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t nr; uint64_t a[6]; Py_ssize_t n;
    if (nargs != 5) { PyErr_SetString(PyExc_TypeError, "start_read(fut, nr, fd, n, offset_or_flags)"); return NULL; }
    if (!usable(l) || !read_args(l, args + 1, 4, &nr, a, &n)) Py_RETURN_NONE;
    return start_entry(l, nr, a, args[0], NULL, n, l->kind[nr] != K_POSITIONED, NULL, 0);
}

/* The exception a call left set, as a new reference with its traceback (None if there is none). */
static PyObject *take_error(void)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc && tb) PyException_SetTraceback(exc, tb);
    Py_XDECREF(type); Py_XDECREF(tb);
    if (!exc) { Py_INCREF(Py_None); exc = Py_None; }
    return exc;
}

/* Call slot i's callable with arg (a new reference; NULL: making it failed, the error is set). 1: it
 * returned; 0: it raised (the exception stays set); -1: it forked and the child dropped the lane, so the
 * slot is no longer this lane's to touch (the caller returns at once). */
static int call_slot(Lane *l, uint32_t i, PyObject *arg)
{
    struct slot *s = &l->slots[i];
    PyObject *fn = s->fut;
    uint32_t gen = s->gen;
    Py_INCREF(fn);
    PyObject *r = arg ? PyObject_CallOneArg(fn, arg) : NULL;
    Py_XDECREF(arg);
    int ok = r != NULL;
    Py_XDECREF(r);
    if (!s->busy || s->gen != gen) {
        if (!ok) PyErr_WriteUnraisable(fn);
        Py_DECREF(fn);
        return -1;
    }
    Py_DECREF(fn);
    return ok;
}

/* A receive loop ends: on_end(why) (why: 0 at end of file, -errno, the exception on_data raised,
 * or None when stop() was asked), then the slot is free. */
static void end_loop(Lane *l, uint32_t i, PyObject *why)
{
    struct slot *s = &l->slots[i];
    PyObject *end = s->end;
    s->end = NULL;
    slot_free(l, i);   /* first: on_end may start the next receive */
    if (end && why) {
        PyObject *r = PyObject_CallOneArg(end, why);
        if (r) Py_DECREF(r);
        else PyErr_WriteUnraisable(end);
    }
    Py_XDECREF(end);
    Py_XDECREF(why);
}

/* How many of items[0..n) the lane takes as one group: a prefix of offsets >= 0, no more than its free slots. */
static Py_ssize_t group_prefix(const Lane *l, PyObject **items, Py_ssize_t n)
{
    if (n > (Py_ssize_t)l->n_free) n = (Py_ssize_t)l->n_free;
    Py_ssize_t m = 0;
    while (m < n && PyLong_Check(items[m]) && PyLong_AsLongLong(items[m]) >= 0) m++;
    PyErr_Clear();   /* an offset the lane does not take, and those after it: the caller's other path */
    return m;
}

/* Queue one group: positioned entries of syscall nr, entry j at items[j], each into new bytes (base 0) or
 * into or from base + j*size. The first slot leads: it holds the results list and fut until the last
 * answer (deliver_group). How many started; *leader is the leader's slot (-1: none started). */
static Py_ssize_t start_group(Lane *l, PyObject *fut, uint32_t nr, int32_t fd, Py_ssize_t size, PyObject **items,
                              Py_ssize_t m, uint64_t base, int *leader)
{
    *leader = -1;
    PyObject *results = PyList_New(m);
    if (!results) { PyErr_Clear(); return 0; }
    for (Py_ssize_t j = 0; j < m; j++) { Py_INCREF(Py_None); PyList_SET_ITEM(results, j, Py_None); }
    int li = -1;
    Py_ssize_t started = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        int i = slot_take(l);
        if (i < 0) break;
        struct slot *s = &l->slots[i];
        s->fd = fd;
        uint64_t off = (uint64_t)PyLong_AsLongLong(items[j]);
        uint64_t w[6] = {(uint64_t)(int64_t)fd, base + (uint64_t)j * (uint64_t)size, (uint64_t)size, off, 0, 0};
        if (!base && !slot_read_into_bytes(s, w, size, 0)) { slot_free(l, (uint32_t)i); break; }
        if (li < 0) li = i;
        s->group = (uint32_t)li + 1;
        s->pos = (int32_t)j;
        write_entry(l, token_of(l, (uint32_t)i), nr, w);
        started++;
    }
    if (li < 0) { Py_DECREF(results); PyErr_Clear(); return 0; }
    struct slot *lead = &l->slots[li];
    if (started < m && PyList_SetSlice(results, started, m, NULL) < 0) PyErr_Clear();   /* no memory for the rest */
    PyErr_Clear();
    lead->results = results;
    lead->left = (uint32_t)started;
    Py_INCREF(fut);
    lead->fut = fut;
    *leader = li;
    return started;
}

PyDoc_STRVAR(start_read_many_doc,
    "start_read_many(fut, nr, fd, size, offsets) -> how many started (0: none taken): queue positioned reads\n"
    "of size bytes at the first of offsets (as many as the lane has slots for); fut gets the list of their\n"
    "results, in order, once all are answered: new bytes (a short read shorter) or -errno.");
static PyObject *Lane_start_read_many(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) { PyErr_SetString(PyExc_TypeError, "start_read_many(fut, nr, fd, size, offsets)"); return NULL; }
    uint32_t nr; uint64_t a[6]; Py_ssize_t size;
    PyObject *seq = PySequence_Fast(args[4], "offsets must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    /* The descriptor and the arguments are checked once, with the first offset. */
    if (!n || !usable(l) || !buffer_nr(l, args[1], &nr) || l->kind[nr] != K_POSITIONED
        || !read_words(l, nr, (PyObject *const[]){args[2], args[3], items[0]}, a, &size)) {
        Py_DECREF(seq);
        return PyLong_FromLong(0);
    }
    int li;
    Py_ssize_t m = group_prefix(l, items, n);
    Py_ssize_t started = m ? start_group(l, args[0], nr, (int32_t)a[0], size, items, m, 0, &li) : 0;
    Py_DECREF(seq);
    return PyLong_FromSsize_t(started);
}

PyDoc_STRVAR(start_rw_many_doc,
    "start_rw_many(fut, nr, fd, buffer, size, offsets, first) -> how many started (0: none taken): queue\n"
    "pread64 or pwrite64 of entry i into or from buffer[i*size:(i+1)*size] at offsets[i], for i from first on\n"
    "(as many as the lane has slots for); fut gets the list of their byte counts (or -errno), in order, once\n"
    "all are answered. The lane holds the buffer until then, also when fut is cancelled. The buffer must hold\n"
    "every offset's block.");
static PyObject *Lane_start_rw_many(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "start_rw_many(fut, nr, fd, buffer, size, offsets, first)");
        return NULL;
    }
    uint32_t nr;
    PyObject *seq = PySequence_Fast(args[5], "offsets must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_ssize_t first = PyLong_Check(args[6]) ? PyLong_AsSsize_t(args[6]) : -1;
    if (first < 0 || first >= n || !usable(l) || !buffer_nr(l, args[1], &nr) || l->kind[nr] != K_POSITIONED
        || !PyLong_Check(args[2]) || !PyLong_Check(args[4])) {
        PyErr_Clear();
        Py_DECREF(seq);
        return PyLong_FromLong(0);
    }
    long fd = PyLong_AsLong(args[2]);
    Py_ssize_t size = PyLong_AsSsize_t(args[4]);
    Py_ssize_t started = 0;
    Py_buffer view;
    if (PyErr_Occurred()) PyErr_Clear();
    else if (fd >= INT32_MIN && fd <= INT32_MAX && size >= 0 && size <= MAX_RW
             && PyObject_GetBuffer(args[3], &view, l->opcode[nr] == OP_READ ? PyBUF_WRITABLE : PyBUF_SIMPLE) == 0) {
        uint64_t base = (uint64_t)(uintptr_t)view.buf;
        uint64_t a[6] = {(uint64_t)fd, base, (uint64_t)size, 0, 0, 0};
        int li = -1;
        if ((!size || n <= view.len / size) && base && lane_accepts(l, nr, a)) {   /* n * size could overflow */
            Py_ssize_t m = group_prefix(l, items + first, n - first);
            if (m) started = start_group(l, args[0], nr, (int32_t)fd, size, items + first, m,
                                         base + (uint64_t)first * (uint64_t)size, &li);
        }
        if (li >= 0) { l->slots[li].view = view; l->slots[li].has_view = 1; }   /* the leader holds it */
        else PyBuffer_Release(&view);
    }
    PyErr_Clear();
    Py_DECREF(seq);
    return PyLong_FromSsize_t(started);
}

/* Callbacks (transports) ---------------------------------------------------------- */

/* The slot of a token still in flight, or NULL. */
static struct slot *slot_of(Lane *l, PyObject *token)
{
    unsigned long long t = PyLong_AsUnsignedLongLong(token);
    if (PyErr_Occurred()) { PyErr_Clear(); return NULL; }
    uint32_t i = (uint32_t)(t & ((1u << GEN_SHIFT) - 1));
    if (i >= l->nslots) return NULL;
    struct slot *s = &l->slots[i];
    return s->busy && s->gen == (uint32_t)(t >> GEN_SHIFT) ? s : NULL;
}

/* A callback slot for a multishot entry (a receive or accept loop): on and end held, the entry queued
 * with eflags. NULL: no free slot. */
static struct slot *start_multishot(Lane *l, uint32_t nr, const uint64_t *a, PyObject *on, PyObject *end,
                                    uint32_t eflags)
{
    int i = slot_take(l);
    if (i < 0) return NULL;
    struct slot *s = &l->slots[i];
    s->call = 1; s->nr = nr; s->fd = (int32_t)a[0];
    Py_INCREF(on); s->fut = on;
    Py_INCREF(end); s->end = end;
    write_entry_flags(l, token_of(l, (uint32_t)i), nr, a, eflags);
    return s;
}


PyDoc_STRVAR(receive_doc,
    "receive(on_data, on_end, fd, size) -> token, or None: a receive loop on a blocking socket. Each time\n"
    "data arrives, on_data(bytes) is called with new bytes (at most size, or the lane's provided-buffer\n"
    "size where the kernel has multishot receives), until end of file, an error, an exception from\n"
    "on_data, or stop()/cancel(): then on_end(why) is called once, why being 0 (end of file), -errno,\n"
    "the exception, or None (stopped).");
static PyObject *Lane_receive(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "receive(on_data, on_end, fd, size)"); return NULL; }
    uint32_t nr = l->recv_nr; uint64_t a[6]; Py_ssize_t n;
    PyObject *zero = PyLong_FromLong(0);
    PyObject *rargs[3] = {args[2], args[3], zero};
    int ok = nr < NR_TABLE && usable(l) && read_words(l, nr, rargs, a, &n);
    Py_DECREF(zero);
    if (!ok) Py_RETURN_NONE;
    if (pbuf_ready(l)) {
        /* One multishot receive: the kernel keeps its poll armed and picks a provided buffer per arrival. */
        a[1] = a[2] = 0;
        struct slot *s = start_multishot(l, nr, a, args[0], args[1], ENTRY_MULTISHOT);
        if (!s) Py_RETURN_NONE;
        s->loop = 1; s->multi = 1;
        return PyLong_FromUnsignedLongLong(token_of(l, (uint32_t)(s - l->slots)));
    }
    PyObject *t = start_entry(l, nr, a, args[0], NULL, n, 1, NULL, 0);
    struct slot *s = t && t != Py_None ? slot_of(l, t) : NULL;
    if (s) {
        s->call = 1; s->loop = 1; s->nr = nr;
        Py_INCREF(args[1]);
        s->end = args[1];
    }
    return t;
}

PyDoc_STRVAR(accept_loop_doc,
    "accept_loop(on_conn, on_end, fd, flags) -> token, or None: one multishot accept on a blocking listening\n"
    "socket (kernels from 6.0): on_conn(new_fd) for every connection, until an error or cancel(); then\n"
    "on_end(-errno) once. The new descriptors are the callback's to own.");
static PyObject *Lane_accept_loop(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "accept_loop(on_conn, on_end, fd, flags)"); return NULL; }
    uint32_t nr = l->accept_nr;
    if (nr >= NR_TABLE || !usable(l) || !l->poll_first || !PyLong_Check(args[2]) || !PyLong_Check(args[3])) Py_RETURN_NONE;
    long fd = PyLong_AsLong(args[2]);
    long flags = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) { PyErr_Clear(); Py_RETURN_NONE; }
    uint64_t a[6] = {(uint64_t)fd, 0, 0, (uint64_t)(uint32_t)flags, 0, 0};
    if (fd < 0 || fd > INT32_MAX || flags < 0 || !lane_accepts(l, nr, a)) Py_RETURN_NONE;
    struct slot *s = start_multishot(l, nr, a, args[0], args[1], ENTRY_ACCEPTS);
    if (!s) Py_RETURN_NONE;
    s->accepts = 1;
    s->len = (uint32_t)flags;   /* for the re-armed accept */
    return PyLong_FromUnsignedLongLong(token_of(l, (uint32_t)(s - l->slots)));
}

PyDoc_STRVAR(send_doc,
    "send(on_sent, fd, data, flags) -> token, or None: send data's buffer on fd, a blocking socket the caller\n"
    "owns (not checked again: a transport's). on_sent(result) is called with the count sent or -errno only\n"
    "if the send is short or fails, or once watch(token) asked for it; a whole send ends silently.");
static PyObject *Lane_send(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "send(on_sent, fd, data, flags)"); return NULL; }
    uint32_t nr = l->send_nr;
    if (nr >= NR_TABLE || !usable(l) || !PyLong_Check(args[1]) || !PyLong_Check(args[3])) Py_RETURN_NONE;
    long fd = PyLong_AsLong(args[1]);
    long long fl = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) { PyErr_Clear(); Py_RETURN_NONE; }
    if (fd < 0 || fd > INT32_MAX || fl < 0 || fl > 0xffffffffLL) Py_RETURN_NONE;
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0) { PyErr_Clear(); Py_RETURN_NONE; }
    if ((uint64_t)view.len > 0xffffffffu) { PyBuffer_Release(&view); Py_RETURN_NONE; }
    uint64_t a[6] = {(uint64_t)fd, (uint64_t)(uintptr_t)view.buf, (uint64_t)view.len, (uint64_t)fl, 0, 0};
    PyObject *t = start_entry(l, nr, a, args[0], NULL, -1, 0, &view, 1);
    if (!t || t == Py_None) { PyBuffer_Release(&view); return t; }
    struct slot *s = slot_of(l, t);
    s->call = 1;
    s->quiet = 1;
    s->len = (uint32_t)view.len;
    return t;
}

PyDoc_STRVAR(watch_doc,
    "watch(token) -> bool: have a send's on_sent called when it ends; False: it already ended whole.");
static PyObject *Lane_watch(Lane *l, PyObject *arg)
{
    struct slot *s = slot_of(l, arg);
    if (!s || !s->call) Py_RETURN_FALSE;
    s->quiet = 0;
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(stop_doc, "stop(token) -> bool: a receive loop queues no next receive (the one in flight still delivers).");
static PyObject *Lane_stop(Lane *l, PyObject *arg)
{
    struct slot *s = slot_of(l, arg);
    if (!s || !s->loop) Py_RETURN_FALSE;
    if (!s->stopping && s->multi && l->ring_fd >= 0 && thread_serial() == l->owner) {
        lane_submit(l);   /* a multishot receive goes on until cancelled: what already arrived still delivers */
        submit_cancel(l, PyLong_AsUnsignedLongLong(arg));
    }
    s->stopping = 1;
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(retarget_doc, "retarget(token, on_data) -> bool: a receive loop delivers to on_data from now on.");
static PyObject *Lane_retarget(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "retarget(token, on_data)"); return NULL; }
    struct slot *s = slot_of(l, args[0]);
    if (!s || !s->loop) Py_RETURN_FALSE;
    Py_INCREF(args[1]);
    Py_SETREF(s->fut, args[1]);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(cancel_doc,
    "cancel(token) -> bool: ask the kernel to cancel a callback entry (its callback still runs once; a\n"
    "receive loop ends).");
static PyObject *Lane_cancel(Lane *l, PyObject *arg)
{
    struct slot *s = slot_of(l, arg);
    if (!s || !s->call) Py_RETURN_FALSE;
    s->stopping = 1;
    s->cancelled = 1;
    if (l->ring_fd >= 0 && thread_serial() == l->owner) {
        lane_submit(l);   /* a queued entry reaches the kernel first, so the cancel finds it */
        submit_cancel(l, PyLong_AsUnsignedLongLong(arg));
    }
    Py_RETURN_TRUE;
}

/* Hand one completion to a callable: the bytes a read got (or -errno), or the result. A receive loop
 * then queues its next receive into new bytes, under the same token. */
static void deliver_call(Lane *l, uint32_t i, int64_t res)
{
    struct slot *s = &l->slots[i];
    if (s->quiet && res == (int64_t)s->len) { slot_free(l, i); return; }   /* sent whole, nobody waits */
    if (s->loop && (res <= 0 || s->cancelled)) {
        end_loop(l, i, PyLong_FromLongLong(res <= 0 ? res : -ECANCELED));
        return;
    }
    int called = call_slot(l, i, s->reads && res > 0 ? value_of(s, res) : PyLong_FromLongLong(res));
    if (called < 0) return;
    if (!called) {
        if (s->loop) { end_loop(l, i, take_error()); return; }
        PyErr_WriteUnraisable(s->fut);
    }
    if (!s->loop) { slot_free(l, i); return; }
    if (s->stopping || !usable(l)) { end_loop(l, i, (Py_INCREF(Py_None), Py_None)); return; }
    uint64_t a[6] = {(uint64_t)(int64_t)s->fd, 0, s->len, 0, 0, 0};
    if (!slot_read_into_bytes(s, a, s->len, 1)) { end_loop(l, i, take_error()); return; }
    /* Data was just taken: the next is likely not there yet, so the kernel arms its poll at once
     * rather than trying a receive that would fail first. */
    write_entry_flags(l, token_of(l, i), s->nr, a, l->poll_first ? ENTRY_POLL_FIRST : 0);
}

/* One completion of an accept loop: a connection's descriptor for on_conn, or the series' end, after
 * which the loop re-arms (the kernel ended it while all was well) or ends with on_end(why). */
static void deliver_accepts(Lane *l, uint32_t i, int64_t res, uint32_t flags)
{
    struct slot *s = &l->slots[i];
    if (res >= 0) {
        if (s->cancelled) {
            close((int)res);   /* accepted as the loop was being stopped: nobody takes it */
        } else {
            int called = call_slot(l, i, PyLong_FromLongLong(res));
            if (called < 0) return;
            if (!called) PyErr_WriteUnraisable(s->fut);   /* the server's own handler reports its failures */
        }
    }
    if (flags & CQE_F_MORE) return;
    if (s->cancelled || (res == -ECANCELED && s->stopping)) { end_loop(l, i, PyLong_FromLong(-ECANCELED)); return; }
    if (res < 0) { end_loop(l, i, PyLong_FromLongLong(res)); return; }
    if (s->stopping || !usable(l)) { end_loop(l, i, (Py_INCREF(Py_None), Py_None)); return; }
    uint64_t a[6] = {(uint64_t)(int64_t)s->fd, 0, 0, s->len, 0, 0};
    write_entry_flags(l, token_of(l, i), s->nr, a, ENTRY_ACCEPTS);
}

/* One completion of a multishot receive: data in a provided buffer (copied into new bytes for on_data,
 * the buffer handed straight back), or the end of the series, after which the loop re-arms or ends. */
static void deliver_multishot(Lane *l, uint32_t i, int64_t res, uint32_t flags)
{
    struct slot *s = &l->slots[i];
    if (flags & CQE_F_BUFFER) {
        uint16_t bid = (uint16_t)(flags >> CQE_BUFFER_SHIFT);
        PyObject *v = NULL;
        if (res > 0 && !s->cancelled && bid < PBUF_COUNT)
            v = PyBytes_FromStringAndSize((const char *)l->pbufs + (size_t)bid * PBUF_SIZE, (Py_ssize_t)res);
        if (bid < PBUF_COUNT) pbuf_put(l, bid);
        if (res > 0 && !s->cancelled) {
            int called = call_slot(l, i, v);
            if (called < 0) return;
            if (!called) {
                /* on_data failed: deliver nothing more, and end the loop with its exception once the
                 * kernel has ended the series. */
                Py_XSETREF(s->orphan, take_error());
                s->cancelled = s->stopping = 1;
                if (flags & CQE_F_MORE) submit_cancel(l, token_of(l, i));
            }
        }
    }
    if (flags & CQE_F_MORE) return;   /* the series goes on */
    /* The series ended: why? */
    if (s->orphan) { PyObject *exc = s->orphan; s->orphan = NULL; end_loop(l, i, exc); return; }
    if (s->cancelled) { end_loop(l, i, PyLong_FromLong(-ECANCELED)); return; }
    if (res == 0 && !(flags & CQE_F_BUFFER)) { end_loop(l, i, PyLong_FromLong(0)); return; }   /* end of file */
    if (res < 0 && res != -ENOBUFS && !(res == -ECANCELED && s->stopping)) { end_loop(l, i, PyLong_FromLongLong(res)); return; }
    if (s->stopping || !usable(l)) { end_loop(l, i, (Py_INCREF(Py_None), Py_None)); return; }
    /* Out of buffers, or the kernel ended it after data: the buffers this turn hands back serve the next. */
    uint64_t a[6] = {(uint64_t)(int64_t)s->fd, 0, 0, 0, 0, 0};
    write_entry_flags(l, token_of(l, i), s->nr, a, ENTRY_MULTISHOT);
}

/* fut.set_result(v) or fut.set_exception(v) (meth): a Waiter's directly, into the turn's batch. */
static PyObject *fut_resolve(PyObject *fut, PyObject *meth, PyObject *v)
{
    if (Py_IS_TYPE(fut, &WaiterType)) {
        int state = meth == str_set_result ? W_RESULT : W_EXCEPTION;
        return waiter_set((Waiter *)fut, state, v) < 0 ? NULL : Py_NewRef(Py_None);
    }
    return PyObject_CallMethodOneArg(fut, meth, v);
}

/* One read of a group: its value (bytes, or -errno) into the leader's list; the last one resolves the
 * leader's future with the list (a cancelled future just lets it go). */
static void deliver_group(Lane *l, uint32_t i, int64_t res)
{
    struct slot *s = &l->slots[i];
    uint32_t li = s->group - 1;
    struct slot *lead = &l->slots[li];
    PyObject *v = res >= 0 ? value_of(s, res) : PyLong_FromLongLong(res);
    if (!v) { PyErr_Clear(); v = PyLong_FromLong(-ENOMEM); }
    if (lead->results) PyList_SetItem(lead->results, s->pos, v);   /* steals v */
    else Py_DECREF(v);
    s->group = 0;   /* answered (a leader's slot stays taken until the last) */
    if (i != li) slot_free(l, i);
    if (--lead->left) return;
    PyObject *r = lead->fut && lead->results ? fut_resolve(lead->fut, str_set_result, lead->results) : NULL;
    if (r) Py_DECREF(r); else PyErr_Clear();
    slot_free(l, li);
}

/* The answer to an entry whose waiter asked for its cancellation: a failure (the cancellation among them)
 * ends the waiter cancelled, anything else with its value; one that gave up waiting (the settle time) has
 * it dropped. */
static void deliver_settled(Lane *l, uint32_t i, int64_t res)
{
    struct slot *s = &l->slots[i];
    Waiter *w = (Waiter *)s->fut;
    int r = 0;
    if (w->state == W_PENDING) {
        if (res < 0) {
            r = waiter_cancel_now(w);
        } else {
            PyObject *v = s->ints ? PyLong_FromLongLong(res) : value_of(s, res);
            r = v ? waiter_set(w, W_RESULT, v) : waiter_cancel_now(w);
            Py_XDECREF(v);
        }
    }
    if (r < 0) PyErr_WriteUnraisable((PyObject *)w);
    PyErr_Clear();
    slot_free(l, i);
}

static int lane_settle_entry(PyObject *lane, uint64_t token, PyObject *w, double *settle_s)
{
    Lane *l = (Lane *)lane;
    uint32_t i = (uint32_t)(token & ((1u << GEN_SHIFT) - 1));
    if (i >= l->nslots) return 0;
    struct slot *s = &l->slots[i];
    if (!s->busy || s->gen != (uint32_t)(token >> GEN_SHIFT) || s->fut != w || s->group || s->call)
        return 0;
    s->settles = 1;
    if (l->ring_fd >= 0 && thread_serial() == l->owner) {
        lane_submit(l);   /* an entry still queued reaches the kernel first, so the cancel finds it */
        submit_cancel(l, token);
    }
    *settle_s = (double)l->settle_ns / 1e9;
    return 1;
}

/* Hand one completion to its future: the value or the OSError (a settling waiter's: deliver_settled). */
static void resolve(Lane *l, uint64_t token, int64_t res, uint32_t flags)
{
    uint32_t i = (uint32_t)(token & ((1u << GEN_SHIFT) - 1));
    if (i >= l->nslots) return;
    struct slot *s = &l->slots[i];
    if (!s->busy || s->gen != (uint32_t)(token >> GEN_SHIFT) || (!s->fut && !s->group)) return;
    if (s->multi) { deliver_multishot(l, i, res, flags); return; }
    if (s->accepts) { deliver_accepts(l, i, res, flags); return; }
    if (s->group) { deliver_group(l, i, res); return; }
    if (s->call) { deliver_call(l, i, res); return; }
    if (s->settles) { deliver_settled(l, i, res); return; }
    PyObject *meth = str_set_result;
    PyObject *v = s->ints ? PyLong_FromLongLong(res) : value_of(s, res);
    if (!v) {
        v = take_error();
        meth = str_set_exception;
    }
    PyObject *r = v ? fut_resolve(s->fut, meth, v) : NULL;
    if (r) Py_DECREF(r);
    else PyErr_Clear();   /* a future cancelled on its own (not a settling waiter) lets the answer go */
    Py_XDECREF(v);
    slot_free(l, i);
}

PyDoc_STRVAR(turn_doc,
    "turn(run_work=True) -> completions delivered: submit queued entries, reap, deliver. run_work: with\n"
    "nothing to submit, enter the kernel anyway to run deferred work (the lane's eventfd said there is some).\n"
    "A turn ends after about TURN_BUDGET completions even if more are ready; unfinished then says so.");
static PyObject *Lane_turn(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) { PyErr_SetString(PyExc_TypeError, "turn(run_work=True)"); return NULL; }
    int run_work = nargs ? PyObject_IsTrue(args[0]) : 1;
    if (run_work < 0) return NULL;
    if (l->ring_fd < 0 || thread_serial() != l->owner || l->in_turn) return PyLong_FromLong(0);
    long r = lane_submit(l);
    if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR) {
        errno = (int)-r;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (run_work && !l->unsubmitted && l->inflight && *l->cq_head == load_acquire32(l->cq_tail))
        uring_enter(l, 0, 0, ENTER_GETEVENTS, -1);   /* deferred task work: run it here, now */
    long done = 0;
    struct waiter_batch batch;
    waiter_batch_open(&batch);
    l->in_turn = 1;
    l->unfinished = 0;
    for (;;) {
        uint32_t n = lane_reap(l);
        while (l->c_head != l->c_tail) {
            uint64_t w[3];
            memcpy(w, l->cring + (size_t)(l->c_head & l->slot_mask) * COMPLETE_SIZE, sizeof w);
            l->c_head++;
            resolve(l, w[0], (int64_t)w[1], (uint32_t)w[2]);
            done++;
            /* What the callbacks started (a protocol's replies) goes out while the rest are delivered:
             * the peer gets the first answers sooner, and works on them meanwhile. */
            if (l->s_tail - l->s_head >= TURN_FLUSH) lane_submit(l);
        }
        if (!n) break;
        /* Peers that answer at once (a busy server's connections) would keep one turn going for ever:
         * stop, and let the caller run another after the loop's other callbacks. */
        if (done >= TURN_BUDGET) { l->unfinished = 1; break; }
    }
    l->in_turn = 0;
    if (waiter_batch_close(&batch) < 0) return NULL;   /* wake the tasks of this reap, in order */
    return PyLong_FromLong(done);
}

PyDoc_STRVAR(cancel_all_doc, "cancel_all() -> how many: ask the kernel to cancel every entry in flight (loop lanes).");
static PyObject *Lane_cancel_all(Lane *l, PyObject *Py_UNUSED(ignored))
{
    if (l->ring_fd < 0 || thread_serial() != l->owner) return PyLong_FromLong(0);
    lane_submit(l);
    long n = 0;
    for (uint32_t i = 0; i < l->nslots; i++)
        if (l->slots[i].busy && (l->slots[i].fut || l->slots[i].group) && submit_cancel(l, token_of(l, i))) n++;
    return PyLong_FromLong(n);
}

PyDoc_STRVAR(register_eventfd_doc, "register_eventfd(fd): the kernel signals fd when a completion is posted.");
static PyObject *Lane_register_eventfd(Lane *l, PyObject *arg)
{
    int efd = PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (l->ring_fd < 0) { PyErr_SetString(PyExc_ValueError, "the lane is closed"); return NULL; }
    if (syscall(NR_IO_URING_REGISTER, l->ring_fd, REGISTER_EVENTFD, &efd, 1) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(take_late_doc,
    "take_late() -> (fd, result, bytes or None) of the call an exception interrupted, once the kernel answered.");
static PyObject *Lane_take_late(Lane *l, PyObject *Py_UNUSED(ignored))
{
    PyObject *v = l->late;
    l->late = NULL;
    if (!v) Py_RETURN_NONE;
    return v;
}

PyDoc_STRVAR(closing_doc,
    "closing(deadline_s): take no new calls; one still waiting after monotonic time deadline_s is cancelled.");
static PyObject *Lane_closing(Lane *l, PyObject *arg)
{
    double d = PyFloat_AsDouble(arg);
    if (PyErr_Occurred()) return NULL;
    int64_t ns = (int64_t)(d * 1e9);
    l->deadline_ns = ns > 0 ? ns : 1;
    l->refusing = 1;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(close_doc,
    "close() -> bool: release the ring; False (nothing done) while entries are in flight or a call waits.");
static PyObject *Lane_close(Lane *l, PyObject *Py_UNUSED(ignored))
{
    if (l->inflight || l->busy_blocking) Py_RETURN_FALSE;
    lane_close_ring(l);
    l->dead = 1;
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(forget_doc, "forget(): in a forked child, drop the parent's ring without touching it.");
static PyObject *Lane_forget(Lane *l, PyObject *Py_UNUSED(ignored))
{
    /* The mappings were not inherited (MADV_DONTFORK); the descriptor is closed by the host. */
    l->sq_map = l->cq_map = l->sqes_map = NULL;
    l->pbuf_ring = l->pbufs = NULL;
    l->ring_fd = -1;
    l->dead = 1;
    for (uint32_t i = 0; i < l->nslots; i++) l->slots[i].busy = 0;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(route_doc, "route(nr, opcode, kind): the lane takes syscall nr as io_uring opcode (kind: see lane.c).");
static PyObject *Lane_route(Lane *l, PyObject *args)
{
    unsigned int nr, op, kind;
    if (!PyArg_ParseTuple(args, "III", &nr, &op, &kind)) return NULL;
    if (nr >= NR_TABLE || op > 255 || kind >= K_LIMIT) { PyErr_SetString(PyExc_ValueError, "route out of range"); return NULL; }
    l->opcode[nr] = (uint8_t)op;
    l->kind[nr] = (uint8_t)kind;
    if (kind == K_SOCKET && op == OP_RECV) l->recv_nr = nr;
    if (kind == K_SOCKET && op == OP_SEND) l->send_nr = nr;
    if (kind == K_ACCEPT && op == OP_ACCEPT) l->accept_nr = nr;
    Py_RETURN_NONE;
}

static PyObject *Lane_get_fileno(Lane *l, void *c) { (void)c; return PyLong_FromLong(l->ring_fd); }
static PyObject *Lane_get_dead(Lane *l, void *c) { (void)c; return PyBool_FromLong(l->dead); }
static PyObject *Lane_get_inflight(Lane *l, void *c) { (void)c; return PyLong_FromUnsignedLong(l->inflight); }
static PyObject *Lane_get_queued(Lane *l, void *c) { (void)c; return PyLong_FromUnsignedLongLong(l->s_tail - l->s_head); }
static PyObject *Lane_get_unfinished(Lane *l, void *c) { (void)c; return PyBool_FromLong(l->unfinished); }
static PyObject *Lane_get_setup_flags(Lane *l, void *c) { (void)c; return PyLong_FromUnsignedLong(l->setup_flags); }
static PyObject *Lane_get_entries(Lane *l, void *c) { (void)c; return PyLong_FromUnsignedLongLong(l->entries); }
static PyObject *Lane_get_enters(Lane *l, void *c) { (void)c; return PyLong_FromUnsignedLongLong(l->enters); }
static PyObject *Lane_get_owner(Lane *l, void *c) { (void)c; return PyLong_FromUnsignedLongLong(l->owner); }
static PyObject *Lane_get_mine(Lane *l, void *c) { (void)c; return PyBool_FromLong(thread_serial() == l->owner); }

static PyGetSetDef Lane_getset[] = {
    {"fileno", (getter)Lane_get_fileno, NULL, "the io_uring descriptor (-1 once closed)", NULL},
    {"dead", (getter)Lane_get_dead, NULL, "True once the lane takes nothing more", NULL},
    {"inflight", (getter)Lane_get_inflight, NULL, "entries not yet answered", NULL},
    {"queued", (getter)Lane_get_queued, NULL, "entries written, not yet submitted", NULL},
    {"unfinished", (getter)Lane_get_unfinished, NULL, "the last turn stopped at its budget: run another", NULL},
    {"setup_flags", (getter)Lane_get_setup_flags, NULL, "the io_uring setup flags the kernel accepted", NULL},
    {"entries", (getter)Lane_get_entries, NULL, "entries the lane ran", NULL},
    {"enters", (getter)Lane_get_enters, NULL, "io_uring_enter calls made", NULL},
    {"owner", (getter)Lane_get_owner, NULL, "serial number of the thread that owns the lane", NULL},
    {"mine", (getter)Lane_get_mine, NULL, "True on the thread that owns the lane", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Lane_methods[] = {
    {"call", (PyCFunction)(void (*)(void))Lane_call, METH_FASTCALL, call_doc},
    {"call_sqe", (PyCFunction)(void (*)(void))Lane_call_sqe, METH_FASTCALL, call_sqe_doc},
    {"start_sqe", (PyCFunction)(void (*)(void))Lane_start_sqe, METH_FASTCALL, start_sqe_doc},
    {"read", (PyCFunction)(void (*)(void))Lane_read, METH_FASTCALL, read_doc},
    {"read_many", (PyCFunction)(void (*)(void))Lane_read_many, METH_FASTCALL, read_many_doc},
    {"rw_many", (PyCFunction)(void (*)(void))Lane_rw_many, METH_FASTCALL, rw_many_doc},
    {"start", (PyCFunction)(void (*)(void))Lane_start, METH_FASTCALL, start_doc},
    {"start_read", (PyCFunction)(void (*)(void))Lane_start_read, METH_FASTCALL, start_read_doc},
    {"start_write", (PyCFunction)(void (*)(void))Lane_start_write, METH_FASTCALL, start_write_doc},
    {"start_read_many", (PyCFunction)(void (*)(void))Lane_start_read_many, METH_FASTCALL, start_read_many_doc},
    {"start_rw_many", (PyCFunction)(void (*)(void))Lane_start_rw_many, METH_FASTCALL, start_rw_many_doc},
    {"write", (PyCFunction)(void (*)(void))Lane_write, METH_FASTCALL, write_doc},
    {"turn", (PyCFunction)(void (*)(void))Lane_turn, METH_FASTCALL, turn_doc},
    {"receive", (PyCFunction)(void (*)(void))Lane_receive, METH_FASTCALL, receive_doc},
    {"send", (PyCFunction)(void (*)(void))Lane_send, METH_FASTCALL, send_doc},
    {"accept_loop", (PyCFunction)(void (*)(void))Lane_accept_loop, METH_FASTCALL, accept_loop_doc},
    {"stop", (PyCFunction)Lane_stop, METH_O, stop_doc},
    {"watch", (PyCFunction)Lane_watch, METH_O, watch_doc},
    {"retarget", (PyCFunction)(void (*)(void))Lane_retarget, METH_FASTCALL, retarget_doc},
    {"cancel", (PyCFunction)Lane_cancel, METH_O, cancel_doc},
    {"cancel_all", (PyCFunction)Lane_cancel_all, METH_NOARGS, cancel_all_doc},
    {"register_eventfd", (PyCFunction)Lane_register_eventfd, METH_O, register_eventfd_doc},
    {"take_late", (PyCFunction)Lane_take_late, METH_NOARGS, take_late_doc},
    {"closing", (PyCFunction)Lane_closing, METH_O, closing_doc},
    {"close", (PyCFunction)Lane_close, METH_NOARGS, close_doc},
    {"forget", (PyCFunction)Lane_forget, METH_NOARGS, forget_doc},
    {"route", (PyCFunction)Lane_route, METH_VARARGS, route_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ksvc_basic._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A channel owned by one thread, with an io_uring of its own (see lane.c).",
    .tp_new = Lane_new,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
    .tp_weaklistoffset = offsetof(Lane, weakrefs),
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lane", "Thread lanes (see lane.c).", -1, NULL,
                                     NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__lane(void)
{
    if (PyType_Ready(&LaneType) < 0) return NULL;
    str_set_result = PyUnicode_InternFromString("set_result");
    str_set_exception = PyUnicode_InternFromString("set_exception");
    if (!str_set_result || !str_set_exception) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) return NULL;
    if (waiter_init_module(m) < 0) return NULL;
    PyObject *c = Py_BuildValue(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:K,s:K,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:n,s:n,s:I,s:I}",
        "IORING_OP_FSYNC", OP_FSYNC, "IORING_OP_ACCEPT", OP_ACCEPT, "IORING_OP_ASYNC_CANCEL", OP_ASYNC_CANCEL,
        "IORING_OP_CONNECT", OP_CONNECT, "IORING_OP_OPENAT", OP_OPENAT, "IORING_OP_CLOSE", OP_CLOSE,
        "IORING_OP_READ", OP_READ, "IORING_OP_WRITE", OP_WRITE, "IORING_OP_SEND", OP_SEND, "IORING_OP_RECV", OP_RECV,
        "IORING_SETUP_SINGLE_ISSUER", SETUP_SINGLE_ISSUER, "IORING_SETUP_DEFER_TASKRUN", SETUP_DEFER_TASKRUN,
        "IORING_SETUP_COOP_TASKRUN", SETUP_COOP_TASKRUN, "IORING_SETUP_SUBMIT_ALL", SETUP_SUBMIT_ALL,
        "IORING_SETUP_CLAMP", SETUP_CLAMP, "IORING_FEAT_SINGLE_MMAP", FEAT_SINGLE_MMAP,
        "IORING_OFF_CQ_RING", (unsigned long long)OFF_CQ_RING, "IORING_OFF_SQES", (unsigned long long)OFF_SQES,
        "IORING_ENTER_GETEVENTS", ENTER_GETEVENTS, "IORING_ENTER_EXT_ARG", ENTER_EXT_ARG,
        "IORING_REGISTER_EVENTFD", REGISTER_EVENTFD, "IORING_FEAT_EXT_ARG", FEAT_EXT_ARG,
        "IORING_FSYNC_DATASYNC", FSYNC_DATASYNC, "NR_IO_URING_SETUP", NR_IO_URING_SETUP,
        "NR_IO_URING_ENTER", NR_IO_URING_ENTER, "NR_IO_URING_REGISTER", NR_IO_URING_REGISTER,
        "SQE_SIZE", SQE_SIZE, "CQE_SIZE", CQE_SIZE, "PARAMS_SIZE", (unsigned)sizeof(struct uring_params),
        "SUBMIT_SIZE", SUBMIT_SIZE, "COMPLETE_SIZE", (Py_ssize_t)COMPLETE_SIZE, "SLOTS", (Py_ssize_t)LANE_SLOTS,
        "TURN_FLUSH", TURN_FLUSH, "TURN_BUDGET", TURN_BUDGET);
    if (!c || PyModule_AddObject(m, "CONSTANTS", c) < 0) return NULL;
    PyObject *kinds = Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "stream", K_STREAM,
                                    "positioned", K_POSITIONED, "socket", K_SOCKET, "close", K_CLOSE, "fsync", K_FSYNC,
                                    "fdatasync", K_FDATASYNC, "openat", K_OPENAT, "accept", K_ACCEPT,
                                    "accept_plain", K_ACCEPT_PLAIN, "connect", K_CONNECT, "stat", K_STAT,
                                    "lstat", K_LSTAT, "fstat", K_FSTAT, "fstatat", K_FSTATAT,
                                    "vectored", K_VECTORED, "vectored_positioned", K_VECTORED_POSITIONED,
                                    "vectored_v2", K_VECTORED_V2);
    if (!kinds || PyModule_AddObject(m, "KINDS", kinds) < 0) return NULL;
    return m;
}
