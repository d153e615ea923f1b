"""Optional capabilities of the traits, each a small ``typing.Protocol``.

A trait (:mod:`ksvc_host.traits`) states what every implementation must
do; a capability states something more that an implementation may offer.
The host asks ``isinstance(component, Capability)`` once, when the
instance, the dispatcher or a front end is built, and keeps the answer:
with the capability it takes the faster or richer path, without it the
plain one, with the same results (docs/design.md, "Capabilities").

A capability an io feature switches on (multishot accept, fixed files,
fixed buffers) is an attribute the feature sets on the backend at ring
set-up: a backend without the feature lacks the attribute and so the
capability.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, runtime_checkable

from ksvc_host.traits.buffer_provider import BufferProvider
from ksvc_host.traits.io_backend import SqeSpec

if TYPE_CHECKING:
    from ksvc_host.channel.ring import Ring

# Io backend ------------------------------------------------------------------------------------


@runtime_checkable
class QuietIoBackend(Protocol):
    """An io backend whose wake-ups can be muted while its caller reaps completions itself.

    Contract: with ``set_completion_wakeups(False)`` new CQEs do not write
    the wake-up eventfd (they are still posted); ``completions_ready()``
    counts CQEs posted and not yet reaped, without entering the kernel.
    Without it the dispatcher leaves wake-ups on and sleeps on the notifier.
    """

    def set_completion_wakeups(self, enabled: bool) -> None:
        """Switch the eventfd write on new CQEs on or off."""
        ...

    def completions_ready(self) -> int:
        """CQEs posted and not yet reaped."""
        ...


@runtime_checkable
class PipelinedIoBackend(Protocol):
    """An io backend that can say whether the kernel works on its submissions on a thread of its own.

    Contract: ``completes_asynchronously`` is fixed once the backend is
    built; ``True`` (SQPOLL) means completions arrive after ``flush``
    returns, so front ends keep streams fed ahead. Without it: ``False``.
    """

    @property
    def completes_asynchronously(self) -> bool:
        """True when a kernel thread consumes the SQ (completions arrive after the submit returns)."""
        ...


@runtime_checkable
class MultishotIoBackend(Protocol):
    """An io backend whose ACCEPT may carry IORING_ACCEPT_MULTISHOT (one SQE, a CQE per connection).

    The ``multishot-accept`` feature sets the attribute (``True``) at ring
    set-up; a backend without the feature lacks it. Without it a multishot
    accept entry completes with ``-EOPNOTSUPP`` and front ends accept one
    connection per call.
    """

    multishot_accept: bool


@runtime_checkable
class CancelAllIoBackend(Protocol):
    """An io backend that can cancel everything in flight with one request.

    Contract: ``cancel_all`` queues the cancel (sent with the next
    ``flush``) and returns whether it was queued; every cancelled operation
    still completes. The dispatcher uses it on a drain deadline for the
    express lane's entries, which carry no token of its own; without it
    those run to completion.
    """

    def cancel_all(self) -> bool:
        """Queue one ASYNC_CANCEL for everything in flight."""
        ...


@runtime_checkable
class FixedFileTable(Protocol):
    """The registry of the ``fixed-files`` feature: descriptors that SQEs name by slot."""

    def register(self, fd: int) -> int:
        """Give *fd* a slot (idempotent); ``OSError`` when the table is full."""
        ...

    def unregister(self, fd: int) -> None:
        """Release *fd*'s slot (no error if it has none)."""
        ...

    def registered(self) -> dict[int, int]:
        """Descriptor -> slot."""
        ...


@runtime_checkable
class FixedFilesIoBackend(Protocol):
    """An io backend with a fixed-file table (set by the ``fixed-files`` feature at ring set-up).

    Without it descriptors are looked up by the kernel on every operation
    and ``Ksvc.fixed_files`` is ``None``.
    """

    fixed_files: FixedFileTable


@runtime_checkable
class FixedBuffersIoBackend(Protocol):
    """An io backend with a registered buffer pool (set by the ``fixed-buffers`` feature at ring set-up).

    The ``registered`` buffer provider hands out that pool instead of
    registering a second one; without it the provider registers its own.
    """

    fixed_buffers: BufferProvider


EXPRESS_TAG: Final = 1 << 62
"""io_uring user_data bit of the express lane's requests; the channel's correlation id is below it.

A CQE with this bit that the backend's own reap returns (behind one of the
dispatcher's) is the lane's: the dispatcher emits it and tells the lane."""


class ExpressChannel(Protocol):
    """The channel rings the express lane works on (a :class:`~ksvc_host.channel.base.Channel`)."""

    @property
    def submit_ring(self) -> Ring:
        """Entries to take, from the dispatcher's head."""
        ...

    @property
    def completion_ring(self) -> Ring:
        """Where completion entries go (the sink's ring)."""
        ...


class ExpressLane(Protocol):
    """The dispatcher's express lane: plain reads and writes from submit entry to SQE and from CQE to
    completion entry in one compiled call, with no Python per entry.

    Contract: :meth:`submit` takes the run of entries it can carry exactly
    at the submit ring's head (from counter *head*) and stops at the first
    it cannot, which the generic loop then handles; :meth:`reap` moves the
    CQEs of its requests at the head of the CQ into completion entries
    (through the sink's ``pending_tail``) and stops at the first CQE that
    is not its own. Requests carry :data:`EXPRESS_TAG` in their user_data.
    """

    inflight: int
    """Requests submitted and not yet completed."""
    entries: int
    """Entries taken since the lane was built."""
    cq_clear: bool
    """The last :meth:`reap` emptied the CQ."""
    drained: bool
    """The last :meth:`submit` took every entry in the submit ring."""

    def submit(self, head: int, max_take: int) -> int:
        """Take entries from submit-ring counter *head*; how many (the new head is head + that)."""
        ...

    def reap(self) -> int:
        """Move the lane's CQEs at the head of the CQ into completion entries; how many."""
        ...

    def turn(self, head: int, max_take: int) -> tuple[int, int]:
        """:meth:`reap` then :meth:`submit` in one call: ``(completed, taken)``."""
        ...

    def completed_elsewhere(self) -> None:
        """One of the lane's CQEs was reaped by the backend's own reap."""
        ...

    def forgo_assist_ring(self) -> None:
        """Run nothing on a ring beside the backend's (turns run on callers' threads, which may exit)."""
        ...


