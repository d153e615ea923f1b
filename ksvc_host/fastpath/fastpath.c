/* KSVC fast path: the per-entry loops of the channel in C.
 *
 * The loops, each mirrored line for line by ksvc_host/fastpath/reference.py,
 * which is the specification; the tests run both and compare:
 *
 *   ksvc_submit_strided  front end: write N submit entries and publish the tail
 *                        (buffer i at addr0 + i*stride, or at addrs[i] when given)
 *   ksvc_bulk_reap       front end: completion entries into per-group result arrays, each
 *                        entry checked against its group (an invalid one: -EUCLEAN)
 *
 * Layouts are the channel ABI (ksvc_host/abi/layout.py); the offsets below
 * are pinned by tests. (The dispatcher's express lane, which writes SQEs,
 * is the io backend's: ksvc_basic/express.c.)
 * Heads and tails written by the other side are loaded with acquire, ours
 * published with release.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#define RING_HEAD 16
#define RING_TAIL 24
#define RING_ENTRIES 64
#define SUBMIT_SIZE 64
#define COMPLETE_SIZE 32

static inline uint64_t load_acquire64(const uint8_t *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
static inline void store_release64(uint8_t *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }

uint32_t ksvc_submit_strided(uint8_t *ring, uint64_t tail, uint32_t mask, uint64_t corr0, uint32_t nr,
                             uint64_t fd, uint64_t addr0, uint64_t stride, uint64_t len,
                             const uint64_t *offsets, const uint64_t *addrs, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *e = ring + RING_ENTRIES + (size_t)((tail + i) & mask) * SUBMIT_SIZE;
        uint64_t w[8] = {corr0 + i, (uint64_t)nr, fd, addrs ? addrs[i] : addr0 + (uint64_t)i * stride, len,
                         offsets ? offsets[i] : 0, 0, 0};
        memcpy(e, w, sizeof w);   /* nr u32 + flags u32 (0) share the second word */
    }
    store_release64(ring + RING_TAIL, tail + n);
    return n;
}

/* Keep in step with STRUCTS in ksvc_host/fastpath/cdef.py. A group is live while results, seen
 * and left are set (ksvc_host.fastpath.arm_group); n is its length, seen a bit per entry. */
#define BULK_GROUPS 4096
struct ksvc_bulk {
    uint64_t bit;                  /* correlation ids with this bit belong to a bulk */
    uint32_t index_bits;           /* low bits: index in the group; above them: group */
    int64_t *results[BULK_GROUPS];
    uint32_t left[BULK_GROUPS];
    uint32_t n[BULK_GROUPS];       /* entries in the group: results[g] holds n[g] */
    uint64_t *seen[BULK_GROUPS];   /* bit i set once entry i completed */
};

/* Route completion entries: bulk ones into their group's results, the others out to the caller.
 *
 * The completion ring is shared memory: whatever an entry says is checked before it is used. A
 * bulk entry must name a live group, an index below the group's length, and an entry that has
 * not completed yet; one that does not is consumed (counted in counts[0]) with nothing written,
 * and the loop stops there and returns -EUCLEAN for the caller to report. Entries after it stay
 * in the ring for the next call. Otherwise the return value is counts[0]. */
int ksvc_bulk_reap(uint8_t *cring, uint64_t head, uint64_t tail, uint32_t mask, struct ksvc_bulk *b,
                   uint64_t *other, uint32_t max_other, uint32_t *done, uint32_t max_done, uint32_t *counts)
{
    uint32_t n_other = 0, n_done = 0;
    uint64_t h = head;
    uint64_t index_mask = (1ull << b->index_bits) - 1;
    int corrupt = 0;
    while (h != tail) {
        const uint8_t *e = cring + RING_ENTRIES + (size_t)(h & mask) * COMPLETE_SIZE;
        uint64_t w[3];
        memcpy(w, e, sizeof w);
        if (w[0] & b->bit) {
            uint64_t g = (w[0] & ~b->bit) >> b->index_bits;   /* not masked: high garbage must not alias a group */
            uint64_t i = w[0] & index_mask;
            if (g >= BULK_GROUPS || !b->results[g] || !b->seen[g] || !b->left[g] || i >= b->n[g]
                || (b->seen[g][i >> 6] >> (i & 63)) & 1) {
                h++;
                corrupt = 1;
                break;
            }
            if (b->left[g] == 1 && n_done == max_done) break;
            b->seen[g][i >> 6] |= 1ull << (i & 63);
            b->results[g][i] = (int64_t)w[1];
            if (--b->left[g] == 0) done[n_done++] = (uint32_t)g;
        } else {
            if (n_other == max_other) break;
            other[3 * n_other] = w[0]; other[3 * n_other + 1] = w[1]; other[3 * n_other + 2] = w[2] & 0xffffffffu;
            n_other++;
        }
        h++;
    }
    counts[0] = (uint32_t)(h - head); counts[1] = n_other; counts[2] = n_done;
    return corrupt ? -EUCLEAN : (int)(h - head);
}
