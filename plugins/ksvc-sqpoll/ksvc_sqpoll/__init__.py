"""ksvc-sqpoll: the io_uring feature ``sqpoll`` (SqpollIoUring, docs/design.md §3)."""

__version__ = "0.1.0"
