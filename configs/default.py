"""The base config every experiment starts from (its fields are documented in scorelib.defaults)."""

from scorelib.builder.fields import base

__all__ = ["base"]
