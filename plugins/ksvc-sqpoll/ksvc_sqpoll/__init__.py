"""ksvc-sqpoll: the io_uring feature ``sqpoll`` (the seed's SqpollIoUring)."""

__version__ = "0.1.0"
