"""Build hook; the project's metadata is in setup.cfg.

PEP 561 has no marker for a single-file module, and mypy looks for one at ``lm_providers/py.typed`` next to
``lm_providers.py``.  Declaring that folder as a package would make an editable install (``pip install -e``)
map the name ``lm_providers`` to the folder instead of the module, so the marker is written into the built
wheel here instead, and only there.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithTypedMarker(build_py):
    """build_py, plus an empty ``lm_providers/py.typed`` beside ``lm_providers.py`` in a regular build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the module is imported from the checkout; a folder of the same name would shadow it there
        folder = os.path.join(self.build_lib, "lm_providers")
        self.mkpath(folder)
        with open(os.path.join(folder, "py.typed"), "w", encoding="utf-8"):
            pass


setup(cmdclass={"build_py": BuildPyWithTypedMarker})
