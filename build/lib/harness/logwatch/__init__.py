"""Kernel-log signatures: a declarative table, and a watcher that turns the
console stream into structured events with their full traces."""

from harness.logwatch.signatures import SIGNATURES, Signature
from harness.logwatch.watcher import Event, LogWatcher, parse_log

__all__ = ["SIGNATURES", "Event", "LogWatcher", "Signature", "parse_log"]
