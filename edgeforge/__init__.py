"""edgeforge: compile-and-deploy toolchain for edge vision transformers."""

__version__ = "0.1.0"
