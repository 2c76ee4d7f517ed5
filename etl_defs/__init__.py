"""The e-commerce sync service's Dagster code location.

`defs` builds the definitions when Dagster loads the code location, which is when the
environment is validated (`etl_defs.settings`); importing any module reads no environment.
"""

from etl_defs.definitions import defs

__all__ = ["defs"]
