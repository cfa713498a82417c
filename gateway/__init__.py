"""Verification gateway for Monetag ad postbacks."""

__version__ = "0.2.0"
