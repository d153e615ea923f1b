"""ksvc-futex: notifier ``futex`` and completion sink ``direct-wake``."""

__version__ = "0.1.0"
