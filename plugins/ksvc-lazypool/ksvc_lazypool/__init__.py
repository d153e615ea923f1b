"""ksvc-lazypool: the ``lazy`` worker pool (LazyPool, docs/design.md §3)."""

__version__ = "0.1.0"
