"""The one place for differences between the library versions the handler runs on.

An Inference Endpoint runs the handler on the toolkit image's transformers 4.51.3 and huggingface_hub
0.30.2; `make serve` and `make test` run transformers 5.x. Code elsewhere calls these helpers instead of
testing versions itself.
"""

from __future__ import annotations

from importlib.metadata import version

import torch
from packaging.version import Version

from errors import ModelLoadError

TRANSFORMERS_VERSION = Version(version("transformers"))
# The toolkit image's pin, the oldest release the decoding is tested on.
OLDEST_TRANSFORMERS = Version("4.51.3")
# transformers 4.56 renamed from_pretrained's and the pipelines' `torch_dtype` to `dtype`; 5.x drops the old name.
_DTYPE_KEYWORD = "dtype" if TRANSFORMERS_VERSION >= Version("4.56") else "torch_dtype"


def require_supported_transformers() -> None:
    """Fail at start-up, naming the version, rather than deep inside a request."""
    if TRANSFORMERS_VERSION < OLDEST_TRANSFORMERS:
        raise ModelLoadError(f"transformers {TRANSFORMERS_VERSION} is too old: the handler needs transformers>={OLDEST_TRANSFORMERS} (pip install -r requirements.txt)")


def dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained(**dtype_argument(d))` / `pipeline(**dtype_argument(d))` on either side of the rename."""
    return {_DTYPE_KEYWORD: dtype}
