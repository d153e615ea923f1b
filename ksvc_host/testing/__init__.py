"""The conformance kit: contract checks any implementation of a trait can run against itself.

Each ``check_*`` function builds fresh objects with the factory it is
given, exercises the trait's contract (docs/design.md §3) on real kernel
objects, and raises ``AssertionError`` naming the broken rule. Use them
from any test runner::

    from ksvc_host.testing import check_notifier

    def test_my_notifier_conforms():
        check_notifier(lambda: MyNotifier())

:func:`check_instance` runs a whole stack, selected by name, through
differential reads and writes against ``os.*``.

Every check ends in bounded time: its steps run on a daemon thread, and
a step that takes longer than ``kit.DEADLINE`` seconds (a call that never
returns, a completion that never arrives) fails the check with an
``AssertionError`` naming the contract; :func:`check_instance` names the
component the stuck stack points at.
"""

from ksvc_host.testing.faults import FaultInjector, InjectedFault, faulty_plugin, shared_ring_statx
from ksvc_host.testing.kit import (
    check_buffer_provider,
    check_completion_sink,
    check_instance,
    check_io_backend,
    check_notifier,
    check_router,
    check_shared_page,
    check_worker_pool,
)

__all__ = [
    "FaultInjector",
    "InjectedFault",
    "faulty_plugin",
    "shared_ring_statx",
    "check_buffer_provider",
    "check_completion_sink",
    "check_instance",
    "check_io_backend",
    "check_notifier",
    "check_router",
    "check_shared_page",
    "check_worker_pool",
]
