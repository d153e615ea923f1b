"""The C declarations of the fast path, shared by the compiled module and the reference."""

from __future__ import annotations

from typing import Final

BULK_GROUPS: Final = 4096
"""Bulk operations in flight at once (groups of the bulk table)."""

STRUCTS: Final = """
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
int ksvc_bulk_reap(uint8_t *cring, uint64_t head, uint64_t tail, uint32_t mask, struct ksvc_bulk *b,
                   uint64_t *other, uint32_t max_other, uint32_t *done, uint32_t max_done, uint32_t *counts);
"""
"""The loops (see ``fastpath.c``)."""
