"""Put the repository's src/ first on sys.path, so stages always run the working tree's library."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
