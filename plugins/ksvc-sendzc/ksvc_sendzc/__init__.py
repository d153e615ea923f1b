"""ksvc-sendzc: the io_uring feature ``send-zc`` (sends as IORING_OP_SEND_ZC)."""

__version__ = "0.1.0"
