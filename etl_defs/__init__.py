"""The e-commerce sync service's Dagster code location.

Importing it validates the environment (`etl_defs.settings`) and exposes `defs`.
"""

from etl_defs.definitions import defs, settings

__all__ = ["defs", "settings"]
