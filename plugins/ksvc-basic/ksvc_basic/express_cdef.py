"""The C declarations of the express lane, shared by the compiled module and the reference."""

from __future__ import annotations

from typing import Final

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
    int32_t error;
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
"""
"""The lane's state (the layout of ``express.c``)."""

FUNCTIONS: Final = """
int ksvc_express_submit(struct ksvc_express *x, uint32_t max_take);
int ksvc_express_reap(struct ksvc_express *x);
int ksvc_express_turn(struct ksvc_express *x, uint32_t max_take);
"""
"""The loops (see ``express.c``)."""
