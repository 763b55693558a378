"""The build step pyproject.toml cannot say: the top-level templates/ go into the wheel.

They live at the repository's root (`templates/site/`, `templates/nginx/`), outside the
package, so `build_py` copies them to `provisioner/_templates` in the build; the package finds
that copy when installed (provisioner/site/templates.py) and the folder itself in a checkout.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithTemplates(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's templates/ directly
        target = Path(self.build_lib) / "provisioner" / "_templates"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(ROOT / "templates", target)


setup(cmdclass={"build_py": BuildWithTemplates})
