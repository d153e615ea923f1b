"""ksvc-fixedfiles: the io_uring feature ``fixed-files`` (a sparse registered file table)."""

__version__ = "0.1.0"
