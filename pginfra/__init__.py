"""pginfra: code shared by the deploys in deploys/ (settings, steps, facts, rehearsal hosts)."""

from pathlib import Path

__version__ = "0.1.0"

# The project's top directory: deploys/, templates/, files/ and sql/ live here.
ROOT = Path(__file__).resolve().parent.parent
