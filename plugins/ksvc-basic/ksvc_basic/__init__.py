"""ksvc-basic: the default implementation of every KSVC trait.

Routers ``probe`` and ``static``; io backend ``basic`` (raw io_uring
through cffi); worker pools ``fixed`` and ``inline``; notifier
``eventfd``; completion sink ``ring``; buffer provider ``heap``; shared
page ``mmap``. Registered under the ``ksvc`` entry-point group by
:mod:`ksvc_basic.plugin`.
"""

__version__ = "0.1.0"
