"""The C declarations of the fast path, shared by the compiled module and the reference."""

from __future__ import annotations

from typing import Final

BULK_GROUPS: Final = 4096
"""Bulk operations in flight at once (groups of the bulk table)."""

STRUCTS: Final = """
struct ksvc_express {
    uint8_t *sring; uint64_t shead; uint32_t smask;
    uint8_t *cring; uint64_t ctail; uint32_t csize;
    uint32_t *sq_head; uint32_t *sq_tail; uint32_t *sq_flags; uint32_t *sq_array;
    uint32_t sq_mask; uint32_t sq_entries;
    uint32_t *cq_head; uint32_t *cq_tail; uint32_t cq_mask;
    uint8_t *sqes; uint8_t *cqes;
    int32_t ring_fd; int32_t sqpoll;
    uint8_t opcode[512]; uint8_t kind[512];
    uint64_t excl_lo; uint64_t excl_hi;
    uint64_t tag;
    uint32_t room;
    uint32_t taken; uint32_t completed; uint32_t unsubmitted;
    int32_t error; uint64_t enter_calls;
    uint32_t cq_left;
    uint32_t s_left;
    int32_t a_ring_fd; uint32_t a_backlog;
    uint32_t *a_sq_head; uint32_t *a_sq_tail; uint32_t *a_sq_array; uint32_t a_sq_mask; uint32_t a_sq_entries;
    uint32_t *a_cq_head; uint32_t *a_cq_tail; uint32_t a_cq_mask;
    uint8_t *a_sqes; uint8_t *a_cqes;
    uint32_t ephemeral;
    uint32_t a_pending;
    uint32_t a_taken;
    uint64_t a_total;
};
struct ksvc_bulk {
    uint64_t bit;
    uint32_t index_bits;
    int64_t *results[4096];
    uint32_t left[4096];
    uint32_t n[4096];
    uint64_t *seen[4096];
};
"""
"""Structures shared by both implementations (the layout of ``fastpath.c``)."""

FUNCTIONS: Final = """
uint32_t ksvc_submit_strided(uint8_t *ring, uint64_t tail, uint32_t mask, uint64_t corr0, uint32_t nr,
                             uint64_t fd, uint64_t addr0, uint64_t stride, uint64_t len,
                             const uint64_t *offsets, const uint64_t *addrs, uint32_t n);
int ksvc_express_submit(struct ksvc_express *x, uint32_t max_take);
int ksvc_express_reap(struct ksvc_express *x);
int ksvc_express_turn(struct ksvc_express *x, uint32_t max_take);
int ksvc_bulk_reap(uint8_t *cring, uint64_t head, uint64_t tail, uint32_t mask, struct ksvc_bulk *b,
                   uint64_t *other, uint32_t max_other, uint32_t *done, uint32_t max_done, uint32_t *counts);
"""
"""The loops (see ``fastpath.c``)."""
