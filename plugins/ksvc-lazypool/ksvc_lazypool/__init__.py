"""ksvc-lazypool: the ``lazy`` worker pool (the seed's LazyPool)."""

__version__ = "0.1.0"
