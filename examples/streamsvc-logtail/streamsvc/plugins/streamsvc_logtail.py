"""
The dropin: the module that C{streamsvc.plugin.discover} imports and
searches for plugins. One name, and nothing heavy: every scan imports it.
"""

from streamsvc_logtail.plugin import logs

__all__ = ["logs"]
