"""The conformance kit: contract checks any implementation of a trait can run against itself.

Each ``check_*`` function builds fresh objects with the factory it is
given, exercises the trait's contract (DESIGN section 3) on real kernel
objects, and raises ``AssertionError`` naming the broken rule. Use them
from any test runner::

    from ksvc_host.testing import check_notifier

    def test_my_notifier_conforms():
        check_notifier(lambda: MyNotifier())

:func:`check_instance` runs a whole stack, selected by name, through
differential reads and writes against ``os.*``.
"""

from ksvc_host.testing.faults import FaultInjector, InjectedFault, faulty_plugin
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
    "check_buffer_provider",
    "check_completion_sink",
    "check_instance",
    "check_io_backend",
    "check_notifier",
    "check_router",
    "check_shared_page",
    "check_worker_pool",
]
