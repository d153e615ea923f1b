"""Building the io_uring backend from the basic ring plus selected features.

Features (``io_backend="sqpoll+fixed-files"``) are objects contributed
through ``ksvc_register_io_feature``; each may adjust the setup flags and
ring arguments, act on the ring once it exists, and rewrite SQEs as they
are submitted. With no feature this is the plain ``basic`` backend.
"""

from __future__ import annotations

from typing import Any

from ksvc_basic.basic_iouring import BasicIoUring
from ksvc_host.instance import BuildContext
from ksvc_host.traits.capabilities import (
    AfterSetupFeature,
    ExpressRewriter,
    IoFeature,
    RingArgsFeature,
    SetupFlagsFeature,
    SqePreparer,
)


def feature_name(feature: object) -> str:
    """A feature's name (:class:`~ksvc_host.traits.IoFeature`), or its class name."""
    return feature.name if isinstance(feature, IoFeature) else type(feature).__name__


class CompositeIoUring(BasicIoUring):
    """``basic`` with features applied: CompositeIoUring (docs/design.md §3)."""

    def __init__(self, features: list[Any], entries: int, setup_flags: int, **ring_kwargs: Any) -> None:
        super().__init__(entries, setup_flags=setup_flags, **ring_kwargs)
        self.features = features
        self.name = "+".join(["basic", *(feature_name(f) for f in features)])
        for f in features:
            if isinstance(f, SqePreparer):
                self.add_preparer(f.prepare, f.express_rewrites if isinstance(f, ExpressRewriter) else None)
            if isinstance(f, AfterSetupFeature):
                f.after_setup(self)


def build_io_uring(ctx: BuildContext) -> BasicIoUring:
    """The ``basic`` factory: a plain ring, or a composite when features are selected."""
    entries = int(ctx.option("sq_entries", 256))
    flags = 0
    kwargs: dict[str, Any] = {}
    if ctx.option("cq_entries") is not None:
        kwargs["cq_entries"] = int(ctx.option("cq_entries"))
    for f in ctx.io_features:
        if isinstance(f, SetupFlagsFeature):
            flags = f.setup_flags(flags)
        if isinstance(f, RingArgsFeature):
            kwargs = f.ring_kwargs(kwargs)
    if not ctx.io_features:
        return BasicIoUring(entries, setup_flags=flags, **kwargs)
    try:
        return CompositeIoUring(list(ctx.io_features), entries, flags, **kwargs)
    except OSError as exc:
        names = "+".join(f.name if isinstance(f, IoFeature) else "?" for f in ctx.io_features)
        raise OSError(
            exc.errno,
            f"io_uring with feature(s) {names} could not be set up: {exc.strerror or exc}; "
            f"select io_backend='basic' to run without them",
        ) from exc
