"""CI matrix builds: `edgeforge build BUILD.yaml` (see edgeforge.build.run and edgeforge.build.spec)."""

from edgeforge.build.spec import Build, Cell

__all__ = ["Build", "Cell"]
