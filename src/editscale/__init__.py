"""editscale: sequential model editing at scale (Gupta, Rao, Anumanchipalli 2024 reproduction)."""

__version__ = "0.1.0"
