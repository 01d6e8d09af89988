"""The RTMaps component of an artifact: a Python-bridge component (target/, read as text) and its golden vectors.

`write_component` writes it beside an artifact (`toolchain rtmaps`); `component_files` writes it for a model
folder on a target (`toolchain deploy --rtmaps`). The preprocessing comes from the manifest
(`preprocessing_of`). Nothing here imports RTMaps, which is proprietary; the tests drive the component through
a stand-in of its Python API (tests/rtmaps_standin/).
"""

from toolchain.rtmaps.component import (COMPONENT_FILES, COMPONENT_NAME, DEFAULT_FOLDER, GOLDEN_NAME, README_NAME,
                                        ComponentFiles, component_files, write_component)
from toolchain.rtmaps.preprocessing import Preprocessing, preprocessing_of

__all__ = ["COMPONENT_FILES", "COMPONENT_NAME", "DEFAULT_FOLDER", "GOLDEN_NAME", "README_NAME", "ComponentFiles",
           "Preprocessing", "component_files", "preprocessing_of", "write_component"]
