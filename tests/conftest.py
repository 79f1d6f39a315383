import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The Lambda code root: `handlers` is importable there, as in the deployed functions.
sys.path.insert(0, str(ROOT / "functions"))
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
