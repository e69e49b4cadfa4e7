"""Released V-JEPA weights in, Hugging Face format out (issue 24).

- `read_released(source)`: a transformers VJEPA2 folder or hub id, or an original vjepa2 checkpoint, as the
  engine's configs and state dicts (engine/interop/released.py);
- `warm_start(source, encoder, predictor, target)`: `model.init_from` (engine/interop/warm_start.py);
- `write_hf_folder(encoder, cfg, folder)`: a folder `transformers.VJEPA2Model.from_pretrained` loads
  (engine/interop/hf_export.py); `hf_refusal` says why a config cannot be written so.
"""
from .hf_names import MappingError, hf_refusal
from .released import Released, read_released

__all__ = ["MappingError", "Released", "hf_refusal", "read_released"]
