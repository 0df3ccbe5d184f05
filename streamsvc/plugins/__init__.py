"""
The dropin package of streamsvc plugins, as C{twisted/plugins} is
twistd's: a plugin's distribution installs a module here (without an
C{__init__.py} of its own), holding an L{streamsvc.interfaces.IStreamsvcPlugin}
provider such as a L{streamsvc.plugin.Plugin}. L{streamsvc.plugin.discover}
finds them; C{[plugins] enabled} says which are served.

Every C{streamsvc/plugins} folder on C{sys.path} counts, so a plugin
installed into another site-packages (or a development checkout on
C{PYTHONPATH}) is found too.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # noqa: F821  (the package's own __path__)
__all__: list[str] = []