@runtime_checkable
class ExpressIoBackend(Protocol):
    """An io backend that runs the dispatcher's express lane on its ring.

    Contract: ``express_lane`` builds the lane for the syscalls *routes*
    (those the router sends to io_uring), or gives ``None`` while its SQEs
    need rewriting the lane cannot leave alone or it would take none of
    them. The lane writes completion entries through *sink*; the backend
    keeps its in-flight guard and accounting for what the lane does.
    Without it every operation goes through ``submit``.
    """

    def express_lane(
        self, rings: ExpressChannel, sink: ExpressCompletionSink, routes: frozenset[int]
    ) -> ExpressLane | None:
        """The express lane on this backend's ring, or ``None``."""
        ...


# Completion sink -------------------------------------------------------------------------------


@runtime_checkable
class ExpressCompletionSink(Protocol):
    """A completion sink that writes into a completion ring whose unpublished tail the express lane may move.

    Contract: ``ring`` is the ring it writes; ``pending_tail`` is the tail
    as written so far, and setting it says the lane wrote entries up to
    there itself (published at the next ``flush_and_notify``). The lane is
    used only when ``ring`` is the channel's completion ring.
    """

    ring: Ring
    pending_tail: int


@runtime_checkable
class AttachableCompletionSink(Protocol):
    """A completion sink that hands each result to its caller instead of a completion ring (``direct-wake``).

    Contract: ``attach(deliver)`` is called once by the front end; the sink
    then calls ``deliver(corr_id, result, flags)`` for every completion
    (holding earlier ones until then); ``make_event()`` builds the
    wake-up object (``set``/``wait``/``is_set``, as ``threading.Event``) of
    one waiting caller. Without it front ends read the completion ring.
    """

    def attach(self, deliver: Callable[[int, int, int], None]) -> None:
        """Where completions go from now on."""
        ...

    def make_event(self) -> Any:
        """The wake-up object for one waiting caller."""
        ...


# Buffer provider -------------------------------------------------------------------------------


@runtime_checkable
class ClosableBufferProvider(Protocol):
    """A buffer provider holding resources beyond its buffers' lifetime (a pinned pool, a mapping).

    Contract: ``close`` releases them; the host calls it once, when the
    instance closes (after the io backend's shutdown) or its build fails.
    Without it nothing is called.
    """

    def close(self) -> None:
        """Release what the provider holds."""
        ...


# Io features of the composite backend ------------------------------------------------------------


@runtime_checkable
class IoFeature(Protocol):
    """An io feature with a name (``sqpoll``, ``fixed-files``); without one its class name is shown."""

    name: str


@runtime_checkable
class SetupFlagsFeature(Protocol):
    """An io feature that adjusts the io_uring setup flags before the ring is built."""

    def setup_flags(self, flags: int) -> int:
        """The flags to set up with, given those asked for so far."""
        ...


@runtime_checkable
class RingArgsFeature(Protocol):
    """An io feature that adjusts the ring's keyword arguments (idle time, CPU) before it is built."""

    def ring_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments to build with, given those so far."""
        ...


@runtime_checkable
class AfterSetupFeature(Protocol):
    """An io feature that acts on the backend once its ring exists (registers tables, sets capabilities).

    Contract: raise ``OSError`` when the kernel lacks what the feature needs.
    """

    def after_setup(self, backend: Any) -> None:
        """Act on the freshly built backend."""
        ...


@runtime_checkable
class SqePreparer(Protocol):
    """An io feature that rewrites SQEs as they are submitted (features are applied in the order named)."""

    def prepare(self, user_data: int, sqe: SqeSpec) -> SqeSpec:
        """The SQE to queue for *sqe* (possibly *sqe* changed in place)."""
        ...


class ExpressRewrites(NamedTuple):
    """What an SQE preparer rewrites, declared when it is added to a backend, for the express lane.

    A preparer added without a declaration may rewrite anything: the
    backend then has no express lane. With one, the lane leaves SQEs of
    ``opcodes``, and those whose buffer lies in ``address_range``, to the
    backend's ``submit`` (at most one preparer may declare a range).
    """

    opcodes: frozenset[int] = frozenset()
    """Opcodes whose SQEs the preparer rewrites."""
    address_range: tuple[int, int] | None = None
    """``[lo, hi)``: only SQEs with a buffer there are rewritten."""


@runtime_checkable
class ExpressRewriter(Protocol):
    """An SQE preparer that declares what it rewrites, so the express lane may still run beside it."""

    express_rewrites: ExpressRewrites


__all__ = [
    "AfterSetupFeature",
    "AttachableCompletionSink",
    "CancelAllIoBackend",
    "ClosableBufferProvider",
    "ExpressCompletionSink",
    "ExpressIoBackend",
    "ExpressRewriter",
    "ExpressRewrites",
    "FixedBuffersIoBackend",
    "FixedFileTable",
    "FixedFilesIoBackend",
    "IoFeature",
    "MultishotIoBackend",
    "PipelinedIoBackend",
    "QuietIoBackend",
    "RingArgsFeature",
    "SetupFlagsFeature",
    "SqePreparer",
]
