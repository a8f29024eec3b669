"""Old timm releases for the reference implementations built on them: SSAST asserts timm 0.4.5; SSL4EO-S12's
MoCo v3 (facebookresearch/moco-v3) needs 0.4.9 (``timm.models.layers.PatchEmbed``), on which its MAE runs too.

timm is a pure-Python wheel that is never installed into the project's environment:
``pip install --no-deps --target /tmp/timm045 timm==0.4.5`` (``timm049``, ``timm==0.4.9``). When ``timm`` is not
importable, the directory ``$TIMM_DIR`` (SSAST also reads ``$SSAST_TIMM``; default ``/tmp/timm`` + the version's
digits) goes first on ``sys.path``. timm imports
torchvision (its image transforms, unused by the references) at module level, and SSAST's file matplotlib: when
they are absent, empty stand-ins take their place. Import lightning (torchmetrics probes torchvision) before this.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path


def stub(name: str, **attrs: object) -> types.ModuleType:
    """An empty importable module (a package, so that submodules can hang off it)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__path__ = []
    module.__dict__.update(attrs)
    return module


def import_timm(who: str, version: str) -> types.ModuleType:
    """timm ``version``, with the stand-ins above; a clear error naming the install command otherwise."""
    default = "/tmp/timm" + version.replace(".", "")
    where = os.environ.get("TIMM_DIR", os.environ.get("SSAST_TIMM", default) if version == "0.4.5" else default)
    if importlib.util.find_spec("timm") is None and Path(where, "timm").is_dir():
        sys.path.insert(0, where)
    if importlib.util.find_spec("timm") is None:
        install = f"pip install --no-deps --target {default} timm=={version}"
        raise ModuleNotFoundError(f"{who} needs timm {version}: {install}")
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        transforms = stub("torchvision.transforms", functional=stub("torchvision.transforms.functional"))
        sys.modules["torchvision"] = stub("torchvision", transforms=transforms)
        sys.modules["torchvision.transforms"] = transforms
        sys.modules["torchvision.transforms.functional"] = transforms.functional
    if "matplotlib" not in sys.modules and importlib.util.find_spec("matplotlib") is None:
        sys.modules["matplotlib"] = stub("matplotlib", pyplot=stub("matplotlib.pyplot"))
        sys.modules["matplotlib.pyplot"] = sys.modules["matplotlib"].pyplot
    import timm

    if timm.__version__ != version:
        raise RuntimeError(f"{who} needs timm {version} (installed: {timm.__version__}; set TIMM_DIR)")
    return timm
