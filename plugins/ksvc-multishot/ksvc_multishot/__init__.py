"""ksvc-multishot: the io_uring feature ``multishot-accept`` (a completion per connection)."""

__version__ = "0.1.0"
