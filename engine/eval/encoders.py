"""The encoders a study evaluates: a run's exported trained encoder, or a random-init or pixel reference.

A run's export (`runs/<name>/encoder.safetensors`, or the folder `runs/<name>/export`; engine.export) holds
the encoder that was actually trained (`trained_encoder` = EMA "target_encoder", or the online "encoder" of a
run without EMA: docs/paper.md §6.3), so evaluation never reads a raw checkpoint key. The random-init
reference is the same architecture built from the same ModelConfig with a seed and never trained: the row that
tells what the probes get from the architecture and the data alone. The pixel baseline
(engine.eval.pixel_baseline) is that random encoder's patch embedding without its blocks: what the probes get
from the pixels alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.models import ModelConfig, VisionTransformer

from .errors import EvalInputError
from .pixel_baseline import PixelBaseline

EXPORT_NAME = "encoder.safetensors"
REFERENCE_KINDS = ("random", "pixel")  # built from a ModelConfig and a seed, never trained


@dataclass(frozen=True)
class EncoderSource:
    """Where an evaluated encoder comes from."""

    name: str  # row name in results.csv, e.g. "demo_mixed_hw_s1" or "random_init_s0"
    kind: str  # "run" (a trained export), "random" (fresh init of model_config with seed) or "pixel" (its
    # patch embedding and last norm only, engine.eval.pixel_baseline)
    path: str = ""  # the export file or export folder (engine.export_card), for kind "run"
    model_config: str = ""  # JSON of the ModelConfig, for kinds "random" and "pixel"
    seed: int = 0  # init seed, for kinds "random" and "pixel"

    def weights_path(self) -> Path:
        """The safetensors file of a run's export: `path` itself, or the weights an export folder's config.json
        names (engine.export_card; a plain name inside the folder; `check` verifies its sha256)."""
        if Path(self.path).is_dir():
            from engine.export_card import weights_file

            return weights_file(self.path)[0]
        return Path(self.path)

    def check(self) -> None:
        """A run's export exists, is an export of this engine and its tensors are those its model_config
        builds (an export folder: also its weights' sha256); else a one-line EvalInputError."""
        if self.kind != "run":
            return
        from safetensors import SafetensorError

        from engine.export import check_tensors, read_metadata

        fix = (f"finish the run (train.export_at_end) or export a checkpoint with `python -m engine.export "
               f"<run>/checkpoints/step_N --out {self.path}`")
        path = Path(self.path)
        if not path.exists():
            raise EvalInputError(f"{self.path}: no exported encoder here; {fix}")
        weights = path
        try:
            if path.is_dir():  # the weights config.json names, unchanged, and the model_config loading uses
                from engine.export_card import CONFIG_NAME, checked_weights

                weights, config = checked_weights(path)
                read_metadata(weights)
                check_tensors(weights, config.get("model_config"), path / CONFIG_NAME)
                return
            if not weights.is_file():
                raise EvalInputError(f"{weights}: no exported encoder here; {fix}")
            check_tensors(weights, read_metadata(weights)["model_config"])
        except SafetensorError as error:
            raise EvalInputError(f"{weights}: not a safetensors file ({error}); expected the "
                                 f"encoder.safetensors that engine.export writes") from None
        except (ValueError, OSError) as error:  # the one-line refusals of read_metadata, checked_weights, ...
            raise EvalInputError(str(error)) from None

    def fingerprint(self) -> str:
        """Identifies the weights: the export's sha256, or the kind, config and seed of a reference."""
        digest = hashlib.sha256()
        if self.kind == "run":
            with open(self.weights_path(), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        elif self.kind in REFERENCE_KINDS:
            digest.update(f"{self.kind}:{self.seed}:{self.model_config}".encode())
        else:
            raise ValueError(f"encoder {self.name}: unknown kind {self.kind!r}; use 'run' or one of {REFERENCE_KINDS}")
        return digest.hexdigest()[:16]

    def load(self, device: torch.device) -> torch.nn.Module:
        """The encoder (a module with `cfg` and `forward_eval`) in eval mode with frozen parameters."""
        if self.kind == "run":
            from engine.export import load_encoder

            if not Path(self.path).exists():
                raise FileNotFoundError(f"{self.path}: no exported encoder; finish the run (train.export_at_end) "
                                        f"or export a checkpoint with `python -m engine.export`")
            return load_encoder(self.path, device)
        cfg = ModelConfig(**json.loads(self.model_config))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            encoder = VisionTransformer(cfg)
        if self.kind == "pixel":
            encoder = PixelBaseline(encoder)
        encoder.requires_grad_(False)
        return encoder.eval().to(device)

    def describe(self) -> dict:
        """What the report records about this encoder."""
        info = {"name": self.name, "kind": self.kind, "seed": self.seed}
        if self.kind == "run":
            from engine.export import read_metadata

            meta = read_metadata(self.weights_path())
            info.update(path=str(Path(self.path).resolve()), trained_encoder=meta.get("trained_encoder", ""),
                        step=meta.get("step"), variant=meta.get("variant", ""), model_config=meta.get("model_config"))
        else:
            info["model_config"] = json.loads(self.model_config)
        return info


def run_encoder(name: str, run_dir: str | Path) -> EncoderSource:
    return EncoderSource(name=name, kind="run", path=str(Path(run_dir) / EXPORT_NAME))


def random_encoder(name: str, model_config: ModelConfig | dict, seed: int) -> EncoderSource:
    config = dataclasses.asdict(model_config) if isinstance(model_config, ModelConfig) else dict(model_config)
    return EncoderSource(name=name, kind="random", model_config=json.dumps(config, sort_keys=True), seed=seed)


def pixel_encoder(name: str, model_config: ModelConfig | dict, seed: int) -> EncoderSource:
    """The pixel baseline of the architecture: random_encoder's patch embedding and last norm, no blocks."""
    return dataclasses.replace(random_encoder(name, model_config, seed), kind="pixel")


def export_model_config(export_path: str | Path) -> dict:
    """The ModelConfig (as a dict) stored in a run's export (file or folder), to build the random-init
    reference alike."""
    from engine.export import read_metadata

    return read_metadata(EncoderSource(name="", kind="run", path=str(export_path)).weights_path())["model_config"]
