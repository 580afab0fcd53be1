"""The base config every experiment starts from (its fields are documented in scorelib.defaults)."""

from scorelib.defaults import base

__all__ = ["base"]
