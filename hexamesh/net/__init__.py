"""Transports, the trio driver and the discrete-event simulator (see net/base.py)."""

from hexamesh.net.base import Addr, Core, FrameStream, Transport, format_addr, parse_addr

__all__ = ["Addr", "Core", "FrameStream", "Transport", "format_addr", "parse_addr"]
