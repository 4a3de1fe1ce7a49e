"""Packaging hook: the wheel carries the ONNX Runtime host's native sources (plugins/ort) as package data
under wn_export/_plugins/ort, so an installed wn-export compiles its fused path like a source checkout.
plugins/ort stays the one copy in the repository; everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PLUGIN = Path(__file__).resolve().parent / "plugins" / "ort"
FILES = ("*.cc", "*.h", "README.md", "third_party/onnxruntime/*.h", "third_party/onnxruntime/LICENSE")


class BuildWithPlugins(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads plugins/ort in place
            return
        target = Path(self.build_lib) / "wn_export" / "_plugins" / "ort"
        for pattern in FILES:
            for src in PLUGIN.glob(pattern):
                dst = target / src.relative_to(PLUGIN)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildWithPlugins})
