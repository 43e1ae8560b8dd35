"""SmartFRZ: attention-based layer freezing (Li, Yuan, Dai et al., ICLR 2023)."""
from .config import POLICIES, SmartFRZConfig
from .engine import SmartFRZ, freeze_through
from .predictor import FreezePredictor
from .prefix_cache import PrefixCache
from .units import Unit, find_units

__all__ = ["SmartFRZ", "SmartFRZConfig", "FreezePredictor", "PrefixCache", "Unit", "find_units", "freeze_through",
           "POLICIES"]
__version__ = "0.1.0"
