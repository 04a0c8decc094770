"""edge-tailor: tailor a small student LM to an edge device target.

Import map of the project's folders: toolkit/ is ``edge_tailor``, export/ is
``edge_tailor.export``, benchmarks/ is ``edge_tailor.benchmarks``, targets/ is the data
package ``edge_tailor.targets``.
"""

__version__ = "0.1.0"
