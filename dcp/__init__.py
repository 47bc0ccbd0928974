"""dcp: deeply coupled multi-modal prompt learning for CLIP (DCP, MuDPT and their family)."""
__version__ = "0.1.0"
